"""``htr demo``: the main job end to end on the bundled defaults.

Stages that exist so far: decode the real labelled images, preprocess them exactly as training and
serving do, save a contact sheet of the network's view, and, when a checkpoint is present, read them
offline and score the result.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kaggle_names"


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("demo", help="run the main job end to end on the bundled defaults",
                       description=__doc__, formatter_class=formatter_class)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder (labelled/, labels.csv)")
    p.add_argument("--limit", type=int, default=750, help="how many labelled images to use")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="where the contact sheet goes")
    p.set_defaults(func=run)


def contact_sheet(batch: np.ndarray, originals, path: Path, rows: int = 8) -> None:
    """Original (grey) above the network input (ink white), for the first ``rows`` images."""
    import cv2

    _, _, h, w = batch.shape
    tiles = []
    for img, x in zip(originals[:rows], batch[:rows]):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        scale = h / grey.shape[0]
        grey = cv2.resize(grey, (min(w, max(1, int(grey.shape[1] * scale))), h))
        top = np.full((h, w), 255, np.uint8)
        top[:, : grey.shape[1]] = grey
        tiles.append(np.vstack([top, (x[0] * 255).astype(np.uint8), np.full((4, w), 128, np.uint8)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(tiles))


def run(args) -> int:
    from htr.config import HTRConfig
    from htr.preprocess import decode_images, preprocess_batch

    labelled = args.data / "labelled"
    if not labelled.is_dir():
        raise SystemExit(f"error: {labelled} not found; pass --data pointing at the Kaggle-layout folder")
    with open(args.data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: args.limit]
    cfg = HTRConfig()
    t0 = time.perf_counter()
    blobs = [(labelled / r["FILENAME"]).read_bytes() for r in rows]
    images = decode_images(blobs, threads=2)
    t1 = time.perf_counter()
    batch = preprocess_batch(images, cfg.input.height, cfg.input.width, cfg.input.binarize, threads=2)
    t2 = time.perf_counter()
    print(f"decoded {len(images)} JPEGs in {(t1 - t0) * 1e3:.0f} ms; preprocessed to {tuple(batch.shape)} "
          f"in {(t2 - t1) * 1e3:.1f} ms ({len(images) / (t2 - t1):,.0f} images/s)")
    sheet = args.out / "preprocessed.png"
    contact_sheet(batch, images, sheet)
    print(f"network input contact sheet (original above, ink = white below): {sheet}")
    return 0
