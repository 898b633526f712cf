"""Behaviour cloning: pre-train the WSA fusion and actor on demonstrations before any
online step (ROS-free).

Loss: mean squared error between the actor's deterministic action ``tanh(mean)`` (what the
exported ``policy.onnx`` computes) and the demonstrated action, both in [-1, 1]. The fusion
trunk (adapters, context adapter, shared scorer) and the actor train; the critic and the
actor's log-std head are left alone (SAC tunes exploration afterwards). Batches come from
the demonstration buffer of a :class:`wsa_ros.learn.sac.Replay`.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from wsa_ros.model.wsa import FusionPolicy
from wsa_ros.learn.replay import Replay
from wsa_ros.learn.sac import _embs


def behaviour_clone(policy: FusionPolicy, replay: Replay, steps: int, batch_size: int = 256, lr: float = 3e-4,
                    proprio_mean=None, proprio_std=None, seed: int = 0,
                    log: Callable[[int, dict], None] | None = None, log_every: int = 100) -> dict:
    """Train ``policy`` in place for ``steps`` steps on ``replay.demos``; returns the first
    and last losses and the time taken. Raises ValueError without demonstrations."""
    if len(replay.demos) == 0:
        raise ValueError("behaviour cloning needs demonstrations; the demonstration buffer is empty "
                         "(import some with `wsa import-demos`)")
    torch.manual_seed(seed)
    dev = next(policy.parameters()).device
    p = policy.proprio_dim
    mean = torch.zeros(p) if proprio_mean is None else torch.as_tensor(proprio_mean, dtype=torch.float32)
    std = torch.ones(p) if proprio_std is None else torch.as_tensor(proprio_std, dtype=torch.float32)
    mean, std = mean.to(dev), std.to(dev)
    params = policy.fusion_parameters() + policy.actor_parameters()
    opt = torch.optim.Adam(params, lr=lr)
    policy.train()
    first = last = math.nan
    t0 = time.perf_counter()
    for step in range(int(steps)):
        batch = replay.demos.sample(batch_size).to(dev)
        obs = batch.obs
        pr = (obs["proprio"] - mean) / std if p else None
        a, _alpha = policy.deterministic_action(_embs(obs), pr)
        loss = F.mse_loss(a, batch.action)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        if step == 0:
            first = last
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log(step, {"bc_loss": last})
    return {"first_loss": first, "last_loss": last, "steps": int(steps), "seconds": time.perf_counter() - t0}
