"""Transitions: what one is, and how they are assembled from the topics' data (ROS-free).

**Definition.** A transition is one control step of one robot::

    obs       embeddings {encoder: float32 [*output_shape]} + raw proprio [P] of the frame the
              action was computed from, with that frame's header stamp (``stamp_ns``)
    action    the command that was sent, normalised to [-1, 1] by the bundle's action bounds
              (the teleoperator's command when a human intervened)
    policy_action  what the policy asked for, in [-1, 1] (differs from ``action`` under safety
              shaping or intervention)
    reward    the sum of the rewards received while this action was the latest one
    next_obs  the observation of the next step (or the episode's final frame), ``next_stamp_ns``
    terminated  the episode ended in a terminal state (no bootstrapping from next_obs)
    truncated   the episode was cut by a time limit (bootstrapping from next_obs)
    intervention  a human's teleoperation command replaced the policy's action
    success   the success detector's last value during the step (-1 unknown, 0, 1)
    version   the policy version that acted (from the agent's ``header.frame_id``, the policy's
              id ``<version>@<manifest sha256>``; ``bundle.split_policy_id``)
    source    which robot (agent namespace) it came from; ``episode``, ``step`` index it

**Carried over standard messages** (no custom interface package), so ``ros2 bag record`` of
these topics is a complete, replayable record of the learning data:

    camera_topics        sensor_msgs/Image or CompressedImage   the frames (header.stamp)
    joint_states_topic   sensor_msgs/JointState                 proprioception (header.stamp)
    <agent>/action_record sensor_msgs/JointState  header.stamp = stamp of the frame acted on,
                         frame_id = policy id (version@manifest sha256), name = action joints, position = command
                         sent (joint units), velocity = policy output in [-1, 1]
    reward_topic         std_msgs/Float64     one per environment step, before its new frame
    success_topic        std_msgs/Bool        per step, with the reward
    episode_end_topic    std_msgs/String      'terminated' | 'truncated', after the final frame
    intervention_topic   sensor_msgs/JointState  teleoperation command (name + position in the
                         action's joint units); a step is an intervention while one arrived
                         within ``intervention_timeout_s``

**Encoder outputs are not published; the learner re-encodes.** The agent stays minimal and
real-time (it publishes nothing beyond its action record), frames are the raw data a bag keeps
for any future encoder, and the learner pairs each action record with *its* frame by stamp and
runs the bundle's frozen encoders on it once, at ingest, so training never runs an encoder.
Cost: the learner receives the camera stream (84x84 rgb8 at 30 Hz = 0.64 MB/s per camera;
640x480 = 27.6 MB/s raw, ~1-2 MB/s as JPEG) instead of the embeddings (sum of the encoders'
output sizes x 4 bytes x 30 Hz; :func:`bandwidth` computes both for a bundle; large pretrained
backbones, e.g. ResNet-18's 8192 floats = 0.98 MB/s, can exceed the frames' size).

**Assembly rules** (:class:`Assembler`, the same code live and for bag import):

* frames: an action record is paired with the first camera's frame whose stamp is within
  ``frame_tolerance_s`` of the record's stamp; other cameras with their frame nearest that
  stamp within ``camera_skew_s``; joint state: nearest stamp within ``joint_tolerance_s``.
  A record waits up to ``pairing_timeout_s`` for its frames (they travel on other topics),
  then is rejected. Records are resolved strictly in arrival order, so transitions leave
  in order.
* rewards, success and episode ends belong to the latest action record *published* before
  them: the caller feeds messages in publish-time order (the node sorts them by their DDS
  source timestamps behind a short watermark; a bag is already in order). The contract with
  the environment (``sim_arm_node`` keeps it): a step's reward and success are published
  *before* the frame that step produced - so before the agent can act on that frame - and the
  episode end after the final frame. Several rewards for one step are summed (the environment
  stepped more than once while that action was the latest, e.g. the agent was late); a step
  with none is rejected.
* a record with the same stamp as the previous one (the agent acted twice on one frame)
  replaces the previous action: the later command is the one that was executing.
* episode end: the final step's next observation is the newest frame received before the end
  message (the environment publishes its final frame first); records on frames up to that
  one arriving after the end are late for the finished episode and dropped. A truncated
  final step without a final frame cannot be bootstrapped and is dropped; a terminated one
  needs no next observation.
* joint names follow the one rule (:class:`wsa_ros.runtime.observation.JointReader`): any
  order, extra joints (a gripper in a teleoperation message) ignored, the agent's rule too.
* everything malformed or out of range (NaN, wrong sizes, missing joints, actions outside
  the bounds, rewards beyond ``max_abs_reward``, unmatched stamps, non-finite embeddings) is
  rejected and counted by reason in :attr:`Assembler.rejected`.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from wsa_ros.runtime.bundle import Bundle, split_policy_id
from wsa_ros.runtime.observation import FrameSample, JointReader, JointRejected, JointSample, StampHistory

VERSION_LEN = 64  # fixed-width unicode columns in the store (no pickled objects anywhere)
END_KINDS = ("terminated", "truncated")


# =============================================================================== the schema
@dataclass(frozen=True)
class TransitionSpec:
    """Shapes and bounds of the transitions for one bundle (what the store's schema is)."""

    encoders: tuple[tuple[str, tuple[int, ...]], ...]
    proprio_dim: int
    action_joints: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    encoder_hashes: tuple[str, ...] = ()
    proprio_layout: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (joints, fields)

    @classmethod
    def from_bundle(cls, b: Bundle) -> "TransitionSpec":
        return cls(
            encoders=tuple((e.name, tuple(int(s) for s in e.output_shape)) for e in b.encoders),
            proprio_dim=b.proprio.dim if b.proprio else 0,
            action_joints=tuple(b.action.joint_names),
            low=tuple(float(x) for x in b.action.low),
            high=tuple(float(x) for x in b.action.high),
            encoder_hashes=tuple(e.sha256 for e in b.encoders),
            proprio_layout=(tuple(b.proprio.joint_names), tuple(b.proprio.fields)) if b.proprio else None,
        )

    @property
    def action_dim(self) -> int:
        return len(self.action_joints)

    def schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Flat field name -> (numpy dtype string, per-transition shape)."""
        s: dict[str, tuple[str, tuple[int, ...]]] = {}
        for prefix in ("obs", "next"):
            for name, shape in self.encoders:
                s[f"{prefix}.{name}"] = ("float32", shape)
            if self.proprio_dim:
                s[f"{prefix}.proprio"] = ("float32", (self.proprio_dim,))
        a = (self.action_dim,)
        s.update({
            "action": ("float32", a), "policy_action": ("float32", a), "reward": ("float32", ()),
            "terminated": ("bool", ()), "truncated": ("bool", ()), "intervention": ("bool", ()),
            "success": ("int8", ()), "stamp_ns": ("int64", ()), "next_stamp_ns": ("int64", ()),
            "episode": ("int64", ()), "step": ("int32", ()),
            "version": (f"<U{VERSION_LEN}", ()), "source": (f"<U{VERSION_LEN}", ()),
        })
        return s

    def fingerprint(self) -> dict:
        """What must match for stored transitions to be usable with a bundle: the encoders
        (names, shapes and file hashes: embeddings of other encoders mean nothing), the
        proprioception layout and the action joints and bounds."""
        return {
            "encoders": [[n, list(s), h] for (n, s), h in zip(self.encoders, self.encoder_hashes or [""] * 99)],
            "proprio": [list(self.proprio_layout[0]), list(self.proprio_layout[1])] if self.proprio_layout else None,
            "action": {"joints": list(self.action_joints), "low": list(self.low), "high": list(self.high)},
        }

    def normalise(self, command) -> np.ndarray:
        """Joint units -> [-1, 1] (the inverse of the engine's scaling)."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        return (2.0 * (np.asarray(command, np.float64) - low) / (high - low) - 1.0).astype(np.float32)


def bandwidth(b: Bundle, rate_hz: float = 30.0, frame_sizes: dict[str, tuple[int, int, int]] | None = None) -> dict:
    """Bytes per second a remote learner receives: raw frames (per camera, at the encoders'
    input size unless ``frame_sizes`` {camera: (h, w, channels)} says otherwise) vs the
    embeddings the agent would otherwise have to publish."""
    frames = {}
    for cam in b.cameras:
        if frame_sizes and cam in frame_sizes:
            h, w, c = frame_sizes[cam]
        else:
            e = max((e for e in b.encoders if e.camera == cam), key=lambda e: e.input.height * e.input.width)
            h, w, c = e.input.height, e.input.width, 3
        frames[cam] = h * w * c * rate_hz
    emb = sum(4 * math.prod(e.output_shape) for e in b.encoders) * rate_hz
    return {"rate_hz": rate_hz, "frames_Bps": frames, "frames_total_Bps": sum(frames.values()),
            "embeddings_Bps": emb}


# =============================================================================== records
@dataclass
class Transition:
    obs: dict[str, np.ndarray]  # encoder name -> float32 [*shape]
    proprio: np.ndarray | None
    action: np.ndarray  # float32 [A] in [-1, 1]
    policy_action: np.ndarray
    reward: float
    next_obs: dict[str, np.ndarray]
    next_proprio: np.ndarray | None
    terminated: bool
    truncated: bool
    intervention: bool
    success: int
    stamp_ns: int
    next_stamp_ns: int
    version: str
    source: str
    episode: int
    step: int

    def to_record(self) -> dict[str, np.ndarray]:
        """The flat field -> array mapping of :meth:`TransitionSpec.schema`."""
        r: dict[str, np.ndarray] = {}
        for k, v in self.obs.items():
            r[f"obs.{k}"] = np.asarray(v, np.float32)
        for k, v in self.next_obs.items():
            r[f"next.{k}"] = np.asarray(v, np.float32)
        if self.proprio is not None:
            r["obs.proprio"] = np.asarray(self.proprio, np.float32)
            r["next.proprio"] = np.asarray(self.next_proprio, np.float32)
        r["action"] = np.asarray(self.action, np.float32)
        r["policy_action"] = np.asarray(self.policy_action, np.float32)
        r["reward"] = np.float32(self.reward)
        r["terminated"] = np.bool_(self.terminated)
        r["truncated"] = np.bool_(self.truncated)
        r["intervention"] = np.bool_(self.intervention)
        r["success"] = np.int8(self.success)
        r["stamp_ns"] = np.int64(self.stamp_ns)
        r["next_stamp_ns"] = np.int64(self.next_stamp_ns)
        r["episode"] = np.int64(self.episode)
        r["step"] = np.int32(self.step)
        r["version"] = np.str_(self.version[:VERSION_LEN])
        r["source"] = np.str_(self.source[:VERSION_LEN])
        return r


def check_record(spec: TransitionSpec, rec: dict) -> str | None:
    """Why a flat transition record does not fit ``spec`` (None when it does): missing or
    extra fields, wrong shapes, non-finite numbers, actions outside [-1, 1]."""
    schema = spec.schema()
    missing = sorted(set(schema) - set(rec))
    if missing:
        return f"missing field(s) {missing}"
    extra = sorted(set(rec) - set(schema) - {"seq"})
    if extra:
        return f"unknown field(s) {extra}"
    for k, (dtype, shape) in schema.items():
        v = np.asarray(rec[k])
        if v.shape != shape:
            return f"field '{k}' has shape {v.shape}, expected {shape}"
        if dtype.startswith("float") and not np.all(np.isfinite(v)):
            return f"field '{k}' is not finite"
    for k in ("action", "policy_action"):
        if np.any(np.abs(np.asarray(rec[k])) > 1.0 + 1e-5):
            return f"field '{k}' lies outside [-1, 1]"
    return None


@dataclass
class Episode:
    """Summary of one finished episode (for the return / success-rate logs)."""

    source: str
    index: int
    kind: str  # terminated | truncated
    steps: int
    ret: float
    success: int  # -1 unknown
    end_ns: int
    versions: tuple = ()  # the policy versions whose actions this episode recorded


# =============================================================================== assembly
@dataclass
class AssemblerConfig:
    frame_tolerance_s: float = 0.005
    camera_skew_s: float = 0.1
    joint_tolerance_s: float = 0.1
    pairing_timeout_s: float = 1.0
    intervention_timeout_s: float = 0.25
    max_abs_reward: float = 1e6
    history_s: float = 3.0  # frames / joint states kept for pairing
    max_history: int = 4096  # per stream, whatever the rate
    #: False: a step that received no reward is kept with reward 0 (a recording without a reward
    #: topic, imported for behaviour cloning only: `wsa build-bundle --from-bags`)
    require_reward: bool = True


@dataclass
class _Obs:
    stamp_ns: int
    embs: dict[str, np.ndarray]
    proprio: np.ndarray | None


@dataclass
class _Step:
    recv_ns: int
    stamp_ns: int
    version: str
    action: np.ndarray
    policy_action: np.ndarray
    intervention: bool
    episode: int
    index: int
    reward: float = 0.0
    n_rewards: int = 0
    success: int = -1
    end: str | None = None
    end_frame_ns: int | None = None  # stamp of the episode's final frame (None: not received)
    obs: _Obs | None = None
    successor_lost: bool = False  # a record after this one never arrived: its next observation is unknown


Encoder = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Assembler:
    """Turns one robot's stream of frames, joint states, action records, rewards, episode
    ends and teleoperation commands into :class:`Transition` s (rules: module docstring).

    Feed messages in arrival order with ``add_*``; call :meth:`poll` (with the current time)
    to resolve pending records; it returns the transitions completed since the last call.
    ``encode`` maps {camera: uint8 RGB frame} to {encoder: embedding [*shape] or [1, *shape]}
    (``Engine.embed``). Not thread-safe: one ingest thread owns it.
    """

    def __init__(self, spec: TransitionSpec, cameras: Sequence[str], encode: Encoder, proprio_spec=None,
                 config: AssemblerConfig | None = None, source: str = ""):
        self.spec = spec
        self.cfg = config or AssemblerConfig()
        self.cameras = list(cameras)
        self.encode = encode
        self.proprio_spec = proprio_spec
        self.source = source
        self._low = np.asarray(spec.low, np.float64)
        self._high = np.asarray(spec.high, np.float64)
        self._slack = 1e-6 * (self._high - self._low) + 1e-9
        hist = dict(maxlen=self.cfg.max_history, horizon_ns=int(self.cfg.history_s * 1e9))
        self._frames = {c: StampHistory(**hist) for c in self.cameras}
        self._joints = StampHistory(**hist)
        # the one joint-name rule (observation.JointReader): any order, extra joints ignored
        self._record_reader = JointReader(spec.action_joints, where="action record")
        self._teleop_reader = JointReader(spec.action_joints, where="teleoperation command")
        self._proprio_reader = JointReader((), proprio_spec, where="joint state") if proprio_spec else None
        self._pending: collections.deque[_Step] = collections.deque()
        self._open: _Step | None = None  # the step rewards / ends are attributed to
        self._prev: _Step | None = None  # the last resolved step still waiting for its successor
        self._last_stamp = -1
        self._ended_frame_ns = -1  # records on frames up to this one belong to a finished episode
        self._teleop: tuple[int, np.ndarray] | None = None
        self._episode = 0
        self._step_in_episode = 0
        self._ep_return = 0.0
        self._ep_success = -1
        self._ep_steps = 0
        self._ep_versions: set = set()
        self.rejected: collections.Counter = collections.Counter()
        self.last_reject: dict[str, str] = {}
        self.accepted = 0
        self.records_received = 0
        self.last_version = ""
        self.last_policy_sha256 = ""  # the acting policy's manifest digest ("" from older recordings)
        self.last_record_ns = 0  # order time (publish time) of the newest action record
        self.superseded = 0
        self.episodes: list[Episode] = []  # finished episodes not yet taken by the caller

    # ------------------------------------------------------------------ bookkeeping
    def reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        self.last_reject[reason] = detail

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_episodes(self) -> list[Episode]:
        out, self.episodes = self.episodes, []
        return out

    # ------------------------------------------------------------------ inputs
    def add_frame(self, camera: str, sample: FrameSample) -> None:
        if camera not in self._frames:
            return self.reject("unknown_camera", f"camera '{camera}' is not one of {self.cameras}")
        if sample.stamp_ns <= 0:
            return self.reject("no_stamp", f"camera '{camera}' frame has a zero header stamp")
        self._frames[camera].add(sample)

    def add_joints(self, sample: JointSample) -> None:
        if sample.stamp_ns <= 0:
            return self.reject("no_stamp", "joint state has a zero header stamp")
        self._joints.add(sample)

    def _fail(self, res: str) -> None:
        reason, _, detail = res.partition(":")
        self.reject(reason, detail)

    def _command(self, reader: JointReader, names, values) -> np.ndarray | None:
        """A command in joint units (read by the joint-name rule) -> [-1, 1], or None after
        counting the rejection."""
        try:
            cmd, _ = reader.read(names, values)
        except JointRejected as exc:
            self.reject(exc.key, str(exc))
            return None
        if np.any(cmd < self._low - self._slack) or np.any(cmd > self._high + self._slack):
            self.reject("action_out_of_bounds", f"{reader.where} {cmd.tolist()} outside [{list(self.spec.low)}, "
                                                f"{list(self.spec.high)}]")
            return None
        return np.clip(self.spec.normalise(cmd), -1.0, 1.0)

    def add_teleop(self, recv_ns: int, names, position) -> None:
        a = self._command(self._teleop_reader, names, position)
        if a is not None:
            self._teleop = (recv_ns, a)

    def newest_frame_stamp(self) -> int | None:
        """Stamp of the newest frame of the first camera (the frame a command sent now was
        computed from, by the agent's sync rule); None before the first frame."""
        return self._frames[self.cameras[0]].newest_stamp()

    def add_record(self, recv_ns: int, stamp_ns: int | None, policy: str, names, position, velocity=()) -> None:
        """An action record (sensor_msgs/JointState layout of the agent's ``~/action_record``).
        ``policy``: its ``header.frame_id``, the acting policy's id (version@manifest sha256, or a
        version alone in older recordings). ``stamp_ns`` None: a command with no frame before it
        (bag import)."""
        self.records_received += 1
        version, self.last_policy_sha256 = split_policy_id(policy)
        self.last_version = version  # the policy acting now, by the agent's own account
        self.last_record_ns = int(recv_ns)
        if stamp_ns is None:
            return self.reject("command_before_frame", "command recorded before any camera frame")
        if stamp_ns <= 0:
            return self.reject("no_stamp", "action record has a zero header stamp")
        cmd = self._command(self._record_reader, names, position)
        if cmd is None:
            return
        if len(velocity):
            try:  # the policy output in [-1, 1], in the velocity field
                pol, _ = self._record_reader.read(names, velocity)
            except JointRejected as exc:
                return self.reject(exc.key, f"policy output: {exc}")
            if np.any(np.abs(pol) > 1.0 + 1e-6):
                return self.reject("action_out_of_bounds", f"policy output {pol.tolist()} outside [-1, 1]")
            pol = pol.astype(np.float32)
        else:
            pol = cmd.copy()
        intervention = self._teleop is not None and recv_ns - self._teleop[0] <= self.cfg.intervention_timeout_s * 1e9
        action = self._teleop[1].copy() if intervention else cmd
        if stamp_ns <= self._ended_frame_ns:
            return self.reject("after_episode_end", "record on a frame of an episode that has ended")
        if stamp_ns == self._last_stamp and self._open is not None and self._open.stamp_ns == stamp_ns:
            # the agent acted again on the same frame: the later command is the one executing
            self._open.action, self._open.policy_action = action, pol
            self._open.intervention = self._open.intervention or intervention
            self.superseded += 1
            return
        if stamp_ns <= self._last_stamp:
            return self.reject("stamp_out_of_order", f"record stamp {stamp_ns} not after the previous {self._last_stamp}")
        self._last_stamp = stamp_ns
        step = _Step(recv_ns, stamp_ns, version, action, pol, intervention, self._episode, self._step_in_episode)
        self._step_in_episode += 1
        self._ep_steps += 1
        self._ep_versions.add(step.version)
        self._pending.append(step)
        self._open = step

    def records_lost(self, n: int) -> None:
        """``n`` action records of this robot were published but never reached us (a gap in
        the publisher's sequence numbers, or a full inbox): the step before them has no
        known next observation, so it must not be paired with the record after the gap."""
        if n <= 0:
            return
        self.rejected["record_lost"] += int(n)
        if self._open is not None:
            self._open.successor_lost = True

    def add_reward(self, recv_ns: int, value: float) -> None:
        v = float(value)
        if not math.isfinite(v) or abs(v) > self.cfg.max_abs_reward:
            return self.reject("reward_out_of_range", f"reward {v} (limit +-{self.cfg.max_abs_reward:g})")
        self._ep_return += v
        if self._open is None:
            return self.reject("reward_without_step", "reward before any action record of the episode")
        self._open.reward += v
        self._open.n_rewards += 1

    def add_success(self, recv_ns: int, value: bool) -> None:
        self._ep_success = int(bool(value))
        if self._open is not None:
            self._open.success = int(bool(value))

    def add_episode_end(self, recv_ns: int, kind: str, final_frame: bool = True) -> None:
        """``final_frame=False``: the end is known but the final frame was not recorded
        (e.g. episodes split by a fixed length in a bag)."""
        kind = str(kind).strip().lower()
        if kind not in END_KINDS:
            return self.reject("bad_episode_end", f"episode end '{kind}' is not one of {END_KINDS}")
        newest = self._frames[self.cameras[0]].newest_stamp() if final_frame else None
        if self._open is not None:
            self._open.end = kind
            self._open.end_frame_ns = newest if newest is not None and newest > self._open.stamp_ns else None
        if newest is not None:
            self._ended_frame_ns = max(self._ended_frame_ns, newest)
        self.episodes.append(Episode(self.source, self._episode, kind, self._ep_steps, self._ep_return,
                                     self._ep_success, recv_ns, tuple(sorted(self._ep_versions))))
        self._open = None
        self._episode += 1
        self._step_in_episode = 0
        self._ep_return, self._ep_success, self._ep_steps = 0.0, -1, 0
        self._ep_versions = set()

    # ------------------------------------------------------------------ resolution
    def _observe(self, stamp_ns: int) -> _Obs | str | None:
        """Embeddings + proprio for the frame stamped ``stamp_ns``; None = not yet
        available; a string = the rejection."""
        tol0 = int(self.cfg.frame_tolerance_s * 1e9)
        skew = int(self.cfg.camera_skew_s * 1e9)
        images = {}
        first = self._frames[self.cameras[0]].nearest(stamp_ns, tol0)
        if first is None:
            return None
        images[self.cameras[0]] = first
        for cam in self.cameras[1:]:  # the sync rule: nearest stamp (observation.Synchronizer)
            hit = self._frames[cam].nearest(first.stamp_ns, skew)
            if hit is None:
                return None
            images[cam] = hit
        proprio = None
        if self._proprio_reader is not None:
            js = self._joints.nearest(first.stamp_ns, int(self.cfg.joint_tolerance_s * 1e9))
            if js is None:
                return None
            try:
                proprio = self._proprio_reader.read(js.names, js.position, js.velocity, js.effort)[1]
            except JointRejected as exc:
                return f"bad_joint_state:{exc}"
        try:
            rgb = {c: s.rgb() for c, s in images.items()}
        except Exception as exc:  # noqa: BLE001 - images.ImageError and decoder failures
            return f"bad_frame:{exc}"
        try:
            raw = self.encode(rgb)
        except Exception as exc:  # noqa: BLE001 - EngineError for frames it cannot take
            return f"encode_failed:{exc}"
        embs = {}
        for name, shape in self.spec.encoders:
            v = np.asarray(raw[name], np.float32).reshape(shape)
            if not np.all(np.isfinite(v)):
                return f"non_finite_embedding:encoder '{name}' produced NaN/inf"
            embs[name] = v
        return _Obs(first.stamp_ns, embs, None if proprio is None else proprio.astype(np.float32))

    def _emit(self, step: _Step, nxt: _Obs, terminated: bool, truncated: bool, out: list) -> None:
        if step.n_rewards == 0 and self.cfg.require_reward:
            return self.reject("no_reward", f"step on frame {step.stamp_ns} received no reward")
        assert step.obs is not None
        out.append(Transition(
            obs=step.obs.embs, proprio=step.obs.proprio, action=step.action.astype(np.float32),
            policy_action=step.policy_action.astype(np.float32), reward=step.reward, next_obs=nxt.embs,
            next_proprio=nxt.proprio, terminated=terminated, truncated=truncated,
            intervention=step.intervention, success=step.success, stamp_ns=step.stamp_ns,
            next_stamp_ns=nxt.stamp_ns, version=step.version, source=self.source, episode=step.episode,
            step=step.index))
        self.accepted += 1

    def _finish_episode(self, step: _Step, out: list) -> None:
        assert step.obs is not None
        if step.end == "terminated":
            nxt = self._observe(step.end_frame_ns) if step.end_frame_ns else None
            self._emit(step, nxt if isinstance(nxt, _Obs) else step.obs, True, False, out)
            return
        if step.end_frame_ns is None:
            return self.reject("truncated_without_final_frame",
                               "time-limit end with no final frame to bootstrap from")
        nxt = self._observe(step.end_frame_ns)
        if not isinstance(nxt, _Obs):
            return self.reject("truncated_without_final_frame", nxt if isinstance(nxt, str) else "final frame lost")
        self._emit(step, nxt, False, True, out)

    def finish(self) -> None:
        """The recording ended: steps still waiting for a successor or a frame can never
        complete; count them (``end_of_recording``)."""
        n = len(self._pending) + (self._prev is not None)
        if n:
            self.rejected["end_of_recording"] += n
        self._pending.clear()
        self._prev = self._open = None

    def _close_ended_prev(self, out: list) -> None:
        """The resolved step waiting for its successor got its episode end meanwhile."""
        if self._prev is not None and self._prev.end is not None:
            step, self._prev = self._prev, None
            self._finish_episode(step, out)

    def poll(self, now_ns: int) -> list[Transition]:
        """Resolve pending records (in order) and return the transitions completed."""
        out: list[Transition] = []
        timeout = int(self.cfg.pairing_timeout_s * 1e9)
        self._close_ended_prev(out)
        while self._pending:
            step = self._pending[0]
            obs = self._observe(step.stamp_ns)
            if obs is None:
                if now_ns - step.recv_ns < timeout:
                    break  # its frame / joint state may still be on its way
                cams = {c: self._frames[c].newest_stamp() for c in self.cameras}
                obs = f"no_matching_frame:record stamp {step.stamp_ns}; newest frames {cams}, newest joint " \
                      f"state {self._joints.newest_stamp()}"
            self._pending.popleft()
            if isinstance(obs, str):
                self._fail(obs)
                if self._prev is not None and self._prev.episode == step.episode:
                    self.reject("broken_chain", "the next step was rejected, so this one has no next observation")
                    self._prev = None
                continue
            step.obs = obs
            if self._prev is not None:
                if self._prev.successor_lost:
                    self.reject("broken_chain", "records after this step were lost: no next observation")
                elif self._prev.episode == step.episode:
                    self._emit(self._prev, obs, False, False, out)
                self._prev = None
            if step.end is not None:
                self._finish_episode(step, out)
            else:
                self._prev = step
        self._close_ended_prev(out)
        return out
