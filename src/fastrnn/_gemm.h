/* A small float32 GEMM for the recurrent step, with the weight packed once per call.
 *
 * Each step of the time loop multiplies a few rows (the batch) by the same weight
 * (W_hh^T forward, W_hh backward). BLAS packs that weight again on every call, which
 * for a batch of 64 and a 2048 x 512 weight costs about as much as the arithmetic, and
 * for a batch of 1 its per-call overhead is most of a step. Here the weight is packed
 * once into panels of FR_NR columns:
 *
 *     panel p, row k, column c  =  op(W)[k, p*FR_NR + c]      (zero past the last column)
 *
 * and a register-blocked kernel (up to FR_MR rows x FR_NR columns of C held in
 * registers across the whole k loop) streams each panel once per block of rows.
 *
 * The kernel is AVX-512 only, selected at run time; elsewhere fr_gemm_packed_ok()
 * returns 0 and the caller uses BLAS, so the code runs on any x86-64.
 */
#ifndef FASTRNN_GEMM_H
#define FASTRNN_GEMM_H

#include <stddef.h>

#define FR_NR 64 /* panel width: 4 zmm registers of 16 floats */
#define FR_MR 6  /* rows per block: 6 x 4 = 24 accumulators of the 32 zmm registers */
#define FR_KC 256 /* rows of the sum per block in fr_gemm_tn: a packed panel is 64 KB */
#define FR_TN_MB 384 /* columns of A per block in fr_gemm_tn (a multiple of FR_MR) */
#define FR_PREFETCH_BYTES (2L << 20) /* fr_gemm_panels_rows: panels fetched ahead above */
#ifndef FR_A_BLOCK_FLOATS
#define FR_A_BLOCK_FLOATS (256 * 1024)
#endif /* rows of A kept in cache across the panels: 1 MB */

#if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTRNN_NO_AVX512)
#define FR_HAVE_KERNEL 1
#include <immintrin.h>
#else
#define FR_HAVE_KERNEL 0
#endif

/* Floats needed to pack a weight with n output columns and k rows. */
static inline size_t fr_packed_size(long n, long k)
{
    return (size_t)((n + FR_NR - 1) / FR_NR) * FR_NR * (size_t)k;
}

/* Pack panels [p0, p1) of op(W) (k x n) for the kernel. trans != 0: W is stored (n x k)
 * with row stride ldw, as torch stores weights, and op(W) = W^T. trans == 0: W is stored
 * (k x n). Threads that split the GEMM by panels pack their own panels. */
static void fr_pack_panels_scalar(int trans, long n, long k, const float *w, long ldw,
                                  float *packed, long p0, long p1)
{
    for (long p = p0; p < p1; p++) {
        float *dst = packed + p * FR_NR * k;
        long ncols = n - p * FR_NR < FR_NR ? n - p * FR_NR : FR_NR;
        if (trans) {
            /* a row of W is a column of the panel: read it contiguously */
            for (long c = 0; c < ncols; c++) {
                const float *src = w + (p * FR_NR + c) * ldw;
                for (long kk = 0; kk < k; kk++)
                    dst[kk * FR_NR + c] = src[kk];
            }
        } else {
            /* a row of W holds a row of the panel */
            for (long kk = 0; kk < k; kk++) {
                const float *src = w + kk * ldw + p * FR_NR;
                for (long c = 0; c < ncols; c++)
                    dst[kk * FR_NR + c] = src[c];
            }
        }
        for (long kk = 0; kk < k; kk++)
            for (long c = ncols; c < FR_NR; c++)
                dst[kk * FR_NR + c] = 0.0f;
    }
}

static inline long fr_panels(long n) { return (n + FR_NR - 1) / FR_NR; }

#if FR_HAVE_KERNEL

static int fr_cpu_ok = -1;

static int fr_gemm_packed_ok(void)
{
    if (fr_cpu_ok < 0) {
        __builtin_cpu_init();
        fr_cpu_ok = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return fr_cpu_ok;
}

/* Mask of the first `left` (up to 16, none if left <= 0) lanes of a vector. */
static inline __mmask16 fr_mask(long left)
{
    return left >= 16 ? (__mmask16)0xFFFF
                      : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/* dst[i * ldd + j] = src[j * lds + i] for i, j < 16: a 16 x 16 block transposed in
 * registers (pairs of rows interleaved, then pairs of pairs, then 128-bit lanes). */
__attribute__((target("avx512f"))) static inline void
fr_transpose16(const float *src, long lds, float *dst, long ldd)
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

/* fr_pack_panels for W stored n x k (trans): whole 16 x 16 blocks transposed in
 * registers, the edges element by element. The scalar copy wrote a panel row apart per
 * element and took about a seventh of a call at B = 1, H = 512. */
__attribute__((target("avx512f"))) static void
fr_pack_panels_t(long n, long k, const float *w, long ldw, float *packed, long p0, long p1)
{
    long k16 = k / 16 * 16;
    for (long p = p0; p < p1; p++) {
        float *dst = packed + p * FR_NR * k;
        long ncols = n - p * FR_NR < FR_NR ? n - p * FR_NR : FR_NR;
        long c16 = ncols / 16 * 16;
        for (long kk = 0; kk < k16; kk += 16)
            for (long c = 0; c < c16; c += 16)
                fr_transpose16(w + (p * FR_NR + c) * ldw + kk, ldw, dst + kk * FR_NR + c, FR_NR);
        for (long c = 0; c < ncols; c++) {
            const float *src = w + (p * FR_NR + c) * ldw;
            for (long kk = c < c16 ? k16 : 0; kk < k; kk++)
                dst[kk * FR_NR + c] = src[kk];
        }
        for (long kk = 0; kk < k; kk++)
            for (long c = ncols; c < FR_NR; c++)
                dst[kk * FR_NR + c] = 0.0f;
    }
}

/* One block: rows [0, MR) of A (row stride lda; TA: A^T, stored transposed) times one
 * panel, into C (stride ldc), writing ncols <= FR_NR columns. MR and TA are compile-time
 * constants at every call site so the accumulators stay in registers. Meanwhile the
 * pf_n (<= k) cache lines from pf are fetched into L2, one a step of the k loop. */
__attribute__((target("avx512f"), always_inline)) static inline void
fr_block_ta(const int MR, const int TA, long k, const float *a, long lda, const float *panel,
            float *c, long ldc, long ncols, int accumulate, const char *pf, long pf_n)
{
    __m512 acc[FR_MR][4];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < 4; v++)
            acc[i][v] = _mm512_setzero_ps();
    for (long kk = 0; kk < k; kk++) {
        const float *bp = panel + kk * FR_NR;
        if (kk < pf_n)
            _mm_prefetch(pf + kk * 64, _MM_HINT_T1);
        __m512 b0 = _mm512_loadu_ps(bp);
        __m512 b1 = _mm512_loadu_ps(bp + 16);
        __m512 b2 = _mm512_loadu_ps(bp + 32);
        __m512 b3 = _mm512_loadu_ps(bp + 48);
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(TA ? a[kk * lda + i] : a[i * lda + kk]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(ai, b3, acc[i][3]);
        }
    }
    for (int v = 0; v < 4; v++) {
        long left = ncols - 16 * v;
        if (left <= 0)
            break;
        __mmask16 m = fr_mask(left);
        for (int i = 0; i < MR; i++) {
            float *cp = c + i * ldc + 16 * v;
            __m512 r = acc[i][v];
            if (accumulate)
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, cp));
            _mm512_mask_storeu_ps(cp, m, r);
        }
    }
}

#define fr_block(MR, k, a, lda, panel, c, ldc, ncols, accumulate, pf, pf_n) \
    fr_block_ta(MR, 0, k, a, lda, panel, c, ldc, ncols, accumulate, pf, pf_n)

/* One row times two panels at once. A single row has only 4 accumulators per panel,
 * fewer than the FMA pipes keep in flight (2 pipes x 4 cycles of latency): with two
 * panels there are 8 independent chains. ncols counts the columns of both panels. */
__attribute__((target("avx512f"))) static void
fr_row2(long k, const float *a, const float *p0, const float *p1, float *c, long ncols,
        int accumulate)
{
    __m512 acc[8];
    for (int v = 0; v < 8; v++)
        acc[v] = _mm512_setzero_ps();
    for (long kk = 0; kk < k; kk++) {
        __m512 ai = _mm512_set1_ps(a[kk]);
        for (int v = 0; v < 4; v++) {
            acc[v] = _mm512_fmadd_ps(ai, _mm512_loadu_ps(p0 + kk * FR_NR + 16 * v), acc[v]);
            acc[4 + v] =
                _mm512_fmadd_ps(ai, _mm512_loadu_ps(p1 + kk * FR_NR + 16 * v), acc[4 + v]);
        }
    }
    /* every vector, masked (none past ncols): a loop that stopped at the last column
     * kept the accumulators in memory, zeroed with a `rep stos` on every call */
    for (int v = 0; v < 8; v++) {
        __mmask16 m = fr_mask(ncols - 16 * v);
        __m512 r = acc[v];
        if (accumulate)
            r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, c + 16 * v));
        _mm512_mask_storeu_ps(c + 16 * v, m, r);
    }
}

/* One row times one panel, the k loop split over two sets of accumulators: the
 * backward's step (dG @ W_hh) has a long k and often a single panel, where 4 chains
 * along k leave the FMA pipes waiting on latency. NV (1 to 4, a compile-time constant
 * at each call) is the number of 16-column vectors that hold columns: a narrow output
 * (H = 32) needs only 2 of the panel's 4. */
__attribute__((target("avx512f"), always_inline)) static inline void
fr_row1_nv(const int NV, long k, const float *a, const float *panel, float *c, long ncols,
           int accumulate)
{
    /* two arrays of at most 4: with one of 8, GCC kept them in memory, zeroed with a
     * `rep stos` on every call */
    __m512 even[4], odd[4];
    for (int v = 0; v < NV; v++)
        even[v] = odd[v] = _mm512_setzero_ps();
    long kk = 0;
    for (; kk + 2 <= k; kk += 2) {
        __m512 a0 = _mm512_set1_ps(a[kk]), a1 = _mm512_set1_ps(a[kk + 1]);
        for (int v = 0; v < NV; v++) {
            even[v] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(panel + kk * FR_NR + 16 * v), even[v]);
            odd[v] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(panel + (kk + 1) * FR_NR + 16 * v),
                                     odd[v]);
        }
    }
    if (kk < k) {
        __m512 a0 = _mm512_set1_ps(a[kk]);
        for (int v = 0; v < NV; v++)
            even[v] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(panel + kk * FR_NR + 16 * v), even[v]);
    }
    for (int v = 0; v < NV; v++) {
        __mmask16 m = fr_mask(ncols - 16 * v);
        __m512 r = _mm512_add_ps(even[v], odd[v]);
        if (accumulate)
            r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, c + 16 * v));
        _mm512_mask_storeu_ps(c + 16 * v, m, r);
    }
}

__attribute__((target("avx512f"))) static void
fr_row1(long k, const float *a, const float *panel, float *c, long ncols, int accumulate)
{
    switch ((ncols + 15) / 16) {
    case 1: fr_row1_nv(1, k, a, panel, c, ncols, accumulate); break;
    case 2: fr_row1_nv(2, k, a, panel, c, ncols, accumulate); break;
    case 3: fr_row1_nv(3, k, a, panel, c, ncols, accumulate); break;
    default: fr_row1_nv(4, k, a, panel, c, ncols, accumulate); break;
    }
}

/* Panels [p, p_end) of C (m x n, row stride ldc) = A (m x k, row stride lda) @ op(W)
 * [+ C if accumulate], with op(W) packed by fr_pack_panels; every panel streams once per
 * block of FR_MR rows of A. */
__attribute__((target("avx512f"))) static void
fr_gemm_panels_rows(long m, long n, long k, const float *a, long lda, const float *packed,
                    float *c, long ldc, int accumulate, long p, long p_end)
{
    if (m == 1) {
        for (; p + 2 <= p_end; p += 2) {
            long ncols = n - p * FR_NR < 2 * FR_NR ? n - p * FR_NR : 2 * FR_NR;
            fr_row2(k, a, packed + p * FR_NR * k, packed + (p + 1) * FR_NR * k,
                    c + p * FR_NR, ncols, accumulate);
        }
        if (p < p_end)
            fr_row1(k, a, packed + p * FR_NR * k, c + p * FR_NR, n - p * FR_NR, accumulate);
        return;
    }
    /* The rows go in blocks of as equal sizes as FR_MR allows (8 rows: 4 + 4, not
     * 6 + 2): a block of one or two rows reads a panel line per 4 or 8 FMAs, more than
     * the L2 cache delivers, and ran the whole product about 10% slower. */
    long nblocks = (m + FR_MR - 1) / FR_MR;
    long base = nblocks > 0 ? m / nblocks : 0, bigger = nblocks > 0 ? m % nblocks : 0;
    /* The blocks of a panel fetch the next panel into L2, each its share (a line a k
     * step): a weight larger than the caches, streamed by both threads (LSTM at H=1024),
     * otherwise kept the first block of every panel waiting on memory (2 threads,
     * 64 x 1024 @ 1024 x 4096: 206 -> 216 GF/s). Only for panels beyond the L2 cache
     * (FR_PREFETCH_BYTES): those within it gained nothing (LSTM at H=256: 0.99x), and
     * only panels of at most a quarter of L2 (k <= 1024), that the fetched one does not
     * push out of it (the backward's dG @ W_hh at H=1024: 1 MB panels). */
    long pf_lines = FR_NR * k / 16, pf_share = (pf_lines + nblocks - 1) / nblocks;
    int prefetch = nblocks > 1 && pf_share <= k /* else some lines would not be fetched */
                   && k <= 1024
                   && (p_end - p) * FR_NR * k * (long)sizeof(float) > FR_PREFETCH_BYTES;
    for (; p < p_end; p++) {
        const float *panel = packed + p * FR_NR * k;
        long ncols = n - p * FR_NR < FR_NR ? n - p * FR_NR : FR_NR;
        float *cp = c + p * FR_NR;
        long i = 0;
        const char *next = prefetch && p + 1 < p_end ? (const char *)(panel + FR_NR * k) : NULL;
        for (long blk = 0; blk < nblocks; blk++) {
            long rows = base + (blk < bigger);
            const float *ap = a + i * lda;
            float *cb = cp + i * ldc;
            long pf_at = blk * pf_share, pf_n = 0;
            if (next && pf_at < pf_lines)
                pf_n = pf_lines - pf_at < pf_share ? pf_lines - pf_at : pf_share;
            const char *pf = next ? next + pf_at * 64 : NULL;
            switch (rows) {
            case 6: fr_block(6, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n); break;
            case 5: fr_block(5, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n); break;
            case 4: fr_block(4, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n); break;
            case 3: fr_block(3, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n); break;
            case 2: fr_block(2, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n); break;
            default: fr_block(1, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n); break;
            }
            i += rows;
        }
    }
}

/* fr_gemm_panels_rows over blocks of rows that stay in the L2 cache (about 1 MB of A)
 * while all panels pass: a long A (the input projection of a whole sequence) is then
 * read from memory once, not once per panel. */
__attribute__((target("avx512f"))) static void
fr_gemm_panels(long m, long n, long k, const float *a, long lda, const float *packed,
               float *c, long ldc, int accumulate, long p, long p_end)
{
    long rows = (FR_A_BLOCK_FLOATS / (k > 0 ? k : 1)) / FR_MR * FR_MR;
    if (rows < FR_MR)
        rows = FR_MR;
    for (long i = 0; i < m; i += rows)
        fr_gemm_panels_rows(m - i < rows ? m - i : rows, n, k, a + i * lda, lda, packed,
                            c + i * ldc, ldc, accumulate, p, p_end);
}

/* C (m x n, row stride ldc) [+]= A^T B, A stored K x m (row stride lda), B stored K x n
 * (row stride ldb): the weight gradients of the backward, dG^T X, summed over every row
 * of the batch. K is taken in blocks of FR_KC rows: each block of B is packed into
 * panels (bpack: fr_packed_size(n, FR_KC) floats), and every block of FR_MR columns of A
 * multiplies each panel, read in place. */
__attribute__((target("avx512f"))) static void
fr_gemm_tn(long m, long n, long K, const float *a, long lda, const float *b, long ldb,
           float *c, long ldc, int accumulate, float *bpack)
{
    if (K <= 0 && !accumulate) {
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++)
                c[i * ldc + j] = 0.0f;
        return;
    }
    long panels = fr_panels(n);
    for (long k0 = 0; k0 < K; k0 += FR_KC) {
        long kc = K - k0 < FR_KC ? K - k0 : FR_KC;
        int acc = accumulate || k0 > 0;
        const float *ak = a + k0 * lda;
        fr_pack_panels_scalar(0, n, kc, b + k0 * ldb, ldb, bpack, 0, panels);
        /* columns of A in blocks that stay in cache (FR_KC x FR_TN_MB: 384 KB) while
         * every panel passes */
        for (long i0 = 0; i0 < m; i0 += FR_TN_MB)
        for (long p = 0; p < panels; p++) {
            const float *panel = bpack + p * FR_NR * kc;
            long ncols = n - p * FR_NR < FR_NR ? n - p * FR_NR : FR_NR;
            float *cp = c + p * FR_NR;
            long i = i0, m_end = m - i0 < FR_TN_MB ? m : i0 + FR_TN_MB;
/* a block of MR columns of A, read transposed, times the panel (no prefetch) */
#define FR_TN_BLOCK(MR) \
    fr_block_ta(MR, 1, kc, ak + i, lda, panel, cp + i * ldc, ldc, ncols, acc, NULL, 0)
            for (; i + FR_MR <= m_end; i += FR_MR)
                FR_TN_BLOCK(FR_MR);
            switch (m_end - i) {
            case 5: FR_TN_BLOCK(5); break;
            case 4: FR_TN_BLOCK(4); break;
            case 3: FR_TN_BLOCK(3); break;
            case 2: FR_TN_BLOCK(2); break;
            case 1: FR_TN_BLOCK(1); break;
#undef FR_TN_BLOCK
            default: break;
            }
        }
    }
}

static void fr_pack_panels(int trans, long n, long k, const float *w, long ldw, float *packed,
                           long p0, long p1)
{
    if (trans && fr_gemm_packed_ok())
        fr_pack_panels_t(n, k, w, ldw, packed, p0, p1);
    else
        fr_pack_panels_scalar(trans, n, k, w, ldw, packed, p0, p1);
}

#else

static inline int fr_gemm_packed_ok(void) { return 0; }
static void fr_pack_panels(int trans, long n, long k, const float *w, long ldw, float *packed,
                           long p0, long p1)
{
    fr_pack_panels_scalar(trans, n, k, w, ldw, packed, p0, p1);
}
static void fr_gemm_tn(long m, long n, long K, const float *a, long lda, const float *b,
                       long ldb, float *c, long ldc, int accumulate, float *bpack)
{
    (void)m; (void)n; (void)K; (void)a; (void)lda; (void)b; (void)ldb; (void)c; (void)ldc;
    (void)accumulate; (void)bpack;
}
static void fr_gemm_panels(long m, long n, long k, const float *a, long lda,
                           const float *packed, float *c, long ldc, int accumulate, long p,
                           long p_end)
{
    (void)m; (void)n; (void)k; (void)a; (void)lda; (void)packed; (void)c; (void)ldc;
    (void)accumulate; (void)p; (void)p_end;
}

#endif
#endif
