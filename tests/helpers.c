#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/helpers.h"

#define ELEMENTS(x) (sizeof(x) / sizeof((x)[0]))
#define START_TIMEOUT_MS 20000
#define READ_TIMEOUT_MS 5000

int test_require_namespaces(void) {
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

void test_enter_ipc_namespace(void) {
        ck_assert_msg(unshare(CLONE_NEWIPC) == 0, "unshare(CLONE_NEWIPC): %s", strerror(errno));
}

void test_daemon_init(TestDaemon *td) {
        memset(td, 0, sizeof *td);
        td->pid = -1;
        td->notify_fd = -1;
        strcpy(td->dir, "/tmp/shmbroker-test-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(td->dir));
        ck_assert_int_eq(chmod(td->dir, 0755), 0);
        snprintf(td->config, sizeof td->config, "%s/shmbroker.json", td->dir);
        snprintf(td->socket, sizeof td->socket, "%s/shmbroker.sock", td->dir);
        snprintf(td->log, sizeof td->log, "%s/daemon.log", td->dir);
        snprintf(td->notify, sizeof td->notify, "%s/notify", td->dir);
}

void test_daemon_write_raw_config(TestDaemon *td, const char *text) {
        FILE *f = fopen(td->config, "we");

        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        ck_assert_int_eq(fclose(f), 0);
}

void test_daemon_write_config(TestDaemon *td, const char *channels_json) {
        char *text;

        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"channels\": %s}\n",
                                  td->socket, channels_json), 0);
        test_daemon_write_raw_config(td, text);
        free(text);
}

static int open_notify_socket(TestDaemon *td) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        strcpy(sa.sun_path, td->notify);
        unlink(td->notify);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        /* A daemon under test may run unprivileged, as under systemd. */
        ck_assert_int_eq(chmod(td->notify, 0666), 0);
        return fd;
}

static int64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* As systemd's socket activation: a bound, listening socket as fd 3. */
static int pass_listening_socket(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        char pid[16];

        strcpy(sa.sun_path, path);
        unlink(path);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 || listen(fd, 16) < 0)
                return -1;
        if (fd != 3 && (dup2(fd, 3) < 0 || close(fd) < 0))
                return -1;
        snprintf(pid, sizeof pid, "%d", (int) getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", pid, 1);
        return 0;
}

static void record_notify(TestDaemon *td, const char *msg) {
        size_t used = strlen(td->notified);

        snprintf(td->notified + used, sizeof td->notified - used, "%s|", msg);
}

char *test_daemon_wait_notify(TestDaemon *td, const char *what, int timeout_ms) {
        int64_t deadline = now_ms() + timeout_ms;
        char buf[1024];

        while (now_ms() < deadline) {
                struct pollfd p = { .fd = td->notify_fd, .events = POLLIN };
                ssize_t n;

                if (poll(&p, 1, (int) (deadline - now_ms())) <= 0)
                        break;
                n = recv(td->notify_fd, buf, sizeof buf - 1, 0);
                if (n <= 0)
                        continue;
                buf[n] = 0;
                record_notify(td, buf);
                if (strstr(buf, what))
                        return strdup(buf);
        }
        return NULL;
}

bool test_daemon_start(TestDaemon *td, int *ret_status, ...) {
        const char *argv[48];
        char *wrapper = getenv("TEST_DAEMON_WRAPPER") ? strdup(getenv("TEST_DAEMON_WRAPPER")) : NULL;
        int argc = 0, status;
        int64_t deadline;
        va_list ap;

        /* e.g. TEST_DAEMON_WRAPPER="valgrind --error-exitcode=99": run the daemon under it. */
        for (char *w = wrapper ? strtok(wrapper, " ") : NULL; w && argc < 16; w = strtok(NULL, " "))
                argv[argc++] = w;
        argv[argc++] = SHMBROKERD_PATH;
        argv[argc++] = "-c";
        argv[argc++] = td->config;
        va_start(ap, ret_status);
        for (const char *a; (a = va_arg(ap, const char *)) && argc < 47;)
                argv[argc++] = a;
        va_end(ap);
        argv[argc] = NULL;

        if (td->notify_fd < 0)
                td->notify_fd = open_notify_socket(td);
        td->pid = fork();
        ck_assert_int_ge(td->pid, 0);
        if (td->pid == 0) {
                int log = open(td->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

                if (log < 0 || dup2(log, STDERR_FILENO) < 0)
                        _exit(127);
                /* A failed test skips its teardown: the daemon must not outlive it. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
                        _exit(127);
                setenv("NOTIFY_SOCKET", td->notify, 1);
                if (td->activate && pass_listening_socket(td->socket) < 0)
                        _exit(126);
                execvp(argv[0], (char **) argv);
                _exit(127);
        }
        free(wrapper);      /* the child has its own copy */

        deadline = now_ms() + START_TIMEOUT_MS;
        while (now_ms() < deadline) {
                struct pollfd p = { .fd = td->notify_fd, .events = POLLIN };
                char buf[512];

                if (waitpid(td->pid, &status, WNOHANG) == td->pid) {
                        td->pid = -1;
                        if (ret_status)
                                *ret_status = status;
                        return false;
                }
                if (poll(&p, 1, 20) > 0) {
                        ssize_t n = recv(td->notify_fd, buf, sizeof buf - 1, 0);

                        if (n > 0) {
                                buf[n] = 0;
                                record_notify(td, buf);
                                if (!strstr(buf, "READY=1"))
                                        continue;
                                /* Unread datagrams would fill the queue (10) and block the daemon's
                                 * sd_notify(); unless the test reads them, stop listening. */
                                if (!td->keep_notify) {
                                        close(td->notify_fd);
                                        td->notify_fd = -1;
                                        unlink(td->notify);
                                }
                                return true;
                        }
                }
        }
        ck_abort_msg("shmbrokerd sent no READY=1 within %d ms", START_TIMEOUT_MS);
        return false;
}

int test_daemon_kill(TestDaemon *td, int sig) {
        int status = 0;

        ck_assert_int_gt(td->pid, 0);
        ck_assert_int_eq(kill(td->pid, sig), 0);
        ck_assert_int_eq(waitpid(td->pid, &status, 0), td->pid);
        td->pid = -1;
        return status;
}

char *test_daemon_log(const TestDaemon *td) {
        FILE *f = fopen(td->log, "re");
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

void test_daemon_done(TestDaemon *td) {
        if (td->pid > 0) {
                kill(td->pid, SIGKILL);
                waitpid(td->pid, NULL, 0);
                td->pid = -1;
        }
        if (td->notify_fd >= 0)
                close(td->notify_fd);
        td->notify_fd = -1;
        if (td->dir[0])
                nftw(td->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int test_connect(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        strcpy(sa.sun_path, path);
        ck_assert_msg(connect(fd, (struct sockaddr *) &sa, sizeof sa) == 0, "connect %s: %s", path, strerror(errno));
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
        int64_t deadline = now_ms() + READ_TIMEOUT_MS;

        ck_assert_ptr_nonnull(buf);
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int left = (int) (deadline - now_ms());
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
        ck_assert_msg(!strchr(resp, '\n'), "answer spans lines");
        free(resp);
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

void test_assert_ok(json_t *resp) {
        char *text = json_dumps(resp, JSON_COMPACT);

        ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "expected ok, got %s", text);
        free(text);
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

long test_cpu_ticks(pid_t pid) {
        char path[64], buf[1024], *p;
        unsigned long ut, st;
        FILE *f;
        size_t n;

        snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        p = strrchr(buf, ')');
        ck_assert_ptr_nonnull(p);
        /* the fields after the name: state(3) ... utime(14) stime(15) */
        ck_assert_int_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st), 2);
        return (long) (ut + st);
}

void test_write_proc(const char *path, const char *value) {
        FILE *f = fopen(path, "we");

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

void test_drop_privileges(uid_t uid, gid_t gid, gid_t supplementary) {
        if (supplementary ? setgroups(1, &supplementary) : setgroups(0, NULL))
                _exit(90);
        if (setgid(gid) < 0 || setuid(uid) < 0)
                _exit(91);
}

int test_main(const char *suite_name, const TestGroup *groups, size_t n_groups, void (*setup)(void),
              void (*teardown)(void)) {
        Suite *s;
        SRunner *sr;
        int failed, r;

        r = test_require_namespaces();
        if (r)
                return r;
        s = suite_create(suite_name);
        for (size_t g = 0; g < n_groups; g++) {
                TCase *tc = tcase_create(groups[g].name);

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
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
