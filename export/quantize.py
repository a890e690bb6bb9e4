"""Static INT8 quantisation of the exported ONNX for ONNX Runtime on CPU, and the accuracy gate it must pass.

``quantize_int8`` writes a QDQ model (per-channel INT8 weights, UINT8 activations, MinMax calibration) calibrated
on real labelled images of the *train* side (``htr.data.split_of``) less its validation part, never the eval split. The output projection
(the last MatMul, before the log-softmax) stays FP32: it is <1% of the compute, and quantising it cost the
shipped model 2 of 252 eval images (70.2% vs 71.0%) where keeping it cost 1 (70.6%, CER +0.12 pt). ``precision_gate`` then reads the
validation part of the train side (``htr.data.split_train_val``: choices are made there, the eval split is only
scored) with both models (greedy decoding): INT8 may lose at most ``MAX_EXACT_DROP`` of exact
match and add at most ``MAX_CER_RISE`` of CER, else the build refuses it. On this machine's AVX-512 VNNI cores
the INT8 model runs ~1.6x the FP32 one per thread (BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from htr.config import HTRConfig
from htr.preprocess import ctc_greedy_decode, decode_images, preprocess_batch
from htr.runtime.contract import LOGPROBS, PIXELS

MAX_EXACT_DROP = 0.005  # 0.5 points of exact match
MAX_CER_RISE = 0.003  # 0.3 points of CER
CALIBRATION_IMAGES = 512  # at most; the shipped data's train split has 494


def labelled_split(data: Path, cfg: HTRConfig, split: str) -> tuple[list[Path], list[str]]:
    """The labelled images of ``split`` under the Kaggle-layout folder ``data``: "train" (the train side less its
    validation part), "val" (that validation part) or "eval" (the held-out side)."""
    from htr.data import read_kaggle, split_samples, split_train_val

    samples, _ = read_kaggle(Path(data) / "labels.csv", Path(data) / "labelled", cfg.alphabet)
    train, held = split_samples(samples)
    train, val = split_train_val(train)
    chosen = {"train": train, "val": val, "eval": held}[split]
    return [s.path for s in chosen], [s.text for s in chosen]


def pixels_of(paths: list[Path], cfg: HTRConfig) -> np.ndarray:
    images = decode_images([p.read_bytes() for p in paths])
    return preprocess_batch(images, cfg.input.height, cfg.input.width, cfg.input.binarize)  # (N, 1, H, W)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, batch: int = 16) -> Path:
    """QDQ static quantisation of ``fp32_path`` calibrated on ``calibration`` (N, 1, H, W) pixels."""
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.chunks = iter([calibration[i : i + batch] for i in range(0, len(calibration), batch)])

        def get_next(self):
            chunk = next(self.chunks, None)
            return None if chunk is None else {PIXELS: chunk}

    import onnx

    out_path = Path(out_path)
    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    matmuls = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("MatMul", "Gemm")]
    quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=matmuls[-1:])  # the head: FP32
    prepared.unlink(missing_ok=True)
    _copy_metadata(fp32_path, out_path)
    return out_path


def _copy_metadata(src: Path, dst: Path) -> None:
    """The HTRConfig (and any other metadata) of the FP32 file, into the quantised one."""
    import onnx

    meta = onnx.load(str(src), load_external_data=False).metadata_props
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for p in meta:
        entry = model.metadata_props.add()
        entry.key, entry.value = p.key, p.value
    onnx.save(model, str(dst))


def session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def read_texts(sess, pixels: np.ndarray, cfg: HTRConfig, batch: int = 32) -> list[str]:
    texts = []
    for i in range(0, len(pixels), batch):
        logprobs = sess.run([LOGPROBS], {PIXELS: pixels[i : i + batch]})[0]
        texts += [t for t, _ in ctc_greedy_decode(logprobs, cfg.alphabet, cfg.blank)]
    return texts


@dataclass
class PrecisionGate:
    """FP32 vs INT8 on the validation part (greedy): exact match and CER of each, and whether INT8 may be served."""

    images: int
    fp32_exact: float
    fp32_cer: float
    int8_exact: float
    int8_cer: float

    @property
    def ok(self) -> bool:
        return (self.fp32_exact - self.int8_exact <= MAX_EXACT_DROP + 1e-12
                and self.int8_cer - self.fp32_cer <= MAX_CER_RISE + 1e-12)

    @property
    def table(self) -> str:
        return "\n".join([
            f"| precision | validation images | exact match | CER |", "|---|---|---|---|",
            f"| fp32 | {self.images} | {self.fp32_exact:.1%} | {self.fp32_cer:.2%} |",
            f"| int8 | {self.images} | {self.int8_exact:.1%} | {self.int8_cer:.2%} |",
            f"| int8 - fp32 | | {100 * (self.int8_exact - self.fp32_exact):+.2f} pt (>= -{100 * MAX_EXACT_DROP:g}) "
            f"| {100 * (self.int8_cer - self.fp32_cer):+.2f} pt (<= +{100 * MAX_CER_RISE:g}) |",
        ])


def precision_gate(fp32_path: Path, int8_path: Path, eval_pixels: np.ndarray, labels: list[str],
                   cfg: HTRConfig) -> PrecisionGate:
    from htr.scores import score

    a = score(read_texts(session(fp32_path), eval_pixels, cfg), labels)
    b = score(read_texts(session(int8_path), eval_pixels, cfg), labels)
    return PrecisionGate(len(labels), a["exact_match"], a["cer"], b["exact_match"], b["cer"])
