"""``wsa import-demos``: rosbag2 recordings (MCAP or sqlite3) -> a demonstration store.

    wsa import-demos BAG [BAG ...] --out DEMO_DIR [--bundle B] [--config config/finetune.yaml]
        [--command-topic T] [--reward-topic T] [--episode-end-topic T] [--success-topic T]
        [--camera-topics T ...] [--joint-states-topic T] [--episode-steps N]
        [--bc-steps N --bc-out BUNDLE_DIR] [--seed S]

Bags are read with :mod:`wsa_ros.runtime.bags` (``rosbags``, no ROS install needed), in their
deterministic order, and every message goes through the same :class:`Assembler` as the live
learner, so a bag recorded from a running agent imports exactly the transitions the learner
would have built live. The command topic may be:

* the agent's ``~/action_record`` (sensor_msgs/JointState): paired by its frame stamp;
* ``std_msgs/Float64MultiArray`` (forward_command_controller; values in the bundle's action
  joint order) or ``trajectory_msgs/JointTrajectory`` (first point's positions or velocities,
  per the bundle's action mode; joints by name) or a sensor_msgs/JointState command: paired
  with the newest frame recorded at or before the command (the agent's sync rule).

Rewards come from the reward topic (std_msgs/Float64; required), episode ends from the
episode-end topic (std_msgs/String) when the bag has one, else every ``--episode-steps``
commands (a fixed-length episode whose final frame was not recorded: its last step is
dropped because it has no next observation), else the whole bag is one episode. Every
transition is flagged as a demonstration (``intervention``). Frames are encoded once with
the bundle's frozen encoders. ``--bc-steps`` then pre-trains the policy by behaviour cloning
on the store and exports it as a new bundle (``--bc-out``), validated like the learner's.

Exit codes: 0 imported; 1 bag, bundle or store error (the message names it); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

from wsa_ros.runtime.bags import BagError, find_bags, iter_messages, summary
from wsa_ros.runtime.bundle import BundleError, load_bundle
from wsa_ros.config import ConfigError, FinetuneConfig, load, resolve_bundle
from wsa_ros.runtime.engine import Engine, EngineError
from wsa_ros.runtime.observation import FrameSample, JointSample, is_compressed_topic, stamp_ns
from wsa_ros.learn.store import ReplayStore, StoreError
from wsa_ros.learn.transitions import Assembler, AssemblerConfig, TransitionSpec, check_record

COMMAND_TYPES = ("sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray", "trajectory_msgs/msg/JointTrajectory")


class DemoImportError(RuntimeError):
    """A bag that cannot be imported as demonstrations (names the bag and the fix)."""


def import_bag(path, bundle, engine: Engine, store: ReplayStore, topics: dict, episode_steps: int = 0,
               acfg: AssemblerConfig | None = None) -> dict:
    """Import one bag into ``store``; returns counts (transitions, episodes, rejections)."""
    info = summary(path)
    have = info.topics
    acfg = acfg or AssemblerConfig()
    cams = dict(zip(bundle.cameras, topics["cameras"]))
    reward = topics["reward"] if acfg.require_reward or topics["reward"] in have else None
    need = list(cams.values()) + [topics["command"]] + ([reward] if reward else [])
    if bundle.proprio is not None:
        need.append(topics["joints"])
    missing = [t for t in need if t not in have]
    if missing:
        raise DemoImportError(f"{path}: topic(s) {missing} not in the bag (it has {sorted(have)}); pass the right "
                           "--camera-topics / --joint-states-topic / --command-topic / --reward-topic")
    cmd_type = have[topics["command"]].msgtype
    if cmd_type not in COMMAND_TYPES:
        raise DemoImportError(f"{path}: command topic {topics['command']} carries {cmd_type}; expected one of "
                           f"{COMMAND_TYPES}")
    record_topic = cmd_type == "sensor_msgs/msg/JointState" and topics.get("command_is_record", True)
    optional = [t for t in (topics.get("episode_end"), topics.get("success")) if t and t in have and have[t].count]
    end_topic = topics.get("episode_end") if topics.get("episode_end") in optional else None
    spec = TransitionSpec.from_bundle(bundle)
    asm = Assembler(spec, bundle.cameras, engine.embed, bundle.proprio, acfg, source=Path(path).name)
    topic_cam = {t: c for c, t in cams.items()}
    sel = list(cams.values()) + [topics["command"]] + ([reward] if reward else []) + optional
    if bundle.proprio is not None or topics["joints"] in have:
        sel.append(topics["joints"])
    joints = list(spec.action_joints)
    steps_in_episode = 0
    n = 0
    last_t = 0
    for m in iter_messages(path, topics=sorted(set(sel)), decode=True):
        t = m.timestamp
        last_t = t
        if m.topic in topic_cam:
            asm.add_frame(topic_cam[m.topic], FrameSample.from_msg(m.msg, t, is_compressed_topic(m.topic)))
        elif m.topic == topics["joints"]:
            asm.add_joints(JointSample.from_msg(m.msg, t))
        elif m.topic == topics["command"]:
            if episode_steps and not end_topic and steps_in_episode >= episode_steps:
                asm.add_episode_end(t, "truncated", final_frame=False)
                steps_in_episode = 0
            steps_in_episode += 1
            msg = m.msg
            if record_topic:
                stamp = stamp_ns(msg.header.stamp)
                if stamp == 0:  # a JointState command without a stamp: the sync rule
                    stamp = asm.newest_frame_stamp()
                asm.add_record(t, stamp, msg.header.frame_id or "demo", list(msg.name), list(msg.position),
                               list(msg.velocity) if len(msg.velocity) == len(msg.name) else [])
            else:
                if cmd_type == "std_msgs/msg/Float64MultiArray":
                    names, values = joints, list(msg.data)
                else:  # JointTrajectory
                    pt = msg.points[0] if len(msg.points) else None
                    vals = [] if pt is None else (pt.positions if bundle.action.mode == "position" else pt.velocities)
                    names, values = list(msg.joint_names), list(vals)
                asm.add_record(t, asm.newest_frame_stamp(), "demo", names, values)
        elif m.topic == reward:
            asm.add_reward(t, m.msg.data)
        elif m.topic == topics.get("success"):
            asm.add_success(t, m.msg.data)
        elif m.topic == end_topic:
            asm.add_episode_end(t, m.msg.data)
            steps_in_episode = 0
        for tr in asm.poll(t):
            tr.intervention = True  # demonstrations
            rec = tr.to_record()
            why = check_record(spec, rec)
            if why:
                asm.reject("invalid_transition", why)
                continue
            store.append(rec)
            n += 1
    for tr in asm.poll(last_t + 10**12):  # whatever still waits for a frame: resolve or time out
        tr.intervention = True
        store.append(tr.to_record())
        n += 1
    asm.finish()
    store.flush()
    if store.error:
        raise DemoImportError(store.error)
    return {"bag": str(path), "transitions": n, "records": asm.records_received, "episodes": len(asm.episodes),
            "rejected": dict(asm.rejected), "superseded": asm.superseded}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wsa import-demos", description=__doc__.split("\n\n")[0])
    ap.add_argument("bags", nargs="+", help="bag folders or .mcap/.db3 files (a folder of bags is expanded)")
    ap.add_argument("--out", required=True, help="demonstration store folder (created or appended to)")
    ap.add_argument("--bundle", default=None, help="bundle whose encoders embed the frames (default: the config's)")
    ap.add_argument("--config", default=None, help="finetune ROS-params YAML for the topic names and the bundle")
    ap.add_argument("--camera-topics", nargs="+", default=None)
    ap.add_argument("--joint-states-topic", default=None)
    ap.add_argument("--command-topic", default=None,
                    help="action record (JointState) or commands (Float64MultiArray / JointTrajectory); default: "
                         "the config's action_record_topic if the bag has it, else "
                         "/forward_command_controller/commands")
    ap.add_argument("--reward-topic", default=None)
    ap.add_argument("--episode-end-topic", default=None)
    ap.add_argument("--success-topic", default=None)
    ap.add_argument("--episode-steps", type=int, default=0, help="split into episodes of N commands when the bag "
                                                                 "has no episode-end topic")
    ap.add_argument("--bc-steps", type=int, default=0, help="behaviour-cloning steps after the import")
    ap.add_argument("--bc-out", default=None, help="bundle folder for the behaviour-cloned policy")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.bc_steps and not args.bc_out:
        ap.error("--bc-steps needs --bc-out (where to write the pre-trained bundle)")
    if args.episode_steps < 0:
        ap.error("--episode-steps must be >= 0")
    try:
        cfg = load(args.config, FinetuneConfig) if args.config else FinetuneConfig()
        bundle = load_bundle(resolve_bundle(args.bundle if args.bundle is not None else cfg.bundle))
        engine = Engine(bundle, providers=cfg.providers, threads=1, warmup=True)
        spec = TransitionSpec.from_bundle(bundle)
        store = ReplayStore(args.out, spec.schema(), spec.fingerprint(),
                            meta={"bundle": f"{bundle.name}:{bundle.version}", "kind": "demonstrations"})
        bags = [b for p in args.bags for b in find_bags(p)]
        total = 0
        rejected: collections.Counter = collections.Counter()
        t0 = time.perf_counter()
        for bag in bags:
            have = summary(bag).topics
            command = args.command_topic or (cfg.action_record_topic if cfg.action_record_topic in have
                                             else "/forward_command_controller/commands")
            topics = {"cameras": args.camera_topics or cfg.camera_topics,
                      "joints": args.joint_states_topic or cfg.joint_states_topic,
                      "command": command, "reward": args.reward_topic or cfg.reward_topic,
                      "episode_end": args.episode_end_topic or cfg.episode_end_topic,
                      "success": args.success_topic or cfg.success_topic}
            r = import_bag(bag, bundle, engine, store, topics, args.episode_steps)
            total += r["transitions"]
            rejected.update(r["rejected"])
            print(f"{bag}: {r['transitions']} transitions from {r['records']} commands, {r['episodes']} episode "
                  f"end(s); rejected {r['rejected'] or 'none'}")
        store.close()
        print(f"demonstration store {store.root}: {store.count} transitions ({total} imported now from {len(bags)} "
              f"bag(s) in {time.perf_counter() - t0:.1f} s)")
        if args.bc_steps:
            return _pretrain(args, bundle, store)
    except (BagError, BundleError, EngineError, StoreError, ConfigError, DemoImportError) as exc:
        print(f"import-demos: {exc}", file=sys.stderr)
        return 1
    return 0


def _pretrain(args, bundle, store: ReplayStore) -> int:
    import torch

    from wsa_ros.model.export import load_policy_module
    from wsa_ros.learn.bc import behaviour_clone
    from wsa_ros.learn.replay import Replay
    from wsa_ros.learn.validate import export_policy, reject_folder, validate_bundle

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small networks: more threads only contend (measured 5x slower with 2 on 2 cores)
    spec = TransitionSpec.from_bundle(bundle)
    arr = store.read()
    replay = Replay(spec, max(1, len(arr["reward"])), holdout_every=0)
    replay.add({k: v for k, v in arr.items() if k != "seq"}, demo=True)
    policy = load_policy_module(bundle)
    pm = bundle.proprio.mean if bundle.proprio else None
    ps = bundle.proprio.std if bundle.proprio else None
    r = behaviour_clone(policy, replay, args.bc_steps, args.batch_size, proprio_mean=pm, proprio_std=ps, seed=args.seed)
    print(f"behaviour cloning: {r['steps']} steps, loss {r['first_loss']:.4f} -> {r['last_loss']:.4f} "
          f"({r['seconds']:.1f} s)")
    version = f"{bundle.version}+bc{args.bc_steps}"
    policy.eval()
    export_policy(policy, bundle, args.bc_out, version,
                  recipe={"command": "wsa import-demos --bc-steps", "demos": str(store.root), "seed": args.seed})
    n = min(256, len(arr["reward"]))
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(arr["reward"]), n, replace=False)
    holdout = {e.name: arr[f"obs.{e.name}"][idx] for e in bundle.encoders}
    if bundle.proprio:
        holdout["proprio"] = arr["obs.proprio"][idx]
    rep = validate_bundle(args.bc_out, bundle, holdout, policy=policy)
    if not rep.ok:
        dst = reject_folder(args.bc_out)
        print(f"import-demos: the behaviour-cloned bundle failed validation: {rep.summary()} (kept as {dst})",
              file=sys.stderr)
        return 1
    print(f"bundle {args.bc_out} (version {version}): {rep.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
