/*
 * Client library tests: several processes (fork) using libshmbroker against
 * the real daemon, each test in its own IPC namespace. Also the examples
 * and shmbrokerctl, run as programs.
 */

#include <check.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/sem.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* After <sys/ptrace.h>: struct ptrace_syscall_info, which glibc does not declare. */
#include <linux/ptrace.h>

#include <shmbroker/shmbroker.h>

#include "proto/ring.h"
#include "tests/client-helpers.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 60

static const char *const channels =
        "[{\"name\": \"counter\", \"size\": 4096},"
        " {\"name\": \"pair\", \"size\": 65536, \"semaphores\": [1, 0]},"
        " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8},"
        " {\"name\": \"secret\", \"size\": 4096, \"mode\": \"0600\"},"
        " {\"name\": \"public\", \"size\": 4096, \"mode\": \"0644\"}]";


static void setup(void) {
        test_setup();
        test_daemon_write_config(&td, channels);
        test_start_ok();
        setenv("SHMBROKER_SOCKET", td.socket, 1);
}

static void wait_children(pid_t *pids, int n) {
        for (int i = 0; i < n; i++) {
                int status;

                ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
                ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %d", i, status);
        }
}

/* ---- connect and open ---- */

START_TEST(test_open_attaches_and_matches_kernel) {
        shmb_channel *ch = test_open_ok("pair", SHMB_RW);
        struct shmid_ds ds;

        ck_assert_str_eq(shmb_channel_name(ch), "pair");
        ck_assert_uint_eq(shmb_channel_size(ch), 65536);
        ck_assert_uint_eq(shmb_channel_nsems(ch), 2);
        ck_assert_int_eq(shmb_channel_layout(ch), SHMB_LAYOUT_RAW);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(ch), IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_nattch, 2);    /* the daemon's and ours */
        memset(shmb_channel_addr(ch), 0xab, 65536);
        int id = shmb_channel_shm_id(ch);
        ck_assert_int_eq(shmb_close(ch), 0);
        ck_assert_int_eq(shmctl(id, IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_nattch, 1);    /* detached */
}
END_TEST

START_TEST(test_open_errors) {
        shmb_channel *ch = NULL;
        shmb_client *c;

        ck_assert_int_eq(shmb_open_channel(NULL, "nope", SHMB_RW, &ch), -ENOENT);
        ck_assert_ptr_null(ch);
        ck_assert_int_eq(shmb_open_channel(NULL, "bad name", SHMB_RW, &ch), -EINVAL);
        ck_assert_int_eq(shmb_open_channel("/nonexistent/sock", "pair", SHMB_RW, &ch), -ENOENT);
        unsetenv("SHMBROKER_SOCKET");
        ck_assert_int_ne(shmb_open_channel(NULL, "pair", SHMB_RW, &ch), 0);    /* the default path is not ours */
        setenv("SHMBROKER_SOCKET", td.socket, 1);

        ck_assert_int_eq(shmb_connect(NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "nope", SHMB_RO, &ch), -ENOENT);
        ck_assert_ptr_nonnull(strstr(shmb_client_last_message(c), "nope"));
        shmb_disconnect(c);
        ck_assert_ptr_nonnull(strstr(shmb_strerror(-EXDEV), "namespace"));
        ck_assert_str_eq(shmb_errno_name(-EACCES), "EACCES");
        /* Any int, even one whose negation overflows (the UBSan build traps on that). */
        ck_assert_str_eq(shmb_strerror(INT_MIN), "unknown error");
        /* The C library's sentence for an errno of its own; none of a per-thread buffer for a number that is none. */
        ck_assert_str_eq(shmb_strerror(-ENOSPC), strerror(ENOSPC));
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
        ck_assert_str_eq(shmb_strerror(-4000), "unknown error");
#endif
        ck_assert_ptr_null(shmb_errno_name(INT_MIN));
}
END_TEST

static void refused_child(void *userdata) {
        shmb_channel *ch;

        test_drop_privileges(65534, 65534, 0);
        _exit(shmb_open_channel(NULL, (const char *) userdata, SHMB_RO, &ch) == -EACCES ? 0 : 1);
}

START_TEST(test_open_without_rights_is_eacces) {
        int status = test_in_child(refused_child, (void *) "secret");

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
}
END_TEST

static void other_namespace_child(void *userdata) {
        shmb_channel *ch;

        if (unshare(CLONE_NEWIPC) < 0)
                _exit(2);
        _exit(shmb_open_channel(NULL, "pair", SHMB_RW, &ch) == -EXDEV ? 0 : 1);
}

START_TEST(test_other_namespace_is_exdev) {
        int status = test_in_child(other_namespace_child, NULL);

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
}
END_TEST

static void ro_write_child(void *userdata) {
        shmb_channel *ch;

        if (shmb_open_channel(NULL, "public", SHMB_RO, &ch) < 0)
                _exit(2);
        if (shmb_sem_post(ch, 0) != -EACCES)
                _exit(3);
        /* The kernel's verdict, not a sanitizer's handler: die of the signal. */
        signal(SIGSEGV, SIG_DFL);
        *(volatile char *) shmb_channel_addr(ch) = 1;    /* must fault */
        _exit(4);
}

START_TEST(test_write_through_ro_handle_faults) {
        int status = test_in_child(ro_write_child, NULL);

        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "status %d", status);
}
END_TEST

START_TEST(test_hold_dropped_when_process_exits) {
        shmb_client *c;
        shmb_status_list *l;
        pid_t pid = fork();

        if (pid == 0) {
                shmb_channel *ch;

                _exit(shmb_open_channel(NULL, "counter", SHMB_RW, &ch) == 0 ? 0 : 1);  /* exit without close */
        }
        wait_children(&pid, 1);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        for (int tries = 0;; tries++) {
                ck_assert_int_eq(shmb_status(c, "counter", &l), 0);
                ck_assert_uint_eq(shmb_status_count(l), 1);
                size_t holders = shmb_status_nclients(l, 0);
                shmb_status_free(l);
                if (holders == 0)
                        break;
                ck_assert_msg(tries < 100, "a dead process still holds the channel");
                usleep(10000);
        }
        shmb_disconnect(c);
}
END_TEST

/* ---- semaphores ---- */

#define WORKERS 4
#define INCREMENTS 2000

START_TEST(test_lock_counts_exactly) {
        pid_t pids[WORKERS];
        shmb_channel *ch;

        for (int i = 0; i < WORKERS; i++) {
                pids[i] = fork();
                ck_assert_int_ge(pids[i], 0);
                if (pids[i] == 0) {
                        shmb_channel *mine;

                        if (shmb_open_channel(NULL, "counter", SHMB_RW, &mine) < 0)
                                _exit(2);
                        volatile long *counter = shmb_channel_addr(mine);
                        for (int k = 0; k < INCREMENTS; k++) {
                                if (shmb_lock(mine, 0, 10000) < 0)
                                        _exit(3);
                                long v = *counter;
                                if (k % 64 == 0)
                                        sched_yield();  /* widen the window a missing lock would show */
                                *counter = v + 1;
                                if (shmb_unlock(mine, 0) < 0)
                                        _exit(4);
                        }
                        _exit(shmb_close(mine) == 0 ? 0 : 5);
                }
        }
        wait_children(pids, WORKERS);
        ch = test_open_ok("counter", SHMB_RO);
        ck_assert_int_eq(*(long *) shmb_channel_addr(ch), WORKERS * INCREMENTS);
        shmb_close(ch);
}
END_TEST

START_TEST(test_killed_lock_holder_releases_lock) {
        int ready[2];
        char c;
        pid_t pid;
        shmb_channel *ch;

        ck_assert_int_eq(pipe(ready), 0);
        pid = fork();
        if (pid == 0) {
                shmb_channel *mine;

                if (shmb_open_channel(NULL, "counter", SHMB_RW, &mine) < 0 || shmb_lock(mine, 0, 1000) < 0)
                        _exit(2);
                write(ready[1], "x", 1);
                pause();
                _exit(0);
        }
        close(ready[1]);        /* a child that fails is EOF here, not a wait until the case times out */
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        ch = test_open_ok("counter", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);         /* really held */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 2000), 0);            /* SEM_UNDO gave it back */
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        shmb_close(ch);
}
END_TEST

START_TEST(test_timeouts_fire) {
        shmb_channel *pair = test_open_ok("pair", SHMB_RW), *ring = test_open_ok("ring", SHMB_RW);
        char buf[256];
        int64_t t;

        ck_assert_int_eq(shmb_sem_trywait(pair, 1), -EAGAIN);
        t = test_now_ms();
        ck_assert_int_eq(shmb_sem_wait(pair, 1, 150), -ETIMEDOUT);
        ck_assert_int_ge(test_now_ms() - t, 140);
        ck_assert_int_eq(shmb_sem_wait(pair, 5, 0), -EINVAL);

        /* The longest spin allowed still ends at the caller's timeout (nothing was sent: no peer CPU to avoid). */
        ck_assert_int_eq(shmb_channel_set_spin(ring, SHMB_SPIN_MAX_US), 0);
        t = test_now_ms();
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 50), -ETIMEDOUT);
        ck_assert_int_ge(test_now_ms() - t, 45);
        ck_assert_int_lt(test_now_ms() - t, 500);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), -EAGAIN);
        t = test_now_ms();
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 150), -ETIMEDOUT);
        ck_assert_int_ge(test_now_ms() - t, 140);
        for (int i = 0; i < 8; i++)
                ck_assert_int_eq(shmb_send(ring, "x", 1, 0), 0);
        ck_assert_int_eq(shmb_send(ring, "x", 1, 0), -EAGAIN);  /* full */
        t = test_now_ms();
        ck_assert_int_eq(shmb_send(ring, "x", 1, 150), -ETIMEDOUT);
        ck_assert_int_ge(test_now_ms() - t, 140);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), 1);
        ck_assert_int_eq(shmb_send(ring, "x", 1, 0), 0);        /* room again */
        /* Refused calls take nothing, with room in the ring and messages in it: exactly 6 stay. */
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), 1);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), 1);
        ck_assert_int_eq(shmb_send(ring, buf, 257, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_send(ring, NULL, 1, 0), -EINVAL);
        ck_assert_int_eq(shmb_recv(ring, NULL, 1, 0), -EINVAL);
        for (int i = 0; i < 6; i++)
                ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), 1);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send(pair, "x", 1, 0), -EOPNOTSUPP);
        shmb_close(pair);
        shmb_close(ring);
}
END_TEST

START_TEST(test_waiter_sees_channel_removed) {
        shmb_channel *ch = test_open_ok("pair", SHMB_RW);
        pid_t pid;

        /* The daemon stops while we wait: the set goes away under us. */
        pid = fork();
        if (pid == 0) {
                usleep(100000);
                kill(td.pid, SIGTERM);
                _exit(0);
        }
        ck_assert_int_eq(shmb_sem_wait(ch, 1, 5000), -EIDRM);
        waitpid(pid, NULL, 0);
        ck_assert_int_eq(shmb_close(ch), 0);
        test_daemon_stop_ok(&td);       /* already stopping: it must have exited cleanly */
}
END_TEST

/* ---- ring ---- */

#define PRODUCERS 3
#define CONSUMERS 2
#define PER_PRODUCER 3000

typedef struct Msg {
        uint32_t producer, seq, len, sum;
        unsigned char data[240];
} Msg;

static uint32_t checksum(const Msg *m) {
        uint32_t h = 2166136261u ^ m->producer ^ (m->seq << 8) ^ (m->len << 20);

        for (uint32_t i = 0; i < m->len; i++)
                h = (h ^ m->data[i]) * 16777619u;
        return h;
}

static void producer(int id) {
        shmb_channel *ch;
        unsigned seed = (unsigned) id * 7919u;

        if (shmb_open_channel(NULL, "ring", SHMB_RW, &ch) < 0)
                _exit(2);
        for (uint32_t s = 0; s < PER_PRODUCER; s++) {
                Msg m = { .producer = (uint32_t) id, .seq = s, .len = (uint32_t) (rand_r(&seed) % sizeof m.data) };

                for (uint32_t i = 0; i < m.len; i++)
                        m.data[i] = (unsigned char) rand_r(&seed);
                m.sum = checksum(&m);
                if (shmb_send(ch, &m, offsetof(Msg, data) + m.len, 10000) < 0)
                        _exit(3);
        }
        shmb_close(ch);
        _exit(0);
}

/* Each consumer reports every (producer, seq) it got through its pipe. */
static void consumer(int out) {
        shmb_channel *ch;
        Msg m;

        if (shmb_open_channel(NULL, "ring", SHMB_RW, &ch) < 0)
                _exit(2);
        for (;;) {
                ssize_t n = shmb_recv(ch, &m, sizeof m, 10000);
                uint32_t rec[2];

                if (n < 0)
                        _exit(3);
                if (n == 0)
                        break;          /* stop marker */
                if ((size_t) n != offsetof(Msg, data) + m.len || m.sum != checksum(&m))
                        _exit(4);       /* torn or corrupt */
                rec[0] = m.producer;
                rec[1] = m.seq;
                if (write(out, rec, sizeof rec) != sizeof rec)
                        _exit(5);
        }
        shmb_close(ch);
        _exit(0);
}

START_TEST(test_ring_mpmc_exactly_once) {
        static unsigned char seen[PRODUCERS][PER_PRODUCER];
        pid_t prod[PRODUCERS], cons[CONSUMERS];
        int pipes[CONSUMERS][2];
        shmb_channel *ch;
        size_t total = 0;

        memset(seen, 0, sizeof seen);
        for (int i = 0; i < CONSUMERS; i++) {
                ck_assert_int_eq(pipe(pipes[i]), 0);
                cons[i] = fork();
                if (cons[i] == 0) {
                        close(pipes[i][0]);
                        consumer(pipes[i][1]);
                }
                close(pipes[i][1]);
                fcntl(pipes[i][0], F_SETFL, O_NONBLOCK);
        }
        for (int i = 0; i < PRODUCERS; i++) {
                prod[i] = fork();
                if (prod[i] == 0)
                        producer(i);
        }
        /* Drain the reports while they run, so no pipe fills up. */
        int done = 0;
        for (int64_t deadline = test_now_ms() + 50000; test_now_ms() < deadline;) {
                uint32_t rec[2];
                bool any = false;

                for (int i = 0; i < CONSUMERS; i++)
                        while (read(pipes[i][0], rec, sizeof rec) == sizeof rec) {
                                ck_assert_uint_lt(rec[0], PRODUCERS);
                                ck_assert_uint_lt(rec[1], PER_PRODUCER);
                                ck_assert_msg(!seen[rec[0]][rec[1]], "message %u/%u delivered twice", rec[0], rec[1]);
                                seen[rec[0]][rec[1]] = 1;
                                total++;
                                any = true;
                        }
                if (!done && total == PRODUCERS * PER_PRODUCER) {
                        wait_children(prod, PRODUCERS);
                        ch = test_open_ok("ring", SHMB_RW);
                        for (int i = 0; i < CONSUMERS; i++)
                                ck_assert_int_eq(shmb_send(ch, "", 0, 5000), 0);
                        shmb_close(ch);
                        wait_children(cons, CONSUMERS);
                        done = 1;
                        break;
                }
                if (!any)
                        usleep(1000);
        }
        ck_assert_msg(done, "only %zu of %d messages arrived", total, PRODUCERS * PER_PRODUCER);
}
END_TEST

START_TEST(test_ring_killed_sender_loses_nothing_sent) {
        int acks[2];
        pid_t pid;
        uint32_t acked = 0, got = 0, v;
        shmb_channel *ch;

        ck_assert_int_eq(pipe(acks), 0);
        pid = fork();
        if (pid == 0) {
                shmb_channel *mine;

                close(acks[0]);
                if (shmb_open_channel(NULL, "ring", SHMB_RW, &mine) < 0)
                        _exit(2);
                for (uint32_t s = 1;; s++) {
                        if (shmb_send(mine, &s, sizeof s, -1) < 0)
                                _exit(3);
                        write(acks[1], &s, sizeof s);
                }
        }
        close(acks[1]);
        ch = test_open_ok("ring", SHMB_RW);
        /* Receive a while, then kill the sender between (or inside) sends. */
        for (int i = 0; i < 5000; i++) {
                ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, 5000), sizeof v);
                ck_assert_uint_eq(v, ++got);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        while (read(acks[0], &v, sizeof v) == sizeof v)
                acked = v;
        /* Everything acknowledged arrives, in order, once; at most one more was in flight. */
        while (shmb_recv(ch, &v, sizeof v, 200) == sizeof v)
                ck_assert_uint_eq(v, ++got);
        ck_assert_msg(got == acked || got == acked + 1, "acknowledged %u, received %u", acked, got);
        shmb_close(ch);
}
END_TEST

START_TEST(test_ring_no_lost_wakeups) {
        /* Both sides fall asleep over and over (8 slots, uneven pauses), with no
         * timeout: a lost wake-up hangs here, and the case's timeout catches it. */
        enum { N = 300000 };
        shmb_channel *ch;
        cpu_set_t cpus;
        pid_t pid;

        /* On two CPUs at once, as the race needs true parallelism. */
        CPU_ZERO(&cpus);
        CPU_SET(0, &cpus);
        pid = fork();
        if (pid == 0) {
                shmb_channel *mine;

                if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
                        CPU_ZERO(&cpus);
                        CPU_SET(1, &cpus);
                }
                sched_setaffinity(0, sizeof cpus, &cpus);

                if (shmb_open_channel(NULL, "ring", SHMB_RW, &mine) < 0)
                        _exit(2);
                for (uint32_t i = 0; i < N; i++) {
                        if (shmb_send(mine, &i, sizeof i, -1) < 0)
                                _exit(3);
                        if (i % 4099 == 0)
                                usleep(50);
                }
                _exit(0);
        }
        sched_setaffinity(0, sizeof cpus, &cpus);
        ch = test_open_ok("ring", SHMB_RW);
        for (uint32_t i = 0; i < N; i++) {
                uint32_t v;

                ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, -1), sizeof v);
                ck_assert_uint_eq(v, i);
                if (i % 3001 == 0)
                        usleep(50);
        }
        wait_children(&pid, 1);
        shmb_close(ch);
}
END_TEST

/*
 * A process that claims a ring slot through the real header and never
 * finishes: it dies at once, or (stuck_fd >= 0) says so on stuck_fd and
 * stays alive, stuck, until it is killed.
 */
/* The live holder token of pid in ring h (the broker wrote the pid beside it), or 0. */
static uint32_t live_token_of(const RingHeader *h, pid_t pid) {
        for (uint32_t i = 0; i < h->holders; i++) {
                const RingHolder *e = ring_holder_at(h, i);
                uint64_t w = __atomic_load_n(&e->word, __ATOMIC_ACQUIRE);

                if ((uint32_t) w == RING_HOLDER_LIVE && e->pid == pid)
                        return ring_token(i, (uint32_t) (w >> 32));
        }
        return 0;
}

static void claim_mid_message(bool as_sender, int stuck_fd) {
        shmb_channel *ch;
        RingHeader *h;
        RingSlot *slot;
        uint64_t pos, owner, *word;
        uint32_t token = 0;

        if (shmb_open_channel(NULL, "ring", SHMB_RW, &ch) < 0)
                _exit(2);
        h = shmb_channel_addr(ch);
        token = live_token_of(h, getpid());
        if (!token)
                _exit(3);
        /* The claim as the library makes it: the owner word names us; then head/tail moves on. */
        pos = __atomic_load_n(as_sender ? &h->head : &h->tail, __ATOMIC_ACQUIRE);
        slot = ring_slot_at(h, pos);
        word = as_sender ? &slot->send_owner : &slot->recv_owner;
        owner = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (ring_owner_claims(owner, pos) ||
            !__atomic_compare_exchange_n(word, &owner, ring_owner(pos, token), false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED) ||
            !__atomic_compare_exchange_n(as_sender ? &h->head : &h->tail, &pos, pos + 1, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
                _exit(3);
        if (as_sender)
                memset((char *) slot + RING_SLOT_HEADER, 'X', 100);     /* half-written, never published */
        if (stuck_fd >= 0) {
                /* Not outliving a test that fails while we are stuck. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || write(stuck_fd, "x", 1) != 1)
                        _exit(4);
                for (;;)
                        pause();
        }
        _exit(0);
}

/*
 * Wait (up to 10 s) until the broker has seen pid's connection end and
 * marked its holder dead: the ring learns of a death from the broker, not
 * from the kernel's pid table.
 */
static void wait_holder_dead(shmb_channel *ch, pid_t pid) {
        const RingHeader *h = shmb_channel_addr(ch);
        int64_t deadline = test_now_ms() + 10000;

        for (;;) {
                bool live = false;

                for (uint32_t i = 0; i < h->holders; i++) {
                        const RingHolder *e = ring_holder_at(h, i);

                        if (e->pid == pid && (uint32_t) __atomic_load_n(&e->word, __ATOMIC_ACQUIRE) == RING_HOLDER_LIVE)
                                live = true;
                }
                if (!live)
                        return;
                ck_assert_msg(test_now_ms() < deadline, "the broker did not mark pid %d's holder dead", (int) pid);
                usleep(2000);
        }
}

/*
 * Send a lap of the test ring's 8 slots on ch, then receive them, in order:
 * each send finds its slot free within send_ms, so no slot of the lap is
 * held by a claim that was left.
 */
static void send_and_receive_a_lap(shmb_channel *ch, int send_ms, int recv_ms) {
        for (uint32_t i = 0; i < 8; i++)
                ck_assert_msg(shmb_send(ch, &i, sizeof i, send_ms) == 0, "send %u of a lap found no free slot", i);
        for (uint32_t i = 0; i < 8; i++) {
                uint32_t v;

                ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, recv_ms), sizeof v);
                ck_assert_uint_eq(v, i);
        }
}

/*
 * Two ring handles on one connection share one hold and one token: closing
 * one must not give the token back, or the other's live claims could be
 * repaired under it.
 */
START_TEST(test_closing_one_of_two_ring_handles_keeps_the_token) {
        shmb_channel *one, *two;
        const RingHeader *h;
        shmb_client *c;
        uint32_t token;
        char buf[16];

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &one), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &two), 0);
        h = shmb_channel_addr(two);
        token = live_token_of(h, getpid());
        ck_assert_uint_ne(token, 0);
        ck_assert_int_eq(shmb_close(one), 0);
        ck_assert_msg(!ring_token_dead(h, token), "closing one handle ended the token the other still uses");
        ck_assert_int_eq(shmb_send(two, "still", 5, 0), 0);
        ck_assert_int_eq(shmb_recv(two, buf, sizeof buf, 0), 5);
        ck_assert_int_eq(shmb_close(two), 0);
        shmb_disconnect(c);
}
END_TEST

START_TEST(test_ring_sender_dead_mid_message_is_skipped) {
        shmb_channel *ch = test_open_ok("ring", SHMB_RW);
        char buf[256];
        pid_t pid;

        ck_assert_int_eq(shmb_send(ch, "before", 6, 0), 0);
        pid = fork();
        if (pid == 0)
                claim_mid_message(true, -1);
        wait_children(&pid, 1);
        wait_holder_dead(ch, pid);
        ck_assert_int_eq(shmb_send(ch, "after", 5, 0), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 2000), 6);
        ck_assert_int_eq(memcmp(buf, "before", 6), 0);
        /* The dead sender's slot is skipped, not handed out half-written; also by a
         * caller whose timeout is shorter than the 50 ms repair poll. */
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 10), 5);
        ck_assert_int_eq(memcmp(buf, "after", 5), 0);
        /* And the ring keeps working across the repaired slot, lap after lap. */
        for (uint32_t i = 0; i < 40; i++) {
                uint32_t v;

                ck_assert_int_eq(shmb_send(ch, &i, sizeof i, 1000), 0);
                ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, 1000), sizeof v);
                ck_assert_uint_eq(v, i);
        }
        shmb_close(ch);
}
END_TEST

START_TEST(test_ring_receiver_dead_mid_message_frees_slot) {
        shmb_channel *ch = test_open_ok("ring", SHMB_RW);
        pid_t pid;

        ck_assert_int_eq(shmb_send(ch, "lost", 4, 0), 0);
        pid = fork();
        if (pid == 0)
                claim_mid_message(false, -1);
        wait_children(&pid, 1);
        wait_holder_dead(ch, pid);
        /* A full lap later the dead receiver's slot must be free again, or this times out
         * (a timeout shorter than the 50 ms repair poll must not keep it from being freed). */
        send_and_receive_a_lap(ch, 10, 1000);
        shmb_close(ch);
}
END_TEST

/*
 * A live peer stuck mid-message wakes no one, so a waiter behind it polls
 * every 50 ms for the claimer's death. Each poll starts the wait again:
 * it must still end at the caller's own deadline (counted from its first
 * wait), and once the claimer is dead a poll finds it well before a
 * waiter's own timeout would.
 */
START_TEST(test_ring_wait_behind_live_stuck_claim_times_out) {
        shmb_channel *ch = test_open_ok("ring", SHMB_RW);
        char buf[256];
        int stuck[2];
        int64_t t, took;
        pid_t pid;
        char c;

        for (int as_sender = 1; as_sender >= 0; as_sender--) {
                ck_assert_int_eq(pipe(stuck), 0);
                if (!as_sender)         /* a message for the stuck receiver to take */
                        ck_assert_int_eq(shmb_send(ch, "lost", 4, 0), 0);
                pid = fork();
                ck_assert_int_ge(pid, 0);
                if (pid == 0)
                        claim_mid_message(as_sender, stuck[1]);
                close(stuck[1]);        /* a child that fails before it is stuck is EOF here, not a hang */
                ck_assert_msg(read(stuck[0], &c, 1) == 1, "the claimer failed before getting stuck");
                if (!as_sender)         /* the stuck receiver holds its slot: fill the other 7 */
                        for (uint32_t i = 0; i < 7; i++)
                                ck_assert_int_eq(shmb_send(ch, &i, sizeof i, 0), 0);
                t = test_now_ms();
                if (as_sender)
                        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 300), -ETIMEDOUT);
                else
                        ck_assert_int_eq(shmb_send(ch, "x", 1, 300), -ETIMEDOUT);
                took = test_now_ms() - t;
                ck_assert_msg(took >= 290 && took < 1000, "%s behind a stuck claim timed out after %lld ms, not 300",
                              as_sender ? "receive" : "send", (long long) took);
                /* Dead now: the slot is repaired (skipped or freed) and the ring moves again. */
                ck_assert_int_eq(kill(pid, SIGKILL), 0);
                ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
                /* The call that meets the dead claimer's slot repairs it at a poll, not at its 2 s timeout. */
                t = test_now_ms();
                ck_assert_int_eq(shmb_send(ch, "after", 5, 2000), 0);
                if (!as_sender)
                        for (uint32_t i = 0; i < 7; i++)
                                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 2000), sizeof i);
                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 2000), 5);
                took = test_now_ms() - t;
                ck_assert_int_eq(memcmp(buf, "after", 5), 0);
                ck_assert_msg(took < 1000, "the dead claimer's slot was repaired only after %lld ms", (long long) took);
                close(stuck[0]);
        }
        shmb_close(ch);
}
END_TEST

/* One doomed client: works at random until it is killed. */
static void doomed_client(unsigned seed) {
        shmb_channel *counter = NULL, *ring = NULL;
        uint32_t v = 0;

        for (;;) {
                switch (rand_r(&seed) % 4) {
                case 0:
                        if (!counter && shmb_open_channel(NULL, "counter", SHMB_RW, &counter) < 0)
                                counter = NULL;
                        break;
                case 1:
                        if (counter && shmb_lock(counter, 0, 100) == 0) {
                                usleep(rand_r(&seed) % 500);
                                shmb_unlock(counter, 0);
                        }
                        break;
                case 2:
                        if (!ring && shmb_open_channel(NULL, "ring", SHMB_RW, &ring) < 0)
                                ring = NULL;
                        if (ring)
                                (void) shmb_send(ring, &v, sizeof v, 0);
                        v++;
                        break;
                default: {
                        /* Half a request, straight on a socket of its own (the library's fd is its event fd). */
                        struct sockaddr_un sa = { .sun_family = AF_UNIX };
                        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        size_t n = strlen(td.socket);

                        if (n < sizeof sa.sun_path)
                                memcpy(sa.sun_path, td.socket, n + 1);
                        if (fd >= 0 && connect(fd, (struct sockaddr *) &sa, sizeof sa) == 0) {
                                (void) send(fd, "{\"op\":\"sta", 11, MSG_NOSIGNAL);
                                usleep(rand_r(&seed) % 300);
                        }
                        if (fd >= 0)
                                close(fd);
                }
                }
        }
}

START_TEST(test_thousand_clients_killed_at_random) {
        enum { CLIENTS = 1000, BATCH = 50 };
        unsigned seed = 12345;
        shmb_status_list *l;
        shmb_channel *ch;
        shmb_client *c;

        for (int done = 0; done < CLIENTS; done += BATCH) {
                pid_t pids[BATCH];

                for (int i = 0; i < BATCH; i++) {
                        pids[i] = fork();
                        ck_assert_int_ge(pids[i], 0);
                        if (pids[i] == 0)
                                doomed_client((unsigned) (done + i) * 2654435761u);
                }
                for (int i = 0; i < BATCH; i++) {
                        usleep(rand_r(&seed) % 3000);
                        kill(pids[i], SIGKILL);
                }
                for (int i = 0; i < BATCH; i++)
                        waitpid(pids[i], NULL, 0);
        }

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        /* No stale client: every hold of the dead is gone. */
        for (int tries = 0;; tries++) {
                size_t holders = 0;

                ck_assert_int_eq(shmb_status(c, NULL, &l), 0);
                for (size_t i = 0; i < shmb_status_count(l); i++)
                        holders += shmb_status_nclients(l, i);
                shmb_status_free(l);
                if (holders == 0)
                        break;
                ck_assert_msg(tries < 200, "%zu holds of dead clients remain", holders);
                usleep(10000);
        }
        shmb_disconnect(c);
        /* The lock is free (SEM_UNDO undid every dead holder). */
        ch = test_open_ok("counter", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        shmb_close(ch);
        /* The ring is usable: drain what the dead sent, then a round trip. */
        ch = test_open_ok("ring", SHMB_RW);
        {
                char buf[256];
                uint32_t x = 0xfeed, y = 0;

                while (shmb_recv(ch, buf, sizeof buf, 200) >= 0)
                        ;
                ck_assert_int_eq(shmb_send(ch, &x, sizeof x, 1000), 0);
                ck_assert_int_eq(shmb_recv(ch, &y, sizeof y, 1000), sizeof y);
                ck_assert_uint_eq(y, 0xfeed);
        }
        shmb_close(ch);
        /* Exact object counts: five channels, nothing doubled or leaked. */
        ck_assert_int_eq(test_ipcs_count("-m"), 5);
        ck_assert_int_eq(test_ipcs_count("-s"), 5);
}
END_TEST

/* A peer that answers every request line with a line that is not a response. */
static void garbage_server(int lfd) {
        for (;;) {
                int c = accept(lfd, NULL, NULL);
                char buf[4096];

                if (c < 0)
                        _exit(0);
                while (read(c, buf, sizeof buf) > 0)
                        if (write(c, "not an answer\n{\"ok\":7}\n", 23) < 0)
                                break;
                close(c);
        }
}

/* A listening stream socket bound at sa (a path, or an abstract address). */
static int listening_at(const struct sockaddr_un *sa) {
        int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(l, 0);
        ck_assert_int_eq(bind(l, (const struct sockaddr *) sa, sizeof *sa), 0);
        ck_assert_int_eq(listen(l, 8), 0);
        return l;
}

/*
 * A stand-in broker: serve(lfd) in a child listening on td.dir/name, whose
 * path is put in sa. The child dies with the test. Returns its pid.
 */
static pid_t fake_server_start(const char *name, void (*serve)(int lfd), struct sockaddr_un *sa) {
        int lfd;
        pid_t pid;

        *sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        ck_assert_int_lt(snprintf(sa->sun_path, sizeof sa->sun_path, "%s/%s", td.dir, name), (int) sizeof sa->sun_path);
        lfd = listening_at(sa);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                serve(lfd);
                _exit(0);
        }
        close(lfd);
        return pid;
}

static void fake_server_stop(pid_t pid) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
}

/* shmb_connect() and shmb_open_channel() to the fake broker server (at name) both fail -EPROTO, handing nothing out. */
static void assert_connect_and_open_eproto(const char *name, void (*server)(int)) {
        struct sockaddr_un sa;
        shmb_channel *ch = NULL;
        shmb_client *c = NULL;
        pid_t pid = fake_server_start(name, server, &sa);

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), -EPROTO);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(shmb_open_channel(sa.sun_path, "pair", SHMB_RW, &ch), -EPROTO);
        ck_assert_ptr_null(ch);
        fake_server_stop(pid);
}

START_TEST(test_malformed_answers_are_eproto) {
        /* Nothing undecoded may be released: under ASan a bad free fails here. */
        assert_connect_and_open_eproto("garbage.sock", garbage_server);
}
END_TEST

/* A peer that answers every request line with a greeting of protocol version 2. */
static void version_2_server(int lfd) {
        static const char answer[] = "{\"ok\":true,\"version\":2,\"server\":\"fake\"}\n";

        for (;;) {
                int c = accept(lfd, NULL, NULL);
                char ch;

                if (c < 0)
                        _exit(0);
                while (read(c, &ch, 1) == 1)
                        if (ch == '\n' && write(c, answer, sizeof answer - 1) < 0)
                                break;
                close(c);
        }
}

/* libshmbroker(3), -EPROTO: "the broker does not speak protocol version 1". */
START_TEST(test_broker_of_another_version_is_eproto) {
        assert_connect_and_open_eproto("v2.sock", version_2_server);
}
END_TEST

/* A peer that greets properly, then answers the next request with a malformed
 * line followed at once by a well-formed answer that belongs to no request. */
static void out_of_step_server(int lfd) {
        static const char *const answers[] = {
                "{\"ok\":true,\"version\":1,\"server\":\"fake\"}\n",
                "not an answer\n{\"ok\":true,\"channels\":[]}\n",
        };
        int c = accept(lfd, NULL, NULL);
        size_t lines = 0;
        char ch;

        while (c >= 0 && read(c, &ch, 1) == 1) {
                if (ch != '\n' || lines >= 2)
                        continue;
                if (write(c, answers[lines], strlen(answers[lines])) < 0)
                        break;
                lines++;
        }
        _exit(0);
}

/*
 * shmbrokerctl(1): exit 1 is a refusal by the daemon, 2 a connection
 * error. An answer that breaks the protocol refuses nothing: exit 2, in
 * table and JSON mode alike.
 */
START_TEST(test_shmbrokerctl_malformed_answer_is_a_connection_error) {
        static const char *const modes[] = { "", "--json" };
        char out[4096];

        for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
                struct sockaddr_un sa;
                pid_t pid = fake_server_start("ctl-step.sock", out_of_step_server, &sa);

                ck_assert_msg(test_run(out, sizeof out, "%s -s %s %s list 2>&1 >/dev/null", SHMBROKERCTL_PATH,
                                       sa.sun_path, modes[i]) == 2, "%s list: %s", modes[i], out);
                fake_server_stop(pid);
                unlink(sa.sun_path);
        }
}
END_TEST

START_TEST(test_failed_call_closes_the_connection) {
        struct sockaddr_un sa;
        shmb_status_list *l = NULL;
        shmb_client *c = NULL;
        pid_t pid = fake_server_start("step.sock", out_of_step_server, &sa);

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        ck_assert_int_eq(shmb_list(c, &l), -EPROTO);
        ck_assert_ptr_null(l);
        /* The stray answer waiting behind the bad one must not be taken for the next call's. */
        ck_assert_int_eq(shmb_list(c, &l), -ENOTCONN);
        ck_assert_int_eq(shmb_client_fd(c), -1);
        shmb_disconnect(c);
        fake_server_stop(pid);
}
END_TEST

/*
 * shmb_client_fd(): "its number stays the same for the life of c". A loop
 * that registered it keeps watching it after a malformed answer closed
 * the connection for good: it stays open, the same epoll instance, and
 * polls readable once, so that the loop's shmb_client_process() hears
 * -ENOTCONN (and is not woken for it again and again).
 */
START_TEST(test_malformed_answer_keeps_the_event_fd) {
        struct sockaddr_un sa;
        struct epoll_event ev = { .events = EPOLLIN };
        struct stat before, after;
        shmb_status_list *l = NULL;
        shmb_client *c = NULL;
        pid_t pid = fake_server_start("step-fd.sock", out_of_step_server, &sa);
        int fd, loop;

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        fd = shmb_client_fd(c);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &before), 0);
        loop = epoll_create1(EPOLL_CLOEXEC);
        ck_assert_int_ge(loop, 0);
        ck_assert_int_eq(epoll_ctl(loop, EPOLL_CTL_ADD, fd, &ev), 0);
        ck_assert_int_eq(shmb_list(c, &l), -EPROTO);
        ck_assert_msg(fstat(fd, &after) == 0, "the event fd %d the loop watches was closed under it", fd);
        ck_assert_msg(before.st_dev == after.st_dev && before.st_ino == after.st_ino,
                      "the event fd %d is another file now", fd);
        ck_assert_msg(epoll_wait(loop, &ev, 1, 5000) == 1, "the loop was not woken to hear of the closed connection");
        ck_assert_int_eq(shmb_client_process(c), -ENOTCONN);
        ck_assert_int_eq(epoll_wait(loop, &ev, 1, 100), 0);
        ck_assert_int_eq(shmb_client_fd(c), -1);
        shmb_disconnect(c);
        close(loop);
        fake_server_stop(pid);
}
END_TEST

/* ---- admin API ---- */

START_TEST(test_list_and_status_answers) {
        shmb_channel *held = test_open_ok("public", SHMB_RO);
        shmb_status_list *l;
        shmb_access access = 0;
        shmb_client *c;
        pid_t pid = 0;
        int value = -1;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_list(c, &l), 0);
        ck_assert_uint_eq(shmb_status_count(l), 5);
        ck_assert_str_eq(shmb_status_name(l, 0), "counter");    /* sorted by name */
        ck_assert_str_eq(shmb_status_name(l, 3), "ring");
        ck_assert_int_eq(shmb_status_layout(l, 3), SHMB_LAYOUT_RING);
        ck_assert_uint_eq(shmb_status_slots(l, 3), 8);
        ck_assert_int_eq(shmb_status_mode(l, 4), 0600);
        shmb_status_free(l);

        ck_assert_int_eq(shmb_status(c, "public", &l), 0);
        ck_assert_uint_eq(shmb_status_count(l), 1);
        ck_assert_uint_eq(shmb_status_nclients(l, 0), 1);
        ck_assert_int_eq(shmb_status_client(l, 0, 0, &pid, NULL, &access, NULL), 0);
        ck_assert_int_eq(pid, getpid());
        ck_assert_int_eq(access, SHMB_RO);
        ck_assert_uint_eq(shmb_status_nattch(l, 0), 2);
        ck_assert_uint_eq(shmb_status_nsems(l, 0), 1);
        ck_assert_int_eq(shmb_status_semaphore(l, 0, 0, &value, NULL, NULL, NULL), 0);
        ck_assert_int_eq(value, 1);
        shmb_status_free(l);
        l = NULL;
        ck_assert_int_eq(shmb_status(c, "nope", &l), -ENOENT);
        ck_assert_ptr_null(l);
        shmb_disconnect(c);
        shmb_close(held);
}
END_TEST

/* ---- programs: examples and shmbrokerctl ---- */

START_TEST(test_examples_exchange) {
        static char out[65536];
        char expect[65536];
        size_t used = 0;

        for (int i = 1; i <= 50; i++)
                used += (size_t) snprintf(expect + used, sizeof expect - used, "message %d\n", i);
        ck_assert_int_eq(test_run(out, sizeof out, "%s/raw-receiver pair & r=$!; %s/raw-sender pair 50 && wait $r",
                             EXAMPLES_DIR, EXAMPLES_DIR), 0);
        ck_assert_str_eq(out, expect);
        ck_assert_int_eq(test_run(out, sizeof out, "%s/ring-receiver ring & r=$!; %s/ring-sender ring 50 && wait $r",
                             EXAMPLES_DIR, EXAMPLES_DIR), 0);
        ck_assert_str_eq(out, expect);
        ck_assert_int_eq(test_run(out, sizeof out,
                             "%s/zero-copy-receiver ring & r=$!; %s/zero-copy-sender ring 50 && wait $r",
                             EXAMPLES_DIR, EXAMPLES_DIR), 0);
        ck_assert_str_eq(out, expect);
}
END_TEST

/*
 * Plain System V programs that find their objects with ftok(): the broker
 * makes the objects under that key, and they run unchanged, with each
 * other and with the library's raw-receiver.
 */
START_TEST(test_legacy_programs_under_the_broker) {
        static char out[65536];
        char expect[65536], path[400], *text;
        size_t used = 0;
        json_t *list;
        int fd;

        for (int i = 1; i <= 20; i++)
                used += (size_t) snprintf(expect + used, sizeof expect - used, "message %d\n", i);
        snprintf(path, sizeof path, "%s/legacy.key", td.dir);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_ge(asprintf(&text, "[{\"name\": \"legacy\", \"size\": 4096, \"semaphores\": [1, 0],"
                                  " \"key\": {\"ftok\": [\"%s\", 12]}}]", path), 0);
        test_daemon_write_config(&td, text);
        free(text);
        test_start_ok();

        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        ck_assert_int_eq(test_jint(test_must_find(list, "legacy"), "shm_key"), (json_int_t) (uint32_t) ftok(path, 12));
        json_decref(list);
        close(fd);

        ck_assert_int_eq(test_run(out, sizeof out, "%s/legacy-receiver %s & r=$!; %s/legacy-sender %s 20 && wait $r",
                             EXAMPLES_DIR, path, EXAMPLES_DIR, path), 0);
        ck_assert_str_eq(out, expect);
        ck_assert_int_eq(test_run(out, sizeof out, "%s/raw-receiver legacy & r=$!; %s/legacy-sender %s 20 && wait $r",
                             EXAMPLES_DIR, EXAMPLES_DIR, path), 0);
        ck_assert_str_eq(out, expect);
}
END_TEST

START_TEST(test_shmbrokerctl) {
        static char out[65536];
        struct stat st;
        json_t *j;
        int rc;

        ck_assert_int_eq(test_run(out, sizeof out, "%s list 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "NAME"));
        ck_assert_ptr_nonnull(strstr(out, "counter"));
        ck_assert_ptr_nonnull(strstr(out, "rw-------"));        /* secret's 0600 */
        ck_assert_ptr_nonnull(strstr(out, " 64K "));            /* pair's size, readable */
        ck_assert_ptr_nonnull(strstr(out, "0x"));

        ck_assert_int_eq(test_run(out, sizeof out, "%s -s %s --json list 2>/dev/null", SHMBROKERCTL_PATH, td.socket), 0);
        j = json_loads(out, 0, NULL);
        ck_assert_msg(j && json_is_true(json_object_get(j, "ok")), "not the daemon's answer: %s", out);
        ck_assert_uint_eq(json_array_size(json_object_get(j, "channels")), 5);
        json_decref(j);

        ck_assert_int_eq(test_run(out, sizeof out, "%s status ring 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "8 slots of 256 bytes"));
        ck_assert_int_eq(test_run(out, sizeof out, "%s status 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "NATTCH"));

        /* Refused: exit 1 and one line on stderr. */
        ck_assert_int_eq(test_run(out, sizeof out, "%s status nope 2>&1 >/dev/null", SHMBROKERCTL_PATH), 1);
        ck_assert_ptr_nonnull(strstr(out, "no channel named \"nope\""));
        ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1);
        ck_assert_int_eq(test_run(out, sizeof out, "%s --json status nope 2>/dev/null", SHMBROKERCTL_PATH), 1);
        ck_assert_ptr_nonnull(strstr(out, "\"ENOENT\""));
        /* Usage and connection errors: exit 2. */
        ck_assert_int_eq(test_run(out, sizeof out, "%s 2>&1", SHMBROKERCTL_PATH), 2);
        ck_assert_int_eq(test_run(out, sizeof out, "%s frobnicate 2>&1", SHMBROKERCTL_PATH), 2);
        ck_assert_int_eq(test_run(out, sizeof out, "%s list extra 2>&1", SHMBROKERCTL_PATH), 2);
        ck_assert_int_eq(test_run(out, sizeof out, "%s -s /nonexistent.sock list 2>&1", SHMBROKERCTL_PATH), 2);
        ck_assert_ptr_nonnull(strstr(out, "/nonexistent.sock"));
        /*
         * A socket the user may not reach: the kernel's reason, not the text of a channel's refusal. Root
         * without capabilities and a socket of mode 0, so that the program need not be another user's to run
         * (a package build's directory is root's alone).
         */
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_int_eq(chmod(td.socket, 0), 0);
        rc = test_run(out, sizeof out, "setpriv --bounding-set=-all --inh-caps=-all %s -s %s list 2>&1",
                      SHMBROKERCTL_PATH, td.socket);
        ck_assert_int_eq(chmod(td.socket, st.st_mode & 07777), 0);
        ck_assert_int_eq(rc, 2);
        ck_assert_msg(strstr(out, strerror(EACCES)) && !strstr(out, "channel"), "connect refused: %s", out);
        /* shmbrokerctl(1): "2 on usage or connection errors, with a one-line message on stderr": getopt's too. */
        ck_assert_int_eq(test_run(out, sizeof out, "%s -x list 2>&1 >/dev/null", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "not one line: %s", out);
        /* The option at fault is named, not the long one before it (a short option's group keeps optind). */
        ck_assert_int_eq(test_run(out, sizeof out, "%s --json -xh list 2>&1 >/dev/null", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(strstr(out, "-x") && !strstr(out, "--json"), "bad option named: %s", out);
        ck_assert_int_eq(test_run(out, sizeof out, "%s -s 2>&1 >/dev/null", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "not one line: %s", out);
        /* Output that could not be written is no success (a script would take the empty table for one). */
        ck_assert_int_ne(test_run(out, sizeof out, "%s list 2>&1 >/dev/full", SHMBROKERCTL_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "shmbrokerctl: "));
        ck_assert_int_ne(test_run(out, sizeof out, "%s --json list 2>&1 >/dev/full", SHMBROKERCTL_PATH), 0);
        ck_assert_int_eq(test_run(out, sizeof out, "%s --help", SHMBROKERCTL_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "Usage:"));
        ck_assert_int_eq(test_run(out, sizeof out, "%s --version", SHMBROKERCTL_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, PACKAGE_VERSION));

        /* The status table elides semaphore values only when some do not fit: 57 one-digit values just fit. */
        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"fits\", \"size\": 4096, \"semaphores\": 57},"
                                      " {\"name\": \"elided\", \"size\": 4096, \"semaphores\": 70}]");
        test_start_ok();
        ck_assert_int_eq(test_run(out, sizeof out, "%s status 2>&1", SHMBROKERCTL_PATH), 0);
        {
                char *fits = strstr(out, "\nfits "), *elided = strstr(out, "\nelided ");

                ck_assert_msg(fits && elided, "status table: %s", out);
                fits++;
                elided++;
                /* Each row on its own (one row's newline starts the other's match: cut after both are found). */
                *strchrnul(fits, '\n') = '\0';
                *strchrnul(elided, '\n') = '\0';
                ck_assert_msg(strstr(fits, " 0,0,") && !strstr(fits, "..."), "57 semaphores: %s", fits);
                ck_assert_msg(strstr(elided, ",..."), "70 semaphores: %s", elided);
        }

        /* A refusal quoting the config (an unknown key: an escape sequence) reaches the terminal as one line of text. */
        test_daemon_write_raw_config(&td, "{\"version\": 1, \"socket\": \"x\", \"channels\": [], "
                                          "\"\\u001b]0;owned\\u0007\\u009b2J\\nsecond line\": 1}\n");
        ck_assert_int_eq(test_run(out, sizeof out, "%s reload 2>&1", SHMBROKERCTL_PATH), 1);
        ck_assert_msg(strstr(out, "owned") && !strchr(out, '\033') && !strchr(out, '\007') &&
                              !strstr(out, "\302\233") && strchr(out, '\n') == out + strlen(out) - 1,
                      "the daemon's message reached the terminal as it was: %s", out);
        /* The same refusal under --json: stderr gets the same one line of text (stdout is the answer, as JSON). */
        ck_assert_int_eq(test_run(out, sizeof out, "%s --json reload 2>&1 >/dev/null", SHMBROKERCTL_PATH), 1);
        ck_assert_msg(strstr(out, "owned") && !strchr(out, '\033') && !strchr(out, '\007') &&
                              strchr(out, '\n') == out + strlen(out) - 1,
                      "--json: the daemon's message reached the terminal as it was: %s", out);
}
END_TEST

/* The line of out that starts with prefix (cut at its newline, in out), or NULL. */
static char *line_starting(char *out, const char *prefix) {
        size_t n = strlen(prefix);

        for (char *line = out; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
                if (strncmp(line, prefix, n) == 0) {
                        *strchrnul(line, '\n') = '\0';
                        return line;
                }
        return NULL;
}

static int cmp_words(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The whitespace-separated words of line after its first (the label), sorted, as one space-separated string. */
static const char *words_after_label(char *line) {
        static char buf[512];
        char *v[32], *save = NULL, *w;
        size_t n = 0, used = 0;

        (void) strtok_r(line, " ", &save);
        while ((w = strtok_r(NULL, " ", &save)) && n < 32)
                v[n++] = w;
        qsort(v, n, sizeof *v, cmp_words);
        buf[0] = '\0';
        for (size_t i = 0; i < n; i++)
                used += (size_t) snprintf(buf + used, sizeof buf - used, "%s%s", i ? " " : "", v[i]);
        return buf;
}

/*
 * shmbrokerctl(1), OUTPUT: sizes "in bytes below 1024 (512B), else with a
 * binary suffix K, M, G, T, P or E and one decimal unless the figure is
 * whole (4K, 2.0M)"; reload: "Four lines, added, removed, changed and
 * kept, each followed by the channel names concerned, or - for none".
 * Scripts read both; each must be exactly as documented.
 */
START_TEST(test_shmbrokerctl_sizes_and_reload_lines) {
        static const struct {
                const char *name, *size;
        } rows[] = {
                { "b512", "512B" }, { "b1023", "1023B" }, { "k4", "4K" }, { "k1-5", "1.5K" }, { "m1", "1M" },
                { "m2-5", "2.5M" }, { "justunder1m", "1.0M" }, { "k1023-9", "1023.9K" },
        };
        static char out[65536];
        char prefix[64], token[32], *line;

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"b512\", \"size\": 512}, {\"name\": \"b1023\", \"size\": 1023},"
                                      " {\"name\": \"k4\", \"size\": 4096}, {\"name\": \"k1-5\", \"size\": 1536},"
                                      " {\"name\": \"m1\", \"size\": \"1M\"}, {\"name\": \"m2-5\", \"size\": 2621440},"
                                      " {\"name\": \"justunder1m\", \"size\": 1048525},"
                                      " {\"name\": \"k1023-9\", \"size\": 1048524}]");
        test_start_ok();
        for (int pass = 0; pass < 2; pass++) {
                ck_assert_int_eq(test_run(out, sizeof out, "%s %s 2>&1", SHMBROKERCTL_PATH, pass ? "status" : "list"), 0);
                for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
                        char *copy = strdup(out);

                        ck_assert_ptr_nonnull(copy);
                        snprintf(prefix, sizeof prefix, "%s ", rows[i].name);
                        snprintf(token, sizeof token, " %s ", rows[i].size);
                        line = line_starting(copy, prefix);
                        ck_assert_msg(line && strstr(line, token), "%s: no size \"%s\" in the row of %s: %s",
                                      pass ? "status" : "list", rows[i].size, rows[i].name, line ? line : out);
                        free(copy);
                }
        }

        /* Nothing changed: every line but kept says "-". */
        ck_assert_int_eq(test_run(out, sizeof out, "%s reload 2>&1", SHMBROKERCTL_PATH), 0);
        {
                static const char *const none[] = { "added ", "removed ", "changed " };
                char *copy;

                for (size_t i = 0; i < 3; i++) {
                        copy = strdup(out);
                        ck_assert_ptr_nonnull(copy);
                        line = line_starting(copy, none[i]);
                        ck_assert_msg(line, "no \"%s\" line: %s", none[i], out);
                        ck_assert_str_eq(words_after_label(line), "-");
                        free(copy);
                }
                copy = strdup(out);
                ck_assert_ptr_nonnull(copy);
                line = line_starting(copy, "kept ");
                ck_assert_msg(line, "no kept line: %s", out);
                ck_assert_str_eq(words_after_label(line), "b1023 b512 justunder1m k1-5 k1023-9 k4 m1 m2-5");
                free(copy);
        }
        /* Exactly four lines. */
        {
                int lines = 0;

                for (const char *p = out; (p = strchr(p, '\n')); p++)
                        lines++;
                ck_assert_msg(lines == 4, "%d lines: %s", lines, out);
        }

        /* One of each: b1023 dropped, "new" added, k4 grown, the rest kept. */
        test_daemon_write_config(&td, "[{\"name\": \"b512\", \"size\": 512}, {\"name\": \"new\", \"size\": 4096},"
                                      " {\"name\": \"k4\", \"size\": 8192}, {\"name\": \"k1-5\", \"size\": 1536},"
                                      " {\"name\": \"m1\", \"size\": \"1M\"}, {\"name\": \"m2-5\", \"size\": 2621440},"
                                      " {\"name\": \"justunder1m\", \"size\": 1048525},"
                                      " {\"name\": \"k1023-9\", \"size\": 1048524}]");
        ck_assert_int_eq(test_run(out, sizeof out, "%s reload 2>&1", SHMBROKERCTL_PATH), 0);
        {
                static const struct {
                        const char *label, *names;
                } expect[] = {
                        { "added ", "new" }, { "removed ", "b1023" }, { "changed ", "k4" }, { "kept ", "b512 justunder1m k1-5 k1023-9 m1 m2-5" },
                };

                for (size_t i = 0; i < sizeof expect / sizeof *expect; i++) {
                        char *copy = strdup(out);

                        ck_assert_ptr_nonnull(copy);
                        line = line_starting(copy, expect[i].label);
                        ck_assert_msg(line, "no \"%s\" line: %s", expect[i].label, out);
                        ck_assert_msg(strcmp(words_after_label(line), expect[i].names) == 0, "%s: \"%s\", not \"%s\"",
                                      expect[i].label, words_after_label(line), expect[i].names);
                        free(copy);
                }
        }
}
END_TEST

/*
 * shmbrokerctl(1), status CHANNEL: ACCESS is "ro, or rw once any open of
 * the channel on that connection was" (shmbroker-protocol(7), HOLDS): a
 * read-write mapping handed out cannot be taken back, so a later ro open
 * on the same connection must not show the hold as ro.
 */
START_TEST(test_shmbrokerctl_access_column_is_the_holds) {
        static char out[65536];
        shmb_channel *rw, *ro;
        char prefix[32], *line;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &rw), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RO, &ro), 0);
        ck_assert_int_eq(test_run(out, sizeof out, "%s status counter 2>&1", SHMBROKERCTL_PATH), 0);
        snprintf(prefix, sizeof prefix, "%8d ", (int) getpid());
        line = line_starting(out, prefix);
        ck_assert_msg(line, "no hold of pid %d: %s", (int) getpid(), out);
        ck_assert_msg(strstr(line, " rw "), "a hold opened rw, then ro, shown as: %s", line);
        shmb_close(ro);
        shmb_close(rw);
        shmb_disconnect(c);
}
END_TEST

/*
 * shmbrokerctl(1), EXIT STATUS 2: the daemon "did not answer within 5
 * seconds (the library's default bound, which the command does not
 * change)". A broker that takes the connection and never answers must
 * end the command with exit 2 and one line, after about that bound.
 */
START_TEST(test_shmbrokerctl_hung_broker_exits_2_after_the_bound) {
        static char out[4096];
        int64_t t;
        int rc;

        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        t = test_now_ms();
        rc = test_run(out, sizeof out, "%s list 2>&1 >/dev/null", SHMBROKERCTL_PATH);
        t = test_now_ms() - t;
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        ck_assert_msg(rc == 2, "exit %d after a hung broker: %s", rc, out);
        ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "not one line: \"%s\"", out);
        ck_assert_msg(t >= 4900 && t < 20000, "gave up after %lld ms, not the 5 s bound", (long long) t);
}
END_TEST

/*
 * shmbrokerctl(1), EXIT STATUS 2: "an invalid channel name (without
 * --json; with it, the daemon's EINVAL answer exits 1, but a name that is
 * not UTF-8 text ... exits 2)". Also: "Options must come before the
 * command: whatever follows the command is taken as its arguments".
 */
START_TEST(test_shmbrokerctl_invalid_name_exit_codes) {
        static char out[4096];
        json_t *j;

        ck_assert_int_eq(test_run(out, sizeof out, "%s status 'bad name' 2>&1 >/dev/null", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "not one line: \"%s\"", out);
        ck_assert_int_eq(test_run(out, sizeof out, "%s --json status 'bad name' 2>/dev/null", SHMBROKERCTL_PATH), 1);
        j = json_loads(out, 0, NULL);
        ck_assert_msg(j && json_is_false(json_object_get(j, "ok")) &&
                              strcmp(json_string_value(json_object_get(j, "error")) ?: "", "EINVAL") == 0,
                      "not the daemon's EINVAL answer: %s", out);
        json_decref(j);
        /* An option after the command is an argument: list takes none. */
        ck_assert_int_eq(test_run(out, sizeof out, "%s list --json 2>&1", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(!strchr(out, '{'), "--json after the command was taken as an option: %s", out);
}
END_TEST

/* ---- an open racing a reload that replaces the channel ---- */

/* "pair" as in `channels`, and grown: a reload between the two replaces it (new objects, same key). */
#define PAIR_SIZE 65536
#define PAIR_GROWN 69632
#define RACE_GROUP 4300
#define RACE_GROUP_JSON "4300"

static char *channels_with_pair(const char *pair_json) {
        char *json;

        ck_assert_int_ge(asprintf(&json,
                                  "[{\"name\": \"counter\", \"size\": 4096}, %s,"
                                  " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8},"
                                  " {\"name\": \"secret\", \"size\": 4096, \"mode\": \"0600\"},"
                                  " {\"name\": \"public\", \"size\": 4096, \"mode\": \"0644\"}]",
                                  pair_json), 0);
        return json;
}

static char *channels_with_pair_size(size_t size) {
        char pair[128];

        snprintf(pair, sizeof pair, "{\"name\": \"pair\", \"size\": %zu, \"semaphores\": [1, 0]}", size);
        return channels_with_pair(pair);
}

/* Write the config and reload; the answer must be a success. */
static void reload_to(const char *channels_json) {
        shmb_reload_result *res;
        shmb_client *c;
        int r;

        test_daemon_write_config(&td, channels_json);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        r = shmb_reload(c, &res);
        ck_assert_msg(r == 0, "reload: %s (%s)", shmb_strerror(r), shmb_client_last_message(c));
        shmb_reload_result_free(res);
        shmb_disconnect(c);
}

/* The broker's view of "pair": its ids and how many holds it lists. */
static void pair_status(int *ret_shm_id, int *ret_sem_id, size_t *ret_holds) {
        shmb_status_list *l;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_status(c, "pair", &l), 0);
        ck_assert_uint_eq(shmb_status_count(l), 1);
        *ret_shm_id = shmb_status_shm_id(l, 0);
        *ret_sem_id = shmb_status_sem_id(l, 0);
        *ret_holds = shmb_status_nclients(l, 0);
        shmb_status_free(l);
        shmb_disconnect(c);
}

/*
 * What an open handed out is consistent: the id is the segment the broker
 * described (key, unless it was removed since; size), and the address maps
 * that very segment (a byte written through it shows through a fresh
 * attachment by id). For children too: no Check assertions.
 */
static bool mapping_is_segment(shmb_channel *ch, unsigned char cookie) {
        volatile unsigned char *addr = shmb_channel_addr(ch);
        size_t size = shmb_channel_size(ch);
        struct shmid_ds ds;
        unsigned char *fresh;
        bool same;

        if (shmctl(shmb_channel_shm_id(ch), IPC_STAT, &ds) < 0 || ds.shm_segsz != size || size == 0)
                return false;
        if ((uint32_t) ds.shm_perm.__key != shmb_channel_shm_key(ch) && !(ds.shm_perm.mode & SHM_DEST))
                return false;
        addr[size - 1] = cookie;
        fresh = shmat(shmb_channel_shm_id(ch), NULL, SHM_RDONLY);
        if (fresh == (void *) -1)
                return false;
        same = fresh[size - 1] == cookie;
        shmdt(fresh);
        return same;
}

/* Write a file whole, by rename: for a child, where the helpers' assertions do not belong. */
static bool write_file(const char *path, const char *text) {
        char tmp[512];
        FILE *f;
        bool ok;

        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        f = fopen(tmp, "we");
        if (!f)
                return false;
        ok = fputs(text, f) >= 0;
        ok = fclose(f) == 0 && ok;
        return ok && rename(tmp, path) == 0;
}

#define RACE_RELOADS 150
#define RACE_MAX_MS 20000

/*
 * A writer of a ring's segment may rewrite the header while another process
 * opens the channel: here between the configured 8 slots of 256 B and 10 of
 * 192 B, the same 2560 bytes of slots. The new handle must run on the
 * broker's figures or refuse the open (-EPROTO), never on a split the
 * broker did not give (the header read again after it was checked).
 */
typedef struct HeaderFlipper {
        pthread_t thread;
        RingHeader *h;
        int stop;
} HeaderFlipper;

static void *flip_ring_header(void *userdata) {
        HeaderFlipper *f = userdata;

        while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
                __atomic_store_n(&f->h->slot_size, 192, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slot_stride, ring_slot_stride(192), __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slots, 10, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slot_size, 256, __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slot_stride, ring_slot_stride(256), __ATOMIC_RELAXED);
                __atomic_store_n(&f->h->slots, 8, __ATOMIC_RELAXED);
        }
        return NULL;
}

START_TEST(test_open_runs_on_the_brokers_ring_figures) {
        shmb_channel *writer = test_open_ok("ring", SHMB_RW);
        HeaderFlipper f = { .h = shmb_channel_addr(writer) };
        int64_t end = test_now_ms() + 3000;
        unsigned opened = 0, refused = 0;
        shmb_client *c;

        _Static_assert(10 * ((192 + RING_SLOT_HEADER + 63) / 64 * 64) == 8 * ((256 + RING_SLOT_HEADER + 63) / 64 * 64),
                       "the two splits must be of one size");
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(pthread_create(&f.thread, NULL, flip_ring_header, &f), 0);
        while (test_now_ms() < end) {
                shmb_channel *ch;
                int r = shmb_open(c, "ring", SHMB_RW, &ch);
                bool right;

                if (r == -EPROTO) {
                        refused++;
                        continue;
                }
                ck_assert_msg(r == 0, "open: %s", shmb_strerror(r));
                opened++;
                right = shmb_channel_slot_size(ch) == 256 && shmb_channel_slots(ch) == 8;
                if (!right)
                        __atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
                ck_assert_msg(right, "open %u: a ring of %u slots of %u B, where the broker gave 8 of 256", opened,
                              shmb_channel_slots(ch), shmb_channel_slot_size(ch));
                ck_assert_int_eq(shmb_close(ch), 0);
        }
        __atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
        ck_assert_int_eq(pthread_join(f.thread, NULL), 0);
        ck_assert_msg(opened > 0, "no open got through (%u refused)", refused);
        shmb_disconnect(c);
        ck_assert_int_eq(shmb_close(writer), 0);
}
END_TEST

/* The reloader: replace "pair" n times, alternating between the two configs. Exits 0 when all were done. */
static _Noreturn void reload_loop(char *const configs[2], int n) {
        shmb_client *c;

        if (shmb_connect(NULL, &c) < 0)
                _exit(2);
        for (int i = 0; i < n; i++) {
                shmb_reload_result *res;

                if (!write_file(td.config, configs[i % 2]))
                        _exit(3);
                if (shmb_reload(c, &res) < 0)
                        _exit(4);
                shmb_reload_result_free(res);
        }
        shmb_disconnect(c);
        _exit(0);
}

START_TEST(test_open_racing_replacements_is_never_exdev) {
        char *channels_json[2] = { channels_with_pair_size(PAIR_GROWN), channels_with_pair_size(PAIR_SIZE) };
        char *configs[2];
        shmb_channel *prev = NULL, *ch;
        shmb_client *c;
        int status = -1, last_id = -1, ids_seen = 0, opened = 0, churned = 0;
        int64_t deadline = test_now_ms() + RACE_MAX_MS;
        pid_t pid;

        for (int i = 0; i < 2; i++)
                ck_assert_int_ge(asprintf(&configs[i], "{\"version\": 1, \"socket\": \"%s\", \"channels\": %s}\n", td.socket,
                                          channels_json[i]), 0);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                reload_loop(configs, RACE_RELOADS);

        /*
         * Open again and again while the reloader replaces the channel. The
         * previous handle stays attached until the next open succeeded, so a
         * replaced segment often lives on (keyless) and a stale id still
         * attaches: the case that used to be taken for another namespace.
         */
        for (int i = 0;; i++) {
                int r = i % 2 ? shmb_open(c, "pair", SHMB_RW, &ch) : shmb_open_channel(NULL, "pair", SHMB_RW, &ch);

                ck_assert_msg(r != -EXDEV, "open #%d while the channel was being replaced: -EXDEV", i);
                /* -EIDRM only when it was replaced again each time the library asked. */
                ck_assert_msg(r == 0 || r == -EIDRM, "open #%d: %s", i, shmb_strerror(r));
                if (r == 0) {
                        size_t size = shmb_channel_size(ch);

                        ck_assert_msg(size == PAIR_SIZE || size == PAIR_GROWN, "size %zu", size);
                        ck_assert_msg(mapping_is_segment(ch, (unsigned char) i), "open #%d handed out an inconsistent mapping", i);
                        ids_seen += shmb_channel_shm_id(ch) != last_id;
                        last_id = shmb_channel_shm_id(ch);
                        ck_assert_int_eq(shmb_close(prev), 0);
                        prev = ch;
                        opened++;
                } else
                        churned++;
                if (waitpid(pid, &status, WNOHANG) == pid)
                        break;
                ck_assert_msg(test_now_ms() < deadline, "the reloader did not finish in time");
        }
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reloader: status %d", status);
        /* The opens did overlap the reloads. */
        ck_assert_int_gt(opened, 0);
        ck_assert_int_ge(ids_seen, 2);
        ck_assert_int_eq(shmb_close(prev), 0);
        shmb_disconnect(c);
        /* Nothing doubled, nothing left over from the failed attempts. */
        ck_assert_int_eq(test_ipcs_count("-m"), 5);
        ck_assert_int_eq(test_ipcs_count("-s"), 5);
        fprintf(stderr, "open racing %d replacements: %d opened, %d replaced each time (-EIDRM)\n", RACE_RELOADS, opened,
                churned);
        for (int i = 0; i < 2; i++) {
                free(configs[i]);
                free(channels_json[i]);
        }
}
END_TEST

/*
 * The deterministic race: the opener runs traced, and stops on entering its
 * first shmat(), after the broker answered; the broker then reloads, and
 * the opener goes on with ids the reload made stale. Nothing is mocked: the
 * real daemon, socket and kernel, stopped at the one point that matters.
 */
typedef struct Race {
        const char *reload_to;          /* the channels the broker reloads to, while the opener is stopped */
        bool unprivileged;              /* open as uid 65534 in RACE_GROUP */
} Race;

typedef struct RaceResult {
        int r;
        int shm_id, sem_id;
        uint64_t size;
        bool consistent;
        char message[256];
} RaceResult;

typedef struct RaceChild {
        pid_t pid;
        int go;                         /* closing it lets the opener close and exit */
        RaceResult result;
} RaceChild;

static _Noreturn void race_opener(const Race *race, int report, int go) {
        RaceResult res = { .r = -ENOSYS };
        shmb_channel *ch = NULL;
        shmb_client *c = NULL;
        char byte;

        if (race->unprivileged)
                test_drop_privileges(65534, 65534, RACE_GROUP);
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
                _exit(77);
        raise(SIGSTOP);
        res.r = shmb_connect(NULL, &c);
        if (res.r == 0) {
                res.r = shmb_open(c, "pair", SHMB_RW, &ch);
                snprintf(res.message, sizeof res.message, "%s", shmb_client_last_message(c));
        }
        if (res.r == 0) {
                res.shm_id = shmb_channel_shm_id(ch);
                res.sem_id = shmb_channel_sem_id(ch);
                res.size = shmb_channel_size(ch);
                res.consistent = mapping_is_segment(ch, 0x5a);
        }
        if (write(report, &res, sizeof res) != (ssize_t) sizeof res)
                _exit(3);
        /* Hold the channel until the parent has looked at the broker's status. */
        while (read(go, &byte, 1) > 0)
                ;
        shmb_close(ch);
        shmb_disconnect(c);
        _exit(0);
}

/* Run the race; false when this system does not let a process trace its child (nothing to check then). */
static bool race_run(const Race *race, RaceChild *ret) {
#ifdef SYS_shmat
        int report[2], go[2], status, sig = 0;
        pid_t pid;

        ck_assert_int_eq(pipe(report), 0);
        ck_assert_int_eq(pipe(go), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                close(report[0]);
                close(go[1]);
                race_opener(race, report[1], go[0]);
        }
        close(report[1]);
        close(go[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
                fprintf(stderr, "ptrace(PTRACE_TRACEME) is not permitted here: the deterministic race is not run\n");
                close(report[0]);
                close(go[1]);
                return false;
        }
        ck_assert_msg(WIFSTOPPED(status) && WSTOPSIG(status) == SIGSTOP, "opener: status %d", status);
        /* EXITKILL: should an assertion end this test, the opener goes with it. */
        ck_assert_int_eq(ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *) (long) (PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)), 0);
        for (int stops = 0;; stops++) {
                struct ptrace_syscall_info si;

                ck_assert_msg(stops < 100000, "the opener never called shmat()");
                ck_assert_int_eq(ptrace(PTRACE_SYSCALL, pid, NULL, (void *) (long) sig), 0);
                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                ck_assert_msg(WIFSTOPPED(status), "the opener ended before it attached: status %d", status);
                if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {
                        sig = WSTOPSIG(status);         /* a signal of its own: deliver it */
                        continue;
                }
                sig = 0;
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *) sizeof si, &si), 0);
                if (si.op == PTRACE_SYSCALL_INFO_ENTRY && si.entry.nr == SYS_shmat)
                        break;
        }
        /* The broker has answered; the opener has not attached yet. */
        reload_to(race->reload_to);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, pid, NULL, NULL), 0);
        ck_assert_int_eq(read(report[0], &ret->result, sizeof ret->result), (ssize_t) sizeof ret->result);
        close(report[0]);
        ret->pid = pid;
        ret->go = go[1];
        return true;
#else
        /* shmat() goes through the ipc() multiplexer here: no syscall number to stop at. */
        fprintf(stderr, "no shmat system call of its own on this architecture: the deterministic race is not run\n");
        return false;
#endif
}

static void race_end(RaceChild *child) {
        int status;

        close(child->go);
        ck_assert_int_eq(waitpid(child->pid, &status, 0), child->pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "opener: status %d", status);
}

/* Replaced between the answer and the attach: the library asks again and attaches the new objects. */
static void race_replaced(bool keep_old_attached) {
        char *grown = channels_with_pair_size(PAIR_GROWN);
        Race race = { .reload_to = grown };
        shmb_channel *old = NULL;
        int old_shm, old_sem, shm_id, sem_id;
        size_t holds;
        RaceChild child;

        /* Another client keeps the old segment alive: a stale id then still attaches, to a keyless segment. */
        if (keep_old_attached)
                old = test_open_ok("pair", SHMB_RW);
        pair_status(&old_shm, &old_sem, &holds);
        if (!race_run(&race, &child)) {
                shmb_close(old);
                free(grown);
                return;
        }
        ck_assert_msg(child.result.r == 0, "open across a replacement: %s", shmb_strerror(child.result.r));
        pair_status(&shm_id, &sem_id, &holds);
        ck_assert_int_ne(shm_id, old_shm);
        ck_assert_int_eq(child.result.shm_id, shm_id);
        ck_assert_int_eq(child.result.sem_id, sem_id);
        ck_assert_uint_eq(child.result.size, PAIR_GROWN);
        ck_assert_msg(child.result.consistent, "the opener's mapping is not the segment it names");
        /* One hold: the opener's, asked for twice on one connection; the old client's went with the old objects. */
        ck_assert_uint_eq(holds, 1);
        race_end(&child);
        pair_status(&shm_id, &sem_id, &holds);
        ck_assert_uint_eq(holds, 0);
        shmb_close(old);
        ck_assert_int_eq(test_ipcs_count("-m"), 5);
        ck_assert_int_eq(test_ipcs_count("-s"), 5);
        free(grown);
}

START_TEST(test_open_replaced_before_attach_old_segment_alive) {
        race_replaced(true);
}
END_TEST

START_TEST(test_open_replaced_before_attach_old_segment_gone) {
        race_replaced(false);
}
END_TEST

START_TEST(test_open_removed_before_attach_is_enoent) {
        static const char *const without_pair =
                "[{\"name\": \"counter\", \"size\": 4096},"
                " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8},"
                " {\"name\": \"secret\", \"size\": 4096, \"mode\": \"0600\"},"
                " {\"name\": \"public\", \"size\": 4096, \"mode\": \"0644\"}]";
        Race race = { .reload_to = without_pair };
        RaceChild child;

        if (!race_run(&race, &child))
                return;
        /* The broker's own answer to the repeated open, with its message. */
        ck_assert_msg(child.result.r == -ENOENT, "open of a channel removed meanwhile: %s", shmb_strerror(child.result.r));
        ck_assert_msg(strstr(child.result.message, "pair"), "message: %s", child.result.message);
        race_end(&child);
        ck_assert_int_eq(test_ipcs_count("-m"), 4);
        ck_assert_int_eq(test_ipcs_count("-s"), 4);
}
END_TEST

START_TEST(test_open_rights_revoked_before_attach_is_eacces) {
        char *shared = channels_with_pair("{\"name\": \"pair\", \"size\": 65536, \"semaphores\": [1, 0],"
                                                         " \"group\": " RACE_GROUP_JSON ", \"mode\": \"0660\"}");
        char *tightened = channels_with_pair("{\"name\": \"pair\", \"size\": 65536, \"semaphores\": [1, 0],"
                                                            " \"group\": " RACE_GROUP_JSON ", \"mode\": \"0600\"}");
        Race race = { .reload_to = tightened, .unprivileged = true };
        int shm_id, sem_id;
        size_t holds;
        RaceChild child;

        reload_to(shared);
        free(shared);
        if (!race_run(&race, &child)) {
                free(tightened);
                return;
        }
        /* The reload took the opener's rights (so it replaced the channel it had been granted): refused, not -EXDEV. */
        ck_assert_msg(child.result.r == -EACCES, "open whose rights were revoked meanwhile: %s",
                      shmb_strerror(child.result.r));
        ck_assert_msg(strstr(child.result.message, "may not open"), "message: %s", child.result.message);
        pair_status(&shm_id, &sem_id, &holds);
        ck_assert_uint_eq(holds, 0);
        race_end(&child);
        ck_assert_int_eq(test_ipcs_count("-m"), 5);
        ck_assert_int_eq(test_ipcs_count("-s"), 5);
        free(tightened);
}
END_TEST

/* ---- removal reaches every handle ---- */

/*
 * Promised: once a channel is removed (stop, a reload that drops or replaces it,
 * a crash restart that replaces it), every call on an old handle, blocked
 * ones included, answers -EIDRM within 100 ms. Here callers block for good
 * (timeout -1) in threads of this process or of a holder child: a receiver
 * on an empty ring ("rx"), a sender on a full one ("tx"), a semaphore wait
 * on a raw channel ("pair"). The wait for them is bounded generously, so a
 * slow machine fails nothing; the latency is printed.
 */
#define REMOVAL_WAIT_MS 5000

/* The usual channels, "pair" of pair_size bytes, and the rings "rx" and "tx" of `slots`, shared with RACE_GROUP. */
static char *removal_channels(size_t pair_size, unsigned slots, const char *mode) {
        char *json;

        ck_assert_int_ge(asprintf(&json,
                                  "[{\"name\": \"counter\", \"size\": 4096},"
                                  " {\"name\": \"pair\", \"size\": %zu, \"semaphores\": [1, 0]},"
                                  " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8},"
                                  " {\"name\": \"secret\", \"size\": 4096, \"mode\": \"0600\"},"
                                  " {\"name\": \"public\", \"size\": 4096, \"mode\": \"0644\"},"
                                  " {\"name\": \"rx\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": %u,"
                                  "  \"semaphores\": [0], \"group\": " RACE_GROUP_JSON ", \"mode\": \"%s\"},"
                                  " {\"name\": \"tx\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": %u,"
                                  "  \"semaphores\": [0], \"group\": " RACE_GROUP_JSON ", \"mode\": \"%s\"}]",
                                  pair_size, slots, mode, slots, mode), 0);
        return json;
}

typedef enum BlockedKind {
        BLOCKED_RECV,
        BLOCKED_SEND,
        BLOCKED_SEM_WAIT,
} BlockedKind;

static const char *const blocked_names[] = { "shmb_recv", "shmb_send", "shmb_sem_wait" };

/* One call that waits without a timeout, in a thread of its own. */
typedef struct Blocked {
        shmb_channel *ch;
        BlockedKind kind;
        pthread_t thread;
        int result;
        int64_t returned_ms;            /* 0 until it returned */
} Blocked;

static void *blocked_main(void *userdata) {
        Blocked *b = userdata;
        char buf[64];
        ssize_t r;

        switch (b->kind) {
        case BLOCKED_RECV:
                r = shmb_recv(b->ch, buf, sizeof buf, -1);
                break;
        case BLOCKED_SEND:
                r = shmb_send(b->ch, "m", 1, -1);
                break;
        default:
                r = shmb_sem_wait(b->ch, 1, -1);
                break;
        }
        b->result = (int) r;
        __atomic_store_n(&b->returned_ms, test_now_ms(), __ATOMIC_RELEASE);
        return NULL;
}

static int64_t blocked_returned(Blocked *b) {
        return __atomic_load_n(&b->returned_ms, __ATOMIC_ACQUIRE);
}

/* The wait has begun for real: a ring's sleeping flag is up, or the kernel counts the semaphore's waiter. */
static bool blocked_is_waiting(Blocked *b) {
        const RingHeader *h = shmb_channel_addr(b->ch);

        switch (b->kind) {
        case BLOCKED_RECV:
                return __atomic_load_n(&h->recv_sleeping, __ATOMIC_SEQ_CST) != 0;
        case BLOCKED_SEND:
                return __atomic_load_n(&h->send_sleeping, __ATOMIC_SEQ_CST) != 0;
        default:
                return semctl(shmb_channel_sem_id(b->ch), 1, GETNCNT) > 0;
        }
}

/*
 * Open rx, tx (filled) and, with_pair, pair; block a receiver, a sender and
 * a semaphore waiter on them; return once all three wait. No Check
 * assertions: a holder child calls it too. 0, or a line number that failed.
 */
static int block_callers(Blocked *b, bool with_pair) {
        static const char *const names[] = { "rx", "tx", "pair" };
        int n = with_pair ? 3 : 2, sent = 0;

        for (int i = 0; i < n; i++) {
                b[i] = (Blocked) { .kind = (BlockedKind) i };
                if (shmb_open_channel(NULL, names[i], SHMB_RW, &b[i].ch) < 0)
                        return __LINE__;
        }
        while (shmb_send(b[BLOCKED_SEND].ch, "f", 1, 0) == 0)
                sent++;
        if ((unsigned) sent != shmb_channel_slots(b[BLOCKED_SEND].ch))
                return __LINE__;
        for (int i = 0; i < n; i++)
                if (pthread_create(&b[i].thread, NULL, blocked_main, &b[i]) != 0)
                        return __LINE__;
        for (int i = 0; i < n; i++)
                for (int64_t until = test_now_ms() + REMOVAL_WAIT_MS; !blocked_is_waiting(&b[i]);) {
                        if (test_now_ms() > until)
                                return __LINE__;
                        usleep(1000);
                }
        /* Let them get from the flag into FUTEX_WAIT, where the old library slept for good. */
        usleep(50000);
        for (int i = 0; i < n; i++)
                if (blocked_returned(&b[i]))
                        return __LINE__;
        return 0;
}

/* Wait (bounded) for every blocked call to return; false if one is still blocked. */
static bool blocked_wait(Blocked *b, int n, int64_t until) {
        for (int i = 0; i < n; i++)
                while (!blocked_returned(&b[i])) {
                        if (test_now_ms() > until)
                                return false;
                        usleep(1000);
                }
        return true;
}

/* Every blocked call returned -EIDRM, soon after `since`; so do later calls on the same handles. */
static void assert_removed_everywhere(Blocked *b, int n, int64_t since, const char *what) {
        char buf[64];

        for (int i = 0; i < n; i++)
                ck_assert_msg(blocked_wait(&b[i], 1, since + REMOVAL_WAIT_MS),
                              "%s: a %s blocked before still waits %d ms later", what, blocked_names[b[i].kind],
                              REMOVAL_WAIT_MS);
        for (int i = 0; i < n; i++) {
                ck_assert_int_eq(pthread_join(b[i].thread, NULL), 0);
                fprintf(stderr, "removal (%s): a blocked %s returned %s after %" PRId64 " ms\n", what,
                        blocked_names[b[i].kind], shmb_errno_name(b[i].result) ?: "?", b[i].returned_ms - since);
                ck_assert_msg(b[i].result == -EIDRM, "%s: a blocked %s returned %d (%s), not -EIDRM", what,
                              blocked_names[b[i].kind], b[i].result, shmb_strerror(b[i].result));
        }
        /* Calls that would not wait: with room in rx, messages in tx and semaphore values to take. */
        ck_assert_int_eq(shmb_send(b[BLOCKED_RECV].ch, "x", 1, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv(b[BLOCKED_SEND].ch, buf, sizeof buf, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv(b[BLOCKED_RECV].ch, buf, sizeof buf, -1), -EIDRM);
        ck_assert_int_eq(shmb_sem_post(b[BLOCKED_RECV].ch, 0), -EIDRM);          /* a ring's own semaphores too */
        ck_assert_int_eq(shmb_sem_trywait(b[BLOCKED_SEND].ch, 0), -EIDRM);
        if (n > BLOCKED_SEM_WAIT) {
                ck_assert_int_eq(shmb_sem_post(b[BLOCKED_SEM_WAIT].ch, 1), -EIDRM);       /* EINVAL from the kernel */
                ck_assert_int_eq(shmb_sem_trywait(b[BLOCKED_SEM_WAIT].ch, 0), -EIDRM);
                ck_assert_int_eq(shmb_lock(b[BLOCKED_SEM_WAIT].ch, 0, 100), -EIDRM);
        }
        /* And the handle says so itself, ring or raw. */
        for (int i = 0; i < n; i++)
                ck_assert_msg(shmb_channel_check(b[i].ch) == -EIDRM, "%s: shmb_channel_check() of the %s's handle: %d",
                              what, blocked_names[b[i].kind], shmb_channel_check(b[i].ch));
        for (int i = 0; i < n; i++)
                shmb_close(b[i].ch);
}

/*
 * The daemon's stop reaches every blocked caller. scribble: first zero the
 * magic of the rings' headers, as any rw holder may (a bug, or malice): the
 * daemon made those headers and knows where state and the futex words are,
 * so that must not keep the others from learning that the channel is gone.
 */
static void stop_reaches_blocked_callers(bool scribble) {
        char *config = removal_channels(65536, 8, "0660");
        Blocked b[3];
        int64_t t;
        int line;

        reload_to(config);
        line = block_callers(b, true);
        ck_assert_msg(line == 0, "setting up the blocked callers failed at line %d", line);
        for (int i = BLOCKED_RECV; scribble && i <= BLOCKED_SEND; i++)
                __atomic_store_n(&((RingHeader *) shmb_channel_addr(b[i].ch))->magic, 0, __ATOMIC_SEQ_CST);
        t = test_now_ms();
        test_daemon_stop_ok(&td);
        assert_removed_everywhere(b, 3, t, scribble ? "SIGTERM, headers scribbled on" : "SIGTERM");
        free(config);
}

START_TEST(test_stop_reaches_blocked_callers) {
        stop_reaches_blocked_callers(false);
}
END_TEST

START_TEST(test_stop_reaches_blocked_callers_of_a_scribbled_header) {
        stop_reaches_blocked_callers(true);
}
END_TEST

START_TEST(test_replacing_reload_reaches_blocked_callers) {
        char *config = removal_channels(65536, 8, "0660"), *replaced = removal_channels(131072, 16, "0660");
        shmb_channel *fresh;
        Blocked b[3];
        char buf[64];
        int64_t t;
        int line;

        reload_to(config);
        line = block_callers(b, true);
        ck_assert_msg(line == 0, "setting up the blocked callers failed at line %d", line);
        t = test_now_ms();
        reload_to(replaced);            /* new slots for the rings, a new size for pair: all three replaced */
        assert_removed_everywhere(b, 3, t, "replacing reload");
        /* The new objects live: the removal marked the old header only. */
        fresh = test_open_ok("rx", SHMB_RW);
        ck_assert_uint_eq(shmb_channel_slots(fresh), 16);
        ck_assert_int_eq(shmb_send(fresh, "new", 3, 0), 0);
        ck_assert_int_eq(shmb_recv(fresh, buf, sizeof buf, 0), 3);
        shmb_close(fresh);
        fresh = test_open_ok("pair", SHMB_RW);
        ck_assert_int_eq(shmb_sem_post(fresh, 1), 0);
        ck_assert_int_eq(shmb_sem_wait(fresh, 1, 0), 0);
        shmb_close(fresh);
        free(config);
        free(replaced);
}
END_TEST

/* What the holder child reports: each blocked call's result and when it returned (0: never). */
typedef struct HolderReport {
        int line;
        int result[2];
        int64_t returned_ms[2];
        int later[2];                   /* a send on rx and a receive on tx afterwards */
} HolderReport;

static _Noreturn void revoked_holder(int ready, int report) {
        HolderReport rep = {};
        Blocked b[2];
        char buf[64];

        test_drop_privileges(65534, 65534, RACE_GROUP);
        rep.line = block_callers(b, false);
        if (write(ready, "r", 1) != 1)
                _exit(2);
        if (rep.line == 0) {
                /* Bounded: the parent reloads at once, and judges the times itself. */
                (void) blocked_wait(b, 2, test_now_ms() + 2 * REMOVAL_WAIT_MS);
                for (int i = 0; i < 2; i++) {
                        rep.result[i] = b[i].result;
                        rep.returned_ms[i] = blocked_returned(&b[i]);
                }
                rep.later[0] = shmb_send(b[BLOCKED_RECV].ch, "x", 1, 0);
                rep.later[1] = (int) shmb_recv(b[BLOCKED_SEND].ch, buf, sizeof buf, 0);
        }
        if (write(report, &rep, sizeof rep) != (ssize_t) sizeof rep)
                _exit(3);
        _exit(0);               /* threads still blocked (a failure) end with the process */
}

START_TEST(test_revoking_reload_reaches_blocked_holder) {
        char *shared = removal_channels(65536, 8, "0660"), *tightened = removal_channels(65536, 8, "0600");
        HolderReport rep;
        int ready[2], report[2], status;
        char byte;
        pid_t pid;
        int64_t t;

        reload_to(shared);
        ck_assert_int_eq(pipe(ready), 0);
        ck_assert_int_eq(pipe(report), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                close(ready[0]);
                close(report[0]);
                revoked_holder(ready[1], report[1]);
        }
        close(ready[1]);
        close(report[1]);
        ck_assert_int_eq(read(ready[0], &byte, 1), 1);
        t = test_now_ms();
        /* Only the mode changes, but it takes the holder's rights: the rings are replaced. */
        reload_to(tightened);
        ck_assert_int_eq(read(report[0], &rep, sizeof rep), (ssize_t) sizeof rep);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "holder: status %d", status);
        ck_assert_msg(rep.line == 0, "the holder's setup failed at line %d", rep.line);
        for (int i = 0; i < 2; i++) {
                ck_assert_msg(rep.returned_ms[i] != 0, "revoking reload: the holder's blocked %s never returned",
                              blocked_names[i]);
                fprintf(stderr, "removal (revoking reload): the holder's blocked %s returned %s after %" PRId64 " ms\n",
                        blocked_names[i], shmb_errno_name(rep.result[i]) ?: "?", rep.returned_ms[i] - t);
                ck_assert_int_eq(rep.result[i], -EIDRM);
                ck_assert_int_le(rep.returned_ms[i] - t, REMOVAL_WAIT_MS);
                ck_assert_int_eq(rep.later[i], -EIDRM);
        }
        close(ready[0]);
        close(report[0]);
        free(shared);
        free(tightened);
}
END_TEST

/*
 * A crash leaves clients blocked: they stay blocked (a killed daemon marks
 * nothing, and an adopted channel goes on working) until the restart
 * replaces their channel, which reclaim marks before removing it.
 */
START_TEST(test_crash_restart_replacing_reaches_blocked_callers) {
        char *config = removal_channels(65536, 8, "0660"), *replaced = removal_channels(65536, 16, "0660");
        shmb_channel *kept;
        Blocked b[2];
        char buf[64];
        int64_t t;
        int line;

        reload_to(config);
        kept = test_open_ok("ring", SHMB_RW);
        line = block_callers(b, false);
        ck_assert_msg(line == 0, "setting up the blocked callers failed at line %d", line);
        test_daemon_kill(&td, SIGKILL);
        usleep(200000);
        ck_assert_msg(!blocked_returned(&b[0]) && !blocked_returned(&b[1]), "a killed daemon woke blocked callers");
        test_daemon_write_config(&td, replaced);
        t = test_now_ms();
        test_start_ok();
        assert_removed_everywhere(b, 2, t, "crash restart");
        /* The unchanged ring was taken over: the old handle still works. */
        ck_assert_int_eq(shmb_send(kept, "kept", 4, 0), 0);
        ck_assert_int_eq(shmb_recv(kept, buf, sizeof buf, 0), 4);
        shmb_close(kept);
        free(config);
        free(replaced);
}
END_TEST

/* What old_ring_server() answers an open with (made before it forks). */
static char old_ring_answer[1024];

/* A broker of another ring layout: hello, then old_ring_answer to the open, then "ok" to anything. */
static void old_ring_server(int lfd) {
        int fd = accept(lfd, NULL, NULL);
        size_t lines = 0;
        char byte;

        if (fd < 0)
                _exit(1);
        while (read(fd, &byte, 1) == 1) {
                const char *answer;

                if (byte != '\n')
                        continue;
                answer = lines == 0 ? "{\"ok\":true,\"version\":1,\"server\":\"old\"}\n" :
                         lines == 1 ? old_ring_answer : "{\"ok\":true}\n";
                lines++;
                if (write(fd, answer, strlen(answer)) < 0)
                        break;
        }
        _exit(0);
}

/* A ring of a layout version this library does not speak is refused, with a sentence saying so. */
START_TEST(test_ring_of_another_layout_is_eproto) {
        shmb_channel *ring = test_open_ok("ring", SHMB_RW), *ch = NULL;
        RingHeader *h = shmb_channel_addr(ring);
        struct sockaddr_un sa;
        char expected[128];
        shmb_client *c;
        pid_t pid;

        /* The answer says layout 2, about the very objects of "ring": only the version is wrong. */
        snprintf(old_ring_answer, sizeof old_ring_answer,
                 "{\"ok\":true,\"channel\":\"ring\",\"shm_key\":%" PRIu32 ",\"shm_id\":%d,\"sem_key\":%" PRIu32
                 ",\"sem_id\":%d,\"size\":%" PRIu64 ",\"nsems\":%u,\"layout\":\"ring\",\"slot_size\":%" PRIu32
                 ",\"slots\":%" PRIu32 ",\"ring_version\":2}\n", shmb_channel_shm_key(ring), shmb_channel_shm_id(ring),
                 shmb_channel_sem_key(ring), shmb_channel_sem_id(ring), (uint64_t) shmb_channel_size(ring),
                 shmb_channel_nsems(ring) + RING_NSEMS, shmb_channel_slot_size(ring), shmb_channel_slots(ring));
        pid = fake_server_start("old.sock", old_ring_server, &sa);
        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &ch), -EPROTO);
        ck_assert_ptr_null(ch);
        snprintf(expected, sizeof expected, "layout is version 2; this library speaks version %d", RING_VERSION);
        ck_assert_msg(strstr(shmb_client_last_message(c), expected), "message: %s", shmb_client_last_message(c));
        shmb_disconnect(c);
        fake_server_stop(pid);

        /* The broker's answer is right, but the header is of layout 2. */
        h->version = 2;
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &ch), -EPROTO);
        ck_assert_msg(strstr(shmb_client_last_message(c), "header is layout version 2"), "message: %s",
                      shmb_client_last_message(c));
        shmb_disconnect(c);
        h->version = RING_VERSION;
        shmb_close(ring);
}
END_TEST

/* ---- reconnect: holds survive a broker restart ---- */

/*
 * The holds of pid on `channel`, as the broker's status says, asked on a
 * plain socket of the test's own; -1 when the broker has no such channel.
 */
/* The holds of process pid on `channel` as status lists them (-1: status failed); the last one's access in *access. */
static int holds_access_of(pid_t pid, const char *channel, const char **access) {
        static char last[8];
        char line[160];
        int fd = test_connect(td.socket), n = 0;
        json_t *resp, *e;
        size_t i;

        snprintf(line, sizeof line, "{\"op\":\"status\",\"channel\":\"%s\"}", channel);
        resp = test_request(fd, line);
        close(fd);
        last[0] = 0;
        if (access)
                *access = last;
        if (!json_is_true(json_object_get(resp, "ok"))) {
                json_decref(resp);
                return -1;
        }
        json_array_foreach(json_object_get(test_must_find(resp, channel), "clients"), i, e)
                if (test_jint(e, "pid") == pid) {
                        snprintf(last, sizeof last, "%s", test_jstr(e, "access"));
                        n++;
                }
        json_decref(resp);
        return n;
}

static int holds_of(pid_t pid, const char *channel) {
        return holds_access_of(pid, channel, NULL);
}

/* This process's holds on `channel`. */
static int my_holds(const char *channel) {
        return holds_of(getpid(), channel);
}

static bool crash_holds_back(void) {
        return my_holds("pair") == 1 && my_holds("ring") == 1 && my_holds("counter") == 1;
}

/*
 * An event loop as an application would run it: poll the clients' fds (20
 * ms at most), shmb_client_process() each, until done() or 5 s. No call
 * may take long, and each says connected or broker away, nothing else.
 */
static void drive_until(shmb_client *const *cs, size_t n, bool (*done)(void)) {
        int64_t deadline = test_now_ms() + 5000;

        while (!done()) {
                struct pollfd p[4];

                ck_assert_uint_le(n, 4);
                ck_assert_msg(test_now_ms() < deadline, "the library did not re-register within 5 s");
                for (size_t i = 0; i < n; i++) {
                        p[i] = (struct pollfd) { .fd = shmb_client_fd(cs[i]), .events = POLLIN };
                        ck_assert_int_ge(p[i].fd, 0);
                }
                ck_assert_int_ge(poll(p, n, 20), 0);
                for (size_t i = 0; i < n; i++) {
                        int64_t t = test_now_ms();
                        int r = shmb_client_process(cs[i]);

                        ck_assert_msg(r == 0 || r == -ECONNREFUSED, "process: %s", shmb_strerror(r));
                        ck_assert_int_lt(test_now_ms() - t, 500);
                }
        }
}

/* ---- crash restart with traffic in flight ---- */

enum { CRASH_MESSAGES = 1000 };

typedef struct CrashMsg {
        uint32_t seq;
        uint32_t check;         /* of seq, so a torn or stale slot shows */
} CrashMsg;

static uint32_t crash_check(uint32_t seq) {
        return seq * 2654435761u ^ 0x5bd1e995u;
}

/* The sender: 1000 messages through the crash, driving reconnection now and then; exit 0 if all were sent. */
static _Noreturn void crash_sender(void) {
        shmb_channel *ch;
        int r = shmb_open_channel(NULL, "ring", SHMB_RW, &ch);

        if (r < 0)
                _exit(10);
        for (uint32_t seq = 0; seq < CRASH_MESSAGES; seq++) {
                CrashMsg m = { .seq = seq, .check = crash_check(seq) };

                if (shmb_send(ch, &m, sizeof m, 20000) < 0)
                        _exit(11);
                if (seq % 16 == 0)
                        (void) shmb_client_process(shmb_channel_get_client(ch));
        }
        /* Stay until the broker lists this hold again, so the test can see it. */
        for (int i = 0; i < 500; i++) {
                (void) shmb_client_process(shmb_channel_get_client(ch));
                usleep(10000);
        }
        shmb_close(ch);
        _exit(0);
}

static void crash_receive(shmb_channel *ch, bool *seen, uint32_t n) {
        for (uint32_t i = 0; i < n; i++) {
                CrashMsg m;
                ssize_t k = shmb_recv(ch, &m, sizeof m, 20000);

                ck_assert_msg(k == (ssize_t) sizeof m, "receive %u: %zd", i, k);
                ck_assert_msg(m.seq < CRASH_MESSAGES && m.check == crash_check(m.seq), "torn message %u", m.seq);
                ck_assert_msg(!seen[m.seq], "message %u twice", m.seq);
                seen[m.seq] = true;
        }
}

/*
 * SIGKILL the broker while a sender is mid-stream (blocked on a full ring);
 * restart it: the ring is taken over, so the sender's blocked and later
 * sends all arrive, a new receiver gets the rest, none lost or doubled, the
 * ids are the same, and the sender's hold is listed again.
 */
START_TEST(test_crash_restart_keeps_traffic) {
        bool seen[CRASH_MESSAGES] = { false };
        shmb_channel *before, *after;
        int status, shm_id, sem_id;
        int64_t deadline;
        pid_t sender;

        ck_assert_int_eq(shmb_open_channel(NULL, "ring", SHMB_RW, &before), 0);
        shm_id = shmb_channel_shm_id(before);
        sem_id = shmb_channel_sem_id(before);
        sender = fork();
        ck_assert_int_ge(sender, 0);
        if (sender == 0)
                crash_sender();
        crash_receive(before, seen, 300);
        /* The sender fills the ring (8 slots) and blocks before the broker dies: its sleeping flag is up. */
        deadline = test_now_ms() + 5000;
        while (!__atomic_load_n(&((const RingHeader *) shmb_channel_addr(before))->send_sleeping, __ATOMIC_SEQ_CST)) {
                ck_assert_msg(test_now_ms() < deadline, "the sender did not block on the full ring within 5 s");
                usleep(1000);
        }
        test_daemon_kill(&td, SIGKILL);
        crash_receive(before, seen, 100);     /* the data path needs no broker */
        test_start_ok();
        ck_assert_int_eq(shmb_open_channel(NULL, "ring", SHMB_RW, &after), 0);
        ck_assert_int_eq(shmb_channel_shm_id(after), shm_id);
        ck_assert_int_eq(shmb_channel_sem_id(after), sem_id);
        crash_receive(after, seen, CRASH_MESSAGES - 400);
        for (uint32_t i = 0; i < CRASH_MESSAGES; i++)
                ck_assert_msg(seen[i], "message %u lost", i);
        ck_assert_int_eq(shmb_recv(after, NULL, 0, 0), -EAGAIN);
        deadline = test_now_ms() + 5000;
        while (holds_of(sender, "ring") != 1) {
                ck_assert_msg(test_now_ms() < deadline, "the sender's hold was not listed again within 5 s");
                usleep(20000);
        }
        ck_assert_int_eq(waitpid(sender, &status, 0), sender);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sender status %d", status);
        shmb_close(before);
        shmb_close(after);
}
END_TEST

START_TEST(test_reconnect_after_crash_keeps_holds) {
        shmb_channel *pair, *ring, *own, *peer;
        shmb_client *c, *clients[2];
        int fd, pair_id, ring_id;
        char buf[256];

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &pair), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &ring), 0);
        own = test_open_ok("counter", SHMB_RW);      /* a private connection, driven through its getter */
        clients[0] = c;
        clients[1] = shmb_channel_get_client(own);
        ck_assert_ptr_nonnull(clients[1]);
        pair_id = shmb_channel_shm_id(pair);
        ring_id = shmb_channel_shm_id(ring);
        fd = shmb_client_fd(c);
        ck_assert_int_ge(fd, 0);
        ck_assert(crash_holds_back());
        memcpy(shmb_channel_addr(pair), "cookie", 7);
        ck_assert_int_eq(shmb_send(ring, "before", 6, 1000), 0);

        test_daemon_kill(&td, SIGKILL);
        test_start_ok();                        /* same config and state directory: it adopts */
        ck_assert_int_eq(my_holds("pair"), 0);  /* the broker's records of holds died with it */
        drive_until(clients, 2, crash_holds_back);

        /* Back without the application seeing anything: same fd, same objects, working. */
        ck_assert_int_eq(shmb_client_fd(c), fd);
        ck_assert_int_eq(shmb_client_process(c), 0);
        {
                struct pollfd p = { .fd = fd, .events = POLLIN };

                ck_assert_int_eq(poll(&p, 1, 0), 0);    /* nothing left to do: no busy loop */
        }
        ck_assert_int_eq(shmb_channel_check(pair), 0);
        ck_assert_int_eq(shmb_channel_check(ring), 0);
        ck_assert_int_eq(shmb_channel_check(own), 0);
        ck_assert_str_eq(shmb_channel_addr(pair), "cookie");
        ck_assert_int_eq(shmb_sem_post(pair, 1), 0);
        ck_assert_int_eq(shmb_sem_trywait(pair, 1), 0);
        ck_assert_int_eq(shmb_lock(own, 0, 1000), 0);
        ck_assert_int_eq(shmb_unlock(own, 0), 0);
        peer = test_open_ok("ring", SHMB_RW);        /* a new client lands on the same ring */
        ck_assert_int_eq(shmb_channel_shm_id(peer), ring_id);
        ck_assert_int_eq(shmb_recv(peer, buf, sizeof buf, 1000), 6);
        ck_assert_int_eq(memcmp(buf, "before", 6), 0);
        ck_assert_int_eq(shmb_send(peer, "after", 5, 1000), 0);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 1000), 5);
        ck_assert_int_eq(memcmp(buf, "after", 5), 0);
        ck_assert_int_eq(shmb_send(ring, "again", 5, 1000), 0);
        ck_assert_int_eq(shmb_recv(peer, buf, sizeof buf, 1000), 5);
        ck_assert_int_eq(shmb_channel_shm_id(pair), pair_id);

        /* And the holds go as before. */
        ck_assert_int_eq(shmb_close(pair), 0);
        ck_assert_int_eq(my_holds("pair"), 0);
        ck_assert_int_eq(shmb_close(peer), 0);
        ck_assert_int_eq(shmb_close(ring), 0);
        ck_assert_int_eq(my_holds("ring"), 0);
        ck_assert_int_eq(shmb_close(own), 0);
        ck_assert_int_eq(my_holds("counter"), 0);
        shmb_disconnect(c);
}
END_TEST

/* ---- a holder table forged before a crash ---- */

/*
 * README, Security: a ring's holder table lives in its segment, which
 * every rw opener (here root) can write. The writer marks every entry but
 * the one genuine holder's LIVE for openers no broker can judge (pid 0;
 * pid 1 of no recorded namespace, no ids), then the broker is SIGKILLed.
 * The next broker must not take those entries for holders of the killed
 * run (a broker that believed the table did, and refused every rw open EUSERS): an rw
 * open on a new connection gets a token, the forged entries are no longer
 * LIVE, and the genuine holder, open across the crash, keeps its token
 * (its entry LIVE under the same generation) and its traffic.
 */
START_TEST(test_ring_holder_table_forged_before_a_crash_refuses_no_opens) {
        shmb_channel *ch = test_open_ok("ring", SHMB_RW), *fresh = NULL;
        RingHeader *h = shmb_channel_addr(ch);
        RingHolder *table = ring_holder_at(h, 0);
        uint64_t word;
        uint32_t mine;
        char buf[16];
        int r;

        mine = test_only_live_holder(table, RING_HOLDERS, "the ring's holder table before the forgery");
        ck_assert_int_eq(table[mine].pid, getpid());
        word = __atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE);
        test_forge_live_holders(table, RING_HOLDERS, mine);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        test_rejoin_through_status(ch, "ring");
        ck_assert_uint_eq(__atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE), word);
        r = shmb_open_channel(NULL, "ring", SHMB_RW, &fresh);
        ck_assert_msg(r == 0, "an rw open of the ring on a new connection after the restart: %s (%s)",
                      shmb_strerror(r), shmb_errno_name(r) ?: "?");
        /* Both tokens work, each way. */
        ck_assert_int_eq(shmb_send(fresh, "fresh", 5, 1000), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 1000), 5);
        ck_assert_int_eq(memcmp(buf, "fresh", 5), 0);
        ck_assert_int_eq(shmb_send(ch, "mine", 4, 1000), 0);
        ck_assert_int_eq(shmb_recv(fresh, buf, sizeof buf, 1000), 4);
        ck_assert_int_eq(memcmp(buf, "mine", 4), 0);
        ck_assert_int_eq(shmb_close(fresh), 0);
        /* The broker wrote its own states back: what is LIVE is the genuine holder, under its generation. */
        ck_assert_uint_eq(test_only_live_holder(table, RING_HOLDERS, "the ring's holder table after the restart"), mine);
        ck_assert_uint_eq(__atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE), word);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * A crash, then an administrator removes the dead daemon's segments with
 * ipcrm(1) (the usual cleanup of "stale segments after a crash"), then the
 * daemon starts again. The kernel gave the removed segments the key
 * IPC_PRIVATE, so the restart cannot prove them its own and makes the
 * channels anew; the library, rejoining, marks the handles stale and
 * shmb_channel_check() says -EIDRM. The callers blocked on the old rings
 * must learn it too (libshmbroker(3): a stale handle's "semaphore and ring
 * calls return -EIDRM"), not sleep for ever in a ring nobody will write.
 */
/* The removal channels, callers blocked on them (block_callers()), then the broker SIGKILLed. */
static void block_callers_then_crash(Blocked *b, bool with_pair) {
        char *config = removal_channels(65536, 8, "0660");
        int line;

        reload_to(config);
        free(config);
        line = block_callers(b, with_pair);
        ck_assert_msg(line == 0, "setting up the blocked callers failed at line %d", line);
        test_daemon_kill(&td, SIGKILL);
}

static shmb_channel *ipcrm_handles[2];

static bool ipcrm_handles_stale(void) {
        return shmb_channel_check(ipcrm_handles[0]) == -EIDRM && shmb_channel_check(ipcrm_handles[1]) == -EIDRM;
}

START_TEST(test_crash_ipcrm_restart_reaches_blocked_callers) {
        shmb_client *cs[2];
        Blocked b[2];
        int64_t t;

        block_callers_then_crash(b, false);
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(shmctl(shmb_channel_shm_id(b[i].ch), IPC_RMID, NULL), 0);
                ipcrm_handles[i] = b[i].ch;
                cs[i] = shmb_channel_get_client(b[i].ch);
        }
        test_start_ok();
        /*
         * shmbrokerd(8), CRASH RECLAIM: the start tells a removed ring's clients,
         * as a stop would, when its id, creator and size say it is the one
         * recorded (the kernel took its key).
         */
        for (int i = 0; i < 2; i++) {
                const RingHeader *h = shmat(shmb_channel_shm_id(b[i].ch), NULL, SHM_RDONLY);

                ck_assert_ptr_ne(h, (void *) -1);
                ck_assert_msg(ring_is_removed(h), "the restart did not mark the removed ring %d removed",
                              shmb_channel_shm_id(b[i].ch));
                ck_assert_int_eq(shmdt(h), 0);
        }
        /* The application drives its connections, as the manual asks; the handles are stale. */
        drive_until(cs, 2, ipcrm_handles_stale);
        for (int64_t end = test_now_ms() + 500; test_now_ms() < end;)
                for (int i = 0; i < 2; i++) {
                        (void) shmb_client_process(cs[i]);
                        usleep(20000);
                }
        t = test_now_ms();
        assert_removed_everywhere(b, 2, t, "crash, ipcrm, restart");
}
END_TEST

/*
 * The same cleanup with no broker to come back, and nobody driving the
 * connections: the waiters cannot learn it from a rejoin, nor from a
 * broker that marks the rings. libshmbroker(3): a wait that sleeps long
 * asks the kernel now and then whether its objects are still there, so
 * each returns -EIDRM, and every later call on the handle too.
 */
START_TEST(test_crash_ipcrm_without_broker_reaches_blocked_callers) {
        Blocked b[3];
        int64_t t;

        block_callers_then_crash(b, true);
        t = test_now_ms();
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(shmctl(shmb_channel_shm_id(b[i].ch), IPC_RMID, NULL), 0);
                ck_assert_int_eq(semctl(shmb_channel_sem_id(b[i].ch), 0, IPC_RMID), 0);
        }
        assert_removed_everywhere(b, 3, t, "crash, ipcrm, no broker");
        /* The rest of the dead run's objects go with the next start's reclaim. */
        test_start_ok();
}
END_TEST

/*
 * The usual cleanup after a crash takes the segments only (ipcrm -m): the
 * semaphore set of "pair" stays, with a caller blocked in it. The restart
 * cannot prove the segments its own and makes the channels anew, and the
 * library, rejoining, marks every handle stale. libshmbroker(3), BROKER
 * RESTARTS: a stale handle's "semaphore and ring calls return -EIDRM,
 * callers already blocked in them included", so the semaphore waiter must
 * learn it as the ring waiters do, not sleep for ever in a set that nobody
 * will post or remove.
 */
static shmb_channel *stale_handles[3];

static bool three_handles_stale(void) {
        for (int i = 0; i < 3; i++)
                if (shmb_channel_check(stale_handles[i]) != -EIDRM)
                        return false;
        return true;
}

/* The handles of b rejoin the restarted broker (driven as the manual asks) and are marked stale. */
static void drive_blocked_until_stale(Blocked *b) {
        shmb_client *cs[3];

        for (int i = 0; i < 3; i++) {
                stale_handles[i] = b[i].ch;
                cs[i] = shmb_channel_get_client(b[i].ch);
        }
        drive_until(cs, 3, three_handles_stale);
}

START_TEST(test_crash_ipcrm_segments_restart_reaches_blocked_semaphore_waiter) {
        Blocked b[3];
        int64_t t;

        block_callers_then_crash(b, true);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(shmctl(shmb_channel_shm_id(b[i].ch), IPC_RMID, NULL), 0);
        test_start_ok();
        drive_blocked_until_stale(b);
        t = test_now_ms();
        assert_removed_everywhere(b, 3, t, "crash, ipcrm -m, restart");
}
END_TEST

/*
 * A crash, and the state file lost before the restart (a state directory
 * on a tmpfs that was cleaned, or restored from an old backup): the restart
 * cannot prove the dead run's objects its own, leaves them as leftovers
 * and makes every channel at another key. The library rejoins and marks
 * the handles stale; the callers blocked in the old objects, the
 * semaphore waiter included, must return -EIDRM as the manual says.
 */
START_TEST(test_crash_lost_state_restart_reaches_blocked_callers) {
        char path[sizeof td.socket + 8];
        int shm_ids[3], sem_ids[3];
        Blocked b[3];
        int64_t t;

        block_callers_then_crash(b, true);
        /* Taken now: assert_removed_everywhere() closes the handles. */
        for (int i = 0; i < 3; i++) {
                shm_ids[i] = shmb_channel_shm_id(b[i].ch);
                sem_ids[i] = shmb_channel_sem_id(b[i].ch);
        }
        snprintf(path, sizeof path, "%s.state", td.socket);
        ck_assert_msg(unlink(path) == 0, "%s: %s", path, strerror(errno));
        test_start_ok();
        drive_blocked_until_stale(b);
        t = test_now_ms();
        assert_removed_everywhere(b, 3, t, "crash, state lost, restart");
        /* The leftovers are the test's to remove: nobody can prove them the broker's now. */
        for (int i = 0; i < 3; i++) {
                (void) shmctl(shm_ids[i], IPC_RMID, NULL);
                (void) semctl(sem_ids[i], 0, IPC_RMID);
        }
}
END_TEST

/* The access of this process's (one) hold on `channel`, as status lists it: "rw", "ro", or "" without one. */
static const char *my_access(const char *channel) {
        const char *access;

        ck_assert_int_ge(holds_access_of(getpid(), channel, &access), 0);
        return access;
}

static bool pair_held(void) {
        return my_holds("pair") == 1;
}

/*
 * A handle opened read-write, then another read-only on the same client:
 * one hold, judged by the read-write mapping it was handed (a reload that
 * takes write away must replace the channel), before and after the
 * library re-registers it with a broker that crashed.
 */
START_TEST(test_reconnect_keeps_the_strongest_access) {
        shmb_channel *rw, *ro;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &rw), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RO, &ro), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        ck_assert_str_eq(my_access("pair"), "rw");

        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        drive_until(&c, 1, pair_held);
        /* The broker answered the open before it listed the hold: take that answer in. */
        ck_assert_int_eq(shmb_client_process(c), 0);
        ck_assert_str_eq(my_access("pair"), "rw");
        ck_assert_int_eq(shmb_channel_check(rw), 0);
        ck_assert_int_eq(shmb_channel_check(ro), 0);

        /* The read-write mapping is gone: the hold still stands for what it was handed, until it ends. */
        ck_assert_int_eq(shmb_close(rw), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        ck_assert_str_eq(my_access("pair"), "rw");
        ck_assert_int_eq(shmb_close(ro), 0);
        ck_assert_int_eq(my_holds("pair"), 0);
        shmb_disconnect(c);
}
END_TEST

START_TEST(test_reconnect_broker_away_fails_fast) {
        shmb_status_list *l;
        shmb_channel *pair, *other = NULL;
        shmb_client *c;
        char *answer = NULL;
        int64_t end, t, worst = 0;
        int fd, wakeups = 0;
        pid_t pid = 0;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &pair), 0);
        fd = shmb_client_fd(c);
        ck_assert_int_ge(fd, 0);
        test_daemon_kill(&td, SIGKILL);
        {
                struct pollfd p = { .fd = fd, .events = POLLIN };

                ck_assert_int_eq(poll(&p, 1, 2000), 1); /* the broker's end wakes the loop */
        }

        /* 1.5 s of an event loop with the broker away: prompt, clear, and woken by the backoff only. */
        end = test_now_ms() + 1500;
        while (test_now_ms() < end) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int woken = poll(&p, 1, 20);

                t = test_now_ms();
                ck_assert_int_eq(shmb_client_process(c), -ECONNREFUSED);
                if (test_now_ms() - t > worst)
                        worst = test_now_ms() - t;
                if (woken > 0) {
                        wakeups++;
                        ck_assert_int_eq(poll(&p, 1, 0), 0);    /* handled: not readable again at once */
                }
        }
        ck_assert_int_lt(worst, 500);
        /* Attempts at 0, 50, 150, 350, 750, 1550 ms...: a handful, never a spin. */
        ck_assert_int_ge(wakeups, 3);
        ck_assert_int_le(wakeups, 10);
        ck_assert_int_eq(shmb_client_fd(c), fd);

        /* Broker calls: the same clear error at once, whether the socket is left over or gone. */
        t = test_now_ms();
        ck_assert_int_eq(shmb_status(c, "pair", &l), -ECONNREFUSED);
        ck_assert_int_eq(unlink(td.socket), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &other), -ECONNREFUSED);
        ck_assert_ptr_null(other);
        ck_assert_int_eq(shmb_request_json(c, "{\"op\":\"list\"}", &answer), -ECONNREFUSED);
        ck_assert_ptr_null(answer);
        ck_assert_int_eq(shmb_client_process(c), -ECONNREFUSED);
        ck_assert_int_lt(test_now_ms() - t, 500);
        /* Meanwhile the channel works: nobody removed it. */
        ck_assert_int_eq(shmb_channel_check(pair), 0);
        ck_assert_int_eq(shmb_sem_post(pair, 1), 0);
        ck_assert_int_eq(shmb_sem_trywait(pair, 1), 0);

        /* Back: the next call reconnects by itself and re-registers first, no process() needed. */
        test_start_ok();
        ck_assert_int_eq(shmb_status(c, "pair", &l), 0);
        ck_assert_uint_eq(shmb_status_count(l), 1);
        ck_assert_uint_eq(shmb_status_nclients(l, 0), 1);
        ck_assert_int_eq(shmb_status_client(l, 0, 0, &pid, NULL, NULL, NULL), 0);
        ck_assert_int_eq(pid, getpid());
        shmb_status_free(l);
        ck_assert_int_eq(shmb_client_process(c), 0);
        ck_assert_int_eq(shmb_close(pair), 0);
        ck_assert_int_eq(my_holds("pair"), 0);
        shmb_disconnect(c);
}
END_TEST

static shmb_client *stale_client;

static bool stale_rejoined(void) {
        shmb_status_list *l;

        /* A call waits for the rejoin's answers, so a list that works means it is complete. */
        if (shmb_client_process(stale_client) != 0 || shmb_list(stale_client, &l) != 0)
                return false;
        shmb_status_free(l);
        return true;
}

START_TEST(test_reconnect_after_stop_marks_handles_stale) {
        static const char *const without_ring =
                "[{\"name\": \"counter\", \"size\": 4096},"
                " {\"name\": \"pair\", \"size\": 65536, \"semaphores\": [1, 0]}]";
        shmb_channel *old, *old_ring, *fresh;
        shmb_client *c;
        int old_shm, old_sem;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &old), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &old_ring), 0);
        old_shm = shmb_channel_shm_id(old);
        old_sem = shmb_channel_sem_id(old);

        test_daemon_stop_ok(&td);               /* SIGTERM: every channel removed */
        test_daemon_write_config(&td, without_ring);
        test_start_ok();                        /* pair made anew (new ids), ring gone */
        stale_client = c;
        drive_until(&c, 1, stale_rejoined);

        /* The re-open found other ids (pair) or nothing (ring): no hold kept, nothing attached behind our back. */
        ck_assert_int_eq(my_holds("pair"), 0);
        ck_assert_int_eq(my_holds("ring"), -1);
        ck_assert_int_eq(shmb_channel_shm_id(old), old_shm);
        ck_assert_int_eq(shmb_channel_check(old), -EIDRM);
        ck_assert_int_eq(shmb_channel_check(old_ring), -EIDRM);
        ck_assert_int_eq(shmb_sem_post(old, 1), -EIDRM);

        /* Reopening is the application's move; the stale handle's close leaves the new hold alone. */
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &fresh), 0);
        ck_assert_int_ne(shmb_channel_shm_id(fresh), old_shm);
        ck_assert_int_ne(shmb_channel_sem_id(fresh), old_sem);
        ck_assert_int_eq(shmb_channel_check(fresh), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        ck_assert_int_eq(shmb_close(old), 0);
        ck_assert_int_eq(shmb_close(old_ring), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        ck_assert_int_eq(shmb_sem_post(fresh, 1), 0);
        ck_assert_int_eq(shmb_close(fresh), 0);
        ck_assert_int_eq(my_holds("pair"), 0);
        shmb_disconnect(c);
}
END_TEST

/*
 * libshmbroker(3), BROKER RESTARTS: a handle whose channel was made anew
 * is marked stale, "and the hold that the re-registration took is given
 * back at once". A crash restart with "pair" changed (made anew) and
 * "counter" unchanged (taken over): the rejoin opens both; once the
 * broker holds "counter" for us, both answers wait on the socket, and the
 * one call that reads them must also send the close for "pair", not leave
 * it to a next call that a program may never make (a broadcast
 * subscriber's place, held, would refuse others with EUSERS).
 */
START_TEST(test_stale_hold_given_back_without_a_further_call) {
        shmb_channel *old, *kept;
        shmb_client *c;
        int64_t deadline;
        char *changed;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &kept), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &old), 0);
        test_daemon_kill(&td, SIGKILL);
        changed = strdup(channels);
        ck_assert_ptr_nonnull(changed);
        memcpy(strstr(changed, "65536"), "32768", 5);  /* pair: another size, made anew */
        test_daemon_write_config(&td, changed);
        free(changed);
        test_start_ok();

        /* Calls until the rejoin is sent and answered: the broker then holds "counter" for us again. */
        deadline = test_now_ms() + 10000;
        while (my_holds("counter") != 1) {
                int r = shmb_client_process(c);

                ck_assert_msg(r == 0 || r == -ECONNREFUSED, "process: %s", shmb_strerror(r));
                ck_assert_msg(test_now_ms() < deadline, "the library did not re-register within 10 s");
                usleep(10000);
        }
        /* The call that reads the answers (pair: other ids, stale); after it, none. */
        ck_assert_int_eq(shmb_client_process(c), 0);
        deadline = test_now_ms() + 2000;
        while (my_holds("pair") != 0) {
                ck_assert_msg(test_now_ms() < deadline,
                              "a stale handle's hold on the new channel was not given back without a further call");
                usleep(10000);
        }
        ck_assert_int_eq(my_holds("counter"), 1);
        ck_assert_int_eq(shmb_close(old), 0);
        ck_assert_int_eq(shmb_close(kept), 0);
        shmb_disconnect(c);
}
END_TEST

/* The cleanup helpers end a scope as shmb_close()/shmb_disconnect() would: the holds go with it. */
static void scoped_channel(shmb_client *c) {
        __attribute__((cleanup(shmb_closep))) shmb_channel *ch = NULL, *unused = NULL;

        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &ch), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        ck_assert_ptr_null(unused);
}

static shmb_channel *scoped_client(void) {
        __attribute__((cleanup(shmb_disconnectp))) shmb_client *c = NULL;
        shmb_channel *ch;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &ch), 0);
        ck_assert_int_eq(my_holds("counter"), 1);
        return ch;
}

START_TEST(test_cleanup_helpers_end_holds) {
        shmb_client *c;
        shmb_channel *left;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        scoped_channel(c);
        ck_assert_int_eq(my_holds("pair"), 0);          /* closed, while the connection lives on */
        left = scoped_client();
        ck_assert_int_eq(my_holds("counter"), 0);       /* its connection ended */
        ck_assert_int_eq(shmb_close(left), 0);
        shmb_disconnect(c);
}
END_TEST

/* ---- zero copy ---- */

/* Where in its own mapping of the segment a handle's pointer lies. */
static size_t offset_in(const shmb_channel *ch, const void *p) {
        const char *base = shmb_channel_addr(ch);

        ck_assert((const char *) p >= base && (const char *) p < base + shmb_channel_size(ch));
        return (size_t) ((const char *) p - base);
}

/* Mark dead, as the broker does (the low half of its holder entry's word), the token that claimed buf to send. */
static void mark_claimer_dead(const shmb_channel *ch, const void *buf) {
        RingHeader *h = shmb_channel_addr(ch);
        const RingSlot *slot = (const RingSlot *) ((const char *) buf - RING_SLOT_HEADER);
        uint32_t token = (uint32_t) __atomic_load_n(&slot->send_owner, __ATOMIC_ACQUIRE);

        for (uint32_t i = 0; i < h->holders; i++) {
                RingHolder *e = ring_holder_at(h, i);
                uint64_t word = __atomic_load_n(&e->word, __ATOMIC_ACQUIRE);

                if ((uint32_t) word == RING_HOLDER_LIVE && ring_token(i, (uint32_t) (word >> 32)) == token) {
                        __atomic_store_n(&e->word, (word & ~UINT64_C(0xffffffff)) | RING_HOLDER_DEAD, __ATOMIC_RELEASE);
                        return;
                }
        }
        ck_abort_msg("no live holder with token %u", (unsigned) token);
}

/*
 * Reserve, write in place, commit; peek in place (the same bytes of the
 * segment, through another handle's mapping), release. Abort leaves no
 * message. Each pointer is good for one commit, abort or release: a second
 * one, or any other pointer, is -EINVAL and changes nothing.
 */
START_TEST(test_zero_copy_in_place) {
        shmb_channel *tx = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW), *ro = test_open_ok("ring", SHMB_RO);
        const void *in;
        void *out, *dropped;
        char buf[256];
        int x = 0;

        ck_assert_int_eq(shmb_send_reserve(tx, 257, &out, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_send_reserve(ro, 8, &out, 0), -EACCES);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send_reserve(tx, 64, &out, 0), 0);
        memset(out, 'z', 64);
        memcpy(out, "zero-copy", 9);
        /* Not published yet: a receiver that will not wait finds nothing. */
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 0), -EAGAIN);
        ck_assert_int_eq(shmb_send_commit(tx, out, 257), -EMSGSIZE);
        ck_assert_int_eq(shmb_send_commit(tx, (char *) out + 1, 64), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(tx, &x, 4), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(rx, out, 64), -EINVAL);      /* not even in rx's mapping */
        /* The same slot in rx's own mapping: a claim of another handle's token. */
        ck_assert_int_eq(shmb_send_commit(rx, (char *) shmb_channel_addr(rx) + offset_in(tx, out), 64), -EINVAL);
        ck_assert_int_eq(shmb_send_abort(rx, (char *) shmb_channel_addr(rx) + offset_in(tx, out)), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(tx, out, 64), 0);
        ck_assert_int_eq(shmb_send_commit(tx, out, 64), -EINVAL);
        ck_assert_int_eq(shmb_send_abort(tx, out), -EINVAL);

        ck_assert_int_eq(shmb_recv_peek(rx, &in, 1000), 64);
        ck_assert_uint_eq(offset_in(rx, in), offset_in(tx, out));
        ck_assert_int_eq(memcmp(in, "zero-copy", 9), 0);
        ck_assert_int_eq(shmb_recv_release(tx, in), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(tx, (char *) shmb_channel_addr(tx) + offset_in(rx, in)), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(rx, in), 0);
        ck_assert_int_eq(shmb_recv_release(rx, in), -EINVAL);

        /* An aborted slot is skipped: the receiver gets the next message. */
        ck_assert_int_eq(shmb_send_reserve(tx, 16, &dropped, 0), 0);
        memcpy(dropped, "dropped", 7);
        ck_assert_int_eq(shmb_send_abort(tx, dropped), 0);
        ck_assert_int_eq(shmb_send_commit(tx, dropped, 7), -EINVAL);
        ck_assert_int_eq(shmb_send(tx, "kept", 4, 0), 0);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 1000), 4);
        ck_assert_int_eq(memcmp(buf, "kept", 4), 0);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 0), -EAGAIN);

        /* Two claims at once on one handle, committed out of order: delivered in slot order. */
        ck_assert_int_eq(shmb_send_reserve(tx, 1, &out, 0), 0);
        ck_assert_int_eq(shmb_send_reserve(tx, 1, &dropped, 0), 0);
        memcpy(out, "1", 1);
        memcpy(dropped, "2", 1);
        ck_assert_int_eq(shmb_send_commit(tx, dropped, 1), 0);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 0), -EAGAIN);         /* the first is not yet published */
        ck_assert_int_eq(shmb_send_commit(tx, out, 1), 0);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 1000), 1);
        ck_assert_int_eq(buf[0], '1');
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 1000), 1);
        ck_assert_int_eq(buf[0], '2');

        /*
         * A handle the broker counts as gone (its token marked dead, as when its process was taken for
         * exited) has its claims taken back: commit and release say so, rather than -EINVAL.
         */
        ck_assert_int_eq(shmb_send_reserve(tx, 1, &out, 0), 0);
        mark_claimer_dead(tx, out);
        /* A receiver that waits at the slot repairs it: the claim is skipped, and nothing else is there. */
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 300), -ETIMEDOUT);
        ck_assert_int_eq(shmb_send_commit(tx, out, 1), -ENOTCONN);
        /* Also once the slot has gone round and another handle's message fills it. */
        for (int i = 0; i < 8; i++) {
                ck_assert_int_eq(shmb_send(rx, "y", 1, 0), 0);
                ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), 1);
        }
        ck_assert_int_eq(shmb_send_abort(tx, out), -ENOTCONN);
        ck_assert_int_eq(shmb_send_reserve(tx, 1, &out, 0), -ENOTCONN);
        shmb_close(ro);
        shmb_close(rx);
        shmb_close(tx);
}
END_TEST

/* A thread that sends one message on a ring handle after a pause: the peer of a call that must wait. */
typedef struct LateSend {
        shmb_channel *ch;
        pthread_t thread;
        int result;
} LateSend;

static void *late_send(void *userdata) {
        LateSend *l = userdata;

        usleep(100000);
        l->result = shmb_send(l->ch, "late", 4, 1000);
        return NULL;
}

/*
 * libshmbroker(3), Zero copy: commit, abort and release take a claim this
 * handle holds, else -EINVAL; the reserve and peek calls fail as
 * shmb_send() and shmb_recv() do: -EACCES on a SHMB_RO ring, -ENOTSUP on a
 * raw channel, -EINVAL for NULL. Misused calls an application plausibly
 * makes (a NULL out-pointer, a peeked pointer passed to commit, a reserved
 * one to release, the wrong handle kind) must refuse and take nothing: no
 * message lost, no slot left claimed to hold up the ring's other users.
 */
START_TEST(test_zero_copy_misuse_takes_nothing) {
        shmb_channel *h = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW),
                     *ro = test_open_ok("ring", SHMB_RO), *raw = test_open_ok("pair", SHMB_RW);
        const void *in = NULL;
        void *out = NULL;
        char buf[256];
        LateSend late = { .ch = h };

        /* NULL handles and NULL buffers. */
        ck_assert_int_eq(shmb_send_reserve(NULL, 1, &out, 0), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(NULL, out, 1), -EINVAL);
        ck_assert_int_eq(shmb_send_abort(NULL, out), -EINVAL);
        ck_assert_int_eq(shmb_recv_peek(NULL, &in, 0), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(NULL, in), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(h, NULL, 0), -EINVAL);
        ck_assert_int_eq(shmb_send_abort(h, NULL), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(h, NULL), -EINVAL);

        /* A reserve without a place for its pointer claims no slot: a whole lap of sends still fits. */
        for (int i = 0; i < 8; i++)
                ck_assert_int_eq(shmb_send_reserve(h, 1, NULL, 0), -EINVAL);
        for (int i = 0; i < 8; i++)
                ck_assert_int_eq(shmb_send(h, "a", 1, 0), 0);
        /* A peek without one consumes nothing: all eight are still there, for another receiver. */
        for (int i = 0; i < 8; i++)
                ck_assert_int_eq(shmb_recv_peek(h, NULL, 0), -EINVAL);
        for (int i = 0; i < 8; i++)
                ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), 1);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);

        /* The wrong handle kind: refused, whatever the pointer. */
        ck_assert_int_eq(shmb_send(ro, "x", 1, 0), -EACCES);
        ck_assert_int_eq(shmb_recv(ro, buf, sizeof buf, 0), -EACCES);
        ck_assert_int_eq(shmb_recv_peek(ro, &in, 0), -EACCES);
        ck_assert_int_eq(shmb_recv(raw, buf, sizeof buf, 0), -ENOTSUP);
        ck_assert_int_eq(shmb_send_reserve(raw, 1, &out, 0), -ENOTSUP);
        ck_assert_int_eq(shmb_recv_peek(raw, &in, 0), -ENOTSUP);

        /* One handle holds a peek and a reservation at once; each pointer is refused by the other side's calls. */
        ck_assert_int_eq(shmb_send(h, "peeked", 6, 0), 0);
        ck_assert_int_eq(shmb_recv_peek(h, &in, 0), 6);
        ck_assert_int_eq(shmb_send_reserve(h, 8, &out, 0), 0);
        memcpy(out, "reserved", 8);
        ck_assert_int_eq(shmb_send_commit(h, (void *) in, 6), -EINVAL);
        ck_assert_int_eq(shmb_send_abort(h, (void *) in), -EINVAL);
        ck_assert_int_eq(shmb_recv_release(h, out), -EINVAL);
        ck_assert_int_eq(shmb_send_commit(ro, out, 8), -EACCES);
        ck_assert_int_eq(shmb_recv_release(ro, in), -EACCES);
        ck_assert_int_eq(shmb_send_commit(raw, out, 8), -ENOTSUP);
        ck_assert_int_eq(shmb_recv_release(raw, in), -ENOTSUP);
        /* Nothing was published or freed by them: no message yet behind the peeked one. */
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        /* Both claims are intact and end as they should. */
        ck_assert_int_eq(memcmp(in, "peeked", 6), 0);
        ck_assert_int_eq(shmb_recv_release(h, in), 0);
        ck_assert_int_eq(shmb_send_commit(h, out, 8), 0);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 1000), 8);
        ck_assert_int_eq(memcmp(buf, "reserved", 8), 0);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);

        /* Any negative timeout waits without limit, as for semaphores: not a poll, not an error. */
        ck_assert_int_eq(pthread_create(&late.thread, NULL, late_send, &late), 0);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, -2), 4);
        ck_assert_int_eq(memcmp(in, "late", 4), 0);
        ck_assert_int_eq(shmb_recv_release(rx, in), 0);
        ck_assert_int_eq(pthread_join(late.thread, NULL), 0);
        ck_assert_int_eq(late.result, 0);

        shmb_close(raw);
        shmb_close(ro);
        shmb_close(rx);
        shmb_close(h);
}
END_TEST

/*
 * libshmbroker(3), Zero copy: shmb_recv_release() returns -ENOTCONN when the
 * broker counted the handle gone and its claim was taken back: what was
 * read may have been overwritten meanwhile (discard it). The late release
 * must say so, and must not free the slot, which holds another message now.
 */
START_TEST(test_zero_copy_release_after_repair) {
        shmb_channel *tx = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW),
                     *other = test_open_ok("ring", SHMB_RW);
        const RingSlot *slot;
        RingHeader *h = shmb_channel_addr(rx);
        const void *in;
        char buf[256];
        uint32_t token;
        bool marked = false;

        ck_assert_int_eq(shmb_send(tx, "m0", 2, 0), 0);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 1000), 2);
        /* Mark dead, as the broker does, the token that claimed the message to read it. */
        slot = (const RingSlot *) ((const char *) in - RING_SLOT_HEADER);
        token = (uint32_t) __atomic_load_n(&slot->recv_owner, __ATOMIC_ACQUIRE);
        for (uint32_t i = 0; i < h->holders && !marked; i++) {
                RingHolder *e = ring_holder_at(h, i);
                uint64_t word = __atomic_load_n(&e->word, __ATOMIC_ACQUIRE);

                if ((uint32_t) word == RING_HOLDER_LIVE && ring_token(i, (uint32_t) (word >> 32)) == token) {
                        __atomic_store_n(&e->word, (word & ~UINT64_C(0xffffffff)) | RING_HOLDER_DEAD, __ATOMIC_RELEASE);
                        marked = true;
                }
        }
        ck_assert_msg(marked, "no live holder with token %u", (unsigned) token);
        /* A lap of sends: the last comes round to the unreleased slot and frees it (that message is lost). */
        for (int i = 1; i <= 8; i++) {
                char m[2] = { 'm', (char) ('0' + i) };

                ck_assert_int_eq(shmb_send(tx, m, 2, 2000), 0);
        }
        ck_assert_int_eq(shmb_recv_release(rx, in), -ENOTCONN);
        /* The slot's new message was not taken by that release: the other receiver gets all eight, in order. */
        for (int i = 1; i <= 8; i++) {
                ck_assert_int_eq(shmb_recv(other, buf, sizeof buf, 1000), 2);
                ck_assert_int_eq(buf[1], '0' + i);
        }
        ck_assert_int_eq(shmb_recv(other, buf, sizeof buf, 0), -EAGAIN);
        shmb_close(other);
        shmb_close(rx);
        shmb_close(tx);
}
END_TEST

enum { ZC_MESSAGES = 10000 };

static uint32_t zc_sum(const unsigned char *p, size_t n) {
        uint32_t h = 2166136261u;

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 16777619u;
        return h;
}

/* Message i: its number, a checksum of the rest, then (i * 7) % 200 bytes that depend on i. */
static size_t zc_fill(unsigned char *p, uint32_t i) {
        size_t n = 8 + (i * 7u) % 200;
        uint32_t sum;

        memcpy(p, &i, 4);
        for (size_t k = 8; k < n; k++)
                p[k] = (unsigned char) (i + k * 31);
        sum = zc_sum(p + 8, n - 8);
        memcpy(p + 4, &sum, 4);
        return n;
}

/*
 * 10,000 checksummed messages from another process, through a ring of 8
 * slots: sent by reserve/commit and shmb_send in turn, received by
 * peek/release and shmb_recv in turn. None lost, none doubled, in order,
 * every byte as written.
 */
START_TEST(test_zero_copy_across_processes) {
        shmb_channel *rx = test_open_ok("ring", SHMB_RW);
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *tx;
                unsigned char msg[256];

                if (shmb_open_channel(NULL, "ring", SHMB_RW, &tx) < 0)
                        _exit(2);
                for (uint32_t i = 0; i < ZC_MESSAGES; i++) {
                        void *out;

                        if (i % 2 == 0) {
                                if (shmb_send_reserve(tx, 208, &out, 10000) < 0 ||
                                    shmb_send_commit(tx, out, zc_fill(out, i)) < 0)
                                        _exit(3);
                        } else if (shmb_send(tx, msg, zc_fill(msg, i), 10000) < 0)
                                _exit(4);
                }
                _exit(0);
        }
        for (uint32_t i = 0; i < ZC_MESSAGES; i++) {
                unsigned char buf[256];
                const unsigned char *p = buf;
                const void *in;
                uint32_t got, sum;
                ssize_t n;

                if (i % 3 == 0) {
                        n = shmb_recv_peek(rx, &in, 10000);
                        p = in;
                } else
                        n = shmb_recv(rx, buf, sizeof buf, 10000);
                ck_assert_int_ge(n, 8);
                memcpy(&got, p, 4);
                memcpy(&sum, p + 4, 4);
                ck_assert_uint_eq(got, i);
                ck_assert_int_eq(n, 8 + (i * 7u) % 200);
                ck_assert_uint_eq(sum, zc_sum(p + 8, (size_t) n - 8));
                if (i % 3 == 0)
                        ck_assert_int_eq(shmb_recv_release(rx, in), 0);
        }
        wait_children(&pid, 1);
        shmb_close(rx);
}
END_TEST

/*
 * A process killed between reserve and commit, or between peek and
 * release, holds its slot only until the broker marks its token dead:
 * then receivers skip the unpublished slot, and senders coming round to
 * the unreleased one free it. Nobody waits for ever.
 */
START_TEST(test_zero_copy_killed_mid_claim) {
        shmb_channel *ch = test_open_ok("ring", SHMB_RW);
        char buf[256];
        int tell[2];
        pid_t pid;
        char c;

        ck_assert_int_eq(pipe(tell), 0);
        /* A sender dies holding a reserved slot. */
        ck_assert_int_eq(shmb_send(ch, "before", 6, 0), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *tx;
                void *out;

                if (shmb_open_channel(NULL, "ring", SHMB_RW, &tx) < 0 || shmb_send_reserve(tx, 100, &out, 0) < 0)
                        _exit(2);
                memset(out, 'X', 100);
                (void) !write(tell[1], "r", 1);
                pause();
                _exit(0);
        }
        ck_assert_int_eq(read(tell[0], &c, 1), 1);
        ck_assert_int_eq(shmb_send(ch, "after", 5, 0), 0);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 10000), 6);
        ck_assert_int_eq(memcmp(buf, "before", 6), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 10000), 5);
        ck_assert_int_eq(memcmp(buf, "after", 5), 0);

        /* A receiver dies holding a peeked message: a full ring's sender frees that slot and goes on. */
        ck_assert_int_eq(shmb_send(ch, "peeked", 6, 0), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *rx;
                const void *in;

                if (shmb_open_channel(NULL, "ring", SHMB_RW, &rx) < 0 || shmb_recv_peek(rx, &in, 0) != 6)
                        _exit(2);
                (void) !write(tell[1], "p", 1);
                pause();
                _exit(0);
        }
        ck_assert_int_eq(read(tell[0], &c, 1), 1);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        /* 8 slots: the eighth send needs the dead receiver's slot. */
        send_and_receive_a_lap(ch, 10000, 10000);
        close(tell[0]);
        close(tell[1]);
        shmb_close(ch);
}
END_TEST

/* Removal reaches claims too: once the broker removed the ring, commit, abort and release say so. */
START_TEST(test_zero_copy_claims_see_removal) {
        shmb_channel *tx = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW);
        const void *in;
        void *out, *kept;

        ck_assert_int_eq(shmb_send(tx, "m", 1, 0), 0);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 1000), 1);
        ck_assert_int_eq(shmb_send_reserve(tx, 8, &out, 0), 0);
        ck_assert_int_eq(shmb_send_reserve(tx, 8, &kept, 0), 0);
        test_daemon_stop_ok(&td);               /* SIGTERM: the ring is marked removed, then removed */
        ck_assert_int_eq(shmb_send_commit(tx, out, 8), -EIDRM);
        ck_assert_int_eq(shmb_send_abort(tx, kept), -EIDRM);
        ck_assert_int_eq(shmb_recv_release(rx, in), -EIDRM);
        ck_assert_int_eq(shmb_send_reserve(tx, 8, &out, 0), -EIDRM);
        ck_assert_int_eq(shmb_recv_peek(rx, &in, 0), -EIDRM);
        shmb_close(rx);
        shmb_close(tx);
}
END_TEST

/*
 * A handle closed with a reservation or a peek left open ends them at its
 * close, also when another handle of the ring on the same connection keeps
 * the hold, and with it the holder token, which the broker then does not
 * mark dead: the ring goes on at once, not once the process exits.
 */
START_TEST(test_zero_copy_close_ends_claims_of_a_shared_hold) {
        shmb_channel *a, *b, *other = test_open_ok("ring", SHMB_RW);
        shmb_client *c;
        const void *in;
        void *out;
        char buf[256];

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &a), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &b), 0);
        /* a reserves position 0 and closes; position 1 is another handle's message. */
        ck_assert_int_eq(shmb_send_reserve(a, 8, &out, 0), 0);
        memcpy(out, "left", 4);
        ck_assert_int_eq(shmb_close(a), 0);
        ck_assert_int_eq(shmb_send(other, "after", 5, 0), 0);
        ck_assert_int_eq(shmb_recv(other, buf, sizeof buf, 5000), 5);
        ck_assert_int_eq(memcmp(buf, "after", 5), 0);

        /* A peek left open at a close frees its slot: the eighth send needs it. */
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &a), 0);
        ck_assert_int_eq(shmb_send(other, "peeked", 6, 0), 0);
        ck_assert_int_eq(shmb_recv_peek(a, &in, 5000), 6);
        ck_assert_int_eq(shmb_close(a), 0);
        send_and_receive_a_lap(other, 0, 5000);

        /* b's own claims are b's: a close of another handle of the hold leaves them alone. */
        test_close_keeps_the_others_claim(c, "ring", b, other, other);
        shmb_close(b);
        shmb_close(other);
        shmb_disconnect(c);
}
END_TEST

/* ---- timeouts: a broker that accepts and never answers ---- */

typedef struct TimedCall {
        shmb_client *c;
        pthread_t thread;
        int r;
        int64_t ms, end;        /* how long it took, and when it returned (test_now_ms()) */
} TimedCall;

static void *timed_list(void *arg) {
        TimedCall *t = arg;
        shmb_status_list *l = NULL;
        int64_t start = test_now_ms();

        t->r = shmb_list(t->c, &l);
        t->end = test_now_ms();
        t->ms = t->end - start;
        if (t->r == 0)
                shmb_status_free(l);
        return NULL;
}

/*
 * A stopped broker (SIGSTOP: its backlog still takes connections, and
 * nothing answers) makes every call return -ETIMEDOUT once its bound
 * passed, not before and not much later, and a second thread on the same
 * client is held up by the first for no longer than that either. The
 * channels keep working meanwhile; once the broker runs again, the next
 * call reconnects and the hold is listed as before.
 */
START_TEST(test_timeout_hung_broker) {
        shmb_status_list *l;
        shmb_channel *pair, *other = NULL;
        TimedCall second;
        shmb_client *c;
        pid_t pid = 0;
        int64_t t;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &pair), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, 0), -EINVAL);
        ck_assert_int_eq(shmb_client_set_timeout(c, -2), -EINVAL);
        ck_assert_int_eq(shmb_client_set_timeout(NULL, 300), -EINVAL);
        ck_assert_int_eq(shmb_client_set_timeout(c, 300), 0);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);

        second = (TimedCall) { .c = c };
        t = test_now_ms();
        ck_assert_int_eq(pthread_create(&second.thread, NULL, timed_list, &second), 0);
        ck_assert_int_eq(shmb_status(c, "pair", &l), -ETIMEDOUT);
        t = test_now_ms() - t;
        ck_assert_int_eq(pthread_join(second.thread, NULL), 0);
        ck_assert_int_eq(second.r, -ETIMEDOUT);
        /* Each call waits out its own 300 ms, the second one after the first: 600 ms in all at most (and slack). */
        ck_assert_int_ge(t, 290);
        ck_assert_int_ge(second.ms, 290);
        ck_assert_int_lt(t, 3000);
        ck_assert_int_lt(second.ms, 3000);

        /* Reconnecting is bounded too: the broker still takes the connection, and never answers it. */
        t = test_now_ms();
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &other), -ETIMEDOUT);
        ck_assert_ptr_null(other);
        ck_assert_int_ge(test_now_ms() - t, 290);
        ck_assert_int_lt(test_now_ms() - t, 3000);
        ck_assert_int_eq(shmb_sem_post(pair, 1), 0);
        ck_assert_int_eq(shmb_sem_trywait(pair, 1), 0);

        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        ck_assert_int_eq(shmb_status(c, "pair", &l), 0);
        ck_assert_uint_eq(shmb_status_count(l), 1);
        ck_assert_uint_eq(shmb_status_nclients(l, 0), 1);
        ck_assert_int_eq(shmb_status_client(l, 0, 0, &pid, NULL, NULL, NULL), 0);
        ck_assert_int_eq(pid, getpid());
        shmb_status_free(l);
        ck_assert_int_eq(shmb_close(pair), 0);
        ck_assert_int_eq(my_holds("pair"), 0);
        shmb_disconnect(c);
}
END_TEST

/*
 * libshmbroker(3), shmb_close(): "for a ring or broadcast handle whose
 * connection went away, the library connects again first (within the
 * timeout; after a broker that hung, not before the next attempt is due,
 * so that a hung broker costs one close its timeout, not every close)";
 * client.c: "Attempts back off from 50 ms". Six ring handles on one
 * connection; the broker crashes and its restart hangs (SIGSTOP: its
 * backlog takes the connection, nothing answers). Closing them one after
 * the other: the first waits out the bound, and no later one waits for the
 * broker again unless the backoff's first step (50 ms) passed since the
 * last one that did.
 */
START_TEST(test_hung_broker_costs_one_close_its_timeout) {
        enum { N = 6, BOUND_MS = 1000, BACKOFF_MIN_MS = 50 };
        shmb_channel *h[N];
        shmb_client *c;
        int64_t start[N], took[N], last_wait_end = -1;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, BOUND_MS), 0);
        for (int i = 0; i < N; i++)
                ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &h[i]), 0);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        for (int64_t deadline = test_now_ms() + 5000; test_task_state(td.pid, 0) != 'T';) {
                ck_assert_msg(test_now_ms() < deadline, "the broker did not stop within 5 s");
                usleep(1000);
        }

        for (int i = 0; i < N; i++) {
                start[i] = test_now_ms();
                ck_assert_int_eq(shmb_close(h[i]), 0);
                took[i] = test_now_ms() - start[i];
        }
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        /* The first close met the hung broker (it tried, and waited out its bound)... */
        ck_assert_msg(took[0] >= BOUND_MS - 10, "the first close took %lld ms, not the %d ms bound: no hung broker met",
                      (long long) took[0], BOUND_MS);
        ck_assert_msg(took[0] < BOUND_MS + 5000, "the first close took %lld ms, far past its %d ms bound",
                      (long long) took[0], BOUND_MS);
        /* ...the others do not, before the next attempt is due. */
        for (int i = 0; i < N; i++) {
                if (took[i] < BOUND_MS / 2)
                        continue;
                ck_assert_msg(last_wait_end < 0 || start[i] - last_wait_end >= BACKOFF_MIN_MS,
                              "close %d waited %lld ms for the hung broker, %lld ms after an earlier close did "
                              "(the next attempt was not due)", i, (long long) took[i],
                              (long long) (start[i] - last_wait_end));
                last_wait_end = start[i] + took[i];
        }
        shmb_disconnect(c);
}
END_TEST

/*
 * libshmbroker(3), THREAD SAFETY: "a call that waits for another's to
 * finish waits at most that call's bound (shmb_client_set_timeout()) for
 * it, then its own". Six threads share one client while the broker is
 * stopped (SIGSTOP: its backlog takes connections, nothing answers): none
 * may take much longer than two bounds, however many calls are queued
 * ahead of it (unbounded, the last one waits out six).
 */
START_TEST(test_timeout_queued_threads_bounded) {
        enum { N = 6, BOUND_MS = 400 };
        TimedCall calls[N];
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, BOUND_MS), 0);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        for (int i = 0; i < N; i++) {
                calls[i] = (TimedCall) { .c = c };
                ck_assert_int_eq(pthread_create(&calls[i].thread, NULL, timed_list, &calls[i]), 0);
        }
        for (int i = 0; i < N; i++)
                ck_assert_int_eq(pthread_join(calls[i].thread, NULL), 0);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        for (int i = 0; i < N; i++) {
                ck_assert_int_eq(calls[i].r, -ETIMEDOUT);
                ck_assert_msg(calls[i].ms < 3 * BOUND_MS,
                              "a call on a client shared by %d threads took %lld ms with a %d ms bound", N,
                              (long long) calls[i].ms, BOUND_MS);
        }
        shmb_disconnect(c);
}
END_TEST

static void *timed_open(void *arg) {
        TimedCall *t = arg;
        shmb_channel *ch = NULL;
        int64_t start = test_now_ms();

        t->r = shmb_open(t->c, "counter", SHMB_RW, &ch);
        t->end = test_now_ms();
        t->ms = t->end - start;
        if (t->r == 0)
                shmb_close(ch);
        return NULL;
}

/*
 * shmb_client_set_timeout(): "calls of other threads that were waiting for
 * the one that timed out fail with it (-ETIMEDOUT), without waiting for the
 * broker again". An open queued behind a call in flight when the broker
 * hangs (SIGSTOP) is one of them: it returns when that call does, not a
 * bound later after reconnecting into the hung broker's backlog. (shmb_open()
 * takes the lock twice, once to list its hold and once for its request, and
 * the second is what counts as "asked".)
 */
START_TEST(test_timeout_queued_open_fails_with_the_hung_call) {
        enum { BOUND_MS = 1000 };
        TimedCall first, open;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, BOUND_MS), 0);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        first = (TimedCall) { .c = c };
        open = (TimedCall) { .c = c };
        ck_assert_int_eq(pthread_create(&first.thread, NULL, timed_list, &first), 0);
        /* Queued behind the list for sure: it is in flight (a tenth of its bound), and holds the lock. */
        usleep(BOUND_MS / 10 * 1000);
        ck_assert_int_eq(pthread_create(&open.thread, NULL, timed_open, &open), 0);
        ck_assert_int_eq(pthread_join(first.thread, NULL), 0);
        ck_assert_int_eq(pthread_join(open.thread, NULL), 0);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        ck_assert_int_eq(first.r, -ETIMEDOUT);
        ck_assert_int_eq(open.r, -ETIMEDOUT);
        /* Waiting for the broker again would end it a bound after the list; half a bound is slack for a busy machine. */
        ck_assert_msg(open.end - first.end < BOUND_MS / 2,
                      "an open queued behind a call that met a hung broker ended %lld ms after it (bound %d ms): it "
                      "waited for the broker again instead of failing with that call", (long long) (open.end - first.end),
                      BOUND_MS);
        shmb_disconnect(c);
}
END_TEST

/*
 * shmb_close(): "a hung broker costs one close its timeout, not every
 * close", here for a broker that hangs while the connection is up
 * (SIGSTOP, no crash first). A ring handle and a broadcast subscriber of
 * one client are closed one after the other: the first waits out the
 * bound; the second, started as the first ended, long before the next
 * attempt is due (a bound later, after a hang), does not wait again.
 */
START_TEST(test_hung_broker_up_costs_one_close_its_timeout) {
        enum { BOUND_MS = 1000 };
        shmb_channel *ring, *sub;
        shmb_client *c;
        int64_t t1, t2;

        reload_to("[{\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8},"
                  " {\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 256, \"slots\": 8, \"subscribers\": 4}]");
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, BOUND_MS), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &ring), 0);
        ck_assert_int_eq(shmb_open(c, "news", SHMB_RO, &sub), 0);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        t1 = test_now_ms();
        ck_assert_int_eq(shmb_close(ring), 0);
        t2 = test_now_ms();
        t1 = t2 - t1;
        ck_assert_int_eq(shmb_close(sub), 0);
        t2 = test_now_ms() - t2;
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        ck_assert_msg(t1 >= BOUND_MS - 10 && t1 < BOUND_MS + 5000,
                      "the first close took %lld ms, not about its %d ms bound", (long long) t1, BOUND_MS);
        ck_assert_msg(t2 < BOUND_MS / 2,
                      "the second close under a hung broker took %lld ms (bound %d ms): each close waited for it",
                      (long long) t2, BOUND_MS);
        shmb_disconnect(c);
}
END_TEST

typedef struct BusyCaller {
        shmb_client *c;
        pthread_t thread;
        volatile bool stop;
} BusyCaller;

/* Calls again and again, as a program's worker threads do, each call meeting the hung broker. */
static void *busy_lists(void *arg) {
        BusyCaller *b = arg;

        while (!b->stop) {
                shmb_status_list *l = NULL;

                if (shmb_list(b->c, &l) == 0)
                        shmb_status_free(l);
        }
        return NULL;
}

/*
 * shmb_close(): "a hung broker costs one close its bound" and "a close that
 * waited its bound for another thread's call on the connection gives
 * nothing back". Also while other threads keep calling on the connection
 * (each of their calls tries the hung broker for a bound and holds the
 * lock meanwhile): after its bound the close only has to take its handle
 * off the connection's list, which must not wait for those calls (a mutex
 * is not fair: it would queue behind call after call, for ever).
 */
START_TEST(test_close_beside_busy_threads_costs_one_bound) {
        enum { BOUND_MS = 300, THREADS = 4, HANDLES = 4 };
        BusyCaller busy[THREADS];
        shmb_channel *ch[HANDLES];
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, BOUND_MS), 0);
        for (int i = 0; i < HANDLES; i++)
                ck_assert_int_eq(shmb_open(c, i % 2 ? "pair" : "counter", SHMB_RW, &ch[i]), 0);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        for (int i = 0; i < THREADS; i++) {
                busy[i] = (BusyCaller) { .c = c };
                ck_assert_int_eq(pthread_create(&busy[i].thread, NULL, busy_lists, &busy[i]), 0);
        }
        /* The lock is busy with their calls by now. */
        usleep(BOUND_MS * 1000);
        for (int i = 0; i < HANDLES; i++) {
                int64_t start = test_now_ms(), ms;

                ck_assert_int_eq(shmb_close(ch[i]), 0);
                ms = test_now_ms() - start;
                ck_assert_msg(ms < 2 * BOUND_MS,
                              "close %d beside %d busy threads took %lld ms with a %d ms bound", i, THREADS,
                              (long long) ms, BOUND_MS);
        }
        for (int i = 0; i < THREADS; i++)
                busy[i].stop = true;
        for (int i = 0; i < THREADS; i++)
                ck_assert_int_eq(pthread_join(busy[i].thread, NULL), 0);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        shmb_disconnect(c);
}
END_TEST

/*
 * A child of fork(2) shares its parent's connection (the socket, the
 * epoll instance) but not its calls: the library refuses broker calls on
 * an inherited client (-ECHILD), and a shmb_close() of an inherited handle
 * gives nothing back, so the parent keeps its hold and its connection
 * stays in step.
 */
START_TEST(test_forked_child_leaves_parents_connection_alone) {
        shmb_status_list *l;
        shmb_channel *pair, *counter = NULL;
        shmb_client *c;
        pid_t pid;
        int status;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &pair), 0);
        ck_assert_int_ge(shmb_client_fd(c), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *ch = NULL;
                int code = 0;

                if (shmb_list(c, &l) != -ECHILD)
                        code |= 1;
                if (shmb_open(c, "counter", SHMB_RW, &ch) != -ECHILD || ch)
                        code |= 2;
                if (shmb_client_process(c) != -ECHILD || shmb_client_set_timeout(c, 100) != -ECHILD)
                        code |= 4;
                /* The event descriptor is the parent's epoll instance: the child gets none of it. */
                if (shmb_client_fd(c) != -ECHILD)
                        code |= 16;
                /* The mapping is the child's too: raw data and semaphores go on working. */
                if (shmb_sem_post(pair, 1) != 0)
                        code |= 8;
                (void) shmb_close(pair);
                shmb_disconnect(c);
                _exit(code);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "the child's calls on an inherited client were not refused (-ECHILD): exit status %#x", status);
        ck_assert_msg(my_holds("pair") == 1, "the child's shmb_close() of an inherited handle ended the parent's hold");
        ck_assert_int_eq(shmb_sem_trywait(pair, 1), 0);
        /* The parent's connection is where it was: its answers are its own. */
        ck_assert_int_eq(shmb_status(c, "pair", &l), 0);
        ck_assert_str_eq(shmb_status_name(l, 0), "pair");
        shmb_status_free(l);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &counter), 0);
        ck_assert_str_eq(shmb_channel_name(counter), "counter");
        ck_assert_int_eq(shmb_close(counter), 0);
        ck_assert_int_eq(shmb_close(pair), 0);
        ck_assert_int_eq(my_holds("pair"), 0);
        shmb_disconnect(c);
}
END_TEST

/*
 * libshmbroker(3): "shmb_disconnect() closes the connection. The broker
 * then drops every hold taken on it". Also while a child of fork(2) that
 * never calls the library (a worker, a helper about to do something else)
 * still has its copy of the socket: the broker must see the connection end
 * when the process that made it ends it.
 */
START_TEST(test_disconnect_ends_the_connection_despite_a_forked_child) {
        shmb_channel *pair;
        shmb_client *c;
        int go[2], status, held = -1;
        pid_t pid;

        ck_assert_int_eq(pipe(go), 0);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &pair), 0);
        ck_assert_int_eq(my_holds("pair"), 1);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                char b;

                close(go[1]);
                (void) read(go[0], &b, 1);      /* until the parent is done: its end of the pipe closes */
                _exit(0);
        }
        close(go[0]);
        shmb_disconnect(c);
        for (int64_t deadline = test_now_ms() + 2000; test_now_ms() < deadline; usleep(10000))
                if ((held = my_holds("pair")) == 0)
                        break;
        close(go[1]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(held == 0, "2 s after shmb_disconnect() the broker still lists the hold (%d): a forked child's "
                      "copy of the socket kept the connection open", held);
        ck_assert_int_eq(shmb_close(pair), 0);
}
END_TEST

/*
 * A broadcast subscriber's place is in shared memory: a child's shmb_close()
 * of an inherited subscriber must leave it to the parent, whose subscriber
 * the publisher still waits for (block mode: a full channel says -EAGAIN,
 * rather than overwriting what the parent has not read).
 */
START_TEST(test_forked_child_close_keeps_parents_subscriber) {
        enum { SLOTS = 8 };
        shmb_channel *pub, *sub;
        char buf[64];
        pid_t pid;
        int status, n = 0;

        reload_to("[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 8, \"subscribers\": 4}]");
        pub = test_open_ok("news", SHMB_RW);
        sub = test_open_ok("news", SHMB_RO);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                (void) shmb_close(sub);
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        while (n <= SLOTS && shmb_send(pub, &n, sizeof n, 0) == 0)
                n++;
        ck_assert_msg(n == SLOTS, "the publisher sent %d messages into %d slots: the subscriber was dropped", n, SLOTS);
        for (int i = 0; i < SLOTS; i++) {
                ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 1000), (ssize_t) sizeof i);
                ck_assert_int_eq(memcmp(buf, &i, sizeof i), 0);
        }
        ck_assert_int_eq(shmb_close(sub), 0);
        ck_assert_int_eq(shmb_close(pub), 0);
}
END_TEST

/*
 * libshmbroker(3): a child of fork(2) closing an inherited ring handle
 * gives nothing back and ends nothing of its parent's: the parent's
 * reservation and peek, open across the child's close, are still the
 * parent's to commit and to release.
 */
START_TEST(test_forked_child_close_leaves_parents_claims) {
        shmb_channel *ch = test_open_ok("ring", SHMB_RW), *other = test_open_ok("ring", SHMB_RW);
        const void *in;
        void *out;
        char buf[64];
        int status;
        pid_t pid;

        ck_assert_int_eq(shmb_send(other, "peek", 4, 0), 0);
        ck_assert_int_eq(shmb_recv_peek(ch, &in, 0), 4);
        ck_assert_int_eq(shmb_send_reserve(ch, 8, &out, 0), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                (void) shmb_close(ch);
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child: wait status 0x%x", status);
        ck_assert_int_eq(shmb_recv_release(ch, in), 0);
        memcpy(out, "mine", 4);
        ck_assert_int_eq(shmb_send_commit(ch, out, 4), 0);
        ck_assert_int_eq(shmb_recv(other, buf, sizeof buf, 1000), 4);
        ck_assert_int_eq(memcmp(buf, "mine", 4), 0);
        shmb_close(other);
        shmb_close(ch);
}
END_TEST

/* One line from fd into buf (newline kept, NUL-terminated); false at its end. */
static bool relay_read_line(int fd, char *buf, size_t size) {
        size_t n = 0;

        while (n + 1 < size && read(fd, &buf[n], 1) == 1)
                if (buf[n++] == '\n') {
                        buf[n] = 0;
                        return true;
                }
        return false;
}

/*
 * A relay to the real broker that asks it for "public" whenever its client
 * asks to open "pair": the stream of a connection out of step, as when
 * another process wrote on the socket.
 */
static void wrong_channel_relay(int lfd) {
        static const char asked[] = "\"channel\":\"pair\"", stray[] = "\"channel\":\"public\"";
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int c = accept(lfd, NULL, NULL), b = socket(AF_UNIX, SOCK_STREAM, 0);
        char line[65536], out[65536];

        if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", td.socket) >= (int) sizeof sa.sun_path ||
            c < 0 || b < 0 || connect(b, (struct sockaddr *) &sa, sizeof sa) < 0)
                _exit(1);
        while (relay_read_line(c, line, sizeof line)) {
                char *at = strstr(line, asked);

                if (at)
                        snprintf(out, sizeof out, "%.*s%s%s", (int) (at - line), line, stray, at + strlen(asked));
                else
                        snprintf(out, sizeof out, "%s", line);
                if (write(b, out, strlen(out)) < 0 || !relay_read_line(b, line, sizeof line) ||
                    write(c, line, strlen(line)) < 0)
                        break;
        }
        _exit(0);
}

/*
 * An answer that names another channel than the open asked for is not the
 * open's answer (a stream out of step): -EPROTO, never a handle to the
 * wrong channel, and the connection is closed for good.
 */
START_TEST(test_open_answer_of_another_channel_is_eproto) {
        struct sockaddr_un sa;
        shmb_channel *ch = NULL;
        shmb_client *c;
        pid_t pid = fake_server_start("relay.sock", wrong_channel_relay, &sa);

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RW, &ch), 0);
        ck_assert_str_eq(shmb_channel_name(ch), "counter");
        ck_assert_int_eq(shmb_close(ch), 0);
        ch = NULL;
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &ch), -EPROTO);
        ck_assert_msg(!ch, "shmb_open(\"pair\") gave a handle to \"%s\"", ch ? shmb_channel_name(ch) : "");
        ck_assert_int_eq(shmb_client_fd(c), -1);
        shmb_disconnect(c);
        fake_server_stop(pid);
}
END_TEST

/*
 * A relay to td's daemon that, on its first connection, writes the answer
 * to hello twice, in one write: a line nobody asked for, there between
 * calls. Its later connections pass everything on.
 */
static void extra_line_relay(int lfd) {
        for (int conn = 0;; conn++) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                int c = accept(lfd, NULL, NULL), b = socket(AF_UNIX, SOCK_STREAM, 0);
                char line[65536], twice[2 * sizeof line];

                if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", td.socket) >= (int) sizeof sa.sun_path ||
                    c < 0 || b < 0 || connect(b, (struct sockaddr *) &sa, sizeof sa) < 0)
                        _exit(1);
                for (int lines = 0; relay_read_line(c, line, sizeof line); lines++) {
                        if (write(b, line, strlen(line)) < 0 || !relay_read_line(b, line, sizeof line))
                                break;
                        snprintf(twice, sizeof twice, "%s%s", line, conn == 0 && lines == 0 ? line : "");
                        if (write(c, twice, strlen(twice)) < 0)
                                break;
                }
                close(b);
                close(c);
        }
}

/*
 * Between calls the broker never writes: a line found there is no call's
 * answer. The next call must not take it for its own (here, the list
 * would read hello's answer): it leaves that connection and asks again.
 */
START_TEST(test_line_between_calls_is_no_answer) {
        struct sockaddr_un sa;
        shmb_status_list *l = NULL;
        shmb_client *c;
        pid_t pid = fake_server_start("extra-relay.sock", extra_line_relay, &sa);

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        ck_assert_int_eq(shmb_list(c, &l), 0);
        ck_assert_uint_gt(shmb_status_count(l), 0);
        shmb_status_free(l);
        shmb_disconnect(c);
        fake_server_stop(pid);
}
END_TEST

/*
 * A relay to td's daemon: its first connection ends after the answers to
 * hello and one open; on the second, a rejoin, its open of "pair" goes out
 * as one of "public", so that the broker's answer names another channel.
 */
static void rejoin_wrong_channel_relay(int lfd) {
        static const char asked[] = "\"channel\":\"pair\"", stray[] = "\"channel\":\"public\"";

        for (int conn = 0; conn < 2; conn++) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                int c = accept(lfd, NULL, NULL), b = socket(AF_UNIX, SOCK_STREAM, 0), lines = 0;
                char line[65536], out[65536];

                if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", td.socket) >= (int) sizeof sa.sun_path ||
                    c < 0 || b < 0 || connect(b, (struct sockaddr *) &sa, sizeof sa) < 0)
                        _exit(1);
                while (relay_read_line(c, line, sizeof line)) {
                        char *at = conn == 1 ? strstr(line, asked) : NULL;

                        if (at)
                                snprintf(out, sizeof out, "%.*s%s%s", (int) (at - line), line, stray, at + strlen(asked));
                        else
                                snprintf(out, sizeof out, "%s", line);
                        if (write(b, out, strlen(out)) < 0 || !relay_read_line(b, line, sizeof line) ||
                            write(c, line, strlen(line)) < 0)
                                break;
                        if (conn == 0 && ++lines == 2)
                                break;
                }
                close(b);
                close(c);
        }
        _exit(0);
}

/*
 * The rejoin's answers are held to what the calls' are: an open answered
 * with another channel than it asked for is a stream out of step, which
 * closes the connection for good (-ENOTCONN), never a rejoin that goes on
 * as if the channel had been replaced.
 */
START_TEST(test_rejoin_answer_of_another_channel_closes_the_connection) {
        struct sockaddr_un sa;
        shmb_status_list *l = NULL;
        shmb_channel *ch = NULL;
        shmb_client *c;
        pid_t pid = fake_server_start("rejoin-relay.sock", rejoin_wrong_channel_relay, &sa);

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        ck_assert_int_eq(shmb_open(c, "pair", SHMB_RW, &ch), 0);
        {
                /* The relay ends the first connection (which wakes the loop): the next call rejoins first. */
                struct pollfd p = { .fd = shmb_client_fd(c), .events = POLLIN };

                ck_assert_int_ge(p.fd, 0);
                ck_assert_int_eq(poll(&p, 1, 10000), 1);
        }
        ck_assert_int_eq(shmb_list(c, &l), -ENOTCONN);
        ck_assert_ptr_null(l);
        ck_assert_int_eq(shmb_client_fd(c), -1);
        ck_assert_int_eq(shmb_close(ch), 0);
        shmb_disconnect(c);
        fake_server_stop(pid);
}
END_TEST

static int64_t thread_cpu_us(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts), 0);
        return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* After its first SLOW_FAST_LINES requests, a relay that passes on each of td's daemon's answers SLOW_DELAY_MS late. */
enum { SLOW_FAST_LINES = 2, SLOW_DELAY_MS = 100 };

static void slow_relay(int lfd) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int c = accept(lfd, NULL, NULL), b = socket(AF_UNIX, SOCK_STREAM, 0), lines = 0;
        char line[65536];

        if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", td.socket) >= (int) sizeof sa.sun_path ||
            c < 0 || b < 0 || connect(b, (struct sockaddr *) &sa, sizeof sa) < 0)
                _exit(1);
        /* Each answer in one write: a caller that reads it in pieces spends its CPU on the pieces. */
        while (relay_read_line(c, line, sizeof line)) {
                if (write(b, line, strlen(line)) < 0 || !relay_read_line(b, line, sizeof line))
                        break;
                if (++lines > SLOW_FAST_LINES)
                        usleep(SLOW_DELAY_MS * 1000);
                if (write(c, line, strlen(line)) < 0)
                        break;
        }
        _exit(0);
}

/*
 * libshmbroker(3): before a call sleeps for an answer, it looks for it
 * "for at most 100 microseconds". A broker that answers 100 ms late, five
 * calls that decode nothing (shmb_request_json()), after one untimed call
 * answered at once (so that valgrind has translated the code): the caller
 * sleeps through them, on about 0.3 ms of CPU in all (2 ms under
 * valgrind). A look that outlasted its bound 50 times over, or ran to the
 * answer, would take more than 5 ms (a bound of 10 ms, tried: 20 ms).
 */
START_TEST(test_slow_broker_is_slept_for_not_spun_for) {
        enum { CALLS = 5, CPU_MAX_US = 5000 };
        struct sockaddr_un sa;
        pid_t pid = fake_server_start("slow.sock", slow_relay, &sa);    /* the hello and the untimed call at once */
        shmb_client *c;
        int64_t cpu, wall;
        char *answer;

        ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
        ck_assert_int_eq(shmb_request_json(c, "{\"op\":\"list\"}", &answer), 0);
        free(answer);
        cpu = thread_cpu_us();
        wall = test_now_ms();
        for (int i = 0; i < CALLS; i++) {
                ck_assert_int_eq(shmb_request_json(c, "{\"op\":\"list\"}", &answer), 0);
                ck_assert_msg(strstr(answer, "\"ok\":true"), "%s", answer);
                free(answer);
        }
        cpu = thread_cpu_us() - cpu;
        wall = test_now_ms() - wall;
        ck_assert_msg(wall >= CALLS * SLOW_DELAY_MS, "%d calls took %lld ms: the broker did not delay them", CALLS,
                      (long long) wall);
        ck_assert_msg(cpu < CPU_MAX_US, "waiting %lld ms for %d answers took %lld us of CPU", (long long) wall, CALLS,
                      (long long) cpu);
        shmb_disconnect(c);
        fake_server_stop(pid);
}
END_TEST

/* The traced caller of test_late_answers_shrink_the_look_to_none(): calls, each after a getppid() that marks it. */
static void marked_calls(const char *path, int calls) {
        shmb_client *c;
        char *answer;

        if (shmb_connect(path, &c) < 0)
                _exit(2);
        for (int i = 0; i < calls; i++) {
                (void) syscall(SYS_getppid);
                if (shmb_request_json(c, "{\"op\":\"list\"}", &answer) < 0)
                        _exit(3);
                free(answer);
        }
        shmb_disconnect(c);
        _exit(0);
}

/*
 * libshmbroker(3): "After an answer that took longer than 100
 * microseconds, the next look is half as long as the last, down to none
 * at all". Counted in system calls, not time: a look reads the socket
 * (recvmsg() with MSG_DONTWAIT) before it first looks at the clock, so a
 * call with any budget makes at least one such read, and one with none
 * makes none. A traced caller, one call answered at once, then ten that a
 * broker answers 100 ms late: the first of those still looks (its budget
 * is at least 100 us halved by the hello and the first call, were they
 * slow under the tracing), and from the eighth on, after seven late
 * answers (100, 50, 25, 12, 6, 3, 1, 0), none does.
 */
START_TEST(test_late_answers_shrink_the_look_to_none) {
        enum { CALLS = 11, NONE_FROM = 9 };     /* call 1 is answered at once; 2 to 11 late */
        struct sockaddr_un sa;
        pid_t relay = fake_server_start("late.sock", slow_relay, &sa), pid;
        int looks[CALLS + 1] = { 0 }, call = 0, status;

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                raise(SIGSTOP);
                marked_calls(sa.sun_path, CALLS);
        }
        ck_assert_int_eq(waitpid(pid, &status, WUNTRACED), pid);
        ck_assert(WIFSTOPPED(status));
        ck_assert_int_eq(ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL), 0);
        ck_assert_int_eq(ptrace(PTRACE_INTERRUPT, pid, 0, 0), 0);
        ck_assert_int_eq(waitpid(pid, &status, __WALL), pid);
        ck_assert_int_eq(kill(pid, SIGCONT), 0);
        while (test_next_syscall_stop(pid)) {
                struct ptrace_syscall_info si;

                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *) sizeof si, &si), 0);
                if (si.op != PTRACE_SYSCALL_INFO_ENTRY)
                        continue;
                if (si.entry.nr == SYS_getppid)
                        call++;
                else if (si.entry.nr == SYS_recvmsg && (si.entry.args[2] & MSG_DONTWAIT) && call >= 1 && call <= CALLS)
                        looks[call]++;
        }
        ck_assert_int_eq(call, CALLS);
        ck_assert_msg(looks[2] >= 1, "the first late call did not look for its answer");
        for (int k = NONE_FROM; k <= CALLS; k++)
                ck_assert_msg(looks[k] == 0, "call %d, after %d late answers, looked %d times", k, k - 2, looks[k]);
        fake_server_stop(relay);
}
END_TEST

/* The default bound, where no client handle exists yet to set one: 5 s for an open by name. */
START_TEST(test_timeout_default_open_by_name) {
        shmb_channel *ch = NULL;
        int64_t t;

        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        t = test_now_ms();
        ck_assert_int_eq(shmb_open_channel(NULL, "pair", SHMB_RW, &ch), -ETIMEDOUT);
        t = test_now_ms() - t;
        ck_assert_ptr_null(ch);
        ck_assert_int_ge(t, 4990);
        ck_assert_int_lt(t, 20000);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
}
END_TEST

/*
 * A broker whose backlog is full: connect() itself would wait. The
 * listen backlog is the network namespace's somaxconn, made 1 here in a
 * namespace of this test's own (a Unix socket with a path is reached
 * from any).
 */
START_TEST(test_timeout_full_backlog_connect) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        shmb_client *c = NULL;
        int fds[8], n = 0;
        int64_t t;

        test_daemon_stop_ok(&td);
        ck_assert_int_eq(unshare(CLONE_NEWNET), 0);
        test_write_proc("/proc/sys/net/core/somaxconn", "1");
        test_start_ok();
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        strcpy(sa.sun_path, td.socket);
        /* Connect until the backlog refuses. */
        for (; n < 8; n++) {
                fds[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                ck_assert_int_ge(fds[n], 0);
                if (connect(fds[n], (struct sockaddr *) &sa, sizeof sa) < 0) {
                        ck_assert_int_eq(errno, EAGAIN);
                        break;
                }
        }
        ck_assert_int_lt(n, 8);
        t = test_now_ms();
        ck_assert_int_eq(shmb_connect(NULL, &c), -ETIMEDOUT);
        t = test_now_ms() - t;
        ck_assert_ptr_null(c);
        ck_assert_int_ge(t, 4990);
        ck_assert_int_lt(t, 20000);
        for (int i = 0; i <= n; i++)
                close(fds[i]);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
}
END_TEST

/*
 * A broker over its connection cap answers EUSERS at accept and closes. The
 * client may not have sent its request yet, and then the send fails: the
 * answer that was already there must still be the outcome, not EPIPE or
 * ECONNRESET. Which comes first is up to the scheduler, so many tries.
 */
START_TEST(test_refusal_at_accept_is_the_answer) {
        char *text;
        int held[5];

        test_daemon_stop_ok(&td);
        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"limits\": {\"connections_max\": 1},"
                                  " \"channels\": [{\"name\": \"pair\", \"size\": 4096}]}\n", td.socket), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
        test_start_ok();
        /* Root's: the one connections_max allows, and the four an admin uid has past it (shmbroker.json(5)). */
        for (int i = 0; i < 5; i++) {
                held[i] = test_connect(td.socket);
                json_decref(test_request(held[i], "{\"op\":\"hello\",\"version\":1}"));
        }
        for (int i = 0; i < 300; i++) {
                shmb_channel *ch = NULL;
                int r = shmb_open_channel(td.socket, "pair", SHMB_RW, &ch);

                ck_assert_msg(r == -EUSERS, "try %d: %s, not the broker's EUSERS", i, shmb_strerror(r));
                /* Its sentence says which limit, though the connection is gone (libshmbroker(3)). */
                ck_assert_msg(strstr(shmb_client_last_message(NULL), "connections"), "try %d: \"%s\"", i,
                              shmb_client_last_message(NULL));
        }
        {
                shmb_client *c = NULL;
                char out[1024];
                int r = shmb_connect(td.socket, &c);

                ck_assert_int_eq(r, -EUSERS);
                ck_assert_ptr_nonnull(strstr(shmb_client_last_message(NULL), "connections"));
                /* A failure with no sentence of its own (no socket there) shows no earlier one. */
                ck_assert_int_lt(shmb_open_channel("/nonexistent/s.sock", "pair", SHMB_RW, &(shmb_channel *) { NULL }),
                                 0);
                ck_assert_str_eq(shmb_client_last_message(NULL), "");
                ck_assert_int_eq(shmb_connect(td.socket, &c), -EUSERS);
                ck_assert_int_lt(shmb_connect("/nonexistent/s.sock", &c), 0);
                ck_assert_str_eq(shmb_client_last_message(NULL), "");
                /* Nor one refused before it asks anything (a bad name). */
                ck_assert_int_eq(shmb_connect(td.socket, &c), -EUSERS);
                ck_assert_int_eq(shmb_open_channel(td.socket, "bad name", SHMB_RW, &(shmb_channel *) { NULL }), -EINVAL);
                ck_assert_str_eq(shmb_client_last_message(NULL), "");
                /* shmbrokerctl says it too, not only "Too many users". */
                r = test_run(out, sizeof out, "%s -s %s list 2>&1", SHMBROKERCTL_PATH, td.socket);
                ck_assert_msg(r == 2 && strstr(out, "connections"), "exit %d: %s", r, out);
                close(held[4]);
                /* Room once the broker has seen that close: it may still count it for a while. */
                for (int i = 0; i < 1000 && (r = shmb_connect(td.socket, &c)) == -EUSERS; i++)
                        usleep(10 * 1000);
                ck_assert_int_eq(r, 0);
                ck_assert_str_eq(shmb_client_last_message(NULL), "");
                shmb_disconnect(c);
        }
        for (int i = 0; i < 4; i++)
                close(held[i]);
}
END_TEST

/* A message sent on s2 after a handle with an open claim was closed reaches rx: the claim was repaired. Closes both. */
static void assert_ring_passes_the_closed_claim(shmb_channel *s2, shmb_channel *rx) {
        char buf[256];
        ssize_t n;

        ck_assert_int_eq(shmb_send(s2, "after", 5, 1000), 0);
        /* Upper bound only: a repaired slot is passed at once. */
        n = shmb_recv(rx, buf, sizeof buf, 10000);
        ck_assert_msg(n == 5, "recv behind a closed handle's claim: %s", n < 0 ? shmb_strerror((int) n) : "short");
        shmb_close(s2);
        shmb_close(rx);
}

/*
 * A handle closed with a claim still open, after a broker crash and before
 * the library reconnected: its process lives on, but the claim is over, as
 * a close with the broker up makes it. Receivers must get past its slot.
 */
START_TEST(test_claim_closed_after_crash_is_repaired) {
        shmb_channel *s1 = test_open_ok("ring", SHMB_RW), *s2 = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW);
        void *p;

        ck_assert_int_eq(shmb_send_reserve(s1, 8, &p, 1000), 0);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        ck_assert_int_eq(shmb_close(s1), 0);
        assert_ring_passes_the_closed_claim(s2, rx);
}
END_TEST

/*
 * The same, closed more than the connection's timeout after its last call:
 * the close reconnects within the timeout counted from the close, not from
 * that earlier call's start, which has passed (a close that took that
 * deadline would give up at once, and the claim would stay).
 */

START_TEST(test_claim_closed_long_after_last_call_is_repaired) {
        shmb_client *c = NULL;
        shmb_channel *s1 = NULL, *s2 = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW);
        void *p;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_client_set_timeout(c, 2000), 0);
        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &s1), 0);
        ck_assert_int_eq(shmb_send_reserve(s1, 8, &p, 1000), 0);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        /* The timeout of the open's call has passed (at least this long, however slow the machine). */
        usleep(2100 * 1000);
        ck_assert_int_eq(shmb_close(s1), 0);
        assert_ring_passes_the_closed_claim(s2, rx);
        shmb_disconnect(c);
}
END_TEST


/*
 * As test_claim_closed_after_crash_is_repaired, for a program that drives
 * its reconnection (shmb_client_process(), as the man page asks): its
 * attempts while the broker was away failed, so the next is some way off
 * when the broker is back and the handle is closed. The close must still
 * end the token (a refused connect costs nothing): nothing else will while
 * the process lives, and the ring is stuck behind the claim.
 */
START_TEST(test_claim_closed_during_backoff_is_repaired) {
        shmb_channel *s1 = test_open_ok("ring", SHMB_RW), *s2 = test_open_ok("ring", SHMB_RW), *rx = test_open_ok("ring", SHMB_RW);
        shmb_client *c = shmb_channel_get_client(s1);
        void *p;

        ck_assert_int_eq(shmb_send_reserve(s1, 8, &p, 1000), 0);
        test_daemon_kill(&td, SIGKILL);
        /* Attempts at once, then 50, 100, 200, 400 and 800 ms later: the next is 1.6 s after the last. */
        for (int i = 0; i < 6; i++) {
                if (i > 0)
                        usleep((useconds_t) (50u << (i - 1)) * 1000 + 5000);
                ck_assert_int_eq(shmb_client_process(c), -ECONNREFUSED);
        }
        test_start_ok();
        ck_assert_int_eq(shmb_close(s1), 0);
        assert_ring_passes_the_closed_claim(s2, rx);
}
END_TEST

/*
 * libshmbroker(3), ERRORS: -ENAMETOOLONG for a socket path that does not fit
 * (107 bytes); shmb_request_json(): -EINVAL for a request containing a
 * newline, -E2BIG for one over 65536 bytes with its newline, neither sent
 * (the connection goes on); shmb_recv(): "A message longer than size is not
 * consumed: the call fails with -EMSGSIZE and a later call with a buffer of
 * slot_size bytes gets it".
 */
START_TEST(test_library_refuses_before_sending) {
        static char big[65537];
        char path[200], buf[256], *answer = NULL;
        shmb_client *c = NULL;
        shmb_channel *ring;

        memset(path, 'p', sizeof path);
        path[0] = '/';
        path[sizeof path - 1] = 0;
        ck_assert_int_eq(shmb_connect(path, &c), -ENAMETOOLONG);
        ck_assert_ptr_null(c);

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_request_json(c, "{\"op\":\"list\"}\n{\"op\":\"reload\"}", &answer), -EINVAL);
        ck_assert_ptr_null(answer);
        /* 65536 bytes, 65537 with the newline: one too many. */
        memset(big, ' ', sizeof big - 1);
        memcpy(big, "{\"op\":\"list\"", 12);
        big[sizeof big - 2] = '}';
        ck_assert_int_eq(shmb_request_json(c, big, &answer), -E2BIG);
        ck_assert_ptr_null(answer);
        /* Nothing of either was sent: the next answer is the next request's own. */
        ck_assert_int_eq(shmb_request_json(c, "{\"op\":\"hello\",\"version\":1}", &answer), 0);
        ck_assert_msg(strstr(answer, "\"version\":1") && !strstr(answer, "\"channels\""), "answer: %s", answer);
        free(answer);

        ck_assert_int_eq(shmb_open(c, "ring", SHMB_RW, &ring), 0);
        ck_assert_int_eq(shmb_send(ring, "0123456789", 10, 0), 0);
        ck_assert_int_eq(shmb_recv(ring, buf, 9, 0), -EMSGSIZE);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), 10);
        ck_assert(memcmp(buf, "0123456789", 10) == 0);
        ck_assert_int_eq(shmb_recv(ring, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(shmb_close(ring), 0);
        shmb_disconnect(c);
}
END_TEST

/*
 * libshmbroker(3): a name that is no channel name is -EINVAL, refused by
 * the library before anything is sent, as the other refusals above: so
 * also while the broker is away, where a request would say -ECONNREFUSED.
 * A name longer than any channel's must not reach the request, whose name
 * has room for a channel's only.
 */
START_TEST(test_status_of_a_bad_name_is_refused_without_the_broker) {
        char long_name[300];
        shmb_status_list *l = NULL;
        shmb_client *c;

        memset(long_name, 'n', sizeof long_name - 1);
        long_name[sizeof long_name - 1] = 0;
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmb_status(c, "bad name", &l), -EINVAL);
        ck_assert_int_eq(shmb_status(c, long_name, &l), -EINVAL);
        ck_assert_int_eq(shmb_status(c, "", &l), -EINVAL);
        ck_assert_ptr_null(l);
        /* The broker is away indeed: a good name goes to it. */
        ck_assert_int_eq(shmb_status(c, "pair", &l), -ECONNREFUSED);
        shmb_disconnect(c);
}
END_TEST

/*
 * shmbroker.json(5), Reload: an owner, group or mode change is applied in
 * place "when every current holder keeps what it holds"; only "a process
 * mapping it without a hold the daemon can judge" counts as losing a
 * right. One process with two handles of a channel (libshmbroker(3): "use
 * one handle per side") holds it through one connection, and keeps every
 * right here (root, the owner): the channel must stay in place.
 */
START_TEST(test_two_handles_of_one_holder_keep_channel_in_place) {
        shmb_channel *one, *two;
        shmb_client *c;
        int shm_id;
        char *config;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "public", SHMB_RW, &one), 0);
        ck_assert_int_eq(shmb_open(c, "public", SHMB_RW, &two), 0);
        shm_id = shmb_channel_shm_id(one);

        /* 0644 to 0640: others lose read; the owner, the only holder, keeps everything. */
        ck_assert_int_ge(asprintf(&config,
                                  "[{\"name\": \"counter\", \"size\": 4096},"
                                  " {\"name\": \"pair\", \"size\": 65536, \"semaphores\": [1, 0]},"
                                  " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8},"
                                  " {\"name\": \"secret\", \"size\": 4096, \"mode\": \"0600\"},"
                                  " {\"name\": \"public\", \"size\": 4096, \"mode\": \"0640\"}]"), 0);
        reload_to(config);
        free(config);
        ck_assert_msg(shmb_channel_check(one) == 0 && shmb_channel_check(two) == 0,
                      "a reload that took nothing from the only holder (two handles, one connection) replaced "
                      "segment %d", shm_id);
        ck_assert_int_eq(shmb_close(one), 0);
        ck_assert_int_eq(shmb_close(two), 0);
        shmb_disconnect(c);
}
END_TEST


/* ---- shmbrokerctl and shmb_connect() edges ---- */

/*
 * An empty socket path names no file. Left as it is, connect() takes the
 * all-NUL sun_path as an abstract address that any local user may bind:
 * `shmbrokerctl -s "$UNSET"` or shmb_connect("") would talk to whoever
 * listens there. libshmbroker(3): "socket_path names the socket";
 * shmbrokerctl(1): "2 Usage or connection error".
 */
START_TEST(test_connect_empty_path_reaches_no_abstract_impostor) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };      /* sun_path all NULs */
        static char out[4096];
        shmb_client *c = NULL;
        int l, status;
        pid_t pid;

        /* A network namespace of its own: its abstract addresses are this test's alone. */
        ck_assert_msg(unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
        l = listening_at(&sa);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                /* The impostor: answers every hello, and every list with a channel of its own. */
                for (;;) {
                        int fd = accept(l, NULL, NULL);
                        char buf[4096];
                        ssize_t n;

                        if (fd < 0)
                                _exit(1);
                        while ((n = read(fd, buf, sizeof buf - 1)) > 0) {
                                buf[n] = 0;
                                if (strstr(buf, "\"hello\""))
                                        (void) !write(fd, "{\"ok\":true,\"version\":1,\"server\":\"impostor\"}\n", 44);
                                if (strstr(buf, "\"list\"")) {
                                        static const char a[] = "{\"ok\":true,\"channels\":[{\"name\":\"IMPOSTOR\",\"kind\":"
                                                "\"sysv\",\"size\":4096,\"nsems\":1,\"layout\":\"raw\",\"shm_key\":1,"
                                                "\"shm_id\":1,\"sem_key\":1,\"sem_id\":1,\"owner\":\"root\",\"group\":"
                                                "\"root\",\"mode\":\"0666\"}]}\n";
                                        (void) !write(fd, a, sizeof a - 1);
                                }
                        }
                        close(fd);
                }
        }
        close(l);

        ck_assert_int_lt(shmb_connect("", &c), 0);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(test_run(out, sizeof out, "%s -s '' list 2>&1", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(!strstr(out, "IMPOSTOR"), "talked to the abstract socket: %s", out);

        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
}
END_TEST

/*
 * shmbrokerctl(1), EXIT STATUS: "On exit status 1 or 2 one line is printed
 * on standard error". A channel name that is not UTF-8 (--json), or that
 * holds a newline, must not make that zero lines or two.
 */
START_TEST(test_shmbrokerctl_odd_names_one_line) {
        static char out[4096];

        ck_assert_int_eq(test_run(out, sizeof out, "%s --json status \"$(printf '\\377\\376')\" 2>&1 >/dev/null",
                                  SHMBROKERCTL_PATH), 2);
        ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "not one line: \"%s\"", out);
        ck_assert_int_eq(test_run(out, sizeof out, "%s status \"$(printf 'a\\nb')\" 2>&1 >/dev/null",
                                  SHMBROKERCTL_PATH), 2);
        ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "not one line: \"%s\"", out);
}
END_TEST

/*
 * A broker between the client and td's daemon: it passes each request line
 * on and the daemon's answer back, and records, until the client hangs
 * up, all the client sent. close_after_status: it hangs up after the first
 * status answer instead, as a daemon that went away. client: the client's
 * pid; its exit status goes to *ret_status.
 */
static void fake_broker(int l, pid_t client, int *ret_status, bool close_after_status, char *got, size_t size) {
        struct pollfd p = { .fd = l, .events = POLLIN };
        size_t len = 0, done = 0;
        int fd, daemon;
        ssize_t n;

        *got = '\0';
        /* Until it connects, or exits without (then its status is taken here). */
        while (poll(&p, 1, 100) == 0)
                if (waitpid(client, ret_status, WNOHANG) == client)
                        return;
        fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        daemon = test_connect(td.socket);
        while (len < size - 1 && (n = read(fd, got + len, size - 1 - len)) > 0) {
                char *nl;

                len += (size_t) n;
                got[len] = '\0';
                for (; (nl = memchr(got + done, '\n', len - done)); done = (size_t) (nl - got) + 1) {
                        static const char status_op[] = "{\"op\":\"status\"";
                        bool status = strncmp(got + done, status_op, sizeof status_op - 1) == 0;
                        char c;

                        test_send(daemon, got + done, (size_t) (nl - got) + 1 - done);
                        /* One answer line, byte by byte: nothing of the next is taken. */
                        do {
                                ck_assert_int_eq(read(daemon, &c, 1), 1);
                                ck_assert_int_eq(write(fd, &c, 1), 1);
                        } while (c != '\n');
                        if (close_after_status && status)
                                goto out;
                }
        }
out:
        close(daemon);
        close(fd);
        ck_assert_int_eq(waitpid(client, ret_status, 0), client);
}

/* td's daemon again, serving broadcast channel "news". */
static void news_config(void) {
        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 4, \"subscribers\": 2}]");
        test_start_ok();
}

/* Run `shmbrokerctl -s FAKE args` against fake_broker(): its exit status; what the broker was sent in got. */
static int against_fake_broker(const char *args, bool close_after_status, char *got, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int l, status;
        pid_t pid;

        ck_assert_int_lt(snprintf(sa.sun_path, sizeof sa.sun_path, "%s/fake.sock", td.dir), (int) sizeof sa.sun_path);
        l = listening_at(&sa);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                char cmd[1024];

                snprintf(cmd, sizeof cmd, "exec %s -s %s %s 2>/dev/null", SHMBROKERCTL_PATH, sa.sun_path, args);
                execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
                _exit(127);
        }
        fake_broker(l, pid, &status, close_after_status, got, size);
        close(l);
        unlink(sa.sun_path);
        ck_assert_msg(WIFEXITED(status), "shmbrokerctl %s: status %d", args, status);
        return WEXITSTATUS(status);
}

/*
 * shmbrokerctl(1): a closed standard output is an error (exit 2). It must
 * not become the daemon's socket, the next descriptor opened, so that the
 * table goes to the daemon as garbage requests.
 */
START_TEST(test_shmbrokerctl_closed_stdout_sends_nothing_but_requests) {
        static char got[65536];
        char *list = strdup("["), *more;

        /* A table longer than stdio's buffer: it is written out while the connection is still up. */
        ck_assert_ptr_nonnull(list);
        for (int i = 0; i < 200; i++) {
                ck_assert_int_ge(asprintf(&more, "%s%s{\"name\": \"chan-%03d\", \"size\": 4096}", list, i ? ", " : "",
                                          i), 0);
                free(list);
                list = more;
        }
        ck_assert_int_ge(asprintf(&more, "%s]", list), 0);
        free(list);
        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, more);
        free(more);
        test_start_ok();
        ck_assert_int_eq(against_fake_broker("list >&-", false, got, sizeof got), 2);
        ck_assert_msg(!strstr(got, "chan-"), "the broker was sent the table: %.300s", got);
}
END_TEST

/*
 * shmbrokerctl(1): status of a broadcast channel prints a table of its
 * subscribers after the channel's; a daemon that closes the connection
 * before that answer is exit 2, not a table that says it has none.
 */
START_TEST(test_shmbrokerctl_status_without_subscribers_answer_fails) {
        static char got[65536];

        news_config();
        ck_assert_int_eq(against_fake_broker("status news >/dev/null", true, got, sizeof got), 2);
}
END_TEST

/*
 * A scripted broker for shmbrokerctl: greets, then answers the n-th request
 * after the hello with scripted_answers[n] (the last one again once past the
 * end), one connection after another. Set scripted_answers before
 * fake_server_start(): the child has its copy.
 */
static const char *const *scripted_answers;

static void scripted_server(int lfd) {
        for (;;) {
                int c = accept(lfd, NULL, NULL);
                size_t n = 0, lines = 0;
                char ch;

                if (c < 0)
                        _exit(1);
                while (read(c, &ch, 1) == 1) {
                        const char *a;

                        if (ch != '\n')
                                continue;
                        if (lines++ == 0)
                                a = "{\"ok\":true,\"version\":1,\"server\":\"fake\"}\n";
                        else {
                                a = scripted_answers[n];
                                if (scripted_answers[n + 1])
                                        n++;
                        }
                        if (write(c, a, strlen(a)) < 0)
                                break;
                }
                close(c);
        }
}

/* `shmbrokerctl -s SCRIPTED args` (a shell fragment): its exit status, its output (as args redirect it) in out. */
static int against_scripted(const char *const *answers, char *out, size_t size, const char *args) {
        struct sockaddr_un sa;
        pid_t pid;
        int r;

        scripted_answers = answers;
        pid = fake_server_start("scripted.sock", scripted_server, &sa);
        r = test_run(out, size, "%s -s %s %s", SHMBROKERCTL_PATH, sa.sun_path, args);
        fake_server_stop(pid);
        unlink(sa.sun_path);
        return r;
}

/*
 * SPEC, Admin CLI: "Exit 0 on success, 1 on a refused request, 2 on usage
 * or connection errors". Wire protocol: "error" is an errno name ("ENOENT,
 * EACCES, ..., ..."): a refusal named with one this build does not know is a
 * refusal still, in table mode as with --json (which exits 1 already).
 */
START_TEST(test_shmbrokerctl_refusal_with_unknown_errno_name_exits_1) {
        static const char *const answers[] = {
                "{\"ok\":false,\"error\":\"EROFS\",\"message\":\"the state directory is read-only\"}\n", NULL };
        static char out[4096];

        ck_assert_int_eq(against_scripted(answers, out, sizeof out, "--json list 2>/dev/null"), 1);
        ck_assert_msg(against_scripted(answers, out, sizeof out, "list 2>&1") == 1, "table mode: %s", out);
        ck_assert_ptr_nonnull(strstr(out, "read-only"));
}
END_TEST

/* The broadcast channel "news" of a status answer with one subscriber, pid 4242. */
#define NEWS_STATUS_ANSWER                                                                                      \
        "{\"ok\":true,\"channels\":[{\"name\":\"news\",\"kind\":\"sysv\",\"size\":4096,\"nsems\":1,"            \
        "\"layout\":\"broadcast\",\"slot_size\":64,\"slots\":4,\"subscribers\":2,\"table_key\":5,"              \
        "\"table_id\":5,\"overflow\":\"block\",\"shm_key\":1,\"shm_id\":1,\"sem_key\":1,\"sem_id\":1,"          \
        "\"owner\":\"root\",\"group\":\"root\",\"mode\":\"0660\",\"nattch\":1,\"cpid\":1,\"lpid\":1,"           \
        "\"atime\":0,\"dtime\":0,\"ctime\":0,\"semaphores\":[{\"value\":1,\"ncount\":0,\"zcount\":0,"           \
        "\"pid\":1}],\"clients\":[],\"subscriptions\":[{\"pid\":4242,\"position\":7,\"lag\":1,"                 \
        "\"dropped\":0}]}]}\n"

/*
 * shmbrokerctl(1): status of a broadcast channel is followed by its
 * subscribers, asked again; exit 2 when the daemon "answered with a line
 * that breaks the protocol", and a refusal (the channel removed meanwhile)
 * is no success either: either way the table would say it has none.
 */
START_TEST(test_shmbrokerctl_subscribers_answer_broken_or_refused_fails) {
        static const char *const broken[] = { NEWS_STATUS_ANSWER, "not json at all\n", NULL };
        static const char *const refused[] = {
                NEWS_STATUS_ANSWER, "{\"ok\":false,\"error\":\"ENOENT\",\"message\":\"no channel named \\\"news\\\"\"}\n",
                NULL };
        static char out[65536];

        ck_assert_msg(against_scripted(broken, out, sizeof out, "status news 2>&1") == 2, "broken: %s", out);
        /* A refusal is exit 1 (shmbrokerctl(1)), with the daemon's sentence. */
        ck_assert_msg(against_scripted(refused, out, sizeof out, "status news 2>&1") == 1, "refused: %s", out);
        ck_assert_msg(strstr(out, "no channel named"), "refused: %s", out);
        ck_assert_msg(against_scripted(broken, out, sizeof out, "status 2>&1") == 2, "broken, all: %s", out);
}
END_TEST

/*
 * shmbrokerctl(1): output that cannot be written is exit 2 with a line that
 * says why. An answer longer than stdio's buffer is written at once by
 * --json; the reason must be that write's, not whatever errno was left by
 * the calls after it ("Success").
 */
START_TEST(test_shmbrokerctl_write_error_names_its_reason) {
        static char answer[16384], out[4096];
        const char *answers[] = { answer, NULL };
        size_t used = 0;

        used += (size_t) snprintf(answer + used, sizeof answer - used, "{\"ok\":true,\"channels\":[");
        for (int i = 0; i < 40; i++)
                used += (size_t) snprintf(answer + used, sizeof answer - used,
                                          "%s{\"name\":\"chan-%03d\",\"kind\":\"sysv\",\"size\":4096,\"nsems\":1,"
                                          "\"layout\":\"raw\",\"shm_key\":%d,\"shm_id\":%d,\"sem_key\":%d,\"sem_id\":%d,"
                                          "\"owner\":\"root\",\"group\":\"root\",\"mode\":\"0660\"}",
                                          i ? "," : "", i, i + 1, i, i + 1, i);
        snprintf(answer + used, sizeof answer - used, "]}\n");
        ck_assert_int_eq(against_scripted(answers, out, sizeof out, "--json list 2>&1 >/dev/full"), 2);
        ck_assert_msg(strstr(out, strerror(ENOSPC)), "the reason: %s", out);
}
END_TEST

/*
 * shmbrokerctl(1): "On exit status 1 or 2 one line is printed on standard
 * error"; the program's own comment: control characters in "the user's own
 * arguments" alike. An unknown command, an unknown long option and a socket
 * path with a newline must not make two lines.
 */
START_TEST(test_shmbrokerctl_odd_arguments_one_line) {
        static const char *const args[] = {
                "\"$(printf 'li\\nst')\"", "\"$(printf -- '--js\\non')\" list", "-s \"$(printf '/nonexistent\\nx')\" list",
        };
        static char out[4096];

        for (size_t i = 0; i < sizeof args / sizeof *args; i++) {
                ck_assert_int_eq(test_run(out, sizeof out, "%s %s 2>&1 >/dev/null", SHMBROKERCTL_PATH, args[i]), 2);
                ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1, "%s: not one line: \"%s\"", args[i],
                              out);
        }
}
END_TEST

/*
 * A channel name is 1-64 of [A-Za-z0-9._-] (SPEC). One in an answer that is
 * anything else (a newline, an escape sequence) must not reach the
 * terminal or forge a row of the table a script reads: the answer breaks
 * the protocol (exit 2), or the name is shown escaped.
 */
START_TEST(test_shmbrokerctl_answer_names_cannot_forge_rows) {
        static const char *const answers[] = {
                "{\"ok\":true,\"channels\":[{\"name\":\"\\u001b[2Jx\\nforged\",\"kind\":\"sysv\",\"size\":4096,"
                "\"nsems\":1,\"layout\":\"raw\",\"shm_key\":1,\"shm_id\":1,\"sem_key\":1,\"sem_id\":1,"
                "\"owner\":\"root\",\"group\":\"root\",\"mode\":\"0660\"}]}\n", NULL };
        static char out[4096];
        int r = against_scripted(answers, out, sizeof out, "list 2>/dev/null");

        ck_assert_msg(r == 2 || (!strchr(out, '\033') && !strstr(out, "\nforged")), "exit %d: %s", r, out);
}
END_TEST

/*
 * b1dc029: "Channel names in list, status and reload answers are held to
 * the name rule, so a broker's name with a control character or newline
 * (printed as it comes) cannot forge table rows". status without a name
 * prints the subscriber table from a second answer, read as raw JSON, each
 * row starting with the channel's name.
 */
START_TEST(test_shmbrokerctl_subscriber_rows_cannot_be_forged) {
        static const char *const answers[] = {
                NEWS_STATUS_ANSWER,
                "{\"ok\":true,\"channels\":[{\"name\":\"\\u001b[2Jx\\nforged\",\"layout\":\"broadcast\","
                "\"subscriptions\":[{\"pid\":4242,\"position\":7,\"lag\":1,\"dropped\":0}]}]}\n", NULL };
        static char out[65536];
        int r = against_scripted(answers, out, sizeof out, "status 2>/dev/null");

        ck_assert_msg(r == 2 || (!strchr(out, '\033') && !strstr(out, "\nforged")), "exit %d: %s", r, out);
}
END_TEST

/*
 * shmbrokerctl(1), EXIT STATUS 2: "the daemon cannot be reached", with one
 * line that says why. A -s path that is a plain file or a directory is no
 * socket at all: saying nobody listens "on the socket" sends the admin
 * looking for a stopped daemon. A missing path is no socket either: the
 * sentence must not talk of a channel, which the command never named.
 */
START_TEST(test_shmbrokerctl_socket_path_not_a_socket_says_so) {
        static char out[4096];
        char path[400];
        int fd;

        snprintf(path, sizeof path, "%s/plain-file", td.dir);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(test_run(out, sizeof out, "%s -s %s list 2>&1 >/dev/null", SHMBROKERCTL_PATH, path), 2);
        ck_assert_msg(strstr(out, path) && strstr(out, "not a socket"), "a plain file: \"%s\"", out);
        ck_assert_int_eq(unlink(path), 0);

        ck_assert_int_eq(test_run(out, sizeof out, "%s -s %s list 2>&1 >/dev/null", SHMBROKERCTL_PATH, td.dir), 2);
        ck_assert_msg(strstr(out, "directory, not a socket"), "a directory: \"%s\"", out);

        ck_assert_int_eq(test_run(out, sizeof out, "%s -s %s list 2>&1 >/dev/null", SHMBROKERCTL_PATH, path), 2);
        ck_assert_msg(strstr(out, path) && !strstr(out, "channel"), "a missing path: \"%s\"", out);
}
END_TEST

/*
 * shmbrokerctl(1), EXIT STATUS 2: "an invalid channel name (without
 * --json ...)" is a usage error, and the one line must say what is wrong
 * with it (the rule), as the daemon's own EINVAL sentence does; not the
 * library's catch-all "invalid argument (bad name, semaphore index or
 * access mode)", nor "shmbrokerctl: : ..." for an empty name. As the
 * other usage errors, it is found before any connection: with no daemon
 * there, it is still the name that is reported.
 */
START_TEST(test_shmbrokerctl_invalid_name_message_says_the_rule) {
        static const char *const names[] = { "''", "'bad name'", "a/b" };
        static char out[4096];

        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
                ck_assert_int_eq(test_run(out, sizeof out, "%s status %s 2>&1 >/dev/null", SHMBROKERCTL_PATH,
                                          names[i]), 2);
                ck_assert_msg(strstr(out, "A-Z a-z 0-9 . _ -") && !strstr(out, "semaphore index"), "%s: \"%s\"",
                              names[i], out);
                ck_assert_int_eq(test_run(out, sizeof out, "%s -s %s/nonexistent status %s 2>&1 >/dev/null",
                                          SHMBROKERCTL_PATH, td.dir, names[i]), 2);
                ck_assert_msg(strstr(out, "A-Z a-z 0-9 . _ -") && !strstr(out, "connect"), "%s, no daemon: \"%s\"",
                              names[i], out);
        }
}
END_TEST

/*
 * shmbrokerctl(1), ENVIRONMENT: SHMBROKER_SOCKET names the socket "when -s
 * is not given and the variable is not empty"; libshmbroker(3) says the
 * same of socket_path NULL. An empty variable (a unit's
 * "Environment=SHMBROKER_SOCKET=", a script's "$UNSET") is no path: both
 * must go to the default socket, and a failure must name that path, not
 * an empty one. The default is made ours in a mount namespace of this
 * test's own: /run a fresh tmpfs, the default path a link to our daemon.
 */
START_TEST(test_empty_socket_variable_means_the_default) {
        static char out[65536];
        shmb_channel *ch;
        shmb_client *c;

        test_private_mounts();
        ck_assert_msg(mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") == 0, "mount /run: %s", strerror(errno));
        ck_assert_int_eq(mkdir("/run/shmbroker", 0755), 0);
        ck_assert_int_eq(symlink(td.socket, SHMB_DEFAULT_SOCKET), 0);
        ck_assert_int_eq(setenv("SHMBROKER_SOCKET", "", 1), 0);

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "counter", SHMB_RO, &ch), 0);
        shmb_close(ch);
        shmb_disconnect(c);
        ck_assert_int_eq(test_run(out, sizeof out, "%s list 2>&1", SHMBROKERCTL_PATH), 0);
        ck_assert_msg(strstr(out, "\ncounter "), "the default socket's daemon not listed: %s", out);

        /* Nobody there: the one line names the default path. */
        ck_assert_int_eq(unlink(SHMB_DEFAULT_SOCKET), 0);
        ck_assert_int_eq(test_run(out, sizeof out, "%s list 2>&1 >/dev/null", SHMBROKERCTL_PATH), 2);
        ck_assert_msg(strstr(out, "connect to " SHMB_DEFAULT_SOCKET ":"), "an empty variable, no daemon: \"%s\"", out);

        ck_assert_int_eq(setenv("SHMBROKER_SOCKET", td.socket, 1), 0);
        ck_assert_int_eq(umount2("/run", MNT_DETACH), 0);
}
END_TEST

/* Copy the file at from (following a symlink) to a new file to, of this mode. */
static void copy_file(const char *from, const char *to, mode_t mode) {
        char buf[65536];
        int in = open(from, O_RDONLY | O_CLOEXEC), out;
        ssize_t n;

        ck_assert_msg(in >= 0, "open %s: %s", from, strerror(errno));
        out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        ck_assert_msg(out >= 0, "create %s: %s", to, strerror(errno));
        while ((n = read(in, buf, sizeof buf)) > 0)
                ck_assert_int_eq(write(out, buf, (size_t) n), n);
        ck_assert_int_eq(n, 0);
        ck_assert_int_eq(close(in), 0);
        ck_assert_int_eq(close(out), 0);
}

/*
 * Run the program at path (tests/connect-default) as uid 65534 in group
 * 65534 alone, with this process's environment: its exit status, its
 * stdout in out.
 */
static int run_as_nobody(const char *path, char *out, size_t size) {
        size_t len = 0;
        int p[2], status;
        ssize_t n;
        pid_t pid;

        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                test_drop_privileges(65534, 65534, 0);
                if (dup2(p[1], STDOUT_FILENO) < 0)
                        _exit(93);
                execl(path, "connect-default", (char *) NULL);
                _exit(94);
        }
        close(p[1]);
        while (len + 1 < size && (n = read(p[0], out + len, size - 1 - len)) > 0)
                len += (size_t) n;
        out[len] = '\0';
        close(p[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status), "%s killed by signal %d: %s", path, WTERMSIG(status), out);
        return WEXITSTATUS(status);
}

/*
 * libshmbroker(3): SHMBROKER_SOCKET is "read with secure_getenv(3), so a
 * set-user-ID program ignores it"; shmbrokerctl(1): "Ignored by programs
 * running set-user-ID or set-group-ID". Whoever runs a set-ID program that
 * connects with socket_path NULL must not choose which daemon it talks to
 * (and believes). The same binary, copied onto a file system that honours
 * set-ID bits (a tmpfs of this test's mount namespace) and owned by uid and
 * gid 4242, is run by uid 65534 with the variable naming our daemon: as a
 * plain program it must reach it; set-user-ID, and set-group-ID, it must go
 * to the default path instead, which is made to hold nothing (a fresh
 * tmpfs on /run). The program is linked without a wrapper script and finds
 * libshmbroker by its rpath, which a set-ID program keeps.
 */
START_TEST(test_socket_variable_ignored_by_set_id_programs) {
        static const struct { mode_t mode; const char *what; } set_id[] = {
                { 04755, "set-user-ID" }, { 02755, "set-group-ID" },
        };
        char dir[400], path[500], out[4096];

        test_private_mounts();
        ck_assert_msg(mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") == 0, "mount /run: %s", strerror(errno));
        /* Where the program's second rpath looks: a build under /root is closed to uid 65534. */
        ck_assert_int_eq(mkdir("/run/shmbroker-test-lib", 0755), 0);
        copy_file(LIBSHMBROKER_PATH, "/run/shmbroker-test-lib/libshmbroker.so.2", 0644);
        snprintf(dir, sizeof dir, "%s/set-id", td.dir);
        ck_assert_int_eq(mkdir(dir, 0755), 0);
        ck_assert_msg(mount("tmpfs", dir, "tmpfs", 0, "mode=0755") == 0, "mount %s: %s", dir, strerror(errno));
        snprintf(path, sizeof path, "%s/connect-default", dir);
        copy_file(CONNECT_DEFAULT_PATH, path, 0755);
        ck_assert_int_eq(chown(path, 4242, 4242), 0);
        ck_assert_str_eq(getenv("SHMBROKER_SOCKET"), td.socket);

        /* The control: the variable leads a plain program to our daemon. */
        ck_assert_int_eq(chmod(path, 0755), 0);
        ck_assert_msg(run_as_nobody(path, out, sizeof out) == 0 && strstr(out, "euid 65534 egid 65534\nreached "),
                      "the plain program did not reach the daemon the variable names: %s", out);

        for (size_t i = 0; i < sizeof set_id / sizeof *set_id; i++) {
                ck_assert_int_eq(chmod(path, set_id[i].mode), 0);
                ck_assert_msg(run_as_nobody(path, out, sizeof out) == 1 &&
                              strstr(out, i == 0 ? "euid 4242 egid 65534\n" : "euid 65534 egid 4242\n") &&
                              strstr(out, "not reached: ENOENT"),
                              "%s: the variable was followed (or the bit did not take): %s", set_id[i].what, out);
        }
        ck_assert_int_eq(umount2(dir, MNT_DETACH), 0);
        ck_assert_int_eq(rmdir(dir), 0);
        ck_assert_int_eq(umount2("/run", MNT_DETACH), 0);
}
END_TEST

/*
 * shmbrokerctl(1), EXIT STATUS: "A pipe whose reader went away ends it
 * with SIGPIPE, as it does any filter", so that `shmbrokerctl list | head
 * -1` ends quietly, as ls would. Neither the command nor the library may
 * ignore the signal. The pipe has no reader at all before the command
 * starts, so its first write meets EPIPE whatever the timing.
 */
START_TEST(test_shmbrokerctl_pipe_without_reader_ends_it_with_sigpipe) {
        int p[2], status, null;
        sigset_t none;
        pid_t pid;

        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        ck_assert_int_eq(close(p[0]), 0);
        null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        ck_assert_int_ge(null, 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                /* As a shell starts a filter: the default action, the signal not blocked. */
                sigemptyset(&none);
                if (signal(SIGPIPE, SIG_DFL) == SIG_ERR || sigprocmask(SIG_SETMASK, &none, NULL) < 0 ||
                    dup2(p[1], STDOUT_FILENO) < 0 || dup2(null, STDERR_FILENO) < 0)
                        _exit(90);
                execl(SHMBROKERCTL_PATH, "shmbrokerctl", "list", (char *) NULL);
                _exit(91);
        }
        close(p[1]);
        close(null);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGPIPE, "a list into a pipe without a reader: %s %d",
                      WIFSIGNALED(status) ? "signal" : "exit status",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}
END_TEST

int main(void) {
        /* Check's tests are pointer variables, not constants: the table lives here. */
        const TestGroup groups[] = {
                { "open", CASE_TIMEOUT, { test_open_attaches_and_matches_kernel, test_open_errors, test_open_without_rights_is_eacces,
                            test_other_namespace_is_exdev, test_write_through_ro_handle_faults, test_malformed_answers_are_eproto,
                            test_failed_call_closes_the_connection, test_malformed_answer_keeps_the_event_fd,
                            test_hold_dropped_when_process_exits, test_broker_of_another_version_is_eproto } },
                { "semaphores", CASE_TIMEOUT, { test_lock_counts_exactly, test_killed_lock_holder_releases_lock, test_timeouts_fire,
                                  test_waiter_sees_channel_removed } },
                { "ring", CASE_TIMEOUT, { test_ring_mpmc_exactly_once, test_ring_killed_sender_loses_nothing_sent, test_ring_no_lost_wakeups,
                            test_closing_one_of_two_ring_handles_keeps_the_token,
                            test_ring_sender_dead_mid_message_is_skipped, test_ring_receiver_dead_mid_message_frees_slot,
                            test_ring_wait_behind_live_stuck_claim_times_out, test_ring_of_another_layout_is_eproto } },
                { "library-refusals", CASE_TIMEOUT, { test_library_refuses_before_sending,
                                        test_status_of_a_bad_name_is_refused_without_the_broker } },
                { "faults", CASE_TIMEOUT, { test_thousand_clients_killed_at_random } },
                { "races", CASE_TIMEOUT, { test_open_runs_on_the_brokers_ring_figures,
                             test_open_racing_replacements_is_never_exdev,
                             test_open_replaced_before_attach_old_segment_alive,
                             test_open_replaced_before_attach_old_segment_gone, test_open_removed_before_attach_is_enoent,
                             test_open_rights_revoked_before_attach_is_eacces } },
                { "removal", CASE_TIMEOUT, { test_stop_reaches_blocked_callers, test_replacing_reload_reaches_blocked_callers,
                              test_stop_reaches_blocked_callers_of_a_scribbled_header,
                              test_revoking_reload_reaches_blocked_holder,
                              test_crash_restart_replacing_reaches_blocked_callers,
                              test_crash_ipcrm_restart_reaches_blocked_callers,
                              test_crash_ipcrm_without_broker_reaches_blocked_callers,
                              test_crash_ipcrm_segments_restart_reaches_blocked_semaphore_waiter,
                              test_crash_lost_state_restart_reaches_blocked_callers } },
                { "admin", CASE_TIMEOUT, { test_list_and_status_answers } },
                { "reload-holders", CASE_TIMEOUT, { test_two_handles_of_one_holder_keep_channel_in_place } },
                { "programs", CASE_TIMEOUT, { test_examples_exchange, test_shmbrokerctl,
                                test_legacy_programs_under_the_broker } },
                { "reconnect", CASE_TIMEOUT, { test_reconnect_after_crash_keeps_holds, test_reconnect_keeps_the_strongest_access,
                                 test_reconnect_broker_away_fails_fast,
                                 test_reconnect_after_stop_marks_handles_stale,
                                 test_stale_hold_given_back_without_a_further_call } },
                { "crash-restart", CASE_TIMEOUT, { test_crash_restart_keeps_traffic } },
                { "forged-holders", CASE_TIMEOUT, { test_ring_holder_table_forged_before_a_crash_refuses_no_opens } },
                { "cleanup", CASE_TIMEOUT, { test_cleanup_helpers_end_holds } },
                { "zero-copy", CASE_TIMEOUT, { test_zero_copy_in_place, test_zero_copy_misuse_takes_nothing,
                                 test_zero_copy_release_after_repair, test_zero_copy_across_processes,
                                 test_zero_copy_killed_mid_claim, test_zero_copy_claims_see_removal,
                                 test_claim_closed_after_crash_is_repaired } },
                { "zero-copy-close", CASE_TIMEOUT, { test_zero_copy_close_ends_claims_of_a_shared_hold } },
                { "close-after-crash", CASE_TIMEOUT, { test_claim_closed_long_after_last_call_is_repaired,
                                 test_claim_closed_during_backoff_is_repaired } },
                { "timeouts", CASE_TIMEOUT, { test_timeout_hung_broker, test_timeout_default_open_by_name,
                                test_timeout_full_backlog_connect, test_hung_broker_costs_one_close_its_timeout,
                                test_slow_broker_is_slept_for_not_spun_for, test_late_answers_shrink_the_look_to_none } },
                { "timeouts-queued", CASE_TIMEOUT, { test_timeout_queued_threads_bounded,
                                test_timeout_queued_open_fails_with_the_hung_call } },
                { "timeouts-close", CASE_TIMEOUT, { test_hung_broker_up_costs_one_close_its_timeout,
                                test_close_beside_busy_threads_costs_one_bound } },
                { "fork", CASE_TIMEOUT, { test_forked_child_leaves_parents_connection_alone,
                                test_forked_child_close_keeps_parents_subscriber,
                                test_disconnect_ends_the_connection_despite_a_forked_child,
                                test_forked_child_close_leaves_parents_claims,
                                test_open_answer_of_another_channel_is_eproto,
                                test_rejoin_answer_of_another_channel_closes_the_connection,
                                test_line_between_calls_is_no_answer } },
                { "refusals", CASE_TIMEOUT, { test_refusal_at_accept_is_the_answer } },
                { "cli-edges", CASE_TIMEOUT, { test_connect_empty_path_reaches_no_abstract_impostor,
                                 test_shmbrokerctl_odd_names_one_line,
                                 test_shmbrokerctl_closed_stdout_sends_nothing_but_requests,
                                 test_shmbrokerctl_status_without_subscribers_answer_fails,
                                 test_shmbrokerctl_malformed_answer_is_a_connection_error } },
                { "cli-review", CASE_TIMEOUT, { test_shmbrokerctl_refusal_with_unknown_errno_name_exits_1,
                                 test_shmbrokerctl_subscribers_answer_broken_or_refused_fails,
                                 test_shmbrokerctl_write_error_names_its_reason,
                                 test_shmbrokerctl_odd_arguments_one_line,
                                 test_shmbrokerctl_answer_names_cannot_forge_rows,
                                 test_shmbrokerctl_subscriber_rows_cannot_be_forged } },
                { "cli-doc", CASE_TIMEOUT, { test_shmbrokerctl_sizes_and_reload_lines, test_shmbrokerctl_access_column_is_the_holds,
                                 test_shmbrokerctl_hung_broker_exits_2_after_the_bound,
                                 test_shmbrokerctl_invalid_name_exit_codes,
                                 test_shmbrokerctl_socket_path_not_a_socket_says_so,
                                 test_shmbrokerctl_invalid_name_message_says_the_rule } },
                { "cli-env", CASE_TIMEOUT, { test_empty_socket_variable_means_the_default,
                                 test_shmbrokerctl_pipe_without_reader_ends_it_with_sigpipe,
                                 test_socket_variable_ignored_by_set_id_programs } },
        };

        return test_main("client", groups, sizeof groups / sizeof groups[0], setup, test_teardown);
}
