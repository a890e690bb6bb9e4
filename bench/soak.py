"""Soak: a long run at a fixed share of the measured maximum throughput. Zero failures, a stable p99 and no
memory growth are the goals (issue #7).

1. Maximum throughput: ``--probe-threads`` closed-loop client threads (``htr.client.HTRClient`` over gRPC,
   one real labelled image per request, through the ensemble ``htr``) for ``--probe-seconds`` after a
   warm-up; max = requests completed per second. ``--max-rps`` skips this and takes the figure given.
2. Soak: an open loop at ``--fraction`` x max for ``--duration`` seconds. A pacer releases one request every
   1/rate s on a fixed schedule to a pool of ``--workers`` threads (each with its own client); a request's
   latency runs from its *scheduled* time, so a server that falls behind shows up in the latency instead of
   silently lowering the rate (no coordinated omission).
3. Every ``--window`` seconds: requests, achieved rate, failures, retries, p50/p95/p99, and the resident
   memory of the server (tritonserver plus its python-backend stubs, VmRSS from /proc).

Goals checked at the end (exit status 1 when one fails): no failed request (after the client's retries;
retries are reported too); p99 stability = max/min of the per-window p99 <= ``--max-p99-ratio``; memory
growth from the end of the first window (allocators and caches warmed up at the soak's rate) to the end of
the soak <= ``--max-rss-growth`` %. The memory before the soak is reported as well.

The server is started here (``htr.serve.TritonServer``, what ``htr serve`` runs) on free loopback ports from
``--repository``, or from a repository built into a temporary folder by ``export/build_engine.py --formats
torchscript``. The client threads share the machine with the server: on a small machine they take part of
the CPU the server would otherwise have. The run itself is :mod:`htr.testing.soak`; this is its command line.

Examples::

    python bench/soak.py                                  # measure the max, then 10 minutes at 70 %
    python bench/soak.py --duration 60 --window 20        # a short check of the set-up
    python bench/soak.py --max-rps 120 --repository model_repository
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import machine, require_data, stamp

from htr.paths import ROOT, default_data_dir
from htr.testing.load import load_blobs, say
from htr.testing.repository import build_cpu_repository
from htr.testing.server import start_server
from htr.testing.soak import checks as soak_checks
from htr.testing.soak import soak

RESULTS = ROOT / "bench" / "results" / "soak.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__,
                                 formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                            argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of soak at the target rate")
    ap.add_argument("--fraction", type=float, default=0.7, help="target rate as a share of the maximum")
    ap.add_argument("--max-rps", type=float, default=None, help="maximum throughput (requests/s); default: measure it")
    ap.add_argument("--probe-threads", type=int, default=8, help="closed-loop threads measuring the maximum")
    ap.add_argument("--probe-seconds", type=float, default=20.0, help="timed seconds of the maximum measurement")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the maximum is timed")
    ap.add_argument("--workers", type=int, default=16,
                    help="client threads of the open loop (the most requests in flight)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per reporting window (p99 per window)")
    ap.add_argument("--retries", type=int, default=2, help="client retries (the client's default policy)")
    ap.add_argument("--backoff", type=float, default=0.2, help="client backoff: first wait in s")
    ap.add_argument("--max-p99-ratio", type=float, default=1.5, help="goal: max/min of the per-window p99")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="goal: server memory growth in %% over the soak")
    ap.add_argument("--repository", type=Path, default=None,
                    help="model repository to serve (default: build one from --checkpoint into a temporary folder)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt")
    ap.add_argument("--data", type=Path, default=default_data_dir(),
                    help="Kaggle-layout folder: labelled/*.jpg are sent")
    ap.add_argument("--json", type=Path, default=RESULTS, help="results file")
    args = ap.parse_args(argv)
    if args.window > args.duration:
        ap.error("--window must not exceed --duration")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    blobs = load_blobs(require_data(args.data))
    workdir = Path(tempfile.mkdtemp(prefix="htr-soak-"))
    say(f"{machine()}; working folder {workdir}")
    try:
        repository = args.repository
        if repository is None:
            say(f"building the CPU repository from {args.checkpoint} (export/build_engine.py --formats torchscript)")
            from htr.export.build import ExportError  # imports torch: only when building

            try:
                repository = build_cpu_repository(workdir / "built" / "model_repository", args.checkpoint,
                                                  args.data, parity_images=8)
            except ExportError as e:
                raise SystemExit(f"error: {e}") from None
        server = start_server(repository.resolve(), workdir / "tritonserver.log")
        try:
            r = soak(server, blobs, duration=args.duration, fraction=args.fraction, max_rps=args.max_rps,
                     probe_threads=args.probe_threads, probe_seconds=args.probe_seconds, warmup=args.warmup,
                     workers=args.workers, window=args.window, retries=args.retries, backoff=args.backoff)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n| window | requests | req/s | failures | retries | p50 ms | p95 ms | p99 ms | server RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in r["windows"]:
        print(f"| {w['window']} | {w['requests']} | {w['rps']} | {w['failures']} | {w['retries']} | {w['p50_ms']} "
              f"| {w['p95_ms']} | {w['p99_ms']} | {w['rss_mib']} |")
    checks = soak_checks(r, args.max_p99_ratio, args.max_rss_growth)
    print(f"\nmax {r['max_throughput']['rps']:.1f} req/s; soak at {r['target_rps']} req/s (achieved "
          f"{r['achieved_rps']}) for {r['duration_s']:g} s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {value}")
    r["verdict"] = [f"{'PASS' if ok else 'FAIL'}: {name}: {value}" for name, ok, value in checks]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"date": stamp(), "machine": machine(),
                   "command": "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv), **r}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
