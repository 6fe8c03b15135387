/*
 * Ring liveness, end to end: whether the holder of a claim lives is the
 * broker's word (proto/ring.h: a holder token per rw opener, marked DEAD
 * when the opener's process ends), never a pid's. Each case runs the
 * real library in real processes against the real daemon, in a private
 * IPC namespace.
 *
 * A claimer is stopped at an exact point of a real shmb_send() or
 * shmb_recv() by a trap: memory that the library copies from (or into,
 * or where it moves a position on) lacks the access the library needs,
 * and the test's own SIGSEGV handler decides what happens at the fault:
 * stall a second, hold until told, or die right there. Pipes and
 * waitpid() order everything else; the only sleep is a stall's.
 *
 * What a pid-based judge gets wrong, and these cases catch: a claimer in
 * another PID namespace (its pid names nobody here), a dead claimer whose
 * pid a live process got (kill(pid, 0) says alive), and the poll itself
 * (kill() is a system call; the holder table is memory). What the broker's
 * judge must get right as well: a claim made the instant before death, an
 * entry handed out again, and the places where a connection and its
 * process end apart (a fork holds the socket on; a connection ends under a
 * live claimer): the process is what counts.
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <shmbroker/shmbroker.h>

#include "proto/ring.h"
#include "tests/helpers.h"

#define ELEMENTS(x) (sizeof(x) / sizeof((x)[0]))

#define CASE_TIMEOUT 30
#define RING "ring"
#define SLOT_SIZE 65536
#define SLOTS 4
#define BIG_LEN 60000           /* a copy of many pages, which a trap stops part of the way */
#define SMALL_LEN 100
#define WAIT_MS 10000           /* the bound on what must happen: generous, for a slow machine */
#define REPAIR_MS 5000          /* the bound on a repair (the library polls every 50 ms) */
#define STALL_MS 1000           /* how long a slow claimer stalls mid-copy */
#define STALLED_MS 500          /* a call that waited for that stall took at least this long */
#define ROUNDS 1000

static const char *const channels =
        "[{\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 65536, \"slots\": 4}]";

/* Children say what went wrong here, one line each (a pipe write of that size is atomic). */
static int complaints[2] = { -1, -1 };

/* Children still to be reaped; a passing test reaps them all itself. */
static pid_t kids[8];
static size_t n_kids;

/* ---- children ---- */

/* Set in a child under the strict filter: strict mode's rule, read, write, exit and sigreturn only (see enter_strict_filter()). */
static bool strict_filter;

/*
 * Under the strict filter with the exit system call itself: exit_group is
 * not allowed there. Not _Noreturn, and called before the _Noreturn
 * child_exit(): under AddressSanitizer a call to a noreturn function
 * first runs __asan_handle_no_return(), which calls sigaltstack().
 */
static void strict_exit(int code) {
        if (strict_filter)
                (void) syscall(SYS_exit, code);
}

static _Noreturn void child_exit(int code) {
        strict_exit(code);
        _exit(code);
}

/* No getpid() here: a child under the strict filter may only read, write and exit. */
static _Noreturn void child_fail(int line, const char *what, long long got, long long want, bool values) {
        char msg[400];
        int n;

        if (values)
                n = snprintf(msg, sizeof msg, "line %d: %s is %lld, not %lld\n", line, what, got, want);
        else
                n = snprintf(msg, sizeof msg, "line %d: %s is false\n", line, what);
        if (n > 0)
                (void) write(complaints[1], msg, (size_t) n < sizeof msg ? (size_t) n : sizeof msg - 1);
        child_exit(1);
}

#define CHILD_CHECK(cond)                                               \
        do {                                                            \
                if (!(cond))                                            \
                        child_fail(__LINE__, #cond, 0, 0, false);       \
        } while (0)

#define CHILD_EQ(a, b)                                                  \
        do {                                                            \
                long long a_ = (long long) (a), b_ = (long long) (b);   \
                if (a_ != b_)                                           \
                        child_fail(__LINE__, #a, a_, b_, true);         \
        } while (0)

/* A blocking read of exactly len bytes, with nothing but read(): usable under the strict filter. */
static void child_read(int fd, void *buf, size_t len) {
        for (size_t got = 0; got < len;) {
                ssize_t n = read(fd, (char *) buf + got, len - got);

                if (n < 0 && errno == EINTR)
                        continue;
                CHILD_CHECK(n > 0);
                got += (size_t) n;
        }
}

static void child_write(int fd, const void *buf, size_t len) {
        CHILD_EQ(write(fd, buf, len), (ssize_t) len);
}

static void forget(pid_t pid) {
        for (size_t i = 0; i < n_kids; i++)
                if (kids[i] == pid) {
                        kids[i] = kids[--n_kids];
                        return;
                }
}

/*
 * fork(), with a child that dies with this test's process: a failed
 * assertion ends that process at once, without the teardown.
 */
static pid_t spawn(void) {
        pid_t parent = getpid(), pid;

        ck_assert_uint_lt(n_kids, ELEMENTS(kids));
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        child_exit(127);
                return 0;
        }
        kids[n_kids++] = pid;
        return pid;
}

/* struct clone_args up to set_tid (CLONE_ARGS_SIZE_VER1), declared here: <linux/sched.h> clashes with <sched.h>. */
typedef struct CloneArgs {
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size;
} CloneArgs;

/*
 * fork() with the child's pid chosen: clone3()'s set_tid (CAP_SYS_ADMIN
 * in the user namespace that owns the caller's PID namespace), the pid in
 * that namespace. Raw, without glibc's fork handlers: only for a caller
 * that is single-threaded (every caller here is a child of fork(), or the
 * test's own process, which has no other thread), so that no lock is held
 * by a thread the child lacks. The child may use the library: it keeps no
 * pid, registers no fork handlers, and takes only default mutexes (which
 * need no owner tid, the one thing of glibc's that fork() would set anew).
 */
static pid_t fork_with_pid(pid_t want) {
        pid_t tid = want;
        CloneArgs args = { .exit_signal = SIGCHLD, .set_tid = (uint64_t) (uintptr_t) &tid, .set_tid_size = 1 };

        return (pid_t) syscall(SYS_clone3, &args, sizeof args);
}

/* Wait for a child of ours, at most WAIT_MS: a child that hangs fails with a sentence, not at the case's timeout. */
static int reap(pid_t pid) {
        int fd = (int) syscall(SYS_pidfd_open, pid, 0), status;
        struct pollfd p = { .fd = fd, .events = POLLIN };

        ck_assert_msg(fd >= 0, "pidfd_open(%d): %s", (int) pid, strerror(errno));
        ck_assert_msg(poll(&p, 1, WAIT_MS) == 1, "child %d still runs after %d ms", (int) pid, WAIT_MS);
        close(fd);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        forget(pid);
        return status;
}

static const char *complaint(void) {
        static char why[2048];
        ssize_t n = read(complaints[0], why, sizeof why - 1);

        why[n > 0 ? n : 0] = 0;
        return n > 0 ? why : "(it said nothing)";
}

static void assert_exited_ok(pid_t pid, const char *who) {
        int status = reap(pid);

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: %s %d; %s", who,
                      WIFEXITED(status) ? "exit status" : "killed by signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), complaint());
}

static void assert_killed(pid_t pid, const char *who) {
        int status = reap(pid);

        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s was not killed: %s %d; %s", who,
                      WIFEXITED(status) ? "exit status" : "signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), complaint());
}

/* Read exactly len bytes within WAIT_MS; EOF means the writer ended first. */
static void read_exact(int fd, void *buf, size_t len, const char *what) {
        int64_t until = test_now_ms() + WAIT_MS;

        for (size_t got = 0; got < len;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int64_t left = until - test_now_ms();
                ssize_t n;

                ck_assert_msg(left > 0 && poll(&p, 1, (int) left) == 1, "no %s within %d ms", what, WAIT_MS);
                n = read(fd, (char *) buf + got, len - got);
                ck_assert_msg(n > 0, "no %s: the child ended first; %s", what, n == 0 ? complaint() : strerror(errno));
                got += (size_t) n;
        }
}

/* ---- messages ---- */

static unsigned char pattern_byte(char seed, size_t i) {
        return (unsigned char) ((unsigned char) seed * 131u + i * 7u + (i >> 9));
}

static void fill(void *buf, size_t len, char seed) {
        for (size_t i = 0; i < len; i++)
                ((unsigned char *) buf)[i] = pattern_byte(seed, i);
}

static bool is_pattern(const void *buf, size_t len, char seed) {
        for (size_t i = 0; i < len; i++)
                if (((const unsigned char *) buf)[i] != pattern_byte(seed, i))
                        return false;
        return true;
}

/* What a received message is, for assertion messages: "A", "B", ..., or "?" when it is none intact. */
static char which(const void *buf, ssize_t n) {
        for (char seed = 'A'; seed <= 'Z'; seed++)
                if (n > 0 && is_pattern(buf, (size_t) n, seed))
                        return seed;
        return '?';
}

/* Pages of their own (a trap is a protection change), filled with message `seed`. */
static char *map_message(size_t len, char seed) {
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        CHILD_CHECK(p != MAP_FAILED);
        fill(p, len, seed);
        return p;
}

static void child_send(shmb_channel *ch, size_t len, char seed) {
        char buf[SLOT_SIZE];

        fill(buf, len, seed);
        CHILD_EQ(shmb_send(ch, buf, len, WAIT_MS), 0);
}

/* A small message, sent with no timeout: the test bounds the wait by reaping. */
static void child_send_waiting(shmb_channel *ch, char seed) {
        char buf[SMALL_LEN];

        fill(buf, sizeof buf, seed);
        CHILD_EQ(shmb_send(ch, buf, sizeof buf, -1), 0);
}

/* ---- the trap ---- */

typedef enum TrapMode {
        TRAP_STALL,             /* sleep STALL_MS, then let the access go on */
        TRAP_HOLD,              /* wait for a byte on release_fd, then let it go on */
        TRAP_DIE,               /* SIGKILL ourselves, right at the access */
} TrapMode;

/* What the handler writes to report_fd when it is entered. */
typedef struct TrapReport {
        uint64_t offset;        /* of the fault, in the trapped range */
} TrapReport;

static struct {
        char *addr;
        size_t len;
        int restore;            /* the protection put back before the access goes on */
        TrapMode mode;
        int report_fd, release_fd;
        volatile sig_atomic_t hits;
} trap;

static void trap_handler(int sig, siginfo_t *si, void *context) {
        char *at = si->si_addr;
        int saved_errno = errno;
        TrapReport report;
        char c;

        if (trap.hits > 0 || at < trap.addr || at >= trap.addr + trap.len) {
                /* Not the trap: a real crash. Fault again, with the default action. */
                struct sigaction sa = { .sa_handler = SIG_DFL };

                (void) sigaction(SIGSEGV, &sa, NULL);
                return;
        }
        trap.hits = 1;
        report.offset = (uint64_t) (at - trap.addr);
        (void) write(trap.report_fd, &report, sizeof report);
        switch (trap.mode) {
        case TRAP_STALL: {
                struct timespec ts = { .tv_sec = STALL_MS / 1000, .tv_nsec = (STALL_MS % 1000) * 1000000L };

                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
                break;
        }
        case TRAP_HOLD:
                while (read(trap.release_fd, &c, 1) < 0 && errno == EINTR)
                        ;
                break;
        case TRAP_DIE:
                (void) syscall(SYS_kill, syscall(SYS_getpid), SIGKILL);
                for (;;)
                        pause();
        }
        if (mprotect(trap.addr, trap.len, trap.restore) < 0)
                child_exit(98);
        errno = saved_errno;
}

/* Make [addr, addr + len) (whole pages) fault for what prot does not allow, and handle the fault as mode says. */
static void trap_arm(void *addr, size_t len, int prot, int restore, TrapMode mode, int report_fd, int release_fd) {
        struct sigaction sa = { .sa_sigaction = trap_handler, .sa_flags = SA_SIGINFO };

        trap.addr = addr;
        trap.len = len;
        trap.restore = restore;
        trap.mode = mode;
        trap.report_fd = report_fd;
        trap.release_fd = release_fd;
        trap.hits = 0;
        CHILD_EQ(sigaction(SIGSEGV, &sa, NULL), 0);
        CHILD_EQ(mprotect(addr, len, prot), 0);
}

/* ---- the ring, as the test sees it ---- */

static shmb_channel *open_ok(void) {
        shmb_channel *ch = NULL;
        int r = shmb_open_channel(NULL, RING, SHMB_RW, &ch);

        ck_assert_msg(r == 0, "open %s: %s", RING, shmb_strerror(r));
        return ch;
}

static shmb_channel *child_open(void) {
        shmb_channel *ch = NULL;

        CHILD_EQ(shmb_open_channel(NULL, RING, SHMB_RW, &ch), 0);
        return ch;
}

static uint64_t load64(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* A sender claimed pos and did not publish it: the claim a receiver waits behind. Returns its token. */
static uint32_t assert_send_claimed(const RingHeader *h, uint64_t pos) {
        const RingSlot *s = ring_slot_at(h, pos);
        uint64_t owner = load64(&s->send_owner);

        ck_assert_msg(ring_owner_claims(owner, pos), "no sender claims position %" PRIu64 " (owner word %#" PRIx64 ")",
                      pos, owner);
        ck_assert_msg(load64(&s->seq) == pos, "position %" PRIu64 " is not unpublished: seq %" PRIu64, pos,
                      load64(&s->seq));
        return (uint32_t) owner;
}

/* A receiver claimed pos and did not free its slot: the claim a sender on a full ring waits behind. */
static uint32_t assert_recv_claimed(const RingHeader *h, uint64_t pos) {
        const RingSlot *s = ring_slot_at(h, pos);
        uint64_t owner = load64(&s->recv_owner);

        ck_assert_msg(ring_owner_claims(owner, pos), "no receiver claims position %" PRIu64 " (owner word %#" PRIx64 ")",
                      pos, owner);
        ck_assert_msg(load64(&s->seq) == pos + 1, "position %" PRIu64 " is not full: seq %" PRIu64, pos,
                      load64(&s->seq));
        return (uint32_t) owner;
}

static void assert_token_live(const RingHeader *h, uint32_t token, const char *whose) {
        ck_assert_msg(!ring_token_dead(h, token), "%s token %#" PRIx32 " is not live", whose, token);
}

/* The broker marks a token dead once it learns the opener's process exited: asynchronously, so wait for it. */
static void await_token_dead(const RingHeader *h, uint32_t token, const char *whose) {
        for (int64_t until = test_now_ms() + WAIT_MS; !ring_token_dead(h, token);) {
                ck_assert_msg(test_now_ms() < until, "%s token %#" PRIx32 " is still live after %d ms", whose, token,
                              WAIT_MS);
                usleep(1000);
        }
}

static void assert_recv_message(shmb_channel *ch, size_t len, char seed, int timeout_ms, const char *what) {
        static char buf[SLOT_SIZE];
        ssize_t n = shmb_recv(ch, buf, sizeof buf, timeout_ms);

        ck_assert_msg(n >= 0, "%s: shmb_recv: %s", what, shmb_strerror((int) n));
        ck_assert_msg((size_t) n == len && is_pattern(buf, len, seed),
                      "%s: got %zd bytes of message %c, not %zu of message %c", what, n, which(buf, n), len, seed);
}

static void send_small(shmb_channel *ch, char seed, int timeout_ms) {
        char buf[SMALL_LEN];

        fill(buf, sizeof buf, seed);
        ck_assert_int_eq(shmb_send(ch, buf, sizeof buf, timeout_ms), 0);
}

static void assert_ring_empty(shmb_channel *ch) {
        char buf[SLOT_SIZE];

        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
}

/* The ring goes on working across whatever was repaired, lap after lap. */
static void assert_round_trips(shmb_channel *ch) {
        for (uint32_t i = 0; i < 3 * SLOTS; i++) {
                uint32_t v = 0;

                ck_assert_int_eq(shmb_send(ch, &i, sizeof i, WAIT_MS), 0);
                ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, WAIT_MS), sizeof v);
                ck_assert_uint_eq(v, i);
        }
}

/* A child that sends one small message and ends. */
static pid_t spawn_sender(char seed) {
        pid_t pid = spawn();

        if (pid == 0) {
                shmb_channel *ch = child_open();

                child_send(ch, SMALL_LEN, seed);
                shmb_close(ch);
                child_exit(0);
        }
        return pid;
}

/* ---- fixture ---- */

static void setup(void) {
        test_setup();
        test_daemon_write_config(&td, channels);
        test_start_ok();
        setenv("SHMBROKER_SOCKET", td.socket, 1);
        ck_assert_int_eq(pipe2(complaints, O_CLOEXEC | O_NONBLOCK), 0);
        n_kids = 0;
}

static void teardown(void) {
        for (size_t i = 0; i < n_kids; i++) {
                (void) kill(kids[i], SIGKILL);
                (void) waitpid(kids[i], NULL, 0);
        }
        n_kids = 0;
        close(complaints[0]);
        close(complaints[1]);
        test_teardown();
        /* The daemon removed its ring when it stopped, and nothing of ours keeps it attached. */
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}

/* ---- a claimer in another PID namespace ---- */

/* A pid that names no process here (as a pid-based judge would ask: kill() says ESRCH), from the top. */
static pid_t unused_pid(void) {
        FILE *f = fopen("/proc/sys/kernel/pid_max", "re");
        int max = 0;

        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fscanf(f, "%d", &max), 1);
        fclose(f);
        for (pid_t pid = max - 1; pid > 300; pid--)
                if (kill(pid, 0) < 0 && errno == ESRCH)
                        return pid;
        ck_abort_msg("no free pid below %d", max);
        return -1;
}

/*
 * In a child of the test: a new PID namespace, and fn(fd) in a process
 * whose pid there is `want`. Its pid 1 makes it with clone3()'s set_tid
 * (fork_with_pid()): no /proc/sys/kernel/ns_last_pid, which a container
 * may mount read-only. Exits with fn's exit status; everything dies with
 * the test.
 */
static _Noreturn void in_new_pid_namespace(pid_t want, void (*fn)(int fd), int fd) {
        pid_t init;
        int status;

        CHILD_EQ(unshare(CLONE_NEWPID), 0);
        init = fork();
        CHILD_CHECK(init >= 0);
        if (init == 0) {
                pid_t pid;

                /* Our parent is outside the namespace: getppid() says 0 while it lives. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != 0)
                        child_exit(127);
                pid = fork_with_pid(want);
                if (pid == 0) {
                        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != 1)
                                child_exit(127);
                        fn(fd);
                        child_exit(0);
                }
                /* The errno of a clone3() that failed (EPERM without CAP_SYS_ADMIN), then its pid. */
                CHILD_EQ(pid < 0 ? errno : 0, 0);
                CHILD_EQ(pid, want);
                CHILD_EQ(waitpid(pid, &status, 0), pid);
                child_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        }
        CHILD_EQ(waitpid(init, &status, 0), init);
        child_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

/* Sends A, which stalls a second mid-copy (the copy's source faults), then B. */
static void slow_sender(int ev) {
        pid_t me = (pid_t) syscall(SYS_getpid);
        shmb_channel *ch = child_open();
        char *a = map_message(BIG_LEN, 'A');

        child_write(ev, &me, sizeof me);
        trap_arm(a, BIG_LEN, PROT_NONE, PROT_READ, TRAP_STALL, ev, -1);
        CHILD_EQ(shmb_send(ch, a, BIG_LEN, WAIT_MS), 0);
        CHILD_EQ(trap.hits, 1);
        child_send(ch, SMALL_LEN, 'B');
        shmb_close(ch);
}

/*
 * Promised: a live claimer is never skipped, however slow, in any PID
 * namespace. The sender's pid in its namespace names no process in ours,
 * so a pid-based receiver takes it for dead and skips its slot: it gets
 * B first, or A torn.
 */
/*
 * Run fn in a new PID namespace as pid `want` (which names nobody here),
 * and wait until it reports its pid and then its stall in a trap. Returns
 * the outer child; *ret_ev is the read end of fn's event pipe.
 */
static pid_t spawn_stalled_elsewhere(pid_t want, void (*fn)(int fd), int *ret_ev) {
        TrapReport report;
        pid_t outer, got = 0;
        int ev[2];

        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        outer = spawn();
        if (outer == 0) {
                close(ev[0]);
                in_new_pid_namespace(want, fn, ev[1]);
        }
        close(ev[1]);
        read_exact(ev[0], &got, sizeof got, "pid from the child in another PID namespace");
        ck_assert_int_eq(got, want);
        ck_assert_msg(kill(want, 0) < 0 && errno == ESRCH, "pid %d names a process here too", (int) want);
        read_exact(ev[0], &report, sizeof report, "word of its stall");
        *ret_ev = ev[0];
        return outer;
}

START_TEST(test_slow_sender_in_other_pid_namespace_is_not_skipped) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        pid_t want = unused_pid(), outer;
        int ev;
        int64_t t;

        outer = spawn_stalled_elsewhere(want, slow_sender, &ev);
        /* It claimed position 0, and is stuck mid-copy for a second. */
        assert_token_live(h, assert_send_claimed(h, 0), "the stalled sender's");
        t = test_now_ms();
        assert_recv_message(rx, BIG_LEN, 'A', WAIT_MS, "first message");
        ck_assert_msg(test_now_ms() - t >= STALLED_MS, "A arrived after %lld ms, before the sender's stall ended",
                      (long long) (test_now_ms() - t));
        assert_recv_message(rx, SMALL_LEN, 'B', WAIT_MS, "second message");
        assert_ring_empty(rx);
        /* Two messages, two positions: A's claim was not skipped (and A sent again). */
        ck_assert_msg(load64(&h->head) == 2 && load64(&h->tail) == 2,
                      "A and B took %" PRIu64 " positions: a live claim was skipped", load64(&h->head));
        assert_exited_ok(outer, "the sender in another PID namespace");
        close(ev);
        shmb_close(rx);
}
END_TEST

/* Receives A, into a buffer that stalls the copy a second, and checks it. */
static void slow_receiver(int ev) {
        pid_t me = (pid_t) syscall(SYS_getpid);
        shmb_channel *ch = child_open();
        char *in = map_message(SLOT_SIZE, 'x');

        child_write(ev, &me, sizeof me);
        trap_arm(in, SLOT_SIZE, PROT_NONE, PROT_READ | PROT_WRITE, TRAP_STALL, ev, -1);
        CHILD_EQ(shmb_recv(ch, in, SLOT_SIZE, WAIT_MS), BIG_LEN);
        CHILD_EQ(trap.hits, 1);
        CHILD_CHECK(is_pattern(in, BIG_LEN, 'A'));
        shmb_close(ch);
}

/*
 * The same for a receiver: a sender that waits on a full ring does not
 * free the slot a slow receiver in another PID namespace copies out of,
 * so that receiver gets its message whole, and the sender its room a
 * second later.
 */
START_TEST(test_slow_receiver_in_other_pid_namespace_keeps_its_slot) {
        shmb_channel *tx = open_ok();
        const RingHeader *h = shmb_channel_addr(tx);
        pid_t want = unused_pid(), outer;
        static char big[BIG_LEN];
        int ev;
        int64_t t;

        fill(big, BIG_LEN, 'A');
        ck_assert_int_eq(shmb_send(tx, big, BIG_LEN, 0), 0);
        for (int i = 1; i < SLOTS; i++)
                send_small(tx, 'C', 0);
        outer = spawn_stalled_elsewhere(want, slow_receiver, &ev);
        assert_token_live(h, assert_recv_claimed(h, 0), "the stalled receiver's");
        /* The ring is full; the only room comes when the slow receiver is done. */
        fill(big, BIG_LEN, 'D');
        t = test_now_ms();
        ck_assert_int_eq(shmb_send(tx, big, BIG_LEN, WAIT_MS), 0);
        ck_assert_msg(test_now_ms() - t >= STALLED_MS, "room came after %lld ms, before the receiver's stall ended",
                      (long long) (test_now_ms() - t));
        assert_exited_ok(outer, "the receiver in another PID namespace");
        for (int i = 1; i < SLOTS; i++)
                assert_recv_message(tx, SMALL_LEN, 'C', WAIT_MS, "a message behind A");
        assert_recv_message(tx, BIG_LEN, 'D', WAIT_MS, "the message sent on the full ring");
        assert_ring_empty(tx);
        /* Five messages, five positions: no claim was repaired. */
        ck_assert_msg(load64(&h->head) == SLOTS + 1 && load64(&h->tail) == SLOTS + 1,
                      "%d messages took %" PRIu64 " positions", SLOTS + 1, load64(&h->head));
        close(ev);
        shmb_close(tx);
}
END_TEST

/* ---- a dead claimer whose pid lives on ---- */

/* Sends A; the copy faults, and the sender dies right there, holding its claim. */
static _Noreturn void dying_sender(int ev) {
        shmb_channel *ch = child_open();
        char *a = map_message(BIG_LEN, 'A');

        trap_arm(a, BIG_LEN, PROT_NONE, PROT_READ, TRAP_DIE, ev, -1);
        (void) shmb_send(ch, a, BIG_LEN, WAIT_MS);
        child_fail(__LINE__, "a send that should have died returned", 0, 0, false);
}

/*
 * Run fn(ev) in a child that dies at its trap (TRAP_DIE); wait for its word
 * from the trap (into *ret_report unless NULL) and for its death. Returns
 * its pid, reaped, so it is free to be given out again.
 */
static pid_t spawn_to_die(void (*fn)(int ev), const char *who, TrapReport *ret_report) {
        TrapReport report;
        char what[80];
        pid_t pid;
        int ev[2];

        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        pid = spawn();
        if (pid == 0) {
                close(ev[0]);
                fn(ev[1]);
        }
        close(ev[1]);
        snprintf(what, sizeof what, "word of %s's fault", who);
        read_exact(ev[0], &report, sizeof report, what);
        assert_killed(pid, who);
        close(ev[0]);
        if (ret_report)
                *ret_report = report;
        return pid;
}

/* A process that only waits to be killed (when the test kills it, or when the test's process dies). */
static pid_t spawn_sleeper_with_pid(pid_t want) {
        pid_t parent = getpid(), pid;

        ck_assert_uint_lt(n_kids, ELEMENTS(kids));
        pid = fork_with_pid(want);
        ck_assert_msg(pid >= 0, "clone3 with pid %d: %s", (int) want, strerror(errno));
        if (pid == 0) {
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        child_exit(127);
                for (;;)
                        pause();
        }
        kids[n_kids++] = pid;
        return pid;
}

/*
 * Promised: a dead claimer is repaired even when its pid names a live process
 * now. A pid-based receiver asks kill(pid, 0), hears "alive", and waits
 * behind the dead claim forever.
 */
START_TEST(test_dead_sender_with_reused_pid_is_repaired) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        pid_t dead, twin;
        uint32_t token;

        dead = spawn_to_die(dying_sender, "the sender", NULL);
        token = assert_send_claimed(h, 0);
        /* A live process with the dead claimer's pid. */
        twin = spawn_sleeper_with_pid(dead);
        ck_assert_int_eq(twin, dead);
        ck_assert_int_eq(kill(dead, 0), 0);
        assert_exited_ok(spawn_sender('B'), "the second sender");
        assert_recv_message(rx, SMALL_LEN, 'B', REPAIR_MS, "the message behind the dead claim");
        ck_assert_msg(ring_token_dead(h, token), "the dead sender's token %#" PRIx32 " is live", token);
        assert_ring_empty(rx);
        assert_round_trips(rx);
        ck_assert_int_eq(kill(twin, SIGKILL), 0);
        assert_killed(twin, "the process with the dead sender's pid");
        shmb_close(rx);
}
END_TEST

/* ---- a claimer killed the moment after its claim ---- */

/*
 * Where a claimer that has just claimed writes next, as a trap: the claim
 * is the compare-and-swap of the slot's owner word, and the claimer's
 * next write is moving head (tail) on, in the ring's header, on the
 * segment's first page. With that page read-only, the claim (on the
 * slot's page) succeeds and the claimer faults at its next step.
 */
static void arm_after_claim_trap(RingHeader *h, int ev) {
        trap_arm(h, (size_t) sysconf(_SC_PAGESIZE), PROT_READ, PROT_READ | PROT_WRITE, TRAP_DIE, ev, -1);
}

/* The claimer died holding the claim of pos and nothing else: the owner word names it, head (tail) is where it was. */
static uint32_t assert_died_right_after_claim(const RingHeader *h, uint64_t pos, bool sender, const TrapReport *r) {
        uint64_t counter = load64(sender ? &h->head : &h->tail);
        uint32_t token = sender ? assert_send_claimed(h, pos) : assert_recv_claimed(h, pos);

        ck_assert_msg(counter == pos, "the %s died after moving %s on to %" PRIu64 " (its fault at header offset %" PRIu64
                      "): not right after its claim", sender ? "sender" : "receiver", sender ? "head" : "tail", counter,
                      r->offset);
        return token;
}

/*
 * Move an empty ring on, by round trips, to a position whose slot is not
 * on the header's page, so that the trap above stops nothing before the
 * claim. With 4 KiB pages that is position 0: the holder table puts every
 * slot past the first page.
 */
static uint64_t move_off_header_page(shmb_channel *ch) {
        const RingHeader *h = shmb_channel_addr(ch);
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        uint64_t pos = load64(&h->head);

        ck_assert_uint_eq(load64(&h->tail), pos);
        for (; (size_t) ((const char *) ring_slot_at(h, pos) - (const char *) h) < page; pos++) {
                uint64_t v = 0;

                ck_assert_int_eq(shmb_send(ch, &pos, sizeof pos, 0), 0);
                ck_assert_int_eq(shmb_recv(ch, &v, sizeof v, 0), sizeof v);
        }
        return pos;
}

static _Noreturn void claim_and_die(bool sender, int ev) {
        shmb_channel *ch = child_open();
        char buf[SMALL_LEN];

        fill(buf, sizeof buf, 'A');
        arm_after_claim_trap(shmb_channel_addr(ch), ev);
        if (sender)
                (void) shmb_send(ch, buf, sizeof buf, WAIT_MS);
        else
                (void) shmb_recv(ch, buf, sizeof buf, WAIT_MS);
        child_fail(__LINE__, "a call that should have died returned", 0, 0, false);
}

static _Noreturn void sender_dies_right_after_claim(int ev) {
        claim_and_die(true, ev);
}

static _Noreturn void receiver_dies_right_after_claim(int ev) {
        claim_and_die(false, ev);
}

/*
 * Promised: who claimed is known from the instant of the claim, so a sender
 * killed right after it, before head moved, is repaired: a live sender
 * gets past its slot, and the receiver gets that sender's message. The
 * kernel's objects stay as they were.
 */
START_TEST(test_sender_killed_right_after_claim_is_repaired) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        int shm = test_ipcs_count("-m"), sem = test_ipcs_count("-s");
        uint64_t pos = move_off_header_page(rx);
        TrapReport report;
        uint32_t token;

        (void) spawn_to_die(sender_dies_right_after_claim, "the sender", &report);
        token = assert_died_right_after_claim(h, pos, true, &report);
        assert_exited_ok(spawn_sender('B'), "the second sender");
        assert_recv_message(rx, SMALL_LEN, 'B', REPAIR_MS, "the message behind the dead claim");
        ck_assert(ring_token_dead(h, token));
        assert_ring_empty(rx);
        assert_round_trips(rx);
        ck_assert_int_eq(test_ipcs_count("-m"), shm);
        ck_assert_int_eq(test_ipcs_count("-s"), sem);
        shmb_close(rx);
}
END_TEST

/*
 * Promised: the same for a receiver killed right after its claim, before tail
 * moved: a sender waiting on the full ring gets its slot; the message the
 * receiver claimed died with it (proto/ring.h), and the rest arrive in
 * order.
 */
START_TEST(test_receiver_killed_right_after_claim_is_repaired) {
        shmb_channel *tx = open_ok();
        const RingHeader *h = shmb_channel_addr(tx);
        int shm = test_ipcs_count("-m"), sem = test_ipcs_count("-s");
        uint64_t pos = move_off_header_page(tx);
        char buf[SMALL_LEN];
        TrapReport report;
        uint32_t token;

        for (int i = 0; i < SLOTS; i++)
                send_small(tx, (char) ('C' + i), 0);
        fill(buf, sizeof buf, 'Z');
        ck_assert_int_eq(shmb_send(tx, buf, sizeof buf, 0), -EAGAIN);
        (void) spawn_to_die(receiver_dies_right_after_claim, "the receiver", &report);
        token = assert_died_right_after_claim(h, pos, false, &report);
        ck_assert_msg(shmb_send(tx, buf, sizeof buf, REPAIR_MS) == 0, "a send on the full ring did not get past the dead "
                      "receiver's claim within %d ms", REPAIR_MS);
        ck_assert(ring_token_dead(h, token));
        for (int i = 1; i < SLOTS; i++)
                assert_recv_message(tx, SMALL_LEN, (char) ('C' + i), WAIT_MS, "a message behind the dead claim");
        assert_recv_message(tx, SMALL_LEN, 'Z', WAIT_MS, "the message sent on the full ring");
        assert_ring_empty(tx);
        assert_round_trips(tx);
        ck_assert_int_eq(test_ipcs_count("-m"), shm);
        ck_assert_int_eq(test_ipcs_count("-s"), sem);
        shmb_close(tx);
}
END_TEST

/* ---- polling costs no system call ---- */

#if defined(__x86_64__)
#define STRICT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define STRICT_ARCH AUDIT_ARCH_AARCH64
#endif

/*
 * From here on only read, write, exit and sigreturn: any other system call
 * (or one of another arch's numbering) kills the process, with SIGSYS.
 * The rule of seccomp's strict mode, as a filter: strict mode cannot be
 * entered under a filter, which a container (systemd-nspawn) or a service
 * (SystemCallFilter=) may have put there already, and a filter stacks. No
 * core file of the kill (SIGSYS dumps core).
 */
static void enter_strict_filter(void) {
#ifdef STRICT_ARCH
        struct sock_filter code[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, STRICT_ARCH, 1, 0),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_read, 4, 0),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_write, 3, 0),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_exit, 2, 0),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rt_sigreturn, 1, 0),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = (unsigned short) ELEMENTS(code), .filter = code };

        CHILD_EQ(setrlimit(RLIMIT_CORE, &(struct rlimit) { 0, 0 }), 0);
        CHILD_EQ(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        CHILD_EQ(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0), 0);
        strict_filter = true;
#else
        child_fail(__LINE__, "an AUDIT_ARCH_ for this machine's seccomp filter", 0, 0, false);
#endif
}

/* The strict filter's kill. */
static void assert_judged(pid_t pid, const char *who) {
        int status = reap(pid);

        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS, "%s was not killed by seccomp: %s %d; %s", who,
                      WIFEXITED(status) ? "exit status" : "signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), complaint());
}

static void assert_no_syscall(pid_t pid, const char *what) {
        int status = reap(pid);

        ck_assert_msg(!WIFSIGNALED(status) || WTERMSIG(status) != SIGSYS,
                      "%s: the poller made a system call (seccomp killed it)", what);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: %s %d; %s", what,
                      WIFEXITED(status) ? "exit status" : "signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), complaint());
}

/* Empty, filled, full, drained: every call that does not wait, ROUNDS times. */
static void poll_rounds(shmb_channel *ch) {
        for (uint32_t round = 0; round < ROUNDS; round++) {
                uint32_t v = 0, got = 0;

                CHILD_EQ(shmb_recv(ch, &got, sizeof got, 0), -EAGAIN);
                for (uint32_t i = 0; i < SLOTS; i++) {
                        v = round * SLOTS + i;
                        CHILD_EQ(shmb_send(ch, &v, sizeof v, 0), 0);
                }
                CHILD_EQ(shmb_send(ch, &v, sizeof v, 0), -EAGAIN);
                for (uint32_t i = 0; i < SLOTS; i++) {
                        CHILD_EQ(shmb_recv(ch, &got, sizeof got, 0), sizeof got);
                        CHILD_EQ(got, round * SLOTS + i);
                }
        }
        CHILD_EQ(shmb_recv(ch, &(uint32_t) { 0 }, sizeof(uint32_t), 0), -EAGAIN);
}

static _Noreturn void strict_poller(void) {
        shmb_channel *ch = child_open();

        enter_strict_filter();
        poll_rounds(ch);
        strict_exit(0);
        child_exit(0);
}

/*
 * Promised: a call that does not wait makes no system call: not on an empty
 * ring, not on a full one, not to publish or free a slot when nobody
 * sleeps. Checked under the strict filter (seccomp strict mode's rule),
 * where any other system call than read, write, exit and sigreturn kills
 * the caller. (vDSO calls are no system calls here; no call made under
 * the filter has a timeout, so none reads the clock.)
 */
START_TEST(test_polls_of_an_idle_ring_make_no_syscall) {
        shmb_channel *peer;
        const RingHeader *h;
        pid_t pid;

        /* The judge: the strict filter is enforced here. */
        pid = spawn();
        if (pid == 0) {
                enter_strict_filter();
                (void) syscall(SYS_getppid);
                child_exit(0);
        }
        assert_judged(pid, "a child that made a system call under the strict filter");

        pid = spawn();
        if (pid == 0)
                strict_poller();
        assert_no_syscall(pid, "alone on the ring");

        /* With a peer in another process holding the ring, idle: nobody sleeps, so nobody is woken. */
        peer = open_ok();
        h = shmb_channel_addr(peer);
        pid = spawn();
        if (pid == 0)
                strict_poller();
        assert_no_syscall(pid, "beside an idle peer");
        ck_assert_uint_eq(__atomic_load_n(&h->recv_sleeping, __ATOMIC_SEQ_CST), 0);
        ck_assert_uint_eq(__atomic_load_n(&h->send_sleeping, __ATOMIC_SEQ_CST), 0);
        assert_ring_empty(peer);
        assert_round_trips(peer);
        shmb_close(peer);
}
END_TEST

/*
 * A live peer that the poller finds mid-copy, on command: 's' sends A (the
 * source faults), 'r' receives (the destination faults). Each holds in its
 * trap until a byte arrives on cmd, says 'd' on ev when its call returned,
 * and checks what it got.
 */
static _Noreturn void stuck_peer(int cmd, int ev) {
        shmb_channel *ch = child_open();
        char *a = map_message(BIG_LEN, 'A'), *in = map_message(SLOT_SIZE, 'x');
        char c;

        for (;;) {
                ssize_t n = read(cmd, &c, 1);

                if (n == 0)
                        break;
                CHILD_EQ(n, 1);
                if (c == 's') {
                        trap_arm(a, BIG_LEN, PROT_NONE, PROT_READ, TRAP_HOLD, ev, cmd);
                        CHILD_EQ(shmb_send(ch, a, BIG_LEN, WAIT_MS), 0);
                } else {
                        uint32_t v;

                        trap_arm(in, SLOT_SIZE, PROT_NONE, PROT_READ | PROT_WRITE, TRAP_HOLD, ev, cmd);
                        CHILD_EQ(shmb_recv(ch, in, SLOT_SIZE, WAIT_MS), sizeof v);
                        memcpy(&v, in, sizeof v);
                        CHILD_EQ(v, 100);
                }
                CHILD_EQ(trap.hits, 1);
                child_write(ev, "d", 1);
        }
        shmb_close(ch);
        child_exit(0);
}

static _Noreturn void strict_poller_behind_live_claims(int cmd, int ev) {
        static char buf[SLOT_SIZE];
        shmb_channel *ch = child_open();
        TrapReport report;
        uint32_t v = 0;
        char c;

        /* Once through each call before: what a first call may set up is the idle case's business. */
        CHILD_EQ(shmb_send(ch, &v, sizeof v, 0), 0);
        CHILD_EQ(shmb_recv(ch, buf, sizeof buf, 0), sizeof v);
        enter_strict_filter();

        /* A live sender mid-copy: every receive finds its claim, and asks whether it lives. */
        child_write(cmd, "s", 1);
        child_read(ev, &report, sizeof report);
        for (int i = 0; i < ROUNDS; i++)
                CHILD_EQ(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        child_write(cmd, "g", 1);
        child_read(ev, &c, 1);
        CHILD_EQ(c, 'd');
        CHILD_EQ(shmb_recv(ch, buf, sizeof buf, 0), BIG_LEN);
        CHILD_CHECK(is_pattern(buf, BIG_LEN, 'A'));

        /* A live receiver mid-copy of the oldest message of a full ring: every send finds its claim. */
        for (v = 100; v < 100 + SLOTS; v++)
                CHILD_EQ(shmb_send(ch, &v, sizeof v, 0), 0);
        child_write(cmd, "r", 1);
        child_read(ev, &report, sizeof report);
        for (int i = 0; i < ROUNDS; i++)
                CHILD_EQ(shmb_send(ch, &v, sizeof v, 0), -EAGAIN);
        child_write(cmd, "g", 1);
        child_read(ev, &c, 1);
        CHILD_EQ(c, 'd');
        CHILD_EQ(shmb_send(ch, &v, sizeof v, 0), 0);
        for (uint32_t want = 101; want <= 100 + SLOTS; want++) {
                CHILD_EQ(shmb_recv(ch, &v, sizeof v, 0), sizeof v);
                CHILD_EQ(v, want);
        }
        CHILD_EQ(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        strict_exit(0);
        child_exit(0);
}

/*
 * Promised: asking whether a claimer lives costs no system call: the holder
 * table is memory. A pid-based poll asks kill(pid, 0) every time it finds
 * a claim mid-message.
 */
START_TEST(test_polls_behind_a_live_claim_make_no_syscall) {
        int cmd[2], ev[2];
        pid_t peer, poller;

        ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        peer = spawn();
        if (peer == 0) {
                close(cmd[1]);
                close(ev[0]);
                stuck_peer(cmd[0], ev[1]);
        }
        poller = spawn();
        if (poller == 0) {
                close(cmd[0]);
                close(ev[1]);
                strict_poller_behind_live_claims(cmd[1], ev[0]);
        }
        close(cmd[0]);
        close(ev[1]);
        close(ev[0]);
        /* The poller holds the only write end: its exit ends the peer. */
        close(cmd[1]);
        assert_no_syscall(poller, "polling behind live claims");
        assert_exited_ok(peer, "the peer that was stuck mid-copy");
}
END_TEST

/* ---- a receiver asleep behind a claim that dies ---- */

/* Blocked in FUTEX_WAIT, as /proc/PID/syscall shows (the number first). */
static bool asleep_in_futex(pid_t pid) {
        char path[64], buf[256] = "";
        FILE *f;

        snprintf(path, sizeof path, "/proc/%d/syscall", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return false;
        if (!fgets(buf, sizeof buf, f))
                buf[0] = 0;
        fclose(f);
        return strtol(buf, NULL, 10) == SYS_futex;
}

/* The waiter pid is asleep in FUTEX_WAIT with its side's flag (recv_sleeping, send_sleeping) up. */
static void await_asleep(pid_t pid, const uint32_t *flag, const char *who) {
        for (int64_t until = test_now_ms() + WAIT_MS;
             !(__atomic_load_n(flag, __ATOMIC_SEQ_CST) && asleep_in_futex(pid));) {
                ck_assert_msg(test_now_ms() < until, "%s did not fall asleep within %d ms", who, WAIT_MS);
                usleep(1000);
        }
}

/*
 * A receiver already asleep (no timeout) when senders claim every slot and
 * die, one by one. No sender that comes later can publish (each slot still
 * waits for its dead claim to be skipped), and only a receiver skips one:
 * unless the broker wakes the sleeper when it marks a claimer dead, both
 * sides sleep for ever. Woken, it skips each dead claim and sleeps again,
 * without a message, until B comes.
 */
START_TEST(test_sleeping_receiver_skips_claims_that_died_meanwhile) {
        shmb_channel *watch = open_ok();
        const RingHeader *h = shmb_channel_addr(watch);
        pid_t rx;

        rx = spawn();
        if (rx == 0) {
                shmb_channel *ch = child_open();
                static char buf[SLOT_SIZE];

                CHILD_EQ(shmb_recv(ch, buf, sizeof buf, -1), SMALL_LEN);
                CHILD_CHECK(is_pattern(buf, SMALL_LEN, 'B'));
                shmb_close(ch);
                child_exit(0);
        }
        await_asleep(rx, &h->recv_sleeping, "the receiver");
        for (int i = 0; i < SLOTS; i++)
                (void) spawn_to_die(dying_sender, "a sender", NULL);
        for (int64_t until = test_now_ms() + WAIT_MS; load64(&h->tail) != SLOTS;) {
                ck_assert_msg(test_now_ms() < until, "the sleeping receiver got past %" PRIu64 " of %d dead claims in "
                              "%d ms", load64(&h->tail), SLOTS, WAIT_MS);
                usleep(1000);
        }
        await_asleep(rx, &h->recv_sleeping, "the receiver, past the dead claims,");
        assert_exited_ok(spawn_sender('B'), "the sender after the dead ones");
        assert_exited_ok(rx, "the receiver that slept");
        assert_ring_empty(watch);
        assert_round_trips(watch);
        shmb_close(watch);
}
END_TEST

/* Fill the ring with C, D, ...; a child then sends Z with no timeout: returned once it sleeps on the full ring. */
static pid_t spawn_sleeping_sender(shmb_channel *rx, const RingHeader *h) {
        pid_t tx;

        for (int i = 0; i < SLOTS; i++)
                send_small(rx, (char) ('C' + i), 0);
        tx = spawn();
        if (tx == 0) {
                shmb_channel *ch = child_open();

                child_send_waiting(ch, 'Z');
                shmb_close(ch);
                child_exit(0);
        }
        await_asleep(tx, &h->send_sleeping, "the sender");
        return tx;
}

/* Takes the next message in place, and is killed before it gives the slot back. */
static _Noreturn void peek_and_die(int ev) {
        shmb_channel *ch = child_open();
        TrapReport report = {};
        const void *msg;

        CHILD_EQ(shmb_recv_peek(ch, &msg, WAIT_MS), SMALL_LEN);
        child_write(ev, &report, sizeof report);
        (void) raise(SIGKILL);
        child_exit(1);
}

/*
 * The mirror: a sender asleep on the full ring (no timeout) when receivers
 * take every message in place and are killed holding them. Nothing is left
 * to receive, so no receiver frees a slot or wakes it; the broker, marking
 * them dead, must. It frees the slot and sends Z, which nobody else took.
 */
START_TEST(test_sleeping_sender_gets_past_receivers_that_died_meanwhile) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        pid_t tx;

        tx = spawn_sleeping_sender(rx, h);
        for (int i = 0; i < SLOTS; i++)
                (void) spawn_to_die(peek_and_die, "a receiver", NULL);
        assert_exited_ok(tx, "the sender that slept on the full ring");
        assert_recv_message(rx, SMALL_LEN, 'Z', WAIT_MS, "the message of the sender that slept");
        assert_ring_empty(rx);
        assert_round_trips(rx);
        shmb_close(rx);
}
END_TEST

/*
 * The broker marks a holder dead, then wakes the sleepers: a broker killed
 * between the two (here at its FUTEX_WAKE) left the sender of the test
 * above asleep, and its successor, which takes the ring over, finds the
 * entry dead already and never marks it again. It must wake the sleepers
 * of every ring it takes over.
 */
START_TEST(test_broker_killed_before_its_wake_up_is_made_good) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        int status, ev[2], go[2];
        pid_t tx, peeker;
        char c = 'g';

        tx = spawn_sleeping_sender(rx, h);
        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        peeker = spawn();
        if (peeker == 0) {
                close(ev[0]);
                close(go[1]);
                /* Not before the broker is traced: its open and its death must be answered stop by stop. */
                child_read(go[0], &c, 1);
                peek_and_die(ev[1]);
        }
        close(ev[1]);
        close(go[0]);
        test_daemon_trace(&td);
        ck_assert_int_eq(write(go[1], &c, 1), 1);
        close(go[1]);
        for (;;) {
                struct __ptrace_syscall_info info;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the broker ended by itself");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_futex &&
                    (info.entry.args[1] & FUTEX_CMD_MASK) == FUTEX_WAKE)
                        break;
        }
        ck_assert_int_eq(kill(td.pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(td.pid, &status, __WALL), td.pid);
        td.pid = -1;
        assert_killed(peeker, "the receiver that took C in place");
        close(ev[0]);
        /* Killed after the mark, before the wake-up: the claim's holder is dead, and its sleeper still asleep. */
        ck_assert(ring_token_dead(h, assert_recv_claimed(h, 0)));
        ck_assert_msg(asleep_in_futex(tx), "the sender is not asleep: the test stopped the wrong wake-up");
        test_start_ok();
        assert_exited_ok(tx, "the sender that slept through the broker's crash");
        for (int i = 1; i < SLOTS; i++)
                assert_recv_message(rx, SMALL_LEN, (char) ('C' + i), WAIT_MS, "a message behind the dead claim");
        assert_recv_message(rx, SMALL_LEN, 'Z', WAIT_MS, "the message of the sender that slept");
        assert_ring_empty(rx);
        shmb_close(rx);
}
END_TEST

/* ---- where a hold and its process end apart ---- */

/* Opens the ring, forks a child that outlives it holding its connection, and dies mid-send. */
static _Noreturn void dying_sender_with_heir(int ev, int life) {
        shmb_channel *ch = child_open();
        char *a = map_message(BIG_LEN, 'A');
        pid_t heir = fork(), me = getpid();
        char c;

        CHILD_CHECK(heir >= 0);
        if (heir == 0) {
                /* A worker, as a pre-forking server has: it lives on after its parent, until the test ends. */
                close(ev);
                while (read(life, &c, 1) < 0 && errno == EINTR)
                        ;
                _exit(0);
        }
        child_write(ev, &heir, sizeof heir);
        child_write(ev, &me, sizeof me);
        trap_arm(a, BIG_LEN, PROT_NONE, PROT_READ, TRAP_DIE, ev, -1);
        (void) shmb_send(ch, a, BIG_LEN, WAIT_MS);
        child_fail(__LINE__, "a send that should have died returned", 0, 0, false);
}

/*
 * A sender that dies mid-claim is dead even when a child it forked (without
 * exec) lives on, and with it a copy of the connection's socket: no EOF
 * reaches the broker. A pid-based judge saw the claimer's death; the
 * holder table must too, or the ring stops at that slot for as long as
 * the child lives.
 */
START_TEST(test_dead_sender_whose_fork_lives_on_is_repaired) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        TrapReport report;
        pid_t dead, heir, got;
        int ev[2], life[2];

        /* The heir is reparented to us when its parent dies, so the test reaps it. */
        ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(life, O_CLOEXEC), 0);
        dead = spawn();
        if (dead == 0) {
                close(ev[0]);
                close(life[1]);
                dying_sender_with_heir(ev[1], life[0]);
        }
        close(ev[1]);
        close(life[0]);
        read_exact(ev[0], &heir, sizeof heir, "the heir's pid");
        read_exact(ev[0], &got, sizeof got, "the sender's pid");
        ck_assert_int_eq(got, dead);
        read_exact(ev[0], &report, sizeof report, "word of the sender's fault");
        assert_killed(dead, "the sender");
        ck_assert_int_eq(kill(heir, 0), 0);
        assert_send_claimed(h, 0);
        assert_exited_ok(spawn_sender('B'), "the second sender");
        assert_recv_message(rx, SMALL_LEN, 'B', REPAIR_MS, "the message behind the dead claim");
        assert_ring_empty(rx);
        /* The heir ends with the pipe. */
        close(life[1]);
        ck_assert_int_eq(waitpid(heir, NULL, 0), heir);
        close(ev[0]);
        shmb_close(rx);
}
END_TEST

/* ---- holder entries handed out again ---- */

/*
 * Holder entries are handed out again once the table has no FREE one
 * left, under a new generation: a dead claimer's claim stays dead when
 * its entry is LIVE again for somebody else.
 */
START_TEST(test_dead_claim_stays_dead_when_its_entry_is_reused) {
        shmb_channel *rx = open_ok(), *refused = NULL;
        const RingHeader *h = shmb_channel_addr(rx);
        int ev[2], hold[2], go[2];
        pid_t filler, heir;
        uint32_t token, index;
        uint64_t word;
        char c;

        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(hold, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        /* All entries but two LIVE: ours, and RING_HOLDERS - 2 opens of one child. */
        filler = spawn();
        if (filler == 0) {
                close(hold[1]);
                for (int i = 0; i < RING_HOLDERS - 2; i++)
                        (void) child_open();
                child_write(ev[1], "o", 1);
                (void) read(hold[0], &c, 1);
                child_exit(0);
        }
        close(hold[0]);
        read_exact(ev[0], &c, 1, "word that the holder table is nearly full");
        /* The last FREE entry: a sender that claims position 0 and dies. */
        (void) spawn_to_die(dying_sender, "the sender", NULL);
        token = assert_send_claimed(h, 0);
        await_token_dead(h, token, "the dead sender's");
        /* The next opener can only get the dead sender's entry; it keeps it until the end. */
        heir = spawn();
        if (heir == 0) {
                shmb_channel *ch = child_open();

                close(go[1]);
                child_write(ev[1], "o", 1);
                child_read(go[0], &c, 1);
                child_send(ch, SMALL_LEN, 'B');
                child_write(ev[1], "s", 1);
                child_read(go[0], &c, 1);
                shmb_close(ch);
                child_exit(0);
        }
        close(go[0]);
        read_exact(ev[0], &c, 1, "word that the heir opened");
        index = ring_token_index(token);
        word = load64(&ring_holder_at(h, index)->word);
        ck_assert_msg((uint32_t) word == RING_HOLDER_LIVE &&
                      (((uint32_t) (word >> 32) - (token >> RING_TOKEN_INDEX_BITS)) & RING_TOKEN_GEN_MASK) == 1,
                      "the dead sender's entry %" PRIu32 " was not handed out again under the next generation: word %#"
                      PRIx64, index, word);
        ck_assert_int_eq(shmb_open_channel(NULL, RING, SHMB_RW, &refused), -EUSERS);
        /* The heir sends past the dead claim; the receiver must see that claim as dead still. */
        ck_assert_int_eq(write(go[1], "g", 1), 1);
        read_exact(ev[0], &c, 1, "word that the heir sent");
        assert_recv_message(rx, SMALL_LEN, 'B', REPAIR_MS, "the message behind the dead claim");
        ck_assert(ring_token_dead(h, token));
        ck_assert_uint_eq(load64(&ring_holder_at(h, index)->word), word);       /* the heir still holds it */
        assert_ring_empty(rx);
        ck_assert_int_eq(write(go[1], "q", 1), 1);
        assert_exited_ok(heir, "the sender that got the dead sender's entry");
        close(hold[1]);
        assert_exited_ok(filler, "the child holding the other entries");
        close(go[1]);
        close(ev[0]);
        close(ev[1]);
        shmb_close(rx);
}
END_TEST

/* ---- a live claimer whose connection ends ---- */

/*
 * A sender whose hold ends while it is mid-copy. Here another thread
 * calls shmb_disconnect() (which the manual forbids while the
 * connection's ring handles send; the send here began before); without
 * misuse the broker ends a connection so when it closes a busy one for
 * its uid's buffers (ENOBUFS). Its process lives on, and so does its
 * token: a receiver must not tombstone its slot under it.
 */
typedef struct Disowned {
        shmb_channel *ch;
        char *a;
        int result;
} Disowned;

static void *disowned_send(void *userdata) {
        Disowned *d = userdata;

        d->result = shmb_send(d->ch, d->a, BIG_LEN, WAIT_MS);
        return NULL;
}

/*
 * Sends A in a thread, held mid-copy until a byte arrives on release; on
 * 'x' on cmd disconnects and says 'x' on ev; then says its send's result
 * (an int) on ev.
 */
static _Noreturn void disowned_sender(int cmd, int release, int ev) {
        shmb_client *client;
        Disowned d = {};
        pthread_t thread;
        char c;

        CHILD_EQ(shmb_connect(NULL, &client), 0);
        CHILD_EQ(shmb_open(client, RING, SHMB_RW, &d.ch), 0);
        d.a = map_message(BIG_LEN, 'A');
        trap_arm(d.a, BIG_LEN, PROT_NONE, PROT_READ, TRAP_HOLD, ev, release);
        CHILD_EQ(pthread_create(&thread, NULL, disowned_send, &d), 0);
        child_read(cmd, &c, 1);
        CHILD_EQ(c, 'x');
        shmb_disconnect(client);
        child_write(ev, "x", 1);
        CHILD_EQ(pthread_join(thread, NULL), 0);
        CHILD_EQ(trap.hits, 1);
        child_write(ev, &d.result, sizeof d.result);
        shmb_close(d.ch);
        child_exit(0);
}

typedef struct DisownedSender {
        pid_t pid;
        int cmd, release, ev;
        uint32_t token;
} DisownedSender;

/* Whether the broker lists a hold of pid on the ring (status' clients). */
static bool broker_lists_hold(pid_t pid) {
        int fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\":\"status\",\"channel\":\"" RING "\"}"), *client;
        bool found = false;
        size_t i;

        test_assert_ok(resp);
        json_array_foreach(json_object_get(test_must_find(resp, RING), "clients"), i, client)
                if (test_jint(client, "pid") == pid)
                        found = true;
        json_decref(resp);
        close(fd);
        return found;
}

/* The broker has handled the end of pid's connection: its hold is gone. */
static void await_hold_gone(pid_t pid) {
        for (int64_t until = test_now_ms() + WAIT_MS; broker_lists_hold(pid);) {
                ck_assert_msg(test_now_ms() < until, "pid %d still holds the ring %d ms after its disconnect",
                              (int) pid, WAIT_MS);
                usleep(1000);
        }
}

/*
 * Start a disowned sender: stuck mid-copy of A at position 0, its
 * connection ended (the broker has seen it), its token live, as its
 * process is.
 */
static void disown_sender(const RingHeader *h, DisownedSender *ret) {
        int cmd[2], release[2], ev[2];
        TrapReport report;
        char c;

        ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(release, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(ev, O_CLOEXEC), 0);
        ret->pid = spawn();
        if (ret->pid == 0) {
                close(cmd[1]);
                close(release[1]);
                close(ev[0]);
                disowned_sender(cmd[0], release[0], ev[1]);
        }
        close(cmd[0]);
        close(release[0]);
        close(ev[1]);
        ret->cmd = cmd[1];
        ret->release = release[1];
        ret->ev = ev[0];
        read_exact(ret->ev, &report, sizeof report, "word of the sender's stall");
        ret->token = assert_send_claimed(h, 0);
        assert_token_live(h, ret->token, "the stalled sender's");
        ck_assert_int_eq(write(ret->cmd, "x", 1), 1);
        read_exact(ret->ev, &c, 1, "word of the disconnect");
        await_hold_gone(ret->pid);
        assert_token_live(h, ret->token, "the disowned sender's");
        assert_send_claimed(h, 0);
}

/*
 * Take a live claimer for dead, as the broker still does where it cannot
 * watch the claimer's process (no pidfd: a connection's end is all it
 * learns), or where a restarted broker misjudges a holder of the run it
 * took over: the test writes the holder table in the broker's stead.
 */
static void take_for_dead(const RingHeader *h, uint32_t token) {
        uint32_t index = ring_token_index(token);
        RingHolder *e = ring_holder_at(h, index);
        uint64_t word = load64(&e->word);

        ck_assert_uint_eq((uint32_t) word, RING_HOLDER_LIVE);
        __atomic_store_n(&e->word, (word & ~UINT64_C(0xffffffff)) | RING_HOLDER_DEAD, __ATOMIC_RELEASE);
        ck_assert(ring_token_dead(h, token));
}

/*
 * Let the disowned sender's copy go on, and wait until it is done with
 * it: its send returned, or it sleeps for room (nobody else waits to send).
 */
static void let_go(const DisownedSender *s, const RingHeader *h) {
        ck_assert_int_eq(write(s->release, "g", 1), 1);
        for (int64_t until = test_now_ms() + WAIT_MS;;) {
                struct pollfd p = { .fd = s->ev, .events = POLLIN };

                if (poll(&p, 1, 0) == 1 || __atomic_load_n(&h->send_sleeping, __ATOMIC_SEQ_CST))
                        return;
                ck_assert_msg(test_now_ms() < until, "the disowned sender neither returned nor waited within %d ms",
                              WAIT_MS);
                usleep(1000);
        }
}

/* Its send's result, once it returned; it has ended then. */
static int disowned_result(DisownedSender *s) {
        int result;

        read_exact(s->ev, &result, sizeof result, "the disowned send's result");
        assert_exited_ok(s->pid, "the disowned sender");
        close(s->cmd);
        close(s->release);
        close(s->ev);
        return result;
}

/* Either the send said it failed, and A never arrives, or A arrives once, whole. */
static void assert_sent_once_or_not_at_all(shmb_channel *rx, int result) {
        static char buf[SLOT_SIZE];
        ssize_t n = shmb_recv(rx, buf, sizeof buf, result == 0 ? WAIT_MS : 0);

        if (result == 0)
                ck_assert_msg(n == BIG_LEN && is_pattern(buf, BIG_LEN, 'A'),
                              "the send succeeded, but the receiver got %zd bytes of message %c", n, which(buf, n));
        else
                ck_assert_msg(n == -EAGAIN, "the send failed (%s), but the receiver got %zd bytes of message %c",
                              shmb_strerror(result), n, which(buf, n));
        assert_ring_empty(rx);
}

/* Tombstone the dead claim of position 0: a receive that does not wait finds it dead and skips it. */
static void tombstone_position_0(shmb_channel *rx, const RingHeader *h) {
        static char buf[SLOT_SIZE];

        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_msg(load64(&ring_slot_at(h, 0)->seq) == SLOTS && load64(&h->tail) == 1,
                      "the dead claim of position 0 was not skipped: seq %" PRIu64 ", tail %" PRIu64,
                      load64(&ring_slot_at(h, 0)->seq), load64(&h->tail));
}

/* A receive that does not wait finds the live claim of position 0 and leaves it alone. */
static void assert_position_0_kept(shmb_channel *rx, const RingHeader *h, uint32_t token) {
        static char buf[SLOT_SIZE];

        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        ck_assert_msg(load64(&ring_slot_at(h, 0)->seq) == 0 && load64(&h->tail) == 0,
                      "the live claim of position 0 was skipped: seq %" PRIu64 ", tail %" PRIu64,
                      load64(&ring_slot_at(h, 0)->seq), load64(&h->tail));
        ck_assert_uint_eq(assert_send_claimed(h, 0), token);
}

/*
 * Promised: publish is a compare-and-swap, so a claimer whose slot was given
 * away starts over (or, its token dead, gives up): its message arrives
 * once, whole, or not at all. A connection's end alone no longer makes
 * the broker take a claimer for dead (the next test); where it still
 * would (take_for_dead()), the test does it in the broker's stead.
 */
START_TEST(test_claim_taken_for_dead_starts_over) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        DisownedSender s;

        disown_sender(h, &s);
        take_for_dead(h, s.token);
        tombstone_position_0(rx, h);
        let_go(&s, h);
        assert_sent_once_or_not_at_all(rx, disowned_result(&s));
        assert_round_trips(rx);
        shmb_close(rx);
}
END_TEST

/*
 * "A receiver sees all of a message or nothing", also when a claimer's
 * connection ends while it copies: were it taken for dead, its slot could
 * hold a later message, published by a live sender, by the time the late
 * copy overwrote it. Its process lives, so its claim does: the later
 * message waits for the slot instead, and both arrive whole, in order.
 * Once the process exits, its token is dead.
 */
START_TEST(test_claim_taken_for_dead_spoils_no_later_message) {
        shmb_channel *rx = open_ok();
        const RingHeader *h = shmb_channel_addr(rx);
        DisownedSender s;
        pid_t sender;

        disown_sender(h, &s);
        assert_position_0_kept(rx, h, s.token);
        /* Positions 1 to 4, C to F: F's is slot 0, where the disowned sender still copies. */
        sender = spawn();
        if (sender == 0) {
                shmb_channel *ch = child_open();

                for (int i = 0; i < SLOTS; i++)
                        child_send(ch, SMALL_LEN, (char) ('C' + i));
                shmb_close(ch);
                child_exit(0);
        }
        /* C to E are published; F waits behind the live claim, wherever the sender's loop is. */
        for (int64_t until = test_now_ms() + WAIT_MS; load64(&ring_slot_at(h, SLOTS - 1)->seq) != SLOTS;) {
                ck_assert_msg(test_now_ms() < until, "E was not published within %d ms", WAIT_MS);
                usleep(1000);
        }
        usleep(200 * 1000);
        ck_assert_uint_eq(assert_send_claimed(h, 0), s.token);
        ck_assert_uint_eq(load64(&h->tail), 0);
        ck_assert_int_eq(kill(sender, 0), 0);
        /* The copy goes on, and is published where it was claimed. */
        ck_assert_int_eq(write(s.release, "g", 1), 1);
        ck_assert_int_eq(disowned_result(&s), 0);
        assert_recv_message(rx, BIG_LEN, 'A', WAIT_MS, "the message of the sender whose connection ended");
        for (int i = 0; i < SLOTS; i++)
                assert_recv_message(rx, SMALL_LEN, (char) ('C' + i), WAIT_MS, "a message sent after it");
        assert_exited_ok(sender, "the sender of C to F");
        await_token_dead(h, s.token, "the exited disowned sender's");
        assert_ring_empty(rx);
        assert_round_trips(rx);
        shmb_close(rx);
}
END_TEST

/*
 * libshmbroker(3), BROKER RESTARTS, "Objects removed while the broker is
 * away": a call that sleeps in a ring asks the kernel at least once a
 * second whether its objects are still there, and answers -EIDRM once they
 * are gone. A program that waits "for ever" in slices of a second or less
 * (as the Python binding's recv(timeout=None) does, in slices of 1 s) must
 * learn it too, not time out slice after slice for ever. A sleep was cut
 * short to ask only when the caller's own deadline was more than a second
 * away, so such a program waited for ever.
 */
/*
 * n handles on the ring, full when full (a sender then waits for room),
 * then the broker SIGKILLed and its ring's objects removed, as an
 * administrator's ipcrm would: nobody marks the ring removed.
 */
static void orphan_ring(bool full, shmb_channel **ch, size_t n) {
        static char buf[SMALL_LEN];
        int k = 0;

        for (size_t i = 0; i < n; i++)
                ch[i] = open_ok();
        while (full && shmb_send(ch[0], buf, sizeof buf, 0) == 0)
                k++;
        ck_assert_int_eq(k, full ? SLOTS : 0);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(ch[0]), IPC_RMID, NULL), 0);
        ck_assert_int_eq(semctl(shmb_channel_sem_id(ch[0]), 0, IPC_RMID), 0);
}

static void sliced_waits_see_objects_removed(bool send) {
        static const int slices_ms[] = { 1000, 300 };
        shmb_channel *ch[2];
        static char buf[SLOT_SIZE];
        ssize_t r;

        orphan_ring(send, ch, 2);
        for (size_t k = 0; k < ELEMENTS(slices_ms); k++) {
                int rounds = 0;

                /* Ten times the poll: plenty of chances to ask the kernel. */
                do
                        r = send ? shmb_send(ch[k], buf, SMALL_LEN, slices_ms[k])
                                 : shmb_recv(ch[k], buf, sizeof buf, slices_ms[k]);
                while (r == -ETIMEDOUT && ++rounds * slices_ms[k] < 10000);
                ck_assert_msg(r == -EIDRM, "%s waits of %d ms on a ring whose objects are gone: %zd (%s) after %d rounds",
                              send ? "send" : "receive", slices_ms[k], r, shmb_strerror((int) r), rounds);
        }
        shmb_close(ch[1]);
        shmb_close(ch[0]);
}

START_TEST(test_sliced_receives_see_objects_removed_while_the_broker_is_away) {
        sliced_waits_see_objects_removed(false);
}
END_TEST

START_TEST(test_sliced_sends_see_objects_removed_while_the_broker_is_away) {
        sliced_waits_see_objects_removed(true);
}
END_TEST

/*
 * The same for a caller whose waits signals interrupt: libshmbroker(3)
 * promises that a call that sleeps asks the kernel at least once a second,
 * and NOTES that a signal ends a ring wait with -EINTR, to be called again.
 * A program with a periodic signal (a timer, SIGCHLD, a profiler; the
 * Python binding resumes every wait a handler interrupted, as PEP 475 has
 * it) has each of its waits cut short before the poll runs out, so the
 * gone check never ran and it got -EINTR for ever. A child signals us
 * every 100 ms; a receive and a send without timeout, called again after
 * each -EINTR, end with -EIDRM.
 */
static void interrupted_waits_see_objects_removed(bool send) {
        shmb_channel *ch;
        static char buf[SLOT_SIZE];
        TestTicker ticker;
        int64_t until;
        int rounds = 0;
        ssize_t r;

        orphan_ring(send, &ch, 1);
        ticker = test_ticker_start(100);
        /* Ten times the poll: plenty of chances to ask the kernel. */
        until = test_now_ms() + WAIT_MS;
        do {
                r = send ? shmb_send(ch, buf, SMALL_LEN, -1) : shmb_recv(ch, buf, sizeof buf, -1);
                rounds++;
        } while (r == -EINTR && test_now_ms() < until);
        test_ticker_stop(&ticker);
        ck_assert_msg(r == -EIDRM, "%s waits that signals interrupt, on a ring whose objects are gone: %zd (%s) "
                      "after %d calls in %d ms", send ? "send" : "receive", r, shmb_strerror((int) r), rounds, WAIT_MS);
        shmb_close(ch);
}

START_TEST(test_interrupted_receives_see_objects_removed_while_the_broker_is_away) {
        interrupted_waits_see_objects_removed(false);
}
END_TEST

START_TEST(test_interrupted_sends_see_objects_removed_while_the_broker_is_away) {
        interrupted_waits_see_objects_removed(true);
}
END_TEST

int main(void) {
        /* Check's tests are pointer variables, not constants: the table lives here. */
        const TestGroup groups[] = {
                { "pid-namespaces", CASE_TIMEOUT, { test_slow_sender_in_other_pid_namespace_is_not_skipped,
                                    test_slow_receiver_in_other_pid_namespace_keeps_its_slot } },
                { "pid-reuse", CASE_TIMEOUT, { test_dead_sender_with_reused_pid_is_repaired } },
                { "claim", CASE_TIMEOUT, { test_sender_killed_right_after_claim_is_repaired,
                           test_receiver_killed_right_after_claim_is_repaired } },
                { "no-syscall", CASE_TIMEOUT, { test_polls_of_an_idle_ring_make_no_syscall,
                                test_polls_behind_a_live_claim_make_no_syscall } },
                { "sleepers", CASE_TIMEOUT, { test_sleeping_receiver_skips_claims_that_died_meanwhile,
                              test_sleeping_sender_gets_past_receivers_that_died_meanwhile,
                              test_broker_killed_before_its_wake_up_is_made_good,
                              test_sliced_receives_see_objects_removed_while_the_broker_is_away,
                              test_sliced_sends_see_objects_removed_while_the_broker_is_away,
                              test_interrupted_receives_see_objects_removed_while_the_broker_is_away,
                              test_interrupted_sends_see_objects_removed_while_the_broker_is_away } },
                { "holders", CASE_TIMEOUT, { test_dead_claim_stays_dead_when_its_entry_is_reused,
                             test_claim_taken_for_dead_starts_over } },
                /* Where a hold and its process end apart: a fork keeps the hold, a disconnect ends it mid-copy. */
                { "hold-vs-process", CASE_TIMEOUT, { test_dead_sender_whose_fork_lives_on_is_repaired,
                                     test_claim_taken_for_dead_spoils_no_later_message } },
        };

        return test_main("liveness", groups, ELEMENTS(groups), setup, teardown);
}
