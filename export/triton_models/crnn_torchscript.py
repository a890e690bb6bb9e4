# The python-backend stub embeds the system libpython and ignores PYTHONPATH; `htr serve` passes the
# project's site-packages in HTR_SITE_PACKAGES (os.environ reaches the stub). Must run before imports.
import os
import site

for _path in filter(None, os.environ.get("HTR_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from htr.config import HTRConfig  # noqa: E402


class TritonPythonModel:
    """PIXELS (float32, N x 1 x H x W) -> LOGPROBS (float32, N x W/4 x C): the CRNN in TorchScript on CPU.

    The CPU stand-in for the GPU variant (TensorRT / libtorch / ONNX Runtime backends) of the same
    repository. Requests of the same width are run as one batch. A width over ``max_width`` (the parameter
    written from ``export/build_engine.py --max-width``, the TensorRT profile's maximum on the GPU variant)
    is refused before the network runs: the CNN's activations grow with the width (for the shipped model, 64
    images 65536 pixels wide would need some 17 GB for the first layer's output alone).
    """

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.cfg = HTRConfig.from_json(params["htr_config"])
        torch.set_num_threads(int(params.get("torch_threads", 1)))
        self.max_width = int(params.get("max_width", 0))  # 0: no limit
        path = Path(args["model_repository"]) / args["model_version"] / params.get("model_file", "model.pt")
        extra = {"htr_config.json": ""}
        self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        stored = HTRConfig.from_json(extra["htr_config.json"])
        if stored != self.cfg:
            raise pb_utils.TritonModelException(f"{path} was exported with another config than config.pbtxt states")
        with torch.inference_mode():  # first call compiles/optimises the scripted graph
            self.module(torch.zeros(1, 1, self.cfg.input.height, self.cfg.input.width))

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        outputs = [None] * len(requests)
        by_width = {}
        for i, a in enumerate(arrays):
            by_width.setdefault(a.shape[-1], []).append(i)
        for width, idx in by_width.items():
            if width < 4:
                for i in idx:
                    outputs[i] = pb_utils.TritonError(f"PIXELS width {width} is below the minimum of 4")
                continue
            if self.max_width and width > self.max_width:
                for i in idx:
                    outputs[i] = pb_utils.TritonError(
                        f"PIXELS width {width} is over the limit of {self.max_width} (crnn parameter max_width; "
                        "raise it with export/build_engine.py --max-width)")
                continue
            batch = torch.from_numpy(np.concatenate([arrays[i] for i in idx]))
            with torch.inference_mode():
                logprobs = self.module(batch).numpy()
            start = 0
            for i in idx:
                n = arrays[i].shape[0]
                outputs[i] = logprobs[start : start + n]
                start += n
        return [
            pb_utils.InferenceResponse(error=o) if isinstance(o, pb_utils.TritonError)
            else pb_utils.InferenceResponse([pb_utils.Tensor("LOGPROBS", o)])
            for o in outputs
        ]
