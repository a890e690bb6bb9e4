"""Client load on the served ensemble: threads sending real images through ``htr.client``, each request's
outcome, and the counts and latency percentiles a harness judges.

One request step, :meth:`_Senders.send`, runs under two schedules:

- :class:`Load`, a closed loop: ``threads`` threads, each sending its next request when the previous one
  is done (optionally paced to one per ``interval``). The fault scenarios (:mod:`htr.testing.faults`) and
  the soak's maximum-throughput probe use it.
- :class:`OpenLoop`, an open loop: a pacer releases one request every ``1/rate`` s on a fixed schedule to
  a pool of worker threads, and a request's latency runs from its *scheduled* time, so a server that falls
  behind shows up in the latency instead of silently lowering the rate (no coordinated omission). The
  soak (:mod:`htr.testing.soak`) uses it.

Each thread has its own :class:`htr.client.HTRClient` (gRPC) whose retry policy counts the retries it made,
so an :class:`Outcome` says whether the request succeeded at once, after retries, or was lost.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from htr.client import HTRClient, HTRClientError, RetryPolicy

FAILURE_PAUSE_S = 0.05  # a closed-loop thread's pause after a failed request


def say(msg: str) -> None:
    """A progress line with the wall-clock time (the harnesses run for minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_blobs(data: Path, limit: int = 200) -> list[bytes]:
    """Encoded bytes of the first ``limit`` real labelled images of the Kaggle-layout folder ``data`` (read
    once: disk reads are not timed). Raises FileNotFoundError when ``data/labelled`` is missing."""
    labelled = Path(data) / "labelled"
    if not labelled.is_dir():
        raise FileNotFoundError(f"real images not found at {labelled}: pass the Kaggle-layout folder "
                                "(labelled/, labels.csv), or set HTR_DATA")
    return [f.read_bytes() for f in sorted(labelled.glob("*.jpg"))[:limit]]


# ---------------------------------------------------------------------------------------------------
# one request


@dataclass(frozen=True)
class CountingRetryPolicy(RetryPolicy):
    """The client's RetryPolicy, counting the retries it schedules (one client per thread, so per thread)."""

    count: list = field(default_factory=lambda: [0], compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        self.count[0] += 1
        return super().delay(attempt)


def counting_client(url: str, retries: int, backoff_s: float, timeout_s: float = 30.0) -> HTRClient:
    """An ``HTRClient`` (gRPC, connected) whose ``retry.count[0]`` counts the retries it made."""
    client = HTRClient(url, "grpc", timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    client.retry = CountingRetryPolicy(retries, backoff_s)
    return client


@dataclass
class Outcome:
    """One request of a load thread: monotonic start and end, success, retries it took, final error."""

    thread: int
    start: float
    end: float
    ok: bool
    retries: int
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


class _Senders:
    """``threads`` connected clients (connected now, so a server that is not up fails here, not in the
    threads) and the outcomes of the requests they sent."""

    def __init__(self, url: str, blobs: list[bytes], threads: int, retries: int, backoff_s: float,
                 timeout_s: float):
        self.url, self.blobs = url, blobs
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._clients = [counting_client(url, retries, backoff_s, timeout_s) for _ in range(threads)]

    def send(self, k: int, items: list[bytes], start: float) -> Outcome:
        """One request of ``items`` by client ``k``; latency counted from ``start`` (monotonic).

        A success is every image read (``Prediction.ok``); an ``HTRClientError`` after the client's retries,
        or a prediction with an error (an item the server refused), is a failure."""
        client = self._clients[k]
        count = client.retry.count
        count[0] = 0
        try:
            preds = client.recognize(items)
            bad = [p.error for p in preds if not p.ok]
            error = bad[0] if bad else None
        except HTRClientError as e:
            error = f"{type(e).__name__}: {e}"
        outcome = Outcome(k, start, time.monotonic(), error is None, count[0], error)
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def counts(self) -> tuple[int, int]:
        """(requests done, requests failed) so far."""
        with self._lock:
            return len(self.outcomes), sum(not o.ok for o in self.outcomes)

    def _close(self) -> None:
        for c in self._clients:
            c.close()


# ---------------------------------------------------------------------------------------------------
# the two schedules


class Load(_Senders):
    """``threads`` closed-loop threads, each sending ``batch`` real images per request until :meth:`stop`;
    ``interval`` > 0 paces each thread to one request per interval. A context manager (start, stop)."""

    def __init__(self, url: str, blobs: list[bytes], threads: int = 4, *, batch: int = 1, retries: int = 2,
                 backoff_s: float = 0.2, timeout_s: float = 30.0, interval: float = 0.0, name: str = "load"):
        super().__init__(url, blobs, threads, retries, backoff_s, timeout_s)
        self.batch, self.interval = batch, interval
        self._halt = threading.Event()
        self._next = 0
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 120.0) -> None:
        """Let every thread finish the request it is in (retries included), then close the clients. Idempotent."""
        if self._halt.is_set() and not any(t.is_alive() for t in self._threads):
            return
        self._halt.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise RuntimeError(f"load threads still in a request {timeout:g} s after stop: {stuck}")
        self._close()

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:  # on an error in the run: stop the threads, keep the first error
        if exc[0] is None:
            self.stop()
        else:
            self._halt.set()

    def _items(self) -> list[bytes]:
        with self._lock:
            start = self._next
            self._next += self.batch
        return [self.blobs[(start + k) % len(self.blobs)] for k in range(self.batch)]

    def _run(self, i: int) -> None:
        while not self._halt.is_set():
            outcome = self.send(i, self._items(), time.monotonic())
            if self.interval > 0 or not outcome.ok:  # a refused request comes back at once: no busy loop
                self._halt.wait(max(self.interval - outcome.seconds, 0.0 if outcome.ok else FAILURE_PAUSE_S))


class OpenLoop(_Senders):
    """One-image requests released on a fixed schedule (``rate`` per second) to ``workers`` threads, for
    ``seconds``; an outcome's start is the request's scheduled time."""

    def __init__(self, url: str, blobs: list[bytes], rate: float, seconds: float, workers: int, retries: int,
                 backoff_s: float, timeout_s: float = 30.0):
        super().__init__(url, blobs, workers, retries, backoff_s, timeout_s)
        self.rate, self.seconds = rate, seconds
        self.due: queue.Queue = queue.Queue()
        self.t0 = 0.0

    def run(self, on_tick: Callable[[float], None] | None = None, tick_s: float = 1.0) -> None:
        """Release every request on its schedule, wait for the last, close the clients. ``on_tick(elapsed)``
        is called about every ``tick_s`` s from the pacer."""
        workers = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(len(self._clients))]
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
        self._close()

    def _work(self, k: int) -> None:
        while (item := self.due.get()) is not None:
            i, at = item
            self.send(k, [self.blobs[i % len(self.blobs)]], at)


def wait_with_progress(seconds: float, loads: list[_Senders], label: str, until: Callable[[], bool] | None = None,
                       every: float = 2.0) -> bool:
    """Sleep up to ``seconds`` (returns early, True, once ``until()`` holds), printing the loads' counts."""
    deadline, last = time.monotonic() + seconds, 0.0
    while time.monotonic() < deadline:
        if until is not None and until():
            return True
        if time.monotonic() - last >= every:
            last = time.monotonic()
            sent, failed = map(sum, zip(*(load.counts() for load in loads)))
            say(f"  {label}: {sent} requests done, {failed} failed")
        time.sleep(0.05)
    return until is not None and until()


# ---------------------------------------------------------------------------------------------------
# what is reported


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 of latencies given in seconds, in ms (None when there are none)."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = np.percentile(np.asarray(values) * 1e3, [50, 95, 99])
    return {"p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1)}


def summarize(outcomes: list[Outcome], batch: int = 1) -> dict:
    """Counts and latency of a load's requests: sent, ok at once / after retries, lost, percentiles."""
    ok = [o for o in outcomes if o.ok]
    errors = Counter(short_error(o.error) for o in outcomes if not o.ok)
    return {
        "sent": len(outcomes),
        "images_per_request": batch,
        "ok_first_attempt": sum(o.retries == 0 for o in ok),
        "ok_after_retry": sum(o.retries > 0 for o in ok),
        "lost": len(outcomes) - len(ok),
        "retries": sum(o.retries for o in outcomes),
        "failed_attempts": sum(o.retries for o in outcomes) + len(outcomes) - len(ok),
        **percentiles_ms([o.seconds for o in ok]),
        "max_ms": round(max((o.seconds for o in outcomes), default=0.0) * 1e3, 1),
        "errors": dict(errors.most_common(5)),
    }


def error_types(outcomes: list[Outcome]) -> dict[str, int]:
    """Failures by the client's exception class ("Prediction.error" when the request came back refused)."""
    return dict(Counter((o.error or "").split(":")[0] if (o.error or "").split(":")[0].endswith("Error")
                        else "Prediction.error" for o in outcomes if not o.ok))


def short_error(error: str | None, width: int = 160) -> str:
    """An error message on one line, cut to ``width`` characters."""
    text = " ".join((error or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."
