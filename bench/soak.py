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
the CPU the server would otherwise have.

Examples::

    python bench/soak.py                                  # measure the max, then 10 minutes at 70 %
    python bench/soak.py --duration 60 --window 20        # a short check of the set-up
    python bench/soak.py --max-rps 120 --repository model_repository
"""
from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, ROOT, machine, stamp  # noqa: E402
from faults import (  # noqa: E402
    Load, Outcome, build_repository, counting_client, load_blobs, percentiles_ms, say, start_server,
)

from htr.client import HTRClientError  # noqa: E402
from htr.serve import TritonServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"


def rss_bytes(server: TritonServer) -> int:
    """Resident memory of tritonserver and its python-backend stubs."""
    total = 0
    for pid in [server.pid, *(s.pid for s in server.stubs())]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, TypeError):
            pass  # gone meanwhile
    return total


def max_throughput(url: str, blobs: list[bytes], threads: int, seconds: float, warmup_s: float) -> dict:
    """Closed loop, ``threads`` requests in flight: completed requests per second after a warm-up."""
    load = Load(url, blobs, threads, name="probe").start()
    time.sleep(warmup_s)
    t0, done0 = time.monotonic(), load.counts()[0]
    time.sleep(seconds)
    t1, done1 = time.monotonic(), load.counts()[0]
    load.stop()
    timed = [o for o in load.outcomes if t0 <= o.start and o.end <= t1]
    return {"rps": (done1 - done0) / (t1 - t0), "threads": threads, "seconds": round(t1 - t0, 1),
            "failures": sum(not o.ok for o in load.outcomes), **percentiles_ms([o.seconds for o in timed if o.ok])}


class OpenLoop:
    """Requests released on a fixed schedule (``rate`` per second) to ``workers`` threads, for ``seconds``."""

    def __init__(self, url: str, blobs: list[bytes], rate: float, seconds: float, workers: int, retries: int,
                 backoff_s: float):
        self.rate, self.seconds, self.blobs = rate, seconds, blobs
        self.clients = [counting_client(url, retries, backoff_s) for _ in range(workers)]
        self.due: queue.Queue = queue.Queue()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self.t0 = 0.0

    def run(self, on_tick=None, tick_s: float = 1.0) -> None:
        workers = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(len(self.clients))]
        for w in workers:
            w.start()
        self.t0 = time.monotonic() + 0.1
        n, last_tick = int(self.rate * self.seconds), self.t0
        for i in range(n):
            at = self.t0 + i / self.rate
            while (now := time.monotonic()) < at:
                time.sleep(min(at - now, 0.01))
            self.due.put((i, at))
            if on_tick is not None and now - last_tick >= tick_s:
                last_tick = now
                on_tick(now - self.t0)
        for _ in workers:
            self.due.put(None)
        for w in workers:
            w.join()
        for c in self.clients:
            c.close()

    def _work(self, k: int) -> None:
        client, blobs = self.clients[k], self.blobs
        count = client.retry.count
        while (item := self.due.get()) is not None:
            i, at = item
            count[0] = 0
            try:
                pred = client.recognize([blobs[i % len(blobs)]])[0]
                error = pred.error
            except HTRClientError as e:
                error = f"{type(e).__name__}: {e}"
            outcome = Outcome(k, at, time.monotonic(), error is None, count[0], error)
            with self._lock:
                self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


def window_stats(outcomes: list[Outcome], t0: float, window: float, rss: dict[int, int]) -> list[dict]:
    """Per window of scheduled time: requests, rate, failures, retries, latency percentiles, RSS at its end."""
    rows = []
    n = int(max(o.start - t0 for o in outcomes) // window) + 1 if outcomes else 0
    for w in range(n):
        sel = [o for o in outcomes if w * window <= o.start - t0 < (w + 1) * window]
        rows.append({"window": w + 1, "requests": len(sel), "rps": round(len(sel) / window, 1),
                     "failures": sum(not o.ok for o in sel), "retries": sum(o.retries for o in sel),
                     **percentiles_ms([o.seconds for o in sel if o.ok]), "rss_mib": round(rss.get(w, 0) / 2**20, 1)})
    return rows


def soak(server: TritonServer, blobs: list[bytes], args) -> dict:
    if args.max_rps:
        probe = {"rps": args.max_rps, "given": True}
        say(f"maximum throughput given: {args.max_rps:g} requests/s")
    else:
        say(f"measuring the maximum throughput: {args.probe_threads} closed-loop threads, {args.probe_seconds:g} s")
        probe = max_throughput(server.url_grpc, blobs, args.probe_threads, args.probe_seconds, args.warmup)
        say(f"maximum: {probe['rps']:.1f} requests/s (p50 {probe['p50_ms']} ms, p99 {probe['p99_ms']} ms, "
            f"{probe['failures']} failures)")
    rate = args.fraction * probe["rps"]
    say(f"soak: {rate:.1f} requests/s ({args.fraction:.0%} of the maximum) for {args.duration:g} s, "
        f"{args.workers} workers, windows of {args.window:g} s")
    loop = OpenLoop(server.url_grpc, blobs, rate, args.duration, args.workers, args.retries, args.backoff)
    rss: dict[int, int] = {}
    rss_before = rss_bytes(server)

    def tick(elapsed: float) -> None:
        w = int(elapsed // args.window)
        if w > 0 and (w - 1) not in rss:
            rss[w - 1] = rss_bytes(server)  # the end of window w - 1
        if int(elapsed) % 10 == 0:
            done = loop.snapshot()
            late = [o for o in done if o.start >= loop.t0 + elapsed - 10]
            p99 = percentiles_ms([o.seconds for o in late if o.ok])["p99_ms"]
            say(f"  {elapsed:5.0f} s: {len(done)} requests, {sum(not o.ok for o in done)} failed, p99 of the last "
                f"10 s {p99} ms, server RSS {rss_bytes(server) / 2**20:.0f} MiB")

    loop.run(on_tick=tick)
    rss_end = rss_bytes(server)
    windows = int(round(args.duration / args.window))
    rss.setdefault(windows - 1, rss_end)
    rss_start = rss.get(0, rss_end)  # the end of the first window
    rows = window_stats(loop.outcomes, loop.t0, args.window, rss)[:windows]
    p99s = [r["p99_ms"] for r in rows if r["p99_ms"]]
    outcomes = loop.outcomes
    return {
        "max_throughput": probe,
        "target_rps": round(rate, 2),
        "achieved_rps": round(len(outcomes) / args.duration, 2),
        "duration_s": args.duration,
        "window_s": args.window,
        "workers": args.workers,
        "client_retry_policy": {"retries": args.retries, "backoff_s": args.backoff},
        "requests": len(outcomes),
        "failures": sum(not o.ok for o in outcomes),
        "retries": sum(o.retries for o in outcomes),
        **percentiles_ms([o.seconds for o in outcomes if o.ok]),
        "p99_stability": round(max(p99s) / min(p99s), 3) if p99s else None,
        "rss_before_soak_mib": round(rss_before / 2**20, 1),
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2) if rss_start else None,
        "rss_growth_since_before_soak_pct": round(100 * (rss_end - rss_before) / rss_before, 2) if rss_before else None,
        "windows": rows,
        "errors": sorted({o.error for o in outcomes if not o.ok})[:5],
    }


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
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder: labelled/*.jpg are sent")
    ap.add_argument("--json", type=Path, default=RESULTS, help="results file")
    args = ap.parse_args(argv)
    if args.window > args.duration:
        ap.error("--window must not exceed --duration")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    blobs = load_blobs(args.data)
    workdir = Path(tempfile.mkdtemp(prefix="htr-soak-"))
    say(f"{machine()}; working folder {workdir}")
    try:
        repository = args.repository
        if repository is None:
            say(f"building the CPU repository from {args.checkpoint} (export/build_engine.py --formats torchscript)")
            repository = build_repository(workdir / "built" / "model_repository", args.checkpoint, args.data)
        server = start_server(repository.resolve(), workdir / "tritonserver.log")
        try:
            r = soak(server, blobs, args)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n| window | requests | req/s | failures | retries | p50 ms | p95 ms | p99 ms | server RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in r["windows"]:
        print(f"| {w['window']} | {w['requests']} | {w['rps']} | {w['failures']} | {w['retries']} | {w['p50_ms']} "
              f"| {w['p95_ms']} | {w['p99_ms']} | {w['rss_mib']} |")
    checks = [("no failed request", r["failures"] == 0, f"{r['failures']} of {r['requests']} ({r['retries']} retries)"),
              (f"p99 stability (max/min per window) <= {args.max_p99_ratio:g}",
               r["p99_stability"] is not None and r["p99_stability"] <= args.max_p99_ratio, f"{r['p99_stability']}"),
              (f"server memory growth <= {args.max_rss_growth:g} %",
               r["rss_growth_pct"] is not None and r["rss_growth_pct"] <= args.max_rss_growth,
               f"{r['rss_start_mib']} MiB after window 1 -> {r['rss_end_mib']} MiB at the end "
               f"({r['rss_growth_pct']} %; {r['rss_before_soak_mib']} MiB before the soak)")]
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
