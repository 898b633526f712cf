"""Exact ONNX graph rewrites the engine applies to every graph it loads (ROS-free).

Measured with ONNX Runtime's per-op profiler on the 2-core development CPU (README, "Engine"):

* ``fold_input_scale``: Cast -> Div(255) (or Mul) -> Transpose(NHWC->NCHW) -> Conv becomes
  Cast -> Transpose -> Conv with the weights divided by 255: one elementwise pass over the
  frame less per encoder (zero padding is unaffected: 0 / c == 0);
* ``flat_gemm_to_conv``: Flatten([B, C, H, W]) -> Gemm(transB) becomes a Conv whose kernel
  covers the whole map (weights reshaped [N, C, H, W]) -> Flatten. Same dot products; ONNX
  Runtime's prepacked Gemm reads a large weight matrix at a third of the speed of its conv
  kernel (Linear(64*27*27 -> 64), 12 MB: ~0.9 ms vs ~0.3 ms), and the conv also reads the
  encoder's NCHWc output directly.

Both keep every graph input/output name. :class:`wsa_ros.runtime.engine.Engine` checks each
rewritten file against the original on random inputs when it loads it (:func:`rewrite_error`)
and runs the original when they differ; tests check them too. Space-to-depth for the 8x8
stride-4 conv was measured and left out: the conv is no faster and the 6-D transpose costs more.
"""
from __future__ import annotations

import math

import numpy as np

REWRITES = ("fold_input_scale", "flat_gemm_to_conv")


def _graph_index(g):
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for o in g.output:
        consumers.setdefault(o.name, []).append(None)  # a graph output counts as a consumer
    inits = {t.name: t for t in g.initializer}
    return producer, consumers, inits


def _const_value(name, producer, inits):
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    n = producer.get(name)
    if n is not None and n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
        return numpy_helper.to_array(n.attribute[0].t)
    return None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unique_name(g, base: str) -> str:
    used = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    return name


def _fold_input_scale(model) -> int:
    """Cast -> Div|Mul(scalar constant) -> Transpose(0,3,1,2) -> Conv: fold the scale into the
    Conv weights and drop the Div/Mul. Returns how many were folded."""
    from onnx import numpy_helper

    g = model.graph
    count = 0
    for div in [n for n in g.node if n.op_type in ("Div", "Mul")]:
        producer, consumers, inits = _graph_index(g)
        if len(div.input) != 2 or div.input[0] not in producer or producer[div.input[0]].op_type != "Cast":
            continue
        c = _const_value(div.input[1], producer, inits)
        if c is None or c.size != 1 or not np.isfinite(c).all() or float(c.reshape(-1)[0]) == 0.0:
            continue
        scale = (1.0 / float(c.reshape(-1)[0])) if div.op_type == "Div" else float(c.reshape(-1)[0])
        users = consumers.get(div.output[0], [])
        if len(users) != 1 or users[0] is None or users[0].op_type != "Transpose" \
                or list(_attr(users[0], "perm", [])) != [0, 3, 1, 2]:
            continue
        tr = users[0]
        convs = consumers.get(tr.output[0], [])
        if not convs or any(u is None or u.op_type != "Conv" or u.input[0] != tr.output[0]
                            or len(u.input) < 2 or u.input[1] not in inits for u in convs):
            continue
        for conv in convs:
            w = numpy_helper.to_array(inits[conv.input[1]])
            if w.dtype != np.float32:
                break
        else:
            for conv in convs:
                w = numpy_helper.to_array(inits[conv.input[1]])
                name = _unique_name(g, conv.input[1] + "_prescaled")
                g.initializer.append(numpy_helper.from_array((w.astype(np.float64) * scale).astype(np.float32), name))
                conv.input[1] = name
            tr.input[0] = div.input[0]
            g.node.remove(div)
            count += 1
    return count


def _declared_shapes(g) -> dict[str, list]:
    shapes = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _inferred_shapes(model) -> dict[str, list]:
    """ONNX shape inference on a copy whose large float initializers are declared as inputs
    instead (inference needs their shapes, not their megabytes)."""
    import onnx
    from onnx import helper

    light = onnx.ModelProto()
    light.CopyFrom(model)
    g = light.graph
    keep, declared = [], []
    for t in g.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE) \
                and math.prod(t.dims) > 4096:
            declared.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    del g.initializer[:]
    g.initializer.extend(keep)
    g.input.extend(declared)
    return _declared_shapes(onnx.shape_inference.infer_shapes(light).graph)


def _flat_gemm_to_conv(model) -> int:
    """Flatten(axis=1, [B, C, H, W] static C, H, W) -> Gemm(A, B const, bias const, alpha=beta=1,
    transA=0) ==> Conv(kernel H x W) -> Flatten. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    g = model.graph
    shapes = _declared_shapes(g)
    inferred = False
    count = 0
    for gemm in [n for n in g.node if n.op_type == "Gemm"]:
        producer, consumers, inits = _graph_index(g)
        flat = producer.get(gemm.input[0])
        if flat is None or flat.op_type != "Flatten" or _attr(flat, "axis", 1) != 1:
            continue
        if flat.input[0] not in shapes and not inferred:
            shapes.update(_inferred_shapes(model))
            inferred = True
        shp = shapes.get(flat.input[0])
        if not shp or len(shp) != 4 or any(d is None or d <= 0 for d in shp[1:]):
            continue
        if _attr(gemm, "transA", 0) or _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0:
            continue
        if gemm.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[gemm.input[1]])
        if w.dtype != np.float32 or w.ndim != 2:
            continue
        if not _attr(gemm, "transB", 0):
            w = w.T
        c, h, wd = shp[1:]
        if w.shape[1] != c * h * wd:
            continue
        bias = None
        if len(gemm.input) > 2 and gemm.input[2]:
            bias = _const_value(gemm.input[2], producer, inits)
            if bias is None or bias.dtype != np.float32 or bias.size != w.shape[0] or bias.ndim > 2:
                continue  # a broadcast or computed bias: leave the Gemm alone
        wname = _unique_name(g, gemm.input[1] + "_as_conv")
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.reshape(w.shape[0], c, h, wd)), wname))
        ins = [flat.input[0], wname]
        if bias is not None:
            bname = _unique_name(g, wname + "_bias")
            g.initializer.append(numpy_helper.from_array(bias.reshape(-1).astype(np.float32), bname))
            ins.append(bname)
        mid = _unique_name(g, gemm.output[0] + "_conv")
        idx = list(g.node).index(gemm)
        conv = helper.make_node("Conv", ins, [mid], name=_unique_name(g, gemm.name + "_as_conv"),
                                kernel_shape=[h, wd], strides=[1, 1], pads=[0, 0, 0, 0])
        out = helper.make_node("Flatten", [mid], [gemm.output[0]], name=_unique_name(g, gemm.name + "_flat"), axis=1)
        g.node.remove(gemm)
        g.node.insert(idx, out)
        g.node.insert(idx, conv)
        if not consumers.get(flat.output[0], [])[1:]:  # the Gemm was the Flatten's only reader
            g.node.remove(flat)
        count += 1
    return count


def rewrite_error(original, rewritten: bytes, seed: int = 0) -> float:
    """Max error of ``rewritten`` (serialized model) against the ``original`` (path or bytes)
    on random inputs (uint8 frames, float32 N(0, 2^2), batch 1), relative to max(1, |y|).
    The original runs unoptimised (quick to load: the engine calls this once per rewritten file)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(original if isinstance(original, bytes) else str(original), so,
                               providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(rewritten, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in ref.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        if i.type == "tensor(uint8)":
            feeds[i.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif i.type == "tensor(float)":
            feeds[i.name] = (2.0 * rng.standard_normal(shape)).astype(np.float32)
        else:
            raise ValueError(f"cannot make a random '{i.type}' input to check the rewrite")
    err = 0.0
    for a, b in zip(ref.run(None, feeds), new.run(None, feeds)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return math.inf
        if a.size:
            err = max(err, float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))))
    return err


REWRITE_TOL = 1e-5  # the rewrites only reorder float sums; anything larger is a bug


def rewrite_model(model, rewrites=REWRITES) -> dict[str, int]:
    """Apply the engine's graph rewrites to an ``onnx.ModelProto`` in place; returns
    {rewrite: times applied}. The function computed is unchanged (float rounding aside)."""
    done = {}
    if "fold_input_scale" in rewrites:
        done["fold_input_scale"] = _fold_input_scale(model)
    if "flat_gemm_to_conv" in rewrites:
        done["flat_gemm_to_conv"] = _flat_gemm_to_conv(model)
    # drop Constant nodes and initializers nothing reads any more (the replaced weights)
    g = model.graph
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in [n for n in g.node if n.op_type == "Constant" and not set(n.output) & read]:
        g.node.remove(n)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    return done
