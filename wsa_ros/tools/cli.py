"""`wsa <command> [args]`: the plain command-line tools, one module each.

Each command is ``module:function`` taking ``argv`` and returning an exit code; modules
are imported only when their command runs, so `wsa --help` stays fast and a tool's
heavy dependencies (torch, rclpy) load only for the tools that need them.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "build-bundle": ("wsa_ros.model.build_default:main", "train encoders + WSA head on the simulated arm, export a bundle"),
    "check-bundle": ("wsa_ros.tools.cli:check_bundle", "validate a bundle (manifest, hashes, shapes, warm-up) and print it"),
    "bench": ("wsa_ros.tools.bench:main", "engine latency vs PyTorch eager, 1-4 encoders, 84/128 px"),
    "eval-bag": ("wsa_ros.tools.eval_bag:main", "run a bundle over a rosbag offline; CSV + report"),
    "screen": ("wsa_ros.tools.screen:main", "rank candidate encoders on a bag with linear probes"),
    "import-demos": ("wsa_ros.learn.demos:main", "import rosbag demonstrations into a demonstration store"),
    "bag-health": ("wsa_ros.tools.bag_health:main", "recordings vs a robot file: rates, gaps, stamps, pairing"),
    "demo": ("wsa_ros.tools.demo:main", "the main job: simulated arm + agent + fine-tuner over ROS on localhost"),
    "keygen": ("wsa_ros.tools.cli:keygen", "make an Ed25519 key pair for signing bundles (private key mode 0600)"),
    "sign-bundle": ("wsa_ros.tools.cli:sign_bundle", "sign a bundle's manifest with a private key (manifest.sig)"),
}


def _parse(name: str, argv, *arguments: tuple[str, dict]):
    import argparse

    ap = argparse.ArgumentParser(prog=f"wsa {name}", description=COMMANDS[name][1])
    for flag, kw in arguments:
        ap.add_argument(flag, **kw)
    return ap.parse_args(argv)


def keygen(argv=None) -> int:
    from wsa_ros.runtime.signing import SignatureError, generate_keypair

    args = _parse("keygen", argv,
                  ("--private", dict(required=True, help="private key file to create (PEM; kept by the learner only)")),
                  ("--public", dict(required=True, help="public key file to create (PEM; give it to the robots)")))
    try:
        kid = generate_keypair(args.private, args.public)
    except (SignatureError, OSError) as exc:
        print(f"wsa keygen: error: {exc}", file=sys.stderr)
        return 1
    print(f"key {kid}: private {args.private} (mode 600), public {args.public}")
    return 0


def sign_bundle(argv=None) -> int:
    """Never signs a bundle whose files do not match its own manifest."""
    from wsa_ros.runtime.bundle import BundleError, load_bundle
    from wsa_ros.runtime.signing import sign_bundle as sign

    args = _parse("sign-bundle", argv, ("bundle", dict(help="bundle folder (its hashes are checked first)")),
                  ("--key", dict(required=True, help="private key file (`wsa keygen`)")))
    try:
        b = load_bundle(args.bundle)
        info = sign(b.root, args.key)
    except (BundleError, OSError) as exc:
        print(f"wsa sign-bundle: error: {exc}", file=sys.stderr)
        return 1
    print(f"signed {b.root} ({b.name} v{b.version}) with key {info.key_id}: manifest sha256 {info.manifest_sha256}")
    return 0


def check_bundle(argv=None) -> int:
    import argparse

    from wsa_ros.runtime.bundle import BundleError
    from wsa_ros.runtime.engine import Engine

    ap = argparse.ArgumentParser(prog="wsa check-bundle", description=COMMANDS["check-bundle"][1])
    ap.add_argument("bundle", nargs="?", default="", help="bundle folder (default: the shipped models/default)")
    ap.add_argument("--providers", default="tensorrt,cuda,cpu")
    args = ap.parse_args(argv)
    from wsa_ros.config import resolve_bundle

    path = resolve_bundle(args.bundle)
    try:
        eng = Engine(path, providers=args.providers.split(","))
    except BundleError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    b = eng.bundle
    print(f"bundle {b.name} version {b.version} at {b.root}")
    print(f"  fusion {b.fusion} ({b.normalization}), provider {eng.provider}")
    for e in b.encoders:
        print(f"  encoder {e.name:12s} camera {e.camera:8s} role {e.role:8s} input {e.input.height}x{e.input.width} "
              f"{e.input.color}/{e.input.dtype} -> {e.output_shape}")
    if b.proprio:
        print(f"  proprio {b.proprio.fields} of {b.proprio.joint_names}")
    a = b.action
    print(f"  action {a.mode} {a.joint_names} [{a.units}] low {a.low} high {a.high}")
    print("OK: hashes, shapes and warm-up checked")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: wsa <command> [options]\n\ncommands:")
        for name, (_target, text) in COMMANDS.items():
            print(f"  {name:14s} {text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wsa: unknown command '{name}'; try 'wsa --help'", file=sys.stderr)
        return 2
    mod, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(mod), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
