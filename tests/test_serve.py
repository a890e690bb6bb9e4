"""Integration tests for ``htr serve``: a real tritonserver on free loopback ports, no mocks.

One tiny python-backend model (``double``: FP32 ``VALUES`` -> ``DOUBLED`` = 2 * VALUES) whose model.py
starts with the ``HTR_SITE_PACKAGES`` header and imports numpy and ``htr.preprocess``, so a green run
also proves the virtualenv (editable ``htr`` included) is importable inside Triton's stub process.
"""
from __future__ import annotations

import ipaddress
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from htr.export.repository import MODEL_PY_HEADER
from htr.serve import ServerError, ServerOptions, TritonServer, free_port

pytestmark = pytest.mark.slow

MODEL = "double"

CONFIG = f"""\
name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [ {{ name: "VALUES", data_type: TYPE_FP32, dims: [ -1 ] }} ]
output [ {{ name: "DOUBLED", data_type: TYPE_FP32, dims: [ -1 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""

MODEL_PY = MODEL_PY_HEADER + '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils

import htr.preprocess  # noqa: F401  (proves the project imports inside the stub)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.out_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "DOUBLED")["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "VALUES").as_numpy()
            doubled = pb_utils.Tensor("DOUBLED", (values * 2).astype(self.out_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[doubled]))
        return responses
'''

VALUES = np.array([[1.5, -2.0, 3.25]], dtype=np.float32)


def _make_repository(repo: Path) -> Path:
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG)
    (repo / MODEL / "1" / "model.py").write_text(MODEL_PY)
    return repo


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return _make_repository(tmp_path_factory.mktemp("model_repository"))


def _ports() -> dict[str, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    return dict(zip(("http_port", "grpc_port", "metrics_port"), sorted(ports)))


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "tritonserver.log"
    srv = TritonServer(repository, ServerOptions(**_ports(), log_file=log))
    srv.start(ready_timeout=60)
    yield srv
    srv.stop()


def _listeners(port: int) -> set[str]:
    """Addresses with a LISTEN socket on ``port``, from /proc/net/tcp and tcp6 (v4-mapped shown as IPv4)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            if len(addr) == 8:  # IPv4, little-endian
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
            else:
                ip = ipaddress.IPv6Address(b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8)))
                found.add(str(ip.ipv4_mapped or ip))  # gRPC listens on ::ffff:127.0.0.1 for 127.0.0.1
    return found


def _stub_processes(repository: Path) -> list[int]:
    """Live processes whose command line names the repository (the Python backend stubs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(repository).encode() in cmdline and b"triton_python_backend_stub" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_ready(server):
    assert server.is_ready()
    assert server.returncode is None
    with urllib.request.urlopen(f"{server.url_http}/v2/models/{MODEL}/ready", timeout=5) as r:
        assert r.status == 200


def _http_infer(server) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_endpoint)
    inp = httpclient.InferInput("VALUES", list(VALUES.shape), "FP32")
    inp.set_data_from_numpy(VALUES)
    result = client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("DOUBLED")])
    client.close()
    return result.as_numpy("DOUBLED")


def test_http_inference(server):
    np.testing.assert_array_equal(_http_infer(server), VALUES * 2)


def test_grpc_inference(server):
    import tritonclient.grpc as grpcclient

    # a proxy in the environment must not capture a loopback channel
    client = grpcclient.InferenceServerClient(server.url_grpc, channel_args=[("grpc.enable_http_proxy", 0)])
    inp = grpcclient.InferInput("VALUES", list(VALUES.shape), "FP32")
    inp.set_data_from_numpy(VALUES)
    result = client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("DOUBLED")])
    np.testing.assert_array_equal(result.as_numpy("DOUBLED"), VALUES * 2)
    client.close()


def _successes(server) -> int:
    with urllib.request.urlopen(server.url_metrics, timeout=5) as r:
        text = r.read().decode()
    counts = re.findall(rf'^nv_inference_request_success{{model="{MODEL}",version="1"}} (\d+)$', text, re.M)
    assert len(counts) == 1, f"no nv_inference_request_success for {MODEL} in /metrics:\n{text[:2000]}"
    return int(counts[0])


def test_metrics_count_requests(server, settled_count):
    before = _successes(server)
    _http_infer(server)
    assert settled_count(lambda: _successes(server), before + 1) == before + 1


def _post_status(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_admin_apis_need_the_key(server):
    """Model repository, trace and logging APIs are refused without the admin header; inference is not."""
    base = server.url_http
    for path in ("/v2/repository/index", "/v2/repository/models/preprocess/unload", "/v2/trace/setting",
                 "/v2/logging"):
        assert _post_status(base + path) == 403, path
    assert _post_status(base + "/v2/repository/index", {"htr-admin-key": "wrong"}) == 403
    assert _post_status(base + "/v2/repository/index", server.admin_headers) == 200
    assert server.is_ready()  # the refused unload changed nothing


def test_binds_loopback_only(server):
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        assert _listeners(port) == {"127.0.0.1"}, f"port {port} listens on {_listeners(port)}"


def test_port_in_use_is_refused(repository, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = _ports()
        ports["grpc_port"] = port
        srv = TritonServer(repository, ServerOptions(**ports, log_file=tmp_path / "log"))
        with pytest.raises(ServerError, match=rf"gRPC port {port} on 127.0.0.1 is already in use"):
            srv.start(ready_timeout=10)
    assert srv.pid is None  # refused before anything was spawned


def test_missing_repository_is_refused(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "nowhere", ServerOptions(**_ports())).start()


def test_sigterm_stops_cleanly(server, repository):
    stubs = _stub_processes(repository)
    assert stubs, "the python backend stub should be running while the model is loaded"
    assert server.stop(timeout=30) == 0  # tritonserver exits 0 after a graceful SIGTERM
    assert not server.killed
    assert not server.is_ready()
    deadline = time.monotonic() + 5
    while _stub_processes(repository) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _stub_processes(repository), "backend stubs outlived the server"


def test_cli_reaches_ready_and_stops_on_sigint(tmp_path):
    repository = _make_repository(tmp_path / "model_repository")
    ports = _ports()
    out = tmp_path / "serve.out"
    cmd = [sys.executable, "-m", "htr.cli", "serve", "--repository", str(repository),
           "--http-port", str(ports["http_port"]), "--grpc-port", str(ports["grpc_port"]),
           "--metrics-port", str(ports["metrics_port"]), "--ready-timeout", "60",
           "--log-file", str(tmp_path / "tritonserver.log")]
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "htr serve: ready in" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, f"htr serve exited early:\n{out.read_text()}"
            time.sleep(0.2)
        text = out.read_text()
        assert "htr serve: ready in" in text, text
        assert "--http-address 127.0.0.1" in text and "--grpc-address 127.0.0.1" in text
        assert f"http://127.0.0.1:{ports['http_port']}" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http_port']}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        # the admin key: in a 0600 file, never in the printed command line
        key_file = tmp_path / "tritonserver.admin-key"
        key = key_file.read_text().strip()
        assert len(key) >= 24 and key not in text and "<admin-key>" in text
        assert key_file.stat().st_mode & 0o777 == 0o600
        url = f"http://127.0.0.1:{ports['http_port']}/v2/repository/index"
        assert _post_status(url) == 403  # default explicit mode: repository API needs the key
        assert _post_status(url, {"htr-admin-key": key}) == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=40) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert "SIGINT: stopping tritonserver" in text and "stopped cleanly (status 0)" in text, text
    assert not _stub_processes(repository)


def _serve_until_ready(cmd: list[str], out: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while "htr serve: ready in" not in out.read_text():
        assert proc.poll() is None, f"htr serve exited early:\n{out.read_text()}"
        assert time.monotonic() < deadline, f"not ready after {timeout:.0f} s:\n{out.read_text()}"
        time.sleep(0.2)
    return proc, out.read_text()


def test_cli_start_is_quiet_and_its_files_have_stable_printed_paths(tmp_path):
    """Without --log-file/--admin-key-file, ``htr serve`` keeps its log and key at stable paths named by the
    HTTP port under runs/serve/ and prints them; a second run keeps the first run's log as .log.1. Before
    ``ready`` it echoes no start-up table and, without a GPU, none of the CUDA/NVML/DCGM lines (the log
    file keeps the tables)."""
    from htr.serve.cli import default_log_file
    from htr.serve.server import CPU_ONLY_ARGS, gpu_present

    repository = _make_repository(tmp_path / "model_repository")
    ports = _ports()
    log = default_log_file(ports["http_port"])
    key_file = log.with_name(log.stem + ".admin-key")
    cmd = [sys.executable, "-m", "htr.cli", "serve", "--repository", str(repository),
           "--http-port", str(ports["http_port"]), "--grpc-port", str(ports["grpc_port"]),
           "--metrics-port", str(ports["metrics_port"]), "--ready-timeout", "60"]
    try:
        for run in (1, 2):
            proc, text = _serve_until_ready(cmd, tmp_path / f"serve{run}.out")
            try:
                assert f"htr serve: log:       {log}\n" in text and f"htr serve: admin key: {key_file} " in text
                key = key_file.read_text().strip()
                assert key_file.stat().st_mode & 0o777 == 0o600 and key not in text
                status = _post_status(f"http://127.0.0.1:{ports['http_port']}/v2/repository/index",
                                      {"htr-admin-key": key})
                assert status == 200  # the printed file holds the key of this run
                before_ready = text.split("htr serve: ready in")[0]
                echoed = [line for line in before_ready.splitlines() if not line.startswith("htr serve: ")]
                assert all(line[:1] not in "+|" and line.strip() for line in echoed), before_ready
                assert len(echoed) <= 12, before_ready  # was ~60 lines of tables and GPU errors
                if not gpu_present():
                    assert all(a in text for a in CPU_ONLY_ARGS), text
                    for noise in ("CUDA", "NVML", "DCGM", "Cuda"):
                        assert noise not in before_ready, before_ready
                assert f"htr serve: models   {MODEL} 1 READY" in text
                assert "| Model" in log.read_text() and "| Option" in log.read_text()  # the tables: in the log
            finally:
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=40) == 0, (tmp_path / f"serve{run}.out").read_text()
        previous = log.with_name(log.name + ".1")
        assert previous.is_file() and "successfully loaded" in previous.read_text()
    finally:
        for f in (log, log.with_name(log.name + ".1"), key_file):
            f.unlink(missing_ok=True)
