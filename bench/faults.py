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
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, ROOT, machine, require_data, stamp  # noqa: E402

from htr.client import HTRClient, HTRClientError, RetryPolicy  # noqa: E402
from htr.serve import Stub, TritonServer, free_port  # noqa: E402

MODES = ("kill-stub", "sigterm", "hot-load")
RESULTS = ROOT / "bench" / "results" / "faults.json"
FAILURE_PAUSE_S = 0.05  # a load thread's pause after a failed request


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# inputs: images, repository, server


def load_blobs(data: Path, limit: int = 200) -> list[bytes]:
    """Encoded bytes of the first ``limit`` real labelled images (read once: disk reads are not timed)."""
    files = sorted((require_data(data) / "labelled").glob("*.jpg"))[:limit]
    return [f.read_bytes() for f in files]


def build_repository(target: Path, checkpoint: Path, data: Path) -> Path:
    """The CPU repository (TorchScript crnn in the python backend), written by export/build_engine.py."""
    from htr.export.build_engine import main as build_engine

    rc = build_engine(["--checkpoint", str(checkpoint), "--repository", str(target), "--engines",
                       str(target.parent / "engines"), "--formats", "torchscript", "--data", str(data),
                       "--parity-images", "8"])
    if rc != 0:
        raise SystemExit("export/build_engine.py failed: see its report above")
    return target


def copy_repository(source: Path, workdir: Path) -> Path:
    """A private copy: the runs add versions and touch model files (the watchdog's reload)."""
    target = workdir / "model_repository"
    shutil.copytree(source, target, symlinks=True)
    return target


def ports() -> dict[str, int]:
    chosen: set[int] = set()
    while len(chosen) < 3:
        chosen.add(free_port())
    return dict(zip(("http_port", "grpc_port", "metrics_port"), sorted(chosen)))


def start_server(repository: Path, log_file: Path, **kw) -> TritonServer:
    server = TritonServer(repository, **ports(), log_file=log_file, **kw)
    say(f"starting tritonserver on {server.url_grpc} (model control {server.model_control}), log {log_file}")
    server.start(ready_timeout=240)
    say(f"ready in {server.startup_seconds:.1f} s (pid {server.pid}): "
        + ", ".join(sorted(f"{s.instance}={s.pid}" for s in server.stubs())))
    return server


# ---------------------------------------------------------------------------------------------------
# load


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


class Load:
    """``threads`` closed-loop threads, each with its own ``HTRClient`` (gRPC), sending ``batch`` real images
    per request until :meth:`stop`; ``interval`` > 0 paces each thread to one request per interval.

    A request is a success when every image came back read (``Prediction.ok``); an ``HTRClientError``, or a
    prediction with an error (a request the server refused), is a failure after the client's retries.
    """

    def __init__(self, url: str, blobs: list[bytes], threads: int = 4, *, batch: int = 1, retries: int = 2,
                 backoff_s: float = 0.2, timeout_s: float = 30.0, interval: float = 0.0, name: str = "load"):
        self.url, self.blobs, self.batch, self.interval = url, blobs, batch, interval
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._next = 0
        # connected now, so a server that is not up fails here, not in the threads
        self._clients = [counting_client(url, retries, backoff_s, timeout_s) for _ in range(threads)]
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
        for c in self._clients:
            c.close()

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
        client, count = self._clients[i], self._clients[i].retry.count
        while not self._halt.is_set():
            items = self._items()
            count[0] = 0
            t0 = time.monotonic()
            try:
                preds = client.recognize(items)
                bad = [p.error for p in preds if not p.ok]
                error = bad[0] if bad else None
            except HTRClientError as e:
                error = f"{type(e).__name__}: {e}"
            outcome = Outcome(i, t0, time.monotonic(), error is None, count[0], error)
            with self._lock:
                self.outcomes.append(outcome)
            if self.interval > 0 or not outcome.ok:  # a refused request comes back at once: no busy loop
                self._halt.wait(max(self.interval - outcome.seconds, 0.0 if outcome.ok else FAILURE_PAUSE_S))

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self.outcomes), sum(not o.ok for o in self.outcomes)


def wait_with_progress(seconds: float, loads: list[Load], label: str, until: Callable[[], bool] | None = None,
                       every: float = 2.0) -> bool:
    """Sleep up to ``seconds`` (returns early, True, once ``until()`` holds), printing the load's counts."""
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


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = np.percentile(np.asarray(values) * 1e3, [50, 95, 99])
    return {"p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1)}


def summarize(outcomes: list[Outcome], batch: int = 1) -> dict:
    """Counts and latency of the load threads' requests."""
    ok = [o for o in outcomes if o.ok]
    errors = Counter(_short(o.error) for o in outcomes if not o.ok)
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


def _error_types(outcomes: list[Outcome]) -> dict[str, int]:
    """Failures by the client's exception class ("Prediction.error" when the request came back refused)."""
    return dict(Counter((o.error or "").split(":")[0] if (o.error or "").split(":")[0].endswith("Error")
                        else "Prediction.error" for o in outcomes if not o.ok))


def _short(error: str | None, width: int = 160) -> str:
    text = " ".join((error or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


# ---------------------------------------------------------------------------------------------------
# kill-stub


def _control(model_control: str) -> dict:
    """TritonServer arguments for a model-control mode; explicit loads every model at start, as none does."""
    extra = ["--load-model=*"] if model_control == "explicit" else []
    return {"model_control": model_control, "extra_args": extra}


def _kill_and_watch(server: TritonServer, load: Load, probe: Load, model: str, warmup_s: float, settle_s: float,
                    max_s: float) -> tuple[float, Stub, bool]:
    """Warm up, SIGKILL a stub of ``model``, wait for the recovery: (time of the kill, the stub, recovered)."""
    wait_with_progress(warmup_s, [load], "warm-up")
    victim = next((s for s in server.stubs() if s.model == model), None)
    if victim is None:
        raise SystemExit(f"no python-backend stub for model {model!r}: {sorted({s.model for s in server.stubs()})}")
    say(f"SIGKILL stub {victim.instance} (pid {victim.pid}, {victim.model_file})")
    t_kill = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)  # a child of the server this run started

    def recovered() -> bool:  # reloaded, a probe sent afterwards succeeded, and settle_s have passed since
        done = [e for e in server.heal_events if e["ok"]]
        if not done:
            return False
        back = [o for o in list(probe.outcomes) if o.ok and o.start >= done[0]["reloaded"]]
        return bool(back) and time.monotonic() - back[0].end >= settle_s

    return t_kill, victim, wait_with_progress(max_s, [load], "after the kill", until=recovered)


def kill_stub(repository: Path, blobs: list[bytes], workdir: Path, *, model: str = "crnn", threads: int = 4,
              warmup_s: float = 3.0, settle_s: float = 3.0, max_s: float = 60.0, retries: int = 8,
              backoff_s: float = 0.25, probe_interval: float = 0.1, heal: bool = True,
              model_control: str = "explicit", poll_interval: int = 1, exit_timeout: int = 20) -> dict:
    """SIGKILL one stub of ``model`` under load; see the module docstring. The server runs with the stub
    watchdog (``heal``; explicit or poll model control); the run ends ``settle_s`` after the first probe
    success that follows the reload, or ``max_s`` after the kill. Triton 2.51 never releases a model
    instance whose stub died with requests in it (healed or not), so stopping the server afterwards takes
    its whole ``exit_timeout`` and tritonserver exits 1."""
    server = start_server(repository, workdir / "kill-stub.log", **_control(model_control), poll_interval=poll_interval,
                          exit_timeout=exit_timeout, heal_stubs=heal, on_heal=lambda m: say(f"  watchdog: {m}"))
    try:
        with (Load(server.url_grpc, blobs, threads, retries=retries, backoff_s=backoff_s) as load,
              Load(server.url_grpc, blobs, 1, retries=0, interval=probe_interval, name="probe") as probe):
            t_kill, victim, healed = _kill_and_watch(server, load, probe, model, warmup_s, settle_s, max_s)
            say("stopping the load (requests in flight finish, retries included)")
        after = {s.instance: s.pid for s in server.stubs() if s.model == model}
    finally:
        t_stop = time.monotonic()
        server.stop()
        stop_s, stop_status = time.monotonic() - t_stop, server.returncode
    probes = [o for o in probe.outcomes if o.start >= t_kill]
    first_ok = next((o for o in probes if o.ok), None)
    failed = [o for o in probes if not o.ok]
    event = server.heal_events[0] if server.heal_events else {}
    return {
        "model": model,
        "model_control": model_control,
        "killed": {"instance": victim.instance, "pid": victim.pid},
        "stub_after": after,
        "heal": heal,
        "healed": healed,
        "client_retry_policy": {"retries": retries, "backoff_s": backoff_s},
        "threads": threads,
        "duration_s": round(max(o.end for o in load.outcomes) - min(o.start for o in load.outcomes), 1),
        **summarize(load.outcomes),
        "after_kill": summarize([o for o in load.outcomes if o.end >= t_kill]),
        "recovery_s": _rel(first_ok.end if first_ok else None, t_kill),
        "degraded_s": _rel(max(o.end for o in failed) if failed else None, t_kill),
        "probe": {"interval_s": probe_interval, "sent_after_kill": len(probes), "failed": len(failed)},
        "detect_s": _rel(event.get("detected"), t_kill),
        "reload_s": _rel(event.get("reloaded"), t_kill),
        "heal_events": [{k: (_rel(v, t_kill) if k in ("detected", "reloaded") else v) for k, v in e.items()}
                        for e in server.heal_events],
        "server_stop_s": round(stop_s, 1),
        "server_exit_status": stop_status,
        "server_log": str(server.log_path),
    }


# ---------------------------------------------------------------------------------------------------
# sigterm


def sigterm(repository: Path, blobs: list[bytes], workdir: Path, *, threads: int = 4, batch: int = 8,
            warmup_s: float = 3.0, drain_timeout: int = 30, retries: int = 2, backoff_s: float = 0.2,
            after_exit_max_s: float = 30.0, model_control: str = "explicit") -> dict:
    """Stop the server under load as ``htr serve`` does on SIGTERM (``TritonServer.terminate``: in explicit
    model control the ensembles are drained first, then tritonserver gets SIGTERM); see the module docstring."""
    server = start_server(repository, workdir / "sigterm.log", **_control(model_control), exit_timeout=drain_timeout)
    try:
        with Load(server.url_grpc, blobs, threads, batch=batch, retries=retries, backoff_s=backoff_s) as load:
            wait_with_progress(warmup_s, [load], "warm-up")
            say("stopping tritonserver" + (": draining the ensembles, then SIGTERM" if model_control == "explicit"
                                           else ": SIGTERM"))
            t_term = time.monotonic()
            server.terminate()
            t_signal = time.monotonic()
            exited = wait_with_progress(drain_timeout + 15, [load], "draining", until=lambda: not server.running())
            t_exit = time.monotonic()
            rc = server.returncode
            say(f"tritonserver exited with status {rc} after {t_exit - t_term:.2f} s" if exited
                else "tritonserver still running after its drain timeout")

            def every_thread_tried_after_exit() -> bool:
                return len({o.thread for o in list(load.outcomes) if o.start >= t_exit}) == threads

            wait_with_progress(after_exit_max_s, [load], "after the exit", until=every_thread_tried_after_exit)
    finally:
        server.stop()
    in_flight = [o for o in load.outcomes if o.start < t_term <= o.end]
    during = [o for o in load.outcomes if t_term <= o.start < t_exit]
    after = [o for o in load.outcomes if o.start >= t_exit]
    before = [o for o in load.outcomes if o.end < t_term]
    return {
        "threads": threads,
        "model_control": model_control,
        "client_retry_policy": {"retries": retries, "backoff_s": backoff_s},
        "ensemble_drain_s": round(t_signal - t_term, 2),
        "exit_status": rc,
        "killed": server.killed,
        "drain_s": round(t_exit - t_term, 2),
        "drain_timeout_s": drain_timeout,
        **summarize(load.outcomes, batch),
        "before_sigterm": summarize(before, batch),
        "in_flight_at_sigterm": summarize(in_flight, batch),
        "sent_while_draining": summarize(during, batch),
        "sent_after_exit": summarize(after, batch),
        "error_types_while_draining": _error_types(during),
        "error_types_after_exit": _error_types(after),
        "max_s_to_refusal": round(max((o.seconds for o in during + after if not o.ok), default=0.0), 2),
        "server_log": str(server.log_path),
    }


# ---------------------------------------------------------------------------------------------------
# hot-load


def _versions(server: TritonServer, model: str) -> dict[str, str]:
    """version -> state of ``model`` in the repository index."""
    req = urllib.request.Request(f"{server.url_http}/v2/repository/index", data=b"{}", method="POST",
                                 headers=server.admin_headers)  # the repository API needs the admin key
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as r:
        return {e["version"]: e.get("state", "") for e in json.load(r) if e.get("name") == model and "version" in e}


def _success_by_version(server: TritonServer, model: str) -> dict[str, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.url_grpc)
    try:
        stats = client.get_inference_statistics(model, as_json=True)
    finally:
        client.close()
    return {s["version"]: int(s["inference_stats"]["success"].get("count", 0)) for s in stats.get("model_stats", [])}


def _answering_version(server: TritonServer, model: str, blob: bytes) -> str:
    """The version that answers a request to ``model`` sent without a version (Triton's ``model_version``)."""
    import tritonclient.grpc as grpcclient

    with HTRClient(server.url_grpc, preprocess="client") as c:  # reads the served input geometry
        cfg = c.config
    h, w = cfg.input.height, cfg.input.width
    if model == "preprocess":
        name, data = "IMAGE_BYTES", np.array([[blob]], dtype=np.object_)
    elif model == "crnn":
        name, data = "PIXELS", np.zeros((1, 1, h, w), np.float32)
    elif model == "ctc_decode":
        name, data = "LOGPROBS", np.zeros((1, w // 4, cfg.num_classes), np.float32)
    else:
        raise ValueError(f"no probe request for model {model!r}")
    inp = grpcclient.InferInput(name, list(data.shape), "BYTES" if data.dtype == object else "FP32")
    inp.set_data_from_numpy(data)
    client = grpcclient.InferenceServerClient(server.url_grpc)
    try:
        return str(client.infer(model, [inp]).get_response(as_json=True)["model_version"])
    finally:
        client.close()


def hot_load(repository: Path, blobs: list[bytes], workdir: Path, *, model: str = "crnn",
             model_control: str = "poll", poll_interval: int = 1, threads: int = 4, warmup_s: float = 3.0,
             after_s: float = 5.0, max_s: float = 120.0, retries: int = 2, backoff_s: float = 0.2,
             heal: bool = True) -> dict:
    """Drop a new version of ``model`` into the served repository under load; see the module docstring. The
    stub watchdog runs too (``heal``), as in production: a version swap retires stubs, which it must not
    mistake for dead ones."""
    server = start_server(repository, workdir / "hot-load.log", **_control(model_control), poll_interval=poll_interval,
                          heal_stubs=heal, on_heal=lambda m: say(f"  watchdog: {m}"))
    try:
        with Load(server.url_grpc, blobs, threads, retries=retries, backoff_s=backoff_s) as load:
            wait_with_progress(warmup_s, [load], "warm-up")
            before = _versions(server, model)
            old = max((v for v, s in before.items() if s == "READY"), key=int)
            new = str(max(int(v) for v in before) + 1)
            # staged beside the repository (same file system), then renamed in: Triton never sees half a version
            staging = repository.parent / f".staging-{model}-{new}"
            shutil.copytree(repository / model / old, staging)
            say(f"adding {model}/{new} (a copy of {model}/{old}) to the repository")
            t_drop = time.monotonic()
            os.rename(staging, repository / model / new)
            if model_control == "explicit":
                server.load_model(model)

            def swapped() -> bool:
                v = _versions(server, model)
                return v.get(new) == "READY" and v.get(old) != "READY"

            live = wait_with_progress(max_s, [load], f"waiting for {model} {new}", until=swapped)
            t_live = time.monotonic()
            say(f"{model} version {new} live {t_live - t_drop:.1f} s after the drop" if live
                else f"{model} version {new} not live after {max_s:g} s: {_versions(server, model)}")
            served_before = _success_by_version(server, model).get(new, 0)
            wait_with_progress(after_s, [load], f"after the swap to {new}")
        served_after = _success_by_version(server, model).get(new, 0)
        answering = _answering_version(server, model, blobs[0])
        after_versions = _versions(server, model)
    finally:
        server.stop()
    result = {
        "model": model,
        "model_control": model_control,
        "poll_interval_s": poll_interval if model_control == "poll" else None,
        "threads": threads,
        "client_retry_policy": {"retries": retries, "backoff_s": backoff_s},
        "old_version": old,
        "new_version": new,
        "live": live,
        "live_after_s": round(t_live - t_drop, 2),
        "versions_after": after_versions,
        "new_version_executions_after_swap": served_after - served_before,
        "answering_version": answering,
        "watchdog_reloads": len(server.heal_events),
        **summarize(load.outcomes),
        "around_the_swap": summarize([o for o in load.outcomes if o.end >= t_drop and o.start <= t_live]),
        "server_log": str(server.log_path),
    }
    result["failed_requests"] = result["lost"] + result["retries"]
    return result


# ---------------------------------------------------------------------------------------------------
# command line


def _report(mode: str, r: dict) -> list[str]:
    lines = [f"== {mode}",
             f"requests sent {r['sent']}: ok first attempt {r['ok_first_attempt']}, ok after retry "
             f"{r['ok_after_retry']}, lost {r['lost']} (retries {r['retries']}); latency p50 {r['p50_ms']} ms, "
             f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms"]
    if mode == "kill-stub":
        lines.append(f"killed {r['killed']['instance']} (pid {r['killed']['pid']}); new stub {r['stub_after']}; "
                     f"watchdog {'on' if r['heal'] else 'off'}: detected +{r['detect_s']} s, "
                     f"reloaded +{r['reload_s']} s")
        lines.append(f"recovery (first probe success after the kill) {r['recovery_s']} s; degraded (last failed "
                     f"probe) {r['degraded_s']} s; {r['probe']['failed']}/{r['probe']['sent_after_kill']} "
                     "probes failed")
        lines.append(f"server stop afterwards: {r['server_stop_s']} s, exit status {r['server_exit_status']}")
    elif mode == "sigterm":
        inf, dur, aft = r["in_flight_at_sigterm"], r["sent_while_draining"], r["sent_after_exit"]
        lines.append(f"model control {r['model_control']}: ensembles drained in {r['ensemble_drain_s']} s, "
                     f"tritonserver exit status {r['exit_status']} {r['drain_s']} s after the stop began; in flight "
                     f"at the stop {inf['sent']}: {inf['sent'] - inf['lost']} completed, {inf['lost']} failed")
        lines.append(f"sent while draining {dur['sent']} ({dur['lost']} refused: "
                     f"{r['error_types_while_draining']}), after the exit {aft['sent']} ({aft['lost']} refused: "
                     f"{r['error_types_after_exit']}); slowest refusal {r['max_s_to_refusal']} s")
    elif mode == "hot-load":
        lines.append(f"{r['model']} {r['old_version']} -> {r['new_version']} ({r['model_control']}) live after "
                     f"{r['live_after_s']} s; versions now {r['versions_after']}; version answering: "
                     f"{r['answering_version']}; executions of the new version after the swap "
                     f"{r['new_version_executions_after_swap']}; failed requests (retried or lost) "
                     f"{r['failed_requests']}")
    if r.get("errors"):
        lines.append(f"final errors: {r['errors']}")
    return lines


def _verdict(mode: str, r: dict) -> list[str]:
    """The goals of issue #7, checked; a FAIL makes the exit status 1."""
    if mode == "kill-stub":
        checks = [("no request lost after retries", r["lost"] == 0),
                  ("the model recovered (probe success after the reload)", r["recovery_s"] is not None and r["healed"])]
    elif mode == "sigterm":
        inf, late = r["in_flight_at_sigterm"], r["sent_after_exit"]
        typed = {"ServerUnreachableError", "ModelNotReadyError"}
        checks = [("requests in flight at SIGTERM all completed", inf["sent"] > 0 and inf["lost"] == 0),
                  ("requests while draining: completed, or refused with a typed error",
                   set(r["error_types_while_draining"]) <= typed),
                  ("requests after the exit refused with ServerUnreachableError",
                   late["sent"] > 0 and late["lost"] == late["sent"]
                   and set(r["error_types_after_exit"]) <= {"ServerUnreachableError"}),
                  ("tritonserver exited 0 within its drain timeout", r["exit_status"] == 0 and not r["killed"])]
    else:
        checks = [("zero failed requests (no retry, none lost)", r["failed_requests"] == 0),
                  ("the new version is live and answering", r["live"] and r["answering_version"] == r["new_version"]
                   and r["new_version_executions_after_swap"] > 0),
                  ("the stub watchdog took the swap for no death", r["watchdog_reloads"] == 0)]
    return [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks]


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
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder: labelled/*.jpg are sent")
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
    blobs = load_blobs(args.data)
    workdir = Path(tempfile.mkdtemp(prefix="htr-faults-"))
    say(f"{machine()}; working folder {workdir}")
    results, verdicts = {}, []
    try:
        repository = args.repository
        if repository is None:
            say(f"building the CPU repository from {args.checkpoint} (export/build_engine.py --formats torchscript)")
            repository = build_repository(workdir / "built" / "model_repository", args.checkpoint, args.data)
        for mode in MODES if args.mode == "all" else (args.mode,):
            say(f"== {mode}")
            r = run_mode(mode, args, repository.resolve(), blobs, workdir)
            lines = _report(mode, r) + _verdict(mode, r)
            print("\n".join(lines), flush=True)
            verdicts += lines
            results[_key(mode, args)] = {"date": stamp(), "machine": machine(),
                             "command": "python bench/faults.py " + " ".join(sys.argv[1:] if argv is None else argv),
                             "verdict": _verdict(mode, r), **r}
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
