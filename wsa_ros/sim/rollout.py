"""The one episode loop for every offline evaluation and rollout on a simulated arm.

    res = evaluate(sim, engine_policy(engine), episodes=30, seed=10_000)

:func:`run_episode` steps ``act(obs) -> action`` (joint units) from an observation until the
episode ends: ``terminated`` or ``truncated`` (the time limit), whichever comes first;
success is the sim's ``info["success"]`` at the last step, ``reached`` at any step. The
bundle builder's DAgger rollouts and evaluation, the demo's paired offline check, the
learning benchmark and the tests all use it, so they agree on what an episode is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from wsa_ros.runtime.observation import build_proprio


@dataclass
class EpisodeResult:
    success: bool  # at the last step
    reached: bool  # at any step
    final_distance: float
    ret: float
    steps: int
    terminated: bool


def run_episode(sim, obs: dict, act: Callable[[dict], np.ndarray], on_step: Callable | None = None) -> EpisodeResult:
    """Run one episode from ``obs`` (what ``sim.reset`` returned). ``on_step(obs, action,
    reward, next_obs, info, terminated, truncated)`` sees every step."""
    ret, reached, steps, info = 0.0, False, 0, sim.info()
    terminated = truncated = False
    while not (terminated or truncated):
        a = act(obs)
        nobs, r, terminated, truncated, info = sim.step(a)
        if on_step is not None:
            on_step(obs, a, r, nobs, info, terminated, truncated)
        ret += r
        steps += 1
        reached = reached or bool(info["success"])
        obs = nobs
    return EpisodeResult(bool(info["success"]), reached, float(info["distance"]), float(ret), steps, bool(terminated))


@dataclass
class Evaluation:
    episodes: list[EpisodeResult] = field(default_factory=list)
    seed: int = 0

    def summary(self) -> dict:
        e = self.episodes
        return {"episodes": len(e), "seed": self.seed,
                "success_final": float(np.mean([x.success for x in e])) if e else float("nan"),
                "success_any": float(np.mean([x.reached for x in e])) if e else float("nan"),
                "within_5cm_final": float(np.mean([x.final_distance < 0.05 for x in e])) if e else float("nan"),
                "final_distance_m": float(np.mean([x.final_distance for x in e])) if e else float("nan"),
                "return": float(np.mean([x.ret for x in e])) if e else float("nan")}


def evaluate(sim, act: Callable[[dict], np.ndarray], episodes: int, seed: int, arms: Sequence[str] | None = None,
             on_step: Callable | None = None, on_episode: Callable | None = None) -> Evaluation:
    """``episodes`` episodes, episode ``i`` from ``sim.reset(seed=seed + i)`` (start pose
    ``arms[i % len(arms)]`` when given), so two policies meet the very same targets and poses."""
    out = Evaluation(seed=seed)
    for i in range(episodes):
        obs = sim.reset(seed=seed + i, arm=arms[i % len(arms)]) if arms else sim.reset(seed=seed + i)
        out.episodes.append(run_episode(sim, obs, act, on_step))
        if on_episode is not None:
            on_episode(i, out.episodes[-1])
    return out


def sim_proprio(spec, obs: dict) -> np.ndarray | None:
    """A sim observation's joint readings -> the bundle's proprioception vector (the agent's rule)."""
    if spec is None:
        return None
    return build_proprio(spec, obs["joint_names"], obs["position"], obs["velocity"])


def engine_policy(engine, alphas: list | None = None) -> Callable[[dict], np.ndarray]:
    """A bundle run by ONNX Runtime, the agent's own path: obs -> action (joint units)."""
    b = engine.bundle
    cams = list(b.cameras)

    def act(obs: dict) -> np.ndarray:
        # a sim with several cameras gives obs["images"] by camera name; Reacher's one frame is obs["image"]
        images = obs.get("images") or {cams[0]: obs["image"]}
        missing = [c for c in cams if c not in images]
        if missing:
            raise KeyError(f"the bundle reads camera(s) {missing}; the sim has {sorted(images)}")
        r = engine.step({c: images[c] for c in cams}, sim_proprio(b.proprio, obs))
        if alphas is not None:
            alphas.append(r.alpha)
        return r.action

    return act
