#!/usr/bin/env python3
"""Learning comparison on the simulated arm (ROS-free): WSA vs concatenation vs uniform mean vs
a single encoder vs an end-to-end CNN from pixels, same RL algorithm, same budget, N seeds.

    python benchmarks/bench_learning.py                      # defaults below, out/bench_learning/
    python benchmarks/bench_learning.py --quick              # seconds-long smoke configuration
    python benchmarks/bench_learning.py --steps 3000 --seeds 3 --jobs 2 --threads 1

What runs, per method and seed (everything identical across methods except the head's fusion):

* **Environment**: ``wsa_ros.sim.reacher.ReacherSim`` (gymnasium Reacher-v5, velocity actions
  in [-3, 3] rad/s, 84x84 RGB frames at the bundle's encoder input size, reward
  ``-distance - 0.01 ||a/high||^2``, episodes of ``--episode-steps`` steps, never terminated).
  Training env seeded with the run seed; evaluation always on the same episodes
  (``reset(seed=10000 + i)``, i < ``--eval-episodes``), deterministic policy (tanh of the
  mean), every ``--eval-every`` env steps and at the end. Success = fingertip within 2 cm of the
  target at the last step of the episode (``success``); ``success_any`` = at any step.
* **Observations**: the frozen encoders of the bundle (``--bundle``, default ``models/default``:
  ``ae`` [64] context, ``kp`` [16,2], ``pose`` [4]; the recorded runs in ``docs/learning-benchmark``
  used the bundle of their time: ``ae`` [64,16,16] feature+context, ``idm`` [64], ``kp`` [8,2]) run once per env step through
  ONNX Runtime (``Engine.embed``); the e2e baseline gets the frame itself as a float [3,H,W] in
  [0,1] (what ``wsa_ros.model.encoders.Pixels`` outputs) and trains a Nature CNN on it.
  Proprioception (joint positions and velocities, the bundle's normalisation) for every method.
* **Heads**: ``FusionPolicy.from_config(make_head_config(fusion, encoders, ...))``, fresh
  (not the bundle's trained head), with the same hyper-parameters for every method (``d``,
  actor/critic sizes, adapter kind; by default those of the bundle's own head). Fusions:
  ``wsa``, ``concat``, ``mean``, ``single`` (the single encoder picked by a short probe: every
  feature encoder trained for ``--probe-steps`` on a separate probe seed, best final success,
  then best final return, wins; or ``single:NAME`` for a given one, or ``singles`` for all of
  them as separate rows), ``e2e``.
* **Learner**: the project's SAC/RLPD learner (``wsa_ros.learn.sac.SACLearner``) and replay
  (``wsa_ros.learn.replay.Replay``: online + demonstrations, 50/50 batches when there are demos),
  ``--utd`` updates per env step after ``--learning-starts`` steps, batch ``--batch``,
  ``--demo-bc-weight`` (behaviour cloning on the batch's demonstration rows; 0 = RLPD only).
  Demonstrations (``--demo-episodes`` episodes of the scripted expert with Gaussian action noise
  ``--demo-noise`` x 3 rad/s) are generated once per seed (separate demo seed) and the very same
  frames go to every method of that seed.

Measured per run: the evaluation curve (success, success_any, return, final distance vs env
steps), trainable parameters (total and per part), wall-clock per env step (sim step + render,
embedding, action choice) and per update (replay sampling + SAC update), the weights alpha
(mean per encoder over the final evaluation; the mean over the training batches of each
interval) and, for WSA, alpha over one evaluation episode (the first one, before training and
after the last step).

Outputs under ``--out``: ``curves.csv`` (every evaluation point of every run), ``runs.csv``
(per-run summary), ``alpha_trace.csv``, ``probe.csv`` (when a probe ran), ``results.md`` (the
command line, the settings and the table), ``results.json``, ``success_vs_steps.png`` and
``alpha_episode.png``. The outputs are rewritten after every finished run, so an interrupted
benchmark leaves the runs that completed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVAL_SEED = 10_000  # evaluation episodes: reset(seed=EVAL_SEED + i), the same for every run
DEMO_SEED = 5_000  # demonstrations of run seed s: ReacherSim(seed=DEMO_SEED + s)
PROBE_SEED = 1_000  # the single-encoder probe's seed (not one of the reported seeds)
BASE_METHODS = ("wsa", "concat", "mean", "single", "e2e")
QUICK = dict(steps=60, episode_steps=15, eval_every=30, eval_episodes=1, demo_episodes=1, batch=16,
             learning_starts=10, d=16, hidden=32, probe_steps=30)


# =============================================================================== arguments
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "models" / "default"), help="bundle with the frozen encoders")
    ap.add_argument("--steps", type=int, default=None, help="env steps per run [3000; quick 60]")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method [%(default)s]")
    ap.add_argument("--methods", default=",".join(BASE_METHODS),
                    help="comma list of wsa, concat, mean, single (probe-chosen), single:NAME, singles, e2e "
                         "[%(default)s]")
    ap.add_argument("--eval-every", type=int, default=None, help="env steps between evaluations [500; quick 30]")
    ap.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation [5; quick 1]")
    ap.add_argument("--episode-steps", type=int, default=None, help="steps per episode (0.02 s each) [50; quick 15]")
    ap.add_argument("--demo-episodes", type=int, default=None,
                    help="expert demonstration episodes per seed, shared by all methods; 0 = none [20; quick 1]")
    ap.add_argument("--demo-noise", type=float, default=0.2, help="demo action noise std, fraction of 3 rad/s")
    ap.add_argument("--batch", type=int, default=None, help="SAC batch size [64; quick 16]")
    ap.add_argument("--utd", type=float, default=1.0, help="updates per env step [%(default)s]")
    ap.add_argument("--demo-bc-weight", type=float, default=0.0,
                    help="SACConfig.demo_bc_weight: behaviour cloning on each batch's demonstration rows, "
                         "the same for every method (0 = RLPD only) [%(default)s]")
    ap.add_argument("--learning-starts", type=int, default=None,
                    help="env steps before the first update [100; quick 10]")
    ap.add_argument("--d", type=int, default=None, help="head width d [the bundle head's; quick 16]")
    ap.add_argument("--hidden", type=int, default=None,
                    help="actor and critic hidden width, two layers [the bundle head's; quick 32]")
    ap.add_argument("--spatial-adapter", choices=("conv", "keypoints"), default=None,
                    help="adapter of [C,H,W] maps [the bundle head's]")
    ap.add_argument("--context-adapter", choices=("flat", "spatial"), default=None,
                    help="WSA context adapter [the bundle head's]")
    ap.add_argument("--probe-steps", type=int, default=None,
                    help="env steps of each single-encoder probe run [steps // 2; quick 30]")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes) [%(default)s]")
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads per run [%(default)s]")
    ap.add_argument("--out", default="out/bench_learning", help="output folder [%(default)s]")
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke configuration")
    args = ap.parse_args(argv)
    defaults = dict(steps=3000, episode_steps=50, eval_every=500, eval_episodes=5, demo_episodes=20, batch=64,
                    learning_starts=100, d=None, hidden=None, probe_steps=None)
    for k, v in (QUICK if args.quick else defaults).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.probe_steps is None:
        args.probe_steps = max(args.steps // 2, 1)
    for k in ("steps", "seeds", "eval_every", "eval_episodes", "episode_steps", "batch", "jobs", "threads",
              "probe_steps"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    if args.demo_episodes < 0 or args.learning_starts < 0 or args.utd < 0 or args.demo_bc_weight < 0:
        ap.error("--demo-episodes, --learning-starts, --utd and --demo-bc-weight must be >= 0")
    return args


def head_options(args, bundle) -> dict:
    """The head hyper-parameters shared by every method: the bundle head's, with overrides."""
    h = dict(bundle.head or {})
    opts = {
        "d": int(args.d if args.d is not None else h.get("d", 64)),
        "actor_hidden": [args.hidden] * 2 if args.hidden else list(h.get("actor_hidden", [256, 256])),
        "critic_hidden": [args.hidden] * 2 if args.hidden else list(h.get("critic_hidden", [256, 256])),
        "scorer_hidden": int(h.get("scorer_hidden", 0)),
        "adapter_channels": int(h.get("adapter_channels", 16)),
        "spatial_adapter": args.spatial_adapter or h.get("spatial_adapter", "conv"),
        "adapter_keypoints": int(h.get("adapter_keypoints", 16)),
        "context_adapter": args.context_adapter or h.get("context_adapter", "flat"),
        "log_std": h.get("log_std", "state"),
        "log_std_init": float(h.get("log_std_init", -0.5)),
    }
    return opts


def expand_methods(spec: str, feature_names: list[str]) -> list[str]:
    out: list[str] = []
    for m in (x.strip() for x in spec.split(",")):
        if not m:
            continue
        if m == "singles":
            out += [f"single:{n}" for n in feature_names]
        elif m in BASE_METHODS:
            out.append(m)
        elif m.startswith("single:"):
            if m.split(":", 1)[1] not in feature_names:
                raise SystemExit(f"bench_learning: error: '{m}': no feature encoder of that name {feature_names}")
            out.append(m)
        else:
            raise SystemExit(f"bench_learning: error: unknown method '{m}' (wsa, concat, mean, single, "
                             f"single:NAME, singles, e2e)")
    seen: list[str] = []
    for m in out:
        if m not in seen:
            seen.append(m)
    if not seen:
        raise SystemExit("bench_learning: error: no method given")
    return seen


# =============================================================================== heads
def method_encoders(method: str, bundle) -> tuple[str, list[dict], str | None]:
    """-> (fusion, head encoder list, single name): the encoders a method's head reads."""
    if method == "e2e":
        cam = bundle.encoders[0].input
        return "e2e", [{"name": "pixels", "output_shape": [3, cam.height, cam.width], "role": "feature"}], "pixels"
    encs = [{"name": e.name, "output_shape": list(e.output_shape), "role": e.role} for e in bundle.encoders]
    if method.startswith("single:"):
        name = method.split(":", 1)[1]
        enc = next(e for e in encs if e["name"] == name)
        return "single", [{**enc, "role": "feature"}], name
    return method, encs, None


def build_head(method: str, bundle, opts: dict):
    from wsa_ros.model.wsa import FusionPolicy, make_head_config

    fusion, encs, single = method_encoders(method, bundle)
    extra = {"single": single} if single else {}
    cfg = make_head_config(fusion, encs, bundle.action.dim, bundle.proprio.dim if bundle.proprio else 0,
                           "softmax", **opts, **extra)
    return FusionPolicy.from_config(cfg)


def count_params(policy) -> dict[str, int]:
    def n(mod) -> int:
        return 0 if mod is None else sum(p.numel() for p in mod.parameters() if p.requires_grad)

    out = {
        "params_total": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "params_adapters": n(policy.adapters),
        "params_context": n(policy.context_adapter),
        "params_scorer": n(policy.scorer),
        "params_fuse": n(policy.fuse),
        "params_actor": sum(p.numel() for p in policy.actor_parameters()),
        "params_critic": sum(p.numel() for p in policy.critic_parameters()),
    }
    return out


# =============================================================================== demonstrations
def make_demos(seed: int, episodes: int, episode_steps: int, noise: float, image_size: tuple[int, int]) -> dict:
    """Expert episodes with Gaussian action noise (``sim.expert``), rendered: frames [E, T+1, H, W, 3]
    uint8, position/velocity [E, T+1, 2], action (normalised) [E, T, 2], reward [E, T]."""
    from wsa_ros.sim.expert import GaussianNoise, expert_episodes
    from wsa_ros.sim.reacher import ReacherSim

    rng = np.random.default_rng(DEMO_SEED + seed)
    frames, pos, vel, act, rew, succ = [], [], [], [], [], []
    with ReacherSim(seed=DEMO_SEED + seed, image_size=image_size, max_steps=episode_steps) as sim:
        high = sim.action_high
        for ep in expert_episodes(sim, rng, episodes, GaussianNoise(noise * high)):
            obs = [s.obs for s in ep.steps] + [ep.steps[-1].next_obs]
            frames.append(np.stack([o["image"] for o in obs]))
            pos.append(np.stack([o["position"] for o in obs]))
            vel.append(np.stack([o["velocity"] for o in obs]))
            act.append(np.stack([s.action / high for s in ep.steps]))
            rew.append(np.asarray([s.reward for s in ep.steps]))
            succ.append(ep.success)
    return {"frames": np.stack(frames), "position": np.stack(pos), "velocity": np.stack(vel),
            "action": np.stack(act).astype(np.float32), "reward": np.stack(rew).astype(np.float32),
            "success": np.asarray(succ)}


# =============================================================================== one run
class Observer:
    """Frames -> what a method's head reads: the frozen encoders through ONNX Runtime
    (``Engine.embed``, every encoder of the bundle) or, for e2e, the frame as [3,H,W] in [0,1]."""

    def __init__(self, bundle, names: list[str], e2e: bool, threads: int):
        self.bundle, self.names, self.e2e = bundle, names, e2e
        self.cam = bundle.encoders[0].camera
        self.engine = None
        if not e2e:
            from wsa_ros.runtime.engine import Engine

            self.engine = Engine(bundle, providers=("cpu",), threads=threads, fuse=False, warmup=True)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if self.e2e:
            return {"pixels": image.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)}
        e = self.engine.embed({self.cam: image})
        return {n: e[n][0] for n in self.names}

    def batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.e2e:
            return {"pixels": images.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)}
        out = {n: [] for n in self.names}
        for i in range(0, len(images), 256):
            e = self.engine.embed_batch({self.cam: images[i:i + 256]})
            for n in self.names:
                out[n].append(e[n])
        return {n: np.concatenate(v) for n, v in out.items()}


def _proprio(bundle, obs) -> np.ndarray:
    from wsa_ros.sim.rollout import sim_proprio

    return sim_proprio(bundle.proprio, obs).astype(np.float32)


def _records(obs_e, obs_p, act, rew, nxt_e, nxt_p, truncated) -> dict[str, np.ndarray]:
    n = len(rew)
    rec = {f"obs.{k}": v for k, v in obs_e.items()}
    rec.update({f"next.{k}": v for k, v in nxt_e.items()})
    rec.update({"obs.proprio": obs_p, "next.proprio": nxt_p, "action": np.asarray(act, np.float32),
                "reward": np.asarray(rew, np.float32), "terminated": np.zeros(n, bool),
                "truncated": np.asarray(truncated, bool), "intervention": np.zeros(n, bool)})
    return rec


def _act(learner, emb, proprio, deterministic: bool, gen):
    """-> (action in [-1, 1] [A], alpha [K]) for one observation."""
    import torch

    with torch.no_grad():
        e = {k: torch.as_tensor(v).unsqueeze(0) for k, v in emb.items()}
        p = learner.proprio({"proprio": torch.as_tensor(proprio).unsqueeze(0)})
        mean, log_std, alpha = learner.policy.actor(e, p)
        if not deterministic:
            mean = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
        return torch.tanh(mean)[0].numpy(), alpha[0].numpy()


def evaluate(sim, observer, learner, bundle, episodes: int, want_trace: bool) -> dict:
    """The learner's deterministic policy on ``episodes`` fixed episodes (``sim.rollout``)."""
    from wsa_ros.sim.rollout import evaluate as rollout

    high = sim.action_high
    alphas, trace = [], []

    def act(obs):
        a, alpha = _act(learner, observer(obs["image"]), _proprio(bundle, obs), True, None)
        alphas.append(alpha)
        return a * high

    def on_step(obs, a, r, nobs, info, term, trunc):
        if want_trace and ep_index[0] == 0:
            trace.append([info["distance"], *alphas[-1].tolist()])

    ep_index = [0]
    ev = rollout(sim, act, episodes, EVAL_SEED, on_step=on_step,
                 on_episode=lambda i, _r: ep_index.__setitem__(0, i + 1))
    e = ev.episodes
    return {"success": float(np.mean([x.success for x in e])), "success_any": float(np.mean([x.reached for x in e])),
            "return": float(np.mean([x.ret for x in e])), "final_distance": float(np.mean([x.final_distance for x in e])),
            "alpha": np.mean(alphas, axis=0), "trace": np.asarray(trace) if want_trace else None}


def run_one(method: str, seed: int, cfg: dict) -> dict:
    """Train one method with one seed; -> curves, timings, params and alpha records."""
    import torch

    from wsa_ros.config import SACConfig, from_dict
    from wsa_ros.learn.replay import Replay
    from wsa_ros.learn.sac import SACLearner
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.sim.reacher import ReacherSim

    t_start = time.perf_counter()
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    bundle = load_bundle(cfg["bundle"])
    policy = build_head(method, bundle, cfg["head"])
    params = count_params(policy)
    _, encs, _ = method_encoders(method, bundle)
    # the encoders the head reads (single: one; e2e: the pixels), the only ones stored
    names = [e["name"] for e in encs if e["name"] in policy.used_names or e["name"] == policy.context_name]
    shapes = {e["name"]: tuple(e["output_shape"]) for e in encs}
    spec = TransitionSpec(encoders=tuple((n, shapes[n]) for n in names), proprio_dim=bundle.proprio.dim,
                          action_joints=tuple(bundle.action.joint_names), low=tuple(bundle.action.low),
                          high=tuple(bundle.action.high))
    observer = Observer(bundle, names, method == "e2e", cfg["threads"])
    steps, ep_steps = cfg["steps"], cfg["episode_steps"]
    demos = cfg.get("demos")
    n_demo = 0 if demos is None else demos["action"].size // demos["action"].shape[-1]
    replay = Replay(spec, capacity=steps + 1, demo_capacity=max(n_demo, 1), holdout_every=0)
    sac = from_dict(SACConfig, cfg["sac"], where="bench_learning")
    learner = SACLearner(policy, sac, bundle.proprio.mean, bundle.proprio.std)
    if demos is not None:
        from wsa_ros.runtime.observation import build_proprio

        E, T1 = demos["frames"].shape[:2]
        emb = observer.batch(demos["frames"].reshape(E * T1, *demos["frames"].shape[2:]))
        emb = {k: v.reshape(E, T1, *v.shape[1:]) for k, v in emb.items()}
        prop = np.stack([[build_proprio(bundle.proprio, list(bundle.proprio.joint_names), demos["position"][i, t],
                                        demos["velocity"][i, t]) for t in range(T1)] for i in range(E)])
        prop = prop.astype(np.float32)
        for i in range(E):
            trunc = np.zeros(T1 - 1, bool)
            trunc[-1] = True
            replay.add(_records({k: v[i, :-1] for k, v in emb.items()}, prop[i, :-1], demos["action"][i],
                                demos["reward"][i], {k: v[i, 1:] for k, v in emb.items()}, prop[i, 1:], trunc),
                       demo=True)
    size = tuple(cfg["image_size"])
    sim = ReacherSim(seed=seed, image_size=size, max_steps=ep_steps)
    eval_sim = ReacherSim(seed=EVAL_SEED, image_size=size, max_steps=ep_steps)
    high = sim.action_high
    curve, traces = [], {}
    t_env = t_embed = t_act = t_update = 0.0
    n_updates, owed = 0, 0.0
    train_alpha: list[list[float]] = []
    tag = f"[{method} s{seed}]"

    def do_eval(step: int) -> None:
        r = evaluate(eval_sim, observer, learner, bundle, cfg["eval_episodes"], want_trace=(step == 0 or step == steps))
        if r["trace"] is not None:
            traces["initial" if step == 0 else "final"] = r["trace"]
        ta = np.mean(train_alpha, axis=0) if train_alpha else np.full(len(policy.feature_names), np.nan)
        train_alpha.clear()
        curve.append({"env_steps": step, "updates": n_updates, "wall_s": time.perf_counter() - t_start,
                      "success": r["success"], "success_any": r["success_any"], "return": r["return"],
                      "final_distance": r["final_distance"],
                      **{f"alpha_{n}": float(a) for n, a in zip(policy.feature_names, r["alpha"])},
                      **{f"alpha_train_{n}": float(a) for n, a in zip(policy.feature_names, ta)}})
        if cfg.get("verbose", True):
            print(f"{tag} step {step:>6}/{steps}  success {r['success']:.2f}  any {r['success_any']:.2f}  "
                  f"return {r['return']:8.3f}  dist {r['final_distance']:.3f} m  updates {n_updates}  "
                  f"({time.perf_counter() - t_start:.0f} s)", flush=True)

    try:
        obs = sim.reset()
        emb, prop = observer(obs["image"]), _proprio(bundle, obs)
        for t in range(steps):
            if t % cfg["eval_every"] == 0:
                do_eval(t)
            t0 = time.perf_counter()
            a, _ = _act(learner, emb, prop, False, gen)
            t1 = time.perf_counter()
            nobs, r, term, trunc, _ = sim.step(a * high)
            t2 = time.perf_counter()
            nemb, nprop = observer(nobs["image"]), _proprio(bundle, nobs)
            t3 = time.perf_counter()
            t_act += t1 - t0
            t_env += t2 - t1
            t_embed += t3 - t2
            replay.add(_records({k: v[None] for k, v in emb.items()}, prop[None], a[None], [r],
                                {k: v[None] for k, v in nemb.items()}, nprop[None], [trunc]))
            if t + 1 >= sac.warmup_transitions:
                owed += sac.utd
                while owed >= 1.0:
                    owed -= 1.0
                    t4 = time.perf_counter()
                    m = learner.update(learner.sample(replay))
                    t_update += time.perf_counter() - t4
                    n_updates += 1
                    train_alpha.append([m[f"wsa_alpha_{n}"] for n in policy.feature_names])
            if trunc or term:
                obs = sim.reset()
                emb, prop = observer(obs["image"]), _proprio(bundle, obs)
            else:
                emb, prop = nemb, nprop
        do_eval(steps)
    finally:
        sim.close()
        eval_sim.close()
    return {
        "method": method, "seed": seed, "feature_names": list(policy.feature_names), "params": params,
        "head": policy.config, "curve": curve, "traces": {k: v.tolist() for k, v in traces.items()},
        "s_per_step": (t_env + t_embed + t_act) / steps, "s_env": t_env / steps, "s_embed": t_embed / steps,
        "s_act": t_act / steps, "s_per_update": t_update / max(n_updates, 1), "updates": n_updates,
        "wall_s": time.perf_counter() - t_start, "demo_transitions": n_demo,
        "stored_encoders": names,
    }


def _run_job(job: tuple) -> dict:
    """(kind, method, seed, cfg) -> run_one's result, or {"error": traceback} (one failed run
    must not lose the others)."""
    _, method, seed, cfg = job
    try:
        return run_one(method, seed, cfg)
    except Exception:  # noqa: BLE001 - reported in results.md
        import traceback

        return {"method": method, "seed": seed, "error": traceback.format_exc()}


# =============================================================================== summaries
def mean_std(xs) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and np.isfinite(x)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def steps_to(curve: list[dict], key: str, level: float) -> int | None:
    for row in curve:
        if row[key] >= level:
            return int(row["env_steps"])
    return None


def summarise(runs: list[dict], method: str) -> dict:
    rs = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
    finals = [r["curve"][-1] for r in rs]
    # the seed-averaged curve (evaluation points are the same for every run of a benchmark)
    pts = sorted({row["env_steps"] for r in rs for row in r["curve"]})
    avg = []
    for s in pts:
        vals = [row["success"] for r in rs for row in r["curve"] if row["env_steps"] == s]
        if len(vals) == len(rs):
            avg.append({"env_steps": s, "success": float(np.mean(vals))})
    per_seed = [steps_to(r["curve"], "success", 0.8) for r in rs]
    names = rs[0]["feature_names"]
    alpha_final = {n: mean_std([f.get(f"alpha_{n}") for f in finals]) for n in names}
    return {
        "method": method, "seeds": [r["seed"] for r in rs], "n": len(rs),
        "success": mean_std([f["success"] for f in finals]),
        "success_any": mean_std([f["success_any"] for f in finals]),
        "return": mean_std([f["return"] for f in finals]),
        "final_distance": mean_std([f["final_distance"] for f in finals]),
        "steps_to_80_mean_curve": steps_to(avg, "success", 0.8),
        "steps_to_80_per_seed": per_seed,
        "params": rs[0]["params"],
        "s_per_step": mean_std([r["s_per_step"] for r in rs]),
        "s_env": mean_std([r["s_env"] for r in rs]), "s_embed": mean_std([r["s_embed"] for r in rs]),
        "s_act": mean_std([r["s_act"] for r in rs]),
        "s_per_update": mean_std([r["s_per_update"] for r in rs]),
        "wall_s": mean_std([r["wall_s"] for r in rs]),
        "feature_names": names, "alpha_final": alpha_final,
        "stored_encoders": rs[0]["stored_encoders"],
    }


def _pm(ms, fmt="{:.2f}") -> str:
    m, s = ms
    if not np.isfinite(m):
        return "n/a"
    return f"{fmt.format(m)} ± {fmt.format(s)}"


def _label(method: str, chosen: str | None) -> str:
    if method.startswith("single:") and chosen and method == f"single:{chosen}":
        return f"{method} (probe choice)"
    return method


def results_table(summaries: list[dict], chosen: str | None) -> str:
    head = ("| method | head reads | trainable params (fusion / actor / critic) | final success | final success_any "
            "| final return | final distance (m) | env steps to 80% success | s / env step (sim, embed, act) "
            "| s / update | mean alpha (final eval) |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for s in summaries:
        p = s["params"]
        fusion = p["params_total"] - p["params_actor"] - p["params_critic"]
        reach = s["steps_to_80_mean_curve"]
        per = s["steps_to_80_per_seed"]
        n_reached = sum(x is not None for x in per)
        if reach is None and n_reached == 0:
            r80 = "not reached"
        else:
            r80 = (f"{reach} (seed mean)" if reach is not None else "seed mean: not reached")
            r80 += "; per seed " + ", ".join("—" if x is None else str(x) for x in per)
        alpha = ", ".join(f"{n} {m:.2f}" for n, (m, _) in s["alpha_final"].items())
        lines.append(
            f"| {_label(s['method'], chosen)} | {', '.join(s['stored_encoders'])} | {p['params_total']:,} "
            f"({fusion:,} / {p['params_actor']:,} / {p['params_critic']:,}) | {_pm(s['success'])} "
            f"| {_pm(s['success_any'])} | {_pm(s['return'])} | {_pm(s['final_distance'], '{:.3f}')} | {r80} "
            f"| {s['s_per_step'][0] * 1e3:.1f} ms ({s['s_env'][0] * 1e3:.1f}, {s['s_embed'][0] * 1e3:.1f}, "
            f"{s['s_act'][0] * 1e3:.1f}) | {s['s_per_update'][0] * 1e3:.1f} ms | {alpha} |")
    return "\n".join(lines)


CURVE_KEYS = ["env_steps", "updates", "wall_s", "success", "success_any", "return", "final_distance"]


def write_outputs(out: Path, args, cfg: dict, runs: list[dict], methods: list[str], probe: dict | None,
                  command: str, started: str, complete: bool, failures: list[dict] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    all_names = sorted({n for r in runs for n in r["feature_names"]})
    # curves.csv
    with open(out / "curves.csv", "w", newline="", encoding="utf-8") as f:
        keys = CURVE_KEYS + [f"alpha_{n}" for n in all_names] + [f"alpha_train_{n}" for n in all_names]
        w = csv.DictWriter(f, ["method", "seed"] + keys)
        w.writeheader()
        for r in runs:
            for row in r["curve"]:
                w.writerow({"method": r["method"], "seed": r["seed"],
                            **{k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, ""))
                               for k in keys}})
    # runs.csv
    run_keys = ["method", "seed", "params_total", "params_adapters", "params_context", "params_scorer", "params_fuse",
                "params_actor", "params_critic", "updates", "demo_transitions", "final_success",
                "final_success_any", "final_return", "final_distance", "steps_to_80", "s_per_step", "s_env",
                "s_embed", "s_act", "s_per_update", "wall_s"]
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, run_keys)
        w.writeheader()
        for r in runs:
            fin = r["curve"][-1]
            w.writerow({"method": r["method"], "seed": r["seed"], **r["params"], "updates": r["updates"],
                        "demo_transitions": r["demo_transitions"], "final_success": fin["success"],
                        "final_success_any": fin["success_any"], "final_return": f"{fin['return']:.6g}",
                        "final_distance": f"{fin['final_distance']:.6g}",
                        "steps_to_80": steps_to(r["curve"], "success", 0.8) or "",
                        **{k: f"{r[k]:.6g}" for k in ("s_per_step", "s_env", "s_embed", "s_act", "s_per_update",
                                                      "wall_s")}})
    # alpha_trace.csv
    with open(out / "alpha_trace.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "phase", "step", "distance"] + [f"alpha_{n}" for n in all_names])
        for r in runs:
            for phase, tr in r["traces"].items():
                for i, row in enumerate(tr):
                    al = dict(zip(r["feature_names"], row[1:]))
                    w.writerow([r["method"], r["seed"], phase, i, f"{row[0]:.6g}"]
                               + [f"{al[n]:.6g}" if n in al else "" for n in all_names])
    if probe:
        with open(out / "probe.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["method", "seed", "steps", "final_success", "final_return", "chosen"])
            for m, r in probe["runs"].items():
                fin = r["curve"][-1]
                w.writerow([m, PROBE_SEED, probe["steps"], fin["success"], f"{fin['return']:.6g}",
                            m == f"single:{probe['chosen']}"])
    done = [m for m in methods if any(r["method"] == m for r in runs)]
    chosen = probe["chosen"] if probe else None
    summaries = [summarise(runs, m) for m in done]
    # plots
    written = []
    try:
        if not runs:
            raise RuntimeError("no finished run yet")
        written += plot_curves(out / "success_vs_steps.png", runs, done, chosen)
        tr = []
        wsa_runs = sorted((r for r in runs if r["method"] == "wsa"), key=lambda r: r["seed"])
        for r in wsa_runs:
            if r is wsa_runs[0] and "initial" in r["traces"]:
                tr.append((f"wsa seed {r['seed']}: before training", np.asarray(r["traces"]["initial"])[:, 1:]))
            if "final" in r["traces"]:
                tr.append((f"wsa seed {r['seed']}: after {cfg['steps']} env steps",
                           np.asarray(r["traces"]["final"])[:, 1:]))
        if tr:
            from wsa_ros.tools.plots import alpha_episode_plot

            names = next(r["feature_names"] for r in runs if r["method"] == "wsa")
            alpha_episode_plot(out / "alpha_episode.png", tr, names,
                               title="WSA: alpha per encoder over evaluation episode 0 (deterministic policy)")
            written.append("alpha_episode.png")
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the numbers
        if runs:
            print(f"bench_learning: warning: plotting failed: {exc}", file=sys.stderr)
    # results.md / results.json
    h = cfg["head"]
    md = [
        "# Learning comparison on the simulated arm (benchmarks/bench_learning.py)", "",
        "```", command, "```", "",
        f"Started {started}; {'complete' if complete else 'PARTIAL (runs still missing)'}: "
        f"{len(runs)} run(s) of {len(methods)} method(s) x {args.seeds} seed(s). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.python_version()}, "
        f"torch {cfg['versions']['torch']}, onnxruntime {cfg['versions']['onnxruntime']}; "
        f"{args.jobs} run(s) in parallel, {args.threads} thread(s) each.", "",
        "## Settings (identical for every method)", "",
        f"* Environment: ReacherSim (Reacher-v5, velocity actions ±3 rad/s), {cfg['image_size'][0]}x"
        f"{cfg['image_size'][1]} RGB, episodes of {cfg['episode_steps']} steps, success = fingertip within 2 cm "
        f"at the last step (success_any: at any step).",
        f"* Budget: {cfg['steps']} env steps per run, {cfg['sac']['utd']:g} update(s) per env step after "
        f"{cfg['sac']['warmup_transitions']} steps, batch {cfg['sac']['batch_size']}; seeds {list(range(args.seeds))}.",
        f"* Evaluation: every {cfg['eval_every']} env steps and at the end, {cfg['eval_episodes']} episode(s) "
        f"with the deterministic policy, always the same episodes (reset seeds {EVAL_SEED}..."
        f"{EVAL_SEED + cfg['eval_episodes'] - 1}).",
        f"* Demonstrations: {cfg['demo_episodes']} scripted-expert episode(s) per seed, action noise "
        f"{cfg['demo_noise']} x 3 rad/s, the same frames for every method of a seed; demo success "
        + (", ".join(f"seed {s}: {v:.2f}" for s, v in cfg['demo_success'].items()) or "n/a") + ".",
        "* Learner: wsa_ros.learn.sac.SACLearner + Replay, config.SACConfig "
        + ", ".join(f"{k} {v}" for k, v in cfg['sac'].items()) + ".",
        f"* Head (wsa_ros.model.wsa.make_head_config options): d={h['d']}, actor_hidden={h['actor_hidden']}, "
        f"critic_hidden={h['critic_hidden']}, spatial_adapter={h['spatial_adapter']} "
        f"(adapter_keypoints={h['adapter_keypoints']}, adapter_channels={h['adapter_channels']}), "
        f"context_adapter={h['context_adapter']} (WSA only), scorer_hidden={h['scorer_hidden']}, "
        f"normalization=softmax, log_std={h['log_std']} (init {h['log_std_init']}); e2e: the Nature CNN "
        f"adapter (Conv32 8x8 s4, Conv64 4x4 s2, Conv64 3x3) on the [3,H,W] frame, then the same d and heads.",
        f"* Frozen encoders: {cfg['bundle']} ({', '.join(f'{n} {s}' for n, s in cfg['encoder_shapes'].items())}), "
        f"ONNX Runtime CPU, once per env step (Engine.embed: every encoder of the bundle runs, also for the "
        f"single-encoder runs; the replay stores only what the head reads).",
        "",
    ]
    if probe:
        md += [f"* Single-encoder choice (probe, seed {PROBE_SEED}, {probe['steps']} env steps each, same settings): "
               + ", ".join(f"{m}: success {r['curve'][-1]['success']:.2f}, return {r['curve'][-1]['return']:.3f}"
                           for m, r in probe["runs"].items())
               + f" -> **{probe['chosen']}** (best final success, then best final return).", ""]
    md += [
        "## Results (final evaluation: mean ± std over seeds)", "",
        results_table(summaries, chosen), "",
        "Params: every trainable tensor of the head (fusion = adapters, WSA context adapter and shared scorer, "
        "concat's fuse layer; actor; twin critic). s / env step: simulator step + render, embedding (ONNX "
        "encoders; e2e: the frame conversion only), action choice; measured inside each run, wall clock, outside "
        "evaluations. s / update: replay sampling + one SAC update. Steps to 80%: first evaluation at which the "
        "seed-averaged success reaches 0.8, and per seed (— = not reached).", "",
    ]
    wsa_runs = sorted((r for r in runs if r["method"] == "wsa"), key=lambda r: r["seed"])
    if wsa_runs:
        names = wsa_runs[0]["feature_names"]
        md += ["## WSA attention weights", "",
               "| seed | mean alpha, final evaluation | mean alpha, training batches of the last interval "
               "| alpha over eval episode 0 after training: first step -> last step | dominant |",
               "|---|---|---|---|---|"]
        for r in wsa_runs:
            fin = r["curve"][-1]
            ev = {n: fin[f"alpha_{n}"] for n in names}
            trn = {n: fin[f"alpha_train_{n}"] for n in names}
            tr = np.asarray(r["traces"].get("final", [[np.nan] * (len(names) + 1)]))
            first = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, tr[0, 1:]))
            last = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, tr[-1, 1:]))
            md.append(f"| {r['seed']} | {', '.join(f'{n} {v:.3f}' for n, v in ev.items())} "
                      f"| {', '.join(f'{n} {v:.3f}' for n, v in trn.items())} | {first} -> {last} "
                      f"| {max(ev, key=ev.get)} ({max(ev.values()):.2f}) |")
        md += ["", "Uniform is " + f"{1 / len(names):.3f}" + " per encoder; alpha_episode.png shows the whole "
               "episode (alpha_trace.csv the numbers).", ""]
    md += [
        "Files: curves.csv (every evaluation point), runs.csv (per run), alpha_trace.csv (WSA alpha over "
        "evaluation episode 0, before and after training), success_vs_steps.png, alpha_episode.png"
        + (", probe.csv" if probe else "") + ".",
    ]
    if failures:
        md += ["", "## Failed runs", ""]
        for fl in failures:
            last = fl["error"].strip().splitlines()[-1]
            md.append(f"* {fl['kind']} {fl['method']} seed {fl['seed']}: {last}")
    (out / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    js = {"command": command, "started": started, "complete": complete, "config": {k: v for k, v in cfg.items()
                                                                                   if k != "demos"},
          "summaries": summaries, "probe": ({m: r["curve"] for m, r in probe["runs"].items()} | {"chosen": chosen}
                                            if probe else None)}
    (out / "results.json").write_text(json.dumps(js, indent=1, default=_json_default), encoding="utf-8")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def plot_curves(path: Path, runs: list[dict], methods: list[str], chosen: str | None) -> list[str]:
    from wsa_ros.tools.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.get_cmap("tab10").colors
    for i, m in enumerate(methods):
        rs = [r for r in runs if r["method"] == m]
        pts = sorted({row["env_steps"] for r in rs for row in r["curve"]})
        for ax, key in zip(axes, ("success", "return")):
            ys = np.array([[next((row[key] for row in r["curve"] if row["env_steps"] == s), np.nan) for s in pts]
                           for r in rs])
            mu, sd = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)
            ax.plot(pts, mu, marker="o", ms=3, color=colors[i % 10], label=f"{_label(m, chosen)} (n={len(rs)})")
            ax.fill_between(pts, mu - sd, mu + sd, color=colors[i % 10], alpha=0.15)
    axes[0].set_ylabel("success rate (final step within 2 cm)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("episode return")
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Deterministic-policy evaluation, mean ± std over seeds", fontsize=11)
    save_figure(fig, path)
    return [path.name]


# =============================================================================== main
def _versions() -> dict:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _schedule(first: list[tuple], n_parallel: int, on_done) -> None:
    """Run jobs (in order; ``n_parallel`` spawned processes at a time, or in this process);
    ``on_done(job, result)`` may return further jobs (the single-encoder runs once the probe
    has chosen)."""
    if n_parallel <= 1:
        queue = list(first)
        while queue:
            j = queue.pop(0)
            queue += on_done(j, _run_job(j)) or []
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=n_parallel, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(_run_job, j): j for j in first}
        while futs:
            done, _ = wait(futs, return_when=FIRST_COMPLETED)
            for f in done:
                j = futs.pop(f)
                for nj in on_done(j, f.result()) or []:
                    futs[ex.submit(_run_job, nj)] = nj


COST_ORDER = {"e2e": 0, "wsa": 1, "concat": 2, "mean": 3}  # longest first: less idle time at the end


def main(argv=None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    command = shlex.join(["python", "benchmarks/bench_learning.py", *raw])
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from wsa_ros.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if bundle.proprio is None:
        raise SystemExit("bench_learning: error: the bundle has no proprioception spec (the sim arm needs one)")
    feats = [e.name for e in bundle.feature_encoders]
    methods = expand_methods(args.methods, feats)
    inp = bundle.encoders[0].input
    cfg = {
        "bundle": str(args.bundle), "steps": args.steps, "episode_steps": args.episode_steps,
        "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "threads": args.threads,
        "demo_episodes": args.demo_episodes, "demo_noise": args.demo_noise, "head": head_options(args, bundle),
        "image_size": (inp.height, inp.width), "versions": _versions(),
        "encoder_shapes": {e.name: list(e.output_shape) for e in bundle.encoders},
    }
    import dataclasses

    from wsa_ros.config import ConfigError, SACConfig, from_dict

    try:  # the one set of learner settings (config.SACConfig): its defaults, these options over them
        sac = from_dict(SACConfig, {"batch_size": args.batch, "demo_bc_weight": args.demo_bc_weight, "utd": args.utd,
                                    "warmup_transitions": args.learning_starts, "torch_threads": args.threads},
                        where="bench_learning options")
    except ConfigError as exc:
        raise SystemExit(f"bench_learning: error: {exc}") from None
    cfg["sac"] = dataclasses.asdict(sac)
    print(f"bench_learning: {command}", flush=True)
    print(f"bench_learning: methods {methods}, seeds {list(range(args.seeds))}, {args.steps} env steps each, "
          f"head {cfg['head']}", flush=True)

    # demonstrations: once per seed (and for the probe seed), the same frames for every method
    demos: dict[int, dict | None] = {}
    cfg["demo_success"] = {}
    seeds_needed = list(range(args.seeds)) + ([PROBE_SEED] if "single" in methods else [])
    for sd in seeds_needed:
        if args.demo_episodes:
            demos[sd] = make_demos(sd, args.demo_episodes, args.episode_steps, args.demo_noise, cfg["image_size"])
            if sd != PROBE_SEED:
                cfg["demo_success"][sd] = float(np.mean(demos[sd]["success"]))
        else:
            demos[sd] = None

    def job_cfg(seed: int, steps: int | None = None) -> dict:
        c = dict(cfg, demos=demos[seed])
        if steps is not None:
            c["steps"] = steps
        return c

    probe: dict | None = None
    runs: list[dict] = []
    failures: list[dict] = []
    n_main = len(methods) * args.seeds
    state = {"methods": list(methods)}
    probe_runs: dict[str, dict] = {}
    probe_names = [f"single:{n}" for n in feats] if "single" in methods else []

    def main_jobs(ms: list[str]) -> list[tuple]:
        ms = sorted(ms, key=lambda m: COST_ORDER.get(m, 9))
        return [("main", m, sd, job_cfg(sd)) for m in ms for sd in range(args.seeds)]

    def on_done(job: tuple, r: dict) -> list[tuple]:
        nonlocal probe, n_main
        kind = job[0]
        if "error" in r:
            print(f"bench_learning: {kind} run {r['method']} seed {r['seed']} FAILED:\n{r['error']}", file=sys.stderr,
                  flush=True)
            failures.append({**r, "kind": kind})
            if kind == "probe":
                probe_runs[r["method"]] = None
        elif kind == "probe":
            probe_runs[r["method"]] = r
        else:
            runs.append(r)
            fin = r["curve"][-1]
            print(f"bench_learning: done {r['method']} seed {r['seed']}: success {fin['success']:.2f}, return "
                  f"{fin['return']:.3f}, {r['wall_s']:.0f} s ({len(runs)}/{n_main})", flush=True)
        more: list[tuple] = []
        if kind == "probe" and len(probe_runs) == len(probe_names):
            ok = {m: x for m, x in probe_runs.items() if x is not None}
            if ok:
                best = max(ok, key=lambda m: (ok[m]["curve"][-1]["success"], ok[m]["curve"][-1]["return"]))
                chosen = best.split(":", 1)[1]
                probe = {"steps": args.probe_steps, "runs": {m: ok[m] for m in probe_names if m in ok},
                         "chosen": chosen}
                print(f"bench_learning: single-encoder probe chose '{chosen}'", flush=True)
                ms = [f"single:{chosen}" if m == "single" else m for m in state["methods"]]
                seen: list[str] = []
                state["methods"] = [m for m in ms if not (m in seen or seen.append(m))]
                if f"single:{chosen}" in methods:  # asked for explicitly too: already queued
                    n_main -= args.seeds
                    return []
                more = main_jobs([f"single:{chosen}"])
        ms = state["methods"]
        write_outputs(out, args, cfg, sorted(runs, key=lambda x: (ms.index(x["method"]) if x["method"] in ms
                                                                    else 99, x["seed"])),
                      ms, probe, command, started, complete=len(runs) == n_main, failures=failures)
        return more

    first = [("probe", m, PROBE_SEED, job_cfg(PROBE_SEED, args.probe_steps)) for m in probe_names]
    first += main_jobs([m for m in methods if m != "single"])
    _schedule(first, args.jobs, on_done)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"bench_learning: wrote {out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
