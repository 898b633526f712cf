"""The inference engine: a model bundle run by ONNX Runtime, ROS-free.

One ``Engine.step`` serves the live agent node, offline bag evaluation, the simulator
demo and the benchmarks, so their actions agree exactly. A step is

    camera frames (uint8) -> preprocess into preallocated encoder inputs
    -> each frozen encoder session -> embeddings (device-resident when on a GPU)
    -> the fusion-and-actor session -> action in [-1, 1] and alpha
    -> action scaled to joint units by the bundle's action spec.

By default the encoder graphs and the policy graph are merged into ONE graph at load time
(``fuse=True``; checked against the chained sessions during warm-up), so a step is one ONNX
Runtime call; encoders that read the same camera with the same input spec share one frame
input there. Every graph first gets exact rewrites (``rewrite=True``, see :mod:`wsa_ros.runtime.graph_rewrites`:
the /255 folded into the first conv, large Flatten->Gemm as a full-map Conv), each checked
against the original file on random inputs when loaded. The separate sessions remain, chained with IO binding (the embedding buffers
an encoder writes are the very buffers the policy reads; on CUDA/TensorRT they never leave
the GPU), for ``embed``/``act``, per-stage timings (``fuse=False``) and benchmarks.

Providers are tried in the order given (default TensorRT -> CUDA -> CPU); those missing
from this ONNX Runtime build are skipped with a warning, and ``provider`` tells which one
really runs the sessions (ONNX Runtime may silently fall back; we read it back).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from wsa_ros.runtime.bundle import Bundle, BundleError, EncoderSpec, load_bundle
from wsa_ros.runtime.graph_rewrites import REWRITE_TOL, REWRITES, rewrite_error, rewrite_model

log = logging.getLogger("wsa_ros.runtime.engine")

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class EngineError(ValueError):
    """An input the engine cannot act on (missing camera, bad image, non-finite value)."""


class PolicyOutputError(EngineError):
    """The policy produced a non-finite action: the inputs were fine, the model is not."""


@dataclass
class StepResult:
    action: np.ndarray  # joint units (float64), scaled from action_norm; not clamped
    action_norm: np.ndarray  # policy output in [-1, 1]
    alpha: np.ndarray  # one weight per feature encoder
    # the pre-tanh Gaussian's log-std per joint (policy output ``log_std``; None for a bundle
    # exported without it): what the agent samples with when it explores
    log_std: np.ndarray | None = None
    # seconds: preprocess, infer (fused) or enc_<name> + policy (chained), and total
    timings: dict[str, float] = field(default_factory=dict)


def preprocess(frames, spec: EncoderSpec) -> np.ndarray:
    """Camera frames (one uint8 HxWx3 RGB / HxW mono frame, or a batch [N, H, W(, 3)]) -> the
    encoder's ONNX input [N, ...]. The one preprocessing path: the engine's step, encoder
    training and screening all use it, so frames are prepared identically everywhere."""
    x = np.asarray(frames)
    single = x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)
    batch = x[None] if single else x
    out = np.zeros(spec.input.shape(len(batch)), dtype=np.uint8 if spec.input.dtype == "uint8" else np.float32)
    for i, img in enumerate(batch):
        img = Engine._check_frame(spec.camera, img)
        Engine._fill(spec, out[i:i + 1], Engine._resize(img, spec.input.height, spec.input.width))
    return out


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


def resolve_providers(preference, cache_dir: str | None = None, device_id: int = 0):
    """Preference names (tensorrt/cuda/cpu or full ORT names) -> ORT provider list with
    options, keeping only providers this ONNX Runtime build has. CPU is always last."""
    ort = _ort()
    available = set(ort.get_available_providers())
    out = []
    for p in preference:
        name = PROVIDER_NAMES.get(str(p).lower(), str(p))
        if name not in PROVIDER_NAMES.values():
            raise EngineError(f"unknown execution provider '{p}' (use tensorrt, cuda or cpu)")
        if name not in available:
            log.warning("execution provider %s is not available in this onnxruntime build "
                        "(available: %s); skipping it", name, sorted(available))
            continue
        opts: dict = {}
        if name == "TensorrtExecutionProvider":
            cache = os.path.expanduser(cache_dir or "~/.cache/wsa_ros/trt")
            os.makedirs(cache, exist_ok=True)
            opts = {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}
        elif name == "CUDAExecutionProvider":
            opts = {"device_id": device_id}
        if all(n != name for n, _ in out):
            out.append((name, opts))
    if all(n != "CPUExecutionProvider" for n, _ in out):
        out.append(("CPUExecutionProvider", {}))
    return out


def _dims_match(onnx_shape, want) -> bool:
    if len(onnx_shape) != len(want):
        return False
    return all(not isinstance(a, int) or a <= 0 or a == b for a, b in zip(onnx_shape, want))


class Engine:
    """A loaded, validated bundle ready to act. Not thread-safe: one caller at a time
    (the agent's control tick); hot-swap builds a second Engine and swaps references."""

    def __init__(self, bundle: Bundle | str | os.PathLike, providers=("tensorrt", "cuda", "cpu"),
                 threads: int = 1, warmup: bool = True, cache_dir: str | None = None,
                 device_id: int = 0, verify_hashes: bool = True, fuse: bool = True,
                 rewrite: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_hashes)
        b = self.bundle
        ort = _ort()
        self._ort = ort
        plist = resolve_providers(providers, cache_dir, device_id)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3

        self.rewrites: dict[str, int] = {}  # graph rewrite -> times applied over all loaded graphs
        self._protos: dict = {}  # model path -> its rewritten onnx.ModelProto (merged below)
        # flat_gemm_to_conv answers a CPU (MLAS) weakness; on a GPU only the /255 fold is applied
        # (the GPU paths are not measured: no GPU was lent to this work)
        self._rewrite_set = REWRITES if plist[0][0] == "CPUExecutionProvider" else ("fold_input_scale",)

        def session(path: Path):
            model = self._rewritten(path) if rewrite else None
            if model is not None:
                try:
                    return session_from_bytes(model)
                except Exception as exc:  # noqa: BLE001 - try the original graph
                    log.warning("%s: rewritten graph does not load (%s); running the original", path, exc)
            try:
                return ort.InferenceSession(str(path), sess_options=so,
                                            providers=[n for n, _ in plist],
                                            provider_options=[o for _, o in plist])
            except Exception as exc:  # ORT raises its own types for unreadable/invalid models
                raise BundleError(f"{path}: ONNX Runtime cannot load this model: {exc}") from exc

        def session_from_bytes(model: bytes):
            return ort.InferenceSession(model, sess_options=so, providers=[n for n, _ in plist],
                                        provider_options=[o for _, o in plist])

        self._enc_sessions = [session(b.path(e.file)) for e in b.encoders]
        self._policy_session = session(b.path(b.policy.file))
        used = self._policy_session.get_providers()
        self.provider: str = used[0] if used else "CPUExecutionProvider"
        wanted = plist[0][0]
        if self.provider != wanted:
            log.warning("wanted execution provider %s but ONNX Runtime runs %s", wanted, self.provider)
        self.providers_requested = [n for n, _ in plist]
        self._device = "cuda" if self.provider in GPU_PROVIDERS else "cpu"
        self._device_id = device_id
        self._check_shapes()
        self._allocate()
        # One merged graph (every encoder + the policy) runs a step in a single ONNX Runtime
        # call: no per-session dispatch overhead, and one TensorRT engine on a GPU. The
        # separate sessions stay for embed()/act(), per-stage timings and benchmarks.
        self.fused = False
        if fuse:
            merged = self._merge_graphs()
            if merged is not None:
                self._fused_session = session_from_bytes(merged)
                self._bind_fused()
                self.fused = True
        self._protos = {}
        if warmup:
            self.warmup()

    # ------------------------------------------------------------------ properties
    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def cameras(self) -> list[str]:
        return self.bundle.cameras

    @property
    def encoder_names(self) -> list[str]:
        return [e.name for e in self.bundle.encoders]

    @property
    def alpha_names(self) -> list[str]:
        return [e.name for e in self.bundle.feature_encoders]

    # ------------------------------------------------------------------ set-up
    def _check_shapes(self) -> None:
        b = self.bundle
        for e, s in zip(b.encoders, self._enc_sessions):
            path = b.path(e.file)
            ins = {i.name: i for i in s.get_inputs()}
            outs = {o.name: o for o in s.get_outputs()}
            if e.onnx_input not in ins:
                raise BundleError(f"{path}: has no input '{e.onnx_input}' (inputs: {list(ins)})")
            if e.onnx_output not in outs:
                raise BundleError(f"{path}: has no output '{e.onnx_output}' (outputs: {list(outs)})")
            want_in = list(e.input.shape(1))
            if not _dims_match(ins[e.onnx_input].shape, want_in):
                raise BundleError(f"{path}: input shape {ins[e.onnx_input].shape} does not match the "
                                  f"manifest's {want_in} (height, width, color, layout)")
            want_t = "tensor(uint8)" if e.input.dtype == "uint8" else "tensor(float)"
            if ins[e.onnx_input].type != want_t:
                raise BundleError(f"{path}: input type {ins[e.onnx_input].type}, manifest says {e.input.dtype}")
            want_out = [1, *e.output_shape]
            if not _dims_match(outs[e.onnx_output].shape, want_out):
                raise BundleError(f"{path}: output shape {outs[e.onnx_output].shape} does not match the "
                                  f"manifest's output_shape {e.output_shape}")
        path = b.path(b.policy.file)
        pins = {i.name: i for i in self._policy_session.get_inputs()}
        pouts = {o.name: o for o in self._policy_session.get_outputs()}
        if set(pins) != set(b.policy.inputs):
            raise BundleError(f"{path}: inputs {sorted(pins)} differ from the manifest's {sorted(b.policy.inputs)}")
        for e in b.encoders:
            want = [1, *e.output_shape]
            if not _dims_match(pins[f"emb_{e.name}"].shape, want):
                raise BundleError(f"{path}: input emb_{e.name} shape {pins[f'emb_{e.name}'].shape} does not "
                                  f"match encoder '{e.name}' output_shape {e.output_shape}")
        if b.proprio and not _dims_match(pins["proprio"].shape, [1, b.proprio.dim]):
            raise BundleError(f"{path}: proprio input shape {pins['proprio'].shape}, manifest says "
                              f"{b.proprio.dim} values")
        for name in ("action", "alpha"):
            if name not in pouts:
                raise BundleError(f"{path}: has no output '{name}' (outputs: {list(pouts)})")
        if not _dims_match(pouts["action"].shape, [1, b.action.dim]):
            raise BundleError(f"{path}: action output shape {pouts['action'].shape}, manifest says "
                              f"{b.action.dim} joints")
        if not _dims_match(pouts["alpha"].shape, [1, len(b.feature_encoders)]):
            raise BundleError(f"{path}: alpha output shape {pouts['alpha'].shape}, manifest has "
                              f"{len(b.feature_encoders)} feature encoders")
        self.has_log_std = "log_std" in pouts
        if self.has_log_std and not _dims_match(pouts["log_std"].shape, [1, b.action.dim]):
            raise BundleError(f"{path}: log_std output shape {pouts['log_std'].shape}, manifest says "
                              f"{b.action.dim} joints")

    def _allocate(self) -> None:
        """Preallocate every buffer a step touches and bind them once."""
        ort, b = self._ort, self.bundle
        self._in_bufs: list[np.ndarray] = []
        self._emb_vals = []
        self._enc_bindings = []
        shared = self._shared_inputs()
        for i, (e, s) in enumerate(zip(b.encoders, self._enc_sessions)):
            # encoders reading the same camera with the same input spec share one buffer
            buf = (self._in_bufs[shared[i]] if shared[i] != i else
                   np.zeros(e.input.shape(1), dtype=np.uint8 if e.input.dtype == "uint8" else np.float32))
            emb = ort.OrtValue.ortvalue_from_shape_and_type([1, *e.output_shape], np.float32,
                                                            self._device, self._device_id)
            io = s.io_binding()
            io.bind_ortvalue_input(e.onnx_input, ort.OrtValue.ortvalue_from_numpy(buf))
            io.bind_ortvalue_output(e.onnx_output, emb)
            self._in_bufs.append(buf)
            self._emb_vals.append(emb)
            self._enc_bindings.append(io)
        self._proprio_buf = np.zeros((1, b.proprio.dim), dtype=np.float32) if b.proprio else None
        if b.proprio:
            self._p_mean = np.asarray(b.proprio.mean, dtype=np.float64)
            self._p_std = np.asarray(b.proprio.std, dtype=np.float64)
        self._action_buf = np.zeros((1, b.action.dim), dtype=np.float32)
        self._alpha_buf = np.zeros((1, len(b.feature_encoders)), dtype=np.float32)
        self._log_std_buf = np.zeros((1, b.action.dim), dtype=np.float32)
        io = self._policy_session.io_binding()
        for e, emb in zip(b.encoders, self._emb_vals):
            io.bind_ortvalue_input(f"emb_{e.name}", emb)
        if b.proprio:
            io.bind_ortvalue_input("proprio", ort.OrtValue.ortvalue_from_numpy(self._proprio_buf))
        self._bind_policy_outputs(io)
        self._policy_binding = io
        self._low = np.asarray(b.action.low, dtype=np.float64)
        self._high = np.asarray(b.action.high, dtype=np.float64)
        self._half_range = 0.5 * (self._high - self._low)  # (a + 1) * 0.5 * range, bit for bit
        self._run_opts = None  # RunOptions() would cost ~60 us a run: ORT 1.32 probes it for a gpu_graph_id by exception
        # camera name -> indices of encoders reading it
        self._by_camera = {c: [i for i, e in enumerate(b.encoders) if e.camera == c] for c in b.cameras}
        # camera name -> [(encoder index, (height, width))] for the buffers a frame fills
        self._fill_plan = {c: [(i, (b.encoders[i].input.height, b.encoders[i].input.width))
                               for i in idx if shared[i] == i] for c, idx in self._by_camera.items()}

    def _bind_policy_outputs(self, io) -> None:
        """The policy's outputs (chained or merged graph) into the preallocated buffers."""
        ort = self._ort
        io.bind_ortvalue_output("action", ort.OrtValue.ortvalue_from_numpy(self._action_buf))
        io.bind_ortvalue_output("alpha", ort.OrtValue.ortvalue_from_numpy(self._alpha_buf))
        if self.has_log_std:
            io.bind_ortvalue_output("log_std", ort.OrtValue.ortvalue_from_numpy(self._log_std_buf))

    def _count_rewrites(self, done: dict[str, int]) -> None:
        for k, v in done.items():
            self.rewrites[k] = self.rewrites.get(k, 0) + v

    def _rewritten(self, path: Path) -> bytes | None:
        """The model at ``path`` with the engine's graph rewrites, or None when none applies
        (or onnx is not installed: the rewrites are an optimisation, not a requirement)."""
        try:
            import onnx

            model = onnx.load(str(path))
            done = rewrite_model(model, self._rewrite_set)
            data = model.SerializeToString() if any(done.values()) else None
            if data is not None:
                err = rewrite_error(path, data)
                if not err <= REWRITE_TOL:
                    log.warning("%s: rewritten graph differs from the original (relative error %.2e); "
                                "running the original", path, err)
                    return None
        except Exception as exc:  # noqa: BLE001 - run the graph as it is
            log.info("%s: graph rewrites skipped (%s)", path, exc)
            return None
        self._count_rewrites(done)
        self._protos[str(path)] = model
        return data

    def _shared_inputs(self) -> list[int]:
        """For each encoder, the index of the first encoder with the same camera and input
        spec: those read identical input tensors, so the merged graph gives them one input
        (and ONNX Runtime's common-subexpression pass then converts the frame once)."""
        b = self.bundle
        out = []
        for i, e in enumerate(b.encoders):
            out.append(next(j for j in range(i + 1)
                            if b.encoders[j].camera == e.camera and b.encoders[j].input == e.input))
        return out

    def _merge_graphs(self) -> bytes | None:
        """Every encoder graph (names prefixed ``e<i>/``) wired into the policy graph, encoders
        reading the same camera with the same input spec sharing one input; the graphs are
        the sessions' own (rewritten when those were). None (with a log line) when the graphs
        cannot be merged, e.g. different opsets."""
        b = self.bundle
        try:
            import onnx  # optional at run time: without it the chained sessions run
            from onnx import compose

            def load(path):  # add_prefix and merge_models copy what they are given
                m = self._protos.get(str(path))
                return onnx.load(str(path)) if m is None else m

            pol = load(b.path(b.policy.file))
            merged = None
            io_map = []
            for i, e in enumerate(b.encoders):
                m = compose.add_prefix(load(b.path(e.file)), prefix=f"e{i}/")
                io_map.append((f"e{i}/{e.onnx_output}", f"emb_{e.name}"))
                merged = m if merged is None else compose.merge_models(merged, m, io_map=[])
            ir = max(merged.ir_version, pol.ir_version)
            merged.ir_version = pol.ir_version = ir
            merged = compose.merge_models(
                merged, pol, io_map=io_map,
                inputs=[f"e{i}/{e.onnx_input}" for i, e in enumerate(b.encoders)] + (["proprio"] if b.proprio else []),
                outputs=["action", "alpha"] + (["log_std"] if self.has_log_std else []))
            g = merged.graph
            for i, j in enumerate(self._shared_inputs()):
                if i == j:
                    continue
                dup, keep = f"e{i}/{b.encoders[i].onnx_input}", f"e{j}/{b.encoders[j].onnx_input}"
                for n in g.node:
                    for k, name in enumerate(n.input):
                        if name == dup:
                            n.input[k] = keep
                g.input.remove(next(x for x in g.input if x.name == dup))
            return merged.SerializeToString()
        except Exception as exc:  # noqa: BLE001 - fall back to chained sessions, which always work
            log.info("encoders and policy not merged into one graph (%s); running them as chained sessions", exc)
            return None

    def _bind_fused(self) -> None:
        ort, b = self._ort, self.bundle
        io = self._fused_session.io_binding()
        for i, (e, buf) in enumerate(zip(b.encoders, self._in_bufs)):
            if self._shared_inputs()[i] == i:
                io.bind_ortvalue_input(f"e{i}/{e.onnx_input}", ort.OrtValue.ortvalue_from_numpy(buf))
        if b.proprio:
            io.bind_ortvalue_input("proprio", ort.OrtValue.ortvalue_from_numpy(self._proprio_buf))
        self._bind_policy_outputs(io)
        self._fused_binding = io

    def warmup(self, runs: int = 3) -> None:
        """Run mid-grey frames and neutral proprioception; a non-finite output is a
        BundleError naming the file that produced it."""
        b = self.bundle
        imgs = {c: np.full((b.encoders[ix[0]].input.height, b.encoders[ix[0]].input.width, 3), 127, np.uint8)
                for c, ix in self._by_camera.items()}
        proprio = np.asarray(b.proprio.mean, dtype=np.float64) if b.proprio else None
        for _ in range(runs):
            self._preprocess(imgs)
            self._set_proprio(proprio)
            for i, (e, s) in enumerate(zip(b.encoders, self._enc_sessions)):
                s.run_with_iobinding(self._enc_bindings[i], self._run_opts)
                emb = self._emb_vals[i].numpy()
                if not np.all(np.isfinite(emb)):
                    raise BundleError(f"{b.path(e.file)}: warm-up produced non-finite embeddings")
            self._policy_session.run_with_iobinding(self._policy_binding, self._run_opts)
            if not (np.all(np.isfinite(self._action_buf)) and np.all(np.isfinite(self._alpha_buf))
                    and np.all(np.isfinite(self._log_std_buf))):
                raise BundleError(f"{b.path(b.policy.file)}: warm-up produced a non-finite action, alpha or log_std")
            if self.fused:
                chained = (self._action_buf.copy(), self._alpha_buf.copy())
                self._fused_session.run_with_iobinding(self._fused_binding, self._run_opts)
                if not (np.allclose(self._action_buf, chained[0], rtol=1e-4, atol=1e-5)
                        and np.allclose(self._alpha_buf, chained[1], rtol=1e-4, atol=1e-5)):
                    log.warning("merged graph disagrees with the chained sessions; using the chained sessions")
                    self.fused = False

    # ------------------------------------------------------------------ the step
    @staticmethod
    def _check_frame(cam: str, img) -> np.ndarray:
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise EngineError(f"camera '{cam}': expected a uint8 array, got "
                              f"{getattr(img, 'dtype', type(img).__name__)}")
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or img.shape[0] == 0 or img.shape[1] == 0:
            raise EngineError(f"camera '{cam}': expected HxW or HxWx3 pixels, got shape {img.shape}")
        return img

    @staticmethod
    def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
        if img.shape[0] == height and img.shape[1] == width:
            return img
        shrink = img.shape[0] > height and img.shape[1] > width
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    @staticmethod
    def _fill(e: EncoderSpec, buf: np.ndarray, img: np.ndarray) -> None:
        """A frame already at the encoder's size -> its input buffer (colour order,
        layout, and for float32 inputs (pixel * scale - mean) / std), in place."""
        spec = e.input
        if spec.color == "gray":
            img = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            img = img[:, :, None]
        elif img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        elif spec.color == "bgr":
            img = img[:, :, ::-1]
        if spec.dtype == "uint8":
            buf[0] = img if spec.layout == "nhwc" else img.transpose(2, 0, 1)
            return
        dst = buf[0] if spec.layout == "nhwc" else buf[0].transpose(1, 2, 0)
        np.multiply(img, np.float32(spec.scale), out=dst, casting="unsafe")
        dst -= np.asarray(spec.mean, np.float32)
        dst /= np.asarray(spec.std, np.float32)

    def _preprocess(self, images: dict) -> None:
        if not isinstance(images, dict):
            raise EngineError("images must be a dict {camera name: uint8 array}")
        for cam, idx in self._by_camera.items():
            if cam not in images or images[cam] is None:
                raise EngineError(f"no frame for camera '{cam}' (the bundle reads {self.cameras})")
            img = self._check_frame(cam, images[cam])
            sized: dict[tuple[int, int], np.ndarray] = {}  # resize once per size and camera
            for i, key in self._fill_plan[cam]:
                if key not in sized:
                    sized[key] = self._resize(img, *key)
                self._fill(self.bundle.encoders[i], self._in_bufs[i], sized[key])

    def _set_proprio(self, proprio) -> None:
        b = self.bundle
        if not b.proprio:
            return
        if proprio is None:
            raise EngineError(f"this bundle needs proprioception ({b.proprio.dim} values: "
                              f"{b.proprio.fields} of {b.proprio.joint_names})")
        p = np.asarray(proprio, dtype=np.float64).reshape(-1)
        if p.shape[0] != b.proprio.dim:
            raise EngineError(f"proprioception has {p.shape[0]} values, the bundle expects {b.proprio.dim}")
        if not np.isfinite(p).all():
            raise EngineError("proprioception holds NaN or inf")
        self._proprio_buf[0] = (p - self._p_mean) / self._p_std

    def step(self, images: dict, proprio=None) -> StepResult:
        """Frames (camera name -> uint8 HxWx3 RGB or HxW mono, any size) and raw
        proprioception (``build_proprio`` order) -> action, alpha and stage timings."""
        t0 = time.perf_counter()
        self._preprocess(images)
        self._set_proprio(proprio)
        t1 = time.perf_counter()
        timings = {"preprocess": t1 - t0}
        if self.fused:
            self._fused_session.run_with_iobinding(self._fused_binding, self._run_opts)
            timings["infer"] = time.perf_counter() - t1
        else:
            for e, s, io in zip(self.bundle.encoders, self._enc_sessions, self._enc_bindings):
                ta = time.perf_counter()
                s.run_with_iobinding(io, self._run_opts)
                timings[f"enc_{e.name}"] = time.perf_counter() - ta
            ta = time.perf_counter()
            self._policy_session.run_with_iobinding(self._policy_binding, self._run_opts)
            timings["policy"] = time.perf_counter() - ta
        vals = self._action_buf[0].tolist()  # a few Python floats: cheaper to check than ufuncs
        if not all(map(math.isfinite, vals)):
            raise PolicyOutputError(f"policy output is not finite: {vals}")
        a = np.array(vals, dtype=np.float64)
        alpha = self._alpha_buf[0].copy()
        action = self._low + (a + 1.0) * self._half_range
        timings["total"] = time.perf_counter() - t0
        log_std = self._log_std_buf[0].astype(np.float64) if self.has_log_std else None
        return StepResult(action=action, action_norm=a, alpha=alpha, timings=timings, log_std=log_std)

    # ------------------------------------------------------------------ pieces for learners/tools
    def embed(self, images: dict) -> dict[str, np.ndarray]:
        """Run only the encoders; {encoder name: [1, *output_shape] float32 copy}."""
        self._preprocess(images)
        out = {}
        for e, s, io, v in zip(self.bundle.encoders, self._enc_sessions, self._enc_bindings, self._emb_vals):
            s.run_with_iobinding(io, self._run_opts)
            out[e.name] = v.numpy().copy()
        return out

    def embed_batch(self, images: dict) -> dict[str, np.ndarray]:
        """Run only the encoders on a batch: {camera: uint8 [N, H, W, 3] or one frame} ->
        {encoder name: [N, *output_shape]} (for learners, tools and offline evaluation)."""
        out = {}
        for e, s in zip(self.bundle.encoders, self._enc_sessions):
            if e.camera not in images:
                raise EngineError(f"no frames for camera '{e.camera}' (the bundle reads {self.cameras})")
            out[e.name] = s.run([e.onnx_output], {e.onnx_input: preprocess(images[e.camera], e)})[0]
        return out

    def act(self, embeddings: dict[str, np.ndarray], proprio=None) -> tuple[np.ndarray, np.ndarray]:
        """Run only the fusion-and-actor session on given embeddings (batch of any size);
        returns (action_norm [B, A], alpha [B, K])."""
        b = self.bundle
        feeds = {}
        for e in b.encoders:
            if e.name not in embeddings:
                raise EngineError(f"no embedding for encoder '{e.name}'")
            feeds[f"emb_{e.name}"] = np.asarray(embeddings[e.name], dtype=np.float32)
        if b.proprio:
            if proprio is None:
                raise EngineError("this bundle needs proprioception")
            p = np.atleast_2d(np.asarray(proprio, dtype=np.float64))
            feeds["proprio"] = ((p - self._p_mean) / self._p_std).astype(np.float32)
        action, alpha = self._policy_session.run(["action", "alpha"], feeds)
        return action, alpha

    def stage_runners(self) -> dict[str, callable]:
        """Each session's bound run on its own (for benchmarks: whole step vs the sum of
        its sessions run alone). Uses the inputs of the last step."""
        out = {}
        for e, s, io in zip(self.bundle.encoders, self._enc_sessions, self._enc_bindings):
            out[f"enc_{e.name}"] = (lambda s=s, io=io: s.run_with_iobinding(io, self._run_opts))
        out["policy"] = lambda: self._policy_session.run_with_iobinding(self._policy_binding, self._run_opts)
        return out

    def scale_action(self, action_norm: np.ndarray) -> np.ndarray:
        return self._low + (np.asarray(action_norm, np.float64) + 1.0) * self._half_range
