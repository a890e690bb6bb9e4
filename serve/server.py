"""One tritonserver child process (:class:`TritonServer`), run as :class:`ServerOptions` say.

Every endpoint binds to one address, loopback by default. Triton has no authentication for inference, so
any other address lets whoever reaches the ports run the models. The APIs that change the server
(:data:`RESTRICTED_APIS`; off loopback also system shared memory, which maps host ``/dev/shm`` objects by
name) answer only requests carrying :data:`ADMIN_HEADER` with the server's admin key
(``--http-restricted-api``/``--grpc-restricted-protocol``). The model repository is a local folder: no
request names a file. Stopping drains the requests in flight; in explicit model control the ensembles are
drained first (:meth:`TritonServer.drain_ensembles` says why).
"""
from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .bundle import check_stub, default_tritonserver, prepare_backend_dir, stub_environment
from .errors import ServerError
from .watchdog import Stub, StubWatchdog, stub_processes

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
#: Header that Triton checks on the restricted APIs (``--http-restricted-api``/``--grpc-restricted-protocol``).
ADMIN_HEADER = "htr-admin-key"
#: APIs that change the server or reach its host (load/unload models, write trace files, change logging).
RESTRICTED_APIS = ("model-repository", "trace", "logging")


# ---------------------------------------------------------------------------------------------------
# ports and addresses


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


def gpu_present() -> bool:
    """An NVIDIA device node exists and ``CUDA_VISIBLE_DEVICES`` does not hide every GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


#: tritonserver options for a host without a GPU: no GPU metrics (NVML and DCGM would fail and say so at
#: every start). The Helm chart's CPU variant passes the same (tests/test_deploy.py compares them).
CPU_ONLY_ARGS = ("--allow-gpu-metrics=false",)


def _connect_host(address: str) -> str:
    """Where a local client reaches a server bound to ``address`` (wildcards -> loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address, address)
    return f"[{host}]" if ":" in host else host


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned server if the parent is killed


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


# ---------------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class ServerOptions:
    """How to run tritonserver: every setting of :class:`TritonServer`, each default stated here once.

    ``htr serve`` takes its defaults from here too, except ``model_control``, which is ``explicit`` on the
    command line (a clean ensemble drain and stub healing) and ``none`` here (what a test usually wants).
    Tests and tools mostly want :meth:`with_free_ports`; :func:`dataclasses.replace` derives a variant.
    """

    http_port: int = 8000
    """HTTP/REST (KServe v2) port."""
    grpc_port: int = 8001
    """gRPC port."""
    metrics_port: int = 8002
    """Prometheus metrics port (``/metrics``)."""
    address: str = "127.0.0.1"
    """What HTTP, gRPC and metrics bind to; anything but loopback exposes them (no authentication)."""
    model_control: str = "none"
    """``none``: load every model once, no reloads; ``poll``: follow repository changes; ``explicit``: load
    ``load_models`` at start, then load/unload through the (key-protected) repository API."""
    poll_interval: int = 5
    """Seconds between repository polls (poll mode)."""
    load_models: Sequence[str] = ("*",)
    """Explicit mode: the models loaded at start (``"*"``: all; empty: none; a ``--load-model`` in
    ``extra_args`` replaces it)."""
    heal_stubs: bool = False
    """Run a :class:`~htr.serve.watchdog.StubWatchdog` once the server is ready (explicit or poll mode);
    its reloads are in :attr:`TritonServer.heal_events`."""
    heal_interval: float = 0.5
    """Seconds between the watchdog's looks at the stubs."""
    on_heal: Callable[[str], None] | None = None
    """Called with a message for each of the watchdog's reloads as it happens."""
    exit_timeout: int = 20
    """tritonserver's ``--exit-timeout-secs``: how long SIGTERM waits for the requests in flight."""
    admin_key: str | None = None
    """The key of the restricted APIs (None: ``$HTR_ADMIN_KEY``, else random)."""
    log_file: str | os.PathLike | None = None
    """Receives the server's stdout and stderr (None: a new temporary file, kept after stop for inspection)."""
    log_verbose: int = 0
    """tritonserver's ``--log-verbose`` level."""
    gpu: bool | None = None
    """Whether the host has a GPU for Triton (None: :func:`gpu_present`); without one the server runs with
    :data:`CPU_ONLY_ARGS`, which keeps NVML and DCGM errors out of its log (``htr serve`` leaves the CUDA
    lines that remain out of what it echoes)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables added on top of :func:`~htr.serve.bundle.stub_environment` (they reach ``model.py`` too)."""
    extra_args: Sequence[str] = ()
    """Appended to the tritonserver command line unchanged."""
    tritonserver: str | os.PathLike | None = None
    """The executable (None: the one bundled in nvidia-pytriton)."""
    die_with_parent: bool = True
    """The kernel sends SIGTERM to the server when the *thread* that started it exits: start it from the
    main thread or pass False."""

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control must be one of {MODEL_CONTROL_MODES}, not {self.model_control!r}")
        if self.heal_stubs and self.model_control == "none":
            raise ValueError("healing stubs (heal_stubs, --heal-stubs) reloads models: it needs model control "
                             "'explicit' or 'poll'")

    @classmethod
    def with_free_ports(cls, address: str = "127.0.0.1", **options) -> ServerOptions:
        """Options with three distinct ports free on ``address`` right now, and ``options`` for the rest."""
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port(address))
        http, grpc, metrics = sorted(ports)
        return cls(http_port=http, grpc_port=grpc, metrics_port=metrics, address=address, **options)


# ---------------------------------------------------------------------------------------------------
# the server


class TritonServer:
    """One tritonserver child process serving ``repository``; a context manager that starts and stops it.

    ``options`` says how to run it (default ``ServerOptions()``); the server resolves what they leave
    open (the absolute repository, the executable, the admin key, the log file)::

        with TritonServer("model_repository", ServerOptions.with_free_ports(model_control="explicit")) as server:
            client = tritonclient.http.InferenceServerClient(server.http_endpoint)
    """

    def __init__(self, repository: str | os.PathLike, options: ServerOptions | None = None):
        self.options = options = options or ServerOptions()
        self.repository = Path(repository).resolve()
        self.tritonserver = Path(options.tritonserver) if options.tritonserver else default_tritonserver()
        self.log_path = Path(options.log_file) if options.log_file else None
        self.gpu = gpu_present() if options.gpu is None else options.gpu
        # The admin APIs (RESTRICTED_APIS; off loopback also shared memory, which maps host /dev/shm objects
        # by name) answer only requests carrying ADMIN_HEADER with this key.
        self.admin_key = options.admin_key or os.environ.get("HTR_ADMIN_KEY") or secrets.token_urlsafe(24)
        self.restricted_apis = list(RESTRICTED_APIS) + ([] if is_loopback(options.address) else ["shared-memory"])
        self.killed = False  # True when stop() had to SIGKILL
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._backend_dir: Path | None = None
        self._watchdog: StubWatchdog | None = None
        host = _connect_host(options.address)
        self.http_endpoint = f"{host}:{options.http_port}"  # the form tritonclient.http expects (no scheme)
        self.url_http = f"http://{self.http_endpoint}"
        self.url_grpc = f"{host}:{options.grpc_port}"  # the form tritonclient.grpc expects (no scheme)
        self.url_metrics = f"http://{host}:{options.metrics_port}/metrics"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via *_proxy

    # -- the options callers (and the watchdog) read most
    @property
    def address(self) -> str:
        return self.options.address

    @property
    def http_port(self) -> int:
        return self.options.http_port

    @property
    def grpc_port(self) -> int:
        return self.options.grpc_port

    @property
    def metrics_port(self) -> int:
        return self.options.metrics_port

    @property
    def model_control(self) -> str:
        return self.options.model_control

    @property
    def poll_interval(self) -> int:
        return self.options.poll_interval

    @property
    def exit_timeout(self) -> int:
        return self.options.exit_timeout

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

    def repository_index(self, timeout: float = 5.0) -> list[dict]:
        """The model repository index (``name``, ``version``, ``state``, ``reason`` per model version)."""
        with self._opener.open(self._admin_request("/v2/repository/index"), timeout=timeout) as r:
            return json.load(r)

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
        """The stub watchdog's reloads so far (see :class:`~htr.serve.watchdog.StubWatchdog`)."""
        return self._watchdog.events if self._watchdog else []

    def command(self, backend_dir: Path | None = None, redact: bool = False) -> list[str]:
        """The tritonserver command line; ``redact`` hides the admin key (for printing)."""
        o = self.options
        backend_dir = backend_dir or self._backend_dir or prepare_backend_dir()
        key = "<admin-key>" if redact else self.admin_key
        restricted = f"{','.join(self.restricted_apis)}:{ADMIN_HEADER}={key}"
        cmd = [str(self.tritonserver),
               "--model-repository", str(self.repository),
               "--backend-directory", str(backend_dir),
               "--http-address", o.address, "--http-port", str(o.http_port),
               "--grpc-address", o.address, "--grpc-port", str(o.grpc_port),
               "--metrics-address", o.address, "--metrics-port", str(o.metrics_port),
               # latency percentiles per model (nv_inference_request_summary_us{quantile=...}): the
               # serving dashboard's p50/p95/p99 panels and the p99 alert read them
               "--metrics-config", "summary_latencies=true",
               "--http-restricted-api", restricted, "--grpc-restricted-protocol", restricted,
               "--model-control-mode", o.model_control]
        if o.model_control == "explicit" and not any(a.startswith("--load-model") for a in o.extra_args):
            cmd += [f"--load-model={m}" for m in o.load_models]  # explicit mode loads nothing by itself
        if o.model_control == "poll":
            cmd += ["--repository-poll-secs", str(o.poll_interval)]
        cmd += ["--log-verbose", str(o.log_verbose), "--exit-timeout-secs", str(o.exit_timeout)]
        if not self.gpu:
            cmd += CPU_ONLY_ARGS
        return cmd + list(o.extra_args)

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
        env.update(self.options.env)
        with open(self.log_path, "wb") as log:
            # cwd: the python-backend stub puts its working directory first on sys.path, so started from a
            # checkout it would import that checkout's htr/ instead of the runtime set it was given; the backend
            # folder holds nothing importable but the backend's own files. (Paths in extra_args: absolute.)
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self._backend_dir,
                start_new_session=True,  # our own process group: the terminal's Ctrl-C reaches us, not it
                preexec_fn=_set_pdeathsig if self.options.die_with_parent and _LIBC is not None else None)

    def wait_ready(self, timeout: float = 120.0, on_wait: Callable[[float], None] | None = None) -> float:
        """Poll readiness every 0.25 s; returns the seconds taken. ``on_wait(elapsed)`` runs each poll."""
        t0 = time.monotonic()
        while True:
            if self.is_ready():
                if self.options.heal_stubs and self._watchdog is None:
                    self._watchdog = StubWatchdog(self, self.options.heal_interval, on_event=self.options.on_heal)
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

    def start(self, ready_timeout: float = 120.0, on_wait: Callable[[float], None] | None = None) -> TritonServer:
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

    def __enter__(self) -> TritonServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer({str(self.repository)!r}, {self.url_http}, pid={self.pid})"
