"""The one configuration schema: ROS-params YAML read by nodes and tools alike."""
import pytest

from wsa_ros import config
from wsa_ros.config import AgentConfig, ConfigError


def test_load_ros_params_file_and_bare_mapping(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("agent_node:\n  ros__parameters:\n    control_rate_hz: 60\n    camera_topics: [/a, /b/compressed]\n")
    c = config.load(f, AgentConfig)
    assert c.control_rate_hz == 60.0 and isinstance(c.control_rate_hz, float)
    assert c.camera_topics == ["/a", "/b/compressed"]
    assert c.output_mode == "float64_array"  # default kept
    g = tmp_path / "b.yaml"
    g.write_text("/**:\n  ros__parameters:\n    start_enabled: true\n")
    assert config.load(g, AgentConfig).start_enabled is True


@pytest.mark.parametrize("text,msg", [
    ("control_rate_hz: 0.1", "outside"),
    ("control_rate_hz: fast", "must be a number"),
    ("output_mode: teleport", "not one of"),
    ("start_enabled: 1", "true or false"),
    ("camera_topics: /single", "must be a list"),
    ("intra_op_threads: 1.5", "integer"),
    ("bundel: x", "unknown parameter"),
])
def test_bad_values_are_rejected_with_the_key_named(tmp_path, text, msg):
    f = tmp_path / "c.yaml"
    f.write_text(f"agent_node:\n  ros__parameters:\n    {text}\n")
    with pytest.raises(ConfigError, match=msg):
        config.load(f, AgentConfig)


def test_other_node_only_is_an_error_and_yaml_tags_are_not_executed(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("finetune_node:\n  ros__parameters:\n    x: 1\n")
    with pytest.raises(ConfigError, match="no parameters for node 'agent_node'"):
        config.load(f, AgentConfig)
    g = tmp_path / "e.yaml"
    g.write_text("!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(g, AgentConfig)
    assert not (tmp_path / "pwned").exists()


def test_dump_round_trips(tmp_path):
    c = AgentConfig(control_rate_hz=50.0, camera_topics=["/x"])
    f = tmp_path / "r.yaml"
    f.write_text(config.dump(c))
    assert config.load(f, AgentConfig) == c


def test_shipped_config_files_load():
    share = config.package_share()
    for section in config.SECTIONS.values():
        node = section.NODE
        name = node.replace("_node", "")
        path = share / "config" / f"{name}.yaml"
        if path.exists():
            config.load(path, section)
    assert (share / "config" / "agent.yaml").exists()
