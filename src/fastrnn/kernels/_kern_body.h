/* The float32 kernels, written once over the vector operations of a _simd_*.h and
 * included by _ktable.h once per ISA (each time inside that ISA's target region, every
 * name suffixed by FR_ISA): the packing and the GEMMs of the recurrent step, the
 * few-rows kernel that multiplies a weight in place, the vector exp/tanh/sigmoid and
 * cells, and the time loop of one sequence.
 *
 * The packed GEMM. Each step of the time loop multiplies a few rows (the batch) by the
 * same weight (W_hh^T forward, W_hh backward). BLAS packs that weight again on every
 * call, which for a batch of 64 and a 2048 x 512 weight costs about as much as the
 * arithmetic, and for a batch of 1 its per-call overhead is most of a step. Here the
 * weight is packed once per call into panels of NR = FRV_NV vectors of columns:
 *
 *     panel p, row k, column c  =  op(W)[k, p*NR + c]      (zero past the last column)
 *
 * and a register-blocked kernel (up to FRV_MR rows x NR columns of C held in registers
 * across the whole k loop) streams each panel once per block of rows.
 *
 * The time loop of one sequence (B = 1). At B = 1 and a small H a step is a short chain
 * of dependent work (W_hh h, then the gates, then the next W_hh h): at T=100, H=32 the
 * general loop spent about as much of each step on its bookkeeping (the batch's row
 * offsets, pointers, a copy of h, a cell called through a run-time dispatch) as on the
 * product. Here h_{t-1} is read from the previous output row, the cell math stays in
 * vector registers, and nothing else is in the loop.
 */

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#define FR_ISA(name) FR_CAT(name, FRV_SUFFIX)
#define FRK static inline __attribute__((always_inline))
#define FRK_NR (FRV_N * FRV_NV)

/* Pack panels [p0, p1) of op(W) (k x n) for the kernel. trans != 0: W is stored (n x k)
 * with row stride ldw, as torch stores weights, and op(W) = W^T: whole FRV_N x FRV_N
 * blocks transposed in registers, the edges element by element (a copy element by
 * element wrote a panel row apart per element, and took a share of a call at B = 1:
 * README, performance notes). trans == 0: W is stored (k x n). Threads that
 * split the GEMM by panels pack their own panels. */
static void FR_ISA(fr_pack)(int trans, ptrdiff_t n, ptrdiff_t k, const float *w, ptrdiff_t ldw,
                            float *packed, ptrdiff_t p0, ptrdiff_t p1)
{
    ptrdiff_t kN = k / FRV_N * FRV_N;
    for (ptrdiff_t p = p0; p < p1; p++) {
        float *dst = packed + p * FRK_NR * k;
        ptrdiff_t ncols = n - p * FRK_NR < FRK_NR ? n - p * FRK_NR : FRK_NR;
        if (trans) {
            ptrdiff_t cN = ncols / FRV_N * FRV_N;
            for (ptrdiff_t kk = 0; kk < kN; kk += FRV_N)
                for (ptrdiff_t c = 0; c < cN; c += FRV_N)
                    frv_transpose(w + (p * FRK_NR + c) * ldw + kk, ldw, dst + kk * FRK_NR + c,
                                  FRK_NR);
            for (ptrdiff_t c = 0; c < ncols; c++) {
                const float *src = w + (p * FRK_NR + c) * ldw;
                for (ptrdiff_t kk = c < cN ? kN : 0; kk < k; kk++)
                    dst[kk * FRK_NR + c] = src[kk];
            }
        } else {
            /* a row of W holds a row of the panel */
            for (ptrdiff_t kk = 0; kk < k; kk++) {
                const float *src = w + kk * ldw + p * FRK_NR;
                for (ptrdiff_t c = 0; c < ncols; c++)
                    dst[kk * FRK_NR + c] = src[c];
            }
        }
        for (ptrdiff_t kk = 0; kk < k; kk++)
            for (ptrdiff_t c = ncols; c < FRK_NR; c++)
                dst[kk * FRK_NR + c] = 0.0f;
    }
}

/* One block: rows [0, MR) of A (row stride lda; TA: A^T, stored transposed) times one
 * panel, into C (stride ldc), writing ncols <= NR columns. MR and TA are compile-time
 * constants at every call site so the accumulators stay in registers. Meanwhile the
 * pf_n (<= k) cache lines from pf are fetched into L2, one a step of the k loop. */
FRK void FR_ISA(fr_block)(const int MR, const int TA, ptrdiff_t k, const float *a, ptrdiff_t lda,
                          const float *panel, float *c, ptrdiff_t ldc, ptrdiff_t ncols,
                          int accumulate, const char *pf, ptrdiff_t pf_n)
{
    frv acc[FRV_MR][FRV_NV];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < FRV_NV; v++)
            acc[i][v] = frv_zero();
    for (ptrdiff_t kk = 0; kk < k; kk++) {
        const float *bp = panel + kk * FRK_NR;
        if (kk < pf_n)
            __builtin_prefetch(pf + kk * 64, 0, 2); /* into L2 */
        frv b[FRV_NV];
        for (int v = 0; v < FRV_NV; v++)
            b[v] = frv_load(bp + FRV_N * v);
        for (int i = 0; i < MR; i++) {
            frv ai = frv_set1(TA ? a[kk * lda + i] : a[i * lda + kk]);
            for (int v = 0; v < FRV_NV; v++)
                acc[i][v] = frv_fma(ai, b[v], acc[i][v]);
        }
    }
    for (int v = 0; v < FRV_NV; v++) {
        ptrdiff_t left = ncols - FRV_N * v;
        if (left <= 0)
            break;
        for (int i = 0; i < MR; i++) {
            float *cp = c + i * ldc + FRV_N * v;
            frv r = acc[i][v];
            if (accumulate)
                r = frv_add(r, frv_load_n(cp, left));
            frv_store_n(cp, left, r);
        }
    }
}

/* One row of A times CV vectors of columns from a panel boundary on (the panels
 * pstride floats apart), writing the first ncols of them. A single row has few
 * accumulators per panel, fewer than the FMA pipes keep in flight (2 pipes x 4 cycles
 * of latency), so the row takes the columns of several panels at once (CV = 8), and
 * with few columns (the backward's dG @ W_hh has a long k and a narrow output; H = 32)
 * splits the k loop over two sets of accumulators (KS = 2). CV and KS are compile-time
 * constants at each call. Every vector is stored through frv_store_n: a loop that
 * stopped at the last column kept the accumulators in memory, zeroed with a `rep stos`
 * on every call. */
FRK void FR_ISA(fr_row)(const int CV, const int KS, ptrdiff_t k, const float *a,
                        const float *panel, ptrdiff_t pstride, float *c, ptrdiff_t ncols,
                        int accumulate)
{
    /* two arrays: with one of 2 * CV, GCC kept them in memory */
    frv even[8], odd[8];
    const float *bp[8];
    for (int v = 0; v < CV; v++) {
        bp[v] = panel + (v / FRV_NV) * pstride + (v % FRV_NV) * FRV_N;
        even[v] = odd[v] = frv_zero();
    }
    ptrdiff_t kk = 0;
    if (KS == 2) {
        for (; kk + 2 <= k; kk += 2) {
            frv a0 = frv_set1(a[kk]), a1 = frv_set1(a[kk + 1]);
            for (int v = 0; v < CV; v++) {
                even[v] = frv_fma(a0, frv_load(bp[v] + kk * FRK_NR), even[v]);
                odd[v] = frv_fma(a1, frv_load(bp[v] + (kk + 1) * FRK_NR), odd[v]);
            }
        }
    }
    for (; kk < k; kk++) {
        frv a0 = frv_set1(a[kk]);
        for (int v = 0; v < CV; v++)
            even[v] = frv_fma(a0, frv_load(bp[v] + kk * FRK_NR), even[v]);
    }
    for (int v = 0; v < CV; v++) {
        ptrdiff_t left = ncols - FRV_N * v;
        frv r = KS == 2 ? frv_add(even[v], odd[v]) : even[v];
        if (accumulate)
            r = frv_add(r, frv_load_n(c + FRV_N * v, left));
        frv_store_n(c + FRV_N * v, left, r);
    }
}

/* Panels [p, p_end) of C (m x n, row stride ldc) = A (m x k, row stride lda) @ op(W)
 * [+ C if accumulate], with op(W) packed by fr_pack; every panel streams once per
 * block of FRV_MR rows of A. */
static void FR_ISA(fr_gemm_rows)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                 ptrdiff_t lda, const float *packed, float *c, ptrdiff_t ldc,
                                 int accumulate, ptrdiff_t p, ptrdiff_t p_end)
{
    if (m == 1) {
        ptrdiff_t col = p * FRK_NR, end = p_end * FRK_NR < n ? p_end * FRK_NR : n;
        ptrdiff_t ps = FRK_NR * k;
        for (; end - col > 7 * FRV_N; col += 8 * FRV_N)
            FR_ISA(fr_row)(8, 1, k, a, packed + col * k, ps, c + col, end - col, accumulate);
        const float *pc = packed + col * k;
        float *cc = c + col;
        ptrdiff_t left = end - col;
        switch ((left + FRV_N - 1) / FRV_N) {
        case 7: FR_ISA(fr_row)(7, 1, k, a, pc, ps, cc, left, accumulate); break;
        case 6: FR_ISA(fr_row)(6, 1, k, a, pc, ps, cc, left, accumulate); break;
        case 5: FR_ISA(fr_row)(5, 1, k, a, pc, ps, cc, left, accumulate); break;
        case 4: FR_ISA(fr_row)(4, 2, k, a, pc, ps, cc, left, accumulate); break;
        case 3: FR_ISA(fr_row)(3, 2, k, a, pc, ps, cc, left, accumulate); break;
        case 2: FR_ISA(fr_row)(2, 2, k, a, pc, ps, cc, left, accumulate); break;
        case 1: FR_ISA(fr_row)(1, 2, k, a, pc, ps, cc, left, accumulate); break;
        default: break;
        }
        return;
    }
    /* The rows go in blocks of as equal sizes as FRV_MR allows (8 rows: 4 + 4, not
     * 6 + 2): a block of one or two rows reads a panel line per few FMAs, more than
     * the L2 cache delivers, and ran the whole product slower (README, performance
     * notes). */
    ptrdiff_t nblocks = (m + FRV_MR - 1) / FRV_MR;
    ptrdiff_t base = nblocks > 0 ? m / nblocks : 0, bigger = nblocks > 0 ? m % nblocks : 0;
    /* The blocks of a panel fetch the next panel into L2, each its share (a line a k
     * step): a weight larger than the caches, streamed by both threads (LSTM at H=1024),
     * otherwise kept the first block of every panel waiting on memory. Only for panels
     * beyond the L2 cache (FR_PREFETCH_BYTES), and only panels of at most a quarter of
     * L2 (k <= 1024), that the fetched one does not push out of it. */
    ptrdiff_t pf_lines = FRK_NR * k / 16, pf_share = (pf_lines + nblocks - 1) / nblocks;
    int prefetch = nblocks > 1 && pf_share <= k /* else some lines would not be fetched */
                   && k <= 1024
                   && (p_end - p) * FRK_NR * k * (ptrdiff_t)sizeof(float) > FR_PREFETCH_BYTES;
    for (; p < p_end; p++) {
        const float *panel = packed + p * FRK_NR * k;
        ptrdiff_t ncols = n - p * FRK_NR < FRK_NR ? n - p * FRK_NR : FRK_NR;
        float *cp = c + p * FRK_NR;
        ptrdiff_t i = 0;
        const char *next = prefetch && p + 1 < p_end ? (const char *)(panel + FRK_NR * k) : NULL;
        for (ptrdiff_t blk = 0; blk < nblocks; blk++) {
            ptrdiff_t rows = base + (blk < bigger);
            const float *ap = a + i * lda;
            float *cb = cp + i * ldc;
            ptrdiff_t pf_at = blk * pf_share, pf_n = 0;
            if (next && pf_at < pf_lines)
                pf_n = pf_lines - pf_at < pf_share ? pf_lines - pf_at : pf_share;
            const char *pf = next ? next + pf_at * 64 : NULL;
#define FR_ROWS_BLOCK(MR) \
    FR_ISA(fr_block)(MR, 0, k, ap, lda, panel, cb, ldc, ncols, accumulate, pf, pf_n)
            switch (rows) {
            case 6: FR_ROWS_BLOCK(6); break;
            case 5: FR_ROWS_BLOCK(5); break;
            case 4: FR_ROWS_BLOCK(4); break;
            case 3: FR_ROWS_BLOCK(3); break;
            case 2: FR_ROWS_BLOCK(2); break;
            default: FR_ROWS_BLOCK(1); break;
            }
#undef FR_ROWS_BLOCK
            i += rows;
        }
    }
}

/* fr_gemm_rows over blocks of rows that stay in the L2 cache (about 1 MB of A) while all
 * panels pass: a long A (the input projection of a whole sequence) is then read from
 * memory once, not once per panel. */
static void FR_ISA(fr_gemm)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a, ptrdiff_t lda,
                            const float *packed, float *c, ptrdiff_t ldc, int accumulate,
                            ptrdiff_t p, ptrdiff_t p_end)
{
    ptrdiff_t rows = (FR_A_BLOCK_FLOATS / (k > 0 ? k : 1)) / FRV_MR * FRV_MR;
    if (rows < FRV_MR)
        rows = FRV_MR;
    for (ptrdiff_t i = 0; i < m; i += rows)
        FR_ISA(fr_gemm_rows)(m - i < rows ? m - i : rows, n, k, a + i * lda, lda, packed,
                             c + i * ldc, ldc, accumulate, p, p_end);
}

/* C (m x n, row stride ldc) [+]= A^T B, A stored K x m (row stride lda), B stored K x n
 * (row stride ldb): the weight gradients of the backward, dG^T X, summed over every row
 * of the batch. K is taken in blocks of FR_KC rows: each block of B is packed into
 * panels (bpack: fr_packed_size(n, FR_KC) floats), and every block of FRV_MR columns of
 * A multiplies each panel, read in place. */
static void FR_ISA(fr_gemm_tn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t K, const float *a, ptrdiff_t lda,
                               const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                               int accumulate, float *bpack)
{
    if (K <= 0 && !accumulate) {
        for (ptrdiff_t i = 0; i < m; i++)
            for (ptrdiff_t j = 0; j < n; j++)
                c[i * ldc + j] = 0.0f;
        return;
    }
    ptrdiff_t panels = (n + FRK_NR - 1) / FRK_NR;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += FR_KC) {
        ptrdiff_t kc = K - k0 < FR_KC ? K - k0 : FR_KC;
        int acc = accumulate || k0 > 0;
        const float *ak = a + k0 * lda;
        FR_ISA(fr_pack)(0, n, kc, b + k0 * ldb, ldb, bpack, 0, panels);
        /* columns of A in blocks that stay in cache (FR_KC x FR_TN_MB: 384 KB) while
         * every panel passes */
        for (ptrdiff_t i0 = 0; i0 < m; i0 += FR_TN_MB)
            for (ptrdiff_t p = 0; p < panels; p++) {
                const float *panel = bpack + p * FRK_NR * kc;
                ptrdiff_t ncols = n - p * FRK_NR < FRK_NR ? n - p * FRK_NR : FRK_NR;
                float *cp = c + p * FRK_NR;
                ptrdiff_t i = i0, m_end = m - i0 < FR_TN_MB ? m : i0 + FR_TN_MB;
/* a block of MR columns of A, read transposed, times the panel (no prefetch) */
#define FR_TN_BLOCK(MR) \
    FR_ISA(fr_block)(MR, 1, kc, ak + i, lda, panel, cp + i * ldc, ldc, ncols, acc, NULL, 0)
                for (; i + FRV_MR <= m_end; i += FRV_MR)
                    FR_TN_BLOCK(FRV_MR);
                switch (m_end - i) {
                case 5: FR_TN_BLOCK(5); break;
                case 4: FR_TN_BLOCK(4); break;
                case 3: FR_TN_BLOCK(3); break;
                case 2: FR_TN_BLOCK(2); break;
                case 1: FR_TN_BLOCK(1); break;
                default: break;
                }
#undef FR_TN_BLOCK
            }
    }
}

/* The few-rows kernel: C[:, j0:j1) = A (m x k, row stride lda) @ W^T [+ C], W stored
 * (n x k) with row stride ldw as torch stores weights, read in place. A call of a few rows
 * (one step of a batch of one or a few) multiplies each weight once: packing it first
 * read and wrote the whole weight to multiply it once, at memory speed at H = 512
 * (README, performance notes). Here each output is a dot product of a row of A with a
 * row of W: R rows of W at once (a vector of each along k, shared by the rows of A),
 * MB rows of A (FRV_FEW_MR), an accumulator for each pair, and a sum of its lanes at
 * the end. W's block of R rows stays in L1 while the blocks of rows of A pass, so W is
 * read from memory once a call, whatever m. Every output sums its k products in the
 * same order whatever m, the block it falls in and [j0, j1): threads that share the rows
 * of W compute the same bits as one thread. */
FRK void FR_ISA(fr_few_block)(const int MB, const int R, ptrdiff_t k, const float *a, ptrdiff_t lda,
                              const float *w, ptrdiff_t ldw, float *c, ptrdiff_t ldc,
                              int accumulate)
{
    frv acc[FRV_FEW_MR][8];
    for (int i = 0; i < MB; i++)
        for (int r = 0; r < R; r++)
            acc[i][r] = frv_zero();
    ptrdiff_t kk = 0;
    for (; kk + FRV_N <= k; kk += FRV_N) {
        frv wr[8];
        for (int r = 0; r < R; r++)
            wr[r] = frv_load(w + r * ldw + kk);
        for (int i = 0; i < MB; i++) {
            frv ai = frv_load(a + i * lda + kk);
            for (int r = 0; r < R; r++)
                acc[i][r] = frv_fma(ai, wr[r], acc[i][r]);
        }
    }
    if (kk < k) { /* the lanes loaded past k are 0 */
        frv wr[8];
        for (int r = 0; r < R; r++)
            wr[r] = frv_load_n(w + r * ldw + kk, k - kk);
        for (int i = 0; i < MB; i++) {
            frv ai = frv_load_n(a + i * lda + kk, k - kk);
            for (int r = 0; r < R; r++)
                acc[i][r] = frv_fma(ai, wr[r], acc[i][r]);
        }
    }
    for (int i = 0; i < MB; i++)
        for (int r = 0; r < R; r++) {
            float sum = frv_hsum(acc[i][r]);
            c[i * ldc + r] = accumulate ? c[i * ldc + r] + sum : sum;
        }
}

/* R rows of W (j .. j + R) against every row of A, FRV_FEW_MR at a time */
FRK void FR_ISA(fr_few_rows)(const int R, ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda,
                             const float *w, ptrdiff_t ldw, float *c, ptrdiff_t ldc, int accumulate)
{
    ptrdiff_t i = 0;
    for (; i + FRV_FEW_MR <= m; i += FRV_FEW_MR)
        FR_ISA(fr_few_block)(FRV_FEW_MR, R, k, a + i * lda, lda, w, ldw, c + i * ldc, ldc,
                             accumulate);
    switch (m - i) {
#if FRV_FEW_MR > 3
    case 3: FR_ISA(fr_few_block)(3, R, k, a + i * lda, lda, w, ldw, c + i * ldc, ldc,
                                 accumulate); break;
#endif
#if FRV_FEW_MR > 2
    case 2: FR_ISA(fr_few_block)(2, R, k, a + i * lda, lda, w, ldw, c + i * ldc, ldc,
                                 accumulate); break;
#endif
    case 1: FR_ISA(fr_few_block)(1, R, k, a + i * lda, lda, w, ldw, c + i * ldc, ldc,
                                 accumulate); break;
    default: break;
    }
}

static void FR_ISA(fr_few)(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *w,
                           ptrdiff_t ldw, float *c, ptrdiff_t ldc, int accumulate, ptrdiff_t j0,
                           ptrdiff_t j1)
{
    ptrdiff_t j = j0;
    if (m == 1) {
        /* one row of A: 8 rows of W at once, so that 8 independent sums cover the FMA
         * latency */
        for (; j + 8 <= j1; j += 8)
            FR_ISA(fr_few_block)(1, 8, k, a, lda, w + j * ldw, ldw, c + j, ldc, accumulate);
    }
    for (; j + 4 <= j1; j += 4)
        FR_ISA(fr_few_rows)(4, m, k, a, lda, w + j * ldw, ldw, c + j, ldc, accumulate);
    switch (j1 - j) {
    case 3: FR_ISA(fr_few_rows)(3, m, k, a, lda, w + j * ldw, ldw, c + j, ldc, accumulate); break;
    case 2: FR_ISA(fr_few_rows)(2, m, k, a, lda, w + j * ldw, ldw, c + j, ldc, accumulate); break;
    case 1: FR_ISA(fr_few_rows)(1, m, k, a, lda, w + j * ldw, ldw, c + j, ldc, accumulate); break;
    default: break;
    }
}

/* The few-rows kernel for a weight not transposed: C[:, j0:j1) = A (m x k, row stride
 * lda) @ W[:, j0:j1) [+ C], W stored (k x n) with row stride ldw (the backward's dG @ W,
 * W as torch stores it), read in place, each row once and in order: C's rows are
 * updated by KB = 4 rows of W at a time (a broadcast of A's entry times a vector of the
 * row), the rows of C staying in L1 while W streams, FRV_FEW_MR rows of A at a time
 * over the same rows of W (still in L1). Every output sums its k products in the order
 * of k, whatever m and [j0, j1). */
FRK void FR_ISA(fr_few_nn_block)(const int MB, const int KB, ptrdiff_t n, const float *a,
                                 ptrdiff_t lda, const float *w, ptrdiff_t ldw, float *c,
                                 ptrdiff_t ldc)
{
    frv av[FRV_FEW_MR][4];
    for (int i = 0; i < MB; i++)
        for (int r = 0; r < KB; r++)
            av[i][r] = frv_set1(a[i * lda + r]);
    for (ptrdiff_t j = 0; j < n; j += FRV_N) {
        ptrdiff_t left = n - j;
        frv wv[4];
        for (int r = 0; r < KB; r++)
            wv[r] = frv_load_n(w + r * ldw + j, left);
        for (int i = 0; i < MB; i++) {
            frv acc = frv_load_n(c + i * ldc + j, left);
            for (int r = 0; r < KB; r++)
                acc = frv_fma(av[i][r], wv[r], acc);
            frv_store_n(c + i * ldc + j, left, acc);
        }
    }
}

FRK void FR_ISA(fr_few_nn_rows)(const int KB, ptrdiff_t m, ptrdiff_t n, const float *a,
                                ptrdiff_t lda, const float *w, ptrdiff_t ldw, float *c,
                                ptrdiff_t ldc)
{
    ptrdiff_t i = 0;
    for (; i + FRV_FEW_MR <= m; i += FRV_FEW_MR)
        FR_ISA(fr_few_nn_block)(FRV_FEW_MR, KB, n, a + i * lda, lda, w, ldw, c + i * ldc, ldc);
    switch (m - i) {
#if FRV_FEW_MR > 3
    case 3: FR_ISA(fr_few_nn_block)(3, KB, n, a + i * lda, lda, w, ldw, c + i * ldc, ldc); break;
#endif
#if FRV_FEW_MR > 2
    case 2: FR_ISA(fr_few_nn_block)(2, KB, n, a + i * lda, lda, w, ldw, c + i * ldc, ldc); break;
#endif
    case 1: FR_ISA(fr_few_nn_block)(1, KB, n, a + i * lda, lda, w, ldw, c + i * ldc, ldc); break;
    default: break;
    }
}

static void FR_ISA(fr_few_nn)(ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda,
                              const float *w, ptrdiff_t ldw, float *c, ptrdiff_t ldc,
                              int accumulate, ptrdiff_t j0, ptrdiff_t j1)
{
    ptrdiff_t n = j1 - j0;
    if (n <= 0)
        return;
    w += j0;
    c += j0;
    if (!accumulate)
        for (ptrdiff_t i = 0; i < m; i++)
            memset(c + i * ldc, 0, (size_t)n * sizeof(float));
    ptrdiff_t kk = 0;
    for (; kk + 4 <= k; kk += 4)
        FR_ISA(fr_few_nn_rows)(4, m, n, a + kk, lda, w + kk * ldw, ldw, c, ldc);
    switch (k - kk) {
    case 3: FR_ISA(fr_few_nn_rows)(3, m, n, a + kk, lda, w + kk * ldw, ldw, c, ldc); break;
    case 2: FR_ISA(fr_few_nn_rows)(2, m, n, a + kk, lda, w + kk * ldw, ldw, c, ldc); break;
    case 1: FR_ISA(fr_few_nn_rows)(1, m, n, a + kk, lda, w + kk * ldw, ldw, c, ldc); break;
    default: break;
    }
}

/* exp on a vector, as the scalar fr_expf of _cellmath.h: Cody-Waite range reduction
 * x = n ln2 + r, a degree-6 polynomial for e^r, then p * 2^n, and +inf beyond
 * ln(FLT_MAX). The constant is the first operand of min/max so that NaN (the second)
 * passes through. */
FRK frv FR_ISA(fr_vexp)(frv x)
{
#if FRV_LDEXP_OVERFLOWS
    /* 2^n applied by an operation that overflows to +inf by itself: up to n = 128 */
    x = frv_min(frv_set1(89.0f), x);
#else
    frv x0 = x;
    x = frv_min(frv_set1(88.0f), x);
#endif
    x = frv_max(frv_set1(-87.0f), x);
    frv n = frv_round(frv_mul(x, frv_set1(1.44269504088896341f)));
    frv r = frv_fnma(n, frv_set1(0.693359375f), x);
    r = frv_fma(n, frv_set1(2.12194440e-4f), r);
    frv p = frv_set1(1.9875691500e-4f);
    p = frv_fma(p, r, frv_set1(1.3981999507e-3f));
    p = frv_fma(p, r, frv_set1(8.3334519073e-3f));
    p = frv_fma(p, r, frv_set1(4.1665795894e-2f));
    p = frv_fma(p, r, frv_set1(1.6666665459e-1f));
    p = frv_fma(p, r, frv_set1(5.0000001201e-1f));
    p = frv_fma(frv_mul(p, r), r, frv_add(r, frv_set1(1.0f)));
#if FRV_LDEXP_OVERFLOWS
    return frv_ldexp(p, n);
#else
    return frv_select_lt(frv_set1(FR_EXPF_OVERFLOW), x0, frv_set1(INFINITY), frv_ldexp(p, n));
#endif
}

/* tanh: the odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) with x's sign above
 * (NaN takes the second branch and stays NaN). */
FRK frv FR_ISA(fr_vtanh)(frv x)
{
    frv ax = frv_abs(x);
    frv z = frv_mul(x, x);
    frv s = frv_set1(-5.70498872745e-3f);
    s = frv_fma(s, z, frv_set1(2.06390887954e-2f));
    s = frv_fma(s, z, frv_set1(-5.37397155531e-2f));
    s = frv_fma(s, z, frv_set1(1.33314422036e-1f));
    s = frv_fma(s, z, frv_set1(-3.33332819422e-1f));
    s = frv_fma(frv_mul(s, z), x, x);
    frv e = FR_ISA(fr_vexp)(frv_add(ax, ax));
    frv big = frv_sub(frv_set1(1.0f), frv_div(frv_set1(2.0f), frv_add(e, frv_set1(1.0f))));
    big = frv_copysign_or(big, x);
    return frv_select_lt(ax, frv_set1(0.625f), s, big);
}

FRK frv FR_ISA(fr_vsigmoid)(frv x)
{
    frv one = frv_set1(1.0f);
    return frv_div(one, frv_add(one, FR_ISA(fr_vexp)(frv_sub(frv_zero(), x))));
}

/* the lanes of units [j, j + FRV_N) at p + at (at: j plus the offset of the unit's gate
 * block), those past unit n zero (loads) or untouched (stores) */
#define FR_LD(p, at) frv_load_n((p) + (at), n - j)
#define FR_ST(p, at, v) frv_store_n((p) + (at), n - j, v)
/* the pre-activation of gate block g: projection + recurrent + bias */
#define FR_PRE(g) \
    frv_add(frv_add(FR_LD(ain, (g) * H + j), FR_LD(gh, (g) * H + j)), FR_LD(bias, (g) * H + j))

/* The cells of one row, units [0, n) of gate blocks H apart, as _cellmath_rows.h's
 * (same math, same saved layout): ain holds the input projection (no bias), gh the
 * recurrent one; the activations go to ar when it is not NULL (training; it may be ain),
 * the new state to o (and c, and cs when not NULL, for LSTM). In inference (ar NULL)
 * they save no activations, whose stores are about a third of a cell's memory traffic. */
FRK void FR_ISA(fr_vrnn_row)(int relu, ptrdiff_t n, const float *ain, const float *gh,
                             const float *bias, float *o)
{
    for (ptrdiff_t j = 0; j < n; j += FRV_N) {
        frv u = frv_add(frv_add(FR_LD(ain, j), FR_LD(gh, j)), FR_LD(bias, j));
        /* relu: u < 0 is false for NaN, which stays NaN as in torch */
        u = relu ? frv_select_lt(u, frv_zero(), frv_zero(), u) : FR_ISA(fr_vtanh)(u);
        FR_ST(o, j, u);
    }
}

FRK void FR_ISA(fr_vlstm_row)(ptrdiff_t H, ptrdiff_t n, const float *ain, const float *gh,
                              const float *bias, float *ar, float *c, float *cs, float *o)
{
    for (ptrdiff_t j = 0; j < n; j += FRV_N) {
        frv i = FR_ISA(fr_vsigmoid)(FR_PRE(0)), f = FR_ISA(fr_vsigmoid)(FR_PRE(1));
        frv g = FR_ISA(fr_vtanh)(FR_PRE(2)), og = FR_ISA(fr_vsigmoid)(FR_PRE(3));
        frv cn = frv_fma(f, FR_LD(c, j), frv_mul(i, g));
        if (ar) {
            FR_ST(ar, j, i);
            FR_ST(ar, H + j, f);
            FR_ST(ar, 2 * H + j, g);
            FR_ST(ar, 3 * H + j, og);
        }
        FR_ST(c, j, cn);
        if (cs)
            FR_ST(cs, j, cn);
        FR_ST(o, j, frv_mul(og, FR_ISA(fr_vtanh)(cn)));
    }
}

/* GRU with the reset gate after W_hn: gh's n block is W_hn h (b_hn in bhn), bias's n
 * block b_in only; hp is h_{t-1}. */
FRK void FR_ISA(fr_vgru_row)(ptrdiff_t H, ptrdiff_t n, const float *ain, const float *gh,
                             const float *bias, const float *bhn, const float *hp, float *ar,
                             float *o)
{
    for (ptrdiff_t j = 0; j < n; j += FRV_N) {
        frv r = FR_ISA(fr_vsigmoid)(FR_PRE(0)), z = FR_ISA(fr_vsigmoid)(FR_PRE(1));
        frv hn = frv_add(FR_LD(gh, 2 * H + j), FR_LD(bhn, j));
        frv nn = FR_ISA(fr_vtanh)(
            frv_fma(r, hn, frv_add(FR_LD(ain, 2 * H + j), FR_LD(bias, 2 * H + j))));
        if (ar) {
            FR_ST(ar, j, r);
            FR_ST(ar, H + j, z);
            FR_ST(ar, 2 * H + j, nn);
            FR_ST(ar, 3 * H + j, hn);
        }
        /* (1 - z) n + z h_prev */
        FR_ST(o, j, frv_fma(z, FR_LD(hp, j), frv_fnma(z, nn, nn)));
    }
}

#undef FR_PRE
#undef FR_LD
#undef FR_ST

/* The cells as functions, for the other loops of _kernels.pyx (so that every float32
 * loop computes the same bits). */
static void FR_ISA(fr_rnn_row)(int relu, ptrdiff_t n, const float *a, const float *gh,
                               const float *bias, float *o)
{
    FR_ISA(fr_vrnn_row)(relu, n, a, gh, bias, o);
}

static void FR_ISA(fr_lstm_row)(ptrdiff_t H, ptrdiff_t n, const float *a, const float *gh,
                                const float *bias, float *ar, float *c, float *cs, float *o)
{
    FR_ISA(fr_vlstm_row)(H, n, a, gh, bias, ar, c, cs, o);
}

static void FR_ISA(fr_gru_row)(ptrdiff_t H, ptrdiff_t n, const float *a, const float *gh,
                               const float *bias, const float *bhn, const float *hp,
                               float *ar, float *o)
{
    FR_ISA(fr_vgru_row)(H, n, a, gh, bias, bhn, hp, ar, o);
}

/* Steps s = 0 .. T-1 over t = s (t = T-1-s if reverse). pk: W_hh^T packed (G*H columns,
 * k = H); gh: G*H floats of scratch; bias: b_ih + b_hh (the GRU's n block: b_in only,
 * b_hn in bhn); h (and c for LSTM) hold the initial state on entry and the final one on
 * exit; out: T x H; cs (LSTM training, else NULL): T x H, the cell state of each row.
 * Cells as _kernels.pyx's modes: 0 tanh RNN, 1 relu RNN, 2 LSTM, 3 GRU with the reset
 * gate after W_hn (the reset-before GRU and LSTM projections take the general loop).
 *
 * The input projection of row t is read from a + t * SH, where the activations are then
 * saved (the vanilla RNN's rows are its output rows: a == out); or, if pk_ih is given
 * (W_ih^T packed, k = nin, small enough to stay in the L1 cache with W_hh), computed here
 * from x (T x nin), one step ahead into gx (2 * SH floats: the row of this step and of
 * the next), where it costs no BLAS call and its products overlap the cell of the step
 * before, which they do not depend on; the activations then go to a + t * SH if a is
 * given (training), else nowhere.
 *
 * A layer of a stack whose layers run at once (forward_stack, forward only): if progress
 * is given, the steps done are stored there every `chunk` steps (fr_set_and_wake) for the
 * layer above (not at every step: the line would travel between the cores at each one,
 * doubling the step of a small RNN); if wait_on is given, x is the output of the layer
 * below, which another thread is computing: every `chunk` steps the loop waits until it
 * has done the next chunk's steps, then projects their rows with pk_ih into a.
 *
 * stop (or NULL): the call's stop word (_stop.h); the loop ends early once it is set. */
static void FR_ISA(fr_seq1_forward)(int mode, ptrdiff_t T, ptrdiff_t H, int reverse,
                                    const float *pk, float *a, ptrdiff_t SH, const float *bias,
                                    const float *bhn, float *h, float *c, float *out, float *cs,
                                    float *gh, const float *x, ptrdiff_t nin, const float *pk_ih,
                                    float *gx, int *progress, int *wait_on, int *sleepers,
                                    ptrdiff_t chunk, volatile ptrdiff_t *stop)
{
    ptrdiff_t G = mode == 2 ? 4 : mode == 3 ? 3 : 1, GH = G * H;
    ptrdiff_t panels = (GH + FRK_NR - 1) / FRK_NR;
    const float *hp = h; /* h_{t-1}: the previous output row, h0 at first */
    float *gnext = gx;
    int fuse = pk_ih && !wait_on;
    if (fuse && T > 0)
        FR_ISA(fr_gemm_rows)(1, GH, nin, x + (reverse ? T - 1 : 0) * nin, nin, pk_ih, gnext,
                             GH, 0, 0, panels);
    for (ptrdiff_t s = 0; s < T; s++) {
        if (fr_stop_before(stop, s, 0))
            break;
        ptrdiff_t t = reverse ? T - 1 - s : s;
        float *o = out + t * H, *ar;
        const float *ain;
        if (wait_on && s % chunk == 0) {
            ptrdiff_t end = s + chunk < T ? s + chunk : T;
            fr_wait_at_least(wait_on, (int)end, sleepers);
            FR_ISA(fr_gemm_rows)(end - s, GH, nin, x + s * nin, nin, pk_ih, a + s * SH, SH, 0,
                                 0, panels);
        }
        if (fuse) {
            ain = gnext;
            ar = a ? a + t * SH : NULL;
            gnext = gnext == gx ? gx + SH : gx;
        } else {
            ain = ar = a + t * SH;
        }
        FR_ISA(fr_gemm_rows)(1, GH, H, hp, H, pk, gh, GH, 0, 0, panels);
        if (mode <= 1)
            FR_ISA(fr_vrnn_row)(mode == 1, H, ain, gh, bias, o);
        else if (mode == 2)
            FR_ISA(fr_vlstm_row)(H, H, ain, gh, bias, ar, c, cs ? cs + t * H : NULL, o);
        else
            FR_ISA(fr_vgru_row)(H, H, ain, gh, bias, bhn, hp, ar, o);
        if (fuse && s + 1 < T)
            FR_ISA(fr_gemm_rows)(1, GH, nin, x + (reverse ? t - 1 : t + 1) * nin, nin, pk_ih,
                                 gnext, GH, 0, 0, panels);
        hp = o;
        if (progress && (s + 1) % chunk == 0)
            fr_set_and_wake(progress, (int)(s + 1), sleepers);
    }
    if (hp != h)
        memcpy(h, hp, H * sizeof(float));
}

/* iters rounds of FRV_CHAINS independent FMA chains (2 * FRV_N * FRV_CHAINS flops a
 * round): the FMA peak of this ISA on one thread, when the chains cover the latency. */
static float FR_ISA(fr_fma_chains)(ptrdiff_t iters)
{
    frv acc[FRV_CHAINS];
    frv mul = frv_set1(0.999999f), add = frv_set1(1e-7f);
    for (int i = 0; i < FRV_CHAINS; i++)
        acc[i] = frv_set1(1.0f + (float)i);
    for (ptrdiff_t it = 0; it < iters; it++)
        for (int i = 0; i < FRV_CHAINS; i++)
            acc[i] = frv_fma(acc[i], mul, add);
    float lanes[FRV_N], sum = 0.0f;
    for (int i = 0; i < FRV_CHAINS; i++) {
        frv_store(lanes, acc[i]);
        for (int l = 0; l < FRV_N; l++)
            sum += lanes[l];
    }
    return sum;
}

#define FR_STR_(s) #s
#define FR_STR(s) FR_STR_(s)
static const fr_ktable FR_ISA(fr_kernels) = {
    FR_STR(FRV_SUFFIX), FRK_NR, FRV_MR, FRV_N, 2L * FRV_N * FRV_CHAINS,
    FR_ISA(fr_pack), FR_ISA(fr_gemm), FR_ISA(fr_gemm_tn), FR_ISA(fr_few), FR_ISA(fr_few_nn),
    FR_ISA(fr_rnn_row),
    FR_ISA(fr_lstm_row), FR_ISA(fr_gru_row), FR_ISA(fr_seq1_forward), FR_ISA(fr_fma_chains),
    &FR_ISA(fr_rows_f), &FR_ISA(fr_rows_d),
};
#undef FR_STR
#undef FR_STR_

#undef FRK_NR
#undef FRK
#undef FR_ISA
#undef FR_CAT
#undef FR_CAT_
