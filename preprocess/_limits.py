"""Input limits and the binarisation modes shared by the kernels and the reference."""

#: Largest image accepted (width * height), checked from the header before an image is decoded.
MAX_PIXELS = 50_000_000

#: Grey conversion, as OpenCV's ``COLOR_BGR2GRAY`` for uint8: Y = (R*9798 + G*19235 + B*3735 + 2^14) >> 15.
GREY_SHIFT = 15
GREY_R, GREY_G, GREY_B = 9798, 19235, 3735

#: ``binarize`` modes, encoded for the kernel.
MODE_NONE, MODE_THRESHOLD, MODE_OTSU = 0, 1, 2
