"""What the synthetic crops say: names from the corpus with their real frequencies, plus Faker names.

:func:`load_names` reads the names corpus (``$HTR_DATA/names_corpus.txt`` by default, see
:func:`default_names_path`) and cleans it exactly like the Kaggle labels; :class:`_FakerNames` adds
French first and last names from Faker's word lists, sampled with the caller's Generator so that the
text, like the image, depends only on that Generator. :data:`MAX_LEN` bounds every label.
"""
from __future__ import annotations

from pathlib import Path

from htr.config import DEFAULT_ALPHABET, normalize_label
from htr.paths import default_data_dir
from htr.synth.fonts import REQUIREMENTS_FILE

#: Real label lengths go up to 18 characters.
MAX_LEN = 18


def default_names_path() -> Path:
    """``$HTR_DATA/names_corpus.txt``, else the shared data folder beside the checkout."""
    return default_data_dir() / "names_corpus.txt"


def load_names(path, alphabet: str = DEFAULT_ALPHABET) -> list[str]:
    """The names corpus, one transcription per line, cleaned; repeats are kept (real frequencies).

    Cleaning is :func:`htr.config.normalize_label`, the same as for the Kaggle labels: rows that are
    ``EMPTY``/``UNREADABLE``/blank are dropped, lower-case rows are upper-cased (they are names
    typed in the wrong case, not different names), accents are stripped, and rows that still hold
    a character outside ``alphabet`` or are longer than :data:`MAX_LEN` are dropped.
    """
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = normalize_label(line.rstrip("\r\n"), alphabet)
            if text is not None and len(text) <= MAX_LEN:
                names.append(text)
    return names


class _FakerNames:
    """French first and last names from Faker's ``fr_FR`` person provider, accents kept.

    Only the provider's word lists are used, and they are sampled with the caller's Generator, so
    the output does not depend on Faker's own global random state.
    """

    def __init__(self, alphabet: str):
        try:
            from faker.providers.person.fr_FR import Provider
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(f"Faker is needed for synthetic names: pip install -r {REQUIREMENTS_FILE}") from e

        def keep(words):
            return sorted({w.upper() for w in words if normalize_label(w, alphabet) and len(w) <= MAX_LEN})

        self.first = keep(Provider.first_names)
        self.last = keep(Provider.last_names)
        if not self.first or not self.last:
            raise ValueError(f"no Faker fr_FR name fits the alphabet {alphabet!r}")

    def first_name(self, rng) -> str:
        return self.first[rng.integers(len(self.first))]

    def last_name(self, rng) -> str:
        return self.last[rng.integers(len(self.last))]
