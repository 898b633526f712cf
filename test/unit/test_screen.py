"""``wsa screen`` on the sample bag: an informative encoder ranks above one that outputs
noise, the noise adds nothing in greedy selection, TorchScript candidates run, unsafe or
unusable candidates are refused with a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import onnx
import pytest
from onnx import TensorProto, helper

from wsa_ros.tools import screen

SAMPLE_BAG = Path(__file__).resolve().parents[1] / "data" / "sample_bag"


def _pixels_onnx(path: Path, size: int = 84, pool: int = 7) -> Path:
    """uint8 [B,H,W,3] -> mean-pooled pixels [B, 3*(size/pool)^2]: informative about the arm."""
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("AveragePool", ["f"], ["p"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", ["p"], ["embedding"], axis=1),
    ]
    g = helper.make_graph(nodes, "pixels",
                          [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", size, size, 3])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", 3 * (size // pool) ** 2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _noise_onnx(path: Path, dim: int = 64) -> Path:
    """Ignores the image: a fresh Gaussian vector per call."""
    nodes = [helper.make_node("RandomNormal", [], ["embedding"], shape=[1, dim], dtype=TensorProto.FLOAT, seed=1.0)]
    g = helper.make_graph(nodes, "noise",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_screen_ranks_informative_above_noise(tmp_path, capsys):
    pix = _pixels_onnx(tmp_path / "pixels.onnx")
    noise = _noise_onnx(tmp_path / "noise.onnx")
    out = tmp_path / "report"
    rc = screen.main([str(SAMPLE_BAG), "--encoder", f"noise={noise}", "--encoder", f"pixels={pix}",
                      "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    ranked = [e["name"] for e in res["encoders"]]
    assert ranked == ["pixels", "noise"], printed
    by = {e["name"]: e for e in res["encoders"]}
    assert by["pixels"]["r2_action"] > 0.2, printed
    assert by["noise"]["r2_action"] < 0.05, printed
    assert res["reward"] and all(np.isfinite(e["r2_reward"]) for e in res["encoders"])
    assert by["noise"]["ms_mean"] > 0 and by["pixels"]["dim"] == 3 * 12 * 12
    # the noise adds nothing to the pixels: greedy selection stops after one encoder
    assert res["recommendation"]["features"] == ["pixels"]
    assert res["recommendation"]["context"] == "pixels"
    assert res["split"]["test"] >= 100 and res["frames"] == 600
    report = (out / "report.md").read_text()
    assert "| 1 | pixels |" in report and (out / "screen.png").stat().st_size > 1000
    assert "recommended feature encoders: ['pixels']" in printed


def test_torchscript_candidate_and_folder_of_bags(tmp_path):

    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)

    ts = tmp_path / "pool.pt"
    torch.jit.trace(Pool(), torch.zeros(1, 3, 64, 64)).save(str(ts))
    bags_dir = tmp_path / "bags"
    bags_dir.mkdir()
    (bags_dir / "a").symlink_to(SAMPLE_BAG, target_is_directory=True)
    cand = screen.load_candidate(f"pool={ts},size=64x64,norm=unit")
    assert cand.kind == "torchscript" and cand.spec.input.layout == "nchw" and cand.spec.input.dtype == "float32"
    ds = screen.load_dataset(screen.find_bags(bags_dir), "/camera/image_raw", "/forward_command_controller/commands",
                             None, stride=2)
    assert len(ds.frames) == 300 and ds.rewards is None and ds.actions.shape == (300, 2)
    res = screen.screen(ds, [cand], log=lambda s: None)
    (r,) = res["encoders"]
    assert r["dim"] == 192 and np.isfinite(r["r2_action"])


def test_unsafe_or_unusable_candidates_are_refused(tmp_path, capsys):
    sd = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), sd)
    with pytest.raises(screen.ScreenError, match="is a state dict.*TorchScript or ONNX"):
        screen.load_candidate(f"w={sd},size=64x64")
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: never unpickled
    with pytest.raises(screen.ScreenError, match="unpickling a whole PyTorch module runs arbitrary code"):
        screen.load_candidate(f"m={pickled},size=64x64")
    dyn = _pixels_onnx(tmp_path / "dyn.onnx")
    m = onnx.load(dyn)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "H"
    onnx.save(m, dyn)
    with pytest.raises(screen.ScreenError, match="give size=HxW"):
        screen.load_candidate(f"d={dyn}")
    with pytest.raises(screen.ScreenError, match="not found"):
        screen.load_candidate(f"x={tmp_path / 'missing.onnx'}")
    assert screen.main([str(SAMPLE_BAG), "--encoder", f"p={tmp_path / 'dyn.onnx'},size=84x84",
                        "--action-topic", "/nope", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "topic /nope not in the bag" in capsys.readouterr().err


def test_localisation_probe_reports_the_frames_near_the_target_apart():
    """``localisation(..., near=mask)``: an embedding exact everywhere except on the marked frames
    (noise of 3 cm there, as when the tip hid the target) has a small mean error overall and the
    large one on the marked frames."""
    from wsa_ros.model.probe import localisation

    rng = np.random.default_rng(0)
    n, episodes = 2000, 40
    groups = np.repeat(np.arange(episodes), n // episodes)
    xy = rng.uniform(-0.2, 0.2, (n, 2))
    near = rng.random(n) < 0.1
    emb = xy + np.where(near[:, None], rng.normal(0.0, 0.03, (n, 2)), 0.0)
    r = localisation({"e": emb}, xy, groups, near=near)["e"]
    assert r["near_mean_m"] > 0.02 and r["mean_m"] < 0.01 and r["near_p90_m"] >= r["near_mean_m"]
    assert "near_mean_m" not in localisation({"e": emb}, xy, groups)["e"]
