"""``finetune_node``: online RL from logged transitions, pushed back into the running agents.

A thin rclpy shell; the work is ROS-free in :mod:`wsa_ros.learn`::

    subscriptions --(msg + its publish time, bounded queue)--> ingest thread
        ingest: messages re-sorted by publish time (DDS source timestamp) behind a
                reorder_window_s watermark -> Assembler per robot (pairing by stamp, rewards,
                episode ends, interventions, rejections) -> Engine.embed once per step ->
                ReplayStore.append (flushed with fsync every flush_period_s by the store's own
                thread) -> training queue
    training thread: Trainer (replay + SAC/RLPD), every export_every_updates a snapshot ->
    export thread: export bundle -> validate -> set the agents' ``bundle`` parameter
                   (rcl_interfaces/srv/SetParameters, asynchronous; a dead agent is logged)

The agent never waits for the learner: the learner only subscribes to what the agent and the
robot publish anyway and calls the agent's parameter service; if it crashes, hangs or restarts,
the agent keeps acting on its current policy.

Per robot namespace ``ns`` (parameter ``namespaces``), topics are ``ns + <topic parameter>``:
camera_topics (sensor_msgs/Image or CompressedImage for topics ending in /compressed),
joint_states_topic, action_record_topic (sensor_msgs/JointState), reward_topic
(std_msgs/Float64), success_topic (std_msgs/Bool), episode_end_topic (std_msgs/String),
intervention_topic (sensor_msgs/JointState); the agent is ``ns + agent_node``.

Outputs: ``~/status`` (std_msgs/String, JSON: counts received / rejected by reason / stored,
store errors, updates, buffer sizes, exports, pushes, episodes, success rate) every
status_period_s; CSV logs under ``<out_dir>/logs``. Service ``~/export_now``
(std_srvs/Trigger): export, validate and push at the next update.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import json
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger

from ..bundle import BundleError, load_bundle
from ..config import ConfigError, FinetuneConfig, resolve_bundle
from ..engine import Engine, EngineError
from ..learn.store import ReplayStore, StoreError
from ..learn.transitions import Assembler, AssemblerConfig, TransitionSpec, check_record
from ..observation import FrameSample, JointSample, is_compressed_topic, stamp_ns
from .params import declare_config

INBOX = 4096  # messages waiting for the ingest thread
MAX_SKEW_NS = 1_000_000_000  # publisher clocks further off than this: ordered by reception time
TRAIN_INBOX = 100_000  # transitions waiting for the training thread


def _join(ns: str, topic: str) -> str:
    ns = ns.rstrip("/")
    return f"{ns}{topic}" if ns and topic.startswith("/") else (f"{ns}/{topic}" if ns else topic)


class FinetuneNode(Node):
    def __init__(self, **kwargs):
        super().__init__(FinetuneConfig.NODE, **kwargs)
        self.cfg: FinetuneConfig = declare_config(self, FinetuneConfig)
        cfg = self.cfg
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self._stop = threading.Event()
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

        # ---------------------------------------------------------------- bundle, encoders, store
        self.bundle = load_bundle(resolve_bundle(cfg.bundle))
        b = self.bundle
        if len(cfg.camera_topics) != len(b.cameras):
            raise ConfigError(f"the bundle reads cameras {b.cameras} but camera_topics has {cfg.camera_topics}; "
                              "give one topic per camera in that order")
        self.engine = Engine(b, providers=cfg.providers, threads=1, warmup=True)
        self.spec = TransitionSpec.from_bundle(b)
        self.store = ReplayStore(cfg.store_dir, self.spec.schema(), self.spec.fingerprint(),
                                 meta={"bundle": f"{b.name}:{b.version}"}, flush_period_s=cfg.flush_period_s,
                                 on_error=lambda m: self.get_logger().error(m))
        self.log(f"replay store {self.store.root}: {self.store.count} transitions on disk"
                 + (f", removed {self.store.torn_removed} torn chunk file(s)" if self.store.torn_removed else ""))

        # ---------------------------------------------------------------- learner
        from ..learn.sac import Trainer

        self.trainer = Trainer(b, cfg, log=self.log)
        online = self.store.read(last_n=cfg.capacity)
        if self.store.corrupt:
            self.get_logger().error(f"{self.store.corrupt} corrupt chunk(s) in {self.store.root} skipped "
                                    "(renamed *.corrupt)")
        self._add_loaded(online, demo=False)
        self.trainer.received = max(self.trainer.received, self.store.count)
        self.demo_count = 0
        if cfg.demo_dir:
            demos = ReplayStore(cfg.demo_dir, self.spec.schema(), self.spec.fingerprint(), readonly=True)
            arr = demos.read()
            self._add_loaded(arr, demo=True)
            self.demo_count = len(arr["reward"])
            self.log(f"demonstrations {cfg.demo_dir}: {self.demo_count} transitions")
        self.log(f"learner: {len(self.trainer.replay.online)} online transitions in memory, "
                 f"{len(self.trainer.replay.demos)} demonstrations, {self.trainer.updates} updates so far")
        if cfg.bc_steps and self.trainer.updates == 0 and len(self.trainer.replay.demos):
            from ..learn.bc import behaviour_clone

            r = behaviour_clone(self.trainer.learner.policy, self.trainer.replay, cfg.bc_steps, cfg.batch_size,
                                cfg.lr, b.proprio.mean if b.proprio else None, b.proprio.std if b.proprio else None,
                                seed=cfg.seed)
            self.trainer.event("bc", detail=json.dumps(r))
            self.log(f"behaviour cloning: {cfg.bc_steps} steps, loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")
            self._export_requested = True
        else:
            self._export_requested = False

        # ---------------------------------------------------------------- robots
        acfg = AssemblerConfig(frame_tolerance_s=cfg.frame_tolerance_s, pairing_timeout_s=cfg.pairing_timeout_s,
                               intervention_timeout_s=cfg.intervention_timeout_s, max_abs_reward=cfg.max_abs_reward)
        self.inbox: queue.Queue = queue.Queue(maxsize=INBOX)
        self._record_seq: dict[tuple, int] = {}  # (robot, agent publisher gid) -> last record sequence number
        self._seq = itertools.count()
        self.train_inbox: queue.Queue = queue.Queue(maxsize=TRAIN_INBOX)
        self.assemblers: dict[str, Assembler] = {}
        self._agent_clients: dict[str, object] = {}
        best_effort = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.BEST_EFFORT)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = []
        for ns in cfg.namespaces:
            src = ns or "/"
            self.assemblers[src] = Assembler(self.spec, b.cameras, self._encode, b.proprio, acfg, source=src)
            for cam, topic in zip(b.cameras, cfg.camera_topics):
                t = _join(ns, topic)
                comp = is_compressed_topic(t)
                self._sub(CompressedImage if comp else Image, t,
                          lambda m, info, s=src, c=cam, z=comp: self._put(info, s, "frame", c, z, m), best_effort)
            for kind, typ, topic, qos in (("joints", JointState, cfg.joint_states_topic, best_effort),
                                          ("record", JointState, cfg.action_record_topic, reliable),
                                          ("reward", Float64, cfg.reward_topic, reliable),
                                          ("success", Bool, cfg.success_topic, reliable),
                                          ("end", String, cfg.episode_end_topic, reliable),
                                          ("teleop", JointState, cfg.intervention_topic, best_effort)):
                self._sub(typ, _join(ns, topic), lambda m, info, s=src, k=kind: self._put(info, s, k, m), qos)
            agent = _join(ns, cfg.agent_node)
            self._agent_clients[agent] = self.create_client(SetParameters, f"{agent}/set_parameters")
        self._pub_status = self.create_publisher(String, "~/status", QoSProfile(depth=10))
        self.create_service(Trigger, "~/export_now", self._on_export_now)
        self.create_timer(cfg.status_period_s, self._publish_status)

        # ---------------------------------------------------------------- state for status / pushes
        self.exporting = threading.Event()
        self._export_thread: threading.Thread | None = None
        self.pushes: list[dict] = []  # in-flight and finished pushes (last few)
        self.last_export: dict = {}
        self.version_pushed = ""
        self.episodes_seen = 0
        self._threads = [threading.Thread(target=self._guard, args=(self._ingest_loop,), name="ingest", daemon=True),
                         threading.Thread(target=self._guard, args=(self._train_loop,), name="train", daemon=True)]
        self.store.start()
        for t in self._threads:
            t.start()
        self.log(f"finetune ready: robots {list(self.assemblers)}, agents {list(self._agent_clients)}, "
                 f"encoders on {self.engine.provider}, learner on {cfg.device}, out_dir {self.trainer.out_dir}")

    # ================================================================== helpers
    def log(self, msg: str) -> None:
        self.get_logger().info(msg)

    def _sub(self, typ, topic, cb, qos):
        self._subs.append(self.create_subscription(typ, topic, cb, qos))

    def _encode(self, images: dict) -> dict:
        return self.engine.embed(images)

    def _add_loaded(self, arr: dict, demo: bool) -> None:
        n = len(arr["reward"])
        for i in range(0, n, 10_000):
            self.trainer.add({k: v[i:i + 10_000] for k, v in arr.items() if k != "seq"}, demo=demo)

    def _guard(self, fn) -> None:
        """A worker thread that dies is a bug: log it loudly and keep the node (and the robot) alive."""
        try:
            fn()
        except Exception:  # noqa: BLE001
            self.get_logger().fatal(f"thread {threading.current_thread().name} crashed:\n{traceback.format_exc()}")
            with self._lock:
                self.counts[f"crashed_{threading.current_thread().name}"] += 1

    # ================================================================== callbacks: only enqueue
    def _put(self, info, source: str, kind: str, *args) -> None:
        """Queue a message with its publish time (DDS source timestamp): the ingest thread
        handles messages in publish order, because neither the executor's hand-over order
        nor the reception time survives a busy learner. A publisher whose clock is more than
        MAX_SKEW_NS off ours is counted and ordered by reception time instead."""
        now = time.time_ns()
        src = rcv = 0
        try:
            src, rcv = int(info["source_timestamp"]), int(info["received_timestamp"])
        except (KeyError, TypeError, ValueError):
            pass
        if src and rcv and abs(rcv - src) < MAX_SKEW_NS:
            t = src
        else:
            t = rcv or now
            if src and rcv:
                with self._lock:
                    self.counts["clock_skew"] += 1
        if kind == "record":  # the publisher's sequence number: a lost record breaks the chain
            try:
                args = (*args, str(info["publisher_gid"]), int(info["publication_sequence_number"]))
            except (KeyError, TypeError, ValueError):
                args = (*args, None, None)
        try:
            self.inbox.put_nowait((t, next(self._seq), now, source, kind, args))
        except queue.Full:
            with self._lock:
                self.counts[f"dropped_inbox_{kind}"] += 1

    # ================================================================== ingest thread
    def _handle(self, recv: int, source: str, kind: str, args) -> None:
        asm = self.assemblers[source]
        if kind == "frame":
            cam, comp, msg = args
            asm.add_frame(cam, FrameSample.from_msg(msg, recv, comp))
        elif kind == "joints":
            msg = args[0]
            asm.add_joints(JointSample.from_msg(msg, recv))
        elif kind == "record":
            m, gid, seq = args
            if seq is not None:  # records arrive here in publish order: a jump means some never came
                last = self._record_seq.get((source, gid))
                self._record_seq[(source, gid)] = seq
                if last is not None and seq > last + 1:
                    asm.records_lost(seq - last - 1)
            asm.add_record(recv, stamp_ns(m.header.stamp), m.header.frame_id, list(m.name), list(m.position),
                           list(m.velocity))
        elif kind == "reward":
            asm.add_reward(recv, args[0].data)
        elif kind == "success":
            asm.add_success(recv, args[0].data)
        elif kind == "end":
            asm.add_episode_end(recv, args[0].data)
        elif kind == "teleop":
            m = args[0]
            asm.add_teleop(recv, list(m.name), list(m.position))
        with self._lock:
            self.counts[f"received_{kind}"] += 1

    def _ingest_loop(self) -> None:
        """Messages in publish order: each is held ``reorder_window_s`` after it reached us
        (a backlog delivered at start-up or after a stall arrives in one burst, in whatever
        order the executor picks), and the held ones leave oldest publish time first. The
        assemblers' clock is ``now - reorder_window_s``."""
        hold = int(self.cfg.reorder_window_s * 1e9)
        heap: list = []
        while not self._stop.is_set():
            try:
                heapq.heappush(heap, self.inbox.get(timeout=0.01))
                while True:
                    heapq.heappush(heap, self.inbox.get_nowait())
            except queue.Empty:
                pass
            now = time.time_ns()
            watermark = now - hold
            while heap and heap[0][2] <= watermark:
                t, _n, _arrived, source, kind, args = heapq.heappop(heap)
                try:
                    self._handle(t, source, kind, args)
                except Exception as exc:  # noqa: BLE001 - a malformed message must not stop ingest
                    with self._lock:
                        self.counts["malformed_message"] += 1
                    self.get_logger().warning(f"malformed {kind} message from {source}: {exc}",
                                              throttle_duration_sec=5.0)
            for asm in self.assemblers.values():
                for tr in asm.poll(watermark):
                    rec = tr.to_record()
                    why = check_record(self.spec, rec)
                    if why:
                        asm.reject("invalid_transition", why)
                        continue
                    self.store.append(rec)  # queued; on a failing disk kept up to a bound, then counted
                    try:
                        self.train_inbox.put_nowait(rec)
                    except queue.Full:
                        with self._lock:
                            self.counts["dropped_train_inbox"] += 1
                for ep in asm.take_episodes():
                    self.episodes_seen += 1
                    self.trainer.episode(ep)

    # ================================================================== training thread
    def _drain(self) -> int:
        recs = []
        while len(recs) < 4096:
            try:
                recs.append(self.train_inbox.get_nowait())
            except queue.Empty:
                break
        if recs:
            self.trainer.add({k: np.stack([r[k] for r in recs]) for k in recs[0]})
        return len(recs)

    def _train_loop(self) -> None:
        tr = self.trainer
        cfg = self.cfg
        while not self._stop.is_set():
            self._drain()
            if tr.ready():
                tr.step()
                due = tr.updates % cfg.export_every_updates == 0
            else:
                due = False
                self._stop.wait(0.005)
            if (due or self._export_requested) and not self.exporting.is_set() and len(tr.holdout()):
                self._export_requested = False
                self.exporting.set()
                version, path = tr.next_version()
                snap = tr.snapshot()
                holdout = tr.holdout()
                tr.save_checkpoint()
                self._export_thread = threading.Thread(
                    target=self._guard, args=(lambda: self._export(snap, version, path, holdout),), name="export",
                    daemon=True)
                self._export_thread.start()
            elif tr.checkpoint_due() and tr.updates > 0:
                tr.save_checkpoint()
        if tr.updates > 0:
            tr.save_checkpoint()

    # ================================================================== export, validate, push
    def _export(self, policy, version: str, path: Path, holdout: dict) -> None:
        from ..learn.validate import export_policy, reject_folder, validate_bundle

        tr = self.trainer
        try:
            t0 = time.perf_counter()
            try:
                export_policy(policy, self.bundle, path, version,
                              recipe={"command": "finetune_node", "base": f"{self.bundle.name}:{self.bundle.version}",
                                      "updates": tr.updates, "seed": self.cfg.seed})
            except Exception as exc:  # noqa: BLE001 - export failures are logged, never pushed
                tr.event("export_failed", version, str(path), False, time.perf_counter() - t0, str(exc))
                self.get_logger().error(f"export of {version} failed: {exc}")
                return
            t_exp = time.perf_counter() - t0
            rep = validate_bundle(path, self.bundle, holdout, policy=policy, providers=("cpu",))
            tr.event("validated", version, str(path), rep.ok, rep.seconds, rep.summary())
            self.last_export = {"version": version, "path": str(path), "valid": rep.ok,
                                "export_s": round(t_exp, 3), "validate_s": round(rep.seconds, 3),
                                "exported_at": time.time()}
            if not rep.ok:
                dst = reject_folder(path)
                self.get_logger().error(f"policy {version} NOT pushed: {rep.summary()} (kept as {dst})")
                with self._lock:
                    self.counts["exports_rejected"] += 1
                return
            with self._lock:
                self.counts["exports_valid"] += 1
            self.log(f"exported {version}: {rep.summary()}")
            if self.cfg.push:
                self._push(version, path)
        finally:
            self.exporting.clear()

    def _agent_path(self, path: Path) -> str:
        if not self.cfg.agent_bundle_root:
            return str(path)
        return str(Path(self.cfg.agent_bundle_root) / path.relative_to(self.trainer.out_dir))

    def _push(self, version: str, path: Path) -> None:
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=self._agent_path(path))
        for agent, client in self._agent_clients.items():
            rec = {"agent": agent, "version": version, "sent": time.time(), "done": None, "ok": None, "reason": ""}
            self.pushes = (self.pushes + [rec])[-20:]
            if not client.service_is_ready():
                rec.update(done=time.time(), ok=False, reason="agent not available")
                self.trainer.event("push", version, str(path), False, 0.0, f"{agent}: not available")
                self.get_logger().warning(f"{agent} is not available; policy {version} not pushed to it",
                                          throttle_duration_sec=10.0)
                continue
            req = SetParameters.Request(parameters=[ParameterMsg(name="bundle", value=value)])
            fut = client.call_async(req)
            fut.add_done_callback(lambda f, r=rec, p=path: self._pushed(f, r, p))

    def _pushed(self, fut, rec: dict, path: Path) -> None:
        rec["done"] = time.time()
        try:
            res = fut.result().results[0]
            rec["ok"], rec["reason"] = bool(res.successful), res.reason
        except Exception as exc:  # noqa: BLE001 - cancelled / service gone
            rec["ok"], rec["reason"] = False, str(exc)
        dt = rec["done"] - rec["sent"]
        self.trainer.event("push", rec["version"], str(path), rec["ok"], dt, f"{rec['agent']}: {rec['reason']}")
        if rec["ok"]:
            self.version_pushed = rec["version"]
            self.log(f"{rec['agent']} now runs {rec['version']} (answered in {dt:.2f} s)")
        else:
            self.get_logger().error(f"{rec['agent']} refused {rec['version']}: {rec['reason']}")

    def _check_pushes(self) -> None:
        now = time.time()
        for rec in self.pushes:
            if rec["done"] is None and now - rec["sent"] > self.cfg.push_timeout_s:
                rec.update(done=now, ok=False, reason=f"no answer within {self.cfg.push_timeout_s:g} s")
                self.get_logger().error(f"{rec['agent']} did not answer the push of {rec['version']}")

    def _on_export_now(self, req, resp):
        self._export_requested = True
        resp.success = True
        resp.message = f"export requested at update {self.trainer.updates}"
        return resp

    # ================================================================== status
    def status(self) -> dict:
        self._check_pushes()
        tr = self.trainer
        rejected: collections.Counter = collections.Counter()
        accepted = records = pending = superseded = 0
        for asm in self.assemblers.values():
            rejected.update(dict(asm.rejected))
            accepted += asm.accepted
            records += asm.records_received
            pending += asm.pending
            superseded += asm.superseded
        with self._lock:
            counts = dict(self.counts)
        return {
            "time": time.time(), "counts": counts, "records": records, "accepted": accepted,
            "rejected": dict(rejected), "superseded": superseded, "pairing": pending,
            "store": self.store.stats(), "inbox": self.inbox.qsize(), "updates": tr.updates,
            "resumed_from": tr.resumed_from, "updates_per_s": round(tr.updates_per_s, 1),
            "online": len(tr.replay.online), "demos": len(tr.replay.demos), "received": tr.received,
            "exports": tr.exports, "last_export": self.last_export, "version_pushed": self.version_pushed,
            "pushes": self.pushes[-3:], "episodes": self.episodes_seen,
            "success_rate_20": float(np.mean(tr.episode_window)) if tr.episode_window else None,
            "temperature": tr.last_metrics.get("temperature"), "loss_critic": tr.last_metrics.get("loss_critic"),
        }

    def _publish_status(self) -> None:
        try:
            self._pub_status.publish(String(data=json.dumps(self.status(), default=str)))
        except Exception as exc:  # noqa: BLE001 - never let a status hiccup take the node down
            self.get_logger().warning(f"status: {exc}", throttle_duration_sec=10.0)

    # ================================================================== shutdown
    def shutdown(self) -> None:
        """Stop ingest and training, let an export in progress finish (native ONNX / torch code
        must not be torn down mid-call), flush the store, write a last checkpoint."""
        t0 = time.monotonic()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10.0)
            if t.is_alive():
                self.get_logger().error(f"shutdown: thread {t.name} still running after 10 s")
        if self._export_thread is not None and self._export_thread.is_alive():
            self.log("waiting for the export in progress to finish")
            self._export_thread.join(timeout=120.0)
        t1 = time.monotonic()
        self.store.close()
        t2 = time.monotonic()
        self.trainer.close()
        self.log(f"shut down in {time.monotonic() - t0:.1f} s (threads {t1 - t0:.1f} s, store {t2 - t1:.1f} s, "
                 f"logs {time.monotonic() - t2:.1f} s)")


def main(argv=None) -> int:
    """Entry point ``finetune_node`` (``ros2 run wsa_ros finetune_node --ros-args --params-file ...``)."""
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    node = executor = None
    try:
        try:
            node = FinetuneNode()
        except (ConfigError, BundleError, EngineError, StoreError, OSError) as exc:
            rclpy.logging.get_logger(FinetuneConfig.NODE).fatal(f"cannot start: {exc}")
            return 1
        # every callback only queues or flips a flag (work runs on the ingest / train / export
        # threads), so one executor thread serves them; rclpy's multi-threaded executor took about
        # 45% of this process's CPU samples (py-spy, during the demo), and with one thread the
        # learner's updates in a 12-minute demo rose from 2302 to 4034
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # From here a signal only sets a flag, checked between bounded waits (on sim time a
        # stopped /clock also stops every timer). Raised inside a callback, KeyboardInterrupt
        # could leave an rclpy handle marked in use, and tearing the node down then hangs.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
