"""CTC decoding with a model's config: log-probabilities -> (text, confidence[, error]).

One class serves offline recognition (``htr.offline``), the Triton ``ctc_decode`` model and the
client's local decoding (``preprocess="client"``), so all three read the same output the same way.
Torch-free: the Triton python-backend stub imports it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import HTRConfig, normalize_label
from .preprocess import Lexicon, ctc_beam_decode, ctc_greedy_decode


def read_lexicon(lexicon, alphabet: str) -> list[str]:
    """A lexicon path (one entry a line) or an iterable of strings, normalised like the labels
    (:func:`htr.config.normalize_label`); blank, ``EMPTY`` and out-of-alphabet entries are dropped."""
    lines = Path(lexicon).read_text(encoding="utf-8").splitlines() if isinstance(lexicon, (str, Path)) else lexicon
    words = {normalize_label(w, alphabet) for w in lines}
    words.discard(None)
    return sorted(words)


class CTCDecoder:
    """Greedy or beam decoding (optionally constrained to a lexicon) for one model's alphabet and blank.

    A lexicon (path, iterable or :class:`Lexicon`) implies beam search; it is compiled once here.
    """

    def __init__(self, cfg: HTRConfig, decoder: str = "greedy", beam_width: int = 10, lexicon=None):
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        self.cfg, self.decoder, self.beam_width, self.lexicon = cfg, decoder, beam_width, None
        if lexicon is not None:
            self.lexicon = lexicon if isinstance(lexicon, Lexicon) else Lexicon(
                read_lexicon(lexicon, cfg.alphabet), cfg.alphabet, cfg.blank)
            self.decoder = "beam"

    def __call__(self, logprobs: np.ndarray) -> list[tuple[str, float]]:
        """Decode a ``(N, T, C)`` batch; raises ValueError (naming the item) on NaN/inf log-probabilities."""
        if self.decoder == "greedy":
            return ctc_greedy_decode(logprobs, self.cfg.alphabet, self.cfg.blank)
        return ctc_beam_decode(logprobs, self.cfg.alphabet, self.beam_width, self.lexicon, self.cfg.blank)

    def decode_items(self, logprobs: np.ndarray) -> list[tuple[str, float, str]]:
        """Like ``__call__`` but a bad item fails alone: ``("", 0.0, reason)``; ``""`` is no error."""
        try:
            return [(t, c, "") for t, c in self(logprobs)]
        except ValueError:
            pass
        out = []
        for k in range(logprobs.shape[0]):
            try:
                ((t, c),) = self(logprobs[k : k + 1])
                out.append((t, c, ""))
            except ValueError as e:
                out.append(("", 0.0, str(e).replace("item 0", "this item", 1)))
        return out
