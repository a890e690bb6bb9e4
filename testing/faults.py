"""Fault scenarios under load against the real tritonserver: a killed python-backend stub, a SIGTERM while
requests are in flight, a new model version dropped in. Each starts its own server on free loopback ports
from a repository the caller owns (a private copy: the runs write into it), drives it with a closed-loop
:class:`~htr.testing.load.Load`, injects the fault, and returns what a client saw as a dict of counts,
latencies and timings. :func:`verdict` checks the goals of issue #7 on such a dict.

  kill-stub  SIGKILL the stub of one model instance. Triton 2.51 does not restart a dead stub: requests
             that reach it fail with "Stub process '<instance>' is not healthy" while the health endpoints
             keep answering 200. With the stub watchdog (``heal``, explicit or poll model control) the
             model is reloaded and the clients' retries lose nothing; without it the model stays broken.
             Either way Triton never frees the dead instance once requests reached it, so the server's stop
             afterwards waits out its exit timeout and tritonserver exits 1.
  sigterm    stop the server as ``htr serve`` does on SIGTERM (``TritonServer.terminate``): in-flight
             requests complete, requests while it drains are refused with a typed client error, requests
             after the exit get ``ServerUnreachableError`` fast, tritonserver exits 0 within its drain timeout.
  hot-load   rename a new numbered version of a model (a copy of the serving one, staged beside the
             repository) into the served repository (poll, or explicit + the load API): zero failed
             requests, and the new version answers afterwards.

``bench/faults.py`` is the command line over these; ``tests/test_faults.py`` runs them with short bounds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np

from htr.client import HTRClient
from htr.runtime.contract import CRNN, CTC_DECODE, IMAGE_BYTES, LOGPROBS, PIXELS, PREPROCESS
from htr.serve import Stub, TritonServer

from .load import Load, error_types, say, summarize, wait_with_progress
from .server import start_server

MODES = ("kill-stub", "sigterm", "hot-load")


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


# ---------------------------------------------------------------------------------------------------
# kill-stub


def _kill_and_watch(server: TritonServer, load: Load, probe: Load, model: str, warmup_s: float, settle_s: float,
                    max_s: float) -> tuple[float, Stub, bool]:
    """Warm up, SIGKILL a stub of ``model``, wait for the recovery: (time of the kill, the stub, recovered)."""
    wait_with_progress(warmup_s, [load], "warm-up")
    victim = next((s for s in server.stubs() if s.model == model), None)
    if victim is None:
        raise RuntimeError(f"no python-backend stub for model {model!r}: {sorted({s.model for s in server.stubs()})}")
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


def kill_stub(repository: Path, blobs: list[bytes], workdir: Path, *, model: str = CRNN, threads: int = 4,
              warmup_s: float = 3.0, settle_s: float = 3.0, max_s: float = 60.0, retries: int = 8,
              backoff_s: float = 0.25, probe_interval: float = 0.1, heal: bool = True,
              model_control: str = "explicit", poll_interval: int = 1, exit_timeout: int = 20) -> dict:
    """SIGKILL one stub of ``model`` under load; see the module docstring. The server runs with the stub
    watchdog (``heal``; explicit or poll model control); the run ends ``settle_s`` after the first probe
    success that follows the reload, or ``max_s`` after the kill. Triton 2.51 never releases a model
    instance whose stub died with requests in it (healed or not), so stopping the server afterwards takes
    its whole ``exit_timeout`` and tritonserver exits 1."""
    server = start_server(repository, workdir / "kill-stub.log", model_control=model_control,
                          poll_interval=poll_interval, exit_timeout=exit_timeout, heal_stubs=heal,
                          on_heal=lambda m: say(f"  watchdog: {m}"))
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
    server = start_server(repository, workdir / "sigterm.log", model_control=model_control,
                          exit_timeout=drain_timeout)
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
        "error_types_while_draining": error_types(during),
        "error_types_after_exit": error_types(after),
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
    if model == PREPROCESS:
        name, data = IMAGE_BYTES, np.array([[blob]], dtype=np.object_)
    elif model == CRNN:
        name, data = PIXELS, np.zeros((1, 1, h, w), np.float32)
    elif model == CTC_DECODE:
        name, data = LOGPROBS, np.zeros((1, w // 4, cfg.num_classes), np.float32)
    else:
        raise ValueError(f"no probe request for model {model!r}")
    inp = grpcclient.InferInput(name, list(data.shape), "BYTES" if data.dtype == object else "FP32")
    inp.set_data_from_numpy(data)
    client = grpcclient.InferenceServerClient(server.url_grpc)
    try:
        return str(client.infer(model, [inp]).get_response(as_json=True)["model_version"])
    finally:
        client.close()


def hot_load(repository: Path, blobs: list[bytes], workdir: Path, *, model: str = CRNN,
             model_control: str = "poll", poll_interval: int = 1, threads: int = 4, warmup_s: float = 3.0,
             after_s: float = 5.0, max_s: float = 120.0, retries: int = 2, backoff_s: float = 0.2,
             heal: bool = True) -> dict:
    """Drop a new version of ``model`` into the served repository under load; see the module docstring. The
    stub watchdog runs too (``heal``), as in production: a version swap retires stubs, which it must not
    mistake for dead ones."""
    server = start_server(repository, workdir / "hot-load.log", model_control=model_control,
                          poll_interval=poll_interval, heal_stubs=heal, on_heal=lambda m: say(f"  watchdog: {m}"))
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
# report and verdict


def report_lines(mode: str, r: dict) -> list[str]:
    """What a scenario's result says, as the lines ``bench/faults.py`` prints."""
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


def verdict(mode: str, r: dict) -> list[str]:
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
