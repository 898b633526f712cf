"""wsa_ros.bags and wsa_ros.observation: rosbag2 read/write (MCAP and sqlite3), the
deterministic order, clear errors, and the sync rule shared by the agent and eval-bag.
No ROS middleware needed."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from wsa_ros import bags
from wsa_ros.bags import BagError

SAMPLE_BAG = Path(__file__).resolve().parent / "data" / "sample_bag"
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


@pytest.mark.parametrize("storage,compress", [("mcap", False), ("mcap", True), ("sqlite3", False)])
def test_round_trip_order_types_content(tmp_path, storage, compress):
    path = tmp_path / "bag"
    recs = write_mixed_bag(path, storage, compress=compress)
    s = bags.summary(path)
    assert s.storage == storage
    assert s.count == len(recs)
    assert {t: x.count for t, x in s.topics.items()} == {"/cam": 6, "/joint_states": 6, "/chatter": 6, "/cmd": 6}
    assert s.topics["/cmd"].msgtype == "std_msgs/msg/Float64MultiArray"
    assert s.topics["/cam"].qos == bags.QosInfo(reliable=False, transient_local=False, depth=5)
    assert s.start_ns == T0 and s.end_ns == recs[-1][2]

    got = bags.read_messages(path, decode=True)
    # deterministic order: bag time, then record order (the /cam + /joint_states pairs share a time)
    assert [(m.topic, m.timestamp) for m in got] == [(r[0], r[2]) for r in recs]
    assert [m.index for m in got] == list(range(len(recs)))
    ts = bags.typestore()
    for m, (topic, typ, _t, msg) in zip(got, recs):
        assert m.msgtype == typ
        assert m.raw == bytes(ts.serialize_cdr(msg, typ))
    img = got[0].msg
    assert (img.height, img.width, img.encoding) == (4, 5, "rgb8")
    np.testing.assert_array_equal(img.data, recs[0][3].data)
    js = got[5].msg
    assert list(js.name) == ["a", "b"] and list(js.position) == [1.0, -1.0]
    assert got[6].msg.data == "msg 1 \u00e9"
    # same order on a second read; topic filter and decode-subset keep it
    assert [m.raw for m in bags.iter_messages(path)] == [m.raw for m in got]
    sub = bags.read_messages(path, topics=["/cmd", "/cam"], decode=["/cmd"])
    assert [m.topic for m in sub] == [r[0] for r in recs if r[0] in ("/cmd", "/cam")]
    assert sub[0].msg is None and sub[1].msg is not None


def test_bare_mcap_file_and_folder_of_bags(tmp_path):
    write_mixed_bag(tmp_path / "bags" / "one", "mcap")
    write_mixed_bag(tmp_path / "bags" / "two", "sqlite3")
    found = bags.find_bags(tmp_path / "bags")
    assert [p.name for p in found] == ["one", "two"]
    mcap = next((tmp_path / "bags" / "one").glob("*.mcap"))
    assert len(bags.read_messages(mcap)) == 24


def test_errors_name_the_cause(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        bags.summary(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        bags.summary(tmp_path / "empty")
    path = tmp_path / "bag"
    write_mixed_bag(path, "mcap")
    with pytest.raises(BagError, match=r"topic\(s\) \['/missing'\] not in the bag"):
        list(bags.iter_messages(path, topics=["/missing"]))
    with pytest.raises(BagError, match="exists already"):
        bags.BagWriter(path)
    with pytest.raises(BagError, match="unknown to the rosbags type store"):
        with bags.BagWriter(tmp_path / "other") as w:
            w.write("/x", "nope_msgs/msg/Nothing", 1, b"")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_bag_is_a_clear_error(tmp_path, storage):
    path = tmp_path / "bag"
    write_mixed_bag(path, storage, n=40)
    data_file = next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2])  # a recording cut short
    with pytest.raises(BagError, match=str(path.name)):
        bags.read_messages(path, decode=True)
    data_file.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BagError, match="cannot open bag"):
        bags.summary(path)


def test_custom_message_type_round_trip(tmp_path):
    bags.register_types({"wsa_test_msgs/msg/Thing": "float64 value\nstring label\n"})
    T = bags.typestore().types["wsa_test_msgs/msg/Thing"]
    path = tmp_path / "bag"
    bags.write_bag(path, [("/thing", "wsa_test_msgs/msg/Thing", 5, T(value=2.5, label="x"))])
    (m,) = bags.read_messages(path, decode=True)  # decoded from the definition inside the bag
    assert m.msgtype == "wsa_test_msgs/msg/Thing" and m.msg.value == 2.5 and m.msg.label == "x"


def test_sample_bag_is_small_and_complete():
    s = bags.summary(SAMPLE_BAG)
    size = sum(p.stat().st_size for p in SAMPLE_BAG.iterdir())
    assert size < 3 * 1024 * 1024
    assert s.storage == "mcap"
    assert {t: x.msgtype for t, x in s.topics.items()} == {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/joint_states": "sensor_msgs/msg/JointState",
        "/forward_command_controller/commands": "std_msgs/msg/Float64MultiArray",
        "/wsa/reward": "std_msgs/msg/Float64",
    }
    assert len({x.count for x in s.topics.values()}) == 1 and s.count >= 800


# --------------------------------------------------------------------------- sync rule
def _sync_bag(tmp_path):
    """Joint states at 0, 10, 20, 30 ms; frames at 5, 20 (recorded before the joint state
    of the same time) and 33 ms; the frame at 20 ms must see the joint state at 20 ms."""
    ms = 1_000_000
    recs = []
    for k in range(4):
        recs.append((k * 10 * ms, "j", k))
    recs += [(5 * ms, "f", 0), (33 * ms, "f", 2)]
    recs.sort(key=lambda r: r[0])
    recs.insert(next(i for i, r in enumerate(recs) if r[0] == 20 * ms), (20 * ms, "f", 1))
    path = tmp_path / "sync"
    with bags.BagWriter(path) as w:
        for t, kind, k in recs:
            if kind == "j":
                w.write("/joints", "sensor_msgs/msg/JointState", T0 + t,
                        bags.make_joint_state(T0 + t, ["a"], [float(k)], [0.0], []))
            else:
                img = np.full((2, 2, 3), k, np.uint8)
                w.write("/cam", "sensor_msgs/msg/Image", T0 + t, bags.make_image(T0 + t + 7, img))
    return path


def test_sync_rule_frame_trigger(tmp_path):
    from wsa_ros.observation import iter_observations

    obs = list(iter_observations(_sync_bag(tmp_path), {"front": "/cam"}, "/joints", trigger="frame"))
    ms = 1_000_000
    assert [o.time_ns - T0 for o in obs] == [5 * ms, 20 * ms, 33 * ms]
    assert [int(o.images()["front"][0, 0, 0]) for o in obs] == [0, 1, 2]
    assert [float(o.joints.position[0]) for o in obs] == [0.0, 2.0, 3.0]
    assert obs[1].stamps() == {"stamp_front": T0 + 20 * ms + 7, "recv_front": T0 + 20 * ms,
                               "stamp_joints": T0 + 20 * ms, "recv_joints": T0 + 20 * ms}


def test_sync_rule_rate_trigger(tmp_path):
    from wsa_ros.observation import iter_observations

    bag = _sync_bag(tmp_path)
    ms = 1_000_000
    pairs = {}
    for rule in ("stamp", "newest"):
        obs = list(iter_observations(bag, {"front": "/cam"}, "/joints", trigger="rate", rate_hz=100, joint_sync=rule))
        # ticks every 10 ms from the first message (t=0); t=0 has no frame yet
        assert [o.time_ns - T0 for o in obs] == [10 * ms, 20 * ms, 30 * ms]
        pairs[rule] = [(int(o.images()["front"][0, 0, 0]), float(o.joints.position[0])) for o in obs]
    # stamp: the joint state taken at or before each frame's stamp (frame 0 at 5 ms -> joint 0,
    # frame 1 at 20 ms -> joint 2, also at the 30 ms tick); newest: whatever came last
    assert pairs["stamp"] == [(0, 0.0), (1, 2.0), (1, 2.0)]
    assert pairs["newest"] == [(0, 1.0), (1, 2.0), (1, 3.0)]


def test_joint_history_pairs_by_stamp_whatever_the_arrival_order():
    from types import SimpleNamespace as NS

    from wsa_ros.observation import JointHistory

    h = JointHistory()
    assert h.pick(25) is None and h.newest is None
    for t in (10, 30, 20, 40):  # 20 arrives late
        h.append(NS(stamp_ns=t))
    assert h.pick(25).stamp_ns == 20
    assert h.pick(30).stamp_ns == 30  # at the frame's stamp counts
    assert h.pick(99).stamp_ns == 40
    assert h.pick(5).stamp_ns == 10  # all newer than the frame: the closest
    assert h.pick(25, "newest").stamp_ns == 40 and h.newest.stamp_ns == 40
    again = NS(stamp_ns=30)
    h.append(again)  # the same stamp twice: the later arrival
    assert h.pick(35) is again
    small = JointHistory(maxlen=3)
    for t in (10, 30, 20, 40):
        small.append(NS(stamp_ns=t))
    assert len(small) == 3 and small.pick(15).stamp_ns == 20  # 10 (the oldest stamp) was forgotten
    with pytest.raises(ValueError, match="joint_sync 'nearest' is not one of"):
        h.pick(25, "nearest")


def test_joint_reader_reorders_checks_and_matches_build_proprio():
    from wsa_ros.bundle import ProprioSpec
    from wsa_ros.engine import build_proprio
    from wsa_ros.observation import JointReader, JointRejected

    spec = ProprioSpec(["a", "b"], ["position", "velocity"], [0.0] * 4, [1.0] * 4)
    rd = JointReader(["b"], spec, where="js")
    names, pos, vel = ["x", "b", "a"], [9.0, 2.0, 1.0], [0.9, 0.2, 0.1]
    for _ in range(2):  # the second reading uses the cached plan
        measured, proprio = rd.read(names, pos, vel)
        np.testing.assert_array_equal(measured, [2.0])
        np.testing.assert_array_equal(proprio, [1.0, 2.0, 0.1, 0.2])  # per field, a then b
        np.testing.assert_array_equal(proprio, build_proprio(spec, names, pos, vel))
    bad = [((["a", "a", "b"], [0.0] * 3, []), "joint_malformed", "repeats joint name"),
           ((["a"], [0.0], []), "joint_missing", "lacks joint(s) ['b']"),
           ((["a", "b"], [0.0], []), "joint_malformed", "2 names but 1 position"),
           ((["a", "b"], [0.0, 0.0], [1.0]), "joint_malformed", "2 names but 1 velocity"),
           ((["a", "b"], [0.0, 0.0], []), "joint_malformed", "no 'velocity' values"),
           ((["a", "b"], [0.0, float("nan")], [0.0, 0.0]), "joint_nonfinite", "position of ['b']"),
           ((["a", "b"], [0.0, 0.0], [float("inf"), 0.0]), "joint_nonfinite", "['a velocity'] not finite")]
    for args, key, msg in bad:
        with pytest.raises(JointRejected, match=re.escape(msg)) as exc:
            rd.read(*args)
        assert exc.value.key == key and str(exc.value).startswith("js")
    assert JointReader(["a"]).read(["b", "a"], [1.0, 2.0])[1] is None  # no proprioception


def test_latest_samples_slots():
    from wsa_ros.observation import FrameSample, JointSample, LatestSamples

    s = LatestSamples(["left", "right"], need_joints=True)
    assert s.observe(1) is None and s.missing() == ["camera 'left'", "camera 'right'", "joint states"]
    s.put_frame("left", FrameSample.from_array(np.zeros((2, 2, 3), np.uint8), 1))
    s.put_frame("right", FrameSample.from_array(np.ones((2, 2, 3), np.uint8), 2))
    assert s.observe(3) is None
    s.put_joints(JointSample(3, 3, ["a"], np.array([1.0]), np.array([0.0]), np.array([])))
    o = s.observe(4)
    assert o.oldest_ns() == 1 and set(o.images()) == {"left", "right"}
    with pytest.raises(KeyError, match="not one of"):
        s.put_frame("top", FrameSample.from_array(np.zeros((2, 2, 3), np.uint8), 1))


def test_compressed_camera_topics_decode_through_images(tmp_path):
    from wsa_ros.images import array_to_compressed
    from wsa_ros.observation import iter_observations

    img = np.zeros((6, 8, 3), np.uint8)
    img[:, :4] = (200, 10, 30)
    fmt, data = array_to_compressed(img, "png")
    path = tmp_path / "c"
    bags.write_bag(path, [("/cam/compressed", "sensor_msgs/msg/CompressedImage", T0 + 5,
                           bags.make_compressed_image(T0, data, fmt))])
    (obs,) = iter_observations(path, {"front": "/cam/compressed"}, None)
    np.testing.assert_array_equal(obs.images()["front"], img)  # PNG is lossless, RGB order kept
    assert obs.joints is None and obs.stamps() == {"stamp_front": T0, "recv_front": T0 + 5}
