"""Fuzz the served pipeline: thousands of mixed good and bad requests over gRPC and HTTP, then check nothing broke.

Starts its own tritonserver (``htr.serve.TritonServer``, the code behind ``htr serve``) on free loopback
ports, on ``--repository`` or, by default, on a repository built into a temporary folder by
``export/build_engine.py --formats torchscript``. ``--threads`` client threads, each with its own gRPC and
HTTP connection, send ``--requests`` requests (after ``--warmup`` more), each of a random category
(described once, in :mod:`htr.testing.serving_fuzz`):

{categories}

The warm-up sends every category over both protocols first, so that buffers Triton and the stubs keep
(a 75 MB request grows them once) are in the baseline. Then it reports, prints and writes to ``--json``:
requests sent and per-category outcomes (as expected / unexpected, with the first unexpected ones),
whether the server is still ready and reads a good image, python-backend stub restarts (the PIDs of
tritonserver's ``triton_python_backend_stub`` children before and after: any change is a restart or a
death), and the resident memory (RSS) of tritonserver + its stubs at the start (after the warm-up) and
at the end, with the growth in percent.

RSS is sampled every ``--sample-every`` s during the run. Under this load it swings by +-15 % from one
sample to the next (an over-size request holds ~75 MB in tritonserver while it is in flight, and freed
memory stays in glibc's per-thread arenas for a while), so one reading at each end measures where the
swing happened to be, not growth. The start and end figures that decide are therefore the medians of the
samples in the first and the last ``--window`` s of the run; the single readings right after the warm-up
and after the run are reported beside them, as is the least-squares slope of RSS over the run.

The run itself is :mod:`htr.testing.serving_fuzz`; this is its command line. The exit status is 1 if
anything was unexpected, a stub changed, the server is not ready, fewer requests
than ``--requests`` were sent (``--max-seconds``), or RSS grew by more than ``--max-growth`` percent.

Examples::

    python bench/fuzz.py                                   # 10,000 requests, 4 threads, temporary repository
    python bench/fuzz.py --requests 500 --max-seconds 120  # a quick run
    python bench/fuzz.py --repository model_repository --threads 8
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from _common import comma_list, machine, require_data, stamp, write_json

from htr.paths import ROOT, default_data_dir
from htr.testing.load import say
from htr.testing import serving_fuzz
from htr.testing.serving_fuzz import CATEGORIES, FuzzError, FuzzOptions, run

RESULTS = ROOT / "bench" / "results" / "fuzz.json"


def _categories() -> str:
    """The category table of :mod:`htr.testing.serving_fuzz`'s docstring, for ``--help``."""
    doc = serving_fuzz.__doc__
    return doc[doc.index("  good "):doc.index("\n\n", doc.index("  good "))]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/fuzz.py", description=__doc__.format(categories=_categories()),
                                 formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                            argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--requests", type=int, default=10_000, help="requests after the warm-up")
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="stop sending after this long (warm-up included) even if fewer requests were sent")
    ap.add_argument("--warmup", type=int, default=500,
                    help="requests before the run is measured (every category, both protocols, then the random mix)")
    ap.add_argument("--threads", type=int, default=4, help="client threads, each with its own gRPC and HTTP connection")
    ap.add_argument("--max-items", type=int, default=8, help="most images in one request")
    ap.add_argument("--exclude", default="", help=f"comma list of categories to leave out ({', '.join(CATEGORIES)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repository", type=Path, default=None,
                    help="model repository to serve (default: build one with export/build_engine.py into a temp dir)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt",
                    help="checkpoint: the repository built by default, and the offline texts compared with")
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="Kaggle-layout folder (labelled/*.jpg)")
    ap.add_argument("--images", type=int, default=64, help="real labelled images in the pool of good items")
    ap.add_argument("--max-growth", type=float, default=10.0, help="RSS growth (percent) above which the run fails")
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples during the run")
    ap.add_argument("--window", type=float, default=30.0,
                    help="RSS at the start / end = median of the samples in the run's first / last this many seconds")
    ap.add_argument("--json", default=str(RESULTS), help="write the results here ('' to skip)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = ap.parse_args(argv)
    args.exclude = comma_list(ap, args.exclude, CATEGORIES, "categories")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    require_data(args.data)
    opts = FuzzOptions(**{k: v for k, v in vars(args).items() if k not in ("json", "no_progress")},
                       progress=not args.no_progress)
    from htr.export.build import ExportError  # imports torch

    try:
        body, log_tail = run(opts)
    except (ExportError, FuzzError) as e:
        raise SystemExit(f"error: {e}") from None
    result = {
        "date": stamp(), "machine": machine(),
        "command": shlex.join(["python", "bench/fuzz.py", *(sys.argv[1:] if argv is None else argv)]),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **body,
    }
    rss, growth, single = result["rss"], result["rss_growth_percent"], result["rss_single_reading"]
    mem_before, mem_after = single["after_warmup"], single["after_run"]
    changed = {k: tuple(v) for k, v in result["stub_changes"].items()}
    say(f"{result['requests']} requests in {result['seconds']:.0f} s ({result['requests_per_s']} req/s) after "
        f"{result['warmup_requests']} warm-up; by protocol {result['by_protocol']}")
    print("\n| category | sent | as expected | unexpected | items read | items refused |\n|---|---|---|---|---|---|")
    for c, row in result["categories"].items():
        print(f"| {c} | {row['sent']} | {row['as_expected']} | {row['unexpected']} | {row.get('items_read', '')} | "
              f"{row.get('items_refused', row.get('refused_requests', ''))} |")
    print(f"\nserver ready and reading after the run: {result['server_ready_after']}")
    print(f"python-backend stub restarts: {len(changed)} {changed or ''}")
    print(f"RSS tritonserver + stubs (median of the first / last {rss['window_s']:g} s of the run): "
          f"{rss['start_mb']:.0f} MiB -> {rss['end_mb']:.0f} MiB ({growth:+.1f} %, limit {args.max_growth:g} %); "
          f"samples {rss['min_mb']:.0f}-{rss['max_mb']:.0f} MiB, slope {rss['slope_mb_per_min']:+.1f} MiB/min")
    print("  per process: " + ", ".join(f"{k} {rss['start_per_process_mb'][k]:.0f} -> {v:.0f}"
                                         for k, v in rss["end_per_process_mb"].items()))
    print(f"  single readings: {mem_before['total_mb']:.0f} MiB right after the warm-up, "
          f"{mem_after['total_mb']:.0f} MiB after the run ({single['growth_percent']:+.1f} %)")
    if result["unexpected"]:
        print("unexpected outcomes (first of each category):")
        for c, ex in result["unexpected_examples"].items():
            print(f"  {c}: {ex[0]}")
        print(f"server log tail:\n{log_tail}")
    print("PASS" if result["ok"] else "FAIL")
    write_json(args.json, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
