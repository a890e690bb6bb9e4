"""The cost side of a stronger network: GFLOPs per image and ONNX Runtime images/s of candidate CRNN shapes.

The model card's trade-off table pairs these with each candidate's accuracy where one was trained. Speed does
not depend on the weights, so each candidate is an untrained ``htr.model.CRNN`` of that shape, exported to ONNX
like ``export/build_engine.py`` does and run in process (FP32, batch ``--batch``, the machine's cores: the
served ``crnn`` stage's work). Candidates are named ``HxW:c1-c2-c3-c4-c5-c6:hidden``; the default list holds
today's model and the neighbours the issue names (wider CNN, a larger sequence model, a larger input).

Example (quiet CPU)::

    python bench/arch_bench.py --json bench/results/arch.json
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from _common import machine, stamp, write_json
from perf import flops_per_image, ort_images_per_s

from htr.config import HTRConfig, InputConfig, ModelConfig
from htr.export.engines import export_onnx
from htr.model import CRNN, count_parameters
from htr.threads import available_cores

DEFAULT_CANDIDATES = (
    "48x384:32-64-96-96-128-128:128",     # shipped
    "48x384:48-96-144-144-192-192:128",   # CNN 1.5x wider
    "48x384:64-128-192-192-256-256:128",  # CNN 2x wider
    "48x384:32-64-96-96-128-128:192",     # larger BiLSTM
    "48x384:48-96-144-144-192-192:192",   # both
    "64x512:32-64-96-96-128-128:128",     # larger input
)


def parse(spec: str) -> HTRConfig:
    try:
        size, channels, hidden = spec.split(":")
        h, w = (int(v) for v in size.lower().split("x"))
        return HTRConfig(input=InputConfig(height=h, width=w),
                         model=ModelConfig(cnn_channels=tuple(int(c) for c in channels.split("-")), lstm_hidden=int(hidden)))
    except ValueError as e:
        raise SystemExit(f"error: candidate {spec!r} is not HxW:c1-c2-c3-c4-c5-c6:hidden ({e})") from None


def measure(spec: str, batch: int, seconds: float, threads: int) -> dict:
    cfg = parse(spec)
    torch.manual_seed(0)
    model = CRNN(cfg).eval()
    rng = np.random.default_rng(0)
    pixels = (rng.random((batch, 1, cfg.input.height, cfg.input.width)) < 0.1).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the exporter's LSTM batch-size notice
        rate = ort_images_per_s(export_onnx(model, cfg, Path(tmp) / "m.onnx"), pixels, seconds, threads)
    flops = flops_per_image(model, cfg)
    return {"candidate": spec, "parameters": count_parameters(model), "gflop_per_image": flops["total"] / 1e9,
            "ort_images_per_s": rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="*", default=list(DEFAULT_CANDIDATES), help="HxW:c1-...-c6:hidden")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0, help="timing window per candidate")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: every core)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    rows = [measure(c, args.batch, args.seconds, threads) for c in args.candidates]
    base = rows[0]
    print(f"{machine()}; ONNX Runtime FP32, {threads} thread(s), batch {args.batch}\n")
    print("| candidate | parameters | GFLOP/image | vs first | ORT images/s | vs first |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['candidate']} | {r['parameters']:,} | {r['gflop_per_image']:.2f} | "
              f"{r['gflop_per_image'] / base['gflop_per_image']:.2f}x | {r['ort_images_per_s']:.0f} | "
              f"{r['ort_images_per_s'] / base['ort_images_per_s']:.2f}x |")
    write_json(args.json, {"machine": machine(), "date": stamp(), "threads": threads, "batch": args.batch, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
