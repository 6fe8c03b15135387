#pragma once

/*
 * POSIX channels ("kind": "posix"): the names of their objects and the
 * layout of a semaphore's file. The broker and every client agree on this.
 *
 * A channel NAME has, in the broker's /dev/shm:
 *   shmbroker.NAME         the segment (shm_open("/shmbroker.NAME"))
 *   shmbroker-table.NAME   a broadcast channel's subscriber table (a name no channel's
 *                          segment can have: channel names hold no '-table.' prefix)
 *   sem.shmbroker.NAME.I   semaphore I, 0 <= I < nsems (sem_open("/shmbroker.NAME.I"))
 *
 * A semaphore's file starts with the sem_t that sem_open() maps (glibc: a
 * named semaphore is a process-shared sem_t at offset 0 of that file), so
 * programs that only know sem_open() use it as they would any named
 * semaphore. Behind it the broker keeps what POSIX semaphores lack:
 *
 * - `state`: POSIX has no EIDRM. Before it unlinks the file, the broker
 *   stores PSEM_STATE_REMOVED (release) and posts the semaphore once; a
 *   library waiter that wakes reads REMOVED (acquire), posts again so the
 *   next waiter wakes too, and returns -EIDRM. Waiters also look at
 *   `state` at least every PSEM_POLL_MS, so none outlives a removal by
 *   more than that even if a foreign program consumed the wake-up post.
 * - `lock`: POSIX semaphores have no SEM_UNDO, so shmb_lock() on a posix
 *   channel takes this robust, process-shared mutex instead of the
 *   semaphore: the kernel hands it to the next locker when its holder
 *   dies (EOWNERDEAD), so a crashed holder never keeps it.
 *
 * Descriptors handed over with an open answer ("fd": true, ignored for a
 * System V channel; SCM_RIGHTS on the answer line), in this order: the
 * segment, a broadcast channel's table, then one per semaphore file. All
 * O_RDWR for an `rw` open, O_RDONLY for `ro`, so mmap() enforces the
 * access the broker granted; except the table, always O_RDWR, as every
 * subscriber (an `ro` opener) writes its cursor there. Last, when the
 * answer names wake_fifos, two more: those FIFOs (data, space), O_RDWR,
 * for a client that cannot reach them by path.
 */

#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>

#define PSEM_MAGIC UINT32_C(0x53505342)   /* "BSPS" little-endian */
#define PSEM_VERSION 1
#define PSEM_POLL_MS 50

enum {
        PSEM_STATE_LIVE = 0,
        PSEM_STATE_REMOVED = 1,         /* final: the broker is removing the semaphore */
};

typedef struct PosixSemFile {
        sem_t sem;                      /* what sem_open() maps; initial value as configured */
        uint32_t magic;                 /* PSEM_MAGIC, written before the file gets its owner and mode */
        uint32_t version;               /* PSEM_VERSION */
        uint32_t state;                 /* PSEM_STATE_*; atomics only */
        uint32_t reserved;
        pthread_mutex_t lock;           /* PTHREAD_PROCESS_SHARED, PTHREAD_MUTEX_ROBUST */
} PosixSemFile;

/*
 * Make a semaphore file's lock as the broker does and the library expects
 * it: process-shared and robust, of the default type. 0 or an errno value
 * (pthread's convention).
 */
static inline int psem_lock_init(pthread_mutex_t *m) {
        pthread_mutexattr_t attr;
        int r = pthread_mutexattr_init(&attr);

        if (r == 0)
                r = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
        if (r == 0)
                r = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
        if (r == 0)
                r = pthread_mutex_init(m, &attr);
        (void) pthread_mutexattr_destroy(&attr);
        return r;
}

/* Where sem_open() keeps "/NAME": the file /dev/shm/sem.NAME. */
#define PSEM_DIR "/dev/shm"
#define PSEM_FILE_PREFIX "sem."

/* Names as shm_open()/sem_open() take them ("/shmbroker.NAME", ...). Return snprintf()'s. */
static inline int posix_shm_name(char *buf, size_t size, const char *channel) {
        return snprintf(buf, size, "/shmbroker.%s", channel);
}

static inline int posix_table_name(char *buf, size_t size, const char *channel) {
        return snprintf(buf, size, "/shmbroker-table.%s", channel);
}

static inline int posix_sem_name(char *buf, size_t size, const char *channel, unsigned idx) {
        return snprintf(buf, size, "/shmbroker.%s.%u", channel, idx);
}
