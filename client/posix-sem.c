/*
 * Semaphores and locks of a posix channel: one semaphore file each,
 * mapped as a PosixSemFile (proto/posix.h, client/posix-map.c). sem.c
 * checks the index, the access (an ro handle maps them read-only, so it
 * gets -EACCES here before any write could fault) and a ring's removal
 * first, and passes the set's index.
 *
 * POSIX semaphores have no EIDRM: the broker marks `state` removed and
 * posts once before it unlinks the file. So every wait is cut into slices
 * of at most PSEM_POLL_MS and looks at `state` between them and when it
 * wakes; a waiter that woke on a removed semaphore posts once (the next
 * waiter wakes too) and says -EIDRM. A removal is seen within a slice
 * even if a foreign program took the broker's post, and so is one nobody
 * marked (the files removed while the broker was away).
 *
 * shmb_lock() is the file's robust process-shared mutex, not the
 * semaphore: POSIX semaphores have no SEM_UNDO, and a robust mutex is
 * what the kernel hands on when its holder dies (EOWNERDEAD). As with
 * System V's SEM_UNDO, the next locker is then simply given the lock.
 */

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <time.h>

#include "client/shmbroker-internal.h"
#include "proto/posix.h"
#include "proto/sem-t.h"

/* The highest value a System V semaphore takes (the kernel's SEMVMX, which no header exports). */
#define SEMVMX_SYSV 32767

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)

/* The end of a wait's deadline on CLOCK_MONOTONIC; timeout_ms -1: none. */
static int64_t deadline_of(int timeout_ms) {
        return timeout_ms < 0 ? INT64_MAX : client_now_ns() + timeout_ms * NS_PER_MS;
}

/* The end of the next slice: the deadline, or PSEM_POLL_MS from now if that comes first. */
static struct timespec slice_end(int64_t deadline) {
        int64_t end = client_now_ns() + PSEM_POLL_MS * NS_PER_MS;

        if (deadline < end)
                end = deadline;
        return (struct timespec) { .tv_sec = end / NS_PER_S, .tv_nsec = end % NS_PER_S };
}

static bool removed(PosixSemFile *f) {
        return __atomic_load_n(&f->state, __ATOMIC_ACQUIRE) == PSEM_STATE_REMOVED;
}

/*
 * Between slices: also a channel removed while the broker was away (an rm
 * after a crash), which nobody marked, as the kernel tells it
 * (channel_check_gone(): a stale handle, or an unlinked segment file).
 */
static bool removed_now(shmb_channel *ch, PosixSemFile *f) {
        return removed(f) || channel_check_gone(ch) == -EIDRM;
}

int posix_sem_wait(shmb_channel *ch, unsigned idx, int timeout_ms) {
        PosixSemFile *f = ch->psems[idx];
        int64_t deadline = deadline_of(timeout_ms);

        if (removed(f))
                return -EIDRM;
        for (;;) {
                struct timespec ts = slice_end(deadline);
                /* Not glibc's sem_*(): any rw opener may write the sem_t, and glibc aborts on some words (proto/sem-t.h). */
                int r = timeout_ms == 0 ? psem_trywait(&f->sem) : psem_wait_until(&f->sem, &ts);

                if (r == 0) {
                        if (!removed(f))
                                return 0;
                        (void) psem_post(&f->sem, 0);   /* the broker's wake-up (or a late post): on to the next waiter */
                        return -EIDRM;
                }
                if (r == -EAGAIN)
                        return -EAGAIN;                 /* timeout_ms 0 */
                if (r == -EINTR && (removed(f) || channel_check_gone_every(ch, PSEM_POLL_MS) == -EIDRM))
                        return -EIDRM;
                if (r != -ETIMEDOUT)
                        return r;                       /* EINTR: a signal ends the wait, as System V's does */
                if (removed_now(ch, f))
                        return -EIDRM;
                if (client_now_ns() >= deadline)
                        return -ETIMEDOUT;
        }
}

int posix_sem_post(shmb_channel *ch, unsigned idx) {
        PosixSemFile *f = ch->psems[idx];
        int r;

        if (removed(f))
                return -EIDRM;
        /*
         * System V's cap (SEMVMX), so that a program bounded by it works on
         * both kinds. sem_t has no compare-and-post: posts that race at the
         * cap may pass it (the manual says so).
         */
        if (psem_value(&f->sem) >= SEMVMX_SYSV)
                return -ERANGE;
        r = psem_post(&f->sem, 0);
        /* Past SEM_VALUE_MAX: System V's semop() says ERANGE for the same. */
        return r == -EOVERFLOW ? -ERANGE : r;
}

/*
 * Whether the lock is still of the kind the broker made. glibc takes a
 * mutex's kind from its words, here in a file every rw opener may write,
 * and aborts on some (a priority-inheriting robust mutex whose owner word
 * names no thread fails "Assertion e != ESRCH || !robust"). With the kind
 * the broker made, the other words only make a lock wait or fail (a probe
 * of 3000 random fillings: no abort, no wait past its timeout). So a call
 * refuses any other kind; a writer that rewrites it in the instant between
 * this look and glibc's can still end a locker (libshmbroker(3)).
 */
static bool lock_kind_ok(const PosixSemFile *f) {
#ifdef __GLIBC__
        static int expected = -1;       /* the kind psem_lock_init() gives, asked once */
        int k = __atomic_load_n(&expected, __ATOMIC_RELAXED);

        if (k < 0) {
                pthread_mutex_t m;

                if (psem_lock_init(&m) != 0)
                        return true;    /* cannot tell: as before */
                k = m.__data.__kind;
                (void) pthread_mutex_destroy(&m);
                __atomic_store_n(&expected, k, __ATOMIC_RELAXED);
        }
        return __atomic_load_n(&f->lock.__data.__kind, __ATOMIC_RELAXED) == k;
#else
        (void) f;
        return true;
#endif
}

int posix_lock(shmb_channel *ch, unsigned idx, int timeout_ms) {
        PosixSemFile *f = ch->psems[idx];
        int64_t deadline = deadline_of(timeout_ms);

        if (removed(f))
                return -EIDRM;
        for (;;) {
                struct timespec ts = slice_end(deadline);
                int r;

                if (!lock_kind_ok(f))
                        return -EPROTO;
                r = timeout_ms == 0 ? pthread_mutex_trylock(&f->lock) :
                                          pthread_mutex_clocklock(&f->lock, CLOCK_MONOTONIC, &ts);

                /* Its holder died holding it: ours now, made usable again (what SEM_UNDO gives System V). */
                if (r == EOWNERDEAD) {
                        r = pthread_mutex_consistent(&f->lock);
                        if (r != 0) {
                                (void) pthread_mutex_unlock(&f->lock);
                                return -r;
                        }
                }
                if (r == 0) {
                        if (!removed(f))
                                return 0;
                        (void) pthread_mutex_unlock(&f->lock);
                        return -EIDRM;
                }
                if (r == EBUSY)
                        return -EAGAIN;                 /* trylock: timeout_ms 0 */
                if (r != ETIMEDOUT)
                        return -r;
                if (removed_now(ch, f))
                        return -EIDRM;
                if (client_now_ns() >= deadline)
                        return -ETIMEDOUT;
        }
}

int posix_unlock(shmb_channel *ch, unsigned idx) {
        PosixSemFile *f = ch->psems[idx];
        int r;

        if (!lock_kind_ok(f))
                return -EPROTO;
        /* Given back whatever became of the channel, but a removal is told as on System V
         * (and rather than -EPERM without the lock): what was written under it went nowhere. */
        r = -pthread_mutex_unlock(&f->lock);
        return removed(f) ? -EIDRM : r;
}
