/* The thread pool of _pool.h alone: tasks on 4 threads that meet at barriers and hand
 * counts from thread to thread (fr_set_and_wake / fr_wait_at_least), with pauses long
 * enough that the waiting threads go to sleep on their words, checked against what a
 * single thread computes. Built with each way of sleeping _os.h has: the Linux futex,
 * Windows' WaitOnAddress, and with -DFR_NO_FUTEX the mutex and condition variable of
 * other systems. Prints "pool: ok" and the way. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "_pool.h"

#define THREADS 4
#define ROUNDS 300

static int fake_blas_threads(void) { return THREADS; }
static void fake_blas_set(int n) { (void)n; }

static struct {
    long sums[THREADS];
    long shared[ROUNDS + 1];
    int progress;
    int sleepers;
} t;

static void nap(long ns)
{
#ifdef _WIN32
    Sleep((DWORD)(ns / 1000000 + 1)); /* whole milliseconds there */
#else
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
#endif
}

static void task(void *ctx, int tid, int nth)
{
    (void)ctx;
    for (int r = 0; r < ROUNDS; r++) {
        /* every 10th round one thread dawdles: the others reach the barrier, spin out
         * and sleep on it */
        if (r % 10 == 0 && tid == r / 10 % nth)
            nap(200000);
        t.sums[tid] += r * (tid + 1);
        fr_barrier(tid, nth);
        if (tid == 0) {
            long total = 0;
            for (int k = 0; k < nth; k++)
                total += t.sums[k];
            t.shared[r] = total;
            if (r % 7 == 0)
                nap(100000); /* the next waiters sleep on `progress` */
            fr_set_and_wake(&t.progress, r + 1, &t.sleepers);
        } else {
            fr_wait_at_least(&t.progress, r + 1, &t.sleepers);
            if (t.shared[r] == 0 && r > 0)
                abort(); /* read before thread 0 wrote it */
        }
        fr_barrier(tid, nth);
    }
}

int main(void)
{
    fr_blas_get_threads = fake_blas_threads;
    fr_blas_set_threads = fake_blas_set;
    for (int call = 0; call < 3; call++) {
        int held = 0;
        int nth = fr_pool_begin(THREADS, 0, &held);
        if (nth != THREADS) {
            printf("pool: %d threads, wanted %d\n", nth, THREADS);
            return 1;
        }
        for (int k = 0; k < THREADS; k++)
            t.sums[k] = 0;
        t.progress = 0;
        fr_pool_run(task, NULL, nth);
        fr_pool_end(held);
        for (int r = 0; r < ROUNDS; r++) {
            long want = 0;
            for (int k = 0; k < THREADS; k++)
                want += (long)(k + 1) * r * (r + 1) / 2;
            if (t.shared[r] != want) {
                printf("pool: round %d: %ld, wanted %ld\n", r, t.shared[r], want);
                return 1;
            }
        }
        nap(5000000); /* the workers go to sleep between calls */
    }
    printf("pool: ok (%s; %ld waits slept)\n", FR_SLEEP_KIND, (long)fr_slept_waits);
    return fr_slept_waits > 0 ? 0 : 2;
}
