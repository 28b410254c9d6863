# Backward through time, one direction of one layer: the loop struct (BwdLoop), the units
# split of one sequence (backward_units), the batch loop and its merged GEMMs
# (backward_loop), and the tasks the pool runs.
#
# Included by _kernels.pyx. Runs without the GIL on what _bwd_prepare and _bwd_plan put in
# BwdLoop; writes only the gradients, dh/dc and scratch given there.

# ---------------------------------------------------------------------------------------
# Backward

cdef Py_ssize_t _row_stride(Py_ssize_t width) noexcept nogil:
    """A row stride of at least `width` floats for dG, whose columns the merged GEMMs read
    down the rows: a whole number of 64-byte lines, and an odd one, so that a column's
    rows fall in every set of the L1 cache. At a stride of 4 KB (LSTM, H = 256) they all
    fall in one, and the weight-gradient GEMMs ran slower (README, performance notes)."""
    cdef Py_ssize_t lines = (width + 15) // 16
    return (lines + 1 - lines % 2) * 16


cdef struct BwdLoop:
    Cell cell
    int reverse, split, few
    Py_ssize_t T, N, inputs, H, Hout, P, ld_gates, ld_dg
    # (ld_gates: the row stride of the saved activations, S*H; ld_dg: that of dG, padded
    # by _row_stride)
    const Py_ssize_t *bs
    const Py_ssize_t *off
    Py_ssize_t seqs[FR_MAX_THREADS_1]  # thread k runs sequences seqs[k] <= b < seqs[k + 1]
    # batch, gate rows, packed floats (of which W_ih's), scratch: for the entry points
    Py_ssize_t B, GH, npack, npack_ih
    void *scratch
    void *px
    void *ph0
    void *pc0
    void *pwih
    void *pwhh
    void *pwhr
    void *pout
    void *pgates
    void *pcs
    void *pms
    void *pdout
    void *pdh
    void *pdc
    void *pdg
    void *php
    void *pdhp
    void *pdm
    void *pseq
    void *pdx
    void *pdwih
    void *pdwhh
    void *pdbih
    void *pdbhh
    void *pdwhr
    void *ppacked
    void *pbpack  # per thread bpack_floats for fr_gemm_tn, or NULL: BLAS
    Py_ssize_t bpack_floats
    volatile Py_ssize_t *stop  # the call's stop word (_stop.h), or NULL


cdef void backward_units(floating *kind, BwdLoop *L, int tid, int nth,
                         floating *packed_hh) noexcept nogil:
    """BPTT of one sequence (B = 1) on threads that split its hidden units, as
    forward_units: thread tid takes the cells of units [u0, u1), which give their columns
    of every gate of dG; all meet at a barrier, then each computes its units of
    dh_{t-1} = dG @ W_hh from the whole dG row. dG rows are per step, so the next step's
    cells write a row no thread still reads. Float32 on the packed kernel, no projection,
    no reset-before GRU; the merged GEMMs follow in backward_loop."""
    cdef Cell cell = L.cell
    cdef bint reverse = L.reverse
    cdef Py_ssize_t T = L.T, H = L.H, ld_gates = L.ld_gates, ld_dg = L.ld_dg
    cdef Py_ssize_t G = _gates(cell)
    cdef const Py_ssize_t *off = L.off
    cdef const floating *ph0 = <const floating *> L.ph0
    cdef const floating *pc0 = <const floating *> L.pc0
    cdef const floating *pout = <const floating *> L.pout
    cdef const floating *pgates = <const floating *> L.pgates
    cdef const floating *pcs = <const floating *> L.pcs
    cdef const floating *pdout = <const floating *> L.pdout
    cdef floating *pdh = <floating *> L.pdh
    cdef floating *pdc = <floating *> L.pdc
    cdef floating *pdg = <floating *> L.pdg
    cdef floating *php = <floating *> L.php
    cdef floating *pseq = <floating *> L.pseq
    cdef const floating *hprev
    cdef const floating *cprev
    cdef Py_ssize_t u0, u1, nr = fr_panel_width()
    cdef Py_ssize_t s, row, prow, nu
    if floating is float:
        fr_split(H, nr, tid, nth, &u0, &u1)
        nu = u1 - u0
        for s in range(T - 1, -1, -1):
            if fr_stop_before(L.stop, T - 1 - s, T - s):  # as forward_units
                break
            row = off[step_time(reverse, T, s)]
            prow = off[step_time(reverse, T, s - 1)] if s > 0 else -1
            hprev = (pout + prow * H) if prow >= 0 else ph0
            memcpy(php + row * H + u0, hprev + u0, nu * sizeof(floating))
            add_rows(1, nu, pdh + u0, pdout + row * H + u0)
            if pseq != NULL:
                memcpy(pseq + row * H + u0, pdh + u0, nu * sizeof(floating))
            if cell == LSTM:
                cprev = (pcs + prow * H) if prow >= 0 else pc0
                lstm_drow(H, nu, pgates + row * ld_gates + u0, pcs + row * H + u0, cprev + u0,
                          pdh + u0, pdc + u0, pdg + row * ld_dg + u0)
            elif cell == GRU_AFTER:
                gru_after_drow(H, nu, pgates + row * ld_gates + u0, php + row * H + u0, pdh + u0,
                               pdg + row * ld_dg + u0)
            else:
                rnn_drow(cell == RNN_RELU, nu, pout + row * H + u0, pdh + u0,
                         pdg + row * ld_dg + u0)
            sync(tid, nth)
            fr_gemm_panels(1, H, G * H, pdg + row * ld_dg, ld_dg, packed_hh, pdh, H,
                           cell == GRU_AFTER, u0 // nr, u1 // nr)


# The steps of backward_loop, each inlined into it (called once; names for what they do).

cdef void backward_few(floating *kind, BwdLoop *L, int tid, int nth) noexcept nogil:
    """BPTT of a call of few rows (L.few: as forward_few, every sequence of all T steps)
    with W_hh read in place by the few-rows kernel, nothing packed: thread tid takes the
    cells of units [u0, u1) of every row, which give their columns of every gate of dG;
    all meet, then each computes its units of dh_{t-1} = dG @ W_hh (its columns of W_hh)
    from the whole dG rows, as backward_units does for one sequence. Float32, no
    projection, no reset-before GRU; the merged GEMMs follow in backward_loop."""
    cdef Cell cell = L.cell
    cdef bint reverse = L.reverse
    cdef Py_ssize_t T = L.T, H = L.H, B = L.B, ld_gates = L.ld_gates, ld_dg = L.ld_dg
    cdef Py_ssize_t GH = _gates(cell) * H
    cdef const Py_ssize_t *off = L.off
    cdef const floating *ph0 = <const floating *> L.ph0
    cdef const floating *pc0 = <const floating *> L.pc0
    cdef const floating *pwhh = <const floating *> L.pwhh
    cdef const floating *pout = <const floating *> L.pout
    cdef const floating *pgates = <const floating *> L.pgates
    cdef const floating *pcs = <const floating *> L.pcs
    cdef const floating *pdout = <const floating *> L.pdout
    cdef floating *pdh = <floating *> L.pdh
    cdef floating *pdc = <floating *> L.pdc
    cdef floating *pdg = <floating *> L.pdg
    cdef floating *php = <floating *> L.php
    cdef floating *pseq = <floating *> L.pseq
    cdef const floating *hprev
    cdef const floating *cprev
    cdef Py_ssize_t u0, u1
    cdef Py_ssize_t s, b, row, prow, r, nu
    if floating is float:
        fr_split(H, fr_kt.lanes, tid, nth, &u0, &u1)
        nu = u1 - u0
        for s in range(T - 1, -1, -1):
            if fr_stop_before(L.stop, T - 1 - s, T - s):  # as forward_units
                break
            row = off[step_time(reverse, T, s)]
            prow = off[step_time(reverse, T, s - 1)] if s > 0 else -1
            for b in range(B if nu > 0 else 0):
                r = row + b
                hprev = (pout + (prow + b) * H) if prow >= 0 else (ph0 + b * H)
                memcpy(php + r * H + u0, hprev + u0, nu * sizeof(floating))
                add_rows(1, nu, pdh + b * H + u0, pdout + r * H + u0)
                if pseq != NULL:
                    memcpy(pseq + r * H + u0, pdh + b * H + u0, nu * sizeof(floating))
                if cell == LSTM:
                    cprev = (pcs + (prow + b) * H) if prow >= 0 else (pc0 + b * H)
                    lstm_drow(H, nu, pgates + r * ld_gates + u0, pcs + r * H + u0, cprev + u0,
                              pdh + b * H + u0, pdc + b * H + u0, pdg + r * ld_dg + u0)
                elif cell == GRU_AFTER:
                    gru_after_drow(H, nu, pgates + r * ld_gates + u0, php + r * H + u0,
                                   pdh + b * H + u0, pdg + r * ld_dg + u0)
                else:
                    rnn_drow(cell == RNN_RELU, nu, pout + r * H + u0, pdh + b * H + u0,
                             pdg + r * ld_dg + u0)
            sync(tid, nth)
            fr_few_nn(B, GH, pdg + row * ld_dg, ld_dg, pwhh, H, pdh, H, cell == GRU_AFTER,
                      u0, u1)


cdef inline void bwd_pack_weights(Cell cell, bint pack_ih, Py_ssize_t I, Py_ssize_t H,
                                  Py_ssize_t Hout, Py_ssize_t P, int tid, int nth,
                                  floating *room, const floating *pwih, const floating *pwhh,
                                  const floating *pwhr, floating **packed_hh, floating **packed_hn,
                                  floating **packed_hr, floating **packed_ih,
                                  floating **packed_ih_n) noexcept nogil:
    """This thread's share of packing the weights (op(W) = W: backward multiplies by W)
    into room, in the order of _packed_sizes: W_hh's block that dGh multiplies, W_hn apart
    (reset-before GRU), W_hr (P > 0), and for the merged dx GEMM W_ih (pack_ih; the
    reset-after GRU's rows [0, 2H) and [2H, 3H) apart, as they meet dG blocks that are
    not adjacent); then the threads meet, as each reads the panels of all."""
    cdef Py_ssize_t GH = _gates(cell) * H
    cdef Py_ssize_t K = 2 * H if cell == GRU_BEFORE else GH
    cdef Py_ssize_t sizes[4]
    _packed_sizes(True, cell, I, H, Hout, P, sizes)
    packed_hh[0] = pack_weight(tid, nth, room, False, Hout, K, pwhh, Hout)
    if cell == GRU_BEFORE:
        packed_hn[0] = pack_weight(tid, nth, room + sizes[0], False, H, H, pwhh + 2 * H * Hout,
                               Hout)
    if P > 0:
        packed_hr[0] = pack_weight(tid, nth, room + sizes[0] + sizes[1], False, H, P, pwhr, H)
    if pack_ih:
        packed_ih[0] = room + sizes[0] + sizes[1] + sizes[2]
        if cell == GRU_AFTER:
            pack_weight(tid, nth, packed_ih[0], False, I, 2 * H, pwih, I)
            packed_ih_n[0] = pack_weight(tid, nth, packed_ih[0] + fr_packed_size(I, 2 * H),
                                         False, I, H, pwih + 2 * H * I, I)
        else:
            pack_weight(tid, nth, packed_ih[0], False, I, GH, pwih, I)
    sync(tid, nth)


cdef inline void bwd_step_dh(bint reverse, Py_ssize_t T, const Py_ssize_t *bs,
                             const Py_ssize_t *off, Py_ssize_t t, Py_ssize_t n, Py_ssize_t r0,
                             Py_ssize_t lo, Py_ssize_t H, Py_ssize_t Hout, Py_ssize_t P,
                             const floating *pout, const floating *ph0,
                             const floating *pdout, const floating *packed_hr,
                             const floating *pwhr, floating *php, floating *pdh,
                             floating *pseq, floating *pdhp, floating *pdm) noexcept nogil:
    """dL/dh of the step's n rows (packed rows r0 + b, states lo + b): each row's h_{t-1}
    kept for dW_hh (php), dout added to the carried dh, which is kept for dh_seq (pseq)
    and, with the LSTM projection, for dW_hr (pdhp) and taken back through it:
    dm = dh @ W_hr."""
    cdef Py_ssize_t b, row, pr
    for b in range(n):
        row = r0 + b
        pr = prev_row(reverse, T, bs, off, t, lo + b)
        memcpy(php + row * Hout, (pout + pr * Hout) if pr >= 0 else (ph0 + (lo + b) * Hout),
               Hout * sizeof(floating))
        add_rows(1, Hout, pdh + (lo + b) * Hout, pdout + row * Hout)
    if pseq != NULL:
        memcpy(pseq + r0 * Hout, pdh + lo * Hout, n * Hout * sizeof(floating))
    if P > 0:
        # dW_hr needs every step's dh: keep them, take the GEMM after the loop
        memcpy(pdhp + r0 * P, pdh + lo * P, n * P * sizeof(floating))
        step_gemm(packed_hr, <int> n, <int> H, <int> P, pdh + lo * P, <int> P, False, pwhr,
                  <int> H, False, pdm + lo * H, <int> H)


cdef inline void bwd_cell_rows(Cell cell, bint reverse, Py_ssize_t T, const Py_ssize_t *bs,
                               const Py_ssize_t *off, Py_ssize_t t, Py_ssize_t n,
                               Py_ssize_t r0, Py_ssize_t lo, Py_ssize_t H, Py_ssize_t Hout,
                               Py_ssize_t P, Py_ssize_t ld_gates, Py_ssize_t ld_dg,
                               const floating *pgates, const floating *pcs,
                               const floating *pc0, const floating *pout,
                               const floating *php, const floating *pdm, floating *pdh,
                               floating *pdc, floating *pdg) noexcept nogil:
    """The cell's derivatives of each of the step's n rows: dG (the reset-before GRU's
    first part: dz, dn and the direct path to h_prev), and the LSTM's dc."""
    cdef Py_ssize_t b, row, pr
    cdef const floating *cprev
    cdef const floating *dmrow
    for b in range(n):
        row = r0 + b
        if cell == LSTM:
            pr = prev_row(reverse, T, bs, off, t, lo + b)
            cprev = (pcs + pr * H) if pr >= 0 else (pc0 + (lo + b) * H)
            dmrow = (pdm + (lo + b) * H) if P > 0 else (pdh + (lo + b) * Hout)
            lstm_drow(H, H, pgates + row * ld_gates, pcs + row * H, cprev, dmrow,
                      pdc + (lo + b) * H, pdg + row * ld_dg)
        elif cell == GRU_AFTER:
            gru_after_drow(H, H, pgates + row * ld_gates, php + row * Hout, pdh + (lo + b) * Hout,
                           pdg + row * ld_dg)
        elif cell == GRU_BEFORE:
            gru_before_drow1(H, pgates + row * ld_gates, php + row * Hout,
                             pdh + (lo + b) * Hout, pdg + row * ld_dg)
        else:
            rnn_drow(cell == RNN_RELU, H, pout + row * Hout, pdh + (lo + b) * Hout,
                     pdg + row * ld_dg)


cdef inline void bwd_gru_before_reset(Py_ssize_t H, Py_ssize_t Hout, Py_ssize_t ld_gates,
                                      Py_ssize_t ld_dg, Py_ssize_t n, Py_ssize_t r0,
                                      Py_ssize_t lo, const floating *pgates,
                                      const floating *php, const floating *packed_hn,
                                      const floating *pwhh, floating *pdm, floating *pdh,
                                      floating *pdg) noexcept nogil:
    """The reset-before GRU's second part: d(rh) = dn @ W_hn, then dr and the r * d(rh)
    path to h_prev."""
    cdef Py_ssize_t b, row
    step_gemm(packed_hn, <int> n, <int> H, <int> H, pdg + r0 * ld_dg + 2 * H, <int> ld_dg,
              False, pwhh + 2 * H * Hout, <int> Hout, False, pdm + lo * H, <int> H)
    for b in range(n):
        row = r0 + b
        gru_before_drow2(H, pgates + row * ld_gates, php + row * Hout, pdm + (lo + b) * H,
                         pdh + (lo + b) * Hout, pdg + row * ld_dg)


cdef inline void bwd_merged_gemms(const BwdLoop *L, int tid, int nth, const floating *packed_ih,
                                  const floating *packed_ih_n, floating *bpack) noexcept nogil:
    """This thread's share of the merged GEMMs over all timesteps, each split by its output
    rows (or columns for the sums), so they need no barrier between them: dW_ih, dx, the
    bias gradients, dW_hh (the reset-before GRU's W_hn block apart) and dW_hr. dGx
    columns: [0, GH) except for the reset-after GRU, where the n block of dGx is column
    block 3 of dG. On threads, the packed kernel takes them (BLAS would pack its operands
    again in every thread); a call of few rows (L.few) multiplies W_ih in place."""
    cdef Py_ssize_t N = L.N, I = L.inputs, H = L.H, Hout = L.Hout, P = L.P
    cdef Py_ssize_t ld_gates = L.ld_gates, ld_dg = L.ld_dg
    cdef Py_ssize_t GH = _gates(L.cell) * H
    cdef bint gru_after = L.cell == GRU_AFTER
    cdef bint gru_before = L.cell == GRU_BEFORE
    cdef Py_ssize_t K = 2 * H if gru_before else GH  # the width of dGh
    cdef const floating *px = <const floating *> L.px
    cdef const floating *pwih = <const floating *> L.pwih
    cdef const floating *pgates = <const floating *> L.pgates
    cdef const floating *pms = <const floating *> L.pms
    cdef const floating *pdg = <const floating *> L.pdg
    cdef const floating *php = <const floating *> L.php
    cdef const floating *pdhp = <const floating *> L.pdhp
    cdef floating *pdx = <floating *> L.pdx
    cdef floating *pdwih = <floating *> L.pdwih
    cdef floating *pdwhh = <floating *> L.pdwhh
    cdef floating *pdbih = <floating *> L.pdbih
    cdef floating *pdbhh = <floating *> L.pdbhh
    cdef floating *pdwhr = <floating *> L.pdwhr
    cdef Py_ssize_t lo_c, hi_c
    if floating is float:
        if L.few:
            # dx = dGx @ W_ih with W_ih read in place, the threads taking its columns
            fr_split(I, fr_kt.lanes, tid, nth, &lo_c, &hi_c)
            if gru_after:
                fr_few_nn(N, 2 * H, pdg, ld_dg, pwih, I, pdx, I, 0, lo_c, hi_c)
                fr_few_nn(N, H, pdg + 3 * H, ld_dg, pwih + 2 * H * I, I, pdx, I, 1, lo_c, hi_c)
            else:
                fr_few_nn(N, GH, pdg, ld_dg, pwih, I, pdx, I, 0, lo_c, hi_c)
    if gru_after:
        merged_tn(tid, nth, <int> (2 * H), <int> I, <int> N, pdg, <int> ld_dg, px, <int> I,
                  pdwih, <int> I, bpack, L.stop)
        merged_tn(tid, nth, <int> H, <int> I, <int> N, pdg + 3 * H, <int> ld_dg, px, <int> I,
                  pdwih + 2 * H * I, <int> I, bpack, L.stop)
        if not L.few:
            merged_nn(tid, nth, packed_ih, <int> N, <int> I, <int> (2 * H), pdg, <int> ld_dg,
                      pwih, <int> I, False, pdx, <int> I, L.stop)
            merged_nn(tid, nth, packed_ih_n, <int> N, <int> I, <int> H, pdg + 3 * H,
                      <int> ld_dg, pwih + 2 * H * I, <int> I, True, pdx, <int> I, L.stop)
        colsum_add(tid, nth, N, 2 * H, pdg, ld_dg, pdbih)
        colsum_add(tid, nth, N, H, pdg + 3 * H, ld_dg, pdbih + 2 * H)
    else:
        merged_tn(tid, nth, <int> GH, <int> I, <int> N, pdg, <int> ld_dg, px, <int> I, pdwih,
                  <int> I, bpack, L.stop)
        if not L.few:
            merged_nn(tid, nth, packed_ih, <int> N, <int> I, <int> GH, pdg, <int> ld_dg, pwih,
                      <int> I, False, pdx, <int> I, L.stop)
        colsum_add(tid, nth, N, GH, pdg, ld_dg, pdbih)
    merged_tn(tid, nth, <int> K, <int> Hout, <int> N, pdg, <int> ld_dg, php, <int> Hout, pdwhh,
              <int> Hout, bpack, L.stop)
    if gru_after:
        colsum_add(tid, nth, N, GH, pdg, ld_dg, pdbhh)
    else:
        # both biases meet the same pre-activations: one sum serves both; this thread's
        # columns of it are the ones it summed
        fr_split(GH, 16, tid, nth, &lo_c, &hi_c)
        memcpy(pdbhh + lo_c, pdbih + lo_c, (hi_c - lo_c) * sizeof(floating))
    if gru_before:
        # the W_hn block multiplies rh = r * h_prev, saved as gates block 3
        merged_tn(tid, nth, <int> H, <int> H, <int> N, pdg + 2 * H, <int> ld_dg, pgates + 3 * H,
                  <int> ld_gates, pdwhh + 2 * H * Hout, <int> Hout, bpack, L.stop)
    if P > 0:
        merged_tn(tid, nth, <int> P, <int> H, <int> N, pdhp, <int> P, pms, <int> H, pdwhr,
                  <int> H, bpack, L.stop)


cdef void backward_loop(floating *kind, BwdLoop *L, int tid, int nth) noexcept nogil:
    """Thread tid's sequences of BPTT for one direction of one layer, then its share of
    the merged GEMMs.

    pdh and pdc hold dL/dh_n, dL/dc_n on entry and dL/dh0, dL/dc0 on exit; pdg, php,
    pdhp and pdm (B x H) are workspaces; dx and the weight gradients are overwritten, the
    bias gradients must be zero on entry; pseq, if not NULL, receives every step's dL/dh_t.
    """
    cdef Cell cell = L.cell
    cdef bint reverse = L.reverse
    cdef Py_ssize_t T = L.T, I = L.inputs, H = L.H, Hout = L.Hout, P = L.P
    cdef Py_ssize_t ld_gates = L.ld_gates, ld_dg = L.ld_dg
    cdef const Py_ssize_t *bs = L.bs
    cdef const Py_ssize_t *off = L.off
    cdef const floating *ph0 = <const floating *> L.ph0
    cdef const floating *pc0 = <const floating *> L.pc0
    cdef const floating *pwih = <const floating *> L.pwih
    cdef const floating *pwhh = <const floating *> L.pwhh
    cdef const floating *pwhr = <const floating *> L.pwhr
    cdef const floating *pout = <const floating *> L.pout
    cdef const floating *pgates = <const floating *> L.pgates
    cdef const floating *pcs = <const floating *> L.pcs
    cdef const floating *pdout = <const floating *> L.pdout
    cdef floating *pdh = <floating *> L.pdh
    cdef floating *pdc = <floating *> L.pdc
    cdef floating *pdg = <floating *> L.pdg
    cdef floating *php = <floating *> L.php
    cdef floating *pdhp = <floating *> L.pdhp
    cdef floating *pdm = <floating *> L.pdm
    cdef floating *pseq = <floating *> L.pseq
    cdef floating *ppacked = <floating *> L.ppacked

    cdef Py_ssize_t GH = _gates(cell) * H
    cdef bint gru_before = cell == GRU_BEFORE
    # K: width of dGh, the block that multiplies W_hh (all of it but for reset-before GRU)
    cdef Py_ssize_t K = 2 * H if gru_before else GH
    cdef Py_ssize_t lo = L.seqs[tid], hi = L.seqs[tid + 1]
    cdef Py_ssize_t s, t, n, r0
    cdef floating *packed_hh = NULL
    cdef floating *packed_hn = NULL
    cdef floating *packed_hr = NULL
    cdef floating *packed_ih = NULL
    cdef floating *packed_ih_n = NULL
    cdef floating *bpack = NULL
    if L.pbpack != NULL:
        bpack = <floating *> L.pbpack + tid * L.bpack_floats
    if ppacked != NULL:
        bwd_pack_weights(cell, L.pbpack != NULL, I, H, Hout, P, tid, nth, ppacked, pwih, pwhh,
                         pwhr, &packed_hh, &packed_hn, &packed_hr, &packed_ih, &packed_ih_n)
    if L.few:
        backward_few(kind, L, tid, nth)
    elif L.split:
        backward_units(kind, L, tid, nth, packed_hh)
    else:
        for s in range(T - 1, -1, -1):
            if fr_stop_before(L.stop, T - 1 - s, 0):
                break
            t = step_time(reverse, T, s)
            r0 = off[t] + lo  # from here rows and states are counted from sequence lo
            n = min(bs[t], hi) - lo
            if n <= 0:
                continue
            bwd_step_dh(reverse, T, bs, off, t, n, r0, lo, H, Hout, P, pout, ph0, pdout, packed_hr,
                        pwhr, php, pdh, pseq, pdhp, pdm)
            bwd_cell_rows(cell, reverse, T, bs, off, t, n, r0, lo, H, Hout, P, ld_gates, ld_dg,
                          pgates, pcs, pc0, pout, php, pdm, pdh, pdc, pdg)
            if gru_before:
                bwd_gru_before_reset(H, Hout, ld_gates, ld_dg, n, r0, lo, pgates, php, packed_hn,
                                     pwhh, pdm, pdh, pdg)
            # dh_{t-1} = direct part (GRU) + dGh @ W_hh
            step_gemm(packed_hh, <int> n, <int> Hout, <int> K, pdg + r0 * ld_dg, <int> ld_dg, False,
                      pwhh, <int> Hout, _is_gru(cell), pdh + lo * Hout, <int> Hout)
    sync(tid, nth)
    if L.stop != NULL and L.stop[0] != PTRDIFF_MAX:
        return  # stopped: the word is final here (no thread polls past the loop)
    bwd_merged_gemms(L, tid, nth, packed_ih, packed_ih_n, bpack)


cdef void backward_task_f(void *ctx, int tid, int nth) noexcept nogil:
    backward_loop(<float *> NULL, <BwdLoop *> ctx, tid, nth)


cdef void backward_task_d(void *ctx, int tid, int nth) noexcept nogil:
    backward_loop(<double *> NULL, <BwdLoop *> ctx, tid, nth)
