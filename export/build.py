"""Export a CRNN checkpoint, check every engine against PyTorch on real images, write the Triton repository.

``build_repository`` is the library function; ``python export/build_engine.py`` and ``htr export`` are the
command line over it, and tests and tools call it directly::

    from htr.export.build import build_repository

    report = build_repository("models/crnn_names.pt", "model_repository", formats="torchscript", progress=None)
    print(report.table)

Each format is exported from the checkpoint, loaded back and run on real images next to PyTorch eager:
max |delta log-prob| <= 1e-4 in FP32 (5e-2 in FP16) and identical greedy decodes. The repository is written
only when every built format passes; otherwise ``ParityError`` (carrying the report) is raised and the
repository is left as it was.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from htr.config import HTRConfig
from htr.decoding import read_lexicon
from htr.model import load_model
from htr.paths import ROOT, default_data_dir
from htr.runtime.contract import LOGPROBS, PIXELS

from .engines import (
    EngineUnavailable, Shapes, build_tensorrt, export_onnx, export_torchscript, load_torchscript, onnx_config,
    tensorrt_available,
)
from .parity import FP16_TOL, FP32_TOL, ParityResult, check, real_batches, report
from .repository import RepositoryOptions, write_repository

ALL_FORMATS = ("torchscript", "onnx", "tensorrt")
DEFAULT_ENGINES = ROOT / "build" / "engines"
# RepositoryOptions.gpu_engine -> the format whose file the GPU crnn serves
SERVED_FORMAT = {"tensorrt": "tensorrt", "onnxruntime": "onnx", "libtorch": "torchscript"}


class ExportError(RuntimeError):
    """The build cannot go on; the message says why, and the repository was not written."""


class ExportUsageError(ExportError, ValueError):
    """The request contradicts itself (an unknown format, a CPU target without TorchScript)."""


class ParityError(ExportError):
    """A built engine does not match PyTorch eager; ``report`` holds every format's result."""

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    """What ``build_repository`` built, and how each format compares with PyTorch eager."""

    results: list[ParityResult] = field(default_factory=list)  # one per built format, in build order
    artifacts: dict[str, Path] = field(default_factory=dict)  # format -> engine file
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why this machine cannot build it
    options: RepositoryOptions | None = None  # as written: shapes and lexicon resolved against the checkpoint
    repository: Path | None = None  # None until every format passed and the repository was written

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def table(self) -> str:
        """The parity report as a Markdown table."""
        return report(self.results)


def resolve_shapes(cfg: HTRConfig, fields: Mapping[str, int | None]) -> Shapes:
    """``Shapes`` from the fields given (``None`` values count as not given): ``opt_width`` defaults to the
    checkpoint's input width and ``opt_batch`` is capped at ``max_batch``."""
    given = {k: v for k, v in fields.items() if v is not None}
    given.setdefault("opt_width", cfg.input.width)
    given["opt_batch"] = min(given.get("opt_batch", Shapes.opt_batch), given.get("max_batch", Shapes.max_batch))
    return Shapes(**given)


def _requested_formats(formats: str | Iterable[str] | None, options: RepositoryOptions) -> list[str]:
    if isinstance(formats, str):
        formats = formats.split(",") if formats else None
    wanted = [f.strip() for f in (formats or ALL_FORMATS) if f.strip()]
    unknown = set(wanted) - set(ALL_FORMATS)
    if unknown:
        raise ExportUsageError(f"unknown format(s) {sorted(unknown)}; choose from {ALL_FORMATS}")
    if options.target == "cpu" and "torchscript" not in wanted:
        raise ExportUsageError("--target cpu serves the TorchScript file: include torchscript in --formats")
    served = SERVED_FORMAT[options.gpu_engine]
    if options.target == "gpu" and served not in wanted:
        wanted.append(served)
    if "tensorrt" in wanted and "onnx" not in wanted:
        wanted.insert(wanted.index("tensorrt"), "onnx")  # the plan is built from the ONNX
    return wanted


def build_repository(
    checkpoint: str | Path,
    repository: str | Path,
    *,
    options: RepositoryOptions | None = None,
    formats: str | Iterable[str] | None = None,
    engines_dir: str | Path = DEFAULT_ENGINES,
    data: str | Path | None = None,
    parity_images: int = 64,
    fp16: bool = False,
    opset: int = 17,
    shapes: Mapping[str, int | None] | None = None,
    lexicon: str | Path | Iterable[str] | None = None,
    progress: Callable[[str], object] | None = print,
) -> ExportReport:
    """Export ``checkpoint``, check each format against PyTorch, and (re)write the Triton repository.

    Args:
        checkpoint: CRNN checkpoint; its ``HTRConfig`` is embedded in every artifact and config.
        repository: folder whose four models are (re)written; other content is left alone.
        options: the served models (target, GPU engine, instances, batching, decoder, limits, version);
            default ``RepositoryOptions()``.
        formats: a comma list or a sequence from ``ALL_FORMATS``; ``None``: every format this machine can
            build, TensorRT skipped with the reason where it cannot. A format named here that cannot be built
            is an error. The GPU target adds the format it serves; TensorRT adds ONNX (its source).
        engines_dir: where the engine files are written.
        data: Kaggle-layout folder whose ``labelled/*.jpg`` drive the parity check;
            ``None``: ``htr.paths.default_data_dir()``.
        parity_images: real images in the parity check.
        fp16: build TensorRT in FP16 (parity tolerance 5e-2 instead of 1e-4).
        opset: ONNX opset.
        shapes: ``Shapes`` fields (``max_batch``, ``opt_batch``, ``min_width``, ``opt_width``, ``max_width``),
            resolved by ``resolve_shapes`` against the checkpoint, replacing ``options.shapes``; ``None``:
            ``options.shapes`` where it was set (differs from ``Shapes()``), else ``resolve_shapes(cfg, {})``.
        lexicon: allowed strings (a file, one a line, or the strings), normalised to the checkpoint's
            alphabet; replaces ``options.lexicon`` and makes ``ctc_decode`` a lexicon beam search.
        progress: called with each progress line (``print``); ``None`` is silent.

    Returns:
        The ``ExportReport``, every result OK, ``repository`` set.

    Raises:
        ExportUsageError: an unknown format, or the CPU target without TorchScript.
        ExportError: a format named in ``formats`` (or served by the GPU target) cannot be built here.
        ParityError: an engine does not match PyTorch (``.report`` holds the results).
    """
    say = progress or (lambda line: None)
    checkpoint, repository, engines_dir = Path(checkpoint), Path(repository), Path(engines_dir)
    images = Path(data if data is not None else default_data_dir()) / "labelled"
    explicit = formats is not None
    options = options if options is not None else RepositoryOptions()
    wanted = _requested_formats(formats, options)

    model, cfg, _ = load_model(checkpoint)
    if shapes is not None or options.shapes == Shapes():  # else options.shapes was set: it stands as given
        options = replace(options, shapes=resolve_shapes(cfg, shapes or {}))
    engines_dir.mkdir(parents=True, exist_ok=True)
    batches = real_batches(cfg, images, parity_images)
    say(f"checkpoint {checkpoint}: input {cfg.input.height}x{cfg.input.width}, {cfg.num_classes} classes; "
        f"parity on {len(batches[0])} real images from {images}")

    result = ExportReport(options=options)
    for fmt in wanted:
        t0 = time.perf_counter()
        try:
            path, res = _build_and_check(fmt, model, cfg, batches, engines_dir, result.artifacts, options.shapes,
                                         fp16, opset)
        except EngineUnavailable as e:
            if explicit:
                raise ExportError(f"{fmt} was asked for but cannot be built here: {e}") from e
            result.skipped[fmt] = str(e)
            say(f"skipping {fmt}: {e}")
            continue
        result.artifacts[fmt] = path
        result.results.append(res)
        say(f"built {fmt}: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")

    say("\nparity against PyTorch eager\n" + result.table + "\n")
    if not result.ok:
        raise ParityError("an engine does not match PyTorch; the repository was not written", result)
    served = SERVED_FORMAT[options.gpu_engine]
    if options.target == "gpu" and served not in result.artifacts:
        raise ExportError(f"--target gpu --gpu-engine {options.gpu_engine} needs the {served} engine, "
                          "which was not built")

    if lexicon is not None:
        options = replace(options, lexicon=read_lexicon(lexicon, cfg.alphabet))
    result.options = options
    crnn_file = result.artifacts["torchscript" if options.target == "cpu" else served]
    result.repository = write_repository(repository, cfg, options, crnn_file)
    decoder = "lexicon beam" if options.lexicon else options.decoder
    say(f"wrote Triton model repository ({options.target}) to {repository}: "
        f"htr (ensemble) = preprocess -> crnn -> ctc_decode ({decoder})")
    return result


def _build_and_check(fmt: str, model: torch.nn.Module, cfg: HTRConfig, batches, engines_dir: Path,
                     built: dict[str, Path], shapes: Shapes, fp16: bool, opset: int) -> tuple[Path, ParityResult]:
    """Export one format into ``engines_dir``, load it back and compare it with ``model`` on ``batches``."""
    if fmt == "torchscript":
        path = export_torchscript(model, cfg, engines_dir / "model.pt")
        module, stored = load_torchscript(path)
        if stored != cfg:
            raise ExportError("config embedded in the TorchScript file differs from the checkpoint's")
        return path, check("torchscript (CPU, FP32)", lambda x: module(torch.from_numpy(x)).detach().numpy(),
                           model, batches, cfg, FP32_TOL)
    if fmt == "onnx":
        import onnxruntime as ort

        path = export_onnx(model, cfg, engines_dir / "model.onnx", opset)
        if onnx_config(path) != cfg:
            raise ExportError("config in the ONNX metadata differs from the checkpoint's")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return path, check("onnx (onnxruntime CPU, FP32)", lambda x: sess.run([LOGPROBS], {PIXELS: x})[0],
                           model, batches, cfg, FP32_TOL)
    reason = tensorrt_available()
    if reason:
        raise EngineUnavailable(reason)
    from .engines import TensorRTRunner

    path = build_tensorrt(built["onnx"], engines_dir / "model.plan", cfg, shapes, fp16=fp16)
    runner = TensorRTRunner(path)
    fits = [b for b in batches if b.shape[0] <= shapes.max_batch and b.shape[3] <= shapes.max_width]
    return path, check(f"tensorrt (GPU, {'FP16' if fp16 else 'FP32'})", lambda x: runner(torch.from_numpy(x)).numpy(),
                       model, fits, cfg, FP16_TOL if fp16 else FP32_TOL)
