"""The learner's ingest, ROS-free: messages of several robots -> transitions, in publish order.

    ingest = Ingest(spec, bundle, encode, acfg, sources=["/", "/r2"], window_ns=500_000_000)
    ingest.put("/", "frame", ("front", False, msg), src_ns, recv_ns)      # any thread, bounded
    records, episodes = ingest.step(now_ns)                               # the ingest thread

* :class:`Reorderer`: a message is handled by its *publish* time (the DDS source timestamp),
  not by when it reached us: each one is held ``window_ns`` after it arrived, and the held
  ones leave oldest publish time first. Neither the executor's hand-over order nor the
  reception time survives a busy learner, and the assembly rules (rewards and episode ends
  belong to the latest action record published before them) need publish order. A
  publisher whose clock is more than ``max_skew_ns`` off ours is ordered by reception time
  instead (counted ``clock_skew``).
* :class:`RecordSequence`: the agent numbers its action records (the DDS publication
  sequence number per publisher); a jump means records never reached us, so the step before
  the gap has no known next observation and must not be paired with the record after it
  (``Assembler.records_lost``).
* per robot an :class:`wsa_ros.learn.transitions.Assembler` pairs records with frames and
  joint states by stamp, attributes rewards and episode ends, and checks everything;
  :func:`wsa_ros.learn.transitions.check_record` checks each transition against the schema.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import queue
import threading
from typing import Any, Sequence

from wsa_ros.learn.transitions import Assembler, AssemblerConfig, Episode, TransitionSpec, check_record
from wsa_ros.runtime.observation import FrameSample, JointSample
from wsa_ros.runtime.stamps import stamp_ns

INBOX = 4096  # messages waiting for the ingest thread
MAX_SKEW_NS = 1_000_000_000  # publisher clocks further off than this: ordered by reception time
KINDS = ("frame", "joints", "record", "reward", "success", "end", "teleop")


class Reorderer:
    """Items released in publish-time order once they have been held ``window_ns``."""

    def __init__(self, window_ns: int, max_skew_ns: int = MAX_SKEW_NS):
        self.window_ns = int(window_ns)
        self.max_skew_ns = int(max_skew_ns)
        self._heap: list = []
        self._n = itertools.count()
        self.skewed = 0

    def order_time(self, src_ns: int | None, recv_ns: int | None, now_ns: int) -> int:
        """The time an item is ordered by: its publish time, unless the publisher's clock is
        off by more than ``max_skew_ns`` (then its reception time)."""
        if src_ns and recv_ns and abs(recv_ns - src_ns) < self.max_skew_ns:
            return int(src_ns)
        if src_ns and recv_ns:
            self.skewed += 1
        return int(recv_ns or now_ns)

    def push(self, t_ns: int, arrived_ns: int, item) -> None:
        heapq.heappush(self._heap, (int(t_ns), next(self._n), int(arrived_ns), item))

    def release(self, now_ns: int) -> list[tuple[int, Any]]:
        """(order time, item), oldest order time first, while the oldest has been held at
        least ``window_ns`` since it arrived (the ones behind it wait for it)."""
        out = []
        watermark = int(now_ns) - self.window_ns
        while self._heap and self._heap[0][2] <= watermark:
            t, _n, _arrived, item = heapq.heappop(self._heap)
            out.append((t, item))
        return out

    def __len__(self) -> int:
        return len(self._heap)


class RecordSequence:
    """The last action-record sequence number per (robot, publisher)."""

    def __init__(self):
        self._last: dict[tuple, int] = {}

    def lost(self, source: str, gid, seq: int | None) -> int:
        """How many records of this publisher were skipped before ``seq`` (0: none, or unknown)."""
        if seq is None:
            return 0
        key = (source, gid)
        last = self._last.get(key)
        self._last[key] = int(seq)
        return int(seq - last - 1) if last is not None and seq > last + 1 else 0


class Ingest:
    """One learner's ingest (module docstring). :meth:`put` from any thread; :meth:`step`
    from one ingest thread only."""

    def __init__(self, spec: TransitionSpec, cameras: Sequence[str], encode, proprio, acfg: AssemblerConfig,
                 sources: Sequence[str], window_ns: int, inbox: int = INBOX):
        self.spec = spec
        self.assemblers = {s: Assembler(spec, cameras, encode, proprio, acfg, source=s) for s in sources}
        self.reorder = Reorderer(window_ns)
        self.records = RecordSequence()
        self.inbox: queue.Queue = queue.Queue(maxsize=int(inbox))
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def put(self, source: str, kind: str, payload: tuple, src_ns: int | None, recv_ns: int | None, now_ns: int,
            pub: tuple | None = None) -> bool:
        """Queue a message: ``payload`` per kind (frame: (camera, compressed, msg); record /
        joints / teleop: (msg,); reward / success / end: (value,)), its DDS source and
        reception timestamps, and for records ``pub`` = (publisher gid, sequence number).
        False (counted ``dropped_inbox_<kind>``) when the inbox is full."""
        if kind == "record":
            payload = (*payload, *(pub or (None, None)))
        try:
            self.inbox.put_nowait((src_ns, recv_ns, now_ns, source, kind, payload))
            return True
        except queue.Full:
            self.count(f"dropped_inbox_{kind}")
            return False

    def _handle(self, t: int, source: str, kind: str, args) -> None:
        asm = self.assemblers[source]
        if kind == "frame":
            cam, comp, msg = args
            asm.add_frame(cam, FrameSample.from_msg(msg, t, comp))
        elif kind == "joints":
            asm.add_joints(JointSample.from_msg(args[0], t))
        elif kind == "record":
            m, gid, seq = args
            asm.records_lost(self.records.lost(source, gid, seq))  # in publish order: a jump means loss
            asm.add_record(t, stamp_ns(m.header.stamp), m.header.frame_id, list(m.name), list(m.position),
                           list(m.velocity))
        elif kind == "reward":
            asm.add_reward(t, args[0])
        elif kind == "success":
            asm.add_success(t, args[0])
        elif kind == "end":
            asm.add_episode_end(t, args[0])
        elif kind == "teleop":
            asm.add_teleop(t, list(args[0].name), list(args[0].position))
        else:
            raise ValueError(f"unknown message kind '{kind}' (one of {KINDS})")
        self.count(f"received_{kind}")

    def step(self, now_ns: int, wait_s: float = 0.0, on_error=None) -> tuple[list[dict], list[Episode]]:
        """Take what arrived (waiting up to ``wait_s`` for the first), handle what the
        watermark releases, and return (transition records in order, finished episodes)."""
        try:
            item = self.inbox.get(timeout=wait_s) if wait_s > 0 else self.inbox.get_nowait()
            while True:
                src, rcv, arrived, source, kind, payload = item
                self.reorder.push(self.reorder.order_time(src, rcv, arrived), arrived, (source, kind, payload))
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        for t, (source, kind, payload) in self.reorder.release(now_ns):
            try:
                self._handle(t, source, kind, payload)
            except Exception as exc:  # noqa: BLE001 - a malformed message must not stop ingest
                self.count("malformed_message")
                if on_error is not None:
                    on_error(f"malformed {kind} message from {source}: {exc}")
        watermark = int(now_ns) - self.reorder.window_ns  # the assemblers' clock
        records, episodes = [], []
        for asm in self.assemblers.values():
            for tr in asm.poll(watermark):
                rec = tr.to_record()
                why = check_record(self.spec, rec)
                if why:
                    asm.reject("invalid_transition", why)
                    continue
                records.append(rec)
            episodes += asm.take_episodes()
        return records, episodes

    def robots(self, now_ns: int) -> dict:
        """Per robot (source): action records and transitions taken, the policy version its
        records carry now, and the age of its newest record in seconds (None before any)."""
        return {src: {"records": a.records_received, "accepted": a.accepted, "acting": a.last_version,
                      "acting_sha256": a.last_policy_sha256,
                      "last_record_age_s": round((now_ns - a.last_record_ns) / 1e9, 2) if a.last_record_ns else None}
                for src, a in self.assemblers.items()}

    def summary(self) -> dict:
        """Counts over every robot (for ~/status)."""
        rejected: collections.Counter = collections.Counter()
        out = {"records": 0, "accepted": 0, "pairing": 0, "superseded": 0}
        for asm in self.assemblers.values():
            rejected.update(dict(asm.rejected))
            out["accepted"] += asm.accepted
            out["records"] += asm.records_received
            out["pairing"] += asm.pending
            out["superseded"] += asm.superseded
        with self._lock:
            counts = dict(self.counts)
        if self.reorder.skewed:
            counts["clock_skew"] = self.reorder.skewed
        return {**out, "rejected": dict(rejected), "counts": counts, "inbox": self.inbox.qsize()}
