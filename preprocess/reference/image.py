"""Plain NumPy/OpenCV reference of the image kernels in ``htr.preprocess._image``.

Same signatures and the same arithmetic as the Cython path, written for reading rather than speed:
grey conversion and Otsu's threshold are integer/double exact, and the resize is two dense
matrix products with the same per-axis weights the kernel applies sparsely, so the two agree to
float32 rounding (the test suite holds them to 1e-5).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_images, check_out, check_size, parse_binarize
from .._image_decode import decode_images  # noqa: F401  (decoding is OpenCV in both paths)
from .._constants import GREY_B, GREY_G, GREY_R, GREY_SHIFT, MAX_PIXELS, MODE_NONE, MODE_OTSU


def to_grey(img: np.ndarray) -> np.ndarray:
    """uint8 HxW / HxWx1 / HxWx3 (BGR) / HxWx4 (BGRA) -> uint8 HxW.

    Colour uses OpenCV's fixed-point BGR2GRAY weights; alpha is composited over a white background
    (a transparent pixel is paper, not ink): g' = (g * a + 255 * (255 - a) + 127) // 255.
    """
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[:, :, 0]
    b, g, r = (img[:, :, k].astype(np.int32) for k in range(3))
    grey = (b * GREY_B + g * GREY_G + r * GREY_R + (1 << (GREY_SHIFT - 1))) >> GREY_SHIFT
    if img.shape[2] == 4:
        a = img[:, :, 3].astype(np.int32)
        grey = (grey * a + 255 * (255 - a) + 127) // 255
    return grey.astype(np.uint8)


def otsu_threshold(grey: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: the t maximising the between-class variance of {<= t}, {> t}.

    sigma_b(t) is proportional to (N*S_t - T*n_t)^2 / (n_t * (N - n_t)) with n_t, S_t the count and
    level sum up to t and N, T the totals (exact integers); the kernel scores levels the same way.
    """
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.int64)
    levels = np.arange(256, dtype=np.int64)
    N, T = int(grey.size), int((levels * hist).sum())
    n, S = np.cumsum(hist), np.cumsum(levels * hist)
    best, best_val = 0, -1.0
    for t in range(256):
        if n[t] == 0 or n[t] == N:
            continue
        num = float(N * int(S[t]) - T * int(n[t]))
        val = num * num / (float(n[t]) * float(N - n[t]))
        if val > best_val:
            best, best_val = t, val
    return best


def ink_lut(grey: np.ndarray, mode: int, threshold: int) -> np.ndarray:
    """256-entry table grey level -> network value. Ink is 1.0, background (paper) is 0.0."""
    levels = np.arange(256)
    if mode == MODE_NONE:
        return (255 - levels) / 255.0
    t = otsu_threshold(grey) if mode == MODE_OTSU else threshold
    return (levels <= t).astype(np.float64)  # OpenCV's THRESH_BINARY keeps > t as background


def fit_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """Largest aspect-preserving size that fits (height, width); each side at least 1."""
    s = min(height / h, width / w)
    return min(height, max(1, int(h * s + 0.5))), min(width, max(1, int(w * s + 0.5)))


def resize_weights(n: int, m: int) -> np.ndarray:
    """Dense (m, n) matrix resampling n samples to m: area average when shrinking, bilinear when growing.

    The area weights are OpenCV's INTER_AREA table; bilinear uses half-pixel centres as INTER_LINEAR.
    """
    wt = np.zeros((m, n), np.float64)
    if m == n:
        np.fill_diagonal(wt, 1.0)
    elif m < n:
        inv = n / m
        for i in range(m):
            f1 = i * inv
            f2 = f1 + inv
            cell = min(inv, n - f1)
            s2 = min(int(np.floor(f2)), n - 1)
            s1 = min(int(np.ceil(f1)), s2)
            if s1 - f1 > 1e-3:
                wt[i, s1 - 1] += (s1 - f1) / cell
            for j in range(s1, s2):
                wt[i, j] += 1.0 / cell
            if f2 - s2 > 1e-3:
                wt[i, s2] += min(f2 - s2, 1.0, cell) / cell
    else:
        inv = n / m
        for i in range(m):
            src = (i + 0.5) * inv - 0.5
            j0 = int(np.floor(src))
            f = src - j0
            if j0 < 0:
                j0, f = 0, 0.0
            if j0 >= n - 1:
                j0, f = n - 1, 0.0
            wt[i, j0] += 1.0 - f
            if f > 0:
                wt[i, j0 + 1] += f
    return wt


def preprocess_batch(images, height=64, width=256, binarize="otsu", out=None, threads=1, max_pixels=MAX_PIXELS):
    """Reference of :func:`htr.preprocess.preprocess_batch` (``threads`` is accepted and ignored)."""
    height, width = check_size(height, width)
    mode, threshold = parse_binarize(binarize)
    images = check_images(images, max_pixels)
    out = check_out(out, len(images), height, width)
    return _preprocess_checked(images, height, width, mode, threshold, out)


def _preprocess_checked(images, height, width, mode, threshold, out, threads=1):
    out[...] = 0.0
    for i, img in enumerate(images):
        grey = to_grey(img)
        values = ink_lut(grey, mode, threshold)[grey]  # (h, w) float64
        h, w = grey.shape
        nh, nw = fit_size(h, w, height, width)
        resized = resize_weights(h, nh) @ values @ resize_weights(w, nw).T  # (nh, nw)
        top = (height - nh) // 2  # vertically centred, left-aligned
        out[i, 0, top : top + nh, :nw] = np.clip(resized, 0.0, 1.0)
    return out
