"""``htr synth``: write a synthetic dataset in the Kaggle layout; a thin shell over :func:`write_dataset`.

Registers the subcommand for :mod:`htr.cli` (:func:`add_parser`) and turns the library's
argument errors into a message and exit status 2 rather than a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from htr.synth.dataset import write_dataset
from htr.synth.names import default_names_path

_EXAMPLE = """\
example:
  htr synth --out data/synth --count 50000 --workers 2
  # -> data/synth/images/SYNTH_000001.jpg ... and data/synth/labels.csv (FILENAME,IDENTITY),
  #    the same layout as the Kaggle folder, so every tool that reads one reads the other.
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth",
        help="write synthetic handwriting in the Kaggle layout",
        description=(
            "Render synthetic scans of handwritten names that look like the real form-field crops\n"
            "(layouts, printed labels, pen strokes, paper and JPEG measured on them), drawn from the\n"
            "names corpus with its real frequencies plus Faker fr_FR names. Each image depends only\n"
            "on (--seed, its index), so any --workers gives the same files.\n\n" + _EXAMPLE
        ),
        formatter_class=formatter_class,
    )
    p.add_argument("--out", required=True, type=Path, default=argparse.SUPPRESS,
                   help="output folder (images/ and labels.csv go inside)")
    p.add_argument("--count", required=True, type=int, default=argparse.SUPPRESS, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--names", type=Path, default=default_names_path(),
                   help="names corpus, one transcription per line ($HTR_DATA/names_corpus.txt when set); "
                        "if the default is absent, Faker names only")
    p.add_argument("--faker-ratio", type=float, default=0.3, help="share of names taken from Faker fr_FR")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    names = args.names if args.names != default_names_path() else None  # None: fall back if absent
    if args.count < 0 or args.workers < 1:
        print(f"htr synth: need --count >= 0 and --workers >= 1, got {args.count} and {args.workers}", file=sys.stderr)
        return 2
    try:
        summary = write_dataset(args.out, args.count, seed=args.seed, names_path=names,
                                faker_ratio=args.faker_ratio, workers=args.workers, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"htr synth: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary.count} images to {summary.out_dir / 'images'} and {summary.out_dir / 'labels.csv'} "
          f"in {summary.seconds:.1f} s ({summary.images_per_s:.0f} images/s, {args.workers} worker(s))")
    return 0
