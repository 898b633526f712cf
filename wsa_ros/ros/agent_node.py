"""``agent_node``: the ROS wiring of :class:`wsa_ros.runtime.agent_core.AgentCore`.

Topics, parameters and services in, core calls; the core's outputs, messages out. What the
agent decides (sync rule, watchdog, safety, teleoperation, exploration, hot-swap) is in the
core and documented there; the topics are in ``config/agent.yaml`` and the README.

* in (on the control companion ``<name>_rt``, sensor-data QoS): ``camera_topics``
  (sensor_msgs/Image, or CompressedImage for topics ending in ``/compressed``; depth 1),
  ``joint_states_topic`` (sensor_msgs/JointState; depth 10, every one kept for pairing by
  stamp), ``teleop_topic`` (sensor_msgs/JointState); on this node ``estop_topic``
  (std_msgs/Bool, best effort so any publisher matches).
* out: ``command_topic`` (by ``output_mode``), ``~/action_record`` (sensor_msgs/JointState,
  reliable, depth 100), ``~/alpha`` (std_msgs/Float32MultiArray), ``/diagnostics``.
* ``policy_topic`` (std_msgs/UInt8MultiArray, reliable, transient local): bundles as bytes from
  the fine-tuner (``push_via: topic``), stored in ``policy_cache_dir`` and swapped in by the same
  checks as the ``bundle`` parameter.
* services: ``~/enable`` (std_srvs/SetBool), ``~/rollback`` and ``~/reload`` (std_srvs/Trigger);
  hot-swap: set the ``bundle`` parameter; a refusal is the SetParametersResult's reason.
* a managed node (``wsa_ros.ros.managed``; ``lifecycle_msgs`` services ``~/change_state``,
  ``~/get_state``, ...): the topics, services and control thread above exist from configure
  to cleanup; it acts only while active; ``autostart`` (active | inactive | unconfigured) says
  how far it goes by itself at start-up. While unconfigured, a ``bundle`` set is only stored.

Threads: the control path (inputs, control timer, command / record / alpha publishers) lives on
the companion node, served in its own thread by one bare wait set (``control_loop.py``;
``control_executor: rclpy`` uses rclpy's executor); this node (parameters, services, e-stop,
diagnostics) runs on a multi-threaded executor, so validating a hot-swap never delays a tick
and the e-stop never waits behind a swap. Topic names are resolved (and remapped) by this node.
"""
from __future__ import annotations

import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, UInt8MultiArray
from std_srvs.srv import SetBool, Trigger

from wsa_ros.config import AgentConfig, ConfigError
from wsa_ros.ros import messages as M
from wsa_ros.ros.control_loop import ControlThread
from wsa_ros.ros.main import run_node
from wsa_ros.ros.managed import LifecycleError, ManagedNode
from wsa_ros.ros.params import check_change, declare_config
from wsa_ros.runtime.agent_core import AgentCore, AgentError
from wsa_ros.runtime.bundle import BundleError
from wsa_ros.runtime.engine import EngineError
from wsa_ros.runtime.images import is_compressed_topic
from wsa_ros.runtime.stamps import stamp_ns

#: parameters that may change while running; the rest need a restart (read-only)
DYNAMIC = ("bundle", "max_rate", "max_obs_age_s", "blend_in_s", "log_throttle_s", "diagnostics_period_s")
JOINT_QUEUE = 10  # joint-state subscription depth (every one stored for pairing by stamp)


class _Outputs:
    """The core's sink: its outputs as messages on the companion's publishers."""

    def __init__(self, node: "AgentNode", rt, core: AgentCore):
        self.node, self.core, cfg = node, core, node.cfg
        out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.cmd = rt.create_publisher(M.COMMAND_TYPES[cfg.output_mode], node.resolve_topic_name(cfg.command_topic),
                                       out_qos)
        self.rec = rt.create_publisher(JointState, node.resolve_topic_name("~/action_record"), QoSProfile(depth=100))
        self.alp = rt.create_publisher(Float32MultiArray, node.resolve_topic_name("~/alpha"), out_qos)
        self.period_ns = int(round(1e9 / cfg.control_rate_hz))

    def command(self, cmd) -> None:
        core, cfg = self.core, self.node.cfg
        self.cmd.publish(M.command_msg(cfg.output_mode, cmd, core.action_joints, core.mode, self.period_ns,
                                       cfg.command_frame_id, self.node.now_ns()))

    def record(self, stamp, policy, joints, cmd, action_norm, action) -> None:
        self.rec.publish(M.action_record_msg(stamp, policy, joints, cmd, action_norm, action))

    def alpha(self, names, alpha) -> None:
        self.alp.publish(M.alpha_msg(names, alpha))


class AgentNode(ManagedNode):
    """Managed: configure loads and checks the bundle and makes the topics, services and control
    thread; activate lets it act (start_enabled or ~/enable); deactivate stops and holds; the
    e-stop and the watchdog keep their meaning in every configured state."""

    def __init__(self):
        super().__init__(AgentConfig.NODE)
        self.cfg: AgentConfig = declare_config(self, AgentConfig, dynamic=DYNAMIC)
        self._clock = self.get_clock()
        self._internal_param_set = False
        self.core: AgentCore | None = None
        self.rt = None
        self._control: ControlThread | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.autostart(self.cfg.autostart)

    # ------------------------------------------------------------------ lifecycle (ros.managed)
    def _do_activate(self) -> str:
        return self.core.set_active(True, self.now_ns())

    def _do_deactivate(self) -> str:
        return self.core.set_active(False, self.now_ns())

    def _do_configure(self) -> None:
        cfg = self.cfg
        # the control companion: its subscriptions, timer and publishers are served by one thread
        self.rt = rclpy.create_node(
            f"{self.get_name()}_rt", namespace=self.get_namespace(), context=self.context,
            use_global_arguments=False, start_parameter_services=False,
            parameter_overrides=[Parameter("use_sim_time", value=bool(self.get_parameter("use_sim_time").value))])
        self.core = AgentCore(cfg, None, self.get_logger(), active=False)  # inactive until activate
        self.core.sink = _Outputs(self, self.rt, self.core)
        rt, core = self.rt, self.core
        sensor = dict(reliability=qos_profile_sensor_data.reliability, durability=qos_profile_sensor_data.durability)
        # joint states first: when a joint state and a frame are both waiting, the loop (which
        # serves subscriptions in creation order) stores the joint state before the frame
        rt.create_subscription(
            JointState, self.resolve_topic_name(cfg.joint_states_topic),
            lambda m, info: core.on_joints(m.name, m.position, m.velocity, m.effort, stamp_ns(m.header.stamp),
                                           self.now_ns(), M.publisher_info(info)),
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=JOINT_QUEUE, **sensor))
        for cam, topic in zip(core.cameras, cfg.camera_topics):
            comp = is_compressed_topic(topic)
            rt.create_subscription(
                CompressedImage if comp else Image, self.resolve_topic_name(topic),
                lambda m, info, cam=cam, comp=comp: core.on_frame(cam, m, comp, self.now_ns(), M.publisher_info(info)),
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, **sensor))
        if cfg.teleop_topic:  # on the control thread, like the inputs it competes with
            rt.create_subscription(
                JointState, self.resolve_topic_name(cfg.teleop_topic),
                lambda m: core.on_teleop(m.name, m.position, time.monotonic()),
                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        rt.create_timer(1.0 / cfg.control_rate_hz, lambda: core.on_timer(self.now_ns()))
        safety = MutuallyExclusiveCallbackGroup()
        own = self.own
        own(self.create_subscription(
            Bool, cfg.estop_topic, lambda m: self._guarded("e-stop callback", core.estop, bool(m.data)),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT), callback_group=safety))
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics",
                                               QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        own(self._pub_diag)
        own(self.create_service(SetBool, "~/enable", self._service("~/enable", self._on_enable),
                                       callback_group=safety))
        # default callback group, with ~/set_parameters and the lifecycle services: swaps and
        # transitions are serialised, never on the control thread
        own(self.create_service(Trigger, "~/rollback", self._service("~/rollback", self._on_rollback)))
        own(self.create_service(Trigger, "~/reload", self._service("~/reload", lambda req, resp: self._answer(
            resp, *core.reload()))))
        if cfg.policy_topic:  # bundles as bytes (no shared filesystem); default group: serialised with swaps
            own(self.create_subscription(
                UInt8MultiArray, cfg.policy_topic, lambda m: self._guarded("policy transfer", self._on_policy, m),
                M.POLICY_SUB_QOS))
        self._diag_timer = self.create_timer(cfg.diagnostics_period_s, lambda: self._guarded(
            "diagnostics", self._publish_diagnostics), callback_group=MutuallyExclusiveCallbackGroup())
        own(self._diag_timer)
        self._control = ControlThread(rt, cfg.control_executor, core.internal_error, self.get_logger())
        self.get_logger().info(
            f"agent configured: {cfg.output_mode} on {self.resolve_topic_name(cfg.command_topic)} at "
            f"{cfg.control_rate_hz:g} Hz (trigger {cfg.trigger}, sync {cfg.sync}), max observation age "
            f"{cfg.max_obs_age_s * 1e3:.0f} ms; inactive until activate"
            + ("" if cfg.start_enabled else ", then call ~/enable (std_srvs/SetBool) to act"))

    def _do_final(self) -> str:
        """The stop command once more (acknowledged by the subscribers) when the agent has been
        commanding."""
        if self.core is None:
            return ""
        try:
            if self.core.shutdown(self.now_ns()):
                acked = self.core.sink.cmd.wait_for_all_acked(Duration(seconds=1.0))
                return f"stop command sent{'' if acked else ' (not acknowledged)'}"
        except Exception as exc:  # noqa: BLE001 - best effort while leaving
            self.get_logger().error(f"could not send the stop command: {exc}")
        return ""

    def _do_release(self) -> None:
        """The control thread, then the companion node (its subscriptions, timer and
        publishers) and the policy. Idempotent."""
        if self._control is not None:
            self._control.stop()
            self._control = None
        if self.rt is not None:
            self.rt.destroy_node()
            self.rt = None
        self.core = None

    def now_ns(self) -> int:
        """ROS time: /clock with use_sim_time, else the system clock (read directly: an rclpy
        Time object per call costs more than the rest of the tick's bookkeeping)."""
        return self._clock.now().nanoseconds if self._clock.ros_time_is_active else time.time_ns()

    # ------------------------------------------------------------------ requests
    def _guarded(self, where: str, fn, *args):
        core = self.core
        if core is None:  # a callback that was already waiting when cleanup released the policy
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a callback must never take the node down
            core.internal_error(where, exc)
            return None

    def _service(self, where: str, fn):
        def cb(req, resp):
            core = self.core
            if core is None:
                return self._answer(resp, False, "not configured (lifecycle); configure and activate it first")
            try:
                return fn(req, resp)
            except Exception as exc:  # noqa: BLE001
                core.internal_error(where, exc)
                return self._answer(resp, False, f"internal error: {type(exc).__name__}: {exc}")
        return cb

    @staticmethod
    def _answer(resp, ok: bool, message: str):
        resp.success, resp.message = bool(ok), message
        return resp

    def _on_enable(self, req, resp):
        return self._answer(resp, *self.core.enable(bool(req.data), self.now_ns()))

    def _on_rollback(self, req, resp):
        ok, message = self.core.rollback()
        if ok:
            self._follow(self.core.engine_path)
        return self._answer(resp, ok, message)

    def _follow(self, path: str) -> None:
        """The bundle parameter follows the policy now running, without swapping again."""
        self._internal_param_set = True
        try:
            self.set_parameters([Parameter("bundle", value=path)])
        finally:
            self._internal_param_set = False

    def _on_policy(self, msg) -> None:
        ok, _message = self.core.receive(*M.bundle_from_msg(msg))  # a refusal is logged and counted by the core
        if ok and self.cfg.bundle != self.core.engine_path:
            self._follow(self.core.engine_path)

    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            new, res = check_change(AgentConfig, self.cfg, params)
            if not res.successful:
                return res
            if self.core is None:  # unconfigured: the next configure uses the new values
                self.cfg = new
                return SetParametersResult(successful=True)
            bundle = [p.value for p in params if p.name == "bundle"]
            if bundle and not self._internal_param_set:
                ok, reason = self.core.swap(bundle[0])
                if not ok:
                    return SetParametersResult(successful=False, reason=reason)
            self.core.configure(new)
            if new.diagnostics_period_s != self.cfg.diagnostics_period_s:
                self._diag_timer.timer_period_ns = int(new.diagnostics_period_s * 1e9)
            self.cfg = new
            return SetParametersResult(successful=True)
        except Exception as exc:  # noqa: BLE001
            if self.core is not None:
                self.core.internal_error("parameter change", exc)
            return SetParametersResult(successful=False, reason=f"internal error: {type(exc).__name__}: {exc}")

    def _publish_diagnostics(self) -> None:
        core = self.core
        if core is None:  # released by a cleanup since the timer fired
            return
        level, summary, kv = core.diagnostics(self.now_ns())
        status = M.diagnostic_status(level, f"{self.get_name()}: policy", summary, self.get_fully_qualified_name(), kv)
        self._pub_diag.publish(M.diagnostic_array([status], self.now_ns()))

    # ------------------------------------------------------------------ the process (ros.main)
    def make_executor(self):
        return MultiThreadedExecutor(num_threads=4)


def main(argv=None) -> int:
    """Entry point ``agent_node`` (``ros2 run wsa_ros agent_node --ros-args --params-file ...``)."""
    # a thread doing Python work (a swap parsing a manifest) hands the GIL to the control
    # tick within 1 ms instead of the default 5 ms
    sys.setswitchinterval(0.001)
    return run_node(AgentConfig.NODE, AgentNode, (ConfigError, BundleError, EngineError, AgentError, LifecycleError),
                    argv)


if __name__ == "__main__":
    sys.exit(main())
