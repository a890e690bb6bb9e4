"""The name model (``NameModel``), its fusion into the CTC beam search, and its builder (``htr.name_model``).

As in tests/test_ctc.py, every decoding comparison pits the Cython kernel against the reference, whatever
``HTR_PURE_PYTHON`` says, and asks for identical texts and bit-identical confidences (``==``: the two
accumulate the same doubles in the same order). The public functions run the hand-made cases.
"""
from __future__ import annotations

import csv
import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htr.preprocess import Lexicon, NameModel, ctc_beam_decode, ctc_greedy_decode
from htr.preprocess import _ctc
from htr.preprocess._ctc_checks import check_beam_args
from htr.preprocess.reference import ctc as ref
from test_ctc import text_prob  # the CTC forward algorithm (tests/ is on sys.path under pytest's default import mode)

HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ -'"
NAMES = ["MARIE", "MARIE", "MARIE", "JEAN", "JEAN", "JEANNE", "JEAN-PIERRE", "PIERRE", "MARTIN", "MARTINE",
         "LEA", "LEO", "LEON", "LEONIE", "ANNA", "ANNE", "ANNIE", "THOMAS", "THOMASSIN", "DE LA TOUR", "D'ARC",
         "JOHN", "JOHNNY", "JOHANNA", "CAMILLE", "EMMA", "HUGO", "LOUIS", "LOUISE", "MANON", "ZOE"]


def cy_beam(logprobs, alphabet, beam_width=10, lexicon=None, blank=0, lengths=None, threads=1, prune_logp=-12.0,
            **kw):
    return _ctc.beam(*check_beam_args(logprobs, alphabet, beam_width, lexicon, blank, lengths, threads, prune_logp,
                                      **kw))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def random_logprobs(seed: int, n: int, t: int, c: int, scale: float = 2.0) -> np.ndarray:
    return log_softmax(np.random.default_rng(seed).normal(0.0, scale, size=(n, t, c)))


def name_logprobs(seed: int, texts: list[str], t: int, alphabet: str = NAMES_ALPHABET) -> np.ndarray:
    """(N, T, C) peaky log-probs reading ``texts`` (blank 0), with noise and a confusable runner-up on some
    frames: what a trained model gives."""
    rng = np.random.default_rng(seed)
    c = len(alphabet) + 1
    logits = rng.normal(0.0, 1.5, size=(len(texts), t, c))
    for i, text in enumerate(texts):
        path = []
        for k, ch in enumerate(text):
            cls = alphabet.index(ch) + 1
            path += [0] * (1 if k and text[k - 1] == ch else int(rng.integers(0, 2))) + [cls] * int(rng.integers(1, 3))
        path = (path + [0] * t)[:t]
        logits[i, np.arange(t), path] += 10.0
        frames = np.flatnonzero(rng.random(t) < 0.2)
        logits[i, frames, rng.integers(1, c, size=frames.size)] += rng.uniform(6.0, 9.5, size=frames.size)
    return log_softmax(logits)


@pytest.fixture(scope="module")
def names_lm() -> NameModel:
    return NameModel.train(NAMES, NAMES_ALPHABET, order=6)


# ------------------------------------------------------------------------------------------- NameModel

def naive_kneser_ney(names, alphabet: str, order: int):
    """P(w | history) by the textbook definitions (sets of left neighbours, no shared code with NameModel):
    -> function(history tuple of symbols, w) -> probability. Symbols: characters, "<s>", "</s>"."""
    bos, eos = "<s>", "</s>"
    raw: Counter = Counter()
    for name in names:
        seq = (bos,) * (order - 1) + tuple(name) + (eos,)
        for i in range(order - 1, len(seq)):
            for n in range(1, order + 1):
                raw[seq[i - n + 1 : i + 1]] += 1
    left = {}
    for g in raw:
        if len(g) >= 2:
            left.setdefault(g[1:], set()).add(g[0])

    def adjusted(g):
        return raw[g] if len(g) == order or g[0] == bos else len(left.get(g, ()))

    discount = {}
    for n in range(1, order + 1):
        values = [adjusted(g) for g in raw if len(g) == n]
        n1, n2 = values.count(1), values.count(2)
        discount[n] = min(max(n1 / (n1 + 2 * n2) if n1 and n2 else 0.5, 0.1), 1.0)
    outcomes = list(alphabet) + [eos]

    def prob(h, w):
        lower = prob(h[1:], w) if h else 1.0 / len(outcomes)
        a = {x: adjusted(h + (x,)) for x in outcomes}
        total = sum(a.values())
        if total == 0:  # a history never seen: its suffix's distribution
            return lower
        d = discount[len(h) + 1]
        return max(a[w] - d, 0.0) / total + d * sum(v > 0 for v in a.values()) / total * lower

    return prob, bos, eos


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_textbook_kneser_ney(order):
    names = ["ABBA", "ABBA", "ABC", "BAC", "CAB", "", "A", "BB", "CABBAC"]
    lm = NameModel.train(names, "ABC", order=order)
    prob, bos, eos = naive_kneser_ney(names, "ABC", order)
    texts = {n[:k] for n in names for k in range(len(n) + 1)} | {"CCCC", "ACA", "BBBBB"}
    for text in sorted(texts):
        h = ((bos,) * (order - 1) + tuple(text))[len(text):] if order > 1 else ()
        s = lm.state_after(text)
        for i, ch in enumerate("ABC"):
            assert math.exp(lm.logp[s, i]) == pytest.approx(prob(h, ch), rel=1e-6), (text, ch)
        assert math.exp(lm.end_logp[s]) == pytest.approx(prob(h, eos), rel=1e-6), text


def test_probabilities_sum_to_one_in_every_state(names_lm):
    big = NameModel.train([f"{a}{b}" for a, b in itertools.product(NAMES, repeat=2)], NAMES_ALPHABET, 6, 2)
    for lm in (names_lm, big, NameModel.train(["AB"], "AB", order=1)):
        states = np.random.default_rng(0).choice(lm.n_states, size=min(lm.n_states, 500), replace=False)
        total = np.exp(lm.logp[states].astype(np.float64)).sum(axis=1) + np.exp(lm.end_logp[states].astype(np.float64))
        np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-5)
        assert lm.next_state.min() >= 0 and lm.next_state.max() < lm.n_states


def test_seen_names_score_higher_than_random_strings(names_lm):
    rng = np.random.default_rng(0)
    for name in ("MARIE", "JEAN-PIERRE", "DE LA TOUR", "ZOE"):
        random = "".join(rng.choice(list(NAMES_ALPHABET), size=len(name)))
        assert names_lm.score(name) > names_lm.score(random) + 5.0
    # frequent beats rare, a name beats its unfinished prefix, and unseen names stay possible
    assert names_lm.score("MARIE") > names_lm.score("MARTINE")
    assert names_lm.score("JEAN") > names_lm.score("JEA")
    assert names_lm.score("JEA", end=False) > names_lm.score("JEAN", end=False)
    assert math.isfinite(names_lm.score("QXWQ'"))
    # score is the walk over the arrays, float32 values summed as doubles in order
    s, total = names_lm.start_state, 0.0
    for ch in "LEON":
        i = NAMES_ALPHABET.index(ch)
        total += float(names_lm.logp[s, i])
        s = names_lm.next_state[s, i]
    assert names_lm.score("LEON") == total + float(names_lm.end_logp[s])


def test_training_input_forms():
    base = NameModel.train(["ANNA", "ANNA", "ANA", "NAN"], "AN", order=3)
    for same in (NameModel.train([("ANNA", 2), "ANA", ("NAN", 1)], "AN", order=3),
                 NameModel.train(Counter({"ANNA": 2, "ANA": 1, "NAN": 1}), "AN", order=3),
                 NameModel.train(iter(["NAN", "ANNA", "ANA", "ANNA"]), ["A", "N"], order=3)):
        for name in ("next_state", "logp", "end_logp"):
            np.testing.assert_array_equal(getattr(same, name), getattr(base, name))
    assert base.metadata["names"] == 4 and base.metadata["distinct_names"] == 3
    assert "Kneser-Ney" in base.metadata["method"] and f"{base.n_states} states" in repr(base)


def test_training_errors():
    with pytest.raises(ValueError, match=r"'JOSÉ'.*'É'.*not in the alphabet"):
        NameModel.train(["ANNA", "JOSÉ"], NAMES_ALPHABET)
    with pytest.raises(ValueError, match=r"'anna'.*'a'.*not in the alphabet"):
        NameModel.train(["anna"], NAMES_ALPHABET)
    with pytest.raises(TypeError, match="not a single str"):
        NameModel.train("ANNA", NAMES_ALPHABET)
    with pytest.raises(TypeError, match="a name must be a str"):
        NameModel.train([(3, 1)], NAMES_ALPHABET)
    with pytest.raises(ValueError, match="count of 'ANNA' must be an int >= 1"):
        NameModel.train([("ANNA", 0)], NAMES_ALPHABET)
    with pytest.raises(ValueError, match="at least one name"):
        NameModel.train([], NAMES_ALPHABET)
    with pytest.raises(ValueError, match=r"order must be an int in \[1, 12\]"):
        NameModel.train(["ANNA"], NAMES_ALPHABET, order=0)
    with pytest.raises(ValueError, match="min_context_count"):
        NameModel.train(["ANNA"], NAMES_ALPHABET, min_context_count=0)
    with pytest.raises(ValueError, match="repeated"):
        NameModel.train(["ANNA"], "ANA")


def test_pruning_keeps_a_valid_smaller_model():
    names = [f"{a} {b}" for a, b in itertools.product(NAMES, repeat=2)] + NAMES * 3
    full = NameModel.train(names, NAMES_ALPHABET, 6, min_context_count=1)
    pruned = NameModel.train(names, NAMES_ALPHABET, 6, min_context_count=5)
    assert pruned.n_states < full.n_states and pruned.nbytes < full.nbytes
    total = np.exp(pruned.logp.astype(np.float64)).sum(axis=1) + np.exp(pruned.end_logp.astype(np.float64))
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-5)
    assert pruned.score("MARIE") > pruned.score("EIRAM") + 5.0


def test_save_load_round_trip(tmp_path, names_lm):
    path = names_lm.save(tmp_path / "sub" / "names.lm")  # any suffix is kept as given
    assert path == tmp_path / "sub" / "names.lm" and path.is_file()
    back = NameModel.load(path)
    assert (back.alphabet, back.order, back.start_state, back.metadata) == (
        names_lm.alphabet, names_lm.order, names_lm.start_state, names_lm.metadata)
    for name in ("next_state", "logp", "end_logp"):
        got, want = getattr(back, name), getattr(names_lm, name)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert back.score("JEANNE") == names_lm.score("JEANNE")
    lp = name_logprobs(0, ["MARIE", "JOHN"], 24)
    assert cy_beam(lp, NAMES_ALPHABET, name_model=back) == cy_beam(lp, NAMES_ALPHABET, name_model=names_lm)


def test_load_and_constructor_refuse_what_is_not_a_model(tmp_path, names_lm):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a name model file"):
        NameModel.load(tmp_path / "other.npz")
    args = dict(alphabet="AB", order=2, next_state=np.zeros((2, 2), np.int32), logp=np.full((2, 2), -1.1),
                end_logp=np.full(2, -1.1), start_state=0)
    NameModel(**args)
    for bad, msg in [({"next_state": np.full((2, 2), 2)}, "next_state must hold states"),
                     ({"logp": np.full((2, 2), np.nan)}, "logp must hold finite"),
                     ({"end_logp": np.full(2, 0.5)}, "end_logp must hold finite log-probabilities <= 0"),
                     ({"logp": np.zeros((2, 3))}, r"logp \(S, 2\)"),
                     ({"start_state": 2}, "start_state"), ({"alphabet": "AA"}, "repeated")]:
        with pytest.raises(ValueError, match=msg):
            NameModel(**{**args, **bad})


# ---------------------------------------------------------------------------------- kernel == reference

@st.composite
def lm_cases(draw):
    n, t, c = draw(st.integers(1, 3)), draw(st.integers(0, 12)), draw(st.integers(2, 7))
    lp = random_logprobs(draw(st.integers(0, 2**32 - 1)), n, t, c, draw(st.sampled_from([0.5, 2.0, 6.0])))
    if draw(st.booleans()):  # quantised values: many exact ties
        lp = log_softmax(np.round(lp * 2) / 2)
    blank = draw(st.integers(0, c - 1))
    lengths = draw(st.none() | st.lists(st.integers(0, t), min_size=n, max_size=n))
    alphabet = "abcdefghij"[: c - 1]
    words = draw(st.lists(st.text(alphabet, max_size=6), min_size=1, max_size=15))
    lm = NameModel.train(words, alphabet, draw(st.integers(1, 6)), draw(st.sampled_from([1, 2])))
    mode = draw(st.sampled_from([None, "hard", "soft"]))
    kw = {"name_model": draw(st.sampled_from([lm, lm, None])),
          "lm_weight": draw(st.sampled_from([0.0, 0.2, 0.5, 1.0, 3.0])),
          "insertion_bonus": draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0])),
          "lexicon_mode": mode or "hard", "lexicon_bonus": draw(st.sampled_from([-1.0, 0.0, 1.0, 2.0, 30.0]))}
    lexicon = None if mode is None else Lexicon(draw(st.lists(st.sampled_from(words), max_size=6)), alphabet, blank)
    return lp, alphabet, blank, lengths, lexicon, kw


@HYPO
@given(lm_cases(), st.integers(1, 16), st.sampled_from([-12.0, -3.0, -math.inf]))
def test_lm_beam_kernel_matches_reference(case, width, prune):
    lp, alphabet, blank, lengths, lexicon, kw = case
    a = cy_beam(lp, alphabet, width, lexicon, blank, lengths, prune_logp=prune, **kw)
    b = ref.ctc_beam_decode(lp, alphabet, width, lexicon, blank, lengths, prune_logp=prune, **kw)
    assert a == b  # same texts, bit-identical confidences
    if lexicon is not None and kw["lexicon_mode"] == "hard":
        assert all(text in lexicon or (text, conf) == ("", 0.0) for text, conf in a)


@pytest.mark.parametrize("width", [1, 2, 4, 10, 16])
@pytest.mark.parametrize("mode", [None, "hard", "soft"])
def test_realistic_batches_match(names_lm, width, mode):
    # the served shape: 96 frames, 30 classes; weights and bonuses across their useful range
    rng = np.random.default_rng(width)
    texts = [NAMES[k] for k in rng.integers(0, len(NAMES), size=5)] + ["MARTIM", "JOHM", "LEQN"]
    lp = name_logprobs(width, texts, 96)
    lexicon = None if mode is None else Lexicon(NAMES[::2], NAMES_ALPHABET)
    for w, bonus, lex_bonus in [(0.2, 0.0, 2.0), (0.5, 1.0, 0.0), (1.0, 2.0, 5.0)]:
        kw = dict(name_model=names_lm, lm_weight=w, insertion_bonus=bonus, lexicon_mode=mode or "hard",
                  lexicon_bonus=lex_bonus)
        want = ref.ctc_beam_decode(lp, NAMES_ALPHABET, width, lexicon, lengths=[96, 90, 50, 96, 3, 96, 96, 0], **kw)
        assert cy_beam(lp, NAMES_ALPHABET, width, lexicon, lengths=[96, 90, 50, 96, 3, 96, 96, 0], **kw) == want


@HYPO
@given(lm_cases(), st.integers(2, 12))
def test_neutral_settings_change_nothing(case, width):
    # a name model with weight 0 and a soft lexicon with bonus 0 give today's beam search, to the bit
    lp, alphabet, blank, lengths, lexicon, kw = case
    lm = NameModel.train(["ab", "a"] if len(alphabet) > 1 else ["a"], alphabet)
    plain = cy_beam(lp, alphabet, width, blank=blank, lengths=lengths)
    assert plain == ref.ctc_beam_decode(lp, alphabet, width, blank=blank, lengths=lengths)
    assert cy_beam(lp, alphabet, width, blank=blank, lengths=lengths, name_model=lm, lm_weight=0.0) == plain
    soft = Lexicon(["a", "b"][: len(alphabet)], alphabet, blank)
    assert cy_beam(lp, alphabet, width, soft, blank, lengths, lexicon_mode="soft", lexicon_bonus=0.0) == plain
    assert ref.ctc_beam_decode(lp, alphabet, width, soft, blank, lengths, lexicon_mode="soft",
                               lexicon_bonus=0.0, name_model=lm, lm_weight=0.0) == plain


def test_threads_same_output_with_lm(names_lm):
    rng = np.random.default_rng(5)
    lp = name_logprobs(5, [NAMES[k] for k in rng.integers(0, len(NAMES), size=17)], 40)
    lexicon = Lexicon(NAMES, NAMES_ALPHABET)
    for lex, mode in ((None, "hard"), (lexicon, "soft"), (lexicon, "hard")):
        kw = dict(name_model=names_lm, insertion_bonus=1.0, lexicon_mode=mode)
        one = cy_beam(lp, NAMES_ALPHABET, 8, lex, **kw)
        assert cy_beam(lp, NAMES_ALPHABET, 8, lex, threads=2, **kw) == one
        assert cy_beam(lp, NAMES_ALPHABET, 8, lex, threads=3, **kw) == one


# ---------------------------------------------------------------------------------------- semantics

def brute_force_choice(lp: np.ndarray, blank: int, alphabet: str, lm: NameModel, w: float, bonus: float):
    """argmax over every labelling of ln P_ctc(text) + w * lm.score(text) + bonus * len(text), by enumerating
    all alignments of one (T, C) item -> (text, P_ctc(text))."""
    t, c = lp.shape
    probs: dict[tuple, float] = {}
    for path in itertools.product(range(c), repeat=t):
        labels = tuple(k for j, k in enumerate(path) if k != blank and (j == 0 or path[j - 1] != k))
        probs[labels] = probs.get(labels, 0.0) + math.exp(sum(float(lp[j, k]) for j, k in enumerate(path)))
    text = {labels: "".join(alphabet[k - (k > blank)] for k in labels) for labels in probs}
    best = max(probs, key=lambda k: math.log(probs[k]) + w * lm.score(text[k]) + bonus * len(k))
    return text[best], probs[best]


@pytest.mark.parametrize("impl", [cy_beam, ref.ctc_beam_decode], ids=["cython", "reference"])
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(2, 3), st.integers(0, 2**32 - 1), st.data())
def test_exhaustive_search_finds_the_best_weighted_text(impl, t, c, seed, data):
    blank = data.draw(st.integers(0, c - 1))
    alphabet = "ab"[: c - 1]
    lm = NameModel.train(data.draw(st.lists(st.text(alphabet, max_size=4), min_size=1, max_size=6)), alphabet, 3)
    w, bonus = data.draw(st.sampled_from([0.3, 1.0, 2.5])), data.draw(st.sampled_from([-1.0, 0.0, 1.5]))
    lp = random_logprobs(seed, 1, t, c, scale=1.5)
    # width >= number of possible prefixes (< 2**6) and no pruning: every text keeps all its alignments
    (text, conf), = impl(lp, alphabet, 64, blank=blank, prune_logp=-math.inf, name_model=lm, lm_weight=w,
                         insertion_bonus=bonus)
    want_text, want_prob = brute_force_choice(lp[0].astype(np.float64), blank, alphabet, lm, w, bonus)
    score = lambda s, p: math.log(p) + w * lm.score(s) + bonus * len(s)  # noqa: E731
    assert text == want_text or score(text, conf) == pytest.approx(score(want_text, want_prob), abs=1e-9)
    if text == want_text:
        assert conf == pytest.approx(want_prob, rel=1e-9)  # the confidence is the acoustic probability


def test_name_model_corrects_a_misread(names_lm):
    cls = {ch: i + 1 for i, ch in enumerate(NAMES_ALPHABET)}
    # best path reads "JOHM"; N is the runner-up on the last character's frames
    path = [cls["J"], 0, cls["O"], cls["O"], 0, cls["H"], 0, cls["M"], cls["M"], 0]
    logits = np.where(np.eye(30, dtype=bool)[path], 8.0, 0.0)
    logits[7:9, cls["N"]] = 7.0
    lp = log_softmax(logits[None])
    assert ctc_greedy_decode(lp, NAMES_ALPHABET)[0][0] == "JOHM"
    plain = ctc_beam_decode(lp, NAMES_ALPHABET, 5)
    assert plain[0][0] == "JOHM"
    (text, conf), = ctc_beam_decode(lp, NAMES_ALPHABET, 5, name_model=names_lm, lm_weight=0.5)
    assert text == "JOHN"
    # the confidence is still JOHN's acoustic probability, over the alignments the beam kept (nearly all)
    exact = text_prob(lp[0], [cls[ch] for ch in "JOHN"], blank=0)
    assert 0.99 * exact <= conf <= exact * (1 + 1e-9) and conf < plain[0][1]
    # a soft lexicon alone can do the same, with a bonus larger than the acoustic gap (its search is the
    # plain one: same beams, so the same JOHN)
    soft = dict(lexicon=["JOHN", "MARY"], lexicon_mode="soft")
    (soft_text, soft_conf), = ctc_beam_decode(lp, NAMES_ALPHABET, 5, lexicon_bonus=20.0, **soft)
    gap = math.log(plain[0][1] / soft_conf)
    assert soft_text == "JOHN" and 0.99 * exact <= soft_conf <= exact * (1 + 1e-9) and 0.5 < gap < 5.0
    assert ctc_beam_decode(lp, NAMES_ALPHABET, 5, lexicon_bonus=gap + 1e-6, **soft) == [(soft_text, soft_conf)]
    assert ctc_beam_decode(lp, NAMES_ALPHABET, 5, lexicon_bonus=gap - 1e-6, **soft) == plain


def test_soft_lexicon_bonus_goes_to_whole_entries_only():
    # frames read "XAB" clearly; "AB" (X dropped) is less likely. "AB" is the entry: a bonus larger than the gap
    # picks it; "XAB" ends on the entry's characters but is not one (it fell off the trie at X: -1 from then on)
    cls = {ch: i + 1 for i, ch in enumerate("ABX")}
    path = [cls["X"], 0, cls["A"], 0, cls["B"], 0]
    logits = np.where(np.eye(4, dtype=bool)[path], 6.0, 0.0)
    logits[0, 0] = 4.0  # the blank is the runner-up where X is written
    lp = log_softmax(logits[None])
    plain = ctc_beam_decode(lp, "ABX", 8)
    assert plain[0][0] == "XAB"
    for beam in (cy_beam, ref.ctc_beam_decode):
        for entries in (["AB"], ["AB", "B", "XA"]):
            (text, _), = beam(lp, "ABX", 8, entries, lexicon_mode="soft", lexicon_bonus=3.0)
            assert text == "AB"
            assert beam(lp, "ABX", 8, entries, lexicon_mode="soft", lexicon_bonus=1.0) == plain
        assert beam(lp, "ABX", 8, ["XAB"], lexicon_mode="soft", lexicon_bonus=3.0) == plain


def test_insertion_bonus_trades_length(names_lm):
    # "LEON" vs "LEO": the N is weak; a large bonus per character keeps it, a large malus drops it
    cls = {ch: i + 1 for i, ch in enumerate(NAMES_ALPHABET)}
    path = [cls["L"], 0, cls["E"], 0, cls["O"], 0, 0, 0]
    logits = np.where(np.eye(30, dtype=bool)[path], 8.0, 0.0)
    logits[6, cls["N"]] = 7.5
    lp = log_softmax(logits[None])
    assert ctc_beam_decode(lp, NAMES_ALPHABET, 8, name_model=names_lm, insertion_bonus=5.0)[0][0] == "LEON"
    assert ctc_beam_decode(lp, NAMES_ALPHABET, 8, name_model=names_lm, insertion_bonus=-5.0)[0][0] == "LEO"


def test_empty_text_stays_a_result(names_lm):
    blank_frames = log_softmax(np.where(np.arange(30) == 0, 12.0, 0.0)[None, None].repeat(6, axis=1))
    for kw in ({}, {"lexicon": NAMES, "lexicon_mode": "soft"}):
        (text, conf), = ctc_beam_decode(blank_frames, NAMES_ALPHABET, 10, name_model=names_lm, lm_weight=1.0, **kw)
        assert text == "" and conf == pytest.approx(math.exp(6 * blank_frames[0, 0, 0]), rel=1e-6)
    lp = name_logprobs(1, ["ANNA"], 12)
    assert ctc_beam_decode(lp, NAMES_ALPHABET, 4, lengths=[0], name_model=names_lm) == [("", 1.0)]
    assert ctc_beam_decode(lp[:0], NAMES_ALPHABET, 4, name_model=names_lm) == []


def test_hard_lexicon_with_name_model_returns_entries(names_lm):
    rng = np.random.default_rng(2)
    lp = name_logprobs(2, [NAMES[k] for k in rng.integers(0, len(NAMES), size=12)] + ["JOHM", "Q"], 30)
    lexicon = Lexicon(NAMES[:20], NAMES_ALPHABET)
    for text, conf in ctc_beam_decode(lp, NAMES_ALPHABET, 6, lexicon, name_model=names_lm, insertion_bonus=1.0):
        assert (text in lexicon and 0.0 < conf <= 1.0) or (text, conf) == ("", 0.0)
    # "hard" is the default mode: the same call without it
    assert ctc_beam_decode(lp, NAMES_ALPHABET, 6, lexicon, lexicon_mode="hard") == ctc_beam_decode(
        lp, NAMES_ALPHABET, 6, lexicon)


def test_bad_arguments(names_lm):
    lp = name_logprobs(0, ["ANNA"], 10)
    other = NameModel.train(["AB"], "AB")
    cases = [
        (dict(name_model=other), r"trained over the alphabet 'AB'"),
        (dict(name_model="models/names_lm.npz"), r"name_model must be a NameModel.*got str"),
        (dict(name_model=names_lm, lm_weight=-0.1), r"lm_weight must be a real number in \[0, 1e6\]"),
        (dict(lm_weight=float("nan")), "lm_weight"),
        (dict(lm_weight=True), "lm_weight"),
        (dict(insertion_bonus=float("inf")), "insertion_bonus"),
        (dict(insertion_bonus="1"), "insertion_bonus"),
        (dict(lexicon_bonus=2e6), "lexicon_bonus"),
        (dict(lexicon=["ANNA"], lexicon_mode="medium"), r"lexicon_mode must be 'hard' or 'soft', got 'medium'"),
        (dict(lexicon_mode=None), "lexicon_mode"),
    ]
    for beam in (ctc_beam_decode, ref.ctc_beam_decode, cy_beam):
        for kw, msg in cases:
            with pytest.raises(ValueError, match=msg):
                beam(lp, NAMES_ALPHABET, 4, **kw)
    bad = lp.copy()
    bad[0, 3, 2] = np.nan
    for beam in (ref.ctc_beam_decode, cy_beam):
        with pytest.raises(ValueError, match=r"item 0: non-finite value \(nan\) at frame 3"):
            beam(bad, NAMES_ALPHABET, 4, name_model=names_lm)


# ---------------------------------------------------------------------------------------------- builder

def test_builder_removes_the_excluded_labels(tmp_path, capsys):
    from htr.name_model import BuildReport, build_name_model, main

    corpus = tmp_path / "names_corpus.txt"
    corpus.write_text("\n".join(["ZORGLUB"] * 40 + ["zorglub"] * 5 + ["ANNA"] * 30 + ["LEA"] * 20
                                + ["EMPTY", "", "JOSÉ", "X\u00c6"]) + "\n", encoding="utf-8")
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["FILENAME", "IDENTITY"], ["a.jpg", "Zorglub"], ["b.jpg", "UNREADABLE"]])
    model = build_name_model(corpus, labels, faker_locales=(), n_faker=0, order=4, min_context_count=1)
    report = BuildReport(**model.metadata["counts"])
    assert (report.corpus_lines, report.corpus_unusable, report.corpus_removed, report.corpus_kept) == (99, 2, 45, 51)
    assert report.corpus_empty == 1  # the EMPTY line: the empty name "", with its frequency
    assert (report.excluded_labels, report.excluded_found, report.distinct_names) == (1, 1, 4)  # ANNA LEA JOSE ""
    assert model.score("") > model.score("ZORGLUB") + 10.0
    leaky = NameModel.train(["ZORGLUB"] * 45 + ["ANNA"] * 30 + ["LEA"] * 20 + ["JOSE"], NAMES_ALPHABET, 4)
    assert model.score("ZORGLUB") < leaky.score("ZORGLUB") - 10.0
    assert model.score("ANNA") > model.score("ZORGLUB") + 10.0

    with_faker = build_name_model(corpus, labels, faker_locales=("fr_FR",), n_faker=50, order=4)
    counts = with_faker.metadata["counts"]
    assert counts["faker_first"] > 50 and counts["faker_last"] > 50 and counts["faker_pairs"] == 50
    assert with_faker.metadata["sources"]["faker_locales"] == ["fr_FR"]

    assert main(["--corpus", str(corpus), "--exclude-labels", str(labels), "--faker-locales", "",
                 "--out", str(tmp_path / "lm.npz"), "--order", "3"]) == 0
    out = capsys.readouterr().out
    assert "45 removed" in out and "wrote" in out
    assert NameModel.load(tmp_path / "lm.npz").order == 3
    with pytest.raises(FileNotFoundError, match="names corpus not found"):
        build_name_model(tmp_path / "missing.txt", labels)
