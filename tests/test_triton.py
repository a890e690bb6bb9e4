"""Integration: the real tritonserver serving the CPU repository built from the shipped checkpoint."""
from __future__ import annotations

import re
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from htr.data import read_kaggle
from htr.preprocess import decode_images, preprocess_batch
from htr.offline import OfflineRecognizer

pytestmark = pytest.mark.slow  # a real tritonserver (conftest ``triton``)

OUTPUTS = ("TEXT", "CONFIDENCE", "ERROR")


def infer_bytes(client, module, blobs: list[bytes], model: str = "htr"):
    """One request carrying ``blobs``; returns [(text, confidence, error)]."""
    inp = module.InferInput("IMAGE_BYTES", [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    res = client.infer(model, [inp], outputs=[module.InferRequestedOutput(n) for n in OUTPUTS])
    texts, confs, errs = (res.as_numpy(n).reshape(-1) for n in OUTPUTS)
    return [(t.decode(), float(c), e.decode()) for t, c, e in zip(texts, confs, errs)]


@pytest.fixture(scope="module")
def labelled(kaggle_dir):
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    return samples


@pytest.fixture(scope="module")
def offline(checkpoint, labelled):
    """What ``htr eval`` predicts offline for every labelled image (the checkpoint's own decoding, as served)."""
    return OfflineRecognizer(checkpoint).predict_files([s.path for s in labelled])


def metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}{{model="{model}",version="1"}} ([0-9.e+]+)$', text, re.M)
    assert m, f"{name} for {model} not in the metrics"
    return float(m.group(1))


def test_models_ready_and_config_from_checkpoint(triton, checkpoint):
    from htr.model import load_checkpoint

    client = httpclient.InferenceServerClient(triton.http_endpoint)
    for model in ("htr", "preprocess", "crnn", "ctc_decode"):
        assert client.is_model_ready(model), model
    cfg = client.get_model_config("ctc_decode")
    import json

    assert json.loads(cfg["parameters"]["htr_config"]["string_value"]) == load_checkpoint(checkpoint)["config"]


def test_http_and_grpc_serve_the_same_text(triton, labelled):
    blobs = [s.path.read_bytes() for s in labelled[:16]]
    via_http = infer_bytes(httpclient.InferenceServerClient(triton.http_endpoint), httpclient, blobs)
    via_grpc = infer_bytes(grpcclient.InferenceServerClient(triton.url_grpc), grpcclient, blobs)
    assert [t for t, _, _ in via_http] == [t for t, _, _ in via_grpc]
    assert np.allclose([c for _, c, _ in via_http], [c for _, c, _ in via_grpc], atol=1e-6)
    assert all(e == "" for _, _, e in via_http + via_grpc)


def test_served_text_equals_offline_prediction_for_every_labelled_image(triton, labelled, offline):
    """No training/serving skew: the ensemble reads every labelled image exactly as ``htr eval`` does."""
    client = grpcclient.InferenceServerClient(triton.url_grpc)
    served = []
    for i in range(0, len(labelled), 64):
        served += infer_bytes(client, grpcclient, [s.path.read_bytes() for s in labelled[i : i + 64]])
    assert len(served) == len(offline) == len(labelled)
    mismatches = [(s.path.name, want, got) for s, (want, _), (got, _, _) in zip(labelled, offline, served) if want != got]
    assert not mismatches, f"{len(mismatches)} served texts differ from offline, e.g. {mismatches[:5]}"
    assert np.allclose([c for _, c in offline], [c for _, c, _ in served], atol=1e-4)


def test_dynamic_batching_under_concurrent_load(triton, labelled):
    """64 concurrent one-image requests: Triton runs crnn in fewer executions than inferences."""
    before = urllib.request.urlopen(triton.url_metrics, timeout=10).read().decode()
    client = grpcclient.InferenceServerClient(triton.url_grpc)
    done, errors = threading.Semaphore(0), []

    def callback(result, error):
        if error is not None:
            errors.append(error)
        done.release()

    blobs = [s.path.read_bytes() for s in labelled[:64]]
    for blob in blobs:
        inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([blob], dtype=np.object_).reshape(1, 1))
        client.async_infer("htr", [inp], callback, outputs=[grpcclient.InferRequestedOutput("TEXT")])
    for _ in blobs:
        assert done.acquire(timeout=120)
    assert not errors, errors[:3]
    after = urllib.request.urlopen(triton.url_metrics, timeout=10).read().decode()
    inferences = metric(after, "nv_inference_count", "crnn") - metric(before, "nv_inference_count", "crnn")
    executions = metric(after, "nv_inference_exec_count", "crnn") - metric(before, "nv_inference_exec_count", "crnn")
    assert inferences == 64
    assert executions < inferences, f"no dynamic batching: {executions} executions for {inferences} inferences"


def test_bad_image_in_a_batch_fails_alone(triton, labelled, offline):
    good = [s.path.read_bytes() for s in labelled[:3]]
    blobs = [good[0], b"not an image", good[1], good[2][: len(good[2]) // 2], b"", good[2]]
    for client, module in ((grpcclient.InferenceServerClient(triton.url_grpc), grpcclient),
                           (httpclient.InferenceServerClient(triton.http_endpoint), httpclient)):
        res = infer_bytes(client, module, blobs)
        assert [r[0] for r in (res[0], res[2], res[5])] == [offline[0][0], offline[1][0], offline[2][0]]
        assert all(res[k][2] == "" for k in (0, 2, 5))
        assert "not a decodable image" in res[1][2]
        assert "truncated or corrupt" in res[3][2] or "not a decodable image" in res[3][2]
        assert "empty (0 bytes)" in res[4][2]
        assert all(res[k][0] == "" and res[k][1] == 0.0 for k in (1, 3, 4))
        assert client.is_server_ready()


def test_crnn_is_callable_with_pixels(triton, labelled, checkpoint):
    rec = OfflineRecognizer(checkpoint)
    ic = rec.cfg.input
    images = decode_images([s.path.read_bytes() for s in labelled[:4]])
    pixels = preprocess_batch(images, ic.height, ic.width, ic.binarize)
    client = grpcclient.InferenceServerClient(triton.url_grpc)
    inp = grpcclient.InferInput("PIXELS", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(pixels)
    res = client.infer("crnn", [inp], outputs=[grpcclient.InferRequestedOutput("LOGPROBS")])
    assert np.abs(res.as_numpy("LOGPROBS") - rec.logprobs(pixels)).max() < 1e-4
    wide = np.zeros((2, 1, ic.height, ic.width * 2), np.float32)  # dynamic width
    inp = grpcclient.InferInput("PIXELS", list(wide.shape), "FP32")
    inp.set_data_from_numpy(wide)
    out = client.infer("crnn", [inp]).as_numpy("LOGPROBS")
    assert out.shape == (2, ic.width * 2 // 4, rec.cfg.num_classes)


def test_wrong_dtype_or_shape_is_refused_and_server_stays_ready(triton, checkpoint):
    client = grpcclient.InferenceServerClient(triton.url_grpc)
    bad = grpcclient.InferInput("PIXELS", [1, 1, 7, 64], "FP32")  # wrong height
    bad.set_data_from_numpy(np.zeros((1, 1, 7, 64), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.infer("crnn", [bad])
    h = OfflineRecognizer(checkpoint).cfg.input.height
    bad = grpcclient.InferInput("PIXELS", [1, 1, h, 64], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 1, h, 64), np.int32))
    with pytest.raises(InferenceServerException, match="(?i)data-type|datatype"):
        client.infer("crnn", [bad])
    assert client.is_server_ready() and client.is_model_ready("htr")
