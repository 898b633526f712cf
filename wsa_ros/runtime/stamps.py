"""Header stamps <-> integer nanoseconds: the one stamp conversion, for rclpy messages,
rosbags messages and anything else with ``sec`` / ``nanosec`` fields."""
from __future__ import annotations

NS_PER_S = 1_000_000_000


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer ns."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def split_ns(ns: int) -> tuple[int, int]:
    """Integer ns -> (sec, nanosec) for a builtin_interfaces/Time."""
    sec, nsec = divmod(int(ns), NS_PER_S)
    return sec, nsec
