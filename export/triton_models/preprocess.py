import ctypes

import numpy as np
import triton_python_backend_utils as pb_utils

from htr.preprocess import decode_images, preprocess_batch
from htr.runtime.contract import ERROR, IMAGE_BYTES, MAX_BYTES, MAX_PIXELS, MAX_REQUEST_BYTES, PIXELS
from htr.runtime.prometheus import InputMetrics
from htr.runtime.stage import RequestError, execute_batched, object_column, stage_config

# Once a batch has decoded an image this large (pixels), the freed memory is handed back to the OS: glibc
# keeps the heap that large decodes grew (a 20-megapixel colour image is 60 MB), so without this an
# instance's RSS stays at the size of its largest recent decodes. Real crops are ~10 kilopixels: never.
TRIM_AFTER_PIXELS = 1_000_000


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


class TritonPythonModel:
    """IMAGE_BYTES (encoded JPEG/PNG/...) -> PIXELS (float32, 1 x H x W) and ERROR per image.

    A bad image (corrupt, empty, too large) gets zero pixels and its reason in ERROR; the other images
    of the same request and batch are processed normally. Everything is batched across requests.
    Each image's size and ink ratio go to the input-drift histograms (``htr.runtime.prometheus``).

    Limits (``parameters``, written by ``export/build_engine.py --max-bytes/--max-pixels/--max-request-bytes``):
    ``max_bytes`` per encoded image and ``max_pixels`` per image (read from the header, before decoding)
    fail the item; ``max_request_bytes`` over all images of one request fails that request, before any of
    it is decoded. Images are decoded one at a time and preprocessed in chunks of at most ``max_pixels``
    decoded pixels, so a batch of large (allowed) images never sits in memory all at once, and the memory
    such a batch used is returned to the OS afterwards (``TRIM_AFTER_PIXELS``).
    """

    def initialize(self, args):
        stage = stage_config(args)
        self.cfg = stage.cfg
        self.max_pixels = stage.int_param("max_pixels", MAX_PIXELS)
        self.max_bytes = stage.int_param("max_bytes", MAX_BYTES)
        self.max_request_bytes = stage.int_param("max_request_bytes", MAX_REQUEST_BYTES)
        self.threads = stage.int_param("threads", 1)
        self.height, self.width = self.cfg.input.height, self.cfg.input.width
        self.metrics = InputMetrics(pb_utils, stage.name, stage.version)
        self.malloc_trim = _malloc_trim()

    def execute(self, requests):
        self.refused = 0  # images of requests refused as a whole, counted by _check
        responses = execute_batched(pb_utils, requests, (IMAGE_BYTES,), self._run, check=self._check,
                                    group_by=lambda arrays: None)  # every request's images in one batch
        if self.refused:
            self.metrics.record_failures(self.refused)
        return responses

    def _check(self, arrays) -> None:
        """Refuse a whole request whose images together are over max_request_bytes, before decoding any."""
        arr = arrays[IMAGE_BYTES].reshape(-1)
        size = sum(len(b) for b in arr)
        if size > self.max_request_bytes:
            self.refused += arr.shape[0]
            raise RequestError(
                f"request carries {size} bytes in {len(arr)} image(s), over the limit of {self.max_request_bytes} "
                "bytes per request (max_request_bytes): send fewer images per request, or raise the limit with "
                "export/build_engine.py --max-request-bytes")

    def _run(self, batch):
        blobs = batch[IMAGE_BYTES].reshape(-1).tolist()
        pixels, errors, largest = self._read(blobs)
        if largest >= TRIM_AFTER_PIXELS and self.malloc_trim is not None:
            self.malloc_trim(0)  # the decoded images are gone with _read's frame
        self.metrics.record_failures(sum(1 for e in errors if e))
        return {PIXELS: pixels, ERROR: object_column(errors)}

    def _read(self, blobs):
        """Decode and preprocess ``blobs``: (pixels (N, 1, H, W), errors, the largest image's pixel count).
        A bad blob fails alone."""
        pixels = np.zeros((len(blobs), 1, self.height, self.width), np.float32)
        errors = [""] * len(blobs)
        chunk, chunk_pixels, largest = [], 0, 0  # chunk: (index, decoded image) waiting for preprocess_batch
        for k, blob in enumerate(blobs):
            try:
                image = decode_images([blob], self.max_pixels, self.max_bytes)[0]
            except ValueError as e:
                errors[k] = str(e).replace("image 0: ", "", 1)
                continue
            chunk.append((k, image))
            chunk_pixels += image.shape[0] * image.shape[1]
            largest = max(largest, image.shape[0] * image.shape[1])
            if chunk_pixels >= self.max_pixels:  # bound the decoded pixels held at once
                self._preprocess(chunk, pixels, errors)
                chunk, chunk_pixels = [], 0
        if chunk:
            self._preprocess(chunk, pixels, errors)
        return pixels, errors, largest

    def _preprocess(self, chunk, pixels, errors) -> None:
        index, images = [k for k, _ in chunk], [image for _, image in chunk]
        try:
            batch = preprocess_batch(images, self.height, self.width, self.cfg.input.binarize,
                                     threads=self.threads, max_pixels=self.max_pixels)
        except ValueError as e:  # should not happen after decoding; fail the items, not the server
            for k in index:
                errors[k] = f"preprocessing failed: {e}"
            return
        pixels[index] = batch
        self.metrics.record(images, (batch > 0.5).mean(axis=(1, 2, 3)))  # ink = 1
