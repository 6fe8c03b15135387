/*
 * Ring send and receive: the lock-free slot-sequence queue described in
 * proto/ring.h. Positions only grow (64-bit, never wrap in practice);
 * slot p % n is free for the producer of lap k when seq == p, and full for
 * its consumer when seq == p + 1.
 *
 * Sleeping: a side that finds the ring full (empty) reads the futex word,
 * raises send_sleeping (recv_sleeping), checks the slot once more, and
 * only then sleeps. The other side publishes its slot, and if the flag is up, exchanges it back to 0, bumps the word and wakes
 * everyone: one wake-up syscall per sleep, not one per message while the
 * sleeper is still getting up. Sequentially consistent accesses on both
 * sides (the publisher's is its compare-and-swap of seq, which doubles as
 * the full fence) make the lost wake-up impossible: either the sleeper sees the new slot, or the
 * publisher sees the flag; a sleeper that raised the flag after it was
 * cleared sees the word moved and looks again.
 *
 * Claims: the owner word's compare-and-swap is the claim, and it names
 * this handle's holder token; head (tail) follows, moved by the claimer or
 * by whoever finds the slot claimed. Publish and free are
 * compare-and-swaps as well: they fail only when a repairer took the slot
 * from a claimer it judged dead, and then the call starts over.
 *
 * Repair: a slot claimed but never finished (its claimer was killed in
 * between) is found by whoever waits at it. A waiter that saw the claim
 * never sleeps for long: every REPAIR_POLL_MS it asks the holder table
 * whether the claimer's token is dead (loads only: polling makes no
 * system call), and if so, takes the slot over. One that slept before the
 * claim was made is woken by the broker when it marks the claimer dead
 * (ring_wake_sleepers()): with every slot dead-claimed, nobody else would.
 *
 * Removal: the daemon marks a ring it removes (proto/ring.h) and wakes its
 * sleepers. Each pass of a call's loop reads the state word first (one
 * load of a line nobody writes while the ring lives: the fast path, one
 * pass, stays as it was), and a waiting call reads it again while it
 * spins, before it sleeps and after every wake-up: a removed ring answers
 * -EIDRM, whatever is still in it. The sleeper's order (word, flag, slot,
 * state, all sequentially consistent) against the remover's (state, then
 * word) means it either sees REMOVED or finds the word moved.
 */

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client/prefetch.h"
#include "client/shmbroker-internal.h"
#include "common/util.h"

/*
 * SHMB_NO_CHANNEL_FD builds the ring as it was before shmb_channel_fd():
 * only for the bench, which measures that the fast path did not change.
 */

#define LOAD(p, mo) __atomic_load_n((p), (mo))
#define STORE(p, v, mo) __atomic_store_n((p), (v), (mo))
#define ACQ __ATOMIC_ACQUIRE
#define REL __ATOMIC_RELEASE
#define RLX __ATOMIC_RELAXED
#define SEQ __ATOMIC_SEQ_CST

/* GCC's; clang (the fuzz build) has no such attribute. */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_CLONE __attribute__((noclone))
#else
#define NO_CLONE
#endif

/*
 * The functions every message runs start on a cache line, so that where
 * the linker puts ring.o (after more or less of the library's other code)
 * does not move their loops across fetch and decode boundaries: 16 bytes
 * of such a shift made 64 B messages 5-8% slower, measured as the fd
 * support's cost until the two builds' hot code was found to be the same.
 */
#define HOT_PATH __attribute__((aligned(64)))

#define REPAIR_POLL_MS 50
#define GONE_POLL_MS RING_GONE_POLL_MS
#define SPIN_YIELD_AFTER_NS 2000
/* A pause is ~25 ns on the machines measured; values from a sweep at 4 KiB. */
#define MID_COPY_BYTES_PER_PAUSE 128
#define MID_COPY_PAUSES_MAX 64

static RingSlot *slot_at(const shmb_channel *ch, uint64_t pos) {
        return (RingSlot *) (ch->slots + (pos % ch->info.slots) * ch->stride);
}

/* Someone claimed the slot for pos, and the holder table says it is gone. */
static bool claimer_dead(const shmb_channel *ch, uint64_t owner, uint64_t pos) {
        return ring_owner_claims(owner, pos) && ring_token_dead(ch->ring, (uint32_t) owner);
}

/*
 * Whether an owner word read at the slot of pos is from before any claim of
 * pos: the slot's last lap, or never claimed. A later lap's claim (we read
 * a stale head) is not, and must not be overwritten.
 */
static bool owner_before(uint64_t owner, uint64_t pos) {
        return (uint32_t) owner == 0 || (int32_t) ((uint32_t) (owner >> 32) - (uint32_t) pos) < 0;
}

/*
 * Claim the slot of pos, whose seq was just read as want and owner word as
 * owner, counter (head or tail) as pos: 1 claimed, 0 not (look again),
 * -ENOTCONN, or -EPROTO for a claim of a later lap on a slot still at pos
 * with counter still pos, which only a scribble makes (looking again would
 * spin for ever). The compare-and-swap fails if anyone claimed it
 * meanwhile; seq is read again after it, as a caller that slept between
 * its first looks (2^32 positions: the owner word keeps 32 bits of them)
 * may have claimed a lap that is over: then the claim is given back.
 */
static inline void notify(shmb_channel *ch, unsigned dir);
static int dropped(const shmb_channel *ch);

static HOT_PATH int claim(shmb_channel *ch, RingSlot *slot, uint64_t *word, const uint64_t *counter, uint64_t owner,
                           uint64_t pos, uint64_t want) {
        uint32_t token = channel_token(ch);
        uint64_t mine = ring_owner(pos, token);

        /*
         * A holder the broker counts as gone (it had no pidfd of us when our
         * connection ended, or a fork gave our hold back) would have its claim
         * repaired under it: a message lost. It claims nothing until it has a
         * live token again.
         */
        if (ring_token_dead(ch->ring, token))
                return dropped(ch);
        if (!owner_before(owner, pos))
                return LOAD(&slot->seq, ACQ) == want && LOAD(counter, ACQ) == pos && LOAD(word, ACQ) == owner ?
                       -EPROTO : 0;
        if (!__atomic_compare_exchange_n(word, &owner, mine, false, SEQ, RLX))
                return 0;
        /*
         * Marked dead between that look and the claim: the broker's wake-up for
         * it came before the claim existed, and none comes again, so a waiter
         * that slept before the claim would never learn of it if we died now.
         * Wake them ourselves (sequentially consistent against their flags, as
         * the broker's is; a mark after our load wakes after the claim). The
         * claim stays: given back, it would leave a hole that others already
         * moved head (tail) past. Repaired under us, our publish (free) fails,
         * and the call gives up with -ENOTCONN; else it completes.
         */
        if (ring_token_dead(ch->ring, token)) {
                notify(ch, WAKE_DATA);
                notify(ch, WAKE_SPACE);
        }
        if (LOAD(&slot->seq, ACQ) == want)
                return 1;
        (void) __atomic_compare_exchange_n(word, &mine, owner, false, REL, RLX);
        return 0;
}

/* Move a position counter on from pos; whoever finds it behind a claim helps, so a failure is someone's success. */
static void advance(uint64_t *counter, uint64_t pos) {
        (void) __atomic_compare_exchange_n(counter, &pos, pos + 1, false, REL, RLX);
}

static char *payload(RingSlot *slot) {
        return (char *) slot + RING_SLOT_HEADER;
}

/*
 * ring_is_removed() (proto/ring.h) as a sleeper reads it: sequentially
 * consistent, ordered against its futex word and flag (see the top).
 */
static bool ring_removed_seq(const shmb_channel *ch) {
        return LOAD(&ch->ring->state, SEQ) != RING_STATE_LIVE;
}

/*
 * Removed, or gone as channel_gone() says: the handle went stale at a
 * rejoin, or a wait found the objects removed. A ring that was removed
 * while the broker was away (an ipcrm or rm after a crash) was never
 * marked REMOVED, and its peers may keep using it: their messages reach
 * nobody who opens the channel now.
 */
static bool ring_gone(const shmb_channel *ch) {
        return ring_is_removed(ch->ring) || channel_gone(ch);
}

/*
 * This handle's token is dead, or its claim was taken: -ENOTCONN, unless
 * the channel went (a stop marks it removed before it drops the holds), so
 * that a removal says -EIDRM whichever the caller saw first.
 */
static int dropped(const shmb_channel *ch) {
        return ring_gone(ch) ? -EIDRM : -ENOTCONN;
}

/*
 * One send or receive call's waiting: the side it waits on, and its timeout.
 * The deadline is read off the clock only when the call first has to wait:
 * clock_gettime() costs 20-40 ns under KVM, a quarter of a 4 KiB message.
 */
typedef struct Waiter {
        uint32_t *word, *sleeping;      /* this side's futex word and flag */
        unsigned dir;                   /* WAKE_*: which side this is */
        uint32_t *my_cpu, *peer_cpu;
        int timeout_ms;
        int64_t deadline;               /* 0: none, or not read yet */
} Waiter;

static int64_t deadline_of(Waiter *w) {
        if (w->timeout_ms > 0 && w->deadline == 0)
                w->deadline = client_now_ns() + (int64_t) w->timeout_ms * 1000000;
        return w->deadline;
}

/* Not FUTEX_PRIVATE: the word lives in a segment shared between processes. */
static int futex_wait(uint32_t *word, uint32_t expected, int64_t deadline) {
        struct timespec ts, *tsp = NULL;

        if (deadline) {
                int64_t left = deadline - client_now_ns();

                if (left <= 0)
                        return -ETIMEDOUT;
                ts.tv_sec = left / 1000000000;
                ts.tv_nsec = left % 1000000000;
                tsp = &ts;
        }
        if (syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0) == 0)
                return 0;
        if (errno == EAGAIN)
                return 0;               /* the word moved on: look again */
        return -errno;                  /* ETIMEDOUT, EINTR */
}

static void futex_wake_all(uint32_t *word) {
        syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/*
 * After a slot changed hands by a sequentially consistent compare-and-swap
 * of its seq (which orders it against the sleeper's flag like a full
 * fence would), wake the sleepers, if any, once.
 */
/*
 * Someone waits for this side: wake them. Out of line and cold, so that
 * notify(), which every publish and free runs, stays a load and a branch
 * (inlined, the fd branch made the compiler save registers on every call:
 * 64 B messages ran 6-8% slower). Not cloned either: GCC gave the build
 * without fd support a clone taking other arguments, and so other code
 * around every call of the hot paths.
 */
static __attribute__((noinline, cold)) NO_CLONE void wake_waiters(shmb_channel *ch, unsigned dir, uint32_t *sleeping) {
        uint32_t *word = dir == WAKE_DATA ? &ch->ring->data_seq : &ch->ring->space_seq;
        uint32_t bits = __atomic_exchange_n(sleeping, 0, SEQ);

        /* An unknown bit (a corrupt header) is served as a sleeper: a spurious wake-up at worst. */
        if (bits & ~(uint32_t) RING_SLEEP_FD) {
                __atomic_add_fetch(word, 1, SEQ);
                futex_wake_all(word);
        }
#ifndef SHMB_NO_CHANNEL_FD
        if (bits & RING_SLEEP_FD)
                channel_wake_signal(ch, dir, sleeping);
#endif
}

static inline void notify(shmb_channel *ch, unsigned dir) {
        uint32_t *sleeping = dir == WAKE_DATA ? &ch->ring->recv_sleeping : &ch->ring->send_sleeping;

        if (LOAD(sleeping, SEQ))
                wake_waiters(ch, dir, sleeping);
}

/* The slot a sender that claimed slot prefetches (client/prefetch.h); inline here, as send_claim() runs it. */
static inline const char *slot_ahead(const shmb_channel *ch, const void *slot) {
        return prefetch_target(slot, ch->ahead, ch->slots, ch->info.slots * ch->stride);
}

const void *ring_prefetch_target(const shmb_channel *ch, const void *slot) {
        return slot_ahead(ch, slot);
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
}

/*
 * The slot is claimed and being copied (into, or out of): wait about as long
 * as a large copy takes before polling it. Polling the line the copier is
 * about to publish on makes its publish (and the fence after it) wait for
 * that line to come back; at 4 KiB this cost a fifth of the throughput.
 * Only where spinning is allowed, and in proportion to the message: a
 * fixed 0.4 us more made 64 B messages faster (26 to 48 M/s), but a bench
 * run where the VM's cores were far apart then showed 64 B round trips of
 * 0.59 us (0.17-0.22 otherwise): there a waiter often meets the slot
 * mid-copy and would sit out the whole 0.4 us.
 */
static void await_copy(const shmb_channel *ch, const RingSlot *slot) {
        unsigned pauses = MIN(LOAD(&slot->len, RLX) / MID_COPY_BYTES_PER_PAUSE, MID_COPY_PAUSES_MAX);

        if (LOAD(&ch->spin_us, RLX) == 0)
                return;
        while (pauses-- > 0)
                cpu_relax();
}

/*
 * Spin on the slot before sleeping, when the channel allows it. The budget
 * adapts: it doubles (up to spin_us) when spinning paid off and halves when
 * it did not; and after a few microseconds the spinner yields, so a peer
 * that shares our CPU gets to run instead of waiting out our spin.
 */
static bool spin_for(shmb_channel *ch, RingSlot *slot, uint64_t target, const Waiter *w) {
        uint32_t max = LOAD(&ch->spin_us, RLX) * 1000u, budget;
        unsigned here;
        int64_t start, end;

        if (max == 0)
                return false;
        /* On the peer's CPU a spin only delays the peer: sleep at once instead. */
        here = channel_note_cpu(w->my_cpu);
        if (here && LOAD(w->peer_cpu, RLX) == here)
                return false;
        budget = LOAD(&ch->spin_budget_ns, RLX);
        budget = budget ? MIN(budget, max) : max;
        start = client_now_ns();
        end = start + budget;
        if (w->deadline && end > w->deadline)
                end = w->deadline;      /* a spin never outlasts the caller's timeout */
        for (unsigned i = 1;; i++) {
                if ((int64_t) (LOAD(&slot->seq, ACQ) - target) >= 0) {
                        STORE(&ch->spin_budget_ns, MIN(budget * 2, max), RLX);
                        return true;
                }
                if ((i & 63) == 0) {
                        int64_t now = client_now_ns();

                        /* A removed ring never fills this slot: stop now, wait_slot() says why. */
                        if (now > end || ring_is_removed(ch->ring))
                                break;
                        /* Yield only once the peer is clearly not answering from another CPU. */
                        if (now - start > SPIN_YIELD_AFTER_NS)
                                sched_yield();
                } else
                        cpu_relax();
        }
        STORE(&ch->spin_budget_ns, MAX(budget / 2, 1000u), RLX);
        return false;
}

/*
 * A caller that will not wait is about to get -EAGAIN. If it polls the fd
 * of shmb_channel_fd(), make sure the fd wakes it: empty the side's FIFO,
 * raise RING_SLEEP_FD, then look again. The order is the futex sleeper's
 * (flag, then slot, all sequentially consistent against the waker's
 * publish, then exchange): either the waker sees the bit and writes the
 * FIFO, or we see the slot changed, and then pass on the wake-up that
 * emptying the FIFO may have taken from another waiter. 0: look again.
 */
static int poll_wait(shmb_channel *ch, RingSlot *slot, uint64_t target, const Waiter *w) {
#ifdef SHMB_NO_CHANNEL_FD
        return -EAGAIN;
#else
        int r = channel_wake_arm(ch, w->dir, NULL);

        if (r < 0)
                return r;       /* -EAGAIN: nobody polls */
        __atomic_fetch_or(w->sleeping, (uint32_t) RING_SLEEP_FD, SEQ);
        if ((int64_t) (LOAD(&slot->seq, SEQ) - target) < 0 && !ring_removed_seq(ch))
                return -EAGAIN;
        channel_wake_pass_on(ch, w->dir);
        return 0;
#endif
}

/*
 * Sleep until the slot may have changed (seq - target >= 0) or the deadline
 * passes, spinning first when that can pay. claim is the other side's owner
 * word at the slot, and claimed_pos the position a claim of it names: while
 * that side holds the slot mid-message, wait first as long as its copy takes,
 * and never sleep past the next repair poll. repairable is the seq at which
 * the caller's repair takes a dead claimer's slot over. Returns 0 to look
 * again, or a negative errno; either way the caller then asks whether the
 * slot needs repair.
 */
static int wait_slot(shmb_channel *ch, RingSlot *slot, uint64_t target, const uint64_t *claim, uint64_t claimed_pos,
                     uint64_t repairable, Waiter *w) {
        int64_t deadline, until, poll_end;
        unsigned poll_ms = GONE_POLL_MS;
        uint64_t owner;
        uint32_t v;
        int r = 0;

        if (ring_owner_claims(LOAD(claim, RLX), claimed_pos))
                await_copy(ch, slot);
        /*
         * A caller that polls calls again at once: one pause here keeps its loop
         * from taking the slot's line away from the peer that is about to
         * write it (and from a pipeline flush when it changes).
         */
        if (w->timeout_ms == 0) {
                cpu_relax();
                return poll_wait(ch, slot, target, w);
        }
        until = deadline = deadline_of(w);
        /* Also when someone holds the slot mid-message: almost always it is busy copying. */
        if (spin_for(ch, slot, target, w))
                return 0;
        /*
         * The word first, then the flag: a waker that clears our flag (perhaps for
         * another slot) also moves the word, so our FUTEX_WAIT returns at once and
         * we raise the flag again. Flag first would let that waker leave us asleep
         * with the flag down, never to be woken.
         */
        v = LOAD(w->word, SEQ);
        /* Or'ed: a waiter on the FIFO may have its bit up (a store would drop it); costs nothing beside a sleep. */
#ifdef SHMB_NO_CHANNEL_FD
        STORE(w->sleeping, RING_SLEEP_FUTEX, SEQ);
#else
        __atomic_fetch_or(w->sleeping, (uint32_t) RING_SLEEP_FUTEX, SEQ);
#endif
        /*
         * Someone holds the slot mid-message: poll, as its claim may be left by a
         * death the broker marked before it saw our flag (ring_wake_sleepers()).
         * After the flag: a claimer that dies later finds it up, and is marked
         * dead with a wake-up. A claimer dead already is repaired at once, if
         * the slot is as its claim left it. A dead claim on a slot at any other
         * seq (only a scribble makes one) repairs nothing: returning at once
         * would have the caller look again and again, never reaching its
         * deadline. Such a slot is waited at like any other that stays put.
         */
        owner = LOAD(claim, SEQ);
        if (ring_owner_claims(owner, claimed_pos)) {
                if (ring_token_dead(ch->ring, (uint32_t) owner) && LOAD(&slot->seq, SEQ) == repairable)
                        return 0;
                poll_ms = REPAIR_POLL_MS;
        }
        /*
         * Never asleep for longer than GONE_POLL_MS either: nobody marks a ring
         * that was removed while the broker was away, so a sleeper asks the
         * kernel (shmb_channel_check()) whether its objects are still there.
         */
        poll_end = client_now_ns() + (int64_t) poll_ms * 1000000;
        if (!until || poll_end < until)
                until = poll_end;
        /* The state after the word: a removal after this read moves the word, and FUTEX_WAIT returns. */
        if ((int64_t) (LOAD(&slot->seq, SEQ) - target) < 0 && !ring_removed_seq(ch))
                r = futex_wait(w->word, v, until);
        /* Whatever woke us (the remover's wake, a signal, the deadline), a removed ring is the answer. */
        if (ring_removed_seq(ch) || channel_gone(ch))
                return -EIDRM;
        /* Only a poll ran out: look again, unless the objects went. */
        return channel_after_wait(ch, r, r == -ETIMEDOUT && until != deadline, GONE_POLL_MS);
}

int ring_channel_init(shmb_channel *ch, void *addr, uint64_t size) {
        const RingHeader *h = addr;
        uint32_t slot_size, slots;
        uint64_t stride;

        if (!ch || !addr || size < RING_HEADER_SIZE)
                return -EINVAL;
        /* Another version's header may place anything anywhere: nothing of it is read. */
        if (!ring_header_is_ours(h))
                return -EPROTO;
        /* Read once: a writer of the segment may change them meanwhile, and the handle keeps what was checked. */
        slot_size = LOAD(&h->slot_size, RLX);
        slots = LOAD(&h->slots, RLX);
        /* A ring of one slot would take a second message over the first: refused, not run wrongly. */
        if (slot_size == 0 || slot_size > RING_SLOT_SIZE_MAX || slots < RING_SLOTS_MIN || slots > RING_SLOTS_MAX)
                return -EPROTO;
        stride = ring_slot_stride(slot_size);
        if (h->slot_stride != stride || h->data_offset != RING_DATA_OFFSET || h->holders != RING_HOLDERS ||
            h->holders_offset != RING_HOLDERS_OFFSET || size != ring_segment_size(slot_size, slots))
                return -EPROTO;
        ch->ring = addr;
        ch->slots = (char *) addr + RING_DATA_OFFSET;
        ch->stride = stride;
        ch->info.slot_size = slot_size;
        ch->info.slots = slots;
        ch->ahead = cpu_prefetches_for_write() ? prefetch_distance(stride, slots) : 0;
        /* The fast path is the default: a short, adaptive spin, never on the peer's CPU. */
        ch->spin_us = SHMB_DEFAULT_SPIN_US;
        return 0;
}

static int check_ring(const shmb_channel *ch) {
        if (!ch)
                return -EINVAL;
        if (!ch->ring)
                return -ENOTSUP;
        if (ch->access == SHMB_RO)
                return -EACCES;         /* both sides move shared positions */
        return 0;
}

/*
 * Repair, asked only after a wait at the slot (spin or sleep, or a caller
 * that will not wait) left it as it was. Loads and compare-and-swaps only:
 * a poll that repairs nothing makes no system call. Each returns true when
 * the slot was dealt with (by us or meanwhile by another), so the caller
 * looks again.
 */

/* The slot still holds last lap's message, which a receiver claimed and died reading: free the slot. */
static bool free_dead_receivers_slot(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        uint64_t last = pos - ch->info.slots, expected = last + 1;

        if (LOAD(&slot->seq, ACQ) != expected || !claimer_dead(ch, LOAD(&slot->recv_owner, ACQ), last))
                return false;
        if (__atomic_compare_exchange_n(&slot->seq, &expected, pos, false, SEQ, RLX)) {
                advance(&ch->ring->tail, last);         /* if it died before moving tail on */
                notify(ch, WAKE_SPACE);
        }
        return true;
}

/*
 * A sender claimed pos and died before publishing: that message never was.
 * Tombstone the slot (seq from pos to pos + n: free for the next lap), and
 * move tail past it. A sender taken for dead that is not finds its publish
 * refused and sends again.
 */
static bool skip_dead_senders_slot(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        uint64_t expected = pos;

        if (LOAD(&slot->seq, ACQ) != pos || !claimer_dead(ch, LOAD(&slot->send_owner, ACQ), pos))
                return false;
        if (__atomic_compare_exchange_n(&slot->seq, &expected, pos + ch->info.slots, false, SEQ, RLX)) {
                advance(&ch->ring->tail, pos);
                notify(ch, WAKE_SPACE);
                /* Receivers asleep at this position wait on the next one now. */
                notify(ch, WAKE_DATA);
        }
        return true;
}

static Waiter send_waiter(shmb_channel *ch, int timeout_ms) {
        return (Waiter) { .word = &ch->ring->space_seq, .sleeping = &ch->ring->send_sleeping, .dir = WAKE_SPACE,
                          .my_cpu = &ch->ring->send_cpu, .peer_cpu = &ch->ring->recv_cpu, .timeout_ms = timeout_ms };
}

static Waiter recv_waiter(shmb_channel *ch, int timeout_ms) {
        return (Waiter) { .word = &ch->ring->data_seq, .sleeping = &ch->ring->recv_sleeping, .dir = WAKE_DATA,
                          .my_cpu = &ch->ring->recv_cpu, .peer_cpu = &ch->ring->send_cpu, .timeout_ms = timeout_ms };
}

/*
 * Claim the next slot to send len bytes in (the ring's full loop, waits
 * and repairs included): 0 with *ret_slot claimed for *ret_pos, its len
 * set, head moved on; or a negative errno. w is the call's, so that a
 * call that claims again (its claim was taken for dead) keeps its deadline.
 */
static inline HOT_PATH int send_claim(shmb_channel *ch, size_t len, Waiter *w, RingSlot **ret_slot, uint64_t *ret_pos) {
        int r;

        if (len > ch->info.slot_size)
                return -EMSGSIZE;
        for (;;) {
                uint64_t pos, owner;
                RingSlot *slot;
                int64_t diff;

                if (ring_gone(ch))
                        return -EIDRM;
                pos = LOAD(&ch->ring->head, ACQ);
                slot = slot_at(ch, pos);
                diff = (int64_t) (LOAD(&slot->seq, ACQ) - pos);

                if (diff == 0) {
                        owner = LOAD(&slot->send_owner, ACQ);
                        if (ring_owner_claims(owner, pos)) {
                                advance(&ch->ring->head, pos);  /* claimed, head not moved yet */
                                continue;
                        }
                        /* From now on pos is ours, and the slot says whose. */
                        r = claim(ch, slot, &slot->send_owner, &ch->ring->head, owner, pos, pos);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                continue;
                        advance(&ch->ring->head, pos);
                        /* The lines of a send a few on (client/prefetch.h). */
                        prefetch_slot(slot_ahead(ch, slot), RING_SLOT_HEADER);
                        /* Now and then, so a waiting peer knows whether spinning can pay. */
                        if ((channel_count_op(ch) & 15) == 1)
                                channel_note_cpu(&ch->ring->send_cpu);
                        STORE(&slot->len, (uint32_t) len, RLX);       /* await_copy() reads it early */
                        *ret_slot = slot;
                        *ret_pos = pos;
                        return 0;
                }
                if (diff < 0) {         /* full: the slot still holds last lap's message */
                        r = wait_slot(ch, slot, pos, &slot->recv_owner, pos - ch->info.slots, pos - ch->info.slots + 1, w);
                        /* Also when the deadline passed: a short timeout must not keep a slot stuck. */
                        if (!free_dead_receivers_slot(ch, slot, pos) && r < 0)
                                return r;
                        continue;
                }
                /* diff > 0: pos was claimed (and maybe finished) by another; head may lag behind it. */
                /* More than a lap on while head is still pos: never, but for a writer's scribble. */
                if (diff > (int64_t) ch->info.slots && LOAD(&ch->ring->head, ACQ) == pos)
                        return -EPROTO;
                advance(&ch->ring->head, pos);
        }
}

/* Publish the slot claimed for pos: false when a repairer took it from us for dead meanwhile. */
static bool send_publish(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        uint64_t expected = pos;

        if (!__atomic_compare_exchange_n(&slot->seq, &expected, pos + 1, false, SEQ, RLX))
                return false;
        notify(ch, WAKE_DATA);
        return true;
}

HOT_PATH int shmb_send(shmb_channel *ch, const void *msg, size_t len, int timeout_ms) {
        Waiter w;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_send(ch, msg, len, timeout_ms);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (len > 0 && !msg)
                return -EINVAL;
        w = send_waiter(ch, timeout_ms);
        for (;;) {
                RingSlot *slot;
                uint64_t pos;

                r = send_claim(ch, len, &w, &slot, &pos);
                if (r < 0)
                        return r;
                if (len)
                        memcpy(payload(slot), msg, len);
                if (send_publish(ch, slot, pos))
                        return 0;
                /* Taken for dead and skipped: send it again. */
        }
}

/*
 * Every so many steps of tail's walk past positions already done, the
 * call's timeout is looked at. A walk is legitimately as long as the sends
 * aborted while tail lagged behind them, but a writer of the segment can
 * put head 2^62 positions on and mark every slot done: the walk would then
 * outlast any timeout. A call that will not wait ends with -EAGAIN, its fd
 * (shmb_channel_fd()) left readable, so that an event loop calls again and
 * the walk goes on where it stopped; one that waits for ever walks on,
 * ended only by a removal (each step looks at the state word).
 */
#define WALK_CHECK_STEPS 16384

static __attribute__((noinline, cold)) NO_CLONE int walk_checkpoint(shmb_channel *ch, Waiter *w) {
        if (w->timeout_ms == 0) {
#ifndef SHMB_NO_CHANNEL_FD
                if (channel_wake_arm(ch, w->dir, NULL) >= 0)
                        channel_wake_pass_on(ch, w->dir);
#else
                (void) ch;
#endif
                return -EAGAIN;
        }
        if (w->timeout_ms > 0 && client_now_ns() >= deadline_of(w))
                return -ETIMEDOUT;
        return 0;
}

/*
 * Claim the next message to receive, whatever its length (the ring's empty
 * loop, waits and repairs included): its length, with *ret_slot claimed for
 * *ret_pos and tail moved on; or a negative errno. With max_len, a longer
 * message is left where it is: -EMSGSIZE.
 */
static inline HOT_PATH ssize_t recv_claim(shmb_channel *ch, size_t max_len, Waiter *w, RingSlot **ret_slot, uint64_t *ret_pos) {
        unsigned walked = 0;
        int r;

        for (;;) {
                uint64_t pos, owner, seq;
                RingSlot *slot;
                int64_t diff;

                if (ring_gone(ch))
                        return -EIDRM;
                pos = LOAD(&ch->ring->tail, ACQ);
                slot = slot_at(ch, pos);
                seq = LOAD(&slot->seq, ACQ);
                diff = (int64_t) (seq - (pos + 1));

                if (diff == 0) {
                        uint32_t len;

                        owner = LOAD(&slot->recv_owner, ACQ);
                        if (ring_owner_claims(owner, pos)) {
                                advance(&ch->ring->tail, pos);
                                continue;
                        }
                        len = LOAD(&slot->len, RLX);
                        if (len > ch->info.slot_size)
                                len = ch->info.slot_size;       /* a corrupt length never reads out of bounds */
                        if (len > max_len) {
                                /* Only if the message is still there, unclaimed: another receiver may have taken it. */
                                if (LOAD(&slot->seq, ACQ) != pos + 1 || LOAD(&slot->recv_owner, ACQ) != owner)
                                        continue;
                                return -EMSGSIZE;               /* not consumed */
                        }
                        r = claim(ch, slot, &slot->recv_owner, &ch->ring->tail, owner, pos, pos + 1);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                continue;
                        advance(&ch->ring->tail, pos);
                        if ((channel_count_op(ch) & 15) == 1)
                                channel_note_cpu(&ch->ring->recv_cpu);
                        *ret_slot = slot;
                        *ret_pos = pos;
                        return (ssize_t) len;
                }
                if (diff < 0) {         /* empty, or a sender is still writing it */
                        r = wait_slot(ch, slot, pos + 1, &slot->send_owner, pos, pos, w);
                        if (!skip_dead_senders_slot(ch, slot, pos) && r < 0)
                                return r;
                        continue;
                }
                /*
                 * diff > 0: pos was received or skipped; tail may lag behind it, by
                 * more than a lap too (a send aborted at pos with tail behind it,
                 * then again a lap later). But no slot is ever more than a lap
                 * ahead of head: every seq names a position a sender read there.
                 */
                if (diff > (int64_t) ch->info.slots && (int64_t) (seq - ch->info.slots - LOAD(&ch->ring->head, ACQ)) > 0)
                        return -EPROTO;
                advance(&ch->ring->tail, pos);
                if (++walked % WALK_CHECK_STEPS == 0) {
                        r = walk_checkpoint(ch, w);
                        if (r < 0)
                                return r;
                }
        }
}

/* Free the slot read at pos: false when a repairer freed it under us (what we read is void). */
static bool recv_free(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        uint64_t expected = pos + 1;

        if (!__atomic_compare_exchange_n(&slot->seq, &expected, pos + ch->info.slots, false, SEQ, RLX))
                return false;
        notify(ch, WAKE_SPACE);
        return true;
}

HOT_PATH ssize_t shmb_recv(shmb_channel *ch, void *buf, size_t size, int timeout_ms) {
        Waiter w;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_recv(ch, buf, size, timeout_ms);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (size > 0 && !buf)
                return -EINVAL;
        w = recv_waiter(ch, timeout_ms);
        for (;;) {
                RingSlot *slot;
                uint64_t pos;
                ssize_t len = recv_claim(ch, size, &w, &slot, &pos);

                if (len < 0)
                        return len;
                if (len)
                        memcpy(buf, payload(slot), (size_t) len);
                if (recv_free(ch, slot, pos))
                        return len;
        }
}

/* ---- zero copy ---- */

uint64_t *zc_table_new(shmb_channel *ch) {
        uint64_t *t = NULL, *fresh = calloc(zc_mask(ch) + 1, sizeof *fresh);

        /* The claim stands either way: without the record, only a close that leaves it open waits for the broker's repair. */
        if (!fresh)
                return NULL;
        if (__atomic_compare_exchange_n(&ch->zc_claims, &t, fresh, false, __ATOMIC_ACQ_REL, ACQ))
                return fresh;
        free(fresh);    /* another thread's came first: t is it */
        return t;
}

/* Entry i (0 to zc_mask()) of ch's claim records: false when it holds none, else the claim's position and kind. */
static bool zc_claim_of(const shmb_channel *ch, uint64_t i, uint64_t *ret_pos, bool *ret_recv) {
        uint64_t v = ch->zc_claims ? LOAD(&ch->zc_claims[i], RLX) : 0;

        if (v == 0)
                return false;
        *ret_pos = (v >> 1) - 1;
        *ret_recv = v & 1;
        return true;
}

/*
 * The slot whose payload buf is, and the position this handle's claim of it
 * (in *word, send_owner or recv_owner) is for, seq being pos + at while it
 * lasts: 0, -EINVAL when buf is no such payload or this handle holds no
 * such claim, -ENOTCONN when it had one and a repairer took it, as the
 * broker counts this handle's token dead.
 */
static HOT_PATH int own_claim(shmb_channel *ch, const void *buf, bool send, RingSlot **ret_slot, uint64_t *ret_pos) {
        uintptr_t off = (uintptr_t) buf - (uintptr_t) ch->slots, index;
        uint64_t seq, owner, pos;
        RingSlot *slot;

        if (!buf || (uintptr_t) buf < (uintptr_t) ch->slots || off % ch->stride != RING_SLOT_HEADER)
                return -EINVAL;
        index = off / ch->stride;
        if (index >= ch->info.slots)
                return -EINVAL;
        slot = (RingSlot *) (ch->slots + index * ch->stride);
        seq = LOAD(&slot->seq, ACQ);
        owner = LOAD(send ? &slot->send_owner : &slot->recv_owner, ACQ);
        pos = send ? seq : seq - 1;
        if (channel_token_is_mine(ch, (uint32_t) owner) && pos % ch->info.slots == index &&
            ring_owner_claims(owner, pos)) {
                *ret_slot = slot;
                *ret_pos = pos;
                return 0;
        }
        /* Whatever the slot holds now: a dead token's claims were all taken back (perhaps reused since). */
        return ring_token_dead(ch->ring, channel_token(ch)) ? dropped(ch) : -EINVAL;
}

HOT_PATH int shmb_send_reserve(shmb_channel *ch, size_t size, void **ret_buf, int timeout_ms) {
        RingSlot *slot;
        Waiter w;
        uint64_t pos;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_send_reserve(ch, size, ret_buf, timeout_ms);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (!ret_buf)
                return -EINVAL;
        w = send_waiter(ch, timeout_ms);
        r = send_claim(ch, size, &w, &slot, &pos);
        if (r < 0)
                return r;
        zc_note(ch, pos, false);
        *ret_buf = payload(slot);
        return 0;
}

HOT_PATH int shmb_send_commit(shmb_channel *ch, void *buf, size_t len) {
        RingSlot *slot;
        uint64_t pos;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_send_commit(ch, buf, len);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (len > ch->info.slot_size)
                return -EMSGSIZE;
        /* A removed ring takes no more messages: nobody would read this one. */
        if (ring_gone(ch))
                return -EIDRM;
        r = own_claim(ch, buf, true, &slot, &pos);
        if (r < 0)
                return r;
        /* Before the publish: once it is out, another thread may claim the slot's next lap. */
        zc_forget(ch, pos, false);
        STORE(&slot->len, (uint32_t) len, RLX);
        return send_publish(ch, slot, pos) ? 0 : dropped(ch);
}

/* Give up the send claim of pos: false when a repairer took the slot from us meanwhile. */
static bool send_give_back(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        uint64_t expected = pos;

        /* As a dead sender's slot is skipped: free for the next lap, and receivers move past it. */
        if (!__atomic_compare_exchange_n(&slot->seq, &expected, pos + ch->info.slots, false, SEQ, RLX))
                return false;
        advance(&ch->ring->tail, pos);
        notify(ch, WAKE_SPACE);
        notify(ch, WAKE_DATA);
        return true;
}

HOT_PATH int shmb_send_abort(shmb_channel *ch, void *buf) {
        RingSlot *slot;
        uint64_t pos;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_send_abort(ch, buf);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (ring_gone(ch))
                return -EIDRM;
        r = own_claim(ch, buf, true, &slot, &pos);
        if (r < 0)
                return r;
        zc_forget(ch, pos, false);
        return send_give_back(ch, slot, pos) ? 0 : dropped(ch);
}

HOT_PATH ssize_t shmb_recv_peek(shmb_channel *ch, const void **ret_buf, int timeout_ms) {
        RingSlot *slot;
        Waiter w;
        uint64_t pos;
        ssize_t len;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_recv_peek(ch, ret_buf, timeout_ms);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (!ret_buf)
                return -EINVAL;
        w = recv_waiter(ch, timeout_ms);
        len = recv_claim(ch, SIZE_MAX, &w, &slot, &pos);
        if (len < 0)
                return len;
        zc_note(ch, pos, true);
        *ret_buf = payload(slot);
        return len;
}

HOT_PATH int shmb_recv_release(shmb_channel *ch, const void *buf) {
        RingSlot *slot;
        uint64_t pos;
        int r;

        /* Broadcast channels: client/broadcast.c. */
        if (ch && ch->bcast)
                return bcast_recv_release(ch, buf);

        r = check_ring(ch);
        if (r < 0)
                return r;
        if (ring_gone(ch))
                return -EIDRM;
        r = own_claim(ch, buf, false, &slot, &pos);
        if (r < 0)
                return r;
        zc_forget(ch, pos, true);
        return recv_free(ch, slot, pos) ? 0 : dropped(ch);
}

/* Whether this handle's token (or one a rejoin replaced) still claims pos at the slot, seq being pos + at. */
static bool claim_is_mine(const shmb_channel *ch, RingSlot *slot, uint64_t pos, bool recv) {
        uint64_t owner = LOAD(recv ? &slot->recv_owner : &slot->send_owner, ACQ);

        return LOAD(&slot->seq, ACQ) == pos + recv && ring_owner_claims(owner, pos) &&
               channel_token_is_mine(ch, (uint32_t) owner);
}

void zc_end_claims(shmb_channel *ch, void (*end)(shmb_channel *ch, uint64_t pos, bool recv)) {
        for (uint64_t i = 0; ch->zc_claims && i <= zc_mask(ch); i++) {
                uint64_t pos;
                bool recv;

                if (zc_claim_of(ch, i, &pos, &recv))
                        end(ch, pos, recv);
        }
}

/* End a claim of this ring handle, as the broker's repair would once the token died: never sent, or read. */
static void ring_end_claim(shmb_channel *ch, uint64_t pos, bool recv) {
        RingSlot *slot = slot_at(ch, pos);

        /* Ended meanwhile (repaired, or ended through another handle's pointer): nothing is ours. */
        if (!claim_is_mine(ch, slot, pos, recv))
                return;
        if (recv)
                (void) recv_free(ch, slot, pos);
        else
                (void) send_give_back(ch, slot, pos);
}

void ring_end_left_claims(shmb_channel *ch) {
        /* A fork(2) child's copy of the records names its parent's claims, which are not its to end. */
        if (ch->ring && !client_inherited(ch->client) && !ring_gone(ch))
                zc_end_claims(ch, ring_end_claim);
}
