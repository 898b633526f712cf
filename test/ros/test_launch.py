"""launch/agent.launch.py without `launch`: what can be checked here.

* it is valid Python naming the right package, executable and arguments (``ast``);
* the executable is a console-script entry point of setup.py and importable;
* its default config file exists and passes the config schema;
* its logic (bundle override only when given, use_sim_time, namespace, the config file
  first) is run against minimal stand-ins of the few launch / launch_ros classes it uses;
* ``colcon build`` into a temporary folder installs the launch file, the config, the
  shipped bundle and an ``agent_node`` executable that starts and reports a bad
  parameter clearly.
"""
from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "agent.launch.py"


def _constants(tree: ast.Module) -> dict:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value.value
    return out


def _value(node, consts):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    return None


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def _entry_points() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for call in _calls(tree, "setup"):
        for kw in call.keywords:
            if kw.arg == "entry_points":
                eps = ast.literal_eval(kw.value)
                return dict(s.replace(" ", "").split("=", 1) for s in eps["console_scripts"])
    raise AssertionError("setup.py has no entry_points")


def test_launch_file_is_valid_python_naming_the_executable_and_arguments():
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    consts = _constants(tree)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    args = {_value(c.args[0], consts) for c in _calls(tree, "DeclareLaunchArgument")}
    assert {"config", "namespace", "bundle", "use_sim_time"} <= args, args
    nodes = _calls(tree, "Node")
    assert len(nodes) == 1
    kw = {k.arg: k.value for k in nodes[0].keywords}
    assert _value(kw["package"], consts) == "wsa_ros"
    exe = _value(kw["executable"], consts)
    eps = _entry_points()
    assert exe in eps, f"launch runs '{exe}', setup.py installs {sorted(eps)}"
    module, func = eps[exe].split(":")
    assert module == "wsa_ros.ros.agent_node" and func == "main"
    imported = importlib.import_module(module)
    assert callable(getattr(imported, func))
    # the default config: <share>/config/agent.yaml
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"config", "agent.yaml"} <= strings


def test_default_config_file_passes_the_schema():
    from wsa_ros import config as C

    cfg = C.load(ROOT / "config" / "agent.yaml", C.AgentConfig)
    assert cfg.start_enabled is False  # the node starts disabled unless configured otherwise
    setup = (ROOT / "setup.py").read_text()
    assert '"config/*.yaml"' in setup and '"launch/*.launch.py"' in setup


# --------------------------------------------------------------------------- stand-ins
class _Sub:
    """Stand-in for a launch substitution: performs to the launch argument's value."""

    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


def _standins():
    recorded = {}

    def record(kind):
        class Rec:
            def __init__(self, *args, **kwargs):
                self.args, self.kwargs = args, kwargs
                recorded.setdefault(kind, []).append(self)
        Rec.__name__ = kind
        return Rec

    launch = types.ModuleType("launch")
    launch.LaunchDescription = record("LaunchDescription")
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = record("DeclareLaunchArgument")
    actions.OpaqueFunction = record("OpaqueFunction")
    subs = types.ModuleType("launch.substitutions")
    subs.LaunchConfiguration = _Sub
    subs.PathJoinSubstitution = record("PathJoinSubstitution")
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = record("Node")
    ros_subs = types.ModuleType("launch_ros.substitutions")
    ros_subs.FindPackageShare = record("FindPackageShare")
    mods = {"launch": launch, "launch.actions": actions, "launch.substitutions": subs, "launch_ros": launch_ros,
            "launch_ros.actions": ros_actions, "launch_ros.substitutions": ros_subs}
    return mods, recorded


def _run_launch(values: dict):
    mods, recorded = _standins()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        ns: dict = {"__name__": "agent_launch", "__file__": str(LAUNCH)}
        exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), ns)
        ld = ns["generate_launch_description"]()
        declared = {a.args[0]: a.kwargs.get("default_value") for a in recorded["DeclareLaunchArgument"]}
        ctx = types.SimpleNamespace(launch_configurations={
            "config": "/cfg/agent.yaml", "bundle": "", "robot": "", "use_sim_time": "false", "namespace": "",
            "log_level": "info", "autostart": "",
            **values})
        (opaque,) = recorded["OpaqueFunction"]
        (node,) = opaque.kwargs["function"](ctx)
        return ld, declared, node.kwargs
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_launch_logic_with_stand_ins():
    ld, declared, node = _run_launch({})
    assert set(declared) >= {"config", "namespace", "bundle", "use_sim_time"}
    assert declared["bundle"] == "" and declared["use_sim_time"] == "false" and declared["namespace"] == ""
    assert node["package"] == "wsa_ros" and node["executable"] == "agent_node" and node["name"] == "agent_node"
    config, overrides = node["parameters"]
    assert config == "/cfg/agent.yaml"  # the file first, the launch overrides after it (they win)
    assert overrides == {"use_sim_time": False}  # no bundle argument: the config file's bundle holds
    assert node["namespace"].name == "namespace"
    _, _, node = _run_launch({"bundle": "/b/v2", "use_sim_time": "true"})
    assert node["parameters"][1] == {"use_sim_time": True, "bundle": "/b/v2"}
    # autostart: the lifecycle state the managed node takes itself to; empty keeps the file's
    assert declared["autostart"] == ""
    _, _, node = _run_launch({"autostart": "inactive"})
    assert node["parameters"][1] == {"use_sim_time": False, "autostart": "inactive"}
    from wsa_ros import config as C

    assert C.from_dict(C.AgentConfig, {"autostart": "inactive"}).autostart == "inactive"
    with pytest.raises(C.ConfigError, match="autostart"):
        C.from_dict(C.AgentConfig, {"autostart": "configured"})


def test_launch_robot_argument_sets_the_arms_topics_and_interface(tmp_path):
    from wsa_ros import config as C

    robot = ROOT / "config" / "robots" / "reacher.yaml"
    _, declared, node = _run_launch({"robot": str(robot)})
    assert declared["robot"] == ""
    over = node["parameters"][1]
    assert over == {"use_sim_time": False, **C.robot_agent_params(C.load_robot(robot))}
    agent = C.from_dict(C.AgentConfig, {k: v for k, v in over.items() if k != "use_sim_time"})
    assert agent.output_mode == "float64_array" and agent.camera_topics == ["/camera/image_raw"]
    bad = tmp_path / "r.yaml"
    bad.write_text(robot.read_text().replace("camera_rates_hz: [50.0]", "camera_rates_hz: []"))
    with pytest.raises(C.ConfigError, match="camera_rates_hz"):
        _run_launch({"robot": str(bad)})


# --------------------------------------------------------------------------- colcon
@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = shutil.which("colcon")
    assert colcon, "colcon is not on PATH: colcon-common-extensions is a required dependency (scripts/setup_env.sh)"
    base = tmp_path_factory.mktemp("colcon")
    cmd = [colcon, "--log-base", str(base / "log"), "build", "--paths", str(ROOT),
           "--build-base", str(base / "build"), "--install-base", str(base / "install")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(base))
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return base / "install" / "wsa_ros"


def test_colcon_installs_launch_config_and_executable(colcon_install):
    share = colcon_install / "share" / "wsa_ros"
    for rel in ("launch/agent.launch.py", "config/agent.yaml", "package.xml"):
        assert (share / rel).is_file(), f"{rel} not installed under {share}"
    assert (share / "launch/agent.launch.py").read_text() == LAUNCH.read_text()
    assert (colcon_install / "share/ament_index/resource_index/packages/wsa_ros").is_file()
    exe = colcon_install / "lib" / "wsa_ros" / "agent_node"  # where `ros2 run wsa_ros agent_node` looks
    assert exe.is_file() and os.access(exe, os.X_OK)


def test_colcon_installs_the_shipped_bundle(colcon_install):
    src = ROOT / "models" / "default" / "manifest.yaml"
    assert src.is_file(), "the shipped bundle models/default/manifest.yaml is missing from the source tree"
    assert (colcon_install / "share/wsa_ros/models/default/manifest.yaml").is_file()


def test_installed_executable_runs_and_reports_bad_parameters(colcon_install):
    exe = colcon_install / "lib" / "wsa_ros" / "agent_node"
    env = dict(os.environ, ROS_DOMAIN_ID="28", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               AMENT_PREFIX_PATH=f"{colcon_install}{os.pathsep}{os.environ.get('AMENT_PREFIX_PATH', '')}")
    site = next((colcon_install / "lib").glob("python3*/site-packages"))
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    out = subprocess.run([sys.executable, str(exe), "--ros-args", "-p", "control_rate_hz:=5000.0"],
                         capture_output=True, text=True, timeout=120, env=env, cwd="/")
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "control_rate_hz" in text and "out of range" in text, text
    # the installed package (not the checkout) is what ran
    check = subprocess.run([sys.executable, "-c", "import wsa_ros.config as c; print(c.package_share())"],
                           capture_output=True, text=True, timeout=60, env=env, cwd="/")
    if (colcon_install / "share/wsa_ros/models").is_dir():
        assert check.stdout.strip() == str(colcon_install / "share" / "wsa_ros"), check.stdout + check.stderr
