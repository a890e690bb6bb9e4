"""Export a CRNN checkpoint to TorchScript, ONNX and TensorRT, check each against PyTorch on real images,
and write the Triton model repository.

Examples::

    # CPU host (the bundled tritonserver): ONNX Runtime in the python backend, INT8 where it keeps accuracy
    python export/build_engine.py --checkpoint models/crnn_names.pt --repository model_repository --target cpu

    # the same with TorchScript (to compare engines), or ONNX Runtime in FP32
    python export/build_engine.py --cpu-engine torchscript --formats torchscript
    python export/build_engine.py --precision fp32 --formats onnx

    # GPU host (official Triton image): a TensorRT FP16 plan, batch 1-64, width 32-1024
    python export/build_engine.py --checkpoint models/crnn_names.pt --repository model_repository_gpu \\
        --target gpu --formats torchscript,onnx,tensorrt --fp16

Without ``--formats`` every format is built where this machine can: TensorRT needs the ``tensorrt``
package and a CUDA GPU, and is skipped with the reason otherwise. A format named explicitly in
``--formats`` that cannot be built is an error. Every built format is checked on real images against
PyTorch eager: max |delta log-prob| <= 1e-4 in FP32 (5e-2 in FP16) and identical greedy decodes; the
report is printed and a mismatch fails the build (exit code 1).

Size limits: the served ``preprocess`` model refuses an image over ``--max-bytes`` (encoded) or
``--max-pixels`` (read from its header, before decoding: decompression bombs) and a request whose images
add up to over ``--max-request-bytes``; the CPU ``crnn`` refuses ``PIXELS`` wider than ``--max-width``. Each
gets a clear error and the server keeps serving. Triton 2.51 itself has no HTTP body-size limit (gRPC
messages may reach 2 GB), so these checks run on requests already received: where untrusted clients can
reach the server, cap the body size in a reverse proxy in front of it (nginx ``client_max_body_size 64m;``).

Threads: by default the thread plan of ``htr.threads`` for the cores this process may use (crnn 1 x cores
ONNX Runtime intra-op threads with spinning off, preprocess 1 x 1, ctc_decode 1 x 1); the flags below
override each number, and the build prints the plan it wrote.

``htr export`` is this same command. Both are a thin shell over ``htr.export.build.build_repository``,
which tests and tools call directly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from htr.export.build import (
    ALL_FORMATS, DEFAULT_ENGINES, PRECISIONS, ExportError, ExportUsageError, build_repository,
)
from htr.export.repository import RepositoryOptions
from htr.paths import ROOT, default_data_dir
from htr.runtime.contract import MAX_BYTES, MAX_PIXELS, MAX_REQUEST_BYTES, MAX_WIDTH


from htr.cli import HelpFormatter as _HelpFormatter  # noqa: E402  (defaults shown once)


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The export flags, shared by ``python export/build_engine.py`` and ``htr export``."""
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt", help="CRNN checkpoint")
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="Triton model repository to write")
    ap.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: crnn in the python backend (--cpu-engine); gpu: crnn on a GPU backend (--gpu-engine)")
    ap.add_argument("--cpu-engine", choices=["onnxruntime", "torchscript"], default="onnxruntime",
                    help="which engine runs crnn with --target cpu")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="of the CPU ONNX Runtime crnn: auto = INT8 when it reads the validation part of the train side within 0.5 pt exact "
                         "/ 0.3 pt CER of FP32, else FP32; int8 fails the build (exit 1) outside that gate")
    ap.add_argument("--gpu-engine", choices=["tensorrt", "onnxruntime", "libtorch"], default="tensorrt",
                    help="which engine serves crnn with --target gpu")
    ap.add_argument("--formats", default=None,
                    help=f"comma list from {','.join(ALL_FORMATS)} (default: all that this machine can build)")
    ap.add_argument("--engines", type=Path, default=DEFAULT_ENGINES, help="where engine files are written")
    ap.add_argument("--fp16", action="store_true", help="TensorRT in FP16 (parity tolerance 5e-2)")
    ap.add_argument("--max-batch", type=int, default=64, help="max_batch_size of every model; TensorRT profile max")
    ap.add_argument("--opt-batch", type=int, default=32, help="TensorRT profile optimum batch")
    ap.add_argument("--min-width", type=int, default=32)
    ap.add_argument("--opt-width", type=int, default=None, help="default: the checkpoint's input width")
    ap.add_argument("--max-width", type=int, default=MAX_WIDTH,
                    help="widest PIXELS crnn accepts (TensorRT profile max; the CPU crnn refuses wider requests)")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset")
    ap.add_argument("--decoder", choices=["greedy", "beam"], default=None,
                    help="ctc_decode's decoder (default: the checkpoint's own, e.g. beam search with its name model; "
                         "beam: with the checkpoint's name model where it has one; greedy: best path)")
    ap.add_argument("--beam-width", type=int, default=10)
    ap.add_argument("--lexicon", type=Path, default=None, help="one allowed string per line: lexicon beam search")
    plan = RepositoryOptions()  # the thread plan's defaults for this machine (htr.threads)
    ap.add_argument("--preprocess-instances", type=int, default=plan.preprocess_instances)
    ap.add_argument("--preprocess-threads", type=int, default=plan.preprocess_threads,
                    help="kernel threads of each preprocess instance")
    ap.add_argument("--crnn-instances", type=int, default=plan.crnn_instances)
    ap.add_argument("--crnn-threads", "--torch-threads", dest="crnn_threads", type=int, default=plan.crnn_threads,
                    help="intra-op threads of each CPU crnn instance (ONNX Runtime or torch)")
    ap.add_argument("--decode-instances", type=int, default=plan.decode_instances)
    ap.add_argument("--queue-delay-us", type=int, default=plan.queue_delay_us,
                    help="dynamic batching max queue delay of preprocess and ctc_decode (0: never wait for company)")
    ap.add_argument("--crnn-queue-delay-us", type=int, default=plan.crnn_queue_delay_us,
                    help="dynamic batching max queue delay of crnn")
    ap.add_argument("--no-dynamic-batching", action="store_true",
                    help="leave dynamic batching off (only to measure what it buys)")
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                    help="largest encoded image preprocess accepts (bytes); larger items get an error")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                    help="largest image preprocess accepts (width x height, read from the header before decoding)")
    ap.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES,
                    help="largest total of encoded images in one request (bytes); a larger request gets an error. "
                         "Cap the HTTP body size in a reverse proxy too: Triton has no such limit")
    ap.add_argument("--version", type=int, default=1, help="model version folder to write")
    ap.add_argument("--data", type=Path, default=default_data_dir(),
                    help="Kaggle-layout folder (labelled/*.jpg + labels.csv; $HTR_DATA): its labelled images drive the "
                         "parity check (without them: the sample images in samples/, with a note) and INT8's "
                         "calibration and accuracy gate (without labels.csv: FP32 is served)")
    ap.add_argument("--parity-images", type=int, default=64,
                    help="images in the parity check against PyTorch; 0 skips the check (with a warning)")
    return ap


def add_parser(sub, formatter_class=_HelpFormatter):
    """``htr export``."""
    p = sub.add_parser("export", help="export a checkpoint, check parity, write the Triton model repository",
                       description=__doc__, formatter_class=formatter_class)
    add_arguments(p)
    p.set_defaults(func=run)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python export/build_engine.py", description=__doc__,
                                 formatter_class=_HelpFormatter)
    return add_arguments(ap).parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """One call to ``build_repository``: 0 when the repository was written, 2 for a contradictory request,
    1 when an engine does not match PyTorch or a requested format cannot be built here."""
    options = RepositoryOptions(
        target=args.target, gpu_engine=args.gpu_engine, cpu_engine=args.cpu_engine,
        preprocess_instances=args.preprocess_instances, preprocess_threads=args.preprocess_threads,
        crnn_instances=args.crnn_instances, decode_instances=args.decode_instances, crnn_threads=args.crnn_threads,
        queue_delay_us=args.queue_delay_us, crnn_queue_delay_us=args.crnn_queue_delay_us,
        dynamic_batching=not args.no_dynamic_batching, decoder=args.decoder,
        beam_width=args.beam_width, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        max_request_bytes=args.max_request_bytes, version=args.version,
    )
    shapes = dict(max_batch=args.max_batch, opt_batch=args.opt_batch, min_width=args.min_width,
                  opt_width=args.opt_width, max_width=args.max_width)
    try:
        build_repository(args.checkpoint, args.repository, options=options, formats=args.formats,
                         engines_dir=args.engines, data=args.data, parity_images=args.parity_images, fp16=args.fp16,
                         opset=args.opset, shapes=shapes, lexicon=args.lexicon, precision=args.precision,
                         progress=print)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ExportUsageError) else 1
    return 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
