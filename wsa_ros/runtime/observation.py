"""The observation rule, ROS-free: which samples make up the observation a policy acts on,
the same live (the agent core) and offline (``wsa eval-bag``, ``wsa screen``).

**Samples.** A :class:`FrameSample` (camera message, decoded once on first use by
:func:`wsa_ros.runtime.images.decode`) or a :class:`JointSample`, each with ``time_ns``
(when it was received: the arrival time live, the record timestamp in a bag, which
``ros2 bag record`` sets to the arrival time) and ``stamp_ns`` (its header stamp).

**The sync rule** (:class:`Synchronizer`). Each frame F of the first camera (the trigger
camera; header stamp ``s``) makes one observation. Every other stream P (the other
cameras; the joint states when the bundle reads proprioception) contributes one sample:

* ``stamp`` (default): the sample of P whose header stamp is nearest ``s`` (at equal
  distance the earlier stamp; of equal stamps the first received). That choice is final
  as soon as P has delivered a sample stamped at or after ``s``: a stream delivers its
  samples in publish order, so nothing nearer can arrive later. F waits until every
  partner is final, at most ``timeout`` after F arrived; then it takes the nearest sample
  received so far and is marked ``timed_out`` (counted: the one case where delivery timing
  can change a pairing).
* ``newest``: the newest sample of P received when F arrived; F never waits (lowest
  latency, but which joint state pairs with a frame then depends on delivery order).

The ``stamp`` choice depends only on header stamps and each stream's own order, so a bag
replayed into the agent at any rate and the same bag evaluated offline pair every frame
with the same joint state. Its latency cost is the wait for the first partner sample
stamped at or after the frame: none when a partner shares the frame's stamp (a simulator
stamping one tick), one joint-state period when joint states are stamped before their
frames (1-10 ms for a 100-1000 Hz ``joint_state_broadcaster``), the partner's delivery
delay when stamped just after. A second camera costs up to one of its frame periods.

**Joint states** are read by :class:`JointReader`, the one joint-name rule: a message may
list its joints in any order and carry joints the policy does not use (a gripper, a
second arm): those are ignored; a joint the policy needs that is missing, a repeated
name, mismatched field lengths or a NaN/inf value rejects the message. The agent, the
learner (action records, teleoperation commands, proprioception) and the offline tools
all read joint states through it; :func:`build_proprio` is the reader without action
joints.

Offline, :func:`iter_observations` feeds a bag's messages in record order into the same
:class:`Synchronizer`, with the record timestamps as arrival times.
"""
from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from wsa_ros.runtime.images import decode, is_compressed_topic
from wsa_ros.runtime.stamps import stamp_ns

SYNC_RULES = ("stamp", "newest")
JOINTS = "joint states"  # the joint-state stream's name among the partner streams
DEFAULT_TIMEOUT_NS = 50_000_000
#: samples kept per stream (at 1 kHz joint states: 256 ms)
HISTORY = 256


# =============================================================================== samples
@dataclass
class FrameSample:
    """One camera message. ``time_ns``: received (live) or record time (bag);
    ``stamp_ns``: its header stamp."""

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
        """The decoded frame (decoded on first use; raises ``images.ImageError``)."""
        if self._rgb is None:
            self._rgb = decode(self.msg, self.compressed)
            self.msg = None  # the decoded frame is all we need from now on
        return self._rgb


@dataclass
class JointSample:
    """One joint-state message; ``measured`` / ``proprio``: what a :class:`JointReader`
    made of it, when the receiver read it on arrival."""

    time_ns: int
    stamp_ns: int
    names: list[str]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    measured: np.ndarray | None = None
    proprio: np.ndarray | None = None

    @classmethod
    def from_msg(cls, msg, time_ns: int) -> "JointSample":
        return cls.from_fields(msg.name, msg.position, msg.velocity, msg.effort, stamp_ns(msg.header.stamp),
                               time_ns)

    @classmethod
    def from_fields(cls, names, position, velocity, effort, stamp: int, time_ns: int) -> "JointSample":
        f = lambda v: np.asarray(v, dtype=np.float64).reshape(-1).copy()  # noqa: E731
        return cls(int(time_ns), int(stamp), list(names), f(position), f(velocity), f(effort))


# =============================================================================== joint names
class JointRejected(ValueError):
    """A joint state that cannot be used; ``key`` names the cause (a rejection counter)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


_OF_POSITION = {"sin_position": np.sin, "cos_position": np.cos}  # proprioception fields derived from the position


class JointReader:
    """sensor_msgs/JointState fields (any joint order, extra joints ignored) -> the action
    joints' positions and the bundle's proprioception vector (per field, the spec's joints
    in order), with every check: repeated or missing names, field lengths, NaN/inf. The
    index arrays are kept per list of names (a robot sends the same list every time), so
    a reading costs a few numpy gathers. :meth:`read` raises :class:`JointRejected` with
    key ``joint_malformed``, ``joint_missing`` or ``joint_nonfinite``."""

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
            if fld in _OF_POSITION:
                parts.append(_OF_POSITION[fld](fields["position"][pidx]))
                continue
            if len(fields[fld]) != n:
                raise JointRejected("joint_malformed", f"{self.where} has no '{fld}' values for its {n} joints")
            parts.append(fields[fld][pidx])
        proprio = np.concatenate(parts)
        if not np.isfinite(proprio).all():
            bad = [f"{j} {fld}" for fld, part in zip(self.proprio.fields, parts)
                   for j, v in zip(self.proprio.joint_names, part) if not np.isfinite(v)]
            raise JointRejected("joint_nonfinite", f"{self.where}: {bad} not finite")
        return measured, proprio


def build_proprio(spec, names, position=None, velocity=None, effort=None) -> np.ndarray:
    """Joint readings (any order, e.g. a JointState's) -> the vector the bundle expects:
    for each field in ``spec.fields`` (``bundle.PROPRIO_FIELDS``), every joint in
    ``spec.joint_names`` order. Raises
    :class:`JointRejected` (a ValueError) naming a missing joint, a missing field or a
    non-finite value. :class:`JointReader` without action joints."""
    return JointReader((), spec).read(names, () if position is None else position,
                                      () if velocity is None else velocity, () if effort is None else effort)[1]


# =============================================================================== pairing by stamp
class StampHistory:
    """The last ``maxlen`` samples of one stream (objects with ``stamp_ns``), ordered by
    header stamp whatever order they came in; samples with equal stamps keep their
    arrival order. ``last`` is the newest received, ``max_stamp`` the latest stamp seen."""

    def __init__(self, maxlen: int = HISTORY, horizon_ns: int | None = None):
        self.maxlen = int(maxlen)
        self.horizon_ns = horizon_ns  # also forget samples stamped this long before the latest
        self._stamps: list[int] = []
        self._items: list = []
        self.last = None
        self.max_stamp: int | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sample) -> None:
        s = int(sample.stamp_ns)
        i = bisect.bisect_right(self._stamps, s)
        self._stamps.insert(i, s)
        self._items.insert(i, sample)
        if len(self._items) > self.maxlen:  # forget the oldest stamp
            del self._stamps[0], self._items[0]
        self.last = sample
        self.max_stamp = s if self.max_stamp is None else max(self.max_stamp, s)
        if self.horizon_ns is not None and self._stamps[0] < self.max_stamp - self.horizon_ns:
            cut = bisect.bisect_left(self._stamps, self.max_stamp - self.horizon_ns)
            del self._stamps[:cut], self._items[:cut]

    def nearest(self, stamp: int, tol_ns: int | None = None):
        """The sample whose stamp is nearest ``stamp`` (equal distance: the earlier stamp;
        equal stamps: the first received), None when empty or none within ``tol_ns``."""
        if not self._items:
            return None
        i = bisect.bisect_left(self._stamps, stamp)  # first stamp >= stamp
        best = None
        if i < len(self._stamps):
            best = i
        if i > 0 and (best is None or stamp - self._stamps[i - 1] <= self._stamps[i] - stamp):
            j = bisect.bisect_left(self._stamps, self._stamps[i - 1])  # the first received of equal stamps
            best = j
        if tol_ns is not None and abs(self._stamps[best] - stamp) > tol_ns:
            return None
        return self._items[best]

    def newest_stamp(self) -> int | None:
        """The latest stamp held (not necessarily the last received)."""
        return self._stamps[-1] if self._stamps else None

    def final_for(self, stamp: int) -> bool:
        """True once a sample stamped at or after ``stamp`` was received: by the stream's
        publish order, :meth:`nearest` cannot change any more."""
        return self.max_stamp is not None and self.max_stamp >= stamp


@dataclass
class Observation:
    """One step's samples: the trigger camera's frame, the other cameras' frames and the
    joint state paired with it; ``time_ns`` = when it was complete (the receiver's clock)."""

    time_ns: int
    frames: dict[str, FrameSample]
    joints: JointSample | None
    timed_out: bool = False

    @property
    def stamp_ns(self) -> int:
        """Header stamp of the trigger camera's frame (what an action record carries)."""
        return next(iter(self.frames.values())).stamp_ns

    def images(self) -> dict[str, np.ndarray]:
        """{camera: frame} for ``Engine.step``."""
        return {cam: s.rgb() for cam, s in self.frames.items()}

    def proprio(self, spec) -> np.ndarray | None:
        """The bundle's proprioception vector; None if the bundle reads none. Raises
        :class:`JointRejected` naming a missing joint or field."""
        if spec is None:
            return None
        if self.joints is None:
            raise JointRejected("joint_missing", "the bundle needs joint states but none has been received")
        j = self.joints
        if j.proprio is not None:
            return j.proprio
        return build_proprio(spec, j.names, j.position, j.velocity, j.effort)

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


class Synchronizer:
    """The sync rule (module docstring) over the latest samples of every stream.

    ``put_frame`` / ``put_joints`` as samples arrive, then :meth:`resolve` with the current
    time: the trigger camera's frames whose observation is complete, oldest first. At most
    ``max_pending`` trigger frames wait; beyond that the oldest is given up (``superseded``).
    """

    def __init__(self, cameras: Sequence[str], need_joints: bool = True, rule: str = "stamp",
                 timeout_ns: int = DEFAULT_TIMEOUT_NS, max_pending: int = 8, history: int = HISTORY):
        if rule not in SYNC_RULES:
            raise ValueError(f"sync rule '{rule}' is not one of {SYNC_RULES}")
        if not cameras:
            raise ValueError("no cameras given")
        self.cameras = list(cameras)
        self.rule = rule
        self.timeout_ns = int(timeout_ns)
        self.max_pending = int(max_pending)
        self.streams: dict[str, StampHistory] = {c: StampHistory(history) for c in self.cameras}
        self.partners = self.cameras[1:]
        if need_joints:
            self.streams[JOINTS] = StampHistory(history)
            self.partners.append(JOINTS)
        self._pending: collections.deque = collections.deque()
        self.superseded = 0  # trigger frames given up unresolved (queue full)
        self.timeouts = 0  # observations completed by the timeout
        self.incomplete = 0  # trigger frames without a sample of some partner stream at all

    @property
    def trigger(self) -> str:
        return self.cameras[0]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def newest_stamp(self, stream: str) -> int | None:
        """Header stamp of the newest sample received on ``stream`` (a camera or JOINTS)."""
        last = self.streams[stream].last
        return None if last is None else last.stamp_ns

    def latest(self, stream: str):
        return self.streams[stream].last

    def put_frame(self, camera: str, sample: FrameSample) -> None:
        if camera not in self.cameras:
            raise KeyError(f"camera '{camera}' is not one of {self.cameras}")
        self.streams[camera].add(sample)
        if camera == self.trigger:
            snap = {p: self.streams[p].last for p in self.partners} if self.rule == "newest" else None
            self._pending.append((sample, snap))
            if len(self._pending) > self.max_pending:
                self._pending.popleft()
                self.superseded += 1

    def put_joints(self, sample: JointSample) -> None:
        self.streams[JOINTS].add(sample)

    def resolve(self, now_ns: int) -> list[Observation]:
        """Observations complete at ``now_ns``, oldest first (each trigger frame once)."""
        out: list[Observation] = []
        while self._pending:
            frame, snap = self._pending[0]
            timed_out = False
            if snap is None:
                s = frame.stamp_ns
                if not all(self.streams[p].final_for(s) for p in self.partners):
                    if now_ns - frame.time_ns < self.timeout_ns:
                        break  # a nearer partner sample may still be on its way
                    timed_out = True
                snap = {p: self.streams[p].nearest(s) for p in self.partners}
            self._pending.popleft()
            if any(v is None for v in snap.values()):
                self.incomplete += 1
                continue
            self.timeouts += timed_out
            frames = {self.trigger: frame}
            frames.update({c: snap[c] for c in self.cameras[1:]})
            out.append(Observation(int(now_ns), frames, snap.get(JOINTS), timed_out))
        return out

    def flush(self) -> list[Observation]:
        """The stream ended (a bag's last message): every waiting frame completes as its wait
        runs out, at its arrival + ``timeout``, with the samples received by then."""
        out: list[Observation] = []
        while self._pending:
            out += self.resolve(max(self._pending[0][0].time_ns + self.timeout_ns, 0))
        return out


# =============================================================================== offline
def iter_observations(
    bag,
    camera_topics: dict[str, str],
    joint_topic: str | None,
    trigger: str = "frame",
    rate_hz: float | None = None,
    extra_topics: Sequence[str] = (),
    on_extra=None,
    start_ns: int | None = None,
    stop_ns: int | None = None,
    sync: str = "stamp",
    timeout_ns: int = DEFAULT_TIMEOUT_NS,
) -> Iterator[Observation]:
    """Observations from a bag by the sync rule, as the agent would make them.

    ``camera_topics``: {camera name: topic}, the trigger camera first (topics ending in
    /compressed are CompressedImage). ``joint_topic``: sensor_msgs/JointState topic or
    None. ``trigger``: ``frame`` = one observation per trigger-camera frame, when it is
    complete (``time_ns`` = the record time of the message that completed it); ``rate`` =
    at every control period ``1/rate_hz`` of bag time from the bag's first message, the
    newest complete observation (``time_ns`` = the tick). ``extra_topics`` (recorded
    commands, rewards) are decoded and passed to ``on_extra(BagMessage)`` in bag order,
    interleaved correctly with the yields.
    """
    from wsa_ros.runtime.bags import iter_messages

    if trigger not in ("frame", "rate"):
        raise ValueError(f"trigger '{trigger}' is not 'frame' or 'rate'")
    if trigger == "rate" and not (rate_hz and rate_hz > 0):
        raise ValueError("trigger 'rate' needs rate_hz > 0")
    if not camera_topics:
        raise ValueError("no camera topics given")
    cams = list(camera_topics)
    topic_cam = {t: c for c, t in camera_topics.items()}
    topics = list(camera_topics.values()) + ([joint_topic] if joint_topic else []) + [
        t for t in extra_topics if t not in camera_topics.values() and t != joint_topic]
    sync_ = Synchronizer(cams, need_joints=joint_topic is not None, rule=sync, timeout_ns=timeout_ns)
    period = int(round(1e9 / rate_hz)) if trigger == "rate" else 0
    next_tick: int | None = None
    last_t = 0
    current: list[Observation | None] = [None]

    def done(t: int) -> Iterator[Observation]:
        obs = sync_.resolve(t)
        if trigger == "frame":
            yield from obs
        elif obs:
            current[0] = obs[-1]

    for m in iter_messages(bag, topics=topics, decode=True, start_ns=start_ns, stop_ns=stop_ns):
        t = m.timestamp
        if trigger == "rate":
            next_tick = t if next_tick is None else next_tick
            while next_tick < t:
                yield from done(next_tick)
                if current[0] is not None:
                    yield Observation(next_tick, current[0].frames, current[0].joints, current[0].timed_out)
                next_tick += period
        yield from done(t)  # frames whose wait ran out before this message
        if m.topic in topic_cam:
            sync_.put_frame(topic_cam[m.topic], FrameSample.from_msg(m.msg, t, is_compressed_topic(m.topic)))
        elif m.topic == joint_topic:
            sync_.put_joints(JointSample.from_msg(m.msg, t))
        if m.topic in extra_topics and on_extra is not None:
            on_extra(m)
        yield from done(t)
        last_t = t
    obs = sync_.flush()  # the bag ended: whatever still waits times out
    if trigger == "frame":
        yield from obs
    elif obs:
        current[0] = obs[-1]
    if trigger == "rate" and next_tick is not None and next_tick <= last_t and current[0] is not None:
        yield Observation(next_tick, current[0].frames, current[0].joints, current[0].timed_out)  # at the last message
