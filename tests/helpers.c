#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <inttypes.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/ring.h"
#include "tests/helpers.h"

#define ELEMENTS(x) (sizeof(x) / sizeof((x)[0]))
#define START_TIMEOUT_MS 20000
#define READ_TIMEOUT_MS 5000
#define STOP_TIMEOUT_MS 30000           /* generous: the daemon may run under valgrind */

TestDaemon td;

/*
 * Each test's directory lives in one made per test program, which
 * test_main() removes after all tests: a failed assertion ends its test's
 * process before the teardown would remove the test's own.
 */
static char run_dir[64];

static void test_enter_ipc_namespace(void);
static void test_daemon_init(TestDaemon *d);
static void test_daemon_done(TestDaemon *d);

void test_setup(void) {
        /* The daemon would keep its state there: every test's must be its own directory. */
        unsetenv("RUNTIME_DIRECTORY");
        test_enter_ipc_namespace();
        test_daemon_init(&td);
}

/*
 * A daemon still running at the end of a test is stopped the way systemd
 * would (SIGTERM) and must exit cleanly: a crash on the way out, or a
 * wrapper's complaint (valgrind's --error-exitcode), fails the test.
 */
void test_teardown(void) {
        if (td.pid > 0)
                test_daemon_stop_ok(&td);
        test_daemon_done(&td);
}

/* 77 (automake's SKIP) when this process may not create IPC namespaces. */
static int test_require_namespaces(void) {
        pid_t pid = fork();
        int status;

        if (pid == 0)
                _exit(unshare(CLONE_NEWIPC) < 0 ? 1 : 0);
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "SKIP: cannot create IPC namespaces here (needs root)\n");
                return 77;
        }
        return 0;
}

/* unshare(CLONE_NEWIPC): everything this test makes dies with it. */
static void test_enter_ipc_namespace(void) {
        ck_assert_msg(unshare(CLONE_NEWIPC) == 0, "unshare(CLONE_NEWIPC): %s", strerror(errno));
}

/*
 * Make a scratch directory (mode 0755, so dropped-privilege children can
 * reach the socket) and fill in the paths.
 */
static void test_daemon_init(TestDaemon *d) {
        memset(d, 0, sizeof *d);
        d->pid = -1;
        d->notify_fd = -1;
        snprintf(d->dir, sizeof d->dir, "%s/XXXXXX", run_dir[0] ? run_dir : "/tmp");
        ck_assert_ptr_nonnull(mkdtemp(d->dir));
        ck_assert_int_eq(chmod(d->dir, 0755), 0);
        snprintf(d->config, sizeof d->config, "%s/shmbroker.json", d->dir);
        snprintf(d->socket, sizeof d->socket, "%s/shmbroker.sock", d->dir);
        snprintf(d->log, sizeof d->log, "%s/daemon.log", d->dir);
        snprintf(d->notify, sizeof d->notify, "%s/notify", d->dir);
}

void test_daemon_write_raw_config(TestDaemon *d, const char *text) {
        FILE *f = fopen(d->config, "we");

        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        ck_assert_int_eq(fclose(f), 0);
}

void test_daemon_write_config(TestDaemon *d, const char *channels_json) {
        char *text;

        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"channels\": %s}\n",
                                  d->socket, channels_json), 0);
        test_daemon_write_raw_config(d, text);
        free(text);
}

static int open_notify_socket(TestDaemon *d) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        strcpy(sa.sun_path, d->notify);
        unlink(d->notify);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        /* A daemon under test may run unprivileged, as under systemd. */
        ck_assert_int_eq(chmod(d->notify, 0666), 0);
        return fd;
}

int64_t test_now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_tick(int sig) {
        (void) sig;
}

TestTicker test_ticker_start(int period_ms) {
        struct sigaction sa = { .sa_handler = on_tick };
        TestTicker t;
        pid_t parent = getpid();

        ck_assert_int_eq(sigaction(SIGUSR1, &sa, &t.old), 0);
        t.pid = fork();
        ck_assert_int_ge(t.pid, 0);
        if (t.pid == 0) {
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        _exit(127);
                for (;;) {
                        (void) kill(parent, SIGUSR1);
                        (void) nanosleep(&(struct timespec) { .tv_nsec = period_ms * 1000000L }, NULL);
                }
        }
        return t;
}

void test_ticker_stop(TestTicker *t) {
        if (t->pid > 0) {
                (void) kill(t->pid, SIGKILL);
                (void) waitpid(t->pid, NULL, 0);
                t->pid = -1;
        }
        (void) sigaction(SIGUSR1, &t->old, NULL);
}

/*
 * As systemd's socket activation: a bound, listening socket as fd 3 (and
 * extra, when not 0, as fd 4); LISTEN_PID names the daemon, or with
 * other_pid its parent, as when the variables were meant for another process.
 */
static int pass_listening_socket(const char *path, int given, int extra, bool other_pid) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = given > 0 ? given : socket(AF_UNIX, SOCK_STREAM, 0);
        char pid[16];

        /* Out of the way first: fd 3 and 4 are about to be overwritten. */
        if (extra > 0 && (extra = fcntl(extra, F_DUPFD_CLOEXEC, 10)) < 0)
                return -1;
        strcpy(sa.sun_path, path);
        if (given <= 0) {
                unlink(path);
                if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 || listen(fd, 16) < 0)
                        return -1;
        }
        /* dup2() clears close-on-exec on 3; a given socket's own number goes with the exec if it has it. */
        if (fd != 3 && (dup2(fd, 3) < 0 || close(fd) < 0))
                return -1;
        if (extra > 0 && (dup2(extra, 4) < 0 || close(extra) < 0))
                return -1;
        snprintf(pid, sizeof pid, "%d", (int) (other_pid ? getppid() : getpid()));
        setenv("LISTEN_FDS", extra > 0 ? "2" : "1", 1);
        setenv("LISTEN_PID", pid, 1);
        return 0;
}

static void record_notify(TestDaemon *d, const char *msg) {
        size_t used = strlen(d->notified);

        snprintf(d->notified + used, sizeof d->notified - used, "%s|", msg);
}

char *test_daemon_wait_notify(TestDaemon *d, const char *what, int timeout_ms) {
        int64_t deadline = test_now_ms() + timeout_ms;
        char buf[1024];

        while (test_now_ms() < deadline) {
                struct pollfd p = { .fd = d->notify_fd, .events = POLLIN };
                ssize_t n;

                if (poll(&p, 1, (int) (deadline - test_now_ms())) <= 0)
                        break;
                n = recv(d->notify_fd, buf, sizeof buf - 1, 0);
                if (n <= 0)
                        continue;
                buf[n] = 0;
                record_notify(d, buf);
                if (strstr(buf, what))
                        return strdup(buf);
        }
        return NULL;
}

#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif
#if defined(__x86_64__)
#define FILTER_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define FILTER_ARCH AUDIT_ARCH_AARCH64
#endif

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77                 /* Linux 6.5; the value of every architecture the filter knows */
#endif

/*
 * In the daemon's child: from here on the socket option call `nr`
 * (setsockopt or getsockopt) of SOL_SOCKET's `optname` fails with err; every
 * other call runs. Compares the low words of the arguments (level and
 * optname are ints). 0, or -1 (errno set).
 */
static int deny_sockopt(uint32_t nr, uint32_t optname, int err) {
#ifdef FILTER_ARCH
        struct sock_filter code[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTER_ARCH, 0, 7),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 5),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOL_SOCKET, 0, 3),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, optname, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((uint32_t) err & SECCOMP_RET_DATA)),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = (unsigned short) ELEMENTS(code), .filter = code };

        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return -1;
        return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
#else
        (void) nr;
        (void) optname;
        (void) err;
        errno = ENOSYS;
        return -1;
#endif
}

/* In the daemon's child: the n system calls `calls` fail with err from here on; every other call runs. */
static int deny_calls(const uint32_t *calls, unsigned n, int err) {
#ifdef FILTER_ARCH
        struct sock_filter code[5 + 8];
        struct sock_fprog prog = { .len = (unsigned short) (5 + n), .filter = code };

        if (n > ELEMENTS(code) - 5) {
                errno = E2BIG;
                return -1;
        }
        /* [0-2] the arch (another: allow), the number; [3..] one test each; [3+n] allow; [4+n] err. */
        code[0] = (struct sock_filter) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
        code[1] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTER_ARCH, 0, n + 1);
        code[2] = (struct sock_filter) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
        for (unsigned i = 0; i < n; i++)
                code[3 + i] = (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, calls[i], n - i, 0);
        code[3 + n] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        code[4 + n] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((uint32_t) err & SECCOMP_RET_DATA));
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return -1;
        return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
#else
        (void) calls;
        (void) n;
        (void) err;
        errno = ENOSYS;
        return -1;
#endif
}

/* chown(2) and its kin fail with EPERM (SystemCallFilter=~@privileged); chown and lchown only where the arch has them. */
static int deny_chown(void) {
        static const uint32_t calls[] = {
                SYS_fchown, SYS_fchownat,
#ifdef SYS_chown
                SYS_chown,
#endif
#ifdef SYS_lchown
                SYS_lchown,
#endif
        };

        return deny_calls(calls, ELEMENTS(calls), EPERM);
}

/*
 * pidfd_open() fails with ENOSYS, so the daemon cannot tell pidfds apart
 * by inode (proc-id.c pidfs_ids()), as on a kernel before pidfs (Linux 6.5
 * to 6.8 still give SO_PEERPIDFD).
 */
static int deny_pidfd_open(void) {
#ifdef SYS_pidfd_open
        static const uint32_t calls[] = { SYS_pidfd_open };

        return deny_calls(calls, ELEMENTS(calls), ENOSYS);
#else
        errno = ENOSYS;
        return -1;
#endif
}

static void daemon_spawn(TestDaemon *d, va_list ap) {
        const char *argv[48];
        char *wrapper = getenv("TEST_DAEMON_WRAPPER") ? strdup(getenv("TEST_DAEMON_WRAPPER")) : NULL;
        int argc = 0;

        /* e.g. TEST_DAEMON_WRAPPER="valgrind --error-exitcode=99": run the daemon under it. */
        for (char *w = wrapper ? strtok(wrapper, " ") : NULL; w && argc < 16; w = strtok(NULL, " "))
                argv[argc++] = w;
        argv[argc++] = SHMBROKERD_PATH;
        argv[argc++] = "-c";
        argv[argc++] = d->config;
        for (const char *a; (a = va_arg(ap, const char *)) && argc < 47;)
                argv[argc++] = a;
        argv[argc] = NULL;

        if (d->notify_fd < 0)
                d->notify_fd = open_notify_socket(d);
        /* With userns_map: the child makes the namespace, the parent (root out here) writes its maps. */
        int to_parent[2] = { -1, -1 }, to_child[2] = { -1, -1 };
        if (d->userns_map)
                ck_assert(pipe2(to_parent, O_CLOEXEC) == 0 && pipe2(to_child, O_CLOEXEC) == 0);
        d->pid = fork();
        ck_assert_int_ge(d->pid, 0);
        if (d->pid == 0) {
                int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                char b;

                if (log < 0 || dup2(log, STDERR_FILENO) < 0)
                        _exit(127);
                if (d->userns_map && (unshare(CLONE_NEWUSER) < 0 || write(to_parent[1], "u", 1) != 1 ||
                                      read(to_child[0], &b, 1) != 1 || getuid() != 0))
                        _exit(123);
                /* A failed test skips its teardown: the daemon must not outlive it. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
                        _exit(127);
                setenv("NOTIFY_SOCKET", d->notify_env ? d->notify_env : d->notify, 1);
                if (d->activate && pass_listening_socket(d->socket, d->activate_fd, d->activate_extra_fd,
                                                     d->activate_other_pid) < 0)
                        _exit(126);
                /* As on a kernel without the switch (ENOPROTOOPT), or under a filter that forbids it. */
                if (d->passrights_errno && deny_sockopt(SYS_setsockopt, SO_PASSRIGHTS, d->passrights_errno) < 0)
                        _exit(124);
                /* As on a kernel before 6.5: no pidfd of a peer from its socket. */
                if (d->deny_peer_pidfd && deny_sockopt(SYS_getsockopt, SO_PEERPIDFD, ENOPROTOOPT) < 0)
                        _exit(124);
                if (d->deny_chown && deny_chown() < 0)
                        _exit(124);
                if (d->deny_pidfd_open && deny_pidfd_open() < 0)
                        _exit(124);
                if (d->stop_before_exec)
                        (void) raise(SIGSTOP);
                /*
                 * As under the shipped unit: setuid() away from root clears every capability.
                 * The binary is opened first: a checkout under /root (0700) is no path for that uid.
                 */
                if (d->uid != 0) {
                        int exe = wrapper ? -1 : open(argv[0], O_RDONLY | O_CLOEXEC);

                        if (setgroups(0, NULL) < 0 || setgid(d->gid) < 0 || setuid(d->uid) < 0)
                                _exit(125);
                        /* setuid() cleared the parent-death signal: set it again. */
                        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
                                _exit(127);
                        if (exe >= 0)
                                fexecve(exe, (char **) argv, environ);
                }
                execvp(argv[0], (char **) argv);
                _exit(127);
        }
        if (d->userns_map) {
                static const char *const maps[] = { "uid_map", "gid_map" };
                char b, path[64];

                close(to_parent[1]);
                close(to_child[0]);
                /* No answer: the child died (its status tells); else it waits for the maps. */
                if (read(to_parent[0], &b, 1) == 1) {
                        for (size_t i = 0; i < 2; i++) {
                                snprintf(path, sizeof path, "/proc/%d/%s", (int) d->pid, maps[i]);
                                test_write_proc(path, d->userns_map);
                        }
                        ck_assert_int_eq(write(to_child[1], "g", 1), 1);
                }
                close(to_parent[0]);
                close(to_child[1]);
        }
        free(wrapper);      /* the child has its own copy */
}

void test_daemon_spawn(TestDaemon *d, ...) {
        va_list ap;

        va_start(ap, d);
        daemon_spawn(d, ap);
        va_end(ap);
}

bool test_daemon_start(TestDaemon *d, int *ret_status, ...) {
        va_list ap;

        va_start(ap, ret_status);
        daemon_spawn(d, ap);
        va_end(ap);
        return test_daemon_wait_ready(d, ret_status);
}

bool test_daemon_wait_ready(TestDaemon *d, int *ret_status) {
        int64_t deadline = test_now_ms() + START_TIMEOUT_MS;
        int status;

        while (test_now_ms() < deadline) {
                struct pollfd p = { .fd = d->notify_fd, .events = POLLIN };
                char buf[512];

                if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
                        d->pid = -1;
                        if (ret_status)
                                *ret_status = status;
                        return false;
                }
                if (poll(&p, 1, 20) > 0) {
                        ssize_t n = recv(d->notify_fd, buf, sizeof buf - 1, 0);

                        if (n > 0) {
                                buf[n] = 0;
                                record_notify(d, buf);
                                if (!strstr(buf, "READY=1"))
                                        continue;
                                /* Unread datagrams would fill the queue (10) and block the daemon's
                                 * sd_notify(); unless the test reads them, stop listening. */
                                if (!d->keep_notify) {
                                        close(d->notify_fd);
                                        d->notify_fd = -1;
                                        unlink(d->notify);
                                }
                                return true;
                        }
                }
        }
        ck_abort_msg("shmbrokerd sent no READY=1 within %d ms", START_TIMEOUT_MS);
        return false;
}

int test_daemon_kill(TestDaemon *d, int sig) {
        int status = 0;

        ck_assert_int_gt(d->pid, 0);
        ck_assert_int_eq(kill(d->pid, sig), 0);
        ck_assert_int_eq(waitpid(d->pid, &status, 0), d->pid);
        d->pid = -1;
        return status;
}

void test_daemon_stop_ok(TestDaemon *d) {
        int64_t deadline = test_now_ms() + STOP_TIMEOUT_MS;
        int status = 0;
        pid_t r;
        char *log;

        ck_assert_int_gt(d->pid, 0);
        ck_assert_int_eq(kill(d->pid, SIGTERM), 0);
        while ((r = waitpid(d->pid, &status, WNOHANG)) == 0 && test_now_ms() < deadline)
                usleep(10 * 1000);
        if (r == 0) {
                kill(d->pid, SIGKILL);
                waitpid(d->pid, &status, 0);
        }
        d->pid = -1;
        if (r != 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
                return;
        log = test_daemon_log(d);
        ck_abort_msg("shmbrokerd did not exit cleanly on SIGTERM (%s %d); its log ends: %.2000s",
                     r == 0 ? "still running after ms" : WIFEXITED(status) ? "exit status" : "signal",
                     r == 0 ? STOP_TIMEOUT_MS : WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                     strlen(log) > 2000 ? log + strlen(log) - 2000 : log);
}

char *test_daemon_log(const TestDaemon *d) {
        FILE *f = fopen(d->log, "re");
        char *buf = calloc(1, 65536);
        size_t n = 0;

        ck_assert_ptr_nonnull(buf);
        if (f) {
                n = fread(buf, 1, 65535, f);
                fclose(f);
        }
        buf[n] = 0;
        return buf;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

/* Stop the daemon if running (SIGKILL) and remove the scratch directory. */
static void test_daemon_done(TestDaemon *d) {
        if (d->pid > 0) {
                kill(d->pid, SIGKILL);
                waitpid(d->pid, NULL, 0);
                d->pid = -1;
        }
        if (d->notify_fd >= 0)
                close(d->notify_fd);
        d->notify_fd = -1;
        if (d->dir[0])
                nftw(d->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void test_start_ok(void) {
        int status = 0;

        if (!test_daemon_start(&td, &status, NULL)) {
                char *log = test_daemon_log(&td);

                ck_abort_msg("daemon exited (status %d) before READY:\n%s", status, log);
        }
}

json_t *test_find_channel(json_t *resp, const char *name) {
        json_t *a = json_object_get(resp, "channels"), *e;
        size_t i;

        json_array_foreach(a, i, e)
                if (json_is_string(json_object_get(e, "name")) &&
                    strcmp(json_string_value(json_object_get(e, "name")), name) == 0)
                        return e;
        return NULL;
}

json_t *test_must_find(json_t *resp, const char *name) {
        json_t *ch = test_find_channel(resp, name);

        ck_assert_msg(ch != NULL, "channel \"%s\" is not listed", name);
        return ch;
}

json_int_t test_jint(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
        return json_integer_value(v);
}

const char *test_jstr(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
        return json_string_value(v);
}

int test_try_connect(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, err;

        if (strlen(path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                err = errno;
                close(fd);
                return -err;
        }
        return fd;
}

int test_connect(const char *path) {
        int fd = test_try_connect(path);

        ck_assert_msg(fd >= 0, "connect %s: %s", path, strerror(-fd));
        return fd;
}

void test_send(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

                ck_assert_msg(n > 0, "send: %s", strerror(errno));
                buf += n;
                len -= (size_t) n;
        }
}

char *test_read_line(int fd) {
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap);
        int64_t deadline = test_now_ms() + READ_TIMEOUT_MS;

        ck_assert_ptr_nonnull(buf);
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int left = (int) (deadline - test_now_ms());
                ssize_t n;

                ck_assert_msg(left > 0 && poll(&p, 1, left) > 0, "no answer within %d ms", READ_TIMEOUT_MS);
                if (len + 1 >= cap) {
                        cap *= 2;
                        buf = realloc(buf, cap);
                        ck_assert_ptr_nonnull(buf);
                }
                /* One byte at a time: never swallow the start of the next line. */
                n = recv(fd, buf + len, 1, 0);
                if (n == 0) {
                        free(buf);
                        return NULL;
                }
                ck_assert_msg(n > 0, "recv: %s", strerror(errno));
                if (buf[len] == '\n') {
                        buf[len] = 0;
                        return buf;
                }
                len++;
        }
}

json_t *test_request(int fd, const char *line) {
        json_error_t err;
        json_t *v;
        char *resp;

        test_send(fd, line, strlen(line));
        test_send(fd, "\n", 1);
        resp = test_read_line(fd);
        ck_assert_msg(resp != NULL, "connection closed instead of answering %s", line);
        v = json_loads(resp, 0, &err);
        ck_assert_msg(v != NULL, "answer is not JSON: %s", resp);
        free(resp);
        return v;
}

/* One byte (0: EOF) and the descriptors that came with it, appended to fds. */
static ssize_t recv_byte_fds(int fd, char *ret, int *fds, size_t max, size_t *n) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 253)];
        } control;
        struct iovec iov = { .iov_base = ret, .iov_len = 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf };
        ssize_t k = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);

        ck_assert_msg(k >= 0, "recvmsg: %s", strerror(errno));
        ck_assert_msg(!(mh.msg_flags & MSG_CTRUNC), "descriptors were cut off (MSG_CTRUNC)");
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                size_t count;

                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                ck_assert_msg(*n + count <= max, "%zu descriptors, more than the %zu expected", *n + count, max);
                memcpy(fds + *n, CMSG_DATA(cm), count * sizeof(int));
                *n += count;
        }
        return k;
}

json_t *test_request_fds(int fd, const char *line, int *ret_fds, size_t max, size_t *ret_n) {
        int64_t deadline = test_now_ms() + READ_TIMEOUT_MS;
        size_t cap = 4096, len = 0, n = 0;
        char *buf = malloc(cap);
        json_error_t err;
        json_t *v;

        ck_assert_ptr_nonnull(buf);
        if (line) {
                test_send(fd, line, strlen(line));
                test_send(fd, "\n", 1);
        }
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int left = (int) (deadline - test_now_ms());

                ck_assert_msg(left > 0 && poll(&p, 1, left) > 0, "no answer within %d ms", READ_TIMEOUT_MS);
                if (len + 1 >= cap) {
                        cap *= 2;
                        buf = realloc(buf, cap);
                        ck_assert_ptr_nonnull(buf);
                }
                /* One byte at a time, as test_read_line(): never the next line's (or its descriptors). */
                ck_assert_msg(recv_byte_fds(fd, buf + len, ret_fds, max, &n) == 1,
                              "connection closed instead of answering %s", line ? line : "(pipelined)");
                if (buf[len] == '\n')
                        break;
                len++;
        }
        buf[len] = 0;
        v = json_loads(buf, 0, &err);
        ck_assert_msg(v != NULL, "answer is not JSON: %s", buf);
        free(buf);
        *ret_n = n;
        return v;
}

void test_assert_error(json_t *resp, const char *name) {
        char *text = json_dumps(resp, JSON_COMPACT);

        ck_assert_msg(json_is_false(json_object_get(resp, "ok")), "expected an error, got %s", text);
        ck_assert_msg(json_is_string(json_object_get(resp, "error")) &&
                      strcmp(json_string_value(json_object_get(resp, "error")), name) == 0,
                      "expected error %s, got %s", name, text);
        ck_assert_msg(json_is_string(json_object_get(resp, "message")) &&
                      json_string_length(json_object_get(resp, "message")) > 0, "error without message: %s", text);
        free(text);
}

void *test_open_attach(int fd, const char *channel, int *ret_shm_id) {
        char req[160];
        json_t *resp, *id;
        void *addr;

        snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"rw\"}", channel);
        resp = test_request(fd, req);
        test_assert_ok(resp);
        id = json_object_get(resp, "shm_id");
        ck_assert(json_is_integer(id));
        *ret_shm_id = (int) json_integer_value(id);
        json_decref(resp);
        addr = shmat(*ret_shm_id, NULL, 0);
        ck_assert_msg(addr != (void *) -1, "shmat %d: %s", *ret_shm_id, strerror(errno));
        return addr;
}

void test_assert_ok(json_t *resp) {
        char *text = json_dumps(resp, JSON_COMPACT);

        ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "expected ok, got %s", text);
        free(text);
}

void test_read_secret(const TestDaemon *d, uint8_t ret[16]) {
        char path[320], text[40];
        FILE *f;

        snprintf(path, sizeof path, "%s.secret", d->socket);
        f = fopen(path, "re");
        ck_assert_msg(f, "%s: %s", path, strerror(errno));
        ck_assert_ptr_nonnull(fgets(text, sizeof text, f));
        fclose(f);
        ck_assert_uint_eq(strlen(text), 33);
        for (int i = 0; i < 16; i++) {
                unsigned v;

                ck_assert_int_eq(sscanf(text + 2 * i, "%2x", &v), 1);
                ret[i] = (uint8_t) v;
        }
}

const uint8_t test_secret[16] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

void test_write_secret(const TestDaemon *d, const uint8_t secret[16]) {
        char path[320], text[34];
        int fd;

        for (int i = 0; i < 16; i++)
                snprintf(text + 2 * i, 3, "%02x", secret[i]);
        text[32] = '\n';
        snprintf(path, sizeof path, "%s.secret", d->socket);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(write(fd, text, 33), 33);
        close(fd);
}

int test_ipcs_count(const char *kind) {
        char cmd[64], line[512];
        int n = 0;
        FILE *p;

        snprintf(cmd, sizeof cmd, "ipcs %s", kind);
        p = popen(cmd, "re");
        ck_assert_ptr_nonnull(p);
        while (fgets(line, sizeof line, p))
                if (strncmp(line, "0x", 2) == 0)
                        n++;
        ck_assert_int_eq(pclose(p), 0);
        return n;
}

const char *test_proc_stat_after_name(pid_t pid, char *buf, size_t size) {
        char path[64], *p;
        FILE *f;
        size_t n;

        snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        n = fread(buf, 1, size - 1, f);
        fclose(f);
        buf[n] = 0;
        /* The command name may hold spaces and parentheses: the fields follow its last ')'. */
        p = strrchr(buf, ')');
        ck_assert_ptr_nonnull(p);
        return p + 2;
}

bool test_fd_path_ends_with(pid_t pid, uint64_t fd, const char *suffix) {
        char link[64], target[512];
        size_t k = strlen(suffix);
        ssize_t n;

        snprintf(link, sizeof link, "/proc/%d/fd/%" PRIu64, (int) pid, fd);
        n = readlink(link, target, sizeof target - 1);
        if (n < 0)
                return false;
        target[n] = 0;
        return (size_t) n > k && strcmp(target + n - k, suffix) == 0;
}

long test_cpu_ticks(pid_t pid) {
        char buf[1024];
        unsigned long ut, st;

        /* the fields after the name: state(3) ... utime(14) stime(15) */
        ck_assert_int_eq(sscanf(test_proc_stat_after_name(pid, buf, sizeof buf),
                                "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st), 2);
        return (long) (ut + st);
}

/*
 * Containers (systemd-nspawn, docker) mount /proc/sys read-only. The IPC
 * sysctls written here are this test's own namespace's, so in a private
 * mount namespace the test may remount /proc/sys writable for itself.
 */
static void make_proc_sys_writable(void) {
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("/proc/sys", "/proc/sys", NULL, MS_REMOUNT | MS_BIND, NULL) < 0)
                ck_abort_msg("/proc/sys is read-only and cannot be made writable: %s", strerror(errno));
}

void test_write_proc(const char *path, const char *value) {
        FILE *f = fopen(path, "we");

        if (!f && errno == EROFS) {
                make_proc_sys_writable();
                f = fopen(path, "we");
        }
        ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
        fputs(value, f);
        ck_assert_int_eq(fclose(f), 0);
}

int test_in_child(void (*fn)(void *), void *userdata) {
        pid_t pid = fork();
        int status;

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                fn(userdata);
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        return status;
}

typedef struct ForeignIpc {
        bool sem;
        uint32_t key;
        size_t size;
        mode_t mode;
        int want_id;
        uid_t uid;
} ForeignIpc;

static void foreign_ipc_child(void *userdata) {
        const ForeignIpc *f = userdata;
        char id[32];
        int r;

        snprintf(id, sizeof id, "%d", f->want_id);
        test_write_proc(f->sem ? "/proc/sys/kernel/sem_next_id" : "/proc/sys/kernel/shm_next_id", id);
        if (f->uid)
                test_drop_privileges(f->uid, f->uid, 0);
        r = f->sem ? semget((key_t) f->key, (int) f->size, IPC_CREAT | IPC_EXCL | (int) f->mode) :
                     shmget((key_t) f->key, f->size, IPC_CREAT | IPC_EXCL | (int) f->mode);
        _exit(r == f->want_id ? 0 : 1);
}

void test_make_foreign_ipc(bool sem, uint32_t key, size_t size, mode_t mode, int want_id, uid_t uid) {
        ForeignIpc f = { .sem = sem, .key = key, .size = size, .mode = mode, .want_id = want_id, .uid = uid };
        int status = test_in_child(foreign_ipc_child, &f);

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "could not make a %s with id %d",
                      sem ? "set" : "segment", want_id);
}

typedef struct OpenAs {
        uid_t uid;
        gid_t gid;
        const char *path;
        int flags;
} OpenAs;

#define OPEN_AS_NO_IDS 255      /* no errno */

static void open_as_child(void *userdata) {
        const OpenAs *o = userdata;
        int fd;

        if (setgroups(0, NULL) < 0 || setgid(o->gid) < 0 || setuid(o->uid) < 0)
                _exit(OPEN_AS_NO_IDS);
        fd = open(o->path, o->flags | O_NONBLOCK | O_CLOEXEC);
        _exit(fd >= 0 ? 0 : errno);
}

int test_open_as(uid_t uid, gid_t gid, const char *path, int flags) {
        OpenAs o = { .uid = uid, .gid = gid, .path = path, .flags = flags };
        int status = test_in_child(open_as_child, &o);

        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) != OPEN_AS_NO_IDS,
                      "a child could not become uid %u, gid %u to open %s (status %d)", (unsigned) uid, (unsigned) gid,
                      path, status);
        return WEXITSTATUS(status);
}

void test_drop_privileges(uid_t uid, gid_t gid, gid_t supplementary) {
        if (supplementary ? setgroups(1, &supplementary) : setgroups(0, NULL))
                _exit(90);
        if (setgid(gid) < 0 || setuid(uid) < 0)
                _exit(91);
}

void test_drop_effective_caps(uint64_t mask) {
        struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];

        if (syscall(SYS_capget, &h, d) < 0)
                _exit(92);
        d[0].effective &= ~(uint32_t) mask;
        d[1].effective &= ~(uint32_t) (mask >> 32);
        if (syscall(SYS_capset, &h, d) < 0)
                _exit(92);
}

int test_main(const char *suite_name, const TestGroup *groups, size_t n_groups, void (*setup)(void),
              void (*teardown)(void)) {
        Suite *s;
        SRunner *sr;
        int failed, r;

        r = test_require_namespaces();
        if (r)
                return r;
        strcpy(run_dir, "/tmp/shmbroker-test-XXXXXX");
        /* 0755: some tests run a daemon as another user, who must reach its directory. */
        if (!mkdtemp(run_dir) || chmod(run_dir, 0755) < 0) {
                fprintf(stderr, "%s: cannot make a directory under /tmp: %m\n", suite_name);
                return EXIT_FAILURE;
        }
        s = suite_create(suite_name);
        for (size_t g = 0; g < n_groups; g++) {
                TCase *tc = tcase_create(groups[g].name);

                /* Its name as its tag too: CK_EXCLUDE_TAGS=NAME leaves it out (this Check has no CK_EXCLUDE_TCASE). */
                tcase_set_tags(tc, groups[g].name);
                tcase_set_timeout(tc, groups[g].timeout);
                tcase_add_checked_fixture(tc, setup, teardown);
                for (size_t i = 0; i < ELEMENTS(groups[g].tests) && groups[g].tests[i]; i++)
                        tcase_add_test(tc, groups[g].tests[i]);
                suite_add_tcase(s, tc);
        }
        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        nftw(run_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

bool test_next_syscall_stop(pid_t pid) {
        int status, sig = 0;

        for (;;) {
                ck_assert_int_eq(ptrace(PTRACE_SYSCALL, pid, 0, sig), 0);
                ck_assert_int_eq(waitpid(pid, &status, __WALL), pid);
                if (!WIFSTOPPED(status))
                        return false;
                if (WSTOPSIG(status) == (SIGTRAP | 0x80))
                        return true;
                /* A real signal goes on with the next resume; a group stop or event stop does not. */
                sig = WSTOPSIG(status) != SIGTRAP && status >> 16 != PTRACE_EVENT_STOP ? WSTOPSIG(status) : 0;
        }
}

bool test_at_state_write(pid_t pid, uint64_t nr, uint64_t arg0) {
        return nr == SYS_write &&
               (test_fd_path_ends_with(pid, arg0, ".state") || test_fd_path_ends_with(pid, arg0, ".state.new"));
}

bool test_daemon_kill_at(TestDaemon *d, int k, TestKillPoint at, bool (*done)(void)) {
        int points = 0, status;

        while (!done()) {
                struct __ptrace_syscall_info info;

                ck_assert_msg(test_next_syscall_stop(d->pid), "the daemon ended by itself");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, d->pid, sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY || !at(d->pid, info.entry.nr, info.entry.args[0]) ||
                    ++points < k)
                        continue;
                ck_assert_int_eq(kill(d->pid, SIGKILL), 0);
                ck_assert_int_eq(waitpid(d->pid, &status, __WALL), d->pid);
                ck_assert(WIFSIGNALED(status));
                d->pid = -1;
                return true;
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, d->pid, 0, 0), 0);
        return false;
}

void test_daemon_trace(TestDaemon *d) {
        int status;

        ck_assert_int_eq(ptrace(PTRACE_SEIZE, d->pid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL), 0);
        ck_assert_int_eq(ptrace(PTRACE_INTERRUPT, d->pid, 0, 0), 0);
        ck_assert_int_eq(waitpid(d->pid, &status, __WALL), d->pid);
}

void test_daemon_spawn_traced(TestDaemon *d) {
        int status;

        d->stop_before_exec = true;
        test_daemon_spawn(d, NULL);
        d->stop_before_exec = false;
        ck_assert_int_eq(waitpid(d->pid, &status, WUNTRACED), d->pid);
        ck_assert(WIFSTOPPED(status));
        /* Traced from where it stopped itself, before exec: the ptrace resumes it, stop by stop. */
        test_daemon_trace(d);
        /* Ends its job-control stop, which would hold it again once it is detached. */
        ck_assert_int_eq(kill(d->pid, SIGCONT), 0);
}

bool test_daemon_ready_sent(TestDaemon *d) {
        char buf[512];
        ssize_t n;

        while ((n = recv(d->notify_fd, buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
                buf[n] = 0;
                record_notify(d, buf);
                if (strstr(buf, "READY=1"))
                        return true;
        }
        return false;
}

bool test_td_ready(void) {
        return test_daemon_ready_sent(&td);
}

static pid_t reloader = -1;

void test_reload_async(void) {
        reloader = fork();
        ck_assert_int_ge(reloader, 0);
        if (reloader == 0) {
                int fd = test_connect(td.socket);
                char c;

                test_send(fd, "{\"op\":\"reload\"}\n", 16);
                (void) read(fd, &c, 1);
                _exit(0);
        }
}

bool test_reload_done(void) {
        int status;

        if (reloader < 0)
                return true;
        if (waitpid(reloader, &status, WNOHANG) != reloader)
                return false;
        reloader = -1;
        return true;
}

void test_reload_wait(void) {
        int status;

        if (reloader >= 0)
                ck_assert_int_eq(waitpid(reloader, &status, 0), reloader);
        reloader = -1;
}

void test_assert_lists(int fd) {
        json_t *resp = test_request(fd, "{\"op\":\"list\"}");

        test_assert_ok(resp);
        json_decref(resp);
}

char test_task_state(pid_t pid, pid_t tid) {
        char path[64], buf[512];
        const char *after;
        FILE *f;
        size_t n;

        if (tid)
                snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int) pid, (int) tid);
        else
                snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return 0;
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        /* The command name may hold spaces and parentheses: the state follows its last ')'. */
        after = strrchr(buf, ')');
        return after && after[1] == ' ' ? after[2] : 0;
}

int test_run(char *out, size_t size, const char *fmt, ...) {
        char cmd[2048];
        va_list ap;
        FILE *p;
        size_t n;
        int status;

        va_start(ap, fmt);
        vsnprintf(cmd, sizeof cmd, fmt, ap);
        va_end(ap);
        p = popen(cmd, "re");
        ck_assert_ptr_nonnull(p);
        n = fread(out, 1, size - 1, p);
        out[n] = 0;
        status = pclose(p);
        ck_assert_msg(WIFEXITED(status), "%s: status %d", cmd, status);
        return WEXITSTATUS(status);
}

bool test_pid_cap_effective(pid_t pid, unsigned cap) {
        unsigned long long caps = 0;
        char path[64], line[256];
        FILE *f;

        if (pid == 0)
                snprintf(path, sizeof path, "/proc/self/status");
        else
                snprintf(path, sizeof path, "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return false;
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "CapEff: %llx", &caps) == 1)
                        break;
        fclose(f);
        return (caps >> cap) & 1;
}

void test_private_mounts(void) {
        ck_assert_msg(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
        ck_assert_msg(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "mount private: %s", strerror(errno));
}

void test_forge_live_holders(RingHolder *table, uint32_t n, uint32_t keep) {
        for (uint32_t i = 0; i < n; i++) {
                if (i == keep)
                        continue;
                table[i].pid = i % 2;
                table[i].pidns = 0;
                table[i].starttime = 0;
                table[i].pidfs_ino = 0;
                __atomic_store_n(&table[i].word, (uint64_t) 9 << 32 | RING_HOLDER_LIVE, __ATOMIC_RELEASE);
        }
}

uint32_t test_only_live_holder(const RingHolder *table, uint32_t n, const char *what) {
        uint32_t found = UINT32_MAX, live = 0, second = 0;

        for (uint32_t i = 0; i < n; i++)
                if ((uint32_t) __atomic_load_n(&table[i].word, __ATOMIC_ACQUIRE) == RING_HOLDER_LIVE) {
                        if (live++ == 0)
                                found = i;
                        else if (live == 2)
                                second = i;
                }
        ck_assert_msg(live != 0, "%s: no LIVE entry of %" PRIu32 ", not one", what, n);
        ck_assert_msg(live == 1, "%s: %" PRIu32 " LIVE entries of %" PRIu32 ", not one (the second, entry %" PRIu32
                      ": pid %d, generation %" PRIu32 ")", what, live, n, second, (int) table[second].pid,
                      (uint32_t) (__atomic_load_n(&table[second].word, __ATOMIC_ACQUIRE) >> 32));
        return found;
}
