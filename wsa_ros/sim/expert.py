"""The scripted expert's demonstrations: the one generator behind the default bundle's
training data, the demonstration rosbag (``expert_bag``) and the learning benchmark.

    for ep in expert_episodes(sim, rng, episodes=40, noise=GaussianNoise(0.6)):
        for s in ep.steps: ...   # s.obs, s.action (sent), s.label (the clean expert action), ...

The expert (:func:`expert_of`: for Reacher :func:`wsa_ros.sim.reacher.expert_action`, inverse
kinematics + a joint-space P controller, joint velocities; for the 7-joint arm
:func:`wsa_ros.sim.arm7.expert_action`, a damped-least-squares inverse-kinematics step, joint
position targets) labels every visited state; what is sent is the expert's action with noise:
:class:`GaussianNoise` (std in the action's units, per joint: rad/s for Reacher, rad for arm7),
or :class:`ExplorationNoise` (a random walk of random length first, then the expert with a
per-episode noise level: random motion and good behaviour, as the method's notes recommend
for pre-training encoders). All randomness comes from ``rng``, in a fixed order, so the same
seed gives the same steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from wsa_ros.sim.reacher import expert_action

#: ExplorationNoise's scale for position-commanded arms (rad): the walk's step and the expert's
#: noise are in units of this, as they are in units of the velocity bound for velocity arms
POSITION_NOISE_SCALE = 0.1


def expert_of(sim) -> Callable:
    """The scripted expert for ``sim``: ``expert(sim) -> action`` in the sim's action units."""
    if getattr(sim, "action_mode", "velocity") == "position":
        from wsa_ros.sim.arm7 import expert_action as arm7_expert

        return arm7_expert
    return expert_action


@dataclass
class ExpertStep:
    obs: dict  # the observation the action was chosen on
    action: np.ndarray  # sent (joint units)
    label: np.ndarray  # the expert's own action at this state (joint units)
    reward: float
    next_obs: dict
    info: dict
    terminated: bool
    truncated: bool


@dataclass
class ExpertEpisode:
    index: int
    steps: list[ExpertStep] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.steps[-1].info["success"]) if self.steps else False


class GaussianNoise:
    """expert + N(0, std) per joint (``std`` scalar or per joint, joint units), clipped to the bounds."""

    def __init__(self, std):
        self.std = std

    def begin(self, rng, sim, episode: int) -> None:
        pass

    def action(self, rng, sim, t: int, label: np.ndarray) -> np.ndarray:
        return np.clip(label + rng.normal(0.0, self.std, size=label.shape), sim.action_low, sim.action_high)


class ExplorationNoise:
    """Per episode: a random walk for a random number of steps (none in every third episode),
    then the expert with N(0, sigma) noise, sigma ~ U(0.1, 1.0) x the scale. Velocity arms
    (Reacher): a random-velocity walk, the scale is the velocity bound. Position arms (arm7):
    the walk is an offset from the measured joint positions, the scale ``POSITION_NOISE_SCALE``
    rad per joint; actions are clipped to the joint limits."""

    def begin(self, rng, sim, episode: int) -> None:
        self.position = getattr(sim, "action_mode", "velocity") == "position"
        scale = np.full_like(sim.action_high, POSITION_NOISE_SCALE) if self.position else sim.action_high
        self.prefix = 0 if episode % 3 == 0 else int(rng.integers(1, max(2, sim.max_steps // 2)))
        self.sigma = float(rng.uniform(0.1, 1.0)) * scale
        self.scale = scale
        self.walk = np.zeros_like(sim.action_high)

    def action(self, rng, sim, t: int, label: np.ndarray) -> np.ndarray:
        if self.position:
            if t < self.prefix:
                self.walk = 0.8 * self.walk + rng.normal(0.0, 0.6, label.shape) * self.scale
                return np.clip(sim.joint_positions + self.walk, sim.action_low, sim.action_high)
            return np.clip(label + rng.normal(0.0, 1.0, label.shape) * self.sigma, sim.action_low, sim.action_high)
        high = sim.action_high
        if t < self.prefix:
            self.walk = 0.8 * self.walk + rng.normal(0.0, 0.6, label.shape) * high
            return np.clip(self.walk, -high, high)
        return np.clip(label + rng.normal(0.0, 1.0, label.shape) * self.sigma, -high, high)


def expert_episodes(sim, rng: np.random.Generator, episodes: int, noise=None,
                    starts: Sequence[str] | None = None) -> Iterator[ExpertEpisode]:
    """``episodes`` expert episodes on ``sim`` (each from ``sim.reset()``, the sim's own seed
    stream; start pose ``starts[i % len(starts)]`` when given), until the episode ends."""
    noise = noise or GaussianNoise(0.0)
    expert = expert_of(sim)
    for i in range(episodes):
        obs = sim.reset(arm=starts[i % len(starts)]) if starts else sim.reset()
        noise.begin(rng, sim, i)
        ep = ExpertEpisode(i)
        for t in range(sim.max_steps):
            label = expert(sim)
            a = noise.action(rng, sim, t, label)
            nobs, r, term, trunc, info = sim.step(a)
            ep.steps.append(ExpertStep(obs, a, label, r, nobs, info, term, trunc))
            obs = nobs
            if term or trunc:
                break
        yield ep
