# The C side as the loops see it: the declarations of the kernel table (_ktable.h), the
# operating system's parts (_os.h), the stop word (_stop.h) and the thread pool
# (_pool.h), and the cell codes.
#
# Included by _kernels.pyx (one compilation unit with it: every .pxi here is text of that
# module). Declares only; runs nothing.

cdef extern from "_ktable.h" nogil:
    ctypedef struct fr_ktable:
        const char *name
        Py_ssize_t nr, mr, lanes, chain_flops
        float (*fma_chains)(Py_ssize_t iters) noexcept nogil
    fr_ktable fr_kt
    enum: FR_CAP_LEVELS
    const char *fr_cap_names[]
    int fr_cpu_best_level()
    int fr_kt_use(int level)
    Py_ssize_t fr_panel_width()
    size_t fr_packed_size(Py_ssize_t n, Py_ssize_t k)
    Py_ssize_t fr_panels(Py_ssize_t n)
    void fr_pack_panels(int trans, Py_ssize_t n, Py_ssize_t k, const float *w, Py_ssize_t ldw,
                        float *packed, Py_ssize_t p0, Py_ssize_t p1)
    void fr_gemm_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a, Py_ssize_t lda,
                        const float *packed, float *c, Py_ssize_t ldc, int accumulate,
                        Py_ssize_t p0, Py_ssize_t p1)
    void fr_gemm_tn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t K, const float *a, Py_ssize_t lda,
                    const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc, int accumulate,
                    float *bpack)
    enum: FR_KC
    void fr_few(Py_ssize_t m, Py_ssize_t k, const float *a, Py_ssize_t lda, const float *w,
                Py_ssize_t ldw, float *c, Py_ssize_t ldc, int accumulate, Py_ssize_t j0,
                Py_ssize_t j1)
    void fr_few_nn(Py_ssize_t m, Py_ssize_t k, const float *a, Py_ssize_t lda, const float *w,
                   Py_ssize_t ldw, float *c, Py_ssize_t ldc, int accumulate, Py_ssize_t j0,
                   Py_ssize_t j1)
    void fr_lstm_row_v(Py_ssize_t H, Py_ssize_t n, const float *a, const float *gh,
                       const float *bias, float *ar, float *c, float *cs, float *o)
    void fr_gru_row_v(Py_ssize_t H, Py_ssize_t n, const float *a, const float *gh,
                      const float *bias, const float *bhn, const float *hp, float *ar, float *o)
    void fr_rnn_row_v(int relu, Py_ssize_t n, const float *a, const float *gh, const float *bias,
                      float *o)
    void fr_seq1_forward(int mode, Py_ssize_t T, Py_ssize_t H, int reverse, const float *pk,
                         float *a, Py_ssize_t ld_gates, const float *bias, const float *bhn,
                         float *h, float *c, float *out, float *cs, float *gh, const float *x,
                         Py_ssize_t nin, const float *packed_ih, float *gx, int *progress,
                         int *wait_on, int *sleepers, Py_ssize_t chunk, volatile Py_ssize_t *stop)

cdef extern from "_os.h" nogil:
    void *fr_alloc_lines(size_t nbytes)
    void fr_free_lines(void *p)

cdef extern from "_stop.h" nogil:
    ctypedef struct fr_stop_word:
        Py_ssize_t word
    int (*fr_signal_poll)() noexcept nogil
    bint fr_stop_before(volatile Py_ssize_t *stop, Py_ssize_t i, Py_ssize_t stamp)
    bint fr_stop_poll(volatile Py_ssize_t *stop)
    void fr_poll_begin(int polls)

cdef extern from "_pool.h" nogil:
    ctypedef void (*fr_task_fn)(void *ctx, int tid, int nth) noexcept nogil
    enum: FR_MAX_THREADS
    enum: FR_MAX_THREADS_1  # FR_MAX_THREADS + 1
    int fr_threads_cap
    int (*fr_blas_get_threads)()
    int fr_blas_bind(void *blas_symbol)
    int fr_pool_begin(int want, Py_ssize_t warm_spins, int *held)
    void fr_pool_hold_blas(int *held)
    enum: FR_HELD_BLAS
    void fr_pool_end(int held)
    void fr_pool_run(fr_task_fn fn, void *ctx, int nth)
    void fr_barrier(int tid, int nth)
    void fr_set_and_wake(int *word, int value, int *sleepers)
    void fr_wait_at_least(int *word, int value, int *sleepers)
    void fr_split(Py_ssize_t n, Py_ssize_t align, int tid, int nth, Py_ssize_t *lo, Py_ssize_t *hi)
    void fr_pool_after_fork_child()
    Py_ssize_t fr_slept_waits


# The mode codes the entry points take, with reset_after for the GRU (MODES: their names,
# for the adapter); _cell() turns the pair into the one Cell code the loops use.
cdef enum:
    MODE_RNN_TANH = 0
    MODE_RNN_RELU = 1
    MODE_LSTM = 2
    MODE_GRU = 3

MODES = {"RNN_TANH": MODE_RNN_TANH, "RNN_RELU": MODE_RNN_RELU, "LSTM": MODE_LSTM,
         "GRU": MODE_GRU}

# The cell a loop runs. The first four are also fr_seq1_forward's codes (_kern_body.h),
# which never runs the reset-before GRU.
ctypedef enum Cell:
    RNN_TANH = 0
    RNN_RELU = 1
    LSTM = 2
    GRU_AFTER = 3   # reset gate after W_hn: n = tanh(x_n + r * (W_hn h + b_hn)) (PyTorch's)
    GRU_BEFORE = 4  # reset gate before W_hn: n = tanh(x_n + W_hn (r * h) + b_hn)


cdef Cell _cell(int mode, bint reset_after) except *:
    """The Cell of an entry point's (mode, reset_after); reset_after only counts for GRU."""
    if mode == MODE_RNN_TANH:
        return RNN_TANH
    if mode == MODE_RNN_RELU:
        return RNN_RELU
    if mode == MODE_LSTM:
        return LSTM
    if mode == MODE_GRU:
        return GRU_AFTER if reset_after else GRU_BEFORE
    raise ValueError(f"mode must be one of {sorted(MODES.values())} (MODES), got {mode}")


cdef inline Py_ssize_t _gates(Cell cell) noexcept nogil:
    """G: the gate blocks of H rows in W_ih and W_hh."""
    return 4 if cell == LSTM else 3 if (cell == GRU_AFTER or cell == GRU_BEFORE) else 1


cdef inline bint _is_gru(Cell cell) noexcept nogil:
    return cell == GRU_AFTER or cell == GRU_BEFORE
