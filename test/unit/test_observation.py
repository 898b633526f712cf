"""The observation rule (wsa_ros.runtime.observation), ROS-free: pairing by stamp, its
finality and timeout, the joint-name rule, and the offline walk of a bag, which must give the
live agent's pairs whatever the delivery order."""
from __future__ import annotations

import itertools
import math
import re
from types import SimpleNamespace as NS

import numpy as np
import pytest

from wsa_ros.runtime import bags
from wsa_ros.runtime.observation import (JOINTS, FrameSample, JointReader, JointRejected, JointSample, StampHistory,
                                         Synchronizer, build_proprio, iter_observations)

T0 = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


def frame(t_recv: int, stamp: int, value: int = 0) -> FrameSample:
    return FrameSample.from_array(np.full((2, 2, 3), value, np.uint8), t_recv, stamp)


def joints(t_recv: int, stamp: int, value: float = 0.0) -> JointSample:
    return JointSample(t_recv, stamp, ["a"], np.array([value]), np.array([0.0]), np.array([]))


# =============================================================================== StampHistory
def test_stamp_history_nearest_whatever_the_arrival_order():
    h = StampHistory()
    assert h.nearest(25) is None and h.last is None and not h.final_for(0)
    for t in (10, 30, 20, 40):  # 20 arrives late
        h.add(NS(stamp_ns=t))
    assert h.last.stamp_ns == 40 and h.max_stamp == 40
    assert h.nearest(24).stamp_ns == 20 and h.nearest(26).stamp_ns == 30
    assert h.nearest(25).stamp_ns == 20  # equal distance: the earlier stamp
    assert h.nearest(30).stamp_ns == 30 and h.nearest(99).stamp_ns == 40 and h.nearest(5).stamp_ns == 10
    assert h.nearest(99, tol_ns=10) is None and h.nearest(45, tol_ns=5).stamp_ns == 40
    first, second = NS(stamp_ns=35), NS(stamp_ns=35)
    h.add(first)
    h.add(second)
    assert h.nearest(35) is first and h.nearest(36) is first  # equal stamps: the first received
    assert h.final_for(40) and not h.final_for(41)
    small = StampHistory(maxlen=3)
    for t in (10, 30, 20, 40):
        small.add(NS(stamp_ns=t))
    assert len(small) == 3 and small.nearest(11).stamp_ns == 20  # 10 (the oldest stamp) was forgotten
    aged = StampHistory(horizon_ns=15)
    for t in (10, 20, 30):
        aged.add(NS(stamp_ns=t))
    assert len(aged) == 2 and aged.newest_stamp() == 30


# =============================================================================== the sync rule
def test_stamp_rule_waits_for_a_later_partner_then_pairs_the_nearest():
    s = Synchronizer(["front"], rule="stamp", timeout_ns=50 * MS)
    s.put_joints(joints(0, 0, 0.0))
    s.put_frame("front", frame(5 * MS, 4 * MS, 1))  # stamped between joint states at 0 and 10 ms
    assert s.resolve(5 * MS) == [] and s.pending == 1  # a nearer joint state may still come
    s.put_joints(joints(10 * MS, 10 * MS, 1.0))
    (o,) = s.resolve(10 * MS)
    assert o.time_ns == 10 * MS and not o.timed_out and o.stamp_ns == 4 * MS
    assert o.joints.position[0] == 0.0  # 4 ms from 0, 6 ms from 10: the one at 0
    # equal stamps (a simulator's tick): no wait at all
    s.put_joints(joints(20 * MS, 20 * MS, 2.0))
    s.put_frame("front", frame(21 * MS, 20 * MS, 2))
    (o,) = s.resolve(21 * MS)
    assert o.time_ns == 21 * MS and o.joints.position[0] == 2.0
    # joint state stamped just after the frame, arriving after it: paired with it on arrival
    s.put_frame("front", frame(31 * MS, 30 * MS, 3))
    assert s.resolve(31 * MS) == []
    s.put_joints(joints(32 * MS, 31 * MS, 3.0))
    (o,) = s.resolve(32 * MS)
    assert o.joints.position[0] == 3.0


def test_stamp_rule_times_out_with_the_nearest_received_and_counts_it():
    s = Synchronizer(["front"], rule="stamp", timeout_ns=50 * MS)
    s.put_joints(joints(0, 0, 7.0))
    s.put_frame("front", frame(10 * MS, 10 * MS))
    assert s.resolve(59 * MS) == []
    (o,) = s.resolve(60 * MS)
    assert o.timed_out and o.joints.position[0] == 7.0 and s.timeouts == 1
    s.put_frame("front", frame(70 * MS, 70 * MS))
    (o,) = s.flush()  # the end of a bag: the wait runs out at arrival + timeout
    assert o.timed_out and o.time_ns == 120 * MS and s.timeouts == 2


def test_frames_without_any_partner_sample_are_dropped_and_the_queue_is_bounded():
    s = Synchronizer(["front"], rule="stamp", timeout_ns=10, max_pending=2)
    s.put_frame("front", frame(0, 0))
    assert s.resolve(100) == [] and s.incomplete == 1  # no joint state at all: nothing to act on
    for k in range(3):
        s.put_frame("front", frame(200 + k, 200 + k))
    assert s.pending == 2 and s.superseded == 1
    with pytest.raises(KeyError, match="not one of"):
        s.put_frame("top", frame(0, 0))
    with pytest.raises(ValueError, match="sync rule 'nearest' is not one of"):
        Synchronizer(["front"], rule="nearest")


def test_second_camera_is_paired_by_stamp_like_the_joint_states():
    s = Synchronizer(["front", "wrist"], rule="stamp", timeout_ns=50 * MS)
    s.put_joints(joints(0, 10 * MS))
    s.put_frame("wrist", frame(1 * MS, 1 * MS, 9))
    s.put_frame("front", frame(10 * MS, 10 * MS, 1))
    assert s.resolve(10 * MS) == []  # the wrist camera has nothing stamped at or after 10 ms yet
    s.put_frame("wrist", frame(12 * MS, 11 * MS, 8))
    (o,) = s.resolve(12 * MS)
    assert int(o.images()["wrist"][0, 0, 0]) == 8 and list(o.frames) == ["front", "wrist"]


def test_newest_rule_takes_what_has_arrived_and_never_waits():
    s = Synchronizer(["front"], rule="newest")
    s.put_joints(joints(0, 0, 1.0))
    s.put_frame("front", frame(5, 5))
    s.put_joints(joints(6, 4, 2.0))  # nearer by stamp, but after the frame arrived
    (o,) = s.resolve(6)
    assert o.joints.position[0] == 1.0 and o.time_ns == 6


def _streams(offset_ns: int, n: int = 12, period: int = 20 * MS):
    """One camera and one joint stream of a 50 Hz robot: joint state k stamped k*period +
    offset, frame k stamped k*period, each delivered some time after its stamp."""
    rng = np.random.default_rng(abs(offset_ns) + n)
    fr = [(k * period + int(rng.integers(1, 8)) * MS, "f", k * period, k) for k in range(n)]
    js = [(k * period + offset_ns + int(rng.integers(1, 8)) * MS, "j", k * period + offset_ns, k) for k in range(n)]
    return fr, js


def _pairs(events) -> list[tuple[int, int]]:
    s = Synchronizer(["front"], rule="stamp", timeout_ns=10**12, max_pending=100)  # pairing by finality only
    out = []
    for recv, kind, stamp, k in events:
        if kind == "f":
            s.put_frame("front", frame(recv, stamp, k))
        else:
            s.put_joints(joints(recv, stamp, float(k)))
        out += s.resolve(recv)
    out += s.flush()
    return [(int(o.images()["front"][0, 0, 0]), int(o.joints.position[0])) for o in out]


@pytest.mark.parametrize("offset_ns", [-1 * MS, 0, 1 * MS], ids=["joints-before", "equal", "joints-after"])
def test_pairs_do_not_depend_on_delivery_order(offset_ns):
    """Every interleaving of the two streams that keeps each stream's own order gives the same
    pairs: the frame and the joint state stamped nearest it."""
    fr, js = _streams(offset_ns)
    want = [(k, k) for k in range(len(fr))]  # nearest: the same tick's joint state
    orders = [sorted(fr + js), fr + js, js + fr]  # by arrival, every frame first, every joint state first
    rng = np.random.default_rng(1)
    for _ in range(20):  # random interleavings, each stream in its own order
        picks = rng.permutation([0] * len(fr) + [1] * len(js))
        it = [iter(fr), iter(js)]
        orders.append([next(it[p]) for p in picks])
    for events in orders:
        assert _pairs(events) == want


# =============================================================================== joint names
def test_joint_reader_reorders_ignores_extra_joints_and_checks():
    from wsa_ros.runtime.bundle import ProprioSpec

    spec = ProprioSpec(["a", "b"], ["position", "velocity"], [0.0] * 4, [1.0] * 4)
    rd = JointReader(["b"], spec, where="js")
    names, pos, vel = ["gripper", "b", "a"], [9.0, 2.0, 1.0], [0.9, 0.2, 0.1]  # an extra joint: ignored
    for _ in range(2):  # the second reading uses the cached plan
        measured, proprio = rd.read(names, pos, vel)
        np.testing.assert_array_equal(measured, [2.0])
        np.testing.assert_array_equal(proprio, [1.0, 2.0, 0.1, 0.2])  # per field, a then b
        np.testing.assert_array_equal(proprio, build_proprio(spec, names, pos, vel))
    bad = [((["a", "a", "b"], [0.0] * 3, []), "joint_malformed", "repeats joint name"),
           ((["a"], [0.0], []), "joint_missing", "lacks joint(s) ['b']"),
           ((["a", "b"], [0.0], []), "joint_malformed", "2 names but 1 position"),
           ((["a", "b"], [0.0, 0.0], [1.0]), "joint_malformed", "2 names but 1 velocity"),
           ((["a", "b"], [0.0, 0.0], []), "joint_malformed", "no 'velocity' values"),
           ((["a", "b"], [0.0, float("nan")], [0.0, 0.0]), "joint_nonfinite", "position of ['b']"),
           ((["a", "b"], [0.0, 0.0], [float("inf"), 0.0]), "joint_nonfinite", "['a velocity'] not finite")]
    for args, key, msg in bad:
        with pytest.raises(JointRejected, match=re.escape(msg)) as exc:
            rd.read(*args)
        assert exc.value.key == key and str(exc.value).startswith("js")
    assert JointReader(["a"]).read(["b", "a"], [1.0, 2.0])[1] is None  # no proprioception


def test_sine_and_cosine_fields_keep_a_continuous_joint_continuous():
    """``sin_position``/``cos_position``: a continuous joint reported just either side of pi
    gives nearly the same vector (the raw angle jumps by 2 pi)."""
    from wsa_ros.runtime.bundle import PROPRIO_FIELDS, ProprioSpec

    assert {"sin_position", "cos_position"} <= set(PROPRIO_FIELDS)
    spec = ProprioSpec(["a", "b"], ["sin_position", "cos_position", "velocity"], [0.0] * 6, [1.0] * 6)
    rd = JointReader(["a"], spec)
    _, p = rd.read(["b", "a"], [0.5, math.pi - 1e-3], [0.2, 0.1])
    np.testing.assert_allclose(p, [math.sin(math.pi - 1e-3), math.sin(0.5), math.cos(math.pi - 1e-3), math.cos(0.5),
                                   0.1, 0.2])
    _, q = rd.read(["b", "a"], [0.5, -math.pi + 1e-3], [0.2, 0.1])
    assert np.max(np.abs(p - q)) < 3e-3
    raw = ProprioSpec(["a"], ["position"], [0.0], [1.0])
    assert abs(build_proprio(raw, ["a"], [math.pi - 1e-3])[0] - build_proprio(raw, ["a"], [-math.pi + 1e-3])[0]) > 6
    with pytest.raises(JointRejected, match="position of"):
        rd.read(["b", "a"], [0.5, float("nan")], [0.2, 0.1])


# =============================================================================== offline
def _sync_bag(tmp_path, offset_ns: int = 0, n: int = 6):
    """A 50 Hz robot in a bag: joint state k stamped k*20 ms + offset and recorded at its stamp
    + 1 ms, frame k (pixel value k) stamped k*20 ms and recorded at + 5 ms."""
    recs = []
    for k in range(n):
        js = k * 20 * MS + offset_ns
        recs.append((js + MS, "j", js, k))
        recs.append((k * 20 * MS + 5 * MS, "f", k * 20 * MS, k))
    recs.sort(key=lambda r: r[0])
    path = tmp_path / f"sync{offset_ns}"
    with bags.BagWriter(path) as w:
        for t, kind, stamp, k in recs:
            if kind == "j":
                w.write("/joints", "sensor_msgs/msg/JointState", T0 + t,
                        bags.make_joint_state(T0 + stamp, ["a"], [float(k)], [0.0], []))
            else:
                w.write("/cam", "sensor_msgs/msg/Image", T0 + t,
                        bags.make_image(T0 + stamp, np.full((2, 2, 3), k, np.uint8)))
    return path


@pytest.mark.parametrize("offset_ns", [-2 * MS, 0, 2 * MS])
def test_offline_walk_frame_trigger_pairs_each_frame_with_its_tick(tmp_path, offset_ns):
    obs = list(iter_observations(_sync_bag(tmp_path, offset_ns), {"front": "/cam"}, "/joints", trigger="frame"))
    assert [(int(o.images()["front"][0, 0, 0]), int(o.joints.position[0])) for o in obs] == [(k, k) for k in range(6)]
    # each observation completes when the first joint state stamped at or after its frame is recorded
    # (the next tick's when they are stamped before their frames); the last one waits out the timeout
    done = [o.time_ns - T0 for o in obs]
    first = (offset_ns + MS) if offset_ns >= 0 else (20 * MS + offset_ns + MS)
    assert done[0] == max(first, 5 * MS) and obs[-1].timed_out == (offset_ns < 0)
    assert obs[2].stamps() == {"stamp_front": T0 + 40 * MS, "recv_front": T0 + 45 * MS,
                               "stamp_joints": T0 + 40 * MS + offset_ns, "recv_joints": T0 + 41 * MS + offset_ns}


def test_offline_walk_rate_trigger_acts_on_the_newest_complete_observation(tmp_path):
    bag = _sync_bag(tmp_path, 0, n=3)
    obs = list(iter_observations(bag, {"front": "/cam"}, "/joints", trigger="rate", rate_hz=100))
    # ticks every 10 ms from the first message (1 ms); frame k is complete at 20 k + 5 ms
    assert [o.time_ns - T0 for o in obs] == [11 * MS, 21 * MS, 31 * MS, 41 * MS]
    assert [int(o.images()["front"][0, 0, 0]) for o in obs] == [0, 0, 1, 1]
    newest = list(iter_observations(bag, {"front": "/cam"}, "/joints", trigger="rate", rate_hz=100, sync="newest"))
    assert [int(o.joints.position[0]) for o in newest] == [0, 0, 1, 1]


def test_compressed_camera_topics_decode_through_images(tmp_path):
    from wsa_ros.runtime.images import array_to_compressed

    img = np.zeros((6, 8, 3), np.uint8)
    img[:, :4] = (200, 10, 30)
    fmt, data = array_to_compressed(img, "png")
    path = tmp_path / "c"
    bags.write_bag(path, [("/cam/compressed", "sensor_msgs/msg/CompressedImage", T0 + 5,
                           bags.make_compressed_image(T0, data, fmt))])
    (obs,) = iter_observations(path, {"front": "/cam/compressed"}, None)
    np.testing.assert_array_equal(obs.images()["front"], img)  # PNG is lossless, RGB order kept
    assert obs.joints is None and obs.stamps() == {"stamp_front": T0, "recv_front": T0 + 5}


def test_partner_names():
    s = Synchronizer(["front", "wrist"], need_joints=True)
    assert s.partners == ["wrist", JOINTS] and s.trigger == "front"
    assert list(itertools.islice(iter(s.streams), 3)) == ["front", "wrist", JOINTS]
