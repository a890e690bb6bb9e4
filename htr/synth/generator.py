"""The image generator: a name handwritten into a form layout, then printed text, paper, ink and scan.

Handwriting is drawn glyph by glyph from cached signed distance fields (SDFs) of handwriting
fonts: each glyph is warped (scale, rotation, slant) straight onto the final-resolution canvas,
and the stroke is re-grown to a target pen width around the glyph's centre line by shifting the SDF
level. That gives ballpoint-like monoline strokes of any width from any font weight, in a few
OpenCV calls per glyph, fast enough to feed training on the fly.
The writer (:class:`_Writer`: font, pen, slant, habits) is drawn once per crop; every random draw
comes from the Generator the caller passes, so an image depends only on it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from htr.config import DEFAULT_ALPHABET, normalize_label
from htr.synth.fonts import LABEL_FONT, REQUIREMENTS_FILE, _Glyph, _HandFont, _PrintFont, find_fonts
from htr.synth.layouts import _TEMPLATE_P, TEMPLATES, _Layout, _u
from htr.synth.names import MAX_LEN, _FakerNames


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
    every random draw comes from it. ``blank_ratio``: share of :meth:`sample` calls that return a blank
    field (the form's printed text and rules, nothing written; label ``""``), as forms have.
    """

    def __init__(self, alphabet: str = DEFAULT_ALPHABET, names: Sequence[str] | None = None,
                 faker_ratio: float = 0.3, seed: int = 0, fonts: Sequence[str | Path] | None = None,
                 blank_ratio: float = 0.0):
        if not 0.0 <= faker_ratio <= 1.0:
            raise ValueError(f"faker_ratio must be in [0, 1], got {faker_ratio}")
        if not 0.0 <= blank_ratio <= 1.0:
            raise ValueError(f"blank_ratio must be in [0, 1], got {blank_ratio}")
        self.blank_ratio = blank_ratio
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
        """(image (H, W, 3) uint8 BGR, its label) for a random name, or a blank field (label ``""``)."""
        rng = self._rng if rng is None else rng
        if self.blank_ratio and rng.random() < self.blank_ratio:
            return self.render_blank(rng), ""
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

    def render_blank(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """A blank form field: one of the layouts with its printed text, rules, specks and neighbouring
        fields' strokes, but nothing written in it (what an ``EMPTY`` row of the Kaggle CSVs shows)."""
        rng = self._rng if rng is None else rng
        writer = self._writer("A", rng)  # draws the neighbouring fields' scribbles, if the layout has any
        lay = TEMPLATES[int(rng.choice(len(TEMPLATES), p=_TEMPLATE_P))][1](rng)
        gray, quality = self._compose("", writer, lay, rng)
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
