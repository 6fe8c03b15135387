/*
 * Semaphore operations on a channel's set. Waits use semtimedop(), whose
 * timeout is relative; an EINTR is handed back to the caller rather than
 * retried, so a signal can interrupt a wait as it would a plain semop().
 */

#include <errno.h>
#include <sys/sem.h>
#include <time.h>

#include "client/shmbroker-internal.h"

static int sem_op(shmb_channel *ch, unsigned idx, short delta, bool undo, int timeout_ms) {
        struct sembuf op;
        struct timespec ts, *tsp = NULL;

        if (!ch || idx >= ch->info.nsems)
                return -EINVAL;
        /* Waiting and posting both change a value: the kernel wants write access. */
        if (ch->access == SHMB_RO)
                return -EACCES;
        op = (struct sembuf) {
                .sem_num = (unsigned short) (ch->sem_base + idx),
                .sem_op = delta,
                .sem_flg = (short) ((undo ? SEM_UNDO : 0) | (timeout_ms == 0 ? IPC_NOWAIT : 0)),
        };
        if (timeout_ms > 0) {
                ts.tv_sec = timeout_ms / 1000;
                ts.tv_nsec = (long) (timeout_ms % 1000) * 1000000L;
                tsp = &ts;
        }
        if (semtimedop(ch->info.sem_id, &op, 1, tsp) == 0)
                return 0;
        switch (errno) {
        case EAGAIN:
                return timeout_ms > 0 ? -ETIMEDOUT : -EAGAIN;
        case EIDRM:
        case EINVAL:
                return -EIDRM;          /* the set is gone: the channel was removed */
        default:
                return -errno;
        }
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
