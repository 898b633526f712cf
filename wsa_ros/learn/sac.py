"""SAC with RLPD demonstration mixing for the WSA head, on stored encoder embeddings.

Read it top to bottom like a CleanRL file: the hyper-parameters are one dataclass,
:class:`wsa_ros.config.SACConfig` (the node's ``learner.*`` parameters, with their help
texts and ranges: one set for the node, the demo, the benchmarks and the tests), the replay
(:class:`wsa_ros.learn.replay.Replay`: online and demonstration buffers, each observation
stored once, embeddings in float16; why not torchrl's buffers is said there), then one
:meth:`SACLearner.update` holding the whole algorithm. The training run around it
(checkpoints, logs, the update-to-data budget) is :mod:`wsa_ros.learn.trainer`.

What trains: the WSA fusion (adapters, context adapter, shared scorer), the tanh-Gaussian
actor and the twin-Q critic of :class:`wsa_ros.model.wsa.FusionPolicy`. What does not: the
encoders - they are frozen ONNX files, and the store already holds their embeddings.

The algorithm (SAC v2, Haarnoja et al. 2018, with a shared trunk as in DrQ / SAC-AE)::

    state      = fusion(obs)                    trained by the critic loss (+ demo BC, below)
    next_state = target_fusion(next_obs)        Polyak copy of the trunk, no gradient
    a', logp'  ~ pi(next_state)
    y          = r + discount * (1 - terminated) * (min(Q1t, Q2t)(next_state, a') - T * logp')
                 (n_step > 1: r the discounted sum of up to n rewards of the episode, next_state the
                 state after the last of them, discount ** n; the replay's ``take`` does the sums)
    critic     = (Q1(state, a) - y)^2 + (Q2(state, a) - y)^2
    actor      = T * logp(a~pi(state)) - min(Q1, Q2)(state, a~pi)   (state detached; only the
                                                                      actor's weights move)
    demo BC    = demo_bc_weight * ||tanh(mean(state)) - a||^2 on the batch's demonstration rows:
                 added to the actor loss and to the critic loss (so it reaches the trunk); with
                 demo_bc_q_filter the actor's term keeps only rows with Q(s, a) > Q(s, a~pi)
    temperature= -log T * (logp + target_entropy)
    Polyak: target critics and target trunk with rate tau

Bootstrapping stops only at ``terminated``; a time-limit ``truncated`` step still bootstraps.

Why not torchrl's ``SACLoss``: it was tried first (trunk outside the loss, Q heads and actor
wrapped as tensordict modules, twin Q through vmap). It is correct but its fixed cost per
update (vmap, tensordict plumbing, distribution objects) measured 2.5-3x that of this plain
version on the 2-core machine, with a throughput target of 500 updates/s; and it keeps the
twin critics in stacked copies that must be copied back into the module for every export.

RLPD (Ball et al. 2023): each batch is ``demo_ratio`` demonstrations (the demo store plus
every online step a human took over) and the rest online data. One thread adds and samples
(the training thread), so there is no add/sample race.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from wsa_ros.config import SACConfig
from wsa_ros.learn.replay import Batch
from wsa_ros.model.wsa import FusionPolicy


def _embs(obs: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obs.items() if k != "proprio"}


def _row_gap(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||a - target||^2 per row (actions in [-1, 1])."""
    return (a - target).square().sum(-1)


def _action_gap(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||a - target||^2: the prior and demo BC terms."""
    return _row_gap(a, target).mean()


def demo_bc(a_pi: torch.Tensor, a_demo: torch.Tensor, q_demo: torch.Tensor | None = None,
            q_pi: torch.Tensor | None = None) -> torch.Tensor:
    """The actor's behaviour-cloning term on demonstration rows: mean ||a_pi - a_demo||^2. With
    ``q_demo`` (the critic's value of each demonstrated action) only the rows where that beats
    the critic's value of the policy's own action count (Nair et al. 2018's Q filter); the mean
    stays over all rows, so the term shrinks as the policy overtakes the demonstrations."""
    if q_demo is None:
        return _action_gap(a_pi, a_demo)
    gap = _row_gap(a_pi, a_demo)
    return (gap * (q_demo > q_pi).to(gap.dtype)).mean()


# =============================================================================== learner
class SACLearner:
    """One ``update(batch)`` = one critic step (+ actor and temperature steps every
    ``actor_every``) + Polyak target updates; ``policy`` is trained in place."""

    def __init__(self, policy: FusionPolicy, cfg: SACConfig, proprio_mean=None, proprio_std=None,
                 device: str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.policy = policy.to(self.device).train()
        self.target = copy.deepcopy(self.policy).requires_grad_(False)  # trunk + critics used
        p = self.policy.proprio_dim
        self.p_mean = torch.as_tensor(np.zeros(p) if proprio_mean is None else proprio_mean, dtype=torch.float32,
                                      device=self.device)
        self.p_std = torch.as_tensor(np.ones(p) if proprio_std is None else proprio_std, dtype=torch.float32,
                                     device=self.device)
        a = self.policy.action_dim
        self.target_entropy = -cfg.target_entropy_scale * a
        self.log_temp = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.critic_params = self.policy.fusion_parameters() + self.policy.critic_parameters()
        self.actor_params = self.policy.actor_parameters()
        fused = self.device.type in ("cpu", "cuda")
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.lr, fused=fused)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.lr, fused=fused)
        self.temp_opt = torch.optim.Adam([self.log_temp], lr=cfg.lr, fused=fused)
        self._online = self.policy.fusion_parameters() + self.policy.critic_parameters()
        self._target = self.target.fusion_parameters() + self.target.critic_parameters()
        self.prior = None
        if cfg.prior_weight > 0:  # the starting policy (e.g. behaviour cloning), frozen
            self.prior = copy.deepcopy(self.policy).requires_grad_(False)
        self.updates = 0

    def proprio(self, obs: dict) -> torch.Tensor | None:
        if not self.policy.proprio_dim:
            return None
        return (obs["proprio"] - self.p_mean) / self.p_std

    def _step(self, opt, params, loss) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
        opt.step()

    def sample(self, replay) -> Batch:
        """A batch by the settings (batch size, RLPD's demo ratio, n-step returns): the one rule the
        trainer, the benchmarks and the tests sample by."""
        cfg = self.cfg
        return replay.sample(cfg.batch_size, cfg.demo_ratio, cfg.n_step, cfg.discount)

    # ------------------------------------------------------------------ the update
    def update(self, batch: Batch, metrics: bool = True) -> dict[str, float]:
        """One update on ``batch``; ``metrics=False`` skips reading the losses back (the
        trainer asks for them only on the updates it logs)."""
        pol, tgt, cfg = self.policy, self.target, self.cfg
        if self.device.type != "cpu":
            batch = batch.to(self.device)
        obs, nxt, action = batch.obs, batch.next_obs, batch.action
        temp = self.log_temp.detach().exp()

        # ---- critic (the fusion trunk learns here, after the critic warm-up)
        warmup = self.updates < cfg.critic_warmup
        with torch.no_grad():
            next_state, _ = tgt.features(_embs(nxt), self.proprio(nxt), check=False)
            next_a, next_logp = pol.squash(*pol.actor_from_state(next_state))
            q1_t, q2_t = tgt.critic_from_state(next_state, next_a)
            disc = cfg.discount if batch.discount is None else batch.discount  # n-step: discount ** steps
            y = batch.reward + disc * (~batch.terminated) * (torch.min(q1_t, q2_t) - temp * next_logp)
        with torch.set_grad_enabled(not warmup):
            state, alpha_w = pol.features(_embs(obs), self.proprio(obs), check=False)
        q1, q2 = pol.critic_from_state(state, action)
        loss_critic = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        demo_rows = None
        if cfg.demo_bc_weight > 0 and not warmup and bool(batch.demo.any()):
            demo_rows = batch.demo
            # behaviour cloning on the demonstrations shapes the trunk too (the actor's own
            # gradient never reaches it): the trunk's optimizer takes w * BC with the TD loss
            bc_trunk = demo_bc(torch.tanh(pol.actor_from_state(state[demo_rows])[0]), action[demo_rows])
            loss_critic = loss_critic + cfg.demo_bc_weight * bc_trunk
        self._step(self.critic_opt, self.critic_params, loss_critic)
        out: dict[str, float] = {}

        # ---- actor and temperature (trunk output detached; only actor weights get gradients)
        actor_step = not warmup and self.updates % cfg.actor_every == 0
        if actor_step:
            s = state.detach()
            mean, log_std = pol.actor_from_state(s)
            a_pi, logp = pol.squash(mean, log_std)
            q_pi = torch.min(*pol.critic_from_state(s, a_pi))
            loss_actor = (temp * logp - q_pi).mean()
            prior_gap = bc = None
            if self.prior is not None:
                with torch.no_grad():
                    a0 = torch.tanh(self.prior.actor(_embs(obs), self.proprio(obs))[0])
                prior_gap = _action_gap(torch.tanh(mean), a0)
                loss_actor = loss_actor + cfg.prior_weight * prior_gap
            if demo_rows is not None:
                q_demo = q_pi_demo = None
                if cfg.demo_bc_q_filter:  # the demonstrated actions' values from this update's critic pass
                    q_demo, q_pi_demo = torch.min(q1, q2).detach()[demo_rows], q_pi.detach()[demo_rows]
                bc = demo_bc(torch.tanh(mean[demo_rows]), action[demo_rows], q_demo, q_pi_demo)
                loss_actor = loss_actor + cfg.demo_bc_weight * bc
            grads = torch.autograd.grad(loss_actor, self.actor_params)
            for p_, g in zip(self.actor_params, grads):
                p_.grad = g
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.actor_params, cfg.grad_clip, foreach=True)
            self.actor_opt.step()
            # temperature: loss -(log T * (logp + target)).mean(), whose gradient is written directly
            # (one scalar: an autograd pass for it cost a fifth of the actor step)
            mean_logp = logp.detach().mean()
            self.log_temp.grad = -(mean_logp + self.target_entropy).reshape(())
            self.temp_opt.step()

        # ---- Polyak averaging of the target trunk and critics
        with torch.no_grad():
            torch._foreach_lerp_(self._target, self._online, cfg.tau)
        self.updates += 1
        if not metrics:
            return out
        out.update(loss_critic=loss_critic.item(), q=q1.detach().mean().item(), target_q=y.mean().item(),
                   temperature=float(temp))
        if actor_step:
            out.update(loss_actor=loss_actor.item(),
                       loss_temperature=float(-(self.log_temp.detach() * (mean_logp + self.target_entropy))),
                       entropy=-mean_logp.item())
            if prior_gap is not None:
                out["prior_gap"] = prior_gap.item()
            if bc is not None:
                out["demo_bc"] = bc.item()
        aw = alpha_w.detach()
        out["wsa_alpha_entropy"] = float(-(aw.clamp_min(1e-8).log() * aw).sum(-1).mean())
        for name, v in zip(pol.feature_names, aw.mean(0).tolist()):
            out[f"wsa_alpha_{name}"] = v
        return out

    # ------------------------------------------------------------------ acting (ROS-free use)
    @torch.no_grad()
    def act(self, embs: dict[str, np.ndarray], proprio=None, deterministic: bool = True,
            generator: torch.Generator | None = None) -> np.ndarray:
        """One action in [-1, 1] for un-batched embeddings (evaluation, tests, sim loops)."""
        e = {k: torch.as_tensor(np.asarray(v, np.float32), device=self.device).unsqueeze(0) for k, v in embs.items()}
        p = None
        if self.policy.proprio_dim:
            p = (torch.as_tensor(np.asarray(proprio, np.float32), device=self.device).unsqueeze(0)
                 - self.p_mean) / self.p_std
        mean, log_std, _ = self.policy.actor(e, p)
        if deterministic:
            return torch.tanh(mean)[0].cpu().numpy()
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return torch.tanh(mean + log_std.exp() * noise)[0].cpu().numpy()

    # ------------------------------------------------------------------ export and resume
    def snapshot(self) -> FusionPolicy:
        """A CPU copy of the current policy (to export while training goes on)."""
        return copy.deepcopy(self.policy).cpu().eval()

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(), "target": self.target.state_dict(),
            "log_temp": self.log_temp.detach().clone(), "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "temp_opt": self.temp_opt.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.policy.load_state_dict(sd["policy"])
        self.target.load_state_dict(sd["target"])
        with torch.no_grad():
            self.log_temp.copy_(sd["log_temp"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self.actor_opt.load_state_dict(sd["actor_opt"])
        self.temp_opt.load_state_dict(sd["temp_opt"])
        self.updates = int(sd["updates"])
