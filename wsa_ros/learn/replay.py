"""The learner's in-memory replay, compact: each observation stored once, embeddings in float16.

A transition's next observation is the following transition's observation (the same frame and
joint state), so :class:`Buffer` keeps one ring of observations and, per transition, the slots
of its observation and of its next one. :meth:`Buffer.add` links a row to the previous one when
the row's observation is bit for bit the previous row's next observation (the learner's store
and the demonstration import write episodes in order), else stores it anew. Embeddings are kept
in float16 (the frozen encoders' outputs: feature maps, keypoints in [-1, 1], flat vectors),
proprioception, actions and rewards in float32: half the observation slots of an obs + next
layout, each in half the bytes (``bytes_per_transition``); the learner sees float32 tensors.

Why not torchrl's ``TensorDictReplayBuffer`` (which the learner used before): it stores obs and
next obs as separate rows (2x the memory of this layout, 4x with float32) and its sampling plus
TensorDict plumbing cost 12-16 ms per batch of 256 with the previous default head, 22-23 % of an
update; the index gathers below cost 0.5 ms, 5 % (``benchmarks/bench_learner.py`` prints both). One thread
adds and samples (the training thread), so there is no add / sample race.

:class:`Replay` is the learner's pair of buffers, online and demonstrations (RLPD), plus a small
held-out set of observations for validating exports.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsa_ros.learn.transitions import TransitionSpec

EMBEDDING_DTYPE = torch.float16


@dataclass
class Batch:
    """A sampled batch, float32 on the learner's device. ``obs`` / ``next_obs``: {encoder: [B, *shape],
    'proprio': [B, P]}; the rest [B] (action [B, A]); ``demo``: the row came from the demonstrations."""

    obs: dict[str, torch.Tensor]
    next_obs: dict[str, torch.Tensor]
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    intervention: torch.Tensor
    demo: torch.Tensor
    #: n-step returns: the bootstrap's discount per row (discount ** steps summed), ``reward`` the
    #: discounted sum and ``next_obs`` the observation after the last step; None = one step
    discount: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Batch(mv(self.obs), mv(self.next_obs), self.action.to(device), self.reward.to(device),
                     self.terminated.to(device), self.truncated.to(device), self.intervention.to(device),
                     self.demo.to(device), None if self.discount is None else self.discount.to(device))


class Buffer:
    """A ring of ``capacity`` transitions over a ring of observations (see the module docstring).
    The embeddings of every encoder share one float16 matrix (a row per observation slot), the
    proprioception one float32 matrix and the transitions' action, reward and flags another, so a
    batch is five index gathers, whatever the number of encoders."""

    def __init__(self, spec: TransitionSpec, capacity: int, dtype: torch.dtype = EMBEDDING_DTYPE):
        self.spec = spec
        self.capacity = int(capacity)
        # every transition allocates at most two slots, and transitions leave in order: a stored
        # transition's slots were written within the last 2 x capacity allocations
        self.obs_capacity = 2 * self.capacity + 2
        self.shapes = {n: tuple(s) for n, s in spec.encoders}
        self.sizes = [int(np.prod(s)) for s in self.shapes.values()]
        self.emb = torch.zeros((self.obs_capacity, sum(self.sizes)), dtype=dtype)
        self.proprio = torch.zeros((self.obs_capacity, spec.proprio_dim), dtype=torch.float32) \
            if spec.proprio_dim else None
        a = spec.action_dim
        self.a = a
        # per transition: action [a], reward, terminated, truncated, intervention (as 0/1)
        self.rows = torch.zeros((self.capacity, a + 4), dtype=torch.float32)
        self.obs_idx = torch.zeros(self.capacity, dtype=torch.long)
        self.next_idx = torch.zeros(self.capacity, dtype=torch.long)
        # per transition: the next ring row is the same episode's next step (its observation is this
        # row's next one, and this row neither terminated nor was truncated): n-step returns follow it
        self.cont = torch.zeros(self.capacity, dtype=torch.bool)
        self._n = 0  # transitions held
        self._t = 0  # next transition slot
        self._o = 0  # next observation slot
        self._last_next: dict[str, np.ndarray] | None = None  # the previous row's next observation, as given
        self._last_next_slot = -1
        self.linked = 0  # rows whose observation was the previous row's next one (stored once)

    def __len__(self) -> int:
        return self._n

    @property
    def fields(self) -> list[str]:
        return list(self.shapes) + (["proprio"] if self.proprio is not None else [])

    def slot_bytes(self) -> int:
        """Memory of one stored observation (all encoders' embeddings + proprioception)."""
        return self.emb[0].numel() * self.emb.element_size() + (self.proprio[0].numel() * 4 if self.proprio is not None
                                                                  else 0)

    def bytes_per_transition(self) -> float:
        """Average memory per held transition (an observation shared by neighbours counted once)."""
        slots = self._n * 2 - self.linked if self._n else 0
        row = self.rows[0].numel() * 4 + 16
        return min(slots, self.obs_capacity) * self.slot_bytes() / max(self._n, 1) + row

    def _pack(self, rec: dict, prefix: str, mask=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = len(rec["reward"])
        parts = [np.asarray(rec[f"{prefix}.{f}"]).reshape(n, -1) for f in self.shapes]
        emb = torch.as_tensor(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])
        pro = torch.as_tensor(np.asarray(rec[f"{prefix}.proprio"], np.float32)) if self.proprio is not None else None
        if mask is not None:
            emb, pro = emb[mask], (pro[mask] if pro is not None else None)
        return emb, pro

    def add(self, rec: dict[str, np.ndarray]) -> None:
        """Add flat records (``TransitionSpec.schema`` fields, batch first), in order."""
        n = len(rec["reward"])
        if n == 0:
            return
        if n > self.capacity:  # only the newest capacity rows can stay
            rec = {k: v[-self.capacity:] for k, v in rec.items()}
            n = self.capacity
        # row i's observation == row i-1's next one (bit for bit): store it once
        linked = np.ones(n, bool)
        for f in self.fields:
            o = np.asarray(rec[f"obs.{f}"]).reshape(n, -1)
            p = np.asarray(rec[f"next.{f}"]).reshape(n, -1)
            same = np.empty(n, bool)
            same[1:] = (o[1:] == p[:-1]).all(axis=1)
            prev = self._last_next[f] if self._last_next is not None else None
            same[0] = prev is not None and prev.shape == o[0].shape and bool((o[0] == prev).all())
            linked &= same
        new_obs = ~linked
        k = new_obs.astype(np.int64) + 1  # slots each row allocates
        first = np.cumsum(k) - k  # offset of each row's first new slot
        base = self._o
        next_slot = (base + first + new_obs) % self.obs_capacity
        obs_slot = np.where(new_obs, (base + first) % self.obs_capacity, 0)
        prev_next = np.concatenate([[self._last_next_slot], next_slot[:-1]])
        obs_slot = np.where(linked, prev_next, obs_slot)
        self._o = int((base + k.sum()) % self.obs_capacity)
        o_new, n_new = torch.as_tensor(obs_slot[new_obs]), torch.as_tensor(next_slot)
        for prefix, slots, mask in (("obs", o_new, torch.as_tensor(new_obs)), ("next", n_new, None)):
            emb, pro = self._pack(rec, prefix, mask)
            self.emb[slots] = emb.to(self.emb.dtype)
            if pro is not None:
                self.proprio[slots] = pro
        r = torch.as_tensor((self._t + np.arange(n)) % self.capacity)
        done = (np.asarray(rec["terminated"]).reshape(n) > 0) | (np.asarray(rec["truncated"]).reshape(n) > 0)
        cont = np.zeros(n, bool)
        cont[:-1] = linked[1:] & ~done[:-1]
        self.cont[r] = torch.as_tensor(cont)
        if self._n and linked[0] and n < self.capacity:  # the previous add's last row goes on into this one
            prev = (self._t - 1) % self.capacity
            self.cont[prev] = not bool((self.rows[prev, self.a + 1:self.a + 3] > 0.5).any())
        self.obs_idx[r] = torch.as_tensor(obs_slot)
        self.next_idx[r] = n_new
        cols = [np.asarray(rec["action"], np.float32).reshape(n, self.a)]
        cols += [np.asarray(rec[c]).reshape(n, 1).astype(np.float32)
                 for c in ("reward", "terminated", "truncated", "intervention")]
        self.rows[r] = torch.as_tensor(np.concatenate(cols, axis=1))
        self._t = int((self._t + n) % self.capacity)
        self._n = min(self._n + n, self.capacity)
        self.linked += int(linked.sum())
        self._last_next = {f: np.asarray(rec[f"next.{f}"][-1]).reshape(-1).copy() for f in self.fields}
        self._last_next_slot = int(next_slot[-1])

    def _gather(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.emb.index_select(0, slots).float()
        out = {n: v.view(len(slots), *s) for (n, s), v in zip(self.shapes.items(), flat.split(self.sizes, dim=1))}
        if self.proprio is not None:
            out["proprio"] = self.proprio.index_select(0, slots)
        return out

    def sample_rows(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self._n, (batch,), generator=generator)

    def take(self, rows: torch.Tensor, demo: bool, n_step: int = 1, discount: float = 1.0) -> Batch:
        """The transitions at ``rows``; with ``n_step`` > 1 each reward is the discounted sum over
        up to ``n_step`` steps of the same episode (fewer where it ends, was truncated or its next
        step is not held), and the next observation, the end flags and ``Batch.discount``
        (``discount`` ** steps summed) are those of the last step summed."""
        r = self.rows.index_select(0, rows)
        a = self.a
        reward, last, bootstrap = r[:, a], rows, None
        if n_step > 1:
            reward, steps = reward.clone(), torch.ones(len(rows))
            alive = self.cont[rows]
            for k in range(1, n_step):
                nxt = (rows + k) % self.capacity
                reward += alive * (discount ** k) * self.rows[nxt, a]
                steps += alive
                last = torch.where(alive, nxt, last)
                alive = alive & self.cont[nxt]
            r_last = self.rows.index_select(0, last)
            bootstrap = torch.pow(torch.tensor(float(discount)), steps)
            term, trunc = r_last[:, a + 1] > 0.5, r_last[:, a + 2] > 0.5
        else:
            term, trunc = r[:, a + 1] > 0.5, r[:, a + 2] > 0.5
        return Batch(self._gather(self.obs_idx[rows]), self._gather(self.next_idx[last]), r[:, :a], reward,
                     term, trunc, r[:, a + 3] > 0.5, torch.full((len(rows),), demo), bootstrap)

    def sample(self, batch: int, n_step: int = 1, discount: float = 1.0) -> Batch:
        return self.take(self.sample_rows(batch), False, n_step, discount)

    def observations(self, n: int) -> dict[str, torch.Tensor]:
        """``n`` random held observations (float32)."""
        return self._gather(self.obs_idx[self.sample_rows(min(n, self._n))])


def cat_batches(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    cat = lambda get: torch.cat([get(p) for p in parts])  # noqa: E731
    keys = parts[0].obs.keys()
    disc = None if parts[0].discount is None else cat(lambda p: p.discount)
    return Batch({k: cat(lambda p, k=k: p.obs[k]) for k in keys}, {k: cat(lambda p, k=k: p.next_obs[k]) for k in keys},
                 cat(lambda p: p.action), cat(lambda p: p.reward), cat(lambda p: p.terminated),
                 cat(lambda p: p.truncated), cat(lambda p: p.intervention), cat(lambda p: p.demo), disc)


class Replay:
    """Online + demonstration buffers and a small held-out set of observations for validating
    exported policies. ``add`` and ``sample`` from one thread only."""

    def __init__(self, spec: TransitionSpec, capacity: int, demo_capacity: int | None = None,
                 holdout_every: int = 50, holdout_size: int = 512, dtype: torch.dtype = EMBEDDING_DTYPE):
        self.spec = spec
        self.online = Buffer(spec, capacity, dtype)
        self.demos = Buffer(spec, demo_capacity or capacity, dtype)
        self.holdout_every = int(holdout_every)
        self.holdout_size = int(holdout_size)
        self.holdout: dict[str, np.ndarray] | None = None  # observations (float32, as stored), not trained on
        self._seen = 0

    def __len__(self) -> int:
        return len(self.online)

    def add(self, rec: dict[str, np.ndarray], demo: bool = False) -> None:
        """Add flat records (batch first). Online steps a human took over also go to the
        demonstration buffer (HIL-SERL); every ``holdout_every``-th online observation is kept
        aside instead (not trained on) for validation."""
        n = len(rec["reward"])
        if n == 0:
            return
        if demo:
            self.demos.add(rec)
            return
        if self.holdout_every > 0:
            held = (np.arange(self._seen, self._seen + n) % self.holdout_every) == 0
            self._seen += n
            if held.any():
                ho = {f: np.asarray(rec[f"obs.{f}"])[held].astype(np.float32) for f in self.online.fields}
                self.holdout = ho if self.holdout is None else \
                    {f: np.concatenate([self.holdout[f], ho[f]])[-self.holdout_size:] for f in ho}
                rec = {k: v[~held] for k, v in rec.items()}
            if len(rec["reward"]) == 0:
                return
        self.online.add(rec)
        iv = np.asarray(rec["intervention"], bool).reshape(-1)
        if iv.any():
            self.demos.add({k: v[iv] for k, v in rec.items()})

    def sample(self, batch_size: int, demo_ratio: float, n_step: int = 1, discount: float = 1.0) -> Batch:
        """``batch_size`` transitions, ``demo_ratio`` of them demonstrations (RLPD); ``n_step`` > 1:
        n-step returns with ``discount`` (:meth:`Buffer.take`)."""
        n_demo = int(round(batch_size * demo_ratio)) if len(self.demos) else 0
        if len(self.online) == 0:
            n_demo = batch_size
        parts = []
        for buf, n, is_demo in ((self.online, batch_size - n_demo, False), (self.demos, n_demo, True)):
            if n:
                parts.append(buf.take(buf.sample_rows(n), is_demo, n_step, discount))
        return cat_batches(parts)
