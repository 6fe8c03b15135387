#pragma once

/*
 * The layout of a `ring` channel's segment: the contract between the daemon,
 * which writes the header when it creates the channel, and the client
 * library, which moves messages through it.
 *
 *   [ header: RING_HEADER_SIZE bytes ][ slot 0 ][ slot 1 ] ... [ slot n-1 ]
 *
 * A slot is a 32-bit length followed by up to slot_size payload bytes,
 * padded to a 64-byte stride so neighbouring slots share no cache line.
 * The first RING_NSEMS semaphores of the channel's set belong to the ring;
 * semaphores the config asks for come after them.
 */

#include <stdint.h>

#define RING_MAGIC UINT32_C(0x52424d53)   /* "SMBR" little-endian */
#define RING_VERSION 1
#define RING_HEADER_SIZE 256
#define RING_SLOT_HEADER 8
#define RING_SLOT_SIZE_MAX (UINT32_C(1) << 30)
#define RING_SLOTS_MAX (UINT32_C(1) << 20)

enum {
        RING_SEM_FREE,      /* free slots; starts at `slots` */
        RING_SEM_USED,      /* filled slots; starts at 0 */
        RING_SEM_SEND_LOCK, /* serialises producers; starts at 1 */
        RING_SEM_RECV_LOCK, /* serialises consumers; starts at 1 */
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
        /* Producer and consumer positions live on their own cache lines. */
        _Alignas(64) uint64_t head;
        _Alignas(64) uint64_t tail;
} RingHeader;

_Static_assert(sizeof(RingHeader) <= RING_HEADER_SIZE, "ring header too large");

static inline uint64_t ring_slot_stride(uint32_t slot_size) {
        return ((uint64_t) slot_size + RING_SLOT_HEADER + 63) & ~UINT64_C(63);
}

static inline uint64_t ring_segment_size(uint32_t slot_size, uint32_t slots) {
        return RING_HEADER_SIZE + (uint64_t) slots * ring_slot_stride(slot_size);
}
