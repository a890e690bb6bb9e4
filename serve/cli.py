"""``htr serve``: run NVIDIA Triton on the model repository, in the foreground.

Example::

    htr serve                              # model_repository/ on 127.0.0.1: HTTP 8000, gRPC 8001, metrics 8002
    htr serve --address 0.0.0.0            # reachable from other machines (no authentication: firewall it)
    htr serve --model-control none         # load once, no repository API use (no ensemble drain, no healing)

    # hot-load a new version (explicit mode): copy crnn/2/ into the repository, then
    curl -X POST -H "htr-admin-key: $(cat runs/serve/tritonserver-8000.admin-key)" \\
         http://127.0.0.1:8000/v2/repository/models/crnn/load

The server is the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel. Every endpoint binds to
``--address``, loopback by default. Triton has no authentication for inference, so ``--address 0.0.0.0``
lets anyone who can reach the port run the models: expose it only behind a firewall or an authenticating
proxy (which should also cap request bodies: Triton 2.51 has no HTTP body-size limit of its own). The APIs
that change the server (model repository load/unload, trace, logging; off loopback also system shared
memory) answer only requests with the header ``htr-admin-key``; the key is ``$HTR_ADMIN_KEY`` or random,
written to ``--admin-key-file`` (mode 0600), never printed.

The server log goes to ``runs/serve/tritonserver-<http-port>.log`` in the checkout (the previous run's is
kept as ``.log.1``) and the key beside it, ``tritonserver-<http-port>.admin-key``; both paths are printed
at start, and ``--log-file``/``--admin-key-file`` choose others.

``htr serve`` waits until ``/v2/health/ready`` answers 200, prints the endpoints and the models' states,
then streams the server log. The echo leaves out what only the log file needs: the start-up tables
(backends, models, options) and, on a host without a GPU, the CUDA lines Triton writes there (it runs
without GPU metrics then, so NVML and DCGM stay quiet: ``ServerOptions.gpu``).

Ctrl-C or SIGTERM forwards SIGTERM to tritonserver, which finishes in-flight requests (up to
``--drain-timeout``) before it exits; a second signal, or a server still running ``--drain-timeout``
+ 10 s later, gets SIGKILL. Ensemble requests need ``--model-control explicit``
for this: tritonserver's own drain stops every model's scheduler at once, so an ensemble request in
flight fails at its next step; in explicit mode the ensembles are unloaded first, which lets the requests
inside them finish (new ones are refused as for an unknown model), then SIGTERM follows. Exit status: 0
after a clean stop, 1 when the server failed to start, died, or had to be killed, 2 when it could not be
started at all (missing repository, port in use, missing system library).

Triton 2.51 does not restart a python-backend stub that died (triton-inference-server/server#7347):
``--heal-stubs`` (on by default with ``--model-control explicit`` or ``poll``) reloads such a model, and
clients retry the requests that failed meanwhile. Once requests reached the dead instance, the next stop
waits out ``--drain-timeout`` and tritonserver exits 1.

This module is the command line only; the library is :mod:`htr.serve` (``TritonServer``, ``ServerOptions``).
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from htr.paths import ROOT

from .errors import ServerError
from .server import ADMIN_HEADER, MODEL_CONTROL_MODES, ServerOptions, TritonServer, is_loopback, port_in_use

DEFAULT_REPOSITORY = ROOT / "model_repository"
#: Where ``htr serve`` keeps the server log and the admin key unless told otherwise.
STATE_DIR = ROOT / "runs" / "serve"
_DEFAULTS = ServerOptions()

EXPOSE_NOTE = (
    "Endpoints bind to --address (loopback by default). To accept other machines use --address 0.0.0.0; "
    "WARNING: Triton has no authentication for inference, so anyone who reaches the ports can run the "
    "models: firewall it or put an authenticating proxy (with a request-body size cap) in front. The "
    "model-repository (load/unload), trace and logging APIs always need the header "
    "'htr-admin-key: <key>' (the key is in --admin-key-file); off loopback the shared-memory API needs it too."
)


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("serve", help="run Triton on the model repository (foreground, loopback by default)",
                       description=__doc__, epilog=EXPOSE_NOTE, formatter_class=formatter_class)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="Triton model repository")
    p.add_argument("--address", default=_DEFAULTS.address,
                   help="address HTTP, gRPC and metrics bind to; 0.0.0.0 exposes them (no authentication)")
    p.add_argument("--http-port", type=int, default=_DEFAULTS.http_port, help="HTTP/REST (KServe v2) port")
    p.add_argument("--grpc-port", type=int, default=_DEFAULTS.grpc_port, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=_DEFAULTS.metrics_port,
                   help="Prometheus metrics port (/metrics)")
    p.add_argument("--model-control", choices=MODEL_CONTROL_MODES, default="explicit",
                   help="explicit: every model loads at start, then load/unload through the (key-protected) "
                        "repository API, which also gives a clean drain on SIGTERM and stub healing; "
                        "poll: follow repository changes; none: load everything once, no reloads")
    p.add_argument("--poll-interval", type=int, default=_DEFAULTS.poll_interval,
                   help="seconds between repository polls (poll mode)")
    p.add_argument("--heal-stubs", action=argparse.BooleanOptionalAction, default=None,
                   help="reload a python-backend model whose stub process died (Triton 2.51 does not restart it); "
                        "default: on with --model-control explicit or poll")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="where the key of the restricted APIs (header htr-admin-key) is written, mode 0600; "
                        "the key is $HTR_ADMIN_KEY or random (None: beside the log file, <log stem>.admin-key)")
    p.add_argument("--log-verbose", type=int, default=_DEFAULTS.log_verbose, help="tritonserver verbose log level")
    p.add_argument("--log-file", type=Path, default=None,
                   help=f"server log file (None: {STATE_DIR.relative_to(ROOT)}/tritonserver-<http-port>.log in the "
                        "checkout; the previous run's log is kept as .log.1)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for /v2/health/ready")
    p.add_argument("--drain-timeout", type=int, default=_DEFAULTS.exit_timeout,
                   help="seconds tritonserver waits for in-flight requests on shutdown (SIGKILL 10 s later)")
    p.add_argument("--tritonserver", type=Path, default=None,
                   help="tritonserver executable (None: the one bundled in nvidia-pytriton)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                   help="everything after it goes to tritonserver unchanged (so it comes last)")
    p.set_defaults(func=run)


def default_log_file(http_port: int) -> Path:
    """The log file of an ``htr serve`` on ``http_port`` when ``--log-file`` is not given."""
    return STATE_DIR / f"tritonserver-{http_port}.log"


def options_from_args(args) -> ServerOptions:
    """The :class:`ServerOptions` an ``htr serve`` command line asks for (ValueError when they conflict)."""
    heal = args.model_control != "none" if args.heal_stubs is None else args.heal_stubs
    log_file = args.log_file or default_log_file(args.http_port)
    return ServerOptions(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                         address=args.address, model_control=args.model_control, poll_interval=args.poll_interval,
                         heal_stubs=heal, on_heal=_say, exit_timeout=args.drain_timeout, log_file=log_file,
                         log_verbose=args.log_verbose, extra_args=tuple(args.extra), tritonserver=args.tritonserver)


# A line that heads one of tritonserver's start-up tables: the usual prefix, then nothing.
_TABLE_HEAD = re.compile(rb"^[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] *$")
#: What tritonserver 2.51 writes on a host without a GPU (CPU_ONLY_ARGS removes the NVML/DCGM part; the rest
#: says only that there is no CUDA driver: for pinned memory, the CUDA pool, an ensemble's CUDA stream; a few
#: lines per start, none per request). Left out of the echo there, kept in the log file.
CPU_HOST_NOISE = (b"CUDA driver version is insufficient", b"CudaDriverHelper has not been initialized",
                  b"CUDA memory pool disabled", b"Pinned memory pool disabled",
                  b"failed to allocate pinned system memory", b"Failed to initialize NVML", b"DCGM unable to start")


def echoed(line: bytes, gpu: bool) -> bool:
    """Whether ``htr serve`` echoes this log line (the file keeps every line)."""
    text = line.rstrip(b"\r\n")
    if not text.strip() or text[:1] in (b"+", b"|") or _TABLE_HEAD.match(text):
        return False  # the start-up tables: backends, models, options
    return gpu or not any(noise in text for noise in CPU_HOST_NOISE)


class _LogFollower:
    """Copies whole new lines of a growing log file to stdout, those that ``keep(line)`` accepts."""

    def __init__(self, path: Path, keep=lambda line: True):
        self._f = open(path, "rb")
        self._partial = b""
        self._keep = keep

    def pump(self, final: bool = False) -> None:
        data = self._partial + self._f.read()
        if final:
            cut = len(data)
        else:
            cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        lines = [line for line in data[:cut].splitlines(keepends=True) if self._keep(line)]
        if lines:
            sys.stdout.buffer.write(b"".join(lines))
            sys.stdout.flush()

    def close(self) -> None:
        self.pump(final=True)
        self._f.close()


def _say(*msgs: str, err: bool = False) -> None:
    """Each message a line of its own, ``htr serve: `` in front; all of them in one write."""
    print("\n".join(f"htr serve: {msg}" for msg in msgs), file=sys.stderr if err else sys.stdout, flush=True)


def run(args) -> int:
    try:
        server = TritonServer(args.repository, options_from_args(args))
    except ValueError as e:
        _say(f"error: {e}", err=True)
        return 2
    signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.log_file is None and server.log_path.exists() and not port_in_use(server.address, server.http_port):
            server.log_path.replace(server.log_path.with_name(server.log_path.name + ".1"))  # keep one previous log
        try:
            server.spawn()
        except ServerError as e:
            _say(f"error: {e}", err=True)
            return 2
        _say("command: " + subprocess.list2cmdline(server.command(redact=True)))
        _say(f"log:       {server.log_path}")
        key_file = args.admin_key_file or server.log_path.with_name(server.log_path.stem + ".admin-key")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_text(server.admin_key + "\n")
        _say(f"admin key: {key_file} (header '{ADMIN_HEADER}: <key>' on the model-repository/trace/logging APIs)")
        if is_loopback(server.address):
            _say("loopback only; --address 0.0.0.0 exposes it to other machines (no authentication)")
        else:
            _say(f"WARNING: listening on {server.address} without authentication; firewall these ports")
        log = _LogFollower(server.log_path, keep=lambda line: echoed(line, server.gpu))
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
    # the whole banner in one write: whoever waits for "ready in" (a script, a test) finds the addresses with it
    banner = [f"ready in {seconds:.1f} s (pid {server.pid}); start-up tables and the full log in {server.log_path}"]
    if server.model_control != "none":  # the index is the repository API's (none: not served)
        try:
            index = server.repository_index()
            models = (" ".join(str(m[k]) for k in ("name", "version", "state") if m.get(k))
                      for m in sorted(index, key=lambda m: m["name"]))
            banner.append("models   " + ", ".join(models))
        except (OSError, ValueError):
            pass
    banner += [f"HTTP     {server.url_http}   (health: {server.url_http}/v2/health/ready)",
               f"gRPC     {server.url_grpc}",
               f"metrics  {server.url_metrics}",
               "Ctrl-C or SIGTERM stops it (in-flight requests finish first)"]
    _say(*banner)
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
