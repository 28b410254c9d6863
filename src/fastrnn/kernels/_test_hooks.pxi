# Test hooks: each kernel of the table in use alone, on NumPy arrays (C-contiguous rows,
# any row stride), so that tests check every ISA's GEMM and cells against NumPy and the
# scalar rows.
#
# Included by _kernels.pyx. Calls the table's kernels and the scalar rows directly; no
# loop, workspace or thread of the module is involved.

def _rows_contiguous(*arrays):
    for x in arrays:
        if x.strides[1] != 4:
            raise ValueError("each row must be contiguous")


def _kernel_gemm(const float[:, :] a, const float[:, :] w, bint trans, float[:, :] c,
                 bint accumulate=False, Py_ssize_t p0=0, Py_ssize_t p1=-1):
    """C[:, panels p0..p1) = A @ op(W) [+ C] on the packed kernel (op(W) = W^T if trans):
    W packed with fr_pack_panels, then fr_gemm_panels."""
    import numpy as np
    _rows_contiguous(a, w, c)
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1]
    cdef Py_ssize_t n = w.shape[0] if trans else w.shape[1]
    if (w.shape[1] if trans else w.shape[0]) != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("shapes do not match")
    cdef float[::1] packed = np.zeros(max(1, fr_packed_size(n, k)), np.float32)
    if p1 < 0:
        p1 = fr_panels(n)
    fr_pack_panels(trans, n, k, &w[0, 0], w.strides[0] // 4, &packed[0], 0, fr_panels(n))
    fr_gemm_panels(m, n, k, &a[0, 0], a.strides[0] // 4, &packed[0], &c[0, 0],
                   c.strides[0] // 4, accumulate, p0, p1)


def _kernel_few(const float[:, :] a, const float[:, :] w, float[:, :] c,
                bint accumulate=False, Py_ssize_t j0=0, Py_ssize_t j1=-1):
    """C[:, j0:j1) = A @ W^T [+ C] on the few-rows kernel (fr_few), W (n x k) read in
    place."""
    _rows_contiguous(a, w, c)
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = w.shape[0]
    if w.shape[1] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("shapes do not match")
    if j1 < 0:
        j1 = n
    if not 0 <= j0 <= j1 <= n:
        raise ValueError("bad column range")
    if m == 0 or n == 0 or k == 0:
        raise ValueError("empty operands")
    fr_few(m, k, &a[0, 0], a.strides[0] // 4, &w[0, 0], w.strides[0] // 4, &c[0, 0],
           c.strides[0] // 4, accumulate, j0, j1)


def _kernel_few_nn(const float[:, :] a, const float[:, :] w, float[:, :] c,
                   bint accumulate=False, Py_ssize_t j0=0, Py_ssize_t j1=-1):
    """C[:, j0:j1) = A @ W[:, j0:j1) [+ C] on the few-rows kernel for a weight not
    transposed (fr_few_nn), W (k x n) read in place."""
    _rows_contiguous(a, w, c)
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = w.shape[1]
    if w.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("shapes do not match")
    if j1 < 0:
        j1 = n
    if not 0 <= j0 <= j1 <= n:
        raise ValueError("bad column range")
    if m == 0 or n == 0 or k == 0:
        raise ValueError("empty operands")
    fr_few_nn(m, k, &a[0, 0], a.strides[0] // 4, &w[0, 0], w.strides[0] // 4, &c[0, 0],
              c.strides[0] // 4, accumulate, j0, j1)


def _kernel_gemm_tn(const float[:, :] a, const float[:, :] b, float[:, :] c,
                    bint accumulate=False):
    """C = A^T B [+ C], A stored K x m, B K x n, on fr_gemm_tn."""
    import numpy as np
    _rows_contiguous(a, b, c)
    cdef Py_ssize_t K = a.shape[0], m = a.shape[1], n = b.shape[1]
    if b.shape[0] != K or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("shapes do not match")
    cdef float[::1] bpack = np.zeros(fr_packed_size(n, FR_KC), np.float32)
    fr_gemm_tn(m, n, K, &a[0, 0], a.strides[0] // 4, &b[0, 0], b.strides[0] // 4, &c[0, 0],
               c.strides[0] // 4, accumulate, &bpack[0])


def _kernel_cell(int mode, bint vector, Py_ssize_t n, float[::1] a, const float[::1] gh,
                 const float[::1] bias, const float[::1] bhn, const float[::1] hp,
                 float[::1] c, float[::1] o, bint training=True):
    """Units [0, n) of one row of the cell of `mode` (0 tanh, 1 relu, 2 LSTM, 3 GRU with
    the reset gate after W_hn; H = len(hp)), in place as the loops call it: the table's
    vector cell (vector) or _cellmath_rows.h's row. a holds the projection on entry and
    the activations on exit (the vector cell in inference: untouched); o the new state."""
    cdef Py_ssize_t H = hp.shape[0]
    if mode <= MODE_RNN_RELU:
        if vector:
            fr_rnn_row_v(mode == MODE_RNN_RELU, n, &a[0], &gh[0], &bias[0], &o[0])
        else:
            rnn_row(mode == MODE_RNN_RELU, n, &a[0], &gh[0], &bias[0])
            o[:n] = a[:n]
    elif mode == MODE_LSTM:
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
