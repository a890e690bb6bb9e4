# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""CTC decoding kernels: greedy (best path) and prefix beam search, one item per prange iteration.

Arguments are validated by the Python wrapper (``htr.preprocess.ctc``, via ``_ctc_checks``); this
module trusts them, except for non-finite log-probabilities, which each item's loop detects while it
scans its frames (the wrapper then raises for the lowest bad item). ``reference/ctc.py`` is the same
algorithm in plain Python; both produce identical texts and bit-identical scores.

Beam search per item, in log space with doubles (see ``_beam_item``):

- a prefix is a node of a per-item arena trie ``(parent, last class, lexicon node, name model state,
  name model ln-probability, length)``, so each text has one id and "is prefix + c already a beam?" is a
  short walk over that node's children;
- per frame, each beam (in beam order) yields its "stay" candidate then its extensions by ascending
  class; a candidate met twice is merged (log-add-exp), keeping its first position;
- the top ``beam_width`` candidates by ``logaddexp(p_blank, p_nonblank) [+ lm_weight * lm_logp]
  + insertion_bonus * length`` survive (insertion into a sorted list of size ``beam_width``; ties keep
  generation order). With a hard lexicon the best complete word is kept as well when it falls outside
  that list;
- the result is the final beam with the best score plus ``lm_weight * end-of-name ln-probability``
  (with a name model) plus ``lexicon_bonus`` (soft lexicon, a complete entry); its confidence is the
  acoustic ``exp(logaddexp(p_blank, p_nonblank))``.

Memory is one ``malloc`` per item inside the nogil loop: arena ``1 + L * (K + 1)`` prefixes and
``(K + 1) * C`` candidates, for L frames, K = beam_width, C classes. The name model's arrays
(``_namelm.NameModel``) and the lexicon trie are shared, read-only, by all items.
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

cdef enum LexMode:
    LEX_NONE = 0
    LEX_HARD = 1
    LEX_SOFT = 2


cdef struct Scorer:
    # What ranks prefixes besides their acoustic probability (see ctc.ctc_beam_decode), read-only.
    bint use_lm
    const int32_t* lm_next     # (S, V): name model state after a character (alphabet position)
    const float* lm_logp       # (S, V): ln P(character | state)
    const float* lm_end        # (S,): ln P(end of name | state)
    Py_ssize_t V
    int32_t lm_start
    double lm_weight
    double insertion_bonus
    Py_ssize_t blank
    int lex_mode
    const int32_t* child_start
    const int32_t* child_class
    const int32_t* child_node
    const uint8_t* terminal
    double lexicon_bonus


cdef struct Work:
    # prefix arena, 1 + L * (K + 1) entries (at most K + 1 new prefixes are kept per frame)
    Py_ssize_t* parent
    Py_ssize_t* first_child
    Py_ssize_t* next_sibling
    Py_ssize_t* slot           # index in the current beam list, -1 when not a beam
    int32_t* last              # class of the last character, -1 for the empty prefix
    int32_t* node              # lexicon trie node (0 without a lexicon; -1 off the trie in soft mode)
    int32_t* lm_state          # name model state (0 without one)
    int32_t* length            # characters
    double* lm                 # name model ln-probability of the characters (0.0 without one)
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
    int32_t* c_state
    int32_t* c_len
    double* c_lm
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
    cdef size_t n8 = 5 * A + 8 * B + 6 * M + C   # 8-byte words (Py_ssize_t, double)
    cdef size_t n4 = 4 * A + 4 * M + C            # int32
    cdef char* p = <char*> malloc(8 * n8 + 4 * n4 + C)
    w.mem = p
    if p == NULL:
        return False
    w.parent = <Py_ssize_t*> p;        p += 8 * A
    w.first_child = <Py_ssize_t*> p;   p += 8 * A
    w.next_sibling = <Py_ssize_t*> p;  p += 8 * A
    w.slot = <Py_ssize_t*> p;          p += 8 * A
    w.lm = <double*> p;                p += 8 * A
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
    w.c_lm = <double*> p;              p += 8 * M
    w.c_pb = <double*> p;              p += 8 * M
    w.c_pnb = <double*> p;             p += 8 * M
    w.c_score = <double*> p;           p += 8 * M
    w.lp = <double*> p;                p += 8 * C
    w.last = <int32_t*> p;             p += 4 * A
    w.node = <int32_t*> p;             p += 4 * A
    w.lm_state = <int32_t*> p;         p += 4 * A
    w.length = <int32_t*> p;           p += 4 * A
    w.c_class = <int32_t*> p;          p += 4 * M
    w.c_node = <int32_t*> p;           p += 4 * M
    w.c_state = <int32_t*> p;          p += 4 * M
    w.c_len = <int32_t*> p;            p += 4 * M
    w.tried = <int32_t*> p;            p += 4 * C
    w.tried_flag = <uint8_t*> p
    return True


cdef inline Py_ssize_t _arena_candidate(Work* w, Py_ssize_t nc, Py_ssize_t q) noexcept nogil:
    # candidate nc for the arena prefix q (a beam staying, or a known prefix met again)
    w.c_prefix[nc] = q
    w.c_parent[nc] = -1
    w.c_class[nc] = w.last[q]
    w.c_node[nc] = w.node[q]
    w.c_state[nc] = w.lm_state[q]
    w.c_len[nc] = w.length[q]
    w.c_lm[nc] = w.lm[q]
    w.c_pb[nc] = -INFINITY
    w.c_pnb[nc] = -INFINITY
    return nc


cdef inline Py_ssize_t _new_candidate(Work* w, const Scorer* sc, Py_ssize_t nc, Py_ssize_t p, int32_t c,
                                      int32_t node) noexcept nogil:
    # candidate nc for the prefix p + class c, not in the arena yet: its name model state and ln-probability
    # follow from p's (the class past the blank is alphabet position c - 1)
    cdef Py_ssize_t at
    w.c_prefix[nc] = -1
    w.c_parent[nc] = p
    w.c_class[nc] = c
    w.c_node[nc] = node
    w.c_len[nc] = w.length[p] + 1
    if sc.use_lm:
        at = w.lm_state[p] * sc.V + c - (c > sc.blank)
        w.c_state[nc] = sc.lm_next[at]
        w.c_lm[nc] = w.lm[p] + <double> sc.lm_logp[at]
    else:
        w.c_state[nc] = 0
        w.c_lm[nc] = 0.0
    w.c_pb[nc] = -INFINITY
    w.c_pnb[nc] = -INFINITY
    return nc


cdef inline double _score(const Scorer* sc, double pb, double pnb, double lm, int32_t length) noexcept nogil:
    # what ranks a prefix: logaddexp(pb, pnb) + lm_weight * lm + insertion_bonus * length, in that order
    cdef double s = logaddexp(pb, pnb)
    if sc.use_lm:
        s = s + sc.lm_weight * lm
    return s + sc.insertion_bonus * length


cdef inline Py_ssize_t _extend(Work* w, const Scorer* sc, Py_ssize_t nc, Py_ssize_t p, int32_t last, double pb,
                               double total, int32_t c, int32_t child_node, double lpc) noexcept nogil:
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
            k = _arena_candidate(w, nc, q)
            nc += 1
            w.beam_cand[j] = k
    elif q >= 0:
        k = _arena_candidate(w, nc, q)
        nc += 1
    else:
        k = _new_candidate(w, sc, nc, p, c, child_node)
        nc += 1
    w.c_pnb[k] = logaddexp(w.c_pnb[k], contrib)
    return nc


cdef int _beam_item(const float* x, Py_ssize_t L, Py_ssize_t C, Py_ssize_t K, double prune, const Scorer* sc,
                    const uint32_t* cps, uint32_t* out, Py_ssize_t* out_len, double* out_score,
                    Py_ssize_t* bad_frame) noexcept nogil:
    cdef Work w
    cdef Py_ssize_t t, c, i, j, k, r, e, e_end, p, nb, nc, nt, ntop, nkeep, am, depth, best_k
    cdef Py_ssize_t blank = sc.blank
    cdef const float* row
    cdef float best
    cdef double v, total, s, best_s
    cdef int32_t last, nd, child
    cdef bint has_word
    cdef bint hard = sc.lex_mode == LEX_HARD, soft = sc.lex_mode == LEX_SOFT
    cdef const int32_t* child_start = sc.child_start
    cdef const int32_t* child_class = sc.child_class
    cdef const int32_t* child_node = sc.child_node
    cdef const uint8_t* terminal = sc.terminal
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
    w.lm_state[0] = sc.lm_start
    w.length[0] = 0
    w.lm[0] = 0.0
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
                k = _arena_candidate(&w, nc, p)
                nc += 1
                w.beam_cand[i] = k
            w.c_pb[k] = logaddexp(w.c_pb[k], total + w.lp[blank])
            if last >= 0:
                w.c_pnb[k] = logaddexp(w.c_pnb[k], w.pnb[i] + w.lp[last])
            if hard:  # trie children are sorted by class: same order as `tried`
                for e in range(child_start[nd], child_start[nd + 1]):
                    c = child_class[e]
                    if w.tried_flag[c]:
                        nc = _extend(&w, sc, nc, p, last, w.pb[i], total, <int32_t> c, child_node[e], w.lp[c])
            elif soft:  # every tried class; the trie node follows along (a merge of two ascending lists)
                e = child_start[nd] if nd >= 0 else 0
                e_end = child_start[nd + 1] if nd >= 0 else 0
                for j in range(nt):
                    c = w.tried[j]
                    while e < e_end and child_class[e] < c:
                        e += 1
                    child = child_node[e] if e < e_end and child_class[e] == c else -1
                    nc = _extend(&w, sc, nc, p, last, w.pb[i], total, <int32_t> c, child, w.lp[c])
            else:
                for j in range(nt):
                    c = w.tried[j]
                    nc = _extend(&w, sc, nc, p, last, w.pb[i], total, <int32_t> c, 0, w.lp[c])
        for i in range(nb):
            w.slot[w.beam[i]] = -1
        for j in range(nt):
            w.tried_flag[w.tried[j]] = 0

        # top K by score, ties by generation order
        ntop = 0
        for k in range(nc):
            s = _score(sc, w.c_pb[k], w.c_pnb[k], w.c_lm[k], w.c_len[k])
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
        if hard:
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
                w.lm_state[p] = w.c_state[k]
                w.length[p] = w.c_len[k]
                w.lm[p] = w.c_lm[k]
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
        # the final choice: the best score plus the weighted end-of-name ln-probability, plus the lexicon
        # bonus for a complete entry in soft mode; only complete entries in hard mode; ties: beam order
        best_k = -1
        best_s = -INFINITY
        for r in range(nb):
            p = w.beam[r]
            nd = w.node[p]
            if hard and not terminal[nd]:
                continue
            s = _score(sc, w.pb[r], w.pnb[r], w.lm[p], w.length[p])
            if sc.use_lm:
                s = s + sc.lm_weight * sc.lm_end[w.lm_state[p]]
            if soft and nd >= 0 and terminal[nd]:
                s = s + sc.lexicon_bonus
            if best_k < 0 or s > best_s:
                best_k = r
                best_s = s
        if best_k < 0:  # no complete lexicon word reachable
            out_len[0] = 0
            out_score[0] = -INFINITY
        else:
            p = w.beam[best_k]
            depth = w.length[p]
            out_len[0] = depth
            out_score[0] = logaddexp(w.pb[best_k], w.pnb[best_k])
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
         const int64_t[::1] lengths, int threads, Py_ssize_t beam_width, double prune_logp, lexicon,
         name_model=None, double lm_weight=0.0, double insertion_bonus=0.0, str lexicon_mode="hard",
         double lexicon_bonus=0.0):
    """Prefix beam search of validated arguments (see ``htr.preprocess.ctc_beam_decode``)."""
    if beam_width == 1 and lexicon is None and name_model is None and insertion_bonus == 0.0:
        return greedy(logprobs, codepoints, blank, lengths, threads)
    cdef Py_ssize_t N = logprobs.shape[0], T = logprobs.shape[1], C = logprobs.shape[2], i
    if N == 0:
        return []
    cdef bint use_lex = lexicon is not None, use_lm = name_model is not None
    dummy = np.zeros(2, np.int32)
    cdef const int32_t[::1] child_start = lexicon.child_start if use_lex else dummy
    cdef const int32_t[::1] child_class = lexicon.child_class if use_lex else dummy
    cdef const int32_t[::1] child_node = lexicon.child_node if use_lex else dummy
    cdef const uint8_t[::1] terminal = lexicon.terminal if use_lex else np.zeros(1, np.uint8)
    cdef const int32_t[:, ::1] lm_next = name_model.next_state if use_lm else np.zeros((1, 1), np.int32)
    cdef const float[:, ::1] lm_logp = name_model.logp if use_lm else np.zeros((1, 1), np.float32)
    cdef const float[::1] lm_end = name_model.end_logp if use_lm else np.zeros(1, np.float32)
    cdef Scorer sc
    sc.use_lm = use_lm
    sc.lm_next = &lm_next[0, 0]
    sc.lm_logp = &lm_logp[0, 0]
    sc.lm_end = &lm_end[0]
    sc.V = lm_next.shape[1]
    sc.lm_start = name_model.start_state if use_lm else 0
    sc.lm_weight = lm_weight
    sc.insertion_bonus = insertion_bonus
    sc.blank = blank
    sc.lex_mode = LEX_NONE if not use_lex else (LEX_SOFT if lexicon_mode == "soft" else LEX_HARD)
    sc.child_start = &child_start[0]
    sc.child_class = &child_class[0]
    sc.child_node = &child_node[0]
    sc.terminal = &terminal[0]
    sc.lexicon_bonus = lexicon_bonus
    cdef uint32_t[::1] text = np.empty(max(N * T, 1), np.uint32)
    cdef Py_ssize_t[::1] text_len = np.zeros(N, np.intp)
    cdef Py_ssize_t[::1] bad_frame = np.zeros(N, np.intp)
    cdef double[::1] score = np.zeros(N, np.float64)
    cdef int32_t[::1] status = np.zeros(N, np.int32)
    cdef const float* x = &logprobs[0, 0, 0]
    cdef const uint32_t* cps = &codepoints[0]
    for i in prange(N, nogil=True, num_threads=threads, schedule="dynamic"):
        status[i] = _beam_item(x + i * T * C, lengths[i], C, beam_width, prune_logp, &sc, cps,
                               &text[i * T], &text_len[i], &score[i], &bad_frame[i])
    return _results(logprobs, status, bad_frame, text, text_len, score)
