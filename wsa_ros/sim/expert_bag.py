"""Record a rosbag of the simulated arm driven by its scripted expert (no ROS needed).

What ``ros2 bag record`` would capture from ``sim_arm_node`` while a teleoperator (here
:mod:`wsa_ros.sim.expert`, inverse kinematics + P control, with Gaussian noise)
drives it, in sim time (one 0.02 s physics step per command, 50 Hz)::

  /joint_states                         sensor_msgs/msg/JointState   at t_k
  /camera/image_raw                     sensor_msgs/msg/Image rgb8   at t_k + 5 ms (camera latency)
  /forward_command_controller/commands  std_msgs/msg/Float64MultiArray (joint velocities, rad/s)
                                                                     at t_k + 8 ms
  /wsa/reward                           std_msgs/msg/Float64         at t_k + 15 ms
  with ``episode_topics``, after each episode's final frame (t_T + 5 ms):
  /wsa/success                          std_msgs/msg/Bool            at t_T + 10 ms
  /wsa/episode_end                      std_msgs/msg/String "truncated" at t_T + 12 ms

Topic names are the agent's, the simulated arm's and the fine-tuner's defaults, so
``wsa import-demos``, ``wsa eval-bag``, ``wsa screen`` and ``replay`` read such a bag without
options. The same arguments give byte-identical CDR records.

With ``arm="arm7"`` the bag is the 7-joint arm's (:mod:`wsa_ros.sim.arm7`, what
``sim_arm_node`` with ``config/sim_arm7.yaml`` publishes), one 0.05 s step per command (20 Hz),
the same offsets within a step::

  /joint_states                                  sensor_msgs/msg/JointState (7 joints)  at t_k
  /scene_camera/image_raw, /wrist_camera/image_raw  sensor_msgs/msg/Image rgb8 (frame_id: the
                                                 camera's name)                         at t_k + 5 ms
  /joint_trajectory_controller/joint_trajectory  trajectory_msgs/msg/JointTrajectory: one point,
                                                 the sent joint positions (rad), time_from_start
                                                 0.05 s                                 at t_k + 8 ms
  /wsa/reward, and with ``episode_topics`` /wsa/success and /wsa/episode_end, as above.

The expert's noise (``noise``) is then in rad (default 0.05; Reacher's default: 0.3 rad/s).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CAMERA_TOPIC = "/camera/image_raw"
JOINT_TOPIC = "/joint_states"
COMMAND_TOPIC = "/forward_command_controller/commands"
REWARD_TOPIC = "/wsa/reward"
SUCCESS_TOPIC = "/wsa/success"
EPISODE_END_TOPIC = "/wsa/episode_end"
T0_NS = 1_700_000_000 * 1_000_000_000  # a fixed wall-clock-like start time
STEP_NS = 20_000_000
ARM7_COMMAND_TOPIC = "/joint_trajectory_controller/joint_trajectory"
ARM7_STEP_NS = 50_000_000
DEFAULT_NOISE = {"reacher": 0.3, "arm7": 0.05}  # rad/s (Reacher's velocities), rad (arm7's positions)


def record_expert_bag(out, episodes: int, steps: int, seed: int, image_size: int = 84, noise: float | None = None,
                      storage: str = "mcap", compress: bool = True, episode_topics: bool = False,
                      arm: str = "reacher") -> dict:
    """Write the bag to ``out`` (a new folder); ``arm``: ``reacher`` or ``arm7``; ``noise``:
    action noise std in the arm's units (None: ``DEFAULT_NOISE``). Returns {"path", "arm",
    "episodes", "steps", "seed", "success_rate"} (success at each episode's last step)."""
    from wsa_ros.runtime.bags import (BagWriter, QosInfo, make_bool, make_float64, make_float64_array, make_image,
                        make_joint_state, make_joint_trajectory, make_string)
    from wsa_ros.sim.expert import GaussianNoise, expert_episodes

    if arm not in DEFAULT_NOISE:
        raise ValueError(f"arm '{arm}' is not one of {tuple(DEFAULT_NOISE)}")
    noise = DEFAULT_NOISE[arm] if noise is None else noise
    if arm == "arm7":
        from wsa_ros.sim.arm import default_camera_topics
        from wsa_ros.sim.arm7 import Arm7Sim

        sim = Arm7Sim(seed=seed, image_size=image_size, max_steps=steps)
        cameras = list(zip(sim.camera_names, default_camera_topics(arm, sim.camera_names)))
        step_ns = int(round(sim.dt * 1e9))
        command = (ARM7_COMMAND_TOPIC, "trajectory_msgs/msg/JointTrajectory",
                   lambda t, a: make_joint_trajectory(t, sim.joint_names, positions=a, time_from_start_ns=step_ns))
    else:
        from wsa_ros.sim.reacher import ReacherSim

        sim = ReacherSim(seed=seed, image_size=image_size, max_steps=steps)
        cameras = [("camera", CAMERA_TOPIC)]
        step_ns = STEP_NS
        command = (COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray", lambda t, a: make_float64_array(a))
    rng = np.random.default_rng(seed)
    qos = QosInfo(reliable=True, transient_local=False, depth=10)
    topics = [(JOINT_TOPIC, "sensor_msgs/msg/JointState")] + [(t, "sensor_msgs/msg/Image") for _, t in cameras]
    topics += [command[:2], (REWARD_TOPIC, "std_msgs/msg/Float64")]
    if episode_topics:
        topics += [(SUCCESS_TOPIC, "std_msgs/msg/Bool"), (EPISODE_END_TOPIC, "std_msgs/msg/String")]
    out = Path(out)
    successes = []
    with sim, BagWriter(out, storage=storage, compress=compress) as w:
        for topic, typ in topics:
            w.add_topic(topic, typ, qos)

        def observe(t: int, obs: dict) -> None:
            w.write(JOINT_TOPIC, "sensor_msgs/msg/JointState", t,
                    make_joint_state(t, obs["joint_names"], obs["position"], obs["velocity"]))
            images = obs.get("images", {"camera": obs["image"]})
            for name, topic in cameras:
                w.write(topic, "sensor_msgs/msg/Image", t + 5_000_000, make_image(t + 5_000_000, images[name], frame_id=name))

        k = 0
        for ep in expert_episodes(sim, rng, episodes, GaussianNoise(noise)):
            for s in ep.steps:
                t = T0_NS + k * step_ns
                observe(t, s.obs)
                w.write(command[0], command[1], t + 8_000_000, command[2](t + 8_000_000, s.action))
                w.write(REWARD_TOPIC, "std_msgs/msg/Float64", t + 15_000_000, make_float64(s.reward))
                k += 1
            successes.append(ep.success)
            if episode_topics:  # the final frame, then how the episode ended (as sim_arm_node publishes)
                t = T0_NS + k * step_ns
                observe(t, ep.steps[-1].next_obs)
                w.write(SUCCESS_TOPIC, "std_msgs/msg/Bool", t + 10_000_000, make_bool(ep.success))
                w.write(EPISODE_END_TOPIC, "std_msgs/msg/String", t + 12_000_000, make_string("truncated"))
                k += 1
    return {"path": str(out), "arm": arm, "episodes": episodes, "steps": episodes * steps, "seed": seed,
            "success_rate": float(np.mean(successes)) if successes else float("nan")}
