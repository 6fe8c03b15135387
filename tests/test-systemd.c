/*
 * The daemon as a systemd service, tested against systemd's protocols
 * rather than systemd itself: a real NOTIFY_SOCKET listener (READY=1 only
 * once the objects exist, STATUS=, RELOADING=1 with MONOTONIC_USEC=,
 * STOPPING=1, WATCHDOG=1, EXTEND_TIMEOUT_USEC=), socket activation through
 * LISTEN_FDS/LISTEN_PID, and journal priority prefixes.
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* After <sys/ptrace.h>: struct ptrace_syscall_info, which glibc does not declare. */
#include <linux/ptrace.h>

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

START_TEST(test_watchdog_pings) {
        int pings = 0;
        char *msg;

        test_daemon_write_config(&td, two_channels);
        setenv("WATCHDOG_USEC", "200000", 1);
        test_start_ok();
        unsetenv("WATCHDOG_USEC");
        /* sd-event pings at half the interval: about 10 in a second. */
        for (time_t end = time(NULL) + 1; time(NULL) <= end;) {
                msg = test_daemon_wait_notify(&td, "WATCHDOG=1", 1000);
                if (!msg)
                        break;
                pings++;
                free(msg);
        }
        ck_assert_msg(pings >= 4, "only %d WATCHDOG=1 in a second", pings);
}
END_TEST

START_TEST(test_no_watchdog_without_watchdog_usec) {
        char *msg;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        msg = test_daemon_wait_notify(&td, "WATCHDOG=1", 500);
        ck_assert_ptr_null(msg);
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

int main(void) {
        /* Check's tests are pointer variables, not constants: the table lives here. */
        const TestGroup groups[] = {
                { "notify", CASE_TIMEOUT, { test_ready_only_after_objects_exist, test_status_follows_clients,
                              test_reload_and_stop_notifications, test_extend_timeout_for_many_channels,
                              test_extend_timeout_again_after_a_slow_second } },
                { "watchdog", CASE_TIMEOUT, { test_watchdog_pings, test_no_watchdog_without_watchdog_usec } },
                { "activation", CASE_TIMEOUT, { test_socket_activation, test_socket_activation_at_another_path_is_named,
                                  test_reclaim_never_connects_to_a_passed_socket } },
                { "journal", CASE_TIMEOUT, { test_journal_priority_prefixes } },
        };

        return test_main("systemd", groups, sizeof groups / sizeof groups[0], setup, test_teardown);
}
