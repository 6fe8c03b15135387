/*
 * A sender's prefetch of a slot it will fill a few messages on: ring
 * senders (client/ring.c) and broadcast publishers (client/broadcast.c).
 *
 * In a ring of small slots each send otherwise stalls on its slot's two
 * lines, which the other side's core had last (a ring's receiver freed
 * the slot a lap earlier; broadcast subscribers read it): the claim is a
 * locked compare-and-swap, which waits for the header line to come over,
 * and the publish waits for the payload's. Prefetched for writing about
 * 1 KiB ahead, both are here when the sender gets to them. Measured on a
 * 2-vCPU guest: ring 64 B messages 8.6 -> 16 M/s, broadcast 4.5-5.9 ->
 * 11.5-12.4; 4 KiB ones, whose copies stream, did not change, nor did a
 * sender that waits on a slow receiver. A read prefetch (the claim then
 * has to take the line over again) gave 13 M/s; the slot being claimed
 * itself, or a ring receiver's prefetch of the slots 4 ahead of its own,
 * made it slower (lines the other side is writing). Strides over 1 KiB
 * (slots over 960 B) have none.
 */
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <stdbool.h>
#include <stdint.h>

#include "common/util.h"

#define PREFETCH_AHEAD_BYTES 1024

/* Whether this CPU has a prefetch for writing: an x86 one without it may not take the instruction as a no-op. */
static inline bool cpu_prefetches_for_write(void) {
#if defined(__x86_64__) || defined(__i386__)
        static int known = -1;          /* cpuid exits a VM: asked once (per file that asks) */
        int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
        unsigned a, b, c, d;

        if (k < 0) {
                k = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & bit_PRFCHW);
                __atomic_store_n(&known, k, __ATOMIC_RELAXED);
        }
        return k;
#else
        return true;
#endif
}

/*
 * How many bytes past its slot a sender prefetches in a ring of slots
 * strides, on a CPU that can: whole slots, about 1 KiB of them, never a
 * lap or more (that would be the slot being filled, or one the other side
 * is at); 0 for strides over 1 KiB.
 */
static inline uint64_t prefetch_distance(uint64_t stride, uint32_t slots) {
        return stride <= PREFETCH_AHEAD_BYTES ? MIN(PREFETCH_AHEAD_BYTES / stride, slots / 2) * stride : 0;
}

/* The slot ahead bytes past slot in the span bytes of slots at first, wrapping; NULL when ahead is 0. */
static inline const char *prefetch_target(const void *slot, uint64_t ahead, const char *first, uint64_t span) {
        const char *p = (const char *) slot + ahead;

        if (ahead == 0)
                return NULL;
        if (p >= first + span)
                p -= span;
        return p;
}

static inline void prefetch_for_write(const void *p) {
#if defined(__x86_64__) || defined(__i386__)
        __asm__ __volatile__("prefetchw %0" : : "m"(*(const char *) p));
#else
        __builtin_prefetch(p, 1, 3);
#endif
}

/* Its header line, which the claim takes, and its payload's first, which the copy writes (every stride has it). */
static inline void prefetch_slot(const char *slot, uint64_t header) {
        if (slot) {
                prefetch_for_write(slot);
                prefetch_for_write(slot + header);
        }
}
