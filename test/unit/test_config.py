"""The one configuration schema: ROS-params YAML read by nodes and tools alike."""
import pytest
import yaml

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


def test_learner_settings_are_one_nested_section(tmp_path):
    """finetune_node embeds the learner's settings (SACConfig) as learner.* parameters: a nested
    mapping in the file, dotted names on the command line, the same checks as every other field."""
    from wsa_ros.config import FinetuneConfig, SACConfig

    f = tmp_path / "f.yaml"
    f.write_text("finetune_node:\n  ros__parameters:\n    export_every_updates: 10\n"
                 "    learner:\n      batch_size: 32\n      utd: 2\n")
    c = config.load(f, FinetuneConfig)
    assert isinstance(c.learner, SACConfig) and c.learner.batch_size == 32 and c.learner.utd == 2.0
    assert c.learner.discount == SACConfig().discount  # defaults kept
    assert config.from_dict(FinetuneConfig, {"learner.lr": 0.001}).learner.lr == 0.001
    names = [n for n, *_ in config.flat_schema(FinetuneConfig)]
    assert "learner.batch_size" in names and "learner" not in names and "batch_size" not in names
    g = tmp_path / "r.yaml"
    g.write_text(config.dump(c))
    assert config.load(g, FinetuneConfig) == c
    for text, msg in (("learner:\n      batch_sise: 3", r"unknown parameter\(s\) \['batch_sise'\]"),
                      ("learner:\n      batch_size: 0", "outside"),
                      ("learner: 5", "is a section"),
                      ("batch_size: 64", r"unknown parameter\(s\) \['batch_size'\]")):
        f.write_text(f"finetune_node:\n  ros__parameters:\n    {text}\n")
        with pytest.raises(ConfigError, match=msg):
            config.load(f, FinetuneConfig)


def test_demo_settings_files_use_the_same_schema():
    share = config.package_share()
    for start in ("fresh", "shipped"):
        path = share / "config" / f"demo_{start}.yaml"
        for section in (config.AgentConfig, config.FinetuneConfig):
            config.load(path, section)  # every value checked; a misspelt one would raise


def test_merged_parameters_later_files_and_values_win(tmp_path):
    """merge_params: a /** block, then the node's own block, then later files, then the values
    given; dump_params writes the result as the node's one parameter file, nested again."""
    from wsa_ros.config import dump_params, merge_params, read_params

    a = tmp_path / "a.yaml"
    a.write_text("/**:\n  ros__parameters:\n    x: 1\n    learner:\n      lr: 0.1\n      seed: 1\n"
                 "agent_node:\n  ros__parameters:\n    x: 2\n")
    b = tmp_path / "b.yaml"
    b.write_text("agent_node:\n  ros__parameters:\n    y: [1, 2]\n    learner:\n      lr: 0.2\n"
                 "other_node:\n  ros__parameters:\n    y: 9\n")
    m = merge_params([a, None, b], {"learner.seed": 5, "z": "s"}, "agent_node")
    assert m == {"x": 2, "learner.lr": 0.2, "learner.seed": 5, "y": [1, 2], "z": "s"}
    out = tmp_path / "m.yaml"
    out.write_text(dump_params(m, "agent_node"))
    assert read_params(out, "agent_node") == m
    assert yaml.safe_load(out.read_text())["agent_node"]["ros__parameters"]["learner"] == {"lr": 0.2, "seed": 5}
