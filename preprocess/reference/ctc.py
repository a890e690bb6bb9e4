"""Plain NumPy/Python CTC decoding: the readable twin of ``_ctc.pyx``.

Same signatures, same checks and the same results as :mod:`htr.preprocess.ctc`: the beam search runs
the same algorithm in the same order with the same double-precision formulas, so texts and scores are
bit-identical. ``greedy``/``beam`` take already-validated arguments (the public wrappers call them
after the shared checks); ``ctc_greedy_decode``/``ctc_beam_decode`` validate first. ``threads`` is
accepted and ignored.
"""
from __future__ import annotations

import math

import numpy as np

from .._ctc_checks import DEFAULT_PRUNE_LOGP, check_beam_args, check_greedy_args, nonfinite_error
from .._lexicon import Lexicon

__all__ = ["Lexicon", "ctc_beam_decode", "ctc_greedy_decode"]

NEG_INF = -math.inf


def _exp(x: float) -> float:
    """``exp`` as C computes it in the kernel: ``inf`` past the float range instead of OverflowError
    (a confidence from finite but unnormalised scores over ~709)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), written exactly as ``_ctcmath.logaddexp`` so results match to the bit."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a >= b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def _check_finite(logprobs: np.ndarray, lengths: np.ndarray) -> None:
    """Raise for the first item (then frame, then class) holding a NaN or an infinity in its valid frames."""
    for i, length in enumerate(lengths.tolist()):
        bad = ~np.isfinite(logprobs[i, :length])
        if bad.any():
            t, c = np.argwhere(bad)[0]
            raise nonfinite_error(i, int(t), logprobs[i, t, c])


def _text(classes, codepoints: np.ndarray) -> str:
    return "".join(map(chr, codepoints[np.asarray(classes, np.intp)].tolist()))


def greedy(logprobs, codepoints, blank, lengths, threads=1):
    """Best path per item: argmax per frame (ties -> lowest class), collapse repeats, drop blanks."""
    _check_finite(logprobs, lengths)
    n, t, _ = logprobs.shape
    best = logprobs.argmax(axis=2)  # (N, T), first maximum on ties
    # running sum in frame order (np.cumsum adds sequentially, like the kernel's loop)
    path_logp = np.take_along_axis(logprobs, best[:, :, None], axis=2)[:, :, 0].astype(np.float64).cumsum(axis=1)
    out = []
    for i, length in enumerate(lengths.tolist()):
        path = best[i, :length]
        keep = path != blank
        keep[1:] &= path[1:] != path[:-1]
        logp = path_logp[i, length - 1] if length else 0.0
        out.append((_text(path[keep], codepoints), _exp(logp)))
    return out


def _beam_item(x: np.ndarray, blank: int, beam_width: int, prune_logp: float, lexicon: Lexicon | None):
    """Prefix beam search over one item's valid frames ``x`` (L, C) float64 -> (classes, log score) or None.

    A beam is (prefix, p_blank, p_nonblank, trie node); prefixes are tuples of class indices.
    """
    beams = [((), 0.0, NEG_INF, 0)]
    children: dict[int, dict[int, int]] = {}  # trie node -> {class: child}, filled on first visit

    def trie_children(node: int) -> dict[int, int]:
        d = children.get(node)
        if d is None:
            lo, hi = lexicon.child_start[node], lexicon.child_start[node + 1]
            d = children[node] = dict(zip(lexicon.child_class[lo:hi].tolist(), lexicon.child_node[lo:hi].tolist()))
        return d

    for row in x:
        lp = row.tolist()
        argmax = int(np.argmax(row))
        # tried extensions: every class with logp >= prune_logp, plus the argmax, ascending, never the blank
        tried = [c for c in np.flatnonzero(row >= prune_logp).tolist() if c != blank]
        if argmax != blank and lp[argmax] < prune_logp:
            tried = sorted(tried + [argmax])

        # candidates in generation order: prefix -> [p_blank, p_nonblank, node]
        cands: dict[tuple, list] = {}
        for prefix, pb, pnb, node in beams:
            total = logaddexp(pb, pnb)
            last = prefix[-1] if prefix else -1
            stay = cands.setdefault(prefix, [NEG_INF, NEG_INF, node])
            stay[0] = logaddexp(stay[0], total + lp[blank])
            if last >= 0:
                stay[1] = logaddexp(stay[1], pnb + lp[last])
            kids = trie_children(node) if lexicon is not None else None
            for c in tried:
                child = 0
                if kids is not None:
                    child = kids.get(c, -1)
                    if child < 0:
                        continue
                if c == last:  # a repeated character needs a blank in between
                    if pb == NEG_INF:
                        continue
                    contrib = pb + lp[c]
                else:
                    contrib = total + lp[c]
                ext = cands.setdefault(prefix + (c,), [NEG_INF, NEG_INF, child])
                ext[1] = logaddexp(ext[1], contrib)

        items = list(cands.items())
        scores = [logaddexp(pb, pnb) for _, (pb, pnb, _) in items]
        keep = sorted(range(len(items)), key=lambda k: -scores[k])[:beam_width]  # stable: ties by order
        if lexicon is not None and not any(lexicon.terminal[items[k][1][2]] for k in keep):
            # keep the best complete word even outside the top beam_width
            best, best_score = -1, NEG_INF
            for k, (_, (_, _, node)) in enumerate(items):
                if lexicon.terminal[node] and scores[k] > best_score:
                    best, best_score = k, scores[k]
            if best >= 0:
                keep.append(best)
        beams = [(items[k][0], items[k][1][0], items[k][1][1], items[k][1][2]) for k in keep]

    for prefix, pb, pnb, node in beams:
        if lexicon is None or lexicon.terminal[node]:
            return prefix, logaddexp(pb, pnb)
    return None


def beam(logprobs, codepoints, blank, lengths, threads, beam_width, prune_logp, lexicon):
    """CTC prefix beam search per item (``beam_width == 1`` without a lexicon is greedy decoding)."""
    if beam_width == 1 and lexicon is None:
        return greedy(logprobs, codepoints, blank, lengths, threads)
    _check_finite(logprobs, lengths)
    out = []
    for i, length in enumerate(lengths.tolist()):
        found = _beam_item(logprobs[i, :length].astype(np.float64), blank, beam_width, prune_logp, lexicon)
        if found is None:
            out.append(("", 0.0))
        else:
            prefix, score = found
            out.append((_text(prefix, codepoints), _exp(score)))
    return out


def ctc_greedy_decode(logprobs, alphabet, blank=0, lengths=None, threads=1):
    """Reference of :func:`htr.preprocess.ctc_greedy_decode` (same arguments, same results)."""
    return greedy(*check_greedy_args(logprobs, alphabet, blank, lengths, threads))


def ctc_beam_decode(
    logprobs, alphabet, beam_width=10, lexicon=None, blank=0, lengths=None, threads=1, prune_logp=DEFAULT_PRUNE_LOGP
):
    """Reference of :func:`htr.preprocess.ctc_beam_decode` (same arguments, same results)."""
    return beam(*check_beam_args(logprobs, alphabet, beam_width, lexicon, blank, lengths, threads, prune_logp))
