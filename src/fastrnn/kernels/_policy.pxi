# The decisions of a call, before any loop runs: how many threads (THREAD_CALL_WORK,
# _want_threads, _begin), whether BLAS is held at one thread (_hold_blas), which products
# run on the packed kernels (BLAS_STEP_WORK, use_packed, _one_thread_packed), how the
# sequences are shared (_split_sequences), whether threads split one sequence's units
# (_split_units, and its pause after calls that kept waiting), whether a call of few rows
# multiplies its weights in place (_few_rows, _begin_few), whether two loops run at once
# (_pair_worth), and what the latest call chose (last_call_*, for tests).
#
# Included by _kernels.pyx. Reads sizes and the kernel table, sets the module's
# bookkeeping of the latest call; touches no array and runs no loop. The Python-level
# constants here are module attributes that tests set (fastrnn._kernels.BLAS_STEP_WORK).

# ---------------------------------------------------------------------------------------
# Threads

# Below this many multiply-adds in a call (N*G*H*(I+Hout)) it runs on one thread: waking
# a sleeping worker and meeting it at the end cost tens of microseconds.
THREAD_CALL_WORK = 1 << 21

# A batch of one sequence takes threads only while the pool's workers are awake (a call
# ended less than about 0.6 ms ago, or one on one thread woke them), else it runs on one
# thread and wakes them for the next call. Its threads meet often (the units split: at
# every step), and a worker, or its virtual CPU, that has to wake up first costs more
# than the call gains (README, performance notes); back to back, two threads stay the
# faster. Calls of B1_WARM_WORK multiply-adds or more (T=100: LSTM and GRU from H=256,
# RNN from 512) take threads either way: there a call on one thread that woke the
# workers ran slower than on two, the worker it woke spinning on its CPU while the call
# ran (README, performance notes).
B1_WARM_ONLY = True
B1_WARM_WORK = 1 << 24


def threads_available():
    """Whether calls can run on several threads: scipy's BLAS is an OpenBLAS on its own
    threads (pthreads, or Windows threads), whose count can be held."""
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
    (forward_units), "one sequence" (fr_seq1_forward, inputs projected before the loop),
    "one sequence, projection inside" (fr_seq1_forward projecting each step's inputs) or
    "few rows" (forward_few: the weights multiplied in place, none packed)."""
    return _last_path


_last_bwd_path = "batch"


def last_backward_path():
    """The loop the latest backward call ran: "batch" (backward_loop), "units split"
    (backward_units) or "few rows" (backward_few: W_hh and W_ih multiplied in place)."""
    return _last_bwd_path


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


cdef inline void _log_call(int nth, int held, Py_ssize_t blas_calls_before, bint one_each):
    if _call_log is not None:
        _call_log.append((nth, bool(held & FR_HELD_BLAS), fr_blas_calls - blas_calls_before,
                          one_each))


cdef int _run_task(fr_task_fn task, void *ctx, int nth, int held, volatile Py_ssize_t *stop,
                   bint one_each) except -1:
    """Run a planned call's task on nth threads of the pool (GIL released), stoppable by
    Ctrl-C (_interrupt.pxi), and log it (log_calls)."""
    cdef Py_ssize_t blas_before = fr_blas_calls
    _stop_begin(stop)
    with nogil:
        fr_pool_run(task, ctx, nth)
    _stop_end(stop)
    _log_call(nth, held, blas_before, one_each)
    return 0


cdef Py_ssize_t _warm_spins(Py_ssize_t work):
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


# From this many multiply-adds per step (B * G*H * Hout) on, BLAS takes every product of a
# call (steps, projections, merged GEMMs) in place of the packed kernels; None: the
# capability's own (CAPABILITY_BLAS_STEP_WORK, never for AVX2 and AVX-512). Tests set it
# to force one path.
BLAS_STEP_WORK = None

# On AVX2 and AVX-512 the packed kernels are the faster at every size measured (they skip
# BLAS's packing of the weight at every step). The portable kernels (4 floats a vector)
# lose to OpenBLAS's SSE kernels on large batches (README, performance notes).
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
# Calls of few rows: the weights multiplied in place (fr_few, forward_few)

# A float32 forward of few rows (B*T: one step of a batch of one to a few, or a few
# steps of one sequence), every sequence T steps long, multiplies W_ih and W_hh in place
# on the few-rows kernel: the packed kernel packs each weight first, one more read and a
# write of it, for a product or two (README, performance notes). How few: up to the
# rows of the first entry of FEW_ROWS_BY_WEIGHTS whose weights (W_ih and W_hh together)
# the layer has. The packed kernel won from 8 rows at H = 32 and 64 (LSTM, GRU; weights
# in L1 and L2 make packing cheap), from 12-16 at H = 128; the few-rows kernel won up to
# 16 rows at H = 256 and 512 (README, performance notes). FEW_ROWS_MAX, when not None,
# is the limit whatever the weights (tests set it; 0: never).
FEW_ROWS_BY_WEIGHTS = ((1 << 18, 16), (1 << 16, 8), (0, 4))
FEW_ROWS_MAX = None
# the most rows of FEW_ROWS_BY_WEIGHTS, taken at import: calls of more are not few, found
# so without reading the table (a loop in Python: a few tenths of a microsecond a call,
# a few percent of a call at T=100, B=1, RNN H=32)
cdef Py_ssize_t _few_rows_top = max([rows for _, rows in FEW_ROWS_BY_WEIGHTS])


def few_rows_max(Py_ssize_t weights):
    """The most rows a forward with this many weights in W_ih and W_hh runs on the
    few-rows kernel."""
    if FEW_ROWS_MAX is not None:
        return FEW_ROWS_MAX
    for least, rows in FEW_ROWS_BY_WEIGHTS:
        if weights >= least:
            return rows
    return 0

# A backward of few rows runs on the few-rows kernels from this many weights (W_ih and
# W_hh): at H = 128 it was 5-15% slower than on the packed kernels (GRU B=1, LSTM B=4),
# level at H = 256, and twice as fast for the LSTM at H = 512 (README, performance notes).
FEW_BACKWARD_WEIGHTS = 1 << 18

# ... and threads split its units (each streaming its share of the weights) from this
# many weights in W_ih and W_hh together; a call below it runs on one thread.
FEW_THREAD_WEIGHTS = 1 << 17
# ... and a threaded call of few rows counts as a bad one for the units split's pause
# (_note_split_waits) when more of its waits than this slept (tests set it)
FEW_SLEPT_ALLOWED = 0


cdef bint _few_rows(bint packed, Cell cell, Py_ssize_t N, Py_ssize_t T, Py_ssize_t B,
                    Py_ssize_t P, Py_ssize_t weights) except -1:
    """Whether a forward of N rows runs on the few-rows kernel (forward_few): float32 on
    the kernels (packed: use_packed), no projection, not the reset-before GRU, all
    sequences of T steps, few enough rows for its weights."""
    if not (packed and P == 0 and cell != GRU_BEFORE and N == T * B and N > 0):
        return False
    if N > _few_rows_top and FEW_ROWS_MAX is None:
        return False  # without a look at the table: every call of more rows asks
    return N <= few_rows_max(weights)


cdef int _begin_few(Py_ssize_t weights, Py_ssize_t rows, int *held):
    """fr_pool_begin for a forward of few rows with `weights` floats in W_ih and W_hh:
    threads from FEW_THREAD_WEIGHTS, but only while the workers are awake; else the call
    runs on one thread and wakes them to spin for about twice its time (_few_spins: the
    weights read at about 25 GB/s, a pause loop 30 ns; as B1_WARM_ONLY says), so that the
    next call finds them awake and takes two. A spin reckoned from multiply-adds
    (_warm_spins) ended before such a call did, and calls at H = 512 alternated between
    one thread and two. Its threads meet at every
    step, as the units split's: they take one thread while that is paused, and a call
    of few rows in which a wait slept at all counts as a bad one (_note_split_waits:
    such a call is short, and its one or two waits only sleep when a thread lost its
    core; under a one-core hog a call at H = 512 then took twice as long as on one
    thread: README, performance notes)."""
    if weights < FEW_THREAD_WEIGHTS or split_paused():
        return fr_pool_begin(1, 0, held)
    return fr_pool_begin(FR_MAX_THREADS, _few_spins(weights, rows), held)


cdef Py_ssize_t _few_spins(Py_ssize_t weights, Py_ssize_t rows):
    """The warm_spins of fr_pool_begin for calls of few rows that stream `weights` floats
    on one thread (as _begin_few), or 0 where B1_WARM_ONLY is off: up to 4 rows a call
    is bound by memory, beyond that by its multiply-adds (16 rows at H = 512 took about
    5 times as long as 1)."""
    return min(1 << 21, max(1, weights * max(4, rows) // 400)) if B1_WARM_ONLY else 0


# ---------------------------------------------------------------------------------------
# One sequence: its units split between threads, or its inputs projected up front or
# inside the loop

# From this many weights in W_hh (64 KB of float32: every cell from H = 128), threads
# split the units of a batch of one sequence, meeting at every step; H a multiple of two
# panels of the kernels (_split_units), so that two threads get as many panels each (on
# AVX-512, at H = 192, one 64-unit panel and the other two, inference ran slower than on
# one thread: README, performance notes).
SPLIT_UNITS_WORK = 1 << 14
# ... and from this H: on AVX2, whose 16-unit panels let H = 64 split, the split at H = 64
# ran slower than one thread (README, performance notes).
SPLIT_UNITS_MIN_H = 128

# A batch of one sequence that does not split its units, in inference, projects the
# inputs of all its steps at once (up to this much room for them), on the threads when
# it is worth them, then one thread runs the steps: a projection on one thread is up to
# a good part of such a call, and BLAS's threads are not woken (fr_pool_begin); the
# vanilla RNN projects straight into its output (README, performance notes).
UPFRONT_MAX_BYTES = 1 << 23

# A batch of one sequence on one thread with at most this many weights in W_ih (4 KB of
# float32: the vanilla RNN at I = H = 32) projects its inputs inside the step loop
# (fr_seq1_forward) (README, performance notes). With more, the products of both
# weights outlast the chain of a step, on one FMA unit: LSTM and GRU at H=32 and the RNN
# at H=64 ran slower than with the projection before the loop (README, performance notes).
SEQ1_FUSE_WEIGHTS = None  # None: the capability's own (tests set it)
# On an Intel Xeon (AVX-512) only the AVX-512 kernels gained from it; the AVX2 and
# portable ones ran slower (their products of both weights outlast the chain of a step)
# (README, performance notes).
CAPABILITY_SEQ1_FUSE_WEIGHTS = {"avx512": 1 << 10}

# The units split meets at a barrier every step, so a thread that loses its core to
# another process stalls the others at each step: under a one-core CPU hog, calls that
# split ran slower than on one thread (README, performance notes). When the split calls
# of the last SPLIT_BAD_SECONDS (at least 3 calls) all had
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


def _split_slept_allowed(Py_ssize_t steps):
    """The waits that may sleep in a units split call of this many steps."""
    return max(SPLIT_SLEPT_MIN, SPLIT_SLEPT_PER_STEP * steps)


def _note_split_waits(Py_ssize_t slept, allowed):
    """Count a call whose threads split the units and slept `slept` waits in its steps:
    more than `allowed` makes it a bad call."""
    global _split_paused_until, _split_bad_since, _split_bad_calls
    if slept <= allowed:
        _split_bad_calls = 0
        return
    now = time.monotonic()
    if _split_bad_calls == 0:
        _split_bad_since = now
    _split_bad_calls += 1
    if _split_bad_calls >= 3 and now - _split_bad_since >= SPLIT_BAD_SECONDS:
        _split_bad_calls = 0
        _split_paused_until = now + SPLIT_PAUSE_SECONDS


cdef bint _split_units(Py_ssize_t B, Py_ssize_t npack, Py_ssize_t P, Py_ssize_t H, Cell cell,
                       Py_ssize_t whh) except -1:
    """Whether threads split the units of this call (forward_units, backward_units): one
    sequence whose step streams a large W_hh (whh weights) on the packed kernel, cells the
    split covers, as many whole panels for each of two threads, and no pause."""
    return (B == 1 and npack != 0 and P == 0 and H % (2 * fr_panel_width()) == 0
            and H >= SPLIT_UNITS_MIN_H
            and cell != GRU_BEFORE
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


# ---------------------------------------------------------------------------------------
# The two directions of a bidirectional layer at once, one on each of two threads.
#
# A direction whose loop would run on one thread (a batch of one sequence below the units
# split, or a call too small for threads) leaves the other core idle; so does the units
# split at H = 128, whose two threads meet at every step and gain less over one than
# from H = 256 (README, performance notes). Each thread then runs one direction's whole loop on one
# thread instead, meeting the other once, at the end. From H = 256 the split gains more
# (each core keeps half of W_hh in its L2: README, performance notes) and the directions
# run one after the other as before;
# so do batches that threads already share by sequences.

# The largest W_hh (G*H x Hout weights) whose units split a direction still pairs.
PAIR_SPLIT_MAX_WEIGHTS = 1 << 16


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
