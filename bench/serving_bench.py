"""End-to-end serving throughput and latency through the Triton ensemble, against the in-process ceiling.

1. ceiling: the same TorchScript CRNN in this process at batch 32 (preprocessed real images), images/s;
2. the ensemble ``htr`` (image bytes in, text out) served by the bundled tritonserver, loaded over gRPC
   by ``--concurrency`` in-flight one-image requests (asyncio client), with dynamic batching on, then
   with a repository identical but for dynamic batching off.

Goals (issue: export and serving): end-to-end images/s >= 0.7 x the ceiling; dynamic batching on vs
off >= 1.5x; p50/p95/p99 latency reported. Everything runs on this machine, loopback only, bounded
by ``--requests``.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine, read_labelled_blobs, require_data, stamp, write_json

from htr.paths import default_data_dir


def ceiling(engine: Path, pixels: np.ndarray, batch: int, seconds: float) -> float:
    import torch

    from htr.export.engines import load_torchscript

    module, _ = load_torchscript(engine)
    x = torch.from_numpy(pixels[:batch].copy())
    with torch.inference_mode():
        module(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            module(x)
            n += batch
    return n / (time.perf_counter() - t0)


async def load(url: str, blobs: list[bytes], requests: int, concurrency: int) -> dict:
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput, InferRequestedOutput

    client = aio.InferenceServerClient(url)
    latencies, failures = [], 0
    queue = iter(range(requests))

    async def worker():
        nonlocal failures
        for i in queue:
            inp = InferInput("IMAGE_BYTES", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([blobs[i % len(blobs)]], dtype=np.object_).reshape(1, 1))
            t0 = time.perf_counter()
            try:
                res = await client.infer("htr", [inp], outputs=[InferRequestedOutput("TEXT"),
                                                                  InferRequestedOutput("ERROR")])
                if res.as_numpy("ERROR")[0, 0]:
                    failures += 1
            except Exception:  # noqa: BLE001  (counted, reported)
                failures += 1
            latencies.append(time.perf_counter() - t0)

    # warm-up, then the timed run
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    queue = iter(range(requests))
    latencies.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await client.close()
    q = np.percentile(np.array(latencies) * 1e3, [50, 95, 99])
    return {"images_per_s": requests / elapsed, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2],
            "failures": failures, "requests": requests, "seconds": elapsed}


def batching_stats(url: str) -> dict:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics("crnn", as_json=True)
    s = stats["model_stats"][0]
    return {"inferences": int(s.get("inference_count", 0)), "executions": int(s.get("execution_count", 0))}


def serve_and_load(repo: Path, blobs, requests, concurrency) -> dict:
    from htr.serve import ServerOptions, TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        server = TritonServer(repo, ServerOptions.with_free_ports(log_file=Path(tmp) / "triton.log"))
        server.start(ready_timeout=180)
        try:
            result = asyncio.run(load(server.url_grpc, blobs, requests, concurrency))
            result.update(batching_stats(server.url_grpc))
        finally:
            server.stop()
    result["avg_batch"] = result["inferences"] / max(1, result["executions"])
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt")
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--concurrency", type=int, default=16, help="in-flight gRPC requests")
    ap.add_argument("--requests", type=int, default=1500, help="timed requests per configuration")
    ap.add_argument("--batch", type=int, default=32, help="batch of the in-process ceiling")
    ap.add_argument("--torch-threads", type=int, default=2, help="intra-op threads, in-process and in crnn")
    ap.add_argument("--queue-delay-us", type=int, default=4000)
    ap.add_argument("--ceiling-seconds", type=float, default=10.0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from htr.export.build import build_repository
    from htr.export.repository import RepositoryOptions
    from htr.model import load_model
    from htr.preprocess import decode_images, preprocess_batch

    blobs = read_labelled_blobs(require_data(args.data))
    _, cfg, _ = load_model(args.checkpoint)
    ic = cfg.input
    pixels = preprocess_batch(decode_images(blobs[: args.batch]), ic.height, ic.width, ic.binarize)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("on", "off"):
            options = RepositoryOptions(cpu_engine="torchscript", crnn_threads=args.torch_threads, preprocess_instances=1,
                                        queue_delay_us=args.queue_delay_us, dynamic_batching=name == "on")
            build_repository(args.checkpoint, tmp / name, options=options, formats="torchscript",
                             engines_dir=tmp / "engines", data=args.data, parity_images=8)
        torch.set_num_threads(args.torch_threads)
        results["ceiling_images_per_s"] = ceiling(tmp / "engines" / "model.pt", pixels, args.batch, args.ceiling_seconds)
        for name in ("on", "off"):
            print(f"serving with dynamic batching {name} ...", flush=True)
            results[f"batching_{name}"] = serve_and_load(tmp / name, blobs, args.requests, args.concurrency)

    ceil, on, off = results["ceiling_images_per_s"], results["batching_on"], results["batching_off"]
    print(f"\nserving the htr ensemble over gRPC, concurrency {args.concurrency}, {args.requests} one-image requests "
          f"of real images\n{machine()}, {stamp()}\n")
    print("| configuration | images/s | p50 ms | p95 ms | p99 ms | avg crnn batch | failures |")
    print("|---|---|---|---|---|---|---|")
    print(f"| in-process TorchScript, batch {args.batch} (ceiling) | {ceil:,.0f} | | | | {args.batch} | |")
    for name, r in (("ensemble, dynamic batching on", on), ("ensemble, dynamic batching off", off)):
        print(f"| {name} | {r['images_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['avg_batch']:.1f} | {r['failures']} |")
    ratio, gain = on["images_per_s"] / ceil, on["images_per_s"] / off["images_per_s"]
    print("\n| goal | measured | target | |\n|---|---|---|---|")
    print(f"| end-to-end vs in-process ceiling | {ratio:.2f}x | >= 0.7x | {'PASS' if ratio >= 0.7 else 'FAIL'} |")
    print(f"| dynamic batching on vs off | {gain:.2f}x | >= 1.5x | {'PASS' if gain >= 1.5 else 'FAIL'} |")
    write_json(args.json, {"machine": machine(), "date": stamp(), "args": vars(args) | {"checkpoint": str(args.checkpoint),
               "data": str(args.data)}, **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
