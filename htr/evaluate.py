"""``htr eval``: score a checkpoint on a labelled Kaggle-layout folder and print one JSON object.

Example::

    htr eval --checkpoint models/crnn_names.pt --labels ../shared/data/kaggle_names/labels.csv \\
             --images ../shared/data/kaggle_names/labelled --split eval --json

``--split eval`` keeps only the held-out real images (the hash split of ``htr.data.split_of``) that
training never sees; ``--split all`` scores every row.

A served run is scored the same way from its predictions, without a checkpoint::

    htr recognize --csv --output served.csv ../shared/data/kaggle_names/labelled
    htr eval --served served.csv --labels ../shared/data/kaggle_names/labels.csv --split eval --json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from .data import read_kaggle, split_samples
from .scores import by_confidence, score


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("eval", help="score a checkpoint on a labelled folder (JSON out)", description=__doc__,
                       formatter_class=formatter_class)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="CRNN checkpoint (.pt) to run offline")
    src.add_argument("--served", type=Path,
                     help="predictions CSV from `htr recognize --csv` (FILENAME,IDENTITY,...) to score instead")
    p.add_argument("--labels", type=Path, required=True, help="CSV with FILENAME,IDENTITY")
    p.add_argument("--images", type=Path, default=None, help="image folder (default: beside the CSV)")
    p.add_argument("--split", choices=["all", "eval", "train"], default="all",
                   help="rows to score: all, or one side of the deterministic hash split")
    p.add_argument("--decoder", choices=["greedy", "beam"], default=None,
                   help="default: the checkpoint's own decoding, the one its exported repository serves "
                        "(beam search with its name model where it carries one); greedy: best path")
    p.add_argument("--beam-width", type=int, default=None, help="default: the checkpoint's (10)")
    p.add_argument("--lexicon", type=Path, default=None, help="one allowed string per line (implies beam)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--by-confidence", type=str, default=None, metavar="T1,T2,...",
                   help="also report, per confidence threshold, the share of reads kept and their exact match "
                        "(JSON key by_confidence; e.g. 0,0.1,0.5,0.9): where to send reads to human review, "
                        "or which --pseudo-threshold to train with")
    p.add_argument("--predictions", type=Path, default=None, help="also write FILENAME,IDENTITY,PREDICTION,CONFIDENCE")
    p.set_defaults(func=run)


def evaluate(recognizer, samples) -> tuple[dict, list[tuple[str, float]]]:
    t0 = time.perf_counter()
    preds = recognizer.predict_files([s.path for s in samples])
    elapsed = time.perf_counter() - t0
    result = score([p for p, _ in preds], [s.text for s in samples])
    result["seconds"] = round(elapsed, 3)
    return result, preds


def read_served(path: Path, samples) -> tuple[list[tuple[str, float]], int]:
    """Predictions of a served run (``htr recognize --csv``) in the order of ``samples``; a labelled
    image missing from the CSV counts as an empty prediction (so a partial run cannot look better)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = {r["FILENAME"]: r for r in csv.DictReader(f)}
    out = []
    for s in samples:
        r = rows.get(s.path.name)
        out.append((r["IDENTITY"], float(r.get("CONFIDENCE") or 0.0)) if r else ("", 0.0))
    return out, sum(1 for s in samples if s.path.name not in rows)


def run(args) -> int:
    thresholds = None
    if args.by_confidence is not None:
        try:
            thresholds = [float(t) for t in args.by_confidence.split(",") if t.strip()]
        except ValueError:
            thresholds = None
        if not thresholds:
            print(f"error: --by-confidence wants comma-separated numbers, e.g. 0,0.1,0.5, got {args.by_confidence!r}",
                  file=sys.stderr)
            return 2
    samples, report = read_kaggle(args.labels, args.images, check_files=args.served is None)
    if args.split != "all":
        train, held = split_samples(samples)
        samples = held if args.split == "eval" else train
    if not samples:
        print(f"error: no usable rows in {args.labels} (split {args.split})", file=sys.stderr)
        return 2
    if args.served:
        preds, missing = read_served(args.served, samples)
        result = score([p for p, _ in preds], [s.text for s in samples])
        result.update({"served": str(args.served), "missing": missing})
        decoder = "served"
    else:
        from .offline import OfflineRecognizer

        rec = OfflineRecognizer(args.checkpoint, device=args.device, decoder=args.decoder, lexicon=args.lexicon,
                         beam_width=args.beam_width, batch_size=args.batch_size)
        result, preds = evaluate(rec, samples)
        result["checkpoint"] = str(args.checkpoint)
        decoder = rec.codec.describe()
    if thresholds:
        result["by_confidence"] = by_confidence([p for p, _ in preds], [c for _, c in preds],
                                                [s.text for s in samples], thresholds)
    result.update({
        "labels": str(args.labels), "split": args.split, "decoder": decoder,
        "lexicon": str(args.lexicon) if args.lexicon else None, "dropped": dict(report.dropped),
    })
    if args.predictions:
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        with open(args.predictions, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["FILENAME", "IDENTITY", "PREDICTION", "CONFIDENCE"])
            for s, (text, conf) in zip(samples, preds):
                w.writerow([s.path.name, s.text, text, f"{conf:.4f}"])
    if not args.json:
        print(f"{report}\nscored {result['n']} images ({decoder})", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return 0
