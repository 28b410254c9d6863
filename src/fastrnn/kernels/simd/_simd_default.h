/* The vector operations of the kernels in portable C: GCC/Clang vector extensions of 4
 * floats, which become SSE2 on x86-64 and NEON on aarch64 with the compiler's baseline
 * flags (on aarch64 a multiply-add is NEON's fused one). The vocabulary is listed in
 * _simd_avx512.h. */
#define FRV_SUFFIX default
#define FRV_N 4
#define FRV_NV 2 /* panel of 8 floats; a 6 x 2 block: 12 accumulators (16 registers on
                  * x86-64, 32 on aarch64) */
#define FRV_MR 6
#define FRV_CHAINS 8
#define FRV_FEW_MR 2 /* 2 rows x 4 weight rows: 8 accumulators */
#define FRV_LDEXP_OVERFLOWS 0 /* 2^n built in the exponent bits: n <= 127 */

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

typedef float fr_v4f __attribute__((vector_size(16)));
typedef int32_t fr_v4i __attribute__((vector_size(16)));
#define frv fr_v4f

static inline fr_v4f fr_set1_default(float x) { return (fr_v4f){x, x, x, x}; }
static inline fr_v4f fr_load_default(const float *p)
{
    fr_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void fr_store_default(float *p, fr_v4f v) { memcpy(p, &v, sizeof v); }
static inline fr_v4f fr_load_n_default(const float *p, ptrdiff_t n)
{
    if (n >= 4)
        return fr_load_default(p);
    fr_v4f v = {0, 0, 0, 0};
    for (ptrdiff_t i = 0; i < n; i++)
        v[i] = p[i];
    return v;
}
static inline void fr_store_n_default(float *p, ptrdiff_t n, fr_v4f v)
{
    if (n >= 4) {
        fr_store_default(p, v);
        return;
    }
    for (ptrdiff_t i = 0; i < n; i++)
        p[i] = v[i];
}
/* m ? x : y for a mask of all-ones or all-zeros lanes */
static inline fr_v4f fr_select_default(fr_v4i m, fr_v4f x, fr_v4f y)
{
    return (fr_v4f)(((fr_v4i)x & m) | ((fr_v4i)y & ~m));
}
static inline fr_v4f fr_min_default(fr_v4f a, fr_v4f b) { return fr_select_default(a < b, a, b); }
static inline fr_v4f fr_max_default(fr_v4f a, fr_v4f b) { return fr_select_default(a > b, a, b); }
/* round to nearest by adding 1.5 * 2^23 (|x| < 2^22 here) */
static inline fr_v4f fr_round_default(fr_v4f x)
{
    const fr_v4f magic = {12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f};
    return (x + magic) - magic;
}
/* n integral in [-126, 127] */
static inline fr_v4f fr_ldexp_default(fr_v4f p, fr_v4f n)
{
    fr_v4i bits = (__builtin_convertvector(n, fr_v4i) + 127) << 23;
    return p * (fr_v4f)bits;
}
static inline void fr_transpose_default(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd)
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            dst[i * ldd + j] = src[j * lds + i];
}

#define frv_zero() fr_set1_default(0.0f)
#define frv_set1 fr_set1_default
#define frv_load fr_load_default
#define frv_store fr_store_default
#define frv_load_n fr_load_n_default
#define frv_store_n fr_store_n_default
#define frv_add(a, b) ((a) + (b))
#define frv_sub(a, b) ((a) - (b))
#define frv_mul(a, b) ((a) * (b))
#define frv_div(a, b) ((a) / (b))
#if defined(__aarch64__) && defined(__ARM_NEON)
/* Fused in every copy: left to the compiler's contraction, a multiply-add was fused in
 * one inlined copy of a kernel and not in another (as its vectoriser went, with -fwrapv
 * say), and a row's result differed with the number of rows in its call. */
#define frv_fma(a, b, c) \
    ((fr_v4f)vfmaq_f32((float32x4_t)(c), (float32x4_t)(a), (float32x4_t)(b)))
#define frv_fnma(a, b, c) \
    ((fr_v4f)vfmsq_f32((float32x4_t)(c), (float32x4_t)(a), (float32x4_t)(b)))
#else
#define frv_fma(a, b, c) ((a) * (b) + (c))
#define frv_fnma(a, b, c) ((c) - (a) * (b))
#endif
#define frv_min fr_min_default
#define frv_max fr_max_default
#define frv_abs(a) ((fr_v4f)((fr_v4i)(a) & INT32_MAX))
#define frv_copysign_or(a, b) ((fr_v4f)((fr_v4i)(a) | ((fr_v4i)(b) & INT32_MIN)))
#define frv_select_lt(a, b, x, y) fr_select_default((a) < (b), x, y)
#define frv_round fr_round_default
#define frv_ldexp fr_ldexp_default
#define frv_transpose fr_transpose_default
#define frv_hsum(v) (((v)[0] + (v)[2]) + ((v)[1] + (v)[3]))
