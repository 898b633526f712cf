"""``replay`` without ROS: which messages of a bag are replayed, on which topics, in what
order (:func:`make_plan`, checked before any ROS set-up), the command line, and ``--list``.
The publishing itself is ``wsa_ros.ros.replay_node``."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from wsa_ros.runtime.bags import BagSummary, check_bag_path, iter_messages, summary

EXIT_OK, EXIT_BAG, EXIT_USAGE, EXIT_NO_SUBSCRIBERS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class ReplayError(RuntimeError):
    """A bag that cannot be replayed here (unknown type, missing topic, ...)."""


def parse_remaps(items) -> dict[str, str]:
    out = {}
    for item in items or []:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ReplayError(f"--remap '{item}' is not of the form /from:=/to")
        out[src] = dst
    return out


@dataclass
class Plan:
    """What will be replayed, checked before any ROS set-up."""

    bag: BagSummary
    topics: list[str]  # bag topics replayed
    out_topic: dict[str, str]  # bag topic -> published topic
    classes: dict[str, type]  # bag topic -> rclpy class
    start_ns: int  # first bag time replayed
    stop_ns: int | None = None  # bag time where replay stops (exclusive); None = the end


def make_plan(path, topics=None, remaps=None, start_offset: float = 0.0, duration: float | None = None,
              message_class: Callable[[str], type] | None = None) -> Plan:
    """Check the bag, the selected topics and (with ``message_class``: type name -> installed
    class, raising ReplayError) their types; raise BagError/ReplayError."""
    info = summary(check_bag_path(path))
    if info.count == 0:
        raise ReplayError(f"{path}: the bag holds no messages")
    sel = list(topics) if topics else sorted(info.topics)
    missing = [t for t in sel if t not in info.topics]
    if missing:
        raise ReplayError(f"{path}: topic(s) {missing} not in the bag; it has {sorted(info.topics)}")
    remaps = dict(remaps or {})
    unknown = [t for t in remaps if t not in sel]
    if unknown:
        raise ReplayError(f"--remap names topic(s) {unknown} that are not replayed (replayed: {sel})")
    out_topic = {t: remaps.get(t, t) for t in sel}
    dup = {o for o in out_topic.values() if list(out_topic.values()).count(o) > 1}
    if dup:
        raise ReplayError(f"remapping makes several bag topics publish on {sorted(dup)}")
    classes = {}
    for t in sel if message_class is not None else ():
        try:
            classes[t] = message_class(info.topics[t].msgtype)
        except ReplayError as exc:
            raise ReplayError(f"topic {t}: {exc}") from None
    if start_offset < 0:
        raise ReplayError(f"--start-offset must be >= 0, got {start_offset}")
    start = info.start_ns + int(round(start_offset * 1e9))
    if start > info.end_ns:
        raise ReplayError(f"--start-offset {start_offset} s is past the end of the bag ({info.duration_s:.3f} s)")
    stop = None
    if duration is not None:
        if not duration > 0:
            raise ReplayError(f"--duration must be > 0 s, got {duration}")
        stop = start + int(round(duration * 1e9))
    return Plan(info, sel, out_topic, classes, start, stop)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="replay",
        description="Publish a rosbag2 bag (MCAP or sqlite3) with its original timing, deterministically.",
    )
    ap.add_argument("bag", help="bag folder (with metadata.yaml) or a .mcap/.db3 file")
    ap.add_argument("--rate", type=float, default=1.0, help="time scale: 2.0 plays twice as fast (default 1.0)")
    ap.add_argument("--start-offset", type=float, default=0.0, metavar="S", help="skip the first S seconds of the bag")
    ap.add_argument("--duration", type=float, default=None, metavar="S",
                    help="play only S seconds of bag time (from the start offset)")
    ap.add_argument("--loop", action="store_true", help="start over at the end (until interrupted)")
    ap.add_argument("--topics", nargs="+", metavar="TOPIC", help="replay only these bag topics (default: all)")
    ap.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="publish bag topic FROM on TO")
    ap.add_argument(
        "--clock", nargs="?", type=float, const=100.0, default=None, metavar="HZ",
        help="publish the bag time on /clock before each message and at HZ in between (default HZ 100)")
    ap.add_argument(
        "--wait-for-subscribers", type=int, default=0, metavar="N",
        help="before the first message, wait until each waited-on topic has N matched subscribers")
    ap.add_argument(
        "--wait-topics", nargs="+", metavar="TOPIC",
        help="published topic names to wait on (default: every replayed topic)")
    ap.add_argument("--wait-timeout", type=float, default=30.0, metavar="S", help="give up waiting after S seconds (exit 3)")
    ap.add_argument("--settle", type=float, default=0.2, metavar="S",
                    help="pause after the subscribers matched, so discovery completes on both sides (default 0.2)")
    ap.add_argument("--qos-depth", type=int, default=1000,
                    help="publisher history depth (reliable delivery of bursts; default 1000)")
    ap.add_argument("--ack-timeout", type=float, default=5.0, metavar="S",
                    help="at the end, wait up to S seconds for reliable subscribers to acknowledge (default 5)")
    ap.add_argument("--node-name", default="wsa_replay")
    ap.add_argument("--list", action="store_true", help="print the messages in replay order and exit (no ROS)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def list_messages(plan: Plan) -> None:
    """``--list``: the messages in replay order (index, bag time, published topic, type)."""
    try:
        for m in iter_messages(plan.bag.path, topics=plan.topics, start_ns=plan.start_ns, stop_ns=plan.stop_ns):
            print(f"{m.index}\t{m.timestamp}\t{plan.out_topic[m.topic]}\t{m.msgtype}")
    except BrokenPipeError:  # `replay BAG --list | head`
        import sys

        sys.stderr.close()
