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


def record_expert_bag(out, episodes: int, steps: int, seed: int, image_size: int = 84, noise: float = 0.3,
                      storage: str = "mcap", compress: bool = True, episode_topics: bool = False) -> dict:
    """Write the bag to ``out`` (a new folder); ``noise``: action noise std in rad/s.
    Returns {"path", "episodes", "steps", "seed", "success_rate"} (success at each episode's last step)."""
    from wsa_ros.runtime.bags import (BagWriter, QosInfo, make_bool, make_float64, make_float64_array, make_image,
                        make_joint_state, make_string)
    from wsa_ros.sim.expert import GaussianNoise, expert_episodes
    from wsa_ros.sim.reacher import ReacherSim

    rng = np.random.default_rng(seed)
    qos = QosInfo(reliable=True, transient_local=False, depth=10)
    topics = [(JOINT_TOPIC, "sensor_msgs/msg/JointState"), (CAMERA_TOPIC, "sensor_msgs/msg/Image"),
              (COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray"), (REWARD_TOPIC, "std_msgs/msg/Float64")]
    if episode_topics:
        topics += [(SUCCESS_TOPIC, "std_msgs/msg/Bool"), (EPISODE_END_TOPIC, "std_msgs/msg/String")]
    out = Path(out)
    successes = []
    with ReacherSim(seed=seed, image_size=image_size, max_steps=steps) as sim, \
            BagWriter(out, storage=storage, compress=compress) as w:
        for topic, typ in topics:
            w.add_topic(topic, typ, qos)

        def observe(t: int, obs: dict) -> None:
            w.write(JOINT_TOPIC, "sensor_msgs/msg/JointState", t,
                    make_joint_state(t, obs["joint_names"], obs["position"], obs["velocity"]))
            w.write(CAMERA_TOPIC, "sensor_msgs/msg/Image", t + 5_000_000,
                    make_image(t + 5_000_000, obs["image"], frame_id="camera"))

        k = 0
        for ep in expert_episodes(sim, rng, episodes, GaussianNoise(noise)):
            for s in ep.steps:
                t = T0_NS + k * STEP_NS
                observe(t, s.obs)
                w.write(COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray", t + 8_000_000, make_float64_array(s.action))
                w.write(REWARD_TOPIC, "std_msgs/msg/Float64", t + 15_000_000, make_float64(s.reward))
                k += 1
            successes.append(ep.success)
            if episode_topics:  # the final frame, then how the episode ended (as sim_arm_node publishes)
                t = T0_NS + k * STEP_NS
                observe(t, ep.steps[-1].next_obs)
                w.write(SUCCESS_TOPIC, "std_msgs/msg/Bool", t + 10_000_000, make_bool(ep.success))
                w.write(EPISODE_END_TOPIC, "std_msgs/msg/String", t + 12_000_000, make_string("truncated"))
                k += 1
    return {"path": str(out), "episodes": episodes, "steps": episodes * steps, "seed": seed,
            "success_rate": float(np.mean(successes)) if successes else float("nan")}
