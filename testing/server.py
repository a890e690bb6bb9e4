"""The real tritonserver as a harness runs it: free loopback ports, a private copy of the repository, start-up
with progress lines, and the resident memory of the server and its python-backend stubs.

Every harness starts its server through :func:`start_server`, so how a ``TritonServer`` is built for a test
run is written once.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from htr.serve import ServerOptions, TritonServer, free_port, stub_processes

from .load import say


def free_ports() -> dict[str, int]:
    """Three distinct free loopback ports, as ``ServerOptions`` fields (``http_port``, ``grpc_port``,
    ``metrics_port``)."""
    chosen: set[int] = set()
    while len(chosen) < 3:
        chosen.add(free_port())
    return dict(zip(("http_port", "grpc_port", "metrics_port"), sorted(chosen)))


def start_server(repository: Path, log_file: Path, *, ready_timeout: float = 240.0, **options) -> TritonServer:
    """A ``TritonServer`` on ``repository`` (free loopback ports, log in ``log_file``, ``options`` as
    :class:`~htr.serve.ServerOptions` fields), started and ready; progress is printed. Explicit model
    control loads every model at start (``ServerOptions.load_models``), as ``none`` does."""
    server = TritonServer(repository, ServerOptions(**free_ports(), log_file=log_file, **options))
    say(f"starting tritonserver on {server.url_grpc} (model control {server.model_control}), log {log_file}")
    server.start(ready_timeout=ready_timeout)
    say(f"ready in {server.startup_seconds:.1f} s (pid {server.pid}): "
        + ", ".join(sorted(f"{s.instance}={s.pid}" for s in server.stubs())))
    return server


def copy_repository(source: Path, workdir: Path) -> Path:
    """A private copy in ``workdir/model_repository``: the runs add versions and touch model files (the
    watchdog's reload)."""
    target = workdir / "model_repository"
    shutil.copytree(source, target, symlinks=True)
    return target


# ---------------------------------------------------------------------------------------------------
# processes and memory


def stub_pids(server: TritonServer) -> dict[str, int]:
    """instance (``crnn_0_0``) -> pid of each live python-backend stub of ``server``."""
    return {s.instance: s.pid for s in stub_processes(server.pid)}


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc (OSError when the process is gone)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_rss_kib(server: TritonServer) -> dict[str, int]:
    """Resident memory (KiB) of tritonserver and of each of its python-backend stubs; a process gone
    meanwhile counts 0 (a stub change shows up in :func:`stub_pids`)."""
    per = {}
    for name, pid in ({"tritonserver": server.pid} | stub_pids(server)).items():
        try:
            per[name] = rss_kib(pid)
        except (OSError, TypeError):
            per[name] = 0
    return per


def rss_bytes(server: TritonServer) -> int:
    """Resident memory of tritonserver and its python-backend stubs together, in bytes."""
    return 1024 * sum(process_rss_kib(server).values())
