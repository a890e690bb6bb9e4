"""Every engine and precision the CPU repository can serve reads every labelled image as it does offline.

``tests/test_triton.py`` runs its server on the default engine (ONNX Runtime) in FP32; here each other choice of
``export/build_engine.py --cpu-engine/--precision`` gets its own repository and server:

- ``torchscript``: served text and confidence = PyTorch eager offline (``htr eval``), as before ONNX Runtime;
- ``onnxruntime`` INT8: served text and confidence = the same INT8 file run offline in ONNX Runtime
  (its accuracy against FP32 is the build's gate, ``htr.export.quantize``, opened wide here: the shipped model
  may fail it, and this checks that serving INT8 adds nothing, not whether INT8 is accurate enough).
"""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from htr.data import read_kaggle
from htr.export.build import build_repository
from htr.export.quantize import pixels_of, session
from htr.export.repository import RepositoryOptions, read_config
from htr.offline import OfflineRecognizer
from htr.runtime.contract import CONFIDENCE, CRNN, ENSEMBLE, ERROR, IMAGE_BYTES, LOGPROBS, PIXELS, TEXT
from htr.serve import ServerOptions, TritonServer

pytestmark = pytest.mark.slow

ENGINES = {  # id -> (cpu_engine, precision asked of the build, formats)
    "torchscript": ("torchscript", "fp32", "torchscript"),
    "onnxruntime-int8": ("onnxruntime", "int8", "onnx"),
}


@pytest.fixture(scope="module")
def labelled(kaggle_dir):
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    return samples


@pytest.fixture(scope="module", params=list(ENGINES))
def served(request, tmp_path_factory, checkpoint, kaggle_dir):
    engine, precision, formats = ENGINES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    repo = root / "repository"
    import htr.export.quantize as quantize

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "MAX_EXACT_DROP", 1.0)  # any INT8 passes: its serving is under test, not its accuracy
        mp.setattr(quantize, "MAX_CER_RISE", 1.0)
        report = build_repository(checkpoint, repo, options=RepositoryOptions(cpu_engine=engine), formats=formats,
                                  engines_dir=root / "engines", data=kaggle_dir, parity_images=16,
                                  precision=precision, progress=None)
    assert report.options.cpu_engine == engine and report.options.precision == precision
    server = TritonServer(repo, ServerOptions.with_free_ports(log_file=root / "server.log"))
    server.start(ready_timeout=180)
    yield request.param, repo, server
    server.stop()


def _offline(engine: str, repo, checkpoint, labelled) -> list[tuple[str, float]]:
    if engine == "torchscript":
        return OfflineRecognizer(checkpoint).predict_files([s.path for s in labelled])
    crnn = read_config(repo / CRNN)
    assert crnn.parameters["precision"].string_value == "int8"
    rec = OfflineRecognizer(checkpoint)
    cfg, sess = rec.cfg, session(repo / CRNN / "1" / "model.onnx", threads=1)
    pixels = pixels_of([s.path for s in labelled], cfg)  # (N, 1, H, W), as the build's accuracy gate reads them
    decoder = rec.codec  # the checkpoint's own decoding, which the served ctc_decode runs
    out = []
    for i in range(0, len(pixels), 64):
        out += decoder(sess.run([LOGPROBS], {PIXELS: pixels[i : i + 64]})[0])
    return out


def test_served_text_equals_offline_for_every_labelled_image(served, labelled, checkpoint):
    engine, repo, server = served
    client = grpcclient.InferenceServerClient(server.url_grpc)
    got = []
    for i in range(0, len(labelled), 64):
        blobs = np.array([s.path.read_bytes() for s in labelled[i : i + 64]], dtype=np.object_).reshape(-1, 1)
        inp = grpcclient.InferInput(IMAGE_BYTES, list(blobs.shape), "BYTES")
        inp.set_data_from_numpy(blobs)
        res = client.infer(ENSEMBLE, [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in (TEXT, CONFIDENCE, ERROR)])
        got += zip((t.decode() for t in res.as_numpy(TEXT).reshape(-1)), res.as_numpy(CONFIDENCE).reshape(-1),
                   (e.decode() for e in res.as_numpy(ERROR).reshape(-1)))
    want = _offline(engine, repo, checkpoint, labelled)
    assert len(got) == len(want) == len(labelled)
    assert all(e == "" for _, _, e in got)
    mismatches = [(s.path.name, w, g) for s, (w, _), (g, _, _) in zip(labelled, want, got) if w != g]
    assert not mismatches, f"{engine}: {len(mismatches)} served texts differ from offline, e.g. {mismatches[:5]}"
    assert np.allclose([c for _, c in want], [c for _, c, _ in got], atol=1e-4)
