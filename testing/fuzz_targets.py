"""Coverage-guided fuzz targets (atheris, i.e. libFuzzer for Python) for the native entry points of
``htr.preprocess``: :func:`decode_images`, :func:`preprocess_batch`, :func:`ctc_greedy_decode` and
:func:`ctc_beam_decode` (two targets: with an optional lexicon; and with a :class:`NameModel`, its weights
and a hard or soft lexicon).

Each target turns libFuzzer's bytes into a call with arbitrary arguments (shapes from empty to odd widths,
every layout and dtype, values including NaN and infinities, out-of-range blanks, lengths and beam widths)
and holds the public function to three rules:

- it may raise ``ValueError`` (the documented refusal) and nothing else;
- when it refuses, the NumPy reference (``htr.preprocess.reference``, same signature) refuses with the same
  message; when it answers, the reference gives the same answer: images within ``IMAGE_TOL`` (the tolerance
  of ``tests/test_preprocess.py``), CTC texts and confidences bit-identical (as ``tests/test_ctc.py``).
  The one argument held to the kernel alone is ``preprocess_batch``'s ``threads``, which the image reference
  accepts and ignores (its docstring);
- it does not crash the process (a segfault in a kernel ends the run with libFuzzer's crash report).

``decode_images`` is OpenCV/PIL in both paths, so its images go on into both ``preprocess_batch`` paths:
every layout a real decoder produces reaches the kernel.

Coverage: atheris instruments Python bytecode only. The wrappers, the argument checks, the reference and
PIL's decoder plugins are instrumented (imported inside ``atheris.instrument_imports``); the Cython ``.so``
kernels and OpenCV are not, unless rebuilt with ``-fsanitize=fuzzer``. So the search is guided by the
Python-level coverage of the wrappers and the reference around each kernel call, and the kernels are
exercised (and compared) on every input without feeding coverage back. That is acceptable here: the
kernels' branches follow the arguments the wrappers validate.

Run one target (libFuzzer flags and corpus folders pass through)::

    python -m htr.testing.fuzz_targets ctc_beam_decode -max_total_time=60 corpus/ctc_beam_decode

:func:`run_target` does the same in a subprocess (atheris' instrumentation and libFuzzer's signal handlers
stay out of the caller); ``tests/test_fuzz_native.py`` runs each target briefly, ``bench/fuzz_native.py``
for longer.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

IMAGE_TOL = 1e-5  # kernel vs reference, as tests/test_preprocess.py
MAX_PIXELS = 1 << 20  # decode_images' limit in the target: a header may announce up to 1 megapixel
MAX_BYTES = 1 << 16
ALPHABET = "abcdefghijklmnopqrstuvwxyz '-\u00e9\U0001d11e"  # 1- to 4-byte UTF-8 code points
INSTRUMENTED = ["htr.preprocess", "PIL"]  # what atheris instruments (see the module docstring)

_api = None  # the modules under test, imported by _import() (inside the instrumentation when fuzzing)


def _import() -> None:
    global _api
    if _api is not None:
        return
    import types

    from PIL import Image

    from htr import preprocess
    from htr.preprocess import reference

    Image.init()  # PIL imports its format plugins on first use: now, so that they are instrumented too

    if preprocess.PURE_PYTHON:
        raise RuntimeError("HTR_PURE_PYTHON is set: the public functions are the reference itself; unset it "
                           "to fuzz the Cython kernels against the reference")
    _api = types.SimpleNamespace(native=preprocess, ref=reference, Lexicon=preprocess.Lexicon,
                                 NameModel=preprocess.NameModel)


# ---------------------------------------------------------------------------------------------------
# comparing the two paths


class Mismatch(AssertionError):
    """The kernel and the reference disagree (or the kernel raised what it must not)."""


def _both(native: Callable, ref: Callable, what: str):
    """Call both; -> (native result, reference result), or (None, None) when both refused alike."""
    try:
        got = native()
    except ValueError as e:
        try:
            ref()
        except ValueError as r:
            if str(r) != str(e):
                raise Mismatch(f"{what}: the kernel refused with {e!r}, the reference with {r!r}") from None
            return None, None
        raise Mismatch(f"{what}: the kernel refused ({e!r}) what the reference accepted") from None
    try:
        want = ref()
    except ValueError as r:
        raise Mismatch(f"{what}: the reference refused ({r!r}) what the kernel accepted") from None
    return got, want


def _same_reads(got, want, what: str) -> None:
    """CTC results: same texts, confidences equal to the bit (NaN equal to NaN)."""
    if len(got) != len(want):
        raise Mismatch(f"{what}: {len(got)} results, the reference {len(want)}")
    for k, ((t, c), (rt, rc)) in enumerate(zip(got, want)):
        if not isinstance(t, str) or not isinstance(c, float):
            raise Mismatch(f"{what}: item {k} is ({type(t).__name__}, {type(c).__name__}), not (str, float)")
        if t != rt or not (c == rc or (math.isnan(c) and math.isnan(rc))):
            raise Mismatch(f"{what}: item {k}: kernel {(t, c)!r}, reference {(rt, rc)!r}")


def _same_pixels(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if got.dtype != np.float32 or got.shape != want.shape:
        raise Mismatch(f"{what}: kernel {got.dtype}{got.shape}, reference {want.dtype}{want.shape}")
    if got.size and not (np.abs(got - want).max() <= IMAGE_TOL and got.min() >= 0.0 and got.max() <= 1.0):
        raise Mismatch(f"{what}: max |kernel - reference| = {np.abs(got - want).max()!r}, "
                       f"kernel range [{got.min()!r}, {got.max()!r}]")


# ---------------------------------------------------------------------------------------------------
# drawing arguments from the fuzzer's bytes


def _image(fdp) -> object:
    """One item of a preprocess batch: mostly a uint8 image of any layout, sometimes something refused."""
    kind = fdp.ConsumeIntInRange(0, 15)
    h, w = fdp.ConsumeIntInRange(0, 70), fdp.ConsumeIntInRange(0, 300)
    channels = fdp.PickValueInList([None, 1, 3, 4, 2])
    shape = (h, w) if channels is None else (h, w, channels)
    n = h * w * (channels or 1)
    if kind == 2:  # floats, NaN and infinities among them: refused by dtype
        return np.frombuffer(fdp.ConsumeBytes(4 * n).ljust(4 * n, b"\0"), np.float32).reshape(shape)
    raw = fdp.ConsumeBytes(n)
    img = np.frombuffer(raw.ljust(n, b"\x80"), np.uint8).reshape(shape)  # read-only, as a buffer view is
    if kind == 0:
        return None
    if kind == 1:
        return raw  # encoded bytes where pixels belong
    if kind == 3:
        return img.astype(np.uint16)
    if kind == 4 and h > 1 and w > 1:
        return img[::2, ::-1]  # a strided, reversed view
    if kind == 5:
        return img[None]  # 4-D
    if kind == 6:
        return img.copy()  # writeable
    return img


def _binarize(fdp):
    return fdp.PickValueInList(["otsu", "none", "Otsu ", fdp.ConsumeIntInRange(-5, 260), "sauvola", 2.5, True])


def _logprobs(fdp) -> np.ndarray:
    """(N, T, C) in one of several forms: raw fuzzer floats (NaN, inf, huge), log-softmax rows, ties."""
    n, t, c = fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 16), fdp.ConsumeIntInRange(0, 8)
    size = n * t * c
    form = fdp.ConsumeIntInRange(0, 3)
    if form == 0:  # the bytes themselves as floats: any value at all
        dtype = fdp.PickValueInList([np.float32, np.float64, np.float16])
        item = np.dtype(dtype).itemsize
        raw = fdp.ConsumeBytes(size * item).ljust(size * item, b"\0")
        x = np.frombuffer(raw, dtype).reshape(n, t, c)
    else:
        x = np.array([fdp.ConsumeRegularFloat() for _ in range(size)], np.float64).reshape(n, t, c)
        if form >= 2 and c:  # log-softmax: what a model gives
            x = np.clip(x, -60.0, 60.0)
            if form == 3:
                x = np.round(x)  # many exact ties
            x = x - x.max(axis=-1, keepdims=True)
            x = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
        x = x.astype(np.float32)
        if size and fdp.ConsumeBool():  # one special value somewhere
            x.reshape(-1)[fdp.ConsumeIntInRange(0, size - 1)] = fdp.PickValueInList([np.nan, np.inf, -np.inf, 0.0])
    if fdp.ConsumeBool() and x.ndim == 3 and c > 1:
        x = np.asfortranarray(x)
    if fdp.ConsumeIntInRange(0, 20) == 0:
        x = x[0] if n else x.reshape(-1)  # not 3-D
    return x


def _ctc_args(fdp, logprobs: np.ndarray) -> dict:
    c = logprobs.shape[-1] if logprobs.ndim == 3 else 1
    n, t = (logprobs.shape[0], logprobs.shape[1]) if logprobs.ndim == 3 else (0, 0)
    alphabet_len = max(0, c - 1) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, 9)
    alphabet = ALPHABET[:alphabet_len]
    if fdp.ConsumeBool():
        alphabet = list(alphabet)
    blank = fdp.ConsumeIntInRange(0, max(0, c - 1)) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(-1, 9)
    lengths = None
    if fdp.ConsumeBool():
        lengths = [fdp.ConsumeIntInRange(0, t) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(-2, t + 2)
                   for _ in range(n)]
    return {"alphabet": alphabet, "blank": blank, "lengths": lengths, "threads": fdp.ConsumeIntInRange(1, 3)}


def _word(fdp, pool: list[str]) -> str:
    """Mostly spelled from ``pool`` (the alphabet); sometimes anything (refused: not in it)."""
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 4))
    return "".join(fdp.PickValueInList(pool) for _ in range(fdp.ConsumeIntInRange(0, 5)))


def _lexicon(fdp, kw: dict):
    """None, a list of words, or a :class:`Lexicon` built from them (when they fit the alphabet)."""
    if not fdp.ConsumeBool():
        return None
    letters = "".join(kw["alphabet"])
    pool = list(letters) or ["a"]
    lexicon = [_word(fdp, pool) for _ in range(fdp.ConsumeIntInRange(0, 10))]
    if fdp.ConsumeBool():
        try:
            lexicon = _api.Lexicon(lexicon, letters, kw["blank"])
        except ValueError:
            pass  # the words go in as a list: the call refuses them itself
    return lexicon


# ---------------------------------------------------------------------------------------------------
# the targets: one call each, from the fuzzer's bytes


def fuzz_decode_images(data: bytes) -> None:
    """Encoded bytes (one to three blobs) -> decode_images; what decodes goes on to both preprocess paths."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    count = fdp.ConsumeIntInRange(1, 3)
    blobs = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_BYTES)) for _ in range(count - 1)]
    blobs.append(fdp.ConsumeBytes(atheris.ALL_REMAINING))
    try:
        images = _api.native.decode_images(blobs, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)
    except ValueError:
        return
    for k, img in enumerate(images):
        ok = (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim in (2, 3) and img.size > 0
              and (img.ndim == 2 or img.shape[2] in (1, 3, 4)) and img.shape[0] * img.shape[1] <= MAX_PIXELS)
        if not ok:
            raise Mismatch(f"decode_images: image {k} is {getattr(img, 'dtype', type(img))} "
                           f"{getattr(img, 'shape', '')}, not a uint8 HxW or HxWx(1|3|4) within the limit")
    got, want = _both(lambda: _api.native.preprocess_batch(images, 32, 128),
                      lambda: _api.ref.preprocess_batch(images, 32, 128), "preprocess_batch(decode_images(...))")
    if got is None:
        raise Mismatch("preprocess_batch refused what decode_images returned")
    _same_pixels(got, want, "preprocess_batch(decode_images(...))")


def fuzz_preprocess_batch(data: bytes) -> None:
    """A batch of 0-4 items of any layout, size and dtype, any output size, binarisation, ``out`` and threads."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    images = [_image(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    height = fdp.ConsumeIntInRange(0, 80) if fdp.ConsumeIntInRange(0, 15) else fdp.PickValueInList([8193, -1, 2.0])
    width = fdp.ConsumeIntInRange(0, 300) if fdp.ConsumeIntInRange(0, 15) else fdp.PickValueInList([8193, -1, None])
    kw = {"binarize": _binarize(fdp), "max_pixels": fdp.PickValueInList([50_000_000, 5000, 1])}
    threads = fdp.ConsumeIntInRange(0, 3)
    use_out = fdp.ConsumeIntInRange(0, 3) == 0
    wrong_out = fdp.ConsumeBool()

    def out():  # a fresh one per call; only where the sizes are valid and small (8193 is refused unallocated)
        if not use_out or not all(isinstance(v, int) and 1 <= v <= 300 for v in (height, width)):
            return None
        shape = (len(images), 1, height, width + (1 if wrong_out else 0))
        return np.full(shape, 7.0, np.float32)

    if threads < 1:  # the reference accepts and ignores ``threads`` (its docstring): only the kernel refuses
        try:
            _api.native.preprocess_batch(images, height, width, out=out(), threads=threads, **kw)
        except ValueError:
            return
        raise Mismatch(f"preprocess_batch(threads={threads}) was not refused")
    got, want = _both(lambda: _api.native.preprocess_batch(images, height, width, out=out(), threads=threads, **kw),
                      lambda: _api.ref.preprocess_batch(images, height, width, out=out(), **kw),
                      f"preprocess_batch({height}, {width}, threads={threads}, {kw})")
    if got is not None:
        _same_pixels(got, want, f"preprocess_batch({height}, {width}, {kw})")


def fuzz_ctc_greedy_decode(data: bytes) -> None:
    """Any (N, T, C) floats, alphabet, blank, lengths and threads -> greedy decoding, kernel vs reference."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    logprobs = _logprobs(fdp)
    kw = _ctc_args(fdp, logprobs)
    what = f"ctc_greedy_decode({logprobs.dtype}{logprobs.shape}, blank={kw['blank']}, lengths={kw['lengths']})"
    got, want = _both(lambda: _api.native.ctc_greedy_decode(logprobs, **kw),
                      lambda: _api.ref.ctc_greedy_decode(logprobs, **kw), what)
    if got is not None:
        _same_reads(got, want, what)


def fuzz_ctc_beam_decode(data: bytes) -> None:
    """As the greedy target, plus beam width, pruning threshold and a lexicon (words or a built Lexicon)."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    logprobs = _logprobs(fdp)
    kw = _ctc_args(fdp, logprobs)
    kw["beam_width"] = fdp.ConsumeIntInRange(1, 12) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(-1, 0)
    kw["prune_logp"] = fdp.PickValueInList([-12.0, -3.0, -1.0, 0.0, -math.inf, math.inf, math.nan,
                                            fdp.ConsumeRegularFloat()])
    lexicon = _lexicon(fdp, kw)
    what = (f"ctc_beam_decode({logprobs.dtype}{logprobs.shape}, blank={kw['blank']}, lengths={kw['lengths']}, "
            f"beam_width={kw['beam_width']}, prune_logp={kw['prune_logp']}, lexicon={lexicon!r})")
    got, want = _both(lambda: _api.native.ctc_beam_decode(logprobs, lexicon=lexicon, **kw),
                      lambda: _api.ref.ctc_beam_decode(logprobs, lexicon=lexicon, **kw), what)
    if got is not None:
        _same_reads(got, want, what)


def _weight(fdp, usual: list[float]) -> object:
    """Mostly a usual value; sometimes any float (out of range: refused), NaN, an infinity or not a number."""
    if fdp.ConsumeIntInRange(0, 7):
        return fdp.PickValueInList(usual)
    return fdp.PickValueInList([fdp.ConsumeRegularFloat(), math.nan, -math.inf, 2e6, True, "1"])


def fuzz_ctc_beam_decode_name_model(data: bytes) -> None:
    """Beam search with a name model trained on fuzzer words (order 1-6, sometimes pruned, sometimes over
    another alphabet), any weights and bonuses, and a hard or soft lexicon."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    logprobs = _logprobs(fdp)
    kw = _ctc_args(fdp, logprobs)
    kw["beam_width"] = fdp.ConsumeIntInRange(1, 16) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(-1, 0)
    kw["prune_logp"] = fdp.PickValueInList([-12.0, -3.0, -1.0, -math.inf, fdp.ConsumeRegularFloat()])
    letters = "".join(kw["alphabet"])
    model = None
    if fdp.ConsumeIntInRange(0, 7):
        names = [_word(fdp, list(letters) or ["a"]) for _ in range(fdp.ConsumeIntInRange(1, 12))]
        lm_alphabet = letters if fdp.ConsumeIntInRange(0, 15) else letters + "!"  # another alphabet: refused
        try:
            model = _api.NameModel.train(names, lm_alphabet, order=fdp.ConsumeIntInRange(1, 6),
                                         min_context_count=fdp.ConsumeIntInRange(1, 3))
        except ValueError:  # a word outside the alphabet, an empty alphabet
            model = None
    elif fdp.ConsumeBool():
        model = "names_lm.npz"  # not a NameModel: refused
    kw["name_model"] = model
    kw["lm_weight"] = _weight(fdp, [0.0, 0.2, 0.5, 1.0, 4.0])
    kw["insertion_bonus"] = _weight(fdp, [0.0, -1.0, 0.5, 2.0])
    kw["lexicon_mode"] = fdp.PickValueInList(["hard", "soft", "soft", "Soft"])
    kw["lexicon_bonus"] = _weight(fdp, [0.0, 1.0, 2.0, -3.0, 50.0])
    lexicon = _lexicon(fdp, kw)
    what = (f"ctc_beam_decode({logprobs.dtype}{logprobs.shape}, blank={kw['blank']}, lengths={kw['lengths']}, "
            f"beam_width={kw['beam_width']}, prune_logp={kw['prune_logp']}, name_model={model!r}, "
            f"lm_weight={kw['lm_weight']!r}, insertion_bonus={kw['insertion_bonus']!r}, "
            f"lexicon_mode={kw['lexicon_mode']!r}, lexicon_bonus={kw['lexicon_bonus']!r}, lexicon={lexicon!r})")
    got, want = _both(lambda: _api.native.ctc_beam_decode(logprobs, lexicon=lexicon, **kw),
                      lambda: _api.ref.ctc_beam_decode(logprobs, lexicon=lexicon, **kw), what)
    if got is not None:
        _same_reads(got, want, what)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decode_images": fuzz_decode_images,
    "preprocess_batch": fuzz_preprocess_batch,
    "ctc_greedy_decode": fuzz_ctc_greedy_decode,
    "ctc_beam_decode": fuzz_ctc_beam_decode,
    "ctc_beam_decode_name_model": fuzz_ctc_beam_decode_name_model,
}


def seed_inputs(target: str) -> list[bytes]:
    """Small valid inputs to start the search from (decode_images: one tiny image per format)."""
    if target != "decode_images":
        return []
    import io

    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    seeds = [cv2.imencode(ext, bgr)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tiff")]
    rgb = Image.fromarray(bgr[:, :, ::-1])
    for mode, fmt in (("P", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("1", "PNG"), ("RGB", "GIF"), ("RGB", "WEBP")):
        out = io.BytesIO()
        rgb.convert(mode).save(out, fmt)
        seeds.append(out.getvalue())
    return [b"\x00" + s for s in seeds]  # count byte 0: one blob, the image


# ---------------------------------------------------------------------------------------------------
# running a target


def main(argv: list[str] | None = None) -> None:
    """``python -m htr.testing.fuzz_targets TARGET [libFuzzer flags] [corpus folders]``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m htr.testing.fuzz_targets {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus]")
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        _import()
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy on overflowing casts and sums: not a failure
    target = TARGETS[argv.pop(1)]
    atheris.Setup(argv, target)
    atheris.Fuzz()


@dataclass
class TargetRun:
    """One fuzzing run of a target: its exit status (0: no failure found), how long it took, its output."""

    target: str
    returncode: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def runs(self) -> int:
        """Inputs executed (libFuzzer's final "Done N runs"; 0 when it did not finish)."""
        m = re.search(r"Done (\d+) runs", self.output)
        return int(m.group(1)) if m else 0

    @property
    def coverage(self) -> int | None:
        """Python-level coverage features last reported ("cov: N")."""
        found = re.findall(r"cov: (\d+)", self.output)
        return int(found[-1]) if found else None

    @property
    def failing_inputs(self) -> list[str]:
        """The inputs libFuzzer wrote for a failure (crash-*, oom-*, timeout-*)."""
        return re.findall(r"Test unit written to (\S+)", self.output)


def run_target(target: str, seconds: float, workdir: Path, *, corpus: Path | None = None, seed: int = 1,
               max_len: int = 4096, rss_limit_mb: int = 2048, extra: tuple[str, ...] = ()) -> TargetRun:
    """Fuzz ``target`` for ``seconds`` in a subprocess (``HTR_PURE_PYTHON`` unset there). The corpus lives in
    ``corpus`` (default ``workdir/corpus-<target>``, seeded by :func:`seed_inputs`); a failing input is
    written to ``workdir`` (``crash-*``) and named in the output."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    workdir = Path(workdir)
    corpus = Path(corpus) if corpus is not None else workdir / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    for k, blob in enumerate(seed_inputs(target)):
        (corpus / f"seed-{k}").write_bytes(blob)
    cmd = [sys.executable, "-m", "htr.testing.fuzz_targets", target, f"-max_total_time={int(seconds)}",
           f"-seed={seed}", f"-max_len={max_len}", f"-rss_limit_mb={rss_limit_mb}", "-timeout=30",
           f"-artifact_prefix={workdir}/", "-print_final_stats=1", *extra, str(corpus)]
    env = {k: v for k, v in os.environ.items() if k != "HTR_PURE_PYTHON"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=seconds + 120)
    return TargetRun(target, proc.returncode, time.monotonic() - t0, proc.stdout)


if __name__ == "__main__":
    main()
