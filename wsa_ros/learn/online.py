"""The online learner, ROS-free: what ``finetune_node`` runs, minus the topics.

    learner = OnlineLearner(cfg, push=send_to_agents, log=logger.info)
    learner.start()
    learner.put(robot, kind, payload, src_ns, recv_ns, now_ns, pub)   # from subscriptions
    ...
    learner.close()

Three threads, none of which the robot ever waits for::

    ingest:  Ingest.step (publish order, pairing, checks; wsa_ros.learn.ingest) -> Engine.embed
             once per step -> ReplayStore.append (fsync'd by the store's own thread) -> train queue
    train:   Trainer.add / step (replay + SAC/RLPD); every export_every_updates a snapshot ->
    export:  export bundle -> validate (wsa_ros.learn.validate) -> push(version, path)

``push`` is the node's: it asks each agent to swap the bundle in and reports every answer
with :meth:`OnlineLearner.pushed`; an agent that never answers is marked failed after
``push_timeout_s``. Start-up: the bundle, its frozen encoders, the durable store (its stored
transitions reloaded into the replay), the demonstrations of ``demo_dir`` and, on a fresh
run with ``learner.bc_steps``, behaviour cloning on them first.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsa_ros.config import ConfigError, FinetuneConfig, join_ns, resolve_bundle
from wsa_ros.learn.ingest import Ingest
from wsa_ros.learn.store import ReplayStore
from wsa_ros.learn.trainer import Trainer
from wsa_ros.learn.transitions import AssemblerConfig, TransitionSpec
from wsa_ros.runtime.bundle import load_bundle
from wsa_ros.runtime.engine import Engine

TRAIN_INBOX = 100_000  # transitions waiting for the training thread
LOAD_CHUNK = 10_000


def answered_by_records(pushes: list[dict], acting: dict[str, tuple[str, str]]) -> list[tuple[dict, bool, str]]:
    """push_via topic: which pending pushes (``done`` None, oldest first) the agents' action
    records answer, as (push, ok, reason); ``acting``: agent -> (version, manifest sha256) its
    newest record carries. A push is answered when its agent acts on its version (refused when
    the records name another manifest under that version: a different policy under its name),
    or on a version pushed to it later: the agent went past it between two looks, so waiting
    for it would time out a push that in fact arrived."""
    out = []
    for i, r in enumerate(pushes):
        now, sha = acting.get(r["agent"], ("", ""))
        if r["done"] is not None or not now:
            continue
        if now == r["version"]:
            want = r.get("sha256", "")
            if want and sha and sha != want:
                out.append((r, False, f"acting under version {now} with manifest sha256 {sha[:12]}, not the pushed "
                                      f"{want[:12]}: a different policy under that version"))
            else:
                out.append((r, True, "acting (its action records carry the version)"))
        elif now in {q["version"] for q in pushes[i + 1:] if q["agent"] == r["agent"]}:
            out.append((r, True, f"superseded: acting on {now}, pushed after it"))
    return out


class OnlineLearner:
    def __init__(self, cfg: FinetuneConfig, push: Callable[[str, str], None] | None = None, log=None,
                 error=None):
        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self.error = error or self.log
        self.push_fn = push
        torch.set_num_threads(cfg.learner.torch_threads)
        self._stop = threading.Event()
        self.training = threading.Event()  # set: updates, exports and pushes run (set_training)
        self._trained_before = False
        self._lock = threading.Lock()
        self.crashes: dict[str, int] = {}

        # ---------------------------------------------------------------- bundle, encoders, store
        self.bundle = b = load_bundle(resolve_bundle(cfg.bundle))
        if len(cfg.camera_topics) != len(b.cameras):
            raise ConfigError(f"the bundle reads cameras {b.cameras} but camera_topics has {cfg.camera_topics}; "
                              "give one topic per camera in that order")
        self.engine = Engine(b, providers=cfg.providers, threads=1, warmup=True)
        self.spec = TransitionSpec.from_bundle(b)
        self.store = ReplayStore(cfg.store_dir, self.spec.schema(), self.spec.fingerprint(),
                                 meta={"bundle": f"{b.name}:{b.version}"}, flush_period_s=cfg.flush_period_s,
                                 on_error=self.error)
        self.log(f"replay store {self.store.root}: {self.store.count} transitions on disk"
                 + (f", removed {self.store.torn_removed} torn chunk file(s)" if self.store.torn_removed else ""))

        # ---------------------------------------------------------------- learner and its data
        self.trainer = tr = Trainer(b, cfg, log=self.log)
        self._add_loaded(self.store.read(last_n=cfg.learner.capacity), demo=False)
        if self.store.corrupt:
            self.error(f"{self.store.corrupt} corrupt chunk(s) in {self.store.root} skipped (renamed *.corrupt)")
        tr.received = max(tr.received, self.store.count)
        self.demo_count = 0
        if cfg.demo_dir:
            arr = ReplayStore(cfg.demo_dir, self.spec.schema(), self.spec.fingerprint(), readonly=True).read()
            self._add_loaded(arr, demo=True)
            self.demo_count = len(arr["reward"])
            self.log(f"demonstrations {cfg.demo_dir}: {self.demo_count} transitions")
        self.log(f"learner: {len(tr.replay.online)} online transitions in memory, {len(tr.replay.demos)} "
                 f"demonstrations, {tr.updates} updates so far")
        self._export_requested = False
        if cfg.learner.bc_steps and tr.updates == 0 and len(tr.replay.demos):
            self._clone_demonstrations()

        # ---------------------------------------------------------------- robots
        acfg = AssemblerConfig(frame_tolerance_s=cfg.frame_tolerance_s, pairing_timeout_s=cfg.pairing_timeout_s,
                               intervention_timeout_s=cfg.intervention_timeout_s, max_abs_reward=cfg.max_abs_reward)
        self.sources = [ns or "/" for ns in cfg.namespaces]
        self.agents = [join_ns(ns, cfg.agent_node) for ns in cfg.namespaces]
        self._source_of = dict(zip(self.agents, self.sources))
        self.ingest = Ingest(self.spec, b.cameras, self.engine.embed, b.proprio, acfg, self.sources,
                             int(cfg.reorder_window_s * 1e9))
        self.train_inbox: queue.Queue = queue.Queue(maxsize=TRAIN_INBOX)

        # ---------------------------------------------------------------- exports and pushes
        self.exporting = threading.Event()
        self._export_thread: threading.Thread | None = None
        self.pushes: list[dict] = []  # in-flight and finished pushes (last few)
        self.answers: dict[str, dict] = {}  # agent -> its last finished push (taken, refused or unanswered)
        self.last_export: dict = {}
        self.version_pushed = ""
        self.episodes_seen = 0
        self.signing_key = None  # signs each validated export (manifest.sig) when signing_key is set
        if cfg.signing_key:
            from wsa_ros.runtime.signing import load_private_key

            self.signing_key = load_private_key(Path(cfg.signing_key).expanduser())
        self.gate = None  # keep the best policy acting (wsa_ros.learn.gate), when gate_episodes > 0
        if cfg.gate_episodes > 0:
            from wsa_ros.learn.gate import PolicyGate

            self.gate = PolicyGate(cfg.gate_episodes, cfg.gate_margin)
            self.gate.start(b.version, str(resolve_bundle(cfg.bundle)))
        self._gate_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._guard, args=(self._ingest_loop,), name="ingest", daemon=True),
                         threading.Thread(target=self._guard, args=(self._train_loop,), name="train", daemon=True)]

    # ================================================================== set-up
    def _add_loaded(self, arr: dict, demo: bool) -> None:
        n = len(arr["reward"])
        for i in range(0, n, LOAD_CHUNK):
            self.trainer.add({k: v[i:i + LOAD_CHUNK] for k, v in arr.items() if k != "seq"}, demo=demo)

    def _clone_demonstrations(self) -> None:
        from wsa_ros.learn.bc import behaviour_clone

        b, sac, tr = self.bundle, self.cfg.learner, self.trainer
        r = behaviour_clone(tr.learner.policy, tr.replay, sac.bc_steps, sac.batch_size, sac.lr,
                            b.proprio.mean if b.proprio else None, b.proprio.std if b.proprio else None,
                            seed=sac.seed)
        tr.event("bc", detail=json.dumps(r))
        self.log(f"behaviour cloning: {sac.bc_steps} steps, loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")
        self._export_requested = True

    def start(self, training: bool = True) -> None:
        """Start storing what arrives, and training unless ``training=False`` (a managed node's
        configure: transitions are stored and kept for training, and updates, exports and pushes
        wait for :meth:`set_training`)."""
        self.store.start()
        for t in self._threads:
            t.start()
        if training:
            self.set_training(True)

    def set_training(self, on: bool) -> str:
        """Train, export and push (on), or pause after the update in progress (off; an export
        already under way still finishes and pushes). Returns what happened."""
        if not on:
            self.training.clear()
            return f"training paused at update {self.trainer.updates}; transitions are still stored"
        first = not self._trained_before
        self._trained_before = True
        self.training.set()
        if first and self.cfg.push and self.cfg.push_via == "topic":
            self.resend_last_push()
        return f"training from update {self.trainer.updates}"

    def _guard(self, fn) -> None:
        """A worker thread that dies is a bug: log it loudly and keep the node (and the robot) alive."""
        try:
            fn()
        except Exception:  # noqa: BLE001
            name = threading.current_thread().name
            self.error(f"thread {name} crashed:\n{traceback.format_exc()}")
            with self._lock:
                self.crashes[name] = self.crashes.get(name, 0) + 1

    # ================================================================== inputs
    def put(self, source: str, kind: str, payload: tuple, src_ns: int | None, recv_ns: int | None,
            pub: tuple | None = None) -> None:
        """A message of robot ``source`` (see :meth:`wsa_ros.learn.ingest.Ingest.put`)."""
        self.ingest.put(source, kind, payload, src_ns, recv_ns, time.time_ns(), pub)

    def request_export(self) -> str:
        self._export_requested = True
        return f"export requested at update {self.trainer.updates}" + (
            "" if self.training.is_set() else " (training is paused: it runs after the next activate)")

    # ================================================================== ingest thread
    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            records, episodes = self.ingest.step(time.time_ns(), wait_s=0.01, on_error=self.error)
            for rec in records:
                self.store.append(rec)  # queued; on a failing disk kept up to a bound, then counted
                try:
                    self.train_inbox.put_nowait(rec)
                except queue.Full:
                    self.ingest.count("dropped_train_inbox")
            for ep in episodes:
                self.episodes_seen += 1
                self.trainer.episode(ep)
                if self.gate is not None:
                    with self._gate_lock:
                        was, back = self.gate.current, self.gate.rollbacks
                        push = self.gate.episode(ep.versions, ep.success)
                    if push is not None:  # a return to the best version, or the held export's turn
                        self._push_now(*push, why=f"gate: {was} judged on its episodes"
                                       if self.gate.rollbacks > back else "")

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

    def export_due(self, updated: bool) -> bool:
        """The schedule: every ``export_every_updates`` updates, or when asked (``~/export_now``,
        after behaviour cloning), one export at a time, once there are held-out observations."""
        tr = self.trainer
        due = updated and tr.updates % self.cfg.export_every_updates == 0
        return (due or self._export_requested) and not self.exporting.is_set() and len(tr.holdout()) > 0

    def _train_loop(self) -> None:
        tr = self.trainer
        while not self._stop.is_set():
            self._drain()
            if not self.training.is_set():  # paused: what arrives is kept for when training resumes
                self._stop.wait(0.05)
                continue
            updated = tr.ready()
            if updated:
                tr.step()
            else:
                self._stop.wait(0.005)
            if self.export_due(updated):
                self._export_requested = False
                self.exporting.set()
                version, path = tr.next_version()
                snap, holdout = tr.snapshot(), tr.holdout()
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
        from wsa_ros.learn.validate import export_policy, reject_folder, validate_bundle

        tr, b = self.trainer, self.bundle
        try:
            t0 = time.perf_counter()
            try:
                export_policy(policy, b, path, version, recipe={
                    "command": "finetune_node", "base": f"{b.name}:{b.version}", "updates": tr.updates,
                    "seed": self.cfg.learner.seed})
            except Exception as exc:  # noqa: BLE001 - export failures are logged, never pushed
                tr.event("export_failed", version, str(path), False, time.perf_counter() - t0, str(exc))
                self.error(f"export of {version} failed: {exc}")
                return
            t_exp = time.perf_counter() - t0
            rep = validate_bundle(path, b, holdout, policy=policy, providers=("cpu",))
            tr.event("validated", version, str(path), rep.ok, rep.seconds, rep.summary())
            self.last_export = {"version": version, "path": str(path), "valid": rep.ok, "export_s": round(t_exp, 3),
                                "validate_s": round(rep.seconds, 3), "exported_at": time.time()}
            if not rep.ok:
                dst = reject_folder(path)
                self.error(f"policy {version} NOT pushed: {rep.summary()} (kept as {dst})")
                self.ingest.count("exports_rejected")
                return
            self.ingest.count("exports_valid")
            if self.signing_key is not None:
                from wsa_ros.runtime.signing import sign_bundle

                sig = sign_bundle(path, self.signing_key)
                rep_sig = f"; signed by key {sig.key_id}, manifest sha256 {sig.manifest_sha256[:12]}"
            else:
                rep_sig = ""
            self.log(f"exported {version}: {rep.summary()}{rep_sig}")
            if self.gate is None:
                self._push_now(version, str(path))
            else:
                with self._gate_lock:
                    push = self.gate.offer(version, str(path))
                if push is None:
                    self.log(f"{version} held: {self.gate.current} has run {self.gate.since_push} of the "
                             f"{self.gate.window} episodes it is judged on")
                else:
                    self._push_now(*push)
        finally:
            self.exporting.clear()

    def _push_now(self, version: str, path: str, why: str = "") -> None:
        if why:
            g = self.gate.summary()["versions"]
            self.log(f"{why}: success {g}; back to {version}")
            self.ingest.count("gate_rollbacks")
        elif self.gate is not None:
            self.log(f"gate: pushing {version}")
        if self.cfg.push and self.push_fn is not None:
            if self.cfg.push_via == "topic":  # the bundle itself travels; remembered so a restart sends it again
                self._remember_push(version, path)
                self.push_fn(version, str(path))
            else:
                self.push_fn(version, self.agent_path(Path(path)))

    @property
    def _pushed_file(self) -> Path:
        return self.trainer.out_dir / "learner" / "pushed.json"

    def _remember_push(self, version: str, path: str) -> None:
        f = self._pushed_file
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": version, "path": str(path)}))
        os.replace(tmp, f)

    def resend_last_push(self) -> bool:
        """push_via topic: publish the last pushed bundle again (a learner restarted, perhaps
        mid-transfer); False when there is none or it is gone from out_dir."""
        try:
            last = json.loads(self._pushed_file.read_text())
            version, path = str(last["version"]), str(last["path"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not Path(path, "manifest.yaml").is_file():
            self.error(f"the last pushed bundle {version} is gone from {path}; not sent again")
            return False
        self.log(f"sending the last pushed policy {version} again ({path})")
        self._push_now(version, path)
        return True

    def agent_path(self, path: Path) -> str:
        """Where the agents see an exported bundle (``agent_bundle_root``)."""
        if not self.cfg.agent_bundle_root:
            return str(path)
        try:
            rel = Path(path).relative_to(self.trainer.out_dir)
        except ValueError:  # not an export (the gate's return to the starting bundle): the agents' own path
            return str(path)
        return str(Path(self.cfg.agent_bundle_root) / rel)

    def push_sent(self, agent: str, version: str, sha256: str = "") -> dict:
        """A push on its way; ``sha256``: the bundle's manifest digest, which the agent's action
        records must carry once it acts on ``version`` (push_via topic)."""
        rec = {"agent": agent, "version": version, "sha256": sha256, "sent": time.time(), "done": None, "ok": None,
               "reason": ""}
        with self._lock:
            self.pushes = (self.pushes + [rec])[-20:]
        return rec

    def pushed(self, rec: dict, ok: bool, reason: str, path: str = "") -> None:
        """The answer to a push (``push_sent``'s record): logged and kept for ~/status."""
        rec.update(done=time.time(), ok=bool(ok), reason=reason)
        self.answers[rec["agent"]] = rec
        dt = rec["done"] - rec["sent"]
        self.trainer.event("push", rec["version"], path, rec["ok"], dt, f"{rec['agent']}: {reason}")
        if ok:
            self.version_pushed = rec["version"]
            self.log(f"{rec['agent']} now runs {rec['version']} (answered in {dt:.2f} s)")
        else:
            self.error(f"{rec['agent']} refused {rec['version']}: {reason}")

    def _check_pushes(self) -> None:
        now = time.time()
        if self.cfg.push_via == "topic":  # taken once the agent's own action records carry the version
            asm = self.ingest.assemblers
            acting = {agent: (asm[src].last_version, asm[src].last_policy_sha256)
                      for agent, src in zip(self.agents, self.sources)}
            with self._lock:
                answered = answered_by_records(self.pushes, acting)
            for rec, ok, reason in answered:
                self.pushed(rec, ok, reason, "")
        with self._lock:
            late = [r for r in self.pushes if r["done"] is None and now - r["sent"] > self.cfg.push_timeout_s]
        robots = self.ingest.robots(time.time_ns()) if late else {}
        for rec in late:
            age = robots.get(self._source_of.get(rec["agent"], ""), {}).get("last_record_age_s")
            rec.update(done=now, ok=False, reason=f"no answer within {self.cfg.push_timeout_s:g} s (its last action "
                       f"record {'never came' if age is None else f'{age:g} s ago'})")
            self.answers[rec["agent"]] = rec
            self.error(f"{rec['agent']} did not answer the push of {rec['version']}: {rec['reason']}")

    # ================================================================== status
    def status(self) -> dict:
        self._check_pushes()
        tr = self.trainer
        ing = self.ingest.summary()
        counts = {**ing["counts"], **{f"crashed_{k}": v for k, v in self.crashes.items()}}
        return {
            "time": time.time(), "counts": counts, "records": ing["records"], "accepted": ing["accepted"],
            "rejected": ing["rejected"], "superseded": ing["superseded"], "pairing": ing["pairing"],
            "store": self.store.stats(), "inbox": ing["inbox"], "updates": tr.updates,
            "resumed_from": tr.resumed_from, "updates_per_s": round(tr.updates_per_s, 1),
            "online": len(tr.replay.online), "demos": len(tr.replay.demos), "received": tr.received,
            "training": self.training.is_set(), "exports": tr.exports, "last_export": self.last_export,
            "version_pushed": self.version_pushed,
            "pushes": self.pushes[-max(3, 2 * len(self.agents)):], "episodes": self.episodes_seen,
            "robots": self._robots(),
            "success_rate_20": float(np.mean(tr.episode_window)) if tr.episode_window else None,
            "temperature": tr.last_metrics.get("temperature"), "loss_critic": tr.last_metrics.get("loss_critic"),
            "gate": self.gate.summary() if self.gate is not None else None,
        }

    def _robots(self) -> dict:
        """Per robot: its records and transitions, the version acting, the age of its newest
        record, its agent and that agent's last answered push."""
        robots = self.ingest.robots(time.time_ns())
        for agent, src in self._source_of.items():
            last = self.answers.get(agent)
            robots[src].update(agent=agent, last_push={k: last[k] for k in ("version", "ok", "reason", "done")}
                               if last else None)
        return robots

    # ================================================================== shutdown
    def close(self) -> None:
        """Stop ingest and training, let an export in progress finish (native ONNX / torch code
        must not be torn down mid-call), flush the store, write a last checkpoint."""
        t0 = time.monotonic()
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=10.0)
                if t.is_alive():
                    self.error(f"shutdown: thread {t.name} still running after 10 s")
        if self._export_thread is not None and self._export_thread.is_alive():
            self.log("waiting for the export in progress to finish")
            self._export_thread.join(timeout=120.0)
        t1 = time.monotonic()
        self.store.close()
        t2 = time.monotonic()
        self.trainer.close()
        self.log(f"shut down in {time.monotonic() - t0:.1f} s (threads {t1 - t0:.1f} s, store {t2 - t1:.1f} s, "
                 f"logs {time.monotonic() - t2:.1f} s)")

