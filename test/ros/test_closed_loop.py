"""A short closed loop across processes: sim_arm_node, agent_node and finetune_node as separate
processes on a private ROS domain, the graph on sim time (/clock from the sim). Checks that the
arm does not move while the agent is disabled, that after ``~/enable`` the sim receives the
agent's commands and its joint velocities follow them, that every action is recorded against
the frame it was computed from, that transitions reach the fine-tuner, and that the fine-tuner
trains, exports, validates and the agent swaps the new policy in while it keeps acting.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml


from wsa_ros.tools.demo import Children, node_command, ros_env  # noqa: E402
from wsa_ros.ros.monitor import RosSession  # noqa: E402
from wsa_ros.runtime.bundle import split_policy_id  # noqa: E402

DT_NS = 20_000_000
SIM = dict(seed=3, max_episode_steps=25, publish_clock=True, real_time_factor=1.0)


def _stamp_ns(h) -> int:
    return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec


class LoopProbe:
    def __init__(self, s: RosSession):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float32MultiArray, Float64MultiArray, String

        best = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.BEST_EFFORT)
        rel = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.RELIABLE)
        self.joints: dict[int, np.ndarray] = {}
        self.records: list[tuple[int, str, np.ndarray]] = []
        self.commands: list[np.ndarray] = []
        self.alphas: list[tuple[str, np.ndarray]] = []
        self.ends: list[str] = []
        n = s.node
        n.create_subscription(JointState, "/joint_states",
                              lambda m: self.joints.__setitem__(_stamp_ns(m.header), np.array(m.velocity)), best)
        n.create_subscription(JointState, "/agent_node/action_record", lambda m: self.records.append(
            (_stamp_ns(m.header), split_policy_id(m.header.frame_id)[0], np.array(m.position))), rel)
        n.create_subscription(Float64MultiArray, "/forward_command_controller/commands",
                              lambda m: self.commands.append(np.array(m.data)), rel)
        n.create_subscription(Float32MultiArray, "/agent_node/alpha", lambda m: self.alphas.append(
            (m.layout.dim[0].label if m.layout.dim else "", np.array(m.data))), best)
        n.create_subscription(String, "/wsa/episode_end", lambda m: self.ends.append(m.data), rel)
        self.learner: dict = {}
        n.create_subscription(String, "/finetune_node/status",
                              lambda m: self.learner.update(json.loads(m.data)), 10)


def _call(s: RosSession, client, request, children, timeout=15.0):
    s.spin_until(lambda: client.service_is_ready(), timeout, f"service {client.srv_name}", children)
    fut = client.call_async(request)
    s.spin_until(fut.done, timeout, f"reply of {client.srv_name}", children)
    return fut.result()


def test_agent_commands_reach_the_sim_and_transitions_reach_the_finetuner(tmp_path, tiny_bundle):
    from std_srvs.srv import SetBool

    dom = 90
    # the agent's watchdog is not under test here: a loaded 2-core machine may deliver /clock late
    agent = dict(bundle=str(tiny_bundle), start_enabled=False, trigger="camera", control_rate_hz=50.0,
                 blend_in_s=0.0, max_obs_age_s=2.0, providers=["cpu"], use_sim_time=True)
    with Children(ros_env(dom), tmp_path / "logs") as ch, RosSession("loop_probe", dom) as s:
        ch.start("sim_arm_node", node_command("sim_arm_node", SIM))
        ch.start("agent_node", node_command("agent_node", agent))
        ch.start("finetune_node", node_command("finetune_node", {
            "bundle": str(tiny_bundle), "store_dir": str(tmp_path / "store"), "out_dir": str(tmp_path / "bundles"),
            "providers": ["cpu"], "flush_period_s": 0.2, "use_sim_time": True, "export_every_updates": 40,
            "holdout_every": 5, "learner.warmup_transitions": 30, "learner.batch_size": 16}), grace_s=30.0)
        p = LoopProbe(s)
        enable = s.node.create_client(SetBool, "/agent_node/enable")

        # 1. agent (and learner) up, agent disabled: no policy actions, the arm stays still
        s.spin_until(lambda: enable.service_is_ready() and len(p.joints) > 20, 60.0,
                     "the agent's ~/enable service and sim joint states", ch)
        s.spin_until(lambda: bool(p.learner), 90.0, "the fine-tuner's first ~/status", ch)
        s.spin_for(0.5)
        assert not p.records, "the agent acted before it was enabled"
        recent = [v for t, v in sorted(p.joints.items())[-15:]]
        assert np.all(np.abs(recent) < 0.05), f"the arm moves with the agent disabled: {recent[-1]}"

        # 2. enable: actions flow and the sim's joint velocities follow the commands
        res = _call(s, enable, SetBool.Request(data=True), ch)
        assert res.success, res.message
        s.spin_until(lambda: len(p.records) >= 60 and len(p.ends) >= 2, 60.0,
                     "60 agent actions and 2 episode ends", ch)
        s.spin_until(lambda: p.learner.get("accepted", 0) >= 40, 60.0,
                     "the fine-tuner accepting 40 transitions", ch)
        # 3. the learner trains, exports, validates and pushes; the agent acts with the new policy
        s.spin_until(lambda: any(v != "1" for _t, v, _c in p.records), 120.0,
                     "an action by a fine-tuned policy (export, validation, hot-swap)", ch)
        n = len(p.records)
        s.spin_until(lambda: len(p.records) >= n + 20 and p.learner.get("version_pushed", "").startswith("1+ft"),
                     30.0, "20 more actions after the swap and the learner's report of its push", ch)
        s.spin_for(0.3)
        assert not ch.dead(), f"{ch.dead()[0].name} died:\n{ch.dead()[0].tail()}"
        t_stop = time.monotonic()
        codes = ch.stop()  # the learner flushes its store on the way out
        stop_s = time.monotonic() - t_stop
    assert all(rc == 0 for rc in codes.values()), f"unclean exits {codes} (stopping took {stop_s:.1f} s)"

    # every action acted on a real sim frame: stamps are whole sim steps; the policy versions are the
    # bundle's, then the fine-tuner's exports in order (each swapped in between two ticks)
    stamps = [t for t, _v, _c in p.records]
    assert all(t % DT_NS == 0 for t in stamps) and stamps == sorted(stamps)
    versions = [v for _t, v, _c in p.records]
    assert versions[0] == "1" and all(v == "1" or v.startswith("1+ft") for v in versions)
    order = list(dict.fromkeys(versions))
    assert order == sorted(order, key=lambda v: 0 if v == "1" else int(v.split("ft")[1])), order
    assert p.learner["updates"] >= 40 and p.learner["version_pushed"].startswith("1+ft"), p.learner
    cmds = np.array([c for _t, _v, c in p.records])
    assert cmds.shape[1] == 2 and np.all(np.abs(cmds) <= 3.0 + 1e-9)
    assert np.mean(np.abs(cmds)) > 0.1, "the policy commands ~zero; the response check would be void"
    # the joint velocity a few steps after a frame matches the command computed from that frame
    errs = {}
    for lag in range(1, 7):
        pairs = [(c, p.joints[t + lag * DT_NS]) for t, _v, c in p.records if t + lag * DT_NS in p.joints]
        if len(pairs) >= 30:
            errs[lag] = float(np.mean([np.abs(c - v).mean() for c, v in pairs]))
    assert errs, "too few joint states after the recorded actions"
    zero_err = float(np.mean(np.abs(cmds)))  # what "the arm ignores the commands" would give
    best = min(errs.values())
    assert best < 0.3 * zero_err + 0.05, f"joint velocities do not follow the commands: error by lag {errs}, " \
                                         f"vs {zero_err:.3f} for a still arm"
    # alpha: one weight per feature encoder, a distribution
    assert p.alphas and p.alphas[-1][0] == "ae,idm"
    assert np.allclose(p.alphas[-1][1].sum(), 1.0, atol=1e-4)
    # transitions reached the learner's store on disk: each one is an action the agent took on a
    # sim frame, with the command the agent sent (normalised by the bundle's +-3 rad/s bounds)
    chunks = sorted((tmp_path / "store").rglob("*.npz"))
    assert chunks, f"no replay chunk written under {tmp_path / 'store'}"
    stored = {k: [] for k in ("stamp_ns", "next_stamp_ns", "action", "reward", "version")}
    for f in chunks:
        with np.load(f, allow_pickle=False) as z:
            for k in stored:
                stored[k].append(z[k])
    st = {k: np.concatenate(v) for k, v in stored.items()}
    n = st["stamp_ns"].size
    assert n >= 40, f"only {n} transitions stored"
    sent = {t: c for t, _v, c in p.records}
    known = [i for i in range(n) if int(st["stamp_ns"][i]) in sent]
    assert len(known) >= 0.8 * n, "stored transitions whose stamps are not frames the agent acted on"
    for i in known:
        np.testing.assert_allclose(st["action"][i], sent[int(st["stamp_ns"][i])] / 3.0, atol=1e-5)
    assert np.all(st["next_stamp_ns"] > st["stamp_ns"]) and np.all(st["stamp_ns"] % DT_NS == 0)
    assert np.all(np.isfinite(st["reward"])) and np.all(st["reward"] < 0)
    assert set(st["version"].tolist()) <= set(versions) and "1" in set(st["version"].tolist())


def _demo(args, tmp_path, timeout=150):
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "import sys; from wsa_ros.tools.demo import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _demo_run(tmp_path, tiny_bundle, domain: int, *extra):
    out = tmp_path / "demo"
    args = ["--bundle", str(tiny_bundle), "--episodes", "3", "--out", str(out), "--domain-id", str(domain),
            "--eval-episodes", "2", "--param", "sim.max_episode_steps=30", "--param", "agent.providers=[cpu]",
            "--param", "finetune.learner.warmup_transitions=1000000", "--bc-steps", "20", *extra]
    r = _demo(args, tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r, out, json.loads((out / "summary.json").read_text())


def _node_params(info: dict, node: str) -> dict:
    """The parameters a demo child ran with: its one merged parameter file."""
    doc = yaml.safe_load(Path(info["parameters"][node]["merged"]).read_text())
    assert list(doc) == [node] and "--params-file" in info["commands"][node]
    return doc[node]["ros__parameters"]


def _check_demo_outputs(r, out, info, version: str) -> None:
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ep ")]
    assert len(lines) >= 3 and all("return" in ln and f"policy v{version}" in ln and "latency" in ln
                                   for ln in lines), r.stdout
    for f in ("success_rate.png", "alpha_episode.png", "episodes.csv", "summary.json", "summary.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert info["summary"]["episodes"] >= 3
    assert set(info["summary"]["alpha"]["encoders"]) == {"ae", "idm"}
    assert all(rc == 0 for rc in info["exit_codes"].values()), (info["exit_codes"], {  # each child's last lines
        n: (out / "logs" / f"{n}.log").read_text()[-3000:] for n, rc in info["exit_codes"].items()
        if rc != 0 and (out / "logs" / f"{n}.log").is_file()})
    assert info["offline_check"]["start"]["episodes"] == 2 and info["offline_check"]["start"]["version"] == version
    assert not (out / "replay").exists() and "replay_removed_bytes" in info  # no --keep-replay
    # policies take the fleet's route: signed by the demo's own key, over ~/policy, the agent trusting it alone
    agent, ft = _node_params(info, "agent_node"), _node_params(info, "finetune_node")
    keys = (out / "keys").resolve()
    assert agent["trusted_keys"] == [str(keys / "learner.pub")] and agent["allow_unsigned"] is False
    assert agent["policy_topic"] == "/finetune_node/policy" and ft["push_via"] == "topic"
    assert ft["signing_key"] == str(keys / "learner.key") and (keys / "learner.key").stat().st_mode & 0o777 == 0o600
    start = (out / "start_signed").resolve()
    assert agent["bundle"] == ft["bundle"] == str(start) and (start / "manifest.sig").is_file()


def test_demo_fresh_start_end_to_end_writes_plots_and_summary(tmp_path, tiny_bundle):
    """`wsa demo` (the default fresh start) on a tiny bundle for 3 episodes: a two-episode
    demonstration bag imported and handed to the learner, the agent on a new head (version 0),
    the fresh start's settings file given to the agent and the learner; per-episode lines,
    plots, summary, clean exits."""
    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.runtime.bundle import load_bundle

    r, out, info = _demo_run(tmp_path, tiny_bundle, 91, "--demo-episodes", "2")
    _check_demo_outputs(r, out, info, "0")
    assert info["start"] == "fresh" and info["fresh_start"]["bag"]["episodes"] == 2
    store = Path(info["fresh_start"]["store"]).resolve()  # 2 episodes x 30 steps, handed to the learner
    spec = TransitionSpec.from_bundle(load_bundle(tiny_bundle))
    assert ReplayStore(store, spec.schema(), spec.fingerprint(), readonly=True).count == 60
    ft = _node_params(info, "finetune_node")
    assert Path(ft["demo_dir"]) == store
    assert ft["learner"]["demo_bc_weight"] == 1.0  # from the fresh start's settings file
    assert _node_params(info, "agent_node")["exploration_sample"] is True
    for node in ("agent_node", "finetune_node"):
        assert info["parameters"][node]["files"][-1].endswith("config/demo_fresh.yaml")
    bc = info["offline_check"]["bc"]  # the baseline, on the same held-out episodes as the start
    assert bc["version"] == "0+bc20" and bc["episodes"] == 2 and len(bc["per_episode_success"]) == 2
    assert len(bc["per_episode_return"]) == 2 and all(r_ < 0 for r_ in bc["per_episode_return"])  # -distance per step
    header = (out / "episodes.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "learner_updates"


def test_demo_shipped_start_fine_tunes_the_bundles_own_policy(tmp_path, tiny_bundle):
    """`wsa demo --start shipped`: the agent runs the bundle's own policy (version 1) with the
    shipped start's settings (exploration, the learner's critic warm-up and prior), no
    demonstration bag is made, and the run ends cleanly with its offline check."""
    r, out, info = _demo_run(tmp_path, tiny_bundle, 93, "--start", "shipped")
    _check_demo_outputs(r, out, info, "1")
    assert info["start"] == "shipped" and not info["fresh_start"]
    assert not (out / "demonstrations").exists() and not _node_params(info, "finetune_node").get("demo_dir")
    assert "bc" not in info["offline_check"]  # behaviour cloning is the fresh start's baseline
    assert _node_params(info, "agent_node")["exploration_std"] == 0.15  # from the shipped start's settings file
    for node in ("agent_node", "finetune_node"):
        assert info["parameters"][node]["files"][-1].endswith("config/demo_shipped.yaml")


def test_demo_reports_a_child_that_dies(tmp_path, tiny_bundle):
    """A child that cannot start (an agent given two camera topics for a one-camera bundle) is named
    with its exit code, the others are stopped and the demo fails; a value out of its range is
    refused before anything starts, naming the parameter."""
    r = _demo(["--bundle", str(tiny_bundle), "--episodes", "3", "--out", str(tmp_path / "d"), "--domain-id", "92",
               "--no-finetune", "--param", "agent.camera_topics=[/a,/b]"], tmp_path, timeout=90)
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "agent_node exited with code 1" in r.stdout, r.stdout
    assert "camera_topics has 2" in r.stdout  # the end of the child's log is shown
    r = _demo(["--bundle", str(tiny_bundle), "--out", str(tmp_path / "e"), "--no-finetune",
               "--param", "agent.control_rate_hz=0.5"], tmp_path, timeout=60)
    assert r.returncode == 2 and "'control_rate_hz' = 0.5 is outside" in r.stderr, r.stderr
    assert not (tmp_path / "e").exists()


def test_demo_refuses_a_fresh_start_without_the_fine_tuner(tmp_path, tiny_bundle):
    r = _demo(["--bundle", str(tiny_bundle), "--start", "fresh", "--no-finetune", "--out", str(tmp_path / "d")],
              tmp_path, timeout=60)
    assert r.returncode == 2 and "--start fresh needs the fine-tuner" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_demo_arm7_site_workflow_from_a_recorded_bag(tmp_path):
    """`wsa demo --arm arm7` (tiny budgets): the 7-joint arm's expert recorded into a rosbag, a
    bundle built from that bag for config/robots/arm7.yaml (both cameras, the robot's joints),
    the bag imported for the learner, then sim + agent (JointTrajectory positions, both cameras)
    + fine-tuner over ROS: the agent's trajectories move the simulated arm (commanded steps), the
    fine-tuner stores transitions, and the offline check runs on arm7 episodes."""
    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.sim.arm7 import JOINT_NAMES

    out = tmp_path / "demo"
    r = _demo(["--arm", "arm7", "--demo-episodes", "4", "--build-args", "--tiny --image-size 48 --bc-steps 200",
               "--minutes", "0.5", "--out", str(out), "--domain-id", "94", "--eval-episodes", "2",
               "--param", "sim.max_episode_steps=20", "--param", "sim.image_size=48", "--param", "agent.providers=[cpu]",
               "--param", "finetune.learner.warmup_transitions=1000000", "--keep-replay"], tmp_path, timeout=400)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    info = json.loads((out / "summary.json").read_text())
    b = load_bundle(out / "bundle")
    assert b.action.joint_names == list(JOINT_NAMES) and list(b.cameras) == ["scene", "wrist"]
    assert info["fresh_start"]["bag"]["arm"] == "arm7" and info["fresh_start"]["build_report"]
    agent = _node_params(info, "agent_node")
    assert agent["output_mode"] == "joint_trajectory" and agent["camera_topics"] == [
        "/scene_camera/image_raw", "/wrist_camera/image_raw"]
    assert _node_params(info, "sim_arm_node")["arm"] == "arm7"
    assert info["parameters"]["agent_node"]["files"][-1].endswith("config/demo_arm7.yaml")
    assert info["summary"]["episodes"] >= 3 and all(rc == 0 for rc in info["exit_codes"].values()), info
    rows = [line.split(",") for line in (out / "episodes.csv").read_text().splitlines()[1:]]
    counted = [row for row in rows if row[3] == "1"]
    assert counted and all(int(row[9]) >= 0.9 * int(row[8]) for row in counted)  # the agent commanded the arm
    assert set(info["summary"]["alpha"]["encoders"]) == {"kp_scene", "kp_wrist"}
    assert info["offline_check"]["start"]["episodes"] == 2 and info["offline_check"]["bc"]["episodes"] == 2
    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import TransitionSpec

    spec = TransitionSpec.from_bundle(b)  # the arm's own transitions, and the bag's demonstrations
    assert ReplayStore(out / "replay", spec.schema(), spec.fingerprint(), readonly=True).count > 0
    assert ReplayStore(Path(info["fresh_start"]["store"]), spec.schema(), spec.fingerprint(),
                       readonly=True).count == 4 * 20
