"""The agent core (wsa_ros.runtime.agent_core), ROS-free: one test per promised behaviour,
driven with message objects (rosbags' types) and explicit clocks, outputs collected from its
sink. The ROS tests (test/ros/test_agent_node.py) then check only the wiring over DDS."""
from __future__ import annotations

import numpy as np
import pytest

from wsa_ros.config import AgentConfig
from wsa_ros.runtime import bags
from wsa_ros.runtime.agent_core import ERROR, OK, AgentCore, AgentError
from wsa_ros.runtime.bundle import split_policy_id
from wsa_ros.runtime.engine import Engine

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
JOINTS = ["joint0", "joint1"]


class Sink:
    def __init__(self):
        self.commands, self.records, self.alphas = [], [], []

    def command(self, cmd):
        self.commands.append(np.array(cmd))

    def record(self, stamp, policy, joints, cmd, action_norm, action):
        version, sha256 = split_policy_id(policy)  # the reader's rule: a record names version and manifest
        self.records.append(dict(stamp=stamp, version=version, sha256=sha256, joints=list(joints), cmd=np.array(cmd),
                                 norm=np.array(action_norm), action=np.array(action)))

    def alpha(self, names, alpha):
        self.alphas.append((list(names), np.array(alpha)))


def frame(k: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


class Robot:
    """Feeds an AgentCore like a 50 Hz robot: joint state then frame, one stamp per tick."""

    def __init__(self, bundle, **cfg):
        kw = dict(bundle=str(bundle), providers=["cpu"], camera_topics=["/cam"], blend_in_s=0.0, max_rate=0.0,
                  start_enabled=True, trigger="camera", max_obs_age_s=0.5, log_throttle_s=0.0)
        kw.update(cfg)
        self.cfg = AgentConfig(**kw)
        self.sink = Sink()
        self.core = AgentCore(self.cfg, self.sink)
        self.t = T0
        self.k = 0
        self.pos = lambda k: [0.1 * np.sin(k), -0.2 + 0.01 * k]
        self.vel = lambda k: [0.3, -0.1 * np.cos(k)]

    def joints(self, k, names=JOINTS, stamp=None, pos=None, vel=None):
        self.core.on_joints(names, pos if pos is not None else self.pos(k), vel if vel is not None else self.vel(k),
                            [], self.t if stamp is None else stamp, self.t)

    def image(self, k, stamp=None, msg=None):
        msg = msg if msg is not None else bags.make_image(self.t if stamp is None else stamp, frame(k))
        self.core.on_frame("front", msg, False, self.t)

    def tick(self, n: int = 1):
        for _ in range(n):
            self.k += 1
            self.t += 20 * MS
            self.joints(self.k)
            self.image(self.k)
            self.core.on_timer(self.t)

    def want(self, engine: Engine, k: int):
        return engine.step({"front": frame(k)}, np.array(self.pos(k) + self.vel(k)))


@pytest.fixture()
def engine1(tiny_bundle):
    return Engine(tiny_bundle, providers=["cpu"])


def test_acts_on_each_frame_with_its_joint_state_and_records_what_it_sent(tiny_bundle, engine1):
    r = Robot(tiny_bundle)
    r.tick(5)
    assert len(r.sink.records) == 5 and len(r.sink.commands) == 5 and len(r.sink.alphas) == 5
    for i, rec in enumerate(r.sink.records, start=1):
        want = r.want(engine1, i)
        assert rec["stamp"] == T0 + i * 20 * MS and rec["version"] == "1" and rec["joints"] == JOINTS
        np.testing.assert_allclose(rec["cmd"], want.action, atol=1e-9)
        np.testing.assert_allclose(rec["norm"], want.action_norm, atol=1e-9)
    assert r.sink.alphas[0][0] == ["ae", "idm"] and abs(r.sink.alphas[0][1].sum() - 1) < 1e-5


def test_joint_names_in_any_order_and_extra_joints_are_ignored(tiny_bundle, engine1):
    r = Robot(tiny_bundle)
    r.t += 20 * MS
    p, v = r.pos(1), r.vel(1)
    r.joints(1, names=["gripper", "joint1", "joint0"], pos=[0.04, p[1], p[0]], vel=[0.0, v[1], v[0]])
    r.image(1)
    np.testing.assert_allclose(r.sink.records[0]["cmd"], r.want(engine1, 1).action, atol=1e-9)
    # a missing joint is a rejection, never an action
    r.t += 20 * MS
    r.joints(2, names=["joint0", "gripper"], pos=[0.0, 0.0], vel=[0.0, 0.0])
    assert r.core.counters["joint_missing"] == 1


def test_lifecycle_inactive_holds_refuses_enable_and_activate_acts(tiny_bundle):
    """A managed node's configure makes an inactive core: nothing acts (not even with
    start_enabled) and ~/enable is refused until set_active; deactivating sends the stop command
    at once and then repeats it as the hold; the e-stop still latches while inactive."""
    r = Robot(tiny_bundle, trigger="timer")
    r.core = AgentCore(r.cfg, r.sink, active=False)
    r.tick(3)
    assert r.sink.commands == [] and r.sink.records == []
    ok, msg = r.core.enable(True, r.t)
    assert not ok and "inactive" in msg and "activate" in msg
    assert r.core.diagnostics(r.t)[2][0] == ("lifecycle", "inactive")
    assert "active" in r.core.set_active(True, r.t)  # start_enabled: acting once inputs are fresh
    r.tick(3)
    assert len(r.sink.records) == 3
    n = len(r.sink.commands)
    assert r.core.set_active(False, r.t) == "inactive; stop command sent"
    assert len(r.sink.commands) == n + 1 and np.all(r.sink.commands[-1] == 0)  # at once, before a tick
    r.tick(4)
    assert len(r.sink.records) == 3 and len(r.sink.commands) == n + 5  # the hold: a stop per tick
    assert all(np.all(c == 0) for c in r.sink.commands[n:])
    assert not r.core.enable(True, r.t)[0]
    r.core.estop(True)
    assert r.core.sup.state.value == "estop"
    assert "refused: the e-stop is engaged" in r.core.set_active(True, r.t)  # active, but not acting
    r.tick(2)
    assert len(r.sink.records) == 3
    r.core.set_active(False, r.t)
    r.core.estop(False)
    # with start_enabled, activate is the operator's enable: the released e-stop's latch clears
    r.core.set_active(True, r.t)
    r.tick(3)
    assert len(r.sink.records) == 6
    # without start_enabled, activate only permits ~/enable
    q = Robot(tiny_bundle, trigger="timer", start_enabled=False)
    q.core = AgentCore(q.cfg, q.sink, active=False)
    assert "call ~/enable" in q.core.set_active(True, q.t)
    q.tick(2)
    assert q.sink.commands == []
    assert q.core.enable(True, q.t)[0]
    q.tick(2)
    assert len(q.sink.records) == 2


def test_nothing_is_commanded_before_enable_and_the_watchdog_stops_a_stale_camera(tiny_bundle):
    r = Robot(tiny_bundle, start_enabled=False, max_obs_age_s=0.1)
    r.tick(3)
    assert r.sink.commands == [] and r.sink.records == []
    assert r.core.enable(True, r.t)[0]
    r.tick(3)
    assert len(r.sink.records) == 3
    n = len(r.sink.commands)
    for _ in range(10):  # joint states go on, the camera stopped
        r.t += 20 * MS
        r.joints(0)
        r.core.on_timer(r.t)
    stops = r.sink.commands[n:]
    assert stops and all(np.all(c == 0) for c in stops)  # velocity mode: zeros
    assert r.core.sup.state.value == "tripped" and "camera 'front'" in r.core.sup.reason
    r.tick(2)
    assert len(r.sink.records) == 3  # latched until ~/enable


def test_estop_sends_the_stop_at_once_and_latches(tiny_bundle):
    r = Robot(tiny_bundle)
    r.tick(2)
    n = len(r.sink.commands)
    r.core.estop(True)
    assert len(r.sink.commands) == n + 1 and np.all(r.sink.commands[-1] == 0)
    ok, msg = r.core.enable(True, r.t)
    assert not ok and "e-stop is engaged" in msg
    r.core.estop(False)
    r.tick(1)
    assert len(r.sink.records) == 2
    assert r.core.enable(True, r.t)[0]
    r.tick(1)
    assert len(r.sink.records) == 3
    assert r.core.shutdown(r.t) and np.all(r.sink.commands[-1] == 0)  # a last stop at shutdown
    assert not r.core.shutdown(r.t)  # once


def test_teleop_overrides_while_fresh_even_with_an_extra_gripper_joint(tiny_bundle, engine1):
    r = Robot(tiny_bundle, teleop_timeout_s=0.2)
    r.core.on_teleop(["gripper", "joint1", "joint0"], [0.04, 0.5, -1.25], now_mono=1e12)  # far future: fresh
    r.tick(2)
    for rec in r.sink.records:
        np.testing.assert_allclose(rec["cmd"], [-1.25, 0.5])  # the person's command, bundle order
    np.testing.assert_allclose(r.sink.records[0]["action"], r.want(engine1, 1).action, atol=1e-9)  # still logged
    assert r.core.teleop_steps == 2
    r.core.on_teleop(["joint1"], [2.0], now_mono=1e12)
    assert r.core.counters["teleop_missing"] == 1
    r.core.on_teleop(JOINTS, [0.0, 0.0], now_mono=0.0)  # long ago: the policy drives again
    r.tick(1)
    np.testing.assert_allclose(r.sink.records[-1]["cmd"], r.want(engine1, 3).action, atol=1e-9)


def test_exploration_noise_is_added_in_policy_units_and_clamped(tiny_bundle, engine1):
    r = Robot(tiny_bundle, exploration_std=0.3)
    r.tick(200)
    noise = []
    for i, rec in enumerate(r.sink.records, start=1):
        sent = (rec["cmd"] + 3.0) / 3.0 - 1.0  # back to [-1, 1]
        assert np.all(np.abs(sent) <= 1.0 + 1e-12)
        inside = np.abs(sent) < 1 - 1e-9
        noise += (sent - r.want(engine1, i).action_norm)[inside].tolist()
    assert 0.25 < np.std(noise) < 0.35 and abs(np.mean(noise)) < 0.05


def test_exploration_samples_from_the_policys_own_gaussian(tiny_bundle, engine1):
    """exploration_sample: the command is tanh(atanh(mean action) + exp(log_std) * N(0, 1)), the
    policy's log_std output per joint (as SAC explores), through the same safety path."""
    assert engine1.has_log_std
    r = Robot(tiny_bundle, exploration_sample=True, exploration_std=0.0)
    r.tick(200)
    z = []
    for i, rec in enumerate(r.sink.records, start=1):
        sent = (rec["cmd"] + 3.0) / 3.0 - 1.0  # back to [-1, 1]
        assert np.all(np.abs(sent) < 1.0)
        want = r.want(engine1, i)
        assert want.log_std is not None and want.log_std.shape == (2,) and np.all(np.isfinite(want.log_std))
        z += ((np.arctanh(sent) - np.arctanh(want.action_norm)) / np.exp(want.log_std)).tolist()
    assert 0.85 < np.std(z) < 1.15 and abs(np.mean(z)) < 0.15
    assert dict(r.core.diagnostics(r.t)[2])["exploration_sample"] is True


def test_timer_trigger_acts_on_the_newest_complete_observation_and_counts_drops(tiny_bundle):
    r = Robot(tiny_bundle, trigger="timer")
    for k in range(1, 4):  # three frames between two timer ticks: one acted on, two dropped
        r.t += 5 * MS
        r.joints(k)
        r.image(k)
    r.core.on_timer(r.t)
    assert [x["stamp"] for x in r.sink.records] == [r.t]
    r.core.on_timer(r.t + 10 * MS)  # no new frame: the same observation again (a fixed cadence)
    assert len(r.sink.records) == 2
    _, _, kv = r.core.diagnostics(r.t)
    assert dict(kv)["camera 'front' dropped"] == 2 and dict(kv)["camera 'front' received"] == 3


def test_lost_messages_are_counted_from_the_publication_sequence_numbers(tiny_bundle):
    r = Robot(tiny_bundle)
    for seq in (1, 2, 5, 6):
        r.t += 20 * MS
        r.core.on_joints(JOINTS, [0, 0], [0, 0], [], r.t, r.t, pub=("gid", seq))
    assert r.core.stats["joint states"].lost == 2


def test_bad_frames_and_nonfinite_policy_outputs_are_rejected_and_stop(tiny_bundle):
    r = Robot(tiny_bundle)
    r.tick(2)
    bad = bags.make_image(r.t, frame(0))
    bad.encoding = "16UC1"
    r.image(0, msg=bad)
    assert r.core.counters["image_encoding"] == 1
    n = len(r.sink.commands)
    r.t += 20 * MS
    r.joints(9, pos=[1e300, 0.0])  # the float32 policy input overflows: a NaN action
    r.image(9)
    assert r.core.counters["policy_nonfinite"] == 1
    assert len(r.sink.commands) == n + 1 and np.all(r.sink.commands[-1] == 0) and len(r.sink.records) == 2
    level, summary, kv = r.core.diagnostics(r.t)
    assert dict(kv)["rejected policy_nonfinite"] == 1 and level != ERROR


def test_hot_swap_rejects_incompatible_bundles_and_rolls_back(tiny_bundle, make_bundle, tmp_path):
    r = Robot(tiny_bundle)
    r.tick(2)
    v2 = make_bundle(seed=5, version="2")
    ok, msg = r.core.swap(str(v2))
    assert ok and r.core.engine.version == "2"
    r.tick(1)
    assert r.sink.records[-1]["version"] == "2"
    # the record names the policy by its content too: the manifest digest /diagnostics reports
    from wsa_ros.runtime.signing import manifest_sha256
    assert r.sink.records[0]["sha256"] == manifest_sha256(tiny_bundle) != r.sink.records[-1]["sha256"]
    assert r.sink.records[-1]["sha256"] == manifest_sha256(v2) == dict(r.core.diagnostics(r.t)[2])["policy_manifest_sha256"]
    other = make_bundle(action_dim=3, version="3")
    ok, msg = r.core.swap(str(other))
    assert not ok and "keeps running" in msg and r.core.engine.version == "2"
    ok, msg = r.core.swap(str(tmp_path / "missing"))
    assert not ok and r.core.counters["swap_rejected"] == 2
    assert r.core.rollback()[0] and r.core.engine.version == "1"
    assert r.core.rollback()[0] and r.core.engine.version == "2"  # again: forward
    r.tick(1)
    assert r.sink.records[-1]["version"] == "2"
    _, _, kv = r.core.diagnostics(r.t)
    assert dict(kv)["previous_version"] == "1" and dict(kv)["policy_version"] == "2"


def test_configuration_errors_name_the_fix(tiny_bundle, make_bundle):
    with pytest.raises(AgentError, match="give one topic per camera"):
        AgentCore(AgentConfig(bundle=str(tiny_bundle), providers=["cpu"], camera_topics=["/a", "/b"]), Sink())
    pos = make_bundle(action_mode="position", version="p")
    with pytest.raises(AgentError, match="needs a velocity-mode bundle"):
        AgentCore(AgentConfig(bundle=str(pos), providers=["cpu"], output_mode="twist"), Sink())


def test_diagnostics_report_state_rates_and_provider(tiny_bundle):
    r = Robot(tiny_bundle)
    r.tick(3)
    level, summary, kv = r.core.diagnostics(r.t)
    d = dict(kv)
    assert level == OK and summary == "acting, policy 1"
    assert d["execution_provider"] == "CPUExecutionProvider" and d["actions_total"] == 3
    assert d["sync"] == "stamp" and d["sync_timeouts"] == 0 and float(d["inference_ms_median"]) > 0


def test_sync_stamp_waits_for_the_final_pairing_and_newest_does_not(tiny_bundle, engine1):
    """Joint states stamped 1 ms before their frames. ``stamp``: a frame is acted on once the next
    joint state shows its pairing is final, with the joint state of its own tick; ``newest``: at
    once, with whatever joint state came last (here the same one, delivered in order)."""
    for rule in ("stamp", "newest"):
        r = Robot(tiny_bundle, sync=rule)
        r.t += 20 * MS
        r.joints(1, stamp=r.t - MS)
        r.image(1)
        if rule == "stamp":
            assert r.sink.records == [] and r.core.sync.pending == 1  # the next joint state may be nearer
            r.t += 20 * MS
            r.joints(2, stamp=r.t - MS)
        assert len(r.sink.records) == 1, rule
        np.testing.assert_allclose(r.sink.records[0]["cmd"], r.want(engine1, 1).action, atol=1e-9)
    # the frame delivered before its own joint state (each stream in order): only stamp pairs it right
    acted = {}
    for rule in ("stamp", "newest"):
        r = Robot(tiny_bundle, sync=rule)
        r.t += 20 * MS
        r.joints(0, stamp=r.t - 21 * MS)
        r.image(1)
        r.joints(1, stamp=r.t - MS)  # this tick's joint state, after the frame
        r.joints(2, stamp=r.t + 19 * MS)
        acted[rule] = r.sink.records[0]["cmd"]
    np.testing.assert_allclose(acted["stamp"], r.want(engine1, 1).action, atol=1e-9)
    assert not np.allclose(acted["newest"], r.want(engine1, 1).action, atol=1e-6)
