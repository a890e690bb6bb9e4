"""``htr tune-decoder``: choose the beam search's name-model weight and insertion bonus, and save them (and the
name model) inside the checkpoint as its default decoding: what ``htr eval``, ``OfflineRecognizer`` and the
exported repository then use.

The choice is made on the **validation part of the train side** (``htr.data.split_train_val``, the images
``htr train`` validates on), never on the eval split, which stays for an honest score. The network runs once;
every (weight, bonus) pair of the grid decodes the same log-probabilities. Greedy decoding is a candidate too:
if no setting beats it on validation, the checkpoint keeps greedy. Ties go to the smaller weight, then the
smaller bonus.

Example::

    python -m htr.name_model --out models/names_lm.npz        # the name model (leak-free, see its --help)
    htr tune-decoder --checkpoint runs/v2/ft1/best.pt --name-model models/names_lm.npz --out models/crnn_names.pt
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from .paths import ROOT, default_data_dir

DEFAULT_WEIGHTS = "0,0.2,0.3,0.4,0.5,0.6,0.8,1.0"
DEFAULT_BONUSES = "0,0.5,1,1.5,2,3"


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("tune-decoder", help="choose and save the beam search's name-model weight and bonus",
                       description=__doc__, formatter_class=formatter_class)
    p.add_argument("--checkpoint", type=Path, required=True, help="CRNN checkpoint to tune for")
    p.add_argument("--name-model", type=Path, default=ROOT / "models" / "names_lm.npz",
                   help="name model (.npz from `python -m htr.name_model`)")
    p.add_argument("--data", action="append", default=None, metavar="DIR|CSV[:IMAGES]",
                   help=f"labelled real images as htr train's --real (a Kaggle-layout folder, or a CSV with its "
                        f"image folder); repeatable: the validation parts are pooled (default: {default_data_dir()})")
    p.add_argument("--val-fraction", type=float, default=0.25, help="as htr train's: the validation part")
    p.add_argument("--beam-width", type=int, default=10)
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="lm_weight values to try (comma list)")
    p.add_argument("--bonuses", default=DEFAULT_BONUSES, help="insertion_bonus values to try (comma list)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the checkpoint with the chosen decoding here (default: only print the table)")
    p.add_argument("--json", type=Path, default=None, help="also write the grid and the choice as JSON")
    p.set_defaults(func=run)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise SystemExit(f"error: --{what} wants comma-separated numbers, got {text!r}")
    return values


def validation_logprobs(checkpoint: Path, data, val_fraction: float):
    """(log-probabilities (N, T, C), labels) of the validation part of the train side, the model run once.

    ``data``: one source or a list of them (a Kaggle-layout folder or ``CSV[:IMAGES]``, as ``htr train --real``);
    their validation parts are pooled, in the order given."""
    from .data import read_kaggle, real_source, split_samples, split_train_val
    from .offline import OfflineRecognizer
    from .preprocess import decode_images, preprocess_batch

    rec = OfflineRecognizer(checkpoint, decoder="greedy")
    sources = list(data) if isinstance(data, (list, tuple)) else [data]
    val = []
    for spec in sources:
        samples, _ = read_kaggle(*real_source(spec), rec.cfg.alphabet)
        train, _ = split_samples(samples)
        val += split_train_val(train, val_fraction)[1]
    if not val:
        raise SystemExit(f"error: no validation images in {', '.join(map(str, sources))} "
                         f"(--val-fraction {val_fraction})")
    ic = rec.cfg.input
    pixels = preprocess_batch(decode_images([s.path.read_bytes() for s in val]), ic.height, ic.width, ic.binarize)
    logprobs = np.concatenate([rec.logprobs(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
    return rec, logprobs, [s.text for s in val]


def tune(cfg, logprobs, labels, name_model, weights, bonuses, beam_width: int = 10) -> tuple[list[dict], dict]:
    """Score greedy and every (weight, bonus) on the same log-probabilities; -> (rows, the chosen row)."""
    from .ctc_decoder import CTCDecoder
    from .scores import score

    def row(codec, **kw):
        t0 = time.perf_counter()
        texts = [t for t, _ in codec(logprobs)]
        s = score(texts, labels)
        return {**kw, "exact_match": s["exact_match"], "cer": s["cer"],
                "images_per_s": len(labels) / max(1e-9, time.perf_counter() - t0)}

    rows = [row(CTCDecoder(cfg), decoder="greedy", lm_weight=0.0, insertion_bonus=0.0)]
    for w, b in itertools.product(weights, bonuses):
        rows.append(row(CTCDecoder(cfg, "beam", beam_width, name_model=name_model, lm_weight=w, insertion_bonus=b),
                        decoder="beam", lm_weight=w, insertion_bonus=b))
    best = min(rows, key=lambda r: (-r["exact_match"], r["cer"], r["decoder"] != "greedy", r["lm_weight"],
                                    r["insertion_bonus"]))
    return rows, best


def run(args) -> int:
    from .ctc_decoder import DecodingSpec, name_model_bytes
    from .model import load_checkpoint
    from .preprocess import NameModel

    from .data import real_source

    data = args.data or [default_data_dir()]
    for spec in data:
        try:
            real_source(spec)
        except FileNotFoundError:
            print(f"error: --data {spec}: no labels.csv there and not a CSV file: pass --data with the "
                  f"Kaggle-layout folder or CSV[:IMAGES] (README 'Data')", file=sys.stderr)
            return 2
    if not args.name_model.is_file():
        print(f"error: name model not found: {args.name_model} (build it: python -m htr.name_model --help)",
              file=sys.stderr)
        return 2
    weights, bonuses = _floats(args.weights, "weights"), _floats(args.bonuses, "bonuses")
    name_model = NameModel.load(args.name_model)
    rec, logprobs, labels = validation_logprobs(args.checkpoint, data, args.val_fraction)
    rows, best = tune(rec.cfg, logprobs, labels, name_model, weights, bonuses, args.beam_width)
    print(f"validation part of the train side: {len(labels)} images; beam width {args.beam_width}\n")
    print("| decoder | lm_weight | insertion_bonus | exact | CER | images/s |\n|---|---|---|---|---|---|")
    for r in rows:
        mark = " **chosen**" if r is best else ""
        print(f"| {r['decoder']}{mark} | {r['lm_weight']:g} | {r['insertion_bonus']:g} | {r['exact_match']:.3f} | "
              f"{r['cer']:.4f} | {r['images_per_s']:.0f} |")
    spec = DecodingSpec(decoder=best["decoder"], beam_width=args.beam_width, lm_weight=best["lm_weight"],
                        insertion_bonus=best["insertion_bonus"])
    print(f"\nchosen: {spec}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": len(labels), "rows": rows, "chosen": spec.__dict__}, indent=2))
    if args.out:
        from .model import save_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        entry = {**spec.__dict__, "tuned_on": f"validation part of the train side ({len(labels)} images)",
                 "name_model_metadata": json.dumps(name_model.metadata, sort_keys=True)}
        if spec.decoder == "beam":
            entry["name_model_npz"] = name_model_bytes(name_model)
        # the weights and their history; training state (optimizer, RNG, pseudo-label list) stays in the run folder
        from .train import TRAINING_STATE

        extra = {k: v for k, v in ckpt.items() if k not in ("format", "config", "state_dict", *TRAINING_STATE)}
        extra["decoding"] = entry
        save_checkpoint(args.out, rec.model, rec.cfg, **extra)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) with decoding {spec.decoder}")
    return 0
