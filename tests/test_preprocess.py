"""htr.preprocess image functions: Cython kernel vs NumPy reference, OpenCV agreement, bad input."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from htr.preprocess import decode_images, preprocess_batch
from htr.preprocess import reference as ref
from htr.preprocess._checks import check_images, check_out, check_size, parse_binarize
from htr.preprocess._image import preprocess_into
from htr.preprocess.reference import image as ref_image

TOL = 1e-5


def kernel_batch(images, height=64, width=256, binarize="otsu", threads=1):
    """The Cython path regardless of HTR_PURE_PYTHON (same checks as the public wrapper)."""
    height, width = check_size(height, width)
    mode, thr = parse_binarize(binarize)
    images = check_images(images)
    out = check_out(None, len(images), height, width)
    preprocess_into(images, out, mode, thr, threads)
    return out


def encode(img: np.ndarray, ext: str, **params) -> bytes:
    ok, buf = cv2.imencode(ext, img, [int(v) for kv in params.items() for v in kv])
    assert ok
    return buf.tobytes()


# --- parity: kernel vs reference ------------------------------------------------------------------

@pytest.mark.parametrize("binarize", ["otsu", "none", 100])
@pytest.mark.parametrize("size", [(64, 256), (32, 128), (48, 400)])
def test_kernel_matches_reference_on_real_images(real_images, binarize, size):
    got = kernel_batch(real_images, *size, binarize=binarize)
    want = ref.preprocess_batch(real_images, *size, binarize=binarize)
    assert got.shape == (len(real_images), 1, *size) and got.dtype == np.float32
    assert np.abs(got - want).max() <= TOL


image_shapes = st.tuples(st.integers(1, 90), st.integers(1, 500), st.sampled_from([0, 1, 3, 4]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(image_shapes, min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
    binarize=st.sampled_from(["otsu", "none", 0, 127, 255]),
    out_size=st.sampled_from([(64, 256), (16, 64), (100, 60), (1, 1)]),
    threads=st.sampled_from([1, 2]),
)
def test_kernel_matches_reference_random(shapes, seed, binarize, out_size, threads):
    rng = np.random.default_rng(seed)
    images = [
        rng.integers(0, 256, (h, w) if c == 0 else (h, w, c), dtype=np.uint8) for h, w, c in shapes
    ]
    got = kernel_batch(images, *out_size, binarize=binarize, threads=threads)
    want = ref.preprocess_batch(images, *out_size, binarize=binarize)
    assert np.abs(got - want).max() <= TOL
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_threads_do_not_change_results(real_images):
    assert np.array_equal(kernel_batch(real_images, threads=1), kernel_batch(real_images, threads=2))


# --- the reference agrees with OpenCV where it claims to --------------------------------------------

def test_grey_and_otsu_match_opencv(real_images):
    for img in real_images:
        grey = ref_image.to_grey(img)
        assert np.array_equal(grey, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        t_cv, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert ref_image.otsu_threshold(grey) == int(t_cv)


@pytest.mark.parametrize("src,dst", [((31, 284), (28, 256)), ((40, 300), (34, 256)), ((100, 100), (37, 91)),
                                     ((10, 20), (33, 66)), ((7, 3), (64, 27)), ((50, 60), (50, 61))])
def test_resize_weights_match_opencv(src, dst):
    x = np.random.default_rng(0).random(src).astype(np.float32)
    interp = cv2.INTER_AREA if dst[1] < src[1] else cv2.INTER_LINEAR
    want = cv2.resize(x, dst[::-1], interpolation=interp)
    got = ref_image.resize_weights(src[0], dst[0]) @ x @ ref_image.resize_weights(src[1], dst[1]).T
    assert np.abs(got - want).max() <= 1e-5


# --- behaviour ------------------------------------------------------------------------------------

def page_with_ink(h=40, w=300):
    img = np.full((h, w, 3), 235, np.uint8)  # paper
    img[10:30, 20:120] = 20  # a dark stroke block
    return img


@pytest.mark.parametrize("binarize", ["otsu", "none", 128])
def test_polarity_and_padding(binarize):
    wide, narrow = page_with_ink(40, 400), page_with_ink(40, 150)
    out = preprocess_batch([wide, narrow], 64, 256, binarize=binarize)
    nh, nw = ref_image.fit_size(40, 400, 64, 256)  # width-bound: padded above and below
    top = (64 - nh) // 2
    assert nw == 256 and top > 0
    assert out[0, 0, :top].max() == 0.0 and out[0, 0, top + nh :].max() == 0.0
    nh, nw = ref_image.fit_size(40, 150, 64, 256)  # height-bound: padded on the right
    assert nh == 64 and nw < 256
    assert out[1, 0, :, nw:].max() == 0.0
    # ink (rows 10-30, cols 20-120 of a 40-row page; scale 1.6) -> 1.0, paper -> 0.0
    assert out[1, 0, 20:44, 40:185].min() > 0.85
    assert out[1, 0, 2:12, 200:nw].max() < 0.15


def test_aspect_preserving_fit_and_upscale():
    tall = np.zeros((200, 10), np.uint8)
    out = preprocess_batch([tall], 64, 256, binarize="none")
    nh, nw = ref_image.fit_size(200, 10, 64, 256)
    assert (nh, nw) == (64, 3)
    assert out[0, 0, :, :3].min() == pytest.approx(1.0) and out[0, 0, :, 3:].max() == 0.0
    small = np.zeros((4, 16), np.uint8)  # grows 16x: bilinear, still all ink
    out = preprocess_batch([small], 64, 256, binarize="none")
    assert np.allclose(out[0, 0], 1.0)


def test_channel_layouts_agree():
    bgr = page_with_ink()
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    outs = preprocess_batch([bgr, grey, grey[:, :, None], bgra])
    for k in range(1, 4):
        assert np.array_equal(outs[0], outs[k])


def test_transparent_pixels_are_paper():
    bgra = np.zeros((40, 300, 4), np.uint8)  # black but fully transparent
    bgra[10:30, 20:120, 3] = 255  # only this block is opaque black ink
    out = preprocess_batch([bgra], binarize=128)
    assert out.max() == 1.0 and out[0, 0].sum() < 0.5 * out[0, 0].size


def test_non_contiguous_input_and_out_param():
    base = page_with_ink(80, 600)
    view = base[::2, ::2]
    assert not view.flags.c_contiguous
    out = np.full((1, 1, 64, 256), 7.0, np.float32)
    res = preprocess_batch([view], out=out)
    assert res is out
    assert np.array_equal(out, preprocess_batch([np.ascontiguousarray(view)]))


def test_empty_batch():
    out = preprocess_batch([], 32, 128)
    assert out.shape == (0, 1, 32, 128) and out.dtype == np.float32


# --- bad input: ValueError naming the item and the problem --------------------------------------------

good = np.zeros((10, 10), np.uint8)


@pytest.mark.parametrize(
    "images,match",
    [
        ([good, None], r"image 1: is None"),
        ([good, np.zeros((0, 10), np.uint8)], r"image 1: is empty"),
        ([np.zeros((10, 0, 3), np.uint8)], r"image 0: is empty"),
        ([good, good.astype(np.float32)], r"image 1: dtype float32 is not supported"),
        ([good.astype(np.uint16)], r"image 0: dtype uint16"),
        ([np.zeros((10, 10, 2), np.uint8)], r"image 0: 2 channels is not supported"),
        ([np.zeros((2, 10, 10, 3), np.uint8)], r"image 0: expected HxW or HxWxC"),
        ([np.broadcast_to(np.uint8(0), (8000, 7000))], r"image 0: 7000x8000 is 56.0 megapixels, over the limit"),
        ([b"\xff\xd8\xff"], r"image 0: got encoded bytes"),
        ([[[1, 2], [3, 4]]], r"image 0: expected a numpy.ndarray, got list"),
        (np.zeros((3, 10, 10), np.uint8), r"not one ndarray"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        preprocess_batch(images)
    with pytest.raises(ValueError, match=match):
        ref.preprocess_batch(images)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"binarize": "sauvola"}, "binarize must be"),
        ({"binarize": 300}, r"binarize threshold must be in \[0, 255\]"),
        ({"height": 0}, "height must be an int"),
        ({"width": 2.5}, "width must be an int"),
        ({"threads": 0}, "threads must be an int >= 1"),
        ({"out": np.zeros((1, 1, 64, 256), np.float64)}, "out must be a float32 ndarray of shape"),
        ({"out": np.zeros((2, 1, 64, 256), np.float32)}, r"shape \(1, 1, 64, 256\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preprocess_batch([good], **kwargs)


# --- decode_images ----------------------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (bogus) image stream: a bomb stand-in."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def pil_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_decode_formats_roundtrip():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (23, 57, 3), dtype=np.uint8)
    for ext in (".png", ".bmp", ".tiff"):
        (img,) = decode_images([encode(bgr, ext)])
        assert np.array_equal(img, bgr), ext
    (jpg,) = decode_images([encode(bgr, ".jpg")])
    assert jpg.shape == bgr.shape and jpg.dtype == np.uint8
    rgb = Image.fromarray(bgr[:, :, ::-1])
    odd = decode_images([
        pil_bytes(Image.fromarray((bgr[:, :, 0].astype(np.uint16) * 257)), "PNG"),  # 16-bit grey
        pil_bytes(rgb.convert("P"), "PNG"),  # palette
        pil_bytes(rgb.convert("RGBA"), "PNG"),
        pil_bytes(rgb.convert("LA"), "PNG"),  # grey + alpha
        pil_bytes(rgb.convert("CMYK"), "JPEG"),
        pil_bytes(rgb.convert("1"), "PNG"),
    ])
    assert np.array_equal(odd[0], bgr[:, :, 0])
    assert [o.shape[2] if o.ndim == 3 else 1 for o in odd] == [1, 3, 4, 4, 3, 1]
    assert all(o.dtype == np.uint8 and o.shape[:2] == (23, 57) for o in odd)
    preprocess_batch(odd)  # every decoded layout is accepted downstream


def test_decode_real_images_and_threads(real_blobs):
    one = decode_images(real_blobs[:100])
    two = decode_images(real_blobs[:100], threads=2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert all(a.dtype == np.uint8 and a.ndim == 3 for a in one)


@pytest.mark.parametrize(
    "blob,match",
    [
        (None, "image 1: is None"),
        (b"", r"image 1: is empty \(0 bytes\)"),
        (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "image 1: not a decodable image"),
        ("a/path.jpg", "image 1: got str"),
        (png_header_only(30000, 30000), r"image 1: .*over the limit of 50 megapixels; refused before decoding"),
        (png_header_only(8000, 7000), r"image 1: PNG of 8000x7000 \(56.0 megapixels\) is over the limit of 50 megapixels"),
        (12345, "image 1: expected bytes, got int"),
    ],
)
def test_decode_bad_blobs(blob, match):
    ok = encode(page_with_ink(), ".png")
    with pytest.raises(ValueError, match=match):
        decode_images([ok, blob])


def test_decode_truncated(real_blobs):
    jpg = real_blobs[0]
    png = encode(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), ".png")
    for blob in (jpg[: len(jpg) // 2], jpg[:-12], png[: len(png) // 2], png[:-20]):
        with pytest.raises(ValueError, match="image 0: .*(truncated or corrupt|not a decodable)"):
            decode_images([blob])


def test_decode_limits():
    blob = encode(page_with_ink(), ".png")
    with pytest.raises(ValueError, match="over the limit of 100 bytes"):
        decode_images([blob], max_bytes=100)
    with pytest.raises(ValueError, match="over the limit of 0.001 megapixels"):
        decode_images([blob], max_pixels=1000)
    with pytest.raises(ValueError, match="sequence of encoded images"):
        decode_images(blob)


def test_base64_text_instead_of_image_bytes_says_what_to_send():
    import base64

    png = encode(page_with_ink(), ".png")
    jpg = encode(page_with_ink(), ".jpg")
    for blob in (base64.b64encode(png), base64.b64encode(jpg), b"data:image/png;base64," + base64.b64encode(png)):
        with pytest.raises(ValueError, match="base64 text, not an image: send the file's raw bytes"):
            decode_images([blob])
    with pytest.raises(ValueError, match=r"unknown format\)$"):  # other junk: no base64 hint
        decode_images([b"hello, not an image at all"])
