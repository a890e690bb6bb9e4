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

from .._ctc_checks import (
    DEFAULT_INSERTION_BONUS,
    DEFAULT_LEXICON_BONUS,
    DEFAULT_LM_WEIGHT,
    DEFAULT_PRUNE_LOGP,
    check_beam_args,
    check_greedy_args,
    nonfinite_error,
)
from .._lexicon import Lexicon
from .._namelm import NameModel

__all__ = ["Lexicon", "NameModel", "ctc_beam_decode", "ctc_greedy_decode"]

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


class _Scorer:
    """The ranking terms besides the acoustic probability (the kernel's ``Scorer``)."""

    def __init__(self, blank, name_model, lm_weight, insertion_bonus, lexicon, lexicon_mode, lexicon_bonus):
        self.blank, self.lm, self.lm_weight, self.insertion_bonus = blank, name_model, lm_weight, insertion_bonus
        self.lexicon, self.lexicon_bonus = lexicon, lexicon_bonus
        self.hard = lexicon is not None and lexicon_mode == "hard"
        self.soft = lexicon is not None and lexicon_mode == "soft"
        self.start = name_model.start_state if name_model is not None else 0

    def step(self, state: int, lm: float, c: int) -> tuple[int, float]:
        """(name model state, ln-probability) after class ``c`` (alphabet position ``c - (c > blank)``)."""
        if self.lm is None:
            return 0, 0.0
        i = c - (c > self.blank)
        return int(self.lm.next_state[state, i]), lm + float(self.lm.logp[state, i])

    def score(self, pb: float, pnb: float, lm: float, length: int) -> float:
        """``logaddexp(pb, pnb) + lm_weight * lm + insertion_bonus * length``, in the kernel's order."""
        s = logaddexp(pb, pnb)
        if self.lm is not None:
            s = s + self.lm_weight * lm
        return s + self.insertion_bonus * length

    def final(self, pb: float, pnb: float, lm: float, length: int, state: int, node: int) -> float:
        """The score plus the weighted end-of-name ln-probability, plus the soft lexicon bonus."""
        s = self.score(pb, pnb, lm, length)
        if self.lm is not None:
            s = s + self.lm_weight * float(self.lm.end_logp[state])
        if self.soft and node >= 0 and self.lexicon.terminal[node]:
            s = s + self.lexicon_bonus
        return s


def _beam_item(x: np.ndarray, beam_width: int, prune_logp: float, sc: _Scorer):
    """Prefix beam search over one item's valid frames ``x`` (L, C) float64 -> (classes, log score) or None.

    A beam is (prefix, p_blank, p_nonblank, trie node, name model state, name model ln-probability);
    prefixes are tuples of class indices. The trie node is -1 once a soft-mode prefix leaves the lexicon.
    """
    blank, lexicon = sc.blank, sc.lexicon
    beams = [((), 0.0, NEG_INF, 0, sc.start, 0.0)]
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

        # candidates in generation order: prefix -> [p_blank, p_nonblank, node, lm state, lm ln-prob]
        cands: dict[tuple, list] = {}
        for prefix, pb, pnb, node, state, lm in beams:
            total = logaddexp(pb, pnb)
            last = prefix[-1] if prefix else -1
            stay = cands.setdefault(prefix, [NEG_INF, NEG_INF, node, state, lm])
            stay[0] = logaddexp(stay[0], total + lp[blank])
            if last >= 0:
                stay[1] = logaddexp(stay[1], pnb + lp[last])
            kids = trie_children(node) if sc.hard or (sc.soft and node >= 0) else {}
            for c in tried:
                child = 0
                if sc.hard:
                    child = kids.get(c, -1)
                    if child < 0:
                        continue
                elif sc.soft:
                    child = kids.get(c, -1)
                if c == last:  # a repeated character needs a blank in between
                    if pb == NEG_INF:
                        continue
                    contrib = pb + lp[c]
                else:
                    contrib = total + lp[c]
                ext = cands.get(prefix + (c,))
                if ext is None:
                    ext = cands[prefix + (c,)] = [NEG_INF, NEG_INF, child, *sc.step(state, lm, c)]
                ext[1] = logaddexp(ext[1], contrib)

        items = list(cands.items())
        scores = [sc.score(pb, pnb, lm, len(prefix)) for prefix, (pb, pnb, _, _, lm) in items]
        keep = sorted(range(len(items)), key=lambda k: -scores[k])[:beam_width]  # stable: ties by order
        if sc.hard and not any(lexicon.terminal[items[k][1][2]] for k in keep):
            # keep the best complete word even outside the top beam_width
            best, best_score = -1, NEG_INF
            for k, (_, (_, _, node, _, _)) in enumerate(items):
                if lexicon.terminal[node] and scores[k] > best_score:
                    best, best_score = k, scores[k]
            if best >= 0:
                keep.append(best)
        beams = [(items[k][0], *items[k][1]) for k in keep]

    # the best final score, ties by beam order; in hard mode only complete entries
    best, best_score = None, NEG_INF
    for prefix, pb, pnb, node, state, lm in beams:
        if sc.hard and not lexicon.terminal[node]:
            continue
        s = sc.final(pb, pnb, lm, len(prefix), state, node)
        if best is None or s > best_score:
            best, best_score = (prefix, logaddexp(pb, pnb)), s
    return best


def beam(logprobs, codepoints, blank, lengths, threads, beam_width, prune_logp, lexicon, name_model=None,
         lm_weight=0.0, insertion_bonus=0.0, lexicon_mode="hard", lexicon_bonus=0.0):
    """CTC prefix beam search per item (``beam_width == 1`` with no lexicon, name model or insertion bonus
    is greedy decoding)."""
    if beam_width == 1 and lexicon is None and name_model is None and insertion_bonus == 0.0:
        return greedy(logprobs, codepoints, blank, lengths, threads)
    _check_finite(logprobs, lengths)
    sc = _Scorer(blank, name_model, lm_weight, insertion_bonus, lexicon, lexicon_mode, lexicon_bonus)
    out = []
    for i, length in enumerate(lengths.tolist()):
        found = _beam_item(logprobs[i, :length].astype(np.float64), beam_width, prune_logp, sc)
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
    logprobs, alphabet, beam_width=10, lexicon=None, blank=0, lengths=None, threads=1, prune_logp=DEFAULT_PRUNE_LOGP,
    *, name_model=None, lm_weight=DEFAULT_LM_WEIGHT, insertion_bonus=DEFAULT_INSERTION_BONUS, lexicon_mode="hard",
    lexicon_bonus=DEFAULT_LEXICON_BONUS,
):
    """Reference of :func:`htr.preprocess.ctc_beam_decode` (same arguments, same results)."""
    return beam(*check_beam_args(logprobs, alphabet, beam_width, lexicon, blank, lengths, threads, prune_logp,
                                 name_model, lm_weight, insertion_bonus, lexicon_mode, lexicon_bonus))
