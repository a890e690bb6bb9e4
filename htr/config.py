"""The one source of truth for the alphabet, the CTC blank, the input geometry and the model shape.

Every artifact (checkpoint, TorchScript extra files, ONNX metadata, Triton ``config.pbtxt``
parameters) stores :class:`HTRConfig` as JSON and rebuilds it with :meth:`HTRConfig.from_json`;
nothing downstream re-types these values.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field

#: Kaggle "Handwriting Recognition" names: A-Z, space, hyphen, apostrophe.
DEFAULT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ -'"

#: Labels in the Kaggle CSVs that mark an image without a usable transcription.
NON_LABELS = frozenset({"EMPTY", "UNREADABLE", "NAN", "NONE", ""})


@dataclass(frozen=True)
class InputConfig:
    """What ``htr.preprocess.preprocess_batch`` is called with, in training and in serving alike."""

    height: int = 32
    width: int = 256  # the default (and export "opt") width; the network accepts any width >= 4
    binarize: str = "otsu"


@dataclass(frozen=True)
class ModelConfig:
    """CRNN hyperparameters; the loader rebuilds the network from these."""

    cnn_channels: tuple[int, ...] = (32, 64, 96, 96, 128, 128)
    lstm_hidden: int = 128
    lstm_layers: int = 2
    dropout: float = 0.2


@dataclass(frozen=True)
class HTRConfig:
    alphabet: str = DEFAULT_ALPHABET
    blank: int = 0  # CTC blank class index; characters take the other indices in order
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ValueError(f"alphabet must be non-empty with unique characters, got {self.alphabet!r}")
        if not 0 <= self.blank <= len(self.alphabet):
            raise ValueError(f"blank must be in [0, {len(self.alphabet)}], got {self.blank}")

    @property
    def num_classes(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str) -> list[int]:
        """Text -> class indices (blank excluded). Raises ValueError on a character outside the alphabet."""
        index = {c: i + (i >= self.blank) for i, c in enumerate(self.alphabet)}
        try:
            return [index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} in {text!r} is not in the alphabet {self.alphabet!r}") from None

    def decode_indices(self, indices) -> str:
        return "".join(self.alphabet[i - (i > self.blank)] for i in indices if i != self.blank)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"]["cnn_channels"] = list(self.model.cnn_channels)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "HTRConfig":
        model = dict(d.get("model", {}))
        if "cnn_channels" in model:
            model["cnn_channels"] = tuple(model["cnn_channels"])
        return cls(
            alphabet=d.get("alphabet", DEFAULT_ALPHABET),
            blank=int(d.get("blank", 0)),
            input=InputConfig(**d.get("input", {})),
            model=ModelConfig(**model),
        )

    @classmethod
    def from_json(cls, s: str | bytes) -> "HTRConfig":
        return cls.from_dict(json.loads(s))


def normalize_label(raw, alphabet: str = DEFAULT_ALPHABET) -> str | None:
    """Clean a Kaggle label the way the public notebooks do; None when it is not a usable label.

    Upper-cases, strips accents (É -> E), maps typographic apostrophes/dashes to ``'``/``-``,
    collapses runs of spaces, and rejects blanks, NaN, ``EMPTY``/``UNREADABLE`` and anything that
    still has a character outside ``alphabet``.
    """
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None
    text = str(raw).strip().upper()
    if text in NON_LABELS:
        return None
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("`", "'").replace("\u2010", "-").replace("\u2013", "-")
    text = " ".join(text.split())
    if not text or any(c not in alphabet for c in text):
        return None
    return text
