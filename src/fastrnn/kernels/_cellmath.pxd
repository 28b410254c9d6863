# Pointwise cell math (layer 1 of the design), on the `floating` fused type.
#
# The row functions live in C (_cellmath.h): restrict pointers and vectorisable float
# exp/tanh let GCC vectorise them, compiled for several ISAs and picked at run time.
# Here each gets a fused wrapper that calls the float or the double instance.
from cython cimport floating

cdef extern from "_cellmath.h" nogil:
    void rnn_row_f(int relu, Py_ssize_t H, float *v, const float *gh, const float *bias)
    void rnn_row_d(int relu, Py_ssize_t H, double *v, const double *gh, const double *bias)
    void lstm_row_f(Py_ssize_t H, Py_ssize_t n, float *a, const float *gh, const float *bias,
                    float *c, float *m)
    void lstm_row_d(Py_ssize_t H, Py_ssize_t n, double *a, const double *gh, const double *bias,
                    double *c, double *m)
    void gru_after_row_f(Py_ssize_t H, Py_ssize_t n, float *a, const float *gh, const float *bias,
                         const float *b_hn, const float *hprev, float *hnew)
    void gru_after_row_d(Py_ssize_t H, Py_ssize_t n, double *a, const double *gh,
                         const double *bias, const double *b_hn, const double *hprev, double *hnew)
    void gru_before_gates_f(Py_ssize_t H, float *a, const float *gh, const float *bias,
                            const float *hprev)
    void gru_before_gates_d(Py_ssize_t H, double *a, const double *gh, const double *bias,
                            const double *hprev)
    void gru_before_out_f(Py_ssize_t H, float *a, const float *ghn, const float *bias,
                          const float *hprev, float *hnew)
    void gru_before_out_d(Py_ssize_t H, double *a, const double *ghn, const double *bias,
                          const double *hprev, double *hnew)
    void rnn_drow_f(int relu, Py_ssize_t H, const float *h, const float *dh, float *dg)
    void rnn_drow_d(int relu, Py_ssize_t H, const double *h, const double *dh, double *dg)
    void lstm_drow_f(Py_ssize_t H, Py_ssize_t n, const float *a, const float *c, const float *cprev,
                     const float *dm, float *dc, float *dg)
    void lstm_drow_d(Py_ssize_t H, Py_ssize_t n, const double *a, const double *c,
                     const double *cprev, const double *dm, double *dc, double *dg)
    void gru_after_drow_f(Py_ssize_t H, Py_ssize_t n, const float *a, const float *hprev, float *dh,
                          float *dg)
    void gru_after_drow_d(Py_ssize_t H, Py_ssize_t n, const double *a, const double *hprev,
                          double *dh, double *dg)
    void gru_before_drow1_f(Py_ssize_t H, const float *a, const float *hprev, float *dh, float *dg)
    void gru_before_drow1_d(Py_ssize_t H, const double *a, const double *hprev, double *dh,
                            double *dg)
    void gru_before_drow2_f(Py_ssize_t H, const float *a, const float *hprev, const float *drh,
                            float *dh, float *dg)
    void gru_before_drow2_d(Py_ssize_t H, const double *a, const double *hprev,
                            const double *drh, double *dh, double *dg)


# Forward rows. `a` holds the row's input projection on entry and its saved activations
# on exit; `gh` is the row's recurrent projection h @ W_hh^T.

cdef inline void rnn_row(bint relu, Py_ssize_t H, floating *v, const floating *gh,
                         const floating *bias) noexcept nogil:
    """In place: v holds the input projection on entry and h_t on exit."""
    if floating is float:
        rnn_row_f(relu, H, v, gh, bias)
    else:
        rnn_row_d(relu, H, v, gh, bias)


cdef inline void lstm_row(Py_ssize_t H, Py_ssize_t n, floating *a, const floating *gh,
                          const floating *bias, floating *c, floating *m) noexcept nogil:
    """Units [0, n) of gate blocks H apart: c is updated in place; m = o * tanh(c) is h
    (or the input of the projection)."""
    if floating is float:
        lstm_row_f(H, n, a, gh, bias, c, m)
    else:
        lstm_row_d(H, n, a, gh, bias, c, m)


cdef inline void gru_after_row(Py_ssize_t H, Py_ssize_t n, floating *a, const floating *gh,
                               const floating *bias, const floating *b_hn,
                               const floating *hprev, floating *hnew) noexcept nogil:
    """Units [0, n) of gate blocks H apart."""
    if floating is float:
        gru_after_row_f(H, n, a, gh, bias, b_hn, hprev, hnew)
    else:
        gru_after_row_d(H, n, a, gh, bias, b_hn, hprev, hnew)


cdef inline void gru_before_gates(Py_ssize_t H, floating *a, const floating *gh,
                                  const floating *bias, const floating *hprev) noexcept nogil:
    if floating is float:
        gru_before_gates_f(H, a, gh, bias, hprev)
    else:
        gru_before_gates_d(H, a, gh, bias, hprev)


cdef inline void gru_before_out(Py_ssize_t H, floating *a, const floating *ghn,
                                const floating *bias, const floating *hprev,
                                floating *hnew) noexcept nogil:
    if floating is float:
        gru_before_out_f(H, a, ghn, bias, hprev, hnew)
    else:
        gru_before_out_d(H, a, ghn, bias, hprev, hnew)


# Backward rows: from dh, the total gradient at h_t, to dg, the gradients of the gate
# pre-activations.

cdef inline void rnn_drow(bint relu, Py_ssize_t H, const floating *h, const floating *dh,
                          floating *dg) noexcept nogil:
    if floating is float:
        rnn_drow_f(relu, H, h, dh, dg)
    else:
        rnn_drow_d(relu, H, h, dh, dg)


cdef inline void lstm_drow(Py_ssize_t H, Py_ssize_t n, const floating *a, const floating *c,
                           const floating *cprev, const floating *dm, floating *dc,
                           floating *dg) noexcept nogil:
    """Units [0, n) of gate blocks H apart."""
    if floating is float:
        lstm_drow_f(H, n, a, c, cprev, dm, dc, dg)
    else:
        lstm_drow_d(H, n, a, c, cprev, dm, dc, dg)


cdef inline void gru_after_drow(Py_ssize_t H, Py_ssize_t n, const floating *a,
                                const floating *hprev, floating *dh,
                                floating *dg) noexcept nogil:
    """Units [0, n) of gate blocks H apart."""
    if floating is float:
        gru_after_drow_f(H, n, a, hprev, dh, dg)
    else:
        gru_after_drow_d(H, n, a, hprev, dh, dg)


cdef inline void gru_before_drow1(Py_ssize_t H, const floating *a, const floating *hprev,
                                  floating *dh, floating *dg) noexcept nogil:
    if floating is float:
        gru_before_drow1_f(H, a, hprev, dh, dg)
    else:
        gru_before_drow1_d(H, a, hprev, dh, dg)


cdef inline void gru_before_drow2(Py_ssize_t H, const floating *a, const floating *hprev,
                                  const floating *drh, floating *dh,
                                  floating *dg) noexcept nogil:
    if floating is float:
        gru_before_drow2_f(H, a, hprev, drh, dh, dg)
    else:
        gru_before_drow2_d(H, a, hprev, drh, dh, dg)
