"""`wsa bag-health`: a recording's health against its robot file, before anything is built from it.
Small bags with one injected defect each; every defect must be found and named (topic, numbers,
the robot-file field to fix), a clean bag must come out OK. No ROS middleware needed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from wsa_ros import config
from wsa_ros.tools import bag_health
from wsa_ros.tools.bag_health import check_recordings

from bagdata import ARM_CAMERA, ARM_COMMAND, ARM_ROBOT_YAML, T0, write_arm_bag  # noqa: E402  (test/bagdata.py)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_BAG = ROOT / "test" / "data" / "sample_bag"
REACHER = ROOT / "config" / "robots" / "reacher.yaml"
ENDS = ((1.02, "terminated"), (2.1, "truncated"))
SUCC = ((1.01, True), (2.09, False))


@pytest.fixture
def robot_file(tmp_path) -> Path:
    p = tmp_path / "arm.yaml"
    p.write_text(ARM_ROBOT_YAML)
    return p


@pytest.fixture
def robot(robot_file):
    return config.load_robot(robot_file)


def _one(lines: list[str], *words: str) -> str:
    """The single line holding every word (fails naming the lines otherwise)."""
    hits = [x for x in lines if all(w in x for w in words)]
    assert len(hits) == 1, f"expected one line with {words}, got {hits} of {lines}"
    return hits[0]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_clean_bag_is_ok_and_its_episodes_are_found(tmp_path, robot_file, storage, capsys):
    bag = write_arm_bag(tmp_path / "bag", storage, episode_ends=ENDS, successes=SUCC)
    rep = check_recordings([bag], config.load_robot(robot_file))
    assert rep.errors == [] and rep.warnings == [] and rep.verdict == "OK" and rep.exit_code == 0
    b = rep.bags[0]
    assert b["storage"] == storage
    cam, js = b["topics"][ARM_CAMERA], b["topics"]["/joint_states"]
    assert cam["count"] == 60 and js["count"] == 200 and b["topics"][ARM_COMMAND]["count"] == 60
    assert cam["stamp_hz"] == pytest.approx(30.0, rel=1e-3) and cam["recv_hz"] == pytest.approx(30.0, rel=1e-3)
    assert js["stamp_hz"] == pytest.approx(100.0, rel=1e-3)
    assert cam["gaps"]["count"] == 0 and cam["stamps"]["skew_median_s"] == pytest.approx(-0.005)
    assert b["pairing"]["paired"] == 60 and b["pairing"]["unpaired"] == 0
    assert set(b["joints"]["per_joint"]) == {"shoulder", "elbow"}
    assert b["joints"]["per_joint"]["elbow"]["max"] == pytest.approx(1.0, abs=0.02)
    assert b["commands"]["count"] == 60 and b["commands"]["outside_bounds"] == 0
    eps = b["episodes"]
    assert b["episodes_from"] == "episode_end"
    assert [(e["ended"], e["success"]) for e in eps] == [("terminated", True), ("truncated", False)]
    assert [e["commands"] for e in eps] == [31, 29]
    assert eps[0]["end_s"] == pytest.approx(1.019, abs=1e-6)  # from the bag's first message (T0 + 1 ms)
    # the CLI: table on stdout, JSON with --json, exit 0
    out = tmp_path / "health.json"
    assert bag_health.main([str(bag), "--robot", str(robot_file), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verdict: OK" in text and ARM_CAMERA in text and "terminated" in text
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "OK" and doc["bags"][0]["topics"][ARM_CAMERA]["count"] == 60
    assert rep.summary()["verdict"] == "OK" and rep.summary()["episodes"] == 2


def test_a_camera_at_half_its_declared_rate(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", camera_hz=15.0)
    rep = check_recordings([bag], robot)
    assert rep.errors == [] and rep.verdict == "WARN" and rep.exit_code == 0
    w = _one(rep.warnings, ARM_CAMERA, "declared 30 Hz")
    assert "15.00 Hz by header stamps" in w and "15.00 Hz by receive times" in w and "camera_rates_hz" in w
    assert not [x for x in rep.warnings if "/joint_states" in x]


def test_frames_stamped_at_the_nominal_rate_but_arriving_slower(tmp_path, robot):
    # the driver stamps 30 Hz whatever the camera delivers (25 Hz): only the receive times tell
    bag = write_arm_bag(tmp_path / "bag", camera_hz=25.0, camera_stamp_hz=30.0)
    rep = check_recordings([bag], robot)
    w = _one(rep.warnings, ARM_CAMERA, "declared 30 Hz")
    assert "30.00 Hz by header stamps" in w and "25.00 Hz by receive times" in w and "nominal rate" in w


def test_a_half_second_camera_drop_is_a_gap_with_its_place(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", seconds=6.0, camera_drop=(2.0, 0.5))
    rep = check_recordings([bag], robot)
    g = rep.bags[0]["topics"][ARM_CAMERA]["gaps"]
    assert g["count"] == 1 and g["longest_s"] == pytest.approx(0.5 + 1 / 30, abs=0.002)
    assert g["at"][0][0] == pytest.approx(2.0 - 1 / 30 + 0.005, abs=0.002)  # the last frame before the drop
    w = _one(rep.warnings, ARM_CAMERA, "gap")
    assert "longest 0.533 s" in w and "1.97 s into the bag" in w
    assert rep.warnings == [w] and rep.errors == []
    assert rep.bags[0]["topics"]["/joint_states"]["gaps"]["count"] == 0


def test_stamps_out_of_order_repeated_and_zero(tmp_path, robot):
    s = lambda k: T0 + int(round(k * 1e9 / 30))  # noqa: E731
    bag = write_arm_bag(tmp_path / "bag", stamp_edits={10: s(11), 11: s(10), 20: s(19), 30: 0})
    rep = check_recordings([bag], robot)
    st = rep.bags[0]["topics"][ARM_CAMERA]["stamps"]
    assert (st["out_of_order"], st["duplicate"], st["zero"]) == (1, 1, 1)
    _one(rep.warnings, ARM_CAMERA, "go backwards 1 time")
    _one(rep.warnings, ARM_CAMERA, "1 repeated header stamp")
    _one(rep.warnings, ARM_CAMERA, "header stamp 0")
    js = rep.bags[0]["topics"]["/joint_states"]["stamps"]
    assert (js["out_of_order"], js["duplicate"], js["zero"]) == (0, 0, 0)
    # the zero-stamped frame cannot be paired; 1 of 60 is a warning, not an error
    assert rep.bags[0]["pairing"]["unpaired"] == 1 and rep.errors == []


def test_a_camera_stamped_two_seconds_off_the_recording_time(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", camera_stamp_offset_ns=-2_000_000_000)
    rep = check_recordings([bag], robot, max_skew_s=0.5)
    st = rep.bags[0]["topics"][ARM_CAMERA]["stamps"]
    assert st["skew_median_s"] == pytest.approx(-2.005) and st["skew_beyond"] == 60
    assert st["skew_vs_joint_states_s"] == pytest.approx(-2.004)
    w = _one(rep.warnings, ARM_CAMERA, "behind the recording time")
    assert "2.005 s" in w and "--max-skew-s 0.5" in w
    assert not [x for x in rep.warnings if "/joint_states" in x and "recording time" in x]
    # against the joint states' clock: frames would pair with joint states 2 s older (an error) ...
    e = _one(rep.errors, "clocks 2.004 s apart")
    assert ARM_CAMERA in e and "/joint_states" in e and rep.exit_code == 1
    # ... and the frames stamped before the first joint state cannot be paired at all
    e = _one(rep.errors, "cannot be paired")
    assert "57 of 60 frames" in e and "joint_tolerance_s" in e
    # a wider skew allowance silences the skew findings, never the pairing error
    rep = check_recordings([bag], robot, max_skew_s=3.0)
    assert not [x for x in rep.warnings + rep.errors if "recording time" in x] and rep.errors


def test_a_camera_stamped_ahead_pairs_nothing(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", camera_stamp_offset_ns=2_000_000_000)
    rep = check_recordings([bag], robot)
    _one(rep.warnings, ARM_CAMERA, "ahead of the recording time")
    e = _one(rep.errors, "cannot be paired")
    assert "60 of 60 frames" in e and rep.bags[0]["pairing"]["paired"] == 0


def test_a_missing_command_topic_is_an_error_naming_what_the_bag_has(tmp_path, robot_file, capsys):
    bag = write_arm_bag(tmp_path / "bag", with_commands=False)
    rep = check_recordings([bag], config.load_robot(robot_file))
    e = _one(rep.errors, ARM_COMMAND)
    assert "not in the bag" in e and "command_topic" in e and ARM_CAMERA in e and "/joint_states" in e
    assert rep.verdict == "ERROR"
    assert bag_health.main([str(bag), "--robot", str(robot_file)]) == 1
    assert "verdict: ERROR" in capsys.readouterr().out


def test_a_command_topic_of_another_type_is_an_error(tmp_path, robot_file):
    text = ARM_ROBOT_YAML.replace("command_interface: joint_trajectory", "command_interface: forward_command")
    p = tmp_path / "fwd.yaml"
    p.write_text(text)
    bag = write_arm_bag(tmp_path / "bag")
    rep = check_recordings([bag], config.load_robot(p))
    e = _one(rep.errors, ARM_COMMAND)
    assert "trajectory_msgs/msg/JointTrajectory" in e and "std_msgs/msg/Float64MultiArray" in e
    assert "forward_command" in e


def test_joint_names_not_in_the_robot_file(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", joints=("j1", "j2"))
    rep = check_recordings([bag], robot)
    js = _one(rep.errors, "joint states", "lack joint(s)")
    assert "'shoulder'" in js and "'elbow'" in js and "'j1'" in js and "joint_names" in js
    cmd = _one(rep.errors, ARM_COMMAND, "name joints")
    assert "['j1', 'j2']" in cmd and "missing ['shoulder', 'elbow']" in cmd
    assert rep.exit_code == 1


def test_velocity_only_trajectories_for_a_position_robot(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", command="velocities")
    rep = check_recordings([bag], robot)
    e = _one(rep.errors, ARM_COMMAND, "velocities only")
    assert "60 of 60" in e and "command_units is 'rad'" in e
    assert rep.bags[0]["commands"]["points"]["velocities_only"] == 60
    # the same trajectories with positions too are fine
    ok = check_recordings([write_arm_bag(tmp_path / "both", command="both")], robot)
    assert ok.errors == [] and ok.warnings == []


def test_positions_beyond_the_limits_and_commands_beyond_the_bounds(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag", amplitude=2.5)
    rep = check_recordings([bag], robot)
    pj = rep.bags[0]["joints"]["per_joint"]["elbow"]
    assert pj["max"] > 2.0 and pj["outside"] > 0
    w = _one(rep.warnings, "joint 'elbow' reaches")
    assert "up to 2.5 (0.5 above position_upper 2) rad" in w
    _one(rep.warnings, "joint 'shoulder' reaches")
    _one(rep.warnings, ARM_COMMAND, "leave the action bounds")
    assert rep.errors == []


def test_without_episode_end_messages_the_bag_is_one_episode(tmp_path, robot):
    rep = check_recordings([write_arm_bag(tmp_path / "bag")], robot)
    b = rep.bags[0]
    assert b["episodes_from"] == "bag" and len(b["episodes"]) == 1
    assert b["episodes"][0]["ended"] == "bag end" and b["episodes"][0]["commands"] == 60
    assert b["episodes"][0]["success"] is None
    _one(rep.notes, "taken as one episode")
    assert rep.verdict == "OK"


def test_several_bags_are_reported_each_and_together(tmp_path, robot):
    good = write_arm_bag(tmp_path / "good", "sqlite3")
    bad = write_arm_bag(tmp_path / "bad", camera_hz=15.0)
    rep = check_recordings([good, bad], robot)
    assert [b["verdict"] for b in rep.bags] == ["OK", "WARN"]
    assert all(w.startswith("bad: ") for w in rep.warnings) and rep.warnings
    assert rep.overall()["commands"] == 90 and rep.overall()["episodes"] == 2
    json.dumps(rep.to_dict())


def test_a_corrupt_bag_is_an_error_of_the_report(tmp_path, robot):
    bag = write_arm_bag(tmp_path / "bag")
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a recording cut short
    rep = check_recordings([bag], robot)
    e = _one(rep.errors, "cannot read the bag")
    assert "bag" in e and rep.exit_code == 1


def test_bad_arguments_exit_2_naming_the_cause(tmp_path, robot_file, capsys):
    bag = write_arm_bag(tmp_path / "bag")
    assert bag_health.main([str(tmp_path / "nope"), "--robot", str(robot_file)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "bag not found" in err
    assert bag_health.main([str(bag), "--robot", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "none.yaml" in err and "not found" in err and "--robot" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(ARM_ROBOT_YAML.replace("velocity_limits: [3.0, 3.0]", "velocity_limits: [3.0]"))
    assert bag_health.main([str(bag), "--robot", str(broken)]) == 2
    assert "velocity_limits" in capsys.readouterr().err
    assert bag_health.main([str(bag), "--robot", str(tmp_path)]) == 2  # a folder, not a file
    assert str(tmp_path) in capsys.readouterr().err
    assert bag_health.main([str(bag), "--robot", str(robot_file), "--max-gap-periods", "0"]) == 2
    with pytest.raises(SystemExit) as exc:  # no --robot at all: argparse
        bag_health.main([str(bag)])
    assert exc.value.code == 2


def test_the_shipped_sample_bag_is_healthy_for_the_reacher():
    rep = check_recordings([SAMPLE_BAG], REACHER)
    assert rep.verdict == "OK", rep.errors + rep.warnings
    b = rep.bags[0]
    assert b["topics"]["/camera/image_raw"]["count"] == 600 and b["pairing"]["unpaired"] == 0
    assert b["commands"]["interface"] == "forward_command" and b["commands"]["outside_bounds"] == 0


def test_registered_with_the_wsa_command_and_ros_free():
    from wsa_ros.tools.cli import COMMANDS

    assert COMMANDS["bag-health"][0] == "wsa_ros.tools.bag_health:main"
    if "rclpy" not in sys.modules:  # nothing the report imports pulls rclpy in
        check_recordings([SAMPLE_BAG], REACHER)
        assert "rclpy" not in sys.modules
