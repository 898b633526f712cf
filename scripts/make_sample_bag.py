#!/usr/bin/env python3
"""Record the repository's sample bag from the simulated arm (no ROS needed).

    python scripts/make_sample_bag.py [OUT] [--episodes 30] [--steps 20] [--storage mcap]

The bag holds what ``ros2 bag record`` would capture from the simulated arm driven by a
scripted expert with action noise (``wsa_ros.sim.expert_bag``: joint states, camera frames,
forward_command_controller commands and rewards; short episodes without episode-end topics).
The same seed gives the same messages (byte-identical CDR records).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "test" / "data" / "sample_bag"


def make_sample_bag(out, episodes: int = 30, steps: int = 20, seed: int = 7, image_size: int = 84,
                    noise: float = 0.3, storage: str = "mcap", compress: bool = True) -> Path:
    sys.path.insert(0, str(ROOT))
    from wsa_ros.sim.expert_bag import record_expert_bag

    record_expert_bag(out, episodes, steps, seed, image_size, noise, storage, compress)
    return Path(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help=f"bag folder to create (default {DEFAULT_OUT})")
    ap.add_argument("--episodes", type=int, default=30, help="episodes (each a new target and start pose)")
    ap.add_argument("--steps", type=int, default=20, help="steps per episode")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        if not args.force:
            print(f"{out} exists; pass --force to replace it", file=sys.stderr)
            return 1
        import shutil

        shutil.rmtree(out)
    make_sample_bag(out, args.episodes, args.steps, args.seed, args.image_size, storage=args.storage)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
