# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Image kernel: grey -> binarise -> aspect-preserving resize -> pad, one image per prange iteration.

Arguments are validated by the Python wrapper (``htr.preprocess.image``); this module trusts them.
Per image, with (h, w) the input and (H, W) the output:

1. grey: BGR/BGRA -> uint8 (OpenCV weights; alpha composited over white), read in place for grey input;
2. a 256-entry table maps grey level -> value, ink 1.0 / paper 0.0 (Otsu or fixed threshold), or
   (255 - g) / 255 without binarisation; Otsu's threshold uses OpenCV's double arithmetic;
3. separable resize to the largest aspect-preserving (nh, nw): area weights when shrinking, bilinear
   when growing; horizontal pass into a (h, nw) scratch, vertical pass into the output;
4. left-aligned, vertically centred, padded with background 0.0.
"""
from cython.parallel cimport prange
from libc.math cimport ceil, floor
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from _imgmath cimport at_most_one, bgr_to_grey, clamp_int, dmin, over_white


DEF MODE_NONE = 0
DEF MODE_THRESHOLD = 1
DEF MODE_OTSU = 2


cdef struct Taps:
    int* start    # (m,) first source index of each output sample
    int* count    # (m,) number of source samples
    float* w      # (m, k) weights
    int k         # row stride of w
    int kmax      # taps actually used: every output reads exactly kmax samples (zero weights pad)


cdef void free_taps(Taps* t) noexcept nogil:
    free(t.start)
    free(t.count)
    free(t.w)


cdef int make_taps(int n, int m, Taps* t) noexcept nogil:
    """Per-axis resampling taps n -> m; same formulas as reference.resize_weights. 0 ok, -1 no memory."""
    cdef int i, j, s1, s2, j0
    cdef double inv = <double>n / m, f1, f2, cell, src, f
    t.k = 1 if m == n else (<int>ceil(inv) + 2 if m < n else 2)
    t.start = <int*>malloc(m * sizeof(int))
    t.count = <int*>malloc(m * sizeof(int))
    t.w = <float*>malloc(m * t.k * sizeof(float))
    if t.start == NULL or t.count == NULL or t.w == NULL:
        return -1
    memset(t.w, 0, m * t.k * sizeof(float))
    for i in range(m):
        if m == n:
            t.start[i] = i
            t.count[i] = 1
            t.w[i] = 1.0
        elif m < n:  # area (OpenCV INTER_AREA table)
            f1 = i * inv
            f2 = f1 + inv
            cell = dmin(inv, n - f1)
            s2 = <int>floor(f2)
            if s2 > n - 1:
                s2 = n - 1
            s1 = <int>ceil(f1)
            if s1 > s2:
                s1 = s2
            t.start[i] = s1 - 1 if s1 - f1 > 1e-3 else s1
            if s1 - f1 > 1e-3:
                t.w[i * t.k] = <float>((s1 - f1) / cell)
            for j in range(s1, s2):
                t.w[i * t.k + j - t.start[i]] = <float>(1.0 / cell)
            t.count[i] = s2 - t.start[i]
            if f2 - s2 > 1e-3:
                t.w[i * t.k + s2 - t.start[i]] += <float>(dmin(dmin(f2 - s2, 1.0), cell) / cell)
                t.count[i] = s2 - t.start[i] + 1
        else:  # bilinear, half-pixel centres (OpenCV INTER_LINEAR)
            src = (i + 0.5) * inv - 0.5
            j0 = <int>floor(src)
            f = src - j0
            if j0 < 0:
                j0 = 0
                f = 0.0
            if j0 >= n - 1:
                j0 = n - 1
                f = 0.0
            t.start[i] = j0
            t.w[i * t.k] = <float>(1.0 - f)
            t.count[i] = 1
            if f > 0:
                t.w[i * t.k + 1] = <float>f
                t.count[i] = 2
    # Give every output the same number of taps so the inner loops have a fixed trip count
    # (a count alternating 2/3 across outputs costs a branch miss per sample). Outputs whose window
    # would run past the end are shifted left, their weights right; the extra weights are zero.
    t.kmax = 1
    for i in range(m):
        if t.count[i] > t.kmax:
            t.kmax = t.count[i]
    for i in range(m):
        j0 = t.start[i] + t.kmax - n
        if j0 > 0:
            for j in range(t.count[i] - 1, -1, -1):
                t.w[i * t.k + j + j0] = t.w[i * t.k + j]
            for j in range(j0):
                t.w[i * t.k + j] = 0.0
            t.start[i] -= j0
        t.count[i] = t.kmax
    return 0


cdef int otsu(const unsigned char* g, Py_ssize_t size) noexcept nogil:
    """Otsu's threshold: the level t maximising the between-class variance of {<= t} and {> t}.

    Written with exact integer cumulative sums, sigma_b(t) ~ (N*S_t - T*n_t)^2 / (n_t * (N - n_t)),
    so each level is scored independently (no loop-carried division chain). The maximiser is
    OpenCV's THRESH_OTSU level (the test suite checks it on real images); ties go to the lowest t.
    """
    cdef Py_ssize_t p
    cdef int i, best = 0
    cdef unsigned int[4][256] sub  # four interleaved histograms break the store->load chain on one bin
    cdef long long hist_i, n = 0, S = 0, T = 0, N = size
    cdef double num, val, best_val = -1.0
    memset(sub, 0, sizeof(sub))
    p = 0
    while p + 4 <= size:
        sub[0][g[p]] += 1
        sub[1][g[p + 1]] += 1
        sub[2][g[p + 2]] += 1
        sub[3][g[p + 3]] += 1
        p += 4
    while p < size:
        sub[0][g[p]] += 1
        p += 1
    for i in range(256):
        sub[0][i] += sub[1][i] + sub[2][i] + sub[3][i]
        T += i * <long long>sub[0][i]
    for i in range(256):
        hist_i = sub[0][i]
        n += hist_i
        S += i * hist_i
        if n == 0 or n == N:
            continue
        num = <double>(N * S - T * n)
        val = num * num / (<double>n * <double>(N - n))
        if val > best_val:
            best_val = val
            best = i
    return best


cdef int process_one(const unsigned char* src, int h, int w, int c, float* dst, int H, int W,
                     int mode, int threshold) noexcept nogil:
    """One image into dst (H*W floats). Returns 0, or -1 when out of memory."""
    cdef Py_ssize_t p, npx = <Py_ssize_t>h * w
    cdef int x, y, k, t = 0, nh, nw, top, status = 0
    cdef double s
    cdef float acc, wk
    cdef float inv255 = <float>(1.0 / 255.0)
    cdef unsigned char* grey_buf = NULL
    cdef const unsigned char* g
    cdef const unsigned char* row
    cdef float* tmp = NULL
    cdef float* vals = NULL
    cdef float* trow
    cdef const float* wx
    cdef const float* vx
    cdef float* out_row
    cdef Taps tx, ty
    tx.start = NULL; tx.count = NULL; tx.w = NULL
    ty.start = NULL; ty.count = NULL; ty.w = NULL

    # 1. grey
    if c == 1:
        g = src
    else:
        grey_buf = <unsigned char*>malloc(npx)
        if grey_buf == NULL:
            return -1
        if c == 3:
            for p in range(npx):
                grey_buf[p] = bgr_to_grey(src[3 * p], src[3 * p + 1], src[3 * p + 2])
        else:
            for p in range(npx):
                grey_buf[p] = over_white(bgr_to_grey(src[4 * p], src[4 * p + 1], src[4 * p + 2]), src[4 * p + 3])
        g = grey_buf

    # 2. grey level -> value: ink 1.0, paper 0.0 (an arithmetic map rather than a table, so it vectorises)
    if mode != MODE_NONE:
        t = otsu(g, npx) if mode == MODE_OTSU else threshold

    # 3. resize: table values (h, w) -> vertical pass (nh, w) -> horizontal pass into the canvas (nh, nw).
    # The vertical pass runs along contiguous rows (vectorised); the horizontal one reads kmax taps.
    s = dmin(<double>H / h, <double>W / w)
    nh = clamp_int(<int>(h * s + 0.5), 1, H)
    nw = clamp_int(<int>(w * s + 0.5), 1, W)
    vals = <float*>malloc(npx * sizeof(float))
    tmp = <float*>malloc(<Py_ssize_t>nh * w * sizeof(float))
    if vals == NULL or tmp == NULL or make_taps(w, nw, &tx) != 0 or make_taps(h, nh, &ty) != 0:
        status = -1
    else:
        if mode == MODE_NONE:
            for p in range(npx):
                vals[p] = <float>(255 - g[p]) * inv255
        else:
            for p in range(npx):
                vals[p] = 1.0 if g[p] <= t else 0.0
        for y in range(nh):  # vertical: (h, w) -> (nh, w)
            trow = tmp + <Py_ssize_t>y * w
            wk = ty.w[y * ty.k]
            vx = vals + <Py_ssize_t>ty.start[y] * w
            for x in range(w):
                trow[x] = wk * vx[x]
            for k in range(1, ty.kmax):
                wk = ty.w[y * ty.k + k]
                vx = vals + <Py_ssize_t>(ty.start[y] + k) * w
                for x in range(w):
                    trow[x] = trow[x] + wk * vx[x]
        # 4. horizontal into the centred band of the canvas; everything else is background 0.0
        top = (H - nh) // 2
        memset(dst, 0, <Py_ssize_t>top * W * sizeof(float))
        memset(dst + <Py_ssize_t>(top + nh) * W, 0, <Py_ssize_t>(H - top - nh) * W * sizeof(float))
        for y in range(nh):
            out_row = dst + <Py_ssize_t>(top + y) * W
            trow = tmp + <Py_ssize_t>y * w
            if tx.kmax == 2:  # the usual cases, unrolled: a fixed, short dot product per output
                for x in range(nw):
                    wx = tx.w + x * tx.k
                    vx = trow + tx.start[x]
                    out_row[x] = at_most_one(wx[0] * vx[0] + wx[1] * vx[1])
            elif tx.kmax == 3:
                for x in range(nw):
                    wx = tx.w + x * tx.k
                    vx = trow + tx.start[x]
                    out_row[x] = at_most_one(wx[0] * vx[0] + wx[1] * vx[1] + wx[2] * vx[2])
            else:
                for x in range(nw):
                    wx = tx.w + x * tx.k
                    vx = trow + tx.start[x]
                    acc = 0.0
                    for k in range(tx.kmax):
                        acc = acc + wx[k] * vx[k]
                    out_row[x] = at_most_one(acc)
            memset(out_row + nw, 0, (W - nw) * sizeof(float))
    free(grey_buf)
    free(tmp)
    free(vals)
    free_taps(&tx)
    free_taps(&ty)
    return status


def preprocess_into(list images, float[:, :, :, ::1] out, int mode, int threshold, int threads):
    """Kernel entry: ``images`` are validated C-contiguous uint8 arrays; ``out`` is (N, 1, H, W) float32."""
    cdef Py_ssize_t n = len(images), i
    cdef int H = out.shape[2], W = out.shape[3], failed = 0
    cdef const unsigned char[::1] flat
    if n == 0:
        return
    cdef const unsigned char** ptrs = <const unsigned char**>malloc(n * sizeof(void*))
    cdef int* dims = <int*>malloc(3 * n * sizeof(int))
    if ptrs == NULL or dims == NULL:
        free(ptrs)
        free(dims)
        raise MemoryError("preprocess_batch: cannot allocate the batch table")
    try:
        for i in range(n):
            img = images[i]
            flat = img.reshape(-1)
            ptrs[i] = &flat[0]
            dims[3 * i] = img.shape[0]
            dims[3 * i + 1] = img.shape[1]
            dims[3 * i + 2] = img.shape[2] if img.ndim == 3 else 1
        for i in prange(n, nogil=True, num_threads=threads, schedule="dynamic"):
            failed += process_one(ptrs[i], dims[3 * i], dims[3 * i + 1], dims[3 * i + 2],
                                  &out[i, 0, 0, 0], H, W, mode, threshold) != 0
    finally:
        free(ptrs)
        free(dims)
    if failed:
        raise MemoryError(f"preprocess_batch: out of memory in {failed} image(s)")
