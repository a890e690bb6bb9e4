# Inline helpers of the CTC kernels (see _ctc.pyx), cimported as `from _ctcmath cimport ...`.
# Formulas mirror reference/ctc.py operation for operation, so both give bit-identical doubles.
from libc.math cimport INFINITY, exp, log1p
from libc.stdint cimport INT32_MIN, int32_t


cdef inline double logaddexp(double a, double b) noexcept nogil:
    # log(exp(a) + exp(b)); -inf is the log of zero probability
    if a == -INFINITY:
        return b
    if b == -INFINITY:
        return a
    if a >= b:
        return a + log1p(exp(b - a))
    return b + log1p(exp(a - b))


cdef union FloatBits:
    float f
    int32_t i


cdef inline Py_ssize_t row_argmax(const float* row, Py_ssize_t n, float* best) noexcept nogil:
    # Index of the first maximum of row[0:n] (n >= 1), its value in *best; -1 if the row holds a NaN
    # or an infinity (all exponent bits set). Two branch-free passes the compiler vectorises: the max
    # over the floats' bits mapped to order-preserving int32 keys (b for b >= 0, b ^ 0x7fffffff for
    # negative b; the map is its own inverse), then the first index equal to it (-0.0 == 0.0, so ties
    # resolve exactly as a `>` scan would).
    cdef FloatBits u
    cdef int32_t b, key, kmax = INT32_MIN
    cdef int special = 0
    cdef Py_ssize_t i
    for i in range(n):
        u.f = row[i]
        b = u.i
        special |= (b & 0x7f800000) == 0x7f800000
        key = b ^ ((b >> 31) & 0x7fffffff)
        kmax = key if key > kmax else kmax
    if special:
        return -1
    u.i = kmax ^ ((kmax >> 31) & 0x7fffffff)
    for i in range(n):
        if row[i] == u.f:
            best[0] = row[i]
            return i
    return -1


cdef inline Py_ssize_t first_nonfinite(const float* row, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if (row[i] - row[i]) != 0.0:
            return i
    return 0
