"""Encoded bytes -> uint8 arrays, with the image's size checked from its header before it is decoded."""
from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from htr.runtime.contract import MAX_BYTES, MAX_PIXELS  # the served limits are decode_images' defaults


def _as_buffer(i: int, blob) -> np.ndarray:
    if blob is None:
        raise ValueError(f"image {i}: is None")
    if isinstance(blob, np.ndarray):
        if blob.dtype == np.object_ and blob.ndim == 0:  # one element of a Triton BYTES tensor
            return _as_buffer(i, blob.item())
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise ValueError(
                f"image {i}: expected encoded bytes, got an array {blob.dtype} {blob.shape} "
                "(decoded images go straight to preprocess_batch)"
            )
        return blob
    if isinstance(blob, str):
        raise ValueError(f"image {i}: got str; pass the file's bytes (open(path, 'rb').read())")
    try:
        return np.frombuffer(blob, np.uint8)
    except TypeError:
        raise ValueError(f"image {i}: expected bytes, got {type(blob).__name__}") from None


def _header_size(i: int, buf: np.ndarray, max_pixels: int) -> tuple[int, int, str]:
    """Width, height and format from the header only: nothing is decompressed here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(buf.tobytes() if not buf.flags.c_contiguous else buf)) as im:
                return im.size[0], im.size[1], im.format or "?"
    except Image.DecompressionBombError as e:  # PIL's own, larger limit fired while reading the header
        raise ValueError(
            f"image {i}: header announces a decompression bomb ({e}); over the limit of "
            f"{max_pixels / 1e6:g} megapixels; refused before decoding"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"image {i}: not a decodable image ({len(buf)} bytes of unknown format){_hint(buf)}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image {i}: not a decodable image ({len(buf)} bytes): {e}") from None


# base64 of the magic numbers of JPEG, PNG, BMP, TIFF (both byte orders), GIF, WebP: how an encoded image
# starts when someone sends its base64 text instead of its bytes (e.g. JSON "data": ["/9j/4AAQ..."]).
_BASE64_IMAGE_STARTS = (b"/9j/", b"iVBORw0KGgo", b"Qk", b"SUkq", b"TU0AKg", b"R0lGOD", b"UklGR")
_BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_\r\n")


def _hint(buf: np.ndarray) -> str:
    """What to send instead, when the bytes are base64 text (or a data: URL) rather than the image."""
    head = buf[:64].tobytes().lstrip()
    if head.startswith(b"data:image/") or (head.startswith(_BASE64_IMAGE_STARTS) and set(head) <= _BASE64_CHARS):
        return ("; these bytes are base64 text, not an image: send the file's raw bytes (over HTTP, Triton's "
                "binary tensor data extension, see the README's curl example; tritonclient does it for you)")
    return ""


def decode_one(i: int, blob, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Decode item ``i``; raises ValueError naming it on any problem."""
    buf = _as_buffer(i, blob)
    if buf.size == 0:
        raise ValueError(f"image {i}: is empty (0 bytes)")
    if buf.size > max_bytes:
        raise ValueError(f"image {i}: {buf.size} bytes is over the limit of {max_bytes} bytes")
    w, h, fmt = _header_size(i, buf, max_pixels)
    if w * h > max_pixels:
        raise ValueError(
            f"image {i}: {fmt} of {w}x{h} ({w * h / 1e6:.1f} megapixels) is over the limit of "
            f"{max_pixels / 1e6:g} megapixels; refused before decoding"
        )
    if w == 0 or h == 0:
        raise ValueError(f"image {i}: {fmt} header says {w}x{h}: empty image")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"image {i}: {fmt} data is truncated or corrupt ({buf.size} bytes)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"image {i}: {fmt} with {img.dtype} samples is not supported (8 or 16 bit only)")
    if img.ndim == 3 and img.shape[2] == 2:  # grey + alpha
        img = np.dstack([img[..., 0]] * 3 + [img[..., 1]])
    return img


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="htr-decode")


def decode_images(blobs, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, threads: int = 1):
    """Decode encoded images (JPEG, PNG, BMP, TIFF, ...) to uint8 arrays with OpenCV.

    Args:
        blobs: a sequence of bytes-like objects (bytes, bytearray, memoryview, 1-D uint8 arrays, or the
            elements of a Triton ``BYTES`` tensor).
        max_pixels: images whose header announces more pixels are refused *before* decoding
            (decompression-bomb guard). Default 50 megapixels.
        max_bytes: encoded size limit per image. Default 32 MiB.
        threads: decode in a thread pool of this size (OpenCV releases the GIL).

    Returns:
        One array per blob, as stored: HxW (grey), HxWx3 (BGR) or HxWx4 (BGRA). 16-bit images are
        reduced to 8 bit, palette images expanded, CMYK converted to BGR. ``preprocess_batch`` takes these.

    Raises:
        ValueError: naming the first bad item and what is wrong with it (None, empty, too large,
            not an image, truncated or corrupt data, unsupported sample type).
    """
    if isinstance(blobs, (bytes, bytearray, memoryview, str)):
        raise ValueError("blobs must be a sequence of encoded images; for one image pass [blob]")
    blobs = list(blobs)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if threads == 1 or len(blobs) < 2:
        return [decode_one(i, b, max_pixels, max_bytes) for i, b in enumerate(blobs)]
    futures = [_pool(threads).submit(decode_one, i, b, max_pixels, max_bytes) for i, b in enumerate(blobs)]
    return [f.result() for f in futures]
