"""The agent, ROS-free: samples in, safe commands out, a policy that can be swapped.

``agent_node`` (``wsa_ros.ros.agent_node``) only turns messages and service calls into calls
of :class:`AgentCore` and hands what it produces to publishers; everything the agent decides
happens here and is tested without DDS. Data flows one way::

    on_frame / on_joints (message fields -> numpy, checked, counted)
      -> Synchronizer (the sync rule, wsa_ros.runtime.observation)
      -> tick: Supervisor.update (watchdog, enable, e-stop) -> Engine.step
      -> teleoperation / exploration -> Supervisor.shape (clamp, blend-in, rate limit)
      -> sink.command / sink.record / sink.alpha

Triggers: ``camera`` acts as soon as an observation of the first camera's frame is complete
(each frame at most once); ``timer`` acts on every ``on_timer`` on the newest complete one.
``on_timer`` also runs the watchdog and repeats the stop command while stopped (once the
agent has commanded the arm). Commands go to the sink under one lock, so a stop sent by the
e-stop, ``~/enable`` or shutdown is never overtaken by an action computed before it.

Time: every call takes ``now_ns`` in the node's ROS time (``/clock`` with ``use_sim_time``);
an input's age is ``now - header stamp`` (the arrival time where the stamp is zero).
Teleoperation freshness uses the monotonic clock the node passes.

Thread safety: ``on_*`` come from the control thread; ``estop``, ``enable``, ``swap`` /
``rollback`` / ``reload`` and ``diagnostics`` may come from others. A swap builds and warms the
new engine on the caller's thread and replaces the reference between two ticks; a tick uses
one engine from start to end.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from wsa_ros.config import AgentConfig, resolve_bundle
from wsa_ros.runtime.bundle import Bundle, BundleError, compatible_with, load_bundle, policy_id
from wsa_ros.runtime.engine import Engine, EngineError, PolicyOutputError
from wsa_ros.runtime.images import ImageError
from wsa_ros.runtime.observation import JOINTS, FrameSample, JointReader, JointRejected, JointSample, Observation, \
    Synchronizer
from wsa_ros.runtime.safety import State, Supervisor, SupervisorConfig

WINDOW = 1000  # samples kept for median / p99
INACTIVE = "inactive (lifecycle); activate it (lifecycle_msgs/srv/ChangeState on <node>/change_state)"
OK, WARN, ERROR = 0, 1, 2  # diagnostic levels (diagnostic_msgs/DiagnosticStatus)


class AgentError(RuntimeError):
    """A configuration the agent cannot run with (the message names the fix)."""


class Sink(Protocol):
    """Where the agent's outputs go (the node's publishers; a list in tests)."""

    def command(self, cmd: np.ndarray) -> None: ...

    def record(self, stamp_ns: int, policy: str, joints: list[str], cmd: np.ndarray, action_norm: np.ndarray,
               action: np.ndarray) -> None:
        """policy: the acting policy's id (``bundle.policy_id``: version and manifest digest)."""

    def alpha(self, names: list[str], alpha: np.ndarray) -> None: ...


def _pct(values, q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if values else float("nan")


@dataclass
class StreamStats:
    topic: str
    received: int = 0  # valid samples taken
    used: int = 0  # distinct samples acted on
    dropped: int = 0  # trigger frames never acted on (superseded by a newer one)
    lost: int = 0  # gaps in the publisher's sequence numbers (DDS queue overwrite / loss)
    last_pub_seq: dict = field(default_factory=dict)  # publisher gid -> last sequence number
    rate_mark: tuple[float, int] = (0.0, 0)


def stream_name(camera: str) -> str:
    return f"camera '{camera}'"


class AgentCore:
    """One agent (see the module docstring). ``sink`` receives the outputs; ``log`` is a
    logger with ``info`` / ``warning`` / ``error`` (the node's). ``active=False`` makes an
    inactive agent (a lifecycle node after configure): it holds, refuses ~/enable and acts
    only after :meth:`set_active`."""

    def __init__(self, cfg: AgentConfig, sink: Sink, log=None, active: bool = True):
        self.cfg = cfg
        self.active = bool(active)
        self.sink = sink
        self.log = log or logging.getLogger("wsa_ros.agent")
        self.period = 1.0 / cfg.control_rate_hz
        self.counters: collections.Counter = collections.Counter()
        self._last_log: dict[str, tuple[float, int]] = {}
        self._swap_lock = threading.Lock()
        self._out_lock = threading.Lock()  # orders commands: tick vs e-stop vs enable vs shutdown
        self._closed = False

        # ---------------------------------------------------------------- policy
        from wsa_ros.runtime.signing import load_public_keys

        self._trusted = load_public_keys(cfg.trusted_keys)  # a bad key file stops the start, named
        path = resolve_bundle(cfg.bundle)
        self.engine = self._build_engine(path)
        self.engine_path = str(path)
        self.previous: tuple[Engine, str] | None = None
        self.last_swap = "none"
        b = self.engine.bundle
        self.cameras = list(b.cameras)
        self.action_joints = list(b.action.joint_names)
        self.mode = b.action.mode
        self._check_setup()
        self.log.info(
            f"policy '{b.name}' version {b.version} from {path}: cameras {self.cameras}, action {self.mode} "
            f"{self.action_joints}; execution provider {self.engine.provider} (requested {cfg.providers})")
        if self.engine.provider != self.engine.providers_requested[0]:
            self.log.warning(f"running on {self.engine.provider}, not the preferred "
                             f"{self.engine.providers_requested[0]}")

        # ---------------------------------------------------------------- safety
        self.streams = [stream_name(c) for c in self.cameras] + [JOINTS]
        self._sync_key = {**{stream_name(c): c for c in self.cameras}, JOINTS: JOINTS}  # watchdog -> sync names
        self.sup = Supervisor(SupervisorConfig(
            mode=self.mode, low=list(b.action.low), high=list(b.action.high), max_age=cfg.max_obs_age_s,
            period=self.period, max_rate=cfg.max_rate, blend_in_s=cfg.blend_in_s,
            start_enabled=cfg.start_enabled and self.active, streams=self.streams))
        if not self.active:
            self.sup.reason = INACTIVE
        if cfg.max_obs_age_s < self.period:
            self.log.warning(f"max_obs_age_s {cfg.max_obs_age_s} is shorter than one control period "
                             f"{self.period:.4f} s; the watchdog will trip on ordinary jitter")

        # ---------------------------------------------------------------- samples and stats
        self.sync = Synchronizer(self.cameras, need_joints=True, rule=cfg.sync,
                                 timeout_ns=int(cfg.sync_timeout_s * 1e9))
        # hot-swaps keep the action joints and the proprioception spec (bundle.compatible_with)
        self.joint_reader = JointReader(self.action_joints, b.proprio, where=f"joint state on {cfg.joint_states_topic}")
        self.teleop_reader = JointReader(self.action_joints, where=f"teleop command on {cfg.teleop_topic}")
        self.stats = {stream_name(c): StreamStats(t) for c, t in zip(self.cameras, cfg.camera_topics)}
        self.stats[JOINTS] = StreamStats(cfg.joint_states_topic)
        self.step_times: collections.deque = collections.deque(maxlen=WINDOW)
        self.tick_times: collections.deque = collections.deque(maxlen=WINDOW)
        self.obs_ages: collections.deque = collections.deque(maxlen=WINDOW)
        self.current: Observation | None = None  # the newest complete observation
        self._current_serial = self._used_serial = 0
        self._last_joints_used = None
        self.actions = self.stops = self.teleop_steps = self.overruns = 0
        self._teleop: tuple[np.ndarray, float] | None = None  # (command, arrival monotonic)
        self._explore_rng = np.random.default_rng()
        self._diag_mark = (time.monotonic(), 0, 0)

    # ================================================================== set-up
    def _build_engine(self, path) -> Engine:
        """Every route a policy takes to act (start-up, the bundle parameter, ~/reload, a swap)
        passes here: the signature first (trusted_keys / allow_unsigned), then the sessions."""
        from wsa_ros.runtime.signing import SignatureError, SignatureInfo, manifest_sha256, verify_bundle

        c = self.cfg
        if not isinstance(path, Bundle):  # a folder: its manifest and hashes first (a missing one is named so)
            path = load_bundle(path)
        root = path.root
        if not self._trusted and c.allow_unsigned:  # nothing to check against: no bundle is refused for its signature
            sig = SignatureInfo(False, "", manifest_sha256(root))
        else:
            try:
                sig = verify_bundle(root, self._trusted, allow_unsigned=c.allow_unsigned)
            except SignatureError:
                self.counters["signature_rejected"] += 1
                raise
        eng = Engine(path, providers=c.providers, threads=c.intra_op_threads, warmup=True, cache_dir=c.trt_cache_dir)
        eng.signature = sig
        eng.policy_id = policy_id(eng.version, sig.manifest_sha256)  # what the action records carry
        if c.exploration_sample and not eng.has_log_std:
            self.log.warning(f"{path}: policy.onnx has no log_std output (exported before it existed), so "
                             f"exploration_sample cannot sample from it; exploring with exploration_std "
                             f"{c.exploration_std:g} instead (re-export the bundle to sample)")
        return eng

    def _check_setup(self) -> None:
        cfg = self.cfg
        if len(cfg.camera_topics) != len(self.cameras):
            raise AgentError(
                f"the bundle reads {len(self.cameras)} camera(s) {self.cameras} but camera_topics has "
                f"{len(cfg.camera_topics)}: {cfg.camera_topics}; give one topic per camera in that order")
        if cfg.output_mode in ("twist", "twist_stamped"):
            if self.mode != "velocity":
                raise AgentError(f"output_mode '{cfg.output_mode}' needs a velocity-mode bundle; this one "
                                 f"commands {self.mode}")
            if len(self.action_joints) > 6:
                raise AgentError(f"output_mode '{cfg.output_mode}' carries at most 6 values; the bundle has "
                                 f"{len(self.action_joints)} action dimensions")

    def configure(self, new: AgentConfig) -> None:
        """Apply changed run-time settings (the node's dynamic parameters, already validated)."""
        if new.max_rate != self.cfg.max_rate:
            self.sup.set_max_rate(new.max_rate)
        if new.max_obs_age_s != self.cfg.max_obs_age_s:
            self.sup.set_max_age(new.max_obs_age_s)
        if new.blend_in_s != self.cfg.blend_in_s:
            self.sup.set_blend_in(new.blend_in_s)
        self.cfg = new

    # ================================================================== rejections
    def internal_error(self, where: str, exc: BaseException) -> None:
        first = self.counters["internal_error"] == 0
        tb = "\n" + traceback.format_exc() if first else ""
        self.reject("internal_error", f"{where}: {type(exc).__name__}: {exc}{tb}")

    def reject(self, key: str, message: str) -> None:
        """Count a rejection and log it, throttled per cause."""
        self.counters[key] += 1
        now = time.monotonic()
        last, count_then = self._last_log.get(key, (-math.inf, 0))
        if now - last >= self.cfg.log_throttle_s:
            n = self.counters[key] - count_then
            more = f" ({n} since the last report)" if n > 1 and last > -math.inf else ""
            self.log.warning(f"rejected [{key}] {message}{more}")
            self._last_log[key] = (now, self.counters[key])

    def _guard(self, where: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - an input must never take the agent down
            self.internal_error(where, exc)
            return None

    # ================================================================== inputs
    @staticmethod
    def _seq_gap(st: StreamStats, pub) -> None:
        """``pub``: (publisher gid, publication sequence number) from the DDS message info, or None."""
        if not pub or pub[1] is None:
            return
        gid, seq = pub
        last = st.last_pub_seq.get(gid)
        if last is not None and seq > last + 1:
            st.lost += int(seq - last - 1)
        st.last_pub_seq[gid] = seq

    def on_frame(self, camera: str, msg, compressed: bool, now_ns: int, pub=None) -> None:
        """A camera message (sensor_msgs/Image or CompressedImage fields)."""
        self._guard(f"camera '{camera}' callback", self._frame, camera, msg, compressed, now_ns, pub)

    def _frame(self, camera, msg, compressed, now_ns, pub) -> None:
        name = stream_name(camera)
        st = self.stats[name]
        self._seq_gap(st, pub)
        sample = FrameSample.from_msg(msg, now_ns, compressed)
        sample.stamp_ns = sample.stamp_ns or int(now_ns)
        try:
            sample.rgb()
        except ImageError as exc:
            return self.reject(f"image_{exc.kind}", f"{name} on {st.topic}: {exc}")
        st.received += 1
        self.sync.put_frame(camera, sample)
        self._complete(now_ns)

    def on_joints(self, names, position, velocity, effort, stamp_ns: int, now_ns: int, pub=None) -> None:
        """A sensor_msgs/JointState (fields)."""
        self._guard("joint state callback", self._joints, names, position, velocity, effort, stamp_ns, now_ns, pub)

    def _joints(self, names, position, velocity, effort, stamp_ns, now_ns, pub) -> None:
        st = self.stats[JOINTS]
        self._seq_gap(st, pub)
        try:
            measured, proprio = self.joint_reader.read(names, position, velocity, effort)
        except JointRejected as exc:
            return self.reject(exc.key, str(exc))
        sample = JointSample(int(now_ns), int(stamp_ns) or int(now_ns), list(names), np.asarray(position, float),
                             np.asarray(velocity, float), np.asarray(effort, float), measured, proprio)
        st.received += 1
        self.sync.put_joints(sample)
        self._complete(now_ns)

    def on_teleop(self, names, position, now_mono: float) -> None:
        """A teleoperation command: name + position in the action's joint units."""
        self._guard("teleop callback", self._teleop_cmd, names, position, now_mono)

    def _teleop_cmd(self, names, position, now_mono: float) -> None:
        try:
            cmd, _ = self.teleop_reader.read(names, position)
        except JointRejected as exc:  # joint_missing / _malformed / _nonfinite -> teleop_...
            return self.reject(exc.key.replace("joint_", "teleop_"), str(exc))
        self._teleop = (cmd, float(now_mono))

    def measured(self) -> np.ndarray | None:
        """Positions of the action joints in the newest joint state (the stop's hold pose)."""
        j = self.sync.latest(JOINTS)
        return None if j is None else j.measured

    def input_stamps(self) -> dict[str, float | None]:
        """Header stamp (s) of the newest sample of each stream: what the watchdog judges."""
        out = {}
        for name, key in self._sync_key.items():
            ns = self.sync.newest_stamp(key)
            out[name] = None if ns is None else ns * 1e-9
        return out

    def _complete(self, now_ns: int) -> None:
        """Take the observations the sync rule completed; with ``trigger: camera`` act on the newest."""
        done = self.sync.resolve(now_ns)
        if not done:
            return
        self.current = done[-1]
        self._current_serial += len(done)
        if self.cfg.trigger == "camera":
            self._tick(now_ns, timer=False)

    # ================================================================== the control tick
    def on_timer(self, now_ns: int) -> None:
        """The control timer: partners whose wait ran out, the watchdog, stop repeats, and with
        ``trigger: timer`` the step."""
        self._guard("control timer", self._complete, now_ns)
        self._tick(now_ns, timer=True)

    def _tick(self, now_ns: int, timer: bool) -> None:
        try:
            self._tick_body(now_ns, timer)
        except Exception as exc:  # noqa: BLE001 - never crash next to an arm: stop instead
            self.internal_error("control tick", exc)
            try:
                with self._out_lock:
                    cmd = self.sup.reject("internal error", self.measured())
                    if cmd is not None:
                        self.sink.command(cmd)
            except Exception as exc2:  # noqa: BLE001
                self.internal_error("stop after an internal error", exc2)

    def _tick_body(self, now_ns: int, timer: bool) -> None:
        t0 = time.perf_counter()
        now = now_ns * 1e-9
        eng = self.engine  # one policy per tick, whatever a swap does meanwhile
        measured = self.measured()
        d = self.sup.update(now, self.input_stamps(), measured)
        if d.changed:  # one call site per severity: rclpy's logger refuses two severities at one line
            if d.state == State.TRIPPED:
                self.log.error(f"state -> {d.state.value}: {d.reason}")
            else:
                self.log.info(f"state -> {d.state.value}: {d.reason}")
        if not d.act:
            if d.stop is not None and timer:
                with self._out_lock:
                    if self.sup.state != State.ACTIVE:
                        self.sink.command(d.stop)
                        self.stops += 1
            return
        obs = self.current
        if obs is None or (self.cfg.trigger == "camera" and timer):
            return  # nothing complete yet / the timer only guards: frames drive the steps
        self._count_use(obs)
        # ------------------------------------------------------------ policy
        try:
            r = eng.step(obs.images(), obs.proprio(eng.bundle.proprio))
        except EngineError as exc:
            key = "policy_nonfinite" if isinstance(exc, PolicyOutputError) else "engine_input"
            self.reject(key, f"policy version {eng.version}: {exc}; sending the stop command for this tick")
            with self._out_lock:
                cmd = self.sup.reject(str(exc), measured)
                if cmd is not None:
                    self.sink.command(cmd)
            return
        self.step_times.append(r.timings.get("total", time.perf_counter() - t0))
        # ------------------------------------------------------------ who drives, then safety
        target = r.action
        teleop = self._teleop
        if teleop is not None and time.monotonic() - teleop[1] <= self.cfg.teleop_timeout_s:
            target = teleop[0]  # a person is driving: their command, through the same safety
            self.teleop_steps += 1
        elif self.cfg.exploration_sample and r.log_std is not None:  # SAC's own sampling, then the same safety
            u = np.arctanh(np.clip(r.action_norm, -1.0 + 1e-6, 1.0 - 1e-6))
            u = u + np.exp(r.log_std) * self._explore_rng.standard_normal(u.shape)
            target = eng.scale_action(np.tanh(u))
        elif self.cfg.exploration_std > 0:  # data collection for fine-tuning: noise, then the same safety
            noise = self._explore_rng.normal(0.0, self.cfg.exploration_std, r.action_norm.shape)
            target = eng.scale_action(np.clip(r.action_norm + noise, -1.0, 1.0))
        with self._out_lock:
            try:
                cmd = self.sup.shape(target, now, d.epoch)
            except ValueError as exc:
                self.reject("policy_nonfinite", f"policy version {eng.version}: {exc}")
                cmd = self.sup.reject(str(exc), measured)
                if cmd is not None:
                    self.sink.command(cmd)
                return
            if cmd is None:
                return  # stopped while the engine ran: the action is void
            self.sink.command(cmd)
            self.sink.record(obs.stamp_ns, eng.policy_id, self.action_joints, cmd, r.action_norm, r.action)
            self.sink.alpha(eng.alpha_names, r.alpha)
        self.actions += 1
        self.obs_ages.append(now - obs.stamp_ns * 1e-9)
        dt = time.perf_counter() - t0
        self.tick_times.append(dt)
        if self.cfg.trigger == "timer" and dt > self.period:
            self.overruns += 1

    def _count_use(self, obs: Observation) -> None:
        trig = self.stats[stream_name(self.cameras[0])]
        if self._current_serial > self._used_serial:  # a new observation: the ones between were never acted on
            trig.dropped += self._current_serial - self._used_serial - 1
            self._used_serial = self._current_serial
            trig.used += 1
            for c in self.cameras[1:]:
                self.stats[stream_name(c)].used += 1
        if obs.joints is not self._last_joints_used:
            self._last_joints_used = obs.joints
            self.stats[JOINTS].used += 1

    # ================================================================== operator requests
    def estop(self, engaged: bool) -> None:
        with self._out_lock:
            tr = self.sup.estop(bool(engaged), self.measured())
            if tr is None:
                return
            if tr.stop is not None:
                self.sink.command(tr.stop)
        if engaged:
            self.log.error(f"e-stop ENGAGED: state {tr.state.value} ({tr.reason})")
        else:
            self.log.warning(f"e-stop released: state {tr.state.value} ({tr.reason})")

    def enable(self, on: bool, now_ns: int) -> tuple[bool, str]:
        if on:
            with self._out_lock:  # checked under the lock a deactivate disables under: never enabled after it
                if not self.active:
                    message = f"refused: {INACTIVE}"
                    self.log.warning(f"~/enable True: {message}")
                    return False, message
                ok, message = self.sup.enable(True, now_ns * 1e-9, self.measured())
        else:
            ok, message = True, self._disable(now_ns, "disabled by operator")[1]
        self.log.info(f"~/enable {on}: {message} (state {self.sup.state.value})")
        return ok, message

    def _disable(self, now_ns: int, reason: str, lock_timeout: float = -1) -> tuple[bool, str]:
        """Disable; the stop command goes out at once when the agent has been commanding.
        Returns (stop command sent, the supervisor's message)."""
        got = self._out_lock.acquire(timeout=lock_timeout)
        try:
            measured = self.measured()
            _ok, message = self.sup.enable(False, now_ns * 1e-9, measured, reason)
            stop = self.sup.update(now_ns * 1e-9, {}, measured).stop  # None unless we were commanding
            if stop is not None:
                self.sink.command(stop)
            return stop is not None, message
        finally:
            if got:
                self._out_lock.release()

    def set_active(self, on: bool, now_ns: int) -> str:
        """The lifecycle's activate / deactivate. Activating lets ~/enable act, and enables at once
        with ``start_enabled``; deactivating disables (the stop command goes out at once when the
        agent has been commanding, and stays the command while inactive) until the next activate.
        Returns what happened."""
        if on:
            self.active = True
            if self.cfg.start_enabled:
                return "active; " + self.enable(True, now_ns)[1]
            self.sup.reason = "active; call ~/enable"
            return "active; call ~/enable (std_srvs/SetBool) to act"
        self.active = False  # first: an ~/enable from another thread from now on is refused
        sent, _ = self._disable(now_ns, INACTIVE)
        return "inactive; " + ("stop command sent" if sent else "no command sent (it was not commanding)")

    def shutdown(self, now_ns: int) -> bool:
        """Disable and send the stop command once more when the agent has been commanding (a
        controller that holds its last command must not keep moving after we exit). Returns
        whether a stop command was sent."""
        if self._closed:
            return False
        self._closed = True
        return self._disable(now_ns, "shut down", lock_timeout=1.0)[0]

    # ================================================================== hot-swap
    def swap(self, path_str: str) -> tuple[bool, str]:
        """Load, validate and swap in a bundle (blocking; never on the control thread). The
        running policy is untouched by a refusal, whose reason is returned."""
        t0 = time.perf_counter()
        with self._swap_lock:
            cur = self.engine
            try:
                path = resolve_bundle(path_str)
                b = load_bundle(path)
                why = compatible_with(cur.bundle, b)
                if why:
                    raise BundleError("; ".join(why))
                eng = self._build_engine(b)  # sessions, shapes, warm-up with finite outputs
                if eng.version == cur.version and eng.signature.manifest_sha256 != cur.signature.manifest_sha256:
                    raise BundleError(  # one name, one policy: records and /diagnostics must tell them apart
                        f"it is a different policy (manifest sha256 {eng.signature.manifest_sha256[:12]}) under the "
                        f"running policy's version '{cur.version}' ({cur.signature.manifest_sha256[:12]}); give it "
                        "a version of its own (the fine-tuner numbers its exports)")
                obs = self.current
                if obs is not None:
                    try:
                        eng.step(obs.images(), obs.proprio(b.proprio))
                    except EngineError as exc:
                        raise BundleError(f"fails on the live observation: {exc}") from exc
            except (BundleError, EngineError, OSError, ValueError) as exc:
                self.counters["swap_rejected"] += 1
                reason = f"bundle '{path_str}' rejected, policy {cur.version} keeps running: {exc}"
                self.last_swap = f"rejected: {exc}"[:300]
                self.log.error(reason)
                return False, reason
            self.previous = (cur, self.engine_path)
            self.engine, self.engine_path = eng, str(path)  # the next tick uses it
            ms = (time.perf_counter() - t0) * 1e3
            self.last_swap = f"{cur.version} -> {eng.version} ({ms:.0f} ms)"
            self.log.info(f"policy swapped: version {cur.version} -> {eng.version} from {path} on {eng.provider} "
                          f"(validated in {ms:.0f} ms); ~/rollback returns to {cur.version}")
            return True, f"now running version {eng.version}"

    def receive(self, blob: bytes, label: str) -> tuple[bool, str]:
        """A bundle that arrived as bytes (policy_topic; ``wsa_ros.runtime.transfer``): stored in
        policy_cache_dir once its bytes and files check out, then the same :meth:`swap` as any
        other route. The running policy is untouched by a refusal (counted ``transfer_rejected``
        or ``swap_rejected``), whose reason is returned."""
        from wsa_ros.runtime.signing import manifest_sha256
        from wsa_ros.runtime.transfer import parse_label, prune_cache, receive_bundle

        try:
            name, version, _ = parse_label(label)
            path = receive_bundle(blob, label, self.cfg.policy_cache_dir)
            if manifest_sha256(path) == self.engine.signature.manifest_sha256:
                return True, f"version {version} is running already"
        except (BundleError, OSError) as exc:
            self.counters["transfer_rejected"] += 1
            reason = f"bundle received on {self.cfg.policy_topic} rejected, policy {self.engine.version} keeps " \
                     f"running: {exc}"
            self.last_swap = f"rejected: {exc}"[:300]
            self.log.error(reason)
            return False, reason
        ok, message = self.swap(str(path))
        in_use = {self.engine_path} | ({self.previous[1]} if self.previous else set())
        prune_cache(self.cfg.policy_cache_dir, in_use)
        return ok, message

    def rollback(self) -> tuple[bool, str]:
        """Back to the previous policy (again: forward). The new ``engine_path`` is the
        ``bundle`` parameter's value now."""
        with self._swap_lock:
            if self.previous is None:
                return False, "no previous policy to roll back to"
            cur = (self.engine, self.engine_path)
            self.engine, self.engine_path = self.previous
            self.previous = cur
            self.last_swap = f"rollback {cur[0].version} -> {self.engine.version}"
        message = (f"rolled back to version {self.engine.version} ({self.engine_path}); "
                   f"call again to return to {cur[0].version}")
        self.log.warning(message)
        return True, message

    def reload(self) -> tuple[bool, str]:
        return self.swap(self.engine_path)

    # ================================================================== diagnostics
    def diagnostics(self, now_ns: int) -> tuple[int, str, list[tuple[str, Any]]]:
        """(level OK/WARN/ERROR, summary, key-value pairs) for /diagnostics."""
        now_m = time.monotonic()
        t_prev, act_prev, rej_prev = self._diag_mark
        span = max(now_m - t_prev, 1e-6)
        rejections = sum(self.counters.values())
        self._diag_mark = (now_m, self.actions, rejections)
        snap = self.sup.snapshot()
        eng = self.engine
        teleop = self._teleop
        kv: list[tuple[str, Any]] = [
            ("lifecycle", "active" if self.active else "inactive"),
            ("state", snap["state"]), ("reason", snap["reason"]), ("estop_engaged", snap["estop_engaged"]),
            ("watchdog_trips", snap["trips"]),
            ("policy_version", eng.version), ("policy_name", eng.bundle.name), ("bundle", self.engine_path),
            ("previous_version", self.previous[0].version if self.previous else ""),
            ("execution_provider", eng.provider), ("last_swap", self.last_swap),
            ("policy_manifest_sha256", eng.signature.manifest_sha256),
            ("policy_signed_by", eng.signature.key_id or ("unsigned" if self._trusted or not self.cfg.allow_unsigned
                                                          else "not checked (no trusted_keys)")),
            ("trigger", self.cfg.trigger), ("sync", self.cfg.sync),
            ("control_rate_target_hz", f"{self.cfg.control_rate_hz:g}"),
            ("action_rate_hz", f"{(self.actions - act_prev) / span:.1f}"),
            ("actions_total", self.actions), ("stop_commands_total", self.stops),
            ("tick_overruns", self.overruns), ("clamped_actions", snap["clamped"]),
            ("teleop_active", teleop is not None and now_m - teleop[1] <= self.cfg.teleop_timeout_s),
            ("teleop_steps_total", self.teleop_steps),
            ("exploration_std", f"{self.cfg.exploration_std:g}"),
            ("exploration_sample", self.cfg.exploration_sample and self.engine.has_log_std),
            ("sync_timeouts", self.sync.timeouts), ("sync_pending", self.sync.pending),
            ("inference_ms_median", f"{_pct(self.step_times, 50) * 1e3:.2f}"),
            ("inference_ms_p99", f"{_pct(self.step_times, 99) * 1e3:.2f}"),
            ("tick_ms_median", f"{_pct(self.tick_times, 50) * 1e3:.2f}"),
            ("tick_ms_p99", f"{_pct(self.tick_times, 99) * 1e3:.2f}"),
            ("obs_age_at_action_ms_median", f"{_pct(self.obs_ages, 50) * 1e3:.1f}"),
        ]
        stamps = self.input_stamps()
        now = now_ns * 1e-9
        for name, st in self.stats.items():
            t_mark, n_mark = st.rate_mark
            rate = (st.received - n_mark) / max(now_m - t_mark, 1e-6) if t_mark else float("nan")
            st.rate_mark = (now_m, st.received)
            age = (now - stamps[name]) if stamps.get(name) is not None else float("nan")
            dropped = st.dropped + (self.sync.superseded if name == self.streams[0] else 0)
            kv += [(f"{name} rate_hz", f"{rate:.1f}"), (f"{name} age_ms", f"{age * 1e3:.1f}"),
                   (f"{name} received", st.received), (f"{name} dropped", dropped), (f"{name} lost", st.lost)]
        kv += [(f"rejected {k}", v) for k, v in sorted(self.counters.items())]
        kv.append(("rejected_total", rejections))
        state = snap["state"]
        if state in (State.TRIPPED.value, State.ESTOP.value):
            level, summary = ERROR, f"{state}: {snap['reason']}"
        elif state != State.ACTIVE.value or rejections > rej_prev:
            level = WARN
            summary = f"{state}: {snap['reason']}" if state != State.ACTIVE.value else \
                f"acting; {rejections - rej_prev} input(s) rejected"
        else:
            level, summary = OK, f"acting, policy {eng.version}"
        return level, summary, kv

