"""Bundle validation and the ONNX Runtime engine (ROS-free)."""
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml

from wsa_ros.bundle import (BundleError, EncoderSpec, InputSpec, compatible_with, load_bundle,
                            sha256_file, write_manifest)
from wsa_ros.engine import Engine, EngineError, build_proprio


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _manifest(path):
    with open(path / "manifest.yaml") as f:
        return yaml.safe_load(f)


def _write(path, m):
    with open(path / "manifest.yaml", "w") as f:
        yaml.safe_dump(m, f, sort_keys=False)


def _frames(b, seed=0, size=None):
    rng = np.random.default_rng(seed)
    out = {}
    for cam in b.cameras:
        e = next(e for e in b.encoders if e.camera == cam)
        h, w = size or (e.input.height, e.input.width)
        out[cam] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return out


def _proprio(b, seed=0):
    return np.random.default_rng(seed).normal(size=b.proprio.dim) if b.proprio else None


def test_engine_step_scales_action_and_alpha_sums_to_one(tiny_bundle):
    eng = Engine(tiny_bundle, providers=["cpu"])
    b = eng.bundle
    assert eng.provider == "CPUExecutionProvider"
    r = eng.step(_frames(b), _proprio(b))
    low, high = np.array(b.action.low), np.array(b.action.high)
    assert r.action.shape == (b.action.dim,)
    assert np.all(np.abs(r.action_norm) <= 1.0)
    np.testing.assert_allclose(r.action, low + (r.action_norm + 1) / 2 * (high - low), rtol=1e-12)
    assert r.alpha.shape == (len(b.feature_encoders),)
    assert abs(float(r.alpha.sum()) - 1.0) < 1e-5
    assert eng.fused and set(r.timings) == {"preprocess", "infer", "total"}
    # the chained sessions (per-stage timings) give the same step as the merged graph
    chained = Engine(tiny_bundle, providers=["cpu"], fuse=False)
    rc = chained.step(_frames(b), _proprio(b))
    np.testing.assert_allclose(rc.action_norm, r.action_norm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rc.alpha, r.alpha, rtol=1e-5, atol=1e-6)
    for stage in ["preprocess", "policy", "total"] + [f"enc_{e.name}" for e in b.encoders]:
        assert rc.timings[stage] >= 0.0
    # the split path used by learners and tools gives the same action
    a, alpha = eng.act(eng.embed(_frames(b)), _proprio(b))
    np.testing.assert_allclose(a[0], r.action_norm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alpha[0], r.alpha, rtol=1e-5, atol=1e-6)


def test_engine_resizes_any_frame_size_and_outputs_depend_on_the_image(tiny_bundle):
    eng = Engine(tiny_bundle, providers=["cpu"])
    b = eng.bundle
    p = _proprio(b)
    r1 = eng.step(_frames(b, 1, size=(240, 320)), p).action_norm.copy()
    r2 = eng.step(_frames(b, 2, size=(240, 320)), p).action_norm.copy()
    assert not np.allclose(r1, r2)
    mono = {c: np.full((50, 60), 99, np.uint8) for c in b.cameras}
    rgb = {c: np.full((50, 60, 3), 99, np.uint8) for c in b.cameras}
    np.testing.assert_allclose(eng.step(mono, p).action_norm, eng.step(rgb, p).action_norm, atol=1e-6)


def test_engine_rejects_bad_inputs_with_clear_errors(tiny_bundle):
    eng = Engine(tiny_bundle, providers=["cpu"])
    b = eng.bundle
    p = _proprio(b)
    with pytest.raises(EngineError, match="no frame for camera"):
        eng.step({"nope": np.zeros((8, 8, 3), np.uint8)}, p)
    cam = b.cameras[0]
    with pytest.raises(EngineError, match="uint8"):
        eng.step({cam: np.zeros((8, 8, 3), np.float32)}, p)
    with pytest.raises(EngineError, match="shape"):
        eng.step({cam: np.zeros((8, 8, 4), np.uint8)}, p)
    with pytest.raises(EngineError, match="shape"):
        eng.step({cam: np.zeros((0, 8, 3), np.uint8)}, p)
    if b.proprio:
        bad = p.copy()
        bad[0] = np.nan
        with pytest.raises(EngineError, match="NaN"):
            eng.step(_frames(b), bad)
        with pytest.raises(EngineError, match="values"):
            eng.step(_frames(b), p[:-1])
    # still works afterwards
    assert np.all(np.isfinite(eng.step(_frames(b), p).action))


def test_missing_providers_fall_back_to_cpu_with_a_warning(tiny_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="wsa_ros.engine"):
        eng = Engine(tiny_bundle, providers=["tensorrt", "cuda", "cpu"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert eng.provider == "CPUExecutionProvider"
        assert "TensorrtExecutionProvider is not available" in caplog.text
    with pytest.raises(EngineError, match="unknown execution provider"):
        Engine(tiny_bundle, providers=["warp-drive"])


def test_build_proprio_reorders_by_name_and_names_missing_joints(tiny_bundle):
    b = load_bundle(tiny_bundle)
    spec = b.proprio
    names = list(reversed(spec.joint_names)) + ["extra"]
    pos = [float(i) for i in range(len(names))]
    vel = [10.0 + i for i in range(len(names))]
    eff = [0.0] * len(names)
    v = build_proprio(spec, names, pos, vel, eff)
    k = 0
    for fld, vals in (("position", pos), ("velocity", vel), ("effort", eff)):
        if fld not in spec.fields:
            continue
        for j in spec.joint_names:
            assert v[k] == vals[names.index(j)]
            k += 1
    drop = names.index(spec.joint_names[0])
    keep = [i for i in range(len(names)) if i != drop]
    with pytest.raises(ValueError, match=spec.joint_names[0]):
        build_proprio(spec, [names[i] for i in keep], [pos[i] for i in keep], [vel[i] for i in keep],
                      [eff[i] for i in keep])
    bad = list(pos)
    bad[names.index(spec.joint_names[0])] = float("inf")
    if "position" in spec.fields:
        with pytest.raises(ValueError, match="not finite"):
            build_proprio(spec, names, bad, vel, eff)


def test_float_nchw_preprocessing_matches_the_formula():
    spec = EncoderSpec(name="r", file="r.onnx", sha256="", camera="c",
                       input=InputSpec(height=4, width=5, color="bgr", dtype="float32", layout="nchw",
                                       scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                       output_shape=[7])
    img = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    buf = np.zeros(spec.input.shape(1), np.float32)
    Engine._fill(spec, buf, img)
    want = ((img[:, :, ::-1].astype(np.float32) / 255 - np.array(spec.input.mean, np.float32))
            / np.array(spec.input.std, np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(buf[0], want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- bundle validation
def test_missing_file_is_named(bundle_copy):
    b = load_bundle(bundle_copy)
    victim = bundle_copy / b.encoders[0].file
    victim.unlink()
    with pytest.raises(BundleError, match=f"{victim.name}.*missing"):
        load_bundle(bundle_copy)


def test_hash_mismatch_is_named(bundle_copy):
    b = load_bundle(bundle_copy)
    victim = bundle_copy / b.policy.file
    with open(victim, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{victim.name}: sha256 mismatch"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Engine(bundle_copy, providers=["cpu"])


def test_shape_mismatch_is_named(bundle_copy):
    m = _manifest(bundle_copy)
    m["encoders"][0]["output_shape"] = [int(np.prod(m["encoders"][0]["output_shape"])) + 1]
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match=f"{m['encoders'][0]['file']}.*output shape"):
        Engine(bundle_copy, providers=["cpu"])
    m["encoders"][0]["input"]["height"] += 3
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match="input shape"):
        Engine(bundle_copy, providers=["cpu"])


def test_nan_output_on_warmup_is_named(bundle_copy):
    b = load_bundle(bundle_copy)
    K, A = len(b.feature_encoders), b.action.dim
    names = b.policy.inputs

    class NaNPolicy(torch.nn.Module):
        def forward(self, *xs):
            z = sum(x.flatten(1).sum(1, keepdim=True) for x in xs) * 0.0  # uses every input
            return z.expand(-1, A) * float("nan"), torch.softmax(z.expand(-1, K), dim=1)

    shapes = {f"emb_{e.name}": [1, *e.output_shape] for e in b.encoders}
    if b.proprio:
        shapes["proprio"] = [1, b.proprio.dim]
    args = tuple(torch.zeros(shapes[n]) for n in names)
    torch.onnx.export(NaNPolicy(), args, str(bundle_copy / b.policy.file), input_names=names,
                      output_names=["action", "alpha"], dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in names + ["action", "alpha"]})
    write_manifest(b)  # re-hash: the file is "valid" but broken
    with pytest.raises(BundleError, match=f"{b.policy.file}: warm-up produced a non-finite"):
        Engine(bundle_copy, providers=["cpu"])


def test_manifest_errors(bundle_copy):
    m = _manifest(bundle_copy)
    _write(bundle_copy, {**m, "format": "something/9"})
    with pytest.raises(BundleError, match="format"):
        load_bundle(bundle_copy)
    evil = {**m, "policy": {**m["policy"], "file": "../../etc/passwd"}}
    _write(bundle_copy, evil)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy)
    _write(bundle_copy, {**m, "fusion": "magic"})
    with pytest.raises(BundleError, match="fusion"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.yaml").write_text("encoders: [unclosed\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(BundleError):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.yaml").unlink()
    with pytest.raises(BundleError, match="no manifest"):
        load_bundle(bundle_copy)


def test_compatibility_for_hot_swap(tiny_bundle, bundle_copy):
    old = load_bundle(tiny_bundle)
    m = _manifest(bundle_copy)
    m["action"]["joint_names"] = list(reversed(m["action"]["joint_names"]))
    m["version"] = "other"
    _write(bundle_copy, m)
    new = load_bundle(bundle_copy)
    assert compatible_with(old, old) == []
    reasons = compatible_with(old, new)
    assert len(reasons) == 1 and "action joints differ" in reasons[0]


def test_write_manifest_hashes_every_file(bundle_copy):
    b = load_bundle(bundle_copy)
    for e in b.encoders:
        assert e.sha256 == sha256_file(bundle_copy / e.file)
    assert b.policy.sha256 == sha256_file(bundle_copy / b.policy.file)
    if b.weights:
        assert b.weights["sha256"] == sha256_file(bundle_copy / b.weights["file"])
