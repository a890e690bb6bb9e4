"""Offline recognition with a checkpoint: bytes or images -> (text, confidence), the serving pipeline in-process.

Same steps as the Triton ensemble: ``decode_images`` -> ``preprocess_batch`` (input config from the
checkpoint) -> CRNN log-probabilities -> CTC decoding (greedy, or beam with an optional lexicon).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import load_model
from .preprocess import Lexicon, ctc_beam_decode, ctc_greedy_decode, decode_images, preprocess_batch


def read_lexicon(path: str | Path, alphabet: str) -> list[str]:
    """One entry per line, normalised like the labels; blank/EMPTY/out-of-alphabet lines are dropped."""
    from .config import normalize_label

    words = {normalize_label(line, alphabet) for line in Path(path).read_text(encoding="utf-8").splitlines()}
    words.discard(None)
    return sorted(words)


class Recognizer:
    def __init__(self, checkpoint: str | Path, device: str = "cpu", decoder: str = "greedy",
                 lexicon: str | Path | list[str] | None = None, beam_width: int = 10, batch_size: int = 64):
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        self.model, self.cfg, self.ckpt = load_model(checkpoint, map_location=device)
        self.model.to(device)
        self.device, self.decoder, self.beam_width, self.batch_size = device, decoder, beam_width, batch_size
        self.lexicon = None
        if lexicon is not None:
            words = read_lexicon(lexicon, self.cfg.alphabet) if isinstance(lexicon, (str, Path)) else lexicon
            self.lexicon = Lexicon(words, self.cfg.alphabet, self.cfg.blank)
            if decoder == "greedy":
                self.decoder = "beam"

    @torch.inference_mode()
    def logprobs(self, pixels: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(pixels).to(self.device))
        return out.float().cpu().numpy()

    def decode(self, logprobs: np.ndarray) -> list[tuple[str, float]]:
        if self.decoder == "greedy":
            return ctc_greedy_decode(logprobs, self.cfg.alphabet, self.cfg.blank)
        return ctc_beam_decode(logprobs, self.cfg.alphabet, self.beam_width, self.lexicon, self.cfg.blank)

    def predict_images(self, images: list[np.ndarray]) -> list[tuple[str, float]]:
        ic = self.cfg.input
        results = []
        for i in range(0, len(images), self.batch_size):
            pixels = preprocess_batch(images[i : i + self.batch_size], ic.height, ic.width, ic.binarize)
            results += self.decode(self.logprobs(pixels))
        return results

    def predict_blobs(self, blobs: list[bytes]) -> list[tuple[str, float]]:
        return self.predict_images(decode_images(blobs))

    def predict_files(self, paths) -> list[tuple[str, float]]:
        return self.predict_blobs([Path(p).read_bytes() for p in paths])
