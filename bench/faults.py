"""Fault injection under load, against the real tritonserver: what a client sees, and how long it lasts.

Each mode starts its own tritonserver (``htr.serve.TritonServer``, the code behind ``htr serve``) on free
loopback ports, drives ``--threads`` closed-loop client threads (``htr.client.HTRClient`` over gRPC, one
real labelled image per request, each thread with its own connection), injects one fault, keeps the load
going, then stops everything. Nothing runs longer than its stated bounds.

  kill-stub  SIGKILL the python-backend stub of one model instance (``--model crnn``, or ``preprocess``,
             ``ctc_decode``). Triton 2.51 does not restart a dead stub: every request that reaches it fails
             with "Stub process '<instance>' is not healthy" and the health endpoints keep answering 200.
             The server runs with ``--model-control explicit --heal-stubs``: its stub watchdog sees the stub
             gone and reloads the model; the clients retry the failed requests (``--retries``/``--backoff``).
             ``--no-heal`` shows Triton on its own (the model stays broken; requests are lost). Either way
             Triton never frees the dead instance once requests reached it: the server's stop afterwards
             waits out its exit timeout and tritonserver exits 1 (reported as server_stop_s).
  sigterm    stop the server as ``htr serve`` does on SIGTERM while requests are in flight (batches of
             ``--batch`` images, so they are): in-flight requests must complete, requests sent while it
             drains must be refused with a typed client error (``ModelNotReadyError`` or
             ``ServerUnreachableError``), requests after the exit must get ``ServerUnreachableError`` fast,
             and tritonserver must exit 0 within its drain timeout. With ``--model-control explicit`` (the
             default here) the ensembles are unloaded first, so the requests inside them finish;
             ``--model-control none`` shows tritonserver's own drain, which fails them (it stops every
             model's scheduler at once, and an ensemble request's next step is refused).
  hot-load   drop a new numbered version of ``--model`` (a copy of the serving one, staged beside the
             repository and renamed into it in one step) into a copy of the repository served with
             ``--model-control poll`` (or ``explicit`` + the load API): zero failed requests, and the new
             version must be the one answering afterwards (its own inference statistics, and the version
             a direct request reports).

The repository comes from ``--repository`` (copied first: the runs write into it) or, by default, is built
into a temporary folder by ``export/build_engine.py --formats torchscript`` from ``--checkpoint``.
The scenarios themselves are :mod:`htr.testing.faults` (``tests/test_faults.py`` runs them too); this is
their command line.

What is reported (printed, and written in ``--json`` under the mode's name plus the options that change
what is measured, e.g. "kill-stub --model preprocess"):

  sent / ok_first_attempt / ok_after_retry / lost   requests of the load threads; lost = failed after
                                                     every retry of the client's RetryPolicy
  recovery_s    kill-stub: from the SIGKILL to the first success of a probe request (sent every
                ``--probe-interval`` s through the ensemble, no retries) that started after the kill
  degraded_s    kill-stub: from the SIGKILL to the end of the last failed probe request
  detect_s, reload_s   kill-stub: the watchdog's first look that missed the stub; the reload done
                (explicit: the load API returned; poll: the new stub runs, its model still initialising)
  drain_s       sigterm: from the start of the stop to tritonserver's exit
  p50_ms, p99_ms   latency of the successful requests, retries included

Examples::

    python bench/faults.py kill-stub                       # crnn, 4 threads, explicit model control + watchdog
    python bench/faults.py kill-stub --model preprocess --no-heal
    python bench/faults.py sigterm --model-control none   # tritonserver's own drain, for comparison
    python bench/faults.py hot-load --model-control explicit
    python bench/faults.py all --repository model_repository
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
from htr.testing.faults import MODES, hot_load, kill_stub, report_lines, sigterm, verdict
from htr.testing.load import load_blobs, say
from htr.testing.repository import build_cpu_repository
from htr.testing.server import copy_repository

RESULTS = ROOT / "bench" / "results" / "faults.json"


def _key(mode: str, args) -> str:
    """The results key: the mode, plus the options that change what is measured."""
    parts = [mode]
    if mode in ("kill-stub", "hot-load") and args.model != "crnn":
        parts.append(f"--model {args.model}")
    if args.model_control:
        parts.append(f"--model-control {args.model_control}")
    if mode == "kill-stub" and args.no_heal:
        parts.append("--no-heal")
    return " ".join(parts)


def run_mode(mode: str, args, repository: Path, blobs: list[bytes], workdir: Path) -> dict:
    repo = copy_repository(repository, workdir / mode)
    if mode == "kill-stub":
        return kill_stub(repo, blobs, workdir / mode, model=args.model, threads=args.threads, warmup_s=args.warmup,
                         max_s=args.max_seconds, retries=args.retries if args.retries is not None else 8,
                         backoff_s=args.backoff, probe_interval=args.probe_interval, heal=not args.no_heal,
                         model_control=args.model_control or "explicit", poll_interval=args.poll_interval)
    if mode == "sigterm":
        return sigterm(repo, blobs, workdir / mode, threads=args.threads, batch=args.batch, warmup_s=args.warmup,
                       drain_timeout=args.drain_timeout, retries=args.retries if args.retries is not None else 2,
                       backoff_s=args.backoff, model_control=args.model_control or "explicit")
    return hot_load(repo, blobs, workdir / mode, model=args.model, model_control=args.model_control or "poll",
                    poll_interval=args.poll_interval, threads=args.threads, warmup_s=args.warmup,
                    max_s=args.max_seconds * 2, retries=args.retries if args.retries is not None else 2,
                    backoff_s=args.backoff)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/faults.py", description=__doc__,
                                 formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                            argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("mode", choices=[*MODES, "all"], help="the fault to inject ('all': each in turn)")
    ap.add_argument("--repository", type=Path, default=None,
                    help="model repository to copy and serve (default: build one from --checkpoint)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt")
    ap.add_argument("--data", type=Path, default=default_data_dir(),
                    help="Kaggle-layout folder: labelled/*.jpg are sent")
    ap.add_argument("--threads", type=int, default=4, help="closed-loop client threads")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the fault")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="longest wait for recovery after the fault")
    ap.add_argument("--model", default="crnn", help="kill-stub: whose stub is killed; hot-load: which model "
                    "gets a new version (crnn, preprocess, ctc_decode)")
    ap.add_argument("--retries", type=int, default=None,
                    help="client retries (default: 8 for kill-stub, sized to cover a reload; else the client's 2)")
    ap.add_argument("--backoff", type=float, default=0.25, help="client backoff: first wait in s, doubled per retry")
    ap.add_argument("--probe-interval", type=float, default=0.1, help="kill-stub: seconds between probe requests")
    ap.add_argument("--no-heal", action="store_true", help="kill-stub: no stub watchdog (Triton on its own)")
    ap.add_argument("--batch", type=int, default=8, help="sigterm: images per request (long enough to be in flight)")
    ap.add_argument("--drain-timeout", type=int, default=30, help="sigterm: tritonserver --exit-timeout-secs")
    ap.add_argument("--model-control", choices=["none", "poll", "explicit"], default=None,
                    help="tritonserver model control (default: explicit for kill-stub and sigterm, poll for hot-load). "
                         "kill-stub: explicit reloads at once, poll at the next poll; sigterm: explicit drains the "
                         "ensembles before SIGTERM, none shows tritonserver's own drain; hot-load: poll finds the "
                         "new version, explicit loads it through the API")
    ap.add_argument("--poll-interval", type=int, default=1, help="poll mode: seconds between repository polls")
    ap.add_argument("--json", type=Path, default=RESULTS, help="results file; each mode writes its own key")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (repository copies, server logs)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    blobs = load_blobs(require_data(args.data))
    workdir = Path(tempfile.mkdtemp(prefix="htr-faults-"))
    say(f"{machine()}; working folder {workdir}")
    results, verdicts = {}, []
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
        for mode in MODES if args.mode == "all" else (args.mode,):
            say(f"== {mode}")
            r = run_mode(mode, args, repository.resolve(), blobs, workdir)
            lines = report_lines(mode, r) + verdict(mode, r)
            print("\n".join(lines), flush=True)
            verdicts += lines
            results[_key(mode, args)] = {"date": stamp(), "machine": machine(),
                             "command": "python bench/faults.py " + " ".join(sys.argv[1:] if argv is None else argv),
                             "verdict": verdict(mode, r), **r}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(previous | results, indent=2) + "\n")
        say(f"wrote {args.json}")
    return 1 if any(v.startswith("FAIL") for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
