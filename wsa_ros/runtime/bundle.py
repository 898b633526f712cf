"""The model bundle: one folder = ``manifest.yaml`` + encoder ONNX files + the
fusion-and-actor ONNX + the trainable head's weights (critic included, for training).

The same format serves export (``write_bundle``), the runtime (``load_bundle`` then
``wsa_ros.runtime.engine.Engine``), fine-tuning (the head weights + ``head`` config rebuild the
PyTorch module) and hot-swap (``compatible_with`` says whether two bundles can replace
each other in a running agent).

A bundle is untrusted data: the manifest is parsed with ``yaml.safe_load``, every file it
names must lie inside the bundle folder and match the sha256 the manifest states, and the
head weights are only ever read with ``torch.load(..., weights_only=True)``.
Shape and warm-up (NaN) checks need ONNX Runtime and live in ``wsa_ros.runtime.engine``.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

FORMAT = "wsa_bundle/1"
MANIFEST = "manifest.yaml"
FUSION_KINDS = ("wsa", "concat", "mean", "single", "e2e")
NORMALIZATIONS = ("softmax", "relu")
COLORS = ("rgb", "bgr", "gray")
ACTION_MODES = ("position", "velocity")
ROLES = ("feature", "context", "both")
WIRE_CHARS = "A-Za-z0-9._+-"  # what a name on the wire and in folder names may hold (versions, transfer labels)
VERSION_CHARS = re.compile(rf"^[{WIRE_CHARS}]{{1,64}}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def policy_id(version: str, manifest_sha256: str) -> str:
    """A policy's identity on the wire, as the agent's action records carry it in
    ``header.frame_id``: ``<version>@<sha256 of the manifest>``. The manifest covers every file's
    hash (and the signature covers the manifest), so two different policies never share an id."""
    return f"{version}@{manifest_sha256}" if manifest_sha256 else str(version)


def split_policy_id(text: str) -> tuple[str, str]:
    """(version, manifest sha256) of an action record's ``header.frame_id``; the one rule every
    reader of records uses (learner, bag import, monitor). Records made before the digest
    travelled carry the version alone: (version, "")."""
    version, sep, digest = str(text).rpartition("@")
    if sep and _SHA256.match(digest):
        return version, digest
    return str(text), ""


# libyaml's safe loader when PyYAML has it: a hot-swap parses the manifest beside the
# running control thread, and the pure-Python parser holds the interpreter lock 3-10x longer.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the cause."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- specs
@dataclass
class InputSpec:
    """What an encoder's ONNX input expects. The engine converts a camera frame
    (uint8 HxWx3 RGB) to exactly this."""

    height: int
    width: int
    color: str = "rgb"  # rgb | bgr | gray
    dtype: str = "uint8"  # uint8 (normalisation inside the graph) | float32
    layout: str = "nhwc"  # nhwc | nchw
    scale: float = 1.0  # float32 only: x = (pixel * scale - mean) / std
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def shape(self, batch: int = 1) -> tuple[int, ...]:
        if self.layout == "nhwc":
            return (batch, self.height, self.width, self.channels)
        return (batch, self.channels, self.height, self.width)


@dataclass
class EncoderSpec:
    name: str
    file: str
    sha256: str
    camera: str
    input: InputSpec
    output_shape: list[int]  # per sample, without the batch dimension
    role: str = "feature"  # feature | context | both
    onnx_input: str = "image"
    onnx_output: str = "embedding"
    source: str = ""  # where the weights came from (informational)

    @property
    def is_feature(self) -> bool:
        return self.role in ("feature", "both")

    @property
    def is_context(self) -> bool:
        return self.role in ("context", "both")


#: the proprioception fields a bundle may ask for: JointState's three, and the sine and cosine of
#: the position (continuous rather than wrapped: a continuous joint reported in [-pi, pi) jumps
#: by 2 pi where it crosses pi, and a policy reading the raw angle misjudged those states)
PROPRIO_FIELDS = ("position", "velocity", "effort", "sin_position", "cos_position")


@dataclass
class ProprioSpec:
    joint_names: list[str]
    fields: list[str]  # of PROPRIO_FIELDS, each for every joint (in the listed order)
    mean: list[float]
    std: list[float]

    @property
    def dim(self) -> int:
        return len(self.joint_names) * len(self.fields)


@dataclass
class ActionSpec:
    mode: str  # position | velocity (what the controller receives)
    joint_names: list[str]
    low: list[float]
    high: list[float]
    units: str = "rad"

    @property
    def dim(self) -> int:
        return len(self.joint_names)


@dataclass
class PolicySpec:
    """The fusion-and-actor ONNX: inputs ``emb_<encoder>`` (+ ``proprio``),
    outputs ``action`` (in [-1, 1]) and ``alpha`` (one weight per feature encoder)."""

    file: str
    sha256: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=lambda: ["action", "alpha"])


@dataclass
class Bundle:
    root: Path
    name: str
    version: str
    fusion: str  # wsa | concat | mean | single | e2e
    encoders: list[EncoderSpec]
    action: ActionSpec
    policy: PolicySpec
    proprio: ProprioSpec | None = None
    normalization: str = "softmax"
    head: dict[str, Any] = field(default_factory=dict)  # PyTorch head hyper-parameters
    weights: dict[str, str] | None = None  # {file, sha256}: torch state_dict (weights_only)
    recipe: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, str] = field(default_factory=dict)  # other hashed files

    # -- derived
    @property
    def cameras(self) -> list[str]:
        seen: list[str] = []
        for e in self.encoders:
            if e.camera not in seen:
                seen.append(e.camera)
        return seen

    @property
    def feature_encoders(self) -> list[EncoderSpec]:
        return [e for e in self.encoders if e.is_feature]

    @property
    def context_encoder(self) -> EncoderSpec | None:
        for e in self.encoders:
            if e.is_context:
                return e
        return None

    def path(self, rel: str) -> Path:
        return self.root / rel

    def to_manifest(self) -> dict[str, Any]:
        d = {
            "format": FORMAT,
            "name": self.name,
            "version": str(self.version),
            "fusion": self.fusion,
            "normalization": self.normalization,
            "encoders": [asdict(e) for e in self.encoders],
            "proprio": asdict(self.proprio) if self.proprio else None,
            "action": asdict(self.action),
            "policy": asdict(self.policy),
            "head": self.head,
            "weights": self.weights,
            "recipe": self.recipe,
            "extra_files": self.extra_files,
        }
        return d


# --------------------------------------------------------------------------- parsing
def _req(d: dict, key: str, where: str):
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"{where}: missing required key '{key}'")
    return d[key]


def _float_list(v, n: int | None, where: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        raise BundleError(f"{where}: expected a list of {n} numbers, got {v!r}")
    try:
        out = [float(x) for x in v]
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: not numbers: {v!r}") from exc
    return out


def _str_list(v, where: str) -> list[str]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise BundleError(f"{where}: expected a list of strings, got {v!r}")
    return list(v)


def _parse_input(d: dict, where: str) -> InputSpec:
    spec = InputSpec(
        height=int(_req(d, "height", where)),
        width=int(_req(d, "width", where)),
        color=str(d.get("color", "rgb")),
        dtype=str(d.get("dtype", "uint8")),
        layout=str(d.get("layout", "nhwc")),
        scale=float(d.get("scale", 1.0)),
    )
    c = spec.channels
    spec.mean = _float_list(d.get("mean", [0.0] * c), c, f"{where}.mean")
    spec.std = _float_list(d.get("std", [1.0] * c), c, f"{where}.std")
    if spec.color not in COLORS:
        raise BundleError(f"{where}.color: '{spec.color}' is not one of {COLORS}")
    if spec.dtype not in ("uint8", "float32"):
        raise BundleError(f"{where}.dtype: '{spec.dtype}' is not uint8 or float32")
    if spec.layout not in ("nhwc", "nchw"):
        raise BundleError(f"{where}.layout: '{spec.layout}' is not nhwc or nchw")
    if not (1 <= spec.height <= 4096 and 1 <= spec.width <= 4096):
        raise BundleError(f"{where}: image size {spec.height}x{spec.width} out of range")
    if any(s == 0 for s in spec.std):
        raise BundleError(f"{where}.std: zero standard deviation")
    return spec


def _safe_rel(root: Path, rel: str, where: str) -> str:
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: file name missing")
    p = (root / rel).resolve()
    if os.path.isabs(rel) or root.resolve() not in p.parents:
        raise BundleError(f"{where}: file '{rel}' lies outside the bundle folder {root}")
    return rel


def parse_manifest(root: Path, m: Any) -> Bundle:
    """Manifest dict -> Bundle, checking types and cross-references (no file access)."""
    src = f"{root / MANIFEST}"
    if not isinstance(m, dict):
        raise BundleError(f"{src}: manifest is not a mapping")
    fmt = m.get("format")
    if fmt != FORMAT:
        raise BundleError(f"{src}: format '{fmt}' is not '{FORMAT}'")
    fusion = str(_req(m, "fusion", src))
    if fusion not in FUSION_KINDS:
        raise BundleError(f"{src}: fusion '{fusion}' is not one of {FUSION_KINDS}")
    norm = str(m.get("normalization", "softmax"))
    if norm not in NORMALIZATIONS:
        raise BundleError(f"{src}: normalization '{norm}' is not one of {NORMALIZATIONS}")

    encs_raw = _req(m, "encoders", src)
    if not isinstance(encs_raw, list) or not encs_raw:
        raise BundleError(f"{src}: 'encoders' must be a non-empty list")
    encoders: list[EncoderSpec] = []
    for i, e in enumerate(encs_raw):
        w = f"{src}: encoders[{i}]"
        name = str(_req(e, "name", w))
        w = f"{src}: encoder '{name}'"
        role = str(e.get("role", "feature"))
        if role not in ROLES:
            raise BundleError(f"{w}: role '{role}' is not one of {ROLES}")
        shape = _req(e, "output_shape", w)
        if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise BundleError(f"{w}: output_shape must be a list of positive ints, got {shape!r}")
        encoders.append(
            EncoderSpec(
                name=name,
                file=_safe_rel(root, _req(e, "file", w), w),
                sha256=str(_req(e, "sha256", w)),
                camera=str(_req(e, "camera", w)),
                input=_parse_input(_req(e, "input", w), f"{w}.input"),
                output_shape=list(shape),
                role=role,
                onnx_input=str(e.get("onnx_input", "image")),
                onnx_output=str(e.get("onnx_output", "embedding")),
                source=str(e.get("source", "")),
            )
        )
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise BundleError(f"{src}: duplicate encoder names {names}")
    if not any(e.is_feature for e in encoders):
        raise BundleError(f"{src}: no encoder has role feature/both")
    if sum(e.is_context for e in encoders) > 1:
        raise BundleError(f"{src}: more than one context encoder")
    if fusion == "wsa" and not any(e.is_context for e in encoders):
        raise BundleError(f"{src}: fusion 'wsa' needs a context encoder (role context or both)")

    a = _req(m, "action", src)
    jn = _str_list(_req(a, "joint_names", f"{src}: action"), f"{src}: action.joint_names")
    action = ActionSpec(
        mode=str(_req(a, "mode", f"{src}: action")),
        joint_names=jn,
        low=_float_list(_req(a, "low", f"{src}: action"), len(jn), f"{src}: action.low"),
        high=_float_list(_req(a, "high", f"{src}: action"), len(jn), f"{src}: action.high"),
        units=str(a.get("units", "rad")),
    )
    if action.mode not in ACTION_MODES:
        raise BundleError(f"{src}: action.mode '{action.mode}' is not one of {ACTION_MODES}")
    if not jn:
        raise BundleError(f"{src}: action.joint_names is empty")
    if any(lo >= hi for lo, hi in zip(action.low, action.high)):
        raise BundleError(f"{src}: action.low must be below action.high for every joint")

    proprio = None
    p = m.get("proprio")
    if p:
        pj = _str_list(_req(p, "joint_names", f"{src}: proprio"), f"{src}: proprio.joint_names")
        pf = _str_list(_req(p, "fields", f"{src}: proprio"), f"{src}: proprio.fields")
        if not set(pf) <= set(PROPRIO_FIELDS):
            raise BundleError(f"{src}: proprio.fields {pf} not within {'/'.join(PROPRIO_FIELDS)}")
        dim = len(pj) * len(pf)
        proprio = ProprioSpec(
            joint_names=pj,
            fields=pf,
            mean=_float_list(p.get("mean", [0.0] * dim), dim, f"{src}: proprio.mean"),
            std=_float_list(p.get("std", [1.0] * dim), dim, f"{src}: proprio.std"),
        )
        if any(s <= 0 for s in proprio.std):
            raise BundleError(f"{src}: proprio.std must be positive")

    pol = _req(m, "policy", src)
    policy = PolicySpec(
        file=_safe_rel(root, _req(pol, "file", f"{src}: policy"), f"{src}: policy"),
        sha256=str(_req(pol, "sha256", f"{src}: policy")),
        inputs=_str_list(_req(pol, "inputs", f"{src}: policy"), f"{src}: policy.inputs"),
        outputs=_str_list(pol.get("outputs", ["action", "alpha"]), f"{src}: policy.outputs"),
    )
    expected = [f"emb_{e.name}" for e in encoders] + (["proprio"] if proprio else [])
    if sorted(policy.inputs) != sorted(expected):
        raise BundleError(f"{src}: policy.inputs {policy.inputs} do not match the encoders/proprio {expected}")

    weights = m.get("weights")
    if weights is not None:
        if not isinstance(weights, dict):
            raise BundleError(f"{src}: 'weights' must be a mapping with file and sha256")
        weights = {
            "file": _safe_rel(root, _req(weights, "file", f"{src}: weights"), f"{src}: weights"),
            "sha256": str(_req(weights, "sha256", f"{src}: weights")),
        }
    extra = m.get("extra_files") or {}
    if not isinstance(extra, dict):
        raise BundleError(f"{src}: 'extra_files' must map file -> sha256")
    for rel in extra:
        _safe_rel(root, rel, f"{src}: extra_files")

    return Bundle(
        root=root,
        name=str(m.get("name", root.name)),
        version=_version(m, src),
        fusion=fusion,
        normalization=norm,
        encoders=encoders,
        action=action,
        policy=policy,
        proprio=proprio,
        head=dict(m.get("head") or {}),
        weights=weights,
        recipe=dict(m.get("recipe") or {}),
        extra_files={str(k): str(v) for k, v in extra.items()},
    )


def hashed_files(b: Bundle) -> list[tuple[str, str]]:
    """(relative path, stated sha256) for every file the manifest names."""
    out = [(e.file, e.sha256) for e in b.encoders]
    out.append((b.policy.file, b.policy.sha256))
    if b.weights:
        out.append((b.weights["file"], b.weights["sha256"]))
    out.extend(b.extra_files.items())
    return out


def verify_files(b: Bundle) -> None:
    for rel, want in hashed_files(b):
        p = b.path(rel)
        if not p.is_file():
            raise BundleError(f"{p}: file named in the manifest is missing")
        got = sha256_file(p)
        if got != want:
            raise BundleError(
                f"{p}: sha256 mismatch (manifest says {want[:12]}…, file has {got[:12]}…); "
                "the file was changed or corrupted after export"
            )


def _version(m: dict, src: str) -> str:
    v = str(_req(m, "version", src))
    if not VERSION_CHARS.match(v):
        raise BundleError(f"{src}: version '{v}' has characters a policy id cannot carry; use 1-64 letters, "
                          "digits and . _ + - (for example 2 or 1+ft5)")
    return v


def load_bundle(path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle folder (or its manifest.yaml). Raises BundleError."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    mf = p / MANIFEST
    if not p.is_dir():
        raise BundleError(f"{p}: bundle folder does not exist")
    if not mf.is_file():
        raise BundleError(f"{mf}: no manifest in bundle folder")
    try:
        with open(mf, encoding="utf-8") as f:
            m = yaml.load(f, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf}: not valid YAML: {exc}") from exc
    b = parse_manifest(p, m)
    if verify_hashes:
        verify_files(b)
    return b


def write_manifest(b: Bundle, rehash: bool = True) -> Path:
    """Write ``manifest.yaml`` for a bundle whose files already lie in ``b.root``;
    with ``rehash`` the sha256 of every named file is computed now."""
    if rehash:
        for e in b.encoders:
            e.sha256 = sha256_file(b.path(e.file))
        b.policy.sha256 = sha256_file(b.path(b.policy.file))
        if b.weights:
            b.weights["sha256"] = sha256_file(b.path(b.weights["file"]))
        b.extra_files = {rel: sha256_file(b.path(rel)) for rel in b.extra_files}
    m = b.to_manifest()
    parse_manifest(b.root, copy.deepcopy(m))  # never write a manifest we could not read back
    out = b.root / MANIFEST
    tmp = out.with_suffix(".yaml.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(m, f, sort_keys=False, default_flow_style=None, width=120)
    os.replace(tmp, out)
    return out


def compatible_with(old: Bundle, new: Bundle) -> list[str]:
    """Reasons why ``new`` cannot hot-swap ``old`` in a running agent (empty = ok):
    it must read the same cameras at the same sizes, the same proprioception, and
    command the same joints in the same mode within the same bounds (the agent's
    safety envelope changes only on restart)."""
    why = []
    if old.cameras != new.cameras:
        why.append(f"cameras differ: {old.cameras} vs {new.cameras}")
    op = (old.proprio.joint_names, old.proprio.fields) if old.proprio else None
    np_ = (new.proprio.joint_names, new.proprio.fields) if new.proprio else None
    if op != np_:
        why.append(f"proprioception differs: {op} vs {np_}")
    if old.action.joint_names != new.action.joint_names:
        why.append(f"action joints differ: {old.action.joint_names} vs {new.action.joint_names}")
    if old.action.mode != new.action.mode:
        why.append(f"action mode differs: {old.action.mode} vs {new.action.mode}")
    if list(old.action.low) != list(new.action.low) or list(old.action.high) != list(new.action.high):
        why.append(f"action bounds differ: [{old.action.low}, {old.action.high}] vs [{new.action.low}, "
                   f"{new.action.high}] (the safety envelope changes only on restart)")
    return why
