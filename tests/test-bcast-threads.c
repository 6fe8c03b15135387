/*
 * The broadcast layout alone (client/broadcast.c over proto/broadcast.h),
 * without a broker: the test makes the two segments itself (IPC_PRIVATE,
 * in a private IPC namespace), plays the broker's part in the holder
 * tables, and runs publishers and subscribers as threads, many of them on
 * few cores, so that claims, overruns and wake-ups interleave in every
 * way. Subscribers attach the data segment read-only, as the library does.
 */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/time.h>
#include <unistd.h>

#include "client/prefetch.h"
#include "client/shmbroker-internal.h"
#include "common/util.h"
#include "proto/broadcast.h"

#define CASE_TIMEOUT 120
#define SLOT_SIZE 64
#define MESSAGES 20000
#define PUBLISHERS 3

typedef struct Bus {
        int data_id, table_id;
        uint32_t slots, subscribers;
        bool drop;
        BcastHeader *admin;             /* the broker's attachment */
} Bus;

/* The library's kernel check of a long sleep (client/channel.c): these rings live in this process's memory. */
int channel_check_gone(shmb_channel *ch) {
        (void) ch;
        return 0;
}

static void bus_make(Bus *b, uint32_t slots, uint32_t subscribers, bool drop) {
        uint64_t size = bcast_segment_size(SLOT_SIZE, slots, subscribers);
        void *table;

        ck_assert_int_eq(unshare(CLONE_NEWIPC), 0);
        *b = (Bus) { .slots = slots, .subscribers = subscribers, .drop = drop };
        b->data_id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
        b->table_id = shmget(IPC_PRIVATE, bcast_table_size(subscribers), IPC_CREAT | 0600);
        ck_assert_int_ge(b->data_id, 0);
        ck_assert_int_ge(b->table_id, 0);
        b->admin = shmat(b->data_id, NULL, 0);
        table = shmat(b->table_id, NULL, 0);
        ck_assert_ptr_ne(b->admin, (void *) -1);
        ck_assert_ptr_ne(table, (void *) -1);
        bcast_format(b->admin, SLOT_SIZE, slots, subscribers, drop ? BCAST_OVERFLOW_DROP : BCAST_OVERFLOW_BLOCK, 0,
                     b->table_id, table);
        shmdt(table);
}

/* The broker's part: entry index of a table made LIVE (or DEAD) under generation gen; its token. */
static uint32_t holder_set(RingHolder *table, uint32_t index, uint32_t gen, uint32_t state) {
        __atomic_store_n(&table[index].word, (uint64_t) gen << 32 | state, __ATOMIC_RELEASE);
        return ring_token(index, gen);
}

static shmb_channel *handle_new(Bus *b, bool subscriber, uint32_t index) {
        shmb_channel *ch = calloc(1, sizeof *ch);
        ProtoChannel pc = {
                .ring_version = BCAST_VERSION, .slot_size = SLOT_SIZE, .slots = b->slots,
                .subscribers = b->subscribers, .overflow = b->drop ? PROTO_OVERFLOW_DROP : PROTO_OVERFLOW_BLOCK,
                .table_key = 0, .table_id = b->table_id,
        };
        RingHolder *table = subscriber ? bcast_subscriber_at(b->admin, 0) : bcast_publisher_at(b->admin, 0);
        int r;

        ck_assert_ptr_nonnull(ch);
        ch->access = subscriber ? SHMB_RO : SHMB_RW;
        ch->addr = shmat(b->data_id, NULL, subscriber ? SHM_RDONLY : 0);
        ck_assert_ptr_ne(ch->addr, (void *) -1);
        ch->info.layout = SHMB_LAYOUT_BROADCAST;
        ch->info.size = bcast_segment_size(SLOT_SIZE, b->slots, b->subscribers);
        ch->info.nsems = BCAST_NSEMS;
        ch->hold.token = holder_set(table, index, 1, RING_HOLDER_LIVE);
        r = bcast_channel_setup(ch, &pc);
        ck_assert_msg(r == 0, "setup: %d", r);
        return ch;
}

static void handle_free(shmb_channel *ch) {
        bcast_channel_free(ch);
        shmdt(ch->addr);
        free(ch->zc_claims);    /* the zero-copy claim records (client/ring.c) */
        free(ch);
}

/* Message: publisher id, its sequence number, a checksum of the two; some padding that depends on them. */
typedef struct Msg {
        uint32_t id, seq, sum;
        uint8_t pad[SLOT_SIZE - 12];
} Msg;

static size_t msg_fill(Msg *m, uint32_t id, uint32_t seq) {
        size_t n = 12 + (seq * 7 + id) % (SLOT_SIZE - 12);

        m->id = id;
        m->seq = seq;
        m->sum = (id * 2654435761u) ^ (seq * 40503u) ^ 0x5bd1e995u;
        for (size_t k = 12; k < n; k++)
                m->pad[k - 12] = (uint8_t) (seq + k * id);
        return n;
}

static bool msg_ok(const Msg *m, size_t n) {
        if (n < 12 || m->id >= PUBLISHERS || m->sum != ((m->id * 2654435761u) ^ (m->seq * 40503u) ^ 0x5bd1e995u) ||
            n != 12 + (m->seq * 7 + m->id) % (SLOT_SIZE - 12))
                return false;
        for (size_t k = 12; k < n; k++)
                if (m->pad[k - 12] != (uint8_t) (m->seq + k * m->id))
                        return false;
        return true;
}

typedef struct Pub {
        shmb_channel *ch;
        uint32_t id;
        bool zero_copy;
        int failed;
} Pub;

static void *pub_main(void *userdata) {
        Pub *p = userdata;

        for (uint32_t i = 0; i < MESSAGES && !p->failed; i++) {
                Msg m;
                void *out;
                int r;

                if (p->zero_copy && i % 2) {
                        r = shmb_send_reserve(p->ch, SLOT_SIZE, &out, 60000);
                        if (r == 0)
                                r = shmb_send_commit(p->ch, out, msg_fill(out, p->id, i));
                } else
                        r = shmb_send(p->ch, &m, msg_fill(&m, p->id, i), 60000);
                if (r < 0)
                        p->failed = r;
                if (i % 97 == 0)
                        sched_yield();
        }
        return NULL;
}

/*
 * A publisher that dies again and again between reserve and commit: it
 * claims a slot, fills it with what no subscriber may ever take, and the
 * "broker" marks its token dead and hands the entry out again under the
 * next generation, as to a new opener.
 */
typedef struct Zombie {
        shmb_channel *ch;
        RingHolder *table;
        uint32_t index;
        int deaths;
        int failed;
} Zombie;

#define ZOMBIE_INDEX 100

static void *zombie_main(void *userdata) {
        Zombie *z = userdata;

        for (uint32_t gen = 1; gen <= (uint32_t) z->deaths; gen++) {
                void *out;
                int r = shmb_send_reserve(z->ch, SLOT_SIZE, &out, 60000);

                if (r < 0) {
                        z->failed = r;
                        return NULL;
                }
                memset(out, 0xee, SLOT_SIZE);   /* id 0xeeeeeeee: never a message */
                sched_yield();
                holder_set(z->table, z->index, gen, RING_HOLDER_DEAD);
                __atomic_store_n(&z->ch->hold.token, holder_set(z->table, z->index, gen + 1, RING_HOLDER_LIVE),
                                 __ATOMIC_RELAXED);
                /* Its claim is gone: commit says so (one call: a second would find nothing to commit either way). */
                r = shmb_send_commit(z->ch, out, 12);
                if (r != -ENOTCONN && r != -EINVAL) {
                        z->failed = -EPROTO;
                        return NULL;
                }
        }
        return NULL;
}

/* A subscriber thread: every message it takes is intact and, per publisher, later than the last it took. */
typedef struct Sub {
        shmb_channel *ch;
        bool zero_copy;
        uint32_t got;                   /* messages taken */
        uint32_t next[PUBLISHERS];      /* per publisher: the lowest sequence number it may take next */
        uint8_t *seen;                  /* [PUBLISHERS * MESSAGES]: shared by the threads of one handle */
        int failed;
        volatile bool *stop;
} Sub;

static void *sub_main(void *userdata) {
        Sub *s = userdata;

        while (!*s->stop && !s->failed) {
                Msg m;
                const void *in;
                const Msg *p = &m;
                uint32_t id, seq;
                ssize_t n;
                bool ok;

                if (s->zero_copy && s->got % 3 == 0) {
                        n = shmb_recv_peek(s->ch, &in, 20);
                        p = in;
                } else
                        n = shmb_recv(s->ch, &m, sizeof m, 20);
                if (n == -ETIMEDOUT)
                        continue;
                if (n < 0) {
                        s->failed = (int) n;
                        break;
                }
                /* Read while it is ours; a peeked one is judged only once its release says it stayed intact. */
                ok = msg_ok(p, (size_t) n);
                id = p->id;
                seq = p->seq;
                if (p != &m) {
                        int r = shmb_recv_release(s->ch, in);

                        if (r == -ESTALE)
                                continue;       /* overwritten while we looked (drop mode): counted as dropped */
                        if (r < 0) {
                                s->failed = r;
                                break;
                        }
                }
                if (!ok) {
                        s->failed = -EBADMSG;
                        break;
                }
                if (seq < s->next[id]) {
                        s->failed = -EILSEQ;
                        break;
                }
                s->next[id] = seq + 1;
                if (__atomic_fetch_add(&s->seen[id * MESSAGES + seq], 1, __ATOMIC_RELAXED) != 0) {
                        s->failed = -EEXIST;    /* a message twice on one handle */
                        break;
                }
                s->got++;
        }
        return NULL;
}

/*
 * PUBLISHERS publishers, three subscriber handles, the last read by two
 * threads at once. Block mode: every handle gets every message exactly once.
 * Drop mode: whatever each gets is intact and in order, and what it got plus
 * what it was told it lost covers everything from its first message on.
 */
static void run(bool drop, bool zero_copy, uint32_t slots, int deaths) {
        enum { HANDLES = 3, THREADS = 4 };
        volatile bool stop = false;
        Pub pubs[PUBLISHERS];
        Sub subs[THREADS];
        Zombie zombie = { .index = ZOMBIE_INDEX, .deaths = deaths };
        pthread_t pt[PUBLISHERS], st[THREADS], zt;
        shmb_channel *sh[HANDLES];
        uint8_t *seen[HANDLES];
        Bus bus;

        bus_make(&bus, slots, 4, drop);
        for (int h = 0; h < HANDLES; h++) {
                sh[h] = handle_new(&bus, true, (uint32_t) h);
                seen[h] = calloc(PUBLISHERS * MESSAGES, 1);
        }
        for (int t = 0; t < THREADS; t++) {
                int h = t < HANDLES ? t : HANDLES - 1;

                /* Two threads share the last handle: they take its messages with shmb_recv() (a peek is one thread's). */
                subs[t] = (Sub) { .ch = sh[h], .zero_copy = zero_copy && h < HANDLES - 1, .seen = seen[h], .stop = &stop };
                ck_assert_int_eq(pthread_create(&st[t], NULL, sub_main, &subs[t]), 0);
        }
        if (deaths) {
                zombie.ch = handle_new(&bus, false, ZOMBIE_INDEX);
                zombie.table = bcast_publisher_at(bus.admin, 0);
                ck_assert_int_eq(pthread_create(&zt, NULL, zombie_main, &zombie), 0);
        }
        for (uint32_t p = 0; p < PUBLISHERS; p++) {
                pubs[p] = (Pub) { .ch = handle_new(&bus, false, p), .id = p, .zero_copy = zero_copy };
                ck_assert_int_eq(pthread_create(&pt[p], NULL, pub_main, &pubs[p]), 0);
        }
        for (uint32_t p = 0; p < PUBLISHERS; p++) {
                ck_assert_int_eq(pthread_join(pt[p], NULL), 0);
                ck_assert_msg(pubs[p].failed == 0, "publisher %u: %d", p, pubs[p].failed);
        }
        if (deaths) {
                ck_assert_int_eq(pthread_join(zt, NULL), 0);
                ck_assert_msg(zombie.failed == 0, "the dying publisher: %d", zombie.failed);
        }
        /* Everything is published: wait (an upper bound only) until every handle has accounted for all of it. */
        for (int64_t waited = 0;; waited++) {
                bool done = true;

                for (int h = 0; h < HANDLES; h++) {
                        uint64_t dropped = 0, got = 0;

                        ck_assert_int_eq(shmb_channel_dropped(sh[h], &dropped), 0);
                        for (size_t k = 0; k < PUBLISHERS * MESSAGES; k++)
                                got += __atomic_load_n(&seen[h][k], __ATOMIC_RELAXED);
                        if (got + dropped < PUBLISHERS * MESSAGES)
                                done = false;
                }
                if (done)
                        break;
                for (int t = 0; t < THREADS; t++)
                        ck_assert_msg(subs[t].failed == 0, "subscriber thread %d: %d", t, subs[t].failed);
                ck_assert_msg(waited < 90000, "the subscribers did not finish within 90 s");
                usleep(1000);
        }
        stop = true;
        for (int t = 0; t < THREADS; t++) {
                ck_assert_int_eq(pthread_join(st[t], NULL), 0);
                ck_assert_msg(subs[t].failed == 0, "subscriber thread %d: %d", t, subs[t].failed);
        }
        for (int h = 0; h < HANDLES; h++) {
                uint64_t dropped, got = 0;

                ck_assert_int_eq(shmb_channel_dropped(sh[h], &dropped), 0);
                for (size_t k = 0; k < PUBLISHERS * MESSAGES; k++)
                        got += seen[h][k];
                if (!drop) {
                        ck_assert_uint_eq(dropped, 0);
                        ck_assert_uint_eq(got, PUBLISHERS * MESSAGES);
                } else {
                        /* Positions lost are counted, a dead publisher's empty ones among them when they were. */
                        ck_assert_uint_ge(got + dropped, PUBLISHERS * MESSAGES);
                        ck_assert_uint_le(got + dropped, PUBLISHERS * MESSAGES + (uint64_t) deaths);
                }
                free(seen[h]);
                handle_free(sh[h]);
        }
        for (uint32_t p = 0; p < PUBLISHERS; p++)
                handle_free(pubs[p].ch);
        if (deaths)
                handle_free(zombie.ch);
}

START_TEST(test_block_every_message_once) {
        run(false, false, 8, 0);
}
END_TEST

START_TEST(test_block_zero_copy_two_slots) {
        run(false, true, 2, 0);
}
END_TEST

START_TEST(test_drop_intact_and_counted) {
        run(true, false, 8, 0);
}
END_TEST

START_TEST(test_drop_zero_copy) {
        run(true, true, 4, 0);
}
END_TEST

/* Publishers dying mid-message, a thousand times: subscribers skip their positions, publishers repair the slots. */
START_TEST(test_block_dead_publishers_repaired) {
        run(false, true, 4, 1000);
}
END_TEST

START_TEST(test_drop_dead_publishers_repaired) {
        run(true, false, 4, 1000);
}
END_TEST

/*
 * Anyone who may publish may write any byte of the segment. Slots that all
 * say "published, far ahead" must not make a publisher or a subscriber
 * step head or its cursor on one position at a time for 2^40 turns: no slot
 * is ever more than a lap ahead of head, so that is corruption, -EPROTO,
 * whatever the timeout. The case timeout is what fails a library that loops.
 */
START_TEST(test_corrupt_seqs_are_refused) {
        Bus b;
        shmb_channel *pub, *sub;

        bus_make(&b, 4, 2, true);
        pub = handle_new(&b, false, 0);
        sub = handle_new(&b, true, 0);
        for (uint32_t i = 0; i < b.slots; i++)
                __atomic_store_n(&bcast_slot_at(b.admin, i)->seq, bcast_seq(UINT64_C(1) << 40, BCAST_SEQ_PUBLISHED),
                                 __ATOMIC_SEQ_CST);
        for (int timeout = -1; timeout <= 50; timeout += 51) {
                char buf[SLOT_SIZE];
                const void *in;
                void *out;

                ck_assert_int_eq(shmb_send(pub, "m", 1, timeout), -EPROTO);
                ck_assert_int_eq(shmb_send_reserve(pub, 1, &out, timeout), -EPROTO);
                ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, timeout), -EPROTO);
                ck_assert_int_eq(shmb_recv_peek(sub, &in, timeout), -EPROTO);
        }
        handle_free(sub);
        handle_free(pub);
}
END_TEST

/*
 * A publisher may write a slot's length too. A subscriber never takes more
 * than a slot from it: a peek and a receive into a slot's buffer say the
 * slot's size, and a smaller buffer gets -EMSGSIZE.
 */
START_TEST(test_scribbled_length_is_cut_to_the_slot) {
        Bus b;
        shmb_channel *pub, *sub;
        char buf[SLOT_SIZE];
        const void *in;

        bus_make(&b, 4, 1, false);
        pub = handle_new(&b, false, 0);
        sub = handle_new(&b, true, 0);
        for (uint64_t k = 0; k < 3; k++) {
                ck_assert_int_eq(shmb_send(pub, "m", 1, 0), 0);
                __atomic_store_n(&bcast_slot_at(b.admin, k)->len, UINT32_MAX, __ATOMIC_SEQ_CST);
        }
        ck_assert_int_eq(shmb_recv(sub, buf, SLOT_SIZE - 1, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), SLOT_SIZE);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), SLOT_SIZE);
        ck_assert_int_eq(shmb_recv_peek(sub, &in, 0), SLOT_SIZE);
        ck_assert_int_eq(shmb_recv_release(sub, in), 0);
        handle_free(sub);
        handle_free(pub);
}
END_TEST

/*
 * A reservation taken from its publisher (the broker counted it dead, and
 * another publisher coming round skipped the slot) answers its commit and
 * abort with -ENOTCONN, as the ring's do: not -EINVAL, which would read as
 * a bad pointer. And once the channel is marked removed, a commit or abort
 * of a reservation still held answers -EIDRM: nobody reads that message.
 */
START_TEST(test_taken_or_removed_reservations_say_so) {
        Bus b;
        shmb_channel *pub, *other, *sub;
        RingHolder *pubs;
        void *out, *kept, *late;
        char buf[SLOT_SIZE];

        bus_make(&b, 2, 1, true);
        pubs = bcast_publisher_at(b.admin, 0);
        pub = handle_new(&b, false, 0);
        other = handle_new(&b, false, 1);
        sub = handle_new(&b, true, 0);
        ck_assert_int_eq(shmb_send_reserve(pub, 8, &out, 0), 0);
        (void) holder_set(pubs, 0, 1, RING_HOLDER_DEAD);
        /* Position 1, then 2: the slot of position 0 again, whose claim is a dead publisher's. */
        ck_assert_int_eq(shmb_send(other, "one", 3, 0), 0);
        ck_assert_int_eq(shmb_send(other, "two", 3, 0), 0);
        ck_assert_int_eq(shmb_send_commit(pub, out, 8), -ENOTCONN);
        ck_assert_int_eq(shmb_send_abort(pub, out), -ENOTCONN);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), 3);
        ck_assert_int_eq(memcmp(buf, "one", 3), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), 3);
        ck_assert_int_eq(memcmp(buf, "two", 3), 0);

        ck_assert_int_eq(shmb_send_reserve(other, 8, &kept, 0), 0);
        ck_assert_int_eq(shmb_send_reserve(other, 8, &late, 0), 0);
        bcast_mark_removed(b.admin, NULL);
        ck_assert_int_eq(shmb_send_commit(other, kept, 8), -EIDRM);
        ck_assert_int_eq(shmb_send_abort(other, late), -EIDRM);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EIDRM);
        handle_free(sub);
        handle_free(other);
        handle_free(pub);
}
END_TEST

/*
 * A header that is not this layout's (another magic, or another version of
 * it) is refused at setup, whatever its figures say: nothing of another
 * layout is read or written, as a ring's (test-ring's
 * test_header_must_be_this_version).
 */
START_TEST(test_header_of_another_layout_is_refused) {
        Bus b;
        ProtoChannel pc;
        uint32_t *fields[2];

        bus_make(&b, 4, 1, false);
        fields[0] = &b.admin->magic;
        fields[1] = &b.admin->version;
        pc = (ProtoChannel) { .ring_version = BCAST_VERSION, .slot_size = SLOT_SIZE, .slots = b.slots,
                              .subscribers = b.subscribers, .overflow = PROTO_OVERFLOW_BLOCK, .table_id = b.table_id };
        for (int k = 0; k < 2; k++) {
                uint32_t was = *fields[k];

                for (int sub = 0; sub < 2; sub++) {
                        shmb_channel *ch = calloc(1, sizeof *ch);
                        RingHolder *table = sub ? bcast_subscriber_at(b.admin, 0) : bcast_publisher_at(b.admin, 0);

                        ck_assert_ptr_nonnull(ch);
                        ch->access = sub ? SHMB_RO : SHMB_RW;
                        ch->addr = b.admin;
                        ch->info.layout = SHMB_LAYOUT_BROADCAST;
                        ch->info.size = bcast_segment_size(SLOT_SIZE, b.slots, b.subscribers);
                        ch->hold.token = holder_set(table, 0, 1, RING_HOLDER_LIVE);
                        *fields[k] = was + 1;
                        ck_assert_int_eq(bcast_channel_setup(ch, &pc), -EPROTO);
                        ck_assert_ptr_null(ch->bcast);
                        *fields[k] = was;
                        ck_assert_int_eq(bcast_channel_setup(ch, &pc), 0);
                        bcast_channel_free(ch);
                        free(ch);
                }
        }
}
END_TEST

/*
 * A receive's destination whose first touch stalls the copy (as test-ring
 * stalls a sender's source): the subscriber has read the slot's seq and is
 * inside its copy when the fault handler waits for the main thread.
 */
static struct {
        char *dst;
        size_t len;
        int stalled, go;
} stall;

static void on_stall_fault(int sig, siginfo_t *si, void *uc) {
        (void) sig;
        (void) uc;
        if ((char *) si->si_addr < stall.dst || (char *) si->si_addr >= stall.dst + stall.len)
                abort();        /* a real crash */
        __atomic_store_n(&stall.stalled, 1, __ATOMIC_RELEASE);
        while (!__atomic_load_n(&stall.go, __ATOMIC_ACQUIRE))
                sched_yield();
        (void) mprotect(stall.dst, stall.len, PROT_READ | PROT_WRITE);
}

typedef struct StalledRecv {
        shmb_channel *ch;
        pthread_t thread;
        ssize_t result;
} StalledRecv;

static void *stalled_recv_main(void *userdata) {
        StalledRecv *r = userdata;

        r->result = shmb_recv(r->ch, stall.dst, SLOT_SIZE, 5000);
        return NULL;
}

/*
 * Drop mode: a message overwritten while a subscriber copies it is never
 * handed out (the seqlock's second look): the copy is thrown away, the
 * message counted as dropped, and the call returns the oldest message
 * still there instead, whole.
 */
START_TEST(test_drop_overwritten_mid_copy_is_not_handed_out) {
        struct sigaction sa = { .sa_sigaction = on_stall_fault, .sa_flags = SA_SIGINFO }, old;
        StalledRecv recv;
        shmb_channel *pub, *sub;
        uint64_t dropped;
        char buf[SLOT_SIZE];
        Bus b;

        bus_make(&b, 2, 1, true);
        pub = handle_new(&b, false, 0);
        sub = handle_new(&b, true, 0);
        stall.len = (size_t) sysconf(_SC_PAGESIZE);
        stall.dst = mmap(NULL, stall.len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert_ptr_ne(stall.dst, MAP_FAILED);
        ck_assert_int_eq(sigaction(SIGSEGV, &sa, &old), 0);
        ck_assert_int_eq(shmb_send(pub, "m0", 2, 0), 0);
        recv = (StalledRecv) { .ch = sub };
        ck_assert_int_eq(pthread_create(&recv.thread, NULL, stalled_recv_main, &recv), 0);
        while (!__atomic_load_n(&stall.stalled, __ATOMIC_ACQUIRE))
                sched_yield();
        /* Mid-copy of position 0: positions 1 and 2 go out, and 2 takes the slot of 0 over. */
        ck_assert_int_eq(shmb_send(pub, "m1", 2, 0), 0);
        ck_assert_int_eq(shmb_send(pub, "m2", 2, 0), 0);
        __atomic_store_n(&stall.go, 1, __ATOMIC_RELEASE);
        ck_assert_int_eq(pthread_join(recv.thread, NULL), 0);
        ck_assert_int_eq(recv.result, 2);
        ck_assert_msg(memcmp(stall.dst, "m1", 2) == 0, "handed out \"%.2s\" for the message overwritten mid-copy",
                      stall.dst);
        ck_assert_int_eq(shmb_channel_dropped(sub, &dropped), 0);
        ck_assert_uint_eq(dropped, 1);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), 2);
        ck_assert_int_eq(memcmp(buf, "m2", 2), 0);
        ck_assert_int_eq(sigaction(SIGSEGV, &old, NULL), 0);
        munmap(stall.dst, stall.len);
        handle_free(sub);
        handle_free(pub);
}
END_TEST

/*
 * A subscriber that closes stops holding block-mode publishers back at
 * once, not only once the broker hears of the close and marks its entry
 * dead: here no broker ever does, and the holder table keeps it live.
 */
START_TEST(test_closed_subscriber_stops_blocking_at_once) {
        Bus b;
        shmb_channel *pub, *slow, *fast;
        char buf[SLOT_SIZE];

        bus_make(&b, 2, 2, false);
        pub = handle_new(&b, false, 0);
        slow = handle_new(&b, true, 0);
        fast = handle_new(&b, true, 1);
        ck_assert_int_eq(shmb_send(pub, "m0", 2, 0), 0);
        ck_assert_int_eq(shmb_send(pub, "m1", 2, 0), 0);
        ck_assert_int_eq(shmb_recv(fast, buf, sizeof buf, 0), 2);
        ck_assert_int_eq(shmb_recv(fast, buf, sizeof buf, 0), 2);
        /* A lap ahead of the slow one, which has read nothing. */
        ck_assert_int_eq(shmb_send(pub, "m2", 2, 0), -EAGAIN);
        handle_free(slow);
        ck_assert_int_eq(shmb_send(pub, "m2", 2, 0), 0);
        ck_assert_int_eq(shmb_recv(fast, buf, sizeof buf, 0), 2);
        ck_assert_int_eq(memcmp(buf, "m2", 2), 0);
        handle_free(fast);
        handle_free(pub);
}
END_TEST

/*
 * A publisher prefetches the slot about 1 KiB past the one it claimed, as a
 * ring's sender does (client/prefetch.h, where test-ring checks the
 * target's wrap): 8 slots of 64 B, or half a lap of a short ring.
 */
START_TEST(test_publisher_prefetches_less_than_a_lap_ahead) {
        static const struct { uint32_t slots; uint64_t ahead; } cases[] = { { 1024, 8 * 128 }, { 4, 2 * 128 } };

        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
                Bus b;
                shmb_channel *pub;
                const char *slots;
                uint64_t stride, ahead;
                uint32_t n, subscribers;

                bus_make(&b, cases[k].slots, 1, false);
                pub = handle_new(&b, false, 0);
                bcast_channel_geometry(pub, &slots, &stride, &n, &subscribers, &ahead);
                ck_assert_uint_eq(prefetch_distance(stride, n), cases[k].ahead);
                ck_assert_uint_eq(ahead, cpu_prefetches_for_write() ? cases[k].ahead : 0);
                handle_free(pub);
        }
}
END_TEST

/*
 * A publisher may also rewrite the header while another opener sets its
 * handle up. bcast_channel_setup() checks the header against the broker's
 * figures; the handle must then run on what was checked, never on a second
 * read: a larger slot count, stride or data offset taken after the check
 * walks a publisher's writes, or a subscriber's reads, past the segment.
 * The flips find a second read only now and then: one handle is enough.
 */
typedef struct Flipper {
        pthread_t thread;
        BcastHeader *h;
        int stop;
} Flipper;

static void *flip_main(void *userdata) {
        Flipper *f = userdata;
        uint32_t slots = f->h->slots, stride = f->h->slot_stride, offset = f->h->data_offset;

        while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
                __atomic_store_n(&f->h->slots, RING_SLOTS_MAX, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slot_stride, stride * 1024, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->data_offset, offset * 1024, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slots, slots, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slot_stride, stride, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->data_offset, offset, __ATOMIC_RELAXED);
        }
        return NULL;
}

START_TEST(test_header_rewritten_during_setup_is_read_once) {
        Bus b;
        Flipper f = {};
        ProtoChannel pc;
        shmb_channel *ch = calloc(1, sizeof *ch);
        uint64_t set_up = 0;
        time_t end = time(NULL) + 3;

        bus_make(&b, 2, 1, false);
        pc = (ProtoChannel) { .ring_version = BCAST_VERSION, .slot_size = SLOT_SIZE, .slots = b.slots,
                              .subscribers = b.subscribers, .overflow = PROTO_OVERFLOW_BLOCK, .table_id = b.table_id };
        ck_assert_ptr_nonnull(ch);
        ch->access = SHMB_RW;
        ch->addr = shmat(b.data_id, NULL, 0);
        ck_assert_ptr_ne(ch->addr, (void *) -1);
        ch->info.layout = SHMB_LAYOUT_BROADCAST;
        ch->info.size = bcast_segment_size(SLOT_SIZE, b.slots, b.subscribers);
        ch->hold.token = holder_set(bcast_publisher_at(b.admin, 0), 0, 1, RING_HOLDER_LIVE);
        f.h = b.admin;
        ck_assert_int_eq(pthread_create(&f.thread, NULL, flip_main, &f), 0);
        for (uint64_t i = 0; time(NULL) < end; i++) {
                const char *slots;
                uint64_t stride, ahead;
                uint32_t n, subscribers;
                bool right;

                if (bcast_channel_setup(ch, &pc) != 0)
                        continue;
                set_up++;
                bcast_channel_geometry(ch, &slots, &stride, &n, &subscribers, &ahead);
                right = n == 2 && ch->info.slots == 2 && ch->info.slot_size == SLOT_SIZE &&
                        stride == bcast_slot_stride(SLOT_SIZE) && slots == (char *) ch->addr + bcast_data_offset(1) &&
                        subscribers == 1 && ahead < 2 * stride;
                if (!right)
                        __atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
                ck_assert_msg(right, "attempt %" PRIu64 ": checked 2 slots of stride %" PRIu64 " at offset %" PRIu64
                              ", set up %" PRIu32 " (%" PRIu32 ") of stride %" PRIu64 " at offset %td", i,
                              (uint64_t) bcast_slot_stride(SLOT_SIZE), (uint64_t) bcast_data_offset(1), n,
                              ch->info.slots, stride, slots - (char *) ch->addr);
                bcast_channel_free(ch);
        }
        __atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
        pthread_join(f.thread, NULL);
        ck_assert_uint_gt(set_up, 0);
        shmdt(ch->addr);
        free(ch);
}
END_TEST

/* ---- a hostile publisher: any rw opener may write any byte of the data segment, any opener the table ---- */

/*
 * README (Security and threat model): a peer allowed to write a broadcast
 * channel's segment (a publisher), or its table (anyone who subscribes),
 * can garble or lose messages and delay the others, but another process's
 * calls never read or write outside the segments, never crash, and return
 * by their timeout at the latest; a wait for ever ends when the channel is
 * removed. A seeded scribbler holds publishers (send, reserve, commit,
 * abort) and subscribers (recv, peek, release, dropped) of both overflow
 * modes to that. A round is a publisher's call, then a subscriber's.
 * Rounds go in periods of SCRIBBLE_PERIOD: a channel freshly formatted
 * with fresh handles, a few rounds of plain traffic, then before every
 * other round an edge value written into one word (head, a slot's seq,
 * owner or length, mostly of the slots in play; a holder entry, a cursor,
 * a flag, a futex word, the geometry, the state; now and then every slot's
 * seq at once), which two times in three is put back after one of the
 * round's calls unless the library wrote the word since. So messages flow
 * (a run checks that they did) and scribbles land on slots being read and
 * claimed, as a mutant's test showed they must: with the channel kept
 * stuck, a length no longer cut to its slot went unseen. Each call's
 * answer is checked (a length within the buffer and the slot, a pointer
 * inside the slots, a known error) and so is its time: a watchdog aborts
 * one that outlives its timeout by SCRIBBLE_SLACK_MS, naming the seed and
 * the round (the check is for loops, not for speed). The data segment is
 * a whole number of pages between PROT_NONE pages, so a stray access
 * faults. A failing seed and round reproduce.
 */
#define SCRIBBLE_SLOT_SIZE 640
#define SCRIBBLE_SLOTS 5
#define SCRIBBLE_SUBSCRIBERS 2
#define SCRIBBLE_ROUNDS 1500
#define SCRIBBLE_PERIOD 16
#define SCRIBBLE_QUIET 2
#define SCRIBBLE_SLACK_MS 3000
#define SCRIBBLE_PAGE 4096
#define SCRIBBLE_MAPPED bcast_segment_size(SCRIBBLE_SLOT_SIZE, SCRIBBLE_SLOTS, SCRIBBLE_SUBSCRIBERS)
/* The guarded area: a page, the publisher's view, a page, the subscriber's view, a page. */
#define SCRIBBLE_AREA (3 * SCRIBBLE_PAGE + 2 * SCRIBBLE_MAPPED)

/* The last word the scribbler wrote: where, how wide, what it held and what it was given. */
typedef struct ScribbleUndo {
        void *p;
        bool wide;
        uint64_t was, now;
} ScribbleUndo;

typedef struct Scribbler {
        uint32_t seed;                  /* the generator's state */
        uint32_t first_seed;            /* the run's, which a message names */
        bool drop;
        int data_id, table_id;
        BcastHeader *h;                 /* the scribbler's own view: a publisher's */
        BcastTable *t;
        char *area;
        shmb_channel *pub, *sub;
        uint32_t pub_token, sub_token, dead_token;
        uint64_t dropped;               /* the subscriber handle's count so far: it never goes back */
        ScribbleUndo undo;
} Scribbler;

static uint32_t scribble_random(Scribbler *s) {
        uint32_t x = s->seed;

        /* xorshift32: the same on every run. */
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return s->seed = x;
}

/* What the watchdog says when a call does not return: written before each call, as a signal handler cannot format. */
static char scribble_alarm_msg[160];

static void on_scribble_alarm(int sig) {
        (void) sig;
        (void) !write(STDERR_FILENO, scribble_alarm_msg, strlen(scribble_alarm_msg));
        abort();
}

static void scribble_arm(const Scribbler *s, int round, const char *call, int timeout_ms) {
        struct itimerval it = { .it_value = { .tv_sec = (MAX(timeout_ms, 0) + SCRIBBLE_SLACK_MS) / 1000,
                                              .tv_usec = (MAX(timeout_ms, 0) + SCRIBBLE_SLACK_MS) % 1000 * 1000 } };

        snprintf(scribble_alarm_msg, sizeof scribble_alarm_msg,
                 "scribbler: %s seed %" PRIu32 " round %d: %s (timeout %d ms) did not return within %d ms more\n",
                 s->drop ? "drop" : "block", s->first_seed, round, call, timeout_ms, SCRIBBLE_SLACK_MS);
        ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
}

static void scribble_disarm(void) {
        struct itimerval it = {};

        ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
}

/* A handle as bcast_channel_setup() makes one, its view of the data segment at its place in the guarded area. */
static shmb_channel *scribble_handle_new(Scribbler *s, bool subscriber) {
        shmb_channel *ch = calloc(1, sizeof *ch);
        char *at = s->area + SCRIBBLE_PAGE + (subscriber ? SCRIBBLE_MAPPED + SCRIBBLE_PAGE : 0);
        ProtoChannel pc = {
                .ring_version = BCAST_VERSION, .slot_size = SCRIBBLE_SLOT_SIZE, .slots = SCRIBBLE_SLOTS,
                .subscribers = SCRIBBLE_SUBSCRIBERS,
                .overflow = s->drop ? PROTO_OVERFLOW_DROP : PROTO_OVERFLOW_BLOCK, .table_id = s->table_id,
        };
        int r;

        ck_assert_ptr_nonnull(ch);
        ch->access = subscriber ? SHMB_RO : SHMB_RW;
        ch->addr = shmat(s->data_id, at, SHM_REMAP | (subscriber ? SHM_RDONLY : 0));
        ck_assert_ptr_eq(ch->addr, at);
        ch->info.layout = SHMB_LAYOUT_BROADCAST;
        ch->info.size = SCRIBBLE_MAPPED;
        ch->info.nsems = BCAST_NSEMS;
        ch->hold.token = subscriber ? s->sub_token : s->pub_token;
        r = bcast_channel_setup(ch, &pc);
        ck_assert_msg(r == 0, "setup: %d", r);
        return ch;
}

static void scribble_handle_free(shmb_channel *ch) {
        if (!ch)
                return;
        bcast_channel_free(ch);
        ck_assert_int_eq(shmdt(ch->addr), 0);
        /* The hole is a guard again. */
        ck_assert_ptr_ne(mmap(ch->addr, SCRIBBLE_MAPPED, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
                         MAP_FAILED);
        free(ch->zc_claims);
        free(ch);
}

/* The channel as the broker makes it, with fresh handles: a publisher (entry 0 of its table) and a subscriber (0 of its). */
static void scribble_fresh(Scribbler *s) {
        scribble_handle_free(s->sub);
        scribble_handle_free(s->pub);
        memset(s->h, 0, SCRIBBLE_MAPPED);
        memset(s->t, 0, bcast_table_size(SCRIBBLE_SUBSCRIBERS));
        bcast_format(s->h, SCRIBBLE_SLOT_SIZE, SCRIBBLE_SLOTS, SCRIBBLE_SUBSCRIBERS,
                     s->drop ? BCAST_OVERFLOW_DROP : BCAST_OVERFLOW_BLOCK, 0, s->table_id, s->t);
        s->pub_token = holder_set(bcast_publisher_at(s->h, 0), 0, 1, RING_HOLDER_LIVE);
        s->dead_token = holder_set(bcast_publisher_at(s->h, 0), 1, 1, RING_HOLDER_DEAD);
        s->sub_token = holder_set(bcast_subscriber_at(s->h, 0), 0, 1, RING_HOLDER_LIVE);
        (void) holder_set(bcast_subscriber_at(s->h, 0), 1, 1, RING_HOLDER_DEAD);
        s->pub = scribble_handle_new(s, false);
        s->sub = scribble_handle_new(s, true);
        s->dropped = 0;
        s->undo = (ScribbleUndo) {};
}

static BcastSlot *scribble_slot(const Scribbler *s, uint64_t pos) {
        /* Not bcast_slot_at(): that reads the geometry from the header, which the scribbler writes. */
        return (BcastSlot *) ((char *) s->h + bcast_data_offset(SCRIBBLE_SUBSCRIBERS) +
                              pos % SCRIBBLE_SLOTS * bcast_slot_stride(SCRIBBLE_SLOT_SIZE));
}

/* A position near where things happen: head, the subscriber's reported cursor, a lap or so either side. */
static uint64_t scribble_position(Scribbler *s) {
        uint64_t head = __atomic_load_n(&s->h->head, __ATOMIC_RELAXED);
        uint64_t base = scribble_random(s) & 1 ? head : __atomic_load_n(&bcast_cursor_at(s->t, 0)->position,
                                                                        __ATOMIC_RELAXED);

        return base + scribble_random(s) % (2 * SCRIBBLE_SLOTS + 1) - SCRIBBLE_SLOTS;
}

static uint64_t scribble_value(Scribbler *s) {
        uint32_t token;

        switch (scribble_random(s) % 16) {
        case 0:
                return 0;
        case 1:
                return UINT64_MAX;
        case 2:
                return INT64_MAX;
        case 3:
                return UINT32_MAX;
        case 4:
                return SCRIBBLE_SLOTS - 1 + scribble_random(s) % 3;
        case 5:
                return scribble_position(s);
        case 6:
                return scribble_position(s) + (UINT64_C(1) << 40);     /* far ahead */
        case 7 ... 10:
                return bcast_seq(scribble_position(s), scribble_random(s) % 4);
        case 11 ... 13:
                /* A claim of a position near by: this publisher's, a dead one's, a made-up token's, nobody's. */
                switch (scribble_random(s) % 4) {
                case 0:
                        token = s->pub_token;
                        break;
                case 1:
                        token = s->dead_token;
                        break;
                case 2:
                        token = scribble_random(s);
                        break;
                default:
                        token = 0;
                        break;
                }
                return ring_owner(scribble_position(s), token);
        case 14:
                return SCRIBBLE_SLOT_SIZE + scribble_random(s) % 3 - 1;      /* a length about the slot's */
        default:
                return (uint64_t) scribble_random(s) << 32 | scribble_random(s);
        }
}

static void scribble_u64(Scribbler *s, uint64_t *p, uint64_t v) {
        s->undo = (ScribbleUndo) { .p = p, .wide = true, .was = __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST), .now = v };
}

static void scribble_u32(Scribbler *s, uint32_t *p, uint64_t v) {
        s->undo = (ScribbleUndo) { .p = p, .was = __atomic_exchange_n(p, (uint32_t) v, __ATOMIC_SEQ_CST),
                                   .now = (uint32_t) v };
}

/* The last word written put back, unless the library wrote it since: a passing garble, which calls must survive too. */
static void scribble_undo(Scribbler *s) {
        if (s->undo.wide) {
                uint64_t expected = s->undo.now;

                (void) __atomic_compare_exchange_n((uint64_t *) s->undo.p, &expected, s->undo.was, false,
                                                   __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        } else if (s->undo.p) {
                uint32_t expected = (uint32_t) s->undo.now;

                (void) __atomic_compare_exchange_n((uint32_t *) s->undo.p, &expected, (uint32_t) s->undo.was, false,
                                                   __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        }
        s->undo = (ScribbleUndo) {};
}

/* One edge value into one word a publisher (the data segment) or any opener (the table) may write. */
static void scribble_once(Scribbler *s) {
        uint64_t v = scribble_value(s), head = __atomic_load_n(&s->h->head, __ATOMIC_RELAXED);
        BcastSlot *slot;
        BcastCursor *cur = bcast_cursor_at(s->t, scribble_random(s) % SCRIBBLE_SUBSCRIBERS);
        RingHolder *holder;

        /* Mostly the slots in play: the last published, the one the subscriber reads next, the next to claim. */
        switch (scribble_random(s) % 4) {
        case 0:
                slot = scribble_slot(s, head - 1);
                break;
        case 1:
                slot = scribble_slot(s, __atomic_load_n(&bcast_cursor_at(s->t, 0)->position, __ATOMIC_RELAXED));
                break;
        case 2:
                slot = scribble_slot(s, head);
                break;
        default:
                slot = scribble_slot(s, scribble_random(s));
                break;
        }
        switch (scribble_random(s) % 25) {
        case 0 ... 2:
                scribble_u64(s, &s->h->head, v);
                break;
        case 3 ... 6:
                scribble_u64(s, &slot->seq, v);
                break;
        case 7 ... 8:
                scribble_u64(s, &slot->owner, v);
                break;
        case 9 ... 11:
                /* Past the slot most of the time. */
                scribble_u32(s, &slot->len, scribble_random(s) % 4 ? SCRIBBLE_SLOT_SIZE + 1 + scribble_random(s) % 2 *
                             (UINT32_MAX - SCRIBBLE_SLOT_SIZE - 1) : v);
                break;
        case 12:
                scribble_u64(s, &cur->position, v);
                break;
        case 13:
                scribble_u32(s, scribble_random(s) & 1 ? &cur->token : &cur->sleeping,
                             scribble_random(s) & 1 ? v : scribble_random(s) & 1 ? s->sub_token : RING_SLEEP_FD);
                break;
        case 14:
                scribble_u64(s, &cur->dropped, v);
                break;
        case 15:
                scribble_u32(s, scribble_random(s) & 1 ? &s->t->sub_sleeping : &s->t->pub_sleeping, v);
                break;
        case 16:
                scribble_u32(s, scribble_random(s) & 1 ? &s->t->space_seq : &s->h->data_seq, v);
                break;
        case 17:
                /* The geometry: handles run on what was checked at setup. */
                switch (scribble_random(s) % 6) {
                case 0:
                        scribble_u32(s, &s->h->slots, v);
                        break;
                case 1:
                        scribble_u32(s, &s->h->slot_size, v);
                        break;
                case 2:
                        scribble_u32(s, &s->h->slot_stride, v);
                        break;
                case 3:
                        scribble_u32(s, &s->h->data_offset, v);
                        break;
                case 4:
                        scribble_u32(s, &s->h->subscribers, v);
                        break;
                default:
                        scribble_u32(s, &s->t->subscribers, v);
                        break;
                }
                break;
        case 18 ... 19:
                /* A holder entry, the handles' own included: live, dead, another generation, garbage. */
                holder = scribble_random(s) & 1 ? bcast_publisher_at(s->h, scribble_random(s) % 2) :
                                                  bcast_subscriber_at(s->h, scribble_random(s) % SCRIBBLE_SUBSCRIBERS);
                scribble_u64(s, &holder->word, scribble_random(s) % 4 == 0 ? v :
                             (uint64_t) (scribble_random(s) % 3) << 32 | scribble_random(s) % 3);
                break;
        case 20:
                scribble_u32(s, &s->h->pub_cpu, v);
                break;
        case 21:
                scribble_u32(s, &s->h->overflow, v);
                break;
        case 22: {
                /* Every slot at once, as one lap of positions: near by, or far ahead of everything. */
                uint64_t base = scribble_position(s) + (scribble_random(s) & 1 ? UINT64_C(1) << 40 : 0);
                unsigned kind = scribble_random(s) % 4;

                for (uint64_t k = 0; k < SCRIBBLE_SLOTS; k++)
                        scribble_u64(s, &scribble_slot(s, base + k)->seq, bcast_seq(base + k, kind));
                s->undo = (ScribbleUndo) {};    /* it stays */
                break;
        }
        default:
                /* The state word: removed, or live again. */
                scribble_u32(s, &s->h->state, scribble_random(s) % 4 == 0 ? v : scribble_random(s) % 2);
                break;
        }
}

/* What any call may answer a scribbled channel, besides success. */
static bool scribble_errno_ok(ssize_t r) {
        return r == -EAGAIN || r == -ETIMEDOUT || r == -EPROTO || r == -EMSGSIZE || r == -EIDRM ||
               r == -ENOTCONN || r == -EINVAL || r == -ESTALE;
}

static void scribble_check_buf(const Scribbler *s, const shmb_channel *ch, const void *p, ssize_t len,
                               const char *call, int round) {
        const char *lo = (const char *) ch->addr + bcast_data_offset(SCRIBBLE_SUBSCRIBERS), *q = p;
        const char *hi = (const char *) ch->addr + SCRIBBLE_MAPPED;
        uint64_t stride = bcast_slot_stride(SCRIBBLE_SLOT_SIZE);

        ck_assert_msg(q >= lo && q < hi && (uint64_t) (q - lo) % stride == BCAST_SLOT_HEADER && len >= 0 &&
                      len <= SCRIBBLE_SLOT_SIZE && q + len <= hi,
                      "%s seed %" PRIu32 " round %d: %s gave %p+%zd, slots at %p..%p", s->drop ? "drop" : "block",
                      s->first_seed, round, call, p, len, (const void *) lo, (const void *) hi);
}

static void scribble_check(const Scribbler *s, int round, const char *call, ssize_t r, size_t max) {
        ck_assert_msg((r >= 0 && (size_t) r <= max) || scribble_errno_ok(r),
                      "%s seed %" PRIu32 " round %d: %s: %zd (at most %zu)", s->drop ? "drop" : "block", s->first_seed,
                      round, call, r, max);
}

/* A removal ends a wait for ever, whatever was scribbled before it. */
typedef struct ScribbleForever {
        shmb_channel *ch;
        bool send;
        ssize_t r;
} ScribbleForever;

static void *scribble_forever(void *userdata) {
        ScribbleForever *f = userdata;
        char buf[SCRIBBLE_SLOT_SIZE];

        f->r = f->send ? shmb_send(f->ch, "m", 1, -1) : shmb_recv(f->ch, buf, sizeof buf, -1);
        return NULL;
}

/* The counts of one run: what it proves depends on messages having flowed. */
typedef struct ScribbleCounts {
        unsigned published, received, peeked, scribbles;
} ScribbleCounts;

static void scribble_run(uint32_t seed, bool drop, ScribbleCounts *counts) {
        /* Another sequence for each mode; the generator's state must not be 0. */
        Scribbler s = { .seed = drop ? seed * 2654435761u | 1 : seed, .first_seed = seed, .drop = drop };
        char buf[SCRIBBLE_SLOT_SIZE + 1];
        void *reserved = NULL;
        const void *peeked = NULL;

        ck_assert_uint_eq(SCRIBBLE_MAPPED % SCRIBBLE_PAGE, 0);
        ck_assert_int_eq(unshare(CLONE_NEWIPC), 0);
        s.data_id = shmget(IPC_PRIVATE, SCRIBBLE_MAPPED, IPC_CREAT | 0600);
        s.table_id = shmget(IPC_PRIVATE, bcast_table_size(SCRIBBLE_SUBSCRIBERS), IPC_CREAT | 0600);
        ck_assert_int_ge(s.data_id, 0);
        ck_assert_int_ge(s.table_id, 0);
        s.h = shmat(s.data_id, NULL, 0);
        s.t = shmat(s.table_id, NULL, 0);
        ck_assert_ptr_ne(s.h, (void *) -1);
        ck_assert_ptr_ne(s.t, (void *) -1);
        s.area = mmap(NULL, SCRIBBLE_AREA, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert_ptr_ne(s.area, MAP_FAILED);
        memset(buf, 0x42, sizeof buf);

        for (int i = 0; i < SCRIBBLE_ROUNDS; i++) {
                static const int timeouts[] = { 0, 0, 0, 1, 2 };
                int timeout = timeouts[scribble_random(&s) % ELEMENTSOF(timeouts)];
                size_t want = scribble_random(&s) % (SCRIBBLE_SLOT_SIZE + 2);
                uint64_t dropped;
                uint32_t undo_at;
                ssize_t r;
                void *p;

                if (i % SCRIBBLE_PERIOD == 0) {
                        scribble_fresh(&s);
                        reserved = NULL;
                        peeked = NULL;
                } else if (i % SCRIBBLE_PERIOD >= SCRIBBLE_QUIET && scribble_random(&s) % 2 != 0) {
                        scribble_once(&s);
                        counts->scribbles++;
                }
                /* Most scribbles pass: the word is put back after the publisher's call or the subscriber's. */
                undo_at = scribble_random(&s) % 3;
                /* Now and then the state as the broker keeps it: live. */
                if (scribble_random(&s) % 4 == 0)
                        __atomic_store_n(&s.h->state, BCAST_STATE_LIVE, __ATOMIC_SEQ_CST);

                /* A round: a publisher's call, then a subscriber's, so that what one publishes the other reads. */
                if (reserved || scribble_random(&s) % 3 == 0) {
                        if (reserved) {
                                bool commit = scribble_random(&s) % 4 != 0;

                                scribble_arm(&s, i, commit ? "commit" : "abort", 0);
                                r = commit ? shmb_send_commit(s.pub, reserved, MIN(want, (size_t) SCRIBBLE_SLOT_SIZE)) :
                                             shmb_send_abort(s.pub, reserved);
                                scribble_disarm();
                                scribble_check(&s, i, commit ? "commit" : "abort", r, 0);
                                counts->published += r == 0 && commit;
                                reserved = NULL;
                        } else {
                                scribble_arm(&s, i, "reserve", timeout);
                                r = shmb_send_reserve(s.pub, want, &p, timeout);
                                scribble_disarm();
                                scribble_check(&s, i, "reserve", r, 0);
                                if (r == 0) {
                                        /* Write every byte of it: past the segment, that faults. */
                                        scribble_check_buf(&s, s.pub, p, (ssize_t) want, "reserve", i);
                                        memset(p, 0x5a, want);
                                        reserved = p;
                                }
                        }
                } else {
                        scribble_arm(&s, i, "send", timeout);
                        r = shmb_send(s.pub, buf, MIN(want, (size_t) SCRIBBLE_SLOT_SIZE), timeout);
                        scribble_disarm();
                        scribble_check(&s, i, "send", r, 0);
                        counts->published += r == 0;
                }

                if (undo_at == 1)
                        scribble_undo(&s);
                /* Mostly a buffer that takes any message; else one that may be short (-EMSGSIZE) or empty. */
                want = scribble_random(&s) % 4 ? SCRIBBLE_SLOT_SIZE + 1 : scribble_random(&s) % (SCRIBBLE_SLOT_SIZE + 2);
                switch (scribble_random(&s) % 16) {
                case 0 ... 6:
                        scribble_arm(&s, i, "recv", timeout);
                        r = shmb_recv(s.sub, buf, want, timeout);
                        scribble_disarm();
                        scribble_check(&s, i, "recv", r, MIN(want, (size_t) SCRIBBLE_SLOT_SIZE));
                        counts->received += r >= 0;
                        break;
                case 7 ... 13:
                        if (!peeked) {
                                scribble_arm(&s, i, "peek", timeout);
                                r = shmb_recv_peek(s.sub, &peeked, timeout);
                                scribble_disarm();
                                scribble_check(&s, i, "peek", r, SCRIBBLE_SLOT_SIZE);
                                if (r < 0) {
                                        peeked = NULL;
                                        break;
                                }
                                /* Read every byte handed out: past the segment, that faults. */
                                scribble_check_buf(&s, s.sub, peeked, r, "peek", i);
                                for (ssize_t k = 0; k < r; k++)
                                        (void) ((const volatile unsigned char *) peeked)[k];
                                counts->peeked++;
                                /* Mostly released at once; else after the next round's scribble. */
                                if (scribble_random(&s) % 4 == 0)
                                        break;
                        }
                        scribble_arm(&s, i, "release", 0);
                        r = shmb_recv_release(s.sub, peeked);
                        scribble_disarm();
                        scribble_check(&s, i, "release", r, 0);
                        peeked = NULL;
                        break;
                case 14:
                        /* A count of what was lost, which never goes back. */
                        ck_assert_int_eq(shmb_channel_dropped(s.sub, &dropped), 0);
                        ck_assert_msg(dropped >= s.dropped, "%s seed %" PRIu32 " round %d: dropped went from %" PRIu64
                                      " to %" PRIu64, drop ? "drop" : "block", seed, i, s.dropped, dropped);
                        s.dropped = dropped;
                        /* 0 for a publisher (libshmbroker(3)), whatever was written into the segments. */
                        ck_assert_int_eq(shmb_channel_dropped(s.pub, &dropped), 0);
                        ck_assert_msg(dropped == 0, "%s seed %" PRIu32 " round %d: the publisher's dropped count is %"
                                      PRIu64 ", not 0", drop ? "drop" : "block", seed, i, dropped);
                        break;
                default: {
                        /* Wait for ever, and remove the channel: the wait ends. The next round starts afresh. */
                        ScribbleForever f = { .send = scribble_random(&s) & 1, .r = 1 };
                        struct timespec until;
                        pthread_t t;

                        if (i % SCRIBBLE_PERIOD < SCRIBBLE_PERIOD / 2 || scribble_random(&s) % 8)
                                break;          /* seldom, and late in a period: each ends it */
                        f.ch = f.send ? s.pub : s.sub;
                        __atomic_store_n(&s.h->state, BCAST_STATE_LIVE, __ATOMIC_SEQ_CST);
                        ck_assert_int_eq(pthread_create(&t, NULL, scribble_forever, &f), 0);
                        for (uint32_t k = scribble_random(&s) % 64; k > 0; k--)
                                sched_yield();
                        /* Without the table, as a broker that could not attach it: publishers poll. */
                        bcast_mark_removed(s.h, scribble_random(&s) & 1 ? s.t : NULL);
                        clock_gettime(CLOCK_REALTIME, &until);
                        until.tv_sec += SCRIBBLE_SLACK_MS / 1000;
                        ck_assert_msg(pthread_timedjoin_np(t, NULL, &until) == 0,
                                      "%s seed %" PRIu32 " round %d: a %s for ever outlived the channel's removal",
                                      drop ? "drop" : "block", seed, i, f.send ? "send" : "recv");
                        scribble_check(&s, i, "for ever", f.r, SCRIBBLE_SLOT_SIZE);
                        i += SCRIBBLE_PERIOD - 1 - i % SCRIBBLE_PERIOD;
                        break;
                }
                }
                if (undo_at == 2)
                        scribble_undo(&s);
        }
        scribble_handle_free(s.sub);
        scribble_handle_free(s.pub);
        ck_assert_int_eq(munmap(s.area, SCRIBBLE_AREA), 0);
        shmdt(s.t);
        shmdt(s.h);
        shmctl(s.data_id, IPC_RMID, NULL);
        shmctl(s.table_id, IPC_RMID, NULL);
}

START_TEST(test_scribbler_finds_no_stray_access_nor_loop) {
        static const uint32_t seeds[] = { 1, 2, 3, 5, 8, 13, 0x9e3779b9, 0xdeadbeef };
        struct sigaction sa = { .sa_handler = on_scribble_alarm }, old;

        ck_assert_int_eq(sigaction(SIGALRM, &sa, &old), 0);
        for (size_t i = 0; i < ELEMENTSOF(seeds); i++)
                for (int drop = 0; drop < 2; drop++) {
                        ScribbleCounts c = {};

                        scribble_run(seeds[i], drop, &c);
                        /* Messages flowed between the scribbles: else this would prove little. */
                        ck_assert_msg(c.published >= SCRIBBLE_ROUNDS / 4 && c.received + c.peeked >= SCRIBBLE_ROUNDS / 4 &&
                                      c.scribbles >= SCRIBBLE_ROUNDS / 3,
                                      "%s seed %" PRIu32 ": %u published, %u received, %u peeked, %u scribbles",
                                      drop ? "drop" : "block", seeds[i], c.published, c.received, c.peeked,
                                      c.scribbles);
                }
        ck_assert_int_eq(sigaction(SIGALRM, &old, NULL), 0);
}
END_TEST

int main(void) {
        Suite *s = suite_create("bcast-threads");
        TCase *tc = tcase_create("threads");
        SRunner *sr;
        int failed;

        if (unshare(CLONE_NEWIPC) < 0) {
                fprintf(stderr, "SKIP: cannot create IPC namespaces here (needs root)\n");
                return 77;
        }
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_block_every_message_once);
        tcase_add_test(tc, test_block_zero_copy_two_slots);
        tcase_add_test(tc, test_drop_intact_and_counted);
        tcase_add_test(tc, test_drop_zero_copy);
        tcase_add_test(tc, test_block_dead_publishers_repaired);
        tcase_add_test(tc, test_drop_dead_publishers_repaired);
        tcase_add_test(tc, test_corrupt_seqs_are_refused);
        tcase_add_test(tc, test_header_rewritten_during_setup_is_read_once);
        tcase_add_test(tc, test_publisher_prefetches_less_than_a_lap_ahead);
        tcase_add_test(tc, test_scribbled_length_is_cut_to_the_slot);
        tcase_add_test(tc, test_taken_or_removed_reservations_say_so);
        tcase_add_test(tc, test_header_of_another_layout_is_refused);
        tcase_add_test(tc, test_drop_overwritten_mid_copy_is_not_handed_out);
        tcase_add_test(tc, test_closed_subscriber_stops_blocking_at_once);
        suite_add_tcase(s, tc);
        tc = tcase_create("scribbler");
        tcase_set_timeout(tc, CASE_TIMEOUT);
        tcase_add_test(tc, test_scribbler_finds_no_stray_access_nor_loop);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
