"""The review folder: the reads the model doubts, kept for people to check.

``htr recognize PATHS --review-below T --review-out DIR`` writes it on the client (the server never writes
request data to disk); ``htr label push DIR`` sends it to Label Studio::

    DIR/
      reads.csv     FILENAME,TEXT,CONFIDENCE,SOURCE: the most useful first (lowest confidence first)
      images/       a copy of each kept image, under its FILENAME
      review.json   how the reads were made: server, model, threshold, cap, counts

Ranking is by confidence alone: the served ensemble answers one reading per image (``TEXT``, ``CONFIDENCE``),
so ranking greedy/beam disagreements first would cost a second inference of every image.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import LabellingError
from .folders import staged_folder

READS_CSV = "reads.csv"
IMAGES = "images"
META_JSON = "review.json"
COLUMNS = ("FILENAME", "TEXT", "CONFIDENCE", "SOURCE")
DEFAULT_LIMIT = 100  # reads kept per review round unless --review-max says otherwise


@dataclass(frozen=True)
class Read:
    """One doubtful read: ``filename`` is its name under ``images/`` (unique in the folder), ``source`` the path
    the image was read from."""

    filename: str
    text: str
    confidence: float
    source: str


def select_doubtful(reads, below: float, limit: int = DEFAULT_LIMIT) -> list[Read]:
    """The reads whose confidence is below ``below``, lowest confidence first (ties by name), at most ``limit``.

    ``reads``: ``(source_path, name, text, confidence)`` of images that were read (failed ones are not reads);
    ``name`` is ``htr.client.image_files``' name (a relative path for files found in sub-folders). Names are made
    flat and unique: ``a/b.jpg`` -> ``a_b.jpg``, a second ``b.jpg`` -> ``b-2.jpg``.
    """
    if not 0 < below:
        raise ValueError(f"the review threshold must be > 0 (confidences lie in [0, 1]), got {below}")
    if limit < 1:
        raise ValueError(f"the review cap must be >= 1, got {limit}")
    kept = sorted((float(conf), name, str(source), text) for source, name, text, conf in reads if conf < below)
    out, taken = [], set()
    for conf, name, source, text in kept[:limit]:
        out.append(Read(_unique(PurePosixPath(name).as_posix().replace("/", "_"), taken), text, conf, source))
    return out


def _unique(name: str, taken: set) -> str:
    stem, suffix, n = PurePosixPath(name).stem, PurePosixPath(name).suffix, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{suffix}"
    taken.add(name)
    return name


def write_review(out_dir: Path, reads: list[Read], meta: dict) -> Path:
    """Write the review folder whole (images copied, ``reads.csv``, ``review.json``), replacing an earlier one.

    Nothing is left half-written: the folder is built beside ``out_dir`` and renamed into place at the end."""
    out_dir = Path(out_dir)
    with staged_folder(out_dir, READS_CSV) as stage:
        (stage / IMAGES).mkdir()
        for r in reads:
            try:
                shutil.copyfile(r.source, stage / IMAGES / r.filename)
            except OSError as e:
                raise LabellingError(f"cannot copy {r.source} into the review folder: {e.strerror}") from None
        with open(stage / READS_CSV, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            w.writerows((r.filename, r.text, f"{r.confidence:.6f}", r.source) for r in reads)
        (stage / META_JSON).write_text(json.dumps({**meta, "kept": len(reads)}, indent=1) + "\n", encoding="utf-8")
    return out_dir


def read_review(folder: Path) -> tuple[list[Read], dict]:
    """The reads and the metadata of a review folder, checked: columns, numbers, every image present."""
    folder = Path(folder)
    csv_path = folder / READS_CSV
    if not csv_path.is_file():
        raise LabellingError(f"{folder} is not a review folder: no {READS_CSV} (write one with "
                             "`htr recognize ... --review-below T --review-out DIR`)")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != COLUMNS:
        got = ",".join(rows[0]) if rows else "nothing"
        raise LabellingError(f"{csv_path}: expected the header {','.join(COLUMNS)}, got {got}")
    reads = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            filename, text, conf, source = row
            read = Read(filename, text, float(conf), source)
        except ValueError:
            raise LabellingError(f"{csv_path}:{line}: expected 4 columns FILENAME,TEXT,CONFIDENCE(number),SOURCE, "
                                 f"got {row}") from None
        if not (folder / IMAGES / filename).is_file():
            raise LabellingError(f"{csv_path}:{line}: image {IMAGES}/{filename} is missing")
        reads.append(read)
    meta_path = folder / META_JSON
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return reads, meta
