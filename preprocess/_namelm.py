"""An open-vocabulary character n-gram model of names, compiled to flat arrays for the CTC beam search.

:class:`NameModel` is what ``ctc_beam_decode(..., name_model=...)`` adds to the acoustic score: the natural
log-probability of the text read so far, one character at a time, plus the log-probability that the name ends
there. It is trained here (pure Python + NumPy, no torch) and saved as one ``.npz``; the Triton python-backend
stub loads it with NumPy alone (``numpy<2`` there).
"""
from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._lexicon import alphabet_string

#: Default n-gram order: a character is predicted from the 5 before it.
DEFAULT_ORDER = 6
MAX_ORDER = 12
#: Saved-file layout version (``format`` in the ``.npz``).
FORMAT = 1
_ARRAYS = ("next_state", "logp", "end_logp")


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an int in [1, {MAX_ORDER}], got {order!r}")
    return int(order)


def _named_counts(names) -> dict[str, int]:
    """Names as given (strs, ``(str, count)`` pairs or a mapping str -> count) -> {name: total count}."""
    if isinstance(names, str):
        raise TypeError("names must be an iterable of strings (or (string, count) pairs), not a single str")
    items = names.items() if isinstance(names, Mapping) else names
    counts: dict[str, int] = {}
    for item in items:
        if isinstance(item, str):
            name, n = item, 1
        else:
            try:
                name, n = item
            except (TypeError, ValueError):
                raise TypeError(f"names must hold strings or (string, count) pairs, got {item!r}") from None
            if not isinstance(name, str):
                raise TypeError(f"a name must be a str, got {type(name).__name__} ({name!r})")
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"the count of {name!r} must be an int >= 1, got {n!r}")
        counts[name] = counts.get(name, 0) + int(n)
    return counts


class NameModel:
    """Character n-gram model of names over the decoder's alphabet: interpolated Kneser-Ney, compiled.

    **Model.** A name is spelled ``BOS * (order - 1) + name + EOS``: the begin-of-name padding makes the
    first characters depend on their position, and the end-of-name symbol ``EOS`` lets the model say that
    ``"JEA"`` is a poor place to stop. Each of the ``len(alphabet) + 1`` outcomes (the characters and EOS) is
    predicted from the ``order - 1`` symbols before it with interpolated Kneser-Ney smoothing (Chen &
    Goodman 1998, one discount per order ``D = n1 / (n1 + 2 n2)`` from the counts of counts, clamped to
    [0.1, 1]): ``P(w | h) = max(a(hw) - D, 0) / a(h.) + D N1+(h.) / a(h.) * P(w | h[1:])``, down to a uniform
    distribution over the outcomes, so every character of the alphabet has a non-zero probability after any
    history (open vocabulary: unseen names are scored by their pieces). ``a`` is the name count for the
    highest order and for n-grams starting with BOS, and the number of distinct left neighbours
    (continuation count) otherwise.

    **Compiled form** (what the kernel walks, without the GIL). A *state* is a kept history, at most
    ``order - 1`` symbols; the kept histories are closed under suffixes and prefixes, and the state after
    appending a character is the longest kept suffix of the extended history. ``min_context_count`` drops
    histories of length >= 2 seen fewer times than that (their positions fall back to a shorter history),
    which bounds the memory. Arrays, characters indexed by their position in ``alphabet`` (not by class:
    the kernel maps a class past the blank to ``class - 1``):

    - ``next_state`` int32 ``(S, V)``: the state after appending character ``i``;
    - ``logp`` float32 ``(S, V)``: ``ln P(character i | state)``;
    - ``end_logp`` float32 ``(S,)``: ``ln P(EOS | state)``; each row of ``exp(logp)`` plus ``exp(end_logp)``
      sums to 1;
    - ``start_state``: the state of the empty name (the all-BOS history).

    :meth:`score` walks the same arrays in Python (a sum of the float32 values as doubles, in order: the
    beam search accumulates exactly these). Build with :meth:`train`; :meth:`save` / :meth:`load` keep
    one ``.npz`` holding the arrays, the alphabet, the order and a JSON ``metadata`` (how it was built).
    """

    def __init__(self, alphabet, order: int, next_state, logp, end_logp, start_state: int, metadata=None):
        self.alphabet = alphabet = alphabet_string(alphabet)
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet must be non-empty with no repeated character, got {alphabet!r}")
        self.order = _check_order(order)
        v = len(alphabet)
        next_state = np.ascontiguousarray(next_state, np.int32)
        logp = np.ascontiguousarray(logp, np.float32)
        end_logp = np.ascontiguousarray(end_logp, np.float32)
        s = end_logp.shape[0] if end_logp.ndim == 1 else -1
        if s < 1 or next_state.shape != (s, v) or logp.shape != (s, v):
            raise ValueError(f"name model arrays must be next_state (S, {v}), logp (S, {v}) and end_logp (S,) "
                             f"with S >= 1, got {next_state.shape}, {logp.shape} and {end_logp.shape}")
        if next_state.min() < 0 or next_state.max() >= s:
            raise ValueError(f"name model next_state must hold states in [0, {s - 1}]")
        for name, a in (("logp", logp), ("end_logp", end_logp)):
            if not np.isfinite(a).all() or a.max() > 0.0:
                raise ValueError(f"name model {name} must hold finite log-probabilities <= 0")
        if isinstance(start_state, bool) or not isinstance(start_state, (int, np.integer)) or not 0 <= start_state < s:
            raise ValueError(f"start_state must be an int in [0, {s - 1}], got {start_state!r}")
        for a in (next_state, logp, end_logp):
            a.flags.writeable = False
        self.next_state, self.logp, self.end_logp = next_state, logp, end_logp
        self.start_state = int(start_state)
        self.metadata = dict(metadata or {})
        self._index = {ch: i for i, ch in enumerate(alphabet)}

    # ------------------------------------------------------------------------------------------- train

    @classmethod
    def train(cls, names, alphabet, order: int = DEFAULT_ORDER, min_context_count: int = 1,
              metadata: dict | None = None) -> "NameModel":
        """Count the names and compile the model.

        Args:
            names: an iterable of names (each counts once; repeats add up), of ``(name, count)`` pairs, or a
                mapping name -> count. The empty name is allowed (it teaches "ends at once").
            alphabet: the decoder's alphabet (str or sequence of single characters), as passed to
                ``ctc_beam_decode``.
            order: n-gram order, in [1, 12]; 6 predicts each character from the 5 before it.
            min_context_count: histories of 2 or more symbols seen fewer times than this are not states
                (1 keeps every history; 2 drops those seen once, about halving the size of a names model).
            metadata: JSON-serialisable facts to save with the model (sources, counts); the training facts
                (method, order, discounts, names, states) are added under their own keys.

        Raises:
            ValueError: a name with a character outside the alphabet (the message names both), no names,
                a bad count, order or ``min_context_count``.
            TypeError: ``names`` is a single str or holds something else than names.
        """
        alphabet = alphabet_string(alphabet)
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet must be non-empty with no repeated character, got {alphabet!r}")
        order = _check_order(order)
        if isinstance(min_context_count, bool) or not isinstance(min_context_count, (int, np.integer)) \
                or min_context_count < 1:
            raise ValueError(f"min_context_count must be an int >= 1, got {min_context_count!r}")
        counts = _named_counts(names)
        if not counts:
            raise ValueError("a name model needs at least one name")
        known = set(alphabet)
        for name in counts:
            if not known.issuperset(name):
                ch = next(ch for ch in name if ch not in known)
                raise ValueError(f"name {name!r} has the character {ch!r}, which is not in the alphabet {alphabet!r}")

        # Symbols as one-character strings: chr(i) for alphabet[i], EOS = chr(V), BOS = chr(V + 1).
        v = len(alphabet)
        eos, bos = chr(v), chr(v + 1)
        table = {ord(ch): chr(i) for i, ch in enumerate(alphabet)}
        pad = bos * (order - 1)

        # adjusted counts a[n] of every n-gram (n symbols, the last one predicted), highest order first
        full: dict[str, int] = {}
        for name, n in counts.items():
            s = pad + name.translate(table) + eos
            for i in range(order - 1, len(s)):
                g = s[i - order + 1 : i + 1]
                full[g] = full.get(g, 0) + n
        adjusted = {order: full}
        for n in range(order - 1, 0, -1):
            lower: dict[str, int] = {}
            for g, a in adjusted[n + 1].items():
                h = g[1:]
                # an n-gram after BOS has one possible left neighbour (BOS): its count is the raw count
                lower[h] = lower.get(h, 0) + (a if h[0] == bos else 1)
            adjusted[n] = lower
        discounts = {}
        for n, grams in adjusted.items():
            values = np.fromiter(grams.values(), np.int64, len(grams))
            n1, n2 = int((values == 1).sum()), int((values == 2).sum())
            d = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
            discounts[n] = min(max(d, 0.1), 1.0)

        # histories (contexts) and how often each is followed by a symbol; which ones become states
        seen: dict[str, int] = {}
        for g, a in full.items():
            h = g[:-1]
            for j in range(order):
                seen[h[j:]] = seen.get(h[j:], 0) + a
        kept = sorted((h for h, a in seen.items() if len(h) <= 1 or a >= min_context_count or h == bos * len(h)),
                      key=lambda h: (len(h), h))
        state = {h: k for k, h in enumerate(kept)}
        n_states = len(kept)
        for h in kept:  # closed under suffix and prefix: the walk below relies on it
            assert h[1:] in state and h[:-1] in state, h

        # dense adjusted counts per state, then the interpolated distributions, shortest histories first
        counts_arr = np.zeros((n_states, v + 1), np.float64)
        for n, grams in adjusted.items():
            for g, a in grams.items():
                k = state.get(g[:-1])
                if k is not None:
                    counts_arr[k, ord(g[-1])] = a
        length = np.fromiter(map(len, kept), np.int64, n_states)
        parent = np.fromiter((state[h[1:]] if h else 0 for h in kept), np.int64, n_states)
        total = counts_arr.sum(axis=1)
        types = (counts_arr > 0).sum(axis=1)
        d = np.array([discounts[n + 1] for n in range(order)])[length]  # (S,) discount of each state's order
        probs = np.maximum(counts_arr - d[:, None], 0.0) / total[:, None]
        gamma = d * types / total
        probs[length == 0] += gamma[length == 0, None] / (v + 1)
        for n in range(1, order):
            rows = np.flatnonzero(length == n)
            probs[rows] += gamma[rows, None] * probs[parent[rows]]

        # transitions, shortest histories first: a state's row is its suffix's row (longest kept suffix of
        # the extended history), then each kept extension h + c of the state h itself overrides entry c
        next_state = np.zeros((n_states, v), np.int32)
        for n in range(order):
            rows = np.flatnonzero(length == n)
            next_state[rows] = next_state[parent[rows]] if n else state[""]
            for k in rows.tolist() if n < order - 1 else ():
                h = kept[k]
                for i in range(v):
                    child = state.get(h + chr(i))
                    if child is not None:
                        next_state[k, i] = child

        with np.errstate(divide="ignore"):
            logp = np.log(probs)
        info = dict(metadata or {})
        info.update({
            "method": "interpolated Kneser-Ney, one discount per order, uniform base over characters + EOS",
            "order": order, "discounts": [round(discounts[n], 6) for n in range(1, order + 1)],
            "min_context_count": int(min_context_count), "names": int(sum(counts.values())),
            "distinct_names": len(counts), "states": n_states,
        })
        return cls(alphabet, order, next_state, logp[:, :v], logp[:, v], state[pad], info)

    # ---------------------------------------------------------------------------------------- queries

    @property
    def n_states(self) -> int:
        return self.end_logp.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the compiled arrays (what the kernel reads)."""
        return sum(getattr(self, name).nbytes for name in _ARRAYS)

    def indices(self, text: str) -> list[int]:
        """Alphabet positions of ``text``'s characters; ValueError naming a character outside the alphabet."""
        try:
            return [self._index[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"{text!r} has the character {e.args[0]!r}, which is not in the alphabet "
                             f"{self.alphabet!r}") from None

    def state_after(self, text: str) -> int:
        """The state reached from the start by reading ``text``."""
        s = self.start_state
        for i in self.indices(text):
            s = int(self.next_state[s, i])
        return s

    def score(self, text: str, end: bool = True) -> float:
        """``ln P(text)`` as a name: the sum of its characters' log-probabilities, plus the end-of-name one
        (unless ``end=False``: the score of ``text`` as a prefix), as doubles in reading order."""
        s, total = self.start_state, 0.0
        for i in self.indices(text):
            total = total + float(self.logp[s, i])
            s = int(self.next_state[s, i])
        if end:
            total = total + float(self.end_logp[s])
        return total

    # ---------------------------------------------------------------------------------------- storage

    def save(self, path) -> Path:
        """Write one compressed ``.npz`` (arrays, alphabet, order, start state, metadata JSON); -> its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to another suffix
            np.savez_compressed(
                f, format=np.int64(FORMAT), alphabet=np.array(self.alphabet), order=np.int64(self.order),
                start_state=np.int64(self.start_state), next_state=self.next_state, logp=self.logp,
                end_logp=self.end_logp, metadata=np.array(json.dumps(self.metadata, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path) -> "NameModel":
        """Read a model written by :meth:`save` (NumPy only, no pickles); ValueError if it is not one."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"format", "alphabet", "order", "start_state", "metadata", *_ARRAYS}.difference(z.files)
            if missing:
                raise ValueError(f"{path}: not a name model file (missing {', '.join(sorted(missing))})")
            if int(z["format"]) != FORMAT:
                raise ValueError(f"{path}: name model format {int(z['format'])}, this code reads {FORMAT}")
            return cls(str(z["alphabet"]), int(z["order"]), z["next_state"], z["logp"], z["end_logp"],
                       int(z["start_state"]), json.loads(str(z["metadata"])))

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex, 16 digits) of what decoding reads: alphabet, order, start state and the three arrays
        (not the metadata). Two files with the same fingerprint decode identically; the export writes it into
        ``ctc_decode``'s parameters so a client decoding locally can prove it holds the served model."""
        import hashlib

        h = hashlib.sha256()
        h.update(json.dumps([self.alphabet, self.order, self.start_state]).encode())
        for a in (self.next_state, self.logp, self.end_logp):
            h.update(str(a.shape).encode())
            h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"NameModel(order={self.order}, {self.n_states} states, {self.nbytes / 2**20:.1f} MiB, "
                f"alphabet={self.alphabet!r})")


def check_weight(name: str, value, signed: bool) -> float:
    """A real in [0, 1e6], or [-1e6, 1e6] when ``signed``: larger magnitudes would swamp every other term
    (and could overflow a score to an infinity)."""
    low, text = (-1e6, "[-1e6, 1e6]") if signed else (0.0, "[0, 1e6]")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= 1e6:
        raise ValueError(f"{name} must be a real number in {text}, got {value!r}")
    return float(value)


__all__ = ["DEFAULT_ORDER", "NameModel"]
