"""``htr loadtest``: a bounded, headless Locust run against the served ensemble, with a short summary.

Example::

    htr loadtest                                  # local server on free ports, 16 users, 60 s
    htr loadtest --users 32 --run-time 2m --images ../shared/data/kaggle_names/labelled
    htr loadtest --url 127.0.0.1 --http-port 8000 --grpc-port 8001 --metrics-port 8002   # a running server

Without ``--url`` it starts ``htr serve`` on ``--repository`` (loopback, free ports), waits until it is
ready, runs Locust (``loadtest/locustfile.py``: gRPC and HTTP users, single-image and batch tasks) for
``--run-time``, stops the server and prints images/s (and requests/s), p50/p95/p99 and failures. Reports go to
``--reports`` (default ``loadtest/reports/``): Locust's ``htr_stats.csv``, ``htr_stats_history.csv``,
``htr_failures.csv``, ``htr.html`` and ``htr_final.json`` (exact final counts), and ``summary.json``. The summary also checks Locust's request count
against Triton's own counters (``nv_inference_request_success`` + ``_failure`` of the model, read from
the metrics port before and after): the two should agree.

Load tests target loopback by design; ``--url`` accepts a remote host only with ``--allow-remote``.
Exit status: 0 when the run had no failures, 1 when some requests failed, 2 when it could not run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from htr.runtime.contract import ENSEMBLE

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_REPORTS = ROOT / "loadtest" / "reports"


def triton_request_counts(metrics_url: str, model: str = ENSEMBLE) -> dict[str, float]:
    """``{"success": n, "failure": n}`` summed over versions of ``model`` from Triton's /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(metrics_url, timeout=10) as r:
        text = r.read().decode()
    counts = {"success": 0.0, "failure": 0.0}
    pattern = re.compile(r'^nv_inference_request_(success|failure)\{([^}]*)\} ([0-9.eE+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m and f'model="{model}"' in m.group(2):
            counts[m.group(1)] += float(m.group(3))
    return counts


def locust_command(*, host: str, grpc_url: str, users: int, spawn_rate: float, run_time: str, images: Path,
                   reports: Path, model: str = ENSEMBLE, batch_size: int = 8, user_classes=(), extra=()) -> list[str]:
    reports.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", run_time, "--stop-timeout", "10",
           "--host", host, "--grpc-url", grpc_url, "--images", str(images), "--model", model,
           "--batch-size", str(batch_size), "--csv", str(reports / "htr"), "--csv-full-history",
           "--html", str(reports / "htr.html"), "--json-file", str(reports / "htr_final"),  # Locust appends .json
           "--only-summary", "--loglevel", "WARNING"]
    return cmd + list(extra) + list(user_classes)


def percentile(response_times: dict, count: int, q: float) -> float | None:
    """Locust's own percentile rule on its rounded response-time histogram (``{ms: count}``)."""
    if not count:
        return None
    target, seen = int(count * q), 0
    for ms in sorted(response_times, reverse=True):
        seen += response_times[ms]
        if count - seen <= target:
            return ms
    return min(response_times)


def _entry(kind: str, times: dict, requests: int, failures: int, total_ms: float, seconds: float) -> dict:
    return {"type": kind, "requests": requests, "failures": failures,
            "rps": requests / seconds if seconds > 0 else 0.0, "avg_ms": total_ms / requests if requests else None,
            **{f"p{int(q * 100)}_ms": percentile(times, requests, q) for q in (0.5, 0.95, 0.99)}}


def read_stats(reports: Path) -> dict:
    """Final per-request and aggregated figures from Locust's ``htr_final.json``.

    The JSON is written once, after every user has stopped, so its counts are exact; Locust's
    ``htr_stats.csv`` is rewritten once a second while the run goes and can miss the last second.
    """
    path = reports / "htr_final.json"
    if not path.is_file():
        raise FileNotFoundError(f"Locust wrote no final stats at {path}")
    entries = json.loads(path.read_text())
    per_name, all_times = {}, {}
    requests = failures = 0
    total_ms, first, last = 0.0, float("inf"), 0.0
    for e in entries:
        times = {float(k): v for k, v in e["response_times"].items()}
        seconds = max(e["last_request_timestamp"] - e["start_time"], 1e-9)
        per_name[f'{e["method"]} {e["name"]}'] = _entry(e["method"], times, e["num_requests"], e["num_failures"],
                                                        e["total_response_time"], seconds)
        for k, v in times.items():
            all_times[k] = all_times.get(k, 0) + v
        requests += e["num_requests"]
        failures += e["num_failures"]
        total_ms += e["total_response_time"]
        first, last = min(first, e["start_time"]), max(last, e["last_request_timestamp"])
    total = _entry("all", all_times, requests, failures, total_ms, last - first if entries else 0.0)
    return {"total": total, "by_request": per_name}


def run_locust(cmd: list[str], timeout_s: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Locust as a child process (its gevent monkey-patching stays out of this process)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout_s)


def images_of(stats: dict) -> int:
    """Images sent: each request name ends with its batch in brackets (``htr [8]``, locustfile.py)."""
    total = 0
    for name, e in stats["by_request"].items():
        m = re.search(r"\[(\d+)\]$", name)
        total += e["requests"] * (int(m.group(1)) if m else 1)
    return total


def summarise(stats: dict, triton_delta: dict | None, run_time_s: float) -> str:
    t = stats["total"]
    images = images_of(stats)
    ips = t["rps"] * images / t["requests"] if t["requests"] else 0.0
    lines = [f"images: {images} in {run_time_s:.0f} s = {ips:.1f} images/s ({t['requests']} requests, "
             f"{t['rps']:.1f} req/s); failures: {t['failures']}",
             f"latency ms: p50 {t['p50_ms']}, p95 {t['p95_ms']}, p99 {t['p99_ms']} (avg {t['avg_ms'] or 0:.1f})"]
    for name, e in stats["by_request"].items():
        lines.append(f"  {name:<14} {e['requests']:>6} req  {e['rps']:6.1f}/s  p50 {e['p50_ms']}  "
                     f"p99 {e['p99_ms']}  failures {e['failures']}")
    if triton_delta is not None:
        served = triton_delta["success"] + triton_delta["failure"]
        diff = abs(served - t["requests"]) / max(t["requests"], 1)
        lines.append(f"Triton counted {served:.0f} requests ({triton_delta['success']:.0f} ok, "
                     f"{triton_delta['failure']:.0f} failed): {diff:.2%} from Locust's count")
    return "\n".join(lines)


def _parse_seconds(run_time: str) -> float:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", run_time.strip())
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"run time like 60s, 2m or 1h30m, not {run_time!r}")
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("loadtest", help="bounded headless Locust run against a local server, with a summary",
                       description=__doc__, formatter_class=formatter_class)
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository",
                   help="model repository to serve (ignored with --url); build it with `make repository`")
    p.add_argument("--url", default=None, help="host of an already running server instead of starting one")
    p.add_argument("--http-port", type=int, default=8000, help="with --url: its HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001, help="with --url: its gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="with --url: its metrics port")
    p.add_argument("--allow-remote", action="store_true", help="allow a --url that is not loopback")
    p.add_argument("--users", type=int, default=16, help="concurrent Locust users (split across gRPC and HTTP)")
    p.add_argument("--spawn-rate", type=float, default=16, help="users started per second")
    p.add_argument("--run-time", default="60s", help="how long to run (Locust syntax: 60s, 2m, 1h)")
    p.add_argument("--images", type=Path, default=ROOT / "samples", help="folder of images to send")
    p.add_argument("--batch-size", type=int, default=8, help="images per request in the batch task")
    p.add_argument("--protocol", choices=("both", "grpc", "http"), default="both", help="which user classes run")
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="where Locust's CSV/HTML and summary go")
    p.set_defaults(func=run)


def run(args) -> int:
    seconds = _parse_seconds(args.run_time)
    if not args.images.is_dir():
        print(f"htr loadtest: no image folder at {args.images}", file=sys.stderr)
        return 2
    from htr.serve import is_loopback

    if args.url and not is_loopback(args.url) and not args.allow_remote:
        print(f"htr loadtest: {args.url} is not loopback; pass --allow-remote to load another machine",
              file=sys.stderr)
        return 2
    classes = {"both": (), "grpc": ("GrpcUser",), "http": ("HttpUser",)}[args.protocol]
    if args.url:
        return _run_against(args.url, args.http_port, args.grpc_port, args.metrics_port, args, seconds, classes)
    from htr.serve import ServerError, ServerOptions, TritonServer

    if not (args.repository / ENSEMBLE / "config.pbtxt").is_file():
        print(f"htr loadtest: no model repository at {args.repository} (run `make repository`)", file=sys.stderr)
        return 2
    options = ServerOptions.with_free_ports()
    ports = [options.http_port, options.grpc_port, options.metrics_port]
    server = TritonServer(args.repository, options)
    print(f"htr loadtest: starting htr serve on {args.repository} (HTTP {ports[0]}, gRPC {ports[1]}, "
          f"metrics {ports[2]}) ...", flush=True)
    try:
        with server:
            return _run_against("127.0.0.1", *ports, args, seconds, classes)
    except ServerError as e:
        print(f"htr loadtest: server failed: {e}", file=sys.stderr)
        return 2


def _run_against(host, http_port, grpc_port, metrics_port, args, seconds, classes) -> int:
    metrics_url = f"http://{host}:{metrics_port}/metrics"
    before = triton_request_counts(metrics_url)
    cmd = locust_command(host=f"http://{host}:{http_port}", grpc_url=f"{host}:{grpc_port}", users=args.users,
                         spawn_rate=args.spawn_rate, run_time=args.run_time, images=args.images,
                         reports=args.reports, batch_size=args.batch_size, user_classes=classes)
    print(f"htr loadtest: {args.users} users for {args.run_time} -> {args.reports}", flush=True)
    started = time.monotonic()
    proc = run_locust(cmd, timeout_s=seconds + 120)
    elapsed = time.monotonic() - started
    if proc.returncode not in (0, 1):  # 1 = the run had failures; anything else = Locust itself failed
        print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
        print(f"htr loadtest: locust exited with {proc.returncode}", file=sys.stderr)
        return 2
    time.sleep(0.5)
    after = triton_request_counts(metrics_url)
    delta = {k: after[k] - before[k] for k in after}
    stats = read_stats(args.reports)
    text = summarise(stats, delta, min(elapsed, seconds))
    print(text)
    summary = {"stats": stats, "triton_requests": delta, "users": args.users, "run_time_s": seconds,
               "command": cmd, "locust_exit_code": proc.returncode}
    (args.reports / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.reports / "summary.txt").write_text(text + "\n")
    print(f"htr loadtest: reports in {args.reports} (htr.html, htr_stats.csv, summary.json)")
    return 0 if stats["total"]["failures"] == 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="htr loadtest")
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["loadtest", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
