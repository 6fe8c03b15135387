/*
 * Broadcast channels: publish/subscribe over the layout of
 * proto/broadcast.h, which says what every word means and why; this file
 * only does it. shmb_send(), shmb_recv() and the zero-copy calls in ring.c
 * hand a broadcast handle to the functions here.
 *
 * A publisher (rw handle) claims positions like a ring's producer: the
 * slot's owner word by compare-and-swap, then head, then seq from the lap
 * before to WRITING(p), again by compare-and-swap, so that a repairer that
 * took the slot from it (it was counted dead) wins or loses cleanly, never
 * both. In block mode it may claim below a bound it keeps in its handle
 * (slowest counted cursor + slots) and reads the cursor table again only
 * at that bound: one pass per lap.
 *
 * A subscriber (ro handle) keeps its position in its handle, never in the
 * segment it cannot write; several threads on one handle take a message
 * each by a compare-and-swap of that position. It reports the position in
 * its cursor of the table (a second segment), which is all a block-mode
 * publisher needs. A copy is checked seqlock-style against the slot's seq
 * read before and after it, so a message overwritten under the reader
 * (drop mode) is never handed out torn: it is counted as dropped instead.
 *
 * Waits spin a little first (as the ring's, adaptive, when allowed), then
 * sleep on a futex word with the other side's flag raised; every sleep is
 * bounded (BCAST_REPAIR_POLL_MS at a claim or a full channel, where the
 * holder may be dead and nobody would wake us; BCAST_POLL_MS otherwise,
 * where a subscriber that cleared the shared flag could have made us miss
 * a wake-up). Removal: the state word is read on each pass and after each
 * wake-up, and answers -EIDRM.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client/prefetch.h"
#include "client/shmbroker-internal.h"
#include "common/util.h"
#include "proto/broadcast.h"

#define LOAD(p, mo) __atomic_load_n((p), (mo))
#define STORE(p, v, mo) __atomic_store_n((p), (v), (mo))
#define CAS(p, e, v, mo) __atomic_compare_exchange_n((p), (e), (v), false, (mo), __ATOMIC_RELAXED)
#define ACQ __ATOMIC_ACQUIRE
#define REL __ATOMIC_RELEASE
#define RLX __ATOMIC_RELAXED
#define SEQ __ATOMIC_SEQ_CST

#define NO_CURSOR UINT32_MAX
#define SPIN_YIELD_AFTER_NS 2000

struct BcastHandle {
        shmb_channel *ch;               /* whose handle this is: its wake-up FIFOs (channel-fd.c) */
        BcastHeader *h;                 /* the data segment (ch->addr) */
        BcastTable *t;                  /* the table segment, attached read-write */
        char *slots;
        uint64_t stride;
        uint32_t n;                     /* slots */
        uint32_t slot_size;
        uint32_t subscribers;
        uint64_t ahead;                 /* a publisher's prefetch distance (client/prefetch.h); 0: none */
        bool drop;                      /* overflow: drop */
        bool subscriber;                /* an ro handle */
        RingHolder *pubs, *subs;        /* the holder tables */
        /* publisher: in block mode, positions below this may be claimed without reading the cursors */
        uint64_t limit;
        /* subscriber */
        uint64_t cursor;                /* the next position to read: the handle's own */
        uint64_t peeked;                /* position + 1 of its last peek (0: none): what a release may take */
        uint64_t dropped;
        uint32_t reg_token;             /* the token the cursor was last written with; 0: none yet */
        uint32_t reg_index;             /* its cursor in the table; NO_CURSOR: none (no live token) */
};

typedef struct Wait {
        int timeout_ms;
        int64_t deadline;               /* 0: none, or not read yet */
} Wait;

static int64_t deadline_of(Wait *w) {
        if (w->timeout_ms > 0 && w->deadline == 0)
                w->deadline = client_now_ns() + (int64_t) w->timeout_ms * 1000000;
        return w->deadline;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
}

#define FUTEX_POLLED 1

/*
 * Not FUTEX_PRIVATE: the words are shared between processes. 0: look again
 * (woken, or the word moved); FUTEX_POLLED: look again, the poll ran out.
 */
static int futex_wait_until(uint32_t *word, uint32_t expected, int64_t deadline, int poll_ms) {
        int64_t now = client_now_ns(), until = now + (int64_t) poll_ms * 1000000;
        struct timespec ts;

        if (deadline && deadline <= now)
                return -ETIMEDOUT;
        if (deadline && deadline < until)
                until = deadline;
        ts.tv_sec = (until - now) / 1000000000;
        ts.tv_nsec = (until - now) % 1000000000;
        if (syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0) == 0 || errno == EAGAIN)
                return 0;
        if (errno == ETIMEDOUT)
                return deadline && until == deadline ? -ETIMEDOUT : FUTEX_POLLED;
        return -errno;                  /* EINTR */
}

/*
 * Someone waits: serve every bit taken with the flag (RING_SLEEP_*, as in a
 * ring): a futex sleeper by moving the word and waking it, an event loop's
 * waiter by its side's wake-up FIFO. Out of line, so that notify() stays a
 * load and a branch.
 */
static __attribute__((noinline, cold)) void wake_waiters(BcastHandle *b, uint32_t *word, uint32_t *sleeping,
                                                           unsigned dir) {
        uint32_t bits = __atomic_exchange_n(sleeping, 0, SEQ);

        if (bits & ~(uint32_t) RING_SLEEP_FD) {
                __atomic_add_fetch(word, 1, SEQ);
                (void) syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        }
#ifndef SHMB_NO_CHANNEL_FD
        if (!(bits & RING_SLEEP_FD))
                return;
        /* Each subscriber that waits on its own FIFO: its flag is taken as the channel's was, one byte each. */
        for (uint32_t i = 0; dir == WAKE_DATA && i < b->subscribers; i++) {
                BcastCursor *cur = bcast_cursor_at(b->t, i);

                if (!(LOAD(&cur->sleeping, SEQ) & RING_SLEEP_FD) ||
                    !(__atomic_exchange_n(&cur->sleeping, 0, SEQ) & RING_SLEEP_FD))
                        continue;
                if (!channel_wake_signal_sub(b->ch, i)) {
                        /* Out of our reach: left for a waker that can reach it. */
                        __atomic_fetch_or(&cur->sleeping, (uint32_t) RING_SLEEP_FD, SEQ);
                        __atomic_fetch_or(sleeping, (uint32_t) RING_SLEEP_FD, SEQ);
                }
        }
        /* And the channel's FIFO: publishers waiting for a lap, subscribers with no FIFO of their own. */
        channel_wake_signal(b->ch, dir, sleeping);
#else
        (void) b;
        (void) dir;
#endif
}

/* After a sequentially consistent change the waiters wait for: wake them, if the flag is up, once. */
static inline void notify(BcastHandle *b, uint32_t *word, uint32_t *sleeping, unsigned dir) {
        if (LOAD(sleeping, SEQ))
                wake_waiters(b, word, sleeping, dir);
}

/*
 * A caller that will not wait is about to get -EAGAIN: if it polls the fd
 * of shmb_channel_fd(), empty the side's FIFO, raise RING_SLEEP_FD and let
 * the caller look again (the ring's poll_wait()). A subscriber with a
 * cursor waits on its own FIFO: the bit goes into that cursor first, then
 * the channel's flag. The side armed (WAKE_OWN: nobody else waits on that
 * FIFO), or -1: not armed.
 */
static int arm_fd(BcastHandle *b, uint32_t *sleeping, unsigned dir) {
#ifdef SHMB_NO_CHANNEL_FD
        (void) b;
        (void) sleeping;
        (void) dir;
        return -1;
#else
        uint32_t own = UINT32_MAX;
        /* Its own FIFO, which the arm turns into the channel's when there is none. */
        int armed = channel_wake_arm(b->ch, b->subscriber && dir == WAKE_DATA ? WAKE_OWN : dir, &own);

        if (armed < 0)
                return -1;
        /* The cursor of the FIFO armed: another thread may have moved this handle to another since. */
        if (armed == WAKE_OWN && own < b->subscribers)
                __atomic_fetch_or(&bcast_cursor_at(b->t, own)->sleeping, (uint32_t) RING_SLEEP_FD, SEQ);
        __atomic_fetch_or(sleeping, (uint32_t) RING_SLEEP_FD, SEQ);
        return armed;
#endif
}

/* Removed, or gone (channel_gone(): the handle went stale at a rejoin, or a wait found the objects removed). */
static bool removed(const BcastHandle *b) {
        return bcast_is_removed(b->h) || channel_gone(b->ch);
}

static bool removed_seq(const BcastHandle *b) {
        return LOAD(&b->h->state, SEQ) != BCAST_STATE_LIVE || channel_gone(b->ch);
}

/*
 * This publisher's token is dead, or its claim was taken: -ENOTCONN, unless
 * the channel went (a stop marks it removed before it drops the holds), so
 * that a removal says -EIDRM whichever the caller saw first.
 */
static int dropped(const BcastHandle *b) {
        return removed(b) ? -EIDRM : -ENOTCONN;
}

/* A futex wait's outcome, FUTEX_POLLED included (channel_after_wait()). */
static int after_poll(const BcastHandle *b, int r) {
        return channel_after_wait(b->ch, r == FUTEX_POLLED ? 0 : r, r == FUTEX_POLLED, BCAST_POLL_MS);
}

static BcastSlot *slot_at(const BcastHandle *b, uint64_t pos) {
        return (BcastSlot *) (b->slots + (pos % b->n) * b->stride);
}

static char *payload(BcastSlot *slot) {
        return (char *) slot + BCAST_SLOT_HEADER;
}

/*
 * Spin until *seqp is no longer `seen`, within the handle's adaptive
 * budget (as the ring's: doubled when it paid, halved when not), yielding
 * after a few microseconds. Whether it changed.
 */
static bool spin_for(shmb_channel *ch, const BcastHandle *b, const uint64_t *seqp, uint64_t seen, const Wait *w) {
        uint32_t max = LOAD(&ch->spin_us, RLX) * 1000u, budget;
        int64_t start, end;

        if (max == 0)
                return false;
        /*
         * A subscriber on the CPU a publisher last ran on only delays it by
         * spinning: with more subscribers than CPUs, one that spun beside the
         * publisher cut its rate by a fifth. Sleep at once instead.
         */
        if (b->subscriber) {
                uint32_t here = channel_cpu();

                if (here && LOAD(&b->h->pub_cpu, RLX) == here)
                        return false;
        }
        budget = LOAD(&ch->spin_budget_ns, RLX);
        budget = budget ? MIN(budget, max) : max;
        start = client_now_ns();
        end = start + budget;
        if (w->deadline && end > w->deadline)
                end = w->deadline;
        for (unsigned i = 1;; i++) {
                if (LOAD(seqp, ACQ) != seen) {
                        STORE(&ch->spin_budget_ns, MIN(budget * 2, max), RLX);
                        return true;
                }
                if ((i & 63) == 0) {
                        int64_t now = client_now_ns();

                        if (now > end || removed(b))
                                break;
                        if (now - start > SPIN_YIELD_AFTER_NS)
                                sched_yield();
                } else
                        cpu_relax();
        }
        STORE(&ch->spin_budget_ns, MAX(budget / 2, 1000u), RLX);
        return false;
}

static BcastCursor *my_cursor(const BcastHandle *b) {
        uint32_t i = LOAD(&b->reg_index, RLX);

        return i == NO_CURSOR ? NULL : bcast_cursor_at(b->t, i);
}

/*
 * Wait until the slot's seq moves on from `seen` (a publish, a skip, or a
 * repair), sleeping on data_seq with sub_sleeping raised: 0 to look again,
 * or -EAGAIN (timeout 0), -ETIMEDOUT, -EINTR, -EIDRM.
 */
static int wait_slot(shmb_channel *ch, BcastHandle *b, Wait *w, BcastSlot *slot, uint64_t seen, bool claimed,
                     void (*before_sleep)(shmb_channel *ch, BcastHandle *b)) {
        uint32_t v;
        int r = 0;

        if (w->timeout_ms == 0) {
                int armed;

                cpu_relax();
                /* A subscriber about to wait in an event loop tells block-mode publishers where it is. */
                if (before_sleep)
                        before_sleep(ch, b);
                armed = arm_fd(b, &b->t->sub_sleeping, WAKE_DATA);
                if (armed < 0)
                        return -EAGAIN;
                if (LOAD(&slot->seq, SEQ) != seen || removed_seq(b)) {
                        /* Emptying a FIFO that others wait on may have taken their wake-up. */
                        if (armed != WAKE_OWN)
                                channel_wake_pass_on(ch, (unsigned) armed);
                        return 0;
                }
                return -EAGAIN;
        }
        (void) deadline_of(w);
        if (spin_for(ch, b, &slot->seq, seen, w))
                return 0;
        if (before_sleep)
                before_sleep(ch, b);
        /* The word first, then the flag: a waker that clears the flag also moves the word (see the ring). */
        v = LOAD(&b->h->data_seq, SEQ);
        __atomic_fetch_or(&b->t->sub_sleeping, (uint32_t) RING_SLEEP_FUTEX, SEQ);     /* an fd waiter's bit stays */
        if (LOAD(&slot->seq, SEQ) == seen && !removed_seq(b))
                r = futex_wait_until(&b->h->data_seq, v, w->deadline,
                                     claimed ? BCAST_REPAIR_POLL_MS : BCAST_POLL_MS);
        if (removed_seq(b))
                return -EIDRM;
        return after_poll(b, r);
}

/* ---- subscribers ---- */

/*
 * Tell the publishers where this subscriber is: a release store after the
 * copy; in block mode sequentially consistent, then their flag (a
 * publisher may wait for exactly this).
 */
static void report(BcastHandle *b, uint64_t pos) {
        BcastCursor *cur = my_cursor(b);

        if (!cur)
                return;
        if (b->drop) {
                STORE(&cur->position, pos, REL);
                return;
        }
        STORE(&cur->position, pos, SEQ);
        notify(b, &b->t->space_seq, &b->t->pub_sleeping, WAKE_SPACE);
}

/*
 * Write this subscriber's cursor under its current token (the broker may
 * have given another after a restart): position, token, and, when it has
 * just subscribed, position = head again, which is where it starts (see
 * the header). A dead token writes nothing: its entry may be someone
 * else's now.
 */
static void sub_register(shmb_channel *ch, BcastHandle *b, bool first) {
        uint32_t token = channel_token(ch), index = bcast_token_index(token, b->subscribers);
        uint32_t old_token = LOAD(&b->reg_token, RLX), old_index = LOAD(&b->reg_index, RLX);
        BcastCursor *cur;

        STORE(&b->reg_token, token, RLX);
        if (index == UINT32_MAX || bcast_token_dead(b->subs, b->subscribers, token)) {
                STORE(&b->reg_index, NO_CURSOR, RLX);
#ifndef SHMB_NO_CHANNEL_FD
                channel_wake_set_own(ch, UINT32_MAX);
#endif
                return;
        }
#ifndef SHMB_NO_CHANNEL_FD
        channel_wake_set_own(ch, index);
#endif
        cur = bcast_cursor_at(b->t, index);
        if (first)
                STORE(&b->cursor, LOAD(&b->h->head, SEQ), SEQ);
        STORE(&cur->position, LOAD(&b->cursor, SEQ), SEQ);
        STORE(&cur->dropped, LOAD(&b->dropped, RLX), RLX);
        STORE(&cur->token, token, SEQ);
        if (first) {
                uint64_t head = LOAD(&b->h->head, SEQ);

                STORE(&b->cursor, head, SEQ);
                STORE(&cur->position, head, SEQ);
        }
        STORE(&b->reg_index, index, RLX);
        /*
         * A new token at a rejoin (the broker could not hand the old one back: it cannot see our pid)
         * leaves the old entry live; its cursor must not hold publishers back any more. Only after the
         * new cursor counts, and only while it still carries our old token.
         */
        if (old_index != NO_CURSOR && old_index != index && old_token != 0 && old_token != token) {
                uint32_t expected = old_token;

                (void) __atomic_compare_exchange_n(&bcast_cursor_at(b->t, old_index)->token, &expected, 0, false,
                                                   SEQ, RLX);
        }
}

/* Before each pass: the token may have changed (a rejoin after a broker restart). */
static void sub_sync(shmb_channel *ch, BcastHandle *b) {
        if (channel_token(ch) != LOAD(&b->reg_token, RLX))
                sub_register(ch, b, false);
}

/* Before a sleep: write the cursor again, which also undoes a cursor someone else wrote. */
static void sub_reassert(shmb_channel *ch, BcastHandle *b) {
        BcastCursor *cur = my_cursor(b);
        uint32_t token = LOAD(&b->reg_token, RLX);

        (void) ch;
        if (!cur || bcast_token_dead(b->subs, b->subscribers, token))
                return;
        if (LOAD(&cur->token, RLX) != token)
                STORE(&cur->token, token, SEQ);
        report(b, LOAD(&b->cursor, ACQ));
}

/* Move on from c to `to`: false when another thread of this handle moved first. */
static bool sub_advance(BcastHandle *b, uint64_t c, uint64_t to) {
        if (!CAS(&b->cursor, &c, to, __ATOMIC_ACQ_REL))
                return false;
        report(b, to);
        return true;
}

/*
 * Position c was overwritten before we read it: resume at the oldest
 * message likely still there, and count every position skipped.
 */
static void sub_overrun(BcastHandle *b, uint64_t c) {
        uint64_t head = LOAD(&b->h->head, ACQ), to = head > b->n ? head - b->n : 0;
        BcastCursor *cur;

        if (to <= c)
                to = c + 1;
        if (!CAS(&b->cursor, &c, to, __ATOMIC_ACQ_REL))
                return;
        __atomic_add_fetch(&b->dropped, to - c, RLX);
        cur = my_cursor(b);
        if (cur)
                STORE(&cur->dropped, LOAD(&b->dropped, RLX), RLX);
        report(b, to);
}

/* Whether an owner word claims pos for a token that is dead. */
static bool claimer_dead(const BcastHandle *b, uint64_t owner, uint64_t pos) {
        return ring_owner_claims(owner, pos) && bcast_token_dead(b->pubs, BCAST_PUBLISHERS, (uint32_t) owner);
}

/*
 * The subscriber's next message, not consumed: its length, with the slot,
 * its position and the seq it was read under; or a negative errno. Waits.
 */
static ssize_t sub_next(shmb_channel *ch, BcastHandle *b, Wait *w, BcastSlot **ret_slot, uint64_t *ret_pos,
                        uint64_t *ret_seq) {
        for (;;) {
                uint64_t c, s, q, owner;
                BcastSlot *slot;
                int r;

                if (removed(b))
                        return -EIDRM;
                sub_sync(ch, b);
                c = LOAD(&b->cursor, ACQ);
                slot = slot_at(b, c);
                s = LOAD(&slot->seq, ACQ);
                q = bcast_seq_pos(s);
                if (q == c && bcast_seq_kind(s) == BCAST_SEQ_PUBLISHED) {
                        uint32_t len = LOAD(&slot->len, RLX);

                        *ret_slot = slot;
                        *ret_pos = c;
                        *ret_seq = s;
                        return MIN(len, b->slot_size);   /* a torn length never reads out of bounds */
                }
                if (q == c && bcast_seq_kind(s) == BCAST_SEQ_SKIPPED) {
                        (void) sub_advance(b, c, c + 1);
                        continue;
                }
                if (q > c) {
                        /* Lapped: never past head, which publishers move before they write (else a scribble). */
                        if (q > LOAD(&b->h->head, ACQ))
                                return -EPROTO;
                        sub_overrun(b, c);
                        continue;
                }
                /* Not there yet. Its publisher, if one claimed it, may be dead: then it never comes. */
                owner = LOAD(&slot->owner, ACQ);
                if (claimer_dead(b, owner, c)) {
                        (void) sub_advance(b, c, c + 1);
                        continue;
                }
                r = wait_slot(ch, b, w, slot, s, ring_owner_claims(owner, c), sub_reassert);
                if (r < 0)
                        return r;
        }
}

static int check_subscriber(const shmb_channel *ch) {
        if (!ch->bcast->subscriber)
                return -EOPNOTSUPP;     /* a publisher reads nothing: open the channel ro to subscribe */
        return 0;
}

ssize_t bcast_recv(shmb_channel *ch, void *buf, size_t size, int timeout_ms) {
        BcastHandle *b = ch->bcast;
        Wait w = { .timeout_ms = timeout_ms };
        int r;

        r = check_subscriber(ch);
        if (r < 0)
                return r;
        if (size > 0 && !buf)
                return -EINVAL;
        for (;;) {
                BcastSlot *slot;
                uint64_t c, s;
                ssize_t len = sub_next(ch, b, &w, &slot, &c, &s);

                if (len < 0)
                        return len;
                if ((size_t) len > size) {
                        /* Not consumed; but only if it is still there to be read later. */
                        if (LOAD(&slot->seq, ACQ) != s)
                                continue;
                        return -EMSGSIZE;
                }
                if (len)
                        memcpy(buf, payload(slot), (size_t) len);
                __atomic_thread_fence(ACQ);
                if (LOAD(&slot->seq, RLX) != s)
                        continue;       /* overwritten while we copied: the next pass counts it */
                if (sub_advance(b, c, c + 1))
                        return len;
        }
}

ssize_t bcast_recv_peek(shmb_channel *ch, const void **ret_buf, int timeout_ms) {
        BcastHandle *b = ch->bcast;
        Wait w = { .timeout_ms = timeout_ms };
        BcastSlot *slot;
        uint64_t c, s;
        ssize_t len;
        int r;

        r = check_subscriber(ch);
        if (r < 0)
                return r;
        if (!ret_buf)
                return -EINVAL;
        len = sub_next(ch, b, &w, &slot, &c, &s);
        if (len >= 0) {
                STORE(&b->peeked, c + 1, RLX);
                *ret_buf = payload(slot);
        }
        return len;
}

int bcast_recv_release(shmb_channel *ch, const void *buf) {
        BcastHandle *b = ch->bcast;
        BcastSlot *slot;
        uint64_t c;
        int r;

        r = check_subscriber(ch);
        if (r < 0)
                return r;
        if (removed(b))
                return -EIDRM;
        c = LOAD(&b->cursor, ACQ);
        slot = slot_at(b, c);
        /*
         * The pointer names a slot, which comes round every lap: a peek that
         * a recv() consumed must not release the message there a lap later.
         */
        if (!buf || buf != payload(slot) || LOAD(&b->peeked, RLX) != c + 1)
                return -EINVAL;
        /* The caller's reads of the message come before this fence: the second look of a seqlock. */
        __atomic_thread_fence(ACQ);
        if (LOAD(&slot->seq, RLX) != bcast_seq(c, BCAST_SEQ_PUBLISHED)) {
                if (bcast_seq_pos(LOAD(&slot->seq, ACQ)) <= c)
                        return -EINVAL;         /* not a message this handle peeked at */
                sub_overrun(b, c);
                return -ESTALE;                 /* overwritten meanwhile (drop mode): counted as dropped */
        }
        return sub_advance(b, c, c + 1) ? 0 : -EINVAL;
}

/* ---- publishers ---- */

static int check_publisher(const shmb_channel *ch) {
        if (ch->bcast->subscriber)
                return -EACCES;         /* an ro handle cannot write the segment, and the kernel agrees */
        return 0;
}

/*
 * The lowest position a counted subscriber will read next (proto/broadcast.h),
 * or head when none; a cursor beyond head is taken as head.
 */
static uint64_t slowest(const BcastHandle *b, uint64_t head) {
        uint64_t min = head;

        for (uint32_t i = 0; i < b->subscribers; i++) {
                const BcastCursor *cur = bcast_cursor_at(b->t, i);
                uint32_t token = bcast_live_token(b->subs, i);
                uint64_t pos;

                if (token == 0 || LOAD(&cur->token, SEQ) != token)
                        continue;
                pos = LOAD(&cur->position, SEQ);
                if (pos < min)
                        min = pos;
        }
        return min;
}

/*
 * Block mode, pos at the handle's bound: read the cursors again, and while
 * the slowest counted subscriber has not read pos - n, sleep on space_seq
 * with pub_sleeping raised (polling for subscribers the broker marks dead).
 * 0 to look again, or -EAGAIN, -ETIMEDOUT, -EINTR, -EIDRM.
 */
static int wait_space(BcastHandle *b, uint64_t pos, Wait *w) {
        uint64_t limit;
        uint32_t v;
        int r;

        limit = slowest(b, LOAD(&b->h->head, SEQ)) + b->n;
        STORE(&b->limit, limit, RLX);
        if (pos < limit)
                return 0;
        if (w->timeout_ms == 0) {
                if (arm_fd(b, &b->t->pub_sleeping, WAKE_SPACE) < 0)
                        return -EAGAIN;
                limit = slowest(b, LOAD(&b->h->head, SEQ)) + b->n;
                STORE(&b->limit, limit, RLX);
                if (pos < limit || removed_seq(b)) {
                        channel_wake_pass_on(b->ch, WAKE_SPACE);
                        return 0;
                }
                return -EAGAIN;
        }
        (void) deadline_of(w);
        v = LOAD(&b->t->space_seq, SEQ);
        __atomic_fetch_or(&b->t->pub_sleeping, (uint32_t) RING_SLEEP_FUTEX, SEQ);
        limit = slowest(b, LOAD(&b->h->head, SEQ)) + b->n;
        STORE(&b->limit, limit, RLX);
        if (pos < limit)
                return 0;
        if (removed_seq(b))
                return -EIDRM;
        r = futex_wait_until(&b->t->space_seq, v, w->deadline, BCAST_REPAIR_POLL_MS);
        if (removed_seq(b))
                return -EIDRM;
        return after_poll(b, r);
}

/* Move head on from pos; a failure is someone else's success. */
static void advance_head(BcastHandle *b, uint64_t pos) {
        (void) CAS(&b->h->head, &pos, pos + 1, REL);
}

/* The owner word is from before any claim of pos (the ring's rule): never claimed, or an earlier position. */
static bool owner_before(uint64_t owner, uint64_t pos) {
        return (uint32_t) owner == 0 || (int32_t) ((uint32_t) (owner >> 32) - (uint32_t) pos) < 0;
}

/*
 * A publisher claimed the position the slot is on its way to and died:
 * WRITING(o), or the lap before o with the owner word claiming o. Make it
 * SKIPPED(o), so the slot goes on. Whether the slot was dealt with (by us
 * or by someone else meanwhile).
 */
static bool repair(BcastHandle *b, BcastSlot *slot, uint64_t s, uint64_t owner) {
        uint64_t o = bcast_seq_kind(s) == BCAST_SEQ_WRITING ? bcast_seq_pos(s) : bcast_seq_pos(s) + b->n;

        if (!claimer_dead(b, owner, o))
                return false;
        if (CAS(&slot->seq, &s, bcast_seq(o, BCAST_SEQ_SKIPPED), SEQ))
                notify(b, &b->h->data_seq, &b->t->sub_sleeping, WAKE_DATA);   /* subscribers waiting at o move on */
        return true;
}

/*
 * Claim the slot of pos, whose seq (the lap before, finished) was read as
 * s and owner word as owner: 1 claimed and marked WRITING(pos), 0 not
 * (look again), -ENOTCONN when the broker counts this handle gone, -EPROTO
 * for a claim of a later lap on a slot still free for pos with head still
 * pos, which only a scribble makes (looking again would spin for ever).
 */
static int claim(shmb_channel *ch, BcastHandle *b, BcastSlot *slot, uint64_t owner, uint64_t pos, uint64_t s) {
        uint32_t token = channel_token(ch);
        uint64_t mine = ring_owner(pos, token);

        if (token == 0 || bcast_token_dead(b->pubs, BCAST_PUBLISHERS, token))
                return dropped(b);
        if (!owner_before(owner, pos))
                return LOAD(&slot->seq, ACQ) == s && LOAD(&b->h->head, ACQ) == pos && LOAD(&slot->owner, ACQ) == owner ?
                       -EPROTO : 0;
        if (!CAS(&slot->owner, &owner, mine, ACQ))
                return 0;
        if (CAS(&slot->seq, &s, bcast_seq(pos, BCAST_SEQ_WRITING), RLX)) {
                /* The seqlock's first step: WRITING is visible before any byte of the payload. */
                __atomic_thread_fence(REL);
                return 1;
        }
        (void) CAS(&slot->owner, &mine, owner, REL);     /* the slot moved meanwhile: give the claim back */
        return 0;
}

/* Claim the next position to publish len bytes at: 0 with the slot (WRITING, len set) and position, or a negative errno. */
static int pub_claim(shmb_channel *ch, BcastHandle *b, size_t len, Wait *w, BcastSlot **ret_slot, uint64_t *ret_pos) {
        if (len > b->slot_size)
                return -EMSGSIZE;
        for (;;) {
                uint64_t pos, s, q, owner;
                BcastSlot *slot;
                int r;

                if (removed(b))
                        return -EIDRM;
                pos = LOAD(&b->h->head, ACQ);
                slot = slot_at(b, pos);
                s = LOAD(&slot->seq, ACQ);
                q = bcast_seq_pos(s);
                if (q >= pos) {
                        /* A lap on while head is still pos: never, but for a writer's scribble. */
                        if (q - pos >= b->n && LOAD(&b->h->head, ACQ) == pos)
                                return -EPROTO;
                        advance_head(b, pos);           /* claimed by another; head lags behind it */
                        continue;
                }
                owner = LOAD(&slot->owner, ACQ);
                if (q == pos - b->n && bcast_seq_kind(s) != BCAST_SEQ_WRITING) {
                        if (ring_owner_claims(owner, pos)) {
                                advance_head(b, pos);
                                continue;
                        }
                        if (!b->drop && pos >= LOAD(&b->limit, RLX)) {
                                r = wait_space(b, pos, w);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        r = claim(ch, b, slot, owner, pos, s);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                continue;
                        advance_head(b, pos);
                        /* The lines of a publish a few on (client/prefetch.h). */
                        prefetch_slot(prefetch_target(slot, b->ahead, b->slots, b->n * b->stride), BCAST_SLOT_HEADER);
                        /* Now and then, so a subscriber knows whether spinning can pay (as the ring's). */
                        if ((channel_count_op(ch) & 15) == 1)
                                channel_note_cpu(&b->h->pub_cpu);
                        STORE(&slot->len, (uint32_t) len, RLX);
                        *ret_slot = slot;
                        *ret_pos = pos;
                        return 0;
                }
                /* The lap before is not finished: its publisher is writing, or died doing so. */
                if (repair(b, slot, s, owner))
                        continue;
                r = wait_slot(ch, b, w, slot, s, true, NULL);
                if (r < 0 && !repair(b, slot, LOAD(&slot->seq, ACQ), LOAD(&slot->owner, ACQ)))
                        return r;
        }
}

/* WRITING(pos) to PUBLISHED(pos) or SKIPPED(pos): false when a repairer took the slot (this handle was counted dead). */
static bool pub_finish(BcastHandle *b, BcastSlot *slot, uint64_t pos, unsigned kind) {
        uint64_t expected = bcast_seq(pos, BCAST_SEQ_WRITING);

        if (!CAS(&slot->seq, &expected, bcast_seq(pos, kind), SEQ))
                return false;
        notify(b, &b->h->data_seq, &b->t->sub_sleeping, WAKE_DATA);
        return true;
}

int bcast_send(shmb_channel *ch, const void *msg, size_t len, int timeout_ms) {
        BcastHandle *b = ch->bcast;
        Wait w = { .timeout_ms = timeout_ms };
        int r;

        r = check_publisher(ch);
        if (r < 0)
                return r;
        if (len > 0 && !msg)
                return -EINVAL;
        for (;;) {
                BcastSlot *slot;
                uint64_t pos;

                r = pub_claim(ch, b, len, &w, &slot, &pos);
                if (r < 0)
                        return r;
                if (len)
                        memcpy(payload(slot), msg, len);
                if (pub_finish(b, slot, pos, BCAST_SEQ_PUBLISHED))
                        return 0;
                /* Taken for dead and skipped: publish it again. */
        }
}

int bcast_send_reserve(shmb_channel *ch, size_t size, void **ret_buf, int timeout_ms) {
        BcastHandle *b = ch->bcast;
        Wait w = { .timeout_ms = timeout_ms };
        BcastSlot *slot;
        uint64_t pos;
        int r;

        r = check_publisher(ch);
        if (r < 0)
                return r;
        if (!ret_buf)
                return -EINVAL;
        r = pub_claim(ch, b, size, &w, &slot, &pos);
        if (r < 0)
                return r;
        zc_note(ch, pos, false);
        *ret_buf = payload(slot);
        return 0;
}

/* The slot whose payload buf is, and the position this handle's claim of it is for (the ring's own_claim()). */
static int own_claim(shmb_channel *ch, BcastHandle *b, const void *buf, BcastSlot **ret_slot, uint64_t *ret_pos) {
        uintptr_t off = (uintptr_t) buf - (uintptr_t) b->slots, index;
        uint64_t s, owner, pos;
        BcastSlot *slot;

        if (!buf || (uintptr_t) buf < (uintptr_t) b->slots || off % b->stride != BCAST_SLOT_HEADER)
                return -EINVAL;
        index = off / b->stride;
        if (index >= b->n)
                return -EINVAL;
        slot = (BcastSlot *) (b->slots + index * b->stride);
        s = LOAD(&slot->seq, ACQ);
        owner = LOAD(&slot->owner, ACQ);
        pos = bcast_seq_pos(s);
        if (bcast_seq_kind(s) == BCAST_SEQ_WRITING && pos % b->n == index &&
            channel_token_is_mine(ch, (uint32_t) owner) && ring_owner_claims(owner, pos)) {
                *ret_slot = slot;
                *ret_pos = pos;
                return 0;
        }
        return bcast_token_dead(b->pubs, BCAST_PUBLISHERS, channel_token(ch)) ? dropped(b) : -EINVAL;
}

int bcast_send_commit(shmb_channel *ch, void *buf, size_t len) {
        BcastHandle *b = ch->bcast;
        BcastSlot *slot;
        uint64_t pos;
        int r;

        r = check_publisher(ch);
        if (r < 0)
                return r;
        if (len > b->slot_size)
                return -EMSGSIZE;
        if (removed(b))
                return -EIDRM;
        r = own_claim(ch, b, buf, &slot, &pos);
        if (r < 0)
                return r;
        /* Before the publish: once it is out, another thread may claim the slot's next lap. */
        zc_forget(ch, pos, false);
        STORE(&slot->len, (uint32_t) len, RLX);
        return pub_finish(b, slot, pos, BCAST_SEQ_PUBLISHED) ? 0 : dropped(b);
}

int bcast_send_abort(shmb_channel *ch, void *buf) {
        BcastHandle *b = ch->bcast;
        BcastSlot *slot;
        uint64_t pos;
        int r;

        r = check_publisher(ch);
        if (r < 0)
                return r;
        if (removed(b))
                return -EIDRM;
        r = own_claim(ch, b, buf, &slot, &pos);
        if (r < 0)
                return r;
        zc_forget(ch, pos, false);
        return pub_finish(b, slot, pos, BCAST_SEQ_SKIPPED) ? 0 : dropped(b);
}

/* ---- opening and closing ---- */

/* The table, read-write for every opener (its mode says so), checked like the channel's segment. */
static int table_attach(const ProtoChannel *pc, void **ret) {
        struct shmid_ds ds;
        void *table;

        table = shmat(pc->table_id, NULL, 0);
        if (table == (void *) -1)
                return errno == EINVAL || errno == EIDRM ? -EIDRM : -errno;
        if (shmctl(pc->table_id, IPC_STAT, &ds) < 0 || (uint32_t) ds.shm_perm.__key != pc->table_key ||
            ds.shm_segsz != bcast_table_size(pc->subscribers)) {
                (void) shmdt(table);
                return -EIDRM;          /* replaced between the answer and now */
        }
        *ret = table;
        return 0;
}

/*
 * A posix channel's table: the file of the descriptor the broker handed
 * over (client/posix-map.c), read-write for every opener, mapped read-write, of the
 * size the answer implies (the header was checked to say so). The descriptor is closed once mapped.
 */
static int table_map(shmb_channel *ch, uint64_t size, void **ret) {
        struct stat st;
        void *table;
        int r = 0;

        if (fstat(ch->table_fd, &st) < 0)
                r = -errno;
        else if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != size)
                r = -EPROTO;
        /* The broker hands the table over read-write even to an ro opener: a subscriber writes its cursor there. */
        else if ((fcntl(ch->table_fd, F_GETFL) & O_ACCMODE) != O_RDWR)
                r = -EPROTO;
        if (r == 0) {
                table = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, ch->table_fd, 0);
                if (table == MAP_FAILED)
                        r = -errno;
                else
                        *ret = table;
        }
        ch->table_fd = (close(ch->table_fd), -1);
        return r;
}

/* Undo table_map() or table_attach(), whichever the channel's kind took. */
static void table_detach(const shmb_channel *ch, void *table, uint32_t subscribers) {
        if (ch->info.kind == PROTO_KIND_POSIX)
                (void) munmap(table, bcast_table_size(subscribers));
        else
                (void) shmdt(table);
}

int bcast_channel_setup(shmb_channel *ch, const ProtoChannel *pc) {
        const BcastHeader *h = ch->addr;
        bool posix = ch->info.kind == PROTO_KIND_POSIX;
        BcastHandle *b;
        void *table = NULL;
        int r;

        if (pc->ring_version != BCAST_VERSION)
                return -EPROTO;
        if (pc->subscribers == 0 || pc->subscribers > BCAST_SUBSCRIBERS_MAX ||
            pc->slots < RING_SLOTS_MIN || pc->slots > RING_SLOTS_MAX || pc->slot_size == 0 ||
            pc->slot_size > RING_SLOT_SIZE_MAX ||
            ch->info.size != bcast_segment_size(pc->slot_size, pc->slots, pc->subscribers))
                return -EPROTO;
        /*
         * Trust the broker's figures, and refuse a header that disagrees: nothing of another layout is read.
         * The handle runs on the broker's figures, not on the header read again: a publisher may rewrite it
         * meanwhile, and a second read would take the rewrite unchecked.
         */
        if (!bcast_header_is_ours(h) || h->slot_size != pc->slot_size || h->slots != pc->slots ||
            h->slot_stride != bcast_slot_stride(pc->slot_size) || h->data_offset != bcast_data_offset(pc->subscribers) ||
            h->publishers != BCAST_PUBLISHERS || h->publishers_offset != BCAST_HOLDERS_OFFSET ||
            h->subscribers != pc->subscribers || h->subscribers_offset != BCAST_SUBSCRIBERS_OFFSET ||
            (!posix && (h->table_key != pc->table_key || h->table_id != pc->table_id)) ||
            h->table_size != bcast_table_size(pc->subscribers) ||
            h->overflow != (pc->overflow == PROTO_OVERFLOW_DROP ? BCAST_OVERFLOW_DROP : BCAST_OVERFLOW_BLOCK))
                return -EPROTO;
        /* Both kinds of opener name themselves with a token: a subscriber's is its cursor. */
        if (channel_token(ch) == 0)
                return -EPROTO;
        r = posix ? table_map(ch, bcast_table_size(pc->subscribers), &table) : table_attach(pc, &table);
        if (r < 0)
                return r;
        b = calloc(1, sizeof *b);
        if (!b) {
                table_detach(ch, table, pc->subscribers);
                return -ENOMEM;
        }
        *b = (BcastHandle) {
                .h = ch->addr,
                .t = table,
                .slots = (char *) ch->addr + bcast_data_offset(pc->subscribers),
                .stride = bcast_slot_stride(pc->slot_size),
                .n = pc->slots,
                .slot_size = pc->slot_size,
                .subscribers = pc->subscribers,
                .ahead = cpu_prefetches_for_write() ? prefetch_distance(bcast_slot_stride(pc->slot_size), pc->slots) : 0,
                .drop = pc->overflow == PROTO_OVERFLOW_DROP,
                .subscriber = ch->access == SHMB_RO,
                .pubs = bcast_publisher_at(h, 0),
                .subs = bcast_subscriber_at(h, 0),
                .reg_index = NO_CURSOR,
        };
        b->ch = ch;
        ch->bcast = b;
        ch->info.slot_size = pc->slot_size;
        ch->info.slots = pc->slots;
        ch->spin_us = SHMB_DEFAULT_SPIN_US;
        if (b->subscriber)
                sub_register(ch, b, true);
        return 0;
}

/*
 * A publisher's reservation left open at its close: skipped, as a
 * publisher coming round would once the broker marked the token dead. It
 * does not when another handle on the connection shares the hold (and the
 * token): subscribers would wait at the slot until the process exits.
 */
static void pub_end_claim(shmb_channel *ch, uint64_t pos, bool recv) {
        BcastHandle *b = ch->bcast;
        BcastSlot *slot = slot_at(b, pos);
        uint64_t owner = LOAD(&slot->owner, ACQ);

        (void) recv;    /* a publisher's claims are reservations */
        /* Ended meanwhile (repaired, or through another handle's pointer): nothing of ours is left there. */
        if (LOAD(&slot->seq, ACQ) == bcast_seq(pos, BCAST_SEQ_WRITING) && ring_owner_claims(owner, pos) &&
            channel_token_is_mine(ch, (uint32_t) owner))
                (void) pub_finish(b, slot, pos, BCAST_SEQ_SKIPPED);
}

void bcast_channel_free(shmb_channel *ch) {
        BcastHandle *b = ch->bcast;
        BcastCursor *cur;

        if (!b)
                return;
        /* Not a fork(2) child's copy of the records: those claims are the parent's. */
        if (!b->subscriber && !client_inherited(ch->client) && !removed(b))
                zc_end_claims(ch, pub_end_claim);
        /*
         * Unsubscribe at once: publishers stop counting this cursor before the broker hears of the close.
         * Not in a child of fork(2): the cursor is the parent's subscriber.
         */
        cur = b->subscriber && !client_inherited(ch->client) ? my_cursor(b) : NULL;
        if (cur && LOAD(&cur->token, RLX) == LOAD(&b->reg_token, RLX)) {
                STORE(&cur->token, 0, SEQ);
                notify(b, &b->t->space_seq, &b->t->pub_sleeping, WAKE_SPACE);
        }
        table_detach(ch, b->t, b->subscribers);
        free(b);
        ch->bcast = NULL;
}

bool bcast_channel_removed(const shmb_channel *ch) {
        return removed(ch->bcast);
}

void bcast_channel_geometry(const shmb_channel *ch, const char **ret_slots, uint64_t *ret_stride, uint32_t *ret_n,
                            uint32_t *ret_subscribers, uint64_t *ret_ahead) {
        const BcastHandle *b = ch->bcast;

        *ret_slots = b->slots;
        *ret_stride = b->stride;
        *ret_n = b->n;
        *ret_subscribers = b->subscribers;
        *ret_ahead = b->ahead;
}

int shmb_channel_dropped(shmb_channel *ch, uint64_t *ret) {
        if (!ch || !ret)
                return -EINVAL;
        if (!ch->bcast)
                return -EOPNOTSUPP;
        *ret = LOAD(&ch->bcast->dropped, RLX);
        return 0;
}
