"""The fonts the crops are drawn with, found through their installed ``fontpkg-*`` PyPI packages.

Handwriting fonts (:data:`HANDWRITING_FONTS`) are cached glyph by glyph as signed distance fields
(:class:`_HandFont`), so the generator can warp each glyph onto the canvas and re-grow its stroke to
any pen width; the printed form text (:data:`LABEL_FONT`, Arial-like Arimo) is cached as alpha masks
per text, size and weight (:class:`_PrintFont`). The caches hold no randomness and are thread safe.
All of them are pinned in :data:`REQUIREMENTS_FILE`.
"""
from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: The synthetic-data extras (fonts and Faker), pinned; named in every "not installed" message.
REQUIREMENTS_FILE = "requirements-fonts.txt"

#: Handwriting fonts (fontpkg slug, file stem or None for the package's only upright file), chosen
#: for upper-case glyphs that look like hand-printed block capitals. Weight does not matter: the
#: stroke is re-grown to a sampled pen width (see :class:`_HandFont`).
HANDWRITING_FONTS: tuple[tuple[str, str | None], ...] = (
    ("caveat", None),
    ("kalam", "Kalam-Regular"),
    ("indie-flower", None),
    ("shadows-into-light", None),
    ("permanent-marker", None),
    ("zeyada", None),
    ("delius", None),
    ("quicksand", None),
    ("comfortaa", None),
    ("josefin-sans", "JosefinSans[wght]"),
    ("varela-round", None),
    ("fredoka", None),
    ("news-cycle", "NewsCycle-Regular"),
    ("yanone-kaffeesatz", None),
    ("smooch-sans", None),
)
#: The printed form text is Arial-like; Arimo is metric-compatible with Arial.
LABEL_FONT: tuple[str, str | None] = ("arimo", "Arimo[wght]")


def _font_file(slug: str, stem: str | None) -> Path | None:
    """The .ttf/.otf installed by PyPI package ``fontpkg-<slug>``, found through its RECORD."""
    try:
        dist = importlib.metadata.distribution(f"fontpkg-{slug}")
    except importlib.metadata.PackageNotFoundError:
        return None
    files = sorted(
        (f for f in dist.files or () if f.suffix.lower() in (".ttf", ".otf")),
        key=lambda f: ("italic" in f.stem.lower(), str(f)),
    )
    for f in files:
        if stem is None or f.stem == stem:
            path = Path(f.locate())
            if path.is_file():
                return path
    return None


def find_fonts() -> tuple[list[Path], Path | None]:
    """(installed handwriting font files, the printed-label font file or None)."""
    hand = [p for p in (_font_file(s, stem) for s, stem in HANDWRITING_FONTS) if p is not None]
    return hand, _font_file(*LABEL_FONT)


def _truetype(path, size: int, weight: float | None = None) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(str(path), size)
    try:
        axes = font.get_variation_axes()
    except (OSError, AttributeError):  # not a variable font
        return font
    values = []
    for ax in axes:
        lo, hi, default = ax["minimum"], ax["maximum"], ax["default"]
        if ax["name"] in (b"Weight", "Weight") and weight is not None:
            values.append(min(max(weight, lo), hi))
        else:
            values.append(default)
    font.set_variation_by_axes(values)
    return font


@dataclass(frozen=True)
class _Glyph:
    sdf: np.ndarray  # (h, w) float32 signed distance to the outline in cache px, > 0 outside
    origin: tuple[float, float]  # baseline-left point of the glyph in ``sdf`` coordinates
    x_lo: float  # ink extent left/right of the origin, cache px
    x_hi: float


class _HandFont:
    """A handwriting font whose glyphs are cached as signed distance fields at :attr:`SIZE` px.

    Cached lazily under a lock (thread safe); the cache holds no randomness, so results depend only
    on the Generator passed to the renderer.
    """

    SIZE = 64  # em size of the cached glyphs
    PAD = 12  # SDF margin around each glyph, cache px; bounds how far a stroke can grow

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.stem
        self._font = _truetype(path, self.SIZE, weight=450)
        self._lock = threading.Lock()
        self._glyphs: dict[str, _Glyph | None] = {}
        self._notdef = self._mask("\ue000")[0]  # what the font draws for a character it lacks
        h = self.glyph("H")
        if h is None:
            raise ValueError(f"{self.path} has no 'H'")
        inside = h.sdf < 0
        self.cap_height = float(inside.any(axis=1).sum())
        masks = [g.sdf < 0 for g in (self.glyph(c) for c in "HIL") if g is not None]
        area = sum(int(m.sum()) for m in masks)
        perim = sum(
            sum(cv2.arcLength(c, True) for c in cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)[0])
            for m in masks
        )
        self.stroke = 2.0 * area / max(perim, 1.0)  # font's own stroke width, cache px

    def _mask(self, ch: str):
        left, top, right, bottom = self._font.getbbox(ch, anchor="ls")
        p = self.PAD
        img = Image.new("L", (right - left + 2 * p, bottom - top + 2 * p), 0)
        ImageDraw.Draw(img).text((p - left, p - top), ch, font=self._font, fill=255, anchor="ls")
        return np.asarray(img) > 127, (p - left, p - top)

    def glyph(self, ch: str) -> _Glyph | None:
        """The glyph of ``ch``, or None when the font lacks it (draws nothing or its .notdef box)."""
        try:
            return self._glyphs[ch]
        except KeyError:
            pass
        with self._lock:
            if ch not in self._glyphs:
                self._glyphs[ch] = self._make(ch)
            return self._glyphs[ch]

    def _make(self, ch: str) -> _Glyph | None:
        mask, origin = self._mask(ch)
        if not mask.any() or (mask.shape == self._notdef.shape and np.array_equal(mask, self._notdef)):
            return None
        m8 = mask.astype(np.uint8)
        outside = cv2.distanceTransform(1 - m8, cv2.DIST_L2, 5)
        inside = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
        sdf = np.where(mask, 0.5 - inside, outside - 0.5).astype(np.float32)
        np.clip(sdf, -self.PAD, self.PAD, out=sdf)
        cols = np.flatnonzero(mask.any(axis=0))
        return _Glyph(sdf, (float(origin[0]), float(origin[1])), cols[0] - origin[0], cols[-1] + 1 - origin[0])

    def supports(self, text: str) -> bool:
        return all(c == " " or self.glyph(c) is not None for c in text)


class _PrintFont:
    """The printed form text (regular or bold Arimo), cached as alpha masks per (text, size, bold)."""

    CAP = 0.716  # Arimo's cap height per em

    def __init__(self, path: Path | None):
        self.path = path
        self._fonts: dict[tuple[int, bool], ImageFont.FreeTypeFont] = {}
        self._masks: dict[tuple[str, int, bool], tuple[np.ndarray, int, int]] = {}
        self._lock = threading.Lock()

    def mask(self, text: str, cap: float, bold: bool):
        """(alpha float32 (h, w), x, y of the baseline-left origin in it) for ``text`` at cap height ``cap`` px."""
        size = max(6, int(round(cap / self.CAP)))
        key = (text, size, bold)
        hit = self._masks.get(key)
        if hit is not None:
            return hit
        with self._lock:
            font = self._fonts.get((size, bold))
            if font is None:
                if self.path is not None:
                    font = _truetype(self.path, size, weight=700 if bold else 400)
                else:
                    font = ImageFont.load_default(size)
                self._fonts[(size, bold)] = font
            left, top, right, bottom = font.getbbox(text, anchor="ls")
            img = Image.new("L", (right - left + 2, bottom - top + 2), 0)
            ImageDraw.Draw(img).text((1 - left, 1 - top), text, font=font, fill=255, anchor="ls")
            hit = (np.asarray(img, dtype=np.float32) / 255.0, 1 - left, 1 - top)
            self._masks[key] = hit
            return hit
