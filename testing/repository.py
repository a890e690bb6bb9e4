"""The model repository a test or a harness serves: the CPU variant (crnn in ONNX Runtime, FP32, in the python
backend), built from a checkpoint by :func:`htr.export.build.build_repository`, with the parity check on a few real
images.

One builder for the test session's repository, the limited one of the bad-input tests and the harnesses'
temporary ones, so that what "the CPU repository" means (formats, where the engine goes) is written once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping


def build_cpu_repository(repository: Path, checkpoint: Path, data: Path, *, engines: Path | None = None,
                         parity_images: int = 16, options=None, shapes: Mapping[str, int] | None = None,
                         progress: Callable[[str], object] | None = print) -> Path:
    """Write the CPU repository into ``repository`` from ``checkpoint`` and return it.

    ``crnn`` is the default CPU engine (ONNX Runtime) in FP32, so served log-probabilities match PyTorch eager
    within the parity tolerance and every harness can compare served text with ``htr eval``'s.
    ``engines`` receives the ONNX file (default: the folder ``engines`` beside ``repository``);
    ``data`` is the Kaggle-layout folder whose labelled images drive the parity check (``parity_images``
    of them). ``options`` (an ``htr.export.repository.RepositoryOptions``: limits, instances) and ``shapes``
    (e.g. ``{"max_width": 512}``) are passed on to export.

    Raises ``htr.export.build.ExportError`` (a RuntimeError) when the build or its parity check fails.
    """
    from htr.export.build import build_repository

    repository = Path(repository)
    build_repository(checkpoint, repository, options=options, formats="onnx", precision="fp32",
                     engines_dir=engines if engines is not None else repository.parent / "engines", data=data,
                     parity_images=parity_images, shapes=shapes, progress=progress)
    return repository
