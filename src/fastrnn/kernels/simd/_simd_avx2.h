/* The vector operations of the kernels on AVX2 with FMA: 8 floats a vector. The
 * vocabulary is listed in _simd_avx512.h. */
#define FRV_SUFFIX avx2
#define FRV_N 8
#define FRV_NV 2 /* panel of 16 floats; a 6 x 2 block holds 12 accumulators, and with
                  * the 2 vectors of a panel row and the broadcast uses 15 of the 16 ymm
                  * registers */
#define FRV_MR 6
#define FRV_CHAINS 10
#define FRV_FEW_MR 2 /* 2 rows x 4 weight rows: 8 accumulators of the 16 ymm registers */
#define FRV_LDEXP_OVERFLOWS 0 /* 2^n built in the exponent bits: n <= 127 */
#define frv __m256

/* lanes [0, n) set */
static inline __m256i fr_mask_avx2(ptrdiff_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 fr_load_n_avx2(const float *p, ptrdiff_t n)
{
    if (n >= 8)
        return _mm256_loadu_ps(p);
    return n > 0 ? _mm256_maskload_ps(p, fr_mask_avx2(n)) : _mm256_setzero_ps();
}

/* a masked store is slow on some AMD cores (microcoded): only for the tail */
static inline void fr_store_n_avx2(float *p, ptrdiff_t n, __m256 v)
{
    if (n >= 8)
        _mm256_storeu_ps(p, v);
    else if (n > 0)
        _mm256_maskstore_ps(p, fr_mask_avx2(n), v);
}

#define frv_zero() _mm256_setzero_ps()
#define frv_set1(x) _mm256_set1_ps(x)
#define frv_load(p) _mm256_loadu_ps(p)
#define frv_store(p, v) _mm256_storeu_ps(p, v)
#define frv_load_n fr_load_n_avx2
static inline float fr_hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#define frv_hsum fr_hsum_avx2
#define frv_store_n fr_store_n_avx2
#define frv_add _mm256_add_ps
#define frv_sub _mm256_sub_ps
#define frv_mul _mm256_mul_ps
#define frv_div _mm256_div_ps
#define frv_fma _mm256_fmadd_ps
#define frv_fnma _mm256_fnmadd_ps
#define frv_min _mm256_min_ps
#define frv_max _mm256_max_ps
#define frv_abs(a) _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX)))
#define frv_copysign_or(a, b) \
    _mm256_or_ps(a, _mm256_and_ps(b, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN))))
#define frv_select_lt(a, b, x, y) _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ))
#define frv_round(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* n in [-126, 127]: 2^n built in the exponent bits (a NaN n gives a wrong scale, but p
 * is NaN then too) */
#define frv_ldexp(p, n)                                                                   \
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(                               \
                         _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)))

/* dst[i * ldd + j] = src[j * lds + i] for i, j < 8 */
static inline void fr_transpose_avx2(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd)
{
    __m256 r[8], t[8];
    for (int j = 0; j < 8; j++)
        r[j] = _mm256_loadu_ps(src + j * lds);
    for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 8; j += 4) {
        r[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
        r[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
        r[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
        r[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
    }
    /* r[c] (c < 4) holds column c of rows 0-3 in its low half, column c + 4 in its high
     * half; r[c + 4] the same of rows 4-7 */
    for (int c = 0; c < 4; c++) {
        t[c] = _mm256_permute2f128_ps(r[c], r[c + 4], 0x20);
        t[c + 4] = _mm256_permute2f128_ps(r[c], r[c + 4], 0x31);
    }
    for (int i = 0; i < 8; i++)
        _mm256_storeu_ps(dst + i * ldd, t[i]);
}
#define frv_transpose fr_transpose_avx2
