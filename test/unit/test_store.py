"""Transitions, their assembly from topic data, the durable replay store and demonstration
import (ROS-free; the kill -9 test uses a real child process)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from wsa_ros.runtime.bundle import load_bundle
from wsa_ros.learn.store import ReplayStore, StoreError
from wsa_ros.learn.transitions import (Assembler, AssemblerConfig, TransitionSpec, bandwidth,
                                       check_record)
from wsa_ros.runtime.observation import FrameSample, JointSample

ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
JOINTS = ["joint0", "joint1"]


# =============================================================================== helpers
SPEC = TransitionSpec(encoders=(("ae", (4, 2, 2)), ("ctx", (3,))), proprio_dim=4, action_joints=tuple(JOINTS),
                      low=(-3.0, -3.0), high=(3.0, 3.0), encoder_hashes=("a" * 64, "b" * 64),
                      proprio_layout=(tuple(JOINTS), ("position", "velocity")))


def record(i: int, spec: TransitionSpec = SPEC) -> dict:
    rng = np.random.default_rng(i)
    r = {}
    for k, (d, shape) in spec.schema().items():
        if d.startswith("<U"):
            r[k] = np.str_(f"v{i}")
        elif d == "bool":
            r[k] = np.bool_(i % 7 == 0)
        elif k in ("action", "policy_action"):
            r[k] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            r[k] = np.asarray(rng.normal(size=shape) if shape else i % 100, dtype=d)
    r["stamp_ns"] = np.int64(T0 + i * 20 * MS)
    return r


class ProprioSpec:  # the fields build_proprio reads
    joint_names = JOINTS
    fields = ["position", "velocity"]
    dim = 4


def frame(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value % 256, np.uint8)


def encode(images):
    """A stand-in encoder: the embedding is the frame's pixel value (so tests can tell frames apart)."""
    v = float(images["front"][0, 0, 0])
    return {"ae": np.full((1, 4, 2, 2), v, np.float32), "ctx": np.full((1, 3), v, np.float32)}


class Robot:
    """Feeds an Assembler like the topics would: frame + joints at stamp k, then the agent's
    record on that frame, then the environment's reward for the step."""

    def __init__(self, **cfg):
        self.asm = Assembler(SPEC, ["front"], encode, ProprioSpec(), AssemblerConfig(**cfg), source="/r1")
        self.now = T0
        self.out = []

    def obs(self, k: int):
        stamp = T0 + k * 20 * MS
        self.asm.add_frame("front", FrameSample.from_array(frame(k), self.now, stamp))
        self.asm.add_joints(JointSample(self.now, stamp, JOINTS, np.array([k, -k], float), np.array([0.1, 0.2]),
                                        np.zeros(2)))
        return stamp

    def act(self, k: int, cmd=(1.5, -3.0), version="7", names=JOINTS, pol=(0.5, -1.0)):
        self.asm.add_record(self.now, T0 + k * 20 * MS, version, names, list(cmd), list(pol))

    def poll(self):
        self.out += self.asm.poll(self.now)
        return self.out

    def tick(self, k: int, reward: float | None = -1.0, **kw):
        self.now += 20 * MS
        self.obs(k)
        self.act(k, **kw)
        if reward is not None:
            self.asm.add_reward(self.now, reward)
        self.poll()


# =============================================================================== transitions
def test_assembler_builds_ordered_complete_transitions_with_episode_ends():
    r = Robot()
    for k in range(5):
        r.tick(k, reward=-float(k))
    r.asm.add_reward(r.now, -0.5)  # a second reward for step 4: summed
    r.now += 20 * MS
    r.obs(5)  # the final frame, then the end
    r.asm.add_success(r.now, True)
    r.asm.add_episode_end(r.now, "truncated")
    # late record on the final frame: belongs to the finished episode
    r.act(5)
    for k in range(6, 9):
        r.tick(k)
    r.asm.add_episode_end(r.now, "terminated")
    out = r.poll()
    stamps = [t.stamp_ns for t in out]
    assert stamps == sorted(stamps)
    assert [t.episode for t in out] == [0] * 5 + [1] * 3
    first = out[:5]
    # obs k -> next obs k+1 (the embedding carries the frame index), action normalised, reward summed
    for k, t in enumerate(first):
        assert t.obs["ctx"][0] == k and t.next_obs["ctx"][0] == k + 1
        np.testing.assert_allclose(t.action, [0.5, -1.0])
        np.testing.assert_allclose(t.proprio, [k, -k, 0.1, 0.2])
        assert t.version == "7" and t.source == "/r1" and t.step == k
    assert [t.reward for t in first] == [0.0, -1.0, -2.0, -3.0, -4.5]
    assert not any(t.terminated or t.truncated for t in first[:4])
    assert first[4].truncated and not first[4].terminated and first[4].success == 1
    assert out[-1].terminated and not out[-1].truncated
    assert r.asm.rejected["after_episode_end"] == 1
    eps = r.asm.take_episodes()
    assert [(e.kind, e.steps) for e in eps] == [("truncated", 5), ("terminated", 3)]
    assert eps[0].ret == pytest.approx(-10.5) and eps[0].success == 1
    for t in out:
        assert check_record(SPEC, t.to_record()) is None


def test_assembler_rejects_and_counts_malformed_inputs():
    r = Robot(pairing_timeout_s=0.1)
    r.tick(0)
    r.now += 20 * MS
    r.obs(1)
    r.act(1, cmd=(float("nan"), 0.0))  # NaN
    r.act(1, cmd=(3.5, 0.0))  # beyond the bounds
    r.act(1, pol=(1.5, 0.0))  # policy output outside [-1, 1]
    r.act(1, names=["joint0", "elbow"])  # joint1 missing (and an unknown one)
    r.act(1, names=["joint0"], cmd=(0.0,), pol=())  # missing joint
    r.asm.add_record(r.now, T0 + 20 * MS, "7", JOINTS, [0.0], [])  # wrong size
    r.asm.add_reward(r.now, float("inf"))
    r.asm.add_reward(r.now, 1e9)
    r.asm.add_episode_end(r.now, "finished")
    r.act(1)  # a good one
    r.asm.add_reward(r.now, -1.0)
    r.act(0)  # stamp going backwards
    r.now += 20 * MS
    r.act(99)  # a record whose frame never comes
    r.asm.add_reward(r.now, -1.0)
    r.now += 200 * MS
    r.poll()
    rej = r.asm.rejected
    # the joint-name rule (observation.JointReader), with the agent's counter keys
    assert rej["joint_nonfinite"] == 1 and rej["action_out_of_bounds"] == 2 and rej["joint_missing"] == 2
    assert rej["joint_malformed"] == 1 and rej["reward_out_of_range"] == 2
    assert rej["bad_episode_end"] == 1 and rej["stamp_out_of_order"] == 1 and rej["no_matching_frame"] == 1
    assert rej["broken_chain"] == 1  # step 1 lost its successor
    assert len(r.out) == 1 and r.out[0].stamp_ns == T0  # only step 0 -> 1 is complete
    assert r.out[0].reward == -1.0


def test_assembler_waits_for_late_frames_and_flags_interventions():
    r = Robot()
    r.now += 20 * MS
    r.act(0)  # record before its frame (frames travel on another topic)
    r.asm.add_reward(r.now, -1.0)
    assert r.poll() == [] and r.asm.pending == 1
    r.obs(0)
    r.asm.add_teleop(r.now, ["joint1", "joint0"], [3.0, -3.0])  # by name, joint units
    r.tick(1, cmd=(0.0, 0.0))  # the teleop command overrides the record's command
    r.now += 500 * MS  # teleop no longer active
    r.tick(2)
    out = r.poll()
    assert [t.intervention for t in out] == [False, True]
    np.testing.assert_allclose(out[1].action, [-1.0, 1.0])
    np.testing.assert_allclose(out[1].policy_action, [0.5, -1.0])
    r.asm.add_teleop(r.now, JOINTS, [9.0, 0.0])
    assert r.asm.rejected["action_out_of_bounds"] == 1


def test_teleop_with_an_extra_gripper_joint_is_learned_as_a_demonstration():
    """The one joint-name rule: a teleoperation message that also carries a gripper joint drives the
    arm (the agent ignores the extra joint) and is learned from as a demonstration here too."""
    r = Robot()
    r.tick(0)
    r.asm.add_teleop(r.now, ["gripper", "joint1", "joint0"], [0.04, 1.5, -1.5])
    r.tick(1, cmd=(0.0, 0.0))
    r.tick(2)
    out = r.poll()
    assert [t.intervention for t in out] == [False, True] and not r.asm.rejected
    np.testing.assert_allclose(out[1].action, [-0.5, 0.5])  # joint units / 3 rad/s, bundle order


def test_a_lost_record_never_pairs_a_step_with_the_observation_after_next():
    r = Robot()
    for k in range(3):
        r.tick(k)
    r.now += 20 * MS
    r.obs(3)  # the agent acted on frame 3, but its record never arrived (a sequence gap)
    r.asm.add_reward(r.now, -1.0)
    r.asm.records_lost(1)
    for k in range(4, 7):
        r.tick(k)
    out = r.poll()
    # 0->1, 1->2 and 4->5, 5->6; step 2 (whose successor was lost) is dropped, not paired with 4
    assert [(int(t.obs["ctx"][0]), int(t.next_obs["ctx"][0])) for t in out] == [(0, 1), (1, 2), (4, 5), (5, 6)]
    assert r.asm.rejected["record_lost"] == 1 and r.asm.rejected["broken_chain"] == 1


def test_same_frame_acted_on_twice_keeps_the_later_command():
    r = Robot()
    r.tick(0)
    r.act(0, cmd=(3.0, 3.0))  # the agent acted again on frame 0 before the next one came
    r.tick(1)
    r.tick(2)
    out = r.poll()
    np.testing.assert_allclose(out[0].action, [1.0, 1.0])
    assert r.asm.superseded == 1


def test_two_cameras_pair_by_stamp_within_the_skew():
    def enc2(images):
        return {"ae": np.full((1, 4, 2, 2), float(images["front"][0, 0, 0]), np.float32),
                "ctx": np.full((1, 3), float(images["wrist"][0, 0, 0]), np.float32)}

    asm = Assembler(SPEC, ["front", "wrist"], enc2, None, AssemblerConfig(camera_skew_s=0.01, pairing_timeout_s=0.1))
    for k in range(3):
        s = T0 + k * 20 * MS
        asm.add_frame("front", FrameSample.from_array(frame(k), s, s))
        asm.add_frame("wrist", FrameSample.from_array(frame(100 + k), s, s + 3 * MS))  # its own clock, 3 ms late
        asm.add_record(s, s, "1", JOINTS, [0.0, 0.0], [0.0, 0.0])
        asm.add_reward(s, -1.0)
    asm.add_record(T0 + 60 * MS, T0 + 60 * MS, "1", JOINTS, [0.0, 0.0], [0.0, 0.0])  # no wrist frame near it
    asm.add_frame("front", FrameSample.from_array(frame(3), T0 + 60 * MS, T0 + 60 * MS))
    out = asm.poll(T0 + 500 * MS)
    assert [(t.obs["ae"][0, 0, 0], t.obs["ctx"][0]) for t in out] == [(0, 100), (1, 101)]
    assert asm.rejected["no_matching_frame"] == 1


def test_bandwidth_numbers(tiny_bundle):
    b = load_bundle(tiny_bundle)
    bw = bandwidth(b, 30.0, {"front": (84, 84, 3)})
    assert bw["frames_total_Bps"] == 84 * 84 * 3 * 30
    emb = sum(4 * int(np.prod(e.output_shape)) for e in b.encoders) * 30
    assert bw["embeddings_Bps"] == emb


# =============================================================================== store
def test_store_round_trip_reopen_and_schema_mismatch(tmp_path):
    schema, fp = SPEC.schema(), SPEC.fingerprint()
    with ReplayStore(tmp_path / "s", schema, fp) as st:
        for i in range(10):
            st.append(record(i))
        assert st.flush() == 10
        for i in range(10, 15):
            st.append(record(i))
    st = ReplayStore(tmp_path / "s", schema, fp)
    data = st.read()
    assert st.count == 15 and list(data["seq"]) == list(range(15))
    np.testing.assert_array_equal(data["stamp_ns"], [record(i)["stamp_ns"] for i in range(15)])
    np.testing.assert_array_equal(data["obs.ae"][3], record(3)["obs.ae"])
    assert data["version"][4] == "v4"
    assert list(st.read(last_n=5)["seq"]) == list(range(10, 15))
    other = TransitionSpec(**{**SPEC.__dict__, "encoder_hashes": ("c" * 64, "b" * 64)})
    with pytest.raises(StoreError, match="other encoders"):
        ReplayStore(tmp_path / "s", other.schema(), other.fingerprint())
    bigger = TransitionSpec(**{**SPEC.__dict__, "proprio_dim": 6})
    with pytest.raises(StoreError, match="another shape"):
        ReplayStore(tmp_path / "s", bigger.schema(), bigger.fingerprint())
    with pytest.raises(ValueError, match="shape"):
        st.append({**record(0), "action": np.zeros(3, np.float32)})


def test_store_survives_torn_and_corrupt_chunks_and_interrupted_compaction(tmp_path):
    schema, fp = SPEC.schema(), SPEC.fingerprint()
    root = tmp_path / "s"
    with ReplayStore(root, schema, fp, compact_min_chunks=1000) as st:
        for c in range(4):
            for i in range(c * 5, c * 5 + 5):
                st.append(record(i))
            st.flush()
    chunks = sorted((root / "chunks").glob("c_*.npz"))
    assert len(chunks) == 4
    # a torn write (what a kill during np.savez leaves) and a chunk damaged on disk
    (root / "chunks" / ".c_000000000020_000000000024.npz.tmp").write_bytes(b"PK\x03\x04 partial")
    raw = bytearray(chunks[2].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip a byte inside the data: the CRC catches it
    chunks[2].write_bytes(bytes(raw))
    st = ReplayStore(root, schema, fp)
    data = st.read()
    assert st.torn_removed == 1 and st.corrupt == 1
    assert list(data["seq"]) == list(range(10)) + list(range(15, 20))
    assert (root / "chunks" / (chunks[2].name + ".corrupt")).is_file()
    # compaction merges; a crash before deleting the inputs leaves redundant chunks
    st2 = ReplayStore(tmp_path / "c", schema, fp, compact_min_chunks=3)
    keep = []
    for c in range(3):
        for i in range(c * 4, c * 4 + 4):
            st2.append(record(i))
        keep.append(st2.flush())
    files = sorted(p.name for p in (tmp_path / "c" / "chunks").glob("c_*.npz"))
    assert files == ["c_000000000000_000000000011.npz"]  # merged
    small = ReplayStore(tmp_path / "small", schema, fp, compact_min_chunks=1000)
    for i in range(4):
        small.append(record(i))
    small.flush()
    src = tmp_path / "small" / "chunks" / "c_000000000000_000000000003.npz"
    os.replace(src, tmp_path / "c" / "chunks" / src.name)  # the un-deleted input of a merge
    st3 = ReplayStore(tmp_path / "c", schema, fp)
    assert st3.redundant_removed == 1 and st3.count == 12
    assert list(st3.read()["seq"]) == list(range(12))


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "300k"):
    """A real full disk when we may mount a tmpfs (root); otherwise None."""
    path.mkdir(parents=True, exist_ok=True)
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                              capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_is_a_clear_error_and_recovers(tmp_path, monkeypatch):
    schema, fp = SPEC.schema(), SPEC.fingerprint()
    errors = []
    disk = tmp_path / "disk"
    with tiny_disk(disk, "24k") as real:
        st = ReplayStore(disk / "s", schema, fp, max_pending=300, retry_s=0.0, on_error=errors.append)
        if not real:  # may not mount a tmpfs here: fail the write the way the kernel would
            def full(*a, **k):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(st, "_write", full)
        written = 0
        for i in range(400):
            st.append(record(i))
            if i % 50 == 49:
                written += st.flush()
        assert st.error and "disk full" in st.error and str(st.root) in st.error
        assert len(errors) == 1  # reported once, not at every retry
        assert st.dropped > 0 and st.pending == 300
        assert written + st.pending + st.dropped == 400
        assert not list((disk / "s" / "chunks").glob("*.tmp"))  # no torn file left behind
        # space comes back: what was kept is written, in order, and the error clears
        if real:
            subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        else:
            monkeypatch.undo()
        assert st.flush() == 300 and st.error is None
        data = st.read()
        assert len(data["seq"]) == written + 300 and list(data["seq"]) == list(range(written + 300))
        np.testing.assert_array_equal(data["stamp_ns"], [record(i)["stamp_ns"] for i in range(written + 300)])


CHILD = textwrap.dedent("""
    import sys, time, json
    sys.path.insert(0, {test!r})
    from test_store import SPEC, record
    from wsa_ros.learn.store import ReplayStore
    st = ReplayStore({root!r}, SPEC.schema(), SPEC.fingerprint(), flush_period_s=1.0).start()
    i = 0
    t0 = time.monotonic()
    while True:
        st.append(record(i))
        i += 1
        if i % 20 == 0:
            print(json.dumps({{"n": i, "t": time.monotonic()}}), flush=True)
        time.sleep(max(0.0, t0 + i / 200.0 - time.monotonic()))
""")


def test_kill_9_loses_at_most_the_last_second(tmp_path):
    root = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", CHILD.format(test=str(ROOT / "test" / "unit"), root=str(root))],
                         stdout=subprocess.PIPE, text=True, env=env)
    progress = []
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        line = p.stdout.readline()
        if not line:
            break
        progress.append(json.loads(line))
        if progress[-1]["n"] >= 700:  # ~3.5 s of appends at 200/s
            break
    os.kill(p.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    p.wait(timeout=10)
    assert progress and progress[-1]["n"] >= 700, "the writer did not get going"
    st = ReplayStore(root, SPEC.schema(), SPEC.fingerprint())
    data = st.read()
    n = len(data["seq"])
    assert list(data["seq"]) == list(range(n))  # complete and in order, nothing torn
    np.testing.assert_array_equal(data["stamp_ns"], [record(i)["stamp_ns"] for i in range(n)])
    # everything appended more than one flush period (+ scheduling slack) before the kill is there
    older = [q["n"] for q in progress if q["t"] <= t_kill - 1.5]
    assert older and n >= older[-1], (n, older[-1])
    print(f"kill -9 after {progress[-1]['n']} appends at 200/s: {n} on disk, "
          f"lost {(progress[-1]['n'] - n) / 200:.2f} s (+ <= 0.1 s unreported)")


# =============================================================================== demonstrations
def _write_demo_bag(path, storage, episodes=3, steps=8, end_topic=True):
    from wsa_ros.runtime.bags import BagWriter, make_float64, make_float64_array, make_image, make_joint_state, make_string

    rng = np.random.default_rng(0)
    with BagWriter(path, storage=storage) as w:
        topics = [("/camera/image_raw", "sensor_msgs/msg/Image"), ("/joint_states", "sensor_msgs/msg/JointState"),
                  ("/forward_command_controller/commands", "std_msgs/msg/Float64MultiArray"),
                  ("/wsa/reward", "std_msgs/msg/Float64"), ("/wsa/episode_end", "std_msgs/msg/String")]
        for t, typ in topics:
            w.add_topic(t, typ)
        t = T0
        for _ep in range(episodes):
            for k in range(steps + 1):  # steps actions, then the final frame
                w.write("/joint_states", "sensor_msgs/msg/JointState", t,
                        make_joint_state(t, JOINTS, rng.normal(size=2), rng.normal(size=2)))
                w.write("/camera/image_raw", "sensor_msgs/msg/Image", t + MS,
                        make_image(t + MS, rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)))
                if k < steps:
                    w.write("/forward_command_controller/commands", "std_msgs/msg/Float64MultiArray", t + 8 * MS,
                            make_float64_array(rng.uniform(-3, 3, 2)))
                if k > 0:
                    w.write("/wsa/reward", "std_msgs/msg/Float64", t + 2 * MS, make_float64(-float(k)))
                t += 20 * MS
            if end_topic:
                w.write("/wsa/episode_end", "std_msgs/msg/String", t - 15 * MS, make_string("truncated"))
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_import_demos_from_bags(tmp_path, tiny_bundle, storage):
    from wsa_ros.learn.demos import main

    bag = _write_demo_bag(tmp_path / f"bag_{storage}", storage)
    out = tmp_path / "demos"
    assert main([str(bag), "--out", str(out), "--bundle", str(tiny_bundle)]) == 0
    b = load_bundle(tiny_bundle)
    spec = TransitionSpec.from_bundle(b)
    st = ReplayStore(out, spec.schema(), spec.fingerprint(), readonly=True)
    d = st.read()
    assert len(d["seq"]) == 3 * 8  # every command, the final ones bootstrapping from the recorded final frame
    assert d["intervention"].all() and d["truncated"].sum() == 3 and not d["terminated"].any()
    assert np.all(np.abs(d["action"]) <= 1.0)
    assert list(d["episode"]) == [e for e in range(3) for _ in range(8)]
    # rewards: the one after command k (received before command k+1) is -(k+1)
    np.testing.assert_allclose(d["reward"], [-(k + 1.0) for _ in range(3) for k in range(8)])
    # fixed-length episodes without an end topic: the final frame is not known, so the last step of
    # each episode has no next observation and is dropped
    bag2 = _write_demo_bag(tmp_path / f"bag2_{storage}", storage, end_topic=False)
    out2 = tmp_path / "demos2"
    assert main([str(bag2), "--out", str(out2), "--bundle", str(tiny_bundle), "--episode-steps", "8"]) == 0
    assert ReplayStore(out2, spec.schema(), spec.fingerprint(), readonly=True).count == 3 * 7
    # a bag without the reward topic is a clear error
    assert main([str(bag), "--out", str(tmp_path / "d3"), "--bundle", str(tiny_bundle),
                 "--reward-topic", "/nope"]) == 1


def test_each_episode_names_the_policy_versions_that_acted_in_it():
    """What the policy gate judges versions on: an episode after a swap names both versions,
    the next only the new one; a late record on a finished episode's final frame is not counted."""
    r = Robot()
    for k in range(3):
        r.tick(k, version="1")
    for k in range(3, 5):
        r.tick(k, version="1+ft1")
    r.now += 20 * MS
    r.obs(5)
    r.asm.add_success(r.now, True)
    r.asm.add_episode_end(r.now, "truncated")
    r.act(5, version="1")  # late, on the final frame
    for k in range(6, 9):
        r.tick(k, version="1+ft1")
    r.asm.add_episode_end(r.now, "terminated")
    eps = r.asm.take_episodes()
    assert [(e.index, e.versions, e.success) for e in eps] == [(0, ("1", "1+ft1"), 1), (1, ("1+ft1",), -1)]
