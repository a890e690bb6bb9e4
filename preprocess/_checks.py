"""Argument checks shared by the Cython path and the NumPy reference of the image functions.

Every check raises ``ValueError`` naming the item and the problem, so one bad image in a batch can be
reported precisely (the server turns these messages into per-request errors).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._constants import MAX_PIXELS, MODE_NONE, MODE_OTSU, MODE_THRESHOLD


def check_size(height, width):
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or v > 8192:
            raise ValueError(f"{name} must be an int in [1, 8192], got {v!r}")
    return int(height), int(width)


def check_threads(threads):
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    return int(threads)


def parse_binarize(binarize) -> tuple[int, int]:
    """``"otsu"`` | ``"none"`` | int threshold in [0, 255] -> (mode, threshold)."""
    if isinstance(binarize, str):
        key = binarize.strip().lower()
        if key == "otsu":
            return MODE_OTSU, 0
        if key == "none":
            return MODE_NONE, 0
    elif not isinstance(binarize, bool) and isinstance(binarize, (int, np.integer)):
        if 0 <= binarize <= 255:
            return MODE_THRESHOLD, int(binarize)
        raise ValueError(f"binarize threshold must be in [0, 255], got {binarize}")
    raise ValueError(f'binarize must be "otsu", "none" or an int threshold in [0, 255], got {binarize!r}')


def check_images(images, max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """Validate a batch of decoded images; return C-contiguous uint8 arrays, HxW or HxWxC (C in 1, 3, 4)."""
    if isinstance(images, np.ndarray):
        raise ValueError(
            "images must be a list of arrays, not one ndarray (a single HxWx3 image and a batch of "
            "HxW images look alike): pass [image] for one image or list(batch) for a stacked batch"
        )
    if not isinstance(images, Sequence):
        try:
            images = list(images)
        except TypeError:
            raise ValueError(f"images must be a list of numpy arrays, got {type(images).__name__}") from None
    checked = []
    for i, img in enumerate(images):
        if img is None:
            raise ValueError(f"image {i}: is None")
        if isinstance(img, (bytes, bytearray, memoryview)):
            raise ValueError(f"image {i}: got encoded bytes; decode them first with decode_images()")
        if not isinstance(img, np.ndarray):
            raise ValueError(f"image {i}: expected a numpy.ndarray, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ValueError(f"image {i}: dtype {img.dtype} is not supported, expected uint8")
        if img.ndim not in (2, 3):
            raise ValueError(f"image {i}: expected HxW or HxWxC, got shape {img.shape}")
        if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"image {i}: {img.shape[2]} channels is not supported, expected 1 (grey), 3 (BGR) or 4 (BGRA)"
            )
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"image {i}: is empty (shape {img.shape})")
        if img.shape[0] * img.shape[1] > max_pixels:
            raise ValueError(
                f"image {i}: {img.shape[1]}x{img.shape[0]} is {img.shape[0] * img.shape[1] / 1e6:.1f} "
                f"megapixels, over the limit of {max_pixels / 1e6:g}"
            )
        checked.append(np.ascontiguousarray(img))
    return checked


def check_out(out, n: int, height: int, width: int) -> np.ndarray:
    shape = (n, 1, height, width)
    if out is None:
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        got = f"{type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}".strip()
        raise ValueError(f"out must be a float32 ndarray of shape {shape}, got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out
