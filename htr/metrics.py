"""Recognition scores, comparable with the public Kaggle notebooks.

- ``exact_match``: fraction of items whose prediction equals the label.
- ``cer``: total Levenshtein distance / total label characters (rapidfuzz).
- ``wer``: the same over space-separated words.
- ``correct_chars``: the notebooks' "correct characters predicted": characters equal at the same
  position (up to the shorter length) / total label characters.
"""
from __future__ import annotations

from rapidfuzz.distance import Levenshtein


def score(predictions: list[str], labels: list[str]) -> dict:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    n = len(labels)
    chars = sum(len(t) for t in labels)
    words = sum(len(t.split()) for t in labels)
    edits = sum(Levenshtein.distance(p, t) for p, t in zip(predictions, labels))
    word_edits = sum(Levenshtein.distance(p.split(), t.split()) for p, t in zip(predictions, labels))
    positional = sum(sum(a == b for a, b in zip(p, t)) for p, t in zip(predictions, labels))
    return {
        "n": n,
        "exact_match": sum(p == t for p, t in zip(predictions, labels)) / n if n else 0.0,
        "cer": edits / chars if chars else 0.0,
        "wer": word_edits / words if words else 0.0,
        "correct_chars": positional / chars if chars else 0.0,
    }
