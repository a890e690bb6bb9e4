"""Public CTC decoding functions: validated wrappers over the Cython kernel (or the reference, see _backend)."""
from __future__ import annotations

from ._backend import PURE_PYTHON
from ._ctc_checks import (
    DEFAULT_INSERTION_BONUS,
    DEFAULT_LEXICON_BONUS,
    DEFAULT_LM_WEIGHT,
    DEFAULT_PRUNE_LOGP,
    check_beam_args,
    check_greedy_args,
)
from ._lexicon import Lexicon
from ._namelm import NameModel

if PURE_PYTHON:
    from .reference import ctc as _impl
else:
    from . import _ctc as _impl

__all__ = ["DEFAULT_PRUNE_LOGP", "Lexicon", "NameModel", "ctc_beam_decode", "ctc_greedy_decode"]


def ctc_greedy_decode(logprobs, alphabet, blank: int = 0, lengths=None, threads: int = 1) -> list[tuple[str, float]]:
    """Best-path CTC decoding of a batch: per frame the most likely class, repeats collapsed, blanks dropped.

    Args:
        logprobs: ``(N, T, C)`` log-probabilities (log-softmax over C), float32 natively; other float
            dtypes are converted (one copy), non-contiguous input is made contiguous. A CPU
            ``torch.Tensor`` works (read through ``np.asarray``).
        alphabet: the C - 1 non-blank characters, a str or a sequence of single-character strings.
            Class ``c`` is ``alphabet[c]`` below the blank and ``alphabet[c - 1]`` above it.
        blank: class index of the CTC blank, in [0, C-1].
        lengths: optional ``(N,)`` ints in [0, T], the valid frames of each item (default: all T).
        threads: items are decoded in parallel (OpenMP, GIL released) on this many threads.

    Returns:
        One ``(text, confidence)`` per item. ``confidence`` is the probability of the best path
        itself, ``exp(sum over valid frames of max_c logprobs[t, c])``, in [0, 1] for log-softmax
        input; it is not summed over the other alignments of the same text (see
        :func:`ctc_beam_decode`). Ties pick the lowest class index. An item with length 0 gives ``("", 1.0)``; ``N == 0`` gives ``[]``.

    Raises:
        ValueError: logprobs not 3-D or not floats; ``len(alphabet) != C - 1``; blank out of range;
            bad ``lengths`` or ``threads``; a NaN or infinity in an item's valid frames (the message
            names the item and the frame).
    """
    return _impl.greedy(*check_greedy_args(logprobs, alphabet, blank, lengths, threads))


def ctc_beam_decode(
    logprobs,
    alphabet,
    beam_width: int = 10,
    lexicon=None,
    blank: int = 0,
    lengths=None,
    threads: int = 1,
    prune_logp: float = DEFAULT_PRUNE_LOGP,
    *,
    name_model: NameModel | None = None,
    lm_weight: float = DEFAULT_LM_WEIGHT,
    insertion_bonus: float = DEFAULT_INSERTION_BONUS,
    lexicon_mode: str = "hard",
    lexicon_bonus: float = DEFAULT_LEXICON_BONUS,
) -> list[tuple[str, float]]:
    """CTC prefix beam search over a batch, optionally guided by a name model and a lexicon.

    Standard prefix beam search in log space: every prefix carries the probability of its alignments
    ending in a blank and in a character; a character equal to the prefix's last one extends it only
    from the blank-ending part. At each frame the characters tried as extensions are those with
    log-probability >= ``prune_logp`` plus the frame's argmax; the ``beam_width`` best prefixes survive
    (ties keep the earlier candidate: beams in order, each first staying then extending by ascending
    class), so the kernel and the NumPy reference agree exactly. Prefixes are ranked by

        logaddexp(p_blank, p_nonblank) + lm_weight * ln P_names(prefix) + insertion_bonus * len(prefix)

    (the middle term only with a ``name_model``; all in natural-log units). The result is the final
    prefix with the best rank plus ``lm_weight * ln P_names(end | prefix)``, plus ``lexicon_bonus`` when
    ``lexicon_mode="soft"`` and the text is a lexicon entry. Without a name model, a lexicon and an
    insertion bonus this is the plain most probable prefix.

    With a lexicon in ``"hard"`` mode (the default), every prefix must be the start of a lexicon entry and
    the result is a complete entry; the best complete entry found so far is always kept, even outside
    the top ``beam_width``. If no entry can be completed (e.g. too few frames) the result is
    ``("", 0.0)``; so the text is always an entry of the lexicon or ``""`` with 0.0. In ``"soft"`` mode the
    lexicon never constrains: it only adds ``lexicon_bonus`` to complete entries in the final choice.

    Args:
        logprobs, alphabet, blank, lengths, threads: as :func:`ctc_greedy_decode`.
        beam_width: prefixes kept per frame (>= 1). ``beam_width=1`` without a lexicon, a name model or
            an insertion bonus is defined as greedy decoding and returns exactly
            :func:`ctc_greedy_decode`'s result.
        lexicon: None, a :class:`Lexicon` built with the same alphabet and blank, or any iterable of
            strings (compiled into a :class:`Lexicon` on every call: build one once for repeated use).
        prune_logp: extension threshold on a frame's log-probability (default -12.0, i.e. p < 6e-6 is
            never tried unless it is the frame's best class).
        name_model: a :class:`NameModel` trained over the same alphabet (the open-vocabulary prior of
            names: any text stays possible, likely names rank higher), or None.
        lm_weight: weight of the name model's ln-probabilities, in [0, 1e6] (ignored without one).
        insertion_bonus: added per character, in [-1e6, 1e6]; offsets the name model's cost of every
            character (a positive bonus favours longer reads).
        lexicon_mode: ``"hard"`` (constrain to the lexicon) or ``"soft"`` (bonus only); used only with a
            lexicon.
        lexicon_bonus: soft mode's bonus for a complete lexicon entry, in [-1e6, 1e6].

    Returns:
        One ``(text, confidence)`` per item; ``confidence = exp(logaddexp(p_blank, p_nonblank))`` of
        the returned prefix: the acoustic probability of that text summed over the alignments the beam
        kept (a lower bound of the text's total probability over all alignments), whatever the name
        model and bonuses did to choose it.

    Raises:
        ValueError: as :func:`ctc_greedy_decode`, plus ``beam_width < 1``, a NaN ``prune_logp``, a
            lexicon word with a character outside the alphabet (naming both), a :class:`Lexicon` built
            for another alphabet or blank, a name model of another alphabet (or not a
            :class:`NameModel`), a weight or bonus that is not a real in its range, or another
            ``lexicon_mode``.
    """
    return _impl.beam(*check_beam_args(logprobs, alphabet, beam_width, lexicon, blank, lengths, threads, prune_logp,
                                       name_model, lm_weight, insertion_bonus, lexicon_mode, lexicon_bonus))
