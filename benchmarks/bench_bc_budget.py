#!/usr/bin/env python3
"""Behaviour cloning's held-out success by demonstration budget and seed, made exactly as
``wsa demo`` (fresh start) makes its baseline: the seed's scripted-expert rosbag of N episodes,
``wsa import-demos --bc-steps`` on a fresh head, then the demo's offline check (50 held-out
episodes, ``reset(seed=10000+i)``). Issue 13 asks for a budget at which BC stays below 0.75;
this says which budgets do, per seed.

    python benchmarks/bench_bc_budget.py --demos 10 14 20 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(ROOT / "models" / "default"))
    ap.add_argument("--demos", type=int, nargs="+", default=[10, 14, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--bc-steps", type=int, default=2000)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--below", type=float, default=0.75, help="the level BC must stay under [%(default)s]")
    args = ap.parse_args(argv)

    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.tools.demo import ARM_EPISODE_STEPS, offline_eval, prepare_fresh_start

    bundle = load_bundle(args.bundle)
    steps = ARM_EPISODE_STEPS["reacher"]
    table: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_bc_budget_") as td:
        for n in args.demos:
            for seed in args.seeds:
                t0 = time.perf_counter()
                out = Path(td) / f"{n}_{seed}"
                made = prepare_fresh_start(bundle, out, seed, n, steps, 84, args.bc_steps, say=lambda *a, **k: None)
                ev = offline_eval(made["bc_bundle"], args.eval_episodes, 10_000, 84, steps)
                table.setdefault(n, []).append(ev["success_final"])
                print(f"demos {n:>3}  seed {seed}  BC success {ev['success_final']:.2f}  "
                      f"(mean final distance {ev['final_distance_m'] * 100:.1f} cm; {time.perf_counter() - t0:.0f} s)",
                      flush=True)
    print(f"\n| demos | BC per seed {tuple(args.seeds)} | max | all below {args.below} |\n|---|---|---|---|")
    for n, s in table.items():
        print(f"| {n} | {' / '.join(f'{x:.2f}' for x in s)} | {max(s):.2f} | {'yes' if max(s) < args.below else 'no'} |")
    return 0 if table else 1


if __name__ == "__main__":
    raise SystemExit(main())
