/*
 * Broadcast channels end to end: the real daemon in a private IPC
 * namespace, the library in this process and in forked ones, the kernel
 * as the judge of what an ro opener may write. Nothing here depends on
 * timing: waits are for events (pipes, the broker's marks), and timeouts
 * are only upper bounds that a correct run never reaches.
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
/* After <sys/ptrace.h>: struct ptrace_syscall_info, which glibc does not declare. */
#include <linux/ptrace.h>

#include <shmbroker/shmbroker.h>

#include "proto/broadcast.h"
#include "common/util.h"
#include "tests/client-helpers.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 120
#define SLOTS 8
#define SLOT_SIZE 256
#define BIG_SLOT (1024 * 1024)

static const char *const channels =
        "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4},"
        " {\"name\": \"feed\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4,"
        "  \"overflow\": \"drop\"},"
        " {\"name\": \"pair\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4, \"subscribers\": 2},"
        " {\"name\": \"big\", \"layout\": \"broadcast\", \"slot_size\": 1048576, \"slots\": 2, \"subscribers\": 3},"
        " {\"name\": \"plain\", \"size\": 4096}]";

static void setup(void) {
        test_setup();
        test_daemon_write_config(&td, channels);
        test_start_ok();
        setenv("SHMBROKER_SOCKET", td.socket, 1);
}

static void wait_ok(pid_t pid, const char *what) {
        int status;

        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: wait status 0x%x", what, status);
}

static void send_ok(shmb_channel *ch, const void *msg, size_t len) {
        int r = shmb_send(ch, msg, len, 10000);

        ck_assert_msg(r == 0, "send: %s", shmb_strerror(r));
}

static void send_u32(shmb_channel *ch, uint32_t v) {
        send_ok(ch, &v, sizeof v);
}

static uint32_t recv_u32(shmb_channel *ch) {
        uint32_t v = 0;
        ssize_t n = shmb_recv(ch, &v, sizeof v, 10000);

        ck_assert_msg(n == sizeof v, "recv: %s", n < 0 ? shmb_strerror((int) n) : "short");
        return v;
}

static uint64_t dropped_of(shmb_channel *ch) {
        uint64_t n = UINT64_MAX;

        ck_assert_int_eq(shmb_channel_dropped(ch, &n), 0);
        return n;
}

static size_t offset_in(shmb_channel *ch, const void *p) {
        return (size_t) ((const char *) p - (const char *) shmb_channel_addr(ch));
}

/* A status answer's entry for name, as JSON (the caller decrefs resp). */
static json_t *status_of(const char *name, json_t **ret_resp) {
        int fd = test_connect(td.socket);
        char line[128];
        json_t *resp;

        snprintf(line, sizeof line, "{\"op\": \"status\", \"channel\": \"%s\"}", name);
        resp = test_request(fd, line);
        close(fd);
        test_assert_ok(resp);
        *ret_resp = resp;
        return test_must_find(resp, name);
}

/* A pipe for "I am ready" from children, read one byte per child. */
typedef struct Ready {
        int fd[2];
} Ready;

static void ready_init(Ready *r) {
        ck_assert_int_eq(pipe(r->fd), 0);
}

static void ready_tell(Ready *r) {
        (void) !write(r->fd[1], "r", 1);
}

/* A child that failed before it was ready says so, rather than leave the parent waiting. */
static _Noreturn void ready_fail(Ready *r, int status) {
        (void) !write(r->fd[1], "f", 1);
        _exit(status);
}

static void ready_await(Ready *r, int n) {
        for (int i = 0; i < n; i++) {
                char c;

                ck_assert_int_eq(read(r->fd[0], &c, 1), 1);
                ck_assert_msg(c == 'r', "a child failed before it was ready");
        }
}

static void ready_done(Ready *r) {
        close(r->fd[0]);
        close(r->fd[1]);
}

/* ---- the open answer and the two segments ---- */

START_TEST(test_open_answer_and_segments) {
        int fd = test_connect(td.socket);
        json_t *rw, *ro, *resp, *e;
        shmb_channel *pub, *sub;
        struct shmid_ds ds;

        rw = test_request(fd, "{\"op\": \"open\", \"channel\": \"news\", \"access\": \"rw\"}");
        test_assert_ok(rw);
        ck_assert_str_eq(test_jstr(rw, "layout"), "broadcast");
        ck_assert_int_eq(test_jint(rw, "slot_size"), SLOT_SIZE);
        ck_assert_int_eq(test_jint(rw, "slots"), SLOTS);
        ck_assert_int_eq(test_jint(rw, "ring_version"), BCAST_VERSION);
        ck_assert_int_eq(test_jint(rw, "subscribers"), 4);
        ck_assert_str_eq(test_jstr(rw, "overflow"), "block");
        ck_assert_int_gt(test_jint(rw, "holder"), 0);
        ck_assert_int_eq(test_jint(rw, "size"), (json_int_t) bcast_segment_size(SLOT_SIZE, SLOTS, 4));
        /* The table: a segment of its own, under its own key, of the documented size. */
        ck_assert_int_eq(shmctl((int) test_jint(rw, "table_id"), IPC_STAT, &ds), 0);
        ck_assert_uint_eq((uint32_t) ds.shm_perm.__key, (uint32_t) test_jint(rw, "table_key"));
        ck_assert_uint_ne((uint32_t) ds.shm_perm.__key, (uint32_t) test_jint(rw, "shm_key"));
        ck_assert_uint_eq(ds.shm_segsz, bcast_table_size(4));
        /* Writable for every class that may read the channel (0660 here). */
        ck_assert_uint_eq(ds.shm_perm.mode & 0777, 0660);
        close(fd);

        /* A second connection subscribes: its token is an entry of the subscriber table. */
        fd = test_connect(td.socket);
        ro = test_request(fd, "{\"op\": \"open\", \"channel\": \"news\", \"access\": \"ro\"}");
        test_assert_ok(ro);
        ck_assert_int_gt(test_jint(ro, "holder"), 0);
        ck_assert_int_lt(test_jint(ro, "holder") & 0xfff, 5);
        /* The same connection cannot subscribe twice (its token is its cursor), nor publish as well. */
        for (int i = 0; i < 2; i++) {
                json_t *busy = test_request(fd, i == 0 ? "{\"op\": \"open\", \"channel\": \"news\", \"access\": \"ro\"}"
                                                       : "{\"op\": \"open\", \"channel\": \"news\", \"access\": \"rw\"}");

                test_assert_error(busy, "EBUSY");
                json_decref(busy);
        }
        close(fd);
        json_decref(rw);
        json_decref(ro);

        /* Every broadcast channel is two segments and one set: the kernel's count says so. */
        ck_assert_int_eq(test_ipcs_count("-m"), 5 + 4);
        ck_assert_int_eq(test_ipcs_count("-s"), 5);

        pub = test_open_ok("news", SHMB_RW);
        sub = test_open_ok("news", SHMB_RO);
        ck_assert_int_eq(shmb_channel_layout(sub), SHMB_LAYOUT_BROADCAST);
        ck_assert_uint_eq(shmb_channel_slots(sub), SLOTS);
        ck_assert_uint_eq(shmb_channel_slot_size(sub), SLOT_SIZE);
        ck_assert_uint_eq(shmb_channel_nsems(sub), 0);
        ck_assert_int_eq(shmb_channel_check(sub), 0);

        /* list names the layout and the table. */
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"list\"}");
        e = test_must_find(resp, "feed");
        ck_assert_str_eq(test_jstr(e, "layout"), "broadcast");
        ck_assert_str_eq(test_jstr(e, "overflow"), "drop");
        ck_assert_int_eq(test_jint(e, "subscribers"), 4);
        ck_assert_int_ge(test_jint(e, "table_id"), 0);
        json_decref(resp);
        close(fd);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/* An ro opener is a subscriber: it cannot publish, and the kernel refuses its writes to the segment. */
START_TEST(test_ro_cannot_publish) {
        shmb_channel *sub = test_open_ok("news", SHMB_RO), *pub = test_open_ok("news", SHMB_RW);
        const void *in;
        void *out;
        char buf[16];
        pid_t pid;
        int status;

        ck_assert_int_eq(shmb_send(sub, "x", 1, 0), -EACCES);
        ck_assert_int_eq(shmb_send_reserve(sub, 1, &out, 0), -EACCES);
        ck_assert_int_eq(shmb_recv(pub, buf, sizeof buf, 0), -EOPNOTSUPP);
        ck_assert_int_eq(shmb_recv_peek(pub, &in, 0), -EOPNOTSUPP);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 1);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        /* A write through the subscriber's mapping, to any byte (the head here), faults. */
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                signal(SIGSEGV, SIG_DFL);
                ((volatile BcastHeader *) shmb_channel_addr(sub))->head = 0;
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "status 0x%x", status);
        /* dropped is a subscriber's figure; other layouts have none. */
        ck_assert_uint_eq(dropped_of(sub), 0);
        ck_assert_uint_eq(dropped_of(pub), 0);
        shmb_close(sub);
        shmb_close(pub);
        {
                shmb_channel *plain = test_open_ok("plain", SHMB_RW);
                uint64_t n;

                ck_assert_int_eq(shmb_channel_dropped(plain, &n), -EOPNOTSUPP);
                ck_assert_int_eq(shmb_channel_dropped(NULL, &n), -EINVAL);
                shmb_close(plain);
        }
}
END_TEST

/*
 * The kernel's view, not root's: a user who may only read the channel
 * (mode 0644, "other") subscribes and receives, the table's mode letting it
 * write its cursor; it may not publish (the broker refuses rw), and one of
 * another mode's "other" class (0640) may not subscribe at all.
 */
START_TEST(test_unprivileged_subscriber) {
        shmb_channel *pub;
        Ready ready;
        pid_t pid;

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td,
                "[{\"name\": \"public\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4, \"mode\": \"0644\"},"
                " {\"name\": \"group\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4, \"mode\": \"0640\"}]");
        test_start_ok();
        pub = test_open_ok("public", SHMB_RW);
        ready_init(&ready);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *sub, *no = NULL;
                char buf[64];

                test_drop_privileges(65534, 65534, 0);
                if (shmb_open_channel(NULL, "public", SHMB_RW, &no) != -EACCES ||
                    shmb_open_channel(NULL, "group", SHMB_RO, &no) != -EACCES)
                        ready_fail(&ready, 2);
                if (shmb_open_channel(NULL, "public", SHMB_RO, &sub) < 0)
                        ready_fail(&ready, 3);
                ready_tell(&ready);
                if (shmb_recv(sub, buf, sizeof buf, 10000) != 5 || memcmp(buf, "hello", 5) != 0)
                        _exit(4);
                /* A second message, with the publisher waiting for this one's cursor (block mode, 4 slots). */
                for (int i = 0; i < 8; i++)
                        if (shmb_recv(sub, buf, sizeof buf, 10000) != 1 || buf[0] != 'a' + i)
                                _exit(5);
                shmb_close(sub);
                _exit(0);
        }
        ready_await(&ready, 1);
        send_ok(pub, "hello", 5);
        for (int i = 0; i < 8; i++)
                send_ok(pub, &(char) { (char) ('a' + i) }, 1);
        wait_ok(pid, "unprivileged subscriber");
        ready_done(&ready);
        shmb_close(pub);
}
END_TEST

/* ---- delivery ---- */

enum { ORDER_MESSAGES = 5000 };      /* per publisher: 10,000 with two, each checksummed */

static uint32_t fnv(const unsigned char *p, size_t n) {
        uint32_t h = 2166136261u;

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 16777619u;
        return h;
}

/* Message i of publisher id: id, i, a checksum, then bytes that depend on both; 12..255 bytes. */
static size_t fill(unsigned char *p, uint32_t id, uint32_t i) {
        size_t n = 12 + (i * 13u + id * 7u) % 244;
        uint32_t sum;

        memcpy(p, &id, 4);
        memcpy(p + 4, &i, 4);
        for (size_t k = 12; k < n; k++)
                p[k] = (unsigned char) (i * 31 + k * 7 + id);
        sum = fnv(p + 12, n - 12);
        memcpy(p + 8, &sum, 4);
        return n;
}

static void publisher_main(const char *name, uint32_t id, uint32_t count, bool zero_copy) {
        shmb_channel *ch;
        unsigned char msg[SLOT_SIZE];

        if (shmb_open_channel(NULL, name, SHMB_RW, &ch) < 0)
                _exit(2);
        for (uint32_t i = 0; i < count; i++) {
                void *out;

                if (zero_copy && i % 2 == 0) {
                        if (shmb_send_reserve(ch, SLOT_SIZE, &out, 30000) < 0 ||
                            shmb_send_commit(ch, out, fill(out, id, i)) < 0)
                                _exit(3);
                } else if (shmb_send(ch, msg, fill(msg, id, i), 30000) < 0)
                        _exit(4);
        }
        shmb_close(ch);
        _exit(0);
}

/*
 * A subscriber: every message of each of n_pubs publishers, each in its
 * order, all intact; it writes the order it saw them in (one digest) to
 * out, so that subscribers can be compared.
 */
static void subscriber_main(const char *name, uint32_t n_pubs, uint32_t count, bool zero_copy, Ready *ready, int out) {
        uint32_t next[4] = {}, digest = 2166136261u;
        shmb_channel *ch;

        if (shmb_open_channel(NULL, name, SHMB_RO, &ch) < 0)
                ready_fail(ready, 2);
        ready_tell(ready);
        for (uint32_t k = 0; k < n_pubs * count; k++) {
                unsigned char buf[SLOT_SIZE];
                const unsigned char *p = buf;
                const void *in;
                uint32_t id, i, sum;
                ssize_t n;

                if (zero_copy && k % 3 == 0) {
                        n = shmb_recv_peek(ch, &in, 30000);
                        p = in;
                } else
                        n = shmb_recv(ch, buf, sizeof buf, 30000);
                if (n < 12)
                        _exit(3);
                memcpy(&id, p, 4);
                memcpy(&i, p + 4, 4);
                memcpy(&sum, p + 8, 4);
                if (id >= n_pubs || i != next[id] || sum != fnv(p + 12, (size_t) n - 12) ||
                    (size_t) n != 12 + (i * 13u + id * 7u) % 244)
                        _exit(4);
                next[id]++;
                digest = (digest ^ (id << 16 | (i & 0xffff))) * 16777619u;
                if (zero_copy && k % 3 == 0 && shmb_recv_release(ch, in) < 0)
                        _exit(5);
        }
        {
                uint64_t dropped;
                char c;

                /* Nothing more, nothing lost. */
                if (shmb_recv(ch, &c, 1, 0) != -EAGAIN || shmb_channel_dropped(ch, &dropped) < 0 || dropped != 0)
                        _exit(6);
        }
        (void) !write(out, &digest, sizeof digest);
        shmb_close(ch);
        _exit(0);
}

static void run_delivery(const char *name, uint32_t n_subs, uint32_t n_pubs, bool zero_copy) {
        pid_t subs[4], pubs[4];
        uint32_t digests[4];
        int out[2];
        Ready ready;

        ready_init(&ready);
        ck_assert_int_eq(pipe(out), 0);
        for (uint32_t s = 0; s < n_subs; s++) {
                subs[s] = fork();
                ck_assert_int_ge(subs[s], 0);
                if (subs[s] == 0)
                        subscriber_main(name, n_pubs, ORDER_MESSAGES, zero_copy, &ready, out[1]);
        }
        /* Everyone subscribed before the first message: each must see all of them. */
        ready_await(&ready, (int) n_subs);
        for (uint32_t p = 0; p < n_pubs; p++) {
                pubs[p] = fork();
                ck_assert_int_ge(pubs[p], 0);
                if (pubs[p] == 0)
                        publisher_main(name, p, ORDER_MESSAGES, zero_copy);
        }
        for (uint32_t p = 0; p < n_pubs; p++)
                wait_ok(pubs[p], "publisher");
        for (uint32_t s = 0; s < n_subs; s++)
                wait_ok(subs[s], "subscriber");
        for (uint32_t s = 0; s < n_subs; s++)
                ck_assert_int_eq(read(out[0], &digests[s], sizeof digests[s]), sizeof digests[s]);
        /* One order for all: the order of positions. */
        for (uint32_t s = 1; s < n_subs; s++)
                ck_assert_uint_eq(digests[s], digests[0]);
        close(out[0]);
        close(out[1]);
        ready_done(&ready);
}

START_TEST(test_one_subscriber_gets_all_in_order) {
        run_delivery("news", 1, 1, false);
}
END_TEST

START_TEST(test_three_subscribers_two_publishers) {
        run_delivery("news", 3, 2, false);
}
END_TEST

START_TEST(test_zero_copy_both_sides_across_processes) {
        run_delivery("news", 3, 2, true);
}
END_TEST

/* A subscriber receives only what is published after it subscribed. */
START_TEST(test_late_subscriber_sees_only_later) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *early = test_open_ok("news", SHMB_RO), *late;
        char buf[16];

        send_ok(pub, "a", 1);
        send_ok(pub, "b", 1);
        late = test_open_ok("news", SHMB_RO);
        ck_assert_int_eq(shmb_recv(late, buf, sizeof buf, 0), -EAGAIN);
        send_ok(pub, "c", 1);
        ck_assert_int_eq(shmb_recv(late, buf, sizeof buf, 1000), 1);
        ck_assert_int_eq(buf[0], 'c');
        ck_assert_int_eq(shmb_recv(late, buf, sizeof buf, 0), -EAGAIN);
        for (const char *want = "abc"; *want; want++) {
                ck_assert_int_eq(shmb_recv(early, buf, sizeof buf, 1000), 1);
                ck_assert_int_eq(buf[0], *want);
        }
        /* A message longer than the buffer is not consumed. */
        send_ok(pub, "longer", 6);
        ck_assert_int_eq(shmb_recv(late, buf, 3, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_recv(late, buf, sizeof buf, 0), 6);
        ck_assert_int_eq(memcmp(buf, "longer", 6), 0);
        ck_assert_uint_eq(dropped_of(late), 0);
        shmb_close(late);
        shmb_close(early);
        shmb_close(pub);
}
END_TEST

/* ---- block mode ---- */

/* The publisher waits for the slowest subscriber: `slots` ahead of it, a send that will not wait is -EAGAIN. */
START_TEST(test_block_publisher_waits_for_slowest) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *fast = test_open_ok("news", SHMB_RO), *slow = test_open_ok("news", SHMB_RO);
        void *out;

        for (uint32_t i = 0; i < SLOTS; i++) {
                ck_assert_int_eq(shmb_send(pub, &i, sizeof i, 0), 0);
                ck_assert_uint_eq(recv_u32(fast), i);
        }
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send_reserve(pub, 1, &out, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 50), -ETIMEDOUT);
        /* One read by the slowest frees one slot, and only one. */
        ck_assert_uint_eq(recv_u32(slow), 0);
        send_u32(pub, SLOTS);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EAGAIN);
        /* A subscriber that closes stops holding the publisher back at once. */
        shmb_close(slow);
        for (uint32_t i = SLOTS + 1; i < 3 * SLOTS; i++) {
                ck_assert_int_eq(shmb_send(pub, &i, sizeof i, 0), i < 2 * SLOTS ? 0 : -EAGAIN);
                if (i >= 2 * SLOTS)
                        break;
        }
        for (uint32_t i = SLOTS; i < 2 * SLOTS; i++)
                ck_assert_uint_eq(recv_u32(fast), i);
        ck_assert_uint_eq(dropped_of(fast), 0);
        shmb_close(fast);
        shmb_close(pub);
}
END_TEST

/* A publisher blocked in a send with no timeout goes on when the slowest reads. */
typedef struct SendCall {
        shmb_channel *ch;
        uint32_t value;
        int timeout_ms;
        int result;
        pid_t tid;              /* the thread's, once it runs */
} SendCall;

static void *send_thread(void *userdata) {
        SendCall *c = userdata;

        __atomic_store_n(&c->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        c->result = shmb_send(c->ch, &c->value, sizeof c->value, c->timeout_ms);
        return NULL;
}

/*
 * Wait until the thread that raised a sleeping flag is asleep: after the
 * flag, its only sleep is the futex wait. Then a waker's FUTEX_WAKE is what
 * must make it runnable, before the waker's call returns; a sleep bounded
 * by BCAST_POLL_MS would end by itself, too late to tell the two apart.
 */
static void await_asleep(const pid_t *tid) {
        int64_t end = test_now_ms() + 20000;
        pid_t t;

        while ((t = __atomic_load_n(tid, __ATOMIC_ACQUIRE)) == 0 || test_task_state(getpid(), t) != 'S') {
                ck_assert_msg(test_now_ms() < end, "the waiter did not go to sleep");
                usleep(1000);
        }
}


/*
 * A subscriber killed with SIGKILL, mid-peek even, stops blocking the
 * publisher once the broker marks its token dead (it sees the exit through
 * its pidfd): a send that waits succeeds, and a live subscriber misses
 * nothing.
 */
START_TEST(test_block_killed_subscriber_stops_blocking) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *live = test_open_ok("news", SHMB_RO);
        Ready ready;
        pid_t pid;

        ready_init(&ready);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *sub;
                const void *in;

                if (shmb_open_channel(NULL, "news", SHMB_RO, &sub) < 0)
                        ready_fail(&ready, 2);
                ready_tell(&ready);
                if (shmb_recv_peek(sub, &in, 30000) < 0)
                        ready_fail(&ready, 3);
                ready_tell(&ready);
                pause();
                _exit(0);
        }
        ready_await(&ready, 1);
        for (uint32_t i = 0; i < SLOTS; i++)
                send_u32(pub, i);
        ready_await(&ready, 1);         /* it holds message 0 */
        for (uint32_t i = 0; i < SLOTS; i++)
                ck_assert_uint_eq(recv_u32(live), i);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EAGAIN);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        /* Within a poll of the broker marking it: an upper bound only. */
        for (uint32_t i = SLOTS; i < 2 * SLOTS; i++)
                send_u32(pub, i);
        for (uint32_t i = SLOTS; i < 2 * SLOTS; i++)
                ck_assert_uint_eq(recv_u32(live), i);
        ck_assert_uint_eq(dropped_of(live), 0);
        ready_done(&ready);
        shmb_close(live);
        shmb_close(pub);
}
END_TEST

/* ---- drop mode ---- */

/* The publisher never waits; a lagging subscriber gets the newest and is told exactly what it lost. */
START_TEST(test_drop_never_blocks_and_counts_exactly) {
        shmb_channel *pub = test_open_ok("feed", SHMB_RW), *lag = test_open_ok("feed", SHMB_RO), *keep = test_open_ok("feed", SHMB_RO);
        uint32_t v;

        for (uint32_t i = 0; i < 3; i++) {
                send_u32(pub, i);
                ck_assert_uint_eq(recv_u32(keep), i);
        }
        for (uint32_t i = 3; i < 100; i++) {
                ck_assert_int_eq(shmb_send(pub, &i, sizeof i, 0), 0);
                ck_assert_uint_eq(recv_u32(keep), i);
        }
        /* 100 sent; the newest 8 are there: 92..99. */
        for (uint32_t i = 100 - SLOTS; i < 100; i++)
                ck_assert_uint_eq(recv_u32(lag), i);
        ck_assert_int_eq(shmb_recv(lag, &v, sizeof v, 0), -EAGAIN);
        ck_assert_uint_eq(dropped_of(lag), 100 - SLOTS);
        ck_assert_uint_eq(dropped_of(keep), 0);
        /* It goes on from there, losing nothing more while it keeps up. */
        for (uint32_t i = 100; i < 103; i++) {
                send_u32(pub, i);
                ck_assert_uint_eq(recv_u32(lag), i);
        }
        ck_assert_uint_eq(dropped_of(lag), 100 - SLOTS);

        /* Zero copy: a peeked message overwritten meanwhile is -ESTALE at release, and counted. */
        {
                const void *in, *again;
                uint64_t before = dropped_of(lag);

                send_u32(pub, 1000);
                ck_assert_int_eq(shmb_recv_peek(lag, &in, 1000), 4);
                /* A peek does not consume: the same message again. */
                ck_assert_int_eq(shmb_recv_peek(lag, &again, 0), 4);
                ck_assert_ptr_eq(in, again);
                for (uint32_t i = 0; i < SLOTS; i++)
                        send_u32(pub, 2000 + i);
                ck_assert_int_eq(shmb_recv_release(lag, in), -ESTALE);
                ck_assert_uint_eq(dropped_of(lag), before + 1);
                for (uint32_t i = 0; i < SLOTS; i++)
                        ck_assert_uint_eq(recv_u32(lag), 2000 + i);
                ck_assert_uint_eq(dropped_of(lag), before + 1);
        }
        shmb_close(keep);
        shmb_close(lag);
        shmb_close(pub);
}
END_TEST

/*
 * Drop mode under way: a publisher in another process that never waits,
 * a subscriber that reads slower. Whatever it gets is in order and intact,
 * and what it got plus what it was told it lost is exactly what was sent.
 */
START_TEST(test_drop_accounting_under_load) {
        enum { N = 20000 };
        shmb_channel *sub = test_open_ok("feed", SHMB_RO);
        uint32_t got = 0, last = 0;
        bool any = false;
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *pub;
                unsigned char msg[SLOT_SIZE];

                if (shmb_open_channel(NULL, "feed", SHMB_RW, &pub) < 0)
                        _exit(2);
                for (uint32_t i = 0; i < N; i++)
                        if (shmb_send(pub, msg, fill(msg, 0, i), 0) < 0)
                                _exit(3);
                /* The end marker, once the reader has certainly caught up with everything else. */
                _exit(0);
        }
        wait_ok(pid, "publisher");
        for (;;) {
                unsigned char buf[SLOT_SIZE];
                uint32_t id, i, sum;
                ssize_t n = shmb_recv(sub, buf, sizeof buf, 0);

                if (n == -EAGAIN)
                        break;
                ck_assert_int_ge(n, 12);
                memcpy(&id, buf, 4);
                memcpy(&i, buf + 4, 4);
                memcpy(&sum, buf + 8, 4);
                ck_assert_uint_eq(sum, fnv(buf + 12, (size_t) n - 12));
                ck_assert(!any || i > last);
                any = true;
                last = i;
                got++;
        }
        ck_assert_uint_eq(last, N - 1);
        ck_assert_uint_eq(got + dropped_of(sub), N);
        shmb_close(sub);
}
END_TEST

/* ---- zero copy ---- */

START_TEST(test_zero_copy_in_place) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        const void *in;
        void *out, *skipped;
        char buf[SLOT_SIZE];
        int x = 0;

        ck_assert_int_eq(shmb_send_reserve(pub, SLOT_SIZE + 1, &out, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_send_reserve(pub, 64, &out, 0), 0);
        memcpy(out, "in place", 8);
        /* Not published yet. */
        ck_assert_int_eq(shmb_recv_peek(sub, &in, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send_commit(pub, out, SLOT_SIZE + 1), -EMSGSIZE);
        ck_assert_int_eq(shmb_send_commit(pub, (char *) out + 1, 8), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(pub, &x, 8), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(pub, out, 8), 0);
        ck_assert_int_eq(shmb_send_commit(pub, out, 8), -EINVAL);
        ck_assert_int_eq(shmb_recv_peek(sub, &in, 1000), 8);
        /* The very bytes the publisher wrote, where it wrote them. */
        ck_assert_uint_eq(offset_in(sub, in), offset_in(pub, out));
        ck_assert_int_eq(memcmp(in, "in place", 8), 0);
        ck_assert_int_eq(shmb_recv_release(sub, &x), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(sub, in), 0);
        ck_assert_int_eq(shmb_recv_release(sub, in), -EINVAL);
        /* An aborted reserve is no message. */
        ck_assert_int_eq(shmb_send_reserve(pub, 8, &skipped, 0), 0);
        ck_assert_int_eq(shmb_send_abort(pub, skipped), 0);
        ck_assert_int_eq(shmb_send_abort(pub, skipped), -EINVAL);
        send_ok(pub, "next", 4);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 4);
        ck_assert_int_eq(memcmp(buf, "next", 4), 0);
        ck_assert_uint_eq(dropped_of(sub), 0);
        /* Two reserves at once, committed out of order: delivered in position order. */
        ck_assert_int_eq(shmb_send_reserve(pub, 1, &out, 0), 0);
        ck_assert_int_eq(shmb_send_reserve(pub, 1, &skipped, 0), 0);
        memcpy(out, "1", 1);
        memcpy(skipped, "2", 1);
        ck_assert_int_eq(shmb_send_commit(pub, skipped, 1), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send_commit(pub, out, 1), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 1);
        ck_assert_int_eq(buf[0], '1');
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 1);
        ck_assert_int_eq(buf[0], '2');
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * libshmbroker(3), Broadcast channels: the zero-copy calls work as on a
 * ring, with their errors. Misuse a program plausibly makes (a NULL
 * out-pointer, a subscriber's peeked pointer passed to commit or abort, a
 * publisher's reserved one to release, one subscriber's pointer released
 * by another) is refused and takes nothing: in block mode a claim left
 * behind would hold up every subscriber, and a wrong release would take
 * the next message from under its subscriber.
 */
START_TEST(test_zero_copy_misuse_takes_nothing) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO),
                     *other = test_open_ok("news", SHMB_RO);
        const void *in = NULL, *again = NULL, *theirs = NULL;
        void *out = NULL;
        char buf[SLOT_SIZE];

        /* A reserve without a place for its pointer claims no position: subscribers are not held up. */
        ck_assert_int_eq(shmb_send_reserve(pub, 1, NULL, 0), -EINVAL);
        ck_assert_int_eq(shmb_send_reserve(NULL, 1, &out, 0), -EINVAL);
        send_ok(pub, "first", 5);
        ck_assert_int_eq(shmb_recv_peek(sub, NULL, 0), -EINVAL);
        ck_assert_int_eq(shmb_recv_peek(NULL, &in, 0), -EINVAL);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 5);
        ck_assert_int_eq(memcmp(buf, "first", 5), 0);
        ck_assert_int_eq(shmb_recv(other, buf, sizeof buf, 1000), 5);

        /* A peek by each subscriber and a reservation, all at once. */
        send_ok(pub, "second", 6);
        ck_assert_int_eq(shmb_recv_peek(sub, &in, 1000), 6);
        ck_assert_int_eq(shmb_recv_peek(other, &theirs, 1000), 6);
        ck_assert_int_eq(shmb_send_reserve(pub, 5, &out, 0), 0);
        memcpy(out, "third", 5);
        /* A subscriber cannot publish, not even with a pointer into the ring. */
        ck_assert_int_eq(shmb_send_commit(sub, (void *) in, 6), -EACCES);
        ck_assert_int_eq(shmb_send_abort(sub, (void *) in), -EACCES);
        ck_assert_int_eq(shmb_send_commit(pub, (void *) in, 6), -EINVAL);   /* not in pub's mapping */
        ck_assert_int_lt(shmb_recv_release(pub, out), 0);                   /* a publisher receives nothing */
        ck_assert_int_eq(shmb_recv_release(NULL, in), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(sub, NULL), -EINVAL);
        /* Another subscriber's pointer to the very message is not this one's peek. */
        ck_assert_int_eq(shmb_recv_release(sub, theirs), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(other, in), -EINVAL);
        /* Nothing moved: the peek is still each subscriber's next message, and a second peek returns it again. */
        ck_assert_int_eq(shmb_recv_peek(sub, &again, 0), 6);
        ck_assert_ptr_eq(again, in);
        ck_assert_int_eq(memcmp(in, "second", 6), 0);
        ck_assert_int_eq(shmb_recv_release(sub, in), 0);
        ck_assert_int_eq(shmb_recv_release(other, theirs), 0);
        /* The reservation too is intact: it publishes, and nothing else came between. */
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send_commit(pub, out, 5), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 5);
        ck_assert_int_eq(memcmp(buf, "third", 5), 0);
        ck_assert_int_eq(shmb_recv(other, buf, sizeof buf, 1000), 5);
        ck_assert_int_eq(memcmp(buf, "third", 5), 0);
        ck_assert_uint_eq(dropped_of(sub), 0);
        ck_assert_uint_eq(dropped_of(other), 0);
        shmb_close(other);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * libshmbroker(3): a peeked message that shmb_recv() consumed cannot be
 * released any more (-EINVAL). Its pointer names a slot, which comes
 * round again a lap later: the release must not take the message there,
 * which was never peeked, from under the subscriber.
 */
START_TEST(test_release_of_a_consumed_peek_a_lap_later) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        const void *in;
        char buf[SLOT_SIZE];

        for (uint32_t i = 0; i < SLOTS; i++)
                send_u32(pub, i);
        ck_assert_int_eq(shmb_recv_peek(sub, &in, 0), (ssize_t) sizeof(uint32_t));
        ck_assert_uint_eq(recv_u32(sub), 0);    /* consumes what was peeked */
        send_u32(pub, SLOTS);
        for (uint32_t i = 1; i < SLOTS; i++)
                ck_assert_uint_eq(recv_u32(sub), i);
        /* Message SLOTS sits in the slot that the old pointer names. */
        ck_assert_int_eq(shmb_recv_release(sub, in), -EINVAL);
        ck_assert_uint_eq(recv_u32(sub), SLOTS);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/* KiB of the mapping that holds addr that are in this process's page tables (smaps Rss), -1: no such mapping. */
static long mapped_kib(const void *addr) {
        FILE *f = fopen("/proc/self/smaps", "re");
        char line[512];
        bool in = false;
        long kib = -1;

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof line, f)) {
                unsigned long start, end;

                /* A mapping's first line; its fields' names ("Rss:") do not parse as a range. */
                if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
                        in = (uintptr_t) addr >= start && (uintptr_t) addr < end;
                else if (in && sscanf(line, "Rss: %ld kB", &kib) == 1)
                        break;
        }
        fclose(f);
        return kib;
}

static bool populate_supported(void) {
#ifdef MADV_POPULATE_READ
        void *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        bool ok;

        ck_assert_ptr_ne(p, MAP_FAILED);
        ok = madvise(p, 4096, MADV_POPULATE_READ) == 0;
        munmap(p, 4096);
        return ok;
#else
        return false;
#endif
}

/*
 * A large broadcast channel is in the page tables once open, for a
 * publisher and a subscriber alike: on a guest where a fault costs ~10 us,
 * a subscriber's first lap of 1024 faults held up a block-mode publisher.
 */
START_TEST(test_large_channel_mapped_at_open) {
        shmb_channel *pub = test_open_ok("big", SHMB_RW), *sub = test_open_ok("big", SHMB_RO);
        long page = sysconf(_SC_PAGESIZE);
        long size_kib = (long) ((shmb_channel_size(pub) + (size_t) page - 1) / (size_t) page) * (page / 1024);

        ck_assert_int_ge(size_kib, 2 * 1024);
        /* Before Linux 5.14 there is nothing to populate with: the first lap faults, as it did. */
        if (!populate_supported()) {
                shmb_close(sub);
                shmb_close(pub);
                return;
        }
        ck_assert_int_eq(mapped_kib(shmb_channel_addr(pub)), size_kib);
        ck_assert_int_eq(mapped_kib(shmb_channel_addr(sub)), size_kib);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * A 1 MiB frame to 3 subscribers: the publisher writes it once, in place;
 * each subscriber reads it where it lies (the same offset in every
 * mapping), so nothing is copied per subscriber.
 */
START_TEST(test_one_mib_frame_to_three_subscribers) {
        shmb_channel *pub = test_open_ok("big", SHMB_RW), *subs[3];
        const void *in[3];
        unsigned char *out;
        uint32_t sum;

        for (int i = 0; i < 3; i++)
                subs[i] = test_open_ok("big", SHMB_RO);
        ck_assert_int_eq(shmb_send_reserve(pub, BIG_SLOT, (void **) &out, 1000), 0);
        for (size_t k = 0; k < BIG_SLOT; k++)
                out[k] = (unsigned char) (k * 2654435761u >> 24);
        sum = fnv(out, BIG_SLOT);
        ck_assert_int_eq(shmb_send_commit(pub, out, BIG_SLOT), 0);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(shmb_recv_peek(subs[i], &in[i], 1000), BIG_SLOT);
                ck_assert_uint_eq(offset_in(subs[i], in[i]), offset_in(pub, out));
                ck_assert_uint_eq(fnv(in[i], BIG_SLOT), sum);
        }
        /* Block mode, 2 slots: the publisher's next-but-one frame waits for all three releases. */
        ck_assert_int_eq(shmb_send(pub, "f", 1, 0), 0);
        ck_assert_int_eq(shmb_send(pub, "g", 1, 0), -EAGAIN);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(shmb_recv_release(subs[i], in[i]), 0);
                if (i < 2)
                        ck_assert_int_eq(shmb_send(pub, "g", 1, 0), -EAGAIN);
        }
        ck_assert_int_eq(shmb_send(pub, "g", 1, 0), 0);
        for (int i = 0; i < 3; i++)
                shmb_close(subs[i]);
        shmb_close(pub);
}
END_TEST

/*
 * A publisher killed between reserve and commit does not wedge anyone:
 * subscribers skip its position once the broker marks it dead, and
 * publishers coming round to its slot repair it.
 */
START_TEST(test_publisher_killed_mid_reserve) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        Ready ready;
        pid_t pid;

        ready_init(&ready);
        send_u32(pub, 1);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *dying;
                void *out;

                if (shmb_open_channel(NULL, "news", SHMB_RW, &dying) < 0 || shmb_send_reserve(dying, 4, &out, 0) < 0)
                        ready_fail(&ready, 2);
                memcpy(out, "dead", 4);
                ready_tell(&ready);
                pause();
                _exit(0);
        }
        ready_await(&ready, 1);
        send_u32(pub, 2);
        ck_assert_uint_eq(recv_u32(sub), 1);
        /* Message 2 is behind the unfinished claim. */
        ck_assert_int_eq(shmb_recv(sub, &(uint32_t) { 0 }, 4, 0), -EAGAIN);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_uint_eq(recv_u32(sub), 2);
        /* Round the channel twice: the dead claim's slot is taken again. */
        for (uint32_t i = 3; i < 3 + 2 * SLOTS; i++) {
                send_u32(pub, i);
                ck_assert_uint_eq(recv_u32(sub), i);
        }
        ck_assert_uint_eq(dropped_of(sub), 0);
        ready_done(&ready);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/* ---- limits ---- */

/* More subscribers than "subscribers" at once: EUSERS, until one closes. */
START_TEST(test_subscriber_limit) {
        shmb_channel *a = test_open_ok("pair", SHMB_RO), *b = test_open_ok("pair", SHMB_RO), *c = NULL, *pub;
        shmb_client *cl;

        ck_assert_int_eq(shmb_open_channel(NULL, "pair", SHMB_RO, &c), -EUSERS);
        ck_assert_ptr_null(c);
        /* Publishers are not subscribers: they still get in. */
        pub = test_open_ok("pair", SHMB_RW);
        shmb_close(a);
        c = test_open_ok("pair", SHMB_RO);
        /* One connection subscribes once. */
        ck_assert_int_eq(shmb_connect(NULL, &cl), 0);
        shmb_close(b);
        ck_assert_int_eq(shmb_open(cl, "pair", SHMB_RO, &a), 0);
        ck_assert_int_eq(shmb_open(cl, "pair", SHMB_RO, &b), -EBUSY);
        ck_assert_ptr_nonnull(strstr(shmb_client_last_message(cl), "connection of its own"));
        /* Both subscribers still get everything. */
        send_ok(pub, "m", 1);
        {
                char buf[8];

                ck_assert_int_eq(shmb_recv(a, buf, sizeof buf, 1000), 1);
                ck_assert_int_eq(shmb_recv(c, buf, sizeof buf, 1000), 1);
        }
        shmb_close(a);
        shmb_disconnect(cl);
        shmb_close(c);
        shmb_close(pub);
}
END_TEST

/* ---- removal ---- */

typedef struct RecvCall {
        shmb_channel *ch;
        ssize_t result;
        pid_t tid;              /* the thread's, once it runs */
} RecvCall;

static void *recv_thread(void *userdata) {
        RecvCall *c = userdata;
        char buf[SLOT_SIZE];

        __atomic_store_n(&c->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        c->result = shmb_recv(c->ch, buf, sizeof buf, -1);
        return NULL;
}

/* The table segment of a channel, attached read-only for the test to watch its flags. */
static const BcastTable *table_of(const char *name) {
        json_t *resp, *e = status_of(name, &resp);
        const void *t = shmat((int) test_jint(e, "table_id"), NULL, SHM_RDONLY);

        ck_assert_ptr_ne(t, (void *) -1);
        json_decref(resp);
        return t;
}

static void await_flag(const uint32_t *flag) {
        int64_t end = test_now_ms() + 20000;

        while (!__atomic_load_n(flag, __ATOMIC_SEQ_CST)) {
                ck_assert_msg(test_now_ms() < end, "nobody went to sleep");
                usleep(1000);
        }
}

/*
 * rc's subscriber reads all of a lap, and another (opened before, never
 * reading) nothing: then rc waits for a message and sc's publisher (block
 * mode) for space, each in a thread of its own (*rt, *st), both asleep.
 */
static void put_to_sleep(RecvCall *rc, SendCall *sc, const BcastTable *table, pthread_t *rt, pthread_t *st) {
        shmb_channel_set_spin(rc->ch, 0);
        shmb_channel_set_spin(sc->ch, 0);
        for (uint32_t i = 0; i < SLOTS; i++) {
                send_u32(sc->ch, i);
                ck_assert_uint_eq(recv_u32(rc->ch), i);
        }
        ck_assert_int_eq(pthread_create(rt, NULL, recv_thread, rc), 0);
        ck_assert_int_eq(pthread_create(st, NULL, send_thread, sc), 0);
        await_flag(&table->sub_sleeping);
        await_flag(&table->pub_sleeping);
}

/*
 * The broker's stop reaches a subscriber asleep for want of messages and a
 * publisher asleep for want of space: both return -EIDRM, and so does
 * every later call. Then nothing of the channel is left in the kernel.
 */
START_TEST(test_removal_wakes_sleepers) {
        shmb_channel *sub = test_open_ok("news", SHMB_RO), *slow = test_open_ok("news", SHMB_RO), *pub = test_open_ok("news", SHMB_RW);
        RecvCall rc = { .ch = sub, .result = 1 };
        SendCall sc = { .ch = pub, .value = 9, .timeout_ms = -1, .result = 1 };
        const BcastTable *table = table_of("news");
        const void *in;
        void *out;
        pthread_t rt, st;
        int64_t t;

        put_to_sleep(&rc, &sc, table, &rt, &st);
        t = test_now_ms();
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(pthread_join(rt, NULL), 0);
        ck_assert_int_eq(pthread_join(st, NULL), 0);
        t = test_now_ms() - t;
        ck_assert_int_eq(rc.result, -EIDRM);
        ck_assert_int_eq(sc.result, -EIDRM);
        ck_assert_msg(t < 20000, "took %" PRId64 " ms", t);
        ck_assert_int_eq(shmb_channel_check(sub), -EIDRM);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EIDRM);
        ck_assert_int_eq(shmb_send_reserve(pub, 1, &out, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv(slow, &(uint32_t) { 0 }, 4, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv_peek(slow, &in, 0), -EIDRM);
        shmdt(table);
        shmb_close(slow);
        shmb_close(sub);
        shmb_close(pub);
        /* Both segments and the set of every channel: gone once the last attachment is. */
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

/* The path a traced process passes an openat() at its entry (arg1), read from its memory. */
static void tracee_path(pid_t pid, uint64_t addr, char *buf, size_t size) {
        char mem[64];
        ssize_t n;
        int fd;

        snprintf(mem, sizeof mem, "/proc/%d/mem", (int) pid);
        fd = open(mem, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        n = pread(fd, buf, size - 1, (off_t) addr);
        close(fd);
        buf[n > 0 ? n : 0] = 0;
        buf[strnlen(buf, size - 1)] = 0;
}

/*
 * The stop drops every hold (their tokens turn DEAD, and the FIFOs of the
 * waiters are written) and removes the channels. libshmbroker(3): a
 * handle whose token the ring's holder table says is dead gets -ENOTCONN,
 * where a stop's promise is -EIDRM; so the channel must read removed
 * before the first wake-up of the stop. The daemon is
 * traced through its stop to the first open of one of the channel's
 * FIFOs, where the test reads the header.
 */
START_TEST(test_stop_marks_removed_before_its_first_wakeup) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        const BcastHeader *h = shmb_channel_addr(pub);
        bool met = false;
        char buf[SLOT_SIZE];
        int status;

        /* An event-loop subscriber with its flag up: the stop writes its FIFO. */
        ck_assert_int_ge(shmb_channel_fd(sub), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        test_daemon_trace(&td);
        ck_assert_int_eq(kill(td.pid, SIGTERM), 0);
        while (!met && test_next_syscall_stop(td.pid)) {
                struct ptrace_syscall_info info;
                char path[256];

                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, (void *) sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY || info.entry.nr != SYS_openat)
                        continue;
                tracee_path(td.pid, info.entry.args[1], path, sizeof path);
                if (strncmp(path, "news.", 5) != 0)
                        continue;
                met = true;
                ck_assert_msg(bcast_is_removed(h), "the stop opened FIFO %s of a channel that still reads live", path);
                /* Marked, not yet removed from the kernel: the mark is the answer already, without a system call. */
                ck_assert_int_eq(shmb_channel_check(sub), -EIDRM);
                ck_assert_int_eq(shmb_channel_check(pub), -EIDRM);
        }
        ck_assert_msg(met, "the stop wrote no FIFO of the channel");
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        ck_assert_int_eq(waitpid(td.pid, &status, 0), td.pid);
        td.pid = -1;
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EIDRM);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/* Join t, failing if it does not end within 20 s. */
static void join_bounded(pthread_t t, const char *what) {
        struct timespec until;

        ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &until), 0);
        until.tv_sec += 20;
        ck_assert_msg(pthread_timedjoin_np(t, NULL, &until) == 0, "%s still blocked 20 s after its channel went",
                      what);
}

/*
 * A crash, then an administrator removes the dead daemon's objects
 * (ipcrm), and no broker comes back to mark them: libshmbroker(3), a wait
 * that sleeps long asks the kernel now and then whether its objects are
 * still there. The sleeping subscriber and publisher both end with -EIDRM.
 */
START_TEST(test_objects_removed_while_broker_is_away_wake_sleepers) {
        shmb_channel *sub = test_open_ok("news", SHMB_RO), *slow = test_open_ok("news", SHMB_RO), *pub = test_open_ok("news", SHMB_RW);
        RecvCall rc = { .ch = sub, .result = 1 };
        SendCall sc = { .ch = pub, .value = 9, .timeout_ms = -1, .result = 1 };
        const BcastTable *table = table_of("news");
        json_t *resp, *e = status_of("news", &resp);
        int table_id = (int) test_jint(e, "table_id");
        pthread_t rt, st;

        json_decref(resp);
        put_to_sleep(&rc, &sc, table, &rt, &st);
        shmdt(table);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(pub), IPC_RMID, NULL), 0);
        ck_assert_int_eq(shmctl(table_id, IPC_RMID, NULL), 0);
        ck_assert_int_eq(semctl(shmb_channel_sem_id(pub), 0, IPC_RMID), 0);
        join_bounded(st, "a publisher");
        join_bounded(rt, "a subscriber");
        ck_assert_int_eq(sc.result, -EIDRM);
        ck_assert_int_eq(rc.result, -EIDRM);
        ck_assert_int_eq(shmb_channel_check(sub), -EIDRM);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EIDRM);
        shmb_close(slow);
        shmb_close(sub);
        shmb_close(pub);
        /* The rest of the dead run's objects go with the next start's reclaim. */
        test_start_ok();
}
END_TEST

/*
 * The same for callers that wait in slices shorter than the sleeping
 * calls' poll (half a second; 50 ms for a publisher held back), or whose
 * waits a signal keeps interrupting (a timer, a profiler): each wait ended
 * at the caller's deadline or with -EINTR before a poll ran out, so nothing
 * ever asked the kernel and such a caller waited for ever. A subscriber
 * (that joined after the ring filled, so has nothing to read) and a
 * publisher held back by a subscriber that never reads, each calling again
 * for 10 s, end with -EIDRM: with 300 ms slices, or signalled every 100 ms
 * (the subscriber) and 20 ms (the publisher).
 */
static void waits_see_objects_removed(bool interrupted) {
        shmb_channel *slow = test_open_ok("news", SHMB_RO), *pub = test_open_ok("news", SHMB_RW), *sub;
        json_t *resp, *e = status_of("news", &resp);
        int table_id = (int) test_jint(e, "table_id"), n = 0;

        json_decref(resp);
        while (shmb_send(pub, "x", 1, 0) == 0)
                n++;
        ck_assert_int_eq(n, SLOTS);
        sub = test_open_ok("news", SHMB_RO);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(pub), IPC_RMID, NULL), 0);
        ck_assert_int_eq(shmctl(table_id, IPC_RMID, NULL), 0);
        ck_assert_int_eq(semctl(shmb_channel_sem_id(pub), 0, IPC_RMID), 0);
        for (int side = 0; side < 2; side++) {
                TestTicker ticker = { .pid = -1 };
                int64_t until = test_now_ms() + 10000;
                int timeout_ms = interrupted ? -1 : 300, calls = 0;
                char buf[SLOT_SIZE];
                ssize_t r;

                if (interrupted)
                        ticker = test_ticker_start(side ? 20 : 100);
                do {
                        r = side ? shmb_send(pub, "x", 1, timeout_ms) : shmb_recv(sub, buf, sizeof buf, timeout_ms);
                        calls++;
                } while (r == (interrupted ? -EINTR : -ETIMEDOUT) && test_now_ms() < until);
                if (interrupted)
                        test_ticker_stop(&ticker);
                ck_assert_msg(r == -EIDRM, "%s waits %s, on a channel whose objects are gone: %zd (%s) after %d calls",
                              side ? "publisher" : "subscriber", interrupted ? "that signals interrupt" : "of 300 ms",
                              r, shmb_strerror((int) r), calls);
        }
        shmb_close(sub);
        shmb_close(slow);
        shmb_close(pub);
        /* The rest of the dead run's objects go with the next start's reclaim. */
        test_start_ok();
}

START_TEST(test_sliced_waits_see_objects_removed_while_broker_is_away) {
        waits_see_objects_removed(false);
}
END_TEST

START_TEST(test_interrupted_waits_see_objects_removed_while_broker_is_away) {
        waits_see_objects_removed(true);
}
END_TEST

/* ---- sleeping and waking ---- */

/*
 * A subscriber asleep for want of messages is woken by the publish itself,
 * not by its poll: the publisher found its flag up and took it down (only a
 * waker does), and the call returns with the message.
 */
START_TEST(test_sleeping_subscriber_is_woken_by_publish) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        const BcastTable *table = table_of("news");
        RecvCall rc = { .ch = sub, .result = 0 };
        pthread_t t;

        shmb_channel_set_spin(sub, 0);
        ck_assert_int_eq(pthread_create(&t, NULL, recv_thread, &rc), 0);
        await_flag(&table->sub_sleeping);
        await_asleep(&rc.tid);
        send_ok(pub, "wake", 4);
        ck_assert_uint_eq(__atomic_load_n(&table->sub_sleeping, __ATOMIC_SEQ_CST), 0);
        /* Woken by the publish itself (FUTEX_WAKE), not left to its poll. */
        ck_assert_msg(test_task_state(getpid(), rc.tid) != 'S', "the publish left the subscriber asleep");
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(rc.result, 4);
        shmdt(table);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * shmbroker-ring(7), pub_cpu: a publisher notes the CPU it runs on, and the
 * library's subscriber on that CPU sleeps at once instead of spinning,
 * which there only delays the publisher. With a spin budget of a second, a
 * subscriber that spun would raise its sleeping flag a second after it
 * began to wait, whatever the machine's speed.
 */
START_TEST(test_subscriber_beside_the_publisher_does_not_spin) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        const BcastHeader *h = shmb_channel_addr(pub);
        const BcastTable *table = table_of("news");
        RecvCall rc = { .ch = sub, .result = 0 };
        int cpu = sched_getcpu();
        int64_t start, took;
        cpu_set_t here;
        pthread_t t;
        char buf[8];

        /* This thread and the subscriber's, which inherits it, on one CPU. */
        ck_assert_int_ge(cpu, 0);
        CPU_ZERO(&here);
        CPU_SET(cpu, &here);
        ck_assert_int_eq(sched_setaffinity(0, sizeof here, &here), 0);
        send_ok(pub, "hint", 4);
        ck_assert_uint_eq(__atomic_load_n(&h->pub_cpu, __ATOMIC_RELAXED), (unsigned) cpu + 1);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), 4);
        ck_assert_int_eq(shmb_channel_set_spin(sub, SHMB_SPIN_MAX_US), 0);
        start = test_now_ms();
        ck_assert_int_eq(pthread_create(&t, NULL, recv_thread, &rc), 0);
        await_flag(&table->sub_sleeping);
        took = test_now_ms() - start;
        send_ok(pub, "wake", 4);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(rc.result, 4);
        ck_assert_msg(took < SHMB_SPIN_MAX_US / 1000, "the subscriber on the publisher's CPU spun for %lld ms",
                      (long long) took);
        shmdt(table);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * A publisher asleep for want of space (block mode) is woken by the slowest
 * subscriber's read: it took the publisher's flag down before returning.
 */
START_TEST(test_block_sleeping_publisher_is_woken) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        SendCall call = { .ch = pub, .value = SLOTS, .timeout_ms = -1, .result = 1 };
        const BcastTable *table = table_of("news");
        pthread_t t;

        shmb_channel_set_spin(pub, 0);
        for (uint32_t i = 0; i < SLOTS; i++)
                send_u32(pub, i);
        ck_assert_int_eq(pthread_create(&t, NULL, send_thread, &call), 0);
        await_flag(&table->pub_sleeping);
        await_asleep(&call.tid);
        ck_assert_uint_eq(recv_u32(sub), 0);
        ck_assert_uint_eq(__atomic_load_n(&table->pub_sleeping, __ATOMIC_SEQ_CST), 0);
        /* Woken by the read itself (FUTEX_WAKE), not left to its poll. */
        ck_assert_msg(test_task_state(getpid(), call.tid) != 'S', "the read left the publisher asleep");
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(call.result, 0);
        for (uint32_t i = 1; i <= SLOTS; i++)
                ck_assert_uint_eq(recv_u32(sub), i);
        shmdt(table);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * A subscriber that closes stops holding a block-mode publisher back at
 * once (libshmbroker(3)): also one asleep for want of space, which the
 * close must wake itself (FUTEX_WAKE before shmb_close() returns), not
 * leave to the publisher's next poll for dead subscribers.
 */
START_TEST(test_block_sleeping_publisher_is_woken_by_a_close) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        SendCall call = { .ch = pub, .value = SLOTS, .timeout_ms = -1, .result = 1 };
        const BcastTable *table = table_of("news");
        pthread_t t;

        shmb_channel_set_spin(pub, 0);
        for (uint32_t i = 0; i < SLOTS; i++)
                send_u32(pub, i);
        ck_assert_int_eq(pthread_create(&t, NULL, send_thread, &call), 0);
        await_flag(&table->pub_sleeping);
        await_asleep(&call.tid);
        shmb_close(sub);
        ck_assert_uint_eq(__atomic_load_n(&table->pub_sleeping, __ATOMIC_SEQ_CST), 0);
        ck_assert_msg(test_task_state(getpid(), call.tid) != 'S', "the close left the publisher asleep");
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(call.result, 0);
        shmdt(table);
        shmb_close(pub);
}
END_TEST

/*
 * No system call per message while nobody sleeps: a publisher and a
 * subscriber that keeps up (block mode, so the cursor and the publisher's
 * flag are in play), 1000 messages each way, counted by ptrace between two
 * getppid() markers. Drop mode too.
 */
static _Noreturn void fast_path_child(const char *name) {
        shmb_channel *pub, *sub;
        uint32_t v;

        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
                _exit(77);
        raise(SIGSTOP);
        if (shmb_open_channel(NULL, name, SHMB_RW, &pub) < 0 || shmb_open_channel(NULL, name, SHMB_RO, &sub) < 0)
                _exit(2);
        (void) syscall(SYS_getppid);
        for (uint32_t i = 0; i < 1000; i++)
                if (shmb_send(pub, &i, sizeof i, 0) < 0 || shmb_recv(sub, &v, sizeof v, 0) != sizeof v || v != i)
                        _exit(3);
        (void) syscall(SYS_getppid);
        _exit(0);
}

static void count_fast_path(const char *name) {
        int status, sig = 0, markers = 0, between = 0;
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                fast_path_child(name);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
                fprintf(stderr, "ptrace(PTRACE_TRACEME) is not permitted here: the system calls are not counted\n");
                return;
        }
        ck_assert(WIFSTOPPED(status));
        ck_assert_int_eq(ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *) (long) (PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)), 0);
        for (;;) {
                struct ptrace_syscall_info si;

                ck_assert_int_eq(ptrace(PTRACE_SYSCALL, pid, NULL, (void *) (long) sig), 0);
                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                if (WIFEXITED(status)) {
                        ck_assert_int_eq(WEXITSTATUS(status), 0);
                        break;
                }
                ck_assert(WIFSTOPPED(status));
                if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {
                        sig = WSTOPSIG(status);
                        continue;
                }
                sig = 0;
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *) sizeof si, &si), 0);
                if (si.op != PTRACE_SYSCALL_INFO_ENTRY)
                        continue;
                if (si.entry.nr == SYS_getppid)
                        markers++;
                else if (markers == 1)
                        between++;
        }
        ck_assert_int_eq(markers, 2);
        ck_assert_msg(between == 0, "%s: %d system calls for 1000 messages", name, between);
}

START_TEST(test_no_system_call_per_message) {
        count_fast_path("news");
        count_fast_path("feed");
}
END_TEST

/* ---- a hostile subscriber ---- */

/*
 * Anyone who may subscribe may write the whole subscriber table. A cursor
 * written ahead of its subscriber lets the publisher overwrite what that
 * subscriber had not read: it notices, counts it, and goes on in order. A
 * cursor written behind holds a block-mode publisher up only until its
 * subscriber next waits (it writes its cursor again). Flags and futex words
 * scribbled over cost no hang. Nothing crashes or reads out of bounds.
 */
START_TEST(test_forged_table_costs_only_messages) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *victim = test_open_ok("news", SHMB_RO);
        json_t *resp, *e = status_of("news", &resp);
        BcastTable *table = shmat((int) test_jint(e, "table_id"), NULL, 0);
        BcastCursor *cur = NULL;
        uint32_t v;

        json_decref(resp);
        ck_assert_ptr_ne(table, (void *) -1);
        for (uint32_t i = 0; i < 4; i++)
                if (bcast_cursor_at(table, i)->token != 0)
                        cur = bcast_cursor_at(table, i);
        ck_assert_ptr_nonnull(cur);

        /* Ahead: far beyond head. The publisher takes it as caught up. */
        for (uint32_t i = 0; i < SLOTS; i++)
                send_u32(pub, i);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EAGAIN);
        __atomic_store_n(&cur->position, UINT64_MAX, __ATOMIC_SEQ_CST);
        for (uint32_t i = SLOTS; i < 2 * SLOTS; i++)
                ck_assert_int_eq(shmb_send(pub, &i, sizeof i, 0), 0);
        /* The victim lost 0..7, knows it, and reads 8..15 in order. */
        for (uint32_t i = SLOTS; i < 2 * SLOTS; i++)
                ck_assert_uint_eq(recv_u32(victim), i);
        ck_assert_uint_eq(dropped_of(victim), SLOTS);

        /* Behind: the publisher waits, until the victim waits and writes its cursor again. */
        __atomic_store_n(&cur->position, 0, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(shmb_send(pub, "x", 1, 0), -EAGAIN);
        ck_assert_int_eq(shmb_recv(victim, &v, sizeof v, 10), -ETIMEDOUT);
        for (uint32_t i = 0; i < SLOTS; i++)
                ck_assert_int_eq(shmb_send(pub, &i, sizeof i, 0), 0);
        for (uint32_t i = 0; i < SLOTS; i++)
                ck_assert_uint_eq(recv_u32(victim), i);

        /* Its token cleared: not counted, so it may be overrun (and count it), then it is counted again. */
        __atomic_store_n(&cur->token, 0, __ATOMIC_SEQ_CST);
        for (uint32_t i = 0; i < 3 * SLOTS; i++)
                ck_assert_int_eq(shmb_send(pub, &i, sizeof i, 0), 0);
        for (uint32_t i = 2 * SLOTS; i < 3 * SLOTS; i++)
                ck_assert_uint_eq(recv_u32(victim), i);
        ck_assert_uint_eq(dropped_of(victim), 3 * SLOTS);
        ck_assert_int_eq(shmb_recv(victim, &v, sizeof v, 10), -ETIMEDOUT);
        ck_assert_uint_ne(__atomic_load_n(&cur->token, __ATOMIC_SEQ_CST), 0);

        /* Flags and words scribbled over: calls still return, by their timeouts at the latest. */
        memset(table, 0xff, BCAST_TABLE_HEADER_SIZE);
        ck_assert_int_eq(shmb_recv(victim, &v, sizeof v, 0), -EAGAIN);
        ck_assert_int_eq(shmb_recv(victim, &v, sizeof v, 20), -ETIMEDOUT);
        send_u32(pub, 77);
        ck_assert_uint_eq(recv_u32(victim), 77);
        /* And garbage in every cursor. */
        memset((char *) table + BCAST_TABLE_HEADER_SIZE, 0xa5, 4 * BCAST_CURSOR_SIZE);
        send_u32(pub, 78);
        ck_assert_uint_eq(recv_u32(victim), 78);
        shmdt(table);
        shmb_close(victim);
        shmb_close(pub);
}
END_TEST

/*
 * shmbroker-ring(7), Trust: what anyone who may subscribe can do through
 * the table is "delay wake-ups (a flag cleared; every sleep is bounded)".
 * So an event-loop waiter (shmb_channel_fd()) whose flags another process
 * cleared once must still come to poll readable, within a bound, while
 * messages (or room) come: a missed wake-up costs latency, never a hang.
 * The other process is a real one, that attaches the table by the id
 * status gives (its mode lets every reader of the channel write it),
 * clears the flags once and exits; it never opened the channel, so no
 * holder of it dies. 5 s is an upper bound: the sleeps are bounded by
 * BCAST_POLL_MS (500 ms).
 */
static void clear_flags_in_child(const char *name, bool space) {
        json_t *resp, *e = status_of(name, &resp);
        int table_id = (int) test_jint(e, "table_id");
        uint32_t subscribers = (uint32_t) test_jint(e, "subscribers");
        pid_t pid;

        json_decref(resp);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                BcastTable *t = shmat(table_id, NULL, 0);

                if (t == (void *) -1)
                        _exit(2);
                if (space)
                        __atomic_store_n(&t->pub_sleeping, 0, __ATOMIC_SEQ_CST);
                else {
                        __atomic_store_n(&t->sub_sleeping, 0, __ATOMIC_SEQ_CST);
                        for (uint32_t i = 0; i < subscribers; i++)
                                __atomic_store_n(&bcast_cursor_at(t, i)->sleeping, 0, __ATOMIC_SEQ_CST);
                }
                _exit(0);
        }
        wait_ok(pid, "the process that cleared the flags");
}

static bool polls_readable(int fd, int ms) {
        struct pollfd p = { .fd = fd, .events = POLLIN };

        return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

START_TEST(test_cleared_flag_does_not_strand_an_event_loop_subscriber) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        int fd = shmb_channel_fd(sub);
        uint32_t v;

        ck_assert_int_ge(fd, 0);
        /* The loop: call with a timeout of 0 until -EAGAIN (which arms the wait), then poll. */
        ck_assert_int_eq(shmb_recv(sub, &v, sizeof v, 0), -EAGAIN);
        clear_flags_in_child("news", false);
        for (uint32_t i = 0; i < 3; i++)
                send_u32(pub, i);
        ck_assert_msg(polls_readable(fd, 5000),
                      "3 messages published, and the event-loop subscriber whose flag was cleared still sleeps");
        ck_assert_uint_eq(recv_u32(sub), 0);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

START_TEST(test_cleared_flag_does_not_strand_an_event_loop_publisher) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        int fd = shmb_channel_fd(pub);
        uint32_t v = 0;

        ck_assert_int_ge(fd, 0);
        for (uint32_t i = 0; i < SLOTS; i++)
                send_u32(pub, i);
        ck_assert_int_eq(shmb_send(pub, &v, sizeof v, 0), -EAGAIN);
        clear_flags_in_child("news", true);
        /* The only subscriber reads everything: there is room, and the publisher is to learn it. */
        for (uint32_t i = 0; i < SLOTS; i++)
                ck_assert_uint_eq(recv_u32(sub), i);
        ck_assert_msg(polls_readable(fd, 5000),
                      "the subscriber read the whole lap, and the event-loop publisher whose flag was cleared still sleeps");
        ck_assert_int_eq(shmb_send(pub, &v, sizeof v, 0), 0);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/* ---- status, reload, crash restart ---- */

/*
 * Any publisher can write any slot's owner word. One that claims the free
 * slot at head for a LATER lap while head stays where it is can never come
 * from a claimer (a claim for pos + slots needs head there first): a
 * scribble, which must not turn a publish into a loop that neither waits
 * nor looks at the clock. Every call returns, within its timeout or at
 * once, for ever (-1) included; the case's timeout fails a library that
 * loops.
 */
START_TEST(test_future_claim_does_not_outlast_the_timeout) {
        static const int timeouts[] = { 0, 50, -1 };
        shmb_channel *pub = test_open_ok("news", SHMB_RW);
        BcastHeader *h = shmb_channel_addr(pub);
        uint64_t head = __atomic_load_n(&h->head, __ATOMIC_SEQ_CST);

        __atomic_store_n(&bcast_slot_at(h, head)->owner, ring_owner(head + h->slots, 5), __ATOMIC_SEQ_CST);
        for (size_t i = 0; i < ELEMENTSOF(timeouts); i++) {
                int r = shmb_send(pub, "m", 1, timeouts[i]);

                ck_assert_msg(r == -EPROTO || r == -ETIMEDOUT || r == -EAGAIN, "publish, timeout %d: %d", timeouts[i],
                              r);
        }
        shmb_close(pub);
}
END_TEST

/* The subscription of pid in a status entry (NULL when it has none). */
static json_t *subscription_of(json_t *e, pid_t pid) {
        json_t *a = json_object_get(e, "subscriptions"), *x;
        size_t i;

        ck_assert(json_is_array(a));
        json_array_foreach(a, i, x)
                if (test_jint(x, "pid") == pid)
                        return x;
        return NULL;
}

START_TEST(test_status_shows_subscribers_lag) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        json_t *resp, *e, *x;
        static char out[16384];
        char row[64];
        int64_t position;

        e = status_of("news", &resp);
        ck_assert_uint_eq(json_array_size(json_object_get(e, "subscriptions")), 1);
        x = subscription_of(e, getpid());
        ck_assert_ptr_nonnull(x);
        ck_assert_int_eq(test_jint(x, "lag"), 0);
        ck_assert_int_eq(test_jint(x, "dropped"), 0);
        position = test_jint(x, "position");
        json_decref(resp);

        for (uint32_t i = 0; i < 5; i++)
                send_u32(pub, i);
        e = status_of("news", &resp);
        x = subscription_of(e, getpid());
        ck_assert_int_eq(test_jint(x, "lag"), 5);
        ck_assert_int_eq(test_jint(x, "position"), position);
        json_decref(resp);
        ck_assert_uint_eq(recv_u32(sub), 0);
        ck_assert_uint_eq(recv_u32(sub), 1);
        e = status_of("news", &resp);
        x = subscription_of(e, getpid());
        ck_assert_int_eq(test_jint(x, "lag"), 3);
        ck_assert_int_eq(test_jint(x, "position"), position + 2);
        json_decref(resp);

        /* shmbrokerctl prints them: the detail of one channel, and after the table of all. */
        ck_assert_int_eq(test_run(out, sizeof out, "%s status news 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_msg(strstr(out, "Broadcast:  8 slots of 256 bytes") && strstr(out, "LAG"), "%s", out);
        snprintf(row, sizeof row, "%8d %20" PRId64 " %12d %12d\n", (int) getpid(), position + 2, 3, 0);
        ck_assert_msg(strstr(out, row), "no row \"%s\" in: %s", row, out);
        ck_assert_int_eq(test_run(out, sizeof out, "%s status 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_msg(strstr(out, "SUBSCRIBERS OF") && strstr(out, "news "), "%s", out);
        ck_assert_int_eq(test_run(out, sizeof out, "%s list 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_msg(strstr(out, " broadcast "), "%s", out);

        /* A closed subscriber is gone from the list at once. */
        shmb_close(sub);
        e = status_of("news", &resp);
        ck_assert_uint_eq(json_array_size(json_object_get(e, "subscriptions")), 0);
        json_decref(resp);
        shmb_close(pub);
}
END_TEST

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* A NULL-terminated list, sorted, as one space-separated string (static). */
static const char *names_text(char **names) {
        static char buf[512];
        char *v[32];
        size_t n = 0, used = 0;

        for (; names && names[n] && n < 32; n++)
                v[n] = names[n];
        qsort(v, n, sizeof *v, cmp_str);
        buf[0] = 0;
        for (size_t i = 0; i < n; i++)
                used += (size_t) snprintf(buf + used, sizeof buf - used, "%s%s", i ? " " : "", v[i]);
        return buf;
}

static bool names_are(char **names, const char *want) {
        return streq(names_text(names), want);
}

/* A reload that changes "subscribers", "overflow" or "slots" replaces the channel; one that does not keeps it. */
START_TEST(test_reload_replaces_changed_broadcast) {
        shmb_channel *news = test_open_ok("news", SHMB_RO), *feed = test_open_ok("feed", SHMB_RO), *pair = test_open_ok("pair", SHMB_RO);
        shmb_reload_result *res;
        shmb_client *c;
        char buf[8];

        test_daemon_write_config(&td,
                "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 5},"
                " {\"name\": \"feed\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4,"
                "  \"overflow\": \"block\"},"
                " {\"name\": \"pair\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4, \"subscribers\": 2,"
                "  \"mode\": \"0604\"},"
                " {\"name\": \"big\", \"layout\": \"broadcast\", \"slot_size\": 1048576, \"slots\": 3, \"subscribers\": 3},"
                " {\"name\": \"plain\", \"size\": 4096}]");
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_reload(c, &res), 0);
        ck_assert_msg(names_are((char **) shmb_reload_result_changed(res), "big feed news pair"), "changed: %s",
                      names_text((char **) shmb_reload_result_changed(res)));
        ck_assert_msg(names_are((char **) shmb_reload_result_kept(res), "plain"), "kept: %s",
                      names_text((char **) shmb_reload_result_kept(res)));
        shmb_reload_result_free(res);
        ck_assert_int_eq(shmb_recv(news, buf, sizeof buf, -1), -EIDRM);
        ck_assert_int_eq(shmb_recv(feed, buf, sizeof buf, -1), -EIDRM);
        /* Only its mode changed, and its holder keeps its rights: in place, the table's mode along (rw where r). */
        ck_assert_int_eq(shmb_recv(pair, buf, sizeof buf, 0), -EAGAIN);
        {
                json_t *resp, *e = status_of("pair", &resp);
                struct shmid_ds ds;

                ck_assert_int_eq(test_jint(e, "shm_id"), shmb_channel_shm_id(pair));
                ck_assert_int_eq(shmctl((int) test_jint(e, "table_id"), IPC_STAT, &ds), 0);
                ck_assert_uint_eq(ds.shm_perm.mode & 0777, 0606);
                ck_assert_int_eq(shmctl((int) test_jint(e, "shm_id"), IPC_STAT, &ds), 0);
                ck_assert_uint_eq(ds.shm_perm.mode & 0777, 0604);
                json_decref(resp);
        }
        shmb_close(news);
        shmb_close(feed);
        shmb_close(pair);
        shmb_disconnect(c);
        /* The old objects went with the last attachment: two segments per broadcast channel, no more. */
        ck_assert_int_eq(test_ipcs_count("-m"), 5 + 4);
}
END_TEST

/*
 * A change of "subscribers" alone that leaves the data segment's size as it
 * was (its holder table is rounded to 64 bytes) still replaces the channel:
 * the header, the table and the limit of subscribers at once all change.
 */
START_TEST(test_reload_replaces_broadcast_of_same_size_other_subscribers) {
        shmb_reload_result *res;
        shmb_client *c;
        json_t *resp, *e;

        /* The premise: "pair" with 1 subscriber instead of 2 has a segment of the same size. */
        ck_assert_uint_eq(bcast_segment_size(64, 4, 1), bcast_segment_size(64, 4, 2));
        test_daemon_write_config(&td,
                "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4},"
                " {\"name\": \"feed\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4,"
                "  \"overflow\": \"drop\"},"
                " {\"name\": \"pair\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4, \"subscribers\": 1},"
                " {\"name\": \"big\", \"layout\": \"broadcast\", \"slot_size\": 1048576, \"slots\": 2, \"subscribers\": 3},"
                " {\"name\": \"plain\", \"size\": 4096}]");
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_reload(c, &res), 0);
        ck_assert_msg(names_are((char **) shmb_reload_result_changed(res), "pair"), "changed: %s",
                      names_text((char **) shmb_reload_result_changed(res)));
        shmb_reload_result_free(res);
        shmb_disconnect(c);
        e = status_of("pair", &resp);
        ck_assert_int_eq(test_jint(e, "subscribers"), 1);
        json_decref(resp);
        /* The limit is the new one: a second subscriber is refused. */
        {
                shmb_channel *one = test_open_ok("pair", SHMB_RO), *two = NULL;

                ck_assert_int_eq(shmb_open_channel(NULL, "pair", SHMB_RO, &two), -EUSERS);
                ck_assert_ptr_null(two);
                shmb_close(one);
        }
}
END_TEST

/*
 * A broker killed with SIGKILL and started again takes broadcast channels
 * over (both segments, the same ids): publishers and subscribers attached
 * before keep working, and new ones join them. A channel whose config
 * changed meanwhile is made anew, and nothing of the old one is left.
 */
START_TEST(test_crash_restart_adopts_broadcast) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO), *late;
        json_t *resp, *e;
        int shm_id, table_id;

        e = status_of("news", &resp);
        shm_id = (int) test_jint(e, "shm_id");
        table_id = (int) test_jint(e, "table_id");
        json_decref(resp);
        send_u32(pub, 1);
        test_daemon_kill(&td, SIGKILL);
        send_u32(pub, 2);                       /* the data path needs no broker */
        test_start_ok();
        e = status_of("news", &resp);
        ck_assert_int_eq(test_jint(e, "shm_id"), shm_id);
        ck_assert_int_eq(test_jint(e, "table_id"), table_id);
        json_decref(resp);
        ck_assert_int_eq(test_ipcs_count("-m"), 5 + 4);
        late = test_open_ok("news", SHMB_RO);
        send_u32(pub, 3);
        for (uint32_t i = 1; i <= 3; i++)
                ck_assert_uint_eq(recv_u32(sub), i);
        ck_assert_uint_eq(recv_u32(late), 3);
        ck_assert_uint_eq(dropped_of(sub), 0);

        /* Changed while the broker was down: replaced, the old objects removed once detached. */
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td,
                "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4,"
                "  \"overflow\": \"drop\"}]");
        test_start_ok();
        ck_assert_int_eq(shmb_recv(sub, &(uint32_t) { 0 }, 4, -1), -EIDRM);
        ck_assert_int_eq(shmb_send(pub, "x", 1, -1), -EIDRM);
        shmb_close(late);
        shmb_close(sub);
        shmb_close(pub);
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 1);
}
END_TEST

/*
 * A table segment removed (ipcrm) while the broker was down, still attached
 * by a subscriber so that it lives on under IPC_PRIVATE: it is no longer
 * the channel's, so the channel is not taken over but made anew, and its
 * clients learn that their channel is gone.
 */
START_TEST(test_crash_restart_with_removed_table_makes_anew) {
        shmb_channel *sub = test_open_ok("news", SHMB_RO);
        json_t *resp, *e;
        int shm_id, table_id;
        char *log;

        e = status_of("news", &resp);
        shm_id = (int) test_jint(e, "shm_id");
        table_id = (int) test_jint(e, "table_id");
        json_decref(resp);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(shmctl(table_id, IPC_RMID, NULL), 0);
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(!strstr(log, "Took over channel news"), "news was taken over with a removed table:\n%s", log);
        free(log);
        e = status_of("news", &resp);
        ck_assert_int_ne(test_jint(e, "shm_id"), shm_id);
        ck_assert_int_ne(test_jint(e, "table_id"), table_id);
        json_decref(resp);
        ck_assert_int_eq(shmb_recv(sub, &(uint32_t) { 0 }, 4, -1), -EIDRM);
        shmb_close(sub);
        ck_assert_int_eq(test_ipcs_count("-m"), 5 + 4);
}
END_TEST

/*
 * The table segment removed (ipcrm) under a running broker while a
 * subscriber still has it attached (so its id lives on, keyless): the
 * channel's objects are not all there any more, and a status makes the
 * channel anew, as for its data segment, rather than report the old table.
 */
START_TEST(test_status_sees_a_removed_table) {
        shmb_channel *sub = test_open_ok("news", SHMB_RO);
        json_t *resp, *e;
        int table_id;

        e = status_of("news", &resp);
        table_id = (int) test_jint(e, "table_id");
        json_decref(resp);
        ck_assert_int_eq(shmctl(table_id, IPC_RMID, NULL), 0);
        e = status_of("news", &resp);
        ck_assert_int_ne(test_jint(e, "table_id"), table_id);
        json_decref(resp);
        shmb_close(sub);
}
END_TEST

/*
 * A publisher may write any byte of the data header, table_key and
 * table_id included. At a crash restart the broker must not take that
 * word for which segment is the channel's table: pointed at another
 * channel's segment of the same size (here "feed"'s table: both have 4
 * subscribers), the broker would adopt it as news's table, give it news's
 * owner, group and mode, and make "feed", whose config did not change,
 * anew (its clients cut off, its contents gone, its ids changed). Both
 * channels must come back as they were.
 */
START_TEST(test_crash_restart_trusts_no_table_a_publisher_names) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW);
        BcastHeader *h = shmb_channel_addr(pub);
        json_t *resp, *e;
        int news_table, feed_shm, feed_table;
        uint32_t feed_table_key;

        e = status_of("news", &resp);
        news_table = (int) test_jint(e, "table_id");
        json_decref(resp);
        e = status_of("feed", &resp);
        feed_shm = (int) test_jint(e, "shm_id");
        feed_table = (int) test_jint(e, "table_id");
        feed_table_key = (uint32_t) test_jint(e, "table_key");
        json_decref(resp);

        /* The scribble: news's header names feed's table. */
        h->table_key = feed_table_key;
        h->table_id = feed_table;
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();

        e = status_of("feed", &resp);
        ck_assert_int_eq(test_jint(e, "shm_id"), feed_shm);
        ck_assert_int_eq(test_jint(e, "table_id"), feed_table);
        json_decref(resp);
        e = status_of("news", &resp);
        ck_assert_int_ne(test_jint(e, "table_id"), feed_table);
        (void) news_table;
        json_decref(resp);
        shmb_close(pub);
}
END_TEST

/*
 * A subscription closed after a broker crash, before the library got
 * round to reconnecting, is over: its process lives on, but it must not
 * keep a place among the channel's subscribers for ever.
 */
START_TEST(test_subscription_closed_after_crash_frees_its_place) {
        shmb_channel *a = test_open_ok("pair", SHMB_RO), *b = test_open_ok("pair", SHMB_RO), *c = NULL;
        int r = -EUSERS;

        ck_assert_int_eq(shmb_open_channel(NULL, "pair", SHMB_RO, &c), -EUSERS);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        ck_assert_int_eq(shmb_close(a), 0);
        ck_assert_int_eq(shmb_close(b), 0);
        /* Upper bound only: the broker judges the killed run's holders once a second. */
        for (int i = 0; i < 100 && r == -EUSERS; i++) {
                r = shmb_open_channel(NULL, "pair", SHMB_RO, &c);
                if (r == -EUSERS)
                        usleep(100 * 1000);
        }
        ck_assert_msg(r == 0, "a subscription after two were closed: %s", shmb_strerror(r));
        shmb_close(c);
}
END_TEST

/*
 * README, Security: a broadcast channel's publisher and subscriber holder
 * tables live in its data segment, which every publisher (an rw opener;
 * here root) can write. The writer marks every entry of both tables but
 * the genuine publisher's and subscriber's LIVE for openers no broker can
 * judge (pid 0; pid 1 of no recorded namespace, no ids), then the broker
 * is SIGKILLed. The next broker must not take those entries for holders of
 * the killed run (a broker that believed the table did, and refused every rw open, and
 * every ro open of a full subscriber table, EUSERS): an rw and an ro open
 * on new connections get tokens, the forged entries are no longer LIVE,
 * and the genuine publisher and subscriber, open across the crash, keep
 * their tokens (their entries LIVE under the same generations) and their
 * traffic.
 */
START_TEST(test_broadcast_holder_tables_forged_before_a_crash_refuse_no_opens) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        shmb_channel *fresh_pub = NULL, *fresh_sub = NULL;
        BcastHeader *h = shmb_channel_addr(pub);
        RingHolder *pubs = bcast_publisher_at(h, 0), *subs = bcast_subscriber_at(h, 0);
        uint64_t pub_word, sub_word;
        uint32_t my_pub, my_sub;
        int r_rw, r_ro;

        ck_assert_uint_eq(h->subscribers, 4);
        my_pub = test_only_live_holder(pubs, BCAST_PUBLISHERS, "the publisher table before the forgery");
        my_sub = test_only_live_holder(subs, 4, "the subscriber table before the forgery");
        ck_assert_int_eq(pubs[my_pub].pid, getpid());
        ck_assert_int_eq(subs[my_sub].pid, getpid());
        pub_word = __atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE);
        sub_word = __atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE);
        test_forge_live_holders(pubs, BCAST_PUBLISHERS, my_pub);
        test_forge_live_holders(subs, 4, my_sub);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        test_rejoin_through_status(pub, "news");
        test_rejoin_through_status(sub, "news");
        ck_assert_uint_eq(__atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE), pub_word);
        ck_assert_uint_eq(__atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE), sub_word);
        /* Both opens first, so that one run says what each of them got. */
        r_rw = shmb_open_channel(NULL, "news", SHMB_RW, &fresh_pub);
        r_ro = shmb_open_channel(NULL, "news", SHMB_RO, &fresh_sub);
        ck_assert_msg(r_rw == 0 && r_ro == 0,
                      "opens of news on new connections after the restart: rw (publisher) %s (%s), ro (subscriber) %s (%s)",
                      r_rw == 0 ? "succeeded" : shmb_strerror(r_rw), shmb_errno_name(r_rw) ?: "0",
                      r_ro == 0 ? "succeeded" : shmb_strerror(r_ro), shmb_errno_name(r_ro) ?: "0");
        /* Every token works: each publisher reaches both subscribers. */
        send_u32(fresh_pub, 1);
        send_u32(pub, 2);
        for (uint32_t i = 1; i <= 2; i++) {
                ck_assert_uint_eq(recv_u32(sub), i);
                ck_assert_uint_eq(recv_u32(fresh_sub), i);
        }
        ck_assert_uint_eq(dropped_of(sub), 0);
        ck_assert_int_eq(shmb_close(fresh_sub), 0);
        ck_assert_int_eq(shmb_close(fresh_pub), 0);
        /* The broker wrote its own states back: what is LIVE is the genuine holders, under their generations. */
        ck_assert_uint_eq(test_only_live_holder(pubs, BCAST_PUBLISHERS, "the publisher table after the restart"), my_pub);
        ck_assert_uint_eq(test_only_live_holder(subs, 4, "the subscriber table after the restart"), my_sub);
        ck_assert_uint_eq(__atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE), pub_word);
        ck_assert_uint_eq(__atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE), sub_word);
        ck_assert_int_eq(shmb_close(sub), 0);
        ck_assert_int_eq(shmb_close(pub), 0);
}
END_TEST

/* ---- holder entries forged while the broker runs ---- */

/* The entry a token names in its table. */
static uint32_t token_entry(uint32_t token) {
        return ring_token_index(token);
}

/*
 * An open of news on fd, which must be answered with a token of an entry
 * other than `live` (a live hold's, of the table that access takes an entry
 * of): after `forged` was written into the table.
 */
static uint32_t open_beside(int fd, const char *access, uint32_t live, const char *forged) {
        char req[128];
        json_t *resp;
        uint32_t t;

        snprintf(req, sizeof req, "{\"op\": \"open\", \"channel\": \"news\", \"access\": \"%s\"}", access);
        resp = test_request(fd, req);
        ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "an %s open after %s was refused: %s (%s)", access,
                      forged, json_string_value(json_object_get(resp, "error")) ?: "?",
                      json_string_value(json_object_get(resp, "message")) ?: "");
        t = (uint32_t) test_jint(resp, "holder");
        json_decref(resp);
        ck_assert_msg(t != 0, "an %s open after %s got no token", access, forged);
        ck_assert_msg(token_entry(t) != live, "an %s open after %s was handed entry %u, a live hold's: token %u",
                      access, forged, (unsigned) live, (unsigned) t);
        return t;
}

/* The close of fd's hold of news; entry `live` of table, put back as it was (word), must say so still. */
static void close_beside(int fd, const RingHolder *table, uint32_t live, uint64_t word, const char *forged) {
        json_t *resp = test_request(fd, "{\"op\": \"close\", \"channel\": \"news\"}");
        uint64_t now;

        test_assert_ok(resp);
        json_decref(resp);
        now = __atomic_load_n(&table[live].word, __ATOMIC_ACQUIRE);
        ck_assert_msg(now == word, "after %s, the close of another hold ended live entry %u: %#llx, not %#llx", forged,
                      (unsigned) live, (unsigned long long) now, (unsigned long long) word);
}

/* Write entry i of table as a writer of the segment may: state under the generation word has. */
static void forge_state(RingHolder *table, uint32_t i, uint64_t word, uint32_t state) {
        __atomic_store_n(&table[i].word, (word & ~UINT64_C(0xffffffff)) | state, __ATOMIC_RELEASE);
}

/* pub reaches sub, and sub missed nothing: both tokens live as ever. */
static void assert_traffic(shmb_channel *pub, shmb_channel *sub, uint32_t v) {
        send_u32(pub, v);
        ck_assert_uint_eq(recv_u32(sub), v);
        ck_assert_uint_eq(dropped_of(sub), 0);
}

/*
 * README, Security: the daemon does not believe the entries of a broadcast
 * channel's holder tables, which live in the data segment that every
 * publisher may write, so "a forged entry neither refuses an rw open
 * (EUSERS) nor makes a token name two holds". The forged-holders test
 * forges before a crash; here a publisher (root) forges while the broker
 * runs. The genuine publisher's and subscriber's entries written FREE
 * under their generations, as entries never handed out look: an rw and an
 * ro open on other connections get other entries; put back, those holds'
 * closes leave the genuine ones LIVE. Then every other entry of both
 * tables written LIVE (pid 0, no ids; the subscriber table so looks full):
 * rw and ro opens still get tokens of entries of their own.
 */
START_TEST(test_broadcast_holder_entries_forged_free_or_live_while_running) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        BcastHeader *h = shmb_channel_addr(pub);
        RingHolder *pubs = bcast_publisher_at(h, 0), *subs = bcast_subscriber_at(h, 0);
        int rw = test_connect(td.socket), ro = test_connect(td.socket);
        uint32_t my_pub, my_sub;
        uint64_t pub_word, sub_word;
        const char *what;

        ck_assert_uint_eq(h->subscribers, 4);
        my_pub = test_only_live_holder(pubs, BCAST_PUBLISHERS, "the publisher table before the forgery");
        my_sub = test_only_live_holder(subs, 4, "the subscriber table before the forgery");
        pub_word = __atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE);
        sub_word = __atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE);

        what = "the live publisher's and subscriber's entries were written FREE";
        forge_state(pubs, my_pub, pub_word, RING_HOLDER_FREE);
        forge_state(subs, my_sub, sub_word, RING_HOLDER_FREE);
        open_beside(rw, "rw", my_pub, what);
        open_beside(ro, "ro", my_sub, what);
        __atomic_store_n(&pubs[my_pub].word, pub_word, __ATOMIC_RELEASE);
        __atomic_store_n(&subs[my_sub].word, sub_word, __ATOMIC_RELEASE);
        close_beside(rw, pubs, my_pub, pub_word, what);
        close_beside(ro, subs, my_sub, sub_word, what);
        assert_traffic(pub, sub, 1);

        what = "every other entry of both tables was written LIVE";
        test_forge_live_holders(pubs, BCAST_PUBLISHERS, my_pub);
        test_forge_live_holders(subs, 4, my_sub);
        open_beside(rw, "rw", my_pub, what);
        open_beside(ro, "ro", my_sub, what);
        close_beside(rw, pubs, my_pub, pub_word, what);
        close_beside(ro, subs, my_sub, sub_word, what);
        assert_traffic(pub, sub, 2);
        close(ro);
        close(rw);
        ck_assert_int_eq(shmb_close(sub), 0);
        ck_assert_int_eq(shmb_close(pub), 0);
}
END_TEST

/*
 * n more holds of the table with `access` beside the genuine entry `mine`
 * (its word `word`) on connections fds; hold `closed` closes, and the
 * genuine entry is written DEAD: the open on extra must get the entry the
 * broker freed. Then the entry is put back and that open closed again.
 */
static void fill_forge_dead_and_open(RingHolder *table, uint32_t mine, uint64_t word, const char *access, int *fds,
                                     uint32_t n, uint32_t closed, int extra, const char *what) {
        uint32_t freed = 0, t;

        for (uint32_t i = 0; i < n; i++) {
                fds[i] = test_connect(td.socket);
                t = open_beside(fds[i], access, mine, "nothing was forged");
                if (i == closed)
                        freed = t;
        }
        close_beside(fds[closed], table, mine, word, "nothing was forged");
        forge_state(table, mine, word, RING_HOLDER_DEAD);
        t = open_beside(extra, access, mine, what);
        ck_assert_uint_eq(token_entry(t), token_entry(freed));
        __atomic_store_n(&table[mine].word, word, __ATOMIC_RELEASE);
        close_beside(extra, table, mine, word, what);
}

/*
 * As the test above, with the genuine subscriber's entry written DEAD
 * under its generation, as the entry of a hold that ended looks: the
 * broker hands DEAD entries out again, but only those it marked dead
 * itself. With all four subscriber entries handed out and one of them
 * closed, the next ro open must get the entry the broker freed, not the
 * genuine subscriber's, which would then be dead to the publishers (its
 * cursor skipped, the subscriber overrun). The same for the publisher
 * table, filled with 256 publishers.
 */
START_TEST(test_broadcast_holder_entries_forged_dead_while_running_are_not_handed_out) {
        static int pub_fds[BCAST_PUBLISHERS];
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        BcastHeader *h = shmb_channel_addr(pub);
        RingHolder *pubs = bcast_publisher_at(h, 0), *subs = bcast_subscriber_at(h, 0);
        const char *what = "live holds' entries were written DEAD";
        int sub_fds[3], extra = test_connect(td.socket);
        uint32_t my_pub, my_sub;
        uint64_t pub_word, sub_word;

        my_pub = test_only_live_holder(pubs, BCAST_PUBLISHERS, "the publisher table");
        my_sub = test_only_live_holder(subs, 4, "the subscriber table");
        pub_word = __atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE);
        sub_word = __atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE);
        fill_forge_dead_and_open(subs, my_sub, sub_word, "ro", sub_fds, 3, 1, extra, what);
        fill_forge_dead_and_open(pubs, my_pub, pub_word, "rw", pub_fds, BCAST_PUBLISHERS - 1, 100, extra, what);
        assert_traffic(pub, sub, 3);
        for (uint32_t i = 0; i < BCAST_PUBLISHERS - 1; i++)
                close(pub_fds[i]);
        for (int i = 0; i < 3; i++)
                close(sub_fds[i]);
        close(extra);
        ck_assert_int_eq(shmb_close(sub), 0);
        ck_assert_int_eq(shmb_close(pub), 0);
}
END_TEST

/*
 * libshmbroker(3), Semaphore counts: nsems means the same in
 * shmb_channel_nsems() and shmb_status_nsems(), index 0 is the config's
 * first semaphore, and shmb_status_reserved_nsems() counts the layout's own;
 * shmbroker.json(5): a broadcast channel's set "is as a ring's: semaphore 0
 * is the channel's own".
 */
START_TEST(test_status_semaphores_skip_the_channels_own) {
        char with_sems[4096];
        shmb_client *c;
        shmb_reload_result *res;
        shmb_status_list *l;
        shmb_channel *ch;
        int v = -1, r;

        snprintf(with_sems, sizeof with_sems, "%.*s, {\"name\": \"sems\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                 " \"slots\": 4, \"semaphores\": [7]}]", (int) strlen(channels) - 1, channels);
        test_daemon_write_config(&td, with_sems);
        ck_assert_int_eq(shmb_connect(td.socket, &c), 0);
        r = shmb_reload(c, &res);
        ck_assert_msg(r == 0, "reload: %s", shmb_strerror(r));
        shmb_reload_result_free(res);

        ch = test_open_ok("sems", SHMB_RW);
        ck_assert_uint_eq(shmb_channel_nsems(ch), 1);
        ck_assert_int_eq(shmb_status(c, "sems", &l), 0);
        ck_assert_uint_eq(shmb_status_nsems(l, 0), shmb_channel_nsems(ch));
        ck_assert_uint_eq(shmb_status_reserved_nsems(l, 0), 1);
        ck_assert_int_eq(shmb_status_semaphore(l, 0, 0, &v, NULL, NULL, NULL), 0);
        ck_assert_int_eq(v, 7);
        ck_assert_int_eq(shmb_status_reserved_semaphore(l, 0, 0, &v, NULL, NULL, NULL), 0);
        ck_assert_int_eq(v, 1);
        shmb_status_free(l);
        shmb_close(ch);
        shmb_disconnect(c);
}
END_TEST

/* The examples: two subscribers print the same 50 lines, which one publisher sent once. */
START_TEST(test_examples_publish_to_two_subscribers) {
        static char out[65536];
        char expect[65536];
        size_t used = 0;

        for (int i = 1; i <= 50; i++)
                used += (size_t) snprintf(expect + used, sizeof expect - used, "message %d\n", i);
        ck_assert_int_eq(test_run(out, sizeof out, "%s/broadcast-subscriber news & s=$!; %s/broadcast-publisher news 50 1 && wait $s",
                             EXAMPLES_DIR, EXAMPLES_DIR), 0);
        ck_assert_str_eq(out, expect);
        /* Two at once: each prints all 50 (their outputs go to separate files, then one after the other). */
        ck_assert_int_eq(test_run(out, sizeof out,
                             "cd %s; %s/broadcast-subscriber news >a & a=$!; %s/broadcast-subscriber news >b & b=$!;"
                             " %s/broadcast-publisher news 50 2 && wait $a && wait $b && cat a b", td.dir,
                             EXAMPLES_DIR, EXAMPLES_DIR, EXAMPLES_DIR), 0);
        ck_assert_uint_eq(strlen(out), 2 * strlen(expect));
        ck_assert_int_eq(strncmp(out, expect, strlen(expect)), 0);
        ck_assert_str_eq(out + strlen(expect), expect);
}
END_TEST

/*
 * A publisher handle closed with a reservation left open skips it at its
 * close, also when another handle of the channel on the same connection
 * keeps the hold and with it the token, which the broker then does not
 * mark dead: subscribers go on at once, not once the process exits.
 */
START_TEST(test_close_ends_reservation_of_a_shared_hold) {
        shmb_channel *sub = test_open_ok("news", SHMB_RO), *other = test_open_ok("news", SHMB_RW), *a, *b;
        shmb_client *c;
        char buf[SLOT_SIZE];
        void *out;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "news", SHMB_RW, &a), 0);
        ck_assert_int_eq(shmb_open(c, "news", SHMB_RW, &b), 0);
        ck_assert_int_eq(shmb_send_reserve(a, 8, &out, 0), 0);
        memcpy(out, "left", 4);
        ck_assert_int_eq(shmb_close(a), 0);
        send_ok(other, "after", 5);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 5000), 5);
        ck_assert_int_eq(memcmp(buf, "after", 5), 0);

        /* b's own reservation is b's: a close of another handle of the hold leaves it alone. */
        test_close_keeps_the_others_claim(c, "news", b, other, sub);
        shmb_close(b);
        shmb_close(other);
        shmb_close(sub);
        shmb_disconnect(c);
}
END_TEST

/*
 * A child of fork(2) closing an inherited publisher handle ends nothing of
 * its parent's: the reservation open across the child's close is still the
 * parent's to commit, and subscribers get it.
 */
START_TEST(test_forked_child_close_leaves_parents_reservation) {
        shmb_channel *pub = test_open_ok("news", SHMB_RW), *sub = test_open_ok("news", SHMB_RO);
        char buf[SLOT_SIZE];
        void *out;
        int status;
        pid_t pid;

        ck_assert_int_eq(shmb_send_reserve(pub, 8, &out, 0), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                (void) shmb_close(pub);
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child: wait status 0x%x", status);
        memcpy(out, "mine", 4);
        ck_assert_int_eq(shmb_send_commit(pub, out, 4), 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), 4);
        ck_assert_int_eq(memcmp(buf, "mine", 4), 0);
        shmb_close(sub);
        shmb_close(pub);
}
END_TEST

/*
 * An open refused after a broker restart leaves no hold behind. The
 * publisher handle of c went stale with the channel (SIGTERM); the next
 * open on c reconnects first, and its rejoin opens "feed" again with the
 * strongest access listed, the refused open's included. That open is
 * refused (-EBUSY: the rejoin's hold is read-write), and the stale
 * publisher's close gives nothing back: the hold the rejoin took must not
 * stay at the broker, listed for no handle, or c could never subscribe to
 * "feed" again and a subscriber place would be gone for c's life.
 */
START_TEST(test_refused_open_after_restart_leaves_no_hold) {
        shmb_channel *pub, *sub;
        shmb_client *c;
        json_t *resp, *e;
        int r;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "feed", SHMB_RW, &pub), 0);
        test_daemon_kill(&td, SIGTERM);
        test_start_ok();
        /* The stale publisher's hold, taken again by the reconnection, is given back at once (libshmbroker(3)). */
        r = shmb_open(c, "feed", SHMB_RO, &sub);
        ck_assert_msg(r == 0, "subscribing after the restart: %s", shmb_strerror(r));
        shmb_close(sub);
        ck_assert_int_eq(shmb_channel_check(pub), -EIDRM);
        shmb_close(pub);
        e = status_of("feed", &resp);
        ck_assert_msg(json_array_size(json_object_get(e, "clients")) == 0, "a hold is left with no handle open: %zu",
                      json_array_size(json_object_get(e, "clients")));
        json_decref(resp);
        r = shmb_open(c, "feed", SHMB_RO, &sub);
        ck_assert_msg(r == 0, "subscribing with no handle of c open: %s", shmb_strerror(r));
        shmb_close(sub);
        shmb_disconnect(c);
}
END_TEST

typedef struct RacingOpen {
        shmb_client *c;
        pthread_barrier_t go;
        shmb_channel *ch;
        int r;
} RacingOpen;

static void *racing_open(void *userdata) {
        RacingOpen *o = userdata;

        pthread_barrier_wait(&o->go);
        o->r = shmb_open(o->c, "feed", SHMB_RW, &o->ch);
        return NULL;
}

/*
 * A subscriber's close racing another thread's publisher open of the same
 * channel on the same client. Whatever the open answers, once both handles
 * are closed the broker lists no hold of the connection: a close that left
 * its hold to the pending open, which the broker then refused (-EBUSY: one
 * connection is not publisher and subscriber at once), leaked it. A race:
 * many rounds (before the fix one leaked within 8 to 663).
 */
START_TEST(test_close_racing_an_open_leaves_no_hold) {
        RacingOpen o = {};
        json_t *resp, *e;
        pthread_t t;

        ck_assert_int_eq(shmb_connect(NULL, &o.c), 0);
        for (int i = 0; i < 2000; i++) {
                shmb_channel *sub;

                ck_assert_int_eq(shmb_open(o.c, "feed", SHMB_RO, &sub), 0);
                ck_assert_int_eq(pthread_barrier_init(&o.go, NULL, 2), 0);
                o.ch = NULL;
                ck_assert_int_eq(pthread_create(&t, NULL, racing_open, &o), 0);
                pthread_barrier_wait(&o.go);
                ck_assert_int_eq(shmb_close(sub), 0);
                ck_assert_int_eq(pthread_join(t, NULL), 0);
                pthread_barrier_destroy(&o.go);
                ck_assert_msg(o.r == 0 || o.r == -EBUSY, "round %d: the open said %s", i, shmb_strerror(o.r));
                if (o.ch)
                        ck_assert_int_eq(shmb_close(o.ch), 0);
                e = status_of("feed", &resp);
                ck_assert_msg(json_array_size(json_object_get(e, "clients")) == 0,
                              "round %d: every handle closed (the open said %s), yet %zu hold(s) listed", i,
                              shmb_strerror(o.r), json_array_size(json_object_get(e, "clients")));
                json_decref(resp);
        }
        shmb_disconnect(o.c);
}
END_TEST

/* The system call thread tid of this process is blocked in (-1 while it runs). */
static long blocked_in(pid_t tid) {
        char path[64], text[64] = "";
        FILE *f;

        snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int) tid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        if (!fgets(text, sizeof text, f))
                text[0] = '\0';
        fclose(f);
        return strncmp(text, "running", 7) == 0 ? -1 : strtol(text, NULL, 10);
}

/* Wait (5 s at most) until thread tid is blocked in system call nr, or in alt. */
static void wait_blocked_in(pid_t tid, long nr, long alt, const char *what) {
        for (int i = 0; i < 5000; i++) {
                long now = blocked_in(tid);

                if (now == nr || now == alt)
                        return;
                usleep(1000);
        }
        ck_abort_msg("%s never blocked (system call %ld)", what, blocked_in(tid));
}

typedef struct Queued {
        shmb_client *c;
        shmb_channel *ch;
        pid_t tid;
        int r;
} Queued;

static void *queued_status(void *userdata) {
        Queued *q = userdata;
        shmb_status_list *l = NULL;

        __atomic_store_n(&q->tid, gettid(), __ATOMIC_RELEASE);
        q->r = shmb_status(q->c, "feed", &l);
        shmb_status_free(l);
        return NULL;
}

static void *queued_open(void *userdata) {
        Queued *q = userdata;

        __atomic_store_n(&q->tid, gettid(), __ATOMIC_RELEASE);
        q->r = shmb_open(q->c, "feed", SHMB_RW, &q->ch);
        return NULL;
}

static void *queued_close(void *userdata) {
        Queued *q = userdata;

        __atomic_store_n(&q->tid, gettid(), __ATOMIC_RELEASE);
        q->r = shmb_close(q->ch);
        return NULL;
}

static pid_t tid_of(Queued *q) {
        pid_t tid;

        while ((tid = __atomic_load_n(&q->tid, __ATOMIC_ACQUIRE)) == 0)
                usleep(1000);
        return tid;
}

/*
 * The race above, made to happen every time. An open lists its handle,
 * then sends its request; a close of another handle of the same name on
 * the same client that comes in between must not count the listed, not yet
 * granted handle as holding the broker's hold: it gives the hold back,
 * and the open (a publisher's, after a subscriber's close) is granted.
 * Counted as holding, the close sends nothing, the broker refuses the open
 * (-EBUSY: still a subscriber), and a hold is left for no handle.
 *
 * The order is forced: with the broker stopped, a status call holds the
 * client's lock; the open waits for the lock, then the close. Released,
 * the open lists its handle and lets the lock go, which wakes the close:
 * on the same CPU at a real-time priority, it runs at once, before the
 * open takes the lock again to send its request.
 */
START_TEST(test_close_between_an_open_and_its_request_gives_the_hold_back) {
        Queued x = {}, o = {}, cl = {};
        struct sched_param rt = { .sched_priority = 1 };
        pthread_t tx, to, tc;
        pthread_attr_t one_cpu;
        cpu_set_t cpus, cpu;
        json_t *resp, *e;
        int cpu_nr = 0;

        ck_assert_int_eq(sched_getaffinity(0, sizeof cpus, &cpus), 0);
        while (!CPU_ISSET(cpu_nr, &cpus))
                cpu_nr++;
        CPU_ZERO(&cpu);
        CPU_SET(cpu_nr, &cpu);
        ck_assert_int_eq(pthread_attr_init(&one_cpu), 0);
        ck_assert_int_eq(pthread_attr_setaffinity_np(&one_cpu, sizeof cpu, &cpu), 0);

        ck_assert_int_eq(shmb_connect(NULL, &x.c), 0);
        o.c = cl.c = x.c;
        ck_assert_int_eq(shmb_open(x.c, "feed", SHMB_RO, &cl.ch), 0);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        ck_assert_int_eq(pthread_create(&tx, NULL, queued_status, &x), 0);
        wait_blocked_in(tid_of(&x), SYS_recvmsg, SYS_poll, "the status call");
        ck_assert_int_eq(pthread_create(&to, &one_cpu, queued_open, &o), 0);
        wait_blocked_in(tid_of(&o), SYS_futex, SYS_futex, "the open");
        ck_assert_int_eq(pthread_create(&tc, &one_cpu, queued_close, &cl), 0);
        wait_blocked_in(tid_of(&cl), SYS_futex, SYS_futex, "the close");
        /* Raised once queued: a waiter's place among a lock's waiters is taken by its priority then. */
        ck_assert_int_eq(pthread_setschedparam(tc, SCHED_FIFO, &rt), 0);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        ck_assert_int_eq(pthread_join(tx, NULL), 0);
        ck_assert_int_eq(pthread_join(tc, NULL), 0);
        ck_assert_int_eq(pthread_join(to, NULL), 0);
        pthread_attr_destroy(&one_cpu);

        ck_assert_int_eq(x.r, 0);
        ck_assert_int_eq(cl.r, 0);
        ck_assert_msg(o.r == 0, "the publisher's open after the subscriber's close said %s", shmb_strerror(o.r));
        ck_assert_int_eq(shmb_close(o.ch), 0);
        e = status_of("feed", &resp);
        ck_assert_msg(json_array_size(json_object_get(e, "clients")) == 0, "every handle closed, yet %zu hold(s) listed",
                      json_array_size(json_object_get(e, "clients")));
        json_decref(resp);
        shmb_disconnect(x.c);
}
END_TEST

/* ---- the daemon against scribbled segments ---- */

/*
 * README, "Security and threat model": a peer that may write a ring's or a
 * broadcast channel's segment (an rw opener, a publisher) can garble its
 * messages but cannot stop the daemon. The daemon reads those segments
 * too: holder tables (opens, closes, a client's exit, a crash restart's
 * sweep), cursors and head (status), the header (adoption, removal). Here
 * this process, as root, writes edge values into every word of them in
 * seeded rounds (SHMB_SCRIBBLE_SEED picks another sequence), and drives
 * the daemon through each of those paths after every round. Every request
 * must get a valid answer within a few seconds (SCRIBBLE_ANSWER_MS); a
 * status's subscriber figures must stay what a clamp to head gives, for a
 * subscription held throughout as for forged ones; adoption must never
 * take a segment the header names that is not the channel's own; and at
 * the end the daemon stops cleanly, leaving nothing behind. Run under
 * the sanitizers, their reports fail it too.
 */

#define SCRIBBLE_ROUNDS 12
/*
 * Each request is answered at once: a few ms here, under ASan too, as is
 * each of the exiting client's opens. 10 s, twice the helpers' bound for
 * any answer (READ_TIMEOUT_MS), leaves a loaded CI machine and a daemon
 * under valgrind room, yet a request that a garbled figure sent into a
 * long loop or a wait fails here, not only one that hangs.
 */
#define SCRIBBLE_ANSWER_MS 10000
#define SCRIBBLE_SUBSCRIBERS 4

static const char *const scribble_config_fmt =
        "[{\"name\": \"ring1\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8, \"mode\": \"%s\"},"
        " {\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4},"
        " {\"name\": \"feed\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4,"
        "  \"overflow\": \"%s\"}]";

static const char *const scribble_names[] = { "ring1", "news", "feed" };

typedef struct Scribbler {
        uint64_t seed, state;
        unsigned round;
        char what[256];                 /* what the last scribble wrote, for messages */
} Scribbler;

static uint64_t scr_next(Scribbler *s) {
        uint64_t z = (s->state += UINT64_C(0x9e3779b97f4a7c15));

        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

static uint32_t scr_below(Scribbler *s, uint32_t n) {
        return (uint32_t) (scr_next(s) % n);
}

/* An edge value of a 64-bit position, around `near` (a head) too: laps ahead and behind. */
static uint64_t scr_u64(Scribbler *s, uint64_t near, uint32_t slots) {
        switch (scr_below(s, 12)) {
        case 0: return 0;
        case 1: return ~UINT64_C(0);
        case 2: return INT64_MAX;
        case 3: return (uint64_t) INT64_MAX + 1;
        case 4: return near + 1;
        case 5: return near + (uint64_t) slots * (1 + scr_below(s, 3));
        case 6: return near - (uint64_t) slots * (1 + scr_below(s, 3));
        case 7: return near - 1;
        case 8: return UINT32_MAX;
        case 9: return (uint64_t) UINT32_MAX + 1;
        case 10: return near;
        default: return scr_next(s);
        }
}

static uint32_t scr_u32(Scribbler *s) {
        switch (scr_below(s, 10)) {
        case 0: return 0;
        case 1: return UINT32_MAX;
        case 2: return INT32_MAX;
        case 3: return (uint32_t) INT32_MAX + 1;
        case 4: return RING_HOLDERS;
        case 5: return RING_HOLDERS + 1;
        case 6: return 1;
        case 7: return 1u << RING_TOKEN_INDEX_BITS;
        case 8: return 3;
        default: return (uint32_t) scr_next(s);
        }
}

/* A holder entry's word: LIVE, DEAD, FREE or garbage, under an edge generation. */
static uint64_t scr_word(Scribbler *s) {
        static const uint32_t gens[] = { 0, 1, RING_TOKEN_GEN_MASK, RING_TOKEN_GEN_MASK + 1, UINT32_MAX };
        uint32_t gen = gens[scr_below(s, 5)], state;

        switch (scr_below(s, 5)) {
        case 0: state = RING_HOLDER_FREE; break;
        case 1: case 2: state = RING_HOLDER_LIVE; break;
        case 3: state = RING_HOLDER_DEAD; break;
        default: state = scr_u32(s); break;
        }
        return (uint64_t) gen << 32 | state;
}

/* Garble holder entries: most of them some rounds ("huge holder counts": every entry LIVE), a few otherwise. */
static void scr_holders(Scribbler *s, RingHolder *table, uint32_t n) {
        uint32_t k = scr_below(s, 4) == 0 ? n : 1 + scr_below(s, 8);

        for (uint32_t j = 0; j < k; j++) {
                RingHolder *e = &table[k == n ? j : scr_below(s, n)];

                e->word = scr_below(s, 3) == 0 ? (uint64_t) scr_u32(s) << 32 | RING_HOLDER_LIVE : scr_word(s);
                switch (scr_below(s, 6)) {
                case 0: e->pid = 0; break;
                case 1: e->pid = -1; break;
                case 2: e->pid = INT32_MAX; break;
                case 3: e->pid = INT32_MIN; break;
                case 4: e->pid = 1; break;
                default: e->pid = td.pid; break;
                }
                e->pidns = scr_below(s, 2) ? 0 : scr_u32(s);
                e->starttime = scr_below(s, 2) ? 0 : scr_u64(s, 0, 1);
                e->pidfs_ino = scr_below(s, 2) ? 0 : scr_u64(s, 0, 1);
        }
}

/* Garble a few words of the data area (slot headers, payloads) of a segment of size bytes, from offset. */
static void scr_data(Scribbler *s, void *seg, size_t offset, size_t size) {
        for (int k = 0; k < 16; k++) {
                size_t at = offset + (size_t) scr_below(s, (uint32_t) ((size - offset) / 8)) * 8;

                *(uint64_t *) ((char *) seg + at) = scr_word(s);
        }
}

/* The ids of the channels as the daemon reports them. */
typedef struct ScrIds {
        int shm[3], table[3];
        uint32_t key[3], table_key[3];
        /* The figures (the header up to head) and the table's header as the daemon wrote them, and of which ids. */
        int fig_shm[3], fig_table[3];
        uint8_t fig[3][64], table_fig[3][16];
} ScrIds;

/* A line to fd and its answer, which must come within SCRIBBLE_ANSWER_MS and be a JSON object with "ok". */
static json_t *scr_request(int fd, const char *line, const Scribbler *s) {
        int64_t deadline = test_now_ms() + SCRIBBLE_ANSWER_MS;
        char buf[1 << 16];
        size_t len = 0;
        json_error_t err;
        json_t *v;

        test_send(fd, line, strlen(line));
        test_send(fd, "\n", 1);
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int left = (int) (deadline - test_now_ms());
                ssize_t n;

                ck_assert_msg(left > 0 && poll(&p, 1, left) > 0,
                              "seed %" PRIu64 " round %u (%s): no answer to %s within %d ms", s->seed, s->round,
                              s->what, line, SCRIBBLE_ANSWER_MS);
                ck_assert_msg(len + 1 < sizeof buf, "answer to %s too long", line);
                n = recv(fd, buf + len, 1, 0);
                ck_assert_msg(n > 0, "seed %" PRIu64 " round %u (%s): connection ended (%s) instead of answering %s",
                              s->seed, s->round, s->what, n == 0 ? "EOF" : strerror(errno), line);
                if (buf[len] == '\n')
                        break;
                len++;
        }
        buf[len] = 0;
        v = json_loads(buf, 0, &err);
        ck_assert_msg(json_is_object(v) && json_is_boolean(json_object_get(v, "ok")),
                      "seed %" PRIu64 " round %u: not a valid answer to %s: %s", s->seed, s->round, line, buf);
        return v;
}

static json_t *scr_ask(const char *line, const Scribbler *s) {
        int fd = test_connect(td.socket);
        json_t *v = scr_request(fd, line, s);

        close(fd);
        return v;
}

/*
 * A status entry of a broadcast channel: every subscription's position at
 * most head, position + lag head, as the clamp to head gives; head is the
 * one the scribbler left (nobody publishes). The holder's subscription
 * (its entry and cursor put back as it wrote them) is among them, so the
 * figures are checked on one real entry at least, whatever the forged ones.
 */
static void scr_check_subscriptions(json_t *e, const char *name, uint64_t head, pid_t holder, const Scribbler *s) {
        json_t *a = json_object_get(e, "subscriptions"), *x;
        uint64_t shown_head = MIN(head, (uint64_t) INT64_MAX);
        size_t i, held = 0;

        /* Nothing here removes objects or takes the daemon's rights; an entry it could not read checks nothing. */
        ck_assert_msg(!json_object_get(e, "error"), "seed %" PRIu64 " round %u (%s): %s: status says: %s", s->seed,
                      s->round, s->what, name, json_string_value(json_object_get(e, "message")) ?: "(no message)");
        ck_assert_msg(json_is_array(a), "%s: no subscriptions array", name);
        json_array_foreach(a, i, x)
                held += test_jint(x, "pid") == holder;
        ck_assert_msg(held >= 1,
                      "seed %" PRIu64 " round %u (%s): %s: the subscription pid %d holds is not among the %zu listed",
                      s->seed, s->round, s->what, name, (int) holder, json_array_size(a));
        json_array_foreach(a, i, x) {
                json_int_t pos = test_jint(x, "position"), lag = test_jint(x, "lag"), dropped = test_jint(x, "dropped");

                ck_assert_msg(pos >= 0 && lag >= 0 && dropped >= 0 && test_jint(x, "pid") >= 0,
                              "seed %" PRIu64 " round %u (%s): %s: a negative figure", s->seed, s->round, s->what,
                              name);
                ck_assert_msg((uint64_t) pos <= shown_head,
                              "seed %" PRIu64 " round %u (%s): %s: position %" PRId64 " beyond head %" PRIu64,
                              s->seed, s->round, s->what, name, (int64_t) pos, head);
                if (head <= (uint64_t) INT64_MAX)
                        ck_assert_msg((uint64_t) pos + (uint64_t) lag == head,
                                      "seed %" PRIu64 " round %u (%s): %s: position %" PRId64 " + lag %" PRId64
                                      " is not head %" PRIu64, s->seed, s->round, s->what, name, (int64_t) pos,
                                      (int64_t) lag, head);
        }
}

/* Status of each channel and of all, and a list: all answered, all ok, subscriber figures sound. */
static void scr_drive_status(const uint64_t heads[3], ScrIds *ids, pid_t holder, const Scribbler *s) {
        char line[128];
        json_t *all, *v, *e;

        for (int c = 0; c < 3; c++) {
                snprintf(line, sizeof line, "{\"op\": \"status\", \"channel\": \"%s\"}", scribble_names[c]);
                v = scr_ask(line, s);
                test_assert_ok(v);
                e = test_must_find(v, scribble_names[c]);
                ids->shm[c] = (int) test_jint(e, "shm_id");
                ids->key[c] = (uint32_t) test_jint(e, "shm_key");
                ids->table[c] = c == 0 ? -1 : (int) test_jint(e, "table_id");
                ids->table_key[c] = c == 0 ? 0 : (uint32_t) test_jint(e, "table_key");
                if (c > 0 && heads)
                        scr_check_subscriptions(e, scribble_names[c], heads[c], holder, s);
                json_decref(v);
        }
        all = scr_ask("{\"op\": \"status\"}", s);
        test_assert_ok(all);
        for (int c = 1; c < 3 && heads; c++)
                scr_check_subscriptions(test_must_find(all, scribble_names[c]), scribble_names[c], heads[c], holder,
                                        s);
        json_decref(all);
        v = scr_ask("{\"op\": \"list\"}", s);
        test_assert_ok(v);
        json_decref(v);
}

static void *scr_attach(int id) {
        void *p = shmat(id, NULL, 0);

        ck_assert_msg(p != (void *) -1, "shmat %d: %s", id, strerror(errno));
        return p;
}

/*
 * A subscriber of news and of feed that a child process holds across the
 * rounds, so that every status after a scribble has one real subscription
 * to list. The scribbles put its entries and cursors back as they were (a
 * subscriber whose entry a writer garbled is rightly no longer listed);
 * every other entry they garble as before. The child subscribes again
 * when a reload or a crash restart made its channel anew.
 */
typedef struct ScrHolder {
        pid_t pid;
        int cmd, ans;                   /* pipes: a channel's index to the child, its open's result back */
        int shm[3], table[3];           /* the objects each subscription was made on */
} ScrHolder;

/* The holder's LIVE subscriber entries of h and their cursors in t (NULL: none). */
typedef struct ScrKept {
        uint32_t n, index[SCRIBBLE_SUBSCRIBERS];
        RingHolder entry[SCRIBBLE_SUBSCRIBERS];
        BcastCursor cursor[SCRIBBLE_SUBSCRIBERS];
} ScrKept;

static void scr_keep(ScrKept *k, const BcastHeader *h, const BcastTable *t, pid_t holder) {
        k->n = 0;
        for (uint32_t i = 0; i < SCRIBBLE_SUBSCRIBERS; i++) {
                const RingHolder *e = bcast_subscriber_at(h, i);

                if ((uint32_t) e->word != RING_HOLDER_LIVE || e->pid != holder)
                        continue;
                k->index[k->n] = i;
                k->entry[k->n] = *e;
                if (t)
                        k->cursor[k->n] = *bcast_cursor_at(t, i);
                k->n++;
        }
}

static void scr_put_back(const ScrKept *k, BcastHeader *h, BcastTable *t) {
        for (uint32_t j = 0; j < k->n; j++) {
                *bcast_subscriber_at(h, k->index[j]) = k->entry[j];
                if (t)
                        *bcast_cursor_at(t, k->index[j]) = k->cursor[j];
        }
}

/* The child: for each index read, (re)subscribe to that channel, and say how it went. */
static void scr_holder_child(int cmd, int ans) {
        shmb_channel *ch[3] = {};
        char c;

        while (read(cmd, &c, 1) == 1) {
                int k = c == 1 ? 1 : 2;
                int8_t r;

                (void) shmb_close(ch[k]);       /* a stale handle's close gives nothing back */
                ch[k] = NULL;
                r = (int8_t) shmb_open_channel(NULL, scribble_names[k], SHMB_RO, &ch[k]);
                if (write(ans, &r, 1) != 1)
                        break;
        }
        _exit(0);       /* EOF: the test is over (or failed); the holds end with the process */
}

static void scr_holder_start(ScrHolder *hd) {
        int cmd[2], ans[2];

        /* Close-on-exec: a daemon started later must not keep the child from seeing EOF. */
        ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(ans, O_CLOEXEC), 0);
        hd->pid = fork();
        ck_assert_int_ge(hd->pid, 0);
        if (hd->pid == 0) {
                close(cmd[1]);
                close(ans[0]);
                scr_holder_child(cmd[0], ans[1]);
        }
        close(cmd[0]);
        close(ans[1]);
        hd->cmd = cmd[1];
        hd->ans = ans[0];
        for (int c = 0; c < 3; c++)
                hd->shm[c] = hd->table[c] = -1;
}

/* Subscribe again where the channel's objects are not the ones the holder subscribed on (ids: just read). */
static void scr_holder_sync(ScrHolder *hd, const ScrIds *ids, const Scribbler *s) {
        for (int c = 1; c < 3; c++) {
                char k = (char) c;
                int8_t r = 0;
                struct pollfd p = { .fd = hd->ans, .events = POLLIN };

                if (hd->shm[c] == ids->shm[c] && hd->table[c] == ids->table[c])
                        continue;
                ck_assert_int_eq(write(hd->cmd, &k, 1), 1);
                ck_assert_msg(poll(&p, 1, SCRIBBLE_ANSWER_MS) == 1 && read(hd->ans, &r, 1) == 1,
                              "seed %" PRIu64 " round %u (%s): the holder's open of %s did not end", s->seed,
                              s->round, s->what, scribble_names[c]);
                ck_assert_msg(r == 0, "seed %" PRIu64 " round %u (%s): the holder could not subscribe to %s: %s",
                              s->seed, s->round, s->what, scribble_names[c], shmb_strerror(r));
                hd->shm[c] = ids->shm[c];
                hd->table[c] = ids->table[c];
        }
}

static void scr_holder_stop(ScrHolder *hd) {
        close(hd->cmd);
        wait_ok(hd->pid, "the holding subscriber");
        close(hd->ans);
}

/*
 * One round's writes into all three channels; heads[] gets each broadcast
 * channel's head as left. attack: the broadcast headers' table key and id
 * name other segments (another channel's table, the ring, garbage).
 */
static void scr_scribble(Scribbler *s, ScrIds *ids, bool attack, bool restore, pid_t holder, uint64_t heads[3]) {
        RingHeader *rh = scr_attach(ids->shm[0]);
        int n = 0;

        if (ids->fig_shm[0] != ids->shm[0]) {
                memcpy(ids->fig[0], rh, sizeof ids->fig[0]);
                ids->fig_shm[0] = ids->shm[0];
        }

        /* The ring: positions, futex words and flags always; its figures some rounds. */
        rh->head = scr_u64(s, rh->head, rh->slots);
        rh->tail = scr_u64(s, rh->head, 8);
        rh->data_seq = scr_u32(s);
        rh->space_seq = scr_u32(s);
        rh->recv_sleeping = scr_u32(s);
        rh->send_sleeping = scr_u32(s);
        rh->recv_cpu = scr_u32(s);
        rh->send_cpu = scr_u32(s);
        if (scr_below(s, 3) == 0) {
                rh->holders = scr_u32(s);
                rh->holders_offset = scr_u32(s);
        }
        if (scr_below(s, 6) == 0) {
                rh->slots = scr_u32(s);
                rh->slot_size = scr_u32(s);
                rh->slot_stride = scr_u32(s);
                rh->data_offset = scr_u32(s);
        }
        if (scr_below(s, 8) == 0)
                rh->state = scr_u32(s);
        scr_holders(s, ring_holder_at(rh, 0), RING_HOLDERS);
        scr_data(s, rh, RING_DATA_OFFSET, ring_segment_size(64, 8));
        if (restore)
                memcpy(rh, ids->fig[0], sizeof ids->fig[0]);
        n += snprintf(s->what + n, sizeof s->what - (size_t) n, "ring head %" PRIu64 " tail %" PRIu64 " state %u; ",
                      rh->head, rh->tail, rh->state);
        shmdt(rh);

        for (int c = 1; c < 3; c++) {
                BcastHeader *h = scr_attach(ids->shm[c]);
                BcastTable *t = scr_attach(ids->table[c]);
                RingHolder *subs = bcast_subscriber_at(h, 0);
                int other = c == 1 ? 2 : 1;
                ScrKept kept;

                if (ids->fig_shm[c] != ids->shm[c] || ids->fig_table[c] != ids->table[c]) {
                        memcpy(ids->fig[c], h, sizeof ids->fig[c]);
                        memcpy(ids->table_fig[c], t, sizeof ids->table_fig[c]);
                        ids->fig_shm[c] = ids->shm[c];
                        ids->fig_table[c] = ids->table[c];
                }
                scr_keep(&kept, h, t, holder);
                h->head = scr_u64(s, h->head, 8);
                h->data_seq = scr_u32(s);
                h->pub_cpu = scr_u32(s);
                if (scr_below(s, 3) == 0) {
                        h->subscribers = scr_u32(s);
                        h->publishers = scr_u32(s);
                        h->table_size = scr_u32(s);
                        h->overflow = scr_u32(s);
                }
                if (scr_below(s, 6) == 0) {
                        h->slots = scr_u32(s);
                        h->data_offset = scr_u32(s);
                        h->subscribers_offset = scr_u32(s);
                }
                if (scr_below(s, 10) == 0)
                        h->state = scr_u32(s);
                scr_holders(s, bcast_publisher_at(h, 0), BCAST_PUBLISHERS);
                scr_holders(s, subs, SCRIBBLE_SUBSCRIBERS);
                scr_data(s, h, bcast_data_offset(SCRIBBLE_SUBSCRIBERS), bcast_segment_size(256, 8, SCRIBBLE_SUBSCRIBERS));
                /* The table: its own header, and cursors, most carrying the token of a LIVE subscriber entry. */
                t->magic = scr_below(s, 4) ? t->magic : scr_u32(s);
                t->subscribers = scr_u32(s);
                t->sub_sleeping = scr_u32(s);
                t->pub_sleeping = scr_u32(s);
                t->space_seq = scr_u32(s);
                for (uint32_t i = 0; i < SCRIBBLE_SUBSCRIBERS; i++) {
                        BcastCursor *cur = bcast_cursor_at(t, i);
                        uint32_t gen = scr_u32(s);

                        if (scr_below(s, 4)) {
                                subs[i].word = (uint64_t) gen << 32 | RING_HOLDER_LIVE;
                                cur->token = ring_token(i, gen);
                        } else
                                cur->token = scr_u32(s);
                        cur->position = scr_u64(s, h->head, 8);
                        cur->sleeping = scr_u32(s);
                        cur->dropped = scr_u64(s, 0, 1);
                }
                scr_put_back(&kept, h, t);
                if (restore) {
                        memcpy(h, ids->fig[c], sizeof ids->fig[c]);
                        memcpy(t, ids->table_fig[c], sizeof ids->table_fig[c]);
                }
                if (attack || (!restore && scr_below(s, 4) == 0)) {
                        /* An attack round takes the cases in turn: the first names the other channel's table. */
                        switch (attack ? (s->round / 6 * 2 + (unsigned) c - 1) % 6 : scr_below(s, 6)) {
                        case 0: h->table_key = ids->table_key[other]; h->table_id = ids->table[other]; break;
                        case 1: h->table_key = ids->key[0]; h->table_id = ids->shm[0]; break;
                        case 2: h->table_id = ids->table[other]; break;
                        case 3: h->table_key = ids->table_key[other]; break;
                        case 4: h->table_key = ids->key[other]; h->table_id = ids->shm[other]; break;
                        default: h->table_key = scr_u32(s); h->table_id = (int32_t) scr_u32(s); break;
                        }
                }
                heads[c] = h->head;
                n += snprintf(s->what + n, sizeof s->what - (size_t) n,
                              "%s head %" PRIu64 " table 0x%08x/%d state %u; ", scribble_names[c], h->head,
                              h->table_key, h->table_id, h->state);
                shmdt(t);
                shmdt(h);
        }
}

/* Overwrite, again, the holder entries LIVE now (a client holds them) with edge words; the holder's put back. */
static void scr_flip_live(Scribbler *s, const ScrIds *ids, pid_t holder) {
        RingHeader *rh = scr_attach(ids->shm[0]);

        for (uint32_t i = 0; i < RING_HOLDERS; i++)
                if ((uint32_t) ring_holder_at(rh, i)->word == RING_HOLDER_LIVE && scr_below(s, 2))
                        ring_holder_at(rh, i)->word = scr_word(s);
        shmdt(rh);
        for (int c = 1; c < 3; c++) {
                BcastHeader *h = scr_attach(ids->shm[c]);
                ScrKept kept;

                scr_keep(&kept, h, NULL, holder);
                for (uint32_t i = 0; i < BCAST_PUBLISHERS; i++)
                        if ((uint32_t) bcast_publisher_at(h, i)->word == RING_HOLDER_LIVE && scr_below(s, 2))
                                bcast_publisher_at(h, i)->word = scr_word(s);
                for (uint32_t i = 0; i < SCRIBBLE_SUBSCRIBERS; i++)
                        if ((uint32_t) bcast_subscriber_at(h, i)->word == RING_HOLDER_LIVE && scr_below(s, 2))
                                bcast_subscriber_at(h, i)->word = scr_word(s);
                scr_put_back(&kept, h, NULL);
                shmdt(h);
        }
}

/* A token to ask for back ("holder"): an edge value, or one a LIVE entry of table carries (anyone can read them). */
static uint32_t scr_want(Scribbler *s, const RingHolder *table, uint32_t n) {
        uint32_t i = scr_below(s, n);

        switch (scr_below(s, 6)) {
        case 0: return 0;
        case 1: return UINT32_MAX;
        case 2: return RING_HOLDERS + 1;
        case 3: return (1u << RING_TOKEN_INDEX_BITS) - 1;
        default: return (uint32_t) table[i].word == RING_HOLDER_LIVE ? ring_token(i, (uint32_t) (table[i].word >> 32)) :
                                                                       scr_u32(s);
        }
}

/*
 * rw opens of each channel and an ro one of each broadcast one on one
 * connection, which then closes: some ask for a token back, as a client
 * after a restart does.
 */
static void scr_drive_opens(Scribbler *s, const ScrIds *ids) {
        int fd = test_connect(td.socket);
        char line[200];

        for (int c = 0; c < 3; c++)
                for (int ro = 0; ro < 2; ro++) {
                        void *h = scr_attach(ids->shm[c]);
                        const RingHolder *table = c == 0 ? ring_holder_at(h, 0) :
                                                  ro ? bcast_subscriber_at(h, 0) : bcast_publisher_at(h, 0);
                        uint32_t want = scr_want(s, table, c > 0 && ro ? SCRIBBLE_SUBSCRIBERS : RING_HOLDERS);
                        int n = snprintf(line, sizeof line, "{\"op\": \"open\", \"channel\": \"%s\", \"access\": \"%s\"",
                                         scribble_names[c], ro ? "ro" : "rw");

                        shmdt(h);
                        snprintf(line + n, sizeof line - (size_t) n, want ? ", \"holder\": %" PRIu32 "}" : "}", want);
                        json_decref(scr_request(fd, line, s));
                }
        close(fd);
}

/*
 * A client process that opens every channel through the library (what it
 * is refused does not matter), lets the parent garble the entries it
 * holds, and exits holding them: the daemon's exit watch ends its holds.
 */
static void scr_drive_exiting_client(Scribbler *s, const ScrIds *ids, pid_t holder) {
        int up[2], down[2];
        pid_t pid;
        char c = 0;

        ck_assert_int_eq(pipe(up), 0);
        ck_assert_int_eq(pipe(down), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *ch[5] = {};

                close(up[0]);
                close(down[1]);
                (void) shmb_open_channel(NULL, "ring1", SHMB_RW, &ch[0]);
                (void) shmb_open_channel(NULL, "news", SHMB_RW, &ch[1]);
                (void) shmb_open_channel(NULL, "news", SHMB_RO, &ch[2]);
                (void) shmb_open_channel(NULL, "feed", SHMB_RW, &ch[3]);
                (void) shmb_open_channel(NULL, "feed", SHMB_RO, &ch[4]);
                (void) !write(up[1], "r", 1);
                (void) !read(down[0], &c, 1);
                _exit(0);       /* holding them all */
        }
        close(up[1]);
        close(down[0]);
        {
                struct pollfd p = { .fd = up[0], .events = POLLIN };

                ck_assert_msg(poll(&p, 1, SCRIBBLE_ANSWER_MS) == 1 && read(up[0], &c, 1) == 1,
                              "seed %" PRIu64 " round %u (%s): the client's opens did not end", s->seed, s->round,
                              s->what);
        }
        scr_flip_live(s, ids, holder);
        /* Asked while the client still lives: its holds are listed from the garbled entries. */
        json_decref(scr_ask("{\"op\": \"status\"}", s));
        close(down[1]);
        wait_ok(pid, "the exiting client");
        close(up[0]);
}

/*
 * A reload that flips feed's overflow, replacing it (marked removed, its
 * sleepers woken), and the ring's mode, which replaces it too while it
 * is attached (a right may be taken away).
 */
static void scr_drive_reload(const Scribbler *s, bool drop) {
        char config[1024];
        json_t *v;

        snprintf(config, sizeof config, scribble_config_fmt, drop ? "0660" : "0600", drop ? "drop" : "block");
        test_daemon_write_config(&td, config);
        v = scr_ask("{\"op\": \"reload\"}", s);
        test_assert_ok(v);
        json_decref(v);
}

/* Whether the daemon's log so far has a sanitizer's report in it (the whole log, however long). */
static void scr_check_log(const Scribbler *s) {
        FILE *f = fopen(td.log, "re");
        char line[4096];

        if (!f)
                return;
        while (fgets(line, sizeof line, f))
                ck_assert_msg(!strstr(line, "runtime error:") && !strstr(line, "AddressSanitizer") &&
                              !strstr(line, "LeakSanitizer") && !strstr(line, "UndefinedBehaviorSanitizer"),
                              "seed %" PRIu64 " round %u (%s): the daemon's log has a sanitizer report: %s", s->seed,
                              s->round, s->what, line);
        fclose(f);
}

/* A crash restart's start: it must come up; when it does not, its log's end says why (a report may be long). */
static void scr_restart(const Scribbler *s) {
        int status = 0;
        char *log, *report;
        size_t len;

        if (test_daemon_start(&td, &status, NULL))
                return;
        log = test_daemon_log(&td);
        len = strlen(log);
        report = strstr(log, "ERROR: AddressSanitizer") ?: strstr(log, "runtime error:");
        ck_abort_msg("seed %" PRIu64 " round %u (%s): the daemon exited (status 0x%x) before READY; its log %s:\n%.1500s",
                     s->seed, s->round, s->what, status, report ? "reports" : "ends",
                     report ?: len > 1500 ? log + len - 1500 : log);
}

START_TEST(test_daemon_survives_scribbled_segments) {
        const char *env = getenv("SHMB_SCRIBBLE_SEED");
        Scribbler s = { .seed = env && *env ? strtoull(env, NULL, 0) : UINT64_C(0x5eed0fdae3075) };
        char config[1024];
        bool drop = true;
        ScrIds ids = { .fig_shm = { -1, -1, -1 }, .fig_table = { -1, -1, -1 } };
        ScrHolder hd;

        s.state = s.seed;
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        snprintf(config, sizeof config, scribble_config_fmt, "0660", "drop");
        test_daemon_write_config(&td, config);
        test_start_ok();
        scr_holder_start(&hd);
        scr_drive_status(NULL, &ids, hd.pid, &s);
        scr_holder_sync(&hd, &ids, &s);
        for (s.round = 0; s.round < SCRIBBLE_ROUNDS; s.round++) {
                /* Every third round a crash restart: on the header as the daemon wrote it, or naming other tables. */
                bool restart = s.round % 3 == 2, attack = restart && s.round % 2 == 0;
                uint64_t heads[3] = {};
                ScrIds before;

                s.what[0] = 0;
                scr_scribble(&s, &ids, attack, restart, hd.pid, heads);
                scr_drive_status(heads, &ids, hd.pid, &s);
                scr_drive_opens(&s, &ids);
                scr_drive_exiting_client(&s, &ids, hd.pid);
                scr_drive_status(NULL, &ids, hd.pid, &s);
                if (s.round % 3 == 1) {
                        drop = !drop;
                        scr_drive_reload(&s, drop);
                        scr_drive_status(NULL, &ids, hd.pid, &s);
                        scr_holder_sync(&hd, &ids, &s);
                }
                if (restart) {
                        before = ids;
                        test_daemon_kill(&td, SIGKILL);
                        scr_restart(&s);
                        scr_drive_status(NULL, &ids, hd.pid, &s);
                        for (int c = 0; c < 3; c++) {
                                /* Every object is one channel's: none taken by two. */
                                for (int d = 0; d < 3; d++) {
                                        ck_assert_msg(c == d || (ids.shm[c] != ids.shm[d] && ids.shm[c] != ids.table[d]),
                                                      "seed %" PRIu64 " round %u (%s): %s and %s share a segment",
                                                      s.seed, s.round, s.what, scribble_names[c], scribble_names[d]);
                                }
                                /* Taken over (the same data segment): with the table it had, never one named. */
                                ck_assert_msg(c == 0 || ids.shm[c] != before.shm[c] || ids.table[c] == before.table[c],
                                              "seed %" PRIu64 " round %u (%s): %s taken over with table %d, not its "
                                              "own %d", s.seed, s.round, s.what, scribble_names[c], ids.table[c],
                                              before.table[c]);
                                /* Its figures as the daemon wrote them: taken over, whatever its tables and cursors say. */
                                ck_assert_msg(attack || ids.shm[c] == before.shm[c],
                                              "seed %" PRIu64 " round %u (%s): %s not taken over (shm id %d, was %d)",
                                              s.seed, s.round, s.what, scribble_names[c], ids.shm[c], before.shm[c]);
                        }
                        scr_holder_sync(&hd, &ids, &s);
                }
                scr_check_log(&s);
                /* What each round wrote, to follow a seed's run. */
                if (getenv("SHMB_SCRIBBLE_VERBOSE"))
                        fprintf(stderr, "seed %" PRIu64 " round %u: %s\n", s.seed, s.round, s.what);
        }
        /* Before the stop: a segment still attached outlives its removal. */
        scr_holder_stop(&hd);
        test_daemon_stop_ok(&td);
        scr_check_log(&s);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

int main(void) {
        const TestGroup groups[] = {
                { "open", CASE_TIMEOUT, { test_open_answer_and_segments, test_ro_cannot_publish,
                            test_unprivileged_subscriber } },
                { "delivery", CASE_TIMEOUT, { test_one_subscriber_gets_all_in_order, test_three_subscribers_two_publishers,
                                test_late_subscriber_sees_only_later } },
                { "block", CASE_TIMEOUT, { test_block_publisher_waits_for_slowest,
                             test_block_killed_subscriber_stops_blocking } },
                { "wake", CASE_TIMEOUT, { test_sleeping_subscriber_is_woken_by_publish,
                            test_block_sleeping_publisher_is_woken, test_block_sleeping_publisher_is_woken_by_a_close,
                            test_no_system_call_per_message,
                            test_subscriber_beside_the_publisher_does_not_spin } },
                { "drop", CASE_TIMEOUT, { test_drop_never_blocks_and_counts_exactly, test_drop_accounting_under_load } },
                { "zero-copy", CASE_TIMEOUT, { test_zero_copy_in_place, test_zero_copy_misuse_takes_nothing,
                                 test_release_of_a_consumed_peek_a_lap_later,
                                 test_one_mib_frame_to_three_subscribers,
                                 test_large_channel_mapped_at_open,
                                 test_zero_copy_both_sides_across_processes, test_publisher_killed_mid_reserve } },
                { "zero-copy-close", CASE_TIMEOUT, { test_close_ends_reservation_of_a_shared_hold,
                                 test_forked_child_close_leaves_parents_reservation } },
                { "limits", CASE_TIMEOUT, { test_subscriber_limit, test_forged_table_costs_only_messages,
                                            test_future_claim_does_not_outlast_the_timeout } },
                { "removal", CASE_TIMEOUT, { test_removal_wakes_sleepers,
                                             test_objects_removed_while_broker_is_away_wake_sleepers,
                                             test_sliced_waits_see_objects_removed_while_broker_is_away,
                                             test_interrupted_waits_see_objects_removed_while_broker_is_away,
                                             test_stop_marks_removed_before_its_first_wakeup } },
                { "admin", CASE_TIMEOUT, { test_status_shows_subscribers_lag, test_status_semaphores_skip_the_channels_own, test_reload_replaces_changed_broadcast,
                             test_reload_replaces_broadcast_of_same_size_other_subscribers,
                             test_crash_restart_adopts_broadcast,
                             test_crash_restart_trusts_no_table_a_publisher_names,
                             test_crash_restart_with_removed_table_makes_anew,
                             test_status_sees_a_removed_table,
                             test_subscription_closed_after_crash_frees_its_place,
                             test_refused_open_after_restart_leaves_no_hold,
                             test_close_racing_an_open_leaves_no_hold,
                             test_close_between_an_open_and_its_request_gives_the_hold_back } },
                { "forged-holders", CASE_TIMEOUT, { test_broadcast_holder_tables_forged_before_a_crash_refuse_no_opens } },
                { "forged-holders-live", CASE_TIMEOUT, { test_broadcast_holder_entries_forged_free_or_live_while_running,
                                                         test_broadcast_holder_entries_forged_dead_while_running_are_not_handed_out } },
                { "programs", CASE_TIMEOUT, { test_examples_publish_to_two_subscribers } },
                { "hostile-fd", CASE_TIMEOUT, { test_cleared_flag_does_not_strand_an_event_loop_subscriber,
                                                test_cleared_flag_does_not_strand_an_event_loop_publisher } },
                { "scribbled-daemon", 300, { test_daemon_survives_scribbled_segments } },
        };

        return test_main("broadcast", groups, sizeof groups / sizeof groups[0], setup, test_teardown);
}
