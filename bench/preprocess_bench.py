"""Benchmark ``htr.preprocess.preprocess_batch`` against the OpenCV + NumPy chain a user would write.

Goals (issue: foundation): on the real labelled images, batch 64, one thread, at least 2x the
user's chain; with 2 threads at least 3x. Decoding is done once, outside the timed region; each
repeat preprocesses every image in batches, and the candidates are timed interleaved.
"""
from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from _common import (
    goal_line, interleaved_timings, machine, read_labelled_blobs, require_data, stamp, summary, write_json,
)

from htr.paths import default_data_dir
from htr.preprocess import decode_images, preprocess_batch
from htr.preprocess._backend import PURE_PYTHON


def opencv_chain(images, height=64, width=256):
    """What a user writes with OpenCV: cvtColor, resize INTER_AREA, Otsu, pad, astype / 255."""
    out = np.zeros((len(images), 1, height, width), np.float32)
    for i, img in enumerate(images):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        h, w = grey.shape
        s = min(height / h, width / w)
        nh, nw = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
        small = cv2.resize(grey, (nw, nh), interpolation=cv2.INTER_AREA)
        _, ink = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
        canvas = np.zeros((height, width), np.uint8)
        top = (height - nh) // 2
        canvas[top : top + nh, :nw] = ink
        out[i, 0] = canvas.astype(np.float32) / 255.0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=lambda p: __import__("pathlib").Path(p), default=default_data_dir(),
                    help="Kaggle-layout folder with labelled/*.jpg")
    ap.add_argument("--batch", type=int, default=64, help="images per preprocess_batch call")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15, help="timed passes over all images")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    if PURE_PYTHON:
        sys.exit("error: HTR_PURE_PYTHON=1 is set; unset it to benchmark the Cython kernels")
    images = decode_images(read_labelled_blobs(require_data(args.data)))
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    out = np.empty((args.batch, 1, args.height, args.width), np.float32)

    def ours(threads):
        def run():
            for b in batches:
                preprocess_batch(b, args.height, args.width, out=out[: len(b)], threads=threads)
        return run

    def chain():
        for b in batches:
            opencv_chain(b, args.height, args.width)

    cv2.setNumThreads(1)  # the user's chain, single-threaded like ours at threads=1
    times = interleaved_timings(
        {"opencv_chain": chain, "htr_1_thread": ours(1), "htr_2_threads": ours(2)}, args.repeats
    )
    res = {k: summary(v) for k, v in times.items()}
    n = len(images)
    base = res["opencv_chain"]["median_s"]
    print(f"\npreprocess_batch on {n} real images, batch {args.batch}, {args.height}x{args.width}, "
          f"median of {args.repeats} passes\n{machine()}, {stamp()}\n")
    print("| candidate | ms / pass | images/s | speed-up |")
    print("|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['median_s'] * 1e3:.2f} | {n / r['median_s']:,.0f} | {base / r['median_s']:.2f}x |")
    print("\n| goal | measured | target | |\n|---|---|---|---|")
    ok = True
    for name, key, goal in (("1 thread vs OpenCV chain", "htr_1_thread", 2.0),
                            ("2 threads vs OpenCV chain", "htr_2_threads", 3.0)):
        line, passed = goal_line(name, base / res[key]["median_s"], goal)
        ok &= passed
        print(line)
    write_json(args.json, {"machine": machine(), "date": stamp(), "images": n, "batch": args.batch,
                           "results": res, "goals_met": ok})
    return 0


if __name__ == "__main__":
    sys.exit(main())
