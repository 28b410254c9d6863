/* The time loop of one sequence (B = 1) in float32 on AVX-512, step and cell in one C
 * loop with the cell math in vector registers.
 *
 * At B = 1 and a small H a step is a short chain of dependent work (W_hh h, then the
 * gates, then the next W_hh h): at T=100, H=32 the general loop spent about as much of
 * each step's ~100 ns on its bookkeeping (the batch's row offsets, pointers, a copy of h,
 * the cell called through the run-time dispatch of target_clones) as on the product.
 * Here h_{t-1} is read from the previous output row, the cell is written with
 * intrinsics, and nothing else is in the loop.
 *
 * The inputs are projected before the loop (a: row t = W_ih x_t, SH floats a row), or for
 * a small W_ih inside it (fr_seq1_forward); in training a holds the saved activations of
 * every row on return, laid out as the other loops save them (_kernels.pyx), so the
 * backward takes either. The vanilla RNN's rows are its output rows (a == out). Modes
 * as _kernels.pyx: 0 tanh RNN, 1 relu RNN, 2 LSTM, 3 GRU with the reset gate after W_hn
 * (the reset-before GRU and LSTM projections take the general loop). The cells are
 * _cellmath.h's float math in intrinsics; the other float32 loops on AVX-512 call them
 * too (fr_*_row_v).
 */
#ifndef FASTRNN_SEQ1_H
#define FASTRNN_SEQ1_H

#include <stdint.h>
#include <string.h>

#include "_gemm.h"
#include "_pool.h"

#if FR_HAVE_KERNEL

#define FR_AVX512 __attribute__((target("avx512f"), always_inline)) static inline

/* fr_expf on 16 lanes: the same reduction and polynomial; 2^n applied with scalef. The
 * constant is the first operand of min/max so that NaN (the second) passes through. */
FR_AVX512 __m512 fr_vexp(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* fr_tanhf: the odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) with x's sign
 * above (NaN takes the second branch and stays NaN). */
FR_AVX512 __m512 fr_vtanh(__m512 x)
{
    __m512 ax = _mm512_abs_ps(x);
    __m512 z = _mm512_mul_ps(x, x);
    __m512 s = _mm512_set1_ps(-5.70498872745e-3f);
    s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(2.06390887954e-2f));
    s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(-5.37397155531e-2f));
    s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(1.33314422036e-1f));
    s = _mm512_fmadd_ps(s, z, _mm512_set1_ps(-3.33332819422e-1f));
    s = _mm512_fmadd_ps(_mm512_mul_ps(s, z), x, x);
    __m512 e = fr_vexp(_mm512_add_ps(ax, ax));
    __m512 big = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                               _mm512_div_ps(_mm512_set1_ps(2.0f),
                                             _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
    big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), sign));
    __mmask16 small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(small, big, s);
}

FR_AVX512 __m512 fr_vsigmoid(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, fr_vexp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

/* lanes [j, j + 16) of a row, masked past the last unit */
#define FR_LD(p, j, m) _mm512_maskz_loadu_ps(m, (p) + (j))
#define FR_ST(p, j, m, v) _mm512_mask_storeu_ps((p) + (j), m, v)

/* The cells of one row, units [0, n) of gate blocks H apart, as _cellmath_rows.h's
 * (same math, same saved layout): ain holds the input projection (no bias), gh the
 * recurrent one; the activations go to ar when it is not NULL (training; it may be ain),
 * the new state to o (and c, and cs when not NULL, for LSTM). */
FR_AVX512 void fr_vrnn_row(int relu, long n, const float *ain, const float *gh,
                           const float *bias, float *o)
{
    for (long j = 0; j < n; j += 16) {
        __mmask16 m = fr_mask(n - j);
        __m512 u = _mm512_add_ps(_mm512_add_ps(FR_LD(ain, j, m), FR_LD(gh, j, m)),
                                 FR_LD(bias, j, m));
        if (relu) {
            /* u < 0 is false for NaN, which stays NaN as in torch */
            __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
            u = _mm512_mask_blend_ps(neg, u, _mm512_setzero_ps());
        } else {
            u = fr_vtanh(u);
        }
        FR_ST(o, j, m, u);
    }
}

/* the pre-activation of gate block k: projection + recurrent + bias */
#define FR_PRE(k) _mm512_add_ps(_mm512_add_ps(FR_LD(ain, (k) * H + j, m), \
                                              FR_LD(gh, (k) * H + j, m)), \
                                FR_LD(bias, (k) * H + j, m))

FR_AVX512 void fr_vlstm_row(long H, long n, const float *ain, const float *gh,
                            const float *bias, float *ar, float *c, float *cs, float *o)
{
    for (long j = 0; j < n; j += 16) {
        __mmask16 m = fr_mask(n - j);
        __m512 i = fr_vsigmoid(FR_PRE(0)), f = fr_vsigmoid(FR_PRE(1));
        __m512 g = fr_vtanh(FR_PRE(2)), og = fr_vsigmoid(FR_PRE(3));
        __m512 cn = _mm512_fmadd_ps(f, FR_LD(c, j, m), _mm512_mul_ps(i, g));
        if (ar) {
            FR_ST(ar, j, m, i);
            FR_ST(ar, H + j, m, f);
            FR_ST(ar, 2 * H + j, m, g);
            FR_ST(ar, 3 * H + j, m, og);
        }
        FR_ST(c, j, m, cn);
        if (cs)
            FR_ST(cs, j, m, cn);
        FR_ST(o, j, m, _mm512_mul_ps(og, fr_vtanh(cn)));
    }
}

/* GRU with the reset gate after W_hn: gh's n block is W_hn h (b_hn in bhn), bias's n
 * block b_in only; hp is h_{t-1}. */
FR_AVX512 void fr_vgru_row(long H, long n, const float *ain, const float *gh,
                           const float *bias, const float *bhn, const float *hp, float *ar,
                           float *o)
{
    for (long j = 0; j < n; j += 16) {
        __mmask16 m = fr_mask(n - j);
        __m512 r = fr_vsigmoid(FR_PRE(0)), z = fr_vsigmoid(FR_PRE(1));
        __m512 hn = _mm512_add_ps(FR_LD(gh, 2 * H + j, m), FR_LD(bhn, j, m));
        __m512 nn = fr_vtanh(_mm512_fmadd_ps(
            r, hn, _mm512_add_ps(FR_LD(ain, 2 * H + j, m), FR_LD(bias, 2 * H + j, m))));
        if (ar) {
            FR_ST(ar, j, m, r);
            FR_ST(ar, H + j, m, z);
            FR_ST(ar, 2 * H + j, m, nn);
            FR_ST(ar, 3 * H + j, m, hn);
        }
        /* (1 - z) n + z h_prev */
        FR_ST(o, j, m, _mm512_fmadd_ps(z, FR_LD(hp, j, m), _mm512_fnmadd_ps(z, nn, nn)));
    }
}

#undef FR_PRE

/* The same cells for the other loops of _kernels.pyx (float32 on the packed kernel, so
 * that every loop computes the same bits): 15% faster than GCC's vectorisation of
 * _cellmath_rows.h, and in inference (ar NULL) they save no activations, whose stores
 * are about a third of the cell's memory traffic. */
__attribute__((target("avx512f"))) static void
fr_lstm_row_v(long H, long n, const float *a, const float *gh, const float *bias, float *ar,
              float *c, float *cs, float *o)
{
    fr_vlstm_row(H, n, a, gh, bias, ar, c, cs, o);
}

__attribute__((target("avx512f"))) static void
fr_gru_row_v(long H, long n, const float *a, const float *gh, const float *bias,
             const float *bhn, const float *hp, float *ar, float *o)
{
    fr_vgru_row(H, n, a, gh, bias, bhn, hp, ar, o);
}

__attribute__((target("avx512f"))) static void
fr_rnn_row_v(int relu, long n, const float *a, const float *gh, const float *bias, float *o)
{
    fr_vrnn_row(relu, n, a, gh, bias, o);
}

/* Steps s = 0 .. T-1 over t = s (t = T-1-s if reverse). pk: W_hh^T packed (G*H columns,
 * k = H); gh: G*H floats of scratch; bias: b_ih + b_hh (the GRU's n block: b_in only,
 * b_hn in bhn); h (and c for LSTM) hold the initial state on entry and the final one on
 * exit; out: T x H; cs (LSTM training, else NULL): T x H, the cell state of each row.
 *
 * The input projection of row t is read from a + t * SH, where the activations are then
 * saved; or, if pk_ih is given (W_ih^T packed, k = nin, small enough to stay in the L1
 * cache with W_hh), computed here from x (T x nin), one step ahead into gx (2 * SH floats:
 * the row of this step and of the next), where it costs no BLAS call and its products
 * overlap the cell of the step before, which they do not depend on; the activations then
 * go to a + t * SH if a is given (training), else nowhere.
 *
 * A layer of a stack whose layers run at once (forward_stack, forward only): if progress
 * is given, the steps done are stored there every `chunk` steps (fr_set_and_wake) for the
 * layer above (not at every step: the line would travel between the cores at each one,
 * doubling the 0.1 us step of a small RNN); if wait_on is given, x is the output of the
 * layer below, which another thread is computing: every `chunk` steps the loop waits
 * until it has done the next chunk's steps, then projects their rows with pk_ih into a. */
__attribute__((target("avx512f"))) static void
fr_seq1_forward(int mode, long T, long H, int reverse, const float *pk, float *a, long SH,
                const float *bias, const float *bhn, float *h, float *c, float *out,
                float *cs, float *gh, const float *x, long nin, const float *pk_ih, float *gx,
                int *progress, int *wait_on, int *sleepers, long chunk)
{
    long G = mode == 2 ? 4 : mode == 3 ? 3 : 1, GH = G * H;
    long panels = fr_panels(GH);
    const float *hp = h; /* h_{t-1}: the previous output row, h0 at first */
    float *gnext = gx;
    int fuse = pk_ih && !wait_on;
    if (fuse && T > 0)
        fr_gemm_panels_rows(1, GH, nin, x + (reverse ? T - 1 : 0) * nin, nin, pk_ih, gnext,
                            GH, 0, 0, panels);
    for (long s = 0; s < T; s++) {
        long t = reverse ? T - 1 - s : s;
        float *o = out + t * H, *ar;
        const float *ain;
        if (wait_on && s % chunk == 0) {
            long end = s + chunk < T ? s + chunk : T;
            fr_wait_at_least(wait_on, (int)end, sleepers);
            fr_gemm_panels_rows(end - s, GH, nin, x + s * nin, nin, pk_ih, a + s * SH, SH, 0,
                                0, panels);
        }
        if (fuse) {
            ain = gnext;
            ar = a ? a + t * SH : NULL;
            gnext = gnext == gx ? gx + SH : gx;
        } else {
            ain = ar = a + t * SH;
        }
        fr_gemm_panels_rows(1, GH, H, hp, H, pk, gh, GH, 0, 0, panels);
        if (mode <= 1)
            fr_vrnn_row(mode == 1, H, ain, gh, bias, o);
        else if (mode == 2)
            fr_vlstm_row(H, H, ain, gh, bias, ar, c, cs ? cs + t * H : NULL, o);
        else
            fr_vgru_row(H, H, ain, gh, bias, bhn, hp, ar, o);
        if (fuse && s + 1 < T)
            fr_gemm_panels_rows(1, GH, nin, x + (reverse ? t - 1 : t + 1) * nin, nin, pk_ih,
                                gnext, GH, 0, 0, panels);
        hp = o;
        if (progress && (s + 1) % chunk == 0)
            fr_set_and_wake(progress, (int)(s + 1), sleepers);
    }
    if (T > 0)
        memcpy(h, hp, H * sizeof(float));
}

#undef FR_LD
#undef FR_ST
#undef FR_AVX512

#else

/* never called without the kernel */
static void fr_lstm_row_v(long H, long n, const float *a, const float *gh, const float *bias,
                          float *ar, float *c, float *cs, float *o)
{
    (void)H, (void)n, (void)a, (void)gh, (void)bias, (void)ar, (void)c, (void)cs, (void)o;
}

static void fr_gru_row_v(long H, long n, const float *a, const float *gh, const float *bias,
                         const float *bhn, const float *hp, float *ar, float *o)
{
    (void)H, (void)n, (void)a, (void)gh, (void)bias, (void)bhn, (void)hp, (void)ar, (void)o;
}

static void fr_rnn_row_v(int relu, long n, const float *a, const float *gh, const float *bias,
                         float *o)
{
    (void)relu, (void)n, (void)a, (void)gh, (void)bias, (void)o;
}

static void fr_seq1_forward(int mode, long T, long H, int reverse, const float *pk, float *a,
                            long SH, const float *bias, const float *bhn, float *h, float *c,
                            float *out, float *cs, float *gh, const float *x, long nin,
                            const float *pk_ih, float *gx, int *progress, int *wait_on,
                            int *sleepers, long chunk)
{
    (void)mode, (void)T, (void)H, (void)reverse, (void)pk, (void)a, (void)SH, (void)bias;
    (void)bhn, (void)h, (void)c, (void)out, (void)cs, (void)gh, (void)x, (void)nin;
    (void)pk_ih, (void)gx, (void)progress, (void)wait_on, (void)sleepers, (void)chunk;
    /* never called: no kernel */
}

#endif /* FR_HAVE_KERNEL */

#endif
