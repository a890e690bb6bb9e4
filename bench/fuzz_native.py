"""Longer coverage-guided fuzzing (atheris) of the native entry points: decode_images, preprocess_batch,
ctc_greedy_decode, ctc_beam_decode (and with a name model: ctc_beam_decode_name_model), each against the
NumPy reference (``htr.testing.fuzz_targets``).

Each target runs in turn in its own subprocess for ``--seconds``, from the corpus kept in
``--corpus/<target>`` (grown by every run, so later runs start where earlier ones stopped). A failure (a
crash, an exception other than ValueError, a result that differs from the reference) stops that target and
writes the input to ``--artifacts``; replay it with ``python -m htr.testing.fuzz_targets TARGET INPUT``.
``tests/test_fuzz_native.py`` runs the same targets for a few seconds each.

Coverage is Python-level (wrappers, checks, reference, PIL's decoders); the Cython kernels are exercised
and compared on every input but not instrumented (see ``htr.testing.fuzz_targets``).

Examples::

    python bench/fuzz_native.py                                   # 10 minutes per target
    python bench/fuzz_native.py --seconds 60 --targets ctc_beam_decode
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import comma_list, machine, stamp, write_json

from htr.paths import ROOT
from htr.testing.fuzz_targets import TARGETS, run_target

FUZZ_DIR = ROOT / "build" / "fuzz"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/fuzz_native.py", description=__doc__,
                                 formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                            argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--seconds", type=float, default=600.0, help="fuzzing time per target")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of targets")
    ap.add_argument("--corpus", type=Path, default=FUZZ_DIR / "corpus", help="corpus folder, one sub-folder per target")
    ap.add_argument("--artifacts", type=Path, default=FUZZ_DIR / "artifacts", help="where failing inputs are written")
    ap.add_argument("--seed", type=int, default=0, help="libFuzzer seed (0: a new one each run)")
    ap.add_argument("--max-len", type=int, default=4096, help="largest input libFuzzer generates (bytes)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args(argv)
    args.targets = comma_list(ap, args.targets, TARGETS, "targets")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| target | seconds | inputs run | coverage | corpus | result |\n|---|---|---|---|---|---|", flush=True)
    for target in args.targets:
        corpus = args.corpus / target
        run = run_target(target, args.seconds, args.artifacts, corpus=corpus, seed=args.seed, max_len=args.max_len)
        result = "PASS" if run.ok else f"FAIL: {', '.join(run.failing_inputs) or f'exit status {run.returncode}'}"
        rows.append({"target": target, "seconds": round(run.seconds, 1), "runs": run.runs, "coverage": run.coverage,
                     "corpus_files": sum(1 for _ in corpus.iterdir()), "ok": run.ok,
                     "failing_inputs": run.failing_inputs})
        print(f"| {target} | {run.seconds:.0f} | {run.runs} | {run.coverage} | {rows[-1]['corpus_files']} | {result} |",
              flush=True)
        if not run.ok:
            print(run.output[-4000:], file=sys.stderr)
    write_json(args.json, {"date": stamp(), "machine": machine(), "seconds_per_target": args.seconds,
                           "targets": rows})
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
