"""``htr eval``: score a checkpoint on a labelled Kaggle-layout folder and print one JSON object.

Example::

    htr eval --checkpoint models/crnn_names.pt --labels ../shared/data/kaggle_names/labels.csv \\
             --images ../shared/data/kaggle_names/labelled --split eval --json

``--checkpoint`` given more than once compares the checkpoints on the same images, one row each (exact match,
CER, n, decoding) and each one's difference from the first: how many reads it fixed and broke, and the change
in points. What a fine-tune on corrections did to the held-out images, in one table::

    htr eval --checkpoint models/crnn_names.pt --checkpoint runs/finetune/best.pt \\
             --labels ../shared/data/kaggle_names/labels.csv --split eval

Without ``--decoder`` each checkpoint reads with its own decoding (the one its exported repository serves).
With ``--json`` the comparison is one JSON object: ``rows`` (each checkpoint's result, as a single
checkpoint prints it) and ``differences`` (each later checkpoint against the first).

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
    src.add_argument("--checkpoint", type=Path, action="append",
                     help="CRNN checkpoint (.pt) to run offline; repeat it to compare checkpoints on the same "
                          "images (one row each, differences from the first)")
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


def compare(rows: list[dict], reads: list[list[tuple[str, float]]], labels: list[str]) -> list[dict]:
    """Each row after the first against the first, on the same images: reads it fixed (wrong -> right) and broke
    (right -> wrong), and the change of exact match and CER in points (positive CER: worse)."""
    first = [p == t for (p, _), t in zip(reads[0], labels)]
    out = []
    for row, preds in zip(rows[1:], reads[1:]):
        right = [p == t for (p, _), t in zip(preds, labels)]
        out.append({"checkpoint": row["checkpoint"], "against": rows[0]["checkpoint"],
                    "fixed": sum(r and not f for f, r in zip(first, right)),
                    "broken": sum(f and not r for f, r in zip(first, right)),
                    "changed_reads": sum(p != q for (p, _), (q, _) in zip(reads[0], preds)),
                    "exact_match_pt": round(100 * (row["exact_match"] - rows[0]["exact_match"]), 2),
                    "cer_pt": round(100 * (row["cer"] - rows[0]["cer"]), 2)})
    return out


def comparison_table(rows: list[dict], differences: list[dict]) -> str:
    """The Markdown table of a comparison: one row per checkpoint, the differences from the first beside it."""
    lines = ["| checkpoint | decoding | n | exact match | CER | exact vs first | CER vs first | fixed | broken |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        d = differences[i - 1] if i else None
        diff = (f"{d['exact_match_pt']:+.2f} pt | {d['cer_pt']:+.2f} pt | {d['fixed']} | {d['broken']}" if d
                else "| | |")
        lines.append(f"| {r['checkpoint']} | {r['decoder']} | {r['n']} | {100 * r['exact_match']:.2f}% | "
                     f"{100 * r['cer']:.2f}% | {diff} |")
    return "\n".join(lines)


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
    labels = [s.text for s in samples]
    common = {"labels": str(args.labels), "split": args.split,
              "lexicon": str(args.lexicon) if args.lexicon else None, "dropped": dict(report.dropped)}
    results, reads = [], []
    if args.served:
        preds, missing = read_served(args.served, samples)
        result = score([p for p, _ in preds], labels)
        result.update({"served": str(args.served), "missing": missing, "decoder": "served"})
        results.append(result)
        reads.append(preds)
    else:
        from .offline import OfflineRecognizer

        for checkpoint in args.checkpoint:
            try:
                rec = OfflineRecognizer(checkpoint, device=args.device, decoder=args.decoder, lexicon=args.lexicon,
                                        beam_width=args.beam_width, batch_size=args.batch_size)
            except (FileNotFoundError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            result, preds = evaluate(rec, samples)
            result.update({"checkpoint": str(checkpoint), "decoder": rec.codec.describe()})
            results.append(result)
            reads.append(preds)
    for result, preds in zip(results, reads):
        if thresholds:
            result["by_confidence"] = by_confidence([p for p, _ in preds], [c for _, c in preds], labels, thresholds)
        result.update(common)
    if args.predictions:
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        with open(args.predictions, "w", newline="") as f:
            w = csv.writer(f)
            tags = [""] if len(reads) == 1 else [f"_{i}" for i in range(1, len(reads) + 1)]  # one per checkpoint
            w.writerow(["FILENAME", "IDENTITY", *(f"{c}{t}" for t in tags for c in ("PREDICTION", "CONFIDENCE"))])
            for i, s in enumerate(samples):
                w.writerow([s.path.name, s.text, *(v for preds in reads for v in (preds[i][0], f"{preds[i][1]:.4f}"))])
    if len(results) == 1:
        (result,) = results
        if not args.json:
            print(f"{report}\nscored {result['n']} images ({result['decoder']})", file=sys.stderr)
        print(json.dumps(result, sort_keys=True))
        return 0
    differences = compare(results, reads, labels)
    if args.json:
        print(json.dumps({"rows": results, "differences": differences, **common}, sort_keys=True))
    else:
        print(f"{report}\nthe same {len(samples)} images ({args.labels}, split {args.split}) for each checkpoint",
              file=sys.stderr)
        print(comparison_table(results, differences))
    return 0
