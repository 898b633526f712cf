"""The house rules, checked on the source: imports flow one way (no cycles, not even inside a
function), only ``wsa_ros/ros`` talks to rclpy, the runtime a robot needs never reaches torch,
node files stay small, and the shipped files keep to the one schema."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "wsa_ros"
ROS_PACKAGES = ("rclpy", "sensor_msgs", "std_msgs", "std_srvs", "geometry_msgs", "trajectory_msgs", "diagnostic_msgs",
                "rcl_interfaces", "rosgraph_msgs", "builtin_interfaces", "lifecycle_msgs")


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth (functions included), absolute."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


MODULES = {_module(p): p for p in PKG.rglob("*.py")}
GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in GRAPH[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_no_import_cycles_not_even_inside_functions():
    cycles = sorted(m for m in GRAPH if m in _reach(m) and not m.endswith("__init__"))
    # a package __init__ that re-exports is not a cycle; the modules themselves must be acyclic
    cycles = [m for m in cycles if any(m in _reach(n) for n in GRAPH[m] if not MODULES[n].name == "__init__.py")]
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_only_the_ros_folder_imports_rclpy_and_message_packages():
    bad = {m: sorted(i for i in _imports(p) if i.split(".")[0] in ROS_PACKAGES)
           for m, p in MODULES.items() if not m.startswith("wsa_ros.ros")}
    assert not {m: v for m, v in bad.items() if v}, bad


def test_the_runtime_never_reaches_torch():
    """What a robot needs (wsa_ros.runtime and what it imports) runs without torch installed
    (and test/ros/test_nodes.py runs the agent node with torch made unimportable)."""
    for m in MODULES:
        if not m.startswith("wsa_ros.runtime"):
            continue
        for n in {m} | _reach(m):
            heavy = sorted(i for i in _imports(MODULES[n]) if i.split(".")[0] in ("torch", "torchrl", "tensordict"))
            assert not heavy, f"{m} reaches {n}, which imports {heavy}"
            assert not n.startswith(("wsa_ros.learn", "wsa_ros.model", "wsa_ros.tools", "wsa_ros.ros")), (m, n)


@pytest.mark.parametrize("path", sorted(p for p in (PKG / "ros").glob("*.py")), ids=lambda p: p.name)
def test_rclpy_files_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n < 300, f"{path.name} has {n} lines: a node only wires topics, parameters and services to a core"


def test_nothing_unpickles_or_evaluates_untrusted_files():
    """torch.load only with weights_only=True, YAML only through a safe loader, no pickle, no eval."""
    for m, p in MODULES.items():
        text = p.read_text()
        tree = ast.parse(text)
        assigned = {t.id: ast.get_source_segment(text, n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            f = call.func
            owner, attr = getattr(getattr(f, "value", None), "id", None), getattr(f, "attr", getattr(f, "id", None))
            kw = {k.arg: k.value for k in call.keywords}
            if (owner, attr) == ("torch", "load"):
                assert getattr(kw.get("weights_only"), "value", None) is True, f"{m}: torch.load without weights_only"
            if (owner, attr) in (("yaml", "load"), ("yaml", "load_all")):
                loader = ast.get_source_segment(text, kw["Loader"]) if "Loader" in kw else ""
                assert "Safe" in assigned.get(loader, loader), f"{m}: yaml.load without a safe loader"
            assert owner not in ("pickle", "marshal"), f"{m}: {owner}.{attr}"
            assert not (isinstance(f, ast.Name) and f.id in ("eval", "exec")), f"{m}: {f.id}() on data"
