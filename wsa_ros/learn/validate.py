"""Export a trained head as a bundle and check it before anyone may run it (ROS-free).

:func:`export_policy` writes a new, versioned bundle folder that reuses the base bundle's
encoder ONNX files unchanged (they are frozen) with the fine-tuned ``policy.onnx`` and
``head.pt``. :func:`validate_bundle` is the gate in front of every push; a bundle is pushed
only when it passes all of:

1. it loads: manifest parses, every file matches its sha256 (``bundle.load_bundle``);
2. the agent's hot-swap checks: ``bundle.compatible_with`` (cameras, proprioception, action
   joints, mode and bounds);
3. its encoders are byte-identical to the base bundle's (same sha256): the embeddings the
   learner trained on are the ones the agent will compute;
4. ONNX Runtime loads it and its warm-up gives finite outputs (``engine.Engine``);
5. on held-out stored observations, the policy's actions are finite and within [-1, 1] and
   its attention weights finite, non-negative and summing to 1;
6. on the same observations ONNX Runtime agrees with the PyTorch module that was exported.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsa_ros.runtime.bundle import Bundle, BundleError, compatible_with, load_bundle
from wsa_ros.runtime.engine import Engine, EngineError

ACTION_TOL = 1e-5
ONNX_TOL = 1e-3


@dataclass
class ValidationReport:
    path: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    checked: int = 0  # held-out observations run
    seconds: float = 0.0
    max_abs_action: float = float("nan")

    def summary(self) -> str:
        if self.ok:
            return (f"{self.path}: valid ({self.checked} held-out observations, max |action| "
                    f"{self.max_abs_action:.3f}, {self.seconds:.2f} s)")
        return f"{self.path}: INVALID: " + "; ".join(self.reasons)


def export_policy(policy, base: Bundle, out_dir: str | os.PathLike, version: str, recipe: dict | None = None,
                  name: str | None = None) -> Bundle:
    """Write ``policy`` as a new bundle in ``out_dir`` with the base bundle's encoders."""
    from wsa_ros.model.export import EncoderSource, export_bundle

    encs = [EncoderSource.from_spec(e, base.root) for e in base.encoders]
    return export_bundle(out_dir, policy, encs, base.action, base.proprio, name=name or base.name,
                         version=str(version), recipe=recipe or {})


def _batches(holdout: dict[str, np.ndarray], size: int = 256):
    n = len(next(iter(holdout.values())))
    for i in range(0, n, size):
        yield {k: v[i:i + size] for k, v in holdout.items()}


def validate_bundle(path: str | os.PathLike, base: Bundle, holdout: dict[str, np.ndarray] | None = None,
                    policy=None, providers=("cpu",)) -> ValidationReport:
    """Run every check of the module docstring. ``holdout``: {encoder name: [N, *shape],
    'proprio': raw [N, P]} (at least one observation; without any the bundle is not valid);
    ``policy``: the exported FusionPolicy (for check 6)."""
    t0 = time.perf_counter()
    rep = ValidationReport(str(path), False)

    def done(ok: bool) -> ValidationReport:
        rep.ok = ok and not rep.reasons
        rep.seconds = time.perf_counter() - t0
        return rep

    try:
        new = load_bundle(path)
    except BundleError as exc:
        rep.reasons.append(f"does not load: {exc}")
        return done(False)
    why = compatible_with(base, new)
    base_enc = {e.name: e.sha256 for e in base.encoders}
    new_enc = {e.name: e.sha256 for e in new.encoders}
    if base_enc != new_enc:
        why.append(f"encoders changed (frozen encoders must be byte-identical): {base_enc} vs {new_enc}")
    if why:
        rep.reasons.extend(f"hot-swap check: {w}" for w in why)
        return done(False)
    try:
        eng = Engine(new, providers=providers, threads=1, warmup=True, verify_hashes=False)
    except (BundleError, EngineError) as exc:
        rep.reasons.append(f"ONNX Runtime: {exc}")
        return done(False)
    if not holdout or len(next(iter(holdout.values()))) == 0:
        rep.reasons.append("no held-out observations to check the actions on (store some transitions first)")
        return done(False)
    max_abs = 0.0
    worst = 0.0
    for chunk in _batches(holdout):
        embs = {e.name: np.asarray(chunk[e.name], np.float32) for e in new.encoders}
        pro = chunk.get("proprio") if new.proprio else None
        try:
            a, alpha = eng.act(embs, pro)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types
            rep.reasons.append(f"policy fails on held-out observations: {exc}")
            return done(False)
        rep.checked += len(a)
        if not np.all(np.isfinite(a)):
            rep.reasons.append(f"non-finite actions on {int((~np.isfinite(a)).any(-1).sum())} held-out observations")
            return done(False)
        max_abs = max(max_abs, float(np.abs(a).max()))
        if max_abs > 1.0 + ACTION_TOL:
            rep.reasons.append(f"actions outside [-1, 1] (max |a| = {max_abs:.6f})")
            return done(False)
        if not np.all(np.isfinite(alpha)) or np.any(alpha < -1e-6) or np.any(np.abs(alpha.sum(-1) - 1.0) > 1e-3):
            rep.reasons.append("attention weights are not a finite distribution over the encoders")
            return done(False)
        if policy is not None:
            import torch

            with torch.no_grad():
                te = {k: torch.as_tensor(v) for k, v in embs.items()}
                tp = None
                if new.proprio:
                    m = np.asarray(new.proprio.mean)
                    s = np.asarray(new.proprio.std)
                    tp = torch.as_tensor(((np.asarray(pro, np.float64) - m) / s).astype(np.float32))
                ta, _ = policy.deterministic_action(te, tp)
            worst = max(worst, float(np.abs(ta.numpy() - a).max()))
    rep.max_abs_action = max_abs
    if worst > ONNX_TOL:
        rep.reasons.append(f"ONNX Runtime and PyTorch disagree on held-out observations (max |diff| {worst:.2e})")
    return done(True)


def reject_folder(path: str | os.PathLike) -> Path:
    """Rename a bundle that failed validation so nothing picks it up by mistake."""
    p = Path(path)
    dst = p.with_name(p.name + ".rejected")
    i = 1
    while dst.exists():
        dst = p.with_name(f"{p.name}.rejected{i}")
        i += 1
    os.replace(p, dst)
    return dst
