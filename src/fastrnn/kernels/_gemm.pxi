# The GEMMs of the loops: the per-step product (packed kernel or BLAS), packing a
# thread's share of a weight, and the merged GEMMs over all steps, in blocks between
# which a call can stop; the sizes of the packed weights.
#
# Included by _kernels.pyx. nogil helpers on raw pointers given by the loops; they read
# the kernel table and call BLAS (_blas.pxd), nothing else.

# ---------------------------------------------------------------------------------------
# GEMMs. The per-step GEMMs multiply a few rows by a weight that is the same at every step:
# for float32 the weight is packed once per call (_ktable.h, _kern_body.h), the threads
# packing a share of its panels each; otherwise BLAS.

cdef inline void step_gemm(const floating *packed, int m, int n, int k,
                           const floating *a, int lda, bint trans_w, const floating *w,
                           int ldw, bint accumulate, floating *c, int ldc) noexcept nogil:
    """C (m x n) = A (m x k) @ op(W) [+ C]; op(W) = W^T (W stored n x k) if trans_w."""
    if floating is float:
        if packed != NULL:
            fr_gemm_panels(m, n, k, a, lda, packed, c, ldc, accumulate, 0, fr_panels(n))
            return
    gemm(False, trans_w, m, n, k, <floating> 1, a, lda, w, ldw,
         <floating> (1 if accumulate else 0), c, ldc)


cdef inline floating *pack_weight(int tid, int nth, floating *dst, bint trans_w,
                                  Py_ssize_t n, Py_ssize_t k, const floating *w,
                                  Py_ssize_t ldw) noexcept nogil:
    """Pack this thread's share of the panels of op(W) (k x n) at dst (sync before use),
    or return NULL when packing is off (dst NULL, double)."""
    cdef Py_ssize_t lo, hi
    if floating is float:
        if dst != NULL:
            fr_split(fr_panels(n), 1, tid, nth, &lo, &hi)
            fr_pack_panels(trans_w, n, k, w, ldw, dst, lo, hi)
            return dst
    return NULL


# The merged GEMMs go in blocks of this many rows of the sum (or of the output), a few
# milliseconds each, between which the call can stop (_stop.h); a multiple of FR_KC, so
# that the packed kernel sums in the same order as in one piece.
cdef enum:
    MERGED_BLOCK_ROWS = 4096


cdef inline void merged_tn(int tid, int nth, int m, int n, int k, const floating *a, int lda,
                           const floating *b, int ldb, floating *c, int ldc,
                           floating *bpack, volatile Py_ssize_t *stop) noexcept nogil:
    """This thread's rows of C (m x n) = A^T B, A stored k x m, B k x n: on the packed
    kernel when bpack (this thread's room for a packed block of B) is given, else BLAS;
    in blocks of the sum, returning early (C incomplete) once the call is stopped."""
    cdef Py_ssize_t lo, hi
    cdef int k0 = 0, kc
    fr_split(m, 16, tid, nth, &lo, &hi)
    while k0 == 0 or k0 < k:
        if fr_stop_poll(stop):
            return
        kc = min(<int> MERGED_BLOCK_ROWS, k - k0)
        if floating is float:
            if bpack != NULL:
                fr_gemm_tn(hi - lo, n, kc, a + k0 * lda + lo, lda, b + k0 * ldb, ldb,
                           c + lo * ldc, ldc, k0 > 0, bpack)
                k0 += MERGED_BLOCK_ROWS
                continue
        gemm(True, False, <int> (hi - lo), n, kc, <floating> 1, a + k0 * lda + lo, lda,
             b + k0 * ldb, ldb, <floating> (1 if k0 > 0 else 0), c + lo * ldc, ldc)
        k0 += MERGED_BLOCK_ROWS


cdef inline void merged_nn(int tid, int nth, const floating *packed, int m, int n, int k,
                           const floating *a, int lda, const floating *w, int ldw,
                           bint accumulate, floating *c, int ldc,
                           volatile Py_ssize_t *stop) noexcept nogil:
    """This thread's rows of C (m x n) = A (m x k) @ W (k x n) [+ C], W packed or not;
    in blocks of rows, returning early once the call is stopped."""
    cdef Py_ssize_t lo, hi, r0
    fr_split(m, 1, tid, nth, &lo, &hi)
    r0 = lo
    while r0 < hi:
        if fr_stop_poll(stop):
            return
        step_gemm(packed, <int> min(<Py_ssize_t> MERGED_BLOCK_ROWS, hi - r0), n, k, a + r0 * lda,
                  lda, False, w, ldw, accumulate, c + r0 * ldc, ldc)
        r0 += MERGED_BLOCK_ROWS


cdef Py_ssize_t _packed_sizes(bint backward, Cell cell, Py_ssize_t I, Py_ssize_t H,
                              Py_ssize_t Hout, Py_ssize_t P,
                              Py_ssize_t *sizes) noexcept nogil:
    """Floats for the packed W_hh block of the step GEMM, W_hn (reset-before GRU), W_hr and
    W_ih, in sizes[0:4]; returns their sum.

    Forward multiplies by W^T, backward by W, so the packed shapes are transposed.
    """
    cdef Py_ssize_t G = _gates(cell)
    cdef Py_ssize_t K = 2 * H if cell == GRU_BEFORE else G * H
    if backward:
        sizes[0] = fr_packed_size(Hout, K)
        sizes[2] = fr_packed_size(H, P) if P > 0 else 0
        # W_ih for dx = dGx @ W_ih (threaded calls); the reset-after GRU packs its rows
        # [0, 2H) and [2H, 3H) apart, as they meet dG blocks that are not adjacent
        sizes[3] = fr_packed_size(I, G * H)
    else:
        sizes[0] = fr_packed_size(K, Hout)
        sizes[2] = fr_packed_size(P, H) if P > 0 else 0
        sizes[3] = fr_packed_size(G * H, I)
    sizes[1] = fr_packed_size(H, H) if cell == GRU_BEFORE else 0
    return sizes[0] + sizes[1] + sizes[2] + sizes[3]
