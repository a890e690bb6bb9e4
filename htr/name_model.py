"""Build the name model the CTC beam search can use (:class:`htr.preprocess.NameModel`), and its CLI.

The model is trained on the names corpus (``names_corpus.txt``: one transcription per line, repeats kept, so
frequencies are real) plus first names, last names and "first last" pairs from Faker's person providers.

Empty fields: the corpus's ``EMPTY`` lines (a form field left blank) are kept as the empty name ``""``, so the
beam search's score of an empty read carries its real frequency (about 0.5%) instead of a probability near zero
that would push a blank field into some name.

Leak fix: the corpus holds the labels of the labelled images (it was made from the full Kaggle label files),
and those images are what decoders are tuned and scored on. So every corpus line whose normalised label
(:func:`htr.config.normalize_label`) equals a label of ``exclude_labels_csv`` is removed, every occurrence,
whoever wrote it; Faker names equal to such a label are left out too. The model then knows none of the
scored names as a whole and can only help with them through their pieces, which is what it does for a name
it has never seen in service.

Example::

    python -m htr.name_model                      # defaults: the shared data folder -> models/names_lm.npz
    python -m htr.name_model --n-faker 0 --out /tmp/lm.npz
"""
from __future__ import annotations

import argparse
import csv
import importlib
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import DEFAULT_ALPHABET, normalize_label
from .paths import ROOT, default_data_dir
from .preprocess import NameModel

DEFAULT_OUT = ROOT / "models" / "names_lm.npz"
DEFAULT_N_FAKER = 2000  # "first last" pairs: about the share of two-word lines in the corpus (~3 %)
DEFAULT_MIN_CONTEXT_COUNT = 3  # 1: 20 MB file, 2: 9 MB, 3: 6 MB; same train-side accuracy


@dataclass
class BuildReport:
    """What went into a name model (saved in its metadata as well)."""

    corpus_lines: int = 0
    corpus_unusable: int = 0  # blank, UNREADABLE, characters outside the alphabet
    corpus_empty: int = 0  # EMPTY lines: an empty form field, kept as the empty name ""
    corpus_kept: int = 0
    corpus_removed: int = 0  # lines equal to an excluded label
    excluded_labels: int = 0  # distinct labels in the exclude CSV
    excluded_found: int = 0  # of those, how many the corpus held
    faker_first: int = 0
    faker_last: int = 0
    faker_pairs: int = 0
    faker_removed: int = 0  # Faker names equal to an excluded label
    names: int = 0  # training names, with repeats
    distinct_names: int = 0
    states: int = 0
    nbytes: int = 0

    def lines(self) -> list[str]:
        return [
            f"corpus: {self.corpus_lines} lines, {self.corpus_unusable} unusable, {self.corpus_empty} EMPTY (the "
            f"empty name), {self.corpus_kept} kept, "
            f"{self.corpus_removed} removed (equal to one of {self.excluded_found}/{self.excluded_labels} "
            f"excluded labels)",
            f"Faker: {self.faker_first} first names, {self.faker_last} last names, {self.faker_pairs} "
            f"'first last' pairs ({self.faker_removed} names left out: equal to an excluded label)",
            f"model: {self.names} names ({self.distinct_names} distinct), {self.states} states, "
            f"{self.nbytes / 2**20:.1f} MiB of arrays",
        ]


def read_labels(labels_csv, alphabet: str = DEFAULT_ALPHABET) -> set[str]:
    """The normalised labels (``IDENTITY``) of a Kaggle-layout CSV ``FILENAME,IDENTITY``; unusable ones dropped."""
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().upper() for c in rows[0][:2]] != ["FILENAME", "IDENTITY"]:
        got = rows[0] if rows else "an empty file"
        raise ValueError(f"{labels_csv}: expected a header FILENAME,IDENTITY, got {got}")
    labels = {normalize_label(row[1], alphabet) for row in rows[1:] if len(row) > 1}
    labels.discard(None)
    return labels


def faker_names(locales=("fr_FR",), alphabet: str = DEFAULT_ALPHABET) -> tuple[list[str], list[str]]:
    """Sorted distinct first and last names of Faker's person providers for ``locales``, normalised like the
    labels (upper case, accents stripped); names that still fall outside ``alphabet`` are dropped."""
    first, last = set(), set()
    for locale in locales:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ImportError as e:
            raise ValueError(f"no Faker person provider for locale {locale!r} (is Faker installed?)") from e
        for words, out in ((getattr(provider, "first_names", ()), first), (getattr(provider, "last_names", ()), last)):
            out.update(normalize_label(w, alphabet) for w in words)  # a dict (weighted names): its keys
    first.discard(None)
    last.discard(None)
    return sorted(first), sorted(last)


def build_name_model(corpus_path=None, exclude_labels_csv=None, faker_locales=("fr_FR",),
                     n_faker: int = DEFAULT_N_FAKER, order: int = 6, *,
                     min_context_count: int = DEFAULT_MIN_CONTEXT_COUNT, alphabet: str = DEFAULT_ALPHABET,
                     seed: int = 0) -> NameModel:
    """Train a :class:`NameModel` on the corpus minus the excluded labels, plus Faker names (see the module
    docstring: this exclusion is a leak fix).

    Args:
        corpus_path: names corpus, one name a line (default ``<data>/names_corpus.txt``); each line is
            normalised with :func:`htr.config.normalize_label`, unusable lines (blank, ``EMPTY``, other
            characters) are skipped.
        exclude_labels_csv: ``FILENAME,IDENTITY`` CSV whose labels must not be in the model (default
            ``<data>/labels.csv``, the labelled images); there is deliberately no way to skip it.
        faker_locales: Faker person providers to take first and last names from (each distinct name once);
            empty for none.
        n_faker: "first last" pairs drawn uniformly from those names (``seed``), added once each.
        order, min_context_count: as :meth:`NameModel.train`.
        alphabet: the decoder's alphabet.

    Returns:
        The model; what went in (a :class:`BuildReport`) is ``model.metadata["counts"]``.
    """
    data = default_data_dir()
    corpus_path = Path(corpus_path) if corpus_path is not None else data / "names_corpus.txt"
    exclude_labels_csv = Path(exclude_labels_csv) if exclude_labels_csv is not None else data / "labels.csv"
    for what, path in (("names corpus", corpus_path), ("labels CSV", exclude_labels_csv)):
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path} (set HTR_DATA or pass the path)")
    if isinstance(n_faker, bool) or not isinstance(n_faker, int) or n_faker < 0:
        raise ValueError(f"n_faker must be an int >= 0, got {n_faker!r}")
    if isinstance(faker_locales, str):
        faker_locales = (faker_locales,)
    report = BuildReport()
    excluded = read_labels(exclude_labels_csv, alphabet)
    report.excluded_labels = len(excluded)

    names: Counter[str] = Counter()
    found = set()
    with open(corpus_path, encoding="utf-8") as f:
        for line in f:
            report.corpus_lines += 1
            raw = line.rstrip("\r\n")
            name = normalize_label(raw, alphabet)
            if name is None and raw.strip().upper() == "EMPTY":
                report.corpus_empty += 1  # forms have empty fields: "" gets its real frequency, not ~0
                names[""] += 1
            elif name is None:
                report.corpus_unusable += 1
            elif name in excluded:
                report.corpus_removed += 1
                found.add(name)
            else:
                names[name] += 1
    report.corpus_kept = sum(n for name, n in names.items() if name)
    report.excluded_found = len(found)

    if faker_locales:
        first, last = faker_names(tuple(faker_locales), alphabet)
        report.faker_removed = sum(n in excluded for n in first) + sum(n in excluded for n in last)
        first_kept = [n for n in first if n not in excluded]
        last_kept = [n for n in last if n not in excluded]
        names.update(first_kept)
        names.update(last_kept)
        report.faker_first, report.faker_last = len(first_kept), len(last_kept)
        if n_faker and first and last:
            rng = np.random.default_rng(seed)
            pairs = [f"{first[i]} {last[j]}" for i, j in zip(rng.integers(len(first), size=n_faker),
                                                               rng.integers(len(last), size=n_faker))]
            pairs = [p for p in pairs if p not in excluded]
            report.faker_removed += n_faker - len(pairs)
            names.update(pairs)
            report.faker_pairs = len(pairs)

    report.names, report.distinct_names = sum(names.values()), len(names)
    metadata = {
        "sources": {"corpus": corpus_path.name, "excluded_labels": exclude_labels_csv.name,
                    "faker_locales": list(faker_locales), "n_faker": n_faker, "seed": seed},
        "built_by": "htr.name_model.build_name_model",
    }
    model = NameModel.train(names, alphabet, order, min_context_count, metadata)
    report.states, report.nbytes = model.n_states, model.nbytes
    model.metadata["counts"] = asdict(report)
    return model


def parse_args(argv=None) -> argparse.Namespace:
    data = default_data_dir()
    ap = argparse.ArgumentParser(
        prog="python -m htr.name_model", description=__doc__,
        formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--corpus", type=Path, default=data / "names_corpus.txt",
                    help="names corpus, one name a line, repeats kept (their frequencies are used)")
    ap.add_argument("--exclude-labels", type=Path, default=data / "labels.csv",
                    help="FILENAME,IDENTITY CSV of the images decoders are tuned and scored on: its labels are "
                         "removed from the training names")
    ap.add_argument("--faker-locales", default="fr_FR",
                    help="comma list of Faker person locales for first and last names ('' for none)")
    ap.add_argument("--n-faker", type=int, default=DEFAULT_N_FAKER, help="'first last' Faker pairs to add")
    ap.add_argument("--order", type=int, default=6,
                    help="n-gram order: each character is predicted from the order-1 symbols before it")
    ap.add_argument("--min-context-count", type=int, default=DEFAULT_MIN_CONTEXT_COUNT,
                    help="histories of 2+ symbols seen fewer times are not kept (1 keeps all: 3x the size)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Faker pairs")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the model (.npz)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    locales = tuple(x.strip() for x in args.faker_locales.split(",") if x.strip())
    model = build_name_model(args.corpus, args.exclude_labels, locales, args.n_faker, args.order,
                                     min_context_count=args.min_context_count, seed=args.seed)
    path = model.save(args.out)
    for line in BuildReport(**model.metadata["counts"]).lines():
        print(line)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {model!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
