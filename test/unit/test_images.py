"""images.py: every accepted encoding decodes to the right pixels; every bad buffer
raises ImageError with the right kind and a message naming the cause."""
import array

import cv2
import numpy as np
import pytest

from wsa_ros.runtime.images import (
    ImageError,
    array_to_compressed,
    array_to_image_fields,
    compressed_to_array,
    from_compressed_msg,
    from_image_msg,
    image_to_array,
)


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decode(fields, **kw):
    return image_to_array(fields["encoding"], fields["height"], fields["width"], fields["step"],
                          fields["data"], **kw)


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_round_trip_with_row_padding(enc, pad):
    img = _rgb()
    f = array_to_image_fields(img, enc, pad=pad)
    assert f["step"] == img.shape[1] * (4 if "a" in enc[3:] else 3) + pad
    out = _decode(f)
    assert out.dtype == np.uint8 and out.shape == img.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)


def test_bgr8_channel_order_is_swapped_to_rgb():
    # one red pixel in BGR byte order is (0, 0, 255)
    out = image_to_array("bgr8", 1, 1, 3, bytes([0, 0, 255]))
    assert out.tolist() == [[[255, 0, 0]]]
    out = image_to_array("rgb8", 1, 1, 3, bytes([255, 0, 0]))
    assert out.tolist() == [[[255, 0, 0]]]


def test_mono8_keeps_hxw_or_expands():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    f = array_to_image_fields(gray, "mono8", pad=2)
    out = _decode(f)
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out, gray)
    out3 = _decode(f, mono_to_rgb=True)
    assert out3.shape == (4, 5, 3)
    np.testing.assert_array_equal(out3[:, :, 1], gray)


def test_accepts_rclpy_array_buffers_and_encoding_case():
    img = _rgb(3, 4)
    f = array_to_image_fields(img, "rgb8")
    data = array.array("B", f["data"])  # what rclpy hands a callback
    out = image_to_array("RGB8", f["height"], f["width"], f["step"], data)
    np.testing.assert_array_equal(out, img)
    out = image_to_array("rgb8", f["height"], f["width"], f["step"], np.frombuffer(f["data"], np.uint8))
    np.testing.assert_array_equal(out, img)


def test_output_does_not_alias_the_message_buffer():
    img = _rgb(2, 2)
    buf = bytearray(array_to_image_fields(img, "rgb8")["data"])
    out = image_to_array("rgb8", 2, 2, 6, buf)
    buf[0] = (buf[0] + 1) % 256
    assert out[0, 0, 0] == img[0, 0, 0]
    gray = bytearray(b"\x01\x02\x03\x04")
    out = image_to_array("mono8", 2, 2, 2, gray)
    gray[0] = 9
    assert out[0, 0] == 1


class Msg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_msg_helpers():
    img = _rgb()
    np.testing.assert_array_equal(from_image_msg(Msg(**array_to_image_fields(img, "bgr8"))), img)
    fmt, data = array_to_compressed(img, "png")
    np.testing.assert_array_equal(from_compressed_msg(Msg(format=fmt, data=data)), img)


@pytest.mark.parametrize(
    "args, kind, words",
    [
        (("16UC1", 2, 2, 4, bytes(8)), "encoding", ["16UC1", "rgb8"]),
        (("yuv422", 2, 2, 4, bytes(8)), "encoding", ["yuv422"]),
        (("", 2, 2, 6, bytes(12)), "encoding", ["unsupported"]),
        (("rgb8", 0, 0, 0, b""), "empty", ["empty"]),
        (("rgb8", 2, 2, 6, b""), "empty", ["no data"]),
        (("rgb8", 2, 2, 6, bytes(11)), "truncated", ["11 bytes", "12"]),
        (("rgb8", 2, 2, 6, bytes(13)), "size", ["13 bytes"]),
        (("rgb8", 2, 2, 5, bytes(10)), "size", ["step 5", "6 bytes per row"]),
        (("rgb8", -1, 2, 6, bytes(12)), "size", ["not positive"]),
        (("rgb8", 100000, 100000, 300000, bytes(3)), "size", ["exceeds"]),
        (("mono8", 3, 3, 3, bytes(4)), "truncated", ["truncated"]),
    ],
)
def test_bad_raw_images_raise_specific_errors(args, kind, words):
    with pytest.raises(ImageError) as ei:
        image_to_array(*args)
    assert ei.value.kind == kind
    for w in words:
        assert w in str(ei.value), str(ei.value)


def test_wrong_dtype_buffer_is_rejected():
    with pytest.raises(ImageError) as ei:
        image_to_array("rgb8", 1, 1, 3, np.zeros(3, np.float32))
    assert ei.value.kind == "encoding"


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt):
    yy, xx = np.mgrid[0:16, 0:24]
    img = np.stack([xx * 10, yy * 15, 255 - xx * 10], axis=2).astype(np.uint8)  # smooth: JPEG-friendly
    f, data = array_to_compressed(img, fmt, quality=100)
    assert fmt in f
    out = compressed_to_array(f, data)
    assert out.shape == img.shape and out.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(out, img)
    else:
        assert np.abs(out.astype(int) - img).mean() < 6  # lossy but RGB order right
    # channel order: a pure red image stays red
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    out = compressed_to_array(*array_to_compressed(red, fmt))
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


def test_compressed_mono_and_plain_format_strings():
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    f, data = array_to_compressed(gray, "png")
    out = compressed_to_array(f, data)
    assert out.shape == (8, 8)
    np.testing.assert_array_equal(out, gray)
    assert compressed_to_array("png", data, mono_to_rgb=True).shape == (8, 8, 3)
    assert compressed_to_array("", data).shape == (8, 8)  # format empty: the bytes decide


def test_bad_compressed_images_raise_specific_errors():
    img = _rgb(32, 32)
    _, jpg = array_to_compressed(img, "jpeg")
    _, png = array_to_compressed(img, "png")
    cases = [
        (("jpeg", b""), "empty"),
        (("jpeg", jpg[: len(jpg) // 2]), "truncated"),
        (("png", png[:-20]), "truncated"),
        (("jpeg", b"not an image at all"), "decode"),
        (("tiff", jpg), "encoding"),
        (("16UC1; compressedDepth png", png), "encoding"),
        # valid markers, garbage body: OpenCV fails, we say so
        (("jpeg", b"\xff\xd8" + bytes(200) + b"\xff\xd9"), "decode"),
    ]
    for (fmt, data), kind in cases:
        with pytest.raises(ImageError) as ei:
            compressed_to_array(fmt, data)
        assert ei.value.kind == kind, (fmt, str(ei.value))


def test_png_decompression_bomb_header_is_refused():
    _, png = array_to_compressed(np.zeros((4, 4, 3), np.uint8), "png")
    with pytest.raises(ImageError) as ei:
        compressed_to_array("png", png, max_pixels=10)
    assert ei.value.kind == "size"


def test_sixteen_bit_png_is_refused():
    ok, enc = cv2.imencode(".png", np.full((4, 4), 1000, np.uint16))
    assert ok
    with pytest.raises(ImageError) as ei:
        compressed_to_array("png", enc.tobytes())
    assert ei.value.kind == "encoding" and "16-bit" in str(ei.value)
