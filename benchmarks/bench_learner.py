#!/usr/bin/env python3
"""Learner benchmark: updates per second, transitions ingested per second, and the time from
an export to the new policy acting in a running agent.

    python benchmarks/bench_learner.py [--bundle B] [--batch 256] [--seconds 10] [--threads 1 2]
                                       [--no-latency] [--domain 118]

* **updates/s**: :class:`wsa_ros.learn.sac.SACLearner` on the bundle's head (the shipped
  ``models/default`` unless ``--bundle``; without one, a head with the default hyper-parameters
  on encoders shaped like the default bundle's), batch ``--batch`` drawn 50/50 from the online
  and demonstration replay buffers (torchrl), for each ``--threads`` value. Wall-clock and CPU
  seconds are both reported: on a shared machine CPU time shows what the code costs, wall time
  what it got.
* **ingest/s**: the learner's ingest path without ROS: Assembler pairing + Engine.embed of an
  84x84 frame + record checks + ReplayStore.append/flush (and without the encoders).
* **export -> acting**: a real ``agent_node`` child process on ``--domain`` acting at 30 Hz on
  frames this script publishes; per round: export the policy (``validate.export_policy``),
  validate it (``validate.validate_bundle``), set the agent's ``bundle`` parameter, and wait
  for the first ``~/action_record`` carrying the new version. Reported: export, validation,
  and export-done -> acting (what the target "<= 1 s" is about), per round.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fake_records(spec, n: int, seed: int = 0, demo: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    rec = {}
    for k, (d, shape) in spec.schema().items():
        if d.startswith("<U"):
            rec[k] = np.array(["x"] * n)
        elif d == "bool":
            rec[k] = np.full(n, demo) if k == "intervention" else np.zeros(n, bool)
        elif k in ("action", "policy_action"):
            rec[k] = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
        else:
            rec[k] = rng.normal(size=(n, *shape)).astype(d)
    return rec


DEFAULT_LIKE = {"ae": ([64, 7, 7], "both"), "idm": ([64], "feature"), "kp": ([8, 2], "feature")}
# the head sweep: how fast one update can be when the head gets smaller (same encoders' names,
# vector embeddings instead of the autoencoder's spatial map)
VECTORS = {"ae": ([64], "both"), "idm": ([64], "feature"), "kp": ([16], "feature")}
SWEEP = [("vector embeddings, d 64, hidden 256", VECTORS, {}),
         ("vector embeddings, d 64, hidden 64", VECTORS, {"actor_hidden": [64, 64], "critic_hidden": [64, 64]}),
         ("vector embeddings, d 32, hidden 64", VECTORS, {"d": 32, "actor_hidden": [64, 64],
                                                          "critic_hidden": [64, 64]})]


def default_head_bundle(tmp: Path, shapes: dict | None = None, name: str = "default-like", **head_opts):
    """A bundle with the default head hyper-parameters (or ``head_opts``) on encoders shaped like
    the default bundle's (``shapes``; default ae [64,7,7] context+feature, idm [64], kp [8,2];
    proprio 4; 2 actions)."""
    import torch

    from wsa_ros.runtime.bundle import ActionSpec, InputSpec, ProprioSpec
    from wsa_ros.model.export import EncoderSource, export_bundle
    from wsa_ros.model.wsa import FusionPolicy, make_head_config

    class Enc(torch.nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape
            self.lin = torch.nn.Linear(3, int(np.prod(shape)))

        def forward(self, x):
            return self.lin(x.mean(dim=(2, 3))).reshape(x.shape[0], *self.shape)

    shapes = shapes or DEFAULT_LIKE
    srcs = [EncoderSource(n, "front", InputSpec(84, 84), role, module=Enc(s)) for n, (s, role) in shapes.items()]
    head = make_head_config("wsa", [{"name": n, "output_shape": s, "role": r} for n, (s, r) in shapes.items()], 2, 4,
                            **head_opts)
    joints = ["joint0", "joint1"]
    out = tmp / name.replace(" ", "_").replace(",", "")
    return export_bundle(out, FusionPolicy.from_config(head), srcs,
                         ActionSpec("velocity", joints, [-3.0, -3.0], [3.0, 3.0], "rad/s"),
                         ProprioSpec(joints, ["position", "velocity"], [0.0] * 4, [1.0] * 4),
                         name="default-like", version="1")


# =============================================================================== updates/s
def bench_updates(bundle, batch: int, seconds: float, threads: int, actor_every: int = 1) -> dict:
    import torch

    from wsa_ros.learn.sac import Replay, SACConfig, SACLearner
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.model.export import load_policy_module

    torch.set_num_threads(threads)
    spec = TransitionSpec.from_bundle(bundle)
    replay = Replay(spec, 20_000, holdout_every=0)
    replay.add(fake_records(spec, 5000, 1))
    replay.add(fake_records(spec, 5000, 2, demo=True), demo=True)
    learner = SACLearner(load_policy_module(bundle), SACConfig(batch_size=batch, actor_every=actor_every),
                         bundle.proprio.mean if bundle.proprio else None, bundle.proprio.std if bundle.proprio else None)
    for _ in range(10):
        learner.update(replay.sample(batch, 0.5))
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        learner.update(replay.sample(batch, 0.5))
    flops = fc.get_total_flops()
    n, t_sample = 0, 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        ts = time.perf_counter()
        b = replay.sample(batch, 0.5)
        t_sample += time.perf_counter() - ts
        learner.update(b)
        n += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"threads": threads, "actor_every": actor_every, "updates": n, "per_s_wall": n / wall,
            "per_s_cpu": n / cpu * min(threads, os.cpu_count() or 1) if cpu else float("nan"),
            "sample_ms": 1e3 * t_sample / n, "update_ms": 1e3 * (wall - t_sample) / n, "gflop": flops / 1e9}


# =============================================================================== ingest/s
def bench_ingest(bundle, seconds: float, encode: bool) -> dict:
    from wsa_ros.runtime.engine import Engine
    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import Assembler, TransitionSpec, check_record
    from wsa_ros.runtime.observation import FrameSample, JointSample

    spec = TransitionSpec.from_bundle(bundle)
    eng = Engine(bundle, providers=["cpu"], threads=1)
    fixed = eng.embed({c: np.full((84, 84, 3), 100, np.uint8) for c in bundle.cameras})
    enc = eng.embed if encode else (lambda images: fixed)
    with tempfile.TemporaryDirectory() as td:
        store = ReplayStore(Path(td) / "s", spec.schema(), spec.fingerprint()).start()
        asm = Assembler(spec, bundle.cameras, enc, bundle.proprio)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(16)]
        joints = list(bundle.action.joint_names)
        pj = bundle.proprio.joint_names if bundle.proprio else joints
        k, n = 0, 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            k += 1
            stamp = 1_700_000_000_000_000_000 + k * 33_000_000
            for c in bundle.cameras:
                asm.add_frame(c, FrameSample.from_array(frames[k % 16], stamp, stamp))
            asm.add_joints(JointSample(stamp, stamp, list(pj), np.zeros(len(pj)), np.zeros(len(pj)), np.zeros(len(pj))))
            asm.add_record(stamp, stamp, "1", joints, [0.5] * len(joints), [0.1] * len(joints))
            asm.add_reward(stamp, -1.0)
            for tr in asm.poll(stamp):
                rec = tr.to_record()
                if check_record(spec, rec) is None:
                    store.append(rec)
                    n += 1
        dt = time.perf_counter() - t0
        store.close()
        return {"encode": encode, "transitions": n, "per_s": n / dt, "stored": store.count}


# =============================================================================== export -> acting
def bench_latency(bundle_path: Path, rounds: int, domain: int) -> list[dict]:
    import rclpy
    import yaml
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.runtime.images import array_to_image_fields
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.learn.validate import export_policy, validate_bundle
    from wsa_ros.model.export import load_policy_module

    base = load_bundle(bundle_path)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    td = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    params = {"agent_node": {"ros__parameters": {
        "bundle": str(bundle_path), "providers": ["cpu"], "camera_topics": ["/camera/image_raw"],
        "joint_states_topic": "/joint_states", "control_rate_hz": 30.0, "start_enabled": True, "blend_in_s": 0.0,
        "max_obs_age_s": 0.5}}}
    (td / "agent.yaml").write_text(yaml.safe_dump(params))
    log = open(td / "agent.log", "w")
    agent = subprocess.Popen([sys.executable, "-m", "wsa_ros.ros.agent_node", "--ros-args", "--params-file",
                              str(td / "agent.yaml")], cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("bench_learner", context=ctx)
    seen: dict[str, float] = {}
    node.create_subscription(JointState, "/agent_node/action_record",
                             lambda m: seen.setdefault(m.header.frame_id, time.perf_counter()),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    pub_img = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    pub_js = node.create_publisher(JointState, "/joint_states", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    client = node.create_client(SetParameters, "/agent_node/set_parameters")
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)

    threading.Thread(target=spin, daemon=True).start()
    f = array_to_image_fields(np.full((84, 84, 3), 90, np.uint8))

    def stream():
        while not stop.is_set():
            st = node.get_clock().now().to_msg()
            js = JointState(name=list(base.action.joint_names), position=[0.0] * base.action.dim,
                            velocity=[0.0] * base.action.dim)
            js.header.stamp = st
            pub_js.publish(js)
            img = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"])
            img.data = f["data"]
            img.header.stamp = st
            pub_img.publish(img)
            time.sleep(1 / 30)

    threading.Thread(target=stream, daemon=True).start()
    out = []
    try:
        t_end = time.monotonic() + 120
        while base.version not in seen and time.monotonic() < t_end:
            time.sleep(0.1)
        if base.version not in seen:
            raise RuntimeError(f"the agent never acted; its log: {(td / 'agent.log').read_text()[-2000:]}")
        policy = load_policy_module(base)
        holdout = fake_records(TransitionSpec.from_bundle(base), 64)
        holdout = {k[4:]: v for k, v in holdout.items() if k.startswith("obs.")}
        for i in range(rounds):
            version = f"{base.version}+bench{i}"
            t0 = time.perf_counter()
            export_policy(policy, base, td / version, version)
            t1 = time.perf_counter()
            rep = validate_bundle(td / version, base, holdout, policy=policy)
            t2 = time.perf_counter()
            if not rep.ok:
                raise RuntimeError(rep.summary())
            req = SetParameters.Request(parameters=[ParameterMsg(name="bundle", value=ParameterValue(
                type=ParameterType.PARAMETER_STRING, string_value=str(td / version)))])
            fut = client.call_async(req)
            while not fut.done():
                time.sleep(0.001)
            t3 = time.perf_counter()
            ok = fut.result().results[0].successful
            while version not in seen and time.perf_counter() - t3 < 30:
                time.sleep(0.001)
            t4 = seen.get(version, float("nan"))
            out.append({"round": i, "ok": ok, "export_s": t1 - t0, "validate_s": t2 - t1, "push_answer_s": t3 - t2,
                        "first_action_after_answer_s": t4 - t3, "export_done_to_acting_s": t4 - t1})
    finally:
        stop.set()
        agent.send_signal(2)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="bundle (default: models/default, else a default-like head)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--head-sweep", action="store_true",
                    help="also time smaller heads (vector embeddings; hidden 256 / 64; d 64 / 32), 1 thread")
    ap.add_argument("--domain", type=int, default=118)
    args = ap.parse_args(argv)

    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.config import default_bundle

    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    tmp = Path(tempfile.mkdtemp(prefix="bench_learner_"))
    if args.bundle:
        bpath = Path(args.bundle)
    elif (default_bundle() / "manifest.yaml").is_file():
        bpath = default_bundle()
    else:
        bpath = default_head_bundle(tmp).root
    b = load_bundle(bpath)
    print(f"command: {cmd}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    print(f"bundle: {bpath} (head d={b.head.get('d')}, actor {b.head.get('actor_hidden')}, critic "
          f"{b.head.get('critic_hidden')}, encoders {[(e.name, e.output_shape) for e in b.encoders]})\n")

    print(f"{'learner updates, batch ' + str(args.batch):44s} {'wall /s':>9s} {'CPU-time /s':>12s} "
          f"{'sample ms':>10s} {'update ms':>10s} {'GFLOP/upd':>10s}")
    for threads in args.threads:
        for actor_every in (1, 2):
            r = bench_updates(b, args.batch, args.seconds, threads, actor_every)
            label = f"  torch threads {threads}, actor every {actor_every} critic step(s)"
            print(f"{label:44s} {r['per_s_wall']:9.1f} {r['per_s_cpu']:12.1f} {r['sample_ms']:10.2f} "
                  f"{r['update_ms']:10.2f} {r['gflop']:10.3f}")
    if args.head_sweep:
        import torch

        from wsa_ros.model.export import load_policy_module

        for label, shapes, opts in SWEEP:
            hb = default_head_bundle(tmp, shapes, label, **opts)
            r = bench_updates(hb, args.batch, args.seconds, 1, 1)
            n = sum(p.numel() for p in load_policy_module(hb).parameters())
            print(f"{'  ' + label + f' ({n // 1000}k params)':44s} {r['per_s_wall']:9.1f} {r['per_s_cpu']:12.1f} "
                  f"{r['sample_ms']:10.2f} {r['update_ms']:10.2f} {r['gflop']:10.3f}")
        torch.set_num_threads(1)
    print("  target: >= 500 updates/s on 2 CPU cores (= 500 x GFLOP/upd GFLOP/s of arithmetic)\n")

    print(f"{'ingest (assembler + checks + store)':44s} {'transitions/s':>14s}")
    for encode in (True, False):
        r = bench_ingest(b, min(args.seconds, 5.0), encode)
        label = "  with encoders (84x84 frame)" if encode else "  embeddings given (no encoders)"
        print(f"{label:44s} {r['per_s']:14.1f}")
    print()
    if not args.no_latency:
        print(f"{'export -> acting (real agent_node, 30 Hz)':44s} {'export s':>9s} {'validate s':>11s} "
              f"{'push s':>7s} {'done->acting s':>15s}")
        for r in bench_latency(Path(bpath), args.rounds, args.domain):
            print(f"  round {r['round']} ({'swapped' if r['ok'] else 'REFUSED'}){'':27s} {r['export_s']:9.2f} "
                  f"{r['validate_s']:11.2f} {r['push_answer_s']:7.2f} {r['export_done_to_acting_s']:15.2f}")
        print("  target: new policy acting <= 1 s after export")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
