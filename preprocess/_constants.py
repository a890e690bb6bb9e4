"""Constants shared by the kernels and the reference: grey conversion and binarisation modes.

The size limit ``MAX_PIXELS`` is a serving limit: it lives in :mod:`htr.runtime.contract` and is re-exported
here for the kernels' argument checks.
"""
from htr.runtime.contract import MAX_PIXELS  # noqa: F401  (re-exported for _checks and the reference)

#: Grey conversion, as OpenCV's ``COLOR_BGR2GRAY`` for uint8: Y = (R*9798 + G*19235 + B*3735 + 2^14) >> 15.
GREY_SHIFT = 15
GREY_R, GREY_G, GREY_B = 9798, 19235, 3735

#: ``binarize`` modes, encoded for the kernel.
MODE_NONE, MODE_THRESHOLD, MODE_OTSU = 0, 1, 2
