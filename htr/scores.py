"""Recognition scores, comparable with the public Kaggle notebooks.

- ``exact_match``: fraction of items whose prediction equals the label.
- ``cer``: total Levenshtein distance / total label characters (rapidfuzz).
- ``wer``: the same over space-separated words.
- ``correct_chars``: the notebooks' "correct characters predicted": characters equal at the same
  position (up to the shorter length) / total label characters.

``by_confidence`` answers the operator's question "if I accept reads at confidence >= t and send the
rest to a person, how many are accepted and how many of those are right?" (the same table picks a
pseudo-labelling threshold for ``htr train --pseudo-threshold``).
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


DEFAULT_THRESHOLDS = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9)


def by_confidence(predictions: list[str], confidences: list[float], labels: list[str],
                  thresholds=DEFAULT_THRESHOLDS) -> list[dict]:
    """One row per threshold: ``kept`` (share of items with confidence >= threshold), ``n_kept`` and
    ``exact_match`` among the kept (None when nothing is kept)."""
    if not len(predictions) == len(confidences) == len(labels):
        raise ValueError(f"{len(predictions)} predictions, {len(confidences)} confidences, {len(labels)} labels")
    rows = []
    for t in sorted(float(t) for t in thresholds):
        kept = [p == y for p, c, y in zip(predictions, confidences, labels) if c >= t]
        rows.append({"threshold": t, "n_kept": len(kept), "kept": len(kept) / len(labels) if labels else 0.0,
                     "exact_match": sum(kept) / len(kept) if kept else None})
    return rows
