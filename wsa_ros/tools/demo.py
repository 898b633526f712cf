"""`wsa demo`: the main job, in one command.

Starts the simulated arm (``sim_arm_node``), the agent (``agent_node``, enabled) and the
fine-tuner (``finetune_node``) as separate processes talking over ROS 2 on localhost, with a
private ``ROS_DOMAIN_ID``, on the shipped ``models/default`` bundle unless ``--bundle``:

* ``--start fresh`` (the default): first a rosbag of the simulated arm driven by its scripted
  expert is recorded and imported as demonstrations (``wsa import-demos``), the baseline to
  beat is made by the same command (the new head behaviour-cloned on those demonstrations
  alone, ``--bc-steps``), and the agent starts on the new, untrained policy head over the
  bundle's frozen encoders; the fine-tuner teaches it from the demonstrations and the live
  transitions and hot-swaps each validated policy in.
* ``--start shipped``: the agent starts on the bundle's own policy and the fine-tuner refines it.

With fine-tuning on, policies take the fleet's route: the learner signs each export with the
demo's own key (``out/keys``) and publishes it on ``~/policy`` (``push_via: topic``); the agent
trusts that key alone (``allow_unsigned: false``), takes bundles from the topic into its own
cache and checks them before the swap; it starts on a signed copy of the start bundle.

Each node reads its config file (``config/{sim,agent,finetune}.yaml``) and then the demo's own
settings for the chosen start, ``config/demo_fresh.yaml`` or ``config/demo_shipped.yaml`` (the
agent's exploration noise, the learner's settings; ``--param`` overrides any). While they run it
prints one line per episode (return, success, policy version, inference latency) under a
progress bar; at the end it writes to ``--out`` (default ``out/demo``):

* ``success_rate.png``  success per episode and its moving average against wall time and against
  the learner's updates, the learner's updates/s, policy updates and the offline levels marked
* ``alpha_episode.png`` alpha per encoder over the last complete episode (which model the policy uses)
* ``episodes.csv``      one row per episode
* ``summary.json`` / ``summary.md``  the paired offline check (``--eval-episodes`` held-out episodes,
  the same for each policy: the start, behaviour cloning, the final policy; final - bc and
  final - start with their 95 % intervals), success early vs late, the learner's pace, alpha
  statistics, latency, children's exit codes
* ``logs/<child>.log``  each child's output

Children are stopped with SIGINT, then SIGTERM, then SIGKILL, also on Ctrl+C or when one of them
dies (the demo then says which one and its exit code, and shows the end of its log).

Exit codes: 0 done; 1 a child died or nothing could be measured; 2 bad arguments; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_MINUTES = 5.0
LEARNER_GRACE_S = 30.0


# ============================================================================ processes
def ros_env(domain_id: int, base: dict | None = None) -> dict:
    """The environment for ROS children: a private domain, discovery on loopback only,
    CPU rendering and unbuffered output (so logs are complete when a child dies)."""
    env = dict(os.environ if base is None else base)
    env.update(ROS_DOMAIN_ID=str(int(domain_id)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return env


def _param_text(v) -> str:
    if isinstance(v, str):
        # a string that YAML would read as another type (e.g. "1", "true") must be quoted
        return v if isinstance(yaml.safe_load(v or "''"), str) and v else json.dumps(v)
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()


def niced(cmd: list[str], level: int = 10) -> list[str]:
    """``cmd`` at a lower CPU priority (``nice -n level``) where ``nice`` exists."""
    return ["nice", "-n", str(int(level)), *cmd] if shutil.which("nice") else cmd


def node_command(entry: str, params: dict | None = None, params_files=(), ros_args: list[str] | None = None,
                 params_path: str | os.PathLike | None = None) -> list[str]:
    """The command line starting a node of this package: its console script (``agent_node``,
    ``sim_arm_node``, ``finetune_node``) next to this Python or on PATH, else ``python -c`` on the
    module's ``main``; then ``--ros-args``. With parameter files, the files and ``params`` are
    merged here (later files and ``params`` win, :func:`wsa_ros.config.merge_params`), checked
    by the node's schema and written to ``params_path`` (default: a new file in the temp
    folder) as the node's one ``--params-file``; without, ``params`` go as ``-p k:=v``."""
    from wsa_ros.config import NODE_CONFIGS, ConfigError, dump_params, from_dict, merge_params

    here = str(Path(sys.executable).parent)
    exe = shutil.which(entry, path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    module = entry if entry.endswith("_node") else f"{entry}_node"
    cmd = [exe] if exe else [sys.executable, "-c",
                             f"import sys; from wsa_ros.ros.{module} import main; sys.exit(main())"]
    cmd.append("--ros-args")
    files = [f for f in ([params_files] if isinstance(params_files, (str, os.PathLike)) else params_files) if f]
    if files:
        merged = merge_params(files, params, module)
        if module in NODE_CONFIGS:  # a bad value is named here, before any process starts
            from_dict(NODE_CONFIGS[module], merged, where=f"{module} parameters ({', '.join(map(str, files))} "
                                                          f"and the command line)")
        if params_path is None:
            fd, params_path = tempfile.mkstemp(prefix=f"wsa_{module}_", suffix=".yaml")
            os.close(fd)
        try:
            Path(params_path).write_text(dump_params(merged, module), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {module}'s parameter file {params_path}: {exc}") from exc
        cmd += ["--params-file", str(params_path)]
    else:
        for k, v in (params or {}).items():
            cmd += ["-p", f"{k}:={_param_text(v)}"]
    return cmd + list(ros_args or [])


@dataclass
class Child:
    name: str
    cmd: list[str]
    proc: subprocess.Popen
    log_path: Path | None
    grace_s: float | None = None  # time to exit after SIGINT (None: the Children default)

    def tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Children:
    """Child processes in their own sessions (a terminal's Ctrl+C reaches only the demo, which
    then stops them in order). Output goes to ``log_dir/<name>.log`` (or is inherited)."""

    def __init__(self, env: dict, log_dir: str | os.PathLike | None = None):
        self.env = env
        self.log_dir = Path(log_dir) if log_dir else None
        self.items: list[Child] = []
        self.exit_codes: dict[str, int | None] = {}

    def start(self, name: str, cmd: list[str], grace_s: float | None = None) -> Child:
        log = None
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{name}.log"
            out = open(log, "wb")
        try:
            proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT if out else None, start_new_session=True)
        finally:
            if out is not None:
                out.close()  # the child holds its own descriptor
        child = Child(name, cmd, proc, log, grace_s)
        self.items.append(child)
        return child

    def dead(self) -> list[Child]:
        """Children that have exited (for whatever reason)."""
        return [c for c in self.items if c.proc.poll() is not None]

    def stop(self, grace_s: float = 6.0) -> dict[str, int | None]:
        """Stop the children in reverse start order, each with SIGINT, then SIGTERM after
        ``grace_s`` (or the child's own), then SIGKILL 3 s later. Consumers go before producers: a node on sim time
        whose /clock source is already gone may never wake up to notice its SIGINT.
        Returns each child's exit code (negative: killed by that signal)."""
        for c in reversed(self.items):
            grace = grace_s if c.grace_s is None else c.grace_s
            for sig, wait_s in ((signal.SIGINT, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                if c.proc.poll() is not None:
                    break
                try:
                    c.proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    c.proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    pass
        self.exit_codes = {c.name: c.proc.poll() for c in self.items}
        return self.exit_codes

    def kill_all(self) -> dict[str, int | None]:
        for c in self.items:
            if c.proc.poll() is None:
                c.proc.kill()
        for c in self.items:
            try:
                c.proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                pass
        self.exit_codes = {c.name: c.proc.poll() for c in self.items}
        return self.exit_codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.stop()
        except KeyboardInterrupt:
            self.kill_all()
            raise


class Progress:
    """One progress bar line kept at the bottom (a terminal), episode lines printed above it."""

    def __init__(self, total_s: float | None, total_eps: int | None, stream=None):
        self.total_s, self.total_eps = total_s, total_eps
        self.out = stream or sys.stdout
        self.tty = self.out.isatty()
        self._shown = False

    def fraction(self, t: float, eps: int) -> float:
        f = [t / self.total_s] if self.total_s else []
        f += [eps / self.total_eps] if self.total_eps else []
        return min(1.0, max(f)) if f else 0.0

    def bar(self, t: float, eps: int, extra: str) -> str:
        f = self.fraction(t, eps)
        width = 24
        filled = int(round(f * width))
        limit = f"/{_mmss(self.total_s)}" if self.total_s else ""
        return f"[{'#' * filled}{'.' * (width - filled)}] {f * 100:3.0f}% {_mmss(t)}{limit} {extra}"

    def line(self, text: str) -> None:
        if self.tty and self._shown:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()
        self._shown = False

    def show(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
            self._shown = True

    def done(self) -> None:
        if self.tty and self._shown:
            self.out.write("\n")
            self.out.flush()
        self._shown = False


def _mmss(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "--:--"
    t = max(0, int(t))
    return f"{t // 60}:{t % 60:02d}"


def _rate(xs) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


# ============================================================================ summary
def summarize(episodes: list, alpha_all: list, names: list[str], window: int) -> dict:
    """Success early vs late (first vs last quarter of counted episodes, at least 10 each), the
    trend, per policy version, latency, alpha statistics. ``rising``: late - early > 2 standard
    errors, a positive trend, and more than one policy version acted."""
    from wsa_ros.tools.plots import alpha_stats

    eps = [e for e in episodes if e.counted]
    n = len(eps)
    s = np.array([e.success for e in eps], dtype=float)
    q = max(10, n // 4)
    out: dict = {"episodes": n, "episodes_not_counted": len(episodes) - n}
    if n:
        early, late = s[:min(q, n)], s[max(0, n - q):]
        se = math.sqrt(_rate(early) * (1 - _rate(early)) / early.size + _rate(late) * (1 - _rate(late)) / late.size)
        slope = float(np.polyfit(np.arange(n), s, 1)[0] * 100) if n >= 3 else math.nan
        out.update({
            "success_rate": _rate(s), "reached_rate": _rate([e.reached for e in eps]),
            "return_mean": _rate([e.ret for e in eps]),
            "success_early": _rate(early), "success_late": _rate(late), "early_late_episodes": int(early.size),
            "success_change": _rate(late) - _rate(early), "success_change_stderr": se,
            "success_slope_per_100_episodes": slope,
            # a rise counts only when it is two standard errors clear of noise and a new policy
            # acted (the same policy's success wanders by chance)
            "rising": bool(n >= 20 and _rate(late) - _rate(early) > 2.0 * se and slope > 0
                           and len({e.version for e in eps}) > 1),
            "final_window_success": _rate(s[-window:]),
        })
        by_v: dict[str, list[bool]] = {}
        for e in eps:
            by_v.setdefault(e.version, []).append(e.success)
        out["by_policy_version"] = {v: {"episodes": len(x), "success_rate": _rate(x)} for v, x in by_v.items()}
        out["policy_versions"] = list(by_v)
    lat = [e.latency_ms for e in eps if math.isfinite(e.latency_ms)]
    out["inference_ms_median"] = float(np.median(lat)) if lat else math.nan
    if alpha_all:
        out["alpha"] = alpha_stats(np.asarray(alpha_all, dtype=float), names)
    return out


def _fmt(x, spec=".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def summary_markdown(info: dict) -> str:
    from wsa_ros.sim.arm import success_radius

    s = info["summary"]
    n_early = s.get("early_late_episodes")
    lines = [
        f"# wsa demo: {info['bundle_name']} (version {info['bundle_version']})", "",
        f"- run: {_fmt(info['wall_s'] / 60, '.1f')} min wall (with start-up and the offline check), "
        f"{s['episodes']} episodes with the policy in control ({s['episodes_not_counted']} start-up/partial "
        f"episodes not counted), fine-tuning {'on' if info['finetune'] else 'OFF (--no-finetune)'}, "
        f"real-time factor target {info['real_time_factor']:g}",
        f"- bundle: `{info['bundle']}`; encoders (alpha order): {', '.join(info['alpha_names'])}"]
    fr = info.get("fresh_start") or {}
    if fr and fr.get("build_report") is not None:  # --arm: the site workflow
        bag = fr["bag"]
        lines.append(f"- start: the bundle `wsa build-bundle --from-bags` made from a rosbag of {bag['episodes']} "
                     f"scripted-expert episodes of {bag['arm']} (`{bag['path']}`, their success "
                     f"{_fmt(bag['success_rate'])}; build {fr.get('build_s')} s): behaviour cloning on them, then "
                     f"fine-tuned by SAC with the same demonstrations (`wsa import-demos`) in every batch")
    elif fr:
        bag = fr["bag"]
        lines.append(f"- start: **a new, untrained policy head** (version 0) on the frozen encoders of "
                     f"`{info['shipped_bundle']}`; the fine-tuner learned from a demonstration rosbag of "
                     f"{bag['episodes']} scripted-expert episodes with action noise (`{bag['path']}`, their success "
                     f"{_fmt(bag['success_rate'])}, imported with `wsa import-demos`) and its own live transitions "
                     f"(SAC with the demonstrations in every batch and behaviour cloning on them)")
    elif info.get("finetune"):
        lines.append("- start: the bundle's own (behaviour-cloned) policy, fine-tuned by SAC near it")
    if s["episodes"]:
        lines += [
            f"- success (fingertip within {success_radius(info.get('arm') or 'reacher') * 100:g} cm of the target at the "
            f"last step): **{_fmt(s['success_rate'])}** "
            f"overall; first {n_early} episodes **{_fmt(s['success_early'])}** -> last {n_early} "
            f"**{_fmt(s['success_late'])}** (change {_fmt(s['success_change'], '+.2f')} "
            f"+- {_fmt(s['success_change_stderr'])} s.e.; trend {_fmt(s['success_slope_per_100_episodes'], '+.2f')} "
            f"per 100 episodes) -> {'RISING' if s['rising'] else 'not clearly rising'}",
            f"- reached the target at some step: {_fmt(s['reached_rate'])}; mean return {_fmt(s['return_mean'])}",
            "- by policy version: " + ", ".join(f"v{v}: {d['success_rate']:.2f} ({d['episodes']} ep)"
                                                 for v, d in s["by_policy_version"].items()),
        ]
    lines.append(f"- agent inference latency (median of the agent's reports): {_fmt(s['inference_ms_median'])} ms "
                 f"on {info.get('execution_provider') or 'n/a'}")
    for line in offline_lines(info.get("offline_check") or {}, bold=True):
        lines.append(f"- {line}")
    if info.get("agent_reenabled_after_trips"):
        trips = info["agent_reenabled_after_trips"]
        lines.append(f"- the agent's watchdog tripped {len(trips)} time(s) and was re-enabled; "
                     f"first reason: {trips[0]}")
    lr = info.get("learner") or {}
    if lr.get("updates_per_s_mean") is not None:
        lines.append(f"- learner pace during the run: {lr['updates']} updates, {lr['updates_per_s_mean']:.1f} updates/s "
                     f"on average from its first update at {_mmss(lr['first_update_s'])} (median of its reports "
                     f"{lr['updates_per_s_median_reported']:.1f}/s), niced, beside the sim and the agent")
    ft = info.get("finetune_status") or {}
    if ft:
        lines.append(f"- learner (last status): {ft.get('accepted', 0)} transitions accepted, {ft.get('updates', 0)} "
                     f"updates ({ft.get('updates_per_s', 'n/a')}/s), {ft.get('exports', 0)} exports, last pushed "
                     f"version {ft.get('version_pushed') or 'none'}; rejected {ft.get('rejected') or {}}")
    if info.get("sim"):
        lines.append(f"- sim: {info['sim'].get('steps_per_s', 'n/a')} steps/s, real-time factor "
                     f"{info['sim'].get('real_time_factor', 'n/a')} (last report)")
    a = s.get("alpha")
    if a and a.get("samples"):
        lines += ["", "## Which pre-trained model the policy relies on (alpha over all agent steps)", "",
                  "| encoder | mean | std | min | max | most weighted in |", "|---|---|---|---|---|---|"]
        for name, d in a["encoders"].items():
            lines.append(f"| {name} | {d['mean']:.3f} | {d['std']:.3f} | {d['min']:.3f} | {d['max']:.3f} | "
                         f"{d['top_fraction'] * 100:.0f}% of steps |")
        lines += ["", f"Dominant: **{a['dominant']}** (mean {a['dominant_mean']:.2f}); mean entropy "
                      f"{a['entropy_mean']:.3f} nats (uniform {a['entropy_uniform']:.3f}); "
                      f"{'COLLAPSED onto one model' if a['collapsed'] else 'not collapsed'}."]
    be = info.get("build_eval") or {}
    if be:
        lines.append(f"At bundle build time (offline evaluation in the manifest's recipe, {be.get('episodes', '?')} "
                     f"episodes): success {_fmt(be.get('success_final'))} (final step), "
                     f"{_fmt(be.get('success_any'))} (any step); alpha mean {be.get('alpha_mean', 'n/a')} "
                     f"(order {', '.join(info['alpha_names'])}).")
    lines += ["", "## Processes", ""]
    for name, rc in info["exit_codes"].items():
        why = f" -- {info['failure']}" if info.get("failed_child") == name else ""
        lines.append(f"- {name}: exit code {rc}{why}")
    lines += ["", f"Files: {', '.join(info.get('written', []))}, summary.md, logs/ (each process's output).", ""]
    return "\n".join(lines)


def learner_rate(trace) -> dict:
    """The learner's pace over the run from its ~/status samples (seconds, updates, updates/s):
    updates done, the mean rate from the first update on, and the median of its reported rates."""
    tr = [t for t in trace if t[0] >= 0]
    if not tr:
        return {}
    first = next((t for t in tr if t[1] > 0), None)
    last = tr[-1]
    out = {"updates": int(last[1]), "status_samples": len(tr)}
    if first is not None and last[0] > first[0]:
        out["updates_per_s_mean"] = (last[1] - first[1]) / (last[0] - first[0])
        out["updates_per_s_median_reported"] = float(np.median([t[2] for t in tr if t[1] > 0]))
        out["first_update_s"] = float(first[0])
    return out


def offline_lines(oc: dict, bold: bool = False) -> list[str]:
    """The paired offline check in words (the summary and the console)."""
    if not oc.get("start"):
        return []
    b = "**" if bold else ""
    st = oc["start"]
    parts = [f"starting policy v{st['version']} {_fmt(st['success_final'])}"]
    if oc.get("bc"):
        parts.append(f"behaviour cloning on the same demonstrations (v{oc['bc']['version']}) "
                     f"{_fmt(oc['bc']['success_final'])}")
    if oc.get("final"):
        parts.append(f"final policy v{oc['final']['version']} {b}{_fmt(oc['final']['success_final'])}{b}")
    else:
        parts.append(oc.get("final_note") or "no new policy was pushed during the run")
    out = [f"offline check, success on the same {st['episodes']} held-out episodes (synchronous, no load): "
           + "; ".join(parts)]

    def line(head: str, d: dict, fmt: str, tail: str, verdicts: tuple[str, str], bold: str = "") -> str:
        lo, hi = d["ci95"]
        return (f"{head}: {bold}{d['mean']:{fmt}}{bold} (95 % interval {lo:{fmt}} to {hi:{fmt}}; {tail}) -> "
                + verdicts[0 if d["above_zero"] else 1])

    for ref, label in (("bc", "behaviour cloning"), ("start", "the starting policy")):
        d = oc.get(f"final_minus_{ref}")
        if d:
            out.append(line(f"final minus {label}", d, "+.2f", f"{d['wins']} episodes won, {d['losses']} lost",
                            ("better, beyond the interval", "NOT clearly better"), b))
        d = oc.get(f"final_minus_{ref}_return")
        if d:
            out.append(line(f"episode return, final minus {label}", d, "+.3f",
                            f"{oc[ref]['return']:.3f} -> {oc['final']['return']:.3f}",
                            ("higher, beyond the interval", "not clearly higher")))
    return out


# ============================================================================ offline check
def offline_eval(bundle_path, episodes: int, seed: int, image_size: int = 84, max_steps: int = 100,
                 arm: str = "reacher") -> dict:
    """A policy on a fixed set of episodes, synchronously (one action per sim step, no ROS, no
    load; ``sim.rollout.evaluate``): episode i from ``reset(seed=seed + i)`` of the ``arm``'s sim
    (ReacherSim: 0.02 s steps, success within 2 cm; arm7: 0.05 s steps, within 5 cm), so two
    policies meet the very same targets and starting poses. Success is judged at the last step."""
    from wsa_ros.runtime.engine import Engine
    from wsa_ros.sim.arm import sim_class
    from wsa_ros.sim.rollout import engine_policy, evaluate

    Sim = sim_class(arm)
    eng = Engine(bundle_path, providers=("cpu",), threads=1)
    with Sim(seed=seed, image_size=image_size, max_steps=max_steps) as sim:
        ev = evaluate(sim, engine_policy(eng), episodes, seed)
    sm = ev.summary()
    return {"version": eng.version, "episodes": episodes, "seed": seed, "success_final": sm["success_final"],
            "success_any": sm["success_any"], "final_distance_m": sm["final_distance_m"], "return": sm["return"],
            "per_episode_success": [int(e.success) for e in ev.episodes],
            "per_episode_return": [float(e.ret) for e in ev.episodes],
            "per_episode_final_distance_m": [float(e.final_distance) for e in ev.episodes]}


def paired_difference(a: list, b: list) -> dict:
    """mean(a - b) over the same episodes and its 95 % interval (normal approximation of the
    per-episode differences; each episode is one pair)."""
    if len(a) == 0 or len(a) != len(b):
        raise ValueError(f"a paired difference needs the same episodes on both sides, got {len(a)} and {len(b)}")
    d = np.asarray(a, float) - np.asarray(b, float)
    hw = 1.96 * float(d.std(ddof=1)) / math.sqrt(d.size) if d.size > 1 else math.nan
    m = float(d.mean())
    return {"mean": m, "ci95": [m - hw, m + hw], "episodes": int(d.size),
            "above_zero": bool(m - hw > 0), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def offline_check(start_bundle, bc_bundle, final_bundle, episodes: int, image_size: int, steps: int,
                  say=print, arm: str = "reacher") -> dict:
    """The paired check: the starting policy, behaviour cloning on the same demonstrations (when
    given; the start itself where the start is the behaviour-cloned bundle, as in ``--arm``'s
    site workflow) and the final policy on the same ``episodes`` held-out episodes (seed
    10000+), with the per-episode differences final - bc and final - start and their 95 %
    intervals: of success (``final_minus_<ref>``) and of the episode's return
    (``final_minus_<ref>_return``: what the learner maximises, and what still shows a change where
    both policies succeed on every episode)."""
    say(f"wsa demo: offline check on {episodes} held-out episodes (seed 10000+) ...", flush=True)
    out: dict = {"start": offline_eval(start_bundle, episodes, 10_000, image_size, steps, arm)}
    if bc_bundle:
        same = Path(bc_bundle).resolve() == Path(start_bundle).resolve()
        out["bc"] = dict(out["start"]) if same else offline_eval(bc_bundle, episodes, 10_000, image_size, steps, arm)
        out["bc"]["bundle"] = str(bc_bundle)
    if final_bundle and Path(final_bundle).resolve() != Path(start_bundle).resolve():
        out["final"] = offline_eval(final_bundle, episodes, 10_000, image_size, steps, arm)
        out["final"]["bundle"] = str(final_bundle)
        for ref in ("bc", "start"):
            if ref in out:
                out[f"final_minus_{ref}"] = paired_difference(out["final"]["per_episode_success"],
                                                              out[ref]["per_episode_success"])
                if "per_episode_return" in out[ref]:
                    out[f"final_minus_{ref}_return"] = paired_difference(out["final"]["per_episode_return"],
                                                                         out[ref]["per_episode_return"])
    return out


# ============================================================================ the command
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="wsa demo",
        description="Simulated arm + agent + fine-tuner as separate ROS 2 processes on localhost; live "
                    "per-episode lines, then a success-rate plot, an alpha plot and a summary.")
    ap.add_argument("--minutes", type=float, default=None,
                    help=f"live run time (default {DEFAULT_MINUTES:g} unless --episodes; with the start-up, the "
                         "fresh start's bag, import and behaviour cloning and the offline check, under 15 min)")
    ap.add_argument("--episodes", type=int, default=None, help="stop after this many agent episodes")
    ap.add_argument("--bundle", default="", help="bundle folder (default: the shipped models/default)")
    ap.add_argument("--out", default="out/demo", help="output folder [%(default)s]")
    ap.add_argument("--no-finetune", action="store_true", help="run the sim and the agent only")
    ap.add_argument("--start", choices=("fresh", "shipped"), default=None,
                    help="fresh: the agent starts on a new, untrained policy head over the bundle's encoders and "
                         "the fine-tuner teaches it from a demonstration rosbag (recorded from the sim's scripted "
                         "expert first) plus its own live experience; shipped: fine-tune the bundle's own "
                         "policy [fresh; shipped with --no-finetune]")
    ap.add_argument("--arm", choices=tuple(ARM_EPISODE_STEPS), default="reacher",
                    help="the simulated arm: reacher (2 joints, velocity commands, one camera) or arm7 (7 joints, "
                         "JointTrajectory positions, scene and wrist cameras; config/robots/arm7.yaml). With arm7 "
                         "a fresh start is the site workflow: expert bag -> wsa build-bundle --from-bags -> "
                         "wsa import-demos -> agent + fine-tuner [%(default)s]")
    ap.add_argument("--build-args", default="", metavar="ARGS",
                    help="--arm other than reacher: extra arguments for its `wsa build-bundle --from-bags`, one "
                         "string (e.g. \"--kp-steps 1000 --onnx-encoder dino=dino.onnx@wrist\")")
    ap.add_argument("--demo-episodes", type=int, default=DEMO_BAG_EPISODES,
                    help="expert episodes in the demonstration bag of a fresh start [%(default)s]")
    ap.add_argument("--seed", type=int, default=0, help="sim and learner seed")
    ap.add_argument("--keep-replay", action="store_true",
                    help="keep the learner's replay store (out/replay: the embeddings of every step, about "
                         "about 1.4 KB each with the default bundle, 40 MB after 11 minutes); removed at the end otherwise")
    ap.add_argument("--real-time-factor", type=float, default=1.0,
                    help="sim seconds per wall second; the graph runs on the sim's /clock [%(default)s]")
    ap.add_argument("--domain-id", type=int, default=None,
                    help="ROS_DOMAIN_ID for the demo's processes (default: a private one from 215-232)")
    ap.add_argument("--window", type=int, default=20, help="episodes in the moving success rate [%(default)s]")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="extra ROS parameter for a child, e.g. finetune.learner.utd=2 or agent.providers=[cpu] "
                         "(NODE: sim, agent, finetune; VALUE parsed as YAML)")
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the first action")
    ap.add_argument("--eval-episodes", type=int, default=50,
                    help="at the end, run the starting policy, behaviour cloning on the same demonstrations "
                         "(fresh start) and the final policy offline on the same N held-out episodes (a paired "
                         "check of what fine-tuning changed; 0 = skip) [%(default)s]")
    ap.add_argument("--bc-steps", type=int, default=DEMO_BC_STEPS,
                    help="fresh start: behaviour-cloning steps of the baseline (the start head trained on the "
                         "demonstrations alone, `wsa import-demos --bc-steps`) [%(default)s]")
    return ap


def signed_push(out: Path, bundle_path) -> tuple[Path, dict, dict]:
    """The demo runs policies the way a fleet does: the learner signs each export with the demo's
    own key (``out/keys``, made once, the private key mode 0600) and publishes the bundle on
    ``~/policy``; the agent takes bundles from that topic into its own cache and trusts that key
    alone (``allow_unsigned: false``). The start bundle is a signed copy (``out/start_signed``;
    the given folder is left as it is). Returns (start bundle, agent params, fine-tuner params)."""
    from wsa_ros.runtime.signing import generate_keypair, sign_bundle

    keys = out / "keys"
    priv, pub = keys / "learner.key", keys / "learner.pub"
    if not (priv.is_file() and pub.is_file()):  # a half-made pair (an interrupted run) is made again
        keys.mkdir(parents=True, exist_ok=True)
        for f in (priv, pub):
            f.unlink(missing_ok=True)
        generate_keypair(priv, pub)
    shutil.rmtree(out / "agent_cache", ignore_errors=True)  # the agent's cache is per run, like the store
    start = out / "start_signed"
    tmp = out / "start_signed.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle_path, tmp, ignore=shutil.ignore_patterns("manifest.sig"))
    sign_bundle(tmp, priv)
    shutil.rmtree(start, ignore_errors=True)
    os.replace(tmp, start)
    agent = {"trusted_keys": [str(pub.resolve())], "allow_unsigned": False, "policy_topic": "/finetune_node/policy",
             "policy_cache_dir": str((out / "agent_cache").resolve())}
    return start.resolve(), agent, {"signing_key": str(priv.resolve()), "push_via": "topic"}


#: --param NODE.NAME: NODE -> the node's name (its parameter schema: wsa_ros.config.NODE_CONFIGS)
PARAM_NODES = {"sim": "sim_arm_node", "agent": "agent_node", "finetune": "finetune_node"}


def _parse_params(items: list[str]) -> dict[str, dict]:
    """``--param NODE.NAME=VALUE`` items -> {NODE: {NAME: value}}, each value checked by the
    node's schema (ConfigError names the parameter)."""
    from wsa_ros.config import NODE_CONFIGS, from_dict

    out: dict[str, dict] = {k: {} for k in PARAM_NODES}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not sep or not dot or node not in out or not name:
            raise ValueError(f"--param '{item}' is not NODE.NAME=VALUE with NODE one of {sorted(out)}")
        out[node][name] = yaml.safe_load(value)
    for node, values in out.items():
        from_dict(NODE_CONFIGS[PARAM_NODES[node]], values, where=f"--param {node}.*")
    return out


def _build_eval(bundle) -> dict:
    """The bundle's own offline evaluation (``recipe.eval.policy`` from `wsa build-bundle`), if any."""
    ev = bundle.recipe.get("eval") if isinstance(bundle.recipe, dict) else None
    if not isinstance(ev, dict) or not isinstance(ev.get("policy"), dict):
        return {}
    return {**ev["policy"], "episodes": ev.get("episodes")}


#: the demonstration bag of a fresh start: expert episodes (a new target each), action noise in rad/s
DEMO_BAG_EPISODES, DEMO_BAG_NOISE, DEMO_BAG_SEED = 20, 0.6, 5000
#: behaviour-cloning steps of the fresh start's baseline (batch 256; its held-out success stops rising by then)
DEMO_BC_STEPS = 2000


def prepare_fresh_start(bundle, out: Path, seed: int, episodes: int, steps: int, image_size: int,
                        bc_steps: int = 0, say=print) -> dict:
    """What a fresh start needs, made from scratch in ``out``: ``start/``, the shipped encoders
    with a new, untrained policy head (adapters, scorer, actor, critic from ``seed``), version 0;
    a rosbag of the simulated arm driven by its scripted expert (``demonstrations/expert_bag``,
    as ``ros2 bag record`` would capture it); that bag imported by ``wsa import-demos`` into a
    demonstration store (``demonstrations/store``) and, with ``bc_steps``, the baseline to beat:
    the same start head behaviour-cloned on those demonstrations alone (``bc/``, by the same
    command's ``--bc-steps``)."""
    import torch

    from wsa_ros.learn.demos import main as import_demos
    from wsa_ros.learn.validate import export_policy
    from wsa_ros.model.wsa import FusionPolicy
    from wsa_ros.sim.expert_bag import record_expert_bag

    demo_dir = out / "demonstrations"
    for d in (demo_dir, out / "bc"):
        shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(seed)
    policy = FusionPolicy.from_config(bundle.head).eval()
    start = export_policy(policy, bundle, out / "start", "0",
                          recipe={"command": "wsa demo --start fresh", "seed": seed,
                                  "note": f"untrained policy head on the encoders of {bundle.name}:{bundle.version}"})
    t0 = time.monotonic()
    rec = record_expert_bag(demo_dir / "expert_bag", episodes, steps, DEMO_BAG_SEED + seed, image_size,
                            noise=DEMO_BAG_NOISE, episode_topics=True)
    say(f"recorded {rec['episodes']} expert episodes ({rec['steps']} steps, success {rec['success_rate']:.2f}) "
        f"into the rosbag {rec['path']} ({time.monotonic() - t0:.0f} s)")
    argv = [rec["path"], "--out", str(demo_dir / "store"), "--bundle", str(start.root), "--seed", str(seed)]
    if bc_steps:
        argv += ["--bc-steps", str(bc_steps), "--bc-out", str(out / "bc")]
    t0 = time.monotonic()
    rc = import_demos(argv)
    if rc != 0:
        raise RuntimeError(f"wsa import-demos {' '.join(argv)} failed (exit code {rc})")
    say(f"imported the demonstrations{' and behaviour-cloned the start head on them' if bc_steps else ''} "
        f"({time.monotonic() - t0:.0f} s)")
    return {"bag": rec, "store": str(demo_dir / "store"), "start_bundle": str(start.root),
            **({"bc_bundle": str(out / "bc"), "bc_steps": int(bc_steps)} if bc_steps else {})}


#: --arm: the simulated arms, each with config/robots/<arm>.yaml; episode length in steps (bag, live, offline)
ARM_EPISODE_STEPS = {"reacher": 100, "arm7": 60}


def prepare_site_start(arm: str, robot_file: Path, out: Path, seed: int, episodes: int, steps: int, image_size: int,
                       build_args: list[str] = (), say=print) -> dict:
    """The method's first steps on a new arm, by the public commands: record ``episodes`` expert
    episodes of the simulated ``arm`` into a rosbag (``demonstrations/expert_bag``, the topics a
    ros2_control arm with camera drivers publishes), ``wsa build-bundle --from-bags ... --robot``
    (health report, per-camera encoders pre-trained on the bag's frames, behaviour cloning with
    held-out episodes; ``bundle/``), and ``wsa import-demos`` of the same bag into the
    fine-tuner's demonstration store (``demonstrations/store``) with that bundle's encoders.
    The built, behaviour-cloned bundle is both the starting policy and the baseline to beat;
    ``build_args`` go to ``wsa build-bundle`` after the demo's own (budgets, ONNX backbones)."""
    from wsa_ros.config import load_robot
    from wsa_ros.learn.demos import main as import_demos
    from wsa_ros.model.build_default import main as build_bundle
    from wsa_ros.sim.expert_bag import record_expert_bag

    robot = load_robot(robot_file)
    demo_dir, bundle_dir = out / "demonstrations", out / "bundle"
    for d in (demo_dir, bundle_dir):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.monotonic()
    rec = record_expert_bag(demo_dir / "expert_bag", episodes, steps, DEMO_BAG_SEED + seed, image_size,
                            episode_topics=True, arm=arm)
    say(f"recorded {rec['episodes']} expert episodes of {arm} ({rec['steps']} steps, success "
        f"{rec['success_rate']:.2f}) into the rosbag {rec['path']} ({time.monotonic() - t0:.0f} s)")
    argv = ["--from-bags", rec["path"], "--robot", str(robot_file), "--out", str(bundle_dir), "--seed", str(seed),
            "--name", arm, *build_args]
    say(f"wsa build-bundle {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    rc = build_bundle(argv)
    if rc != 0:
        raise RuntimeError(f"wsa build-bundle {' '.join(argv)} failed (exit code {rc})")
    build_s = time.monotonic() - t0
    argv = [rec["path"], "--out", str(demo_dir / "store"), "--bundle", str(bundle_dir), "--seed", str(seed),
            "--camera-topics", *robot.camera_topics, "--joint-states-topic", robot.joint_states_topic,
            "--command-topic", robot.command_topic]
    say(f"wsa import-demos {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    rc = import_demos(argv)
    if rc != 0:
        raise RuntimeError(f"wsa import-demos {' '.join(argv)} failed (exit code {rc})")
    report = json.loads((bundle_dir / "report.json").read_text(encoding="utf-8"))
    return {"bag": rec, "store": str(demo_dir / "store"), "start_bundle": str(bundle_dir),
            "bc_bundle": str(bundle_dir), "build_s": round(build_s, 1), "import_s": round(time.monotonic() - t0, 1),
            "build_report": report}


def _config_file(name: str) -> Path | None:
    from wsa_ros.config import package_share

    p = package_share() / "config" / name
    return p if p.is_file() else None


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.minutes is None and args.episodes is None:
        args.minutes = DEFAULT_MINUTES
    if (args.minutes is not None and args.minutes <= 0) or (args.episodes is not None and args.episodes <= 0):
        ap.error("--minutes and --episodes must be > 0")
    if not 0.01 <= args.real_time_factor <= 100:
        ap.error("--real-time-factor must be within [0.01, 100]")
    if args.start is None:
        args.start = "shipped" if args.no_finetune else "fresh"
    if args.start == "fresh" and args.no_finetune:
        ap.error("--start fresh needs the fine-tuner (an untrained policy with nothing to teach it)")
    if args.demo_episodes < 1:
        ap.error("--demo-episodes must be >= 1")
    if args.bc_steps < 0 or args.eval_episodes < 0:
        ap.error("--bc-steps and --eval-episodes must be >= 0")
    try:
        extra = _parse_params(args.param)
    except (ValueError, yaml.YAMLError) as exc:  # ConfigError is a ValueError
        ap.error(str(exc))
    from wsa_ros.runtime.bundle import BundleError, load_bundle
    from wsa_ros.config import ConfigError, load_robot, resolve_bundle, robot_agent_params

    site = args.arm != "reacher"  # another arm: its robot file, its sim, the site workflow
    robot_file = _config_file(f"robots/{args.arm}.yaml") if site else None
    robot = load_robot(robot_file) if site else None
    if site and args.start == "shipped" and not args.bundle:
        ap.error(f"--arm {args.arm} --start shipped needs --bundle: a bundle for that arm (the shipped default is "
                 "the Reacher's); without it the demo builds one from a recorded bag (--start fresh)")
    finetune = not args.no_finetune
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id if args.domain_id is not None else 215 + os.getpid() % 18
    total_s = args.minutes * 60 if args.minutes else None
    image_size = int(extra["sim"].get("image_size", 84))
    steps = int(extra["sim"].get("max_episode_steps", ARM_EPISODE_STEPS[args.arm]))
    fresh: dict = {}
    if site and args.start == "fresh":
        print(f"wsa demo: {args.arm}: the site workflow: {args.demo_episodes} expert episodes recorded into a rosbag, "
              f"`wsa build-bundle --from-bags` for {robot_file.name}, `wsa import-demos` ...", flush=True)
        try:
            fresh = prepare_site_start(args.arm, robot_file, out, args.seed, args.demo_episodes, steps, image_size,
                                       shlex.split(args.build_args))
        except Exception as exc:  # noqa: BLE001 - say what failed, run nothing
            print(f"wsa demo: error: preparing the {args.arm} start failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        args.bundle = fresh["start_bundle"]
    bundle_path = resolve_bundle(args.bundle)
    try:
        bundle = load_bundle(bundle_path)
    except BundleError as exc:
        hint = " (build it with `wsa build-bundle`)" if not args.bundle else ""
        print(f"wsa demo: error: bundle {bundle_path}: {exc}{hint}", file=sys.stderr)
        return EXIT_USAGE
    names = [e.name for e in bundle.feature_encoders]
    shipped_path = bundle_path
    if args.start == "fresh" and not site:
        if not bundle.head or not bundle.weights:
            print(f"wsa demo: error: bundle {bundle_path} has no trainable head to start afresh from; "
                  "use --start shipped", file=sys.stderr)
            return EXIT_USAGE
        print(f"wsa demo: fresh start: a demonstration bag, its import and an untrained policy head on the "
              f"encoders of '{bundle.name}' v{bundle.version} ...", flush=True)
        try:
            fresh = prepare_fresh_start(bundle, out, args.seed, args.demo_episodes, steps, image_size,
                                        args.bc_steps if args.eval_episodes > 0 else 0)
        except Exception as exc:  # noqa: BLE001 - say what failed, run nothing
            print(f"wsa demo: error: preparing the fresh start failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        bundle_path = Path(fresh["start_bundle"])
        bundle = load_bundle(bundle_path)

    arm_p: dict = {"sim": {}, "agent": {}, "finetune": {}}  # what the robot file decides
    if finetune:  # the fleet's route: signed policies over ROS, the agent trusting the demo's own key only
        try:
            bundle_path, arm_p["agent"], arm_p["finetune"] = signed_push(out, bundle_path)
        except Exception as exc:  # noqa: BLE001 - say what failed, run nothing
            print(f"wsa demo: error: signing the start bundle failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if site:
        arm_p["agent"].update(robot_agent_params(robot))
        arm_p["sim"] = {"camera_topics": list(robot.camera_topics), "joint_states_topic": robot.joint_states_topic,
                        "command_topic": robot.command_topic,
                        "command_type": "joint_trajectory" if robot.command_interface == "joint_trajectory"
                        else "float64_array"}
        arm_p["finetune"].update(camera_topics=list(robot.camera_topics), joint_states_topic=robot.joint_states_topic)
    sim_p = {"seed": args.seed, "publish_clock": True, "real_time_factor": args.real_time_factor,
             "max_episode_steps": steps, **arm_p["sim"], **extra["sim"]}
    # the agent acts on every frame, on the sim's clock; a loaded 2-core machine delays messages, so the
    # observation-age watchdog is looser than on a robot (a trip is re-armed by the monitor, and counted)
    agent_p = {"bundle": str(bundle_path), "start_enabled": True, "trigger": "camera", "blend_in_s": 0.0,
               "max_obs_age_s": 1.0, "use_sim_time": True, **arm_p["agent"],
               **({} if finetune else {"exploration_std": 0.0, "exploration_sample": False}), **extra["agent"]}
    ft_p = {"bundle": str(bundle_path), "store_dir": str((out / "replay").resolve()),
            "out_dir": str((out / "bundles").resolve()), "learner.seed": args.seed, "use_sim_time": True,
            **({"demo_dir": str(Path(fresh["store"]).resolve())} if fresh else {}), **arm_p["finetune"],
            **extra["finetune"]}
    demo_cfg = _config_file(f"demo_{args.arm}.yaml" if site else f"demo_{args.start}.yaml")
    logs = out / "logs"  # each node's one parameter file (files + values merged) goes beside its log
    logs.mkdir(parents=True, exist_ok=True)
    sources = {"sim_arm_node": ([_config_file(f"sim_{args.arm}.yaml" if site else "sim.yaml")], sim_p),
               "agent_node": ([_config_file("agent.yaml"), demo_cfg], agent_p)}
    if finetune:  # a fresh store and learner per run (the learner would resume from its checkpoint)
        shutil.rmtree(out / "replay", ignore_errors=True)
        shutil.rmtree(out / "bundles", ignore_errors=True)
        sources["finetune_node"] = ([_config_file("finetune.yaml"), demo_cfg], ft_p)
    try:
        commands = {n: node_command(n, values, files, params_path=logs / f"{n}.params.yaml")
                    for n, (files, values) in sources.items()}
    except ConfigError as exc:
        print(f"wsa demo: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if finetune:  # on one small machine the real-time loop (sim + agent) goes first, the learner takes what is left
        commands["finetune_node"] = niced(commands["finetune_node"])
    parameters = {n: {"files": [str(f) for f in files if f], "merged": str(logs / f"{n}.params.yaml")}
                  for n, (files, _v) in sources.items()}

    from wsa_ros.ros.monitor import MIN_ACTIONS, Monitor, RosSession  # rclpy stays in ros/

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, _terminate)
    children = Children(ros_env(domain), out / "logs")
    session = None
    episodes: list = []
    first_alpha = last_alpha = None
    alpha_all: list = []
    code, failure, failed_child = EXIT_OK, "", None
    prog = Progress(total_s, args.episodes)
    print(f"wsa demo: bundle '{bundle.name}' v{bundle.version} ({bundle.fusion}, encoders {', '.join(names)}), "
          f"fine-tuning {'on' if finetune else 'off'}, ROS_DOMAIN_ID {domain}, output {out}/")
    t_start = time.monotonic()
    try:
        session = RosSession("wsa_demo_monitor", domain)
        mon = Monitor(session, names)
        for name, cmd in commands.items():  # the learner saves a checkpoint and flushes its store on exit
            children.start(name, cmd, grace_s=LEARNER_GRACE_S if name == "finetune_node" else None)
        prog.line(f"started {', '.join(commands)} (logs in {out / 'logs'}); waiting for the agent's first action ...")
        session.spin_until(lambda: mon.first_action_wall is not None, args.startup_timeout,
                           "the agent's first action", children)
        prog.line(f"agent acting after {mon.now():.1f} s; an episode counts when the arm was commanded in >= 90% "
                  f"of its steps and the policy acted >= {MIN_ACTIONS:g} times per step")
        t_run = time.monotonic()
        mon.t0 = t_run  # episode times count from the agent's first action, like the progress bar
        mon.learner_trace.clear()
        last_bar = 0.0
        last_version = None
        while True:
            session.executor.spin_once(timeout_sec=0.05)
            dead = children.dead()
            if dead:
                c = dead[0]
                failed_child, code = c.name, EXIT_FAILED
                failure = f"{c.name} exited unexpectedly with code {c.proc.returncode}"
                prog.line(f"wsa demo: error: {failure}; last lines of {c.log_path}:\n{c.tail()}")
                break
            why = mon.rearm_if_tripped()
            if why:
                prog.line(f"agent watchdog tripped ({why}); re-enabling it (~/enable)")
            for ep, alpha in mon.finished():
                episodes.append(ep)
                if ep.counted and alpha:
                    a = np.asarray(alpha, dtype=float)
                    if a.ndim == 2 and a.shape[1] == len(names):
                        alpha_all.extend(alpha)
                        if first_alpha is None:
                            first_alpha = (ep, a)
                        last_alpha = (ep, a)
                counted = [e for e in episodes if e.counted]
                if ep.counted and last_version is not None and ep.version != last_version:
                    prog.line(f"policy updated: v{last_version} -> v{ep.version}")
                if ep.counted:
                    last_version = ep.version
                rate = _rate([e.success for e in counted[-args.window:]])
                if not ep.counted:
                    prog.line(f"(sim episode {ep.index} not counted: the arm had a live command in "
                              f"{ep.commanded_steps}/{ep.steps} steps, the policy acted {ep.actions} times)")
                    continue
                prog.line(f"ep {len(counted):4d} [{_mmss(ep.wall_s)}] return {ep.ret:8.2f}  success "
                          f"{'yes' if ep.success else 'no '}  reached {'yes' if ep.reached else 'no '}  policy "
                          f"v{ep.version}  latency {_fmt(ep.latency_ms, '.1f')} ms  | success rate(last "
                          f"{args.window}) {_fmt(rate)}")
            n_counted = sum(e.counted for e in episodes)
            elapsed = time.monotonic() - t_run
            if time.monotonic() - last_bar > 0.5:
                last_bar = time.monotonic()
                counted = [e for e in episodes if e.counted]
                ft = f" | {mon.learner_line()}" if mon.finetune_status else ""
                prog.show(prog.bar(elapsed, n_counted, f"{n_counted} ep | success(last {args.window}) "
                                   f"{_fmt(_rate([e.success for e in counted[-args.window:]]))}"
                                   f" | v{last_version or bundle.version}{ft}"))
            if (total_s and elapsed >= total_s) or (args.episodes and n_counted >= args.episodes):
                break
    except KeyboardInterrupt:
        prog.line("wsa demo: interrupted; stopping the processes ...")
        code = EXIT_INTERRUPTED
    except AssertionError as exc:  # startup wait failed (names the child / what was awaited)
        prog.line(f"wsa demo: error: {exc}")
        code, failure = EXIT_FAILED, str(exc).splitlines()[0]
        dead = children.dead()
        failed_child = dead[0].name if dead else None
    finally:
        prog.done()
        try:
            exit_codes = children.stop()
        except KeyboardInterrupt:  # a second Ctrl+C: no more patience
            exit_codes = children.kill_all()
            code = EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGTERM, old_term)
        if session is not None:
            try:
                for ep, _alpha in mon.flush():
                    episodes.append(ep)
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
            session.close()

    # ------------------------------------------------------------------ offline paired check
    final_bundle = (mon.agent_diag.get("bundle") if session else "") or str(bundle_path)
    gate = (mon.finetune_status.get("gate") if session else None) or {}
    if gate.get("champion_path"):  # the learner's policy gate: the best version judged live, not a candidate on trial
        final_bundle = gate["champion_path"]
    offline = {}
    if args.eval_episodes > 0 and code != EXIT_INTERRUPTED:
        try:
            offline = offline_check(bundle_path, fresh.get("bc_bundle"), final_bundle, args.eval_episodes,
                                    image_size, steps, arm=args.arm)
        except Exception as exc:  # noqa: BLE001 - the run's record is still written
            print(f"wsa demo: warning: offline check failed: {exc}", file=sys.stderr)
        if offline and "final" not in offline and gate.get("champion"):
            tried = {v: d for v, d in gate.get("versions", {}).items() if v != gate["champion"]}
            offline["final_note"] = (
                f"final policy = the starting one: the learner's policy gate kept v{gate['champion']} "
                f"(live success {gate['versions'][gate['champion']]['success_rate']}) over the {len(tried)} "
                "fine-tuned version(s) it tried (" + ", ".join(f"v{v} {d['success_rate']}" for v, d in tried.items())
                + ")") if tried else ""

    # ------------------------------------------------------------------ outputs
    from wsa_ros.tools.plots import alpha_episode_plot, success_rate_plot

    wall = time.monotonic() - t_start
    counted = [e for e in episodes if e.counted]
    summary = summarize(episodes, alpha_all, names, args.window)
    info = {"bundle": str(bundle_path), "bundle_name": bundle.name, "bundle_version": bundle.version,
            "alpha_names": names, "finetune": finetune, "real_time_factor": args.real_time_factor,
            "start": args.start, "arm": args.arm, "robot": str(robot_file) if robot_file else None,
            "shipped_bundle": str(shipped_path), "fresh_start": fresh,
            "domain_id": domain, "wall_s": wall, "exit_codes": exit_codes, "failed_child": failed_child,
            "failure": failure, "execution_provider": mon.agent_diag.get("execution_provider") if session else None,
            "sim": mon.sim_diag if session else {}, "finetune_status": mon.finetune_status if session else {},
            "build_eval": _build_eval(bundle), "agent_reenabled_after_trips": mon.reenables if session else [],
            "commands": {k: " ".join(v) for k, v in commands.items()}, "parameters": parameters,
            "summary": summary, "offline_check": offline,
            "learner": learner_rate(mon.learner_trace if session else [])}
    with open(out / "episodes.csv", "w", encoding="utf-8") as f:
        f.write("episode,sim_episode,wall_s,counted,return,success,reached,final_distance,steps,commanded_steps,"
                "actions,policy_versions,latency_ms,learner_updates\n")
        k = 0
        for e in episodes:
            k += e.counted
            f.write(f"{k if e.counted else ''},{e.index},{e.wall_s:.2f},{int(e.counted)},{e.ret:.4f},{int(e.success)},"
                    f"{int(e.reached)},{e.final_distance:.4f},{e.steps},{e.commanded_steps},{e.actions},"
                    f"{'|'.join(e.versions)},{e.latency_ms:.3f},{e.updates}\n")
    written = ["episodes.csv"]
    replay_dir = out / "replay"
    if finetune and not args.keep_replay and replay_dir.is_dir():
        nbytes = sum(f.stat().st_size for f in replay_dir.rglob("*") if f.is_file())
        shutil.rmtree(replay_dir, ignore_errors=True)
        info["replay_removed_bytes"] = nbytes
        print(f"wsa demo: removed the learner's replay store {replay_dir} ({nbytes / 1e9:.2f} GB; --keep-replay "
              "keeps it)")
    if counted:
        ref = {f"offline {k}": offline[k]["success_final"] for k in ("bc", "final") if offline.get(k)}
        success_rate_plot(out / "success_rate.png", [e.success for e in counted], [e.ret for e in counted],
                          minutes=[e.wall_s / 60 for e in counted], versions=[e.version for e in counted],
                          window=args.window, title=f"wsa demo: {bundle.name}"
                          + ("" if finetune else " (no fine-tuning)"),
                          updates=[e.updates for e in counted] if finetune else None,
                          learner=[t for t in (mon.learner_trace if session else []) if t[0] >= 0] or None,
                          reference=ref)
        written.append("success_rate.png")
    if first_alpha is not None:
        panels = [(f"first agent episode (sim episode {first_alpha[0].index}, policy v{first_alpha[0].version}, "
                   f"success {first_alpha[0].success})", first_alpha[1])]
        if last_alpha is not None and last_alpha[0] is not first_alpha[0]:
            panels.append((f"last episode (sim episode {last_alpha[0].index}, policy v{last_alpha[0].version}, "
                           f"success {last_alpha[0].success})", last_alpha[1]))
        alpha_episode_plot(out / "alpha_episode.png", panels, names)
        written.append("alpha_episode.png")
    written.append("summary.json")
    info["written"] = written
    (out / "summary.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(info), encoding="utf-8")
    written.append("summary.md")
    s = summary
    if s["episodes"]:
        print(f"wsa demo: {s['episodes']} episodes in {wall / 60:.1f} min; success {_fmt(s['success_early'])} (first "
              f"{s['early_late_episodes']}) -> {_fmt(s['success_late'])} (last {s['early_late_episodes']}), "
              f"{'rising' if s['rising'] else 'not clearly rising'}; policy versions {', '.join(s['policy_versions'])}")
    else:
        print("wsa demo: no episode with the agent in control was completed", file=sys.stderr)
        code = code or EXIT_FAILED
    for line in offline_lines(offline):
        print(f"wsa demo: {line}")
    if s.get("alpha", {}).get("samples"):
        a = s["alpha"]
        print("wsa demo: alpha mean " + ", ".join(f"{n} {d['mean']:.2f}" for n, d in a["encoders"].items())
              + f" -> relies most on {a['dominant']}" + (" (collapsed)" if a["collapsed"] else ""))
    print(f"wsa demo: wrote {', '.join(written)} to {out}/; children exit codes {exit_codes}")
    return code


if __name__ == "__main__":
    sys.exit(main())
