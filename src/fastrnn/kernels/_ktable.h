/* The kernel table: the float32 kernels of _kern_body.h compiled once per ISA, and the
 * one table of them that the loops of _kernels.pyx call, filled once at import for the
 * best ISA this CPU runs (capped by FASTRNN_CPU_CAPABILITY; _kernels.pyx reads it).
 *
 * Each ISA's instance is compiled inside a target region (`#pragma GCC target`, or
 * clang's attribute push), so the package needs no -march flag and a wheel runs on any
 * x86-64: `default` is the compiler's baseline (SSE2 on x86-64, NEON on aarch64), and
 * on x86-64 `avx2` (AVX2 + FMA) and `avx512` (AVX-512F) are added. Inside an instance
 * everything is inlined; the table is called once per GEMM or row of cells, and once
 * per call for the loop of one sequence. Nothing else in the package tests the CPU.
 * float64 stays on BLAS and the rows of _cellmath.h.
 */
#ifndef FASTRNN_KTABLE_H
#define FASTRNN_KTABLE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_cellmath.h"
#include "_pool.h"
#include "_stop.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(FASTRNN_NO_X86_KERNELS)
#define FR_X86 1
#include <immintrin.h>
#else
#define FR_X86 0
#endif

#define FR_KC 256     /* rows of the sum per block in fr_gemm_tn */
#define FR_TN_MB 384  /* columns of A per block in fr_gemm_tn (a multiple of every MR) */
#define FR_PREFETCH_BYTES (2L << 20) /* fr_gemm_rows: panels fetched ahead above this */
#ifndef FR_A_BLOCK_FLOATS
#define FR_A_BLOCK_FLOATS (256 * 1024) /* rows of A kept in cache across the panels: 1 MB */
#endif

typedef struct {
    const char *name;
    ptrdiff_t nr;          /* panel width: columns of a packed panel */
    ptrdiff_t mr;          /* rows of a register block */
    ptrdiff_t lanes;       /* floats a vector */
    ptrdiff_t chain_flops; /* flops of one round of fma_chains */
    void (*pack)(int trans, ptrdiff_t n, ptrdiff_t k, const float *w, ptrdiff_t ldw, float *packed,
                 ptrdiff_t p0, ptrdiff_t p1);
    void (*gemm)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a, ptrdiff_t lda,
                 const float *packed, float *c, ptrdiff_t ldc, int accumulate, ptrdiff_t p0,
                 ptrdiff_t p1);
    void (*gemm_tn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *a, ptrdiff_t lda,
                    const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate,
                    float *bpack);
    void (*few)(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *w,
                ptrdiff_t ldw, float *c, ptrdiff_t ldc, int accumulate, ptrdiff_t j0, ptrdiff_t j1);
    void (*few_nn)(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *w,
                   ptrdiff_t ldw, float *c, ptrdiff_t ldc, int accumulate, ptrdiff_t j0,
                   ptrdiff_t j1);
    void (*rnn_row)(int relu, ptrdiff_t n, const float *a, const float *gh, const float *bias,
                    float *o);
    void (*lstm_row)(ptrdiff_t H, ptrdiff_t n, const float *a, const float *gh, const float *bias,
                     float *ar, float *c, float *cs, float *o);
    void (*gru_row)(ptrdiff_t H, ptrdiff_t n, const float *a, const float *gh, const float *bias,
                    const float *bhn, const float *hp, float *ar, float *o);
    void (*seq1_forward)(int mode, ptrdiff_t T, ptrdiff_t H, int reverse, const float *pk, float *a,
                         ptrdiff_t SH, const float *bias, const float *bhn, float *h, float *c,
                         float *out, float *cs, float *gh, const float *x, ptrdiff_t nin,
                         const float *pk_ih, float *gx, int *progress, int *wait_on,
                         int *sleepers, ptrdiff_t chunk, volatile ptrdiff_t *stop);
    float (*fma_chains)(ptrdiff_t iters);
    const fr_rows_f_t *rows_f; /* the rows of _cellmath_rows.h, this ISA's build */
    const fr_rows_d_t *rows_d;
} fr_ktable;

#if defined(__clang__)
#define FR_TARGET_PUSH(t) \
    _Pragma(FR_TARGET_STR(clang attribute push(__attribute__((target(t))), apply_to = function)))
#define FR_TARGET_POP _Pragma("clang attribute pop")
#else
#define FR_TARGET_PUSH(t) _Pragma("GCC push_options") _Pragma(FR_TARGET_STR(GCC target(t)))
#define FR_TARGET_POP _Pragma("GCC pop_options")
#endif
#define FR_TARGET_STR(x) #x

/* the portable instance: no target region */
#include "simd/_simd_default.h"
#include "_rows_inst.h"
#include "_kern_body.h"
#include "simd/_simd_end.h"

#if FR_X86
FR_TARGET_PUSH("avx2,fma")
#include "simd/_simd_avx2.h"
#include "_rows_inst.h"
#include "_kern_body.h"
#include "simd/_simd_end.h"
FR_TARGET_POP

FR_TARGET_PUSH("avx512f")
#include "simd/_simd_avx512.h"
#include "_rows_inst.h"
#include "_kern_body.h"
#include "simd/_simd_end.h"
FR_TARGET_POP
#endif

/* capability levels, lowest first, as FASTRNN_CPU_CAPABILITY names them */
#define FR_CAP_LEVELS 3
static const char *const fr_cap_names[FR_CAP_LEVELS] = {"default", "avx2", "avx512"};

/* the table in use: the portable one until fr_kt_use picks another */
static fr_ktable fr_kt = {0};

#if FR_X86
#include <cpuid.h>

/* XCR0, the register state the OS saves (xgetbv(0)); only where CPUID says OSXSAVE */
static unsigned long long fr_xcr0(void)
{
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* The highest level this CPU runs, and its OS saves the registers of: CPUID's feature
 * bits and XCR0, read here rather than through the compiler's runtime (clang-cl links
 * none, and its __builtin_cpu_supports needs one). macOS turns the AVX-512 state on at a
 * thread's first AVX-512 instruction, so XCR0 does not show it beforehand: there AVX-512
 * counts as saved where the CPU has it (as LLVM's own check does). */
static int fr_cpu_best_level(void)
{
#if FR_X86
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(1, 0, a, b, c, d);
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx)
        return 0;
    unsigned long long xcr0 = fr_xcr0();
    if ((xcr0 & 0x6) != 0x6) /* XMM and YMM state */
        return 0;
#if defined(__APPLE__)
    int zmm_saved = 1;
#else
    int zmm_saved = (xcr0 & 0xE0) == 0xE0; /* opmask, ZMM0-15 upper halves, ZMM16-31 */
#endif
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
    if (avx512f && zmm_saved)
        return 2;
    if (avx2 && fma)
        return 1;
#endif
    return 0;
}

/* Use the kernels of `level` (0 default, 1 avx2, 2 avx512): 0 on success, -1 if this CPU
 * cannot run them. Only while no call runs (at import, or from a test between calls). */
static int fr_kt_use(int level)
{
    if (level < 0 || level >= FR_CAP_LEVELS || level > fr_cpu_best_level())
        return -1;
    fr_kt = fr_kernels_default;
#if FR_X86
    if (level == 2)
        fr_kt = fr_kernels_avx512;
    else if (level == 1)
        fr_kt = fr_kernels_avx2;
#endif
    fr_rows_f_in_use = fr_kt.rows_f;
    fr_rows_d_in_use = fr_kt.rows_d;
    return 0;
}

/* The interface the loops call: the table's kernels and sizes. */
static inline ptrdiff_t fr_panel_width(void) { return fr_kt.nr; }
static inline ptrdiff_t fr_panels(ptrdiff_t n) { return (n + fr_kt.nr - 1) / fr_kt.nr; }
/* floats needed to pack a weight with n output columns and k rows */
static inline size_t fr_packed_size(ptrdiff_t n, ptrdiff_t k)
{
    return (size_t)fr_panels(n) * (size_t)fr_kt.nr * (size_t)k;
}
static inline void fr_pack_panels(int trans, ptrdiff_t n, ptrdiff_t k, const float *w,
                                  ptrdiff_t ldw, float *packed, ptrdiff_t p0, ptrdiff_t p1)
{
    fr_kt.pack(trans, n, k, w, ldw, packed, p0, p1);
}
static inline void fr_gemm_panels(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                  ptrdiff_t lda, const float *packed, float *c, ptrdiff_t ldc,
                                  int accumulate, ptrdiff_t p0, ptrdiff_t p1)
{
    fr_kt.gemm(m, n, k, a, lda, packed, c, ldc, accumulate, p0, p1);
}
static inline void fr_gemm_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *a, ptrdiff_t lda,
                              const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                              int accumulate, float *bpack)
{
    fr_kt.gemm_tn(m, n, K, a, lda, b, ldb, c, ldc, accumulate, bpack);
}
/* C[:, j0:j1) = A (m x k) @ W^T [+ C], W (n x k, row stride ldw) read in place: the
 * products of calls of few rows (_kern_body.h) */
static inline void fr_few(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *w,
                          ptrdiff_t ldw, float *c, ptrdiff_t ldc, int accumulate, ptrdiff_t j0,
                          ptrdiff_t j1)
{
    fr_kt.few(m, k, a, lda, w, ldw, c, ldc, accumulate, j0, j1);
}
/* C[:, j0:j1) = A (m x k) @ W[:, j0:j1) [+ C], W (k x n, row stride ldw) read in place:
 * the backward's products of calls of few rows */
static inline void fr_few_nn(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda,
                             const float *w, ptrdiff_t ldw, float *c, ptrdiff_t ldc, int accumulate,
                             ptrdiff_t j0, ptrdiff_t j1)
{
    fr_kt.few_nn(m, k, a, lda, w, ldw, c, ldc, accumulate, j0, j1);
}
static inline void fr_rnn_row_v(int relu, ptrdiff_t n, const float *a, const float *gh,
                                const float *bias, float *o)
{
    fr_kt.rnn_row(relu, n, a, gh, bias, o);
}
static inline void fr_lstm_row_v(ptrdiff_t H, ptrdiff_t n, const float *a, const float *gh,
                                 const float *bias, float *ar, float *c, float *cs, float *o)
{
    fr_kt.lstm_row(H, n, a, gh, bias, ar, c, cs, o);
}
static inline void fr_gru_row_v(ptrdiff_t H, ptrdiff_t n, const float *a, const float *gh,
                                const float *bias, const float *bhn, const float *hp, float *ar,
                                float *o)
{
    fr_kt.gru_row(H, n, a, gh, bias, bhn, hp, ar, o);
}
static inline void fr_seq1_forward(int mode, ptrdiff_t T, ptrdiff_t H, int reverse, const float *pk,
                                   float *a, ptrdiff_t SH, const float *bias, const float *bhn,
                                   float *h, float *c, float *out, float *cs, float *gh,
                                   const float *x, ptrdiff_t nin, const float *pk_ih, float *gx,
                                   int *progress, int *wait_on, int *sleepers, ptrdiff_t chunk,
                                   volatile ptrdiff_t *stop)
{
    fr_kt.seq1_forward(mode, T, H, reverse, pk, a, SH, bias, bhn, h, c, out, cs, gh, x, nin,
                       pk_ih, gx, progress, wait_on, sleepers, chunk, stop);
}

#endif
