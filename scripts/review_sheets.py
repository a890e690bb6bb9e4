#!/usr/bin/env python3
"""Review sheets: a random sample of doubtful reads drawn as numbered PNG sheets, for labelling by eye when
Label Studio is not at hand (``htr label push`` is the service's loop; this is its offline twin).

    htr recognize ../shared/data/kaggle_names/unlabelled --review-below 1.01 --review-max 20000 \\
        --review-out runs/review                                   # every read, with its confidence
    python scripts/review_sheets.py runs/review/reads.csv --below 0.84 --count 540 --out runs/sheets
    # read each sheet, write "INDEX TEXT" lines (TEXT "?" = skip: unreadable, cut off, ambiguous; "=" = the
    # model's read is right, as submitting Label Studio's pre-filled read unchanged) to
    # runs/sheets/answers.txt, then:
    python scripts/review_sheets.py runs/review/reads.csv --below 0.84 --count 540 --out runs/sheets \\
        --answers runs/sheets/answers.txt --labels data/reviewed/mine.csv

The sample is a seeded shuffle of the reads below ``--below`` (the same arguments give the same images).
Each row of a sheet shows the scan (1.6x) and, in blue, the model's read: what Label Studio pre-fills.
``--answers`` turns the typed lines into a Kaggle-layout CSV (``FILENAME,IDENTITY``, labels normalised as
training does) that ``htr train --real CSV:IMAGES`` and ``htr tune-decoder --data CSV:IMAGES`` take.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

ROWS_PER_SHEET = 20


def sample(reads_csv: Path, below: float, count: int, seed: int, above: float = 0.0,
           exclude: frozenset[str] = frozenset()) -> list[dict]:
    rows = [r for r in csv.DictReader(open(reads_csv, newline=""))
            if above <= float(r["CONFIDENCE"]) < below and r["FILENAME"] not in exclude]
    random.Random(seed).shuffle(rows)
    return rows[:count]


def draw(rows: list[dict], out: Path) -> list[Path]:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSansMono.ttf", 18)
    except OSError:
        font = ImageFont.load_default()
    out.mkdir(parents=True, exist_ok=True)
    sheets = []
    for start in range(0, len(rows), ROWS_PER_SHEET):
        part = rows[start : start + ROWS_PER_SHEET]
        images = [Image.open(r["SOURCE"]).convert("RGB") for r in part]
        images = [im.resize((int(im.width * 1.6), int(im.height * 1.6))) for im in images]
        width = 60 + max(im.width for im in images) + 260
        canvas = Image.new("RGB", (width, sum(im.height + 8 for im in images)), "white")
        pen = ImageDraw.Draw(canvas)
        y = 0
        for i, (r, im) in enumerate(zip(part, images)):
            pen.text((2, y + im.height // 2 - 9), f"{start + i:3d}", fill="black", font=font)
            canvas.paste(im, (60, y))
            pen.text((60 + im.width + 10, y + im.height // 2 - 9), r["TEXT"], fill="blue", font=font)
            y += im.height + 8
            pen.line((0, y - 4, width, y - 4), fill=(200, 200, 200))
        sheets.append(out / f"sheet{start // ROWS_PER_SHEET:02d}.png")
        canvas.save(sheets[-1])
    return sheets


def write_labels(rows: list[dict], answers: Path, labels_csv: Path) -> tuple[int, int]:
    from htr.config import normalize_label

    given: dict[int, str] = {}
    for n, line in enumerate(open(answers), 1):
        if not line.strip():
            continue
        index, _, text = line.rstrip("\n").partition(" ")
        if not index.isdigit() or not 0 <= int(index) < len(rows):
            raise SystemExit(f"error: {answers}:{n}: expected 'INDEX TEXT' with INDEX in 0..{len(rows) - 1}")
        given[int(index)] = text.strip()
    missing = sorted(set(range(len(rows))) - set(given))
    if missing:
        raise SystemExit(f"error: {answers}: no answer for {len(missing)} rows (first: {missing[:5]}); '?' skips one")
    kept = 0
    labels_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(labels_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FILENAME", "IDENTITY"])
        for i, r in enumerate(rows):
            if given[i] == "?":
                continue
            text = normalize_label(r["TEXT"] if given[i] == "=" else given[i])
            if text is None:
                raise SystemExit(f"error: {answers}: row {i}: {given[i]!r} is not a label (characters outside the "
                                 f"alphabet, or EMPTY/UNREADABLE: use '?' to skip)")
            w.writerow([r["FILENAME"], text])
            kept += 1
    return kept, len(rows) - kept


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reads", type=Path, help="reads.csv from htr recognize --review-out")
    p.add_argument("--below", type=float, default=0.84, help="sample among reads less confident than this")
    p.add_argument("--above", type=float, default=0.0,
                   help="and at least this confident (a band: e.g. --above 0.84 --below 1.01 for the confident rest)")
    p.add_argument("--exclude", type=Path, action="append", default=[],
                   help="a labels CSV (FILENAME first) whose scans are already reviewed: left out; repeatable")
    p.add_argument("--count", type=int, default=540, help="images to sample")
    p.add_argument("--seed", type=int, default=20261201)
    p.add_argument("--out", type=Path, required=True, help="folder for the sheets (sheetNN.png)")
    p.add_argument("--answers", type=Path, default=None, help="typed 'INDEX TEXT' lines -> --labels CSV")
    p.add_argument("--labels", type=Path, default=None, help="the Kaggle-layout CSV to write from --answers")
    args = p.parse_args(argv)
    exclude = frozenset(r["FILENAME"] for f in args.exclude for r in csv.DictReader(open(f, newline="")))
    rows = sample(args.reads, args.below, args.count, args.seed, args.above, exclude)
    if not rows:
        print(f"error: no read with confidence in [{args.above}, {args.below}) in {args.reads}", file=sys.stderr)
        return 1
    if args.answers:
        if not args.labels:
            p.error("--answers needs --labels")
        kept, skipped = write_labels(rows, args.answers, args.labels)
        print(f"wrote {args.labels}: {kept} labelled, {skipped} skipped")
        return 0
    sheets = draw(rows, args.out)
    print(f"{len(rows)} reads in [{args.above:g}, {args.below:g}) on {len(sheets)} sheets in {args.out}/ (rows {ROWS_PER_SHEET} each)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
