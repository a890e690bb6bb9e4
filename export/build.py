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

The CPU ``crnn`` serves the ONNX file in ONNX Runtime by default (``RepositoryOptions.cpu_engine``), at the
``precision`` asked for: ``fp32``; ``int8``, static QDQ quantisation calibrated on the train split's labelled
images and refused (``PrecisionError``) when it reads the validation part of the train side more than 0.5 points of exact match or
0.3 points of CER worse than FP32 (``htr.export.quantize``); or ``auto`` (default), INT8 when it passes that
gate, else FP32 (also FP32 when no labelled data is at hand to run the gate).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from htr.config import HTRConfig
from htr.ctc_decoder import CTCDecoder, read_lexicon, resolve_decoding
from htr.model import load_model
from htr.paths import ROOT, default_data_dir
from htr.runtime.contract import LOGPROBS, PIXELS
from htr.threads import thread_plan

from .engines import (
    EngineUnavailable, Shapes, build_tensorrt, export_onnx, export_torchscript, load_torchscript, onnx_config,
    tensorrt_available,
)
from .parity import FP16_TOL, FP32_TOL, ParityResult, real_batches, report
from .parity import check as _check
from .repository import RepositoryOptions, write_repository

ALL_FORMATS = ("torchscript", "onnx", "tensorrt")
PRECISIONS = ("auto", "fp32", "int8")
DEFAULT_ENGINES = ROOT / "build" / "engines"
# RepositoryOptions.gpu_engine -> the format whose file the GPU crnn serves
SERVED_FORMAT = {"tensorrt": "tensorrt", "onnxruntime": "onnx", "libtorch": "torchscript"}
# RepositoryOptions.cpu_engine -> the format whose file the CPU crnn serves
CPU_SERVED_FORMAT = {"onnxruntime": "onnx", "torchscript": "torchscript"}


class ExportError(RuntimeError):
    """The build cannot go on; the message says why, and the repository was not written."""


class ExportUsageError(ExportError, ValueError):
    """The request contradicts itself (an unknown format, a CPU target without TorchScript)."""


class PrecisionError(ExportError):
    """INT8 was asked for and reads the validation images worse than FP32 allows; ``gate`` holds both scores."""

    def __init__(self, message: str, gate):
        super().__init__(message)
        self.gate = gate


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
    options: RepositoryOptions | None = None  # as written: shapes, lexicon and precision resolved
    precision_gate: object | None = None  # htr.export.quantize.PrecisionGate, when INT8 was tried
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
    cpu_served = CPU_SERVED_FORMAT[options.cpu_engine]
    if options.target == "cpu" and cpu_served not in wanted:
        what = "TorchScript" if cpu_served == "torchscript" else "ONNX"
        raise ExportUsageError(f"--target cpu --cpu-engine {options.cpu_engine} serves the {what} file: include "
                               f"{cpu_served} in --formats")
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
    precision: str = "auto",
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
        parity_images: real images in the parity check, from ``data/labelled`` or, where that holds none, the
            sample images this repository ships (a note says so); 0 skips the check (a warning says so).
        fp16: build TensorRT in FP16 (parity tolerance 5e-2 instead of 1e-4).
        opset: ONNX opset.
        shapes: ``Shapes`` fields (``max_batch``, ``opt_batch``, ``min_width``, ``opt_width``, ``max_width``),
            resolved by ``resolve_shapes`` against the checkpoint, replacing ``options.shapes``; ``None``:
            ``options.shapes`` where it was set (differs from ``Shapes()``), else ``resolve_shapes(cfg, {})``.
        lexicon: allowed strings (a file, one a line, or the strings), normalised to the checkpoint's
            alphabet; replaces ``options.lexicon`` and makes ``ctc_decode`` a lexicon beam search.
        precision: of the CPU ONNX Runtime crnn: ``auto`` (INT8 when it passes the accuracy gate, else FP32),
            ``fp32`` or ``int8`` (``PrecisionError`` when it fails the gate). Ignored by other engines.
        progress: called with each progress line (``print``); ``None`` is silent.

    Returns:
        The ``ExportReport``, every result OK, ``repository`` set.

    Raises:
        ExportUsageError: an unknown format, or the CPU target without TorchScript.
        ExportError: a format named in ``formats`` (or served by the GPU target) cannot be built here.
        ParityError: an engine does not match PyTorch (``.report`` holds the results).
        PrecisionError: ``precision="int8"`` and INT8 fails the accuracy gate (``.gate`` holds both scores).
    """
    say = progress or (lambda line: None)
    if precision not in PRECISIONS:
        raise ExportUsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    checkpoint, repository, engines_dir = Path(checkpoint), Path(repository), Path(engines_dir)
    data = Path(data if data is not None else default_data_dir())
    explicit = formats is not None
    options = options if options is not None else RepositoryOptions()
    wanted = _requested_formats(formats, options)

    model, cfg, ckpt = load_model(checkpoint)
    options = _resolve_decoding(options, ckpt)
    if shapes is not None or options.shapes == Shapes():  # else options.shapes was set: it stands as given
        options = replace(options, shapes=resolve_shapes(cfg, shapes or {}))
    engines_dir.mkdir(parents=True, exist_ok=True)
    batches, images = None, None
    if parity_images > 0:
        images = _parity_folder(data, say)
        batches = real_batches(cfg, images, parity_images)
        with torch.inference_mode():
            if not torch.isfinite(model(torch.from_numpy(batches[0]))).all():
                raise ExportError(f"{checkpoint} reads real images as NaN/inf log-probabilities (a training run "
                                  "that diverged?): nothing exported")
        say(f"checkpoint {checkpoint}: input {cfg.input.height}x{cfg.input.width}, {cfg.num_classes} classes; "
            f"parity on {len(batches[0])} images from {images}")
    else:
        say(f"checkpoint {checkpoint}: input {cfg.input.height}x{cfg.input.width}, {cfg.num_classes} classes; "
            "WARNING: no parity check (parity_images=0, --parity-images 0): the engines are not compared with "
            "PyTorch")

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
        if res is not None:
            result.results.append(res)
        say(f"built {fmt}: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")

    if batches is not None:
        say("\nparity against PyTorch eager\n" + result.table + "\n")
    if not result.ok:
        raise ParityError("an engine does not match PyTorch; the repository was not written", result)
    served = SERVED_FORMAT[options.gpu_engine]
    if options.target == "gpu" and served not in result.artifacts:
        raise ExportError(f"--target gpu --gpu-engine {options.gpu_engine} needs the {served} engine, "
                          "which was not built")

    if lexicon is not None:
        options = replace(options, lexicon=read_lexicon(lexicon, cfg.alphabet))
    if options.target == "cpu":
        crnn_file = result.artifacts[CPU_SERVED_FORMAT[options.cpu_engine]]
        if options.cpu_engine == "onnxruntime" and precision != "fp32":
            crnn_file, options = _choose_precision(precision, crnn_file, cfg, options, data, engines_dir,
                                                   result, say)
    else:
        crnn_file = result.artifacts[served]
    result.options = options
    result.repository = write_repository(repository, cfg, options, crnn_file)
    decoder = CTCDecoder(cfg, options.decoder, options.beam_width, options.lexicon, options.name_model,
                         options.lm_weight, options.insertion_bonus).describe()
    engine = (f"{options.cpu_engine} {options.precision if options.cpu_engine == 'onnxruntime' else 'fp32'}"
              if options.target == "cpu" else options.gpu_engine)
    say(f"wrote Triton model repository ({options.target}) to {repository}: "
        f"htr (ensemble) = preprocess -> crnn ({engine}) -> ctc_decode ({decoder})")
    if options.target == "cpu":
        say(f"threads: preprocess {options.preprocess_instances} x {options.preprocess_threads}, crnn "
            f"{options.crnn_instances} x {options.crnn_threads} intra-op, ctc_decode {options.decode_instances} x 1 "
            f"({thread_plan().describe()}; override with --preprocess-instances/--crnn-threads/...)")
    return result


def _resolve_decoding(options: RepositoryOptions, ckpt: dict) -> RepositoryOptions:
    """``options.decoder=None``: the checkpoint's own decoding (``htr.ctc_decoder.resolve_decoding``),
    what ``htr eval`` and ``OfflineRecognizer`` use by default; ``"beam"`` keeps the checkpoint's name model
    and weights; ``"greedy"`` drops them."""
    spec, name_model = resolve_decoding(ckpt, options.decoder, None if options.decoder is None else options.beam_width)
    options = replace(options, decoder=spec.decoder, beam_width=spec.beam_width)
    if options.name_model is None and name_model is not None:
        options = replace(options, name_model=name_model, lm_weight=spec.lm_weight,
                          insertion_bonus=spec.insertion_bonus)
    return options


def _parity_folder(data: Path, say) -> Path:
    """``data/labelled`` when it holds JPEGs, else the sample images this repository ships (with a note)."""
    labelled = data / "labelled"
    if labelled.is_dir() and any(labelled.glob("*.jpg")):
        return labelled
    samples = ROOT / "samples"
    say(f"note: no labelled images at {labelled} (the Kaggle folder, see README 'Data'); the parity check uses "
        f"the {len(list(samples.glob('*.jpg')))} sample images shipped in {samples} instead (synthetic renderings: "
        "enough to compare engines with PyTorch, not to score accuracy)")
    return samples


def _choose_precision(precision: str, fp32_file: Path, cfg: HTRConfig, options: RepositoryOptions, data: Path,
                      engines_dir: Path, result: ExportReport, say) -> tuple[Path, RepositoryOptions]:
    """Quantise ``fp32_file`` to INT8 and gate it on the validation part of the train side: the file to serve and the options with its
    precision. ``auto`` falls back to FP32 (saying why); ``int8`` raises ``PrecisionError``."""
    from . import quantize

    if not (data / "labels.csv").is_file():
        if precision == "int8":
            raise ExportError(f"--precision int8 needs labelled images to calibrate and check it: no {data}/labels.csv")
        say(f"serving FP32: INT8 needs labelled images for calibration and its accuracy gate ({data}/labels.csv "
            "not found)")
        return fp32_file, options
    t0 = time.perf_counter()
    train, _ = quantize.labelled_split(data, cfg, "train")
    held, labels = quantize.labelled_split(data, cfg, "val")
    calibration = quantize.pixels_of(train[: quantize.CALIBRATION_IMAGES], cfg)
    int8_file = quantize.quantize_int8(fp32_file, engines_dir / "model.int8.onnx", calibration)
    gate = quantize.precision_gate(fp32_file, int8_file, quantize.pixels_of(held, cfg), labels, cfg)
    result.precision_gate = gate
    say(f"INT8 (static QDQ, per-channel, calibrated on {len(calibration)} train-side images, "
        f"{time.perf_counter() - t0:.1f} s) against FP32 on the validation part of the train side:\n{gate.table}\n")
    if gate.ok:
        say("serving INT8: within the accuracy gate")
        return int8_file, replace(options, precision="int8")
    if precision == "int8":
        raise PrecisionError("INT8 reads the validation images worse than the gate allows (exact match -0.5 pt, CER "
                             "+0.3 pt at most); the repository was not written. Use --precision fp32 or auto.", gate)
    say("serving FP32: INT8 is outside the accuracy gate")
    return fp32_file, options


def _build_and_check(fmt: str, model: torch.nn.Module, cfg: HTRConfig, batches, engines_dir: Path,
                     built: dict[str, Path], shapes: Shapes, fp16: bool, opset: int
                     ) -> tuple[Path, ParityResult | None]:
    """Export one format into ``engines_dir``, load it back and compare it with ``model`` on ``batches``
    (``None``: no comparison, the result is ``None``)."""

    def check(engine, run, model, batches, cfg, tolerance):
        return None if batches is None else _check(engine, run, model, batches, cfg, tolerance)

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
    fits = None if batches is None else [b for b in batches
                                         if b.shape[0] <= shapes.max_batch and b.shape[3] <= shapes.max_width]
    return path, check(f"tensorrt (GPU, {'FP16' if fp16 else 'FP32'})", lambda x: runner(torch.from_numpy(x)).numpy(),
                       model, fits, cfg, FP16_TOL if fp16 else FP32_TOL)
