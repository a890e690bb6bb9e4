"""The Locust load test refuses to start against a server that is not there: seconds, not a minute of failures."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from htr.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
LOCUST = Path(sys.executable).with_name("locust")


def test_no_server_fails_in_seconds_naming_the_url(tmp_path):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    proc = subprocess.run([str(LOCUST), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", "2",
                           "-r", "2", "-t", "60s", "--grpc-url", f"127.0.0.1:{port}",
                           "--host", f"http://127.0.0.1:{port}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and elapsed < 15, (proc.returncode, elapsed, out[-2000:])
    assert "server not ready" in out and f"127.0.0.1:{port}" in out
    assert "Connection refused" in out  # the transport's own reason, not an empty message


def test_summary_counts_images_not_only_requests():
    from htr.loadtest.run import images_of, summarise

    stats = {"total": {"requests": 50, "failures": 0, "rps": 5.0, "avg_ms": 10.0, "p50_ms": 9, "p95_ms": 12,
                       "p99_ms": 14},
             "by_request": {"grpc htr [1]": {"requests": 40, "rps": 4.0, "p50_ms": 9, "p99_ms": 12, "failures": 0},
                            "grpc htr [8]": {"requests": 10, "rps": 1.0, "p50_ms": 20, "p99_ms": 30, "failures": 0}}}
    assert images_of(stats) == 40 + 80
    assert summarise(stats, None, 10).startswith("images: 120 in 10 s = 12.0 images/s (50 requests, 5.0 req/s)")
