"""``agent_node``: live cameras + joint states in, safe actions out, hot-swappable policy.

A thin rclpy shell over :class:`wsa_ros.engine.Engine` and :mod:`wsa_ros.safety`::

    image / joint callbacks --(decode, validate, store newest)--> latest-sample slots
    control tick: watchdog -> observation -> engine.step -> safety -> publish

Callbacks never queue: each stores the newest valid sample in its slot (a frame replaced
before a tick used it is counted as dropped; DDS-level losses are counted from the
publication sequence numbers). Subscriptions use the sensor-data QoS (best effort,
volatile) with depth 1. ``trigger: timer`` acts every 1/control_rate_hz on the newest
samples; ``trigger: camera`` acts as soon as a frame of the first camera arrives (the
timer then only runs the watchdog and repeats stop commands). The joint state that goes
with the frame is chosen by ``joint_sync`` from the last few received
(:class:`wsa_ros.observation.JointHistory`, the rule ``wsa eval-bag`` applies offline):
``stamp`` = the newest stamped at or before the frame, ``newest`` = the last received.

Threads: the control path (camera and joint subscriptions, the control timer, the
command / record / alpha publishers) lives on a companion node ``<name>_rt`` served in its
own thread by one bare wait set (:mod:`wsa_ros.nodes.control_loop`; ``control_executor:
rclpy`` uses rclpy's single-threaded executor instead); this node (parameters, services, e-stop,
diagnostics) runs on a multi-threaded executor, so validating a hot-swap never delays a
tick and the e-stop and ``~/enable`` never wait behind a swap. Topic names are resolved
and remapped by this node, so ``ros2 run ... -r`` remaps apply to the companion too.

Freshness: an input's age is ``now - header.stamp`` (the arrival time when the stamp is
zero), so camera pipeline latency counts; camera clocks must agree with this node's
(same host, or PTP/chrony; ``use_sim_time`` for simulation and bags). While acting, an
input older than ``max_obs_age_s`` (or a stream that stops) trips the watchdog: the stop
command goes out on that tick, and the node stays stopped until ``~/enable``.
Stop command: position mode holds the pose measured when the stop began, velocity mode
sends zeros; it is repeated every tick while stopped once the node has commanded the
arm, and sent once more on shutdown (SIGINT/SIGTERM). Before the first action nothing is
published on the command topic.

Topics (relative names resolve in the node's namespace; ``~`` is this node's own):

* in: ``camera_topics`` (sensor_msgs/Image rgb8/bgr8/rgba8/bgra8/mono8, or
  sensor_msgs/CompressedImage jpeg/png when the topic ends in ``/compressed``),
  ``joint_states_topic`` (sensor_msgs/JointState; reordered by name, extra joints
  ignored, a missing joint is a rejection), ``estop_topic`` (std_msgs/Bool, best effort
  so any publisher matches; true engages, false releases), ``teleop_topic``
  (sensor_msgs/JointState name + position in the action's joint units: while one arrived
  within ``teleop_timeout_s`` it is sent instead of the policy's action, through the same
  clamp / blend-in / rate limit, and recorded as the command sent).
* out: ``command_topic`` - per ``output_mode``: std_msgs/Float64MultiArray (data = command
  per action joint, bundle order), trajectory_msgs/JointTrajectory (joint names, one
  point at time_from_start = 1/control_rate_hz, positions in position mode and
  velocities in velocity mode; header stamp 0 = start on receipt), geometry_msgs/Twist
  or TwistStamped (command = [vx, vy, vz, wx, wy, wz] prefix; velocity bundles only).
* ``~/action_record`` (sensor_msgs/JointState, reliable, depth 100), one per policy
  action sent: ``header.stamp`` = header stamp of the first camera's frame the action was
  computed from; ``header.frame_id`` = policy version (bundle manifest ``version``);
  ``name`` = action joint names; ``position`` = command sent (joint units, after clamp /
  blend-in / rate limit; with ``exploration_std`` > 0 the policy's action plus Gaussian
  noise went through them); ``velocity`` = raw policy output in [-1, 1]; ``effort`` =
  unclamped policy action in joint units. Stop commands are not recorded.
* ``~/alpha`` (std_msgs/Float32MultiArray), every step, right after the record: the
  per-encoder attention weights; ``layout.dim[0].label`` = the feature encoder names,
  comma-separated, in alpha order; ``layout.dim[0].size`` = K.
* ``/diagnostics`` (diagnostic_msgs/DiagnosticArray), every ``diagnostics_period_s``:
  state and reason, policy version, provider, input rates and ages, inference and tick
  latency (median / p99), drops, losses, one ``rejected <cause>`` counter per cause.

Services: ``~/enable`` (std_srvs/SetBool: true clears a watchdog / e-stop latch and
arms the node, which acts once every input is fresh; false stops), ``~/rollback``
(std_srvs/Trigger: back to the previous policy; again to undo), ``~/reload``
(std_srvs/Trigger: re-validate and load the bundle at the current ``bundle`` path).

Hot-swap: set the ``bundle`` parameter (``~/set_parameters``, e.g. ``ros2 param set
/agent_node bundle /path/to/bundle``). The new bundle is loaded, hash-checked, checked
for the same cameras / proprioception / action joints, mode and bounds, warmed up and
run once on the live observation (finite outputs) in the parameter service's thread,
then swapped between two ticks; a refusal comes back as
``SetParametersResult(successful=False, reason=...)`` and the running policy is untouched.
"""
from __future__ import annotations

import collections
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration as DurationMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration as RclDuration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, MultiArrayDimension
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from .. import images
from ..bundle import BundleError, compatible_with, load_bundle
from ..config import AgentConfig, ConfigError, resolve_bundle
from ..engine import Engine, EngineError, PolicyOutputError
from ..observation import JointHistory, JointReader, JointRejected
from ..safety import State, Supervisor, SupervisorConfig
from .control_loop import ControlLoop
from .params import check_change, declare_config

#: parameters that may change while running; the rest need a restart (read-only)
DYNAMIC = ("bundle", "max_rate", "max_obs_age_s", "blend_in_s", "log_throttle_s", "diagnostics_period_s")
JOINT_STREAM = "joint states"
WINDOW = 1000  # samples kept for median / p99
JOINT_QUEUE = 10  # joint-state subscription depth (all stored for pairing by stamp)


class AgentError(RuntimeError):
    """A configuration the agent cannot run with (message names the fix)."""


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pct(values, q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if values else float("nan")


@dataclass(frozen=True)
class FrameSlot:
    frame: np.ndarray
    stamp_ns: int  # header stamp; the arrival time if the stamp is zero
    arrival: float
    serial: int

    @property
    def stamp(self) -> float:
        return self.stamp_ns * 1e-9


@dataclass(frozen=True)
class JointSlot:
    proprio: np.ndarray | None  # bundle proprio vector (raw, build_proprio order)
    measured: np.ndarray  # positions of the action joints, bundle order
    stamp_ns: int
    arrival: float
    serial: int

    @property
    def stamp(self) -> float:
        return self.stamp_ns * 1e-9


@dataclass
class StreamStats:
    topic: str
    received: int = 0  # valid samples stored
    used: int = 0
    dropped: int = 0  # replaced in the slot before a tick used them
    lost: int = 0  # gaps in the publisher's sequence numbers (DDS queue overwrite / loss)
    last_serial_used: int = 0
    last_pub_seq: dict = field(default_factory=dict)  # publisher gid -> last sequence number
    rate_mark: tuple[float, int] = (0.0, 0)


class AgentNode(Node):
    def __init__(self, **kwargs):
        super().__init__(AgentConfig.NODE, **kwargs)
        self.cfg: AgentConfig = declare_config(self, AgentConfig, dynamic=DYNAMIC)
        cfg = self.cfg
        self._clock = self.get_clock()
        self._period = 1.0 / cfg.control_rate_hz
        self._counters: collections.Counter = collections.Counter()
        self._last_log: dict[str, tuple[float, int]] = {}
        self._internal_param_set = False
        self._swap_lock = threading.Lock()
        self._out_lock = threading.Lock()  # orders command publications (tick vs e-stop vs shutdown)
        self._closed = False
        self._last_swap = "none"

        # ---------------------------------------------------------------- policy
        path = resolve_bundle(cfg.bundle)
        self._engine = self._build_engine(path)
        self._engine_path = str(path)
        self._previous: tuple[Engine, str] | None = None
        b = self._engine.bundle
        self._cameras = list(b.cameras)
        self._action_joints = list(b.action.joint_names)
        self._low = np.asarray(b.action.low, dtype=np.float64)
        self._high = np.asarray(b.action.high, dtype=np.float64)
        self._mode = b.action.mode
        self._check_setup()
        self.get_logger().info(
            f"policy '{b.name}' version {b.version} from {path}: cameras {self._cameras}, "
            f"action {self._mode} {self._action_joints}; execution provider {self._engine.provider} "
            f"(requested {cfg.providers})")
        if self._engine.provider != self._engine.providers_requested[0]:
            self.get_logger().warning(
                f"running on {self._engine.provider}, not the preferred {self._engine.providers_requested[0]}")

        # ---------------------------------------------------------------- safety
        self._stream_of = {c: f"camera '{c}'" for c in self._cameras}
        self._streams = [self._stream_of[c] for c in self._cameras] + [JOINT_STREAM]
        self._sup = Supervisor(SupervisorConfig(
            mode=self._mode, low=list(self._low), high=list(self._high), max_age=cfg.max_obs_age_s,
            period=self._period, max_rate=cfg.max_rate, blend_in_s=cfg.blend_in_s,
            start_enabled=cfg.start_enabled, streams=self._streams))
        if cfg.max_obs_age_s < self._period:
            self.get_logger().warning(
                f"max_obs_age_s {cfg.max_obs_age_s} is shorter than one control period {self._period:.4f} s; "
                "the watchdog will trip on ordinary jitter")

        # ---------------------------------------------------------------- slots and stats
        self._frames: dict[str, FrameSlot | None] = {c: None for c in self._cameras}
        self._joints: JointSlot | None = None  # the newest: freshness, hold pose
        self._joint_hist = JointHistory()  # the last few, for pairing with a frame by stamp
        # hot-swaps keep the action joints and the proprioception spec (bundle.compatible_with)
        self._joint_reader = JointReader(self._action_joints, b.proprio,
                                         where=f"joint state on {cfg.joint_states_topic}")
        self._teleop_reader = JointReader(self._action_joints, where=f"teleop command on {cfg.teleop_topic}")
        self._stats = {f"camera '{c}'": StreamStats(t) for c, t in zip(self._cameras, cfg.camera_topics)}
        self._stats[JOINT_STREAM] = StreamStats(cfg.joint_states_topic)
        self._step_times: collections.deque = collections.deque(maxlen=WINDOW)
        self._tick_times: collections.deque = collections.deque(maxlen=WINDOW)
        self._obs_ages: collections.deque = collections.deque(maxlen=WINDOW)
        self._actions = 0
        self._stops = 0
        self._teleop: tuple[np.ndarray, float] | None = None  # (command, arrival monotonic)
        self._teleop_steps = 0
        self._explore_rng = np.random.default_rng()
        self._overruns = 0
        self._diag_mark = (time.monotonic(), 0, 0)

        # ---------------------------------------------------------------- ROS wiring
        # The control path (camera / joint subscriptions, control timer, command, record and
        # alpha publishers) lives on a companion node, <name>_rt, served in its own thread
        # by a bare wait set (control_loop.py; or rclpy's single-threaded executor):
        # nothing else ever waits in its queue, and rclpy's multi-threaded executor
        # (hand-off to a worker thread per callback) stays off the hot path. This node
        # keeps parameters, services, e-stop and diagnostics on a multi-threaded executor,
        # so a hot-swap being validated in the parameter service never delays a tick. Topic names are resolved (and remapped)
        # here, so the companion subscribes and publishes exactly where this node would.
        uses_sim_time = bool(self.get_parameter("use_sim_time").value)
        self.rt = rclpy.create_node(
            f"{self.get_name()}_rt", namespace=self.get_namespace(), context=self.context,
            use_global_arguments=False, start_parameter_services=False,
            parameter_overrides=[Parameter("use_sim_time", value=uses_sim_time)])
        rt = self.rt
        self._g_safety = MutuallyExclusiveCallbackGroup()
        self._g_diag = MutuallyExclusiveCallbackGroup()
        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                reliability=qos_profile_sensor_data.reliability,
                                durability=qos_profile_sensor_data.durability)
        # joint states first: when a frame and a joint state are both waiting, the executor
        # (which serves subscriptions in creation order) stores the joint state before the
        # frame's tick runs; a short queue keeps every joint state for pairing by stamp
        # (storing one is cheap; frames keep depth 1: the tick only ever sees the newest)
        joint_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=JOINT_QUEUE,
                               reliability=qos_profile_sensor_data.reliability,
                               durability=qos_profile_sensor_data.durability)
        self._subs = [rt.create_subscription(
            JointState, self.resolve_topic_name(cfg.joint_states_topic), self._on_joints, joint_qos)]
        for i, (cam, topic) in enumerate(zip(self._cameras, cfg.camera_topics)):
            compressed = topic.rstrip("/").endswith("/compressed")
            triggers = cfg.trigger == "camera" and i == 0
            cb = (lambda msg, info, cam=cam, c=compressed, t=triggers: self._on_frame(cam, c, t, msg, info))
            self._subs.append(rt.create_subscription(
                CompressedImage if compressed else Image, self.resolve_topic_name(topic), cb, sensor_qos))
        if cfg.teleop_topic:  # on the control thread, like the inputs it competes with
            self._subs.append(rt.create_subscription(
                JointState, self.resolve_topic_name(cfg.teleop_topic),
                lambda msg: self._guarded("teleop callback", self._on_teleop, msg),
                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)))
        self._subs.append(self.create_subscription(
            Bool, cfg.estop_topic, lambda msg: self._guarded("e-stop callback", self._on_estop, msg),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT), callback_group=self._g_safety))

        out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        cmd_type = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory,
                    "twist": Twist, "twist_stamped": TwistStamped}[cfg.output_mode]
        self._pub_cmd = rt.create_publisher(cmd_type, self.resolve_topic_name(cfg.command_topic), out_qos)
        self._pub_record = rt.create_publisher(JointState, self.resolve_topic_name("~/action_record"),
                                               QoSProfile(depth=100))
        self._pub_alpha = rt.create_publisher(Float32MultiArray, self.resolve_topic_name("~/alpha"), out_qos)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", out_qos)

        self.create_service(SetBool, "~/enable", self._guarded_srv("~/enable", self._on_enable),
                            callback_group=self._g_safety)
        # default callback group, with ~/set_parameters: swaps are serialised, never on the control thread
        self.create_service(Trigger, "~/rollback", self._guarded_srv("~/rollback", self._on_rollback))
        self.create_service(Trigger, "~/reload", self._guarded_srv("~/reload", self._on_reload))
        self.add_on_set_parameters_callback(self._guarded_params)

        self._timer = rt.create_timer(self._period, self._on_timer)
        self._diag_timer = self.create_timer(
            cfg.diagnostics_period_s, lambda: self._guarded("diagnostics", self._publish_diagnostics),
            callback_group=self._g_diag)
        self.get_logger().info(
            f"agent ready: {cfg.output_mode} on {self.resolve_topic_name(cfg.command_topic)} at "
            f"{cfg.control_rate_hz:g} Hz (trigger {cfg.trigger}), max observation age "
            f"{cfg.max_obs_age_s * 1e3:.0f} ms, state {self._sup.state.value}"
            + ("" if cfg.start_enabled else "; call ~/enable (std_srvs/SetBool) to act"))

    # ================================================================== set-up helpers
    def _build_engine(self, path) -> Engine:
        return Engine(path, providers=self.cfg.providers, threads=self.cfg.intra_op_threads, warmup=True,
                      cache_dir=self.cfg.trt_cache_dir)

    def _check_setup(self) -> None:
        cfg = self.cfg
        if len(cfg.camera_topics) != len(self._cameras):
            raise AgentError(
                f"the bundle reads {len(self._cameras)} camera(s) {self._cameras} but camera_topics has "
                f"{len(cfg.camera_topics)}: {cfg.camera_topics}; give one topic per camera in that order")
        if cfg.output_mode in ("twist", "twist_stamped"):
            if self._mode != "velocity":
                raise AgentError(f"output_mode '{cfg.output_mode}' needs a velocity-mode bundle; this one "
                                 f"commands {self._mode}")
            if len(self._action_joints) > 6:
                raise AgentError(f"output_mode '{cfg.output_mode}' carries at most 6 values; the bundle has "
                                 f"{len(self._action_joints)} action dimensions")

    def _now(self) -> float:
        return self._now_ns() * 1e-9

    def _now_ns(self) -> int:
        """The node's ROS time: /clock with use_sim_time, else the system clock (read
        directly: an rclpy Time object per call costs more than the rest of the tick's
        bookkeeping)."""
        if self._clock.ros_time_is_active:
            return self._clock.now().nanoseconds
        return time.time_ns()

    # ================================================================== rejections
    def _guarded(self, where: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a callback must never take the node down
            self._internal_error(where, exc)
            return None

    def _guarded_srv(self, where: str, fn):
        def cb(req, resp):
            try:
                return fn(req, resp)
            except Exception as exc:  # noqa: BLE001
                self._internal_error(where, exc)
                resp.success, resp.message = False, f"internal error: {type(exc).__name__}: {exc}"
                return resp
        return cb

    def _guarded_params(self, params):
        try:
            return self._on_set_parameters(params)
        except Exception as exc:  # noqa: BLE001
            self._internal_error("parameter change", exc)
            return SetParametersResult(successful=False, reason=f"internal error: {type(exc).__name__}: {exc}")

    def _internal_error(self, where: str, exc: BaseException) -> None:
        first = self._counters["internal_error"] == 0
        tb = "\n" + traceback.format_exc() if first else ""
        self._reject("internal_error", f"{where}: {type(exc).__name__}: {exc}{tb}")

    def _reject(self, key: str, message: str) -> None:
        """Count a rejection and log it, throttled per cause."""
        self._counters[key] += 1
        now = time.monotonic()
        last, count_then = self._last_log.get(key, (-math.inf, 0))
        if now - last >= self.cfg.log_throttle_s:
            n = self._counters[key] - count_then
            more = f" ({n} since the last report)" if n > 1 and last > -math.inf else ""
            self.get_logger().warning(f"rejected [{key}] {message}{more}")
            self._last_log[key] = (now, self._counters[key])

    # ================================================================== input callbacks
    def _seq_gap(self, st: StreamStats, info) -> None:
        try:
            seq = info.get("publication_sequence_number") if info else None
            gid = info.get("publisher_gid") if info else None
        except AttributeError:
            return
        if seq is None:
            return
        key = str(gid.get("data") if isinstance(gid, dict) else gid)
        last = st.last_pub_seq.get(key)
        if last is not None and seq > last + 1:
            st.lost += int(seq - last - 1)
        st.last_pub_seq[key] = seq

    def _on_frame(self, cam: str, compressed: bool, triggers: bool, msg, info) -> None:
        try:
            self._frame_body(cam, compressed, triggers, msg, info)
        except Exception as exc:  # noqa: BLE001 - a callback must never take the node down
            self._internal_error(f"camera '{cam}' callback", exc)

    def _frame_body(self, cam: str, compressed: bool, triggers: bool, msg, info) -> None:
        arrival_ns = self._now_ns()
        arrival = arrival_ns * 1e-9
        name = self._stream_of[cam]
        st = self._stats[name]
        self._seq_gap(st, info)
        try:
            frame = images.from_compressed_msg(msg) if compressed else images.from_image_msg(msg)
        except images.ImageError as exc:
            self._reject(f"image_{exc.kind}", f"{name} on {st.topic}: {exc}")
            return
        stamp = _stamp_ns(msg.header) or arrival_ns
        prev = self._frames[cam]
        self._frames[cam] = FrameSlot(frame, stamp, arrival, (prev.serial + 1) if prev else 1)
        st.received += 1
        if triggers:
            self._tick(frame_trigger=True)

    def _on_joints(self, msg: JointState, info) -> None:
        try:
            self._joints_body(msg, info)
        except Exception as exc:  # noqa: BLE001
            self._internal_error("joint state callback", exc)

    def _joints_body(self, msg: JointState, info) -> None:
        arrival_ns = self._now_ns()
        st = self._stats[JOINT_STREAM]
        self._seq_gap(st, info)
        try:
            measured, proprio = self._joint_reader.read(msg.name, msg.position, msg.velocity, msg.effort)
        except JointRejected as exc:
            return self._reject(exc.key, str(exc))
        stamp = _stamp_ns(msg.header) or arrival_ns
        prev = self._joints
        self._joints = JointSlot(proprio, measured, stamp, arrival_ns * 1e-9, (prev.serial + 1) if prev else 1)
        self._joint_hist.append(self._joints)
        st.received += 1

    def _on_teleop(self, msg: JointState) -> None:
        """A teleoperation command: name + position (the action's joint units)."""
        try:
            cmd, _ = self._teleop_reader.read(msg.name, msg.position)
        except JointRejected as exc:  # joint_missing / _malformed / _nonfinite -> teleop_...
            return self._reject(exc.key.replace("joint_", "teleop_"), str(exc))
        self._teleop = (cmd, time.monotonic())

    def _on_estop(self, msg: Bool) -> None:
        measured = self._joints.measured if self._joints else None
        with self._out_lock:
            tr = self._sup.estop(bool(msg.data), measured)
            if tr is None:
                return
            if tr.stop is not None:
                self._publish_command(tr.stop)
        if msg.data:
            self.get_logger().error(f"e-stop ENGAGED: state {tr.state.value} ({tr.reason})")
        else:
            self.get_logger().warning(f"e-stop released: state {tr.state.value} ({tr.reason})")

    def _on_enable(self, req: SetBool.Request, resp: SetBool.Response):
        measured = self._joints.measured if self._joints else None
        with self._out_lock:
            ok, message = self._sup.enable(bool(req.data), self._now(), measured)
            snap = self._sup.snapshot()
            if ok and not req.data and self._sup.owns:
                stop = self._sup.update(self._now(), {}, measured).stop  # disabled: stop right away
                if stop is not None:
                    self._publish_command(stop)
        resp.success, resp.message = ok, message
        self.get_logger().info(f"~/enable {req.data}: {message} (state {snap['state']})")
        return resp

    # ================================================================== the control tick
    def _on_timer(self) -> None:
        self._tick(frame_trigger=False)

    def _tick(self, frame_trigger: bool) -> None:
        try:
            self._tick_body(frame_trigger)
        except Exception as exc:  # noqa: BLE001 - never crash next to an arm: stop instead
            self._internal_error("control tick", exc)
            try:
                with self._out_lock:
                    cmd = self._sup.reject("internal error", self._joints.measured if self._joints else None)
                    if cmd is not None:
                        self._publish_command(cmd)
            except Exception as exc2:  # noqa: BLE001
                self._internal_error("stop after an internal error", exc2)

    def _observation_stamps(self) -> dict:
        stamps = {self._stream_of[c]: (s.stamp if s else None) for c, s in self._frames.items()}
        stamps[JOINT_STREAM] = self._joints.stamp if self._joints else None
        return stamps

    def _tick_body(self, frame_trigger: bool) -> None:
        t0 = time.perf_counter()
        now = self._now()
        eng = self._engine  # one policy per tick, whatever a swap does meanwhile
        frames = dict(self._frames)
        joints = self._joints
        measured = joints.measured if joints else None
        d = self._sup.update(now, self._observation_stamps(), measured)
        if d.changed:
            if d.state == State.TRIPPED:
                self.get_logger().error(f"state -> {d.state.value}: {d.reason}")
            else:
                self.get_logger().info(f"state -> {d.state.value}: {d.reason}")
        if not d.act:
            if d.stop is not None and not frame_trigger:
                with self._out_lock:
                    if self._sup.state != State.ACTIVE:
                        self._publish_command(d.stop)
                        self._stops += 1
            return
        if self.cfg.trigger == "camera" and not frame_trigger:
            return  # the timer only guards; frames drive the steps
        # ------------------------------------------------------------ observation
        imgs = {}
        for cam in self._cameras:
            slot = frames[cam]
            st = self._stats[self._stream_of[cam]]
            if slot.serial > st.last_serial_used:
                st.dropped += slot.serial - st.last_serial_used - 1
                st.used += 1
                st.last_serial_used = slot.serial
            imgs[cam] = slot.frame
        # the joint state paired with the (first camera's) frame: cfg.joint_sync, the rule
        # eval-bag applies offline (wsa_ros.observation)
        joints = self._joint_hist.pick(frames[self._cameras[0]].stamp_ns, self.cfg.joint_sync)
        jst = self._stats[JOINT_STREAM]
        if joints.serial > jst.last_serial_used:
            jst.used += 1
            jst.last_serial_used = joints.serial
        # ------------------------------------------------------------ policy
        try:
            r = eng.step(imgs, joints.proprio)
        except EngineError as exc:
            key = "policy_nonfinite" if isinstance(exc, PolicyOutputError) else "engine_input"
            self._reject(key, f"policy version {eng.version}: {exc}; sending the stop command for this tick")
            with self._out_lock:
                cmd = self._sup.reject(str(exc), measured)
                if cmd is not None:
                    self._publish_command(cmd)
            return
        self._step_times.append(r.timings.get("total", time.perf_counter() - t0))
        # ------------------------------------------------------------ safety + publish
        now2 = self._now()
        target = r.action
        teleop = self._teleop
        if teleop is not None and time.monotonic() - teleop[1] <= self.cfg.teleop_timeout_s:
            target = teleop[0]  # a person is driving: their command, through the same safety
            self._teleop_steps += 1
        elif self.cfg.exploration_std > 0:  # data collection for fine-tuning: noise, then the same safety
            noise = self._explore_rng.normal(0.0, self.cfg.exploration_std, r.action_norm.shape)
            target = eng.scale_action(np.clip(r.action_norm + noise, -1.0, 1.0))
        with self._out_lock:
            try:
                cmd = self._sup.shape(target, now2, d.epoch)
            except ValueError as exc:
                self._reject("policy_nonfinite", f"policy version {eng.version}: {exc}")
                cmd = self._sup.reject(str(exc), measured)
                if cmd is not None:
                    self._publish_command(cmd)
                return
            if cmd is None:
                return  # stopped while the engine ran: the action is void
            self._publish_command(cmd)
        obs = frames[self._cameras[0]]
        self._publish_record(obs.stamp_ns, eng.version, cmd, r)
        self._publish_alpha(eng, r.alpha)
        self._actions += 1
        self._obs_ages.append(now2 - obs.stamp)
        dt = time.perf_counter() - t0
        self._tick_times.append(dt)
        if self.cfg.trigger == "timer" and dt > self._period:
            self._overruns += 1

    # ================================================================== outputs
    def _publish_command(self, cmd: np.ndarray) -> None:
        mode = self.cfg.output_mode
        values = [float(x) for x in cmd]
        if mode == "float64_array":
            self._pub_cmd.publish(Float64MultiArray(data=values))
        elif mode == "joint_trajectory":
            msg = JointTrajectory()
            msg.joint_names = list(self._action_joints)
            pt = JointTrajectoryPoint()
            if self._mode == "position":
                pt.positions = values
            else:
                pt.velocities = values
            ns = int(round(self._period * 1e9))
            pt.time_from_start = DurationMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
            msg.points = [pt]
            self._pub_cmd.publish(msg)
        else:
            v = values + [0.0] * (6 - len(values))
            tw = Twist()
            tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z = v
            if mode == "twist":
                self._pub_cmd.publish(tw)
            else:
                ts = TwistStamped()
                ts.header.stamp = self.get_clock().now().to_msg()
                ts.header.frame_id = self.cfg.command_frame_id
                ts.twist = tw
                self._pub_cmd.publish(ts)

    def _publish_record(self, stamp_ns: int, version: str, cmd, r) -> None:
        msg = JointState()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        msg.header.frame_id = str(version)
        msg.name = list(self._action_joints)
        msg.position = [float(x) for x in cmd]
        msg.velocity = [float(x) for x in r.action_norm]
        msg.effort = [float(x) for x in r.action]
        self._pub_record.publish(msg)

    def _publish_alpha(self, eng: Engine, alpha: np.ndarray) -> None:
        msg = Float32MultiArray()
        names = eng.alpha_names
        msg.layout.dim = [MultiArrayDimension(label=",".join(names), size=len(alpha), stride=len(alpha))]
        msg.data = [float(x) for x in alpha]
        self._pub_alpha.publish(msg)

    # ================================================================== diagnostics
    def _publish_diagnostics(self) -> None:
        now_m = time.monotonic()
        now = self._now()
        t_prev, act_prev, rej_prev = self._diag_mark
        span = max(now_m - t_prev, 1e-6)
        rejections = sum(self._counters.values())
        self._diag_mark = (now_m, self._actions, rejections)
        snap = self._sup.snapshot()
        eng = self._engine
        kv: list[tuple[str, Any]] = [
            ("state", snap["state"]), ("reason", snap["reason"]), ("estop_engaged", snap["estop_engaged"]),
            ("watchdog_trips", snap["trips"]),
            ("policy_version", eng.version), ("policy_name", eng.bundle.name), ("bundle", self._engine_path),
            ("previous_version", self._previous[0].version if self._previous else ""),
            ("execution_provider", eng.provider), ("last_swap", self._last_swap),
            ("trigger", self.cfg.trigger), ("control_rate_target_hz", f"{self.cfg.control_rate_hz:g}"),
            ("action_rate_hz", f"{(self._actions - act_prev) / span:.1f}"),
            ("actions_total", self._actions), ("stop_commands_total", self._stops),
            ("tick_overruns", self._overruns), ("clamped_actions", snap["clamped"]),
            ("teleop_active", self._teleop is not None and
             time.monotonic() - self._teleop[1] <= self.cfg.teleop_timeout_s),
            ("teleop_steps_total", self._teleop_steps),
            ("exploration_std", f"{self.cfg.exploration_std:g}"),
            ("inference_ms_median", f"{_pct(self._step_times, 50) * 1e3:.2f}"),
            ("inference_ms_p99", f"{_pct(self._step_times, 99) * 1e3:.2f}"),
            ("tick_ms_median", f"{_pct(self._tick_times, 50) * 1e3:.2f}"),
            ("tick_ms_p99", f"{_pct(self._tick_times, 99) * 1e3:.2f}"),
            ("obs_age_at_action_ms_median", f"{_pct(self._obs_ages, 50) * 1e3:.1f}"),
        ]
        stamps = self._observation_stamps()
        for name, st in self._stats.items():
            t_mark, n_mark = st.rate_mark
            rate = (st.received - n_mark) / max(now_m - t_mark, 1e-6) if t_mark else float("nan")
            st.rate_mark = (now_m, st.received)
            age = (now - stamps[name]) if stamps.get(name) is not None else float("nan")
            kv += [(f"{name} rate_hz", f"{rate:.1f}"), (f"{name} age_ms", f"{age * 1e3:.1f}"),
                   (f"{name} received", st.received), (f"{name} dropped", st.dropped),
                   (f"{name} lost", st.lost)]
        kv += [(f"rejected {k}", v) for k, v in sorted(self._counters.items())]
        kv.append(("rejected_total", rejections))
        state = snap["state"]
        if state in (State.TRIPPED.value, State.ESTOP.value):
            level, summary = DiagnosticStatus.ERROR, f"{state}: {snap['reason']}"
        elif state != State.ACTIVE.value or rejections > rej_prev:
            level = DiagnosticStatus.WARN
            summary = f"{state}: {snap['reason']}" if state != State.ACTIVE.value else \
                f"acting; {rejections - rej_prev} input(s) rejected"
        else:
            level, summary = DiagnosticStatus.OK, f"acting, policy {eng.version}"
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: policy", message=summary,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in kv])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(arr)

    # ================================================================== hot-swap
    def _latest_observation(self):
        frames, joints = dict(self._frames), self._joints
        if any(f is None for f in frames.values()) or joints is None:
            return None
        return {c: f.frame for c, f in frames.items()}, joints.proprio

    def _swap_to(self, path_str: str) -> tuple[bool, str]:
        """Load, validate and swap in a bundle (blocking; never on the control thread)."""
        t0 = time.perf_counter()
        with self._swap_lock:
            cur = self._engine
            try:
                path = resolve_bundle(path_str)
                b = load_bundle(path)
                why = compatible_with(cur.bundle, b)
                if why:
                    raise BundleError("; ".join(why))
                eng = self._build_validated(b)
            except (BundleError, EngineError, OSError, ValueError) as exc:
                self._counters["swap_rejected"] += 1
                reason = f"bundle '{path_str}' rejected, policy {cur.version} keeps running: {exc}"
                self._last_swap = f"rejected: {exc}"[:300]
                self.get_logger().error(reason)
                return False, reason
            self._previous = (cur, self._engine_path)
            self._engine, self._engine_path = eng, str(path)  # the next tick uses it
            ms = (time.perf_counter() - t0) * 1e3
            self._last_swap = f"{cur.version} -> {eng.version} ({ms:.0f} ms)"
            self.get_logger().info(
                f"policy swapped: version {cur.version} -> {eng.version} from {path} on {eng.provider} "
                f"(validated in {ms:.0f} ms); ~/rollback returns to {cur.version}")
            return True, f"now running version {eng.version}"

    def _build_validated(self, b) -> Engine:
        eng = self._build_engine(b)  # sessions, shapes, warm-up with finite outputs
        obs = self._latest_observation()
        if obs is not None:
            try:
                eng.step(*obs)
            except EngineError as exc:
                raise BundleError(f"fails on the live observation: {exc}") from exc
        return eng

    def _set_bundle_param(self, path: str) -> None:
        self._internal_param_set = True
        try:
            self.set_parameters([Parameter("bundle", value=path)])
        finally:
            self._internal_param_set = False

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new, res = check_change(AgentConfig, self.cfg, params)
        if not res.successful:
            return res
        names = {p.name for p in params}
        if "bundle" in names and not self._internal_param_set:
            value = next(p.value for p in params if p.name == "bundle")
            ok, reason = self._swap_to(value)
            if not ok:
                return SetParametersResult(successful=False, reason=reason)
        if "max_rate" in names:
            self._sup.set_max_rate(new.max_rate)
        if "max_obs_age_s" in names:
            self._sup.set_max_age(new.max_obs_age_s)
        if "blend_in_s" in names:
            self._sup.set_blend_in(new.blend_in_s)
        if "diagnostics_period_s" in names and new.diagnostics_period_s != self.cfg.diagnostics_period_s:
            self._diag_timer.timer_period_ns = int(new.diagnostics_period_s * 1e9)
        self.cfg = new
        return SetParametersResult(successful=True)

    def _on_rollback(self, req, resp):
        with self._swap_lock:
            if self._previous is None:
                resp.success, resp.message = False, "no previous policy to roll back to"
                return resp
            cur = (self._engine, self._engine_path)
            self._engine, self._engine_path = self._previous
            self._previous = cur
            self._last_swap = f"rollback {cur[0].version} -> {self._engine.version}"
        self._set_bundle_param(self._engine_path)
        resp.success = True
        resp.message = (f"rolled back to version {self._engine.version} ({self._engine_path}); "
                        f"call again to return to {cur[0].version}")
        self.get_logger().warning(resp.message)
        return resp

    def _on_reload(self, req, resp):
        ok, message = self._swap_to(self._engine_path)
        resp.success, resp.message = ok, message
        return resp

    # ================================================================== shutdown
    def stop_and_close(self) -> None:
        """Send the stop command once more (when the node has been commanding) so that a
        controller that holds its last command does not keep moving after we exit."""
        if self._closed:
            return
        self._closed = True
        got = self._out_lock.acquire(timeout=1.0)
        try:
            measured = self._joints.measured if self._joints else None
            self._sup.enable(False, self._now(), measured)
            stop = self._sup.update(self._now(), {}, measured).stop  # None unless we were commanding
            if stop is not None:
                self._publish_command(stop)
                # the process is about to exit: make sure the stop reached the subscribers
                acked = self._pub_cmd.wait_for_all_acked(RclDuration(seconds=1.0))
                self.get_logger().info(f"shutting down: stop command sent{'' if acked else ' (not acknowledged)'}")
        except Exception as exc:  # noqa: BLE001 - best effort while exiting
            self.get_logger().error(f"could not send the stop command at shutdown: {exc}")
        finally:
            if got:
                self._out_lock.release()


def _spin_control(executor, node) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as exc:  # noqa: BLE001 - callbacks are guarded; this is the executor itself
        node.get_logger().fatal(f"control executor stopped: {type(exc).__name__}: {exc}")
        os.kill(os.getpid(), signal.SIGTERM)  # take the whole node down rather than run without control


def main(argv=None) -> int:
    """Entry point ``agent_node`` (``ros2 run wsa_ros agent_node --ros-args --params-file ...``)."""
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)

    def _terminate(signum, frame):  # SIGTERM (launch, systemd) behaves like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started with SIGINT ignored (nohup, `cmd &`)
    # a thread doing Python work (a swap parsing a manifest) hands the GIL to the control
    # tick within 1 ms instead of the default 5 ms
    sys.setswitchinterval(0.001)
    node = None
    executor = control = control_thread = None
    code = 0
    try:
        try:
            node = AgentNode()
        except (ConfigError, BundleError, EngineError, AgentError) as exc:
            rclpy.logging.get_logger(AgentConfig.NODE).fatal(f"cannot start: {exc}")
            return 1
        if node.cfg.control_executor == "waitset":
            control = ControlLoop(node.rt, on_error=lambda where, exc: node._internal_error(where, exc))
        else:
            control = SingleThreadedExecutor()
            control.add_node(node.rt)
        control_thread = threading.Thread(target=_spin_control, args=(control, node), name="wsa-control",
                                          daemon=True)
        control_thread.start()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        # spin in short slices: a blocking spin() never returns to Python while no timer is
        # due (e.g. use_sim_time with /clock stopped), so SIGINT/SIGTERM would go unnoticed
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_and_close()
        for ex in (executor, control):
            if ex is not None:
                ex.shutdown(timeout_sec=1.0)
        if control_thread is not None:
            control_thread.join(timeout=2.0)
        if node is not None:
            node.rt.destroy_node()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
