/*
 * shmb_channel_fd(): waiting for a ring in a poll loop, end to end with
 * the real daemon. Every wake-up a test waits for comes from another
 * process (a child, or the daemon itself), never from the waiter, and each
 * wait is bounded by WAIT_MS, far above any wake-up but far below the case
 * timeout: a missing wake-up fails the poll() assertion, not the timeout.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ptrace.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <shmbroker/shmbroker.h>

#include "common/util.h"
#include "proto/ring.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 60
#define WAIT_MS 10000

static const char channels[] =
        "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 2, \"group\": 4242, \"mode\": \"0660\"},"
        " {\"name\": \"r2\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
        " {\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 2, \"subscribers\": 2,"
        "  \"mode\": \"0640\"},"
        " {\"name\": \"wide\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4, \"subscribers\": 48},"
        " {\"name\": \"raw\", \"size\": 4096}]";

static void setup(void) {
        test_setup();
        test_daemon_write_config(&td, channels);
        test_start_ok();
        setenv("SHMBROKER_SOCKET", td.socket, 1);
}

static void teardown(void) {
        test_teardown();
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}

static shmb_channel *open_ring(void) {
        shmb_channel *ch = NULL;
        int r = shmb_open_channel(NULL, "r", SHMB_RW, &ch);

        ck_assert_msg(r == 0, "open r: %s", shmb_strerror(r));
        return ch;
}

/* poll() the fd: 1 readable, 0 not within ms. */
static int readable(int fd, int ms) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, ms);

        ck_assert_int_ge(r, 0);
        return r;
}

/*
 * Bytes waiting in the FIFOs that fd, from shmb_channel_fd(), watches (an
 * epoll set: its members are in /proc/self/fdinfo): the wake-ups written
 * since the handle armed, which empties them. Not the fd's own readiness:
 * it also polls readable once its 1 s timer ran (a sleeping call's bound),
 * which a loaded machine can take between two steps, and which a wait for
 * a wake-up would take for one.
 */
static int wakeup_bytes(int fd) {
        char path[64], line[256];
        int total = 0, member;
        FILE *f;

        snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
        f = fopen(path, "re");
        ck_assert_msg(f, "%s: %s", path, strerror(errno));
        while (fgets(line, sizeof line, f)) {
                struct stat st;
                int n = 0;

                if (sscanf(line, "tfd: %d", &member) != 1 || fstat(member, &st) < 0 || !S_ISFIFO(st.st_mode))
                        continue;
                ck_assert_int_eq(ioctl(member, FIONREAD, &n), 0);
                total += n;
        }
        fclose(f);
        return total;
}

/* Whether a wake-up comes into fd's FIFOs within WAIT_MS; then fd polls readable too. */
static bool await_wakeup(int fd) {
        for (int64_t deadline = test_now_ms() + WAIT_MS; test_now_ms() < deadline; usleep(1000))
                if (wakeup_bytes(fd) > 0) {
                        ck_assert_int_eq(readable(fd, 0), 1);
                        return true;
                }
        return false;
}

/* A subscriber of "news" that waits in an event loop, armed (its receive said -EAGAIN): its fd in *ret_fd. */
static shmb_channel *waiting_subscriber(int *ret_fd) {
        shmb_channel *sub = NULL;
        char buf[64];

        ck_assert_int_eq(shmb_open_channel(NULL, "news", SHMB_RO, &sub), 0);
        *ret_fd = shmb_channel_fd(sub);
        ck_assert_int_ge(*ret_fd, 0);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(*ret_fd), 0);
        return sub;
}

/* A child that opens the ring itself and does one thing: the wake-up must cross processes. */
typedef enum { KID_SEND, KID_RECV, KID_RESERVE_AND_HANG, KID_CLEAR_FLAG_AND_SEND, KID_CLEAR_FLAG_AND_RECV } KidJob;

/*
 * A child stays until linger's write end closes (release_kid()): its exit
 * would close its hold, and the broker wakes every waiter when a holder
 * goes, which would hide a wake-up the child itself failed to give.
 */
static int linger[2] = { -1, -1 };

static pid_t kid(KidJob job, const char *text, int ready_pipe) {
        pid_t pid;

        ck_assert_int_eq(pipe2(linger, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *ch = NULL;
                char buf[64];
                void *slot;
                int r = -1;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, "r", SHMB_RW, &ch) < 0)
                        _exit(2);
                switch (job) {
                case KID_SEND:
                        r = shmb_send(ch, text, strlen(text), WAIT_MS);
                        break;
                case KID_RECV:
                        r = shmb_recv(ch, buf, sizeof buf, WAIT_MS) < 0 ? -1 : 0;
                        break;
                case KID_RESERVE_AND_HANG:
                        r = shmb_send_reserve(ch, 8, &slot, WAIT_MS);
                        if (r == 0 && write(ready_pipe, "x", 1) == 1)
                                for (;;)
                                        pause();
                        break;
                case KID_CLEAR_FLAG_AND_SEND:
                case KID_CLEAR_FLAG_AND_RECV: {
                        /* As any rw opener may: the peer's flag down, then the message (or room) without its wake-up. */
                        RingHeader *h = shmb_channel_addr(ch);
                        bool send = job == KID_CLEAR_FLAG_AND_SEND;
                        uint32_t was = __atomic_exchange_n(send ? &h->recv_sleeping : &h->send_sleeping, 0,
                                                           __ATOMIC_SEQ_CST);

                        r = send ? shmb_send(ch, text, strlen(text), 0) : (shmb_recv(ch, buf, sizeof buf, 0) < 0 ? -1 : 0);
                        if (write(ready_pipe, &was, sizeof was) != (ssize_t) sizeof was)
                                r = -1;
                        break;
                }
                }
                close(linger[1]);
                (void) read(linger[0], buf, 1);
                _exit(r == 0 ? 0 : 3);
        }
        close(linger[0]);
        return pid;
}

static void release_kid(void) {
        close(linger[1]);
        linger[1] = -1;
}

static void reap_ok(pid_t pid) {
        int status;

        release_kid();
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}

/*
 * A child that held the channel exited: the broker marks its holder dead
 * and writes both FIFOs (see test_dead_claimer_wakes_the_waiter), at a time
 * of its own. Wait for that wake-up on fd, then for one round trip, which
 * the broker (one thread) answers only after it wrote both, so that later
 * checks see no wake-up but their own.
 */
static void settle_child_exit(int fd) {
        int sock;

        ck_assert_msg(await_wakeup(fd), "the broker did not signal a holder's exit");
        sock = test_connect(td.socket);
        json_decref(test_request(sock, "{\"op\":\"hello\",\"version\":1}"));
        close(sock);
}

static void assert_recv(shmb_channel *ch, const char *want) {
        char buf[64];
        ssize_t n = shmb_recv(ch, buf, sizeof buf, 0);

        ck_assert_msg(n == (ssize_t) strlen(want), "recv: %zd (%s)", n, n < 0 ? shmb_strerror((int) n) : "");
        ck_assert(memcmp(buf, want, (size_t) n) == 0);
}

START_TEST(test_receiver_woken_by_another_process) {
        shmb_channel *ch = open_ring();
        char buf[64];
        int fd = shmb_channel_fd(ch);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_channel_fd(ch), fd);
        /* Readable before the first try: a loop that waits first must not wait for ever. */
        ck_assert_int_eq(readable(fd, 0), 1);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        /* The FIFO, not the fd: that also polls readable once its 1 s timer ran, which a loaded machine may take. */
        ck_assert_int_eq(wakeup_bytes(fd), 0);

        for (int round = 0; round < 3; round++) {
                pid_t pid = kid(KID_SEND, "hello", -1);

                ck_assert_msg(await_wakeup(fd), "round %d: no wake-up from the sender", round);
                assert_recv(ch, "hello");
                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
                /* Emptied by the -EAGAIN that armed it again (the sender lives on: nothing else writes). */
                ck_assert_int_eq(wakeup_bytes(fd), 0);
                reap_ok(pid);
                settle_child_exit(fd);
                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
                ck_assert_int_eq(wakeup_bytes(fd), 0);
        }
        shmb_close(ch);
}
END_TEST

START_TEST(test_sender_woken_when_a_slot_frees) {
        shmb_channel *ch = open_ring();
        int fd = shmb_channel_fd(ch);
        pid_t pid;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_send(ch, "a", 1, 0), 0);
        ck_assert_int_eq(shmb_send(ch, "b", 1, 0), 0);
        ck_assert_int_eq(shmb_send(ch, "c", 1, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        pid = kid(KID_RECV, NULL, -1);
        ck_assert_msg(await_wakeup(fd), "no wake-up when the receiver freed a slot");
        reap_ok(pid);
        ck_assert_int_eq(shmb_send(ch, "c", 1, 0), 0);
        /* The same fd now waits for the other side: the latest -EAGAIN was a send's. */
        assert_recv(ch, "b");
        assert_recv(ch, "c");
        shmb_close(ch);
}
END_TEST

START_TEST(test_removal_wakes_the_waiter) {
        shmb_channel *ch = open_ring();
        int fd = shmb_channel_fd(ch), sock;
        char buf[64];

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        test_daemon_write_config(&td, "[{\"name\": \"raw\", \"size\": 4096}]");
        sock = test_connect(td.socket);
        json_decref(test_request(sock, "{\"op\":\"reload\"}"));
        close(sock);
        ck_assert_msg(await_wakeup(fd), "the removal woke nobody");
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EIDRM);
        shmb_close(ch);
}
END_TEST

typedef struct BlockedRecv {
        shmb_channel *ch;
        pid_t tid;
        ssize_t result;
} BlockedRecv;

static void *blocked_recv(void *userdata) {
        BlockedRecv *b = userdata;
        char buf[64];

        __atomic_store_n(&b->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        b->result = shmb_recv(b->ch, buf, sizeof buf, -1);
        return NULL;
}

/*
 * A ring of a killed broker, dropped from the config meanwhile: the next
 * start reclaims it, and a receive blocked in it since before the kill
 * returns -EIDRM then (SPEC: within 100 ms), woken by the start's mark on
 * the header before the segment goes. Seen with the start frozen at that
 * removal: by then the receiver must have its answer; without the mark it
 * would sleep on, as its own look at the kernel still finds the segment.
 */
START_TEST(test_reclaim_wakes_a_receive_blocked_since_the_crash) {
        struct __ptrace_syscall_info info;
        BlockedRecv b = { .ch = open_ring() };
        int shm_id = shmb_channel_shm_id(b.ch), status;
        struct timespec until;
        pthread_t thread;
        bool met = false;
        pid_t tid;

        ck_assert_int_eq(pthread_create(&thread, NULL, blocked_recv, &b), 0);
        while (!(tid = __atomic_load_n(&b.tid, __ATOMIC_ACQUIRE)) || test_task_state(getpid(), tid) != 'S')
                sched_yield();
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[{\"name\": \"raw\", \"size\": 4096}]");
        test_daemon_spawn_traced(&td);
        while (!met && test_next_syscall_stop(td.pid)) {
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                met = info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_shmctl &&
                      (int) info.entry.args[0] == shm_id && (info.entry.args[1] & 0xff) == IPC_RMID;
        }
        ck_assert_msg(met, "the start did not remove the killed run's segment %d", shm_id);
        /* An upper bound a correct run never reaches: the receiver was woken before this removal. */
        ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &until), 0);
        until.tv_sec += WAIT_MS / 1000;
        ck_assert_msg(pthread_timedjoin_np(thread, NULL, &until) == 0,
                      "the blocked receive still sleeps while its ring is being removed");
        ck_assert_int_eq(b.result, -EIDRM);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        ck_assert(test_daemon_wait_ready(&td, &status));
        shmb_close(b.ch);
}
END_TEST

/*
 * SPEC, channel lifecycle: once a channel is removed, every library call on
 * the old handle returns -EIDRM. A loop that asks for the descriptor only
 * after the removal (it registers its fds late, or lazily at the first
 * -EAGAIN) must learn that the channel is gone, not get -ENOENT, which the
 * manual gives for a process that cannot see the broker's directory (a
 * configuration error, not "open the channel again"). Here the broker's
 * stop removed the FIFOs with the ring, for a ring handle and for a
 * subscriber.
 */
START_TEST(test_fd_asked_after_the_removal_says_removed) {
        shmb_channel *ch = open_ring(), *sub = NULL;
        char buf[64];

        ck_assert_int_eq(shmb_open_channel(NULL, "news", SHMB_RO, &sub), 0);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EIDRM);
        ck_assert_int_eq(shmb_channel_check(sub), -EIDRM);
        ck_assert_msg(shmb_channel_fd(ch) == -EIDRM, "shmb_channel_fd() of a removed ring: %s",
                      shmb_strerror(shmb_channel_fd(ch)));
        ck_assert_msg(shmb_channel_fd(sub) == -EIDRM, "shmb_channel_fd() of a removed broadcast channel: %s",
                      shmb_strerror(shmb_channel_fd(sub)));
        shmb_close(ch);
        shmb_close(sub);
}
END_TEST

/*
 * The same after a reload that replaced the ring (another slot count): the
 * replacement's FIFOs have the old one's names, and opening them would
 * hand the old handle a descriptor that the new channel's traffic wakes,
 * while every other call on it says -EIDRM.
 */
START_TEST(test_fd_asked_after_a_replacing_reload_says_removed) {
        shmb_channel *ch = NULL;
        char buf[64];
        json_t *resp;
        int fd;

        ck_assert_int_eq(shmb_open_channel(NULL, "r2", SHMB_RW, &ch), 0);
        fd = test_connect(td.socket);
        test_daemon_write_config(&td, "[{\"name\": \"r2\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8}]");
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EIDRM);
        ck_assert_msg(shmb_channel_fd(ch) == -EIDRM, "shmb_channel_fd() of a replaced ring: %s",
                      shmb_strerror(shmb_channel_fd(ch)));
        shmb_close(ch);
}
END_TEST

/*
 * A waiter woken by the removal looks at the ring at once; if it still
 * reads LIVE, it arms again, and nothing will ever write its FIFO after
 * that. So the ring must read REMOVED by the time the broker writes the
 * FIFO. The race is microseconds wide, so instead of hoping to hit it the
 * test stops the daemon at each write(2) into a ".data" FIFO (ptrace) and
 * reads the ring's state right there.
 */
static void reload_to_raw_only(void *userdata) {
        int sock = test_connect(td.socket);

        (void) userdata;
        json_decref(test_request(sock, "{\"op\":\"reload\"}"));
        close(sock);
}

/*
 * A subscriber in an event loop waits on its own FIFO alone: the channel's
 * removal (here by a reload) must write that one too, or the subscriber
 * sleeps on for ever in its poll on a channel that is gone.
 */
START_TEST(test_removal_wakes_a_subscriber_on_its_own_fifo) {
        shmb_channel *sub = NULL;
        char buf[64];
        int fd;

        sub = waiting_subscriber(&fd);                                          /* armed on its own FIFO */
        test_daemon_write_config(&td, "[{\"name\": \"raw\", \"size\": 4096}]");
        reload_to_raw_only(NULL);
        /* The reload answered: the removal, and its wake-ups, came before. */
        ck_assert_msg(readable(fd, 0) == 1, "the removal did not wake the subscriber's own FIFO");
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EIDRM);
        shmb_close(sub);
}
END_TEST

START_TEST(test_removal_marked_before_the_fifo_is_written) {
        shmb_channel *ch = open_ring();
        const RingHeader *h = shmb_channel_addr(ch);
        int fd = shmb_channel_fd(ch), status, writes = 0, live_at_write = 0;
        char buf[64];
        pid_t reloader;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);   /* armed: the broker will write our FIFO */
        test_daemon_write_config(&td, "[{\"name\": \"raw\", \"size\": 4096}]");
        test_daemon_trace(&td);
        reloader = fork();
        ck_assert_int_ge(reloader, 0);
        if (reloader == 0) {
                reload_to_raw_only(NULL);
                _exit(0);
        }
        /* Until the reload answered: the removal happens before the answer. */
        while (waitpid(reloader, &status, WNOHANG) == 0) {
                struct __ptrace_syscall_info info;

                ck_assert(test_next_syscall_stop(td.pid));
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_write &&
                    test_fd_path_ends_with(td.pid, info.entry.args[0], ".data")) {
                        writes++;
                        if (!ring_is_removed(h))
                                live_at_write++;
                }
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ck_assert_msg(writes > 0, "the removal wrote no FIFO");
        ck_assert_msg(live_at_write == 0, "%d of %d FIFO writes at removal came while the ring still read LIVE",
                      live_at_write, writes);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EIDRM);
        shmb_close(ch);
}
END_TEST

/*
 * A sender holds the first slot claimed, and a message waits behind it. The
 * receiver can only be woken by the broker, when it marks the dead sender's
 * token: nobody else will ever touch this ring again.
 */
START_TEST(test_dead_claimer_wakes_the_waiter) {
        shmb_channel *ch = open_ring();
        int fd = shmb_channel_fd(ch), ready[2];
        char buf[64], c;
        pid_t pid;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pipe(ready), 0);
        pid = kid(KID_RESERVE_AND_HANG, NULL, ready[1]);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        ck_assert_int_eq(shmb_send(ch, "behind", 6, 0), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        release_kid();
        ck_assert_msg(await_wakeup(fd), "the broker did not wake the waiter when the claimer died");
        assert_recv(ch, "behind");
        close(ready[0]);
        close(ready[1]);
        shmb_close(ch);
}
END_TEST

/*
 * A receiver that waits in an event loop behind a reservation (a later
 * message is committed already) is woken when that reservation is
 * aborted: the aborted position is skipped and the message behind it is
 * there. The abort's own wake-up, written before shmb_send_abort()
 * returns: not the fd's bound (a second), which would make the loop sit
 * out a message that is ready.
 */
START_TEST(test_abort_wakes_the_waiter_behind_it) {
        shmb_channel *rx = open_ring(), *tx = open_ring();
        int fd = shmb_channel_fd(rx);
        void *first, *second;
        char buf[64];

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_send_reserve(tx, 8, &first, 0), 0);
        ck_assert_int_eq(shmb_send_reserve(tx, 8, &second, 0), 0);
        memcpy(second, "behind", 6);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        ck_assert_int_eq(shmb_send_commit(tx, second, 6), 0);
        /* Woken by the commit, the receiver still finds the first position claimed: it waits again. */
        ck_assert(await_wakeup(fd));
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        ck_assert_int_eq(shmb_send_abort(tx, first), 0);
        ck_assert_msg(await_wakeup(fd), "the abort did not wake the receiver waiting behind it");
        assert_recv(rx, "behind");
        shmb_close(tx);
        shmb_close(rx);
}
END_TEST

/*
 * libshmbroker(3), -EAGAIN: a receive with a timeout of 0 that walked
 * 16384 positions already done without reaching a message "keeps what it
 * walked, and its descriptor stays readable, so call again". Any rw opener
 * can make such a walk: head written far ahead, every slot saying "done".
 * An event loop that waits on the descriptor after that -EAGAIN must be
 * woken at once, not after the descriptor's 1 s bound: counted as the
 * bytes in its FIFOs, not its readiness (wakeup_bytes()).
 */
START_TEST(test_walk_cut_short_leaves_the_descriptor_readable) {
        shmb_channel *ch = NULL;
        uint64_t far = UINT64_C(1) << 40, tail;
        RingHeader *h;
        char buf[64];
        int fd;

        ck_assert_int_eq(shmb_open_channel(NULL, "r2", SHMB_RW, &ch), 0);
        fd = shmb_channel_fd(ch);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        h = shmb_channel_addr(ch);
        __atomic_store_n(&h->head, far, __ATOMIC_SEQ_CST);
        for (uint64_t i = 0; i < 4; i++)
                __atomic_store_n(&ring_slot_at(h, i)->seq, far + i, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        tail = __atomic_load_n(&h->tail, __ATOMIC_SEQ_CST);
        ck_assert_msg(tail > 0 && tail < far, "the walk did not stop part way: tail %" PRIu64, tail);
        ck_assert_msg(wakeup_bytes(fd) > 0, "a walk cut short at tail %" PRIu64 " left the descriptor to sleep",
                      tail);
        /* Called again, the walk goes on from where it stopped. */
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_uint_gt(__atomic_load_n(&h->tail, __ATOMIC_SEQ_CST), tail);
        ck_assert_int_gt(wakeup_bytes(fd), 0);
        shmb_close(ch);
}
END_TEST

/*
 * A sender that cannot reach the data FIFO (gone from under its name; its
 * handle has not opened it yet) leaves the receiver's wake-up for a
 * sender that can: the ring's counterpart of
 * test_broadcast_unreachable_fifo_keeps_the_wakeup_for_later. Each send is
 * another handle's, as the first one's FIFO stays unusable to it.
 */
START_TEST(test_unreachable_fifo_keeps_the_wakeup_for_later) {
        shmb_channel *rx = open_ring(), *tx = open_ring(), *later = open_ring();
        char from[500], to[500], buf[64];
        int fd = shmb_channel_fd(rx);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        snprintf(from, sizeof from, "%s.wake/r.data", td.socket);
        snprintf(to, sizeof to, "%s.wake/hidden", td.socket);
        ck_assert_int_eq(rename(from, to), 0);
        ck_assert_int_eq(shmb_send(tx, "one", 3, 0), 0);
        ck_assert_msg(wakeup_bytes(fd) == 0, "woken through a FIFO that was not there");
        ck_assert_int_eq(rename(to, from), 0);
        ck_assert_int_eq(shmb_send(later, "two", 3, 0), 0);
        ck_assert_msg(await_wakeup(fd), "the wake-up that could not be given was dropped: two messages wait unseen");
        assert_recv(rx, "one");
        assert_recv(rx, "two");
        shmb_close(later);
        shmb_close(tx);
        shmb_close(rx);
}
END_TEST

/*
 * A waiter that closes its FIFO between the broker's open and its write (a
 * client that exits then, or one that races the broker on purpose) must
 * not take the broker down: the write fails with EPIPE, whose SIGPIPE
 * kills by default. The broker is stopped at that write by ptrace while
 * the only reader goes.
 */
START_TEST(test_fifo_closed_under_the_brokers_write_spares_it) {
        shmb_channel *ch = open_ring();
        char path[400];
        int reader, fd;
        pid_t pid;

        snprintf(path, sizeof path, "%s.wake/r.data", td.socket);
        reader = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        ck_assert_int_ge(reader, 0);
        pid = kid(KID_SEND, "x", -1);
        /* Sent: the holder has its token, and lingers until released. */
        ck_assert_int_eq(shmb_recv(ch, path, sizeof path, WAIT_MS), 1);
        test_daemon_trace(&td);
        /* The holder goes: the broker marks it dead and writes the FIFOs of its ring. */
        release_kid();
        for (;;) {
                struct __ptrace_syscall_info info;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the broker ended before it wrote the FIFO");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_write &&
                    test_fd_path_ends_with(td.pid, info.entry.args[0], ".data"))
                        break;
        }
        close(reader);
        /* The premise: that reader was the FIFO's last, so the broker's write meets EPIPE. */
        {
                struct __ptrace_syscall_info info;

                ck_assert(test_next_syscall_stop(td.pid));
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                ck_assert_int_eq(info.op, PTRACE_SYSCALL_INFO_EXIT);
                ck_assert_int_eq(info.exit.rval, -EPIPE);
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        reap_ok(pid);
        fd = test_connect(td.socket);
        test_assert_lists(fd);
        close(fd);
        ck_assert_int_eq(waitpid(td.pid, NULL, WNOHANG), 0);     /* not a zombie either */
        shmb_close(ch);
}
END_TEST

/*
 * shmbroker-ring(7), Trust: any rw opener may write the header, so it may
 * clear the sleeping flags ("delay wake-ups ... every sleep is bounded"),
 * and libshmbroker(3) shmb_channel_fd(): "a flag or FIFO that another
 * process cleared delays a waiter by that bound at most". An event-loop
 * waiter whose RING_SLEEP_FD bit a peer cleared after it armed, and which
 * the peer's message (or room) then reached without a byte in its FIFO,
 * must still come to poll readable and get it: the timer in its epoll set
 * (the sleeping calls' bound, 1 s) wakes it. The peer is a real process
 * that clears the bit and then sends (receives) through the library, whose
 * publish finds no flag; it lingers to the end, as its exit would make the
 * broker write both FIFOs. The waiter does what an event loop does: poll,
 * call with a timeout of 0, and poll again on -EAGAIN, WAIT_MS in all.
 */
static void cleared_flag_does_not_strand_the_waiter(bool sender) {
        shmb_channel *ch = open_ring();
        int fd = shmb_channel_fd(ch), report[2], fifo, queued = -1, wakes = 0;
        int64_t until;
        char buf[64], path[400];
        uint32_t was = 0;
        ssize_t r;
        pid_t pid;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pipe2(report, O_CLOEXEC), 0);
        if (sender) {
                ck_assert_int_eq(shmb_send(ch, "a", 1, 0), 0);
                ck_assert_int_eq(shmb_send(ch, "b", 1, 0), 0);
                ck_assert_int_eq(shmb_send(ch, "c", 1, 0), -EAGAIN);
        } else
                ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        pid = kid(sender ? KID_CLEAR_FLAG_AND_RECV : KID_CLEAR_FLAG_AND_SEND, "hello", report[1]);
        ck_assert_int_eq(read(report[0], &was, sizeof was), (ssize_t) sizeof was);
        /* The premises: the peer took down the bit this waiter raised, and so wrote nothing into its FIFO. */
        ck_assert_msg(was & RING_SLEEP_FD, "the waiter's bit was not up when the peer cleared the flag: %#x", was);
        snprintf(path, sizeof path, "%s.wake/r.%s", td.socket, sender ? "space" : "data");
        fifo = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        ck_assert_int_ge(fifo, 0);
        ck_assert_int_eq(ioctl(fifo, FIONREAD, &queued), 0);
        ck_assert_msg(queued == 0, "the peer wrote the FIFO although it cleared the flag (%d bytes)", queued);
        close(fifo);

        until = test_now_ms() + WAIT_MS;
        do {
                int64_t left = until - test_now_ms();

                ck_assert_msg(left > 0 && readable(fd, (int) left) == 1,
                              "the peer cleared the %s's flag and then %s, and the event-loop %s still sleeps "
                              "%d ms later (%d wake-ups before)", sender ? "sender" : "receiver",
                              sender ? "freed a slot" : "sent", sender ? "sender" : "receiver", WAIT_MS, wakes);
                wakes++;
                r = sender ? shmb_send(ch, "c", 1, 0) : shmb_recv(ch, buf, sizeof buf, 0);
        } while (r == -EAGAIN);
        ck_assert_msg(r == (sender ? 0 : 5), "after the wake-up: %zd (%s)", r, r < 0 ? shmb_strerror((int) r) : "");
        if (sender) {
                assert_recv(ch, "b");
                assert_recv(ch, "c");
        } else
                ck_assert(memcmp(buf, "hello", 5) == 0);
        reap_ok(pid);
        close(report[0]);
        close(report[1]);
        shmb_close(ch);
}

START_TEST(test_cleared_flag_does_not_strand_an_event_loop_receiver) {
        cleared_flag_does_not_strand_the_waiter(false);
}
END_TEST

START_TEST(test_cleared_flag_does_not_strand_an_event_loop_sender) {
        cleared_flag_does_not_strand_the_waiter(true);
}
END_TEST

/*
 * The FIFOs outlive a broker crash: senders that come after the restart
 * still wake an old waiter. The new broker wakes it once when it takes the
 * ring over (its predecessor may have died between marking a claimer dead
 * and the wake-up); the waiter finds nothing and waits again.
 */
START_TEST(test_wait_survives_a_broker_crash) {
        shmb_channel *ch = open_ring();
        int fd = shmb_channel_fd(ch);
        char buf[64], *log;
        pid_t pid;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel r"), "%s", log);
        free(log);
        ck_assert_msg(await_wakeup(fd), "the broker that took the ring over did not wake its waiter");
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(fd), 0);
        pid = kid(KID_SEND, "after", -1);
        ck_assert_msg(await_wakeup(fd), "a sender after the restart did not wake the waiter");
        reap_ok(pid);
        assert_recv(ch, "after");
        shmb_close(ch);
}
END_TEST

/*
 * An administrator removes a ring's objects while the broker is away
 * (killed): nobody marks the ring or writes its FIFOs. A waiter in an event
 * loop must not sleep on for ever on a channel that is gone: its descriptor
 * turns readable within the library's bound (a second), and the call then
 * says -EIDRM, as a sleeping call's does. Before the bound, only a spurious
 * wake-up (-EAGAIN) may come.
 */
static void wait_ends_when_the_objects_go_while_the_broker_is_away(shmb_channel *ch) {
        int fd = shmb_channel_fd(ch), wakes = 0;
        char buf[64];
        ssize_t n;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(ch), IPC_RMID, NULL), 0);
        ck_assert_int_eq(semctl(shmb_channel_sem_id(ch), 0, IPC_RMID), 0);
        do {
                ck_assert_msg(readable(fd, WAIT_MS) == 1,
                              "nothing woke the event-loop waiter of a channel removed while the broker was away");
                n = shmb_recv(ch, buf, sizeof buf, 0);
                ck_assert_msg(n == -EIDRM || n == -EAGAIN, "recv: %zd", n);
        } while (n == -EAGAIN && ++wakes < 3);
        ck_assert_msg(n == -EIDRM, "%d wake-ups, and the channel's removal not noticed", wakes);
        shmb_close(ch);
        test_start_ok();
}

START_TEST(test_wait_ends_when_the_objects_go_while_the_broker_is_away) {
        wait_ends_when_the_objects_go_while_the_broker_is_away(open_ring());
}
END_TEST

/* The same for a broadcast subscriber, which waits on a FIFO of its own. */
START_TEST(test_subscriber_wait_ends_when_the_objects_go_while_the_broker_is_away) {
        shmb_channel *sub = NULL;

        ck_assert_int_eq(shmb_open_channel(NULL, "news", SHMB_RO, &sub), 0);
        wait_ends_when_the_objects_go_while_the_broker_is_away(sub);
}
END_TEST

/* This process's open descriptors, and the highest of them. */
static int fds_open(int *ret_highest) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int n = 0, hi = -1;

        if (!d)
                return -1;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d)) {
                        n++;
                        hi = MAX(hi, atoi(e->d_name));
                }
        closedir(d);
        *ret_highest = hi;
        return n;
}

/*
 * shmb_channel_fd() short of descriptors: with every free descriptor under
 * RLIMIT_NOFILE taken, then given back one at a time, each call fails with
 * -EMFILE at some step (a FIFO, the eventfd, the timer, the epoll
 * instance), and what it made for itself it closes again, so calls that
 * fail again with the same room leave as many descriptors open as the
 * first (the FIFOs are the handle's, and stay). Once there is room it
 * works, and a close gives every descriptor back. In a child: the limit is
 * the child's.
 */
START_TEST(test_channel_fd_short_of_descriptors_leaks_nothing) {
        pid_t pid = fork();
        int status;

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct rlimit rl, lim;
                shmb_channel *ch = NULL;
                int hi, before = fds_open(&hi), fd = -EMFILE, failed = 0, fillers[1024], n_fillers = 0;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || shmb_open_channel(NULL, "r", SHMB_RW, &ch) < 0)
                        _exit(2);
                (void) fds_open(&hi);
                /* Room above the highest for fillers to give back, whether or not there are holes below it. */
                lim = (struct rlimit) { .rlim_cur = (rlim_t) hi + 1 + 16, .rlim_max = rl.rlim_max };
                if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
                        _exit(3);
                /* Every free descriptor under the limit taken: no room at all. */
                while (n_fillers < (int) ELEMENTSOF(fillers) &&
                       (fillers[n_fillers] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
                        n_fillers++;
                if (n_fillers < 16 || n_fillers == (int) ELEMENTSOF(fillers))
                        _exit(3);
                for (int room = 0; room <= 8 && fd < 0; room++) {
                        int first = -1;

                        if (room > 0 && n_fillers > 0)
                                close(fillers[--n_fillers]);
                        for (int again = 0; again < 3; again++) {
                                int n, h;

                                fd = shmb_channel_fd(ch);
                                if (fd >= 0)
                                        break;
                                if (fd != -EMFILE)
                                        _exit(4);
                                failed++;
                                n = fds_open(&h);
                                if (first < 0)
                                        first = n;
                                else if (n != first)
                                        _exit(5);       /* a failed call left a descriptor of its own open */
                        }
                }
                while (n_fillers > 0)
                        close(fillers[--n_fillers]);
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || fd < 0)
                        _exit(6);
                if (failed < 9)
                        _exit(7);       /* it failed at fewer than three steps: they were not all tried */
                if (shmb_recv(ch, (char[64]) { 0 }, 64, 0) != -EAGAIN || shmb_close(ch) != 0)
                        _exit(8);
                _exit(fds_open(&hi) == before ? 0 : 9);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x (see its _exit codes)", status);
}
END_TEST

/* Whether nobody, in group (or in nobody's, for 0) only, may open path read-write: 0, else the errno. */
static int open_errno_as(gid_t group, const char *path) {
        return test_open_as(65534, group ? group : 65534, path, O_RDWR);
}

/*
 * The FIFOs grant what the ring grants: its group may open them, others may
 * not, also after a reload changes the group. They stay the daemon's own
 * (their rights are in an ACL), so it can signal them whatever the ring's
 * owner and mode.
 */
START_TEST(test_fifos_carry_the_channels_rights_and_go_with_it) {
        char path[600], dir[400];
        struct stat st;
        int fd;

        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        ck_assert_int_eq(stat(dir, &st), 0);
        ck_assert(S_ISDIR(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 07777, 0755);
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s/r.%s", dir, i ? "space" : "data");
                ck_assert_int_eq(lstat(path, &st), 0);
                ck_assert(S_ISFIFO(st.st_mode));
                ck_assert_uint_eq(st.st_uid, getuid());
                ck_assert_int_eq(open_errno_as(4242, path), 0);
                ck_assert_int_eq(open_errno_as(0, path), EACCES);
                ck_assert_int_eq(open_errno_as(4243, path), EACCES);
        }
        /* Rings only. */
        snprintf(path, sizeof path, "%s/raw.data", dir);
        ck_assert_int_ne(lstat(path, &st), 0);

        /* A reload that moves the ring to another group moves its FIFOs with it. */
        test_daemon_write_config(&td,
                "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 2, \"group\": 4243, \"mode\": \"0660\"},"
                " {\"name\": \"raw\", \"size\": 4096}]");
        fd = test_connect(td.socket);
        json_decref(test_request(fd, "{\"op\":\"reload\"}"));
        close(fd);
        snprintf(path, sizeof path, "%s/r.data", dir);
        ck_assert_int_eq(open_errno_as(4243, path), 0);
        ck_assert_int_eq(open_errno_as(4242, path), EACCES);

        test_daemon_stop_ok(&td);
        ck_assert_int_ne(stat(dir, &st), 0);
}
END_TEST

/*
 * A ring's ro openers cannot take part (shmb_channel_fd() refuses them
 * EACCES), so its FIFOs must give them nothing: one that could read a FIFO
 * would take the byte a waker wrote for an rw waiter in an event loop, which
 * then sleeps on, past a message that is there, for as long as its poll
 * lets it. The group that may only read the ring may neither read nor
 * write its FIFOs.
 */
/* Reload the config just written, and fail unless it went through. */
static void reload_ok(void) {
        int fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\":\"reload\"}");

        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
}

/* The FIFOs in the directory whose names start with prefix, as one sorted, space-separated string. */
static char *fifos_named(const char *prefix) {
        char dir[600], *list = NULL;
        struct dirent **names;
        size_t len = 0;
        FILE *f = open_memstream(&list, &len);
        bool first = true;
        int n;

        ck_assert_ptr_nonnull(f);
        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        n = scandir(dir, &names, NULL, versionsort);
        ck_assert_int_ge(n, 0);
        for (int i = 0; i < n; i++) {
                if (strncmp(names[i]->d_name, prefix, strlen(prefix)) == 0) {
                        fprintf(f, "%s%s", first ? "" : " ", names[i]->d_name);
                        first = false;
                }
                free(names[i]);
        }
        free(names);
        ck_assert_int_eq(fclose(f), 0);
        return list;
}

/*
 * A broadcast channel has a FIFO per cursor (NAME.data.I) beside the two
 * of the channel. A reload that changes its subscribers makes the new set
 * and leaves none of the old; one that makes it a ring leaves the ring's
 * two; the stop leaves nothing.
 */
START_TEST(test_cursor_fifos_follow_the_channel) {
        char *list, dir[600];
        struct stat st;

        list = fifos_named("news.");
        ck_assert_str_eq(list, "news.data news.data.0 news.data.1 news.space");
        free(list);
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"subscribers\": 3}]");
        reload_ok();
        list = fifos_named("news.");
        ck_assert_str_eq(list, "news.data news.data.0 news.data.1 news.data.2 news.space");
        free(list);
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"subscribers\": 1}]");
        reload_ok();
        list = fifos_named("news.");
        ck_assert_str_eq(list, "news.data news.data.0 news.space");
        free(list);
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 2}]");
        reload_ok();
        list = fifos_named("news.");
        ck_assert_str_eq(list, "news.data news.space");
        free(list);
        test_daemon_stop_ok(&td);
        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        ck_assert_msg(stat(dir, &st) < 0 && errno == ENOENT, "%s is left after the stop", dir);
}
END_TEST

/*
 * A channel whose FIFOs cannot all be made (a directory stands at one
 * cursor's name) works without them and leaves none of those it made: a
 * FIFO of mode 0600 would be nobody's to remove later.
 */
START_TEST(test_half_made_fifos_are_removed) {
        char blocker[600], *list, *log;
        shmb_channel *ch;

        snprintf(blocker, sizeof blocker, "%s.wake/half.data.1", td.socket);
        ck_assert_int_eq(mkdir(blocker, 0700), 0);
        test_daemon_write_config(&td, "[{\"name\": \"half\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"subscribers\": 3}]");
        reload_ok();
        list = fifos_named("half.");
        ck_assert_str_eq(list, "half.data.1");
        free(list);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Channel half: cannot make its wake-up FIFOs"), "no warning in: %s", log);
        free(log);
        ck_assert_int_eq(shmb_open_channel(NULL, "half", SHMB_RW, &ch), 0);
        ck_assert_int_eq(shmb_channel_fd(ch), -EOPNOTSUPP);
        ck_assert_int_eq(shmb_send(ch, "x", 1, 0), 0);
        shmb_close(ch);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(rmdir(blocker), 0);
}
END_TEST

/*
 * A cursor's FIFO grants what the channel's FIFOs grant (a subscriber
 * reads the channel and so empties and writes its FIFO): the channel's
 * group may open it, another user may not, and a reload that takes the
 * group's rights away takes them from every cursor's FIFO too.
 */
START_TEST(test_cursor_fifos_carry_the_channels_rights) {
        char path[600];

        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"subscribers\": 2, \"group\": 4242, \"mode\": \"0640\"}]");
        reload_ok();
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s.wake/news.data.%d", td.socket, i);
                ck_assert_msg(open_errno_as(4242, path) == 0, "the channel's group may not open %s", path);
                ck_assert_msg(open_errno_as(4243, path) == EACCES, "another user may open %s", path);
        }
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"subscribers\": 2, \"group\": 4242, \"mode\": \"0600\"}]");
        reload_ok();
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s.wake/news.data.%d", td.socket, i);
                ck_assert_msg(open_errno_as(4242, path) == EACCES, "the group keeps %s after its rights went", path);
        }
}
END_TEST

/*
 * A crash, then a start with fewer subscribers for the broadcast channel:
 * the channel is made anew (not adopted), and the killed run's cursor
 * FIFOs past the new count must go with the old channel, not stay for
 * ever beside the new one (the start's sweep keeps every FIFO named after
 * a configured channel).
 */
START_TEST(test_crash_restart_with_fewer_subscribers_leaves_no_cursor_fifo) {
        char *list;

        list = fifos_named("news.");
        ck_assert_str_eq(list, "news.data news.data.0 news.data.1 news.space");
        free(list);
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"subscribers\": 1}]");
        test_start_ok();
        list = fifos_named("news.");
        ck_assert_str_eq(list, "news.data news.data.0 news.space");
        free(list);
}
END_TEST

/* Reload to one ring "r" of 2 slots of 64 B with perms (", \"group\": ..., \"mode\": ..."). */
static void reload_ring_r(const char *perms) {
        char cfg[256];

        ck_assert_int_lt(snprintf(cfg, sizeof cfg, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, "
                                  "\"slots\": 2%s}]", perms), (int) sizeof cfg);
        test_daemon_write_config(&td, cfg);
        reload_ok();
}

/* The path of ring "r"'s FIFO i: data (0) or space (1). */
static void ring_r_fifo(char path[600], int i) {
        snprintf(path, 600, "%s.wake/r.%s", td.socket, i ? "space" : "data");
}

START_TEST(test_read_only_class_gets_no_fifo) {
        char path[600];

        reload_ring_r(", \"group\": 4242, \"mode\": \"0640\"");
        for (int i = 0; i < 2; i++) {
                ring_r_fifo(path, i);
                for (int k = 0; k < 2; k++)
                        ck_assert_msg(test_open_as(65534, 4242, path, k ? O_WRONLY : O_RDONLY) == EACCES,
                                      "the ring's read-only group may open %s %s", path, k ? "O_WRONLY" : "O_RDONLY");
        }
}
END_TEST

/* The same for the channel's owner: an owner who may only read the ring gets nothing of its FIFOs. */
START_TEST(test_read_only_owner_gets_no_fifo) {
        char path[600];

        reload_ring_r(", \"owner\": 65534, \"group\": 4242, \"mode\": \"0460\"");
        for (int i = 0; i < 2; i++) {
                ring_r_fifo(path, i);
                for (int k = 0; k < 2; k++)
                        ck_assert_msg(test_open_as(65534, 65534, path, k ? O_WRONLY : O_RDONLY) == EACCES,
                                      "the ring's read-only owner may open %s %s", path, k ? "O_WRONLY" : "O_RDONLY");
                /* Its group, which may write the ring, takes part. */
                ck_assert_int_eq(test_open_as(4243, 4242, path, O_RDWR), 0);
        }
}
END_TEST

/* A ring that lets every user write it: every user takes part, and may open its FIFOs. */
START_TEST(test_other_class_gets_the_fifos) {
        char path[600];

        reload_ring_r(", \"owner\": 65534, \"group\": 4242, \"mode\": \"0606\"");
        for (int i = 0; i < 2; i++) {
                ring_r_fifo(path, i);
                ck_assert_msg(test_open_as(4243, 4243, path, O_RDWR) == 0, "another user may not open %s", path);
                /* The group's own entry still counts first: nothing for it. */
                ck_assert_int_eq(test_open_as(4243, 4242, path, O_RDWR), EACCES);
        }
}
END_TEST

/* A daemon started under a umask that takes every bit off for others still lets clients reach its FIFOs. */
START_TEST(test_wake_directory_is_reachable_whatever_the_umask) {
        char dir[400];
        struct stat st;
        mode_t was;

        test_daemon_stop_ok(&td);
        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        ck_assert_int_lt(stat(dir, &st), 0);
        was = umask(077);
        test_start_ok();
        umask(was);
        ck_assert_int_eq(stat(dir, &st), 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0755);
}
END_TEST

/*
 * The kernel gives a ring's group rights to its creator's group (the
 * daemon's: root's, as the test runs it) as well as to the channel's
 * group, so a client in the daemon's group takes part in the ring; its
 * FIFOs must let it in as well. (A FIFO's own group is the daemon's: an
 * ACL entry for it that gave nothing would shut that client out, also
 * from what "other" grants.)
 */
START_TEST(test_creator_group_gets_the_fifos) {
        char path[600];
        int r;

        reload_ring_r(", \"group\": 4242, \"mode\": \"0666\"");
        for (int i = 0; i < 2; i++) {
                ring_r_fifo(path, i);
                r = test_open_as(65534, getegid(), path, O_RDWR);
                ck_assert_msg(r == 0, "a member of the ring's creator group may not open %s: %s", path, strerror(r));
        }
}
END_TEST

START_TEST(test_raw_and_read_only_handles_have_none) {
        shmb_channel *raw = NULL, *ro = NULL;

        ck_assert_int_eq(shmb_open_channel(NULL, "raw", SHMB_RW, &raw), 0);
        ck_assert_int_eq(shmb_channel_fd(raw), -ENOTSUP);
        ck_assert_int_eq(shmb_open_channel(NULL, "r", SHMB_RO, &ro), 0);
        ck_assert_int_eq(shmb_channel_fd(ro), -EACCES);
        ck_assert_int_eq(shmb_channel_fd(NULL), -EINVAL);
        shmb_close(raw);
        shmb_close(ro);
}
END_TEST

/* Ring r works, but has no FIFOs to wait on in an event loop. */
static void assert_ring_works_without_fifos(void) {
        shmb_channel *ch = open_ring();
        char buf[8];

        ck_assert_int_eq(shmb_channel_fd(ch), -EOPNOTSUPP);
        ck_assert_int_eq(shmb_send(ch, "x", 1, 0), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), 1);
        shmb_close(ch);
}

/*
 * Another user made the directory first (a shared socket directory): the
 * daemon must neither use nor touch it, and rings still work.
 */
START_TEST(test_planted_directory_is_left_alone) {
        char dir[400], planted[420];
        struct stat st;

        test_daemon_stop_ok(&td);
        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        snprintf(planted, sizeof planted, "%s/r.data", dir);
        ck_assert_int_eq(mkdir(dir, 0777), 0);
        ck_assert_int_eq(chmod(dir, 0777), 0);
        ck_assert_int_eq(mkfifo(planted, 0666), 0);
        ck_assert_int_eq(chmod(planted, 0666), 0);
        ck_assert_int_eq(chown(planted, 65534, 65534), 0);
        ck_assert_int_eq(chown(dir, 65534, 65534), 0);
        test_start_ok();
        assert_ring_works_without_fifos();
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(lstat(planted, &st), 0);
        ck_assert_uint_eq(st.st_uid, 65534);
        ck_assert_uint_eq(st.st_mode & 07777, 0666);
        ck_assert_int_eq(unlink(planted), 0);
        ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/*
 * The directory is the daemon's, but its lock file is not (another user's
 * file, or the daemon's own that group or others may write): the daemon
 * neither locks nor removes it, says why, and rings still work without
 * their FIFOs.
 */
START_TEST(test_lock_file_not_its_own_is_left_alone) {
        static const struct { uid_t uid; mode_t mode; } planted[] = { { 65534, 0600 }, { 0, 0620 } };
        char dir[400], lock[420], *log;
        struct stat st;

        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        snprintf(lock, sizeof lock, "%s/.lock", dir);
        for (size_t i = 0; i < ELEMENTSOF(planted); i++) {
                int fd;

                test_daemon_stop_ok(&td);
                ck_assert_int_eq(mkdir(dir, 0755), 0);
                fd = open(lock, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                ck_assert_int_ge(fd, 0);
                ck_assert_int_eq(fchown(fd, planted[i].uid, planted[i].uid), 0);
                ck_assert_int_eq(fchmod(fd, planted[i].mode), 0);
                close(fd);
                test_start_ok();
                log = test_daemon_log(&td);
                ck_assert_msg(strstr(log, "/.lock is not the daemon's own file"), "lock %zu, no reason in: %s", i, log);
                free(log);
                assert_ring_works_without_fifos();
                test_daemon_stop_ok(&td);
                ck_assert_int_eq(lstat(lock, &st), 0);
                ck_assert_uint_eq(st.st_uid, planted[i].uid);
                ck_assert_uint_eq(st.st_mode & 07777, planted[i].mode);
                ck_assert_int_eq(unlink(lock), 0);
                ck_assert_int_eq(rmdir(dir), 0);
                test_start_ok();
        }
}
END_TEST

/*
 * Start a second daemon on td's socket and configuration, with a state
 * directory of its own (so its state lock is free), state2 (its path,
 * written there): it must refuse to start, exit 1.
 */
static void second_daemon_refused(char *state2, size_t size) {
        TestDaemon td2 = td;
        int status = 0;

        snprintf(state2, size, "%s/state2", td.dir);
        td2.pid = -1;
        td2.notify_fd = -1;
        snprintf(td2.notify, sizeof td2.notify, "%s/notify2", td.dir);
        snprintf(td2.log, sizeof td2.log, "%s/daemon2.log", td.dir);
        ck_assert(!test_daemon_start(&td2, &status, "--state-dir", state2, NULL));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "the second daemon: status %d", status);
}

/*
 * A second daemon started on the same socket but another state directory
 * (its own lock, so nothing stops it early) fails: a server listens there.
 * On its way it must not touch the running daemon's wake-up FIFOs or their
 * directory: they are not its own.
 */
START_TEST(test_failed_second_daemon_leaves_the_fifos) {
        char dir[400], path[600], state2[400];
        struct stat before[2], after;
        shmb_channel *ch;

        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s/r2.%s", dir, i ? "space" : "data");
                ck_assert_int_eq(lstat(path, &before[i]), 0);
        }
        second_daemon_refused(state2, sizeof state2);

        ck_assert_msg(stat(dir, &after) == 0 && S_ISDIR(after.st_mode), "the running daemon's %s is gone", dir);
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s/r2.%s", dir, i ? "space" : "data");
                ck_assert_msg(lstat(path, &after) == 0, "%s is gone", path);
                ck_assert_msg(after.st_ino == before[i].st_ino, "%s was replaced", path);
        }
        /* And the running daemon still hands out a working fd. */
        ch = NULL;
        ck_assert_int_eq(shmb_open_channel(NULL, "r2", SHMB_RW, &ch), 0);
        ck_assert_int_ge(shmb_channel_fd(ch), 0);
        shmb_close(ch);
}
END_TEST

/*
 * shmbrokerd(8), EXIT STATUS 1: "Everything created is removed again before
 * exiting." The second daemon refused over the FIFOs' directory made its
 * lock, state and key secret in its own state directory on its way: they
 * must go with it (its lock names a run that never ran, which a later start
 * of that state directory would take for a crashed one to reclaim).
 */
START_TEST(test_failed_second_daemon_leaves_no_state_files) {
        static const char *const suffixes[] = { ".lock", ".state", ".secret" };
        char path[600], state2[400];

        second_daemon_refused(state2, sizeof state2);
        for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
                struct stat st;

                snprintf(path, sizeof path, "%s/shmbroker.sock%s", state2, suffixes[i]);
                ck_assert_msg(lstat(path, &st) < 0 && errno == ENOENT, "the refused start left %s", path);
        }
}
END_TEST

/*
 * The FIFOs' directory is 0755 (clients must reach the FIFOs), so any
 * local user may open it, and flock(2) needs no more than an open
 * descriptor. Such a user, waiting for a lock on it while the broker
 * runs, has it the moment the broker dies: that must not keep the broker
 * from coming back after the crash.
 */
START_TEST(test_another_users_lock_on_the_fifo_directory_does_not_stop_a_restart) {
        char dir[400], c;
        int locked[2], status;
        pid_t pid;

        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        ck_assert_int_eq(pipe2(locked, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int fd;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(locked[0]);
                test_drop_privileges(65534, 65534, 0);
                fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                /* The broker holds it: wait in line, and have it the moment the broker is gone. */
                if (fd < 0 || write(locked[1], "o", 1) != 1 || flock(fd, LOCK_SH) < 0)
                        _exit(2);
                if (write(locked[1], "l", 1) != 1)
                        _exit(3);
                for (;;)
                        pause();
        }
        close(locked[1]);
        ck_assert_msg(read(locked[0], &c, 1) == 1, "nobody could not open %s", dir);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_msg(read(locked[0], &c, 1) == 1 && c == 'l', "nobody could not lock %s", dir);
        close(locked[0]);
        status = 0;
        if (!test_daemon_start(&td, &status, NULL)) {
                char *log = test_daemon_log(&td);

                kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                ck_abort_msg("uid 65534's flock on %s kept the broker from restarting (status %d): %s", dir, status,
                             log);
        }
        kill(pid, SIGKILL);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
}
END_TEST

/*
 * A crash, then a start that fails (a fixed key another program holds) with
 * the rings no longer configured: the start reclaims the killed run's rings
 * and, having nothing left to record, removes its state files; the rings'
 * FIFOs (and so their directory) must go with them, or nothing ever removes them.
 */
START_TEST(test_failed_restart_removes_the_reclaimed_rings_fifos) {
        char dir[400], lock[400];
        struct stat st;
        int status = 0, foreign;

        test_daemon_kill(&td, SIGKILL);
        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        ck_assert_int_eq(stat(dir, &st), 0);
        foreign = shmget((key_t) 0x4242, 4096, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);
        test_daemon_write_config(&td, "[{\"name\": \"fixed\", \"size\": 4096, \"key\": 16962}]");
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
        /* Everything of the killed run's is reclaimed, so its record is gone... */
        snprintf(lock, sizeof lock, "%s.lock", td.socket);
        ck_assert_int_ne(lstat(lock, &st), 0);
        /* ...and so must be the FIFOs of the rings it removed. */
        ck_assert_msg(lstat(dir, &st) < 0 && errno == ENOENT, "%s (and the removed rings' FIFOs in it) is left", dir);
}
END_TEST

/* A process that publishes one message on "news" and stays until released. */
static pid_t publisher_kid(const char *text) {
        pid_t pid;

        ck_assert_int_eq(pipe2(linger, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *ch = NULL;
                char c;
                int r;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, "news", SHMB_RW, &ch) < 0)
                        _exit(2);
                r = shmb_send(ch, text, strlen(text), WAIT_MS);
                close(linger[1]);
                (void) read(linger[0], &c, 1);
                _exit(r == 0 ? 0 : 3);
        }
        close(linger[0]);
        return pid;
}

/*
 * Broadcast: a subscriber (ro) waits for data through its fd, a block-mode
 * publisher for room. Each wake-up comes from another handle: the
 * subscriber's from a publisher process, the publisher's from the
 * subscriber reading (which tells the publisher it moved).
 */
START_TEST(test_broadcast_subscriber_and_publisher_wait_through_the_fd) {
        shmb_channel *sub = NULL, *pub = NULL;
        char buf[64];
        int sfd, pfd;
        pid_t pid;

        sub = waiting_subscriber(&sfd);
        pid = publisher_kid("news 1");
        ck_assert_msg(await_wakeup(sfd), "no wake-up from the publisher");
        assert_recv(sub, "news 1");
        /* Emptied, so that only the broker's signal of the publisher's exit wakes it next. */
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(sfd), 0);
        reap_ok(pid);
        settle_child_exit(sfd);
        ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, 0), -EAGAIN);

        /* Two slots, one subscriber that does not read: the third publish waits for room. */
        ck_assert_int_eq(shmb_open_channel(NULL, "news", SHMB_RW, &pub), 0);
        pfd = shmb_channel_fd(pub);
        ck_assert_int_ge(pfd, 0);
        ck_assert_int_eq(shmb_send(pub, "a", 1, 0), 0);
        ck_assert_int_eq(shmb_send(pub, "b", 1, 0), 0);
        ck_assert_int_eq(shmb_send(pub, "c", 1, 0), -EAGAIN);
        ck_assert_int_eq(wakeup_bytes(pfd), 0);
        assert_recv(sub, "a");
        ck_assert_msg(await_wakeup(pfd), "the subscriber's read did not wake the publisher");
        ck_assert_int_eq(shmb_send(pub, "c", 1, 0), 0);
        assert_recv(sub, "b");
        assert_recv(sub, "c");
        shmb_close(pub);
        shmb_close(sub);
}
END_TEST

/*
 * Two subscribers of one broadcast channel wait through their fds. The
 * wake-up of a message must reach both: the one that reads it first and
 * goes back to waiting (-EAGAIN, which empties the shared FIFO) must not
 * take it from the other, whose message still waits. Else the other's
 * loop sleeps with a message to read, and in block mode the publishers
 * wait for it for ever.
 */
START_TEST(test_broadcast_one_subscribers_wait_keeps_anothers_wakeup) {
        char buf[64];
        int afd, bfd;
        shmb_channel *a = waiting_subscriber(&afd), *b = waiting_subscriber(&bfd);
        pid_t pid;

        pid = publisher_kid("news 1");
        ck_assert_msg(await_wakeup(afd), "no wake-up from the publisher");
        /* A's loop runs first: it reads, and waits again. */
        assert_recv(a, "news 1");
        ck_assert_int_eq(shmb_recv(a, buf, sizeof buf, 0), -EAGAIN);
        /* B's message is still there: its fd must say so. */
        ck_assert_msg(await_wakeup(bfd), "B's wake-up was taken by A's wait: a message waits unseen");
        assert_recv(b, "news 1");
        reap_ok(pid);
        shmb_close(a);
        shmb_close(b);
}
END_TEST

/*
 * A subscriber's FIFO the publisher cannot open (here: renamed away, as a
 * FIFO out of its mount namespace's reach would be) keeps the subscriber's
 * flag up, left for a waker that can reach it: the next publish, with the
 * FIFO back, must still wake it. Each publish writes the FIFOs before it
 * returns, so nothing here waits for time to pass.
 */
START_TEST(test_broadcast_unreachable_fifo_keeps_the_wakeup_for_later) {
        char dir[400], from[2][500], to[2][500];
        shmb_channel *pub = NULL, *sub;
        int sfd;

        snprintf(dir, sizeof dir, "%s.wake", td.socket);
        sub = waiting_subscriber(&sfd);
        ck_assert_int_eq(shmb_open_channel(NULL, "news", SHMB_RW, &pub), 0);
        for (int i = 0; i < 2; i++) {
                snprintf(from[i], sizeof from[i], "%s/news.data.%d", dir, i);
                snprintf(to[i], sizeof to[i], "%s/hidden.%d", dir, i);
                ck_assert_int_eq(rename(from[i], to[i]), 0);
        }
        ck_assert_int_eq(shmb_send(pub, "news 1", 6, 0), 0);
        ck_assert_msg(wakeup_bytes(sfd) == 0, "woken through a FIFO that was not there");
        for (int i = 0; i < 2; i++)
                ck_assert_int_eq(rename(to[i], from[i]), 0);
        ck_assert_int_eq(shmb_send(pub, "news 2", 6, 0), 0);
        ck_assert_msg(readable(sfd, 0) == 1, "the wake-up that could not be given was dropped: two messages wait unseen");
        assert_recv(sub, "news 1");
        assert_recv(sub, "news 2");
        shmb_close(pub);
        shmb_close(sub);
}
END_TEST

/*
 * libshmbroker(3): "A handle that never calls it pays nothing". A
 * publisher that never asked for an fd wakes 48 subscribers that wait in
 * event loops; it runs with room for 16 more descriptors than it had
 * after its open (a modest RLIMIT_NOFILE). Every subscriber must be woken,
 * and the publisher must not be left holding a descriptor per subscriber.
 */
#define WIDE 48
START_TEST(test_broadcast_publisher_wakes_many_subscribers_without_a_descriptor_each) {
        shmb_channel *subs[WIDE];
        struct pollfd p[WIDE];
        int ready[2], done[2], status;
        char buf[64], c;
        pid_t pid;

        for (int i = 0; i < WIDE; i++) {
                subs[i] = NULL;
                ck_assert_int_eq(shmb_open_channel(NULL, "wide", SHMB_RO, &subs[i]), 0);
                p[i] = (struct pollfd) { .fd = shmb_channel_fd(subs[i]), .events = POLLIN };
                ck_assert_int_ge(p[i].fd, 0);
                ck_assert_int_eq(shmb_recv(subs[i], buf, sizeof buf, 0), -EAGAIN);
        }
        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(done, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *pub = NULL;
                struct rlimit rl;
                int before, after, fd;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(ready[0]);
                close(done[1]);
                if (shmb_open_channel(NULL, "wide", SHMB_RW, &pub) < 0)
                        _exit(2);
                /* The highest descriptor now, and room for 16 more. */
                fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        _exit(3);
                before = fd;
                close(fd);
                rl.rlim_cur = rl.rlim_max = (rlim_t) before + 16;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        _exit(4);
                if (shmb_send(pub, "m", 1, WAIT_MS) < 0)
                        _exit(5);
                /* -1: the library took every descriptor the program had left. */
                after = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (after >= 0)
                        close(after);
                if (write(ready[1], "r", 1) != 1)
                        _exit(7);
                (void) read(done[0], &c, 1);
                _exit(after < 0 ? 6 : after - before > 4 ? 8 : 0);
        }
        close(ready[1]);
        close(done[0]);
        if (read(ready[0], &c, 1) != 1) {
                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                ck_abort_msg("the publisher gave up: exit %d (5: its send failed)", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        for (int i = 0; i < WIDE; i++) {
                /* The send returned: every byte is written already. */
                ck_assert_msg(readable(p[i].fd, 0) == 1, "subscriber %d of %d was not woken", i, WIDE);
                ck_assert_int_eq(shmb_recv(subs[i], buf, sizeof buf, 0), 1);
        }
        close(done[1]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "publisher exit %d (6: out of descriptors; 8: it keeps one per subscriber)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        close(ready[0]);
        for (int i = 0; i < WIDE; i++)
                shmb_close(subs[i]);
}
END_TEST

/*
 * Run cmd, a poll-receiver over two channels and their senders, and check
 * its output: the two channels' lines interleaved as they came, each
 * channel's own "message 1" .. "message count" in order.
 */
static void assert_two_streams(const char *cmd, const char *first, const char *second, int count) {
        static char out[65536];
        const char *prefix[2] = { first, second };
        char *line, *save = NULL;
        int next[2] = { 1, 1 };
        size_t n;
        FILE *p;

        p = popen(cmd, "re");
        ck_assert_ptr_nonnull(p);
        n = fread(out, 1, sizeof out - 1, p);
        out[n] = '\0';
        ck_assert_int_eq(pclose(p), 0);
        for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char want[96];
                int which = -1;

                for (int k = 0; k < 2 && which < 0; k++)
                        if (strncmp(line, prefix[k], strlen(prefix[k])) == 0 && line[strlen(prefix[k])] == ':')
                                which = k;
                ck_assert_msg(which >= 0, "unexpected line: %s", line);
                snprintf(want, sizeof want, "%s: message %d", prefix[which], next[which]++);
                ck_assert_str_eq(line, want);
        }
        ck_assert_int_eq(next[0], count + 1);
        ck_assert_int_eq(next[1], count + 1);
}

/* examples/poll-receiver: one poll() loop over two channels, each fed by its own sender; and stdin. */
START_TEST(test_poll_example_receives_from_two_rings) {
        char cmd[1024];

        snprintf(cmd, sizeof cmd, "%s/poll-receiver r r2 & r=$!; %s/ring-sender r 30 & a=$!; "
                 "%s/ring-sender r2 30 && wait $a && wait $r", EXAMPLES_DIR, EXAMPLES_DIR, EXAMPLES_DIR);
        assert_two_streams(cmd, "r", "r2", 30);
        /* A ring and a broadcast channel (subscribed), published to once the subscriber is in. */
        snprintf(cmd, sizeof cmd, "%s/poll-receiver r news & r=$!; %s/ring-sender r 30 & a=$!; "
                 "%s/broadcast-publisher news 30 1 && wait $a && wait $r", EXAMPLES_DIR, EXAMPLES_DIR, EXAMPLES_DIR);
        assert_two_streams(cmd, "r", "news", 30);

        /* stdin is in the same loop: "quit" ends it with nothing sent (else: 10 s idle, then exit 1). */
        snprintf(cmd, sizeof cmd, "echo quit | %s/poll-receiver r r2", EXAMPLES_DIR);
        ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/*
 * README: the example receivers "give up after 10 s with nothing to read
 * (exit 1)"; poll-receiver's usage: "it gives up after 10 s idle". A
 * channel's descriptor turns readable about once a second with nothing to
 * read (the bound of every wait), which must not count as something to do,
 * or an event-loop receiver waits for ever. Each receiver here waits on a
 * channel nobody sends to; each must end with exit 1 after about 10 s.
 */
START_TEST(test_example_receivers_give_up_after_10_s_idle) {
        static const char *const runs[] = { "poll-receiver r2", "poll-receiver news", "poll-receiver r2 news",
                                            "ring-receiver r2", "zero-copy-receiver r2", "broadcast-subscriber wide" };
        char cmd[4096], out[4096];
        size_t used = 0;
        char *line, *save = NULL;
        int seen = 0;

        /* All at once (the test takes 10 s, not 60): each prints its name's index, exit status and milliseconds. */
        for (size_t i = 0; i < ELEMENTSOF(runs); i++)
                used += (size_t) snprintf(cmd + used, sizeof cmd - used,
                                          "( s=$(date +%%s%%N); timeout 30 %s/%s </dev/null >/dev/null 2>&1; rc=$?; "
                                          "echo %zu $rc $(( ($(date +%%s%%N) - s) / 1000000 )) ) & ",
                                          EXAMPLES_DIR, runs[i], i);
        ck_assert_int_lt(snprintf(cmd + used, sizeof cmd - used, "wait"), (int) (sizeof cmd - used));
        ck_assert_int_eq(test_run(out, sizeof out, "%s", cmd), 0);
        for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                size_t i;
                int rc;
                long long ms;

                ck_assert_msg(sscanf(line, "%zu %d %lld", &i, &rc, &ms) == 3 && i < ELEMENTSOF(runs), "%s", line);
                ck_assert_msg(rc == 1 && ms >= 9500 && ms < 20000, "%s: exit %d after %lld ms, not 1 after 10 s idle",
                              runs[i], rc, ms);
                seen++;
        }
        ck_assert_int_eq(seen, (int) ELEMENTSOF(runs));
}
END_TEST

int main(void) {
        const TestGroup groups[] = {
                { "wake-ups", CASE_TIMEOUT, { test_receiver_woken_by_another_process,
                                              test_abort_wakes_the_waiter_behind_it,
                                              test_sender_woken_when_a_slot_frees } },
                { "broker-wakes", CASE_TIMEOUT, { test_removal_wakes_the_waiter, test_removal_wakes_a_subscriber_on_its_own_fifo,
                                                test_removal_marked_before_the_fifo_is_written,
                                                  test_dead_claimer_wakes_the_waiter,
                                                  test_fd_asked_after_the_removal_says_removed,
                                                  test_fd_asked_after_a_replacing_reload_says_removed } },
                { "short-of-fds", CASE_TIMEOUT, { test_channel_fd_short_of_descriptors_leaks_nothing } },
                { "restart", CASE_TIMEOUT, { test_wait_survives_a_broker_crash,
                                            test_wait_ends_when_the_objects_go_while_the_broker_is_away,
                                            test_subscriber_wait_ends_when_the_objects_go_while_the_broker_is_away,
                                            test_failed_restart_removes_the_reclaimed_rings_fifos,
                                            test_reclaim_wakes_a_receive_blocked_since_the_crash } },
                { "hostile", CASE_TIMEOUT, { test_fifo_closed_under_the_brokers_write_spares_it,
                                             test_cleared_flag_does_not_strand_an_event_loop_receiver,
                                             test_cleared_flag_does_not_strand_an_event_loop_sender,
                                             test_unreachable_fifo_keeps_the_wakeup_for_later,
                                             test_walk_cut_short_leaves_the_descriptor_readable } },
                { "example", CASE_TIMEOUT, { test_poll_example_receives_from_two_rings } },
                { "example-idle", CASE_TIMEOUT, { test_example_receivers_give_up_after_10_s_idle } },
                { "broadcast", CASE_TIMEOUT, { test_broadcast_subscriber_and_publisher_wait_through_the_fd,
                                              test_broadcast_one_subscribers_wait_keeps_anothers_wakeup,
                                              test_broadcast_unreachable_fifo_keeps_the_wakeup_for_later,
                                              test_broadcast_publisher_wakes_many_subscribers_without_a_descriptor_each } },
                { "wake-umask", CASE_TIMEOUT, { test_wake_directory_is_reachable_whatever_the_umask } },
                { "fifos", CASE_TIMEOUT, { test_fifos_carry_the_channels_rights_and_go_with_it,
                                           test_read_only_class_gets_no_fifo, test_read_only_owner_gets_no_fifo,
                                           test_other_class_gets_the_fifos,
                                           test_creator_group_gets_the_fifos,
                                           test_cursor_fifos_follow_the_channel, test_half_made_fifos_are_removed,
                                           test_crash_restart_with_fewer_subscribers_leaves_no_cursor_fifo,
                                           test_cursor_fifos_carry_the_channels_rights,
                                           test_raw_and_read_only_handles_have_none,
                                           test_failed_second_daemon_leaves_the_fifos,
                                           test_failed_second_daemon_leaves_no_state_files } },
                { "planted", CASE_TIMEOUT, { test_planted_directory_is_left_alone,
                                             test_lock_file_not_its_own_is_left_alone,
                                             test_another_users_lock_on_the_fifo_directory_does_not_stop_a_restart } },
        };

        return test_main("channel-fd", groups, ELEMENTSOF(groups), setup, teardown);
}
