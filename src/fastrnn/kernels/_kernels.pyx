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
# Threads (_pool.h): a call runs the same loop on nth threads, each on its own block of
# sequences (balanced by rows). Sequences do not interact, so the threads run the time
# loop without meeting: a barrier (sync) only after the weights are packed and the
# training input projection is made, and before the merged GEMMs of the backward, which
# are split by their output. A barrier at every step would stall whenever another
# library's spinning threads take a core for a time slice (OpenBLAS's idle workers spin
# for about 0.1 s after each threaded call), and such stalls cost most of a step.
#
# Saved activations (training), S*H wide per row (ld_gates):
#   RNN   none; the output h is the activation (S = 1 scratch for the input projection)
#   LSTM  i, f, g, o                    + cs: c_t, + ms: m_t = o*tanh(c_t) with projection
#   GRU   r, z, n, hn  (reset_after)    hn = W_hn h + b_hn, needed for dr
#         r, z, n, rh  (reset_before)   rh = r * h_prev, the input of W_hn
# Gradients of the pre-activations dG, row stride ld_dg (padded, _row_stride):
#   RNN, LSTM   the G*H gate pre-activations; dGx and dGh are the same
#   GRU after   dr, dz, dhn, dn: dGh = columns [0, 3H), dGx = [0, 2H) and [3H, 4H)
#   GRU before  dr, dz, dn: both dGx and dGh (the W_hn block multiplies rh, not h)
import contextlib
import os
import threading
import time
import warnings

cimport numpy as cnp
from cython cimport floating
from libc.stdlib cimport calloc, free, malloc
from cpython.pycapsule cimport (PyCapsule_Destructor, PyCapsule_GetContext,
                               PyCapsule_GetPointer, PyCapsule_New, PyCapsule_SetContext)
from libc.string cimport memcpy, memset
from libc.stdint cimport PTRDIFF_MAX
from cpython.exc cimport PyErr_Clear, PyErr_Fetch, PyErr_Restore
from cpython.ref cimport PyObject
from scipy.linalg.cython_blas cimport sgemm as _blas_sgemm

# the .pxd files beside this one, on the include path (setup.py)
from _blas cimport fr_blas_calls, gemm
from _cellmath cimport (gru_after_drow, gru_after_row, gru_before_drow1, gru_before_drow2,
                        gru_before_gates, gru_before_out, lstm_drow, lstm_row, rnn_drow,
                        rnn_row)

cnp.import_array()

# The module's parts, in this order: text of this file, one compilation unit, so that the
# C of the loops is what it would be in one file. Each opens with what it holds and what
# it may touch; the entry points forward() and backward() follow them here.
include "_decls.pxi"        # the C headers' declarations, the cell codes
include "_capability.pxi"   # the kernels chosen for this CPU
include "_test_hooks.pxi"   # each kernel alone on NumPy arrays (tests)
include "_interrupt.pxi"    # Ctrl-C inside a call
include "_policy.pxi"       # threads, packed or BLAS, the units split, pairs
include "_gemm.pxi"         # the step and merged GEMMs, packing
include "_steps.pxi"        # barrier, time and row arithmetic of a packed batch
include "_forward.pxi"      # the forward loops
include "_backward.pxi"     # the backward loops
include "_workspace.pxi"    # kept workspaces, the block cache
include "_arrays.pxi"       # array checks, new outputs


# ---------------------------------------------------------------------------------------
# Entry points: check the arrays, allocate the outputs and one block of scratch, run the
# loop without the GIL. The checks are the kernels' own guard against reading or writing
# out of bounds (the layers validate users' input with friendlier messages before this).

# Inference projects the inputs of a chunk of timesteps at a time so that its scratch
# stays at most a quarter of the output (N x Hout) on long sequences, while a chunk keeps
# enough rows for an efficient GEMM.
cdef Py_ssize_t CHUNK_MIN_ROWS = 64
cdef Py_ssize_t CHUNK_SHARE_OF_OUTPUT = 4


def forward(int mode, bint reset_after, bint reverse, bint training, x, batch_sizes,
            w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    """Run one direction of one layer over a packed batch.

    x (N, I), batch_sizes (T,) intp, w_ih (G*H, I), w_hh (G*H, Hout), b_ih and b_hh
    (G*H,) or None, w_hr (P, H) or None, h0 (B, Hout), c0 (B, H) for LSTM else None; all
    C-contiguous, of one float dtype. Returns out (N, Hout), h_n (B, Hout), c_n (B, H) or
    None, and when training the saved activations (gates or None, cs or None, ms or None).
    """
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32:
        return _forward(<float> 0, _cell(mode, reset_after), reverse, training, x, batch_sizes,
                        w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _forward(<double> 0, _cell(mode, reset_after), reverse, training, x, batch_sizes,
                        w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    raise TypeError("x must be a float32 or float64 array")


cdef object _fwd_prepare(floating kind, FwdLoop *L, Cell cell, bint reverse, bint training,
                         x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0,
                         c0):
    """Check one direction's arrays, allocate its outputs and fill in what of L does not
    depend on the thread count (L.split and L.upfront as one call alone would choose
    them); _fwd_plan does the rest. Returns (out, h, c, gates, cs, ms). L.off is malloc'ed
    (_fwd_release frees it, also after an error)."""
    cdef int tn = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    cdef Dims d = _dims(cell, tn, x, w_ih, w_hh, w_hr, h0)
    cdef Py_ssize_t N = d.rows, I = d.inputs, GH = d.gate_rows, H = d.hidden
    cdef Py_ssize_t P = d.proj, Hout = d.hout, B = d.batch
    L.pbih = _opt(b_ih, tn, 1, GH, -1, "b_ih")
    L.pbhh = _opt(b_hh, tn, 1, GH, -1, "b_hh")
    if (L.pbih == NULL) != (L.pbhh == NULL):
        raise ValueError("b_ih and b_hh must be both given or both None")
    cdef bint lstm = cell == LSTM
    if lstm == (c0 is None):
        raise ValueError("c0 is needed for LSTM and only for LSTM")
    _opt(c0, tn, 2, B, H, "c0")
    cdef Py_ssize_t T = _dim(batch_sizes, 0) if cnp.PyArray_Check(batch_sizes) else 0
    cdef Py_ssize_t S = 4 if (lstm or _is_gru(cell)) else 1
    L.off = _offsets(batch_sizes, N, B)

    # outputs and saved activations
    cdef cnp.ndarray out = _new(tn, N, Hout, False)
    cdef cnp.ndarray h = _copy(h0)
    cdef cnp.ndarray c = _copy(c0) if lstm else None
    cdef cnp.ndarray gates = None, cs = None, ms = None
    if training:
        gates = out if S == 1 else _new(tn, N, S * H, False)
        cs = _new(tn, N, H, False) if lstm else None
        ms = _new(tn, N, H, False) if P else None

    cdef Py_ssize_t sizes[4]
    L.npack = (_packed_sizes(False, cell, I, H, Hout, P, sizes)
               if use_packed(floating is float, B, GH, Hout) else 0)
    L.npack_ih = sizes[3] if L.npack else 0
    L.few = _few_rows(L.npack != 0, cell, N, T, B, P, GH * (I + Hout))
    if L.few:
        L.npack = L.npack_ih = 0  # nothing is packed
    L.split = _split_units(B, L.npack, P, H, cell, GH * Hout)
    L.upfront = (not training and not L.split and B == 1 and not L.few
                 and N * S * H * sizeof(floating) <= UPFRONT_MAX_BYTES)
    L.cell, L.reverse, L.training = cell, reverse, training
    L.N, L.B, L.GH = N, B, GH
    L.T, L.inputs, L.H, L.Hout, L.P, L.ld_gates = T, I, H, Hout, P, S * H
    L.bs = <const Py_ssize_t *> cnp.PyArray_DATA(batch_sizes)
    L.px, L.pwih, L.pwhh = cnp.PyArray_DATA(x), cnp.PyArray_DATA(w_ih), cnp.PyArray_DATA(w_hh)
    L.pwhr = cnp.PyArray_DATA(w_hr) if w_hr is not None else NULL
    L.ph = cnp.PyArray_DATA(h)
    L.pc = cnp.PyArray_DATA(c) if lstm else NULL
    L.pout = cnp.PyArray_DATA(out)
    L.pcs = cnp.PyArray_DATA(cs) if (training and lstm) else NULL
    L.pgates = cnp.PyArray_DATA(gates) if training else NULL
    L.pms = cnp.PyArray_DATA(ms) if (training and P) else NULL
    return out, h, c, gates, cs, ms


cdef int _fwd_plan(floating kind, FwdLoop *L, int nth, Py_ssize_t chunk_steps=0) except -1:
    """The part of a prepared forward that depends on its nth threads: the units split,
    the inference chunk, the sequences of each thread, the loop, and the scratch. With
    chunk_steps, an inference on one thread that does not project up front projects
    chunks of that many steps (a layer of a stack waiting on the one below), with W_ih
    packed."""
    global _last_threads, _last_split, _last_path
    cdef Py_ssize_t N = L.N, I = L.inputs, GH = L.GH, H = L.H, P = L.P, B = L.B
    cdef Py_ssize_t ld_gates = L.ld_gates, Hout = L.Hout, npack = L.npack, chunk, j, nscratch
    cdef Py_ssize_t gx_at, rest_at
    cdef bint training = L.training, upfront = L.upfront, gather, in_out
    cdef bint split = L.split and nth > 1
    cdef floating *scratch
    cdef floating *pb
    cdef floating *pbhn
    cdef const floating *pbih = <const floating *> L.pbih
    cdef const floating *pbhh = <const floating *> L.pbhh
    _last_threads = nth
    L.split = split
    _last_split = split
    gather = nth > 1 and npack == 0 and not upfront and not L.few
    if training or upfront or L.few:
        chunk = N  # upfront: nth shares of it, room for the projection of every row
    else:
        # a chunk row costs ld_gates floats of projection, and I more of gathered input
        # when threads gather their rows (BLAS projections; the packed kernel
        # projects each step's rows in place)
        chunk = min(N, max(CHUNK_MIN_ROWS, B, N * Hout // (
            CHUNK_SHARE_OF_OUTPUT * (ld_gates + (I if gather else 0)))))
        if chunk_steps > 0 and nth == 1:
            chunk = min(N, B * chunk_steps)
    # threads on the packed kernel project one step at a time: a chunk of their widest
    # step's rows is all the room they need; the units split projects a chunk of
    # steps, each thread its own columns of the nth shares of rows (forward_units)
    chunk = _split_sequences(L.bs, L.T, B, N, nth, L.seqs,
                             0 if (nth > 1 and not gather and not split and not upfront)
                             else chunk)
    if L.few:
        chunk = N  # forward_few projects every row at once, its threads by columns
    # one sequence on the packed kernel, not split: fr_seq1_forward, which on one
    # thread with a W_ih small enough for the L1 cache projects each step's inputs
    L.seq1 = (floating is float and npack != 0 and B == 1 and not split and P == 0
              and L.cell != GRU_BEFORE and (training or upfront))
    fuse_weights = SEQ1_FUSE_WEIGHTS
    if fuse_weights is None:
        fuse_weights = CAPABILITY_SEQ1_FUSE_WEIGHTS.get(fr_kt.name.decode(), 0)
    L.fuse = L.seq1 and nth == 1 and GH * I <= fuse_weights and chunk_steps == 0
    _last_path = ("few rows" if L.few else "units split" if split
                  else "one sequence, projection inside" if L.fuse
                  else "one sequence" if L.seq1 else "batch")
    # W_ih is packed for threads, for the projection inside the one-sequence loop,
    # and for one thread on a batch: OpenBLAS took longer for the same product there
    # (it packs both operands every call; README, performance notes). One thread at
    # B = 1 leaves it to BLAS (half-empty panels made the RNN at H = 32 slower: README,
    # performance notes) but from THREAD_CALL_WORK where _one_thread_packed says so.
    L.pack_ih = npack != 0 and (nth > 1 or L.fuse or B > 1 or chunk_steps > 0
                                or _one_thread_packed(False, N * GH * (I + Hout)))
    if npack and not L.pack_ih:
        npack -= L.npack_ih
    # scratch: fused bias, b_hn, step projection, packed weights, then gx (fuse), then
    # the inference chunk (or the LSTM projection's m)
    gx_at = GH + H + B * GH + npack
    rest_at = gx_at + (2 * ld_gates if L.fuse else 0)
    nscratch = rest_at
    # the vanilla RNN's projection, when all rows are projected at once, goes straight
    # into out, where each step's tanh overwrites it in place
    in_out = ld_gates == H and (training or upfront or L.few)
    if not training:
        # (forward_few's threads share one projection of the rows, by columns)
        nscratch += ((0 if (in_out or L.fuse) else (1 if L.few else nth) * chunk * ld_gates)
                     + (B * H if P else 0))
        if gather:
            nscratch += nth * chunk * I
    scratch = <floating *> _scratch(nscratch * sizeof(floating))
    L.scratch = scratch
    L.chunk_rows = chunk
    L.pb = scratch
    L.pbhn = scratch + GH
    L.pgh = scratch + GH + H
    L.ppacked = (scratch + GH + H + B * GH) if npack else NULL
    L.pgx = <void *> (scratch + gx_at)
    if not training:
        L.pgates = (NULL if L.fuse else L.pout if in_out else <void *> (scratch + rest_at))
    L.pxg = NULL
    if P and not training:
        L.pms = <void *> (<floating *> L.pgates + nth * chunk * ld_gates)
    if not training and gather:
        L.pxg = <void *> (<floating *> L.pgates + nth * chunk * ld_gates + (B * H if P else 0))
    # b_ih + b_hh, but the reset-after GRU keeps b_hn apart: r multiplies W_hn h + b_hn
    pb = <floating *> L.pb
    pbhn = <floating *> L.pbhn
    for j in range(GH):
        pb[j] = (pbih[j] + pbhh[j]) if pbih != NULL else 0
    for j in range(H):
        pbhn[j] = 0
    if pbih != NULL and L.cell == GRU_AFTER:
        for j in range(H):
            pb[2 * H + j] = pbih[2 * H + j]
            pbhn[j] = pbhh[2 * H + j]
    return 0


cdef void _fwd_release(FwdLoop *L):
    _scratch_free(L.scratch)
    free(<void *> L.off)
    L.scratch = NULL
    L.off = NULL


cdef object _fwd_result(bint training, tuple prepared):
    out, h, c, gates, cs, ms = prepared
    saved = ((gates if gates is not out else None), cs, ms) if training else None
    return out, h, c, saved


cdef inline bint _fwd_calls_blas(const FwdLoop *L):
    """Whether a planned forward calls BLAS: its products are not on the packed kernel
    (double, or the capability's BLAS_STEP_WORK), or its W_ih is not packed."""
    return not L.few and (L.npack == 0 or not L.pack_ih)


cdef inline bint _bwd_calls_blas(const BwdLoop *L):
    """Whether a planned backward calls BLAS: not on the packed kernel, or on one thread
    (whose merged GEMMs are BLAS's)."""
    return (L.ppacked == NULL and not L.few) or L.pbpack == NULL


cdef int _fwd_run(floating kind, FwdLoop *L) except -1:
    """Plan a prepared forward for the threads it takes alone, and run it."""
    cdef Py_ssize_t slept = fr_slept_waits
    cdef int held = 0, nth
    cdef fr_task_fn task = forward_task_f if floating is float else forward_task_d
    cdef fr_stop_word stop_word
    cdef volatile Py_ssize_t *stop = &stop_word.word
    try:
        if L.few:
            nth = _begin_few(L.GH * (L.inputs + L.Hout), L.N, &held)
        else:
            nth = _begin(L.N, L.B, L.GH, L.inputs + L.Hout,
                         L.training or L.split or L.upfront, &held)
        _fwd_plan(kind, L, nth)
        _hold_blas(_fwd_calls_blas(L), nth, L.N * L.GH * (L.inputs + L.Hout), &held)
        L.stop = stop
        _run_task(task, L, nth, held, stop, False)
        if L.split:
            _note_split_waits(fr_slept_waits - slept, _split_slept_allowed(L.T))
        elif L.few and nth > 1:
            _note_split_waits(fr_slept_waits - slept, FEW_SLEPT_ALLOWED)
    finally:
        fr_pool_end(held)
    return 0


cdef object _forward(floating kind, Cell cell, bint reverse, bint training, x,
                     batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    cdef FwdLoop L
    memset(&L, 0, sizeof(L))
    try:
        prepared = _fwd_prepare(kind, &L, cell, reverse, training, x,
                                batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
        _fwd_run(kind, &L)
    finally:
        _fwd_release(&L)
    return _fwd_result(training, prepared)


def backward(int mode, bint reset_after, bint reverse, x, batch_sizes, h0, c0, w_ih, w_hh,
             w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq):
    """BPTT for one direction of one layer over a packed batch.

    Takes forward()'s inputs and outputs, its saved (gates, cs, ms), dout (N, Hout),
    dh_n (B, Hout), dc_n (B, H) for LSTM else None, and dh_seq: None or a writable
    (N, Hout) array to receive each step's dL/dh_t. Returns dx, dh0, dc0 (or None) and
    the gradients of w_ih, w_hh, the fused biases (b_ih, b_hh) and w_hr (or None).
    """
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32:
        return _backward(<float> 0, _cell(mode, reset_after), reverse, x, batch_sizes, h0, c0,
                         w_ih, w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _backward(<double> 0, _cell(mode, reset_after), reverse, x, batch_sizes, h0, c0,
                         w_ih, w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
    raise TypeError("x must be a float32 or float64 array")


cdef object _bwd_prepare(floating kind, BwdLoop *L, Cell cell, bint reverse,
                         x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, out, gates,
                         cs, ms, dout, dh_n, dc_n, dh_seq):
    """Check one direction's arrays, allocate its gradients and fill in what of L does not
    depend on the thread count (L.split as one call alone would choose it); _bwd_plan
    does the rest. Returns (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr). L.off is
    malloc'ed (_bwd_release frees it, also after an error)."""
    cdef int tn = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    cdef bint lstm = cell == LSTM
    cdef bint gru_after = cell == GRU_AFTER
    cdef Dims d = _dims(cell, tn, x, w_ih, w_hh, w_hr, h0)
    cdef Py_ssize_t N = d.rows, I = d.inputs, GH = d.gate_rows, H = d.hidden
    cdef Py_ssize_t P = d.proj, Hout = d.hout, B = d.batch
    if lstm == (c0 is None) or lstm == (dc_n is None) or lstm == (cs is None):
        raise ValueError("c0, dc_n and cs are needed for LSTM and only for LSTM")
    cdef bint rnn = cell == RNN_TANH or cell == RNN_RELU
    if (ms is not None) != (P > 0) or (gates is not None) == rnn:
        raise ValueError("saved activations do not match the cell")
    cdef Py_ssize_t S = 4 if (lstm or _is_gru(cell)) else 1
    L.pc0 = _opt(c0, tn, 2, B, H, "c0")
    L.pout = _data(out, tn, 2, N, Hout, "out")
    L.pgates = _opt(gates, tn, 2, N, S * H, "gates")
    L.pcs = _opt(cs, tn, 2, N, H, "cs")
    L.pms = _opt(ms, tn, 2, N, H, "ms")
    L.pdout = _data(dout, tn, 2, N, Hout, "dout")
    _data(dh_n, tn, 2, B, Hout, "dh_n")
    _opt(dc_n, tn, 2, B, H, "dc_n")
    L.pseq = NULL
    if dh_seq is not None:
        L.pseq = _data(dh_seq, tn, 2, N, Hout, "dh_seq", writable=True)
    cdef Py_ssize_t T = _dim(batch_sizes, 0) if cnp.PyArray_Check(batch_sizes) else 0
    L.off = _offsets(batch_sizes, N, B)

    # outputs; the GEMMs after the loop overwrite the weight gradients, unless T == 0
    cdef bint empty = T == 0
    cdef cnp.ndarray dx = _new(tn, N, I, False)
    cdef cnp.ndarray dh = _copy(dh_n)
    cdef cnp.ndarray dc = _copy(dc_n) if lstm else None
    cdef cnp.ndarray dw_ih = _new(tn, GH, I, empty)
    cdef cnp.ndarray dw_hh = _new(tn, GH, Hout, empty)
    cdef cnp.ndarray db_ih = _new(tn, GH, -1, True)
    cdef cnp.ndarray db_hh = _new(tn, GH, -1, True)
    cdef cnp.ndarray dw_hr = _new(tn, P, H, empty) if P else None

    cdef Py_ssize_t sizes[4]
    L.npack = (_packed_sizes(True, cell, I, H, Hout, P, sizes)
               if use_packed(floating is float, B, GH, Hout) else 0)
    L.npack_ih = sizes[3] if L.npack else 0
    L.few = (_few_rows(L.npack != 0, cell, N, T, B, P, GH * (I + Hout))
             and GH * (I + Hout) >= FEW_BACKWARD_WEIGHTS)
    if L.few:
        L.npack = L.npack_ih = 0  # nothing is packed
    L.split = _split_units(B, L.npack, P, H, cell, GH * Hout)
    L.cell, L.reverse = cell, reverse
    L.B, L.GH = B, GH
    L.T, L.N, L.inputs, L.H, L.Hout, L.P, L.ld_gates = T, N, I, H, Hout, P, S * H
    L.ld_dg = _row_stride(4 * H if gru_after else GH)
    L.bs = <const Py_ssize_t *> cnp.PyArray_DATA(batch_sizes)
    L.px, L.ph0 = cnp.PyArray_DATA(x), cnp.PyArray_DATA(h0)
    L.pwih, L.pwhh = cnp.PyArray_DATA(w_ih), cnp.PyArray_DATA(w_hh)
    L.pwhr = cnp.PyArray_DATA(w_hr) if w_hr is not None else NULL
    L.pdh = cnp.PyArray_DATA(dh)
    L.pdc = cnp.PyArray_DATA(dc) if lstm else NULL
    L.pdx, L.pdwih = cnp.PyArray_DATA(dx), cnp.PyArray_DATA(dw_ih)
    L.pdwhh, L.pdbih = cnp.PyArray_DATA(dw_hh), cnp.PyArray_DATA(db_ih)
    L.pdbhh = cnp.PyArray_DATA(db_hh)
    L.pdwhr = cnp.PyArray_DATA(dw_hr) if P else NULL
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr


cdef int _bwd_plan(floating kind, BwdLoop *L, int nth) except -1:
    """The part of a prepared backward that depends on its nth threads: the units split,
    the sequences of each thread, and the scratch."""
    global _last_threads, _last_split, _last_bwd_path
    cdef Py_ssize_t N = L.N, ld_dg = L.ld_dg, Hout = L.Hout, P = L.P, npack = L.npack
    cdef Py_ssize_t nbpack = 0, nscratch
    cdef floating *pdg
    _last_threads = nth
    L.split = L.split and nth > 1
    _last_split = L.split
    _last_bwd_path = "few rows" if L.few else "units split" if L.split else "batch"
    _split_sequences(L.bs, L.T, L.B, N, nth, L.seqs, 0)
    # W_ih and the merged GEMMs' blocks are packed for threads; on one thread they are
    # BLAS's but from THREAD_CALL_WORK where _one_thread_packed says so
    if npack and nth == 1 and not _one_thread_packed(True, L.N * L.GH * (L.inputs + Hout)):
        npack -= L.npack_ih
    elif npack or L.few:
        # (a call of few rows: the weight gradients on the kernels, dG^T times a block of
        # its few rows packed, and no BLAS call)
        nbpack = fr_packed_size(max(L.inputs, L.H, Hout), FR_KC)
    nscratch = N * ld_dg + N * Hout + N * P + L.B * L.H + npack + nth * nbpack
    pdg = <floating *> _scratch(nscratch * sizeof(floating))
    L.scratch = pdg
    L.pdg = pdg
    L.php = pdg + N * ld_dg
    L.pdhp = pdg + N * ld_dg + N * Hout
    L.pdm = pdg + N * ld_dg + N * Hout + N * P
    L.ppacked = (pdg + N * ld_dg + N * Hout + N * P + L.B * L.H) if npack else NULL
    L.pbpack = (pdg + N * ld_dg + N * Hout + N * P + L.B * L.H + npack) if nbpack else NULL
    L.bpack_floats = nbpack
    return 0


cdef void _bwd_release(BwdLoop *L):
    _scratch_free(L.scratch)
    free(<void *> L.off)
    L.scratch = NULL
    L.off = NULL


cdef int _bwd_run(floating kind, BwdLoop *L) except -1:
    """Plan a prepared backward for the threads it takes alone, and run it."""
    cdef Py_ssize_t slept = fr_slept_waits
    cdef int held = 0, nth
    cdef fr_task_fn task = backward_task_f if floating is float else backward_task_d
    cdef fr_stop_word stop_word
    cdef volatile Py_ssize_t *stop = &stop_word.word
    try:
        # (a call of few rows too: with the forward's _begin_few, whose workers woken for
        # a backward spin about as long as it runs, backward calls at H = 256 on a busy
        # machine ran about twice as slow, the worker taking turns with the call's thread)
        nth = _begin(L.N, L.B, L.GH, L.inputs + L.Hout, True, &held)
        _bwd_plan(kind, L, nth)
        _hold_blas(_bwd_calls_blas(L), nth, L.N * L.GH * (L.inputs + L.Hout), &held)
        L.stop = stop
        _run_task(task, L, nth, held, stop, False)
        if L.split:
            _note_split_waits(fr_slept_waits - slept, _split_slept_allowed(L.T))
        elif L.few and nth > 1:
            _note_split_waits(fr_slept_waits - slept, FEW_SLEPT_ALLOWED)
    finally:
        fr_pool_end(held)
    return 0


cdef object _backward(floating kind, Cell cell, bint reverse, x,
                      batch_sizes, h0, c0, w_ih, w_hh, w_hr, out, gates, cs, ms, dout,
                      dh_n, dc_n, dh_seq):
    cdef BwdLoop L
    memset(&L, 0, sizeof(L))
    try:
        grads = _bwd_prepare(kind, &L, cell, reverse, x, batch_sizes, h0, c0,
                             w_ih, w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
        _bwd_run(kind, &L)
    finally:
        _bwd_release(&L)
    return grads


# both directions, or the layers of a stack, at once
include "_pairs.pxi"
