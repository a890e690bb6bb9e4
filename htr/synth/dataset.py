"""Many synthetic crops on disk, in the Kaggle folder layout, written by a pool of processes.

:func:`write_dataset` writes ``images/SYNTH_000001.jpg ...`` and ``labels.csv`` (``FILENAME,IDENTITY``),
so every tool that reads the Kaggle folder reads this one. Image ``i`` is rendered from a Generator
seeded by ``(seed, i)`` alone, so the files are the same for any number of workers. The worker
functions (:func:`_init_worker`, :func:`_make_one`) are top-level so that the spawned processes can
unpickle them by name.
"""
from __future__ import annotations

import csv
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from htr.config import normalize_label
from htr.synth.generator import SynthGenerator
from htr.synth.names import default_names_path, load_names

FILENAME_FORMAT = "SYNTH_{:06d}.jpg"
CSV_HEADER = ("FILENAME", "IDENTITY")


@dataclass(frozen=True)
class SynthSummary:
    count: int
    out_dir: Path
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


_WORKER: dict = {}


def _init_worker(kwargs: dict, images: str) -> None:
    _WORKER["gen"] = SynthGenerator(**kwargs)
    _WORKER["images"] = Path(images)


def _make_one(job: tuple[int, int]) -> tuple[int, str]:
    """Write image number ``index`` (1-based); its Generator is seeded by (seed, index) alone."""
    seed, index = job
    gen: SynthGenerator = _WORKER["gen"]
    rng = np.random.default_rng([seed, index])
    text = gen.sample_text(rng)
    gray, quality = gen.render_gray(text, rng)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)  # the real files are RGB JPEGs of grey content
    name = FILENAME_FORMAT.format(index)
    if not cv2.imwrite(str(_WORKER["images"] / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {_WORKER['images'] / name}")
    return index, normalize_label(text, gen.alphabet)


def _resolve_names(names_path) -> list[str]:
    path = Path(names_path) if names_path is not None else default_names_path()
    if path.is_file():
        return load_names(path)
    if names_path is not None:
        raise FileNotFoundError(f"names corpus not found: {path}")
    print(f"htr synth: names corpus not found at {path} (set HTR_DATA or pass --names); "
          "using Faker fr_FR names only", file=sys.stderr)
    return []


def write_dataset(out_dir, count: int, seed: int = 0, names_path=None, faker_ratio: float = 0.3,
                  workers: int = 1, progress: bool = True) -> SynthSummary:
    """Write ``count`` synthetic crops in the Kaggle layout and return a summary.

    ``out_dir/images/SYNTH_000001.jpg ...`` and ``out_dir/labels.csv`` (``FILENAME,IDENTITY``,
    FILENAME relative to ``out_dir/images``). Image ``i`` depends only on ``(seed, i)``, so the
    output is the same for any ``workers``. ``names_path`` None uses :func:`default_names_path`,
    falling back to Faker names (with a message) when that file is absent.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    kwargs = dict(names=_resolve_names(names_path), faker_ratio=faker_ratio, seed=seed)
    jobs = [(seed, i) for i in range(1, count + 1)]
    labels: dict[int, str] = {}
    start = time.perf_counter()
    with tqdm(total=count, disable=not progress, unit="img", desc="synth") as bar:
        if workers <= 1:
            _init_worker(kwargs, str(images))
            results = map(_make_one, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (kwargs, str(images)))
            results = pool.imap_unordered(_make_one, jobs, chunksize=32)
        try:
            for index, label in results:
                labels[index] = label
                bar.update()
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            _WORKER.clear()
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(CSV_HEADER)
        for i in range(1, count + 1):
            out.writerow((FILENAME_FORMAT.format(i), labels[i]))
    return SynthSummary(count, out_dir, time.perf_counter() - start)
