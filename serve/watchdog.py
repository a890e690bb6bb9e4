"""Healing a python-backend model whose stub process died: finding a server's stubs, reloading the model.

A python-backend stub that dies (killed, out of memory, a crash in native code) is *not* restarted by
Triton 2.51 (python_backend removed its restart in r24.06; triton-inference-server/server#7347, #8604):
every request to that instance then fails with "Stub process '<instance>' is not healthy" while
``/v2/health/ready`` and ``/v2/models/<model>/ready`` keep answering 200. :class:`StubWatchdog`
(``htr serve --heal-stubs``, ``ServerOptions(heal_stubs=True)``; explicit or poll model control) reloads
such a model, and clients retry the requests that failed meanwhile (:mod:`htr.client.errors`);
``tests/test_faults.py`` checks the recovery under load and BENCHMARKS.md gives its measured times.
Triton never frees the dead instance once requests reached it, so the server's next stop waits out its
exit timeout (after draining the requests in flight) and tritonserver exits 1.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import ServerError

if TYPE_CHECKING:
    from .server import TritonServer

STUB_EXECUTABLE = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    """One live python-backend stub: the process that runs one instance (``crnn_0_0``) of a model's model.py."""

    pid: int
    model: str
    version: str
    instance: str
    model_file: Path


def stub_processes(server_pid: int) -> list[Stub]:
    """The live stubs of the tritonserver ``server_pid``, read from /proc.

    A stub's arguments are ``model.py shm-region shm-size shm-growth server-pid backend-dir ipc-handle
    instance-name ...``; the model and version are the two folders above model.py. A killed stub stays a
    zombie (no command line) until Triton reaps it, so it is not listed. The short-lived stub Triton starts
    while loading a model to auto-complete its config is not listed either (its instance name is the model's).
    """
    stubs = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if len(argv) < 9 or not argv[0].endswith(STUB_EXECUTABLE.encode()) or argv[5] != str(server_pid).encode():
            continue
        model_file = Path(os.fsdecode(argv[1]))
        stub = Stub(int(proc.name), model_file.parent.parent.name, model_file.parent.name, os.fsdecode(argv[8]),
                    model_file)
        if stub.instance != stub.model:
            stubs.append(stub)
    return stubs


class StubWatchdog(threading.Thread):
    """Reloads a python-backend model whose stub process died, on a server in explicit or poll model control.

    It lists the server's stubs when it is created (once the server is ready), then every ``interval`` s. An
    instance whose stub is missing on two looks in a row, with no other stub serving that instance and the
    model still READY in the repository index (so not an unload or a version change), gets its model
    reloaded: the version's model.py is touched (Triton reloads only models whose files changed) and, in
    explicit mode, the load API is called; in poll mode the next poll reloads it. Triton loads the new
    instances before it retires the broken ones, so the model stays available and only requests that reach
    the dead stub meanwhile fail, with an error clients retry.

    ``events`` records each reload (monotonic times): model, instances, dead pids, ``detected`` (the first look
    that missed the stub), ``reloaded`` (explicit: the load API returned, the model is reloaded; poll: the new
    stub runs, its model may still be initialising), ``ok`` and ``error``. ``on_event(message)`` reports them.
    """

    def __init__(self, server: TritonServer, interval: float = 0.5, reload_timeout: float = 180.0,
                 on_event: Callable[[str], None] | None = None):
        super().__init__(name="stub-watchdog", daemon=True)
        if server.model_control not in ("explicit", "poll"):
            raise ValueError("reloading a model needs --model-control explicit or poll, not "
                             f"{server.model_control!r}")
        self.server, self.interval, self.reload_timeout = server, float(interval), float(reload_timeout)
        self.on_event = on_event or (lambda message: None)
        self.events: list[dict] = []
        self._halt = threading.Event()
        # the first look, now (the server is ready): a stub that dies before the thread's first look counts
        self._known: dict[str, Stub] = {s.instance: s for s in stub_processes(server.pid)}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; a reload under way is left to finish (the thread is a daemon)."""
        self._halt.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    def run(self) -> None:
        known = self._known  # instance -> its last live stub
        missed: dict[str, float] = {}  # instance -> monotonic time of the first look that missed it
        while not self._halt.wait(self.interval) and self.server.running():
            live = {s.instance: s for s in stub_processes(self.server.pid)}
            now = time.monotonic()
            for instance, stub in live.items():
                known[instance] = stub
                missed.pop(instance, None)
            for instance in known.keys() - live.keys():
                missed.setdefault(instance, now)
            due = {known[i].model for i, t in missed.items() if t < now}  # missed on two looks or more
            for model in sorted(due):
                if self._halt.is_set():
                    return
                dead = [i for i in missed if known[i].model == model]
                if self.server.model_state(model) == "READY":
                    self._reload(model, [known[i] for i in dead], missed[dead[0]])
                for i in dead:  # healed, unloaded on purpose, or gone with a config change: forget them
                    known.pop(i)
                    missed.pop(i)

    def _reload(self, model: str, dead: list[Stub], detected: float) -> None:
        names = ", ".join(f"{s.instance} (pid {s.pid})" for s in dead)
        self.on_event(f"stub of {names} died; reloading model {model!r}")
        event = {"model": model, "instances": [s.instance for s in dead], "pids": [s.pid for s in dead],
                 "detected": detected, "reloaded": None, "ok": False, "error": None}
        self.events.append(event)
        try:
            os.utime(dead[0].model_file)  # a changed file makes Triton reload the model, not skip it
            if self.server.model_control == "explicit":
                self.server.load_model(model, timeout=self.reload_timeout)
            deadline = time.monotonic() + self.reload_timeout + self.server.poll_interval
            while not self._halt.is_set():
                up = {s.instance for s in stub_processes(self.server.pid) if s.model == model}
                if up >= set(event["instances"]):
                    break
                if time.monotonic() > deadline:
                    raise ServerError(f"no new stub for {names} after {self.reload_timeout:g} s")
                time.sleep(0.1)
            event["reloaded"], event["ok"] = time.monotonic(), True
            self.on_event(f"model {model!r} reloaded in {event['reloaded'] - detected:.1f} s after its stub died")
        except (OSError, ServerError) as e:  # the next death is still watched; this one is reported
            event["error"] = str(e)
            self.on_event(f"could not reload model {model!r}: {e}")
