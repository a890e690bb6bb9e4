"""CTC decoding benchmark: the Cython kernels against what a user would otherwise run.

Inputs are deterministic, realistic "peaky" log-probabilities ``(N, T, C)``: name-like label sequences
(drawn from the names corpus when it is present, else generated), aligned to frames with blanks,
logits = ``--peak`` at the aligned class + gaussian noise, some frames given a confusable runner-up,
then log_softmax. Goals (median of repeats, single thread unless stated):

1. greedy: >= 3x a vectorised NumPy decoder and >= 30x a per-frame pure-Python loop; same texts;
2. beam (width 10, no lexicon): >= 20x ``pyctcdecode`` (no LM, same beam width, same token threshold)
   with the same best paths; also reported: beam with an 80k-entry lexicon, and threads=2;
3. beam (width 10) with the name model (``--name-model``, else one trained on the label pool), alone and
   with the lexicon in soft mode: >= 2,000 images/s on one thread, on the served shape ``(N, 96, 30)``
   (``--lm-frames``; the served model reads width 384 / 4 = 96 frames). ``--real-logprobs`` times the same
   calls on a saved ``(N, T, 30)`` array of real model outputs as well.

Pin the process to one core for the single-thread figures (``taskset -c 1 python bench/decode_bench.py``).

Example: ``python bench/decode_bench.py --json bench/results/decode.json``
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from htr.preprocess import Lexicon, NameModel, ctc_beam_decode, ctc_greedy_decode
from htr.preprocess._ctc_checks import DEFAULT_PRUNE_LOGP
from htr.paths import ROOT, default_data_dir

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ -'"
HERE = Path(__file__).resolve().parent
DATA = default_data_dir()  # $HTR_DATA, else ../shared/data/kaggle_names
DEFAULT_NAMES = DATA / "names_corpus.txt"
DEFAULT_NAME_MODEL = ROOT / "models" / "names_lm.npz"  # written by `python -m htr.name_model`


# ------------------------------------------------------------------------------------------------ data

def load_names(path: Path) -> list[str] | None:
    """Corpus lines uppercased, cut to alphabet characters, spaces collapsed; EMPTY/UNREADABLE dropped."""
    if not path.is_file():
        return None
    allowed = set(ALPHABET)
    names = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name = " ".join("".join(ch for ch in line.upper() if ch in allowed).split())
        if name and name not in {"EMPTY", "UNREADABLE"}:
            names.append(name)
    return names


def synthetic_names(rng: np.random.Generator, n: int) -> list[str]:
    """Pronounceable fake names (consonant-vowel syllables, some hyphenated or two-word)."""
    cons, vows = "BCDFGHJKLMNPRSTVZ", "AEIOUY"

    def word():
        return "".join(rng.choice(list(cons)) + rng.choice(list(vows)) for _ in range(rng.integers(1, 5)))

    out = []
    for _ in range(n):
        sep = rng.choice(["", "", "", "-", " ", "'"])
        out.append(word() + (sep + word() if sep else ""))
    return out


def make_logprobs(labels: list[str], t: int, rng: np.random.Generator, peak: float, noise: float,
                  confuse: float) -> np.ndarray:
    """(N, T, C) float32 log-probs whose best path reads ``labels`` (blank = class 0)."""
    c = len(ALPHABET) + 1
    logits = rng.normal(0.0, noise, size=(len(labels), t, c))
    for i, text in enumerate(labels):
        classes = [ALPHABET.index(ch) + 1 for ch in text]
        # frames: a blank gap before each character (one is required between repeats), 1-3 frames per
        # character; shrink the longest runs, then the optional gaps, until the path fits in t frames
        required = np.array([k > 0 and cls == classes[k - 1] for k, cls in enumerate(classes)], int)
        gaps = required + rng.integers(0, 2, size=len(classes))
        runs = rng.integers(1, 4, size=len(classes))
        if required.sum() + len(classes) > t:
            raise ValueError(f"label {text!r} does not fit in {t} frames")
        while gaps.sum() + runs.sum() > t:
            if runs.max() > 1:
                runs[runs.argmax()] -= 1
            else:
                gaps[np.flatnonzero(gaps > required)[0]] -= 1
        path = [k for cls, gap, run in zip(classes, gaps, runs) for k in [0] * gap + [cls] * run]
        start = int(rng.integers(0, t - len(path) + 1))
        path = [0] * start + path + [0] * (t - start - len(path))
        logits[i, np.arange(t), path] += peak
        # a confusable runner-up on some frames (what makes beam search differ from greedy)
        frames = np.flatnonzero(rng.random(t) < confuse)
        logits[i, frames, rng.integers(1, c, size=frames.size)] += peak * rng.uniform(0.6, 0.95, size=frames.size)
    logits -= logits.max(axis=2, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))).astype(np.float32)


# ------------------------------------------------------------------------------------------- baselines

def numpy_greedy(logprobs: np.ndarray, alphabet: str, blank: int = 0) -> list[tuple[str, float]]:
    """A vectorised best-path decoder as a NumPy user would write it."""
    best = logprobs.argmax(axis=2)  # (N, T)
    path_logp = np.take_along_axis(logprobs, best[:, :, None], axis=2)[:, :, 0].astype(np.float64).sum(axis=1)
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    codes = np.insert(np.array([ord(ch) for ch in alphabet], np.uint32), blank, 0)[best]  # (N, T)
    conf = np.exp(path_logp)
    return [(codes[i][keep[i]].tobytes().decode("utf-32-le"), float(conf[i])) for i in range(len(best))]


def python_greedy(logprobs: np.ndarray, alphabet: str, blank: int = 0) -> list[tuple[str, float]]:
    """A per-frame pure-Python loop decoder."""
    out = []
    for item in logprobs.tolist():
        chars, prev, logp = [], -1, 0.0
        for frame in item:
            c = max(range(len(frame)), key=frame.__getitem__)
            logp += frame[c]
            if c != blank and c != prev:
                chars.append(alphabet[c - 1 if c > blank else c])
            prev = c
        out.append(("".join(chars), math.exp(logp)))
    return out


def pyctcdecode_decoder():
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    try:
        from pyctcdecode import build_ctcdecoder
    except ImportError:
        return None
    return build_ctcdecoder([""] + list(ALPHABET))


def ctc_text_logp(logprobs: np.ndarray, text: str, blank: int = 0) -> float:
    """log P(text | one item's (T, C) log-probs), summed over all alignments (CTC forward algorithm)."""
    ext = [blank]
    for ch in text:
        ext += [ALPHABET.index(ch) + 1, blank]
    lp = logprobs.astype(np.float64)
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = lp[0, blank]
    if len(ext) > 1:
        alpha[1] = lp[0, ext[1]]
    skip = np.array([s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] for s in range(len(ext))])
    for t in range(1, len(lp)):
        prev = alpha.copy()
        acc = prev.copy()
        acc[1:] = np.logaddexp(acc[1:], prev[:-1])
        acc[2:] = np.where(skip[2:], np.logaddexp(acc[2:], prev[:-2]), acc[2:])
        alpha = acc + lp[t, ext]
    return float(np.logaddexp(alpha[-1], alpha[-2]) if len(ext) > 1 else alpha[-1])


# -------------------------------------------------------------------------------------------- harness

def timeit(fn, repeats: int, number: int = 1) -> float:
    """Median seconds per call over ``repeats`` runs of ``number`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def fmt_t(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="N, items per batch")
    ap.add_argument("--frames", type=int, default=64, help="T, frames per item")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    ap.add_argument("--peak", type=float, default=14.0, help="logit added to the aligned class")
    ap.add_argument("--noise", type=float, default=1.5, help="std of the gaussian logit noise")
    ap.add_argument("--confuse", type=float, default=0.1, help="fraction of frames with a confusable runner-up")
    ap.add_argument("--beam-width", type=int, default=10, help="beam width (ours and pyctcdecode)")
    ap.add_argument("--prune-logp", type=float, default=DEFAULT_PRUNE_LOGP,
                    help="our prune_logp, also pyctcdecode's token_min_logp so both try the same characters")
    ap.add_argument("--repeats", type=int, default=21, help="timed repeats of the fast decoders (median)")
    ap.add_argument("--slow-repeats", type=int, default=3, help="timed repeats of the slow baselines (median)")
    ap.add_argument("--names", type=Path, default=DEFAULT_NAMES, help="names corpus (labels and the lexicon)")
    ap.add_argument("--lexicon-size", type=int, default=80_000, help="lexicon entries (distinct names first)")
    ap.add_argument("--name-model", type=Path, default=DEFAULT_NAME_MODEL,
                    help="name model (.npz) for goal 3; when absent one is trained on the label pool")
    ap.add_argument("--lm-frames", type=int, default=96, help="T of goal 3's inputs (the served model's frames)")
    ap.add_argument("--lm-batch", type=int, default=256, help="N of goal 3's inputs")
    ap.add_argument("--lm-weight", type=float, default=0.5, help="lm_weight of goal 3")
    ap.add_argument("--real-logprobs", type=Path, default=None,
                    help="optional .npy of real model outputs (N, T, 30) to time goal 3's calls on too")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    names = load_names(args.names)
    if names is None:
        print(f"NOTE: names corpus not found at {args.names}: using generated names for labels and lexicon")
        pool = synthetic_names(rng, max(args.lexicon_size, 1))
        source = "synthetic"
    else:
        pool = names
        source = str(args.names)
    # labels: corpus lines (with their real frequencies) that fit the frames
    fit = [s for s in pool if 2 * len(s) <= args.frames]
    labels = [fit[k] for k in rng.integers(0, len(fit), size=args.batch)]
    lp = make_logprobs(labels, args.frames, rng, args.peak, args.noise, args.confuse)
    print(f"inputs: logprobs {lp.shape} float32, alphabet {ALPHABET!r} + blank 0, labels from {source}")
    print(f"mean characters tried per frame at prune_logp={args.prune_logp}: "
          f"{float(((lp[:, :, 1:] >= args.prune_logp)).sum(axis=2).mean()):.1f}")
    rows, figures, ok_all = [], {"shape": list(lp.shape), "labels": source, "python": sys.version.split()[0],
                                 "machine": platform.machine(), "cpus": os.cpu_count()}, True

    def goal(name, ours, base, target, extra=""):
        nonlocal ok_all
        speedup = base / ours
        ok = speedup >= target
        ok_all &= ok
        verdict = "PASS" if ok else "FAIL"
        rows.append((name, fmt_t(ours), fmt_t(base), f"{speedup:.1f}x", f">= {target:g}x", verdict, extra))
        figures[name] = {"ours_s": ours, "baseline_s": base, "speedup": speedup, "target": target, "pass": ok}

    # 1. greedy
    ours = ctc_greedy_decode(lp, ALPHABET)
    same_np = [t for t, _ in ours] == [t for t, _ in numpy_greedy(lp, ALPHABET)]
    same_py = [t for t, _ in ours] == [t for t, _ in python_greedy(lp, ALPHABET)]
    conf_ok = np.allclose([c for _, c in ours], [c for _, c in numpy_greedy(lp, ALPHABET)], rtol=1e-6, atol=0)
    t_greedy = timeit(lambda: ctc_greedy_decode(lp, ALPHABET), args.repeats, 20)
    t_np = timeit(lambda: numpy_greedy(lp, ALPHABET), args.repeats, 5)
    t_py = timeit(lambda: python_greedy(lp, ALPHABET), args.slow_repeats)
    goal("greedy vs NumPy", t_greedy, t_np, 3, f"same texts: {same_np}, confidences match: {conf_ok}")
    goal("greedy vs pure Python", t_greedy, t_py, 30, f"same texts: {same_py}")
    ok_all &= same_np and same_py and conf_ok
    figures["greedy_same_texts"] = same_np and same_py
    greedy_hits = sum(t == lab for (t, _), lab in zip(ours, labels))

    # 2. beam, no lexicon, against pyctcdecode
    beam = lambda **kw: ctc_beam_decode(lp, ALPHABET, args.beam_width, prune_logp=args.prune_logp, **kw)  # noqa: E731
    ours_beam = beam()
    t_beam = timeit(beam, args.repeats, 5)
    decoder = pyctcdecode_decoder()
    if decoder is None:
        print("NOTE: pyctcdecode is not installed: beam-vs-pyctcdecode goal not measured")
        figures["beam vs pyctcdecode"] = None
        ok_all = False
    else:
        def pyctc():
            return [decoder.decode(item, beam_width=args.beam_width, token_min_logp=args.prune_logp) for item in lp]

        theirs = pyctc()
        t_pyctc = timeit(pyctc, args.slow_repeats)
        # pyctcdecode joins words with single spaces (" ".join(text.split())); compare on that form too
        exact = sum(a == b for (a, _), b in zip(ours_beam, theirs))
        normalised = sum(" ".join(a.split()) == b for (a, _), b in zip(ours_beam, theirs))
        # where the texts differ, which one is more probable (exact CTC probability of each text)?
        differ = [i for i, ((a, _), b) in enumerate(zip(ours_beam, theirs)) if " ".join(a.split()) != b]
        ours_better = sum(ctc_text_logp(lp[i], ours_beam[i][0]) >= ctc_text_logp(lp[i], theirs[i]) for i in differ)
        note = f"; where they differ ours is the more probable text in {ours_better}/{len(differ)}" if differ else ""
        goal(f"beam w{args.beam_width} vs pyctcdecode", t_beam, t_pyctc, 20,
             f"same best path: {exact}/{len(lp)} exact, {normalised}/{len(lp)} whitespace-normalised{note}")
        figures["beam_same_as_pyctcdecode"] = {"exact": exact, "normalised": normalised, "n": len(lp),
                                               "ours_more_probable_where_different": ours_better}
        ok_all &= normalised == len(lp)

    # beam with a lexicon, and threads=2
    # distinct corpus names first, topped up with distinct generated names
    words = dict.fromkeys(pool[: 10 * args.lexicon_size])
    n_corpus = min(len(words), args.lexicon_size) if names is not None else 0
    words = list(words)[: args.lexicon_size]
    seen = set(words)
    while len(words) < args.lexicon_size:
        words += [w for w in dict.fromkeys(synthetic_names(rng, args.lexicon_size)) if w not in seen]
        seen.update(words)
        words = words[: args.lexicon_size]
    t0 = time.perf_counter()
    lexicon = Lexicon(words, ALPHABET)
    t_lex_build = time.perf_counter() - t0
    ours_lex = beam(lexicon=lexicon)
    t_beam_lex = timeit(lambda: beam(lexicon=lexicon), args.repeats, 5)
    lex_ok = all(t in lexicon or (t == "" and c == 0.0) for t, c in ours_lex)
    t_beam2 = timeit(lambda: beam(threads=2), args.repeats, 5)
    t_greedy2 = timeit(lambda: ctc_greedy_decode(lp, ALPHABET, threads=2), args.repeats, 20)
    same_threads = beam(threads=2) == ours_beam and ctc_greedy_decode(lp, ALPHABET, threads=2) == ours
    ok_all &= lex_ok and same_threads
    beam_hits = sum(t == lab for (t, _), lab in zip(ours_beam, labels))
    lex_hits = sum(t == lab for (t, _), lab in zip(ours_lex, labels))

    # 3. beam + name model (+ soft lexicon) on the served shape, one thread
    if args.name_model.is_file():
        name_model, lm_source = NameModel.load(args.name_model), str(args.name_model)
    else:
        print(f"NOTE: no name model at {args.name_model}: training one on the label pool (timing only)")
        name_model, lm_source = NameModel.train(pool, ALPHABET, 6, min_context_count=2), "trained on the label pool"
    lm_fit = [s for s in pool if 2 * len(s) <= args.lm_frames]
    lm_labels = [lm_fit[k] for k in rng.integers(0, len(lm_fit), size=args.lm_batch)]
    lm_inputs = {"synthetic": make_logprobs(lm_labels, args.lm_frames, rng, args.peak, args.noise, args.confuse)}
    if args.real_logprobs is not None:
        lm_inputs["real"] = np.load(args.real_logprobs)
    lm_calls = {"name model": {"name_model": name_model, "lm_weight": args.lm_weight},
                "name model + soft lexicon": {"name_model": name_model, "lm_weight": args.lm_weight,
                                              "lexicon": lexicon, "lexicon_mode": "soft"}}
    lm_figures = {}
    for source, x in lm_inputs.items():
        for what, kw in lm_calls.items():
            t_call = timeit(lambda: ctc_beam_decode(x, ALPHABET, args.beam_width, **kw), max(3, args.repeats // 3))
            rate = len(x) / t_call
            name = f"beam w{args.beam_width} + {what}, {source} {tuple(x.shape)}"
            ok = rate >= 2000
            ok_all &= ok
            rows.append((name, fmt_t(t_call), "", f"{rate:,.0f} images/s", ">= 2,000 images/s",
                         "PASS" if ok else "FAIL", "threads=1"))
            lm_figures[name] = {"s_per_batch": t_call, "images_per_s": rate, "pass": ok}
    figures["name_model"] = {"source": lm_source, "states": name_model.n_states, "bytes": name_model.nbytes,
                             "lm_weight": args.lm_weight, "runs": lm_figures}

    print()
    print(f"name model: {figures['name_model']['source']}, {name_model!r}")
    print("| goal | ours (per batch) | baseline | speedup or rate | target | result | check |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("| also measured | time per batch | note |")
    print("|---|---|---|")
    print(f"| greedy, threads=2 | {fmt_t(t_greedy2)} | {t_greedy / t_greedy2:.2f}x threads=1; "
          f"same output: {same_threads} |")
    print(f"| beam w{args.beam_width}, threads=2 | {fmt_t(t_beam2)} | {t_beam / t_beam2:.2f}x threads=1 |")
    print(f"| beam w{args.beam_width} + lexicon ({len(lexicon)} entries: {n_corpus} from the names corpus) | "
          f"{fmt_t(t_beam_lex)} | only lexicon entries or '': {lex_ok} |")
    print(f"| Lexicon build ({len(words)} words, {lexicon.n_nodes} nodes) | {fmt_t(t_lex_build)} | once, reusable |")
    print(f"| labels read back exactly | | greedy {greedy_hits}/{len(lp)}, beam {beam_hits}/{len(lp)}, "
          f"beam+lexicon {lex_hits}/{len(lp)} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPUs, 1-minute load average {load:.2f} at the end: threads=2 figures need two idle "
          "cores (an OpenMP region waits for its slowest thread)")
    print()
    print("ALL GOALS PASS" if ok_all else "SOME GOALS FAIL")
    figures.update({
        "greedy_threads2_s": t_greedy2, "beam_threads2_s": t_beam2, "beam_lexicon_s": t_beam_lex,
        "lexicon_entries": len(lexicon), "lexicon_build_s": t_lex_build, "lexicon_outputs_ok": lex_ok,
        "threads_same_output": same_threads, "label_hits": {"greedy": greedy_hits, "beam": beam_hits,
                                                            "beam_lexicon": lex_hits},
        "load_average_1min": load, "all_pass": ok_all,
    })
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
