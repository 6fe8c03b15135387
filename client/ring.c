/*
 * Ring send and receive: the lock-free slot-sequence queue described in
 * proto/ring.h. Positions only grow (64-bit, never wrap in practice);
 * slot p % n is free for the producer of lap k when seq == p, and full for
 * its consumer when seq == p + 1.
 *
 * Sleeping: a side that finds the ring full (empty) reads the futex word,
 * raises send_sleeping (recv_sleeping), checks the slot once more, and
 * only then sleeps. The other side publishes its slot, issues a full fence,
 * and if the flag is up, exchanges it back to 0, bumps the word and wakes
 * everyone: one wake-up syscall per sleep, not one per message while the
 * sleeper is still getting up. The fences on both sides make the lost
 * wake-up impossible: either the sleeper sees the new slot, or the
 * publisher sees the flag; a sleeper that raised the flag after it was
 * cleared sees the word moved and looks again.
 *
 * Repair: a slot claimed but never finished (its claimer was killed in
 * between) is found by whoever waits at it. Such a waiter never sleeps for
 * long, as no one would wake it; every REPAIR_POLL_MS it checks whether
 * the claimer is still alive, and if not, takes the slot over.
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
#include <signal.h>
#include <stdbool.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"
#include "common/util.h"

#define LOAD(p, mo) __atomic_load_n((p), (mo))
#define STORE(p, v, mo) __atomic_store_n((p), (v), (mo))
#define ACQ __ATOMIC_ACQUIRE
#define REL __ATOMIC_RELEASE
#define RLX __ATOMIC_RELAXED
#define SEQ __ATOMIC_SEQ_CST

#define REPAIR_POLL_MS 50
#define SPIN_YIELD_AFTER_NS 2000
/* A pause is ~25 ns on the machines measured; values from a sweep at 4 KiB. */
#define MID_COPY_BYTES_PER_PAUSE 128
#define MID_COPY_PAUSES_MAX 64

/*
 * getpid() is a system call; a ring send records the claimer's pid every
 * time. Cache it, and refresh it in a forked child (pthread_atfork), since
 * a child using a stale pid would let its claims be taken for a dead one's.
 */
static pid_t cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_refresh(void) {
        __atomic_store_n(&cached_pid, getpid(), __ATOMIC_RELAXED);
}

static void pid_setup(void) {
        pid_refresh();
        (void) pthread_atfork(NULL, NULL, pid_refresh);
}

static int32_t my_pid(void) {
        pthread_once(&pid_once, pid_setup);
        return (int32_t) __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
}

static RingSlot *slot_at(const shmb_channel *ch, uint64_t pos) {
        return (RingSlot *) (ch->slots + (pos % ch->info.slots) * ch->stride);
}

static char *payload(RingSlot *slot) {
        return (char *) slot + RING_SLOT_HEADER;
}

/* The daemon removed the ring (or is removing it): every call answers -EIDRM from now on. */
static bool ring_removed(const shmb_channel *ch, int mo) {
        return __atomic_load_n(&ch->ring->state, mo) != RING_STATE_LIVE;
}

/*
 * Not a read-modify-write: on x86 that is a locked instruction, which waits
 * for this message's stores to reach the cache, a cross-core miss for the
 * slot's header; 4 KiB ran 10% slower with it. Threads racing on one handle
 * may lose a count, which only delays a CPU hint.
 */
static uint32_t count_op(shmb_channel *ch) {
        uint32_t n = LOAD(&ch->ops, RLX) + 1;

        STORE(&ch->ops, n, RLX);
        return n;
}

/* Known dead: kill() says ESRCH. Unknown (pid 0) or alive: not dead. */
static bool claimer_dead(int32_t pid) {
        return pid > 0 && kill((pid_t) pid, 0) < 0 && errno == ESRCH;
}

static int64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * One send or receive call's waiting: the side it waits on, and its timeout.
 * The deadline is read off the clock only when the call first has to wait:
 * clock_gettime() costs 20-40 ns under KVM, a quarter of a 4 KiB message.
 */
typedef struct Waiter {
        uint32_t *word, *sleeping;      /* this side's futex word and flag */
        uint32_t *my_cpu, *peer_cpu;
        const uint64_t *claims;         /* the other side's position: moved past us = a claim mid-message */
        int timeout_ms;
        int64_t deadline;               /* 0: none, or not read yet */
} Waiter;

static int64_t deadline_of(Waiter *w) {
        if (w->timeout_ms > 0 && w->deadline == 0)
                w->deadline = now_ns() + (int64_t) w->timeout_ms * 1000000;
        return w->deadline;
}

/* Not FUTEX_PRIVATE: the word lives in a segment shared between processes. */
static int futex_wait(uint32_t *word, uint32_t expected, int64_t deadline) {
        struct timespec ts, *tsp = NULL;

        if (deadline) {
                int64_t left = deadline - now_ns();

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

/* Publisher side: after a slot changed hands, wake the sleepers, if any, once. */
static void notify(uint32_t *word, uint32_t *sleeping) {
        __atomic_thread_fence(SEQ);
        if (LOAD(sleeping, RLX) && __atomic_exchange_n(sleeping, 0, SEQ)) {
                __atomic_add_fetch(word, 1, SEQ);
                futex_wake_all(word);
        }
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
 * Publish where this side runs (only when it moved: the line is shared).
 */
static unsigned note_cpu(uint32_t *slot_cpu) {
        int cpu = sched_getcpu();       /* vDSO: no system call */
        uint32_t v = cpu < 0 ? 0 : (uint32_t) cpu + 1;

        if (v && LOAD(slot_cpu, RLX) != v)
                STORE(slot_cpu, v, RLX);
        return v;
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
        here = note_cpu(w->my_cpu);
        if (here && LOAD(w->peer_cpu, RLX) == here)
                return false;
        budget = LOAD(&ch->spin_budget_ns, RLX);
        budget = budget ? MIN(budget, max) : max;
        start = now_ns();
        end = start + budget;
        if (w->deadline && end > w->deadline)
                end = w->deadline;      /* a spin never outlasts the caller's timeout */
        for (unsigned i = 1;; i++) {
                if ((int64_t) (LOAD(&slot->seq, ACQ) - target) >= 0) {
                        STORE(&ch->spin_budget_ns, MIN(budget * 2, max), RLX);
                        return true;
                }
                if ((i & 63) == 0) {
                        int64_t now = now_ns();

                        /* A removed ring never fills this slot: stop now, wait_slot() says why. */
                        if (now > end || ring_removed(ch, ACQ))
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
 * Sleep until the slot may have changed (seq - target >= 0) or the deadline
 * passes, spinning first when that can pay. Returns 0 to look again, or a
 * negative errno.
 */
static int wait_slot(shmb_channel *ch, RingSlot *slot, uint64_t target, Waiter *w, uint64_t claimed_past) {
        int64_t deadline, until;
        uint32_t v;
        int r = 0;

        if (w->timeout_ms == 0)
                return -EAGAIN;
        until = deadline = deadline_of(w);
        /* Also when someone holds the slot mid-message: almost always it is busy copying. */
        if (spin_for(ch, slot, target, w))
                return 0;
        /*
         * Someone holds the slot mid-message (the other side's counter moved past
         * it): poll, as a dead claimer wakes no one. Read only now, as that
         * counter's line is the other side's busiest.
         */
        if ((int64_t) (LOAD(w->claims, ACQ) - claimed_past) > 0) {
                int64_t poll = now_ns() + (int64_t) REPAIR_POLL_MS * 1000000;

                if (!until || poll < until)
                        until = poll;
        }
        /*
         * The word first, then the flag: a waker that clears our flag (perhaps for
         * another slot) also moves the word, so our FUTEX_WAIT returns at once and
         * we raise the flag again. Flag first would let that waker leave us asleep
         * with the flag down, never to be woken.
         */
        v = LOAD(w->word, SEQ);
        STORE(w->sleeping, 1, SEQ);
        /* The state after the word: a removal after this read moves the word, and FUTEX_WAIT returns. */
        if ((int64_t) (LOAD(&slot->seq, SEQ) - target) < 0 && !ring_removed(ch, SEQ))
                r = futex_wait(w->word, v, until);
        /* Whatever woke us (the remover's wake, a signal, the deadline), a removed ring is the answer. */
        if (ring_removed(ch, SEQ))
                return -EIDRM;
        if (r == -ETIMEDOUT && until != deadline)
                return 0;               /* only the poll ran out: look again */
        return r;
}

int ring_channel_init(shmb_channel *ch, void *addr, uint64_t size) {
        const RingHeader *h = addr;
        uint64_t stride;

        if (!ch || !addr || size < RING_HEADER_SIZE)
                return -EINVAL;
        /* Another version's header may place anything anywhere: nothing of it is read. */
        if (!ring_header_is_ours(h))
                return -EPROTO;
        /* A ring of one slot would take a second message over the first: refused, not run wrongly. */
        if (h->slot_size == 0 || h->slot_size > RING_SLOT_SIZE_MAX || h->slots < RING_SLOTS_MIN ||
            h->slots > RING_SLOTS_MAX)
                return -EPROTO;
        stride = ring_slot_stride(h->slot_size);
        if (h->slot_stride != stride || h->data_offset != RING_HEADER_SIZE ||
            size != ring_segment_size(h->slot_size, h->slots))
                return -EPROTO;
        ch->ring = addr;
        ch->slots = (char *) addr + RING_HEADER_SIZE;
        ch->stride = stride;
        ch->info.slot_size = h->slot_size;
        ch->info.slots = h->slots;
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
 * that will not wait) left it as it was: a live peer mid-copy is the common
 * case there, and kill() is a system call. Each returns true when the slot
 * was dealt with (by us or meanwhile by another), so the caller looks again.
 */

/* The slot still holds last lap's message, which a receiver took and died reading: free the slot. */
static bool free_dead_receivers_slot(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        uint64_t last = pos - ch->info.slots, expected = last + 1;

        if (LOAD(&slot->seq, ACQ) != expected || (int64_t) (LOAD(&ch->ring->tail, ACQ) - last) <= 0 ||
            LOAD(&slot->recv_pos, ACQ) != last || !claimer_dead(slot->recv_pid))
                return false;
        if (__atomic_compare_exchange_n(&slot->seq, &expected, pos, false, REL, RLX))
                notify(&ch->ring->space_seq, &ch->ring->send_sleeping);
        return true;
}

/*
 * A sender claimed pos and died before publishing: that message never was; skip it.
 * seq is read again once the claimer is known dead: a sender may publish,
 * return and exit between a first look and kill(), and that message was sent.
 * Death is final, so after it an unpublished slot stays unpublished.
 */
static bool skip_dead_senders_slot(shmb_channel *ch, RingSlot *slot, uint64_t pos) {
        if ((int64_t) (LOAD(&slot->seq, ACQ) - (pos + 1)) >= 0 || (int64_t) (LOAD(&ch->ring->head, ACQ) - pos) <= 0 ||
            LOAD(&slot->send_pos, ACQ) != pos || !claimer_dead(slot->send_pid) ||
            (int64_t) (LOAD(&slot->seq, ACQ) - (pos + 1)) >= 0)
                return false;
        if (__atomic_compare_exchange_n(&ch->ring->tail, &pos, pos + 1, false, RLX, RLX)) {
                STORE(&slot->seq, pos + ch->info.slots, REL);
                notify(&ch->ring->space_seq, &ch->ring->send_sleeping);
                /* Receivers asleep at this position wait on the next one now. */
                notify(&ch->ring->data_seq, &ch->ring->recv_sleeping);
        }
        return true;
}

int shmb_send(shmb_channel *ch, const void *msg, size_t len, int timeout_ms) {
        Waiter w;
        int r;

        r = check_ring(ch);
        if (r < 0)
                return r;
        w = (Waiter) { .word = &ch->ring->space_seq, .sleeping = &ch->ring->send_sleeping,
                       .my_cpu = &ch->ring->send_cpu, .peer_cpu = &ch->ring->recv_cpu,
                       .claims = &ch->ring->tail, .timeout_ms = timeout_ms };
        if (len > 0 && !msg)
                return -EINVAL;
        if (len > ch->info.slot_size)
                return -EMSGSIZE;
        for (;;) {
                uint64_t pos;
                RingSlot *slot;
                int64_t diff;

                if (ring_removed(ch, ACQ))
                        return -EIDRM;
                pos = LOAD(&ch->ring->head, RLX);
                slot = slot_at(ch, pos);
                diff = (int64_t) (LOAD(&slot->seq, ACQ) - pos);

                if (diff == 0) {
                        if (!__atomic_compare_exchange_n(&ch->ring->head, &pos, pos + 1, true, RLX, RLX))
                                continue;
                        slot->send_pid = my_pid();
                        STORE(&slot->send_pos, pos, REL);
                        /* Now and then, so a waiting peer knows whether spinning can pay. */
                        if ((count_op(ch) & 15) == 1)
                                note_cpu(&ch->ring->send_cpu);
                        STORE(&slot->len, (uint32_t) len, RLX);       /* await_copy() reads it early */
                        if (len)
                                memcpy(payload(slot), msg, len);
                        STORE(&slot->seq, pos + 1, REL);
                        notify(&ch->ring->data_seq, &ch->ring->recv_sleeping);
                        return 0;
                }
                if (diff < 0) {         /* full: the slot still holds last lap's message */
                        uint64_t last = pos - ch->info.slots;

                        if (LOAD(&slot->recv_pos, RLX) == last)
                                await_copy(ch, slot);
                        r = wait_slot(ch, slot, pos, &w, last);
                        /* Also when the deadline passed: a short timeout must not keep a slot stuck. */
                        if (free_dead_receivers_slot(ch, slot, pos))
                                continue;
                        if (r < 0)
                                return r;
                }
                /* diff > 0: another producer took pos; look again */
        }
}

ssize_t shmb_recv(shmb_channel *ch, void *buf, size_t size, int timeout_ms) {
        Waiter w;
        int r;

        r = check_ring(ch);
        if (r < 0)
                return r;
        w = (Waiter) { .word = &ch->ring->data_seq, .sleeping = &ch->ring->recv_sleeping,
                       .my_cpu = &ch->ring->recv_cpu, .peer_cpu = &ch->ring->send_cpu,
                       .claims = &ch->ring->head, .timeout_ms = timeout_ms };
        if (size > 0 && !buf)
                return -EINVAL;
        for (;;) {
                uint64_t pos;
                RingSlot *slot;
                int64_t diff;

                if (ring_removed(ch, ACQ))
                        return -EIDRM;
                pos = LOAD(&ch->ring->tail, RLX);
                slot = slot_at(ch, pos);
                diff = (int64_t) (LOAD(&slot->seq, ACQ) - (pos + 1));

                if (diff == 0) {
                        uint32_t len = LOAD(&slot->len, RLX);

                        if (len > ch->info.slot_size)
                                len = ch->info.slot_size;       /* a corrupt length never reads out of bounds */
                        if (len > size) {
                                /* Only if the message is still there: another receiver may have taken it. */
                                if (LOAD(&slot->seq, ACQ) != pos + 1 || LOAD(&ch->ring->tail, RLX) != pos)
                                        continue;
                                return -EMSGSIZE;               /* not consumed */
                        }
                        if (!__atomic_compare_exchange_n(&ch->ring->tail, &pos, pos + 1, true, RLX, RLX))
                                continue;
                        slot->recv_pid = my_pid();
                        STORE(&slot->recv_pos, pos, REL);
                        if ((count_op(ch) & 15) == 1)
                                note_cpu(&ch->ring->recv_cpu);
                        if (len)
                                memcpy(buf, payload(slot), len);
                        STORE(&slot->seq, pos + ch->info.slots, REL);
                        notify(&ch->ring->space_seq, &ch->ring->send_sleeping);
                        return (ssize_t) len;
                }
                if (diff < 0) {         /* empty, or a sender is still writing it */
                        if (LOAD(&slot->send_pos, RLX) == pos)
                                await_copy(ch, slot);
                        r = wait_slot(ch, slot, pos + 1, &w, pos);
                        if (skip_dead_senders_slot(ch, slot, pos))
                                continue;
                        if (r < 0)
                                return r;
                }
        }
}
