"""Shared fixtures. Real images come from ../shared/data/kaggle_names (or $HTR_DATA)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HTR_DATA", ROOT.parent / "shared" / "data" / "kaggle_names"))


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
