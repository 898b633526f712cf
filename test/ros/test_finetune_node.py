"""finetune_node over real rclpy and DDS, across processes, next to a real agent_node.

Processes: ``agent_node`` (child, robot "/" : tiny bundle, acting on every camera frame),
``finetune_node`` (child; killed with SIGKILL mid-training and restarted), and this test
process, which is the environment: per tick, like ``sim_arm_node``, the reward of the step
just taken, then a camera frame and a joint state with one stamp, and after every EPISODE-th
frame an episode end (the final frame comes first). It steps in lock-step with the agent, as
a simulator stepping on command would: the next step's reward goes out only once the agent's
action record of the current frame has arrived (or 0.5 s passed), so which step a reward
belongs to never hangs on a timing tie. It also plays a second robot "/r2" whose action
records it publishes itself (no agent there, so the learner's pushes to /r2/agent_node must
fail softly). ROS_DOMAIN_ID 101, loopback only.

The ingest rules this exercises end to end (publish-time order, sequence gaps, pairing by
stamp, reward attribution, episode ends) are unit-tested with synthetic stamps in
``test/unit/test_ingest.py`` and ``test/unit/test_store.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml


from ros_peer import AgentProcess, Peer, rgb_frame, ros_env, stamp_key, stop_child, version_of, wait_for  # noqa: E402

from wsa_ros.runtime.bundle import load_bundle  # noqa: E402
from wsa_ros.tools.demo import niced  # noqa: E402
from wsa_ros.learn.store import ReplayStore  # noqa: E402
from wsa_ros.learn.transitions import TransitionSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = 101
CAM, JS = "/camera/image_raw", "/joint_states"
REWARD, END = "/wsa/reward", "/wsa/episode_end"
JOINTS = ["joint0", "joint1"]
RATE_HZ = 15.0
EPISODE = 20  # frames per episode
START_TIMEOUT = 90.0


class FinetuneProcess:
    def __init__(self, params: dict, log_dir: Path, tag: str, domain: int = DOMAIN, env: dict | None = None):
        self.params_file = log_dir / f"finetune_{tag}.yaml"
        self.params_file.write_text(yaml.safe_dump({"finetune_node": {"ros__parameters": params}}))
        self.log_path = log_dir / f"finetune_{tag}.log"
        self._log = open(self.log_path, "w")
        # niced, as `wsa demo` runs it: on one small machine the robot's real-time loop goes first and
        # the learner takes what is left (a clean-clone run here saw the agent act on 0.33 of the frames
        # while an un-niced learner restarted beside it on 2 cores)
        self.proc = subprocess.Popen(
            niced([sys.executable, "-m", "wsa_ros.ros.finetune_node", "--ros-args", "--params-file",
                   str(self.params_file)]),
            cwd=str(ROOT), env={**ros_env(domain), **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> int | None:
        return stop_child(self.proc, self._log, 30)


class Environment:
    """The robot side: frames + joints + rewards + episode ends for robot "/" (acted on by
    the real agent) and robot "/r2" (action records published here)."""

    def __init__(self, peer: Peer):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64, String

        self.peer = peer
        n = peer.node
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = {"reward": n.create_publisher(Float64, REWARD, rel), "end": n.create_publisher(String, END, rel),
                    "r2_reward": n.create_publisher(Float64, "/r2" + REWARD, rel),
                    "r2_end": n.create_publisher(String, "/r2" + END, rel),
                    "r2_record": n.create_publisher(JointState, "/r2/agent_node/action_record", rel),
                    "bad_record": n.create_publisher(JointState, "/agent_node/action_record", rel)}
        peer.publisher(CAM, "image")
        peer.publisher(JS, "joints")
        peer.publisher("/r2" + CAM, "image")
        peer.publisher("/r2" + JS, "joints")
        self.rewards: dict[int, float] = {}  # frame stamp -> reward published right after that frame
        self.final_frames: set[int] = set()
        self.frames: list[tuple[float, int]] = []
        self.reward_log: list[tuple[int, float]] = []  # (publish time ns, value)
        self.end_log: list[int] = []
        self.last_reward: dict[int, int] = {}  # final frame stamp -> publish time of the episode's last reward
        self.record_sent: dict[int, int] = {}  # agent record stamp -> its publish (source) time ns
        n.create_subscription(JointState, "/agent_node/action_record", self._on_record, rel)
        self.i = 0
        self.step = 0
        self._record_came = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _on_record(self, msg, info):
        with self.peer.lock:
            self.record_sent[stamp_key(msg.header.stamp)] = int(info["source_timestamp"])
        self._record_came.set()

    def _wait_record(self, key: int, timeout: float = 0.5) -> None:
        """Lock-step: hold the next step until the agent's record of frame ``key`` arrived."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self.peer.lock:
                if key in self.record_sent:
                    return
            self._record_came.wait(0.005)
            self._record_came.clear()

    def expected_reward(self, stamp: int, nxt: int, truncated: bool) -> float:
        """What the learner must have summed for the agent's step on frame ``stamp``: every reward
        published after that record and before the next record the learner used (or the episode
        end). In lock-step each reward is published after its step's record came back, so no
        reward is near a boundary."""
        t0 = self.record_sent[stamp]
        t1 = min(t for t in self.end_log if t > t0) if truncated else self.record_sent[nxt]
        return sum(r for t, r in self.reward_log if t0 < t < t1)

    def explain(self, stamps, rec_stamps) -> list:
        """Publish times around records (for failure messages), relative to the record's frame stamp, ms."""
        out = []
        for s in stamps:
            i = rec_stamps.index(s)
            nxt = rec_stamps[i + 1] if i + 1 < len(rec_stamps) else None
            ms = lambda t: None if t is None else round((t - s) / 1e6, 1)  # noqa: E731
            out.append({"record_sent": ms(self.record_sent.get(s)), "next_frame": ms(nxt),
                        "next_record_sent": ms(self.record_sent.get(nxt)),
                        "rewards": [(ms(t), r) for t, r in self.reward_log if -200e6 < t - s < 300e6],
                        "ends": [ms(t) for t in self.end_log if -200e6 < t - s < 300e6],
                        "finals": [ms(f) for f in self.final_frames if -200e6 < f - s < 300e6]})
        return out

    def executed(self, stamp: int, nxt: int | None) -> bool:
        """Did the environment take a step while this record's command was the latest? (A record
        the agent sent so late that the next one followed before any step has no reward and is
        rejected as such.)"""
        t0 = self.record_sent.get(stamp)
        t1 = self.record_sent.get(nxt, float("inf")) if nxt is not None else float("inf")
        return t0 is not None and any(t0 < t < t1 for t, _ in self.reward_log)

    def late_or_final(self, stamp: int) -> bool:
        """The agent's record on this frame cannot be a step: it is on an episode's final frame,
        or it was published after the episode's last reward (the environment had already taken
        its last step: the action never acted, and the learner rejects it for having no reward
        or for coming after the end)."""
        if stamp in self.final_frames:
            return True
        final = min((f for f in self.final_frames if f > stamp), default=None)
        return final is not None and self.record_sent.get(stamp, 0) > self.last_reward[final]

    def _record(self, stamp, k: int):
        from sensor_msgs.msg import JointState

        m = JointState(name=JOINTS, position=[float(np.sin(k)), -1.0], velocity=[float(np.sin(k)) / 3, -1 / 3])
        m.header.stamp = stamp
        m.header.frame_id = "r2-fake"
        self.pub["r2_record"].publish(m)

    def tick(self):
        from std_msgs.msg import Float64, String

        self.i += 1
        k = self.i
        stamp = self.peer.stamp_now()
        key = stamp_key(stamp)
        pos = [0.01 * self.step, -0.02 * self.step]
        if self.step > 0:  # the reward of the step that led to this frame, before the frame (as sim_arm_node)
            r = -round(0.1 * (k % 13), 3)
            self.rewards[key] = r
            self.reward_log.append((time.time_ns(), r))
            self.pub["reward"].publish(Float64(data=r))
            self.pub["r2_reward"].publish(Float64(data=r))
        for ns in ("", "/r2"):
            self.peer.publish_joints(ns + JS, JOINTS, pos, [0.1, 0.2], stamp=stamp)
            self.peer.publish_image(ns + CAM, rgb_frame(k % 50, 48, 64), stamp=stamp)
        self.frames.append((time.monotonic(), key))
        final = self.step == EPISODE - 1
        if final:  # the final frame, then the end; the next frame is a reset
            self.final_frames.add(key)
            self.last_reward[key] = self.reward_log[-1][0]
            self.end_log.append(time.time_ns())
            self.pub["end"].publish(String(data="truncated"))
            self.pub["r2_end"].publish(String(data="truncated"))
            self.step = 0
        else:
            self._record(stamp, k)
            self.step += 1
        if not final:
            self._wait_record(key)

    def _run(self):
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            nxt += 1.0 / RATE_HZ
            time.sleep(max(0.0, nxt - time.monotonic()))


def _status_sub(peer: Peer):
    from std_msgs.msg import String

    box = {"last": None, "count": 0}

    def cb(msg):
        with peer.lock:
            box["last"] = json.loads(msg.data)
            box["count"] += 1

    peer.node.create_subscription(String, "/finetune_node/status", cb, 10)

    def get():
        with peer.lock:
            return box["last"]
    return get


def _bad_records(env: Environment):
    from sensor_msgs.msg import JointState

    for names, pos in ((JOINTS, [float("nan"), 0.0]), (["joint0", "gripper"], [0.0, 0.0]), (JOINTS, [9.0, 0.0])):
        m = JointState(name=names, position=pos, velocity=[0.0, 0.0])
        m.header.stamp = env.peer.stamp_now()
        m.header.frame_id = "evil"
        env.pub["bad_record"].publish(m)


def test_finetune_node_end_to_end_with_kill_9(tiny_bundle, tmp_path):
    """... and signed: the agent acts only on bundles signed by the learner's key (allow_unsigned
    false); the learner signs each validated export, so its pushes are taken."""
    import shutil

    from wsa_ros.runtime.signing import generate_keypair, sign_bundle

    store_dir, out_dir = tmp_path / "store", tmp_path / "out"
    priv, pub = tmp_path / "keys" / "learner.key", tmp_path / "keys" / "learner.pub"
    generate_keypair(priv, pub)
    start = shutil.copytree(tiny_bundle, tmp_path / "start")
    sign_bundle(start, priv)
    agent_params = dict(bundle=str(start), providers=["cpu"], camera_topics=[CAM], joint_states_topic=JS,
                        control_rate_hz=30.0, max_obs_age_s=0.5, blend_in_s=0.0, max_rate=0.0,
                        trigger="camera", start_enabled=True, diagnostics_period_s=0.5,
                        trusted_keys=[str(pub)], allow_unsigned=False)
    ft_params = dict(bundle=str(start), store_dir=str(store_dir), out_dir=str(out_dir), namespaces=["", "/r2"],
                     signing_key=str(priv),
                     camera_topics=[CAM], joint_states_topic=JS, reward_topic=REWARD, episode_end_topic=END,
                     providers=["cpu"], export_every_updates=80, holdout_every=5, checkpoint_period_s=1.0,
                     status_period_s=0.2, log_every_updates=20,
                     learner=dict(warmup_transitions=20, batch_size=32, utd=4))
    logs = Path(tempfile.mkdtemp(prefix="ft_logs_", dir=tmp_path))
    agent = AgentProcess(DOMAIN, agent_params, log_dir=str(logs))
    learner = FinetuneProcess(ft_params, logs, "run1")
    learner2 = None
    peer = Peer(DOMAIN)
    env = None
    try:
        status = _status_sub(peer)
        env = Environment(peer)
        try:
            peer.wait_subscribed(CAM, START_TIMEOUT, count=2)  # the agent and the learner
            peer.wait_outputs_matched(START_TIMEOUT)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nagent:\n{agent.output()}\nlearner:\n{learner.output()}") from None
        env.start()
        # ---------------------------------------------------------------- learning and a push
        try:
            st = wait_for(lambda: (lambda s: s if s and s["version_pushed"] else None)(status()), START_TIMEOUT,
                          "the learner to export, validate and push a policy")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {status()}\nlearner:\n{learner.output()}") from None
        pushed = st["version_pushed"]
        assert pushed.startswith("1+ft")
        wait_for(lambda: any(version_of(r) == pushed for _, r in peer.snapshot("records")), 20,
                 f"the agent acting with policy {pushed}")
        assert (out_dir / f"tiny-{pushed}" / "manifest.sig").is_file()  # signed, or the agent would have refused it
        assert any(p["agent"] == "/r2/agent_node" and p["ok"] is False and "not available" in p["reason"]
                   for p in status()["pushes"])  # a missing agent is logged, not fatal
        _bad_records(env)
        st = wait_for(lambda: (lambda s: s if s and s["rejected"].get("joint_nonfinite") and s["rejected"].get(
            "joint_missing") and s["rejected"].get("action_out_of_bounds") else None)(status()), 10,
            "the malformed records to be rejected and counted")
        ckpt = out_dir / "learner" / "checkpoint.pt"
        wait_for(ckpt.is_file, 20, "a learner checkpoint")
        wait_for(lambda: status()["updates"] >= status()["resumed_from"] + 50, 30, "more training")
        # ---------------------------------------------------------------- kill -9 mid-training
        before = status()
        assert before["updates"] > 0 and before["store"]["stored"] > 0
        t_kill, kill_ns = time.monotonic(), time.time_ns()
        learner.kill9()
        time.sleep(2.0)  # the robot keeps going without a learner
        learner2 = FinetuneProcess(ft_params, logs, "run2")
        try:
            st2 = wait_for(lambda: (lambda s: s if s and s["time"] > time.time() - 1 and s["resumed_from"] > 0
                                    and s["updates"] > s["resumed_from"] + 20 else None)(status()), START_TIMEOUT,
                           "the restarted learner to resume training")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {status()}\nlearner run2:\n{learner2.output()}") from None
        t_back = time.monotonic()
        # the store is intact: all that was on disk before the kill, none of it torn
        assert st2["store"]["corrupt"] == 0
        assert st2["store"]["stored"] + st2["store"]["pending"] >= before["store"]["stored"]
        # at most ~one flush period of transitions was only in memory at the kill
        assert before["store"]["pending"] <= 2 * 2 * RATE_HZ * 1.0 + 5
        # the agent kept acting while the learner was dead and restarting (t_back - t_kill: the
        # whole restart, >10 s here): an agent that waited for its learner would show a gap that long.
        # Bounds leave room for a loaded 2-core machine, whose scheduler also delays the agent.
        recs = [(t, stamp_key(r.header.stamp)) for t, r in peer.snapshot("records") if t_kill <= t <= t_back]
        gaps = np.diff([t for t, _ in recs])
        acted = {stamp_key(r.header.stamp) for _, r in peer.snapshot("records")}

        def acted_fraction(t0: float, t1: float) -> float:
            sent = [k for t, k in env.frames if t0 <= t <= t1]
            assert len(sent) > 20, (t0, t1, len(sent))
            return sum(k in acted for k in sent) / len(sent)

        assert t_back - t_kill > 5.0 and gaps.max() < 1.0, (t_back - t_kill, gaps.max())
        # the share of frames the agent acted on while its learner was dead or restarting, against the
        # same share over as long a window just before the kill (the same machine, the learner training):
        # an agent that waited for its learner would act on almost none of them
        during = acted_fraction(t_kill, t_back - 0.5)
        span = min(t_back - t_kill, 10.0)
        baseline = acted_fraction(t_kill - span, t_kill - 0.5)
        print(f"acted on {during:.2f} of the frames during the restart, {baseline:.2f} before the kill")
        assert during >= 0.6 and during >= 0.75 * baseline, (during, baseline)

        def stored(st):
            return st["store"]["stored"] + st["store"]["pending"]

        # the restarted learner takes new transitions from this agent (the checks below need a run of
        # them; robot /r2's alone would not do: a clean-clone run once stored only /r2's)
        n0, mine0 = stored(st2), st2["robots"]["/"]["accepted"]
        try:
            wait_for(lambda: (lambda s: s is not None and stored(s) >= n0 + 15
                              and s["robots"]["/"]["accepted"] >= mine0 + 15)(status()), 30,
                     "new transitions of this agent after the restart")
        except TimeoutError as exc:
            s = status()
            keep = ("records", "accepted", "rejected", "superseded", "pairing", "counts", "store", "inbox", "robots")
            raise AssertionError(f"{exc}: from {n0}; last status {time.time() - s['time']:.1f} s old: "
                                 f"{json.dumps({k: s[k] for k in keep})}\n"
                                 f"learner run2:\n{learner2.output()}") from None
        time.sleep(1.0)
        final = status()
    finally:
        if env is not None:
            env.stop()
        codes = {"learner2": learner2.stop() if learner2 else None, "learner": learner.stop()}
        records = peer.snapshot("records")
        peer.close()
        agent.stop()
    assert codes["learner2"] == 0, learner2.output()
    # ------------------------------------------------------------------ the store, offline
    b = load_bundle(tiny_bundle)
    spec = TransitionSpec.from_bundle(b)
    d = ReplayStore(store_dir, spec.schema(), spec.fingerprint(), readonly=True).read()
    assert list(d["seq"]) == list(range(len(d["seq"])))
    mine = d["source"] == "/"
    assert (d["source"] == "/r2").sum() > 10  # the second robot fed the same learner
    stamps, nxt, rewards = d["stamp_ns"][mine], d["next_stamp_ns"][mine], d["reward"][mine]
    rec_stamps = [stamp_key(r.header.stamp) for _, r in records]
    versions = {version_of(r) for _, r in records}
    assert set(d["version"][mine]) <= versions
    # in order, and every transition's next observation is the agent's next record's frame
    # (or, at an episode end, the final frame)
    order = {s: i for i, s in enumerate(rec_stamps)}
    for run in np.split(np.arange(len(stamps)), np.where(np.diff(stamps) <= 0)[0] + 1):
        assert len(run) == len(stamps), "transitions out of order"
    bad = []
    for i, (s, n_, r, trunc) in enumerate(zip(stamps, nxt, rewards, d["truncated"][mine])):
        assert s in order, "a transition whose stamp the agent never acted on"
        if trunc:
            assert n_ in env.final_frames, (i, s, n_, s < kill_ns)
        else:
            assert rec_stamps[order[s] + 1] == n_
        want = env.expected_reward(s, n_, bool(trunc))
        if r != pytest.approx(want, abs=1e-5):
            bad.append((i, float(r), want, env.rewards.get(n_)))
    assert not bad, f"rewards attributed to the wrong step: {bad[:10]} of {len(stamps)}"
    # robot /r2 (records published in step with the frames): each step's reward is the one
    # published before its next frame
    r2 = d["source"] == "/r2"
    for n_, r in zip(d["next_stamp_ns"][r2], d["reward"][r2]):
        assert r == pytest.approx(env.rewards[n_], abs=1e-5)
    # complete: between the first and the last transition of each run of the learner, every record
    # of the agent that is not on an episode's final frame became a transition, in order, except
    # steps the learner counted as rejected (a frame or record DDS lost on the way: best-effort frames
    # on a loaded machine); those stay a small minority
    for part, st in ((stamps[stamps < kill_ns], before), (stamps[stamps > kill_ns], final)):
        # (seen once in a clean-clone run: none of the agent's steps after the restart stored; the
        # learner's own counts say why)
        assert len(part) > 10, ("before the kill" if st is before else "after the restart", len(part),
                                int((d["source"] == "/r2").sum()), st["rejected"], st["counts"], st["store"])
        want = [s for i, s in enumerate(rec_stamps) if part[0] <= s <= part[-1] and not env.late_or_final(s)
                and env.executed(s, rec_stamps[i + 1] if i + 1 < len(rec_stamps) else None)]
        assert list(part) == [s for s in want if s in set(part)], "out of order"
        missing = [w for w in want if w not in set(part)]
        lost = sum(st["rejected"].get(k, 0) for k in ("no_matching_frame", "record_lost", "broken_chain", "no_reward"))
        assert len(missing) <= max(lost, 0) and len(missing) <= 0.1 * len(want), (
            env.explain(missing, rec_stamps), st["rejected"], st["counts"])
