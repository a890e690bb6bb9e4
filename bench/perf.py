"""perf_analyzer as the serving yardstick: a concurrency sweep of the served models, set against the machine.

1. Served: Triton's own load generator, ``perf_analyzer`` (tritonclient 2.51's wheel, installed in
   ``.venv-perf`` by ``make perf``), drives over gRPC, one level at a time:
   - the ensemble ``htr`` with real JPEG bytes: held-out labelled images (the ``eval`` split of
     ``htr.data.split_of``), one image per request (IMAGE_BYTES shape [1, 1]), fed through an
     ``--input-data`` JSON. perf_analyzer base64-decodes a ``{"b64": ...}`` content into the tensor's raw
     buffer, and a BYTES tensor's raw buffer is each element as a 4-byte little-endian length followed by
     its bytes; so each image is stored as ``b64(len + jpeg)``;
   - ``crnn`` alone with zero PIXELS of the served input size (``--shape`` read from the served config).
   Each level is measured in ``--measurement-interval`` windows until three in a row agree within
   ``--stability-percentage`` (at most ``--max-trials`` windows), so the sweep has a stated worst-case time.
   perf_analyzer's CSVs (``-f``; for the ensemble also one per composing model) stay in ``--results``.
   The ensemble's own CSV row has no queue time (Triton's ensemble scheduler does not queue); its queue
   and compute columns here are the sums over its steps, read from the composing models' CSVs.
2. Physical: the same network in this process with ONNX Runtime (FP32, all cores, batch ``--ort-batch`` of
   the model's input size, exported from ``--checkpoint``), its FLOPs per image (``FlopCounterMode`` for the
   convolutions and linear layers, plus the BiLSTM by formula, since the counter does not see LSTM), and
   the machine's FP32 matmul GFLOP/s: served peak images/s over ORT images/s, and the served GFLOP/s as a
   fraction of what the cores can multiply.

Against a running server pass ``--url`` (its gRPC host:port; ``--metrics-url`` enables the refused-image
check); otherwise the script serves ``--repository`` (``make repository`` builds it) on free loopback ports
and stops it afterwards. Numbers from a shared or busy machine are not comparable; run it on a quiet one.

Triton Model Analyzer (1.46, the 24.10 release) cannot drive the bundled server in remote mode: its first call,
the model-repository index, is refused because ``htr serve`` keeps that API behind the ``htr-admin-key``
header, which Model Analyzer cannot send; the sweep here gives the same concurrency table.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from _common import ROOT, machine, require_data, stamp, write_json

from htr.paths import default_data_dir
from htr.runtime.contract import CONFIG_KEY, CRNN, ENSEMBLE, IMAGE_BYTES, PIXELS
from htr.threads import available_cores

MODELS = (ENSEMBLE, CRNN)
US_PER_MS = 1000.0


# ---------------------------------------------------------------------------------------------------
# perf_analyzer: the binary, its input data, one run


def perf_analyzer_command(perf_venv: Path) -> tuple[Path, dict[str, str]]:
    """The binary in ``perf_venv`` and an environment whose LD_LIBRARY_PATH holds the wheel's libcudart.

    perf_analyzer dlopens ``libcudart.so.12`` at start even without a GPU; ``nvidia-cuda-runtime-cu12`` ships
    it in ``site-packages/nvidia/cuda_runtime/lib``.
    """
    exe = perf_venv / "bin" / "perf_analyzer"
    libs = sorted(perf_venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    if not exe.is_file() or not libs:
        sys.exit(f"error: no perf_analyzer (or no nvidia/cuda_runtime/lib) in {perf_venv}: run "
                 f"`make {perf_venv}/.installed` (requirements-perf.txt)")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs[-1]), env.get("LD_LIBRARY_PATH", "")) if p)
    return exe, env


def bytes_element(blob: bytes) -> dict:
    """One BYTES element as perf_analyzer's JSON takes it: the tensor's raw buffer (length-prefixed), base64."""
    return {"b64": base64.b64encode(struct.pack("<I", len(blob)) + blob).decode("ascii")}


def write_image_data(path: Path, blobs: list[bytes]) -> Path:
    """An ``--input-data`` JSON with one step (one request) per image; perf_analyzer cycles through them."""
    steps = [{IMAGE_BYTES: {"content": bytes_element(b), "shape": [1]}} for b in blobs]
    path.write_text(json.dumps({"data": steps}))
    return path


def eval_images(data: Path, limit: int) -> list[Path]:
    """The held-out labelled JPEGs (the ``eval`` split), in name order, at most ``limit``."""
    from htr.data import split_of

    paths = sorted(p for p in (data / "labelled").glob("*.jpg") if split_of(p.name) == "eval")
    if not paths:
        sys.exit(f"error: no eval-split JPEGs in {data / 'labelled'}")
    return paths[:limit]


def _read_last_row(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Concurrency", "").strip().isdigit()]
    return rows[-1] if rows else None


def _split_ms(row: dict) -> tuple[float, float]:
    """(queue, compute) in ms from a perf_analyzer CSV row (its times are microseconds)."""
    compute = sum(float(row[k]) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))
    return float(row["Server Queue"]) / US_PER_MS, compute / US_PER_MS


def run_level(exe: Path, env: dict, url: str, model: str, concurrency: int, results: Path, data_args: list[str],
              args) -> dict:
    """perf_analyzer on ``model`` at one concurrency; the figures from its CSV, or why there are none."""
    name = f"{model}_c{concurrency}.csv"
    for stale in [results / name, *results.glob(f"*.{name}")]:
        stale.unlink(missing_ok=True)
    cmd = [str(exe), "-m", model, "-u", url, "-i", "grpc", "-b", "1",
           "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-interval", str(args.measurement_interval),
           "--stability-percentage", str(args.stability_percentage),
           "--max-trials", str(args.max_trials), *data_args, "-f", name]
    record = {"model": model, "concurrency": concurrency, "csv": str(results / name), "command": cmd}
    t0 = time.perf_counter()
    # cwd=results: perf_analyzer writes the composing models' CSVs as "<model>_v<version>.<-f value>"
    with (results / f"{model}_c{concurrency}.log").open("w") as log:
        try:
            rc = subprocess.run(cmd, cwd=results, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=level_timeout(args)).returncode
        except subprocess.TimeoutExpired:
            rc = None
    record["seconds"] = round(time.perf_counter() - t0, 1)
    row = _read_last_row(results / name)
    if rc != 0 or row is None:
        log_text = (results / f"{model}_c{concurrency}.log").read_text(errors="replace")
        if rc is None:
            record["status"] = f"timed out after {level_timeout(args):.0f} s"
        elif "Failed to obtain stable measurement" in log_text:
            record["status"] = f"unstable in {args.max_trials} windows"
        else:
            record["status"] = f"failed (rc {rc}): {' / '.join(log_text.strip().splitlines()[-3:])[:300]}"
        return record
    queue, compute = _split_ms(row)
    stages = {}
    for path in sorted(results.glob(f"*.{name}")):  # the ensemble's steps
        stage_row = _read_last_row(path)
        if stage_row:
            q, c = _split_ms(stage_row)
            stages[path.name[: -len(name) - 1].rsplit("_v", 1)[0]] = {"queue_ms": q, "compute_ms": c}
    if stages:
        queue = sum(s["queue_ms"] for s in stages.values())
        compute = sum(s["compute_ms"] for s in stages.values())
    record.update(status="ok", infer_per_s=float(row["Inferences/Second"]),
                  p50_ms=float(row["p50 latency"]) / US_PER_MS, p90_ms=float(row["p90 latency"]) / US_PER_MS,
                  p95_ms=float(row["p95 latency"]) / US_PER_MS, p99_ms=float(row["p99 latency"]) / US_PER_MS,
                  queue_ms=queue, compute_ms=compute, stages=stages)
    return record


def level_timeout(args) -> float:
    """Seconds one level may take: every allowed window, then a minute for start-up and the last requests."""
    return args.max_trials * args.measurement_interval / 1000 + 60


# ---------------------------------------------------------------------------------------------------
# the served models: their config, the refused-image counter


def served_config(url: str):
    """The served ``crnn`` config (JSON) and the HTRConfig stored in it."""
    import tritonclient.grpc as grpcclient

    from htr.config import HTRConfig

    client = grpcclient.InferenceServerClient(url)
    for model in MODELS:
        if not client.is_model_ready(model):
            sys.exit(f"error: model {model!r} is not ready on {url}")
    config = client.get_model_config(CRNN, as_json=True)["config"]
    return config, HTRConfig.from_json(config["parameters"][CONFIG_KEY]["string_value"])


def pixels_shape(config: dict, width: int) -> list[int]:
    """PIXELS dims without the batch axis, the dynamic width (-1) set to ``width``."""
    dims = next(i["dims"] for i in config["input"] if i["name"] == PIXELS)
    return [width if int(d) == -1 else int(d) for d in dims]


def metric_sum(metrics_url: str | None, name: str) -> float | None:
    """The sum of every series of one metric on Triton's metrics endpoint (None: no endpoint)."""
    if not metrics_url:
        return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(metrics_url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def sweep(url: str, metrics_url: str | None, args) -> dict:
    exe, env = perf_analyzer_command(args.perf_venv)
    config, cfg = served_config(url)
    shape = pixels_shape(config, cfg.input.width)
    args.results.mkdir(parents=True, exist_ok=True)
    data_args = {CRNN: ["--input-data", "zero", "--shape", f"{PIXELS}:{','.join(map(str, shape))}"]}
    blobs = []
    if ENSEMBLE in args.models:
        blobs = [p.read_bytes() for p in eval_images(require_data(args.data), args.images)]
        data_args[ENSEMBLE] = ["--input-data", str(write_image_data(args.results / "htr_input_data.json", blobs))]
    levels = len(args.models) * len(args.concurrency)
    print(f"perf_analyzer on {url} (gRPC): {', '.join(args.models)} x concurrency "
          f"{','.join(map(str, args.concurrency))}; {len(blobs)} eval images, PIXELS {shape}; "
          f"worst case {levels * level_timeout(args) / 60:.0f} min", flush=True)
    refused_before = metric_sum(metrics_url, "htr_input_failures_total")
    decoded_before = metric_sum(metrics_url, "htr_input_width_pixels_count")
    rows = []  # a level that fails does not stop the sweep: its row says why
    for model in args.models:
        for c in args.concurrency:
            r = run_level(exe, env, url, model, c, args.results, data_args[model], args)
            rows.append(r)
            figures = (f"{r['infer_per_s']:.1f} infer/s, p50 {r['p50_ms']:.1f} ms" if r["status"] == "ok"
                       else r["status"])
            print(f"  {model} c={c}: {figures} ({r['seconds']:.0f} s)", flush=True)
    check = {}
    if refused_before is not None and ENSEMBLE in args.models:
        check = {"images_refused": metric_sum(metrics_url, "htr_input_failures_total") - refused_before,
                 "images_decoded": metric_sum(metrics_url, "htr_input_width_pixels_count") - decoded_before}
    return {"url": url, "pixels_shape": shape, "served_config": cfg.to_dict(), "images": len(blobs),
            "rows": rows, "input_check": check}


# ---------------------------------------------------------------------------------------------------
# the physical yardstick: ONNX Runtime in process, FLOPs per image, matmul GFLOP/s


def lstm_flops(cfg, frames: int) -> int:
    """FLOPs of the BiLSTM's gate matmuls for one image: per layer, direction and frame, ``W_ih`` (4h x in)
    and ``W_hh`` (4h x h), 2 FLOPs per multiply-add; ``in`` = 2h (the projection's output, then the previous
    layer's two directions). The element-wise gate arithmetic (~10h per step, under 1 %) is left out."""
    h, directions = cfg.model.lstm_hidden, 2  # htr.model.CRNN: nn.LSTM(2h, h, bidirectional=True)
    return sum(directions * frames * 2 * 4 * h * (2 * h + h) for _ in range(cfg.model.lstm_layers))


def flops_per_image(model, cfg) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, cfg.input.height, cfg.input.width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    counted = counter.get_total_flops()
    rnn_counted = sum(counter.get_flop_counts().get(f"{type(model).__name__}.rnn", {}).values())
    frames = cfg.input.width // 4
    lstm = lstm_flops(cfg, frames) if rnn_counted == 0 else 0  # added only where the counter missed it
    return {"counted": counted, "lstm_by_formula": lstm, "total": counted + lstm, "frames": frames}


def ort_images_per_s(onnx_path: Path, pixels: np.ndarray, seconds: float, threads: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {PIXELS: pixels}
    for _ in range(3):
        session.run(None, feed)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, feed)
        n += len(pixels)
    return n / (time.perf_counter() - t0)


def matmul_gflops(n: int, repeats: int, threads: int) -> dict[str, float]:
    """GFLOP/s of the best of ``repeats`` FP32 (n x n) @ (n x n) products, per library: NumPy (its BLAS, all
    cores by default) and torch on ``threads`` threads. The yardstick takes the faster: what the cores can do."""
    import torch

    def best(mm, a, b) -> float:
        mm(a, b)
        fastest = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            mm(a, b)
            fastest = min(fastest, time.perf_counter() - t0)
        return 2 * n**3 / fastest / 1e9

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    torch.set_num_threads(threads)
    return {"numpy": best(np.matmul, a, b), "torch": best(torch.mm, torch.from_numpy(a), torch.from_numpy(b))}


def physical(args) -> dict:
    import torch

    from htr.export.engines import export_onnx
    from htr.model import load_model
    from htr.preprocess import decode_images, preprocess_batch

    threads = available_cores()
    model, cfg, _ = load_model(args.checkpoint)
    model.eval()
    ic = cfg.input
    blobs = [p.read_bytes() for p in eval_images(require_data(args.data), args.ort_batch)]
    blobs = (blobs * (args.ort_batch // len(blobs) + 1))[: args.ort_batch]
    pixels = preprocess_batch(decode_images(blobs), ic.height, ic.width, ic.binarize)  # (B, 1, H, W)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the exporter's LSTM batch-size notice: the graph is checked
        onnx_path = export_onnx(model, cfg, Path(tmp) / "model.onnx")
        ort_rate = ort_images_per_s(onnx_path, np.ascontiguousarray(pixels, dtype=np.float32), args.ort_seconds,
                                    threads)
    torch.set_num_threads(threads)
    flops = flops_per_image(model, cfg)
    return {"checkpoint": str(args.checkpoint), "input": [ic.height, ic.width], "threads": threads,
            "ort_batch": args.ort_batch, "ort_images_per_s": ort_rate, "flops_per_image": flops,
            "matmul_n": args.matmul_size, "matmul_gflops": matmul_gflops(args.matmul_size, args.matmul_repeats, threads)}


# ---------------------------------------------------------------------------------------------------
# report


def table(rows: list[dict]) -> str:
    lines = ["| model | concurrency | infer/s (images/s) | p50 ms | p90 ms | p99 ms | server queue ms "
             "| server compute ms | per step: queue / compute ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['concurrency']} | {r['status'][:80]} | | | | | | |")
            continue
        steps = ", ".join(f"{k} {s['queue_ms']:.1f} / {s['compute_ms']:.1f}" for k, s in r["stages"].items())
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['infer_per_s']:.1f} | {r['p50_ms']:.1f} "
                     f"| {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['queue_ms']:.1f} | {r['compute_ms']:.1f} "
                     f"| {steps} |")
    return "\n".join(lines)


def yardstick(rows: list[dict], phys: dict) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    peak = {m: max((r["infer_per_s"] for r in ok if r["model"] == m), default=None) for m in MODELS}
    flops = phys["flops_per_image"]["total"]
    out = {"served_peak_images_per_s": peak, "ort_images_per_s": phys["ort_images_per_s"],
           "gflop_per_image": flops / 1e9, "matmul_gflops": max(phys["matmul_gflops"].values())}
    for m, rate in peak.items():
        if rate:
            out[f"{m}_over_ort"] = rate / phys["ort_images_per_s"]
            out[f"{m}_gflops"] = rate * flops / 1e9
            out[f"{m}_fraction_of_matmul"] = rate * flops / 1e9 / out["matmul_gflops"]
    out["ort_fraction_of_matmul"] = phys["ort_images_per_s"] * flops / 1e9 / out["matmul_gflops"]
    return out


def print_yardstick(y: dict, phys: dict) -> None:
    f = phys["flops_per_image"]
    how = (f"FlopCounterMode {f['counted'] / 1e9:.3f} + BiLSTM by formula {f['lstm_by_formula'] / 1e9:.3f}, "
           f"{f['frames']} frames: the counter does not count LSTM" if f["lstm_by_formula"] else "FlopCounterMode")
    print(f"\nnetwork {phys['input'][0]}x{phys['input'][1]}: {f['total'] / 1e9:.3f} GFLOP/image ({how})")
    libs = ", ".join(f"{k} {v:.1f}" for k, v in phys["matmul_gflops"].items())
    print(f"machine: FP32 matmul {phys['matmul_n']}^2 on {phys['threads']} cores: {y['matmul_gflops']:.1f} GFLOP/s "
          f"(best of {libs})")
    print(f"ONNX Runtime in process (FP32, {phys['threads']} threads, batch {phys['ort_batch']}): "
          f"{y['ort_images_per_s']:.1f} images/s = {100 * y['ort_fraction_of_matmul']:.1f} % of matmul GFLOP/s")
    for m in MODELS:
        rate = y["served_peak_images_per_s"][m]
        if rate:
            print(f"served peak, {m}: {rate:.1f} images/s = {y[f'{m}_over_ort']:.2f} x ONNX Runtime in process; "
                  f"{y[f'{m}_gflops']:.1f} GFLOP/s = {100 * y[f'{m}_fraction_of_matmul']:.1f} % of matmul GFLOP/s")


# ---------------------------------------------------------------------------------------------------


def _concurrency(value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {value!r}")
    return levels


def _models(value: str) -> list[str]:
    models = [v for v in value.split(",") if v]
    if not models or set(models) - set(MODELS):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(MODELS)}, got {value!r}")
    return models


def check_yardstick(repository: Path, checkpoint: Path) -> None:
    """The physical yardstick (ONNX Runtime in process, FLOPs) must be the served network: refuse a
    ``--checkpoint`` whose config (input size, CNN widths, LSTM size) is not the one ``repository`` was exported
    with, instead of printing another network's figures beside the served ones."""
    import json

    from htr.export.repository import read_config
    from htr.model import load_checkpoint

    config = repository / CRNN / "config.pbtxt"
    if not config.is_file():
        return  # the sweep reports the missing repository
    served = json.loads(read_config(repository / CRNN).parameters["htr_config"].string_value)
    if served != load_checkpoint(checkpoint)["config"]:
        sys.exit(f"error: --checkpoint {checkpoint} is not the network {repository} serves (its htr_config "
                 f"differs): pass the exported checkpoint as --checkpoint, or --skip-physical")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "F", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {}))
    ap.add_argument("--url", help="gRPC host:port of a running server (default: serve --repository here)")
    ap.add_argument("--metrics-url", help="with --url: its metrics endpoint, to count images the pipeline refused "
                                          "(e.g. http://127.0.0.1:8002/metrics)")
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="served when --url is not given")
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="Kaggle-layout folder: labelled/*.jpg")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "crnn_names.pt",
                    help="the network of the physical yardstick (ONNX export, FLOPs)")
    ap.add_argument("--perf-venv", type=Path, default=ROOT / ".venv-perf",
                    help="venv holding perf_analyzer (requirements-perf.txt)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "perf",
                    help="perf_analyzer's CSVs and logs, one per model and level")
    ap.add_argument("--models", type=_models, default=",".join(MODELS), help="comma-separated: which models to sweep")
    ap.add_argument("--concurrency", type=_concurrency, default="1,2,4,6,8,12,16",
                    help="comma-separated concurrency levels (requests in flight)")
    ap.add_argument("--measurement-interval", type=int, default=5000,
                    help="ms per measurement window; long windows average out a shared CPU's noise")
    ap.add_argument("--stability-percentage", type=float, default=20,
                    help="a level is stable when three windows agree within this percent (perf_analyzer: 10)")
    ap.add_argument("--max-trials", type=int, default=6,
                    help="windows per level before perf_analyzer gives up on it (bounds the sweep's time)")
    ap.add_argument("--images", type=int, default=64, help="eval-split images in the ensemble's input data")
    ap.add_argument("--ort-batch", type=int, default=32, help="batch of the in-process ONNX Runtime run")
    ap.add_argument("--ort-seconds", type=float, default=10.0, help="timed seconds of the ONNX Runtime run")
    ap.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n FP32 matmul")
    ap.add_argument("--matmul-repeats", type=int, default=5, help="matmuls timed (the best counts)")
    ap.add_argument("--skip-physical", action="store_true", help="only the perf_analyzer sweep")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    args.results, args.perf_venv = args.results.resolve(), args.perf_venv.resolve()  # perf_analyzer runs in results/
    if not args.url and not args.skip_physical:
        check_yardstick(args.repository, args.checkpoint)

    if args.url:
        served = sweep(args.url, args.metrics_url, args)
    else:
        from htr.serve import ServerOptions, TritonServer

        if not (args.repository / CRNN / "config.pbtxt").is_file():
            sys.exit(f"error: no model repository at {args.repository}: run `make repository`")
        server = TritonServer(args.repository, ServerOptions.with_free_ports(model_control="none"))
        print(f"starting tritonserver on {args.repository} ...", flush=True)
        server.start(ready_timeout=180)
        try:
            served = sweep(server.url_grpc, server.url_metrics, args)
        finally:
            server.stop()

    print(f"\nperf_analyzer over gRPC, one image per request; {machine()}, {stamp()}\n")
    print(table(served["rows"]))
    check = served["input_check"]
    if check:
        print(f"\nimages the pipeline refused during the ensemble runs: {check['images_refused']:.0f} "
              f"of {check['images_decoded'] + check['images_refused']:.0f}")
    payload = {"machine": machine(), "date": stamp(), "args": {k: v if isinstance(v, (int, float, list, type(None)))
               else str(v) for k, v in vars(args).items()}, "served": served}
    if not args.skip_physical:
        phys = physical(args)
        payload["physical"] = phys
        payload["yardstick"] = yardstick(served["rows"], phys)
        print_yardstick(payload["yardstick"], phys)
    write_json(args.json, payload)
    return 0 if all(r["status"] == "ok" for r in served["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
