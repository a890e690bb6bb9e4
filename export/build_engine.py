"""Export a CRNN checkpoint to TorchScript, ONNX and TensorRT, check each against PyTorch on real images,
and write the Triton model repository.

Examples::

    # CPU host (the bundled tritonserver): TorchScript served by the python backend
    python export/build_engine.py --checkpoint models/crnn_names.pt --repository model_repository --target cpu

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
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("HTR_DATA", ROOT.parent / "shared" / "data" / "kaggle_names"))
ALL_FORMATS = ("torchscript", "onnx", "tensorrt")


def parse_args(argv=None):
    from htr.export.repository import RepositoryOptions  # the limits' defaults live there
    ap = argparse.ArgumentParser(prog="python export/build_engine.py", description=__doc__,
                                 formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter,
                                                            argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt", help="CRNN checkpoint")
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="Triton model repository to write")
    ap.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: crnn as python-backend TorchScript; gpu: crnn on a GPU backend (--gpu-engine)")
    ap.add_argument("--gpu-engine", choices=["tensorrt", "onnxruntime", "libtorch"], default="tensorrt",
                    help="which engine serves crnn with --target gpu")
    ap.add_argument("--formats", default=None,
                    help=f"comma list from {','.join(ALL_FORMATS)} (default: all that this machine can build)")
    ap.add_argument("--engines", type=Path, default=ROOT / "build" / "engines", help="where engine files are written")
    ap.add_argument("--fp16", action="store_true", help="TensorRT in FP16 (parity tolerance 5e-2)")
    ap.add_argument("--max-batch", type=int, default=64, help="max_batch_size of every model; TensorRT profile max")
    ap.add_argument("--opt-batch", type=int, default=32, help="TensorRT profile optimum batch")
    ap.add_argument("--min-width", type=int, default=32)
    ap.add_argument("--opt-width", type=int, default=None, help="default: the checkpoint's input width")
    ap.add_argument("--max-width", type=int, default=1024,
                    help="widest PIXELS crnn accepts (TensorRT profile max; the CPU crnn refuses wider requests)")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset")
    ap.add_argument("--decoder", choices=["greedy", "beam"], default="greedy", help="ctc_decode's decoder")
    ap.add_argument("--beam-width", type=int, default=10)
    ap.add_argument("--lexicon", type=Path, default=None, help="one allowed string per line: lexicon beam search")
    ap.add_argument("--preprocess-instances", type=int, default=2)
    ap.add_argument("--crnn-instances", type=int, default=1)
    ap.add_argument("--decode-instances", type=int, default=1)
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of each CPU crnn instance")
    ap.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching max queue delay")
    ap.add_argument("--no-dynamic-batching", action="store_true",
                    help="leave dynamic batching off (only to measure what it buys)")
    limits = RepositoryOptions()
    ap.add_argument("--max-bytes", type=int, default=limits.max_bytes,
                    help="largest encoded image preprocess accepts (bytes); larger items get an error")
    ap.add_argument("--max-pixels", type=int, default=limits.max_pixels,
                    help="largest image preprocess accepts (width x height, read from the header before decoding)")
    ap.add_argument("--max-request-bytes", type=int, default=limits.max_request_bytes,
                    help="largest total of encoded images in one request (bytes); a larger request gets an error. "
                         "Cap the HTTP body size in a reverse proxy too: Triton has no such limit")
    ap.add_argument("--version", type=int, default=1, help="model version folder to write")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="Kaggle-layout folder whose labelled/ images drive the parity check")
    ap.add_argument("--parity-images", type=int, default=64)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from htr.export.engines import (
        EngineUnavailable, Shapes, build_tensorrt, export_onnx, export_torchscript, load_torchscript, onnx_config,
        tensorrt_available,
    )
    from htr.export.parity import FP16_TOL, FP32_TOL, check, real_batches, report
    from htr.export.repository import RepositoryOptions, write_repository
    from htr.model import load_model

    model, cfg, _ = load_model(args.checkpoint)
    explicit = args.formats is not None
    formats = [f.strip() for f in (args.formats or ",".join(ALL_FORMATS)).split(",") if f.strip()]
    unknown = set(formats) - set(ALL_FORMATS)
    if unknown:
        print(f"error: unknown format(s) {sorted(unknown)}; choose from {ALL_FORMATS}", file=sys.stderr)
        return 2
    if args.target == "cpu" and "torchscript" not in formats:
        print("error: --target cpu serves the TorchScript file: include torchscript in --formats", file=sys.stderr)
        return 2
    need = {"tensorrt": "tensorrt", "onnxruntime": "onnx", "libtorch": "torchscript"}[args.gpu_engine]
    if args.target == "gpu" and need not in formats:
        formats.append(need)
    if "tensorrt" in formats and "onnx" not in formats:
        formats.insert(formats.index("tensorrt"), "onnx")  # the plan is built from the ONNX
    shapes = Shapes(max_batch=args.max_batch, opt_batch=min(args.opt_batch, args.max_batch), min_width=args.min_width,
                    opt_width=args.opt_width or cfg.input.width, max_width=args.max_width)
    args.engines.mkdir(parents=True, exist_ok=True)
    batches = real_batches(cfg, args.data / "labelled", args.parity_images)
    print(f"checkpoint {args.checkpoint}: input {cfg.input.height}x{cfg.input.width}, {cfg.num_classes} classes; "
          f"parity on {len(batches[0])} real images from {args.data / 'labelled'}")

    artifacts, results = {}, []
    for fmt in formats:
        t0 = time.perf_counter()
        try:
            if fmt == "torchscript":
                path = export_torchscript(model, cfg, args.engines / "model.pt")
                module, stored = load_torchscript(path)
                assert stored == cfg, "config embedded in the TorchScript file differs from the checkpoint's"
                res = check("torchscript (CPU, FP32)", lambda x: module(torch.from_numpy(x)).detach().numpy(),
                            model, batches, cfg, FP32_TOL)
            elif fmt == "onnx":
                import onnxruntime as ort

                path = export_onnx(model, cfg, args.engines / "model.onnx", args.opset)
                assert onnx_config(path) == cfg, "config in the ONNX metadata differs from the checkpoint's"
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                res = check("onnx (onnxruntime CPU, FP32)", lambda x: sess.run(["LOGPROBS"], {"PIXELS": x})[0],
                            model, batches, cfg, FP32_TOL)
            else:
                reason = tensorrt_available()
                if reason:
                    raise EngineUnavailable(reason)
                from htr.export.engines import TensorRTRunner

                path = build_tensorrt(artifacts["onnx"], args.engines / "model.plan", cfg, shapes, fp16=args.fp16)
                runner = TensorRTRunner(path)
                precision = "FP16" if args.fp16 else "FP32"
                res = check(f"tensorrt (GPU, {precision})", lambda x: runner(torch.from_numpy(x)).numpy(), model,
                            [b for b in batches if b.shape[0] <= shapes.max_batch and b.shape[3] <= shapes.max_width],
                            cfg, FP16_TOL if args.fp16 else FP32_TOL)
        except EngineUnavailable as e:
            if explicit:
                print(f"error: {fmt} was asked for but cannot be built here: {e}", file=sys.stderr)
                return 1
            print(f"skipping {fmt}: {e}")
            continue
        artifacts[fmt] = path
        results.append(res)
        print(f"built {fmt}: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")

    print("\nparity against PyTorch eager\n" + report(results) + "\n")
    if not all(r.ok for r in results):
        print("error: an engine does not match PyTorch; the repository was not written", file=sys.stderr)
        return 1

    if args.target == "gpu" and need not in artifacts:
        print(f"error: --target gpu --gpu-engine {args.gpu_engine} needs the {need} engine, which was not built",
              file=sys.stderr)
        return 1
    lexicon = None
    if args.lexicon:
        from htr.decoding import read_lexicon

        lexicon = read_lexicon(args.lexicon, cfg.alphabet)
    opts = RepositoryOptions(
        target=args.target, gpu_engine=args.gpu_engine, shapes=shapes, preprocess_instances=args.preprocess_instances,
        crnn_instances=args.crnn_instances, decode_instances=args.decode_instances, torch_threads=args.torch_threads,
        queue_delay_us=args.queue_delay_us, dynamic_batching=not args.no_dynamic_batching, decoder=args.decoder,
        beam_width=args.beam_width, lexicon=lexicon, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        max_request_bytes=args.max_request_bytes, version=args.version,
    )
    crnn_file = artifacts["torchscript"] if args.target == "cpu" else artifacts[need]
    write_repository(args.repository, cfg, opts, crnn_file)
    print(f"wrote Triton model repository ({args.target}) to {args.repository}: "
          f"htr (ensemble) = preprocess -> crnn -> ctc_decode ({opts.decoder if not lexicon else 'lexicon beam'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
