/*
 * End-to-end tests: the real shmbrokerd, forked in a private IPC namespace
 * per test, spoken to over its real socket. What the kernel holds is read
 * back with IPC_STAT/GETALL and counted with util-linux ipcs.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/sockios.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/channel.h"
#include "proto/ring.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 30
#define SCALE_TIMEOUT 15    /* far more than linear work needs, far less than quadratic work takes */

/* Two channels: a raw one with a fixed key and a ring with a derived key. */
static const char *const two_channels =
        "[{\"name\": \"telemetry\", \"size\": 65536, \"semaphores\": [1, 0, 7], \"group\": 100, \"mode\": \"0640\","
        "  \"key\": 1593835521},"
        " {\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 1024, \"slots\": 8, \"mode\": \"0660\"}]";


/* What the kernel says about a channel matches the config and the answer. */
static void assert_kernel_objects(json_t *ch, size_t size, uid_t uid, gid_t gid, mode_t mode,
                                  const unsigned short *values, unsigned nsems) {
        struct shmid_ds shm;
        struct semid_ds sem;
        unsigned short got[64];

        ck_assert_int_eq(shmctl((int) test_jint(ch, "shm_id"), IPC_STAT, &shm), 0);
        ck_assert_uint_eq(shm.shm_segsz, size);
        ck_assert_uint_eq((uint32_t) shm.shm_perm.__key, (uint32_t) test_jint(ch, "shm_key"));
        ck_assert_uint_eq(shm.shm_perm.uid, uid);
        ck_assert_uint_eq(shm.shm_perm.gid, gid);
        ck_assert_uint_eq(shm.shm_perm.mode & 0777, mode);

        ck_assert_int_eq(semctl((int) test_jint(ch, "sem_id"), 0, IPC_STAT, &sem), 0);
        ck_assert_uint_eq(sem.sem_nsems, nsems);
        ck_assert_uint_eq((uint32_t) sem.sem_perm.__key, (uint32_t) test_jint(ch, "sem_key"));
        ck_assert_uint_eq(sem.sem_perm.uid, uid);
        ck_assert_uint_eq(sem.sem_perm.gid, gid);
        ck_assert_uint_eq(sem.sem_perm.mode & 0777, mode);
        ck_assert_int_eq(semctl((int) test_jint(ch, "sem_id"), 0, GETALL, got), 0);
        for (unsigned i = 0; i < nsems; i++)
                ck_assert_msg(got[i] == values[i], "semaphore %u is %u, expected %u", i, got[i], values[i]);
}

START_TEST(test_list_matches_kernel) {
        static const unsigned short tel[] = { 1, 0, 7 }, ring[] = { 1 };
        uint8_t secret[16];
        json_t *resp, *ch;
        int fd;

        test_daemon_write_config(&td, two_channels);
        test_write_secret(&td, test_secret);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(resp, "channels")), 2);

        ch = test_must_find(resp, "telemetry");
        ck_assert_int_eq(test_jint(ch, "shm_key"), 1593835521);
        ck_assert_int_eq(test_jint(ch, "sem_key"), 1593835521);
        ck_assert_int_eq(test_jint(ch, "size"), 65536);
        ck_assert_int_eq(test_jint(ch, "nsems"), 3);
        ck_assert_str_eq(json_string_value(json_object_get(ch, "layout")), "raw");
        ck_assert_str_eq(json_string_value(json_object_get(ch, "mode")), "0640");
        ck_assert_str_eq(json_string_value(json_object_get(ch, "owner")), "root");
        assert_kernel_objects(ch, 65536, 0, 100, 0640, tel, 3);

        ch = test_must_find(resp, "frames");
        /* The daemon kept the secret it was given, and derived the key under it. */
        test_read_secret(&td, secret);
        ck_assert_mem_eq(secret, test_secret, sizeof secret);
        ck_assert_uint_eq((uint32_t) test_jint(ch, "shm_key"), channel_derive_key(secret, "frames", 0));
        /* The derivation is a contract (shmbroker.json(5)): pinned, not just compared with itself. */
        ck_assert_uint_eq((uint32_t) test_jint(ch, "shm_key"), 0x6bdabb80);
        ck_assert_uint_eq(channel_derive_key(test_secret, "telemetry", 0), 0x5ab477d4);
        ck_assert_int_eq(test_jint(ch, "slot_size"), 1024);
        ck_assert_int_eq(test_jint(ch, "slots"), 8);
        assert_kernel_objects(ch, (size_t) test_jint(ch, "size"), 0, 0, 0660, ring, 1);

        /* The independent view agrees: two segments, two sets. */
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        json_decref(resp);
        close(fd);
}
END_TEST

START_TEST(test_open_status_close) {
        json_t *resp, *ch, *clients;
        time_t before = time(NULL);
        int a, b;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        a = test_connect(td.socket);
        b = test_connect(td.socket);

        resp = test_request(a, "{\"op\":\"open\",\"channel\":\"telemetry\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        ck_assert_str_eq(json_string_value(json_object_get(resp, "channel")), "telemetry");
        ck_assert_int_eq(test_jint(resp, "shm_key"), 1593835521);
        ck_assert_int_eq(test_jint(resp, "size"), 65536);
        ck_assert_int_eq(test_jint(resp, "nsems"), 3);
        json_decref(resp);

        /* Opening again on the same connection is one hold, not two. */
        resp = test_request(a, "{\"op\":\"open\",\"channel\":\"telemetry\",\"access\":\"ro\"}");
        test_assert_ok(resp);
        json_decref(resp);
        resp = test_request(b, "{\"op\":\"open\",\"channel\":\"telemetry\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);

        resp = test_request(b, "{\"op\":\"status\",\"channel\":\"telemetry\"}");
        test_assert_ok(resp);
        ch = test_must_find(resp, "telemetry");
        clients = json_object_get(ch, "clients");
        ck_assert_uint_eq(json_array_size(clients), 2);
        ck_assert_int_eq(test_jint(json_array_get(clients, 0), "pid"), getpid());
        /* shmbroker-protocol(7): each hold's uid, and since: when it was opened, in seconds since the epoch. */
        for (size_t i = 0; i < 2; i++) {
                json_t *c = json_array_get(clients, i);

                ck_assert_int_eq(test_jint(c, "uid"), getuid());
                ck_assert_str_eq(test_jstr(c, "access"), "rw");
                ck_assert_int_ge(test_jint(c, "since"), before);
                ck_assert_int_le(test_jint(c, "since"), time(NULL));
        }
        ck_assert_int_eq(test_jint(ch, "nattch"), 1);        /* the daemon's own attachment */
        ck_assert_int_eq(test_jint(ch, "cpid"), td.pid);
        ck_assert_uint_eq(json_array_size(json_object_get(ch, "semaphores")), 3);
        ck_assert_int_eq(test_jint(json_array_get(json_object_get(ch, "semaphores"), 2), "value"), 7);
        json_decref(resp);

        /* close drops a's hold; closing again is an error. */
        resp = test_request(a, "{\"op\":\"close\",\"channel\":\"telemetry\"}");
        test_assert_ok(resp);
        json_decref(resp);
        resp = test_request(a, "{\"op\":\"close\",\"channel\":\"telemetry\"}");
        test_assert_error(resp, "ENOENT");
        json_decref(resp);

        /* b's connection going away drops its hold at once. */
        close(b);
        for (int tries = 0;; tries++) {
                json_t *holders;
                size_t n;

                resp = test_request(a, "{\"op\":\"status\"}");
                test_assert_ok(resp);
                holders = json_object_get(test_must_find(resp, "telemetry"), "clients");
                ck_assert_msg(json_is_array(holders), "status lacks the clients of telemetry");
                n = json_array_size(holders);
                json_decref(resp);
                if (n == 0)
                        break;
                ck_assert_msg(tries < 100, "a closed connection still holds the channel");
                usleep(10000);
        }
        close(a);
}
END_TEST

START_TEST(test_errors_keep_serving) {
        static const struct {
                const char *request, *error;
        } cases[] = {
                { "not json", "EBADMSG" },
                { "[1,2]", "EBADMSG" },
                { "", "EBADMSG" },
                { "{}", "EINVAL" },
                { "{\"op\":42}", "EINVAL" },
                { "{\"op\":\"explode\"}", "EOPNOTSUPP" },
                { "{\"op\":\"open\",\"access\":\"rw\"}", "EINVAL" },
                { "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rwx\"}", "EINVAL" },
                { "{\"op\":\"open\",\"channel\":7,\"access\":\"rw\"}", "EINVAL" },
                { "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\",\"extra\":1}", "EINVAL" },
                { "{\"op\":\"open\",\"channel\":\"nope\",\"access\":\"rw\"}", "ENOENT" },
                { "{\"op\":\"status\",\"channel\":\"nope\"}", "ENOENT" },
                { "{\"op\":\"hello\",\"version\":2}", "EPROTO" },
                /* Any integer is a version the daemon does not speak, however far out of 32 bits. */
                { "{\"op\":\"hello\",\"version\":1099511627776}", "EPROTO" },
                { "{\"op\":\"hello\",\"version\":-2147483649}", "EPROTO" },
                { "{\"op\":\"hello\"}", "EINVAL" },
        };
        json_t *resp;
        int fd;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        /* Twice: a line met again (the daemon's memo of decoded lines) gets the same refusal. */
        for (int round = 0; round < 2; round++)
                for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                        resp = test_request(fd, cases[i].request);
                        test_assert_error(resp, cases[i].error);
                        json_decref(resp);
                }
        /* Same connection, still served. */
        resp = test_request(fd, "{\"op\":\"hello\",\"version\":1,\"client\":\"test\"}");
        test_assert_ok(resp);
        ck_assert_int_eq(test_jint(resp, "version"), 1);
        json_decref(resp);
        close(fd);
}
END_TEST

/*
 * shmbroker-protocol(7), ANSWERS: "message" is "a sentence for humans".
 * A message that quotes the client's bytes (an unknown op, an unknown key)
 * and is cut to its limit must be cut between characters, not inside one:
 * cut inside, it is not UTF-8, and the answer's message becomes the bare
 * errno name.
 */
START_TEST(test_error_message_cut_between_characters) {
        static const char *const requests[] = {
                /* "a" then 40 "é": "%.64s" cuts after 63 bytes of the name, inside an "é". */
                "{\"op\":\"a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}",
                /* An unknown key of "a" then 100 "é": the key is quoted and cut to the message's limit. */
                NULL,
        };
        char key[1 + 100 * 2 + 1], line[400];
        json_t *resp;
        int fd;

        key[0] = 'a';
        for (int i = 0; i < 100; i++)
                memcpy(key + 1 + 2 * i, "\xc3\xa9", 2);
        key[sizeof key - 1] = 0;
        snprintf(line, sizeof line, "{\"op\":\"list\",\"%s\":1}", key);

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        for (size_t i = 0; i < 2; i++) {
                resp = test_request(fd, requests[i] ?: line);
                test_assert_error(resp, i == 0 ? "EOPNOTSUPP" : "EINVAL");
                ck_assert_msg(strstr(test_jstr(resp, "message"), i == 0 ? "unknown op" : "unknown key"),
                              "message is not a sentence: \"%s\"", test_jstr(resp, "message"));
                json_decref(resp);
        }
        close(fd);
}
END_TEST

START_TEST(test_pipelined_requests_in_order) {
        const char burst[] = "{\"op\":\"hello\",\"version\":1}\n{\"op\":\"open\",\"channel\":\"nope\",\"access\":\"ro\"}\n{\"op\":\"list\"}\n";
        char *line;
        int fd;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        test_send(fd, burst, sizeof burst - 1);
        line = test_read_line(fd);
        ck_assert_ptr_nonnull(strstr(line, "\"server\""));
        free(line);
        line = test_read_line(fd);
        ck_assert_ptr_nonnull(strstr(line, "ENOENT"));
        free(line);
        line = test_read_line(fd);
        ck_assert_ptr_nonnull(strstr(line, "\"channels\""));
        free(line);
        close(fd);
}
END_TEST

/*
 * A client blocked in recv() for its answer is woken once, by the answer:
 * taking its request off the socket frees its send buffer, which wakes
 * every sleeper on the socket (unix_write_space()), so the daemon must take
 * it only after answering. Shown by the order of the daemon's system calls
 * on the connection, traced: a take (a recv() without MSG_PEEK, or a
 * read()) before the first send is the fault. Timing plays no part.
 */
START_TEST(test_client_waiting_for_its_answer_is_woken_once) {
        static const char req[] = "{\"op\":\"status\"}\n";
        bool answered = false, taken_first = false;
        long conn = -1;
        json_t *resp;
        char *line;
        int fd;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"hello\",\"version\":1}");
        test_assert_ok(resp);
        json_decref(resp);
        /* The hello taken off the socket too (after its answer): a take the trace below would count. */
        for (int64_t deadline = test_now_ms() + 5000;; usleep(1000)) {
                int queued;

                ck_assert_int_eq(ioctl(fd, SIOCOUTQ, &queued), 0);
                if (queued == 0)
                        break;
                ck_assert_msg(test_now_ms() < deadline, "the daemon did not take the hello");
        }

        test_daemon_trace(&td);
        test_send(fd, req, sizeof req - 1);
        while (!answered) {
                struct __ptrace_syscall_info info;
                uint64_t nr, *a;

                ck_assert(test_next_syscall_stop(td.pid));
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY)
                        continue;
                nr = info.entry.nr;
                a = info.entry.args;
                /* The connection is the socket of the daemon's first receive, peek or not: it has no other client. */
                if (conn < 0 && (nr == SYS_recvfrom || nr == SYS_recvmsg))
                        conn = (long) a[0];
                if (conn < 0 || (long) a[0] != conn)
                        continue;
                if (nr == SYS_sendto || nr == SYS_sendmsg || nr == SYS_write || nr == SYS_writev)
                        answered = true;
                else if ((nr == SYS_recvfrom && !(a[3] & MSG_PEEK)) || (nr == SYS_recvmsg && !(a[2] & MSG_PEEK)) ||
                         nr == SYS_read)
                        taken_first = true;
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        line = test_read_line(fd);
        resp = json_loads(line, 0, NULL);
        test_assert_ok(resp);
        json_decref(resp);
        free(line);
        ck_assert_msg(!taken_first, "the daemon took the request off the socket before it answered: a wake-up for "
                                    "nothing of a client blocked in recv()");
        close(fd);
}
END_TEST

/*
 * An out-of-band byte (MSG_OOB, Linux 5.15) is skipped by a peek but taken
 * by a plain recv(): alone in the socket, it must neither keep the
 * connection readable for ever (a daemon spinning at 100%) nor hide the
 * request after it. The daemon reads it inline, as a byte of the stream.
 */
START_TEST(test_out_of_band_byte_neither_spins_nor_stalls) {
        int fd, other;
        long before;
        char *line;
        json_t *resp;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        if (send(fd, "x", 1, MSG_OOB | MSG_NOSIGNAL) != 1) {
                /* A kernel without MSG_OOB on Unix sockets: nothing to test. */
                ck_assert_msg(errno == EOPNOTSUPP || errno == EINVAL, "send MSG_OOB: %s", strerror(errno));
                close(fd);
                return;
        }
        usleep(200000);
        before = test_cpu_ticks(td.pid);
        usleep(1000000);
        /* Idle, not spinning: a spin would burn ~100 ticks a second. */
        ck_assert_int_lt(test_cpu_ticks(td.pid) - before, 20);
        /* The byte is the start of a line like any other: this one is not JSON. */
        test_send(fd, "{\"op\":\"list\"}\n", 14);
        line = test_read_line(fd);
        ck_assert_ptr_nonnull(line);
        resp = json_loads(line, 0, NULL);
        test_assert_error(resp, "EBADMSG");
        json_decref(resp);
        free(line);
        /* And the stream goes on in step. */
        test_assert_lists(fd);
        other = test_connect(td.socket);
        test_assert_lists(other);
        close(other);
        close(fd);
}
END_TEST

START_TEST(test_overlong_line_closes_only_that_connection) {
        size_t big = 70000;
        char *junk = malloc(big);
        char *line;
        int bad, good;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        good = test_connect(td.socket);
        bad = test_connect(td.socket);
        memset(junk, 'x', big);
        test_send(bad, junk, big);
        line = test_read_line(bad);
        ck_assert_ptr_nonnull(line);
        ck_assert_ptr_nonnull(strstr(line, "\"E2BIG\""));
        free(line);
        ck_assert_ptr_null(test_read_line(bad));        /* then EOF */
        free(junk);

        test_assert_lists(good);
        close(bad);
        close(good);
}
END_TEST

START_TEST(test_line_at_limit_is_served) {
        /* 65535 bytes of request plus its newline: exactly the limit. */
        size_t len = 65535;
        char *req = malloc(len + 2);
        const char head[] = "{\"op\":\"list\"}";
        json_t *resp;
        int fd;

        memcpy(req, head, sizeof head - 1);
        memset(req + sizeof head - 1, ' ', len - (sizeof head - 1));
        req[len] = 0;
        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, req);
        test_assert_ok(resp);
        json_decref(resp);
        free(req);
        close(fd);
}
END_TEST

/*
 * shmbroker-protocol(7), FRAMING: "The daemon answers every request line
 * with exactly one answer line"; OPEN: wake_fifos is "Absent when the
 * daemon could not make them". The FIFOs live beside the socket, whose path
 * (--socket) is bytes, not text: a path that is not UTF-8 cannot go into a
 * JSON answer, and an open of a ring must then be answered without the
 * field (the ring works without it), not by closing the connection.
 */
START_TEST(test_ring_open_answered_when_socket_path_is_not_text) {
        char sock[sizeof td.socket];
        json_t *resp;
        int status = 0, fd;

        snprintf(sock, sizeof sock, "%s/s\xff.sock", td.dir);
        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        ck_assert_msg(test_daemon_start(&td, &status, "--socket", sock, NULL), "the daemon did not start (%d)", status);
        fd = test_connect(sock);
        resp = test_request(fd, "{\"op\":\"open\",\"channel\":\"r\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        ck_assert_ptr_null(json_object_get(resp, "wake_fifos"));
        json_decref(resp);
        /* The connection goes on. */
        test_assert_lists(fd);
        close(fd);
}
END_TEST

/* /etc/name reads as text from now on, in the test_private_mounts() of this test (and its daemon). */
static void lend_etc_file(const char *name, const char *text) {
        char path[sizeof td.dir + 16], etc[64];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", td.dir, name);
        snprintf(etc, sizeof etc, "/etc/%s", name);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_msg(mount(path, etc, NULL, MS_BIND, NULL) == 0, "bind %s on %s: %s", path, etc, strerror(errno));
}

/*
 * shmbroker-protocol(7), VALUES: owner and group are "the user or group
 * name, or the id in decimal where it has no name", in answers that are
 * JSON (UTF-8). The group database holds bytes: a group whose name is not
 * UTF-8 must still let list and status be answered, not close the
 * connection. A private mount namespace lends the daemon such a database.
 */
START_TEST(test_list_answered_when_group_name_is_not_text) {
        json_t *resp, *ch;
        int fd;

        test_private_mounts();
        lend_etc_file("group", "root:x:0:\nb\xe9" "d:x:4343:\n");

        test_daemon_write_config(&td, "[{\"name\": \"g\", \"size\": 4096, \"group\": \"4343\"}]");
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        ch = test_must_find(resp, "g");
        ck_assert_str_eq(test_jstr(ch, "group"), "4343");
        json_decref(resp);
        resp = test_request(fd, "{\"op\":\"status\",\"channel\":\"g\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
}
END_TEST

/*
 * The same for a user name that is not UTF-8 (owner), and a name that is
 * UTF-8 beyond ASCII is still shown as the name: only bytes no JSON string
 * can hold fall back to the id.
 */
START_TEST(test_list_answered_when_user_name_is_not_text) {
        json_t *resp, *ch;
        int fd;

        test_private_mounts();
        lend_etc_file("passwd", "root:x:0:0::/root:/bin/sh\nb\xe9" "d:x:4343:4343::/:/bin/false\n");
        lend_etc_file("group", "root:x:0:\ngr\xc3\xbcn:x:4344:\n");

        test_daemon_write_config(&td, "[{\"name\": \"u\", \"size\": 4096, \"owner\": \"4343\", \"group\": \"4344\"}]");
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        ch = test_must_find(resp, "u");
        ck_assert_str_eq(test_jstr(ch, "owner"), "4343");
        ck_assert_str_eq(test_jstr(ch, "group"), "gr\xc3\xbcn");
        json_decref(resp);
        close(fd);
}
END_TEST

START_TEST(test_half_sent_request_does_not_stall_others) {
        int slow, fast;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        slow = test_connect(td.socket);
        test_send(slow, "{\"op\":\"li", 9);
        fast = test_connect(td.socket);
        test_assert_lists(fast);
        /* The slow one finishes later and is answered. */
        test_send(slow, "st\"}\n", 5);
        {
                char *late = test_read_line(slow);

                ck_assert_msg(late && strstr(late, "\"ok\":true"), "the slow request was not answered: %s",
                              late ? late : "EOF");
                free(late);
        }
        close(slow);
        close(fast);
}
END_TEST

/* ---- access ---- */

typedef struct AccessCase {
        const char *channel;
        const char *access;
        uid_t uid;
        gid_t gid, extra_group;
        bool expect_ok;
        const char *socket;     /* filled in by the test */
        int shm_id;
} AccessCase;

/* In a child with dropped privileges: the daemon's answer and the kernel's must agree. */
static void access_child(void *userdata) {
        const AccessCase *c = userdata;
        char req[256], *line;
        bool daemon_ok, kernel_ok;
        void *addr;
        int fd;

        test_drop_privileges(c->uid, c->gid, c->extra_group);
        fd = test_try_connect(c->socket);
        if (fd < 0)
                _exit(10);
        snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"%s\"}\n", c->channel, c->access);
        if (send(fd, req, strlen(req), 0) < 0)
                _exit(11);
        line = test_read_line(fd);
        if (!line)
                _exit(12);
        daemon_ok = strstr(line, "\"ok\":true") != NULL;
        if (!daemon_ok && !strstr(line, "\"EACCES\""))
                _exit(13);
        /* The kernel's own verdict on the same segment. */
        addr = shmat(c->shm_id, NULL, strcmp(c->access, "ro") == 0 ? SHM_RDONLY : 0);
        kernel_ok = addr != (void *) -1;
        if (kernel_ok)
                shmdt(addr);
        else if (errno != EACCES)
                _exit(16);
        if (daemon_ok != kernel_ok)
                _exit(20);
        _exit(daemon_ok == c->expect_ok ? 0 : 21);
}

/* Start the daemon on `channels`; the answer to a list, asked on a connection left open in *ret_fd. */
static json_t *start_and_list(const char *channels, int *ret_fd) {
        test_daemon_write_config(&td, channels);
        test_start_ok();
        *ret_fd = test_connect(td.socket);
        return test_request(*ret_fd, "{\"op\":\"list\"}");
}

/* Each case in a child of its own, against the segment `list` names: the daemon and shmat() must agree. */
static void run_access_cases(AccessCase *cases, size_t n, json_t *list) {
        for (size_t i = 0; i < n; i++) {
                int status;

                cases[i].socket = td.socket;
                cases[i].shm_id = (int) test_jint(test_find_channel(list, cases[i].channel), "shm_id");
                status = test_in_child(access_child, &cases[i]);
                ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                              "case %zu (%s %s as %u/%u+%u): child status %d (20: daemon and kernel disagree, 21: wrong verdict)",
                              i, cases[i].channel, cases[i].access, cases[i].uid, cases[i].gid, cases[i].extra_group,
                              WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
}

START_TEST(test_access_follows_kernel_rule) {
        /* owner root, group 4242; "shared" 0660, "public" 0644, "private" 0600 */
        static const char channels[] =
                "[{\"name\": \"shared\", \"size\": 4096, \"group\": 4242, \"mode\": \"0660\"},"
                " {\"name\": \"public\", \"size\": 4096, \"mode\": \"0644\"},"
                " {\"name\": \"private\", \"size\": 4096, \"mode\": \"0600\"}]";
        AccessCase cases[] = {
                { "shared", "rw", 65534, 65534, 0, false },    /* other: no bits */
                { "shared", "ro", 65534, 65534, 0, false },
                { "shared", "rw", 65534, 65534, 4242, true },  /* supplementary group */
                { "shared", "rw", 65534, 4242, 0, true },      /* primary group */
                { "public", "ro", 65534, 65534, 0, true },     /* other: r-- */
                { "public", "rw", 65534, 65534, 0, false },
                { "private", "ro", 65534, 4242, 4242, false },
        };
        json_t *list;
        int fd;

        list = start_and_list(channels, &fd);
        run_access_cases(cases, sizeof cases / sizeof cases[0], list);
        json_decref(list);
        close(fd);
        /* A refusal is logged, and the daemon keeps serving. */
        char *log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "Refused rw access to channel shared"));
        free(log);
}
END_TEST

/*
 * Where the daemon's user namespace maps every id (the initial one, as
 * here), nobody's uid and group 65534 are ids like any other: the
 * overflow ids of a container's daemon must not be taken for them. A peer
 * in group 65534, or uid 65534 itself, is let in as shmat() lets it in.
 */
START_TEST(test_overflow_ids_are_ids_where_all_are_mapped) {
        static const char channels[] =
                "[{\"name\": \"nogroup\", \"size\": 4096, \"group\": 65534, \"mode\": \"0660\"},"
                " {\"name\": \"nobody\", \"size\": 4096, \"owner\": 65534, \"mode\": \"0600\"}]";
        AccessCase cases[] = {
                { "nogroup", "rw", 4242, 4242, 65534, true },   /* supplementary group */
                { "nogroup", "rw", 4242, 65534, 0, true },      /* primary group */
                { "nogroup", "rw", 4242, 4242, 0, false },
                { "nobody", "rw", 65534, 65534, 0, true },
                { "nobody", "ro", 4242, 4242, 0, false },
        };
        json_t *list;
        int fd;

        list = start_and_list(channels, &fd);
        run_access_cases(cases, sizeof cases / sizeof cases[0], list);
        json_decref(list);
        close(fd);
}
END_TEST

/*
 * A daemon in a user namespace that maps only some ids (in a container)
 * is told a peer's unmapped uid and groups as the overflow ids (65534),
 * where shmat() compares the real ones: such a peer is neither the owner
 * nor in the group of a segment whose owner or group is 65534 there, and
 * its open must be refused, as shmat() refuses it.
 */
START_TEST(test_unmapped_peer_is_not_the_overflow_id) {
        static const char channels[] =
                "[{\"name\": \"nogroup\", \"size\": 4096, \"group\": 65534, \"mode\": \"0660\"},"
                " {\"name\": \"nobody\", \"size\": 4096, \"owner\": 65534, \"mode\": \"0600\"}]";
        AccessCase cases[] = {
                { "nogroup", "rw", 4242, 4242, 0, false },      /* uid and gid unmapped there: both shown as 65534 */
                { "nogroup", "ro", 4242, 4242, 0, false },
                { "nobody", "rw", 4242, 4242, 0, false },
                { "nobody", "ro", 4242, 4242, 0, false },
        };
        json_t *list;
        int fd;

        /* Maps root and 65534 only, as a container maps a range: 4242 is no id there. */
        td.userns_map = "0 0 1000\n65534 65534 1\n";
        list = start_and_list(channels, &fd);
        run_access_cases(cases, sizeof cases / sizeof cases[0], list);
        json_decref(list);
        close(fd);
}
END_TEST

/* ---- lifecycle ---- */

static void assert_nothing_left(void) {
        struct stat st;
        char path[400];

        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        ck_assert_int_ne(stat(td.socket, &st), 0);
        snprintf(path, sizeof path, "%s.state", td.socket);
        ck_assert_int_ne(stat(path, &st), 0);
        snprintf(path, sizeof path, "%s.lock", td.socket);
        ck_assert_int_ne(stat(path, &st), 0);
        /* The holder ledgers' directory goes with the state files. */
        snprintf(path, sizeof path, "%s.ledgers", td.socket);
        ck_assert_msg(stat(path, &st) < 0, "%s is left", path);
}

static void stop_with_attached_client(int sig) {
        char *addr;
        struct shmid_ds ds;
        int fd, id, status;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        fd = test_connect(td.socket);
        addr = test_open_attach(fd, "telemetry", &id);
        strcpy(addr, "still here");

        status = test_daemon_kill(&td, sig);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d after signal %d", status, sig);
        /* The connection is closed; our mapping survives until we detach. */
        ck_assert_ptr_null(test_read_line(fd));
        ck_assert_str_eq(addr, "still here");
        ck_assert_int_eq(shmctl(id, IPC_STAT, &ds), 0);
        ck_assert(ds.shm_perm.mode & SHM_DEST);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        ck_assert_int_eq(shmdt(addr), 0);
        assert_nothing_left();
        close(fd);
}

START_TEST(test_sigterm_with_client_attached) {
        stop_with_attached_client(SIGTERM);
}
END_TEST

START_TEST(test_sigint_with_client_attached) {
        stop_with_attached_client(SIGINT);
}
END_TEST

/* Records of `kind` ("shm", "psem", ...) the state file holds that no "-kind" line cancelled. */
/* Records of kind in the state file still live (added minus cancelled); *ret_added: how many were added. */
static int state_live(const char *kind, int *ret_added) {
        char path[400], word[16];
        int n = 0, added = 0;
        FILE *f;

        snprintf(path, sizeof path, "%s.state", td.socket);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        while (fscanf(f, "%15s%*[^\n]", word) == 1) {
                if (strcmp(word, kind) == 0) {
                        n++;
                        added++;
                } else if (word[0] == '-' && strcmp(word + 1, kind) == 0)
                        n--;
        }
        fclose(f);
        if (ret_added)
                *ret_added = added;
        return n;
}

/*
 * A crash restart takes over what is unchanged and replaces what changed:
 * "telemetry" keeps its ids, bytes and semaphore values (a client's
 * attachment still works), "frames", whose ring grew meanwhile, is made anew
 * and its old objects are reclaimed.
 */
/*
 * A run killed after it marked a ring removed (a stop or a reload that
 * dropped it) but before the segment went: the next start does not take
 * that ring over, as every client would get -EIDRM from it for ever; it
 * makes the channel anew and removes the old segment.
 */
START_TEST(test_ring_marked_removed_is_not_taken_over) {
        json_t *before, *after;
        int fd, fr_shm;
        struct shmid_ds ds;
        char *log;
        void *addr;

        before = start_and_list(two_channels, &fd);
        close(fd);
        fr_shm = (int) test_jint(test_must_find(before, "frames"), "shm_id");
        json_decref(before);
        addr = shmat(fr_shm, NULL, 0);
        ck_assert_ptr_ne(addr, (void *) -1);
        ring_mark_removed(addr);
        ck_assert_int_eq(shmdt(addr), 0);
        test_daemon_kill(&td, SIGKILL);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(!strstr(log, "Took over channel frames"), "a ring marked removed was taken over:\n%s", log);
        ck_assert_msg(strstr(log, "Took over channel telemetry"), "telemetry was not taken over:\n%s", log);
        free(log);
        fd = test_connect(td.socket);
        after = test_request(fd, "{\"op\":\"list\"}");
        close(fd);
        ck_assert_int_ne(test_jint(test_must_find(after, "frames"), "shm_id"), fr_shm);
        json_decref(after);
        ck_assert_msg(shmctl(fr_shm, IPC_STAT, &ds) < 0, "the old ring's segment %d is left", fr_shm);
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
}
END_TEST

/* The ledger file of channel name (daemon/ledger.h) beside the state file, into path (PATH_MAX). */
static void ledger_path(const char *name, char *path) {
        snprintf(path, PATH_MAX, "%s.ledgers/%s.ledger", td.socket, name);
}

/* 0 or -errno from lstat() of it. */
static int ledger_stat(const char *name, struct stat *st) {
        char path[PATH_MAX];

        ledger_path(name, path);
        return lstat(path, st) < 0 ? -errno : 0;
}

/* It, opened to tell later whether it was replaced (fstat()'s st_nlink 0: unlinked; its inode is not reused meanwhile). */
static int ledger_hold(const char *name) {
        char path[PATH_MAX];
        int fd;

        ledger_path(name, path);
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        return fd;
}

static nlink_t links_of(int fd) {
        struct stat st;

        ck_assert_int_eq(fstat(fd, &st), 0);
        return st.st_nlink;
}

/*
 * shmbrokerd(8), FILES: a ring's holder ledger is made with it (0600, its
 * size), kept over a crash for the next start, which makes it anew with
 * the channel when the config changed it and removes one of a channel it
 * no longer has; a stop removes every one. A raw channel has none. A
 * ledger the next start cannot believe (here group-writable) is replaced,
 * and the log says the table was believed instead.
 */
START_TEST(test_holder_ledgers_follow_their_channels) {
        static const char *const frames_grown =
                "[{\"name\": \"telemetry\", \"size\": 65536, \"semaphores\": [1, 0, 7], \"group\": 100, \"mode\": \"0640\","
                "  \"key\": 1593835521},"
                " {\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 1024, \"slots\": 16, \"mode\": \"0660\"},"
                " {\"name\": \"more\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]";
        struct stat st;
        char path[PATH_MAX], *log;
        json_t *list;
        int fd, frames, more;

        list = start_and_list(two_channels, &fd);
        close(fd);
        json_decref(list);
        ck_assert_int_eq(ledger_stat("telemetry", &st), -ENOENT);
        ck_assert_int_eq(ledger_stat("frames", &st), 0);
        ck_assert_msg(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600 && st.st_uid == geteuid(),
                      "ledger mode %o", (unsigned) st.st_mode);
        ck_assert_int_eq(st.st_size, (off_t) ((1 + RING_HOLDERS) * sizeof(RingHolder)));
        snprintf(path, sizeof path, "%s.ledgers", td.socket);
        ck_assert_int_eq(lstat(path, &st), 0);
        ck_assert_msg(S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700 && st.st_uid == geteuid(),
                      "ledger directory mode %o", (unsigned) st.st_mode);
        frames = ledger_hold("frames");
        /* Left by a crash of a run that had a channel the config no longer names. */
        ledger_path("gone", path);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);

        test_daemon_kill(&td, SIGKILL);
        ck_assert_uint_eq(links_of(frames), 1);
        test_daemon_write_config(&td, frames_grown);
        test_start_ok();
        /* frames changed: made anew, with a ledger of its own; "more" is new. */
        ck_assert_uint_eq(links_of(frames), 0);
        close(frames);
        ck_assert_int_eq(ledger_stat("frames", &st), 0);
        ck_assert_int_eq(ledger_stat("more", &st), 0);
        ck_assert_int_eq(ledger_stat("gone", &st), -ENOENT);

        /* Taken over with its channel. */
        frames = ledger_hold("frames");
        more = ledger_hold("more");
        /* A ledger nobody but the daemon could have written is the only one believed. */
        ledger_path("more", path);
        ck_assert_int_eq(chmod(path, 0620), 0);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel more") && strstr(log, "Took over channel frames"), "%s", log);
        ck_assert_msg(strstr(log, "Channel more: the killed run left no ledger of its holders"), "%s", log);
        ck_assert_msg(!strstr(log, "Channel frames: the killed run left no ledger"), "%s", log);
        free(log);
        ck_assert_uint_eq(links_of(frames), 1);
        ck_assert_uint_eq(links_of(more), 0);
        ck_assert_int_eq(ledger_stat("more", &st), 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0600);

        test_daemon_stop_ok(&td);
        ck_assert_uint_eq(links_of(frames), 0);
        ck_assert_int_eq(ledger_stat("frames", &st), -ENOENT);
        ck_assert_int_eq(ledger_stat("more", &st), -ENOENT);
        close(frames);
        close(more);
}
END_TEST


static uint32_t open_holder(int fd, const char *channel, const char *access, uint32_t want);

/* Set or clear the immutable flag of path: 0, or -errno (the file system or our capabilities may not allow it). */
static int set_immutable(const char *path, bool on) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), flags = 0, r = 0;

        if (fd < 0)
                return -errno;
        if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0)
                r = -errno;
        flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
        if (r == 0 && ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0)
                r = -errno;
        close(fd);
        return r;
}

/*
 * shmbrokerd(8): a killed run's ledger that cannot be read for a cause
 * that proves nothing about it "makes the channel not taken over but made
 * anew", rather than the table believed. Here the ledger is immutable,
 * which refuses even root its rw open (EPERM). A start that believed the
 * table instead would take the ring over.
 */
START_TEST(test_ledger_that_cannot_be_read_is_not_passed_over) {
        char path[PATH_MAX], *log;
        json_t *list;
        int fd, shm, r, status = 0;
        bool started;

        list = start_and_list(two_channels, &fd);
        close(fd);
        shm = (int) test_jint(test_must_find(list, "frames"), "shm_id");
        json_decref(list);
        test_daemon_kill(&td, SIGKILL);
        ledger_path("frames", path);
        r = set_immutable(path, true);
        if (r < 0) {
                /* Not a failure of the daemon: nothing was tried. Say so, and leave as the other cases do. */
                fprintf(stderr, "test_ledger_that_cannot_be_read_is_not_passed_over: cannot make %s immutable (%s); "
                        "not tested here.\n", path, strerror(-r));
                test_start_ok();
                test_daemon_stop_ok(&td);
                return;
        }
        /* The flag goes before any check: a file left immutable could not be cleaned up. */
        started = test_daemon_start(&td, &status, NULL);
        ck_assert_int_eq(set_immutable(path, false), 0);
        ck_assert_msg(started, "the start after the crash failed (status 0x%x)", status);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Channel frames: cannot read the killed run's ledger of its holders"), "%s", log);
        ck_assert_msg(!strstr(log, "Took over channel frames") && strstr(log, "Took over channel telemetry"), "%s",
                      log);
        free(log);
        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        close(fd);
        ck_assert_int_ne(test_jint(test_must_find(list, "frames"), "shm_id"), shm);
        json_decref(list);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/*
 * shmbrokerd(8): ledgers are kept only in a directory that is the
 * daemon's own and private. One at that path that others may enter, or
 * that another user owns, could hold files the daemon did not make: it is
 * not used (the log says so, rings still hand out tokens) nor removed.
 */
START_TEST(test_ledger_directory_not_private_is_not_used) {
        static const struct { mode_t mode; uid_t uid; } dirs[] = { { 0755, 0 }, { 0700, 65534 } };
        char dir[PATH_MAX], path[PATH_MAX], *log;
        struct stat st;
        json_t *list;
        int fd;

        snprintf(dir, sizeof dir, "%s.ledgers", td.socket);
        for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
                ck_assert_int_eq(mkdir(dir, 0700), 0);
                ck_assert_int_eq(chmod(dir, dirs[i].mode), 0);
                ck_assert_int_eq(chown(dir, dirs[i].uid, (gid_t) -1), 0);
                list = start_and_list(two_channels, &fd);
                json_decref(list);
                ck_assert_uint_ne(open_holder(fd, "frames", "rw", 0), 0);
                close(fd);
                log = test_daemon_log(&td);
                ck_assert_msg(strstr(log, "Cannot keep ledgers of ring holders"), "directory %zu: %s", i, log);
                free(log);
                ledger_path("frames", path);
                ck_assert_msg(lstat(path, &st) < 0 && errno == ENOENT, "directory %zu (mode %o, uid %d) was used", i,
                              (unsigned) dirs[i].mode, (int) dirs[i].uid);
                test_daemon_stop_ok(&td);
                ck_assert_int_eq(lstat(dir, &st), 0);
                ck_assert_int_eq(rmdir(dir), 0);
                assert_nothing_left();
        }
}
END_TEST

/* How many holder ledgers (STATE.ledgers/CHANNEL.ledger) the state directory holds. */
static int ledgers_left(void) {
        char dir[PATH_MAX];
        struct dirent *de;
        int n = 0;
        DIR *d;

        snprintf(dir, sizeof dir, "%s.ledgers", td.socket);
        d = opendir(dir);
        if (!d && errno == ENOENT)
                return 0;
        ck_assert_ptr_nonnull(d);
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);

                n += len > strlen(".ledger") && strcmp(de->d_name + len - strlen(".ledger"), ".ledger") == 0;
        }
        closedir(d);
        return n;
}

/* A ledger of a ring: the daemon's regular file, mode 0600, of a ring's size. */
static void assert_ring_ledger(const char *name) {
        struct stat st;

        ck_assert_msg(ledger_stat(name, &st) == 0, "channel %s has no ledger", name);
        ck_assert_msg(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600 && st.st_uid == geteuid(),
                      "ledger of %s: mode %o", name, (unsigned) st.st_mode);
        ck_assert_int_eq(st.st_size, (off_t) ((1 + RING_HOLDERS) * sizeof(RingHolder)));
}

/*
 * shmbrokerd(8), FILES: "removed with its channel". A ring made again
 * after its segment was removed behind the daemon's back gets a new
 * ledger; one that cannot be made again loses it; a reload that replaces
 * a ring makes a new one (the old one's removal leaves it); one that drops
 * a ring removes it. A stop leaves none.
 */
START_TEST(test_holder_ledgers_follow_repairs_and_reloads) {
        static const char *const two_rings =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
                " {\"name\": \"fixed\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4, \"key\": 1593835611}]";
        static const char *const frames_grown =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8}]";
        static const char *const none = "[{\"name\": \"plain\", \"size\": 4096}]";
        int fd, old, foreign, frames_shm, fixed_shm;
        json_t *resp;

        test_daemon_write_config(&td, two_rings);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        frames_shm = (int) test_jint(test_must_find(resp, "frames"), "shm_id");
        fixed_shm = (int) test_jint(test_must_find(resp, "fixed"), "shm_id");
        json_decref(resp);
        assert_ring_ledger("frames");
        assert_ring_ledger("fixed");
        ck_assert_int_eq(ledgers_left(), 2);

        /* Removed behind the daemon's back: made again, with a ledger of its own. */
        old = ledger_hold("frames");
        ck_assert_int_eq(shmctl(frames_shm, IPC_RMID, NULL), 0);
        /* And one that cannot be made again: a stranger took its fixed key. */
        ck_assert_int_eq(shmctl(fixed_shm, IPC_RMID, NULL), 0);
        foreign = shmget((key_t) 1593835611, 4096, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);
        resp = test_request(fd, "{\"op\":\"status\"}");
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_uint_eq(links_of(old), 0);
        close(old);
        assert_ring_ledger("frames");
        ck_assert_msg(ledgers_left() == 1, "%d ledgers after a ring was dropped", ledgers_left());
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);

        /* Replaced by a reload. */
        old = ledger_hold("frames");
        test_daemon_write_config(&td, frames_grown);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_uint_eq(links_of(old), 0);
        close(old);
        assert_ring_ledger("frames");
        ck_assert_int_eq(ledgers_left(), 1);

        /* Dropped by a reload. */
        test_daemon_write_config(&td, none);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_msg(ledgers_left() == 0, "%d ledgers after the rings were dropped", ledgers_left());

        /* Added again, then a stop. */
        test_daemon_write_config(&td, frames_grown);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        assert_ring_ledger("frames");
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(ledgers_left(), 0);
        assert_nothing_left();
}
END_TEST

/*
 * shmbrokerd(8): a file at a ledger's name that is not one the daemon
 * would have made is never believed, and never stops a start: a FIFO
 * (which an open could block on) is replaced; a directory, which cannot
 * be, leaves the ring without a ledger, as logged, and the ring works.
 */
START_TEST(test_holder_ledger_name_taken_by_a_fifo_or_a_directory) {
        char path[PATH_MAX], *log;
        struct stat st;
        json_t *list;
        int fd;

        snprintf(path, sizeof path, "%s.ledgers", td.socket);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        ledger_path("frames", path);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        list = start_and_list(two_channels, &fd);
        json_decref(list);
        ck_assert_uint_ne(open_holder(fd, "frames", "rw", 0), 0);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Channel frames: cannot keep a ledger of its holders"), "%s", log);
        free(log);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(lstat(path, &st), 0);
        ck_assert(S_ISDIR(st.st_mode));
        ck_assert_int_eq(rmdir(path), 0);
        /* Not removed with something in it that is no ledger. */
        snprintf(path, sizeof path, "%s.ledgers", td.socket);
        ck_assert_int_eq(rmdir(path), 0);
        ledger_path("frames", path);
        assert_nothing_left();

        /* A FIFO where a killed run's ledger was: the next start neither blocks on it nor believes it. */
        list = start_and_list(two_channels, &fd);
        json_decref(list);
        close(fd);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(unlink(path), 0);
        ck_assert_int_eq(mkfifo(path, 0600), 0);
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel frames") &&
                      strstr(log, "Channel frames: the killed run left no ledger of its holders"), "%s", log);
        free(log);
        assert_ring_ledger("frames");
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(ledgers_left(), 0);
        assert_nothing_left();
}
END_TEST

static RingHeader *attach_ring(const char *channel);

/* How many entries of a ring's holder table say LIVE, whatever their generation. */
static uint32_t live_entries(const RingHeader *h) {
        uint32_t n = 0;

        for (uint32_t i = 0; i < RING_HOLDERS; i++)
                n += (uint32_t) __atomic_load_n(&ring_holder_at(h, i)->word, __ATOMIC_ACQUIRE) == RING_HOLDER_LIVE;
        return n;
}

/* Start td's daemon with its state in state_dir; fail with its exit status and log unless it reaches READY=1. */
static void start_with_state_dir(const char *state_dir) {
        int status = 0;
        char *log;

        if (test_daemon_start(&td, &status, "--state-dir", state_dir, NULL))
                return;
        log = test_daemon_log(&td);
        ck_abort_msg("the daemon did not start (status 0x%x):\n%s", status, log);
}

/*
 * README, threat table: "Only where it has no ledger to go by (one it
 * could not make, say with its state directory full, ...) does a restart
 * believe the table, and the log says so"; shmbrokerd(8), FILES, says so
 * too for "the state directory is full". The state directory is a small
 * tmpfs of the test's own, filled so that the lock, state and secret
 * files fit and a ring's ledger does not: the ledger's posix_fallocate()
 * fails with ENOSPC. The daemon must still start and serve the ring, say
 * in its log which channel has no ledger and why, and leave no half-made
 * ledger behind; after a crash the next start takes the ring over by
 * believing the table (entries forged before the crash stay LIVE, where
 * a ledger would have undone them), and says so; a stop leaves nothing.
 * A ring a reload adds gets no ledger either, and leaves no half-made one.
 */
START_TEST(test_holder_ledger_not_made_in_a_full_state_directory) {
        static const char *const one_ring =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]";
        static const char *const two_rings =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
                " {\"name\": \"more\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]";
        const size_t ledger_bytes = (1 + RING_HOLDERS) * sizeof(RingHolder);
        char state[PATH_MAX], path[PATH_MAX + 32], out[4096], expect[256], *log;
        uint64_t page, ledger_pages, room;
        struct statvfs vfs;
        struct dirent *de;
        RingHeader *h;
        json_t *list;
        int fd, shm;
        DIR *d;

        test_private_mounts();
        snprintf(state, sizeof state, "%s/state", td.dir);
        ck_assert_int_eq(mkdir(state, 0700), 0);
        ck_assert_msg(mount("tmpfs", state, "tmpfs", 0, "size=1m,mode=0700") == 0, "mount %s: %s", state,
                      strerror(errno));
        ck_assert_int_eq(statvfs(state, &vfs), 0);
        page = vfs.f_bsize;
        ledger_pages = (ledger_bytes + page - 1) / page;
        /* One page each for the lock, state and secret files, and one short of a ledger's pages for the rest. */
        room = (3 + ledger_pages - 1) * page;
        ck_assert_uint_gt((uint64_t) vfs.f_bavail * page, room);
        snprintf(path, sizeof path, "%s/filler", state);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(posix_fallocate(fd, 0, (off_t) ((uint64_t) vfs.f_bavail * page - room)), 0);
        close(fd);
        ck_assert_int_eq(statvfs(state, &vfs), 0);
        ck_assert_uint_eq((uint64_t) vfs.f_bavail * page, room);

        test_daemon_write_config(&td, one_ring);
        start_with_state_dir(state);
        log = test_daemon_log(&td);
        snprintf(expect, sizeof expect, "Channel frames: cannot keep a ledger of its holders: %s", strerror(ENOSPC));
        ck_assert_msg(strstr(log, expect), "no \"%s\" in the log:\n%s", expect, log);
        free(log);
        /* And a ring a reload adds (no start's sweep of the ledger directory follows a reload). */
        test_daemon_write_config(&td, two_rings);
        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(list);
        json_decref(list);
        ck_assert_uint_ne(open_holder(fd, "more", "rw", 0), 0);
        close(fd);
        log = test_daemon_log(&td);
        snprintf(expect, sizeof expect, "Channel more: cannot keep a ledger of its holders: %s", strerror(ENOSPC));
        ck_assert_msg(strstr(log, expect), "no \"%s\" in the log:\n%s", expect, log);
        free(log);
        /* Nothing half made: the files posix_fallocate() could not fill are gone. */
        snprintf(path, sizeof path, "%s/shmbroker.sock.ledgers", state);
        d = opendir(path);
        ck_assert_msg(d, "%s: %s", path, strerror(errno));
        while ((de = readdir(d)))
                ck_assert_msg(strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0, "%s/%s is left", path,
                              de->d_name);
        closedir(d);

        /* Served: rw opens get tokens, and messages go through. */
        ck_assert_int_eq(test_run(out, sizeof out,
                                  "export SHMBROKER_SOCKET=%s; %s/ring-receiver frames & r=$!; "
                                  "%s/ring-sender frames 3 && wait $r", td.socket, EXAMPLES_DIR, EXAMPLES_DIR), 0);
        ck_assert_str_eq(out, "message 1\nmessage 2\nmessage 3\n");
        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        shm = (int) test_jint(test_must_find(list, "frames"), "shm_id");
        json_decref(list);
        ck_assert_uint_ne(open_holder(fd, "frames", "rw", 0), 0);
        close(fd);

        /* A writer of the segment forges every entry, then the broker dies. */
        h = attach_ring("frames");
        test_forge_live_holders(ring_holder_at(h, 0), RING_HOLDERS, RING_HOLDERS);
        test_daemon_kill(&td, SIGKILL);
        start_with_state_dir(state);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel frames") && strstr(log, "Took over channel more"),
                      "a ring was not taken over:\n%s", log);
        ck_assert_msg(strstr(log, "Channel frames: the killed run left no ledger of its holders; believing the table") &&
                      strstr(log, "Channel more: the killed run left no ledger of its holders; believing the table"),
                      "the log does not say the tables were believed:\n%s", log);
        free(log);
        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        ck_assert_int_eq(test_jint(test_must_find(list, "frames"), "shm_id"), shm);
        json_decref(list);
        /* Believed: the forged entries hold every token, so an rw open finds none free. */
        ck_assert_uint_eq(live_entries(h), RING_HOLDERS);
        list = test_request(fd, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}");
        test_assert_error(list, "EUSERS");
        json_decref(list);
        close(fd);
        ck_assert_int_eq(shmdt(h), 0);

        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        /* The filler and the key secret, which outlives a stop: nothing else. */
        d = opendir(state);
        ck_assert_ptr_nonnull(d);
        while ((de = readdir(d)))
                ck_assert_msg(strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
                              strcmp(de->d_name, "filler") == 0 || strcmp(de->d_name, "shmbroker.sock.secret") == 0,
                              "%s/%s is left after a stop", state, de->d_name);
        closedir(d);
        ck_assert_int_eq(umount(state), 0);
        assert_nothing_left();
}
END_TEST

/*
 * shmbrokerd(8), FILES: the daemon goes by a killed run's ledger only
 * when it is one it made and finished. One of the right file, mode and
 * size whose header says it was never finished (a run killed between
 * making it and filling it in: no magic), or that it has another number
 * of entries, is not believed: the next start believes the table instead
 * (entries forged before the crash stay LIVE, where the ledger, which
 * holds the daemon's own record, would have undone them), says so, and
 * makes the ledger anew.
 */
START_TEST(test_holder_ledger_not_finished_is_not_believed) {
        static const struct { off_t at; size_t len; const char *what; } spoil[] = {
                { 0, sizeof(uint64_t), "magic" },               /* LedgerHeader.magic: written last */
                { sizeof(uint64_t), sizeof(uint32_t), "entries" },
        };
        char *log;
        RingHeader *h;
        json_t *list;
        size_t since;
        int fd, old;

        list = start_and_list(two_channels, &fd);
        json_decref(list);
        close(fd);
        h = attach_ring("frames");
        test_forge_live_holders(ring_holder_at(h, 0), RING_HOLDERS, RING_HOLDERS);
        for (size_t i = 0; i < sizeof spoil / sizeof *spoil; i++) {
                uint64_t word = 0;
                char path[PATH_MAX];

                test_daemon_kill(&td, SIGKILL);
                ledger_path("frames", path);
                old = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
                ck_assert_int_ge(old, 0);
                ck_assert_int_eq(pread(old, &word, spoil[i].len, spoil[i].at), (ssize_t) spoil[i].len);
                ck_assert_msg(word != 0, "the ledger's %s is 0 before the test spoils it", spoil[i].what);
                /* 0 magic: never finished; entries: one more than a ring has. */
                word = i == 0 ? 0 : RING_HOLDERS + 1;
                ck_assert_int_eq(pwrite(old, &word, spoil[i].len, spoil[i].at), (ssize_t) spoil[i].len);
                /* The log goes on from start to start: this start's lines are those after it. */
                log = test_daemon_log(&td);
                since = strlen(log);
                free(log);
                test_start_ok();
                log = test_daemon_log(&td);
                ck_assert_msg(strstr(log + since, "Took over channel frames") &&
                              strstr(log + since, "Channel frames: the killed run left no ledger of its holders; "
                                                  "believing the table"), "a ledger with a spoiled %s:\n%s",
                              spoil[i].what, log + since);
                free(log);
                ck_assert_msg(live_entries(h) == RING_HOLDERS, "a ledger with a spoiled %s was believed: %u entries "
                              "LIVE", spoil[i].what, (unsigned) live_entries(h));
                /* Made anew, in place of the spoiled one. */
                ck_assert_uint_eq(links_of(old), 0);
                close(old);
                assert_ring_ledger("frames");
        }
        ck_assert_int_eq(shmdt(h), 0);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/*
 * After a crash: a start on config, whose channel "blocked" wants key
 * 16963, which someone else now holds, takes "keep" over and then fails.
 * Returns that someone's segment, to be removed.
 */
static int start_fails_after_taking_keep_over(const char *config) {
        int foreign = shmget(16963, 4096, IPC_CREAT | IPC_EXCL | 0600), status;
        char *log;

        ck_assert_int_ge(foreign, 0);
        test_daemon_write_config(&td, config);
        ck_assert(!test_daemon_start(&td, &status, NULL));
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel keep") && strstr(log, "already held"), "%s", log);
        free(log);
        return foreign;
}

/*
 * shmbrokerd(8), FILES: a ledger is "kept after a crash for the next
 * start". A start that fails keeps the ledger of the ring it took over
 * (the same file), and removes the one of a ring it made; the next start
 * takes the kept one over.
 */
START_TEST(test_failed_start_keeps_the_ledgers_it_took_over) {
        static const char *const one =
                "[{\"name\": \"keep\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]";
        static const char *const plus_blocked =
                "[{\"name\": \"keep\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
                " {\"name\": \"made\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
                " {\"name\": \"blocked\", \"size\": 4096, \"key\": 16963}]";
        int kept, foreign;
        struct stat st;
        char *log;

        test_daemon_write_config(&td, one);
        test_start_ok();
        kept = ledger_hold("keep");
        test_daemon_kill(&td, SIGKILL);

        foreign = start_fails_after_taking_keep_over(plus_blocked);
        ck_assert_uint_eq(links_of(kept), 1);
        ck_assert_int_eq(ledger_stat("made", &st), -ENOENT);

        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
        test_daemon_write_config(&td, one);
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel keep") && !strstr(log, "left no ledger"), "%s", log);
        free(log);
        ck_assert_uint_eq(links_of(kept), 1);
        test_daemon_stop_ok(&td);
        ck_assert_uint_eq(links_of(kept), 0);
        close(kept);
        ck_assert_int_eq(ledgers_left(), 0);
        assert_nothing_left();
}
END_TEST
START_TEST(test_sigkill_then_restart_adopts_or_replaces) {
        static const char *const frames_grown =
                "[{\"name\": \"telemetry\", \"size\": 65536, \"semaphores\": [1, 0, 7], \"group\": 100, \"mode\": \"0640\","
                "  \"key\": 1593835521},"
                " {\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 1024, \"slots\": 16, \"mode\": \"0660\"}]";
        json_t *before, *after, *tel, *fr;
        int fd, tel_shm, tel_sem, fr_shm, fr_sem, added;
        struct shmid_ds ds;
        struct semid_ds sds;
        struct sembuf up = { .sem_num = 2, .sem_op = 5 };
        char *addr, *log;

        before = start_and_list(two_channels, &fd);
        close(fd);
        tel = test_must_find(before, "telemetry");
        fr = test_must_find(before, "frames");
        tel_shm = (int) test_jint(tel, "shm_id");
        tel_sem = (int) test_jint(tel, "sem_id");
        fr_shm = (int) test_jint(fr, "shm_id");
        fr_sem = (int) test_jint(fr, "sem_id");
        /* The file holds each object by its id, and each channel; the intents written before are cancelled. */
        ck_assert_int_eq(state_live("shm", NULL), 2);
        ck_assert_int_eq(state_live("sem", NULL), 2);
        ck_assert_int_eq(state_live("chan", NULL), 2);
        ck_assert_int_eq(state_live("pshm", &added), 0);
        ck_assert_int_eq(added, 2);
        ck_assert_int_eq(state_live("psem", &added), 0);
        ck_assert_int_eq(added, 2);

        addr = shmat(tel_shm, NULL, 0);
        ck_assert_ptr_ne(addr, (void *) -1);
        strcpy(addr, "written before the crash");
        ck_assert_int_eq(semop(tel_sem, &up, 1), 0);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(test_ipcs_count("-m"), 2);     /* left behind by the crash */

        test_daemon_write_config(&td, frames_grown);
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel telemetry"), "%s", log);
        ck_assert_msg(strstr(log, "Channel frames changed in the config"), "%s", log);
        ck_assert_msg(strstr(log, "Reclaimed 2 object(s)"), "%s", log);
        free(log);
        /* Not doubled: frames' old objects are gone, telemetry's are the same ones. */
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        ck_assert_int_ne(shmctl(fr_shm, IPC_STAT, &ds), 0);
        ck_assert_int_ne(semctl(fr_sem, 0, IPC_STAT, &sds), 0);
        fd = test_connect(td.socket);
        after = test_request(fd, "{\"op\":\"list\"}");
        tel = test_must_find(after, "telemetry");
        ck_assert_int_eq(test_jint(tel, "shm_id"), tel_shm);
        ck_assert_int_eq(test_jint(tel, "sem_id"), tel_sem);
        ck_assert_int_eq(test_jint(test_must_find(after, "frames"), "shm_key"),
                         test_jint(test_must_find(before, "frames"), "shm_key"));
        ck_assert_int_ne(test_jint(test_must_find(after, "frames"), "shm_id"), fr_shm);
        ck_assert_str_eq(addr, "written before the crash");
        ck_assert_int_eq(semctl(tel_sem, 2, GETVAL), 12);
        ck_assert_int_eq(shmctl(tel_shm, IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_perm.mode & 0777, 0640);
        ck_assert_int_eq(shmdt(addr), 0);
        json_decref(before);
        json_decref(after);
        close(fd);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/* Raise this IPC namespace's limits, then write a config of n raw channels, "c0" to "c<n-1>". */
static void write_many_channels(int n) {
        size_t cap = (size_t) n * 40 + 16, len = 0;
        char *text = malloc(cap);

        ck_assert_ptr_nonnull(text);
        test_write_proc("/proc/sys/kernel/shmmni", "32768");
        test_write_proc("/proc/sys/kernel/sem", "32000 1024000000 500 32768");
        len += (size_t) snprintf(text + len, cap - len, "[");
        for (int i = 0; i < n; i++)
                len += (size_t) snprintf(text + len, cap - len, "%s{\"name\": \"c%d\", \"size\": 4096}", i ? "," : "", i);
        len += (size_t) snprintf(text + len, cap - len, "]");
        ck_assert_uint_lt(len, cap);
        test_daemon_write_config(&td, text);
        free(text);
}

/*
 * The segment ids of samples channels spread over c0 to c<n-1>, by a status
 * each (a list of them all is megabytes, which test_read_line() takes a
 * byte at a time).
 */
static void sampled_shm_ids(int n, int samples, json_int_t *ids) {
        int fd = test_connect(td.socket);

        for (int k = 0; k < samples; k++) {
                char name[16], line[128];
                json_t *resp;

                snprintf(name, sizeof name, "c%d", k * (n - 1) / (samples - 1));
                snprintf(line, sizeof line, "{\"op\":\"status\",\"channel\":\"%s\"}", name);
                resp = test_request(fd, line);
                ids[k] = test_jint(test_must_find(resp, name), "shm_id");
                json_decref(resp);
        }
        close(fd);
}

/*
 * A crash restart of many channels takes them all over in time linear in
 * their number. Each adoption re-sorted the whole registry (an added entry
 * leaves it unsorted, and the next one's duplicate check looked it up) and
 * searched every record of the state file for the channel's segment and
 * set: 16000 channels took 8.7 s to READY=1, 32000 (about as many as a
 * namespace may have) over 30 s, past the 20 s the helpers wait for
 * READY=1 and this case's timeout. Now about a second.
 */
START_TEST(test_crash_restart_of_many_channels_adopts_in_linear_time) {
        enum { N = 32000, SAMPLES = 9 };
        json_int_t before[SAMPLES], after[SAMPLES];

        write_many_channels(N);
        test_start_ok();
        sampled_shm_ids(N, SAMPLES, before);
        test_daemon_kill(&td, SIGKILL);

        test_start_ok();
        /* Taken over, not made anew: as many objects as channels, the same ids. */
        ck_assert_int_eq(test_ipcs_count("-m"), N);
        ck_assert_int_eq(test_ipcs_count("-s"), N);
        sampled_shm_ids(N, SAMPLES, after);
        for (int k = 0; k < SAMPLES; k++)
                ck_assert_int_eq(after[k], before[k]);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/* Send count copies of each of the lines in turn (batch at a time) on fd, and read as many answers: all ok. */
static void pipeline_ok(int fd, const char *const *lines, size_t n_lines, size_t count) {
        enum { BATCH = 256 };
        static char buf[1 << 16];
        size_t sent = 0;

        while (sent < count) {
                size_t k = count - sent < BATCH ? count - sent : BATCH, got = 0;
                char *out = NULL;
                size_t out_len = 0;
                FILE *f = open_memstream(&out, &out_len);

                ck_assert_ptr_nonnull(f);
                for (size_t i = 0; i < k; i++)
                        fprintf(f, "%s\n", lines[(sent + i) % n_lines]);
                ck_assert_int_eq(fclose(f), 0);
                test_send(fd, out, out_len);
                free(out);
                while (got < k) {
                        struct pollfd p = { .fd = fd, .events = POLLIN };
                        ssize_t n;

                        ck_assert_int_eq(poll(&p, 1, 5000), 1);
                        n = recv(fd, buf, sizeof buf - 1, 0);
                        ck_assert_int_gt(n, 0);
                        buf[n] = 0;
                        ck_assert_msg(!strstr(buf, "\"ok\":false"), "%s", buf);
                        for (ssize_t i = 0; i < n; i++)
                                got += buf[i] == '\n';
                }
                ck_assert_uint_eq(got, k);
                sent += k;
        }
}

/*
 * An open or close finds the connection's hold on the channel in time
 * independent of how many channels the connection holds. It walked every
 * hold of the connection: with 32000 channels held, each open of the first
 * one took 0.1 ms, 300000 of them over 30 s, past this case's timeout
 * (opening n channels one after another was O(n^2) so). Now about 2 s.
 */
START_TEST(test_open_among_many_holds_of_a_connection) {
        enum { N = 32000, REOPENS = 300000 };
        char **opens = calloc(N, sizeof *opens);
        const char *first = "{\"op\":\"open\",\"channel\":\"c0\",\"access\":\"ro\"}";
        int fd;

        ck_assert_ptr_nonnull(opens);
        for (int i = 0; i < N; i++)
                ck_assert_int_ge(asprintf(&opens[i], "{\"op\":\"open\",\"channel\":\"c%d\",\"access\":\"ro\"}", i), 0);
        write_many_channels(N);
        test_start_ok();
        fd = test_connect(td.socket);
        /* c0 first: its hold is last in the connection's list, which is newest first. */
        pipeline_ok(fd, (const char *const *) opens, N, N);
        pipeline_ok(fd, &first, 1, REOPENS);
        for (int i = 0; i < N; i++)
                free(opens[i]);
        free(opens);
        close(fd);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/* A start that fails after taking channels over leaves them, recorded, for the next start. */
START_TEST(test_failed_start_keeps_adopted_channels) {
        static const char *const one = "[{\"name\": \"keep\", \"size\": 4096}]";
        static const char *const plus_blocked =
                "[{\"name\": \"keep\", \"size\": 4096}, {\"name\": \"blocked\", \"size\": 4096, \"key\": 16963}]";
        json_t *resp;
        int fd, shm_id, sem_id, foreign;
        struct shmid_ds ds;

        resp = start_and_list(one, &fd);
        shm_id = (int) test_jint(test_must_find(resp, "keep"), "shm_id");
        sem_id = (int) test_jint(test_must_find(resp, "keep"), "sem_id");
        json_decref(resp);
        close(fd);
        test_daemon_kill(&td, SIGKILL);

        /* The next start takes "keep" over, then fails on a key someone else holds. */
        foreign = start_fails_after_taking_keep_over(plus_blocked);
        ck_assert_int_eq(shmctl(shm_id, IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_perm.mode & SHM_DEST, 0);

        /* Fixed, it starts and takes it over again. */
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
        resp = start_and_list(one, &fd);
        ck_assert_int_eq(test_jint(test_must_find(resp, "keep"), "shm_id"), shm_id);
        ck_assert_int_eq(test_jint(test_must_find(resp, "keep"), "sem_id"), sem_id);
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

START_TEST(test_reclaim_spares_foreign_reuse_of_id) {
        /* After a crash an admin removes our objects, and others get the very same ids:
         * one under another key, one under our key but made by another user. */
        int fd, id_a, id_b;
        uint32_t key_b;
        json_t *resp;
        struct shmid_ds ds;

        resp = start_and_list("[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]", &fd);
        id_a = (int) test_jint(test_find_channel(resp, "a"), "shm_id");
        id_b = (int) test_jint(test_find_channel(resp, "b"), "shm_id");
        key_b = (uint32_t) test_jint(test_find_channel(resp, "b"), "shm_key");
        json_decref(resp);
        close(fd);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(shmctl(id_a, IPC_RMID, NULL), 0);
        ck_assert_int_eq(shmctl(id_b, IPC_RMID, NULL), 0);

        test_make_foreign_ipc(false, 0x1234, 4096, 0666, id_a, 0);
        test_make_foreign_ipc(false, key_b, 4096, 0666, id_b, 65534);

        test_start_ok();
        char *log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "(0 already gone, 2 not provably ours"));
        free(log);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmctl(id_a, IPC_STAT, &ds), 0);
        ck_assert_uint_eq((uint32_t) ds.shm_perm.__key, 0x1234);
        ck_assert_int_eq(shmctl(id_b, IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_perm.cuid, 65534);
        shmctl(id_a, IPC_RMID, NULL);
        shmctl(id_b, IPC_RMID, NULL);
        assert_nothing_left();
}
END_TEST

/*
 * A ring taken over after a crash keeps its wake-up FIFOs, which waiters
 * hold open; one that went missing while no daemon ran (a tmpfiles clean,
 * an admin) is made again, so that shmb_channel_fd() works for the
 * channel as it did: not the channel left without FIFOs.
 */
START_TEST(test_adopted_ring_gets_a_missing_fifo_again) {
        char data[420], space[420], *log;
        struct stat st;
        json_t *resp;
        int fd;

        snprintf(data, sizeof data, "%s.wake/r.data", td.socket);
        snprintf(space, sizeof space, "%s.wake/r.space", td.socket);
        resp = start_and_list("[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 2}]", &fd);
        json_decref(resp);
        close(fd);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(unlink(data), 0);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel r "), "%s", log);
        ck_assert_msg(!strstr(log, "cannot make its wake-up FIFOs"), "%s", log);
        free(log);
        ck_assert_msg(lstat(data, &st) == 0 && S_ISFIFO(st.st_mode), "%s was not made again", data);
        ck_assert_msg(lstat(space, &st) == 0 && S_ISFIFO(st.st_mode), "%s is gone", space);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/*
 * A crash restart takes a channel over only when both its recorded objects
 * are provably the last run's: here the segment still is, but its set was
 * removed after the crash and another user made one with the same key,
 * count and id. That set is not the daemon's: the channel is made anew and
 * the other user's set is neither used nor removed.
 */
START_TEST(test_adoption_spares_foreign_set_at_the_recorded_id) {
        struct semid_ds sds;
        json_t *resp, *a;
        int fd, shm_id, sem_id;
        uint32_t key;
        char *log;

        resp = start_and_list("[{\"name\": \"a\", \"size\": 4096}]", &fd);
        a = test_find_channel(resp, "a");
        shm_id = (int) test_jint(a, "shm_id");
        sem_id = (int) test_jint(a, "sem_id");
        key = (uint32_t) test_jint(a, "sem_key");
        json_decref(resp);
        close(fd);
        ck_assert_int_eq(semctl(sem_id, 0, IPC_STAT, &sds), 0);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(semctl(sem_id, 0, IPC_RMID), 0);
        test_make_foreign_ipc(true, key, sds.sem_nsems, 0666, sem_id, 65534);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(!strstr(log, "Took over channel a"), "took over another user's set:\n%s", log);
        ck_assert_msg(strstr(log, "not provably the last run's"), "not logged:\n%s", log);
        free(log);
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        a = test_find_channel(resp, "a");
        ck_assert_int_ne(test_jint(a, "sem_id"), sem_id);
        ck_assert_int_ne(test_jint(a, "shm_id"), shm_id);
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(semctl(sem_id, 0, IPC_STAT, &sds), 0);
        ck_assert_uint_eq(sds.sem_perm.cuid, 65534);
        ck_assert_int_eq(semctl(sem_id, 0, IPC_RMID), 0);
        assert_nothing_left();
}
END_TEST

START_TEST(test_objects_removed_behind_our_back_are_remade) {
        json_t *resp, *ch;
        int fd, old_shm, old_sem, status;
        uint32_t key;
        struct semid_ds sds;
        char *log;

        resp = start_and_list(two_channels, &fd);
        ch = test_find_channel(resp, "frames");
        old_shm = (int) test_jint(ch, "shm_id");
        old_sem = (int) test_jint(ch, "sem_id");
        key = (uint32_t) test_jint(ch, "shm_key");
        json_decref(resp);

        /* An admin removes the segment: status notices and makes the channel again. */
        ck_assert_int_eq(shmctl(old_shm, IPC_RMID, NULL), 0);
        resp = test_request(fd, "{\"op\":\"status\",\"channel\":\"frames\"}");
        test_assert_ok(resp);
        ch = test_find_channel(resp, "frames");
        ck_assert_int_ne(test_jint(ch, "shm_id"), old_shm);
        ck_assert_uint_eq((uint32_t) test_jint(ch, "shm_key"), key);         /* where clients look for it */
        ck_assert_int_eq(test_jint(json_array_get(json_object_get(ch, "semaphores"), 0), "value"), 1);
        ck_assert_int_ne(semctl(old_sem, 0, IPC_STAT, &sds), 0);       /* the old set went with it */
        json_decref(resp);

        /* An admin removes a set: the next open notices. */
        resp = test_request(fd, "{\"op\":\"list\"}");
        old_sem = (int) test_jint(test_find_channel(resp, "telemetry"), "sem_id");
        json_decref(resp);
        ck_assert_int_eq(semctl(old_sem, 0, IPC_RMID), 0);
        resp = test_request(fd, "{\"op\":\"open\",\"channel\":\"telemetry\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        ck_assert_int_ne(test_jint(resp, "sem_id"), old_sem);
        ck_assert_int_eq(semctl((int) test_jint(resp, "sem_id"), 2, GETVAL), 7);   /* initial values again */
        old_sem = (int) test_jint(resp, "sem_id");
        json_decref(resp);

        /* And a set removed under status (which leaves the set's identity to GETALL). */
        ck_assert_int_eq(semctl(old_sem, 0, IPC_RMID), 0);
        resp = test_request(fd, "{\"op\":\"status\",\"channel\":\"telemetry\"}");
        test_assert_ok(resp);
        ch = test_find_channel(resp, "telemetry");
        ck_assert_int_ne(test_jint(ch, "sem_id"), old_sem);
        ck_assert_int_eq(test_jint(json_array_get(json_object_get(ch, "semaphores"), 2), "value"), 7);
        json_decref(resp);

        /* Exactly one of each per channel: nothing doubled, nothing leaked. */
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "Channel frames was removed behind the daemon's back; made it again"));
        ck_assert_ptr_nonnull(strstr(log, "Channel telemetry was removed behind the daemon's back; made it again"));
        free(log);
        close(fd);
        status = test_daemon_kill(&td, SIGTERM);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_nothing_left();
}
END_TEST

/*
 * A status of every channel repairs as it goes: one channel is made again,
 * one cannot be (a stranger took its key) and drops out of the registry,
 * and the channel after it is still reported.
 */
START_TEST(test_status_of_all_repairs_and_drops_as_it_goes) {
        json_t *resp, *list, *v;
        int fd, a_shm, b_shm, foreign;
        char *log;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096, \"key\": 1593835601},"
                                      " {\"name\": \"b\", \"size\": 4096, \"key\": 1593835602},"
                                      " {\"name\": \"c\", \"size\": 4096, \"key\": 1593835603}]");
        test_start_ok();
        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        a_shm = (int) test_jint(test_find_channel(list, "a"), "shm_id");
        b_shm = (int) test_jint(test_find_channel(list, "b"), "shm_id");
        json_decref(list);

        ck_assert_int_eq(shmctl(a_shm, IPC_RMID, NULL), 0);
        ck_assert_int_eq(shmctl(b_shm, IPC_RMID, NULL), 0);
        foreign = shmget((key_t) 1593835602, 4096, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);

        resp = test_request(fd, "{\"op\":\"status\"}");
        test_assert_ok(resp);
        v = json_object_get(resp, "channels");
        ck_assert_uint_eq(json_array_size(v), 2);
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(v, 0), "name")), "a");
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(v, 1), "name")), "c");
        ck_assert_int_ne(test_jint(json_array_get(v, 0), "shm_id"), a_shm);
        json_decref(resp);
        log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "Channel a was removed behind the daemon's back; made it again"));
        ck_assert_ptr_nonnull(strstr(log, "Channel b was removed behind the daemon's back and cannot be made again"));
        free(log);
        /* a and c, and the stranger's segment, which the daemon left alone. */
        ck_assert_int_eq(test_ipcs_count("-m"), 3);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
        close(fd);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/* A ring that cannot be made again (a stranger took its key) takes its wake-up FIFOs with it. */
START_TEST(test_ring_that_cannot_be_remade_leaves_no_fifo) {
        char data[400], space[400];
        json_t *resp;
        int fd, shm, foreign;
        struct stat st;

        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8,"
                                      "  \"key\": 1593835611}]");
        test_start_ok();
        snprintf(data, sizeof data, "%s.wake/r.data", td.socket);
        snprintf(space, sizeof space, "%s.wake/r.space", td.socket);
        ck_assert_int_eq(stat(data, &st), 0);
        ck_assert_int_eq(stat(space, &st), 0);
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        shm = (int) test_jint(test_find_channel(resp, "r"), "shm_id");
        json_decref(resp);

        ck_assert_int_eq(shmctl(shm, IPC_RMID, NULL), 0);
        foreign = shmget((key_t) 1593835611, 4096, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);
        resp = test_request(fd, "{\"op\":\"status\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(resp, "channels")), 0);
        json_decref(resp);
        ck_assert_msg(stat(data, &st) != 0 && errno == ENOENT, "%s is left", data);
        ck_assert_msg(stat(space, &st) != 0 && errno == ENOENT, "%s is left", space);
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
        close(fd);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

START_TEST(test_derived_key_skips_fixed_keys) {
        char channels[256];
        json_t *resp;
        int fd;

        /* "b" claims the key "a" would derive first; "a" must leave it to "b". */
        snprintf(channels, sizeof channels,
                 "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096, \"key\": %u}]",
                 channel_derive_key(test_secret, "a", 0));
        test_write_secret(&td, test_secret);
        resp = start_and_list(channels, &fd);
        ck_assert_uint_eq((uint32_t) test_jint(test_find_channel(resp, "a"), "shm_key"), channel_derive_key(test_secret, "a", 1));
        ck_assert_uint_eq((uint32_t) test_jint(test_find_channel(resp, "b"), "shm_key"), channel_derive_key(test_secret, "a", 0));
        json_decref(resp);
        close(fd);
}
END_TEST

START_TEST(test_fd_exhaustion_pauses_accept) {
        enum { N = 40 };
        int conns[N], fd;
        long before;

        test_daemon_write_config(&td, two_channels);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=24:24", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        /*
         * One uid may have an eighth of the daemon's descriptors in connections
         * (here 3): two each from 20 uids, which SO_PEERCRED takes from the
         * effective uid at connect().
         */
        for (int i = 0; i < N; i++) {
                ck_assert_int_eq(seteuid((uid_t) (5000 + i / 2)), 0);
                conns[i] = test_connect(td.socket);     /* the backlog takes what accept cannot */
                ck_assert_int_eq(seteuid(0), 0);
        }
        usleep(200000);
        before = test_cpu_ticks(td.pid);
        usleep(1000000);
        /* Paused, not spinning: a spin would burn ~100 ticks a second. */
        ck_assert_int_lt(test_cpu_ticks(td.pid) - before, 20);
        /* ...and it said so once for this episode, not once per attempt. (When the
         * clients close below, each freed descriptor may start a new, real episode.) */
        char *log = test_daemon_log(&td);
        int said = 0;
        for (const char *p = log; (p = strstr(p, "pausing accept")); p++)
                said++;
        ck_assert_msg(said == 1, "\"pausing accept\" logged %d times while stuck:\n%s", said, log);
        free(log);
        /* The reserve descriptor told waiting clients why, instead of leaving them hanging. */
        int told = 0;
        for (int i = 0; i < N; i++) {
                char buf[512];
                ssize_t n = recv(conns[i], buf, sizeof buf - 1, MSG_DONTWAIT);

                if (n > 0) {
                        buf[n] = 0;
                        told += strstr(buf, "\"EMFILE\"") != NULL;
                }
        }
        ck_assert_int_ge(told, 1);
        for (int i = 0; i < N; i++)
                close(conns[i]);
        fd = test_connect(td.socket);
        test_assert_lists(fd);
        close(fd);
}
END_TEST

START_TEST(test_unprivileged_daemon_reclaims_unreadable_objects) {
        /* A channel mode without owner-read: a daemon without CAP_IPC_OWNER cannot
         * IPC_STAT its own objects, yet must still answer and reclaim them. */
        json_t *resp;
        int fd;
        char *log;

        ck_assert_int_eq(chown(td.dir, 65534, 65534), 0);
        test_daemon_write_config(&td, "[{\"name\": \"wo\", \"size\": 4096, \"mode\": \"0060\", \"key\": 4242}]");
        setenv("TEST_DAEMON_WRAPPER", "setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all --pdeathsig SIGKILL", 1);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"status\"}");
        ck_assert(json_is_boolean(json_object_get(resp, "ok")));      /* an answer, whatever it is */
        json_decref(resp);
        close(fd);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Reclaimed 2 object(s)"), "log: %s", log);
        free(log);
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        ck_assert_int_eq(test_ipcs_count("-s"), 1);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

START_TEST(test_foreign_fixed_key_fails_start_and_rolls_back) {
        /* "first" is created, then "second" hits a foreign segment on its key. */
        static const char channels[] =
                "[{\"name\": \"first\", \"size\": 4096},"
                " {\"name\": \"second\", \"size\": 4096, \"key\": 4660}]";
        struct shmid_ds ds;
        int foreign, status = 0;
        char *log;

        foreign = shmget(4660, 8192, IPC_CREAT | IPC_EXCL | 0644);
        ck_assert_int_ge(foreign, 0);
        test_daemon_write_config(&td, channels);
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "channel \"second\"") && strstr(log, "0x00001234") &&
                      strstr(log, "did not create"), "unclear message: %s", log);
        free(log);
        /* Only the foreign segment remains, unchanged; "first" was rolled back. */
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        ck_assert_int_eq(shmctl(foreign, IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_segsz, 8192);
        ck_assert_uint_eq(ds.shm_perm.mode & 0777, 0644);
        shmctl(foreign, IPC_RMID, NULL);
}
END_TEST

START_TEST(test_foreign_derived_key_moves_on) {
        json_t *resp;
        int foreign, fd;

        test_write_secret(&td, test_secret);
        foreign = semget((key_t) channel_derive_key(test_secret, "frames", 0), 1, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);
        resp = start_and_list("[{\"name\": \"frames\", \"size\": 4096}]", &fd);
        ck_assert_uint_eq((uint32_t) test_jint(json_array_get(json_object_get(resp, "channels"), 0), "shm_key"),
                          channel_derive_key(test_secret, "frames", 1));
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-s"), 1);     /* the foreign set, untouched */
        semctl(foreign, 0, IPC_RMID);
}
END_TEST

/*
 * A channel removed behind the daemon's back is made again at the key it
 * had, where its clients look for it, not at its first derived key: that
 * one was held by another program at the start and is free again now.
 */
START_TEST(test_remade_channel_keeps_the_key_it_moved_to) {
        uint32_t moved = channel_derive_key(test_secret, "frames", 1);
        json_t *resp, *ch;
        int foreign, fd, old_shm;

        test_write_secret(&td, test_secret);
        foreign = semget((key_t) channel_derive_key(test_secret, "frames", 0), 1, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);
        resp = start_and_list("[{\"name\": \"frames\", \"size\": 4096}]", &fd);
        ch = test_find_channel(resp, "frames");
        ck_assert_uint_eq((uint32_t) test_jint(ch, "shm_key"), moved);
        old_shm = (int) test_jint(ch, "shm_id");
        json_decref(resp);

        /* The other program is gone, then an admin removes the segment. */
        ck_assert_int_eq(semctl(foreign, 0, IPC_RMID), 0);
        ck_assert_int_eq(shmctl(old_shm, IPC_RMID, NULL), 0);
        resp = test_request(fd, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        ck_assert_int_ne(test_jint(resp, "shm_id"), old_shm);
        ck_assert_uint_eq((uint32_t) test_jint(resp, "shm_key"), moved);
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

START_TEST(test_kernel_limit_refused_before_creating) {
        int status = 0;
        char *log;

        /* Per-namespace limit: a segment over kernel.shmmax cannot be made. */
        test_write_proc("/proc/sys/kernel/shmmax", "1048576");
        test_daemon_write_config(&td, "[{\"name\": \"small\", \"size\": 4096}, {\"name\": \"big\", \"size\": \"2M\"}]");
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "channel \"big\"") && strstr(log, "kernel.shmmax") && strstr(log, "1048576"),
                      "unclear message: %s", log);
        free(log);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

START_TEST(test_kernel_sem_limit_refused_before_creating) {
        int status = 0;
        char *log;

        /* kernel.sem = SEMMSL SEMMNS SEMOPM SEMMNI: room for one set only. */
        test_write_proc("/proc/sys/kernel/sem", "250 32000 32 1");
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "SEMMNI") && strstr(log, "kernel.sem"), "unclear message: %s", log);
        free(log);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

typedef struct Ids {
        int shm, sem;
} Ids;

/* A client with full rw access, not the owner: the kernel refuses every owner's act. */
static void non_owner_child(void *userdata) {
        const Ids *ids = userdata;
        struct shmid_ds shm;
        struct semid_ds sem;

        test_drop_privileges(65534, 65534, 4242);
        if (shmat(ids->shm, NULL, 0) == (void *) -1)
                _exit(10);              /* it does have access */
        if (shmctl(ids->shm, IPC_RMID, NULL) == 0 || errno != EPERM)
                _exit(11);
        if (semctl(ids->sem, 0, IPC_RMID) == 0 || errno != EPERM)
                _exit(12);
        if (shmctl(ids->shm, IPC_STAT, &shm) < 0)
                _exit(13);
        shm.shm_perm.mode = 0666;
        shm.shm_perm.uid = 65534;
        if (shmctl(ids->shm, IPC_SET, &shm) == 0 || errno != EPERM)
                _exit(14);
        if (semctl(ids->sem, 0, IPC_STAT, &sem) < 0)
                _exit(15);
        sem.sem_perm.mode = 0666;
        if (semctl(ids->sem, 0, IPC_SET, &sem) == 0 || errno != EPERM)
                _exit(16);
        _exit(0);
}

/* In a child as uid 65534 (in no group of the channel's): three requests on one connection, each answer to `out`. */
typedef struct Asker {
        const char *socket;
        int out;
} Asker;

static void status_asker_child(void *userdata) {
        static const char *const requests[] = {
                "{\"op\":\"open\",\"channel\":\"private\",\"access\":\"ro\"}\n",
                "{\"op\":\"status\",\"channel\":\"private\"}\n",
                "{\"op\":\"status\"}\n",
        };
        const Asker *a = userdata;
        int fd;

        test_drop_privileges(65534, 65534, 0);
        fd = test_try_connect(a->socket);
        if (fd < 0)
                _exit(10);
        for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
                char *line;

                if (send(fd, requests[i], strlen(requests[i]), MSG_NOSIGNAL) != (ssize_t) strlen(requests[i]))
                        _exit(11);
                line = test_read_line(fd);
                if (!line)
                        _exit(12);
                if (write(a->out, line, strlen(line)) != (ssize_t) strlen(line) || write(a->out, "\n", 1) != 1)
                        _exit(13);
                free(line);
        }
        _exit(0);
}

/*
 * shmbrokerctl(1): "Anyone who can connect to the socket may ask for
 * status", and shmbroker-protocol(7): "hello, list and status need no rights
 * beyond connecting". A user the channel's mode gives nothing is refused
 * its open, but its status is answered, and in full: the same entry an
 * admin gets, semaphore values and holders included (no document hides any
 * figure from such a user).
 */
START_TEST(test_status_of_a_channel_the_asker_cannot_open) {
        int holder, sem_id, p[2], status;
        json_t *mine, *theirs, *all, *open, *ch, *sems, *clients;
        struct sembuf up = { .sem_num = 1, .sem_op = 2 };
        char buf[65536], *save = NULL, *line;
        size_t len = 0;
        ssize_t n;

        test_daemon_write_config(&td, "[{\"name\": \"private\", \"size\": 4096, \"semaphores\": [4, 7], \"mode\": \"0600\"}]");
        test_start_ok();
        holder = test_connect(td.socket);
        open = test_request(holder, "{\"op\":\"open\",\"channel\":\"private\",\"access\":\"rw\"}");
        test_assert_ok(open);
        sem_id = (int) test_jint(open, "sem_id");
        json_decref(open);
        /* A value the config did not set: the answer must show the kernel's, now. */
        ck_assert_int_eq(semop(sem_id, &up, 1), 0);

        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        status = test_in_child(status_asker_child, &(Asker) { td.socket, p[1] });
        close(p[1]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
        while (len < sizeof buf - 1 && (n = read(p[0], buf + len, sizeof buf - 1 - len)) > 0)
                len += (size_t) n;
        buf[len] = 0;
        close(p[0]);

        /* It cannot open the channel... */
        line = strtok_r(buf, "\n", &save);
        ck_assert_ptr_nonnull(line);
        open = json_loads(line, 0, NULL);
        ck_assert_msg(open != NULL, "not JSON: %s", line);
        test_assert_error(open, "EACCES");
        json_decref(open);

        /* ...but status answers it, as it answers root. */
        line = strtok_r(NULL, "\n", &save);
        ck_assert_ptr_nonnull(line);
        theirs = json_loads(line, 0, NULL);
        ck_assert_msg(theirs != NULL, "not JSON: %s", line);
        test_assert_ok(theirs);
        ch = test_must_find(theirs, "private");
        ck_assert_msg(!json_object_get(ch, "error"), "status of private has an error for uid 65534: %s", line);
        ck_assert_str_eq(test_jstr(ch, "mode"), "0600");
        sems = json_object_get(ch, "semaphores");
        ck_assert_msg(json_array_size(sems) == 2, "status of private lacks its 2 semaphores: %s", line);
        ck_assert_int_eq(test_jint(json_array_get(sems, 0), "value"), 4);
        ck_assert_int_eq(test_jint(json_array_get(sems, 1), "value"), 9);
        clients = json_object_get(ch, "clients");
        ck_assert_msg(json_array_size(clients) == 1, "status of private should show root's hold: %s", line);
        ck_assert_int_eq(test_jint(json_array_get(clients, 0), "uid"), 0);
        ck_assert_int_eq(test_jint(json_array_get(clients, 0), "pid"), getpid());
        ck_assert_str_eq(test_jstr(json_array_get(clients, 0), "access"), "rw");
        mine = test_request(holder, "{\"op\":\"status\",\"channel\":\"private\"}");
        test_assert_ok(mine);
        ck_assert_msg(json_equal(mine, theirs), "uid 65534 and root get different status of private:\n%s\n%s", line,
                      json_dumps(mine, JSON_COMPACT));

        /* The status of all channels lists it the same. */
        line = strtok_r(NULL, "\n", &save);
        ck_assert_ptr_nonnull(line);
        all = json_loads(line, 0, NULL);
        ck_assert_msg(all != NULL, "not JSON: %s", line);
        test_assert_ok(all);
        ck_assert_msg(json_equal(test_must_find(all, "private"), test_must_find(mine, "private")),
                      "the status of all shows private otherwise to uid 65534: %s", line);
        json_decref(all);
        json_decref(mine);
        json_decref(theirs);
        close(holder);
}
END_TEST

START_TEST(test_clients_cannot_remove_or_reown) {
        json_t *resp;
        Ids ids;
        int fd, status;

        resp = start_and_list("[{\"name\": \"g\", \"size\": 4096, \"group\": 4242, \"mode\": \"0660\"}]", &fd);
        ids.shm = (int) test_jint(test_find_channel(resp, "g"), "shm_id");
        ids.sem = (int) test_jint(test_find_channel(resp, "g"), "sem_id");
        json_decref(resp);
        close(fd);
        status = test_in_child(non_owner_child, &ids);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", WEXITSTATUS(status));
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
}
END_TEST

START_TEST(test_second_daemon_refuses) {
        int status = 0;
        char *log;
        int fd;
        TestDaemon second = td;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        second.pid = -1;
        second.notify_fd = -1;
        ck_assert(!test_daemon_start(&second, &status, NULL));
        close(second.notify_fd);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "Another shmbrokerd is running"));
        free(log);
        /* The first one's socket is still there and answers; nothing doubled. */
        fd = test_connect(td.socket);
        test_assert_lists(fd);
        close(fd);
        ck_assert_int_eq(test_ipcs_count("-m"), 2);
}
END_TEST

START_TEST(test_stale_socket_replaced_live_socket_kept) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int s, status = 0;
        char *log;

        test_daemon_write_config(&td, two_channels);
        /* A socket file nobody listens on (a crashed daemon's) is replaced. */
        s = socket(AF_UNIX, SOCK_STREAM, 0);
        strcpy(sa.sun_path, td.socket);
        ck_assert_int_eq(bind(s, (struct sockaddr *) &sa, sizeof sa), 0);
        close(s);
        test_start_ok();
        test_daemon_stop_ok(&td);

        /* A socket some other server answers on is not. */
        s = socket(AF_UNIX, SOCK_STREAM, 0);
        ck_assert_int_eq(bind(s, (struct sockaddr *) &sa, sizeof sa), 0);
        ck_assert_int_eq(listen(s, 1), 0);
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "already listening"));
        free(log);
        ck_assert_int_eq(access(td.socket, F_OK), 0);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);     /* rolled back */
        close(s);
}
END_TEST

/*
 * shmbroker.json(5), "key": "The daemon's own user must be able to reach
 * the file (search every directory of PATH), or the start fails with
 * ftok's EACCES"; ERRORS: "A configuration with any error is refused as a
 * whole: a start exits with status 1"; shmbrokerd(8) reads the whole
 * configuration first, before any lock, state file or object. A daemon
 * running as uid 65534, its key file in a directory of root's that only
 * root may search, must say which channel and file, and leave the IPC
 * namespace and its state directory as it found them. The same daemon
 * starts once the directory may be searched: it was the search right.
 */
START_TEST(test_unreachable_ftok_file_fails_an_unprivileged_start) {
        static const char *const ours[] = { "shmbroker.json", "daemon.log", "notify", "keys" };
        char keys[300], path[400], *text, *log;
        json_t *resp, *list;
        struct dirent *e;
        int status = 0, fd;
        DIR *dir;

        /* The daemon's state directory is the socket's: its own, 0700. */
        ck_assert_int_eq(chown(td.dir, 65534, 65534), 0);
        ck_assert_int_eq(chmod(td.dir, 0700), 0);
        td.uid = 65534;
        td.gid = 65534;
        snprintf(keys, sizeof keys, "%s/keys", td.dir);
        ck_assert_int_eq(mkdir(keys, 0700), 0);
        snprintf(path, sizeof path, "%s/legacy.key", keys);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_ge(asprintf(&text, "[{\"name\": \"first\", \"size\": 4096, \"semaphores\": [1]},"
                                         " {\"name\": \"legacy\", \"size\": 4096, \"key\": {\"ftok\": [\"%s\", 12]}}]",
                                  path), 0);
        test_daemon_write_config(&td, text);
        free(text);

        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "\"legacy\"") && strstr(log, path) && strstr(log, strerror(EACCES)),
                      "the refusal does not name the channel, the file and EACCES: %s", log);
        free(log);
        assert_nothing_left();
        dir = opendir(td.dir);
        ck_assert_ptr_nonnull(dir);
        while ((e = readdir(dir))) {
                bool known = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");

                for (size_t i = 0; i < sizeof ours / sizeof *ours; i++)
                        known = known || !strcmp(e->d_name, ours[i]);
                ck_assert_msg(known, "the failed start left %s/%s", td.dir, e->d_name);
        }
        closedir(dir);

        /* The control: with the search right, the same start succeeds and uses ftok's key. */
        ck_assert_int_eq(chmod(keys, 0711), 0);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        list = test_must_find(resp, "legacy");
        ck_assert_int_eq(test_jint(list, "shm_key"), (json_int_t) (uint32_t) ftok(path, 12));
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * shmbrokerd(8), --check-config: "No IPC object, socket, lock or state file
 * is touched, and the kernel's IPC limits and keys already in use are not
 * checked", as EXAMPLES uses it: a new file validated before it is
 * installed, while the daemon runs on the socket that file names. A file
 * with a fixed key another program holds and a segment above this
 * namespace's kernel.shmmax is valid (exit 0, its one line on stdout); the
 * running daemon's socket, lock, state and secret stay as they were (same
 * inode, size and modification time), and it serves on.
 */
START_TEST(test_check_config_beside_a_running_daemon) {
        static const char *const suffixes[] = { "", ".lock", ".state", ".secret" };
        struct stat before[4], after;
        char path[400], next[400], out[1024], expect[600];
        int foreign, fd, rc;
        FILE *f;

        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        for (size_t i = 0; i < 4; i++) {
                ck_assert_int_lt(snprintf(path, sizeof path, "%s%s", td.socket, suffixes[i]), (int) sizeof path);
                ck_assert_msg(lstat(path, &before[i]) == 0, "%s: %s", path, strerror(errno));
        }
        foreign = shmget(0x5e11, 4096, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign, 0);
        test_write_proc("/proc/sys/kernel/shmmax", "65536");
        ck_assert_int_lt(snprintf(next, sizeof next, "%s/next.json", td.dir), (int) sizeof next);
        f = fopen(next, "we");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "{\"version\": 1, \"socket\": \"%s\", \"channels\": [{\"name\": \"a\", \"size\": 4096, \"key\": %d},"
                   " {\"name\": \"big\", \"size\": 1048576}]}\n", td.socket, 0x5e11);
        ck_assert_int_eq(fclose(f), 0);

        rc = test_run(out, sizeof out, "%s --check-config -c %s 2>/dev/null", SHMBROKERD_PATH, next);
        snprintf(expect, sizeof expect, "%s: configuration OK (2 channels)\n", next);
        if (rc != 0) {
                test_run(out, sizeof out, "%s --check-config -c %s 2>&1", SHMBROKERD_PATH, next);
                ck_abort_msg("--check-config beside a running daemon: exit %d: %s", rc, out);
        }
        ck_assert_str_eq(out, expect);

        for (size_t i = 0; i < 4; i++) {
                snprintf(path, sizeof path, "%s%s", td.socket, suffixes[i]);
                ck_assert_msg(lstat(path, &after) == 0, "--check-config removed the running daemon's %s", path);
                ck_assert_msg(after.st_ino == before[i].st_ino && after.st_size == before[i].st_size &&
                              after.st_mtim.tv_sec == before[i].st_mtim.tv_sec &&
                              after.st_mtim.tv_nsec == before[i].st_mtim.tv_nsec,
                              "--check-config touched the running daemon's %s", path);
        }
        /* Nothing made or removed: the daemon's two channels and the foreign segment. */
        ck_assert_int_eq(test_ipcs_count("-m"), 3);
        ck_assert_int_eq(test_ipcs_count("-s"), 2);
        fd = test_connect(td.socket);
        test_assert_lists(fd);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
}
END_TEST

START_TEST(test_check_config_touches_no_ipc) {
        int status = 0;
        char *log;

        test_daemon_write_config(&td, two_channels);
        ck_assert(!test_daemon_start(&td, &status, "--check-config", NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_ne(access(td.socket, F_OK), 0);

        test_daemon_write_config(&td, "[{\"name\": \"x\", \"size\": 4096, \"group\": \"no-such-group-here\"}]");
        ck_assert(!test_daemon_start(&td, &status, "--check-config", NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "unknown group \"no-such-group-here\""));
        free(log);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);

        /* shmbroker.json(5): another owner is accepted with a warning, here as at start and reload. */
        test_daemon_write_config(&td, "[{\"name\": \"x\", \"size\": 4096, \"owner\": 65534}]");
        ck_assert(!test_daemon_start(&td, &status, "--check-config", NULL));
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Channel x: owner uid 65534 is not the daemon's"), "log: %s", log);
        free(log);
}
END_TEST

/* ---- CAP_IPC_OWNER counts only where the kernel honours it ---- */

typedef struct CapCase {
        const char *what;
        const char *channel;
        bool own_userns;        /* uid 65534, made root of a user namespace of its own */
        bool drop_cap;          /* root without CAP_IPC_OWNER in its effective set */
        bool keep_cap;          /* uid 65534 that kept CAP_IPC_OWNER in the initial user namespace */
        bool kernel_differs;    /* the daemon cannot see the capability: its verdict and the kernel's must differ */
        bool expect_ok;         /* the daemon's verdict */
        pid_t hidden_from;      /* not 0: a daemon whose /proc must not show this peer to the daemon's user */
        const char *socket;     /* filled in by the test */
        int shm_id;
} CapCase;

/* Exit statuses of cap_child(), for the parent's message. */
enum {
        CAP_CHILD_NO_USERNS = 30,       /* unshare(CLONE_NEWUSER) or the id maps failed */
        CAP_CHILD_NO_FULL_CAPS,         /* the setup did not give the CapEff it should */
        CAP_CHILD_DROP_FAILED,
        CAP_CHILD_IO,                   /* connect, send or no answer */
        CAP_CHILD_BAD_ANSWER,           /* neither ok nor EACCES; or status not ok */
        CAP_CHILD_KERNEL_ERRNO,         /* shmat failed with another errno than EACCES */
        CAP_CHILD_DISAGREE,             /* the daemon and the kernel disagree */
        CAP_CHILD_WRONG_VERDICT,        /* both agree, but not as expected */
        CAP_CHILD_WRONG_HOLDERS,        /* status lists a hold the daemon should not have recorded, or lacks one */
        CAP_CHILD_KEEP_FAILED,          /* uid 65534 could not keep CAP_IPC_OWNER */
        CAP_CHILD_AGREE,                /* the daemon and the kernel agree where the daemon cannot know */
};

static void write_file_or_exit(const char *path, const char *text) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);

        if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t) strlen(text) || close(fd) < 0)
                _exit(CAP_CHILD_NO_USERNS);
}

/* Root in a user namespace of its own: a full CapEff there, nothing over our IPC namespace. */
static void become_root_of_own_userns(void) {
        test_drop_privileges(65534, 65534, 0);
        /* setuid() made us undumpable, which gives our /proc files to root: the maps could not be written. */
        if (prctl(PR_SET_DUMPABLE, 1) < 0 || unshare(CLONE_NEWUSER) < 0)
                _exit(CAP_CHILD_NO_USERNS);
        write_file_or_exit("/proc/self/setgroups", "deny");
        write_file_or_exit("/proc/self/uid_map", "0 65534 1");
        write_file_or_exit("/proc/self/gid_map", "0 65534 1");
        if (getuid() != 0 || !test_pid_cap_effective(0, CAP_IPC_OWNER))
                _exit(CAP_CHILD_NO_FULL_CAPS);
}

static void drop_effective_cap(unsigned cap) {
        test_drop_effective_caps(UINT64_C(1) << cap);
        if (test_pid_cap_effective(0, cap))
                _exit(CAP_CHILD_DROP_FAILED);
}

/* uid 65534 with CAP_IPC_OWNER (and nothing else) where the kernel looks for it: the initial user namespace. */
static void become_nobody_with_cap_ipc_owner(void) {
        struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3] = {};

        /* setuid() away from 0 empties the permitted set too, unless told to keep it. */
        if (prctl(PR_SET_KEEPCAPS, 1) < 0)
                _exit(CAP_CHILD_KEEP_FAILED);
        test_drop_privileges(65534, 65534, 0);
        d[CAP_IPC_OWNER / 32].permitted = d[CAP_IPC_OWNER / 32].effective = 1u << (CAP_IPC_OWNER % 32);
        if (syscall(SYS_capset, &h, d) < 0 || getuid() != 65534 || geteuid() != 65534 ||
            !test_pid_cap_effective(0, CAP_IPC_OWNER) || test_pid_cap_effective(0, CAP_SYS_ADMIN))
                _exit(CAP_CHILD_KEEP_FAILED);
}

/* The daemon's user in test_capability_that_cannot_be_seen_is_root_only: neither a peer's uid nor 0. */
#define HIDDEN_DAEMON_UID 65533
#define HIDDEN_DAEMON_UID_TEXT_(x) #x
#define HIDDEN_DAEMON_UID_TEXT(x) HIDDEN_DAEMON_UID_TEXT_(x)

typedef struct HideProbe {
        pid_t daemon;
        pid_t pid;
} HideProbe;

/* Exit statuses of hide_probe(). */
enum {
        HIDE_NO_NS = 50,        /* cannot enter the daemon's mount namespace */
        HIDE_NOT_THERE,         /* not even root sees the pid in that /proc: the probe would prove nothing */
        HIDE_VISIBLE,           /* the daemon's user sees it */
        HIDE_WRONG_ERRNO,       /* hidden, but not as hidepid=invisible hides (ENOENT) */
        HIDE_NO_GO,             /* the peer it waited for never said go */
};

/*
 * In a throwaway child (it enters another mount namespace and drops to the
 * daemon's user): whether /proc/PID, in the /proc the daemon sees, is
 * hidden from the daemon's user, as ProtectProc=invisible (the shipped
 * unit) hides it. Without that, another user's /proc/PID/ns/user would
 * still refuse a daemon without CAP_SYS_PTRACE (EACCES), into the same
 * fallback: the verdicts alone could not tell the two apart.
 */
static void hide_probe(void *userdata) {
        const HideProbe *hp = userdata;
        char path[64];
        struct stat st;
        int ns;

        snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int) hp->daemon);
        ns = open(path, O_RDONLY | O_CLOEXEC);
        if (ns < 0 || setns(ns, CLONE_NEWNS) < 0)
                _exit(HIDE_NO_NS);
        snprintf(path, sizeof path, "/proc/%d", (int) hp->pid);
        if (stat(path, &st) < 0)
                _exit(HIDE_NOT_THERE);
        test_drop_privileges(HIDDEN_DAEMON_UID, HIDDEN_DAEMON_UID, 0);
        if (stat(path, &st) == 0)
                _exit(HIDE_VISIBLE);
        _exit(errno == ENOENT ? 0 : HIDE_WRONG_ERRNO);
}

/* The holders status lists for the channel, from an answer line; -1 when the answer is not as it must be. */
static int holders_in_status(const char *line, const char *channel) {
        json_t *v = json_loads(line, 0, NULL), *e, *clients;
        size_t i;
        int n = -1;

        json_array_foreach(json_object_get(v, "channels"), i, e) {
                if (!json_is_string(json_object_get(e, "name")) ||
                    strcmp(json_string_value(json_object_get(e, "name")), channel) != 0)
                        continue;
                clients = json_object_get(e, "clients");
                if (json_is_array(clients))
                        n = (int) json_array_size(clients);
        }
        if (!json_is_true(json_object_get(v, "ok")))
                n = -1;
        json_decref(v);
        return n;
}

/*
 * In a child: ask for the channel rw, see whether status then lists this
 * connection as a holder, and let the kernel judge with shmat() on the
 * segment, all while the connection (and any hold) is still open.
 */
static void cap_child(void *userdata) {
        const CapCase *c = userdata;
        char req[256], *line;
        bool daemon_ok, kernel_ok;
        void *addr;
        int fd, holders, go[2] = { -1, -1 }, probe_status;
        pid_t probe = 0;

        /*
         * The probe is forked while we are still root (it must enter the daemon's
         * mount namespace), and looks once we are the peer the daemon will see.
         */
        if (c->hidden_from > 0) {
                if (pipe2(go, O_CLOEXEC) < 0 || (probe = fork()) < 0)
                        _exit(CAP_CHILD_IO);
                if (probe == 0) {
                        char b;

                        close(go[1]);
                        if (read(go[0], &b, 1) != 1)
                                _exit(HIDE_NO_GO);
                        hide_probe(&(HideProbe) { .daemon = c->hidden_from, .pid = getppid() });
                }
                close(go[0]);
        }
        if (c->own_userns)
                become_root_of_own_userns();
        if (c->keep_cap)
                become_nobody_with_cap_ipc_owner();
        if (c->drop_cap)
                drop_effective_cap(CAP_IPC_OWNER);
        if (probe > 0) {
                if (write(go[1], "g", 1) != 1 || waitpid(probe, &probe_status, 0) != probe)
                        _exit(CAP_CHILD_IO);
                /* Its own reason (HIDE_*) as ours: a peer the daemon can see would test nothing here. */
                if (!WIFEXITED(probe_status) || WEXITSTATUS(probe_status) != 0)
                        _exit(WIFEXITED(probe_status) ? WEXITSTATUS(probe_status) : CAP_CHILD_IO);
                close(go[1]);
        }
        fd = test_try_connect(c->socket);
        if (fd < 0)
                _exit(CAP_CHILD_IO);
        snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"rw\"}\n"
                 "{\"op\":\"status\",\"channel\":\"%s\"}\n", c->channel, c->channel);
        if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t) strlen(req))
                _exit(CAP_CHILD_IO);
        line = test_read_line(fd);
        if (!line)
                _exit(CAP_CHILD_IO);
        daemon_ok = strstr(line, "\"ok\":true") != NULL;
        if (!daemon_ok && !strstr(line, "\"EACCES\""))
                _exit(CAP_CHILD_BAD_ANSWER);
        free(line);
        line = test_read_line(fd);
        if (!line)
                _exit(CAP_CHILD_IO);
        holders = holders_in_status(line, c->channel);
        free(line);
        if (holders < 0)
                _exit(CAP_CHILD_BAD_ANSWER);
        /* The judge: the kernel, for this very process. */
        addr = shmat(c->shm_id, NULL, 0);
        kernel_ok = addr != (void *) -1;
        if (kernel_ok)
                shmdt(addr);
        else if (errno != EACCES)
                _exit(CAP_CHILD_KERNEL_ERRNO);
        if (!c->kernel_differs && daemon_ok != kernel_ok)
                _exit(CAP_CHILD_DISAGREE);
        if (c->kernel_differs && daemon_ok == kernel_ok)
                _exit(CAP_CHILD_AGREE);
        if (daemon_ok != c->expect_ok)
                _exit(CAP_CHILD_WRONG_VERDICT);
        if (holders != (daemon_ok ? 1 : 0))
                _exit(CAP_CHILD_WRONG_HOLDERS);
        close(fd);
        _exit(0);
}

/* Each case in a child of its own (cap_child()), against the channels of `list`; hidden_from: see CapCase. */
static void run_cap_cases(CapCase *cases, size_t n, json_t *list, pid_t hidden_from) {
        for (size_t i = 0; i < n; i++) {
                int status;

                cases[i].socket = td.socket;
                cases[i].shm_id = (int) test_jint(test_must_find(list, cases[i].channel), "shm_id");
                cases[i].hidden_from = hidden_from;
                status = test_in_child(cap_child, &cases[i]);
                ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                              "%s, open %s rw: child status %d (30: no user namespace, 31: no full CapEff in it, "
                              "32: capset, 33: i/o, 34: bad answer, 35: shmat errno, 36: daemon and kernel disagree, "
                              "37: wrong verdict of the daemon, 38: status lists a hold it should not, or lacks one, "
                              "39: uid 65534 could not keep CAP_IPC_OWNER, 40: daemon and kernel agree where the "
                              "daemon cannot know; 50-53: this peer is not hidden from the daemon, as for the probe; "
                              "54: the probe was not told to look)",
                              cases[i].what, cases[i].channel, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
}

/* Every child has gone: nobody holds a or b, the daemon serves on, and it logged refusing a. */
static void assert_cap_cases_left_no_holds(int fd, const char *a, const char *b) {
        json_t *resp = test_request(fd, "{\"op\":\"status\"}");
        char *log, refused[128];

        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, a), "clients")), 0);
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, b), "clients")), 0);
        json_decref(resp);
        close(fd);
        log = test_daemon_log(&td);
        snprintf(refused, sizeof refused, "Refused rw access to channel %s", a);
        ck_assert_msg(strstr(log, refused), "log: %s", log);
        free(log);
}

START_TEST(test_capability_of_own_user_namespace_is_not_honoured) {
        /* Both owned by root (the daemon's user). "none": not even its owner may use it without the capability. */
        static const char channels[] =
                "[{\"name\": \"private\", \"size\": 4096, \"mode\": \"0600\"},"
                " {\"name\": \"none\", \"size\": 4096, \"mode\": \"0000\"}]";
        CapCase cases[] = {
                { "uid 65534 as root of its own user namespace", "private", .own_userns = true, .expect_ok = false },
                { "the same, on a mode-0000 channel", "none", .own_userns = true, .expect_ok = false },
                { "root with CAP_IPC_OWNER", "none", .expect_ok = true },
                { "root without CAP_IPC_OWNER", "none", .drop_cap = true, .expect_ok = false },
        };
        json_t *list;
        int fd;

        list = start_and_list(channels, &fd);
        run_cap_cases(cases, sizeof cases / sizeof cases[0], list, 0);
        json_decref(list);
        assert_cap_cases_left_no_holds(fd, "private", "none");
}
END_TEST

/*
 * ipcperms() takes the creator's ids for the owner's and the group's too
 * (shmbroker-protocol(7): "owner or creator", "group or creator group"): the
 * daemon, root, created the segment of a channel it gave to uid 65534, so
 * a root peer without CAP_IPC_OWNER has the owner's bits there (of a
 * channel whose group bits would not do), and a peer whose group is the
 * daemon's (0) the group's. Both attach: both open.
 */
START_TEST(test_creator_ids_count_as_the_kernel_counts_them) {
        static const char channels[] =
                "[{\"name\": \"given\", \"size\": 4096, \"owner\": 65534, \"group\": 65534, \"mode\": \"0600\"},"
                " {\"name\": \"grouped\", \"size\": 4096, \"owner\": 65534, \"group\": 65534, \"mode\": \"0660\"}]";
        CapCase caps[] = {
                { "root without CAP_IPC_OWNER, the creator", "given", .drop_cap = true, .expect_ok = true },
        };
        AccessCase groups[] = {
                { "grouped", "rw", 4242, 0, 0, true },         /* primary group: the creator's */
                { "grouped", "ro", 4242, 4242, 4243, false },  /* neither: other, no bits */
        };
        json_t *list;
        int fd;

        list = start_and_list(channels, &fd);
        run_cap_cases(caps, sizeof caps / sizeof caps[0], list, 0);
        run_access_cases(groups, sizeof groups / sizeof groups[0], list);
        json_decref(list);
        close(fd);
}
END_TEST

/* Connected as root, then uid 65534 keeping CAP_IPC_OWNER: 0 when the daemon refused, 21 when it let it in. */
static void changed_uid_child(void *userdata) {
        const char *socket = userdata;
        static const char req[] = "{\"op\":\"open\",\"channel\":\"none\",\"access\":\"rw\"}\n";
        char *line;
        int fd;

        fd = test_try_connect(socket);
        if (fd < 0)
                _exit(CAP_CHILD_IO);
        become_nobody_with_cap_ipc_owner();
        if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t) strlen(req))
                _exit(CAP_CHILD_IO);
        line = test_read_line(fd);
        if (!line)
                _exit(CAP_CHILD_IO);
        if (strstr(line, "\"ok\":true"))
                _exit(CAP_CHILD_WRONG_VERDICT);
        _exit(strstr(line, "\"EACCES\"") ? 0 : CAP_CHILD_BAD_ANSWER);
}

/* Start with channel "none" (mode 0000) and run child, which must end 0: refused where it must be. */
static void run_none_child(void (*child)(void *)) {
        json_t *list;
        int fd, status;

        list = start_and_list("[{\"name\": \"none\", \"size\": 4096, \"mode\": \"0000\"}]", &fd);
        json_decref(list);
        status = test_in_child(child, td.socket);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "child status %d (33: i/o, 34: bad answer, 37: let in, 39: uid 65534 could not keep "
                      "CAP_IPC_OWNER)", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        close(fd);
}

/*
 * shmbroker-protocol(7): CapEff counts only while the peer's "effective uid
 * is still the one it connected with". A root process that connected, then
 * became uid 65534 keeping CAP_IPC_OWNER, had the capability at the accept
 * and has it now; but it is not the peer the daemon accepted any more.
 */
START_TEST(test_capability_counts_only_under_the_uid_it_connected_with) {
        run_none_child(changed_uid_child);
}
END_TEST

/*
 * In a child (root): P, uid 65534 keeping CAP_IPC_OWNER, connects and
 * forks Q, which keeps the connection; P exits and stays a zombie (we do
 * not reap it), so its pid names no other process; then Q asks for "none"
 * rw. 0 when the daemon refused, CAP_CHILD_WRONG_VERDICT when it let Q in.
 */
static void gone_peer_child(void *userdata) {
        const char *socket = userdata;
        static const char req[] = "{\"op\":\"open\",\"channel\":\"none\",\"access\":\"rw\"}\n";
        int go[2], verdict[2];
        siginfo_t info;
        char v = CAP_CHILD_IO;
        pid_t p;

        if (pipe2(go, O_CLOEXEC) < 0 || pipe2(verdict, O_CLOEXEC) < 0 || (p = fork()) < 0)
                _exit(CAP_CHILD_IO);
        if (p == 0) {
                int fd;
                pid_t q;

                become_nobody_with_cap_ipc_owner();
                fd = test_try_connect(socket);
                if (fd < 0 || (q = fork()) < 0)
                        _exit(CAP_CHILD_IO);
                if (q == 0) {
                        char b, *line;

                        if (read(go[0], &b, 1) != 1 || send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t) strlen(req) ||
                            !(line = test_read_line(fd)))
                                v = CAP_CHILD_IO;
                        else
                                v = strstr(line, "\"ok\":true") ? CAP_CHILD_WRONG_VERDICT :
                                    strstr(line, "\"EACCES\"") ? 0 : CAP_CHILD_BAD_ANSWER;
                        _exit(write(verdict[1], &v, 1) == 1 ? 0 : CAP_CHILD_IO);
                }
                _exit(0);
        }
        close(verdict[1]);
        /* WNOWAIT: P stays a zombie while Q asks. */
        if (waitid(P_PID, (id_t) p, &info, WEXITED | WNOWAIT) < 0 || info.si_code != CLD_EXITED || info.si_status != 0 ||
            write(go[1], "g", 1) != 1 || read(verdict[0], &v, 1) != 1)
                _exit(CAP_CHILD_IO);
        _exit(v);
}

/*
 * shmbroker-protocol(7): where the capability cannot be proven, "or the
 * process gone", uid 0 passes and nobody else. The process that connected
 * has exited (its fork asks on the connection): its CapEff proves nothing.
 */
START_TEST(test_capability_of_a_peer_gone_is_not_believed) {
        run_none_child(gone_peer_child);
}
END_TEST

/*
 * The wrapper of a daemon that cannot see its peers' /proc: a mount
 * namespace of its own (the TEST_DAEMON_WRAPPER runs it under unshare)
 * whose /proc is a fresh procfs with hidepid=invisible, then the daemon as
 * HIDDEN_DAEMON_UID without groups or capabilities. setuid() clears the
 * parent-death signal the helpers set, hence --pdeathsig: a failed test
 * skips its teardown, and the daemon must not outlive it.
 */
static const char hidden_proc_wrapper[] =
        "#!/bin/sh\n"
        "mount -t proc -o hidepid=invisible proc /proc || {\n"
        "        echo \"hidden /proc wrapper: cannot mount a procfs with hidepid=invisible\" >&2\n"
        "        exit 1\n"
        "}\n"
        "exec setpriv --reuid " HIDDEN_DAEMON_UID_TEXT(HIDDEN_DAEMON_UID) " --regid " HIDDEN_DAEMON_UID_TEXT(HIDDEN_DAEMON_UID)
        " --clear-groups --inh-caps=-all --bounding-set=-all \\\n"
        "        --pdeathsig SIGKILL -- \"$@\"\n";

START_TEST(test_capability_that_cannot_be_seen_is_root_only) {
        /*
         * Owned by the daemon's user, so the bits let no peer below through:
         * "mine" 0600 (which the daemon itself can still read), "none" 0000.
         * Only CAP_IPC_OWNER would, and the daemon cannot see who holds it.
         */
        static const char channels[] =
                "[{\"name\": \"mine\", \"size\": 4096, \"mode\": \"0600\"},"
                " {\"name\": \"none\", \"size\": 4096, \"mode\": \"0000\"}]";
        /*
         * README, "Security and threat model": where the capability cannot be
         * proven (/proc of that process hidden), "uid 0 passes and nobody else".
         * So the daemon and the kernel must disagree on two kinds of peer: that is the
         * documented limitation, asserted as such.
         */
        CapCase cases[] = {
                { "uid 65534 holding CAP_IPC_OWNER, hidden from the daemon", "mine", .keep_cap = true,
                  .kernel_differs = true, .expect_ok = false },
                { "the same, on a mode-0000 channel", "none", .keep_cap = true, .kernel_differs = true, .expect_ok = false },
                { "root with CAP_IPC_OWNER, hidden from the daemon", "none", .expect_ok = true },
                { "root without CAP_IPC_OWNER, hidden from the daemon", "none", .drop_cap = true,
                  .kernel_differs = true, .expect_ok = true },
        };
        char script[400], wrapper[512], *log;
        json_t *list;
        int fd, status = 0;
        bool started;
        FILE *f;

        snprintf(script, sizeof script, "%s/hidden-proc-wrapper", td.dir);
        f = fopen(script, "wxe");
        ck_assert_msg(f && fputs(hidden_proc_wrapper, f) >= 0 && fclose(f) == 0 && chmod(script, 0755) == 0,
                      "cannot write %s: %s", script, strerror(errno));
        /* The state and socket directory must be the daemon's user's own, or it refuses to start. */
        ck_assert_int_eq(chown(td.dir, HIDDEN_DAEMON_UID, HIDDEN_DAEMON_UID), 0);
        test_daemon_write_config(&td, channels);
        snprintf(wrapper, sizeof wrapper, "unshare --mount --propagation private %s", script);
        setenv("TEST_DAEMON_WRAPPER", wrapper, 1);
        started = test_daemon_start(&td, &status, NULL);
        unsetenv("TEST_DAEMON_WRAPPER");
        if (!started) {
                log = test_daemon_log(&td);
                ck_abort_msg("no daemon behind a hidden /proc (status %d): this test needs a private mount "
                             "namespace and procfs's hidepid=invisible (Linux 5.8), it cannot be skipped; log:\n%s",
                             status, log);
        }
        /* The setup really hides: in the daemon's /proc, its user cannot see this (root's) process. */
        status = test_in_child(hide_probe, &(HideProbe) { .daemon = td.pid, .pid = getpid() });
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "the daemon's /proc does not hide root's processes from uid %d: probe status %d "
                      "(50: cannot enter its mount namespace, 51: root does not see the pid there either, "
                      "52: visible, 53: hidden otherwise than by hidepid=invisible)",
                      HIDDEN_DAEMON_UID, WIFEXITED(status) ? WEXITSTATUS(status) : -1);

        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(list);
        run_cap_cases(cases, sizeof cases / sizeof cases[0], list, td.pid);
        json_decref(list);
        assert_cap_cases_left_no_holds(fd, "mine", "none");
        test_daemon_stop_ok(&td);
        assert_nothing_left();
}
END_TEST

/* ---- status from a daemon that cannot read one channel ---- */

/* An entry the daemon could not fully read: its error, list fields and segment figures, no semaphores. */
static void assert_unreadable_entry(json_t *e) {
        char *text = json_dumps(e, JSON_COMPACT);

        ck_assert_msg(json_is_string(json_object_get(e, "error")) &&
                      strcmp(json_string_value(json_object_get(e, "error")), "EACCES") == 0,
                      "no EACCES on the unreadable channel: %s", text);
        ck_assert_msg(json_is_string(json_object_get(e, "message")) &&
                      json_string_length(json_object_get(e, "message")) > 0, "no message: %s", text);
        ck_assert_msg(!json_object_get(e, "semaphores"), "semaphores that nobody read: %s", text);
        /* What could be had: the list fields, and the segment's figures through SHM_STAT_ANY. */
        ck_assert_str_eq(test_jstr(e, "mode"), "0060");
        ck_assert_int_eq(test_jint(e, "nsems"), 2);
        ck_assert_int_ge(test_jint(e, "nattch"), 1);           /* the daemon's own attachment */
        ck_assert_int_gt(test_jint(e, "cpid"), 0);
        ck_assert_msg(json_is_array(json_object_get(e, "clients")), "no clients: %s", text);
        free(text);
}

/* shmbrokerctl's output for these arguments (malloc'd); it is built next to the daemon. */
static char *ctl_output(const char *args, int *ret_status) {
        const char *daemon = SHMBROKERD_PATH, *tail = strstr(daemon, "daemon/shmbrokerd");
        char cmd[1024], *out = calloc(1, 8192);
        size_t n = 0;
        FILE *p;

        ck_assert_ptr_nonnull(tail);
        ck_assert_ptr_nonnull(out);
        snprintf(cmd, sizeof cmd, "%.*sclient/shmbrokerctl -s %s %s", (int) (tail - daemon), daemon, td.socket, args);
        p = popen(cmd, "re");
        ck_assert_ptr_nonnull(p);
        n = fread(out, 1, 8191, p);
        out[n] = 0;
        *ret_status = pclose(p);
        return out;
}

/* The table's line for a channel (malloc'd). */
static char *table_line(const char *out, const char *name) {
        size_t n = strlen(name);

        for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
                if (strncmp(l, name, n) == 0 && l[n] == ' ')
                        return strndup(l, strcspn(l, "\n"));
        ck_abort_msg("no line for %s in:\n%s", name, out);
        return NULL;
}

/* Each semaphore's value in order, and again after one moved: sets on either side of read_semaphores()'s stack array. */
static void assert_semaphore_values(json_t *ch, unsigned n, unsigned moved, int moved_to) {
        json_t *sems = json_object_get(ch, "semaphores");

        ck_assert_uint_eq(json_array_size(sems), n);
        for (unsigned i = 0; i < n; i++) {
                int want = i == moved ? moved_to : (int) (3 * i + 1);

                ck_assert_int_eq(test_jint(json_array_get(sems, i), "value"), want);
        }
}

START_TEST(test_status_reads_every_semaphore_of_large_sets) {
        static const unsigned sizes[] = { 16, 17, 62 };
        char channels[4096], *p = channels;
        json_t *resp, *ch;
        int fd;

        p += sprintf(p, "[");
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
                p += sprintf(p, "%s{\"name\": \"s%u\", \"size\": 4096, \"semaphores\": [", k ? ", " : "", sizes[k]);
                for (unsigned i = 0; i < sizes[k]; i++)
                        p += sprintf(p, "%s%u", i ? ", " : "", 3 * i + 1);
                p += sprintf(p, "]}");
        }
        sprintf(p, "]");
        test_daemon_write_config(&td, channels);
        test_start_ok();
        fd = test_connect(td.socket);
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
                char req[128], name[16];
                unsigned last = sizes[k] - 1;

                snprintf(name, sizeof name, "s%u", sizes[k]);
                snprintf(req, sizeof req, "{\"op\":\"status\",\"channel\":\"%s\"}", name);
                resp = test_request(fd, req);
                test_assert_ok(resp);
                ch = test_must_find(resp, name);
                assert_semaphore_values(ch, sizes[k], UINT_MAX, 0);
                /* The last one moves behind the daemon's back: the next answer shows it. */
                ck_assert_int_eq(semctl((int) test_jint(ch, "sem_id"), (int) last, SETVAL, 2), 0);
                json_decref(resp);
                resp = test_request(fd, req);
                test_assert_ok(resp);
                assert_semaphore_values(test_must_find(resp, name), sizes[k], last, 2);
                json_decref(resp);
        }
        close(fd);
}
END_TEST

START_TEST(test_status_survives_unreadable_channel) {
        /* "wo" gives its owner (the daemon) no bits: without CAP_IPC_OWNER it cannot GETALL its set. */
        static const char channels[] =
                "[{\"name\": \"wo\", \"size\": 4096, \"semaphores\": [1, 2], \"mode\": \"0060\"},"
                " {\"name\": \"mine\", \"size\": 4096, \"semaphores\": [3, 4], \"mode\": \"0600\"}]";
        json_t *resp, *mine, *sems;
        char *out, *line;
        int fd, status;

        /* The daemon's state directory is the socket's: its own, 0700. */
        ck_assert_int_eq(chown(td.dir, 65534, 65534), 0);
        ck_assert_int_eq(chmod(td.dir, 0700), 0);
        td.uid = 65534;
        td.gid = 65534;
        test_daemon_write_config(&td, channels);
        test_start_ok();
        fd = test_connect(td.socket);

        resp = test_request(fd, "{\"op\":\"status\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(resp, "channels")), 2);
        mine = test_must_find(resp, "mine");
        ck_assert_msg(!json_object_get(mine, "error"), "the readable channel has an error");
        sems = json_object_get(mine, "semaphores");
        ck_assert_uint_eq(json_array_size(sems), 2);
        ck_assert_int_eq(test_jint(json_array_get(sems, 0), "value"), 3);
        ck_assert_int_eq(test_jint(json_array_get(sems, 1), "value"), 4);
        assert_unreadable_entry(test_must_find(resp, "wo"));
        json_decref(resp);

        /* Alone, as documented: the same entry in an ok answer, not a refusal of the whole request. */
        resp = test_request(fd, "{\"op\":\"status\",\"channel\":\"wo\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(resp, "channels")), 1);
        assert_unreadable_entry(test_must_find(resp, "wo"));
        json_decref(resp);

        /* Asked again (the answer cache's path): the same. */
        resp = test_request(fd, "{\"op\":\"status\"}");
        test_assert_ok(resp);
        assert_unreadable_entry(test_must_find(resp, "wo"));
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, "mine"), "semaphores")), 2);
        json_decref(resp);
        close(fd);

        /* Through the library to the admin's table: the error where the values would be. */
        out = ctl_output("status", &status);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "shmbrokerctl status: %d\n%s", status, out);
        line = table_line(out, "wo");
        ck_assert_msg(strstr(line, " EACCES"), "no EACCES on the line of wo:\n%s", out);
        free(line);
        line = table_line(out, "mine");
        ck_assert_msg(strstr(line, "  3,4"), "no values on the line of mine:\n%s", out);
        free(line);
        free(out);
        out = ctl_output("status wo", &status);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "shmbrokerctl status wo: %d\n%s", status, out);
        ck_assert_msg(strstr(out, "Error:      EACCES: ") && !strstr(out, "VALUE"), "status wo:\n%s", out);
        free(out);
}
END_TEST

/* ---- ring holder tokens ---- */

/* A ring for the holder tests, and a raw channel beside it. */
static const char *const ring_and_raw =
        "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4, \"mode\": \"0660\"},"
        " {\"name\": \"plain\", \"size\": 4096}]";

#define HOLDER_WAIT_MS 5000     /* generous: a sweep runs once a second */

/*
 * Open `channel` with `access` on fd, asking for token `want` back unless 0.
 * Returns the answer's "holder", 0 when it has none; the answer must be ok.
 */
static uint32_t open_holder(int fd, const char *channel, const char *access, uint32_t want) {
        char req[200];
        json_t *resp, *holder;
        uint32_t token = 0;

        if (want)
                snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"%s\",\"holder\":%u}",
                         channel, access, (unsigned) want);
        else
                snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"%s\"}", channel, access);
        resp = test_request(fd, req);
        test_assert_ok(resp);
        holder = json_object_get(resp, "holder");
        if (holder) {
                ck_assert_msg(json_is_integer(holder) && json_integer_value(holder) > 0 &&
                              json_integer_value(holder) <= UINT32_MAX, "\"holder\" is not a token");
                token = (uint32_t) json_integer_value(holder);
        }
        json_decref(resp);
        return token;
}

/* The segment of a channel, attached read-write (root may: the test judges the table). */
static RingHeader *attach_ring(const char *channel) {
        int fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\":\"list\"}");
        int id = (int) test_jint(test_must_find(resp, channel), "shm_id");
        RingHeader *h = shmat(id, NULL, 0);

        ck_assert_msg(h != (void *) -1, "shmat %d: %s", id, strerror(errno));
        ck_assert(ring_header_is_ours(h));
        ck_assert_uint_eq(h->holders, RING_HOLDERS);
        json_decref(resp);
        close(fd);
        return h;
}

static RingHolder *holder_entry(const RingHeader *h, uint32_t token) {
        uint32_t index = ring_token_index(token);

        ck_assert_uint_lt(index, RING_HOLDERS);
        return ring_holder_at(h, index);
}

/* The state of token's entry, or -1 when the entry is in another generation. */
static int holder_state(const RingHeader *h, uint32_t token) {
        uint64_t word = __atomic_load_n(&holder_entry(h, token)->word, __ATOMIC_ACQUIRE);

        if (((uint32_t) (word >> 32) & RING_TOKEN_GEN_MASK) != token >> RING_TOKEN_INDEX_BITS)
                return -1;
        return (int) (uint32_t) word;
}

/* Wait up to HOLDER_WAIT_MS for token's entry to reach state. */
static bool wait_holder_state(const RingHeader *h, uint32_t token, int state) {
        int64_t deadline = test_now_ms() + HOLDER_WAIT_MS;

        while (holder_state(h, token) != state) {
                if (test_now_ms() > deadline)
                        return false;
                usleep(10 * 1000);
        }
        return true;
}

/*
 * Whether this kernel's pidfds are pidfs inodes with numbers of their own,
 * and pidfd_open() works here (valgrind lacks it): proc-id.c asks the same.
 */
static bool pidfs_ids(void) {
        int fd = (int) syscall(SYS_pidfd_open, getpid(), 0);
        struct statfs sfs;
        bool yes;

        if (fd < 0)
                return false;
        yes = sizeof(ino_t) >= 8 && sizeof(long) >= 8 && fstatfs(fd, &sfs) == 0 && sfs.f_type == 0x50494446;
        close(fd);
        return yes;
}

/* Field 22 of /proc/PID/stat. */
static uint64_t start_time_of(pid_t pid) {
        unsigned long long v;
        char buf[1024];

        ck_assert_int_eq(sscanf(test_proc_stat_after_name(pid, buf, sizeof buf),
                                "%*c" "%*d %*d %*d %*d %*d" "%*u %*u %*u %*u %*u %*u %*u" "%*d %*d %*d %*d %*d %*d" " %llu",
                                &v), 1);
        return v;
}

/* The inode of a pidfd of this process, as the broker records it where pidfds are pidfs inodes. */
static uint64_t own_pidfs_ino(void) {
        int fd = (int) syscall(SYS_pidfd_open, getpid(), 0);
        struct stat st;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &st), 0);
        close(fd);
        return st.st_ino;
}

static void *sleep_forever(void *arg) {
        int *tid = arg;

        __atomic_store_n(tid, (int) syscall(SYS_gettid), __ATOMIC_RELEASE);
        for (;;)
                pause();
        return NULL;
}

/* The tid of a thread of this process that is not its leader (it lives as long as the process). */
static pid_t thread_tid(void) {
        static int tid;
        pthread_t t;

        ck_assert_int_eq(pthread_create(&t, NULL, sleep_forever, &tid), 0);
        while (__atomic_load_n(&tid, __ATOMIC_ACQUIRE) == 0)
                usleep(1000);
        ck_assert_int_ne(tid, getpid());
        return tid;
}

/* Record token's holder by start time, off by `off`, as a table written without pidfs would. */
/*
 * Channel name's holder ledger (daemon/ledger.h), mapped read-write: what
 * a run recorded of its holders, which the next start after a crash goes
 * by. Unmap RING_LEDGER_SIZE bytes from the header, entries - 1.
 */
#define RING_LEDGER_SIZE ((1 + RING_HOLDERS) * sizeof(RingHolder))
static RingHolder *ledger_entries(const char *name) {
        char path[PATH_MAX];
        RingHolder *v;
        int fd;

        ledger_path(name, path);
        fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        v = mmap(NULL, RING_LEDGER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(v, MAP_FAILED);
        close(fd);
        return v + 1;
}

/* token's entry in a ledger of ledger_entries(). */
static RingHolder *ledger_entry(RingHolder *v, uint32_t token) {
        uint32_t index = ring_token_index(token);

        ck_assert_uint_lt(index, RING_HOLDERS);
        return &v[index];
}

static void set_start_id(RingHolder *e, pid_t pid, uint64_t off) {
        e->pidfs_ino = 0;
        e->starttime = start_time_of(pid) + off;
}

static void assert_live(const RingHeader *h, uint32_t token, pid_t pid) {
        ck_assert_uint_ne(token, 0);
        ck_assert_msg(holder_state(h, token) == RING_HOLDER_LIVE, "token %u: state %d, not LIVE",
                      (unsigned) token, holder_state(h, token));
        ck_assert(!ring_token_dead(h, token));
        ck_assert_int_eq(holder_entry(h, token)->pid, pid);
}

/* The status answer's clients of a channel. */
static size_t count_clients(int fd, const char *channel) {
        char req[128];
        json_t *resp;
        size_t n;

        snprintf(req, sizeof req, "{\"op\":\"status\",\"channel\":\"%s\"}", channel);
        resp = test_request(fd, req);
        test_assert_ok(resp);
        n = json_array_size(json_object_get(test_must_find(resp, channel), "clients"));
        json_decref(resp);
        return n;
}

/*
 * Wait up to HOLDER_WAIT_MS until the channel has n clients (asked over
 * fd): the broker has handled the end of the connections that closed.
 */
static bool await_clients(int fd, const char *channel, size_t n) {
        int64_t deadline = test_now_ms() + HOLDER_WAIT_MS;

        while (count_clients(fd, channel) != n) {
                if (test_now_ms() > deadline)
                        return false;
                usleep(10 * 1000);
        }
        return true;
}

/* The daemon on ring_and_raw, with its ring "frames" attached. */
static RingHeader *start_with_ring(void) {
        test_daemon_write_config(&td, ring_and_raw);
        test_start_ok();
        return attach_ring("frames");
}

START_TEST(test_holder_tokens_for_rw_openers) {
        RingHeader *h;
        uint32_t ta, tb;
        int a, b, c;

        h = start_with_ring();
        a = test_connect(td.socket);
        b = test_connect(td.socket);
        c = test_connect(td.socket);

        ta = open_holder(a, "frames", "rw", 0);
        assert_live(h, ta, getpid());
        /*
         * Who it is, in the way this kernel allows: the pidfd's inode with pidfs, else the start time. A
         * daemon run under a wrapper (valgrind lacks pidfd_open()) may only have the start time.
         */
        if (!getenv("TEST_DAEMON_WRAPPER"))
                ck_assert(pidfs_ids() == (holder_entry(h, ta)->pidfs_ino != 0));
        /* One of the two, and the right one; an earlier build reading the entry finds the start time or 0. */
        if (holder_entry(h, ta)->pidfs_ino != 0) {
                ck_assert_uint_eq(holder_entry(h, ta)->pidfs_ino, own_pidfs_ino());
                ck_assert_uint_eq(holder_entry(h, ta)->starttime, 0);
        } else
                ck_assert_uint_eq(holder_entry(h, ta)->starttime, start_time_of(getpid()));
        /* Opening again on the same connection is the same hold, and the same token, whatever the access. */
        ck_assert_uint_eq(open_holder(a, "frames", "rw", 0), ta);
        ck_assert_uint_eq(open_holder(a, "frames", "ro", 0), ta);
        ck_assert_uint_eq(open_holder(a, "frames", "rw", 0), ta);
        /* Another connection is another holder. */
        tb = open_holder(b, "frames", "rw", 0);
        ck_assert_uint_ne(tb, ta);
        assert_live(h, tb, getpid());
        assert_live(h, ta, getpid());
        /* Readers claim nothing: no token; nor does a raw channel have a table. */
        ck_assert_uint_eq(open_holder(c, "frames", "ro", 0), 0);
        ck_assert_uint_eq(open_holder(c, "plain", "rw", 0), 0);
        /* Nor does asking for someone else's token give it: it is bound to a's hold. */
        ck_assert_uint_eq(open_holder(c, "frames", "ro", ta), 0);
        ck_assert_uint_ne(open_holder(c, "frames", "rw", ta), ta);
        shmdt(h);
        close(a);
        close(b);
        close(c);
}
END_TEST

/* The daemon on ring_and_raw, its ring "frames" attached, and two connections holding it rw with their tokens. */
static RingHeader *start_with_two_holders(int *a, int *b, uint32_t *ta, uint32_t *tb) {
        RingHeader *h;

        h = start_with_ring();
        *a = test_connect(td.socket);
        *b = test_connect(td.socket);
        *ta = open_holder(*a, "frames", "rw", 0);
        *tb = open_holder(*b, "frames", "rw", 0);
        return h;
}

START_TEST(test_holder_dead_when_hold_ends) {
        RingHeader *h;
        uint32_t ta, tb, again;
        json_t *resp;
        int a, b;

        h = start_with_two_holders(&a, &b, &ta, &tb);

        /* close: DEAD by the time the answer comes, in the same generation. */
        resp = test_request(a, "{\"op\":\"close\",\"channel\":\"frames\"}");
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_int_eq(holder_state(h, ta), RING_HOLDER_DEAD);
        ck_assert(ring_token_dead(h, ta));
        assert_live(h, tb, getpid());
        /* Opening again is a new hold: another token, the dead one stays dead. */
        again = open_holder(a, "frames", "rw", 0);
        ck_assert_uint_ne(again, ta);
        ck_assert(ring_token_dead(h, ta));

        /*
         * The connection's end (the broker learns it from EOF) is not the
         * process's: this one lives on, and so does its token (it may still
         * be copying into a slot it claimed). The holder tests below end it
         * with the process.
         */
        close(b);
        ck_assert(await_clients(a, "frames", 1));
        assert_live(h, tb, getpid());
        assert_live(h, again, getpid());
        shmdt(h);
        close(a);
}
END_TEST

START_TEST(test_holder_table_full) {
        static int fds[RING_HOLDERS];
        static uint32_t tokens[RING_HOLDERS];
        RingHeader *h;
        uint32_t reused;
        json_t *resp;
        int extra;

        h = start_with_ring();
        for (int i = 0; i < RING_HOLDERS; i++) {
                fds[i] = test_connect(td.socket);
                tokens[i] = open_holder(fds[i], "frames", "rw", 0);
                ck_assert_uint_ne(tokens[i], 0);
                for (int k = 0; k < i; k++)
                        ck_assert_uint_ne(tokens[k], tokens[i]);
        }
        extra = test_connect(td.socket);
        resp = test_request(extra, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}");
        test_assert_error(resp, "EUSERS");
        ck_assert_ptr_nonnull(strstr(test_jstr(resp, "message"), "\"frames\""));
        ck_assert_ptr_nonnull(strstr(test_jstr(resp, "message"), "256"));
        json_decref(resp);
        /* The refusal left no hold behind; a reader still gets in, and raw channels are not concerned. */
        ck_assert_uint_eq(count_clients(extra, "frames"), RING_HOLDERS);
        ck_assert_uint_eq(open_holder(extra, "plain", "rw", 0), 0);

        /* One goes (an explicit close: this process lives on): its entry is the one handed out again,
         * under the next generation. */
        resp = test_request(fds[17], "{\"op\":\"close\",\"channel\":\"frames\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fds[17]);
        ck_assert(wait_holder_state(h, tokens[17], RING_HOLDER_DEAD));
        reused = open_holder(extra, "frames", "rw", 0);
        ck_assert_ptr_eq(holder_entry(h, reused), holder_entry(h, tokens[17]));
        ck_assert_uint_eq(reused >> RING_TOKEN_INDEX_BITS, (tokens[17] >> RING_TOKEN_INDEX_BITS) + 1);
        ck_assert(ring_token_dead(h, tokens[17]));
        assert_live(h, reused, getpid());
        ck_assert_uint_eq(count_clients(extra, "frames"), RING_HOLDERS);
        for (int i = 0; i < RING_HOLDERS; i++)
                if (i != 17)
                        close(fds[i]);
        close(extra);
        shmdt(h);
}
END_TEST

/* Write token's entry in h as a writer of the segment may: state under the generation it has now. */
static void forge_state(RingHeader *h, uint32_t token, uint32_t state) {
        RingHolder *e = holder_entry(h, token);
        uint64_t word = __atomic_load_n(&e->word, __ATOMIC_ACQUIRE);

        __atomic_store_n(&e->word, (word & ~UINT64_C(0xffffffff)) | state, __ATOMIC_RELEASE);
}

/* The open answer's token on fd, which must not name ta's entry: what `forged` says was forged. */
static uint32_t open_holder_beside(int fd, const RingHeader *h, uint32_t ta, const char *forged) {
        uint32_t t = open_holder(fd, "frames", "rw", 0);

        ck_assert_msg(t != 0, "an rw open after %s got no token", forged);
        ck_assert_msg(holder_entry(h, t) != holder_entry(h, ta),
                      "an rw open after %s was handed the entry of a live hold: token %u, the live hold's %u",
                      forged, (unsigned) t, (unsigned) ta);
        return t;
}

/* Close the hold of fd; the hold of ta, whose entry says LIVE again, must be LIVE still. */
static void close_beside(int fd, const RingHeader *h, uint32_t ta, const char *forged) {
        json_t *resp = test_request(fd, "{\"op\":\"close\",\"channel\":\"frames\"}");

        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_msg(holder_state(h, ta) == RING_HOLDER_LIVE,
                      "after %s, closing another connection's hold ended the live token %u (its entry now %#llx)",
                      forged, (unsigned) ta,
                      (unsigned long long) __atomic_load_n(&holder_entry(h, ta)->word, __ATOMIC_ACQUIRE));
        assert_live(h, ta, getpid());
}

/*
 * README, Security: the daemon does not believe the entries of a ring's
 * holder table, which every rw opener may write, so "a forged entry
 * neither refuses an rw open (EUSERS) nor makes a token name two holds".
 * The forged-holders tests forge before a crash; here the writer (root,
 * as an rw opener) forges while the broker runs. a's entry written FREE
 * under its generation, as an entry never handed out looks: an rw open on
 * another connection gets another entry; the writer puts a's word back,
 * and that hold's close must not end a's token (the broker writes DEAD to
 * the entry of a hold that closes). Then every entry but a's written LIVE
 * for openers no broker can judge (pid 0): the next rw open still gets a
 * token, of an entry of its own.
 */
START_TEST(test_holder_entry_forged_free_while_running_hands_out_no_live_token) {
        RingHeader *h = start_with_ring();
        int a = test_connect(td.socket), b = test_connect(td.socket);
        uint32_t ta = open_holder(a, "frames", "rw", 0), tb;
        uint64_t word = __atomic_load_n(&holder_entry(h, ta)->word, __ATOMIC_ACQUIRE);
        json_t *resp;

        assert_live(h, ta, getpid());
        forge_state(h, ta, RING_HOLDER_FREE);
        tb = open_holder_beside(b, h, ta, "a live hold's entry was written FREE");
        ck_assert_uint_ne(tb, ta);
        __atomic_store_n(&holder_entry(h, ta)->word, word, __ATOMIC_RELEASE);
        assert_live(h, tb, getpid());
        close_beside(b, h, ta, "a live hold's entry was written FREE");

        test_forge_live_holders(ring_holder_at(h, 0), RING_HOLDERS,
                                ring_token_index(ta));
        resp = test_request(b, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}");
        ck_assert_msg(json_is_true(json_object_get(resp, "ok")),
                      "an rw open after every other entry was written LIVE was refused: %s",
                      test_jstr(resp, "error"));
        json_decref(resp);
        /* The same hold (its connection's): its token, asked again, names an entry of its own. */
        tb = open_holder_beside(b, h, ta, "every other entry was written LIVE");
        assert_live(h, tb, getpid());
        close_beside(b, h, ta, "every other entry was written LIVE");
        shmdt(h);
        close(a);
        close(b);
}
END_TEST

/*
 * As the test above, with live holds' entries written DEAD under their
 * generations, as the entry of a hold that ended looks: the broker hands
 * DEAD entries out again under the next generation, but only those it
 * marked dead itself. With the table full (every entry handed out) and one
 * hold closed, the next rw open must get the entry the broker freed, not a
 * live hold's (given one, the new hold would make that token dead to every
 * client, and its claims repairable under it).
 */
START_TEST(test_holder_entry_forged_dead_while_running_is_not_handed_out) {
        static int fds[RING_HOLDERS];
        static uint32_t tokens[RING_HOLDERS];
        static uint64_t words[RING_HOLDERS];
        RingHeader *h = start_with_ring();
        uint32_t t;
        int extra;

        for (int i = 0; i < RING_HOLDERS; i++) {
                fds[i] = test_connect(td.socket);
                tokens[i] = open_holder(fds[i], "frames", "rw", 0);
                words[i] = __atomic_load_n(&holder_entry(h, tokens[i])->word, __ATOMIC_ACQUIRE);
        }
        extra = test_connect(td.socket);
        /* One closes: the broker's own DEAD entry, the one to hand out next. */
        close_beside(fds[200], h, tokens[0], "nothing was forged");
        ck_assert_int_eq(holder_state(h, tokens[200]), RING_HOLDER_DEAD);
        for (int i = 0; i < 200; i++)
                forge_state(h, tokens[i], RING_HOLDER_DEAD);
        t = open_holder_beside(extra, h, tokens[0], "200 live holds' entries were written DEAD");
        for (int i = 1; i < 200; i++)
                ck_assert_msg(holder_entry(h, t) != holder_entry(h, tokens[i]),
                              "an rw open after 200 live holds' entries were written DEAD was handed the entry of "
                              "live hold %d: token %u, its %u", i, (unsigned) t, (unsigned) tokens[i]);
        ck_assert_ptr_eq(holder_entry(h, t), holder_entry(h, tokens[200]));
        for (int i = 0; i < 200; i++)
                __atomic_store_n(&holder_entry(h, tokens[i])->word, words[i], __ATOMIC_RELEASE);
        close_beside(extra, h, tokens[0], "200 live holds' entries were written DEAD");
        for (int i = 1; i < 200; i++)
                ck_assert_int_eq(holder_state(h, tokens[i]), RING_HOLDER_LIVE);
        for (int i = 0; i < RING_HOLDERS; i++)
                close(fds[i]);
        close(extra);
        shmdt(h);
}
END_TEST

/* A process that opens `frames` rw over its own connection, says its token, and lives until killed. */
typedef struct Opener {
        pid_t pid;
        uint32_t token;
} Opener;

static void opener_run(int report) {
        char *line;
        json_t *v;
        uint32_t token = 0;
        int fd;

        /* A failed test must not leave it behind. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                _exit(1);
        fd = test_connect(td.socket);
        test_send(fd, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}\n", 48);
        line = test_read_line(fd);
        v = line ? json_loads(line, 0, NULL) : NULL;
        if (v && json_is_integer(json_object_get(v, "holder")))
                token = (uint32_t) json_integer_value(json_object_get(v, "holder"));
        if (write(report, &token, sizeof token) != sizeof token)
                _exit(1);
        /* Keeps the connection: until it dies the broker sees it live. */
        for (;;)
                pause();
}

static Opener opener_start(void) {
        int report[2];
        Opener o = {};

        ck_assert_int_eq(pipe2(report, O_CLOEXEC), 0);
        o.pid = fork();
        ck_assert_int_ge(o.pid, 0);
        if (o.pid == 0)
                opener_run(report[1]);
        close(report[1]);
        ck_assert_int_eq(read(report[0], &o.token, sizeof o.token), (ssize_t) sizeof o.token);
        ck_assert_uint_ne(o.token, 0);
        close(report[0]);
        return o;
}

/* Kill and reap: its pid is free from here on. */
static void opener_stop(const Opener *o) {
        int status;

        ck_assert_int_eq(kill(o->pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(o->pid, &status, 0), o->pid);
}

/* The index of a LIVE holder entry of pid, or -1. */
static int live_entry_of(const RingHeader *h, pid_t pid) {
        for (uint32_t i = 0; i < h->holders; i++) {
                const RingHolder *e = ring_holder_at(h, i);

                if (e->pid == pid && (uint32_t) __atomic_load_n(&e->word, __ATOMIC_ACQUIRE) == RING_HOLDER_LIVE)
                        return (int) i;
        }
        return -1;
}

/*
 * A client that sent an open and hung up before the daemon read it (a
 * call that timed out against a stalled broker) gets no hold and no
 * holder token: nobody could ever give the token back, and it would stay
 * live as long as the process, a slot of the ring's table lost.
 */
START_TEST(test_open_of_a_hung_up_client_takes_no_token) {
        const char *open_rw = "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}\n";
        int64_t deadline;
        RingHeader *h;
        char *log;
        int fd;

        h = start_with_ring();
        ck_assert_int_eq(live_entry_of(h, getpid()), -1);
        ck_assert_int_eq(kill(td.pid, SIGSTOP), 0);
        fd = test_connect(td.socket);
        ck_assert_int_eq(write(fd, open_rw, strlen(open_rw)), (ssize_t) strlen(open_rw));
        close(fd);
        ck_assert_int_eq(kill(td.pid, SIGCONT), 0);
        /* Until the daemon has dealt with it: it says it skipped the open, or a token shows up. */
        deadline = test_now_ms() + 10000;
        for (;;) {
                bool said;

                log = test_daemon_log(&td);
                said = strstr(log, "hung up before its request was read") != NULL;
                free(log);
                if (said || live_entry_of(h, getpid()) >= 0)
                        break;
                ck_assert_msg(test_now_ms() < deadline, "the daemon never read the open");
                usleep(10 * 1000);
        }
        ck_assert_msg(live_entry_of(h, getpid()) < 0, "entry %d is live for us", live_entry_of(h, getpid()));
        shmdt(h);
}
END_TEST

/*
 * After a SIGKILL the next broker takes the ring over with its holder
 * table: the killed run's holders stay LIVE while their process lives (and
 * can be taken back, once), and go DEAD when it is found gone: exited
 * before the start, exited after it (the sweep), or its pid now another
 * process's, by either kind of id (a table written where pidfds had no
 * inodes of their own, or by a build that recorded only start times).
 */
START_TEST(test_holder_crash_restart) {
        Opener live, live_by_start, gone_before, gone_after, reused_pid, reused_pid_by_start, thread_pid, unrecorded;
        uint32_t back, other;
        RingHolder *led;
        RingHeader *h;
        char *log;
        int x, y;

        h = start_with_ring();
        live = opener_start();
        live_by_start = opener_start();
        gone_before = opener_start();
        gone_after = opener_start();
        reused_pid = opener_start();
        reused_pid_by_start = opener_start();
        thread_pid = opener_start();
        unrecorded = opener_start();
        assert_live(h, live.token, live.pid);
        assert_live(h, reused_pid.token, reused_pid.pid);

        test_daemon_kill(&td, SIGKILL);
        /* Nobody ended those holds: the table still says LIVE. */
        assert_live(h, gone_before.token, gone_before.pid);
        opener_stop(&gone_before);
        /*
         * What the killed run recorded is changed where the next start reads it:
         * its ledger, not the table, which any writer of the segment may change.
         */
        led = ledger_entries("frames");
        /* As if reused_pid's pid had been given to another process since. */
        if (ledger_entry(led, reused_pid.token)->pidfs_ino != 0)
                ledger_entry(led, reused_pid.token)->pidfs_ino++;
        else
                ledger_entry(led, reused_pid.token)->starttime++;
        /*
         * As if thread_pid's pid were a thread's now, in a live process (this one): no process has it. Two
         * clock ticks later than the opener started, so that a start time (which counts ticks) tells them apart too.
         */
        usleep((useconds_t) (2000000 / sysconf(_SC_CLK_TCK) + 1000));
        ledger_entry(led, thread_pid.token)->pid = thread_tid();
        /* Start times, as where pidfds are no pidfs inodes: one right, one of another process. */
        set_start_id(ledger_entry(led, live_by_start.token), live_by_start.pid, 0);
        set_start_id(ledger_entry(led, reused_pid_by_start.token), reused_pid_by_start.pid, 1);
        /* As if the run that handed it out could not tell who its opener was: no proof it is gone (holders.c). */
        ledger_entry(led, unrecorded.token)->pidfs_ino = 0;
        ledger_entry(led, unrecorded.token)->starttime = 0;
        /* And the table says the opposite: the next start must not believe it. */
        holder_entry(h, unrecorded.token)->starttime = 1;
        holder_entry(h, unrecorded.token)->pidfs_ino = 1;

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel frames"), "%s", log);
        free(log);
        ck_assert_msg(wait_holder_state(h, gone_before.token, RING_HOLDER_DEAD), "an exited holder stays %d",
                      holder_state(h, gone_before.token));
        ck_assert_msg(wait_holder_state(h, reused_pid.token, RING_HOLDER_DEAD), "a reused pid's holder stays %d",
                      holder_state(h, reused_pid.token));
        ck_assert_msg(wait_holder_state(h, reused_pid_by_start.token, RING_HOLDER_DEAD),
                      "a reused pid's holder by start time stays %d", holder_state(h, reused_pid_by_start.token));
        ck_assert_msg(wait_holder_state(h, thread_pid.token, RING_HOLDER_DEAD),
                      "a holder whose pid names a thread now stays %d", holder_state(h, thread_pid.token));
        assert_live(h, gone_after.token, gone_after.pid);
        opener_stop(&gone_after);
        ck_assert_msg(wait_holder_state(h, gone_after.token, RING_HOLDER_DEAD), "a holder that exited later stays %d",
                      holder_state(h, gone_after.token));
        /* The sweeps that found those gone left the live ones alone. */
        assert_live(h, live.token, live.pid);
        assert_live(h, live_by_start.token, live_by_start.pid);
        assert_live(h, unrecorded.token, unrecorded.pid);
        /* The ledger was written back into the table. */
        ck_assert_uint_eq(holder_entry(h, unrecorded.token)->starttime, 0);
        ck_assert_uint_eq(holder_entry(h, unrecorded.token)->pidfs_ino, 0);
        ck_assert_int_eq(munmap(led - 1, RING_LEDGER_SIZE), 0);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "(it exited); marked it dead") && strstr(log, "(its pid names another process now)"),
                      "%s", log);
        free(log);

        /*
         * Another process (this one) asks for the live opener's token, rw and ro: it gets none of it, and
         * closing what it got leaves the live opener's token live. Nor does a dead token come back.
         */
        x = test_connect(td.socket);
        back = open_holder(x, "frames", "rw", live.token);
        ck_assert_uint_ne(back, live.token);
        y = test_connect(td.socket);
        ck_assert_uint_eq(open_holder(y, "frames", "ro", live.token), 0);
        other = open_holder(test_connect(td.socket), "frames", "rw", gone_before.token);
        ck_assert_uint_ne(other, gone_before.token);
        /* Nor the token of an opener the killed run could not tell: with no id to match, only its pid can. */
        other = open_holder(test_connect(td.socket), "frames", "rw", unrecorded.token);
        ck_assert_msg(other != unrecorded.token, "another process took back the token %u of pid %d",
                      (unsigned) unrecorded.token, (int) unrecorded.pid);
        assert_live(h, unrecorded.token, unrecorded.pid);
        json_decref(test_request(x, "{\"op\":\"close\",\"channel\":\"frames\"}"));
        json_decref(test_request(y, "{\"op\":\"close\",\"channel\":\"frames\"}"));
        ck_assert_int_eq(holder_state(h, back), RING_HOLDER_DEAD);
        close(x);
        assert_live(h, live.token, live.pid);
        opener_stop(&live);
        opener_stop(&reused_pid);
        opener_stop(&live_by_start);
        opener_stop(&reused_pid_by_start);
        opener_stop(&thread_pid);
        opener_stop(&unrecorded);
        close(y);
        shmdt(h);
}
END_TEST

/* A reload that changes a ring in place keeps its holders; one that replaces it starts a fresh table. */
START_TEST(test_holder_reload) {
        static const char *const perms_changed =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4, \"mode\": \"0666\"},"
                " {\"name\": \"plain\", \"size\": 4096}]";
        static const char *const grown =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8, \"mode\": \"0666\"},"
                " {\"name\": \"plain\", \"size\": 4096}]";
        RingHeader *old, *fresh;
        uint32_t ta, tb, tn;
        json_t *resp;
        int a, b;

        old = start_with_two_holders(&a, &b, &ta, &tb);
        resp = test_request(b, "{\"op\":\"close\",\"channel\":\"frames\"}");
        json_decref(resp);
        ck_assert_int_eq(holder_state(old, tb), RING_HOLDER_DEAD);

        test_daemon_write_config(&td, perms_changed);
        resp = test_request(a, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "changed"), 0)), "frames");
        json_decref(resp);
        assert_live(old, ta, getpid());
        ck_assert_uint_eq(open_holder(a, "frames", "rw", 0), ta);

        test_daemon_write_config(&td, grown);
        resp = test_request(a, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        /* The old ring's holds were dropped with it: DEAD there, and the ring marked removed. */
        ck_assert_int_eq(holder_state(old, ta), RING_HOLDER_DEAD);
        ck_assert(ring_is_removed(old));
        fresh = attach_ring("frames");
        ck_assert_ptr_ne(fresh, old);
        for (uint32_t i = 0; i < RING_HOLDERS; i++)
                ck_assert_uint_eq(ring_holder_at(fresh, i)->word, RING_HOLDER_FREE);
        tn = open_holder(a, "frames", "rw", 0);
        ck_assert_uint_eq(tn, ring_token(0, 0));
        assert_live(fresh, tn, getpid());
        shmdt(old);
        shmdt(fresh);
        close(a);
        close(b);
}
END_TEST

/* A ring removed behind the broker's back is made again with a fresh table; the old one's holds ended. */
START_TEST(test_holder_ring_remade) {
        RingHeader *old, *fresh;
        uint32_t ta, tb, tn;
        int a, b, id;
        json_t *resp;

        old = start_with_two_holders(&a, &b, &ta, &tb);
        resp = test_request(a, "{\"op\":\"list\"}");
        id = (int) test_jint(test_must_find(resp, "frames"), "shm_id");
        json_decref(resp);
        ck_assert_int_eq(shmctl(id, IPC_RMID, NULL), 0);

        /* The next open notices, and hands out a token of the new segment's table. */
        tn = open_holder(a, "frames", "rw", 0);
        ck_assert_uint_eq(tn, ring_token(0, 0));
        fresh = attach_ring("frames");
        assert_live(fresh, tn, getpid());
        for (uint32_t i = 1; i < RING_HOLDERS; i++)
                ck_assert_uint_eq(ring_holder_at(fresh, i)->word, RING_HOLDER_FREE);
        ck_assert_int_eq(holder_state(old, ta), RING_HOLDER_DEAD);
        ck_assert_int_eq(holder_state(old, tb), RING_HOLDER_DEAD);
        shmdt(old);
        shmdt(fresh);
        close(a);
        close(b);
}
END_TEST

/* ---- a token lives as long as its opener's process ---- */

/*
 * In a child: open `frames` rw on fd, asking for `want` back unless 0.
 * The answer's holder, 0 when it has none. Nothing that aborts: a child
 * says what it got, and the test judges.
 */
static uint32_t child_open_frames(int fd, uint32_t want) {
        char req[160];
        char *line;
        json_t *v;
        uint32_t token = 0;
        int n;

        if (want)
                n = snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\",\"holder\":%u}\n",
                             (unsigned) want);
        else
                n = snprintf(req, sizeof req, "{\"op\":\"open\",\"channel\":\"frames\",\"access\":\"rw\"}\n");
        if (send(fd, req, (size_t) n, MSG_NOSIGNAL) != n)
                return 0;
        line = test_read_line(fd);
        v = line ? json_loads(line, 0, NULL) : NULL;
        if (v && json_is_integer(json_object_get(v, "holder")))
                token = (uint32_t) json_integer_value(json_object_get(v, "holder"));
        json_decref(v);
        free(line);
        return token;
}

static void child_say(int fd, const void *buf, size_t len) {
        if (write(fd, buf, len) != (ssize_t) len)
                _exit(1);
}

/* In a child: wait for a byte from the test; its end (the test died) ends the child. */
static char child_await(int fd) {
        char c;

        if (read(fd, &c, 1) != 1)
                _exit(1);
        return c;
}

/* A child of the test, with the pipes the test talks to it over. */
typedef struct Child {
        pid_t pid;
        int say, hear;          /* the test's ends: what the child says, what the test tells it */
} Child;

static Child child_start(void (*fn)(int say, int hear)) {
        int say[2], hear[2];
        Child c;

        ck_assert_int_eq(pipe2(say, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(hear, O_CLOEXEC), 0);
        c.pid = fork();
        ck_assert_int_ge(c.pid, 0);
        if (c.pid == 0) {
                /* A failed test must not leave it behind. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                        _exit(1);
                close(say[0]);
                close(hear[1]);
                fn(say[1], hear[0]);
                _exit(0);
        }
        close(say[1]);
        close(hear[0]);
        c.say = say[0];
        c.hear = hear[1];
        return c;
}

static void child_hear(const Child *c, void *buf, size_t len) {
        ck_assert_int_eq(read(c->say, buf, len), (ssize_t) len);
}

static void child_tell(const Child *c, char what) {
        ck_assert_int_eq(write(c->hear, &what, 1), 1);
}

/* Wait until c has exited (a zombie: not reaped, so its pid stays taken) within HOLDER_WAIT_MS. */
static void child_await_exit(const Child *c) {
        int pidfd = (int) syscall(SYS_pidfd_open, c->pid, 0);
        struct pollfd p = { .fd = pidfd, .events = POLLIN };
        siginfo_t si = {};

        ck_assert_msg(pidfd >= 0, "pidfd_open(%d): %s", (int) c->pid, strerror(errno));
        ck_assert_msg(poll(&p, 1, HOLDER_WAIT_MS) == 1, "child %d still runs after %d ms", (int) c->pid,
                      HOLDER_WAIT_MS);
        close(pidfd);
        ck_assert_int_eq(waitid(P_PID, (id_t) c->pid, &si, WEXITED | WNOWAIT), 0);
        ck_assert_int_eq(si.si_pid, c->pid);
        ck_assert_msg(si.si_code == CLD_EXITED && si.si_status == 0, "child %d: code %d, status %d", (int) c->pid,
                      si.si_code, si.si_status);
}

static void child_reap(Child *c) {
        int status;

        ck_assert_int_eq(waitpid(c->pid, &status, 0), c->pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %#x", (int) c->pid, status);
        close(c->say);
        close(c->hear);
}

/* Tell c to exit, see it exit (not reaped), and its token go DEAD within HOLDER_WAIT_MS. */
static void end_child_and_await_dead(const Child *c, const RingHeader *h, uint32_t token) {
        child_tell(c, 'q');
        child_await_exit(c);
        ck_assert_msg(wait_holder_state(h, token, RING_HOLDER_DEAD), "token %u still %d after its process exited",
                      (unsigned) token, holder_state(h, token));
}

/* Opens frames rw, says its token, closes the connection; exits when told. */
static void open_close_live_on(int say, int hear) {
        int fd = test_connect(td.socket);
        uint32_t token = child_open_frames(fd, 0);

        close(fd);
        child_say(say, &token, sizeof token);
        child_await(hear);
}

/*
 * A connection that closes while its process lives on leaves the token
 * LIVE (a thread of it may be mid-copy into a slot it claimed); the
 * process's exit (a zombie counts) makes it DEAD.
 */
START_TEST(test_holder_lives_with_its_process) {
        RingHeader *h;
        uint32_t token;
        Child c;
        int fd;

        h = start_with_ring();
        fd = test_connect(td.socket);
        c = child_start(open_close_live_on);
        child_hear(&c, &token, sizeof token);
        ck_assert_uint_ne(token, 0);
        /* The broker has read the EOF once the hold is gone from status. */
        ck_assert(await_clients(fd, "frames", 0));
        assert_live(h, token, c.pid);
        /* No sweep judges it either: it stays while the process lives. */
        usleep(1500 * 1000);
        assert_live(h, token, c.pid);

        end_child_and_await_dead(&c, h, token);
        ck_assert(ring_token_dead(h, token));
        child_reap(&c);
        close(fd);
        shmdt(h);
}
END_TEST

/* Opens frames rw, forks a child that keeps the connection (until the test's end of say closes), says both; exits when told. */
static void open_fork_exit(int say, int hear) {
        int fd = test_connect(td.socket);
        uint32_t token = child_open_frames(fd, 0);
        pid_t heir = fork();

        if (heir < 0)
                _exit(1);
        if (heir == 0) {
                struct pollfd p = { .fd = say };

                /* No PR_SET_PDEATHSIG: it outlives its parent. It ends with the test's end of say (POLLERR). */
                close(hear);
                while (poll(&p, 1, -1) < 0 && errno == EINTR)
                        ;
                _exit(0);
        }
        child_say(say, &token, sizeof token);
        child_say(say, &heir, sizeof heir);
        child_await(hear);
}

/* A ring holder of open_fork_exit(), and the connection the test watches its hold through. */
typedef struct ForkedHolder {
        RingHeader *h;
        int fd;
        Child c;
        uint32_t token;
        pid_t heir;
} ForkedHolder;

static ForkedHolder forked_holder_start(void) {
        ForkedHolder f;

        /* The heir is reparented to us when its parent exits, so the test reaps it. */
        ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
        f.h = start_with_ring();
        f.fd = test_connect(td.socket);
        f.c = child_start(open_fork_exit);
        child_hear(&f.c, &f.token, sizeof f.token);
        child_hear(&f.c, &f.heir, sizeof f.heir);
        ck_assert_uint_ne(f.token, 0);
        return f;
}

/* Closes the opener's say: the heir ends with it. */
static void forked_holder_reap(ForkedHolder *f) {
        child_reap(&f->c);
        ck_assert_int_eq(waitpid(f->heir, NULL, 0), f->heir);
}

/*
 * The opener exits while a fork of it holds the connection open: no EOF
 * reaches the broker, yet the token is DEAD, and the hold stays.
 */
START_TEST(test_holder_dead_with_its_process_though_a_fork_holds_the_connection) {
        ForkedHolder f = forked_holder_start();

        assert_live(f.h, f.token, f.c.pid);
        end_child_and_await_dead(&f.c, f.h, f.token);
        /* The connection is still up, held by the heir. */
        ck_assert_int_eq(kill(f.heir, 0), 0);
        ck_assert_uint_eq(count_clients(f.fd, "frames"), 1);
        forked_holder_reap(&f);
        ck_assert(await_clients(f.fd, "frames", 0));
        ck_assert_int_eq(holder_state(f.h, f.token), RING_HOLDER_DEAD);
        close(f.fd);
        shmdt(f.h);
}
END_TEST

/*
 * A connection the daemon ends (here for an over-long line) loses its
 * holds when the daemon decides, not when its client takes the last
 * answer: a client that stops reading must not keep its channels, nor a
 * ring's holder token live, by leaving that answer unread. Its answers
 * fill its socket first, so the error answer waits in the daemon; the
 * request timer, which would end the wait, is set to an hour.
 */
START_TEST(test_failed_connection_drops_its_holds_before_its_answer_is_read) {
        static const char config[] =
                "[{\"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8}], "
                "\"limits\": {\"request_timeout_ms\": 3600000, \"output_max\": 67108864, "
                "\"buffers_per_uid\": 134217728}";
        static const char list[] = "{\"op\":\"list\"}\n";
        size_t big = 70000;
        char *junk = malloc(big);
        int a, b;

        ck_assert_ptr_nonnull(junk);
        test_daemon_write_config(&td, config);
        test_start_ok();
        a = test_connect(td.socket);
        b = test_connect(td.socket);
        ck_assert_uint_ne(open_holder(a, "frames", "rw", 0), 0);
        ck_assert_uint_eq(count_clients(b, "frames"), 1);
        /* About 1 MB of answers, more than a socket takes: the rest waits in the daemon. */
        for (int i = 0; i < 4000; i++)
                test_send(a, list, sizeof list - 1);
        memset(junk, 'x', big);
        test_send(a, junk, big);
        free(junk);
        /*
         * The daemon answers the 4000 lines before it meets the long one, as
         * slowly as the machine makes it (valgrind, other tests beside it): no
         * deadline of ours, the case's timeout fails a daemon that keeps the hold.
         */
        while (count_clients(b, "frames") != 0)
                usleep(10 * 1000);
        close(a);
        close(b);
}
END_TEST

/*
 * The hold of a token that died with its process (a fork kept the
 * connection) ends later, with the connection. By then the token's entry
 * may be another holder's, under the next generation: releasing the dead
 * token must leave that holder live (shmbroker-ring(7): one token names
 * one entry in one generation).
 */
START_TEST(test_hold_of_a_dead_token_ends_no_later_holder) {
        static int fds[RING_HOLDERS - 1];
        ForkedHolder f = forked_holder_start();
        uint32_t reused;

        end_child_and_await_dead(&f.c, f.h, f.token);
        /* Every other entry taken: the next rw opener gets the dead token's, under the next generation. */
        for (int i = 0; i < RING_HOLDERS - 1; i++) {
                fds[i] = test_connect(td.socket);
                ck_assert_uint_ne(open_holder(fds[i], "frames", "rw", 0), 0);
        }
        reused = open_holder(f.fd, "frames", "rw", 0);
        ck_assert_ptr_eq(holder_entry(f.h, reused), holder_entry(f.h, f.token));
        ck_assert_uint_ne(reused, f.token);
        assert_live(f.h, reused, getpid());
        /* The heir goes, and with its connection the dead token's hold. */
        forked_holder_reap(&f);
        ck_assert(await_clients(f.fd, "frames", RING_HOLDERS));
        assert_live(f.h, reused, getpid());
        for (int i = 0; i < RING_HOLDERS - 1; i++)
                close(fds[i]);
        close(f.fd);
        shmdt(f.h);
}
END_TEST

/*
 * Opens frames rw on two connections, says both tokens, closes both;
 * when told, opens again asking for the first back, says what it got,
 * and closes that connection too; exits when told.
 */
static void open_twice_rejoin(int say, int hear) {
        int a = test_connect(td.socket), b = test_connect(td.socket), again;
        uint32_t ta = child_open_frames(a, 0), tb = child_open_frames(b, 0), back;

        close(a);
        close(b);
        child_say(say, &ta, sizeof ta);
        child_say(say, &tb, sizeof tb);
        child_await(hear);
        again = test_connect(td.socket);
        back = child_open_frames(again, ta);
        child_say(say, &back, sizeof back);
        close(again);
        child_await(hear);
}

/* Takes back the token the test names, says what it got, closes that connection; exits when told. */
static void take_back_close_live_on(int say, int hear) {
        uint32_t want, back;
        int fd;

        if (read(hear, &want, sizeof want) != sizeof want)
                _exit(1);
        fd = test_connect(td.socket);
        back = child_open_frames(fd, want);
        close(fd);
        child_say(say, &back, sizeof back);
        child_await(hear);
}

/*
 * Tokens of connections that closed under a live process can be taken
 * back with "holder" (a rejoin), but only by that process: tokens are
 * easy to guess from the table every reader of the segment sees, and
 * another process that took one and closed it would have a live claimer
 * repaired under it. The owner's exit ends all of them, once.
 */
START_TEST(test_holder_taken_back_after_its_connection_closed) {
        uint32_t ta, tb, tq, back;
        RingHeader *h;
        Child p, q;
        int fd;

        h = start_with_ring();
        fd = test_connect(td.socket);
        p = child_start(open_twice_rejoin);
        child_hear(&p, &ta, sizeof ta);
        child_hear(&p, &tb, sizeof tb);
        ck_assert(await_clients(fd, "frames", 0));
        assert_live(h, ta, p.pid);
        assert_live(h, tb, p.pid);

        /* Another process asks for tb: it gets a token of its own, and tb stays p's orphan. */
        q = child_start(take_back_close_live_on);
        ck_assert_int_eq(write(q.hear, &tb, sizeof tb), (ssize_t) sizeof tb);
        child_hear(&q, &tq, sizeof tq);
        ck_assert_uint_ne(tq, tb);
        ck_assert(await_clients(fd, "frames", 0));
        assert_live(h, tb, p.pid);
        assert_live(h, tq, q.pid);
        /* The first process rejoins: ta is its own again, and its orphan again once that connection closes. */
        child_tell(&p, 'r');
        child_hear(&p, &back, sizeof back);
        ck_assert_uint_eq(back, ta);
        ck_assert(await_clients(fd, "frames", 0));
        assert_live(h, ta, p.pid);

        /* Its exit ends both of its tokens; q's own lives until q exits. */
        end_child_and_await_dead(&p, h, ta);
        child_reap(&p);
        ck_assert_msg(wait_holder_state(h, tb, RING_HOLDER_DEAD), "tb still %d after its process exited",
                      holder_state(h, tb));
        assert_live(h, tq, q.pid);
        end_child_and_await_dead(&q, h, tq);
        child_reap(&q);
        close(fd);
        shmdt(h);
}
END_TEST

/*
 * shmbroker-protocol(7), open: "holder" is the token "to take back" for a
 * ring, whatever the access: an ro open by the orphan's own process binds
 * it to the new connection (the answer carries it), and that hold's close
 * ends it, as for an rw take-back.
 */
START_TEST(test_holder_taken_back_by_a_read_only_open) {
        RingHeader *h = start_with_ring();
        int fd = test_connect(td.socket), a = test_connect(td.socket), b;
        uint32_t t = open_holder(a, "frames", "rw", 0);

        ck_assert_uint_ne(t, 0);
        close(a);
        ck_assert(await_clients(fd, "frames", 0));
        assert_live(h, t, getpid());
        b = test_connect(td.socket);
        ck_assert_uint_eq(open_holder(b, "frames", "ro", t), t);
        json_decref(test_request(b, "{\"op\":\"close\",\"channel\":\"frames\"}"));
        ck_assert_int_eq(holder_state(h, t), RING_HOLDER_DEAD);
        close(b);
        close(fd);
        shmdt(h);
}
END_TEST

/* ---- the command line (shmbrokerd(8): OPTIONS, EXIT STATUS) ---- */

/*
 * shmbrokerd(8), EXIT STATUS: "2 Usage error: an unknown option, a missing
 * option argument, an unexpected argument", or an empty path, with nothing started; --help
 * and --version print on standard output and exit 0; --check-config prints
 * "PATH: configuration OK (N channels)" on standard output.
 */
/*
 * shmbrokerd(8), OPTIONS: "-v, --verbose Log debug messages too": each
 * channel's key and ids as it is made, which an admin asks for when a
 * start goes wrong; without the option, no such line.
 */
START_TEST(test_verbose_logs_debug_messages) {
        static const char *const options[] = { NULL, "-v", "--verbose" };

        test_daemon_write_config(&td, two_channels);
        for (size_t i = 0; i < sizeof options / sizeof options[0]; i++) {
                int status = 0;
                char *log;

                ck_assert(truncate(td.log, 0) == 0 || errno == ENOENT);
                ck_assert_msg(test_daemon_start(&td, &status, options[i], NULL), "no start with %s (%d)",
                              options[i] ? options[i] : "no option", status);
                log = test_daemon_log(&td);
                ck_assert_msg(!!strstr(log, "Created channel telemetry: key 0x") == !!options[i], "%s, the log:\n%s",
                              options[i] ? options[i] : "without -v", log);
                ck_assert_msg(strstr(log, "Serving 2 channel(s)"), "no info line: %s", log);
                free(log);
                test_daemon_stop_ok(&td);
        }
}
END_TEST

/*
 * shmbrokerd(8), Start: the daemon "raises its soft limit of open files
 * (RLIMIT_NOFILE) to the hard limit". systemd starts a service at a soft
 * limit of 1024 under a far higher hard one, and every client costs a
 * descriptor: kept at the soft limit, the daemon would refuse clients (and
 * reckon its descriptor shares, a quarter and an eighth of the limit) far
 * below connections_max.
 */
START_TEST(test_open_file_limit_raised_to_the_hard_limit) {
        struct rlimit rl;
        char path[64], line[256];
        unsigned long long soft = 0, hard = 0;
        bool found = false;
        FILE *f;

        ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        /* This test's process only (Check forks each test): a hard limit of 4096, a soft one far below. */
        if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 4096)
                rl.rlim_max = 4096;
        ck_assert_uint_gt(rl.rlim_max, 128);
        rl.rlim_cur = 64;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
        test_daemon_write_config(&td, two_channels);
        test_start_ok();
        /* valgrind keeps descriptors of its own above the daemon's limit, and answers its rlimit calls itself. */
        if (getenv("TEST_DAEMON_WRAPPER")) {
                fprintf(stderr, "test_open_file_limit_raised_to_the_hard_limit: the daemon runs under a wrapper; "
                        "its limit is the wrapper's, not checked.\n");
                test_daemon_stop_ok(&td);
                return;
        }
        snprintf(path, sizeof path, "/proc/%d/limits", (int) td.pid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof line, f))
                if (strncmp(line, "Max open files", 14) == 0)
                        found = sscanf(line + 14, "%llu %llu", &soft, &hard) == 2;
        fclose(f);
        ck_assert_msg(found, "no open-file limit in %s", path);
        ck_assert_msg(soft == rl.rlim_max && hard == rl.rlim_max,
                      "the daemon's open-file limit is %llu (hard %llu), not raised to the hard limit %llu", soft, hard,
                      (unsigned long long) rl.rlim_max);
        test_daemon_stop_ok(&td);
}
END_TEST

START_TEST(test_command_line_usage_and_exit_codes) {
        static const char *const usage_errors[] = { "--no-such-option", "-q", "-c", "--socket", "--state-dir",
                                                    "--check-config extra", "stray-argument", "--socket ''",
                                                    "--socket $(printf '%0120d' 0)", "--state-dir ''", "-c ''" };
        char out[4096], expect[700];
        DIR *dir;

        test_daemon_write_config(&td, two_channels);
        for (size_t i = 0; i < sizeof usage_errors / sizeof usage_errors[0]; i++) {
                /* stderr only: stdout must stay empty; the config is valid, so only the usage can fail it. */
                int rc = test_run(out, sizeof out, "cd %s && %s -c %s %s 2>/dev/null", td.dir, SHMBROKERD_PATH,
                                 td.config, usage_errors[i]);

                ck_assert_msg(rc == 2, "shmbrokerd %s: exit %d, not 2", usage_errors[i], rc);
                ck_assert_msg(out[0] == 0, "shmbrokerd %s wrote to stdout: %s", usage_errors[i], out);
                rc = test_run(out, sizeof out, "cd %s && %s -c %s %s 2>&1 >/dev/null", td.dir, SHMBROKERD_PATH,
                             td.config, usage_errors[i]);
                ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1,
                              "shmbrokerd %s: not one line on stderr: %s", usage_errors[i], out);
        }
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        ck_assert_int_ne(access(td.socket, F_OK), 0);
        /* Nothing named after a socket that is refused: no key secret made before the check. */
        dir = opendir(td.dir);
        ck_assert_ptr_nonnull(dir);
        for (struct dirent *e; (e = readdir(dir));)
                ck_assert_msg(!strstr(e->d_name, ".secret") && !strstr(e->d_name, ".lock"), "%s/%s was made", td.dir,
                              e->d_name);
        closedir(dir);

        /* What was printed must have reached stdout for a success. */
        ck_assert_int_eq(test_run(out, sizeof out, "%s --version >/dev/full 2>/dev/null; echo $?", SHMBROKERD_PATH), 0);
        ck_assert_str_eq(out, "1\n");
        ck_assert_int_eq(test_run(out, sizeof out, "%s --help >/dev/full 2>/dev/null; echo $?", SHMBROKERD_PATH), 0);
        ck_assert_str_eq(out, "1\n");
        ck_assert_int_eq(test_run(out, sizeof out, "%s --check-config -c %s >/dev/full 2>/dev/null; echo $?",
                                 SHMBROKERD_PATH, td.config), 0);
        ck_assert_str_eq(out, "1\n");

        ck_assert_int_eq(test_run(out, sizeof out, "%s --help 2>/dev/null", SHMBROKERD_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "Usage:"));
        ck_assert_int_eq(test_run(out, sizeof out, "%s -h 2>/dev/null", SHMBROKERD_PATH), 0);
        ck_assert_ptr_nonnull(strstr(out, "Usage:"));
        ck_assert_int_eq(test_run(out, sizeof out, "%s --version 2>/dev/null", SHMBROKERD_PATH), 0);
        ck_assert_str_eq(out, "shmbrokerd " PACKAGE_VERSION "\n");

        ck_assert_int_eq(test_run(out, sizeof out, "%s --check-config -c %s 2>/dev/null", SHMBROKERD_PATH, td.config), 0);
        snprintf(expect, sizeof expect, "%s: configuration OK (2 channels)\n", td.config);
        ck_assert_str_eq(out, expect);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
}
END_TEST

/*
 * shmbrokerd(8), Start: "a file that is not a socket ... is left alone and
 * the start fails". A config whose "socket" names a data file by mistake
 * must not cost that file; a symbolic link there is neither followed nor
 * removed.
 */
START_TEST(test_non_socket_at_socket_path_left_alone) {
        char target[400], link_to[400], *log;
        struct stat st;
        int status = 0;
        FILE *f;

        test_daemon_write_config(&td, two_channels);
        f = fopen(td.socket, "we");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs("precious data\n", f), 0);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit status %d", status);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, td.socket) && strstr(log, "not a socket"), "log does not name the file: %s", log);
        free(log);
        f = fopen(td.socket, "re");
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(fgets(target, sizeof target, f));
        fclose(f);
        ck_assert_str_eq(target, "precious data\n");
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        ck_assert_int_eq(unlink(td.socket), 0);

        /* A symbolic link there (to a file, or dangling): left as it is, its target too. */
        snprintf(target, sizeof target, "%s/target", td.dir);
        f = fopen(target, "we");
        ck_assert_ptr_nonnull(f);
        fclose(f);
        ck_assert_int_eq(symlink(target, td.socket), 0);
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit status %d", status);
        ck_assert_int_eq(lstat(td.socket, &st), 0);
        ck_assert(S_ISLNK(st.st_mode));
        ck_assert_int_eq(readlink(td.socket, link_to, sizeof link_to - 1), (ssize_t) strlen(target));
        ck_assert_int_eq(stat(target, &st), 0);
        ck_assert(S_ISREG(st.st_mode) && st.st_size == 0);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        /* Dangling: neither followed (bind() would make a socket where it points) nor removed. */
        ck_assert_int_eq(unlink(td.socket), 0);
        ck_assert_int_eq(symlink("/nonexistent-shmbroker-target", td.socket), 0);
        ck_assert(!test_daemon_start(&td, &status, NULL));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit status %d", status);
        ck_assert_int_eq(lstat(td.socket, &st), 0);
        ck_assert(S_ISLNK(st.st_mode));
        ck_assert_int_ne(lstat("/nonexistent-shmbroker-target", &st), 0);

        /* Once the path is free, the same config starts. */
        ck_assert_int_eq(unlink(td.socket), 0);
        test_start_ok();
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * README, "One daemon per socket": "a socket file where a server still
 * answers is never unlinked". A daemon's stop removes the socket it bound,
 * and the directory of its FIFOs, not whatever has come to their paths
 * since: here another daemon (another state directory, so another lock)
 * listens there once the first one's socket file and FIFO directory were
 * moved away (with them in place it would refuse to start).
 */
START_TEST(test_stop_unlinks_only_its_own_socket) {
        TestDaemon other = td;
        char state[400], wake[400], moved[420];
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"first\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_int_eq(unlink(td.socket), 0);
        snprintf(wake, sizeof wake, "%s.wake", td.socket);
        snprintf(moved, sizeof moved, "%s.moved", wake);
        ck_assert_int_eq(rename(wake, moved), 0);

        /* The second daemon: same socket path, its own config, log, notify socket and state directory. */
        snprintf(other.config, sizeof other.config, "%s/other.json", td.dir);
        snprintf(other.log, sizeof other.log, "%s/other.log", td.dir);
        snprintf(other.notify, sizeof other.notify, "%s/other.notify", td.dir);
        snprintf(state, sizeof state, "%s/other-state", td.dir);
        other.pid = 0;
        other.notify_fd = -1;
        test_daemon_write_config(&other, "[{\"name\": \"second\", \"size\": 4096}]");
        ck_assert(test_daemon_start(&other, NULL, "--state-dir", state, NULL));

        test_daemon_stop_ok(&td);
        ck_assert_msg(access(td.socket, F_OK) == 0, "the first daemon's stop removed the second one's live socket");
        /* Its FIFO directory holds its lock, so no stop could remove it: test_stop_removes_only_its_own_fifo_directory. */
        ck_assert_int_eq(rmdir(moved), 0);
        fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\":\"list\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&other);
        ck_assert_int_ne(access(td.socket, F_OK), 0);
}
END_TEST

/*
 * The FIFO-directory half of test_stop_unlinks_only_its_own_socket, where
 * it can fail: a live daemon's directory always holds its .lock, so rmdir()
 * refuses it whatever the stop checks. An empty directory that came to the
 * path after ours was moved away (another daemon's, before it made its
 * lock) must survive the stop too; ours, moved, is emptied.
 */
START_TEST(test_stop_removes_only_its_own_fifo_directory) {
        char wake[400], moved[420];
        struct stat st;

        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 2}]");
        test_start_ok();
        snprintf(wake, sizeof wake, "%s.wake", td.socket);
        snprintf(moved, sizeof moved, "%s.moved", wake);
        ck_assert_int_eq(rename(wake, moved), 0);
        ck_assert_int_eq(mkdir(wake, 0755), 0);
        test_daemon_stop_ok(&td);
        ck_assert_msg(stat(wake, &st) == 0 && S_ISDIR(st.st_mode), "the stop removed a directory it did not make");
        ck_assert_int_eq(rmdir(wake), 0);
        ck_assert_int_eq(rmdir(moved), 0);
}
END_TEST

/*
 * The FIFO directory (SOCKET.wake) is the daemon's only when the daemon's
 * user owns it and nobody else may write it: in one that another user made
 * first, or that a group may write, the FIFOs could be replaced under the
 * clients that wait on them. Here nobody's (mode 0755), then root's but
 * group-writable (0775): each time the daemon starts without wake-up
 * FIFOs, says why, and puts none in it.
 */
START_TEST(test_fifo_directory_of_another_user_not_used) {
        static const struct {
                uid_t uid;
                mode_t mode;
        } dirs[] = { { 65534, 0755 }, { 0, 0775 } };
        char wake[400], fifo[420], *log;
        struct stat st;

        snprintf(wake, sizeof wake, "%s.wake", td.socket);
        snprintf(fifo, sizeof fifo, "%s/r.data", wake);
        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 2}]");
        for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
                ck_assert_int_eq(mkdir(wake, 0700), 0);
                ck_assert_int_eq(chown(wake, dirs[i].uid, 4243), 0);
                ck_assert_int_eq(chmod(wake, dirs[i].mode), 0);
                test_start_ok();
                log = test_daemon_log(&td);
                ck_assert_msg(strstr(log, "not the daemon's own directory"), "uid %u, mode %04o: not refused:\n%s",
                              (unsigned) dirs[i].uid, (unsigned) dirs[i].mode, log);
                free(log);
                ck_assert_msg(lstat(fifo, &st) < 0 && errno == ENOENT, "the daemon made %s in a directory of uid %u, "
                              "mode %04o", fifo, (unsigned) dirs[i].uid, (unsigned) dirs[i].mode);
                test_daemon_stop_ok(&td);
                ck_assert_int_eq(lstat(wake, &st), 0);
                ck_assert_uint_eq(st.st_uid, dirs[i].uid);
                ck_assert_int_eq(rmdir(wake), 0);
                ck_assert(truncate(td.log, 0) == 0 || errno == ENOENT);
        }
}
END_TEST

/*
 * shmbrokerd(8), LOGGING: "one line per message" (under the journal each
 * line carries its own priority prefix, so a second line would be logged
 * at another priority). A config error quotes what the file holds: an
 * unknown key with a newline and an escape sequence, a channel name with a
 * newline. Each error must stay one line of text on stderr.
 */
START_TEST(test_config_errors_are_one_line_of_text) {
        static const char *const configs[] = {
                "{\"version\": 1, \"socket\": \"x\", \"channels\": [], \"\\u001b[31m\\nFORGED:\\u007f line\": 1}\n",
                "{\"version\": 1, \"socket\": \"x\", \"channels\": [{\"name\": \"a\\nFORGED\", \"size\": 4096}]}\n",
                "{\"version\": 1, \"socket\": \"x\", \"channels\": [{\"name\": \"a\", \"size\": \"4\\u009b2J\"}]}\n",
        };
        char out[4096];

        for (size_t i = 0; i < sizeof configs / sizeof *configs; i++) {
                test_daemon_write_raw_config(&td, configs[i]);
                ck_assert_int_eq(test_run(out, sizeof out, "%s --check-config -c %s 2>&1 >/dev/null", SHMBROKERD_PATH,
                                          td.config), 1);
                ck_assert_msg(*out && strchr(out, '\n') == out + strlen(out) - 1 && !strchr(out, '\033') && !strchr(out, '\177') &&
                                      !strstr(out, "\302\233"),
                              "config %zu: not one line of text: \"%s\"", i, out);
        }
}
END_TEST

/* Whether s is valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF). */
static bool valid_utf8(const char *s) {
        for (const unsigned char *p = (const unsigned char *) s; *p;) {
                unsigned n = *p < 0x80 ? 1 : *p >= 0xc2 && *p < 0xe0 ? 2 : *p >= 0xe0 && *p < 0xf0 ? 3 :
                             *p >= 0xf0 && *p < 0xf5 ? 4 : 0;
                uint32_t c = *p & (0xff >> (n + 1));

                if (n == 0)
                        return false;
                for (unsigned i = 1; i < n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        c = c << 6 | (p[i] & 0x3f);
                }
                if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) || (c >= 0xd800 && c < 0xe000))
                        return false;
                p += n;
        }
        return true;
}

/*
 * A message cut at its buffer's size must not end in half a character:
 * journalctl shows a message that is not valid UTF-8 as "[blob data]", not
 * its text. A config path of 600 two-byte characters makes the start's
 * error longer than any buffer it goes through; with 0 to 3 ASCII bytes
 * before them, one of the cuts falls inside a character.
 */
START_TEST(test_long_messages_are_cut_between_characters) {
        char path[4096], out[8192];

        for (int pad = 0; pad < 4; pad++) {
                size_t len = (size_t) snprintf(path, sizeof path, "%s/%.*s", td.dir, pad, "xxx");

                /* In directories of 100 characters: one name of 600 would be too long (ENAMETOOLONG). */
                for (int i = 0; i < 600; i++)
                        len += (size_t) snprintf(path + len, sizeof path - len, "%s%s", i % 100 ? "" : "/", "\303\251");
                snprintf(path + len, sizeof path - len, "/c.json");
                ck_assert_int_eq(test_run(out, sizeof out, "%s --check-config -c '%s' 2>&1 >/dev/null", SHMBROKERD_PATH,
                                          path), 1);
                ck_assert_msg(strlen(out) > 1000 && valid_utf8(out), "pad %d: not valid UTF-8 (%zu bytes): ...%s", pad,
                              strlen(out), out + (strlen(out) > 40 ? strlen(out) - 40 : 0));
        }
}
END_TEST

/*
 * Each byte of a logged message that is no valid UTF-8 (RFC 3629) becomes
 * one '?', each control character (C0, DEL, C1) one '?', and every valid
 * character stays as it is. The config path goes into the start's error
 * as given: any byte but '/' and NUL.
 */
START_TEST(test_log_replaces_exactly_what_is_no_text) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "\x1f", "?" },                        /* the last C0 control */
                { "\x7f", "?" },
                { "\xc2\x85", "?" },                    /* C1: one character, one '?' */
                { "\xc2\x9f", "?" },                    /* the last C1 */
                { "\x80", "?" },                        /* a lone continuation byte */
                { "\xc0\xaf", "??" },                   /* overlong '/' */
                { "\xc1\xbf", "??" },
                { "\xe0\x80\xaf", "???" },              /* overlong, 3 bytes */
                { "\xf0\x80\x80\xaf", "????" },         /* overlong, 4 bytes */
                { "\xed\xa0\x80", "???" },              /* a surrogate */
                { "\xf4\x90\x80\x80", "????" },         /* past U+10FFFF */
                { "\xf5\x80\x80\x80", "????" },
                { "\xe2\x82x", "??x" },                 /* cut short */
                { "\xf0\x9f\x98", "???" },              /* cut short by the path's '/' */
                /* U+00A0, U+20AC, U+1F600, U+10FFFF, U+D7FF, U+E000, U+0800, U+10000: kept */
                { "\xc2\xa0\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xed\x9f\xbf\xee\x80\x80\xe0\xa0\x80\xf0\x90\x80\x80",
                  "\xc2\xa0\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xed\x9f\xbf\xee\x80\x80\xe0\xa0\x80\xf0\x90\x80\x80" },
        };
        char out[4096], want[512];

        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
                ck_assert_int_eq(test_run(out, sizeof out, "%s --check-config -c '%s/<%s>/c.json' 2>&1 >/dev/null",
                                          SHMBROKERD_PATH, td.dir, cases[i].in), 1);
                snprintf(want, sizeof want, "%s/<%s>/c.json", td.dir, cases[i].out);
                ck_assert_msg(strstr(out, want), "case %zu: \"%s\" is not in \"%s\"", i, want, out);
        }
}
END_TEST

int main(void) {
        /* Check's tests are pointer variables, not constants: the table lives here. */
        const TestGroup groups[] = {
                { "serve", CASE_TIMEOUT, { test_list_matches_kernel, test_open_status_close, test_pipelined_requests_in_order,
                                 test_client_waiting_for_its_answer_is_woken_once,
                                 test_status_reads_every_semaphore_of_large_sets } },
                { "bad-input", CASE_TIMEOUT, { test_errors_keep_serving, test_error_message_cut_between_characters,
                                 test_overlong_line_closes_only_that_connection,
                                 test_line_at_limit_is_served, test_half_sent_request_does_not_stall_others,
                                 test_ring_open_answered_when_socket_path_is_not_text,
                                 test_list_answered_when_group_name_is_not_text,
                                 test_list_answered_when_user_name_is_not_text,
                                 test_out_of_band_byte_neither_spins_nor_stalls } },
                { "access", CASE_TIMEOUT, { test_access_follows_kernel_rule, test_clients_cannot_remove_or_reown,
                                            test_status_of_a_channel_the_asker_cannot_open } },
                { "unmapped", CASE_TIMEOUT, { test_unmapped_peer_is_not_the_overflow_id,
                                              test_overflow_ids_are_ids_where_all_are_mapped } },
                { "lifecycle", CASE_TIMEOUT, { test_sigterm_with_client_attached, test_sigint_with_client_attached,
                                 test_sigkill_then_restart_adopts_or_replaces, test_failed_start_keeps_adopted_channels,
                                 test_reclaim_spares_foreign_reuse_of_id,
                                 test_second_daemon_refuses, test_stale_socket_replaced_live_socket_kept,
                                 test_objects_removed_behind_our_back_are_remade, test_status_of_all_repairs_and_drops_as_it_goes,
                                 test_ring_that_cannot_be_remade_leaves_no_fifo,
                                 test_unprivileged_daemon_reclaims_unreadable_objects,
                                 test_ring_marked_removed_is_not_taken_over } },
                { "adopt-proof", CASE_TIMEOUT, { test_adoption_spares_foreign_set_at_the_recorded_id,
                                                  test_adopted_ring_gets_a_missing_fifo_again,
                                                  test_holder_ledgers_follow_their_channels,
                                                  test_ledger_that_cannot_be_read_is_not_passed_over,
                                                  test_ledger_directory_not_private_is_not_used,
                                                  test_holder_ledgers_follow_repairs_and_reloads,
                                                  test_holder_ledger_name_taken_by_a_fifo_or_a_directory,
                                                  test_failed_start_keeps_the_ledgers_it_took_over,
                                                  test_holder_ledger_not_made_in_a_full_state_directory,
                                                  test_holder_ledger_not_finished_is_not_believed } },
                { "scale", SCALE_TIMEOUT, { test_crash_restart_of_many_channels_adopts_in_linear_time,
                                            test_open_among_many_holds_of_a_connection } },
                { "capability", CASE_TIMEOUT, { test_capability_of_own_user_namespace_is_not_honoured,
                                 test_creator_ids_count_as_the_kernel_counts_them,
                                 test_capability_counts_only_under_the_uid_it_connected_with,
                                 test_capability_of_a_peer_gone_is_not_believed,
                                 test_capability_that_cannot_be_seen_is_root_only } },
                { "unreadable", CASE_TIMEOUT, { test_status_survives_unreadable_channel } },
                { "holders", CASE_TIMEOUT, { test_holder_tokens_for_rw_openers, test_holder_dead_when_hold_ends,
                                 test_holder_table_full, test_holder_crash_restart,
                                 test_open_of_a_hung_up_client_takes_no_token, test_holder_reload,
                                 test_holder_ring_remade, test_holder_lives_with_its_process,
                                 test_holder_dead_with_its_process_though_a_fork_holds_the_connection,
                                 test_hold_of_a_dead_token_ends_no_later_holder,
                                 test_failed_connection_drops_its_holds_before_its_answer_is_read,
                                 test_holder_taken_back_after_its_connection_closed } },
                { "holders-take-back", CASE_TIMEOUT, { test_holder_taken_back_by_a_read_only_open } },
                { "holders-forged", CASE_TIMEOUT, { test_holder_entry_forged_free_while_running_hands_out_no_live_token,
                                                    test_holder_entry_forged_dead_while_running_is_not_handed_out } },
                { "resources", CASE_TIMEOUT, { test_fd_exhaustion_pauses_accept, test_derived_key_skips_fixed_keys } },
                { "start-failures", CASE_TIMEOUT, { test_foreign_fixed_key_fails_start_and_rolls_back, test_foreign_derived_key_moves_on,
                                      test_remade_channel_keeps_the_key_it_moved_to,
                                      test_kernel_limit_refused_before_creating, test_kernel_sem_limit_refused_before_creating,
                                      test_check_config_touches_no_ipc, test_check_config_beside_a_running_daemon,
                                      test_unreachable_ftok_file_fails_an_unprivileged_start } },
                { "command-line", CASE_TIMEOUT, { test_command_line_usage_and_exit_codes,
                                 test_verbose_logs_debug_messages, test_open_file_limit_raised_to_the_hard_limit,
                                 test_non_socket_at_socket_path_left_alone, test_stop_unlinks_only_its_own_socket,
                                 test_stop_removes_only_its_own_fifo_directory,
                                 test_fifo_directory_of_another_user_not_used } },
                { "log-lines", CASE_TIMEOUT, { test_config_errors_are_one_line_of_text,
                                               test_long_messages_are_cut_between_characters,
                                               test_log_replaces_exactly_what_is_no_text } },
        };

        return test_main("daemon", groups, sizeof groups / sizeof groups[0], test_setup, test_teardown);
}
