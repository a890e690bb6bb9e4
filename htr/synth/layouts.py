"""The form layouts the real crops were cut from, one function per layout, sampled by real share.

Each ``_layout_*`` function draws one crop's geometry (:class:`_Layout`): its size, where and how big
the handwriting goes, the printed labels and the neighbouring fields' handwriting that the crop cuts
at its edges. :data:`TEMPLATES` lists them with their share of the real images; every crop is
:data:`WIDTHS` wide and within :data:`HEIGHT_RANGE` high, like the Kaggle scans.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

