"""wsa_ros.runtime.bags and wsa_ros.runtime.observation: rosbag2 read/write (MCAP and sqlite3), the
deterministic order, clear errors, and the sync rule shared by the agent and eval-bag.
No ROS middleware needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsa_ros.runtime import bags
from wsa_ros.runtime.bags import BagError

SAMPLE_BAG = Path(__file__).resolve().parents[1] / "data" / "sample_bag"
from bagdata import T0, write_mixed_bag  # noqa: E402  (test/bagdata.py)


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


