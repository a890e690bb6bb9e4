"""Would an ensemble of checkpoints read better? Average their per-frame probabilities and tune the decoder on
the validation part of the train side, exactly as ``htr tune-decoder`` tunes one checkpoint.

The checkpoints must share the alphabet, the input size and the frame count (the CRNNs grown from one model
do). Each prefix of the list is scored: the first alone, the first two, ... so the first line is the baseline.
The eval split is never read here: an ensemble that wins on validation is scored on eval once, after it is
chosen (model card, "Version 3").

Example (the card's figures, 2026-11-30)::

    python bench/ensemble_val.py runs/v3/cnn15/tuned.pt runs/v3/h192/tuned.pt runs/v3/stage14/tuned.pt \\
        --json bench/results/ensemble_val.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from htr.name_model import DEFAULT_OUT
from htr.paths import default_data_dir
from htr.tune_decoder import DEFAULT_BONUSES, DEFAULT_WEIGHTS, tune, validation_logprobs


def average_logprobs(members: list[np.ndarray]) -> np.ndarray:
    """log of the mean of the members' per-frame probabilities, (N, T, C) float32."""
    shapes = {m.shape for m in members}
    if len(shapes) != 1:
        raise SystemExit(f"error: the checkpoints' outputs differ in shape {sorted(shapes)}: not one ensemble")
    mean = np.mean([np.exp(m.astype(np.float64)) for m in members], axis=0)
    return np.log(np.maximum(mean, 1e-30)).astype(np.float32)


def _short(path: Path) -> str:
    """runs/v3/cnn15/tuned.pt -> cnn15; models/crnn_names.pt -> crnn_names."""
    return path.parent.name if path.stem in ("tuned", "last", "best") and path.parent.name else path.stem


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoints; the first is the baseline")
    p.add_argument("--data", type=Path, default=None, help="Kaggle-layout folder (default: the shared data)")
    p.add_argument("--name-model", type=Path, default=Path(DEFAULT_OUT), help="name model for the beam search")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    from htr.preprocess import NameModel

    data = args.data or default_data_dir()
    name_model = NameModel.load(args.name_model)
    weights = [float(x) for x in DEFAULT_WEIGHTS.split(",")]
    bonuses = [float(x) for x in DEFAULT_BONUSES.split(",")]
    members, labels, cfg = [], None, None
    results = []
    for ckpt in args.checkpoints:
        rec, logprobs, val_labels = validation_logprobs(ckpt, data, args.val_fraction)
        if labels is not None and val_labels != labels:
            raise SystemExit(f"error: {ckpt} reads a different validation part (alphabet or data differ)")
        labels, cfg = val_labels, cfg or rec.cfg
        members.append(logprobs)
        rows, best = tune(cfg, average_logprobs(members), labels, name_model, weights, bonuses)
        results.append({"members": [str(c) for c in args.checkpoints[: len(members)]], "chosen": best,
                        "greedy": rows[0]})
        print(f"{' + '.join(_short(c) for c in args.checkpoints[: len(members)])}: "
              f"validation ({len(labels)} images) exact {best['exact_match']:.1%} CER {best['cer']:.2%} with "
              f"{best['decoder']} (weight {best['lm_weight']:g}, bonus {best['insertion_bonus']:g}); greedy "
              f"{rows[0]['exact_match']:.1%} / {rows[0]['cer']:.2%}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
