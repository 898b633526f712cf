"""``wsa screen BAG... --encoder NAME=PATH ...``: which pre-trained encoders suit this data?

The method's first step on a new site: given recorded bags (camera frames plus the
commands that were sent, and the reward where one was recorded) and several candidate
frozen encoders, rank the encoders for *this* data before building a bundle:

* **probe R²**: a ridge-regression probe is trained on each encoder's embedding of the
  frames to predict the recorded command (and, separately, the reward) that followed each
  frame; R² is measured on held-out frames: runs of ``--block`` consecutive frames are
  assigned whole to train, validation or test, so that neighbouring, nearly identical
  frames do not leak across the split. ``--probe mlp`` uses a small two-layer network.
* **complementarity**: greedy forward selection adds, one at a time, the encoder whose
  embedding most improves the probe on the concatenation of the chosen ones (measured on a
  validation part of the training frames); it stops when the gain falls below
  ``--min-gain``. Pairwise linear CKA (1 = the same information up to a rotation) shows
  which candidates are redundant.
* **latency**: preprocessing + inference per frame (batch 1, CPU, after warm-up).

It prints a table, writes ``report.md``, ``results.json`` and ``screen.png`` to ``--out``
and recommends a set: the selected encoders as features, the best single one as WSA's
context encoder.

Candidates: ``NAME=PATH[,key=value...]`` with PATH an ONNX file or a TorchScript file
(``torch.jit.save``). Keys: ``size=HxW``, ``dtype=uint8|float32``, ``layout=nhwc|nchw``,
``color=rgb|bgr|gray``, ``norm=imagenet|unit|none`` (float32 inputs: x*1/255 then
ImageNet mean/std, or only 1/255, or raw 0-255), ``input=``/``output=`` tensor names
(ONNX). ONNX inputs are read off the model where its shape is static. ``--bundle DIR``
adds a bundle's encoders with their manifest specs. PyTorch checkpoints that are plain
pickles or state dicts are refused: a state dict holds weights without the network's
code, and unpickling a full module runs arbitrary code from the file; export the
network with TorchScript or to ONNX instead (``torch.jit.trace(net, x).save(path)``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsa_ros.model.probe import RidgeProbe, Standardizer, blas_threads, r2_score
from wsa_ros.runtime.bags import BagError, find_bags, summary
from wsa_ros.runtime.bundle import EncoderSpec, InputSpec
from wsa_ros.runtime.observation import iter_observations

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ScreenError(RuntimeError):
    """Bad candidate, bag or option; the message names the cause and the fix."""


# --------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    name: str
    path: Path
    kind: str  # onnx | torchscript
    spec: EncoderSpec
    run: Callable[[np.ndarray], np.ndarray] | None = None  # prepared input -> embedding [1, ...]


def _parse_size(v: str, where: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in v.lower().split("x"))
    except ValueError:
        raise ScreenError(f"{where}: size '{v}' is not HxW (e.g. size=224x224)") from None
    return h, w


def parse_candidate(text: str) -> tuple[str, Path, dict[str, str]]:
    head, *opts = text.split(",")
    name, sep, path = head.partition("=")
    if not sep:
        path, name = head, Path(head).stem
    if not name or not path:
        raise ScreenError(f"--encoder '{text}' is not NAME=PATH[,key=value...]")
    kv = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep or k not in ("size", "dtype", "layout", "color", "norm", "input", "output"):
            raise ScreenError(f"--encoder '{text}': option '{o}' is not one of size=, dtype=, layout=, color=, "
                              "norm=, input=, output=")
        kv[k] = v
    return name, Path(path).expanduser(), kv


def _input_spec(where: str, opts: dict, h: int | None, w: int | None, dtype: str, layout: str,
                color: str) -> InputSpec:
    if "size" in opts:
        h, w = _parse_size(opts["size"], where)
    if not h or not w:
        raise ScreenError(f"{where}: the input size is not fixed in the model; give size=HxW")
    dtype = opts.get("dtype", dtype)
    layout = opts.get("layout", layout)
    color = opts.get("color", color)
    norm = opts.get("norm", "imagenet" if dtype == "float32" else "none")
    c = 1 if color == "gray" else 3
    if dtype == "float32":
        scale = 1.0 if norm == "none" else 1 / 255
        mean = IMAGENET_MEAN if norm == "imagenet" and c == 3 else [0.0] * c
        std = IMAGENET_STD if norm == "imagenet" and c == 3 else [1.0] * c
    else:
        scale, mean, std = 1.0, [0.0] * c, [1.0] * c
    if norm not in ("imagenet", "unit", "none"):
        raise ScreenError(f"{where}: norm '{norm}' is not imagenet, unit or none")
    try:
        from wsa_ros.runtime.bundle import _parse_input

        return _parse_input({"height": h, "width": w, "color": color, "dtype": dtype, "layout": layout,
                             "scale": scale, "mean": mean, "std": std}, where)
    except ValueError as exc:
        raise ScreenError(str(exc)) from None


def load_onnx(name: str, path: Path, opts: dict, threads: int = 1) -> Candidate:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        raise ScreenError(f"{path}: ONNX Runtime cannot load this model: {exc}") from None
    ins, outs = sess.get_inputs(), sess.get_outputs()
    inp = next((i for i in ins if i.name == opts.get("input")), None) if "input" in opts else (ins[0] if len(ins) == 1 else None)
    if inp is None:
        raise ScreenError(f"{path}: cannot tell the image input among {[i.name for i in ins]}; give input=NAME")
    out_name = opts.get("output") or outs[0].name
    if out_name not in [o.name for o in outs]:
        raise ScreenError(f"{path}: has no output '{out_name}' (outputs: {[o.name for o in outs]})")
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ScreenError(f"{path}: input '{inp.name}' has shape {shape}; an image encoder takes [B,H,W,C] or [B,C,H,W]")
    dtype = "uint8" if inp.type == "tensor(uint8)" else "float32" if inp.type == "tensor(float)" else None
    if dtype is None:
        raise ScreenError(f"{path}: input type {inp.type} is neither uint8 nor float32")
    fixed = lambda d: d if isinstance(d, int) and d > 0 else None  # noqa: E731
    if fixed(shape[3]) in (1, 3):
        layout, h, w, c = "nhwc", fixed(shape[1]), fixed(shape[2]), shape[3]
    elif fixed(shape[1]) in (1, 3):
        layout, h, w, c = "nchw", fixed(shape[2]), fixed(shape[3]), shape[1]
    else:
        layout, h, w, c = opts.get("layout", "nhwc" if dtype == "uint8" else "nchw"), None, None, 3
    spec = _input_spec(f"{path}", opts, h, w, dtype, layout, "gray" if c == 1 else "rgb")
    enc = EncoderSpec(name, path.name, "", "camera", spec, [0], onnx_input=inp.name, onnx_output=out_name)

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {inp.name: x})[0]

    return Candidate(name, path, "onnx", enc, run)


def load_torchscript(name: str, path: Path, opts: dict, threads: int = 1) -> Candidate:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - not a TorchScript archive
        what = "is not a TorchScript file"
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                what = "is a state dict (weights without the network's code)"
        except Exception:  # noqa: BLE001 - a full pickle: never unpickled here
            pass
        raise ScreenError(
            f"{path} {what}; screen runs only TorchScript or ONNX encoders, because unpickling a whole "
            f"PyTorch module runs arbitrary code from the file. Export it: torch.jit.trace(net, example).save(path) "
            f"or torch.onnx.export ({type(exc).__name__})") from None
    module.eval()
    torch.set_num_threads(threads)
    spec = _input_spec(f"{path}", opts, None, None, opts.get("dtype", "float32"), opts.get("layout", "nchw"), "rgb")
    enc = EncoderSpec(name, path.name, "", "camera", spec, [0])

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = module(torch.from_numpy(x))
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.detach().float().numpy()

    return Candidate(name, path, "torchscript", enc, run)


def load_candidate(text: str, threads: int = 1) -> Candidate:
    name, path, opts = parse_candidate(text)
    if not path.is_file():
        raise ScreenError(f"--encoder {name}: file {path} not found")
    if path.suffix == ".onnx":
        return load_onnx(name, path, opts, threads)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".torchscript"):
        return load_torchscript(name, path, opts, threads)
    raise ScreenError(f"--encoder {name}: {path} is neither .onnx nor a TorchScript file (.pt/.ts)")


def bundle_candidates(path: str, threads: int = 1) -> list[Candidate]:
    from wsa_ros.runtime.bundle import load_bundle

    b = load_bundle(path)
    out = []
    for e in b.encoders:
        c = load_onnx(e.name, b.path(e.file), {"input": e.onnx_input, "output": e.onnx_output}, threads)
        c.spec = e  # the manifest's preprocessing is authoritative
        out.append(c)
    return out


def prepare(spec: EncoderSpec, rgb: np.ndarray) -> np.ndarray:
    """A frame -> the encoder's input tensor [1, ...], by the engine's own preprocessing."""
    from wsa_ros.runtime.engine import preprocess

    return preprocess(rgb, spec)


# --------------------------------------------------------------------------- data
@dataclass
class Dataset:
    frames: list[np.ndarray]
    actions: np.ndarray  # [N, A]
    rewards: np.ndarray | None  # [N] or None
    bag_index: np.ndarray  # [N]
    bags: list[str] = field(default_factory=list)


def _first_in_window(times: list[int], t: int, t_next: float) -> int | None:
    import bisect

    j = bisect.bisect_left(times, t)
    return j if j < len(times) and times[j] < t_next else None


def load_dataset(paths: list[Path], camera_topic: str, action_topic: str, reward_topic: str | None,
                 stride: int = 1, max_frames: int = 0) -> Dataset:
    """Frames of ``camera_topic`` with the first command (and reward) that followed each
    one before the next frame (frames without a command are dropped)."""
    frames: list[np.ndarray] = []
    acts, rews, bag_idx = [], [], []
    use_reward = reward_topic is not None
    for bi, p in enumerate(paths):
        info = summary(p)
        for t in (camera_topic, action_topic):
            if t not in info.topics:
                raise ScreenError(f"{p}: topic {t} not in the bag (it has {sorted(info.topics)}); "
                                  "set --camera-topic / --action-topic")
        if use_reward and reward_topic not in info.topics:
            use_reward = False
        extra = {"cmd": ([], []), "rew": ([], [])}
        msgtype = info.topics[action_topic].msgtype

        def on_extra(m, extra=extra, msgtype=msgtype):
            if m.topic == action_topic:
                extra["cmd"][0].append(m.timestamp)
                extra["cmd"][1].append(_command_values(msgtype, m.msg))
            elif m.topic == reward_topic:
                extra["rew"][0].append(m.timestamp)
                extra["rew"][1].append(float(m.msg.data))

        topics = [action_topic] + ([reward_topic] if reward_topic and reward_topic in info.topics else [])
        obs = list(iter_observations(p, {"camera": camera_topic}, None, trigger="frame", extra_topics=topics,
                                     on_extra=on_extra))
        times = [o.time_ns for o in obs]
        for i, o in enumerate(obs):
            if i % stride:
                continue
            t_next = times[i + 1] if i + 1 < len(times) else math.inf
            j = _first_in_window(extra["cmd"][0], o.time_ns, t_next)
            if j is None:
                continue
            k = _first_in_window(extra["rew"][0], o.time_ns, t_next)
            frames.append(o.images()["camera"])
            acts.append(extra["cmd"][1][j])
            rews.append(np.nan if k is None else extra["rew"][1][k])
            bag_idx.append(bi)
            if max_frames and len(frames) >= max_frames:
                break
        if max_frames and len(frames) >= max_frames:
            break
    if len(frames) < 20:
        raise ScreenError(f"only {len(frames)} frames with a recorded command on {action_topic}; need at least 20")
    dims = {len(a) for a in acts}
    if len(dims) != 1:
        raise ScreenError(f"recorded commands on {action_topic} have varying lengths {sorted(dims)}")
    r = np.asarray(rews, dtype=np.float64)
    rewards = r if use_reward and np.isfinite(r).mean() > 0.9 else None
    return Dataset(frames, np.asarray(acts, dtype=np.float64), rewards, np.asarray(bag_idx), [str(p) for p in paths])


def _command_values(msgtype: str, msg) -> np.ndarray:
    if msgtype == "std_msgs/msg/Float64MultiArray":
        return np.asarray(msg.data, dtype=np.float64).reshape(-1)
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        pt = msg.points[0] if len(msg.points) else None
        vals = (pt.positions if len(pt.positions) else pt.velocities) if pt is not None else []
        return np.asarray(vals, dtype=np.float64)
    if msgtype in ("geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped"):
        tw = msg.twist if msgtype.endswith("Stamped") else msg
        return np.array([tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z])
    raise ScreenError(f"recorded commands of type {msgtype} are not supported (Float64MultiArray, "
                      "JointTrajectory, Twist, TwistStamped)")


def split_indices(ds: Dataset, test_fraction: float, val_fraction: float = 0.2, block: int = 20, seed: int = 0):
    """Blocked split: every bag's frames are cut into runs of ``block`` consecutive frames
    and whole runs go to test / validation / train (shuffled with ``seed``), so that
    neighbouring, nearly identical frames do not sit on both sides of a split while every
    split still sees every part of the recording."""
    rng = np.random.default_rng(seed)
    runs = []
    for b in np.unique(ds.bag_index):
        idx = np.flatnonzero(ds.bag_index == b)
        runs += [idx[i:i + block] for i in range(0, len(idx), block)]
    order = rng.permutation(len(runs))
    n_test = max(1, int(round(len(runs) * test_fraction)))
    n_val = max(1, int(round(len(runs) * val_fraction)))
    pick = lambda ids: np.sort(np.concatenate([runs[i] for i in ids])) if len(ids) else np.array([], int)  # noqa: E731
    return pick(order[n_test + n_val:]), pick(order[n_test:n_test + n_val]), pick(order[:n_test])


# --------------------------------------------------------------------------- probes
class MLPProbe:
    """Two-layer MLP (128 hidden, ReLU) trained with Adam; early stopping on validation."""

    def __init__(self, seed: int = 0, epochs: int = 300):
        self.seed, self.epochs = seed, epochs

    def fit_select(self, x, y, xv, yv):
        import torch

        torch.manual_seed(self.seed)
        torch.set_num_threads(1)  # tiny matrices: threads only add contention
        self.sx, self.sy = Standardizer(x), Standardizer(y.reshape(len(y), -1))
        X = torch.tensor(self.sx(x), dtype=torch.float32)
        Y = torch.tensor(self.sy(y.reshape(len(y), -1)), dtype=torch.float32)
        Xv = torch.tensor(self.sx(xv), dtype=torch.float32)
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, Y.shape[1]))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        best, state = -math.inf, None
        for ep in range(self.epochs):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(X), Y)
            loss.backward()
            opt.step()
            if ep % 10 == 9:
                with torch.no_grad():
                    s = r2_score(yv, self.sy.mean + net(Xv).numpy() * self.sy.std)
                if s > best:
                    best, state = s, {k: v.clone() for k, v in net.state_dict().items()}
        if state is not None:
            net.load_state_dict(state)
        self.net = net
        return self

    def predict(self, x):
        import torch

        with torch.no_grad():
            out = self.net(torch.tensor(self.sx(x), dtype=torch.float32)).numpy()
        return self.sy.mean + out * self.sy.std


def make_probe(kind: str, seed: int = 0):
    return RidgeProbe() if kind == "ridge" else MLPProbe(seed)


def probe_scores(kind, x, y, tr, va, te, seed=0) -> tuple[float, float]:
    """(validation R², test R²) of a probe fitted on train (penalty/epochs chosen on val)."""
    p = make_probe(kind, seed).fit_select(x[tr], y[tr], x[va], y[va])
    return r2_score(y[va], p.predict(x[va])), r2_score(y[te], p.predict(x[te]))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    # via n x n Gram matrices: cheaper than d x d for wide embeddings
    ka, kb = a @ a.T, b @ b.T
    hsic = (ka * kb).sum()
    den = math.sqrt((ka * ka).sum() * (kb * kb).sum())
    return float(hsic / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------- screening
@dataclass
class EncoderResult:
    name: str
    kind: str
    path: str
    dim: int
    r2_action: float
    r2_action_val: float
    r2_reward: float | None
    ms_mean: float
    ms_p95: float


def embed_all(c: Candidate, frames: list[np.ndarray], warmup: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] (flattened) and per-frame latency (s) of preprocessing + inference."""
    for f in frames[:warmup]:
        c.run(prepare(c.spec, f))
    out, lat = [], []
    for f in frames:
        t0 = time.perf_counter()
        y = c.run(prepare(c.spec, f))
        lat.append(time.perf_counter() - t0)
        y = np.asarray(y, dtype=np.float64)
        if y.shape[0] != 1:
            raise ScreenError(f"encoder {c.name}: output batch {y.shape[0]} for one frame (output shape {y.shape})")
        out.append(y.reshape(-1))
    e = np.stack(out)
    if not np.all(np.isfinite(e)):
        raise ScreenError(f"encoder {c.name} ({c.path}) produced NaN/inf embeddings on this data")
    return e, np.asarray(lat)


def _block(embs: dict[str, np.ndarray], names: list[str], tr) -> np.ndarray:
    """Concatenation of standardised embeddings, each block scaled by 1/sqrt(dim) so that
    a wide embedding does not dominate the ridge penalty."""
    parts = []
    for n in names:
        e = embs[n]
        s = Standardizer(e[tr])
        parts.append(s(e) / math.sqrt(e.shape[1]))
    return np.concatenate(parts, axis=1)


def greedy_selection(embs, y, tr, va, te, kind="ridge", max_set=4, min_gain=0.01, seed=0) -> list[dict]:
    chosen: list[str] = []
    steps = []
    best_val = -math.inf
    while len(chosen) < min(max_set, len(embs)):
        trial = []
        for n in embs:
            if n in chosen:
                continue
            val, test = probe_scores(kind, _block(embs, chosen + [n], tr), y, tr, va, te, seed)
            trial.append((val, test, n))
        val, test, n = max(trial)
        gain = val - best_val if chosen else val
        if chosen and gain < min_gain:
            break
        chosen.append(n)
        best_val = val
        steps.append({"added": n, "set": list(chosen), "r2_val": val, "r2_test": test, "gain": gain})
    return steps


def screen(ds: Dataset, candidates: list[Candidate], probe: str = "ridge", test_fraction: float = 0.25,
           max_set: int = 4, min_gain: float = 0.01, seed: int = 0, log=print, block: int = 20) -> dict[str, Any]:
    with blas_threads(1):
        return _screen(ds, candidates, probe, test_fraction, max_set, min_gain, seed, log, block)


def _screen(ds, candidates, probe, test_fraction, max_set, min_gain, seed, log, block) -> dict[str, Any]:
    tr, va, te = split_indices(ds, test_fraction, block=block, seed=seed)
    if min(len(tr), len(va), len(te)) < 5:
        raise ScreenError(f"too few frames for train/validation/test ({len(tr)}/{len(va)}/{len(te)}); record more")
    embs: dict[str, np.ndarray] = {}
    results: list[EncoderResult] = []
    for c in candidates:
        e, lat = embed_all(c, ds.frames)
        embs[c.name] = e
        va_a, te_a = probe_scores(probe, e, ds.actions, tr, va, te, seed)
        r_rew = None
        if ds.rewards is not None:
            r_rew = probe_scores(probe, e, ds.rewards, tr, va, te, seed)[1]
        results.append(EncoderResult(c.name, c.kind, str(c.path), e.shape[1], te_a, va_a, r_rew,
                                     float(lat.mean() * 1e3), float(np.percentile(lat, 95) * 1e3)))
        log(f"{c.name}: dim {e.shape[1]}, R² action {te_a:.3f}, {lat.mean() * 1e3:.2f} ms/frame")
    results.sort(key=lambda r: (-(r.r2_action if math.isfinite(r.r2_action) else -1e9), r.ms_mean))
    steps = greedy_selection(embs, ds.actions, tr, va, te, probe, max_set, min_gain, seed)
    names = [r.name for r in results]
    cka = [[linear_cka(embs[a], embs[b]) for b in names] for a in names]
    selected = steps[-1]["set"] if steps else []
    useful = [r for r in results if r.r2_action > 0]
    rec = {
        "features": selected,
        "context": useful[0].name if useful else None,
        "latency_ms": sum(r.ms_mean for r in results if r.name in selected),
        "note": "" if useful else "no candidate predicts the recorded commands better than their mean (R² <= 0)",
    }
    return {
        "frames": len(ds.frames), "split": {"train": len(tr), "val": len(va), "test": len(te)},
        "bags": ds.bags, "probe": probe, "action_dim": int(ds.actions.shape[1]),
        "reward": ds.rewards is not None,
        "encoders": [r.__dict__ for r in results],
        "selection": steps, "cka": {"names": names, "matrix": cka}, "recommendation": rec,
    }


# --------------------------------------------------------------------------- output
def format_table(res: dict) -> str:
    rew = res["reward"]
    head = f"{'rank':>4}  {'encoder':16s} {'kind':11s} {'dim':>6}  {'R² action':>9}" + \
           (f"  {'R² reward':>9}" if rew else "") + f"  {'ms/frame':>8}  {'p95 ms':>7}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(res["encoders"], 1):
        line = f"{i:>4}  {r['name'][:16]:16s} {r['kind']:11s} {r['dim']:>6}  {r['r2_action']:>9.3f}"
        if rew:
            line += f"  {r['r2_reward']:>9.3f}"
        lines.append(line + f"  {r['ms_mean']:>8.2f}  {r['ms_p95']:>7.2f}")
    rec = res["recommendation"]
    lines.append("")
    for s in res["selection"]:
        lines.append(f"  + {s['added']:16s} -> R² val {s['r2_val']:.3f} (gain {s['gain']:+.3f}), test {s['r2_test']:.3f}")
    lines.append(f"recommended feature encoders: {rec['features']}; context encoder: {rec['context']}; "
                 f"{rec['latency_ms']:.2f} ms/frame for the features")
    if rec["note"]:
        lines.append(f"note: {rec['note']}")
    return "\n".join(lines)


def write_report(res: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float))
    plot = _plot(res, out)
    rec = res["recommendation"]
    L = ["# Encoder screening", "",
         f"- bags: {', '.join(f'`{b}`' for b in res['bags'])}",
         f"- frames: {res['frames']} (train {res['split']['train']}, validation {res['split']['val']}, "
         f"test {res['split']['test']}; whole runs of consecutive frames per split)",
         f"- probe: {res['probe']}; target: the recorded command after each frame ({res['action_dim']} values)"
         + ("; and the reward" if res["reward"] else ""), "",
         "## Ranking (held-out R², higher is better; latency per frame on this CPU)", "",
         "| rank | encoder | kind | dim | R² action | " + ("R² reward | " if res["reward"] else "") + "ms/frame | p95 ms |",
         "|---|---|---|---|---|" + ("---|" if res["reward"] else "") + "---|---|"]
    for i, r in enumerate(res["encoders"], 1):
        L.append(f"| {i} | {r['name']} | {r['kind']} | {r['dim']} | {r['r2_action']:.3f} | "
                 + (f"{r['r2_reward']:.3f} | " if res["reward"] else "") + f"{r['ms_mean']:.2f} | {r['ms_p95']:.2f} |")
    L += ["", "## Complementarity: greedy forward selection", "",
          "| step | added | R² validation | gain | R² test |", "|---|---|---|---|---|"]
    for i, s in enumerate(res["selection"], 1):
        L.append(f"| {i} | {s['added']} | {s['r2_val']:.3f} | {s['gain']:+.3f} | {s['r2_test']:.3f} |")
    names = res["cka"]["names"]
    L += ["", "Linear CKA between embeddings (1 = redundant):", "", "| | " + " | ".join(names) + " |",
          "|---|" + "---|" * len(names)]
    for n, row in zip(names, res["cka"]["matrix"]):
        L.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    L += ["", "## Recommendation", "",
          f"- feature encoders: {', '.join(rec['features']) or '(none)'}",
          f"- context encoder (WSA): {rec['context']}",
          f"- feature latency: {rec['latency_ms']:.2f} ms/frame (sum, CPU, batch 1)"]
    if rec["note"]:
        L.append(f"- note: {rec['note']}")
    if plot:
        L += ["", f"![screening]({plot})"]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n", encoding="utf-8")
    return path


def _plot(res: dict, out: Path) -> str | None:
    from wsa_ros.tools.plots import pyplot, save_figure

    plt = pyplot()

    enc = res["encoders"]
    if not enc:
        return None
    names = [e["name"] for e in enc]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.45 * len(enc) + 1.6))
    y = np.arange(len(enc))[::-1]
    a1.barh(y, [max(e["r2_action"], -0.2) for e in enc], color="tab:blue")
    a1.set_yticks(y, names)
    a1.axvline(0, color="k", lw=0.8)
    a1.set_xlabel("held-out R² (recorded command)")
    a2.barh(y, [e["ms_mean"] for e in enc], color="tab:orange")
    a2.set_yticks(y, names)
    a2.set_xlabel("ms / frame")
    save_figure(fig, out / "screen.png", dpi=90)
    return "screen.png"


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wsa screen", description="Rank candidate frozen encoders on recorded bags "
                                 "with held-out probes, greedy complementarity and latency.")
    ap.add_argument("bags", nargs="+", help="bag folders/files, or folders holding bags")
    ap.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH[,k=v]",
                    help="candidate: ONNX or TorchScript file (repeat); options size=HxW dtype= layout= color= norm= "
                         "input= output=")
    ap.add_argument("--bundle", action="append", default=[], help="add every encoder of this bundle")
    ap.add_argument("--config", default=None, help="agent config YAML: default camera and command topics")
    ap.add_argument("--camera-topic", default=None, help="default: the agent config's first camera topic")
    ap.add_argument("--action-topic", default=None, help="recorded commands (default: the agent's command_topic)")
    ap.add_argument("--reward-topic", default="/wsa/reward", help="std_msgs/Float64 reward, used if present ('' = off)")
    ap.add_argument("--probe", choices=("ridge", "mlp"), default="ridge")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--block", type=int, default=20, help="frames per contiguous run in the split (default 20)")
    ap.add_argument("--max-set", type=int, default=4, help="largest recommended feature set")
    ap.add_argument("--min-gain", type=float, default=0.01, help="stop adding encoders below this R² gain")
    ap.add_argument("--stride", type=int, default=1, help="use every N-th frame")
    ap.add_argument("--max-frames", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="report folder (default screen_<first bag name>)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from wsa_ros.runtime.bundle import BundleError
    from wsa_ros.config import AgentConfig, ConfigError, load

    log = (lambda s: None) if args.quiet else (lambda s: print(f"[screen] {s}", file=sys.stderr, flush=True))
    try:
        if not args.encoder and not args.bundle:
            raise ScreenError("no candidates: give --encoder NAME=PATH (repeatable) and/or --bundle DIR")
        if not 0.05 <= args.test_fraction <= 0.5:
            raise ScreenError(f"--test-fraction {args.test_fraction} is outside [0.05, 0.5]")
        cfg = load(args.config, AgentConfig) if args.config else AgentConfig()
        cam = args.camera_topic or cfg.camera_topics[0]
        act = args.action_topic or cfg.command_topic
        paths = [p for b in args.bags for p in find_bags(b)]
        cands = [c for b in args.bundle for c in bundle_candidates(b, args.threads)]
        cands += [load_candidate(e, args.threads) for e in args.encoder]
        names = [c.name for c in cands]
        if len(set(names)) != len(names):
            raise ScreenError(f"candidate names repeat: {names}; name them with NAME=PATH")
        log(f"{len(paths)} bag(s), {len(cands)} candidate(s); reading frames from {cam}, commands from {act}")
        ds = load_dataset(paths, cam, act, args.reward_topic or None, args.stride, args.max_frames)
        log(f"{len(ds.frames)} frames with a recorded command" + (" and reward" if ds.rewards is not None else ""))
        res = screen(ds, cands, args.probe, args.test_fraction, args.max_set, args.min_gain, args.seed, log,
                     args.block)
        out = Path(args.out or f"screen_{paths[0].name}")
        report = write_report(res, out)
    except (BagError, BundleError, ConfigError, ScreenError) as exc:
        print(f"screen: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(res))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
