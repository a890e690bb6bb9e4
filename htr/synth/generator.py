"""Synthetic handwritten names that look like the Kaggle form-field scans, in the Kaggle layout.

The real crops (``../shared/data/kaggle_names``) were measured before any number here was chosen:

* They are cut from a few fixed form layouts, so widths are exactly 284, 324 or 388 px and
  heights cluster per layout (324x44; 284x31; 388x36; 388x14-35; 284x45-50; 284x62-72).
  :data:`TEMPLATES` reproduces each layout with its share of the real images.
* Paper is scanned white (the median pixel is 255 in every image); the files are grey content in
  RGB JPEGs (chroma exactly 0) at quality about 94. Ink is dark (10th percentile of ink pixels:
  median 17) and thin: 2 * area / perimeter of the ink, a stroke-width estimate, is 1.1-2.0 px.
* People wrote block capitals into comb boxes that the scanner dropped out, so letters sit on a
  regular pitch of 13-17 px with wide gaps, cap height 11-20 px; many write ``I`` as a dotted
  ``i``, some add accents the label does not have (JÉRÉMY labelled JEREMY).
* Printed field labels are Arial-like: bold ``NOM :`` / ``PRENOM :`` at the left of the 388 px
  layouts, regular ``NOM`` / ``PRENOM`` above the handwriting in the 284 px ones, and text of the
  neighbouring fields (``CODE RNE / UAI``, ``NÉ(E) LE``, ``DATE DE NAISSANCE  CLASSE``) cut by the
  crop at the top or bottom edge. Box rules are rare (the boxes were dropped out), so they are rare here.

Handwriting is drawn glyph by glyph from cached signed distance fields (SDFs) of handwriting
fonts: each glyph is warped (scale, rotation, slant) straight onto the final-resolution canvas,
and the stroke is re-grown to a target pen width around the glyph's centre line by shifting the SDF
level. That gives ballpoint-like monoline strokes of any width from any font weight, in a few
OpenCV calls per glyph, fast enough to feed training on the fly.

    from htr.synth import SynthGenerator, load_names
    gen = SynthGenerator(names=load_names("names_corpus.txt"))
    image, text = gen.sample(np.random.default_rng(0))   # (H, W, 3) uint8 BGR, "CAMILLE"
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import math
import multiprocessing
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from htr.config import DEFAULT_ALPHABET, normalize_label
from htr.paths import default_data_dir

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

#: Real label lengths go up to 18 characters.
MAX_LEN = 18
FILENAME_FORMAT = "SYNTH_{:06d}.jpg"
CSV_HEADER = ("FILENAME", "IDENTITY")


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------


def default_names_path() -> Path:
    """``$HTR_DATA/names_corpus.txt``, else the shared data folder beside the checkout."""
    return default_data_dir() / "names_corpus.txt"


def load_names(path, alphabet: str = DEFAULT_ALPHABET) -> list[str]:
    """The names corpus, one transcription per line, cleaned; repeats are kept (real frequencies).

    Cleaning is :func:`htr.config.normalize_label`, the same as for the Kaggle labels: rows that are
    ``EMPTY``/``UNREADABLE``/blank are dropped, lower-case rows are upper-cased (they are names
    typed in the wrong case, not different names), accents are stripped, and rows that still hold
    a character outside ``alphabet`` or are longer than :data:`MAX_LEN` are dropped.
    """
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = normalize_label(line.rstrip("\r\n"), alphabet)
            if text is not None and len(text) <= MAX_LEN:
                names.append(text)
    return names


class _FakerNames:
    """French first and last names from Faker's ``fr_FR`` person provider, accents kept.

    Only the provider's word lists are used, and they are sampled with the caller's Generator, so
    the output does not depend on Faker's own global random state.
    """

    def __init__(self, alphabet: str):
        try:
            from faker.providers.person.fr_FR import Provider
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(f"Faker is needed for synthetic names: pip install -r {REQUIREMENTS_FILE}") from e

        def keep(words):
            return sorted({w.upper() for w in words if normalize_label(w, alphabet) and len(w) <= MAX_LEN})

        self.first = keep(Provider.first_names)
        self.last = keep(Provider.last_names)
        if not self.first or not self.last:
            raise ValueError(f"no Faker fr_FR name fits the alphabet {alphabet!r}")

    def first_name(self, rng) -> str:
        return self.first[rng.integers(len(self.first))]

    def last_name(self, rng) -> str:
        return self.last[rng.integers(len(self.last))]


# --------------------------------------------------------------------------------------------
# fonts
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# form layouts
# --------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """One crop: size, where the handwriting goes, and what else is on the paper."""

    height: int
    width: int
    x0: float  # left edge of the handwriting
    cy: float  # vertical centre of the capitals
    cap: float  # cap height of the handwriting, px
    pitch: float  # comb-box pitch, px
    printed: list  # (text, x, baseline y, cap px, bold, rotated)
    scribbles: list  # handwriting of neighbouring fields: (text, x0, cy, cap, pitch)
    left_rule: float | None = None  # x of a vertical rule along the left edge


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _digits(rng, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def _clamp_cap(rng, mean, sd, lo, hi) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _layout_plain(rng) -> _Layout:
    # 324x44: the handwriting alone, from the left edge, vertically centred.
    return _Layout(44, 324, _u(rng, 4, 11), _u(rng, 19.5, 24), _clamp_cap(rng, 14.5, 2.5, 10, 21), _u(rng, 15, 18), [], [])


def _layout_comb31(rng) -> _Layout:
    # 284x31: handwriting only, the neighbouring field's printed label sometimes cut at an edge.
    lay = _Layout(31, 284, _u(rng, 15, 22), _u(rng, 14, 18), _clamp_cap(rng, 13.5, 2, 9, 19), _u(rng, 13, 16), [], [])
    r = rng.random()
    if r < 0.3:
        lay.printed.append(("PRENOM", _u(rng, 16, 30), _u(rng, 0, 4), _u(rng, 9, 10.5), False, False))
    elif r < 0.6:
        y = lay.height + _u(rng, 6, 10)
        lay.printed.append(("NÉ(E) LE", _u(rng, 14, 26), y, _u(rng, 9, 10.5), False, False))
        lay.printed.append(("CLASSE", _u(rng, 150, 175), y, _u(rng, 9, 10.5), False, False))
        if rng.random() < 0.5:
            lay.scribbles.append((_digits(rng, 2) + " " + _digits(rng, 2), _u(rng, 70, 110), y - 4, 12.0, 14.0))
    return lay


def _left_edge(rng, lay: _Layout, p_numbers: float, p_rule: float) -> None:
    # The 388 px crops show the sheet's margin: a vertical rule and rotated printed numbers.
    if rng.random() < p_numbers:
        text = _digits(rng, 2) + (":" + _digits(rng, 1) if rng.random() < 0.6 else "")
        lay.printed.append((text, _u(rng, -3, 2), _u(rng, 0, lay.height - 4), _u(rng, 7, 8.5), True, True))
    if rng.random() < p_rule:
        lay.left_rule = _u(rng, 0, 12)


def _layout_nom36(rng) -> _Layout:
    # 388x36: bold "NOM :" at the left; above it, the bottom of "CODE RNE / UAI : 0672194W".
    label = "NOM :" if rng.random() < 0.92 else "NOM DE NAISSANCE :"
    x_label = _u(rng, 1, 12)
    baseline = _u(rng, 23, 28)
    lay = _Layout(36, 388, 0.0, baseline - 5 + _u(rng, -2, 2), _clamp_cap(rng, 14, 2.5, 9, 22), _u(rng, 14, 19),
                  [(label, x_label, baseline, _u(rng, 9.5, 11), True, False)], [])
    lay.x0 = x_label + (50 if label == "NOM :" else 140) + _u(rng, 18, 38)
    if rng.random() < 0.6:
        top = _u(rng, 0, 5)
        lay.printed.append(("CODE RNE / UAI :", x_label + _u(rng, -2, 2), top, _u(rng, 9.5, 11), True, False))
        code = _digits(rng, 7) + chr(ord("A") + int(rng.integers(26)))
        lay.scribbles.append((code, x_label + _u(rng, 120, 150), top - 6, _u(rng, 11, 15), _u(rng, 15, 19)))
    _left_edge(rng, lay, 0.35, 0.4)
    return lay


def _layout_prenom388(rng) -> _Layout:
    # 388x14-35: bold "PRENOM :" at the left, crop height varies; below, "NÉ(E) LE : ... CLASSE".
    height = int(np.clip(round(rng.normal(26, 4)), 14, 35))
    x_label = _u(rng, -4, 8)
    baseline = _u(rng, 13.5, 16)
    lay = _Layout(height, 388, x_label + _u(rng, 78, 92), baseline - 5 + _u(rng, -2, 2),
                  _clamp_cap(rng, 15, 3, 9, 22), _u(rng, 14, 19),
                  [("PRENOM :", x_label, baseline, _u(rng, 9.5, 11), True, False)], [])
    if rng.random() < 0.7:
        y = baseline + _u(rng, 19, 23)
        lay.printed.append(("NÉ(E) LE :", x_label + _u(rng, -2, 3), y, _u(rng, 9.5, 11), True, False))
        lay.printed.append(("CLASSE : 6ème", _u(rng, 255, 300), y, _u(rng, 9.5, 11), True, False))
        lay.scribbles.append((_digits(rng, 2) + " " + _digits(rng, 2) + " " + _digits(rng, 4), x_label + _u(rng, 80, 100),
                              y - 5, _u(rng, 11, 15), _u(rng, 14, 18)))
    _left_edge(rng, lay, 0.8, 0.6)
    return lay


def _layout_tall284(rng) -> _Layout:
    # 284x62-72: "PRENOM" printed above the handwriting, "DATE DE NAISSANCE  CLASSE" cut below.
    height = int(rng.integers(62, 73))
    x_label = _u(rng, 14, 30)
    lay = _Layout(height, 284, _u(rng, 28, 40), height * _u(rng, 0.6, 0.72), _clamp_cap(rng, 13, 2, 9, 19),
                  _u(rng, 12.5, 14.5), [("PRENOM", x_label, _u(rng, 13, 15.5), _u(rng, 9, 10), False, False)], [])
    y, cap = height + _u(rng, 0, 8), _u(rng, 9, 10)
    lay.printed.append(("DATE DE NAISSANCE", x_label + _u(rng, -2, 2), y, cap, False, False))
    lay.printed.append(("CLASSE", x_label + _u(rng, 140, 160), y, cap, False, False))
    return lay


def _layout_nom284(rng) -> _Layout:
    # 284x45-50: "NOM" printed above the handwriting, the bottom of a handwritten code above it.
    height = 50 if rng.random() < 0.8 else int(rng.integers(45, 50))
    x_label = _u(rng, 16, 24)
    lay = _Layout(height, 284, _u(rng, 28, 38), _u(rng, 32, 36) - (50 - height) / 2, _clamp_cap(rng, 13, 2, 9, 19),
                  _u(rng, 13, 15), [("NOM", x_label, _u(rng, 17.5, 20), _u(rng, 8.5, 10), False, False)], [])
    if rng.random() < 0.8:
        code = _digits(rng, 7) + chr(ord("A") + int(rng.integers(26)))
        lay.scribbles.append((code, _u(rng, 100, 140), _u(rng, -6, -2), _u(rng, 11, 15), _u(rng, 15, 19)))
    return lay


#: (name, layout function, share of the real crops with that geometry)
TEMPLATES = (
    ("plain324x44", _layout_plain, 0.28),
    ("comb284x31", _layout_comb31, 0.22),
    ("nom388x36", _layout_nom36, 0.17),
    ("prenom388", _layout_prenom388, 0.19),
    ("tall284", _layout_tall284, 0.08),
    ("nom284x50", _layout_nom284, 0.06),
)
_TEMPLATE_P = np.array([t[2] for t in TEMPLATES]) / sum(t[2] for t in TEMPLATES)
#: Every synthetic crop is within these bounds (the real crops' range).
HEIGHT_RANGE = (14, 72)
WIDTHS = (284, 324, 388)


# --------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------


@dataclass
class _Writer:
    """One person's hand: font, size, pen, slant and habits; constant over a crop."""

    font: _HandFont
    stroke: float  # pen width, final px
    slant: float  # shear, > 0 leans right
    aspect: float  # letter width / the font's letter width
    rot_sd: float  # per-letter rotation spread, radians
    scale_sd: float
    jitter_y: float  # per-letter baseline wobble, fraction of cap height
    comb: bool  # letters one per comb box (regular pitch) or written naturally
    gap: float  # natural writing: gap between letters, fraction of cap height


_ACCENTS = {"E": "ÉÉÈË", "A": "À", "C": "Ç", "I": "Ï"}


class SynthGenerator:
    """Synthetic scans of handwritten names, like the real Kaggle crops.

    ``names``: label strings drawn with their frequencies (repeats = weight), e.g. from
    :func:`load_names`; None or empty uses Faker names only. ``faker_ratio``: share of samples taking
    a Faker ``fr_FR`` name instead. ``fonts``: handwriting font files, default the installed
    :data:`HANDWRITING_FONTS`. ``seed`` seeds the Generator used when a call passes none; pass your
    own ``numpy.random.Generator`` (one per thread or worker) for reproducible, thread-safe output:
    every random draw comes from it.
    """

    def __init__(self, alphabet: str = DEFAULT_ALPHABET, names: Sequence[str] | None = None,
                 faker_ratio: float = 0.3, seed: int = 0, fonts: Sequence[str | Path] | None = None):
        if not 0.0 <= faker_ratio <= 1.0:
            raise ValueError(f"faker_ratio must be in [0, 1], got {faker_ratio}")
        self.alphabet = alphabet
        self.names = [t for t in (normalize_label(n, alphabet) for n in names or ()) if t and len(t) <= MAX_LEN]
        self.faker_ratio = faker_ratio if self.names else 1.0
        self._faker = _FakerNames(alphabet) if self.faker_ratio > 0 else None
        hand, label = find_fonts()
        paths = [Path(f) for f in fonts] if fonts is not None else hand
        if not paths:
            raise RuntimeError(
                "no handwriting fonts found: install them with "
                f"`pip install -r {REQUIREMENTS_FILE}` (fontpkg-* packages), or pass fonts=[...]"
            )
        self.fonts = [_HandFont(p) for p in paths]
        if label is None:
            warnings.warn(f"printed-label font fontpkg-{LABEL_FONT[0]} not installed (see {REQUIREMENTS_FILE}); "
                          "using PIL's default font", stacklevel=2)
        self._print = _PrintFont(label)
        self._rng = np.random.default_rng(seed)

    # ---- text -------------------------------------------------------------------------------

    def sample_text(self, rng: np.random.Generator | None = None) -> str:
        """A name as written (accents possible); its label is ``normalize_label(result)``."""
        rng = self._rng if rng is None else rng
        for _ in range(20):
            text = self._draw_text(rng)
            label = normalize_label(text, self.alphabet)
            if label is not None and len(label) <= MAX_LEN:
                return text
        raise RuntimeError(f"no name fits the alphabet {self.alphabet!r} within {MAX_LEN} characters")

    def _draw_text(self, rng) -> str:
        use_faker = self._faker is not None and rng.random() < self.faker_ratio
        r = rng.random()
        if use_faker:
            if r < 0.45:
                return self._faker.first_name(rng)
            if r < 0.90:
                return self._faker.last_name(rng)
            if r < 0.95:  # compound first name, e.g. JEAN-MICHEL
                return f"{self._faker.first_name(rng)}-{self._faker.first_name(rng)}"
            return f"{self._faker.last_name(rng)} {self._faker.last_name(rng)}"
        name = self.names[rng.integers(len(self.names))]
        if r < 0.03:
            name = f"{name}-{self.names[rng.integers(len(self.names))]}"
        elif r < 0.05:
            name = f"{name} {self.names[rng.integers(len(self.names))]}"
        return name

    # ---- public API -------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
        """(image (H, W, 3) uint8 BGR, its label) for a random name."""
        rng = self._rng if rng is None else rng
        text = self.sample_text(rng)
        return self.render(text, rng), normalize_label(text, self.alphabet)

    def render(self, text: str, rng: np.random.Generator | None = None) -> np.ndarray:
        """``text`` handwritten in a random font with the scan look, JPEG artefacts included.

        ``text`` may carry accents or lower case (it is drawn as given); its label is
        ``normalize_label(text)``, which must exist.
        """
        gray, quality = self.render_gray(text, rng)
        ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)

    def render_gray(self, text: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """(grey (H, W) uint8 image before JPEG compression, the JPEG quality to save it at)."""
        rng = self._rng if rng is None else rng
        label = normalize_label(text, self.alphabet)
        if label is None:
            raise ValueError(f"{text!r} does not normalise to a label in the alphabet {self.alphabet!r}")
        written = self._habits(text.upper(), rng)
        writer = self._writer(written, rng)
        if writer is None:  # the habits asked for a glyph no font has
            written = label
            writer = self._writer(written, rng)
            if writer is None:
                raise ValueError(f"no installed font has every glyph of {label!r}")
        t = int(rng.choice(len(TEMPLATES), p=_TEMPLATE_P))
        lay = TEMPLATES[t][1](rng)
        return self._compose(written, writer, lay, rng)

    # ---- internals --------------------------------------------------------------------------

    def _habits(self, text: str, rng) -> str:
        """How people wrote the label: dotted lower-case i, an accent the label lacks, Title case."""
        chars = list(text)
        if rng.random() < 0.25:
            chars = ["i" if c == "I" and rng.random() < 0.9 else c for c in chars]
        if rng.random() < 0.12:
            chars = [_ACCENTS[c][rng.integers(len(_ACCENTS[c]))] if c in _ACCENTS and rng.random() < 0.35 else c
                     for c in chars]
        if rng.random() < 0.03 and len(chars) > 1:
            chars = chars[:1] + [c.lower() for c in chars[1:]]
        return "".join(chars)

    def _writer(self, written: str, rng) -> _Writer | None:
        order = rng.permutation(len(self.fonts))
        font = next((self.fonts[i] for i in order if self.fonts[i].supports(written)), None)
        if font is None:
            return None
        r = rng.random()
        stroke = _u(rng, 0.95, 1.45) if r < 0.8 else _u(rng, 1.45, 2.0) if r < 0.95 else _u(rng, 2.0, 2.6)
        return _Writer(
            font=font,
            stroke=stroke,
            slant=float(rng.normal(0.05, 0.12)),
            aspect=float(np.exp(rng.normal(0.0, 0.12))),
            rot_sd=math.radians(_u(rng, 0.5, 5.0)),
            scale_sd=_u(rng, 0.02, 0.09),
            jitter_y=_u(rng, 0.0, 0.08),
            comb=rng.random() < 0.85,
            gap=_u(rng, 0.2, 0.6),
        )

    def _write(self, sdf: np.ndarray, text: str, w: _Writer, x0: float, x_max: float, cy: float,
               cap: float, pitch: float, rng) -> None:
        """Draw ``text`` into the SDF canvas ``sdf`` (final px, > 0 outside the ink) in place."""
        font = w.font
        glyphs = [None if c == " " else font.glyph(c) for c in text]
        n = len(text)
        scales = np.clip(rng.normal(1.0, w.scale_sd, n), 0.75, 1.3)
        angles = rng.normal(0.0, w.rot_sd, n)
        dy = rng.normal(0.0, w.jitter_y, n)
        dx = rng.normal(0.0, 0.06, n)
        aspects = w.aspect * np.exp(rng.normal(0.0, 0.06, n))
        slope = rng.normal(0.0, 0.015)
        k0 = cap / font.cap_height
        # horizontal layout: comb boxes on a fixed pitch, or natural spacing from glyph widths
        ink = [k0 * s * r * (g.x_hi - g.x_lo) for g, s, r in zip(glyphs, scales, aspects) if g is not None]
        if w.comb:
            # big or wide letters do not overlap: the writer spaces them, whatever the boxes say
            if ink:
                pitch = max(pitch, float(np.median(ink)) + _u(rng, 0.15, 0.35) * cap)
            widths = np.array([pitch * (_u(rng, 1.0, 1.5) if g is None else 1.0) for g in glyphs])
        else:
            widths = np.array([cap * _u(rng, 0.5, 0.9) if g is None else k0 * s * r * (g.x_hi - g.x_lo) + w.gap * cap
                               for g, s, r in zip(glyphs, scales, aspects)])
        total = widths.sum()
        fit = min(1.0, (x_max - x0) / max(total, 1e-6))
        k0 *= fit  # too long for the field: smaller letters, closer together
        widths *= fit
        cap_px = k0 * font.cap_height
        lefts = x0 + np.concatenate([[0.0], np.cumsum(widths)[:-1]])
        for i, g in enumerate(glyphs):
            if g is None:
                continue
            k = k0 * scales[i]
            cx = lefts[i] + widths[i] / 2 + dx[i] * widths[i]
            cyi = cy + dy[i] * cap_px + slope * (cx - x0)
            a, s = angles[i], w.slant
            ca, sa = math.cos(a), math.sin(a)
            # A = k * R(a) @ [[1, -s], [0, 1]] @ diag(aspect, 1) maps glyph (u, v) offsets to canvas offsets
            A = k * np.array([[ca, -ca * s - sa], [sa, -sa * s + ca]]) * np.array([aspects[i], 1.0])
            centre = np.array([(g.x_lo + g.x_hi) / 2, -font.cap_height / 2])  # cap-box centre, glyph coords
            t = np.array([cx, cyi]) - A @ (centre + np.array(g.origin))
            self._stamp(sdf, g, A, t, k, w.stroke / 2 - k * font.stroke / 2)

    @staticmethod
    def _stamp(sdf: np.ndarray, g: _Glyph, A: np.ndarray, t: np.ndarray, k: float, grow: float) -> None:
        gh, gw = g.sdf.shape
        corners = A @ np.array([[0, gw, 0, gw], [0, 0, gh, gh]], dtype=np.float64) + t[:, None]
        x_lo = max(int(math.floor(corners[0].min())), 0)
        y_lo = max(int(math.floor(corners[1].min())), 0)
        x_hi = min(int(math.ceil(corners[0].max())) + 1, sdf.shape[1])
        y_hi = min(int(math.ceil(corners[1].max())) + 1, sdf.shape[0])
        if x_hi <= x_lo or y_hi <= y_lo:
            return
        M = np.hstack([A, (t - np.array([x_lo, y_lo]))[:, None]])
        patch = cv2.warpAffine(g.sdf, M, (x_hi - x_lo, y_hi - y_lo), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=_HandFont.PAD)
        patch *= k
        patch -= grow
        region = sdf[y_lo:y_hi, x_lo:x_hi]
        np.minimum(region, patch, out=region)

    @staticmethod
    def _paste(layer: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
        h, w = mask.shape
        H, W = layer.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            region = layer[y0:y1, x0:x1]
            np.maximum(region, mask[y0 - y:y1 - y, x0 - x:x1 - x], out=region)

    def _smooth_field(self, rng, H: int, W: int, cells: int) -> np.ndarray:
        """Low-frequency noise, about N(0, 1), of shape (H, W)."""
        small = rng.normal(0.0, 1.0, (3, max(2, W // cells))).astype(np.float32)
        return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)

    def _compose(self, written: str, w: _Writer, lay: _Layout, rng) -> tuple[np.ndarray, int]:
        H, W = lay.height, lay.width
        # handwriting as one SDF canvas; 100 = far from any stroke
        sdf = np.full((H, W), 100.0, np.float32)
        self._write(sdf, written, w, lay.x0, W - _u(rng, 5, 14), lay.cy, lay.cap, lay.pitch, rng)
        for text, x0, cy, cap, pitch in lay.scribbles:  # neighbouring fields, same writer
            self._write(sdf, text, w, x0, W - 2, cy, cap, pitch, rng)
        if rng.random() < 0.7:  # elastic wobble of the strokes
            amp = _u(rng, 0.3, 1.2)
            gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
            gx += amp * self._smooth_field(rng, H, W, 14)
            gy += amp * self._smooth_field(rng, H, W, 14)
            sdf = cv2.remap(sdf, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=100.0)
        edge = _u(rng, 0.7, 1.3)  # anti-aliasing width of the stroke edge, px
        hand = np.clip(0.5 - sdf / edge, 0.0, 1.0)
        if rng.random() < 0.3:  # uneven pen pressure
            hand *= np.clip(1.0 - _u(rng, 0.05, 0.25) * np.abs(self._smooth_field(rng, H, W, 30)), 0.5, 1.0)

        # printed form text, rules and specks
        printed = np.zeros((H, W), np.float32)
        for text, x, y, cap, bold, rotated in lay.printed:
            mask, ox, oy = self._print.mask(text, cap, bold)
            if rotated:
                mask = np.rot90(mask)
                self._paste(printed, mask, int(round(x)), int(round(y)))
            else:
                self._paste(printed, mask, int(round(x)) - ox, int(round(y)) - oy)
        rules = np.zeros((H, W), np.uint8)
        if lay.left_rule is not None:
            cv2.line(rules, (int(lay.left_rule), 0), (int(lay.left_rule), H), 255, 1)
        r = rng.random()
        if r < 0.04:  # underline the handwriting sits on (letters may cross it)
            y = int(lay.cy + lay.cap * _u(rng, 0.35, 0.8))
            cv2.line(rules, (int(lay.x0 - _u(rng, 0, 20)), y), (W, y + int(rng.integers(-1, 2))), 255, 1, cv2.LINE_AA)
        elif r < 0.06:  # a box around the field
            top, bot = int(lay.cy - lay.cap * _u(rng, 0.8, 1.3)), int(lay.cy + lay.cap * _u(rng, 0.7, 1.2))
            cv2.rectangle(rules, (int(lay.x0 - _u(rng, 3, 10)), top), (W - int(rng.integers(1, 6)), bot), 255, 1)
        elif r < 0.08:  # comb-box ticks that survived the drop-out
            y = int(lay.cy + lay.cap * _u(rng, 0.6, 0.9))
            for x in np.arange(lay.x0, W, lay.pitch):
                cv2.line(rules, (int(x), y - int(rng.integers(2, 6))), (int(x), y), 255, 1)
            cv2.line(rules, (int(lay.x0), y), (W, y), 255, 1)
        np.maximum(printed, rules.astype(np.float32) * (_u(rng, 0.3, 1.0) / 255.0), out=printed)
        for _ in range(int(rng.poisson(0.6))):  # dust and stray pen marks
            cv2.circle(printed, (int(rng.integers(W)), int(rng.integers(H))), int(rng.integers(0, 2)),
                       _u(rng, 0.3, 1.0), -1)

        # paper, ink and scanner: the scans are levelled to white paper and near-black ink
        base = _u(rng, 250, 275) if rng.random() < 0.97 else _u(rng, 215, 250)
        paper = np.full((H, W), base, np.float32)
        if rng.random() < 0.3:
            paper += _u(rng, -8, 8) * np.linspace(-1.0, 1.0, W, dtype=np.float32)[None, :]
        light_pen = rng.random() < 0.05  # a pale pen (or pencil) that the scanner did not darken
        pen = _u(rng, 0.6, 0.85) if light_pen else _u(rng, 0.85, 1.0)  # blue ink reads as dark grey
        img = paper * (1.0 - pen * hand) * (1.0 - _u(rng, 0.85, 1.0) * printed)
        if rng.random() < 0.5:
            img = cv2.GaussianBlur(img, (0, 0), _u(rng, 0.3, 0.6))
        if rng.random() < 0.2:  # scanned at a lower resolution
            f = _u(rng, 0.7, 0.95)
            small = cv2.resize(img, (max(1, int(W * f)), max(1, int(H * f))), interpolation=cv2.INTER_AREA)
            img = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
        # the scanner's black and white points; thin strokes still come out near black in the real
        # scans, so the black point follows the darkest ink like an auto-levels step
        lo, hi = _u(rng, 10, 60), _u(rng, 205, 250)
        if not light_pen:
            lo = max(lo, float(np.percentile(img, 0.5)) * _u(rng, 0.7, 1.0))
        lo = min(lo, hi - 60)
        img = (img - lo) * (255.0 / (hi - lo))
        noise = _u(rng, 0.0, 3.0)
        if noise > 0.5:
            img += rng.normal(0.0, noise, (H, W)).astype(np.float32)
        gray = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        quality = int(rng.integers(85, 98))  # the real files are about quality 94
        return gray, quality


# --------------------------------------------------------------------------------------------
# dataset writer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    count: int
    out_dir: Path
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


_WORKER: dict = {}


def _init_worker(kwargs: dict, images: str) -> None:
    _WORKER["gen"] = SynthGenerator(**kwargs)
    _WORKER["images"] = Path(images)


def _make_one(job: tuple[int, int]) -> tuple[int, str]:
    """Write image number ``index`` (1-based); its Generator is seeded by (seed, index) alone."""
    seed, index = job
    gen: SynthGenerator = _WORKER["gen"]
    rng = np.random.default_rng([seed, index])
    text = gen.sample_text(rng)
    gray, quality = gen.render_gray(text, rng)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)  # the real files are RGB JPEGs of grey content
    name = FILENAME_FORMAT.format(index)
    if not cv2.imwrite(str(_WORKER["images"] / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {_WORKER['images'] / name}")
    return index, normalize_label(text, gen.alphabet)


def _resolve_names(names_path) -> list[str]:
    path = Path(names_path) if names_path is not None else default_names_path()
    if path.is_file():
        return load_names(path)
    if names_path is not None:
        raise FileNotFoundError(f"names corpus not found: {path}")
    print(f"htr synth: names corpus not found at {path} (set HTR_DATA or pass --names); "
          "using Faker fr_FR names only", file=sys.stderr)
    return []


def write_dataset(out_dir, count: int, seed: int = 0, names_path=None, faker_ratio: float = 0.3,
                  workers: int = 1, progress: bool = True) -> SynthSummary:
    """Write ``count`` synthetic crops in the Kaggle layout and return a summary.

    ``out_dir/images/SYNTH_000001.jpg ...`` and ``out_dir/labels.csv`` (``FILENAME,IDENTITY``,
    FILENAME relative to ``out_dir/images``). Image ``i`` depends only on ``(seed, i)``, so the
    output is the same for any ``workers``. ``names_path`` None uses :func:`default_names_path`,
    falling back to Faker names (with a message) when that file is absent.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    kwargs = dict(names=_resolve_names(names_path), faker_ratio=faker_ratio, seed=seed)
    jobs = [(seed, i) for i in range(1, count + 1)]
    labels: dict[int, str] = {}
    start = time.perf_counter()
    with tqdm(total=count, disable=not progress, unit="img", desc="synth") as bar:
        if workers <= 1:
            _init_worker(kwargs, str(images))
            results = map(_make_one, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (kwargs, str(images)))
            results = pool.imap_unordered(_make_one, jobs, chunksize=32)
        try:
            for index, label in results:
                labels[index] = label
                bar.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            _WORKER.clear()
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(CSV_HEADER)
        for i in range(1, count + 1):
            out.writerow((FILENAME_FORMAT.format(i), labels[i]))
    return SynthSummary(count, out_dir, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

_EXAMPLE = """\
example:
  htr synth --out data/synth --count 50000 --workers 2
  # -> data/synth/images/SYNTH_000001.jpg ... and data/synth/labels.csv (FILENAME,IDENTITY),
  #    the same layout as the Kaggle folder, so every tool that reads one reads the other.
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic handwriting in the Kaggle layout",
        description=(
            "Render synthetic scans of handwritten names that look like the real form-field crops\n"
            "(layouts, printed labels, pen strokes, paper and JPEG measured on them), drawn from the\n"
            "names corpus with its real frequencies plus Faker fr_FR names. Each image depends only\n"
            "on (--seed, its index), so any --workers gives the same files.\n\n" + _EXAMPLE
        ),
        formatter_class=formatter_class,
    )
    p.add_argument("--out", required=True, type=Path, default=argparse.SUPPRESS,
                   help="output folder (images/ and labels.csv go inside)")
    p.add_argument("--count", required=True, type=int, default=argparse.SUPPRESS, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--names", type=Path, default=default_names_path(),
                   help="names corpus, one transcription per line ($HTR_DATA/names_corpus.txt when set); "
                        "if the default is absent, Faker names only")
    p.add_argument("--faker-ratio", type=float, default=0.3, help="share of names taken from Faker fr_FR")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    names = args.names if args.names != default_names_path() else None  # None: fall back if absent
    if args.count < 0 or args.workers < 1:
        print(f"htr synth: need --count >= 0 and --workers >= 1, got {args.count} and {args.workers}", file=sys.stderr)
        return 2
    try:
        summary = write_dataset(args.out, args.count, seed=args.seed, names_path=names,
                                faker_ratio=args.faker_ratio, workers=args.workers, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"htr synth: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary.count} images to {summary.out_dir / 'images'} and {summary.out_dir / 'labels.csv'} "
          f"in {summary.seconds:.1f} s ({summary.images_per_s:.0f} images/s, {args.workers} worker(s))")
    return 0
