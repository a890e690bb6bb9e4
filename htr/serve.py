"""``htr serve``: run NVIDIA Triton on the model repository, in the foreground.

Example::

    htr serve                              # model_repository/ on 127.0.0.1: HTTP 8000, gRPC 8001, metrics 8002
    htr serve --address 0.0.0.0            # reachable from other machines (no authentication: firewall it)
    htr serve --model-control none         # load once, no repository API use (no ensemble drain, no healing)

    # hot-load a new version (explicit mode): copy crnn/2/ into the repository, then
    curl -X POST -H "htr-admin-key: $(cat /tmp/.../tritonserver.admin-key)" \
         http://127.0.0.1:8000/v2/repository/models/crnn/load

The server is the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel. Every endpoint binds to
``--address``, loopback by default. Triton has no authentication for inference, so ``--address 0.0.0.0``
lets anyone who can reach the port run the models: expose it only behind a firewall or an authenticating
proxy (which should also cap request bodies: Triton 2.51 has no HTTP body-size limit of its own). The APIs
that change the server (model repository load/unload, trace, logging; off loopback also system shared
memory, which maps host ``/dev/shm`` objects by name) answer only requests with the header
``htr-admin-key`` (``--http-restricted-api``/``--grpc-restricted-protocol``); the key is
``$HTR_ADMIN_KEY`` or random, written to ``--admin-key-file`` (mode 0600), never printed. The model
repository is a local folder: no request names a file.

``htr serve`` waits until ``/v2/health/ready`` answers 200, prints the endpoints, then streams the
server log. Ctrl-C or SIGTERM forwards SIGTERM to tritonserver, which finishes in-flight requests
(up to ``--drain-timeout``) before it exits; a second signal, or a server still running
``--drain-timeout`` + 10 s later, gets SIGKILL. Ensemble requests need ``--model-control explicit``
for this: tritonserver's own drain stops every model's scheduler at once, so an ensemble request in
flight fails at its next step; in explicit mode the ensembles are unloaded first, which lets the requests
inside them finish (new ones are refused as for an unknown model), then SIGTERM follows. Exit status: 0
after a clean stop, 1 when the server failed to start, died, or had to be killed, 2 when it could not be
started at all (missing repository, port in use, missing system library).

Python-backend models run in Triton's stub process, which embeds the *system* libpython (Debian
package ``libpython3.X``) and ignores ``PYTHONPATH``. The server environment therefore carries
``HTR_SITE_PACKAGES`` (this interpreter's site-packages, ``os.pathsep``-joined) and every ``model.py``
begins with :data:`MODEL_PY_HEADER`, which adds them, so numpy and ``htr`` import inside the stub.

A python-backend stub that dies (killed, out of memory, a crash in native code) is *not* restarted by
Triton 2.51 (python_backend removed its restart in r24.06; triton-inference-server/server#7347, #8604):
every request to that instance then fails with "Stub process '<instance>' is not healthy" while
``/v2/health/ready`` and ``/v2/models/<model>/ready`` keep answering 200. ``--heal-stubs`` (with
``--model-control explicit`` or ``poll``) runs :class:`StubWatchdog`, which reloads such a model; clients
retry the failed requests (:mod:`htr.client.errors`). See bench/faults.py for the measured recovery. Triton
never frees the dead instance once requests reached it, so the next stop waits out ``--drain-timeout`` (after
draining the requests in flight) and tritonserver exits 1.

Python API (also used by the tests and the load tests)::

    with TritonServer("model_repository", http_port=free_port(), grpc_port=free_port(),
                      metrics_port=free_port()) as server:
        client = tritonclient.http.InferenceServerClient(server.http_endpoint)
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "model_repository"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "htr-triton"
SITE_PACKAGES_ENV = "HTR_SITE_PACKAGES"
MODEL_CONTROL_MODES = ("none", "poll", "explicit")

# The first lines of every python-backend model.py: the stub's embedded system Python does not see
# the virtualenv, so add its site-packages (.pth files included, hence the editable ``htr``).
MODEL_PY_HEADER = f"""\
import os
import site

for _path in os.environ.get("{SITE_PACKAGES_ENV}", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)
"""

EXPOSE_NOTE = (
    "Endpoints bind to --address (loopback by default). To accept other machines use --address 0.0.0.0; "
    "WARNING: Triton has no authentication for inference, so anyone who reaches the ports can run the "
    "models: firewall it or put an authenticating proxy (with a request-body size cap) in front. The "
    "model-repository (load/unload), trace and logging APIs always need the header "
    "'htr-admin-key: <key>' (the key is in --admin-key-file); off loopback the shared-memory API needs it too."
)

#: Header that Triton checks on the restricted APIs (``--http-restricted-api``/``--grpc-restricted-protocol``).
ADMIN_HEADER = "htr-admin-key"
#: APIs that change the server or reach its host (load/unload models, write trace files, change logging).
RESTRICTED_APIS = ("model-repository", "trace", "logging")


class ServerError(RuntimeError):
    """tritonserver could not be started, did not become ready, or its set-up is incomplete."""


# ---------------------------------------------------------------------------------------------------
# the bundled tritonserver and its Python backend


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # locate without importing (its __init__ is heavy)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed in this environment (pip install nvidia-pytriton)")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundle() -> dict[str, Path]:
    base = _pytriton_dir()
    server = base / "tritonserver"
    return {
        "tritonserver": server / "bin" / "tritonserver",
        "libs": base.parent / "nvidia_pytriton.libs",
        "python_backend": server / "backends" / "python",
        "stubs": server / "python_backend_stubs",
    }


def default_tritonserver() -> Path:
    """The ``tritonserver`` executable shipped in the nvidia-pytriton wheel."""
    return _bundle()["tritonserver"]


def stub_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver needs: ``base`` (default ``os.environ``) plus

    - ``LD_LIBRARY_PATH`` starting with the wheel's ``nvidia_pytriton.libs``: the server and the stub
      find their shared libraries through it (the stub's RPATH is relative to its original folder,
      which a copied stub no longer sits in);
    - ``HTR_SITE_PACKAGES``: this interpreter's site-packages, read by :data:`MODEL_PY_HEADER`.
    """
    env = dict(os.environ if base is None else base)
    libs = str(_bundle()["libs"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    env[SITE_PACKAGES_ENV] = os.pathsep.join(p for p in site.getsitepackages() if os.path.isdir(p))
    return env


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _cache_dir() -> Path:
    try:
        tag = f"pytriton-{version('nvidia-pytriton')}"
    except PackageNotFoundError:
        tag = "pytriton-unknown"
    return CACHE_ROOT / tag


def prepare_backend_dir(cache_dir: Path | None = None) -> Path:
    """A ``--backend-directory`` whose ``python/`` holds the Python backend and the stub for this Python.

    The wheel keeps the stubs for every Python version apart from the backend, but the backend looks for
    ``triton_python_backend_stub`` beside ``libtriton_python.so``; the three files are copied once into
    ``cache_dir`` (default ``~/.cache/htr-triton/pytriton-<version>/backends``) and copied again when a
    source file's size or mtime changes. Each copy is written then renamed, so concurrent callers are safe.
    """
    bundle = _bundle()
    stub = bundle["stubs"] / _python_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in bundle["stubs"].iterdir()) if bundle["stubs"].is_dir() else []
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {_python_tag()} "
                          f"(it has: {', '.join(have) or 'none'})")
    sources = [bundle["python_backend"] / "libtriton_python.so",
               bundle["python_backend"] / "triton_python_backend_utils.py", stub]
    backends = (cache_dir or _cache_dir()) / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in sources:
        dst = target / src.name
        s = src.stat()
        try:
            d = dst.stat()
            if (d.st_size, d.st_mtime_ns) == (s.st_size, s.st_mtime_ns):
                continue
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", dir=target)
        os.close(fd)
        try:
            shutil.copy2(src, tmp)  # keeps mode (the stub is executable) and mtime (the staleness check)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return backends


def check_stub(backend_dir: Path) -> None:
    """Fail clearly when the stub cannot load, above all when the system libpython is not installed."""
    stub = backend_dir / "python" / "triton_python_backend_stub"
    try:
        out = subprocess.run(["ldd", str(stub)], env=stub_environment(), capture_output=True, text=True,
                             timeout=30).stdout
    except FileNotFoundError:  # no ldd: fall back on the loader cache for the one library that matters
        out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
        wanted = f"libpython{_python_tag()}.so.1.0"
        out = "" if wanted in out else f"{wanted} => not found"
    missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
    libpython = [m for m in missing if m.startswith("libpython")]
    if libpython:
        raise ServerError(
            f"the Python backend stub embeds the system {libpython[0]}, which is not installed: install the "
            f"Debian package libpython{_python_tag()} (sudo apt-get install libpython{_python_tag()})")
    if missing:
        raise ServerError(f"the Python backend stub {stub} cannot find: {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------------
# ports


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def port_in_use(address: str, port: int) -> bool:
    """True when binding ``address:port`` fails (SO_REUSEADDR, so TIME_WAIT leftovers do not count)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def is_loopback(address: str) -> bool:
    """The address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    return address in ("127.0.0.1", "::1", "localhost") or address.startswith("127.")


def _connect_host(address: str) -> str:
    """Where a local client reaches a server bound to ``address`` (wildcards -> loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address, address)
    return f"[{host}]" if ":" in host else host


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned server if the parent is killed


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


# ---------------------------------------------------------------------------------------------------
# python-backend stubs: finding them, and reloading a model whose stub died

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
    the dead stub meanwhile fail, with an error clients retry. Triton never frees the broken instance once
    requests reached it: the server's next stop then waits out its exit timeout.

    ``events`` records each reload (monotonic times): model, instances, dead pids, ``detected`` (the first look
    that missed the stub), ``reloaded`` (explicit: the load API returned, the model is reloaded; poll: the new
    stub runs, its model may still be initialising), ``ok`` and ``error``. ``on_event(message)`` reports them.
    """

    def __init__(self, server: "TritonServer", interval: float = 0.5, reload_timeout: float = 180.0,
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



# ---------------------------------------------------------------------------------------------------
# the server


class TritonServer:
    """One tritonserver child process; a context manager that starts it and stops it.

    ``env`` adds variables on top of :func:`stub_environment` (they reach ``model.py`` too).
    ``log_file`` receives the server's stdout and stderr (default: a new temporary file, kept after
    stop for inspection). ``exit_timeout`` is tritonserver's ``--exit-timeout-secs``: how long SIGTERM
    waits for in-flight requests. ``die_with_parent`` makes the kernel send SIGTERM to the server when the
    *thread* that called :meth:`start` exits, so start it from the main thread or pass False.
    ``heal_stubs`` runs a :class:`StubWatchdog` once the server is ready (explicit or poll model control);
    its reloads are in :attr:`heal_events`, and ``on_heal(message)`` reports them as they happen.
    """

    def __init__(self, repository: str | os.PathLike, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, address: str = "127.0.0.1", model_control: str = "none",
                 log_file: str | os.PathLike | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, *, poll_interval: int = 5, log_verbose: int = 0,
                 exit_timeout: int = 20, tritonserver: str | os.PathLike | None = None,
                 die_with_parent: bool = True, heal_stubs: bool = False, heal_interval: float = 0.5,
                 on_heal: Callable[[str], None] | None = None, admin_key: str | None = None,
                 load_models: Sequence[str] = ("*",)):
        if model_control not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control must be one of {MODEL_CONTROL_MODES}, not {model_control!r}")
        if heal_stubs and model_control == "none":
            raise ValueError("healing stubs (heal_stubs, --heal-stubs) reloads models: it needs model control "
                             "'explicit' or 'poll'")
        self.repository = Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = int(http_port), int(grpc_port), int(metrics_port)
        self.address = address
        self.model_control = model_control
        self.poll_interval = int(poll_interval)
        self.log_verbose = int(log_verbose)
        self.exit_timeout = int(exit_timeout)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.tritonserver = Path(tritonserver) if tritonserver else default_tritonserver()
        self.die_with_parent = die_with_parent
        self.heal_stubs, self.heal_interval, self.on_heal = heal_stubs, float(heal_interval), on_heal
        self._watchdog: StubWatchdog | None = None
        self.log_path = Path(log_file) if log_file else None
        self.killed = False  # True when stop() had to SIGKILL
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._backend_dir: Path | None = None
        host = _connect_host(address)
        self.http_endpoint = f"{host}:{self.http_port}"  # the form tritonclient.http expects (no scheme)
        self.url_http = f"http://{self.http_endpoint}"
        self.url_grpc = f"{host}:{self.grpc_port}"  # the form tritonclient.grpc expects (no scheme)
        self.url_metrics = f"http://{host}:{self.metrics_port}/metrics"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via *_proxy
        # The admin APIs (RESTRICTED_APIS; off loopback also shared memory, which maps host /dev/shm objects
        # by name) answer only requests carrying ADMIN_HEADER with this key. Default: $HTR_ADMIN_KEY or random.
        self.admin_key = admin_key or os.environ.get("HTR_ADMIN_KEY") or secrets.token_urlsafe(24)
        self.load_models = list(load_models)  # explicit mode: loaded at start ("*": all; empty: none)
        self.restricted_apis = list(RESTRICTED_APIS) + ([] if is_loopback(address) else ["shared-memory"])

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers for the restricted APIs, for both protocols (tritonclient calls take ``headers=``):
        HTTP checks ``htr-admin-key``, gRPC the metadata ``triton-grpc-protocol-htr-admin-key``."""
        return {ADMIN_HEADER: self.admin_key, f"triton-grpc-protocol-{ADMIN_HEADER}": self.admin_key}

    def _admin_request(self, path: str) -> urllib.request.Request:
        return urllib.request.Request(f"{self.url_http}{path}", data=b"{}", method="POST", headers=self.admin_headers)

    # -- state
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self, timeout: float = 1.0) -> bool:
        """``GET /v2/health/ready`` answers 200 (server up and every loaded model ready)."""
        try:
            with self._opener.open(f"{self.url_http}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def model_state(self, model: str, timeout: float = 5.0) -> str | None:
        """``READY`` when some version of ``model`` is ready, else its state in the repository index (None:
        not in the index, or the server does not answer)."""
        req = self._admin_request("/v2/repository/index")
        try:
            with self._opener.open(req, timeout=timeout) as r:
                states = [e.get("state") for e in json.load(r) if e.get("name") == model]
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return "READY" if "READY" in states else (states[0] if states else None)

    def load_model(self, model: str, timeout: float = 180.0) -> None:
        """Load (or reload, when its files changed) ``model`` through the repository API (explicit mode)."""
        self._repository_action(model, "load", timeout)

    def unload_model(self, model: str, timeout: float = 30.0) -> None:
        """Start unloading ``model`` (explicit mode); requests already in it finish first."""
        self._repository_action(model, "unload", timeout)

    def _repository_action(self, model: str, action: str, timeout: float) -> None:
        req = self._admin_request(f"/v2/repository/models/{model}/{action}")
        try:
            with self._opener.open(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            raise ServerError(f"{action} {model!r} failed ({e.code}): {e.read().decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerError(f"{action} {model!r} failed: {e}") from None

    def _ready_ensembles(self) -> list[str]:
        with self._opener.open(self._admin_request("/v2/repository/index"), timeout=5) as r:
            ready = sorted({e["name"] for e in json.load(r) if e.get("state") == "READY"})
        ensembles = []
        for name in ready:
            with self._opener.open(f"{self.url_http}/v2/models/{name}/config", timeout=5) as r:
                if json.load(r).get("platform") == "ensemble":
                    ensembles.append(name)
        return ensembles

    def drain_ensembles(self, timeout: float | None = None) -> list[str]:
        """Explicit model control: unload every ensemble, and wait (up to ``timeout``, default the exit
        timeout) until they are gone, so that the requests inside them finish while their steps' models are
        still loaded. New requests for an ensemble are refused meanwhile (unknown model). Returns their names.

        Why: tritonserver's own SIGTERM drain stops every model's scheduler at once, so an ensemble request in
        flight fails at its next step ("Server is stopping, scheduler for model has stopped accepting new
        inference requests"; Triton 2.51, cf. triton-inference-server/server#6287). Other model-control modes
        have no unload API: there, ensemble requests in flight at SIGTERM fail.
        """
        if self.model_control != "explicit" or not self.running():
            return []
        try:
            ensembles = self._ready_ensembles()
            for name in ensembles:
                self.unload_model(name)
        except (urllib.error.URLError, OSError, ValueError, ServerError):
            return []  # not answering: SIGTERM does what can still be done
        deadline = time.monotonic() + (self.exit_timeout if timeout is None else timeout)
        while time.monotonic() < deadline and self.running():
            if all(self.model_state(name) not in ("READY", "UNLOADING") for name in ensembles):
                break
            time.sleep(0.05)
        return ensembles

    def stubs(self) -> list[Stub]:
        """This server's live python-backend stubs."""
        return stub_processes(self._proc.pid) if self.running() else []

    @property
    def heal_events(self) -> list[dict]:
        """The stub watchdog's reloads so far (see :class:`StubWatchdog`)."""
        return self._watchdog.events if self._watchdog else []

    def command(self, backend_dir: Path | None = None, redact: bool = False) -> list[str]:
        """The tritonserver command line; ``redact`` hides the admin key (for printing)."""
        backend_dir = backend_dir or self._backend_dir or prepare_backend_dir()
        key = "<admin-key>" if redact else self.admin_key
        restricted = f"{','.join(self.restricted_apis)}:{ADMIN_HEADER}={key}"
        cmd = [str(self.tritonserver),
               "--model-repository", str(self.repository),
               "--backend-directory", str(backend_dir),
               "--http-address", self.address, "--http-port", str(self.http_port),
               "--grpc-address", self.address, "--grpc-port", str(self.grpc_port),
               "--metrics-address", self.address, "--metrics-port", str(self.metrics_port),
               # latency percentiles per model (nv_inference_request_summary_us{quantile=...}): the
               # serving dashboard's p50/p95/p99 panels and the p99 alert read them
               "--metrics-config", "summary_latencies=true",
               "--http-restricted-api", restricted, "--grpc-restricted-protocol", restricted,
               "--model-control-mode", self.model_control]
        if self.model_control == "explicit" and not any(a.startswith("--load-model") for a in self.extra_args):
            cmd += [f"--load-model={m}" for m in self.load_models]  # explicit mode loads nothing by itself
        if self.model_control == "poll":
            cmd += ["--repository-poll-secs", str(self.poll_interval)]
        cmd += ["--log-verbose", str(self.log_verbose), "--exit-timeout-secs", str(self.exit_timeout)]
        return cmd + self.extra_args

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))

    # -- lifecycle
    def check(self) -> None:
        """Everything that can be refused before starting: repository, ports, executable, stub."""
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist (or is not a folder); build it "
                              "with `make repository` or `python export/build_engine.py --repository DIR`")
        ports = {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise ServerError(f"the HTTP, gRPC and metrics ports must differ: {ports}")
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ServerError(f"{name} port {port} is not a TCP port (1-65535)")
            if port_in_use(self.address, port):
                raise ServerError(f"{name} port {port} on {self.address} is already in use: stop whatever "
                                  f"listens there (ss -ltnp 'sport = :{port}') or choose another port")
        if not os.access(self.tritonserver, os.X_OK):
            raise ServerError(f"tritonserver executable not found at {self.tritonserver}")
        self._backend_dir = prepare_backend_dir()
        check_stub(self._backend_dir)

    def spawn(self) -> None:
        """Start the process without waiting for it (see :meth:`start`)."""
        if self._proc is not None:
            raise ServerError(f"this server was already started (pid {self._proc.pid})")
        self.check()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = stub_environment()
        env.update(self.env)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # our own process group: the terminal's Ctrl-C reaches us, not it
                preexec_fn=_set_pdeathsig if self.die_with_parent and _LIBC is not None else None)

    def wait_ready(self, timeout: float = 120.0, on_wait: Callable[[float], None] | None = None) -> float:
        """Poll readiness every 0.25 s; returns the seconds taken. ``on_wait(elapsed)`` runs each poll."""
        t0 = time.monotonic()
        while True:
            if self.is_ready():
                if self.heal_stubs and self._watchdog is None:
                    self._watchdog = StubWatchdog(self, self.heal_interval, on_event=self.on_heal)
                    self._watchdog.start()
                return time.monotonic() - t0
            rc = self._proc.poll()
            if rc is not None:
                raise ServerError(f"tritonserver exited with status {rc} before it was ready; "
                                  f"last lines of {self.log_path}:\n{self.log_tail()}")
            elapsed = time.monotonic() - t0
            if elapsed > timeout:
                raise ServerError(f"tritonserver was not ready after {timeout:g} s; "
                                  f"last lines of {self.log_path}:\n{self.log_tail()}")
            if on_wait is not None:
                on_wait(elapsed)
            time.sleep(0.25)

    def start(self, ready_timeout: float = 120.0, on_wait: Callable[[float], None] | None = None) -> "TritonServer":
        """Spawn tritonserver and block until it is ready; on any failure the process is stopped again."""
        self.spawn()
        try:
            self.startup_seconds = self.wait_ready(ready_timeout, on_wait)
        except BaseException:
            self.stop()
            raise
        return self

    def _stop_watchdog(self) -> None:  # before stopping: stubs that exit then are not to be healed
        if self._watchdog is not None:
            self._watchdog.stop()

    def terminate(self) -> None:
        """SIGTERM: tritonserver stops accepting, drains in-flight requests, unloads models, exits.
        In explicit model control the ensembles are drained first (:meth:`drain_ensembles`)."""
        self._stop_watchdog()
        self.drain_ensembles()
        if self.running():
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process group (the server and its backend stubs)."""
        self._stop_watchdog()
        if self.running():  # the group leader is not reaped yet, so its group id cannot have been reused
            self.killed = True
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit status (None if never started).

        tritonserver exits 0 after a clean SIGTERM shutdown; -9 means it had to be killed.
        """
        if self._proc is None:
            return None
        self.terminate()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self._proc.wait()

    def __enter__(self) -> "TritonServer":
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer({str(self.repository)!r}, {self.url_http}, pid={self.pid})"


# ---------------------------------------------------------------------------------------------------
# command line


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("serve", help="run Triton on the model repository (foreground, loopback by default)",
                       description=__doc__, epilog=EXPOSE_NOTE, formatter_class=formatter_class)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="Triton model repository")
    p.add_argument("--address", default="127.0.0.1",
                   help="address HTTP, gRPC and metrics bind to; 0.0.0.0 exposes them (no authentication)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST (KServe v2) port")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (/metrics)")
    p.add_argument("--model-control", choices=MODEL_CONTROL_MODES, default="explicit",
                   help="explicit: every model loads at start, then load/unload through the (key-protected) "
                        "repository API, which also gives a clean drain on SIGTERM and stub healing; "
                        "poll: follow repository changes; none: load everything once, no reloads")
    p.add_argument("--poll-interval", type=int, default=5, help="seconds between repository polls (poll mode)")
    p.add_argument("--heal-stubs", action=argparse.BooleanOptionalAction, default=None,
                   help="reload a python-backend model whose stub process died (Triton 2.51 does not restart it); "
                        "default: on with --model-control explicit or poll")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="where the key of the restricted APIs (header htr-admin-key) is written, mode 0600; "
                        "the key is $HTR_ADMIN_KEY or random (None: beside the log file)")
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver verbose log level")
    p.add_argument("--log-file", type=Path, default=None, help="server log file (None: a new temporary file, kept)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for /v2/health/ready")
    p.add_argument("--drain-timeout", type=int, default=20,
                   help="seconds tritonserver waits for in-flight requests on shutdown (SIGKILL 10 s later)")
    p.add_argument("--tritonserver", type=Path, default=None,
                   help="tritonserver executable (None: the one bundled in nvidia-pytriton)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                   help="everything after it goes to tritonserver unchanged (so it comes last)")
    p.set_defaults(func=run)


class _LogFollower:
    """Copies whole new lines of a growing log file to stdout."""

    def __init__(self, path: Path):
        self._f = open(path, "rb")
        self._partial = b""

    def pump(self, final: bool = False) -> None:
        data = self._partial + self._f.read()
        if final:
            cut = len(data)
        else:
            cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if cut:
            sys.stdout.buffer.write(data[:cut])
            sys.stdout.flush()

    def close(self) -> None:
        self.pump(final=True)
        self._f.close()


def _say(msg: str, err: bool = False) -> None:
    print(f"htr serve: {msg}", file=sys.stderr if err else sys.stdout, flush=True)


def run(args) -> int:
    try:
        server = TritonServer(args.repository, args.http_port, args.grpc_port, args.metrics_port,
                              address=args.address, model_control=args.model_control, log_file=args.log_file,
                              extra_args=args.extra, poll_interval=args.poll_interval,
                              log_verbose=args.log_verbose, exit_timeout=args.drain_timeout,
                              tritonserver=args.tritonserver, on_heal=_say,
                              heal_stubs=args.model_control != "none" if args.heal_stubs is None else args.heal_stubs)
    except ValueError as e:
        _say(f"error: {e}", err=True)
        return 2
    signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.spawn()
        except ServerError as e:
            _say(f"error: {e}", err=True)
            return 2
        _say("command: " + subprocess.list2cmdline(server.command(redact=True)))
        _say(f"log: {server.log_path}")
        key_file = args.admin_key_file or server.log_path.with_name(server.log_path.stem + ".admin-key")
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_text(server.admin_key + "\n")
        _say(f"model-repository/trace/logging APIs need the header '{ADMIN_HEADER}: <key in {key_file}>'")
        if is_loopback(server.address):
            _say("loopback only; --address 0.0.0.0 exposes it to other machines (no authentication)")
        else:
            _say(f"WARNING: listening on {server.address} without authentication; firewall these ports")
        log = _LogFollower(server.log_path)
        try:
            return _serve(server, log, signals, args)
        finally:
            log.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve(server: TritonServer, log: _LogFollower, signals: list[int], args) -> int:
    last = [0.0]

    def progress(elapsed: float) -> None:
        log.pump()
        if signals:
            raise KeyboardInterrupt
        if elapsed - last[0] >= 5:
            last[0] = elapsed
            _say(f"waiting for {server.url_http}/v2/health/ready ({elapsed:.0f} s of {args.ready_timeout:g})")

    try:
        seconds = server.wait_ready(args.ready_timeout, progress)
    except ServerError as e:
        log.pump()
        _say(f"error: {e}", err=True)
        _shutdown(server, log, signals)
        return 1
    except KeyboardInterrupt:
        _say(f"{signal.Signals(signals[0]).name} before the server was ready")
        return _shutdown(server, log, signals)
    log.pump()
    _say(f"ready in {seconds:.1f} s (pid {server.pid})")
    _say(f"HTTP     {server.url_http}   (health: {server.url_http}/v2/health/ready)")
    _say(f"gRPC     {server.url_grpc}")
    _say(f"metrics  {server.url_metrics}")
    _say("Ctrl-C or SIGTERM stops it (in-flight requests finish first)")
    while not signals:
        log.pump()
        rc = server.returncode
        if rc is not None:
            log.pump()
            _say(f"error: tritonserver exited on its own with status {rc}", err=True)
            return 1
        time.sleep(0.2)
    _say(f"{signal.Signals(signals[0]).name}: stopping tritonserver")
    return _shutdown(server, log, signals)


def _shutdown(server: TritonServer, log: _LogFollower, signals: list[int]) -> int:
    """Forward SIGTERM, stream the log while it drains; SIGKILL on a second signal or after the timeout."""
    first = len(signals)
    server.terminate()
    deadline = time.monotonic() + server.exit_timeout + 10
    while server.returncode is None:
        log.pump()
        if len(signals) > first or time.monotonic() > deadline:
            _say("killing tritonserver (SIGKILL)", err=True)
            server.kill()
            break
        time.sleep(0.2)
    rc = server.stop(timeout=5)
    log.pump()
    if server.killed:
        _say(f"tritonserver killed (status {rc})", err=True)
        return 1
    if rc != 0:
        _say(f"tritonserver exited with status {rc}", err=True)
        return 1
    _say("tritonserver stopped cleanly (status 0)")
    return 0
