#!/usr/bin/env python3
"""Which fine-tuning recipe beats behaviour cloning: the measurement that chose the demo's learner
settings (ROS-free, the simulated arm, the default bundle's frozen encoders).

    python benchmarks/bench_recipe.py                                   # the defaults below
    python benchmarks/bench_recipe.py --variants default,no-demo-bc --steps 20000 --demos 20

Per run (everything identical except the named variant's settings):

* the same ``--demos`` scripted-expert episodes with action noise (``--demo-noise`` rad/s, what
  ``wsa demo`` records into its demonstration bag), embedded once by the bundle's ONNX encoders;
* **bc**: a fresh head of the bundle's architecture (seed ``--seed``) trained by behaviour
  cloning on them (``learn.bc.behaviour_clone``, ``--bc-steps``) - the baseline to beat;
* **variants**: the same fresh head trained by the project's learner
  (``learn.sac.SACLearner`` + ``learn.replay.Replay``) from those demonstrations and its own
  online steps in the sim (exploring with SAC's stochastic policy, or as the agent does with
  ``--exploration-std``), ``utd`` updates per env step; ``--success-bonus`` adds a reward for
  every step within the success radius, to demonstrations and online steps alike;
* every ``--eval-every`` env steps, the deterministic policy on the same ``--eval-episodes``
  held-out episodes (``reset(seed=10000 + i)``, the demo's offline check); at the end the
  per-episode difference to bc with its 95 % interval (paired, normal approximation).

Prints one line per evaluation (success and the final-distance distribution) and a table;
``--out`` gets ``results.json``. The runs that chose the demo's settings are in the README
("Fine-tuning recipe").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVAL_SEED, DEMO_SEED = 10_000, 5_000

#: named variants: SACConfig overrides (sac) and head overrides (head) over BASE
BASE = {"batch_size": 256, "demo_ratio": 0.5, "demo_bc_weight": 1.0, "utd": 1.0, "warmup_transitions": 500,
        "discount": 0.97, "lr": 3e-4}
VARIANTS = {
    "default": {},                                            # what config/demo_fresh.yaml sets
    "no-demo-bc": {"sac": {"demo_bc_weight": 0.0}},           # RLPD alone
    "demo-bc-0.1": {"sac": {"demo_bc_weight": 0.1}},
    "demo-bc-0.3": {"sac": {"demo_bc_weight": 0.3}},
    "no-critic-ln": {"head": {"critic_norm": False}},         # plain MLP critics
    "demo-bc-3": {"sac": {"demo_bc_weight": 3.0}},
    "lr1e-4": {"sac": {"lr": 1e-4}},
    "discount0.9": {"sac": {"discount": 0.9}},
    "tau0.001": {"sac": {"tau": 0.001}},
    "utd2": {"sac": {"utd": 2.0}},
    "batch64": {"sac": {"batch_size": 64}},
    "q-filter": {"sac": {"demo_bc_q_filter": True}},            # BC only where the demo's action is worth more
    "actor-every-2": {"sac": {"actor_every": 2}},               # SERL's actor / critic step ratio
    "entropy1": {"sac": {"target_entropy_scale": 1.0}},         # target entropy -1 x action dims (0.5): narrower
    "entropy2": {"sac": {"target_entropy_scale": 2.0}},         # -2 x action dims: narrower still
    "nstep3": {"sac": {"n_step": 3}},                           # 3-step returns (DrQ-v2's)
    "nstep5": {"sac": {"n_step": 5}},
    "temp1e-3": {"sac": {"init_temperature": 1e-3}},           # SAC's temperature starts 10x lower (0.01)
    "temp1e-4": {"sac": {"init_temperature": 1e-4}},
    "success-demos": {"run": {"success_demos": True}},          # each successful online episode joins the demos
}


def variant(name: str) -> dict:
    """A variant's overrides; ``a+b`` combines named variants (later ones win)."""
    out = {"sac": {}, "head": {}, "run": {}}
    for part in name.split("+"):
        for k in out:
            out[k].update(VARIANTS[part].get(k, {}))
    return out


class Setup:
    def __init__(self, args):
        import torch

        from wsa_ros.runtime.bundle import load_bundle
        from wsa_ros.runtime.engine import Engine
        from wsa_ros.learn.transitions import TransitionSpec

        torch.set_num_threads(args.threads)
        self.args = args
        self.bundle = load_bundle(args.bundle)
        self.engine = Engine(self.bundle, providers=("cpu",), threads=args.threads, fuse=False, warmup=True)
        self.cam = self.bundle.cameras[0]
        self.spec = TransitionSpec.from_bundle(self.bundle)
        self.names = [n for n, _ in self.spec.encoders]

    def embed(self, image) -> dict[str, np.ndarray]:
        e = self.engine.embed({self.cam: image})
        return {n: e[n][0] for n in self.names}

    def proprio(self, obs) -> np.ndarray:
        from wsa_ros.sim.rollout import sim_proprio

        return sim_proprio(self.bundle.proprio, obs).astype(np.float32)

    def record(self, steps: list) -> dict[str, np.ndarray]:
        """[(emb, prop, action[-1,1], reward, next_emb, next_prop, truncated)] -> flat records
        (``bench_learning._records``, the learning benchmark's own)."""
        from benchmarks.bench_learning import _records

        stack = lambda i: {n: np.stack([s[i][n] for s in steps]) for n in self.names}  # noqa: E731
        return _records(stack(0), np.stack([s[1] for s in steps]), np.stack([s[2] for s in steps]),
                        [s[3] for s in steps], stack(4), np.stack([s[5] for s in steps]), [s[6] for s in steps])

    def demos(self) -> list[dict]:
        from wsa_ros.sim.expert import GaussianNoise, expert_episodes
        from wsa_ros.sim.reacher import ReacherSim

        a = self.args
        rng = np.random.default_rng(DEMO_SEED + a.seed)
        out, succ = [], []
        with ReacherSim(seed=DEMO_SEED + a.seed, image_size=self.engine_size(), max_steps=a.episode_steps) as sim:
            high = sim.action_high
            for ep in expert_episodes(sim, rng, a.demos, GaussianNoise(a.demo_noise)):
                rows = []
                for i, s in enumerate(ep.steps):
                    rows.append((self.embed(s.obs["image"]), self.proprio(s.obs), s.action / high,
                                 s.reward + a.success_bonus * float(s.info["success"]),
                                 self.embed(s.next_obs["image"]), self.proprio(s.next_obs), i == len(ep.steps) - 1))
                out.append(self.record(rows))
                succ.append(ep.success)
        self.demo_success = float(np.mean(succ))
        return out

    def engine_size(self) -> tuple[int, int]:
        enc = self.bundle.encoders[0].input
        return (enc.height, enc.width)

    def evaluate(self, learner) -> list[bool]:
        from wsa_ros.sim.reacher import ReacherSim
        from wsa_ros.sim.rollout import evaluate

        def act(obs):
            a = learner.act(self.embed(obs["image"]), self.proprio(obs), deterministic=True)
            return a * sim.action_high

        with ReacherSim(seed=EVAL_SEED, image_size=self.engine_size(), max_steps=self.args.episode_steps) as sim:
            ev = evaluate(sim, act, self.args.eval_episodes, EVAL_SEED)
        d = np.array([e.final_distance for e in ev.episodes])
        print(f"    final distance: median {np.median(d) * 100:.1f} cm, within 2/3/5 cm {np.mean(d < .02):.2f}/"
              f"{np.mean(d < .03):.2f}/{np.mean(d < .05):.2f}, over 10 cm {np.mean(d > .1):.2f}", flush=True)
        return [e.success for e in ev.episodes]


def fresh(setup, head_over: dict, sac_over: dict, seed: int):
    import torch

    from wsa_ros.config import SACConfig, from_dict
    from wsa_ros.learn.replay import Replay
    from wsa_ros.learn.sac import SACLearner
    from wsa_ros.model.wsa import FusionPolicy

    torch.manual_seed(seed)
    policy = FusionPolicy.from_config({**setup.bundle.head, **head_over})
    sac = from_dict(SACConfig, {**BASE, **sac_over, "seed": seed}, where="bench_recipe")
    b = setup.bundle
    learner = SACLearner(policy, sac, b.proprio.mean, b.proprio.std)
    replay = Replay(setup.spec, capacity=setup.args.steps + 1,
                    demo_capacity=setup.args.demos * setup.args.episode_steps + setup.args.steps, holdout_every=0)
    return learner, replay, sac


def run_bc(setup, demos) -> dict:
    from wsa_ros.learn.bc import behaviour_clone

    learner, replay, _ = fresh(setup, {}, {}, setup.args.seed)
    for d in demos:
        replay.add(d, demo=True)
    t0 = time.perf_counter()
    behaviour_clone(learner.policy, replay, setup.args.bc_steps, 256, 3e-4, setup.bundle.proprio.mean,
                    setup.bundle.proprio.std, seed=setup.args.seed)
    learner.policy.eval()
    s = setup.evaluate(learner)
    print(f"[bc] {setup.args.bc_steps} steps ({time.perf_counter() - t0:.0f} s): success {np.mean(s):.2f}", flush=True)
    return {"success": s}


def run_variant(setup, name: str, demos) -> dict:
    import torch

    from wsa_ros.sim.reacher import ReacherSim

    a = setup.args
    v = variant(name)
    learner, replay, sac = fresh(setup, v["head"], v["sac"], a.seed)
    for d in demos:
        replay.add(d, demo=True)
    gen = torch.Generator().manual_seed(a.seed)
    explore = np.random.default_rng(a.seed)
    curve, t0, owed, t_upd = [], time.perf_counter(), 0.0, 0.0
    episode, promoted = [], 0  # this episode's records; successful episodes copied to the demos
    live = []  # per online episode since the last evaluation: did the sampled policy end within the radius
    with ReacherSim(seed=a.seed, image_size=setup.engine_size(), max_steps=a.episode_steps) as sim:
        high = sim.action_high
        obs = sim.reset()
        emb, prop = setup.embed(obs["image"]), setup.proprio(obs)
        for t in range(a.steps + 1):
            if t % a.eval_every == 0 and t > 0:
                learner.policy.eval()
                s = setup.evaluate(learner)
                learner.policy.train()
                curve.append({"env_steps": t, "updates": learner.updates, "wall_s": time.perf_counter() - t0,
                              "success": float(np.mean(s)), "per_episode": s})
                curve[-1]["live_success"] = float(np.mean(live)) if live else None
                print(f"[{name}] step {t:>6}  updates {learner.updates:>6}  success {np.mean(s):.2f}  live "
                      f"{np.mean(live) if live else float('nan'):.2f} of {len(live)}  (demo buffer {len(replay.demos)}: "
                      f"{promoted} online episodes added; {time.perf_counter() - t0:.0f} s, {learner.updates / max(t_upd, 1e-9):.0f} upd/s)", flush=True)
                live = []
            if t == a.steps:
                break
            if a.exploration_std > 0:  # the agent's rule (agent_core): the policy's action + N(0, std), clipped
                act = np.clip(learner.act(emb, prop) + explore.normal(0.0, a.exploration_std, 2), -1.0, 1.0)
            else:  # SAC's own sampling from the stochastic policy
                act = learner.act(emb, prop, deterministic=False, generator=gen)
            nobs, r, term, trunc, info = sim.step(act * high)
            r += a.success_bonus * float(info["success"])
            nemb, nprop = setup.embed(nobs["image"]), setup.proprio(nobs)
            rec = setup.record([(emb, prop, act, r, nemb, nprop, trunc)])
            replay.add(rec)
            episode.append(rec)
            if t + 1 >= sac.warmup_transitions:
                owed += sac.utd
                while owed >= 1.0:
                    owed -= 1.0
                    t1 = time.perf_counter()
                    learner.update(learner.sample(replay), metrics=False)
                    t_upd += time.perf_counter() - t1
            if trunc or term:
                if v["run"].get("success_demos") and info["success"]:
                    replay.add({k: np.concatenate([e[k] for e in episode]) for k in episode[0]}, demo=True)
                    promoted += 1
                episode = []
                live.append(bool(info["success"]))
                obs = sim.reset()
                emb, prop = setup.embed(obs["image"]), setup.proprio(obs)
            else:
                emb, prop = nemb, nprop
    return {"curve": curve, "success": curve[-1]["per_episode"], "updates_per_s": learner.updates / max(t_upd, 1e-9)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(ROOT / "models" / "default"))
    ap.add_argument("--variants", default="default", help=f"comma list of {', '.join(VARIANTS)}; a+b combines two [%(default)s]")
    ap.add_argument("--demos", type=int, default=20, help="demonstration episodes [%(default)s]")
    ap.add_argument("--demo-noise", type=float, default=0.6, help="expert action noise, rad/s [%(default)s]")
    ap.add_argument("--episode-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20000, help="env steps per variant [%(default)s]")
    ap.add_argument("--eval-every", type=int, default=5000)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--bc-steps", type=int, default=2000)
    ap.add_argument("--success-bonus", type=float, default=0.0,
                    help="added to the reward of every step that ends within the success radius [%(default)s]")
    ap.add_argument("--exploration-std", type=float, default=0.0,
                    help="online actions: the deterministic policy + N(0, std) in [-1, 1] units, as the agent "
                         "explores (agent_node exploration_std); 0 = SAC's own sampling [%(default)s]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/bench_recipe")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [p for v in names for p in v.split("+") if p not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    from wsa_ros.tools.demo import paired_difference  # the demo's paired check, the same rule

    setup = Setup(args)
    t0 = time.perf_counter()
    demos = setup.demos()
    print(f"{args.demos} demonstrations ({args.demos * args.episode_steps} steps, expert success with noise "
          f"{setup.demo_success:.2f}) embedded in {time.perf_counter() - t0:.0f} s", flush=True)
    res = {"command": " ".join(sys.argv), "args": vars(args), "base": BASE, "bc": run_bc(setup, demos)}
    bc = res["bc"]["success"]
    rows = [f"| bc ({args.bc_steps} steps) | {np.mean(bc):.2f} | | |"]
    for name in names:
        r = run_variant(setup, name, demos)
        pd = paired_difference(r["success"], bc)
        d, hw = pd["mean"], pd["mean"] - pd["ci95"][0]
        r.update(diff_vs_bc=d, ci95=hw)
        res[name] = r
        rows.append(f"| {name} ({args.steps} env steps) | {np.mean(r['success']):.2f} | {d:+.2f} ± {hw:.2f} | "
                    f"{r['updates_per_s']:.0f} |")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"\n{args.eval_episodes} held-out episodes, {args.demos} demonstrations, seed {args.seed}\n")
    print("| policy | success | minus bc (95 % interval) | updates/s |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
