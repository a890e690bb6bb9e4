"""Soak: a long open-loop run at a fixed share of the measured maximum throughput, judged on zero failures,
a stable p99 and no memory growth (issue #7).

:func:`max_throughput` measures the maximum with a closed :class:`~htr.testing.load.Load`;
:func:`soak` runs an :class:`~htr.testing.load.OpenLoop` at ``fraction`` of it, sampling the server's
resident memory (tritonserver plus its python-backend stubs) at the end of every window; :func:`checks`
states the goals on the result. ``bench/soak.py`` is the command line over these.
"""
from __future__ import annotations

import time

from htr.serve import TritonServer

from .load import Load, OpenLoop, Outcome, percentiles_ms, say
from .server import rss_bytes


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


def soak(server: TritonServer, blobs: list[bytes], *, duration: float = 600.0, fraction: float = 0.7,
         max_rps: float | None = None, probe_threads: int = 8, probe_seconds: float = 20.0, warmup: float = 5.0,
         workers: int = 16, window: float = 60.0, retries: int = 2, backoff: float = 0.2) -> dict:
    """Measure the maximum throughput (unless ``max_rps`` is given), then ``duration`` s at ``fraction`` of it
    from ``workers`` threads; per ``window`` s: requests, rate, failures, retries, percentiles, server RSS."""
    if max_rps:
        probe = {"rps": max_rps, "given": True}
        say(f"maximum throughput given: {max_rps:g} requests/s")
    else:
        say(f"measuring the maximum throughput: {probe_threads} closed-loop threads, {probe_seconds:g} s")
        probe = max_throughput(server.url_grpc, blobs, probe_threads, probe_seconds, warmup)
        say(f"maximum: {probe['rps']:.1f} requests/s (p50 {probe['p50_ms']} ms, p99 {probe['p99_ms']} ms, "
            f"{probe['failures']} failures)")
    rate = fraction * probe["rps"]
    say(f"soak: {rate:.1f} requests/s ({fraction:.0%} of the maximum) for {duration:g} s, "
        f"{workers} workers, windows of {window:g} s")
    loop = OpenLoop(server.url_grpc, blobs, rate, duration, workers, retries, backoff)
    rss: dict[int, int] = {}
    rss_before = rss_bytes(server)

    def tick(elapsed: float) -> None:
        w = int(elapsed // window)
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
    windows = int(round(duration / window))
    rss.setdefault(windows - 1, rss_end)
    rss_start = rss.get(0, rss_end)  # the end of the first window
    rows = window_stats(loop.outcomes, loop.t0, window, rss)[:windows]
    p99s = [r["p99_ms"] for r in rows if r["p99_ms"]]
    outcomes = loop.outcomes
    return {
        "max_throughput": probe,
        "target_rps": round(rate, 2),
        "achieved_rps": round(len(outcomes) / duration, 2),
        "duration_s": duration,
        "window_s": window,
        "workers": workers,
        "client_retry_policy": {"retries": retries, "backoff_s": backoff},
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


def checks(r: dict, max_p99_ratio: float = 1.5, max_rss_growth: float = 5.0) -> list[tuple[str, bool, str]]:
    """The soak's goals on a :func:`soak` result: (goal, met, the figure) for each."""
    return [("no failed request", r["failures"] == 0, f"{r['failures']} of {r['requests']} ({r['retries']} retries)"),
            (f"p99 stability (max/min per window) <= {max_p99_ratio:g}",
             r["p99_stability"] is not None and r["p99_stability"] <= max_p99_ratio, f"{r['p99_stability']}"),
            (f"server memory growth <= {max_rss_growth:g} %",
             r["rss_growth_pct"] is not None and r["rss_growth_pct"] <= max_rss_growth,
             f"{r['rss_start_mib']} MiB after window 1 -> {r['rss_end_mib']} MiB at the end "
             f"({r['rss_growth_pct']} %; {r['rss_before_soak_mib']} MiB before the soak)")]
