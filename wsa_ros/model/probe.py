"""Linear probes of frozen embeddings (numpy only): what ``wsa screen`` ranks encoders with,
and what ``wsa build-bundle`` reports of the default encoders (``localisation``: how
precisely a ridge probe reads the target's position off each embedding, and off all of them
together, on held-out episodes).
"""
from __future__ import annotations

import math

import numpy as np


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over target dimensions of 1 - SSE/SST (SST around the evaluated set's mean)."""
    y = y.reshape(len(y), -1)
    pred = pred.reshape(len(pred), -1)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    sse = ((y - pred) ** 2).sum(0)
    ok = sst > 1e-12
    if not ok.any():
        return float("nan")
    return float(np.mean(1 - sse[ok] / sst[ok]))


class Standardizer:
    def __init__(self, x: np.ndarray):
        self.mean = x.mean(0)
        self.std = x.std(0)
        self.std[self.std < 1e-8] = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


LAMBDAS = np.logspace(-3, 4, 15)


class blas_threads:
    """Limit numpy's OpenBLAS threads inside the block (best effort; a no-op where the
    library cannot be found). The probes' small eigendecompositions are 10-30x slower
    with threads spinning on a busy machine than on one thread."""

    def __init__(self, n: int = 1):
        self.n, self.prev, self.lib = int(n), None, None

    def __enter__(self):
        import ctypes
        import glob
        import os

        libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
        for path in libs:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas_", "openblas_"):
                for suffix in ("64_", ""):
                    get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        self.prev, self.lib = get(), set_
                        set_(self.n)
                        return self
        return self

    def __exit__(self, *exc):
        if self.lib is not None and self.prev is not None:
            self.lib(self.prev)
        return False


class RidgeProbe:
    """Ridge regression on standardised features and targets; the penalty is chosen on a
    validation set (``fit_select``) from LAMBDAS x n_train."""

    def __init__(self, lam: float | None = None):
        self.lam = lam

    def fit(self, x, y, lam: float | None = None):
        self.sx, self.sy = Standardizer(x), Standardizer(y.reshape(len(y), -1))
        X, Y = self.sx(x), self.sy(y.reshape(len(y), -1))
        # one eigendecomposition of the smaller Gram matrix serves every penalty:
        # W = B diag(1 / (e + lambda)) C
        if X.shape[0] <= X.shape[1]:
            e, u = np.linalg.eigh(X @ X.T)
            self._b, self._c = X.T @ u, u.T @ Y
        else:
            e, v = np.linalg.eigh(X.T @ X)
            self._b, self._c = v, v.T @ (X.T @ Y)
        self._e = np.clip(e, 0.0, None)
        self.set_lambda(lam if lam is not None else (self.lam or 1.0))
        return self

    def set_lambda(self, lam: float):
        self.lam = float(lam)
        self.w = self._b @ (self._c / (self._e + self.lam)[:, None])

    def predict(self, x):
        return self.sy.mean + (self.sx(x) @ self.w) * self.sy.std

    def fit_select(self, x, y, xv, yv):
        self.fit(x, y)
        n = len(x)
        best = (-math.inf, None)
        for lam in LAMBDAS * n:
            self.set_lambda(lam)
            s = r2_score(yv, self.predict(xv))
            if s > best[0]:
                best = (s, lam)
        self.set_lambda(best[1])
        return self


def localisation(embs: dict[str, np.ndarray], xy: np.ndarray, groups: np.ndarray,
                 test_fraction: float = 0.2, seed: int = 0, near: np.ndarray | None = None) -> dict:
    """Held-out error (metres) of a ridge probe from each embedding, and from all of them
    concatenated, to the positions ``xy`` [N, 2]. Whole ``groups`` (episodes: one target
    each) go to test, validation (the penalty) or training, so nearly identical frames of
    one episode never straddle the split. Returns ``{name: {"mean_m", "median_m", "p90_m"}}``
    with the concatenation under ``"all"``; with a boolean mask ``near`` [N] (e.g. the
    fingertip within the success radius, where the tip may hide the target) also
    ``near_mean_m`` and ``near_p90_m`` over the held-out frames it marks."""
    xy = np.asarray(xy, dtype=np.float64).reshape(len(xy), -1)
    ids = np.unique(groups)
    if len(ids) < 5:
        raise ValueError(f"localisation probe needs at least 5 episodes, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(ids)
    n_te = max(1, int(round(len(ids) * test_fraction)))
    te = np.isin(groups, order[:n_te])
    va = np.isin(groups, order[n_te:2 * n_te])
    tr = ~(te | va)
    flat = {k: np.asarray(v, dtype=np.float64).reshape(len(v), -1) for k, v in embs.items()}
    sets = dict(flat)
    if len(flat) > 1:
        sets["all"] = np.concatenate([Standardizer(v[tr])(v) / math.sqrt(v.shape[1]) for v in flat.values()], axis=1)
    out = {}
    with blas_threads(1):
        for name, x in sets.items():
            probe = RidgeProbe().fit_select(x[tr], xy[tr], x[va], xy[va])
            err = np.linalg.norm(probe.predict(x[te]) - xy[te], axis=1)
            out[name] = {"mean_m": float(err.mean()), "median_m": float(np.median(err)),
                         "p90_m": float(np.quantile(err, 0.9)), "dim": int(x.shape[1])}
            if near is not None and np.any(near[te]):
                e_near = err[np.asarray(near, bool)[te]]
                out[name].update(near_mean_m=float(e_near.mean()), near_p90_m=float(np.quantile(e_near, 0.9)))
    return out
