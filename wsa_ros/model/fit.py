"""The bundle builders' shared pieces (``wsa build-bundle``, on the sim and ``--from-bags``):
behaviour cloning of a WSA head on in-memory embeddings, and plain report values."""
from __future__ import annotations

import numpy as np


def progress(total: int, desc: str, log=None):
    """A progress bar (tqdm, on stderr) over ``total`` steps of a build: shown on a terminal,
    off when quiet (``log`` None) or when stderr is not a terminal (CI, a log file), where the
    build's periodic lines are the record. Use as a context manager; ``update(n)``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                disable=True if log is None else None)


def say(msg: str) -> None:
    """Print a build's log line above any progress bar on the terminal."""
    from tqdm import tqdm

    tqdm.write(msg)


def adam_steps(opt, losses, steps: int, desc: str, log, every: int, line: str, sched=None) -> float:
    """The builds' one optimisation loop: for each loss of ``losses`` (a generator computing one
    per step) backward and ``opt``/``sched`` step, a progress bar (``progress``) and ``line``
    (formatted with i, steps, loss) logged every ``every`` steps and at the last. Returns the last
    loss."""
    last = float("nan")
    with progress(steps, desc, log) as bar:
        for i, loss in enumerate(losses):
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            last = float(loss.detach())
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix_str(f"loss {last:.4f}", refresh=False)
            if log is not None and (i % every == 0 or i == steps - 1):
                log(line.format(i=i, steps=steps, loss=last))
    return last


def bc_train(policy, embs, proprio, labels, steps, batch, lr, seed, log, tag):
    """Adam with a cosine learning-rate decay on MSE(tanh(mean), label); 10% held out."""
    import math

    import torch
    import torch.nn.functional as F

    n = len(labels)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, n // 10)
    val, tr = perm[:n_val], perm[n_val:]
    params = policy.fusion_parameters() + policy.actor_parameters()
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, steps) / steps)))

    def loss_on(idx):
        e = {k: v[idx] for k, v in embs.items()}
        a, _ = policy.deterministic_action(e, proprio[idx] if proprio is not None else None)
        return F.mse_loss(a, labels[idx])

    policy.train()
    last = adam_steps(opt, (loss_on(tr[torch.randint(0, len(tr), (min(batch, len(tr)),), generator=gen)])
                            for _ in range(steps)), steps, tag, log, every=500,
                      line=tag + " step {i}/{steps} mse {loss:.4f}", sched=sched)
    policy.eval()
    with torch.no_grad():
        val_loss = float(loss_on(val))
        train_loss = float(loss_on(tr[: min(len(tr), 4096)]))
    return {"steps": steps, "samples": n, "train_mse": train_loss, "val_mse": val_loss, "last_batch_mse": last}



def plain(x):
    """Plain YAML-safe types, floats rounded to 6 digits."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return round(float(x), 6)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, str):
        return str(x)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x
