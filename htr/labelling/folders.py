"""Output folders written whole or not at all.

A review folder (``htr recognize --review-out``) and a pulled label folder (``htr label pull --out``) are built
in a hidden sibling folder and renamed into place only when everything in them was written: a failure (Label
Studio gone mid-export, a full disk, Ctrl-C) leaves the target as it was and no partial folder behind.
A target that already exists is replaced only when it is empty or a previous output of the same kind (it holds
``marker``); any other folder is refused, so a typo cannot wipe unrelated files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import LabellingError


def check_target(target: Path, marker: str) -> None:
    """Raise unless ``target`` is absent, an empty folder, or a folder holding ``marker`` (a previous output)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise LabellingError(f"{target} exists and is not a folder")
    if any(target.iterdir()) and not (target / marker).is_file():
        raise LabellingError(f"{target} exists, is not empty and holds no {marker} (so it is not an earlier output "
                             "to replace): choose another folder")


@contextmanager
def staged_folder(target: Path, marker: str):
    """Yield a fresh folder beside ``target``; on success it replaces ``target``, on any exception it is removed."""
    target = Path(target)
    check_target(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield stage
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the output is an ordinary folder
        _swap_in(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when it was renamed into place


def _swap_in(stage: Path, target: Path) -> None:
    """Rename ``stage`` to ``target``; an existing ``target`` is moved aside first and put back on failure."""
    if not target.exists():
        os.replace(stage, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / "previous")
    try:
        os.replace(stage, target)
    except BaseException:
        os.replace(aside / "previous", target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
