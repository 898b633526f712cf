"""Shared fixtures.

``tiny_bundle``  (session) Path of a small untrained WSA bundle built in about a second through
                 ``wsa_ros.model.export.export_bundle``. Do not modify it; copy it first.
                 Encoders (all camera ``front``, uint8 NHWC RGB): ``ae`` 40x40 -> [64, 2, 2]
                 (feature), ``idm`` 48x48 -> [32] (feature), ``ctx`` 40x40 -> [64, 2, 2]
                 (context). Proprio: joint0, joint1 x (position, velocity). Action: velocity,
                 joint0/joint1 in [-3, 3] rad/s.
``make_bundle``  (session) factory ``make_bundle(fusion="wsa", normalization="softmax",
                 proprio=True, action_dim=2, two_cameras=False, imported=False, seed=0,
                 name="tiny", version="1", out_dir=None, **head_options) -> Path``; every call
                 writes a new folder. ``fusion="e2e"`` gives one ``pixels`` encoder 40x40 ->
                 [3, 40, 40]; ``imported=True`` adds a float32 NCHW ``imp`` encoder (ImageNet
                 mean/std) exported by a stand-in torch net and brought in with
                 ``import_onnx_encoder``; ``two_cameras`` moves ``idm`` to camera ``wrist``.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

# shared test helpers (bagdata.py) import by name from every test folder
sys.path.insert(0, str(Path(__file__).resolve().parent))

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _build(root: Path, fusion="wsa", normalization="softmax", proprio=True, action_dim=2, two_cameras=False,
           imported=False, seed=0, name="tiny", version="1", action_mode="velocity", **head):
    import torch

    from wsa_ros.runtime.bundle import ActionSpec, InputSpec, ProprioSpec
    from wsa_ros.model.encoders import ConvEncoder, NatureEncoder, Pixels, export_encoder_onnx, import_onnx_encoder
    from wsa_ros.model.export import EncoderSource, export_bundle
    from wsa_ros.model.wsa import FusionPolicy, make_head_config

    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    cam2 = "wrist" if two_cameras else "front"
    if fusion == "e2e":
        srcs = [EncoderSource("pixels", "front", InputSpec(40, 40), "feature", module=Pixels(), source="identity")]
    else:
        srcs = [
            EncoderSource("ae", "front", InputSpec(40, 40), "feature", module=ConvEncoder(), source="random init"),
            EncoderSource("idm", cam2, InputSpec(48, 48), "feature", module=NatureEncoder(48, 48, 32), source="random init"),
            EncoderSource("ctx", "front", InputSpec(40, 40), "context", module=ConvEncoder(), source="random init"),
        ]
        if imported:
            spec = InputSpec(34, 34, color="rgb", dtype="float32", layout="nchw", scale=1 / 255,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD)
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                      torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
            stand_in = root.parent / f"{root.name}-backbone.onnx"
            export_encoder_onnx(net, stand_in, spec)
            srcs.append(import_onnx_encoder(stand_in, spec, "imp", "front", source="stand-in backbone"))
    joints = [f"joint{i}" for i in range(action_dim)]
    if action_mode == "position":
        action = ActionSpec("position", joints, [-1.0] * action_dim, [1.0] * action_dim, "rad")
    else:
        action = ActionSpec("velocity", joints, [-3.0] * action_dim, [3.0] * action_dim, "rad/s")
    pspec = None
    if proprio:
        pspec = ProprioSpec(joints, ["position", "velocity"], [0.0] * (2 * action_dim),
                            [1.0] * action_dim + [2.0] * action_dim)
    encs = []
    for s in srcs:
        if isinstance(s, EncoderSource):
            with torch.no_grad():
                shape = list(s.module(torch.zeros(1, 3, s.input.height, s.input.width)).shape[1:])
        else:
            shape = s.output_shape
        encs.append({"name": s.name, "output_shape": shape, "role": s.role})
    opts = {"d": 16, "actor_hidden": [32, 32], "critic_hidden": [32, 32], **head}
    cfg = make_head_config(fusion, encs, action_dim, pspec.dim if pspec else 0, normalization, **opts)
    policy = FusionPolicy.from_config(cfg)
    export_bundle(root, policy, srcs, action, pspec, name=name, version=version,
                  recipe={"command": "test fixture", "seed": seed})
    return root


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory):
    counter = itertools.count()

    def factory(out_dir=None, **kw) -> Path:
        root = Path(out_dir) if out_dir else tmp_path_factory.mktemp("bundles") / f"b{next(counter)}"
        return _build(root, **kw)

    return factory


@pytest.fixture(scope="session")
def tiny_bundle(make_bundle) -> Path:
    return make_bundle(name="tiny", version="1")


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """A test that starts nodes must stop them: a node left running would keep publishing on its
    domain and load the machine for every later test. Its leftovers are killed and the test errors."""
    import os
    import signal
    import time

    before = {p for p, _ in _children(os.getpid())}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [(p, c) for p, c in _children(os.getpid()) if p not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p, _ in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"the test left processes running: {left}"
