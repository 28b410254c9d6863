/* Pointwise cell math (layer 1 of the design): the gate activations of one row of a
 * batch and their derivatives, for float and double.
 *
 * The row functions are written once in _cellmath_rows.h; _ktable.h instantiates them
 * for both types and every ISA (_rows_inst.h) and points the names below at one ISA's.
 * float uses exp/tanh approximations that GCC vectorises (a libm call per element would
 * stop vectorisation and dominates small layers); double keeps libm, being the dtype for
 * checking rather than speed.
 */
#ifndef FASTRNN_CELLMATH_H
#define FASTRNN_CELLMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp for float: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial for e^r (coefficients of the Cephes expf), and 2^n built in the exponent
 * bits. Relative error about 2 ulp. Computed on x clamped to [-87, 88], so that 2^n
 * stays a normal number (e^-87 is 1.6e-38, which is 0 for every use here); beyond
 * ln(FLT_MAX) the result is +inf, as expf's, so that a sigmoid of -inf is exactly 0 and
 * Inf and NaN spread through the cells as through torch's. NaN stays NaN. */
#define FR_EXPF_OVERFLOW 88.72283935546875f /* above this, e^x is beyond FLT_MAX */
static inline float fr_expf(float x)
{
    float x0 = x;
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    /* round to nearest by adding 1.5 * 2^23: no floor(), which SSE2 cannot vectorise */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r
                + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x0 > FR_EXPF_OVERFLOW ? INFINITY : p * scale;
}

/* tanh for float: an odd polynomial near 0 (Cephes tanhf coefficients), where
 * 1 - 2/(e^2x + 1) would lose its relative precision, and that formula elsewhere. */
static inline float fr_tanhf(float x)
{
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = 1.0f - 2.0f / (fr_expf(2.0f * ax) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big;
}

static inline float fr_sigmoidf(float x) { return 1.0f / (1.0f + fr_expf(-x)); }
static inline double fr_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* A table of the row functions of one type: _cellmath_rows.h fills one per type and ISA,
 * _ktable.h picks the ISA. */
#define FR_ROWS_STRUCT(T, S)                                                                    \
    typedef struct {                                                                            \
        void (*rnn_row)(int relu, ptrdiff_t H, T *v, const T *gh, const T *bias);               \
        void (*lstm_row)(ptrdiff_t H, ptrdiff_t n, T *a, const T *gh, const T *bias, T *c,      \
                         T *m);                                                                 \
        void (*gru_after_row)(ptrdiff_t H, ptrdiff_t n, T *a, const T *gh, const T *bias,       \
                              const T *b_hn, const T *hprev, T *hnew);                          \
        void (*gru_before_gates)(ptrdiff_t H, T *a, const T *gh, const T *bias,                 \
                                 const T *hprev);                                               \
        void (*gru_before_out)(ptrdiff_t H, T *a, const T *ghn, const T *bias, const T *hprev,  \
                               T *hnew);                                                        \
        void (*rnn_drow)(int relu, ptrdiff_t H, const T *h, const T *dh, T *dg);                \
        void (*lstm_drow)(ptrdiff_t H, ptrdiff_t n, const T *a, const T *c, const T *cprev,     \
                          const T *dm, T *dc, T *dg);                                           \
        void (*gru_after_drow)(ptrdiff_t H, ptrdiff_t n, const T *a, const T *hprev, T *dh,     \
                               T *dg);                                                          \
        void (*gru_before_drow1)(ptrdiff_t H, const T *a, const T *hprev, T *dh, T *dg);        \
        void (*gru_before_drow2)(ptrdiff_t H, const T *a, const T *hprev, const T *drh, T *dh,  \
                                 T *dg);                                                        \
    } S;
FR_ROWS_STRUCT(float, fr_rows_f_t)
FR_ROWS_STRUCT(double, fr_rows_d_t)
#undef FR_ROWS_STRUCT

/* the tables in use (_ktable.h's fr_kt_use sets them) */
static const fr_rows_f_t *fr_rows_f_in_use;
static const fr_rows_d_t *fr_rows_d_in_use;

/* The names the Cython side calls (_cellmath.pxd): the rows of the ISA in use. */
#define FR_ROW_CALLS(S, T, tbl)                                                                 \
    static inline void rnn_row_##S(int relu, ptrdiff_t H, T *v, const T *gh, const T *bias)     \
    { tbl->rnn_row(relu, H, v, gh, bias); }                                                     \
    static inline void lstm_row_##S(ptrdiff_t H, ptrdiff_t n, T *a, const T *gh, const T *bias, \
                                    T *c, T *m)                                                 \
    { tbl->lstm_row(H, n, a, gh, bias, c, m); }                                                 \
    static inline void gru_after_row_##S(ptrdiff_t H, ptrdiff_t n, T *a, const T *gh,           \
                                         const T *bias, const T *b_hn, const T *hprev, T *hnew) \
    { tbl->gru_after_row(H, n, a, gh, bias, b_hn, hprev, hnew); }                               \
    static inline void gru_before_gates_##S(ptrdiff_t H, T *a, const T *gh, const T *bias,      \
                                            const T *hprev)                                     \
    { tbl->gru_before_gates(H, a, gh, bias, hprev); }                                           \
    static inline void gru_before_out_##S(ptrdiff_t H, T *a, const T *ghn, const T *bias,       \
                                          const T *hprev, T *hnew)                              \
    { tbl->gru_before_out(H, a, ghn, bias, hprev, hnew); }                                      \
    static inline void rnn_drow_##S(int relu, ptrdiff_t H, const T *h, const T *dh, T *dg)      \
    { tbl->rnn_drow(relu, H, h, dh, dg); }                                                      \
    static inline void lstm_drow_##S(ptrdiff_t H, ptrdiff_t n, const T *a, const T *c,          \
                                     const T *cprev, const T *dm, T *dc, T *dg)                 \
    { tbl->lstm_drow(H, n, a, c, cprev, dm, dc, dg); }                                          \
    static inline void gru_after_drow_##S(ptrdiff_t H, ptrdiff_t n, const T *a, const T *hprev, \
                                          T *dh, T *dg)                                         \
    { tbl->gru_after_drow(H, n, a, hprev, dh, dg); }                                            \
    static inline void gru_before_drow1_##S(ptrdiff_t H, const T *a, const T *hprev, T *dh,     \
                                            T *dg)                                              \
    { tbl->gru_before_drow1(H, a, hprev, dh, dg); }                                             \
    static inline void gru_before_drow2_##S(ptrdiff_t H, const T *a, const T *hprev,            \
                                            const T *drh, T *dh, T *dg)                         \
    { tbl->gru_before_drow2(H, a, hprev, drh, dh, dg); }
FR_ROW_CALLS(f, float, fr_rows_f_in_use)
FR_ROW_CALLS(d, double, fr_rows_d_in_use)
#undef FR_ROW_CALLS

#endif
