/*
 * The daemon as a systemd service, tested against systemd's protocols
 * rather than systemd itself: a real NOTIFY_SOCKET listener (READY=1 only
 * once the objects exist, STATUS=, RELOADING=1 with MONOTONIC_USEC=,
 * STOPPING=1, WATCHDOG=1, EXTEND_TIMEOUT_USEC=), socket activation through
 * LISTEN_FDS/LISTEN_PID, and journal priority prefixes.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* After <sys/ptrace.h>: struct ptrace_syscall_info, which glibc does not declare. */
#include <linux/ptrace.h>

#include "daemon/notify.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 30

static const char *const two_channels =
        "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]";


static void setup(void) {
        test_setup();
        td.keep_notify = true;
}

static void assert_notified(const char *what, int timeout_ms) {
        char *got = strstr(td.notified, what) ? strdup(what) : test_daemon_wait_notify(&td, what, timeout_ms);

        ck_assert_msg(got, "no \"%s\" among: %s", what, td.notified);
        free(got);
}

START_TEST(test_ready_only_after_objects_exist) {
        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        /* READY=1 has arrived: every object and the socket must already be there. */
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        ck_assert_int_eq(access(td.socket, F_OK), 0);
        ck_assert_ptr_null(strstr(td.notified, "STOPPING=1"));
        assert_notified("STATUS=2 channels, 0 clients, 0 holds", 2000);
}
END_TEST

START_TEST(test_status_follows_clients) {
        json_t *resp;
        int fd;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"open\",\"channel\":\"a\",\"access\":\"rw\"}");
        json_decref(resp);
        assert_notified("STATUS=2 channels, 1 client, 1 hold", 3000);
        close(fd);
        td.notified[0] = 0;
        assert_notified("STATUS=2 channels, 0 clients, 0 holds", 3000);
}
END_TEST

START_TEST(test_reload_and_stop_notifications) {
        json_t *resp;
        char *msg;
        int fd;
        unsigned long long usec;
        struct timespec ts;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        td.notified[0] = 0;
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        /* The datagrams wait in our socket: nothing read them since the reset. */
        msg = test_daemon_wait_notify(&td, "RELOADING=1", 2000);
        ck_assert_msg(msg, "no RELOADING=1: %s", td.notified);
        /* MONOTONIC_USEC= comes with it, and is CLOCK_MONOTONIC now. */
        ck_assert_ptr_nonnull(strstr(msg, "MONOTONIC_USEC="));
        usec = strtoull(strstr(msg, "MONOTONIC_USEC=") + strlen("MONOTONIC_USEC="), NULL, 10);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ck_assert_uint_le(usec, (unsigned long long) ts.tv_sec * 1000000ULL + ts.tv_nsec / 1000);
        ck_assert_uint_gt(usec + 5000000ULL, (unsigned long long) ts.tv_sec * 1000000ULL + ts.tv_nsec / 1000);
        free(msg);
        assert_notified("READY=1", 2000);
        /* ...in that order. */
        ck_assert(strstr(td.notified, "RELOADING=1") < strstr(td.notified, "READY=1"));

        kill(td.pid, SIGTERM);
        assert_notified("STOPPING=1", 2000);
        close(fd);
}
END_TEST

/* Start the daemon with WATCHDOG_USEC=usec and WATCHDOG_PID=pid in its environment, each unset if NULL. */
static void start_with_watchdog(const char *usec, const char *pid) {
        test_daemon_write_config(&td, two_channels);
        if (usec)
                setenv("WATCHDOG_USEC", usec, 1);
        if (pid)
                setenv("WATCHDOG_PID", pid, 1);
        test_start_ok();
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
}

/* Start the daemon as start_with_watchdog() does; the WATCHDOG=1 it sends in the next ms milliseconds. */
static int watchdog_pings_in(const char *usec, const char *pid, int ms) {
        int pings = 0;

        start_with_watchdog(usec, pid);
        for (int64_t end = test_now_ms() + ms; test_now_ms() < end;) {
                char *msg = test_daemon_wait_notify(&td, "WATCHDOG=1", (int) (end - test_now_ms()));

                if (!msg)
                        break;
                pings++;
                free(msg);
        }
        return pings;
}

START_TEST(test_watchdog_pings) {
        /* A ping at half to three quarters of the interval: 6 to 10 in a second. */
        int pings = watchdog_pings_in("200000", NULL, 1000);

        ck_assert_msg(pings >= 4, "only %d WATCHDOG=1 in a second", pings);
}
END_TEST

START_TEST(test_no_watchdog_without_watchdog_usec) {
        int pings = watchdog_pings_in(NULL, NULL, 500);

        ck_assert_msg(pings == 0, "%d WATCHDOG=1 without WATCHDOG_USEC", pings);
}
END_TEST

/*
 * shmbrokerd(8): WATCHDOG=1 "between half and three quarters of
 * WatchdogSec= after the last". At 2 s: the first within 1.5 s of READY=1,
 * the next 1 to 1.5 s later. The bounds checked are wider (0.6 to 1.9 s),
 * as the test reads each ping when a loaded machine lets it: still before
 * systemd's own bound, WatchdogSec=, and far from a ping at a quarter or
 * at the whole of it.
 */
START_TEST(test_watchdog_between_half_and_three_quarters) {
        int64_t ready, first, second;
        char *msg;

        start_with_watchdog("2000000", NULL);
        ready = test_now_ms();
        msg = test_daemon_wait_notify(&td, "WATCHDOG=1", 3000);
        first = test_now_ms();
        ck_assert_msg(msg, "no WATCHDOG=1 within 3 s of READY=1");
        free(msg);
        ck_assert_msg(first - ready <= 1900, "the first WATCHDOG=1 came %lld ms after READY=1",
                      (long long) (first - ready));
        msg = test_daemon_wait_notify(&td, "WATCHDOG=1", 3000);
        second = test_now_ms();
        ck_assert_msg(msg, "no second WATCHDOG=1 within 3 s of the first");
        free(msg);
        ck_assert_msg(second - first >= 600 && second - first <= 1900, "WATCHDOG=1 %lld ms after the last",
                      (long long) (second - first));
}
END_TEST

/*
 * At a short WatchdogSec= (100 ms) too, each WATCHDOG=1 comes within it of
 * the last (sd-event's default timer accuracy, 250 ms, would not: about 7
 * in 2 s): 14 in 2 s at least, where 26 are due.
 */
START_TEST(test_watchdog_within_a_short_watchdog_usec) {
        int pings = watchdog_pings_in("100000", NULL, 2000);

        ck_assert_msg(pings >= 14, "only %d WATCHDOG=1 in 2 s at WATCHDOG_USEC=100000", pings);
}
END_TEST

/* sd_watchdog_enabled(3): WATCHDOG_PID naming another process means no watchdog for this one. */
START_TEST(test_no_watchdog_for_another_pid) {
        int pings = watchdog_pings_in("100000", "1", 500);

        ck_assert_msg(pings == 0, "%d WATCHDOG=1 although WATCHDOG_PID names another process", pings);
}
END_TEST

START_TEST(test_extend_timeout_for_many_channels) {
        char *channels = malloc(300 * 64 + 16), *p = channels;

        p += sprintf(p, "[");
        for (int i = 0; i < 300; i++)
                p += sprintf(p, "%s{\"name\": \"c%d\", \"size\": 4096}", i ? "," : "", i);
        sprintf(p, "]");
        test_daemon_write_config(&td, channels);
        free(channels);
        test_start_ok();
        ck_assert_msg(strstr(td.notified, "EXTEND_TIMEOUT_USEC="), "notified: %s", td.notified);
        ck_assert_int_eq(test_ipcs_count("-m"), 300);
}
END_TEST

/*
 * A start held up after its first channels (stopped here for more than a
 * second, as a slow kernel might) asks again for more time before the next
 * channel, not only every 64 channels.
 */
START_TEST(test_extend_timeout_again_after_a_slow_second) {
        int shmgets = 0, status = 0;
        const char *p;
        size_t extends = 0;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096},"
                                      " {\"name\": \"c\", \"size\": 4096}, {\"name\": \"d\", \"size\": 4096}]");
        test_daemon_spawn_traced(&td);
        while (shmgets < 2) {
                struct __ptrace_syscall_info info;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                shmgets += info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_shmget;
        }
        /* At the second channel's segment: held longer than a second. */
        usleep(1200 * 1000);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        ck_assert_msg(test_daemon_wait_ready(&td, &status), "no start (%d)", status);
        for (p = td.notified; (p = strstr(p, "EXTEND_TIMEOUT_USEC=")); p++)
                extends++;
        ck_assert_msg(extends >= 2, "%zu EXTEND_TIMEOUT_USEC= in a start held 1.2 s: %s", extends, td.notified);
        ck_assert_ptr_nonnull(strstr(td.notified, "STATUS=Creating channel 3 of 4"));
}
END_TEST

START_TEST(test_socket_activation) {
        struct stat before, after;
        json_t *resp;
        int fd, status;

        test_daemon_write_config(&td, two_channels);
        td.activate = true;
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &before), 0);
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(resp, "channels")), 2);
        json_decref(resp);
        /* A reload leaves its mode to the unit (SocketMode=), and says so. */
        {
                char *text, *log;
                struct stat st;

                ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"socket_mode\": \"0600\", "
                                                 "\"channels\": %s}\n", td.socket, two_channels), 0);
                test_daemon_write_raw_config(&td, text);
                free(text);
                resp = test_request(fd, "{\"op\":\"reload\"}");
                test_assert_ok(resp);
                json_decref(resp);
                ck_assert_int_eq(stat(td.socket, &st), 0);
                ck_assert_uint_eq(st.st_mode & 0777, before.st_mode & 0777);
                log = test_daemon_log(&td);
                ck_assert_msg(strstr(log, "the socket came from systemd"), "not logged:\n%s", log);
                free(log);
        }
        close(fd);
        status = test_daemon_kill(&td, SIGTERM);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* The socket is systemd's: still there, the same inode; the objects are gone. */
        ck_assert_int_eq(stat(td.socket, &after), 0);
        ck_assert_uint_eq(before.st_ino, after.st_ino);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

/*
 * Start td's daemon on two_channels with a listening socket bound at sa,
 * passed as systemd passes it (the test keeps its copy, as systemd does).
 */
static int start_on_passed_socket(const struct sockaddr_un *sa) {
        int listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        ck_assert_int_ge(listen_fd, 0);
        ck_assert_int_eq(bind(listen_fd, (const struct sockaddr *) sa, sizeof *sa), 0);
        ck_assert_int_eq(listen(listen_fd, 16), 0);
        test_daemon_write_config(&td, two_channels);
        td.activate = true;
        td.activate_fd = listen_fd;
        test_start_ok();
        return listen_fd;
}

/*
 * A socket passed at another path than the configuration's "socket" (the
 * unit and the file disagree): the daemon serves it, and its log names
 * that socket, with a warning that the configured path reaches nothing.
 */
START_TEST(test_socket_activation_at_another_path_is_named) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char *log, serving[sizeof sa.sun_path + 64];
        json_t *resp;
        int listen_fd, fd;

        ck_assert_int_lt(snprintf(sa.sun_path, sizeof sa.sun_path, "%s/passed.sock", td.dir), (int) sizeof sa.sun_path);
        listen_fd = start_on_passed_socket(&sa);
        fd = test_connect(sa.sun_path);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        log = test_daemon_log(&td);
        snprintf(serving, sizeof serving, "Serving 2 channel(s) on %s.", sa.sun_path);
        ck_assert_msg(strstr(log, serving), "the log does not name the socket served:\n%s", log);
        ck_assert_msg(strstr(log, "The socket systemd passed is") && strstr(log, td.socket), "no warning:\n%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        td.activate = false;
        td.activate_fd = 0;
        close(listen_fd);
}
END_TEST

/*
 * The same for a socket in the abstract namespace (ListenStream=@NAME in
 * the socket unit), where the configured path reaches nothing either: the
 * start warns, and its log names the socket served, as "@NAME" (as ss(8)
 * and systemd write it), not the configured path, which no client could
 * connect to.
 */
START_TEST(test_socket_activation_on_an_abstract_socket_is_named) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char name[64], serving[128], warning[sizeof td.socket + 128], *log;
        socklen_t len;
        int listen_fd, fd;

        /* A network namespace of this test's own: the abstract name is nobody else's. */
        ck_assert_msg(unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET): %s", strerror(errno));
        snprintf(name, sizeof name, "shmbroker-test-%d", (int) getpid());
        memcpy(sa.sun_path + 1, name, strlen(name));
        len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
        listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(listen_fd, 0);
        ck_assert_int_eq(bind(listen_fd, (struct sockaddr *) &sa, len), 0);
        ck_assert_int_eq(listen(listen_fd, 16), 0);
        test_daemon_write_config(&td, two_channels);
        td.activate = true;
        td.activate_fd = listen_fd;
        test_start_ok();

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *) &sa, len), 0);
        test_assert_lists(fd);
        close(fd);
        log = test_daemon_log(&td);
        snprintf(serving, sizeof serving, "Serving 2 channel(s) on @%s.", name);
        snprintf(warning, sizeof warning, "The socket systemd passed is @%s, not %s", name, td.socket);
        ck_assert_msg(strstr(log, serving), "the log does not name the abstract socket served:\n%s", log);
        ck_assert_msg(strstr(log, warning), "no warning that the configured path reaches nothing:\n%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        td.activate = false;
        td.activate_fd = 0;
        close(listen_fd);
}
END_TEST

/*
 * shmbrokerd(8), CRASH RECLAIM: a start that reclaims a crashed run under
 * its old socket name removes "the socket file itself when that run bound
 * it (not one systemd passed it)", and daemon.c: "Not one systemd passed:
 * a connect to see if it is live could start a service." A run on a
 * socket systemd passed crashes; its file then names another socket, and
 * the next start reclaims the crashed run. The passed socket, which
 * systemd still holds (here: the test, which made it and passed it), must
 * see no connection in its accept queue, and stay.
 */
START_TEST(test_reclaim_never_connects_to_a_passed_socket) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char old_socket[sizeof td.socket], old_lock[sizeof td.socket + 8];
        struct stat before, after;
        int listen_fd, conn;

        /* The listening socket as systemd makes it, and keeps its own reference to. */
        strcpy(sa.sun_path, td.socket);
        listen_fd = start_on_passed_socket(&sa);
        td.activate = false;
        td.activate_fd = 0;
        ck_assert_int_eq(stat(td.socket, &before), 0);
        test_daemon_kill(&td, SIGKILL);

        /* The file moves the socket; the next start (binding its own) reclaims the crashed run. */
        strcpy(old_socket, td.socket);
        ck_assert_int_lt(snprintf(old_lock, sizeof old_lock, "%s.lock", old_socket), (int) sizeof old_lock);
        ck_assert_int_eq(access(old_lock, F_OK), 0);
        ck_assert_int_lt(snprintf(td.socket, sizeof td.socket, "%s/moved.sock", td.dir), (int) sizeof td.socket);
        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        ck_assert_msg(access(old_lock, F_OK) < 0 && errno == ENOENT, "the crashed run was not reclaimed: %s is left",
                      old_lock);
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);

        conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        ck_assert_msg(conn < 0 && errno == EAGAIN, "the reclaim connected to the socket systemd passed (%s)",
                      conn >= 0 ? "a connection was queued" : strerror(errno));
        ck_assert_msg(stat(old_socket, &after) == 0 && after.st_ino == before.st_ino,
                      "the socket systemd passed was removed or replaced");
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        close(listen_fd);
}
END_TEST

/*
 * shmbrokerd(8): READY=1 "once every channel exists and the socket
 * listens". The daemon runs traced, one system call at a time; at each
 * call's exit, while it stands still, the datagrams it sent are read: the
 * moment READY=1 is among them, a connect() must already be queued (a
 * socket only bound gives ECONNREFUSED) and every object exist.
 */
START_TEST(test_ready_only_once_listening) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, r;

        test_daemon_write_config(&td, two_channels);
        test_daemon_spawn_traced(&td);
        for (;;) {
                struct __ptrace_syscall_info info;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op == PTRACE_SYSCALL_INFO_EXIT && test_daemon_ready_sent(&td))
                        break;
        }
        strcpy(sa.sun_path, td.socket);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(fd, 0);
        r = connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0 ? -errno : 0;
        ck_assert_msg(r == 0, "READY=1 came while %s could not take a connection: %s", td.socket, strerror(-r));
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        close(fd);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * shmbrokerd(8), SYSTEMD: READY=1 again after each reload "whether it
 * succeeded or not": systemd, told RELOADING=1, waits for it.
 */
START_TEST(test_ready_after_a_failed_reload) {
        json_t *resp;
        char *msg;
        int fd;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        test_daemon_write_raw_config(&td, "{\"version\": 1, \"channels\": [");
        for (int via_signal = 0; via_signal < 2; via_signal++) {
                td.notified[0] = 0;
                if (via_signal)
                        ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
                else {
                        fd = test_connect(td.socket);
                        resp = test_request(fd, "{\"op\":\"reload\"}");
                        ck_assert_msg(!json_is_true(json_object_get(resp, "ok")), "a broken file reloaded");
                        json_decref(resp);
                        close(fd);
                }
                msg = test_daemon_wait_notify(&td, "RELOADING=1", 3000);
                ck_assert_msg(msg, "no RELOADING=1 (%s): %s", via_signal ? "SIGHUP" : "request", td.notified);
                free(msg);
                msg = strstr(td.notified, "RELOADING=1");
                if (!strstr(msg, "READY=1"))
                        msg = test_daemon_wait_notify(&td, "READY=1", 3000);
                else
                        msg = strdup("READY=1");
                ck_assert_msg(msg, "no READY=1 after a failed reload (%s): %s", via_signal ? "SIGHUP" : "request",
                              td.notified);
                free(msg);
        }
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
}
END_TEST

/* td's daemon, started on sockets the test made as systemd would, must fail with status 1, leaving no object. */
static void assert_activation_refused(const char *what, const char *logged) {
        int status = 0;
        char *log;

        test_daemon_write_config(&td, two_channels);
        td.activate = true;
        ck_assert_msg(!test_daemon_start(&td, &status, NULL), "started on %s", what);
        td.pid = -1;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "on %s: status %d", what, status);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, logged), "on %s, the log does not say \"%s\":\n%s", what, logged, log);
        free(log);
        td.activate = false;
        td.activate_fd = 0;
        td.activate_extra_fd = 0;
}

static int bound_unix(int type, const char *name, bool listening) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_lt(snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", td.dir, name), (int) sizeof sa.sun_path);
        unlink(sa.sun_path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        if (listening)
                ck_assert_int_eq(listen(fd, 16), 0);
        return fd;
}

/* shmbrokerd(8): "exactly one listening Unix stream socket ... (more than one, or another kind, fails the start)". */
START_TEST(test_activation_refuses_two_sockets) {
        int a = bound_unix(SOCK_STREAM, "shmbroker.sock", true), b = bound_unix(SOCK_STREAM, "second.sock", true);

        td.activate_fd = a;
        td.activate_extra_fd = b;
        assert_activation_refused("two listening sockets", "passed 2 sockets");
        close(a);
        close(b);
}
END_TEST

START_TEST(test_activation_refuses_other_kinds) {
        int dgram = bound_unix(SOCK_DGRAM, "shmbroker.sock", false), pipefd[2];
        int unlistened = bound_unix(SOCK_STREAM, "unlistened.sock", false);
        int seqpacket = bound_unix(SOCK_SEQPACKET, "seqpacket.sock", true);

        td.activate_fd = dgram;
        assert_activation_refused("a datagram socket", "not a listening Unix stream socket");
        td.activate_fd = unlistened;
        assert_activation_refused("a stream socket that does not listen", "not a listening Unix stream socket");
        td.activate_fd = seqpacket;
        assert_activation_refused("a seqpacket socket", "not a listening Unix stream socket");
        ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
        td.activate_fd = pipefd[0];
        assert_activation_refused("a pipe", "not a listening Unix stream socket");
        close(pipefd[0]);
        close(pipefd[1]);
        close(dgram);
        close(unlistened);
        close(seqpacket);
}
END_TEST

/*
 * LISTEN_PID names another process: the descriptors are not the daemon's
 * (sd_listen_fds(3)), so it binds the configured socket itself and never
 * serves the one at fd 3.
 */
START_TEST(test_activation_for_another_pid_is_ignored) {
        int passed = bound_unix(SOCK_STREAM, "passed.sock", true), conn;
        char path[sizeof td.dir + 16];
        json_t *resp;
        int fd;
        char *log;

        test_daemon_write_config(&td, two_channels);
        td.activate = true;
        td.activate_fd = passed;
        td.activate_other_pid = true;
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        snprintf(path, sizeof path, "%s/passed.sock", td.dir);
        fd = test_connect(path);
        conn = accept4(passed, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        ck_assert_msg(conn >= 0, "the daemon took the socket passed for another process");
        close(conn);
        close(fd);
        log = test_daemon_log(&td);
        ck_assert_msg(!strstr(log, "The socket systemd passed"), "log:\n%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(access(td.socket, F_OK), -1);
        td.activate = false;
        td.activate_fd = 0;
        td.activate_other_pid = false;
        close(passed);
}
END_TEST

/*
 * A NOTIFY_SOCKET whose reader stops reading (a stuck or busy service
 * manager; net.unix.max_dgram_qlen is 10 by default): status, reload and
 * watchdog datagrams pile up. That must not stop the daemon serving its
 * clients, nor stopping on SIGTERM.
 */
START_TEST(test_stuck_notify_reader_does_not_stall_serving) {
        json_t *resp;
        int fd, status;

        test_daemon_write_config(&td, two_channels);
        setenv("WATCHDOG_USEC", "100000", 1);
        test_start_ok();
        unsetenv("WATCHDOG_USEC");
        /* From here on nobody reads td.notify_fd: 20 reloads send 60 datagrams, the watchdog 20 a second. */
        fd = test_connect(td.socket);
        for (int i = 0; i < 20; i++) {
                resp = test_request(fd, "{\"op\":\"reload\"}");
                test_assert_ok(resp);
                json_decref(resp);
        }
        close(fd);
        status = test_daemon_kill(&td, SIGTERM);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
END_TEST

/* Start on two_channels and read the start's STATUS= messages, until none came for 200 ms. */
static void start_quiet(void) {
        char *msg;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        while ((msg = test_daemon_wait_notify(&td, "STATUS=", 200)))
                free(msg);
}

/* Send filler datagrams to the notify socket at path until its queue is full: the filler socket, connected. */
static int fill_notify_queue(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), n = 0;

        ck_assert_int_ge(fd, 0);
        ck_assert_uint_lt(strlen(path), sizeof sa.sun_path);
        strcpy(sa.sun_path, path);
        ck_assert_int_eq(connect(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        while (send(fd, "FILLER=1", 8, MSG_DONTWAIT) == 8)
                ck_assert_int_lt(++n, 100000);
        ck_assert_int_eq(errno, EAGAIN);
        ck_assert_int_gt(n, 0);
        return fd;
}

/*
 * Read fd's datagrams for up to timeout_ms, appending them to seen
 * ('|'-separated), until one holds what: whether one did.
 */
static bool wait_datagram(int fd, const char *what, int timeout_ms, char *seen, size_t size) {
        for (int64_t deadline = test_now_ms() + timeout_ms; test_now_ms() < deadline;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[1024];
                ssize_t n;

                if (poll(&p, 1, 100) <= 0)
                        continue;
                n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
                if (n <= 0)
                        continue;
                buf[n] = 0;
                snprintf(seen + strlen(seen), size - strlen(seen), "%s|", buf);
                if (strstr(buf, what))
                        return true;
        }
        return false;
}

/*
 * A manager whose queue is full for longer than the second READY=1 waits
 * (busy, as in a daemon-reload) must still get READY=1 once it has room:
 * systemd waits for it, and kills a Type=notify service that never sends
 * it at TimeoutStartSec=. The queue is full from before the start until
 * the daemon serves (so its READY=1 found no room), then drained.
 */
START_TEST(test_ready_once_a_full_notify_queue_drains) {
        char path[sizeof td.dir + 32], seen[8192] = "";
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), filler, c;
        int64_t deadline = test_now_ms() + 10000;

        ck_assert_int_ge(fd, 0);
        snprintf(path, sizeof path, "%s/busy-notify", td.dir);
        strcpy(sa.sun_path, path);
        unlink(path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        filler = fill_notify_queue(path);
        test_daemon_write_config(&td, two_channels);
        td.notify_env = path;
        test_daemon_spawn(&td, NULL);
        /* A list answered: the loop runs, so READY=1 has been tried (before the loop) and found no room. */
        while ((c = test_try_connect(td.socket)) < 0) {
                ck_assert_msg(test_now_ms() < deadline, "the socket never listened");
                usleep(10 * 1000);
        }
        test_assert_lists(c);
        close(c);
        /* Room now: whatever the daemon sends next, READY=1 must come. */
        ck_assert_msg(wait_datagram(fd, "READY=1", 5000, seen, sizeof seen),
                      "no READY=1 once the queue had room: %s", seen);
        test_daemon_stop_ok(&td);
        td.notify_env = NULL;
        close(filler);
        close(fd);
}
END_TEST

/*
 * RELOADING=1 takes the queue's last place, its READY=1 finds no room:
 * systemd, told RELOADING=1, waits for READY=1 (and fails the reload at
 * its timeout), so it must come once there is room.
 */
START_TEST(test_ready_after_reloading_once_a_full_notify_queue_drains) {
        char buf[1024];
        char *msg;
        json_t *resp;
        int filler, fd;

        start_quiet();
        filler = fill_notify_queue(td.notify);
        ck_assert_int_eq(recv(td.notify_fd, buf, sizeof buf, MSG_DONTWAIT), 8);  /* one place for RELOADING=1 */
        td.notified[0] = 0;
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        msg = test_daemon_wait_notify(&td, "READY=1", 5000);
        ck_assert_msg(msg, "RELOADING=1 without READY=1: %s", td.notified);
        free(msg);
        ck_assert_msg(strstr(td.notified, "RELOADING=1") && strstr(td.notified, "RELOADING=1") < strstr(td.notified, "READY=1"),
                      "not RELOADING=1 then READY=1: %s", td.notified);
        close(fd);
        close(filler);
}
END_TEST

/* Whether pid sits in poll() or ppoll(): notify.c waiting for room (the loop's own wait is epoll_wait()). */
static bool in_poll(pid_t pid) {
        char path[64], buf[64] = "";
        long nr = -1;
        FILE *f;

        snprintf(path, sizeof path, "/proc/%d/syscall", (int) pid);
        /* Unreadable would read as "not in poll()", and the waits asserting that could not fail. */
        f = fopen(path, "re");
        ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
        ck_assert_msg(fgets(buf, sizeof buf, f) != NULL, "%s: empty", path);
        nr = strtol(buf, NULL, 10);
        fclose(f);
#ifdef SYS_poll
        if (nr == SYS_poll)
                return true;
#endif
        return nr == SYS_ppoll;
}

/* Read td's notify socket empty. */
static void drain_notify(void) {
        char buf[1024];
        ssize_t n;

        while ((n = recv(td.notify_fd, buf, sizeof buf - 1, MSG_DONTWAIT)) >= 0) {
                buf[n] = 0;
                if (strcmp(buf, "FILLER=1"))
                        snprintf(td.notified + strlen(td.notified), sizeof td.notified - strlen(td.notified), "%s|", buf);
        }
}

/*
 * shmbrokerd(8): a state change "waits up to a second for room, and only
 * while no earlier one waited in vain": after one waited in vain, a send
 * that goes through ends that, and the next state change waits again (its
 * RELOADING=1 comes once the test makes room while the daemon waits).
 */
START_TEST(test_state_change_waits_for_room_again_after_a_send_goes_through) {
        char *msg;
        int filler, fd, r;
        json_t *resp;

        start_quiet();
        fd = test_connect(td.socket);
        /* A reload into a full queue: its RELOADING=1 waits in vain. */
        filler = fill_notify_queue(td.notify);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        /* Room again: the next STATUS= (the connection changed the figures) goes through. */
        drain_notify();
        td.notified[0] = 0;
        msg = test_daemon_wait_notify(&td, "STATUS=", 5000);
        ck_assert_msg(msg, "no STATUS= once the queue had room: %s", td.notified);
        free(msg);
        /* Full again; a reload; room made while its RELOADING=1 waits. */
        close(filler);
        filler = fill_notify_queue(td.notify);
        test_send(fd, "{\"op\":\"reload\"}\n", strlen("{\"op\":\"reload\"}\n"));
        for (int64_t deadline = test_now_ms() + 5000; !in_poll(td.pid);) {
                struct pollfd p = { .fd = fd, .events = POLLIN };

                r = poll(&p, 1, 1);
                ck_assert_msg(r == 0, "the reload was answered and its RELOADING=1 did not wait for room");
                ck_assert_msg(test_now_ms() < deadline, "the daemon never waited for room");
        }
        td.notified[0] = 0;
        drain_notify();
        msg = strstr(td.notified, "RELOADING=1") ? strdup("RELOADING=1") :
                                                    test_daemon_wait_notify(&td, "RELOADING=1", 3000);
        ck_assert_msg(msg, "RELOADING=1 did not wait for room: %s", td.notified);
        free(msg);
        resp = test_request(fd, "{\"op\":\"list\"}");   /* after the reload's answer */
        json_decref(resp);
        close(fd);
        close(filler);
}
END_TEST

/* shmbrokerd(8): STOPPING=1 is a state change: it too waits (up to a second) for room. */
START_TEST(test_stopping_waits_for_room) {
        int filler, status;
        pid_t pid;
        char *msg;

        start_quiet();
        filler = fill_notify_queue(td.notify);
        ck_assert_int_eq(kill(td.pid, SIGTERM), 0);
        for (int64_t deadline = test_now_ms() + 5000; !in_poll(td.pid);) {
                ck_assert_msg(waitpid(td.pid, &status, WNOHANG) == 0, "the daemon stopped without waiting for room");
                ck_assert_msg(test_now_ms() < deadline, "the daemon never waited for room");
                usleep(1000);
        }
        td.notified[0] = 0;
        drain_notify();
        msg = strstr(td.notified, "STOPPING=1") ? strdup("STOPPING=1") : test_daemon_wait_notify(&td, "STOPPING=1", 3000);
        ck_assert_msg(msg, "STOPPING=1 did not wait for room: %s", td.notified);
        free(msg);
        pid = td.pid;
        td.pid = -1;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
        close(filler);
}
END_TEST

/* WATCHDOG=1 is no state change: finding the queue full, the loop goes on at once, it never waits for room. */
START_TEST(test_watchdog_never_waits_for_room) {
        json_t *resp;
        char *msg;
        int filler, fd;

        test_daemon_write_config(&td, two_channels);
        setenv("WATCHDOG_USEC", "100000", 1);
        test_start_ok();
        unsetenv("WATCHDOG_USEC");
        msg = test_daemon_wait_notify(&td, "WATCHDOG=1", 2000);
        ck_assert_ptr_nonnull(msg);
        free(msg);
        filler = fill_notify_queue(td.notify);
        /* 10 pings fall due meanwhile. */
        for (int64_t end = test_now_ms() + 1000; test_now_ms() < end; usleep(2000))
                ck_assert_msg(!in_poll(td.pid), "the loop waits for room for WATCHDOG=1");
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        json_decref(resp);
        close(fd);
        close(filler);
}
END_TEST

/*
 * Run td's traced daemon until a send() of a datagram holding what fails
 * with EAGAIN, then detach it. Traced, the daemon is seen trying: no guess
 * of when the figures fall due.
 */
static void run_until_send_dropped(const char *what) {
        for (;;) {
                struct __ptrace_syscall_info info;
                char buf[256] = "";
                struct iovec local = { buf, sizeof buf - 1 }, remote;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY || info.entry.nr != SYS_sendto)
                        continue;
                remote = (struct iovec) { (void *) (uintptr_t) info.entry.args[1],
                                          info.entry.args[2] < sizeof buf - 1 ? info.entry.args[2] : sizeof buf - 1 };
                ck_assert_int_ge(process_vm_readv(td.pid, &local, 1, &remote, 1, 0), 0);
                if (!strstr(buf, what))
                        continue;
                ck_assert(test_next_syscall_stop(td.pid));
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                ck_assert_int_eq(info.op, PTRACE_SYSCALL_INFO_EXIT);
                ck_assert_msg(info.exit.rval == -EAGAIN, "\"%s\" sent into a full queue: %lld", buf,
                              (long long) info.exit.rval);
                break;
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
}

/* The datagrams waiting on fd, each followed by '|'. */
static void read_datagrams(int fd, char *seen, size_t size) {
        char buf[1024];
        ssize_t n;

        seen[0] = 0;
        while ((n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT)) >= 0) {
                buf[n] = 0;
                if (strcmp(buf, "FILLER=1"))
                        snprintf(seen + strlen(seen), size - strlen(seen), "%s|", buf);
        }
        ck_assert_int_eq(errno, EAGAIN);
}

/*
 * notify.h, at the unit level: a state change dropped for want of room is
 * sent before the next message, unless a newer state change replaced it.
 * A RELOADING=1 sent again after its READY=1 would tell systemd that the
 * daemon is reloading again, with no READY=1 to follow. One that cannot be
 * sent for another reason than room is given up.
 */
START_TEST(test_dropped_state_change_goes_first_unless_replaced) {
        char path[sizeof td.dir + 32], seen[4096];
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), filler, r;

        ck_assert_int_ge(fd, 0);
        snprintf(path, sizeof path, "%s/unit-notify", td.dir);
        ck_assert_uint_lt(strlen(path), sizeof sa.sun_path);
        strcpy(sa.sun_path, path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", path, 1), 0);

        /* Replaced: RELOADING=1 finds no room, READY=1 goes through; nothing is left to send. */
        filler = fill_notify_queue(path);
        ck_assert_int_eq(notify_send(true, "RELOADING=1"), -EAGAIN);
        read_datagrams(fd, seen, sizeof seen);
        ck_assert_str_eq(seen, "");
        ck_assert_int_eq(notify_send(true, "READY=1"), 0);
        ck_assert_int_eq(notify_flush(), 0);
        ck_assert_int_eq(notify_send(false, "STATUS=after"), 0);
        read_datagrams(fd, seen, sizeof seen);
        ck_assert_str_eq(seen, "READY=1|STATUS=after|");

        /* Not replaced: the dropped RELOADING=1 goes before the next message, and only once. */
        close(filler);
        filler = fill_notify_queue(path);
        ck_assert_int_eq(notify_send(true, "RELOADING=1"), -EAGAIN);
        read_datagrams(fd, seen, sizeof seen);
        ck_assert_str_eq(seen, "");
        ck_assert_int_eq(notify_send(false, "STATUS=next"), 0);
        ck_assert_int_eq(notify_flush(), 0);
        read_datagrams(fd, seen, sizeof seen);
        ck_assert_str_eq(seen, "RELOADING=1|STATUS=next|");

        /* Given up (notify.h): a flush that fails other than for room leaves nothing to send later. */
        close(filler);
        filler = fill_notify_queue(path);
        ck_assert_int_eq(notify_send(true, "RELOADING=1"), -EAGAIN);
        close(fd);
        ck_assert_int_eq(unlink(path), 0);
        r = notify_flush();
        ck_assert_msg(r < 0 && r != -EAGAIN, "notify_flush() = %d with no receiver", r);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        ck_assert_int_eq(notify_send(false, "STATUS=again"), 0);
        read_datagrams(fd, seen, sizeof seen);
        ck_assert_str_eq(seen, "STATUS=again|");

        ck_assert_int_eq(unsetenv("NOTIFY_SOCKET"), 0);
        close(filler);
        close(fd);
}
END_TEST

/*
 * A STATUS= that found the queue full is not taken as said: the figures go
 * again a second later, until they go through, with no client coming or
 * going meanwhile (shmbrokerd(8): "tried again each second").
 */
START_TEST(test_dropped_status_is_sent_again) {
        static const char open_a[] = "{\"op\":\"open\",\"channel\":\"a\",\"access\":\"rw\"}\n";
        json_t *resp;
        char *line;
        int filler, fd;

        start_quiet();
        filler = fill_notify_queue(td.notify);
        fd = test_connect(td.socket);
        test_daemon_trace(&td);
        test_send(fd, open_a, strlen(open_a));
        run_until_send_dropped("STATUS=2 channels, 1 client, 1 hold");
        line = test_read_line(fd);
        resp = json_loads(line, 0, NULL);
        free(line);
        test_assert_ok(resp);
        json_decref(resp);
        td.notified[0] = 0;
        drain_notify();
        ck_assert_msg(!strstr(td.notified, "1 client"), "STATUS= went into a full queue: %s", td.notified);
        assert_notified("STATUS=2 channels, 1 client, 1 hold", 3000);
        close(fd);
        close(filler);
}
END_TEST

static size_t count_fds(pid_t pid) {
        char path[64];
        struct dirent *e;
        size_t n = 0;
        DIR *dir;

        snprintf(path, sizeof path, "/proc/%d/fd", (int) pid);
        dir = opendir(path);
        ck_assert_ptr_nonnull(dir);
        while ((e = readdir(dir)))
                n += e->d_name[0] != '.';
        closedir(dir);
        return n;
}

/* notify.c opens a socket per message: none of them stays open, sent or not. */
START_TEST(test_notifications_leave_no_descriptor_open) {
        json_t *resp;
        size_t before;
        int fd, filler;
        char *msg;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        json_decref(resp);
        before = count_fds(td.pid);
        for (int i = 0; i < 10; i++) {
                resp = test_request(fd, "{\"op\":\"reload\"}");
                test_assert_ok(resp);
                json_decref(resp);
                msg = test_daemon_wait_notify(&td, "READY=1", 3000);
                ck_assert_ptr_nonnull(msg);
                free(msg);
        }
        /* And into a full queue. */
        filler = fill_notify_queue(td.notify);
        for (int i = 0; i < 3; i++) {
                resp = test_request(fd, "{\"op\":\"reload\"}");
                test_assert_ok(resp);
                json_decref(resp);
        }
        ck_assert_uint_eq(count_fds(td.pid), before);
        close(filler);
        close(fd);
}
END_TEST

/* td's daemon, spawned: wait until its socket answers a list (no READY=1 to wait for), then reload it and stop it. */
static void assert_serves_without_notify(const char *what) {
        int64_t deadline = test_now_ms() + 10000;
        json_t *resp;
        int fd, status;

        test_daemon_spawn(&td, NULL);
        while ((fd = test_try_connect(td.socket)) < 0) {
                ck_assert_msg(test_now_ms() < deadline, "with NOTIFY_SOCKET %s, the socket never listened", what);
                ck_assert_msg(waitpid(td.pid, &status, WNOHANG) == 0, "with NOTIFY_SOCKET %s, the daemon ended (%d)",
                              what, status);
                usleep(10 * 1000);
        }
        test_assert_lists(fd);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
}

/* NOTIFY_SOCKET naming nothing, or a socket that takes no datagrams: the daemon serves as without it. */
START_TEST(test_odd_notify_sockets) {
        char missing[sizeof td.dir + 32];
        int stream = bound_unix(SOCK_STREAM, "stream-notify", true);

        test_daemon_write_config(&td, two_channels);
        snprintf(missing, sizeof missing, "%s/no-such-notify", td.dir);
        td.notify_env = missing;
        assert_serves_without_notify("naming nothing");
        snprintf(missing, sizeof missing, "%s/stream-notify", td.dir);
        assert_serves_without_notify("naming a stream socket");
        td.notify_env = "relative/notify";
        assert_serves_without_notify("not absolute");
        td.notify_env = NULL;
        close(stream);
}
END_TEST

/* NOTIFY_SOCKET in the abstract namespace ("@name"), as some managers use: READY=1 comes there. */
START_TEST(test_abstract_notify_socket) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char env[64], buf[512];
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), n;
        size_t len;
        bool ready = false;

        ck_assert_int_ge(fd, 0);
        snprintf(env, sizeof env, "@shmbroker-test-notify-%d", (int) getpid());
        len = strlen(env);
        memcpy(sa.sun_path + 1, env + 1, len - 1);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len)), 0);
        test_daemon_write_config(&td, two_channels);
        td.notify_env = env;
        test_daemon_spawn(&td, NULL);
        for (int64_t deadline = test_now_ms() + 10000; !ready && test_now_ms() < deadline;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };

                if (poll(&p, 1, 100) <= 0)
                        continue;
                n = (int) recv(fd, buf, sizeof buf - 1, 0);
                if (n > 0) {
                        buf[n] = 0;
                        ready = strstr(buf, "READY=1") != NULL;
                }
        }
        ck_assert_msg(ready, "no READY=1 on the abstract socket %s", env);
        test_daemon_stop_ok(&td);
        td.notify_env = NULL;
        close(fd);
}
END_TEST

/* Count the occurrences of what in text. */
static size_t count_of(const char *text, const char *what) {
        size_t n = 0;

        for (const char *p = text; (p = strstr(p, what)); p++)
                n++;
        return n;
}

/*
 * shmbrokerd(8): STATUS= "updated when the figures change, at most once a
 * second" (the receiver's queue is short). A client more every 30 ms for
 * 1.5 s: one STATUS= at least, three at most (the window may straddle two
 * seconds' boundaries), and the last figures come after.
 */
START_TEST(test_status_at_most_once_a_second) {
        enum { CLIENTS = 50 };
        int fds[CLIENTS];
        char last[64];
        size_t statuses;
        char *msg;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        /* Whatever the start sent: not counted. */
        while ((msg = test_daemon_wait_notify(&td, "STATUS=", 200)))
                free(msg);
        td.notified[0] = 0;
        /* A new client every 30 ms, each one kept: the figures change all the time. */
        for (int i = 0; i < CLIENTS; i++) {
                fds[i] = test_connect(td.socket);
                test_assert_lists(fds[i]);
                free(test_daemon_wait_notify(&td, "no such thing", 30));
        }
        statuses = count_of(td.notified, "STATUS=");
        ck_assert_msg(statuses >= 1 && statuses <= 3, "%zu STATUS= in 1.5 s: %s", statuses, td.notified);
        snprintf(last, sizeof last, "STATUS=2 channels, %d clients, 0 holds", CLIENTS);
        assert_notified(last, 3000);
        for (int i = 0; i < CLIENTS; i++)
                close(fds[i]);
}
END_TEST

/*
 * A storm of SIGHUPs over reloads that replace hundreds of channels each,
 * then SIGTERM while reloads are still due: every RELOADING=1 gets its
 * READY=1, STOPPING=1 comes, the daemon exits 0 and leaves no object.
 */
START_TEST(test_sighup_storm_then_sigterm) {
        enum { N = 400 };
        char *channels[2], *msg;
        int status = 0;
        pid_t pid;

        for (int k = 0; k < 2; k++) {
                char *p = channels[k] = malloc(N * 64 + 16);

                ck_assert_ptr_nonnull(p);
                p += sprintf(p, "[");
                for (int i = 0; i < N; i++)
                        p += sprintf(p, "%s{\"name\": \"c%d\", \"size\": %d}", i ? "," : "", i, 4096 * (k + 1));
                sprintf(p, "]");
        }
        test_daemon_write_config(&td, channels[0]);
        test_start_ok();
        td.notified[0] = 0;
        for (int i = 0; i < 60; i++) {
                test_daemon_write_config(&td, channels[(i + 1) % 2]);
                ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
                free(test_daemon_wait_notify(&td, "no such thing", 2));
        }
        ck_assert_int_eq(kill(td.pid, SIGTERM), 0);
        msg = test_daemon_wait_notify(&td, "STOPPING=1", 10000);
        ck_assert_msg(msg, "no STOPPING=1 after a SIGHUP storm");
        free(msg);
        pid = td.pid;
        td.pid = -1;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
        ck_assert_msg(count_of(td.notified, "RELOADING=1") >= 1, "no reload in the storm: %s", td.notified);
        ck_assert_msg(count_of(td.notified, "RELOADING=1") == count_of(td.notified, "READY=1"),
                      "%zu RELOADING=1 but %zu READY=1", count_of(td.notified, "RELOADING=1"),
                      count_of(td.notified, "READY=1"));
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        free(channels[0]);
        free(channels[1]);
}
END_TEST

START_TEST(test_journal_priority_prefixes) {
        struct stat st;
        char env[64], *log;
        int fd;

        test_daemon_write_config(&td, two_channels);
        /* Make the daemon believe its stderr is the journal's stream. */
        fd = open(td.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &st), 0);
        close(fd);
        snprintf(env, sizeof env, "%llu:%llu", (unsigned long long) st.st_dev, (unsigned long long) st.st_ino);
        setenv("JOURNAL_STREAM", env, 1);
        test_start_ok();
        unsetenv("JOURNAL_STREAM");
        test_daemon_stop_ok(&td);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "<6>Serving 2 channel(s)"), "log: %s", log);
        ck_assert_ptr_null(strstr(log, "shmbrokerd: "));
        free(log);
}
END_TEST

/*
 * shmbrokerd(8), SYSTEMD: during a reload STATUS= says "Reloading PATH"
 * (the file it re-reads, with RELOADING=1, so that systemctl status shows
 * what the daemon is busy with), and STOPPING=1 comes "on SIGTERM or
 * SIGINT": a ^C stops it as systemd's SIGTERM does, exit 0.
 */
START_TEST(test_reloading_status_names_the_file_and_sigint_sends_stopping) {
        char want[sizeof td.config + 32], *msg;
        int status;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        td.notified[0] = 0;
        ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
        msg = test_daemon_wait_notify(&td, "RELOADING=1", 3000);
        ck_assert_msg(msg, "no RELOADING=1: %s", td.notified);
        snprintf(want, sizeof want, "STATUS=Reloading %s", td.config);
        ck_assert_msg(strstr(msg, want), "RELOADING=1 came without \"%s\": %s", want, msg);
        free(msg);
        assert_notified("READY=1", 3000);
        td.notified[0] = 0;
        status = test_daemon_kill(&td, SIGINT);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d after SIGINT", status);
        /* Sent before the daemon exited: it waits in our socket. */
        assert_notified("STOPPING=1", 1000);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
}
END_TEST

/* JOURNAL_STREAM as systemd sets it, naming the file at path ("dev:ino"). */
static void journal_stream_names(const char *path) {
        struct stat st;
        char env[64];
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &st), 0);
        close(fd);
        snprintf(env, sizeof env, "%llu:%llu", (unsigned long long) st.st_dev, (unsigned long long) st.st_ino);
        ck_assert_int_eq(setenv("JOURNAL_STREAM", env, 1), 0);
}

/*
 * shmbrokerd(8), LOGGING: the <N> prefix only "when standard error is the
 * journal (systemd's JOURNAL_STREAM names it)": a unit whose stdout goes
 * to the journal and stderr to a file (StandardError=file:...) has
 * JOURNAL_STREAM name stdout, and the file gets "shmbrokerd: " lines. And
 * "configuration and start errors at error level": under the journal, a
 * broken file's message is <3>, which journalctl -p err shows.
 */
START_TEST(test_journal_prefix_only_on_the_journal_and_errors_at_err) {
        char other[sizeof td.dir + 16], *log;
        int status = 0;

        test_daemon_write_config(&td, two_channels);
        ck_assert_int_lt(snprintf(other, sizeof other, "%s/stdout", td.dir), (int) sizeof other);
        journal_stream_names(other);
        test_start_ok();
        unsetenv("JOURNAL_STREAM");
        test_daemon_stop_ok(&td);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "shmbrokerd: Serving 2 channel(s)") && !strstr(log, "<6>"),
                      "JOURNAL_STREAM named another file than stderr; the log:\n%s", log);
        free(log);

        ck_assert_int_eq(truncate(td.log, 0), 0);
        test_daemon_write_raw_config(&td, "{\"version\": 1, \"channels\": [");
        journal_stream_names(td.log);
        ck_assert_msg(!test_daemon_start(&td, &status, NULL), "started on a broken file");
        unsetenv("JOURNAL_STREAM");
        td.pid = -1;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
        log = test_daemon_log(&td);
        ck_assert_msg(strncmp(log, "<3>", 3) == 0, "a broken file is not logged at error level:\n%s", log);
        free(log);
}
END_TEST

int main(void) {
        /* Check's tests are pointer variables, not constants: the table lives here. */
        const TestGroup groups[] = {
                { "notify", CASE_TIMEOUT, { test_ready_only_after_objects_exist, test_status_follows_clients,
                              test_reload_and_stop_notifications, test_extend_timeout_for_many_channels,
                              test_extend_timeout_again_after_a_slow_second, test_ready_only_once_listening,
                              test_ready_after_a_failed_reload, test_stuck_notify_reader_does_not_stall_serving,
                              test_sighup_storm_then_sigterm, test_status_at_most_once_a_second,
                              test_ready_once_a_full_notify_queue_drains,
                              test_ready_after_reloading_once_a_full_notify_queue_drains } },
                { "notify-signals", CASE_TIMEOUT, { test_reloading_status_names_the_file_and_sigint_sends_stopping } },
                { "watchdog", CASE_TIMEOUT, { test_watchdog_pings, test_no_watchdog_without_watchdog_usec,
                                          test_watchdog_between_half_and_three_quarters,
                                          test_watchdog_within_a_short_watchdog_usec,
                                          test_no_watchdog_for_another_pid } },
                { "activation", CASE_TIMEOUT, { test_socket_activation, test_socket_activation_at_another_path_is_named,
                                  test_reclaim_never_connects_to_a_passed_socket, test_activation_refuses_two_sockets,
                                  test_activation_refuses_other_kinds, test_activation_for_another_pid_is_ignored,
                                  test_socket_activation_on_an_abstract_socket_is_named } },
                { "journal", CASE_TIMEOUT, { test_journal_priority_prefixes,
                                             test_journal_prefix_only_on_the_journal_and_errors_at_err } },
                { "notify-socket", CASE_TIMEOUT, { test_odd_notify_sockets, test_abstract_notify_socket,
                                     test_state_change_waits_for_room_again_after_a_send_goes_through,
                                     test_notifications_leave_no_descriptor_open, test_stopping_waits_for_room,
                                     test_watchdog_never_waits_for_room, test_dropped_status_is_sent_again,
                                     test_dropped_state_change_goes_first_unless_replaced } },
        };

        return test_main("systemd", groups, sizeof groups / sizeof groups[0], setup, test_teardown);
}
