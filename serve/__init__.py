"""Serving: run the ``tritonserver`` bundled in nvidia-pytriton on a model repository, and keep it healthy.

- :mod:`htr.serve.server`    :class:`TritonServer` (one child process) run as :class:`ServerOptions` say;
                             ports, the admin key of the restricted APIs, the ensemble drain on stop
- :mod:`htr.serve.bundle`    finding the server in the wheel, the backend folder and environment its
                             python-backend stub needs
- :mod:`htr.serve.watchdog`  reloading a model whose python-backend stub died (Triton does not restart it)
- :mod:`htr.serve.cli`       ``htr serve``, the command line over :class:`TritonServer`
- :mod:`htr.serve.monitor`   ``htr monitor``: Debian's Prometheus with the project's rules, against a running server
- :mod:`htr.serve.publish`   ``htr publish``: a checkpoint as the next version of the live repository, and back

Python API (what the tests, the benchmarks, the load test and the demo use)::

    from htr.serve import ServerOptions, TritonServer

    with TritonServer("model_repository", ServerOptions.with_free_ports(model_control="explicit")) as server:
        client = tritonclient.http.InferenceServerClient(server.http_endpoint)
"""
from __future__ import annotations

from .bundle import check_stub, default_tritonserver, prepare_backend_dir, stub_environment
from .cli import add_parser, run
from .errors import PublishError, ServerError
from .server import (ADMIN_HEADER, MODEL_CONTROL_MODES, RESTRICTED_APIS, ServerOptions, TritonServer, free_port,
                     is_loopback, port_in_use)
from .watchdog import STUB_EXECUTABLE, Stub, StubWatchdog, stub_processes

__all__ = [
    "ADMIN_HEADER", "MODEL_CONTROL_MODES", "PublishError", "RESTRICTED_APIS", "STUB_EXECUTABLE", "ServerError",
    "ServerOptions", "Stub", "StubWatchdog", "TritonServer", "add_parser", "check_stub", "default_tritonserver",
    "free_port", "is_loopback", "port_in_use", "prepare_backend_dir", "run", "stub_environment", "stub_processes",
]
