#pragma once

/*
 * The layout of a `broadcast` channel (publish/subscribe): the contract
 * between the daemon, which creates and formats it, and the client library
 * (client/broadcast.c), which moves messages through it.
 *
 * man/shmbroker-ring.7 (BROADCAST LAYOUT) is normative: it gives every
 * field's offset, initial value and writer, the memory order of every
 * access, and the sleep/wake, repair and removal rules. This header and
 * the essay below follow it; where they disagree, the page is right.
 *
 * An rw opener is a publisher, an ro opener a subscriber. Every subscriber
 * receives every message published after it subscribed, in one order (the
 * order of positions), however many publishers there are.
 *
 * Two System V segments
 * ---------------------
 * An ro opener attaches the channel's segment SHM_RDONLY, and the kernel
 * enforces it: a subscriber cannot write a byte of it. But a publisher of
 * an `overflow: block` channel must know how far each subscriber has read,
 * and a sleeping subscriber must be able to say so to be woken. So the
 * channel has two segments:
 *
 *   data segment   the channel's own (its key, id, owner, group and mode as
 *                  configured): the header, the holder tables and the
 *                  slots. Written by the broker and by publishers only.
 *
 *     [ BcastHeader: BCAST_HEADER_SIZE ][ publisher holders: BCAST_PUBLISHERS x 32 ]
 *     [ subscriber holders: subscribers x 32, to a multiple of 64 ][ slot 0 ] ... [ slot n-1 ]
 *
 *   table segment  the subscriber table: a small second segment of the
 *                  broker's (key and id in the header and in the open
 *                  answer) whose mode grants read and write to every class
 *                  (owner, group, other) that may read the channel: every
 *                  opener attaches it read-write.
 *
 *     [ BcastTable: BCAST_TABLE_HEADER_SIZE ][ cursor 0 ] ... [ cursor subscribers-1 ]
 *
 * The honest consequence: anyone who may subscribe may write any cursor
 * and any flag in the table. What that can do, and no more:
 *  - delay a block-mode publisher (a cursor written behind; a subscriber
 *    that simply never reads does the same, so this grants nothing new);
 *  - make a victim subscriber lose messages (its cursor written ahead: the
 *    publisher overwrites what the victim has not read). The victim's own
 *    position is in its private memory, and every slot carries the
 *    position it holds, so the victim notices, skips what it lost and
 *    counts it (shmb_channel_dropped()), as in drop mode;
 *  - delay wake-ups (a flag cleared without a wake): every sleep in the
 *    layout is bounded (BCAST_POLL_MS, BCAST_REPAIR_POLL_MS), so a missed
 *    wake-up costs latency, never a hang.
 * Nothing read from the table is used as a size, an offset or an index:
 * geometry comes from the data header (written by the broker), bounds are
 * checked against the kernel's segment sizes, and a cursor beyond `head`
 * is taken as `head`. The data segment stays the kernel's to protect.
 *
 * Why so: the other ways to let a read-only opener report its position
 * cost more. A writable segment per subscriber (only its own) would be
 * one more kernel object per open, made and removed by the broker while
 * publishers map them all; telling the broker over the socket would be a
 * system call per message. Nobody can take more from a shared table than
 * from a subscriber that never reads, and what a forged cursor costs its
 * victim is seen and counted; so one table, sized by "subscribers", whose
 * entry i is the cursor of subscriber token index i. A connection is one
 * subscriber (its token is its cursor): the broker refuses a second
 * subscription on one connection (EBUSY).
 *
 * Positions and slots
 * -------------------
 * Positions are 64-bit and only grow; they start at `slots` (so that the
 * first lap's slots can say "position i - n was skipped"). Position p
 * lives in slot p % n. A slot's `seq` says which position it holds and
 * how far: seq = p << 2 | kind, kind one of
 *     WRITING    a publisher claimed p and is writing it,
 *     PUBLISHED  p is a message, of `len` bytes,
 *     SKIPPED    p carries no message (an abort, or a publisher that died
 *                between claiming and publishing).
 * A fresh slot i holds SKIPPED(i): positions start at n, so i is the lap
 * before the first, and `head` starts at n.
 *
 * Publishing (any number of publishers, like the ring's producers)
 *   1. p = head. The slot must have finished the lap before: seq is
 *      PUBLISHED(p - n) or SKIPPED(p - n). In block mode also every
 *      counted subscriber (below) must have read p - n (its cursor > p - n).
 *   2. The claim is one compare-and-swap of the slot's `owner` word from
 *      "not claimed for p" to (p << 32 | token) (the ring's owner word: who
 *      claimed is known from the instant of the claim); then `head` is moved
 *      on by the claimer or by anyone who finds the slot claimed.
 *   3. seq from the lap before to WRITING(p), by a compare-and-swap
 *      (relaxed, then a release fence; if it fails, the owner word is
 *      given back and the publisher starts over), then the payload and
 *      `len`, then a compare-and-swap of seq from WRITING(p) to
 *      PUBLISHED(p) (or SKIPPED(p): an abort), sequentially consistent.
 *   A seqlock, in effect: a subscriber that copies slot p reads seq
 *   (acquire) before and (after an acquire fence) again after the copy,
 *   and keeps the copy only if both say PUBLISHED(p). So a drop-mode
 *   publisher may overwrite a slot under a subscriber, which then knows.
 *   A publisher never waits for a subscriber in drop mode.
 *
 * Subscribing and reading
 *   A subscriber's position is its own (private memory): the next position
 *   it reads, starting at `head` when it subscribes. At position c, slot
 *   c % n holds
 *     PUBLISHED(c)       the message: copy it (or peek at it), c + 1;
 *     SKIPPED(c)         nothing: c + 1;
 *     WRITING(c), or a position below c
 *                        not there yet: wait (below), unless the slot's
 *                        owner word claims c for a token that is dead: that
 *                        publisher is gone and c will never come, c + 1
 *                        (the subscriber skips it for itself, reading only;
 *                        publishers repair the slot when they come round);
 *     a position above c it was overwritten (drop mode, or a forged cursor):
 *                        the subscriber lost c and what came after it up to
 *                        where it resumes, max(c + 1, head - n); it counts
 *                        them all as dropped (a lost position that an abort
 *                        had left empty is counted too: it cannot be told).
 *   A copy whose second look at seq differs was overwritten during the
 *   copy: the same. In block mode neither happens to a live subscriber
 *   whose cursor nobody forged.
 *
 * Cursors: how a block-mode publisher learns where subscribers are
 *   Each subscriber has the cursor of its token's index in the table (a
 *   token is the broker's, see below). It writes its token there and its
 *   position (the next it will read) after each message, a release store
 *   after its copy (sequentially consistent in block mode, ordered against
 *   the publisher's flag); a peek leaves it as it is until the release, so
 *   a peeked message is not overwritten in block mode. On subscribing it
 *   stores position = head, then its token, then position = head again
 *   (all sequentially consistent): a publisher that read the cursors
 *   before the token became visible had read head no later, so it claims
 *   nothing this subscriber needs. On closing it stores token 0.
 *   A publisher counts cursor i when subscriber holder i is LIVE and the
 *   cursor's token is that holder's current token; the lowest counted
 *   position (or head, when none) plus n is how far it may publish. It
 *   keeps that bound in its own memory and reads the table again only when
 *   it reaches it: one pass over the cursors per lap, not per message.
 *
 * Holder tokens and repair
 *   Both kinds of opener get a token from the broker (the open answer's
 *   `holder`): publishers from the publisher holder table, subscribers
 *   from the subscriber holder table (`subscribers` entries: more
 *   subscribers at once are refused with EUSERS). Entries, tokens,
 *   generations and liveness are exactly the ring's (proto/ring.h): the
 *   broker pins each opener's process with a pidfd and marks its entry DEAD
 *   when it exits or closes. So a subscriber killed with SIGKILL stops
 *   counting for `block` as soon as the broker marks it (a publisher that
 *   waits for space polls every BCAST_REPAIR_POLL_MS for that), and a
 *   publisher killed between claim and publish is repaired by whoever
 *   waits at its slot and may write: a publisher coming round turns seq
 *   WRITING(p) (or the lap before, claimed for p) into SKIPPED(p) with a
 *   compare-and-swap; subscribers skip p for themselves. A publisher taken
 *   for dead that is not (the broker had no pidfd of it and its connection
 *   ended) finds its publish refused when a publisher repaired the slot,
 *   and publishes again; if none did yet, its message gets through, but
 *   subscribers that had skipped p for themselves miss it. Only a token
 *   the broker counts dead is skipped, so a live publisher with a pidfd,
 *   however slow, never loses a message this way.
 *
 * Sleeping and waking (no system call per message)
 *   The flags are bit sets, as the ring's (RING_SLEEP_FUTEX, RING_SLEEP_FD
 *   in proto/ring.h): a waiter raises its bit with an atomic or, the waker
 *   exchanges the word for 0 and serves each bit it took; a waiter in an
 *   event loop (shmb_channel_fd()) is served by a byte in the channel's
 *   wake-up FIFO of its side (data for subscribers, space for publishers).
 *   Subscribers (and a publisher waiting for the lap before to be
 *   published) sleep on the futex word `data_seq` of the data header after
 *   raising `sub_sleeping` in the table; a publisher that published reads
 *   the flag, and only if it is up exchanges it to 0, bumps `data_seq` and
 *   wakes all: one wake per sleep, as in the ring. A block-mode publisher
 *   waiting for space sleeps on `space_seq` after raising `pub_sleeping`
 *   (both in the table); a subscriber that moved its cursor reads the flag
 *   the same way. An event loop's subscriber waits on a FIFO of its own,
 *   NAME.data.I for cursor I (the broker makes one per cursor), not the
 *   channel's: subscribers do not wait for the same thing (each has its own
 *   position), so one that empties a shared FIFO at its wait may swallow
 *   the byte another one needs. It raises RING_SLEEP_FD in its cursor's
 *   `sleeping`, then in `sub_sleeping`, then looks again; a publisher that
 *   takes RING_SLEEP_FD from `sub_sleeping` exchanges every cursor's
 *   `sleeping` for 0 and writes a byte into the FIFO of each that had the
 *   bit, and one into the channel's data FIFO, where a publisher waiting
 *   for the lap before (or a subscriber that can reach no FIFO of its own)
 *   waits. Futex waits on a read-only mapping are allowed (FUTEX_WAIT
 *   only reads the word). Sleeps are bounded: BCAST_REPAIR_POLL_MS while a
 *   claim or a subscriber may be dead, BCAST_POLL_MS otherwise (a flag
 *   cleared by someone else costs at most that). A subscriber rewrites its
 *   cursor before it sleeps, which also undoes a forged one.
 *
 * Removal: as the ring's. Whoever removes the channel first stores
 * BCAST_STATE_REMOVED in `state`, bumps `data_seq` and wakes all its
 * sleepers, and does the same with the table's `space_seq` when it has
 * the table; every call reads `state` each pass and after each wake-up,
 * and answers -EIDRM.
 */

#include <limits.h>
#include <linux/futex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "proto/ring.h"

#define BCAST_MAGIC UINT32_C(0x42424d53)        /* "SMBB" little-endian */
#define BCAST_TABLE_MAGIC UINT32_C(0x54424d53)  /* "SMBT" */
/*
 * 1: its first builds raised the sleeping flags by storing 1 (any
 *    non-zero value a futex sleeper); the bit sets (RING_SLEEP_*) came with
 *    shmb_channel_fd() under the same number.
 * 2: a subscriber that waits in an event loop waits on a FIFO of its own,
 *    flagged in its cursor's `sleeping` (reserved, 0, in 1): with one FIFO
 *    for all, a subscriber that caught up emptied the byte written for
 *    another. A publisher of 1 would not write these FIFOs, hence the new
 *    number.
 */
#define BCAST_VERSION 2
#define BCAST_HEADER_SIZE 512
#define BCAST_PUBLISHERS RING_HOLDERS           /* rw openers at once; more are refused (EUSERS) */
#define BCAST_SUBSCRIBERS_MAX RING_HOLDERS      /* the largest "subscribers" */
#define BCAST_HOLDERS_OFFSET BCAST_HEADER_SIZE
#define BCAST_SUBSCRIBERS_OFFSET (BCAST_HOLDERS_OFFSET + BCAST_PUBLISHERS * RING_HOLDER_SIZE)
#define BCAST_SLOT_HEADER 64
#define BCAST_TABLE_HEADER_SIZE 256
#define BCAST_CURSOR_SIZE 64

/* A waiter at a claim or a full channel polls for dead holders this often; any other sleep is bounded by BCAST_POLL_MS. */
#define BCAST_REPAIR_POLL_MS 50
#define BCAST_POLL_MS 500

enum {
        BCAST_STATE_LIVE = 0,
        BCAST_STATE_REMOVED = 1,        /* final */
};

/* BcastHeader.overflow */
enum {
        BCAST_OVERFLOW_BLOCK = 0,       /* publishers wait for the slowest counted subscriber */
        BCAST_OVERFLOW_DROP = 1,        /* publishers never wait; lagging subscribers lose the oldest */
};

/* The low two bits of a slot's seq. */
enum {
        BCAST_SEQ_WRITING = 1,
        BCAST_SEQ_PUBLISHED = 2,
        BCAST_SEQ_SKIPPED = 3,
};

enum {
        BCAST_SEM_RESERVED,             /* the channel's own; starts at 1; unused (as a ring's) */
        BCAST_NSEMS,
};

typedef struct BcastHeader {
        uint32_t magic;
        uint32_t version;
        uint32_t slot_size;
        uint32_t slots;
        uint32_t slot_stride;
        uint32_t data_offset;
        uint32_t nsems_reserved;
        uint32_t state;                 /* BCAST_STATE_*: written at creation and at removal only */
        uint32_t publishers;            /* entries of the publisher holder table: BCAST_PUBLISHERS */
        uint32_t publishers_offset;     /* BCAST_HOLDERS_OFFSET */
        uint32_t subscribers;           /* entries of the subscriber holder table and of the cursor table */
        uint32_t subscribers_offset;    /* BCAST_SUBSCRIBERS_OFFSET */
        uint32_t overflow;              /* BCAST_OVERFLOW_* */
        uint32_t table_key;             /* the table segment's System V key */
        int32_t table_id;               /* and id */
        uint32_t table_size;            /* bcast_table_size(subscribers) */
        _Alignas(64) uint64_t head;     /* next position to claim for publishing */
        uint32_t pub_cpu;               /* where a publisher last ran + 1 (0: unknown), to decide spinning */
        _Alignas(64) uint32_t data_seq; /* futex: bumped after a publish when someone sleeps */
} BcastHeader;

/* The table segment's header: futex words and flags that readers must write. */
typedef struct BcastTable {
        uint32_t magic;
        uint32_t version;
        uint32_t subscribers;           /* as the data header's; never trusted (anyone may write it) */
        uint32_t reserved;
        _Alignas(64) uint32_t sub_sleeping;     /* raised by a sleeper on data_seq, cleared by the waker */
        _Alignas(64) uint32_t space_seq;        /* futex: bumped when a subscriber moved on and a publisher sleeps */
        uint32_t pub_sleeping;                  /* raised by a publisher waiting for space, cleared by the waker */
} BcastTable;

/* One subscriber's report; on a cache line of its own. */
typedef struct BcastCursor {
        uint64_t position;              /* the next position it reads */
        uint32_t token;                 /* its token while it is subscribed; 0: nobody */
        uint32_t sleeping;              /* RING_SLEEP_FD: it waits on its own FIFO; cleared by the waker */
        uint64_t dropped;               /* what it lost so far (drop mode), for status */
} BcastCursor;

typedef struct BcastSlot {
        uint64_t seq;                   /* position << 2 | BCAST_SEQ_* */
        uint64_t owner;                 /* (position & 0xffffffff) << 32 | token: the ring's owner word */
        uint32_t len;
        uint32_t reserved;
        /* payload follows at BCAST_SLOT_HEADER: slot_size bytes */
} BcastSlot;

_Static_assert(sizeof(BcastHeader) <= BCAST_HEADER_SIZE, "broadcast header too large");
_Static_assert(sizeof(BcastTable) <= BCAST_TABLE_HEADER_SIZE, "broadcast table header too large");
_Static_assert(sizeof(BcastCursor) <= BCAST_CURSOR_SIZE, "broadcast cursor too large");
_Static_assert(sizeof(BcastSlot) <= BCAST_SLOT_HEADER, "broadcast slot header too large");
_Static_assert(BCAST_SUBSCRIBERS_MAX < (1u << RING_TOKEN_INDEX_BITS), "subscriber index fits a token");
/* Offsets that shmbroker-ring(7) documents for clients in other languages. */
_Static_assert(offsetof(BcastHeader, state) == 28 && offsetof(BcastHeader, subscribers) == 40 &&
               offsetof(BcastHeader, overflow) == 48 && offsetof(BcastHeader, table_key) == 52 &&
               offsetof(BcastHeader, table_size) == 60 && offsetof(BcastHeader, head) == 64 &&
               offsetof(BcastHeader, pub_cpu) == 72 &&
               offsetof(BcastHeader, data_seq) == 128 && offsetof(BcastTable, sub_sleeping) == 64 &&
               offsetof(BcastTable, space_seq) == 128 && offsetof(BcastTable, pub_sleeping) == 132 &&
               offsetof(BcastCursor, token) == 8 && offsetof(BcastCursor, sleeping) == 12 &&
               offsetof(BcastCursor, dropped) == 16 &&
               offsetof(BcastSlot, owner) == 8 && offsetof(BcastSlot, len) == 16,
               "broadcast layout offsets");
_Static_assert(offsetof(BcastHeader, data_offset) == 20 && offsetof(BcastHeader, nsems_reserved) == 24 &&
               offsetof(BcastHeader, publishers) == 32 && offsetof(BcastHeader, publishers_offset) == 36 &&
               offsetof(BcastHeader, subscribers_offset) == 44 && offsetof(BcastHeader, table_id) == 56 &&
               offsetof(BcastTable, subscribers) == 8 && BCAST_SUBSCRIBERS_OFFSET == 8704,
               "the rest of shmbroker-ring(7)'s broadcast offsets");

static inline uint64_t bcast_seq(uint64_t pos, unsigned kind) {
        return pos << 2 | kind;
}

static inline uint64_t bcast_seq_pos(uint64_t seq) {
        return seq >> 2;
}

static inline unsigned bcast_seq_kind(uint64_t seq) {
        return (unsigned) (seq & 3);
}

static inline uint64_t bcast_slot_stride(uint32_t slot_size) {
        return ((uint64_t) slot_size + BCAST_SLOT_HEADER + 63) & ~UINT64_C(63);
}

static inline uint32_t bcast_data_offset(uint32_t subscribers) {
        return (uint32_t) ((BCAST_SUBSCRIBERS_OFFSET + (uint64_t) subscribers * RING_HOLDER_SIZE + 63) & ~UINT64_C(63));
}

static inline uint64_t bcast_segment_size(uint32_t slot_size, uint32_t slots, uint32_t subscribers) {
        return bcast_data_offset(subscribers) + (uint64_t) slots * bcast_slot_stride(slot_size);
}

static inline uint32_t bcast_table_size(uint32_t subscribers) {
        return BCAST_TABLE_HEADER_SIZE + subscribers * BCAST_CURSOR_SIZE;
}

/* The table segment's mode: read and write for every class the channel's mode lets read. */
static inline unsigned bcast_table_mode(unsigned mode) {
        return ((mode & 0444) | (mode & 0444) >> 1) & 0666;
}

static inline RingHolder *bcast_publisher_at(const BcastHeader *h, uint32_t index) {
        return (RingHolder *) ((char *) h + BCAST_HOLDERS_OFFSET + (uint64_t) index * RING_HOLDER_SIZE);
}

static inline RingHolder *bcast_subscriber_at(const BcastHeader *h, uint32_t index) {
        return (RingHolder *) ((char *) h + BCAST_SUBSCRIBERS_OFFSET + (uint64_t) index * RING_HOLDER_SIZE);
}

static inline BcastSlot *bcast_slot_at(const BcastHeader *h, uint64_t pos) {
        return (BcastSlot *) ((char *) h + h->data_offset + (pos % h->slots) * h->slot_stride);
}

static inline BcastCursor *bcast_cursor_at(const BcastTable *t, uint32_t index) {
        return (BcastCursor *) ((char *) t + BCAST_TABLE_HEADER_SIZE + (uint64_t) index * BCAST_CURSOR_SIZE);
}

/* The entry a token names (its low bits), or UINT32_MAX for none below n. */
static inline uint32_t bcast_token_index(uint32_t token, uint32_t n) {
        uint32_t index = ring_token_index(token);

        return index < n ? index : UINT32_MAX;
}

/*
 * ring_token_dead() for a holder table of n entries at `table`: the entry
 * is not LIVE under the token's generation, or the token names no entry.
 * Token 0 is nobody's.
 */
static inline bool bcast_token_dead(const RingHolder *table, uint32_t n, uint32_t token) {
        return ring_holders_token_dead(table, n, token);
}

/* The token that holder entry `index` carries now, or 0 when it is not LIVE. */
static inline uint32_t bcast_live_token(const RingHolder *table, uint32_t index) {
        uint64_t word = __atomic_load_n(&table[index].word, __ATOMIC_ACQUIRE);

        if ((uint32_t) word != RING_HOLDER_LIVE)
                return 0;
        return ring_token(index, (uint32_t) (word >> 32));
}

/*
 * Lay out a fresh data segment of bcast_segment_size() zeroed bytes, and
 * its table of bcast_table_size() zeroed bytes (NULL: not attached here).
 */
static inline void bcast_format(void *addr, uint32_t slot_size, uint32_t slots, uint32_t subscribers,
                                uint32_t overflow, uint32_t table_key, int table_id, void *table) {
        BcastHeader *h = addr;

        *h = (BcastHeader) {
                .magic = BCAST_MAGIC,
                .version = BCAST_VERSION,
                .slot_size = slot_size,
                .slots = slots,
                .slot_stride = (uint32_t) bcast_slot_stride(slot_size),
                .data_offset = bcast_data_offset(subscribers),
                .nsems_reserved = BCAST_NSEMS,
                .state = BCAST_STATE_LIVE,
                .publishers = BCAST_PUBLISHERS,
                .publishers_offset = BCAST_HOLDERS_OFFSET,
                .subscribers = subscribers,
                .subscribers_offset = BCAST_SUBSCRIBERS_OFFSET,
                .overflow = overflow,
                .table_key = table_key,
                .table_id = table_id,
                .table_size = bcast_table_size(subscribers),
                .head = slots,
        };
        for (uint32_t i = 0; i < slots; i++)
                bcast_slot_at(h, i)->seq = bcast_seq(i, BCAST_SEQ_SKIPPED);
        if (table) {
                BcastTable *t = table;

                *t = (BcastTable) { .magic = BCAST_TABLE_MAGIC, .version = BCAST_VERSION, .subscribers = subscribers };
        }
}

static inline bool bcast_header_is_ours(const BcastHeader *h) {
        return h->magic == BCAST_MAGIC && h->version == BCAST_VERSION;
}

static inline bool bcast_is_removed(const BcastHeader *h) {
        return __atomic_load_n(&h->state, __ATOMIC_ACQUIRE) != BCAST_STATE_LIVE;
}

/*
 * Tell every client of a channel about to be removed (see the top): the
 * data header's state and futex word, and the table's, when the caller has
 * it attached (NULL: publishers waiting for space notice within
 * BCAST_REPAIR_POLL_MS).
 */
static inline void bcast_mark_removed(BcastHeader *h, BcastTable *t) {
        __atomic_store_n(&h->state, (uint32_t) BCAST_STATE_REMOVED, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&h->data_seq, 1, __ATOMIC_SEQ_CST);
        (void) syscall(SYS_futex, &h->data_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        if (t) {
                __atomic_add_fetch(&t->space_seq, 1, __ATOMIC_SEQ_CST);
                (void) syscall(SYS_futex, &t->space_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        }
}
