# Forward through time, one direction of one layer: the loop struct (FwdLoop), the cells
# of a row, the batch loop (forward_loop), the input projection of every row
# (project_rows), the units split of one sequence (forward_units), the loop of calls of
# few rows on weights read in place (forward_few), and the tasks the pool runs.
#
# Included by _kernels.pyx. Runs without the GIL on what _fwd_prepare and _fwd_plan put in
# FwdLoop; writes only the outputs, states and scratch given there.

cdef struct FwdLoop:
    # the problem (see forward_loop) and its buffers, typed by the task that runs it;
    # inputs: I (<complex.h> defines I as a macro)
    Cell cell
    int reverse, training, split, upfront, seq1, fuse, pack_ih, few
    Py_ssize_t T, inputs, H, Hout, P, ld_gates, chunk_rows
    # (ld_gates: floats a row of pgates, S*H, the saved activations of a row; ppacked: room
    # for the packed weights, or NULL; vector_cells in the loops: the vector cells of the
    # packed kernel)
    const Py_ssize_t *bs
    const Py_ssize_t *off
    Py_ssize_t seqs[FR_MAX_THREADS_1]  # thread k runs sequences seqs[k] <= b < seqs[k + 1]
    # rows, batch, gate rows, packed floats (of which W_ih's), scratch, the given biases:
    # for the entry points (_fwd_prepare, _fwd_plan, _fwd_release)
    Py_ssize_t N, B, GH, npack, npack_ih
    void *scratch
    const void *pbih
    const void *pbhh
    # a layer of a stack whose layers run at once (forward_stack): the steps this loop has
    # done, stored after each step, and the steps of the layer below that its next chunk
    # of inputs needs (NULL: none); sleepers counts the threads asleep on either
    int *progress
    int *wait_on
    int *sleepers
    # the steps of a chunk that waits on the layer below, and between the stores of
    # progress (the end of the loop stores the last)
    Py_ssize_t wait_steps
    int projected  # the rows projected up front already (by the threads of a stack)
    volatile Py_ssize_t *stop  # the call's stop word (_stop.h), or NULL
    void *px
    void *pwih
    void *pwhh
    void *pb
    void *pbhn
    void *pwhr
    void *ph
    void *pc
    void *pout
    void *pgates
    void *pxg
    void *pcs
    void *pms
    void *pgh
    void *ppacked
    void *pgx  # fuse: 2 rows of projection


# The cells of a row of units [0, n) (gate blocks H apart): on the packed kernel (vector_cells:
# float32) the vector cells of the kernel table, which every float32 loop then shares,
# else _cellmath's. The activations are saved in a when training (_cellmath's always).

cdef inline void rnn_cell(bint vector_cells, bint relu, Py_ssize_t n, floating *a,
                          const floating *gh, const floating *b) noexcept nogil:
    """In place: a holds the projection on entry, the new state on exit."""
    if floating is float:
        if vector_cells:
            fr_rnn_row_v(relu, n, a, gh, b, a)
            return
    rnn_row(relu, n, a, gh, b)


cdef inline void lstm_cell(bint vector_cells, bint training, Py_ssize_t H, Py_ssize_t n,
                           floating *a, const floating *gh, const floating *b, floating *c,
                           floating *m) noexcept nogil:
    if floating is float:
        if vector_cells:
            fr_lstm_row_v(H, n, a, gh, b, a if training else NULL, c, NULL, m)
            return
    lstm_row(H, n, a, gh, b, c, m)


cdef inline void gru_cell(bint vector_cells, bint training, Py_ssize_t H, Py_ssize_t n, floating *a,
                          const floating *gh, const floating *b, const floating *bhn,
                          const floating *hp, floating *o) noexcept nogil:
    if floating is float:
        if vector_cells:
            fr_gru_row_v(H, n, a, gh, b, bhn, hp, a if training else NULL, o)
            return
    gru_after_row(H, n, a, gh, b, bhn, hp, o)


# The steps of forward_loop, each inlined into it (called once; names for what they do).

cdef inline void fwd_pack_weights(Cell cell, bint pack_ih, Py_ssize_t I, Py_ssize_t H,
                                  Py_ssize_t Hout, Py_ssize_t P, int tid, int nth,
                                  floating *room, const floating *pwih, const floating *pwhh,
                                  const floating *pwhr, floating **packed_hh, floating **packed_hn,
                                  floating **packed_hr, floating **packed_ih) noexcept nogil:
    """This thread's share of packing the weights of the step GEMMs (op(W) = W^T) into
    room, in the order of _packed_sizes: W_hh (for the reset-before GRU its r and z rows,
    and W_hn apart), W_hr (P > 0) and W_ih (pack_ih); then the threads meet, as each reads
    the panels of all."""
    cdef Py_ssize_t GH = _gates(cell) * H
    cdef bint gru_before = cell == GRU_BEFORE
    cdef Py_ssize_t sizes[4]
    _packed_sizes(False, cell, I, H, Hout, P, sizes)
    packed_hh[0] = pack_weight(tid, nth, room, True, 2 * H if gru_before else GH, Hout, pwhh,
                           Hout)
    if gru_before:
        packed_hn[0] = pack_weight(tid, nth, room + sizes[0], True, H, H, pwhh + 2 * H * Hout,
                               Hout)
    if P > 0:
        packed_hr[0] = pack_weight(tid, nth, room + sizes[0] + sizes[1], True, P, H, pwhr, H)
    if pack_ih:
        packed_ih[0] = pack_weight(tid, nth, room + sizes[0] + sizes[1] + sizes[2], True, GH, I,
                               pwih, I)
    sync(tid, nth)


cdef inline Py_ssize_t fwd_project_chunk(bint reverse, Py_ssize_t T, const Py_ssize_t *bs,
                                         const Py_ssize_t *off, Py_ssize_t lo, Py_ssize_t hi,
                                         Py_ssize_t s, Py_ssize_t n, Py_ssize_t chunk_rows,
                                         Py_ssize_t I, Py_ssize_t GH, Py_ssize_t ld_gates,
                                         const floating *px, const floating *pwih,
                                         const floating *packed_ih, floating *pgates,
                                         floating *pxg, int *wait_on, int *sleepers,
                                         Py_ssize_t *row_base) noexcept nogil:
    """Project the inputs of the run of steps from s (n of this thread's rows at s, about
    chunk_rows in all) into pgates in one GEMM, and return the step after the run. With
    one thread (pxg NULL) they are one block of x, from row *row_base (in the reverse
    order when reverse); else this thread's rows are gathered into pxg in visiting order."""
    cdef Py_ssize_t s_end = s + 1, rows = n, u, j, b
    while s_end < T:
        u = step_time(reverse, T, s_end)
        j = min(bs[u], hi) - lo
        if j <= 0 or rows + j > chunk_rows:
            break
        rows += j
        s_end += 1
    if wait_on != NULL:
        # the layer below, on another thread, has computed these rows of x
        fr_wait_at_least(wait_on, <int> s_end, sleepers)
    if pxg == NULL:
        # one thread: packed W_ih (if packed) or BLAS
        row_base[0] = off[T - s_end] if reverse else off[s]
        step_gemm(packed_ih, <int> rows, <int> GH, <int> I, px + row_base[0] * I,
                  <int> I, True, pwih, <int> I, False, pgates, <int> ld_gates)
    else:
        j = 0
        for u in range(s, s_end):
            b = min(bs[step_time(reverse, T, u)], hi) - lo
            memcpy(pxg + j * I, px + (off[step_time(reverse, T, u)] + lo) * I,
                   b * I * sizeof(floating))
            j += b
        gemm(False, True, <int> rows, <int> GH, <int> I, <floating> 1, pxg,
             <int> I, pwih, <int> I, <floating> 0, pgates, <int> ld_gates)
    return s_end


cdef inline void fwd_step_gru_before(Py_ssize_t H, Py_ssize_t Hout, Py_ssize_t ld_gates,
                                     Py_ssize_t GH, Py_ssize_t n, Py_ssize_t row0,
                                     floating *a, floating *hp, floating *gh,
                                     const floating *pb, const floating *packed_hh,
                                     const floating *packed_hn, const floating *pwhh,
                                     floating *pout) noexcept nogil:
    """One step of the reset-before GRU for n rows (packed row row0 on, states hp, their
    projections a, recurrent products gh): r and z first; n needs W_hn (r * h), a second
    GEMM on the critical path."""
    cdef Py_ssize_t b
    step_gemm(packed_hh, <int> n, <int> (2 * H), <int> Hout, hp, <int> Hout, True, pwhh,
              <int> Hout, False, gh, <int> GH)
    for b in range(n):
        gru_before_gates(H, a + b * ld_gates, gh + b * GH, pb, hp + b * Hout)
    step_gemm(packed_hn, <int> n, <int> H, <int> H, a + 3 * H, <int> ld_gates, True,
              pwhh + 2 * H * Hout, <int> Hout, False, gh + 2 * H, <int> GH)
    for b in range(n):
        gru_before_out(H, a + b * ld_gates, gh + b * GH + 2 * H, pb,
                       hp + b * Hout, pout + (row0 + b) * Hout)
        memcpy(hp + b * Hout, pout + (row0 + b) * Hout, H * sizeof(floating))


cdef inline void fwd_cell_rows(Cell cell, bint vector_cells, bint training, bint in_out,
                               Py_ssize_t H, Py_ssize_t Hout, Py_ssize_t P, Py_ssize_t ld_gates,
                               Py_ssize_t GH, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t lo,
                               floating *a,
                               floating *hp, const floating *pgh, const floating *pb,
                               const floating *pbhn, floating *pc, floating *pcs,
                               floating *pms, floating *pout) noexcept nogil:
    """The cell of each of the step's n rows (the step's rows r0 + lo + b, states lo + b),
    after h @ W_hh^T: the output row, the new state (but the LSTM projection's, made
    after) and, when training, the saved cell state."""
    cdef Py_ssize_t b
    cdef floating *arow
    cdef floating *m
    for b in range(n):
        arow = a + b * ld_gates
        if cell == LSTM:
            if P > 0:
                m = pms + ((r0 + lo + b) if training else (lo + b)) * H
            else:
                m = pout + (r0 + lo + b) * Hout
            lstm_cell(vector_cells, training, H, H, arow, pgh + (lo + b) * GH, pb,
                      pc + (lo + b) * H, m)
            if training:
                memcpy(pcs + (r0 + lo + b) * H, pc + (lo + b) * H, H * sizeof(floating))
            if P == 0:
                memcpy(hp + b * Hout, m, H * sizeof(floating))
        elif cell == GRU_AFTER:
            gru_cell(vector_cells, training, H, H, arow, pgh + (lo + b) * GH, pb, pbhn,
                     hp + b * Hout, pout + (r0 + lo + b) * Hout)
            memcpy(hp + b * Hout, pout + (r0 + lo + b) * Hout, H * sizeof(floating))
        else:
            rnn_cell(vector_cells, cell == RNN_RELU, H, arow, pgh + (lo + b) * GH, pb)
            if not in_out:  # else a is the output row itself
                memcpy(pout + (r0 + lo + b) * Hout, arow, H * sizeof(floating))
            memcpy(hp + b * Hout, arow, H * sizeof(floating))


cdef inline void fwd_lstm_projection(bint training, Py_ssize_t H, Py_ssize_t P, Py_ssize_t n,
                                     Py_ssize_t r0, Py_ssize_t lo, floating *pms,
                                     const floating *packed_hr, const floating *pwhr,
                                     floating *hp, floating *pout) noexcept nogil:
    """h = m @ W_hr^T for the step's n active rows, straight into the carried state, and
    into the output."""
    cdef floating *m = pms + ((r0 + lo) if training else lo) * H
    step_gemm(packed_hr, <int> n, <int> P, <int> H, m, <int> H, True, pwhr, <int> H,
              False, hp, <int> P)
    memcpy(pout + (r0 + lo) * P, hp, n * P * sizeof(floating))


cdef void forward_loop(floating *kind, FwdLoop *L, int tid, int nth) noexcept nogil:
    """Thread tid's sequences of one direction of one layer over a packed batch.

    ph and pc hold the initial states on entry and the final ones on exit; pgh is B x G*H
    scratch for the step's recurrent projection; ppacked is room for the packed weights, or
    NULL. pgates has ld_gates floats a row: when training every row's saved activations, else
    each thread's chunk_rows rows of scratch for the input projection of a run of steps,
    whose inputs come from pxg (chunk_rows x I per thread) where the thread's rows of x
    are not one block (nth > 1).
    """
    cdef Cell cell = L.cell
    cdef bint reverse = L.reverse, training = L.training
    cdef Py_ssize_t T = L.T, I = L.inputs, H = L.H, Hout = L.Hout, P = L.P, ld_gates = L.ld_gates
    cdef Py_ssize_t chunk_rows = L.chunk_rows
    cdef const Py_ssize_t *bs = L.bs
    cdef const Py_ssize_t *off = L.off
    cdef const floating *px = <const floating *> L.px
    cdef const floating *pwih = <const floating *> L.pwih
    cdef const floating *pwhh = <const floating *> L.pwhh
    cdef const floating *pb = <const floating *> L.pb
    cdef const floating *pbhn = <const floating *> L.pbhn
    cdef const floating *pwhr = <const floating *> L.pwhr
    cdef floating *ph = <floating *> L.ph
    cdef floating *pc = <floating *> L.pc
    cdef floating *pout = <floating *> L.pout
    cdef floating *pgates = <floating *> L.pgates
    cdef floating *pcs = <floating *> L.pcs
    cdef floating *pms = <floating *> L.pms
    cdef floating *pgh = <floating *> L.pgh
    cdef floating *ppacked = <floating *> L.ppacked
    cdef floating *pxg = NULL

    cdef Py_ssize_t G = _gates(cell)
    cdef Py_ssize_t GH = G * H
    cdef bint gru_before = cell == GRU_BEFORE
    cdef Py_ssize_t lo = L.seqs[tid], hi = L.seqs[tid + 1]
    cdef Py_ssize_t s, t, n, r0, pos = 0, row_base = 0, chunk_end = 0
    cdef floating *a
    cdef floating *hp
    cdef floating *packed_hh = NULL
    cdef floating *packed_hn = NULL
    cdef floating *packed_hr = NULL
    cdef floating *packed_ih = NULL
    if floating is float:
        if L.few:
            forward_few(kind, L, tid, nth)
            return
    if ppacked != NULL:
        fwd_pack_weights(cell, L.pack_ih, I, H, Hout, P, tid, nth, ppacked, pwih, pwhh, pwhr,
                         &packed_hh, &packed_hn, &packed_hr, &packed_ih)
    # (a one-sequence layer of a stack projects its chunks inside fr_seq1_forward as they
    # come, and the first layer's rows may be projected already: forward_stack_loop)
    cdef bint upfront = (training or L.upfront) and not L.fuse and L.wait_on == NULL
    cdef bint in_out = L.pgates == L.pout  # the vanilla RNN's rows projected into out
    cdef bint vector_cells = ppacked != NULL  # the packed kernel and its vector cells
    if upfront and not L.projected:
        # the input projection of every row at once, the saved gates its output (on
        # threads too: projecting a thread's few rows of each step as it comes reads all
        # of W_ih from memory at every step, and ran slower: README, performance notes)
        project_rows(kind, L, packed_ih, tid, nth)
        sync(tid, nth)
    if L.split:
        forward_units(kind, L, tid, nth, packed_hh, packed_ih)
        return
    if L.upfront and lo == hi:
        return  # it only helped project the one sequence's inputs
    if floating is float:
        if L.seq1:
            # one sequence (B = 1) on the packed kernel: the table's loop of one sequence
            if lo < hi:
                fr_seq1_forward(cell, T, H, reverse, packed_hh, pgates, ld_gates, pb, pbhn, ph, pc,
                                pout, pcs if training else NULL, pgh, px, I,
                                packed_ih if (L.fuse or L.wait_on != NULL) else NULL,
                                <float *> L.pgx, L.progress, L.wait_on, L.sleepers,
                                L.wait_steps, L.stop)
            return
    cdef bint step_proj = not upfront and packed_ih != NULL and nth > 1
    if step_proj:
        # Threads on the packed kernel project each step's rows as the step comes: a
        # thread's rows of a step are adjacent in x, the kernel is as fast on a few rows
        # as on many, and the projection is still in cache when the cell reads it.
        pgates += tid * chunk_rows * ld_gates
    elif not upfront and nth > 1:
        pgates += tid * chunk_rows * ld_gates
        pxg = <floating *> L.pxg + tid * chunk_rows * I
    for s in range(T):
        if fr_stop_before(L.stop, s, 0):
            break
        if L.progress != NULL and s % L.wait_steps == 0:
            fr_set_and_wake(L.progress, <int> s, L.sleepers)  # steps before s are done
        t = step_time(reverse, T, s)
        r0 = off[t]
        n = min(bs[t], hi) - lo  # this thread's active rows: sequences lo <= b < lo + n
        if n <= 0:  # none of its sequences is active at t
            if chunk_end == s:
                chunk_end = s + 1
            continue
        if upfront:
            a = pgates + (r0 + lo) * ld_gates
        elif step_proj:
            a = pgates
            step_gemm(packed_ih, <int> n, <int> GH, <int> I, px + (r0 + lo) * I, <int> I, True,
                      pwih, <int> I, False, a, <int> ld_gates)
        else:
            if s == chunk_end:
                pos = 0
                chunk_end = fwd_project_chunk(reverse, T, bs, off, lo, hi, s, n, chunk_rows, I,
                                              GH, ld_gates, px, pwih, packed_ih, pgates, pxg,
                                              L.wait_on, L.sleepers, &row_base)
            if pxg == NULL:
                a = pgates + (r0 - row_base) * ld_gates
            else:
                a = pgates + pos * ld_gates
                pos += n
        # from here rows are counted from lo: row b of this step is a + b * ld_gates, state lo + b
        hp = ph + lo * Hout
        if gru_before:
            fwd_step_gru_before(H, Hout, ld_gates, GH, n, r0 + lo, a, hp, pgh + lo * GH, pb,
                                packed_hh, packed_hn, pwhh, pout)
            continue
        step_gemm(packed_hh, <int> n, <int> GH, <int> Hout, hp, <int> Hout, True, pwhh,
                  <int> Hout, False, pgh + lo * GH, <int> GH)
        fwd_cell_rows(cell, vector_cells, training, in_out, H, Hout, P, ld_gates, GH, n, r0, lo,
                      a, hp, pgh, pb, pbhn, pc, pcs, pms, pout)
        if P > 0:
            fwd_lstm_projection(training, H, P, n, r0, lo, pms, packed_hr, pwhr, hp, pout)


cdef void project_rows(floating *kind, FwdLoop *L, floating *packed_ih, int tid,
                       int nth) noexcept nogil:
    """Thread tid's share of the input projection of every row into pgates (packed_ih: W_ih
    packed, or NULL: BLAS)."""
    cdef Py_ssize_t I = L.inputs, ld_gates = L.ld_gates
    cdef int GH = <int> L.GH
    cdef const floating *px = <const floating *> L.px
    cdef const floating *pwih = <const floating *> L.pwih
    cdef floating *pgates = <floating *> L.pgates
    cdef Py_ssize_t lo_row, hi_row, r0, rows
    fr_split(L.N, 1, tid, nth, &lo_row, &hi_row)
    r0 = lo_row
    while r0 < hi_row:  # in blocks, between which the call can stop
        if fr_stop_poll(L.stop):
            return
        rows = min(<Py_ssize_t> MERGED_BLOCK_ROWS, hi_row - r0)
        if packed_ih != NULL:
            step_gemm(packed_ih, <int> rows, GH, <int> I, px + r0 * I, <int> I, True, pwih,
                      <int> I, False, pgates + r0 * ld_gates, <int> ld_gates)
        else:
            gemm(False, True, <int> rows, GH, <int> I, <floating> 1, px + r0 * I, <int> I,
                 pwih, <int> I, <floating> 0, pgates + r0 * ld_gates, <int> ld_gates)
        r0 += MERGED_BLOCK_ROWS


cdef void forward_units(floating *kind, FwdLoop *L, int tid, int nth, floating *packed_hh,
                        floating *packed_ih) noexcept nogil:
    """One sequence (B = 1) on threads that split its hidden units: thread tid computes
    the gate columns of units [u0, u1) (whole panels of the packed weights: _split_units)
    and their cell, then all meet at a barrier before the next step, which needs the
    whole of h. Each thread reads its own share of the weights, from its own cache, so
    that a step that streams W_hh from memory runs at the bandwidth of all the cores.
    h_{t-1} is read from the previous output row, so no thread overwrites what another
    still reads. The training forward has projected every row before (forward_loop);
    inference projects a chunk of steps at a time, each thread its own columns.
    Float32 on the packed kernel, no projection (P = 0), no reset-before GRU."""
    cdef Cell cell = L.cell
    cdef bint reverse = L.reverse, training = L.training
    cdef Py_ssize_t T = L.T, I = L.inputs, H = L.H, ld_gates = L.ld_gates, chunk_rows = L.chunk_rows
    cdef Py_ssize_t G = _gates(cell)
    cdef Py_ssize_t GH = G * H
    cdef const Py_ssize_t *off = L.off
    cdef const floating *px = <const floating *> L.px
    cdef const floating *pb = <const floating *> L.pb
    cdef const floating *pbhn = <const floating *> L.pbhn
    cdef floating *ph = <floating *> L.ph
    cdef floating *pc = <floating *> L.pc
    cdef floating *pout = <floating *> L.pout
    cdef floating *pgates = <floating *> L.pgates
    cdef floating *pcs = <floating *> L.pcs
    cdef floating *pgh = <floating *> L.pgh
    cdef const floating *hsrc = ph
    cdef floating *a
    cdef floating *orow
    cdef Py_ssize_t u0, u1, nr = fr_panel_width()
    cdef Py_ssize_t s, s_end, t, row, g, nu, row_base = 0, chunk_end = 0
    if floating is float:
        fr_split(H, nr, tid, nth, &u0, &u1)
        nu = u1 - u0
        for s in range(T):
            # the threads meet at every step: all finish a step before any stops
            if fr_stop_before(L.stop, s, s + 1):
                break
            t = step_time(reverse, T, s)
            row = off[t]
            if training:
                a = pgates + row * ld_gates
            else:
                if s == chunk_end:
                    s_end = min(T, s + nth * chunk_rows)
                    row_base = off[T - s_end] if reverse else off[s]
                    for g in range(G):
                        fr_gemm_panels(s_end - s, GH, I, px + row_base * I, I, packed_ih, pgates,
                                       ld_gates, 0, (g * H + u0) // nr, (g * H + u1) // nr)
                    chunk_end = s_end
                a = pgates + (row - row_base) * ld_gates
            for g in range(G):
                fr_gemm_panels(1, GH, H, hsrc, H, packed_hh, pgh, GH, 0, (g * H + u0) // nr,
                               (g * H + u1) // nr)
            orow = pout + row * H
            if cell == LSTM:
                lstm_cell(True, training, H, nu, a + u0, pgh + u0, pb + u0, pc + u0, orow + u0)
                if training:
                    memcpy(pcs + row * H + u0, pc + u0, nu * sizeof(floating))
            elif cell == GRU_AFTER:
                gru_cell(True, training, H, nu, a + u0, pgh + u0, pb + u0, pbhn + u0,
                         hsrc + u0, orow + u0)
            else:
                rnn_cell(True, cell == RNN_RELU, nu, a + u0, pgh + u0, pb + u0)
                if not training:  # when training, a is the output row itself
                    memcpy(orow + u0, a + u0, nu * sizeof(floating))
            sync(tid, nth)
            hsrc = orow
        if hsrc != ph:
            memcpy(ph + u0, hsrc + u0, nu * sizeof(floating))


cdef void forward_few(floating *kind, FwdLoop *L, int tid, int nth) noexcept nogil:
    """A call of few rows (L.few: _few_rows, every sequence of all T steps) on
    the few-rows kernel, which reads W_ih and W_hh in place: nothing is packed. Thread tid
    takes the gate columns of units [u0, u1) of every product (the rows of W that give
    them) and their cells, as forward_units does for one sequence, so that two threads
    each stream their half of the weights; they meet after each step, the next needing
    the whole of h. The inputs of all N rows are projected first, each thread its own
    columns, which only its own cells read. h_{t-1} is read from the previous step's
    output rows (h0 at first), so no thread overwrites what another still reads.
    Float32, no projection (P = 0), no reset-before GRU."""
    cdef Cell cell = L.cell
    cdef bint reverse = L.reverse, training = L.training
    cdef Py_ssize_t T = L.T, I = L.inputs, H = L.H, ld_gates = L.ld_gates, B = L.B, N = L.N
    cdef Py_ssize_t G = _gates(cell)
    cdef Py_ssize_t GH = G * H
    cdef const Py_ssize_t *off = L.off
    cdef const floating *px = <const floating *> L.px
    cdef const floating *pwih = <const floating *> L.pwih
    cdef const floating *pwhh = <const floating *> L.pwhh
    cdef const floating *pb = <const floating *> L.pb
    cdef const floating *pbhn = <const floating *> L.pbhn
    cdef floating *ph = <floating *> L.ph
    cdef floating *pc = <floating *> L.pc
    cdef floating *pout = <floating *> L.pout
    cdef floating *pgates = <floating *> L.pgates
    cdef floating *pcs = <floating *> L.pcs
    cdef floating *pgh = <floating *> L.pgh
    cdef bint in_out = L.pgates == L.pout  # the vanilla RNN's rows projected into out
    cdef const floating *hsrc = ph
    cdef floating *a
    cdef floating *orow
    cdef Py_ssize_t u0, u1
    cdef Py_ssize_t s, t, b, g, nu, row
    if floating is float:
        # whole vectors of units for each thread but the last (the cells' lanes)
        fr_split(H, fr_kt.lanes, tid, nth, &u0, &u1)
        nu = u1 - u0
        if nu > 0:
            for g in range(G):
                fr_few(N, I, px, I, pwih, I, pgates, ld_gates, 0, g * H + u0, g * H + u1)
        for s in range(T):
            # the threads meet at every step: all finish a step before any stops
            if fr_stop_before(L.stop, s, s + 1):
                break
            t = step_time(reverse, T, s)
            row = off[t]
            if nu > 0:
                for g in range(G):
                    fr_few(B, H, hsrc, H, pwhh, H, pgh, GH, 0, g * H + u0, g * H + u1)
                for b in range(B):
                    a = pgates + (row + b) * ld_gates
                    orow = pout + (row + b) * H
                    if cell == LSTM:
                        lstm_cell(True, training, H, nu, a + u0, pgh + b * GH + u0, pb + u0,
                                  pc + b * H + u0, orow + u0)
                        if training:
                            memcpy(pcs + (row + b) * H + u0, pc + b * H + u0,
                                   nu * sizeof(floating))
                    elif cell == GRU_AFTER:
                        gru_cell(True, training, H, nu, a + u0, pgh + b * GH + u0, pb + u0,
                                 pbhn + u0, hsrc + b * H + u0, orow + u0)
                    else:
                        rnn_cell(True, cell == RNN_RELU, nu, a + u0, pgh + b * GH + u0, pb + u0)
                        if not in_out:
                            memcpy(orow + u0, a + u0, nu * sizeof(floating))
            sync(tid, nth)
            hsrc = pout + row * H
        if hsrc != ph and nu > 0:
            for b in range(B):
                memcpy(ph + b * H + u0, hsrc + b * H + u0, nu * sizeof(floating))


cdef void forward_task_f(void *ctx, int tid, int nth) noexcept nogil:
    forward_loop(<float *> NULL, <FwdLoop *> ctx, tid, nth)


cdef void forward_task_d(void *ctx, int tid, int nth) noexcept nogil:
    forward_loop(<double *> NULL, <FwdLoop *> ctx, tid, nth)
