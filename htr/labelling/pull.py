"""Finished annotations -> labels in the Kaggle layout, cleaned exactly as the training labels are.

    OUT/
      labels.csv     FILENAME,IDENTITY
      labelled/      the images, byte for byte as pushed

Each task's label is its newest annotation that was not skipped, normalised by
:func:`htr.config.normalize_label` (upper case, accents stripped, typographic apostrophes and dashes mapped,
spaces collapsed). A task gives no label, and is reported under its reason, when it is not annotated yet,
every annotation of it was skipped (cancelled), its text is empty or ``EMPTY``/``UNREADABLE``, or it still has
a character outside the alphabet after normalisation. The folder is written whole or not at all
(:mod:`htr.labelling.folders`).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from htr.config import DEFAULT_ALPHABET, normalize_label

from .errors import LabellingError, NothingToPull
from .folders import check_target, staged_folder
from .studio import DEFAULT_PROJECT, IMAGE, TEXT, Studio, decode_data_url

LABELS_CSV = "labels.csv"
LABELLED = "labelled"

# reason -> how the report names it, in report order
UNFINISHED, SKIPPED, EMPTY, ALPHABET, NO_IMAGE = "unfinished", "skipped", "empty", "alphabet", "no_image"
REASONS = {
    UNFINISHED: "not annotated yet",
    SKIPPED: "skipped (cancelled) by the labeller",
    EMPTY: "empty, or marked EMPTY/UNREADABLE",
    ALPHABET: "characters outside the alphabet",
    NO_IMAGE: "no image in the task (not pushed by htr label push)",
}


@dataclass(frozen=True)
class Label:
    filename: str
    identity: str
    image: bytes
    task_id: int


@dataclass
class PullResult:
    out: Path | None
    labels: list[Label]
    tasks: int
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> "FILENAME (detail)" per task

    def report(self) -> list[str]:
        """One line per reason that skipped tasks, with the count and the tasks (first 10)."""
        lines = []
        for reason, items in self.skipped.items():
            shown = "; ".join(items[:10]) + (f"; ... ({len(items) - 10} more)" if len(items) > 10 else "")
            lines.append(f"skipped {len(items)} task{'s' * (len(items) != 1)}: {REASONS[reason]}: {shown}")
        return lines


def transcription(annotation: dict) -> str:
    """The text of the annotation's transcription (lines joined by a space)."""
    texts = []
    for item in annotation.get("result") or []:
        if item.get("from_name") == TEXT:
            texts += [str(t) for t in (item.get("value") or {}).get("text") or []]
    return " ".join(texts)


def _outside(raw: str, alphabet: str) -> str:
    """The characters of ``raw`` that normalisation cannot bring into the alphabet."""
    bad = sorted({c for c in raw if c.strip() and normalize_label(c, alphabet) is None})
    return "".join(bad)


def labels_from_export(tasks: list[dict], alphabet: str = DEFAULT_ALPHABET) -> tuple[list[Label], dict[str, list[str]]]:
    """Labels from Label Studio's JSON export (all tasks), and the skipped tasks by reason."""
    labels, skipped, names = [], {}, set()
    for task in sorted(tasks, key=lambda t: t.get("id", 0)):
        data = task.get("data") or {}
        name = str(data.get("filename") or f"task-{task.get('id')}.jpg")
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            reason = SKIPPED if task.get("annotations") else UNFINISHED
            skipped.setdefault(reason, []).append(name)
            continue
        newest = max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
        raw = transcription(newest)
        identity = normalize_label(raw, alphabet)
        if identity is None:
            if _outside(raw, alphabet):
                skipped.setdefault(ALPHABET, []).append(f"{name} ({raw!r} has {_outside(raw, alphabet)!r})")
            else:
                skipped.setdefault(EMPTY, []).append(f"{name} ({raw!r})" if raw.strip() else name)
            continue
        image = decode_data_url(data.get(IMAGE))
        if image is None:
            skipped.setdefault(NO_IMAGE, []).append(name)
            continue
        if name in names:  # two images under one name (pushed from different folders)
            p = PurePosixPath(name)
            name = f"{p.stem}-task{task.get('id')}{p.suffix}"
        names.add(name)
        labels.append(Label(name, identity, image, int(task.get("id", 0))))
    return labels, {r: skipped[r] for r in REASONS if r in skipped}


def write_kaggle(out: Path, labels: list[Label]) -> Path:
    """``labels.csv`` + ``labelled/``, written whole (an earlier pull in ``out`` is replaced)."""
    with staged_folder(Path(out), LABELS_CSV) as stage:
        (stage / LABELLED).mkdir()
        for label in labels:
            (stage / LABELLED / label.filename).write_bytes(label.image)
        with open(stage / LABELS_CSV, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["FILENAME", "IDENTITY"])
            w.writerows((label.filename, label.identity) for label in labels)
    return Path(out)


def pull(studio: Studio, out: Path, project: str = DEFAULT_PROJECT, alphabet: str = DEFAULT_ALPHABET) -> PullResult:
    """Export the project's finished annotations into ``out`` (Kaggle layout).

    Raises :class:`NothingToPull` (nothing written) when the project has no task or no annotation makes a label."""
    check_target(Path(out), LABELS_CSV)  # before asking Label Studio anything: a folder it may not replace
    proj = studio.find_project(project)
    if proj is None:
        raise LabellingError(f"no project titled {project!r} on {studio.url}: push a review folder first "
                             "(htr label push DIR), or pass the title with --project")
    tasks = studio.tasks(proj.id)
    if not tasks:
        raise NothingToPull(f"project {project!r} on {studio.url} has no tasks: nothing to pull, nothing written")
    labels, skipped = labels_from_export(tasks, alphabet)
    result = PullResult(None, labels, len(tasks), skipped)
    if not labels:
        why = ", ".join(f"{len(v)} {REASONS[r]}" for r, v in skipped.items())
        raise NothingToPull(f"project {project!r} on {studio.url}: none of its {len(tasks)} tasks has a usable "
                            f"annotation ({why}): nothing to pull, nothing written")
    result.out = write_kaggle(out, labels)
    return result
