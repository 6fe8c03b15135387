#pragma once

/*
 * The layout of a `ring` channel's segment: the contract between the daemon,
 * which writes the header when it creates the channel, and the client
 * library, which moves messages through it.
 *
 * man/shmbroker-ring.7 is normative: it gives every field's offset,
 * initial value and writer, the memory order of every access, and the
 * sleep/wake, repair and removal rules. This header follows it; where the
 * two disagree, the page is right and this file is the bug.
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
 * Claims name their holder, not a pid. Every rw opener of a ring gets a
 * holder token from the broker (the `holder` field of the open answer): an
 * entry of the holder table after the header, which lives as long as the
 * opener's process, not its connection. The broker pins that process with
 * a pidfd when the connection first gets a token, and marks the entry DEAD
 * when the process exits (all its threads; an unreaped zombie has), in any
 * PID namespace, even while a fork still holds the socket; a `close` marks
 * it DEAD at once. A connection that ends under a live process leaves the
 * entry LIVE (an orphan) until the process exits or takes it back by
 * opening with its token; where no pidfd could be had, the connection's end
 * marks it DEAD. An entry is handed out again only under a new generation.
 * A claim is one compare-and-swap of the slot's owner word
 * (send_owner/recv_owner) from "not claimed for this position" to
 * (position, token): who claimed is known from the instant of the claim.
 * Then head (tail) is moved on, by the claimer or by anyone who finds the
 * slot claimed ("helping"), so no window exists in which a claim is
 * anonymous. A waiter that finds a claimed slot unfinished asks the holder
 * table: a dead token's sender is skipped (a tombstone: seq goes from p to
 * p + n, the message never was), a dead token's receiver's slot is freed
 * (seq from p + 1 to p + n: that message died with it). Publishing and
 * freeing are compare-and-swaps too, so a claimer wrongly taken for dead
 * (its token ended while it ran: its connection ended where the broker had
 * no pidfd, or a fork gave its hold back) finds its slot taken and starts
 * over: a message is never published into a slot that was given away.
 * The semaphore RING_SEM_RESERVED is the ring's own, so that a ring always
 * has a set; semaphores the config asks for come after it.
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
/*
 * 3: `state` (was reserved0) tells clients the ring was removed.
 * 4: claims record holder tokens (owner words, holder table), not pids.
 * 5: the sleeping flags are bit sets (RING_SLEEP_*): a waiter in an event
 *    loop raises its own bit, which a version 4 waker would clear unseen.
 */
#define RING_VERSION 5
#define RING_HEADER_SIZE 512
#define RING_HOLDERS 256                /* rw openers at once; more are refused (EUSERS) */
#define RING_HOLDER_SIZE 32
#define RING_HOLDERS_OFFSET RING_HEADER_SIZE
#define RING_DATA_OFFSET (RING_HOLDERS_OFFSET + RING_HOLDERS * RING_HOLDER_SIZE)
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

/*
 * Bits of recv_sleeping/send_sleeping: who waits for this side. The waker
 * exchanges the word for 0 and serves every bit it took: FUTEX, by moving
 * the futex word and waking it; FD (a waiter polling a wake-up FIFO, see
 * shmb_channel_fd()), by writing a byte into that side's FIFO.
 */
enum {
        RING_SLEEP_FUTEX = 1,
        RING_SLEEP_FD = 2,
};

/* Values of RingHolder.word's low half. */
enum {
        RING_HOLDER_FREE = 0,           /* never handed out */
        RING_HOLDER_LIVE = 1,           /* its hold exists, or its opener's process outlived it (an orphan) */
        RING_HOLDER_DEAD = 2,           /* its opener closed it or exited (see above): its claims may be repaired */
};

/*
 * A token is (generation << 12) | (index + 1): never 0, and a token of an
 * entry handed out again (a new generation) no longer matches it.
 */
#define RING_TOKEN_INDEX_BITS 12
#define RING_TOKEN_GEN_MASK ((UINT32_C(1) << (32 - RING_TOKEN_INDEX_BITS)) - 1)
#define RING_TOKEN_INDEX_MASK ((UINT32_C(1) << RING_TOKEN_INDEX_BITS) - 1)

/* The table entry a token names; UINT32_MAX for an index part of 0 (no token has it). Check it against the table. */
static inline uint32_t ring_token_index(uint32_t token) {
        return (token & RING_TOKEN_INDEX_MASK) - 1;
}

enum {
        RING_SEM_RESERVED,  /* the ring's own; starts at 1; nothing operates on it (shmbroker-ring(7), SEMAPHORES) */
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
        uint32_t holders;               /* entries in the holder table */
        uint32_t holders_offset;        /* where it starts: RING_HOLDERS_OFFSET */
        /*
         * Each side's hot word on its own cache line, and each side's waiting
         * state on another: a publisher reads the peer's sleeping flag after
         * every message, and must not find it on a line the peer writes per
         * message (that made every notify a cross-core miss).
         */
        _Alignas(64) uint64_t head;     /* next position to claim for sending */
        _Alignas(64) uint64_t tail;     /* next position to claim for receiving */
        _Alignas(64) uint32_t data_seq; /* futex: bumped when a slot is filled or skipped and a receiver sleeps */
        uint32_t recv_sleeping;         /* RING_SLEEP_* bits raised by waiting receivers, cleared by the waker */
        uint32_t recv_cpu;              /* where a receiver last ran + 1 (0: unknown), to decide spinning */
        _Alignas(64) uint32_t space_seq; /* futex: bumped when a slot is freed and senders sleep */
        uint32_t send_sleeping;         /* RING_SLEEP_* bits raised by waiting senders, cleared by the waker */
        uint32_t send_cpu;              /* where a sender last ran + 1 (0: unknown) */
} RingHeader;

/*
 * One opener's liveness, written by the broker only. word: generation in
 * the high half, RING_HOLDER_* in the low half, so one load gives both.
 * pid, starttime and the pidfs inode are the broker's own view of the
 * opener (its PID namespace), for a broker that restarts after a crash
 * and must tell which of its predecessor's holders still live; clients
 * never read them. A broker records one of the two (the other is 0, "not
 * known"): builds before pidfs_ino read only starttime, and take 0 there
 * as a process they cannot judge, never as another one.
 */
typedef struct RingHolder {
        uint64_t word;
        int32_t pid;
        uint32_t pidns;                 /* the /proc inode of the PID namespace pid is of; 0: not recorded */
        uint64_t starttime;             /* /proc/PID/stat field 22; 0: not known */
        uint64_t pidfs_ino;             /* the inode of a pidfd of it (pidfs, 64-bit); 0: not known */
} RingHolder;

/*
 * owner words: (position & 0xffffffff) << 32 | token; 0 (token 0) is
 * "never claimed". A slot is claimed for position p when the high half is
 * p's low 32 bits and the token is not 0. A fresh slot i has seq = i and
 * everything else 0 (ring_format()).
 */
typedef struct RingSlot {
        uint64_t seq;
        uint64_t send_owner;
        uint64_t recv_owner;
        uint32_t len;
        uint32_t reserved;
        /* payload follows at RING_SLOT_HEADER: slot_size bytes */
} RingSlot;

_Static_assert(sizeof(RingHeader) <= RING_HEADER_SIZE, "ring header too large");
_Static_assert(sizeof(RingSlot) <= RING_SLOT_HEADER, "ring slot header size");
_Static_assert(sizeof(RingHolder) == RING_HOLDER_SIZE, "ring holder size");
_Static_assert(RING_HOLDERS < (1u << RING_TOKEN_INDEX_BITS), "holder index fits a token");
/* Offsets that shmbroker-ring(7) documents for clients in other languages. */
_Static_assert(offsetof(RingHeader, state) == 28 && offsetof(RingHeader, head) == 64 &&
               offsetof(RingHeader, holders) == 32 && offsetof(RingHeader, holders_offset) == 36 &&
               offsetof(RingHeader, data_seq) == 192 && offsetof(RingHeader, space_seq) == 256 &&
               offsetof(RingSlot, send_owner) == 8 && offsetof(RingSlot, recv_owner) == 16 &&
               offsetof(RingSlot, len) == 24,
               "ring header offsets");
_Static_assert(offsetof(RingHeader, slot_size) == 8 && offsetof(RingHeader, slots) == 12 &&
               offsetof(RingHeader, slot_stride) == 16 && offsetof(RingHeader, data_offset) == 20 &&
               offsetof(RingHeader, nsems_reserved) == 24 && offsetof(RingHeader, tail) == 128 &&
               offsetof(RingHeader, recv_sleeping) == 196 && offsetof(RingHeader, recv_cpu) == 200 &&
               offsetof(RingHeader, send_sleeping) == 260 && offsetof(RingHeader, send_cpu) == 264 &&
               offsetof(RingHolder, pid) == 8 && offsetof(RingHolder, starttime) == 16 &&
               offsetof(RingHolder, pidfs_ino) == 24 && RING_DATA_OFFSET == 8704,
               "the rest of shmbroker-ring(7)'s ring offsets");

static inline uint64_t ring_slot_stride(uint32_t slot_size) {
        return ((uint64_t) slot_size + RING_SLOT_HEADER + 63) & ~UINT64_C(63);
}

static inline uint64_t ring_segment_size(uint32_t slot_size, uint32_t slots) {
        return RING_DATA_OFFSET + (uint64_t) slots * ring_slot_stride(slot_size);
}

static inline RingHolder *ring_holder_at(const RingHeader *h, uint32_t index) {
        return (RingHolder *) ((char *) h + RING_HOLDERS_OFFSET + (uint64_t) index * RING_HOLDER_SIZE);
}

static inline RingSlot *ring_slot_at(const RingHeader *h, uint64_t pos) {
        return (RingSlot *) ((char *) h + RING_DATA_OFFSET + (pos % h->slots) * h->slot_stride);
}

static inline uint32_t ring_token(uint32_t index, uint32_t gen) {
        return ((gen & RING_TOKEN_GEN_MASK) << RING_TOKEN_INDEX_BITS) | (index + 1);
}

static inline uint64_t ring_owner(uint64_t pos, uint32_t token) {
        return (pos << 32) | token;
}

static inline bool ring_owner_claims(uint64_t owner, uint64_t pos) {
        return (uint32_t) owner != 0 && (uint32_t) (owner >> 32) == (uint32_t) pos;
}

/*
 * Whether the holder a token names, in the holder table of n entries at
 * `table`, is gone: its entry was marked DEAD or handed out again
 * (generation moved), or the token names no entry (a corrupt owner word:
 * no live holder wrote it). Token 0 is nobody's.
 */
static inline bool ring_holders_token_dead(const RingHolder *table, uint32_t n, uint32_t token) {
        uint32_t index = ring_token_index(token);
        uint64_t word;

        if (token == 0)
                return false;
        if (index >= n)
                return true;
        /*
         * Sequentially consistent, not only acquire: a claimer's look right
         * after its claim must be ordered after the claim (client/ring.c
         * claim()). The same instruction as acquire on x86, and on arm64 as
         * compilers emit acquire by default.
         */
        word = __atomic_load_n(&table[index].word, __ATOMIC_SEQ_CST);
        return (uint32_t) word != RING_HOLDER_LIVE ||
               ((uint32_t) (word >> 32) & RING_TOKEN_GEN_MASK) != token >> RING_TOKEN_INDEX_BITS;
}

/*
 * The same for a ring's own table: RING_HOLDERS entries, which h->holders
 * was checked to say when the ring was opened. Not h->holders itself: any
 * writer may change it since, and a token past the real table would be
 * read past it (a fault in every other process on the ring).
 */
static inline bool ring_token_dead(const RingHeader *h, uint32_t token) {
        return ring_holders_token_dead(ring_holder_at(h, 0), RING_HOLDERS, token);
}

/*
 * Lay out a fresh ring in size bytes (ring_segment_size()) of zeroed
 * memory: slot i free for the first lap's position i, no holder yet.
 */
static inline void ring_format(void *addr, uint32_t slot_size, uint32_t slots) {
        RingHeader *h = addr;

        *h = (RingHeader) {
                .magic = RING_MAGIC,
                .version = RING_VERSION,
                .slot_size = slot_size,
                .slots = slots,
                .slot_stride = (uint32_t) ring_slot_stride(slot_size),
                .data_offset = RING_DATA_OFFSET,
                .nsems_reserved = RING_NSEMS,
                .state = RING_STATE_LIVE,
                .holders = RING_HOLDERS,
                .holders_offset = RING_HOLDERS_OFFSET,
        };
        for (uint32_t i = 0; i < slots; i++)
                ring_slot_at(h, i)->seq = i;
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
 * Move a futex word and wake all its sleepers: one that read the word before
 * finds it moved (FUTEX_WAIT fails with EAGAIN) or is woken. Not
 * FUTEX_PRIVATE: the words are shared between processes.
 */
static inline void ring_wake_word(uint32_t *word) {
        __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
        (void) syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/*
 * Wake the ring's futex sleepers after a holder was marked DEAD: a waiter
 * that looked at its slot before the dead holder claimed it sleeps without
 * polling, and the claim is never finished, so nothing else would wake it.
 * Woken, it finds the claim dead and repairs it. Only a side whose flag is
 * up is woken: the fence orders the caller's DEAD store before the flag
 * loads, as a sleeper's raising of its flag is ordered before its loads of
 * the claim and of the holder's entry, so either the caller sees the flag
 * or the sleeper sees the dead claim. The flag is left up (a later waker
 * makes one wake-up more). FIFOs are the daemon's to write, as below.
 */
static inline void ring_wake_sleepers(RingHeader *h) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&h->recv_sleeping, __ATOMIC_SEQ_CST) & RING_SLEEP_FUTEX)
                ring_wake_word(&h->data_seq);
        if (__atomic_load_n(&h->send_sleeping, __ATOMIC_SEQ_CST) & RING_SLEEP_FUTEX)
                ring_wake_word(&h->space_seq);
}

/*
 * Tell every client of a ring that is about to be removed: store REMOVED,
 * then move both futex words and wake all their sleepers. The store comes
 * first and every access is sequentially consistent, as a sleeper's loads
 * of the word and of `state` are: a sleeper that read a futex word before
 * the bump finds the word moved (FUTEX_WAIT fails with EAGAIN) or is woken,
 * and then reads REMOVED. The wake-up FIFOs (RING_SLEEP_FD waiters) are
 * not served here: the daemon writes them itself (daemon/wake.h).
 * Not FUTEX_PRIVATE: the words are shared between processes.
 */
static inline void ring_mark_removed(RingHeader *h) {
        __atomic_store_n(&h->state, (uint32_t) RING_STATE_REMOVED, __ATOMIC_SEQ_CST);
        ring_wake_word(&h->data_seq);
        ring_wake_word(&h->space_seq);
}
