"""Check exported engines against PyTorch eager on real images: max |delta log-prob| and greedy decodes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from htr.config import HTRConfig
from htr.preprocess import ctc_greedy_decode, decode_images, preprocess_batch

FP32_TOL, FP16_TOL = 1e-4, 5e-2


@dataclass
class ParityResult:
    engine: str
    cases: int
    max_abs_diff: float
    decodes_equal: int
    decodes_total: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.decodes_equal == self.decodes_total

    def row(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (f"| {self.engine} | {self.cases} | {self.max_abs_diff:.2e} | <= {self.tolerance:g} | "
                f"{self.decodes_equal}/{self.decodes_total} | {verdict} |")


def real_batches(cfg: HTRConfig, images_dir: Path, count: int = 64) -> list[np.ndarray]:
    """Real images at the model's width, plus narrower/wider re-layouts to exercise the dynamic axes."""
    files = sorted(Path(images_dir).glob("*.jpg"))[:count]
    if not files:
        raise FileNotFoundError(f"no .jpg images in {images_dir} for the parity check")
    images = decode_images([f.read_bytes() for f in files])
    h, w = cfg.input.height, cfg.input.width
    full = preprocess_batch(images, h, w, cfg.input.binarize)
    narrow = preprocess_batch(images[:5], h, max(32, w // 2), cfg.input.binarize)
    wide = preprocess_batch(images[:3], h, w * 2, cfg.input.binarize)
    return [full, full[:1], narrow, wide]


def check(engine: str, run, reference: torch.nn.Module, batches: list[np.ndarray], cfg: HTRConfig,
          tolerance: float) -> ParityResult:
    worst, equal, total = 0.0, 0, 0
    for pixels in batches:
        with torch.inference_mode():
            want = reference(torch.from_numpy(pixels)).numpy()
        got = np.asarray(run(pixels), dtype=np.float32)
        if got.shape != want.shape:
            raise AssertionError(f"{engine}: output shape {got.shape} != PyTorch {want.shape} for input {pixels.shape}")
        total += len(want)
        if not (np.isfinite(got).all() and np.isfinite(want).all()):  # NaN would slip through max() and decode
            worst = float("inf")
            continue
        worst = max(worst, float(np.abs(got - want).max()))
        a = [t for t, _ in ctc_greedy_decode(got, cfg.alphabet, cfg.blank)]
        b = [t for t, _ in ctc_greedy_decode(want, cfg.alphabet, cfg.blank)]
        equal += sum(x == y for x, y in zip(a, b))
    return ParityResult(engine, sum(len(b) for b in batches), worst, equal, total, tolerance)


def report(results: list[ParityResult]) -> str:
    lines = ["| engine | images | max abs diff (log-prob) | tolerance | greedy decodes equal | |",
             "|---|---|---|---|---|---|"]
    return "\n".join(lines + [r.row() for r in results])
