"""Offline recognition with a checkpoint: bytes or images -> (text, confidence), the serving pipeline in-process.

Same steps as the Triton ensemble: ``decode_images`` -> ``preprocess_batch`` (input config from the
checkpoint) -> CRNN log-probabilities -> CTC decoding. With ``decoder=None`` (the default) decoding is the
checkpoint's own (:func:`htr.ctc_decoder.checkpoint_decoding`: the beam search with its name model where the
checkpoint carries one), which is what the exported repository serves; ``"greedy"`` or ``"beam"`` choose
another (``"beam"`` keeps the checkpoint's name model and weights unless ``name_model=False``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .ctc_decoder import CTCDecoder, resolve_decoding
from .model import load_model
from .preprocess import decode_images, preprocess_batch


class OfflineRecognizer:
    def __init__(self, checkpoint: str | Path, device: str = "cpu", decoder: str | None = None,
                 lexicon: str | Path | list[str] | None = None, beam_width: int | None = None, batch_size: int = 64,
                 name_model: bool = True, **decoder_options):
        self.model, self.cfg, self.ckpt = load_model(checkpoint, map_location=device)
        self.model.to(device)
        self.device, self.batch_size = device, batch_size
        spec, lm = resolve_decoding(self.ckpt, decoder, beam_width)
        self.codec = CTCDecoder.from_spec(self.cfg, spec, lm if name_model else None, lexicon=lexicon,
                                          **decoder_options)
        self.decoder = self.codec.decoder

    @torch.inference_mode()
    def logprobs(self, pixels: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(pixels).to(self.device))
        return out.float().cpu().numpy()

    def decode(self, logprobs: np.ndarray) -> list[tuple[str, float]]:
        return self.codec(logprobs)

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
