"""Locust load test for the served ``htr`` ensemble: a gRPC user and an HTTP user on ``tritonclient``.

Run it through ``htr loadtest`` / ``make loadtest`` (which start a local server and summarise), or
directly against a running server with Locust's own CLI and config conventions::

    locust -f loadtest/locustfile.py --config loadtest/locust.conf              # headless, both users
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
           --grpc-url 127.0.0.1:8001 --images ../shared/data/kaggle_names/labelled GrpcUser
    locust -f loadtest/locustfile.py --help                 # the options below, under "Custom arguments"

Options added here (also settable in ``locust.conf`` or as ``LOCUST_*`` environment variables):
``--images`` folder of images (default: the bundled ``samples/``), ``--grpc-url`` (``host:port``),
``--model`` (default ``htr``), ``--batch-size`` for the batch task, ``--request-timeout`` seconds.
The HTTP user targets Locust's ``--host``.

Each Locust request is exactly one Triton inference request (no client-side retries), so Locust's
request count can be checked against Triton's ``nv_inference_request_success`` counter. A request
fails in Locust when Triton refuses it or when any image in it comes back with a non-empty ERROR.

gRPC under gevent: Locust runs users as greenlets on a monkey-patched standard library, but grpcio does
its I/O in C and would block the whole process; ``grpc.experimental.gevent.init_gevent()`` (called below
before any gRPC object exists) makes grpcio cooperate with gevent - the fix documented by gRPC and by
Locust's own gRPC example.
"""
from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # must run before the first channel is created (see module docstring)

import logging  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from htr.client.errors import describe  # noqa: E402  (the server's message, never an empty one)
from htr.runtime.contract import ENSEMBLE, ERROR, IMAGE_BYTES, TEXT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT / "samples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAX_IMAGES = 2000  # images kept in memory per worker (drawn at random from the folder)


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    group = parser.add_argument_group("htr", "options of the htr load test")
    group.add_argument("--images", type=str, default=str(DEFAULT_IMAGES), env_var="LOCUST_IMAGES",
                       help="folder of images to send (jpg/png/...)")
    group.add_argument("--grpc-url", type=str, default="127.0.0.1:8001", env_var="LOCUST_GRPC_URL",
                       help="Triton gRPC endpoint host:port for GrpcUser")
    group.add_argument("--model", type=str, default=ENSEMBLE, env_var="LOCUST_MODEL",
                       help="model to call (the ensemble takes IMAGE_BYTES)")
    group.add_argument("--batch-size", type=int, default=8, env_var="LOCUST_BATCH_SIZE",
                       help="images per request in the batch task")
    group.add_argument("--request-timeout", type=float, default=30.0, env_var="LOCUST_REQUEST_TIMEOUT",
                       help="seconds before a request counts as failed")


_IMAGES: list[bytes] = []


@events.init.add_listener
def _load_images(environment, **_):
    """Read the image folder once per process; a missing or empty folder stops the run with a clear error."""
    options = environment.parsed_options
    folder = Path(options.images if options else DEFAULT_IMAGES)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise SystemExit(f"htr load test: no images in {folder} (pass --images DIR with .jpg/.png files)")
    if len(files) > MAX_IMAGES:
        files = random.Random(0).sample(files, MAX_IMAGES)
    _IMAGES[:] = [p.read_bytes() for p in files]


def _grpc_url(options) -> str:
    return options.grpc_url if options else "127.0.0.1:8001"


def _http_host(host: str | None) -> str:
    return (host or "http://127.0.0.1:8000").split("://", 1)[-1].rstrip("/")


def _unready(environment) -> str:
    """Why the server this run would load is not ready ("" when it is): checked once, before any user starts."""
    options, problems = environment.parsed_options, []
    classes = {getattr(c, "protocol", "") for c in environment.user_classes}
    model = options.model if options else ENSEMBLE
    if "grpc" in classes:
        url = _grpc_url(options)
        try:
            client = grpcclient.InferenceServerClient(url)
            if not client.is_server_ready(client_timeout=5) or not client.is_model_ready(model, client_timeout=5):
                problems.append(f"gRPC {url}: the server is up but model {model!r} is not ready")
        except Exception as e:  # noqa: BLE001 - any failure means: do not start
            problems.append(f"gRPC {url}: {describe(e)}")
    if "http" in classes:
        host = _http_host(environment.host)
        try:
            client = httpclient.InferenceServerClient(host, connection_timeout=5, network_timeout=5)
            if not client.is_server_ready() or not client.is_model_ready(model):
                problems.append(f"HTTP {host}: the server is up but model {model!r} is not ready")
        except Exception as e:  # noqa: BLE001
            problems.append(f"HTTP {host}: {describe(e)}")
    return "; ".join(problems)


@events.init.add_listener
def _check_server_headless(environment, **_):
    """Headless runs (``--headless``, ``htr loadtest``): fail in seconds, naming the URL, when the server is
    unreachable or not ready, instead of a whole run of failed requests."""
    options = environment.parsed_options
    if options is None or not getattr(options, "headless", False) or getattr(options, "worker", False):
        return
    problem = _unready(environment)
    if problem:
        raise SystemExit(f"htr load test: server not ready ({problem}). Start it first (`htr serve`), or point "
                         "the load test at it with --grpc-url / --host.")


@events.test_start.add_listener
def _check_server_web(environment, **_):
    """Web UI runs: the same check when the user presses start; the run stops with the reason logged."""
    options = environment.parsed_options
    if options is None or getattr(options, "headless", False) or getattr(options, "worker", False):
        return
    problem = _unready(environment)
    if problem:
        logging.getLogger("htr.loadtest").error(f"server not ready ({problem}); start it (`htr serve`) first")
        if environment.runner is not None:
            gevent.spawn(environment.runner.stop)


class _TritonUser(User):
    """Shared task logic; subclasses provide ``_connect`` and ``_infer`` for one protocol."""

    abstract = True
    wait_time = constant(0)  # closed loop: each user sends its next request when the last one returns
    protocol = ""

    def on_start(self):
        options = self.environment.parsed_options
        self.model = options.model if options else ENSEMBLE
        self.batch = max(1, options.batch_size if options else 8)
        self.timeout = options.request_timeout if options else 30.0
        try:
            self.client = self._connect()
        except Exception as e:  # noqa: BLE001 - report it as a failed request, then stop this user
            self._fire("connect", 0.0, 0, e)
            raise StopUser() from e

    def on_stop(self):
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    @task(4)
    def single_image(self):
        self._request(f"{self.model} [1]", 1)

    @task(1)
    def batch_of_images(self):
        self._request(f"{self.model} [{self.batch}]", self.batch)

    def _request(self, name: str, n: int) -> None:
        blobs = np.array([random.choice(_IMAGES) for _ in range(n)], dtype=np.object_).reshape(n, 1)
        start = time.perf_counter()
        exception, length = None, 0
        try:
            texts, errors = self._infer(blobs)
            length = sum(len(t) for t in texts)
            bad = [e.decode() for e in errors if e]
            if bad:
                exception = RuntimeError(f"{len(bad)}/{n} images failed: {bad[0]}")
        except Exception as e:  # noqa: BLE001 - every failure is reported to Locust, never raised
            exception = e if str(e) else RuntimeError(describe(e))  # the server's message, never an empty one
        self._fire(name, (time.perf_counter() - start) * 1000.0, length, exception)

    def _fire(self, name, ms, length, exception):
        self.environment.events.request.fire(request_type=self.protocol, name=name, response_time=ms,
                                             response_length=length, exception=exception, context={})


class GrpcUser(_TritonUser):
    """Calls the ensemble over gRPC (``tritonclient.grpc``) at ``--grpc-url``."""

    protocol = "grpc"

    def _connect(self):
        return grpcclient.InferenceServerClient(_grpc_url(self.environment.parsed_options))

    def _infer(self, blobs):
        inp = grpcclient.InferInput(IMAGE_BYTES, list(blobs.shape), "BYTES")
        inp.set_data_from_numpy(blobs)
        outputs = [grpcclient.InferRequestedOutput(n) for n in (TEXT, ERROR)]
        result = self.client.infer(self.model, [inp], outputs=outputs, client_timeout=self.timeout)
        return result.as_numpy(TEXT).reshape(-1), result.as_numpy(ERROR).reshape(-1)


class HttpUser(_TritonUser):
    """Calls the ensemble over HTTP/REST (``tritonclient.http``, gevent-native) at Locust's ``--host``."""

    protocol = "http"

    def _connect(self):
        return httpclient.InferenceServerClient(_http_host(self.host), connection_timeout=self.timeout,
                                                network_timeout=self.timeout)

    def _infer(self, blobs):
        inp = httpclient.InferInput(IMAGE_BYTES, list(blobs.shape), "BYTES")
        inp.set_data_from_numpy(blobs, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in (TEXT, ERROR)]
        result = self.client.infer(self.model, [inp], outputs=outputs)
        return result.as_numpy(TEXT).reshape(-1), result.as_numpy(ERROR).reshape(-1)
