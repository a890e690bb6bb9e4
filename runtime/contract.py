"""The serving contract: model names, tensor names, config keys and size limits, stated once.

Export writes these into the model repository, every ``model.py`` reads them, the client and the load test
address the server with them. Torch-free and dependency-free: it is part of the serving runtime set.
A limit's default lives here and nowhere else; ``export/build_engine.py --max-*`` overrides it per repository.
"""
from __future__ import annotations

# -- models of the repository: the ensemble ENSEMBLE = PREPROCESS -> CRNN -> CTC_DECODE
ENSEMBLE = "htr"
PREPROCESS = "preprocess"
CRNN = "crnn"
CTC_DECODE = "ctc_decode"
MODELS = (PREPROCESS, CRNN, CTC_DECODE, ENSEMBLE)  # load order: the ensemble needs its steps

# -- tensors, named by meaning (shapes without the batch axis)
IMAGE_BYTES = "IMAGE_BYTES"  # BYTES [1]: one encoded image (JPEG/PNG/BMP/TIFF)
PIXELS = "PIXELS"  # FP32 [1, H, W]: the network input (ink = 1)
LOGPROBS = "LOGPROBS"  # FP32 [T, C]: CTC log-probabilities, T = W / 4
TEXT = "TEXT"  # BYTES [1]: the read text (UTF-8)
CONFIDENCE = "CONFIDENCE"  # FP32 [1]: the read's probability
ERROR = "ERROR"  # BYTES [1]: why this item failed, empty when it did not
INPUT_ERROR = "INPUT_ERROR"  # BYTES [1], optional: an upstream step's ERROR, passed to ctc_decode

# -- config.pbtxt parameters and artifact metadata
CONFIG_KEY = "htr_config"  # the HTRConfig JSON, in every artifact and every config under this name

# -- environment the server passes to the python-backend stub (it ignores PYTHONPATH)
SITE_PACKAGES_ENV = "HTR_SITE_PACKAGES"

# -- size limits, each checked inside the served models; a refusal fails that item or request only
MAX_BYTES = 8 * 1024 * 1024  # one encoded image, bytes
MAX_PIXELS = 50_000_000  # one image, width x height, read from its header before decoding
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # all encoded images of one request together, bytes
MAX_WIDTH = 1024  # widest PIXELS the CPU crnn accepts (the TensorRT profile's maximum on a GPU)
