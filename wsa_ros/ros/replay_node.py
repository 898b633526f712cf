"""``replay BAG``: publish a rosbag2 bag's messages on their topics with their original timing.

A deterministic stand-in for ``ros2 bag play`` that needs no rosbag2 install (bags are read
with ``rosbags``; MCAP and sqlite3). Messages go out in one fixed order (bag time, then
record order), each one deserialized from its recorded CDR bytes into the installed rclpy
message class, so a type mismatch is caught here rather than in a subscriber. Like the
rosbag2 maintainers' own deterministic tests, it waits until the expected subscribers have
matched before the first message (``--wait-for-subscribers``), and at the end waits until
reliable subscribers have acknowledged everything before it exits.

    replay BAG [--rate 2.0] [--start-offset 1.5] [--duration 10] [--loop] [--topics /a /b]
               [--remap /a:=/b] [--clock [HZ]] [--wait-for-subscribers 1 [--wait-topics /a]]
               [--wait-timeout 10] [--list]

Exit codes: 0 done; 1 bag or type error (the message names the cause); 2 bad arguments;
3 expected subscribers did not appear within --wait-timeout; 130 interrupted.
The bag's header stamps are published unchanged; ``--clock`` publishes the bag time on
``/clock`` (rosgraph_msgs/Clock) so nodes with ``use_sim_time`` follow the bag.
"""
from __future__ import annotations

import importlib
import sys
import time

from wsa_ros.runtime.bags import BagError, iter_messages
from wsa_ros.runtime.stamps import split_ns
from wsa_ros.tools.replay import (EXIT_BAG, EXIT_INTERRUPTED, EXIT_NO_SUBSCRIBERS, EXIT_OK, EXIT_USAGE, Plan,
                                  ReplayError, build_parser, list_messages, make_plan, parse_remaps)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' (or 'sensor_msgs/Image') -> the installed rclpy message class."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ReplayError(f"'{msgtype}' is not a ROS message type name (pkg/msg/Name)")
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
    except ImportError as exc:
        raise ReplayError(
            f"message type '{msgtype}' is not installed here (cannot import {pkg}.{kind}: {exc}); "
            f"install its interface package or leave the topic out with --topics"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ReplayError(f"message type '{msgtype}' is not installed here ({pkg}.{kind} has no '{name}')")
    return cls


def _qos(info, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    q = info.qos
    reliable = True if q is None else q.reliable
    latched = False if q is None else q.transient_local
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(depth, q.depth if q else 0),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def _log(args, text: str) -> None:
    if not args.quiet:
        print(f"[replay] {text}", file=sys.stderr, flush=True)


def run(args, plan: Plan, ros_args: list[str] | None = None) -> int:
    import rclpy
    from rclpy.duration import Duration
    from rclpy.serialization import deserialize_message

    rclpy.init(args=ros_args)
    node = rclpy.create_node(args.node_name)
    try:
        pubs = {}
        for t in plan.topics:
            pubs[t] = node.create_publisher(plan.classes[t], plan.out_topic[t], _qos(plan.bag.topics[t], args.qos_depth))
        clock_pub = clock_cls = None
        if args.clock is not None:
            from rosgraph_msgs.msg import Clock

            clock_cls = Clock
            clock_pub = node.create_publisher(Clock, "/clock", 10)

        # -- wait for the expected subscribers
        if args.wait_for_subscribers > 0:
            by_out = {plan.out_topic[t]: pubs[t] for t in plan.topics}
            if clock_pub is not None:
                by_out["/clock"] = clock_pub
            names = args.wait_topics or [plan.out_topic[t] for t in plan.topics]
            deadline = time.monotonic() + args.wait_timeout
            while True:
                lacking = {n: by_out[n].get_subscription_count() for n in names
                           if by_out[n].get_subscription_count() < args.wait_for_subscribers}
                if not lacking:
                    break
                if not rclpy.ok():
                    return EXIT_INTERRUPTED
                if time.monotonic() > deadline:
                    print(f"replay: error: after {args.wait_timeout:g} s these topics still have fewer than "
                          f"{args.wait_for_subscribers} subscriber(s): {lacking} (check the subscribers' "
                          f"ROS_DOMAIN_ID, topic names and QoS)", file=sys.stderr)
                    return EXIT_NO_SUBSCRIBERS
                time.sleep(0.01)
            _log(args, f"subscribers matched on {names}")
            time.sleep(max(0.0, args.settle))

        # -- publish with the original timing
        rate = args.rate
        total = 0
        loops = 0
        clock_period = 1.0 / args.clock if args.clock else None

        def publish_clock(t_ns: int):
            m = clock_cls()
            m.clock.sec, m.clock.nanosec = split_ns(t_ns)
            clock_pub.publish(m)

        t_start = time.monotonic()
        while True:
            wall0 = time.monotonic()
            bag0 = plan.start_ns
            for m in iter_messages(plan.bag.path, topics=plan.topics, start_ns=plan.start_ns, stop_ns=plan.stop_ns):
                try:  # before waiting, so that deserializing does not delay the publication
                    ros_msg = deserialize_message(m.raw, plan.classes[m.topic])
                except Exception as exc:  # noqa: BLE001 - rclpy raises bare exceptions
                    raise ReplayError(
                        f"{plan.bag.path}: record {m.index} on {m.topic} does not deserialize as the installed "
                        f"{m.msgtype}: {exc} (was the bag recorded with a different message definition?)"
                    ) from None
                due = wall0 + (m.timestamp - bag0) * 1e-9 / rate
                while True:
                    if not rclpy.ok():  # shut down by SIGINT/SIGTERM
                        return EXIT_INTERRUPTED
                    now = time.monotonic()
                    if now >= due:
                        break
                    if clock_pub is not None:
                        # bag time now, published at the clock rate until the message is due
                        publish_clock(bag0 + int((now - wall0) * rate * 1e9))
                        time.sleep(min(clock_period, due - now))
                    else:
                        time.sleep(due - now)
                if clock_pub is not None:
                    publish_clock(m.timestamp)
                pubs[m.topic].publish(ros_msg)
                total += 1
            loops += 1
            if not args.loop:
                break
        # reliable subscribers get everything before we leave (DDS acknowledges on the
        # writer's heartbeat, every few seconds; the data itself is already delivered)
        ack_deadline = time.monotonic() + args.ack_timeout
        for t, p in pubs.items():
            left = max(0.0, ack_deadline - time.monotonic())
            if left > 0 and not p.wait_for_all_acked(Duration(seconds=left)):
                _log(args, f"warning: subscribers of {plan.out_topic[t]} did not acknowledge every message "
                           f"within --ack-timeout {args.ack_timeout:g} s")
        _log(args, f"published {total} messages on {len(plan.topics)} topic(s) in "
                   f"{time.monotonic() - t_start:.2f} s ({loops} pass(es))")
        return EXIT_OK
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = None
    if "--ros-args" in argv:  # as passed by `ros2 run`; handed to rclpy untouched
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], ["replay", *argv[i:]]
    args = build_parser().parse_args(argv)
    if not (args.rate > 0):
        print(f"replay: error: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return EXIT_USAGE
    if args.clock is not None and not args.clock > 0:
        print(f"replay: error: --clock rate must be > 0 Hz, got {args.clock}", file=sys.stderr)
        return EXIT_USAGE
    try:
        plan = make_plan(args.bag, args.topics, parse_remaps(args.remap), args.start_offset, args.duration,
                         message_class)
        published = set(plan.out_topic.values()) | ({"/clock"} if args.clock is not None else set())
        unknown = [n for n in args.wait_topics or [] if n not in published]
        if unknown:
            raise ReplayError(f"--wait-topics {unknown} are not published (published: {sorted(published)})")
        if args.list:
            list_messages(plan)
            return EXIT_OK
        _log(args, plan.bag.describe())
        return run(args, plan, ros_args)
    except (BagError, ReplayError) as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return EXIT_BAG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
