"""Shared helpers for the timing scripts in ``bench/``: the data check, timing, result tables.

Imported as ``from _common import ...``: a script run as ``python bench/x.py`` has ``bench/`` on its path.
The data folder's default is :func:`htr.paths.default_data_dir`; pass/fail harnesses live in ``htr.testing``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from htr.paths import ROOT  # noqa: F401  (re-exported for the scripts' default paths)


def require_data(data: Path) -> Path:
    if not (data / "labelled").is_dir():
        sys.exit(
            f"error: real images not found at {data}/labelled. Pass --data DIR pointing at the Kaggle-layout "
            "folder (labelled/, labels.csv), or set HTR_DATA."
        )
    return data


def read_labelled_blobs(data: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((data / "labelled").glob("*.jpg"))]


def interleaved_timings(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved so that machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(ts: list[float]) -> dict:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": len(ts)}


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} ({cpu}, {os.cpu_count()} cores, Python {platform.python_version()})"


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def goal_line(name: str, ratio: float, goal: float) -> tuple[str, bool]:
    ok = ratio >= goal
    return f"| {name} | {ratio:.2f}x | >= {goal:g}x | {'PASS' if ok else 'FAIL'} |", ok


def comma_list(ap, value: str, choices, what: str) -> list[str]:
    """``value`` split at commas, each one of ``choices``; anything else is ``ap.error`` naming ``what``."""
    items = [v for v in value.split(",") if v]
    unknown = set(items) - set(choices)
    if unknown:
        ap.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(choices)}")
    return items
