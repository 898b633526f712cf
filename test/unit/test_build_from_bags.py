"""`wsa build-bundle --from-bags BAG... --robot ROBOT.yaml`: a bundle for the arm a robot file
describes, from its recordings alone (encoders trained on the bags' frames, behaviour cloning on
the recorded commands through the agent's observation rule, held-out episodes)."""
import json
import shutil

import numpy as np
import pytest

from wsa_ros import config
from wsa_ros.model.build_default import main as build_main
from wsa_ros.runtime.bundle import load_bundle
from wsa_ros.runtime.engine import Engine
from wsa_ros.sim.expert_bag import record_expert_bag

ROBOT = config.package_share() / "config" / "robots" / "reacher.yaml"
TINY = ["--tiny", "--image-size", "48", "--bc-steps", "300", "--quiet"]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    d = tmp_path_factory.mktemp("bags")
    rec = record_expert_bag(d / "demo", episodes=6, steps=25, seed=3, image_size=48, episode_topics=True)
    return rec["path"]


def test_builds_a_bundle_for_the_robot_file_from_its_recording(bag, tmp_path):
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(bag), "--robot", str(ROBOT), "--out", str(out), *TINY]) == 0
    b = load_bundle(out)
    robot = config.load_robot(ROBOT)
    assert config.robot_action_spec(robot) == {"mode": b.action.mode, "joint_names": b.action.joint_names,
                                               "low": b.action.low, "high": b.action.high, "units": b.action.units}
    assert b.proprio.fields == robot.proprio_fields and b.name == robot.name
    assert {e.camera for e in b.encoders} == set(robot.camera_names)
    roles = {e.name: e.role for e in b.encoders}
    assert roles == {"ae_front": "context", "kp_front": "feature"}
    report = json.loads((out / "report.json").read_text())
    held = report["heldout"]
    assert held["episodes"]["held_out"] >= 1 and held["observations"] > 0
    assert len(held["mae"]) == 2 and all(np.isfinite(held["mae"]))
    # the policy learned the commands: on held-out episodes it beats predicting the mean command
    assert np.mean(held["mae"]) < np.mean(held["baseline_mae"])
    assert report["health"]["verdict"] in ("OK", "WARN")
    eng = Engine(out, providers=["cpu"])
    frame = np.zeros((48, 48, 3), np.uint8)
    r = eng.step({"front": frame}, eng.bundle.proprio and np.zeros(eng.bundle.proprio.dim, np.float32))
    assert np.all(np.abs(r.action) <= 3.0 + 1e-6)


def test_a_recording_without_the_command_topic_fails_and_writes_nothing(bag, tmp_path, capsys):
    robot = tmp_path / "robot.yaml"
    robot.write_text(ROBOT.read_text().replace("command_topic: /forward_command_controller/commands",
                                               "command_topic: /arm/commands"))
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(bag), "--robot", str(robot), "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert "/arm/commands" in err
    assert not out.exists()


def test_joint_names_that_do_not_match_the_robot_file_are_named(bag, tmp_path, capsys):
    robot = tmp_path / "robot.yaml"
    robot.write_text(ROBOT.read_text().replace("joint_names: [joint0, joint1]", "joint_names: [shoulder, elbow]")
                     .replace("continuous: [joint0]", "continuous: [shoulder]"))
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(bag), "--robot", str(robot), "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert "shoulder" in err and "joint0" in err
    assert not out.exists()


def test_bad_arguments_exit_2_with_the_cause(bag, tmp_path, capsys):
    assert build_main(["--from-bags", str(bag), "--out", str(tmp_path / "b"), *TINY]) == 2
    assert "--robot" in capsys.readouterr().err
    bad = tmp_path / "r.yaml"
    bad.write_text(ROBOT.read_text().replace("velocity_limits: [3.0, 3.0]", "velocity_limits: [3.0]"))
    assert build_main(["--from-bags", str(bag), "--robot", str(bad), "--out", str(tmp_path / "b"), *TINY]) == 2
    assert "velocity_limits" in capsys.readouterr().err
    assert build_main(["--from-bags", str(tmp_path / "nope"), "--robot", str(ROBOT), "--out", str(tmp_path / "b"),
                       *TINY]) in (1, 2)
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_recording_without_rewards_still_builds_for_behaviour_cloning(bag, tmp_path):
    robot = tmp_path / "robot.yaml"
    robot.write_text(ROBOT.read_text() + "    reward_topic: /not/recorded\n")
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(bag), "--robot", str(robot), "--out", str(out), *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["observation_pairs"] == sum(r["transitions"] for r in report["import"]) > 100


def test_an_onnx_backbone_from_elsewhere_joins_as_a_fused_model(bag, tmp_path, capsys):
    first = tmp_path / "first"
    assert build_main(["--from-bags", str(bag), "--robot", str(ROBOT), "--out", str(first), *TINY]) == 0
    backbone = tmp_path / "backbone.onnx"
    shutil.copyfile(first / "encoders" / "kp_front.onnx", backbone)  # any uint8 NHWC encoder exported elsewhere
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(bag), "--robot", str(ROBOT), "--out", str(out), *TINY,
                       "--onnx-encoder", f"ext={backbone}@front"]) == 0
    b = load_bundle(out)
    ext = [e for e in b.encoders if e.name == "ext"]
    assert ext and ext[0].camera == "front" and ext[0].role == "feature"
    assert json.loads((out / "report.json").read_text())["heldout"]["alpha_encoders"] == ["kp_front", "ext"]
    assert build_main(["--from-bags", str(bag), "--robot", str(ROBOT), "--out", str(tmp_path / "x"), *TINY,
                       "--onnx-encoder", f"ext={backbone}@wrist"]) == 2
    assert "camera 'wrist' is not one of the robot's cameras ['front']" in capsys.readouterr().err


def test_the_seven_joint_arm_with_two_cameras_from_its_own_bag(tmp_path):
    """The whole path on arm7: its expert's bag (two cameras, JointTrajectory positions) -> a bundle
    with an encoder per camera and the robot file's 7 position joints -> the engine driving the sim."""
    from wsa_ros.sim.arm7 import Arm7Sim
    from wsa_ros.sim.rollout import engine_policy, evaluate

    robot_file = config.package_share() / "config" / "robots" / "arm7.yaml"
    rec = record_expert_bag(tmp_path / "bag", episodes=4, steps=20, seed=4, image_size=48, arm="arm7",
                            episode_topics=True)
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(rec["path"]), "--robot", str(robot_file), "--out", str(out), *TINY]) == 0
    b = load_bundle(out)
    robot = config.load_robot(robot_file)
    assert b.action.mode == "position" and b.action.joint_names == robot.joint_names
    assert {e.name: e.camera for e in b.encoders} == {"ae_scene": "scene", "kp_scene": "scene", "kp_wrist": "wrist"}
    eng = Engine(out, providers=["cpu"])
    sent = []
    act = engine_policy(eng)
    with Arm7Sim(seed=9, image_size=48, max_steps=5) as sim:
        evaluate(sim, lambda obs: sent.append(act(obs)) or sent[-1], 1, 9)
    a = np.stack(sent)
    assert a.shape == (5, 7) and np.all(a >= np.asarray(b.action.low) - 1e-6) and np.all(a <= np.asarray(b.action.high) + 1e-6)
    # eval-bag with the robot file alone (its topics and rate): one action per recorded frame, compared
    from wsa_ros.tools import eval_bag

    ev = tmp_path / "eval"
    assert eval_bag.main([str(rec["path"]), "--bundle", str(out), "--robot", str(robot_file), "--providers", "cpu",
                          "--out", str(ev), "--no-plots", "--quiet"]) == 0
    rows = eval_bag.read_table(ev / "steps.csv")
    assert abs(len(rows) - 4 * 20) <= 4, len(rows)  # 20 Hz ticks over 4 x 20 frames at 20 Hz
    assert {f"action_{j}" for j in robot.joint_names} <= set(rows[0]) and "recorded_r_elbow_flex_joint" in rows[0]


def test_screening_keeps_the_model_that_predicts_the_commands(bag, tmp_path):
    """--screen: a backbone that sees nothing (a constant output) beside the trained keypoints is
    screened out by the probe on the training episodes; the bundle fuses only what was kept."""
    import torch

    class Blind(torch.nn.Module):
        def forward(self, x):  # uint8 NHWC -> 8 values that never change
            return x[:, :1, :1, :1].float().reshape(-1, 1).repeat(1, 8) * 0.0 + 1.0

    blind = tmp_path / "blind.onnx"
    torch.onnx.export(Blind(), (torch.zeros(1, 48, 48, 3, dtype=torch.uint8),), str(blind), input_names=["image"],
                      output_names=["embedding"], dynamic_axes={"image": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    out = tmp_path / "bundle"
    assert build_main(["--from-bags", str(bag), "--robot", str(ROBOT), "--out", str(out), *TINY,
                       "--onnx-encoder", f"blind={blind}@front", "--screen"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["screen"]["kept"] == ["kp_front"], rep["screen"]
    assert rep["screen"]["r2_test"]["kp_front"] > rep["screen"]["r2_test"]["blind"]
    assert {e.name for e in load_bundle(out).encoders if e.role == "feature"} == {"kp_front"}


def test_build_progress_bars_on_a_terminal_only(monkeypatch):
    """The builds' progress bars (tqdm) draw on a terminal; quiet, or with stderr piped (CI, a
    log file), there is none and the periodic log lines are the record."""
    import io

    from wsa_ros.model.fit import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, log, shown in ((Tty(), print, True), (Tty(), None, False), (io.StringIO(), print, False)):
        monkeypatch.setattr("sys.stderr", stream)
        with progress(7, "keypoints", log) as bar:
            for _ in range(7):
                bar.update(1)
        text = stream.getvalue()
        assert ("keypoints" in text and "/7 " in text) == shown, (log, text)
