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
 */

#include <stdint.h>

#define RING_MAGIC UINT32_C(0x52424d53)   /* "SMBR" little-endian */
#define RING_VERSION 2
#define RING_HEADER_SIZE 512
#define RING_SLOT_HEADER 64
#define RING_SLOT_SIZE_MAX (UINT32_C(1) << 30)
#define RING_SLOTS_MAX (UINT32_C(1) << 20)

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
        uint32_t reserved0;
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

static inline uint64_t ring_slot_stride(uint32_t slot_size) {
        return ((uint64_t) slot_size + RING_SLOT_HEADER + 63) & ~UINT64_C(63);
}

static inline uint64_t ring_segment_size(uint32_t slot_size, uint32_t slots) {
        return RING_HEADER_SIZE + (uint64_t) slots * ring_slot_stride(slot_size);
}
