#pragma once

/*
 * POSIX channels ("kind": "posix"): the names of their objects and the
 * layout of a semaphore's file. The broker and every client agree on this.
 *
 * A channel NAME has, in the broker's /dev/shm:
 *   shmbroker.NAME         the segment (shm_open("/shmbroker.NAME"))
 *   shmbroker-table.NAME   a broadcast channel's subscriber table, or a raw channel's
 *                          lock holder table (below); a name no channel's segment can
 *                          have: channel names hold no '-table.' prefix
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
 *   channel takes this word instead of the semaphore. It holds 0 (free)
 *   or the holder token (proto/ring.h) of the hold that has the lock: a
 *   ring's or a broadcast publisher's token, or for a raw channel one from
 *   the channel's lock holder table (PSEM_HOLDERS entries, below).
 *   The broker marks a token DEAD when its process is gone, as it does for
 *   a ring, and a locker that finds the lock held by a dead token takes it
 *   over; so a crashed holder never keeps it, in whatever PID namespace.
 *   A locker that finds the lock held by a live token sets
 *   PSEM_LOCK_SLEEPERS in the word (a bit no token has) and sleeps on the
 *   word with futex(2) while it holds that value; an unlock that clears a
 *   word with the bit wakes every sleeper, and an unlock without it makes
 *   no system call. The bit is in the word the unlock's compare-and-swap
 *   sees, so no sleeper is missed, and one that dies asleep costs one
 *   wake-up for nobody, once. (Version 3 counted sleepers in a word of
 *   their own, which a locker killed asleep left counted for good.)
 *
 *   Nothing in the file is an address or a kind: a writer of it can make
 *   a lock wait, fail, or be given to two at once, and nothing more. (Version 1
 *   kept a glibc robust mutex here, whose list links a writer could aim at
 *   any address of the holder's process.)
 *
 * Descriptors handed over with an open answer ("fd": true, ignored for a
 * System V channel; SCM_RIGHTS on the answer line), in this order: the
 * segment, the table (a broadcast channel's, or a raw channel's with
 * semaphores), then one per semaphore file. All O_RDWR for an `rw` open,
 * O_RDONLY for `ro`, so mmap() enforces the access the broker granted;
 * except the table: a broadcast channel's always O_RDWR, as every
 * subscriber (an `ro` opener) writes its cursor there, a raw channel's
 * always O_RDONLY, as only the broker writes it. Last, when the answer
 * names wake_fifos, two more: those FIFOs (data, space), O_RDWR, for a
 * client that cannot reach them by path.
 */

#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "proto/proto.h"
#include "proto/ring.h"

#define PSEM_MAGIC UINT32_C(0x53505342)   /* "BSPS" little-endian */
#define PSEM_VERSION 4
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
        uint32_t lock;                  /* 0, or the token of the hold that has shmb_lock() [| PSEM_LOCK_SLEEPERS]; atomics only */
        uint32_t reserved3;             /* 0 (version 3: a count of the sleepers) */
        uint32_t reserved2[2];
} PosixSemFile;

/*
 * A raw channel with semaphores keeps the holder table of its lock tokens
 * in a file of its own, shmbroker-table.NAME: PSEM_HOLDERS entries of
 * RingHolder (PSEM_TABLE_SIZE bytes), laid out and written by the broker
 * alone. The file is the broker's, mode 0600, and every opener gets it
 * O_RDONLY, so no client can mark a live hold's token dead or fill the
 * table (layout version 2 kept it in semaphore 0's file, which every rw
 * opener could write). A ring or a broadcast channel takes its lock
 * tokens from its own table instead. A semaphore's file is
 * sizeof(PosixSemFile) bytes, whatever the layout.
 */
#define PSEM_HOLDERS RING_HOLDERS
#define PSEM_TABLE_SIZE ((size_t) PSEM_HOLDERS * RING_HOLDER_SIZE)

/* Offsets that shmbroker-protocol(7) documents for clients in other languages (64-bit glibc's sem_t). */
_Static_assert(sizeof(sem_t) != 32 || offsetof(PosixSemFile, lock) == 48, "posix lock word offset");
_Static_assert(sizeof(sem_t) != 32 || sizeof(PosixSemFile) == 64, "a semaphore file's size");

/*
 * In a lock word: a locker sleeps, or may, on it. A token's index part is
 * at most RING_HOLDERS (proto/ring.h), below this bit, so no token has it.
 */
#define PSEM_LOCK_SLEEPERS UINT32_C(0x800)
_Static_assert(PSEM_HOLDERS < PSEM_LOCK_SLEEPERS && PSEM_LOCK_SLEEPERS < (UINT32_C(1) << RING_TOKEN_INDEX_BITS),
               "the sleepers' bit is in a token's index part, above every index");

/* The token a lock word names: 0 when the lock is free. */
static inline uint32_t psem_lock_holder(uint32_t word) {
        return word & ~PSEM_LOCK_SLEEPERS;
}

/* Whether a posix channel of this layout with nsems semaphores has a lock holder table file. */
static inline bool psem_has_table(ProtoLayout layout, unsigned nsems) {
        return layout == PROTO_LAYOUT_RAW && nsems > 0;
}

/* Wake every locker asleep on f's lock: one that read the word before its change sees the change, or is woken. */
static inline void psem_lock_wake(PosixSemFile *f) {
        (void) syscall(SYS_futex, &f->lock, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
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
