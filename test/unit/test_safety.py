"""safety.py: shaping (scale, clamp, rate limit, blend-in), the stop command, the
watchdog and the enable / e-stop / watchdog state machine, all without ROS."""
import threading

import numpy as np
import pytest

from wsa_ros.runtime.safety import (
    BlendIn,
    RateLimiter,
    State,
    Supervisor,
    SupervisorConfig,
    Watchdog,
    clamp,
    scale,
    stop_command,
)

LOW, HIGH = [-1.0, -2.0], [1.0, 2.0]


def sup(mode="velocity", **kw):
    cfg = dict(mode=mode, low=LOW, high=HIGH, max_age=0.1, period=0.01, streams=["cam", "joints"])
    cfg.update(kw)
    return Supervisor(SupervisorConfig(**cfg))


FRESH = {"cam": 0.0, "joints": 0.0}


# --------------------------------------------------------------------------- shaping
def test_scale_matches_the_engine_formula_and_endpoints():
    np.testing.assert_allclose(scale([-1, 1], LOW, HIGH), [-1.0, 2.0])
    np.testing.assert_allclose(scale([0, 0], LOW, HIGH), [0.0, 0.0])
    np.testing.assert_allclose(scale([0.5, -0.5], [0, 10], [2, 20]), [1.5, 12.5])


def test_clamp_counts_and_rejects_non_finite():
    out, n = clamp([2.0, -3.0], LOW, HIGH)
    assert out.tolist() == [1.0, -2.0] and n == 2
    out, n = clamp([0.5, 0.5], LOW, HIGH)
    assert out.tolist() == [0.5, 0.5] and n == 0
    for bad in ([np.nan, 0.0], [0.0, np.inf], [-np.inf, 0.0]):
        with pytest.raises(ValueError, match="not finite"):
            clamp(bad, LOW, HIGH)


def test_in_range_values_pass_through_bit_exact():
    a = np.array([0.123456789012345, -1.999999999])
    out, n = clamp(a, LOW, HIGH)
    assert n == 0 and np.array_equal(out, a)


def test_stop_command_per_mode():
    assert stop_command("velocity", None, 3).tolist() == [0.0, 0.0, 0.0]
    assert stop_command("position", [0.1, 0.2]).tolist() == [0.1, 0.2]
    assert stop_command("position", None) is None
    with pytest.raises(ValueError):
        stop_command("torque", [0.0])


def test_rate_limiter_limits_per_tick_and_caps_dt():
    rl = RateLimiter(2.0, max_dt=0.1)  # 2 units/s
    assert rl(np.array([0.0, 0.0]), 0.1).tolist() == [0.0, 0.0]  # first command passes (no previous)
    out = rl(np.array([1.0, -1.0]), 0.1)
    np.testing.assert_allclose(out, [0.2, -0.2])
    out = rl(np.array([1.0, -1.0]), 10.0)  # a long gap buys no bigger jump
    np.testing.assert_allclose(out, [0.4, -0.4])
    out = rl(np.array([0.45, -1.0]), 0.1)
    np.testing.assert_allclose(out, [0.45, -0.6])


def test_rate_limiter_per_joint_and_disabled():
    rl = RateLimiter([1.0, 0.0], max_dt=1.0)  # joint 1 unlimited
    rl.reset([0.0, 0.0])
    np.testing.assert_allclose(rl([5.0, 5.0], 0.5), [0.5, 5.0])
    off = RateLimiter(0.0, max_dt=1.0)
    off.reset([0.0])
    assert off([100.0], 0.01).tolist() == [100.0]
    with pytest.raises(ValueError):
        RateLimiter(-1.0, 0.1)


def test_blend_in_ramps_linearly():
    b = BlendIn(1.0)
    b.start(10.0)
    assert b.factor(10.0) == 0.0
    assert b.factor(10.25) == pytest.approx(0.25)
    assert b.factor(12.0) == 1.0
    np.testing.assert_allclose(b.apply([2.0], [0.0], 10.5), [1.0])
    assert BlendIn(0.0).factor(0.0) == 1.0


# --------------------------------------------------------------------------- watchdog
def test_watchdog_names_each_problem():
    w = Watchdog(["cam", "joints"], 0.1)
    assert w.problems(1.0, {"cam": 0.95, "joints": 0.99}) == []
    p = w.problems(1.0, {"cam": 0.8})
    assert len(p) == 2
    assert p[0].startswith("cam:") and "200 ms old" in p[0] and "max 100 ms" in p[0]
    assert p[1] == "joints: no data received"
    p = w.problems(1.0, {"cam": 1.5, "joints": 1.0})
    assert "future" in p[0]


# --------------------------------------------------------------------------- state machine
def test_starts_disabled_and_commands_nothing_before_first_action():
    s = sup()
    d = s.update(0.0, FRESH)
    assert s.state == State.DISABLED and not d.act and d.stop is None
    assert "enable" in d.reason


def test_start_enabled_waits_for_fresh_inputs_then_acts():
    s = sup(start_enabled=True)
    d = s.update(0.0, {"cam": 0.0})
    assert s.state == State.WAITING and not d.act and "joints: no data" in d.reason
    d = s.update(0.05, {"cam": 0.0, "joints": 0.04})
    assert d.act and d.changed and s.state == State.ACTIVE
    cmd = s.shape([0.5, -0.5], 0.05, d.epoch)
    assert cmd.tolist() == [0.5, -0.5]


def test_watchdog_trip_latches_and_stops_per_mode_until_reenable():
    for mode, expect in (("velocity", [0.0, 0.0]), ("position", [0.3, 0.4])):
        s = sup(mode, start_enabled=True)
        measured = np.array([0.3, 0.4])
        d = s.update(0.0, FRESH, measured)
        assert d.act
        assert s.shape([0.9, 0.9], 0.0, d.epoch) is not None
        # camera stops: at t=0.15 the frame is 150 ms old > 100 ms
        d = s.update(0.15, {"cam": 0.0, "joints": 0.15}, measured)
        assert not d.act and d.changed and s.state == State.TRIPPED
        assert "watchdog" in d.reason and "cam" in d.reason
        assert d.stop.tolist() == expect
        # fresh data again does NOT clear the latch
        d = s.update(0.2, {"cam": 0.2, "joints": 0.2}, measured + 1)
        assert not d.act and s.state == State.TRIPPED
        assert d.stop.tolist() == expect  # the hold target captured at the trip, not chased
        ok, msg = s.enable(True, 0.25)
        assert ok and "cleared latch" in msg
        d = s.update(0.25, {"cam": 0.25, "joints": 0.25}, measured)
        assert d.act
        assert s.trips == 1


def test_position_hold_falls_back_to_last_command():
    s = sup("position", start_enabled=True)
    d = s.update(0.0, FRESH, None)
    cmd = s.shape([0.7, 0.1], 0.0, d.epoch)
    d = s.update(1.0, FRESH, None)  # stale, and no measurement known
    assert d.stop.tolist() == cmd.tolist()


def test_estop_latches_immediately_and_refuses_enable_while_engaged():
    s = sup(start_enabled=True)
    d = s.update(0.0, FRESH)
    s.shape([0.5, 0.5], 0.0, d.epoch)
    t = s.estop(True)
    assert t.state == State.ESTOP and t.stop.tolist() == [0.0, 0.0]
    assert s.estop(True) is None  # repeated messages change nothing
    ok, msg = s.enable(True, 0.1)
    assert not ok and "e-stop is engaged" in msg
    t = s.estop(False)
    assert t.state == State.ESTOP and "latched" in t.reason
    d = s.update(0.1, {"cam": 0.1, "joints": 0.1})
    assert not d.act and d.stop is not None  # released but still latched
    ok, _ = s.enable(True, 0.1)
    assert ok
    assert s.update(0.1, {"cam": 0.1, "joints": 0.1}).act


def test_action_computed_before_a_stop_is_never_sent():
    s = sup(start_enabled=True)
    d = s.update(0.0, FRESH)
    s.estop(True)  # arrives while the engine is running
    assert s.shape([0.5, 0.5], 0.0, d.epoch) is None
    s.estop(False)
    s.enable(True, 0.0)
    d2 = s.update(0.0, FRESH)
    assert d2.act
    assert s.shape([0.5, 0.5], 0.0, d.epoch) is None  # old epoch: void
    assert s.shape([0.5, 0.5], 0.0, d2.epoch) is not None


def test_disable_and_enable_are_idempotent():
    s = sup()
    assert s.enable(False, 0.0) == (True, "already disabled")
    assert s.enable(True, 0.0)[0]
    ok, msg = s.enable(True, 0.0)
    assert ok and "already enabled" in msg
    assert s.enable(False, 0.0) == (True, "disabled")


def test_blend_in_and_rate_limit_after_enable_position_mode():
    s = sup("position", start_enabled=True, blend_in_s=1.0, max_rate=0.5, period=0.1)
    measured = np.array([0.0, 0.0])
    d = s.update(0.0, FRESH, measured)
    c0 = s.shape([1.0, 1.0], 0.0, d.epoch)
    assert c0.tolist() == [0.0, 0.0]  # blend factor 0: hold the measured pose
    c1 = s.shape([1.0, 1.0], 0.1, d.epoch)  # blend 0.1 -> target 0.1, rate limit 0.05
    np.testing.assert_allclose(c1, [0.05, 0.05])
    t, last = 0.1, c1
    for _ in range(30):
        t += 0.1
        c = s.shape([1.0, 1.0], t, d.epoch)
        assert np.all(np.abs(c - last) <= 0.05 + 1e-12)
        last = c
    np.testing.assert_allclose(last, [1.0, 1.0])


def test_blend_in_velocity_mode_starts_from_zero():
    s = sup("velocity", start_enabled=True, blend_in_s=0.5)
    d = s.update(0.0, FRESH)
    assert s.shape([1.0, 2.0], 0.0, d.epoch).tolist() == [0.0, 0.0]
    np.testing.assert_allclose(s.shape([1.0, 2.0], 0.25, d.epoch), [0.5, 1.0])
    np.testing.assert_allclose(s.shape([1.0, 2.0], 0.6, d.epoch), [1.0, 2.0])


def test_out_of_bounds_action_is_clamped_and_counted():
    s = sup(start_enabled=True)
    d = s.update(0.0, FRESH)
    assert s.shape([5.0, -5.0], 0.0, d.epoch).tolist() == [1.0, -2.0]
    assert s.clamped == 1
    with pytest.raises(ValueError):
        s.shape([np.nan, 0.0], 0.0, d.epoch)


def test_reject_sends_stop_for_the_tick_and_keeps_state():
    s = sup(start_enabled=True)
    d = s.update(0.0, FRESH)
    assert s.reject("policy NaN") is None  # nothing sent yet: nothing to stop
    s.shape([0.5, 0.5], 0.0, d.epoch)
    assert s.reject("policy NaN").tolist() == [0.0, 0.0]
    assert s.state == State.ACTIVE
    p = sup("position", start_enabled=True)
    d = p.update(0.0, FRESH, np.zeros(2))
    p.shape([0.5, 0.5], 0.0, d.epoch)
    assert p.reject("x").tolist() == [0.5, 0.5]  # hold the last commanded pose


def test_runtime_setting_changes():
    s = sup(start_enabled=True)
    s.set_max_age(1.0)
    d = s.update(0.5, FRESH)
    assert d.act  # 500 ms old is fresh with max age 1 s
    s.set_max_rate(1.0)
    s.set_blend_in(0.0)
    s.shape([0.0, 0.0], 0.5, d.epoch)
    np.testing.assert_allclose(s.shape([1.0, 1.0], 0.51, d.epoch), [0.01, 0.01])


def test_invalid_configuration():
    with pytest.raises(ValueError):
        sup(mode="torque")
    with pytest.raises(ValueError):
        sup(low=[1.0, 0.0], high=[0.0, 1.0])


def test_concurrent_estop_and_ticks_never_let_an_action_through_after_estop():
    s = sup(start_enabled=True)
    sent_after_estop = []
    estopped = threading.Event()

    def ticker():
        for i in range(5000):
            d = s.update(0.0, FRESH)
            if d.act:
                was = estopped.is_set()
                cmd = s.shape([0.5, 0.5], 0.0, d.epoch)
                if cmd is not None and was:
                    sent_after_estop.append(i)

    th = threading.Thread(target=ticker)
    th.start()
    s.estop(True)
    estopped.set()
    th.join()
    assert sent_after_estop == []
    assert s.state == State.ESTOP
