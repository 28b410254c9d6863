/* The kernel table in C alone, for compilers and targets the Python build does not use
 * here (clang, a cross compiler under qemu): on every level the CPU runs, the packed GEMM
 * and the few-rows kernels against a plain triple loop, the vector LSTM and GRU cells
 * against the scalar rows, and the CPU detection against GCC's own. Prints one line a
 * level; exits 1 on any mismatch. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "_ktable.h"

static uint64_t fr_test_seed = 12345; /* 64 bits also where long has 32 (Windows) */
static float rnd(void)
{
    fr_test_seed = fr_test_seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((fr_test_seed >> 40) & 0xFFFF) / 32768.0f - 1.0f;
}

static int close_enough(double got, double want, double tol)
{
    return fabs(got - want) <= tol * (1.0 + fabs(want));
}

static int check_gemm(void)
{
    static const long ns[] = {1, 3, 4, 5, 8, 9, 16, 17, 33, 64, 65, 130};
    static const long ks[] = {1, 7, 33, 100};
    int bad = 0;
    for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
        for (size_t ik = 0; ik < sizeof ks / sizeof *ks; ik++)
            for (long m = 1; m <= 13; m++) {
                long n = ns[in], k = ks[ik];
                float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
                float *c = malloc(sizeof(float) * m * n);
                float *pk = malloc(sizeof(float) * fr_packed_size(n, k));
                for (long i = 0; i < m * k; i++)
                    a[i] = rnd();
                for (long i = 0; i < n * k; i++)
                    w[i] = rnd();
                fr_pack_panels(1, n, k, w, k, pk, 0, fr_panels(n));
                for (int few = 0; few < 2; few++) {
                    if (few)
                        fr_few(m, k, a, k, w, k, c, n, 0, 0, n);
                    else
                        fr_gemm_panels(m, n, k, a, k, pk, c, n, 0, 0, fr_panels(n));
                    for (long i = 0; i < m; i++)
                        for (long j = 0; j < n; j++) {
                            double want = 0;
                            for (long kk = 0; kk < k; kk++)
                                want += (double)a[i * k + kk] * w[j * k + kk];
                            if (!close_enough(c[i * n + j], want, 1e-5)) {
                                if (bad++ < 5)
                                    printf("  %s m=%ld n=%ld k=%ld [%ld,%ld]: %g != %g\n",
                                           few ? "few" : "gemm", m, n, k, i, j, c[i * n + j],
                                           want);
                            }
                        }
                }
                free(a), free(w), free(c), free(pk);
            }
    return bad;
}

/* C = A @ W with W (k x n) read in place (fr_few_nn) */
static int check_few_nn(void)
{
    static const long ns[] = {1, 3, 4, 5, 8, 9, 16, 17, 33, 65};
    static const long ks[] = {1, 2, 3, 4, 5, 9, 33};
    int bad = 0;
    for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
        for (size_t ik = 0; ik < sizeof ks / sizeof *ks; ik++)
            for (long m = 1; m <= 9; m++) {
                long n = ns[in], k = ks[ik];
                float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * k * n);
                float *c = malloc(sizeof(float) * m * n);
                for (long i = 0; i < m * k; i++)
                    a[i] = rnd();
                for (long i = 0; i < k * n; i++)
                    w[i] = rnd();
                fr_few_nn(m, k, a, k, w, n, c, n, 0, 0, n);
                for (long i = 0; i < m; i++)
                    for (long j = 0; j < n; j++) {
                        double want = 0;
                        for (long kk = 0; kk < k; kk++)
                            want += (double)a[i * k + kk] * w[kk * n + j];
                        if (!close_enough(c[i * n + j], want, 1e-5) && bad++ < 5)
                            printf("  few_nn m=%ld n=%ld k=%ld [%ld,%ld]: %g != %g\n", m, n, k,
                                   i, j, c[i * n + j], want);
                    }
                free(a), free(w), free(c);
            }
    return bad;
}

static int check_cells(void)
{
    int bad = 0;
    for (long H = 1; H <= 40; H += 3) {
        float a[4 * 40], a2[4 * 40], gh[4 * 40], bias[4 * 40], bhn[40], hp[40];
        float c[40], c2[40], o[40], o2[40];
        for (long i = 0; i < 4 * H; i++)
            a[i] = a2[i] = 3 * rnd(), gh[i] = 3 * rnd(), bias[i] = rnd();
        for (long i = 0; i < H; i++)
            bhn[i] = rnd(), hp[i] = rnd(), c[i] = c2[i] = rnd();
        fr_lstm_row_v(H, H, a, gh, bias, a, c, NULL, o);
        lstm_row_f(H, H, a2, gh, bias, c2, o2);
        for (long i = 0; i < H; i++)
            if (!close_enough(o[i], o2[i], 1e-5) || !close_enough(c[i], c2[i], 1e-5))
                if (bad++ < 5)
                    printf("  lstm H=%ld unit %ld: %g != %g\n", H, i, o[i], o2[i]);
        for (long i = 0; i < 4 * H; i++)
            a[i] = a2[i] = 3 * rnd();
        fr_gru_row_v(H, H, a, gh, bias, bhn, hp, a, o);
        gru_after_row_f(H, H, a2, gh, bias, bhn, hp, o2);
        for (long i = 0; i < H; i++)
            if (!close_enough(o[i], o2[i], 1e-5))
                if (bad++ < 5)
                    printf("  gru H=%ld unit %ld: %g != %g\n", H, i, o[i], o2[i]);
    }
    return bad;
}

/* fr_cpu_best_level reads CPUID and XCR0 itself; where the compiler has its own check
 * (GCC's, which reads both too), the two agree. */
static int check_detection(void)
{
#if FR_X86 && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    int want = __builtin_cpu_supports("avx512f")                                   ? 2
               : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                                  : 0;
    if (fr_cpu_best_level() != want) {
        printf("detection: level %d, the compiler's check says %d\n", fr_cpu_best_level(),
               want);
        return 1;
    }
#endif
    return 0;
}

int main(void)
{
    int failed = check_detection();
    for (int level = 0; level <= fr_cpu_best_level(); level++) {
        if (fr_kt_use(level) != 0)
            return 2;
        int bad = check_gemm() + check_few_nn() + check_cells();
        printf("%s: %s\n", fr_kt.name, bad ? "FAILED" : "ok");
        failed |= bad != 0;
    }
    return failed;
}
