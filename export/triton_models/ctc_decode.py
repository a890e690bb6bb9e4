# The python-backend stub embeds the system libpython and ignores PYTHONPATH; `htr serve` passes the
# project's site-packages in HTR_SITE_PACKAGES (os.environ reaches the stub). Must run before imports.
import os
import site

for _path in filter(None, os.environ.get("HTR_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from htr.config import HTRConfig  # noqa: E402
from htr.decoding import CTCDecoder  # noqa: E402
from htr.export.triton_metrics import PredictionMetrics  # noqa: E402


class TritonPythonModel:
    """LOGPROBS (N x T x C) [+ INPUT_ERROR] -> TEXT, CONFIDENCE and ERROR per item.

    ``parameters``: ``decoder`` greedy | beam, ``beam_width``, ``lexicon_file`` (in the version folder;
    constrains beam search to its entries). Items whose upstream step failed (INPUT_ERROR) or whose
    log-probabilities are not finite get an empty text, confidence 0 and the reason in ERROR.
    """

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.cfg = HTRConfig.from_json(params["htr_config"])
        lexicon = None
        if params.get("lexicon_file"):
            path = Path(args["model_repository"]) / args["model_version"] / params["lexicon_file"]
            lexicon = [w for w in path.read_text(encoding="utf-8").splitlines() if w]
        try:
            self.codec = CTCDecoder(self.cfg, params.get("decoder", "greedy"), int(params.get("beam_width", 10)),
                                    lexicon)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from e
        self.metrics = PredictionMetrics(pb_utils, args["model_name"], args["model_version"])

    def execute(self, requests):
        arrays, upstream = [], []
        for r in requests:
            arrays.append(pb_utils.get_input_tensor_by_name(r, "LOGPROBS").as_numpy())
            err = pb_utils.get_input_tensor_by_name(r, "INPUT_ERROR")
            n = arrays[-1].shape[0]
            upstream.append([b"" for _ in range(n)] if err is None else err.as_numpy().reshape(-1).tolist())
        results = [None] * len(requests)
        by_frames = {}
        for i, a in enumerate(arrays):
            by_frames.setdefault(a.shape[1:], []).append(i)
        for shape, idx in by_frames.items():
            if shape[-1] != self.cfg.num_classes:
                for i in idx:
                    results[i] = pb_utils.TritonError(
                        f"LOGPROBS has {shape[-1]} classes, the model's alphabet needs {self.cfg.num_classes}")
                continue
            decoded = self.codec.decode_items(np.concatenate([arrays[i] for i in idx]))
            start = 0
            for i in idx:
                n = arrays[i].shape[0]
                results[i] = decoded[start : start + n]
                start += n
        responses = []
        for i, res in enumerate(results):
            if isinstance(res, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(error=res))
                continue
            texts, confs, errors, ok_texts, ok_confs = [], [], [], [], []
            for (text, conf, err), up in zip(res, upstream[i]):
                up = up.decode() if isinstance(up, bytes) else str(up)
                if up:
                    text, conf, err = "", 0.0, up
                elif not err:
                    ok_texts.append(text)
                    ok_confs.append(conf)
                texts.append(text.encode())
                confs.append(conf)
                errors.append(err.encode())
            self.metrics.record(ok_texts, ok_confs)
            n = len(texts)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TEXT", np.array(texts, dtype=np.object_).reshape(n, 1)),
                pb_utils.Tensor("CONFIDENCE", np.array(confs, dtype=np.float32).reshape(n, 1)),
                pb_utils.Tensor("ERROR", np.array(errors, dtype=np.object_).reshape(n, 1)),
            ]))
        return responses
