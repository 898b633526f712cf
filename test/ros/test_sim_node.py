"""sim_arm_node over real ROS 2, in separate processes: determinism under a seed, the topics it
publishes, bad-command rejection, the command timeout and the JointTrajectory input; the 7-joint
arm (``config/sim_arm7.yaml``): both cameras, 7-joint states and position trajectories.

The node runs as a child process (``sim_arm_node --ros-args ...``); the test observes it from an
rclpy node in a private context on the test's own ROS_DOMAIN_ID (80-99 are this file's (81-87) and
test_closed_loop.py's). Every wait is bounded.
"""
from __future__ import annotations

import hashlib
import math
import time

import numpy as np


from wsa_ros.tools.demo import Children, node_command, ros_env  # noqa: E402
from wsa_ros.ros.monitor import RosSession  # noqa: E402

DT_NS = 20_000_000  # one sim step


class SimProbe:
    """Records what a sim_arm_node publishes, keyed by header stamp (sim time when the node
    publishes /clock, so the same step has the same key in every run)."""

    def __init__(self, session: RosSession):
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64, String

        n = session.node
        sensor = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.images: dict[int, tuple] = {}
        self.joints: dict[int, tuple] = {}
        self.last_joints = None
        self.rewards: list[float] = []
        self.ends: list[str] = []
        self.stats: list[dict] = []
        self.diag: list[dict] = []
        n.create_subscription(Image, "/camera/image_raw", self._image, sensor)
        n.create_subscription(JointState, "/joint_states", self._joints, sensor)
        n.create_subscription(Float64, "/wsa/reward", lambda m: self.rewards.append(m.data), reliable)
        n.create_subscription(String, "/wsa/episode_end", lambda m: self.ends.append(m.data), reliable)
        n.create_subscription(DiagnosticStatus, "/sim_arm_node/episode_stats",
                              lambda m: self.stats.append({kv.key: kv.value for kv in m.values}), reliable)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 10)

    @staticmethod
    def _ns(header) -> int:
        return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec

    def _image(self, m):
        self.images[self._ns(m.header)] = (hashlib.sha256(bytes(m.data)).hexdigest(), m.height, m.width,
                                           m.encoding, m.step, m.header.frame_id)

    def _joints(self, m):
        rec = (tuple(m.name), tuple(m.position), tuple(m.velocity))
        self.joints[self._ns(m.header)] = rec
        self.last_joints = rec

    def _diag(self, m):
        for s in m.status:
            if s.name.endswith("sim_arm_node: sim"):
                self.diag.append({kv.key: kv.value for kv in s.values})

    def velocity(self) -> np.ndarray:
        return np.array(self.last_joints[2]) if self.last_joints else np.full(2, np.nan)

    def diag_value(self, key: str) -> float:
        return float(self.diag[-1][key]) if self.diag else -1.0


def start_sim(children: Children, **params):
    return children.start(f"sim_{len(children.items)}", node_command("sim_arm_node", params))


# ------------------------------------------------------------------------------------------ tests
def test_same_seed_same_images_and_joint_states_across_processes(tmp_path):
    """Two sim processes with one seed publish bit-identical frames and joint states at every
    step both were seen at (keys: sim-time stamps); a third with another seed differs."""
    common = dict(max_episode_steps=10, publish_clock=True, real_time_factor=1.0, image_size=84)
    runs = {81: 5, 82: 5, 83: 6}  # domain -> seed
    sessions, probes, kids = {}, {}, []
    try:
        for dom, seed in runs.items():
            ch = Children(ros_env(dom), tmp_path / f"logs{dom}")
            kids.append(ch)
            start_sim(ch, seed=seed, **common)
            sessions[dom] = RosSession(f"probe{dom}", dom)
            probes[dom] = SimProbe(sessions[dom])
        need = 60  # steps seen by both compared processes (best-effort QoS may drop some)

        def common(x, y, joints=True):
            keys = set(x.images) & set(y.images)
            return keys & set(x.joints) & set(y.joints) if joints else keys

        def done():
            a_, b_, c_ = probes[81], probes[82], probes[83]
            return len(common(a_, b_)) >= need and len(common(a_, c_, joints=False)) >= need

        end = time.monotonic() + 60.0
        while not done():
            for ch in kids:
                assert not ch.dead(), f"sim exited early:\n{ch.items[0].tail()}"
            assert time.monotonic() < end, f"fewer than {need} common steps within 60 s"
            for s in sessions.values():
                s.executor.spin_once(timeout_sec=0.01)
        horizon = max(max(p.images) for p in probes.values())
    finally:
        for s in sessions.values():
            s.close()
        for ch in kids:
            ch.stop()

    a, b, c = probes[81], probes[82], probes[83]
    # every stamp is a whole number of steps (sim time), image and joint state share stamps
    assert all(t % DT_NS == 0 for t in a.images) and set(a.images) & set(a.joints)
    h, w, enc, step, frame = next(iter(a.images.values()))[1:]
    assert (h, w, enc, step, frame) == (84, 84, "rgb8", 84 * 3, "camera")
    assert next(iter(a.joints.values()))[0] == ("joint0", "joint1")

    keys = sorted(k for k in set(a.images) & set(b.images) & set(a.joints) & set(b.joints) if k <= horizon)
    assert len(keys) >= 60, f"only {len(keys)} common steps received (best-effort drops / slow start?)"
    diff_img = [k for k in keys if a.images[k] != b.images[k]]
    diff_js = [k for k in keys if a.joints[k] != b.joints[k]]
    assert not diff_img and not diff_js, (
        f"same seed, different output at steps {[k // DT_NS for k in (diff_img or diff_js)][:10]}")
    # several episodes (targets) are covered: the frames are not all one picture
    assert len({a.images[k][0] for k in keys}) >= 5

    keys_c = sorted(k for k in set(a.images) & set(c.images) if k <= horizon)
    assert len(keys_c) >= 60
    same = sum(a.images[k][0] == c.images[k][0] for k in keys_c)
    assert same < len(keys_c) // 2, "a different seed gave the same frames"

    # episodes: 10 steps each, truncated, rewards finite and negative (distance penalty)
    assert a.ends and set(a.ends) == {"truncated"}
    assert a.stats and all(s["steps"] == "10" and s["end"] == "truncated" for s in a.stats)
    assert all(int(s["end_stamp_ns"]) - int(s["start_stamp_ns"]) == 10 * DT_NS for s in a.stats)
    assert a.rewards and all(math.isfinite(r) and r < 0 for r in a.rewards)


def test_bad_commands_rejected_and_timeout_stops_the_arm(tmp_path):
    """Wrong length / NaN / inf commands are counted and never move the arm; a valid stream is
    tracked; NaNs inside it are ignored; when the stream stops the arm stops within the timeout."""
    from rclpy.qos import QoSProfile
    from std_msgs.msg import Float64MultiArray

    dom = 84
    with Children(ros_env(dom), tmp_path / "logs") as ch, RosSession("probe84", dom) as s:
        start_sim(ch, seed=1, max_episode_steps=100000, command_timeout_s=0.2, real_time_factor=1.0)
        probe = SimProbe(s)
        pub = s.node.create_publisher(Float64MultiArray, "/forward_command_controller/commands", QoSProfile(depth=10))
        s.spin_until(lambda: pub.get_subscription_count() >= 1 and probe.last_joints is not None, 20.0,
                     "the sim's command subscription and first joint state", ch)
        s.spin_for(0.3)

        def send(values):
            pub.publish(Float64MultiArray(data=[float(v) for v in values]))

        # 1. bad commands only: rejected, the arm stays still
        for bad in ([1.0], [1.0, 2.0, 3.0], [math.nan, 0.0], [0.0, math.inf], []):
            send(bad)
            s.spin_for(0.05)
        s.spin_for(0.4)
        assert np.all(np.abs(probe.velocity()) < 0.05), f"a rejected command moved the arm: v={probe.velocity()}"
        s.spin_until(lambda: probe.diag_value("rejected_commands") >= 5, 3.0, "diagnostics counting 5 rejects", ch)
        assert probe.diag_value("accepted_commands") == 0

        # 2. a valid stream at 50 Hz with NaN commands mixed in: the valid one is tracked
        for i in range(30):
            send([2.0, -2.0] if i % 5 else [math.nan, math.nan])
            s.spin_for(0.02)
        v = probe.velocity()
        assert np.allclose(v, [2.0, -2.0], atol=0.15), f"valid command not tracked: v={v}"

        # 3. the stream stops: after the 0.2 s timeout the arm is commanded to zero
        s.spin_for(0.6)
        v = probe.velocity()
        assert np.all(np.abs(v) < 0.05), f"arm still moving {v} 0.6 s after the last command (timeout 0.2 s)"
        s.spin_until(lambda: probe.diag_value("command_timeouts") >= 1, 3.0, "diagnostics counting the timeout", ch)
        assert probe.diag_value("rejected_commands") >= 11
        assert probe.diag_value("accepted_commands") >= 20
        assert not ch.dead(), "the sim died on bad input"


def test_joint_trajectory_commands_by_joint_name(tmp_path):
    """command_type joint_trajectory: the first point's velocities are applied by joint name;
    a trajectory naming an unknown joint is rejected."""
    from rclpy.qos import QoSProfile
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    dom = 85
    with Children(ros_env(dom), tmp_path / "logs") as ch, RosSession("probe85", dom) as s:
        start_sim(ch, seed=2, max_episode_steps=100000, command_type="joint_trajectory",
                  command_topic="/arm_controller/joint_trajectory")
        probe = SimProbe(s)
        pub = s.node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", QoSProfile(depth=10))
        s.spin_until(lambda: pub.get_subscription_count() >= 1 and probe.last_joints is not None, 20.0,
                     "the sim's trajectory subscription", ch)

        def send(names, vel):
            pub.publish(JointTrajectory(joint_names=names, points=[JointTrajectoryPoint(velocities=vel)]))

        for _ in range(5):
            send(["joint0", "elbow"], [1.0, 1.0])
            s.spin_for(0.04)
        assert np.all(np.abs(probe.velocity()) < 0.05)
        for _ in range(20):
            send(["joint1", "joint0"], [-1.0, 1.5])
            s.spin_for(0.02)
        assert np.allclose(probe.velocity(), [1.5, -1.0], atol=0.1), probe.velocity()
        s.spin_until(lambda: probe.diag_value("rejected_commands") >= 5, 3.0, "diagnostics counting rejects", ch)


def test_arm7_two_cameras_seven_joints_and_position_trajectories(tmp_path):
    """arm: arm7 (config/sim_arm7.yaml): both camera topics (frame_id = camera name, one stamp
    with the 7-joint state), JointTrajectory positions by joint name move the arm to the
    target; a trajectory carrying velocities only is rejected; without commands it holds."""
    from pathlib import Path

    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from wsa_ros.sim.arm7 import JOINT_NAMES, Arm7Sim

    with Arm7Sim(render=False) as ref:
        low, high = ref.action_low, ref.action_high
    dom = 86
    params = Path(__file__).resolve().parents[2] / "config" / "sim_arm7.yaml"
    with Children(ros_env(dom), tmp_path / "logs") as ch, RosSession("probe86", dom) as s:
        ch.start("sim_arm7", node_command("sim_arm_node", {"seed": 3, "max_episode_steps": 100000}, [params]))
        probe = SimProbe(s)
        sensor = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
        frames: dict[str, dict[int, tuple]] = {"scene": {}, "wrist": {}}
        for cam in frames:
            s.node.create_subscription(Image, f"/{cam}_camera/image_raw", lambda m, c=cam: frames[c].__setitem__(
                SimProbe._ns(m.header), (m.header.frame_id, m.height, m.width, m.encoding, len(m.data))), sensor)
        pub = s.node.create_publisher(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                      QoSProfile(depth=10))
        s.spin_until(lambda: pub.get_subscription_count() >= 1 and probe.last_joints is not None
                     and frames["scene"] and frames["wrist"], 30.0, "both arm7 cameras and the joint state", ch)
        s.spin_for(0.3)
        names, q0, _ = probe.last_joints
        assert names == JOINT_NAMES
        assert len(q0) == 7 and len(probe.last_joints[2]) == 7
        for cam, got in frames.items():
            assert {v for v in got.values()} == {(cam, 84, 84, "rgb8", 84 * 84 * 3)}, (cam, set(got.values()))
        both = set(frames["scene"]) & set(frames["wrist"]) & set(probe.joints)
        assert both, "camera frames and joint states do not share stamps"
        q0 = np.array(q0)

        def send(point: JointTrajectoryPoint, order=None):
            order = list(JOINT_NAMES) if order is None else order
            pub.publish(JointTrajectory(joint_names=order, points=[point]))

        # velocities only (Reacher's field): rejected, the arm holds its pose
        for _ in range(5):
            send(JointTrajectoryPoint(velocities=[0.5] * 7))
            s.spin_for(0.05)
        s.spin_for(0.3)
        assert np.abs(np.array(probe.last_joints[1]) - q0).max() < 1e-3
        # a position target 0.1 rad away on every joint, joints named in reverse order
        goal = np.clip(q0 + 0.1 * np.sign(0.5 * (low + high) - q0), low, high)
        rev = list(reversed(JOINT_NAMES))
        for _ in range(25):  # 1.25 s at 20 Hz
            send(JointTrajectoryPoint(positions=[float(goal[JOINT_NAMES.index(n)]) for n in rev]), rev)
            s.spin_for(0.05)
        err = np.abs(np.array(probe.last_joints[1]) - goal).max()
        assert err < 0.02, f"arm7 did not track the position command: max error {err:.3f} rad"
        # the stream stops: after the timeout the arm holds where it is (no drift back to q0)
        s.spin_for(0.8)
        q, v = np.array(probe.last_joints[1]), np.array(probe.last_joints[2])
        assert np.abs(q - goal).max() < 0.02 and np.abs(v).max() < 0.02, (q - goal, v)
        s.spin_until(lambda: probe.diag_value("rejected_commands") >= 5 and probe.diag_value("command_timeouts") >= 1,
                     3.0, "diagnostics counting 5 rejects and the timeout", ch)
        assert probe.diag_value("accepted_commands") >= 20
        assert not ch.dead(), "the arm7 sim died"


def test_command_line_values_beat_a_node_specific_parameter_file(tmp_path):
    """A value given on the command line wins over every parameter file. rcl alone does not
    promise that: with a ``/**`` file before a file holding a block for the node itself, the
    block wins over a later ``-p`` (the demo's ``--no-finetune`` once ran the agent with the demo
    file's exploration noise; the same three sources gave this sim 32 px for ``-p image_size:=48``).
    ``node_command`` merges files and values into one file: the node publishes 48 px frames."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    every = tmp_path / "sim_all.yaml"
    every.write_text("/**:\n  ros__parameters:\n    image_size: 40\n")
    own = tmp_path / "sim_own.yaml"
    own.write_text("sim_arm_node:\n  ros__parameters:\n    image_size: 32\n    seed: 4\n")
    dom = 87
    cmd = node_command("sim_arm_node", {"image_size": 48}, [every, own], params_path=tmp_path / "merged.yaml")
    assert cmd[-2:] == ["--params-file", str(tmp_path / "merged.yaml")]
    sizes = set()
    with Children(ros_env(dom), tmp_path / "logs") as ch, RosSession("probe87", dom) as s:
        ch.start("sim", cmd)
        s.node.create_subscription(Image, "/camera/image_raw", lambda m: sizes.add((m.height, m.width)),
                                   QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                              reliability=ReliabilityPolicy.BEST_EFFORT))
        s.spin_until(lambda: len(sizes) > 0, 30.0, "a camera frame", ch)
    assert sizes == {(48, 48)}, sizes
    assert "seed: 4" in (tmp_path / "merged.yaml").read_text()  # the files' other values still hold
