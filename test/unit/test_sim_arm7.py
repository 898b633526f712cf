"""Arm7Sim (7 joints, two cameras, joint position targets): determinism, tracking, the cameras,
limits and errors, the scripted expert; SimArm's arm7 wiring and the arm7 expert bag."""
import hashlib
from pathlib import Path

import mujoco
import numpy as np
import pytest

from wsa_ros.sim.arm7 import (
    CAMERA_NAMES,
    HOME,
    JOINT_NAMES,
    SUCCESS_HEIGHT,
    TABLE_Z,
    TARGET_REGION,
    Arm7Sim,
    expert_action,
)


def _digest(obs):
    return (tuple(hashlib.sha256(obs["images"][c].tobytes()).hexdigest() for c in CAMERA_NAMES),
            obs["position"].tobytes(), obs["velocity"].tobytes())


def _run(seed, actions, image_size=48):
    out = []
    with Arm7Sim(seed=seed, image_size=image_size, max_steps=50) as sim:
        out.append((_digest(sim.reset()), sim.target.tobytes()))
        for a in actions:
            obs, *_ = sim.step(a)
            out.append((_digest(obs), sim.target.tobytes()))
        out.append((_digest(sim.reset()), sim.target.tobytes()))  # the second episode continues the stream
    return out


def _red(image) -> int:
    """Target-coloured pixels: the disc is rgba (0.9, 0.2, 0.2), the only red in the scene."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(np.sum((r > g + 80) & (r > b + 80)))


def _free_targets(sim, offset):
    """The start pose moved by ``offset`` rad per joint towards the middle of its range."""
    q = sim.joint_positions
    mid = 0.5 * (sim.action_low + sim.action_high)
    return np.clip(q + offset * np.sign(mid - q), sim.action_low, sim.action_high)


def test_same_seed_gives_identical_images_and_joint_states():
    acts = [np.asarray(HOME) + d for d in np.random.default_rng(0).uniform(-0.2, 0.2, (6, 7))]
    a, b = _run(3, acts), _run(3, acts)
    assert a == b
    c = _run(4, acts)
    assert a[0][1] != c[0][1]  # another seed: another target ...
    assert a[0][0][0][0] != c[0][0][0][0] and a[0][0][1] != c[0][0][1]  # ... picture and start pose
    assert len({x[0][0][0] for x in a}) > 4 and len({x[0][0][1] for x in a}) > 4  # both cameras' frames change
    assert a[0][1] != a[-1][1]  # a new episode, a new target


def test_observation_layout_reward_and_task_geometry():
    with Arm7Sim(seed=1, image_size=(60, 80), max_steps=3) as sim:
        obs = sim.reset()
        assert list(obs["images"]) == list(CAMERA_NAMES) == ["scene", "wrist"] and sim.camera_names == CAMERA_NAMES
        for img in obs["images"].values():
            assert img.shape == (60, 80, 3) and img.dtype == np.uint8 and img.std() > 5
        assert obs["image"] is obs["images"]["scene"]
        assert obs["joint_names"] == list(JOINT_NAMES) == [sim.model.joint(i).name for i in range(7)]
        assert obs["position"].shape == (7,) and np.all(obs["velocity"] == 0.0)
        assert sim.dt == pytest.approx(0.05)
        np.testing.assert_allclose(sim.action_low, sim.model.jnt_range[:, 0])
        np.testing.assert_allclose(sim.action_high, sim.model.jnt_range[:, 1])
        assert np.all(np.abs(obs["position"] - np.clip(HOME, sim.action_low, sim.action_high)) <= 0.1 + 1e-9)
        # the success point: SUCCESS_HEIGHT above a disc centre on the table, inside the target area
        t = sim.target
        (x0, x1), (y0, y1) = TARGET_REGION
        assert x0 <= t[0] <= x1 and y0 <= t[1] <= y1 and t[2] == pytest.approx(TABLE_Z + SUCCESS_HEIGHT)
        tips = [sim.data.geom_xpos[sim.model.geom(n).id] for n in ("tip_arml", "tip_armr")]
        np.testing.assert_allclose(sim.fingertip, 0.5 * (tips[0] + tips[1]))
        hold = sim.command
        for i in range(3):
            obs, r, term, trunc, info = sim.step(hold)  # holding the command: no action-change penalty
            assert term is False and trunc == (i == 2)
        assert set(info) >= {"distance", "success", "target", "fingertip"} and info["target"].shape == (3,)
        assert r == pytest.approx(-info["distance"])
        jump = np.clip(hold + 0.3, sim.action_low, sim.action_high)
        _, r2, _, _, _ = sim.step(hold + 0.3)  # a jump of the targets costs
        penalty = 0.01 * np.sum(((jump - hold) / (0.5 * (sim.action_high - sim.action_low))) ** 2)
        assert penalty > 1e-3 and r2 == pytest.approx(-sim.distance - penalty)
    assert Arm7Sim.action_mode == "position"


def test_position_targets_are_tracked():
    """A step of the target by 0.05 / 0.2 rad on every joint (towards the middle of its range,
    the gripper in free space) is tracked to < 5 mrad after 0.55 s / < 2 mrad after 1.05 s
    (measured: 4.1 / 1.2 mrad)."""
    with Arm7Sim(seed=0, render=False) as sim:
        for offset, steps, bound in ((0.05, 11, 0.005), (0.2, 21, 0.002)):
            sim.reset()
            goal = _free_targets(sim, offset)
            for _ in range(steps):
                obs, *_ = sim.step(goal)
            err = np.abs(obs["position"] - goal).max()
            assert err < bound, (offset, err)
            assert sim.data.ncon == 0  # nothing touched the table
            for _ in range(20):
                obs, *_ = sim.step(goal)
            assert np.abs(obs["position"] - goal).max() < 1e-4 and np.abs(obs["velocity"]).max() < 1e-3


def test_targets_are_clipped_to_the_joint_limits():
    with Arm7Sim(seed=2, render=False) as sim:
        sim.reset()
        far = np.where(np.arange(7) % 2 == 0, 10.0, -10.0)
        for _ in range(60):
            obs, *_ = sim.step(far)
        expect = np.where(far > 0, sim.action_high, sim.action_low)
        np.testing.assert_array_equal(sim.command, expect)
        q = obs["position"]
        assert np.all(q >= sim.action_low - 0.02) and np.all(q <= sim.action_high + 0.02)


def test_bad_use_raises_clear_errors():
    sim = Arm7Sim(seed=0, render=False)
    with pytest.raises(RuntimeError, match="reset"):
        sim.step(HOME)
    sim.reset()
    for bad in ([0.0] * 6, [0.0] * 8, [[0.0] * 7] * 2, [0.0] * 6 + [float("nan")], [float("inf")] * 7, "abc", None):
        with pytest.raises(ValueError, match="7 finite joint positions"):
            sim.step(bad)
    with pytest.raises(RuntimeError, match="render=False"):
        sim.render()
    sim.close()
    with pytest.raises(RuntimeError, match="closed"):
        sim.reset()
    with pytest.raises(ValueError, match="too small"):
        Arm7Sim(image_size=8, render=False)
    with pytest.raises(ValueError, match="arm start"):
        Arm7Sim(arm="sideways", render=False)
    with Arm7Sim(seed=0, image_size=32) as sim:
        sim.reset()
        with pytest.raises(ValueError, match="camera 'top'"):
            sim.render("top")


def test_both_cameras_see_the_target():
    """The scene camera sees the disc anywhere in the target area (its corners included); the
    wrist camera, with the tips on the success point, sees it large (16-18 % measured)."""
    with Arm7Sim(seed=5, image_size=84) as sim:
        sim.reset()
        (x0, x1), (y0, y1) = TARGET_REGION
        m, d = sim.model, sim.data
        for x in (x0, x1):
            for y in (y0, y1):
                d.mocap_pos[0] = (x, y, TABLE_Z + 0.0005)
                mujoco.mj_forward(m, d)
                assert _red(sim.render("scene")) >= 15, (x, y)
        d.mocap_pos[0] = (9.0, 9.0, -9.0)  # away: no red anywhere else in the pictures
        mujoco.mj_forward(m, d)
        assert _red(sim.render("scene")) == 0 and _red(sim.render("wrist")) == 0
        obs = sim.reset()
        assert _red(obs["images"]["scene"]) >= 15
        for _ in range(40):
            obs, _, _, _, info = sim.step(expert_action(sim))
        assert info["distance"] < 0.02
        assert _red(obs["images"]["wrist"]) > 0.1 * 84 * 84
        assert _red(obs["images"]["scene"]) >= 10  # the gripper over the disc does not hide it


def _expert_success(seed, episodes, noise):
    rng = np.random.default_rng(100 + seed)
    final, reached = [], []
    with Arm7Sim(seed=seed, max_steps=100, render=False) as sim:
        for _ in range(episodes):
            sim.reset()
            hit = False
            for _ in range(sim.max_steps):
                a = expert_action(sim)
                assert np.all(a >= sim.action_low) and np.all(a <= sim.action_high)
                if noise:
                    a = np.clip(a + rng.normal(0.0, noise, 7), sim.action_low, sim.action_high)
                _, _, _, trunc, info = sim.step(a)
                hit = hit or info["success"]
                if trunc:
                    break
            final.append(info["success"])
            reached.append(hit)
    return float(np.mean(final)), float(np.mean(reached))


def test_expert_reaches_the_target():
    """Measured over 50 seeded episodes (benchmarks/bench_sim_arm7.py --expert 50): success at the
    last step 1.00 without noise, 0.98 with N(0, 0.05 rad) on every joint target (0.76 with
    0.1 rad); here 20 episodes of another seed."""
    final, reached = _expert_success(7, 20, 0.0)
    assert final >= 0.95 and reached == 1.0
    final, reached = _expert_success(8, 20, 0.05)
    assert final >= 0.85 and reached >= 0.95


def test_holding_the_start_pose_rarely_succeeds():
    with Arm7Sim(seed=7, render=False) as sim:
        hits = []
        for _ in range(10):
            sim.reset()
            hold = sim.command
            for _ in range(10):
                _, _, _, _, info = sim.step(hold)
            hits.append(info["success"])
    assert np.mean(hits) <= 0.1


def test_start_poses():
    with Arm7Sim(seed=2, render=False) as sim:
        home = np.clip(HOME, sim.action_low, sim.action_high)
        d = [np.abs(sim.reset()["position"] - home).max() for _ in range(6)]
        r = [np.abs(sim.reset(arm="random")["position"] - home).max() for _ in range(6)]
        assert max(d) <= 0.1 + 1e-9 and max(r) <= 0.3 + 1e-9 and max(r) > 0.15
        a = sim.reset(seed=11)["position"]
        b = sim.reset(seed=11)["position"]
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ SimArm (arm7)
def test_sim_arm_arm7_commands_hold_and_topics():
    from wsa_ros.config import ConfigError, SimConfig, load
    from wsa_ros.sim.arm import SimArm

    cfg = load(Path(__file__).resolve().parents[2] / "config" / "sim_arm7.yaml", SimConfig)
    assert cfg.arm == "arm7" and cfg.command_type == "joint_trajectory"
    arm = SimArm(cfg)
    try:
        assert arm.camera_topics == ["/scene_camera/image_raw", "/wrist_camera/image_raw"]
        assert arm.joint_names == list(JOINT_NAMES) and arm.trajectory_field == "positions"
        assert arm.dt_ns == 50_000_000
        t = arm.tick(0, 0)
        assert [c for c, _ in arm.frames(t.obs)] == ["scene", "wrist"]
        q0 = t.obs["position"]
        for _ in range(5):  # no command: arm7 holds its start pose (Reacher would stop)
            t = arm.tick(0, 0)
        np.testing.assert_allclose(t.obs["position"], q0, atol=1e-9)
        sim = arm.sim
        goal = _free_targets(sim, 0.1)
        names = list(reversed(JOINT_NAMES))  # by name, any order
        now = 1_000_000_000
        assert arm.offer_trajectory(names, list(reversed(goal)), now) is None
        for _ in range(3):
            t = arm.tick(0, now)  # live
        moving = t.obs["position"]
        assert np.abs(moving - q0).max() > 0.02
        # the command times out (0.2 s): the arm holds where it was then, not the old target or zero
        t = arm.tick(0, now + 300_000_000)
        held = sim.command
        for _ in range(30):
            t = arm.tick(0, now + 300_000_000)
        np.testing.assert_array_equal(sim.command, held)
        assert np.abs(held - moving).max() < 0.05 and np.abs(held - goal).max() > 0.01
        assert np.abs(t.obs["position"] - held).max() < 2e-3
        assert "7 joint positions" in arm.offer_array([0.0] * 2, now)
        assert "one position per joint" in arm.offer_trajectory(names[:3], [0.0] * 3, now)
        assert arm.offer_array([float("nan")] * 7, now) is not None
    finally:
        arm.close()
    with pytest.raises(ConfigError, match="camera_topics has 1"):
        SimArm(SimConfig(arm="arm7", camera_topics=["/only_one"]))
    two = SimArm(SimConfig(arm="arm7", camera_topics=["/a/image", "/b/image"], image_size=32))
    assert two.camera_topics == ["/a/image", "/b/image"]
    two.close()
    r = SimArm(SimConfig(image_size=32))  # Reacher: unchanged
    assert r.camera_topics == ["/camera/image_raw"] and r.camera_names == ["camera"]
    assert r.trajectory_field == "velocities" and r.dt_ns == 20_000_000
    r.close()


def test_expert_bag_records_arm7_episodes(tmp_path):
    from wsa_ros.runtime.bags import iter_messages, summary
    from wsa_ros.sim.expert_bag import record_expert_bag

    info = record_expert_bag(tmp_path / "a" / "bag", 2, 5, 3, 32, episode_topics=True, arm="arm7")
    assert info["arm"] == "arm7" and info["steps"] == 10
    topics = summary(info["path"]).topics
    counts = {t: s.count for t, s in topics.items()}
    assert counts == {"/joint_states": 12, "/scene_camera/image_raw": 12, "/wrist_camera/image_raw": 12,
                      "/joint_trajectory_controller/joint_trajectory": 10, "/wsa/reward": 10,
                      "/wsa/success": 2, "/wsa/episode_end": 2}
    assert topics["/joint_trajectory_controller/joint_trajectory"].msgtype == "trajectory_msgs/msg/JointTrajectory"
    traj = list(iter_messages(info["path"], ["/joint_trajectory_controller/joint_trajectory"], decode=True))
    assert traj[1].timestamp - traj[0].timestamp == 50_000_000  # one 0.05 s step per command
    assert list(traj[0].msg.joint_names) == list(JOINT_NAMES) and len(traj[0].msg.points[0].positions) == 7
    wrist = list(iter_messages(info["path"], ["/wrist_camera/image_raw"], decode=True))
    assert wrist[0].msg.header.frame_id == "wrist" and (wrist[0].msg.height, wrist[0].msg.width) == (32, 32)
    again = record_expert_bag(tmp_path / "b" / "bag", 2, 5, 3, 32, episode_topics=True, arm="arm7")
    assert (tmp_path / "a" / "bag" / "bag.mcap").read_bytes() == (Path(again["path"]) / "bag.mcap").read_bytes()
    with pytest.raises(ValueError, match="arm 'ur5'"):
        record_expert_bag(tmp_path / "c", 1, 1, 0, arm="ur5")


def test_exploration_noise_on_a_position_arm_stays_within_the_limits():
    from wsa_ros.sim.expert import ExplorationNoise, expert_episodes

    with Arm7Sim(seed=4, max_steps=12, render=False) as sim:
        eps = list(expert_episodes(sim, np.random.default_rng(0), 3, ExplorationNoise()))
    acts = np.array([s.action for e in eps for s in e.steps])
    assert acts.shape == (36, 7)
    assert np.all(acts >= sim.action_low) and np.all(acts <= sim.action_high)
    assert np.all(np.abs(acts - np.array([s.obs["position"] for e in eps for s in e.steps])) < 1.0)
