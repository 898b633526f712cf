"""Bundle validation and the ONNX Runtime engine (ROS-free)."""
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml

from wsa_ros.runtime.bundle import (BundleError, EncoderSpec, InputSpec, compatible_with, load_bundle, policy_id,
                            sha256_file, split_policy_id, write_manifest)
from wsa_ros.runtime.engine import Engine, EngineError
from wsa_ros.runtime.observation import build_proprio


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
    # the policy's log-std (what the agent samples with when it explores): the same in both
    # paths, and what the PyTorch actor computes on the same embeddings
    import torch

    from wsa_ros.model.export import load_policy_module

    assert eng.has_log_std and r.log_std.shape == (b.action.dim,)
    np.testing.assert_allclose(rc.log_std, r.log_std, rtol=1e-5, atol=1e-6)
    pol = load_policy_module(b).eval()
    embs = {k: torch.as_tensor(v) for k, v in eng.embed(_frames(b)).items()}
    p = torch.as_tensor((_proprio(b) - np.array(b.proprio.mean)) / np.array(b.proprio.std), dtype=torch.float32)[None]
    with torch.no_grad():
        mean, log_std, _ = pol.actor(embs, p)
    np.testing.assert_allclose(r.log_std, log_std[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.action_norm, np.tanh(mean[0].numpy()), rtol=1e-4, atol=1e-5)


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
    with caplog.at_level(logging.WARNING, logger="wsa_ros.runtime.engine"):
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
    for bad in ("1 beta", "2@" + "a" * 64, ""):  # a version names the policy on the wire: no space, no '@'
        _write(bundle_copy, {**m, "version": bad})
        with pytest.raises(BundleError, match="version .* letters, digits"):
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
    m["action"]["joint_names"] = list(reversed(m["action"]["joint_names"]))
    m["action"]["high"] = [h * 2 for h in m["action"]["high"]]
    _write(bundle_copy, m)
    reasons = compatible_with(old, load_bundle(bundle_copy))
    assert len(reasons) == 1 and "action bounds differ" in reasons[0]


def test_write_manifest_hashes_every_file(bundle_copy):
    b = load_bundle(bundle_copy)
    for e in b.encoders:
        assert e.sha256 == sha256_file(bundle_copy / e.file)
    assert b.policy.sha256 == sha256_file(bundle_copy / b.policy.file)
    if b.weights:
        assert b.weights["sha256"] == sha256_file(bundle_copy / b.weights["file"])


# --------------------------------------------------------------------------- graph rewrites
def _ort_run(model, feeds, level="all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _random_feeds(model, batch, seed):
    """Random inputs for every graph input: uint8 frames, float embeddings/proprio."""
    import onnx

    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        shape = [batch if not d.HasField("dim_value") else d.dim_value for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.UINT8:
            feeds[i.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feeds[i.name] = rng.normal(size=shape).astype(np.float32) * 2.0
    return feeds


def _assert_rewrite_exact(path, expect=None):
    """Every graph of a bundle rewritten -> the same outputs (1e-5, relative to max(1, |y|))
    as the original on random inputs, batch 1 and 3; returns the rewrites applied."""
    import onnx

    from wsa_ros.runtime.graph_rewrites import rewrite_model

    original = onnx.load(str(path))
    rewritten = onnx.load(str(path))
    done = rewrite_model(rewritten)
    onnx.checker.check_model(rewritten)
    for batch, seed in ((1, 0), (3, 1)):
        feeds = _random_feeds(original, batch, seed)
        want = _ort_run(original, feeds, level="none")
        for level in ("none", "all"):
            got = _ort_run(rewritten, feeds, level=level)
            for a, b in zip(want, got):
                assert a.shape == b.shape
                assert float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))) <= 1e-5, (path, level)
    assert [i.name for i in rewritten.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in rewritten.graph.output] == [o.name for o in original.graph.output]
    if expect is not None:
        for k, v in expect.items():
            assert done[k] == v, (path, done)
    return done


@pytest.mark.parametrize("opts", [{}, {"spatial_adapter": "keypoints", "context_adapter": "spatial"},
                                  {"fusion": "e2e"}, {"imported": True, "fusion": "concat"}])
def test_graph_rewrites_compute_the_same_function(make_bundle, opts):
    b = load_bundle(make_bundle(**opts))
    total = {}
    for e in b.encoders:
        for k, v in _assert_rewrite_exact(b.path(e.file)).items():
            total[k] = total.get(k, 0) + v
    for k, v in _assert_rewrite_exact(b.path(b.policy.file)).items():
        total[k] = total.get(k, 0) + v
    # every uint8 encoder's /255 is folded into its first conv (e2e: no conv in the encoder)
    convs = sum(1 for e in b.encoders if e.input.dtype == "uint8" and opts.get("fusion") != "e2e")
    assert total["fold_input_scale"] == convs
    if not opts:  # flat context adapter, conv spatial adapters, the idm encoder's Linear
        assert total["flat_gemm_to_conv"] >= 3


def test_graph_rewrites_on_the_benchmark_and_shipped_bundles(tmp_path):
    from wsa_ros.tools.bench import build_bench_bundle
    from wsa_ros.config import resolve_bundle

    path, _, _ = build_bench_bundle(tmp_path, 2, 84)
    b = load_bundle(path)
    for e in b.encoders:
        _assert_rewrite_exact(b.path(e.file), {"fold_input_scale": 1, "flat_gemm_to_conv": 0})
    # Linear(64*16*16 -> d) of the context adapter and the two spatial adapters' Linears
    _assert_rewrite_exact(b.path(b.policy.file), {"fold_input_scale": 0, "flat_gemm_to_conv": 3})
    shipped = resolve_bundle("")
    if (shipped / "manifest.yaml").exists():
        d = load_bundle(shipped)
        for e in d.encoders:
            _assert_rewrite_exact(d.path(e.file))
        _assert_rewrite_exact(d.path(d.policy.file))


def _gemm_model(trans_b=True, bias=True, alpha=1.0, extra_reader=False):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3 * 4 * 2)).astype(np.float32)
    inits = [numpy_helper.from_array(w if trans_b else np.ascontiguousarray(w.T), "W")]
    ins = ["f", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "B"))
        ins.append("B")
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ins, ["y"], transB=int(trans_b), alpha=alpha)]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 5])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["f"], ["r"]))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["b", 24]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4, 2])],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("kw,applies", [({}, 1), ({"trans_b": False}, 1), ({"bias": False}, 1),
                                        ({"extra_reader": True}, 1), ({"alpha": 2.0}, 0)])
def test_flat_gemm_to_conv_is_exact_and_only_where_it_applies(tmp_path, kw, applies):
    import onnx

    from wsa_ros.runtime.graph_rewrites import rewrite_model

    m = _gemm_model(**kw)
    onnx.save(m, str(tmp_path / "m.onnx"))
    done = _assert_rewrite_exact(tmp_path / "m.onnx", {"flat_gemm_to_conv": applies})
    r = _gemm_model(**kw)
    rewrite_model(r)
    ops = [n.op_type for n in r.graph.node]
    assert ("Gemm" in ops) == (not applies) and ("Conv" in ops) == bool(applies)
    assert ops.count("Flatten") >= 1 and done["fold_input_scale"] == 0


def test_fold_input_scale_leaves_a_shared_scaled_frame_alone(tmp_path):
    """The /255 is folded only when the Conv is its sole reader (through the transpose)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W")
    c255 = numpy_helper.from_array(np.array(255.0, np.float32), "c")

    def model(extra):
        nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
                 helper.make_node("Div", ["xf", "c"], ["xs"]),
                 helper.make_node("Transpose", ["xs"], ["xt"], perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", ["xt", "W"], ["y"], pads=[1, 1, 1, 1])]
        outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, 6, 6])]
        if extra:
            nodes.append(helper.make_node("Relu", ["xs"], ["r"]))
            outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["b", 6, 6, 3]))
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, ["b", 6, 6, 3])],
                              outs, [w, c255])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    for extra, folds in ((False, 1), (True, 0)):
        onnx.save(model(extra), str(tmp_path / "m.onnx"))
        _assert_rewrite_exact(tmp_path / "m.onnx", {"fold_input_scale": folds})


def test_rewritten_engine_matches_the_original_graphs_and_pytorch(tmp_path):
    """The engine's rewritten, merged graph (one shared frame input for encoders on the same
    camera) gives the actions of the original graphs and of the PyTorch modules."""
    from wsa_ros.tools.bench import build_bench_bundle, eager_step

    path, encs, policy = build_bench_bundle(tmp_path, 3, 84)
    new = Engine(path, providers=["cpu"])
    old = Engine(path, providers=["cpu"], rewrite=False, fuse=False)
    assert new.fused and new.rewrites["fold_input_scale"] == 3 and new.rewrites["flat_gemm_to_conv"] == 4
    assert not old.rewrites
    assert [i.name for i in new._fused_session.get_inputs()] == ["e0/image", "proprio"]
    for seed in range(3):
        frames, prop = _frames(new.bundle, seed), _proprio(new.bundle, seed)
        r, ro = new.step(frames, prop), old.step(frames, prop)
        np.testing.assert_allclose(r.action_norm, ro.action_norm, rtol=0, atol=1e-5)
        np.testing.assert_allclose(r.alpha, ro.alpha, rtol=0, atol=1e-5)
        a_eager, alpha_eager = eager_step(encs, policy, frames["front"], prop)
        assert float(np.max(np.abs(a_eager[0] - r.action_norm))) <= 1e-4
        assert float(np.max(np.abs(alpha_eager[0] - r.alpha))) <= 1e-4
        # every encoder's buffer holds this frame (embed() and the chained sessions read them)
        emb_new, emb_old = new.embed(frames), old.embed(frames)
        for k in emb_old:
            np.testing.assert_allclose(emb_new[k], emb_old[k], rtol=0, atol=1e-5)


def test_encoders_on_other_cameras_or_specs_keep_their_own_inputs(make_bundle):
    eng = Engine(make_bundle(two_cameras=True), providers=["cpu"])
    names = [i.name for i in eng._fused_session.get_inputs()]
    # ae and ctx read front at 40x40 (one input); idm reads wrist at 48x48
    assert names == ["e0/image", "e1/image", "proprio"]
    frames = _frames(eng.bundle, 3)
    chained = Engine(eng.bundle.root, providers=["cpu"], fuse=False)
    r, rc = eng.step(frames, _proprio(eng.bundle)), chained.step(frames, _proprio(eng.bundle))
    np.testing.assert_allclose(r.action_norm, rc.action_norm, atol=1e-5)


def test_a_rewrite_that_changes_the_function_is_caught_at_load(tiny_bundle, monkeypatch, caplog):
    """The engine compares each rewritten file with the original on random inputs and runs the
    original when they differ (here: a deliberately wrong fold of the /255)."""
    from onnx import numpy_helper

    import wsa_ros.runtime.engine as engine_mod

    real = engine_mod.rewrite_model

    def broken(model, rewrites=engine_mod.REWRITES):
        done = real(model, rewrites)
        for i, t in enumerate(model.graph.initializer):
            if t.name.endswith("_prescaled"):
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2.0, t.name))
        return done

    monkeypatch.setattr(engine_mod, "rewrite_model", broken)
    with caplog.at_level(logging.WARNING, logger="wsa_ros.runtime.engine"):
        eng = Engine(tiny_bundle, providers=["cpu"])
    assert "differs from the original" in caplog.text
    assert eng.rewrites.get("fold_input_scale", 0) == 0  # no encoder kept its broken rewrite
    frames, prop = _frames(eng.bundle, 4), _proprio(eng.bundle, 4)
    plain = Engine(tiny_bundle, providers=["cpu"], rewrite=False)
    np.testing.assert_allclose(eng.step(frames, prop).action_norm, plain.step(frames, prop).action_norm, atol=1e-5)


def test_policy_id_carries_version_and_manifest_digest_and_reads_older_records():
    d = "0123456789abcdef" * 4
    assert policy_id("1+ft5", d) == f"1+ft5@{d}" and split_policy_id(f"1+ft5@{d}") == ("1+ft5", d)
    assert split_policy_id("1+ft5") == ("1+ft5", "")  # a recording from before the digest travelled
    assert split_policy_id("demo") == ("demo", "") and split_policy_id("x@notahash") == ("x@notahash", "")
