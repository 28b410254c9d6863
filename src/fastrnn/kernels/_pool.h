/* One pool of threads for every GEMM and pointwise row of a kernel call.
 *
 * A call runs as one task on nth threads (the caller is thread 0): each thread runs the
 * whole time loop on its share of each step's work, and the threads meet at a barrier
 * where a step needs what another thread wrote. Letting BLAS thread the GEMMs between
 * the steps instead would put two pools on the cores, and their idle workers spin
 * against each other (README, performance notes). So while a call that calls BLAS holds
 * the pool, the BLAS that scipy's cython_blas uses (OpenBLAS with pthreads) is set to one
 * thread, and
 * each of our threads calls it on its own block. Calls on the packed kernels (float32 on
 * every capability, below the size where the portable one hands products to BLAS) make
 * no BLAS call and leave the count alone.
 *
 * The thread count of a call is the BLAS's own setting (OPENBLAS_NUM_THREADS,
 * threadpoolctl limits), capped by fr_threads_cap; where that BLAS cannot be
 * controlled (another BLAS, an OpenMP build), calls run on one thread as before.
 *
 * That setting is one count for the whole process (OpenBLAS with pthreads; its
 * openblas_set_num_threads_local sets the same count), which the user's threadpoolctl
 * limits and other Python threads' calls change too, so the hold composes with them
 * (fr_blas_hold): calls that overlap hold it together, and the count is put back only
 * if it is still the one the hold set. A limit entered while a hold is in force still
 * reads the held one as the count to put back: only calls that call BLAS hold it.
 */
#ifndef FASTRNN_POOL_H
#define FASTRNN_POOL_H

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

/* Sleeping on a word until another thread changes it: a futex on Linux; elsewhere (macOS,
 * the BSDs), or with FR_NO_FUTEX (which the tests build to check this path on Linux), one
 * mutex and condition variable shared by every word: a waker broadcasts under the mutex
 * after its store, and a sleeper checks the word under it before waiting, so no wake-up
 * is lost; the sleepers of other words wake too and wait again. */
#if defined(__linux__) && !defined(FR_NO_FUTEX)
#include <linux/futex.h>
#include <sys/syscall.h>

static inline void fr_sleep_while(int *word, int value)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static inline void fr_wake_all(int *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void fr_sleep_after_fork(void) {}
#else
static pthread_mutex_t fr_sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fr_sleep_cond = PTHREAD_COND_INITIALIZER;

static inline void fr_sleep_while(int *word, int value)
{
    pthread_mutex_lock(&fr_sleep_lock);
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value)
        pthread_cond_wait(&fr_sleep_cond, &fr_sleep_lock);
    pthread_mutex_unlock(&fr_sleep_lock);
}

static inline void fr_wake_all(int *word)
{
    (void)word;
    pthread_mutex_lock(&fr_sleep_lock);
    pthread_cond_broadcast(&fr_sleep_cond);
    pthread_mutex_unlock(&fr_sleep_lock);
}

static inline void fr_sleep_after_fork(void)
{
    pthread_mutex_init(&fr_sleep_lock, NULL);
    pthread_cond_init(&fr_sleep_cond, NULL);
}
#endif

#define FR_MAX_THREADS 64
#define FR_MAX_THREADS_1 (FR_MAX_THREADS + 1)
/* Pause loops before a waiting thread gives way: a worker keeps spinning this long after
 * a task (about 50-100 us) so that the next call of a stacked or bidirectional layer
 * finds it awake, then sleeps on a condition variable; a barrier spins, then sleeps (see
 * fr_wait_while). */
#define FR_IDLE_SPINS 20000
#define FR_BARRIER_SPINS 4000

typedef void (*fr_task_fn)(void *ctx, int tid, int nth);

static struct {
    pthread_mutex_t busy; /* held by the call that owns the workers */
    pthread_mutex_t lock; /* with wake: where idle workers sleep */
    pthread_cond_t wake;
    int started; /* workers created: threads 1 .. started */
    unsigned gen; /* bumped for each task */
    unsigned nudge; /* bumped to wake the workers without a task (fr_pool_nudge) */
    long nudge_spins; /* how long a nudged worker spins */
    int asleep; /* workers waiting on `wake` */
    fr_task_fn fn;
    void *ctx;
    int nth;
    int pending; /* workers that have not yet finished (or skipped) the task */
    int bar_count, bar_sense;
    int pending_sleepers, bar_sleepers; /* threads asleep (or going to sleep) on those */
    int sense[FR_MAX_THREADS];
    int atfork_done;
} fr_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

/* The holds of BLAS at one thread in force (fr_blas_hold), under `lock`. */
static struct {
    pthread_mutex_t lock;
    int count; /* calls holding */
    int saved; /* the count to put back, if `owed` */
    int owed; /* the holds set the count to one: put `saved` back when the last ends */
    int restore_in_child; /* in a child forked while held: the count to put back */
} fr_hold = {PTHREAD_MUTEX_INITIALIZER};

static void (*fr_blas_set_threads)(int) = NULL;
static int (*fr_blas_get_threads)(void) = NULL;
static int fr_threads_cap = FR_MAX_THREADS;

/* One pause loop of the spins above: PAUSE on x86 waits tens of cycles. On aarch64, ISB,
 * which stalls about as long (Rust's spin-loop hint is the same); YIELD is a no-op on
 * cores without SMT, nearly all, and an empty loop ran the spins out many times sooner
 * than on x86, so that workers slept before the next call came. */
static inline void fr_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("isb" ::: "memory");
#endif
}

/* Find openblas_{set,get}_num_threads in the library that defines `blas_symbol` (scipy's
 * sgemm), under the prefixes and suffixes OpenBLAS builds use. Returns 1 if found and
 * the library threads with pthreads (openblas_get_parallel() == 1). */
/* The loaded library that holds `address` (NULL if none), and a symbol of it: dladdr and
 * dlopen(RTLD_NOLOAD) where there is dlfcn; the module of the address on Windows. */
#ifdef _WIN32
static void *fr_library_of(void *address)
{
    HMODULE module = NULL;
    if (!GetModuleHandleExA(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS |
                                GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                            (LPCSTR)address, &module))
        return NULL;
    return (void *)module;
}

static void *fr_library_symbol(void *lib, const char *name)
{
    return (void *)GetProcAddress((HMODULE)lib, name);
}
#else
static void *fr_library_of(void *address)
{
    Dl_info info;
    if (!dladdr(address, &info) || !info.dli_fname)
        return NULL;
    return dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
}

static void *fr_library_symbol(void *lib, const char *name)
{
    return dlsym(lib, name);
}
#endif

static int fr_blas_bind(void *blas_symbol)
{
    static const char *prefixes[] = {"", "scipy_"};
    static const char *suffixes[] = {"", "64_", "_64"};
    char name[64];
    void *lib = blas_symbol ? fr_library_of(blas_symbol) : NULL;
    if (!lib)
        return 0;
    for (int p = 0; p < 2; p++)
        for (int s = 0; s < 3; s++) {
            snprintf(name, sizeof name, "%sopenblas_get_parallel%s", prefixes[p], suffixes[s]);
            int (*parallel)(void) = (int (*)(void))fr_library_symbol(lib, name);
            if (!parallel)
                continue;
            snprintf(name, sizeof name, "%sopenblas_set_num_threads%s", prefixes[p], suffixes[s]);
            void (*set)(int) = (void (*)(int))fr_library_symbol(lib, name);
            snprintf(name, sizeof name, "%sopenblas_get_num_threads%s", prefixes[p], suffixes[s]);
            int (*get)(void) = (int (*)(void))fr_library_symbol(lib, name);
            /* the handle stays open: the library is loaded for as long as scipy is */
            if (!set || !get || parallel() != 1)
                return 0;
            fr_blas_set_threads = set;
            fr_blas_get_threads = get;
            return 1;
        }
    return 0;
}

/* Hold scipy's BLAS at one thread for a call; fr_blas_release ends the hold. Holds of
 * several Python threads' calls overlap: the count is read where it is not one (the
 * first hold, or a hold that finds the count changed by someone else since the last
 * hold set it), saved and set to one; when the last hold ends, the saved count is put
 * back only if the count is still one: a count the user set meanwhile (threadpoolctl)
 * stays. */
static void fr_blas_hold(void)
{
    pthread_mutex_lock(&fr_hold.lock);
    int n = fr_blas_get_threads();
    if (n != 1) {
        fr_hold.saved = n;
        fr_hold.owed = 1;
        fr_blas_set_threads(1);
    }
    fr_hold.count++;
    pthread_mutex_unlock(&fr_hold.lock);
}

static void fr_blas_release(void)
{
    pthread_mutex_lock(&fr_hold.lock);
    if (--fr_hold.count == 0 && fr_hold.owed) {
        if (fr_blas_get_threads() == 1)
            fr_blas_set_threads(fr_hold.saved);
        fr_hold.owed = 0;
    }
    pthread_mutex_unlock(&fr_hold.lock);
}

/* Waiting: spin a while (the partner is usually microseconds away), then sleep on the
 * word (fr_sleep_while), so that a thread whose partner lost its core to another process
 * gives the core up instead of yielding in a loop (under load, sched_yield loops made a
 * training step far slower than its peers: README, performance notes). */
/* Waits that outlasted the spinning and slept: a partner that keeps arriving late at a
 * barrier has lost its core to another process (the units split reads this). */
static long fr_slept_waits = 0;

static void fr_wait_while(int *word, int value, int *sleepers)
{
    for (long i = 0; __atomic_load_n(word, __ATOMIC_ACQUIRE) == value; i++) {
        if (i < FR_BARRIER_SPINS) {
            fr_pause();
        } else {
            if (i == FR_BARRIER_SPINS)
                __atomic_add_fetch(&fr_slept_waits, 1, __ATOMIC_RELAXED);
            /* announced before the sleep reads the word: a waker that changed the word
             * before this increment is seen by the sleep, one after it sees the count */
            __atomic_add_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
            fr_sleep_while(word, value);
            __atomic_sub_fetch(sleepers, 1, __ATOMIC_RELAXED);
        }
    }
}

/* Store `value` in *word and wake its sleepers, if any: a wake costs a system call
 * (README, performance notes), which the units split paid at every step's barrier while
 * nobody slept. */
static void fr_set_and_wake(int *word, int value, int *sleepers)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) > 0)
        fr_wake_all(word);
}

/* Wait until *word (a count that only grows, fr_set_and_wake) reaches `value`: a layer's
 * loop waiting on the rows of the layer below, which another thread is computing. */
static void fr_wait_at_least(int *word, int value, int *sleepers)
{
    int v;
    while ((v = __atomic_load_n(word, __ATOMIC_ACQUIRE)) < value)
        fr_wait_while(word, v, sleepers);
}
static void fr_barrier(int tid, int nth)
{
    if (nth <= 1)
        return;
    int s = fr_pool.sense[tid] ^= 1;
    if (__atomic_add_fetch(&fr_pool.bar_count, 1, __ATOMIC_ACQ_REL) == nth) {
        __atomic_store_n(&fr_pool.bar_count, 0, __ATOMIC_RELAXED);
        fr_set_and_wake(&fr_pool.bar_sense, s, &fr_pool.bar_sleepers);
        return;
    }
    fr_wait_while(&fr_pool.bar_sense, !s, &fr_pool.bar_sleepers);
}

static void *fr_worker(void *arg)
{
    int tid = (int)((uintptr_t)arg & 0xFFFF);
    unsigned seen = (unsigned)((uintptr_t)arg >> 16);
    for (;;) {
        unsigned g;
        long i = 0, spins = FR_IDLE_SPINS;
        while ((g = __atomic_load_n(&fr_pool.gen, __ATOMIC_ACQUIRE)) == seen) {
            if (++i < spins) {
                fr_pause();
                continue;
            }
            pthread_mutex_lock(&fr_pool.lock);
            unsigned nudged = fr_pool.nudge;
            __atomic_add_fetch(&fr_pool.asleep, 1, __ATOMIC_SEQ_CST);
            while ((g = __atomic_load_n(&fr_pool.gen, __ATOMIC_ACQUIRE)) == seen &&
                   fr_pool.nudge == nudged)
                pthread_cond_wait(&fr_pool.wake, &fr_pool.lock);
            __atomic_sub_fetch(&fr_pool.asleep, 1, __ATOMIC_SEQ_CST);
            spins = fr_pool.nudge_spins > FR_IDLE_SPINS ? fr_pool.nudge_spins : FR_IDLE_SPINS;
            pthread_mutex_unlock(&fr_pool.lock);
            i = 0; /* woken by a task, or nudged: spin again */
        }
        seen = g;
        /* Every started worker answers every task, taking part or not: the next task
         * cannot begin (and change fn, ctx, nth) before all have read this one's. */
        if (tid < fr_pool.nth)
            fr_pool.fn(fr_pool.ctx, tid, fr_pool.nth);
        if (__atomic_sub_fetch(&fr_pool.pending, 1, __ATOMIC_SEQ_CST) == 0 &&
            __atomic_load_n(&fr_pool.pending_sleepers, __ATOMIC_SEQ_CST) > 0)
            fr_wake_all(&fr_pool.pending);
    }
    return NULL;
}

/* A forked child has none of the parent's workers: start again from none. If the fork
 * came while other threads' calls held BLAS at one thread, the child's BLAS is still set
 * to one thread and none of those calls runs in the child; fr_pool_after_fork_child puts
 * the count back from ordinary code (the child side of an atfork handler is no place to
 * call into OpenBLAS), as the last hold's end would have. */
static void fr_pool_atfork_child(void)
{
    pthread_mutex_init(&fr_pool.busy, NULL);
    pthread_mutex_init(&fr_pool.lock, NULL);
    pthread_cond_init(&fr_pool.wake, NULL);
    fr_pool.started = 0;
    fr_pool.asleep = 0;
    pthread_mutex_init(&fr_hold.lock, NULL);
    fr_sleep_after_fork();
    fr_hold.restore_in_child = fr_hold.count > 0 && fr_hold.owed ? fr_hold.saved : 0;
    fr_hold.count = 0;
    fr_hold.owed = 0;
}

static void fr_pool_after_fork_child(void)
{
    if (fr_hold.restore_in_child > 0 && fr_blas_get_threads && fr_blas_get_threads() == 1)
        fr_blas_set_threads(fr_hold.restore_in_child);
    fr_hold.restore_in_child = 0;
}

/* Whether every worker is awake (spinning or working), not waiting on `wake`. */
static int fr_pool_warm(void)
{
    return fr_pool.started > 0 && __atomic_load_n(&fr_pool.asleep, __ATOMIC_SEQ_CST) == 0;
}

/* Wake the sleeping workers without a task: they spin `spins` pause loops (at least
 * FR_IDLE_SPINS), so that a call that comes within that time finds them awake. */
static void fr_pool_nudge(long spins)
{
    pthread_mutex_lock(&fr_pool.lock);
    fr_pool.nudge++;
    fr_pool.nudge_spins = spins;
    pthread_cond_broadcast(&fr_pool.wake);
    pthread_mutex_unlock(&fr_pool.lock);
}

/* What a call holds until fr_pool_end(held): the workers, and BLAS at one thread. */
#define FR_HELD_POOL 1
#define FR_HELD_BLAS 2

/* Take the pool for a call that could use up to `want` threads. Returns the thread count
 * to run with; with warm_spins > 0, one unless the workers are awake (woken now for the
 * next call if not, to spin warm_spins pause loops: fr_pool_nudge). A call that finds the
 * pool taken (another Python thread's) runs on one thread. *held gets FR_HELD_POOL when
 * the call runs on the pool's threads. BLAS is not held here: a call that will call BLAS
 * holds it with fr_pool_hold_blas once it knows (its plan depends on the thread count),
 * and a call that never calls BLAS leaves the count alone, so that the limits other
 * threads set meanwhile (threadpoolctl) are theirs to keep. */
static int fr_pool_begin(int want, long warm_spins, int *held)
{
    *held = 0;
    if (want > fr_threads_cap)
        want = fr_threads_cap;
    if (want > FR_MAX_THREADS)
        want = FR_MAX_THREADS;
    if (want <= 1 || !fr_blas_get_threads)
        return 1;
    if (pthread_mutex_trylock(&fr_pool.busy) != 0)
        return 1;
    int blas = fr_blas_get_threads();
    int nth = blas < want ? blas : want;
    if (nth < 1)
        nth = 1;
#ifndef _WIN32 /* no fork there */
    if (!fr_pool.atfork_done) {
        pthread_atfork(NULL, NULL, fr_pool_atfork_child);
        fr_pool.atfork_done = 1;
    }
#endif
    while (fr_pool.started < nth - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        uintptr_t arg = ((uintptr_t)fr_pool.gen << 16) | (uintptr_t)(fr_pool.started + 1);
        int err = pthread_create(&th, &attr, fr_worker, (void *)arg);
        pthread_attr_destroy(&attr);
        if (err)
            break;
        fr_pool.started++;
    }
    if (nth > fr_pool.started + 1)
        nth = fr_pool.started + 1;
    if (nth > 1 && warm_spins > 0 && !fr_pool_warm()) {
        fr_pool_nudge(warm_spins);
        nth = 1;
    }
    if (nth <= 1) {
        pthread_mutex_unlock(&fr_pool.busy);
        return 1;
    }
    *held = FR_HELD_POOL;
    return nth;
}

/* Hold BLAS at one thread (fr_blas_hold) until fr_pool_end(*held), for a call that
 * calls BLAS: from the pool's threads, where BLAS's own threads would oversubscribe the
 * cores, or from one thread at a size where they would wake and then spin about 0.1 s
 * after their last product (OpenBLAS's idle threads), sharing a core with the next
 * threaded call (a units split after such a call ran far slower: README, performance
 * notes). */
static void fr_pool_hold_blas(int *held)
{
    if (!fr_blas_get_threads || (*held & FR_HELD_BLAS))
        return;
    fr_blas_hold();
    *held |= FR_HELD_BLAS;
}

static void fr_pool_end(int held)
{
    if (held & FR_HELD_BLAS)
        fr_blas_release();
    if (held & FR_HELD_POOL)
        pthread_mutex_unlock(&fr_pool.busy);
}

/* Run fn(ctx, tid, nth) on threads 0 .. nth-1 (this one is 0) and wait for all. */
static void fr_pool_run(fr_task_fn fn, void *ctx, int nth)
{
    if (nth <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    fr_pool.fn = fn;
    fr_pool.ctx = ctx;
    fr_pool.nth = nth;
    fr_pool.bar_count = 0;
    fr_pool.bar_sense = 0;
    for (int t = 0; t < nth; t++)
        fr_pool.sense[t] = 0;
    __atomic_store_n(&fr_pool.pending, fr_pool.started, __ATOMIC_RELAXED);
    pthread_mutex_lock(&fr_pool.lock);
    __atomic_add_fetch(&fr_pool.gen, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&fr_pool.wake);
    pthread_mutex_unlock(&fr_pool.lock);
    fn(ctx, 0, nth);
    int left;
    while ((left = __atomic_load_n(&fr_pool.pending, __ATOMIC_ACQUIRE)) > 0)
        fr_wait_while(&fr_pool.pending, left, &fr_pool.pending_sleepers);
}

/* [lo, hi) of n items for thread tid of nth, in multiples of `align` but the last. */
static inline void fr_split(long n, long align, int tid, int nth, long *lo, long *hi)
{
    long units = (n + align - 1) / align;
    long a = units * tid / nth, b = units * (tid + 1) / nth;
    *lo = a * align < n ? a * align : n;
    *hi = b * align < n ? b * align : n;
}

#endif
