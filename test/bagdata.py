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
