"""``wsa build-bundle --from-bags BAG... --robot ROBOT.yaml``: a WSA bundle for any arm, from its recordings.

Steps (all seeded; nothing reaches ``--out`` unless every step succeeded):

1. **health**: the recordings are checked first (``wsa bag-health``'s report: rates, gaps, stamps,
   pairing, joint ranges, command units, episodes); an ERROR stops the build with the report's
   reasons (``--ignore-health`` builds anyway, for a user who read them);
2. **frames**: every camera's frames (``robot.camera_topics``; raw or compressed) are decoded and
   resized by the engine's own preprocessing, at most ``--max-frames`` per camera (evenly spaced);
3. **encoders**: the package's self-supervised encoders are trained on them, per camera: a
   keypoint autoencoder ``kp_<camera>`` (a fused model) for every camera and a conv autoencoder
   ``ae_<camera0>`` on the first camera (WSA's context C only, as in the reference code); each
   ``--onnx-encoder NAME=FILE.onnx@CAMERA`` backbone exported elsewhere is added as a further
   fused model bound to that camera;
4. **observations and actions**: the recordings go through ``wsa import-demos``'s assembler with a
   provisional bundle of these encoders and the robot's action and proprioception specs: the
   agent's own observation rule pairs each command with its frames and joint state, exactly as
   the live learner would (one rule live and offline); the store it writes is kept in the bundle's
   work folder only;
5. **behaviour cloning**: the WSA head (adapters, shared scorer, actor) learns the recorded
   commands; whole episodes (``--holdout`` of them) are held out for validation;
6. **export**: the bundle (``robot.name``, the robot's joints, bounds, units, cameras, the recipe,
   every file's sha256) is written atomically to ``--out``, validated like every fine-tuned
   policy (hashes, warm-up, ONNX equal to PyTorch on held-out observations), with
   ``report.json`` inside: the health summary, encoder losses, BC losses, the held-out action
   error per joint (in the robot's units) against predicting the mean command, and alpha per encoder.

Exit codes: 0 built; 1 a recording or the build failed (the message names it; nothing written);
2 bad arguments (robot file, bag path, --onnx-encoder).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from wsa_ros.model.fit import bc_train, plain as _plain, progress, say


class BuildError(RuntimeError):
    """A recording or a step of the build that cannot succeed; names the cause and the fix."""


class BuildArgError(ValueError):
    """A bad command-line argument (exit code 2)."""


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("from recordings (--from-bags)")
    g.add_argument("--from-bags", nargs="+", metavar="BAG", default=None,
                   help="build from rosbag2 recordings (folders, .mcap or .db3; a folder of bags is expanded) "
                        "instead of the simulated Reacher")
    g.add_argument("--robot", default=None, help="robot description YAML (config/robots/*.yaml; needed with --from-bags)")
    g.add_argument("--onnx-encoder", action="append", default=[], metavar="NAME=FILE@CAMERA",
                   help="add a backbone exported to ONNX elsewhere as a fused model on CAMERA (repeatable); "
                        "its input spec is read from the file (uint8 NHWC or float32 NCHW in [0, 1])")
    g.add_argument("--holdout", type=float, default=0.2, help="fraction of episodes held out for validation [%(default)s]")
    g.add_argument("--max-frames", type=int, default=6000, help="frames per camera for encoder training [%(default)s]")
    g.add_argument("--ignore-health", action="store_true", help="build even when the health report has errors")
    g.add_argument("--screen", action="store_true",
                   help="screen the fused models first (`wsa screen`'s greedy ridge probe of the recorded commands "
                        "on the training episodes, wsa_ros/tools/screen.py) and keep only the recommended set")
    g.add_argument("--episode-steps", type=int, default=0,
                   help="split a recording without episode-end messages into episodes of N commands [whole bag]")


# --------------------------------------------------------------------------- inputs
def parse_onnx_encoders(items: list[str], cameras: list[str]) -> list[tuple[str, Path, str]]:
    out = []
    for item in items:
        name, eq, rest = item.partition("=")
        path, at, cam = rest.rpartition("@")
        if not eq or not at or not name or not path or not cam:
            raise BuildArgError(f"--onnx-encoder '{item}' is not NAME=FILE.onnx@CAMERA")
        if cam not in cameras:
            raise BuildArgError(f"--onnx-encoder '{item}': camera '{cam}' is not one of the robot's cameras {cameras}")
        if not Path(path).is_file():
            raise BuildArgError(f"--onnx-encoder '{item}': file {path} not found")
        out.append((name, Path(path), cam))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise BuildArgError(f"--onnx-encoder names repeat: {names}")
    return out


def _onnx_input_spec(path: Path, size: int):
    """(InputSpec, input name, output name) of an external ONNX encoder, read from the file: uint8
    NHWC (normalisation inside the graph) or float32 NCHW fed pixels / 255."""
    import onnxruntime as ort

    from wsa_ros.runtime.bundle import InputSpec

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if len(ins) != 1 or len(ins[0].shape) != 4:
        raise BuildError(f"{path}: an encoder needs one input of rank 4, it has {[(i.name, i.shape) for i in ins]}")
    shape = ins[0].shape
    if ins[0].type == "tensor(uint8)":
        h, w, kw = shape[1], shape[2], dict(dtype="uint8", layout="nhwc")
    elif ins[0].type == "tensor(float)":
        h, w, kw = shape[2], shape[3], dict(dtype="float32", layout="nchw", scale=1.0 / 255.0)
    else:
        raise BuildError(f"{path}: input type {ins[0].type}; expected uint8 NHWC or float32 NCHW")
    spec = InputSpec(height=h if isinstance(h, int) else size, width=w if isinstance(w, int) else size, **kw)
    return spec, ins[0].name, outs[0].name


def read_frames(bags: list[Path], robot, size: int, max_frames: int, log) -> dict[str, np.ndarray]:
    """Per camera, up to ``max_frames`` frames (evenly spaced over all bags), decoded and resized
    to ``size`` by the engine's preprocessing."""
    from wsa_ros.runtime.bags import iter_messages, summary
    from wsa_ros.runtime.bundle import InputSpec
    from wsa_ros.runtime.images import ImageError, decode, is_compressed_topic
    from wsa_ros.model.encoders import prepare_images

    inp = InputSpec(height=size, width=size)
    counts = {t: 0 for t in robot.camera_topics}
    for bag in bags:  # the bags' own message counts (no read of the frames)
        have = summary(bag).topics
        for t in counts:
            counts[t] += have[t].count if t in have else 0
    out: dict[str, np.ndarray] = {}
    for cam, topic in zip(robot.camera_names, robot.camera_topics):
        total = counts[topic]
        if total == 0:
            raise BuildError(f"camera '{cam}' ({topic}): no frames in the recordings; record it or fix camera_topics")
        keep = set(np.linspace(0, total - 1, min(total, max_frames)).round().astype(int).tolist())
        frames, i, bad = [], 0, 0
        for bag in bags:
            for m in iter_messages(bag, topics=[topic], decode=True):
                if i in keep:
                    try:
                        frames.append(prepare_images(decode(m.msg, is_compressed_topic(topic)), inp)[0])
                    except (ImageError, ValueError):
                        bad += 1
                i += 1
        if not frames:
            raise BuildError(f"camera '{cam}' ({topic}): none of its {total} frames could be decoded")
        out[cam] = np.stack(frames)
        log(f"camera {cam}: {len(frames)} of {total} frames for encoder training"
            + (f" ({bad} undecodable, skipped)" if bad else ""))
    return out


# --------------------------------------------------------------------------- the build
def build_from_bags(args: argparse.Namespace, argv: list[str]) -> Path:
    import torch

    from wsa_ros.config import load_robot, robot_action_spec
    from wsa_ros.learn.demos import import_bag
    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import AssemblerConfig, TransitionSpec
    from wsa_ros.learn.validate import validate_bundle
    from wsa_ros.model.encoders import export_encoder_onnx, train_autoencoder, train_keypoints
    from wsa_ros.model.export import EncoderSource, export_bundle
    from wsa_ros.model.wsa import FusionPolicy, make_head_config
    from wsa_ros.runtime.bags import find_bags
    from wsa_ros.runtime.bundle import ActionSpec, InputSpec, ProprioSpec, load_bundle
    from wsa_ros.runtime.engine import Engine

    t0 = time.time()
    log = (lambda m: None) if args.quiet else (lambda m: say(f"[build-bundle {time.time() - t0:6.1f}s] {m}"))
    robot = load_robot(args.robot)
    bags = [b for p in args.from_bags for b in find_bags(p)]
    if not bags:
        raise BuildArgError(f"no bags found in {args.from_bags}")
    onnx_extra = parse_onnx_encoders(args.onnx_encoder, list(robot.camera_names))
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, args.threads))
    size = args.image_size
    timings: dict[str, float] = {}

    # 1. health
    from wsa_ros.tools.bag_health import check_recordings

    health = check_recordings(bags, robot)
    for w in health.warnings:
        log(f"health WARN: {w}")
    if health.errors:
        text = "; ".join(health.errors)
        if not args.ignore_health:
            raise BuildError(f"the recordings' health report has errors: {text} (see `wsa bag-health`; "
                             "--ignore-health builds anyway)")
        log(f"health ERRORS ignored (--ignore-health): {text}")
    timings["health_s"] = round(time.time() - t0, 1)

    # 2. frames, 3. encoders
    t = time.time()
    frames = read_frames(bags, robot, size, args.max_frames, log)
    timings["frames_s"] = round(time.time() - t, 1)
    t = time.time()
    work = Path(tempfile.mkdtemp(prefix="wsa-build-bags-"))
    try:
        inp = InputSpec(height=size, width=size)
        sources, enc_stats = [], {}
        first = robot.camera_names[0]
        ae, st = train_autoencoder(frames[first], steps=args.ae_steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                   latent=args.ae_latent, log=log)
        enc_stats[f"ae_{first}"] = st
        todo = [(f"ae_{first}", ae.encoder, first, "context",
                 f"conv autoencoder, {args.ae_steps} steps on {len(frames[first])} frames of camera {first}")]
        if args.kp_steps > 0:
            for i, cam in enumerate(robot.camera_names):
                kp, st = train_keypoints(frames[cam], steps=args.kp_steps, batch=args.batch, lr=args.lr,
                                         seed=args.seed + 2 + i, keypoints=args.kp_keypoints, log=log)
                enc_stats[f"kp_{cam}"] = st
                todo.append((f"kp_{cam}", kp.encoder, cam, "feature",
                             f"keypoint autoencoder, {args.kp_keypoints} keypoints, {args.kp_steps} steps on "
                             f"{len(frames[cam])} frames of camera {cam}"))
        for name, net, cam, role, text in todo:
            path = work / f"{name}.onnx"
            export_encoder_onnx(net, path, inp)
            sources.append(EncoderSource(name, cam, inp, role, onnx=path, source=text))
        for name, path, cam in onnx_extra:
            spec_in, in_name, out_name = _onnx_input_spec(path, size)
            sources.append(EncoderSource(name, cam, spec_in, "feature", onnx=path, onnx_input=in_name,
                                         onnx_output=out_name, source=f"ONNX backbone {path.name} (command line)"))
        if not any(s.role == "feature" for s in sources):
            raise BuildError("no fused model: --kp-steps 0 and no --onnx-encoder (give one, or keep the keypoints)")
        timings["encoders_s"] = round(time.time() - t, 1)

        # 4. the recordings through the agent's observation rule, with a provisional bundle
        t = time.time()
        action = ActionSpec(**robot_action_spec(robot))
        fields = list(robot.proprio_fields)
        dim = len(robot.joint_names) * len(fields)
        layout = ProprioSpec(list(robot.joint_names), fields, [0.0] * dim, [1.0] * dim) if fields else None

        def head(specs_or_sources, shapes):
            return make_head_config(
                args.fusion, [{"name": s.name, "output_shape": shapes[s.name], "role": s.role} for s in specs_or_sources],
                action_dim=action.dim, proprio_dim=dim, normalization=args.normalization, d=args.d,
                actor_hidden=[args.hidden, args.hidden], critic_hidden=[args.hidden, args.hidden],
                spatial_adapter=args.spatial_adapter, context_adapter=args.context_adapter,
                critic_norm=args.critic_norm)

        from wsa_ros.model.encoders import onnx_output_shape

        shapes = {s.name: onnx_output_shape(s.onnx, s.input, s.onnx_input, s.onnx_output) for s in sources}
        provisional = export_bundle(work / "provisional", FusionPolicy.from_config(head(sources, shapes)), sources,
                                    action, layout, name=robot.name or "robot", version="0")
        engine = Engine(provisional, providers=["cpu"], threads=max(1, args.threads), warmup=True)
        spec = TransitionSpec.from_bundle(provisional)
        store = ReplayStore(work / "store", spec.schema(), spec.fingerprint(), meta={"kind": "build-from-bags"})
        topics = {"cameras": list(robot.camera_topics), "joints": robot.joint_states_topic,
                  "command": robot.command_topic, "reward": robot.reward_topic,
                  "episode_end": robot.episode_end_topic, "success": robot.success_topic}
        per_bag = []
        with progress(len(bags), "observations (bags)", None if args.quiet else log) as bar:
            for bag in bags:
                r = import_bag(bag, provisional, engine, store, topics, args.episode_steps,
                               AssemblerConfig(require_reward=False))
                per_bag.append(r)
                bar.update(1)
                log(f"{bag.name}: {r['transitions']} observation-command pairs, {r['episodes']} episode end(s)"
                    + (f", rejected {r['rejected']}" if r["rejected"] else ""))
        store.close()
        arr = store.read()
        n = len(arr["reward"])
        need = 2 * args.bc_batch // 4
        if n < need:
            rejected = {k: v for r in per_bag for k, v in (r["rejected"] or {}).items()}
            raise BuildError(f"only {n} usable observation-command pairs in the recordings, at least {need} needed "
                             f"(half a --bc-batch of {args.bc_batch}); rejected: {rejected or 'none'}; record more "
                             "(or a smaller --bc-batch), or fix the topics the robot file names")
        timings["observations_s"] = round(time.time() - t, 1)

        # 5. behaviour cloning, whole episodes held out
        keys = np.array([f"{s}#{e}" for s, e in zip(arr["source"], arr["episode"])])
        episodes = sorted(set(keys.tolist()))
        if len(episodes) < 2:
            raise BuildError(f"the recordings hold {len(episodes)} episode: validation needs at least 2 (record "
                             "episode ends on the robot file's episode_end_topic, or pass --episode-steps N)")
        rng = np.random.default_rng(args.seed)
        n_hold = min(len(episodes) - 1, max(1, int(round(args.holdout * len(episodes)))))
        held = set(rng.choice(episodes, n_hold, replace=False).tolist())
        is_held = np.array([k in held for k in keys])
        raw_p = arr["obs.proprio"][~is_held] if dim else None
        mean = raw_p.mean(axis=0) if dim else None
        std = np.maximum(raw_p.std(axis=0), 1e-3) if dim else None
        proprio = (ProprioSpec(list(robot.joint_names), fields, [round(float(x), 6) for x in mean],
                               [round(float(x), 6) for x in std]) if dim else None)
        tr = np.nonzero(~is_held)[0]
        screened = None
        if args.screen:  # keep the fused models that predict the recorded commands (never the held-out episodes)
            sources, screened = screen_sources(sources, arr, tr, keys, args.seed, log)
        policy = FusionPolicy.from_config(head(sources, shapes))
        names = [src.name for src in sources]
        E = {k: torch.from_numpy(arr[f"obs.{k}"][tr]) for k in names}
        P = torch.from_numpy(((arr["obs.proprio"][tr] - mean) / std).astype(np.float32)) if dim else None
        t = time.time()
        bc = bc_train(policy, E, P, torch.from_numpy(arr["action"][tr]), args.bc_steps, args.bc_batch, args.bc_lr,
                       args.seed, log, "bc")
        timings["bc_s"] = round(time.time() - t, 1)
        held_report = heldout_error(policy, arr, is_held, spec, mean, std, names)
        held_report["episodes"] = {"train": len(episodes) - n_hold, "held_out": n_hold}
        log("held-out action error per joint (" + action.units + "): "
            + ", ".join(f"{j} {e:.4f} (mean-predictor {b:.4f})" for j, e, b in
                        zip(action.joint_names, held_report["mae"], held_report["baseline_mae"]))
            + f"; alpha {held_report['alpha_mean']}")

        # 6. export + validate
        report = {
            "command": " ".join(["wsa", "build-bundle", *(shlex.quote(a) for a in argv)]),
            "robot": robot.name, "bags": [str(b) for b in bags], "health": health.summary(),
            "frames": {c: int(len(f)) for c, f in frames.items()}, "observation_pairs": int(n),
            "import": per_bag, "encoders": enc_stats, "bc": bc, "heldout": held_report, "timings": timings,
            "screen": screened,
        }
        report = _plain(report)
        (work / "report.json").write_text(json.dumps(report, indent=1))
        recipe = {"command": report["command"], "seed": args.seed, "task": f"behaviour cloning from recordings of {robot.name}",
                  "image_size": size, "robot": robot.name, "heldout": held_report, "bc_loss": bc["val_mse"]}
        policy.eval()
        tmp_out = work / "out"
        export_bundle(tmp_out, policy, sources, action, proprio, name=robot.name or "robot", version=args.version,
                      recipe=_plain(recipe), extra_files={"report.json": work / "report.json"})
        idx = np.nonzero(is_held)[0][:256]
        hold = {name: arr[f"obs.{name}"][idx] for name in names}
        if dim:
            hold["proprio"] = arr["obs.proprio"][idx]
        rep = validate_bundle(tmp_out, load_bundle(tmp_out), hold, policy=policy)
        if not rep.ok:
            raise BuildError(f"the built bundle failed validation: {rep.summary()}")
        out = Path(args.out)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_out), str(out))
        timings["total_s"] = round(time.time() - t0, 1)
        log(f"wrote {out} ({robot.name}: {len(sources)} encoders, {action.dim} joints {action.mode}); "
            f"report {out / 'report.json'}; {timings['total_s']} s")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def screen_sources(sources: list, arr: dict, train_idx: np.ndarray, episode_keys: np.ndarray, seed: int,
                   log) -> tuple[list, dict]:
    """``--screen``: the greedy probe of ``wsa screen`` (ridge, recorded commands as the target)
    over the fused ("feature") models' embeddings of the training episodes, split by whole
    episodes into probe-train / validation / test; returns the sources with only the
    recommended feature models (the context encoder stays) and the screening's record."""
    from wsa_ros.tools.screen import blas_threads, greedy_selection, probe_scores

    feats = [s for s in sources if s.role == "feature"]
    if len(feats) < 2:
        log(f"screen: one fused model ({feats[0].name}): nothing to choose")
        return sources, {"kept": [s.name for s in feats], "note": "one fused model"}
    eps = sorted(set(episode_keys[train_idx].tolist()))
    if len(eps) < 3:
        raise BuildError(f"--screen needs at least 3 training episodes (train / validation / test), got {len(eps)}")
    order = np.random.default_rng(seed).permutation(len(eps))
    n_te = n_va = max(1, len(eps) // 5)
    part = {eps[i]: ("test" if k < n_te else "val" if k < n_te + n_va else "train") for k, i in enumerate(order)}
    which = np.array([part[k] for k in episode_keys[train_idx]])
    tr, va, te = (np.nonzero(which == w)[0] for w in ("train", "val", "test"))
    y = arr["action"][train_idx].astype(np.float64)
    embs = {s.name: arr[f"obs.{s.name}"][train_idx].reshape(len(train_idx), -1).astype(np.float64) for s in feats}
    with blas_threads(1):
        single = {n: probe_scores("ridge", e, y, tr, va, te, seed)[1] for n, e in embs.items()}
        steps = greedy_selection(embs, y, tr, va, te, "ridge", max_set=len(feats), min_gain=0.01, seed=seed)
    kept = steps[-1]["set"] if steps else [max(single, key=single.get)]
    log("screen: R² of the recorded commands (test episodes) " + ", ".join(f"{n} {r:.3f}" for n, r in single.items())
        + f"; keeping {kept}")
    out = [s for s in sources if s.role != "feature" or s.name in kept]
    return out, {"r2_test": single, "selection": steps, "kept": kept,
                 "split_frames": {"train": int(len(tr)), "val": int(len(va)), "test": int(len(te))}}


def heldout_error(policy, arr: dict, is_held: np.ndarray, spec, mean, std, names: list[str]) -> dict:
    """The behaviour-cloned policy on the held-out episodes' observations: mean absolute error of
    its action per joint in the robot's units, against the mean-command predictor, and its alpha."""
    import torch

    idx = np.nonzero(is_held)[0]
    low, high = np.asarray(spec.low), np.asarray(spec.high)
    embs = {k: torch.from_numpy(arr[f"obs.{k}"][idx]) for k in names}
    pr = None
    if mean is not None:
        pr = torch.from_numpy(((arr["obs.proprio"][idx] - mean) / std).astype(np.float32))
    with torch.no_grad():
        a, alpha = policy.deterministic_action(embs, pr)
    a = a.numpy()
    to_units = lambda x: low + (np.asarray(x) + 1.0) * 0.5 * (high - low)  # noqa: E731
    pred, true = to_units(a), to_units(arr["action"][idx])
    train_mean = to_units(arr["action"][~is_held].mean(axis=0))
    out = {"observations": int(len(idx)), "mae": np.abs(pred - true).mean(axis=0).tolist(),
           "baseline_mae": np.abs(train_mean - true).mean(axis=0).tolist()}
    if alpha is not None and alpha.numel():
        out["alpha_mean"] = [round(float(x), 4) for x in alpha.mean(dim=0)]
        out["alpha_encoders"] = [e["name"] for e in policy.config["encoders"] if e["role"] in ("feature", "both")]
    return out
