#!/usr/bin/env python3
"""Simulator cost per control step: the 7-joint arm (``wsa_ros.sim.arm7.Arm7Sim``, two cameras,
joint position targets, 0.05 s steps) beside the 2-joint Reacher (``ReacherSim``, one camera,
0.02 s steps), measured in the same run, on one core.

    python benchmarks/bench_sim_arm7.py                    # 84 and 128 px, 300 steps each
    python benchmarks/bench_sim_arm7.py --sizes 84 --steps 1000 --no-pin
    python benchmarks/bench_sim_arm7.py --expert 50        # + the expert's success over 50 episodes

Per sim and image size it prints (medians over ``--steps`` control steps, p95 in brackets):
``physics`` (one control step, render=False: Reacher 2 physics steps + its velocity loop,
arm7 5 physics steps + its PD loop), ``render/<camera>`` (one camera's frame, copied),
``step+render`` (one full ``step()`` with every camera rendered, what ``sim_arm_node`` does per
tick), the steps per second one core sustains, and the real-time factor that allows
(sim seconds per wall second: dt / step+render). For arm7 also the expert's time per call.

The process is pinned to one CPU core (``--no-pin`` to leave it free) before MuJoCo creates
its rendering context, so the software renderer's threads share that core too. The target
(issue 14): the closed loop keeps >= 10 control steps per second of sim time on the 2-core
dev machine with the agent and fine-tuner also running, so the sim alone should stay well
under 30 ms per control step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsa_ros.tools.bench import _time  # noqa: E402 - the engine benchmark's timer: seconds per call


def _ms(samples) -> str:
    import numpy as np

    a = np.asarray(samples) * 1e3
    return f"{np.median(a):7.3f} [{np.percentile(a, 95):7.3f}]"


def bench_sim(name: str, make, expert, size: int, steps: int) -> dict:
    """Times for one sim at one image size; ``make(render, size)`` builds it."""
    import numpy as np

    res = {"sim": name, "size": size}
    with make(False, size) as sim:  # physics (and the expert) alone
        sim.reset()
        phys, exp = [], []
        for i in range(steps):
            t = time.perf_counter()
            a = expert(sim)
            exp.append(time.perf_counter() - t)
            t = time.perf_counter()
            _, _, _, trunc, _ = sim.step(a)
            phys.append(time.perf_counter() - t)
            if trunc:
                sim.reset()
        res["physics"], res["expert"], res["dt"] = phys, exp, sim.dt
    with make(True, size) as sim:
        sim.reset()
        cams = list(getattr(sim, "camera_names", ["camera"]))
        for c in cams:
            render = (lambda c=c: sim.render(c)) if c != "camera" else sim.render
            render()  # first frame: context and buffers
            res[f"render/{c}"] = _time(render, steps, warm=0)
        full = []
        for i in range(steps):
            a = expert(sim)
            t = time.perf_counter()
            _, _, _, trunc, _ = sim.step(a)
            full.append(time.perf_counter() - t)
            if trunc:
                sim.reset()
        res["step+render"] = full
        res["cameras"] = cams
    med = float(np.median(full))
    res["steps_per_s"] = 1.0 / med
    res["real_time_factor"] = res["dt"] / med
    return res


def expert_success(episodes: int, noise: float, seed: int = 0) -> tuple[float, float]:
    """(success at the last step, success at any step) of arm7's expert over ``episodes``
    seeded episodes, with N(0, noise) rad added to every joint target."""
    import numpy as np

    from wsa_ros.sim.arm7 import Arm7Sim, expert_action

    rng = np.random.default_rng(1000 + seed)
    final, anyhit = [], []
    with Arm7Sim(seed=seed, render=False) as sim:
        for _ in range(episodes):
            sim.reset()
            hit = False
            for _ in range(sim.max_steps):
                a = expert_action(sim)
                if noise:
                    a = np.clip(a + rng.normal(0.0, noise, 7), sim.action_low, sim.action_high)
                _, _, _, trunc, info = sim.step(a)
                hit = hit or info["success"]
                if trunc:
                    break
            final.append(info["success"])
            anyhit.append(hit)
    return float(np.mean(final)), float(np.mean(anyhit))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="84,128", help="image sizes (px, square), comma-separated")
    ap.add_argument("--steps", type=int, default=300, help="control steps timed per measurement")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU core")
    ap.add_argument("--expert", type=int, default=0, help="also measure arm7's expert over N seeded episodes")
    args = ap.parse_args(argv)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})  # before the renderer's threads exist
        print(f"pinned to CPU core {core}")
    os.environ.setdefault("MUJOCO_GL", "egl")

    from wsa_ros.sim import arm7, reacher

    sims = [("reacher", lambda r, s: reacher.ReacherSim(seed=0, image_size=s, max_steps=100, render=r),
             reacher.expert_action),
            ("arm7", lambda r, s: arm7.Arm7Sim(seed=0, image_size=s, max_steps=100, render=r), arm7.expert_action)]
    rows = []
    for size in [int(x) for x in args.sizes.split(",")]:
        for name, make, expert in sims:
            rows.append(bench_sim(name, make, expert, size, args.steps))
    print(f"\nms per control step, median [p95], {args.steps} steps each")
    print(f"{'sim':8s} {'px':>4s} {'dt s':>5s} {'physics':>17s} {'render scene/camera':>19s} "
          f"{'render wrist':>17s} {'step+render':>17s} {'steps/s':>8s} {'RTF':>6s} {'expert':>17s}")
    for r in rows:
        cams = r["cameras"]
        r1 = _ms(r[f"render/{cams[0]}"])
        r2 = _ms(r[f"render/{cams[1]}"]) if len(cams) > 1 else f"{'-':>17s}"
        print(f"{r['sim']:8s} {r['size']:4d} {r['dt']:5.2f} {_ms(r['physics'])} {r1:>19s} {r2} "
              f"{_ms(r['step+render'])} {r['steps_per_s']:8.0f} {r['real_time_factor']:6.1f} {_ms(r['expert'])}")
    if args.expert:
        print(f"\narm7 expert over {args.expert} seeded episodes (100 steps, 5 s each): success at the last step / any step")
        for noise in (0.0, 0.05, 0.1):
            f, a = expert_success(args.expert, noise)
            print(f"  noise {noise:4.2f} rad: {f:.2f} / {a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
