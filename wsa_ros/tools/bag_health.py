"""``wsa bag-health BAG... --robot ROBOT.yaml``: is a recording fit to learn from? (ROS-free)

    wsa bag-health BAG [BAG ...] --robot config/robots/reacher.yaml [--json OUT]
        [--max-gap-periods 3] [--max-skew-s 0.5] [--rate-tolerance 0.1]

Checks rosbag2 recordings (MCAP or sqlite3, read with :mod:`wsa_ros.runtime.bags`) against the
robot description (:class:`wsa_ros.config.RobotConfig`) before anything is built from them:

* every declared topic (cameras, joint states, commands; optional: reward, success, episode end):
  present (else ERROR, naming what the bag holds), of the declared message type (else ERROR),
  its message count, its measured rate from header stamps *and* from the recording's receive
  times against the declared rate (WARN beyond ``--rate-tolerance``; a driver that stamps at
  its nominal rate shows as stamps at the declared rate but arrivals at another);
* gaps longer than ``--max-gap-periods`` declared periods (count, longest, where); header stamps
  out of order, repeated, zero; clock skew = header stamp - recording time (median, worst;
  WARN beyond ``--max-skew-s``: a driver stamping with another clock); a camera whose median
  skew differs from the joint states' by more than ``--max-skew-s`` is an ERROR (pairing by
  stamp would join frames with joint states taken that far apart);
* pairing: the agent's observation rule (:class:`wsa_ros.runtime.observation.Synchronizer`, the
  agent config's ``sync`` / ``sync_timeout_s``) run over the bag's frames and joint states, with
  the learner's tolerances (:class:`wsa_ros.learn.transitions.AssemblerConfig`
  ``joint_tolerance_s`` / ``camera_skew_s``): frames it cannot pair are counted (WARN; ERROR
  beyond 10 % of the frames);
* joints, read by the one joint-name rule (:class:`~wsa_ros.runtime.observation.JointReader`):
  joints of the robot file missing from the joint states (ERROR), range covered per joint
  against the position limits (WARN outside them);
* commands: count, rate, joint names against the robot file (ERROR), values per
  ``command_units`` (a velocity-only JointTrajectory for a position robot: ERROR), values
  outside the action bounds (WARN);
* episodes, from the episode-end messages (else one per bag, said so): how each ended
  (terminated / truncated / bag end), its length, its success when the success topic is there.

Image pixels are never decoded (only the message's header is read). :func:`check_recordings`
is the analysis (``wsa build-bundle --from-bags`` calls it); the CLI prints its report as a
table and writes it as JSON with ``--json``.

Exit codes: 0 verdict OK or WARN; 1 ERROR; 2 bad arguments (a bag path that does not exist, an
unreadable robot file).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsa_ros.runtime.stamps import stamp_ns

RATE_TOLERANCE = 0.10  # measured vs declared rate, relative
MAX_UNPAIRED_FRACTION = 0.10  # frames the observation rule cannot pair: WARN below, ERROR above
MAX_TIMEOUT_FRACTION = 0.10  # frames that wait out the agent's sync timeout: WARN above
LOCATIONS = 5  # gaps / unpaired frames listed by position in the bag
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
COMMAND_TYPES = {"joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                 "forward_command": "std_msgs/msg/Float64MultiArray", "twist": "geometry_msgs/msg/Twist"}
END_TYPE, SUCCESS_TYPE, REWARD_TYPE = "std_msgs/msg/String", "std_msgs/msg/Bool", "std_msgs/msg/Float64"
END_KINDS = ("terminated", "truncated")
VERDICTS = ("OK", "WARN", "ERROR")


# =============================================================================== the report
@dataclass
class HealthReport:
    """The health of a set of recordings. ``errors`` / ``warnings`` / ``notes``: one line each,
    prefixed with the bag's name; ``bags``: the per-bag findings (plain JSON-able dicts)."""

    robot: str
    bags: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "ERROR" if self.errors else "WARN" if self.warnings else "OK"

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def overall(self) -> dict:
        """Totals over every bag: messages per declared topic, episodes, duration."""
        counts: collections.Counter = collections.Counter()
        for b in self.bags:
            for t, info in b.get("topics", {}).items():
                counts[t] += int(info.get("count", 0))
        episodes = [e for b in self.bags for e in b.get("episodes", [])]
        ended = collections.Counter(e["ended"] for e in episodes)
        succ = [e["success"] for e in episodes if e.get("success") is not None]
        return {"bags": len(self.bags), "duration_s": round(sum(b.get("duration_s", 0.0) for b in self.bags), 3),
                "messages": dict(counts), "episodes": len(episodes), "ended": dict(ended),
                "success_rate": round(float(np.mean(succ)), 3) if succ else None,
                "commands": sum(b.get("commands", {}).get("count", 0) for b in self.bags)}

    def summary(self) -> dict:
        """What a build report keeps: the verdict, the reasons and the totals."""
        return _plain({"verdict": self.verdict, "errors": list(self.errors), "warnings": list(self.warnings),
                       **self.overall(), "seconds": round(self.seconds, 3)})

    def to_dict(self) -> dict:
        return _plain({"robot": self.robot, "verdict": self.verdict, "errors": self.errors, "warnings": self.warnings,
                       "notes": self.notes, "overall": self.overall(), "settings": self.settings,
                       "seconds": round(self.seconds, 3), "bags": self.bags})

    def format(self) -> str:
        """The report as a readable table."""
        return format_report(self)


class _Issues:
    """ERROR / WARN / note lines of one bag."""

    def __init__(self, name: str):
        self.name = name
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def error(self, text: str) -> None:
        self.errors.append(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)


# =============================================================================== entry point
def check_recordings(bags: Sequence[str | os.PathLike], robot, max_gap_periods: float = 3.0, max_skew_s: float = 0.5,
                     rate_tolerance: float = RATE_TOLERANCE, agent=None, assembler=None) -> HealthReport:
    """Check every bag against ``robot`` (a RobotConfig or the path of a robot file).

    ``agent`` (AgentConfig) and ``assembler`` (AssemblerConfig): the observation rule's
    settings and the learner's pairing tolerances (default: their defaults). A bag that cannot
    be read is an ERROR of the report, not an exception; a bad robot file raises ConfigError."""
    from wsa_ros.config import AgentConfig, load_robot
    from wsa_ros.learn.transitions import AssemblerConfig

    if isinstance(robot, (str, os.PathLike)):
        robot = load_robot(robot)
    agent = agent or AgentConfig()
    assembler = assembler or AssemblerConfig()
    if not max_gap_periods > 0 or not max_skew_s > 0 or not rate_tolerance > 0:
        raise ValueError("max_gap_periods, max_skew_s and rate_tolerance must be > 0")
    t0 = time.perf_counter()
    report = HealthReport(robot=robot.name or "robot", settings={
        "max_gap_periods": float(max_gap_periods), "max_skew_s": float(max_skew_s),
        "rate_tolerance": float(rate_tolerance), "sync": agent.sync, "sync_timeout_s": float(agent.sync_timeout_s),
        "joint_tolerance_s": float(assembler.joint_tolerance_s), "camera_skew_s": float(assembler.camera_skew_s)})
    for path in bags:
        issues = _Issues(Path(path).name)
        info = _BagCheck(Path(path), robot, issues, max_gap_periods, max_skew_s, rate_tolerance, agent,
                         assembler).run()
        info.update(errors=issues.errors, warnings=issues.warnings, notes=issues.notes,
                    verdict="ERROR" if issues.errors else "WARN" if issues.warnings else "OK")
        report.bags.append(info)
        report.errors += [f"{issues.name}: {x}" for x in issues.errors]
        report.warnings += [f"{issues.name}: {x}" for x in issues.warnings]
        report.notes += [f"{issues.name}: {x}" for x in issues.notes]
    report.seconds = time.perf_counter() - t0
    return report


# =============================================================================== one bag
@dataclass
class _Topic:
    """What one declared topic should be."""

    name: str
    role: str  # "camera front", "joint states", "commands", "reward", "success", "episode end"
    msgtype: str
    key: str  # the robot-file field that declares it
    declared_hz: float | None = None
    required: bool = True
    header: bool = False  # stamps are checked (cameras, joint states)
    rate_key: str = ""  # the robot-file field that declares its rate


class _Series:
    """Receive times and header stamps of one topic, in record order."""

    def __init__(self):
        self.recv: list[int] = []
        self.stamp: list[int] = []

    def add(self, recv: int, stamp: int | None = None) -> None:
        self.recv.append(int(recv))
        if stamp is not None:
            self.stamp.append(int(stamp))


class _BagCheck:
    def __init__(self, path: Path, robot, issues: _Issues, max_gap_periods, max_skew_s, rate_tol, agent, assembler):
        self.path, self.robot, self.issues = path, robot, issues
        self.max_gap_periods, self.max_skew_s, self.rate_tol = float(max_gap_periods), float(max_skew_s), rate_tol
        self.agent, self.acfg = agent, assembler

    # ------------------------------------------------------------------ declared topics
    def declared(self) -> list[_Topic]:
        r = self.robot
        out = [_Topic(t, f"camera {c}", COMPRESSED if _compressed(t) else IMAGE, "camera_topics", float(hz), True, True,
                      "camera_rates_hz")
               for c, t, hz in zip(r.camera_names, r.camera_topics, r.camera_rates_hz)]
        out.append(_Topic(r.joint_states_topic, "joint states", JOINT_STATE, "joint_states_topic",
                          float(r.joint_states_rate_hz), True, True, "joint_states_rate_hz"))
        out.append(_Topic(r.command_topic, "commands", COMMAND_TYPES[r.command_interface], "command_topic"))
        seen = {t.name for t in out}
        for name, role, typ, key in ((r.reward_topic, "reward", REWARD_TYPE, "reward_topic"),
                                     (r.success_topic, "success", SUCCESS_TYPE, "success_topic"),
                                     (r.episode_end_topic, "episode end", END_TYPE, "episode_end_topic")):
            if name and name not in seen:
                out.append(_Topic(name, role, typ, key, required=False))
                seen.add(name)
        return out

    def run(self) -> dict:
        from wsa_ros.runtime.bags import BagError, summary

        out: dict[str, Any] = {"bag": str(self.path)}
        try:
            s = summary(self.path)
        except BagError as exc:
            self.issues.error(f"cannot read the bag: {exc}")
            return out
        self.start_ns, self.end_ns = s.start_ns, s.end_ns
        out.update(storage=s.storage, messages=s.count, duration_s=round(s.duration_s, 3), start_ns=s.start_ns)
        have = s.topics
        topics = self.declared()
        self.usable: dict[str, _Topic] = {}
        tinfo: dict[str, dict] = {}
        listing = ", ".join(f"{t.name} [{t.msgtype}]" for t in sorted(have.values(), key=lambda t: t.name)) or "nothing"
        for t in topics:
            d = {"role": t.role, "expected_type": t.msgtype, "declared_hz": t.declared_hz, "count": 0}
            tinfo[t.name] = d
            got = have.get(t.name)
            if got is None:
                d["present"] = False
                same = sorted(x.name for x in have.values() if x.msgtype == t.msgtype)
                hint = f"; the bag has {t.msgtype} on {same}" if same else ""
                text = (f"{t.role} topic {t.name} ({t.key}, {t.msgtype}) is not in the bag{hint}; the bag holds: "
                        f"{listing}")
                if t.required:
                    self.issues.error(f"{text}. Fix {t.key} in the robot file or record that topic")
                elif t.role != "episode end":  # the episodes say it
                    self.issues.note(f"no {t.role} topic {t.name} in the bag")
                continue
            d.update(present=True, type=got.msgtype, count=int(got.count))
            if got.msgtype != t.msgtype:
                why = (f" (command_interface '{self.robot.command_interface}')" if t.role == "commands" else
                       " (a camera topic ending in /compressed carries CompressedImage, any other Image)"
                       if t.role.startswith("camera") else "")
                self.issues.error(f"{t.role} topic {t.name} carries {got.msgtype}, not {t.msgtype}{why}")
                continue
            if got.count == 0:
                (self.issues.error if t.required else self.issues.note)(
                    f"{t.role} topic {t.name} was recorded but holds no messages")
                continue
            self.usable[t.name] = t
        others = {t.name: t.msgtype for t in have.values() if t.name not in tinfo}
        out["topics"], out["other_topics"] = tinfo, others
        if self.usable:
            try:
                self.scan(out)
            except BagError as exc:
                self.issues.error(f"cannot read the bag: {exc}")
        return out

    # ------------------------------------------------------------------ the one pass
    def scan(self, out: dict) -> None:
        from wsa_ros.runtime.bags import iter_messages
        from wsa_ros.runtime.observation import (JOINTS, FrameSample, JointReader, JointRejected, JointSample,
                                                 Synchronizer)

        r = self.robot
        series = {name: _Series() for name in self.usable}
        cams = {c: t for c, t in zip(r.camera_names, r.camera_topics) if t in self.usable}
        cam_of = {t: c for c, t in cams.items()}
        joint_topic = r.joint_states_topic if r.joint_states_topic in self.usable else None
        sync = None
        if r.camera_names[0] in cams and len(cams) == len(r.camera_names):
            sync = Synchronizer(list(cams), need_joints=joint_topic is not None, rule=self.agent.sync,
                                timeout_ns=int(self.agent.sync_timeout_s * 1e9))
        pairs = _Pairing(self.acfg, self.start_ns)
        reader = JointReader(r.joint_names, where=f"joint state on {r.joint_states_topic}")
        joints = _Joints(r)
        cmds = _Commands(r, self.issues)
        events: dict[str, list] = {"episode end": [], "success": [], "reward": []}
        role = {name: t.role for name, t in self.usable.items()}

        def done(now: int) -> None:
            if sync is not None:
                for obs in sync.resolve(now):
                    pairs.observe(obs)

        for m in iter_messages(self.path, topics=sorted(self.usable), decode=True):
            t, msg, kind = m.timestamp, m.msg, role[m.topic]
            done(t)
            if m.topic in cam_of:
                st = stamp_ns(msg.header.stamp)
                series[m.topic].add(t, st)
                if sync is not None:
                    sync.put_frame(cam_of[m.topic], FrameSample(t, st, None, _compressed(m.topic)))
            elif m.topic == joint_topic:
                js = JointSample.from_msg(msg, t)
                series[m.topic].add(t, js.stamp_ns)
                if sync is not None and JOINTS in sync.streams:
                    sync.put_joints(js)
                joints.names.update(js.names)
                try:
                    pos, _ = reader.read(js.names, js.position, js.velocity, js.effort)
                    joints.add(pos)
                except JointRejected as exc:
                    joints.reject(exc.key, str(exc))
            else:
                series[m.topic].add(t)
                if kind == "commands":
                    cmds.add(t, msg)
                elif kind == "episode end":
                    events[kind].append((t, str(msg.data)))
                elif kind == "success":
                    events[kind].append((t, bool(msg.data)))
                elif kind == "reward":
                    events[kind].append((t, float(msg.data)))
            done(t)
        if sync is not None:
            for obs in sync.flush():
                pairs.observe(obs)

        for name, t in self.usable.items():
            out["topics"][name].update(self.stream_stats(t, series[name]))
        if joint_topic:
            self.relative_skew(out["topics"], list(cams.values()), joint_topic)
        if sync is not None:
            out["pairing"] = pairs.report(sync, cams, joint_topic, self.issues)
        else:
            out["pairing"] = {"checked": False}
            self.issues.note("pairing not checked: a camera topic is missing or unusable")
        if joint_topic:
            out["joints"] = joints.report(joint_topic, self.issues)
        if r.command_topic in self.usable:
            out["commands"] = cmds.report(series[r.command_topic].recv)
        out["episodes_from"], out["episodes"] = self.episodes(events, cmds.times, out)

    # ------------------------------------------------------------------ rates, gaps, stamps
    def stream_stats(self, topic: _Topic, s: _Series) -> dict:
        recv = np.asarray(s.recv, np.int64)
        d: dict[str, Any] = {"count": int(len(recv)), "recv_hz": _rate(recv)}
        if not topic.header:
            return d
        stamps = np.asarray(s.stamp, np.int64)
        zero = stamps == 0
        good = stamps[~zero]
        d["stamp_hz"] = _rate(np.sort(good))
        diffs = np.diff(good)
        skew = (good - recv[~zero]) * 1e-9
        worst = float(skew[np.argmax(np.abs(skew))]) if len(skew) else None
        beyond = int(np.sum(np.abs(skew) > self.max_skew_s))
        d["stamps"] = {"zero": int(zero.sum()), "out_of_order": int(np.sum(diffs < 0)),
                       "duplicate": int(len(good) - len(np.unique(good))),
                       "skew_median_s": round(float(np.median(skew)), 6) if len(skew) else None,
                       "skew_worst_s": None if worst is None else round(worst, 6), "skew_beyond": beyond}
        who = f"{topic.role} {topic.name}"
        hz = topic.declared_hz
        sr, rr = d["stamp_hz"], d["recv_hz"]
        off = [(what, v) for what, v in (("header stamps", sr), ("receive times", rr))
               if v is not None and abs(v / hz - 1.0) > self.rate_tol]
        if off:
            both = f"{_hz(sr)} by header stamps, {_hz(rr)} by receive times"
            hint = ""
            if len(off) == 1 and off[0][0] == "receive times":
                hint = ("; the stamps advance at the declared rate but the messages did not arrive at it: the driver "
                        "stamps at its nominal rate, not when the frame was taken")
            elif len(off) == 1:
                hint = "; the messages arrived at the declared rate but their stamps do not advance at it"
            self.issues.warn(f"{who}: measured {both}, declared {hz:g} Hz ({topic.rate_key}; "
                             f"{_pct(off[0][1], hz)}){hint}")
        d["gaps"] = _gaps(recv, self.max_gap_periods / hz, self.start_ns)
        g = d["gaps"]
        if g["count"]:
            where = ", ".join(f"{a:.2f} s" for a, _ in g["at"][:3])
            self.issues.warn(f"{who}: {g['count']} gap(s) longer than {self.max_gap_periods:g} periods "
                             f"({self.max_gap_periods / hz:.3f} s at {hz:g} Hz), longest {g['longest_s']:.3f} s; "
                             f"starting at {where} into the bag")
        st = d["stamps"]
        if st["zero"]:
            self.issues.warn(f"{who}: {st['zero']} message(s) with header stamp 0 (the driver does not stamp; "
                             "pairing by stamp cannot use them)")
        if st["out_of_order"]:
            self.issues.warn(f"{who}: header stamps go backwards {st['out_of_order']} time(s) in recording order")
        if st["duplicate"]:
            self.issues.warn(f"{who}: {st['duplicate']} repeated header stamp(s) (the same stamp on more than one "
                             "message)")
        if beyond:
            sign = "ahead of" if worst > 0 else "behind"
            self.issues.warn(f"{who}: header stamps run {abs(worst):.3f} s {sign} the recording time (median "
                             f"{st['skew_median_s']:+.3f} s, worst {worst:+.3f} s; {beyond} of {len(skew)} beyond "
                             f"--max-skew-s {self.max_skew_s:g}): the driver stamps with another clock (sim time, "
                             "a device clock)?")
        return d

    def relative_skew(self, topics: dict, cam_topics: list[str], joint_topic: str) -> None:
        """Cameras whose stamps sit on another clock than the joint states' (relative to the
        recording time): pairing by stamp would join samples taken that far apart."""
        js = topics[joint_topic].get("stamps", {}).get("skew_median_s")
        for t in cam_topics:
            cs = topics[t].get("stamps", {}).get("skew_median_s")
            if js is None or cs is None:
                continue
            rel = cs - js
            topics[t]["stamps"]["skew_vs_joint_states_s"] = round(rel, 6)
            if abs(rel) > self.max_skew_s:
                self.issues.error(
                    f"{t} and {joint_topic} are stamped by clocks {abs(rel):.3f} s apart (median stamp - recording "
                    f"time {cs:+.3f} s vs {js:+.3f} s; beyond --max-skew-s {self.max_skew_s:g}): pairing by stamp "
                    f"would join each frame with the joint state {'before' if rel < 0 else 'after'} it by that much. "
                    "Stamp both with one clock (the driver's use_sim_time / time source)")

    # ------------------------------------------------------------------ episodes
    def episodes(self, events: dict, cmd_times: list[int], out: dict) -> tuple[str, list[dict]]:
        ends = events["episode end"]
        succ = events["success"]
        rew = events["reward"]
        end_ns = self.end_ns
        bounds = [(t, k) for t, k in ends]
        source = "episode_end"
        if not ends:
            source = "bag"
            self.issues.note(f"no messages on the episode-end topic {self.robot.episode_end_topic}: the bag is "
                             "taken as one episode")
        if not ends or (cmd_times and cmd_times[-1] > ends[-1][0]):
            bounds.append((max(end_ns, cmd_times[-1] if cmd_times else 0), "bag end"))
        ct = np.asarray(cmd_times, np.int64)
        eps, start = [], self.start_ns - 1
        for i, (t, kind) in enumerate(bounds):
            n = int(np.sum((ct > start) & (ct <= t)))
            e: dict[str, Any] = {"index": i, "ended": kind,
                                 "start_s": round(max(0, start + 1 - self.start_ns) * 1e-9, 3),
                                 "end_s": round((t - self.start_ns) * 1e-9, 3), "commands": n}
            e["duration_s"] = round(e["end_s"] - e["start_s"], 3)
            window = [v for ts, v in succ if start < ts <= t]
            e["success"] = window[-1] if window else None
            if rew:
                e["return"] = round(sum(v for ts, v in rew if start < ts <= t), 6)
            if kind not in END_KINDS and kind != "bag end":
                self.issues.warn(f"episode {i} ends with '{kind}' on {self.robot.episode_end_topic}; expected one of "
                                 f"{list(END_KINDS)}")
            if n == 0 and self.robot.command_topic in self.usable:
                self.issues.warn(f"episode {i} (ended {kind} at {e['end_s']:.2f} s) has no commands")
            eps.append(e)
            start = t
        return source, eps


# =============================================================================== pairing
class _Pairing:
    """Observations of the agent's rule, checked with the learner's tolerances."""

    def __init__(self, acfg, start_ns: int):
        self.tol_j = int(acfg.joint_tolerance_s * 1e9)
        self.tol_c = int(acfg.camera_skew_s * 1e9)
        self.start_ns = start_ns
        self.observations = 0
        self.far_joints = 0
        self.far_cameras = 0
        self.worst_joint_ns = 0
        self.at: list[float] = []

    def observe(self, obs) -> None:
        self.observations += 1
        s = obs.stamp_ns
        bad = False
        if obs.joints is not None:
            d = abs(obs.joints.stamp_ns - s)
            self.worst_joint_ns = max(self.worst_joint_ns, d)
            if d > self.tol_j:
                self.far_joints += 1
                bad = True
        frames = list(obs.frames.values())
        if any(abs(f.stamp_ns - s) > self.tol_c for f in frames[1:]):
            self.far_cameras += 1
            bad = True
        if bad and len(self.at) < LOCATIONS:
            self.at.append(round((frames[0].time_ns - self.start_ns) * 1e-9, 3))

    def report(self, sync, cams: dict, joint_topic: str | None, issues: _Issues) -> dict:
        frames = self.observations + sync.incomplete + sync.superseded
        unpaired = sync.incomplete + sync.superseded + self.far_joints + self.far_cameras
        d = {"checked": True, "rule": sync.rule, "frames": frames, "paired": frames - unpaired, "unpaired": unpaired,
             "no_partner": sync.incomplete, "superseded": sync.superseded, "joint_too_far": self.far_joints,
             "camera_too_far": self.far_cameras, "timed_out": sync.timeouts,
             "worst_joint_offset_s": round(self.worst_joint_ns * 1e-9, 6), "unpaired_at_s": self.at}
        trigger = next(iter(cams.values()))
        if unpaired:
            parts = []
            if sync.incomplete:
                parts.append(f"{sync.incomplete} before any sample of a partner stream")
            if self.far_joints:
                parts.append(f"{self.far_joints} whose nearest joint state ({joint_topic}) is more than "
                             f"{self.tol_j * 1e-9:g} s (joint_tolerance_s) off the frame's stamp (worst "
                             f"{self.worst_joint_ns * 1e-9:.3f} s)")
            if self.far_cameras:
                parts.append(f"{self.far_cameras} whose other cameras' frames are more than "
                             f"{self.tol_c * 1e-9:g} s (camera_skew_s) off")
            if sync.superseded:
                parts.append(f"{sync.superseded} given up waiting (superseded)")
            where = f"; first at {', '.join(f'{a:.2f} s' for a in self.at)}" if self.at else ""
            text = (f"{unpaired} of {frames} frames of {trigger} cannot be paired by the agent's observation rule: "
                    + "; ".join(parts) + where)
            (issues.error if unpaired > MAX_UNPAIRED_FRACTION * max(frames, 1) else issues.warn)(text)
        if frames and sync.timeouts > MAX_TIMEOUT_FRACTION * frames:
            issues.warn(f"{sync.timeouts} of {frames} frames of {trigger} waited out the agent's sync timeout "
                        f"({sync.timeout_ns * 1e-9:g} s) for a later-stamped partner: live pairing would depend on "
                        "delivery timing (partner stream too slow or stamped late)")
        return d


# =============================================================================== joints
class _Joints:
    def __init__(self, robot):
        self.robot = robot
        self.names: set[str] = set()
        self.lo = np.full(len(robot.joint_names), np.inf)
        self.hi = np.full(len(robot.joint_names), -np.inf)
        self.n = 0
        self.below = np.zeros(len(robot.joint_names), np.int64)
        self.above = np.zeros(len(robot.joint_names), np.int64)
        self.lower = np.asarray(robot.position_lower, np.float64)
        self.upper = np.asarray(robot.position_upper, np.float64)
        self.limited = np.array([j not in robot.continuous for j in robot.joint_names])
        self.rejected: collections.Counter = collections.Counter()
        self.first_reason: dict[str, str] = {}

    def add(self, pos: np.ndarray) -> None:
        self.n += 1
        np.minimum(self.lo, pos, out=self.lo)
        np.maximum(self.hi, pos, out=self.hi)
        self.below += pos < self.lower - 1e-6
        self.above += pos > self.upper + 1e-6

    def reject(self, key: str, text: str) -> None:
        self.rejected[key] += 1
        self.first_reason.setdefault(key, text)

    def report(self, topic: str, issues: _Issues) -> dict:
        r = self.robot
        missing = [j for j in r.joint_names if j not in self.names]
        extra = sorted(self.names - set(r.joint_names))
        d: dict[str, Any] = {"messages_used": self.n, "missing": missing, "extra": extra,
                             "rejected": dict(self.rejected), "per_joint": {}}
        if missing:
            issues.error(f"joint states on {topic} lack joint(s) {missing} named in the robot file's joint_names "
                         f"{list(r.joint_names)}; they name {sorted(self.names)}. Fix joint_names in the robot "
                         "file (names as /joint_states has them) or record the right arm")
        elif extra:
            issues.note(f"joint states on {topic} also carry {extra} (not in joint_names; ignored)")
        for key, count in self.rejected.items():
            if missing and key == "joint_missing":
                continue
            issues.warn(f"{count} joint state(s) on {topic} unusable ({key}): {self.first_reason[key]}")
        for i, j in enumerate(r.joint_names):
            if not self.n:
                break
            lim = bool(self.limited[i])
            pj = {"min": round(float(self.lo[i]), 6), "max": round(float(self.hi[i]), 6),
                  "lower": float(self.lower[i]), "upper": float(self.upper[i]), "continuous": not lim,
                  "outside": int(self.below[i] + self.above[i]) if lim else 0}
            d["per_joint"][j] = pj
            if lim and pj["outside"]:
                parts = []
                if self.below[i]:  # by how much: a joint pressed against its stop is a few 1e-4 rad past it
                    parts.append(f"down to {pj['min']:.4g} ({pj['lower'] - pj['min']:.2g} below position_lower "
                                 f"{pj['lower']:g})")
                if self.above[i]:
                    parts.append(f"up to {pj['max']:.4g} ({pj['max'] - pj['upper']:.2g} above position_upper "
                                 f"{pj['upper']:g})")
                issues.warn(f"joint '{j}' reaches " + " and ".join(parts) + f" rad ({pj['outside']} of {self.n} "
                            "joint states outside the robot file's limits)")
        return d


# =============================================================================== commands
class _Commands:
    """The command topic per ``command_interface``: names, units, bounds."""

    def __init__(self, robot, issues: _Issues):
        from wsa_ros.config import robot_action_bounds

        self.robot, self.issues = robot, issues
        self.times: list[int] = []
        low, high = robot_action_bounds(robot)
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.counts: collections.Counter = collections.Counter()
        self.names_seen: collections.Counter = collections.Counter()  # JointTrajectory joint_names lists
        self.lengths: collections.Counter = collections.Counter()
        self.outside = 0
        self.vmin = np.full(len(low), np.inf)
        self.vmax = np.full(len(low), -np.inf)
        self._reader = None

    def _values(self, names, values):
        from wsa_ros.runtime.observation import JointReader, JointRejected

        if self._reader is None:
            self._reader = JointReader(self.robot.joint_names, where=f"command on {self.robot.command_topic}")
        try:
            return self._reader.read(names, values)[0]
        except JointRejected as exc:
            self.counts[f"rejected_{exc.key}"] += 1
            return None

    def add(self, t: int, msg) -> None:
        self.times.append(int(t))
        iface = self.robot.command_interface
        vals = None
        if iface == "forward_command":
            data = np.asarray(msg.data, np.float64)
            self.lengths[len(data)] += 1
            if len(data) == len(self.robot.joint_names):
                vals = data
        elif iface == "twist":
            v = np.array([msg.linear.x, msg.linear.y, msg.linear.z, msg.angular.x, msg.angular.y, msg.angular.z])
            vals = v[: len(self.low)]
        else:  # joint_trajectory
            names = tuple(msg.joint_names)
            self.names_seen[names] += 1
            if not len(msg.points):
                self.counts["no_points"] += 1
                return
            pt = msg.points[0]
            n = len(names)
            has_p, has_v = len(pt.positions) == n and n > 0, len(pt.velocities) == n and n > 0
            self.counts["positions" if has_p else "no_positions"] += 1
            self.counts["velocities" if has_v else "no_velocities"] += 1
            if has_v and not has_p:
                self.counts["velocities_only"] += 1
            if has_p and not has_v:
                self.counts["positions_only"] += 1
            want = pt.positions if self.robot.command_units == "rad" else pt.velocities
            if len(want) == n and set(self.robot.joint_names) <= set(names):
                vals = self._values(names, want)
        if vals is not None:
            vals = np.asarray(vals, np.float64)
            np.minimum(self.vmin, vals, out=self.vmin)
            np.maximum(self.vmax, vals, out=self.vmax)
            if np.any(vals < self.low - 1e-9) or np.any(vals > self.high + 1e-9):
                self.outside += 1

    def report(self, recv: list[int]) -> dict:
        r, iss = self.robot, self.issues
        n = len(self.times)
        topic = r.command_topic
        d: dict[str, Any] = {"topic": topic, "interface": r.command_interface, "units": r.command_units, "count": n,
                             "rate_hz": _rate(np.asarray(recv, np.int64)), "outside_bounds": self.outside,
                             "low": self.low.tolist(), "high": self.high.tolist()}
        if np.isfinite(self.vmin).all():
            d["min"], d["max"] = [round(float(x), 6) for x in self.vmin], [round(float(x), 6) for x in self.vmax]
        if r.command_interface == "forward_command":
            d["lengths"] = {str(k): v for k, v in sorted(self.lengths.items())}
            wrong = n - self.lengths.get(len(r.joint_names), 0)
            if wrong:
                got = sorted(k for k in self.lengths if k != len(r.joint_names))
                iss.error(f"{wrong} of {n} commands on {topic} carry {got} value(s), not one per joint of the "
                          f"robot file's joint_names {list(r.joint_names)} ({len(r.joint_names)})")
        elif r.command_interface == "joint_trajectory":
            d["joint_names"] = [list(k) for k in self.names_seen]
            d["points"] = {k: self.counts.get(k, 0) for k in ("positions", "velocities", "velocities_only",
                                                                "positions_only", "no_points")}
            want = set(r.joint_names)
            bad = {k: v for k, v in self.names_seen.items() if not want <= set(k)}
            if bad:
                names = sorted({j for k in bad for j in k})
                missing = sorted({j for k in bad for j in want - set(k)}, key=list(r.joint_names).index)
                iss.error(f"{sum(bad.values())} of {n} commands on {topic} name joints {names}, not the robot "
                          f"file's joint_names {list(r.joint_names)} (missing {missing}). Fix joint_names in the "
                          "robot file (names as the controller takes them)")
            extra = sorted({j for k in self.names_seen for j in set(k) - want})
            if extra and not bad:
                iss.note(f"commands on {topic} also name {extra} (not in joint_names; ignored)")
            if self.counts["no_points"]:
                iss.error(f"{self.counts['no_points']} of {n} JointTrajectory commands on {topic} have no points")
            if r.command_units == "rad" and self.counts["no_positions"] - self.counts["no_points"] > 0:
                k = self.counts["no_positions"] - self.counts["no_points"]
                what = "velocities only" if self.counts["velocities_only"] == k else "no positions"
                iss.error(f"{k} of {n} JointTrajectory commands on {topic} carry {what}, but the robot file's "
                          "command_units is 'rad' (joint positions): set command_units: rad/s if the arm is "
                          "velocity-commanded, or record position trajectories")
            if r.command_units == "rad/s" and self.counts["no_velocities"] - self.counts["no_points"] > 0:
                k = self.counts["no_velocities"] - self.counts["no_points"]
                what = "positions only" if self.counts["positions_only"] == k else "no velocities"
                iss.error(f"{k} of {n} JointTrajectory commands on {topic} carry {what}, but the robot file's "
                          "command_units is 'rad/s' (joint velocities): set command_units: rad if the arm is "
                          "position-commanded, or record velocity trajectories")
            for key in ("rejected_joint_nonfinite", "rejected_joint_malformed"):
                if self.counts[key]:
                    iss.warn(f"{self.counts[key]} of {n} commands on {topic} unusable ({key[9:]})")
        if self.outside:
            iss.warn(f"{self.outside} of {n} commands on {topic} leave the action bounds [{_fmt(self.low)}, "
                     f"{_fmt(self.high)}] {r.command_units} (command_units '{r.command_units}'; the robot file's "
                     "limits): wrong units, or limits too narrow?")
        rate = d["rate_hz"]
        if rate is not None and abs(rate / r.control_rate_hz - 1.0) > RATE_TOLERANCE:
            iss.note(f"commands were recorded at {rate:.1f} Hz; the agent will act at control_rate_hz "
                     f"{r.control_rate_hz:g}")
        return d


# =============================================================================== helpers
def _compressed(topic: str) -> bool:
    from wsa_ros.runtime.images import is_compressed_topic

    return is_compressed_topic(topic)


def _rate(t: np.ndarray) -> float | None:
    """Mean rate of increasing times (ns): (n - 1) / span; None with fewer than two."""
    if len(t) < 2 or t[-1] <= t[0]:
        return None
    return round((len(t) - 1) / ((int(t[-1]) - int(t[0])) * 1e-9), 3)


def _gaps(recv: np.ndarray, limit_s: float, start_ns: int) -> dict:
    if len(recv) < 2:
        return {"limit_s": round(limit_s, 6), "count": 0, "longest_s": 0.0, "at": []}
    d = np.diff(recv) * 1e-9
    idx = np.flatnonzero(d > limit_s)
    at = [[round((int(recv[i]) - start_ns) * 1e-9, 3), round(float(d[i]), 3)] for i in idx[:LOCATIONS]]
    return {"limit_s": round(limit_s, 6), "count": int(len(idx)),
            "longest_s": round(float(d.max()), 6), "at": at}


def _hz(v) -> str:
    return "-" if v is None else f"{v:.2f} Hz"


def _pct(v: float, ref: float) -> str:
    return f"{100.0 * (v / ref - 1.0):+.0f} %"


def _fmt(a) -> str:
    return "[" + ", ".join(f"{float(x):g}" for x in a) + "]"


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# =============================================================================== printing
def format_report(rep: HealthReport) -> str:
    L: list[str] = [f"bag health against robot '{rep.robot}' ({len(rep.bags)} bag(s), checked in {rep.seconds:.2f} s)"]
    for b in rep.bags:
        L.append("")
        head = f"bag {b['bag']}"
        if "storage" in b:
            head += f"  ({b['storage']}, {b['messages']} messages, {b['duration_s']:.2f} s)"
        L.append(head + f"  verdict {b['verdict']}")
        topics = b.get("topics", {})
        if topics:
            L.append(f"  {'topic':36s} {'role':14s} {'count':>6s} {'declared':>8s} {'stamp Hz':>8s} {'recv Hz':>8s} "
                     f"{'gaps':>4s} {'longest':>8s} {'order':>5s} {'dup':>4s} {'zero':>4s} {'skew med':>9s} "
                     f"{'worst':>9s}")
            for name, t in topics.items():
                if not t.get("present"):
                    L.append(f"  {name:36s} {t['role']:14s} {'absent':>6s}")
                    continue
                if t.get("type") != t["expected_type"]:
                    L.append(f"  {name:36s} {t['role']:14s} {t['count']:6d}  type {t['type']} (expected "
                             f"{t['expected_type']})")
                    continue
                st = t.get("stamps", {})
                g = t.get("gaps", {})
                dec = f"{t['declared_hz']:g}" if t.get("declared_hz") else "-"
                sh = f"{t['stamp_hz']:.2f}" if t.get("stamp_hz") is not None else "-"
                rh = f"{t['recv_hz']:.2f}" if t.get("recv_hz") is not None else "-"
                row = f"  {name:36s} {t['role']:14s} {t['count']:6d} {dec:>8s} {sh:>8s} {rh:>8s}"
                if g:
                    row += f" {g['count']:4d} {g['longest_s']:8.3f}"
                if st:
                    med = "-" if st["skew_median_s"] is None else f"{st['skew_median_s']:+.3f}"
                    wst = "-" if st["skew_worst_s"] is None else f"{st['skew_worst_s']:+.3f}"
                    row += f" {st['out_of_order']:5d} {st['duplicate']:4d} {st['zero']:4d} {med:>9s} {wst:>9s}"
                L.append(row)
        if b.get("other_topics"):
            L.append("  other topics: " + ", ".join(f"{k} [{v}]" for k, v in sorted(b["other_topics"].items())))
        p = b.get("pairing")
        if p and p.get("checked"):
            L.append(f"  pairing ({p['rule']} rule): {p['paired']} of {p['frames']} frames paired, {p['unpaired']} "
                     f"unpaired, {p['timed_out']} waited out the sync timeout; worst joint-state offset "
                     f"{p['worst_joint_offset_s']:.3f} s")
        j = b.get("joints")
        if j and j.get("per_joint"):
            L.append(f"  {'joint':16s} {'min':>9s} {'max':>9s} {'lower':>9s} {'upper':>9s}  outside")
            for name, pj in j["per_joint"].items():
                lim = "continuous" if pj["continuous"] else str(pj["outside"])
                L.append(f"  {name:16s} {pj['min']:9.4f} {pj['max']:9.4f} {pj['lower']:9.4f} {pj['upper']:9.4f}  {lim}")
        c = b.get("commands")
        if c:
            rate = "-" if c["rate_hz"] is None else f"{c['rate_hz']:.2f} Hz"
            rng = ""
            if "min" in c:
                rng = f", range {_fmt(c['min'])} .. {_fmt(c['max'])}"
            L.append(f"  commands {c['topic']} ({c['interface']}, {c['units']}): {c['count']} at {rate}{rng}, "
                     f"{c['outside_bounds']} outside the action bounds")
        eps = b.get("episodes")
        if eps is not None:
            src = "episode-end messages" if b.get("episodes_from") == "episode_end" else "no episode-end messages: one"
            L.append(f"  episodes ({src}): {len(eps)}")
            for e in eps[:20]:
                extra = "" if e.get("success") is None else f", success {e['success']}"
                if "return" in e:
                    extra += f", return {e['return']:.3f}"
                L.append(f"    #{e['index']:<3d} {e['start_s']:8.2f} - {e['end_s']:8.2f} s  {e['commands']:5d} "
                         f"commands  ended {e['ended']}{extra}")
            if len(eps) > 20:
                L.append(f"    ... {len(eps) - 20} more")
        for x in b.get("errors", []):
            L.append(f"  ERROR {x}")
        for x in b.get("warnings", []):
            L.append(f"  WARN  {x}")
        for x in b.get("notes", []):
            L.append(f"  note  {x}")
    o = rep.overall()
    L.append("")
    ended = ", ".join(f"{n} {k}" for k, n in sorted(o["ended"].items()))
    L.append(f"overall: {o['bags']} bag(s), {o['duration_s']:.2f} s, {o['commands']} commands, {o['episodes']} "
             f"episode(s)" + (f" ({ended})" if ended else "")
             + ("" if o["success_rate"] is None else f", success rate {o['success_rate']:.2f}"))
    L.append(f"verdict: {rep.verdict} ({len(rep.errors)} error(s), {len(rep.warnings)} warning(s))")
    return "\n".join(L)


# =============================================================================== CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wsa bag-health", description=__doc__.split("\n\n")[0])
    ap.add_argument("bags", nargs="+", help="bag folders or .mcap/.db3 files (a folder of bags is expanded)")
    ap.add_argument("--robot", required=True, help="robot description YAML (e.g. config/robots/reacher.yaml)")
    ap.add_argument("--json", default=None, help="also write the report as JSON to this file")
    ap.add_argument("--max-gap-periods", type=float, default=3.0,
                    help="a gap longer than this many declared periods is reported (default 3)")
    ap.add_argument("--max-skew-s", type=float, default=0.5,
                    help="header stamp - recording time beyond this is flagged (default 0.5 s)")
    ap.add_argument("--rate-tolerance", type=float, default=RATE_TOLERANCE,
                    help="measured vs declared rate, relative (default 0.1 = 10 %%)")
    return ap


def main(argv=None) -> int:
    from wsa_ros.config import ConfigError, load_robot
    from wsa_ros.runtime.bags import BagError, find_bags

    ap = build_parser()
    args = ap.parse_args(argv)
    for key in ("max_gap_periods", "max_skew_s", "rate_tolerance"):
        if not getattr(args, key) > 0:
            print(f"bag-health: --{key.replace('_', '-')} must be > 0 (got {getattr(args, key)})", file=sys.stderr)
            return 2
    try:
        robot = load_robot(args.robot)
    except ConfigError as exc:
        print(f"bag-health: robot file unusable: {exc}. Fix it (see config/robots/reacher.yaml for the fields) or "
              "pass the right --robot", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bag-health: cannot read the robot file {args.robot}: {exc.strerror or exc}. Pass a robot "
              "description YAML with --robot (e.g. config/robots/reacher.yaml)", file=sys.stderr)
        return 2
    try:
        bags = [b for p in args.bags for b in find_bags(p)]
    except BagError as exc:
        print(f"bag-health: {exc}. Pass bag folders (with metadata.yaml), .mcap or .db3 files", file=sys.stderr)
        return 2
    rep = check_recordings(bags, robot, args.max_gap_periods, args.max_skew_s, args.rate_tolerance)
    print(rep.format())
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(rep.to_dict(), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"bag-health: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
        print(f"report written to {args.json}")
    return rep.exit_code


if __name__ == "__main__":
    sys.exit(main())
