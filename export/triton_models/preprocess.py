# The python-backend stub embeds the system libpython and ignores PYTHONPATH; `htr serve` passes the
# project's site-packages in HTR_SITE_PACKAGES (os.environ reaches the stub). Must run before imports.
import os
import site

for _path in filter(None, os.environ.get("HTR_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)

import json  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from htr.config import HTRConfig  # noqa: E402
from htr.export.triton_metrics import InputMetrics  # noqa: E402
from htr.preprocess import decode_images, preprocess_batch  # noqa: E402


class TritonPythonModel:
    """IMAGE_BYTES (encoded JPEG/PNG/...) -> PIXELS (float32, 1 x H x W) and ERROR per image.

    A bad image (corrupt, empty, too large) gets zero pixels and its reason in ERROR; the other images
    of the same request and batch are processed normally. Everything is batched across requests.
    Each image's size and ink ratio go to the input-drift histograms (``htr.export.triton_metrics``).
    """

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.cfg = HTRConfig.from_json(params["htr_config"])
        self.max_pixels = int(params.get("max_pixels", 50_000_000))
        self.max_bytes = int(params.get("max_bytes", 32 * 1024 * 1024))
        self.threads = int(params.get("threads", 1))
        self.height, self.width = self.cfg.input.height, self.cfg.input.width
        self.logger = pb_utils.Logger
        self.metrics = InputMetrics(pb_utils, args["model_name"], args["model_version"])

    def _decode(self, blobs):
        """All images at once; on any failure, one by one so only the bad ones are dropped."""
        try:
            return decode_images(blobs, self.max_pixels, self.max_bytes), [""] * len(blobs)
        except ValueError:
            pass
        images, errors = [], []
        for blob in blobs:
            try:
                images.append(decode_images([blob], self.max_pixels, self.max_bytes)[0])
                errors.append("")
            except ValueError as e:
                images.append(None)
                errors.append(str(e).replace("image 0: ", "", 1))
        return images, errors

    def execute(self, requests):
        blobs, counts, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE_BYTES")
            if tensor is None:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError("missing input IMAGE_BYTES"))
                counts.append(0)
                continue
            arr = tensor.as_numpy().reshape(-1)
            blobs.extend(arr.tolist())
            counts.append(arr.shape[0])
        images, errors = self._decode(blobs)
        good = [k for k, img in enumerate(images) if img is not None]
        pixels = np.zeros((len(images), 1, self.height, self.width), np.float32)
        if good:
            try:
                batch = preprocess_batch([images[k] for k in good], self.height, self.width,
                                         self.cfg.input.binarize, threads=self.threads, max_pixels=self.max_pixels)
                pixels[good] = batch
                self.metrics.record([images[k] for k in good], (batch > 0.5).mean(axis=(1, 2, 3)))  # ink = 1
            except ValueError as e:  # should not happen after decoding; fail the items, not the server
                for k in good:
                    errors[k] = f"preprocessing failed: {e}"
        self.metrics.record_failures(sum(1 for e in errors if e))
        start = 0
        for i, n in enumerate(counts):
            if responses[i] is not None:
                continue
            err = np.array([e.encode() for e in errors[start : start + n]], dtype=np.object_).reshape(n, 1)
            responses[i] = pb_utils.InferenceResponse([
                pb_utils.Tensor("PIXELS", pixels[start : start + n]),
                pb_utils.Tensor("ERROR", err),
            ])
            start += n
        return responses
