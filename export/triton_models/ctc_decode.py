import numpy as np
import triton_python_backend_utils as pb_utils

from htr.ctc_decoder import CTCDecoder
from htr.runtime.contract import CONFIDENCE, ERROR, INPUT_ERROR, LOGPROBS, TEXT
from htr.runtime.prometheus import PredictionMetrics
from htr.runtime.stage import RequestError, execute_batched, object_column, stage_config


class TritonPythonModel:
    """LOGPROBS (N x T x C) [+ INPUT_ERROR] -> TEXT, CONFIDENCE and ERROR per item.

    ``parameters``: ``decoder`` greedy | beam, ``beam_width``, ``lexicon_file`` (in the version folder;
    constrains beam search to its entries), ``name_model_file`` (in the version folder: the checkpoint's
    name model, guiding the beam search with ``lm_weight`` and ``insertion_bonus``). Items whose upstream step failed (INPUT_ERROR) or whose
    log-probabilities are not finite get an empty text, confidence 0 and the reason in ERROR.
    """

    def initialize(self, args):
        stage = stage_config(args)
        self.cfg = stage.cfg
        lexicon = None
        if stage.params.get("lexicon_file"):
            path = stage.version_dir / stage.params["lexicon_file"]
            lexicon = [w for w in path.read_text(encoding="utf-8").splitlines() if w]
        name_model = None
        if stage.params.get("name_model_file"):
            name_model = stage.version_dir / stage.params["name_model_file"]
        try:
            self.codec = CTCDecoder(self.cfg, stage.params.get("decoder", "greedy"), stage.int_param("beam_width", 10),
                                    lexicon, name_model=name_model,
                                    lm_weight=float(stage.params.get("lm_weight") or 0.0),
                                    insertion_bonus=float(stage.params.get("insertion_bonus") or 0.0))
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from e
        self.metrics = PredictionMetrics(pb_utils, stage.name, stage.version)

    def execute(self, requests):
        no_error = lambda n: np.full((n, 1), b"", dtype=np.object_)  # noqa: E731
        return execute_batched(pb_utils, requests, (LOGPROBS, INPUT_ERROR), self._decode,
                               optional={INPUT_ERROR: no_error})

    def _decode(self, batch):
        logprobs, upstream = batch[LOGPROBS], batch[INPUT_ERROR].reshape(-1)
        if logprobs.shape[-1] != self.cfg.num_classes:
            raise RequestError(f"LOGPROBS has {logprobs.shape[-1]} classes, the model's alphabet needs "
                               f"{self.cfg.num_classes}")
        texts, confs, errors = [], [], []
        for (text, conf, err), up in zip(self.codec.decode_items(logprobs), upstream):
            up = up.decode() if isinstance(up, bytes) else str(up)
            if up:  # the image never reached the network: report why, not what its zeros decode to
                text, conf, err = "", 0.0, up
            texts.append(text)
            confs.append(conf)
            errors.append(err)
        ok = [k for k, e in enumerate(errors) if not e]
        self.metrics.record([texts[k] for k in ok], [confs[k] for k in ok])
        n = len(texts)
        return {TEXT: object_column(texts), CONFIDENCE: np.array(confs, np.float32).reshape(n, 1),
                ERROR: object_column(errors)}
