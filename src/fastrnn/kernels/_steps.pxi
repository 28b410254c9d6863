# Small helpers of the time loops: the barrier, column sums and row additions, and the
# time and row arithmetic of a packed batch (which timestep a scan step visits, which
# row holds a sequence's previous state).
#
# Included by _kernels.pyx. nogil, inline, on the pointers they are given.

cdef inline void sync(int tid, int nth) noexcept nogil:
    fr_barrier(tid, nth)


# ---------------------------------------------------------------------------------------
# Small helpers

cdef inline void colsum_add(int tid, int nth, Py_ssize_t rows, Py_ssize_t cols,
                            const floating *a, Py_ssize_t lda, floating *out) noexcept nogil:
    """out[j] += a[:rows, j].sum() for this thread's columns j of [0, cols)."""
    cdef Py_ssize_t lo, hi
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
