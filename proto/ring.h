#pragma once

/*
 * The layout of a `ring` channel's segment: the contract between the daemon,
 * which writes the header when it creates the channel, and the client
 * library, which moves messages through it.
 *
 *   [ header: RING_HEADER_SIZE bytes ][ slot 0 ][ slot 1 ] ... [ slot n-1 ]
 *
 * The ring is a bounded multi-producer/multi-consumer queue with a sequence
 * number per slot (after D. Vyukov): a producer claims position p with a CAS
 * on `head` when slot p % n has seq == p, writes, then publishes seq = p + 1;
 * a consumer claims p on `tail` when seq == p + 1, reads, then frees the slot
 * with seq = p + n. Nobody sleeps unless the ring is full or empty: then
 * they wait on the futex words `data_seq`/`space_seq`, and the other side
 * makes the wake-up syscall only when a sleeper has raised the flag
 * (`recv_sleeping`/`send_sleeping`), which the waker clears: one wake per
 * sleep, not one per message.
 * A single producer and a single consumer thus pay one uncontended CAS and
 * no syscall per message.
 *
 * A slot records who claimed it and for which position, separately for the
 * sender and the receiver. A process killed between its claim and its
 * publish would stall everyone at that slot; whoever waits there checks
 * the claimer, and when it is dead (kill(pid, 0) says ESRCH) skips the
 * slot (a sender died: that message was never sent) or frees it (a
 * receiver died: that message died with it). Claims are CASes on head and
 * tail, so two repairers cannot both act on one slot. The semaphore
 * RING_SEM_RESERVED is the ring's own, so that a ring always has a set;
 * semaphores the config asks for come after it.
 *
 * Removal: System V cannot tell an attached process that its segment was
 * removed (the mapping lives on), and a futex sleeper in a removed segment
 * would sleep forever. So whoever removes a ring first stores
 * RING_STATE_REMOVED in `state` and wakes every sleeper on both futex
 * words (ring_mark_removed()); clients look at `state` on every call and
 * after every wake-up. `state` shares the first cache line with the
 * fields nobody writes after creation, so reading it on every call costs a
 * hit in a line that stays in every core's cache.
 */

#include <limits.h>
#include <linux/futex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RING_MAGIC UINT32_C(0x52424d53)   /* "SMBR" little-endian */
/* 3: `state` (was reserved0) tells clients the ring was removed. */
#define RING_VERSION 3
#define RING_HEADER_SIZE 512
#define RING_SLOT_HEADER 64
#define RING_SLOT_SIZE_MAX (UINT32_C(1) << 30)
#define RING_SLOTS_MAX (UINT32_C(1) << 20)
/* With one slot, "freed for position p + 1" and "full with position p" are one sequence number. */
#define RING_SLOTS_MIN 2

/* Values of RingHeader.state. */
enum {
        RING_STATE_LIVE = 0,
        RING_STATE_REMOVED = 1,         /* final: the ring's segment is (being) removed */
};

enum {
        RING_SEM_RESERVED,  /* the ring's own; starts at 1 */
        RING_NSEMS,
};

typedef struct RingHeader {
        uint32_t magic;
        uint32_t version;
        uint32_t slot_size;
        uint32_t slots;
        uint32_t slot_stride;
        uint32_t data_offset;
        uint32_t nsems_reserved;
        uint32_t state;                 /* RING_STATE_*: written at creation and at removal only */
        /*
         * Each side's hot word on its own cache line, and each side's waiting
         * state on another: a publisher reads the peer's sleeping flag after
         * every message, and must not find it on a line the peer writes per
         * message (that made every notify a cross-core miss).
         */
        _Alignas(64) uint64_t head;     /* next position to claim for sending */
        _Alignas(64) uint64_t tail;     /* next position to claim for receiving */
        _Alignas(64) uint32_t data_seq; /* futex: bumped when a slot is filled and receivers sleep */
        uint32_t recv_sleeping;         /* raised by a sleeping receiver, cleared by the waker */
        uint32_t recv_cpu;              /* where a receiver last ran + 1 (0: unknown), to decide spinning */
        _Alignas(64) uint32_t space_seq; /* futex: bumped when a slot is freed and senders sleep */
        uint32_t send_sleeping;         /* raised by a sleeping sender, cleared by the waker */
        uint32_t send_cpu;              /* where a sender last ran + 1 (0: unknown) */
} RingHeader;

typedef struct RingSlot {
        uint64_t seq;
        uint64_t send_pos;              /* the position send_pid claimed it for */
        uint64_t recv_pos;              /* the position recv_pid claimed it for */
        int32_t send_pid;
        int32_t recv_pid;
        uint32_t len;
        uint32_t reserved;
        /* payload follows at RING_SLOT_HEADER: slot_size bytes */
} RingSlot;

_Static_assert(sizeof(RingHeader) <= RING_HEADER_SIZE, "ring header too large");
_Static_assert(sizeof(RingSlot) <= RING_SLOT_HEADER, "ring slot header size");
/* Offsets that shmbroker-protocol(7) documents for clients in other languages. */
_Static_assert(offsetof(RingHeader, state) == 28 && offsetof(RingHeader, head) == 64 &&
               offsetof(RingHeader, data_seq) == 192 && offsetof(RingHeader, space_seq) == 256,
               "ring header offsets");

static inline uint64_t ring_slot_stride(uint32_t slot_size) {
        return ((uint64_t) slot_size + RING_SLOT_HEADER + 63) & ~UINT64_C(63);
}

static inline uint64_t ring_segment_size(uint32_t slot_size, uint32_t slots) {
        return RING_HEADER_SIZE + (uint64_t) slots * ring_slot_stride(slot_size);
}

/* The header is one this build wrote (or would write): the fields ring_mark_removed() relies on. */
static inline bool ring_header_is_ours(const RingHeader *h) {
        return h->magic == RING_MAGIC && h->version == RING_VERSION;
}

/* The broker removed (or is removing) the ring: one acquire load of a line nobody writes per message. */
static inline bool ring_is_removed(const RingHeader *h) {
        return __atomic_load_n(&h->state, __ATOMIC_ACQUIRE) != RING_STATE_LIVE;
}

/*
 * Tell every client of a ring that is about to be removed: store REMOVED,
 * then move both futex words and wake all their sleepers. The store comes
 * first and every access is sequentially consistent, as the clients' loads
 * are: a sleeper that read a futex word before the bump finds the word
 * moved (FUTEX_WAIT fails with EAGAIN) or is woken, and then reads REMOVED.
 * Not FUTEX_PRIVATE: the words are shared between processes.
 */
static inline void ring_mark_removed(RingHeader *h) {
        __atomic_store_n(&h->state, (uint32_t) RING_STATE_REMOVED, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&h->data_seq, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&h->space_seq, 1, __ATOMIC_SEQ_CST);
        (void) syscall(SYS_futex, &h->data_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        (void) syscall(SYS_futex, &h->space_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
