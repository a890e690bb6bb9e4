"""Data: the Kaggle layout (a folder of JPEGs + CSV ``FILENAME,IDENTITY``), splits, augmentation, batches.

Batches are built by :class:`Collate`, which calls the same ``htr.preprocess`` functions the server
calls (``decode_images`` then ``preprocess_batch`` with the checkpoint's input config), so training
and serving see identical pixels (no skew). Augmentation works on the decoded uint8 image, before
preprocessing, so binarisation sees the same kinds of variation a scan has.
"""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import HTRConfig, normalize_label
from .preprocess import decode_images, preprocess_batch


@dataclass
class Sample:
    path: Path
    text: str
    source: str = "real"  # real | synth | pseudo
    weight: float = 1.0


@dataclass
class LoadReport:
    """What :func:`read_kaggle` kept and dropped, and why."""

    csv: str
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    changed: int = 0  # labels altered by normalisation (case, accents, spaces)
    empty: int = 0  # EMPTY rows kept as "" (keep_empty=True)

    def __str__(self) -> str:
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        empty = f" ({self.empty} EMPTY as empty text)" if self.empty else ""
        return f"{self.csv}: kept {self.kept}{empty}, normalised {self.changed}, dropped {sum(self.dropped.values())} ({drops})"


def read_kaggle(labels_csv: str | Path, images_dir: str | Path | None = None, alphabet: str | None = None,
                check_files: bool = True, keep_empty: bool = False) -> tuple[list[Sample], LoadReport]:
    """Read a Kaggle-layout CSV (``FILENAME,IDENTITY``) and clean it as the public notebooks do.

    Drops rows whose label is blank, NaN, ``EMPTY`` or ``UNREADABLE``, or has characters outside the
    alphabet after normalisation (upper case, accents stripped, spaces collapsed: see
    :func:`htr.config.normalize_label`), and rows whose image file is missing. With ``keep_empty`` the
    ``EMPTY`` rows (a blank form field) are kept with the empty text ``""``: what the model should read
    there (``UNREADABLE`` and blank rows are still dropped: nobody knows what they hold). ``images_dir`` defaults
    to the CSV's folder, then its ``labelled/`` or ``images/`` sub-folder if the files are there.
    """
    labels_csv = Path(labels_csv)
    alphabet = alphabet or HTRConfig().alphabet
    report = LoadReport(str(labels_csv))
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().upper() for c in rows[0][:2]] != ["FILENAME", "IDENTITY"]:
        raise ValueError(f"{labels_csv}: expected a header FILENAME,IDENTITY, got {rows[0] if rows else 'an empty file'}")
    rows = rows[1:]
    if images_dir is None:
        images_dir = labels_csv.parent
        for sub in ("labelled", "images"):
            if rows and (labels_csv.parent / sub / rows[0][0]).exists():
                images_dir = labels_csv.parent / sub
    images_dir = Path(images_dir)
    samples = []
    for row in rows:
        if not row or not row[0].strip():
            report.dropped["no filename"] += 1
            continue
        raw = row[1] if len(row) > 1 else ""
        text = normalize_label(raw, alphabet)
        key = str(raw).strip().upper()
        if text is None and keep_empty and key == "EMPTY":
            text = ""
        elif text is None:
            report.dropped[key if key in ("EMPTY", "UNREADABLE") else ("blank" if not key or key == "NAN" else "outside alphabet")] += 1
            continue
        path = images_dir / row[0].strip()
        if check_files and not path.is_file():
            report.dropped["missing file"] += 1
            continue
        report.changed += text != str(raw) and key != "EMPTY"
        report.empty += text == ""
        samples.append(Sample(path, text))
    report.kept = len(samples)
    return samples, report


def real_source(spec: str | Path) -> tuple[Path, Path | None]:
    """A labelled real source as ``htr train --real`` and ``htr tune-decoder --data`` take it: a Kaggle-layout
    folder (``labels.csv`` + ``labelled/``) or ``CSV[:IMAGES]`` (labels whose images lie elsewhere, e.g. scans
    of ``unlabelled/`` read by people through ``htr label``) -> (labels CSV, image folder or None = beside it)."""
    spec = Path(spec)
    if spec.is_dir():
        if not (spec / "labels.csv").is_file():
            raise FileNotFoundError(f"{spec}: a folder without labels.csv")
        return spec / "labels.csv", None
    csv_path, sep, images = str(spec).partition(":")
    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"{spec}: neither a folder with labels.csv nor a CSV[:IMAGES] file")
    return Path(csv_path), (Path(images) if sep and images else None)


def split_of(filename: str, eval_fraction: float = 1 / 3) -> str:
    """Deterministic split by a hash of the file name: ``"eval"`` for about ``eval_fraction`` of files.

    Stable across machines and runs, independent of the order or number of files, so the held-out
    real images never leak into training (the shipped model's card names this rule).
    """
    h = int.from_bytes(hashlib.sha1(Path(filename).name.encode()).digest()[:8], "big") / 2**64
    return "eval" if h < eval_fraction else "train"


def split_samples(samples: list[Sample], eval_fraction: float = 1 / 3) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if split_of(s.path.name, eval_fraction) == "train"]
    held = [s for s in samples if split_of(s.path.name, eval_fraction) == "eval"]
    return train, held


def split_train_val(train: list[Sample], val_fraction: float = 0.25) -> tuple[list[Sample], list[Sample]]:
    """The train side of :func:`split_samples` cut again into (train, validation) by a second hash of the
    file name (salted, so it is independent of the first): validation chooses epochs, weights and thresholds,
    and the ``eval`` side stays untouched for an honest score."""
    def h(name: str) -> float:
        return int.from_bytes(hashlib.sha1(b"val:" + Path(name).name.encode()).digest()[:8], "big") / 2**64
    return ([s for s in train if h(s.path.name) >= val_fraction],
            [s for s in train if h(s.path.name) < val_fraction])


def build_augment(strength: float = 1.0):
    """Scan-like variation on the uint8 image (albumentations): affine, elastic, stroke width, blur, noise, JPEG."""
    import albumentations as A
    import cv2

    s = strength
    return A.Compose([
        A.Affine(scale=(1 - 0.1 * s, 1 + 0.05 * s), rotate=(-2.5 * s, 2.5 * s), shear={"x": (-12 * s, 12 * s), "y": (0, 0)},
                 translate_percent={"x": (-0.02 * s, 0.02 * s), "y": (-0.05 * s, 0.05 * s)},
                 border_mode=cv2.BORDER_REPLICATE, p=0.8),
        A.ElasticTransform(alpha=8 * s, sigma=5, border_mode=cv2.BORDER_REPLICATE, p=0.25 * s),
        A.OneOf([A.Morphological(scale=(2, 2), operation="erosion"),   # erosion of the paper = thicker ink
                 A.Morphological(scale=(2, 2), operation="dilation")], p=0.3 * s),
        A.RandomBrightnessContrast(0.2 * s, 0.2 * s, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.MotionBlur(blur_limit=3)], p=0.2 * s),
        A.GaussNoise(std_range=(0.01, 0.06 * s), p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
    ])


class ImageDataset(torch.utils.data.Dataset):
    """Files on disk; yields ``(encoded bytes, text, weight)`` (decoding happens batched in Collate)."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        return s.path.read_bytes(), s.text, s.weight


class SynthDataset(torch.utils.data.Dataset):
    """``length`` synthetic samples rendered on the fly; item ``i`` of epoch ``e`` is seeded by (seed, e, i)."""

    def __init__(self, generator, length: int, seed: int = 0):
        self.generator, self.length, self.seed, self.epoch = generator, length, seed, 0

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image, text = self.generator.sample(rng)
        return image, text, 1.0


class Collate:
    """List of (bytes | uint8 image, text, weight) -> dict of tensors, through htr.preprocess."""

    def __init__(self, cfg: HTRConfig, augment=None):
        self.cfg, self.augment = cfg, augment

    def __call__(self, items):
        raw = [it[0] for it in items]
        enc_idx = [i for i, r in enumerate(raw) if not isinstance(r, np.ndarray)]
        images = list(raw)
        for i, img in zip(enc_idx, decode_images([raw[i] for i in enc_idx])):
            images[i] = img
        if self.augment is not None:
            images = [self.augment(image=img)["image"] for img in images]
        ic = self.cfg.input
        pixels = preprocess_batch(images, ic.height, ic.width, ic.binarize)
        texts = [it[1] for it in items]
        targets = [self.cfg.encode(t) for t in texts]
        return {
            "pixels": torch.from_numpy(pixels),
            "targets": torch.tensor([c for t in targets for c in t], dtype=torch.long),
            "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
            "texts": texts,
            "weights": torch.tensor([it[2] for it in items], dtype=torch.float32),
        }
