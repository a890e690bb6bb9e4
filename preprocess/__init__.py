"""Fast image preprocessing (before the network) and CTC decoding (after it).

Public API (stable names, called by training, serving, the client and outside checks):

- :func:`decode_images`     encoded JPEG/PNG/BMP/TIFF bytes -> uint8 arrays
- :func:`preprocess_batch`  uint8 arrays -> float32 ``(N, 1, H, W)`` network input
- :func:`ctc_greedy_decode` ``(N, T, C)`` log-probabilities -> ``[(text, confidence)]``
- :func:`ctc_beam_decode`   CTC prefix beam search, optionally guided by a name model and a lexicon
- :class:`Lexicon`          a lexicon compiled once into a trie, reusable across calls
- :class:`NameModel`        a character n-gram model of names (open vocabulary), saved as one ``.npz``

Each is a Cython kernel behind a Python wrapper that validates arguments; ``htr.preprocess.reference``
holds plain NumPy/OpenCV versions with the same signatures. ``HTR_PURE_PYTHON=1`` selects them.
"""
from ._backend import PURE_PYTHON
from .ctc import Lexicon, NameModel, ctc_beam_decode, ctc_greedy_decode
from .image import decode_images, preprocess_batch

__all__ = [
    "PURE_PYTHON",
    "Lexicon",
    "NameModel",
    "ctc_beam_decode",
    "ctc_greedy_decode",
    "decode_images",
    "preprocess_batch",
]
