"""Training speed: ``htr train``'s default precision (BF16 autocast + channels-last on a CPU with native BF16)
against plain FP32, and what a fixed budget of steps buys in each.

Two measurements, on the real labelled images of the train side (``htr.data.split_samples`` +
``split_train_val``), preprocessed once (the data pipeline is not timed here: ``--workers`` keeps it apart):

1. **Step throughput**: forward + CTC loss + backward + AdamW step at ``--batch-size``, images/s, for each
   of ``fp32``, ``bf16`` (autocast only), ``cl`` (channels-last only) and ``default`` (what ``htr train``
   does here), interleaved, median of ``--repeats``.
2. **Fixed budget** (``--budget-steps``, 0: skip): fine-tune ``--init`` for that many steps in FP32 and in the
   default precision, same seed and batches, then greedy validation CER on the validation part of the train
   side. The goal: the default's CER is no worse than FP32's (within ``--cer-tolerance``) at ~3x the speed.

Example (quiet CPU; the shipped 48x384 model)::

    python bench/train_bench.py --init models/crnn_names.pt --json bench/results/train.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _common import machine, require_data, stamp, write_json

from htr.data import Collate, read_kaggle, split_samples, split_train_val
from htr.model import CRNN, load_checkpoint
from htr.paths import ROOT, default_data_dir
from htr.preprocess import decode_images
from htr.threads import available_cores
from htr.train import autocast_dtype, cpu_supports_bf16, ctc_loss

MODES = {  # name: (autocast, channels-last)
    "fp32": (False, False),
    "bf16": (True, False),
    "cl": (False, True),
    "default": (True, True),
}


def load_batches(data: Path, cfg, batch_size: int):
    """(train batches, validation batch list): the train side's images preprocessed once, unaugmented."""
    samples, _ = read_kaggle(data / "labels.csv", None, cfg.alphabet, keep_empty=True)
    train, _ = split_samples(samples)
    train, val = split_train_val(train)
    collate = Collate(cfg)

    def batches(items):
        out = []
        for i in range(0, len(items) - batch_size + 1, batch_size):
            chunk = items[i : i + batch_size]
            out.append(collate([(img, s.text, 1.0) for img, s in
                                zip(decode_images([s.path.read_bytes() for s in chunk]), chunk)]))
        return out
    rng = np.random.default_rng(0)
    return batches([train[i] for i in rng.permutation(len(train))]), batches(val), len(train), len(val)


def make_model(cfg, state, channels_last: bool):
    model = CRNN(cfg)
    if state is not None:
        model.load_state_dict(state)
    if channels_last:
        model.cnn.to(memory_format=torch.channels_last)
    model.train()
    return model


def step_fn(model, opt, batch, amp: bool, channels_last: bool):
    pixels = batch["pixels"]
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logprobs = model(pixels)
    loss = ctc_loss(logprobs, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return loss.item()


def throughput(cfg, state, batches, steps: int, repeats: int) -> dict:
    runs = {}
    for name, (amp, cl) in MODES.items():
        model = make_model(cfg, state, cl)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5), amp, cl)
    times = {name: [] for name in MODES}
    for r in range(repeats + 1):  # the first round warms up (oneDNN primitive caches)
        for name, (model, opt, amp, cl) in runs.items():
            t0 = time.perf_counter()
            for k in range(steps):
                step_fn(model, opt, batches[(r * steps + k) % len(batches)], amp, cl)
            if r:
                times[name].append(time.perf_counter() - t0)
    n = steps * len(batches[0]["texts"])
    return {name: n / statistics.median(ts) for name, ts in times.items()}


@torch.inference_mode()
def val_cer(model, val_batches, cfg) -> dict:
    from htr.preprocess import ctc_greedy_decode
    from htr.scores import score

    model.eval()
    preds, labels = [], []
    for b in val_batches:
        lp = model(b["pixels"]).float().numpy()
        preds += [t for t, _ in ctc_greedy_decode(lp, cfg.alphabet, cfg.blank)]
        labels += b["texts"]
    model.train()
    return score(preds, labels)


def budget(cfg, state, batches, val_batches, steps: int, lr: float) -> dict:
    out = {}
    before = make_model(cfg, state, False)
    out["before"] = val_cer(before, val_batches, cfg)
    for name in ("fp32", "default"):
        amp, cl = MODES[name]
        torch.manual_seed(0)
        model = make_model(cfg, state, cl)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        t0 = time.perf_counter()
        for k in range(steps):
            step_fn(model, opt, batches[k % len(batches)], amp, cl)
        out[name] = {**val_cer(model, val_batches, cfg), "seconds": time.perf_counter() - t0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, default=ROOT / "models" / "crnn_names.pt", help="checkpoint to train")
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="Kaggle-layout folder")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core, as htr train)")
    ap.add_argument("--steps", type=int, default=4, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-steps", type=int, default=60, help="fixed-budget comparison length (0: skip)")
    ap.add_argument("--lr", type=float, default=2e-4, help="learning rate of the fixed-budget runs")
    ap.add_argument("--cer-tolerance", type=float, default=0.005, help="allowed CER excess of the default")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    require_data(args.data)
    torch.set_num_threads(args.threads or available_cores())
    ckpt = load_checkpoint(args.init)
    from htr.config import HTRConfig
    cfg = HTRConfig.from_dict(ckpt["config"])
    batches, val_batches, n_train, n_val = load_batches(args.data, cfg, args.batch_size)
    print(f"{machine()}; {torch.get_num_threads()} torch thread(s); native BF16: {cpu_supports_bf16()} "
          f"(htr train default: {autocast_dtype(torch.device('cpu'), 'auto')}); {args.init} "
          f"{cfg.input.height}x{cfg.input.width}, batch {args.batch_size}; train side {n_train}, validation {n_val}")
    rates = throughput(cfg, ckpt["state_dict"], batches, args.steps, args.repeats)
    print("\n| mode | training images/s | vs FP32 |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / rates['fp32']:.2f}x |")
    result = {"machine": machine(), "date": stamp(), "threads": torch.get_num_threads(), "init": str(args.init),
              "batch_size": args.batch_size, "images_per_s": rates}
    ok = True
    if args.budget_steps:
        b = budget(cfg, ckpt["state_dict"], batches, val_batches, args.budget_steps, args.lr)
        result["budget"] = {"steps": args.budget_steps, **b}
        print(f"\nfixed budget: {args.budget_steps} steps of {args.batch_size} from {args.init.name}, validation "
              f"({n_val} train-side images), greedy:\n| run | CER | exact | seconds |\n|---|---|---|---|")
        print(f"| before | {b['before']['cer']:.4f} | {b['before']['exact_match']:.3f} | |")
        for name in ("fp32", "default"):
            print(f"| {name} | {b[name]['cer']:.4f} | {b[name]['exact_match']:.3f} | {b[name]['seconds']:.0f} |")
        ok = b["default"]["cer"] <= b["fp32"]["cer"] + args.cer_tolerance
        print(f"default CER no worse than FP32 (+{args.cer_tolerance}): {'PASS' if ok else 'FAIL'}")
    write_json(args.json, result)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
