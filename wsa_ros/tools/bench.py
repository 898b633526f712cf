"""`wsa bench`: engine step latency, ONNX Runtime vs the same models in PyTorch eager.

For 1..4 encoders at 84x84 and 128x128 it builds a WSA bundle (Nature-style conv encoders,
random weights: latency does not depend on training), then in ONE process measures

* the engine's full step (preprocess + every encoder session + policy session), median/p99;
* the same encoders and head run in PyTorch eager (``torch.inference_mode``), median/p99;
* each ONNX session run alone, summed (so the chaining overhead is visible);

and finally the shipped default bundle's full step. Both runtimes get the same thread
count (``--threads``, default 1: the agent runs one intra-op thread per session; ``--threads 1,2``
prints one table per count). ``--unrewritten`` adds a column: the same engine without its graph
rewrites (``Engine(rewrite=False)``), measured in the same rounds.
Targets (issue 2): default full step <= 2 ms median; >= 3x faster than eager;
full step <= 1.2x the sum of its sessions run alone.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _stats(ts) -> tuple[float, float]:
    a = np.asarray(ts) * 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def _time(fn, n: int, warm: int = 20) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def build_bench_bundle(folder: Path, n_enc: int, size: int, seed: int = 0):
    """A WSA bundle with ``n_enc`` conv encoders (the first also gives the context);
    returns (bundle path, torch encoders, torch policy)."""
    import torch

    from wsa_ros.runtime.bundle import ActionSpec, InputSpec, ProprioSpec
    from wsa_ros.model.encoders import ConvEncoder
    from wsa_ros.model.export import EncoderSource, export_bundle
    from wsa_ros.model.wsa import FusionPolicy, make_head_config

    torch.manual_seed(seed)
    inp = InputSpec(height=size, width=size)
    encs = [ConvEncoder().eval() for _ in range(n_enc)]
    sources = [EncoderSource(name=f"e{i}", camera="front", input=inp, role="both" if i == 0 else "feature",
                             module=m) for i, m in enumerate(encs)]
    with torch.no_grad():
        shape = list(encs[0](torch.zeros(1, 3, size, size)).shape[1:])
    head = make_head_config("wsa", [{"name": s.name, "output_shape": shape, "role": s.role} for s in sources],
                            action_dim=2, proprio_dim=4)
    policy = FusionPolicy.from_config(head).eval()
    action = ActionSpec(mode="velocity", joint_names=["joint0", "joint1"], low=[-3, -3], high=[3, 3], units="rad/s")
    proprio = ProprioSpec(joint_names=["joint0", "joint1"], fields=["position", "velocity"], mean=[0] * 4, std=[1] * 4)
    out = folder / f"bench_{n_enc}x{size}"
    export_bundle(out, policy, sources, action, proprio, name=out.name, version="bench")
    return out, encs, policy


def eager_step(encs, policy, frame: np.ndarray, proprio: np.ndarray):
    """What an eager PyTorch agent does per tick: frame -> tensor -> encoders -> head."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        embs = {f"e{i}": m(x) for i, m in enumerate(encs)}
        a, alpha = policy.deterministic_action(embs, torch.from_numpy(proprio).float().unsqueeze(0))
        return a.numpy(), alpha.numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="wsa bench", description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", default="1,2,3,4")
    ap.add_argument("--sizes", default="84,128")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    ap.add_argument("--threads", default="1", help="intra-op threads for both runtimes; a list gives one table each")
    ap.add_argument("--unrewritten", action="store_true",
                    help="also time the engine without its graph rewrites (same rounds)")
    ap.add_argument("--providers", default="tensorrt,cuda,cpu")
    ap.add_argument("--bundle", default="", help="bundle for the last line (default: shipped models/default)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from wsa_ros.runtime.engine import resolve_providers

    print(f"$ wsa bench {' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}")
    # resolve once: a missing provider is reported once, not for every engine built below
    providers = [n for n, _ in resolve_providers(args.providers.split(","))]
    for threads in [int(t) for t in str(args.threads).split(",")]:
        _table(args, threads, providers, torch, ort)
    return 0


def _table(args, threads: int, providers: list[str], torch, ort) -> None:
    from wsa_ros.config import resolve_bundle
    from wsa_ros.runtime.engine import Engine

    torch.set_num_threads(threads)
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads={threads} (both); iters={args.iters}; "
          f"load average {load}")
    extra = f" | {'no-rewrite ms':>13} | {'gain':>5}" if args.unrewritten else ""
    hdr = (f"{'encoders':>8} {'size':>5} | {'ORT step ms (med/p99)':>22} | {'eager ms (med/p99)':>19} | "
           f"{'speed-up':>8} | {'sum alone ms':>12} | {'step/sum':>8}{extra}")
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(0)
    rows = []
    rewrites: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            prop = rng.normal(size=4)
            for n in [int(k) for k in args.encoders.split(",")]:
                path, encs, policy = build_bench_bundle(Path(tmp), n, size)
                eng = Engine(path, providers=providers, threads=threads)
                for k, v in eng.rewrites.items():
                    rewrites[k] = rewrites.get(k, 0) + v
                r = eng.step({"front": frame}, prop)
                a_e, _ = eager_step(encs, policy, frame, prop)
                assert np.allclose(a_e[0], r.action_norm, rtol=1e-3, atol=1e-4), "ORT and eager disagree"
                plain = Engine(path, providers=providers, threads=threads, rewrite=False) if args.unrewritten else None
                # interleave the measurements in rounds so drifting machine load hits all alike
                ort_t, eag_t, plain_t, alone_rounds = [], [], [], []
                per = max(1, args.iters // args.rounds)
                for _ in range(args.rounds):
                    ort_t += _time(lambda: eng.step({"front": frame}, prop), per, warm=5)
                    eag_t += _time(lambda: eager_step(encs, policy, frame, prop), per, warm=5)
                    if plain is not None:
                        plain_t += _time(lambda: plain.step({"front": frame}, prop), per, warm=5)
                    alone_rounds.append(sum(_stats(_time(fn, per, warm=5))[0] for fn in eng.stage_runners().values()))
                alone = float(np.median(alone_rounds))
                (om, op), (em, ep) = _stats(ort_t), _stats(eag_t)
                rows.append((n, size, om, op, em, ep, em / om, alone, om / alone))
                tail = ""
                if plain is not None:
                    pm = _stats(plain_t)[0]
                    tail = f" | {pm:>13.3f} | {pm / om:>4.2f}x"
                print(f"{n:>8} {size:>5} | {om:>10.3f} / {op:>9.3f} | {em:>8.3f} / {ep:>8.3f} | "
                      f"{em / om:>7.1f}x | {alone:>12.3f} | {om / alone:>8.2f}{tail}", flush=True)
    met = sum(1 for row in rows if row[6] >= 3.0)
    print(f"speed-up >= 3x (issue 2): {met} of {len(rows)} rows; lowest {min(r[6] for r in rows):.1f}x, "
          f"highest {max(r[6] for r in rows):.1f}x")
    print("engine graph rewrites applied (all rows): "
          + (", ".join(f"{k} x{v}" for k, v in rewrites.items()) or "none"))
    path = resolve_bundle(args.bundle)
    if (path / "manifest.yaml").exists():
        eng = Engine(path, providers=providers, threads=threads)
        b = eng.bundle
        frames = {c: rng.integers(0, 256, (e.input.height, e.input.width, 3), dtype=np.uint8)
                  for c in b.cameras for e in b.encoders if e.camera == c}
        prop = np.asarray(b.proprio.mean) if b.proprio else None
        ts, alone_rounds = [], []
        per = max(1, args.iters // args.rounds)
        for _ in range(args.rounds):
            ts += _time(lambda: eng.step(frames, prop), per, warm=5)
            alone_rounds.append(sum(_stats(_time(fn, per, warm=5))[0] for fn in eng.stage_runners().values()))
        alone = float(np.median(alone_rounds))
        m, p = _stats(ts)
        print(f"default bundle {b.name} v{b.version} ({len(b.encoders)} encoders, {eng.provider}): "
              f"full step {m:.3f} ms median, {p:.3f} ms p99; sessions alone sum {alone:.3f} ms; "
              f"step/sum {m / alone:.2f}")


if __name__ == "__main__":
    sys.exit(main())
