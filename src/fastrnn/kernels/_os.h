/* What the kernels take from the operating system, in one place: locks and condition
 * variables, detached threads, sleeping on a word until another thread changes it, the
 * loaded library that holds an address and its symbols, a monotonic clock, memory on a
 * cache line, and a handler for the child of a fork. One way on POSIX systems (Linux,
 * macOS, the BSDs: pthreads, dlfcn) and one on Windows (SRW locks and condition
 * variables, _beginthreadex, WaitOnAddress, the module of an address).
 *
 * The rest of the kernels is C11 with GCC/Clang builtins (__atomic, vector extensions,
 * target regions), which gcc, clang, clang-cl and mingw-w64 all compile. */
#ifndef FASTRNN_OS_H
#define FASTRNN_OS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <malloc.h>
#include <process.h>
#else
#include <dlfcn.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#endif

/* ---- locks and condition variables ---- */
#ifdef _WIN32
typedef SRWLOCK fr_mutex_t;
typedef CONDITION_VARIABLE fr_cond_t;
#define FR_MUTEX_INIT SRWLOCK_INIT
#define FR_COND_INIT CONDITION_VARIABLE_INIT
static inline void fr_mutex_init(fr_mutex_t *m) { InitializeSRWLock(m); }
static inline void fr_mutex_lock(fr_mutex_t *m) { AcquireSRWLockExclusive(m); }
static inline void fr_mutex_unlock(fr_mutex_t *m) { ReleaseSRWLockExclusive(m); }
/* 1 if taken */
static inline int fr_mutex_trylock(fr_mutex_t *m) { return TryAcquireSRWLockExclusive(m) != 0; }
static inline void fr_cond_init(fr_cond_t *c) { InitializeConditionVariable(c); }
static inline void fr_cond_wait(fr_cond_t *c, fr_mutex_t *m)
{
    SleepConditionVariableSRW(c, m, INFINITE, 0);
}
static inline void fr_cond_broadcast(fr_cond_t *c) { WakeAllConditionVariable(c); }
#else
typedef pthread_mutex_t fr_mutex_t;
typedef pthread_cond_t fr_cond_t;
#define FR_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
#define FR_COND_INIT PTHREAD_COND_INITIALIZER
static inline void fr_mutex_init(fr_mutex_t *m) { pthread_mutex_init(m, NULL); }
static inline void fr_mutex_lock(fr_mutex_t *m) { pthread_mutex_lock(m); }
static inline void fr_mutex_unlock(fr_mutex_t *m) { pthread_mutex_unlock(m); }
static inline int fr_mutex_trylock(fr_mutex_t *m) { return pthread_mutex_trylock(m) == 0; }
static inline void fr_cond_init(fr_cond_t *c) { pthread_cond_init(c, NULL); }
static inline void fr_cond_wait(fr_cond_t *c, fr_mutex_t *m) { pthread_cond_wait(c, m); }
static inline void fr_cond_broadcast(fr_cond_t *c) { pthread_cond_broadcast(c); }
#endif

/* ---- detached threads: FR_THREAD_FN(name) { ...; FR_THREAD_END; } ---- */
#ifdef _WIN32
#define FR_THREAD_FN(name) static unsigned __stdcall name(void *arg)
#define FR_THREAD_END return 0
typedef unsigned(__stdcall *fr_thread_fn)(void *);
/* 0 on success */
static int fr_thread_start(fr_thread_fn fn, void *arg)
{
    uintptr_t handle = _beginthreadex(NULL, 0, fn, arg, 0, NULL);
    if (handle == 0)
        return -1;
    CloseHandle((HANDLE)handle); /* the thread runs on, detached */
    return 0;
}
#else
#define FR_THREAD_FN(name) static void *name(void *arg)
#define FR_THREAD_END return NULL
typedef void *(*fr_thread_fn)(void *);
static int fr_thread_start(fr_thread_fn fn, void *arg)
{
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&th, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return err ? -1 : 0;
}
#endif

/* ---- sleeping on a word until another thread changes it ----
 * fr_sleep_while(word, value) returns once *word may differ from value (it can return
 * early: callers check and loop); fr_wake_all(word) wakes every sleeper of the word after
 * the caller's store. A futex on Linux, WaitOnAddress on Windows (8 and later, as
 * CPython needs); elsewhere (macOS, the BSDs), or with FR_NO_FUTEX (which the tests build
 * to check this path where the others exist), one mutex and condition variable shared by
 * every word: a waker broadcasts under the mutex after its store, and a sleeper checks
 * the word under it before waiting, so no wake-up is lost; the sleepers of other words
 * wake too and wait again. */
#if defined(__linux__) && !defined(FR_NO_FUTEX)
#include <sys/syscall.h>
#if defined(__has_include)
#if __has_include(<linux/futex.h>)
#include <linux/futex.h>
#endif
#endif
#ifndef FUTEX_WAIT_PRIVATE /* the kernel's ABI, where its headers are not installed (musl) */
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129
#endif
#define FR_SLEEP_KIND "futex"

static inline void fr_sleep_while(int *word, int value)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static inline void fr_wake_all(int *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void fr_sleep_after_fork(void) {}
#elif defined(_WIN32) && !defined(FR_NO_FUTEX)
/* in Synchronization.lib (setup.py links it; MSVC and clang-cl also read this) */
#ifdef _MSC_VER
#pragma comment(lib, "synchronization.lib")
#endif
#define FR_SLEEP_KIND "WaitOnAddress"

static inline void fr_sleep_while(int *word, int value)
{
    WaitOnAddress((volatile VOID *)word, &value, sizeof value, INFINITE);
}

static inline void fr_wake_all(int *word) { WakeByAddressAll((PVOID)word); }

static inline void fr_sleep_after_fork(void) {}
#else
#define FR_SLEEP_KIND "condition variable"
static fr_mutex_t fr_sleep_lock = FR_MUTEX_INIT;
static fr_cond_t fr_sleep_cond = FR_COND_INIT;

static inline void fr_sleep_while(int *word, int value)
{
    fr_mutex_lock(&fr_sleep_lock);
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value)
        fr_cond_wait(&fr_sleep_cond, &fr_sleep_lock);
    fr_mutex_unlock(&fr_sleep_lock);
}

static inline void fr_wake_all(int *word)
{
    (void)word;
    fr_mutex_lock(&fr_sleep_lock);
    fr_cond_broadcast(&fr_sleep_cond);
    fr_mutex_unlock(&fr_sleep_lock);
}

static inline void fr_sleep_after_fork(void)
{
    fr_mutex_init(&fr_sleep_lock);
    fr_cond_init(&fr_sleep_cond);
}
#endif

/* One pause loop of the pool's spins: PAUSE on x86 waits tens of cycles. On aarch64, ISB,
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

/* ---- the child of a fork (POSIX): fn runs in it, once registered ---- */
static inline void fr_on_fork_child(void (*fn)(void))
{
#ifdef _WIN32
    (void)fn; /* no fork there */
#else
    pthread_atfork(NULL, NULL, fn);
#endif
}

/* ---- the loaded library that holds `address` (NULL if none), and its symbols ---- */
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
    /* the handle stays open: the library is loaded for as long as its user is */
    return dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
}

static void *fr_library_symbol(void *lib, const char *name) { return dlsym(lib, name); }
#endif

/* ---- seconds on a monotonic clock ---- */
static inline double fr_monotonic(void)
{
#ifdef _WIN32
    static double tick = 0.0; /* seconds a count; the frequency is fixed at boot */
    LARGE_INTEGER now;
    if (tick == 0.0) {
        LARGE_INTEGER freq;
        QueryPerformanceFrequency(&freq);
        tick = 1.0 / (double)freq.QuadPart;
    }
    QueryPerformanceCounter(&now);
    return (double)now.QuadPart * tick;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

/* ---- nbytes starting on a cache line (NULL if out of memory); fr_free_lines frees ---- */
static inline void *fr_alloc_lines(size_t nbytes)
{
#ifdef _WIN32
    return _aligned_malloc(nbytes ? nbytes : 1, 64);
#else
    void *p = NULL;
    if (posix_memalign(&p, 64, nbytes) != 0)
        return NULL;
    return p;
#endif
}

static inline void fr_free_lines(void *p)
{
#ifdef _WIN32
    _aligned_free(p);
#else
    free(p);
#endif
}

#endif
