"""CTC decoding with a model's config: log-probabilities -> (text, confidence[, error]).

One class serves offline recognition (``htr.offline``), the Triton ``ctc_decode`` model and the
client's local decoding (``preprocess="client"``), so all three read the same output the same way.
Torch-free: the Triton python-backend stub imports it.
"""
from __future__ import annotations

import io
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .config import HTRConfig, normalize_label
from .preprocess import Lexicon, NameModel, ctc_beam_decode, ctc_greedy_decode

#: file name of the name model inside a served ``ctc_decode`` version folder
NAME_MODEL_FILE = "names_lm.npz"


@dataclass(frozen=True)
class DecodingSpec:
    """How a model's output is read by default: stored in the checkpoint (key ``decoding``, with the name
    model's ``.npz`` bytes beside it), written into the served ``ctc_decode``'s parameters, and used by
    :class:`htr.offline.OfflineRecognizer` and ``htr eval`` when no decoder is asked for, so the offline and
    served reads are the same. ``lm_weight`` and ``insertion_bonus`` are chosen on the validation part of the
    train side (``htr tune-decoder``), never on the eval split."""

    decoder: str = "greedy"  # greedy | beam
    beam_width: int = 10
    lm_weight: float = 0.0  # weight of the name model's ln-probability (beam with a name model)
    insertion_bonus: float = 0.0  # per character, natural-log units

    def to_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_params(cls, params: dict) -> "DecodingSpec":
        """From a dict (checkpoint entry or Triton parameters, values possibly strings); unknown keys ignored."""
        out = {}
        for f in fields(cls):
            if f.name in params and params[f.name] not in (None, ""):
                out[f.name] = type(f.default)(params[f.name])
        return cls(**out)


def name_model_bytes(model: NameModel) -> bytes:
    """The ``.npz`` file :meth:`NameModel.save` writes, as bytes (to store inside a checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        return model.save(Path(tmp) / NAME_MODEL_FILE).read_bytes()


def name_model_from_bytes(blob: bytes) -> NameModel:
    return NameModel.load(io.BytesIO(blob))


def checkpoint_decoding(ckpt: dict) -> tuple[DecodingSpec, NameModel | None]:
    """The default decoding a checkpoint carries (greedy for checkpoints written before it existed)."""
    entry = ckpt.get("decoding") or {}
    spec = DecodingSpec.from_params(entry)
    blob = entry.get("name_model_npz")
    return spec, (name_model_from_bytes(bytes(blob)) if blob else None)


def resolve_decoding(ckpt: dict, decoder: str | None = None,
                     beam_width: int | None = None) -> tuple[DecodingSpec, NameModel | None]:
    """The one rule for "the checkpoint's decoding unless asked otherwise", used offline
    (:class:`htr.offline.OfflineRecognizer`, ``htr eval``) and by the export (the served ``ctc_decode``):
    ``decoder`` / ``beam_width`` None keep the checkpoint's; the name model (with its tuned weights) goes with
    a beam search only, so ``"greedy"`` drops it and ``"beam"`` keeps it."""
    spec, name_model = checkpoint_decoding(ckpt)
    spec = replace(spec, **{k: v for k, v in (("decoder", decoder), ("beam_width", beam_width)) if v is not None})
    return spec, (name_model if spec.decoder == "beam" else None)


def read_lexicon(lexicon, alphabet: str) -> list[str]:
    """A lexicon path (one entry a line) or an iterable of strings, normalised like the labels
    (:func:`htr.config.normalize_label`); blank, ``EMPTY`` and out-of-alphabet entries are dropped."""
    lines = Path(lexicon).read_text(encoding="utf-8").splitlines() if isinstance(lexicon, (str, Path)) else lexicon
    words = {normalize_label(w, alphabet) for w in lines}
    words.discard(None)
    return sorted(words)


class CTCDecoder:
    """Greedy or beam decoding for one model's alphabet and blank; beam search optionally guided by a name
    model (:class:`htr.preprocess.NameModel`, weight ``lm_weight``, ``insertion_bonus`` per character) and a
    lexicon, hard (``lexicon_mode="hard"``: results are entries) or soft (a bonus for entries).

    A lexicon (path, iterable or :class:`Lexicon`) or a name model implies beam search; both are built once here.
    """

    def __init__(self, cfg: HTRConfig, decoder: str = "greedy", beam_width: int = 10, lexicon=None,
                 name_model: NameModel | str | Path | None = None, lm_weight: float = 0.0,
                 insertion_bonus: float = 0.0, lexicon_mode: str = "hard", lexicon_bonus: float | None = None):
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        self.cfg, self.decoder, self.beam_width, self.lexicon = cfg, decoder, beam_width, None
        if lexicon is not None:
            self.lexicon = lexicon if isinstance(lexicon, Lexicon) else Lexicon(
                read_lexicon(lexicon, cfg.alphabet), cfg.alphabet, cfg.blank)
            self.decoder = "beam"
        if name_model is not None and not isinstance(name_model, NameModel):
            name_model = NameModel.load(name_model)
        if name_model is not None:
            if name_model.alphabet != cfg.alphabet:
                raise ValueError(f"the name model's alphabet {name_model.alphabet!r} is not the model's "
                                 f"{cfg.alphabet!r}")
            self.decoder = "beam"
        self.name_model, self.lm_weight, self.insertion_bonus = name_model, lm_weight, insertion_bonus
        self.lexicon_mode = lexicon_mode
        self._extra = {"name_model": name_model, "lm_weight": lm_weight, "insertion_bonus": insertion_bonus,
                       "lexicon_mode": lexicon_mode}
        if lexicon_bonus is not None:
            self._extra["lexicon_bonus"] = lexicon_bonus

    @classmethod
    def from_spec(cls, cfg: HTRConfig, spec: DecodingSpec, name_model: NameModel | None = None,
                  **overrides) -> "CTCDecoder":
        """The decoder a :class:`DecodingSpec` describes (the name model only when the spec is a beam search)."""
        spec = replace(spec, **{k: v for k, v in overrides.items() if k in {f.name for f in fields(spec)}})
        rest = {k: v for k, v in overrides.items() if k not in {f.name for f in fields(spec)}}
        lm = name_model if spec.decoder == "beam" else None
        return cls(cfg, spec.decoder, spec.beam_width, name_model=lm, lm_weight=spec.lm_weight,
                   insertion_bonus=spec.insertion_bonus, **rest)

    def describe(self) -> str:
        if self.decoder == "greedy":
            return "greedy"
        parts = [f"beam {self.beam_width}"]
        if self.name_model is not None:
            parts.append(f"name model (weight {self.lm_weight:g}, bonus {self.insertion_bonus:g})")
        if self.lexicon is not None:
            parts.append(f"{self.lexicon_mode} lexicon ({len(self.lexicon)} entries)")
        return " + ".join(parts)

    def __call__(self, logprobs: np.ndarray) -> list[tuple[str, float]]:
        """Decode a ``(N, T, C)`` batch; raises ValueError (naming the item) on NaN/inf log-probabilities."""
        if self.decoder == "greedy":
            return ctc_greedy_decode(logprobs, self.cfg.alphabet, self.cfg.blank)
        return ctc_beam_decode(logprobs, self.cfg.alphabet, self.beam_width, self.lexicon, self.cfg.blank,
                               **self._extra)

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
