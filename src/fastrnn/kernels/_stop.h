/* Stopping a call early, for Ctrl-C: the calling thread polls Python's signal handlers
 * every FR_POLL_SECONDS of work, and when one raises (KeyboardInterrupt), the call's
 * loops stop at their next step and the call raises what the handler raised.
 *
 * Each call has a stop word (PTRDIFF_MAX while it runs on): a loop stops before its step i
 * (counted from 0 in the order it visits them) once i >= *stop. The thread that sees the
 * signal sets the word to `stamp`: 0 where the threads do not meet between steps (each
 * stops at once), i + 1 where they meet at every step (the units split): every thread
 * then finishes step i, passes the barrier after it and stops before step i + 1, so none
 * waits at a barrier the others never reach (the word is written before that barrier
 * and read after it).
 *
 * Only the thread that made the call, and only when it is Python's main thread (the
 * only one that runs signal handlers), polls: fr_polls is set for it around the call.
 * Taking the GIL to poll can wait for another Python thread to let it go (up to its
 * switch interval, 5 ms), hence a poll every 10 ms of work, the clock read at every
 * 32nd step of a loop.
 */
#ifndef FASTRNN_STOP_H
#define FASTRNN_STOP_H

#include <limits.h>
#include <stdint.h>

#include "_os.h"

/* A call's stop word, alone on its cache line: every thread reads it at every step, and
 * beside the caller's other locals the line travelled between the cores at each one. */
typedef struct {
    _Alignas(64) volatile ptrdiff_t word;
    char rest_of_line[64 - sizeof(ptrdiff_t)];
} fr_stop_word;

#define FR_POLL_SECONDS 0.01
#define FR_POLL_STEPS 32 /* steps between looks at the clock (a power of two) */

/* Set by _kernels.pyx: takes the GIL, runs the pending signal handlers; 1 if one raised
 * (its exception saved for the caller to raise). */
static int (*fr_signal_poll)(void) = NULL;
/* thread-local: read only once every FR_POLL_STEPS steps, as in a shared library each
 * read may be a call (__tls_get_addr), which cost the smallest layers a share of each
 * step (README, performance notes) */
static _Thread_local int fr_polls;     /* this thread polls (the calling thread of a call) */
static _Thread_local double fr_poll_last;

static void fr_poll_now(volatile ptrdiff_t *stop, ptrdiff_t stamp)
{
    double now = fr_monotonic();
    if (fr_poll_last == 0.0)
        fr_poll_last = now; /* the first look of the call starts its clock */
    if (now - fr_poll_last < FR_POLL_SECONDS)
        return;
    fr_poll_last = now;
    if (fr_signal_poll && fr_signal_poll() && stamp < *stop)
        *stop = stamp;
}

/* Whether a loop should stop before its step i; stop NULL: never. */
static inline int fr_stop_before(volatile ptrdiff_t *stop, ptrdiff_t i, ptrdiff_t stamp)
{
    if (!stop)
        return 0;
    if ((i & (FR_POLL_STEPS - 1)) == 0 && fr_polls)
        fr_poll_now(stop, stamp);
    return i >= *stop;
}

/* Whether the call has stopped, polling first if it is time: between the blocks of the
 * merged GEMMs after the loops, where the threads do not meet. */
static inline int fr_stop_poll(volatile ptrdiff_t *stop)
{
    if (!stop)
        return 0;
    if (fr_polls)
        fr_poll_now(stop, 0);
    return *stop != PTRDIFF_MAX;
}

/* Around a call on the calling thread: whether it polls; its clock starts at the first
 * look (fr_poll_now). */
static inline void fr_poll_begin(int polls)
{
    fr_polls = polls;
    fr_poll_last = 0.0;
}

#endif
