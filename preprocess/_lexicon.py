"""A lexicon compiled once into a character trie stored as flat arrays (shared by kernel and reference)."""
from __future__ import annotations

import numpy as np


def alphabet_string(alphabet) -> str:
    """``alphabet`` as a str: a str as is, or a sequence of single-character strings joined."""
    if isinstance(alphabet, str):
        return alphabet
    try:
        chars = list(alphabet)
    except TypeError:
        raise ValueError(
            f"alphabet must be a str or a sequence of single-character strings, got {type(alphabet).__name__}"
        ) from None
    for i, ch in enumerate(chars):
        if not isinstance(ch, str) or len(ch) != 1:
            raise ValueError(f"alphabet[{i}] must be a single-character string, got {ch!r}")
    return "".join(chars)


def class_of_char(alphabet: str, blank: int) -> dict[str, int]:
    """Character -> class index (``alphabet[i]`` is class ``i`` below the blank, ``i + 1`` from it on)."""
    mapping = {}
    for i, ch in enumerate(alphabet):
        if ch in mapping:
            raise ValueError(f"alphabet has the character {ch!r} twice, so a lexicon word cannot be mapped to classes")
        mapping[ch] = i if i < blank else i + 1
    return mapping


class Lexicon:
    """The strings a lexicon-constrained :func:`ctc_beam_decode` may return, compiled into a trie.

    Build it once (an 80k-name list takes a fraction of a second) and pass it to every call; passing a
    plain list to ``ctc_beam_decode`` recompiles it each time. The trie is kept as flat arrays the
    kernel walks without the GIL, nodes numbered from the root ``0``:

    - ``child_start`` int32 ``(n_nodes + 1,)``: the edges of node ``n`` are ``child_start[n]:child_start[n+1]``
      (CSR), sorted by class index;
    - ``child_class`` int32 ``(n_edges,)``: the class index (never the blank) labelling each edge;
    - ``child_node`` int32 ``(n_edges,)``: the node each edge leads to;
    - ``terminal`` uint8 ``(n_nodes,)``: 1 where a word ends.

    Args:
        words: iterable of str; duplicates are fine, the empty string is allowed (then "" is a valid
            result).
        alphabet: the decoder's alphabet (str or sequence of single characters), no repeated character.
        blank: the blank's class index, as passed to the decoder.

    Raises:
        ValueError: a word uses a character outside the alphabet (the message names both), a repeated
            alphabet character, or a bad ``blank``.
        TypeError: ``words`` is a single str or holds a non-str.
    """

    def __init__(self, words, alphabet, blank: int = 0):
        alphabet = alphabet_string(alphabet)
        if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or not 0 <= blank <= len(alphabet):
            raise ValueError(f"blank must be an int in [0, len(alphabet)] = [0, {len(alphabet)}], got {blank!r}")
        if isinstance(words, str):
            raise TypeError("words must be an iterable of strings, not a single str")
        self.alphabet = alphabet
        self.blank = int(blank)
        self._class = cls = class_of_char(alphabet, self.blank)

        words = list(words)
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"lexicon words must be str, got {type(word).__name__} ({word!r})")
        unknown = set("".join(words)).difference(cls)
        if unknown:
            word = next(w for w in words if not unknown.isdisjoint(w))
            ch = next(ch for ch in word if ch in unknown)
            raise ValueError(f"lexicon word {word!r} has the character {ch!r}, which is not in the alphabet")

        # Spell each distinct word in class indices (chr(class)), sorted: a depth-first walk of the trie
        # with children in ascending class order. Word k shares its first lcp characters with word
        # k - 1 and adds one node per remaining character; nodes are numbered in that order (root 0,
        # node i + 1 is reached by edge i).
        table = {ord(ch): chr(c) for ch, c in cls.items()}
        spelled = sorted({w.translate(table) for w in words})
        path = [0]  # node ids along the previous word, by depth
        prev = ""
        attach, suffixes, ends = [], [], []
        n_nodes = 1
        for w in spelled:
            lcp, m = 0, min(len(w), len(prev))
            while lcp < m and w[lcp] == prev[lcp]:
                lcp += 1
            del path[lcp + 1 :]
            attach.append(path[lcp])
            suffixes.append(w[lcp:])
            path.extend(range(n_nodes, n_nodes + len(w) - lcp))
            n_nodes += len(w) - lcp
            ends.append(path[-1])
            prev = w
        # edge i creates node i + 1; its parent is the attach node for a suffix's first character,
        # else the node created just before it
        spelled_edges = "".join(suffixes).encode("utf-32-le", "surrogatepass")
        edge_class = np.frombuffer(spelled_edges, np.uint32).astype(np.int32)
        lengths = np.fromiter(map(len, suffixes), np.intp, len(suffixes))
        parent = np.arange(n_nodes - 1, dtype=np.int32)  # node i (the previous one) for edge i
        first = np.cumsum(lengths) - lengths
        has_edge = lengths > 0
        parent[first[has_edge]] = np.asarray(attach, np.int32)[has_edge]

        order = np.argsort(parent, kind="stable")  # group edges by parent, ascending class within
        self.child_start = np.zeros(n_nodes + 1, np.int32)
        np.cumsum(np.bincount(parent, minlength=n_nodes), out=self.child_start[1:])
        self.child_class = np.ascontiguousarray(edge_class[order])
        self.child_node = (order + 1).astype(np.int32)
        self.terminal = np.zeros(n_nodes, np.uint8)
        self.terminal[np.asarray(ends, np.intp)] = 1
        for a in (self.child_start, self.child_class, self.child_node, self.terminal):
            a.flags.writeable = False
        self._n_words = len(spelled)

    @property
    def n_nodes(self) -> int:
        return len(self.terminal)

    def child(self, node: int, c: int) -> int:
        """The node reached from ``node`` by class ``c``, or -1."""
        lo, hi = self.child_start[node], self.child_start[node + 1]
        k = lo + int(np.searchsorted(self.child_class[lo:hi], c))
        return int(self.child_node[k]) if k < hi and self.child_class[k] == c else -1

    def __len__(self) -> int:
        return self._n_words

    def __contains__(self, word) -> bool:
        if not isinstance(word, str):
            return False
        node = 0
        for ch in word:
            c = self._class.get(ch)
            node = -1 if c is None else self.child(node, c)
            if node < 0:
                return False
        return bool(self.terminal[node])

    def __repr__(self) -> str:
        return f"Lexicon({len(self)} words, {self.n_nodes} trie nodes, alphabet={self.alphabet!r}, blank={self.blank})"
