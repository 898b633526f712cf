#!/usr/bin/env python3
"""Policy push: a validated bundle -> that policy acting in a running agent_node process,
by the two routes, side by side in one run, with the shipped bundle's size:

* path  (the peer): the agent's ``bundle`` parameter set to a folder it can read
  (one machine or a shared filesystem);
* topic: the bundle's bytes published on the agent's ``policy_topic`` (std_msgs/UInt8MultiArray,
  what the fine-tuner does with ``push_via: topic``); the agent stores it in its own cache,
  checks it and swaps it in. No path in common.

    python benchmarks/bench_push.py                 # models/default, 4 pushes per route
    python benchmarks/bench_push.py --bundle B --pushes 6

"Acting" = the first ~/action_record carrying the new version, with frames arriving at 30 Hz.
Also printed: the largest gap between action records around each swap (the agent never
stops acting while it checks a bundle) and the cost of packing a bundle. Target (issue 15):
export -> acting in a remote agent <= 1 s.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "ros"))  # ros_peer
sys.path.insert(0, str(ROOT))

from ros_peer import AgentProcess, Peer, rgb_frame, version_of, wait_for  # noqa: E402

CAM, JS, POLICY = "/bench/camera/image_raw", "/bench/joint_states", "/bench/policy"


def _versioned(src: Path, dst: Path, version: str) -> Path:
    root = shutil.copytree(src, dst)
    m = yaml.safe_load((root / "manifest.yaml").read_text())
    m["version"] = version
    (root / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "models" / "default"))
    ap.add_argument("--pushes", type=int, default=4, help="pushes per route")
    ap.add_argument("--domain", type=int, default=131)
    args = ap.parse_args(argv)

    from wsa_ros.ros.messages import POLICY_QOS, bundle_msg
    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.runtime.transfer import pack_bundle
    from std_msgs.msg import UInt8MultiArray

    tmp = Path(tempfile.mkdtemp(prefix="bench_push_"))
    station, robot = tmp / "station", tmp / "robot"
    src = Path(args.bundle)
    b0 = load_bundle(src)
    start = shutil.copytree(src, robot / "start")
    cams = b0.cameras
    h, w = 96, 96
    params = dict(bundle=str(start), providers=["cpu"], camera_topics=[CAM] if len(cams) == 1 else
                  [f"{CAM}_{c}" for c in cams], joint_states_topic=JS, control_rate_hz=30.0, trigger="camera",
                  max_obs_age_s=0.5, start_enabled=True, blend_in_s=0.0, max_rate=0.0, diagnostics_period_s=1.0,
                  policy_topic=POLICY, policy_cache_dir=str(robot / "cache"))
    agent = AgentProcess(args.domain, params, log_dir=str(tmp / "logs"), env={"HOME": str(robot)})
    peer = Peer(args.domain, name="bench")
    stop = threading.Event()
    names = list(b0.action.joint_names)
    if b0.proprio is not None:
        names = list(dict.fromkeys(names + list(b0.proprio.joint_names)))
    try:
        for t in params["camera_topics"]:
            peer.publisher(t, "image")
        peer.publisher(JS, "joints")
        pub = peer.node.create_publisher(UInt8MultiArray, POLICY, POLICY_QOS)
        try:
            peer.wait_subscribed(params["camera_topics"][0], 90)
            wait_for(lambda: peer.record_sub.get_publisher_count() > 0 and pub.get_subscription_count() > 0, 90,
                     "the agent")
        except TimeoutError as exc:
            raise SystemExit(f"{exc}\nagent log:\n{agent.output()}")
        frames = [rgb_frame(i, h, w) for i in range(8)]

        def drive():
            k, nxt = 0, time.monotonic()
            while not stop.is_set():
                stamp = peer.stamp_now()
                peer.publish_joints(JS, names, [0.0] * len(names), [0.0] * len(names), stamp=stamp)
                for t in params["camera_topics"]:
                    peer.publish_image(t, frames[k % len(frames)], stamp=stamp)
                k += 1
                nxt += 1 / 30
                time.sleep(max(0.0, nxt - time.monotonic()))

        threading.Thread(target=drive, daemon=True).start()
        wait_for(lambda: len(peer.snapshot("records")) > 30, 60, "the agent acting")

        def acting(version: str, t0: float) -> tuple[float, float]:
            wait_for(lambda: any(version_of(r) == version for t, r in peer.snapshot("records") if t >= t0),
                     60, f"version {version} acting")
            recs = peer.snapshot("records")
            t1 = next(t for t, r in recs if t >= t0 and version_of(r) == version)
            time.sleep(0.5)
            ts = np.array([t for t, _ in peer.snapshot("records") if t0 - 0.5 <= t <= t1 + 0.5])
            return t1 - t0, float(np.diff(ts).max())

        res = {"path": [], "topic": []}
        t_pack = []
        for i in range(args.pushes):
            for route in ("path", "topic"):
                v = f"{b0.version}+{route}{i}"
                folder = _versioned(src, station / v, v)
                t0 = time.monotonic()
                if route == "path":
                    r = peer.set_params({"bundle": str(folder)})[0]
                    assert r.successful, r.reason
                else:
                    tp = time.perf_counter()
                    blob, label = pack_bundle(folder)
                    t_pack.append(time.perf_counter() - tp)
                    pub.publish(bundle_msg(blob, label))
                res[route].append(acting(v, t0))
        size = len(pack_bundle(start)[0])
    finally:
        stop.set()
        peer.close()
        agent.stop()
    print(f"bundle {src} ({size / 1e6:.2f} MB packed), {args.pushes} pushes per route, frames at 30 Hz")
    print(f"{'route':>6} {'to acting median s':>19} {'max s':>7} {'largest record gap ms':>22}")
    for route, rows in res.items():
        lat = [a for a, _ in rows]
        gap = [g for _, g in rows]
        print(f"{route:>6} {np.median(lat):19.3f} {max(lat):7.3f} {max(gap) * 1e3:22.0f}")
    ratio = np.median([a for a, _ in res["topic"]]) / np.median([a for a, _ in res["path"]])
    print(f"topic / path (median time to acting): {ratio:.2f}x; packing {np.median(t_pack) * 1e3:.0f} ms median")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
