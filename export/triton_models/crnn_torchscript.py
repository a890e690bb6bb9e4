import torch
import triton_python_backend_utils as pb_utils

from htr.config import HTRConfig
from htr.runtime.contract import CONFIG_KEY, LOGPROBS, PIXELS
from htr.runtime.stage import check_width, execute_batched, stage_config


class TritonPythonModel:
    """PIXELS (float32, N x 1 x H x W) -> LOGPROBS (float32, N x W/4 x C): the CRNN in TorchScript on CPU.

    The CPU stand-in for the GPU variant (TensorRT / libtorch / ONNX Runtime backends) of the same
    repository. Requests of the same width are run as one batch. A width over ``max_width`` (the parameter
    written from ``export/build_engine.py --max-width``, the TensorRT profile's maximum on the GPU variant)
    is refused before the network runs: the CNN's activations grow with the width (for the shipped model, 64
    images 65536 pixels wide would need some 17 GB for the first layer's output alone).
    """

    def initialize(self, args):
        stage = stage_config(args)
        self.cfg = stage.cfg
        torch.set_num_threads(stage.int_param("torch_threads", 1))
        self.max_width = stage.int_param("max_width", 0)  # 0: no limit
        path = stage.version_dir / stage.params.get("model_file", "model.pt")
        extra = {f"{CONFIG_KEY}.json": ""}
        self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        if HTRConfig.from_json(extra[f"{CONFIG_KEY}.json"]) != self.cfg:
            raise pb_utils.TritonModelException(f"{path} was exported with another config than config.pbtxt states")
        with torch.inference_mode():  # first call compiles/optimises the scripted graph
            self.module(torch.zeros(1, 1, self.cfg.input.height, self.cfg.input.width))

    def execute(self, requests):
        return execute_batched(pb_utils, requests, (PIXELS,), self._run)  # grouped by (1, H, W)

    def _run(self, batch):
        pixels = batch[PIXELS]  # (N, 1, H, W)
        check_width(pixels, self.max_width)
        with torch.inference_mode():
            return {LOGPROBS: self.module(torch.from_numpy(pixels)).numpy()}  # (N, W/4, C)
