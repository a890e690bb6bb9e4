"""What ``recognize`` accepts, turned into what a request carries.

An image is one of

- a path (``str`` or ``os.PathLike``): the file is read here, on the client;
- encoded bytes (``bytes``, ``bytearray``, ``memoryview``): JPEG, PNG, BMP, TIFF, ...;
- a decoded ``uint8`` NumPy array in OpenCV order, as :func:`htr.preprocess.decode_images` returns it:
  HxW (grey), HxWx1, HxWx3 (BGR) or HxWx4 (BGRA);
- a PIL image (any mode; converted to the array form above).

``preprocess="server"`` sends encoded bytes, so arrays and PIL images are encoded to PNG here (lossless:
the server decodes exactly the same pixels). ``preprocess="client"`` needs decoded arrays, so paths and
bytes are decoded here. Anything that fails locally (unreadable file, undecodable bytes, wrong array type)
becomes that image's error, never an exception for the whole call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Files a folder is expanded to (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
ACCEPTED = "a path, encoded bytes, a uint8 NumPy array (HxW, HxWx3 BGR, HxWx4 BGRA) or a PIL image"


@dataclass
class Loaded:
    """One image ready for a request: ``blob`` (encoded) or ``array`` (decoded), or the ``error``."""

    source: str | None
    blob: bytes | None = None
    array: np.ndarray | None = None
    error: str | None = None


def _is_pil(item) -> bool:
    mod = type(item).__module__
    if not mod.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(item, Image.Image)


def source_of(item) -> str | None:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else None


def pil_to_array(im) -> np.ndarray:
    """A PIL image as a uint8 array in OpenCV channel order (grey, BGR or BGRA)."""
    if im.mode not in ("L", "RGB", "RGBA"):
        has_alpha = "A" in im.mode or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else ("L" if im.mode in ("1", "I", "I;16", "F") else "RGB"))
    a = np.asarray(im, dtype=np.uint8)
    if im.mode == "RGB":
        a = a[..., ::-1]
    elif im.mode == "RGBA":
        a = a[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(a)


def check_array(a: np.ndarray) -> np.ndarray:
    """The array as preprocessing takes it (HxWx1 squeezed); ValueError saying what is wrong otherwise."""
    if a.dtype != np.uint8:
        raise ValueError(f"array of {a.dtype}: expected uint8 (decoded pixels); for encoded bytes pass bytes")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"array of shape {a.shape}: expected HxW, HxWx3 (BGR) or HxWx4 (BGRA)")
    if a.size == 0:
        raise ValueError(f"array of shape {a.shape} is empty")
    return np.ascontiguousarray(a)


def encode_png(a: np.ndarray) -> bytes:
    """Lossless PNG of a checked array (fast compression level: the bytes only cross a socket)."""
    import cv2

    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"OpenCV could not encode an array of shape {a.shape} to PNG")
    return buf.tobytes()


def _read(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None


def load_encoded(item) -> Loaded:
    """For ``preprocess="server"``: the encoded bytes of ``item``."""
    src = source_of(item)
    try:
        if src is not None:
            return Loaded(src, blob=_read(item))
        if isinstance(item, (bytes, bytearray, memoryview)):
            return Loaded(None, blob=bytes(item))
        if isinstance(item, np.ndarray):
            return Loaded(None, blob=encode_png(check_array(item)))
        if _is_pil(item):
            return Loaded(None, blob=encode_png(check_array(pil_to_array(item))))
        return Loaded(None, error=f"unsupported input {type(item).__name__}: pass {ACCEPTED}")
    except ValueError as e:
        return Loaded(src, error=str(e))


def load_decoded(item, max_pixels: int | None = None) -> Loaded:
    """For ``preprocess="client"``: the decoded array of ``item`` (same decoder and limits as the server)."""
    from htr.preprocess import decode_images

    src = source_of(item)
    try:
        if src is not None or isinstance(item, (bytes, bytearray, memoryview)):
            blob = _read(item) if src is not None else item
            kwargs = {"max_pixels": max_pixels} if max_pixels else {}
            try:
                return Loaded(src, array=decode_images([blob], **kwargs)[0])
            except ValueError as e:
                raise ValueError(str(e).replace("image 0: ", "", 1)) from None
        if isinstance(item, np.ndarray):
            return Loaded(None, array=check_array(item))
        if _is_pil(item):
            return Loaded(None, array=check_array(pil_to_array(item)))
        return Loaded(None, error=f"unsupported input {type(item).__name__}: pass {ACCEPTED}")
    except ValueError as e:
        return Loaded(src, error=str(e))


def image_files(paths_or_dirs, recursive: bool = False) -> list[tuple[Path, str]]:
    """Expand folders to their image files (sorted); files are kept as given, even when they do not exist
    (they then fail as unreadable, on their own). Returns ``(path, name)`` where ``name`` is the path
    relative to the folder it was found in, or the file name of a path given directly: the ``FILENAME``
    a Kaggle-layout ``labels.csv`` uses."""
    out = []
    for p in map(Path, paths_or_dirs):
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            files = sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            out += [(f, f.relative_to(p).as_posix()) for f in files]
        else:
            out.append((p, p.name))
    return out
