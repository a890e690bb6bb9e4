"""Bad and odd inputs for the served pipeline, shared by ``tests/test_bad_input.py`` and the fuzz run
(:mod:`htr.testing.serving_fuzz`, ``bench/fuzz.py``).

Each case is built from a real image (the encoded bytes of a labelled crop) and says what the server must
do with it:

- ``READ``: a valid image, however odd (1x1, 16-bit, palette, CMYK, grey + alpha). The server reads it like
  any other: a text (maybe empty) and no error. The reference is the offline model on the same bytes.
- ``REFUSED``: the item gets an empty text, confidence 0 and an ``ERROR`` that matches ``error`` (a regex
  naming the problem); the other items of the same request are read normally.

The 30000 x 30000 PNG is a real, valid image of one colour (900 megapixels, under 1 MB on the wire): a
decompression bomb that only its header can refuse in time. It is built without ever holding the 900 MB
of pixels (see :func:`solid_png`).

Torch-free and server-free: only bytes and arrays are built here (model, tensor names and limits come
from :mod:`htr.runtime.contract`).
"""
from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from htr.runtime.contract import CRNN, ENSEMBLE, IMAGE_BYTES, MAX_WIDTH, PIXELS

READ, REFUSED = "read", "refused"

# What the ERROR output says for each refusal (htr.preprocess.decode_images, the preprocess model).
NOT_AN_IMAGE = r"not a decodable image \(\d+ bytes of unknown format\)"
TRUNCATED = r"data is truncated or corrupt|not a decodable image \(\d+ bytes\): Truncated File Read"
EMPTY = r"is empty \(0 bytes\)"
BOMB = r"decompression bomb.*refused before decoding"
OVER_PIXELS = r"over the limit of [\d.]+ megapixels; refused before decoding"
OVER_BYTES = r"\d+ bytes is over the limit of \d+ bytes"
REQUEST_TOO_LARGE = r"over the limit of \d+ bytes per request \(max_request_bytes"
#: Any of the item refusals above (for random bytes, whose header may by chance parse as something).
ANY_REFUSAL = "|".join([r"not a decodable image", TRUNCATED, EMPTY, r"empty image", BOMB, OVER_PIXELS, OVER_BYTES,
                        r"samples is not supported"])


@dataclass(frozen=True)
class Case:
    """One input item: its bytes and what the server must answer."""

    name: str
    blob: bytes
    expect: str  # READ or REFUSED
    error: str = ""  # regex the ERROR text matches (REFUSED)

    def __repr__(self) -> str:  # pytest ids and logs: never print a megabyte of bytes
        return f"Case({self.name!r}, {len(self.blob)} bytes, {self.expect})"


# ---------------------------------------------------------------------------------------------------
# builders


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def _pil(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def _rgb(jpeg: bytes) -> Image.Image:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.convert("RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@lru_cache(maxsize=4)
def solid_png(width: int, height: int, grey: int = 255) -> bytes:
    """A valid 8-bit grey PNG of ``width`` x ``height`` pixels, all ``grey``, in well under 1 MB.

    Every row is the same, so the zlib stream is one deflate segment of ``rows_per_block`` rows, ended by a
    full flush (byte-aligned, no back-references across it) and repeated: the whole image costs one
    compression of a few MB instead of compressing ``width * height`` bytes. The Adler-32 is still computed
    over the full pixel stream, so decoders that check it accept the file.
    """
    row = b"\0" + bytes([grey]) * width  # filter type 0 + the samples
    rows_per_block = max(1, min(height, (4 << 20) // len(row)))
    blocks, rest = divmod(height, rows_per_block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and Adler-32 are ours
    block = comp.compress(row * rows_per_block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    end = (tail.compress(row * rest) if rest else b"") + tail.flush()  # the last deflate block
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(row * rows_per_block, adler)
    if rest:
        adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + block * blocks + end + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def random_bytes(rng: random.Random, size: int | None = None) -> bytes:
    return rng.randbytes(size if size is not None else rng.randint(1, 4096))


def truncated(blob: bytes, fraction: float = 0.6) -> bytes:
    return blob[: max(1, int(len(blob) * fraction))]


def png_of(jpeg: bytes) -> bytes:
    """The same image as an 8-bit PNG (what the truncated-PNG case cuts)."""
    return _pil(_rgb(jpeg), "PNG")


def png16_of(jpeg: bytes) -> bytes:
    """16-bit greyscale PNG of the image (samples scaled by 257: the same picture in 16 bits)."""
    grey = np.asarray(_rgb(jpeg).convert("L"), np.uint16) * 257
    return _png(grey)


def palette_png_of(jpeg: bytes) -> bytes:
    return _pil(_rgb(jpeg).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def cmyk_jpeg_of(jpeg: bytes) -> bytes:
    return _pil(_rgb(jpeg).convert("CMYK"), "JPEG", quality=95)


def grey_alpha_png_of(jpeg: bytes) -> bytes:
    return _pil(_rgb(jpeg).convert("LA"), "PNG")


def lying_jpeg(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header rewritten to announce ``width`` x ``height``. libjpeg decodes the data
    there is and fills the rest, so within the pixel limit it is read: a few KB that make the server decode
    (and allocate) an image of that size."""
    out = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):  # SOF0 baseline, SOF1, SOF2 progressive
        at = out.find(marker)
        if at >= 0:
            out[at + 5 : at + 9] = struct.pack(">HH", height, width)  # after length (2) and precision (1)
            return bytes(out)
    raise ValueError("no JPEG frame header (SOF0-2) found")


#: (width, height) of large but allowed announced sizes, 4-33 megapixels, all different.
LARGE_SIZES = [(14623, 1752), (5299, 924), (18173, 1895), (4040, 1848), (10208, 1290), (6669, 1844)]


def one_by_one_png() -> bytes:
    return _png(np.full((1, 1), 255, np.uint8))


# ---------------------------------------------------------------------------------------------------
# the catalogue

BOMB_SIZE = 30_000  # 30000 x 30000 = 900 megapixels: over PIL's own bomb limit, and over ours
OVER_PIXELS_SIZE = 8_000  # 64 megapixels: under PIL's limit, over the served MAX_PIXELS (50 megapixels)


def bad_cases(jpeg: bytes, rng: random.Random | None = None) -> list[Case]:
    """Every bad-input case, built from one real JPEG. ``rng`` draws the random bytes (seeded by default)."""
    rng = rng or random.Random(0)
    return [
        Case("random_bytes", random_bytes(rng, 2048), REFUSED, NOT_AN_IMAGE),
        Case("truncated_jpeg", truncated(jpeg), REFUSED, TRUNCATED),
        Case("truncated_png", truncated(png_of(jpeg)), REFUSED, TRUNCATED),
        Case("zero_bytes", b"", REFUSED, EMPTY),
        Case("file_path", b"/etc/passwd", REFUSED, NOT_AN_IMAGE),  # bytes, never a path to open
        Case("bomb_30000x30000", solid_png(BOMB_SIZE, BOMB_SIZE), REFUSED, BOMB),
        Case("over_50_megapixels", solid_png(OVER_PIXELS_SIZE, OVER_PIXELS_SIZE), REFUSED, OVER_PIXELS),
    ]


def odd_cases(jpeg: bytes) -> list[Case]:
    """Valid images in unusual encodings: read, not refused."""
    return [
        Case("1x1", one_by_one_png(), READ),
        Case("png_16bit", png16_of(jpeg), READ),
        Case("png_palette", palette_png_of(jpeg), READ),
        Case("jpeg_cmyk", cmyk_jpeg_of(jpeg), READ),
        Case("png_grey_alpha", grey_alpha_png_of(jpeg), READ),
    ]


def over_max_bytes(max_bytes: int, rng: random.Random | None = None) -> Case:
    """One item bigger than the per-image byte limit (``max_bytes``): refused before it is parsed."""
    return Case("over_max_bytes", random_bytes(rng or random.Random(1), max_bytes + 1), REFUSED, OVER_BYTES)


def over_size_request(max_request_bytes: int, max_bytes: int, rng: random.Random | None = None) -> list[bytes]:
    """Items each under ``max_bytes`` that together are over ``max_request_bytes``: the request is refused.

    One random blob repeated (the server sees the total, not whether the items differ)."""
    size = max_bytes - 64
    blob = random_bytes(rng or random.Random(2), size)
    return [blob] * (max_request_bytes // size + 1)


def flip_bytes(blob: bytes, rng: random.Random, count: int = 8) -> bytes:
    """``blob`` with ``count`` random bytes overwritten: it may still decode (then it is read) or not."""
    out = bytearray(blob)
    for _ in range(count):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def random_bad_case(jpeg: bytes, rng: random.Random) -> Case:
    """A fresh random refused item (the fuzz run's cheap per-request mix)."""
    kind = rng.choice(("random_bytes", "truncated_jpeg", "zero_bytes", "file_path"))
    if kind == "random_bytes":
        return Case(kind, random_bytes(rng), REFUSED, ANY_REFUSAL)  # may start like some format's header
    if kind == "truncated_jpeg":
        # cut before its frame header, a JPEG is not even recognised as one: "unknown format"
        return Case(kind, truncated(jpeg, rng.uniform(0.05, 0.95)), REFUSED, TRUNCATED + "|" + NOT_AN_IMAGE)
    if kind == "zero_bytes":
        return Case(kind, b"", REFUSED, EMPTY)
    return Case(kind, rng.choice([b"/etc/passwd", b"../../etc/shadow", b"file:///etc/hosts"]), REFUSED, NOT_AN_IMAGE)


# ---------------------------------------------------------------------------------------------------
# tensors Triton or the model must refuse


@dataclass(frozen=True, repr=False)
class WrongTensor:
    """A request with one wrong input tensor, to ``model`` (``htr`` or ``crnn``), and the refusal it gets."""

    name: str
    model: str
    input: str
    array: np.ndarray
    datatype: str
    error: str  # regex of the error message

    def __repr__(self) -> str:
        return f"WrongTensor({self.name!r}, {self.model}.{self.input} {self.datatype}{list(self.array.shape)})"

    def as_input(self, module):
        """The ``InferInput`` of ``module`` (tritonclient.grpc or tritonclient.http) carrying it."""
        inp = module.InferInput(self.input, list(self.array.shape), self.datatype)
        inp.set_data_from_numpy(self.array)
        return inp


def wrong_tensors(jpeg: bytes, height: int = 32, max_width: int = MAX_WIDTH, max_batch: int = 64) -> list[WrongTensor]:
    """Wrong dtype, shape, name, empty batch: to the ensemble, and to ``crnn`` directly."""
    f32 = np.float32
    one = np.array([[jpeg]], dtype=np.object_)
    E, C, IB, PX = ENSEMBLE, CRNN, IMAGE_BYTES, PIXELS
    return [
        WrongTensor("htr_empty_batch", E, IB, np.zeros((0, 1), np.object_), "BYTES",
                    rf"expected 1 string elements for inference input '{IB}' for model '{E}', got 0"),
        WrongTensor("htr_fp32", E, IB, np.zeros((1, 1), f32), "FP32",
                    rf"data-type is 'FP32', but model '{E}' expects 'BYTES'"),
        WrongTensor("htr_1d", E, IB, one.reshape(1), "BYTES",
                    rf"unexpected shape for input '{IB}'"),
        WrongTensor("htr_wrong_name", E, "IMAGES", one, "BYTES", r"unexpected inference input 'IMAGES'"),
        WrongTensor("crnn_fp64", C, PX, np.zeros((1, 1, height, 64)), "FP64",
                    rf"data-type is 'FP64', but model '{C}' expects 'FP32'"),
        WrongTensor("crnn_int8", C, PX, np.zeros((1, 1, height, 64), np.int8), "INT8",
                    rf"data-type is 'INT8', but model '{C}' expects 'FP32'"),
        WrongTensor("crnn_height_7", C, PX, np.zeros((1, 1, 7, 64), f32), "FP32",
                    rf"unexpected shape for input '{PX}'.*got \[1,1,7,64\]"),
        WrongTensor("crnn_3_channels", C, PX, np.zeros((1, 3, height, 64), f32), "FP32",
                    rf"unexpected shape for input '{PX}'.*got \[1,3,{height},64\]"),
        WrongTensor("crnn_2d", C, PX, np.zeros((1, height), f32), "FP32",
                    rf"unexpected shape for input '{PX}'.*got \[1,{height}\]"),
        WrongTensor("crnn_width_2", C, PX, np.zeros((1, 1, height, 2), f32), "FP32",
                    rf"{PX} width 2 is below the minimum of 4"),
        WrongTensor("crnn_width_over_max", C, PX, np.zeros((1, 1, height, max_width + 4), f32), "FP32",
                    rf"{PX} width {max_width + 4} is over the limit of {max_width}"),
        WrongTensor("crnn_batch_over_max", C, PX, np.zeros((max_batch + 1, 1, height, 8), f32), "FP32",
                    rf"batch-size must be <= {max_batch}"),
        WrongTensor("crnn_empty_batch", C, PX, np.zeros((0, 1, height, 64), f32), "FP32",
                    rf"input byte size mismatch for input '{PX}'"),
    ]
