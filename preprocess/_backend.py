"""Which implementation the public functions use.

``HTR_PURE_PYTHON=1`` in the environment (read once, at import) routes every public function in
``htr.preprocess`` to the plain NumPy/OpenCV reference in ``htr.preprocess.reference``. The test suite
runs both ways; the reference is also the fallback users can read to understand the kernels.
"""
import os

PURE_PYTHON = os.environ.get("HTR_PURE_PYTHON", "").strip().lower() in {"1", "true", "yes", "on"}
