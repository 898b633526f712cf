"""SAC with RLPD demonstration mixing for the WSA head, on stored encoder embeddings.

Read it top to bottom like a CleanRL file: the hyper-parameters (:class:`SACConfig`), the
replay (:class:`Replay`: two torchrl replay buffers, online and demonstrations), then one
:meth:`SACLearner.update` holding the whole algorithm.

What trains: the WSA fusion (adapters, context adapter, shared scorer), the tanh-Gaussian
actor and the twin-Q critic of :class:`wsa_ros.model.wsa.FusionPolicy`. What does not: the
encoders - they are frozen ONNX files, and the store already holds their embeddings.

The algorithm (SAC v2, Haarnoja et al. 2018, with a shared trunk as in DrQ / SAC-AE)::

    state      = fusion(obs)                    trained by the critic loss (+ demo BC, below)
    next_state = target_fusion(next_obs)        Polyak copy of the trunk, no gradient
    a', logp'  ~ pi(next_state)
    y          = r + discount * (1 - terminated) * (min(Q1t, Q2t)(next_state, a') - T * logp')
    critic     = (Q1(state, a) - y)^2 + (Q2(state, a) - y)^2
    actor      = T * logp(a~pi(state)) - min(Q1, Q2)(state, a~pi)   (state detached; only the
                                                                      actor's weights move)
    demo BC    = demo_bc_weight * ||tanh(mean(state)) - a||^2 on the batch's demonstration rows:
                 added to the actor loss and to the critic loss (so it reaches the trunk)
    temperature= -log T * (logp + target_entropy)
    Polyak: target critics and target trunk with rate tau

Bootstrapping stops only at ``terminated``; a time-limit ``truncated`` step still bootstraps.

Why not torchrl's ``SACLoss``: it was tried first (trunk outside the loss, Q heads and actor
wrapped as tensordict modules, twin Q through vmap). It is correct but its fixed cost per
update (vmap, tensordict plumbing, distribution objects) measured 2.5-3x that of this plain
version on the 2-core machine, with a throughput target of 500 updates/s; and it keeps the
twin critics in stacked copies that must be copied back into the module for every export.
torchrl does provide the replay storage (``TensorDictReplayBuffer`` over
``LazyTensorStorage``), where it fits well.

RLPD (Ball et al. 2023): each batch is ``demo_ratio`` demonstrations (the demo store plus
every online step a human took over) and the rest online data. One thread adds and samples
(the training thread), so there is no add/sample race.
"""
from __future__ import annotations

import copy
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from ..model.wsa import FusionPolicy
from .transitions import TransitionSpec


# =============================================================================== settings
@dataclass
class SACConfig:
    batch_size: int = 256
    demo_ratio: float = 0.5  # RLPD: half of each batch from demonstrations when there are any
    discount: float = 0.97  # SERL's real-robot setting
    lr: float = 3e-4
    tau: float = 0.005  # Polyak rate of the target critic and target trunk
    init_temperature: float = 0.01  # SAC entropy temperature at start
    target_entropy: float | None = None  # None: -action_dim / 2 (RLPD)
    actor_every: int = 1  # actor + temperature step every N critic steps (SERL uses 2)
    critic_warmup: int = 0  # first N updates: critic layers only (trunk and actor frozen)
    prior_weight: float = 0.0  # actor loss + w * ||pi(s) - pi_0(s)||^2, pi_0 = the policy at start
    demo_bc_weight: float = 0.0  # + w * ||pi(s) - a_demo||^2 on the batch's demonstration rows (trunk + actor)
    grad_clip: float = 10.0  # max gradient norm per optimizer; 0 = off
    capacity: int = 200_000  # online buffer (SERL: 200k); demos get their own


# =============================================================================== replay
def records_to_td(rec: dict[str, np.ndarray], spec: TransitionSpec) -> TensorDict:
    """Flat store arrays (batch first) -> the nested TensorDict the learner samples."""
    n = len(rec["reward"])

    def obs(prefix: str) -> dict:
        d = {name: torch.as_tensor(np.ascontiguousarray(rec[f"{prefix}.{name}"]), dtype=torch.float32)
             for name, _ in spec.encoders}
        if spec.proprio_dim:
            d["proprio"] = torch.as_tensor(np.ascontiguousarray(rec[f"{prefix}.proprio"]), dtype=torch.float32)
        return d

    col = lambda k, dt: torch.as_tensor(np.ascontiguousarray(rec[k])).to(dt).reshape(n, 1)  # noqa: E731
    terminated = col("terminated", torch.bool)
    truncated = col("truncated", torch.bool)
    return TensorDict({
        "obs": obs("obs"),
        "action": torch.as_tensor(np.ascontiguousarray(rec["action"]), dtype=torch.float32),
        "intervention": col("intervention", torch.bool),
        "next": {"obs": obs("next"), "reward": col("reward", torch.float32), "terminated": terminated,
                 "truncated": truncated, "done": terminated | truncated},
    }, batch_size=[n])


class Replay:
    """Online + demonstration buffers (torchrl) and a small held-out set of observations for
    validating exported policies. ``add`` and ``sample`` from one thread only."""

    def __init__(self, spec: TransitionSpec, capacity: int, demo_capacity: int | None = None,
                 holdout_every: int = 50, holdout_size: int = 512):
        self.spec = spec
        self.online = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity))
        self.demos = TensorDictReplayBuffer(storage=LazyTensorStorage(demo_capacity or capacity))
        self.holdout_every = int(holdout_every)
        self.holdout_size = int(holdout_size)
        self.holdout: TensorDict | None = None
        self._seen = 0

    def __len__(self) -> int:
        return len(self.online)

    def add(self, rec: dict[str, np.ndarray], demo: bool = False) -> None:
        """Add flat records (batch first). Online steps a human took over also go to the
        demonstration buffer (HIL-SERL); every ``holdout_every``-th online observation is
        also kept aside (not trained on) for validation."""
        if len(rec["reward"]) == 0:
            return
        td = records_to_td(rec, self.spec)
        if demo:
            self.demos.extend(td)
            return
        if self.holdout_every > 0:
            idx = np.arange(self._seen, self._seen + len(td))
            held = torch.as_tensor(idx % self.holdout_every == 0)
            self._seen += len(td)
            if held.any():
                ho = td[held]["obs"]
                self.holdout = ho if self.holdout is None else torch.cat([self.holdout, ho])[-self.holdout_size:]
                td = td[~held]
            if len(td) == 0:
                return
        self.online.extend(td)
        iv = td["intervention"].reshape(-1)
        if iv.any():
            self.demos.extend(td[iv])

    def sample(self, batch_size: int, demo_ratio: float) -> TensorDict:
        n_demo = int(round(batch_size * demo_ratio)) if len(self.demos) else 0
        if len(self.online) == 0:
            n_demo = batch_size
        parts = []
        for buf, n, is_demo in ((self.online, batch_size - n_demo, False), (self.demos, n_demo, True)):
            if n:
                part = buf.sample(n)
                part = part.exclude("index") if "index" in part.keys() else part
                part["demo"] = torch.full((n, 1), is_demo)
                parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _embs(td_obs) -> dict[str, torch.Tensor]:
    return {k: v for k, v in td_obs.items() if k != "proprio"}


def _action_gap(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||a - target||^2 (actions in [-1, 1]): the prior and demo BC terms."""
    return (a - target).square().sum(-1).mean()


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
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -a / 2.0
        self.log_temp = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.critic_params = self.policy.fusion_parameters() + self.policy.critic_parameters()
        self.actor_params = self.policy.actor_parameters()
        fused = self.device.type in ("cpu", "cuda")
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.lr, fused=fused)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.lr, fused=fused)
        self.temp_opt = torch.optim.Adam([self.log_temp], lr=cfg.lr)
        self._online = self.policy.fusion_parameters() + self.policy.critic_parameters()
        self._target = self.target.fusion_parameters() + self.target.critic_parameters()
        self.prior = None
        if cfg.prior_weight > 0:  # the starting policy (e.g. behaviour cloning), frozen
            self.prior = copy.deepcopy(self.policy).requires_grad_(False)
        self.updates = 0

    def proprio(self, td_obs) -> torch.Tensor | None:
        if not self.policy.proprio_dim:
            return None
        return (td_obs["proprio"] - self.p_mean) / self.p_std

    def _step(self, opt, params, loss) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()

    # ------------------------------------------------------------------ the update
    def update(self, batch: TensorDict) -> dict[str, float]:
        pol, tgt, cfg = self.policy, self.target, self.cfg
        batch = batch.to(self.device)
        obs, nxt = batch["obs"], batch["next"]
        action = batch["action"]
        reward = nxt["reward"].reshape(-1)
        not_term = 1.0 - nxt["terminated"].reshape(-1).float()
        temp = self.log_temp.detach().exp()

        # ---- critic (the fusion trunk learns here, after the critic warm-up)
        warmup = self.updates < cfg.critic_warmup
        with torch.no_grad():
            next_state, _ = tgt.features(_embs(nxt["obs"]), self.proprio(nxt["obs"]))
            mean, log_std = pol.actor_from_state(next_state)
            next_a, next_logp = pol.squash(mean, log_std)
            q1_t, q2_t = tgt.critic_from_state(next_state, next_a)
            y = reward + cfg.discount * not_term * (torch.min(q1_t, q2_t) - temp * next_logp)
        with torch.set_grad_enabled(not warmup):
            state, alpha_w = pol.features(_embs(obs), self.proprio(obs))
        q1, q2 = pol.critic_from_state(state, action)
        loss_critic = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        out = {"loss_critic": loss_critic.item(), "q": q1.detach().mean().item(), "target_q": y.mean().item()}
        demo_rows = None
        if cfg.demo_bc_weight > 0 and not warmup and "demo" in batch.keys():
            demo_rows = batch["demo"].reshape(-1)
            if demo_rows.any():
                # behaviour cloning on the demonstrations shapes the trunk too (the actor's own
                # gradient never reaches it): the trunk's optimizer takes w * BC with the TD loss
                bc_trunk = _action_gap(torch.tanh(pol.actor_from_state(state[demo_rows])[0]), action[demo_rows])
                loss_critic = loss_critic + cfg.demo_bc_weight * bc_trunk
            else:
                demo_rows = None
        self._step(self.critic_opt, self.critic_params, loss_critic)

        # ---- actor and temperature (trunk output detached; only actor weights get gradients)
        if not warmup and self.updates % cfg.actor_every == 0:
            s = state.detach()
            mean, log_std = pol.actor_from_state(s)
            a_pi, logp = pol.squash(mean, log_std)
            q_pi = torch.min(*pol.critic_from_state(s, a_pi))
            loss_actor = (temp * logp - q_pi).mean()
            if self.prior is not None:
                with torch.no_grad():
                    a0 = torch.tanh(self.prior.actor(_embs(obs), self.proprio(obs))[0])
                prior_gap = _action_gap(torch.tanh(mean), a0)
                loss_actor = loss_actor + cfg.prior_weight * prior_gap
                out["prior_gap"] = prior_gap.item()
            if demo_rows is not None:
                bc = _action_gap(torch.tanh(mean[demo_rows]), action[demo_rows])
                loss_actor = loss_actor + cfg.demo_bc_weight * bc
                out["demo_bc"] = bc.item()
            grads = torch.autograd.grad(loss_actor, self.actor_params)
            for p_, g in zip(self.actor_params, grads):
                p_.grad = g
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.actor_params, cfg.grad_clip)
            self.actor_opt.step()
            loss_temp = -(self.log_temp * (logp.detach() + self.target_entropy)).mean()
            self._step(self.temp_opt, [self.log_temp], loss_temp)
            out.update(loss_actor=loss_actor.item(), loss_temperature=loss_temp.item(),
                       entropy=-logp.detach().mean().item())

        # ---- Polyak averaging of the target trunk and critics
        with torch.no_grad():
            torch._foreach_lerp_(self._target, self._online, cfg.tau)
        self.updates += 1
        out["temperature"] = float(temp)
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


# =============================================================================== the training run
class CsvLog:
    """Append-only CSV (header written once per file; resumed runs append). Line-buffered
    so a kill loses at most the row being written."""

    def __init__(self, path, fields: list[str]):
        import csv

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        if not new:
            with open(self.path, encoding="utf-8") as f:
                head = f.readline().strip().split(",")
            if head != fields:  # another layout (other encoders): start a new file beside it
                self.path = self.path.with_name(f"{self.path.stem}-{int(time.time())}{self.path.suffix}")
                new = True
        self._f = open(self.path, "a", encoding="utf-8", newline="", buffering=1)
        self._w = csv.DictWriter(self._f, fieldnames=fields, extrasaction="ignore")
        self._lock = threading.Lock()  # rows come from several threads
        if new:
            self._w.writeheader()

    def write(self, row: dict) -> None:
        with self._lock:
            if not self._f.closed:
                self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def close(self) -> None:
        with self._lock:
            self._f.close()


TRAIN_FIELDS = ["time", "updates", "updates_per_s", "online", "demos", "loss_critic", "loss_actor",
                "loss_temperature", "temperature", "entropy", "q", "target_q", "wsa_alpha_entropy"]
EPISODE_FIELDS = ["time", "source", "episode", "kind", "steps", "return", "success", "success_rate_20"]
EVENT_FIELDS = ["time", "event", "version", "path", "ok", "seconds", "detail"]


class Trainer:
    """One fine-tuning run, ROS-free: replay, learner, UTD budget, checkpoints, exports and
    CSV logs (``<out_dir>/logs/{train,episodes,events}.csv``; TensorBoard too when the
    ``tensorboard`` package is installed). The node's training thread calls :meth:`add`,
    :meth:`ready` and :meth:`step`; exports run elsewhere on :meth:`snapshot` s.

    A restart resumes from ``<out_dir>/learner/checkpoint.pt`` (weights, targets, optimizer
    states, temperature, update and export counters) when it was written for the same head
    and encoders; otherwise that checkpoint is set aside (renamed ``.stale-<time>``)."""

    def __init__(self, bundle, cfg, log=None):
        from ..model.export import load_policy_module

        torch.manual_seed(cfg.seed)
        self.bundle, self.cfg = bundle, cfg
        self.log = log or (lambda msg: None)
        self.out_dir = Path(os.path.expanduser(cfg.out_dir))
        self.spec = TransitionSpec.from_bundle(bundle)
        policy = load_policy_module(bundle)
        pm = bundle.proprio.mean if bundle.proprio else None
        ps = bundle.proprio.std if bundle.proprio else None
        self.sac_cfg = SACConfig(batch_size=cfg.batch_size, demo_ratio=cfg.demo_ratio, discount=cfg.discount,
                                 lr=cfg.lr, tau=cfg.tau, init_temperature=cfg.init_temperature,
                                 actor_every=cfg.actor_every, critic_warmup=cfg.critic_warmup,
                                 prior_weight=cfg.prior_weight, demo_bc_weight=cfg.demo_bc_weight,
                                 capacity=cfg.capacity)
        self.learner = SACLearner(policy, self.sac_cfg, pm, ps, device=cfg.device)
        self.replay = Replay(self.spec, cfg.capacity, holdout_every=cfg.holdout_every)
        self.received = 0  # online transitions (stored before this run + received since)
        self.exports = 0
        self.resumed_from = 0
        self.ckpt_path = self.out_dir / "learner" / "checkpoint.pt"
        self._t_last_ckpt = time.monotonic()
        self._rate_mark = (time.monotonic(), 0)
        self.updates_per_s = 0.0
        self.last_metrics: dict = {}
        self.episode_window: list[int] = []
        logs = self.out_dir / "logs"
        wsa = [f"wsa_alpha_{n}" for n in policy.feature_names]
        self.train_csv = CsvLog(logs / "train.csv", TRAIN_FIELDS + wsa)
        self.episode_csv = CsvLog(logs / "episodes.csv", EPISODE_FIELDS)
        self.event_csv = CsvLog(logs / "events.csv", EVENT_FIELDS)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(logs / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard not installed: CSV only
            self.tb = None
        self.load_checkpoint()

    # ------------------------------------------------------------------ data
    def add(self, rec: dict[str, np.ndarray], demo: bool = False) -> None:
        self.replay.add(rec, demo=demo)
        if not demo:
            self.received += len(rec["reward"])

    @property
    def updates(self) -> int:
        return self.learner.updates

    def ready(self) -> bool:
        """Enough data, and the update-to-data budget allows another update."""
        if len(self.replay.online) + len(self.replay.demos) == 0:
            return False
        if self.received < self.cfg.warmup_transitions:
            return False
        return self.learner.updates < self.cfg.utd * max(self.received, 1)

    def step(self) -> dict:
        batch = self.replay.sample(self.cfg.batch_size, self.cfg.demo_ratio)
        m = self.learner.update(batch)
        self.last_metrics = m
        u = self.learner.updates
        if u % self.cfg.log_every_updates == 0:
            now = time.monotonic()
            t0, u0 = self._rate_mark
            self.updates_per_s = (u - u0) / max(now - t0, 1e-9)
            self._rate_mark = (now, u)
            row = {"time": time.time(), "updates": u, "updates_per_s": self.updates_per_s,
                   "online": len(self.replay.online), "demos": len(self.replay.demos), **m}
            self.train_csv.write(row)
            if self.tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "time":
                        self.tb.add_scalar(f"train/{k}", v, u)
        return m

    def episode(self, ep) -> None:
        """Log a finished episode (``transitions.Episode``)."""
        if ep.success >= 0:
            self.episode_window = (self.episode_window + [ep.success])[-20:]
        rate = float(np.mean(self.episode_window)) if self.episode_window else float("nan")
        self.episode_csv.write({"time": time.time(), "source": ep.source, "episode": ep.index, "kind": ep.kind,
                                "steps": ep.steps, "return": ep.ret, "success": ep.success, "success_rate_20": rate})
        if self.tb is not None:
            self.tb.add_scalar("episode/return", ep.ret, self.learner.updates)
            self.tb.add_scalar("episode/success_rate_20", rate, self.learner.updates)

    def event(self, event: str, version: str = "", path: str = "", ok: bool | str = "", seconds: float = 0.0,
              detail: str = "") -> None:
        self.event_csv.write({"time": time.time(), "event": event, "version": version, "path": path, "ok": ok,
                              "seconds": seconds, "detail": detail[:500]})

    def holdout(self) -> dict[str, np.ndarray]:
        """Held-out observations as numpy ({encoder: [N, *shape], 'proprio': [N, P]}); from
        the demonstrations when no online observation has been held out yet."""
        ho = self.replay.holdout
        if ho is None and len(self.replay.demos):
            ho = self.replay.demos.sample(min(256, len(self.replay.demos)))["obs"]
        if ho is None:
            return {}
        return {k: v.detach().cpu().numpy() for k, v in ho.items()}

    # ------------------------------------------------------------------ exports
    def snapshot(self) -> FusionPolicy:
        return self.learner.snapshot()

    def next_version(self) -> tuple[str, Path]:
        self.exports += 1
        version = f"{self.bundle.version}+ft{self.exports}"
        return version, self.out_dir / f"{self.bundle.name}-{version}"

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict:
        return {"head": self.learner.policy.config, "fingerprint": self.spec.fingerprint(),
                "base": f"{self.bundle.name}:{self.bundle.version}"}

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self._t_last_ckpt >= self.cfg.checkpoint_period_s

    def save_checkpoint(self) -> Path:
        """Atomic (tmp + fsync + rename): a kill leaves the previous checkpoint or the new one."""
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        sd = {"meta": self._meta(), "learner": self.learner.state_dict(), "exports": self.exports,
              "received": self.received}
        tmp = self.ckpt_path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(sd, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.ckpt_path)
        self._t_last_ckpt = time.monotonic()
        return self.ckpt_path

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        try:
            sd = torch.load(self.ckpt_path, map_location=self.learner.device, weights_only=True)
            if sd.get("meta") != self._meta():
                raise ValueError("it was written for another head, encoders or base bundle")
            self.learner.load_state_dict(sd["learner"])
        except Exception as exc:  # noqa: BLE001 - unreadable or foreign: set aside, start fresh
            stale = self.ckpt_path.with_name(f"checkpoint.stale-{int(time.time())}.pt")
            os.replace(self.ckpt_path, stale)
            self.log(f"learner checkpoint {self.ckpt_path} not used ({exc}); moved to {stale.name}, starting fresh")
            return False
        self.exports = int(sd.get("exports", 0))
        self.resumed_from = self.learner.updates
        self._rate_mark = (time.monotonic(), self.learner.updates)
        self.log(f"resumed from {self.ckpt_path}: {self.learner.updates} updates, {self.exports} exports")
        return True

    def close(self) -> None:
        for c in (self.train_csv, self.episode_csv, self.event_csv):
            c.close()
        if self.tb is not None:
            self.tb.close()
