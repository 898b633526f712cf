"""PyTorch -> bundle: encoders/*.onnx, policy.onnx, head.pt and manifest.yaml.

``export_bundle`` writes a complete bundle (into a temporary sibling folder that then replaces
``out_dir``) and checks the exported policy against PyTorch with ONNX Runtime;
``load_policy_module`` rebuilds the trainable ``FusionPolicy`` from a bundle for fine-tuning;
``add_encoder_to_bundle`` / ``remove_encoder_from_bundle`` derive a new bundle that reuses the
trained shared scorer, adapters and heads. Bundles run through
``wsa_ros.runtime.engine.Engine``, the agent's own runtime.

Policy ONNX: inputs ``emb_<name>`` ``[B, *output_shape]`` for every encoder in manifest order
(context encoders and encoders a baseline ignores included), then ``proprio`` ``[B, P]``;
outputs ``action`` ``[B, A]`` = tanh(mean), ``alpha`` ``[B, K]`` and ``log_std`` ``[B, A]`` (the
pre-tanh Gaussian's, what the agent samples with when it explores); batch dynamic; opset 17;
exported with the TorchScript-based exporter (``dynamo=False``).
"""
from __future__ import annotations

import warnings
import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from wsa_ros.runtime.bundle import (
    ActionSpec,
    Bundle,
    BundleError,
    EncoderSpec,
    InputSpec,
    PolicySpec,
    ProprioSpec,
    load_bundle,
    write_manifest,
)
from wsa_ros.model.encoders import (
    OPSET,
    export_encoder_onnx,
    import_onnx_encoder,
    ort_session,
)
from wsa_ros.model.wsa import FusionPolicy, PolicyExport

POLICY_FILE = "policy.onnx"
POLICY_OUTPUTS = ("action", "alpha", "log_std")
WEIGHTS_FILE = "head.pt"
RTOL = 1e-4


@dataclass
class EncoderSource:
    """One encoder to put into a bundle: a torch ``module`` (exported here; for uint8 NHWC
    input it receives float NCHW in [0, 1]) or an existing ``onnx`` file (copied)."""

    name: str
    camera: str
    input: InputSpec
    role: str = "feature"
    module: nn.Module | None = None
    onnx: str | os.PathLike | None = None
    source: str = ""
    onnx_input: str | None = None
    onnx_output: str | None = None

    @classmethod
    def from_spec(cls, spec: EncoderSpec, root: str | os.PathLike | None = None) -> "EncoderSource":
        """From a bundle's EncoderSpec (``file`` relative to ``root``, or absolute)."""
        p = Path(spec.file)
        if not p.is_absolute():
            if root is None:
                raise ValueError(f"encoder '{spec.name}': relative file '{spec.file}' needs the bundle root")
            p = Path(root) / p
        return cls(
            name=spec.name,
            camera=spec.camera,
            input=copy.deepcopy(spec.input),
            role=spec.role,
            onnx=p,
            source=spec.source,
            onnx_input=spec.onnx_input,
            onnx_output=spec.onnx_output,
        )


def _materialise(src: EncoderSource | EncoderSpec, folder: Path, root: str | os.PathLike | None) -> EncoderSpec:
    """Write/copy one encoder into ``folder/encoders/<name>.onnx`` and return its spec."""
    if isinstance(src, EncoderSpec):
        src = EncoderSource.from_spec(src, root)
    rel = f"encoders/{src.name}.onnx"
    dst = folder / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.module is not None and src.onnx is not None:
        raise ValueError(f"encoder '{src.name}': give either a torch module or an ONNX file, not both")
    if src.module is not None:
        shape = export_encoder_onnx(src.module, dst, src.input)
        iname, oname = "image", "embedding"
    elif src.onnx is not None:
        spec = import_onnx_encoder(src.onnx, src.input, src.name, src.camera, src.role, out_dir=folder, output_name=src.onnx_output)
        if src.onnx_input and src.onnx_input != spec.onnx_input:
            raise ValueError(f"encoder '{src.name}': ONNX input is '{spec.onnx_input}', not '{src.onnx_input}'")
        shape, iname, oname = spec.output_shape, spec.onnx_input, spec.onnx_output
    else:
        raise ValueError(f"encoder '{src.name}': neither a torch module nor an ONNX file was given")
    return EncoderSpec(
        name=src.name,
        file=rel,
        sha256="",
        camera=src.camera,
        input=copy.deepcopy(src.input),
        output_shape=list(shape),
        role=src.role,
        onnx_input=iname,
        onnx_output=oname,
        source=src.source,
    )


def check_policy_matches(policy: FusionPolicy, encoders: Sequence[EncoderSpec], proprio: ProprioSpec | None, action: ActionSpec) -> None:
    """Raise ValueError when the head was built for other encoders/proprio/action sizes."""
    want = [(e.name, list(e.output_shape), e.role) for e in encoders]
    have = [(e["name"], e["output_shape"], e["role"]) for e in policy.config["encoders"]]
    if want != have:
        raise ValueError(f"the policy head was built for encoders {have}, but the bundle has {want}")
    p = proprio.dim if proprio else 0
    if p != policy.proprio_dim:
        raise ValueError(f"the policy head expects proprio_dim {policy.proprio_dim}, the proprio spec has {p}")
    if action.dim != policy.action_dim:
        raise ValueError(f"the policy head outputs {policy.action_dim} actions, the action spec names {action.dim} joints")


def _fix_policy_inputs(path: Path, names: list[str], shapes: list[list[int]]) -> None:
    """The TorchScript exporter drops inputs a graph does not use (e.g. the context encoder
    in a baseline); put every declared input back, in bundle order."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    present = {i.name: i for i in m.graph.input}
    ordered = []
    for n, s in zip(names, shapes):
        ordered.append(present[n] if n in present else helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *s]))
    others = [i for i in m.graph.input if i.name not in names]
    del m.graph.input[:]
    m.graph.input.extend(ordered + others)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def export_policy_onnx(policy: FusionPolicy, path: str | os.PathLike, opset: int = OPSET, check: bool = True) -> list[str]:
    """Export ``policy`` (a copy, on CPU, eval mode) to ``path``; returns the input names.
    With ``check`` the ONNX Runtime outputs are compared with PyTorch on random inputs."""
    path = Path(path)
    pol = copy.deepcopy(policy).cpu().eval()
    names = [f"emb_{n}" for n in pol.encoder_names]
    shapes = [pol.shapes[n] for n in pol.encoder_names]
    if pol.proprio_dim:
        names.append("proprio")
        shapes.append([pol.proprio_dim])
    g = torch.Generator().manual_seed(0)
    dummy = tuple(torch.randn(2, *s, generator=g) for s in shapes)
    axes = {n: {0: "batch"} for n in names} | {o: {0: "batch"} for o in POLICY_OUTPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            PolicyExport(pol),
            dummy,
            str(path),
            input_names=names,
            output_names=list(POLICY_OUTPUTS),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    _fix_policy_inputs(path, names, shapes)
    if check:
        compare_policy_with_onnx(pol, path, batch=3, seed=1)
    return names


def compare_policy_with_onnx(policy: FusionPolicy, path: str | os.PathLike, batch: int = 3, seed: int = 1, scale: float = 1.0) -> float:
    """Max relative error between PyTorch and ONNX Runtime on random inputs; raises
    ValueError above ``RTOL`` (relative to max(1, |torch output|))."""
    pol = copy.deepcopy(policy).cpu().eval()
    g = torch.Generator().manual_seed(seed)
    embs = {n: scale * torch.randn(batch, *pol.shapes[n], generator=g) for n in pol.encoder_names}
    proprio = torch.randn(batch, pol.proprio_dim, generator=g) if pol.proprio_dim else None
    with torch.no_grad():
        a_t, al_t, ls_t = PolicyExport(pol)(*embs.values(), *([proprio] if proprio is not None else []))
    feed = {f"emb_{n}": v.numpy() for n, v in embs.items()}
    if proprio is not None:
        feed["proprio"] = proprio.numpy()
    sess = ort_session(path)
    a_o, al_o, ls_o = sess.run(list(POLICY_OUTPUTS), feed)
    err = 0.0
    for t, o in ((a_t.numpy(), a_o), (al_t.numpy(), al_o), (ls_t.numpy(), ls_o)):
        if t.shape != o.shape:
            raise ValueError(f"{path}: ONNX output shape {o.shape} differs from PyTorch {t.shape}")
        err = max(err, float(np.max(np.abs(t - o) / np.maximum(1.0, np.abs(t)))))
    if not err <= RTOL:
        raise ValueError(f"{path}: ONNX Runtime and PyTorch disagree (max relative error {err:.2e} > {RTOL})")
    return err


def _replace_dir(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    out_dir: str | os.PathLike,
    policy: FusionPolicy,
    encoders: Sequence[EncoderSource | EncoderSpec],
    action: ActionSpec,
    proprio: ProprioSpec | None = None,
    name: str = "wsa",
    version: str = "1",
    recipe: dict[str, Any] | None = None,
    encoder_root: str | os.PathLike | None = None,
    extra_files: dict[str, str | os.PathLike] | None = None,
    opset: int = OPSET,
    check: bool = True,
) -> Bundle:
    """Write a complete bundle to ``out_dir`` (replacing what is there) and return it loaded
    (hashes verified). ``encoders`` in bundle order: EncoderSource, or EncoderSpec whose
    relative ``file`` lies under ``encoder_root``. Fusion, normalisation and the ``head``
    mapping come from ``policy.config``. ``extra_files``: {path in bundle: source file}."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        specs = [_materialise(e, tmp, encoder_root) for e in encoders]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate encoder names {names}")
        check_policy_matches(policy, specs, proprio, action)
        inputs = export_policy_onnx(policy, tmp / POLICY_FILE, opset=opset, check=check)
        sd = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
        torch.save(sd, tmp / WEIGHTS_FILE)
        extras: dict[str, str] = {}
        for rel, srcp in (extra_files or {}).items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(srcp, dst)
            extras[rel] = ""
        b = Bundle(
            root=tmp,
            name=name,
            version=str(version),
            fusion=policy.fusion,
            encoders=specs,
            action=copy.deepcopy(action),
            policy=PolicySpec(file=POLICY_FILE, sha256="", inputs=inputs, outputs=list(POLICY_OUTPUTS)),
            proprio=copy.deepcopy(proprio),
            normalization=policy.normalization,
            head=policy.config,
            weights={"file": WEIGHTS_FILE, "sha256": ""},
            recipe=copy.deepcopy(recipe or {}),
            extra_files=extras,
        )
        write_manifest(b)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out)


def load_policy_module(bundle: Bundle | str | os.PathLike, map_location: str = "cpu") -> FusionPolicy:
    """Rebuild the trainable FusionPolicy (adapters, scorer, actor, critic) from a bundle's
    ``head`` mapping and ``head.pt`` (read with ``weights_only=True``)."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if not b.head:
        raise BundleError(f"{b.root}: manifest has no 'head' mapping; cannot rebuild the PyTorch module")
    if not b.weights:
        raise BundleError(f"{b.root}: manifest names no head weights; cannot fine-tune this bundle")
    try:
        policy = FusionPolicy.from_config(b.head)
    except ValueError as exc:
        raise BundleError(f"{b.root}: bad 'head' mapping: {exc}") from exc
    try:
        check_policy_matches(policy, b.encoders, b.proprio, b.action)
    except ValueError as exc:
        raise BundleError(f"{b.root}: {exc}") from exc
    wpath = b.path(b.weights["file"])
    try:
        sd = torch.load(wpath, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BundleError(f"{wpath}: cannot read the head weights (weights_only): {exc}") from exc
    try:
        policy.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{wpath}: weights do not fit the head described in the manifest: {exc}") from exc
    return policy.to(map_location)


def add_encoder_to_bundle(
    bundle: Bundle | str | os.PathLike,
    out_dir: str | os.PathLike,
    encoder: EncoderSource | EncoderSpec,
    version: str | None = None,
    name: str | None = None,
    encoder_root: str | os.PathLike | None = None,
) -> Bundle:
    """A new bundle = ``bundle`` + one encoder. The trained shared scorer, the other adapters
    and the actor/critic are reused; only the new encoder's adapter is fresh (the policy's
    behaviour changes, so fine-tune it afterwards). Default version ``<old>+<encoder>``."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    policy = load_policy_module(b)
    with tempfile.TemporaryDirectory(prefix="wsa-add-") as td:
        spec = _materialise(encoder, Path(td), encoder_root)
        new_src = EncoderSource.from_spec(spec, td)
        new_policy = policy.add_encoder(spec.name, spec.output_shape, spec.role)
        recipe = copy.deepcopy(b.recipe)
        recipe["derived_from"] = {"name": b.name, "version": b.version, "added_encoder": spec.name}
        return export_bundle(
            out_dir,
            new_policy,
            [EncoderSource.from_spec(e, b.root) for e in b.encoders] + [new_src],
            b.action,
            b.proprio,
            name=name or b.name,
            version=version or f"{b.version}+{spec.name}",
            recipe=recipe,
        )


def remove_encoder_from_bundle(
    bundle: Bundle | str | os.PathLike, out_dir: str | os.PathLike, encoder: str, version: str | None = None
) -> Bundle:
    """A new bundle without ``encoder``; everything else keeps its trained weights."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    new_policy = load_policy_module(b).remove_encoder(encoder)
    recipe = copy.deepcopy(b.recipe)
    recipe["derived_from"] = {"name": b.name, "version": b.version, "removed_encoder": encoder}
    return export_bundle(
        out_dir,
        new_policy,
        [EncoderSource.from_spec(e, b.root) for e in b.encoders if e.name != encoder],
        b.action,
        b.proprio,
        name=b.name,
        version=version or f"{b.version}-{encoder}",
        recipe=recipe,
    )


__all__ = [
    "EncoderSource",
    "add_encoder_to_bundle",
    "check_policy_matches",
    "compare_policy_with_onnx",
    "export_bundle",
    "export_policy_onnx",
    "load_policy_module",
    "remove_encoder_from_bundle",
]
