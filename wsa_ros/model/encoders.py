"""Frozen image encoders: trained here (self-supervised, on simulator frames), exported to ONNX,
or imported from an ONNX file exported elsewhere.

Our own encoders take ``image`` uint8 ``[B, H, W, C]`` (RGB) and do ``/255`` and the NHWC->NCHW
transpose inside the graph; they output ``embedding`` ``[B, *output_shape]`` with a dynamic batch.

- ``ConvAutoencoder``: Nature-style conv autoencoder (Conv32 8x8 s4, Conv64 3x3, Conv64 3x3
  -> a 64xhxw feature map, 64x16x16 at 84x84 as in the paper), MSE reconstruction weighted
  towards pixels that differ from the static background (so the small target is not
  ignored). Also the default context encoder.
- ``InverseDynamics``: per-frame Nature CNN -> flat embedding, trained to predict the action
  a_t from (o_t, o_{t+1}); the per-frame part is the encoder.
- ``KeypointAutoencoder``: convs -> spatial softmax -> K (x, y) keypoints in [-1, 1]; trained
  to reconstruct the (half-resolution) frame from Gaussian heat maps drawn at the keypoints;
  embedding ``[K, 2]``.

Helpers: ``export_encoder_onnx`` (torch -> ONNX, returns the per-sample output shape),
``import_onnx_encoder`` (a backbone exported elsewhere, e.g. ResNet-18 float32 NCHW with
ImageNet mean/std, copied into a bundle), ``prepare_images`` + ``onnx_embed`` (a batch of camera
frames through ONNX Runtime).
"""
from __future__ import annotations

import warnings
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsa_ros.runtime.bundle import EncoderSpec, InputSpec, sha256_file

OPSET = 17


# --------------------------------------------------------------------------- utilities
def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


class UInt8Input(nn.Module):
    """Puts the uint8 NHWC -> float NCHW [0, 1] conversion inside the exported graph."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image.to(torch.float32).div(255.0).permute(0, 3, 1, 2))


class Pixels(nn.Module):
    """Identity "encoder" of the e2e baseline: wrapped in ``UInt8Input`` its embedding is the
    preprocessed image [3, H, W] in [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _conv_out(n: int, k: int, s: int, p: int = 0) -> int:
    return (n + 2 * p - k) // s + 1


# --------------------------------------------------------------------------- autoencoder
class ConvEncoder(nn.Module):
    """Conv32 8x8 s4 -> Conv64 3x3 s``second_stride`` -> Conv64 3x3 s1 (ReLU after each):
    a [64, h, w] map; the paper's setting (stride 1) gives 64x16x16 at 84x84."""

    def __init__(self, in_channels: int = 3, second_stride: int = 1):
        super().__init__()
        self.layers = ((32, 8, 4), (64, 3, int(second_stride)), (64, 3, 1))
        mods: list[nn.Module] = []
        c = in_channels
        for co, k, s in self.layers:
            mods += [nn.Conv2d(c, co, k, stride=s), nn.ReLU()]
            c = co
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentEncoder(nn.Module):
    """ConvEncoder -> flatten -> Linear: a flat ``latent``-dimensional code instead of the map."""

    def __init__(self, convs: ConvEncoder, map_shape: tuple[int, int, int], latent: int):
        super().__init__()
        self.convs = convs
        self.layers = convs.layers
        self.linear = nn.Linear(int(np.prod(map_shape)), latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


class ConvAutoencoder(nn.Module):
    """``encoder`` (ConvEncoder) + a mirrored transposed-conv decoder that reproduces the
    exact input size (output paddings computed from the encoder's sizes). ``latent`` > 0 puts a
    linear bottleneck after the convs (``LatentEncoder``): the embedding is a flat code of that
    size, which the learner stores and reads at a fraction of the map's cost."""

    def __init__(self, height: int, width: int, in_channels: int = 3, second_stride: int = 1, latent: int = 0):
        super().__init__()
        self.encoder = ConvEncoder(in_channels, second_stride)
        layers = self.encoder.layers
        sizes = [(height, width)]
        for _, k, s in layers:
            h, w = sizes[-1]
            sizes.append((_conv_out(h, k, s), _conv_out(w, k, s)))
        if min(sizes[-1]) < 1:
            raise ValueError(f"image {height}x{width} too small for the conv autoencoder (latent would be {sizes[-1]})")
        mods: list[nn.Module] = []
        chans = [in_channels] + [co for co, _, _ in layers]
        for i in reversed(range(len(layers))):
            _, k, s = layers[i]
            (hi, wi), (ho, wo) = sizes[i], sizes[i + 1]
            op = (hi - ((ho - 1) * s + k), wi - ((wo - 1) * s + k))
            mods.append(nn.ConvTranspose2d(chans[i + 1], chans[i], k, stride=s, output_padding=op))
            if i > 0:
                mods.append(nn.ReLU())
        self.decoder = nn.Sequential(*mods)
        self.latent = int(latent)
        if self.latent > 0:
            map_shape = (layers[-1][0], *sizes[-1])
            self.encoder = LatentEncoder(self.encoder, map_shape, self.latent)
            self.expand = nn.Sequential(nn.Linear(self.latent, int(np.prod(map_shape))), nn.ReLU(),
                                        nn.Unflatten(1, map_shape))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return torch.sigmoid(self.decoder(self.expand(z) if self.latent > 0 else z)), z


# --------------------------------------------------------------------------- inverse dynamics
class NatureEncoder(nn.Module):
    """Nature CNN (Conv32 8x8 s4, Conv64 4x4 s2, Conv64 3x3 s1) -> Linear -> LayerNorm: [dim]."""

    def __init__(self, height: int, width: int, dim: int = 64, in_channels: int = 3):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        )  # fmt: skip
        h, w = height, width
        for k, s in ((8, 4), (4, 2), (3, 1)):
            h, w = _conv_out(h, k, s), _conv_out(w, k, s)
        if min(h, w) < 1:
            raise ValueError(f"image {height}x{width} too small for the Nature CNN (at least 36x36)")
        self.linear = nn.Linear(64 * h * w, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.convs(x).flatten(1)))


class InverseDynamics(nn.Module):
    """``encoder`` per frame; ``head`` MLP on [e_t; e_{t+1}] predicts the normalised action."""

    def __init__(self, height: int, width: int, action_dim: int, dim: int = 64):
        super().__init__()
        self.encoder = NatureEncoder(height, width, dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, 256), nn.ReLU(), nn.Linear(256, action_dim))

    def forward(self, x_t: torch.Tensor, x_t1: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(x_t), self.encoder(x_t1)], dim=-1))


# --------------------------------------------------------------------------- keypoints
class SpatialSoftmax(nn.Module):
    """[B, K, H, W] maps -> [B, K, 2] expected (x, y) in [-1, 1] (learned temperature)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1))  # HW, 2
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, k = maps.shape[0], maps.shape[1]
        p = torch.softmax(maps.reshape(b, k, -1) / self.log_temperature.exp(), dim=-1)
        return p @ self.grid


class KeypointEncoder(nn.Module):
    """Conv16 5x5 s2, Conv32 3x3 s2, Conv K 3x3 -> spatial softmax: [K, 2] keypoints."""

    def __init__(self, height: int, width: int, keypoints: int = 8):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, keypoints, 3, padding=1),
        )  # fmt: skip
        h, w = _conv_out(_conv_out(height, 5, 2, 2), 3, 2, 1), _conv_out(_conv_out(width, 5, 2, 2), 3, 2, 1)
        self.softmax = SpatialSoftmax(h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.convs(x))


class KeypointAutoencoder(nn.Module):
    """Keypoint autoencoder: the K keypoints are rendered as Gaussian heat maps (plus two fixed
    coordinate channels for the static scene) on a 1/4-resolution grid and a small conv
    decoder reconstructs the colour frame at 1/2 resolution (KeyNet/Transporter-style
    bottleneck: only the keypoint coordinates pass)."""

    def __init__(self, height: int, width: int, keypoints: int = 8, sigma: float = 0.08, channels: int = 16):
        super().__init__()
        self.encoder = KeypointEncoder(height, width, keypoints)
        self.grid_hw = (max(2, height // 4), max(2, width // 4))
        self.out_hw = (max(2, height // 2), max(2, width // 2))
        self.sigma = float(sigma)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, self.grid_hw[0]), torch.linspace(-1, 1, self.grid_hw[1]), indexing="ij"
        )
        self.register_buffer("gx", xs)
        self.register_buffer("gy", ys)
        self.decoder = nn.Sequential(
            nn.Conv2d(keypoints + 2, channels, 3, padding=1), nn.ReLU(),
            nn.Upsample(size=self.out_hw, mode="nearest"),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 3, 3, padding=1),
        )  # fmt: skip

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.out_hw)

    def heatmaps(self, kp: torch.Tensor) -> torch.Tensor:
        d2 = (self.gx - kp[..., 0, None, None]) ** 2 + (self.gy - kp[..., 1, None, None]) ** 2
        g = torch.exp(-d2 / (2 * self.sigma**2))
        b = kp.shape[0]
        coords = torch.stack([self.gx, self.gy]).unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([g, coords], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kp = self.encoder(x)
        return self.decoder(self.heatmaps(kp)), kp


class PoseEncoder(nn.Module):
    """KeypointEncoder -> Linear: ``outputs`` values regressed from the K keypoints (trained
    with labels, e.g. the sim's target and fingertip positions: a pose estimator)."""

    def __init__(self, height: int, width: int, keypoints: int = 16, outputs: int = 4):
        super().__init__()
        self.keypoints = KeypointEncoder(height, width, keypoints)
        self.head = nn.Linear(2 * keypoints, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.keypoints(x).flatten(1))


# --------------------------------------------------------------------------- training
def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (min(batch, n),), generator=gen)


def background_of(frames: np.ndarray) -> torch.Tensor:
    """Per-pixel median of (a subsample of) the frames: the static scene, [1, C, H, W]."""
    idx = np.linspace(0, len(frames) - 1, num=min(len(frames), 256)).astype(int)
    return frames_to_tensor(frames[idx]).median(dim=0, keepdim=True).values


def _fit(model: nn.Module, batches, loss_of: Callable, steps: int, lr: float, log, what: str) -> tuple[float, float]:
    """Adam on ``loss_of(batch_indices)`` for each of ``batches``, logging ``what`` every 200
    steps; leaves the model in eval mode. Returns (last loss, seconds)."""
    from wsa_ros.model.fit import adam_steps

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.time()
    loss_v = adam_steps(opt, (loss_of(idx) for idx in batches), steps, what.split(" step")[0], log, every=200,
                        line=what)
    model.eval()
    return loss_v, time.time() - t0


def train_autoencoder(
    frames: np.ndarray,
    steps: int = 600,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    foreground_weight: float = 10.0,
    second_stride: int = 1,
    latent: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[ConvAutoencoder, dict]:
    """Train the conv autoencoder on uint8 [N, H, W, 3] frames (``latent`` > 0: with a flat
    bottleneck of that size); returns (model, stats)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, h, w, _ = frames.shape
    model = ConvAutoencoder(h, w, second_stride=second_stride, latent=latent)
    bg = background_of(frames)

    def loss_of(idx):
        x = frames_to_tensor(frames[idx.numpy()])
        wgt = 1.0 + foreground_weight * (x - bg).abs().sum(dim=1, keepdim=True)
        recon, _ = model(x)
        return (wgt * (recon - x) ** 2).mean()

    loss_v, secs = _fit(model, _batches(n, batch, steps, gen), loss_of, steps, lr, log,
                        "autoencoder step {i}/{steps} weighted mse {loss:.5f}")
    with torch.no_grad():
        x = frames_to_tensor(frames[: min(n, 256)])
        mse = float(((model(x)[0] - x) ** 2).mean())
    return model, {"steps": steps, "batch": batch, "final_loss": loss_v, "mse": mse, "seconds": secs}


def train_inverse_dynamics(
    frames: np.ndarray,
    next_index: np.ndarray,
    actions: np.ndarray,
    steps: int = 600,
    batch: int = 64,
    lr: float = 1e-3,
    dim: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[InverseDynamics, dict]:
    """Train on transitions i -> next_index[i] (entries < 0 are skipped) with actions in
    [-1, 1] ``actions[i]``; returns (model, stats incl. the action MSE)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    valid = np.nonzero(next_index >= 0)[0]
    if len(valid) == 0:
        raise ValueError("inverse dynamics: no transitions (every next_index is < 0)")
    _, h, w, _ = frames.shape
    model = InverseDynamics(h, w, actions.shape[1], dim)
    acts = torch.as_tensor(actions, dtype=torch.float32)

    def loss_of(j):
        idx = valid[j.numpy()]
        pred = model(frames_to_tensor(frames[idx]), frames_to_tensor(frames[next_index[idx]]))
        return F.mse_loss(pred, acts[idx])

    loss_v, secs = _fit(model, _batches(len(valid), batch, steps, gen), loss_of, steps, lr, log,
                        "inverse dynamics step {i}/{steps} action mse {loss:.4f}")
    return model, {"steps": steps, "batch": batch, "final_loss": loss_v, "action_var": float(acts[valid].var()),
                   "seconds": secs}


def train_keypoints(
    frames: np.ndarray,
    keypoints: int = 8,
    steps: int = 400,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    foreground_weight: float = 10.0,
    log: Callable[[str], None] | None = None,
) -> tuple[KeypointAutoencoder, dict]:
    """Train the keypoint autoencoder (foreground-weighted MSE); returns (model, stats)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, h, w, _ = frames.shape
    model = KeypointAutoencoder(h, w, keypoints)
    bg = model.target(background_of(frames))

    def loss_of(idx):
        x = frames_to_tensor(frames[idx.numpy()])
        tgt = model.target(x)
        wgt = 1.0 + foreground_weight * (tgt - bg).abs().sum(dim=1, keepdim=True)
        recon, _ = model(x)
        return (wgt * (recon - tgt) ** 2).mean()

    loss_v, secs = _fit(model, _batches(n, batch, steps, gen), loss_of, steps, lr, log,
                        "keypoints step {i}/{steps} weighted mse {loss:.5f}")
    return model, {"steps": steps, "batch": batch, "keypoints": keypoints, "final_loss": loss_v, "seconds": secs}


def train_pose(
    frames: np.ndarray,
    labels: np.ndarray,
    keypoints: int = 16,
    steps: int = 1500,
    batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[PoseEncoder, dict]:
    """Supervised pose regression: uint8 frames [N, H, W, 3] -> ``labels`` [N, D] (MSE; the
    labels should be of order 1); returns (model, stats)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, h, w, _ = frames.shape
    y = torch.as_tensor(np.asarray(labels, np.float32))
    model = PoseEncoder(h, w, keypoints, y.shape[1])

    def loss_of(idx):
        return F.mse_loss(model(frames_to_tensor(frames[idx.numpy()])), y[idx])

    loss_v, secs = _fit(model, _batches(n, batch, steps, gen), loss_of, steps, lr, log,
                        "pose step {i}/{steps} mse {loss:.5f}")
    return model, {"steps": steps, "batch": batch, "keypoints": keypoints, "outputs": int(y.shape[1]),
                   "final_loss": loss_v, "seconds": secs}


# --------------------------------------------------------------------------- ONNX
def _providers() -> list[str]:
    return ["CPUExecutionProvider"]


def ort_session(path: str | Path, threads: int = 1):
    """A CPU ONNX Runtime session (single-threaded by default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # no busy-waiting worker threads: the CPU is shared with simulation and training
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=_providers())


def export_encoder_onnx(net: nn.Module, path: str | Path, input: InputSpec, opset: int = OPSET) -> list[int]:
    """Export a torch encoder to ONNX with input ``image`` as described by ``input`` and output
    ``embedding`` (dynamic batch). For ``uint8``/``nhwc`` the net receives float NCHW in [0, 1]
    (the conversion is put in the graph); for ``float32`` it receives the tensor as-is.
    Returns the per-sample output shape (read back through ONNX Runtime)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if input.dtype == "uint8":
        if input.layout != "nhwc":
            raise ValueError("our uint8 encoders take NHWC input; use layout 'nhwc'")
        module: nn.Module = UInt8Input(net)
        dummy = torch.zeros(input.shape(2), dtype=torch.uint8)
    else:
        module = net
        dummy = torch.zeros(input.shape(2), dtype=torch.float32)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return onnx_output_shape(path, input)


def _check_single_file(path: Path) -> None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if ext:
        raise ValueError(
            f"{path}: weights are stored as external data ({len(ext)} tensors, e.g. '{ext[0]}'); "
            "re-save it as one file: onnx.save(onnx.load(p), p2, save_as_external_data=False)"
        )


def _random_input(input: InputSpec, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(batch, input.height, input.width, 3), dtype=np.uint8)
    return prepare_images(img, input)


def onnx_output_shape(path: str | Path, input: InputSpec, input_name: str | None = None, output_name: str | None = None) -> list[int]:
    """Run the model on a batch of 2 random frames and return the per-sample output shape.
    Raises ValueError when the batch dimension is not dynamic or the input does not fit."""
    sess = ort_session(path)
    iname = input_name or sess.get_inputs()[0].name
    oname = output_name or sess.get_outputs()[0].name
    try:
        out = sess.run([oname], {iname: _random_input(input, 2)})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(
            f"{path}: running it on a batch of 2 inputs shaped {list(input.shape(2))} ({input.dtype}) failed; "
            f"the batch dimension must be dynamic and the input spec must match the model: {exc}"
        ) from exc
    if out.ndim < 2 or out.shape[0] != 2:
        raise ValueError(f"{path}: output '{oname}' has shape {list(out.shape)} for a batch of 2; the first dimension must be the batch")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{path}: output '{oname}' is not finite on random input")
    return [int(s) for s in out.shape[1:]]


def import_onnx_encoder(
    onnx_path: str | Path,
    input: InputSpec,
    name: str,
    camera: str,
    role: str = "feature",
    out_dir: str | Path | None = None,
    source: str | None = None,
    output_name: str | None = None,
) -> EncoderSpec:
    """Bring an encoder exported elsewhere (e.g. ResNet-18 / DINOv2 as float32 NCHW with
    ImageNet mean/std in ``input``) into a bundle.

    Checks: one input of rank 4 whose static dims match ``input``, dynamic batch, finite output.
    With ``out_dir`` (a bundle folder) the file is copied to ``encoders/<name>.onnx`` and
    ``file`` is relative; otherwise ``file`` is the absolute source path (``export_bundle``
    copies it). Returns the EncoderSpec with the output shape read through ONNX Runtime."""
    src = Path(onnx_path)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: ONNX encoder file not found")
    _check_single_file(src)
    sess = ort_session(src)
    ins = sess.get_inputs()
    if len(ins) != 1:
        raise ValueError(f"{src}: an encoder must have exactly one input, it has {[i.name for i in ins]}")
    inp = ins[0]
    want_type = "tensor(uint8)" if input.dtype == "uint8" else "tensor(float)"
    if inp.type != want_type:
        raise ValueError(f"{src}: input '{inp.name}' is {inp.type} but the input spec says dtype {input.dtype}")
    if len(inp.shape) != 4:
        raise ValueError(f"{src}: input '{inp.name}' has rank {len(inp.shape)}, expected 4 ({input.layout})")
    for got, want in zip(inp.shape[1:], input.shape(1)[1:]):
        if isinstance(got, int) and got != want:
            raise ValueError(f"{src}: input '{inp.name}' shape {inp.shape} does not fit the spec {list(input.shape(1))} ({input.layout})")
    outs = [o.name for o in sess.get_outputs()]
    oname = output_name or outs[0]
    if oname not in outs:
        raise ValueError(f"{src}: no output named '{oname}' (outputs: {outs})")
    shape = onnx_output_shape(src, input, inp.name, oname)
    if out_dir is not None:
        rel = f"encoders/{name}.onnx"
        dst = Path(out_dir) / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        file, digest = rel, sha256_file(dst)
    else:
        file, digest = str(src.resolve()), sha256_file(src)
    return EncoderSpec(
        name=name,
        file=file,
        sha256=digest,
        camera=camera,
        input=input,
        output_shape=shape,
        role=role,
        onnx_input=inp.name,
        onnx_output=oname,
        source=source if source is not None else f"imported from {src.name}",
    )


def prepare_images(frames: np.ndarray, input: InputSpec) -> np.ndarray:
    """Camera frames (uint8 [N, H, W, 3] RGB, or one HxWx3 frame) -> the encoder's ONNX input,
    through the engine's own preprocessing (``wsa_ros.runtime.engine.preprocess``), so encoders are
    trained and screened on exactly what the live agent feeds them."""
    from wsa_ros.runtime.bundle import EncoderSpec
    from wsa_ros.runtime.engine import preprocess

    x = np.asarray(frames)
    if x.dtype != np.uint8 or not (x.ndim == 4 and x.shape[-1] == 3 or x.ndim == 3 and x.shape[-1] == 3):
        raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB, got {x.dtype} {list(x.shape)}")
    spec = EncoderSpec(name="input", file="", sha256="", camera="input", input=input, output_shape=[1])
    return preprocess(x, spec)


def onnx_embed(
    model: str | Path | object,
    frames: np.ndarray,
    input: InputSpec,
    batch: int = 256,
    input_name: str | None = None,
    output_name: str | None = None,
) -> np.ndarray:
    """Embeddings [N, *output_shape] of uint8 RGB frames through ONNX Runtime (``model`` is a
    path or an ``InferenceSession``)."""
    sess = ort_session(model) if isinstance(model, (str, Path)) else model
    iname = input_name or sess.get_inputs()[0].name
    oname = output_name or sess.get_outputs()[0].name
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    outs = [sess.run([oname], {iname: prepare_images(frames[i : i + batch], input)})[0] for i in range(0, len(frames), batch)]
    return np.concatenate(outs, axis=0).astype(np.float32, copy=False)



