"""Every node as an operator starts and stops it, in separate processes over real DDS:

* each console script of setup.py is installed next to this Python and runs (``--help``, or a
  bad parameter refused with exit code 1 and the parameter named);
* SIGTERM (what ``ros2 launch`` escalates to and systemd sends) ends each node cleanly: exit code
  0, the agent's last stop command on the wire, the learner's store and checkpoint closed;
* ``output_mode: twist`` publishes geometry_msgs/Twist with the policy's action;
* the agent runs and acts with torch made unimportable (a robot installs no torch).

ROS_DOMAIN_ID 110-115, loopback only.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from ros_peer import AgentProcess, Peer, Streamer, ros_env, stamp_key, stop_child, wait_for

from wsa_ros.runtime.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CAM, JS = "/cam/image_raw", "/js"


def _console_scripts() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"):
        for kw in call.keywords:
            if kw.arg == "entry_points":
                return [s.split("=")[0].strip() for s in ast.literal_eval(kw.value)["console_scripts"]]
    raise AssertionError("setup.py has no console_scripts")


RUNS = {  # script -> (arguments, exit code, words the output must hold)
    "wsa": (["--help"], 0, ["build-bundle", "eval-bag", "demo"]),
    "replay": (["--help"], 0, ["--wait-for-subscribers", "--clock"]),
    "agent_node": (["--ros-args", "-p", "control_rate_hz:=5000.0"], 1, ["cannot start", "control_rate_hz"]),
    "finetune_node": (["--ros-args", "-p", "learner.batch_size:=0"], 1, ["cannot start", "learner.batch_size"]),
    "sim_arm_node": (["--ros-args", "-p", "image_size:=2"], 1, ["cannot start", "image_size"]),
}


def test_every_console_script_is_installed_and_runs():
    scripts = _console_scripts()
    assert sorted(scripts) == sorted(RUNS), "a console script without a check here (or a check without a script)"
    for name in scripts:
        exe = BIN / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} is not installed (pip install -e .)"
        args, code, words = RUNS[name]
        out = subprocess.run([str(exe), *args], env=ros_env(110), capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode == code, f"{name} {args}: exit {out.returncode}\n{text}"
        for w in words:
            assert w in text, f"{name}: '{w}' not in\n{text}"


def _params(bundle, **kw) -> dict:
    p = dict(bundle=str(bundle), providers=["cpu"], camera_topics=[CAM], joint_states_topic=JS, control_rate_hz=30.0,
             max_obs_age_s=0.5, blend_in_s=0.0, start_enabled=True, diagnostics_period_s=0.2)
    p.update(kw)
    return p


def _start(peer: Peer, agent: AgentProcess, timeout: float = 60.0) -> None:
    peer.publisher(CAM, "image")
    peer.publisher(JS, "joints")
    try:
        for t in (CAM, JS):
            peer.wait_subscribed(t, timeout)
        peer.wait_outputs_matched(timeout)
    except TimeoutError:
        raise AssertionError(f"agent did not come up:\n{agent.output()}") from None


def test_sigterm_ends_each_node_cleanly(tiny_bundle, tmp_path):
    # the learner and the sim in their own processes, beside an agent that is commanding
    ft_file = tmp_path / "ft.yaml"
    ft_file.write_text(yaml.safe_dump({"finetune_node": {"ros__parameters": {
        "bundle": str(tiny_bundle), "store_dir": str(tmp_path / "store"), "out_dir": str(tmp_path / "out"),
        "providers": ["cpu"], "camera_topics": [CAM], "joint_states_topic": JS, "status_period_s": 0.2}}}))
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("finetune", "sim")}
    env = ros_env(111)
    procs = {
        "finetune": subprocess.Popen([str(BIN / "finetune_node"), "--ros-args", "--params-file", str(ft_file)],
                                     env=env, stdout=logs["finetune"], stderr=subprocess.STDOUT),
        "sim": subprocess.Popen([str(BIN / "sim_arm_node"), "--ros-args", "-p", "camera_topic:=/sim/image",
                                 "-p", "joint_states_topic:=/sim/joints", "-p", "command_topic:=/sim/cmd"],
                                env=env, stdout=logs["sim"], stderr=subprocess.STDOUT)}
    with AgentProcess(111, _params(tiny_bundle)) as agent, Peer(111) as peer:
        from std_msgs.msg import String

        status = []
        peer.node.create_subscription(String, "/finetune_node/status", lambda m: status.append(m.data), 10)
        _start(peer, agent)
        st = Streamer(peer, [CAM], JS, 30.0).start()
        try:
            wait_for(lambda: len(peer.snapshot("records")) >= 10, 30, "the agent acting")
            wait_for(lambda: status, 90, "the learner's ~/status")
            wait_for(lambda: peer.node.count_publishers("/sim/image") > 0, 30, "the sim's camera")
            n_cmd = len(peer.snapshot("commands"))
            for name, p in (("agent", agent.proc), *procs.items()):
                p.send_signal(signal.SIGTERM)
            codes = {"agent": agent.proc.wait(timeout=30)}
            codes.update({n: p.wait(timeout=60) for n, p in procs.items()})
        finally:
            st.stop()
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            for f in logs.values():
                f.close()
        assert codes == {"agent": 0, "finetune": 0, "sim": 0}, (codes, agent.output(),
                                                               (tmp_path / "finetune.log").read_text())
        wait_for(lambda: any(all(v == 0.0 for v in c.data) for _, c in peer.snapshot("commands")[n_cmd:]), 5,
                 "the agent's last stop command")
        assert "stop command sent" in agent.output()
    text = (tmp_path / "finetune.log").read_text()
    assert "shut down in" in text and "Traceback" not in text, text


def test_twist_output_carries_the_policy_action(tiny_bundle):
    eng = Engine(tiny_bundle, providers=["cpu"])
    params = _params(tiny_bundle, output_mode="twist", command_topic="/servo/twist", trigger="camera")
    with AgentProcess(112, params) as agent, Peer(112, command_topic="/servo/twist", command_type="twist") as peer:
        _start(peer, agent)
        st = Streamer(peer, [CAM], JS, 20.0).start()
        try:
            wait_for(lambda: len(peer.snapshot("records")) >= 10, 30, "10 actions")
        finally:
            st.stop()
        time.sleep(0.2)
        pairs = list(zip(peer.snapshot("records"), peer.snapshot("commands")))
    assert len(pairs) >= 10
    for (_, rec), (_, cmd) in pairs:
        want = eng.step({"front": st.frames[stamp_key(rec.header.stamp)][0]}, np.array([0.1, -0.2, 0.0, 0.0]))
        np.testing.assert_allclose([cmd.linear.x, cmd.linear.y], want.action, atol=1e-9)
        assert [cmd.linear.z, cmd.angular.x, cmd.angular.y, cmd.angular.z] == [0.0] * 4


def test_agent_runs_without_torch(tiny_bundle, tmp_path):
    """A robot installs onnxruntime, not torch: with torch, torchrl and tensordict unimportable the
    agent starts, acts with the engine's actions and stops cleanly."""
    eng = Engine(tiny_bundle, providers=["cpu"])
    pfile = tmp_path / "agent.yaml"
    pfile.write_text(yaml.safe_dump({"/**": {"ros__parameters": _params(tiny_bundle, trigger="camera")}}))
    log = open(tmp_path / "agent.log", "w")
    code = ("import sys\n"
            "for m in ('torch', 'torchrl', 'tensordict'):\n"
            "    sys.modules[m] = None  # import m now raises ImportError, as if not installed\n"
            "from wsa_ros.ros.agent_node import main\n"
            "rc = main()\n"
            "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None], 'torch was loaded'\n"
            "sys.exit(rc)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "--ros-args", "--params-file", str(pfile)], env=ros_env(113),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with Peer(113) as peer:
            peer.publisher(CAM, "image")
            peer.publisher(JS, "joints")
            try:
                peer.wait_subscribed(CAM, 60)
                peer.wait_outputs_matched(60)
            except TimeoutError:
                raise AssertionError((tmp_path / "agent.log").read_text()) from None
            st = Streamer(peer, [CAM], JS, 20.0).start()
            try:
                wait_for(lambda: len(peer.snapshot("records")) >= 10, 30, "10 actions without torch")
            finally:
                st.stop()
            records = peer.snapshot("records")
    finally:
        rc = stop_child(proc, log, 15)
    text = (tmp_path / "agent.log").read_text()
    assert rc == 0, text
    for _, rec in records:
        want = eng.step({"front": st.frames[stamp_key(rec.header.stamp)][0]}, np.array([0.1, -0.2, 0.0, 0.0]))
        np.testing.assert_allclose(rec.position, want.action, atol=1e-9)

