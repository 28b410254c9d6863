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
# Saved activations (training), S*H wide per row:
#   RNN   none; the output h is the activation (S = 1 scratch for the input projection)
#   LSTM  i, f, g, o                    + cs: c_t, + ms: m_t = o*tanh(c_t) with projection
#   GRU   r, z, n, hn  (reset_after)    hn = W_hn h + b_hn, needed for dr
#         r, z, n, rh  (reset_before)   rh = r * h_prev, the input of W_hn
# Gradients of the pre-activations dG, row stride SD (padded, _row_stride):
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
from posix.stdlib cimport posix_memalign
from cpython.pycapsule cimport (PyCapsule_Destructor, PyCapsule_GetContext,
                               PyCapsule_GetPointer, PyCapsule_New, PyCapsule_SetContext)
from libc.string cimport memcpy, memset
from libc.limits cimport LONG_MAX
from cpython.exc cimport PyErr_Clear, PyErr_Fetch, PyErr_Restore
from cpython.ref cimport PyObject
from scipy.linalg.cython_blas cimport sgemm as _blas_sgemm

from _blas cimport fr_blas_calls, gemm

cnp.import_array()

cdef extern from "_ktable.h" nogil:
    ctypedef struct fr_ktable:
        const char *name
        long nr, mr, lanes, chain_flops
        float (*fma_chains)(long iters) noexcept nogil
    fr_ktable fr_kt
    enum: FR_CAP_LEVELS
    const char *fr_cap_names[]
    int fr_cpu_best_level()
    int fr_kt_use(int level)
    long fr_panel_width()
    size_t fr_packed_size(long n, long k)
    long fr_panels(long n)
    void fr_pack_panels(int trans, long n, long k, const float *w, long ldw, float *packed,
                        long p0, long p1)
    void fr_gemm_panels(long m, long n, long k, const float *a, long lda,
                        const float *packed, float *c, long ldc, int accumulate, long p0,
                        long p1)
    void fr_gemm_tn(long m, long n, long K, const float *a, long lda, const float *b,
                    long ldb, float *c, long ldc, int accumulate, float *bpack)
    enum: FR_KC
    void fr_lstm_row_v(long H, long n, const float *a, const float *gh, const float *bias,
                       float *ar, float *c, float *cs, float *o)
    void fr_gru_row_v(long H, long n, const float *a, const float *gh, const float *bias,
                      const float *bhn, const float *hp, float *ar, float *o)
    void fr_rnn_row_v(int relu, long n, const float *a, const float *gh, const float *bias,
                      float *o)
    void fr_seq1_forward(int mode, long T, long H, int reverse, const float *pk, float *a,
                         long SH, const float *bias, const float *bhn, float *h, float *c,
                         float *out, float *cs, float *gh, const float *x, long nin,
                         const float *pk_ih, float *gx, int *progress, int *wait_on,
                         int *sleepers, long chunk, volatile long *stop)

cdef extern from "_stop.h" nogil:
    ctypedef struct fr_stop_word:
        long word
    int (*fr_signal_poll)() noexcept nogil
    bint fr_stop_before(volatile long *stop, long i, long stamp)
    bint fr_stop_poll(volatile long *stop)
    void fr_poll_begin(int polls)

cdef extern from "_pool.h" nogil:
    ctypedef void (*fr_task_fn)(void *ctx, int tid, int nth) noexcept nogil
    enum: FR_MAX_THREADS
    enum: FR_MAX_THREADS_1  # FR_MAX_THREADS + 1
    int fr_threads_cap
    int (*fr_blas_get_threads)()
    int fr_blas_bind(void *blas_symbol)
    int fr_pool_begin(int want, long warm_spins, int *held)
    void fr_pool_hold_blas(int *held)
    enum: FR_HELD_BLAS
    void fr_pool_end(int held)
    void fr_pool_run(fr_task_fn fn, void *ctx, int nth)
    void fr_barrier(int tid, int nth)
    void fr_set_and_wake(int *word, int value, int *sleepers)
    void fr_wait_at_least(int *word, int value, int *sleepers)
    void fr_split(long n, long align, int tid, int nth, long *lo, long *hi)
    void fr_pool_after_fork_child()
    long fr_slept_waits

from _cellmath cimport (gru_after_drow, gru_after_row, gru_before_drow1, gru_before_drow2,
                        gru_before_gates, gru_before_out, lstm_drow, lstm_row, rnn_drow,
                        rnn_row)

cdef enum:
    RNN_TANH = 0
    RNN_RELU = 1
    LSTM = 2
    GRU = 3

MODES = {"RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU, "LSTM": LSTM, "GRU": GRU}


# ---------------------------------------------------------------------------------------
# The kernel table (_ktable.h), filled here once for the best ISA this CPU runs, capped by
# FASTRNN_CPU_CAPABILITY as PyTorch's ATEN_CPU_CAPABILITY caps its kernels. The loops
# below call the table and read its panel width; nothing else looks at the CPU.

#: The capabilities, lowest first.
CPU_CAPABILITIES = tuple(fr_cap_names[i].decode() for i in range(FR_CAP_LEVELS))


def _capability_from_environment():
    """The level FASTRNN_CPU_CAPABILITY asks for, capped by what the CPU runs."""
    best = fr_cpu_best_level()
    want = os.environ.get("FASTRNN_CPU_CAPABILITY", "").strip().lower()
    if not want:
        return best
    if want not in CPU_CAPABILITIES:
        warnings.warn(f"FASTRNN_CPU_CAPABILITY={want!r} is not one of "
                      f"{', '.join(CPU_CAPABILITIES)}; using {CPU_CAPABILITIES[best]!r}",
                      RuntimeWarning, stacklevel=2)
        return best
    return min(best, CPU_CAPABILITIES.index(want))


fr_kt_use(_capability_from_environment())


def get_cpu_capability():
    """The kernels in use: "avx512", "avx2" (AVX2 and FMA) or "default" (portable C): the
    best this CPU runs, capped by the environment variable FASTRNN_CPU_CAPABILITY (one of
    those names) when it is set before fastrnn is imported."""
    return fr_kt.name.decode()


def supported_cpu_capabilities():
    """Every capability this CPU runs, lowest first."""
    return CPU_CAPABILITIES[:fr_cpu_best_level() + 1]


def kernel_blocking():
    """The register blocking of the kernels in use: {"panel": columns of a packed panel,
    "rows": rows of a block, "lanes": floats a vector}."""
    return {"panel": fr_kt.nr, "rows": fr_kt.mr, "lanes": fr_kt.lanes}


@contextlib.contextmanager
def use_cpu_capability(name):
    """Run the kernels of `name` inside the block (for tests and benchmarks, with no call
    running in another thread); ValueError if this CPU cannot run them."""
    if name not in CPU_CAPABILITIES:
        raise ValueError(f"cpu capability must be one of {', '.join(CPU_CAPABILITIES)}, "
                         f"got {name!r}")
    before = CPU_CAPABILITIES.index(get_cpu_capability())
    if fr_kt_use(CPU_CAPABILITIES.index(name)) != 0:
        raise ValueError(f"this CPU cannot run the {name!r} kernels (it runs "
                         f"{', '.join(supported_cpu_capabilities())})")
    try:
        yield
    finally:
        fr_kt_use(before)


# Test hooks: each kernel of the table in use alone, on NumPy arrays (C-contiguous rows,
# any row stride), so that tests check every ISA's GEMM and cells against NumPy and the
# scalar rows.

def _rows_contiguous(*arrays):
    for x in arrays:
        if x.strides[1] != 4:
            raise ValueError("each row must be contiguous")


def _kernel_gemm(const float[:, :] a, const float[:, :] w, bint trans, float[:, :] c,
                 bint accumulate=False, long p0=0, long p1=-1):
    """C[:, panels p0..p1) = A @ op(W) [+ C] on the packed kernel (op(W) = W^T if trans):
    W packed with fr_pack_panels, then fr_gemm_panels."""
    import numpy as np
    _rows_contiguous(a, w, c)
    cdef long m = a.shape[0], k = a.shape[1]
    cdef long n = w.shape[0] if trans else w.shape[1]
    if (w.shape[1] if trans else w.shape[0]) != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("shapes do not match")
    cdef float[::1] packed = np.zeros(max(1, fr_packed_size(n, k)), np.float32)
    if p1 < 0:
        p1 = fr_panels(n)
    fr_pack_panels(trans, n, k, &w[0, 0], w.strides[0] // 4, &packed[0], 0, fr_panels(n))
    fr_gemm_panels(m, n, k, &a[0, 0], a.strides[0] // 4, &packed[0], &c[0, 0],
                   c.strides[0] // 4, accumulate, p0, p1)


def _kernel_gemm_tn(const float[:, :] a, const float[:, :] b, float[:, :] c,
                    bint accumulate=False):
    """C = A^T B [+ C], A stored K x m, B K x n, on fr_gemm_tn."""
    import numpy as np
    _rows_contiguous(a, b, c)
    cdef long K = a.shape[0], m = a.shape[1], n = b.shape[1]
    if b.shape[0] != K or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("shapes do not match")
    cdef float[::1] bpack = np.zeros(fr_packed_size(n, FR_KC), np.float32)
    fr_gemm_tn(m, n, K, &a[0, 0], a.strides[0] // 4, &b[0, 0], b.strides[0] // 4, &c[0, 0],
               c.strides[0] // 4, accumulate, &bpack[0])


def _kernel_cell(int mode, bint vector, long n, float[::1] a, const float[::1] gh,
                 const float[::1] bias, const float[::1] bhn, const float[::1] hp,
                 float[::1] c, float[::1] o, bint training=True):
    """Units [0, n) of one row of the cell of `mode` (0 tanh, 1 relu, 2 LSTM, 3 GRU with
    the reset gate after W_hn; H = len(hp)), in place as the loops call it: the table's
    vector cell (vector) or _cellmath_rows.h's row. a holds the projection on entry and
    the activations on exit (the vector cell in inference: untouched); o the new state."""
    cdef long H = hp.shape[0]
    if mode <= 1:
        if vector:
            fr_rnn_row_v(mode == 1, n, &a[0], &gh[0], &bias[0], &o[0])
        else:
            rnn_row(mode == 1, n, &a[0], &gh[0], &bias[0])
            o[:n] = a[:n]
    elif mode == 2:
        if vector:
            fr_lstm_row_v(H, n, &a[0], &gh[0], &bias[0], &a[0] if training else NULL, &c[0],
                          NULL, &o[0])
        else:
            lstm_row(H, n, &a[0], &gh[0], &bias[0], &c[0], &o[0])
    else:
        if vector:
            fr_gru_row_v(H, n, &a[0], &gh[0], &bias[0], &bhn[0], &hp[0],
                         &a[0] if training else NULL, &o[0])
        else:
            gru_after_row(H, n, &a[0], &gh[0], &bias[0], &bhn[0], &hp[0], &o[0])


cdef double _fma_rounds(long iters) noexcept nogil:
    return fr_kt.fma_chains(iters)


def _fma_thread(long iters, list out):
    cdef double r
    with nogil:
        r = _fma_rounds(iters)
    out.append(r)


def fma_peak(double seconds=0.2, int threads=1):
    """GFLOP/s of independent FMA chains on the vectors of the kernels in use, on `threads`
    threads at once (enough chains on each to cover the FMA latency): the ceiling of the
    kernels' arithmetic. Best of a few runs of about `seconds` / 3 each."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    cdef long iters = 1 << 16
    cdef double elapsed = 0.0, best = 0.0
    out = []
    while True:  # calibrate: a run of at least a tenth of the asked time
        t0 = time.perf_counter()
        _fma_thread(iters, out)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds / 10 or iters > (1 << 40):
            break
        iters *= 4
    iters = max(1, <long> (iters * (seconds / 3) / max(elapsed, 1e-9)))
    for _ in range(3):
        workers = [threading.Thread(target=_fma_thread, args=(iters, out))
                   for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        best = max(best, threads * iters * fr_kt.chain_flops / elapsed / 1e9)
    return best

# Whether the pool can take over scipy's BLAS threads (see _pool.h); else one thread.
cdef bint _blas_bound = fr_blas_bind(<void *> _blas_sgemm)


# ---------------------------------------------------------------------------------------
# Ctrl-C inside a call (_stop.h): the calling thread, when it is Python's main thread,
# runs the signal handlers every few milliseconds of work; one that raises stops the
# loops, and the call raises its exception once the threads are out (its workspaces and
# the pool's and BLAS's threads released as after any call).

cdef extern from "Python.h":
    # declared here without Cython's exception check: the exception it sets is taken
    # over by _poll_signals, not raised in the nogil loop
    int PyErr_CheckSignals()
    unsigned long PyThread_get_thread_ident()

cdef PyObject *_stopped_by[3]  # the exception of the handler that raised: type, value, tb
cdef unsigned long _main_thread = threading.main_thread().ident


cdef int _poll_signals() noexcept nogil:
    cdef int raised = 0
    with gil:
        if PyErr_CheckSignals() != 0:
            raised = 1
            if _stopped_by[0] == NULL:
                PyErr_Fetch(&_stopped_by[0], &_stopped_by[1], &_stopped_by[2])
            else:
                PyErr_Clear()
    return raised


fr_signal_poll = _poll_signals


cdef inline void _stop_begin(volatile long *stop):
    """Before a call's threads run: its stop word (an fr_stop_word's), and polling if this
    is the main thread."""
    stop[0] = LONG_MAX
    fr_poll_begin(PyThread_get_thread_ident() == _main_thread)


cdef int _stop_end(volatile long *stop) except -1:
    """After they ran: raise the exception of the signal handler that stopped them."""
    fr_poll_begin(0)
    if stop[0] == LONG_MAX:
        return 0
    if _stopped_by[0] == NULL:
        raise KeyboardInterrupt
    PyErr_Restore(_stopped_by[0], _stopped_by[1], _stopped_by[2])
    _stopped_by[0] = _stopped_by[1] = _stopped_by[2] = NULL
    return -1


def _after_fork_child():
    fr_pool_after_fork_child()


os.register_at_fork(after_in_child=_after_fork_child)


# ---------------------------------------------------------------------------------------
# Threads

# Below this many multiply-adds in a call (N*G*H*(I+Hout)) it runs on one thread: waking
# a sleeping worker and meeting it at the end cost tens of microseconds.
THREAD_CALL_WORK = 1 << 21

# A batch of one sequence takes threads only while the pool's workers are awake (a call
# ended less than about 0.6 ms ago, or one on one thread woke them), else it runs on one
# thread and wakes them for the next call. Its threads meet often (the units split: at
# every step), and a worker, or its virtual CPU, that has to wake up first costs more
# than the call gains: on this VM, calls 50 ms apart (T=100, H=128) took a median of 1.2
# ms (RNN) and 1.8 ms (LSTM) on two threads against 0.47 and 0.94 on one; back to back,
# two threads stay the faster. Calls of B1_WARM_WORK multiply-adds or more (T=100: LSTM
# and GRU from H=256, RNN from 512) take threads either way: in the bench command, where
# they follow the peers' calls, an RNN at H=512 that woke the workers ran 2.1 ms against
# 0.9-1.1 (the worker it woke spun on its CPU while the call ran).
B1_WARM_ONLY = True
B1_WARM_WORK = 1 << 24


def threads_available():
    """Whether calls can run on several threads (scipy's BLAS is OpenBLAS on pthreads)."""
    return bool(_blas_bound)


def set_max_threads(int n):
    """Cap the threads of a call (n >= 1); by default a call takes as many as BLAS has."""
    global fr_threads_cap
    if n < 1:
        raise ValueError(f"the thread count must be at least 1, got {n}")
    fr_threads_cap = min(n, FR_MAX_THREADS)


def get_max_threads():
    return fr_threads_cap


def blas_threads():
    """The thread count scipy's OpenBLAS is set to (0 when it cannot be controlled)."""
    return fr_blas_get_threads() if _blas_bound else 0


cdef int _last_threads = 1


def last_call_threads():
    """Threads the latest forward or backward call ran on (for tests and diagnostics)."""
    return _last_threads


cdef bint _last_split = False


def last_call_split_units():
    """Whether the threads of the latest call split the units of one sequence."""
    return bool(_last_split)


_last_path = "batch"


def last_forward_path():
    """The loop the latest forward call ran: "batch" (forward_loop), "units split"
    (forward_units), "one sequence" (fr_seq1_forward, inputs projected before the loop) or
    "one sequence, projection inside" (fr_seq1_forward projecting each step's inputs)."""
    return _last_path


cdef int _want_threads(Py_ssize_t N, Py_ssize_t B, Py_ssize_t GH, Py_ssize_t K,
                       bint merged):
    """Threads worth a call of N rows in a batch of B. Threads split the sequences, and
    the GEMMs over all steps (merged: the training forward's input projection, the
    backward's gradients) by rows: there a single sequence is worth threads too."""
    if N * GH * K < THREAD_CALL_WORK or (B < 2 and not merged):
        return 1
    return <int> (FR_MAX_THREADS if merged else min(B, FR_MAX_THREADS))


cdef int _begin(Py_ssize_t N, Py_ssize_t B, Py_ssize_t GH, Py_ssize_t K, bint merged,
                int *held):
    """fr_pool_begin for a call of _want_threads(N, B, GH, K, merged) threads. A batch of
    one sequence smaller than B1_WARM_WORK takes threads only if the workers are awake
    (B1_WARM_ONLY); if not, they are woken to spin for about twice this call on one thread
    (N*GH*K multiply-adds at about 25 G/s, a pause loop 30 ns), and so a call that follows
    soon finds them awake."""
    return fr_pool_begin(_want_threads(N, B, GH, K, merged),
                         _warm_spins(N * GH * K) if B == 1 else 0, held)


cdef inline void _hold_blas(bint calls_blas, int nth, Py_ssize_t work, int *held):
    """Hold BLAS at one thread (fr_pool_hold_blas) for a planned call that calls BLAS on
    nth > 1 threads, or on one thread though threads are worth its `work` multiply-adds
    (one sequence, or the pool taken by another thread's call): it should not wake
    BLAS's threads. A call that makes no BLAS call holds nothing."""
    global _last_held_blas
    _last_held_blas = calls_blas and (nth > 1 or work >= THREAD_CALL_WORK)
    if _last_held_blas:
        fr_pool_hold_blas(held)


cdef bint _last_held_blas = False


def last_call_held_blas():
    """Whether the latest forward or backward call held BLAS at one thread (tests)."""
    return bool(_last_held_blas)


def blas_calls_made():
    """BLAS calls made by the kernels so far, on every thread (tests)."""
    return fr_blas_calls


# None, or a list to which every call appends (threads, held BLAS, BLAS calls made,
# whether its loops were planned for one thread each: a pair of directions, layers at
# once), for the tests of which calls hold BLAS (log_calls)
_call_log = None


@contextlib.contextmanager
def log_calls():
    """Within the block, the kernel calls as (threads, held BLAS, BLAS calls, planned for
    one thread each) (tests)."""
    global _call_log
    _call_log = log = []
    try:
        yield log
    finally:
        _call_log = None


cdef inline void _log_call(int nth, int held, long blas_calls_before, bint one_each):
    if _call_log is not None:
        _call_log.append((nth, bool(held & FR_HELD_BLAS), fr_blas_calls - blas_calls_before,
                          one_each))


cdef long _warm_spins(Py_ssize_t work):
    """The warm_spins of fr_pool_begin for a call of `work` multiply-adds that takes
    threads only while the workers are awake (B1_WARM_ONLY, below B1_WARM_WORK), else 0."""
    if not B1_WARM_ONLY or work >= B1_WARM_WORK:
        return 0
    return min(1 << 21, max(1, work // 400))


cdef Py_ssize_t _split_sequences(const Py_ssize_t *bs, Py_ssize_t T, Py_ssize_t B,
                                 Py_ssize_t N, int nth, Py_ssize_t *seqs, Py_ssize_t chunk):
    """Give thread k the sequences seqs[k] <= b < seqs[k + 1], about N / nth rows each
    (sequence b has as many rows as steps t with bs[t] > b); return the rows of a thread's
    inference chunk: its share of chunk, but at least its rows of one step."""
    cdef Py_ssize_t b, k = 1, steps = T, done = 0, widest = 0
    seqs[0] = 0
    for b in range(B):
        while steps > 0 and bs[steps - 1] <= b:
            steps -= 1
        done += steps
        while k < nth and done * nth >= N * k:
            seqs[k] = b + 1
            k += 1
    while k <= nth:
        seqs[k] = B
        k += 1
    for k in range(nth):
        widest = max(widest, seqs[k + 1] - seqs[k])
    return chunk if nth == 1 else max((chunk + nth - 1) // nth, widest)


cdef inline void sync(int tid, int nth) noexcept nogil:
    fr_barrier(tid, nth)


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
    cdef long lo, hi
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
                           floating *bpack, volatile long *stop) noexcept nogil:
    """This thread's rows of C (m x n) = A^T B, A stored k x m, B k x n: on the packed
    kernel when bpack (this thread's room for a packed block of B) is given, else BLAS;
    in blocks of the sum, returning early (C incomplete) once the call is stopped."""
    cdef long lo, hi
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
                           volatile long *stop) noexcept nogil:
    """This thread's rows of C (m x n) = A (m x k) @ W (k x n) [+ C], W packed or not;
    in blocks of rows, returning early once the call is stopped."""
    cdef long lo, hi, r0
    fr_split(m, 1, tid, nth, &lo, &hi)
    r0 = lo
    while r0 < hi:
        if fr_stop_poll(stop):
            return
        step_gemm(packed, <int> min(<long> MERGED_BLOCK_ROWS, hi - r0), n, k, a + r0 * lda,
                  lda, False, w, ldw, accumulate, c + r0 * ldc, ldc)
        r0 += MERGED_BLOCK_ROWS


cdef Py_ssize_t _packed_sizes(bint backward, int mode, bint reset_after, Py_ssize_t I,
                              Py_ssize_t H, Py_ssize_t Hout, Py_ssize_t P,
                              Py_ssize_t *sizes) noexcept nogil:
    """Floats for the packed W_hh block of the step GEMM, W_hn (reset-before GRU), W_hr and
    W_ih, in sizes[0:4]; returns their sum.

    Forward multiplies by W^T, backward by W, so the packed shapes are transposed.
    """
    cdef Py_ssize_t G = 4 if mode == LSTM else 3 if mode == GRU else 1
    cdef Py_ssize_t K = 2 * H if (mode == GRU and not reset_after) else G * H
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
    sizes[1] = fr_packed_size(H, H) if (mode == GRU and not reset_after) else 0
    return sizes[0] + sizes[1] + sizes[2] + sizes[3]


# From this many multiply-adds per step (B * G*H * Hout) on, BLAS takes every product of a
# call (steps, projections, merged GEMMs) in place of the packed kernels; None: the
# capability's own (CAPABILITY_BLAS_STEP_WORK, never for AVX2 and AVX-512). Tests set it
# to force one path.
BLAS_STEP_WORK = None

# On AVX2 and AVX-512 the packed kernels are the faster at every size measured (they skip
# BLAS's packing of the weight at every step). The portable kernels (4 floats a vector)
# lose to OpenBLAS's SSE kernels on large batches: at B=64 (T=100, I=H=256..1024, two
# threads, OpenBLAS on its Prescott kernels) they ran 5-18% slower than BLAS, at B=16
# (H=256, 1-4 million a step) level or up to 11% faster.
CAPABILITY_BLAS_STEP_WORK = {"default": 1 << 22}


cdef bint use_packed(bint is_float, Py_ssize_t B, Py_ssize_t GH, Py_ssize_t Hout):
    """Whether the products of a batch of B run on the packed kernels."""
    limit = BLAS_STEP_WORK
    if limit is None:
        limit = CAPABILITY_BLAS_STEP_WORK.get(fr_kt.name.decode(), 1 << 62)
    return is_float and B * GH * Hout < limit


# A call on one thread leaves W_ih's products (and in backward the merged GEMMs) to BLAS.
# From THREAD_CALL_WORK on, such a call holds BLAS at one thread (_hold_blas), which
# undoes a thread limit another Python thread enters meanwhile; on the capabilities
# listed here, whose packed kernels are as fast there, it runs them on the packed
# kernels instead and calls no BLAS: AVX-512 forward and backward, AVX2 forward. A
# bidirectional pair and a one-sequence inference run so; the measured figures are in
# the README's performance notes.
CAPABILITY_ONE_THREAD_PACKED = {"avx512": ("forward", "backward"), "avx2": ("forward",)}


cdef bint _one_thread_packed(bint backward, Py_ssize_t work):
    """Whether a float32 call of `work` multiply-adds on one thread runs all its products
    on the packed kernels."""
    if work < THREAD_CALL_WORK:
        return False
    passes = CAPABILITY_ONE_THREAD_PACKED.get(fr_kt.name.decode(), ())
    return ("backward" if backward else "forward") in passes


# ---------------------------------------------------------------------------------------
# Small helpers

cdef inline void colsum_add(int tid, int nth, Py_ssize_t rows, Py_ssize_t cols,
                            const floating *a, Py_ssize_t lda, floating *out) noexcept nogil:
    """out[j] += a[:rows, j].sum() for this thread's columns j of [0, cols)."""
    cdef long lo, hi
    cdef Py_ssize_t r, j
    fr_split(cols, 16, tid, nth, &lo, &hi)
    for r in range(rows):
        for j in range(lo, hi):
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

# From this many weights in W_hh (64 KB of float32: every cell from H = 128), threads
# split the units of a batch of one sequence, meeting at every step; H a multiple of two
# panels of the kernels (_split_units), so that two threads get as many panels each (on
# AVX-512, at H = 192, one 64-unit panel and the other two, inference ran 5-10% slower
# than on one thread). Measured on AVX-512 at T=100,
# H=128, one process alternating: inference RNN 0.12 -> 0.07 ms, GRU 0.34 -> 0.21;
# training step RNN 0.25 -> 0.21, GRU 0.69 -> 0.55.
SPLIT_UNITS_WORK = 1 << 14
# ... and from this H: on AVX2, whose 16-unit panels let H = 64 split, an LSTM at H = 64
# (T=100, inference) ran 0.123 ms split against 0.109 on one thread; a GRU at H = 96
# gained 5% and the RNN at H = 128 4.5%, the LSTM at H = 128 23%.
SPLIT_UNITS_MIN_H = 128

# A batch of one sequence that does not split its units, in inference, projects the
# inputs of all its steps at once (up to this much room for them), on the threads when
# it is worth them, then one thread runs the steps: a projection on one thread is up to
# 20% of such a call, and BLAS's threads are not woken (fr_pool_begin); the vanilla RNN
# projects straight into its output (T=100, H=32: 13.8 -> 13.2 us).
UPFRONT_MAX_BYTES = 1 << 23

# A batch of one sequence on one thread with at most this many weights in W_ih (4 KB of
# float32: the vanilla RNN at I = H = 32) projects its inputs inside the step loop
# (fr_seq1_forward): on AVX-512 (AMD EPYC), T=100, RNN H=32 inference 12.9 -> 10.8 us.
# With more, the products of both
# weights outlast the chain of a step, on one FMA unit: LSTM and GRU at H=32 and the RNN
# at H=64 ran 6-14% slower than with the projection before the loop.
SEQ1_FUSE_WEIGHTS = None  # None: the capability's own (tests set it)
# Measured on an Intel Xeon (AVX-512, T=100, RNN H=32, inference): projection inside
# 12% faster with the AVX-512 kernels, 5% slower with the AVX2 ones and 9% with the
# portable ones (their products of both weights outlast the chain of a step).
CAPABILITY_SEQ1_FUSE_WEIGHTS = {"avx512": 1 << 10}

# The units split meets at a barrier every step, so a thread that loses its core to
# another process stalls the others at each step: under a one-core CPU hog, calls that
# split (T=100, B=1: RNN H=512, LSTM H=256) ran 1.4-1.8x slower on average than on one
# thread. When the split calls of the last SPLIT_BAD_SECONDS (at least 3 calls) all had
# more than SPLIT_SLEPT_PER_STEP of their steps, and more than SPLIT_SLEPT_MIN, wait long
# enough to sleep, calls do not split for SPLIT_PAUSE_SECONDS. Counted at T=100: 0-3
# such waits a call on an idle machine, about 100 under the hog; but on the idle machine too, a
# couple of calls in a row out of a few hundred had about 100 (their threads briefly
# shared a core), hence a streak that lasts.
SPLIT_SLEPT_PER_STEP = 0.25
SPLIT_SLEPT_MIN = 4
SPLIT_BAD_SECONDS = 0.05
SPLIT_PAUSE_SECONDS = 1.0
cdef double _split_paused_until = 0.0
cdef double _split_bad_since = 0.0
cdef int _split_bad_calls = 0


def _note_split_waits(long slept, Py_ssize_t steps):
    global _split_paused_until, _split_bad_since, _split_bad_calls
    if slept <= max(SPLIT_SLEPT_MIN, SPLIT_SLEPT_PER_STEP * steps):
        _split_bad_calls = 0
        return
    now = time.monotonic()
    if _split_bad_calls == 0:
        _split_bad_since = now
    _split_bad_calls += 1
    if _split_bad_calls >= 3 and now - _split_bad_since >= SPLIT_BAD_SECONDS:
        _split_bad_calls = 0
        _split_paused_until = now + SPLIT_PAUSE_SECONDS


cdef bint _split_units(Py_ssize_t B, Py_ssize_t npack, Py_ssize_t P, Py_ssize_t H, int mode,
                       bint reset_after, Py_ssize_t whh) except -1:
    """Whether threads split the units of this call (forward_units, backward_units): one
    sequence whose step streams a large W_hh (whh weights) on the packed kernel, cells the
    split covers, as many whole panels for each of two threads, and no pause."""
    return (B == 1 and npack != 0 and P == 0 and H % (2 * fr_panel_width()) == 0
            and H >= SPLIT_UNITS_MIN_H
            and not (mode == GRU and not reset_after)
            and whh >= SPLIT_UNITS_WORK and not split_paused())


def split_paused():
    """Whether the units split is paused, after a call whose threads kept waiting on one
    another (another process taking a core)."""
    return time.monotonic() < _split_paused_until


def resume_split():
    """End a pause of the units split (for tests)."""
    global _split_paused_until, _split_bad_calls
    _split_paused_until = 0.0
    _split_bad_calls = 0


cdef struct FwdLoop:
    # the problem (see forward_loop) and its buffers, typed by the task that runs it;
    # inputs: I (<complex.h> defines I as a macro)
    int mode, reset_after, reverse, training, split, upfront, seq1, fuse, pack_ih
    Py_ssize_t T, inputs, H, Hout, P, SH, chunk_rows
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
    volatile long *stop  # the call's stop word (_stop.h), or NULL
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
    void *ppk
    void *pgx  # fuse: 2 rows of projection


# The cells of a row of units [0, n) (gate blocks H apart): on the packed kernel (vec:
# float32) the vector cells of the kernel table, which every float32 loop then shares,
# else _cellmath's. The activations are saved in a when training (_cellmath's always).

cdef inline void rnn_cell(bint vec, bint relu, Py_ssize_t n, floating *a, const floating *gh,
                          const floating *b) noexcept nogil:
    """In place: a holds the projection on entry, the new state on exit."""
    if floating is float:
        if vec:
            fr_rnn_row_v(relu, n, a, gh, b, a)
            return
    rnn_row(relu, n, a, gh, b)


cdef inline void lstm_cell(bint vec, bint training, Py_ssize_t H, Py_ssize_t n, floating *a,
                           const floating *gh, const floating *b, floating *c,
                           floating *m) noexcept nogil:
    if floating is float:
        if vec:
            fr_lstm_row_v(H, n, a, gh, b, a if training else NULL, c, NULL, m)
            return
    lstm_row(H, n, a, gh, b, c, m)


cdef inline void gru_cell(bint vec, bint training, Py_ssize_t H, Py_ssize_t n, floating *a,
                          const floating *gh, const floating *b, const floating *bhn,
                          const floating *hp, floating *o) noexcept nogil:
    if floating is float:
        if vec:
            fr_gru_row_v(H, n, a, gh, b, bhn, hp, a if training else NULL, o)
            return
    gru_after_row(H, n, a, gh, b, bhn, hp, o)


cdef void forward_loop(floating *kind, FwdLoop *L, int tid, int nth) noexcept nogil:
    """Thread tid's sequences of one direction of one layer over a packed batch.

    ph and pc hold the initial states on entry and the final ones on exit; pgh is B x G*H
    scratch for the step's recurrent projection; ppk is room for the packed weights, or
    NULL. pgates has SH floats a row: when training every row's saved activations, else
    each thread's chunk_rows rows of scratch for the input projection of a run of steps,
    whose inputs come from pxg (chunk_rows x I per thread) where the thread's rows of x
    are not one block (nth > 1).
    """
    cdef int mode = L.mode
    cdef bint reset_after = L.reset_after, reverse = L.reverse, training = L.training
    cdef Py_ssize_t T = L.T, I = L.inputs, H = L.H, Hout = L.Hout, P = L.P, SH = L.SH
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
    cdef floating *ppk = <floating *> L.ppk
    cdef floating *pxg = NULL

    cdef Py_ssize_t G = 4 if mode == LSTM else 3 if mode == GRU else 1
    cdef Py_ssize_t GH = G * H
    cdef bint gru_before = mode == GRU and not reset_after
    cdef Py_ssize_t lo = L.seqs[tid], hi = L.seqs[tid + 1]
    cdef Py_ssize_t s, s_end, t, u, n, r0, b, j, rows, pos = 0, row_base = 0, chunk_end = 0
    cdef floating *a
    cdef floating *arow
    cdef floating *m
    cdef floating *hp
    cdef Py_ssize_t sizes[4]
    cdef floating *pk_hh = NULL
    cdef floating *pk_hn = NULL
    cdef floating *pk_hr = NULL
    cdef floating *pk_ih = NULL
    if ppk != NULL:
        _packed_sizes(False, mode, reset_after, I, H, Hout, P, sizes)
        pk_hh = pack_weight(tid, nth, ppk, True, 2 * H if gru_before else GH, Hout, pwhh,
                            Hout)
        if gru_before:
            pk_hn = pack_weight(tid, nth, ppk + sizes[0], True, H, H, pwhh + 2 * H * Hout,
                                Hout)
        if P > 0:
            pk_hr = pack_weight(tid, nth, ppk + sizes[0] + sizes[1], True, P, H, pwhr, H)
        if L.pack_ih:
            pk_ih = pack_weight(tid, nth, ppk + sizes[0] + sizes[1] + sizes[2], True, GH, I,
                                pwih, I)
        sync(tid, nth)
    # (a one-sequence layer of a stack projects its chunks inside fr_seq1_forward as they
    # come, and the first layer's rows may be projected already: forward_stack_loop)
    cdef bint upfront = (training or L.upfront) and not L.fuse and L.wait_on == NULL
    cdef bint in_out = L.pgates == L.pout  # the vanilla RNN's rows projected into out
    cdef bint vec = ppk != NULL  # the packed kernel and its vector cells
    if upfront and not L.projected:
        # the input projection of every row at once, the saved gates its output (on
        # threads too: projecting a thread's few rows of each step as it comes reads all
        # of W_ih from memory at every step, 10% slower at T=100, B=16, H=256)
        project_rows(kind, L, pk_ih, tid, nth)
        sync(tid, nth)
    if L.split:
        forward_units(kind, L, tid, nth, pk_hh, pk_ih)
        return
    if L.upfront and lo == hi:
        return  # it only helped project the one sequence's inputs
    if floating is float:
        if L.seq1:
            # one sequence (B = 1) on the packed kernel: the table's loop of one sequence
            if lo < hi:
                fr_seq1_forward(mode, T, H, reverse, pk_hh, pgates, SH, pb, pbhn, ph, pc,
                                pout, pcs if training else NULL, pgh, px, I,
                                pk_ih if (L.fuse or L.wait_on != NULL) else NULL,
                                <float *> L.pgx, L.progress, L.wait_on, L.sleepers,
                                L.wait_steps, L.stop)
            return
    cdef bint step_proj = not upfront and pk_ih != NULL and nth > 1
    if step_proj:
        # Threads on the packed kernel project each step's rows as the step comes: a
        # thread's rows of a step are adjacent in x, the kernel is as fast on a few rows
        # as on many, and the projection is still in cache when the cell reads it.
        pgates += tid * chunk_rows * SH
    elif not upfront and nth > 1:
        pgates += tid * chunk_rows * SH
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
            a = pgates + (r0 + lo) * SH
        elif step_proj:
            a = pgates
            step_gemm(pk_ih, <int> n, <int> GH, <int> I, px + (r0 + lo) * I, <int> I, True,
                      pwih, <int> I, False, a, <int> SH)
        else:
            if s == chunk_end:
                # Project the inputs of the next run of steps, about chunk_rows rows, in
                # one GEMM. With one thread they are one block of x (in the reverse order
                # when reverse); else this thread's rows are gathered in visiting order.
                s_end = s + 1
                rows = n
                while s_end < T:
                    u = step_time(reverse, T, s_end)
                    j = min(bs[u], hi) - lo
                    if j <= 0 or rows + j > chunk_rows:
                        break
                    rows += j
                    s_end += 1
                if L.wait_on != NULL:
                    # the layer below, on another thread, has computed these rows of x
                    fr_wait_at_least(L.wait_on, <int> s_end, L.sleepers)
                if pxg == NULL:
                    # one thread: packed W_ih (if packed) or BLAS
                    row_base = off[T - s_end] if reverse else off[s]
                    step_gemm(pk_ih, <int> rows, <int> GH, <int> I, px + row_base * I,
                              <int> I, True, pwih, <int> I, False, pgates, <int> SH)
                else:
                    j = 0
                    for u in range(s, s_end):
                        b = min(bs[step_time(reverse, T, u)], hi) - lo
                        memcpy(pxg + j * I, px + (off[step_time(reverse, T, u)] + lo) * I,
                               b * I * sizeof(floating))
                        j += b
                    gemm(False, True, <int> rows, <int> GH, <int> I, <floating> 1, pxg,
                         <int> I, pwih, <int> I, <floating> 0, pgates, <int> SH)
                pos = 0
                chunk_end = s_end
            if pxg == NULL:
                a = pgates + (r0 - row_base) * SH
            else:
                a = pgates + pos * SH
                pos += n
        # from here rows are counted from lo: row b of this step is a + b * SH, state lo + b
        hp = ph + lo * Hout
        if gru_before:
            # r and z first; n needs W_hn (r * h), a second GEMM on the critical path.
            step_gemm(pk_hh, <int> n, <int> (2 * H), <int> Hout, hp, <int> Hout, True, pwhh,
                      <int> Hout, False, pgh + lo * GH, <int> GH)
            for b in range(n):
                gru_before_gates(H, a + b * SH, pgh + (lo + b) * GH, pb, hp + b * Hout)
            step_gemm(pk_hn, <int> n, <int> H, <int> H, a + 3 * H, <int> SH, True,
                      pwhh + 2 * H * Hout, <int> Hout, False, pgh + lo * GH + 2 * H, <int> GH)
            for b in range(n):
                gru_before_out(H, a + b * SH, pgh + (lo + b) * GH + 2 * H, pb,
                               hp + b * Hout, pout + (r0 + lo + b) * Hout)
                memcpy(hp + b * Hout, pout + (r0 + lo + b) * Hout, H * sizeof(floating))
            continue
        step_gemm(pk_hh, <int> n, <int> GH, <int> Hout, hp, <int> Hout, True, pwhh,
                  <int> Hout, False, pgh + lo * GH, <int> GH)
        for b in range(n):
            arow = a + b * SH
            if mode == LSTM:
                if P > 0:
                    m = pms + ((r0 + lo + b) if training else (lo + b)) * H
                else:
                    m = pout + (r0 + lo + b) * Hout
                lstm_cell(vec, training, H, H, arow, pgh + (lo + b) * GH, pb,
                          pc + (lo + b) * H, m)
                if training:
                    memcpy(pcs + (r0 + lo + b) * H, pc + (lo + b) * H, H * sizeof(floating))
                if P == 0:
                    memcpy(hp + b * Hout, m, H * sizeof(floating))
            elif mode == GRU:
                gru_cell(vec, training, H, H, arow, pgh + (lo + b) * GH, pb, pbhn,
                         hp + b * Hout, pout + (r0 + lo + b) * Hout)
                memcpy(hp + b * Hout, pout + (r0 + lo + b) * Hout, H * sizeof(floating))
            else:
                rnn_cell(vec, mode == RNN_RELU, H, arow, pgh + (lo + b) * GH, pb)
                if not in_out:  # else a is the output row itself
                    memcpy(pout + (r0 + lo + b) * Hout, arow, H * sizeof(floating))
                memcpy(hp + b * Hout, arow, H * sizeof(floating))
        if P > 0:
            # h = m @ W_hr^T for the active rows, straight into the carried state
            m = pms + ((r0 + lo) if training else lo) * H
            step_gemm(pk_hr, <int> n, <int> P, <int> H, m, <int> H, True, pwhr, <int> H,
                      False, hp, <int> P)
            memcpy(pout + (r0 + lo) * P, hp, n * P * sizeof(floating))


cdef void project_rows(floating *kind, FwdLoop *L, floating *pk_ih, int tid,
                       int nth) noexcept nogil:
    """Thread tid's share of the input projection of every row into pgates (pk_ih: W_ih
    packed, or NULL: BLAS)."""
    cdef Py_ssize_t I = L.inputs, SH = L.SH
    cdef int GH = <int> L.GH
    cdef const floating *px = <const floating *> L.px
    cdef const floating *pwih = <const floating *> L.pwih
    cdef floating *pgates = <floating *> L.pgates
    cdef long lo_row, hi_row, r0, rows
    fr_split(L.N, 1, tid, nth, &lo_row, &hi_row)
    r0 = lo_row
    while r0 < hi_row:  # in blocks, between which the call can stop
        if fr_stop_poll(L.stop):
            return
        rows = min(<long> MERGED_BLOCK_ROWS, hi_row - r0)
        if pk_ih != NULL:
            step_gemm(pk_ih, <int> rows, GH, <int> I, px + r0 * I, <int> I, True, pwih,
                      <int> I, False, pgates + r0 * SH, <int> SH)
        else:
            gemm(False, True, <int> rows, GH, <int> I, <floating> 1, px + r0 * I, <int> I,
                 pwih, <int> I, <floating> 0, pgates + r0 * SH, <int> SH)
        r0 += MERGED_BLOCK_ROWS


cdef void forward_units(floating *kind, FwdLoop *L, int tid, int nth, floating *pk_hh,
                        floating *pk_ih) noexcept nogil:
    """One sequence (B = 1) on threads that split its hidden units: thread tid computes
    the gate columns of units [u0, u1) (whole panels of the packed weights: _split_units)
    and their cell, then all meet at a barrier before the next step, which needs the
    whole of h. Each thread reads its own share of the weights, from its own cache, so
    that a step that streams W_hh from memory runs at the bandwidth of all the cores.
    h_{t-1} is read from the previous output row, so no thread overwrites what another
    still reads. The training forward has projected every row before (forward_loop);
    inference projects a chunk of steps at a time, each thread its own columns.
    Float32 on the packed kernel, no projection (P = 0), no reset-before GRU."""
    cdef int mode = L.mode
    cdef bint reverse = L.reverse, training = L.training
    cdef Py_ssize_t T = L.T, I = L.inputs, H = L.H, SH = L.SH, chunk_rows = L.chunk_rows
    cdef Py_ssize_t G = 4 if mode == LSTM else 3 if mode == GRU else 1
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
    cdef long u0, u1, nr = fr_panel_width()
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
                a = pgates + row * SH
            else:
                if s == chunk_end:
                    s_end = min(T, s + nth * chunk_rows)
                    row_base = off[T - s_end] if reverse else off[s]
                    for g in range(G):
                        fr_gemm_panels(s_end - s, GH, I, px + row_base * I, I, pk_ih, pgates,
                                       SH, 0, (g * H + u0) // nr, (g * H + u1) // nr)
                    chunk_end = s_end
                a = pgates + (row - row_base) * SH
            for g in range(G):
                fr_gemm_panels(1, GH, H, hsrc, H, pk_hh, pgh, GH, 0, (g * H + u0) // nr,
                               (g * H + u1) // nr)
            orow = pout + row * H
            if mode == LSTM:
                lstm_cell(True, training, H, nu, a + u0, pgh + u0, pb + u0, pc + u0, orow + u0)
                if training:
                    memcpy(pcs + row * H + u0, pc + u0, nu * sizeof(floating))
            elif mode == GRU:
                gru_cell(True, training, H, nu, a + u0, pgh + u0, pb + u0, pbhn + u0,
                         hsrc + u0, orow + u0)
            else:
                rnn_cell(True, mode == RNN_RELU, nu, a + u0, pgh + u0, pb + u0)
                if not training:  # when training, a is the output row itself
                    memcpy(orow + u0, a + u0, nu * sizeof(floating))
            sync(tid, nth)
            hsrc = orow
        if hsrc != ph:
            memcpy(ph + u0, hsrc + u0, nu * sizeof(floating))


cdef void forward_task_f(void *ctx, int tid, int nth) noexcept nogil:
    forward_loop(<float *> NULL, <FwdLoop *> ctx, tid, nth)


cdef void forward_task_d(void *ctx, int tid, int nth) noexcept nogil:
    forward_loop(<double *> NULL, <FwdLoop *> ctx, tid, nth)


# ---------------------------------------------------------------------------------------
# Backward

cdef Py_ssize_t _row_stride(Py_ssize_t width) noexcept nogil:
    """A row stride of at least `width` floats for dG, whose columns the merged GEMMs read
    down the rows: a whole number of 64-byte lines, and an odd one, so that a column's
    rows fall in every set of the L1 cache. At a stride of 4 KB (LSTM, H = 256) they all
    fall in one, and the weight-gradient GEMMs ran about 10% slower."""
    cdef Py_ssize_t lines = (width + 15) // 16
    return (lines + 1 - lines % 2) * 16


cdef struct BwdLoop:
    int mode, reset_after, reverse, split
    Py_ssize_t T, N, inputs, H, Hout, P, SH, SD
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
    void *ppk
    void *pbpack  # per thread bpack_floats for fr_gemm_tn, or NULL: BLAS
    Py_ssize_t bpack_floats
    volatile long *stop  # the call's stop word (_stop.h), or NULL


cdef void backward_units(floating *kind, BwdLoop *L, int tid, int nth,
                         floating *pk_hh) noexcept nogil:
    """BPTT of one sequence (B = 1) on threads that split its hidden units, as
    forward_units: thread tid takes the cells of units [u0, u1), which give their columns
    of every gate of dG; all meet at a barrier, then each computes its units of
    dh_{t-1} = dG @ W_hh from the whole dG row. dG rows are per step, so the next step's
    cells write a row no thread still reads. Float32 on the packed kernel, no projection,
    no reset-before GRU; the merged GEMMs follow in backward_loop."""
    cdef int mode = L.mode
    cdef bint reverse = L.reverse
    cdef Py_ssize_t T = L.T, H = L.H, SH = L.SH, SD = L.SD
    cdef Py_ssize_t G = 4 if mode == LSTM else 3 if mode == GRU else 1
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
    cdef long u0, u1, nr = fr_panel_width()
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
            if mode == LSTM:
                cprev = (pcs + prow * H) if prow >= 0 else pc0
                lstm_drow(H, nu, pgates + row * SH + u0, pcs + row * H + u0, cprev + u0,
                          pdh + u0, pdc + u0, pdg + row * SD + u0)
            elif mode == GRU:
                gru_after_drow(H, nu, pgates + row * SH + u0, php + row * H + u0, pdh + u0,
                               pdg + row * SD + u0)
            else:
                rnn_drow(mode == RNN_RELU, nu, pout + row * H + u0, pdh + u0,
                         pdg + row * SD + u0)
            sync(tid, nth)
            fr_gemm_panels(1, H, G * H, pdg + row * SD, SD, pk_hh, pdh, H, mode == GRU,
                           u0 // nr, u1 // nr)


cdef void backward_loop(floating *kind, BwdLoop *L, int tid, int nth) noexcept nogil:
    """Thread tid's sequences of BPTT for one direction of one layer, then its share of
    the merged GEMMs.

    pdh and pdc hold dL/dh_n, dL/dc_n on entry and dL/dh0, dL/dc0 on exit; pdg, php,
    pdhp and pdm (B x H) are workspaces; dx and the weight gradients are overwritten, the
    bias gradients must be zero on entry; pseq, if not NULL, receives every step's dL/dh_t.
    """
    cdef int mode = L.mode
    cdef bint reset_after = L.reset_after, reverse = L.reverse
    cdef Py_ssize_t T = L.T, N = L.N, I = L.inputs, H = L.H, Hout = L.Hout, P = L.P
    cdef Py_ssize_t SH = L.SH, SD = L.SD
    cdef const Py_ssize_t *bs = L.bs
    cdef const Py_ssize_t *off = L.off
    cdef const floating *px = <const floating *> L.px
    cdef const floating *ph0 = <const floating *> L.ph0
    cdef const floating *pc0 = <const floating *> L.pc0
    cdef const floating *pwih = <const floating *> L.pwih
    cdef const floating *pwhh = <const floating *> L.pwhh
    cdef const floating *pwhr = <const floating *> L.pwhr
    cdef const floating *pout = <const floating *> L.pout
    cdef const floating *pgates = <const floating *> L.pgates
    cdef const floating *pcs = <const floating *> L.pcs
    cdef const floating *pms = <const floating *> L.pms
    cdef const floating *pdout = <const floating *> L.pdout
    cdef floating *pdh = <floating *> L.pdh
    cdef floating *pdc = <floating *> L.pdc
    cdef floating *pdg = <floating *> L.pdg
    cdef floating *php = <floating *> L.php
    cdef floating *pdhp = <floating *> L.pdhp
    cdef floating *pdm = <floating *> L.pdm
    cdef floating *pseq = <floating *> L.pseq
    cdef floating *pdx = <floating *> L.pdx
    cdef floating *pdwih = <floating *> L.pdwih
    cdef floating *pdwhh = <floating *> L.pdwhh
    cdef floating *pdbih = <floating *> L.pdbih
    cdef floating *pdbhh = <floating *> L.pdbhh
    cdef floating *pdwhr = <floating *> L.pdwhr
    cdef floating *ppk = <floating *> L.ppk

    cdef Py_ssize_t G = 4 if mode == LSTM else 3 if mode == GRU else 1
    cdef Py_ssize_t GH = G * H
    cdef bint gru_after = mode == GRU and reset_after
    cdef bint gru_before = mode == GRU and not reset_after
    cdef Py_ssize_t lo = L.seqs[tid], hi = L.seqs[tid + 1]
    cdef Py_ssize_t s, t, n, r0, b, pr, row
    cdef const floating *cprev
    cdef const floating *dmrow
    # K: width of dGh, the block that multiplies W_hh (all of it but for reset-before GRU)
    cdef Py_ssize_t K = 2 * H if gru_before else GH
    cdef Py_ssize_t sizes[4]
    cdef floating *pk_hh = NULL
    cdef floating *pk_hn = NULL
    cdef floating *pk_hr = NULL
    cdef floating *pk_ih = NULL
    cdef floating *pk_ih2 = NULL
    cdef floating *bpack = NULL
    cdef long lo_c, hi_c
    if ppk != NULL:
        _packed_sizes(True, mode, reset_after, I, H, Hout, P, sizes)
        pk_hh = pack_weight(tid, nth, ppk, False, Hout, K, pwhh, Hout)
        if gru_before:
            pk_hn = pack_weight(tid, nth, ppk + sizes[0], False, H, H, pwhh + 2 * H * Hout,
                                Hout)
        if P > 0:
            pk_hr = pack_weight(tid, nth, ppk + sizes[0] + sizes[1], False, H, P, pwhr, H)
        if L.pbpack != NULL:
            bpack = <floating *> L.pbpack + tid * L.bpack_floats
            pk_ih = ppk + sizes[0] + sizes[1] + sizes[2]
            if gru_after:
                pack_weight(tid, nth, pk_ih, False, I, 2 * H, pwih, I)
                pk_ih2 = pack_weight(tid, nth, pk_ih + fr_packed_size(I, 2 * H), False, I, H,
                                     pwih + 2 * H * I, I)
            else:
                pack_weight(tid, nth, pk_ih, False, I, GH, pwih, I)
        sync(tid, nth)
    if L.split:
        backward_units(kind, L, tid, nth, pk_hh)
    else:
        for s in range(T - 1, -1, -1):
            if fr_stop_before(L.stop, T - 1 - s, 0):
                break
            t = step_time(reverse, T, s)
            r0 = off[t] + lo  # from here rows and states are counted from sequence lo
            n = min(bs[t], hi) - lo
            if n <= 0:
                continue
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
                step_gemm(pk_hr, <int> n, <int> H, <int> P, pdh + lo * P, <int> P, False, pwhr,
                          <int> H, False, pdm + lo * H, <int> H)
            for b in range(n):
                row = r0 + b
                if mode == LSTM:
                    pr = prev_row(reverse, T, bs, off, t, lo + b)
                    cprev = (pcs + pr * H) if pr >= 0 else (pc0 + (lo + b) * H)
                    dmrow = (pdm + (lo + b) * H) if P > 0 else (pdh + (lo + b) * Hout)
                    lstm_drow(H, H, pgates + row * SH, pcs + row * H, cprev, dmrow,
                              pdc + (lo + b) * H, pdg + row * SD)
                elif gru_after:
                    gru_after_drow(H, H, pgates + row * SH, php + row * Hout, pdh + (lo + b) * Hout,
                                   pdg + row * SD)
                elif gru_before:
                    gru_before_drow1(H, pgates + row * SH, php + row * Hout,
                                     pdh + (lo + b) * Hout, pdg + row * SD)
                else:
                    rnn_drow(mode == RNN_RELU, H, pout + row * Hout, pdh + (lo + b) * Hout,
                             pdg + row * SD)
            if gru_before:
                # d(rh) = dn @ W_hn, then dr and the r * d(rh) path to h_prev
                step_gemm(pk_hn, <int> n, <int> H, <int> H, pdg + r0 * SD + 2 * H, <int> SD,
                          False, pwhh + 2 * H * Hout, <int> Hout, False, pdm + lo * H, <int> H)
                for b in range(n):
                    row = r0 + b
                    gru_before_drow2(H, pgates + row * SH, php + row * Hout, pdm + (lo + b) * H,
                                     pdh + (lo + b) * Hout, pdg + row * SD)
            # dh_{t-1} = direct part (GRU) + dGh @ W_hh
            step_gemm(pk_hh, <int> n, <int> Hout, <int> K, pdg + r0 * SD, <int> SD, False,
                      pwhh, <int> Hout, mode == GRU, pdh + lo * Hout, <int> Hout)
    sync(tid, nth)
    if L.stop != NULL and L.stop[0] != LONG_MAX:
        return  # stopped: the word is final here (no thread polls past the loop)

    # Merged GEMMs over all timesteps, each split by its output rows (or columns for the
    # sums), so they need no barrier between them. dGx columns: [0, GH) except for the
    # reset-after GRU, where the n block of dGx is column block 3 of dG. On threads, the
    # packed kernel takes them (BLAS would pack its operands again in every thread).
    if gru_after:
        merged_tn(tid, nth, <int> (2 * H), <int> I, <int> N, pdg, <int> SD, px, <int> I,
                  pdwih, <int> I, bpack, L.stop)
        merged_tn(tid, nth, <int> H, <int> I, <int> N, pdg + 3 * H, <int> SD, px, <int> I,
                  pdwih + 2 * H * I, <int> I, bpack, L.stop)
        merged_nn(tid, nth, pk_ih, <int> N, <int> I, <int> (2 * H), pdg, <int> SD, pwih,
                  <int> I, False, pdx, <int> I, L.stop)
        merged_nn(tid, nth, pk_ih2, <int> N, <int> I, <int> H, pdg + 3 * H, <int> SD,
                  pwih + 2 * H * I, <int> I, True, pdx, <int> I, L.stop)
        colsum_add(tid, nth, N, 2 * H, pdg, SD, pdbih)
        colsum_add(tid, nth, N, H, pdg + 3 * H, SD, pdbih + 2 * H)
    else:
        merged_tn(tid, nth, <int> GH, <int> I, <int> N, pdg, <int> SD, px, <int> I, pdwih,
                  <int> I, bpack, L.stop)
        merged_nn(tid, nth, pk_ih, <int> N, <int> I, <int> GH, pdg, <int> SD, pwih, <int> I,
                  False, pdx, <int> I, L.stop)
        colsum_add(tid, nth, N, GH, pdg, SD, pdbih)
    merged_tn(tid, nth, <int> K, <int> Hout, <int> N, pdg, <int> SD, php, <int> Hout, pdwhh,
              <int> Hout, bpack, L.stop)
    if gru_after:
        colsum_add(tid, nth, N, GH, pdg, SD, pdbhh)
    else:
        # both biases meet the same pre-activations: one sum serves both; this thread's
        # columns of it are the ones it summed
        fr_split(GH, 16, tid, nth, &lo_c, &hi_c)
        memcpy(pdbhh + lo_c, pdbih + lo_c, (hi_c - lo_c) * sizeof(floating))
    if gru_before:
        # the W_hn block multiplies rh = r * h_prev, saved as gates block 3
        merged_tn(tid, nth, <int> H, <int> H, <int> N, pdg + 2 * H, <int> SD, pgates + 3 * H,
                  <int> SH, pdwhh + 2 * H * Hout, <int> Hout, bpack, L.stop)
    if P > 0:
        merged_tn(tid, nth, <int> P, <int> H, <int> N, pdhp, <int> P, pms, <int> H, pdwhr,
                  <int> H, bpack, L.stop)


cdef void backward_task_f(void *ctx, int tid, int nth) noexcept nogil:
    backward_loop(<float *> NULL, <BwdLoop *> ctx, tid, nth)


cdef void backward_task_d(void *ctx, int tid, int nth) noexcept nogil:
    backward_loop(<double *> NULL, <BwdLoop *> ctx, tid, nth)


# ---------------------------------------------------------------------------------------
# Entry points: check the arrays, allocate the outputs and one block of scratch, run the
# loop without the GIL. The checks are the kernels' own guard against reading or writing
# out of bounds (the layers validate users' input with friendlier messages before this).

# Inference projects the inputs of a chunk of timesteps at a time so that its scratch
# stays at most a quarter of the output (N x Hout) on long sequences, while a chunk keeps
# enough rows for an efficient GEMM.
cdef Py_ssize_t CHUNK_MIN_ROWS = 64
cdef Py_ssize_t CHUNK_SHARE_OF_OUTPUT = 4

cdef char _empty_data[64]

cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size) nogil
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr) nogil

# Scratch is allocated in C, and reported to tracemalloc (as NumPy reports its arrays) so
# that a traced peak counts it. A workspace as large as the largest call has needed is
# kept between calls for the next forward or backward: allocating it afresh costs page
# faults and the kernel's zeroing of every page, about 8% of a large training step and
# 3.5% of a large inference (LSTM 50x64x1024: 32 MB of packed weights a call). Four are
# kept: the two directions of a layer that run at once (forward_both), or the layers of
# a stack (forward_stack), take one each.
# release_workspace() frees them.
cdef enum:
    KEPT_SLOTS = 4
cdef unsigned int _TRACE_DOMAIN = 0x46524E4E  # "FRNN"
cdef void *_kept[KEPT_SLOTS]
cdef size_t _kept_size[KEPT_SLOTS]
cdef bint _kept_busy[KEPT_SLOTS]
memset(_kept, 0, sizeof(_kept))
memset(_kept_size, 0, sizeof(_kept_size))
memset(_kept_busy, 0, sizeof(_kept_busy))


cdef void *_scratch(size_t nbytes) except NULL:
    """nbytes of scratch (GIL held): a kept workspace, grown if need be, unless other
    calls (the other direction of a pair, a thread of the caller's) use them all, then
    fresh memory."""
    cdef void *p
    cdef int k
    if nbytes == 0:
        nbytes = 1  # never NULL: that is this function's error value
    for k in range(KEPT_SLOTS):
        if _kept_busy[k]:
            continue
        if _kept_size[k] < nbytes:
            _release_kept(k)
            _kept[k] = _alloc_lines(nbytes)
            if _kept[k] == NULL:
                raise MemoryError()
            _kept_size[k] = nbytes
            PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t> _kept[k], nbytes)
        _kept_busy[k] = True
        return _kept[k]
    p = _alloc_lines(nbytes)
    if p == NULL:
        raise MemoryError()
    PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t> p, nbytes)
    return p


cdef void *_alloc_lines(size_t nbytes) noexcept:
    """nbytes starting on a cache line (free() releases it), or NULL. The scratch's parts
    (packed panels, a step's gates) are whole lines apart when H is a multiple of 16."""
    cdef void *p = NULL
    if posix_memalign(&p, 64, nbytes) != 0:
        return NULL
    return p


cdef void _scratch_free(void *p):
    cdef int k
    if p == NULL:
        return
    for k in range(KEPT_SLOTS):
        if p == _kept[k]:
            _kept_busy[k] = False
            return
    PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t> p)
    free(p)


cdef void _release_kept(int k):
    if _kept[k] != NULL:
        PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t> _kept[k])
        free(_kept[k])
    _kept[k] = NULL
    _kept_size[k] = 0


def release_workspace():
    """Free the workspaces kept for the next call (but one a call is using) and the
    cached blocks of dead output arrays."""
    cdef int k
    for k in range(KEPT_SLOTS):
        if not _kept_busy[k]:
            _release_kept(k)
    _cache_clear()


def workspace_bytes():
    """Bytes kept for later calls: the workspaces and cached output blocks."""
    cdef size_t total = _cache_total
    cdef int k
    for k in range(KEPT_SLOTS):
        total += _kept_size[k]
    return total


cdef Py_ssize_t _dim(object a, int i):
    return cnp.PyArray_DIMS(<cnp.ndarray> a)[i]


cdef char *_data(object a, int typenum, int nd, Py_ssize_t d0, Py_ssize_t d1, str name,
                 bint writable=False) except NULL:
    """Data of a C-contiguous array of the given type and shape (-1: any size)."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray> a
    if (cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or cnp.PyArray_NDIM(arr) != nd
            or (d0 >= 0 and cnp.PyArray_DIMS(arr)[0] != d0)
            or (nd == 2 and d1 >= 0 and cnp.PyArray_DIMS(arr)[1] != d1)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        want = tuple("any" if d < 0 else d for d in (d0, d1)[:nd])
        raise ValueError(f"{name}: expected a C-contiguous{' writable' if writable else ''} "
                         f"array of {cnp.PyArray_DescrFromType(typenum)} and shape {want}, "
                         f"got {a.dtype} {a.shape}")
    cdef char *p = <char *> cnp.PyArray_DATA(arr)
    return p if p != NULL else _empty_data


cdef char *_opt(object a, int typenum, int nd, Py_ssize_t d0, Py_ssize_t d1, str name):
    """_data, or NULL for None."""
    return NULL if a is None else _data(a, typenum, nd, d0, d1, name)


# Large outputs (the saved activations, out, dx: megabytes every training step) come from
# a cache of blocks that earlier outputs gave back when their arrays died. Fresh memory of
# that size is mapped anew by malloc on each call, and faulting its pages in cost about a
# third of a training forward (LSTM 100x16x256: 2900 page faults a call). The cache keeps
# at most CACHE_BLOCKS blocks and CACHE_BYTES bytes; release_workspace() empties it.
# Outputs from 16 KB on take part: malloc returns freed memory to the system once a few
# hundred KB of it are free, so even a small layer's outputs (GRU 100x1x128: 200 KB of
# saved gates) faulted their pages in anew each step (its training forward: 0.79 ms with
# a 256 KB floor here, 0.31 ms with 16 KB).
cdef enum:
    CACHE_BLOCKS = 32
    CACHE_MIN_BYTES = 1 << 14
cdef size_t CACHE_BYTES = 512 << 20
cdef void *_cache_ptr[CACHE_BLOCKS]
cdef size_t _cache_size[CACHE_BLOCKS]
cdef int _cache_n = 0
cdef size_t _cache_total = 0


cdef void _block_return(object capsule) noexcept:
    """Capsule destructor: an output array died; keep its block for a later one."""
    global _cache_n, _cache_total
    cdef void *p = PyCapsule_GetPointer(capsule, NULL)
    cdef size_t nbytes = <size_t> PyCapsule_GetContext(capsule)
    PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t> p)
    if _cache_n < CACHE_BLOCKS and _cache_total + nbytes <= CACHE_BYTES:
        _cache_ptr[_cache_n] = p
        _cache_size[_cache_n] = nbytes
        _cache_n += 1
        _cache_total += nbytes
    else:
        free(p)


cdef void *_block_take(size_t *nbytes):
    """A cached block of *nbytes to 1/8 more (the smallest; *nbytes becomes its size), or
    NULL. Training repeats the same sizes; a much larger block would be memory wasted."""
    global _cache_n, _cache_total
    cdef int i, best = -1
    for i in range(_cache_n):
        if nbytes[0] <= _cache_size[i] <= nbytes[0] + nbytes[0] // 8 and (
                best < 0 or _cache_size[i] < _cache_size[best]):
            best = i
    if best < 0:
        return NULL
    cdef void *p = _cache_ptr[best]
    nbytes[0] = _cache_size[best]
    _cache_total -= _cache_size[best]
    _cache_n -= 1
    _cache_ptr[best] = _cache_ptr[_cache_n]
    _cache_size[best] = _cache_size[_cache_n]
    return p


cdef void _cache_clear():
    global _cache_n, _cache_total
    cdef int i
    for i in range(_cache_n):
        free(_cache_ptr[i])
    _cache_n = 0
    _cache_total = 0


cdef cnp.ndarray _new(int typenum, Py_ssize_t d0, Py_ssize_t d1, bint zero):
    """A new array (d0,) (d1 < 0) or (d0, d1); float ones (unless zeroed) start on a cache
    line. Threads that split a sequence's units write the two halves of each output and
    state row: where a row started mid-line, both wrote that line at every step (the
    scratch's gates, likewise shared, cost the RNN at T=100, B=1, H=128 a quarter of its
    time; aligning the outputs too measured within this VM's noise, 0.97-1.07x, and the
    backward's split 1.02-1.06x)."""
    cdef cnp.npy_intp dims[2]
    dims[0] = d0
    dims[1] = d1
    cdef int nd = 1 if d1 < 0 else 2
    if zero:
        return cnp.PyArray_ZEROS(nd, dims, typenum, 0)
    cdef size_t nbytes = <size_t> d0 * <size_t> (1 if d1 < 0 else d1) * (
        4 if typenum == cnp.NPY_FLOAT32 else 8)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef cnp.npy_intp padded = <cnp.npy_intp> nbytes + 64
    cdef object arr
    cdef char *q
    if nbytes < CACHE_MIN_BYTES:
        # a small one: a line-aligned view into NumPy's bytes
        owner = cnp.PyArray_EMPTY(1, &padded, cnp.NPY_UINT8, 0)
        q = <char *> cnp.PyArray_DATA(<cnp.ndarray> owner)
        arr = cnp.PyArray_SimpleNewFromData(nd, dims, typenum, q + ((-<size_t> q) & 63))
        cnp.set_array_base(<cnp.ndarray> arr, owner)
        return <cnp.ndarray> arr
    cdef void *p = _block_take(&nbytes)
    if p == NULL:
        p = _alloc_lines(nbytes)
        if p == NULL:
            raise MemoryError()
    try:
        owner = PyCapsule_New(p, NULL, <PyCapsule_Destructor> _block_return)
        PyCapsule_SetContext(owner, <void *> nbytes)
    except BaseException:
        free(p)
        raise
    PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t> p, nbytes)
    arr = cnp.PyArray_SimpleNewFromData(nd, dims, typenum, p)
    cnp.set_array_base(<cnp.ndarray> arr, owner)
    return <cnp.ndarray> arr


def copy_array(a):
    """A copy of a C-contiguous float32 or float64 array of 1 or 2 dimensions whose memory
    comes from the block cache (the weight snapshots of a training cache), else a.copy()."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"copy_array takes a NumPy array, got {type(a).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(a)
    cdef int nd = cnp.PyArray_NDIM(a)
    if (nd > 2 or nd < 1 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)):
        return a.copy()
    cdef cnp.ndarray out = _new(typenum, _dim(a, 0), _dim(a, 1) if nd == 2 else -1, False)
    memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a))
    return out


cdef cnp.ndarray _copy(object a):
    """A copy of a state (a C-contiguous float array of 2 dimensions, checked by the
    caller) that starts on a cache line (_new)."""
    cdef cnp.ndarray out = _new(cnp.PyArray_TYPE(a), _dim(a, 0), _dim(a, 1), False)
    memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a))
    return out


cdef Py_ssize_t *_offsets(object batch_sizes, Py_ssize_t N, Py_ssize_t B) except NULL:
    """Row offsets of the timesteps (malloc'ed, T + 1 entries), after checking that
    batch_sizes is a packed batch of B sequences and N rows."""
    cdef const Py_ssize_t *bs = <const Py_ssize_t *> _data(batch_sizes, cnp.NPY_INTP, 1, -1,
                                                          -1, "batch_sizes")
    cdef Py_ssize_t T = _dim(batch_sizes, 0), t
    cdef Py_ssize_t *off = <Py_ssize_t *> malloc((T + 1) * sizeof(Py_ssize_t))
    if off == NULL:
        raise MemoryError()
    off[0] = 0
    for t in range(T):
        if bs[t] < 0 or bs[t] > (B if t == 0 else bs[t - 1]) or (t == 0 and bs[0] != B):
            free(off)
            raise ValueError("batch_sizes must start at B and never grow, got "
                             f"{batch_sizes[:t + 1].tolist()} (B = {B})")
        off[t + 1] = off[t] + bs[t]
    cdef Py_ssize_t rows = off[T]
    if rows != N:
        free(off)
        raise ValueError(f"batch_sizes sum to {rows} rows, but x has {N}")
    return off


cdef int _gates(int mode):
    return 4 if mode == LSTM else 3 if mode == GRU else 1


cdef struct Dims:
    # rows, inputs, hidden, gate rows, projection, state and batch sizes: N, I, H, G*H, P,
    # Hout, B (no single capital letters as fields: <complex.h> defines I)
    Py_ssize_t rows, inputs, hidden, gate_rows, proj, hout, batch


cdef Dims _dims(int mode, int tn, x, w_ih, w_hh, w_hr, h0) except *:
    """The sizes of a layer's problem, after checking x, the weights and h0 against each
    other: x (N, I), w_ih (G*H, I), w_hh (G*H, Hout), w_hr (P, H) or None, h0 (B, Hout)."""
    cdef Dims d
    memset(&d, 0, sizeof(d))
    cdef int G = _gates(mode)
    _data(x, tn, 2, -1, -1, "x")
    d.rows, d.inputs = _dim(x, 0), _dim(x, 1)
    _data(w_ih, tn, 2, -1, d.inputs, "w_ih")
    d.gate_rows = _dim(w_ih, 0)
    d.hidden = d.gate_rows // G
    if d.gate_rows != G * d.hidden or d.hidden == 0:
        raise ValueError(f"w_ih must have a positive multiple of {G} rows, got {d.gate_rows}")
    _opt(w_hr, tn, 2, -1, d.hidden, "w_hr")
    d.proj = 0 if w_hr is None else _dim(w_hr, 0)
    if d.proj and mode != LSTM:
        raise ValueError("only LSTM takes a projection")
    d.hout = d.proj if d.proj > 0 else d.hidden
    _data(w_hh, tn, 2, d.gate_rows, d.hout, "w_hh")
    _data(h0, tn, 2, -1, d.hout, "h0")
    d.batch = _dim(h0, 0)
    return d


def forward(int mode, bint reset_after, bint reverse, bint training, x, batch_sizes,
            w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    """Run one direction of one layer over a packed batch.

    x (N, I), batch_sizes (T,) intp, w_ih (G*H, I), w_hh (G*H, Hout), b_ih and b_hh
    (G*H,) or None, w_hr (P, H) or None, h0 (B, Hout), c0 (B, H) for LSTM else None; all
    C-contiguous, of one float dtype. Returns out (N, Hout), h_n (B, Hout), c_n (B, H) or
    None, and when training the saved activations (gates or None, cs or None, ms or None).
    """
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32:
        return _forward(<float> 0, mode, reset_after, reverse, training, x, batch_sizes,
                        w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _forward(<double> 0, mode, reset_after, reverse, training, x, batch_sizes,
                        w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    raise TypeError("x must be a float32 or float64 array")


cdef object _fwd_prepare(floating kind, FwdLoop *L, int mode, bint reset_after, bint reverse,
                         bint training, x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0,
                         c0):
    """Check one direction's arrays, allocate its outputs and fill in what of L does not
    depend on the thread count (L.split and L.upfront as one call alone would choose
    them); _fwd_plan does the rest. Returns (out, h, c, gates, cs, ms). L.off is malloc'ed
    (_fwd_release frees it, also after an error)."""
    cdef int tn = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    cdef Dims d = _dims(mode, tn, x, w_ih, w_hh, w_hr, h0)
    cdef Py_ssize_t N = d.rows, I = d.inputs, GH = d.gate_rows, H = d.hidden
    cdef Py_ssize_t P = d.proj, Hout = d.hout, B = d.batch
    L.pbih = _opt(b_ih, tn, 1, GH, -1, "b_ih")
    L.pbhh = _opt(b_hh, tn, 1, GH, -1, "b_hh")
    if (L.pbih == NULL) != (L.pbhh == NULL):
        raise ValueError("b_ih and b_hh must be both given or both None")
    cdef bint lstm = mode == LSTM
    if lstm == (c0 is None):
        raise ValueError("c0 is needed for LSTM and only for LSTM")
    _opt(c0, tn, 2, B, H, "c0")
    cdef Py_ssize_t T = _dim(batch_sizes, 0) if cnp.PyArray_Check(batch_sizes) else 0
    cdef Py_ssize_t S = 4 if (lstm or mode == GRU) else 1
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
    L.npack = (_packed_sizes(False, mode, reset_after, I, H, Hout, P, sizes)
               if use_packed(floating is float, B, GH, Hout) else 0)
    L.npack_ih = sizes[3] if L.npack else 0
    L.split = _split_units(B, L.npack, P, H, mode, reset_after, GH * Hout)
    L.upfront = (not training and not L.split and B == 1
                 and N * S * H * sizeof(floating) <= UPFRONT_MAX_BYTES)
    L.mode, L.reset_after, L.reverse, L.training = mode, reset_after, reverse, training
    L.N, L.B, L.GH = N, B, GH
    L.T, L.inputs, L.H, L.Hout, L.P, L.SH = T, I, H, Hout, P, S * H
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
    cdef Py_ssize_t SH = L.SH, Hout = L.Hout, npack = L.npack, chunk, j, nscratch
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
    gather = nth > 1 and npack == 0 and not upfront
    if training or upfront:
        chunk = N  # upfront: nth shares of it, room for the projection of every row
    else:
        # a chunk row costs SH floats of projection, and I more of gathered input
        # when threads gather their rows (BLAS projections; the packed kernel
        # projects each step's rows in place)
        chunk = min(N, max(CHUNK_MIN_ROWS, B, N * Hout // (
            CHUNK_SHARE_OF_OUTPUT * (SH + (I if gather else 0)))))
        if chunk_steps > 0 and nth == 1:
            chunk = min(N, B * chunk_steps)
    # threads on the packed kernel project one step at a time: a chunk of their widest
    # step's rows is all the room they need; the units split projects a chunk of
    # steps, each thread its own columns of the nth shares of rows (forward_units)
    chunk = _split_sequences(L.bs, L.T, B, N, nth, L.seqs,
                             0 if (nth > 1 and not gather and not split and not upfront)
                             else chunk)
    # one sequence on the packed kernel, not split: fr_seq1_forward, which on one
    # thread with a W_ih small enough for the L1 cache projects each step's inputs
    L.seq1 = (floating is float and npack != 0 and B == 1 and not split and P == 0
              and not (L.mode == GRU and not L.reset_after) and (training or upfront))
    fuse_weights = SEQ1_FUSE_WEIGHTS
    if fuse_weights is None:
        fuse_weights = CAPABILITY_SEQ1_FUSE_WEIGHTS.get(fr_kt.name.decode(), 0)
    L.fuse = L.seq1 and nth == 1 and GH * I <= fuse_weights and chunk_steps == 0
    _last_path = ("units split" if split else "one sequence, projection inside" if L.fuse
                  else "one sequence" if L.seq1 else "batch")
    # W_ih is packed for threads, for the projection inside the one-sequence loop,
    # and for one thread on a batch: OpenBLAS took 1.4x our kernel's time for the
    # same product there (it packs both operands every call; one-thread inference,
    # LSTM 100x16x256: 18.3 -> 16.5 ms, GRU 13.7 -> 11.9). One thread at B = 1
    # leaves it to BLAS (half-empty panels made the RNN at H = 32 8% slower) but from
    # THREAD_CALL_WORK where _one_thread_packed says so.
    L.pack_ih = npack != 0 and (nth > 1 or L.fuse or B > 1 or chunk_steps > 0
                                or _one_thread_packed(False, N * GH * (I + Hout)))
    if npack and not L.pack_ih:
        npack -= L.npack_ih
    # scratch: fused bias, b_hn, step projection, packed weights, then gx (fuse), then
    # the inference chunk (or the LSTM projection's m)
    gx_at = GH + H + B * GH + npack
    rest_at = gx_at + (2 * SH if L.fuse else 0)
    nscratch = rest_at
    # the vanilla RNN's projection, when all rows are projected at once, goes straight
    # into out, where each step's tanh overwrites it in place
    in_out = SH == H and (training or upfront)
    if not training:
        nscratch += (0 if (in_out or L.fuse) else nth * chunk * SH) + (B * H if P else 0)
        if gather:
            nscratch += nth * chunk * I
    scratch = <floating *> _scratch(nscratch * sizeof(floating))
    L.scratch = scratch
    L.chunk_rows = chunk
    L.pb = scratch
    L.pbhn = scratch + GH
    L.pgh = scratch + GH + H
    L.ppk = (scratch + GH + H + B * GH) if npack else NULL
    L.pgx = <void *> (scratch + gx_at)
    if not training:
        L.pgates = (NULL if L.fuse else L.pout if in_out else <void *> (scratch + rest_at))
    L.pxg = NULL
    if P and not training:
        L.pms = <void *> (<floating *> L.pgates + nth * chunk * SH)
    if not training and gather:
        L.pxg = <void *> (<floating *> L.pgates + nth * chunk * SH + (B * H if P else 0))
    # b_ih + b_hh, but the reset-after GRU keeps b_hn apart: r multiplies W_hn h + b_hn
    pb = <floating *> L.pb
    pbhn = <floating *> L.pbhn
    for j in range(GH):
        pb[j] = (pbih[j] + pbhh[j]) if pbih != NULL else 0
    for j in range(H):
        pbhn[j] = 0
    if pbih != NULL and L.mode == GRU and L.reset_after:
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
    return L.npack == 0 or not L.pack_ih


cdef inline bint _bwd_calls_blas(const BwdLoop *L):
    """Whether a planned backward calls BLAS: not on the packed kernel, or on one thread
    (whose merged GEMMs are BLAS's)."""
    return L.ppk == NULL or L.pbpack == NULL


cdef int _fwd_run(floating kind, FwdLoop *L) except -1:
    """Plan a prepared forward for the threads it takes alone, and run it."""
    cdef long slept = fr_slept_waits
    cdef int held = 0, nth
    cdef long blas_before
    cdef fr_task_fn task = forward_task_f if floating is float else forward_task_d
    cdef fr_stop_word stop_word
    cdef volatile long *stop = &stop_word.word
    try:
        nth = _begin(L.N, L.B, L.GH, L.inputs + L.Hout, L.training or L.split or L.upfront,
                     &held)
        _fwd_plan(kind, L, nth)
        _hold_blas(_fwd_calls_blas(L), nth, L.N * L.GH * (L.inputs + L.Hout), &held)
        L.stop = stop
        blas_before = fr_blas_calls
        _stop_begin(stop)
        with nogil:
            fr_pool_run(task, L, nth)
        _stop_end(stop)
        _log_call(nth, held, blas_before, False)
        if L.split:
            _note_split_waits(fr_slept_waits - slept, L.T)
    finally:
        fr_pool_end(held)
    return 0


cdef object _forward(floating kind, int mode, bint reset_after, bint reverse, bint training,
                     x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
    cdef FwdLoop L
    memset(&L, 0, sizeof(L))
    try:
        prepared = _fwd_prepare(kind, &L, mode, reset_after, reverse, training, x,
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
        return _backward(<float> 0, mode, reset_after, reverse, x, batch_sizes, h0, c0,
                         w_ih, w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _backward(<double> 0, mode, reset_after, reverse, x, batch_sizes, h0, c0,
                         w_ih, w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
    raise TypeError("x must be a float32 or float64 array")


cdef object _bwd_prepare(floating kind, BwdLoop *L, int mode, bint reset_after,
                         bint reverse, x, batch_sizes, h0, c0, w_ih, w_hh, w_hr, out, gates,
                         cs, ms, dout, dh_n, dc_n, dh_seq):
    """Check one direction's arrays, allocate its gradients and fill in what of L does not
    depend on the thread count (L.split as one call alone would choose it); _bwd_plan
    does the rest. Returns (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr). L.off is
    malloc'ed (_bwd_release frees it, also after an error)."""
    cdef int tn = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    cdef bint lstm = mode == LSTM
    cdef bint gru_after = mode == GRU and reset_after
    cdef Dims d = _dims(mode, tn, x, w_ih, w_hh, w_hr, h0)
    cdef Py_ssize_t N = d.rows, I = d.inputs, GH = d.gate_rows, H = d.hidden
    cdef Py_ssize_t P = d.proj, Hout = d.hout, B = d.batch
    if lstm == (c0 is None) or lstm == (dc_n is None) or lstm == (cs is None):
        raise ValueError("c0, dc_n and cs are needed for LSTM and only for LSTM")
    cdef bint rnn = mode == RNN_TANH or mode == RNN_RELU
    if (ms is not None) != (P > 0) or (gates is not None) == rnn:
        raise ValueError("saved activations do not match the cell")
    cdef Py_ssize_t S = 4 if (lstm or mode == GRU) else 1
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
    L.npack = (_packed_sizes(True, mode, reset_after, I, H, Hout, P, sizes)
               if use_packed(floating is float, B, GH, Hout) else 0)
    L.npack_ih = sizes[3] if L.npack else 0
    L.split = _split_units(B, L.npack, P, H, mode, reset_after, GH * Hout)
    L.mode, L.reset_after, L.reverse = mode, reset_after, reverse
    L.B, L.GH = B, GH
    L.T, L.N, L.inputs, L.H, L.Hout, L.P, L.SH = T, N, I, H, Hout, P, S * H
    L.SD = _row_stride(4 * H if gru_after else GH)
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
    global _last_threads, _last_split
    cdef Py_ssize_t N = L.N, SD = L.SD, Hout = L.Hout, P = L.P, npack = L.npack
    cdef Py_ssize_t nbpack = 0, nscratch
    cdef floating *pdg
    _last_threads = nth
    L.split = L.split and nth > 1
    _last_split = L.split
    _split_sequences(L.bs, L.T, L.B, N, nth, L.seqs, 0)
    # W_ih and the merged GEMMs' blocks are packed for threads; on one thread they are
    # BLAS's but from THREAD_CALL_WORK where _one_thread_packed says so
    if npack and nth == 1 and not _one_thread_packed(True, L.N * L.GH * (L.inputs + Hout)):
        npack -= L.npack_ih
    elif npack:
        nbpack = fr_packed_size(max(L.inputs, L.H, Hout), FR_KC)
    nscratch = N * SD + N * Hout + N * P + L.B * L.H + npack + nth * nbpack
    pdg = <floating *> _scratch(nscratch * sizeof(floating))
    L.scratch = pdg
    L.pdg = pdg
    L.php = pdg + N * SD
    L.pdhp = pdg + N * SD + N * Hout
    L.pdm = pdg + N * SD + N * Hout + N * P
    L.ppk = (pdg + N * SD + N * Hout + N * P + L.B * L.H) if npack else NULL
    L.pbpack = (pdg + N * SD + N * Hout + N * P + L.B * L.H + npack) if nbpack else NULL
    L.bpack_floats = nbpack
    return 0


cdef void _bwd_release(BwdLoop *L):
    _scratch_free(L.scratch)
    free(<void *> L.off)
    L.scratch = NULL
    L.off = NULL


cdef int _bwd_run(floating kind, BwdLoop *L) except -1:
    """Plan a prepared backward for the threads it takes alone, and run it."""
    cdef long slept = fr_slept_waits
    cdef int held = 0, nth
    cdef long blas_before
    cdef fr_task_fn task = backward_task_f if floating is float else backward_task_d
    cdef fr_stop_word stop_word
    cdef volatile long *stop = &stop_word.word
    try:
        nth = _begin(L.N, L.B, L.GH, L.inputs + L.Hout, True, &held)
        _bwd_plan(kind, L, nth)
        _hold_blas(_bwd_calls_blas(L), nth, L.N * L.GH * (L.inputs + L.Hout), &held)
        L.stop = stop
        blas_before = fr_blas_calls
        _stop_begin(stop)
        with nogil:
            fr_pool_run(task, L, nth)
        _stop_end(stop)
        _log_call(nth, held, blas_before, False)
        if L.split:
            _note_split_waits(fr_slept_waits - slept, L.T)
    finally:
        fr_pool_end(held)
    return 0


cdef object _backward(floating kind, int mode, bint reset_after, bint reverse, x,
                      batch_sizes, h0, c0, w_ih, w_hh, w_hr, out, gates, cs, ms, dout,
                      dh_n, dc_n, dh_seq):
    cdef BwdLoop L
    memset(&L, 0, sizeof(L))
    try:
        grads = _bwd_prepare(kind, &L, mode, reset_after, reverse, x, batch_sizes, h0, c0,
                             w_ih, w_hh, w_hr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
        _bwd_run(kind, &L)
    finally:
        _bwd_release(&L)
    return grads


# ---------------------------------------------------------------------------------------
# The two directions of a bidirectional layer at once, one on each of two threads.
#
# A direction whose loop would run on one thread (a batch of one sequence below the units
# split, or a call too small for threads) leaves the other core idle; so does the units
# split at H = 128, whose two threads meet at every step and gain 1.5-1.8x over one
# (T=100, B=1: LSTM inference 0.44 -> 0.24 ms, training 1.14 -> 0.67). Each thread then
# runs one direction's whole loop on one thread instead, meeting the other once, at the
# end. From H = 256 the split gains about 2x (each core keeps half of W_hh in its L2:
# LSTM inference 1.88 -> 0.82 ms) and the directions run one after the other as before;
# so do batches that threads already share by sequences.

# The largest W_hh (G*H x Hout weights) whose units split a direction still pairs.
PAIR_SPLIT_MAX_WEIGHTS = 1 << 16

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


cdef bint _pair_worth(Py_ssize_t N, Py_ssize_t B, Py_ssize_t GH, Py_ssize_t K,
                      Py_ssize_t whh, bint split, bint merged, Py_ssize_t split_max):
    """Whether two loops of this size run faster at once, one a thread, than one after
    the other on the threads one call alone would take: where that call would run its
    loop on one thread, or split the units of a W_hh of at most split_max weights."""
    if B == 1:
        return not split or whh <= split_max
    return _want_threads(N, B, GH, K, merged) == 1


cdef int _begin_pair(Py_ssize_t work, int *held):
    """fr_pool_begin for two directions of `work` multiply-adds each: like _begin's batch
    of one sequence, a pair below B1_WARM_WORK takes the second thread only while the
    workers are awake (they meet once, but waking one costs tens of microseconds)."""
    return fr_pool_begin(2, _warm_spins(2 * work), held)


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
        return _forward_both(<float> 0, mode, reset_after, training, x, batch_sizes, fwd, rev)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _forward_both(<double> 0, mode, reset_after, training, x, batch_sizes, fwd,
                             rev)
    raise TypeError("x must be a float32 or float64 array")


cdef object _forward_both(floating kind, int mode, bint reset_after, bint training, x,
                          batch_sizes, tuple fwd, tuple rev):
    global _last_paired, _last_threads
    cdef FwdLoop A, R
    memset(&A, 0, sizeof(A))
    memset(&R, 0, sizeof(R))
    cdef int held = 0, nth = 1
    cdef long blas_before
    cdef fr_task_fn task = forward_task_f if floating is float else forward_task_d
    cdef fr_stop_word stop_word
    cdef volatile long *stop = &stop_word.word
    _last_paired = False
    wi, wh, bi, bh, wr, h0, c0 = fwd
    try:
        with _naming("forward direction"):
            ra = _fwd_prepare(kind, &A, mode, reset_after, False, training, x, batch_sizes,
                              wi, wh, bi, bh, wr, h0, c0)
        wi, wh, bi, bh, wr, h0, c0 = rev
        with _naming("reverse direction"):
            rr = _fwd_prepare(kind, &R, mode, reset_after, True, training, x, batch_sizes,
                              wi, wh, bi, bh, wr, h0, c0)
        if not (PAIR_DIRECTIONS and _pair_worth(A.N, A.B, A.GH, A.inputs + A.Hout,
                                                A.GH * A.Hout, A.split,
                                                training or A.split or A.upfront,
                                                PAIR_SPLIT_MAX_WEIGHTS)):
            _fwd_run(kind, &A)
            _fwd_release(&A)  # its workspace, for the second
            _fwd_run(kind, &R)
            return _fwd_result(training, ra), _fwd_result(training, rr)
        nth = _begin_pair(A.N * A.GH * (A.inputs + A.Hout), &held)
        # each direction alone on its thread: no units split; one sequence then projects
        # its inputs up front in inference, as on one thread
        A.split = R.split = False
        A.upfront = R.upfront = (not training and A.B == 1
                                 and A.N * A.SH * sizeof(floating) <= UPFRONT_MAX_BYTES)
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
        return _backward_both(<float> 0, mode, reset_after, x, batch_sizes, fwd, rev)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _backward_both(<double> 0, mode, reset_after, x, batch_sizes, fwd, rev)
    raise TypeError("x must be a float32 or float64 array")


cdef object _backward_both(floating kind, int mode, bint reset_after, x, batch_sizes,
                           tuple fwd, tuple rev):
    global _last_paired, _last_threads
    cdef BwdLoop A, R
    memset(&A, 0, sizeof(A))
    memset(&R, 0, sizeof(R))
    cdef int held = 0, nth = 1
    cdef long blas_before
    cdef fr_task_fn task = backward_task_f if floating is float else backward_task_d
    cdef fr_stop_word stop_word
    cdef volatile long *stop = &stop_word.word
    _last_paired = False
    h0, c0, wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq = fwd
    try:
        with _naming("forward direction"):
            ga = _bwd_prepare(kind, &A, mode, reset_after, False, x, batch_sizes, h0, c0,
                              wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq)
        h0, c0, wi, wh, wr, out, gates, cs, ms, dout, dh_n, dc_n, dh_seq = rev
        with _naming("reverse direction"):
            gr = _bwd_prepare(kind, &R, mode, reset_after, True, x, batch_sizes, h0, c0,
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
            and not (L.mode == GRU and not L.reset_after))


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
        return _forward_stack(<float> 0, mode, reset_after, x, batch_sizes, layers)
    if cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT64:
        return _forward_stack(<double> 0, mode, reset_after, x, batch_sizes, layers)
    raise TypeError("x must be a float32 or float64 array")


cdef object _forward_stack(floating kind, int mode, bint reset_after, x, batch_sizes,
                           list layers):
    global _last_paired, _last_threads
    cdef Py_ssize_t n = len(layers), k, work = 0, chunk_steps
    cdef FwdLoop *Ls = <FwdLoop *> calloc(n, sizeof(FwdLoop))
    cdef int *counters = <int *> calloc(n + 1, sizeof(int))  # progress per layer, sleepers
    cdef FwdStack stack
    cdef int held = 0, nth = 1
    cdef long blas_before
    cdef bint worth = True, calls_blas = False
    cdef fr_stop_word stop_word
    cdef volatile long *stop = &stop_word.word
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
                prepared = _fwd_prepare(kind, &Ls[k], mode, reset_after, False, False, inp,
                                        batch_sizes, wi, wh, bi, bh, wr, h0, c0)
            results.append(prepared[:3])
            inp = prepared[0]
            worth = worth and _pair_worth(Ls[k].N, Ls[k].B, Ls[k].GH,
                                          Ls[k].inputs + Ls[k].Hout, Ls[k].GH * Ls[k].Hout,
                                          Ls[k].split, Ls[k].split or Ls[k].upfront, 0)
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
                             and Ls[k].N * Ls[k].SH * sizeof(floating) <= UPFRONT_MAX_BYTES
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
        blas_before = fr_blas_calls
        _stop_begin(stop)
        with nogil:
            fr_pool_run(task, &stack, min(nth, 2))
        _stop_end(stop)
        _log_call(min(nth, 2), held, blas_before, True)
        _last_paired = nth >= 2
        _last_threads = min(nth, 2)
    finally:
        fr_pool_end(held)
        for k in range(n):
            _fwd_release(&Ls[k])
        free(Ls)
        free(counters)
    return results
