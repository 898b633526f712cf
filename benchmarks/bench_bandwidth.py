#!/usr/bin/env python3
"""Bandwidth per robot: the bytes a learner receives from ONE robot per second, and what a policy
push costs, measured on real serialized messages (``rclpy.serialization.serialize_message``, the
CDR payload DDS carries; RTPS/UDP/IP headers and fragmentation not counted). No DDS, no nodes.

    python benchmarks/bench_bandwidth.py                  # 30 Hz, 84 px, 50 frames per camera
    python benchmarks/bench_bandwidth.py --rate 60 --size 128 --frames 50 --json out.json
    python benchmarks/bench_bandwidth.py --quick          # 12 frames, 2 pack repeats

Frames are rendered by the project's simulators over a seeded expert rollout (a new episode every
``--episode-steps`` steps): the 2-joint Reacher (``wsa_ros.sim.reacher``, one camera, published as
``front``, the shipped bundle's camera) and the 7-joint arm (``wsa_ros.sim.arm7``, cameras ``scene``
and ``wrist``). Per camera stream, for raw ``sensor_msgs/Image`` rgb8 and ``CompressedImage`` JPEG
q95 / q80 and PNG (``wsa_ros.runtime.images.array_to_compressed``, what ``sim_arm_node`` publishes):
mean serialized bytes per message, bytes/s at ``--rate``, median encode / serialize / decode ms per
frame (decode = ``wsa_ros.runtime.images.decode`` of the deserialized message), and the decode check
(right shape; JPEG: mean abs error per pixel channel vs the rendered frame; PNG: exact).

Then the other per-robot topics the fine-tuner subscribes to (``joint_states`` with position,
velocity and effort, the agent's ``~/action_record`` from ``messages.action_record_msg``, reward
Float64, success Bool, episode_end String), the totals per robot per second (raw / JPEG95 / JPEG80,
ratio raw/JPEG), ``wsa_ros.learn.transitions.bandwidth`` of the bundle beside them (its raw-frame
figure counts pixel bytes only), and a push: ``transfer.pack_bundle`` + ``messages.bundle_msg``
serialized, its size and times, and how many seconds of one robot's JPEG95 traffic it equals.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CODECS = ("raw", "jpeg95", "jpeg80", "png")


def _med_ms(ts) -> float:
    return float(np.median(np.asarray(ts)) * 1e3)


def render_frames(arm: str, n: int, size: int, seed: int, episode_steps: int) -> dict[str, list[np.ndarray]]:
    """{camera: [n frames]} over a seeded expert rollout, a new episode every ``episode_steps``."""
    if arm == "reacher":
        from wsa_ros.sim.reacher import ReacherSim as Sim, expert_action
    else:
        from wsa_ros.sim.arm7 import Arm7Sim as Sim, expert_action
    out: dict[str, list[np.ndarray]] = {}
    with Sim(seed=seed, image_size=size, max_steps=max(episode_steps, 1)) as sim:
        obs = sim.reset()
        for i in range(n):
            if i and i % episode_steps == 0:
                obs = sim.reset()
            images = obs["images"] if "images" in obs else {"front": obs["image"]}
            for c, img in images.items():
                out.setdefault(c, []).append(np.ascontiguousarray(img).copy())
            obs, _, _, trunc, _ = sim.step(expert_action(sim))
            if trunc:
                obs = sim.reset()
    return out


def bench_camera(frames: list[np.ndarray], camera: str, rate: float, reps: int) -> dict:
    """Per codec: mean serialized bytes, bytes/s, median encode/serialize/decode ms, decode check."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from wsa_ros.runtime.images import array_to_compressed, array_to_image_fields, decode

    def build(codec: str, img: np.ndarray):
        if codec == "raw":
            return Image(**array_to_image_fields(img, "rgb8"))
        fmt, data = array_to_compressed(img, "png" if codec == "png" else "jpeg",
                                        int(codec[4:]) if codec.startswith("jpeg") else 95)
        return CompressedImage(format=fmt, data=data)

    res = {}
    for codec in CODECS:
        comp = codec != "raw"
        typ = CompressedImage if comp else Image
        sizes, enc, ser, dec, err, exact, shape_ok = [], [], [], [], [], True, True
        for k, img in enumerate(frames):
            for r in range(reps):
                t = time.perf_counter()
                m = build(codec, img)
                enc.append(time.perf_counter() - t)
            m.header.stamp.sec, m.header.stamp.nanosec = 1_700_000_000 + k, 123_456_789
            m.header.frame_id = camera
            for r in range(reps):
                t = time.perf_counter()
                blob = serialize_message(m)
                ser.append(time.perf_counter() - t)
            sizes.append(len(blob))
            got = deserialize_message(blob, typ)
            for r in range(reps):
                t = time.perf_counter()
                out = decode(got, comp)
                dec.append(time.perf_counter() - t)
            shape_ok &= out.shape == img.shape and out.dtype == np.uint8
            if out.shape == img.shape:
                diff = np.abs(out.astype(np.int16) - img.astype(np.int16))
                err.append(float(diff.mean()))
                exact &= not diff.any()
        mean = float(np.mean(sizes))
        res[codec] = {"bytes_per_msg": mean, "Bps": mean * rate, "encode_ms": _med_ms(enc),
                      "serialize_ms": _med_ms(ser), "decode_ms": _med_ms(dec), "shape_ok": bool(shape_ok),
                      "mae": float(np.mean(err)) if err else float("nan"), "exact": bool(exact and shape_ok)}
    return res


def bench_topics(joint_names: list[str], rate: float, episode_steps: int, version: str) -> dict:
    """The non-camera topics of one robot: {topic: {type, bytes_per_msg, hz, Bps}}."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64, String

    from wsa_ros.ros.messages import action_record_msg, time_msg

    n = len(joint_names)
    rng = np.random.default_rng(0)
    vals = lambda: rng.uniform(-1, 1, n).tolist()  # noqa: E731 - float64 values, sizes do not depend on them
    js = JointState(name=list(joint_names), position=vals(), velocity=vals(), effort=vals())
    js.header.stamp = time_msg(1_700_000_000_123_456_789)
    rec = action_record_msg(1_700_000_000_123_456_789, version, list(joint_names), vals(), vals(), vals())
    ep_hz = rate / episode_steps
    msgs = {
        "joint_states": ("sensor_msgs/JointState (position, velocity, effort)", js, rate),
        "~/action_record": ("sensor_msgs/JointState (action_record_msg)", rec, rate),
        "wsa/reward": ("std_msgs/Float64", Float64(data=-0.0123), rate),
        "wsa/success": ("std_msgs/Bool", Bool(data=False), rate),
        "wsa/episode_end": ("std_msgs/String", String(data="truncated"), ep_hz),
    }
    out = {}
    for topic, (typ, m, hz) in msgs.items():
        size = len(serialize_message(m))
        out[topic] = {"type": typ, "bytes_per_msg": size, "hz": hz, "Bps": size * hz}
    return out


def bench_push(bundle: str, reps: int) -> dict:
    from rclpy.serialization import serialize_message

    from wsa_ros.ros.messages import bundle_msg
    from wsa_ros.runtime.transfer import pack_bundle

    pack, ser = [], []
    for _ in range(reps):
        t = time.perf_counter()
        blob, label = pack_bundle(bundle)
        pack.append(time.perf_counter() - t)
    m = bundle_msg(blob, label)
    for _ in range(reps):
        t = time.perf_counter()
        wire = serialize_message(m)
        ser.append(time.perf_counter() - t)
    return {"blob_bytes": len(blob), "msg_bytes": len(wire), "label": label, "pack_ms": _med_ms(pack),
            "serialize_ms": _med_ms(ser)}


def _kb(x: float) -> str:
    return f"{x / 1e3:,.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=30.0, help="control (camera) rate, Hz")
    ap.add_argument("--size", type=int, default=84, help="square camera image size, px (every camera)")
    ap.add_argument("--frames", type=int, default=50, help="frames rendered per camera")
    ap.add_argument("--episode-steps", type=int, default=100,
                    help="episode length (steps): frames start a new episode this often; episode_end = rate / this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5, help="timing repeats per frame")
    ap.add_argument("--pack-reps", type=int, default=5, help="pack_bundle / serialize repeats")
    ap.add_argument("--bundle", default=str(ROOT / "models" / "default"))
    ap.add_argument("--quick", action="store_true", help="12 frames, 1 timing repeat, 2 pack repeats")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.reps, args.pack_reps = 12, 1, 2
    frame_every = max(1, min(args.episode_steps, (args.frames + 1) // 2))  # >= 2 episodes in the frames

    from wsa_ros.learn.transitions import bandwidth
    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.sim.arm7 import JOINT_NAMES as ARM7_JOINTS
    from wsa_ros.sim.reacher import JOINT_NAMES as REACHER_JOINTS

    b = load_bundle(args.bundle)
    t0 = time.perf_counter()
    arms = {"reacher": list(REACHER_JOINTS), "arm7": list(ARM7_JOINTS)}
    res = {"rate_hz": args.rate, "size": args.size, "frames": args.frames, "seed": args.seed, "robots": {}}
    for arm, joints in arms.items():
        frames = render_frames(arm, args.frames, args.size, args.seed, frame_every)
        cams = {c: bench_camera(f, c, args.rate, args.reps) for c, f in frames.items()}
        topics = bench_topics(joints, args.rate, args.episode_steps, b.version)
        other = sum(t["Bps"] for t in topics.values())
        totals = {codec: sum(c[codec]["Bps"] for c in cams.values()) + other for codec in CODECS}
        res["robots"][arm] = {"cameras": cams, "topics": topics, "other_Bps": other, "totals_Bps": totals}
    res["bundle_bandwidth"] = bandwidth(b, args.rate, {c: (args.size, args.size, 3) for c in b.cameras})
    res["push"] = push = bench_push(args.bundle, args.pack_reps)
    for arm, r in res["robots"].items():
        r["push_equals_s_of_jpeg95"] = push["msg_bytes"] / r["totals_Bps"]["jpeg95"]
    res["seconds"] = time.perf_counter() - t0

    hz = f"{args.rate:g} Hz"
    print(f"Camera streams, one robot, {args.size}x{args.size} rgb, {hz}, {args.frames} expert-rollout frames per camera "
          f"(serialized CDR bytes; times: median per frame)")
    print(f"{'robot/camera':16} {'codec':7} {'B/msg':>9} {'kB/s':>9} {'enc ms':>7} {'ser ms':>7} {'dec ms':>7}  check")
    for arm, r in res["robots"].items():
        for cam, cr in r["cameras"].items():
            for codec, c in cr.items():
                chk = ("shape ok" if c["shape_ok"] else "SHAPE WRONG") + (
                    "" if codec == "raw" else (", exact" if c["exact"] else f", MAE {c['mae']:.2f}/255"))
                if codec == "png" and not c["exact"]:
                    chk += " NOT EXACT"
                print(f"{arm + '/' + cam:16} {codec:7} {c['bytes_per_msg']:9,.0f} {_kb(c['Bps']):>9} "
                      f"{c['encode_ms']:7.3f} {c['serialize_ms']:7.3f} {c['decode_ms']:7.3f}  {chk}")
    print(f"\nOther per-robot topics (assumed: joint_states, action_record, reward and success at {hz} - "
          f"sim_arm_node publishes reward and success every step; episode_end once per {args.episode_steps}-step "
          f"episode = {args.rate / args.episode_steps:g} Hz)")
    print(f"{'robot':8} {'topic':17} {'type':52} {'B/msg':>6} {'Hz':>6} {'kB/s':>7}")
    for arm, r in res["robots"].items():
        for topic, t in r["topics"].items():
            print(f"{arm:8} {topic:17} {t['type']:52} {t['bytes_per_msg']:6d} {t['hz']:6.2f} {_kb(t['Bps']):>7}")
        print(f"{arm:8} {'(sum)':17} {'':52} {'':6} {'':6} {_kb(r['other_Bps']):>7}")
    print("\nTotal per robot per second (cameras + other topics), kB/s")
    print(f"{'robot':22} {'raw':>9} {'jpeg95':>9} {'jpeg80':>9} {'png':>9} {'raw/jpeg95':>11} {'raw/jpeg80':>11}")
    for arm, r in res["robots"].items():
        t = r["totals_Bps"]
        label = f"{arm} ({len(r['cameras'])} camera{'s' if len(r['cameras']) > 1 else ''})"
        print(f"{label:22} {_kb(t['raw']):>9} {_kb(t['jpeg95']):>9} {_kb(t['jpeg80']):>9} {_kb(t['png']):>9} "
              f"{t['raw'] / t['jpeg95']:10.1f}x {t['raw'] / t['jpeg80']:10.1f}x")
    bw = res["bundle_bandwidth"]
    print(f"transitions.bandwidth({Path(args.bundle).name}) at {hz}: raw frames {_kb(bw['frames_total_Bps'])} kB/s "
          f"(pixels only), embeddings {_kb(bw['embeddings_Bps'])} kB/s")
    print(f"\nPush of {Path(args.bundle).name}: pack_bundle {push['blob_bytes']:,} B in {push['pack_ms']:.1f} ms, "
          f"UInt8MultiArray {push['msg_bytes']:,} B serialized in {push['serialize_ms']:.1f} ms")
    for arm, r in res["robots"].items():
        s = r["push_equals_s_of_jpeg95"]
        print(f"  {arm}: one push = {s:.1f} s of that robot's JPEG95 traffic (all its topics); at {3600 / s:.0f} "
              f"pushes/hour the pushes would cost as much as that traffic")
    print(f"({res['seconds']:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
