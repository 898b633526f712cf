"""Export to ONNX and bundles: PyTorch == ONNX Runtime, hashes, imported backbones, add/remove
encoders, weights_only loading, and the tiny default-bundle build."""
import shutil

import numpy as np
import pytest
import torch

from wsa_ros.runtime.engine import Engine
from wsa_ros.runtime.bundle import BundleError, InputSpec, load_bundle, write_manifest
from wsa_ros.model.encoders import (
    ConvAutoencoder,
    InverseDynamics,
    KeypointAutoencoder,
    export_encoder_onnx,
    import_onnx_encoder,
    onnx_embed,
    ort_session,
    prepare_images,
)
from wsa_ros.model.export import (
    EncoderSource,
    add_encoder_to_bundle,
    export_bundle,
    load_policy_module,
    remove_encoder_from_bundle,
)
from wsa_ros.model.wsa import FusionPolicy, make_head_config

torch.set_num_threads(1)
RTOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export", "ignore:The feature will be removed")


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))


def _torch_vs_ort(bundle, seed=5, batch=5, scale=2.0):
    """Fresh random embeddings through head.pt (PyTorch) and policy.onnx (ORT)."""
    policy = load_policy_module(bundle).eval()
    g = torch.Generator().manual_seed(seed)
    embs = {e.name: scale * torch.rand(batch, *e.output_shape, generator=g) for e in bundle.encoders}
    proprio = torch.randn(batch, bundle.proprio.dim, generator=g) if bundle.proprio else None
    with torch.no_grad():
        a_t, al_t = policy.deterministic_action(embs, proprio)
    sess = ort_session(bundle.path(bundle.policy.file))
    assert [i.name for i in sess.get_inputs()] == bundle.policy.inputs
    feed = {f"emb_{k}": v.numpy() for k, v in embs.items()}
    if proprio is not None:
        feed["proprio"] = proprio.numpy()
    a_o, al_o = sess.run(["action", "alpha"], feed)
    return a_t.numpy(), al_t.numpy(), a_o, al_o


@pytest.mark.parametrize(
    "fusion,norm,opts",
    [("wsa", "softmax", {}), ("wsa", "relu", {"scorer_hidden": 8}),
     ("wsa", "softmax", {"spatial_adapter": "keypoints", "context_adapter": "spatial"}),
     ("concat", "softmax", {}), ("mean", "softmax", {}), ("single", "softmax", {}), ("e2e", "softmax", {})],
)
def test_pytorch_and_onnx_runtime_agree(make_bundle, fusion, norm, opts):
    b = load_bundle(make_bundle(fusion=fusion, normalization=norm, **opts))
    assert b.fusion == fusion and b.normalization == norm
    if fusion == "wsa":  # make alpha input-dependent so the check covers the scorer path
        policy = load_policy_module(b)
        with torch.no_grad():
            for p in policy.scorer.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
            if norm == "relu":
                policy.scorer.net[-1].bias.fill_(2.0)
        b = export_bundle(b.root, policy, [EncoderSource.from_spec(e, b.root) for e in b.encoders], b.action, b.proprio,
                          name=b.name, version="2", recipe=b.recipe)
    a_t, al_t, a_o, al_o = _torch_vs_ort(b)
    assert _rel_err(a_t, a_o) <= RTOL
    assert _rel_err(al_t, al_o) <= RTOL
    np.testing.assert_allclose(al_o.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.abs(a_o) <= 1.0)
    k = len(b.feature_encoders)
    assert al_o.shape == (5, k)
    if fusion in ("mean", "concat"):
        np.testing.assert_allclose(al_o, 1.0 / k, atol=1e-7)
    elif fusion in ("single", "e2e"):
        assert np.all(np.sort(al_o, axis=1)[:, -1] == 1.0) and np.all(al_o.sum(1) == 1.0)
    else:
        assert np.abs(al_o - al_o[:1]).max() > 1e-3  # alpha depends on the input
    # a second batch of inputs gives other actions (the graph is not constant)
    a_t2, _, a_o2, _ = _torch_vs_ort(b, seed=6)
    assert _rel_err(a_t2, a_o2) <= RTOL and np.abs(a_o2 - a_o).max() > 1e-4


def test_exported_policy_keeps_unused_inputs_in_bundle_order(make_bundle):
    b = load_bundle(make_bundle(fusion="single"))  # ignores idm and ctx
    sess = ort_session(b.path(b.policy.file))
    assert [i.name for i in sess.get_inputs()] == ["emb_ae", "emb_idm", "emb_ctx", "proprio"]
    assert sess.get_inputs()[0].shape[0] == "batch"


@pytest.mark.parametrize("kind", ["ae", "idm", "kp"])
def test_our_encoders_match_onnx_runtime_on_uint8_frames(tmp_path, kind):
    torch.manual_seed(0)
    net = {"ae": lambda: ConvAutoencoder(40, 44).encoder, "idm": lambda: InverseDynamics(40, 44, 2).encoder,
           "kp": lambda: KeypointAutoencoder(40, 44).encoder}[kind]().eval()
    spec = InputSpec(40, 44)
    shape = export_encoder_onnx(net, tmp_path / "e.onnx", spec)
    frames = np.random.default_rng(1).integers(0, 256, (3, 40, 44, 3), dtype=np.uint8)
    with torch.no_grad():
        want = net(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).numpy()
    got = onnx_embed(tmp_path / "e.onnx", frames, spec)
    assert list(want.shape[1:]) == shape
    assert _rel_err(want, got) <= RTOL


def test_autoencoder_decoder_reproduces_the_input_size():
    for h, w in [(84, 84), (40, 44), (64, 48)]:
        ae = ConvAutoencoder(h, w)
        recon, z = ae(torch.rand(2, 3, h, w))
        assert recon.shape == (2, 3, h, w) and z.shape[1] == 64
    with pytest.raises(ValueError, match="too small"):
        ConvAutoencoder(20, 20)


def _stand_in_backbone(path, fixed_batch=False):
    """A small float32 NCHW conv net exported 'elsewhere' (other names than ours)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 4, 3, stride=2), torch.nn.Flatten()).eval()
    axes = None if fixed_batch else {"pixel_values": {0: "n"}, "features": {0: "n"}}
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["pixel_values"],
                      output_names=["features"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return net


IMAGENET = InputSpec(32, 32, color="rgb", dtype="float32", layout="nchw", scale=1 / 255,
                     mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def test_import_onnx_backbone_reads_shape_and_names_and_preprocesses(tmp_path):
    net = _stand_in_backbone(tmp_path / "resnet_like.onnx")
    spec = import_onnx_encoder(tmp_path / "resnet_like.onnx", IMAGENET, "res", "front", out_dir=tmp_path / "b")
    assert spec.output_shape == [4 * 7 * 7]
    assert (spec.onnx_input, spec.onnx_output, spec.file) == ("pixel_values", "features", "encoders/res.onnx")
    assert (tmp_path / "b" / spec.file).is_file()
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = (frames / 255.0 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
    np.testing.assert_allclose(prepare_images(frames, IMAGENET), x.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()
    got = onnx_embed(tmp_path / "b" / spec.file, frames, IMAGENET, input_name=spec.onnx_input, output_name=spec.onnx_output)
    assert _rel_err(want, got) <= RTOL


def test_import_onnx_backbone_errors_name_the_cause(tmp_path):
    _stand_in_backbone(tmp_path / "fixed.onnx", fixed_batch=True)
    with pytest.raises(ValueError, match="batch dimension must be dynamic"):
        import_onnx_encoder(tmp_path / "fixed.onnx", IMAGENET, "res", "front")
    _stand_in_backbone(tmp_path / "ok.onnx")
    with pytest.raises(ValueError, match="dtype uint8"):
        import_onnx_encoder(tmp_path / "ok.onnx", InputSpec(32, 32), "res", "front")
    with pytest.raises(ValueError, match="does not fit"):
        import_onnx_encoder(tmp_path / "ok.onnx", InputSpec(64, 64, dtype="float32", layout="nchw"), "res", "front")
    with pytest.raises(FileNotFoundError):
        import_onnx_encoder(tmp_path / "missing.onnx", IMAGENET, "res", "front")
    import onnx

    m = onnx.load(str(tmp_path / "ok.onnx"))
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    with pytest.raises(ValueError, match="external data"):
        import_onnx_encoder(tmp_path / "ext.onnx", IMAGENET, "res", "front")


def test_bundle_with_imported_backbone_runs_end_to_end(make_bundle):
    b = load_bundle(make_bundle(imported=True))
    imp = next(e for e in b.encoders if e.name == "imp")
    assert imp.input.dtype == "float32" and imp.input.layout == "nchw" and imp.source == "stand-in backbone"
    eng = Engine(b, providers=["cpu"])
    frames = np.random.default_rng(0).integers(0, 256, (2, 50, 60, 3), dtype=np.uint8)
    a, alpha = eng.act(eng.embed_batch({"front": frames}), np.zeros((2, 4)))
    joint = eng.scale_action(a)
    assert joint.shape == (2, 2) and alpha.shape == (2, 3)
    np.testing.assert_allclose(alpha.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(joint, -3 + (a.astype(np.float64) + 1) / 2 * 6, rtol=1e-5, atol=1e-6)
    a_t, al_t, a_o, al_o = _torch_vs_ort(b)
    assert _rel_err(a_t, a_o) <= RTOL and _rel_err(al_t, al_o) <= RTOL


def test_add_encoder_to_bundle_keeps_the_trained_scorer(tiny_bundle, tmp_path):
    old = load_bundle(tiny_bundle)
    _stand_in_backbone(tmp_path / "bb.onnx")
    spec = import_onnx_encoder(tmp_path / "bb.onnx", IMAGENET, "res", "front")
    new = add_encoder_to_bundle(old, tmp_path / "plus", spec)
    assert new.version == f"{old.version}+res" and new.recipe["derived_from"]["added_encoder"] == "res"
    assert [e.name for e in new.encoders] == ["ae", "idm", "ctx", "res"]
    assert new.policy.inputs == ["emb_ae", "emb_idm", "emb_ctx", "emb_res", "proprio"]
    old_sd = torch.load(old.path(old.weights["file"]), weights_only=True)
    new_sd = torch.load(new.path(new.weights["file"]), weights_only=True)
    scorer_keys = [k for k in old_sd if k.startswith("scorer.")]
    assert scorer_keys
    for k, v in old_sd.items():
        assert torch.equal(new_sd[k], v), k
    assert any(k.startswith("adapters.res.") for k in new_sd)
    a_t, al_t, a_o, al_o = _torch_vs_ort(new)
    assert al_o.shape[1] == 3 and _rel_err(a_t, a_o) <= RTOL and _rel_err(al_t, al_o) <= RTOL
    assert load_bundle(tiny_bundle).policy.sha256 == old.policy.sha256  # the source is untouched

    back = remove_encoder_from_bundle(new, tmp_path / "minus", "res")
    assert [e.name for e in back.encoders] == ["ae", "idm", "ctx"]
    back_sd = torch.load(back.path(back.weights["file"]), weights_only=True)
    for k, v in old_sd.items():
        assert torch.equal(back_sd[k], v), k


def test_load_bundle_checks_hashes_and_head_weights_are_weights_only(tiny_bundle, tmp_path):
    b = load_bundle(tiny_bundle)  # hashes verified
    assert load_policy_module(b).config == b.head
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    with open(dst / "head.pt", "ab") as f:
        f.write(b"junk")
    with pytest.raises(BundleError, match="head.pt: sha256 mismatch"):
        load_bundle(dst)
    # a pickle that is not plain tensors is refused even with a correct hash

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, dst / "head.pt")
    b2 = load_bundle(dst, verify_hashes=False)
    write_manifest(b2)
    with pytest.raises(BundleError, match="weights_only"):
        load_policy_module(dst)


def test_export_refuses_a_head_built_for_other_encoders(tiny_bundle, tmp_path):
    b = load_bundle(tiny_bundle)
    encs = [{"name": e.name, "output_shape": e.output_shape, "role": e.role} for e in b.encoders]
    encs[1]["output_shape"] = [33]
    policy = FusionPolicy.from_config(make_head_config("wsa", encs, 2, 4, d=8, actor_hidden=[8], critic_hidden=[8]))
    srcs = [EncoderSource.from_spec(e, b.root) for e in b.encoders]
    with pytest.raises(ValueError, match="built for encoders"):
        export_bundle(tmp_path / "x", policy, srcs, b.action, b.proprio)
    assert not (tmp_path / "x").exists()  # nothing half-written
    good = load_policy_module(b)
    with pytest.raises(ValueError, match="proprio_dim"):
        export_bundle(tmp_path / "x", good, srcs, b.action, None)


def test_build_default_tiny_produces_a_valid_bundle(tmp_path):
    from wsa_ros.model.build_default import main

    out = tmp_path / "default"
    assert main(["--tiny", "--quiet", "--threads", "1", "--eval-episodes", "1", "--out", str(out)]) == 0
    b = load_bundle(out)
    # the default encoders: the autoencoder as WSA's context only, keypoints and the pose encoder fused
    assert b.fusion == "wsa" and b.context_encoder.name == "ae" and b.context_encoder.role == "context"
    assert [e.name for e in b.feature_encoders] == ["idm", "kp", "pose"]  # --tiny also runs the optional idm
    assert b.head["critic_norm"] is True
    probe = {k: v for k, v in b.recipe["target_probe"].items() if k != "what"}
    assert set(probe) == {"ae", "idm", "kp", "pose", "all"}
    assert all(np.isfinite(v["mean_m"]) and v["median_m"] <= v["p90_m"] for v in probe.values())
    assert b.action.mode == "velocity" and b.action.joint_names == ["joint0", "joint1"]
    assert b.proprio.fields == ["sin_position", "cos_position", "velocity"] and all(s > 0 for s in b.proprio.std)
    r = b.recipe
    assert r["seed"] == 0 and "--tiny" in r["command"] and np.isfinite(r["bc_loss"])
    assert r["bc"][0]["train_mse"] < 0.5 and "eval" in r
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 5e6
    a_t, al_t, a_o, al_o = _torch_vs_ort(b)
    assert _rel_err(a_t, a_o) <= RTOL and _rel_err(al_t, al_o) <= RTOL
    frame = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    r = Engine(b, providers=["cpu"]).step({"front": frame}, np.zeros(b.proprio.dim))
    assert np.all(np.abs(r.action) <= 3.0) and abs(r.alpha.sum() - 1) < 1e-5


@pytest.mark.parametrize("opts", [{}, {"spatial_adapter": "keypoints", "context_adapter": "spatial"}])
def test_engine_rewritten_policy_agrees_with_pytorch(make_bundle, opts):
    """Engine.act runs the engine's rewritten policy graph (Flatten->Gemm as a full-map Conv):
    PyTorch parity holds there too (1e-4, relative to max(1, |y|))."""
    b = load_bundle(make_bundle(**opts))
    eng = Engine(b.root, providers=["cpu"])
    if not opts:
        assert eng.rewrites["flat_gemm_to_conv"] >= 3
    policy = load_policy_module(b).eval()
    g = torch.Generator().manual_seed(7)
    embs = {e.name: 2.0 * torch.rand(4, *e.output_shape, generator=g) for e in b.encoders}
    proprio = torch.randn(4, b.proprio.dim, generator=g)
    with torch.no_grad():
        a_t, al_t = policy.deterministic_action(embs, proprio)
    # Engine.act normalises raw proprio with the bundle's mean/std: feed the raw values back
    raw = proprio.numpy() * np.asarray(b.proprio.std) + np.asarray(b.proprio.mean)
    a_o, al_o = eng.act({k: v.numpy() for k, v in embs.items()}, raw)
    assert _rel_err(a_t.numpy(), a_o) <= RTOL
    assert _rel_err(al_t.numpy(), al_o) <= RTOL


def test_build_bundle_rebuilds_bit_identically(tmp_path):
    """`wsa build-bundle` is seeded end to end: two runs in separate processes write the same
    encoder, policy and head files (same sha256) and the same recipe except its timings."""
    import subprocess
    import sys
    from pathlib import Path

    wsa = Path(sys.executable).parent / "wsa"
    built = []
    for i in range(2):
        out = tmp_path / f"b{i}"
        r = subprocess.run([str(wsa), "build-bundle", "--tiny", "--quiet", "--threads", "1", "--eval-episodes", "1",
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        built.append(load_bundle(out))
    a, b = built
    files = lambda x: {e.name: e.sha256 for e in x.encoders} | {"policy": x.policy.sha256, "head": x.weights["sha256"]}  # noqa: E731
    assert files(a) == files(b)
    def strip(r):  # wall-clock timings aside, the recipe is the same numbers
        if isinstance(r, dict):
            return {k: strip(v) for k, v in r.items() if k not in ("timings", "seconds", "command")}
        return [strip(v) for v in r] if isinstance(r, list) else r

    assert strip(a.recipe) == strip(b.recipe)
