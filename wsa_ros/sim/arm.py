"""The simulated arm behind real-arm topics, ROS-free: what ``sim_arm_node`` steps and publishes.

:class:`SimArm` owns the sim chosen by ``SimConfig.arm``: ``reacher``
(:class:`wsa_ros.sim.reacher.ReacherSim`, 2 joints, joint **velocity** commands, one camera,
0.02 s steps) or ``arm7`` (:class:`wsa_ros.sim.arm7.Arm7Sim`, 7 joints, joint **position**
commands, cameras ``scene`` and ``wrist``, 0.05 s steps). It also owns the command gate (the
latest valid command, dropped after ``command_timeout_s`` without a new one, as a
forward_command_controller or a joint_trajectory_controller with a command timeout would:
Reacher is then commanded to stop (zero velocities), arm7 to hold the position it had when
the command was dropped (or its start pose, before any command in an episode)) and the
episode bookkeeping. Each :meth:`SimArm.tick` advances sim time by one step and returns what
the node publishes, in order: the reward and success of the step just taken (none on a reset
tick: they belong to the action that was executing and must arrive before the agent can act
on the new frame), the new frames and joint state, and at an episode's end its kind and
statistics (after its final frame). The next tick resets the episode and returns its first
frame.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from wsa_ros.config import ConfigError, SimConfig

ARMS = ("reacher", "arm7")
COMMAND_UNITS = {"velocity": "joint velocities", "position": "joint positions"}


def default_camera_topics(arm: str, camera_names, camera_topic: str = "/camera/image_raw") -> list[str]:
    """The image topics when ``camera_topics`` is empty: ``camera_topic`` for the one-camera
    Reacher, ``/<camera>_camera/image_raw`` for each of arm7's cameras."""
    if arm == "reacher":
        return [camera_topic]
    return [f"/{c}_camera/image_raw" for c in camera_names]


def resolve_camera_topics(cfg: SimConfig, camera_names) -> list[str]:
    """One image topic per sim camera, in camera order (``cfg.camera_topics`` or the defaults)."""
    names = list(camera_names)
    topics = list(cfg.camera_topics) or default_camera_topics(cfg.arm, names, cfg.camera_topic)
    if len(topics) != len(names):
        raise ConfigError(f"camera_topics has {len(topics)} topic(s) {topics} for the {cfg.arm} arm's "
                          f"{len(names)} camera(s) {names}: give one per camera, in that order (or none)")
    if len(set(topics)) != len(topics) or not all(topics):
        raise ConfigError(f"camera_topics {topics}: each camera needs its own, non-empty topic")
    return topics


class CommandGate:
    """The latest valid command and its age.

    ``offer(values, now_ns)`` returns None when accepted, else the reason it was rejected;
    ``current(now_ns)`` is the command to apply (zeros when none arrived within the timeout).
    ``units`` only names what the values are in rejection messages.
    """

    def __init__(self, n: int, timeout_s: float, units: str = "joint velocities"):
        self.n = int(n)
        self.units = units
        self.timeout_ns = int(round(timeout_s * 1e9))
        self._cmd = np.zeros(self.n)
        self._t_ns: int | None = None
        self.accepted = 0
        self.rejected = 0
        self.timeouts = 0  # live command -> stopped transitions
        self.last_reject = ""
        self._live = False

    def offer(self, values, now_ns: int) -> str | None:
        try:
            a = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (self.n,):
            return self.refuse(f"expected {self.n} {self.units}, got {0 if a is None else a.size}")
        if not np.all(np.isfinite(a)):
            return self.refuse(f"non-finite value in {a.tolist()}")
        self._cmd, self._t_ns = a, int(now_ns)
        self.accepted += 1
        return None

    def refuse(self, reason: str) -> str:
        self.rejected += 1
        self.last_reject = reason
        return reason

    def current(self, now_ns: int) -> tuple[np.ndarray, bool]:
        """(command, live): live is False when no valid command is younger than the timeout."""
        live = self._t_ns is not None and now_ns - self._t_ns <= self.timeout_ns
        if self._live and not live:
            self.timeouts += 1
        self._live = live
        return (self._cmd.copy() if live else np.zeros(self.n)), live


@dataclass
class Tick:
    sim_ns: int  # sim time after this tick
    obs: dict  # the new frame and joint readings
    reward: float | None = None  # None on a reset tick
    success: bool | None = None
    end: str | None = None  # terminated | truncated at an episode's last tick
    stats: dict | None = None  # the finished episode's statistics


def sim_class(arm: str):
    """The sim class of ``arm`` (imported on demand): ReacherSim or Arm7Sim; each module's
    ``SUCCESS_RADIUS`` is its default success radius (m)."""
    if arm == "arm7":
        from wsa_ros.sim.arm7 import Arm7Sim
        return Arm7Sim
    if arm == "reacher":
        from wsa_ros.sim.reacher import ReacherSim
        return ReacherSim
    raise ConfigError(f"arm '{arm}' is not one of {ARMS}")


def success_radius(arm: str) -> float:
    """The default success radius (m) of ``arm``'s sim."""
    import sys

    return float(sys.modules[sim_class(arm).__module__].SUCCESS_RADIUS)


class SimArm:
    def __init__(self, cfg: SimConfig):
        Sim = sim_class(cfg.arm)
        self.cfg = cfg
        self.camera_names = list(getattr(Sim, "camera_names", ("camera",)))
        self.camera_topics = resolve_camera_topics(cfg, self.camera_names)  # before the renderer exists
        self.sim = Sim(seed=cfg.seed, image_size=cfg.image_size, max_steps=cfg.max_episode_steps)
        self.command_mode = getattr(self.sim, "action_mode", "velocity")  # position | velocity
        self.joint_names = list(self.sim.joint_names)
        self.dt_ns = int(round(self.sim.dt * 1e9))
        self.gate = CommandGate(len(self.joint_names), cfg.command_timeout_s, COMMAND_UNITS[self.command_mode])
        self.sim_ns = 0  # sim time of the last tick
        self.ticks = 0
        self.episode = -1
        self._need_reset = True
        self._hold: np.ndarray | None = None  # position arms: the pose held without a live command
        self._ep: dict = {}
        self._rate = (time.monotonic(), 0, 0)  # wall, ticks, sim_ns at the last diagnostics

    def frames(self, obs: dict) -> list[tuple[str, np.ndarray]]:
        """(camera name, frame) per camera, in camera order (Reacher's one camera is ``camera``)."""
        if "images" in obs:
            return [(c, obs["images"][c]) for c in self.camera_names]
        return [(self.camera_names[0], obs["image"])]

    # ------------------------------------------------------------------ commands
    def offer_array(self, values, now_ns: int) -> str | None:
        """Float64MultiArray data in the arm's command units, in joint order: joint velocities
        (rad/s) for Reacher, joint positions (rad) for arm7."""
        return self.gate.offer(values, now_ns)

    def offer_velocities(self, values, now_ns: int) -> str | None:
        """Float64MultiArray data: joint velocities (rad/s) in joint order (Reacher; for arm7
        the values are positions, see :meth:`offer_array`)."""
        return self.gate.offer(values, now_ns)

    def offer_trajectory(self, joint_names, first_point_values, now_ns: int) -> str | None:
        """JointTrajectory: the first point's values matched by joint name, in any order; the
        node passes the point's ``velocities`` for Reacher and its ``positions`` for arm7
        (:attr:`trajectory_field`)."""
        names, vals = list(joint_names), list(first_point_values if first_point_values is not None else [])
        if len(vals) != len(names) or set(names) != set(self.joint_names):
            one, many = ("velocity", "velocities") if self.command_mode == "velocity" else ("position", "positions")
            return self.gate.refuse(f"trajectory needs one {one} per joint {self.joint_names} in its first point, "
                                    f"got joints {names} with {len(vals)} {many}")
        v = dict(zip(names, vals))
        return self.gate.offer([v.get(n, math.nan) for n in self.joint_names], now_ns)

    @property
    def trajectory_field(self) -> str:
        """The JointTrajectoryPoint field the arm's commands are read from."""
        return "positions" if self.command_mode == "position" else "velocities"

    # ------------------------------------------------------------------ stepping
    def tick(self, stamp_ns: int, now_ns: int) -> Tick:
        """One sim step (``dt_ns``); ``stamp_ns`` is the stamp of what it publishes, ``now_ns`` the
        command gate's clock (sim time with /clock, else wall time)."""
        self.ticks += 1
        self.sim_ns += self.dt_ns
        if self._need_reset:
            obs = self.sim.reset()
            self.episode += 1
            self._need_reset = False
            self._hold = np.asarray(obs["position"], dtype=np.float64).copy()
            self._ep = {"return": 0.0, "steps": 0, "reached": False, "live_steps": 0, "start_stamp_ns": stamp_ns}
            return Tick(self.sim_ns, obs)
        cmd, live = self.gate.current(now_ns)
        if self.command_mode == "position":
            if live:
                self._hold = None
            else:  # hold where the arm is when the command stream stops (not at the origin)
                if self._hold is None:
                    self._hold = self.sim.joint_positions
                cmd = self._hold.copy()
        obs, reward, terminated, truncated, info = self.sim.step(cmd)
        ep = self._ep
        ep["return"] += reward
        ep["steps"] += 1
        ep["live_steps"] += int(live)
        ep["reached"] |= info["success"]
        out = Tick(self.sim_ns, obs, float(reward), bool(info["success"]))
        if terminated or truncated:
            out.end = "terminated" if terminated else "truncated"
            self._need_reset = True
            out.stats = {"episode": self.episode, "end": out.end, "steps": ep["steps"], "return": f"{ep['return']:.6f}",
                         "success": info["success"], "reached": ep["reached"],
                         "final_distance": f"{info['distance']:.6f}", "commanded_steps": ep["live_steps"],
                         "start_stamp_ns": ep["start_stamp_ns"], "end_stamp_ns": stamp_ns,
                         "rejected_commands": self.gate.rejected}
        return out

    def diagnostics(self) -> dict:
        """Rates since the last call and the command counters."""
        wall0, ticks0, sim0 = self._rate
        now = time.monotonic()
        self._rate = (now, self.ticks, self.sim_ns)
        dt = max(now - wall0, 1e-9)
        return {"steps_per_s": f"{(self.ticks - ticks0) / dt:.1f}",
                "real_time_factor": f"{(self.sim_ns - sim0) * 1e-9 / dt:.3f}",
                "target_real_time_factor": self.cfg.real_time_factor, "episodes": max(self.episode, 0),
                "ticks": self.ticks, "accepted_commands": self.gate.accepted,
                "rejected_commands": self.gate.rejected, "command_timeouts": self.gate.timeouts,
                "last_reject": self.gate.last_reject}

    def close(self) -> None:
        self.sim.close()
