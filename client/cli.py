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

``--review-below T --review-out DIR`` also keeps the reads whose confidence is below T for people to check:
DIR/reads.csv (FILENAME,TEXT,CONFIDENCE,SOURCE, lowest confidence first, at most ``--review-max``) and a copy
of each image in DIR/images/, written here on the client; ``htr label push DIR`` sends them to Label Studio.

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

from htr.labelling.review import DEFAULT_LIMIT as DEFAULT_REVIEW_MAX  # stdlib only: light
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
    p.add_argument("--decoder", choices=("served", "greedy"), default="served",
                   help="with --preprocess client: served = decode as the server's ctc_decode does (its beam "
                        "search, name model and weights: the same text as the ensemble); greedy = best path")
    p.add_argument("--name-model", type=Path, default=None,
                   help="with --preprocess client --decoder served: the served name model's .npz (default "
                        "models/names_lm.npz when it exists: make name-model); checked by fingerprint")
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
    review = p.add_argument_group("review (doubtful reads for people to check: htr label push DIR)")
    review.add_argument("--review-below", type=float, default=None, metavar="T",
                        help="keep the images read with a confidence below T (with --review-out)")
    review.add_argument("--review-out", type=Path, default=None, metavar="DIR",
                        help="review folder to write: reads.csv + images/ (an earlier one there is replaced)")
    review.add_argument("--review-max", type=int, default=DEFAULT_REVIEW_MAX, metavar="N",
                        help="keep at most N reads, the least confident")
    p.set_defaults(func=run)


def _default_name_model() -> Path | None:
    from htr.name_model import DEFAULT_OUT

    return DEFAULT_OUT if DEFAULT_OUT.is_file() else None


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

    if (args.review_below is None) != (args.review_out is None):
        _say("error: --review-below and --review-out go together (the threshold and the folder to write)")
        return 2
    if args.review_below is not None:
        from htr.labelling.errors import LabellingError
        from htr.labelling.folders import check_target
        from htr.labelling.review import READS_CSV

        if args.review_below <= 0 or args.review_max < 1:
            _say("error: --review-below must be > 0 and --review-max >= 1")
            return 2
        try:
            check_target(args.review_out, READS_CSV)  # before reading anything: a folder it may not replace
        except LabellingError as e:
            _say(f"error: --review-out: {e}")
            return 2
    files = image_files(args.paths, args.recursive)
    if not files:
        _say(f"error: no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) in {', '.join(map(str, args.paths))}")
        return 2
    try:
        local = {}
        if args.name_model is not None and not args.name_model.is_file():
            _say(f"error: --name-model {args.name_model}: no such file (make name-model builds models/names_lm.npz)")
            return 2
        if args.preprocess == "client":
            local["decoder"] = args.decoder
            name_model = args.name_model or _default_name_model()
            if args.decoder == "served" and name_model is not None:
                local["name_model"] = name_model
        client = HTRClient(args.url, args.protocol, args.model, preprocess=args.preprocess, timeout_s=args.timeout,
                           retries=args.retries, shared_memory=args.shared_memory, batch_size=args.batch_size,
                           **local)
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
    if args.review_out is not None and not _write_review(args, client, files, preds):
        return 1
    failed = [(name, p.error) for name, p in rows if not p.ok]
    summary = f"{len(rows) - len(failed)} of {len(rows)} images recognised via {client.url} ({args.protocol})"
    if failed:
        summary += f"; {len(failed)} failed: " + "; ".join(f"{n}: {e}" for n, e in failed[:5])
        summary += " ..." if len(failed) > 5 else ""
    _say(summary + (f"; wrote {args.output}" if args.output else ""))
    return 1 if failed else 0  # every image was tried; a missing or unreadable one makes the exit status 1


def _write_review(args, client, files, preds) -> bool:
    """Keep the doubtful reads in the review folder (htr.labelling.review); say what was kept."""
    import datetime

    from htr.labelling.errors import LabellingError
    from htr.labelling.review import select_doubtful, write_review

    read = [(path, name, p.text, p.confidence) for (path, name), p in zip(files, preds) if p.ok]
    kept = select_doubtful(read, args.review_below, args.review_max)
    below = sum(conf < args.review_below for *_, conf in read)
    served = client.served  # read at connect time: what answered
    meta = {"server": client.url, "protocol": args.protocol, "model": served.name,
            "model_version": f"{served.name}:{served.version or 'latest'}",
            "alphabet": served.config.alphabet, "review_below": args.review_below,
            "review_max": args.review_max, "read": len(read), "below": below,
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        write_review(args.review_out, kept, meta)
    except LabellingError as e:
        _say(f"error: {e}")
        return False
    capped = f" (the {len(kept)} least confident: --review-max)" if below > len(kept) else ""
    _say(f"review: kept {len(kept)} of {len(read)} reads with confidence below {args.review_below:g}{capped} "
         f"in {args.review_out} (reads.csv + images/); send them with `htr label push {args.review_out}`")
    for r in kept[:20]:
        _say(f"  {r.confidence:.3f}  {r.text or '(empty)':20s}  {r.filename}")
    if len(kept) > 20:
        _say(f"  ... {len(kept) - 20} more in reads.csv")
    return True
