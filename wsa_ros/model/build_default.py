"""Build the default bundle (``wsa build-bundle``): a WSA policy for the simulated Reacher arm.

Steps, all seeded:
1. collect frames from ``ReacherSim``: many short episodes (one target each; target diversity
   is what the policy must generalise over), starting from Reacher's pose, a random pose or
   near the target; a random-velocity walk of random length, then the noisy scripted expert
   (random motion and good behaviour, as the method's notes recommend);
2. train the frozen encoders on those frames: the conv autoencoder ``ae`` (a flat 64-value
   code; WSA's context only, role ``context``, as in the reference code), the keypoint encoder
   ``kp`` (16 keypoints, unsupervised) and the pose encoder ``pose`` (the target's position and
   the fingertip's position relative to it, regressed from the frame, supervised by the sim's
   ground truth); optionally the
   inverse-dynamics encoder ``idm`` (``--idm-steps``); export them to ONNX;
3. probe them: a ridge probe from each embedding (and from all together) to the target's
   position on held-out episodes (``model.probe.localisation``), in the manifest's
   ``recipe.target_probe`` (the policy cannot be more precise than what its features see);
4. compute embeddings through ONNX Runtime and train the WSA head by behaviour cloning
   (MSE between tanh(mean) and the expert's normalised joint velocities, labelled at every
   visited state), then ``--dagger-rounds`` rounds of DAgger (roll out the policy, label with
   the expert, retrain);
5. export the bundle to ``--out`` and evaluate it through ONNX Runtime on held-out episodes
   (100 steps from Reacher's start pose) against the expert; the recipe (command
   line, seed, sizes, losses, success rates, mean alpha, timings) goes in the manifest.

The critic and the log-std head are left untrained (fine-tuning trains them).
"""
from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from wsa_ros.model.fit import bc_train as _bc_train, plain as _round

DEFAULT_OUT = "models/default"


class _Enc(NamedTuple):
    name: str
    input: Any
    output_shape: list[int]
    role: str


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="wsa build-bundle",
        description="Train encoders + a WSA head on the simulated Reacher arm and export a bundle.",
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help="bundle folder to write (replaced) [%(default)s]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="very small run for tests (< 20 s)")
    ap.add_argument("--name", default="default")
    ap.add_argument("--version", default="1")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--episodes", type=int, default=400, help="short episodes collected for training (one target each)")
    ap.add_argument("--settle-episodes", type=int, default=200,
                    help="further collected episodes started near the target with the expert and little noise (the tip "
                         "over the target: without them the pose encoder misjudged tip - target by ~4 cm there) [%(default)s]")
    ap.add_argument("--settle-steps", type=int, default=30, help="steps per settling episode [%(default)s]")
    ap.add_argument("--collect-steps", type=int, default=12, help="steps per collected episode")
    ap.add_argument("--max-steps", type=int, default=100, help="steps per DAgger/evaluation episode (0.02 s each)")
    ap.add_argument("--ae-steps", type=int, default=1000)
    ap.add_argument("--ae-latent", type=int, default=64,
                    help="flat code size of the autoencoder; 0 keeps its 64x16x16 feature map (16x the "
                         "learner's storage and ~10x its update cost) [%(default)s]")
    ap.add_argument("--ae-role", default="context", choices=["context", "both"],
                    help="context: the autoencoder only gives WSA's context C, as in the reference code; both: it "
                         "is also a fused model (fused with kp and pose it slowed fine-tuning ~3x) [%(default)s]")
    ap.add_argument("--idm-steps", type=int, default=0,
                    help="steps of the inverse-dynamics encoder; 0 (default) leaves it out: it locates the target "
                         "to only ~10 cm and, fused, slowed fine-tuning [%(default)s]")
    ap.add_argument("--kp-steps", type=int, default=2500, help="0 leaves the keypoint encoder out")
    ap.add_argument("--pose-steps", type=int, default=6000,
                    help="steps of the pose encoder (target position and fingertip - target regressed from the frame, "
                         "supervised by the sim's ground truth); 0 leaves it out [%(default)s]")
    ap.add_argument("--kp-keypoints", type=int, default=16,
                    help="keypoints of the keypoint encoder (8 localise the target to ~5 cm, 16 to ~2 mm) [%(default)s]")
    ap.add_argument("--batch", type=int, default=32, help="encoder training batch")
    ap.add_argument("--bc-steps", type=int, default=1500)
    ap.add_argument("--bc-batch", type=int, default=128)
    ap.add_argument("--bc-lr", type=float, default=6e-3, help="peak learning rate (cosine decay) of behaviour cloning")
    ap.add_argument("--lr", type=float, default=1e-3, help="encoder learning rate")
    ap.add_argument("--dagger-rounds", type=int, default=1)
    ap.add_argument("--dagger-episodes", type=int, default=16)
    ap.add_argument("--dagger-steps", type=int, default=50, help="steps per DAgger episode")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--d", type=int, default=64, help="WSA embedding size")
    ap.add_argument("--hidden", type=int, default=128, help="actor/critic hidden width (2 layers)")
    ap.add_argument("--critic-norm", action=argparse.BooleanOptionalAction, default=True,
                    help="layer-normed critics (RLPD; what fine-tuning trains) [%(default)s]")
    ap.add_argument("--fusion", default="wsa", choices=["wsa", "concat", "mean", "single"])
    ap.add_argument("--normalization", default="softmax", choices=["softmax", "relu"])
    ap.add_argument("--spatial-adapter", default="keypoints", choices=["keypoints", "conv"],
                    help="adapter of feature maps: keypoints (soft-argmax; generalises to unseen target "
                         "positions) or conv (the paper's S_i) [%(default)s]")
    ap.add_argument("--context-adapter", default="spatial", choices=["spatial", "flat"],
                    help="flat is the paper's A_0 on the flattened 64x16x16 map (+1M parameters) [%(default)s]")
    ap.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--quiet", action="store_true")
    from wsa_ros.model.build_from_bags import add_arguments

    add_arguments(ap)
    return ap


TINY = dict(image_size=48, episodes=10, settle_episodes=2, settle_steps=10, collect_steps=10, max_steps=20, ae_steps=20,
            idm_steps=20, kp_steps=20, pose_steps=20, batch=16, bc_steps=100, dagger_rounds=1, dagger_episodes=1, dagger_steps=20, eval_episodes=2, d=32, hidden=64)


# --------------------------------------------------------------------------- data
SETTLE_NOISE = 0.1  # the settling episodes' action noise, x the action bounds
#: the default bundle's proprioception: with the raw wrapped angle, behaviour cloning's worst
#: held-out episodes (3 of 50, ~20 cm off) were those where joint0 crossed pi
PROPRIO_LAYOUT = ("sin_position", "cos_position", "velocity")


def collect(sim, episodes: int, rng: np.random.Generator, settle: int = 0, settle_sim=None) -> dict[str, np.ndarray]:
    """Short episodes (many targets) from random or default arm poses: a random-walk prefix,
    then the noisy expert (``sim.expert.ExplorationNoise``); then ``settle`` episodes on
    ``settle_sim`` (the same arm, longer episodes; default ``sim``) started near the target,
    the expert with little noise (``GaussianNoise(SETTLE_NOISE)``): the tip closing in on and
    resting over the target, the frames the policy must read to stop (the first kind alone
    has 2.6 % of its frames within 1 cm). Labels = the expert's action at every visited
    state."""
    from wsa_ros.sim.expert import ExplorationNoise, GaussianNoise, expert_episodes

    high = sim.action_high
    frames, joints, act, label, nxt, ep_id, tgt = [], [], [], [], [], [], []
    runs = [(expert_episodes(sim, rng, episodes, ExplorationNoise(), starts=("default", "random", "near_target", "random")), 0)]
    if settle > 0:
        runs.append((expert_episodes(settle_sim or sim, rng, settle, GaussianNoise(SETTLE_NOISE * high), starts=("near_target",)),
                     episodes))
    for episodes_of_kind, first in runs:
        for ep in episodes_of_kind:
            start = len(frames)
            for s in ep.steps:
                frames.append(s.obs["image"])
                joints.append(s.obs)
                act.append(s.action / high)
                label.append(s.label / high)
                ep_id.append(first + ep.index)
                tgt.append(s.info["target"])
            n = len(frames) - start
            nxt.extend(list(range(start + 1, start + n)) + [-1])
    return {
        "frames": np.stack(frames),
        "joints": joints,  # the observations' joint readings (names, position, velocity)
        "action": np.asarray(act, dtype=np.float32),
        "label": np.asarray(label, dtype=np.float32),
        "next": np.asarray(nxt, dtype=np.int64),
        "episode": np.asarray(ep_id),
        "target": np.asarray(tgt),
    }


def pose_labels(data: dict) -> np.ndarray:
    """The pose encoder's labels per frame: the target (x, y) in decimetres and the fingertip
    relative to the target (x, y) in units of 5 cm (both of order 1), the fingertip by forward
    kinematics of the frame's joint positions. The relative vector is zero at the goal: a policy
    reading it needs no precise difference of two large positions to know where to stop."""
    from wsa_ros.sim.reacher import forward_kinematics

    tip = forward_kinematics(np.stack([np.asarray(o["position"], np.float64) for o in data["joints"]]))
    target = np.asarray(data["target"], np.float64)[:, :2]
    return np.concatenate([10.0 * target, 20.0 * (tip - target)], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- BC
def _rollout(sim, sessions, specs, policy, pspec, episodes, seed_base):
    """DAgger: run the torch policy on ORT embeddings (``sim.rollout``); returns the visited
    states' embeddings, normalised proprio and expert labels, and the rollouts' stats."""
    import torch

    from wsa_ros.model.encoders import onnx_embed
    from wsa_ros.sim.reacher import expert_action
    from wsa_ros.sim.rollout import evaluate, sim_proprio

    high = sim.action_high
    mean, std = np.asarray(pspec.mean), np.asarray(pspec.std)
    embs = {s.name: [] for s in specs}
    props, labels, alphas = [], [], []

    def act(obs):
        e = {s.name: onnx_embed(sessions[s.name], obs["image"], s.input) for s in specs}
        pn = ((sim_proprio(pspec, obs) - mean) / std).astype(np.float32)[None]
        with torch.no_grad():
            a, alpha = policy.deterministic_action({k: torch.from_numpy(v) for k, v in e.items()}, torch.from_numpy(pn))
        for k, v in e.items():
            embs[k].append(v[0])
        props.append(pn[0])
        labels.append(expert_action(sim) / high)
        alphas.append(alpha.numpy()[0])
        return a.numpy()[0].astype(np.float64) * high

    ev = evaluate(sim, act, episodes, seed_base, arms=("default", "random")).summary()
    stats = {"episodes": episodes, "success_final": ev["success_final"], "success_any": ev["success_any"],
             "final_distance": ev["final_distance_m"], "alpha_mean": [float(x) for x in np.mean(alphas, axis=0)]}
    data = ({k: np.stack(v) for k, v in embs.items()}, np.stack(props), np.asarray(labels, dtype=np.float32))
    return data, stats


def evaluate_bundle(bundle, episodes: int, seed: int, image_size: int, max_steps: int, threads: int = 1) -> dict:
    """Success of the exported bundle (through ONNX Runtime, the agent's own path) and of the
    expert on the same episodes (``sim.rollout.evaluate``)."""
    from wsa_ros.runtime.engine import Engine
    from wsa_ros.sim.reacher import ReacherSim, expert_action
    from wsa_ros.sim.rollout import engine_policy, evaluate

    engine = Engine(bundle, providers=["cpu"], threads=threads)
    res = {}
    for who in ("policy", "expert"):
        alphas: list = []
        with ReacherSim(seed=seed, image_size=image_size, max_steps=max_steps, render=(who == "policy")) as sim:
            act = engine_policy(engine, alphas) if who == "policy" else (lambda obs, sim=sim: expert_action(sim))
            ev = evaluate(sim, act, episodes, seed).summary()
        res[who] = {k: ev[k] for k in ("success_final", "within_5cm_final", "success_any")}
        res[who]["final_distance_m"] = round(ev["final_distance_m"], 4)
        if alphas:
            res[who]["alpha_mean"] = [round(float(x), 4) for x in np.mean(alphas, axis=0)]
    res["episodes"] = episodes
    res["seed"] = seed
    return res


# --------------------------------------------------------------------------- main
def build(args: argparse.Namespace, argv: list[str]) -> "object":
    import torch

    from wsa_ros.runtime.bundle import ActionSpec, InputSpec, ProprioSpec, write_manifest
    from wsa_ros.model.encoders import (
        export_encoder_onnx,
        onnx_embed,
        ort_session,
        train_autoencoder,
        train_inverse_dynamics,
        train_keypoints,
        train_pose,
    )
    from wsa_ros.model.export import EncoderSource, export_bundle
    from wsa_ros.model.probe import localisation
    from wsa_ros.model.wsa import FusionPolicy, make_head_config
    from wsa_ros.sim.reacher import (ACTION_HIGH, ACTION_LOW, JOINT_NAMES, SUCCESS_RADIUS, TARGET_MARKER_RADIUS, ReacherSim,
                                     forward_kinematics)
    from wsa_ros.sim.rollout import sim_proprio

    t_start = time.time()
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[build-bundle {time.time() - t_start:6.1f}s] {m}", flush=True))
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = args.image_size
    timings: dict[str, float] = {}

    # 1. data
    t = time.time()
    with ReacherSim(seed=args.seed, image_size=size, max_steps=args.collect_steps) as sim, \
            ReacherSim(seed=args.seed + 1, image_size=size, max_steps=args.settle_steps) as settle_sim:
        data = collect(sim, args.episodes, rng, settle=args.settle_episodes, settle_sim=settle_sim)
    n = len(data["frames"])
    timings["collect_s"] = round(time.time() - t, 1)
    log(f"collected {n} frames from {args.episodes} + {args.settle_episodes} settling episodes")

    # 2. encoders
    t = time.time()
    ae, ae_stats = train_autoencoder(data["frames"], steps=args.ae_steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                     latent=args.ae_latent, log=log)
    idm = idm_stats = None
    if args.idm_steps > 0:
        idm, idm_stats = train_inverse_dynamics(
            data["frames"], data["next"], data["action"], steps=args.idm_steps, batch=args.batch, lr=args.lr,
            seed=args.seed + 1, log=log)
    kp = kp_stats = None
    if args.kp_steps > 0:
        kp, kp_stats = train_keypoints(data["frames"], steps=args.kp_steps, batch=args.batch, lr=args.lr, seed=args.seed + 2,
                                       keypoints=args.kp_keypoints, log=log)
    pose = pose_stats = None
    if args.pose_steps > 0:
        pose, pose_stats = train_pose(data["frames"], pose_labels(data), keypoints=args.kp_keypoints,
                                      steps=args.pose_steps, batch=args.batch, lr=args.lr, seed=args.seed + 3, log=log)
    timings["encoders_s"] = round(time.time() - t, 1)

    inp = InputSpec(height=size, width=size)
    work = Path(tempfile.mkdtemp(prefix="wsa-build-"))
    code = f"flat code {args.ae_latent}" if args.ae_latent > 0 else "feature map"
    enc_list = [("ae", ae.encoder, args.ae_role, f"conv autoencoder (weighted MSE, {code}), {args.ae_steps} steps on {n} Reacher frames")]
    if idm is not None:
        enc_list.append(("idm", idm.encoder, "feature", f"inverse dynamics (o_t, o_t+1 -> a_t), {args.idm_steps} steps"))
    if kp is not None:
        enc_list.append(("kp", kp.encoder, "feature", f"deep spatial autoencoder, {kp_stats['keypoints']} keypoints, {args.kp_steps} steps"))
    if pose is not None:
        enc_list.append(("pose", pose, "feature", f"pose regression (target x, y in dm and fingertip - target in 5 cm; supervised by "
                                                  f"the sim's ground truth), {args.pose_steps} steps"))
    specs, sessions, sources = [], {}, []
    for name, net, role, source in enc_list:
        path = work / f"{name}.onnx"
        shape = export_encoder_onnx(net, path, inp)
        sessions[name] = ort_session(path, args.threads)
        src = EncoderSource(name, "front", inp, role, onnx=path, source=source)
        sources.append(src)
        specs.append(_Enc(name, inp, shape, role))
    t = time.time()
    embs_np = {s.name: onnx_embed(sessions[s.name], data["frames"], inp) for s in specs}
    timings["embed_s"] = round(time.time() - t, 1)
    tip = forward_kinematics(np.stack([np.asarray(o["position"], np.float64) for o in data["joints"]]))
    near = np.linalg.norm(tip - np.asarray(data["target"], np.float64)[:, :2], axis=1) < SUCCESS_RADIUS
    probe = localisation(embs_np, data["target"], data["episode"], seed=args.seed, near=near)
    log("target localisation (ridge probe, held-out episodes; tip within the success radius): "
        + ", ".join(f"{k} {v['mean_m'] * 1000:.1f} mm ({v.get('near_mean_m', float('nan')) * 1000:.1f} mm)"
                    for k, v in probe.items()))

    # proprio normalisation from the collected states, read by the agent's rule (observation.build_proprio)
    fields = list(PROPRIO_LAYOUT)
    dim = len(JOINT_NAMES) * len(fields)
    layout = ProprioSpec(list(JOINT_NAMES), fields, [0.0] * dim, [1.0] * dim)
    p_raw = np.stack([sim_proprio(layout, o) for o in data["joints"]])
    p_mean = p_raw.mean(axis=0)
    p_std = np.maximum(p_raw.std(axis=0), 1e-3)
    proprio_spec = ProprioSpec(list(JOINT_NAMES), fields, [round(float(x), 6) for x in p_mean], [round(float(x), 6) for x in p_std])
    pnorm = (np.asarray(proprio_spec.mean), np.asarray(proprio_spec.std))
    action_spec = ActionSpec("velocity", list(JOINT_NAMES), list(ACTION_LOW), list(ACTION_HIGH), "rad/s")

    # 3. head + behaviour cloning (+ DAgger)
    head_cfg = make_head_config(
        args.fusion,
        [{"name": s.name, "output_shape": s.output_shape, "role": s.role} for s in specs],
        action_dim=2,
        proprio_dim=proprio_spec.dim,
        normalization=args.normalization,
        d=args.d,
        actor_hidden=[args.hidden, args.hidden],
        critic_hidden=[args.hidden, args.hidden],
        spatial_adapter=args.spatial_adapter,
        context_adapter=args.context_adapter,
        critic_norm=args.critic_norm,
    )
    policy = FusionPolicy.from_config(head_cfg)
    E = {k: torch.from_numpy(v) for k, v in embs_np.items()}
    P = torch.from_numpy(((p_raw - pnorm[0]) / pnorm[1]).astype(np.float32))
    L = torch.from_numpy(data["label"])
    t = time.time()
    bc_stats = [_bc_train(policy, E, P, L, args.bc_steps, args.bc_batch, args.bc_lr, args.seed, log, "bc")]
    dagger_stats = []
    with ReacherSim(seed=args.seed + 500, image_size=size, max_steps=args.dagger_steps) as sim:
        for r in range(args.dagger_rounds):
            (e_new, p_new, l_new), st = _rollout(sim, sessions, specs, policy, proprio_spec, args.dagger_episodes, args.seed + 500 + 100 * r)
            dagger_stats.append(st)
            log(f"dagger round {r}: policy success {st['success_any']:.2f} (any) {st['success_final']:.2f} (final), alpha {st['alpha_mean']}")
            E = {k: torch.cat([E[k], torch.from_numpy(e_new[k])]) for k in E}
            P = torch.cat([P, torch.from_numpy(p_new)])
            L = torch.cat([L, torch.from_numpy(l_new)])
            bc_stats.append(_bc_train(policy, E, P, L, max(1, args.bc_steps // 2), args.bc_batch, args.bc_lr / 2, args.seed + r + 1, log, f"bc+dagger{r}"))
    timings["bc_s"] = round(time.time() - t, 1)
    log(f"behaviour cloning: val mse {bc_stats[-1]['val_mse']:.4f}")

    # 4. export + evaluate
    recipe = {
        "command": " ".join(["wsa", "build-bundle", *(shlex.quote(a) for a in argv)]),
        "seed": args.seed,
        "task": "gymnasium Reacher-v5 (MuJoCo), velocity actions, wsa_ros.sim.ReacherSim",
        "success_radius_m": SUCCESS_RADIUS,
        "target_marker_radius_m": TARGET_MARKER_RADIUS,
        "image_size": size,
        "frames": n,
        "episodes": args.episodes,
        "settle_episodes": args.settle_episodes,
        "settle_steps": args.settle_steps,
        "collect_steps": args.collect_steps,
        "eval_steps": args.max_steps,
        "encoders": {"ae": ae_stats, **({"idm": idm_stats} if idm_stats else {}), **({"kp": kp_stats} if kp_stats else {}),
                     **({"pose": pose_stats} if pose_stats else {})},
        "target_probe": {"what": "mean/median/90th-percentile error (m) of a ridge probe from the embedding to the "
                                 "target's xy, on the collected frames of 20% held-out episodes ('all': every "
                                 "encoder's embedding together); near_*: on those of them with the fingertip "
                                 "within the success radius", **probe},
        "bc": bc_stats,
        "dagger": dagger_stats,
        "bc_loss": bc_stats[-1]["val_mse"],
        "threads": args.threads,
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    recipe = _round(recipe)
    bundle = export_bundle(args.out, policy, sources, action_spec, proprio_spec, name=args.name, version=args.version, recipe=recipe)
    t = time.time()
    if args.eval_episodes > 0:
        ev = evaluate_bundle(bundle, args.eval_episodes, args.seed + 10_000, size, args.max_steps, args.threads)
        bundle.recipe["eval"] = _round(ev)
        log(f"eval ({args.eval_episodes} held-out episodes, ONNX Runtime): {ev}")
    timings["eval_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t_start, 1)
    bundle.recipe["timings"] = _round(timings)
    write_manifest(bundle)
    size_b = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    log(f"wrote {args.out} ({size_b / 1e6:.2f} MB) in {timings['total_s']} s")
    shutil.rmtree(work, ignore_errors=True)
    return bundle


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.tiny:
        defaults = _parser().parse_args([])
        for k, v in TINY.items():
            if getattr(args, k) == getattr(defaults, k):
                setattr(args, k, v)
    if args.image_size < 36:
        print("wsa build-bundle: --image-size must be at least 36 (Nature CNN)", file=sys.stderr)
        return 2
    if args.from_bags is not None or args.robot is not None:
        return _main_from_bags(args, argv)
    build(args, argv)
    return 0


def _main_from_bags(args, argv) -> int:
    """``--from-bags BAG... --robot ROBOT.yaml``: wsa_ros.model.build_from_bags."""
    from wsa_ros.config import ConfigError
    from wsa_ros.learn.demos import DemoImportError
    from wsa_ros.learn.store import StoreError
    from wsa_ros.model.build_from_bags import BuildArgError, BuildError, build_from_bags
    from wsa_ros.runtime.bags import BagError
    from wsa_ros.runtime.bundle import BundleError
    from wsa_ros.runtime.engine import EngineError

    if not args.from_bags or not args.robot:
        print("wsa build-bundle: --from-bags BAG... and --robot ROBOT.yaml go together (see config/robots/ for "
              "examples)", file=sys.stderr)
        return 2
    if args.out == DEFAULT_OUT:
        print(f"wsa build-bundle: give --out for a bundle built from recordings (not the shipped {DEFAULT_OUT})",
              file=sys.stderr)
        return 2
    if not 0.0 < args.holdout < 1.0:
        print(f"wsa build-bundle: --holdout {args.holdout} must lie in (0, 1)", file=sys.stderr)
        return 2
    try:
        build_from_bags(args, argv)
    except (ConfigError, BuildArgError) as exc:
        print(f"wsa build-bundle: {exc}", file=sys.stderr)
        return 2
    except (BuildError, BagError, BundleError, DemoImportError, StoreError, EngineError) as exc:
        print(f"wsa build-bundle: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
