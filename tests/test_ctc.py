"""CTC decoding: the Cython kernels against the NumPy reference, hand-computed cases, exact search on
tiny inputs, the lexicon constraint, and every rejected input.

Three implementations run the same cases: the public functions (Cython, or the reference under
``HTR_PURE_PYTHON=1``), the Cython kernel called directly, and the reference called directly; the
comparisons always pit the kernel against the reference, whatever the environment says.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htr.preprocess import PURE_PYTHON, Lexicon, ctc_beam_decode, ctc_greedy_decode
from htr.preprocess import _ctc, ctc
from htr.preprocess import reference
from htr.preprocess._ctc_checks import check_beam_args, check_greedy_args
from htr.preprocess.reference import ctc as ref


def cy_greedy(logprobs, alphabet, blank=0, lengths=None, threads=1):
    return _ctc.greedy(*check_greedy_args(logprobs, alphabet, blank, lengths, threads))


def cy_beam(logprobs, alphabet, beam_width=10, lexicon=None, blank=0, lengths=None, threads=1, prune_logp=-12.0):
    return _ctc.beam(*check_beam_args(logprobs, alphabet, beam_width, lexicon, blank, lengths, threads, prune_logp))


IMPLS = {
    "public": (ctc_greedy_decode, ctc_beam_decode),
    "cython": (cy_greedy, cy_beam),
    "reference": (ref.ctc_greedy_decode, ref.ctc_beam_decode),
}
impls = pytest.mark.parametrize("greedy, beam", list(IMPLS.values()), ids=list(IMPLS))
HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def random_logprobs(seed: int, n: int, t: int, c: int, scale: float = 2.0) -> np.ndarray:
    return log_softmax(np.random.default_rng(seed).normal(0.0, scale, size=(n, t, c)))


def peaky(paths, c: int, p: float = 0.9) -> np.ndarray:
    """(N, T, C) log-probs: prob p on each frame's class of ``paths``, the rest spread evenly."""
    paths = np.atleast_2d(paths)
    probs = np.full(paths.shape + (c,), (1 - p) / (c - 1))
    np.put_along_axis(probs, paths[..., None], p, axis=-1)
    return np.log(probs).astype(np.float32)


def frames(*rows) -> np.ndarray:
    """(1, T, C) log-probs from rows of probabilities."""
    return np.log(np.array([rows], np.float64)).astype(np.float32)


def assert_same(a, b, rel=1e-6):
    assert [t for t, _ in a] == [t for t, _ in b]
    for (_, ca), (_, cb) in zip(a, b):
        assert ca == pytest.approx(cb, rel=rel, abs=0.0)


# ------------------------------------------------------------------------------------ hand-computed

GREEDY_TABLE = [
    # (best path as class indices, blank, alphabet, expected text)
    ([1, 1, 0, 1], 0, "ab", "aa"),  # repeats separated by a blank stay separate
    ([1, 1, 1, 1], 0, "ab", "a"),  # repeats collapse
    ([1, 1, 2, 2], 0, "ab", "ab"),
    ([0, 0, 0, 0], 0, "ab", ""),  # all blank
    ([0, 1, 0, 0, 2, 2, 0], 0, "ab", "ab"),
    ([0, 2, 0, 1], 2, "ab", "aab"),  # blank last: class 0 = a, 1 = b
    ([0, 0, 1, 2, 2], 1, "ab", "ab"),  # blank in the middle: class 0 = a, 2 = b
    ([2, 1, 2, 1], 1, "ab", "bb"),
    ([3, 1, 2], 0, "x\u00e9\U0001d11e", "\U0001d11ex\u00e9"),  # any Unicode, up to 4-byte code points
]


@impls
@pytest.mark.parametrize("path, blank, alphabet, text", GREEDY_TABLE)
def test_greedy_table(greedy, beam, path, blank, alphabet, text):
    lp = peaky([path], len(alphabet) + 1)
    assert greedy(lp, alphabet, blank=blank) == [(text, pytest.approx(0.9 ** len(path), rel=1e-6))]
    assert beam(lp, alphabet, beam_width=1, blank=blank) == greedy(lp, alphabet, blank=blank)
    # on such peaky input every alignment of another text is far less likely: beam agrees
    assert beam(lp, alphabet, blank=blank)[0][0] == text


@impls
def test_beam_sums_alignments(greedy, beam):
    # blank 0.6 / "a" 0.4 on two frames: the best path is blank-blank ("", 0.36) but
    # P("a") = aa + a- + -a = 0.16 + 0.24 + 0.24 = 0.64
    lp = frames([0.6, 0.4], [0.6, 0.4])
    assert greedy(lp, "a") == [("", pytest.approx(0.36, rel=1e-6))]
    assert beam(lp, "a", beam_width=4) == [("a", pytest.approx(0.64, rel=1e-6))]


@impls
def test_beam_repeat_needs_blank(greedy, beam):
    # P("aa") needs a blank between the a's: only a-a = .9 * .5 * .9 = .405 (also the best path:
    # the tie on frame 1 goes to the lower class, the blank); P("a") sums six alignments = .59
    lp = frames([0.1, 0.9], [0.5, 0.5], [0.1, 0.9])
    assert greedy(lp, "a") == [("aa", pytest.approx(0.405, rel=1e-6))]
    assert beam(lp, "a", beam_width=8) == [("a", pytest.approx(0.59, rel=1e-6))]
    assert beam(lp, "a", beam_width=8, lexicon=["aa", "aaaa"]) == [("aa", pytest.approx(0.405, rel=1e-6))]


@impls
def test_lengths_and_empty(greedy, beam):
    lp = peaky([[1, 2, 1, 2], [2, 2, 0, 1]], 3)
    assert greedy(lp, "ab", lengths=[2, 0]) == [("ab", pytest.approx(0.81)), ("", 1.0)]
    assert beam(lp, "ab", lengths=np.array([3, 0], np.int32))[1] == ("", 1.0)
    assert greedy(np.zeros((0, 5, 3), np.float32), "ab") == []
    assert beam(np.zeros((0, 5, 3), np.float32), "ab") == []
    assert beam(np.zeros((0, 5, 3), np.float32), "ab", lexicon=["ab"]) == []
    assert greedy(np.zeros((2, 0, 3), np.float32), "ab") == [("", 1.0), ("", 1.0)]
    # a NaN after an item's length is not looked at
    bad = lp.copy()
    bad[0, 3, 1] = np.nan
    assert greedy(bad, "ab", lengths=[3, 4]) == greedy(lp, "ab", lengths=[3, 4])
    assert beam(bad, "ab", lengths=[3, 4]) == beam(lp, "ab", lengths=[3, 4])


@impls
def test_input_forms(greedy, beam):
    lp = random_logprobs(1, 3, 7, 4)
    want_g, want_b = greedy(lp, "xyz", blank=1), beam(lp, "xyz", blank=1)
    for form in (lp.astype(np.float64), lp.astype(np.float16), np.asfortranarray(lp)):
        cast = form.astype(np.float32)
        assert greedy(form, "xyz", blank=1) == greedy(cast, "xyz", blank=1)
        assert beam(form, "xyz", blank=1) == beam(cast, "xyz", blank=1)
    assert greedy(np.asfortranarray(lp), ["x", "y", "z"], blank=1) == want_g
    assert greedy(lp.tolist(), "xyz", blank=1) == want_g
    wide = np.zeros((3, 7, 8), np.float32)
    wide[:, :, ::2] = lp  # a strided view
    assert beam(wide[:, :, ::2], list("xyz"), blank=1) == want_b

    class TensorLike:  # what a torch CPU tensor offers np.asarray
        def __array__(self, dtype=None, copy=None):
            return lp

    assert greedy(TensorLike(), "xyz", blank=1) == want_g


@impls
def test_torch_tensor(greedy, beam):
    import torch  # a project dependency (see Makefile); imported here only, it is slow to load

    lp = random_logprobs(2, 2, 6, 4)
    assert greedy(torch.from_numpy(lp), "abc") == greedy(lp, "abc")
    assert beam(torch.from_numpy(lp).double(), "abc") == beam(lp, "abc")


# --------------------------------------------------------------------------- kernel == reference

@st.composite
def batches(draw, max_n=4, max_t=12, max_c=7):
    n = draw(st.integers(1, max_n))
    t = draw(st.integers(0, max_t))
    c = draw(st.integers(1, max_c))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.5, 2.0, 6.0]))
    lp = random_logprobs(seed, n, t, c, scale)
    if draw(st.booleans()):  # quantised values: many exact ties
        lp = log_softmax(np.round(lp * 2) / 2)
    blank = draw(st.integers(0, c - 1))
    lengths = draw(st.none() | st.lists(st.integers(0, t), min_size=n, max_size=n))
    alphabet = "abcdefghij"[: c - 1]
    return lp, alphabet, blank, lengths


@HYPO
@given(batches())
def test_greedy_kernel_matches_reference(batch):
    lp, alphabet, blank, lengths = batch
    a = cy_greedy(lp, alphabet, blank, lengths)
    assert_same(a, ref.ctc_greedy_decode(lp, alphabet, blank, lengths))
    assert a == ref.ctc_greedy_decode(lp, alphabet, blank, lengths)  # bit-identical


@HYPO
@given(batches(), st.integers(1, 8), st.sampled_from([-12.0, -3.0, -1.0, -math.inf]))
def test_beam_kernel_matches_reference(batch, width, prune):
    lp, alphabet, blank, lengths = batch
    a = cy_beam(lp, alphabet, width, blank=blank, lengths=lengths, prune_logp=prune)
    b = ref.ctc_beam_decode(lp, alphabet, width, blank=blank, lengths=lengths, prune_logp=prune)
    assert_same(a, b)
    assert a == b  # bit-identical


@HYPO
@given(batches(), st.integers(1, 6), st.data())
def test_lexicon_beam_kernel_matches_reference(batch, width, data):
    lp, alphabet, blank, lengths = batch
    words = data.draw(st.lists(st.text(alphabet, max_size=5), max_size=12)) if alphabet else [""]
    lexicon = Lexicon(words, alphabet, blank)
    a = cy_beam(lp, alphabet, width, lexicon, blank=blank, lengths=lengths)
    b = ref.ctc_beam_decode(lp, alphabet, width, lexicon, blank=blank, lengths=lengths)
    assert a == b
    for text, conf in a:
        assert (text in lexicon and 0.0 < conf <= 1.0) or (text, conf) == ("", 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_fixed_realistic_batches_match(seed):
    # bigger than the property tests: C = 30 (bench alphabet), T = 40, several blank positions
    lp = random_logprobs(seed, 5, 40, 30, scale=3.0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ -'"
    blank = [0, 29, 13][seed % 3]
    lengths = [40, 17, 0, 1, 33]
    assert cy_greedy(lp, alphabet, blank, lengths) == ref.ctc_greedy_decode(lp, alphabet, blank, lengths)
    assert cy_beam(lp, alphabet, 10, blank=blank, lengths=lengths) == ref.ctc_beam_decode(
        lp, alphabet, 10, blank=blank, lengths=lengths
    )
    lexicon = Lexicon(["".join(w) for w in itertools.product("ABE -", repeat=3)] + ["A", "BEE"], alphabet, blank)
    want = ref.ctc_beam_decode(lp, alphabet, 5, lexicon, blank, lengths)
    assert cy_beam(lp, alphabet, 5, lexicon, blank, lengths) == want
    assert all(text in lexicon or (text, conf) == ("", 0.0) for text, conf in want)


# --------------------------------------------------------------------------------- properties

@impls
@HYPO
@given(batches(max_n=3, max_t=10))
def test_width_one_is_greedy(greedy, beam, batch):
    lp, alphabet, blank, lengths = batch
    assert beam(lp, alphabet, 1, blank=blank, lengths=lengths) == greedy(lp, alphabet, blank, lengths)


@impls
@pytest.mark.parametrize("seed", range(8))
def test_beam_at_least_greedy_on_peaky(greedy, beam, seed):
    rng = np.random.default_rng(seed)
    paths = rng.integers(0, 6, size=(4, 16))
    lp = log_softmax(np.where(np.eye(6, dtype=bool)[paths], 6.0, 0.0) + rng.normal(0, 1.5, size=(4, 16, 6)))
    for (_, cg), (_, cb) in zip(greedy(lp, "abcde"), beam(lp, "abcde", beam_width=8)):
        assert cb >= cg * (1 - 1e-9)


def brute_force(lp: np.ndarray, blank: int):
    """Most probable labelling of one (T, C) item by enumerating all C**T alignments -> (classes, prob)."""
    t, c = lp.shape
    probs: dict[tuple, float] = {}
    for path in itertools.product(range(c), repeat=t):
        labels = tuple(k for j, k in enumerate(path) if k != blank and (j == 0 or path[j - 1] != k))
        probs[labels] = probs.get(labels, 0.0) + math.exp(sum(float(lp[j, k]) for j, k in enumerate(path)))
    best = max(probs, key=probs.get)
    return best, probs[best]


def text_prob(lp: np.ndarray, labels, blank: int) -> float:
    """P(labels | one (T, C) item) over all alignments: the CTC forward algorithm, in probabilities."""
    ext = [blank]
    for k in labels:
        ext += [k, blank]
    p = np.exp(lp.astype(np.float64))
    alpha = np.zeros(len(ext))
    alpha[0] = p[0, ext[0]]
    if len(ext) > 1:
        alpha[1] = p[0, ext[1]]
    for t in range(1, len(p)):
        prev = alpha.copy()
        for s in range(len(ext)):
            a = prev[s] + (prev[s - 1] if s >= 1 else 0.0)
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                a += prev[s - 2]
            alpha[s] = a * p[t, ext[s]]
    return float(alpha[-1] + (alpha[-2] if len(ext) > 1 else 0.0))


@impls
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(2, 3), st.integers(0, 2**32 - 1), st.data())
def test_beam_is_exact_on_tiny_inputs(greedy, beam, t, c, seed, data):
    blank = data.draw(st.integers(0, c - 1))
    lp = random_logprobs(seed, 1, t, c, scale=1.5)
    labels, prob = brute_force(lp[0].astype(np.float64), blank)
    alphabet = "ab"[: c - 1]
    # width >= number of possible prefixes (< 2**6) and no pruning: the search is exhaustive
    (text, conf), = beam(lp, alphabet, beam_width=64, blank=blank, prune_logp=-math.inf)
    chars = [alphabet[k if k < blank else k - 1] for k in labels]
    assert text == "".join(chars)
    assert conf == pytest.approx(prob, rel=1e-9)
    assert text_prob(lp[0], labels, blank) == pytest.approx(prob, rel=1e-9)  # the forward algorithm agrees


@impls
def test_lexicon_corrects_misspelling(greedy, beam):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    cls = {ch: i + 1 for i, ch in enumerate(alphabet)}
    # best path reads "JOHM", but N is the runner-up on the last character's frames
    path = [cls["J"], 0, cls["O"], cls["O"], 0, cls["H"], 0, cls["M"], cls["M"], 0]
    logits = np.where(np.eye(27, dtype=bool)[path], 8.0, 0.0)
    logits[7:9, cls["N"]] = 6.0
    lp = log_softmax(logits[None])
    assert greedy(lp, alphabet)[0][0] == "JOHM"
    words = ["JOHN", "JOHNNY", "JON", "MARY", "JOHANNA"]
    lexicon = Lexicon(words, alphabet)
    text, conf = beam(lp, alphabet, beam_width=5, lexicon=lexicon)[0]
    assert text == "JOHN"
    # the beam kept (nearly) every alignment of JOHN: its confidence is close to P(JOHN), never above
    exact = text_prob(lp[0], [cls[ch] for ch in "JOHN"], blank=0)
    assert 0.99 * exact <= conf <= exact * (1 + 1e-9)
    assert beam(lp, alphabet, beam_width=5, lexicon=iter(words)) == [(text, conf)]  # compiled on the fly
    # no word fits in the frames: no result
    assert beam(lp[:, :2], alphabet, lexicon=lexicon) == [("", 0.0)]  # the shortest word needs 3 frames
    # the best word is kept even when width 1 holds a better non-word prefix
    assert beam(lp, alphabet, beam_width=1, lexicon=lexicon)[0][0] == "JOHN"


@impls
@HYPO
@given(batches(max_n=3), st.integers(1, 5), st.lists(st.text("abcdef", min_size=1, max_size=4), max_size=8))
def test_lexicon_beam_only_returns_entries(greedy, beam, batch, width, words):
    lp, alphabet, blank, lengths = batch
    words = [w for w in words if set(w) <= set(alphabet)]
    for text, conf in beam(lp, alphabet, width, words, blank=blank, lengths=lengths):
        assert (text in words and 0.0 < conf <= 1.0) or (text, conf) == ("", 0.0)


@impls
def test_threads_same_output(greedy, beam):
    lp = random_logprobs(3, 17, 30, 12, scale=3.0)
    lengths = np.random.default_rng(3).integers(0, 31, size=17)
    lexicon = Lexicon(["abc", "abd", "kij", "a", "hhh"], "abcdefghijk")
    assert greedy(lp, "abcdefghijk", lengths=lengths, threads=2) == greedy(lp, "abcdefghijk", lengths=lengths)
    for lex in (None, lexicon):
        one = beam(lp, "abcdefghijk", 6, lex, lengths=lengths)
        assert beam(lp, "abcdefghijk", 6, lex, lengths=lengths, threads=2) == one
        assert beam(lp, "abcdefghijk", 6, lex, lengths=lengths, threads=3) == one


def test_public_functions_use_the_selected_backend():
    assert ctc._impl is (ref if PURE_PYTHON else _ctc)
    assert reference.ctc_beam_decode is ref.ctc_beam_decode and reference.Lexicon is Lexicon


# ------------------------------------------------------------------------------------------ Lexicon

def test_lexicon_container():
    lex = Lexicon(["ANNA", "ANN", "ANNA", "BOB", "A-B C'D"], "ABCDNO -'", blank=3)
    assert len(lex) == 4
    assert "ANN" in lex and "ANNA" in lex and "A-B C'D" in lex
    assert "AN" not in lex and "ANNAS" not in lex and "" not in lex and 5 not in lex
    assert lex.child_start.dtype == np.int32 and lex.terminal.dtype == np.uint8
    assert lex.child_start[-1] == len(lex.child_class) == lex.n_nodes - 1  # a tree: one edge per non-root node
    assert "" in Lexicon([""], "ab") and len(Lexicon([], "ab")) == 0
    assert "4 words" in repr(lex)


def test_lexicon_errors():
    with pytest.raises(ValueError, match=r"'JOSÉ'.*'É'.*not in the alphabet"):
        Lexicon(["ANNA", "JOSÉ"], "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    with pytest.raises(TypeError, match="not a single str"):
        Lexicon("ANNA", "AN")
    with pytest.raises(TypeError, match="must be str"):
        Lexicon(["AN", 3], "AN")
    with pytest.raises(ValueError, match="twice"):
        Lexicon(["AN"], "ANA")
    with pytest.raises(ValueError, match="blank"):
        Lexicon(["AN"], "AN", blank=3)


# ------------------------------------------------------------------------------------- bad inputs

@impls
@pytest.mark.parametrize("value, name", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_non_finite_names_item_and_frame(greedy, beam, value, name):
    lp = random_logprobs(0, 5, 9, 4)
    lp[3, 7, 2] = value
    lp[4, 1, 0] = value  # a later item is bad too: the first is reported
    msg = rf"logprobs item 3: non-finite value \({name}\) at frame 7"
    for call in (
        lambda: greedy(lp, "abc"),
        lambda: beam(lp, "abc"),
        lambda: beam(lp, "abc", beam_width=1),
        lambda: beam(lp, "abc", lexicon=["ab"]),
        lambda: greedy(lp, "abc", threads=2),
    ):
        with pytest.raises(ValueError, match=msg):
            call()


@impls
def test_bad_arguments(greedy, beam):
    lp = random_logprobs(0, 2, 5, 4)
    cases = [
        (lambda: greedy(lp[0], "abc"), r"3-D \(N, T, C\), got 2-D"),
        (lambda: beam(lp[None], "abc"), "3-D"),
        (lambda: greedy(np.zeros((2, 5, 4), np.int64), "abc"), "floats.*int64"),
        (lambda: beam(np.zeros((2, 5, 4), bool), "abc"), "floats.*bool"),
        (lambda: greedy(np.zeros((2, 5, 0), np.float32), ""), "at least one class"),
        (lambda: greedy(lp, "abcd"), r"alphabet has 4 characters.*C = 4.*expected C-1 = 3"),
        (lambda: beam(lp, "ab"), r"expected C-1 = 3"),
        (lambda: greedy(lp, ["a", "bc", "d"]), r"alphabet\[1\] must be a single-character string"),
        (lambda: greedy(lp, "abc", blank=4), r"blank must be an int in \[0, C-1\] = \[0, 3\], got 4"),
        (lambda: beam(lp, "abc", blank=-1), "blank must be"),
        (lambda: greedy(lp, "abc", lengths=[5]), r"lengths must have shape \(N,\) = \(2,\)"),
        (lambda: greedy(lp, "abc", lengths=[5, 6]), r"lengths\[1\] = 6 is outside \[0, T\] = \[0, 5\]"),
        (lambda: beam(lp, "abc", lengths=[-1, 2]), r"lengths\[0\] = -1"),
        (lambda: greedy(lp, "abc", lengths=[1.0, 2.0]), "lengths must be integers"),
        (lambda: greedy(lp, "abc", threads=0), "threads must be an int >= 1"),
        (lambda: beam(lp, "abc", beam_width=0), "beam_width must be an int >= 1, got 0"),
        (lambda: beam(lp, "abc", beam_width=2.5), "beam_width"),
        (lambda: beam(lp, "abc", prune_logp=float("nan")), "prune_logp"),
        (lambda: beam(lp, "abc", lexicon=["ab", "abz"]), r"'abz'.*'z'.*not in the alphabet"),
        (lambda: beam(lp, "abc", lexicon=Lexicon(["ab"], "abd")), r"built for alphabet 'abd'"),
        (lambda: beam(lp, "abc", lexicon=Lexicon(["ab"], "abc", blank=3)), r"blank=3.*blank=0"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
