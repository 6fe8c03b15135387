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
#include <unistd.h>

#include "client/prefetch.h"
#include "client/shmbroker-internal.h"
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
        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
