# Inline helpers of the image kernels (see _image.pyx), cimported as `from _imgmath cimport ...`. Formulas mirror reference/image.py.
from libc.math cimport ceil, floor


cdef inline unsigned char bgr_to_grey(unsigned char b, unsigned char g, unsigned char r) noexcept nogil:
    # OpenCV's fixed-point COLOR_BGR2GRAY for uint8 (weights sum to 2^15)
    return <unsigned char>((b * 3735 + g * 19235 + r * 9798 + (1 << 14)) >> 15)


cdef inline unsigned char over_white(unsigned char grey, unsigned char alpha) noexcept nogil:
    # composite over a white page: a transparent pixel is paper, not ink
    return <unsigned char>((grey * alpha + 255 * (255 - alpha) + 127) // 255)


cdef inline int clamp_int(int v, int lo, int hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef inline double dmin(double a, double b) noexcept nogil:
    return a if a < b else b


cdef inline float at_most_one(float v) noexcept nogil:
    # float rounding of a weighted mean of values <= 1 can overshoot by an ulp; branch-free (minss)
    return v if v < 1.0 else 1.0
