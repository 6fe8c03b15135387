#pragma once

/*
 * Test helpers for end-to-end tests: a private IPC namespace, a scratch
 * directory, the real shmbrokerd forked on a generated config (readiness
 * taken from a real NOTIFY_SOCKET), and a plain NDJSON client over its
 * real socket. Failures abort the Check test with a message.
 */

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct TestDaemon {
        char dir[256];
        char config[300];
        char socket[300];
        char log[300];
        char notify[300];
        pid_t pid;
        int notify_fd;
        char notified[8192];            /* every notify datagram so far, '|'-separated */
        bool activate;                  /* pass a listening socket as systemd would (LISTEN_FDS) */
        int activate_fd;                /* with activate, not 0: pass this one (the test keeps its copy, as systemd) */
        int activate_extra_fd;          /* with activate, not 0: pass this one as well, as fd 4 (LISTEN_FDS=2) */
        bool activate_other_pid;        /* with activate: LISTEN_PID names another process (the daemon's parent) */
        bool keep_notify;               /* keep reading notifications after READY=1 */
        const char *notify_env;         /* not NULL: the daemon's NOTIFY_SOCKET instead of td.notify (the test reads it, if at all) */
        bool stop_before_exec;          /* the child stops itself (SIGSTOP) before it runs the daemon: to trace it */
        int passrights_errno;           /* not 0: its setsockopt(SO_PASSRIGHTS) fails so (a seccomp filter) */
        bool deny_chown;                /* every chown call fails with EPERM, as under the shipped unit's filter */
        bool deny_pidfd_open;           /* pidfd_open() fails with ENOSYS: pidfds as a kernel without pidfs gives them */
        bool deny_peer_pidfd;           /* getsockopt(SO_PEERPIDFD) fails with ENOPROTOOPT, as before Linux 6.5; with
                                         * deny_pidfd_open the daemon has no pidfd of any client */
        const char *userns_map;         /* not NULL: run the daemon in a user namespace of its own (as in a
                                         * container) whose uid_map and gid_map are this text */
        uid_t uid;                      /* not 0: run the daemon as uid:gid, without groups or capabilities */
        gid_t gid;
} TestDaemon;

/* The daemon under test: one per test, set up by the fixture below. */
extern TestDaemon td;

/* The fixture: a private IPC namespace and a fresh scratch directory; the
 * teardown stops the daemon and removes the directory. */
void test_setup(void);
void test_teardown(void);

/* Open `channel` rw on fd, attach its segment; *ret_shm_id gets its id. */
void *test_open_attach(int fd, const char *channel, int *ret_shm_id);

/* Write the config: `channels_json` is the JSON array text of "channels". */
void test_daemon_write_config(TestDaemon *td, const char *channels_json);
void test_daemon_write_raw_config(TestDaemon *td, const char *text);

/*
 * Start shmbrokerd -c td->config [extra args...] (NULL-terminated).
 * Returns true once READY=1 arrived; false when the daemon exited first
 * (its exit status is then in *ret_status, when given).
 */
bool test_daemon_start(TestDaemon *td, int *ret_status, ...);

/* The two halves of test_daemon_start(): fork and exec (td->pid), then wait for READY=1. */
void test_daemon_spawn(TestDaemon *td, ...);
bool test_daemon_wait_ready(TestDaemon *td, int *ret_status);

/*
 * Let a process traced with PTRACE_SEIZE and PTRACE_O_TRACESYSGOOD (in a
 * ptrace-stop) run to its next system call entry or exit, passing real
 * signals on: whether it stopped at one (false: it ended).
 */
bool test_next_syscall_stop(pid_t pid);

/* A kill point: whether the daemon pid, stopped at the entry of system call nr with first argument arg0, is at one. */
typedef bool (*TestKillPoint)(pid_t pid, uint64_t nr, uint64_t arg0);

/* A write(2) into the daemon's state file (or the one it is rewriting). */
bool test_at_state_write(pid_t pid, uint64_t nr, uint64_t arg0);

/*
 * Run td's daemon, traced and in a ptrace-stop, until the k-th kill point:
 * SIGKILL it there and reap it (td->pid -1), true. false when done() says
 * the work ended first: it is then detached and runs on.
 */
bool test_daemon_kill_at(TestDaemon *td, int k, TestKillPoint at, bool (*done)(void));

/* Spawn td's daemon traced from before its exec, in a ptrace-stop. */
void test_daemon_spawn_traced(TestDaemon *td);

/* Trace td's running daemon from now on: it is left in a ptrace-stop. */
void test_daemon_trace(TestDaemon *td);

/* Whether READY=1 came on td's notify socket meanwhile (without waiting). */
bool test_daemon_ready_sent(TestDaemon *td);

/* The same for the test's daemon td, as a done() of test_daemon_kill_at(). */
bool test_td_ready(void);

/*
 * Ask td's daemon to reload from a child of ours, which ends once the
 * answer (or the daemon's end) came. test_reload_done() says whether it
 * has (as a done() of test_daemon_kill_at()); test_reload_wait() waits.
 */
void test_reload_async(void);
bool test_reload_done(void);
void test_reload_wait(void);

/*
 * Wait up to timeout_ms for a notify datagram containing `what`; returns
 * the whole datagram (malloc'd) or NULL. Every datagram read on the way is
 * appended to td->notified (for order checks).
 */
char *test_daemon_wait_notify(TestDaemon *td, const char *what, int timeout_ms);

/* Send a signal and reap; returns the wait status. */
int test_daemon_kill(TestDaemon *td, int sig);

/* SIGTERM, reap, and fail unless it exited with status 0 (with its log). */
void test_daemon_stop_ok(TestDaemon *td);

/* The state letter of a task ('S': asleep, 'T': stopped) of process pid (tid 0: pid itself), or 0 once it is gone. */
char test_task_state(pid_t pid, pid_t tid);

/* A list request on fd must be answered ok: the daemon serves that connection. */
void test_assert_lists(int fd);

/* A mount namespace of the calling test's own (its daemon's too), whose mounts reach nowhere else. */
void test_private_mounts(void);

/* CLOCK_MONOTONIC in milliseconds. */
int64_t test_now_ms(void);

/*
 * A child that sends SIGUSR1 to this process every period_ms, as a timer
 * or a profiler would, and this process's SIGUSR1 caught by a handler that
 * does nothing, without SA_RESTART: every wait it interrupts ends with
 * EINTR. test_ticker_stop() ends both (the child also dies with us).
 */
typedef struct TestTicker {
        pid_t pid;
        struct sigaction old;
} TestTicker;
TestTicker test_ticker_start(int period_ms);
void test_ticker_stop(TestTicker *t);

/* The daemon's stderr so far (malloc'd). */
char *test_daemon_log(const TestDaemon *td);

/* Start td's daemon; fail with its exit status and log unless it reaches READY=1. */
void test_start_ok(void);

/* A list/status answer's entry for a channel (NULL; test_must_find() fails instead). */
json_t *test_find_channel(json_t *resp, const char *name);
json_t *test_must_find(json_t *resp, const char *name);

/* A member that must be an integer (a string). */
json_int_t test_jint(json_t *o, const char *key);
const char *test_jstr(json_t *o, const char *key);

/* A connection to the daemon's socket at path; test_try_connect() without asserting: the fd, or -errno (for children). */
int test_connect(const char *path);
int test_try_connect(const char *path);

/* Send raw bytes. */
void test_send(int fd, const char *buf, size_t len);

/* Read one line within 5 s; NULL on EOF. malloc'd. */
char *test_read_line(int fd);

/* Send a line (a newline is added) and parse the one-line answer. */
json_t *test_request(int fd, const char *line);

/*
 * As test_request() (line NULL: send nothing, read the next answer),
 * reading with recvmsg(): descriptors that come with
 * the answer (SCM_RIGHTS) go to ret_fds (at most max; more fail the test),
 * their count to *ret_n.
 */
json_t *test_request_fds(int fd, const char *line, int *ret_fds, size_t max, size_t *ret_n);

/* Assert an error answer with this errno name. */
void test_assert_error(json_t *resp, const char *name);
void test_assert_ok(json_t *resp);

/*
 * The key secret the daemon keeps beside its socket (<socket>.secret): 16
 * bytes, for computing the keys it derives (channel_derive_key()).
 */
void test_read_secret(const TestDaemon *td, uint8_t ret[16]);

/* Give the daemon a known secret before it starts (0600, as it would make it). */
void test_write_secret(const TestDaemon *td, const uint8_t secret[16]);

/* A fixed secret for tests that must know a derived key before the daemon starts: bytes 0..15. */
extern const uint8_t test_secret[16];

/* Objects in this IPC namespace, counted by util-linux ipcs. */
int test_ipcs_count(const char *kind);   /* "-m" or "-s" */

/* The fields of /proc/PID/stat after the command name (state first), read into buf. */
const char *test_proc_stat_after_name(pid_t pid, char *buf, size_t size);

/* Whether descriptor fd of process pid names a path ending in suffix (false when it is gone). */
bool test_fd_path_ends_with(pid_t pid, uint64_t fd, const char *suffix);

/* utime + stime of a process, in clock ticks. */
long test_cpu_ticks(pid_t pid);

/* Write a sysctl of this IPC namespace (e.g. /proc/sys/kernel/shmmni). */
void test_write_proc(const char *path, const char *value);

/* Run `fn` in a forked child; returns its wait status. */
int test_in_child(void (*fn)(void *), void *userdata);

/*
 * In a child, as uid (0: stays root), make a System V object under key
 * whose id is exactly want_id (through /proc/sys/kernel/{shm,sem}_next_id),
 * as another user squats an id the daemon's object left: a segment of size
 * bytes, or a set of size semaphores when sem. Fails the case when the
 * object got another id.
 */
void test_make_foreign_ipc(bool sem, uint32_t key, size_t size, mode_t mode, int want_id, uid_t uid);

/*
 * Run a shell command line (printf-style, up to 2 KiB); its stdout (stderr
 * too when the line says 2>&1) into out, cut to size; its exit status. A
 * command killed by a signal fails the test.
 */
int test_run(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * open(path, flags | O_NONBLOCK) in a child process running as uid, with
 * gid its only group: 0, or the errno. Fails the test if the child could
 * not take those ids.
 */
int test_open_as(uid_t uid, gid_t gid, const char *path, int flags);

/* Drop to uid/gid with one supplementary group (or none when 0). */
void test_drop_privileges(uid_t uid, gid_t gid, gid_t supplementary);

/* Take the capabilities in `mask` (bit n: capability n) out of the effective set; exits 92 on failure. */
void test_drop_effective_caps(uint64_t mask);

/* A TCase of an end-to-end program: its name, timeout (seconds) and tests. */
typedef struct TestGroup {
        const char *name;
        int timeout;
        const TTest *tests[12];
} TestGroup;

/*
 * The whole main() of an end-to-end test program: SKIP (77) without IPC
 * namespaces; otherwise one TCase per group, each with its timeout and the
 * fixture; the exit status says whether everything passed.
 */
int test_main(const char *suite_name, const TestGroup *groups, size_t n_groups, void (*setup)(void),
              void (*teardown)(void));

/* Whether capability cap is in the effective set of process pid (0: this one), as /proc/PID/status says. */
bool test_pid_cap_effective(pid_t pid, unsigned cap);

struct RingHolder;

/*
 * What any writer of a segment (an rw opener; root) may do to a holder
 * table (proto/ring.h) of n entries before a broker crash: every entry but
 * `keep` made LIVE under generation 9 for an opener no sweep can judge,
 * in turn pid 0 (none) and pid 1 of no recorded PID namespace and no ids.
 */
void test_forge_live_holders(struct RingHolder *table, uint32_t n, uint32_t keep);

/* The index of the one LIVE entry of a holder table of n entries; fails the test, naming `what`, unless there is exactly one. */
uint32_t test_only_live_holder(const struct RingHolder *table, uint32_t n, const char *what);
