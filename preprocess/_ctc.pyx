# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""CTC decoding kernels: greedy (best path) and prefix beam search, one item per prange iteration.

Arguments are validated by the Python wrapper (``htr.preprocess.ctc``, via ``_ctc_checks``); this
module trusts them, except for non-finite log-probabilities, which each item's loop detects while it
scans its frames (the wrapper then raises for the lowest bad item). ``reference/ctc.py`` is the same
algorithm in plain Python; both produce identical texts and bit-identical scores.

Beam search per item, in log space with doubles (see ``_beam_item``):

- a prefix is a node of a per-item arena trie ``(parent, last class, lexicon node)``, so each text has
  one id and "is prefix + c already a beam?" is a short walk over that node's children;
- per frame, each beam (in beam order) yields its "stay" candidate then its extensions by ascending
  class; a candidate met twice is merged (log-add-exp), keeping its first position;
- the top ``beam_width`` candidates by ``logaddexp(p_blank, p_nonblank)`` survive (insertion into a
  sorted list of size ``beam_width``; ties keep generation order). With a lexicon the best complete
  word is kept as well when it falls outside that list.

Memory is one ``malloc`` per item inside the nogil loop: arena ``1 + L * (K + 1)`` prefixes and
``(K + 1) * C`` candidates, for L frames, K = beam_width, C classes.
"""
from cpython.unicode cimport PyUnicode_4BYTE_KIND, PyUnicode_FromKindAndData
from cython.parallel cimport prange
from libc.math cimport INFINITY, exp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

import numpy as np

from ._ctc_checks import nonfinite_error

from _ctcmath cimport first_nonfinite, logaddexp, row_argmax


cdef enum Status:
    OK = 0
    NONFINITE = 1
    NOMEM = 2


# ---------------------------------------------------------------------------------------------- greedy

cdef int _greedy_item(const float* x, Py_ssize_t length, Py_ssize_t C, Py_ssize_t blank, const uint32_t* cps,
                      uint32_t* out, Py_ssize_t* out_len, double* out_logp, Py_ssize_t* bad_frame) noexcept nogil:
    # x: (length, C) rows; writes the collapsed best path's code points and its log-probability
    cdef Py_ssize_t t, c, prev = -1, n = 0
    cdef float best
    cdef double logp = 0.0
    for t in range(length):
        c = row_argmax(x + t * C, C, &best)
        if c < 0:
            bad_frame[0] = t
            return NONFINITE
        logp += best
        if c != blank and c != prev:
            out[n] = cps[c]
            n += 1
        prev = c
    out_len[0] = n
    out_logp[0] = logp
    return OK


# ------------------------------------------------------------------------------------------------ beam

cdef struct Work:
    # prefix arena, 1 + L * (K + 1) entries (at most K + 1 new prefixes are kept per frame)
    Py_ssize_t* parent
    Py_ssize_t* first_child
    Py_ssize_t* next_sibling
    Py_ssize_t* slot           # index in the current beam list, -1 when not a beam
    int32_t* last              # class of the last character, -1 for the empty prefix
    int32_t* node              # lexicon trie node (0 without a lexicon)
    Py_ssize_t n_prefix
    # beams of this frame and of the next, K + 1 each (the +1: the retained lexicon word)
    Py_ssize_t* beam
    double* pb
    double* pnb
    Py_ssize_t* beam_cand      # candidate index of each beam's own prefix this frame, -1 if none yet
    Py_ssize_t* beam2
    double* pb2
    double* pnb2
    Py_ssize_t* top            # selected candidate indices, best first
    # candidates of one frame, (K + 1) * C
    Py_ssize_t* c_prefix       # arena id, or -1 for a prefix not in the arena yet (then parent + class)
    Py_ssize_t* c_parent
    int32_t* c_class
    int32_t* c_node
    double* c_pb
    double* c_pnb
    double* c_score
    # one frame
    double* lp                 # (C,) the frame's log-probabilities as doubles
    int32_t* tried             # classes tried as extensions, ascending
    uint8_t* tried_flag        # (C,) 1 for those classes
    void* mem


cdef bint _work_alloc(Work* w, Py_ssize_t L, Py_ssize_t K, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t A = 1 + L * (K + 1), B = K + 1, M = (K + 1) * C
    cdef size_t n8 = 4 * A + 8 * B + 5 * M + C   # 8-byte words (Py_ssize_t, double)
    cdef size_t n4 = 2 * A + 2 * M + C            # int32
    cdef char* p = <char*> malloc(8 * n8 + 4 * n4 + C)
    w.mem = p
    if p == NULL:
        return False
    w.parent = <Py_ssize_t*> p;        p += 8 * A
    w.first_child = <Py_ssize_t*> p;   p += 8 * A
    w.next_sibling = <Py_ssize_t*> p;  p += 8 * A
    w.slot = <Py_ssize_t*> p;          p += 8 * A
    w.beam = <Py_ssize_t*> p;          p += 8 * B
    w.pb = <double*> p;                p += 8 * B
    w.pnb = <double*> p;               p += 8 * B
    w.beam_cand = <Py_ssize_t*> p;     p += 8 * B
    w.beam2 = <Py_ssize_t*> p;         p += 8 * B
    w.pb2 = <double*> p;               p += 8 * B
    w.pnb2 = <double*> p;              p += 8 * B
    w.top = <Py_ssize_t*> p;           p += 8 * B
    w.c_prefix = <Py_ssize_t*> p;      p += 8 * M
    w.c_parent = <Py_ssize_t*> p;      p += 8 * M
    w.c_pb = <double*> p;              p += 8 * M
    w.c_pnb = <double*> p;             p += 8 * M
    w.c_score = <double*> p;           p += 8 * M
    w.lp = <double*> p;                p += 8 * C
    w.last = <int32_t*> p;             p += 4 * A
    w.node = <int32_t*> p;             p += 4 * A
    w.c_class = <int32_t*> p;          p += 4 * M
    w.c_node = <int32_t*> p;           p += 4 * M
    w.tried = <int32_t*> p;            p += 4 * C
    w.tried_flag = <uint8_t*> p
    return True


cdef inline Py_ssize_t _new_candidate(Work* w, Py_ssize_t nc, Py_ssize_t prefix, Py_ssize_t parent,
                                      int32_t c, int32_t node) noexcept nogil:
    w.c_prefix[nc] = prefix
    w.c_parent[nc] = parent
    w.c_class[nc] = c
    w.c_node[nc] = node
    w.c_pb[nc] = -INFINITY
    w.c_pnb[nc] = -INFINITY
    return nc


cdef inline Py_ssize_t _extend(Work* w, Py_ssize_t nc, Py_ssize_t p, int32_t last, double pb, double total,
                               int32_t c, int32_t child_node, double lpc) noexcept nogil:
    # add beam prefix p + class c (p_nonblank); returns the new candidate count
    cdef double contrib
    cdef Py_ssize_t q, j, k
    if c == last:  # a repeated character needs a blank in between
        if pb == -INFINITY:
            return nc
        contrib = pb + lpc
    else:
        contrib = total + lpc
    q = w.first_child[p]
    while q >= 0 and w.last[q] != c:
        q = w.next_sibling[q]
    if q >= 0 and w.slot[q] >= 0:  # p + c is itself a beam: merge with its stay candidate
        j = w.slot[q]
        k = w.beam_cand[j]
        if k < 0:
            k = _new_candidate(w, nc, q, -1, c, w.node[q])
            nc += 1
            w.beam_cand[j] = k
    else:
        k = _new_candidate(w, nc, q, p, c, child_node)
        nc += 1
    w.c_pnb[k] = logaddexp(w.c_pnb[k], contrib)
    return nc


cdef int _beam_item(const float* x, Py_ssize_t L, Py_ssize_t C, Py_ssize_t blank, Py_ssize_t K, double prune,
                    bint use_lex, const int32_t* child_start, const int32_t* child_class,
                    const int32_t* child_node, const uint8_t* terminal, const uint32_t* cps,
                    uint32_t* out, Py_ssize_t* out_len, double* out_score, Py_ssize_t* bad_frame) noexcept nogil:
    cdef Work w
    cdef Py_ssize_t t, c, i, j, k, r, e, p, nb, nc, nt, ntop, nkeep, am, depth, best_k
    cdef const float* row
    cdef float best
    cdef double v, total, s, best_s
    cdef int32_t last, nd
    cdef bint has_word
    cdef Py_ssize_t* swap_i
    cdef double* swap_d
    cdef int status = OK

    if not _work_alloc(&w, L, K, C):
        return NOMEM
    for c in range(C):
        w.tried_flag[c] = 0
    w.parent[0] = -1
    w.first_child[0] = -1
    w.next_sibling[0] = -1
    w.slot[0] = -1
    w.last[0] = -1
    w.node[0] = 0
    w.n_prefix = 1
    nb = 1
    w.beam[0] = 0
    w.pb[0] = 0.0
    w.pnb[0] = -INFINITY

    for t in range(L):
        row = x + t * C
        am = row_argmax(row, C, &best)
        if am < 0:
            bad_frame[0] = t
            status = NONFINITE
            break
        nt = 0
        for c in range(C):
            v = row[c]
            w.lp[c] = v
            if c != blank and (v >= prune or c == am):
                w.tried[nt] = <int32_t> c
                w.tried_flag[c] = 1
                nt += 1

        # candidates: per beam, "stay" then extensions by ascending class
        for i in range(nb):
            w.slot[w.beam[i]] = i
            w.beam_cand[i] = -1
        nc = 0
        for i in range(nb):
            p = w.beam[i]
            total = logaddexp(w.pb[i], w.pnb[i])
            last = w.last[p]
            nd = w.node[p]
            k = w.beam_cand[i]
            if k < 0:
                k = _new_candidate(&w, nc, p, -1, last, nd)
                nc += 1
                w.beam_cand[i] = k
            w.c_pb[k] = logaddexp(w.c_pb[k], total + w.lp[blank])
            if last >= 0:
                w.c_pnb[k] = logaddexp(w.c_pnb[k], w.pnb[i] + w.lp[last])
            if use_lex:  # trie children are sorted by class: same order as `tried`
                for e in range(child_start[nd], child_start[nd + 1]):
                    c = child_class[e]
                    if w.tried_flag[c]:
                        nc = _extend(&w, nc, p, last, w.pb[i], total, <int32_t> c, child_node[e], w.lp[c])
            else:
                for j in range(nt):
                    c = w.tried[j]
                    nc = _extend(&w, nc, p, last, w.pb[i], total, <int32_t> c, 0, w.lp[c])
        for i in range(nb):
            w.slot[w.beam[i]] = -1
        for j in range(nt):
            w.tried_flag[w.tried[j]] = 0

        # top K by score, ties by generation order
        ntop = 0
        for k in range(nc):
            s = logaddexp(w.c_pb[k], w.c_pnb[k])
            w.c_score[k] = s
            if ntop < K:
                r = ntop
                ntop += 1
            elif s > w.c_score[w.top[K - 1]]:
                r = K - 1
            else:
                continue
            while r > 0 and w.c_score[w.top[r - 1]] < s:
                w.top[r] = w.top[r - 1]
                r -= 1
            w.top[r] = k
        nkeep = ntop
        if use_lex:
            has_word = False
            for r in range(ntop):
                if terminal[w.c_node[w.top[r]]]:
                    has_word = True
                    break
            if not has_word:
                best_k = -1
                best_s = -INFINITY
                for k in range(nc):
                    if terminal[w.c_node[k]] and w.c_score[k] > best_s:
                        best_k = k
                        best_s = w.c_score[k]
                if best_k >= 0:
                    w.top[nkeep] = best_k
                    nkeep += 1

        # the kept candidates become the next beams; new prefixes enter the arena
        for r in range(nkeep):
            k = w.top[r]
            p = w.c_prefix[k]
            if p < 0:
                p = w.n_prefix
                w.n_prefix += 1
                w.parent[p] = w.c_parent[k]
                w.last[p] = w.c_class[k]
                w.node[p] = w.c_node[k]
                w.first_child[p] = -1
                w.slot[p] = -1
                w.next_sibling[p] = w.first_child[w.c_parent[k]]
                w.first_child[w.c_parent[k]] = p
            w.beam2[r] = p
            w.pb2[r] = w.c_pb[k]
            w.pnb2[r] = w.c_pnb[k]
        swap_i = w.beam; w.beam = w.beam2; w.beam2 = swap_i
        swap_d = w.pb; w.pb = w.pb2; w.pb2 = swap_d
        swap_d = w.pnb; w.pnb = w.pnb2; w.pnb2 = swap_d
        nb = nkeep

    if status == OK:
        r = 0
        if use_lex:
            while r < nb and not terminal[w.node[w.beam[r]]]:
                r += 1
        if r == nb:  # no complete lexicon word reachable
            out_len[0] = 0
            out_score[0] = -INFINITY
        else:
            p = w.beam[r]
            depth = 0
            while w.parent[p] >= 0:
                depth += 1
                p = w.parent[p]
            out_len[0] = depth
            out_score[0] = logaddexp(w.pb[r], w.pnb[r])
            p = w.beam[r]
            while depth > 0:
                depth -= 1
                out[depth] = cps[w.last[p]]
                p = w.parent[p]
    free(w.mem)
    return status


# ------------------------------------------------------------------------------------------ Python API

cdef list _results(const float[:, :, ::1] logprobs, int32_t[::1] status, Py_ssize_t[::1] bad_frame,
                   uint32_t[::1] text, Py_ssize_t[::1] text_len, double[::1] logp):
    # raise for the lowest bad item, else build [(text, exp(logp))]
    cdef Py_ssize_t i, t, N = logprobs.shape[0], T = logprobs.shape[1], C = logprobs.shape[2]
    for i in range(N):
        if status[i] == NONFINITE:
            t = bad_frame[i]
            raise nonfinite_error(i, t, logprobs[i, t, first_nonfinite(&logprobs[i, t, 0], C)])
        if status[i] == NOMEM:
            raise MemoryError(f"ctc decode: could not allocate the working memory for item {i}")
    cdef list out = []
    for i in range(N):
        out.append((PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, &text[i * T], text_len[i]), exp(logp[i])))
    return out


def greedy(const float[:, :, ::1] logprobs, const uint32_t[::1] codepoints, Py_ssize_t blank,
           const int64_t[::1] lengths, int threads=1):
    """Best-path decode of validated arguments (see ``htr.preprocess.ctc_greedy_decode``)."""
    cdef Py_ssize_t N = logprobs.shape[0], T = logprobs.shape[1], C = logprobs.shape[2], i
    if N == 0:
        return []
    cdef uint32_t[::1] text = np.empty(max(N * T, 1), np.uint32)
    cdef Py_ssize_t[::1] text_len = np.zeros(N, np.intp)
    cdef Py_ssize_t[::1] bad_frame = np.zeros(N, np.intp)
    cdef double[::1] logp = np.zeros(N, np.float64)
    cdef int32_t[::1] status = np.zeros(N, np.int32)
    cdef const float* x = &logprobs[0, 0, 0]
    cdef const uint32_t* cps = &codepoints[0]
    for i in prange(N, nogil=True, num_threads=threads, schedule="static"):
        status[i] = _greedy_item(x + i * T * C, lengths[i], C, blank, cps,
                                 &text[i * T], &text_len[i], &logp[i], &bad_frame[i])
    return _results(logprobs, status, bad_frame, text, text_len, logp)


def beam(const float[:, :, ::1] logprobs, const uint32_t[::1] codepoints, Py_ssize_t blank,
         const int64_t[::1] lengths, int threads, Py_ssize_t beam_width, double prune_logp, lexicon):
    """Prefix beam search of validated arguments (see ``htr.preprocess.ctc_beam_decode``)."""
    if beam_width == 1 and lexicon is None:
        return greedy(logprobs, codepoints, blank, lengths, threads)
    cdef Py_ssize_t N = logprobs.shape[0], T = logprobs.shape[1], C = logprobs.shape[2], i
    if N == 0:
        return []
    cdef bint use_lex = lexicon is not None
    dummy = np.zeros(2, np.int32)
    cdef const int32_t[::1] child_start = lexicon.child_start if use_lex else dummy
    cdef const int32_t[::1] child_class = lexicon.child_class if use_lex else dummy
    cdef const int32_t[::1] child_node = lexicon.child_node if use_lex else dummy
    cdef const uint8_t[::1] terminal = lexicon.terminal if use_lex else np.zeros(1, np.uint8)
    cdef uint32_t[::1] text = np.empty(max(N * T, 1), np.uint32)
    cdef Py_ssize_t[::1] text_len = np.zeros(N, np.intp)
    cdef Py_ssize_t[::1] bad_frame = np.zeros(N, np.intp)
    cdef double[::1] score = np.zeros(N, np.float64)
    cdef int32_t[::1] status = np.zeros(N, np.int32)
    cdef const float* x = &logprobs[0, 0, 0]
    cdef const uint32_t* cps = &codepoints[0]
    for i in prange(N, nogil=True, num_threads=threads, schedule="dynamic"):
        status[i] = _beam_item(x + i * T * C, lengths[i], C, blank, beam_width, prune_logp, use_lex,
                               &child_start[0], &child_class[0], &child_node[0], &terminal[0], cps,
                               &text[i * T], &text_len[i], &score[i], &bad_frame[i])
    return _results(logprobs, status, bad_frame, text, text_len, score)
