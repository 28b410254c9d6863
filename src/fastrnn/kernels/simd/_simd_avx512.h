/* The vector operations of the kernels (_kern_body.h) on AVX-512F: 16 floats a vector.
 * Included by _ktable.h inside a target("avx512f") region, then _simd_end.h undefines
 * the names, so that the next ISA can define them again. The vocabulary, shared by
 * every _simd_*.h:
 *
 *   frv, FRV_N          vector type, lanes
 *   FRV_NV, FRV_MR      the GEMM's register blocking: a packed panel is FRV_NV vectors
 *                       wide, a block FRV_MR rows (FRV_MR * FRV_NV accumulators)
 *   FRV_CHAINS          independent FMA chains that cover the FMA latency (fma_peak)
 *   frv_zero, frv_set1, frv_load, frv_store
 *   frv_load_n, frv_store_n   the first n lanes (n may be >= FRV_N: all; <= 0: none;
 *                       the lanes loaded past n are 0)
 *   frv_add, frv_sub, frv_mul, frv_div, frv_fma (a b + c), frv_fnma (c - a b)
 *   frv_min, frv_max    a < b ? a : b and a > b ? a : b (so a NaN in b passes)
 *   frv_abs, frv_copysign_or (|a| with the sign bit of b or'ed in)
 *   frv_select_lt       a < b ? x : y, lane by lane
 *   frv_round           to the nearest integer; frv_ldexp(p, n) = p * 2^n (n integral)
 *   frv_transpose(src, lds, dst, ldd)  an FRV_N x FRV_N block transposed
 *   FRV_FEW_MR          rows of A a block of the few-rows kernel (fr_few) takes at once
 *   frv_hsum            the sum of the lanes, a float (a fixed order of additions)
 */
#define FRV_SUFFIX avx512
#define FRV_N 16
#define FRV_NV 4 /* panel of 64 floats: 4 zmm registers */
#define FRV_MR 6 /* 6 x 4 = 24 accumulators of the 32 zmm registers */
#define FRV_CHAINS 12
#define FRV_FEW_MR 4 /* 4 rows x 4 weight rows: 16 accumulators */
/* frv_ldexp(p, n) is +inf where p * 2^n is beyond FLT_MAX (n up to 128) */
#define FRV_LDEXP_OVERFLOWS 1
#define frv __m512

static inline __mmask16 fr_mask_avx512(ptrdiff_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF
                      : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

#define frv_zero() _mm512_setzero_ps()
#define frv_set1(x) _mm512_set1_ps(x)
#define frv_load(p) _mm512_loadu_ps(p)
#define frv_store(p, v) _mm512_storeu_ps(p, v)
/* a masked load or store costs no more than a plain one here */
#define frv_load_n(p, n) _mm512_maskz_loadu_ps(fr_mask_avx512(n), p)
#define frv_store_n(p, n, v) _mm512_mask_storeu_ps(p, fr_mask_avx512(n), v)
#define frv_add _mm512_add_ps
#define frv_sub _mm512_sub_ps
#define frv_mul _mm512_mul_ps
#define frv_div _mm512_div_ps
#define frv_fma _mm512_fmadd_ps
#define frv_fnma _mm512_fnmadd_ps
#define frv_min _mm512_min_ps
#define frv_max _mm512_max_ps
#define frv_abs _mm512_abs_ps
#define frv_copysign_or(a, b)                                                              \
    _mm512_castsi512_ps(_mm512_or_si512(                                                   \
        _mm512_castps_si512(a),                                                            \
        _mm512_and_si512(_mm512_castps_si512(b), _mm512_set1_epi32(INT32_MIN))))
#define frv_select_lt(a, b, x, y) \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x)
#define frv_round(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define frv_ldexp(p, n) _mm512_scalef_ps(p, n)
#define frv_hsum _mm512_reduce_add_ps

/* dst[i * ldd + j] = src[j * lds + i] for i, j < 16: pairs of rows interleaved, then
 * pairs of pairs, then 128-bit lanes */
static inline void fr_transpose_avx512(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd)
{
    __m512 r[16], t[16];
    for (int j = 0; j < 16; j++)
        r[j] = _mm512_loadu_ps(src + j * lds);
    for (int j = 0; j < 16; j += 2) {
        t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {
        r[j] = _mm512_shuffle_ps(t[j], t[j + 2], 0x44);
        r[j + 1] = _mm512_shuffle_ps(t[j], t[j + 2], 0xEE);
        r[j + 2] = _mm512_shuffle_ps(t[j + 1], t[j + 3], 0x44);
        r[j + 3] = _mm512_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0x88);
        t[j + 4] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0xDD);
        t[j + 8] = _mm512_shuffle_f32x4(r[j + 8], r[j + 12], 0x88);
        t[j + 12] = _mm512_shuffle_f32x4(r[j + 8], r[j + 12], 0xDD);
    }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
    }
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#define frv_transpose fr_transpose_avx512
