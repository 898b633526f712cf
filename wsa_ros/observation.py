"""Observation building, ROS-free: the one rule the live agent and the offline tools share.

**Sync rule.** An observation at time ``t`` is the newest frame of every camera
received *at or before* ``t``, and, among the joint states received at or before ``t``,
the one :meth:`JointHistory.pick` selects for the first camera's frame: with ``joint_sync:
stamp`` (default) the newest whose header stamp is at or before the frame's stamp (the
arm's pose when the image was taken), with ``newest`` simply the newest. Live, ``t`` is
the control tick and "received" is the arrival time; offline, ``t`` is a bag time and
"received" is the bag's record timestamp (which ``ros2 bag record`` sets to the arrival
time). Pairing by stamp makes a bag replayed into the agent and the same bag evaluated
offline build the same observations even when DDS delivers a joint state after the
frame of a later step, or the agent's executor takes a frame before a joint state that
arrived first.

The live agent (``nodes/agent.py``) keeps its own latest-sample slots, which also count
drops and losses per stream, and pairs frames with joint states through the same
:class:`JointHistory`. :class:`LatestSamples` is the ROS-free form of those slots::

    slots = LatestSamples(cameras=engine.cameras, need_joints=bundle.proprio is not None)
    slots.put_frame("front", FrameSample.from_msg(msg, now_ns, compressed))
    slots.put_joints(JointSample.from_msg(msg, now_ns))
    obs = slots.observe(now_ns)  # None until every slot has a sample
    r = engine.step(obs.images(), obs.proprio(bundle.proprio))

Offline use: :func:`iter_observations` walks a bag in its deterministic order, fills the
same slots and yields an observation at every trigger (each frame of one camera, or a
fixed control rate in bag time). Frames are decoded lazily (only when an observation uses
them) with :mod:`wsa_ros.images`; the decoded frame is cached on the sample.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np


def is_compressed_topic(topic: str) -> bool:
    """The agent's rule: a camera topic ending in '/compressed' carries CompressedImage."""
    return topic.rstrip("/").endswith("/compressed")


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) -> integer ns."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def decode_frame(msg, compressed: bool) -> np.ndarray:
    """A sensor_msgs Image / CompressedImage (rclpy or rosbags object) -> uint8 HxWx3 RGB
    (HxW for mono8). The single place frames are decoded, live and offline."""
    from . import images

    if compressed:
        return images.from_compressed_msg(msg)
    return images.from_image_msg(msg)


@dataclass
class FrameSample:
    """One camera message in a slot. ``time_ns``: arrival (live) or bag time (offline);
    ``stamp_ns``: the message header stamp."""

    time_ns: int
    stamp_ns: int
    msg: Any
    compressed: bool = False
    _rgb: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_msg(cls, msg, time_ns: int, compressed: bool = False) -> "FrameSample":
        return cls(int(time_ns), stamp_ns(msg.header.stamp), msg, compressed)

    @classmethod
    def from_array(cls, rgb: np.ndarray, time_ns: int, stamp: int | None = None) -> "FrameSample":
        return cls(int(time_ns), int(time_ns if stamp is None else stamp), None, False, rgb)

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = decode_frame(self.msg, self.compressed)
            self.msg = None  # the decoded frame is all we need from now on
        return self._rgb


@dataclass
class JointSample:
    time_ns: int
    stamp_ns: int
    names: list[str]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray

    @classmethod
    def from_msg(cls, msg, time_ns: int) -> "JointSample":
        f = lambda v: np.asarray(v, dtype=np.float64).reshape(-1).copy()  # noqa: E731
        return cls(int(time_ns), stamp_ns(msg.header.stamp), list(msg.name), f(msg.position), f(msg.velocity),
                   f(msg.effort))


#: joint states kept for pairing by stamp (at 1 kHz joint states: 64 ms of history)
JOINT_HISTORY = 64
JOINT_SYNC_RULES = ("stamp", "newest")


class JointHistory:
    """The last ``maxlen`` joint states (objects with ``stamp_ns``), kept sorted by stamp
    whatever order they arrived in; ``newest`` is the last one received.

    :meth:`pick` is the pairing rule (``joint_sync``) for a frame stamped
    ``frame_stamp_ns``: ``stamp`` = the newest by header stamp among those stamped at or
    before the frame (a stamp received twice: the later arrival), or, when every one is
    newer than the frame, the oldest (the closest); ``newest`` = the last received. None
    while empty."""

    def __init__(self, maxlen: int = JOINT_HISTORY):
        self.maxlen = int(maxlen)
        self._stamps: list[int] = []
        self._items: list = []
        self.newest = None

    def __len__(self) -> int:
        return len(self._items)

    def append(self, sample) -> None:
        i = bisect.bisect_right(self._stamps, sample.stamp_ns)
        self._stamps.insert(i, sample.stamp_ns)
        self._items.insert(i, sample)
        if len(self._items) > self.maxlen:  # forget the oldest stamp
            del self._stamps[0], self._items[0]
        self.newest = sample

    def pick(self, frame_stamp_ns: int, rule: str = "stamp"):
        if not self._items:
            return None
        if rule == "newest":
            return self.newest
        if rule != "stamp":
            raise ValueError(f"joint_sync '{rule}' is not one of {JOINT_SYNC_RULES}")
        i = bisect.bisect_right(self._stamps, frame_stamp_ns)
        return self._items[i - 1] if i else self._items[0]


class JointRejected(ValueError):
    """A joint state that cannot be used; ``key`` names the cause (a rejection counter)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class JointReader:
    """sensor_msgs/JointState fields (any joint order, extra joints ignored) -> the action
    joints' positions and the bundle's proprioception vector (per field, the spec's joints
    in order; ``engine.build_proprio`` is this reader without action joints), with every
    check the agent makes:
    repeated or missing names, field lengths, NaN/inf. The index arrays are kept per list
    of names (a robot sends the same list every time), so a reading costs a few numpy
    gathers. ``read`` raises :class:`JointRejected` with key ``joint_malformed``,
    ``joint_missing`` or ``joint_nonfinite``."""

    def __init__(self, action_joints: Sequence[str], proprio=None, where: str = "joint state"):
        self.action_joints = list(action_joints)
        self.proprio = proprio  # bundle.ProprioSpec or None
        self.need = list(dict.fromkeys(self.action_joints + (list(proprio.joint_names) if proprio else [])))
        self.where = where
        self._plans: dict[tuple, tuple] = {}

    def _plan(self, names: tuple) -> tuple:
        n = len(names)
        if len(set(names)) != n:
            dup = sorted({x for x in names if names.count(x) > 1})
            return "joint_malformed", f"{self.where} repeats joint name(s) {dup}"
        index = {j: i for i, j in enumerate(names)}
        missing = [j for j in self.need if j not in index]
        if missing:
            unknown = [j for j in names if j not in self.need]
            extra = f"; it has unknown joint(s) {unknown}" if unknown else ""
            return "joint_missing", (f"{self.where} lacks joint(s) {missing} the policy needs "
                                     f"(expects {self.need}){extra}")
        pidx = np.array([index[j] for j in self.proprio.joint_names], np.intp) if self.proprio else None
        return np.array([index[j] for j in self.action_joints], np.intp), pidx

    def read(self, names, position, velocity=(), effort=()) -> tuple[np.ndarray, np.ndarray | None]:
        """-> (positions of the action joints, proprioception vector or None)."""
        names = tuple(names)
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plan(names)
            if len(self._plans) < 16:
                self._plans[names] = plan
        if isinstance(plan[0], str):
            raise JointRejected(*plan)
        act_idx, pidx = plan
        n = len(names)
        fields = {}
        for fname, arr in (("position", position), ("velocity", velocity), ("effort", effort)):
            if len(arr) not in ((n,) if fname == "position" else (0, n)):
                raise JointRejected("joint_malformed", f"{self.where} has {n} names but {len(arr)} {fname} values")
            fields[fname] = np.asarray(arr, dtype=np.float64)
        measured = fields["position"][act_idx]
        if not np.isfinite(measured).all():
            bad = [j for j, v in zip(self.action_joints, measured) if not np.isfinite(v)]
            raise JointRejected("joint_nonfinite", f"{self.where}: position of {bad} is NaN/inf")
        if self.proprio is None:
            return measured, None
        parts = []
        for fld in self.proprio.fields:
            if len(fields[fld]) != n:
                raise JointRejected("joint_malformed", f"{self.where} has no '{fld}' values for its {n} joints")
            parts.append(fields[fld][pidx])
        proprio = np.concatenate(parts)
        if not np.isfinite(proprio).all():
            bad = [f"{j} {fld}" for fld, part in zip(self.proprio.fields, parts)
                   for j, v in zip(self.proprio.joint_names, part) if not np.isfinite(v)]
            raise JointRejected("joint_nonfinite", f"{self.where}: {bad} not finite")
        return measured, proprio


@dataclass
class Observation:
    time_ns: int
    frames: dict[str, FrameSample]
    joints: JointSample | None

    def images(self) -> dict[str, np.ndarray]:
        """{camera: frame} for ``Engine.step``."""
        return {cam: s.rgb() for cam, s in self.frames.items()}

    def proprio(self, spec) -> np.ndarray | None:
        """The bundle's proprioception vector (``engine.build_proprio``); None if the
        bundle reads none. Raises ValueError naming a missing joint or field."""
        if spec is None:
            return None
        if self.joints is None:
            raise ValueError("the bundle needs joint states but none has been received")
        from .engine import build_proprio

        j = self.joints
        return build_proprio(spec, j.names, j.position, j.velocity, j.effort)

    def oldest_ns(self) -> int:
        """Time of the oldest sample used (for age checks against ``time_ns``)."""
        times = [s.time_ns for s in self.frames.values()]
        if self.joints is not None:
            times.append(self.joints.time_ns)
        return min(times) if times else self.time_ns

    def stamps(self) -> dict[str, int]:
        """Header stamps and receive times of every sample, flat (CSV columns)."""
        out = {}
        for cam, s in self.frames.items():
            out[f"stamp_{cam}"] = s.stamp_ns
            out[f"recv_{cam}"] = s.time_ns
        if self.joints is not None:
            out["stamp_joints"] = self.joints.stamp_ns
            out["recv_joints"] = self.joints.time_ns
        return out


class LatestSamples:
    """Latest-sample slots: the newest frame per camera and the newest joint state."""

    def __init__(self, cameras: Sequence[str], need_joints: bool = True, joint_sync: str = "stamp"):
        if joint_sync not in JOINT_SYNC_RULES:
            raise ValueError(f"joint_sync '{joint_sync}' is not one of {JOINT_SYNC_RULES}")
        self.cameras = list(cameras)
        self.need_joints = bool(need_joints)
        self.joint_sync = joint_sync
        self.frames: dict[str, FrameSample] = {}
        self.joints: JointSample | None = None  # the newest received
        self.joint_history = JointHistory()

    def put_frame(self, camera: str, sample: FrameSample) -> None:
        if camera not in self.cameras:
            raise KeyError(f"camera '{camera}' is not one of {self.cameras}")
        self.frames[camera] = sample

    def put_joints(self, sample: JointSample) -> None:
        self.joints = sample
        self.joint_history.append(sample)

    def missing(self) -> list[str]:
        out = [f"camera '{c}'" for c in self.cameras if c not in self.frames]
        if self.need_joints and self.joints is None:
            out.append("joint states")
        return out

    def observe(self, time_ns: int) -> Observation | None:
        """The observation at ``time_ns``, or None while a slot is still empty."""
        if self.missing():
            return None
        joints = None
        if self.need_joints:
            joints = self.joint_history.pick(self.frames[self.cameras[0]].stamp_ns, self.joint_sync)
        return Observation(int(time_ns), {c: self.frames[c] for c in self.cameras}, joints)


# --------------------------------------------------------------------------- offline
def iter_observations(
    bag,
    camera_topics: dict[str, str],
    joint_topic: str | None,
    trigger: str = "frame",
    rate_hz: float | None = None,
    trigger_camera: str | None = None,
    extra_topics: Sequence[str] = (),
    on_extra=None,
    start_ns: int | None = None,
    stop_ns: int | None = None,
    joint_sync: str = "stamp",
) -> Iterator[Observation]:
    """Observations from a bag by the sync rule.

    ``camera_topics``: {camera name: topic} (topics ending in /compressed are
    CompressedImage). ``joint_topic``: sensor_msgs/JointState topic or None.
    ``trigger``: ``frame`` = one observation per frame of ``trigger_camera`` (default the
    first camera), taken at that frame's bag time; ``rate`` = one per control period
    ``1/rate_hz`` of bag time, from the bag's first message. All messages with a bag time
    at or before the trigger time are in the slots, including ones recorded later with the
    same timestamp. Ticks before every slot has a sample are skipped. ``joint_sync``: the
    agent's rule for which joint state goes with the frame (:meth:`JointHistory.pick`).
    ``extra_topics`` (e.g. recorded commands, rewards) are decoded and passed to
    ``on_extra(BagMessage)`` in bag order, interleaved correctly with the yields.
    """
    from .bags import iter_messages

    if trigger not in ("frame", "rate"):
        raise ValueError(f"trigger '{trigger}' is not 'frame' or 'rate'")
    if trigger == "rate" and not (rate_hz and rate_hz > 0):
        raise ValueError("trigger 'rate' needs rate_hz > 0")
    if not camera_topics:
        raise ValueError("no camera topics given")
    cams = list(camera_topics)
    trig_cam = trigger_camera or cams[0]
    if trig_cam not in camera_topics:
        raise ValueError(f"trigger camera '{trig_cam}' is not one of {cams}")
    topic_cam = {t: c for c, t in camera_topics.items()}
    topics = list(camera_topics.values()) + ([joint_topic] if joint_topic else []) + [
        t for t in extra_topics if t not in camera_topics.values() and t != joint_topic]
    slots = LatestSamples(cams, need_joints=joint_topic is not None, joint_sync=joint_sync)
    period = int(round(1e9 / rate_hz)) if trigger == "rate" else 0
    pending: list[int] = []  # trigger times waiting for all messages at that time
    next_tick: int | None = None
    last_t = 0

    def fire(t: int):
        obs = slots.observe(t)
        if obs is not None:
            yield obs

    for m in iter_messages(bag, topics=topics, decode=True, start_ns=start_ns, stop_ns=stop_ns):
        t = m.timestamp
        # fire every trigger strictly before this message's time
        while pending and pending[0] < t:
            yield from fire(pending.pop(0))
        if trigger == "rate":
            if next_tick is None:
                next_tick = t
            while next_tick < t:
                yield from fire(next_tick)
                next_tick += period
        if m.topic in topic_cam:
            cam = topic_cam[m.topic]
            slots.put_frame(cam, FrameSample.from_msg(m.msg, t, is_compressed_topic(m.topic)))
            if trigger == "frame" and cam == trig_cam:
                pending.append(t)
        elif m.topic == joint_topic:
            slots.put_joints(JointSample.from_msg(m.msg, t))
        if m.topic in extra_topics and on_extra is not None:
            on_extra(m)
        last_t = t
    for t in pending:
        yield from fire(t)
    if trigger == "rate" and next_tick is not None and next_tick <= last_t:
        yield from fire(next_tick)  # a tick exactly at the last message's time
