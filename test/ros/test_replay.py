"""The replay node, end to end over DDS: a bag written with rosbags is replayed by
``wsa_ros.ros.replay_node`` in its own process and received here with real rclpy; every
message must arrive with the right type, order and content. Error cases run in-process
(they fail before any ROS set-up)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bagdata import T0, write_mixed_bag

import rclpy  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402

from wsa_ros.ros import replay_node as replay  # noqa: E402
from wsa_ros.runtime import bags  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _env(domain: int) -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _spin_until_quiet(ex, received: list, quiet_s: float) -> None:
    """Spin until nothing has arrived in ``received`` for ``quiet_s`` (drains what is queued)."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        n = len(received)
        ex.spin_once(timeout_sec=0.02)
        if len(received) != n:
            quiet_since = time.monotonic()


def replay_and_receive(domain: int, bag: Path, topics: dict[str, type], args: list[str], timeout: float = 40.0):
    """Subscribe to ``topics`` ({published topic: class}), run the replay process with
    ``--wait-for-subscribers 1`` and collect [(topic, msg)] in arrival order."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("replay_receiver", context=ctx)
    got: list[tuple[str, object]] = []
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    for topic, cls in topics.items():
        # best-effort subscribers match reliable and best-effort publishers alike
        q = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT) if topic == "/cam" else qos
        node.create_subscription(cls, topic, lambda m, t=topic: got.append((t, m)), q)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    cmd = [sys.executable, "-m", "wsa_ros.ros.replay_node", str(bag), "--wait-for-subscribers", "1",
           "--wait-timeout", "20", "--ack-timeout", "0.5", *args]
    proc = subprocess.Popen(cmd, env=_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.02)
        _spin_until_quiet(ex, got, 0.3)  # drain what is still queued (replay waited for acks)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 0, f"replay exited {proc.returncode}:\n{out}"
    return got, out


def test_replay_round_trip_mcap_with_clock(tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    bag = tmp_path / "bag"
    recs = write_mixed_bag(bag, "mcap")
    topics = {"/cam": Image, "/joint_states": JointState, "/chatter": String, "/cmd": Float64MultiArray,
              "/clock": Clock}
    t0 = time.monotonic()
    got, log = replay_and_receive(61, bag, topics, ["--rate", "2.0", "--clock", "200"])
    wall = time.monotonic() - t0
    msgs = [(t, m) for t, m in got if t != "/clock"]
    for topic in ("/cam", "/joint_states", "/chatter", "/cmd"):
        want = [r for r in recs if r[0] == topic]
        have = [m for t, m in msgs if t == topic]
        assert len(have) == len(want), f"{topic}: received {len(have)} of {len(want)}\n{log}"
        ts = bags.typestore()
        for m, r in zip(have, want):  # order and content: every field as recorded
            assert type(m) is topics[topic]
            assert m == deserialize_message(bytes(ts.serialize_cdr(r[3], r[1])), topics[topic])
    # timing: the bag spans 0.252 s; at rate 2 that is >= 0.126 s of publishing
    assert "published 24 messages on 4 topic(s)" in log
    assert wall > 0.12
    clocks = [m.clock.sec * 1_000_000_000 + m.clock.nanosec for t, m in got if t == "/clock"]
    assert clocks and clocks == sorted(clocks)
    assert clocks[0] >= T0 and clocks[-1] == recs[-1][2]


def test_replay_sqlite3_topic_selection_remap_offset(tmp_path):
    from std_msgs.msg import Float64MultiArray, String

    bag = tmp_path / "bag"
    recs = write_mixed_bag(bag, "sqlite3")
    got, log = replay_and_receive(
        62, bag, {"/strings": String, "/cmd": Float64MultiArray},
        ["--topics", "/chatter", "/cmd", "--remap", "/chatter:=/strings", "--start-offset", "0.1", "--rate", "4"])
    start = T0 + 100_000_000
    want_s = [r[3].data for r in recs if r[0] == "/chatter" and r[2] >= start]
    want_c = [list(r[3].data) for r in recs if r[0] == "/cmd" and r[2] >= start]
    assert [m.data for t, m in got if t == "/strings"] == want_s and len(want_s) == 4
    assert [list(m.data) for t, m in got if t == "/cmd"] == want_c


def test_list_shows_the_deterministic_order(tmp_path, capsys):
    bag = tmp_path / "bag"
    recs = write_mixed_bag(bag, "mcap")
    assert replay.main([str(bag), "--list", "--remap", "/cam:=/camera/image_raw"]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()]
    assert [(int(t), topic) for _i, t, topic, _ty in lines] == [
        (r[2], "/camera/image_raw" if r[0] == "/cam" else r[0]) for r in recs]


def test_replay_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "65")
    bag = tmp_path / "bag"
    write_mixed_bag(bag, "mcap")
    assert replay.main([str(bag), "--topics", "/nope"]) == 1
    assert "topic(s) ['/nope'] not in the bag" in capsys.readouterr().err
    assert replay.main([str(tmp_path / "missing")]) == 1
    assert "bag not found" in capsys.readouterr().err
    assert replay.main([str(bag), "--remap", "/cam"]) == 1
    assert "not of the form /from:=/to" in capsys.readouterr().err
    assert replay.main([str(bag), "--rate", "0"]) == 2
    assert replay.main([str(bag), "--wait-for-subscribers", "1", "--wait-topics", "/clock"]) == 1
    assert "--wait-topics ['/clock'] are not published" in capsys.readouterr().err

    # a record whose bytes are not a valid message of its type
    broken = tmp_path / "broken"
    with bags.BagWriter(broken) as w:
        w.write("/chatter", "std_msgs/msg/String", 1, bags.make_string("fine"))
        w.write("/chatter", "std_msgs/msg/String", 2, b"\x00\x01\x00\x00\xff\xff\xff\x7f")
    assert replay.main([str(broken), "--quiet", "--ack-timeout", "0"]) == 1
    assert "record 1 on /chatter does not deserialize as the installed std_msgs/msg/String" in \
        capsys.readouterr().err

    # a message type this environment does not have installed
    bags.register_types({"wsa_unknown_msgs/msg/Gadget": "int32 x\n"})
    T = bags.typestore().types["wsa_unknown_msgs/msg/Gadget"]
    odd = tmp_path / "odd"
    bags.write_bag(odd, [("/gadget", "wsa_unknown_msgs/msg/Gadget", 1, T(x=1))], storage="sqlite3")
    assert replay.main([str(odd)]) == 1
    err = capsys.readouterr().err
    assert "topic /gadget" in err and "'wsa_unknown_msgs/msg/Gadget' is not installed" in err

    # a corrupt file
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[:200])
    assert replay.main([str(bag)]) == 1
    assert "cannot open bag" in capsys.readouterr().err


# --------------------------------------------------------------------------- replay == offline
SAMPLE_BAG = ROOT / "test" / "data" / "sample_bag"


class SimTimeAgent:
    """agent_node on sim time, acting on every camera frame, in a child process; this process
    receives its action records and diagnostics and runs ``replay`` into it."""

    def __init__(self, tmp_path: Path, domain: int, bundle, extra: str = ""):
        self.tmp, self.domain = tmp_path, domain
        cfg = tmp_path / "agent.yaml"
        cfg.write_text("agent_node:\n  ros__parameters:\n"
                       f"    bundle: {bundle}\n    camera_topics: [/camera/image_raw]\n"
                       "    joint_states_topic: /joint_states\n    trigger: camera\n    start_enabled: true\n"
                       "    providers: [cpu]\n    use_sim_time: true\n" + extra)
        self._log = open(tmp_path / "agent.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "wsa_ros.ros.agent_node", "--ros-args", "--params-file",
                                      str(cfg)], env=_env(domain), stdout=self._log, stderr=subprocess.STDOUT, text=True)
        self.records: list = []
        self.diag: dict = {}
        self.log = ""
        self.ctx = self.ex = None

    def __enter__(self):
        try:
            return self._start()
        except BaseException:
            self.__exit__()  # never leave the agent process behind
            raise

    def _start(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=self.domain)
        self.node = rclpy.create_node("equality_receiver", context=self.ctx)
        self.node.create_subscription(JointState, "/agent_node/action_record", self.records.append,
                                      QoSProfile(depth=1000))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diag.update(
            {kv.key: kv.value for st in m.status if st.hardware_id == "/agent_node" for kv in st.values}), 10)
        self.ex = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        deadline = time.monotonic() + 60
        while self.node.count_publishers("/agent_node/action_record") == 0:
            assert self.proc.poll() is None, f"agent_node exited:\n{(self.tmp / 'agent.log').read_text()}"
            assert time.monotonic() < deadline, "agent_node did not come up within 60 s"
            self.ex.spin_once(timeout_sec=0.05)
        return self

    def replay(self, bag: Path, *args: str) -> str:
        """``replay BAG`` with /clock into the agent; waits for it and for the records to settle."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsa_ros.ros.replay_node", str(bag), "--wait-for-subscribers", "1", "--wait-topics",
             "/camera/image_raw", "/joint_states", "/clock", "--wait-timeout", "30", "--ack-timeout", "0.5", *args],
            env=_env(self.domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            self.ex.spin_once(timeout_sec=0.02)
        _spin_until_quiet(self.ex, self.records, 0.5)
        out = proc.communicate()[0]
        assert proc.returncode == 0, f"replay failed:\n{out}"
        return out

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.seek(0)
        self.log = self._log.read()
        self._log.close()
        if getattr(self, "ex", None) is not None:
            self.ex.shutdown()
            self.node.destroy_node()
        if getattr(self, "ctx", None) is not None and self.ctx.ok():
            rclpy.shutdown(context=self.ctx)


def _stamp(rec) -> int:
    return rec.header.stamp.sec * 1_000_000_000 + rec.header.stamp.nanosec


def _same_actions(records, rows: dict) -> list:
    """The records whose action differs from eval-bag's row for the same frame."""
    by_stamp = {float(k): v for k, v in rows.items()}  # the CSV's stamps may come back as floats
    keys = np.array(sorted(by_stamp), dtype=np.float64)
    wrong = []
    for rec in records:
        s = _stamp(rec)
        k = int(np.argmin(np.abs(keys - s)))
        assert abs(keys[k] - s) < 2_000, f"action record stamp {s} matches no frame of the bag"
        row = by_stamp[float(keys[k])]
        live = np.array([*rec.effort, *rec.velocity])  # unclamped action (joint units), action in [-1, 1]
        want = np.array([row["action_joint0"], row["action_joint1"], row["action_norm_joint0"],
                         row["action_norm_joint1"]])
        if not np.allclose(live, want, rtol=0, atol=1e-6):
            wrong.append((s, live, want))
    return wrong


def test_replay_into_agent_equals_eval_bag(tiny_bundle, tmp_path):
    """The sample bag (the simulated arm, recorded) replayed with /clock into the live agent node
    gives, frame by frame, the same policy actions as ``wsa eval-bag`` on the same bag."""
    from ros_peer import version_of

    from wsa_ros.tools import eval_bag

    with SimTimeAgent(tmp_path, 63, tiny_bundle) as agent:  # comes up while eval-bag runs
        out = tmp_path / "eval"
        assert eval_bag.main([str(SAMPLE_BAG), "--bundle", str(tiny_bundle), "--providers", "cpu", "--out", str(out),
                              "--no-plots", "--quiet", "--max-steps", "60", "--trigger", "frame"]) == 0
        rows = {r["stamp_front"]: r for r in eval_bag.read_table(out / "steps.csv")}
        # 0.6 s of bag (30 frames) at quarter speed; /clock before every message (and at 20 Hz between)
        log = agent.replay(SAMPLE_BAG, "--topics", "/camera/image_raw", "/joint_states", "--clock", "20", "--rate",
                           "0.25", "--duration", "0.6")
    first = min(rows)
    frames = [s for s in rows if s < first + 600_000_000]
    assert len(agent.records) >= 0.7 * len(frames), (len(agent.records), len(frames), log, agent.log)
    assert {version_of(r) for r in agent.records} == {"1"}  # the policy version
    wrong = _same_actions(agent.records, rows)
    assert not wrong, f"{len(wrong)} of {len(agent.records)} live actions differ from eval-bag's: {wrong[:3]}"


def _tick_bag(path: Path, start_ns: int, joint_offset_ns: int, n: int = 40) -> Path:
    """A 50 Hz robot recorded by ``ros2 bag record``: tick k at ``start + 20k ms``; the camera frame
    (a distinct image) stamped at the tick and recorded 3 ms later, the joint state (distinct
    values, so a wrong pairing changes the action) stamped ``joint_offset_ns`` from the tick and
    recorded 1 ms after its stamp."""
    from ros_peer import rgb_frame

    recs = []
    for k in range(n):
        t = start_ns + k * 20_000_000
        js = t + joint_offset_ns
        recs.append((js + 1_000_000, "/joint_states", "sensor_msgs/msg/JointState",
                     bags.make_joint_state(js, ["joint0", "joint1"], [0.3 * np.sin(k), -0.2 + 0.05 * k],
                                           [0.5 * np.cos(k), 0.1 * k])))
        recs.append((t + 3_000_000, "/camera/image_raw", "sensor_msgs/msg/Image",
                     bags.make_image(t, rgb_frame(k, 48, 64))))
    recs.sort(key=lambda r: r[0])
    with bags.BagWriter(path) as w:
        for t, topic, typ, msg in recs:
            w.write(topic, typ, t, msg)
    return path


def test_replay_at_two_rates_equals_eval_bag_for_joint_states_stamped_before_equal_and_after(tiny_bundle, tmp_path):
    """The sync rule is deterministic: one agent (sim time, acting on every frame) gets six bags
    replayed, joint states stamped 1 ms before, exactly at and 1 ms after their frames, each at
    rate 1.0 and 0.3; every action it takes equals ``wsa eval-bag``'s for that frame, whatever
    order DDS and the executor delivered the two streams in."""
    from wsa_ros.tools import eval_bag

    cases = []
    start = 1_800_000_000 * 1_000_000_000
    for offset in (-1_000_000, 0, 1_000_000):
        for rate in (1.0, 0.3):
            bag = _tick_bag(tmp_path / f"bag_{offset}_{rate}", start, offset)
            out = tmp_path / f"eval_{offset}_{rate}"
            assert eval_bag.main([str(bag), "--bundle", str(tiny_bundle), "--providers", "cpu", "--out", str(out),
                                  "--no-plots", "--quiet", "--trigger", "frame"]) == 0
            cases.append((offset, rate, bag, {r["stamp_front"]: r for r in eval_bag.read_table(out / "steps.csv")}))
            start += 1_000_000_000  # the next bag follows on the same (sim) clock
    with SimTimeAgent(tmp_path, 64, tiny_bundle, "    max_obs_age_s: 2.0\n    blend_in_s: 0.0\n"
                      "    diagnostics_period_s: 0.1\n") as agent:
        for offset, rate, bag, _rows in cases:
            agent.replay(bag, "--clock", "50", "--rate", str(rate), "--settle", "1.0")
    # a bag's last frame may complete only when the next bag's first joint state arrives (its record
    # then comes during the next replay): records are matched to their case by stamp, not by arrival
    stamps = [_stamp(r) for r in agent.records]
    assert len(stamps) == len(set(stamps)), "a frame acted on twice"
    # the rule pairs what was received in time: a joint state lost on the way (best-effort sensor
    # QoS, counted from the publisher's sequence numbers) or a frame completed by the sync timeout
    # (counted) may pair a frame with a neighbouring joint state; nothing else may
    excused = int(agent.diag.get("joint states lost", 0)) + int(agent.diag.get("sync_timeouts", 0))
    wrong_all = []
    for offset, rate, _bag, rows in cases:
        lo, hi = min(rows) - 2_000, max(rows) + 2_000
        mine = [r for r in agent.records if lo <= _stamp(r) <= hi]
        assert len(mine) >= 10, (offset, rate, len(mine), agent.log)  # enough actions to compare
        wrong_all += [(offset, rate, *w) for w in _same_actions(mine, rows)]
    assert len(wrong_all) <= excused, \
        f"{len(wrong_all)} actions differ from eval-bag's with {excused} joint states lost or frames timed out: " \
        f"{wrong_all[:3]}\ndiagnostics: {agent.diag}\nagent log:\n{agent.log}"
    # a frame not acted on was lost before the agent took it (its camera subscription keeps only the
    # newest frame, depth 1, as on a robot: a loaded 2-core machine misses some), which the agent
    # counts from the publication sequence numbers; never a pairing that differs
    frames = sum(len(rows) for *_x, rows in cases)
    lost = int(agent.diag.get("camera 'front' lost", 0)) + int(agent.diag.get("camera 'front' dropped", 0))
    assert len(agent.records) + lost >= frames - 2 * len(cases), (len(agent.records), lost, frames, agent.diag)


def test_replay_loop_until_interrupted(tmp_path):
    from std_msgs.msg import String

    bag = tmp_path / "bag"
    recs = write_mixed_bag(bag, "mcap")
    want = [r[3].data for r in recs if r[0] == "/chatter"]
    domain = 64
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("loop_receiver", context=ctx)
    got: list[str] = []
    node.create_subscription(String, "/chatter", lambda m: got.append(m.data), QoSProfile(depth=1000))
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    proc = subprocess.Popen([sys.executable, "-m", "wsa_ros.ros.replay_node", str(bag), "--loop", "--rate", "5",
                             "--topics", "/chatter", "--wait-for-subscribers", "1", "--wait-timeout", "20"],
                            env=_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(got) < 2 * len(want) + 2 and time.monotonic() < deadline and proc.poll() is None:
            ex.spin_once(timeout_sec=0.02)
        proc.send_signal(subprocess.signal.SIGINT)
        out = proc.communicate(timeout=10)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == replay.EXIT_INTERRUPTED, out
    assert got[: 2 * len(want)] == want + want  # the bag again, in the same order


# --------------------------------------------------------------------------- eval-bag
def test_eval_bag_report_and_comparison(tiny_bundle, tmp_path, capsys):
    import json

    from wsa_ros.tools import eval_bag

    out = tmp_path / "ev"
    rc = eval_bag.main([str(SAMPLE_BAG), "--bundle", str(tiny_bundle), "--providers", "cpu", "--out", str(out),
                        "--trigger", "rate", "--rate-hz", "10", "--quiet"])
    assert rc == 0
    rows = eval_bag.read_table(out / "steps.csv")
    # 12 s of bag at 10 Hz; the first tick has no frame yet
    assert 118 <= len(rows) <= 121
    r = rows[10]
    for col in ("bag_time_ns", "stamp_front", "recv_front", "stamp_joints", "recv_joints", "action_joint0",
                "action_norm_joint1", "alpha_ae", "alpha_idm", "ms_decode", "ms_preprocess", "ms_enc_ae",
                "ms_enc_ctx", "ms_policy", "ms_total", "recorded_joint0", "recorded_time_ns"):
        assert r[col] is not None, col
    # the sync rule: samples at or before the step, the recorded command after it
    assert all(x["recv_front"] <= x["bag_time_ns"] and x["recv_joints"] <= x["bag_time_ns"] for x in rows)
    assert all(x["recorded_time_ns"] is None or x["recorded_time_ns"] >= x["bag_time_ns"] for x in rows)
    assert rows[1]["bag_time_ns"] - rows[0]["bag_time_ns"] == 100_000_000
    assert abs(r["alpha_ae"] + r["alpha_idm"] - 1) < 1e-5
    s = json.loads((out / "summary.json").read_text())
    assert s["comparison"]["joint0"]["n"] >= 115 and s["latency_ms"]["total"]["p95"] > 0
    report = (out / "report.md").read_text()
    assert "## Latency per stage (ms)" in report and "| joint0 |" in report
    assert all((out / f).stat().st_size > 1000 for f in ("actions.png", "alpha.png", "latency.png"))

    # errors name the cause
    assert eval_bag.main([str(SAMPLE_BAG), "--bundle", str(tiny_bundle), "--providers", "cpu", "--out",
                          str(tmp_path / "e2"), "--camera-topics", "/a", "/b"]) == 1
    assert "reads 1 camera(s) ['front'] but 2 camera topic(s)" in capsys.readouterr().err
    assert eval_bag.main([str(SAMPLE_BAG), "--bundle", str(tiny_bundle), "--providers", "cpu", "--out",
                          str(tmp_path / "e3"), "--joint-states-topic", "/nope"]) == 1
    assert "topic(s) ['/nope'] not in the bag" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        assert eval_bag.main([str(SAMPLE_BAG), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "e4"),
                              "--format", "parquet"]) == 1
        assert "--format parquet needs pyarrow" in capsys.readouterr().err


def test_command_vector_and_alignment():
    import numpy as np

    from wsa_ros.runtime.bundle import ActionSpec
    from wsa_ros.tools.eval_bag import align_commands, command_vector

    spec = ActionSpec("velocity", ["j0", "j1"], [-1, -1], [1, 1])
    traj = bags.make_joint_trajectory(0, ["j1", "j0", "extra"], velocities=[0.2, 0.1, 9.0])
    np.testing.assert_array_equal(command_vector("trajectory_msgs/msg/JointTrajectory", traj, spec), [0.1, 0.2])
    with pytest.raises(ValueError, match="3 values"):
        command_vector("std_msgs/msg/Float64MultiArray", bags.make_float64_array([1, 2, 3]), spec)
    # steps at 0, 10, 20; commands at 5 (answers step 0), 25 (answers step 20); none for step 10
    assert align_commands([0, 10, 20], [5, 25], []) == [0, None, 1]
