# Row-major BLAS over scipy's cython_blas, on the `floating` fused type.
#
# Fortran BLAS is column-major; a row-major matrix is its column-major transpose, so
# C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T by swapping the operands.
# All sizes are C ints because BLAS takes 32-bit ints; the Python layer rejects larger ones.
from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, sgemm

# BLAS calls made so far (all threads; for the tests that check which calls hold BLAS's
# thread count: _kernels.blas_calls_made)
cdef extern from *:
    """
    static ptrdiff_t fr_blas_calls = 0;
    static inline void fr_count_blas_call(void)
    {
        __atomic_add_fetch(&fr_blas_calls, 1, __ATOMIC_RELAXED);
    }
    """
    Py_ssize_t fr_blas_calls
    void fr_count_blas_call() noexcept nogil


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating *a, int lda,
                      const floating *b, int ldb,
                      floating beta, floating *c, int ldc) noexcept nogil:
    """C (m x n, row-major) = alpha * op(A) @ op(B) + beta * C.

    op(A) is m x k and op(B) is k x n; lda, ldb, ldc are row strides in elements.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    fr_count_blas_call()
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> b, &ldb, <float *> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> b, &ldb, <double *> a, &lda,
              &beta, c, &ldc)
