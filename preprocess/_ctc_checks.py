"""Argument checks shared by the CTC kernel wrapper (``ctc.py``) and the NumPy reference (``reference/ctc.py``).

Both paths call :func:`check_greedy_args` / :func:`check_beam_args` once and hand the normalised tuple
to their implementation, so they accept and reject exactly the same inputs with the same messages.
Non-finite log-probabilities are the one check left to the implementations (the kernel finds them
while it scans, without a separate pass); both report them through :func:`nonfinite_error`.
"""
from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np

from ._checks import check_threads
from ._lexicon import Lexicon, alphabet_string
from ._namelm import NameModel, check_weight

#: Characters with a log-probability below this are not tried as beam extensions (unless the frame's argmax).
DEFAULT_PRUNE_LOGP = -12.0
#: Defaults of the name model and soft lexicon terms of ``ctc_beam_decode`` (natural-log units).
DEFAULT_LM_WEIGHT = 0.5
DEFAULT_INSERTION_BONUS = 0.0
DEFAULT_LEXICON_BONUS = 2.0
LEXICON_MODES = ("hard", "soft")


def check_logprobs(logprobs) -> np.ndarray:
    """-> C-contiguous float32 ``(N, T, C)``; other float dtypes are converted (one copy)."""
    arr = np.asarray(logprobs)
    if arr.ndim != 3:
        raise ValueError(f"logprobs must be 3-D (N, T, C), got {arr.ndim}-D with shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"logprobs must hold floats (log-probabilities), got dtype {arr.dtype}")
    if arr.shape[2] < 1:
        raise ValueError(f"logprobs must have at least one class (the blank), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_blank(blank, n_classes: int) -> int:
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or not 0 <= blank < n_classes:
        raise ValueError(f"blank must be an int in [0, C-1] = [0, {n_classes - 1}], got {blank!r}")
    return int(blank)


@lru_cache(maxsize=64)
def _codepoints(alphabet: str, blank: int) -> np.ndarray:
    cps = np.fromiter(map(ord, alphabet), np.uint32, len(alphabet))
    cps = np.insert(cps, blank, 0)  # (C,): class index -> code point; the blank's slot is unused
    cps.flags.writeable = False
    return cps


def class_codepoints(alphabet, n_classes: int, blank: int) -> tuple[np.ndarray, str]:
    """-> (uint32 ``(C,)`` code point per class, alphabet as a str)."""
    alphabet = alphabet_string(alphabet)
    if len(alphabet) != n_classes - 1:
        raise ValueError(
            f"alphabet has {len(alphabet)} characters but logprobs has C = {n_classes} classes: "
            f"expected C-1 = {n_classes - 1} (one per non-blank class)"
        )
    return _codepoints(alphabet, blank), alphabet


def check_lengths(lengths, n: int, t: int) -> np.ndarray:
    """-> int64 ``(N,)`` valid frames per item, each in [0, T]; None means T for every item."""
    if lengths is None:
        return np.full(n, t, np.int64)
    arr = np.asarray(lengths)
    if arr.shape != (n,):
        raise ValueError(f"lengths must have shape (N,) = ({n},), got {arr.shape}")
    if n and arr.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64) if n else np.zeros(0, np.int64)
    bad = np.flatnonzero((arr < 0) | (arr > t))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"lengths[{i}] = {int(arr[i])} is outside [0, T] = [0, {t}]")
    return arr


def check_beam_width(beam_width) -> int:
    if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) or beam_width < 1:
        raise ValueError(f"beam_width must be an int >= 1, got {beam_width!r}")
    if beam_width > 1_000_000:
        raise ValueError(f"beam_width must be at most 1000000, got {beam_width}")
    return int(beam_width)


def check_prune_logp(prune_logp) -> float:
    if isinstance(prune_logp, bool) or not isinstance(prune_logp, numbers.Real) or math.isnan(prune_logp):
        raise ValueError(f"prune_logp must be a real number (a log-probability threshold), got {prune_logp!r}")
    return float(prune_logp)


def resolve_lexicon(lexicon, alphabet: str, blank: int) -> Lexicon | None:
    """A :class:`Lexicon` built for this alphabet and blank; an iterable of words is compiled here."""
    if lexicon is None:
        return None
    if isinstance(lexicon, Lexicon):
        if lexicon.alphabet != alphabet or lexicon.blank != blank:
            raise ValueError(
                f"lexicon was built for alphabet {lexicon.alphabet!r} with blank={lexicon.blank}, "
                f"but this call uses alphabet {alphabet!r} with blank={blank}"
            )
        return lexicon
    return Lexicon(lexicon, alphabet, blank)


def check_greedy_args(logprobs, alphabet, blank=0, lengths=None, threads=1):
    """-> (logprobs float32 (N, T, C), codepoints uint32 (C,), blank, lengths int64 (N,), threads)."""
    arr = check_logprobs(logprobs)
    n, t, c = arr.shape
    blank = check_blank(blank, c)
    codepoints, _ = class_codepoints(alphabet, c, blank)
    return arr, codepoints, blank, check_lengths(lengths, n, t), check_threads(threads)


def resolve_name_model(name_model, alphabet: str) -> NameModel | None:
    """The :class:`NameModel`, checked to be trained over this alphabet."""
    if name_model is None:
        return None
    if not isinstance(name_model, NameModel):
        raise ValueError(f"name_model must be a NameModel (NameModel.load(path) reads a saved one), "
                         f"got {type(name_model).__name__}")
    if name_model.alphabet != alphabet:
        raise ValueError(f"name_model was trained over the alphabet {name_model.alphabet!r}, "
                         f"but this call uses alphabet {alphabet!r}")
    return name_model


def check_lexicon_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in LEXICON_MODES:
        raise ValueError(f"lexicon_mode must be 'hard' or 'soft', got {mode!r}")
    return mode


def check_beam_args(
    logprobs, alphabet, beam_width=10, lexicon=None, blank=0, lengths=None, threads=1, prune_logp=DEFAULT_PRUNE_LOGP,
    name_model=None, lm_weight=DEFAULT_LM_WEIGHT, insertion_bonus=DEFAULT_INSERTION_BONUS, lexicon_mode="hard",
    lexicon_bonus=DEFAULT_LEXICON_BONUS,
):
    """-> greedy's tuple + (beam_width, prune_logp, Lexicon or None, NameModel or None, lm_weight,
    insertion_bonus, lexicon_mode, lexicon_bonus)."""
    arr = check_logprobs(logprobs)
    n, t, c = arr.shape
    blank = check_blank(blank, c)
    codepoints, alphabet = class_codepoints(alphabet, c, blank)
    lengths = check_lengths(lengths, n, t)
    threads = check_threads(threads)
    beam_width = check_beam_width(beam_width)
    prune_logp = check_prune_logp(prune_logp)
    lexicon = resolve_lexicon(lexicon, alphabet, blank)
    name_model = resolve_name_model(name_model, alphabet)
    lm_weight = check_weight("lm_weight", lm_weight, signed=False)
    insertion_bonus = check_weight("insertion_bonus", insertion_bonus, signed=True)
    lexicon_mode = check_lexicon_mode(lexicon_mode)
    lexicon_bonus = check_weight("lexicon_bonus", lexicon_bonus, signed=True)
    return (arr, codepoints, blank, lengths, threads, beam_width, prune_logp, lexicon, name_model, lm_weight,
            insertion_bonus, lexicon_mode, lexicon_bonus)


def nonfinite_error(item: int, frame: int, value: float) -> ValueError:
    return ValueError(f"logprobs item {item}: non-finite value ({float(value)!r}) at frame {frame}")
