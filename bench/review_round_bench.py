"""What one review round buys: fine-tune on 100 images a person labelled, chosen as the model's least confident
reads (what ``htr recognize --review-below`` sends to Label Studio) or at random, same budget; eval-split exact
match before and after each.

The pool is the train side of the labelled folder (``htr.data.split_samples``), whose labels stand in for what
a labeller would type. Each arm trains ``--steps`` steps of ``--batch-size`` from ``--checkpoint`` with the same
seed, BF16 autocast where the CPU has it, augmentation as ``htr train``, BatchNorm statistics frozen (a few
hundred images must not re-estimate them); each batch is half reviewed images, half rehearsal (``--rehearsal
CSV:IMAGES``, e.g. the pseudo-labelled scans ``htr train`` used, else synthetic names), which keeps the model from
forgetting everything else. The eval split is only scored. Caveat: a model trained on the whole train side (the shipped one) has seen these images before; the
difference between the arms is then what choosing by confidence adds, not what new images add.

Example::

    python bench/review_round_bench.py --checkpoint models/crnn_names.pt --json bench/results/review_round.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import machine, stamp, write_json

from htr.data import Collate, SynthDataset, build_augment, read_kaggle, split_samples
from htr.export.quantize import pixels_of
from htr.model import load_model
from htr.offline import OfflineRecognizer
from htr.paths import ROOT, default_data_dir
from htr.preprocess import ctc_greedy_decode
from htr.scores import score
from htr.threads import available_cores
from htr.train import autocast_dtype, ctc_loss


def eval_exact(model, cfg, pixels, labels) -> dict:
    """Greedy reads of the eval split's ``pixels`` (preprocessed once) by ``model`` in memory, scored."""
    model.eval()
    with torch.inference_mode():
        logprobs = torch.cat([model(torch.from_numpy(pixels[i : i + 64])) for i in range(0, len(pixels), 64)])
    model.train()
    return score([t for t, _ in ctc_greedy_decode(logprobs.float().numpy(), cfg.alphabet, cfg.blank)], labels)


def fine_tune(checkpoint: Path, reviewed, rehearsal, steps: int, batch: int, lr: float, seed: int):
    model, cfg, _ = load_model(checkpoint)
    model.cnn.to(memory_format=torch.channels_last)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # frozen statistics
    dtype = autocast_dtype(torch.device("cpu"), "auto")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    collate = Collate(cfg, build_augment(1.0))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    half = batch // 2
    for step in range(steps):
        items = [(s.path.read_bytes(), s.text, 1.0) for s in (reviewed[i] for i in rng.integers(len(reviewed), size=half))]
        if isinstance(rehearsal, SynthDataset):
            rehearsal.epoch = step
            items += [rehearsal[int(i)] for i in rng.integers(len(rehearsal), size=batch - half)]
        else:
            items += [(s.path.read_bytes(), s.text, 1.0) for s in (rehearsal[i] for i in
                                                                    rng.integers(len(rehearsal), size=batch - half))]
        b = collate(items)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logprobs = model(b["pixels"].contiguous(memory_format=torch.channels_last))
        loss = ctc_loss(logprobs, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return model, cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt")
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--count", type=int, default=100, help="images a person labels in the round")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rehearsal", default=None, metavar="CSV:IMAGES",
                    help="labelled (e.g. pseudo-labelled) images mixed into every batch (default: synthetic names)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or available_cores())
    samples, _ = read_kaggle(args.data / "labels.csv")
    pool, held = split_samples(samples)
    base = OfflineRecognizer(args.checkpoint, decoder="greedy")
    reads = base.predict_files([s.path for s in pool])
    least = np.argsort([c for _, c in reads], kind="stable")[: args.count]
    rand = np.random.default_rng(args.seed).choice(len(pool), args.count, replace=False)
    from htr.synth import SynthGenerator, load_names

    names = load_names(args.data / "names_corpus.txt")
    labels = {s.text for s in samples}
    names = [n for n in names if n not in labels]  # no eval label rendered into the rehearsal
    rehearsal = SynthDataset(SynthGenerator(base.cfg.alphabet, names=names, seed=args.seed, blank_ratio=0.03),
                             100_000, args.seed)
    if args.rehearsal:
        csv_path, _, images = args.rehearsal.partition(":")
        rehearsal, _ = read_kaggle(csv_path, images or None, base.cfg.alphabet)
    held_pixels, held_labels = pixels_of([s.path for s in held], base.cfg), [s.text for s in held]
    before = eval_exact(base.model, base.cfg, held_pixels, held_labels)
    rows = {"before": {"exact_match": before["exact_match"], "cer": before["cer"]}}
    print(f"{machine()}; {args.checkpoint}; pool: {len(pool)} train-side images; eval split {len(held)}; "
          f"{args.steps} steps of {args.batch_size} (half reviewed, half {args.rehearsal or 'synthetic'}), lr {args.lr}")
    for name, chosen in (("least confident", least), ("random", rand)):
        t0 = time.perf_counter()
        model, cfg = fine_tune(args.checkpoint, [pool[i] for i in chosen], rehearsal, args.steps, args.batch_size,
                               args.lr, args.seed)
        after = eval_exact(model, cfg, held_pixels, held_labels)
        mean_conf = float(np.mean([reads[i][1] for i in chosen]))
        base_right = sum(reads[i][0] == pool[i].text for i in chosen)
        rows[name] = {"exact_match": after["exact_match"], "cer": after["cer"], "seconds": time.perf_counter() - t0,
                      "mean_confidence": mean_conf, "already_right_before": base_right}
    print("\n| round | images the model already read right | mean confidence | eval exact | eval CER |\n|---|---|---|---|---|")
    print(f"| none (before) | | | {rows['before']['exact_match']:.3f} | {rows['before']['cer']:.4f} |")
    for name in ("least confident", "random"):
        r = rows[name]
        print(f"| {args.count} {name} | {r['already_right_before']} | {r['mean_confidence']:.3f} | "
              f"{r['exact_match']:.3f} | {r['cer']:.4f} |")
    write_json(args.json, {"machine": machine(), "date": stamp(), "checkpoint": str(args.checkpoint),
                           "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                           "rehearsal": args.rehearsal or "synthetic", "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
