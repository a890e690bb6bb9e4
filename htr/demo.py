"""``htr demo``: the main job end to end on the bundled defaults.

1. preprocess the real labelled images exactly as training and serving do (contact sheet saved);
2. ``export/build_engine.py``: the shipped checkpoint -> TorchScript + ONNX (+ TensorRT where a GPU
   is present), each checked against PyTorch, -> the Triton model repository;
3. start the bundled ``tritonserver`` on loopback (``htr serve``'s machinery);
4. recognise the sample images (``samples/``, synthetic, and the first real labelled images) over
   gRPC with ``htr.client`` and print file, text and confidence; score the held-out real images served the same way;
5. stop the server.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from .paths import ROOT, default_data_dir


def add_parser(sub, formatter_class=argparse.ArgumentDefaultsHelpFormatter):
    p = sub.add_parser("demo", help="run the main job end to end on the bundled defaults",
                       description=__doc__, formatter_class=formatter_class)
    p.add_argument("--data", type=Path, default=default_data_dir(),
                   help="Kaggle-layout folder (labelled/, labels.csv); default $HTR_DATA, else ../shared/data/kaggle_names")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt")
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="where the repository is written")
    p.add_argument("--samples", type=Path, default=ROOT / "samples", help="bundled sample images (+ labels.csv)")
    p.add_argument("--real", type=int, default=8, help="real labelled images to show after the samples")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="contact sheet and server log")
    p.set_defaults(func=run)


def contact_sheet(batch: np.ndarray, originals, path: Path, rows: int = 8) -> None:
    """Original (grey) above the network input (ink white), for the first ``rows`` images."""
    import cv2

    _, _, h, w = batch.shape
    tiles = []
    for img, x in zip(originals[:rows], batch[:rows]):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        scale = h / grey.shape[0]
        grey = cv2.resize(grey, (min(w, max(1, int(grey.shape[1] * scale))), h))
        top = np.full((h, w), 255, np.uint8)
        top[:, : grey.shape[1]] = grey
        tiles.append(np.vstack([top, (x[0] * 255).astype(np.uint8), np.full((4, w), 128, np.uint8)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(tiles))


def _labels(csv_path: Path) -> dict[str, str]:
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="") as f:
        return {r["FILENAME"]: r["IDENTITY"] for r in csv.DictReader(f)}


def run(args) -> int:
    from htr.client import HTRClient
    from htr.config import HTRConfig
    from htr.data import read_kaggle, split_samples
    from htr.export.build import ExportError, build_repository
    from htr.scores import score
    from htr.model import load_checkpoint
    from htr.preprocess import decode_images, preprocess_batch
    from htr.serve import ServerOptions, TritonServer

    labelled = args.data / "labelled"
    if not labelled.is_dir():
        raise SystemExit(f"error: {labelled} not found; pass --data pointing at the Kaggle-layout folder")
    if not args.checkpoint.is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint} not found (train one with `htr train`)")
    cfg = HTRConfig.from_dict(load_checkpoint(args.checkpoint)["config"])
    samples, _ = read_kaggle(args.data / "labels.csv")

    print("== 1. preprocessing (the same htr.preprocess calls as training and serving)")
    t0 = time.perf_counter()
    images = decode_images([s.path.read_bytes() for s in samples], threads=2)
    t1 = time.perf_counter()
    batch = preprocess_batch(images, cfg.input.height, cfg.input.width, cfg.input.binarize, threads=2)
    t2 = time.perf_counter()
    print(f"decoded {len(images)} JPEGs in {(t1 - t0) * 1e3:.0f} ms; preprocessed to {tuple(batch.shape)} in "
          f"{(t2 - t1) * 1e3:.1f} ms ({len(images) / (t2 - t1):,.0f} images/s)")
    contact_sheet(batch, images, args.out / "preprocessed.png")
    print(f"contact sheet (original above, network input below): {args.out / 'preprocessed.png'}")

    print("\n== 2. export/build_engine.py")
    try:
        build_repository(args.checkpoint, args.repository, data=args.data, parity_images=32)
    except ExportError as e:
        raise SystemExit(f"error: {e}") from e

    print("\n== 3. tritonserver (bundled with nvidia-pytriton), loopback only")
    server = TritonServer(args.repository, ServerOptions.with_free_ports(log_file=args.out / "tritonserver.log"))
    t0 = time.perf_counter()
    server.start(ready_timeout=180)
    print(f"ready in {time.perf_counter() - t0:.1f} s: gRPC {server.url_grpc}, HTTP {server.url_http}, "
          f"metrics {server.url_metrics} (log: {server.log_path})")
    try:
        print("\n== 4. recognition over gRPC (ensemble htr: image bytes in, text + confidence out)")
        shown = [(p, _labels(args.samples / "labels.csv").get(p.name, "")) for p in sorted(args.samples.glob("*.jpg"))]
        shown += [(s.path, s.text) for s in samples[: args.real]]
        with HTRClient(server.url_grpc, "grpc") as client:
            results = client.recognize([p for p, _ in shown])
            print(f"{'file':<22} {'text':<20} {'confidence':>10}  {'label':<20}")
            for (path, label), p in zip(shown, results):
                mark = "" if not label else ("ok" if p.text == label else "x")
                print(f"{path.name:<22} {(p.text or f'<{p.error}>'):<20} {p.confidence:>10.3f}  {label:<20} {mark}")
            _, held = split_samples(samples)
            t0 = time.perf_counter()
            served = client.recognize([s.path for s in held])
            elapsed = time.perf_counter() - t0
        m = score([p.text for p in served], [s.text for s in held])
        print(f"\nheld-out real images (never trained on), served: n={m['n']} exact match {m['exact_match']:.1%}, "
              f"CER {m['cer']:.1%}, correct characters {m['correct_chars']:.1%} ({m['n'] / elapsed:.0f} images/s)")
    finally:
        print("\n== 5. stopping the server")
        server.stop()
    return 0
