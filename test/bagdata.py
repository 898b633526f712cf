"""Bags written for the tests (with ``rosbags``): one camera, joint states, commands and an
odd type, in a known order. Shared by the bag tests and the replay tests."""
from __future__ import annotations

import numpy as np

from wsa_ros.runtime import bags

T0 = 1_000_000_000_000


def mixed_records(n: int = 6):
    """(topic, msgtype, t_ns, msg) records: several types, equal timestamps across topics
    (their record order must survive), images with distinct contents."""
    rng = np.random.default_rng(0)
    recs = []
    for k in range(n):
        t = T0 + k * 50_000_000
        img = rng.integers(0, 255, size=(4, 5, 3), dtype=np.uint8)
        recs.append(("/cam", "sensor_msgs/msg/Image", t, bags.make_image(t, img)))
        recs.append(("/joint_states", "sensor_msgs/msg/JointState", t,
                     bags.make_joint_state(t, ["a", "b"], [k, -k], [0.5 * k, 0.25], [])))
        recs.append(("/chatter", "std_msgs/msg/String", t + 1_000_000, bags.make_string(f"msg {k} \u00e9")))
        recs.append(("/cmd", "std_msgs/msg/Float64MultiArray", t + 2_000_000,
                     bags.make_float64_array([k * 0.1, -k * 0.2, 3.0])))
    return recs


def write_mixed_bag(path, storage: str = "mcap", n: int = 6, compress: bool = False) -> list:
    recs = mixed_records(n)
    with bags.BagWriter(path, storage=storage, compress=compress) as w:
        w.add_topic("/cam", "sensor_msgs/msg/Image", bags.QosInfo(reliable=False, depth=5))
        for r in recs:
            w.write(*r)
    return recs


# --------------------------------------------------------------------------- a robot's recording
#: A position-commanded two-joint arm with one camera, as a robot file (``wsa bag-health`` tests).
ARM_ROBOT_YAML = """\
robot:
  ros__parameters:
    name: testarm
    joint_names: [shoulder, elbow]
    position_lower: [-2.0, -2.0]
    position_upper: [2.0, 2.0]
    velocity_limits: [3.0, 3.0]
    command_interface: joint_trajectory
    command_units: rad
    command_topic: /arm_controller/joint_trajectory
    joint_states_topic: /joint_states
    joint_states_rate_hz: 100.0
    camera_names: [front]
    camera_topics: [/front/image_raw]
    camera_rates_hz: [30.0]
    control_rate_hz: 30.0
"""
ARM_CAMERA = "/front/image_raw"
ARM_COMMAND = "/arm_controller/joint_trajectory"


def arm_records(seconds: float = 2.0, camera_hz: float = 30.0, camera_stamp_hz: float | None = None,
                joint_hz: float = 100.0, joints=("shoulder", "elbow"), amplitude: float = 1.0,
                command: str = "positions", camera_drop: tuple[float, float] | None = None,
                camera_stamp_offset_ns: int = 0, stamp_edits: dict | None = None,
                episode_ends: tuple = (), successes: tuple = (), with_commands: bool = True):
    """(topic, msgtype, t_ns, msg) records of the arm of :data:`ARM_ROBOT_YAML`, sorted by time.

    Frames every 1/camera_hz s, received 5 ms after their stamp (``camera_stamp_hz``: stamps
    advance at that rate instead, whatever the receive times; ``camera_stamp_offset_ns`` is added
    to every frame's stamp); joint states every 1/joint_hz s, received 1 ms after their stamp;
    one JointTrajectory per frame 10 ms after it, carrying ``command`` (positions, velocities or
    both). ``camera_drop`` = (start s, length s): no frames in it. ``stamp_edits``: {frame index:
    stamp ns} replaces stamps. ``episode_ends`` / ``successes``: ((t s, value), ...)."""
    recs = []
    names = list(joints)
    n_j = int(round(seconds * joint_hz))
    for k in range(n_j):
        s = T0 + int(round(k * 1e9 / joint_hz))
        q = amplitude * np.sin(np.array([0.7, 1.3]) * k / joint_hz)
        recs.append(("/joint_states", "sensor_msgs/msg/JointState", s + 1_000_000,
                     bags.make_joint_state(s, names, q, [0.0, 0.0])))
    n_c = int(round(seconds * camera_hz))
    img = np.zeros((4, 4, 3), np.uint8)
    for k in range(n_c):
        s = T0 + int(round(k * 1e9 / camera_hz))
        if camera_drop and camera_drop[0] <= (s - T0) * 1e-9 < camera_drop[0] + camera_drop[1]:
            continue
        stamp = T0 + int(round(k * 1e9 / camera_stamp_hz)) if camera_stamp_hz else s
        stamp = (stamp_edits or {}).get(k, stamp + camera_stamp_offset_ns)
        recs.append((ARM_CAMERA, "sensor_msgs/msg/Image", s + 5_000_000, bags.make_image(stamp, img)))
        if with_commands:
            q = amplitude * np.sin(np.array([0.7, 1.3]) * (s - T0) * 1e-9)
            pos = q if command in ("positions", "both") else ()
            vel = np.zeros(2) if command in ("velocities", "both") else ()
            recs.append((ARM_COMMAND, "trajectory_msgs/msg/JointTrajectory", s + 10_000_000,
                         bags.make_joint_trajectory(0, names, pos, vel, time_from_start_ns=50_000_000)))
    for t, kind in episode_ends:
        recs.append(("/wsa/episode_end", "std_msgs/msg/String", T0 + int(t * 1e9), bags.make_string(kind)))
    for t, ok in successes:
        recs.append(("/wsa/success", "std_msgs/msg/Bool", T0 + int(t * 1e9), bags.make_bool(ok)))
    recs.sort(key=lambda r: r[2])
    return recs


def write_arm_bag(path, storage: str = "mcap", **kw):
    """Write :func:`arm_records` (keyword arguments as there) to a new bag; returns its path."""
    return bags.write_bag(path, arm_records(**kw), storage=storage)
