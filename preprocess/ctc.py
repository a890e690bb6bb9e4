"""Public CTC decoding functions: validated wrappers over the Cython kernel (or the reference, see _backend)."""
from __future__ import annotations

from ._backend import PURE_PYTHON
from ._ctc_checks import DEFAULT_PRUNE_LOGP, check_beam_args, check_greedy_args
from ._lexicon import Lexicon

if PURE_PYTHON:
    from .reference import ctc as _impl
else:
    from . import _ctc as _impl

__all__ = ["DEFAULT_PRUNE_LOGP", "Lexicon", "ctc_beam_decode", "ctc_greedy_decode"]


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
) -> list[tuple[str, float]]:
    """CTC prefix beam search over a batch, optionally constrained to a lexicon.

    Standard prefix beam search in log space: every prefix carries the probability of its alignments
    ending in a blank and in a character; a character equal to the prefix's last one extends it only
    from the blank-ending part. At each frame the characters tried as extensions are those with
    log-probability >= ``prune_logp`` plus the frame's argmax; the ``beam_width`` most probable
    prefixes survive (ties keep the earlier candidate: beams in order, each first staying then
    extending by ascending class), so the kernel and the NumPy reference agree exactly.

    With a lexicon, every prefix must be the start of a lexicon entry and the result is the most
    probable prefix that is a complete entry. The best complete entry found so far is always kept,
    even outside the top ``beam_width``. If no entry can be completed (e.g. too few frames) the
    result is ``("", 0.0)``; so the text is always an entry of the lexicon or ``""`` with 0.0.

    Args:
        logprobs, alphabet, blank, lengths, threads: as :func:`ctc_greedy_decode`.
        beam_width: prefixes kept per frame (>= 1). ``beam_width=1`` without a lexicon is defined as
            greedy decoding and returns exactly :func:`ctc_greedy_decode`'s result.
        lexicon: None, a :class:`Lexicon` built with the same alphabet and blank, or any iterable of
            strings (compiled into a :class:`Lexicon` on every call: build one once for repeated use).
        prune_logp: extension threshold on a frame's log-probability (default -12.0, i.e. p < 6e-6 is
            never tried unless it is the frame's best class).

    Returns:
        One ``(text, confidence)`` per item; ``confidence = exp(logaddexp(p_blank, p_nonblank))`` of
        the returned prefix: the probability of that text summed over the alignments the beam kept
        (a lower bound of the text's total probability over all alignments).

    Raises:
        ValueError: as :func:`ctc_greedy_decode`, plus ``beam_width < 1``, a NaN ``prune_logp``, a
            lexicon word with a character outside the alphabet (naming both), or a :class:`Lexicon`
            built for another alphabet or blank.
    """
    return _impl.beam(*check_beam_args(logprobs, alphabet, beam_width, lexicon, blank, lengths, threads, prune_logp))
