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
 * shmb_lock() takes the file's lock word, not the semaphore (POSIX
 * semaphores have no SEM_UNDO): it stores the handle's holder token there
 * (proto/posix.h). A locker that finds the word naming a token the broker
 * marked DEAD takes it over, as System V's SEM_UNDO gives a dead holder's
 * lock to the next locker. The word is only a number compared with the
 * table: whatever a writer puts in it, no call stores anywhere but in it.
 */

#include <errno.h>
#include <semaphore.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"
#include "proto/broadcast.h"
#include "proto/posix.h"
#include "proto/ring.h"
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

/* The holder table that the tokens in ch's lock words are from (proto/posix.h), and its entries. */
static const RingHolder *lock_holders(const shmb_channel *ch, uint32_t *ret_n) {
        if (ch->info.layout == SHMB_LAYOUT_RING) {
                *ret_n = RING_HOLDERS;
                return ring_holder_at(ch->addr, 0);
        }
        if (ch->info.layout == SHMB_LAYOUT_BROADCAST) {
                *ret_n = BCAST_PUBLISHERS;
                return bcast_publisher_at(ch->addr, 0);
        }
        *ret_n = PSEM_HOLDERS;
        return ch->lock_table;
}

/* Sleep while f's lock word is w, until `at` on CLOCK_MONOTONIC: 0, -ETIMEDOUT or -EINTR. */
static int lock_sleep(PosixSemFile *f, uint32_t w, const struct timespec *at) {
        if (syscall(SYS_futex, &f->lock, FUTEX_WAIT_BITSET, w, at, NULL, FUTEX_BITSET_MATCH_ANY) < 0 && errno != EAGAIN)
                return -errno;
        return 0;
}

/*
 * Give the lock back: only a word that names this handle's hold is ours
 * to clear. Then wake the sleepers, if the word says there may be any.
 */
static int lock_clear(shmb_channel *ch, PosixSemFile *f) {
        uint32_t w = __atomic_load_n(&f->lock, __ATOMIC_RELAXED);

        /* A failed exchange saw a locker mark itself asleep; a writer that keeps changing the word gets -EPERM. */
        for (unsigned tries = 0; tries < 1024; tries++) {
                if (psem_lock_holder(w) == 0 || !channel_token_is_mine(ch, psem_lock_holder(w)))
                        return -EPERM;
                if (__atomic_compare_exchange_n(&f->lock, &w, 0, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                        if (w & PSEM_LOCK_SLEEPERS)
                                psem_lock_wake(f);
                        return 0;
                }
        }
        return -EPERM;
}

int posix_lock(shmb_channel *ch, unsigned idx, int timeout_ms) {
        PosixSemFile *f = ch->psems[idx];
        int64_t deadline = deadline_of(timeout_ms);
        uint32_t n, lost = 0;
        const RingHolder *table = lock_holders(ch, &n);

        /* The lock is the hold's, and a child of fork(2) shares its parent's: it could not be told from it. */
        if (client_inherited(ch->client))
                return -ECHILD;
        if (removed(f))
                return -EIDRM;
        for (;;) {
                /*
                 * Read each time: a rejoin after a broker restart may have given the hold another.
                 * The word sequentially consistent: one whose bit another locker set is slept on
                 * without marking, so the look at its holder below must come after that locker's
                 * mark in the order the broker's fence is in (C11 promises that only from a
                 * seq_cst load; that locker may die before its own second look).
                 */
                uint32_t token = channel_token(ch), w = __atomic_load_n(&f->lock, __ATOMIC_SEQ_CST);
                uint32_t holder = psem_lock_holder(w);
                struct timespec ts;
                int r;

                /*
                 * A hold the broker counts as gone (it had no pidfd of us when our
                 * connection ended) would have the lock taken from under it: it
                 * locks nothing until it has a live token again.
                 */
                if (token == 0 || ring_holders_token_dead(table, n, token))
                        return removed_now(ch, f) ? -EIDRM : -ENOTCONN;
                /*
                 * Free, or its holder is gone (its token DEAD, or no token at all): ours, as SEM_UNDO gives
                 * System V's. Sleepers marked on the word stay marked, so that our unlock wakes them.
                 */
                if (holder == 0 || (!channel_token_is_mine(ch, holder) && ring_holders_token_dead(table, n, holder))) {
                        if (!__atomic_compare_exchange_n(&f->lock, &w, token | (w & PSEM_LOCK_SLEEPERS), false,
                                                         __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                                /* Only a writer that keeps changing the word makes this fail for long: it gets no spin past the timeout. */
                                if (++lost % 1024 == 0 && (timeout_ms == 0 || client_now_ns() >= deadline))
                                        return timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
                                continue;
                        }
                        if (!removed(f))
                                return 0;
                        (void) lock_clear(ch, f);
                        return -EIDRM;
                }
                if (timeout_ms == 0)
                        return -EAGAIN;
                /*
                 * Marked asleep in the word itself, where the holder's unlock exchanges it: a word that
                 * changed meanwhile is looked at again. Then the holder once more, as the broker, which
                 * marks a token dead and then looks for the mark, may have looked before it was set.
                 */
                if (!(w & PSEM_LOCK_SLEEPERS)) {
                        if (!__atomic_compare_exchange_n(&f->lock, &w, w | PSEM_LOCK_SLEEPERS, false, __ATOMIC_SEQ_CST,
                                                         __ATOMIC_RELAXED)) {
                                /* As above: a word that never holds still gets no spin past the timeout. */
                                if (++lost % 1024 == 0 && client_now_ns() >= deadline)
                                        return -ETIMEDOUT;
                                continue;
                        }
                        w |= PSEM_LOCK_SLEEPERS;
                        __atomic_thread_fence(__ATOMIC_SEQ_CST);
                        if (ring_holders_token_dead(table, n, holder))
                                continue;
                }
                ts = slice_end(deadline);
                r = lock_sleep(f, w, &ts);
                /* EINTR: a signal ends the wait, as System V's does. */
                if (r < 0 && r != -ETIMEDOUT)
                        return removed_now(ch, f) ? -EIDRM : r;
                if (removed_now(ch, f))
                        return -EIDRM;
                if (client_now_ns() >= deadline)
                        return -ETIMEDOUT;
        }
}

int posix_unlock(shmb_channel *ch, unsigned idx) {
        PosixSemFile *f = ch->psems[idx];
        int r;

        if (client_inherited(ch->client))
                return -ECHILD;
        /* Given back whatever became of the channel, but a removal is told as on System V: what was written under it went nowhere. */
        r = lock_clear(ch, f);
        return removed(f) ? -EIDRM : r;
}
