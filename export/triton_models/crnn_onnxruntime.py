import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from htr.config import HTRConfig
from htr.runtime.contract import CONFIG_KEY, LOGPROBS, PIXELS
from htr.runtime.stage import check_width, execute_batched, stage_config


class TritonPythonModel:
    """PIXELS (float32, N x 1 x H x W) -> LOGPROBS (float32, N x W/4 x C): the CRNN in ONNX Runtime on CPU.

    Serves the ONNX file export parity-checked (FP32) or its static INT8 (QDQ) quantisation, whichever
    ``export/build_engine.py --precision`` chose. ``intra_op_threads`` comes from the thread plan
    (``htr.threads``); spinning is off so that the pool does not burn a core the preprocess stage needs.
    Requests of the same shape run as one batch; a width over ``max_width`` is refused before the network runs
    (the CNN's activations grow with the width).
    """

    def initialize(self, args):
        stage = stage_config(args)
        self.cfg = stage.cfg
        self.max_width = stage.int_param("max_width", 0)  # 0: no limit
        path = stage.version_dir / stage.params.get("model_file", "model.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = stage.int_param("intra_op_threads", 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", stage.params.get("allow_spinning", "0"))
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if HTRConfig.from_json(meta[CONFIG_KEY]) != self.cfg:
            raise pb_utils.TritonModelException(f"{path} was exported with another config than config.pbtxt states")

    def execute(self, requests):
        return execute_batched(pb_utils, requests, (PIXELS,), self._run)  # grouped by (1, H, W)

    def _run(self, batch):
        pixels = batch[PIXELS]  # (N, 1, H, W)
        check_width(pixels, self.max_width)
        return {LOGPROBS: self.session.run([LOGPROBS], {PIXELS: pixels})[0]}  # (N, W/4, C)
