/*
 * The ring alone: client/ring.c over memory of this process (a malloc'd
 * buffer, or a memfd mapped twice, so that one ring has two addresses as it
 * has in two processes), driven by threads. A model check of the
 * multi-producer/multi-consumer queue and of its repair and removal rules:
 *
 * - every message a producer was told was sent is received exactly once
 *   (by a consumer, or by a simulated dead receiver that took it);
 * - no message is torn: each carries its producer, its sequence number, its
 *   length and a checksum of all of them and of its bytes;
 * - each consumer sees each producer's messages in the order they were sent;
 * - a claim abandoned by a "killed" peer is repaired, a live one never is;
 * - a ring marked removed answers -EIDRM to every call, blocked ones too.
 *
 * Kills are simulated, not made: a thread claims a position exactly as
 * client/ring.c does (the owner word's compare-and-swap, naming a holder
 * token) and abandons it, either at once (before head or tail moved on) or
 * mid-copy. The token is one of the ring's holder table marked DEAD, as the
 * broker marks a holder whose connection ended; every handle's own token
 * is LIVE, as the broker hands them out.
 *
 * Counts are fixed, not run times; every call has a timeout that a correct
 * run never meets; each case has its own Check timeout.
 */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "client/prefetch.h"
#include "client/shmbroker-internal.h"
#include "common/util.h"

#define CASE_TIMEOUT 120
/* Only a broken ring waits this long: the watchdog of every call. */
#define CALL_TIMEOUT_MS 20000
#define SLOT_SIZE 200

#define LOAD(p, mo) __atomic_load_n((p), (mo))
#define STORE(p, v, mo) __atomic_store_n((p), (v), (mo))

typedef struct Msg {
        uint32_t producer, seq, len, sum;
        unsigned char data[SLOT_SIZE - 16];
} Msg;

#define MSG_HEADER offsetof(Msg, data)

static int64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t checksum(const Msg *m) {
        uint32_t h = 2166136261u;
        uint32_t head[3] = { m->producer, m->seq, m->len };

        for (size_t i = 0; i < sizeof head; i++)
                h = (h ^ ((const unsigned char *) head)[i]) * 16777619u;
        for (uint32_t i = 0; i < m->len && i < sizeof m->data; i++)
                h = (h ^ m->data[i]) * 16777619u;
        return h;
}

static uint32_t next_random(uint32_t *state) {
        /* xorshift32: enough for delays and lengths, and the same on every run. */
        uint32_t x = *state;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return *state = x;
}

/* Now and then a small pause of one kind or another, so the threads meet in every order. */
static void maybe_delay(uint32_t *seed) {
        uint32_t r = next_random(seed);

        switch (r % 128) {
        case 0:
                sched_yield();
                break;
        case 1:
                nanosleep(&(struct timespec) { .tv_nsec = (long) (r >> 8) % 50000 }, NULL);
                break;
        case 2 ... 9:
                for (uint32_t i = (r >> 8) % 512; i > 0; i--)
                        __asm__ __volatile__("" ::: "memory");
                break;
        default:
                break;
        }
}

/* The library's kernel check of a long sleep (client/channel.c): these rings live in this process's memory. */
int channel_check_gone(shmb_channel *ch) {
        (void) ch;
        return 0;
}

/* ---- a ring of this process's memory ---- */

typedef struct TestRing {
        void *view[2];          /* two mappings of one memfd; or one malloc'd buffer twice */
        uint32_t holders;       /* entries handed out */
        uint64_t size;
        int memfd;              /* -1: malloc'd */
} TestRing;

/* Hand out holder entry `index` as the broker does, alive or already dead; its token. */
static uint32_t holder_token(void *ring, uint32_t index, bool live) {
        STORE(&ring_holder_at(ring, index)->word, (UINT64_C(1) << 32) | (live ? RING_HOLDER_LIVE : RING_HOLDER_DEAD),
              __ATOMIC_RELEASE);
        return ring_token(index, 1);
}

static void ring_make(TestRing *ret, uint32_t slot_size, uint32_t slots, bool memfd) {
        uint64_t size = ring_segment_size(slot_size, slots);

        *ret = (TestRing) { .size = size, .memfd = -1 };
        if (memfd) {
                ret->memfd = memfd_create("test-ring", MFD_CLOEXEC);
                ck_assert_int_ge(ret->memfd, 0);
                ck_assert_int_eq(ftruncate(ret->memfd, (off_t) size), 0);
                for (int i = 0; i < 2; i++) {
                        ret->view[i] = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, ret->memfd, 0);
                        ck_assert_ptr_ne(ret->view[i], MAP_FAILED);
                }
                ck_assert_ptr_ne(ret->view[0], ret->view[1]);
        } else {
                ck_assert_int_eq(posix_memalign(&ret->view[0], 4096, size), 0);
                ret->view[1] = ret->view[0];
        }
        memset(ret->view[0], 0, size);  /* as shmget() gives it */
        ring_format(ret->view[0], slot_size, slots);
}

/* The next entry, handed out live: from the main thread, or from workers as they run. */
static uint32_t next_token(TestRing *r) {
        uint32_t index = __atomic_fetch_add(&r->holders, 1, __ATOMIC_RELAXED);

        ck_assert_uint_lt(index, RING_HOLDERS);
        return holder_token(r->view[0], index, true);
}

static void ring_unmake(TestRing *r) {
        if (r->memfd >= 0) {
                munmap(r->view[0], r->size);
                munmap(r->view[1], r->size);
                close(r->memfd);
        } else
                free(r->view[0]);
}

/* A handle as shmb_open() makes one, over one view of the ring. */
static shmb_channel *handle_new(TestRing *r, int view, unsigned spin_us) {
        shmb_channel *ch = calloc(1, sizeof *ch);

        ck_assert_ptr_nonnull(ch);
        ch->access = SHMB_RW;
        ch->info.layout = SHMB_LAYOUT_RING;
        ch->info.size = r->size;
        ch->addr = r->view[view];
        ck_assert_int_eq(ring_channel_init(ch, r->view[view], r->size), 0);
        ch->hold.token = next_token(r);
        STORE(&ch->spin_us, spin_us, __ATOMIC_RELAXED);
        return ch;
}

/* Free a handle of handle_new(), with the zero-copy claim records its calls may have made (client/ring.c). */
static void handle_free(shmb_channel *ch) {
        if (ch)
                free(ch->zc_claims);
        free(ch);
}

static RingSlot *slot_of(const shmb_channel *ch, uint64_t pos) {
        return (RingSlot *) (ch->slots + (pos % ch->info.slots) * ch->stride);
}

/* ---- simulated kills: claims made as client/ring.c makes them, then abandoned ---- */

/*
 * The claim itself, as client/ring.c makes it: the owner word of the slot
 * of pos, from a value of an earlier lap to (pos, token); want is the seq
 * the slot must still have. Nothing else is written: a claimer killed
 * right after it has moved neither head nor tail on.
 */
static bool claim_as(RingSlot *slot, uint64_t *word, uint64_t pos, uint64_t want, uint32_t token) {
        uint64_t owner = LOAD(word, __ATOMIC_ACQUIRE);

        if ((uint32_t) owner != 0 && (int32_t) ((uint32_t) (owner >> 32) - (uint32_t) pos) >= 0)
                return false;
        if (!__atomic_compare_exchange_n(word, &owner, ring_owner(pos, token), false, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
                return false;
        return LOAD(&slot->seq, __ATOMIC_ACQUIRE) == want;      /* a stale head: caught by the tests' checks */
}

/*
 * A sender claims the free slot at head and dies: at once (before moving
 * head on) or after writing part of a message. false: no free slot now.
 */
static bool abandon_send(shmb_channel *ch, uint32_t token, bool at_once) {
        uint64_t pos = LOAD(&ch->ring->head, __ATOMIC_ACQUIRE);
        RingSlot *slot = slot_of(ch, pos);
        Msg junk = { .producer = UINT32_MAX, .seq = UINT32_MAX, .len = 100 };

        if (LOAD(&slot->seq, __ATOMIC_ACQUIRE) != pos || !claim_as(slot, &slot->send_owner, pos, pos, token))
                return false;
        if (at_once)
                return true;
        (void) __atomic_compare_exchange_n(&ch->ring->head, &pos, pos + 1, false, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
        STORE(&slot->len, (uint32_t) (MSG_HEADER + junk.len), __ATOMIC_RELAXED);
        /* Killed mid-copy: a plausible start of a message, never published. */
        memcpy((char *) slot + RING_SLOT_HEADER, &junk, MSG_HEADER + 10);
        return true;
}

/*
 * A receiver claims the message at tail, reads it, and dies before freeing
 * the slot (at_once: before even moving tail on): that message died with
 * it. A stop marker (empty) is left alone. Returns true with the message in
 * *ret.
 */
static bool abandon_recv(shmb_channel *ch, uint32_t token, bool at_once, Msg *ret, uint32_t *ret_len) {
        uint64_t pos = LOAD(&ch->ring->tail, __ATOMIC_ACQUIRE);
        RingSlot *slot = slot_of(ch, pos);
        uint32_t len;

        if (LOAD(&slot->seq, __ATOMIC_ACQUIRE) != pos + 1)
                return false;
        len = LOAD(&slot->len, __ATOMIC_RELAXED);
        if (len == 0 || len > sizeof *ret || !claim_as(slot, &slot->recv_owner, pos, pos + 1, token))
                return false;
        /* Stable once claimed: nobody else may free or refill it. */
        len = LOAD(&slot->len, __ATOMIC_RELAXED);
        if (!at_once)
                (void) __atomic_compare_exchange_n(&ch->ring->tail, &pos, pos + 1, false, __ATOMIC_RELEASE,
                                                   __ATOMIC_RELAXED);
        memcpy(ret, (char *) slot + RING_SLOT_HEADER, len <= sizeof *ret ? len : sizeof *ret);
        *ret_len = len;
        return true;
}

/*
 * A simulated kill claims with a token of its own, live while it claims
 * and writes (or reads): a real claimer does nothing after its death, and
 * a claim made dead could be repaired, and the slot refilled, under the
 * simulation's own copy. Then the broker's part, as when the process
 * ends: the entry marked dead, and the ring's sleepers woken (some may
 * wait behind the claim with no poll: they looked before it was made).
 */
static void broker_marks_dead(TestRing *r, uint32_t token) {
        uint32_t index = ring_token_index(token);

        STORE(&ring_holder_at(r->view[0], index)->word, (UINT64_C(1) << 32) | RING_HOLDER_DEAD,
              __ATOMIC_RELEASE);
        ring_wake_sleepers(r->view[0]);
}

/* ---- the model check ---- */

typedef struct Plan {
        unsigned producers, consumers, per_producer;
        uint32_t slots;
        unsigned spin_us;
        bool memfd;             /* producers on one mapping, consumers on another */
        unsigned dead_sends;    /* abandoned send claims, per producer */
        unsigned dead_recvs;    /* abandoned receive claims, per consumer */
} Plan;

typedef struct Run {
        const Plan *plan;
        uint8_t *seen;          /* [producer * per_producer + seq]: how often it was taken */
        uint32_t received, died_with_receiver, abandoned_sends;
        TestRing *ring;         /* the simulated kills take holder entries of it */
        pthread_mutex_t lock;
        char failure[512];      /* the first thing that went wrong */
        bool failed;
} Run;

typedef struct Worker {
        Run *run;
        shmb_channel *ch;
        unsigned id;
        uint32_t seed;
        pthread_t thread;
} Worker;

/* Threads cannot use Check's assertions: the first failure is kept for the main thread. */
__attribute__((format(printf, 2, 3)))
static void run_fail(Run *run, const char *fmt, ...) {
        va_list ap;

        pthread_mutex_lock(&run->lock);
        if (!run->failed) {
                va_start(ap, fmt);
                vsnprintf(run->failure, sizeof run->failure, fmt, ap);
                va_end(ap);
                STORE(&run->failed, true, __ATOMIC_RELAXED);
        }
        pthread_mutex_unlock(&run->lock);
}

static bool failed(Run *run) {
        return LOAD(&run->failed, __ATOMIC_RELAXED);
}

/* A message taken (by a consumer, or by a dead receiver): it must be whole, known, and new. */
static bool take(Run *run, const Msg *m, ssize_t n, const char *who, unsigned id) {
        const Plan *p = run->plan;

        if (n < (ssize_t) MSG_HEADER || m->len > sizeof m->data || (size_t) n != MSG_HEADER + m->len ||
            m->sum != checksum(m)) {
                run_fail(run, "%s %u: a torn or corrupt message of %zd bytes (producer %" PRIu32 ", seq %" PRIu32 ")", who,
                     id, n, m->producer, m->seq);
                return false;
        }
        if (m->producer >= p->producers || m->seq >= p->per_producer) {
                run_fail(run, "%s %u: a message nobody sent (producer %" PRIu32 ", seq %" PRIu32 ")", who, id,
                     m->producer, m->seq);
                return false;
        }
        if (__atomic_add_fetch(&run->seen[m->producer * p->per_producer + m->seq], 1, __ATOMIC_RELAXED) != 1) {
                run_fail(run, "%s %u: message %" PRIu32 "/%" PRIu32 " delivered twice", who, id, m->producer, m->seq);
                return false;
        }
        return true;
}

/* What a stuck ring looked like, for the log of a failed run. */
static void dump_ring(const shmb_channel *ch, const char *who) {
        const RingHeader *h = ch->ring;

        fprintf(stderr, "test-ring: %s: head %" PRIu64 " tail %" PRIu64 " recv_sleeping %u send_sleeping %u\n", who,
                LOAD(&h->head, __ATOMIC_ACQUIRE), LOAD(&h->tail, __ATOMIC_ACQUIRE),
                LOAD(&h->recv_sleeping, __ATOMIC_ACQUIRE), LOAD(&h->send_sleeping, __ATOMIC_ACQUIRE));
        for (uint32_t i = 0; i < h->slots; i++) {
                const RingSlot *slot = ring_slot_at(h, i);
                uint64_t so = LOAD(&slot->send_owner, __ATOMIC_ACQUIRE), ro = LOAD(&slot->recv_owner, __ATOMIC_ACQUIRE);

                fprintf(stderr, "test-ring:   slot %u: seq %" PRIu64 " send_owner %" PRIu64 "/%s recv_owner %" PRIu64
                        "/%s\n", i, LOAD(&slot->seq, __ATOMIC_ACQUIRE), so >> 32,
                        ring_token_dead(h, (uint32_t) so) ? "dead" : "live", ro >> 32,
                        ring_token_dead(h, (uint32_t) ro) ? "dead" : "live");
        }
}

/*
 * A call whose timeout is the watchdog of a stuck ring, not of a slow
 * machine: a worker that others beat to every slot for CALL_TIMEOUT_MS
 * (a loaded CPU, many 50 ms repair polls) waits on while the ring's other
 * side moves, and fails only when nothing moved in all that time.
 */
static int send_while_moving(shmb_channel *ch, const void *msg, size_t len) {
        for (;;) {
                uint64_t before = LOAD(&ch->ring->head, __ATOMIC_ACQUIRE);
                int r = shmb_send(ch, msg, len, CALL_TIMEOUT_MS);

                if (r != -ETIMEDOUT)
                        return r;
                if (LOAD(&ch->ring->head, __ATOMIC_ACQUIRE) == before) {
                        dump_ring(ch, "a send timed out");
                        return r;
                }
        }
}

static ssize_t recv_while_moving(shmb_channel *ch, void *buf, size_t size) {
        for (;;) {
                uint64_t before = LOAD(&ch->ring->tail, __ATOMIC_ACQUIRE);
                ssize_t n = shmb_recv(ch, buf, size, CALL_TIMEOUT_MS);

                if (n != -ETIMEDOUT)
                        return n;
                if (LOAD(&ch->ring->tail, __ATOMIC_ACQUIRE) == before) {
                        dump_ring(ch, "a receive timed out");
                        return n;
                }
        }
}

static void *producer_main(void *userdata) {
        Worker *w = userdata;
        const Plan *p = w->run->plan;
        unsigned every = p->dead_sends ? p->per_producer / p->dead_sends : 0;

        for (uint32_t seq = 0; seq < p->per_producer && !failed(w->run); seq++) {
                Msg m = { .producer = w->id, .seq = seq, .len = next_random(&w->seed) % sizeof m.data };
                int r;

                /* A dead sender's claim, now and then, at a point that depends on the seed. */
                if (every && seq % every == w->id % every) {
                        uint32_t doomed = next_token(w->run->ring);

                        for (int tries = 0; tries < 1000; tries++) {
                                if (abandon_send(w->ch, doomed, next_random(&w->seed) & 1)) {
                                        __atomic_add_fetch(&w->run->abandoned_sends, 1, __ATOMIC_RELAXED);
                                        break;
                                }
                                sched_yield();
                        }
                        broker_marks_dead(w->run->ring, doomed);
                }
                for (uint32_t i = 0; i < m.len; i++)
                        m.data[i] = (unsigned char) next_random(&w->seed);
                m.sum = checksum(&m);
                r = send_while_moving(w->ch, &m, MSG_HEADER + m.len);
                if (r < 0) {
                        run_fail(w->run, "producer %u: send of %" PRIu32 ": %s", w->id, seq, strerror(-r));
                        break;
                }
                maybe_delay(&w->seed);
        }
        return NULL;
}

static void *consumer_main(void *userdata) {
        Worker *w = userdata;
        Run *run = w->run;
        const Plan *p = run->plan;
        int64_t *last = calloc(p->producers, sizeof *last);
        unsigned dead_left = p->dead_recvs;
        uint32_t doomed = 0;            /* the dice said die: done at the next message there is, with this token */

        if (!last) {
                run_fail(run, "consumer %u: out of memory", w->id);
                return NULL;
        }
        for (unsigned i = 0; i < p->producers; i++)
                last[i] = -1;
        while (!failed(run)) {
                Msg m;
                ssize_t n;
                uint32_t len;

                if (dead_left > 0 && !doomed && next_random(&w->seed) % 256 == 0)
                        doomed = next_token(run->ring);
                if (doomed && abandon_recv(w->ch, doomed, next_random(&w->seed) & 1, &m, &len)) {
                        broker_marks_dead(run->ring, doomed);
                        dead_left--;
                        doomed = 0;
                        if (take(run, &m, len, "dead receiver of consumer", w->id))
                                __atomic_add_fetch(&run->died_with_receiver, 1, __ATOMIC_RELAXED);
                        continue;
                }
                n = recv_while_moving(w->ch, &m, sizeof m);
                if (n < 0) {
                        run_fail(run, "consumer %u: receive: %s", w->id, strerror((int) -n));
                        break;
                }
                if (n == 0)
                        break;          /* the stop marker */
                if (!take(run, &m, n, "consumer", w->id))
                        break;
                if ((int64_t) m.seq <= last[m.producer]) {
                        run_fail(run, "consumer %u: producer %" PRIu32 "'s message %" PRIu32 " after its %" PRId64, w->id,
                             m.producer, m.seq, last[m.producer]);
                        break;
                }
                last[m.producer] = m.seq;
                __atomic_add_fetch(&run->received, 1, __ATOMIC_RELAXED);
                maybe_delay(&w->seed);
        }
        free(last);
        return NULL;
}

static void run_plan(const Plan *p, uint32_t seed) {
        unsigned n = p->producers + p->consumers;
        Worker *workers = calloc(n, sizeof *workers);
        size_t total = (size_t) p->producers * p->per_producer;
        Run run = { .plan = p, .lock = PTHREAD_MUTEX_INITIALIZER };
        shmb_channel *main_ch;
        TestRing ring;
        int64_t start = now_ms();

        ck_assert_ptr_nonnull(workers);
        run.seen = calloc(total, 1);
        ck_assert_ptr_nonnull(run.seen);
        ring_make(&ring, SLOT_SIZE, p->slots, p->memfd);
        run.ring = &ring;
        main_ch = handle_new(&ring, 0, p->spin_us);
        /* Consumers first, so the first messages find them waiting; each thread its own handle, as a process would. */
        for (unsigned i = 0; i < n; i++) {
                bool consumer = i < p->consumers;

                workers[i] = (Worker) {
                        .run = &run,
                        .ch = handle_new(&ring, consumer ? 1 : 0, p->spin_us),
                        .id = consumer ? i : i - p->consumers,
                        .seed = seed * 2654435761u + i + 1,
                };
                ck_assert_int_eq(pthread_create(&workers[i].thread, NULL, consumer ? consumer_main : producer_main,
                                                &workers[i]), 0);
        }
        for (unsigned i = p->consumers; i < n; i++)
                ck_assert_int_eq(pthread_join(workers[i].thread, NULL), 0);
        /* One stop marker per consumer: each stops at its first. */
        for (unsigned i = 0; i < p->consumers && !failed(&run); i++) {
                int r = shmb_send(main_ch, "", 0, CALL_TIMEOUT_MS);

                if (r < 0)
                        run_fail(&run, "stop marker %u: %s", i, strerror(-r));
        }
        if (failed(&run))
                /* Wake consumers that wait for messages that will not come. */
                ring_mark_removed(ring.view[0]);
        for (unsigned i = 0; i < p->consumers; i++)
                ck_assert_int_eq(pthread_join(workers[i].thread, NULL), 0);
        ck_assert_msg(!run.failed, "%s", run.failure);

        /* Exactly once, all of them: a consumer or a dead receiver took each. */
        for (size_t i = 0; i < total; i++)
                ck_assert_msg(run.seen[i] == 1, "message %zu/%zu taken %u times", i / p->per_producer,
                              i % p->per_producer, run.seen[i]);
        ck_assert_uint_eq(run.received + run.died_with_receiver, total);
        if (p->dead_recvs)
                ck_assert_uint_gt(run.died_with_receiver, 0);
        if (p->dead_sends)
                ck_assert_uint_gt(run.abandoned_sends, 0);
        /* Nothing left behind: every position was received, skipped, or taken by the dead. */
        ck_assert_uint_eq(LOAD(&main_ch->ring->head, __ATOMIC_RELAXED), LOAD(&main_ch->ring->tail, __ATOMIC_RELAXED));
        fprintf(stderr, "test-ring: %u producers x %u, %u consumers, %" PRIu32 " slots, spin %u us%s: %" PRIu32
                " received, %" PRIu32 " taken by dead receivers, %" PRIu32 " sends abandoned, %" PRId64 " ms\n",
                p->producers, p->per_producer, p->consumers, p->slots, p->spin_us, p->memfd ? ", two mappings" : "",
                run.received, run.died_with_receiver, run.abandoned_sends, now_ms() - start);

        for (unsigned i = 0; i < n; i++)
                handle_free(workers[i].ch);
        free(workers);
        handle_free(main_ch);
        free(run.seen);
        ring_unmake(&ring);
}

START_TEST(test_mpmc_exactly_once_in_order) {
        static const Plan plan = { .producers = 4, .consumers = 3, .per_producer = 50000, .slots = 8,
                                   .spin_us = SHMB_DEFAULT_SPIN_US };

        run_plan(&plan, 1);
}
END_TEST

/* No spinning: every wait is a futex sleep, woken through the other mapping's address. */
START_TEST(test_mpmc_sleeping_across_two_mappings) {
        static const Plan plan = { .producers = 3, .consumers = 3, .per_producer = 20000, .slots = 4, .memfd = true };

        run_plan(&plan, 2);
}
END_TEST

START_TEST(test_mpmc_two_slots) {
        static const Plan plan = { .producers = 2, .consumers = 2, .per_producer = 20000, .slots = 2,
                                   .spin_us = SHMB_DEFAULT_SPIN_US };

        run_plan(&plan, 3);
}
END_TEST

/* Dead senders' claims are skipped, dead receivers' slots freed; nothing else is lost or repeated. */
START_TEST(test_mpmc_with_dead_claimers) {
        static const Plan plan = { .producers = 3, .consumers = 2, .per_producer = 4000, .slots = 8,
                                   .spin_us = SHMB_DEFAULT_SPIN_US, .memfd = true, .dead_sends = 4, .dead_recvs = 4 };

        run_plan(&plan, 4);
}
END_TEST

/* Many kills on the smallest ring, every wait a sleep: a dead claim is all the ring has, often. */
START_TEST(test_mpmc_many_dead_claimers_two_slots) {
        static const Plan plan = { .producers = 2, .consumers = 2, .per_producer = 3000, .slots = 2,
                                   .memfd = true, .dead_sends = 15, .dead_recvs = 8 };

        run_plan(&plan, 5);
}
END_TEST

/* ---- single-threaded semantics ---- */

START_TEST(test_fifo_limits_and_laps) {
        TestRing ring;
        shmb_channel *ch;
        char buf[SLOT_SIZE + 1];

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send(ch, buf, SLOT_SIZE + 1, 0), -EMSGSIZE);
        /* Many laps of a small ring: positions wrap the slots, never the sequence numbers. */
        for (uint32_t i = 0; i < 1000; i++) {
                uint32_t v;

                for (uint32_t k = 0; k < 3; k++) {
                        v = i * 3 + k;
                        ck_assert_int_eq(shmb_send(ch, &v, sizeof v, 0), 0);
                }
                for (uint32_t k = 0; k < 3; k++) {
                        ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, 0), (ssize_t) sizeof v);
                        ck_assert_uint_eq(v, i * 3 + k);
                }
        }
        for (int i = 0; i < 4; i++)
                ck_assert_int_eq(shmb_send(ch, "", 0, 0), 0);
        ck_assert_int_eq(shmb_send(ch, "", 0, 0), -EAGAIN);             /* full */
        ck_assert_int_eq(shmb_send(ch, "", 0, 30), -ETIMEDOUT);
        /* An empty message is one; taking one makes room for one. */
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), 0);
        ck_assert_int_eq(shmb_send(ch, "abcd", 4, 0), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), 0);
        /* A buffer too small consumes nothing. */
        ck_assert_int_eq(shmb_recv(ch, buf, 3, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_recv(ch, buf, 4, 0), 4);
        ck_assert_int_eq(memcmp(buf, "abcd", 4), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 30), -ETIMEDOUT);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

START_TEST(test_header_must_be_this_version) {
        TestRing ring;
        shmb_channel ch = {};
        RingHeader *h;

        ring_make(&ring, SLOT_SIZE, 4, false);
        h = ring.view[0];
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), 0);
        ck_assert_uint_eq(ch.info.slots, 4);
        ck_assert_uint_eq(ch.info.slot_size, SLOT_SIZE);
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size - 1), -EPROTO);
        ck_assert_int_eq(ring_channel_init(&ch, h, RING_HEADER_SIZE - 1), -EINVAL);
        h->holders--;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        h->holders++;
        h->holders_offset += 32;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        h->holders_offset -= 32;
        h->version = RING_VERSION - 1;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        h->version = RING_VERSION + 1;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        h->version = RING_VERSION;
        h->magic ^= 1;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        h->magic ^= 1;
        h->slot_stride += 64;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        h->slot_stride -= 64;
        h->data_offset = 0;
        ck_assert_int_eq(ring_channel_init(&ch, h, ring.size), -EPROTO);
        ring_unmake(&ring);

        /* One slot cannot tell a freed slot from a full one (a second send would overwrite the first). */
        ring_make(&ring, SLOT_SIZE, 1, false);
        ck_assert_int_eq(ring_channel_init(&ch, ring.view[0], ring.size), -EPROTO);
        ring_unmake(&ring);
}
END_TEST

/*
 * Anyone who may open a ring rw may write any byte of it. A header whose
 * slots all say "done, far ahead" (seq 2^62) must not turn a call into a
 * loop that moves head or tail on one position at a time for 2^62 turns:
 * no slot is ever more than a lap ahead of head or tail, so such a ring is
 * corrupt, -EPROTO, whatever the timeout (for ever included). The Check
 * timeout is what fails a library that loops; a correct one takes no time.
 */
START_TEST(test_corrupt_seqs_do_not_outlast_the_timeout) {
        TestRing ring;
        shmb_channel *ch;
        char buf[SLOT_SIZE];

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        for (uint64_t i = 0; i < 4; i++)
                STORE(&slot_of(ch, i)->seq, UINT64_C(1) << 62, __ATOMIC_SEQ_CST);

        for (int timeout = -1; timeout <= 50; timeout += 51) {
                void *p;
                const void *in;

                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, timeout), -EPROTO);
                ck_assert_int_eq(shmb_recv_peek(ch, &in, timeout), -EPROTO);
                ck_assert_int_eq(shmb_send(ch, "m", 1, timeout), -EPROTO);
                ck_assert_int_eq(shmb_send_reserve(ch, 1, &p, timeout), -EPROTO);
        }
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/*
 * Any rw opener can write any owner word. One that claims the free slot at
 * head (or the full slot at tail) for a LATER lap while head (tail) stays
 * where it is can never come from a claimer (a claim for pos + n needs seq
 * pos + n first), so it is a scribble: a call must not turn it into a loop
 * that neither waits nor looks at the clock. Every call returns, within its
 * timeout or at once; for ever (-1) included. The Check timeout is what
 * fails a library that loops.
 */
START_TEST(test_future_claim_does_not_outlast_the_timeout) {
        TestRing ring;
        shmb_channel *ch;
        char buf[SLOT_SIZE];

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        ck_assert_int_eq(shmb_send(ch, "m", 1, 0), 0);
        /* Head is 1, tail 0 (a message): claims "for the next lap" at both. */
        STORE(&slot_of(ch, 1)->send_owner, ring_owner(2, 5), __ATOMIC_SEQ_CST);
        STORE(&slot_of(ch, 0)->recv_owner, ring_owner(1, 5), __ATOMIC_SEQ_CST);

        for (int timeout = -1; timeout <= 50; timeout += 51) {
                int r = shmb_send(ch, "m", 1, timeout);
                ssize_t n = shmb_recv(ch, buf, sizeof buf, timeout);

                ck_assert_msg(r == 0 || r == -EPROTO || r == -ETIMEDOUT || r == -EAGAIN, "send: %d", r);
                ck_assert_msg(n == 1 || n == -EPROTO || n == -ETIMEDOUT || n == -EAGAIN, "recv: %zd", n);
        }
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/*
 * Any rw opener can write a slot's length. A receiver never takes more than
 * a slot from it: a peek says the slot's size, a receive into a buffer of a
 * slot gets that much, and one into a smaller buffer is -EMSGSIZE, the
 * message left. Without the cut, a peek would hand the caller 4 GiB past
 * the payload to read.
 */
START_TEST(test_scribbled_length_is_cut_to_the_slot) {
        TestRing ring;
        shmb_channel *ch;
        char buf[SLOT_SIZE];
        const void *in;

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        for (int k = 0; k < 2; k++) {
                ck_assert_int_eq(shmb_send(ch, "m", 1, 0), 0);
                STORE(&slot_of(ch, (uint64_t) k)->len, UINT32_MAX, __ATOMIC_SEQ_CST);
        }
        ck_assert_int_eq(shmb_recv(ch, buf, SLOT_SIZE - 1, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), SLOT_SIZE);
        ck_assert_int_eq(shmb_recv_peek(ch, &in, 0), SLOT_SIZE);
        ck_assert_int_eq(shmb_recv_release(ch, in), 0);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/*
 * Any rw opener can write the header. A scribbled holder count, with an
 * owner word naming a holder past the real table, must not make a waiter
 * read past the segment: the library knows the table's size from the
 * header it checked at open (ring_channel_init()), and a token past it is
 * nobody's. The ring is mapped with nothing but PROT_NONE after it, so a
 * read past it faults, as it does for a System V segment.
 */
START_TEST(test_scribbled_holder_count_reads_nothing_past_the_ring) {
        uint64_t size = ring_segment_size(SLOT_SIZE, 4), mapped = (size + 4095) & ~UINT64_C(4095);
        uint64_t guard = (uint64_t) (1u << RING_TOKEN_INDEX_BITS) * RING_HOLDER_SIZE + RING_HOLDERS_OFFSET;
        char buf[SLOT_SIZE], *area;
        RingHeader *h;
        shmb_channel *ch;
        TestRing ring;
        uint64_t pos;
        void *addr;
        int fd;

        fd = memfd_create("test-ring-guard", MFD_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t) size), 0);
        area = mmap(NULL, mapped + guard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert_ptr_ne(area, MAP_FAILED);
        addr = mmap(area, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        ck_assert_ptr_eq(addr, area);
        ring_format(addr, SLOT_SIZE, 4);
        ring = (TestRing) { .view = { addr, addr }, .size = size, .memfd = fd };
        ch = handle_new(&ring, 0, 0);

        /* The scribble: the most holders a token can name, and a claim at tail by the last of them. */
        h = addr;
        STORE(&h->holders, (UINT32_C(1) << RING_TOKEN_INDEX_BITS) - 1, __ATOMIC_SEQ_CST);
        pos = LOAD(&h->tail, __ATOMIC_ACQUIRE);
        STORE(&slot_of(ch, pos)->send_owner, ring_owner(pos, ring_token((UINT32_C(1) << RING_TOKEN_INDEX_BITS) - 2, 0)),
              __ATOMIC_SEQ_CST);

        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 50), -ETIMEDOUT);
        ck_assert_int_eq(shmb_send(ch, "m", 1, 0), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), 1);

        handle_free(ch);
        ck_assert_int_eq(munmap(area, mapped + guard), 0);
        close(fd);
}
END_TEST

/*
 * A zero-copy send aborted while older messages wait: its slot is a
 * tombstone that tail has not passed yet. One lap later the same slot is
 * claimed and aborted again, before any receiver looked: the slot's seq is
 * then pos + 2n - 1 ahead of tail's position + 1, with tail still there.
 * A healthy ring, only used through the library: every message must come.
 */
START_TEST(test_abort_a_lap_later_is_no_corruption) {
        TestRing ring;
        shmb_channel *ch;
        char buf[SLOT_SIZE];
        void *p;
        ssize_t n;

        ring_make(&ring, SLOT_SIZE, 8, false);
        ch = handle_new(&ring, 0, 0);
        ck_assert_int_eq(shmb_send(ch, "a", 1, 0), 0);                 /* pos 0 */
        ck_assert_int_eq(shmb_send_reserve(ch, 1, &p, 0), 0);          /* pos 1 */
        ck_assert_int_eq(shmb_send_abort(ch, p), 0);                   /* tail stays at 0 */
        for (int i = 2; i < 8; i++)
                ck_assert_int_eq(shmb_send(ch, "b", 1, 0), 0);         /* pos 2..7 */
        n = shmb_recv(ch, buf, sizeof buf, 0);                         /* pos 0: tail now 1 */
        ck_assert_int_eq(n, 1);
        ck_assert_int_eq(shmb_send(ch, "c", 1, 0), 0);                 /* pos 8 */
        ck_assert_int_eq(shmb_send_reserve(ch, 1, &p, 0), 0);          /* pos 9, slot 1 again */
        ck_assert_int_eq(shmb_send_abort(ch, p), 0);
        for (int i = 2; i < 8; i++) {
                n = shmb_recv(ch, buf, sizeof buf, 0);
                ck_assert_msg(n == 1 && buf[0] == 'b', "receive %d: %s", i, n < 0 ? strerror((int) -n) : "wrong");
        }
        n = shmb_recv(ch, buf, sizeof buf, 0);
        ck_assert_msg(n == 1 && buf[0] == 'c', "last receive: %s", n < 0 ? strerror((int) -n) : "wrong");
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/*
 * A receiver asleep at a position whose sender died, or gave its claim back,
 * waits for that position no more: whoever skips the slot (a repairer, or
 * the sender's own abort) wakes the sleepers, as a publish would. The
 * sleeper is the ring's flag and futex word, as a receiver leaves them when
 * it goes to sleep (after the broker's wake-up for the death, say): the
 * skip must take the flag and move the word, or it sleeps on to its next
 * poll with the next message waiting.
 */
START_TEST(test_skips_and_aborts_wake_sleeping_receivers) {
        TestRing ring;
        shmb_channel *ch;
        char buf[SLOT_SIZE];
        uint32_t dead, word;
        void *p;

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        dead = next_token(&ring);
        ck_assert(abandon_send(ch, dead, true));        /* position 0, head not moved on */
        broker_marks_dead(&ring, dead);
        /* A receiver sleeps at position 0. */
        STORE(&ch->ring->recv_sleeping, RING_SLEEP_FUTEX, __ATOMIC_SEQ_CST);
        word = LOAD(&ch->ring->data_seq, __ATOMIC_SEQ_CST);
        /* This call skips the dead sender's slot; nothing is behind it. */
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_uint_eq(LOAD(&slot_of(ch, 0)->seq, __ATOMIC_ACQUIRE), 0 + 4);
        ck_assert_uint_ne(LOAD(&ch->ring->data_seq, __ATOMIC_SEQ_CST), word);
        ck_assert_uint_eq(LOAD(&ch->ring->recv_sleeping, __ATOMIC_SEQ_CST), 0);

        /* Position 1, reserved and given back while a receiver sleeps at it. */
        ck_assert_int_eq(shmb_send_reserve(ch, 1, &p, 0), 0);
        STORE(&ch->ring->recv_sleeping, RING_SLEEP_FUTEX, __ATOMIC_SEQ_CST);
        word = LOAD(&ch->ring->data_seq, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(shmb_send_abort(ch, p), 0);
        ck_assert_uint_ne(LOAD(&ch->ring->data_seq, __ATOMIC_SEQ_CST), word);
        ck_assert_uint_eq(LOAD(&ch->ring->recv_sleeping, __ATOMIC_SEQ_CST), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/* ---- live claims are waited for, never repaired ---- */

typedef struct Call {
        shmb_channel *ch;
        bool send;
        int timeout_ms;
        ssize_t result;
        int64_t returned_ms;
        char buf[SLOT_SIZE];
        pthread_t thread;
} Call;

static void *call_main(void *userdata) {
        Call *c = userdata;

        c->result = c->send ? shmb_send(c->ch, "m", 1, c->timeout_ms) : shmb_recv(c->ch, c->buf, sizeof c->buf, c->timeout_ms);
        STORE(&c->returned_ms, now_ms(), __ATOMIC_RELEASE);
        return NULL;
}

/* A source buffer whose first touch stalls its sender (test_sender_taken_for_dead_is_told). */
static struct {
        char *src;
        size_t len;
        int stalled, go;
} stall;

static void *stalled_send_main(void *userdata) {
        Call *c = userdata;

        c->result = shmb_send(c->ch, stall.src, SLOT_SIZE, 5000);
        return NULL;
}

static void call_start(Call *c, shmb_channel *ch, bool send, int timeout_ms) {
        *c = (Call) { .ch = ch, .send = send, .timeout_ms = timeout_ms };
        ck_assert_int_eq(pthread_create(&c->thread, NULL, call_main, c), 0);
}

/* Wait (up to 5 s) until a waiter raised its sleeping flag: it is in its wait, past spinning. */
static void await_flag(const uint32_t *flag) {
        for (int64_t until = now_ms() + 5000; !LOAD(flag, __ATOMIC_SEQ_CST);) {
                ck_assert_msg(now_ms() < until, "the call did not go to sleep within 5 s");
                usleep(1000);
        }
}

START_TEST(test_live_sender_claim_is_waited_for) {
        TestRing ring;
        shmb_channel *ch;
        RingSlot *slot;
        Call recv;
        int64_t published;

        ring_make(&ring, SLOT_SIZE, 4, true);
        ch = handle_new(&ring, 0, SHMB_DEFAULT_SPIN_US);
        /* This live holder claims position 0 and is slow to publish. */
        ck_assert(abandon_send(ch, ch->hold.token, false));
        call_start(&recv, handle_new(&ring, 1, SHMB_DEFAULT_SPIN_US), false, 5000);
        /* Not returning is only news once the call waits for the claim: then six repair polls pass. */
        await_flag(&ch->ring->recv_sleeping);
        usleep(300000);
        ck_assert_int_eq(LOAD(&recv.returned_ms, __ATOMIC_ACQUIRE), 0);
        slot = slot_of(ch, 0);
        slot->len = 3;
        memcpy((char *) slot + RING_SLOT_HEADER, "pub", 3);
        published = now_ms();
        ck_assert(__atomic_compare_exchange_n(&slot->seq, &(uint64_t) { 0 }, 1, false, __ATOMIC_SEQ_CST,
                                              __ATOMIC_RELAXED));
        ck_assert_int_eq(pthread_join(recv.thread, NULL), 0);
        ck_assert_int_eq(recv.result, 3);
        ck_assert_int_eq(memcmp(recv.buf, "pub", 3), 0);
        ck_assert_int_lt(recv.returned_ms - published, 1000);
        handle_free(recv.ch);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

START_TEST(test_live_receiver_claim_is_waited_for) {
        TestRing ring;
        shmb_channel *ch;
        Call send;
        Msg m = { .len = 1 };
        uint32_t len;

        ring_make(&ring, SLOT_SIZE, 2, true);
        ch = handle_new(&ring, 0, SHMB_DEFAULT_SPIN_US);
        m.sum = checksum(&m);
        ck_assert_int_eq(shmb_send(ch, &m, MSG_HEADER + 1, 0), 0);
        ck_assert_int_eq(shmb_send(ch, &m, MSG_HEADER + 1, 0), 0);
        /* A receiver takes position 0 and is slow to free it; it is alive (this handle's holder). */
        ck_assert(abandon_recv(ch, ch->hold.token, false, &m, &len));
        call_start(&send, handle_new(&ring, 1, SHMB_DEFAULT_SPIN_US), true, 5000);
        await_flag(&ch->ring->send_sleeping);
        usleep(300000);         /* six repair polls */
        ck_assert_int_eq(LOAD(&send.returned_ms, __ATOMIC_ACQUIRE), 0);
        /* The receiver frees it at last. */
        ck_assert(__atomic_compare_exchange_n(&slot_of(ch, 0)->seq, &(uint64_t) { 1 }, 0 + 2, false, __ATOMIC_SEQ_CST,
                                              __ATOMIC_RELAXED));
        ck_assert_int_eq(pthread_join(send.thread, NULL), 0);
        ck_assert_int_eq(send.result, 0);
        handle_free(send.ch);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/*
 * A sender taken for dead while it lives (the broker marked its token dead:
 * after a restart it did not rejoin in time) is stalled mid-copy, inside the
 * real shmb_send(): its source page faults, and the fault handler waits
 * until the test has let a receiver skip the slot. Its publish must then
 * fail, and as its holder is gone it must not claim again: -ENOTCONN, and
 * nothing half-sent arrives; with a live token again it sends whole.
 */
static void on_stall_fault(int sig, siginfo_t *si, void *uc) {
        (void) sig;
        (void) uc;
        if ((char *) si->si_addr < stall.src || (char *) si->si_addr >= stall.src + stall.len)
                abort();        /* a real crash */
        STORE(&stall.stalled, 1, __ATOMIC_RELEASE);
        while (!LOAD(&stall.go, __ATOMIC_ACQUIRE))
                sched_yield();
        (void) mprotect(stall.src, stall.len, PROT_READ);
}

START_TEST(test_sender_taken_for_dead_is_told) {
        struct sigaction sa = { .sa_sigaction = on_stall_fault, .sa_flags = SA_SIGINFO }, old;
        long page = sysconf(_SC_PAGESIZE);
        TestRing ring;
        shmb_channel *tx, *rx;
        RingHolder *holder;
        Call send;
        char buf[SLOT_SIZE];

        ring_make(&ring, SLOT_SIZE, 4, true);
        tx = handle_new(&ring, 0, 0);
        rx = handle_new(&ring, 1, 0);
        stall.len = (size_t) page;
        stall.src = mmap(NULL, stall.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert_ptr_ne(stall.src, MAP_FAILED);
        memset(stall.src, 'S', SLOT_SIZE);
        ck_assert_int_eq(mprotect(stall.src, stall.len, PROT_NONE), 0);
        ck_assert_int_eq(sigaction(SIGSEGV, &sa, &old), 0);

        send = (Call) { .ch = tx, .send = true };
        ck_assert_int_eq(pthread_create(&send.thread, NULL, stalled_send_main, &send), 0);
        while (!LOAD(&stall.stalled, __ATOMIC_ACQUIRE))
                sched_yield();
        /* Claimed, mid-copy: the broker now says its holder is dead. */
        ck_assert(ring_owner_claims(LOAD(&slot_of(tx, 0)->send_owner, __ATOMIC_ACQUIRE), 0));
        holder = ring_holder_at(ring.view[0], (tx->hold.token & 0xfff) - 1);
        STORE(&holder->word, (UINT64_C(1) << 32) | RING_HOLDER_DEAD, __ATOMIC_RELEASE);
        /* The receiver skips the slot: nothing there for it. */
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_uint_eq(LOAD(&slot_of(tx, 0)->seq, __ATOMIC_ACQUIRE), 0 + 4);
        STORE(&stall.go, 1, __ATOMIC_RELEASE);
        ck_assert_int_eq(pthread_join(send.thread, NULL), 0);
        /* Its publish was refused, and a holder the broker counts as gone claims nothing more: not sent, and told. */
        ck_assert_int_eq(send.result, -ENOTCONN);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send(tx, "x", 1, 0), -ENOTCONN);
        ck_assert_int_eq(shmb_send(rx, "y", 1, 0), 0);
        ck_assert_int_eq(shmb_recv(tx, buf, sizeof buf, 0), -ENOTCONN);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), 1);
        /* Rejoined (a live token again): the message goes through, once, and whole. */
        tx->hold.token = holder_token(ring.view[0], ring.holders++, true);
        ck_assert_int_eq(shmb_send(tx, stall.src, SLOT_SIZE, 0), 0);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 1000), SLOT_SIZE);
        for (size_t i = 0; i < SLOT_SIZE; i++)
                ck_assert_int_eq(buf[i], 'S');
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(sigaction(SIGSEGV, &old, NULL), 0);
        munmap(stall.src, stall.len);
        handle_free(tx);
        handle_free(rx);
        ring_unmake(&ring);
}
END_TEST

/* ---- removal ---- */

/*
 * Callers blocked on an empty ring (receivers) and on a full one (senders),
 * asleep (spin 0) or spinning (the longest spin): ring_mark_removed(), as
 * the daemon calls it, ends them all with -EIDRM, and every later call too.
 */
static void removal_ends_blocked_calls(unsigned spin_us) {
        enum { N = 2 };
        TestRing empty, full;
        shmb_channel *e, *f;
        Call calls[2 * N];
        int64_t marked;

        ring_make(&empty, SLOT_SIZE, 4, true);
        ring_make(&full, SLOT_SIZE, 4, false);
        e = handle_new(&empty, 0, spin_us);
        f = handle_new(&full, 0, spin_us);
        for (int i = 0; i < 4; i++)
                ck_assert_int_eq(shmb_send(f, "x", 1, 0), 0);
        for (int i = 0; i < N; i++) {
                call_start(&calls[i], handle_new(&empty, 1, spin_us), false, -1);
                call_start(&calls[N + i], handle_new(&full, 0, spin_us), true, -1);
        }
        if (spin_us == 0) {
                /* Both sides announced their sleep: they are in FUTEX_WAIT, or about to be. */
                for (int64_t until = now_ms() + 5000; now_ms() < until;) {
                        if (LOAD(&e->ring->recv_sleeping, __ATOMIC_SEQ_CST) && LOAD(&f->ring->send_sleeping, __ATOMIC_SEQ_CST))
                                break;
                        usleep(1000);
                }
                ck_assert(LOAD(&e->ring->recv_sleeping, __ATOMIC_SEQ_CST) && LOAD(&f->ring->send_sleeping, __ATOMIC_SEQ_CST));
        }
        usleep(50000);
        for (int i = 0; i < 2 * N; i++)
                ck_assert_int_eq(LOAD(&calls[i].returned_ms, __ATOMIC_ACQUIRE), 0);
        marked = now_ms();
        ring_mark_removed(empty.view[0]);
        ring_mark_removed(full.view[0]);
        for (int i = 0; i < 2 * N; i++) {
                /* Bounded before the join: a call that missed the removal would wait for good. */
                while (!LOAD(&calls[i].returned_ms, __ATOMIC_ACQUIRE)) {
                        ck_assert_msg(now_ms() - marked < 5000, "a blocked %s still waits 5 s after the removal",
                                      calls[i].send ? "send" : "recv");
                        usleep(1000);
                }
                ck_assert_int_eq(pthread_join(calls[i].thread, NULL), 0);
                ck_assert_msg(calls[i].result == -EIDRM, "%s %d: %zd", calls[i].send ? "send" : "recv", i,
                              calls[i].result);
                fprintf(stderr, "test-ring: spin %u us: a blocked %s returned -EIDRM %" PRId64 " ms after removal\n",
                        spin_us, calls[i].send ? "send" : "recv", calls[i].returned_ms - marked);
                /* Promised: 100 ms. Bounded loosely, so a loaded machine does not fail it; the figure is printed. */
                ck_assert_int_le(calls[i].returned_ms - marked, 5000);
                handle_free(calls[i].ch);
        }
        /* Every later call, with room or messages there: -EIDRM. */
        ck_assert_int_eq(shmb_send(e, "x", 1, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv(f, calls[0].buf, sizeof calls[0].buf, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv(e, calls[0].buf, sizeof calls[0].buf, -1), -EIDRM);
        ck_assert_int_eq(shmb_send(f, "x", 1, -1), -EIDRM);
        handle_free(e);
        handle_free(f);
        ring_unmake(&empty);
        ring_unmake(&full);
}

START_TEST(test_removal_wakes_sleepers) {
        removal_ends_blocked_calls(0);
}
END_TEST

START_TEST(test_removal_stops_spinners) {
        removal_ends_blocked_calls(SHMB_SPIN_MAX_US);
}
END_TEST

/*
 * Where a sender prefetches (client/ring.c): the slot about 1 KiB on, less
 * than a lap, wrapping at the end; none for strides over 1 KiB. Every
 * target is a slot's start inside the ring, or the prefetch would fetch
 * lines no send writes next. A CPU without prefetchw prefetches nothing;
 * the distance and the wrap are checked on every CPU.
 */
START_TEST(test_sender_prefetches_slots_ahead_within_the_ring) {
        static const struct { uint32_t slot_size, slots, ahead; } cases[] = {
                { 64, 1024, 8 },        /* 128 B strides: 8 of them in 1 KiB */
                { 64, 6, 3 },           /* less than a lap: half of one */
                { 64, 2, 1 },
                { 100, 64, 5 },         /* 192 B strides: 5 of them, 960 B, not 1 KiB into a slot */
                { 448, 3, 1 },          /* 512 B strides, 3 slots: 1, not 2 */
                { 960, 8, 1 },          /* a stride of 1 KiB */
                { 961, 8, 0 },          /* more: none */
                { 4096, 4, 0 },
        };
        bool has_prefetchw = true;

#if defined(__x86_64__) || defined(__i386__)
        {
                unsigned a, b, c, d;

                has_prefetchw = __get_cpuid(0x80000001, &a, &b, &c, &d) &&
                                (c & bit_PRFCHW);
        }
#endif
        for (size_t k = 0; k < ELEMENTSOF(cases); k++) {
                TestRing ring;
                shmb_channel ch = {};
                uint32_t n = cases[k].slots, ahead = cases[k].ahead;

                ring_make(&ring, cases[k].slot_size, n, false);
                ck_assert_int_eq(ring_channel_init(&ch, ring.view[0], ring.size), 0);
                /* A CPU without prefetchw has none; the distance and the wrap are checked on every CPU. */
                ck_assert_uint_eq(ch.ahead, has_prefetchw ? prefetch_distance(ch.stride, n) : 0);
                ch.ahead = prefetch_distance(ch.stride, n);
                for (uint32_t i = 0; i < n; i++) {
                        const void *target = ring_prefetch_target(&ch, ch.slots + i * ch.stride);

                        if (ahead == 0)
                                ck_assert_msg(!target, "slot_size %u: prefetches", cases[k].slot_size);
                        else {
                                ck_assert_msg(target, "slot_size %u, %u slots: slot %u prefetches nothing",
                                              cases[k].slot_size, n, i);
                                ck_assert_msg(target == ch.slots + (i + ahead) % n * ch.stride,
                                              "slot_size %u, %u slots: slot %u prefetches %td bytes on", cases[k].slot_size,
                                              n, i, (const char *) target - (ch.slots + i * ch.stride));
                        }
                }
                ring_unmake(&ring);
        }
}
END_TEST

/*
 * Another rw holder that rewrites the header's slot count while a handle is
 * being set up must not leave the handle with figures that disagree:
 * ring_channel_init() checked the segment's size against one count, so the
 * handle's slot count and its prefetch distance must both be that count's,
 * or a send reaches past the ring. Flipping the count for a while finds a
 * re-read only sometimes; a handle that took one value once is enough.
 */
typedef struct Flipper {
        pthread_t thread;
        uint32_t *word;
        int stop;
} Flipper;

static void *flip_slots_main(void *arg) {
        Flipper *f = arg;

        while (!LOAD(&f->stop, __ATOMIC_RELAXED)) {
                STORE(f->word, RING_SLOTS_MAX, __ATOMIC_RELAXED);
                STORE(f->word, 2, __ATOMIC_RELAXED);
        }
        return NULL;
}

START_TEST(test_slot_count_rewritten_during_init_is_read_once) {
        TestRing ring;
        Flipper f = {};
        uint64_t inits = 0;
        int64_t end = now_ms() + 3000;

        ring_make(&ring, 64, 2, false);
        f.word = &((RingHeader *) ring.view[0])->slots;
        ck_assert_int_eq(pthread_create(&f.thread, NULL, flip_slots_main, &f), 0);
        for (uint64_t i = 0; now_ms() < end; i++) {
                shmb_channel ch = {};

                if (ring_channel_init(&ch, ring.view[0], ring.size) != 0)
                        continue;
                inits++;
                if (ch.info.slots != 2 || ch.ahead >= ch.info.slots * ch.stride)
                        STORE(&f.stop, 1, __ATOMIC_RELAXED);
                ck_assert_msg(ch.info.slots == 2, "attempt %" PRIu64 ": a ring checked as 2 slots, set up with %" PRIu32,
                              i, ch.info.slots);
                ck_assert_msg(ch.ahead < ch.info.slots * ch.stride,
                              "attempt %" PRIu64 ": prefetches %" PRIu64 " bytes ahead in a ring of %" PRIu64, i,
                              ch.ahead, ch.info.slots * ch.stride);
        }
        STORE(&f.stop, 1, __ATOMIC_RELAXED);
        pthread_join(f.thread, NULL);
        ck_assert_uint_gt(inits, 0);
        ring_unmake(&ring);
}
END_TEST

/* Rewrites a ring header's split, field by field, between 8 slots of 256 B and 10 of 192 B (the same size). */
static void *flip_split_main(void *arg) {
        Flipper *f = arg;
        RingHeader *h = (RingHeader *) f->word;

        while (!LOAD(&f->stop, __ATOMIC_RELAXED))
                for (int k = 0; k < 2; k++) {
                        STORE(&h->slot_size, k ? 192 : 256, __ATOMIC_RELAXED);
                        STORE(&h->slot_stride, (uint32_t) ring_slot_stride(k ? 192 : 256), __ATOMIC_RELAXED);
                        STORE(&h->slots, k ? 10 : 8, __ATOMIC_RELAXED);
                }
        return NULL;
}

/*
 * The same for the split as a whole: a handle whose init succeeds runs on
 * one split throughout, its stride the one of the slot size it checked.
 * One that took its stride from a second read (the header's, rewritten
 * meanwhile) would place slot k where no peer looks for it.
 */
START_TEST(test_split_rewritten_during_init_is_read_once) {
        TestRing ring;
        Flipper f = {};
        uint64_t inits = 0;
        int64_t end = now_ms() + 3000;

        ring_make(&ring, 256, 8, false);
        ck_assert_uint_eq(ring.size, ring_segment_size(192, 10));
        f.word = ring.view[0];
        ck_assert_int_eq(pthread_create(&f.thread, NULL, flip_split_main, &f), 0);
        for (uint64_t i = 0; now_ms() < end; i++) {
                shmb_channel ch = {};
                bool same;

                if (ring_channel_init(&ch, ring.view[0], ring.size) != 0)
                        continue;
                inits++;
                same = ch.stride == ring_slot_stride(ch.info.slot_size) &&
                       ring_segment_size(ch.info.slot_size, ch.info.slots) == ring.size;
                if (!same)
                        STORE(&f.stop, 1, __ATOMIC_RELAXED);
                ck_assert_msg(same, "attempt %" PRIu64 ": %" PRIu32 " slots of %" PRIu32 " B set up with a stride of %"
                              PRIu64, i, ch.info.slots, ch.info.slot_size, ch.stride);
        }
        STORE(&f.stop, 1, __ATOMIC_RELAXED);
        pthread_join(f.thread, NULL);
        ck_assert_uint_gt(inits, 0);
        ring_unmake(&ring);
}
END_TEST

/* One call on its own thread, and whether it returned within a bound: a library that loops never joins. */
typedef struct BoundedCall {
        shmb_channel *ch;
        bool send;
        int timeout_ms;
        ssize_t r;
} BoundedCall;

static void *bounded_call(void *userdata) {
        BoundedCall *c = userdata;
        char buf[SLOT_SIZE];

        c->r = c->send ? shmb_send(c->ch, "m", 1, c->timeout_ms) : shmb_recv(c->ch, buf, sizeof buf, c->timeout_ms);
        return NULL;
}

/* The call's answer; fails the case when it did not come within 5 s (a loop, whatever the machine's load). */
static ssize_t call_within(shmb_channel *ch, bool send, int timeout_ms) {
        BoundedCall c = { .ch = ch, .send = send, .timeout_ms = timeout_ms };
        struct timespec until;
        pthread_t t;

        ck_assert_int_eq(pthread_create(&t, NULL, bounded_call, &c), 0);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        ck_assert_msg(pthread_timedjoin_np(t, NULL, &until) == 0, "a %s with timeout %d ms did not return",
                      send ? "send" : "recv", timeout_ms);
        return c.r;
}

/*
 * Any rw opener can write an owner word. One that claims the slot for the
 * position a waiter waits at, under a dead token, on a slot whose seq is
 * not the one that claim would have left (the full slot's last lap for a
 * sender, the free one for a receiver), can come from no claimer: repair
 * leaves such a slot as it is. The waiter must not take the dead claim as
 * "repair at once, look again" for ever: it waits out its timeout, as at
 * any slot that stays put.
 */
START_TEST(test_dead_claim_on_a_scribbled_slot_does_not_outlast_the_timeout) {
        TestRing ring;
        shmb_channel *ch;
        uint32_t dead;

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        dead = holder_token(ring.view[0], 1, false);
        /* A sender at 4 finds slot 0 at seq 0 (not 1, the last lap's message), "claimed" by a dead receiver of 0. */
        STORE(&((RingHeader *) ring.view[0])->head, 4, __ATOMIC_SEQ_CST);
        STORE(&slot_of(ch, 0)->recv_owner, ring_owner(0, dead), __ATOMIC_SEQ_CST);
        ck_assert_int_eq(call_within(ch, true, 20), -ETIMEDOUT);
        ck_assert_int_eq(call_within(ch, true, 0), -EAGAIN);
        /* A receiver at 4 finds the same slot at seq 0 (not 4), "claimed" by a dead sender of 4. */
        STORE(&((RingHeader *) ring.view[0])->tail, 4, __ATOMIC_SEQ_CST);
        STORE(&slot_of(ch, 0)->send_owner, ring_owner(4, dead), __ATOMIC_SEQ_CST);
        ck_assert_int_eq(call_within(ch, false, 20), -ETIMEDOUT);
        ck_assert_int_eq(call_within(ch, false, 0), -EAGAIN);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/*
 * Any rw opener can write head and the slots' seqs. With head written far
 * ahead and every slot saying "done" a little below it, a receiver finds
 * each position at tail done and moves tail on by one: no slot is a lap
 * ahead of head, so nothing proves a scribble, but the walk to head is 2^40
 * steps. A receive must still end by its timeout (-ETIMEDOUT), one that
 * will not wait at once (-EAGAIN), and one that waits for ever when the
 * ring is removed; each keeps what it walked.
 */
START_TEST(test_walk_to_a_scribbled_head_does_not_outlast_the_timeout) {
        TestRing ring;
        shmb_channel *ch;
        RingHeader *h;
        uint64_t far = UINT64_C(1) << 40, tail;

        ring_make(&ring, SLOT_SIZE, 4, false);
        ch = handle_new(&ring, 0, 0);
        h = ring.view[0];
        STORE(&h->head, far, __ATOMIC_SEQ_CST);
        for (uint64_t i = 0; i < 4; i++)
                STORE(&slot_of(ch, i)->seq, far + i, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(call_within(ch, false, 20), -ETIMEDOUT);
        tail = LOAD(&h->tail, __ATOMIC_SEQ_CST);
        ck_assert_uint_gt(tail, 0);
        ck_assert_int_eq(call_within(ch, false, 0), -EAGAIN);
        ck_assert_uint_ge(LOAD(&h->tail, __ATOMIC_SEQ_CST), tail);
        ring_mark_removed(h);
        ck_assert_int_eq(call_within(ch, false, -1), -EIDRM);
        handle_free(ch);
        ring_unmake(&ring);
}
END_TEST

/* ---- a hostile writer: any rw opener may write any byte of the segment ---- */

/*
 * README (Security and threat model): a peer allowed to write a ring's
 * segment can write any byte of it, yet another process's calls never read
 * or write outside the segment, never crash and never loop: each returns by
 * its timeout at the latest. A seeded scribbler writes edge values into the
 * header's words, slot headers and holder entries between calls of every
 * data-path function, and checks what each call hands back: a length within
 * the caller's buffer and the slot, a peek pointer and length inside the
 * slots, a known error, and a return within its timeout (generously: the
 * check is for loops, not for speed). The ring lies between PROT_NONE pages,
 * so a read or write past it faults. Work is bounded by iterations; every
 * timeout is a few milliseconds. A failing seed and iteration are printed,
 * and reproduce.
 */
#define SCRIBBLE_SLOTS 4
#define SCRIBBLE_ITERATIONS 1500
#define SCRIBBLE_GUARD (UINT64_C(1) << 20)
/* A call past its timeout by this much loops, whatever the machine's load. */
#define SCRIBBLE_SLACK_MS 3000

typedef struct Scribbler {
        uint32_t seed;
        RingHeader *h;
        shmb_channel *ch;
        uint32_t live, dead;    /* a live token (not the handle's) and a dead one */
} Scribbler;

static uint64_t scribble_value(Scribbler *s) {
        uint64_t head = LOAD(&s->h->head, __ATOMIC_RELAXED), tail = LOAD(&s->h->tail, __ATOMIC_RELAXED);
        uint64_t n = SCRIBBLE_SLOTS, base = next_random(&s->seed) & 1 ? head : tail;
        uint32_t token;

        switch (next_random(&s->seed) % 16) {
        case 0:
                return 0;
        case 1:
                return UINT64_MAX;
        case 2:
                return INT64_MAX;
        case 3:
                return (uint64_t) INT64_MIN;
        case 4:
                return n - 1 + next_random(&s->seed) % 3;       /* n - 1, n, n + 1 */
        case 5:
                return base + n;                                /* a lap ahead */
        case 6:
                return base - n;                                /* a lap behind */
        case 7:
                return base + next_random(&s->seed) % 3;        /* base, base + 1, base + 2 */
        case 8:
                return base - 1;
        case 9:
                return SLOT_SIZE + next_random(&s->seed) % 3 - 1;       /* a length around the slot's */
        case 10:
                return UINT32_MAX;
        case 11 ... 13:
                /* A claim, of a position about base, by a live, a dead, this handle's or a made-up token. */
                switch (next_random(&s->seed) % 4) {
                case 0:
                        token = s->live;
                        break;
                case 1:
                        token = s->dead;
                        break;
                case 2:
                        token = (uint32_t) s->ch->hold.token;
                        break;
                default:
                        token = next_random(&s->seed);
                        break;
                }
                return ring_owner(base + next_random(&s->seed) % (2 * n + 1) - n, token);
        default:
                return (uint64_t) next_random(&s->seed) << 32 | next_random(&s->seed);
        }
}

static void scribble_u64(uint64_t *p, uint64_t v) {
        STORE(p, v, __ATOMIC_SEQ_CST);
}

static void scribble_u32(uint32_t *p, uint64_t v) {
        STORE(p, (uint32_t) v, __ATOMIC_SEQ_CST);
}

/* One write of an edge value to one word a writer of the segment may write. */
static void scribble_once(Scribbler *s) {
        RingSlot *slot = slot_of(s->ch, next_random(&s->seed) % SCRIBBLE_SLOTS);
        RingHolder *holder = ring_holder_at(s->h, next_random(&s->seed) % 4);
        uint64_t v = scribble_value(s);

        switch (next_random(&s->seed) % 20) {
        case 0 ... 1:
                scribble_u64(&s->h->head, v);
                break;
        case 2 ... 3:
                scribble_u64(&s->h->tail, v);
                break;
        case 4 ... 7:
                scribble_u64(&slot->seq, v);
                break;
        case 8 ... 9:
                scribble_u64(&slot->send_owner, v);
                break;
        case 10 ... 11:
                scribble_u64(&slot->recv_owner, v);
                break;
        case 12 ... 13:
                scribble_u32(&slot->len, v);
                break;
        case 14:
                scribble_u32(next_random(&s->seed) & 1 ? &s->h->recv_sleeping : &s->h->send_sleeping, v);
                break;
        case 15:
                scribble_u32(next_random(&s->seed) & 1 ? &s->h->data_seq : &s->h->space_seq, v);
                break;
        case 16:
                /* The geometry and the table size: the handle keeps what it checked at open. */
                switch (next_random(&s->seed) % 4) {
                case 0:
                        scribble_u32(&s->h->slots, v);
                        break;
                case 1:
                        scribble_u32(&s->h->slot_size, v);
                        break;
                case 2:
                        scribble_u32(&s->h->slot_stride, v);
                        break;
                default:
                        scribble_u32(&s->h->holders, v);
                        break;
                }
                break;
        case 17:
                /* A holder entry, the handle's own included: live, dead, another generation, garbage. */
                scribble_u64(&holder->word, next_random(&s->seed) % 4 == 0 ? v :
                             (uint64_t) (next_random(&s->seed) % 3) << 32 | next_random(&s->seed) % 3);
                break;
        case 18:
                scribble_u32(next_random(&s->seed) & 1 ? &s->h->recv_cpu : &s->h->send_cpu, v);
                break;
        default:
                /* The state word: removed, or made live again. */
                scribble_u32(&s->h->state, next_random(&s->seed) % 4 == 0 ? v : next_random(&s->seed) % 2);
                break;
        }
}

/* What any call may answer a scribbled ring, besides success. */
static bool scribble_errno_ok(ssize_t r) {
        return r == -EAGAIN || r == -ETIMEDOUT || r == -EPROTO || r == -EMSGSIZE || r == -EIDRM ||
               r == -ENOTCONN || r == -EINVAL;
}

static void scribble_check_time(const Scribbler *s, int64_t start, int timeout_ms, const char *call, uint32_t seed,
                                int i) {
        int64_t took = now_ms() - start;

        ck_assert_msg(took <= (timeout_ms > 0 ? timeout_ms : 0) + SCRIBBLE_SLACK_MS,
                      "seed %" PRIu32 " iteration %d: %s (timeout %d ms) took %" PRId64 " ms", seed, i, call,
                      timeout_ms, took);
        (void) s;
}

static void scribble_check_buf(const shmb_channel *ch, const void *p, ssize_t len, const char *call, uint32_t seed,
                               int i) {
        const char *lo = ch->slots, *hi = ch->slots + (uint64_t) ch->info.slots * ch->stride, *q = p;

        ck_assert_msg(q >= lo && q < hi && (uint64_t) (q - lo) % ch->stride == RING_SLOT_HEADER &&
                      len >= 0 && (uint64_t) len <= ch->info.slot_size && q + len <= hi,
                      "seed %" PRIu32 " iteration %d: %s gave %p+%zd, slots at %p..%p", seed, i, call, p, len,
                      (const void *) lo, (const void *) hi);
}

static void scribble_run(uint32_t seed) {
        uint64_t size = ring_segment_size(SLOT_SIZE, SCRIBBLE_SLOTS), mapped = (size + 4095) & ~UINT64_C(4095);
        char buf[SLOT_SIZE + 1], *area;
        Scribbler s = { .seed = seed };
        TestRing ring;
        void *addr, *reserved = NULL;
        const void *peeked = NULL;
        int fd;

        /* PROT_NONE a page before the ring and a MiB after it: any stray access faults. */
        fd = memfd_create("test-ring-scribble", MFD_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t) size), 0);
        area = mmap(NULL, 4096 + mapped + SCRIBBLE_GUARD, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert_ptr_ne(area, MAP_FAILED);
        addr = mmap(area + 4096, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        ck_assert_ptr_eq(addr, area + 4096);
        ring_format(addr, SLOT_SIZE, SCRIBBLE_SLOTS);
        ring = (TestRing) { .view = { addr, addr }, .size = size, .memfd = fd };
        s.h = addr;
        s.ch = handle_new(&ring, 0, 0);
        s.live = next_token(&ring);
        s.dead = holder_token(addr, 3, false);

        for (int i = 0; i < SCRIBBLE_ITERATIONS; i++) {
                static const int timeouts[] = { 0, 0, 1, 2 };
                int timeout = timeouts[next_random(&s.seed) % ELEMENTSOF(timeouts)];
                size_t want = next_random(&s.seed) % (SLOT_SIZE + 2);
                int64_t start;
                ssize_t r;
                void *p;

                for (uint32_t k = next_random(&s.seed) % 3; k > 0; k--)
                        scribble_once(&s);
                /* Now and then the ring as the broker keeps it: live, the handle's token live. */
                if (next_random(&s.seed) % 8 == 0) {
                        scribble_u32(&s.h->state, RING_STATE_LIVE);
                        holder_token(addr, 0, true);
                }
                start = now_ms();
                switch (next_random(&s.seed) % 8) {
                case 0:
                        r = shmb_send(s.ch, buf, MIN(want, (size_t) SLOT_SIZE), timeout);
                        ck_assert_msg(r == 0 || scribble_errno_ok(r), "seed %" PRIu32 " iteration %d: send: %zd",
                                      seed, i, r);
                        scribble_check_time(&s, start, timeout, "send", seed, i);
                        break;
                case 1:
                        memset(buf, 0, sizeof buf);
                        r = shmb_recv(s.ch, buf, want, timeout);
                        ck_assert_msg((r >= 0 && (size_t) r <= want && r <= SLOT_SIZE) || scribble_errno_ok(r),
                                      "seed %" PRIu32 " iteration %d: recv into %zu: %zd", seed, i, want, r);
                        scribble_check_time(&s, start, timeout, "recv", seed, i);
                        break;
                case 2:
                case 3:
                        if (reserved) {
                                r = next_random(&s.seed) & 1 ? shmb_send_commit(s.ch, reserved, MIN(want, (size_t) SLOT_SIZE)) :
                                                               shmb_send_abort(s.ch, reserved);
                                ck_assert_msg(r == 0 || scribble_errno_ok(r),
                                              "seed %" PRIu32 " iteration %d: commit/abort: %zd", seed, i, r);
                                reserved = NULL;
                                break;
                        }
                        r = shmb_send_reserve(s.ch, want, &p, timeout);
                        ck_assert_msg(r == 0 || scribble_errno_ok(r), "seed %" PRIu32 " iteration %d: reserve: %zd",
                                      seed, i, r);
                        scribble_check_time(&s, start, timeout, "reserve", seed, i);
                        if (r == 0) {
                                scribble_check_buf(s.ch, p, MIN(want, (size_t) SLOT_SIZE), "reserve", seed, i);
                                memset(p, 0x5a, MIN(want, (size_t) SLOT_SIZE));
                                reserved = p;
                        }
                        break;
                case 4:
                case 5:
                        if (peeked) {
                                r = shmb_recv_release(s.ch, peeked);
                                ck_assert_msg(r == 0 || scribble_errno_ok(r), "seed %" PRIu32 " iteration %d: release: %zd",
                                              seed, i, r);
                                peeked = NULL;
                                break;
                        }
                        r = shmb_recv_peek(s.ch, &peeked, timeout);
                        ck_assert_msg(r >= 0 || scribble_errno_ok(r), "seed %" PRIu32 " iteration %d: peek: %zd", seed,
                                      i, r);
                        scribble_check_time(&s, start, timeout, "peek", seed, i);
                        if (r >= 0) {
                                /* Read every byte handed out: past the ring, that faults. */
                                unsigned sum = 0;

                                scribble_check_buf(s.ch, peeked, r, "peek", seed, i);
                                for (ssize_t k = 0; k < r; k++)
                                        sum += ((const unsigned char *) peeked)[k];
                                (void) sum;
                        } else
                                peeked = NULL;
                        break;
                default: {
                        /* Wait for ever, and remove the ring: the wait ends, whatever was scribbled before. */
                        BoundedCall f = { .ch = s.ch, .send = next_random(&s.seed) & 1, .timeout_ms = -1, .r = 1 };
                        struct timespec until;
                        pthread_t t;

                        scribble_u32(&s.h->state, RING_STATE_LIVE);
                        ck_assert_int_eq(pthread_create(&t, NULL, bounded_call, &f), 0);
                        for (uint32_t k = next_random(&s.seed) % 64; k > 0; k--)
                                sched_yield();
                        ring_mark_removed(s.h);
                        clock_gettime(CLOCK_REALTIME, &until);
                        until.tv_sec += SCRIBBLE_SLACK_MS / 1000;
                        ck_assert_msg(pthread_timedjoin_np(t, NULL, &until) == 0,
                                      "seed %" PRIu32 " iteration %d: a %s for ever outlived the ring's removal", seed,
                                      i, f.send ? "send" : "recv");
                        ck_assert_msg(f.r >= 0 || scribble_errno_ok(f.r),
                                      "seed %" PRIu32 " iteration %d: for ever: %zd", seed, i, f.r);
                        scribble_u32(&s.h->state, RING_STATE_LIVE);
                        break;
                }
                }
        }
        handle_free(s.ch);
        ck_assert_int_eq(munmap(area, 4096 + mapped + SCRIBBLE_GUARD), 0);
        close(fd);
}

START_TEST(test_scribbler_finds_no_stray_access_nor_loop) {
        static const uint32_t seeds[] = { 1, 2, 3, 5, 8, 13, 21, 34, 0x9e3779b9, 0xdeadbeef };

        for (size_t i = 0; i < ELEMENTSOF(seeds); i++)
                scribble_run(seeds[i]);
}
END_TEST

int main(void) {
        Suite *s = suite_create("ring");
        SRunner *sr;
        TCase *tc;
        int failures;

        tc = tcase_create("basics");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_fifo_limits_and_laps);
        tcase_add_test(tc, test_header_must_be_this_version);
        tcase_add_test(tc, test_corrupt_seqs_do_not_outlast_the_timeout);
        tcase_add_test(tc, test_scribbled_holder_count_reads_nothing_past_the_ring);
        tcase_add_test(tc, test_future_claim_does_not_outlast_the_timeout);
        tcase_add_test(tc, test_sender_prefetches_slots_ahead_within_the_ring);
        tcase_add_test(tc, test_scribbled_length_is_cut_to_the_slot);
        tcase_add_test(tc, test_slot_count_rewritten_during_init_is_read_once);
        tcase_add_test(tc, test_split_rewritten_during_init_is_read_once);
        suite_add_tcase(s, tc);

        tc = tcase_create("abort-lap");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_abort_a_lap_later_is_no_corruption);
        suite_add_tcase(s, tc);

        tc = tcase_create("mpmc");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_mpmc_exactly_once_in_order);
        tcase_add_test(tc, test_mpmc_sleeping_across_two_mappings);
        tcase_add_test(tc, test_mpmc_two_slots);
        suite_add_tcase(s, tc);

        tc = tcase_create("repair");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_mpmc_with_dead_claimers);
        tcase_add_test(tc, test_mpmc_many_dead_claimers_two_slots);
        tcase_add_test(tc, test_live_sender_claim_is_waited_for);
        tcase_add_test(tc, test_live_receiver_claim_is_waited_for);
        tcase_add_test(tc, test_sender_taken_for_dead_is_told);
        tcase_add_test(tc, test_skips_and_aborts_wake_sleeping_receivers);
        suite_add_tcase(s, tc);

        tc = tcase_create("removal");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_removal_wakes_sleepers);
        tcase_add_test(tc, test_removal_stops_spinners);
        suite_add_tcase(s, tc);

        tc = tcase_create("scribbled");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_dead_claim_on_a_scribbled_slot_does_not_outlast_the_timeout);
        tcase_add_test(tc, test_walk_to_a_scribbled_head_does_not_outlast_the_timeout);
        suite_add_tcase(s, tc);

        tc = tcase_create("scribbler");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_scribbler_finds_no_stray_access_nor_loop);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failures = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
