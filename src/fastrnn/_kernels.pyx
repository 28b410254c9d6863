# The compiled time loops (layer 2 of the design): one layer, one direction, a packed batch.
#
# Layout: all matrices row-major. The packed batch holds timestep t in rows
# offsets[t] : offsets[t] + batch_sizes[t]; the rows active at t are the first
# batch_sizes[t] sequences, so every per-step GEMM runs on a contiguous prefix of the
# carried state.
#
# Forward: one GEMM projects the inputs of many timesteps (all of them when training, a
# chunk at a time in inference so scratch memory stays bounded), then per step one GEMM
# h @ W_hh^T and the pointwise cell. Backward: per step the pointwise derivatives and
# one GEMM dG @ W_hh; the weight gradients, bias gradients and dx are merged GEMMs and
# column sums over all timesteps after the loop.
#
# Saved activations (training), S*H wide per row:
#   RNN   none; the output h is the activation (S = 1 scratch for the input projection)
#   LSTM  i, f, g, o                    + cs: c_t, + ms: m_t = o*tanh(c_t) with projection
#   GRU   r, z, n, hn  (reset_after)    hn = W_hn h + b_hn, needed for dr
#         r, z, n, rh  (reset_before)   rh = r * h_prev, the input of W_hn
# Gradients of the pre-activations dG, SD*H wide per row:
#   RNN, LSTM   the G*H gate pre-activations; dGx and dGh are the same
#   GRU after   dr, dz, dhn, dn: dGh = columns [0, 3H), dGx = [0, 2H) and [3H, 4H)
#   GRU before  dr, dz, dn: both dGx and dGh (the W_hn block multiplies rh, not h)
from cython cimport floating
from libc.string cimport memcpy, memset

from ._blas cimport gemm

cdef extern from "_gemm.h" nogil:
    size_t fr_packed_size(long n, long k)
    void fr_pack(int trans, long n, long k, const float *w, long ldw, float *packed)
    void fr_gemm_packed(long m, long n, long k, const float *a, long lda,
                        const float *packed, float *c, long ldc, int accumulate)
    int fr_gemm_packed_ok()
from ._cellmath cimport (gru_after_drow, gru_after_row, gru_before_drow1, gru_before_drow2,
                        gru_before_gates, gru_before_out, lstm_drow, lstm_row, rnn_drow,
                        rnn_row)

cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    LSTM = 2
    GRU = 3

MODES = {"RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU, "LSTM": LSTM, "GRU": GRU}


# ---------------------------------------------------------------------------------------
# The per-step GEMMs: a few rows times a weight that is the same at every step. For float32
# on AVX-512 machines the weight is packed once per call (_gemm.h); otherwise BLAS.

cdef inline void step_gemm(const floating *packed, int m, int n, int k,
                           const floating *a, int lda, bint trans_w, const floating *w,
                           int ldw, bint accumulate, floating *c, int ldc) noexcept nogil:
    """C (m x n) = A (m x k) @ op(W) [+ C]; op(W) = W^T (W stored n x k) if trans_w."""
    if floating is float:
        if packed != NULL:
            fr_gemm_packed(m, n, k, a, lda, packed, c, ldc, accumulate)
            return
    gemm(False, trans_w, m, n, k, <floating> 1, a, lda, w, ldw,
         <floating> (1 if accumulate else 0), c, ldc)


cdef inline floating *pack_weight(floating *dst, bint trans_w, Py_ssize_t n, Py_ssize_t k,
                                  const floating *w, Py_ssize_t ldw) noexcept nogil:
    """Pack op(W) (k x n) at dst, or return NULL when packing is off (dst NULL, double)."""
    if floating is float:
        if dst != NULL:
            fr_pack(trans_w, n, k, w, ldw, dst)
            return dst
    return NULL


cdef Py_ssize_t _packed_sizes(bint backward, int mode, bint reset_after, Py_ssize_t H,
                              Py_ssize_t Hout, Py_ssize_t P, Py_ssize_t *sizes) noexcept nogil:
    """Floats for the packed W_hh block of the step GEMM, W_hn (reset-before GRU) and W_hr.

    Forward multiplies by W^T, backward by W, so the packed shapes are transposed.
    """
    cdef Py_ssize_t G = 4 if mode == LSTM else 3 if mode == GRU else 1
    cdef Py_ssize_t K = 2 * H if (mode == GRU and not reset_after) else G * H
    if backward:
        sizes[0] = fr_packed_size(Hout, K)
        sizes[2] = fr_packed_size(H, P) if P > 0 else 0
    else:
        sizes[0] = fr_packed_size(K, Hout)
        sizes[2] = fr_packed_size(P, H) if P > 0 else 0
    sizes[1] = fr_packed_size(H, H) if (mode == GRU and not reset_after) else 0
    return sizes[0] + sizes[1] + sizes[2]


# From this many multiply-adds per step on, BLAS takes the step GEMMs: its threads beat the
# single-threaded packed kernel despite repacking (measured: at 16 x 256 x 1024 the packed
# kernel ran at 115 GF/s against OpenBLAS's 72, at 64 x 256 x 1024 they were even, and at
# 64 x 512 x 2048 OpenBLAS on two threads reaches 280-370 GF/s).
BLAS_STEP_WORK = 1 << 24


def packed_workspace(bint backward, str mode, bint reset_after, Py_ssize_t B,
                     Py_ssize_t H, Py_ssize_t Hout, Py_ssize_t P):
    """Length of the float32 `pack` workspace for a batch of B: 0 where BLAS runs the
    step GEMMs (large steps, or no AVX-512)."""
    cdef Py_ssize_t sizes[3]
    cdef Py_ssize_t G = 4 if mode == "LSTM" else 3 if mode == "GRU" else 1
    if not fr_gemm_packed_ok() or B * G * H * Hout >= BLAS_STEP_WORK:
        return 0
    return _packed_sizes(backward, MODES[mode], reset_after, H, Hout, P, sizes)


# ---------------------------------------------------------------------------------------
# Small helpers

cdef inline void colsum_add(Py_ssize_t rows, Py_ssize_t cols, const floating *a,
                            Py_ssize_t lda, floating *out) noexcept nogil:
    """out[:cols] += a[:rows, :cols].sum(axis=0)."""
    cdef Py_ssize_t r, j
    for r in range(rows):
        for j in range(cols):
            out[j] += a[r * lda + j]


cdef inline void add_rows(Py_ssize_t rows, Py_ssize_t cols, floating *a,
                          const floating *b) noexcept nogil:
    """a[:rows, :cols] += b[:rows, :cols], both with row stride cols."""
    cdef Py_ssize_t k
    for k in range(rows * cols):
        a[k] += b[k]


cdef inline Py_ssize_t step_time(bint reverse, Py_ssize_t T, Py_ssize_t s) noexcept nogil:
    """The timestep visited at the s-th step of the forward scan."""
    return T - 1 - s if reverse else s


cdef inline Py_ssize_t span_rows(bint reverse, Py_ssize_t T, const Py_ssize_t *off,
                                 Py_ssize_t s0, Py_ssize_t s1) noexcept nogil:
    """Number of packed rows visited by scan steps s0 <= s < s1."""
    if reverse:
        return off[T - s0] - off[T - s1]
    return off[s1] - off[s0]


cdef inline Py_ssize_t prev_row(bint reverse, Py_ssize_t T, const Py_ssize_t *bs,
                                const Py_ssize_t *off, Py_ssize_t t,
                                Py_ssize_t b) noexcept nogil:
    """Packed row of sequence b's state before step t, or -1 where that is the initial one."""
    cdef Py_ssize_t tp = t + 1 if reverse else t - 1
    if tp < 0 or tp >= T or b >= bs[tp]:
        return -1
    return off[tp] + b


# ---------------------------------------------------------------------------------------
# Forward

def forward(int mode, bint reset_after, bint reverse, bint training, Py_ssize_t chunk_rows,
            const floating[:, ::1] x,
            const Py_ssize_t[::1] batch_sizes,
            const Py_ssize_t[::1] offsets,
            const floating[:, ::1] w_ih,
            const floating[:, ::1] w_hh,
            const floating[::1] bias,
            const floating[::1] b_hn,
            const floating[:, ::1] w_hr,
            floating[:, ::1] h,
            floating[:, ::1] c,
            floating[:, ::1] out,
            floating[:, ::1] gates,
            floating[:, ::1] cs,
            floating[:, ::1] ms,
            floating[:, ::1] gh,
            floating[::1] pack):
    """Run one direction of one layer over a packed batch (shapes in fastrnn/_compiled.py).

    h and c hold the initial states on entry and the final ones on exit. When training,
    gates (and cs, ms) receive the saved activations of every row; otherwise gates is a
    scratch of chunk_rows rows for the input projection and ms (projection only) a
    scratch of B rows. pack is the workspace of packed_workspace(False, ...) floats, or
    empty to run the per-step GEMMs on BLAS.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    if T == 0:
        return
    cdef Py_ssize_t I = x.shape[1], GH = w_hh.shape[0], Hout = w_hh.shape[1]
    cdef Py_ssize_t H = w_ih.shape[0] // (4 if mode == LSTM else 3 if mode == GRU else 1)
    cdef Py_ssize_t P = w_hr.shape[0]
    cdef Py_ssize_t SH = gates.shape[1]
    cdef const Py_ssize_t *bs = &batch_sizes[0]
    cdef const Py_ssize_t *off = &offsets[0]
    cdef const floating *px = &x[0, 0]
    cdef const floating *pwih = &w_ih[0, 0]
    cdef const floating *pwhh = &w_hh[0, 0]
    cdef const floating *pb = &bias[0]
    cdef const floating *pbhn = &b_hn[0] if b_hn.shape[0] > 0 else NULL
    cdef const floating *pwhr = &w_hr[0, 0] if P > 0 else NULL
    cdef floating *ph = &h[0, 0]
    cdef floating *pc = &c[0, 0] if c.shape[0] > 0 else NULL
    cdef floating *pout = &out[0, 0]
    cdef floating *pgates = &gates[0, 0]
    cdef floating *pcs = &cs[0, 0] if cs.shape[0] > 0 else NULL
    cdef floating *pms = &ms[0, 0] if ms.shape[0] > 0 else NULL
    cdef floating *pgh = &gh[0, 0]
    cdef Py_ssize_t s, s_end, t, n, r0, b, row_base = 0, chunk_end = 0
    cdef floating *a
    cdef floating *m
    cdef floating *hp
    cdef Py_ssize_t sizes[3]
    cdef floating *ppk = &pack[0] if pack.shape[0] > 0 else NULL
    cdef floating *pk_hh = NULL
    cdef floating *pk_hn = NULL
    cdef floating *pk_hr = NULL
    cdef bint gru_before = mode == GRU and not reset_after
    with nogil:
        if ppk != NULL:
            _packed_sizes(False, mode, reset_after, H, Hout, P, sizes)
            pk_hh = pack_weight(ppk, True, 2 * H if gru_before else GH, Hout, pwhh, Hout)
            if gru_before:
                pk_hn = pack_weight(ppk + sizes[0], True, H, H, pwhh + 2 * H * Hout, Hout)
            if P > 0:
                pk_hr = pack_weight(ppk + sizes[0] + sizes[1], True, P, H, pwhr, H)
        for s in range(T):
            t = step_time(reverse, T, s)
            n = bs[t]
            r0 = off[t]
            if s == chunk_end:
                # Project the inputs of the next run of timesteps in one GEMM: all of them
                # when training (the buffer is the saved one), else about chunk_rows rows.
                s_end = s + 1
                if training:
                    s_end = T
                else:
                    while s_end < T and span_rows(reverse, T, off, s, s_end + 1) <= chunk_rows:
                        s_end += 1
                # the rows of the visited timesteps form one contiguous block either way
                row_base = off[T - s_end] if reverse else off[s]
                gemm(False, True, <int> span_rows(reverse, T, off, s, s_end), <int> GH,
                     <int> I, <floating> 1, px + row_base * I, <int> I, pwih, <int> I,
                     <floating> 0, pgates, <int> SH)
                chunk_end = s_end
            a = pgates + (r0 - row_base) * SH
            if gru_before:
                # r and z first; n needs W_hn (r * h), a second GEMM on the critical path.
                step_gemm(pk_hh, <int> n, <int> (2 * H), <int> Hout, ph, <int> Hout, True,
                          pwhh, <int> Hout, False, pgh, <int> GH)
                for b in range(n):
                    gru_before_gates(H, a + b * SH, pgh + b * GH, pb, ph + b * Hout)
                step_gemm(pk_hn, <int> n, <int> H, <int> H, a + 3 * H, <int> SH, True,
                          pwhh + 2 * H * Hout, <int> Hout, False, pgh + 2 * H, <int> GH)
                for b in range(n):
                    hp = ph + b * Hout
                    gru_before_out(H, a + b * SH, pgh + b * GH + 2 * H, pb, hp,
                                   pout + (r0 + b) * Hout)
                    memcpy(hp, pout + (r0 + b) * Hout, H * sizeof(floating))
                continue
            step_gemm(pk_hh, <int> n, <int> GH, <int> Hout, ph, <int> Hout, True, pwhh,
                      <int> Hout, False, pgh, <int> GH)
            for b in range(n):
                hp = ph + b * Hout
                if mode == LSTM:
                    if P > 0:
                        m = pms + ((r0 + b) if training else b) * H
                    else:
                        m = pout + (r0 + b) * Hout
                    lstm_row(H, a + b * SH, pgh + b * GH, pb, pc + b * H, m)
                    if training:
                        memcpy(pcs + (r0 + b) * H, pc + b * H, H * sizeof(floating))
                    if P == 0:
                        memcpy(hp, m, H * sizeof(floating))
                elif mode == GRU:
                    gru_after_row(H, a + b * SH, pgh + b * GH, pb, pbhn, hp,
                                  pout + (r0 + b) * Hout)
                    memcpy(hp, pout + (r0 + b) * Hout, H * sizeof(floating))
                else:
                    rnn_row(mode == RNN_RELU, H, a + b * SH, pgh + b * GH, pb)
                    if not training:  # when training, a is the output row itself
                        memcpy(pout + (r0 + b) * Hout, a + b * SH, H * sizeof(floating))
                    memcpy(hp, a + b * SH, H * sizeof(floating))
            if P > 0:
                # h = m @ W_hr^T for the active rows, straight into the carried state
                m = pms + (r0 if training else 0) * H
                step_gemm(pk_hr, <int> n, <int> P, <int> H, m, <int> H, True, pwhr, <int> H,
                          False, ph, <int> P)
                memcpy(pout + r0 * P, ph, n * P * sizeof(floating))


# ---------------------------------------------------------------------------------------
# Backward

def backward(int mode, bint reset_after, bint reverse,
             const floating[:, ::1] x,
             const Py_ssize_t[::1] batch_sizes,
             const Py_ssize_t[::1] offsets,
             const floating[:, ::1] h0,
             const floating[:, ::1] c0,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, ::1] w_hr,
             const floating[:, ::1] out,
             const floating[:, ::1] gates,
             const floating[:, ::1] cs,
             const floating[:, ::1] ms,
             const floating[:, ::1] dout,
             floating[:, ::1] dh,
             floating[:, ::1] dc,
             floating[:, ::1] dg,
             floating[:, ::1] hprev,
             floating[:, ::1] dhp,
             floating[:, ::1] dm,
             floating[:, ::1] dh_seq,
             floating[:, ::1] dx,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db_ih,
             floating[::1] db_hh,
             floating[:, ::1] dw_hr,
             floating[::1] pack):
    """BPTT for one direction of one layer (shapes in fastrnn/_compiled.py).

    dh and dc hold dL/dh_n, dL/dc_n on entry and dL/dh0, dL/dc0 on exit. dg, hprev, dhp
    and dm are workspaces; dx and the weight gradients are overwritten, the bias
    gradients must be zero on entry. dh_seq has N rows to fill, or none. pack is the
    workspace of packed_workspace(True, ...) floats, or empty for BLAS.
    """
    cdef Py_ssize_t T = batch_sizes.shape[0]
    if T == 0:
        return
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], GH = w_hh.shape[0], Hout = w_hh.shape[1]
    cdef Py_ssize_t H = w_ih.shape[0] // (4 if mode == LSTM else 3 if mode == GRU else 1)
    cdef Py_ssize_t P = w_hr.shape[0]
    cdef Py_ssize_t SH = gates.shape[1], SD = dg.shape[1]
    cdef bint gru_after = mode == GRU and reset_after
    cdef bint gru_before = mode == GRU and not reset_after
    cdef bint keep_seq = dh_seq.shape[0] > 0
    cdef const Py_ssize_t *bs = &batch_sizes[0]
    cdef const Py_ssize_t *off = &offsets[0]
    cdef const floating *px = &x[0, 0]
    cdef const floating *ph0 = &h0[0, 0]
    cdef const floating *pc0 = &c0[0, 0] if c0.shape[0] > 0 else NULL
    cdef const floating *pwih = &w_ih[0, 0]
    cdef const floating *pwhh = &w_hh[0, 0]
    cdef const floating *pwhr = &w_hr[0, 0] if P > 0 else NULL
    cdef const floating *pout = &out[0, 0]
    # RNN saves no gates: its activation is the output itself
    cdef const floating *pgates = &gates[0, 0] if gates.shape[0] > 0 else NULL
    cdef const floating *pcs = &cs[0, 0] if cs.shape[0] > 0 else NULL
    cdef const floating *pms = &ms[0, 0] if ms.shape[0] > 0 else NULL
    cdef const floating *pdout = &dout[0, 0]
    cdef floating *pdh = &dh[0, 0]
    cdef floating *pdc = &dc[0, 0] if dc.shape[0] > 0 else NULL
    cdef floating *pdg = &dg[0, 0]
    cdef floating *php = &hprev[0, 0]
    cdef floating *pdhp = &dhp[0, 0] if dhp.shape[0] > 0 else NULL
    cdef floating *pdm = &dm[0, 0] if dm.shape[0] > 0 else NULL
    cdef floating *pseq = &dh_seq[0, 0] if keep_seq else NULL
    cdef floating *pdx = &dx[0, 0]
    cdef floating *pdwih = &dw_ih[0, 0]
    cdef floating *pdwhh = &dw_hh[0, 0]
    cdef floating *pdbih = &db_ih[0]
    cdef floating *pdbhh = &db_hh[0]
    cdef floating *pdwhr = &dw_hr[0, 0] if P > 0 else NULL
    cdef Py_ssize_t s, t, n, r0, b, pr, row
    cdef const floating *cprev
    cdef const floating *dmrow
    # K: width of dGh, the block that multiplies W_hh (all of it but for reset-before GRU)
    cdef Py_ssize_t K = 2 * H if gru_before else GH
    cdef Py_ssize_t sizes[3]
    cdef floating *ppk = &pack[0] if pack.shape[0] > 0 else NULL
    cdef floating *pk_hh = NULL
    cdef floating *pk_hn = NULL
    cdef floating *pk_hr = NULL
    with nogil:
        if ppk != NULL:
            _packed_sizes(True, mode, reset_after, H, Hout, P, sizes)
            pk_hh = pack_weight(ppk, False, Hout, K, pwhh, Hout)
            if gru_before:
                pk_hn = pack_weight(ppk + sizes[0], False, H, H, pwhh + 2 * H * Hout, Hout)
            if P > 0:
                pk_hr = pack_weight(ppk + sizes[0] + sizes[1], False, H, P, pwhr, H)
        for s in range(T - 1, -1, -1):
            t = step_time(reverse, T, s)
            n = bs[t]
            r0 = off[t]
            for b in range(n):
                row = r0 + b
                pr = prev_row(reverse, T, bs, off, t, b)
                memcpy(php + row * Hout, (pout + pr * Hout) if pr >= 0 else (ph0 + b * Hout),
                       Hout * sizeof(floating))
                add_rows(1, Hout, pdh + b * Hout, pdout + row * Hout)
            if keep_seq:
                memcpy(pseq + r0 * Hout, pdh, n * Hout * sizeof(floating))
            if P > 0:
                # dW_hr needs every step's dh: keep them, take the GEMM after the loop
                memcpy(pdhp + r0 * P, pdh, n * P * sizeof(floating))
                step_gemm(pk_hr, <int> n, <int> H, <int> P, pdh, <int> P, False, pwhr,
                          <int> H, False, pdm, <int> H)
            for b in range(n):
                row = r0 + b
                if mode == LSTM:
                    pr = prev_row(reverse, T, bs, off, t, b)
                    cprev = (pcs + pr * H) if pr >= 0 else (pc0 + b * H)
                    dmrow = (pdm + b * H) if P > 0 else (pdh + b * Hout)
                    lstm_drow(H, pgates + row * SH, pcs + row * H, cprev, dmrow,
                              pdc + b * H, pdg + row * SD)
                elif gru_after:
                    gru_after_drow(H, pgates + row * SH, php + row * Hout, pdh + b * Hout,
                                   pdg + row * SD)
                elif gru_before:
                    gru_before_drow1(H, pgates + row * SH, php + row * Hout,
                                     pdh + b * Hout, pdg + row * SD)
                else:
                    rnn_drow(mode == RNN_RELU, H, pout + row * Hout, pdh + b * Hout,
                             pdg + row * SD)
            if gru_before:
                # d(rh) = dn @ W_hn, then dr and the r * d(rh) path to h_prev
                step_gemm(pk_hn, <int> n, <int> H, <int> H, pdg + r0 * SD + 2 * H, <int> SD,
                          False, pwhh + 2 * H * Hout, <int> Hout, False, pdm, <int> H)
                for b in range(n):
                    row = r0 + b
                    gru_before_drow2(H, pgates + row * SH, php + row * Hout, pdm + b * H,
                                     pdh + b * Hout, pdg + row * SD)
            # dh_{t-1} = direct part (GRU) + dGh @ W_hh
            step_gemm(pk_hh, <int> n, <int> Hout, <int> K, pdg + r0 * SD, <int> SD, False,
                      pwhh, <int> Hout, mode == GRU, pdh, <int> Hout)

        # Merged GEMMs over all timesteps. dGx columns: [0, GH) except for the
        # reset-after GRU, where the n block of dGx is column block 3 of dG.
        if gru_after:
            gemm(True, False, <int> (2 * H), <int> I, <int> N, <floating> 1, pdg, <int> SD,
                 px, <int> I, <floating> 0, pdwih, <int> I)
            gemm(True, False, <int> H, <int> I, <int> N, <floating> 1, pdg + 3 * H,
                 <int> SD, px, <int> I, <floating> 0, pdwih + 2 * H * I, <int> I)
            gemm(False, False, <int> N, <int> I, <int> (2 * H), <floating> 1, pdg, <int> SD,
                 pwih, <int> I, <floating> 0, pdx, <int> I)
            gemm(False, False, <int> N, <int> I, <int> H, <floating> 1, pdg + 3 * H,
                 <int> SD, pwih + 2 * H * I, <int> I, <floating> 1, pdx, <int> I)
            colsum_add(N, 2 * H, pdg, SD, pdbih)
            colsum_add(N, H, pdg + 3 * H, SD, pdbih + 2 * H)
        else:
            gemm(True, False, <int> GH, <int> I, <int> N, <floating> 1, pdg, <int> SD,
                 px, <int> I, <floating> 0, pdwih, <int> I)
            gemm(False, False, <int> N, <int> I, <int> GH, <floating> 1, pdg, <int> SD,
                 pwih, <int> I, <floating> 0, pdx, <int> I)
            colsum_add(N, GH, pdg, SD, pdbih)
        gemm(True, False, <int> K, <int> Hout, <int> N, <floating> 1, pdg, <int> SD,
             php, <int> Hout, <floating> 0, pdwhh, <int> Hout)
        colsum_add(N, GH, pdg, SD, pdbhh)
        if gru_before:
            # the W_hn block multiplies rh = r * h_prev, saved as gates block 3
            gemm(True, False, <int> H, <int> H, <int> N, <floating> 1, pdg + 2 * H,
                 <int> SD, pgates + 3 * H, <int> SH, <floating> 0, pdwhh + 2 * H * Hout,
                 <int> Hout)
        if P > 0:
            gemm(True, False, <int> P, <int> H, <int> N, <floating> 1, pdhp, <int> P,
                 pms, <int> H, <floating> 0, pdwhr, <int> H)
