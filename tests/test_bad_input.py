"""Bad input, limits and security against the real tritonserver (issue 7). No mocks, real images.

Raw tritonclient requests (gRPC and HTTP) go to the ``htr`` ensemble and to ``crnn`` so that Triton's own
answers are what is checked; one case goes through ``htr.client``. For every case: the bad item gets an
``ERROR`` that names the problem (or the request a clear error), every good item of the same request gets
the text the offline model gives for it alone, and the server is still ready and serving afterwards.

The cases themselves live in ``htr.testing.bad_inputs``, shared with the fuzz run (``bench/fuzz.py``).
"""
from __future__ import annotations

import ast
import base64
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from htr.client import HTRClient
from htr.offline import OfflineRecognizer
from htr.serve import ServerOptions, TritonServer, stub_processes
from htr.testing import bad_inputs as bad

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

OUTPUTS = ("TEXT", "CONFIDENCE", "ERROR")
PROTOCOLS = ("grpc", "http")
TIMEOUT_S = 120  # no request here may hang: a hang fails the test instead
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via *_proxy


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(kaggle_dir) -> list[bytes]:
    """Four real labelled crops (encoded JPEG bytes)."""
    files = sorted((kaggle_dir / "labelled").glob("*.jpg"))[:4]
    assert len(files) == 4
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> OfflineRecognizer:
    return OfflineRecognizer(checkpoint)


@pytest.fixture(scope="module")
def cases(good) -> list[bad.Case]:
    return bad.bad_cases(good[0]) + bad.odd_cases(good[1])


def _client(server: TritonServer, protocol: str):
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.url_grpc, channel_args=[("grpc.enable_http_proxy", 0)])
        return client, grpcclient
    return httpclient.InferenceServerClient(server.http_endpoint, connection_timeout=TIMEOUT_S,
                                            network_timeout=TIMEOUT_S), httpclient


def _kw(module) -> dict:
    return {"client_timeout": TIMEOUT_S} if module is grpcclient else {}


def infer_bytes(client, module, blobs: list[bytes]) -> list[tuple[str, float, str]]:
    """One request to the ensemble carrying ``blobs``; [(text, confidence, error)] per item."""
    inp = module.InferInput("IMAGE_BYTES", [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    res = client.infer("htr", [inp], outputs=[module.InferRequestedOutput(n) for n in OUTPUTS], **_kw(module))
    texts, confs, errs = (res.as_numpy(n).reshape(-1) for n in OUTPUTS)
    return [(t.decode(), float(c), e.decode()) for t, c, e in zip(texts, confs, errs)]


def infer_pixels(client, module, array: np.ndarray, datatype: str = "FP32"):
    inp = module.InferInput("PIXELS", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return client.infer("crnn", [inp], **_kw(module)).as_numpy("LOGPROBS")


def assert_serving(server: TritonServer, good: list[bytes], recognizer: OfflineRecognizer) -> None:
    """/v2/health/ready answers 200 and a good image is read as offline, over both protocols."""
    assert server.running(), "tritonserver exited"
    with OPENER.open(f"{server.url_http}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    want = recognizer.predict_blobs(good[:1])[0][0]
    for protocol in PROTOCOLS:
        client, module = _client(server, protocol)
        assert infer_bytes(client, module, good[:1])[0][::2] == (want, "")
        client.close()


def assert_refused(item: tuple[str, float, str], case: bad.Case) -> None:
    text, conf, err = item
    assert re.search(case.error, err), f"{case}: ERROR {err!r} does not match {case.error!r}"
    assert (text, conf) == ("", 0.0), f"{case}: a refused item must have no text, got {text!r} {conf}"


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _stub_pids(server: TritonServer) -> dict[str, int]:
    return {s.instance: s.pid for s in stub_processes(server.pid)}


@pytest.fixture(scope="module")
def stubs_at_start(triton) -> dict[str, int]:
    pids = _stub_pids(triton)
    assert {"preprocess", "crnn", "ctc_decode"} <= {i.rsplit("_", 2)[0] for i in pids}, pids
    return pids


# --- the ensemble: each case alone, then all of them in one request with good images ---------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_case_alone_gets_a_clear_answer(triton, protocol, cases, recognizer, stubs_at_start):
    client, module = _client(triton, protocol)
    for case in cases:
        [item] = infer_bytes(client, module, [case.blob])
        if case.expect == bad.REFUSED:
            assert_refused(item, case)
        else:  # valid but odd: read like any image, exactly as the offline model reads it
            (want, conf), = recognizer.predict_blobs([case.blob])
            assert item[2] == "", f"{case} was refused: {item[2]}"
            assert item[0] == want and item[1] == pytest.approx(conf, abs=1e-4), (case, item, want)
    client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mixed_batch_bad_items_fail_alone_good_items_read_as_alone(triton, protocol, cases, good, recognizer):
    """Every case between real images in one request: each good item gets the text it gets when sent alone
    (and offline), each bad one its own error."""
    client, module = _client(triton, protocol)
    items = []
    for k, case in enumerate(cases):
        items += [good[k % len(good)], case.blob]
    got = infer_bytes(client, module, [b.blob if isinstance(b, bad.Case) else b for b in items])
    alone = [infer_bytes(client, module, [g])[0] for g in good]
    offline = recognizer.predict_blobs(good)
    for k, case in enumerate(cases):
        g, item = got[2 * k], got[2 * k + 1]
        want_alone, want_offline = alone[k % len(good)], offline[k % len(good)]
        assert g[2] == "" and g[0] == want_alone[0] == want_offline[0], (k, g, want_alone, want_offline)
        assert g[1] == pytest.approx(want_offline[1], abs=1e-4)
        if case.expect == bad.REFUSED:
            assert_refused(item, case)
        else:
            assert item[2] == "" and item[0] == recognizer.predict_blobs([case.blob])[0][0], (case, item)
    client.close()
    assert_serving(triton, good, recognizer)


def test_decompression_bomb_is_refused_from_its_header(triton, good, recognizer):
    """30000 x 30000 pixels (900 MB decoded) in under 1 MB: refused in well under a second, and no
    preprocess process ever holds anything near the decoded size (its peak RSS, VmHWM, does not move)."""
    bomb = bad.solid_png(bad.BOMB_SIZE, bad.BOMB_SIZE)
    assert len(bomb) < 1_500_000
    stubs = [s.pid for s in stub_processes(triton.pid) if s.model == "preprocess"]
    assert stubs
    peak_before = {pid: _status_kb(pid, "VmHWM") for pid in stubs}
    client, module = _client(triton, "grpc")
    t0 = time.perf_counter()
    res = infer_bytes(client, module, [bomb] * 4 + good[:1])
    seconds = time.perf_counter() - t0
    for item in res[:4]:
        assert_refused(item, bad.Case("bomb", bomb, bad.REFUSED, bad.BOMB))
        assert "900000000 pixels" in item[2]
    assert res[4][2] == "" and res[4][0] == recognizer.predict_blobs(good[:1])[0][0]
    growth_mb = {pid: (_status_kb(pid, "VmHWM") - peak_before[pid]) / 1024 for pid in stubs}
    assert max(growth_mb.values()) < 100, f"a preprocess stub's peak RSS grew by {growth_mb} MB: was it decoded?"
    assert seconds < 5, f"refusing 4 bombs took {seconds:.1f} s: they were not refused from the header"
    client.close()


def test_many_large_allowed_images_are_decoded_a_chunk_at_a_time(triton, good, recognizer):
    """16 images of 49 megapixels each are all allowed (under 50), 0.8 GB decoded together but 1 MB on
    the wire: preprocess decodes them a chunk at a time, so its peak RSS stays far below the total."""
    big = bad.solid_png(7000, 7000, grey=200)
    stubs = [s.pid for s in stub_processes(triton.pid) if s.model == "preprocess"]
    rss_before = {pid: _status_kb(pid, "VmRSS") for pid in stubs}
    peak_before = {pid: _status_kb(pid, "VmHWM") for pid in stubs}
    client, module = _client(triton, "grpc")
    res = infer_bytes(client, module, [big] * 16 + good[:1])
    assert all(err == "" for _, _, err in res), [e for _, _, e in res if e][:2]
    assert res[16][0] == recognizer.predict_blobs(good[:1])[0][0]
    peak_mb = max((_status_kb(pid, "VmHWM") - min(rss_before[pid], peak_before[pid])) / 1024 for pid in stubs)
    assert peak_mb < 500, f"a preprocess stub peaked {peak_mb:.0f} MB above its resting RSS for 784 MB of pixels"
    client.close()


def test_large_images_leave_no_memory_behind(triton, good, recognizer):
    """JPEGs whose header announces 4-33 megapixels (allowed) are decoded in full; afterwards the preprocess
    stubs hand the memory back (glibc would keep ~40 MB of heap per instance after a few of them)."""
    blobs = [bad.lying_jpeg(good[k % len(good)], w, h) for k, (w, h) in enumerate(bad.LARGE_SIZES)]
    stubs = [s.pid for s in stub_processes(triton.pid) if s.model == "preprocess"]
    before = {pid: _status_kb(pid, "VmRSS") for pid in stubs}
    client, module = _client(triton, "grpc")
    for _ in range(3):
        res = infer_bytes(client, module, blobs)
        assert all(err == "" for _, _, err in res), [e for _, _, e in res if e][:2]
    assert [t for t, _, _ in res[:2]] == [t for t, _ in recognizer.predict_blobs(blobs[:2])]
    client.close()
    growth_mb = {pid: (_status_kb(pid, "VmRSS") - before[pid]) / 1024 for pid in stubs}
    assert max(growth_mb.values()) < 20, f"preprocess stubs kept {growth_mb} MB after decoding large images"


# --- request and image size limits -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_over_size_request_is_refused_and_the_server_keeps_serving(triton, protocol, good, recognizer):
    """Nine items of just under 8 MiB (each under max_bytes) add up to over the 64 MiB max_request_bytes."""
    blob = random.Random(7).randbytes(8 * 1024 * 1024 - 64)
    client, module = _client(triton, protocol)
    with pytest.raises(InferenceServerException) as e:
        infer_bytes(client, module, [blob] * 9)
    message = e.value.message()
    assert re.search(bad.REQUEST_TOO_LARGE, message), message
    assert f"request carries {9 * len(blob)} bytes in 9 image(s)" in message
    assert "--max-request-bytes" in message  # says how to raise it
    client.close()
    assert_serving(triton, good, recognizer)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_item_over_max_bytes_fails_alone(triton, protocol, good, recognizer):
    case = bad.over_max_bytes(8 * 1024 * 1024)  # the served default (RepositoryOptions.max_bytes)
    client, module = _client(triton, protocol)
    res = infer_bytes(client, module, [good[0], case.blob, good[1]])
    assert_refused(res[1], case)
    assert [r[0] for r in (res[0], res[2])] == [t for t, _ in recognizer.predict_blobs(good[:2])]
    client.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory, checkpoint, kaggle_dir):
    """A second server whose limits were set through build_repository (export/build_engine.py's --max-* flags)."""
    from htr.export.repository import RepositoryOptions
    from htr.testing.repository import build_cpu_repository

    root = tmp_path_factory.mktemp("limited")
    options = RepositoryOptions(max_request_bytes=300000, max_bytes=100000, max_pixels=1000000, preprocess_instances=1)
    repo = build_cpu_repository(root / "model_repository", checkpoint, kaggle_dir, parity_images=4, options=options,
                                shapes={"max_width": 512})  # raises when the build fails
    assert (repo / "htr" / "config.pbtxt").is_file()
    server = TritonServer(repo, ServerOptions.with_free_ports(log_file=root / "tritonserver.log"))
    server.start(ready_timeout=180)
    yield server
    server.stop()


def test_limits_are_configurable(limited, good, recognizer):
    from htr.export.repository import read_config

    params = read_config(limited.repository / "preprocess").parameters
    assert {k: params[k].string_value for k in ("max_request_bytes", "max_bytes", "max_pixels")} == {
        "max_request_bytes": "300000", "max_bytes": "100000", "max_pixels": "1000000"}
    assert read_config(limited.repository / "crnn").parameters["max_width"].string_value == "512"
    rng = random.Random(3)
    noise = [rng.randbytes(90_000) for _ in range(4)]
    for protocol in PROTOCOLS:
        client, module = _client(limited, protocol)
        with pytest.raises(InferenceServerException, match=r"360000 bytes in 4 image\(s\), over the limit of 300000"):
            infer_bytes(client, module, noise)
        res = infer_bytes(client, module, noise[:3])  # 270000 bytes: under the limit, each item refused alone
        assert all(re.search(bad.NOT_AN_IMAGE, err) for _, _, err in res), res
        over_bytes = bad.over_max_bytes(100_000)
        over_pixels = bad.solid_png(1001, 1000)  # 1.001 megapixels
        res = infer_bytes(client, module, [over_bytes.blob, over_pixels, good[0]])
        assert_refused(res[0], over_bytes)
        assert "over the limit of 100000 bytes" in res[0][2]
        assert re.search(r"1001x1000 \(1\.0 megapixels\) is over the limit of 1 megapixels", res[1][2]), res[1]
        assert res[2][2] == "" and res[2][0] == recognizer.predict_blobs(good[:1])[0][0]
        h = recognizer.cfg.input.height
        with pytest.raises(InferenceServerException, match=r"PIXELS width 516 is over the limit of 512"):
            infer_pixels(client, module, np.zeros((1, 1, h, 516), np.float32))
        assert infer_pixels(client, module, np.zeros((1, 1, h, 512), np.float32)).shape[:2] == (1, 128)
        client.close()
    assert_serving(limited, good, recognizer)


# --- crnn called directly with wrong tensors; the ensemble with wrong or empty tensors --------------

@pytest.fixture(scope="module")
def wrong(good, recognizer) -> dict[str, bad.WrongTensor]:
    return {w.name: w for w in bad.wrong_tensors(good[0], recognizer.cfg.input.height)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", [w.name for w in bad.wrong_tensors(b"")])
def test_wrong_tensor_is_refused_cleanly(triton, protocol, name, wrong, good, recognizer):
    """Wrong dtype, shape, input name or an empty batch, to ``crnn`` directly and to the ensemble: a clear
    error from Triton or the model, at once (no hang), and the next request is served."""
    case = wrong[name]
    client, module = _client(triton, protocol)
    t0 = time.perf_counter()
    with pytest.raises(InferenceServerException, match=case.error):
        client.infer(case.model, [case.as_input(module)], **_kw(module))
    assert time.perf_counter() - t0 < 30, f"{case} took {time.perf_counter() - t0:.0f} s to be refused"
    pixels = np.zeros((2, 1, recognizer.cfg.input.height, 64), np.float32)
    assert infer_pixels(client, module, pixels).shape[:2] == (2, 16)
    assert infer_bytes(client, module, good[:1])[0][::2] == (recognizer.predict_blobs(good[:1])[0][0], "")
    assert client.is_server_ready()
    client.close()


def _post(server: TritonServer, path: str, body: bytes | dict) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{server.url_http}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(req, timeout=TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_raw_http_garbage_and_json_requests(triton, good, recognizer):
    status, body = _post(triton, "/v2/models/htr/infer", random.Random(5).randbytes(4096))
    assert status >= 400 and "failed to parse the request JSON" in json.loads(body)["error"], (status, body)
    status, body = _post(triton, "/v2/models/htr/infer", b'{"inputs": [{"name": "IMAGE_BYTES", "shape": [1, 1]')
    assert status >= 400 and "error" in json.loads(body), (status, body)
    # JSON (non-binary) BYTES: the string is the image's bytes, never a file name to open
    status, body = _post(triton, "/v2/models/htr/infer", {"inputs": [
        {"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "data": ["/etc/passwd"]}]})
    assert status == 200, body
    outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert outputs["TEXT"] == [""] and re.search(bad.NOT_AN_IMAGE, outputs["ERROR"][0]), outputs
    assert "(11 bytes of unknown format)" in outputs["ERROR"][0]
    assert_serving(triton, good, recognizer)


# --- through htr.client ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_returns_each_bad_image_its_error(triton, protocol, cases, good, recognizer):
    url = triton.url_grpc if protocol == "grpc" else triton.http_endpoint
    items = [good[0]] + [c.blob for c in cases] + [good[1]]
    with HTRClient(url, protocol=protocol, timeout_s=TIMEOUT_S) as client:
        preds = client.recognize(items)
        assert len(preds) == len(items)
        offline = recognizer.predict_blobs(good[:2])
        assert (preds[0].text, preds[-1].text) == (offline[0][0], offline[1][0])
        assert preds[0].ok and preds[-1].ok
        for case, p in zip(cases, preds[1:-1]):
            if case.expect == bad.REFUSED:
                assert not p.ok and re.search(case.error, p.error) and p.text == "", (case, p)
            else:
                assert p.ok and p.text == recognizer.predict_blobs([case.blob])[0][0], (case, p)
        assert client.is_ready()


# --- security --------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it writes ``marker`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path):
    """``load_checkpoint`` uses ``torch.load(weights_only=True)``: a checkpoint carrying a pickled callable is
    refused and the callable never runs (plain ``torch.load(weights_only=False)`` would run it)."""
    import torch

    from htr.model import load_checkpoint

    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": "htr-crnn/1", "config": {}, "state_dict": {}, "x": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"(?is)not a readable checkpoint.*weights_only"):
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's pickled code ran"
    torch.load(path, weights_only=False)  # the control: unrestricted unpickling does run it
    assert marker.read_text() == "pwned"


def test_serve_binds_loopback_by_default_and_says_how_to_expose():
    out = subprocess.run([sys.executable, "-m", "htr.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert re.search(r"--address ADDRESS .*\(default: 127\.0\.0\.1\)", text), text
    assert "loopback by default" in text
    assert "--address 0.0.0.0" in text and "no authentication" in text
    assert re.search(r"firewall|proxy", text)


MODELS = ROOT / "export" / "triton_models"
FILESYSTEM_CALLS = {"open", "Path", "read_text", "read_bytes", "write_text", "write_bytes", "imread", "load",
                    "listdir", "scandir", "glob", "remove", "unlink", "system", "popen", "Popen", "run", "exec",
                    "eval", "__import__"}


@pytest.mark.parametrize("model_file", sorted(MODELS.glob("*.py")), ids=lambda p: p.stem)
def test_request_handling_never_touches_the_filesystem(model_file):
    """Only ``initialize`` (reading the repository's own files) may open files; everything that runs per
    request (``execute`` and the methods it calls) has no file, process or eval call at all."""
    tree = ast.parse(model_file.read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TritonPythonModel"]
    methods = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
    assert "execute" in methods and "initialize" in methods
    found = []
    for f in cls.body:
        if not isinstance(f, ast.FunctionDef) or f.name in ("initialize", "finalize"):
            continue
        for node in ast.walk(f):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                receiver = getattr(getattr(node.func, "value", None), "attr", None)
                if name == "run" and receiver == "session":
                    continue  # onnxruntime.InferenceSession.run: the network, not subprocess.run
                if name in FILESYSTEM_CALLS:
                    found.append(f"{f.name}:{node.lineno} {name}()")
    assert not found, f"{model_file.name}: per-request code calls {found}"


def test_ensemble_takes_only_image_bytes(triton):
    client, _ = _client(triton, "http")
    config = client.get_model_config("htr")
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("IMAGE_BYTES", "TYPE_STRING")]
    client.close()
    from htr.preprocess import decode_images

    with pytest.raises(ValueError, match="got str; pass the file's bytes"):
        decode_images(["/etc/passwd"])  # a str is never taken as a path
    with pytest.raises(ValueError, match=r"not a decodable image \(11 bytes"):
        decode_images([b"/etc/passwd"])


def test_triton_apis_give_requests_no_way_to_the_filesystem(triton, tmp_path, good, recognizer):
    """What Triton itself offers: model files sent with a load request, moving the log or trace file, and
    mapping a shared-memory region by a path. Without the admin key of ``htr serve`` all are refused (by the
    restricted-API header check, or by Triton itself: no repository API in model control none, no file
    moves over the network, no path as a shared-memory key), and nothing is written."""
    refused = r"This API is restricted|not allowed|can not be updated through network protocol"
    payload = base64.b64encode(b"import os\nos.system('touch /tmp/pwned')\n").decode()
    model_file = triton.repository / "htr" / "9" / "model.py"
    status, body = _post(triton, "/v2/repository/models/htr/load",
                         {"parameters": {"config": "{}", "file:9/model.py": payload}})
    assert status >= 400 and re.search(refused, body), (status, body)
    assert not model_file.exists()
    for path, key in (("/v2/logging", "log_file"), ("/v2/trace/setting", "trace_file"),
                      ("/v2/models/htr/trace/setting", "trace_file")):
        target = tmp_path / f"{key}.out"
        status, body = _post(triton, path, {key: str(target)})
        assert status >= 400 and re.search(refused, body), (path, status, body)
        assert not target.exists()
    for key in ("/etc/passwd", "../../etc/passwd"):
        status, body = _post(triton, "/v2/systemsharedmemory/region/probe/register",
                             {"key": key, "offset": 0, "byte_size": 64})
        assert status >= 400 and re.search(r"Unable to open shared memory region|restricted", body), (key, body)
    assert_serving(triton, good, recognizer)


# --- last: nothing above took a stub down ----------------------------------------------------------


def test_no_stub_died_and_the_server_is_still_ready(triton, stubs_at_start, good, recognizer):
    assert _stub_pids(triton) == stubs_at_start, "a python-backend stub died (Triton 2.51 does not restart it)"
    assert_serving(triton, good, recognizer)
