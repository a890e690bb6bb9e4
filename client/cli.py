"""``htr recognize``: read handwriting in image files and folders with the served model (``htr serve``).

Examples::

    htr recognize samples/                                   # a readable table (gRPC, 127.0.0.1:8001)
    htr recognize --protocol http --url 127.0.0.1:8000 a.jpg b.png
    htr recognize --csv --output preds.csv ../shared/data/kaggle_names/labelled

Folders are expanded to their *.jpg, *.jpeg, *.png, *.bmp, *.tif and *.tiff files (``--recursive`` for
sub-folders), with a progress bar on stderr. ``--csv`` writes ``FILENAME,IDENTITY,CONFIDENCE,ERROR`` (the
Kaggle ``labels.csv`` columns first, so a served run is scored like ``htr eval`` by joining on FILENAME);
``--json`` a list of objects. An image that cannot be read (missing file, corrupt data) is listed with
its error and does not stop the others.

Exit status: 0 when every image was read; 1 when some image could not be (a missing or unreadable file,
a corrupt image: the others are still read and listed, the failed ones with their error), or the server is
unreachable, the model is not ready or not the one expected, or requests time out; 2 when no image was
found.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from htr.runtime.contract import ENSEMBLE  # a constant: light

# only light imports here: ``htr --help`` imports this module (tritonclient loads in run())


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("recognize", help="recognise images with the served model (gRPC/HTTP client)",
                       description=__doc__, formatter_class=formatter_class)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and/or folders")
    p.add_argument("--url", default=None,
                   help="server host:port (None: 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="how to talk to the server")
    p.add_argument("--preprocess", choices=("server", "client"), default="server",
                   help="server: send encoded images to the ensemble; client: preprocess and decode here, "
                        "send pixels to the crnn model")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV: FILENAME,IDENTITY,CONFIDENCE,ERROR")
    fmt.add_argument("--json", action="store_true", help="JSON: a list of {file, path, text, confidence, error}")
    p.add_argument("--output", "-o", type=Path, default=None, help="write the results here instead of stdout")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--batch-size", type=int, default=None, help="images per request (None: the model's maximum)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it is retried")
    p.add_argument("--retries", type=int, default=2, help="retries of unreachable/timed-out requests (with backoff)")
    p.add_argument("--model", default=ENSEMBLE, help="the ensemble to call (preprocess server)")
    p.add_argument("--shared-memory", action="store_true",
                   help="pass tensors through system shared memory (client on the server's host only)")
    p.add_argument("--recursive", "-r", action="store_true", help="also expand sub-folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"htr recognize: {msg}", file=sys.stderr, flush=True)


def write_table(rows, out) -> None:
    header = ("FILE", "TEXT", "CONFIDENCE", "ERROR")
    cells = [(name, p.text, f"{p.confidence:.3f}" if p.ok else "", p.error or "") for name, p in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header[:3])]
    for line in [header, *cells]:
        out.write("  ".join(c.ljust(w) for c, w in zip(line[:3], widths)) + ("  " + line[3] if line[3] else "") + "\n")


def write_csv(rows, out) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["FILENAME", "IDENTITY", "CONFIDENCE", "ERROR"])
    for name, p in rows:
        w.writerow([name, p.text, f"{p.confidence:.4f}", p.error or ""])


def write_json(rows, paths, out) -> None:
    json.dump([{"file": name, "path": str(path), "text": p.text, "confidence": round(p.confidence, 6),
                "error": p.error} for (name, p), path in zip(rows, paths)], out, indent=1)
    out.write("\n")


def run(args) -> int:
    from tqdm import tqdm

    from .client import HTRClient
    from .errors import HTRClientError
    from .inputs import IMAGE_SUFFIXES, image_files

    files = image_files(args.paths, args.recursive)
    if not files:
        _say(f"error: no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) in {', '.join(map(str, args.paths))}")
        return 2
    try:
        client = HTRClient(args.url, args.protocol, args.model, preprocess=args.preprocess, timeout_s=args.timeout,
                           retries=args.retries, shared_memory=args.shared_memory, batch_size=args.batch_size)
    except HTRClientError as e:
        _say(f"error: {e}")
        return 1
    show = not args.no_progress and any(p.is_dir() for p in args.paths)
    with client, tqdm(total=len(files), unit="img", file=sys.stderr, disable=not show, desc="recognize") as bar:
        try:
            preds = client.recognize_many([path for path, _ in files], concurrency=args.concurrency,
                                          progress=bar.update)
        except HTRClientError as e:
            bar.close()
            _say(f"error: {e}")
            return 1
    rows = [(name, p) for (_, name), p in zip(files, preds)]
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.csv:
            write_csv(rows, out)
        elif args.json:
            write_json(rows, [path for path, _ in files], out)
        else:
            write_table(rows, out)
    finally:
        if args.output:
            out.close()
    failed = [(name, p.error) for name, p in rows if not p.ok]
    summary = f"{len(rows) - len(failed)} of {len(rows)} images recognised via {client.url} ({args.protocol})"
    if failed:
        summary += f"; {len(failed)} failed: " + "; ".join(f"{n}: {e}" for n, e in failed[:5])
        summary += " ..." if len(failed) > 5 else ""
    _say(summary + (f"; wrote {args.output}" if args.output else ""))
    return 1 if failed else 0  # every image was tried; a missing or unreadable one makes the exit status 1
