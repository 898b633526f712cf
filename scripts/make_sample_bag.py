#!/usr/bin/env python3
"""Record the repository's sample bag from the simulated arm (no ROS needed).

    python scripts/make_sample_bag.py [OUT] [--episodes 30] [--steps 20] [--storage mcap]

The bag holds what ``ros2 bag record`` would capture from the simulated arm driven by a
scripted expert (inverse kinematics + P control, with exploration noise), in sim time
(one 0.02 s physics step per control step, 50 Hz):

  /joint_states                         sensor_msgs/msg/JointState   at t_k
  /camera/image_raw                     sensor_msgs/msg/Image rgb8   at t_k + 5 ms (camera latency)
  /forward_command_controller/commands  std_msgs/msg/Float64MultiArray (joint velocities, rad/s)
                                                                    at t_k + 8 ms
  /wsa/reward                           std_msgs/msg/Float64         at t_k + 15 ms

Topic names match the agent's and the simulated arm's default config, so ``wsa eval-bag``, ``wsa screen`` and
``replay`` work on it without options. The same seed gives the same messages (byte-identical CDR records).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "test" / "data" / "sample_bag"

CAMERA_TOPIC = "/camera/image_raw"
JOINT_TOPIC = "/joint_states"
COMMAND_TOPIC = "/forward_command_controller/commands"
REWARD_TOPIC = "/wsa/reward"
T0_NS = 1_700_000_000 * 1_000_000_000  # a fixed wall-clock-like start time


def make_sample_bag(out, episodes: int = 30, steps: int = 20, seed: int = 7, image_size: int = 84,
                    noise: float = 0.3, storage: str = "mcap", compress: bool = True) -> Path:
    sys.path.insert(0, str(ROOT))
    from wsa_ros.bags import (BagWriter, QosInfo, make_float64, make_float64_array, make_image,
                              make_joint_state)
    from wsa_ros.sim.reacher import ReacherSim, expert_action

    rng = np.random.default_rng(seed)
    sensor_qos = QosInfo(reliable=True, transient_local=False, depth=10)
    dt_ns = 20_000_000
    out = Path(out)
    with ReacherSim(seed=seed, image_size=image_size, max_steps=steps) as sim, \
            BagWriter(out, storage=storage, compress=compress) as w:
        for topic, typ in ((JOINT_TOPIC, "sensor_msgs/msg/JointState"), (CAMERA_TOPIC, "sensor_msgs/msg/Image"),
                           (COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray"), (REWARD_TOPIC, "std_msgs/msg/Float64")):
            w.add_topic(topic, typ, sensor_qos)
        k = 0
        for _ep in range(episodes):
            obs = sim.reset()
            for _ in range(steps):
                t = T0_NS + k * dt_ns
                w.write(JOINT_TOPIC, "sensor_msgs/msg/JointState", t,
                        make_joint_state(t, obs["joint_names"], obs["position"], obs["velocity"]))
                w.write(CAMERA_TOPIC, "sensor_msgs/msg/Image", t + 5_000_000,
                        make_image(t + 5_000_000, obs["image"], frame_id="camera"))
                a = expert_action(sim) + rng.normal(0.0, noise, size=2)
                a = np.clip(a, sim.action_low, sim.action_high)
                w.write(COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray", t + 8_000_000, make_float64_array(a))
                obs, reward, _term, _trunc, _info = sim.step(a)
                w.write(REWARD_TOPIC, "std_msgs/msg/Float64", t + 15_000_000, make_float64(reward))
                k += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help=f"bag folder to create (default {DEFAULT_OUT})")
    ap.add_argument("--episodes", type=int, default=30, help="episodes (each a new target and start pose)")
    ap.add_argument("--steps", type=int, default=20, help="steps per episode")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        if not args.force:
            print(f"{out} exists; pass --force to replace it", file=sys.stderr)
            return 1
        import shutil

        shutil.rmtree(out)
    make_sample_bag(out, args.episodes, args.steps, args.seed, args.image_size, storage=args.storage)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
