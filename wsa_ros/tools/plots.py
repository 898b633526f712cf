"""Plots of a run (matplotlib, Agg backend: no display needed) and the alpha statistics behind them.

* :func:`success_rate_plot`  success per episode and its moving average over time and over
  learner updates, the learner's updates/s, the episode return, the moments the policy version
  changed and reference levels (the offline check) marked.
* :func:`alpha_episode_plot` alpha per encoder over one (or two, e.g. first and last) episodes:
  which pre-trained model the policy relies on, step by step.
* :func:`alpha_stats`        per-encoder mean / std / min / max, how often each encoder is the
  most weighted, the mean entropy and whether alpha has collapsed onto one model.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

COLLAPSE_MEAN = 0.9  # an encoder with a mean alpha above this carries the policy alone


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; returns the path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def moving_average(x: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - int(window), 0)
    return (c[idx] - c[lo]) / (idx - lo)


def success_rate_plot(path, success: Sequence[bool], returns: Sequence[float] | None = None,
                      minutes: Sequence[float] | None = None, versions: Sequence[str] | None = None,
                      window: int = 20, title: str = "Success rate over time",
                      updates: Sequence[int] | None = None,
                      learner: Sequence[tuple[float, int, float]] | None = None,
                      reference: dict[str, float] | None = None) -> Path:
    """Success per episode (dots) and its trailing ``window``-episode mean (line) against
    wall-clock minutes (or the episode index), policy changes as dashed lines; then, when given,
    success against the learner's ``updates`` at each episode, the learner's updates/s over
    time (``learner``: (seconds, updates, updates/s) samples), and the return. ``reference``:
    horizontal lines (label -> success, e.g. the offline check's behaviour cloning and final)."""
    plt = pyplot()
    s = np.asarray(success, dtype=np.float64)
    n = s.size
    x = np.asarray(minutes, dtype=np.float64) if minutes is not None else np.arange(1, n + 1, dtype=np.float64)
    xlabel = "wall-clock time (min)" if minutes is not None else "episode"
    panels = ["time"] + (["updates"] if updates is not None else []) + (["rate"] if learner else []) \
        + (["return"] if returns is not None else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.0 * len(panels)), squeeze=False)
    ax_of = {k: axes[i, 0] for i, k in enumerate(panels)}
    colors = ["tab:green", "tab:red", "tab:purple", "tab:brown"]

    def success_panel(ax, xs, label):
        if n:
            ax.scatter(xs, s, s=10, alpha=0.35, color="tab:blue", label="episode success (final step)")
            ax.plot(xs, moving_average(s, window), color="tab:blue", lw=2, label=f"success rate (last {window} episodes)")
        for (lab, val), c in zip((reference or {}).items(), colors):
            if val is not None and math.isfinite(val):
                ax.axhline(val, color=c, ls=":", lw=1.5, label=f"{lab} {val:.2f}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("success")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)

    success_panel(ax_of["time"], x, xlabel)
    ax_of["time"].set_title(f"{title} ({n} episodes)")
    if "updates" in ax_of:
        success_panel(ax_of["updates"], np.asarray(updates, dtype=np.float64), "learner updates")
    if "rate" in ax_of:
        tr = np.asarray(learner, dtype=np.float64).reshape(-1, 3)
        ax = ax_of["rate"]
        ax.plot(tr[:, 0] / 60, tr[:, 2], color="tab:gray", lw=1.5, label="learner updates/s")
        ax.set_ylabel("updates/s")
        ax.set_xlabel("wall-clock time (min)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    if "return" in ax_of:
        r = np.asarray(returns, dtype=np.float64)
        ax2 = ax_of["return"]
        if n:
            ax2.plot(x, r, color="tab:orange", alpha=0.3, lw=1, label="episode return")
            ax2.plot(x, moving_average(r, window), color="tab:orange", lw=2, label=f"mean of last {window}")
        ax2.set_ylabel("return")
        ax2.set_xlabel(xlabel)
        ax2.grid(alpha=0.3)
        ax2.legend(loc="lower right", fontsize=8)
    if versions is not None and n:
        v = list(versions)
        ax = ax_of["time"]
        for i in range(1, n):
            if v[i] != v[i - 1]:
                ax.axvline(x[i], color="gray", ls="--", lw=0.8)
                ax.annotate(f"v{v[i]}", (x[i], 1.02), fontsize=7, color="gray", ha="left")
    return save_figure(fig, path)


def alpha_episode_plot(path, episodes: Sequence[tuple[str, np.ndarray]], names: Sequence[str],
                       title: str = "Attention weight (alpha) per encoder over an episode") -> Path:
    """``episodes``: (label, alpha array [T, K]) pairs, one panel each (e.g. the first and the
    last episode of a run); stacked areas, since the weights of a step sum to one."""
    plt = pyplot()
    episodes = [(lab, np.asarray(a, dtype=np.float64).reshape(len(a), -1)) for lab, a in episodes]
    if not episodes:
        raise ValueError("no episode with alpha values to plot")
    k = len(names)
    for lab, a in episodes:
        if a.shape[1] != k:
            raise ValueError(f"episode '{lab}': alpha has {a.shape[1]} columns, {k} encoder names given")
    fig, axes = plt.subplots(len(episodes), 1, figsize=(10.5, 3.0 * len(episodes)), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (lab, a) in zip(axes[:, 0], episodes):
        t = np.arange(a.shape[0])
        ax.stackplot(t, a.T, labels=[f"{n} (mean {a[:, i].mean():.2f})" for i, n in enumerate(names)],
                     colors=colors[:k], alpha=0.85)
        ax.set_xlim(0, max(a.shape[0] - 1, 1))
        ax.set_ylim(0, 1)
        ax.set_ylabel("alpha")
        ax.set_title(lab, fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("agent step in the episode")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def alpha_stats(alpha: np.ndarray, names: Sequence[str]) -> dict:
    """Statistics of alpha samples [N, K]: per encoder mean/std/min/max and how often it is the
    largest weight; mean entropy (nats; log K = uniform); the dominant encoder; collapse flag."""
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        return {"samples": 0}
    if a.shape[1] != len(names):
        raise ValueError(f"alpha has {a.shape[1]} columns, {len(names)} encoder names given")
    is_top = np.isclose(a, a.max(axis=1, keepdims=True), rtol=0.0, atol=1e-6)
    top = (is_top / is_top.sum(axis=1, keepdims=True)).mean(axis=0)  # ties share the step
    p = np.clip(a, 1e-12, 1.0)
    entropy = float(np.mean(-np.sum(p * np.log(p), axis=1)))
    per = {n: {"mean": float(a[:, i].mean()), "std": float(a[:, i].std()), "min": float(a[:, i].min()),
               "max": float(a[:, i].max()), "top_fraction": float(top[i])} for i, n in enumerate(names)}
    means = a.mean(axis=0)
    dom = int(np.argmax(means))
    return {"samples": int(a.shape[0]), "encoders": per, "dominant": names[dom],
            "dominant_mean": float(means[dom]), "entropy_mean": entropy,
            "entropy_uniform": float(math.log(a.shape[1])) if a.shape[1] > 1 else 0.0,
            "collapsed": bool(means[dom] > COLLAPSE_MEAN and a.shape[1] > 1)}
