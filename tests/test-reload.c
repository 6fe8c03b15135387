/*
 * End-to-end tests of reload (SIGHUP and the admin "reload" op): the real
 * shmbrokerd, forked in a private IPC namespace per test, spoken to over its
 * real socket. Every claim of the daemon is checked against the kernel with
 * IPC_STAT/GETALL, shmat and semop, and counted with util-linux ipcs.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/semun.h"
#include "daemon/channel.h"
#include "proto/broadcast.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 30

static char notified[16384];

static void setup(void) {
        notified[0] = 0;
        test_setup();
}

/*
 * sd_notify() blocks once the receiver's datagram queue is full
 * (net.unix.max_dgram_qlen, 10 by default), and every reload sends three
 * datagrams (RELOADING=1, READY=1, STATUS=). systemd reads them; so must
 * we, or a test with a few reloads would stall the daemon. Everything read
 * is kept in `notified` ("|"-separated) for the tests that check it.
 */
static void drain_notify(void) {
        char buf[1024];

        if (td.notify_fd < 0)
                return;
        for (;;) {
                size_t used = strlen(notified);
                ssize_t n = recv(td.notify_fd, buf, sizeof buf - 1, MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return;
                buf[n] = 0;
                if (used + (size_t) n + 2 > sizeof notified)
                        used = 0;       /* only the recent past matters */
                snprintf(notified + used, sizeof notified - used, "%s|", buf);
        }
}

/* Every request goes through here, so the notify queue never fills up. */
static json_t *req(int fd, const char *line) {
        drain_notify();
        return test_request(fd, line);
}

/* A config with "admin_group" set to a numeric gid. */
static void write_config_with_admin_group(gid_t admin_gid, const char *channels_json) {
        char *text;

        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"admin_group\": %u, \"channels\": %s}\n",
                                  td.socket, (unsigned) admin_gid, channels_json), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
}

/* One request on a fresh connection (for requests that hold nothing). */
static json_t *request_once(const char *line) {
        int fd = test_connect(td.socket);
        json_t *resp = req(fd, line);

        close(fd);
        return resp;
}

static json_t *list_ok(void) {
        json_t *resp = request_once("{\"op\":\"list\"}");

        test_assert_ok(resp);
        return resp;
}

static json_t *reload_ok(int fd) {
        json_t *resp = req(fd, "{\"op\":\"reload\"}");

        test_assert_ok(resp);
        return resp;
}

/* The answer's `key` array holds exactly these names (comma separated; "" for none), in any order. */
static void assert_names(json_t *resp, const char *key, const char *expected) {
        json_t *a = json_object_get(resp, key), *e;
        char *text = json_dumps(resp, JSON_COMPACT), *copy = strdup(expected), *save = NULL;
        size_t n = 0, i;

        ck_assert_msg(json_is_array(a), "\"%s\" is missing or not an array: %s", key, text);
        for (char *w = strtok_r(copy, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
                size_t found = 0;

                json_array_foreach(a, i, e)
                        found += json_is_string(e) && strcmp(json_string_value(e), w) == 0;
                ck_assert_msg(found == 1, "\"%s\" should list \"%s\" once (found %zu): %s", key, w, found, text);
                n++;
        }
        ck_assert_msg(json_array_size(a) == n, "\"%s\" should have exactly %zu name(s) (%s): %s", key, n, expected,
                      text);
        free(copy);
        free(text);
}

/* Reload; the four lists of the answer hold exactly these names (comma separated; "" for none). */
static void reload_expect(int fd, const char *added, const char *removed, const char *changed, const char *kept) {
        json_t *resp = reload_ok(fd);

        assert_names(resp, "added", added);
        assert_names(resp, "removed", removed);
        assert_names(resp, "changed", changed);
        assert_names(resp, "kept", kept);
        json_decref(resp);
}

static bool shm_exists(int id) {
        struct shmid_ds ds;

        if (shmctl(id, IPC_STAT, &ds) == 0)
                return true;
        ck_assert_msg(errno == EINVAL || errno == EIDRM, "shmctl(%d, IPC_STAT): %s", id, strerror(errno));
        return false;
}

static bool sem_exists(int id) {
        struct semid_ds ds;
        union semun arg = { .buf = &ds };

        if (semctl(id, 0, IPC_STAT, arg) == 0)
                return true;
        ck_assert_msg(errno == EINVAL || errno == EIDRM, "semctl(%d, IPC_STAT): %s", id, strerror(errno));
        return false;
}

static void shm_stat(int id, struct shmid_ds *ds) {
        ck_assert_msg(shmctl(id, IPC_STAT, ds) == 0, "shmctl(%d, IPC_STAT): %s", id, strerror(errno));
}

static void sem_stat(int id, struct semid_ds *ds) {
        union semun arg = { .buf = ds };

        ck_assert_msg(semctl(id, 0, IPC_STAT, arg) == 0, "semctl(%d, IPC_STAT): %s", id, strerror(errno));
}

static void sem_values(int id, unsigned short *values) {
        union semun arg = { .array = values };

        ck_assert_msg(semctl(id, 0, GETALL, arg) == 0, "semctl(%d, GETALL): %s", id, strerror(errno));
}

/* Start the daemon on channels (a JSON array) and list them. */
static json_t *start_and_list(const char *channels) {
        test_daemon_write_config(&td, channels);
        test_start_ok();
        return list_ok();
}

/* A segment of this test's at key, as another user's program would make one. */
static int foreign_segment(key_t key) {
        int id = shmget(key, 8192, IPC_CREAT | IPC_EXCL | 0644);

        ck_assert_int_ge(id, 0);
        return id;
}

/* The foreign segment is as foreign_segment() made it, unattached: the daemon touched nothing. Then it goes. */
static void foreign_segment_untouched_remove(int id, key_t key) {
        struct shmid_ds ds;

        shm_stat(id, &ds);
        ck_assert_uint_eq(ds.shm_segsz, 8192);
        ck_assert_uint_eq(ds.shm_perm.mode & 0777, 0644);
        ck_assert_uint_eq((uint32_t) ds.shm_perm.__key, (uint32_t) key);
        ck_assert_int_eq(ds.shm_cpid, getpid());
        ck_assert_uint_eq(ds.shm_nattch, 0);
        ck_assert_int_eq(shmctl(id, IPC_RMID, NULL), 0);
}

/* The kernel agrees with a listed channel: key, size, mode (both objects), semaphore count. */
static void assert_kernel_channel(json_t *ch, size_t size, mode_t mode, unsigned nsems) {
        struct shmid_ds shm;
        struct semid_ds sem;

        shm_stat((int) test_jint(ch, "shm_id"), &shm);
        ck_assert_uint_eq(shm.shm_segsz, size);
        ck_assert_uint_eq((uint32_t) shm.shm_perm.__key, (uint32_t) test_jint(ch, "shm_key"));
        ck_assert_uint_eq(shm.shm_perm.mode & 0777, mode);
        ck_assert_msg(!(shm.shm_perm.mode & SHM_DEST), "a listed segment is marked for removal");
        sem_stat((int) test_jint(ch, "sem_id"), &sem);
        ck_assert_uint_eq(sem.sem_nsems, nsems);
        ck_assert_uint_eq((uint32_t) sem.sem_perm.__key, (uint32_t) test_jint(ch, "sem_key"));
        ck_assert_uint_eq(sem.sem_perm.mode & 0777, mode);
        ck_assert_int_eq(test_jint(ch, "size"), (json_int_t) size);
}

/* `after` lists the very channels of `before`, with the very same objects, and the kernel still has them. */
static void assert_same_channels(json_t *before, json_t *after) {
        json_t *a = json_object_get(before, "channels"), *e;
        size_t i;

        ck_assert_uint_eq(json_array_size(json_object_get(after, "channels")), json_array_size(a));
        json_array_foreach(a, i, e) {
                const char *name = test_jstr(e, "name");
                json_t *f = test_must_find(after, name);
                struct shmid_ds shm;
                struct semid_ds sem;

                ck_assert_msg(test_jint(e, "shm_id") == test_jint(f, "shm_id") && test_jint(e, "sem_id") == test_jint(f, "sem_id") &&
                              test_jint(e, "shm_key") == test_jint(f, "shm_key") && test_jint(e, "size") == test_jint(f, "size"),
                              "channel \"%s\" changed its objects", name);
                ck_assert_str_eq(test_jstr(e, "mode"), test_jstr(f, "mode"));
                shm_stat((int) test_jint(f, "shm_id"), &shm);
                ck_assert_uint_eq((uint32_t) shm.shm_perm.__key, (uint32_t) test_jint(f, "shm_key"));
                ck_assert_uint_eq(shm.shm_segsz, (size_t) test_jint(f, "size"));
                sem_stat((int) test_jint(f, "sem_id"), &sem);
                ck_assert_uint_eq((uint32_t) sem.sem_perm.__key, (uint32_t) test_jint(f, "sem_key"));
        }
}

static void assert_ipcs(int segments, int sets) {
        ck_assert_int_eq(test_ipcs_count("-m"), segments);
        ck_assert_int_eq(test_ipcs_count("-s"), sets);
}

static void assert_message_contains(json_t *resp, const char *needle) {
        const char *msg = json_string_value(json_object_get(resp, "message"));

        ck_assert_msg(msg && strstr(msg, needle), "message should name \"%s\": %s", needle, msg ? msg : "(none)");
}

/* A reload refused with err, its message naming needle (and needle2 unless NULL); the channels are as before. */
static void reload_refused(int fd, json_t *before, const char *err, const char *needle, const char *needle2) {
        json_t *resp = req(fd, "{\"op\":\"reload\"}"), *after;

        test_assert_error(resp, err);
        assert_message_contains(resp, needle);
        if (needle2)
                assert_message_contains(resp, needle2);
        json_decref(resp);
        after = list_ok();
        assert_same_channels(before, after);
        json_decref(after);
}

/* ---- the reload op ---- */

START_TEST(test_add_remove_keep_change_in_one_reload) {
        json_t *before, *after, *ch;
        int fd, old_b_shm, old_b_sem;

        test_daemon_write_config(&td,
                "[{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1]},"
                " {\"name\": \"b\", \"size\": 8192, \"semaphores\": 2},"
                " {\"name\": \"c\", \"size\": 4096, \"mode\": \"0660\"}]");
        test_start_ok();
        before = list_ok();
        old_b_shm = (int) test_jint(test_must_find(before, "b"), "shm_id");
        old_b_sem = (int) test_jint(test_must_find(before, "b"), "sem_id");
        assert_ipcs(3, 3);

        /* a kept, b removed, c changed (mode), d added. */
        test_daemon_write_config(&td,
                "[{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1]},"
                " {\"name\": \"c\", \"size\": 4096, \"mode\": \"0600\"},"
                " {\"name\": \"d\", \"size\": 12288, \"semaphores\": [3, 4], \"mode\": \"0604\"}]");
        fd = test_connect(td.socket);
        reload_expect(fd, "d", "b", "c", "a");

        /* The removed channel's objects are gone from the kernel, not just from the list. */
        ck_assert_msg(!shm_exists(old_b_shm), "removed channel's segment %d still exists", old_b_shm);
        ck_assert_msg(!sem_exists(old_b_sem), "removed channel's set %d still exists", old_b_sem);

        after = list_ok();
        ck_assert_uint_eq(json_array_size(json_object_get(after, "channels")), 3);
        ck_assert_ptr_null(test_find_channel(after, "b"));
        /* a: untouched. */
        ck_assert_int_eq(test_jint(test_must_find(after, "a"), "shm_id"), test_jint(test_must_find(before, "a"), "shm_id"));
        ck_assert_int_eq(test_jint(test_must_find(after, "a"), "sem_id"), test_jint(test_must_find(before, "a"), "sem_id"));
        /* c: same objects, new mode. */
        ck_assert_int_eq(test_jint(test_must_find(after, "c"), "shm_id"), test_jint(test_must_find(before, "c"), "shm_id"));
        assert_kernel_channel(test_must_find(after, "c"), 4096, 0600, 1);
        /* d: made as configured. */
        ch = test_must_find(after, "d");
        ck_assert_int_eq(test_jint(ch, "nsems"), 2);
        ck_assert_str_eq(test_jstr(ch, "mode"), "0604");
        assert_kernel_channel(ch, 12288, 0604, 2);
        {
                unsigned short v[2];

                sem_values((int) test_jint(ch, "sem_id"), v);
                ck_assert_uint_eq(v[0], 3);
                ck_assert_uint_eq(v[1], 4);
        }
        assert_ipcs(3, 3);

        json_decref(before);
        json_decref(after);
        close(fd);
}
END_TEST

/* New initial semaphore values alone (same count, size and rights) replace the channel: a start would make them so. */
START_TEST(test_changed_semaphore_values_replace) {
        json_t *before, *after;
        unsigned short v[2];
        int fd, old_shm, old_sem;

        test_daemon_write_config(&td, "[{\"name\": \"v\", \"size\": 4096, \"semaphores\": [1, 2]}]");
        test_start_ok();
        before = list_ok();
        old_shm = (int) test_jint(test_must_find(before, "v"), "shm_id");
        old_sem = (int) test_jint(test_must_find(before, "v"), "sem_id");

        test_daemon_write_config(&td, "[{\"name\": \"v\", \"size\": 4096, \"semaphores\": [7, 2]}]");
        fd = test_connect(td.socket);
        reload_expect(fd, "", "", "v", "");
        after = list_ok();
        sem_values((int) test_jint(test_must_find(after, "v"), "sem_id"), v);
        ck_assert_uint_eq(v[0], 7);
        ck_assert_uint_eq(v[1], 2);
        ck_assert_msg(!shm_exists(old_shm), "the old segment %d still exists", old_shm);
        ck_assert_msg(!sem_exists(old_sem), "the old set %d still exists", old_sem);
        assert_ipcs(1, 1);
        json_decref(before);
        json_decref(after);
        close(fd);
}
END_TEST

START_TEST(test_kept_channel_untouched_byte_for_byte) {
        static const char *const first =
                "[{\"name\": \"keep\", \"size\": 16384, \"semaphores\": [1, 0, 7], \"mode\": \"0660\"},"
                " {\"name\": \"gone\", \"size\": 4096},"
                " {\"name\": \"perm\", \"size\": 4096, \"mode\": \"0660\"}]";
        static const char *const second =
                "[{\"name\": \"perm\", \"size\": 4096, \"mode\": \"0640\"},"
                " {\"name\": \"keep\", \"size\": 16384, \"semaphores\": [1, 0, 7], \"mode\": \"0660\"},"
                " {\"name\": \"new\", \"size\": 4096}]";
        struct sembuf ops[2] = { { .sem_num = 0, .sem_op = -1 }, { .sem_num = 1, .sem_op = 5 } };
        struct shmid_ds shm_before, shm_after;
        struct semid_ds sem_before, sem_after;
        unsigned short values[3];
        union semun arg = { .val = 123 };
        json_t *resp, *ch, *clients;
        unsigned char *addr, *fresh;
        int fd, admin, shm_id, sem_id;
        const size_t size = 16384;

        test_daemon_write_config(&td, first);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"open\",\"channel\":\"keep\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        shm_id = (int) test_jint(resp, "shm_id");
        sem_id = (int) test_jint(resp, "sem_id");
        json_decref(resp);

        /* Contents and semaphore values nobody but a client could have set. */
        addr = shmat(shm_id, NULL, 0);
        ck_assert_ptr_ne(addr, (void *) -1);
        for (size_t i = 0; i < size; i++)
                addr[i] = (unsigned char) (i * 7 + 3);
        ck_assert_int_eq(semop(sem_id, ops, 2), 0);              /* 1 -> 0, 0 -> 5 */
        ck_assert_int_eq(semctl(sem_id, 2, SETVAL, arg), 0);    /* 7 -> 123 */
        shm_stat(shm_id, &shm_before);
        sem_stat(sem_id, &sem_before);
        /* Any IPC_SET (or re-initialisation) during the reload would now show in ctime. */
        sleep(1);
        usleep(100000);

        test_daemon_write_config(&td, second);
        admin = test_connect(td.socket);
        reload_expect(admin, "new", "gone", "perm", "keep");

        /* Same ids, as the daemon says... */
        resp = list_ok();
        ch = test_must_find(resp, "keep");
        ck_assert_int_eq(test_jint(ch, "shm_id"), shm_id);
        ck_assert_int_eq(test_jint(ch, "sem_id"), sem_id);
        json_decref(resp);

        /* ...and as the kernel says: the same objects, never touched. */
        shm_stat(shm_id, &shm_after);
        sem_stat(sem_id, &sem_after);
        ck_assert_uint_eq((uint32_t) shm_after.shm_perm.__key, (uint32_t) shm_before.shm_perm.__key);
        ck_assert_uint_eq(shm_after.shm_segsz, size);
        ck_assert_uint_eq(shm_after.shm_perm.mode, shm_before.shm_perm.mode);
        ck_assert_uint_eq(shm_after.shm_perm.uid, shm_before.shm_perm.uid);
        ck_assert_uint_eq(shm_after.shm_perm.gid, shm_before.shm_perm.gid);
        ck_assert_int_eq((long) shm_after.shm_ctime, (long) shm_before.shm_ctime);
        ck_assert_uint_eq(shm_after.shm_nattch, 2);     /* the daemon's and ours */
        ck_assert_uint_eq(sem_after.sem_perm.mode, sem_before.sem_perm.mode);
        ck_assert_int_eq((long) sem_after.sem_ctime, (long) sem_before.sem_ctime);

        /* Same bytes, through our old mapping and a new one. */
        fresh = shmat(shm_id, NULL, SHM_RDONLY);
        ck_assert_ptr_ne(fresh, (void *) -1);
        for (size_t i = 0; i < size; i++) {
                ck_assert_msg(addr[i] == (unsigned char) (i * 7 + 3), "byte %zu changed in our mapping", i);
                ck_assert_msg(fresh[i] == (unsigned char) (i * 7 + 3), "byte %zu changed in the segment", i);
        }
        ck_assert_int_eq(shmdt(fresh), 0);

        /* Same semaphore values: not re-initialised to [1, 0, 7]. */
        sem_values(sem_id, values);
        ck_assert_uint_eq(values[0], 0);
        ck_assert_uint_eq(values[1], 5);
        ck_assert_uint_eq(values[2], 123);

        /* Our connection still holds it. */
        resp = req(admin, "{\"op\":\"status\",\"channel\":\"keep\"}");
        test_assert_ok(resp);
        ch = test_must_find(resp, "keep");
        clients = json_object_get(ch, "clients");
        ck_assert_uint_eq(json_array_size(clients), 1);
        ck_assert_int_eq(test_jint(json_array_get(clients, 0), "pid"), getpid());
        ck_assert_str_eq(test_jstr(json_array_get(clients, 0), "access"), "rw");
        ck_assert_int_eq(test_jint(json_array_get(json_object_get(ch, "semaphores"), 2), "value"), 123);
        json_decref(resp);

        /* And the hold is a real one: close succeeds on that connection. */
        resp = req(fd, "{\"op\":\"close\",\"channel\":\"keep\"}");
        test_assert_ok(resp);
        json_decref(resp);

        ck_assert_int_eq(shmdt(addr), 0);
        assert_ipcs(3, 3);
        close(admin);
        close(fd);
}
END_TEST

START_TEST(test_mode_change_in_place) {
        struct shmid_ds shm;
        struct semid_ds sem;
        json_t *before, *after, *resp;
        char *addr;
        int fd, holder, shm_id, sem_id;

        test_daemon_write_config(&td,
                "[{\"name\": \"m\", \"size\": 4096, \"semaphores\": [2, 9], \"group\": 100, \"mode\": \"0660\"},"
                " {\"name\": \"other\", \"size\": 4096}]");
        test_start_ok();
        before = list_ok();
        shm_id = (int) test_jint(test_must_find(before, "m"), "shm_id");
        sem_id = (int) test_jint(test_must_find(before, "m"), "sem_id");
        /* Held through a connection, so that the daemon can judge that root keeps its rights. */
        holder = test_connect(td.socket);
        resp = req(holder, "{\"op\":\"open\",\"channel\":\"m\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        addr = shmat(shm_id, NULL, 0);
        ck_assert_ptr_ne(addr, (void *) -1);
        strcpy(addr, "kept across a mode change");

        test_daemon_write_config(&td,
                "[{\"name\": \"m\", \"size\": 4096, \"semaphores\": [2, 9], \"group\": 100, \"mode\": \"0640\"},"
                " {\"name\": \"other\", \"size\": 4096}]");
        fd = test_connect(td.socket);
        reload_expect(fd, "", "", "m", "other");

        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "m"), "shm_id"), shm_id);
        ck_assert_int_eq(test_jint(test_must_find(after, "m"), "sem_id"), sem_id);
        ck_assert_str_eq(test_jstr(test_must_find(after, "m"), "mode"), "0640");

        /* The kernel's objects carry the new mode; owner and group unchanged. */
        shm_stat(shm_id, &shm);
        ck_assert_uint_eq(shm.shm_perm.mode & 0777, 0640);
        ck_assert_uint_eq(shm.shm_perm.gid, 100);
        ck_assert_uint_eq(shm.shm_perm.uid, 0);
        ck_assert_msg(!(shm.shm_perm.mode & SHM_DEST), "segment marked for removal");
        sem_stat(sem_id, &sem);
        ck_assert_uint_eq(sem.sem_perm.mode & 0777, 0640);
        ck_assert_uint_eq(sem.sem_perm.gid, 100);
        /* In place: contents and semaphores intact. */
        ck_assert_str_eq(addr, "kept across a mode change");
        {
                unsigned short v[2];

                sem_values(sem_id, v);
                ck_assert_uint_eq(v[0], 2);
                ck_assert_uint_eq(v[1], 9);
        }
        ck_assert_int_eq(shmdt(addr), 0);
        assert_ipcs(2, 2);

        json_decref(before);
        json_decref(after);
        close(holder);
        close(fd);
}
END_TEST

/*
 * shmbrokerd(8), Reload: a process attached without holding the channel
 * through a connection cannot be judged, so a change that may take a right
 * away from anyone replaces the channel; one that takes nothing away stays
 * in place. Here the test attaches by id, as a program that knows the id
 * (or a fixed key) may.
 */
START_TEST(test_mode_change_with_unnamed_attach) {
        json_t *before, *after;
        char *addr, *log;
        int fd, shm_id;

        before = start_and_list("[{\"name\": \"m\", \"size\": 4096, \"group\": 100, \"mode\": \"0640\"}]");
        shm_id = (int) test_jint(test_must_find(before, "m"), "shm_id");
        addr = shmat(shm_id, NULL, 0);
        ck_assert_ptr_ne(addr, (void *) -1);
        fd = test_connect(td.socket);

        /* Loosened: nobody loses anything; in place. */
        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"group\": 100, \"mode\": \"0660\"}]");
        reload_expect(fd, "", "", "m", "");
        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "m"), "shm_id"), shm_id);
        json_decref(after);

        /* Tightened: the attach nobody holds through a connection may lose a right; replaced. */
        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"group\": 100, \"mode\": \"0600\"}]");
        reload_expect(fd, "", "", "m", "");
        after = list_ok();
        ck_assert_msg(test_jint(test_must_find(after, "m"), "shm_id") != shm_id,
                      "a tightening reload kept segment %d, which a process attached without a connection", shm_id);
        ck_assert_str_eq(test_jstr(test_must_find(after, "m"), "mode"), "0600");
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "from a process that has it mapped without holding it"), "log: %s", log);
        free(log);
        ck_assert_int_eq(shmdt(addr), 0);
        assert_ipcs(1, 1);

        json_decref(before);
        json_decref(after);
        close(fd);
}
END_TEST

/*
 * The same attach by id, beside a holder the daemon can judge (root, who
 * keeps every right and attached what its open was handed): the holder's
 * attachment is accounted for, the other one is not, and the tightening
 * must still replace the channel.
 */
START_TEST(test_mode_change_with_unnamed_attach_beside_a_holder) {
        json_t *resp, *after;
        char *held, *unnamed;
        int fd, admin, shm_id;

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"group\": 100, \"mode\": \"0640\"}]");
        test_start_ok();
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"open\",\"channel\":\"m\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        shm_id = (int) test_jint(resp, "shm_id");
        json_decref(resp);
        held = shmat(shm_id, NULL, 0);
        ck_assert_ptr_ne(held, (void *) -1);
        unnamed = shmat(shm_id, NULL, 0);       /* as another program that knows the id */
        ck_assert_ptr_ne(unnamed, (void *) -1);

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"group\": 100, \"mode\": \"0600\"}]");
        admin = test_connect(td.socket);
        reload_expect(admin, "", "", "m", "");
        after = list_ok();
        ck_assert_msg(test_jint(test_must_find(after, "m"), "shm_id") != shm_id,
                      "a tightening reload kept segment %d, which a process attached without a connection, beside "
                      "a holder that keeps its rights", shm_id);
        json_decref(after);
        ck_assert_int_eq(shmdt(unnamed), 0);
        ck_assert_int_eq(shmdt(held), 0);
        close(admin);
        close(fd);
}
END_TEST

/* shmbroker.json(5): a config that names another owner is accepted with a warning, at reload as at start. */
START_TEST(test_reload_warns_of_another_owner) {
        char *log;
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096}]");
        test_start_ok();
        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"owner\": 65534}]");
        fd = test_connect(td.socket);
        reload_expect(fd, "", "", "m", "");
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Channel m: owner uid 65534 is not the daemon's"), "log: %s", log);
        free(log);
        close(fd);
}
END_TEST

START_TEST(test_size_change_while_held_replaces) {
        struct sembuf op = { .sem_num = 0, .sem_op = 1 };
        struct shmid_ds ds;
        json_t *resp, *ch, *after;
        char *addr;
        int fd, admin, old_shm, old_sem, new_shm, new_sem;
        uint32_t key;

        test_daemon_write_config(&td,
                "[{\"name\": \"grow\", \"size\": 4096, \"semaphores\": [1, 2]},"
                " {\"name\": \"stay\", \"size\": 4096}]");
        test_start_ok();
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"open\",\"channel\":\"grow\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        old_shm = (int) test_jint(resp, "shm_id");
        old_sem = (int) test_jint(resp, "sem_id");
        key = (uint32_t) test_jint(resp, "shm_key");
        json_decref(resp);
        addr = shmat(old_shm, NULL, 0);
        ck_assert_ptr_ne(addr, (void *) -1);
        strcpy(addr, "precious data");

        test_daemon_write_config(&td,
                "[{\"name\": \"grow\", \"size\": 8192, \"semaphores\": [1, 2]},"
                " {\"name\": \"stay\", \"size\": 4096}]");
        admin = test_connect(td.socket);
        reload_expect(admin, "", "", "grow", "stay");

        /* New objects under the same key, with the new size and the configured initial values. */
        after = list_ok();
        ch = test_must_find(after, "grow");
        new_shm = (int) test_jint(ch, "shm_id");
        new_sem = (int) test_jint(ch, "sem_id");
        ck_assert_int_ne(new_shm, old_shm);
        ck_assert_int_ne(new_sem, old_sem);
        ck_assert_uint_eq((uint32_t) test_jint(ch, "shm_key"), key);
        ck_assert_int_eq(test_jint(ch, "size"), 8192);
        assert_kernel_channel(ch, 8192, 0660, 2);
        {
                unsigned short v[2];

                sem_values(new_sem, v);
                ck_assert_uint_eq(v[0], 1);
                ck_assert_uint_eq(v[1], 2);
        }
        json_decref(after);

        /* The old set is gone: operations on it fail. */
        errno = 0;
        ck_assert_int_eq(semop(old_sem, &op, 1), -1);
        ck_assert_msg(errno == EINVAL || errno == EIDRM, "semop on the old set: %s", strerror(errno));

        /* The old segment lives on, keyless and marked, only through our attachment. */
        ck_assert_str_eq(addr, "precious data");
        shm_stat(old_shm, &ds);
        ck_assert_msg(ds.shm_perm.mode & SHM_DEST, "old segment not marked for removal");
        ck_assert_uint_eq(ds.shm_nattch, 1);
        ck_assert_uint_eq(ds.shm_segsz, 4096);

        /* The holds on the old objects were dropped. */
        resp = req(admin, "{\"op\":\"status\",\"channel\":\"grow\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, "grow"), "clients")), 0);
        ck_assert_int_eq(test_jint(test_must_find(resp, "grow"), "nattch"), 1);  /* the daemon's own, on the new one */
        json_decref(resp);

        /* Detaching ends the old segment. */
        ck_assert_int_eq(shmdt(addr), 0);
        ck_assert_msg(!shm_exists(old_shm), "old segment %d outlived its last detach", old_shm);

        /* Reopening gets the new objects. */
        resp = req(fd, "{\"op\":\"open\",\"channel\":\"grow\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        ck_assert_int_eq(test_jint(resp, "shm_id"), new_shm);
        ck_assert_int_eq(test_jint(resp, "sem_id"), new_sem);
        ck_assert_int_eq(test_jint(resp, "size"), 8192);
        json_decref(resp);
        resp = req(admin, "{\"op\":\"status\",\"channel\":\"grow\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, "grow"), "clients")), 1);
        json_decref(resp);

        /* Nothing doubled, nothing leaked. */
        assert_ipcs(2, 2);
        close(admin);
        close(fd);
}
END_TEST

/* ---- refusals: nothing changes ---- */

START_TEST(test_broken_config_changes_nothing) {
        static const char *const good =
                "[{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1]}, {\"name\": \"b\", \"size\": 8192}]";
        json_t *before, *after;
        char *text;
        int fd;

        before = start_and_list(good);
        fd = test_connect(td.socket);

        /* Syntax error (and it would have dropped "b" and added "c"). */
        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"channels\": ["
                                         "{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1]},"
                                         "{\"name\": \"c\", \"size\": 4096},\n", td.socket), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
        reload_refused(fd, before, "EINVAL", td.config, NULL);
        assert_ipcs(2, 2);

        /* Semantic error: an unknown key in an otherwise valid channel. */
        test_daemon_write_config(&td,
                "[{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1]},"
                " {\"name\": \"c\", \"size\": 4096, \"sise\": 1}]");
        reload_refused(fd, before, "EINVAL", td.config, "sise");
        assert_ipcs(2, 2);

        /* Semantic error found only on resolution: an unknown group. */
        test_daemon_write_config(&td,
                "[{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1], \"mode\": \"0600\"},"
                " {\"name\": \"c\", \"size\": 4096, \"group\": \"no-such-group-here\"}]");
        reload_refused(fd, before, "EINVAL", td.config, NULL);
        after = list_ok();
        ck_assert_str_eq(test_jstr(test_must_find(after, "a"), "mode"), "0660");
        json_decref(after);
        assert_ipcs(2, 2);

        /* An errno the protocol has no name for (ELOOP): an answer, and the connection stays. */
        ck_assert_int_eq(unlink(td.config), 0);
        ck_assert_int_eq(symlink(td.config, td.config), 0);
        reload_refused(fd, before, "EIO", td.config, NULL);
        ck_assert_int_eq(unlink(td.config), 0);

        /* The daemon is fine: the good config again keeps everything. */
        test_daemon_write_config(&td, good);
        reload_expect(fd, "", "", "", "a,b");
        after = list_ok();
        assert_same_channels(before, after);
        json_decref(after);

        json_decref(before);
        close(fd);
}
END_TEST

/*
 * shmbroker.json(5), ERRORS: a config that cannot be read is refused as a
 * whole: "a reload changes nothing and answers the error (as EINVAL, or
 * the file's ENOENT, EACCES or EFBIG when it cannot be read)", and RELOAD:
 * "the error is logged and answered". What a careless admin does between
 * two edits: the file moved away, made 0600 for root while the daemon runs
 * as its own user, or grown past 16 MiB. None of it may read as "no
 * channels": every channel must stay, and nothing of the new file (here
 * a channel "c") may be applied. The daemon runs as uid 65534, as the
 * shipped unit runs it as a user of its own, so that the bits refuse it.
 */
START_TEST(test_unreadable_config_changes_nothing) {
        static const char *const good = "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 8192}]";
        static const char *const more = "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 8192},"
                                        " {\"name\": \"c\", \"size\": 4096}]";
        json_t *before, *after;
        char *log = NULL, *hup;
        int64_t deadline;
        int fd;

        /* The daemon's state directory is the socket's: its own, 0700. */
        ck_assert_int_eq(chown(td.dir, 65534, 65534), 0);
        ck_assert_int_eq(chmod(td.dir, 0700), 0);
        td.uid = 65534;
        td.gid = 65534;
        test_daemon_write_config(&td, good);
        ck_assert_int_eq(chmod(td.config, 0644), 0);
        test_start_ok();
        before = list_ok();
        fd = test_connect(td.socket);

        /* Moved away. */
        ck_assert_int_eq(unlink(td.config), 0);
        reload_refused(fd, before, "ENOENT", td.config, strerror(ENOENT));
        assert_ipcs(2, 2);

        /* The same by SIGHUP: logged, nothing changed, the daemon serves on. */
        ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
        for (deadline = test_now_ms() + 5000;; usleep(10000)) {
                free(log);
                log = test_daemon_log(&td);
                hup = strstr(log, "Received SIGHUP");
                if (hup && strstr(hup, "Reload failed, nothing changed"))
                        break;
                ck_assert_msg(test_now_ms() < deadline, "no failed reload logged 5 s after SIGHUP: %s", log);
        }
        ck_assert_msg(strstr(strstr(hup, "Reload failed"), td.config), "the SIGHUP's failure names no file: %s", log);
        free(log);
        after = list_ok();
        assert_same_channels(before, after);
        json_decref(after);

        /* Readable by root alone: the daemon's user is refused by the bits. */
        test_daemon_write_config(&td, more);
        ck_assert_int_eq(chmod(td.config, 0600), 0);
        reload_refused(fd, before, "EACCES", td.config, strerror(EACCES));
        assert_ipcs(2, 2);

        /* Readable, but grown one byte past 16 MiB (NUL bytes after the JSON, which a parser would refuse anyway). */
        ck_assert_int_eq(chmod(td.config, 0644), 0);
        ck_assert_int_eq(truncate(td.config, 16 * 1024 * 1024 + 1), 0);
        reload_refused(fd, before, "EFBIG", td.config, NULL);
        assert_ipcs(2, 2);

        /* A directory where the file was. */
        ck_assert_int_eq(unlink(td.config), 0);
        ck_assert_int_eq(mkdir(td.config, 0755), 0);
        reload_refused(fd, before, "EFBIG", td.config, NULL);
        ck_assert_int_eq(rmdir(td.config), 0);

        /* Readable again: applied as usual. */
        test_daemon_write_config(&td, more);
        ck_assert_int_eq(chmod(td.config, 0644), 0);
        reload_expect(fd, "c", "", "", "a,b");
        assert_ipcs(3, 3);
        json_decref(before);
        close(fd);
}
END_TEST

typedef struct ReloadChild {
        const char *socket;
        uid_t uid;
        gid_t gid, extra_group;
        const char *expect_error;       /* NULL: must succeed */
} ReloadChild;

/* In a child with dropped privileges: ask for a reload; exit 0 when the answer is as expected. */
static void reload_child(void *userdata) {
        const ReloadChild *c = userdata;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        static const char req[] = "{\"op\":\"reload\"}\n";
        json_t *resp;
        char *line;
        int fd;

        test_drop_privileges(c->uid, c->gid, c->extra_group);
        if (getuid() != c->uid || geteuid() != c->uid)
                _exit(9);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        strcpy(sa.sun_path, c->socket);
        if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0)
                _exit(10);
        if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t) (sizeof req - 1))
                _exit(11);
        line = test_read_line(fd);
        if (!line)
                _exit(12);
        resp = json_loads(line, 0, NULL);
        if (!resp)
                _exit(13);
        if (!c->expect_error)
                _exit(json_is_true(json_object_get(resp, "ok")) ? 0 : 20);
        if (!json_is_false(json_object_get(resp, "ok")) || !json_is_string(json_object_get(resp, "error")))
                _exit(21);
        _exit(strcmp(json_string_value(json_object_get(resp, "error")), c->expect_error) == 0 ? 0 : 22);
}

/*
 * shmbroker.json(5), RELOAD: "limits and admin_group take effect at once
 * (existing connections are not closed). A changed socket is logged and
 * ignored".
 */
START_TEST(test_limits_admin_group_and_socket_at_reload) {
        ReloadChild admin = { .uid = 65534, .gid = 65534, .extra_group = 4242 };
        ReloadChild refused = { .uid = 65534, .gid = 65534, .extra_group = 4242, .expect_error = "EACCES" };
        char *text, *log, moved[400];
        json_t *resp;
        int fds[3], extra, status;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        admin.socket = refused.socket = td.socket;
        /* Not yet an admin group: the member is refused. */
        status = test_in_child(reload_child, &refused);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "before: child status %d", status);
        /* Each answered once: accepted before the reload lowers the cap (a connection still in the backlog is new). */
        for (size_t i = 0; i < 3; i++) {
                fds[i] = test_connect(td.socket);
                resp = req(fds[i], "{\"op\":\"hello\",\"version\":1}");
                test_assert_ok(resp);
                json_decref(resp);
        }

        /* One uid may now hold 2 connections, group 4242 may reload, and the socket "moves". */
        snprintf(moved, sizeof moved, "%s/moved.sock", td.dir);
        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"admin_group\": 4242, "
                                         "\"limits\": {\"connections_per_uid\": 2}, "
                                         "\"channels\": [{\"name\": \"a\", \"size\": 4096}]}\n", moved), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
        reload_expect(fds[0], "", "", "", "a");

        /* The three connections made before stay served... */
        for (size_t i = 0; i < 3; i++) {
                resp = req(fds[i], "{\"op\":\"list\"}");
                test_assert_ok(resp);
                json_decref(resp);
        }
        /* ...a new one is over the new cap at once... */
        extra = test_connect(td.socket);
        {
                char *line = test_read_line(extra);

                ck_assert_msg(line && strstr(line, "\"EUSERS\""), "a third connection of uid 0: %s", line ? line : "(closed)");
                free(line);
        }
        close(extra);
        /* ...the admin group counts at once, and the socket stayed where it was. */
        drain_notify();
        status = test_in_child(reload_child, &admin);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "admin: child status %d", status);
        ck_assert_int_ne(access(moved, F_OK), 0);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, moved) && strstr(log, "restart"), "the moved socket is not logged: %s", log);
        free(log);

        /* Taken away again: the group is refused at once. */
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        reload_expect(fds[1], "", "", "", "a");
        drain_notify();
        status = test_in_child(reload_child, &refused);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "after: child status %d", status);
        for (size_t i = 0; i < 3; i++)
                close(fds[i]);
}
END_TEST

START_TEST(test_reload_needs_root_or_admin_group) {
        ReloadChild plain = { .uid = 65534, .gid = 65534, .expect_error = "EACCES" };
        ReloadChild other_group = { .uid = 65534, .gid = 65534, .extra_group = 4243, .expect_error = "EACCES" };
        ReloadChild admin = { .uid = 65534, .gid = 65534, .extra_group = 4242 };
        json_t *before, *after;
        int status;

        write_config_with_admin_group(4242, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        before = list_ok();
        plain.socket = other_group.socket = admin.socket = td.socket;

        /* The config on disk now adds "b": a refused reload must not apply it. */
        write_config_with_admin_group(4242, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        drain_notify();
        status = test_in_child(reload_child, &plain);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "uid 65534 without the admin group: child status %d (20s: wrong verdict)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        drain_notify();
        status = test_in_child(reload_child, &other_group);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "uid 65534 in group 4243: child status %d (20s: wrong verdict)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        after = list_ok();
        assert_same_channels(before, after);
        json_decref(after);
        assert_ipcs(1, 1);

        /* A member of admin_group (supplementary) may. */
        drain_notify();
        status = test_in_child(reload_child, &admin);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "uid 65534 in admin group 4242: child status %d (20s: wrong verdict)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        after = list_ok();
        ck_assert_uint_eq(json_array_size(json_object_get(after, "channels")), 2);
        ck_assert_int_eq(test_jint(test_must_find(after, "a"), "shm_id"), test_jint(test_must_find(before, "a"), "shm_id"));
        assert_kernel_channel(test_must_find(after, "b"), 4096, 0660, 1);
        json_decref(after);
        assert_ipcs(2, 2);

        char *log = test_daemon_log(&td);
        ck_assert_ptr_nonnull(strstr(log, "Refused reload"));
        free(log);
        json_decref(before);
}
END_TEST

/*
 * shmbroker.json(5), admin_group: "Members of this group (primary or
 * supplementary, as the peer's credentials show) may send reload". A
 * service run with Group= the admin group has it as its primary group
 * only (SO_PEERGROUPS does not list it): it must be let in, and one whose
 * primary group is another must not.
 */
START_TEST(test_reload_by_primary_group_of_admin_group) {
        ReloadChild primary = { .uid = 65534, .gid = 4242 };
        ReloadChild other_primary = { .uid = 65534, .gid = 4243, .expect_error = "EACCES" };
        json_t *after;
        int status;

        write_config_with_admin_group(4242, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        primary.socket = other_primary.socket = td.socket;

        write_config_with_admin_group(4242, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        drain_notify();
        status = test_in_child(reload_child, &other_primary);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "uid 65534 of primary group 4243: child status %d (20s: wrong verdict)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        after = list_ok();
        ck_assert_ptr_null(test_find_channel(after, "b"));
        json_decref(after);

        drain_notify();
        status = test_in_child(reload_child, &primary);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "uid 65534 of primary group 4242 (the admin group): child status %d (20s: wrong verdict)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        after = list_ok();
        test_must_find(after, "b");
        json_decref(after);
        assert_ipcs(2, 2);
}
END_TEST

START_TEST(test_kernel_limit_refused_whole) {
        json_t *before, *resp, *after;
        int fd;

        before = start_and_list("[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        assert_ipcs(2, 2);
        /* Per-namespace: no room for a third segment. */
        test_write_proc("/proc/sys/kernel/shmmni", "2");

        test_daemon_write_config(&td,
                "[{\"name\": \"a\", \"size\": 4096, \"mode\": \"0600\"}, {\"name\": \"b\", \"size\": 4096},"
                " {\"name\": \"c\", \"size\": 4096}]");
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"reload\"}");
        test_assert_error(resp, "ENOSPC");
        assert_message_contains(resp, "kernel.shmmni");
        json_decref(resp);

        after = list_ok();
        assert_same_channels(before, after);
        ck_assert_ptr_null(test_find_channel(after, "c"));
        /* Not even the mode change of "a" was applied. */
        ck_assert_str_eq(test_jstr(test_must_find(after, "a"), "mode"), "0660");
        assert_kernel_channel(test_must_find(after, "a"), 4096, 0660, 1);
        json_decref(after);
        assert_ipcs(2, 2);
        json_decref(before);
        close(fd);
}
END_TEST

/*
 * At kernel.shmmni, a reload that swaps one channel for another needs a slot
 * for the new one while the old one still exists (channels are added before
 * anything is removed). Whatever the daemon decides, it is all or nothing:
 * either the swap is done, or ENOSPC naming the limit and nothing changed.
 */
START_TEST(test_swap_at_kernel_limit_all_or_nothing) {
        json_t *before, *resp, *after;
        int fd;

        before = start_and_list("[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        test_write_proc("/proc/sys/kernel/shmmni", "2");

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"c\", \"size\": 4096}]");
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"reload\"}");
        after = list_ok();
        if (json_is_true(json_object_get(resp, "ok"))) {
                assert_names(resp, "added", "c");
                assert_names(resp, "removed", "b");
                assert_names(resp, "changed", "");
                assert_names(resp, "kept", "a");
                ck_assert_ptr_null(test_find_channel(after, "b"));
                assert_kernel_channel(test_must_find(after, "c"), 4096, 0660, 1);
                ck_assert_msg(!shm_exists((int) test_jint(test_must_find(before, "b"), "shm_id")), "b's segment left");
        } else {
                test_assert_error(resp, "ENOSPC");
                assert_message_contains(resp, "kernel.shmmni");
                assert_same_channels(before, after);
        }
        assert_ipcs(2, 2);
        json_decref(resp);
        json_decref(after);
        json_decref(before);
        close(fd);
}
END_TEST

/*
 * A replaced segment that a client still has attached lives on (keyless,
 * marked for removal) and still takes a slot of kernel.shmmni until the
 * client detaches. At the limit, replacing such a channel cannot make the
 * new segment. The reload must not then report success with the configured
 * channel gone: the limits check counts the attached segment as freeing
 * nothing, so the reload is refused (ENOSPC, nothing changed, the client's
 * hold intact).
 */
START_TEST(test_replace_attached_at_kernel_limit_keeps_channel) {
        json_t *before, *resp, *after;
        char *addr;
        int fd, admin, old_shm;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        test_start_ok();
        fd = test_connect(td.socket);
        addr = test_open_attach(fd, "a", &old_shm);
        strcpy(addr, "in use");
        before = list_ok();
        test_write_proc("/proc/sys/kernel/shmmni", "2");

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 8192}, {\"name\": \"b\", \"size\": 4096}]");
        admin = test_connect(td.socket);
        resp = req(admin, "{\"op\":\"reload\"}");
        after = list_ok();
        test_assert_error(resp, "ENOSPC");
        assert_same_channels(before, after);
        json_decref(resp);
        resp = req(admin, "{\"op\":\"status\",\"channel\":\"a\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, "a"), "clients")), 1);
        ck_assert_str_eq(addr, "in use");
        ck_assert_int_eq(shmdt(addr), 0);
        json_decref(resp);
        json_decref(after);
        json_decref(before);
        close(admin);
        close(fd);
}
END_TEST

START_TEST(test_foreign_fixed_key_refused_whole) {
        static const char *const wanted =
                "[{\"name\": \"a\", \"size\": 4096},"
                " {\"name\": \"extra\", \"size\": 4096},"
                " {\"name\": \"fixed\", \"size\": 4096, \"key\": 16962}]";     /* 0x4242 */
        struct semid_ds sds;
        json_t *before, *resp, *after;
        uint8_t secret[16];
        int fd, foreign_shm, foreign_sem;

        before = start_and_list("[{\"name\": \"a\", \"size\": 4096}]");
        fd = test_connect(td.socket);

        /* 1. A foreign segment on the key. */
        foreign_shm = foreign_segment(0x4242);
        test_daemon_write_config(&td, wanted);
        reload_refused(fd, before, "EEXIST", "\"fixed\"", NULL);
        /* "extra" (added first) was rolled back; the foreign segment is untouched. */
        assert_ipcs(2, 1);
        test_read_secret(&td, secret);
        ck_assert_int_eq(shmget((key_t) channel_derive_key(secret, "extra", 0), 0, 0), -1);
        ck_assert_int_eq(errno, ENOENT);
        ck_assert_int_eq(semget((key_t) channel_derive_key(secret, "extra", 0), 0, 0), -1);
        ck_assert_int_eq(errno, ENOENT);
        foreign_segment_untouched_remove(foreign_shm, 0x4242);

        /* 2. A foreign set on the key: the segment the daemon got first must go again. */
        foreign_sem = semget(0x4242, 3, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign_sem, 0);
        resp = req(fd, "{\"op\":\"reload\"}");
        test_assert_error(resp, "EEXIST");
        json_decref(resp);
        after = list_ok();
        assert_same_channels(before, after);
        json_decref(after);
        assert_ipcs(1, 2);
        ck_assert_int_eq(shmget(0x4242, 0, 0), -1);
        ck_assert_int_eq(errno, ENOENT);
        sem_stat(foreign_sem, &sds);
        ck_assert_uint_eq(sds.sem_nsems, 3);
        ck_assert_uint_eq(sds.sem_perm.mode & 0777, 0600);
        ck_assert_int_eq(semctl(foreign_sem, 0, IPC_RMID), 0);

        /* With the key free the same config applies, whole. */
        reload_expect(fd, "extra,fixed", "", "", "a");
        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "fixed"), "shm_key"), 0x4242);
        assert_kernel_channel(test_must_find(after, "fixed"), 4096, 0660, 1);
        json_decref(after);
        assert_ipcs(3, 3);
        json_decref(before);
        close(fd);
}
END_TEST

/*
 * The same foreign key, met by a channel the reload replaces (its "key" is
 * new) rather than adds: SPEC "A fixed key already held by an object this
 * daemon did not create is an error that fails the start (or the reload)".
 * The reload must be refused whole, the running channel kept (same
 * objects), not removed and answered ok with it in "removed".
 */
START_TEST(test_foreign_fixed_key_of_changed_channel_refused_whole) {
        json_t *before;
        int fd, foreign_shm;

        before = start_and_list("[{\"name\": \"a\", \"size\": 4096}]");
        fd = test_connect(td.socket);
        foreign_shm = foreign_segment(0x4243);
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096, \"key\": 16963}]");     /* 0x4243 */
        reload_refused(fd, before, "EEXIST", "\"a\"", NULL);
        assert_ipcs(2, 1);
        foreign_segment_untouched_remove(foreign_shm, 0x4243);
        json_decref(before);
        close(fd);
}
END_TEST

/*
 * A broadcast channel's subscriber table holds a segment at its key, not a
 * semaphore set: a foreign set may sit at that key. A channel the reload
 * replaces onto that key (the table moves away, as derived_key_now_fixed()
 * says) needs a set there too; SPEC "A fixed key already held by an object
 * this daemon did not create is an error that fails the start (or the
 * reload)": refused whole, not answered ok with "a" in "removed".
 */
START_TEST(test_foreign_set_at_a_tables_key_refused_whole) {
        json_t *before, *after;
        char cfg[512];
        uint32_t table_key;
        int fd, foreign_sem;

        before = start_and_list("[{\"name\": \"a\", \"size\": 4096, \"key\": 16963},"
                                " {\"name\": \"b\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4}]");
        table_key = (uint32_t) test_jint(test_must_find(before, "b"), "table_key");
        fd = test_connect(td.socket);
        foreign_sem = semget((key_t) table_key, 1, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(foreign_sem, 0);
        snprintf(cfg, sizeof cfg, "[{\"name\": \"a\", \"size\": 4096, \"key\": %" PRIu32 "},"
                 " {\"name\": \"b\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4}]", table_key);
        test_daemon_write_config(&td, cfg);
        reload_refused(fd, before, "EEXIST", "\"a\"", NULL);
        ck_assert_int_eq(semctl(foreign_sem, 0, IPC_RMID), 0);
        /* The foreign set was what stood in the way: with it gone the same config applies, b's table moved. */
        reload_expect(fd, "", "", "a,b", "");
        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "a"), "shm_key"), (json_int_t) table_key);
        ck_assert_int_ne(test_jint(test_must_find(after, "b"), "table_key"), (json_int_t) table_key);
        json_decref(after);
        json_decref(before);
        close(fd);
}
END_TEST

/*
 * A broadcast channel is two segments (its own and its subscriber table).
 * The reload plan must count both for a channel it adds before it judges
 * the replacements that come after the removals: here r (raw, 1 segment)
 * becomes a broadcast channel and x (broadcast) is new, 4 segments where
 * kernel.shmmni allows 3. The reload must be refused whole (ENOSPC), not
 * answered ok with r gone.
 */
START_TEST(test_added_broadcast_counts_its_table_at_kernel_limit) {
        json_t *before, *resp, *after;
        int fd;

        before = start_and_list("[{\"name\": \"r\", \"size\": 4096}]");
        test_write_proc("/proc/sys/kernel/shmmni", "3");

        test_daemon_write_config(&td,
                "[{\"name\": \"r\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4},"
                " {\"name\": \"x\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4}]");
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"reload\"}");
        after = list_ok();
        ck_assert_msg(test_find_channel(after, "r"), "the reload lost channel r (answer: %s)",
                      json_dumps(resp, JSON_COMPACT));
        test_assert_error(resp, "ENOSPC");
        assert_message_contains(resp, "kernel.shmmni");
        assert_same_channels(before, after);
        assert_ipcs(1, 1);
        json_decref(resp);
        json_decref(after);
        json_decref(before);
        close(fd);
}
END_TEST

/*
 * The other side of the same count: replacing a broadcast channel frees
 * both its segments. At kernel.shmmni = 2, changing its slots fits exactly
 * (a start with the new file works) and must not be refused.
 */
START_TEST(test_replaced_broadcast_frees_its_table_at_kernel_limit) {
        json_t *after;
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4}]");
        test_start_ok();
        assert_ipcs(2, 1);
        test_write_proc("/proc/sys/kernel/shmmni", "2");

        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 8}]");
        fd = test_connect(td.socket);
        reload_expect(fd, "", "", "r", "");
        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "r"), "slots"), 8);
        json_decref(after);
        assert_ipcs(2, 1);
        close(fd);
}
END_TEST

/*
 * A new channel whose fixed key is the key that a kept channel of this
 * daemon got derived. A start with the same file gives the kept channel
 * another derived key (derived keys skip the file's fixed keys), and so
 * does a reload (shmbroker.json(5), "key"): it moves the kept channel, and
 * its log says why, not that a holder was refused. It must never claim
 * that the key is held by an object this daemon did not create, and advise
 * ipcrm, which would remove the daemon's own live channel.
 */
START_TEST(test_fixed_key_of_kept_channel) {
        json_t *list, *resp, *after;
        char *channels, *log;
        json_int_t key;
        int fd;

        list = start_and_list("[{\"name\": \"a\", \"size\": 4096}]");
        key = test_jint(test_must_find(list, "a"), "shm_key");
        ck_assert_int_ge(asprintf(&channels, "[{\"name\": \"a\", \"size\": 4096},"
                                             " {\"name\": \"b\", \"size\": 4096, \"key\": %lld}]", (long long) key), 0);
        test_daemon_write_config(&td, channels);
        free(channels);
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"reload\"}");
        after = list_ok();
        ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "the reload was refused: %s",
                      test_jstr(resp, "message"));
        ck_assert_int_eq(test_jint(test_must_find(after, "b"), "shm_key"), key);
        ck_assert_int_ne(test_jint(test_must_find(after, "a"), "shm_key"), key);
        assert_ipcs(2, 2);
        log = test_daemon_log(&td);
        ck_assert_msg(!strstr(log, "refuse a current holder") && strstr(log, "channel a: its key is now fixed"),
                      "the move of channel a is logged for the wrong reason: %s", log);
        free(log);
        json_decref(resp);
        json_decref(after);
        json_decref(list);
        close(fd);
}
END_TEST

/* Write a config of channel "a" whose top level also has extra (", \"socket_mode\": ..."). */
static void write_top_level(const char *extra) {
        char *text;

        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\"%s, \"channels\": [{\"name\": \"a\", "
                                         "\"size\": 4096}]}\n", td.socket, extra), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
}

/* write_top_level(extra), and reload it, asked over the socket at via: td.socket, or where a test moved it. */
static void reload_top_level_via(const char *via, const char *extra) {
        int fd;

        write_top_level(extra);
        fd = test_connect(via);
        reload_expect(fd, "", "", "", "a");
        close(fd);
}

static void reload_top_level(const char *extra) {
        reload_top_level_via(td.socket, extra);
}

/*
 * shmbroker.json(5), RELOAD: socket_mode and socket_group take effect at
 * a reload, as at the start: tightening who may connect needs no restart.
 * A socket_group taken out goes back to the group it had at the start. Only the
 * socket the daemon bound is changed: a file put at its path since keeps
 * its mode, and the reload says why.
 */
START_TEST(test_socket_mode_and_group_apply_at_reload) {
        struct stat before, st;
        char *log, moved[PATH_MAX];
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &before), 0);
        ck_assert_uint_eq(before.st_mode & 0777, 0666);
        ck_assert_uint_ne(before.st_gid, 4243);

        reload_top_level(", \"socket_mode\": \"0600\", \"socket_group\": 4243");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_msg((st.st_mode & 0777) == 0600, "socket mode %04o after the reload", (unsigned) (st.st_mode & 0777));
        ck_assert_uint_eq(st.st_gid, 4243);
        ck_assert_uint_eq(st.st_ino, before.st_ino);

        /* Back to the defaults: 0666 and the group bind() gave it. */
        reload_top_level("");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0666);
        ck_assert_uint_eq(st.st_gid, before.st_gid);

        /* Another file at the path: left alone. */
        ck_assert_int_lt(snprintf(moved, sizeof moved, "%s.moved", td.socket), (int) sizeof moved);
        ck_assert_int_eq(rename(td.socket, moved), 0);
        fd = open(td.socket, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fchmod(fd, 0644), 0);
        close(fd);
        /* Reached by its new name: the reload is asked over the moved socket. */
        reload_top_level_via(moved, ", \"socket_mode\": \"0600\"");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0644);
        ck_assert_int_eq(stat(moved, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0666);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "no longer the socket this daemon bound"), "the refused change is not logged: %s", log);
        free(log);
        ck_assert_int_eq(unlink(td.socket), 0);
        ck_assert_int_eq(rename(moved, td.socket), 0);
}
END_TEST

/*
 * shmbroker.json(5), RELOAD: socket_mode and socket_group "take effect at
 * once", "only while its path still names the socket the daemon bound".
 * A reload refused because the path named another file must not make the
 * next one, once the socket is back at its path, think there is nothing to
 * do: the file still says 0600, so the socket must get it.
 */
START_TEST(test_socket_perms_refused_at_reload_are_applied_by_the_next) {
        char moved[PATH_MAX];
        struct stat st;
        int c;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_int_lt(snprintf(moved, sizeof moved, "%s.moved", td.socket), (int) sizeof moved);
        ck_assert_int_eq(rename(td.socket, moved), 0);
        reload_top_level_via(moved, ", \"socket_mode\": \"0600\"");
        ck_assert_int_eq(stat(moved, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0666);

        /* Back at its path: the same file again. */
        ck_assert_int_eq(rename(moved, td.socket), 0);
        c = test_connect(td.socket);
        reload_expect(c, "", "", "", "a");
        close(c);
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_msg((st.st_mode & 0777) == 0600, "the config says 0600, the socket has %04o",
                      (unsigned) (st.st_mode & 0777));
}
END_TEST

/*
 * shmbroker.json(5), RELOAD: a refused change of socket_mode and
 * socket_group is logged and "a failure keeps the old ones" (daemon.c):
 * not a new group with the old mode. Here the mode cannot be set (the
 * daemon sets it through /proc/self/fd, hidden by an empty mount), after
 * the group could: the socket must have both old ones or both new ones, and
 * the log must say which.
 */
START_TEST(test_socket_perms_at_reload_all_or_nothing) {
        static const char *const changes[] = {
                /* Wider: the group first, then a mode it cannot set. */
                ", \"socket_mode\": \"0660\", \"socket_group\": 4243",
                /* Narrower: no mode it can set at all. */
                ", \"socket_mode\": \"0400\", \"socket_group\": 4243",
        };
        struct stat before, st;
        char fddir[64], *log;

        test_private_mounts();
        write_top_level(", \"socket_mode\": \"0600\"");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &before), 0);
        ck_assert_uint_eq(before.st_mode & 0777, 0600);
        ck_assert_uint_ne(before.st_gid, 4243);
        snprintf(fddir, sizeof fddir, "/proc/%d/fd", (int) td.pid);
        ck_assert_msg(mount("none", fddir, "tmpfs", 0, NULL) == 0, "mount on %s: %s", fddir, strerror(errno));

        for (size_t i = 0; i < sizeof changes / sizeof *changes; i++) {
                reload_top_level(changes[i]);
                ck_assert_int_eq(stat(td.socket, &st), 0);
                log = test_daemon_log(&td);
                ck_assert_msg((st.st_mode & 0777) == 0600 && st.st_gid == before.st_gid,
                              "%s: half a change or more: mode %04o, group %u; the log says:\n%s", changes[i],
                              (unsigned) (st.st_mode & 0777), (unsigned) st.st_gid, log);
                ck_assert_msg(strstr(log, "the socket keeps the old ones"), "not logged:\n%s", log);
                free(log);
        }
        ck_assert_int_eq(umount(fddir), 0);
}
END_TEST

/*
 * shmbroker.json(5): without socket_group the socket has the group bind()
 * gives it, which in a set-group-ID directory is the directory's (as an
 * admin sets one up for a group of clients). A socket_group added by one
 * reload and taken out by the next must give that group back, not the
 * daemon's: the same config must mean the same socket at a start and
 * after a reload.
 */
START_TEST(test_socket_group_taken_out_goes_back_to_the_directorys) {
        struct stat before, st;

        ck_assert_int_eq(chown(td.dir, (uid_t) -1, 4245), 0);
        ck_assert_int_eq(chmod(td.dir, 02755), 0);
        write_top_level("");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &before), 0);
        ck_assert_uint_eq(before.st_gid, 4245);

        reload_top_level(", \"socket_group\": 4243");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_gid, 4243);

        reload_top_level("");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_msg(st.st_gid == 4245, "group %u after socket_group was taken out, %u at the start",
                      (unsigned) st.st_gid, (unsigned) before.st_gid);
        ck_assert_uint_eq(st.st_mode & 0777, 0666);
}
END_TEST

/*
 * shmbroker.json(5): a socket_group taken out "gives it back the group it
 * had without one", the group bind() gave it, also when the daemon started
 * with a socket_group: not the group the start gave it.
 */
START_TEST(test_socket_group_of_the_start_taken_out_goes_back_to_binds) {
        struct stat st;

        /* A set-group-ID directory: bind()'s group (4245) is not the daemon's own (0). */
        ck_assert_int_eq(chown(td.dir, (uid_t) -1, 4245), 0);
        ck_assert_int_eq(chmod(td.dir, 02755), 0);
        write_top_level(", \"socket_group\": 4243");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_gid, 4243);

        reload_top_level("");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_msg(st.st_gid == 4245, "group %u after the start's socket_group was taken out, not bind()'s 4245",
                      (unsigned) st.st_gid);
}
END_TEST

/*
 * Without socket_group in the old config or the new, a reload that
 * changes only socket_mode leaves the socket's group alone: an admin who
 * gave it another group by hand keeps it, as before socket_group could
 * be taken out at a reload.
 */
START_TEST(test_socket_mode_change_leaves_a_hand_set_group) {
        struct stat st;

        write_top_level("");
        test_start_ok();
        ck_assert_int_eq(chown(td.socket, (uid_t) -1, 4246), 0);
        reload_top_level(", \"socket_mode\": \"0660\"");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0660);
        ck_assert_msg(st.st_gid == 4246, "group %u after a reload that changed only the mode", (unsigned) st.st_gid);
}
END_TEST

/*
 * control_set_socket_perms(): a failure after the first step has narrowed
 * the mode puts the old mode back as well as the old group, "so that it
 * changes nothing" (daemon.c, "the socket keeps the old ones"). From
 * (0660, group 4243) to (0606, group 4244) the daemon narrows to 0600,
 * gives group 4244, then cannot set 0606: /proc/PID/fd, through which it
 * sets modes, is hidden from after the narrowing until the group is back,
 * so that only that last chmod fails and the putting back can succeed.
 */
START_TEST(test_socket_perms_failed_after_narrowing_restore_mode_and_group) {
        enum { NARROWING, GIVING_GROUP, FAILING, RESTORING } phase = NARROWING;
        struct stat before, st;
        char fddir[64], *log;

        test_private_mounts();
        write_top_level(", \"socket_mode\": \"0660\", \"socket_group\": 4243");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &before), 0);
        ck_assert_uint_eq(before.st_mode & 0777, 0660);
        ck_assert_uint_eq(before.st_gid, 4243);
        snprintf(fddir, sizeof fddir, "/proc/%d/fd", (int) td.pid);

        write_top_level(", \"socket_mode\": \"0606\", \"socket_group\": 4244");
        test_daemon_trace(&td);
        test_reload_async();
        /* Each step is seen on the socket itself, at the system-call stop after the one that made it. */
        while (!test_reload_done() && test_next_syscall_stop(td.pid)) {
                ck_assert_int_eq(stat(td.socket, &st), 0);
                if (phase == NARROWING && (st.st_mode & 0777) == 0600) {
                        ck_assert_uint_eq(st.st_gid, 4243);
                        ck_assert_msg(mount("none", fddir, "tmpfs", 0, NULL) == 0, "mount on %s: %s", fddir,
                                      strerror(errno));
                        phase = GIVING_GROUP;
                } else if (phase == GIVING_GROUP && st.st_gid == 4244) {
                        phase = FAILING;
                } else if (phase == FAILING && st.st_gid == 4243) {
                        /* The group is back: the old mode must be given back through /proc/PID/fd. */
                        ck_assert_int_eq(umount(fddir), 0);
                        phase = RESTORING;
                }
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        test_reload_wait();
        if (phase == GIVING_GROUP || phase == FAILING)
                ck_assert_int_eq(umount(fddir), 0);
        ck_assert_msg(phase == RESTORING, "the daemon did not narrow, give the group and put it back (phase %d)",
                      (int) phase);
        ck_assert_int_eq(stat(td.socket, &st), 0);
        log = test_daemon_log(&td);
        ck_assert_msg((st.st_mode & 0777) == 0660 && st.st_gid == 4243,
                      "not the old mode and group: mode %04o, group %u; the log says:\n%s",
                      (unsigned) (st.st_mode & 0777), (unsigned) st.st_gid, log);
        ck_assert_msg(strstr(log, "the socket keeps the old ones"), "not logged:\n%s", log);
        ck_assert_msg(!strstr(log, "failed too"), "the putting back is said to have failed:\n%s", log);
        free(log);
        ck_assert_uint_eq(st.st_ino, before.st_ino);
}
END_TEST

/*
 * The socket listens while a reload changes its mode and group, and
 * connect() is judged by them at that moment: from (0660, group 4243) to
 * (0600, group 4244), no member of 4244 may connect at any point, as
 * neither the old nor the new ones let one. The socket is looked at on
 * every system call the daemon makes during the reload.
 */
START_TEST(test_socket_perms_at_reload_never_wider_than_both) {
        struct stat st;
        unsigned stops = 0;

        write_top_level(", \"socket_mode\": \"0660\", \"socket_group\": 4243");
        test_start_ok();
        write_top_level(", \"socket_mode\": \"0600\", \"socket_group\": 4244");
        test_daemon_trace(&td);
        test_reload_async();
        while (!test_reload_done() && test_next_syscall_stop(td.pid)) {
                ck_assert_int_eq(stat(td.socket, &st), 0);
                stops++;
                ck_assert_msg(st.st_gid != 4244 || !(st.st_mode & 0020),
                              "group 4244 may connect meanwhile: mode %04o (stop %u)", (unsigned) (st.st_mode & 0777),
                              stops);
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        test_reload_wait();
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0600);
        ck_assert_uint_eq(st.st_gid, 4244);
}
END_TEST

/*
 * shmbroker.json(5), RELOAD: socket_group alone takes effect at once too
 * (the mode unchanged), and taken out alone gives the socket the daemon's
 * group again. A socket whose path names nothing now is "no longer the
 * socket the daemon bound", and the log says so.
 */
START_TEST(test_socket_group_alone_applies_at_reload) {
        struct stat before, st;
        char *log, linked[PATH_MAX];

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &before), 0);
        ck_assert_uint_ne(before.st_gid, 4243);
        ck_assert_uint_ne(before.st_gid, 4244);

        reload_top_level(", \"socket_group\": 4243");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_gid, 4243);
        reload_top_level(", \"socket_group\": 4244");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_gid, 4244);
        reload_top_level("");
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_uint_eq(st.st_gid, before.st_gid);
        ck_assert_uint_eq(st.st_mode & 0777, 0666);

        /* Nothing at the path: reached by another name of the same socket. */
        ck_assert_int_lt(snprintf(linked, sizeof linked, "%s.link", td.socket), (int) sizeof linked);
        ck_assert_int_eq(link(td.socket, linked), 0);
        ck_assert_int_eq(unlink(td.socket), 0);
        reload_top_level_via(linked, ", \"socket_mode\": \"0600\"");
        ck_assert_int_eq(stat(linked, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0666);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "no longer the socket this daemon bound"), "the refused change is not logged: %s", log);
        free(log);
        ck_assert_int_eq(rename(linked, td.socket), 0);
}
END_TEST

/*
 * shmbrokerd(8): the daemon sets the socket's mode and group "on the file
 * it made and never through a link"; README, Reload: a changed socket_mode
 * or socket_group is refused, and logged, when "the path no longer names
 * the daemon's socket". Its directory may be another user's to write, who
 * swaps the path for a symlink to a file of theirs (here nobody's, 0644):
 * a reload that changes both must leave that file as it was, and the
 * daemon goes on serving on the socket it bound, reached by its new name.
 */
START_TEST(test_socket_perms_at_reload_never_through_a_symlink) {
        struct timespec times[2] = { { .tv_sec = 1000000000 }, { .tv_sec = 1000000000 } };
        char *log, moved[PATH_MAX], target[PATH_MAX], link_to[PATH_MAX];
        struct stat sock, before, st;
        ssize_t n;
        int fd, early;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_int_eq(stat(td.socket, &sock), 0);
        ck_assert_uint_ne(sock.st_gid, 4243);
        /* A connection of before the swap: it must stay served too. */
        early = test_connect(td.socket);

        ck_assert_int_lt(snprintf(moved, sizeof moved, "%s.moved", td.socket), (int) sizeof moved);
        ck_assert_int_lt(snprintf(target, sizeof target, "%s/somebody-elses", td.dir), (int) sizeof target);
        fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, "theirs\n", 7), 7);
        ck_assert_int_eq(fchown(fd, 65534, 65534), 0);
        ck_assert_int_eq(fchmod(fd, 0644), 0);
        ck_assert_int_eq(futimens(fd, times), 0);
        ck_assert_int_eq(fstat(fd, &before), 0);
        close(fd);
        ck_assert_int_eq(rename(td.socket, moved), 0);
        ck_assert_int_eq(symlink(target, td.socket), 0);

        reload_top_level_via(moved, ", \"socket_mode\": \"0600\", \"socket_group\": 4243");

        ck_assert_int_eq(lstat(target, &st), 0);
        ck_assert_msg((st.st_mode & 07777) == 0644 && st.st_uid == 65534 && st.st_gid == 65534,
                      "the reload went through the symlink: its target has mode %04o, owner %u:%u "
                      "(it had 0644, 65534:65534)", (unsigned) (st.st_mode & 07777), (unsigned) st.st_uid,
                      (unsigned) st.st_gid);
        ck_assert_msg(st.st_ino == before.st_ino && st.st_size == before.st_size &&
                      st.st_mtim.tv_sec == 1000000000 && st.st_ctim.tv_sec == before.st_ctim.tv_sec &&
                      st.st_ctim.tv_nsec == before.st_ctim.tv_nsec, "the symlink's target was touched");
        /* The link itself stays, pointing where it did. */
        ck_assert_int_eq(lstat(td.socket, &st), 0);
        ck_assert_msg(S_ISLNK(st.st_mode), "the symlink at the socket's path was replaced");
        n = readlink(td.socket, link_to, sizeof link_to - 1);
        ck_assert_int_gt(n, 0);
        link_to[n] = '\0';
        ck_assert_str_eq(link_to, target);
        /* Refused whole: the daemon's own socket keeps its mode and group too. */
        ck_assert_int_eq(stat(moved, &st), 0);
        ck_assert_uint_eq(st.st_ino, sock.st_ino);
        ck_assert_uint_eq(st.st_mode & 0777, sock.st_mode & 0777);
        ck_assert_uint_eq(st.st_gid, sock.st_gid);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "no longer the socket this daemon bound"), "the refused change is not logged: %s", log);
        free(log);

        /* Still serving: the connection of before, and a new one on the socket it bound. */
        test_assert_lists(early);
        close(early);
        fd = test_connect(moved);
        test_assert_lists(fd);
        close(fd);

        ck_assert_int_eq(unlink(td.socket), 0);
        ck_assert_int_eq(rename(moved, td.socket), 0);
        ck_assert_int_eq(unlink(target), 0);
}
END_TEST

/*
 * "socket" changed in the file: a reload ignores it (moving the socket needs
 * a restart). If the daemon is then killed and started again on the same
 * file and state directory, as systemd's Restart= does, the previous run's
 * channels must be adopted or removed, never left in the kernel: the state
 * directory is the same one.
 */
START_TEST(test_socket_changed_then_crash_leaves_nothing) {
        static const char *const suffixes[] = { "", ".lock", ".state", ".secret", ".wake", ".ledgers" };
        char old_socket[sizeof td.socket];
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, "
                                      "{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        test_start_ok();
        assert_ipcs(2, 2);
        strcpy(old_socket, td.socket);
        ck_assert_int_lt(snprintf(td.socket, sizeof td.socket, "%s/moved.sock", td.dir), (int) sizeof td.socket);
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, "
                                      "{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        fd = test_connect(old_socket);
        reload_expect(fd, "", "", "", "a,r");
        close(fd);
        test_daemon_kill(&td, SIGKILL);

        test_start_ok();
        assert_ipcs(2, 2);
        /* "and then its files": the crashed run's socket and wake-up FIFOs, and its key secret, are garbage now. */
        for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
                char path[sizeof old_socket + 16];

                snprintf(path, sizeof path, "%s%s", old_socket, suffixes[i]);
                ck_assert_msg(access(path, F_OK) < 0 && errno == ENOENT, "%s is left: %s", path,
                              access(path, F_OK) == 0 ? "exists" : strerror(errno));
        }
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
}
END_TEST

/* The shm_id the daemon on socket gives channel name. */
static int shm_id_of(const char *socket, const char *name) {
        int fd = test_connect(socket), id;
        json_t *list = test_request(fd, "{\"op\":\"list\"}");

        close(fd);
        id = (int) test_jint(test_must_find(list, name), "shm_id");
        json_decref(list);
        return id;
}

/* A second daemon in td's directory: its own files beside td's, named after `name`. */
static void other_daemon_init(TestDaemon *d, const char *name) {
        *d = td;
        d->pid = -1;
        d->notify_fd = -1;
        d->notified[0] = '\0';
        ck_assert_int_lt(snprintf(d->config, sizeof d->config, "%s/%s.json", td.dir, name), (int) sizeof d->config);
        ck_assert_int_lt(snprintf(d->socket, sizeof d->socket, "%s/%s.sock", td.dir, name), (int) sizeof d->socket);
        ck_assert_int_lt(snprintf(d->log, sizeof d->log, "%s/%s.log", td.dir, name), (int) sizeof d->log);
        ck_assert_int_lt(snprintf(d->notify, sizeof d->notify, "%s/%s.notify", td.dir, name), (int) sizeof d->notify);
}

/*
 * The other side of test_socket_changed_then_crash_leaves_nothing: what a
 * start reclaims under another socket name is only a dead run of its own
 * configuration. Beside it in the same directory: the files of another
 * configuration's daemon that crashed (its next start takes its channels
 * over), and a live daemon of the same configuration on the old socket.
 * Neither loses an object.
 */
START_TEST(test_files_of_other_daemons_are_left_alone) {
        TestDaemon other, moved;
        json_t *list;
        int status = 0, o_id;

        other_daemon_init(&other, "other");
        test_daemon_write_config(&other, "[{\"name\": \"o\", \"size\": 4096}]");
        ck_assert_msg(test_daemon_start(&other, &status, NULL), "the other daemon did not start (%d)", status);
        o_id = shm_id_of(other.socket, "o");
        test_daemon_kill(&other, SIGKILL);

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        /* The file now names another socket; td still runs on its own. */
        other_daemon_init(&moved, "moved");
        strcpy(moved.config, td.config);
        test_daemon_write_config(&moved, "[{\"name\": \"a\", \"size\": 4096}]");
        ck_assert_msg(test_daemon_start(&moved, &status, NULL), "the moved daemon did not start (%d)", status);
        assert_ipcs(3, 3);
        list = list_ok();               /* td, on the old socket, still serves its channel */
        ck_assert_ptr_nonnull(test_find_channel(list, "a"));
        json_decref(list);
        test_daemon_stop_ok(&moved);
        test_daemon_stop_ok(&td);

        /* The crashed daemon's next start finds its channel, unchanged, and takes it over. */
        ck_assert_msg(test_daemon_start(&other, &status, NULL), "the other daemon did not start again (%d)", status);
        ck_assert_int_eq(shm_id_of(other.socket, "o"), o_id);
        assert_ipcs(1, 1);
        test_daemon_stop_ok(&other);
        assert_ipcs(0, 0);
        close(other.notify_fd);
        close(moved.notify_fd);
}
END_TEST


/*
 * README, "The state directory": each daemon's files there are named after
 * its socket; its holder ledgers sit in NAME.ledgers, a directory of their
 * own. Another daemon in the same directory whose socket is at that very
 * path (shmbroker.sock.ledgers beside shmbroker.sock) keeps its socket, its
 * lock, its state file, its key secret and its own ledger over td's start
 * and stop: td runs without ledgers and says so, and removes nothing of it.
 * (A ledger of the first version was STATE.holders.CHANNEL beside the state
 * files, and td's sweeps took the files of a daemon whose socket was named
 * shmbroker.sock.holders.x.sock for its own ledgers: that one is here too.)
 */
START_TEST(test_files_of_a_daemon_named_like_a_ledger_are_left_alone) {
        static const char *const suffixes[] = { "", ".lock", ".state", ".secret", ".ledgers/o.ledger" };
        char gone[1024] = "", *log;
        TestDaemon others[2];
        int status = 0, fd;
        json_t *resp;

        /* At td's ledger directory's path; and named as td's ledgers were once. */
        other_daemon_init(&others[0], "other");
        ck_assert_int_lt(snprintf(others[0].socket, sizeof others[0].socket, "%s.ledgers", td.socket),
                         (int) sizeof others[0].socket);
        other_daemon_init(&others[1], "shmbroker.sock.holders.x");
        for (size_t k = 0; k < 2; k++) {
                test_daemon_write_config(&others[k],
                                         "[{\"name\": \"o\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
                ck_assert_msg(test_daemon_start(&others[k], &status, NULL), "other daemon %zu did not start (%d)", k,
                              status);
        }
        ck_assert_str_eq(strrchr(td.socket, '/') + 1, "shmbroker.sock");

        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Cannot keep ledgers of ring holders"), "%s", log);
        free(log);
        /* Without ledgers the ring still hands out tokens. */
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"open\",\"channel\":\"r\",\"access\":\"rw\"}");
        ck_assert_msg(json_integer_value(json_object_get(resp, "holder")) != 0, "no holder token without ledgers");
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        for (size_t k = 0; k < 2; k++)
                for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
                        char path[sizeof others[k].socket + 24];

                        snprintf(path, sizeof path, "%s%s", others[k].socket, suffixes[i]);
                        if (access(path, F_OK) < 0)
                                snprintf(gone + strlen(gone), sizeof gone - strlen(gone), " %s", strrchr(path, '/') + 1);
                }
        ck_assert_msg(!gone[0], "td's start and stop removed other daemons' files:%s", gone);
        for (size_t k = 0; k < 2; k++) {
                test_daemon_stop_ok(&others[k]);
                close(others[k].notify_fd);
        }
        assert_ipcs(0, 0);
}
END_TEST
/*
 * What a start reclaims of a dead run under its old socket name is that
 * run's own: when another daemon (another configuration, another state
 * directory) serves on the old socket path by now, that socket, its
 * wake-up FIFOs and their directory are not the dead run's to remove.
 */
START_TEST(test_previous_run_spares_a_live_daemon_on_its_old_socket) {
        char state[400], state2[400], fifo[700], *log;
        TestDaemon live;
        struct stat st;
        int status = 0;

        ck_assert_int_lt(snprintf(state, sizeof state, "%s/state", td.dir), (int) sizeof state);
        ck_assert_int_lt(snprintf(state2, sizeof state2, "%s/state2", td.dir), (int) sizeof state2);
        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);
        test_daemon_kill(&td, SIGKILL);

        /* Another daemon now serves on the dead run's socket path, with its own state directory. */
        other_daemon_init(&live, "live");
        strcpy(live.socket, td.socket);
        test_daemon_write_config(&live, "[{\"name\": \"x\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        ck_assert_msg(test_daemon_start(&live, &status, "--state-dir", state2, NULL), "the live daemon did not start (%d)",
                      status);
        ck_assert_int_lt(snprintf(fifo, sizeof fifo, "%s.wake/x.data", live.socket), (int) sizeof fifo);
        ck_assert_int_eq(lstat(fifo, &st), 0);

        /* td's file moves its socket; its restart reclaims the dead run under the old name. */
        ck_assert_int_lt(snprintf(td.socket, sizeof td.socket, "%s/moved.sock", td.dir), (int) sizeof td.socket);
        test_daemon_write_config(&td, "[{\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no restart (%d)", status);
        ck_assert_msg(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode), "the live daemon's %s was removed", fifo);
        /* Nor its socket, which the dead run had bound at the same path: still there, and served. */
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Leaving the socket of an earlier run: a server is already listening on"),
                      "no word of the old socket: %s", log);
        free(log);
        ck_assert_int_eq(shm_id_of(live.socket, "x") >= 0, 1);

        test_daemon_stop_ok(&td);
        test_daemon_stop_ok(&live);
        assert_ipcs(0, 0);
        close(live.notify_fd);
}
END_TEST

/* The lock file of a daemon on socket (the default state directory: the socket's, td's). */
static char *lock_text(const char *socket) {
        char path[sizeof td.socket + 8], *text = calloc(1, 4096);
        FILE *f;

        ck_assert_ptr_nonnull(text);
        ck_assert_int_lt(snprintf(path, sizeof path, "%s.lock", socket), (int) sizeof path);
        f = fopen(path, "re");
        ck_assert_msg(f, "%s: %s", path, strerror(errno));
        (void) fread(text, 1, 4095, f);
        fclose(f);
        return text;
}

static bool lock_exists(const char *socket) {
        char path[sizeof td.socket + 8];

        ck_assert_int_lt(snprintf(path, sizeof path, "%s.lock", socket), (int) sizeof path);
        return access(path, F_OK) == 0;
}

/*
 * shmbrokerd(8), CRASH RECLAIM: "a daemon started with --socket claims no
 * configuration file that way, and another configuration's files are left
 * to its own next start". A --socket run of td's file crashes; a start of
 * the same file on the file's own socket must not take that run for a
 * dead run of its own configuration that moved its socket: the crashed
 * run's channel stays for its own next start, which takes it over.
 */
START_TEST(test_socket_option_run_claims_no_configuration) {
        TestDaemon alt;
        char *lock;
        int status = 0, a_id;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        other_daemon_init(&alt, "alt");
        strcpy(alt.config, td.config);
        ck_assert_msg(test_daemon_start(&alt, &status, "--socket", alt.socket, NULL),
                      "the --socket run did not start (%d)", status);
        a_id = shm_id_of(alt.socket, "a");
        lock = lock_text(alt.socket);
        ck_assert_msg(!strstr(lock, td.config), "the --socket run's lock names the configuration:\n%s", lock);
        free(lock);
        test_daemon_kill(&alt, SIGKILL);

        /* The same file, on the socket it names. */
        test_start_ok();
        ck_assert_msg(shm_exists(a_id) && lock_exists(alt.socket),
                      "a start of the file reclaimed what a --socket run of it left (segment %s, lock %s)",
                      shm_exists(a_id) ? "kept" : "removed", lock_exists(alt.socket) ? "kept" : "removed");
        assert_ipcs(2, 2);
        test_daemon_stop_ok(&td);

        /* The --socket run's own next start takes its channel over. */
        ck_assert_msg(test_daemon_start(&alt, &status, "--socket", alt.socket, NULL), "no restart (%d)", status);
        ck_assert_int_eq(shm_id_of(alt.socket, "a"), a_id);
        assert_ipcs(1, 1);
        test_daemon_stop_ok(&alt);
        assert_ipcs(0, 0);
        close(alt.notify_fd);
}
END_TEST

/*
 * The lock file names the socket by its absolute path (daemon.c: "the
 * owner's lines are absolute paths, so that no line of one can be taken
 * for the other"). A dead run's lock whose socket line holds a relative
 * path names no socket: the start that reclaims the run (its socket moved)
 * removes its objects and files, and leaves what that path would name from
 * the start's directory (here the very socket the run had bound) as it
 * leaves the socket of a lock that names none.
 */
START_TEST(test_previous_run_lock_with_a_relative_socket_names_none) {
        char old[sizeof td.socket], path[sizeof td.socket + 8], *lock, *line;
        struct stat st;
        FILE *f;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        strcpy(old, td.socket);
        ck_assert_msg(lstat(old, &st) == 0 && S_ISSOCK(st.st_mode), "the killed run left no socket at %s", old);
        lock = lock_text(old);
        line = strstr(lock, "\nsocket:/");
        ck_assert_msg(line, "the lock names no bound socket:\n%s", lock);
        /* From the start's directory, the line's relative path is the socket's. */
        ck_assert_int_eq(chdir(td.dir), 0);
        ck_assert_int_lt(snprintf(path, sizeof path, "%s.lock", old), (int) sizeof path);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "%.*s\nsocket:%s\n", (int) (line - lock), lock, strrchr(old, '/') + 1);
        fclose(f);
        free(lock);

        ck_assert_int_lt(snprintf(td.socket, sizeof td.socket, "%s/moved.sock", td.dir), (int) sizeof td.socket);
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_start_ok();
        assert_ipcs(1, 1);
        ck_assert_msg(!lock_exists(old), "the dead run's lock was kept");
        ck_assert_msg(lstat(old, &st) == 0 && S_ISSOCK(st.st_mode),
                      "a socket line with a relative path was taken for the socket, which was removed");
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(unlink(old), 0);
        assert_ipcs(0, 0);
}
END_TEST

/* Start d with -c /dev/stdin, its standard input the file `file`. */
static void start_on_stdin(TestDaemon *d, const char *file) {
        int saved = dup(STDIN_FILENO), fd = open(file, O_RDONLY | O_CLOEXEC), status = 0;
        bool ok;

        ck_assert_int_ge(saved, 0);
        ck_assert_msg(fd >= 0, "%s: %s", file, strerror(errno));
        ck_assert_int_eq(dup2(fd, STDIN_FILENO), STDIN_FILENO);
        close(fd);
        strcpy(d->config, "/dev/stdin");
        ok = test_daemon_start(d, &status, NULL);
        ck_assert_int_eq(dup2(saved, STDIN_FILENO), STDIN_FILENO);
        close(saved);
        ck_assert_msg(ok, "the daemon on /dev/stdin < %s did not start (status %d)", file, status);
}

/*
 * shmbrokerd(8), CRASH RECLAIM: a run is known "by its lock file, which
 * names the configuration file (the path the daemon was given, made
 * absolute, and the file it resolves to...)", and daemon.c: "A
 * descriptor's name (/dev/stdin, /proc/self/fd/N) is anyone's: only the
 * file it resolves to names ours." Two configurations fed on standard
 * input: a start of the one must not reclaim what a crashed run of the
 * other left (they share the name /dev/stdin, not a file); a start of the
 * same file, by its path, with its socket moved, does reclaim it.
 */
START_TEST(test_stdin_config_run_claims_only_the_resolved_file) {
        TestDaemon x, y;
        char x_file[sizeof td.config], y_file[sizeof td.config];
        int x_id;

        other_daemon_init(&x, "x");
        other_daemon_init(&y, "y");
        strcpy(x_file, x.config);
        strcpy(y_file, y.config);
        test_daemon_write_config(&x, "[{\"name\": \"x\", \"size\": 4096}]");
        test_daemon_write_config(&y, "[{\"name\": \"y\", \"size\": 4096}]");
        start_on_stdin(&x, x_file);
        x_id = shm_id_of(x.socket, "x");
        test_daemon_kill(&x, SIGKILL);

        /* Another file on /dev/stdin: x's files are another configuration's. */
        start_on_stdin(&y, y_file);
        ck_assert_msg(shm_exists(x_id) && lock_exists(x.socket),
                      "a run of another file on /dev/stdin reclaimed what a crashed one left (segment %s, lock %s)",
                      shm_exists(x_id) ? "kept" : "removed", lock_exists(x.socket) ? "kept" : "removed");
        assert_ipcs(2, 2);
        test_daemon_stop_ok(&y);
        assert_ipcs(1, 1);

        /* x's own file, by its path, now naming another socket: the crashed run is its own, and is reclaimed. */
        strcpy(td.config, x_file);
        test_daemon_write_config(&td, "[{\"name\": \"x\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_msg(!shm_exists(x_id) && !lock_exists(x.socket),
                      "a run of the file the crashed /dev/stdin run resolved to left its files (segment %s, lock %s)",
                      shm_exists(x_id) ? "kept" : "removed", lock_exists(x.socket) ? "kept" : "removed");
        assert_ipcs(1, 1);
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
        close(x.notify_fd);
        close(y.notify_fd);
}
END_TEST

/*
 * Start with first (a channel named name), kill the daemon, and restart
 * with channel "b" fixed at the key first had in key_field: the restart
 * must work and give "b" that key, name another. ipcs then shows shm
 * segments and sem sets.
 */
static void crash_restart_with_key_fixed_for_b(const char *first, const char *name, const char *key_field, int shm,
                                               int sem) {
        json_t *list;
        char *channels;
        json_int_t key;
        int status = 0;

        ck_assert_int_ge(asprintf(&channels, "[%s]", first), 0);
        list = start_and_list(channels);
        free(channels);
        key = test_jint(test_must_find(list, name), key_field);
        json_decref(list);
        test_daemon_kill(&td, SIGKILL);

        ck_assert_int_ge(asprintf(&channels, "[%s, {\"name\": \"b\", \"size\": 4096, \"key\": %lld}]", first,
                                  (long long) key), 0);
        test_daemon_write_config(&td, channels);
        free(channels);
        ck_assert_msg(test_daemon_start(&td, &status, NULL),
                      "the restart after a crash failed (status %d) where a fresh start with the file works", status);
        list = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(list, "b"), "shm_key"), key);
        ck_assert_int_ne(test_jint(test_must_find(list, name), key_field), key);
        json_decref(list);
        assert_ipcs(shm, sem);
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
}

/*
 * The start-side twin of test_fixed_key_of_kept_channel: "a" got a derived
 * key, the daemon is killed, and the file now fixes that key for a new
 * channel "b". A fresh start with this file derives "a" another key
 * (derived keys skip fixed ones); the restart after the crash, as systemd's
 * Restart= makes it, must start too, with "b" on its key, not fail for
 * ever blaming a foreign object (the daemon's own "a") and advising ipcrm.
 */
START_TEST(test_crash_restart_fixed_key_of_adopted_channel) {
        crash_restart_with_key_fixed_for_b("{\"name\": \"a\", \"size\": 4096}", "a", "shm_key", 2, 2);
}
END_TEST

/*
 * The same for a broadcast channel's subscriber table: a key now fixed for
 * another channel is not taken over. bc's two segments and set, b's
 * segment and set: nothing of the killed run is left.
 */
START_TEST(test_crash_restart_fixed_key_of_adopted_table) {
        crash_restart_with_key_fixed_for_b("{\"name\": \"bc\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 4}",
                                           "bc", "table_key", 3, 2);
}
END_TEST

/*
 * A broadcast channel's header is its publishers' to write, and names the
 * subscriber table that a crash restart takes over with it. A publisher
 * that names another channel's segment there (one of the daemon's own,
 * recorded and of the table's size) must not get it taken over as that
 * table: only a key this channel's table could have had counts. The
 * broadcast channel is made anew; the other channel is taken over as it
 * was, its segment its own.
 */
START_TEST(test_crash_restart_takes_no_table_a_publisher_named) {
        uint32_t r_key;
        BcastHeader *h;
        json_t *resp;
        char *channels, *log;
        int bc_id, r_id;

        ck_assert_int_ge(asprintf(&channels, "[{\"name\": \"bc\", \"layout\": \"broadcast\", \"slot_size\": 64, "
                                             "\"slots\": 4, \"subscribers\": 4}, {\"name\": \"r\", \"size\": %u}]",
                                  (unsigned) bcast_table_size(4)), 0);
        resp = start_and_list(channels);
        free(channels);
        bc_id = (int) test_jint(test_must_find(resp, "bc"), "shm_id");
        r_id = (int) test_jint(test_must_find(resp, "r"), "shm_id");
        r_key = (uint32_t) test_jint(test_must_find(resp, "r"), "shm_key");
        json_decref(resp);
        test_daemon_kill(&td, SIGKILL);

        h = shmat(bc_id, NULL, 0);
        ck_assert_ptr_ne(h, (void *) -1);
        h->table_key = r_key;
        h->table_id = r_id;
        ck_assert_int_eq(shmdt(h), 0);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Channel bc: its subscriber table segment is not provably"), "%s", log);
        ck_assert_msg(strstr(log, "Took over channel r "), "%s", log);
        free(log);
        resp = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(resp, "r"), "shm_id"), r_id);
        ck_assert_int_ne(test_jint(test_must_find(resp, "bc"), "table_id"), r_id);
        json_decref(resp);
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
}
END_TEST

/*
 * As test_socket_changed_then_crash_leaves_nothing, with the config path a
 * symlink that a deploy swaps to a new file (a Kubernetes ConfigMap's
 * ..data link, NixOS's /etc/static, a "current" link): the path the daemon
 * is started with is the same, the file it resolves to is not. The crashed
 * run under the old socket must still be reclaimed.
 */
START_TEST(test_socket_changed_by_symlink_swap_then_crash_leaves_nothing) {
        char target[sizeof td.config + 8], link_tmp[sizeof td.config + 8];
        const char *channels = "[{\"name\": \"a\", \"size\": 4096}]";

        ck_assert_int_lt(snprintf(target, sizeof target, "%s.v1", td.config), (int) sizeof target);
        ck_assert_int_lt(snprintf(link_tmp, sizeof link_tmp, "%s.ln", td.config), (int) sizeof link_tmp);
        ck_assert_int_eq(symlink(target, td.config), 0);
        test_daemon_write_config(&td, channels);        /* through the link: into .v1 */
        test_start_ok();
        assert_ipcs(1, 1);
        test_daemon_kill(&td, SIGKILL);

        /* The deploy: a new file that moves the socket, and the link swapped to it. */
        ck_assert_int_lt(snprintf(td.socket, sizeof td.socket, "%s/moved.sock", td.dir), (int) sizeof td.socket);
        target[strlen(target) - 1] = '2';
        ck_assert_int_eq(symlink(target, link_tmp), 0);
        ck_assert_int_eq(rename(link_tmp, td.config), 0);
        test_daemon_write_config(&td, channels);        /* into .v2 */

        test_start_ok();
        ck_assert_msg(test_ipcs_count("-m") == 1, "the crashed run's segment was left in the kernel: %d segments",
                      test_ipcs_count("-m"));
        assert_ipcs(1, 1);
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
}
END_TEST

/* ---- signals ---- */

/*
 * Fixed keys that move between the daemon's own channels in one reload: a
 * swap (a and b trade keys: their sizes change too, so both are replaced)
 * and a rename that keeps its key (c goes, d comes on c's key).
 */
START_TEST(test_fixed_keys_move_between_channels) {
        static const struct { const char *name; key_t key; } want[] = { { "a", 0x4402 }, { "b", 0x4401 }, { "d", 0x4403 } };
        json_t *after;
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096, \"key\": 17409},"     /* 0x4401 */
                                      " {\"name\": \"b\", \"size\": 4096, \"key\": 17410},"
                                      " {\"name\": \"c\", \"size\": 4096, \"key\": 17411}]");
        test_start_ok();
        fd = test_connect(td.socket);
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 8192, \"key\": 17410},"
                                      " {\"name\": \"b\", \"size\": 8192, \"key\": 17409},"
                                      " {\"name\": \"d\", \"size\": 4096, \"key\": 17411}]");
        reload_expect(fd, "d", "c", "a,b", "");
        after = list_ok();
        ck_assert_uint_eq(json_array_size(json_object_get(after, "channels")), 3);
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
                json_t *ch = test_must_find(after, want[i].name);

                ck_assert_int_eq(shmget(want[i].key, 0, 0), (int) test_jint(ch, "shm_id"));
                ck_assert_int_eq(semget(want[i].key, 0, 0), (int) test_jint(ch, "sem_id"));
        }
        json_decref(after);
        assert_ipcs(3, 3);
        close(fd);
}
END_TEST

/* Whether the traced daemon, at a system call's entry, opens path (the call's second argument). */
static bool opening(pid_t pid, const struct __ptrace_syscall_info *info, const char *path) {
        char got[sizeof td.config] = "";
        struct iovec local = { got, sizeof got - 1 }, remote = { (void *) (uintptr_t) info->entry.args[1], sizeof got - 1 };

        if (info->op != PTRACE_SYSCALL_INFO_ENTRY || info->entry.nr != SYS_openat)
                return false;
        /* A short read (the string near the end of a mapping) still holds the name. */
        return process_vm_readv(pid, &local, 1, &remote, 1, 0) > 0 && strcmp(got, path) == 0;
}

/* Start td's daemon on one channel, traced; as it opens its config, send it sig and let it run on untraced. */
static void signal_at_config_open(int sig) {
        struct __ptrace_syscall_info info;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        test_daemon_spawn_traced(&td);
        do {
                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended before it opened its config");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
        } while (!opening(td.pid, &info, td.config));
        ck_assert_int_eq(kill(td.pid, sig), 0);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
}

/*
 * SIGHUP reloads; one that comes while the daemon is still starting (here:
 * as it opens its config) must not kill it, as the default action of an
 * unblocked SIGHUP does. The start reads the config anyway.
 */
START_TEST(test_sighup_during_start_is_not_fatal) {
        int status = 0;
        json_t *list;

        signal_at_config_open(SIGHUP);
        ck_assert_msg(test_daemon_wait_ready(&td, &status), "a SIGHUP at start ended the daemon: %s",
                      WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited");
        list = list_ok();
        ck_assert_ptr_nonnull(test_find_channel(list, "a"));
        json_decref(list);
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
}
END_TEST

/*
 * Not only survived: "one that comes while it is still starting is acted
 * on once it serves" (shmbrokerd(8), SIGNALS). A SIGHUP that comes after
 * the start read its config (here: at its first shmget(), the daemon
 * traced, so no machine is too fast for it), sent by an admin who has just
 * written the file anew, reloads once the daemon serves: RELOADING=1 and
 * READY=1 follow the start's READY=1, and the channel the new file adds is
 * made without another signal.
 */
START_TEST(test_sighup_during_start_reloads_once_serving) {
        struct __ptrace_syscall_info info;
        int status = 0;
        char *msg;
        json_t *list;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        td.keep_notify = true;
        test_daemon_spawn_traced(&td);
        do {
                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended before it made its channel");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
        } while (info.op != PTRACE_SYSCALL_INFO_ENTRY || info.entry.nr != SYS_shmget);
        ck_assert_msg(!test_daemon_ready_sent(&td), "READY=1 came before the channel was made");
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"late\", \"size\": 4096}]");
        ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        ck_assert_msg(test_daemon_wait_ready(&td, &status), "a SIGHUP at start ended the daemon (%d)", status);

        msg = test_daemon_wait_notify(&td, "RELOADING=1", 3000);
        ck_assert_msg(msg, "a SIGHUP during the start was not acted on once it served: %s", td.notified);
        free(msg);
        msg = test_daemon_wait_notify(&td, "READY=1", 3000);
        ck_assert_msg(msg, "no READY=1 after the reload: %s", td.notified);
        free(msg);
        list = list_ok();
        ck_assert_msg(test_find_channel(list, "late"), "the file written before the SIGHUP was not applied");
        json_decref(list);
        assert_ipcs(2, 2);
        test_daemon_stop_ok(&td);
        assert_ipcs(0, 0);
}
END_TEST

/* td's daemon, signalled (`sig`) while it started, served (READY=1), then stopped with status 0, leaving no object. */
static void assert_stopped_after_ready(const char *sig) {
        char *ready;
        int status = 0;

        ck_assert_int_eq(waitpid(td.pid, &status, 0), td.pid);
        td.pid = -1;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a %s at start: status %d%s%s", sig, status,
                      WIFSIGNALED(status) ? ", killed by " : "", WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "");
        ready = test_daemon_wait_notify(&td, "READY=1", 1000);
        ck_assert_msg(ready, "stopped without READY=1 first: %s", td.notified);
        free(ready);
        assert_ipcs(0, 0);
}

/*
 * The same for SIGTERM: held from the first step, it stops the daemon once
 * it serves (READY=1 first, as systemd expects of a start), removing
 * everything, exit 0; not the default action's death mid-start.
 */
START_TEST(test_sigterm_during_start_stops_once_serving) {
        signal_at_config_open(SIGTERM);
        assert_stopped_after_ready("SIGTERM");
}
END_TEST

/* Objects in use in this IPC namespace: segments, without running ipcs at every system call. */
static int shm_used(void) {
        struct shm_info info;

        ck_assert_int_ge(shmctl(0, SHM_INFO, (struct shmid_ds *) &info), 0);
        return info.used_ids;
}

/* Entries of a directory, but for the names in `keep` (NULL-terminated), one a line (malloc'd). */
static char *dir_entries_but(const char *path, const char *const *keep) {
        char *text = NULL;
        size_t len = 0;
        DIR *d = opendir(path);
        FILE *f = open_memstream(&text, &len);

        ck_assert_msg(d, "%s: %s", path, strerror(errno));
        ck_assert_ptr_nonnull(f);
        for (struct dirent *e; (e = readdir(d));) {
                bool kept = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");

                for (const char *const *k = keep; *k && !kept; k++)
                        kept = !strcmp(e->d_name, *k);
                if (!kept)
                        fprintf(f, "%s\n", e->d_name);
        }
        closedir(d);
        fclose(f);
        return text;
}

/*
 * shmbrokerd(8), SIGNALS: SIGTERM and SIGINT "Stop: remove every object,
 * the socket file (when bound by the daemon) and the state files, and exit
 * 0. [...] These three are held from the daemon's first step: one that
 * comes while it is still starting is acted on once it serves." A SIGINT
 * in the middle of the start, when a posix channel's files and a System V
 * channel's segment exist and more channels are still to be made (the
 * daemon traced to that system call, so no machine is too fast for it):
 * the daemon still serves (READY=1), then stops with status 0, leaving no
 * IPC object, nothing in /dev/shm (a tmpfs of this test's own), and of its
 * files in the state directory only the key secret, which a stop keeps.
 */
START_TEST(test_sigint_during_start_removes_everything_made_so_far) {
        static const char *const keep[] = { "shmbroker.json", "daemon.log", "notify", "shmbroker.sock.secret", NULL };
        struct __ptrace_syscall_info info;
        char *left;
        bool some_files = false;

        ck_assert_msg(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
        ck_assert_int_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777") == 0, "mount tmpfs: %s", strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]},"
                                      " {\"name\": \"a\", \"size\": 4096},"
                                      " {\"name\": \"q\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 64,"
                                      " \"slots\": 4},"
                                      " {\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4}]");
        test_daemon_spawn_traced(&td);
        do {
                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended before it made its first channels");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY || shm_used() == 0)
                        continue;
                left = dir_entries_but("/dev/shm", keep + 4);
                some_files = *left;
                free(left);
        } while (!some_files);
        /* Mid-start: "r" is still to be made, and READY=1 to come. */
        ck_assert_int_eq(shm_used(), 1);
        ck_assert_msg(!test_daemon_ready_sent(&td), "READY=1 came before the channels were all made");
        ck_assert_int_eq(kill(td.pid, SIGINT), 0);
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);

        assert_stopped_after_ready("SIGINT");
        left = dir_entries_but("/dev/shm", keep + 4);
        ck_assert_msg(!*left, "a SIGINT at start left in /dev/shm:\n%s", left);
        free(left);
        /* The default state directory is the socket's: td's own. */
        left = dir_entries_but(td.dir, keep);
        ck_assert_msg(!*left, "a SIGINT at start left beside the socket:\n%s", left);
        free(left);
}
END_TEST

START_TEST(test_sighup_reloads_within_a_second) {
        json_t *before, *resp, *ch = NULL;
        int64_t start;
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}]");
        td.keep_notify = true;          /* we read (and check) the notifications */
        test_start_ok();
        before = list_ok();
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"late\", \"size\": 8192}]");

        fd = test_connect(td.socket);
        drain_notify();
        notified[0] = 0;
        start = test_now_ms();
        ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
        for (;;) {
                int64_t elapsed;

                resp = req(fd, "{\"op\":\"list\"}");
                elapsed = test_now_ms() - start;     /* when the answer came: the daemon may have been busy */
                test_assert_ok(resp);
                ch = test_find_channel(resp, "late");
                ck_assert_msg(elapsed <= 1000, "SIGHUP not acted on within 1 s (%s after %lld ms)",
                              ch ? "seen only" : "still not seen", (long long) elapsed);
                if (ch)
                        break;
                json_decref(resp);
                usleep(10000);
        }
        assert_kernel_channel(ch, 8192, 0660, 1);
        ck_assert_int_eq(test_jint(test_must_find(resp, "a"), "shm_id"), test_jint(test_must_find(before, "a"), "shm_id"));
        json_decref(resp);
        /* systemd heard of it: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again. */
        drain_notify();
        {
                const char *reloading = strstr(notified, "RELOADING=1");

                ck_assert_msg(reloading && strstr(notified, "MONOTONIC_USEC="), "no RELOADING=1: %s", notified);
                ck_assert_msg(strstr(reloading, "READY=1"), "no READY=1 after RELOADING=1: %s", notified);
        }
        assert_ipcs(2, 2);
        /* Still running and serving. */
        ck_assert_int_eq(waitpid(td.pid, NULL, WNOHANG), 0);
        json_decref(before);
        close(fd);
}
END_TEST

START_TEST(test_sigterm_after_reloads_removes_everything) {
        struct stat st;
        char path[400];
        json_t *resp;
        int fd, status;

        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096}]");
        td.keep_notify = true;          /* many reloads: drain_notify() must keep the daemon from blocking */
        test_start_ok();
        fd = test_connect(td.socket);
        /* add */
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096},"
                                      " {\"name\": \"c\", \"size\": 4096, \"key\": 777}]");
        json_decref(reload_ok(fd));
        /* replace (size) and change (mode), while a connection holds "a" */
        {
                json_t *held = req(fd, "{\"op\":\"open\",\"channel\":\"a\",\"access\":\"rw\"}");

                test_assert_ok(held);
                json_decref(held);
        }
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 16384}, {\"name\": \"b\", \"size\": 4096, \"mode\": \"0600\"},"
                                      " {\"name\": \"c\", \"size\": 4096, \"key\": 777}]");
        json_decref(reload_ok(fd));
        /* remove, by SIGHUP this time */
        test_daemon_write_config(&td, "[{\"name\": \"a\", \"size\": 16384}, {\"name\": \"c\", \"size\": 4096, \"key\": 777, \"semaphores\": 3}]");
        drain_notify();
        ck_assert_int_eq(kill(td.pid, SIGHUP), 0);
        for (int64_t start = test_now_ms();; usleep(10000)) {
                size_t n;

                resp = req(fd, "{\"op\":\"list\"}");
                n = json_array_size(json_object_get(resp, "channels"));
                json_decref(resp);
                ck_assert_msg(test_now_ms() - start <= 1000, "SIGHUP not acted on within 1 s");
                if (n == 2)
                        break;
        }
        /* a reload that fails in between */
        test_daemon_write_raw_config(&td, "{ not json");
        resp = req(fd, "{\"op\":\"reload\"}");
        test_assert_error(resp, "EINVAL");
        json_decref(resp);
        assert_ipcs(2, 2);

        drain_notify();
        status = test_daemon_kill(&td, SIGTERM);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d after SIGTERM", status);
        ck_assert_ptr_null(test_read_line(fd));
        close(fd);
        drain_notify();
        ck_assert_msg(strstr(notified, "STOPPING=1"), "no STOPPING=1: %s", notified);

        assert_ipcs(0, 0);
        ck_assert_int_ne(stat(td.socket, &st), 0);
        snprintf(path, sizeof path, "%s.state", td.socket);
        ck_assert_msg(stat(path, &st) != 0, "%s left behind", path);
        snprintf(path, sizeof path, "%s.lock", td.socket);
        ck_assert_msg(stat(path, &st) != 0, "%s left behind", path);
}
END_TEST

static void write_many(int n, int first) {
        char *channels = malloc((size_t) n * 64 + 16), *p = channels;

        p += sprintf(p, "[");
        for (int i = 0; i < n; i++)
                p += sprintf(p, "%s{\"name\": \"c%d\", \"size\": 4096}", i ? "," : "", first + i);
        sprintf(p, "]");
        test_daemon_write_config(&td, channels);
        free(channels);
}

START_TEST(test_crash_mid_reload_then_restart) {
        /* A reload from c0..c199 to c100..c299 (100 removed, 100 added), killed at
         * different moments inside it; the next start reclaims and ends with exactly
         * the new config's channels, nothing doubled, nothing lost. */
        static const int delays_us[] = { 0, 500, 2000, 5000 };

        for (size_t k = 0; k < sizeof delays_us / sizeof delays_us[0]; k++) {
                json_t *resp;
                int fd;

                write_many(200, 0);
                test_start_ok();
                write_many(200, 100);
                kill(td.pid, SIGHUP);
                usleep(delays_us[k]);
                test_daemon_kill(&td, SIGKILL);

                ck_assert_msg(test_daemon_start(&td, NULL, NULL), "no restart after a kill %d us into a reload",
                              delays_us[k]);
                ck_assert_int_eq(test_ipcs_count("-m"), 200);
                ck_assert_int_eq(test_ipcs_count("-s"), 200);
                fd = test_connect(td.socket);
                resp = test_request(fd, "{\"op\":\"list\"}");
                ck_assert_uint_eq(json_array_size(json_object_get(resp, "channels")), 200);
                ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(resp, "channels"), 0),
                                                                   "name")), "c100");
                json_decref(resp);
                close(fd);
                test_daemon_stop_ok(&td);
                ck_assert_int_eq(test_ipcs_count("-m"), 0);
                ck_assert_int_eq(test_ipcs_count("-s"), 0);
        }
}
END_TEST

/* ---- revocation: a reload that takes rights away from a holder ---- */

/* A non-root holder: uid/gid 65534, a member of this group, which the channels below name. */
#define HOLDER_GROUP 4300
#define HOLDER_GROUP_JSON "4300"
#define HOLDER_MARK "written through the old mapping after the reload"

typedef struct Holding {
        const char *channel;
        const char *access;     /* "rw" or "ro" */
} Holding;

typedef struct Held {
        int shm_id, sem_id;
} Held;

typedef struct Holder {
        pid_t pid;
        int cmd;                /* parent -> child: one byte per command; EOF ends the child */
        int report;             /* child -> parent: a Held per holding, then one byte per command */
} Holder;

/* One open on fd, by hand (this program does not link the library): the ids, or exit with `fail`. */
static Held holder_open(int fd, const Holding *h, int fail) {
        char line[256];
        json_t *resp;
        char *answer;
        Held held;
        int n;

        n = snprintf(line, sizeof line, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"%s\"}\n", h->channel, h->access);
        if (n < 0 || (size_t) n >= sizeof line || send(fd, line, (size_t) n, MSG_NOSIGNAL) != n)
                _exit(fail);
        answer = test_read_line(fd);
        resp = answer ? json_loads(answer, 0, NULL) : NULL;
        if (!resp || !json_is_true(json_object_get(resp, "ok")))
                _exit(fail + 1);
        held = (Held) {
                .shm_id = (int) json_integer_value(json_object_get(resp, "shm_id")),
                .sem_id = (int) json_integer_value(json_object_get(resp, "sem_id")),
        };
        json_decref(resp);
        free(answer);
        return held;
}

/*
 * The holder, in the child: open and attach every holding on one connection
 * that stays open, report the ids, then obey commands until EOF:
 *   'w'  write HOLDER_MARK through the first holding's old mapping; a semop
 *        on its old set must fail as removed, and opening it again must be
 *        refused with EACCES; report 'k' (or the letter of what went wrong).
 */
static _Noreturn void holder_main(int cmd, int report, const Holding *holdings, size_t n) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char *addr0 = NULL;
        Held held0 = {};
        int fd;

        test_drop_privileges(65534, 65534, HOLDER_GROUP);
        if (geteuid() != 65534)
                _exit(9);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        strcpy(sa.sun_path, td.socket);
        if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0)
                _exit(10);
        for (size_t i = 0; i < n; i++) {
                bool ro = strcmp(holdings[i].access, "ro") == 0;
                Held held = holder_open(fd, &holdings[i], 20 + 2 * (int) i);
                char *addr = shmat(held.shm_id, NULL, ro ? SHM_RDONLY : 0);

                if (addr == (void *) -1)
                        _exit(40 + (int) i);
                if (!ro)
                        addr[0] = 'x';  /* the rights are real: the kernel lets us write */
                if (i == 0) {
                        addr0 = addr;
                        held0 = held;
                }
                if (write(report, &held, sizeof held) != (ssize_t) sizeof held)
                        _exit(11);
        }
        for (;;) {
                struct sembuf op = { .sem_num = 0, .sem_op = 1, .sem_flg = IPC_NOWAIT };
                char c, verdict = 'k';
                json_t *resp;
                char *answer;
                char line[256];
                int len;

                if (read(cmd, &c, 1) != 1)
                        _exit(0);
                if (c != 'w' || !addr0)
                        _exit(12);
                /* The kernel cannot take the mapping back: what matters is that nobody else sees it any more. */
                strcpy(addr0, HOLDER_MARK);
                if (semop(held0.sem_id, &op, 1) == 0 || (errno != EIDRM && errno != EINVAL))
                        verdict = 'S';
                len = snprintf(line, sizeof line, "{\"op\":\"open\",\"channel\":\"%s\",\"access\":\"rw\"}\n",
                               holdings[0].channel);
                if (len < 0 || send(fd, line, (size_t) len, MSG_NOSIGNAL) != len)
                        _exit(13);
                answer = test_read_line(fd);
                resp = answer ? json_loads(answer, 0, NULL) : NULL;
                if (!resp || !json_is_false(json_object_get(resp, "ok")) ||
                    strcmp(json_string_value(json_object_get(resp, "error")) ?: "", "EACCES") != 0)
                        verdict = verdict == 'k' ? 'A' : verdict;
                json_decref(resp);
                free(answer);
                if (write(report, &verdict, 1) != 1)
                        _exit(14);
        }
}

/* Fork a holder of `holdings`; the ids it got go to held[]. */
static void holder_start(Holder *ret, const Holding *holdings, size_t n, Held *held) {
        int cmd[2], report[2];
        pid_t pid;

        /* Close-on-exec: a daemon started while the holder lives must not keep its command pipe open. */
        ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(report, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                close(cmd[1]);
                close(report[0]);
                holder_main(cmd[0], report[1], holdings, n);
        }
        close(cmd[0]);
        close(report[1]);
        *ret = (Holder) { .pid = pid, .cmd = cmd[1], .report = report[0] };
        for (size_t i = 0; i < n; i++) {
                ssize_t got = read(ret->report, &held[i], sizeof held[i]);
                int status = 0;

                if (got != (ssize_t) sizeof held[i])
                        waitpid(pid, &status, 0);
                ck_assert_msg(got == (ssize_t) sizeof held[i], "the holder failed to open %s %s: exit status %d",
                              holdings[i].channel, holdings[i].access, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
}

/* Send a command; its one-byte verdict. */
static char holder_command(Holder *h, char c) {
        char verdict = 0;

        ck_assert_int_eq(write(h->cmd, &c, 1), 1);
        ck_assert_int_eq(read(h->report, &verdict, 1), 1);
        return verdict;
}

static void holder_stop(Holder *h) {
        int status;

        close(h->cmd);
        ck_assert_int_eq(waitpid(h->pid, &status, 0), h->pid);
        close(h->report);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "holder: status %d", status);
}

/* How many holds `status` lists for a channel. */
static size_t status_holders(const char *name) {
        char line[256];
        json_t *resp;
        size_t n;

        snprintf(line, sizeof line, "{\"op\":\"status\",\"channel\":\"%s\"}", name);
        resp = request_once(line);
        test_assert_ok(resp);
        n = json_array_size(json_object_get(test_must_find(resp, name), "clients"));
        json_decref(resp);
        return n;
}

/*
 * The holder of `holdings` (the first read-write) loses its rights to a
 * reload that makes c's mode `mode` (from 0660, its group's): the channel
 * is replaced.
 */
static void assert_revoking_reload_replaces(const Holding *holdings, size_t n, const char *mode) {
        char *config;
        struct sembuf op = { .sem_num = 0, .sem_op = 1, .sem_flg = IPC_NOWAIT };
        struct shmid_ds ds;
        json_t *before, *after, *ch;
        Holder holder;
        Held all[2], held;
        char *fresh, *log, pid_text[32];
        int admin;

        test_daemon_write_config(&td,
                "[{\"name\": \"c\", \"size\": 4096, \"semaphores\": [1], \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0660\"},"
                " {\"name\": \"other\", \"size\": 4096}]");
        test_start_ok();
        ck_assert_uint_le(n, 2);
        holder_start(&holder, holdings, n, all);
        held = all[0];
        before = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(before, "c"), "shm_id"), held.shm_id);
        ck_assert_uint_eq(status_holders("c"), 1);

        /* The group loses its rights: the holder must lose the live data with them. */
        ck_assert_int_ge(asprintf(&config,
                                  "[{\"name\": \"c\", \"size\": 4096, \"semaphores\": [1], \"group\": " HOLDER_GROUP_JSON
                                  ", \"mode\": \"%s\"}, {\"name\": \"other\", \"size\": 4096}]", mode), 0);
        test_daemon_write_config(&td, config);
        free(config);
        admin = test_connect(td.socket);
        reload_expect(admin, "", "", "c", "other");

        /* New objects under the same key, with the new mode; the untouched channel keeps its own. */
        after = list_ok();
        ch = test_must_find(after, "c");
        ck_assert_msg(test_jint(ch, "shm_id") != held.shm_id && test_jint(ch, "sem_id") != held.sem_id,
                      "a reload that revoked a holder's rights kept the objects it has attached (shm %d, sem %d)",
                      held.shm_id, held.sem_id);
        ck_assert_int_eq(test_jint(ch, "shm_key"), test_jint(test_must_find(before, "c"), "shm_key"));
        ck_assert_str_eq(test_jstr(ch, "mode"), mode);
        assert_kernel_channel(ch, 4096, (mode_t) strtoul(mode, NULL, 8), 1);
        ck_assert_int_eq(test_jint(test_must_find(after, "other"), "shm_id"),
                         test_jint(test_must_find(before, "other"), "shm_id"));
        /* Nobody is listed as holding it any more. */
        ck_assert_uint_eq(status_holders("c"), 0);

        /* The old set is gone; the old segment lives only through the holder's mapping, keyless. */
        errno = 0;
        ck_assert_int_eq(semop(held.sem_id, &op, 1), -1);
        ck_assert_msg(errno == EIDRM || errno == EINVAL, "semop on the old set: %s", strerror(errno));
        shm_stat(held.shm_id, &ds);
        ck_assert_msg(ds.shm_perm.mode & SHM_DEST, "the old segment is not marked for removal");
        ck_assert_uint_eq(ds.shm_nattch, n);     /* every holding attached it */

        /* What the holder writes through its old mapping reaches nobody; it cannot reopen. */
        ck_assert_int_eq(holder_command(&holder, 'w'), 'k');
        fresh = shmat((int) test_jint(ch, "shm_id"), NULL, SHM_RDONLY);
        ck_assert_ptr_ne(fresh, (void *) -1);
        ck_assert_msg(memmem(fresh, 4096, HOLDER_MARK, strlen(HOLDER_MARK)) == NULL,
                      "the holder's write reached the new segment");
        ck_assert_int_eq(shmdt(fresh), 0);
        ck_assert_uint_eq(status_holders("c"), 0);

        /* The log says why the channel was replaced, and whose rights forced it. */
        log = test_daemon_log(&td);
        snprintf(pid_text, sizeof pid_text, "(pid %d)", (int) holder.pid);
        ck_assert_msg(strstr(log, "would refuse a current holder") && strstr(log, pid_text), "log: %s", log);
        free(log);

        /* Once the holder is gone, so is the old segment: nothing leaked, nothing doubled. */
        holder_stop(&holder);
        ck_assert_msg(!shm_exists(held.shm_id), "old segment %d outlived its last detach", held.shm_id);
        assert_ipcs(2, 2);

        json_decref(before);
        json_decref(after);
        close(admin);
}

START_TEST(test_revoking_reload_replaces_held_channel) {
        static const Holding holdings[] = { { "c", "rw" } };

        assert_revoking_reload_replaces(holdings, 1, "0600");
}
END_TEST

/*
 * Opened read-write, then again read-only on the same connection: one
 * hold, but the read-write mapping it was handed stays. A reload that
 * takes write away (and leaves read) must still replace the channel.
 */
START_TEST(test_revoking_reload_reaches_rw_mapping_behind_ro_reopen) {
        static const Holding holdings[] = { { "c", "rw" }, { "c", "ro" } };

        assert_revoking_reload_replaces(holdings, 2, "0640");
}
END_TEST

/*
 * Channel c, now 0600, is new objects, while the holder of the old ones
 * (which lost its rights to the change: `what`) keeps its mapping of a
 * segment marked for removal, which goes with its last detach.
 */
static void assert_replaced_under_holder(Holder *holder, const Held *held, const char *what) {
        json_t *after = list_ok(), *ch = test_must_find(after, "c");
        struct shmid_ds ds;

        ck_assert_str_eq(test_jstr(ch, "mode"), "0600");
        ck_assert_msg(test_jint(ch, "shm_id") != held->shm_id && test_jint(ch, "sem_id") != held->sem_id,
                      "%s that may revoke an attached holder's rights kept the objects it has attached (shm %d, "
                      "sem %d)", what, held->shm_id, held->sem_id);
        shm_stat(held->shm_id, &ds);
        ck_assert_msg(ds.shm_perm.mode & SHM_DEST, "the old segment is not marked for removal");
        holder_stop(holder);
        ck_assert_msg(!shm_exists(held->shm_id), "old segment %d outlived its last detach", held->shm_id);
        assert_ipcs(1, 1);
        json_decref(after);
}

/*
 * The same revocation, but by a crash restart on the tightened config: the
 * holder is still attached (and its process alive) while the new daemon
 * takes the channel over. shmbrokerd(8), CRASH RECLAIM: owner, group and
 * mode are set as configured "unless that may take a right away from
 * anyone ... while a process may still have it mapped": adopting it with
 * the new mode would leave the holder writing into the live segment that
 * everyone else now opens.
 */
START_TEST(test_revoking_crash_restart_replaces_held_channel) {
        static const Holding holdings[] = { { "c", "rw" } };
        json_t *before;
        Holder holder;
        Held held;

        test_daemon_write_config(&td,
                "[{\"name\": \"c\", \"size\": 4096, \"semaphores\": [1], \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0660\"}]");
        test_start_ok();
        holder_start(&holder, holdings, 1, &held);
        before = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(before, "c"), "shm_id"), held.shm_id);

        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td,
                "[{\"name\": \"c\", \"size\": 4096, \"semaphores\": [1], \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0600\"}]");
        test_start_ok();

        assert_replaced_under_holder(&holder, &held, "a crash restart");
        json_decref(before);
}
END_TEST

/*
 * The same, by a reload soon after a crash restart that kept the channel:
 * the holder of the previous run is still attached but has not come back
 * through a connection, so the daemon cannot judge it, and the tightening
 * replaces the channel.
 */
START_TEST(test_revoking_reload_after_crash_restart_replaces_held_channel) {
        static const Holding holdings[] = { { "c", "rw" } };
        json_t *after;
        Holder holder;
        Held held;
        int admin;

        test_daemon_write_config(&td,
                "[{\"name\": \"c\", \"size\": 4096, \"semaphores\": [1], \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0660\"}]");
        test_start_ok();
        holder_start(&holder, holdings, 1, &held);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "c"), "shm_id"), held.shm_id);
        json_decref(after);

        test_daemon_write_config(&td,
                "[{\"name\": \"c\", \"size\": 4096, \"semaphores\": [1], \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0600\"}]");
        admin = test_connect(td.socket);
        reload_expect(admin, "", "", "c", "");
        assert_replaced_under_holder(&holder, &held, "a reload after a crash restart");
        close(admin);
}
END_TEST

/*
 * shmbrokerd(8), Reload: "a change that may take any right away from
 * anyone ... replaces the channel whenever such a process may exist" (one
 * that attached by id). The daemon counts the segment's attachments when
 * it plans the reload, but sets the new mode only later, after it made
 * and removed the other channels of the plan: a process of the group that
 * attaches by id in between (here: while the daemon is stopped at the
 * entry of its IPC_SET) is not counted, the mode is changed in place, and
 * it keeps writing into the live segment that it no longer has any right
 * to and that every new opener gets.
 */
/* m's fixed key: its replacement is made under it again, and a stranger may take it first. */
#define M_KEY 1593835613
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/*
 * Reload m from 0660 to 0600 while a group member attaches it by id at the
 * daemon's IPC_SET (see below). taken: right after the daemon removes m to
 * make it anew, a stranger takes m's key, so the replacement the re-count
 * asks for cannot be made.
 */
static void attach_between_plan_and_ipc_set(bool taken) {
        struct __ptrace_syscall_info info;
        int cmd[2], report[2], shm_id, admin, foreign = -1;
        json_t *list;
        bool met = false;
        char verdict = 0, *addr;
        pid_t pid;

        test_daemon_write_config(&td,
                "[{\"name\": \"m\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0660\","
                "  \"key\": " STRINGIFY(M_KEY) "}, {\"name\": \"other\", \"size\": 4096}]");
        test_start_ok();
        list = list_ok();
        shm_id = (int) test_jint(test_must_find(list, "m"), "shm_id");
        json_decref(list);

        /* A group member, who loses every right to the reload below. */
        ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(report, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                char c, *a = NULL;

                close(cmd[1]);
                close(report[0]);
                test_drop_privileges(65534, 65534, HOLDER_GROUP);
                while (read(cmd[0], &c, 1) == 1) {
                        if (c == 'a') {
                                a = shmat(shm_id, NULL, 0);
                                c = a == (void *) -1 ? 'n' : 'y';
                        } else {
                                strcpy(a, "still writing");
                                c = 'w';
                        }
                        if (write(report[1], &c, 1) != 1)
                                _exit(1);
                }
                _exit(0);
        }
        close(cmd[0]);
        close(report[1]);

        /* Tightened, with a channel added too: the plan's work comes before the in-place change. */
        test_daemon_write_config(&td,
                "[{\"name\": \"m\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0600\","
                "  \"key\": " STRINGIFY(M_KEY) "}, {\"name\": \"other\", \"size\": 4096},"
                " {\"name\": \"added\", \"size\": 4096}]");
        test_daemon_trace(&td);
        test_reload_async();
        while (!met && test_next_syscall_stop(td.pid)) {
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY || info.entry.nr != SYS_shmctl ||
                    (int) info.entry.args[0] != shm_id || (info.entry.args[1] & 0xff) != IPC_SET)
                        continue;
                met = true;
                /* The reload has planned: now the group member attaches by id, as it still may. */
                ck_assert_int_eq(write(cmd[1], "a", 1), 1);
                ck_assert_int_eq(read(report[0], &verdict, 1), 1);
                ck_assert_int_eq(verdict, 'y');
        }
        ck_assert_msg(met, "the reload set no mode on segment %d", shm_id);
        /* Then to the removal of m (the member keeps the segment, whose key the kernel frees), past it. */
        for (met = false; taken && !met && !test_reload_done() && test_next_syscall_stop(td.pid);) {
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                met = info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_shmctl &&
                      (int) info.entry.args[0] == shm_id && (info.entry.args[1] & 0xff) == IPC_RMID;
        }
        if (taken) {
                ck_assert_msg(met, "the reload did not remove segment %d", shm_id);
                ck_assert(test_next_syscall_stop(td.pid));
                foreign = shmget((key_t) M_KEY, 4096, IPC_CREAT | IPC_EXCL | 0600);
                ck_assert_msg(foreign >= 0, "m's key was not free after its removal: %s", strerror(errno));
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        test_reload_wait();

        list = list_ok();
        if (taken) {
                char *log = test_daemon_log(&td);

                /* Neither the old segment, which the member writes, nor any other: gone, and said so. */
                ck_assert_msg(!test_find_channel(list, "m"), "channel m is still served, though it could not be remade");
                ck_assert_msg(strstr(log, "channel m: a process attached it while the reload ran") &&
                              strstr(log, "the channel is gone until a later reload"), "no word of m: %s", log);
                free(log);
                json_decref(list);
                ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
                test_daemon_write_config(&td,
                        "[{\"name\": \"m\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0600\","
                        "  \"key\": " STRINGIFY(M_KEY) "}, {\"name\": \"other\", \"size\": 4096},"
                        " {\"name\": \"added\", \"size\": 4096}, {\"name\": \"later\", \"size\": 4096}]");
                admin = test_connect(td.socket);
                reload_expect(admin, "later,m", "", "", "added,other");
                close(admin);
                list = list_ok();
        }
        ck_assert_str_eq(test_jstr(test_must_find(list, "m"), "mode"), "0600");
        if (test_jint(test_must_find(list, "m"), "shm_id") == shm_id) {
                ck_assert_int_eq(write(cmd[1], "w", 1), 1);
                ck_assert_int_eq(read(report[0], &verdict, 1), 1);
                addr = shmat(shm_id, NULL, SHM_RDONLY);
                ck_assert_ptr_ne(addr, (void *) -1);
                ck_assert_msg(strcmp(addr, "still writing") != 0,
                              "changed in place while a process it refuses now had it mapped: that process writes "
                              "into the live segment %d that new openers get", shm_id);
                shmdt(addr);
        }
        json_decref(list);
        close(cmd[1]);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        close(report[0]);
}

START_TEST(test_attach_between_plan_and_ipc_set_is_judged) {
        attach_between_plan_and_ipc_set(false);
}
END_TEST

/*
 * The same, where the replacement cannot be made (a stranger took m's key
 * the moment the daemon removed m): the channel goes (until a later
 * reload), never stays in place. No /proc/sys write: it is read-only in a
 * container.
 */
START_TEST(test_attach_between_plan_and_ipc_set_key_taken_removes) {
        attach_between_plan_and_ipc_set(true);
}
END_TEST

/*
 * A replacement that step 3 cannot make (a stranger takes the fixed key the
 * moment the daemon removed the old objects): the answer lists the channel
 * as removed, as it is gone, never as changed.
 */
START_TEST(test_replacement_failed_in_step_3_is_listed_removed) {
        struct __ptrace_syscall_info info;
        int shm_id, fd, foreign;
        json_t *list, *resp;
        bool met = false;
        char *line;

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"key\": " STRINGIFY(M_KEY) "}]");
        test_start_ok();
        list = list_ok();
        shm_id = (int) test_jint(test_must_find(list, "m"), "shm_id");
        json_decref(list);

        /* A new size: the old objects go in step 2, the new ones are made under the same key in step 3. */
        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 8192, \"key\": " STRINGIFY(M_KEY) "}]");
        test_daemon_trace(&td);
        fd = test_connect(td.socket);
        test_send(fd, "{\"op\":\"reload\"}\n", 16);
        while (!met && test_next_syscall_stop(td.pid)) {
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                met = info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_shmctl &&
                      (int) info.entry.args[0] == shm_id && (info.entry.args[1] & 0xff) == IPC_RMID;
        }
        ck_assert_msg(met, "the reload did not remove segment %d", shm_id);
        ck_assert(test_next_syscall_stop(td.pid));
        foreign = shmget((key_t) M_KEY, 4096, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_msg(foreign >= 0, "m's key was not free after its removal: %s", strerror(errno));
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);

        line = test_read_line(fd);
        ck_assert_ptr_nonnull(line);
        resp = json_loads(line, 0, NULL);
        ck_assert_ptr_nonnull(resp);
        free(line);
        test_assert_ok(resp);
        assert_names(resp, "removed", "m");
        assert_names(resp, "changed", "");
        json_decref(resp);
        list = list_ok();
        ck_assert_ptr_null(test_find_channel(list, "m"));
        json_decref(list);
        close(fd);
        ck_assert_int_eq(shmctl(foreign, IPC_RMID, NULL), 0);
}
END_TEST

START_TEST(test_reload_keeping_holders_rights_stays_in_place) {
        /* "l" is loosened; "w" loses group write, which its ro holder never had; "free" is tightened,
         * but held only by root (the test itself), whom the owner bits still admit. */
        static const Holding holdings[] = { { "l", "ro" }, { "w", "ro" } };
        Holder holder;
        Held held[2];
        json_t *before, *after, *resp;
        int admin, root;

        test_daemon_write_config(&td,
                "[{\"name\": \"l\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0640\"},"
                " {\"name\": \"w\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0660\"},"
                " {\"name\": \"free\", \"size\": 4096, \"mode\": \"0660\"}]");
        test_start_ok();
        holder_start(&holder, holdings, 2, held);
        root = test_connect(td.socket);
        resp = req(root, "{\"op\":\"open\",\"channel\":\"free\",\"access\":\"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        before = list_ok();

        test_daemon_write_config(&td,
                "[{\"name\": \"l\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0660\"},"
                " {\"name\": \"w\", \"size\": 4096, \"group\": " HOLDER_GROUP_JSON ", \"mode\": \"0640\"},"
                " {\"name\": \"free\", \"size\": 4096, \"mode\": \"0600\"}]");
        admin = test_connect(td.socket);
        reload_expect(admin, "", "", "l,w,free", "");

        /* In place: the same objects, now with the new modes, and every hold still there. */
        after = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(after, "l"), "shm_id"), held[0].shm_id);
        ck_assert_int_eq(test_jint(test_must_find(after, "l"), "sem_id"), held[0].sem_id);
        ck_assert_int_eq(test_jint(test_must_find(after, "w"), "shm_id"), held[1].shm_id);
        ck_assert_int_eq(test_jint(test_must_find(after, "w"), "sem_id"), held[1].sem_id);
        ck_assert_int_eq(test_jint(test_must_find(after, "free"), "shm_id"), test_jint(test_must_find(before, "free"), "shm_id"));
        ck_assert_int_eq(test_jint(test_must_find(after, "free"), "sem_id"), test_jint(test_must_find(before, "free"), "sem_id"));
        assert_kernel_channel(test_must_find(after, "l"), 4096, 0660, 1);
        assert_kernel_channel(test_must_find(after, "w"), 4096, 0640, 1);
        assert_kernel_channel(test_must_find(after, "free"), 4096, 0600, 1);
        ck_assert_uint_eq(status_holders("l"), 1);
        ck_assert_uint_eq(status_holders("w"), 1);
        ck_assert_uint_eq(status_holders("free"), 1);

        holder_stop(&holder);
        assert_ipcs(3, 3);
        json_decref(before);
        json_decref(after);
        close(root);
        close(admin);
}
END_TEST

/* A config of one channel "legacy" keyed by ftok(PATH, 12), PATH a new empty file in td's directory. */
static void ftok_config(char *path, size_t size) {
        char *text;
        int fd;

        snprintf(path, size, "%s/key-file", td.dir);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_ge(asprintf(&text, "[{\"name\": \"legacy\", \"size\": 4096, \"key\": {\"ftok\": [\"%s\", 12]}}]",
                                  path), 0);
        test_daemon_write_config(&td, text);
        free(text);
}

/*
 * Another file at path, made while the old one exists (so its inode is
 * another) and renamed over it: its key, which must not be `before`.
 */
static key_t ftok_replace(const char *path, key_t before) {
        char spare[420];
        key_t after;
        int fd;

        snprintf(spare, sizeof spare, "%s.new", path);
        fd = open(spare, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(rename(spare, path), 0);
        after = ftok(path, 12);
        ck_assert_int_ne(after, before);
        return after;
}

/* An ftok key follows its file: another inode at the path is another key, and the channel moves to it. */
START_TEST(test_ftok_key_follows_a_replaced_file) {
        char path[400];
        json_t *list;
        key_t before, after;
        int fd;

        ftok_config(path, sizeof path);
        test_start_ok();
        before = ftok(path, 12);
        list = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(list, "legacy"), "shm_key"), (json_int_t) (uint32_t) before);
        json_decref(list);

        /* Made while the old one exists, so its inode is another; renamed over it. */
        after = ftok_replace(path, before);
        fd = test_connect(td.socket);
        reload_expect(fd, "", "", "legacy", "");
        close(fd);
        list = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(list, "legacy"), "shm_key"), (json_int_t) (uint32_t) after);
        json_decref(list);
        ck_assert_int_eq(test_ipcs_count("-m"), 1);

        /* The file gone: the reload fails and changes nothing. */
        ck_assert_int_eq(unlink(path), 0);
        fd = test_connect(td.socket);
        list = req(fd, "{\"op\":\"reload\"}");
        test_assert_error(list, "EINVAL");
        ck_assert_ptr_nonnull(strstr(test_jstr(list, "message"), "ftok"));
        json_decref(list);
        close(fd);
}
END_TEST

/*
 * An ftok key that a foreign object holds: the refusal names the file the key
 * came from (the config names no key to look for), and the object is untouched.
 */
START_TEST(test_ftok_key_held_names_its_file) {
        char path[400];
        json_t *old;
        key_t before, after;
        int fd, foreign;

        ftok_config(path, sizeof path);
        test_start_ok();
        before = ftok(path, 12);
        old = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(old, "legacy"), "shm_key"), (json_int_t) (uint32_t) before);

        /* Another file at the path, whose key someone else took first. */
        after = ftok_replace(path, before);
        foreign = foreign_segment(after);

        /* Refused naming the file; the running channel is the same one (ids too). */
        fd = test_connect(td.socket);
        reload_refused(fd, old, "EEXIST", path, NULL);
        close(fd);
        json_decref(old);
        foreign_segment_untouched_remove(foreign, after);
}
END_TEST

/*
 * A crash, then the ftok file replaced (the config's text unchanged): the
 * restart makes the channel anew at the new key and the log says why,
 * naming the file, not that the config changed.
 */
START_TEST(test_crash_restart_names_a_replaced_ftok_file) {
        char path[400], want[600], *log;
        key_t before, after;
        json_t *list;

        ftok_config(path, sizeof path);
        test_start_ok();
        before = ftok(path, 12);
        test_daemon_kill(&td, SIGKILL);

        after = ftok_replace(path, before);
        test_start_ok();
        list = list_ok();
        ck_assert_int_eq(test_jint(test_must_find(list, "legacy"), "shm_key"), (json_int_t) (uint32_t) after);
        json_decref(list);
        log = test_daemon_log(&td);
        snprintf(want, sizeof want, "its key is key 0x%08x (ftok(\"%s\", 12)) now, not 0x%08x", (unsigned) after, path,
                 (unsigned) before);
        ck_assert_msg(strstr(log, want), "no \"%s\" in:\n%s", want, log);
        ck_assert_msg(!strstr(log, "changed in the config"), "the config did not change:\n%s", log);
        free(log);
        /* The last run's objects were reclaimed: only the new ones are left. */
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
}
END_TEST

/*
 * shmbroker.json(5): a reload that changes only the mode applies it "in
 * place with IPC_SET" and lists the channel as changed. Here the set was
 * removed behind the daemon's back (ipcrm) before the reload, so IPC_SET
 * fails: the channel must not be listed as changed while it keeps the old
 * mode. Once the daemon notices the removal (a status) and makes the
 * channel again, the objects must carry the mode the config names.
 */
START_TEST(test_mode_change_on_removed_set_is_applied) {
        struct semid_ds sem;
        struct shmid_ds shm;
        json_t *before, *after, *resp;
        int fd, sem_id;

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"semaphores\": 1, \"mode\": \"0660\"}]");
        test_start_ok();
        before = list_ok();
        sem_id = (int) test_jint(test_must_find(before, "m"), "sem_id");
        ck_assert_int_eq(semctl(sem_id, 0, IPC_RMID), 0);

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"semaphores\": 1, \"mode\": \"0664\"}]");
        fd = test_connect(td.socket);
        resp = reload_ok(fd);
        json_decref(resp);
        /* A status notices the removal and makes the channel again. */
        resp = req(fd, "{\"op\":\"status\",\"channel\":\"m\"}");
        json_decref(resp);
        after = list_ok();
        ck_assert_str_eq(test_jstr(test_must_find(after, "m"), "mode"), "0664");
        sem_stat((int) test_jint(test_must_find(after, "m"), "sem_id"), &sem);
        ck_assert_uint_eq(sem.sem_perm.mode & 0777, 0664);
        shm_stat((int) test_jint(test_must_find(after, "m"), "shm_id"), &shm);
        ck_assert_uint_eq(shm.shm_perm.mode & 0777, 0664);
        json_decref(before);
        json_decref(after);
        close(fd);
}
END_TEST

/*
 * As above, but another user made a set that got the removed set's id (the
 * kernel hands ids out again: a user who cycles sets gets any one back, and
 * sem_next_id does it at once here). The daemon never made that set: a
 * reload that changes the channel's mode must not give it the channel's
 * owner and mode (README: it "never touches others' objects"), and the
 * channel is made again with the mode the config names.
 */
START_TEST(test_mode_change_spares_a_foreign_set_with_the_removed_sets_id) {
        struct semid_ds sem;
        json_t *before, *after, *resp;
        int fd, sem_id;

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"semaphores\": 1, \"mode\": \"0660\"}]");
        test_start_ok();
        before = list_ok();
        sem_id = (int) test_jint(test_must_find(before, "m"), "sem_id");
        ck_assert_int_eq(semctl(sem_id, 0, IPC_RMID), 0);
        /* A key of its own, mode 0600: the set is nobody's business but 4242's. */
        test_make_foreign_ipc(true, 0x4242, 1, 0600, sem_id, 4242);

        test_daemon_write_config(&td, "[{\"name\": \"m\", \"size\": 4096, \"semaphores\": 1, \"mode\": \"0666\"}]");
        fd = test_connect(td.socket);
        resp = reload_ok(fd);
        json_decref(resp);
        sem_stat(sem_id, &sem);
        ck_assert_msg(sem.sem_perm.uid == 4242 && sem.sem_perm.cuid == 4242 && (sem.sem_perm.mode & 0777) == 0600,
                      "the reload re-owned another user's set: owner %u, mode %04o", (unsigned) sem.sem_perm.uid,
                      (unsigned) (sem.sem_perm.mode & 0777));
        /* The channel goes on, on a set made anew (its own was removed): status answers for it. */
        resp = req(fd, "{\"op\":\"status\",\"channel\":\"m\"}");
        test_assert_ok(resp);
        json_decref(resp);
        after = list_ok();
        ck_assert_int_ne(test_jint(test_must_find(after, "m"), "sem_id"), sem_id);
        sem_stat((int) test_jint(test_must_find(after, "m"), "sem_id"), &sem);
        ck_assert_uint_eq(sem.sem_perm.mode & 0777, 0666);
        ck_assert_int_eq(semctl(sem_id, 0, IPC_RMID), 0);
        json_decref(before);
        json_decref(after);
        close(fd);
}
END_TEST

/*
 * A config of n channels PREFIX0.., then m channels MORE0..: each with
 * `fields` (JSON members, such as "\"size\": 4096").
 */
static void write_channel_groups(int n, const char *prefix, int m, const char *more, const char *fields) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        ck_assert_ptr_nonnull(f);
        fputc('[', f);
        for (int i = 0; i < n + m; i++)
                fprintf(f, "%s{\"name\": \"%s%d\", %s}", i ? ", " : "", i < n ? prefix : more, i < n ? i : i - n,
                        fields);
        fputc(']', f);
        ck_assert_int_eq(fclose(f), 0);
        test_daemon_write_config(&td, text);
        free(text);
}

static void write_channels(int n, const char *prefix, const char *fields) {
        write_channel_groups(n, prefix, 0, "", fields);
}

/* A reload asked on a connection of its own must be accepted: `what` names it in the failure. */
static void assert_reload_accepted(const char *what) {
        int fd = test_connect(td.socket);
        json_t *resp = req(fd, "{\"op\":\"reload\"}");

        ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "%s was refused: %s", what,
                      json_string_value(json_object_get(resp, "message")));
        json_decref(resp);
        close(fd);
}

/* The end of a state directory test: the daemon stops cleanly, leaves no segment, and the mount goes. */
static void stop_and_unmount(const char *state) {
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(umount2(state, MNT_DETACH), 0);
}

static void write_sized_channels(int n, unsigned size, const char *kind) {
        char fields[64];

        snprintf(fields, sizeof fields, "\"kind\": \"%s\", \"size\": %u", kind, size);
        write_channels(n, "c", fields);
}

/* A file system of type fs (options opts) of its own at TD/state (the test's mount namespace): its path in state. */
static void state_dir_on(char *state, size_t state_size, const char *fs, const char *opts) {
        ck_assert_int_lt(snprintf(state, state_size, "%s/state", td.dir), (int) state_size);
        ck_assert_int_eq(mkdir(state, 0700), 0);
        ck_assert_int_eq(unshare(CLONE_NEWNS), 0);
        ck_assert_int_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
        ck_assert_msg(mount(fs, state, fs, 0, opts) == 0, "mount %s: %s", fs, strerror(errno));
}

/* A small tmpfs of its own at TD/state: its path in state. */
static void small_state_dir(char *state, size_t state_size, const char *size) {
        char opts[64];

        snprintf(opts, sizeof opts, "size=%s,mode=0700", size);
        state_dir_on(state, state_size, "tmpfs", opts);
}

/* Fill the file system of dir with dir/filler: its descriptor, to give room back with ftruncate(). */
static int fill_dir(const char *dir) {
        static char block[4096];
        char path[500];
        int fd;

        ck_assert_int_lt(snprintf(path, sizeof path, "%s/filler", dir), (int) sizeof path);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        while (write(fd, block, sizeof block) > 0)
                ;
        return fd;
}

/*
 * shmbrokerd(8), Reload: a reload that cannot make a channel changes
 * nothing. A full state directory is known before anything is removed: a
 * reload that resizes every channel must not destroy the channels it
 * cannot record and still answer ok. Either it is refused whole, naming
 * the state file, with the channels as before, or every configured channel
 * is there afterwards.
 */
/* The inode of each channel of `names`' list (in its order) as `list` has it: its shared memory file's. */
static void posix_inodes(json_t *names, json_t *list, ino_t *ret) {
        json_t *e;
        size_t i;

        ck_assert_uint_eq(json_array_size(json_object_get(list, "channels")),
                          json_array_size(json_object_get(names, "channels")));
        json_array_foreach(json_object_get(names, "channels"), i, e) {
                json_t *f = test_must_find(list, test_jstr(e, "name"));
                char path[300];
                struct stat st;

                ck_assert_int_lt(snprintf(path, sizeof path, "/dev/shm%s", test_jstr(f, "shm_name")), (int) sizeof path);
                ck_assert_msg(stat(path, &st) == 0, "%s: %s", path, strerror(errno));
                ret[i] = st.st_ino;
        }
}

/*
 * room: bytes the state directory keeps free (0: none). Some, but less
 * than the reload writes: a reservation that counts too few lines fits,
 * and the reload then runs out of room with channels removed.
 */
static void full_state_dir_reload(const char *kind, off_t room) {
        char state[400];
        json_t *before, *after, *resp;
        int status = 0, fd, out;
        ino_t ino[2][40];

        small_state_dir(state, sizeof state, "64k");
        write_sized_channels(40, 4096, kind);
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);
        before = list_ok();
        ck_assert_uint_eq(json_array_size(json_object_get(before, "channels")), 40);
        if (strcmp(kind, "posix") == 0)
                posix_inodes(before, before, ino[0]);

        /* The state directory fills up. */
        out = fill_dir(state);
        if (room > 0) {
                struct stat st;

                ck_assert_int_eq(fstat(out, &st), 0);
                ck_assert_int_ge(st.st_size, room);
                ck_assert_int_eq(ftruncate(out, st.st_size - room), 0);
        }
        close(out);

        write_sized_channels(40, 8192, kind);
        fd = test_connect(td.socket);
        resp = req(fd, "{\"op\":\"reload\"}");
        after = list_ok();
        if (json_is_true(json_object_get(resp, "ok"))) {
                ck_assert_msg(json_array_size(json_object_get(after, "channels")) == 40,
                              "the reload answered ok but left %zu of 40 configured channels",
                              json_array_size(json_object_get(after, "channels")));
        } else {
                const char *why = test_jstr(resp, "message");

                ck_assert_msg(strstr(why, state) != NULL, "the refusal does not name the state directory: %s", why);
                if (strcmp(kind, "sysv") == 0) {
                        assert_same_channels(before, after);
                } else {
                        posix_inodes(before, after, ino[1]);
                        for (size_t i = 0; i < 40; i++)
                                ck_assert_msg(ino[0][i] == ino[1][i], "channel %zu has another file", i);
                }
        }
        if (strcmp(kind, "sysv") == 0)
                ck_assert_int_eq(test_ipcs_count("-m"), (int) json_array_size(json_object_get(after, "channels")));
        json_decref(resp);
        json_decref(before);
        json_decref(after);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(umount2(state, MNT_DETACH), 0);
}

START_TEST(test_full_state_dir_loses_no_replaced_channel) {
        full_state_dir_reload("sysv", 0);
}
END_TEST

START_TEST(test_full_state_dir_loses_no_replaced_posix_channel) {
        full_state_dir_reload("posix", 0);
}
END_TEST

/* 12 KiB free: about half of what replacing 40 channels writes. */
START_TEST(test_nearly_full_state_dir_loses_no_replaced_channel) {
        full_state_dir_reload("sysv", 12288);
}
END_TEST

START_TEST(test_nearly_full_state_dir_loses_no_replaced_posix_channel) {
        full_state_dir_reload("posix", 12288);
}
END_TEST

/*
 * A reload that only widens the mode of System V channels records nothing
 * (IPC_SET in place): a full state directory must not refuse it. The
 * reservation counted two lines per channel whose rights change, of any
 * kind, where only a posix file given a new owner writes.
 */
START_TEST(test_full_state_dir_allows_a_mode_change) {
        char state[400];
        json_t *after;
        int status = 0, filler;

        small_state_dir(state, sizeof state, "64k");
        write_channels(12, "m", "\"size\": 4096, \"mode\": \"0660\"");
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);
        filler = fill_dir(state);

        write_channels(12, "m", "\"size\": 4096, \"mode\": \"0664\"");
        assert_reload_accepted("a mode-only reload with the state directory full");
        after = list_ok();
        for (int i = 0; i < 12; i++) {
                char name[16];

                snprintf(name, sizeof name, "m%d", i);
                ck_assert_str_eq(test_jstr(test_must_find(after, name), "mode"), "0664");
        }
        json_decref(after);
        close(filler);
        stop_and_unmount(state);
}
END_TEST

/*
 * SPEC, crash restart keeps channels. A reload takes room in the state
 * file before it changes anything (shmbrokerd(8)); killed in it, the run
 * leaves that room taken past the file's end. The next start must give it
 * back: the room the directory had before the reload is there again, and
 * the start (which writes the file anew) takes over the channels. Here the
 * directory has just the room the reload takes: found by giving the filler
 * back a page at a time until a reload is accepted, which is killed at its
 * first write to the state file.
 */
START_TEST(test_reload_killed_in_a_tight_state_dir_restarts) {
        char state[400];
        int status = 0, filler, k;
        struct stat st;
        bool killed = false;
        json_t *list;

        small_state_dir(state, sizeof state, "256k");
        write_channels(40, "k", "\"size\": 4096");
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);
        filler = fill_dir(state);
        ck_assert_int_eq(fstat(filler, &st), 0);

        /* The 40 channels stay; 10 are added. */
        write_channel_groups(40, "k", 10, "n", "\"size\": 4096");
        for (k = 0; k < 64 && !killed; k++) {
                ck_assert_int_ge(st.st_size, 4096);
                st.st_size -= 4096;
                ck_assert_int_eq(ftruncate(filler, st.st_size), 0);
                test_daemon_trace(&td);
                test_reload_async();
                /* A refused reload writes nothing: it runs on, untraced. */
                killed = test_daemon_kill_at(&td, 1, test_at_state_write, test_reload_done);
                drain_notify();
        }
        ck_assert_msg(killed, "no reload accepted with %d pages given back", k);
        test_reload_wait();
        close(filler);

        if (!test_daemon_start(&td, &status, "--state-dir", state, NULL)) {
                char *log = test_daemon_log(&td);
                size_t len = strlen(log);

                ck_abort_msg("the start after a reload killed in a state directory with just its room failed "
                             "(%d): ...%s", status, log + (len > 300 ? len - 300 : 0));
        }
        list = list_ok();
        ck_assert_uint_ge(json_array_size(json_object_get(list, "channels")), 40);
        json_decref(list);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        ck_assert_int_eq(umount2(state, MNT_DETACH), 0);
}
END_TEST

/*
 * shmbroker.json(5): "a full state directory fails the reload with ENOSPC".
 * A 64 KiB state directory that the start of 40 channels left two thirds
 * free is not full: resizing those channels writes about 16 KiB of records
 * (their removal, intents and ids), yet the reservation (224 bytes for each
 * of up to 12 lines per channel: 105 KiB) refused it.
 */
START_TEST(test_state_dir_with_room_takes_a_resize) {
        char state[400];
        struct statvfs vfs;
        char what[128];
        int status = 0;

        small_state_dir(state, sizeof state, "64k");
        write_sized_channels(40, 4096, "sysv");
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);
        ck_assert_int_eq(statvfs(state, &vfs), 0);
        ck_assert_uint_ge((uint64_t) vfs.f_bavail * vfs.f_frsize, 32 * 1024);

        write_sized_channels(40, 8192, "sysv");
        snprintf(what, sizeof what, "a resize of 40 channels with %llu KiB of 64 free",
                 (unsigned long long) vfs.f_bavail * vfs.f_frsize / 1024);
        assert_reload_accepted(what);
        stop_and_unmount(state);
}
END_TEST

/*
 * shmbrokerd(8): where the state directory's file system cannot set room
 * aside (no fallocate(2), as on ramfs), a reload goes ahead on what statfs
 * says is free. Refusing it there would make every resize fail.
 */
START_TEST(test_state_dir_without_fallocate_takes_a_resize) {
        char state[400];
        json_t *after;
        int status = 0, probe;

        state_dir_on(state, sizeof state, "ramfs", "mode=0700");
        /* The premise: this file system has no fallocate. */
        probe = open(state, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        ck_assert_int_ge(probe, 0);
        ck_assert_msg(fallocate(probe, FALLOC_FL_KEEP_SIZE, 0, 4096) < 0 && errno == EOPNOTSUPP,
                      "ramfs took fallocate: the test needs another file system without it");
        close(probe);

        write_sized_channels(10, 4096, "sysv");
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);
        write_sized_channels(10, 8192, "sysv");
        assert_reload_accepted("a resize on a state directory without fallocate");
        after = list_ok();
        for (int i = 0; i < 10; i++) {
                char name[16];

                snprintf(name, sizeof name, "c%d", i);
                ck_assert_int_eq(json_integer_value(json_object_get(test_must_find(after, name), "size")), 8192);
        }
        json_decref(after);
        stop_and_unmount(state);
}
END_TEST

static void a_channels(char *config, unsigned size) {
        char *p = config;

        p += sprintf(p, "[{\"name\": \"base\", \"size\": 4096}");
        for (int c = 0; c < 10; c++)
                p += sprintf(p, ", {\"name\": \"a%d\", \"size\": %u}", c, size);
        sprintf(p, "]");
        test_daemon_write_config(&td, config);
}

/*
 * Derived keys that someone holds (list showed them) cost a creation an
 * intent and its cancellation for each: the reservation must count them,
 * or a reload it accepts runs out of room and loses channels. The first
 * ten candidate keys of ten channels are taken before the start, which
 * makes them at their eleventh; a reload resizes them, and each tries
 * the ten again. The state directory gets its room back a page at a time
 * until a reload is accepted, which must then have made every channel.
 */
START_TEST(test_held_derived_keys_are_reserved_for) {
        char state[400], secret[600], config[2048];
        int status = 0, filler, squats[100], n = 0, fd, k;
        const char *base = strrchr(td.socket, '/') + 1;
        json_t *resp = NULL, *list;
        struct stat st;

        small_state_dir(state, sizeof state, "128k");
        /* A secret the test knows, where the daemon keeps it: the candidates are computed here. */
        ck_assert_int_lt(snprintf(secret, sizeof secret, "%s/%s.secret", state, base), (int) sizeof secret);
        fd = open(secret, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        for (int i = 0; i < 16; i++)
                dprintf(fd, "%02x", test_secret[i]);
        ck_assert_int_eq(write(fd, "\n", 1), 1);
        close(fd);
        for (int c = 0; c < 10; c++) {
                char name[16];

                snprintf(name, sizeof name, "a%d", c);
                for (unsigned i = 0; i < 10; i++) {
                        squats[n] = shmget((key_t) channel_derive_key(test_secret, name, i), 4096,
                                           IPC_CREAT | IPC_EXCL | 0600);
                        ck_assert_int_ge(squats[n], 0);
                        n++;
                }
        }
        a_channels(config, 4096);
        ck_assert_msg(test_daemon_start(&td, &status, "--state-dir", state, NULL), "no start (%d)", status);

        a_channels(config, 8192);
        filler = fill_dir(state);
        ck_assert_int_eq(fstat(filler, &st), 0);
        for (k = 0; k < 32 && st.st_size >= 4096; k++) {
                st.st_size -= 4096;
                ck_assert_int_eq(ftruncate(filler, st.st_size), 0);
                resp = request_once("{\"op\":\"reload\"}");
                if (json_is_true(json_object_get(resp, "ok")))
                        break;
                json_decref(resp);
                resp = NULL;
        }
        ck_assert_msg(resp, "no reload accepted with %d pages given back", k);
        list = list_ok();
        ck_assert_msg(json_array_size(json_object_get(list, "channels")) == 11, "the reload accepted with %d page(s) "
                      "given back made %zu of 11 channels", k + 1, json_array_size(json_object_get(list, "channels")));
        json_decref(list);
        json_decref(resp);
        close(filler);
        test_daemon_stop_ok(&td);
        for (int i = 0; i < n; i++)
                ck_assert_int_eq(shmctl(squats[i], IPC_RMID, NULL), 0);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(umount2(state, MNT_DETACH), 0);
}
END_TEST

int main(void) {
        /* Check's tests are pointer variables, not constants: the table lives here. */
        const TestGroup groups[] = {
                { "reload-op", CASE_TIMEOUT, { test_add_remove_keep_change_in_one_reload, test_kept_channel_untouched_byte_for_byte,
                                 test_mode_change_in_place, test_mode_change_with_unnamed_attach,
                                 test_mode_change_with_unnamed_attach_beside_a_holder,
                                 test_reload_warns_of_another_owner,
                                 test_size_change_while_held_replaces,
                                 test_revoking_reload_replaces_held_channel,
                                 test_revoking_reload_reaches_rw_mapping_behind_ro_reopen,
                                 test_reload_keeping_holders_rights_stays_in_place,
                                 test_revoking_crash_restart_replaces_held_channel,
                                 test_revoking_reload_after_crash_restart_replaces_held_channel } },
                { "reload-replace", CASE_TIMEOUT, { test_changed_semaphore_values_replace,
                                                    test_replacement_failed_in_step_3_is_listed_removed } },
                { "reload-toctou", CASE_TIMEOUT, { test_attach_between_plan_and_ipc_set_is_judged,
                                                   test_attach_between_plan_and_ipc_set_key_taken_removes } },
                { "top-level-keys", CASE_TIMEOUT, { test_limits_admin_group_and_socket_at_reload,
                                 test_socket_mode_and_group_apply_at_reload,
                                 test_socket_perms_refused_at_reload_are_applied_by_the_next,
                                 test_socket_perms_at_reload_all_or_nothing,
                                 test_socket_perms_failed_after_narrowing_restore_mode_and_group,
                                 test_socket_perms_at_reload_never_wider_than_both,
                                 test_socket_group_taken_out_goes_back_to_the_directorys,
                                 test_socket_mode_change_leaves_a_hand_set_group,
                                 test_socket_group_of_the_start_taken_out_goes_back_to_binds,
                                 test_socket_group_alone_applies_at_reload,
                                 test_socket_perms_at_reload_never_through_a_symlink } },
                { "refusals", CASE_TIMEOUT, { test_broken_config_changes_nothing, test_reload_needs_root_or_admin_group,
                                test_kernel_limit_refused_whole, test_swap_at_kernel_limit_all_or_nothing,
                                test_replace_attached_at_kernel_limit_keeps_channel,
                                test_foreign_fixed_key_refused_whole, test_fixed_keys_move_between_channels,
                                test_added_broadcast_counts_its_table_at_kernel_limit,
                                test_replaced_broadcast_frees_its_table_at_kernel_limit,
                                test_fixed_key_of_kept_channel, test_socket_changed_then_crash_leaves_nothing,
                                test_files_of_other_daemons_are_left_alone } },
                { "refusals-unreadable", CASE_TIMEOUT, { test_unreadable_config_changes_nothing,
                                                         test_reload_by_primary_group_of_admin_group } },
                { "shared-state-directory", CASE_TIMEOUT, { test_files_of_a_daemon_named_like_a_ledger_are_left_alone } },
                { "restarts", CASE_TIMEOUT, { test_crash_restart_fixed_key_of_adopted_channel,
                                test_crash_restart_fixed_key_of_adopted_table,
                                test_crash_restart_takes_no_table_a_publisher_named,
                                test_socket_changed_by_symlink_swap_then_crash_leaves_nothing,
                                test_previous_run_spares_a_live_daemon_on_its_old_socket,
                                test_socket_option_run_claims_no_configuration,
                                test_stdin_config_run_claims_only_the_resolved_file,
                                test_previous_run_lock_with_a_relative_socket_names_none } },
                { "signals", CASE_TIMEOUT, { test_sighup_during_start_is_not_fatal, test_sigterm_during_start_stops_once_serving,
                               test_sighup_during_start_reloads_once_serving,
                               test_sigint_during_start_removes_everything_made_so_far,
                               test_sighup_reloads_within_a_second,
                               test_sigterm_after_reloads_removes_everything,
                               test_crash_mid_reload_then_restart } },
                { "ftok", CASE_TIMEOUT, { test_ftok_key_follows_a_replaced_file, test_ftok_key_held_names_its_file,
                                          test_crash_restart_names_a_replaced_ftok_file } },
                { "refusals-replace", CASE_TIMEOUT, { test_foreign_fixed_key_of_changed_channel_refused_whole,
                                                      test_foreign_set_at_a_tables_key_refused_whole } },
                { "reload-failures", CASE_TIMEOUT, { test_mode_change_on_removed_set_is_applied,
                                                     test_mode_change_spares_a_foreign_set_with_the_removed_sets_id,
                                                     test_full_state_dir_loses_no_replaced_channel,
                                                     test_full_state_dir_loses_no_replaced_posix_channel,
                                                     test_nearly_full_state_dir_loses_no_replaced_channel,
                                                     test_nearly_full_state_dir_loses_no_replaced_posix_channel } },
                { "reload-state-room", CASE_TIMEOUT, { test_full_state_dir_allows_a_mode_change,
                                                       test_held_derived_keys_are_reserved_for,
                                                       test_reload_killed_in_a_tight_state_dir_restarts,
                                                       test_state_dir_with_room_takes_a_resize,
                                                       test_state_dir_without_fallocate_takes_a_resize } },
        };

        return test_main("reload", groups, sizeof groups / sizeof groups[0], setup, test_teardown);
}
