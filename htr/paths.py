"""Where the project's files and the real images are, stated once.

``default_data_dir()`` is the Kaggle-layout folder (``labelled/*.jpg`` + ``labels.csv``, ``unlabelled/``,
``names_corpus.txt``) that every command reads by default: ``$HTR_DATA`` when set, else
``../shared/data/kaggle_names`` beside the checkout. It is read at call time, so a test or a user that sets
``HTR_DATA`` after import is honoured.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The checkout (the folder holding ``setup.py``, ``models/``, ``samples/``), for an editable install.
ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "HTR_DATA"


def default_data_dir() -> Path:
    """``$HTR_DATA``, else ``<checkout>/../shared/data/kaggle_names``."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value) if value else ROOT.parent / "shared" / "data" / "kaggle_names"
