"""The robot description (config/robots/*.yaml, RobotConfig): one file per arm, checked field
against field, the source of the bundle's action spec and the agent's topics."""
import pytest

from wsa_ros import config
from wsa_ros.config import ConfigError
from wsa_ros.runtime.bundle import load_bundle

ROBOTS = config.package_share() / "config" / "robots"

GOOD = """robot:
  ros__parameters:
    name: arm
    joint_names: [a, b]
    position_lower: [-1.0, -2.0]
    position_upper: [1.0, 2.0]
    velocity_limits: [1.5, 2.5]
    command_interface: joint_trajectory
    command_units: rad
    command_topic: /jtc/joint_trajectory
    camera_names: [scene, wrist]
    camera_topics: [/scene/image_raw, /wrist/image_raw/compressed]
    camera_rates_hz: [30.0, 15.0]
"""


def _write(tmp_path, text):
    f = tmp_path / "robot.yaml"
    f.write_text(text)
    return f


def test_reacher_file_matches_the_shipped_bundle_and_agent_config():
    r = config.load_robot(ROBOTS / "reacher.yaml")
    b = load_bundle(config.default_bundle())
    spec = config.robot_action_spec(r)
    assert spec == {"mode": b.action.mode, "joint_names": b.action.joint_names, "low": b.action.low,
                    "high": b.action.high, "units": b.action.units}
    assert r.proprio_fields == b.proprio.fields and r.joint_names == b.proprio.joint_names
    assert r.camera_names == [e.camera for e in b.encoders][:1]
    agent = config.load(config.package_share() / "config" / "agent.yaml", config.AgentConfig)
    for k, v in config.robot_agent_params(r).items():
        assert getattr(agent, k) == v, k


def test_every_shipped_robot_file_is_valid():
    files = sorted(ROBOTS.glob("*.yaml"))
    assert files
    for f in files:
        config.load_robot(f)


def test_position_robot_derives_bounds_from_limits(tmp_path):
    r = config.load_robot(_write(tmp_path, GOOD))
    assert config.robot_action_spec(r) == {"mode": "position", "joint_names": ["a", "b"], "low": [-1.0, -2.0],
                                           "high": [1.0, 2.0], "units": "rad"}
    p = config.robot_agent_params(r)
    assert p["output_mode"] == "joint_trajectory" and p["camera_topics"][1].endswith("/compressed")
    v = config.load_robot(_write(tmp_path, GOOD.replace("command_units: rad", "command_units: rad/s")))
    assert config.robot_action_spec(v)["low"] == [-1.5, -2.5] and config.robot_action_spec(v)["mode"] == "velocity"


@pytest.mark.parametrize("old,new,msg", [
    ("velocity_limits: [1.5, 2.5]", "velocity_limits: [1.5]", "'velocity_limits' has 1 values for 2 joints"),
    ("joint_names: [a, b]", "joint_names: [a, a]", "repeats"),
    ("position_upper: [1.0, 2.0]", "position_upper: [1.0, -3.0]", "joint 'b' position_lower -2.0 >= position_upper"),
    ("command_units: rad", "command_units: m/s", "carries rad or rad/s, not command_units 'm/s'"),
    ("camera_rates_hz: [30.0, 15.0]", "camera_rates_hz: [30.0]", "'camera_rates_hz' has 1 values"),
    ("camera_topics: [/scene/image_raw, /wrist/image_raw/compressed]", "camera_topics: [/x, /x]", "must all differ"),
    ("command_interface: joint_trajectory", "command_interface: teleport", "not one of"),
    ("name: arm", "name: arm\n    joint_name: [a]", "unknown parameter"),
    ("command_units: rad", "command_units: rad\n    action_low: [-5.0, -1.0]\n    action_high: [1.0, 1.0]",
     "leave its position limits"),
    ("command_units: rad", "command_units: rad/s\n    action_low: [-5.0, -1.0]\n    action_high: [5.0, 1.0]",
     "exceed its velocity limit"),
    ("camera_names: [scene, wrist]", "camera_names: []", "'camera_names' is empty"),
])
def test_bad_robot_files_name_the_field_and_the_fix(tmp_path, old, new, msg):
    assert old in GOOD
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace("[", r"\[")):
        config.load_robot(_write(tmp_path, GOOD.replace(old, new)))


def test_continuous_position_joint_needs_explicit_bounds(tmp_path):
    text = GOOD.replace("name: arm", "name: arm\n    continuous: [a]")
    with pytest.raises(ConfigError, match="continuous joints \\['a'\\] have no position limits"):
        config.load_robot(_write(tmp_path, text))
    ok = text.replace("command_units: rad", "command_units: rad\n    action_low: [-3.0, -2.0]\n    action_high: [3.0, 2.0]")
    assert config.robot_action_spec(config.load_robot(_write(tmp_path, ok)))["low"] == [-3.0, -2.0]
