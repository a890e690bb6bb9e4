"""Pseudo-label quality: for each way a teacher can read the unlabelled scans, how many of its reads are right
(precision) at each share of reads kept, measured on the validation part of the train side.

``htr train --pseudo`` keeps the reads at or above ``--pseudo-threshold``; this table says what a threshold
buys for each decoder: greedy, the lexicon-constrained beam (``--pseudo-decoder lexicon``, hard: every read is a
corpus name), and the beam with the name model (``--pseudo-decoder names``, open vocabulary, optionally with a
soft lexicon bonus). The teacher must not have trained on the validation images, or every read looks right:
use a checkpoint trained with ``htr train`` (which holds that part out), not one trained on the whole train side.

Example::

    python bench/pseudo_label_bench.py --checkpoint runs/v2/proxy/best.pt --name-model models/names_lm.npz \\
        --lexicon runs/v2/lexicon_minus_labelled.txt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import machine, stamp, write_json

from htr.ctc_decoder import CTCDecoder, read_lexicon
from htr.paths import ROOT, default_data_dir
from htr.preprocess import Lexicon, NameModel
from htr.tune_decoder import validation_logprobs

KEEP = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # shares of reads kept, most confident first


def precision_at(texts, confs, labels, keep: float) -> float:
    order = np.argsort(-np.asarray(confs), kind="stable")[: max(1, int(round(keep * len(labels))))]
    return float(np.mean([texts[i] == labels[i] for i in order]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="the teacher (must not have seen the validation part)")
    ap.add_argument("--name-model", type=Path, default=ROOT / "models" / "names_lm.npz")
    ap.add_argument("--lexicon", type=Path, default=None, help="names for the lexicon decoders (leak-free list)")
    ap.add_argument("--lm-weight", type=float, default=0.5)
    ap.add_argument("--insertion-bonus", type=float, default=1.0)
    ap.add_argument("--lexicon-bonus", type=float, default=2.0)
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rec, logprobs, labels = validation_logprobs(args.checkpoint, args.data, 0.25)
    cfg = rec.cfg
    lm = NameModel.load(args.name_model)
    decoders = {"greedy": CTCDecoder(cfg),
                "names": CTCDecoder(cfg, "beam", 10, name_model=lm, lm_weight=args.lm_weight,
                                    insertion_bonus=args.insertion_bonus)}
    if args.lexicon:
        lex = Lexicon(read_lexicon(args.lexicon, cfg.alphabet), cfg.alphabet, cfg.blank)
        decoders["lexicon (hard)"] = CTCDecoder(cfg, "beam", 10, lexicon=lex)
        decoders["names + soft lexicon"] = CTCDecoder(
            cfg, "beam", 10, lexicon=lex, name_model=lm, lm_weight=args.lm_weight,
            insertion_bonus=args.insertion_bonus, lexicon_mode="soft", lexicon_bonus=args.lexicon_bonus)
    rows = {}
    for name, codec in decoders.items():
        reads = codec(logprobs)
        texts, confs = [t for t, _ in reads], [c for _, c in reads]
        rows[name] = {f"{k:.1f}": precision_at(texts, confs, labels, k) for k in KEEP}
    print(f"teacher {args.checkpoint}; validation part of the train side, {len(labels)} images; precision of the "
          f"most confident reads at each share kept\n")
    print("| decoder | " + " | ".join(f"keep {k:.0%}" for k in KEEP) + " |\n|---|" + "---|" * len(KEEP))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r.values()) + " |")
    write_json(args.json, {"machine": machine(), "date": stamp(), "teacher": str(args.checkpoint),
                           "images": len(labels), "precision": rows,
                           "weights": {"lm_weight": args.lm_weight, "insertion_bonus": args.insertion_bonus,
                                       "lexicon_bonus": args.lexicon_bonus}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
