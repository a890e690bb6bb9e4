"""Shared fixtures. Real images come from ../shared/data/kaggle_names (or $HTR_DATA)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from htr.paths import default_data_dir  # noqa: E402

DATA = default_data_dir()


@pytest.fixture(scope="session")
def kaggle_dir() -> Path:
    """The real-image folder; a clear failure (never a skip) when it is missing."""
    if not (DATA / "labelled").is_dir() or not (DATA / "labels.csv").is_file():
        pytest.fail(
            f"real images not found: expected {DATA}/labelled and {DATA}/labels.csv "
            "(the shared Kaggle-layout folder beside the checkout, or set HTR_DATA)",
            pytrace=False,
        )
    return DATA


@pytest.fixture(scope="session")
def real_blobs(kaggle_dir) -> list[bytes]:
    """Every labelled image plus every 20th unlabelled one, as encoded bytes."""
    files = sorted((kaggle_dir / "labelled").glob("*.jpg")) + sorted((kaggle_dir / "unlabelled").glob("*.jpg"))[::20]
    assert len(files) > 750, f"expected the 750 labelled images and more under {kaggle_dir}"
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="session")
def real_images(real_blobs):
    from htr.preprocess import decode_images

    return decode_images(real_blobs)


# --- the shipped model and a real Triton server (started once per test session) ---------------------

CHECKPOINT = Path(os.environ.get("HTR_CHECKPOINT", ROOT / "models" / "crnn_names.pt"))


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    if not CHECKPOINT.is_file():
        pytest.fail(f"shipped checkpoint not found at {CHECKPOINT} (set HTR_CHECKPOINT to use another)", pytrace=False)
    return CHECKPOINT


@pytest.fixture(scope="session")
def cpu_repository(tmp_path_factory, checkpoint, kaggle_dir) -> Path:
    """The CPU model repository built from the shipped checkpoint (htr.testing.repository, over
    htr.export.build): crnn in ONNX Runtime, FP32, whose log-probabilities match PyTorch within 1e-4;
    tests/test_engines.py serves the other engines and precisions."""
    from htr.testing.repository import build_cpu_repository

    root = tmp_path_factory.mktemp("serving")
    repo = build_cpu_repository(root / "model_repository", checkpoint, kaggle_dir, parity_images=16)  # raises on failure
    assert (repo / "htr" / "config.pbtxt").is_file(), "build_repository failed"
    return repo


@pytest.fixture(scope="session")
def triton(cpu_repository, tmp_path_factory):
    """A real tritonserver (the one bundled in nvidia-pytriton) serving the CPU repository on free ports."""
    from htr.serve import ServerOptions, TritonServer

    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    server = TritonServer(cpu_repository, ServerOptions.with_free_ports(log_file=log))
    server.start(ready_timeout=180)
    yield server
    server.stop()


def _settled_count(read, at_least: int, timeout_s: float = 10.0, hold_s: float = 0.5) -> int:
    """``read()`` (a request count of a live server) once it reaches ``at_least`` and ``hold_s`` later.

    Triton records a request's statistics after it has sent the response (an ensemble's after its last step), so
    a count read the instant the client returns can lag by a request. Wait for ``at_least``, then read again after
    a pause so that an extra request would show too (the caller asserts the exact figure)."""
    deadline = time.monotonic() + timeout_s
    while read() < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(hold_s)
    return read()


@pytest.fixture
def settled_count():
    """:func:`_settled_count`: read a server's request count after the server has recorded it."""
    return _settled_count


@pytest.fixture(scope="session")
def scans(kaggle_dir, tmp_path_factory) -> Path:
    """60 unlabelled scans to pseudo-label (images with a real label are never pseudo-labelled, so not the
    labelled folder)."""
    folder = tmp_path_factory.mktemp("scans")
    for p in sorted((kaggle_dir / "unlabelled").glob("*.jpg"))[:60]:
        (folder / p.name).symlink_to(p)
    return folder


@pytest.fixture(scope="session")
def tiny_kaggle(tmp_path_factory, kaggle_dir):
    """A Kaggle-layout folder with 60 real labelled images (the hash split still applies: 41 train / 19 held
    out), and their labels as the names corpus: the training smoke runs' data."""
    import csv

    from htr.data import read_kaggle

    root = tmp_path_factory.mktemp("tiny")
    (root / "labelled").mkdir()
    samples, _ = read_kaggle(kaggle_dir / "labels.csv")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FILENAME", "IDENTITY"])
        for s in samples[:60]:
            (root / "labelled" / s.path.name).write_bytes(s.path.read_bytes())
            w.writerow([s.path.name, s.text])
    (root / "names_corpus.txt").write_text("\n".join(s.text for s in samples) + "\n")
    return root


# --- a real Label Studio (the review loop: tests/test_labelling.py, tests/test_review_loop.py) ----------------------

@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """Label Studio from .venv-labelstudio (`make labelstudio`) on a free loopback port, data in a temp folder."""
    from htr.labelling.local import LocalLabelStudio

    ls = LocalLabelStudio(tmp_path_factory.mktemp("label-studio"))
    if not ls.executable.is_file():
        pytest.fail(f"{ls.executable} not found: `make labelstudio` installs Label Studio (its own venv)",
                    pytrace=False)
    ls.start(timeout_s=240)
    print(f"\nLabel Studio ready on {ls.url} in {ls.startup_s:.1f} s "
          f"({'migrated template database' if ls.from_template else 'fresh database: migrations'})")
    yield ls
    ls.stop()
