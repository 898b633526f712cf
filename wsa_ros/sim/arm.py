"""The simulated arm behind real-arm topics, ROS-free: what ``sim_arm_node`` steps and publishes.

:class:`SimArm` owns a :class:`wsa_ros.sim.reacher.ReacherSim`, the command gate (the latest
valid velocity command, stopped after ``command_timeout_s`` without a new one, as a
forward_command_controller with a timeout would) and the episode bookkeeping. Each
:meth:`SimArm.tick` advances sim time by one 0.02 s step and returns what the node publishes,
in order: the reward and success of the step just taken (none on a reset tick: they belong
to the action that was executing and must arrive before the agent can act on the new frame),
the new frame and joint state, and at an episode's end its kind and statistics (after its
final frame). The next tick resets the episode and returns its first frame.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from wsa_ros.config import SimConfig


class CommandGate:
    """The latest valid velocity command and its age.

    ``offer(values, now_ns)`` returns None when accepted, else the reason it was rejected;
    ``current(now_ns)`` is the command to apply (zeros when none arrived within the timeout).
    """

    def __init__(self, n: int, timeout_s: float):
        self.n = int(n)
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
            return self.refuse(f"expected {self.n} joint velocities, got {0 if a is None else a.size}")
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


class SimArm:
    def __init__(self, cfg: SimConfig):
        from wsa_ros.sim.reacher import ReacherSim

        self.cfg = cfg
        self.sim = ReacherSim(seed=cfg.seed, image_size=cfg.image_size, max_steps=cfg.max_episode_steps)
        self.joint_names = list(self.sim.joint_names)
        self.dt_ns = int(round(self.sim.dt * 1e9))
        self.gate = CommandGate(len(self.joint_names), cfg.command_timeout_s)
        self.sim_ns = 0  # sim time of the last tick
        self.ticks = 0
        self.episode = -1
        self._need_reset = True
        self._ep: dict = {}
        self._rate = (time.monotonic(), 0, 0)  # wall, ticks, sim_ns at the last diagnostics

    # ------------------------------------------------------------------ commands
    def offer_velocities(self, values, now_ns: int) -> str | None:
        """Float64MultiArray data: joint velocities (rad/s) in joint order."""
        return self.gate.offer(values, now_ns)

    def offer_trajectory(self, joint_names, first_point_velocities, now_ns: int) -> str | None:
        """JointTrajectory: the first point's velocities, matched by joint name."""
        names, vel = list(joint_names), list(first_point_velocities or [])
        if len(vel) != len(names) or set(names) != set(self.joint_names):
            return self.gate.refuse(f"trajectory needs one velocity per joint {self.joint_names} in its first point, "
                                    f"got joints {names} with {len(vel)} velocities")
        v = dict(zip(names, vel))
        return self.gate.offer([v.get(n, math.nan) for n in self.joint_names], now_ns)

    # ------------------------------------------------------------------ stepping
    def tick(self, stamp_ns: int, now_ns: int) -> Tick:
        """One 0.02 s step; ``stamp_ns`` is the stamp of what it publishes, ``now_ns`` the
        command gate's clock (sim time with /clock, else wall time)."""
        self.ticks += 1
        self.sim_ns += self.dt_ns
        if self._need_reset:
            obs = self.sim.reset()
            self.episode += 1
            self._need_reset = False
            self._ep = {"return": 0.0, "steps": 0, "reached": False, "live_steps": 0, "start_stamp_ns": stamp_ns}
            return Tick(self.sim_ns, obs)
        cmd, live = self.gate.current(now_ns)
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
