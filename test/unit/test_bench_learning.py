"""benchmarks/bench_learning.py: a seconds-long --quick run of two methods (WSA, concatenation)
on the shipped bundle; the outputs exist, hold finite numbers for every method, and the
reported parameter counts are the ones the two heads must have."""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "benchmarks" / "bench_learning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_quick_run_writes_finite_curves_table_and_plots(tmp_path):
    bench = _load_script()
    out = tmp_path / "bl"
    argv = ["--quick", "--methods", "wsa,concat", "--seeds", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    args = bench.parse_args(argv)
    d = args.d  # the quick head width
    from wsa_ros.runtime.bundle import load_bundle

    names = [e.name for e in load_bundle(ROOT / "models" / "default").feature_encoders]  # kp, pose
    k = len(names)
    assert k >= 2

    for name in ("curves.csv", "runs.csv", "alpha_trace.csv", "results.md", "results.json",
                 "success_vs_steps.png", "alpha_episode.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    # curves: an evaluation at 0, every --eval-every steps and at the end, finite, per method
    curves = _rows(out / "curves.csv")
    want_steps = sorted({*range(0, args.steps, args.eval_every), args.steps})
    for m in ("wsa", "concat"):
        rows = [r for r in curves if r["method"] == m]
        assert sorted(int(r["env_steps"]) for r in rows) == want_steps, m
        for r in rows:
            for key in ("success", "success_any", "return", "final_distance", "wall_s"):
                assert math.isfinite(float(r[key])), (m, key, r[key])
            assert 0.0 <= float(r["success"]) <= 1.0
            assert float(r["return"]) < 0.0  # reward is -distance - effort: always negative
            alphas = [float(r[f"alpha_{n}"]) for n in names]
            assert abs(sum(alphas) - 1.0) < 1e-4, (m, alphas)
        assert int(rows[-1]["updates"]) == args.steps - args.learning_starts + 1
    concat_final = [r for r in curves if r["method"] == "concat"][-1]
    assert all(abs(float(concat_final[f"alpha_{n}"]) - 1 / k) < 1e-6 for n in names)

    # per-run summary: finite timings and parameter counts that match the two architectures
    runs = {r["method"]: r for r in _rows(out / "runs.csv")}
    assert set(runs) == {"wsa", "concat"}
    for m, r in runs.items():
        for key in ("s_per_step", "s_env", "s_embed", "s_act", "s_per_update"):
            v = float(r[key])
            assert math.isfinite(v) and v > 0, (m, key, r[key])
        ret = float(r["final_return"])
        assert math.isfinite(ret) and ret < 0, (m, r["final_return"])  # -distance - effort each step
        parts = sum(int(r[p]) for p in ("params_adapters", "params_context", "params_scorer", "params_fuse",
                                        "params_actor", "params_critic"))
        assert parts == int(r["params_total"]), m
    w, c = runs["wsa"], runs["concat"]
    # concat: Linear(k*d -> d) after the adapters; WSA has no such layer ...
    assert int(c["params_fuse"]) == k * d * d + d
    assert int(w["params_fuse"]) == 0
    # ... but a context adapter and ONE shared scorer Linear(2d -> 1), whatever k is
    assert int(w["params_scorer"]) == 2 * d + 1
    assert int(w["params_context"]) > 0 and int(c["params_context"]) == 0 and int(c["params_scorer"]) == 0
    # same adapters, same actor and critic (state = d + proprio for both)
    for p in ("params_adapters", "params_actor", "params_critic"):
        assert w[p] == c[p], p
    assert w["params_total"] != c["params_total"]

    # WSA alpha trace over one evaluation episode, before and after training
    trace = [r for r in _rows(out / "alpha_trace.csv") if r["method"] == "wsa"]
    assert {r["phase"] for r in trace} == {"initial", "final"}
    assert sum(r["phase"] == "final" for r in trace) == args.episode_steps
    for r in trace:
        assert abs(sum(float(r[f"alpha_{n}"]) for n in names) - 1.0) < 1e-4

    md = (out / "results.md").read_text(encoding="utf-8")
    assert "python benchmarks/bench_learning.py --quick --methods wsa,concat" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| wsa ") or ln.startswith("| concat ")]
    assert len(table) == 2
    assert "nan" not in " ".join(table).lower()
