"""Plain NumPy/OpenCV reference implementations of every public ``htr.preprocess`` function.

Same signatures, same results (to float32 rounding for images, exactly for decoding); slow but
readable. The test suite runs each case against both; ``HTR_PURE_PYTHON=1`` makes the public
functions use these.
"""
from .ctc import Lexicon, NameModel, ctc_beam_decode, ctc_greedy_decode
from .image import decode_images, preprocess_batch

__all__ = ["Lexicon", "NameModel", "ctc_beam_decode", "ctc_greedy_decode", "decode_images", "preprocess_batch"]
