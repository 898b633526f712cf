"""rosbag2 reading and writing with ``rosbags`` (pure Python, no rosbag2 install needed).

The one place in the package that touches bag files; replay, ``eval-bag``, ``screen`` and
demonstration import all go through it.

* :func:`summary` lists a bag's topics, types, counts and recorded QoS.
* :func:`iter_messages` yields every message in a deterministic order: bag (receive)
  timestamp, then the order of the records in the file. Each :class:`BagMessage` carries
  the raw CDR bytes (what ``rclpy.serialization.deserialize_message`` takes, so replay
  publishes exactly what was recorded) and, on request, the message decoded to a
  ``rosbags`` dataclass (fields named as in the ``.msg`` file; arrays are numpy arrays).
* :class:`BagWriter` / :func:`write_bag` write MCAP (default, optionally zstd chunk
  compressed) or sqlite3 bags with the newest ROS 2 type store ``rosbags`` ships that
  matches our ROS distribution (kilted).
* :func:`make_image`, :func:`make_joint_state`, ... build ``rosbags`` messages for tests,
  the sample bag generator and tools that write bags.

Both storage formats are read and written; a bag folder (with ``metadata.yaml``) or a bare
``.mcap`` / ``.db3`` file can be read. Every failure is raised as :class:`BagError` with the
bag path and the cause (missing path, corrupt file, topic not in the bag, ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from wsa_ros.runtime.stamps import split_ns

STORAGES = ("mcap", "sqlite3")
# Newest first; the first one this rosbags version knows is used for writing and for bags
# recorded without embedded message definitions. kilted is the ROS distribution we run.
_STORE_PREFERENCE = ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_IRON", "ROS2_HUMBLE")


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message names the bag and the cause."""


# --------------------------------------------------------------------------- type store
_TYPESTORE = None


def typestore():
    """The ``rosbags`` type store used for writing (ROS 2 kilted, or the newest known)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        for name in _STORE_PREFERENCE:
            if hasattr(Stores, name):
                _TYPESTORE = get_typestore(getattr(Stores, name))
                break
        else:  # pragma: no cover - every rosbags >= 0.10 has humble
            raise BagError("rosbags has no ROS 2 type store (need rosbags >= 0.10)")
    return _TYPESTORE


def register_types(msgdefs: dict[str, str]) -> None:
    """Add custom message types (``{'pkg/msg/Name': '<.msg text>'}``) to the writing store."""
    from rosbags.typesys import get_types_from_msg

    ts = typestore()
    for name, text in msgdefs.items():
        ts.register(get_types_from_msg(text, name))


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class QosInfo:
    """The parts of a recorded (offered) QoS profile that matter for replay."""

    reliable: bool = True
    transient_local: bool = False
    depth: int = 0  # 0 = not recorded


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int
    qos: QosInfo | None = None  # the first offered profile recorded, if any


@dataclass(frozen=True)
class BagSummary:
    path: Path
    storage: str
    start_ns: int
    end_ns: int  # timestamp of the last message
    count: int
    topics: dict[str, TopicSummary] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9

    def describe(self) -> str:
        lines = [
            f"bag {self.path} ({self.storage}): {self.count} messages, {self.duration_s:.3f} s",
        ]
        for t in sorted(self.topics.values(), key=lambda t: t.name):
            lines.append(f"  {t.name}  [{t.msgtype}]  {t.count} msgs")
        return "\n".join(lines)


def _storage_of(path: Path) -> str:
    if path.is_file():
        return {".mcap": "mcap", ".db3": "sqlite3"}.get(path.suffix, path.suffix)
    meta = path / "metadata.yaml"
    try:
        import yaml

        with open(meta, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        return str(doc["rosbag2_bagfile_information"]["storage_identifier"])
    except Exception:  # noqa: BLE001 - only informational; the reader reports real errors
        return "unknown"


def _qos_info(profiles) -> QosInfo | None:
    if not profiles:
        return None
    from rosbags.interfaces import QosDurability, QosHistory, QosReliability

    q = profiles[0]
    try:
        return QosInfo(
            reliable=q.reliability != QosReliability.BEST_EFFORT,
            transient_local=q.durability == QosDurability.TRANSIENT_LOCAL,
            depth=int(q.depth) if q.history == QosHistory.KEEP_LAST else 0,
        )
    except AttributeError:
        return None


def check_bag_path(path: str | os.PathLike) -> Path:
    """A bag folder (with metadata.yaml) or a bare .mcap/.db3 file; BagError otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BagError(f"{p}: bag not found (no such file or folder)")
    if p.is_dir() and not (p / "metadata.yaml").is_file():
        inner = sorted(x.name for x in p.iterdir() if x.suffix in (".mcap", ".db3"))
        hint = f"; it holds {inner}: pass one of those files" if inner else ""
        raise BagError(f"{p}: not a rosbag2 folder (no metadata.yaml){hint}")
    if p.is_file() and p.suffix not in (".mcap", ".db3"):
        raise BagError(f"{p}: not a rosbag2 file (expected a folder, a .mcap or a .db3 file)")
    return p


def find_bags(path: str | os.PathLike) -> list[Path]:
    """One bag, or every bag inside a folder of bags (sorted by name)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BagError(f"{p}: bag not found (no such file or folder)")
    if p.is_file() or (p / "metadata.yaml").is_file():
        return [check_bag_path(p)]
    out = []
    for child in sorted(p.iterdir()):
        if child.is_dir() and (child / "metadata.yaml").is_file():
            out.append(child)
        elif child.is_file() and child.suffix in (".mcap", ".db3"):
            out.append(child)
    if not out:
        raise BagError(f"{p}: neither a rosbag2 bag nor a folder holding bags")
    return out


class _Reader:
    """AnyReader with our error handling (every failure -> BagError naming the bag)."""

    def __init__(self, path: str | os.PathLike):
        self.path = check_bag_path(path)
        self._r = None

    def __enter__(self):
        from rosbags.highlevel import AnyReader

        try:
            self._r = AnyReader([self.path], default_typestore=typestore())
            self._r.open()
        except Exception as exc:  # noqa: BLE001 - corrupt files raise many kinds
            self._r = None
            raise BagError(f"{self.path}: cannot open bag: {_cause(exc)}") from exc
        return self._r

    def __exit__(self, *exc):
        if self._r is not None:
            try:
                self._r.close()
            except Exception:  # noqa: BLE001
                pass
        return False


def _cause(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def summary(path: str | os.PathLike) -> BagSummary:
    """Topics, types, message counts, recorded QoS and time span of one bag."""
    with _Reader(path) as r:
        topics = {}
        for name, info in r.topics.items():
            qos = None
            for c in info.connections:
                qos = _qos_info(getattr(c.ext, "offered_qos_profiles", None))
                if qos:
                    break
            topics[name] = TopicSummary(name, info.msgtype or "(mixed types)", int(info.msgcount), qos)
        count = int(r.message_count)
        start = int(r.start_time) if count else 0
        end = int(r.end_time) - 1 if count else 0
        return BagSummary(Path(path), _storage_of(Path(path)), start, end, count, topics)


# --------------------------------------------------------------------------- reading
@dataclass
class BagMessage:
    """One recorded message. ``index`` is its position in the deterministic order,
    ``timestamp`` the bag (receive) time in ns, ``raw`` the CDR bytes as recorded and
    ``msg`` the decoded ``rosbags`` dataclass (None unless decoding was asked for)."""

    index: int
    topic: str
    msgtype: str
    timestamp: int
    raw: bytes
    msg: Any = None


def _check_topics(path: Path, r, topics: Sequence[str] | None) -> list:
    if topics is None:
        return list(r.connections)
    have = set(r.topics)
    missing = [t for t in topics if t not in have]
    if missing:
        raise BagError(
            f"{path}: topic(s) {missing} not in the bag; it has {sorted(have) or 'no topics'}"
        )
    return [c for c in r.connections if c.topic in set(topics)]


def iter_messages(
    path: str | os.PathLike,
    topics: Sequence[str] | None = None,
    decode: bool | Iterable[str] = False,
    start_ns: int | None = None,
    stop_ns: int | None = None,
) -> Iterator[BagMessage]:
    """Every message of ``topics`` (all topics if None) in (bag timestamp, record) order.

    ``decode``: True decodes every message, an iterable of topic names decodes those only
    (cheap for big image topics you do not need decoded). ``start_ns``/``stop_ns`` select
    absolute bag times [start, stop). A topic missing from the bag, a corrupt file or an
    undecodable message raises BagError naming the bag, topic and record.
    """
    p = check_bag_path(path)
    decode_set = None if isinstance(decode, bool) else set(decode)
    with _Reader(p) as r:
        conns = _check_topics(p, r, topics)
        if not conns:
            return
        i = 0
        last_t = None
        it = r.messages(connections=conns, start=start_ns, stop=stop_ns)
        while True:
            try:
                con, t, raw = next(it)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - corrupt chunk / database page
                raise BagError(f"{p}: corrupt bag: reading record {i} failed: {_cause(exc)}") from exc
            if last_t is not None and t < last_t:  # pragma: no cover - reader guarantees order
                raise BagError(f"{p}: records out of time order at record {i}")
            last_t = t
            raw = bytes(raw)
            msg = None
            if decode is True or (decode_set is not None and con.topic in decode_set):
                try:
                    msg = r.deserialize(raw, con.msgtype)
                except Exception as exc:  # noqa: BLE001
                    raise BagError(
                        f"{p}: record {i} on {con.topic} [{con.msgtype}] cannot be decoded: {_cause(exc)}"
                    ) from exc
            yield BagMessage(i, con.topic, con.msgtype, int(t), raw, msg)
            i += 1


def read_messages(path, topics=None, decode=False, **kw) -> list[BagMessage]:
    return list(iter_messages(path, topics=topics, decode=decode, **kw))


# --------------------------------------------------------------------------- writing
class BagWriter:
    """Write a rosbag2 bag (MCAP or sqlite3) readable by ``ros2 bag`` and ``rosbags``.

    >>> with BagWriter("out_bag", storage="mcap") as w:
    ...     w.write("/joint_states", "sensor_msgs/msg/JointState", t_ns, make_joint_state(...))

    ``msg`` may be a ``rosbags`` message (serialized here) or CDR bytes. Topics are added on
    first use; ``qos`` (a QosInfo) records the offered QoS like ``ros2 bag record`` does.
    ``compress=True`` zstd-compresses MCAP chunks (what ``ros2 bag record`` does with the
    zstd storage presets); sqlite3 bags are never compressed here.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", compress: bool = False):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        if storage not in STORAGES:
            raise BagError(f"storage '{storage}' is not one of {STORAGES}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path}: exists already; a bag is never overwritten")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._w = Writer(self.path, version=9, storage_plugin=plugin)
        if compress and storage == "mcap":
            self._w.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._conns: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self.count = 0

    def open(self) -> "BagWriter":
        self._w.open()
        return self

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            try:
                self._w.close()
            except Exception:  # noqa: BLE001
                pass
        return False

    def add_topic(self, topic: str, msgtype: str, qos: QosInfo | None = None):
        if topic in self._conns:
            if self._types[topic] != msgtype:
                raise BagError(f"{self.path}: topic {topic} already has type {self._types[topic]}, not {msgtype}")
            return self._conns[topic]
        ts = typestore()
        if msgtype not in ts.fielddefs:
            raise BagError(
                f"{self.path}: message type '{msgtype}' unknown to the rosbags type store; "
                "register it first with wsa_ros.runtime.bags.register_types"
            )
        profiles = [_rosbags_qos(qos)] if qos else []
        con = self._w.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=profiles)
        self._conns[topic] = con
        self._types[topic] = msgtype
        return con

    def write(self, topic: str, msgtype: str, timestamp_ns: int, msg: Any) -> None:
        con = self.add_topic(topic, msgtype)
        data = msg if isinstance(msg, (bytes, bytearray, memoryview)) else typestore().serialize_cdr(msg, msgtype)
        self._w.write(con, int(timestamp_ns), bytes(data))
        self.count += 1

    def close(self) -> None:
        self._w.close()


def _rosbags_qos(q: QosInfo):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST if q.depth else QosHistory.KEEP_ALL,
        int(q.depth),
        QosReliability.RELIABLE if q.reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if q.transient_local else QosDurability.VOLATILE,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


def write_bag(path, records: Iterable[tuple[str, str, int, Any]], storage: str = "mcap", compress: bool = False) -> Path:
    """Write ``(topic, msgtype, timestamp_ns, msg)`` records, in the given order."""
    with BagWriter(path, storage=storage, compress=compress) as w:
        for topic, msgtype, t, msg in records:
            w.write(topic, msgtype, t, msg)
    return Path(path)


# --------------------------------------------------------------------------- message helpers
def ns_to_time(ns: int):
    sec, nanosec = split_ns(ns)
    return typestore().types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str = ""):
    H = typestore().types["std_msgs/msg/Header"]
    return H(stamp=ns_to_time(stamp_ns), frame_id=frame_id)


def make_image(stamp_ns: int, rgb: np.ndarray, frame_id: str = "camera", encoding: str = "rgb8"):
    """sensor_msgs/Image from a uint8 HxWx3 (rgb8/bgr8, channels as given) or HxW (mono8) array."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim == 2:
        encoding = "mono8" if encoding in ("rgb8", "mono8") else encoding
        ch = 1
    elif a.ndim == 3 and a.shape[2] == 3:
        ch = 3
    else:
        raise ValueError(f"make_image: expected HxW or HxWx3 uint8, got shape {a.shape}")
    Image = typestore().types["sensor_msgs/msg/Image"]
    return Image(
        header=make_header(stamp_ns, frame_id),
        height=a.shape[0],
        width=a.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=a.shape[1] * ch,
        data=a.reshape(-1),
    )


def make_compressed_image(stamp_ns: int, data: bytes, fmt: str, frame_id: str = "camera"):
    C = typestore().types["sensor_msgs/msg/CompressedImage"]
    return C(header=make_header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(data, dtype=np.uint8))


def make_joint_state(stamp_ns: int, names: Sequence[str], position=(), velocity=(), effort=()):
    J = typestore().types["sensor_msgs/msg/JointState"]
    f = lambda v: np.asarray(v, dtype=np.float64).reshape(-1)  # noqa: E731
    return J(header=make_header(stamp_ns), name=list(names), position=f(position), velocity=f(velocity), effort=f(effort))


def make_float64_array(values: Sequence[float]):
    ts = typestore().types
    Layout = ts["std_msgs/msg/MultiArrayLayout"]
    return ts["std_msgs/msg/Float64MultiArray"](layout=Layout(dim=[], data_offset=0), data=np.asarray(values, dtype=np.float64))


def make_float64(value: float):
    return typestore().types["std_msgs/msg/Float64"](data=float(value))


def make_string(text: str):
    return typestore().types["std_msgs/msg/String"](data=text)


def make_joint_trajectory(stamp_ns: int, joint_names: Sequence[str], positions=(), velocities=(), time_from_start_ns: int = 0):
    ts = typestore().types
    Dur = ts["builtin_interfaces/msg/Duration"]
    P = ts["trajectory_msgs/msg/JointTrajectoryPoint"]
    f = lambda v: np.asarray(v, dtype=np.float64).reshape(-1)  # noqa: E731
    pt = P(
        positions=f(positions), velocities=f(velocities), accelerations=f(()), effort=f(()),
        time_from_start=Dur(**dict(zip(("sec", "nanosec"), split_ns(time_from_start_ns)))),
    )
    return ts["trajectory_msgs/msg/JointTrajectory"](header=make_header(stamp_ns), joint_names=list(joint_names), points=[pt])


def make_bool(value: bool):
    return typestore().types["std_msgs/msg/Bool"](data=bool(value))
