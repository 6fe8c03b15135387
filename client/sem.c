/*
 * Semaphore operations on a channel's set. Waits use semtimedop(), whose
 * timeout is relative; an EINTR is handed back to the caller rather than
 * retried, so a signal can interrupt a wait as it would a plain semop().
 *
 * A removed set: callers already blocked get EIDRM from the kernel, later
 * ones EINVAL (the id names nothing any more). Both are the channel's
 * removal, which the library reports as -EIDRM: never the kernel's bare
 * EINVAL, which would read as a bad argument of ours. A ring channel's
 * header says the same (proto/ring.h), and is asked first.
 */

#include <errno.h>
#include <stdbool.h>
#include <sys/sem.h>
#include <time.h>

#include "client/shmbroker-internal.h"
#include "common/semun.h"

/*
 * semtimedop() said EINVAL although the index (checked against the set's
 * count at open) and the timeout are valid: then the id no longer names a
 * set. IPC_STAT confirms it (EINVAL or EIDRM: no such set); a set that is
 * still there (read, or refused to us: EACCES comes after the lookup)
 * leaves the EINVAL as it was.
 */
static int einval_means_removed(int sem_id) {
        struct semid_ds ds;
        union semun arg = { .buf = &ds };

        if (semctl(sem_id, 0, IPC_STAT, arg) < 0 && (errno == EINVAL || errno == EIDRM))
                return -EIDRM;
        return -EINVAL;
}

/*
 * A System V wait, cut into slices of at most RING_GONE_POLL_MS: the kernel
 * wakes waiters with EIDRM only when the set is removed, and a handle can
 * go stale while its set lives on (a broker restarted without its state
 * file leaves the old objects behind and makes the channel anew; the
 * library learns it at the rejoin). Between slices the wait asks as a
 * sleeping ring call does (channel_check_gone()), so no caller sleeps for
 * ever on a channel that the broker no longer has. timeout_ms < 0: none.
 */
static int sem_wait_sliced(shmb_channel *ch, struct sembuf *op, int timeout_ms) {
        int64_t deadline = timeout_ms < 0 ? INT64_MAX : client_now_ns() + (int64_t) timeout_ms * 1000000;

        for (;;) {
                int64_t left = deadline - client_now_ns(), slice = (int64_t) RING_GONE_POLL_MS * 1000000;
                struct timespec ts;
                bool last = left <= slice;

                if (left <= 0)
                        return -ETIMEDOUT;
                if (last)
                        slice = left;
                ts = (struct timespec) { .tv_sec = slice / 1000000000, .tv_nsec = slice % 1000000000 };
                if (semtimedop(ch->info.sem_id, op, 1, &ts) == 0)
                        return 0;
                if (errno != EAGAIN)
                        return -errno;
                if (channel_check_gone(ch) == -EIDRM)
                        return -EIDRM;
                if (last)
                        return -ETIMEDOUT;
        }
}

static int sem_op(shmb_channel *ch, unsigned idx, short delta, bool undo, int timeout_ms) {
        struct sembuf op;
        int r;

        if (!ch || idx >= ch->info.nsems)
                return -EINVAL;
        /* Waiting and posting both change a value: the kernel wants write access. */
        if (ch->access == SHMB_RO)
                return -EACCES;
        /* The set goes with the ring: once the header says removed, so does every call; as when the handle is gone. */
        if ((ch->ring && ring_is_removed(ch->ring)) || channel_gone(ch))
                return -EIDRM;
        /* A posix channel's semaphores are files of their own (posix-sem.c), after the same checks. */
        if (ch->info.kind == PROTO_KIND_POSIX) {
                unsigned k = ch->sem_base + idx;

                if (undo)
                        return delta < 0 ? posix_lock(ch, k, timeout_ms) : posix_unlock(ch, k);
                return delta < 0 ? posix_sem_wait(ch, k, timeout_ms) : posix_sem_post(ch, k);
        }
        op = (struct sembuf) {
                .sem_num = (unsigned short) (ch->sem_base + idx),
                .sem_op = delta,
                .sem_flg = (short) ((undo ? SEM_UNDO : 0) | (timeout_ms == 0 ? IPC_NOWAIT : 0)),
        };
        /* A post, or a try, never waits: one call. */
        if (delta > 0 || timeout_ms == 0)
                r = semop(ch->info.sem_id, &op, 1) == 0 ? 0 : -errno;
        else
                r = sem_wait_sliced(ch, &op, timeout_ms);
        /* -EIDRM: removed while we waited; -EAGAIN only from a try, which does not wait. */
        return r == -EINVAL ? einval_means_removed(ch->info.sem_id) : r;
}

int shmb_sem_wait(shmb_channel *ch, unsigned idx, int timeout_ms) {
        return sem_op(ch, idx, -1, false, timeout_ms);
}

int shmb_sem_trywait(shmb_channel *ch, unsigned idx) {
        return shmb_sem_wait(ch, idx, 0);
}

int shmb_sem_post(shmb_channel *ch, unsigned idx) {
        return sem_op(ch, idx, 1, false, -1);
}

int shmb_lock(shmb_channel *ch, unsigned idx, int timeout_ms) {
        return sem_op(ch, idx, -1, true, timeout_ms);
}

int shmb_unlock(shmb_channel *ch, unsigned idx) {
        return sem_op(ch, idx, 1, true, -1);
}
