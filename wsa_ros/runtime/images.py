"""Camera message buffers -> numpy frames for ``Engine.step``; ROS-free.

The functions take the raw fields of ``sensor_msgs/Image`` (encoding, height, width,
step, data) and ``sensor_msgs/CompressedImage`` (format, data), so they can be used on
rclpy messages, rosbags messages or plain test data alike. ``from_image_msg`` /
``from_compressed_msg`` read those fields off any object that has them.

Output: a C-contiguous ``uint8`` array, ``HxWx3`` in RGB order for colour input, and
``HxW`` for ``mono8`` (the engine takes either; ``mono_to_rgb=True`` expands it).
The result never aliases the message buffer, so the message may be reused or freed.

Every problem raises :class:`ImageError` whose ``kind`` is a short, stable counter key
(``encoding``, ``size``, ``empty``, ``truncated``, ``decode``) and whose message names
the field, the value seen and what was expected. ``is_bigendian`` is irrelevant for the
8-bit encodings accepted here and is ignored.
"""
from __future__ import annotations

import numpy as np

try:  # OpenCV is only needed for BGR->RGB on odd strides and for compressed images
    import cv2
except ImportError:  # pragma: no cover - opencv-python-headless is a dependency
    cv2 = None

#: raw encodings accepted: name -> (channels, channel order to take for RGB or None)
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
#: compressed formats accepted (``CompressedImage.format`` contains one of these)
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
#: refuse frames bigger than this many pixels (a corrupt header must not make us
#: allocate gigabytes); 8K x 8K is far above any camera a policy reads
MAX_PIXELS = 8192 * 8192

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"

KINDS = ("encoding", "size", "empty", "truncated", "decode")


class ImageError(ValueError):
    """A camera message that cannot be turned into a frame. ``kind`` is one of
    :data:`KINDS` (used as a rejection counter key); the message names the cause."""

    def __init__(self, kind: str, message: str):
        assert kind in KINDS, kind
        super().__init__(message)
        self.kind = kind


def _as_bytes_view(data) -> np.ndarray:
    """Any buffer (bytes, bytearray, memoryview, array.array('B'), uint8 ndarray, list)
    -> a flat uint8 view without copying where possible."""
    if data is None:
        return np.empty(0, np.uint8)
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageError("encoding", f"image data has dtype {data.dtype}, expected uint8 bytes")
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        try:
            return np.asarray(bytearray(data), dtype=np.uint8)
        except (TypeError, ValueError) as exc:
            raise ImageError("decode", f"image data is not a byte buffer ({type(data).__name__})") from exc


def image_to_array(encoding: str, height: int, width: int, step: int, data, *,
                   mono_to_rgb: bool = False, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/Image`` fields -> uint8 ``HxWx3`` RGB (``HxW`` for mono8 unless
    ``mono_to_rgb``). Row padding (``step`` > width * channels) is skipped. The data
    must hold exactly ``step * height`` bytes, as sensor_msgs/Image defines: fewer is
    ``truncated``, more means the header does not describe the buffer (``size``)."""
    enc = (encoding or "").strip().lower()
    if enc not in RAW_ENCODINGS:
        raise ImageError(
            "encoding",
            f"unsupported image encoding '{encoding}' (accepted: {', '.join(RAW_ENCODINGS)}); "
            "set the camera driver to rgb8/bgr8/mono8 or publish CompressedImage jpeg/png")
    ch, order = RAW_ENCODINGS[enc]
    try:
        h, w, st = int(height), int(width), int(step)
    except (TypeError, ValueError) as exc:
        raise ImageError("size", f"height/width/step are not integers: {height!r}/{width!r}/{step!r}") from exc
    buf = _as_bytes_view(data)
    if h <= 0 or w <= 0:
        if buf.size == 0:
            raise ImageError("empty", f"empty image ({w}x{h}, no data)")
        raise ImageError("size", f"image size {w}x{h} is not positive but data has {buf.size} bytes")
    if h * w > max_pixels:
        raise ImageError("size", f"image size {w}x{h} exceeds the limit of {max_pixels} pixels")
    row = w * ch
    if st < row:
        raise ImageError(
            "size", f"step {st} is smaller than width {w} x {ch} channels ({enc}) = {row} bytes per row")
    need = st * h
    if buf.size == 0:
        raise ImageError("empty", f"image {w}x{h} {enc} has no data (expected {need} bytes)")
    if buf.size < need:
        raise ImageError(
            "truncated",
            f"image data truncated: {buf.size} bytes, expected step {st} x height {h} = {need}")
    if buf.size > need:
        raise ImageError(
            "size",
            f"image data has {buf.size} bytes but step {st} x height {h} = {need}; "
            "height/width/step do not describe this buffer")
    rows = buf[:need].reshape(h, st)[:, :row]
    if ch == 1:
        out = np.array(rows, dtype=np.uint8, order="C")  # copy: never alias the message
        if mono_to_rgb:
            out = np.repeat(out[:, :, None], 3, axis=2)
        return out
    px = rows.reshape(h, w, ch)
    if order is None:
        return np.array(px, dtype=np.uint8, order="C")
    if cv2 is not None and ch == 3:
        return cv2.cvtColor(np.ascontiguousarray(px), cv2.COLOR_BGR2RGB)
    if cv2 is not None and ch == 4:
        code = cv2.COLOR_BGRA2RGB if order == (2, 1, 0) else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(np.ascontiguousarray(px), code)
    return np.ascontiguousarray(px[:, :, list(order)])


def _png_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if the header is too short."""
    if buf.size < 24:
        return None
    b = buf[16:24].tobytes()
    return int.from_bytes(b[:4], "big"), int.from_bytes(b[4:], "big")


def compressed_to_array(fmt: str, data, *, mono_to_rgb: bool = False,
                        max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` fields -> uint8 ``HxWx3`` RGB (``HxW`` for a
    grey image unless ``mono_to_rgb``). ``format`` is image_transport's
    ``"<encoding>; jpeg compressed <encoding>"`` or just ``jpeg``/``png``; the bytes
    themselves decide JPEG vs PNG. Truncated files are detected by their end marker
    (OpenCV would otherwise decode a cut JPEG with grey fill and no error)."""
    f = (fmt or "").strip().lower()
    if "compresseddepth" in f.replace(" ", ""):
        raise ImageError("encoding", f"compressed format '{fmt}' is a depth image; a camera policy needs "
                                     "colour or mono jpeg/png")
    if f and not any(k in f for k in COMPRESSED_FORMATS):
        raise ImageError("encoding", f"unsupported compressed format '{fmt}' (accepted: jpeg, png)")
    buf = _as_bytes_view(data)
    if buf.size == 0:
        raise ImageError("empty", f"compressed image ({fmt or 'no format'}) has no data")
    head = buf[:8].tobytes()
    if head.startswith(_JPEG_SOI):
        tail = buf[-64:].tobytes().rstrip(b"\x00")
        if not tail.endswith(_JPEG_EOI):
            raise ImageError("truncated", f"JPEG data truncated: {buf.size} bytes and no end-of-image marker")
    elif head == _PNG_SIG:
        if not buf[-12:].tobytes().endswith(_PNG_IEND):
            raise ImageError("truncated", f"PNG data truncated: {buf.size} bytes and no IEND chunk")
        size = _png_size(buf)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ImageError("size", f"PNG size {size[0]}x{size[1]} exceeds the limit of {max_pixels} pixels")
    else:
        raise ImageError("decode", f"compressed image data ({buf.size} bytes) is neither JPEG nor PNG "
                                   f"(starts with {head[:4].hex()})")
    if cv2 is None:  # pragma: no cover
        raise ImageError("decode", "OpenCV is not installed; cannot decode compressed images")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError("decode", f"OpenCV could not decode the {fmt or 'compressed'} image ({buf.size} bytes)")
    if img.dtype != np.uint8:
        raise ImageError("encoding", f"compressed image decodes to {img.dtype} (16-bit?); expected 8-bit")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError("size", f"image size {img.shape[1]}x{img.shape[0]} exceeds {max_pixels} pixels")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        img = img.reshape(img.shape[0], img.shape[1])
        return np.repeat(img[:, :, None], 3, axis=2) if mono_to_rgb else np.ascontiguousarray(img)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageError("encoding", f"compressed image decodes to {img.shape[2]} channels")


def from_image_msg(msg, **kw) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object -> frame (see :func:`image_to_array`)."""
    return image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data, **kw)


def from_compressed_msg(msg, **kw) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage``-like object -> frame (see :func:`compressed_to_array`)."""
    return compressed_to_array(msg.format, msg.data, **kw)


def is_compressed_topic(topic: str) -> bool:
    """image_transport's naming rule: a camera topic ending in ``/compressed`` carries
    ``sensor_msgs/CompressedImage``, any other ``sensor_msgs/Image``."""
    return topic.rstrip("/").endswith("/compressed")


def decode(msg, compressed: bool) -> np.ndarray:
    """A ``sensor_msgs/Image`` or ``CompressedImage`` (rclpy or rosbags object) -> uint8
    HxWx3 RGB (HxW for mono8). The one frame decoder, live and offline."""
    return from_compressed_msg(msg) if compressed else from_image_msg(msg)


# --------------------------------------------------------------------------- the other way
def array_to_image_fields(img: np.ndarray, encoding: str = "rgb8", pad: int = 0) -> dict:
    """uint8 RGB ``HxWx3`` (or ``HxW`` mono) -> the fields of a ``sensor_msgs/Image``
    (``encoding, height, width, step, is_bigendian, data``), optionally with ``pad``
    bytes of row padding. Used by publishers in tests, the simulator and benchmarks."""
    img = np.asarray(img, dtype=np.uint8)
    enc = encoding.lower()
    if enc not in RAW_ENCODINGS:
        raise ImageError("encoding", f"cannot encode as '{encoding}'")
    ch, _ = RAW_ENCODINGS[enc]
    if ch == 1:
        px = img if img.ndim == 2 else (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if cv2 else img.mean(2).astype(np.uint8))
        px = px[:, :, None]
    else:
        rgb = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
        px = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1]}.get(enc)
        if px is None:
            alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
            px = np.concatenate([rgb if enc == "rgba8" else rgb[:, :, ::-1], alpha], axis=2)
    h, w = px.shape[:2]
    rows = px.reshape(h, w * ch)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return {"encoding": enc, "height": h, "width": w, "step": w * ch + pad, "is_bigendian": 0,
            "data": np.ascontiguousarray(rows).tobytes()}


def array_to_compressed(img: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> tuple[str, bytes]:
    """uint8 RGB (or mono) frame -> (``CompressedImage.format``, data) as image_transport
    writes them."""
    if cv2 is None:  # pragma: no cover
        raise ImageError("decode", "OpenCV is not installed")
    img = np.asarray(img, dtype=np.uint8)
    mono = img.ndim == 2
    src = img if mono else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ext = ".png" if fmt.lower() == "png" else ".jpg"
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)] if ext == ".jpg" else []
    ok, enc = cv2.imencode(ext, src, params)
    if not ok:  # pragma: no cover
        raise ImageError("decode", f"OpenCV could not encode a {fmt} image")
    kind = "png" if ext == ".png" else "jpeg"
    src_enc = "mono8" if mono else "rgb8"
    return f"{src_enc}; {kind} compressed {'mono8' if mono else 'bgr8'}", enc.tobytes()
