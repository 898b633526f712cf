"""``sim_arm_node``: the simulated 2-joint arm (:class:`wsa_ros.sim.ReacherSim`) behind real-arm topics.

One timer steps the sim every 0.02 s of sim time, i.e. at ``50 * real_time_factor`` Hz of wall
time (or as fast as the machine allows). Per tick it publishes, in this order and with one header
stamp (sim time when ``publish_clock``, starting at 0 and advancing 0.02 s per tick; otherwise the
node's wall clock):

1. ``/clock`` rosgraph_msgs/Clock, when ``publish_clock`` (the graph then runs with
   ``use_sim_time``, faster than real time where the machine allows);
2. ``reward_topic`` std_msgs/Float64 and ``success_topic`` std_msgs/Bool for the step just taken
   (reliable; none on a reset tick): they belong to the action that was executing and arrive
   before the agent can act on the new frame;
3. ``camera_topic`` sensor_msgs/Image (rgb8, frame_id ``camera``) and ``joint_states_topic``
   sensor_msgs/JointState (``joint0``, ``joint1``: position, velocity), sensor-data QoS;
4. at an episode's end, after its final frame: ``episode_end_topic`` std_msgs/String
   ``terminated``/``truncated`` and ``~/episode_stats`` diagnostic_msgs/DiagnosticStatus
   (episode, steps, return, success at the last step, reached at any step, final_distance,
   commanded_steps, start/end stamps), reliable. The next tick resets the episode and publishes
   its first frame (no reward).

``/diagnostics`` once a second: steps/s, achieved real-time factor, episodes, accepted and
rejected commands, command timeouts.

Commands, as a ros2_control controller takes them (``command_type``): std_msgs/Float64MultiArray
of joint velocities in rad/s in the order ``joint0, joint1`` (forward_command_controller), or
trajectory_msgs/JointTrajectory whose first point's ``velocities`` are used (joints matched by
name). A command of the wrong length, with unknown joints or a non-finite value is rejected and
counted, never applied. The latest valid command holds until ``command_timeout_s`` (sim time when
publishing /clock, else wall time) passes without a new one; then the arm is commanded to stop.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from wsa_ros.config import ConfigError, SimConfig


class CommandGate:
    """The latest valid velocity command and its age; pure logic (no ROS).

    ``offer(values, now_ns)`` returns None when accepted, else the reason it was rejected;
    ``current(now_ns)`` is the command to apply (zeros when none arrived within the timeout).
    """

    def __init__(self, n: int, timeout_s: float):
        self.n = int(n)
        self.timeout_ns = int(round(timeout_s * 1e9))
        self._cmd = np.zeros(self.n)
        self._t_ns: int | None = None
        self.accepted = 0
        self.rejected = 0
        self.timeouts = 0  # live command -> stopped transitions
        self.last_reject = ""
        self._live = False

    def offer(self, values, now_ns: int) -> str | None:
        try:
            a = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (self.n,):
            reason = f"expected {self.n} joint velocities, got {0 if a is None else a.size}"
        elif not np.all(np.isfinite(a)):
            reason = f"non-finite value in {a.tolist()}"
        else:
            self._cmd, self._t_ns = a, int(now_ns)
            self.accepted += 1
            return None
        self.rejected += 1
        self.last_reject = reason
        return reason

    def current(self, now_ns: int) -> tuple[np.ndarray, bool]:
        """(command, live): live is False when no valid command is younger than the timeout."""
        live = self._t_ns is not None and now_ns - self._t_ns <= self.timeout_ns
        if self._live and not live:
            self.timeouts += 1
        self._live = live
        return (self._cmd.copy() if live else np.zeros(self.n)), live


def _make_node_class():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float64, Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory

    from wsa_ros.nodes.params import declare_config
    from wsa_ros.sim.reacher import ReacherSim

    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)

    def kv(d: dict) -> list:
        return [KeyValue(key=k, value=str(v)) for k, v in d.items()]

    class SimArmNode(Node):
        def __init__(self):
            super().__init__("sim_arm_node")
            self.cfg = c = declare_config(self, SimConfig)
            if c.publish_clock and self.get_parameter("use_sim_time").value:
                raise ConfigError("sim_arm_node publishes /clock itself: it cannot also use_sim_time")
            self.sim = ReacherSim(seed=c.seed, image_size=c.image_size, max_steps=c.max_episode_steps)
            self.joint_names = list(self.sim.joint_names)
            self.dt_ns = int(round(self.sim.dt * 1e9))
            self.gate = CommandGate(len(self.joint_names), c.command_timeout_s)
            self.pub_image = self.create_publisher(Image, c.camera_topic, qos_profile_sensor_data)
            self.pub_joints = self.create_publisher(JointState, c.joint_states_topic, qos_profile_sensor_data)
            self.pub_reward = self.create_publisher(Float64, c.reward_topic, reliable)
            self.pub_success = self.create_publisher(Bool, c.success_topic, reliable)
            self.pub_end = self.create_publisher(String, c.episode_end_topic, reliable)
            self.pub_stats = self.create_publisher(DiagnosticStatus, "~/episode_stats", reliable)
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.pub_clock = self.create_publisher(Clock, "/clock", 10) if c.publish_clock else None
            if c.command_type == "joint_trajectory":
                self.create_subscription(JointTrajectory, c.command_topic, self._on_trajectory, 10)
            else:
                self.create_subscription(Float64MultiArray, c.command_topic, self._on_array, 10)
            self.sim_ns = 0  # sim time of the last tick
            self.ticks = 0
            self.episode = -1
            self.need_reset = True
            self._ep: dict = {}
            self._rate = (time.monotonic(), 0, 0)  # wall, ticks, sim_ns at the last diagnostics
            self._last_warn = 0.0
            self.create_timer(self.sim.dt / c.real_time_factor, self._tick)
            self.create_timer(1.0, self._diagnostics)
            self.get_logger().info(
                f"Reacher {c.image_size}px seed {c.seed}: {1 / self.sim.dt * c.real_time_factor:g} steps/s target, "
                f"{c.command_type} commands on {c.command_topic} (timeout {c.command_timeout_s:g} s), "
                f"camera {c.camera_topic}, joints {c.joint_states_topic}, clock {'on' if c.publish_clock else 'off'}")

        # ---------------------------------------------------------------- commands
        def _now_ns(self) -> int:
            return self.sim_ns if self.pub_clock is not None else self.get_clock().now().nanoseconds

        def _reject(self, reason: str):
            now = time.monotonic()
            if now - self._last_warn > 2.0:
                self._last_warn = now
                self.get_logger().warning(f"rejected command ({self.gate.rejected} so far): {reason}")

        def _offer(self, values):
            reason = self.gate.offer(values, self._now_ns())
            if reason:
                self._reject(reason)

        def _on_array(self, msg):
            self._offer(msg.data)

        def _on_trajectory(self, msg):
            if not msg.points or len(msg.points[0].velocities) != len(msg.joint_names):
                values = None
            else:
                v = dict(zip(msg.joint_names, msg.points[0].velocities))
                values = [v.get(n, math.nan) for n in self.joint_names] if set(v) == set(self.joint_names) else None
            if values is None:
                self.gate.rejected += 1
                self.gate.last_reject = (f"trajectory needs one velocity per joint {self.joint_names} in its first "
                                         f"point, got joints {list(msg.joint_names)} with "
                                         f"{len(msg.points[0].velocities) if msg.points else 0} velocities")
                return self._reject(self.gate.last_reject)
            self._offer(values)

        # ---------------------------------------------------------------- stepping
        def _tick(self):
            self.ticks += 1
            self.sim_ns += self.dt_ns
            if self.pub_clock is not None:
                clk = Clock()
                clk.clock.sec, clk.clock.nanosec = divmod(self.sim_ns, 1_000_000_000)
                self.pub_clock.publish(clk)
            stamp = self._stamp()
            if self.need_reset:
                obs = self.sim.reset()
                self.episode += 1
                self.need_reset = False
                self._ep = {"return": 0.0, "steps": 0, "reached": False, "live_steps": 0,
                            "start_stamp_ns": self._stamp_ns(stamp)}
                return self._publish_obs(obs, stamp)
            cmd, live = self.gate.current(self._now_ns())
            obs, reward, terminated, truncated, info = self.sim.step(cmd)
            ep = self._ep
            ep["return"] += reward
            ep["steps"] += 1
            ep["live_steps"] += int(live)
            ep["reached"] |= info["success"]
            # reward and success first: they belong to the action that was executing (the
            # latest action record), and must arrive before the agent acts on the new frame;
            # the final frame goes out before the episode end (see wsa_ros.learn.transitions)
            self.pub_reward.publish(Float64(data=float(reward)))
            self.pub_success.publish(Bool(data=bool(info["success"])))
            self._publish_obs(obs, stamp)
            if terminated or truncated:
                end = "terminated" if terminated else "truncated"
                self.need_reset = True
                self.pub_end.publish(String(data=end))
                stats = {"episode": self.episode, "end": end, "steps": ep["steps"], "return": f"{ep['return']:.6f}",
                         "success": info["success"], "reached": ep["reached"],
                         "final_distance": f"{info['distance']:.6f}", "commanded_steps": ep["live_steps"],
                         "start_stamp_ns": ep["start_stamp_ns"], "end_stamp_ns": self._stamp_ns(stamp),
                         "rejected_commands": self.gate.rejected}
                self.pub_stats.publish(DiagnosticStatus(
                    level=DiagnosticStatus.OK, name=f"{self.get_name()}: episode",
                    message=f"episode {self.episode} {end}: return {ep['return']:.3f}, success {info['success']}",
                    hardware_id="reacher", values=kv(stats)))

        def _stamp(self):
            if self.pub_clock is None:
                return self.get_clock().now().to_msg()
            from builtin_interfaces.msg import Time

            sec, nsec = divmod(self.sim_ns, 1_000_000_000)
            return Time(sec=sec, nanosec=nsec)

        @staticmethod
        def _stamp_ns(stamp) -> int:
            return stamp.sec * 1_000_000_000 + stamp.nanosec

        def _publish_obs(self, obs: dict, stamp):
            img = obs["image"]
            m = Image()
            m.header.stamp, m.header.frame_id = stamp, "camera"
            m.height, m.width = int(img.shape[0]), int(img.shape[1])
            m.encoding, m.is_bigendian, m.step = "rgb8", 0, int(img.shape[1]) * 3
            m.data = img.tobytes()
            self.pub_image.publish(m)
            js = JointState()
            js.header.stamp = stamp
            js.name = self.joint_names
            js.position = [float(x) for x in obs["position"]]
            js.velocity = [float(x) for x in obs["velocity"]]
            self.pub_joints.publish(js)

        def _diagnostics(self):
            wall0, ticks0, sim0 = self._rate
            now = time.monotonic()
            self._rate = (now, self.ticks, self.sim_ns)
            dt = max(now - wall0, 1e-9)
            values = {"steps_per_s": f"{(self.ticks - ticks0) / dt:.1f}",
                      "real_time_factor": f"{(self.sim_ns - sim0) * 1e-9 / dt:.3f}",
                      "target_real_time_factor": self.cfg.real_time_factor, "episodes": max(self.episode, 0),
                      "ticks": self.ticks, "accepted_commands": self.gate.accepted,
                      "rejected_commands": self.gate.rejected, "command_timeouts": self.gate.timeouts,
                      "last_reject": self.gate.last_reject}
            arr = DiagnosticArray()
            arr.header.stamp = self._stamp()
            arr.status = [DiagnosticStatus(
                level=DiagnosticStatus.WARN if self.gate.rejected else DiagnosticStatus.OK,
                name=f"{self.get_name()}: sim", hardware_id="reacher",
                message=f"{values['steps_per_s']} steps/s, {self.gate.rejected} rejected commands",
                values=kv(values))]
            self.pub_diag.publish(arr)

        def close(self):
            self.sim.close()
            self.destroy_node()

    return SimArmNode


def main(argv=None) -> int:
    """Entry point ``sim_arm_node``. SIGINT and SIGTERM raise KeyboardInterrupt in the spin; the
    node and then the context are closed after it (rclpy's own handler would invalidate the
    context under a running tick, which then fails to publish)."""
    import signal

    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=list(sys.argv if argv is None else ["sim_arm_node", *argv]),
               signal_handler_options=SignalHandlerOptions.NO)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    node = None
    try:
        node = _make_node_class()()
        rclpy.spin(node)
    except ConfigError as exc:
        print(f"sim_arm_node: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
