"""Public image functions: validated wrappers over the Cython kernel (or the reference, see _backend)."""
from __future__ import annotations

import numpy as np

from ._backend import PURE_PYTHON
from ._checks import check_images, check_out, check_size, check_threads, parse_binarize
from ._image_decode import MAX_BYTES, decode_images  # noqa: F401  (re-exported)
from ._constants import MAX_PIXELS

if PURE_PYTHON:
    from .reference.image import _preprocess_checked
else:
    from ._image import preprocess_into as _kernel

    def _preprocess_checked(images, height, width, mode, threshold, out, threads=1):
        _kernel(images, out, mode, threshold, threads)
        return out


def preprocess_batch(
    images,
    height: int = 64,
    width: int = 256,
    binarize="otsu",
    out: np.ndarray | None = None,
    threads: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Turn decoded images into the network's input batch, float32 ``(N, 1, height, width)``.

    Per image: grey conversion (BGR/BGRA weights as OpenCV's ``COLOR_BGR2GRAY``; alpha is composited
    over a white page), binarisation, aspect-preserving scale to the largest size that fits (area
    average when shrinking, bilinear when growing), then left-aligned, vertically centred padding.

    Polarity: **ink is 1.0, paper (background) is 0.0**, and the padding is background (0.0). With
    binarisation the only grey values come from the resize blending stroke edges.

    Args:
        images: a list of uint8 arrays, HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA), e.g. from
            :func:`decode_images`. Not one stacked ndarray: pass ``list(batch)``.
        height, width: output size (the model's input size; read it from the checkpoint config).
        binarize: ``"otsu"`` (per-image Otsu threshold), an int threshold in [0, 255] (grey <= t is
            ink), or ``"none"`` (value = (255 - grey) / 255).
        out: optional float32 C-contiguous ``(N, 1, height, width)`` array written in place.
        threads: images are processed in parallel (OpenMP, GIL released) on this many threads.
        max_pixels: per-image size limit (width * height), default 50 megapixels.

    Returns:
        ``out`` (or a new array). An empty list gives shape ``(0, 1, height, width)``.

    Raises:
        ValueError: naming the first bad item: None, not an array, wrong dtype, 2 channels, empty,
            too many pixels; or a bad ``height``/``width``/``binarize``/``out``/``threads``.
    """
    height, width = check_size(height, width)
    mode, threshold = parse_binarize(binarize)
    threads = check_threads(threads)
    images = check_images(images, max_pixels)
    out = check_out(out, len(images), height, width)
    return _preprocess_checked(images, height, width, mode, threshold, out, threads)
