"""``sim_arm_node``: the ROS wiring of :class:`wsa_ros.sim.arm.SimArm`, a simulated arm behind
the topics a real arm driver and a ros2_control controller offer: the 2-joint Reacher
(``arm: reacher``, the default) or the 7-joint arm with two cameras (``arm: arm7``,
``config/sim_arm7.yaml``).

One timer steps the sim every step of sim time (Reacher 0.02 s, arm7 0.05 s; ``1/dt *
real_time_factor`` Hz of wall time, or as fast as the machine allows). Per tick, in this order
and with one header stamp (sim time when ``publish_clock``, from 0 in steps of dt; otherwise the
node's wall clock):

1. ``/clock`` (rosgraph_msgs/Clock), when ``publish_clock`` (the graph then uses sim time);
2. ``reward_topic`` (std_msgs/Float64) and ``success_topic`` (std_msgs/Bool) of the step just
   taken (reliable; none on a reset tick);
3. one sensor_msgs/Image rgb8 per camera, in camera order, on ``camera_topics`` (frame_id: the
   camera's name; Reacher: ``camera_topic``, frame_id ``camera``; arm7 by default
   ``/scene_camera/image_raw`` and ``/wrist_camera/image_raw``; a topic ending in ``/compressed``
   gets sensor_msgs/CompressedImage as image_transport's compressed plugin writes it, JPEG at
   ``jpeg_quality``), then ``joint_states_topic``
   (sensor_msgs/JointState, every joint: position, velocity), sensor-data QoS;
4. at an episode's end, after its final frame: ``episode_end_topic`` (std_msgs/String
   ``terminated``/``truncated``) and ``~/episode_stats`` (diagnostic_msgs/DiagnosticStatus).

``/diagnostics`` once a second. Commands (``command_type``), in the arm's units: joint
velocities (rad/s) for Reacher, joint position targets (rad) for arm7: std_msgs/Float64MultiArray
in joint order, as a forward_command_controller takes them, or trajectory_msgs/JointTrajectory
(the first point's ``velocities`` for Reacher, its ``positions`` for arm7; joints by name, any
order). A bad command is rejected and counted, never applied; the latest valid one holds for
``command_timeout_s``, then Reacher is commanded to stop and arm7 to hold the position it has.
"""
from __future__ import annotations

import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from wsa_ros.config import ConfigError, SimConfig
from wsa_ros.ros import messages as M
from wsa_ros.ros.main import run_node
from wsa_ros.ros.params import declare_config
from wsa_ros.runtime.images import array_to_compressed, is_compressed_topic
from wsa_ros.sim.arm import SimArm


class SimArmNode(Node):
    def __init__(self):
        super().__init__(SimConfig.NODE)
        self.cfg = c = declare_config(self, SimConfig)
        if c.publish_clock and self.get_parameter("use_sim_time").value:
            raise ConfigError("sim_arm_node publishes /clock itself: it cannot also use_sim_time")
        self.arm = SimArm(c)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.compressed = [is_compressed_topic(t) for t in self.arm.camera_topics]
        self.pub_images = [self.create_publisher(CompressedImage if comp else Image, t, qos_profile_sensor_data)
                           for t, comp in zip(self.arm.camera_topics, self.compressed)]
        self.pub_joints = self.create_publisher(JointState, c.joint_states_topic, qos_profile_sensor_data)
        self.pub_reward = self.create_publisher(Float64, c.reward_topic, reliable)
        self.pub_success = self.create_publisher(Bool, c.success_topic, reliable)
        self.pub_end = self.create_publisher(String, c.episode_end_topic, reliable)
        self.pub_stats = self.create_publisher(DiagnosticStatus, "~/episode_stats", reliable)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if c.publish_clock else None
        if c.command_type == "joint_trajectory":
            field = self.arm.trajectory_field  # positions (arm7) | velocities (Reacher)
            self.create_subscription(JointTrajectory, c.command_topic, lambda m: self._warn(self.arm.offer_trajectory(
                m.joint_names, getattr(m.points[0], field) if m.points else [], self._gate_ns())), 10)
        else:
            self.create_subscription(Float64MultiArray, c.command_topic,
                                     lambda m: self._warn(self.arm.offer_array(m.data, self._gate_ns())), 10)
        self._last_warn = 0.0
        self.create_timer(self.arm.sim.dt / c.real_time_factor, self._tick)
        self.create_timer(1.0, self._diagnostics)
        label = "Reacher" if c.arm == "reacher" else f"{c.arm} ({len(self.arm.joint_names)} joints)"
        cams = ", ".join(f"{n} {t}" for n, t in zip(self.arm.camera_names, self.arm.camera_topics))
        self.get_logger().info(
            f"{label} {c.image_size}px seed {c.seed}: {1 / self.arm.sim.dt * c.real_time_factor:g} steps/s target, "
            f"{c.command_type} commands ({self.arm.gate.units}) on {c.command_topic} (timeout {c.command_timeout_s:g} s), "
            f"camera{'s' if len(self.arm.camera_topics) > 1 else ''} {cams}, joints {c.joint_states_topic}, "
            f"clock {'on' if c.publish_clock else 'off'}")

    def _gate_ns(self) -> int:
        """The command gate's clock: sim time when publishing /clock, else the node's clock."""
        return self.arm.sim_ns if self.pub_clock is not None else self.get_clock().now().nanoseconds

    def _warn(self, reason: str | None) -> None:
        if reason and time.monotonic() - self._last_warn > 2.0:
            self._last_warn = time.monotonic()
            self.get_logger().warning(f"rejected command ({self.arm.gate.rejected} so far): {reason}")

    def _tick(self) -> None:
        stamp = self.arm.sim_ns + self.arm.dt_ns if self.pub_clock is not None else self.get_clock().now().nanoseconds
        if self.pub_clock is not None:
            self.pub_clock.publish(Clock(clock=M.time_msg(stamp)))
        t = self.arm.tick(stamp, self._gate_ns() if self.pub_clock is None else stamp)
        if t.reward is not None:  # the step just taken, before the frame it produced
            self.pub_reward.publish(Float64(data=t.reward))
            self.pub_success.publish(Bool(data=t.success))
        for pub, comp, (camera, img) in zip(self.pub_images, self.compressed, self.arm.frames(t.obs)):
            if comp:
                fmt, data = array_to_compressed(img, "jpeg", self.cfg.jpeg_quality)
                m = CompressedImage(format=fmt, data=data)
            else:
                m = Image(height=int(img.shape[0]), width=int(img.shape[1]), encoding="rgb8", is_bigendian=0,
                          step=int(img.shape[1]) * 3, data=img.tobytes())
            m.header.stamp, m.header.frame_id = M.time_msg(stamp), camera
            pub.publish(m)
        js = JointState(name=self.arm.joint_names, position=[float(x) for x in t.obs["position"]],
                        velocity=[float(x) for x in t.obs["velocity"]])
        js.header.stamp = M.time_msg(stamp)
        self.pub_joints.publish(js)
        if t.end is not None:  # after the final frame
            self.pub_end.publish(String(data=t.end))
            s = t.stats
            self.pub_stats.publish(M.diagnostic_status(
                0, f"{self.get_name()}: episode", f"episode {s['episode']} {t.end}: return {float(s['return']):.3f}, "
                f"success {s['success']}", self.cfg.arm, s))

    def _diagnostics(self) -> None:
        v = self.arm.diagnostics()
        now = self.arm.sim_ns if self.pub_clock is not None else self.get_clock().now().nanoseconds
        status = M.diagnostic_status(1 if self.arm.gate.rejected else 0, f"{self.get_name()}: sim",
                                     f"{v['steps_per_s']} steps/s, {self.arm.gate.rejected} rejected commands",
                                     self.cfg.arm, v)
        self.pub_diag.publish(M.diagnostic_array([status], now))

    def close(self) -> None:
        self.arm.close()


def main(argv=None) -> int:
    """Entry point ``sim_arm_node``."""
    return run_node(SimConfig.NODE, SimArmNode, (ConfigError, ValueError), argv)


if __name__ == "__main__":
    sys.exit(main())
