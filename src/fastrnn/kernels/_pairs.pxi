# Two loops at once, one a thread: the two directions of a bidirectional layer
# (forward_both, backward_both) and the stacked layers of one direction in inference
# (forward_stack). When it pays is decided in _policy.pxi (_pair_worth).
#
# Included by _kernels.pyx. Entry points like forward/backward: they prepare and plan
# each loop with the functions of _kernels.pyx, then run the pair or the stack.

# Off: the directions always run one after the other (tests of each direction's threads).
PAIR_DIRECTIONS = True

cdef bint _last_paired = False


def last_call_paired():
    """Whether the latest forward_both, backward_both or forward_stack ran its two
    directions (its layers) at once on two threads."""
    return bool(_last_paired)


@contextlib.contextmanager
def _naming(what):
    """Prefix the message of a ValueError from checking one loop's arrays with the
    direction or layer they belong to."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


cdef struct TwoLoops:
    fr_task_fn task  # a loop's task, run on one thread for a, on another for b
    void *a
    void *b


cdef void two_loops_task(void *ctx, int tid, int nth) noexcept nogil:
    cdef TwoLoops *two = <TwoLoops *> ctx
    two.task(two.a if tid == 0 else two.b, 0, 1)


cdef bint _run_two(fr_task_fn task, void *a, void *b, int nth) noexcept nogil:
    """Run the planned loops a and b (each for one thread) at once, one a thread, when
    nth >= 2 threads are held, else one after the other; returns whether at once."""
    cdef TwoLoops two
    if nth < 2:
        fr_pool_run(task, a, 1)
        fr_pool_run(task, b, 1)
        return False
    two.task, two.a, two.b = task, a, b
    fr_pool_run(two_loops_task, &two, 2)
    return True


def forward_both(int mode, bint reset_after, bint training, x, batch_sizes, fwd, rev):
    """forward() of both directions of one layer: fwd and rev are each (w_ih, w_hh, b_ih,
    b_hh, w_hr, h0, c0), the reverse direction's the second. Returns the two results of
    forward(). Where it pays (_pair_worth), the directions run at once, one a thread."""
    if not (isinstance(fwd, tuple) and isinstance(rev, tuple) and len(fwd) == 7
            and len(rev) == 7):
        raise TypeError("fwd and rev must be tuples (w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)")
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32:
        return _forward_both(<float> 0, _cell(mode, reset_after), training, x, batch_sizes, fwd,
                             rev)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _forward_both(<double> 0, _cell(mode, reset_after), training, x, batch_sizes, fwd,
                             rev)
    raise TypeError("x must be a float32 or float64 array")


cdef object _forward_both(floating kind, Cell cell, bint training, x,
                          batch_sizes, tuple fwd, tuple rev):
    global _last_paired, _last_threads
    cdef FwdLoop A, R
    memset(&A, 0, sizeof(A))
    memset(&R, 0, sizeof(R))
    cdef int held = 0, nth = 1
    cdef Py_ssize_t blas_before
    cdef fr_task_fn task = forward_task_f if floating is float else forward_task_d
    cdef fr_stop_word stop_word
    cdef volatile Py_ssize_t *stop = &stop_word.word
    _last_paired = False
    wi, wh, bi, bh, wr, h0, c0 = fwd
    try:
        with _naming("forward direction"):
            ra = _fwd_prepare(kind, &A, cell, False, training, x, batch_sizes,
                              wi, wh, bi, bh, wr, h0, c0)
        wi, wh, bi, bh, wr, h0, c0 = rev
        with _naming("reverse direction"):
            rr = _fwd_prepare(kind, &R, cell, True, training, x, batch_sizes,
                              wi, wh, bi, bh, wr, h0, c0)
        if not (PAIR_DIRECTIONS and _pair_worth(A.N, A.B, A.GH, A.inputs + A.Hout,
                                                A.GH * A.Hout, A.split,
                                                training or A.split or A.upfront,
                                                PAIR_SPLIT_MAX_WEIGHTS)):
            _fwd_run(kind, &A)
            _fwd_release(&A)  # its workspace, for the second
            _fwd_run(kind, &R)
            return _fwd_result(training, ra), _fwd_result(training, rr)
        if A.few:
            # (memory-bound: its spin reckoned from the weights, not the multiply-adds)
            nth = fr_pool_begin(2, _few_spins(2 * A.GH * (A.inputs + A.Hout), A.N), &held)
        else:
            nth = _begin_pair(A.N * A.GH * (A.inputs + A.Hout), &held)
        # each direction alone on its thread: no units split; one sequence then projects
        # its inputs up front in inference, as on one thread
        A.split = R.split = False
        A.upfront = R.upfront = (not training and A.B == 1 and not A.few
                                 and A.N * A.ld_gates * sizeof(floating) <= UPFRONT_MAX_BYTES)
        _fwd_plan(kind, &A, 1)
        _fwd_plan(kind, &R, 1)
        _hold_blas(_fwd_calls_blas(&A) or _fwd_calls_blas(&R), nth,
                   A.N * A.GH * (A.inputs + A.Hout), &held)
        A.stop = R.stop = stop
        blas_before = fr_blas_calls
        _stop_begin(stop)
        with nogil:
            _last_paired = _run_two(task, &A, &R, nth)
        _stop_end(stop)
        _log_call(2 if _last_paired else 1, held, blas_before, True)
        if _last_paired:
            _last_threads = 2
    finally:
        fr_pool_end(held)
        _fwd_release(&A)
        _fwd_release(&R)
    return _fwd_result(training, ra), _fwd_result(training, rr)


def backward_both(int mode, bint reset_after, x, batch_sizes, fwd, rev):
    """backward() of both directions of one layer: fwd and rev are each (h0, c0, w_ih,
    w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq), the reverse direction's
    the second. Returns the two results of backward(); the directions run at once where
    it pays, as in forward_both."""
    if not (isinstance(fwd, tuple) and isinstance(rev, tuple) and len(fwd) == 13
            and len(rev) == 13):
        raise TypeError("fwd and rev must be tuples (h0, c0, w_ih, w_hh, w_hr, out, gates, "
                        "cs, ms, dout, dh_n, dc_n, dh_seq)")
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32:
        return _backward_both(<float> 0, _cell(mode, reset_after), x, batch_sizes, fwd, rev)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _backward_both(<double> 0, _cell(mode, reset_after), x, batch_sizes, fwd, rev)
    raise TypeError("x must be a float32 or float64 array")


cdef object _backward_both(floating kind, Cell cell, x, batch_sizes,
                           tuple fwd, tuple rev):
    global _last_paired, _last_threads
    cdef BwdLoop A, R
    memset(&A, 0, sizeof(A))
    memset(&R, 0, sizeof(R))
    cdef int held = 0, nth = 1
    cdef Py_ssize_t blas_before
    cdef fr_task_fn task = backward_task_f if floating is float else backward_task_d
    cdef fr_stop_word stop_word
    cdef volatile Py_ssize_t *stop = &stop_word.word
    _last_paired = False
    h0, c0, wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq = fwd
    try:
        with _naming("forward direction"):
            ga = _bwd_prepare(kind, &A, cell, False, x, batch_sizes, h0, c0,
                              wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
        h0, c0, wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq = rev
        with _naming("reverse direction"):
            gr = _bwd_prepare(kind, &R, cell, True, x, batch_sizes, h0, c0,
                              wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
        if not (PAIR_DIRECTIONS and _pair_worth(A.N, A.B, A.GH, A.inputs + A.Hout,
                                                A.GH * A.Hout, A.split, True,
                                                PAIR_SPLIT_MAX_WEIGHTS)):
            _bwd_run(kind, &A)
            _bwd_release(&A)  # its workspace, for the second
            _bwd_run(kind, &R)
            return ga, gr
        nth = _begin_pair(A.N * A.GH * (A.inputs + A.Hout), &held)
        _bwd_plan(kind, &A, 1)
        _bwd_plan(kind, &R, 1)
        _hold_blas(_bwd_calls_blas(&A) or _bwd_calls_blas(&R), nth,
                   A.N * A.GH * (A.inputs + A.Hout), &held)
        A.stop = R.stop = stop
        blas_before = fr_blas_calls
        _stop_begin(stop)
        with nogil:
            _last_paired = _run_two(task, &A, &R, nth)
        _stop_end(stop)
        _log_call(2 if _last_paired else 1, held, blas_before, True)
        if _last_paired:
            _last_threads = 2
    finally:
        fr_pool_end(held)
        _bwd_release(&A)
        _bwd_release(&R)
    return ga, gr


# ---------------------------------------------------------------------------------------
# Stacked layers of one direction at once (inference): thread k runs layers k, k + 2, ...,
# each layer's loop projecting its inputs a chunk of steps at a time, as soon as the layer
# below, on the other thread, has computed them; the layers overlap in time, as cuDNN's
# persistent kernels overlap them on a GPU. Taken where each layer alone would leave a
# core idle (_pair_worth; not where it would split its units: a layer of LSTM H=128 alone
# on one thread takes longer than two split layers); a layer then lags the one below by
# about a chunk.

# Steps of a chunk of a layer that waits on the layer below: a small chunk keeps the lag
# short; a larger one makes fewer, more efficient products with W_ih.
STACK_CHUNK_STEPS = 8

# Off: the layers always run one after the other (tests).
STACK_LAYERS = True

cdef bint _seq1_cell(floating kind, FwdLoop *L):
    """Whether fr_seq1_forward runs this one-sequence layer on one thread (if up front)."""
    return (floating is float and L.npack != 0 and L.P == 0
            and L.cell != GRU_BEFORE)


cdef struct FwdStack:
    FwdLoop *layers
    Py_ssize_t n


cdef void forward_stack_f(void *ctx, int tid, int nth) noexcept nogil:
    forward_stack_loop(<float *> NULL, <FwdStack *> ctx, tid, nth)


cdef void forward_stack_d(void *ctx, int tid, int nth) noexcept nogil:
    forward_stack_loop(<double *> NULL, <FwdStack *> ctx, tid, nth)


cdef void forward_stack_loop(floating *kind, FwdStack *S, int tid, int nth) noexcept nogil:
    """Layers tid, tid + nth, ... of the stack, each whole on this thread; a layer tells
    the one above that all its steps are done whichever loop ran it. The first layer's
    projection up front (projected) is shared by all threads first: the layers above
    wait for it anyway."""
    cdef Py_ssize_t k = tid
    cdef FwdLoop *L
    if S.layers[0].projected:
        project_rows(kind, &S.layers[0], NULL, tid, nth)
        fr_barrier(tid, nth)
    while k < S.n:
        L = &S.layers[k]
        forward_loop(kind, L, 0, 1)
        fr_set_and_wake(L.progress, <int> L.T, L.sleepers)
        k += nth


def forward_stack(int mode, bint reset_after, x, batch_sizes, layers):
    """Inference of stacked layers of one direction: layers is a list of (w_ih, w_hh,
    b_ih, b_hh, w_hr, h0, c0), the first layer's input x, each next one's the output of
    the one before. Returns per layer forward()'s (out, h_n, c_n). Where each layer alone
    would leave a core idle (_pair_worth), two threads run the layers at once."""
    if not (isinstance(layers, list) and layers
            and all(isinstance(a, tuple) and len(a) == 7 for a in layers)):
        raise TypeError("layers must be a non-empty list of tuples "
                        "(w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)")
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32:
        return _forward_stack(<float> 0, _cell(mode, reset_after), x, batch_sizes, layers)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _forward_stack(<double> 0, _cell(mode, reset_after), x, batch_sizes, layers)
    raise TypeError("x must be a float32 or float64 array")


cdef object _forward_stack(floating kind, Cell cell, x, batch_sizes,
                           list layers):
    global _last_paired, _last_threads
    cdef Py_ssize_t n = len(layers), k, work = 0, chunk_steps
    cdef FwdLoop *Ls = <FwdLoop *> calloc(n, sizeof(FwdLoop))
    cdef int *counters = <int *> calloc(n + 1, sizeof(int))  # progress per layer, sleepers
    cdef FwdStack stack
    cdef int held = 0, nth = 1
    cdef bint worth = True, calls_blas = False
    cdef fr_stop_word stop_word
    cdef volatile Py_ssize_t *stop = &stop_word.word
    cdef fr_task_fn task = forward_stack_f if floating is float else forward_stack_d
    if Ls == NULL or counters == NULL:
        free(Ls)
        free(counters)
        raise MemoryError()
    _last_paired = False
    results = []
    try:
        inp = x
        for k in range(n):
            wi, wh, bi, bh, wr, h0, c0 = layers[k]
            with _naming(f"layer {k}"):
                prepared = _fwd_prepare(kind, &Ls[k], cell, False, False, inp,
                                        batch_sizes, wi, wh, bi, bh, wr, h0, c0)
            results.append(prepared[:3])
            inp = prepared[0]
            worth = worth and _pair_worth(Ls[k].N, Ls[k].B, Ls[k].GH,
                                          Ls[k].inputs + Ls[k].Hout, Ls[k].GH * Ls[k].Hout,
                                          Ls[k].split, Ls[k].split or Ls[k].upfront, 0)
            # a layer of few rows waits for the whole output of the one below anyway
            worth = worth and not Ls[k].few
            work = max(work, Ls[k].N * Ls[k].GH * (Ls[k].inputs + Ls[k].Hout))
        if n == 1 or not worth or not STACK_LAYERS:
            for k in range(n):
                _fwd_run(kind, &Ls[k])
                _fwd_release(&Ls[k])  # its workspace, for the next
            return results
        nth = _begin_pair(work, &held)
        for k in range(n):
            Ls[k].progress = &counters[k]
            Ls[k].wait_on = &counters[k - 1] if k > 0 else NULL
            Ls[k].sleepers = &counters[n]
            Ls[k].split = False
            # each layer alone on its thread, as in forward_both; those above the first
            # wait on the layer below a chunk at a time: one sequence in the loop of
            # fr_seq1_forward (room to project every row, as up front), else in forward_loop
            Ls[k].upfront = (Ls[k].B == 1
                             and Ls[k].N * Ls[k].ld_gates * sizeof(floating) <= UPFRONT_MAX_BYTES
                             and (k == 0 or _seq1_cell(kind, &Ls[k])))
            chunk_steps = 0 if k == 0 else STACK_CHUNK_STEPS
            _fwd_plan(kind, &Ls[k], 1, chunk_steps)
            Ls[k].wait_steps = max(1, STACK_CHUNK_STEPS)
        # one sequence on one thread leaves W_ih to BLAS (not packed): the threads share
        # its product now
        Ls[0].projected = nth >= 2 and Ls[0].upfront and not Ls[0].fuse and not Ls[0].pack_ih
        for k in range(n):
            calls_blas = calls_blas or _fwd_calls_blas(&Ls[k])
        _hold_blas(calls_blas, nth, work, &held)
        stack.layers, stack.n = Ls, n
        for k in range(n):
            Ls[k].stop = stop
        _run_task(task, &stack, min(nth, 2), held, stop, True)
        _last_paired = nth >= 2
        _last_threads = min(nth, 2)
    finally:
        fr_pool_end(held)
        for k in range(n):
            _fwd_release(&Ls[k])
        free(Ls)
        free(counters)
    return results
