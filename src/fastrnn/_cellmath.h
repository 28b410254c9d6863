/* Pointwise cell math (layer 1 of the design): the gate activations of one row of a
 * batch and their derivatives, for float and double.
 *
 * The row functions are written once in _cellmath_rows.h and instantiated here for both
 * types. float uses exp/tanh approximations that GCC vectorises (a libm call per element
 * would stop vectorisation and dominates small layers); double keeps libm, being the
 * dtype for checking rather than speed. Each row function is compiled for AVX-512, AVX2
 * and the x86-64 baseline, and the loader picks one at run time (GCC target_clones), so
 * wheels need no -march=native.
 */
#ifndef FASTRNN_CELLMATH_H
#define FASTRNN_CELLMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTRNN_NO_CLONES)
#define FR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FR_CLONES
#endif

/* exp for float: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial for e^r (coefficients of the Cephes expf), and 2^n built in the exponent
 * bits. Relative error about 2 ulp. Clamped so 2^n stays a normal number: e^-87 is
 * 1.6e-38, which is 0 for every use here. NaN passes through the clamps and stays NaN. */
static inline float fr_expf(float x)
{
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
    return p * scale;
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

#define FR_T float
#define FR_NAME(name) name##_f
#define FR_SIGMOID fr_sigmoidf
#define FR_TANH fr_tanhf
#include "_cellmath_rows.h"
#undef FR_T
#undef FR_NAME
#undef FR_SIGMOID
#undef FR_TANH

#define FR_T double
#define FR_NAME(name) name##_d
#define FR_SIGMOID fr_sigmoid
#define FR_TANH tanh
#include "_cellmath_rows.h"
#undef FR_T
#undef FR_NAME
#undef FR_SIGMOID
#undef FR_TANH

#endif
