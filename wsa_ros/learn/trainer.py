"""One fine-tuning run, ROS-free: replay, learner, update-to-data budget, checkpoints,
export versions and CSV / TensorBoard logs (:class:`Trainer`). The algorithm itself is
:mod:`wsa_ros.learn.sac`; the online service around a run is :mod:`wsa_ros.learn.online`."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from wsa_ros.config import FinetuneConfig
from wsa_ros.learn.replay import Replay
from wsa_ros.learn.sac import SACLearner
from wsa_ros.learn.transitions import TransitionSpec
from wsa_ros.model.export import load_policy_module
from wsa_ros.model.wsa import FusionPolicy


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

    def __init__(self, bundle, cfg: FinetuneConfig, log=None):
        sac = cfg.learner
        torch.manual_seed(sac.seed)
        self.bundle, self.cfg, self.sac = bundle, cfg, sac
        self.log = log or (lambda msg: None)
        self.out_dir = Path(os.path.expanduser(cfg.out_dir))
        self.spec = TransitionSpec.from_bundle(bundle)
        policy = load_policy_module(bundle)
        pm = bundle.proprio.mean if bundle.proprio else None
        ps = bundle.proprio.std if bundle.proprio else None
        self.learner = SACLearner(policy, sac, pm, ps, device=sac.device)
        self.replay = Replay(self.spec, sac.capacity, holdout_every=cfg.holdout_every)
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
        if self.received < self.sac.warmup_transitions:
            return False
        return self.learner.updates < self.sac.utd * max(self.received, 1)

    def step(self) -> dict:
        batch = self.learner.sample(self.replay)
        log_now = (self.learner.updates + 1) % self.cfg.log_every_updates == 0
        m = self.learner.update(batch, metrics=log_now or not self.last_metrics)
        if m:
            self.last_metrics = m
        u = self.learner.updates
        if log_now:
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
            ho = {k: v.numpy() for k, v in self.replay.demos.observations(256).items()}
        return ho or {}

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
