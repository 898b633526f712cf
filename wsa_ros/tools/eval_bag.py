"""``wsa eval-bag BAG``: run a model bundle over a recorded bag offline, without DDS.

The observations are built by the live agent's rule (:mod:`wsa_ros.runtime.observation`:
each frame of the first camera paired with the joint state (and other cameras' frames)
stamped nearest it, the agent's ``sync`` rule applied to the bag's record times; frames
decoded by :mod:`wsa_ros.runtime.images`) and acted on by the same
:class:`wsa_ros.runtime.engine.Engine`, so a bag replayed into the agent node and the same
bag evaluated here give the same actions.

Steps are taken at every frame of the first camera (``--trigger frame``, like the agent's
``trigger: camera``) or at a fixed control rate in bag time (``--trigger rate``, like
``trigger: timer``, at ``control_rate_hz``); the default follows the agent config. Output, in ``--out`` (default ``eval_<bag name>/``):

* ``steps.csv`` (or ``steps.parquet``): one row per step with the bag time, every sample's
  header stamp and receive time, the action (joint units), the normalised action, α per
  feature encoder, the latency of each stage (ms: frame decoding, preprocessing, each
  encoder, policy, total) and, where the bag holds recorded commands on the agent's
  ``command_topic``, the recorded command (the first one at or after the step's time and
  before the next step).
* ``report.md`` with ``actions.png``, ``alpha.png`` and ``latency.png``: latency
  percentiles, α statistics and, with recorded commands, per-joint MAE / RMSE / R² /
  correlation between the policy's actions and the recorded ones.
* ``summary.json``: the report's numbers for scripts.
"""
from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsa_ros.runtime.bags import BagError, summary
from wsa_ros.runtime.observation import iter_observations

COMMAND_TYPES = (
    "std_msgs/msg/Float64MultiArray",
    "trajectory_msgs/msg/JointTrajectory",
    "geometry_msgs/msg/Twist",
    "geometry_msgs/msg/TwistStamped",
)


class EvalError(RuntimeError):
    """A bag/bundle/config combination eval-bag cannot run; the message names the cause."""


# --------------------------------------------------------------------------- commands
def command_vector(msgtype: str, msg, action_spec) -> np.ndarray:
    """A recorded command message -> vector in the bundle's action order (joint units).
    Float64MultiArray: ``data``; JointTrajectory: the first point's positions or velocities
    (by the action mode) matched by joint name; Twist(Stamped): linear xyz + angular xyz."""
    a = action_spec
    if msgtype == "std_msgs/msg/Float64MultiArray":
        v = np.asarray(msg.data, dtype=np.float64).reshape(-1)
        if v.size != a.dim:
            raise ValueError(f"command has {v.size} values, the bundle's action has {a.dim} ({a.joint_names})")
        return v
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        if not len(msg.points):
            raise ValueError("JointTrajectory command has no points")
        pt = msg.points[0]
        vals = pt.positions if a.mode == "position" else pt.velocities
        names = list(msg.joint_names)
        missing = [j for j in a.joint_names if j not in names]
        if missing or len(vals) != len(names):
            raise ValueError(f"JointTrajectory lacks {a.mode}s for joint(s) {missing or a.joint_names}")
        return np.asarray([float(vals[names.index(j)]) for j in a.joint_names])
    if msgtype in ("geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped"):
        tw = msg.twist if msgtype.endswith("Stamped") else msg
        v = np.array([tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z])
        return v[: a.dim]
    raise ValueError(f"recorded command type {msgtype} is not one of {COMMAND_TYPES}")


def align_commands(step_times: list[int], cmd_times: list[int], cmds: list[np.ndarray]):
    """For each step: index of the first command at or after its time and before the next
    step's time (the command that answered that observation), or None."""
    out = []
    for i, t in enumerate(step_times):
        j = bisect.bisect_left(cmd_times, t)
        nxt = step_times[i + 1] if i + 1 < len(step_times) else math.inf
        out.append(j if j < len(cmd_times) and cmd_times[j] < nxt else None)
    return out


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    bag: Path
    bundle_name: str
    bundle_version: str
    provider: str
    trigger: str
    joint_names: list[str]
    alpha_names: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    command_topic: str | None = None


def camera_map(bundle, camera_topics: list[str]) -> dict[str, str]:
    """The agent's rule: one topic per camera, in the bundle's camera order."""
    cams = bundle.cameras
    if len(camera_topics) != len(cams):
        raise EvalError(f"the bundle reads {len(cams)} camera(s) {cams} but {len(camera_topics)} camera "
                        f"topic(s) were given {camera_topics}; give one topic per camera, in that order")
    return dict(zip(cams, camera_topics))


def check_inputs(bag, bundle, camera_topics: list[str], joint_topic: str | None, command_topic: str | None):
    """Bag vs bundle, before any inference: -> (bag summary, {camera: topic}, command
    topic or None). Raises EvalError naming a missing topic or a wrong message type."""
    b = bundle
    info = summary(bag)
    cams = camera_map(b, camera_topics)
    need = list(cams.values()) + ([joint_topic] if b.proprio else [])
    missing = [t for t in need if t not in info.topics]
    if missing:
        raise EvalError(f"{bag}: topic(s) {missing} not in the bag (it has {sorted(info.topics)}); "
                        "set --camera-topics / --joint-states-topic or the agent config")
    for cam, t in cams.items():
        want = "sensor_msgs/msg/CompressedImage" if t.rstrip("/").endswith("/compressed") else "sensor_msgs/msg/Image"
        if info.topics[t].msgtype != want:
            raise EvalError(f"{bag}: camera topic {t} holds {info.topics[t].msgtype}, expected {want} "
                            "(topics ending in /compressed carry CompressedImage)")
    if b.proprio and info.topics[joint_topic].msgtype != "sensor_msgs/msg/JointState":
        raise EvalError(f"{bag}: {joint_topic} holds {info.topics[joint_topic].msgtype}, not sensor_msgs/msg/JointState")
    cmd_topic = command_topic if command_topic and command_topic in info.topics else None
    if cmd_topic and info.topics[cmd_topic].msgtype not in COMMAND_TYPES:
        raise EvalError(f"{bag}: command topic {cmd_topic} holds {info.topics[cmd_topic].msgtype}; "
                        f"comparable types are {COMMAND_TYPES}")
    return info, cams, cmd_topic


def evaluate(bag, engine, camera_topics: list[str], joint_topic: str | None, command_topic: str | None = None,
             trigger: str = "frame", rate_hz: float = 30.0, max_steps: int = 0, progress=None,
             sync: str = "stamp", sync_timeout_s: float = 0.05) -> EvalResult:
    """Run ``engine`` over ``bag``; see the module doc. ``command_topic`` None or missing
    from the bag: no comparison."""
    b = engine.bundle
    info, cams, cmd_topic = check_inputs(bag, b, camera_topics, joint_topic, command_topic)

    res = EvalResult(Path(bag), b.name, b.version, engine.provider, trigger, list(b.action.joint_names),
                     [e.name for e in b.feature_encoders], command_topic=cmd_topic)
    cmd_times: list[int] = []
    cmds: list[np.ndarray] = []
    bad_cmds = 0

    def on_command(m):
        nonlocal bad_cmds
        try:
            cmds.append(command_vector(m.msgtype, m.msg, b.action))
            cmd_times.append(m.timestamp)
        except ValueError:
            bad_cmds += 1

    obs_iter = iter_observations(
        bag, cams, joint_topic if b.proprio else None, trigger=trigger, rate_hz=rate_hz,
        extra_topics=[cmd_topic] if cmd_topic else (), on_extra=on_command, sync=sync,
        timeout_ns=int(sync_timeout_s * 1e9))
    for obs in obs_iter:
        t0 = time.perf_counter()
        try:
            images = obs.images()
            t1 = time.perf_counter()
            proprio = obs.proprio(b.proprio)
            r = engine.step(images, proprio)
        except ValueError as exc:  # ImageError, EngineError, missing joint: the agent skips too
            key = f"{type(exc).__name__}: {exc}"
            res.skipped[key] = res.skipped.get(key, 0) + 1
            continue
        row: dict[str, Any] = {"step": len(res.rows), "bag_time_ns": obs.time_ns,
                               "t_s": round((obs.time_ns - info.start_ns) * 1e-9, 9)}
        row.update(obs.stamps())
        for j, v in zip(b.action.joint_names, r.action):
            row[f"action_{j}"] = float(v)
        for j, v in zip(b.action.joint_names, r.action_norm):
            row[f"action_norm_{j}"] = float(v)
        for name, v in zip(res.alpha_names, r.alpha):
            row[f"alpha_{name}"] = float(v)
        row["ms_decode"] = (t1 - t0) * 1e3
        for stage, s in r.timings.items():
            row[f"ms_{stage}"] = s * 1e3
        res.rows.append(row)
        if progress and len(res.rows) % 100 == 0:
            progress(len(res.rows))
        if max_steps and len(res.rows) >= max_steps:
            break
    if bad_cmds:
        res.skipped[f"recorded commands not comparable (wrong length/joints): {bad_cmds}"] = bad_cmds
    if cmd_topic:
        idx = align_commands([r["bag_time_ns"] for r in res.rows], cmd_times, cmds)
        for row, j in zip(res.rows, idx):
            row["recorded_time_ns"] = cmd_times[j] if j is not None else None
            for k, name in enumerate(b.action.joint_names):
                row[f"recorded_{name}"] = float(cmds[j][k]) if j is not None else None
    return res


# --------------------------------------------------------------------------- output
def columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def write_table(rows: list[dict], path: Path, fmt: str = "csv") -> Path:
    cols = columns(rows)
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise EvalError("--format parquet needs pyarrow (pip install pyarrow); use --format csv") from None
        table = pa.table({c: [r.get(c) for r in rows] for c in cols})
        pq.write_table(table, path)
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in r.items()})
    return path


def read_table(path) -> list[dict[str, Any]]:
    """steps.csv -> rows with numbers parsed (empty cells -> None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                else:
                    try:
                        row[k] = int(v)
                    except ValueError:
                        row[k] = float(v)
            out.append(row)
    return out


def _col(rows, name) -> np.ndarray:
    return np.array([np.nan if r.get(name) is None else r[name] for r in rows], dtype=np.float64)


def compare(res: EvalResult) -> dict[str, dict[str, float]] | None:
    """Per joint: n, MAE, RMSE, R² and correlation of policy actions vs recorded commands."""
    if not res.command_topic:
        return None
    out = {}
    for j in res.joint_names:
        a, c = _col(res.rows, f"action_{j}"), _col(res.rows, f"recorded_{j}")
        ok = np.isfinite(c)
        if ok.sum() < 2:
            continue
        a, c = a[ok], c[ok]
        err = a - c
        var = float(np.var(c))
        corr = float(np.corrcoef(a, c)[0, 1]) if np.std(a) > 0 and np.std(c) > 0 else float("nan")
        out[j] = {"n": int(ok.sum()), "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
                  "r2": float(1 - np.mean(err ** 2) / var) if var > 0 else float("nan"), "corr": corr}
    return out


def latency_stats(res: EvalResult) -> dict[str, dict[str, float]]:
    stages = [c for c in columns(res.rows) if c.startswith("ms_")]
    out = {}
    for s in stages:
        v = _col(res.rows, s)
        v = v[np.isfinite(v)]
        if v.size:
            out[s[3:]] = {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
                          "p95": float(np.percentile(v, 95)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}
    return out


def _plots(res: EvalResult, out: Path) -> list[str]:
    from wsa_ros.tools.plots import pyplot, save_figure

    plt = pyplot()

    t = _col(res.rows, "t_s")
    files = []
    n = len(res.joint_names)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.2 * n + 0.6), sharex=True, squeeze=False)
    for ax, j in zip(axes[:, 0], res.joint_names):
        ax.plot(t, _col(res.rows, f"action_{j}"), label="policy", lw=1.2)
        if res.command_topic:
            ax.plot(t, _col(res.rows, f"recorded_{j}"), label="recorded", lw=1.0, alpha=0.8)
        ax.set_ylabel(j)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right")
    axes[-1, 0].set_xlabel("bag time (s)")
    fig.suptitle("actions")
    save_figure(fig, out / "actions.png", dpi=90)
    files.append("actions.png")

    fig, ax = plt.subplots(figsize=(9, 2.8))
    for name in res.alpha_names:
        ax.plot(t, _col(res.rows, f"alpha_{name}"), label=name, lw=1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("bag time (s)")
    ax.set_ylabel("α")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, out / "alpha.png", dpi=90)
    files.append("alpha.png")

    stages = [c for c in columns(res.rows) if c.startswith("ms_") and c != "ms_total"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3))
    a1.hist(_col(res.rows, "ms_total"), bins=40)
    a1.set_xlabel("total step latency (ms)")
    a1.set_ylabel("steps")
    a2.boxplot([_col(res.rows, s) for s in stages], tick_labels=[s[3:] for s in stages], showfliers=False)
    a2.set_ylabel("ms")
    a2.tick_params(axis="x", rotation=30, labelsize=8)
    save_figure(fig, out / "latency.png", dpi=90)
    files.append("latency.png")
    return files


def write_report(res: EvalResult, out: Path, table_name: str, plots: bool = True) -> Path:
    lat = latency_stats(res)
    cmp_ = compare(res)
    alpha = {n: {"mean": float(np.mean(_col(res.rows, f"alpha_{n}"))), "std": float(np.std(_col(res.rows, f"alpha_{n}")))}
             for n in res.alpha_names}
    summ = {"bag": str(res.bag), "bundle": res.bundle_name, "version": res.bundle_version, "provider": res.provider,
            "trigger": res.trigger, "steps": len(res.rows), "skipped": res.skipped, "latency_ms": lat,
            "alpha": alpha, "command_topic": res.command_topic, "comparison": cmp_}
    (out / "summary.json").write_text(json.dumps(summ, indent=2))
    files = _plots(res, out) if plots and res.rows else []
    L = [f"# eval-bag: {res.bag.name}", "",
         f"- bag: `{res.bag}`", f"- bundle: {res.bundle_name} version {res.bundle_version} on {res.provider}",
         f"- steps: {len(res.rows)} (trigger: {res.trigger}); per-step table: `{table_name}`"]
    for why, n in res.skipped.items():
        L.append(f"- skipped: {n} × {why}")
    L += ["", "## Latency per stage (ms)", "", "| stage | mean | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]
    for s, d in lat.items():
        L.append(f"| {s} | {d['mean']:.3f} | {d['p50']:.3f} | {d['p95']:.3f} | {d['p99']:.3f} | {d['max']:.3f} |")
    L += ["", "## α per feature encoder", "", "| encoder | mean | std |", "|---|---|---|"]
    for n, d in alpha.items():
        L.append(f"| {n} | {d['mean']:.3f} | {d['std']:.3f} |")
    L += ["", "## Policy vs recorded commands", ""]
    if cmp_:
        L += [f"Recorded commands from `{res.command_topic}` (the first one after each step).", "",
              "| joint | n | MAE | RMSE | R² | corr |", "|---|---|---|---|---|---|"]
        for j, d in cmp_.items():
            L.append(f"| {j} | {d['n']} | {d['mae']:.4f} | {d['rmse']:.4f} | {d['r2']:.3f} | {d['corr']:.3f} |")
    else:
        L.append("The bag holds no recorded commands on the command topic; nothing to compare.")
    if files:
        L += ["", "## Plots", ""] + [f"![{f[:-4]}]({f})" for f in files]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wsa eval-bag", description="Run a model bundle over a rosbag2 bag offline "
                                 "(same observation rule and engine as the live agent); write per-step CSV and a report.")
    ap.add_argument("bag", help="bag folder or .mcap/.db3 file")
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the config's, else models/default)")
    ap.add_argument("--config", default=None, help="agent config YAML (config/agent.yaml): topics, rate, providers")
    ap.add_argument("--robot", default=None,
                    help="robot description YAML (config/robots/*.yaml): its camera, joint-state and command "
                         "topics and control rate, over the config's (the flags below override both)")
    ap.add_argument("--camera-topics", nargs="+", default=None, help="one topic per bundle camera, in order")
    ap.add_argument("--joint-states-topic", default=None)
    ap.add_argument("--command-topic", default=None, help="recorded commands to compare with ('' = none)")
    ap.add_argument("--trigger", choices=("frame", "rate"), default=None,
                    help="a step at every frame of the first camera, or at --rate-hz of bag time (default: as the "
                         "agent config's trigger: camera -> frame, timer -> rate)")
    ap.add_argument("--rate-hz", type=float, default=None, help="for --trigger rate (default: control_rate_hz)")
    ap.add_argument("--sync", choices=("stamp", "newest"), default=None,
                    help="which joint state goes with a frame (default: the agent config's sync)")
    ap.add_argument("--out", default=None, help="output folder (default eval_<bag name>)")
    ap.add_argument("--format", choices=("csv", "parquet"), default="csv")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--providers", default=None, help="comma list, e.g. cpu (default: the config's)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from wsa_ros.runtime.bundle import BundleError, load_bundle
    from wsa_ros.config import AgentConfig, ConfigError, load, load_robot, resolve_bundle, robot_agent_params
    from wsa_ros.runtime.engine import Engine, EngineError

    try:
        cfg = load(args.config, AgentConfig) if args.config else AgentConfig()
        if args.robot:  # the arm's topics and rate, as the launch file's robot:= gives them to the agent
            cfg = dataclasses.replace(cfg, **robot_agent_params(load_robot(args.robot)))
        bundle = resolve_bundle(args.bundle if args.bundle is not None else cfg.bundle)
        providers = args.providers.split(",") if args.providers else list(cfg.providers)
        cam_topics = args.camera_topics or list(cfg.camera_topics)
        joint_topic = args.joint_states_topic or cfg.joint_states_topic
        cmd_topic = cfg.command_topic if args.command_topic is None else (args.command_topic or None)
        check_inputs(args.bag, load_bundle(bundle), cam_topics, joint_topic, cmd_topic)  # fail fast
        rate = args.rate_hz or cfg.control_rate_hz
        trigger = args.trigger or ("frame" if getattr(cfg, "trigger", "timer") == "camera" else "rate")
        if args.format == "parquet":
            import importlib.util

            if importlib.util.find_spec("pyarrow") is None:
                raise EvalError("--format parquet needs pyarrow (pip install pyarrow); use --format csv")
        # chained sessions: per-stage latency (preprocess, each encoder, policy) for every step
        engine = Engine(bundle, providers=providers, threads=cfg.intra_op_threads, fuse=False)
        out = Path(args.out or f"eval_{Path(args.bag).name}")
        out.mkdir(parents=True, exist_ok=True)
        log = (lambda s: None) if args.quiet else (lambda s: print(f"[eval-bag] {s}", file=sys.stderr, flush=True))
        log(f"bundle {engine.bundle.name} {engine.version} on {engine.provider}; bag {args.bag}")
        res = evaluate(args.bag, engine, cam_topics, joint_topic, cmd_topic, trigger, rate, args.max_steps,
                       progress=lambda n: log(f"{n} steps"), sync=args.sync or cfg.sync,
                       sync_timeout_s=cfg.sync_timeout_s)
        if not res.rows:
            why = "; ".join(f"{n} × {k}" for k, n in res.skipped.items()) or "no observation was complete"
            raise EvalError(f"{args.bag}: no step could be evaluated ({why})")
        table = write_table(res.rows, out / f"steps.{args.format}", args.format)
        report = write_report(res, out, table.name, plots=not args.no_plots)
    except (BagError, BundleError, ConfigError, EvalError, EngineError) as exc:
        print(f"eval-bag: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{len(res.rows)} steps -> {table}")
        for j, d in (compare(res) or {}).items():
            print(f"  {j}: MAE {d['mae']:.4f}  RMSE {d['rmse']:.4f}  R² {d['r2']:.3f}  (vs recorded, n={d['n']})")
        tot = latency_stats(res).get("total")
        if tot:
            print(f"  step latency: mean {tot['mean']:.2f} ms, p95 {tot['p95']:.2f} ms")
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
