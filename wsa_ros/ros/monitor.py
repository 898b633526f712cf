"""The demo's observer: an rclpy node in a private context that watches the simulated arm,
the agent and the fine-tuner (episode stats, action records, alpha, diagnostics) for
``wsa demo`` and the cross-process tests. Lives in ``ros/`` because it imports rclpy."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from wsa_ros.runtime.bundle import split_policy_id
from wsa_ros.runtime.stamps import stamp_ns


MIN_ACTIONS = 0.25  # policy actions per sim step for an episode to count as the policy's


class RosSession:
    """An rclpy node in a private context on a given domain (the demo's monitor, the tests'
    observers): it does not touch the global rclpy context or the process's signal handlers."""

    def __init__(self, name: str, domain_id: int):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(domain_id), signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(0.05, left))

    def spin_until(self, predicate, timeout_s: float, what: str = "condition", children=None):
        """Spin until ``predicate()`` is true; AssertionError naming ``what`` (and any dead child) on timeout."""
        end = time.monotonic() + timeout_s
        while not predicate():
            if children is not None and children.dead():
                c = children.dead()[0]
                raise AssertionError(f"{c.name} exited with code {c.proc.returncode} while waiting for {what}:\n"
                                     f"{c.tail()}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ============================================================================ the run's record
@dataclass
class Episode:
    """One finished sim episode, as the sim reported it (``~/episode_stats``) plus what the
    agent did in it (action records whose frame stamps fall inside the episode)."""

    index: int
    end: str
    steps: int
    ret: float
    success: bool
    reached: bool
    final_distance: float
    commanded_steps: int
    start_ns: int
    end_ns: int
    wall_s: float  # seconds since the demo started, when the sim reported the episode
    versions: list[str] = field(default_factory=list)
    actions: int = 0
    latency_ms: float = math.nan  # the agent's median inference time when the episode ended
    counted: bool = False  # the agent commanded (nearly) every step
    updates: int = 0  # the learner's update count when the sim reported the episode (its last ~/status)

    @property
    def version(self) -> str:
        return self.versions[-1] if self.versions else "-"


class Monitor:
    """The demo's own ROS node: listens to the sim, the agent and the fine-tuner."""

    def __init__(self, session: RosSession, alpha_names: list[str], settle_s: float = 0.4):
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float32MultiArray, String

        self.s = session
        self.alpha_names = list(alpha_names)
        self.settle_s = settle_s
        self.t0 = time.monotonic()
        rel = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.pending: deque[tuple[float, Episode]] = deque()
        self.records: deque[tuple[int, str, int | None]] = deque(maxlen=50_000)  # stamp, version, seq
        self.alphas: dict[int, list] = {}
        self._alpha_order: deque[int] = deque()
        self.first_action_wall: float | None = None
        self.agent_diag: dict[str, str] = {}
        self.sim_diag: dict[str, str] = {}
        self.finetune_status: dict = {}  # the learner's last ~/status (JSON)
        self.learner_trace: list[tuple[float, int, float]] = []  # (s since t0, updates, updates/s) per status
        self.latencies: list[float] = []
        n = session.node
        n.create_subscription(DiagnosticStatus, "/sim_arm_node/episode_stats", self._on_stats, rel)
        n.create_subscription(JointState, "/agent_node/action_record", self._on_record, rel)
        n.create_subscription(Float32MultiArray, "/agent_node/alpha", self._on_alpha, rel)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 100)
        n.create_subscription(String, "/finetune_node/status", self._on_finetune_status, 10)
        from std_srvs.srv import SetBool

        self._SetBool = SetBool
        self._enable = n.create_client(SetBool, "/agent_node/enable")
        self._enable_future = None
        self._enable_last = -1e9
        self.reenables: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    @staticmethod
    def _seq(info) -> int | None:
        try:
            seq = info.get("publication_sequence_number") if info else None
        except AttributeError:
            return None
        return int(seq) if seq else None

    def _on_record(self, msg, info):
        stamp = stamp_ns(msg.header.stamp)
        self.records.append((stamp, split_policy_id(msg.header.frame_id)[0], self._seq(info)))
        if self.first_action_wall is None:
            self.first_action_wall = self.now()

    def _on_alpha(self, msg, info):
        seq = self._seq(info)
        if seq is None:
            return
        self.alphas[seq] = list(msg.data)
        self._alpha_order.append(seq)
        while len(self._alpha_order) > 50_000:
            self.alphas.pop(self._alpha_order.popleft(), None)

    def _on_diag(self, msg):
        for st in msg.status:
            values = {kv.key: kv.value for kv in st.values}
            if st.name.startswith("agent_node"):
                self.agent_diag = values
                try:
                    ms = float(values.get("inference_ms_median", "nan"))
                    if math.isfinite(ms):
                        self.latencies.append(ms)
                except ValueError:
                    pass
            elif st.name.startswith("sim_arm_node"):
                self.sim_diag = values

    def rearm_if_tripped(self) -> str | None:
        """What an operator would do in a simulation: when the agent's watchdog has latched (an
        input came late on the loaded machine), call ~/enable again. Returns the trip reason
        when a re-enable was requested."""
        if self._enable_future is not None and not self._enable_future.done():
            return None
        if self.agent_diag.get("state") != "tripped" or time.monotonic() - self._enable_last < 3.0:
            return None
        if not self._enable.service_is_ready():
            return None
        self._enable_last = time.monotonic()
        self._enable_future = self._enable.call_async(self._SetBool.Request(data=True))
        reason = self.agent_diag.get("reason", "?")
        self.reenables.append(reason)
        return reason

    def _on_finetune_status(self, msg):
        try:
            st = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(st, dict):
            self.finetune_status = st
            try:
                self.learner_trace.append((self.now(), int(st.get("updates", 0)), float(st.get("updates_per_s", 0.0))))
            except (TypeError, ValueError):
                pass

    def learner_line(self) -> str:
        st = self.finetune_status
        if not st:
            return ""
        text = f"learner {st.get('accepted', 0)} transitions, {st.get('updates', 0)} updates"
        if st.get("exports"):
            text += f", {st['exports']} exports"
        return text

    def _on_stats(self, msg):
        v = {kv.key: kv.value for kv in msg.values}
        try:
            ep = Episode(index=int(v["episode"]), end=v["end"], steps=int(v["steps"]), ret=float(v["return"]),
                         success=v["success"] == "True", reached=v["reached"] == "True",
                         final_distance=float(v["final_distance"]), commanded_steps=int(v["commanded_steps"]),
                         start_ns=int(v["start_stamp_ns"]), end_ns=int(v["end_stamp_ns"]), wall_s=self.now(),
                         updates=int(self.finetune_status.get("updates", 0) or 0))
        except (KeyError, ValueError) as exc:
            print(f"demo: warning: unreadable episode report from the sim ({exc}): {v}", file=sys.stderr)
            return
        self.pending.append((time.monotonic(), ep))

    def finished(self) -> list[tuple[Episode, list]]:
        """Episodes reported at least ``settle_s`` ago (so the agent's records of their last frames
        are in), each with its alpha rows [steps acted on, K] in frame order."""
        out = []
        while self.pending and time.monotonic() - self.pending[0][0] >= self.settle_s:
            _t, ep = self.pending.popleft()
            recs = [r for r in self.records if ep.start_ns <= r[0] <= ep.end_ns]
            ep.actions = len(recs)
            ep.versions = list(dict.fromkeys(r[1] for r in recs))
            # the policy was in control: the arm had a live command nearly throughout (not waiting for the
            # agent) and the policy itself acted (a tripped agent sends stop commands, not actions); on a
            # loaded machine the agent skips frames, its last command then holds for the next step
            ep.counted = ep.steps > 0 and ep.commanded_steps >= 0.9 * ep.steps and ep.actions >= MIN_ACTIONS * ep.steps
            try:
                ep.latency_ms = float(self.agent_diag.get("inference_ms_median", "nan"))
            except ValueError:
                pass
            alpha = [self.alphas[r[2]] for r in recs if r[2] is not None and r[2] in self.alphas]
            out.append((ep, alpha))
        return out

    def flush(self) -> list[tuple[Episode, list]]:
        self.settle_s = 0.0
        return self.finished()


# ============================================================================ printing
