/*
 * End-to-end tests of posix channels ("kind": "posix"): the real
 * shmbrokerd makes files in /dev/shm, hands them over by name and by
 * descriptor, and removes exactly what it made. Every case runs in a
 * private IPC namespace (the fixture) and a mount namespace of its own
 * with a fresh tmpfs on /dev/shm, so the judge is stat(2), sem_open(3)
 * and a listing of that directory, and the host's /dev/shm never sees
 * anything of ours.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/futex.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/user.h>
#include <sys/xattr.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/broadcast.h"
#include "proto/posix.h"
#include "proto/proto.h"
#include "proto/ring.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 60
#define GID 4321                /* a group no user has: only the numbers matter */
#define NOBODY 65534

#define RAW1 "{\"name\": \"raw1\", \"kind\": \"posix\", \"size\": 5000, \"semaphores\": [1, 0, 5], " \
             "\"group\": \"4321\", \"mode\": \"0640\"}"
#define RING1 "{\"name\": \"ring1\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8, " \
              "\"mode\": \"0600\"}"
#define BC1 "{\"name\": \"bc1\", \"kind\": \"posix\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 8, " \
            "\"subscribers\": 4, \"mode\": \"0640\"}"
#define SV1 "{\"name\": \"sv1\", \"size\": 4096}"

/* The fixture's IPC namespace, and a mount namespace whose /dev/shm is an empty tmpfs of its own. */
static void posix_setup(void) {
        test_setup();
        test_private_mounts();
        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777") == 0, "mount tmpfs: %s", strerror(errno));
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The names in /dev/shm with their inodes, sorted, one a line (malloc'd). */
static char *shm_listing(void) {
        char *names[256], *text = NULL;
        size_t n = 0, len = 0;
        DIR *d = opendir(PSEM_DIR);
        struct dirent *e;
        FILE *f;

        ck_assert_ptr_nonnull(d);
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                        ck_assert_uint_lt(n, 256);
                        ck_assert_int_ge(asprintf(&names[n++], "%s %lu", e->d_name, (unsigned long) e->d_ino), 0);
                }
        closedir(d);
        qsort(names, n, sizeof *names, cmp_str);
        f = open_memstream(&text, &len);
        ck_assert_ptr_nonnull(f);
        for (size_t i = 0; i < n; i++) {
                fprintf(f, "%s\n", names[i]);
                free(names[i]);
        }
        fclose(f);
        return text;
}

static void assert_listing(const char *before) {
        char *now = shm_listing();

        ck_assert_msg(strcmp(before, now) == 0, "/dev/shm was:\n%s\nand is now:\n%s", before, now);
        free(now);
}

/* Stop the daemon: /dev/shm must be as it was before (then before is freed). */
static void stop_and_assert_listing(char *before) {
        test_daemon_stop_ok(&td);
        assert_listing(before);
        free(before);
}

/* Reload over a connection of its own: the answer, to free. */
static json_t *reload_answer(void) {
        int fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\": \"reload\"}");

        close(fd);
        return resp;
}

/* The same, and it must succeed. */
static json_t *reload_ok(void) {
        json_t *resp = reload_answer();

        test_assert_ok(resp);
        return resp;
}

static bool shm_exists(const char *name) {
        char path[256];
        struct stat st;

        snprintf(path, sizeof path, PSEM_DIR "/%s", name);
        return lstat(path, &st) == 0;
}

static struct stat shm_stat(const char *name) {
        char path[256];
        struct stat st;

        snprintf(path, sizeof path, PSEM_DIR "/%s", name);
        ck_assert_msg(lstat(path, &st) == 0, "%s: %s", path, strerror(errno));
        return st;
}

static void assert_file(const char *name, off_t size, uid_t uid, gid_t gid, mode_t mode) {
        struct stat st = shm_stat(name);

        ck_assert_msg(S_ISREG(st.st_mode), "%s is not a regular file", name);
        ck_assert_msg(st.st_size == size, "%s: size %lld, expected %lld", name, (long long) st.st_size,
                      (long long) size);
        ck_assert_msg(st.st_uid == uid && st.st_gid == gid, "%s: owner %u:%u, expected %u:%u", name,
                      (unsigned) st.st_uid, (unsigned) st.st_gid, (unsigned) uid, (unsigned) gid);
        ck_assert_msg((st.st_mode & 07777) == mode, "%s: mode %04o, expected %04o", name,
                      (unsigned) (st.st_mode & 07777), (unsigned) mode);
}

/* A semaphore's value as any program sees it: sem_open() by name, sem_getvalue(). */
static int sem_value_by_name(const char *name) {
        sem_t *s = sem_open(name, 0);
        int v = -1;

        ck_assert_msg(s != SEM_FAILED, "sem_open(%s): %s", name, strerror(errno));
        ck_assert_int_eq(sem_getvalue(s, &v), 0);
        sem_close(s);
        return v;
}

/* Map a whole file of /dev/shm shared, read-write. */
static void *map_name(const char *name, size_t *ret_size) {
        char path[256];
        struct stat st;
        void *a;
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/%s", name);
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(fstat(fd, &st), 0);
        a = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(a, MAP_FAILED);
        close(fd);
        *ret_size = (size_t) st.st_size;
        return a;
}

static char *log_now(void) {
        return test_daemon_log(&td);
}

/* Start td's daemon, which must fail (else: "the daemon started, though <why_not>" and its log); its log, to free. */
static char *start_fails(const char *why_not) {
        int status;

        ck_assert_msg(!test_daemon_start(&td, &status, NULL), "the daemon started, though %s:\n%s", why_not, log_now());
        td.pid = -1;
        return log_now();
}

/* The list answer of td's daemon, asked on a connection of its own. */
static json_t *list_now(void) {
        int fd = test_connect(td.socket);
        json_t *list = test_request(fd, "{\"op\": \"list\"}");

        close(fd);
        return list;
}

/* Plant somebody else's file at path (content, owner nobody, an old mtime); its stat in *ret. */
static void plant(const char *path, struct stat *ret) {
        struct timespec times[2] = { { .tv_sec = 1000000000 }, { .tv_sec = 1000000000 } };
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(write(fd, "planted\n", 8), 8);
        ck_assert_int_eq(fchown(fd, NOBODY, NOBODY), 0);
        ck_assert_int_eq(futimens(fd, times), 0);
        close(fd);
        ck_assert_int_eq(lstat(path, ret), 0);
}

static void assert_unchanged(const char *path, const struct stat *a) {
        struct stat b;

        ck_assert_msg(lstat(path, &b) == 0, "%s is gone", path);
        ck_assert_msg(a->st_ino == b.st_ino && a->st_uid == b.st_uid && a->st_mode == b.st_mode &&
                      a->st_size == b.st_size && b.st_mtim.tv_sec == 1000000000 &&
                      a->st_ctim.tv_sec == b.st_ctim.tv_sec && a->st_ctim.tv_nsec == b.st_ctim.tv_nsec,
                      "%s was touched", path);
}

/* ------------------------------------------------------------------------ */

/* Files with the configured size, owner, group, mode and initial values, as the kernel and sem_open() see them. */
START_TEST(test_files_made) {
        size_t size;
        const PosixSemFile *s;
        const RingHolder *holders;
        const RingHeader *ring;
        char *before = shm_listing();

        test_daemon_write_config(&td, "[" RAW1 ", " RING1 ", " BC1 "]");
        test_start_ok();

        assert_file("shmbroker.raw1", 5000, 0, GID, 0640);
        for (unsigned i = 0; i < 3; i++) {
                char name[64];

                snprintf(name, sizeof name, "sem.shmbroker.raw1.%u", i);
                assert_file(name, (off_t) sizeof(PosixSemFile), 0, GID, 0640);
        }
        /* Its lock holder table: a file of the daemon's own, whatever the channel's owner, group and mode. */
        assert_file("shmbroker-table.raw1", (off_t) PSEM_TABLE_SIZE, 0, 0, 0600);
        ck_assert_uint_eq(PSEM_TABLE_SIZE, PSEM_HOLDERS * sizeof(RingHolder));
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.0"), 1);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.1"), 0);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.2"), 5);
        ck_assert(!shm_exists("sem.shmbroker.raw1.3"));

        /* The broker's fields behind the sem_t: a free lock, nobody asleep on it. */
        s = map_name("sem.shmbroker.raw1.0", &size);
        ck_assert_uint_eq(s->magic, PSEM_MAGIC);
        ck_assert_uint_eq(s->version, PSEM_VERSION);
        ck_assert_uint_eq(s->state, PSEM_STATE_LIVE);
        ck_assert_uint_eq(s->lock, 0);
        ck_assert_uint_eq(s->reserved3, 0);
        munmap((void *) s, size);
        /* No holder yet. */
        holders = map_name("shmbroker-table.raw1", &size);
        for (unsigned i = 0; i < PSEM_HOLDERS; i++)
                ck_assert_uint_eq(holders[i].word, 0);
        munmap((void *) holders, size);

        /* A ring: its header in the file, its reserved semaphore free. */
        assert_file("shmbroker.ring1", (off_t) ring_segment_size(64, 8), 0, 0, 0600);
        assert_file("sem.shmbroker.ring1.0", (off_t) sizeof(PosixSemFile), 0, 0, 0600);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.ring1.0"), 1);
        ring = map_name("shmbroker.ring1", &size);
        ck_assert(ring_header_is_ours(ring));
        ck_assert_uint_eq(ring->slots, 8);
        munmap((void *) ring, size);

        /* A broadcast channel: its table beside it, read and write wherever the channel may be read. */
        assert_file("shmbroker.bc1", (off_t) bcast_segment_size(64, 8, 4), 0, 0, 0640);
        assert_file("shmbroker-table.bc1", bcast_table_size(4), 0, 0, bcast_table_mode(0640));
        assert_file("sem.shmbroker.bc1.0", (off_t) sizeof(PosixSemFile), 0, 0, 0640);

        stop_and_assert_listing(before);
}
END_TEST

/* status and list: kind and names, no keys and no kernel figures POSIX does not have; stat agrees. */
START_TEST(test_status_list) {
        int fd;
        json_t *resp, *e, *sems;
        struct stat st;
        char mode[8];

        test_daemon_write_config(&td, "[" RAW1 ", " BC1 ", " SV1 "]");
        test_start_ok();
        fd = test_connect(td.socket);

        resp = test_request(fd, "{\"op\": \"status\"}");
        test_assert_ok(resp);
        e = test_must_find(resp, "raw1");
        ck_assert_str_eq(test_jstr(e, "kind"), "posix");
        ck_assert_str_eq(test_jstr(e, "shm_name"), "/shmbroker.raw1");
        sems = json_object_get(e, "sem_names");
        ck_assert_uint_eq(json_array_size(sems), 3);
        ck_assert_str_eq(json_string_value(json_array_get(sems, 2)), "/shmbroker.raw1.2");
        ck_assert_int_eq(test_jint(e, "size"), 5000);
        for (const char *const *k = (const char *const[]) { "nattch", "cpid", "lpid", "atime", "dtime", "ctime",
                                                             "shm_key", "shm_id", "sem_key", "sem_id", NULL };
             *k; k++)
                ck_assert_msg(!json_object_get(e, *k), "posix status has \"%s\"", *k);
        /* What ls -l says is what status says. */
        st = shm_stat("shmbroker.raw1");
        ck_assert_str_eq(test_jstr(e, "owner"), "root");
        ck_assert_str_eq(test_jstr(e, "group"), "4321");
        ck_assert_uint_eq(st.st_gid, GID);
        snprintf(mode, sizeof mode, "%04o", (unsigned) (st.st_mode & 0777));
        ck_assert_str_eq(test_jstr(e, "mode"), mode);
        sems = json_object_get(e, "semaphores");
        ck_assert_uint_eq(json_array_size(sems), 3);
        ck_assert_int_eq(test_jint(json_array_get(sems, 0), "value"), 1);
        ck_assert_int_eq(test_jint(json_array_get(sems, 2), "value"), 5);
        ck_assert_ptr_null(json_object_get(json_array_get(sems, 0), "ncount"));
        /* A value changed by any program shows. */
        {
                sem_t *s = sem_open("/shmbroker.raw1.2", 0);

                ck_assert_ptr_ne(s, SEM_FAILED);
                ck_assert_int_eq(sem_post(s), 0);
                sem_close(s);
        }
        json_decref(resp);
        resp = test_request(fd, "{\"op\": \"status\", \"channel\": \"raw1\"}");
        e = test_must_find(resp, "raw1");
        ck_assert_int_eq(test_jint(json_array_get(json_object_get(e, "semaphores"), 2), "value"), 6);
        json_decref(resp);

        resp = test_request(fd, "{\"op\": \"status\", \"channel\": \"bc1\"}");
        e = test_must_find(resp, "bc1");
        ck_assert_str_eq(test_jstr(e, "table_name"), "/shmbroker-table.bc1");
        json_decref(resp);

        resp = test_request(fd, "{\"op\": \"list\"}");
        e = test_must_find(resp, "raw1");
        ck_assert_str_eq(test_jstr(e, "kind"), "posix");
        ck_assert_str_eq(test_jstr(e, "shm_name"), "/shmbroker.raw1");
        ck_assert_uint_eq(json_array_size(json_object_get(e, "sem_names")), 3);
        ck_assert_ptr_null(json_object_get(e, "shm_key"));
        e = test_must_find(resp, "sv1");
        ck_assert_str_eq(test_jstr(e, "kind"), "sysv");
        ck_assert_ptr_nonnull(json_object_get(e, "shm_key"));
        json_decref(resp);
        close(fd);
}
END_TEST

static void assert_fd_is(int fd, const char *name, int accmode) {
        struct stat a, b = shm_stat(name);
        int fl = fcntl(fd, F_GETFL);

        ck_assert_int_ge(fl, 0);
        ck_assert_msg((fl & O_ACCMODE) == accmode, "%s: access mode %d, expected %d", name, fl & O_ACCMODE, accmode);
        ck_assert_int_eq(fstat(fd, &a), 0);
        ck_assert_msg(a.st_dev == b.st_dev && a.st_ino == b.st_ino, "descriptor is not %s", name);
}

/* fds[0..1] are the wake-up FIFOs the answer names, read-write. */
static void assert_fifo_fds(const int *fds, json_t *resp) {
        json_t *paths = json_object_get(resp, "wake_fifos");

        ck_assert_msg(json_array_size(paths) == 2, "the answer names no wake-up FIFOs");
        for (size_t i = 0; i < 2; i++) {
                struct stat a, b;
                int fl = fcntl(fds[i], F_GETFL);

                ck_assert_int_ge(fl, 0);
                ck_assert_int_eq(fl & O_ACCMODE, O_RDWR);
                ck_assert_int_eq(fstat(fds[i], &a), 0);
                ck_assert_int_eq(stat(json_string_value(json_array_get(paths, i)), &b), 0);
                ck_assert(S_ISFIFO(a.st_mode));
                ck_assert_msg(a.st_dev == b.st_dev && a.st_ino == b.st_ino, "descriptor %zu is not %s", i,
                              json_string_value(json_array_get(paths, i)));
        }
}

static void close_all(int *fds, size_t n) {
        for (size_t i = 0; i < n; i++)
                close(fds[i]);
}

/* "fd": true hands over the files in order, rw or ro as asked, and mmap() enforces it. */
START_TEST(test_open_fds) {
        int fd, fds[PROTO_FDS_MAX];
        size_t n;
        json_t *resp;
        char *w, *r;

        test_daemon_write_config(&td, "[" RAW1 ", " BC1 ", " SV1 ", " RING1 "]");
        test_start_ok();
        fd = test_connect(td.socket);

        /* A ring: segment and its semaphore, then its FIFOs for a rw opener only (an ro one may not wait on it). */
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"rw\", \"fd\": true}",
                                fds, PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        ck_assert_uint_eq(n, 4);
        assert_fd_is(fds[0], "shmbroker.ring1", O_RDWR);
        assert_fd_is(fds[1], "sem.shmbroker.ring1.0", O_RDWR);
        assert_fifo_fds(fds + 2, resp);
        json_decref(resp);
        close_all(fds, n);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"ro\", \"fd\": true}",
                                fds, PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        ck_assert_uint_eq(n, 2);
        ck_assert_int_eq(json_integer_value(json_object_get(resp, "fds")), 2);
        assert_fd_is(fds[0], "shmbroker.ring1", O_RDONLY);
        assert_fd_is(fds[1], "sem.shmbroker.ring1.0", O_RDONLY);
        json_decref(resp);
        close_all(fds, n);

        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        ck_assert_uint_eq(n, 5);
        ck_assert_int_eq(test_jint(resp, "fds"), 5);
        ck_assert_str_eq(test_jstr(resp, "kind"), "posix");
        ck_assert_str_eq(test_jstr(resp, "shm_name"), "/shmbroker.raw1");
        ck_assert_ptr_null(json_object_get(resp, "shm_key"));
        /* Nobody opens a raw channel's lock holder table by name: the answer names none. */
        ck_assert_ptr_null(json_object_get(resp, "table_name"));
        json_decref(resp);
        assert_fd_is(fds[0], "shmbroker.raw1", O_RDWR);
        /* Its lock holder table: read-only to an rw opener too (proto/posix.h). */
        assert_fd_is(fds[1], "shmbroker-table.raw1", O_RDONLY);
        assert_fd_is(fds[2], "sem.shmbroker.raw1.0", O_RDWR);
        assert_fd_is(fds[3], "sem.shmbroker.raw1.1", O_RDWR);
        assert_fd_is(fds[4], "sem.shmbroker.raw1.2", O_RDWR);
        w = mmap(NULL, 5000, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
        ck_assert_ptr_ne(w, MAP_FAILED);
        strcpy(w, "through the handed-over descriptor");
        close_all(fds, n);

        /* ro, on a connection of its own: read-only descriptors, which cannot be mapped for writing. */
        {
                int fd2 = test_connect(td.socket);

                resp = test_request_fds(fd2, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"ro\", \"fd\": true}",
                                        fds, PROTO_FDS_MAX, &n);
                test_assert_ok(resp);
                json_decref(resp);
                ck_assert_uint_eq(n, 5);
                for (size_t i = 0; i < n; i++) {
                        char name[64];

                        if (i == 0)
                                strcpy(name, "shmbroker.raw1");
                        else if (i == 1)
                                strcpy(name, "shmbroker-table.raw1");
                        else
                                snprintf(name, sizeof name, "sem.shmbroker.raw1.%zu", i - 2);
                        assert_fd_is(fds[i], name, O_RDONLY);
                }
                errno = 0;
                ck_assert_ptr_eq(mmap(NULL, 5000, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0), MAP_FAILED);
                ck_assert_int_eq(errno, EACCES);
                ck_assert_ptr_eq(mmap(NULL, sizeof(PosixSemFile), PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0),
                                 MAP_FAILED);
                r = mmap(NULL, 5000, PROT_READ, MAP_SHARED, fds[0], 0);
                ck_assert_ptr_ne(r, MAP_FAILED);
                ck_assert_str_eq(r, "through the handed-over descriptor");
                munmap(r, 5000);
                close_all(fds, n);
                close(fd2);
        }
        munmap(w, 5000);

        /* A broadcast channel: segment, table, its semaphore, then its wake-up FIFOs (data, space). */
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"bc1\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        ck_assert_str_eq(test_jstr(resp, "table_name"), "/shmbroker-table.bc1");
        ck_assert_uint_eq(n, 5);
        ck_assert_int_eq(json_integer_value(json_object_get(resp, "fds")), 5);
        assert_fd_is(fds[0], "shmbroker.bc1", O_RDWR);
        assert_fd_is(fds[1], "shmbroker-table.bc1", O_RDWR);
        assert_fd_is(fds[2], "sem.shmbroker.bc1.0", O_RDWR);
        assert_fifo_fds(fds + 3, resp);
        json_decref(resp);
        close_all(fds, n);

        /* A subscriber: read-only segment and semaphore, but the table it writes its cursor to read-write. */
        {
                int fd2 = test_connect(td.socket);

                resp = test_request_fds(fd2, "{\"op\": \"open\", \"channel\": \"bc1\", \"access\": \"ro\", \"fd\": true}",
                                        fds, PROTO_FDS_MAX, &n);
                test_assert_ok(resp);
                ck_assert_uint_eq(n, 5);
                assert_fd_is(fds[0], "shmbroker.bc1", O_RDONLY);
                assert_fd_is(fds[1], "shmbroker-table.bc1", O_RDWR);
                assert_fd_is(fds[2], "sem.shmbroker.bc1.0", O_RDONLY);
                assert_fifo_fds(fds + 3, resp);
                json_decref(resp);
                close_all(fds, n);
                close(fd2);
        }

        /* Without "fd": names only, no descriptors. */
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"ro\"}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        ck_assert_uint_eq(n, 0);
        ck_assert_ptr_null(json_object_get(resp, "fds"));
        ck_assert_str_eq(test_jstr(resp, "shm_name"), "/shmbroker.raw1");
        json_decref(resp);

        /* A System V channel has no descriptors to give: "fd" is ignored, the keys and ids are the way in. */
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"sv1\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        ck_assert_uint_eq(n, 0);
        ck_assert_ptr_null(json_object_get(resp, "fds"));
        ck_assert_str_eq(test_jstr(resp, "kind"), "sysv");
        ck_assert_ptr_nonnull(json_object_get(resp, "shm_id"));
        json_decref(resp);
        close(fd);
}
END_TEST

/* Descriptors travel with their own answer line, however the requests are pipelined. */
START_TEST(test_open_fds_pipelined) {
        const char *req = "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"ro\", \"fd\": true}\n"
                          "{\"op\": \"list\"}\n";
        int fd, fds[PROTO_FDS_MAX];
        size_t n;
        json_t *resp;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        fd = test_connect(td.socket);
        /* Three opens and three lists in one write: each open's answer carries 5, each list's none. */
        {
                char all[512] = "";

                for (int i = 0; i < 3; i++)
                        strcat(all, req);
                test_send(fd, all, strlen(all));
        }
        for (int i = 0; i < 6; i++) {
                resp = test_request_fds(fd, NULL, fds, PROTO_FDS_MAX, &n);
                test_assert_ok(resp);
                if (i % 2 == 0) {
                        ck_assert_msg(n == 5 && json_object_get(resp, "fds"), "answer %d: %zu descriptors", i, n);
                        assert_fd_is(fds[0], "shmbroker.raw1", O_RDONLY);
                        assert_fd_is(fds[4], "sem.shmbroker.raw1.2", O_RDONLY);
                } else
                        ck_assert_msg(n == 0 && json_object_get(resp, "channels"), "answer %d: %zu descriptors", i, n);
                json_decref(resp);
                close_all(fds, n);
        }
        close(fd);
}
END_TEST

typedef struct AccessCase {
        const char *channel, *access;
        uid_t uid;
        gid_t gid, extra_group;
        bool expect_ok;
        /* uid 0 only: capabilities taken out of its effective set, instead of dropping to uid/gid */
        bool root;
        uint64_t drop_caps;
        /* the daemon cannot see the peer's capabilities: its verdict and open(2)'s must differ */
        bool kernel_differs;
        /* a broadcast channel: its table comes read-write to ro openers too, and open(2) must agree on that */
        bool table;
} AccessCase;

/* In a child with dropped privileges: the daemon's answer (with descriptors) and open(2)'s must agree. */
static void access_child(void *userdata) {
        const AccessCase *c = userdata;
        bool rw = strcmp(c->access, "rw") == 0, daemon_ok, kernel_ok;
        int fd, fds[PROTO_FDS_MAX], k;
        char req[256], path[128];
        json_t *resp;
        size_t n;

        if (c->root)
                test_drop_effective_caps(c->drop_caps);
        else
                test_drop_privileges(c->uid, c->gid, c->extra_group);
        fd = test_connect(td.socket);
        snprintf(req, sizeof req, "{\"op\": \"open\", \"channel\": \"%s\", \"access\": \"%s\", \"fd\": true}",
                 c->channel, c->access);
        resp = test_request_fds(fd, req, fds, PROTO_FDS_MAX, &n);
        daemon_ok = json_is_true(json_object_get(resp, "ok"));
        if (!daemon_ok && strcmp(test_jstr(resp, "error"), "EACCES") != 0)
                _exit(13);
        if (daemon_ok && (n == 0 || (fcntl(fds[0], F_GETFL) & O_ACCMODE) != (rw ? O_RDWR : O_RDONLY)))
                _exit(14);
        /* The kernel's own verdict on the same file. */
        snprintf(path, sizeof path, PSEM_DIR "/shmbroker.%s", c->channel);
        k = open(path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        kernel_ok = k >= 0;
        if (k >= 0)
                close(k);
        else if (errno != EACCES)
                _exit(16);
        if (c->table && kernel_ok) {
                snprintf(path, sizeof path, PSEM_DIR "/shmbroker-table.%s", c->channel);
                k = open(path, O_RDWR | O_CLOEXEC);
                kernel_ok = k >= 0;
                if (k >= 0)
                        close(k);
                else if (errno != EACCES)
                        _exit(16);
        }
        if (daemon_ok != kernel_ok && !c->kernel_differs)
                _exit(20);
        if (daemon_ok == kernel_ok && c->kernel_differs)
                _exit(22);
        _exit(daemon_ok == c->expect_ok ? 0 : 21);
}

static void run_access_cases(const AccessCase *cases, size_t n) {
        for (size_t i = 0; i < n; i++) {
                int status = test_in_child(access_child, (void *) &cases[i]);

                ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                              "case %zu (%s %s as %s %u/%u+%u, %#" PRIx64 " dropped): child status %d (20: daemon and "
                              "kernel disagree, 21: wrong verdict, 22: they agree where the daemon cannot know, "
                              "92: capset)", i, cases[i].channel, cases[i].access, cases[i].root ? "root" : "uid",
                              (unsigned) cases[i].uid, (unsigned) cases[i].gid, (unsigned) cases[i].extra_group,
                              cases[i].drop_caps, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
}

#define CAP(c) (UINT64_C(1) << (c))

/*
 * Where the bits refuse, a posix channel's descriptors are the access
 * itself (the client never opens the files): they go only to a peer that
 * open(2) would let in, by the capabilities open(2) looks at
 * (CAP_DAC_OVERRIDE; CAP_DAC_READ_SEARCH for reading), not CAP_IPC_OWNER,
 * which files ignore. And a peer whose capabilities the daemon cannot see
 * gets the bits' verdict, root or not: handed over, the descriptors would
 * give a root process stripped of its capabilities what its own open(2)
 * is refused.
 */
START_TEST(test_capability_is_the_file_rule) {
        static const AccessCase proven[] = {
                { "theirs", "rw", .root = true, .expect_ok = true },
                { "theirs", "rw", .root = true, .drop_caps = CAP(CAP_DAC_OVERRIDE) | CAP(CAP_DAC_READ_SEARCH) },
                { "theirs", "ro", .root = true, .drop_caps = CAP(CAP_DAC_OVERRIDE) | CAP(CAP_DAC_READ_SEARCH) },
                { "theirs", "ro", .root = true, .drop_caps = CAP(CAP_DAC_OVERRIDE), .expect_ok = true },
                { "theirs", "rw", .root = true, .drop_caps = CAP(CAP_DAC_OVERRIDE) },
                /* A subscriber writes its cursor into the table: reading alone is not enough. */
                { "bcx", "ro", .root = true, .drop_caps = CAP(CAP_DAC_OVERRIDE), .table = true },
                { "bcx", "ro", .root = true, .table = true, .expect_ok = true },
        };
        static const AccessCase unseen[] = {
                { "mine", "ro", .root = true, .kernel_differs = true },
                { "mine", "ro", .root = true, .drop_caps = CAP(CAP_DAC_OVERRIDE) | CAP(CAP_DAC_READ_SEARCH) },
        };
        char secret[sizeof td.socket + 8];

        /* A daemon as root reads its peers' /proc: their capabilities are proven. */
        test_daemon_write_config(&td, "[{\"name\": \"theirs\", \"kind\": \"posix\", \"size\": 4096, "
                                      "\"owner\": 65534, \"mode\": \"0600\"},"
                                      " {\"name\": \"bcx\", \"kind\": \"posix\", \"layout\": \"broadcast\", "
                                      "\"slot_size\": 64, \"slots\": 8, \"subscribers\": 4, \"owner\": 65534, "
                                      "\"mode\": \"0600\"}]");
        test_start_ok();
        run_access_cases(proven, sizeof proven / sizeof proven[0]);
        test_daemon_stop_ok(&td);

        /* As the shipped unit runs it, as another user, it cannot read root's /proc/PID/ns/user. */
        snprintf(secret, sizeof secret, "%s.secret", td.socket);
        ck_assert_int_eq(unlink(secret), 0);     /* root's, from the run above: the new user's own or none */
        ck_assert_int_eq(chown(td.dir, NOBODY, NOBODY), 0);
        ck_assert_int_eq(chmod(td.dir, 0711), 0);        /* a peer without CAP_DAC_* must reach the socket */
        td.uid = NOBODY;
        td.gid = NOBODY;
        test_daemon_write_config(&td, "[{\"name\": \"mine\", \"kind\": \"posix\", \"size\": 4096, "
                                      "\"mode\": \"0600\"}]");
        test_start_ok();
        run_access_cases(unseen, sizeof unseen / sizeof unseen[0]);
}
END_TEST

/* ---- a capability the connecting process gained after connect() ---- */

/* Exit statuses of exec_child() (and the verdict byte of its sender). */
enum {
        EXEC_CHILD_IO = 40,             /* connect, hello, fork or the verdict pipe */
        EXEC_CHILD_NO_CAPS,             /* the exec did not give the capability: the case would prove nothing */
        EXEC_CHILD_GRANTED,             /* the daemon handed the files to a process that had no capability */
        EXEC_CHILD_BAD_ANSWER,          /* neither ok nor EACCES */
};

static char exec_cap_binary[PATH_MAX];

/* One answer line on fd, its descriptors closed; false on EOF, an error or 5 s without it. */
static bool exec_read_line(int fd, char *buf, size_t size) {
        size_t len = 0;

        while (len + 1 < size) {
                union {
                        struct cmsghdr align;
                        char buf[CMSG_SPACE(sizeof(int) * PROTO_FDS_MAX)];
                } control;
                struct iovec iov = { .iov_base = buf + len, .iov_len = 1 };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                                     .msg_controllen = sizeof control.buf };
                struct pollfd p = { .fd = fd, .events = POLLIN };

                if (poll(&p, 1, 5000) != 1 || recvmsg(fd, &mh, MSG_CMSG_CLOEXEC) != 1)
                        return false;
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                                for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
                                        close(((int *) CMSG_DATA(cm))[i]);
                if (buf[len++] == '\n')
                        break;
        }
        buf[len] = 0;
        return true;
}

/*
 * The sender: a fork of the connecting process, without any capability,
 * that asks on the shared connection once the connecting process runs a
 * binary whose file capabilities give it CAP_DAC_OVERRIDE.
 */
static int exec_sender(int fd, pid_t connecting) {
        static const char req[] = "{\"op\": \"open\", \"channel\": \"secret\", \"access\": \"rw\", \"fd\": true}\n";
        char line[4096];

        for (int i = 0; i < 500 && !test_pid_cap_effective(connecting, CAP_DAC_OVERRIDE); i++)
                usleep(10000);
        if (!test_pid_cap_effective(connecting, CAP_DAC_OVERRIDE) || test_pid_cap_effective(getpid(), CAP_DAC_OVERRIDE))
                return EXEC_CHILD_NO_CAPS;
        if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t) strlen(req) || !exec_read_line(fd, line, sizeof line))
                return EXEC_CHILD_IO;
        if (strstr(line, "\"ok\":true"))
                return EXEC_CHILD_GRANTED;
        return strstr(line, "\"error\":\"EACCES\"") ? 0 : EXEC_CHILD_BAD_ANSWER;
}

static void exec_child(void *userdata) {
        static const char hello[] = "{\"op\": \"hello\", \"version\": 1}\n";
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char line[256], v = EXEC_CHILD_IO;
        int verdict[2], status;
        struct pollfd p;
        pid_t conn;

        test_drop_privileges(4242, 4242, 0);
        if (pipe2(verdict, O_CLOEXEC) < 0)
                _exit(EXEC_CHILD_IO);
        conn = fork();
        if (conn < 0)
                _exit(EXEC_CHILD_IO);
        if (conn == 0) {
                /* Not close-on-exec: the binary run below keeps the connection, as any program does by default. */
                int fd = socket(AF_UNIX, SOCK_STREAM, 0);
                pid_t sender;

                strcpy(sa.sun_path, td.socket);
                /* A request answered first: the daemon has seen this peer before it gains anything. */
                if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0 ||
                    send(fd, hello, strlen(hello), MSG_NOSIGNAL) != (ssize_t) strlen(hello) ||
                    !exec_read_line(fd, line, sizeof line) || !strstr(line, "\"ok\":true"))
                        _exit(EXEC_CHILD_IO);
                sender = fork();
                if (sender < 0)
                        _exit(EXEC_CHILD_IO);
                if (sender == 0) {
                        char r = (char) exec_sender(fd, getppid());

                        _exit(write(verdict[1], &r, 1) == 1 ? 0 : EXEC_CHILD_IO);
                }
                execl(exec_cap_binary, "sleep", "30", (char *) NULL);
                _exit(EXEC_CHILD_IO);
        }
        close(verdict[1]);
        p = (struct pollfd) { .fd = verdict[0], .events = POLLIN };
        if (poll(&p, 1, 20000) != 1 || read(verdict[0], &v, 1) != 1)
                v = EXEC_CHILD_IO;
        (void) kill(conn, SIGKILL);
        (void) waitpid(conn, &status, 0);
        _exit(v);
}

/*
 * The access rule judges the peer's credentials from connect time
 * (shmbroker-protocol(7)): a process that connects without a capability,
 * then runs a binary whose file capabilities give it CAP_DAC_OVERRIDE
 * (keeping the connection, as exec does), must not let a fork of it that
 * never had the capability take a posix channel's files through that
 * connection, where that fork's own open(2) is refused.
 */
START_TEST(test_capability_gained_by_exec_after_connect_does_not_count) {
        static const char sleep_paths[][16] = { "/bin/sleep", "/usr/bin/sleep" };
        struct vfs_cap_data caps = {
                .magic_etc = VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
                .data[CAP_DAC_OVERRIDE / 32].permitted = 1u << (CAP_DAC_OVERRIDE % 32),
        };
        char cmd[PATH_MAX + 64], out[256], dir[PATH_MAX];
        int status, k = -1;

        /* A tmpfs of its own, where file capabilities work whatever /tmp is mounted with (nosuid). */
        ck_assert_int_lt(snprintf(dir, sizeof dir, "%s/caps", td.dir), (int) sizeof dir);
        ck_assert_int_eq(mkdir(dir, 0755), 0);
        ck_assert_int_eq(unshare(CLONE_NEWNS), 0);
        ck_assert_int_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
        ck_assert_msg(mount("tmpfs", dir, "tmpfs", 0, "mode=0755") == 0, "mount: %s", strerror(errno));
        ck_assert_int_lt(snprintf(exec_cap_binary, sizeof exec_cap_binary, "%s/capsleep", dir),
                         (int) sizeof exec_cap_binary);
        for (size_t i = 0; i < sizeof sleep_paths / sizeof sleep_paths[0] && k != 0; i++) {
                snprintf(cmd, sizeof cmd, "cp %s %s", sleep_paths[i], exec_cap_binary);
                k = test_run(out, sizeof out, "%s", cmd);
        }
        ck_assert_msg(k == 0, "no sleep binary to copy: %s", out);
        ck_assert_int_eq(chmod(exec_cap_binary, 0755), 0);
        ck_assert_msg(setxattr(exec_cap_binary, "security.capability", &caps, sizeof caps, 0) == 0,
                      "setxattr security.capability: %s", strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"secret\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0600\"}]");
        test_start_ok();
        status = test_in_child(exec_child, NULL);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "child status %d (41: the exec gave no capability, 42: the daemon handed a process without "
                      "CAP_DAC_OVERRIDE the files of a 0600 channel, 43: neither ok nor EACCES)",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        ck_assert_int_eq(umount2(dir, MNT_DETACH), 0);
}
END_TEST

/* Who may open a posix channel: the files' owner, group and mode, as open(2) decides. */
START_TEST(test_access_follows_file_rule) {
        static const char channels[] =
                "[{\"name\": \"shared\", \"kind\": \"posix\", \"size\": 4096, \"group\": 4242, \"mode\": \"0660\"},"
                " {\"name\": \"public\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0644\"},"
                " {\"name\": \"private\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0600\"},"
                " {\"name\": \"theirs\", \"kind\": \"posix\", \"size\": 4096, \"owner\": 65534, \"mode\": \"0400\"}]";
        AccessCase cases[] = {
                { "shared", "rw", NOBODY, NOBODY, 0, false },   /* other: no bits */
                { "shared", "ro", NOBODY, NOBODY, 0, false },
                { "shared", "rw", NOBODY, NOBODY, 4242, true }, /* supplementary group */
                { "shared", "rw", NOBODY, 4242, 0, true },      /* primary group */
                { "public", "ro", NOBODY, NOBODY, 0, true },    /* other: r-- */
                { "public", "rw", NOBODY, NOBODY, 0, false },
                { "private", "ro", NOBODY, 4242, 4242, false },
                { "theirs", "ro", NOBODY, NOBODY, 0, true },    /* the owner: r-- */
                { "theirs", "rw", NOBODY, NOBODY, 0, false },
        };

        test_daemon_write_config(&td, channels);
        test_start_ok();
        run_access_cases(cases, sizeof cases / sizeof cases[0]);
}
END_TEST

/*
 * A daemon in a user namespace that maps only some ids (in a container)
 * is told a peer's unmapped uid and groups as the overflow ids
 * (kernel.overflowuid/overflowgid, 65534): SO_PEERCRED and SO_PEERGROUPS
 * say so, open(2) never does, as it compares the real ids. Such a peer is
 * neither the owner nor in the group of a file whose owner or group is
 * 65534 in the daemon's namespace, and the descriptors are the access
 * itself: the daemon must refuse it as open(2) does. (A peer that really
 * is in group 65534 cannot be told from one, and is refused too.)
 */
START_TEST(test_unmapped_peer_is_not_the_overflow_id) {
        static const char channels[] =
                "[{\"name\": \"nogroup\", \"kind\": \"posix\", \"size\": 4096, \"group\": 65534, \"mode\": \"0660\"},"
                " {\"name\": \"nobody\", \"kind\": \"posix\", \"size\": 4096, \"owner\": 65534, \"mode\": \"0600\"}]";
        AccessCase cases[] = {
                { "nogroup", "rw", 4242, 4242, 0, false },      /* uid and gid unmapped there: both shown as 65534 */
                { "nogroup", "ro", 4242, 4242, 0, false },
                { "nobody", "ro", 4242, 4242, 0, false },
                { "nobody", "rw", 4242, 4242, 0, false },
                /* Really in group 65534 (mapped): open(2) lets it in, the daemon cannot know. */
                { "nogroup", "rw", 4242, 4242, NOBODY, false, .kernel_differs = true },
        };

        /* Maps root and 65534 only, as a container maps a range: 4242 is no id there. */
        td.userns_map = "0 0 1000\n65534 65534 1\n";
        test_daemon_write_config(&td, channels);
        test_start_ok();
        assert_file("shmbroker.nogroup", 4096, 0, NOBODY, 0660);
        run_access_cases(cases, sizeof cases / sizeof cases[0]);
}
END_TEST

/* The daemon as nobody (its directory made nobody's), serving posix channel "mine", 0640, as its own. */
static void start_as_nobody_with_mine(void) {
        ck_assert_int_eq(chown(td.dir, NOBODY, NOBODY), 0);
        ck_assert_int_eq(chmod(td.dir, 0700), 0);
        td.uid = NOBODY;
        td.gid = NOBODY;
        test_daemon_write_config(&td, "[{\"name\": \"mine\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0640\"}]");
        test_start_ok();
        assert_file("shmbroker.mine", 4096, NOBODY, NOBODY, 0640);
}

/*
 * A daemon without privileges (as the shipped unit runs it) gives files
 * its own user and group; another group needs CAP_CHOWN, and the start
 * says so and leaves nothing behind.
 */
START_TEST(test_unprivileged_daemon) {
        char *before = shm_listing(), *log;

        start_as_nobody_with_mine();
        assert_file("sem.shmbroker.mine.0", (off_t) sizeof(PosixSemFile), NOBODY, NOBODY, 0640);
        /* The lock holder table stays the daemon's own, 0600: its user's, as an unprivileged daemon is. */
        assert_file("shmbroker-table.mine", (off_t) PSEM_TABLE_SIZE, NOBODY, NOBODY, 0600);
        test_daemon_stop_ok(&td);
        assert_listing(before);

        test_daemon_write_config(&td, "[{\"name\": \"mine\", \"kind\": \"posix\", \"size\": 4096}, " RAW1 "]");
        log = start_fails("it must refuse this start");
        ck_assert_msg(strstr(log, "CAP_CHOWN") && strstr(log, "\"raw1\""), "the log does not say why:\n%s", log);
        free(log);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * A daemon without CAP_DAC_OVERRIDE (the shipped unit's) reopens a posix
 * channel's files for each opener with the opener's access, which the
 * kernel checks against the daemon's own class of the mode: a mode that
 * gives the daemon's user (the files' owner) less than others ("0066")
 * could be opened by others but never handed out. The start refuses it and
 * says what to change, and a reload to such a mode changes nothing; a mode
 * that gives the owner as much ("0666") is served to others.
 */
START_TEST(test_unprivileged_daemon_refuses_a_mode_it_cannot_serve) {
        char *before = shm_listing(), *log;
        int status = 0, fd, fds[PROTO_FDS_MAX];
        json_t *resp;
        size_t n = 0;
        pid_t pid;

        ck_assert_int_eq(chown(td.dir, NOBODY, NOBODY), 0);
        ck_assert_int_eq(chmod(td.dir, 0711), 0);
        td.uid = NOBODY;
        td.gid = NOBODY;
        test_daemon_write_config(&td, "[{\"name\": \"o\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0066\"}]");
        log = start_fails("it must refuse this start");
        ck_assert_msg(strstr(log, "mode 0066") && strstr(log, "CAP_DAC_OVERRIDE"), "the log does not say why:\n%s", log);
        free(log);
        assert_listing(before);

        test_daemon_write_config(&td, "[{\"name\": \"o\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0666\"}]");
        test_start_ok();
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                test_drop_privileges(4242, 4242, 0);
                fd = test_connect(td.socket);
                resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"o\", \"access\": \"rw\", \"fd\": true}",
                                        fds, PROTO_FDS_MAX, &n);
                _exit(json_is_true(json_object_get(resp, "ok")) && n == 3 ? 0 : 1);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "another user was not handed the files:\n%s",
                      log_now());

        test_daemon_write_config(&td, "[{\"name\": \"o\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0460\"}]");
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"reload\"}");
        close(fd);
        test_assert_error(resp, "EPERM");
        ck_assert_msg(strstr(test_jstr(resp, "message"), "mode 0460"), "%s", test_jstr(resp, "message"));
        json_decref(resp);
        assert_file("shmbroker.o", 4096, NOBODY, NOBODY, 0666);
        test_daemon_stop_ok(&td);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * The daemon's open descriptors that are not sockets, counted in /proc: the
 * files and FIFOs it opens for answers. Not its sockets: its STATUS= to
 * systemd comes from a timer a second after the figures change, on a
 * socket of its own for each message (notify.c), open while it sends,
 * whenever that falls.
 */
static int daemon_file_count(void) {
        char path[64], target[64];
        struct dirent *e;
        int n = 0;
        DIR *d;

        snprintf(path, sizeof path, "/proc/%d/fd", (int) td.pid);
        d = opendir(path);
        ck_assert_ptr_nonnull(d);
        while ((e = readdir(d))) {
                ssize_t len;

                if (e->d_name[0] == '.')
                        continue;
                len = readlinkat(dirfd(d), e->d_name, target, sizeof target - 1);
                /* Closed since readdir() saw it: not open now. */
                if (len < 0 && errno == ENOENT)
                        continue;
                ck_assert_int_ge(len, 0);
                target[len] = 0;
                n += strncmp(target, "socket:", 7) != 0;
        }
        closedir(d);
        return n;
}

/* The daemon's open descriptors, counted in /proc. */
static int daemon_fd_count(void) {
        char path[64];
        struct dirent *e;
        int n = 0;
        DIR *d;

        snprintf(path, sizeof path, "/proc/%d/fd", (int) td.pid);
        d = opendir(path);
        ck_assert_ptr_nonnull(d);
        while ((e = readdir(d)))
                n += e->d_name[0] != '.';
        closedir(d);
        return n;
}

/*
 * A client that asks for descriptors and never reads holds at most one
 * answer's worth in the daemon, and none once gone. Answers that fit in the
 * socket leave the daemon with their descriptors at once, so the socket is
 * filled first (lists of 100 channels, more than it takes, far less than
 * output_max): the first descriptor answer then waits in the daemon, and
 * the requests behind it must wait for it to go.
 */
START_TEST(test_open_fds_unread) {
        const char *req = "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"ro\", \"fd\": true}\n";
        size_t len = 0, cap = 16384;
        char *text = malloc(cap);
        int fd, base, held = 0;
        int64_t deadline;
        json_t *resp;

        ck_assert_ptr_nonnull(text);
        len += (size_t) snprintf(text + len, cap - len, "{\"version\": 1, \"socket\": \"%s\", "
                                 "\"limits\": {\"output_max\": 67108864, \"buffers_per_uid\": 134217728}, "
                                 "\"channels\": [" RAW1, td.socket);
        for (int i = 0; i < 100; i++)
                len += (size_t) snprintf(text + len, cap - len, ", {\"name\": \"c%d\", \"size\": 4096}", i);
        ck_assert_uint_lt(len + 4, cap);
        snprintf(text + len, cap - len, "]}\n");
        test_daemon_write_raw_config(&td, text);
        free(text);
        test_start_ok();
        fd = test_connect(td.socket);
        /* A request answered: the connection is accepted and counted before the baseline. */
        resp = test_request(fd, "{\"op\": \"hello\", \"version\": 1}");
        test_assert_ok(resp);
        json_decref(resp);
        base = daemon_fd_count();
        for (int i = 0; i < 64; i++)
                test_send(fd, "{\"op\": \"list\"}\n", 15);
        for (int i = 0; i < 200; i++)
                test_send(fd, req, strlen(req));
        /* The first descriptor answer waits behind the lists, with its 5 descriptors; no more come. */
        for (deadline = test_now_ms() + 5000; held < 5 && test_now_ms() < deadline; usleep(10 * 1000)) {
                held = daemon_fd_count() - base;
                ck_assert_msg(held >= 0 && held <= 5, "the daemon holds %d descriptors for an unread client", held);
        }
        ck_assert_msg(held == 5, "the daemon never held the first answer's descriptors (%d)", held);
        for (int i = 0; i < 20; i++) {
                held = daemon_fd_count() - base;
                ck_assert_msg(held == 5, "the daemon holds %d descriptors for an unread client", held);
                usleep(10 * 1000);
        }
        close(fd);
        /* Gone: the connection and every descriptor held for it are closed. */
        for (deadline = test_now_ms() + 5000; daemon_fd_count() >= base && test_now_ms() < deadline;)
                usleep(10 * 1000);
        ck_assert_int_eq(daemon_fd_count(), base - 1);
}
END_TEST

/*
 * A refused open hands nothing over, and keeps nothing: the files opened to
 * be handed with it are closed with the refusal. Here the one subscriber a
 * broadcast channel takes is live, so each further subscription is EUSERS
 * (shmbroker-protocol(7)) after the daemon opened the channel's files.
 */
START_TEST(test_refused_open_keeps_no_descriptors) {
        const char *sub = "{\"op\": \"open\", \"channel\": \"one\", \"access\": \"ro\", \"fd\": true}";
        int fds[PROTO_FDS_MAX], a, b, base = -1;
        size_t n_fds = 0;
        json_t *resp;

        test_daemon_write_config(&td, "[{\"name\": \"one\", \"kind\": \"posix\", \"layout\": \"broadcast\", "
                                      "\"slot_size\": 64, \"slots\": 8, \"subscribers\": 1, \"mode\": \"0600\"}]");
        test_start_ok();
        a = test_connect(td.socket);
        resp = test_request_fds(a, sub, fds, PROTO_FDS_MAX, &n_fds);
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_uint_gt(n_fds, 0);
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        b = test_connect(td.socket);
        /* The baseline after b's first refusal: b is accepted, and its process pinned (a pidfd kept). */
        for (int i = 0; i < 9; i++) {
                if (i == 1)
                        base = daemon_file_count();
                n_fds = 0;
                resp = test_request_fds(b, sub, fds, PROTO_FDS_MAX, &n_fds);
                test_assert_error(resp, "EUSERS");
                json_decref(resp);
                ck_assert_uint_eq(n_fds, 0);
        }
        /* Each refusal was answered after its files were closed: no wait needed. */
        ck_assert_int_eq(daemon_file_count(), base);
        close(b);
        close(a);
}
END_TEST

/*
 * shmbrokerd(8): the descriptors of answers a user has not read count
 * against a quarter of the daemon's open-file limit, one answer's worth at
 * least (PROTO_FDS_MAX, 66, with a limit of 256 here). An answer of 63
 * unread leaves 3: a rw open of a ring is its 2 files and its 2 FIFOs, 4
 * in all, which must not be handed over past it; once the first answer is
 * gone, they are.
 */
START_TEST(test_fifos_of_an_open_count_against_the_quarter) {
        const char *hog = "{\"op\": \"open\", \"channel\": \"hog\", \"access\": \"ro\", \"fd\": true}\n";
        const char *ring = "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"rw\", \"fd\": true}";
        struct pollfd p = { .events = POLLIN };
        int fds[PROTO_FDS_MAX], a, b;
        size_t n_fds = 0;
        json_t *resp;

        test_daemon_write_config(&td, "[{\"name\": \"hog\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": 61}, "
                                      RING1 "]");
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=256:256", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        a = test_connect(td.socket);
        b = test_connect(td.socket);
        /* Its answer, with 63 descriptors (segment, lock holder table, 61 semaphores), arrives and is left unread. */
        test_send(a, hog, strlen(hog));
        p.fd = a;
        ck_assert_int_eq(poll(&p, 1, 5000), 1);
        resp = test_request_fds(b, ring, fds, PROTO_FDS_MAX, &n_fds);
        test_assert_error(resp, "EMFILE");
        ck_assert_uint_eq(n_fds, 0);
        json_decref(resp);
        close(a);
        resp = test_request_fds(b, ring, fds, PROTO_FDS_MAX, &n_fds);
        test_assert_ok(resp);
        ck_assert_uint_eq(n_fds, 4);
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        json_decref(resp);
        close(b);
}
END_TEST

/* The config of the descriptor tests: one posix channel of 61 semaphores (63 files with its lock holder table), anyone's. */
static void write_many_config(int connections_per_uid) {
        char *text;

        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", "
                                  "\"limits\": {\"connections_per_uid\": %d}, \"channels\": ["
                                  "{\"name\": \"many\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": 61, "
                                  "\"mode\": \"0666\"}]}\n", td.socket, connections_per_uid), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
}

static const char many_fd_open[] = "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", \"fd\": true}\n";

/*
 * Fork a child that, as uid 65534, runs hoard() (0 when done, or an exit
 * status) and then waits to be killed; once it is done, its pid.
 */
static pid_t hog_start(int (*hoard)(void), int *ret_ready, const char *what) {
        int ready[2], k;
        char c;
        pid_t pid;

        ck_assert_int_eq(pipe(ready), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                close(ready[0]);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                test_drop_privileges(65534, 65534, 0);
                k = hoard();
                if (k != 0)
                        _exit(k);
                if (write(ready[1], "r", 1) != 1)
                        _exit(99);
                pause();
                _exit(0);
        }
        close(ready[1]);
        ck_assert_msg(read(ready[0], &c, 1) == 1, "uid 65534's connections %s", what);
        *ret_ready = ready[0];
        return pid;
}

/* Root is handed the channel's files while `hog` (a child of ours) hoards; then hog goes. */
static void assert_root_is_handed_many(pid_t hog, int ready, const char *hoarding) {
        int fds[PROTO_FDS_MAX], fd = test_connect(td.socket);
        size_t n_fds = 0;
        json_t *resp;

        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n_fds);
        ck_assert_msg(json_is_true(json_object_get(resp, "ok")),
                      "root's open was refused while uid 65534 %s (the daemon holds %d descriptors): %s %s", hoarding,
                      daemon_fd_count(), json_string_value(json_object_get(resp, "error")),
                      json_string_value(json_object_get(resp, "message")));
        ck_assert_uint_eq(n_fds, 2 + 61);      /* the segment, the lock holder table and each semaphore's file */
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        json_decref(resp);
        close(fd);
        kill(hog, SIGKILL);
        waitpid(hog, NULL, 0);
        close(ready);
}

#define FD_HOG_CONNS 16

/* FD_HOG_CONNS connections, each with two opens not read: the first answer's descriptors go, the second's wait. */
static int hoard_held(void) {
        int conns[FD_HOG_CONNS];

        for (int i = 0; i < FD_HOG_CONNS; i++) {
                conns[i] = test_connect(td.socket);
                test_send(conns[i], many_fd_open, sizeof many_fd_open - 1);
                test_send(conns[i], many_fd_open, sizeof many_fd_open - 1);
        }
        for (int i = 0; i < FD_HOG_CONNS; i++) {
                struct pollfd p = { .fd = conns[i], .events = POLLIN };

                if (poll(&p, 1, 5000) != 1)
                        return 2;
        }
        return 0;
}

/*
 * Each connection may leave one answer's descriptors in the daemon by not
 * reading (63 for a channel of 61 semaphores). shmbrokerd(8), LIMITS: one
 * uid's unread answers hold a quarter of the daemon's descriptors at most.
 * uid 65534, within connections_per_uid, must not exhaust the daemon's
 * open-file limit, so that another user can still connect and be handed a
 * channel's descriptors (an attack helper's test: before the limit, root's
 * open failed with EMFILE).
 */
static void unread_descriptors_of_one_uid_leave_room_for_others(const char *wrapper) {
        int ready, prev = -1, now, stable = 0;
        pid_t pid;

        write_many_config(FD_HOG_CONNS);
        /* A modest limit: room for the channel and every connection, not for 64 descriptors each. */
        setenv("TEST_DAEMON_WRAPPER", wrapper, 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        pid = hog_start(hoard_held, &ready, "got no answers");
        /* Until the daemon's descriptors stop moving: every second open answered or refused. */
        for (int64_t deadline = test_now_ms() + 5000; stable < 20 && test_now_ms() < deadline; usleep(10 * 1000)) {
                now = daemon_fd_count();
                stable = now == prev ? stable + 1 : 0;
                prev = now;
        }
        assert_root_is_handed_many(pid, ready, "left 16 connections' answers unread");
}

START_TEST(test_unread_descriptors_of_one_uid_leave_room_for_others) {
        unread_descriptors_of_one_uid_leave_room_for_others("prlimit --nofile=512:512");
}
END_TEST

/*
 * The same under the shipped unit's set-up: the daemon runs as its own
 * unprivileged user (shmbrokerd.service: User=shmbroker, no capabilities).
 * README: "the kernel charges them to the daemon's open-file limit": the
 * descriptors sent and not read yet count, for an unprivileged sender,
 * against its RLIMIT_NOFILE (too_many_unix_fds(): ETOOMANYREFS), so they
 * are part of "one user's unread answers" that "hold a quarter of the
 * daemon's open-file limit at most" too.
 */
START_TEST(test_unread_descriptors_of_one_uid_leave_room_for_others_unprivileged) {
        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        unread_descriptors_of_one_uid_leave_room_for_others(
                "prlimit --nofile=512:512 setpriv --reuid 4242 --regid 4242 --clear-groups --inh-caps=-all "
                "--pdeathsig SIGKILL");
}
END_TEST

/*
 * shmbrokerd(8), LIMITS: past a quarter of the open-file limit "such an
 * open is refused with EMFILE until they read". Read, the room comes back:
 * one connection that reads every answer gets the channel's 63 files again
 * and again, far more often than a quarter (128 of 512) holds.
 */
START_TEST(test_read_answers_give_their_descriptors_room_back) {
        int fds[PROTO_FDS_MAX], fd;
        size_t n_fds = 0;
        char *text;
        json_t *resp;

        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"channels\": ["
                                  "{\"name\": \"many\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": 61, "
                                  "\"mode\": \"0666\"}]}\n", td.socket), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=512:512", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        fd = test_connect(td.socket);
        for (int i = 0; i < 8; i++) {
                resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", \"fd\": true}",
                                        fds, PROTO_FDS_MAX, &n_fds);
                ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "open %d, every answer read: %s %s", i,
                              json_string_value(json_object_get(resp, "error")),
                              json_string_value(json_object_get(resp, "message")));
                for (size_t k = 0; k < n_fds; k++)
                        close(fds[k]);
                json_decref(resp);
        }
        close(fd);
}
END_TEST

/*
 * The same room, given back by answers read on connections that stay open:
 * what a client read is no longer in flight, whichever connection it came
 * by. Four connections of root each take the channel's 63 files in turn and
 * stay open (idle); 4 x 63 is far past a quarter (128 of 512), so each open
 * after the second is answered only if the daemon sees the earlier ones read.
 */
START_TEST(test_read_answers_of_idle_connections_give_their_room_back) {
        int fds[PROTO_FDS_MAX], conns[4];
        size_t n_fds = 0;
        json_t *resp;

        write_many_config(16);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=512:512", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        for (int i = 0; i < 4; i++) {
                conns[i] = test_connect(td.socket);
                resp = test_request_fds(conns[i], "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", "
                                        "\"fd\": true}", fds, PROTO_FDS_MAX, &n_fds);
                ck_assert_msg(json_is_true(json_object_get(resp, "ok")),
                              "open on connection %d, every earlier answer read, the connections idle: %s %s", i,
                              json_string_value(json_object_get(resp, "error")),
                              json_string_value(json_object_get(resp, "message")));
                ck_assert_uint_eq(n_fds, 2 + 61);
                for (size_t k = 0; k < n_fds; k++)
                        close(fds[k]);
                json_decref(resp);
        }
        for (int i = 0; i < 4; i++)
                close(conns[i]);
}
END_TEST

/*
 * shmbrokerd(8), LIMITS: one user's unread answers "hold a quarter of the
 * daemon's open-file limit at most". Under a limit of 512 that is 128: two
 * answers of the channel's 63 files, never a third. Root, on connections
 * that each ask once and only peek at the answer (the files stay unread),
 * gets the files twice, then EMFILE, before any file is opened for it.
 */
START_TEST(test_unread_descriptors_stop_at_a_quarter) {
        int conns[4], granted = 0;

        write_many_config(16);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=512:512", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        for (int i = 0; i < 4; i++) {
                struct pollfd p = { .events = POLLIN };
                char line[1024];
                ssize_t n;

                conns[i] = p.fd = test_connect(td.socket);
                test_send(conns[i], many_fd_open, sizeof many_fd_open - 1);
                ck_assert_int_eq(poll(&p, 1, 10000), 1);
                /* A peek takes no descriptor: they stay in flight, charged to root. */
                n = recv(conns[i], line, sizeof line - 1, MSG_PEEK);
                ck_assert_int_gt(n, 0);
                line[n] = '\0';
                if (strstr(line, "\"ok\":true"))
                        granted++;
                else
                        ck_assert_msg(strstr(line, "\"EMFILE\""), "open %d: %s", i, line);
                ck_assert_msg(granted == (i < 2 ? i + 1 : 2), "after %d opens, %d answers of 63 files in flight: %s",
                              i + 1, granted, line);
        }
        for (int i = 0; i < 4; i++)
                close(conns[i]);
}
END_TEST

/*
 * Start the daemon as uid 4242 with no capabilities (as the shipped unit
 * runs it) and `nofile` descriptors, on the "many" channel with
 * connections_per_uid `per_uid`.
 */
static void start_unprivileged_many(int per_uid, int nofile) {
        char wrapper[200];

        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        write_many_config(per_uid);
        snprintf(wrapper, sizeof wrapper, "prlimit --nofile=%d:%d setpriv --reuid 4242 --regid 4242 --clear-groups "
                 "--inh-caps=-all --pdeathsig SIGKILL", nofile, nofile);
        setenv("TEST_DAEMON_WRAPPER", wrapper, 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
}

#define FD_LEFT_CONNS 100

/* How a hoarding client leaves each connection once it asked for the files; none is read, none closed. */
typedef enum Leave {
        LEAVE_HALF_CLOSED,      /* shut down for writing, before the answer */
        LEAVE_SHUT_DOWN,        /* shut down both ways, after the answer */
        LEAVE_READ_SHUT_DOWN,   /* shut down for reading after the answer, then another request */
} Leave;

/* FD_LEFT_CONNS connections, each asking for the files and left as `how` says. */
static int hoard_and_leave(Leave how) {
        static const char list[] = "{\"op\": \"list\"}\n";

        for (int i = 0; i < FD_LEFT_CONNS; i++) {
                int fd = test_connect(td.socket);
                struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };

                /* Past connections_per_uid the daemon refuses the connection: the send may find it closed. */
                (void) send(fd, many_fd_open, sizeof many_fd_open - 1, MSG_NOSIGNAL);
                if (how == LEAVE_HALF_CLOSED)
                        (void) shutdown(fd, SHUT_WR);
                /* Answered (or refused); the answer stays unread here. */
                if (poll(&p, 1, 5000) != 1)
                        return 3;
                /* Not a close: the socket, and what waits in it, stays. */
                if (how == LEAVE_SHUT_DOWN)
                        (void) shutdown(fd, SHUT_RDWR);
                if (how == LEAVE_READ_SHUT_DOWN) {
                        (void) shutdown(fd, SHUT_RD);
                        /* Its answer cannot be sent (EPIPE): the daemon ends the connection. */
                        (void) send(fd, list, sizeof list - 1, MSG_NOSIGNAL);
                }
        }
        return 0;
}

static int hoard_half_closed(void) {
        return hoard_and_leave(LEAVE_HALF_CLOSED);
}

/*
 * README: a client that does not read "has one answer's worth in flight at
 * most (the kernel charges them to the daemon's open-file limit ...)", and
 * "one user's unread answers hold a quarter of the daemon's open-file limit
 * at most". Under the shipped unit the daemon is unprivileged, and what it
 * sent stays charged to it (ETOOMANYREFS past its RLIMIT_NOFILE) until the
 * receiver reads it or closes its socket, even after the daemon closed its
 * end. uid 65534 asks for the files, half-closes, and keeps each socket
 * unread: had the daemon closed its end once it answered,
 * connections_per_uid (4) would never apply, and the charge would grow
 * without bound. root's open must still get its files.
 */
START_TEST(test_unread_descriptors_of_closed_connections_leave_room_for_others) {
        int ready;
        pid_t pid;

        /* 4096 descriptors: a quarter is 1024, and 100 unread answers of 63 are 6300. */
        start_unprivileged_many(4, 4096);
        pid = hog_start(hoard_half_closed, &ready, "were not answered");
        assert_root_is_handed_many(pid, ready, "left 100 answers unread on half-closed connections");
}
END_TEST

static int hoard_shut_down(void) {
        return hoard_and_leave(LEAVE_SHUT_DOWN);
}

/*
 * The same with the sockets shut down both ways instead of half-closed:
 * the daemon sees a hang-up (EPOLLHUP), but the client's socket is not
 * closed, and the unread descriptors in it stay charged to the daemon
 * (ETOOMANYREFS past its RLIMIT_NOFILE) for as long as the client keeps it.
 * Had the daemon let go of such a connection at the hang-up,
 * connections_per_uid (4) would never apply, and root's open would fail.
 */
START_TEST(test_unread_descriptors_of_shut_down_connections_leave_room_for_others) {
        long ticks;
        int ready;
        pid_t pid;

        /* 4096 descriptors: a quarter is 1024, and 100 unread answers of 63 are 6300. */
        start_unprivileged_many(4, 4096);
        pid = hog_start(hoard_shut_down, &ready, "were not answered");
        ticks = test_cpu_ticks(td.pid);
        usleep(500 * 1000);
        /* Kept for the descriptors, a hung-up connection must not wake the loop for ever (a spin takes all 50). */
        ck_assert_msg(test_cpu_ticks(td.pid) - ticks < 10, "the daemon spun: %ld ticks in 0.5 s",
                      test_cpu_ticks(td.pid) - ticks);
        assert_root_is_handed_many(pid, ready, "left 100 answers unread on shut-down connections");
}
END_TEST

static int hoard_read_shut_down(void) {
        return hoard_and_leave(LEAVE_READ_SHUT_DOWN);
}

/*
 * The same with the sockets shut down for reading only, and a request sent
 * after: the daemon's answer fails (EPIPE), but the first answer's
 * descriptors still wait, readable, in the client's socket.
 */
START_TEST(test_unread_descriptors_of_read_shut_down_connections_leave_room_for_others) {
        int ready;
        pid_t pid;

        start_unprivileged_many(4, 4096);
        pid = hog_start(hoard_read_shut_down, &ready, "were not answered");
        assert_root_is_handed_many(pid, ready, "left 100 answers unread on connections shut down for reading");
}
END_TEST

#define NOBUFS_ROUNDS 25

/*
 * NOBUFS_ROUNDS rounds of: three connections that each ask for the files
 * and leave a line half-sent (a buffer, charged to the uid), answers unread;
 * then an older one that grows past buffers_per_uid, which closes the three
 * (ENOBUFS, newest first), and ends its line. The three stay open, unread.
 */
static int hoard_closed_for_buffers(void) {
        static char big[40000];
        int a = test_connect(td.socket);

        memset(big, 'x', sizeof big);
        for (int round = 0; round < NOBUFS_ROUNDS; round++) {
                struct pollfd p = { .fd = a, .events = POLLIN };
                char line[4096];

                for (int i = 0; i < 3; i++) {
                        struct pollfd q = { .events = POLLIN };

                        q.fd = test_connect(td.socket);
                        (void) send(q.fd, many_fd_open, sizeof many_fd_open - 1, MSG_NOSIGNAL);
                        (void) send(q.fd, "{", 1, MSG_NOSIGNAL);
                        if (poll(&q, 1, 5000) != 1)
                                return 3;
                }
                (void) send(a, big, sizeof big, MSG_NOSIGNAL);
                (void) send(a, "\n", 1, MSG_NOSIGNAL);
                /* Its answer (EBADMSG) says the daemon is through with the round. */
                if (poll(&p, 1, 5000) != 1 || recv(a, line, sizeof line, 0) <= 0)
                        return 4;
        }
        return 0;
}

/*
 * The same with connections closed for their uid's buffers
 * (buffers_per_uid): closed by the daemon, their unread descriptors still
 * wait in the client's sockets, charged to the daemon. Had the daemon let
 * go of them at once, connections_per_uid (4) would never apply to them.
 */
START_TEST(test_unread_descriptors_of_connections_closed_for_buffers_leave_room_for_others) {
        int ready;
        pid_t pid;
        char *text;

        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", "
                                  "\"limits\": {\"connections_per_uid\": 4, \"buffers_per_uid\": 65536}, \"channels\": ["
                                  "{\"name\": \"many\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": 61, "
                                  "\"mode\": \"0666\"}]}\n", td.socket), 0);
        test_daemon_write_raw_config(&td, text);
        free(text);
        /* 4096 descriptors: 25 rounds of three unread answers of 63 are 4725. */
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=4096:4096 setpriv --reuid 4242 --regid 4242 --clear-groups "
               "--inh-caps=-all --pdeathsig SIGKILL", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        pid = hog_start(hoard_closed_for_buffers, &ready, "were not answered");
        assert_root_is_handed_many(pid, ready, "left answers unread on connections closed for its buffers");
}
END_TEST

#define FD_HOG_UIDS 5

/*
 * shmbrokerd(8), LIMITS: the descriptors of one user's unread answers count
 * against a quarter of the daemon's open-file limit, "and everyone else
 * still gets theirs". The kernel's charge is the daemon's, for all users
 * together: FD_HOG_UIDS users (one local user with subordinate uids is as
 * many as it likes), each within its quarter (512 / 4 = 128: two answers
 * of the channel's 63 files), leave 630 unread, past the daemon's 512, and
 * its next SCM_RIGHTS fails (ETOOMANYREFS) whoever it is for. Root, who
 * holds a channel already on its connection, must be handed the files or
 * told why; not lose its connection and, with it, what it held.
 */
START_TEST(test_unread_descriptors_of_many_uids_leave_room_for_others) {
        int ready[2], fds[PROTO_FDS_MAX], fd;
        pid_t pids[FD_HOG_UIDS];
        size_t n_fds = 0;
        json_t *resp;
        char c;

        start_unprivileged_many(16, 512);
        fd = test_connect(td.socket);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", \"fd\": true}",
                                fds, PROTO_FDS_MAX, &n_fds);
        test_assert_ok(resp);
        json_decref(resp);
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        ck_assert_int_eq(pipe(ready), 0);
        for (int u = 0; u < FD_HOG_UIDS; u++) {
                pids[u] = fork();
                ck_assert_int_ge(pids[u], 0);
                if (pids[u] == 0) {
                        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                        close(ready[0]);
                        test_drop_privileges(5000 + (uid_t) u, 5000 + (gid_t) u, 0);
                        /* Two connections, one answer each, peeked at and left unread: 126, within 128. */
                        for (int i = 0; i < 2; i++) {
                                int conn = test_connect(td.socket);
                                struct pollfd p = { .fd = conn, .events = POLLIN };

                                test_send(conn, many_fd_open, sizeof many_fd_open - 1);
                                if (poll(&p, 1, 5000) != 1) {
                                        /* Said, not just exited: the others pause and keep the pipe open. */
                                        if (write(ready[1], "x", 1) != 1)
                                                _exit(99);
                                        _exit(3);
                                }
                        }
                        if (write(ready[1], "r", 1) != 1)
                                _exit(99);
                        pause();
                        _exit(0);
                }
        }
        close(ready[1]);
        /*
         * The kernel's charge is uid 4242's, over every namespace: another
         * process of that uid with descriptors in flight (this test run
         * twice at once) would take from the same 512, and this fails.
         */
        for (int u = 0; u < FD_HOG_UIDS; u++)
                ck_assert_msg(read(ready[0], &c, 1) == 1 && c == 'r',
                              "a hoarding uid's opens were not answered within 5 s");
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", \"fd\": true}",
                                fds, PROTO_FDS_MAX, &n_fds);
        /*
         * Three uids' 378 unread fill all but 6 of the 384 all users may hold
         * (3/4 of 512); the other two were refused. So is root, saying whose
         * descriptors they are: not its own uid's, which has read its answer.
         */
        test_assert_error(resp, "EMFILE");
        ck_assert_msg(strstr(test_jstr(resp, "message"), "the clients hold the descriptors of answers they have "
                                                         "not read"), "root's refusal: %s", test_jstr(resp, "message"));
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        json_decref(resp);
        /* Its first hold is still there: the connection lives. */
        test_assert_lists(fd);
        close(fd);
        for (int u = 0; u < FD_HOG_UIDS; u++) {
                kill(pids[u], SIGKILL);
                waitpid(pids[u], NULL, 0);
        }
        close(ready[0]);
}
END_TEST

/* Open "many" with its files on fd and read the answer: true when handed them (closed at once), else false. */
static bool many_handed(int fd, char *err, size_t err_size) {
        int fds[PROTO_FDS_MAX];
        size_t n_fds = 0;
        json_t *resp;
        bool ok;

        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"many\", \"access\": \"ro\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n_fds);
        ok = json_is_true(json_object_get(resp, "ok"));
        snprintf(err, err_size, "%s %s", json_string_value(json_object_get(resp, "error")) ?: "",
                 json_string_value(json_object_get(resp, "message")) ?: "");
        for (size_t i = 0; i < n_fds; i++)
                close(fds[i]);
        json_decref(resp);
        return ok;
}

/*
 * Root is handed the files on a fresh connection within 5 s: what kept the
 * room may take the daemon a look or two (its retries, its sweeps) to see
 * gone, but never longer.
 */
static void assert_root_is_handed_many_soon(const char *after) {
        char err[512] = "";
        bool ok = false;

        for (int64_t deadline = test_now_ms() + 5000; !ok && test_now_ms() < deadline;) {
                int fd = test_connect(td.socket);

                ok = many_handed(fd, err, sizeof err);
                close(fd);
                if (!ok)
                        usleep(20 * 1000);
        }
        ck_assert_msg(ok, "root's open still refused 5 s after %s: %s", after, err);
}

/* Whether uid 65534 is served a list on a new connection within 5 s (not refused for connections_per_uid). */
static bool nobody_is_served_soon(void) {
        for (int64_t deadline = test_now_ms() + 5000; test_now_ms() < deadline; usleep(20 * 1000)) {
                pid_t pid = fork();
                int status;

                ck_assert_int_ge(pid, 0);
                if (pid == 0) {
                        /* No assertions here: a refusal (EUSERS, then a close) is an answer to try again after. */
                        char line[4096];
                        struct pollfd p = { .events = POLLIN };
                        ssize_t n;

                        test_drop_privileges(65534, 65534, 0);
                        p.fd = test_try_connect(td.socket);
                        if (p.fd < 0 || send(p.fd, "{\"op\": \"list\"}\n", 15, MSG_NOSIGNAL) != 15 ||
                            poll(&p, 1, 5000) != 1 || (n = recv(p.fd, line, sizeof line - 1, 0)) <= 0)
                                _exit(1);
                        line[n] = 0;
                        _exit(strstr(line, "\"error\"") ? 1 : 0);
                }
                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                        return true;
        }
        return false;
}

/*
 * A lingering connection (kept for the descriptors its client has not
 * read) goes when its client closes its socket: those connections count
 * against connections_per_uid, and a uid whose processes closed every
 * socket must be served again. Here uid 65534's hoarder leaves its four
 * connections shut down (a hang-up), then shut down for reading (a send
 * that fails), and is killed each time; then its uid asks again.
 */
START_TEST(test_lingering_connections_go_when_their_client_closes) {
        int (*const hoards[])(void) = { hoard_shut_down, hoard_read_shut_down };
        int ready;
        pid_t pid;

        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        write_many_config(4);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=4096:4096 setpriv --reuid 4242 --regid 4242 --clear-groups "
               "--inh-caps=-all --pdeathsig SIGKILL", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        for (size_t i = 0; i < sizeof hoards / sizeof *hoards; i++) {
                pid = hog_start(hoards[i], &ready, "were not answered");
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                close(ready);
                ck_assert_msg(nobody_is_served_soon(), "uid 65534 refused 5 s after its client (hoard %zu) was killed",
                              i);
        }
}
END_TEST

/*
 * A connection shut down both ways has ended, whatever waits unread in its
 * socket: the holds it took end with it (shmbrokerd(8): a client's holds
 * end when its connection does), though the daemon keeps the socket for
 * the descriptors.
 */
START_TEST(test_shut_down_connection_with_unread_descriptors_ends_its_holds) {
        int fd, lister;
        struct pollfd p = { .events = POLLIN };
        json_t *resp;
        size_t n = SIZE_MAX;

        write_many_config(4);
        test_start_ok();
        lister = test_connect(td.socket);
        fd = p.fd = test_connect(td.socket);
        test_send(fd, many_fd_open, sizeof many_fd_open - 1);
        ck_assert_int_eq(poll(&p, 1, 5000), 1);
        resp = test_request(lister, "{\"op\": \"status\", \"channel\": \"many\"}");
        ck_assert_uint_eq(json_array_size(json_object_get(test_must_find(resp, "many"), "clients")), 1);
        json_decref(resp);
        /* The answer and its 63 files stay unread in the socket. */
        ck_assert_int_eq(shutdown(fd, SHUT_RDWR), 0);
        for (int64_t deadline = test_now_ms() + 5000; n != 0 && test_now_ms() < deadline; usleep(10 * 1000)) {
                resp = test_request(lister, "{\"op\": \"status\", \"channel\": \"many\"}");
                n = json_array_size(json_object_get(test_must_find(resp, "many"), "clients"));
                json_decref(resp);
        }
        ck_assert_msg(n == 0, "a connection shut down both ways still holds the channel");
        close(fd);
        close(lister);
}
END_TEST

/*
 * The budget of all uids together (three quarters of the daemon's
 * open-file limit) counts what clients were sent and have not read: a
 * client that closes its socket with an answer unread frees those
 * descriptors (the kernel drops them with the socket), and they must stop
 * counting. Ten such closes are 630 descriptors, past 384 of 512: root must
 * still be handed the files after.
 */
START_TEST(test_unread_descriptors_of_closed_sockets_stop_counting) {
        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        write_many_config(16);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=512:512 setpriv --reuid 4242 --regid 4242 --clear-groups "
               "--inh-caps=-all --pdeathsig SIGKILL", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        for (int i = 0; i < 10; i++) {
                int fd = test_connect(td.socket);
                struct pollfd p = { .fd = fd, .events = POLLIN };

                test_send(fd, many_fd_open, sizeof many_fd_open - 1);
                ck_assert_int_eq(poll(&p, 1, 5000), 1);
                close(fd);      /* unread */
        }
        assert_root_is_handed_many_soon("ten sockets closed with their answers unread");
}
END_TEST

/*
 * The same budget, given back by answers that other uids read on
 * connections that stay open and idle: their own requests never come to
 * tell the daemon, which must look (it sweeps every connection when the
 * budget runs short). FD_HOG_UIDS users each take two answers (630 in
 * all, past 384 of 512), read them, and stay connected.
 */
START_TEST(test_read_answers_of_other_uids_give_the_budget_back) {
        int ready[2], done[2];
        pid_t pids[FD_HOG_UIDS];
        char c;

        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        write_many_config(16);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=512:512 setpriv --reuid 4242 --regid 4242 --clear-groups "
               "--inh-caps=-all --pdeathsig SIGKILL", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        ck_assert_int_eq(pipe(ready), 0);
        ck_assert_int_eq(pipe(done), 0);
        for (int u = 0; u < FD_HOG_UIDS; u++) {
                pids[u] = fork();
                ck_assert_int_ge(pids[u], 0);
                if (pids[u] == 0) {
                        int conns[2];

                        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                        close(ready[0]);
                        close(done[1]);
                        test_drop_privileges(5000 + (uid_t) u, 5000 + (gid_t) u, 0);
                        /* Asked all at once, before anyone reads: refused ones (EMFILE) are answers too. */
                        for (int i = 0; i < 2; i++) {
                                struct pollfd p = { .events = POLLIN };

                                conns[i] = p.fd = test_connect(td.socket);
                                test_send(conns[i], many_fd_open, sizeof many_fd_open - 1);
                                if (poll(&p, 1, 5000) != 1)
                                        _exit(3);
                        }
                        if (write(ready[1], "r", 1) != 1 || read(done[0], &c, 1) != 0)
                                _exit(99);
                        /* Now read, and stay connected. */
                        for (int i = 0; i < 2; i++) {
                                int fds[PROTO_FDS_MAX];
                                size_t n_fds = 0;
                                json_t *resp = test_request_fds(conns[i], NULL, fds, PROTO_FDS_MAX, &n_fds);

                                for (size_t k = 0; k < n_fds; k++)
                                        close(fds[k]);
                                json_decref(resp);
                        }
                        if (write(ready[1], "r", 1) != 1)
                                _exit(99);
                        pause();
                        _exit(0);
                }
        }
        close(ready[1]);
        close(done[0]);
        for (int u = 0; u < FD_HOG_UIDS; u++)
                ck_assert_msg(read(ready[0], &c, 1) == 1, "a hoarding uid's opens were not answered");
        close(done[1]);         /* read them */
        for (int u = 0; u < FD_HOG_UIDS; u++)
                ck_assert_msg(read(ready[0], &c, 1) == 1, "a hoarding uid did not read its answers");
        assert_root_is_handed_many_soon("every other uid read its answers");
        for (int u = 0; u < FD_HOG_UIDS; u++) {
                kill(pids[u], SIGKILL);
                waitpid(pids[u], NULL, 0);
        }
        close(ready[0]);
}
END_TEST

/*
 * The kernel's charge is per user: another process of the daemon's user
 * that leaves descriptors in flight past the daemon's open-file limit
 * makes the daemon's SCM_RIGHTS fail (ETOOMANYREFS), which no budget of
 * the daemon's can prevent. The client whose answer it was did nothing
 * wrong: its answer waits, and its connection, with its holds, lives.
 */
START_TEST(test_descriptors_in_flight_of_the_daemons_user_hold_an_answer_not_the_connection) {
        int fd, ready[2], sv[2];
        struct pollfd p = { .events = POLLIN };
        char c, err[512];
        pid_t pid;

        ck_assert_int_eq(chown(td.dir, 4242, 4242), 0);
        write_many_config(16);
        setenv("TEST_DAEMON_WRAPPER", "prlimit --nofile=512:512 setpriv --reuid 4242 --regid 4242 --clear-groups "
               "--inh-caps=-all --pdeathsig SIGKILL", 1);
        test_start_ok();
        unsetenv("TEST_DAEMON_WRAPPER");
        fd = p.fd = test_connect(td.socket);
        ck_assert_msg(many_handed(fd, err, sizeof err), "first open: %s", err);
        ck_assert_int_eq(pipe(ready), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int one = open("/dev/null", O_RDONLY | O_CLOEXEC), fds[200];
                union {
                        struct cmsghdr align;
                        char buf[CMSG_SPACE(sizeof fds)];
                } cbuf;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(ready[0]);
                /* Its own limit is high: only the daemon's (512) is passed. */
                if (one < 0 || setrlimit(RLIMIT_NOFILE, &(struct rlimit) { 4096, 4096 }) < 0 ||
                    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                        _exit(2);
                test_drop_privileges(4242, 4242, 0);
                for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
                        fds[i] = one;
                /* 600 in flight, unread, charged to uid 4242. */
                for (int k = 0; k < 3; k++) {
                        struct iovec iov = { .iov_base = "x", .iov_len = 1 };
                        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
                                             .msg_controllen = sizeof cbuf.buf };
                        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

                        cm->cmsg_level = SOL_SOCKET;
                        cm->cmsg_type = SCM_RIGHTS;
                        cm->cmsg_len = CMSG_LEN(sizeof fds);
                        memcpy(CMSG_DATA(cm), fds, sizeof fds);
                        if (sendmsg(sv[0], &mh, 0) != 1)
                                _exit(3);
                }
                if (write(ready[1], "r", 1) != 1)
                        _exit(99);
                pause();
                _exit(0);
        }
        close(ready[1]);
        ck_assert_msg(read(ready[0], &c, 1) == 1, "uid 4242's descriptors could not be put in flight");
        test_send(fd, many_fd_open, sizeof many_fd_open - 1);
        /* Held: nothing comes, the connection does not end (an end would be readable at once). */
        ck_assert_msg(poll(&p, 1, 500) == 0, "the connection answered or ended while the daemon could not send");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(ready[0]);
        /* Freed with the other process's sockets: the held answer goes. */
        {
                int fds[PROTO_FDS_MAX];
                size_t n_fds = 0;
                json_t *resp = test_request_fds(fd, NULL, fds, PROTO_FDS_MAX, &n_fds);

                ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "held open: %s %s",
                              json_string_value(json_object_get(resp, "error")),
                              json_string_value(json_object_get(resp, "message")));
                ck_assert_uint_eq(n_fds, 2 + 61);
                for (size_t i = 0; i < n_fds; i++)
                        close(fds[i]);
                json_decref(resp);
        }
        test_assert_lists(fd);
        close(fd);
}
END_TEST

/*
 * Descriptors a client has not read yet sit in its socket, and the kernel
 * charges them to the daemon's open-file limit: a client that asks for
 * descriptors and never reads them must not run that up. At most one
 * answer's descriptors are in flight per connection; the next answer waits
 * until the client has read what came before, then comes.
 */
START_TEST(test_open_fds_in_flight_bounded) {
        const char *req = "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"ro\", \"fd\": true}\n";
        int fd, fds[PROTO_FDS_MAX], unread = -1;
        char peek[4096], *nl;
        int64_t deadline;
        json_t *resp;
        ssize_t k;
        size_t n;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        fd = test_connect(td.socket);
        for (int i = 0; i < 40; i++)
                test_send(fd, req, strlen(req));
        /* The daemon asleep again has done all it will for now (it was woken by our sends). */
        for (deadline = test_now_ms() + 5000; test_task_state(td.pid, 0) != 'S' && test_now_ms() < deadline;)
                usleep(1000);
        ck_assert_int_eq(test_task_state(td.pid, 0), 'S');
        k = recv(fd, peek, sizeof peek - 1, MSG_PEEK);
        ck_assert_int_gt(k, 0);
        peek[k] = 0;
        nl = strchr(peek, '\n');
        ck_assert_ptr_nonnull(nl);
        ck_assert_int_eq(ioctl(fd, SIOCINQ, &unread), 0);
        ck_assert_msg(unread == nl + 1 - peek, "%d bytes wait unread: more than the first answer's %d",
                      unread, (int) (nl + 1 - peek));
        /* Read, each answer comes, with its own descriptors. */
        for (int i = 0; i < 40; i++) {
                resp = test_request_fds(fd, NULL, fds, PROTO_FDS_MAX, &n);
                test_assert_ok(resp);
                ck_assert_msg(n == 5, "answer %d: %zu descriptors", i, n);
                json_decref(resp);
                close_all(fds, n);
        }
        close(fd);
}
END_TEST

/* A file somebody else put at a channel's name fails the start, and stays exactly as it was. */
static void check_foreign(const char *name) {
        static const char content[] = "somebody else's data\n";
        struct timespec times[2] = { { .tv_sec = 1000000000 }, { .tv_sec = 1000000000 } };
        char path[256], buf[64] = "", *before, *log;
        struct stat a, b;
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/%s", name);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t) strlen(content));
        ck_assert_int_eq(fchown(fd, NOBODY, NOBODY), 0);
        ck_assert_int_eq(fchmod(fd, 0644), 0);
        ck_assert_int_eq(futimens(fd, times), 0);
        close(fd);
        ck_assert_int_eq(lstat(path, &a), 0);
        before = shm_listing();

        test_daemon_write_config(&td, "[" RING1 ", " RAW1 "]");
        log = start_fails("a foreign file is at a name of its own");
        ck_assert_msg(strstr(log, path), "the log does not name %s:\n%s", path, log);
        free(log);

        ck_assert_int_eq(lstat(path, &b), 0);
        ck_assert(a.st_ino == b.st_ino && a.st_uid == b.st_uid && a.st_gid == b.st_gid && a.st_mode == b.st_mode &&
                  a.st_size == b.st_size);
        ck_assert_int_eq(b.st_mtim.tv_sec, 1000000000);
        ck_assert_int_eq(b.st_mtim.tv_nsec, 0);
        ck_assert_int_eq(b.st_ctim.tv_sec, a.st_ctim.tv_sec);
        ck_assert_int_eq(b.st_ctim.tv_nsec, a.st_ctim.tv_nsec);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(read(fd, buf, sizeof buf - 1), (ssize_t) strlen(content));
        ck_assert_str_eq(buf, content);
        close(fd);
        /* What the start made before it met the name (the ring, raw1's first files) is gone again. */
        assert_listing(before);
        free(before);
}

START_TEST(test_foreign_segment) {
        check_foreign("shmbroker.raw1");
}
END_TEST

START_TEST(test_foreign_semaphore) {
        check_foreign("sem.shmbroker.raw1.1");
}
END_TEST

/*
 * README, POSIX channels: a raw channel's lock holder table
 * (shmbroker-table.NAME) is "created with O_EXCL" like its segment and
 * semaphores, and "a file already at one of those names fails the start
 * ... naming it, and is left exactly as it was". It is made after the
 * segment, before the semaphores: what was made before it goes again.
 */
START_TEST(test_foreign_lock_table) {
        check_foreign("shmbroker-table.raw1");
}
END_TEST

/* Stop removes every file, after telling the clients that still map them. */
START_TEST(test_stop_removes) {
        int fd, fds[PROTO_FDS_MAX];
        size_t n, ring_size;
        char *before;
        json_t *resp;
        PosixSemFile *sem;
        RingHeader *ring;

        /* Somebody else's file stays. */
        fd = open(PSEM_DIR "/other", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        before = shm_listing();
        test_daemon_write_config(&td, "[" RAW1 ", " RING1 ", " BC1 "]");
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        json_decref(resp);
        sem = mmap(NULL, sizeof *sem, PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
        ck_assert_ptr_ne(sem, MAP_FAILED);
        close_all(fds, n);
        ring = map_name("shmbroker.ring1", &ring_size);
        ck_assert(!ring_is_removed(ring));
        close(fd);

        test_daemon_stop_ok(&td);
        assert_listing(before);
        /* The semaphore said REMOVED and was posted once (1 + 1); the ring's header says removed. */
        ck_assert_uint_eq(__atomic_load_n(&sem->state, __ATOMIC_ACQUIRE), PSEM_STATE_REMOVED);
        {
                int v = -1;

                ck_assert_int_eq(sem_getvalue(&sem->sem, &v), 0);
                ck_assert_int_eq(v, 2);
        }
        ck_assert(ring_is_removed(ring));
        munmap(sem, sizeof *sem);
        munmap(ring, ring_size);
        free(before);
}
END_TEST

/* A reload that drops a channel removes its files, and one that changes the kind replaces the objects. */
START_TEST(test_reload) {
        char *before = shm_listing();
        struct stat ring_before;
        json_t *resp;
        int fd;

        test_daemon_write_config(&td, "[" RAW1 ", " RING1 ", " SV1 "]");
        test_start_ok();
        ring_before = shm_stat("shmbroker.ring1");
        ck_assert_int_eq(test_ipcs_count("-m"), 1);

        /* raw1 dropped, sv1 becomes posix, ring1 kept. */
        test_daemon_write_config(&td, "[" RING1 ", {\"name\": \"sv1\", \"kind\": \"posix\", \"size\": 4096}]");
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"reload\"}");
        test_assert_ok(resp);
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "removed"), 0)), "raw1");
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "changed"), 0)), "sv1");
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "kept"), 0)), "ring1");
        json_decref(resp);
        ck_assert(!shm_exists("shmbroker.raw1"));
        for (unsigned i = 0; i < 3; i++) {
                char name[64];

                snprintf(name, sizeof name, "sem.shmbroker.raw1.%u", i);
                ck_assert_msg(!shm_exists(name), "%s is still there", name);
        }
        ck_assert_uint_eq(shm_stat("shmbroker.ring1").st_ino, ring_before.st_ino);
        ck_assert(shm_exists("shmbroker.sv1"));
        ck_assert(shm_exists("sem.shmbroker.sv1.0"));
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);

        /* And back: the files go, System V objects come; ring1's mode widens in place. */
        test_daemon_write_config(&td, "[" SV1 ", {\"name\": \"ring1\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                 "\"slot_size\": 64, \"slots\": 8, \"mode\": \"0664\"}]");
        resp = test_request(fd, "{\"op\": \"reload\"}");
        test_assert_ok(resp);
        ck_assert_uint_eq(json_array_size(json_object_get(resp, "changed")), 2);
        json_decref(resp);
        ck_assert_uint_eq(shm_stat("shmbroker.ring1").st_ino, ring_before.st_ino);
        assert_file("shmbroker.ring1", (off_t) ring_segment_size(64, 8), 0, 0, 0664);
        assert_file("sem.shmbroker.ring1.0", sizeof(PosixSemFile), 0, 0, 0664);
        /*
         * Its group and a narrower mode: that may take a right away from a
         * process that maps the files, which the kernel does not count, so
         * the channel is replaced even with no holder in sight.
         */
        test_daemon_write_config(&td, "[" SV1 ", {\"name\": \"ring1\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                 "\"slot_size\": 64, \"slots\": 8, \"group\": 4321, \"mode\": \"0640\"}]");
        resp = test_request(fd, "{\"op\": \"reload\"}");
        test_assert_ok(resp);
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "changed"), 0)), "ring1");
        json_decref(resp);
        ck_assert_uint_ne(shm_stat("shmbroker.ring1").st_ino, ring_before.st_ino);
        assert_file("shmbroker.ring1", (off_t) ring_segment_size(64, 8), 0, GID, 0640);
        assert_file("sem.shmbroker.ring1.0", sizeof(PosixSemFile), 0, GID, 0640);
        ck_assert(!shm_exists("shmbroker.sv1"));
        ck_assert(!shm_exists("sem.shmbroker.sv1.0"));
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        close(fd);

        stop_and_assert_listing(before);
}
END_TEST

/* A reload that would add a channel over somebody else's file fails, names it, and changes nothing. */
START_TEST(test_reload_foreign) {
        char *before, *msg;
        struct stat planted, ring;
        json_t *resp;
        int fd, fds_before;

        test_daemon_write_config(&td, "[" RING1 "]");
        test_start_ok();
        ring = shm_stat("shmbroker.ring1");
        plant(PSEM_DIR "/sem.shmbroker.raw1.2", &planted);
        before = shm_listing();
        test_daemon_write_config(&td, "[" RING1 ", " RAW1 "]");
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"hello\", \"version\": 1}");
        json_decref(resp);
        fds_before = daemon_fd_count();
        resp = test_request(fd, "{\"op\": \"reload\"}");
        test_assert_error(resp, "EEXIST");
        msg = strdup(test_jstr(resp, "message"));
        json_decref(resp);
        ck_assert_msg(strstr(msg, PSEM_DIR "/sem.shmbroker.raw1.2"), "the answer does not name the file: %s", msg);
        free(msg);
        assert_unchanged(PSEM_DIR "/sem.shmbroker.raw1.2", &planted);
        assert_listing(before);
        /* The files it made before it met the name are closed again, with /dev/shm's descriptor. */
        ck_assert_int_eq(daemon_fd_count(), fds_before);
        ck_assert_uint_eq(shm_stat("shmbroker.ring1").st_ino, ring.st_ino);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.raw1.2"), 0);
        free(before);
}
END_TEST

/*
 * A replacement that needs a name another user holds (a file somebody
 * planted) must fail the reload as an added channel's does ("A name already
 * taken by a file it did not create fails the start or reload"), keeping the
 * running channel, not remove it and answer ok with it in "removed". From
 * before: the config of channel p, the file planted, the config after.
 */
static void replacing_reload_onto_planted(const char *before_cfg, const char *planted_name, const char *after_cfg) {
        char path[PATH_MAX], *before;
        struct stat planted;
        json_t *resp, *list, *old, *now;
        int fd;

        test_daemon_write_config(&td, before_cfg);
        test_start_ok();
        snprintf(path, sizeof path, PSEM_DIR "/%s", planted_name);
        plant(path, &planted);
        before = shm_listing();
        fd = test_connect(td.socket);
        old = test_request(fd, "{\"op\": \"list\"}");
        test_daemon_write_config(&td, after_cfg);
        resp = test_request(fd, "{\"op\": \"reload\"}");
        test_assert_error(resp, "EEXIST");
        ck_assert_msg(strstr(test_jstr(resp, "message"), planted_name), "the answer does not name %s", planted_name);
        json_decref(resp);
        assert_unchanged(path, &planted);
        assert_listing(before);
        list = test_request(fd, "{\"op\": \"list\"}");
        test_assert_ok(list);
        now = test_find_channel(list, "p");
        ck_assert_ptr_nonnull(now);
        ck_assert_msg(json_equal(test_find_channel(old, "p"), now), "channel p changed");
        json_decref(list);
        json_decref(old);
        close(fd);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(unlink(path), 0);
        free(before);
}

/* One semaphore more. */
START_TEST(test_replacing_reload_onto_foreign_sem_refused) {
        replacing_reload_onto_planted(
                "[" RING1 ", {\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]}]",
                "sem.shmbroker.p.1",
                "[" RING1 ", {\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1, 0]}]");
}
END_TEST

/* System V to posix: the segment's name. */
START_TEST(test_replacing_reload_onto_foreign_segment_refused) {
        replacing_reload_onto_planted("[" RING1 ", {\"name\": \"p\", \"size\": 4096}]", "shmbroker.p",
                                      "[" RING1 ", {\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096}]");
}
END_TEST

/* Ring to broadcast: the table's name (a raw channel has a table of its own, its lock holder table). */
START_TEST(test_replacing_reload_onto_foreign_table_refused) {
        replacing_reload_onto_planted(
                "[" RING1 ", {\"name\": \"p\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 64, "
                "\"slots\": 8}]", "shmbroker-table.p",
                "[" RING1 ", {\"name\": \"p\", \"kind\": \"posix\", \"layout\": \"broadcast\", "
                "\"slot_size\": 64, \"slots\": 4, \"subscribers\": 2}]");
}
END_TEST

/*
 * Stop and a removing reload unlink a name only while it is still the file
 * they made: one put there meanwhile (here: after ours was unlinked behind
 * the daemon's back) stays, as it was.
 */
START_TEST(test_stop_and_reload_spare_replaced) {
        char *before = shm_listing();
        struct stat planted_sem, planted_seg;

        test_daemon_write_config(&td, "[" RAW1 ", " RING1 "]");
        test_start_ok();
        ck_assert_int_eq(unlink(PSEM_DIR "/shmbroker.ring1"), 0);
        plant(PSEM_DIR "/shmbroker.ring1", &planted_seg);
        /* Reload without ring1: its other files go, the planted segment stays. */
        test_daemon_write_config(&td, "[" RAW1 "]");
        json_decref(reload_ok());
        ck_assert(!shm_exists("sem.shmbroker.ring1.0"));
        assert_unchanged(PSEM_DIR "/shmbroker.ring1", &planted_seg);
        /* Stop: raw1's files go, the file planted at its semaphore 1 stays. */
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.raw1.1"), 0);
        plant(PSEM_DIR "/sem.shmbroker.raw1.1", &planted_sem);
        test_daemon_stop_ok(&td);
        ck_assert(!shm_exists("shmbroker.raw1"));
        ck_assert(!shm_exists("sem.shmbroker.raw1.0"));
        assert_unchanged(PSEM_DIR "/sem.shmbroker.raw1.1", &planted_sem);
        assert_unchanged(PSEM_DIR "/shmbroker.ring1", &planted_seg);
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.raw1.1"), 0);
        ck_assert_int_eq(unlink(PSEM_DIR "/shmbroker.ring1"), 0);
        assert_listing(before);
        free(before);
}
END_TEST

/* Make a file immutable, or not: then even root cannot unlink it (tmpfs has the flag since Linux 6.0). */
static void set_immutable(const char *path, bool on) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), flags = 0;

        ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
        ck_assert_msg(ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0, "FS_IOC_GETFLAGS %s: %s", path, strerror(errno));
        flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
        ck_assert_msg(ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0, "FS_IOC_SETFLAGS %s: %s", path, strerror(errno));
        close(fd);
}

/*
 * A removing reload that cannot unlink a file keeps it recorded, past the
 * rewrite of the state file that ends every reload: the daemon says so, its
 * stop leaves the state file, and the next start removes the file once it
 * may go. The same for a stop that cannot unlink one. Nothing the daemon
 * made is forgotten.
 */
START_TEST(test_reload_keeps_what_it_could_not_remove) {
        char *before = shm_listing(), *log;
        struct stat raw;

        test_daemon_write_config(&td, "[" RAW1 ", " RING1 "]");
        test_start_ok();
        set_immutable(PSEM_DIR "/shmbroker.ring1", true);
        test_daemon_write_config(&td, "[" RAW1 "]");
        json_decref(reload_ok());
        ck_assert(!shm_exists("sem.shmbroker.ring1.0"));
        ck_assert(shm_exists("shmbroker.ring1"));
        log = log_now();
        ck_assert_msg(strstr(log, "Failed to remove " PSEM_DIR "/shmbroker.ring1"),
                      "the daemon did not say it kept shmbroker.ring1:\n%s", log);
        free(log);
        raw = shm_stat("shmbroker.raw1");
        set_immutable(PSEM_DIR "/shmbroker.raw1", true);
        test_daemon_stop_ok(&td);
        log = log_now();
        ck_assert_msg(strstr(log, "Failed to remove " PSEM_DIR "/shmbroker.raw1"),
                      "the stop did not say it kept shmbroker.raw1:\n%s", log);
        free(log);
        ck_assert(shm_exists("shmbroker.ring1") && shm_exists("shmbroker.raw1"));
        set_immutable(PSEM_DIR "/shmbroker.ring1", false);
        set_immutable(PSEM_DIR "/shmbroker.raw1", false);
        test_start_ok();
        ck_assert_msg(!shm_exists("shmbroker.ring1"), "the start after the reload did not remove the file it "
                      "could not remove");
        ck_assert_msg(shm_stat("shmbroker.raw1").st_ino != raw.st_ino, "the start after the stop did not remove "
                      "the file the stop could not remove");
        test_daemon_stop_ok(&td);
        assert_listing(before);
        free(before);
}
END_TEST

/* SIGKILL, then a start whose config lost the channels: reclaim removes their files. */
START_TEST(test_crash_reclaim) {
        char *before = shm_listing(), *log;

        test_daemon_write_config(&td, "[" RAW1 ", " BC1 ", " RING1 "]");
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        ck_assert(shm_exists("shmbroker.raw1"));

        /* ring1 stays; the others are gone from the config. */
        test_daemon_write_config(&td, "[" RING1 "]");
        test_start_ok();
        ck_assert(!shm_exists("shmbroker.raw1"));
        ck_assert(!shm_exists("sem.shmbroker.raw1.2"));
        ck_assert(!shm_exists("shmbroker.bc1"));
        ck_assert(!shm_exists("shmbroker-table.bc1"));
        ck_assert(!shm_exists("sem.shmbroker.bc1.0"));
        ck_assert(shm_exists("shmbroker.ring1"));
        log = log_now();
        ck_assert_msg(strstr(log, "Took over channel ring1"), "ring1 was not adopted:\n%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        assert_listing(before);

        /* A crash with a changed kind: the posix files go, the channel is made as System V. */
        test_daemon_write_config(&td, "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 4096}]");
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[{\"name\": \"x\", \"size\": 4096}]");
        test_start_ok();
        assert_listing(before);
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        test_daemon_stop_ok(&td);
        free(before);
}
END_TEST

/*
 * A killed run's posix ring and broadcast channel, dropped from the config
 * meanwhile: their clients may sleep on the segment's futex words since
 * before the kill, and nobody else will tell them. The next start's
 * reclaim marks each header removed and moves its data word before the
 * unlink (SPEC: -EIDRM within 100 ms), as its System V twin does; seen
 * here on a mapping held across the kill, as a client's would be.
 */
START_TEST(test_crash_reclaim_marks_rings_removed) {
        char *before = shm_listing();
        size_t ring_size, bc_size;
        RingHeader *ring;
        BcastHeader *bc;
        uint32_t ring_seq, bc_seq;

        test_daemon_write_config(&td, "[" RING1 ", " BC1 "]");
        test_start_ok();
        ring = map_name("shmbroker.ring1", &ring_size);
        bc = map_name("shmbroker.bc1", &bc_size);
        ck_assert(!ring_is_removed(ring));
        ck_assert(!bcast_is_removed(bc));
        ring_seq = __atomic_load_n(&ring->data_seq, __ATOMIC_ACQUIRE);
        bc_seq = __atomic_load_n(&bc->data_seq, __ATOMIC_ACQUIRE);
        test_daemon_kill(&td, SIGKILL);

        test_daemon_write_config(&td, "[" SV1 "]");
        test_start_ok();
        ck_assert(!shm_exists("shmbroker.ring1"));
        ck_assert(!shm_exists("shmbroker.bc1"));
        ck_assert_msg(ring_is_removed(ring), "the reclaimed posix ring's clients were not told it is removed");
        ck_assert_uint_ne(__atomic_load_n(&ring->data_seq, __ATOMIC_ACQUIRE), ring_seq);
        ck_assert_msg(bcast_is_removed(bc), "the reclaimed posix broadcast channel's clients were not told it is removed");
        ck_assert_uint_ne(__atomic_load_n(&bc->data_seq, __ATOMIC_ACQUIRE), bc_seq);
        munmap(ring, ring_size);
        munmap(bc, bc_size);
        stop_and_assert_listing(before);
}
END_TEST

#define KEPT "kept across a crash"

/* Write KEPT into a channel's segment file, then SIGKILL the daemon: that file's stat. */
static struct stat mark_and_kill(const char *file) {
        struct stat st = shm_stat(file);
        size_t size;
        char *data = map_name(file, &size);

        strcpy(data, KEPT);
        munmap(data, size);
        test_daemon_kill(&td, SIGKILL);
        return st;
}

/* The start after that kill took the channel over: it says so, and the segment is the same file, KEPT in it. */
static void assert_taken_over(const char *channel, const char *file, const struct stat *seg) {
        char *log = log_now(), what[128];
        size_t size;
        char *data;

        snprintf(what, sizeof what, "Took over channel %s", channel);
        ck_assert_msg(strstr(log, what), "%s was not taken over:\n%s", channel, log);
        free(log);
        ck_assert_uint_eq(shm_stat(file).st_ino, seg->st_ino);
        data = map_name(file, &size);
        ck_assert_str_eq(data, KEPT);
        munmap(data, size);
}

/*
 * A crash, then a start whose config gives the channel other initial
 * semaphore values (its files' sizes and header as they were): a start
 * makes it anew with the new values, as it does for a System V channel,
 * rather than taking the old files over.
 */
START_TEST(test_crash_changed_values_made_anew) {
        char *before = shm_listing(), *log;
        json_t *resp;
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"sv\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]}]");
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[{\"name\": \"sv\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [4]}]");
        test_start_ok();
        log = log_now();
        ck_assert_msg(!strstr(log, "Took over channel sv"), "sv was taken over with its old values:\n%s", log);
        free(log);
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"status\", \"channel\": \"sv\"}");
        ck_assert_int_eq(test_jint(json_array_get(json_object_get(test_must_find(resp, "sv"), "semaphores"), 0), "value"), 4);
        json_decref(resp);
        close(fd);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * A channel whose files belong to another owner (here nobody's uid, given
 * at start or by a reload) is the daemon's all the same: after a SIGKILL
 * the next start takes it over, with its contents, and a start whose
 * config dropped it removes its files. Proof by owner alone would take
 * them for someone else's: the start failed over them, and they stayed.
 */
START_TEST(test_crash_other_owner) {
        char *before = shm_listing();
        struct stat seg;

        test_daemon_write_config(&td, "[{\"name\": \"o1\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1], "
                                 "\"owner\": 65534, \"mode\": \"0660\"}]");
        test_start_ok();
        ck_assert_uint_eq(shm_stat("shmbroker.o1").st_uid, 65534);
        seg = mark_and_kill("shmbroker.o1");
        test_start_ok();
        assert_taken_over("o1", "shmbroker.o1", &seg);
        test_daemon_stop_ok(&td);
        assert_listing(before);

        /* The owner given by a reload, then a crash, then a start without the channel: its files go. */
        test_daemon_write_config(&td, "[{\"name\": \"o2\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]}]");
        test_start_ok();
        test_daemon_write_config(&td, "[{\"name\": \"o2\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1], "
                                 "\"owner\": 65534}]");
        json_decref(reload_ok());
        ck_assert_uint_eq(shm_stat("sem.shmbroker.o2.0").st_uid, 65534);
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        ck_assert_msg(!shm_exists("shmbroker.o2") && !shm_exists("sem.shmbroker.o2.0"),
                      "the files of o2, another owner's, were not reclaimed");
        stop_and_assert_listing(before);
}
END_TEST

static bool at_state_write_or_chown(pid_t pid, uint64_t nr, uint64_t arg0) {
        return nr == SYS_fchown || test_at_state_write(pid, nr, arg0);
}

/*
 * A reload that moves a channel from one owner to another (neither the
 * daemon's user), killed at each of its state writes and chowns in turn;
 * then the next start, which takes the files over and finishes giving them
 * their owner, killed at each of its own, until one gets ready. Whatever
 * step each died at, every file is owned by the daemon's user or by the
 * owner its newest record names: the start that gets ready has the
 * channel with its new owner, and its stop leaves /dev/shm as it was. (A
 * new owner may take a right away from a process that maps the files,
 * which the kernel does not count, so the reload and the start replace
 * them rather than chown them.)
 */
START_TEST(test_owner_change_killed_at_each_step) {
        char *before = shm_listing(), *log;
        int k, j = 0, max_j = 0;

        for (k = 1;; k++) {
                struct stat seg;

                test_daemon_write_config(&td, "[{\"name\": \"o3\", \"kind\": \"posix\", \"size\": 4096, "
                                         "\"semaphores\": [1], \"owner\": 65534}]");
                test_start_ok();
                seg = shm_stat("shmbroker.o3");
                test_daemon_write_config(&td, "[{\"name\": \"o3\", \"kind\": \"posix\", \"size\": 4096, "
                                         "\"semaphores\": [1], \"owner\": 65533}]");
                test_daemon_trace(&td);
                test_reload_async();
                if (!test_daemon_kill_at(&td, k, at_state_write_or_chown, test_reload_done)) {
                        /* The reload took fewer than k steps: every one was a kill point. */
                        test_daemon_stop_ok(&td);
                        assert_listing(before);
                        break;
                }
                test_reload_wait();
                for (j = 1;; j++) {
                        test_daemon_spawn_traced(&td);
                        if (!test_daemon_kill_at(&td, j, at_state_write_or_chown, test_td_ready))
                                break;
                }
                if (j > max_j)
                        max_j = j;
                log = log_now();
                ck_assert_msg(shm_stat("shmbroker.o3").st_ino != seg.st_ino && shm_stat("shmbroker.o3").st_uid == 65533,
                              "killed at step %d of the owner change and step %d of the next start: o3 was not "
                              "made anew with its new owner (uid %u):\n%s", k, j - 1,
                              (unsigned) shm_stat("shmbroker.o3").st_uid, log);
                free(log);
                test_daemon_stop_ok(&td);
                assert_listing(before);
        }
        /* Two files, each recorded anew and given its owner; the start after a kill had steps too. */
        ck_assert_int_ge(k, 5);
        ck_assert_int_ge(max_j, 2);
        free(before);
}
END_TEST

/* Channel x of the replacement tests: replaced by a reload, as a bigger segment asks. */
#define X_BEFORE "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1, 0], \"mode\": \"0600\"}]"
#define X_AFTER "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 8192, \"semaphores\": [1, 0], \"mode\": \"0600\"}]"

static const char *const x_names[] = { "shmbroker.x", "sem.shmbroker.x.0", "sem.shmbroker.x.1" };

/* Take the first free one of names as another user would (uid 65534): whether one was free. */
static bool squat_one_of(const char *const *names, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char path[64];
                int fd;

                snprintf(path, sizeof path, PSEM_DIR "/%s", names[i]);
                fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (fd < 0)
                        continue;
                ck_assert_int_eq(fchown(fd, NOBODY, NOBODY), 0);
                close(fd);
                return true;
        }
        return false;
}

/*
 * A reload that replaces a posix channel must never leave its names free
 * between the old files and the new: /dev/shm is world-writable, and a user
 * with no right to the channel who creates a file at a free name (inotify
 * tells it when) takes the channel away for good, since every later reload
 * and start then fails on that name. The daemon is traced and, after every
 * system call it makes during the reload, the test looks whether a name of
 * the channel is free and, if it is, takes it as another user would: no
 * timing involved.
 */
START_TEST(test_replacing_reload_leaves_no_name_free) {
        bool squatted = false;
        json_t *list;

        test_daemon_write_config(&td, X_BEFORE);
        test_start_ok();
        test_daemon_write_config(&td, X_AFTER);
        test_daemon_trace(&td);
        test_reload_async();
        while (!squatted && !test_reload_done()) {
                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself");
                squatted = squat_one_of(x_names, sizeof x_names / sizeof *x_names);
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        test_reload_wait();
        list = list_now();
        ck_assert_msg(!squatted && test_find_channel(list, "x"),
                      "a name of channel x was free during the reload and another user took it; the channel is %s",
                      test_find_channel(list, "x") ? "still listed" : "gone");
        json_decref(list);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * The same for a channel made again because a client truncated its
 * segment: the open that finds it so replaces the files, and must leave no
 * name free either.
 */
START_TEST(test_remade_channel_leaves_no_name_free) {
        int fd, fds[PROTO_FDS_MAX], status;
        bool squatted = false;
        json_t *resp, *list;
        pid_t opener;
        size_t n;

        test_daemon_write_config(&td, X_BEFORE);
        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"x\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_int_eq(ftruncate(fds[0], 0), 0);
        close_all(fds, n);
        close(fd);

        test_daemon_trace(&td);
        opener = fork();
        ck_assert_int_ge(opener, 0);
        if (opener == 0) {
                char c;

                fd = test_connect(td.socket);
                test_send(fd, "{\"op\": \"open\", \"channel\": \"x\", \"access\": \"rw\"}\n", 47);
                (void) read(fd, &c, 1);
                _exit(0);
        }
        while (!squatted && waitpid(opener, &status, WNOHANG) != opener) {
                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself");
                squatted = squat_one_of(x_names, sizeof x_names / sizeof *x_names);
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        if (squatted)
                ck_assert_int_eq(waitpid(opener, &status, 0), opener);
        list = list_now();
        ck_assert_msg(!squatted && test_find_channel(list, "x"),
                      "a name of channel x was free while it was made again and another user took it; the channel "
                      "is %s", test_find_channel(list, "x") ? "still listed" : "gone");
        ck_assert_uint_ne(shm_stat("shmbroker.x").st_size, 0);
        json_decref(list);
        test_daemon_stop_ok(&td);
}
END_TEST

/* A step of a replacement: a file made, renamed or unlinked in /dev/shm, or a write of the state file. */
static bool at_file_or_state_write(pid_t pid, uint64_t nr, uint64_t arg0) {
        return ((nr == SYS_openat || nr == SYS_renameat2 || nr == SYS_unlinkat) &&
                test_fd_path_ends_with(pid, arg0, "dev/shm")) || test_at_state_write(pid, nr, arg0);
}

/*
 * Reload x from X_BEFORE to X_AFTER and kill the daemon at the reload's
 * k-th file or state step (at_file_or_state_write()): true, or false when
 * the reload took fewer steps and finished (the daemon then stopped).
 */
static bool replacement_killed_at(int k) {
        test_daemon_write_config(&td, X_BEFORE);
        test_start_ok();
        test_daemon_write_config(&td, X_AFTER);
        test_daemon_trace(&td);
        test_reload_async();
        if (!test_daemon_kill_at(&td, k, at_file_or_state_write, test_reload_done)) {
                test_reload_wait();
                test_daemon_stop_ok(&td);
                return false;
        }
        test_reload_wait();
        return true;
}

/* After a kill at step k of what: each of names still names a file (none was free for another user). */
static void assert_names_held(const char *const *names, size_t n, int k, const char *what) {
        for (size_t i = 0; i < n; i++)
                ck_assert_msg(shm_exists(names[i]), "killed at step %d of %s: %s/%s was free", k, what, PSEM_DIR,
                              names[i]);
}

/*
 * The replacing reload, killed at each of its steps in turn (the making of
 * a new file, its move into place, the unlink of the old one, each state
 * write). Wherever it died, every name of the channel still names a file
 * (the old one or the new: none was free for another user to take), the
 * next start makes the channel, and its stop leaves /dev/shm as it was:
 * nothing the killed run made is left, under any name, and another user's
 * file beside the channel's is untouched.
 */
START_TEST(test_replacement_killed_at_each_step) {
        char *before, *log;
        struct stat planted;
        int k;

        /* Another user's, at the name a third semaphore of x would take. */
        plant(PSEM_DIR "/sem.shmbroker.x.2", &planted);
        before = shm_listing();
        for (k = 1;; k++) {
                json_t *list;

                if (!replacement_killed_at(k)) {
                        /* The reload took fewer than k steps: every one was a kill point. */
                        assert_listing(before);
                        break;
                }
                assert_names_held(x_names, sizeof x_names / sizeof *x_names, k, "the replacement");
                test_start_ok();
                list = list_now();
                log = log_now();
                ck_assert_msg(test_find_channel(list, "x"), "killed at step %d of the replacement: the next start "
                              "has no channel x:\n%s", k, log);
                free(log);
                json_decref(list);
                test_daemon_stop_ok(&td);
                assert_listing(before);
                assert_unchanged(PSEM_DIR "/sem.shmbroker.x.2", &planted);
        }
        /* Three files, each with its intent, made, moved into place, its old one unlinked, recorded. */
        ck_assert_int_ge(k, 15);
        free(before);
}
END_TEST

/* The names of the temporary files (".shmbroker-new.*") created in /dev/shm, read from inotify fd `in`. */
static size_t read_temp_names(int in, char names[][NAME_MAX + 1], size_t max) {
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        size_t n = 0;
        ssize_t len;

        while ((len = read(in, buf, sizeof buf)) > 0)
                for (char *p = buf; p < buf + len;) {
                        const struct inotify_event *ev = (const struct inotify_event *) p;

                        if (ev->len > 0 && strncmp(ev->name, ".shmbroker-new.", 15) == 0 && n < max)
                                snprintf(names[n++], NAME_MAX + 1, "%s", ev->name);
                        p += sizeof *ev + ev->len;
                }
        return n;
}

/*
 * The temporary name is meant to be unknown to other users in advance,
 * but anyone may watch /dev/shm with inotify and so learn every one the
 * daemon uses. A replacement of the same channel in the same second (the
 * second reload of a quick A -> B -> A, or a remake after a truncation)
 * derives the very same names (channel, role, pid and a since that counts
 * whole seconds): a user who created a file at a name he saw at the first
 * one takes the channel away at the second. Each replacement must use a
 * name that was never shown before.
 */
START_TEST(test_replacement_temp_name_not_reused) {
        for (int attempt = 0; attempt < 3; attempt++) {
                char seen[16][NAME_MAX + 1], again[16][NAME_MAX + 1];
                size_t n, m;
                json_t *resp, *list;
                time_t t;
                int in;

                test_daemon_write_config(&td, X_BEFORE);
                test_start_ok();
                in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
                ck_assert_int_ge(in, 0);
                ck_assert_int_ge(inotify_add_watch(in, PSEM_DIR, IN_CREATE), 0);
                /* Both replacements at the start of one second, as a fast A -> B -> A does. */
                t = time(NULL);
                while (time(NULL) == t)
                        usleep(1000);
                test_daemon_write_config(&td, X_AFTER);
                json_decref(reload_ok());
                n = read_temp_names(in, seen, 16);
                ck_assert_uint_ge(n, 1);
                /* Another user takes each temporary name he was shown. */
                for (size_t i = 0; i < n; i++)
                        ck_assert(squat_one_of((const char *const[]) { seen[i] }, 1));
                (void) read_temp_names(in, again, 16);
                test_daemon_write_config(&td, X_BEFORE);
                resp = reload_answer();
                m = read_temp_names(in, again, 16);
                close(in);
                list = list_now();
                ck_assert_msg(test_find_channel(list, "x"), "a replacement used a temporary name another user had "
                              "seen at the one before and took: channel x is gone (%zu new temporary names; the "
                              "reload answered %s):\n%s", m, json_dumps(resp, 0), log_now());
                json_decref(list);
                json_decref(resp);
                test_daemon_stop_ok(&td);
                for (size_t i = 0; i < n; i++) {
                        char path[NAME_MAX + 16];

                        snprintf(path, sizeof path, PSEM_DIR "/%s", seen[i]);
                        ck_assert_int_eq(unlink(path), 0);
                }
        }
}
END_TEST

/*
 * Should another user learn a temporary name before the daemon makes its
 * file there (the name is derived from the state's secret, so only by a
 * flaw), his file at it must not become the channel's: the daemon makes
 * the file O_EXCL, and leaves his file untouched. The daemon
 * is traced, and the file put at the name at the entry of the openat(2)
 * that makes it: no timing involved.
 */
START_TEST(test_replacement_temp_name_taken_before_it_is_made) {
        char tmp[NAME_MAX + 32] = "", *before = shm_listing();
        struct stat planted;

        test_daemon_write_config(&td, X_BEFORE);
        test_start_ok();
        test_daemon_write_config(&td, X_AFTER);
        test_daemon_trace(&td);
        test_reload_async();
        while (!tmp[0] && !test_reload_done()) {
                struct __ptrace_syscall_info info;
                char got[NAME_MAX + 1] = "";
                struct iovec local = { got, sizeof got - 1 }, remote;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (info.op != PTRACE_SYSCALL_INFO_ENTRY || info.entry.nr != SYS_openat ||
                    !(info.entry.args[2] & O_CREAT))
                        continue;
                remote = (struct iovec) { (void *) (uintptr_t) info.entry.args[1], sizeof got - 1 };
                if (process_vm_readv(td.pid, &local, 1, &remote, 1, 0) <= 0 ||
                    strncmp(got, ".shmbroker-new.", 15) != 0)
                        continue;
                snprintf(tmp, sizeof tmp, PSEM_DIR "/%s", got);
                plant(tmp, &planted);
        }
        ck_assert_msg(tmp[0], "the replacement made no file at a temporary name");
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        test_reload_wait();
        assert_unchanged(tmp, &planted);
        ck_assert(!shm_exists("shmbroker.x") || shm_stat("shmbroker.x").st_ino != planted.st_ino);
        ck_assert_int_eq(unlink(tmp), 0);
        /* Whatever the failed replacement made or left of the old x goes with it, or with the stop. */
        stop_and_assert_listing(before);
}
END_TEST

/* Run fn(arg) in a child as uid/gid 65534: what it returned (0 or an errno). */
static int as_nobody(int (*fn)(const char *), const char *arg) {
        int status;
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                if (setresgid(NOBODY, NOBODY, NOBODY) < 0 || setresuid(NOBODY, NOBODY, NOBODY) < 0)
                        _exit(120);
                _exit(fn(arg));
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static int unlink_errno(const char *path) {
        return unlink(path) < 0 ? errno : 0;
}

/*
 * The owner the config gives a posix channel owns its files, and /dev/shm
 * is sticky: he may unlink them. A replacement moves the old file to the
 * temporary name by RENAME_EXCHANGE and then looks at it there; if its
 * owner unlinked it in between (inotify names the temporary file), the
 * exchange back fails, and the new file, the daemon's, is left at the
 * channel's name with no record: the reload says it "was not made by this
 * daemon", the stop leaves it, and every later start fails on it. The
 * daemon is traced and the old file unlinked by its owner right after the
 * exchange: no timing involved.
 */
START_TEST(test_replacement_owner_unlinks_old_file_at_exchange) {
        char *before = shm_listing(), tmp[NAME_MAX + 32] = "";
        bool exchanging = false, done = false;
        json_t *list;
        int status = 0;

        test_daemon_write_config(&td, "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 4096, \"owner\": 65534, "
                                 "\"mode\": \"0600\"}]");
        test_start_ok();
        test_daemon_write_config(&td, "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 8192, \"owner\": 65534, "
                                 "\"mode\": \"0600\"}]");
        test_daemon_trace(&td);
        test_reload_async();
        while (!test_reload_done()) {
                struct __ptrace_syscall_info info;

                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself");
                ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                if (done)
                        continue;
                if (info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_renameat2 &&
                    info.entry.args[4] == RENAME_EXCHANGE) {
                        DIR *d = opendir(PSEM_DIR);
                        struct dirent *e;

                        ck_assert_ptr_nonnull(d);
                        while ((e = readdir(d)))
                                if (strncmp(e->d_name, ".shmbroker-new.", 15) == 0)
                                        snprintf(tmp, sizeof tmp, PSEM_DIR "/%s", e->d_name);
                        closedir(d);
                        exchanging = true;
                } else if (info.op == PTRACE_SYSCALL_INFO_EXIT && exchanging) {
                        /* The old file, the owner's, is at the temporary name now: he unlinks it. */
                        ck_assert_int_eq(as_nobody(unlink_errno, tmp), 0);
                        done = true;
                }
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        test_reload_wait();
        ck_assert(done);
        list = list_now();
        json_decref(list);
        test_daemon_stop_ok(&td);
        /* Whatever became of the channel, nothing the daemon made is left behind... */
        assert_listing(before);
        /* ...and the next start makes it. */
        ck_assert_msg(test_daemon_start(&td, &status, NULL), "the next start failed:\n%s", log_now());
        test_daemon_stop_ok(&td);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * The replacing reload killed at each step, and the next start with a
 * config that no longer has x (or has it as System V): nothing takes x's
 * files over or replaces them, so crash reclaim alone must find each file
 * an intent covers, at its name or at the temporary name (the new file
 * before its move, the old one after the exchange), and remove it: the
 * stop leaves /dev/shm as it was.
 */
START_TEST(test_replacement_killed_then_dropped) {
        static const char *const next[] = { "[" RING1 "]", "[{\"name\": \"x\", \"size\": 4096}]" };
        char *before = shm_listing();

        for (size_t c = 0; c < sizeof next / sizeof *next; c++)
                for (int k = 1;; k++) {
                        char *now;

                        if (!replacement_killed_at(k)) {
                                assert_listing(before);
                                /* Three files, each with its intent, made, moved into place, its old one unlinked. */
                                ck_assert_int_ge(k, 15);
                                break;
                        }
                        test_daemon_write_config(&td, next[c]);
                        test_start_ok();
                        test_daemon_stop_ok(&td);
                        now = shm_listing();
                        ck_assert_msg(strcmp(before, now) == 0, "killed at step %d of the replacement, then started "
                                      "with x %s: /dev/shm was:\n%s\nand is now:\n%s", k,
                                      c == 0 ? "dropped" : "System V", before, now);
                        free(now);
                }
        free(before);
}
END_TEST

/*
 * Channels of the crash restart tests: x (fewer semaphores after the
 * change) and a broadcast channel bc (its table too), both made anew by
 * the start after a crash, as a bigger ring asks.
 */
#define C_BC(slots) "{\"name\": \"bc\", \"kind\": \"posix\", \"layout\": \"broadcast\", \"slot_size\": 64, " \
                    "\"slots\": " slots ", \"subscribers\": 4, \"mode\": \"0600\"}"
#define C_BEFORE "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1, 0, 0], " \
                 "\"mode\": \"0600\"}, " C_BC("8") "]"
#define C_AFTER "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 8192, \"semaphores\": [1, 0], " \
                "\"mode\": \"0600\"}, " C_BC("16") "]"

/* Every name the channels have both before and after the change. */
static const char *const c_names[] = { "shmbroker.x", "sem.shmbroker.x.0", "sem.shmbroker.x.1", "shmbroker.bc",
                                       "shmbroker-table.bc" };

static bool squat_c_name(void) {
        return squat_one_of(c_names, sizeof c_names / sizeof *c_names);
}

/*
 * Start the daemon traced from its exec and, after every system call it
 * makes until it is ready (or ends), take a free name of c_names: whether
 * one was free. The daemon runs on, or ended (td.pid -1) when it failed.
 */
static bool start_squatting(void) {
        bool squatted = false;
        int status = 0;

        test_daemon_spawn_traced(&td);
        while (!squatted && !test_td_ready()) {
                ck_assert_msg(test_next_syscall_stop(td.pid), "the daemon ended by itself:\n%s", log_now());
                squatted = squat_c_name();
        }
        ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
        if (squatted && !test_daemon_wait_ready(&td, &status))
                td.pid = -1;
        return squatted;
}

/*
 * The start after a crash with a config that changed a posix channel does
 * not take the channel over but makes it anew: that must leave no name of
 * the channel free either, or another user who takes it (inotify tells it
 * when) makes the start fail, and every later one. The start is traced
 * from its exec and, after every system call, the test takes a name of the
 * channels if it is free.
 */
START_TEST(test_crash_restart_leaves_no_name_free) {
        char *before = shm_listing(), *log;
        bool squatted;

        test_daemon_write_config(&td, C_BEFORE);
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, C_AFTER);
        squatted = start_squatting();
        log = log_now();
        ck_assert_msg(!squatted, "a name of a changed channel was free during the start after a crash and another "
                      "user took it; the start %s:\n%s", td.pid > 0 ? "succeeded" : "failed", log);
        free(log);
        ck_assert(!shm_exists("sem.shmbroker.x.2"));
        test_daemon_stop_ok(&td);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * That start, killed at each of its file and state steps in turn: wherever
 * it died, every name of the changed channels still names a file (none was
 * free), the next start makes them leaving no name free either, and its
 * stop leaves /dev/shm as it was, another user's file beside them
 * untouched.
 */
START_TEST(test_crash_restart_killed_at_each_step) {
        char *before, *log;
        struct stat planted;
        bool squatted;
        int k;

        /* Another user's, at the name a fourth semaphore of x would take. */
        plant(PSEM_DIR "/sem.shmbroker.x.3", &planted);
        before = shm_listing();
        for (k = 1;; k++) {
                json_t *list;

                test_daemon_write_config(&td, C_BEFORE);
                test_start_ok();
                test_daemon_kill(&td, SIGKILL);
                test_daemon_write_config(&td, C_AFTER);
                test_daemon_spawn_traced(&td);
                if (!test_daemon_kill_at(&td, k, at_file_or_state_write, test_td_ready)) {
                        /* The start took fewer than k steps: every one was a kill point. */
                        test_daemon_stop_ok(&td);
                        assert_listing(before);
                        break;
                }
                assert_names_held(c_names, sizeof c_names / sizeof *c_names, k, "the start");
                squatted = start_squatting();
                log = log_now();
                ck_assert_msg(!squatted, "killed at step %d of the start: a name was free during the next start and "
                              "another user took it; that start %s:\n%s", k, td.pid > 0 ? "succeeded" : "failed",
                              log + (strlen(log) > 2000 ? strlen(log) - 2000 : 0));
                free(log);
                list = list_now();
                log = log_now();
                ck_assert_msg(test_find_channel(list, "x") && test_find_channel(list, "bc"),
                              "killed at step %d of the start: the next start lacks a channel:\n%s", k, log);
                free(log);
                json_decref(list);
                ck_assert_msg(!shm_exists("sem.shmbroker.x.2"), "killed at step %d of the start: the next one left "
                              "x's third semaphore", k);
                test_daemon_stop_ok(&td);
                assert_listing(before);
                assert_unchanged(PSEM_DIR "/sem.shmbroker.x.3", &planted);
        }
        /* Five files replaced, each with its intent, made, moved into place, its old one unlinked, recorded. */
        ck_assert_int_ge(k, 20);
        free(before);
}
END_TEST

#define C_A "{\"name\": \"a\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0600\"}"
#define C_X_AFTER "{\"name\": \"x\", \"kind\": \"posix\", \"size\": 8192, \"semaphores\": [1, 0], " \
                  "\"mode\": \"0600\"}"

/*
 * A start after a crash that fails (another user's file at a name of a
 * channel before, or between, the changed ones) removes the old files of
 * the changed channels it did not make yet, as reclaim would have, and the
 * new ones it made: /dev/shm is as before, the other user's file untouched.
 */
START_TEST(test_crash_restart_failure_removes) {
        static const char *const configs[] = { "[" C_A ", " C_X_AFTER ", " C_BC("16") "]",
                                               "[" C_X_AFTER ", " C_A ", " C_BC("16") "]" };
        struct stat planted;
        char *before;

        plant(PSEM_DIR "/shmbroker.a", &planted);
        before = shm_listing();
        for (size_t i = 0; i < sizeof configs / sizeof *configs; i++) {
                char *log;

                test_daemon_write_config(&td, C_BEFORE);
                test_start_ok();
                test_daemon_kill(&td, SIGKILL);
                test_daemon_write_config(&td, configs[i]);
                log = start_fails("it must refuse this start");
                ck_assert_msg(strstr(log, PSEM_DIR "/shmbroker.a already exists"), "the start did not fail on a:\n%s",
                              log);
                free(log);
                assert_listing(before);
                assert_unchanged(PSEM_DIR "/shmbroker.a", &planted);
                /* Nothing is left recorded either: a start and stop leave /dev/shm as it is. */
                test_daemon_write_config(&td, C_AFTER);
                test_start_ok();
                test_daemon_stop_ok(&td);
                assert_listing(before);
        }
        free(before);
}
END_TEST

/*
 * What the changed channel no longer has (a third semaphore, a broadcast
 * table now that it is a ring) is gone after the start, its waiters told:
 * the semaphore REMOVED, as at any removal.
 */
START_TEST(test_crash_restart_fewer_files) {
        char *before = shm_listing();
        PosixSemFile *s;
        size_t size;

        test_daemon_write_config(&td, C_BEFORE);
        test_start_ok();
        s = map_name("sem.shmbroker.x.2", &size);
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[{\"name\": \"x\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1], "
                                 "\"mode\": \"0600\"}, {\"name\": \"bc\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                 "\"slot_size\": 64, \"slots\": 8, \"mode\": \"0600\"}]");
        test_start_ok();
        ck_assert(shm_exists("sem.shmbroker.x.0"));
        ck_assert(!shm_exists("sem.shmbroker.x.1"));
        ck_assert(!shm_exists("sem.shmbroker.x.2"));
        ck_assert(shm_exists("shmbroker.bc"));
        ck_assert(!shm_exists("shmbroker-table.bc"));
        ck_assert_uint_eq(__atomic_load_n(&s->state, __ATOMIC_ACQUIRE), PSEM_STATE_REMOVED);
        munmap(s, size);
        test_daemon_stop_ok(&td);
        assert_listing(before);
        free(before);
}
END_TEST

/* Reclaim unlinks only the recorded inodes: a file put at a name after the crash stays. */
/* raw1 (as channel, its JSON) crashes, and somebody else's file takes the name of its semaphore 1. */
static void assert_reclaim_spares_replaced(const char *channel) {
        char *before = shm_listing(), *log, cfg[512];
        struct stat planted;

        snprintf(cfg, sizeof cfg, "[%s]", channel);
        test_daemon_write_config(&td, cfg);
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        /* While no daemon runs, raw1's semaphore 1 is replaced by somebody else's file. */
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.raw1.1"), 0);
        plant(PSEM_DIR "/sem.shmbroker.raw1.1", &planted);

        /* Still configured: not taken over (a file is not the recorded one), and not made again over it. */
        log = start_fails("it must refuse this start");
        ck_assert_msg(strstr(log, PSEM_DIR "/sem.shmbroker.raw1.1"), "the log does not name the file:\n%s", log);
        free(log);
        assert_unchanged(PSEM_DIR "/sem.shmbroker.raw1.1", &planted);

        /* Dropped from the config: the recorded files go, the planted one stays. */
        test_daemon_write_config(&td, "[" SV1 "]");
        test_start_ok();
        ck_assert(!shm_exists("shmbroker.raw1"));
        ck_assert(!shm_exists("sem.shmbroker.raw1.0"));
        ck_assert(!shm_exists("sem.shmbroker.raw1.2"));
        assert_unchanged(PSEM_DIR "/sem.shmbroker.raw1.1", &planted);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.raw1.1"), 0);
        assert_listing(before);
        free(before);
}

START_TEST(test_crash_reclaim_spares_replaced) {
        assert_reclaim_spares_replaced(RAW1);
}
END_TEST

/*
 * The same when the files were given to the user who planted the file: the
 * record names that owner, yet the planted file is another inode, and
 * stays. An owner cannot make the daemon take or unlink its own file.
 */
START_TEST(test_crash_reclaim_spares_owners_planted_file) {
        assert_reclaim_spares_replaced("{\"name\": \"raw1\", \"kind\": \"posix\", \"size\": 5000, "
                                       "\"semaphores\": [1, 0, 5], \"owner\": 65534}");
}
END_TEST

/* Append a line to the daemon's state file, as a run killed at that point would have left it. */
static void state_append(const char *line) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof path, "%s.state", td.socket);
        f = fopen(path, "a");
        ck_assert_ptr_nonnull(f);
        fputs(line, f);
        fclose(f);
}

/*
 * Records written by a version before the owner field ("posix ROLE DEV INO
 * PID SINCE SIZE NAME", no UID): a daemon upgraded across a crash still
 * takes the channel over, and says nothing is malformed.
 */
START_TEST(test_crash_adopt_records_of_an_older_version) {
        char *before = shm_listing(), *log, path[512], *text = NULL, *out;
        size_t len = 0, n = 0;
        struct stat seg;
        FILE *f;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        seg = mark_and_kill("shmbroker.raw1");
        snprintf(path, sizeof path, "%s.state", td.socket);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        out = calloc(1, 65536);
        ck_assert_ptr_nonnull(out);
        while (getline(&text, &len, f) > 0) {
                char *p = text + (text[0] == '-');
                int fields = 0;

                /* A file's line loses its ninth field, the owner. */
                if (strncmp(p, "posix ", 6) == 0) {
                        for (char *q = p; *q && *q != '\n'; q++)
                                if (*q == ' ' && ++fields == 8) {
                                        strcpy(q, "\n");
                                        n++;
                                        break;
                                }
                }
                strcat(out, text);
        }
        fclose(f);
        free(text);
        ck_assert_msg(n > 0, "no posix file line with an owner in %s", path);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        fputs(out, f);
        fclose(f);
        free(out);

        test_start_ok();
        assert_taken_over("raw1", "shmbroker.raw1", &seg);
        log = log_now();
        ck_assert_msg(!strstr(log, "malformed"), "records of an older version were taken for malformed:\n%s", log);
        free(log);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * An intent whose cancellation the file lost (a damaged line, or a write
 * cut at a page boundary) names a file that the next start takes over with
 * its channel. The intent is then that file's, not a leftover: the start
 * must not unlink a file of the channel it took over. With the channel's
 * mode 0600, the taken-over file looks just as the intent's would.
 */
START_TEST(test_crash_intent_of_a_taken_over_file_spares_it) {
        char *before = shm_listing(), path[512], *text = NULL, intent[256] = "";
        size_t len = 0;
        struct stat seg, sem1;
        FILE *f;

        test_daemon_write_config(&td, "[{\"name\": \"solo\", \"kind\": \"posix\", \"size\": 5000,"
                                      " \"semaphores\": [1, 0], \"mode\": \"0600\"}]");
        test_start_ok();
        sem1 = shm_stat("sem.shmbroker.solo.1");
        snprintf(path, sizeof path, "%s.state", td.socket);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        while (getline(&text, &len, f) > 0)
                if (strncmp(text, "pposix 1 ", 9) == 0 && strlen(text) < sizeof intent)
                        strcpy(intent, text);
        fclose(f);
        free(text);
        ck_assert_msg(intent[0], "no intent for semaphore 1 in %s", path);
        seg = mark_and_kill("shmbroker.solo");
        state_append(intent);

        test_start_ok();
        assert_taken_over("solo", "shmbroker.solo", &seg);
        ck_assert_msg(shm_exists("sem.shmbroker.solo.1"), "the start unlinked semaphore 1 of the channel it took over");
        ck_assert_uint_eq(shm_stat("sem.shmbroker.solo.1").st_ino, sem1.st_ino);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * A leftover record under the name of a channel the start takes over,
 * naming a file that channel has no use for (a table of the broadcast
 * channel the name had before: the channel is a ring now, which has no
 * table file), is not the taken channel's: reclaim removes its file, as it
 * would any recorded leftover, rather than skipping it as taken over.
 */
START_TEST(test_crash_adopt_reclaims_a_leftover_table_of_the_name) {
        char *before = shm_listing(), line[256], *log;
        struct stat table, seg;
        int fd;

        test_daemon_write_config(&td, "[{\"name\": \"solo\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                      "\"slot_size\": 64, \"slots\": 8, \"mode\": \"0600\"}]");
        test_start_ok();
        /* A ring's header is its first bytes: the same inode proves the take-over, no mark in it. */
        seg = shm_stat("shmbroker.solo");
        test_daemon_kill(&td, SIGKILL);
        fd = open(PSEM_DIR "/shmbroker-table.solo", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 4096), 0);
        ck_assert_int_eq(fstat(fd, &table), 0);
        close(fd);
        /* Role -2: a broadcast channel's table. */
        snprintf(line, sizeof line, "posix -2 %" PRIu64 " %" PRIu64 " %d %ld 4096 solo\n", (uint64_t) table.st_dev,
                 (uint64_t) table.st_ino, (int) getpid(), (long) time(NULL) - 1);
        state_append(line);

        test_start_ok();
        log = log_now();
        ck_assert_msg(strstr(log, "Took over channel solo"), "solo was not taken over:\n%s", log);
        free(log);
        ck_assert_uint_eq(shm_stat("shmbroker.solo").st_ino, seg.st_ino);
        ck_assert_msg(!shm_exists("shmbroker-table.solo"),
                      "the recorded table under the taken-over name was skipped as taken over, not reclaimed");
        stop_and_assert_listing(before);
}
END_TEST

/* A run of SV1, killed: the next start reclaims what its state file records. */
static void start_and_kill(void) {
        test_daemon_write_config(&td, "[" SV1 "]");
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
}

/* PSEM_DIR/shmbroker.<name>, made as the daemon's user makes a file: mode whatever the umask, size bytes. */
static void make_shm_file(const char *name, mode_t mode, off_t size) {
        char path[128];
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/shmbroker.%s", name);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fchmod(fd, mode), 0);
        ck_assert_int_eq(ftruncate(fd, size), 0);
        close(fd);
}

/* The killed run's intent to make shmbroker.<name> of 4096 bytes, recorded at time `when` (this test's pid). */
static void record_intent(const char *name, long when) {
        char line[256];

        snprintf(line, sizeof line, "pposix -1 0 0 %d %ld 4096 %s\n", (int) getpid(), when, name);
        state_append(line);
}

/*
 * A run killed between making a file and recording its inode leaves an
 * intent: the next start removes the file when it is as that run left it
 * (ours, 0600, empty or of the intended size, new), and nothing else.
 */
START_TEST(test_crash_reclaim_intent) {
        char *before = shm_listing(), line[256];
        struct stat planted;
        long now = (long) time(NULL);

        start_and_kill();
        make_shm_file("gone", 0600, 0);
        /* The killed run's pid: a live one's would be as good, the file carries none. */
        record_intent("gone", now - 1);
        /* Another intent, whose name holds somebody else's file: left alone. */
        plant(PSEM_DIR "/sem.shmbroker.gone.0", &planted);
        /* Of the intended size and new: only its owner and mode tell it apart. */
        snprintf(line, sizeof line, "pposix 0 0 0 %d %ld 8 gone\n", (int) getpid(), now - 1);
        state_append(line);

        test_start_ok();
        ck_assert(!shm_exists("shmbroker.gone"));
        assert_unchanged(PSEM_DIR "/sem.shmbroker.gone.0", &planted);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.gone.0"), 0);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * The same, where the daemon's own user made the file at an intent's name
 * for a purpose of its own: it is the intent's only as the killed run
 * leaves it, with one link, mode 0600, changed within a minute of the
 * intent. A file that fails any one of these is left where it is.
 */
START_TEST(test_crash_reclaim_intent_spares_files_it_did_not_make) {
        static const char *const names[] = { "shmbroker.moded", "shmbroker.linked", "shmbroker.older" };
        char *before = shm_listing(), path[64];
        struct stat st[3];
        long now = (long) time(NULL);

        start_and_kill();
        for (size_t i = 0; i < 3; i++)
                make_shm_file(names[i] + strlen("shmbroker."), i == 0 ? 0644 : 0600, 0);
        /* A second name of the file, of which the intent's name is one. */
        ck_assert_int_eq(link(PSEM_DIR "/shmbroker.linked", PSEM_DIR "/other-name"), 0);
        for (size_t i = 0; i < 3; i++) {
                /* The third's intent is older than the file by far more than a minute. */
                record_intent(names[i] + strlen("shmbroker."), i == 2 ? now - 1000 : now - 1);
                st[i] = shm_stat(names[i]);
        }

        test_start_ok();
        for (size_t i = 0; i < 3; i++)
                ck_assert_msg(shm_exists(names[i]) && shm_stat(names[i]).st_ino == st[i].st_ino,
                              "reclaim removed %s, which the killed run did not leave", names[i]);
        test_daemon_stop_ok(&td);
        for (size_t i = 0; i < 3; i++) {
                snprintf(path, sizeof path, PSEM_DIR "/%s", names[i]);
                ck_assert_int_eq(unlink(path), 0);
        }
        ck_assert_int_eq(unlink(PSEM_DIR "/other-name"), 0);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * A start killed while it made a channel leaves an intent; the next start
 * takes over the file at the channel's name only when the killed run left
 * it so (ours, one link, 0600, of the intended size, new). A file the
 * daemon's user put there for a purpose of its own, of another mode, is
 * not the channel's: it is neither taken over nor removed.
 */
START_TEST(test_crash_restart_takes_over_only_the_intended_file) {
        char *log;
        struct stat st;
        long now = (long) time(NULL);

        start_and_kill();
        make_shm_file("moded", 0644, 4096);
        record_intent("moded", now - 1);
        st = shm_stat("shmbroker.moded");

        test_daemon_write_config(&td, "[{\"name\": \"moded\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0600\"}]");
        /* As for any file at the name that the daemon did not make: the start fails on it, and leaves it be. */
        log = start_fails("it took over a file the killed run did not leave");
        ck_assert_msg(strstr(log, "shmbroker.moded"), "the log does not name the file:\n%s", log);
        free(log);
        assert_file("shmbroker.moded", 4096, 0, 0, 0644);
        ck_assert_uint_eq(shm_stat("shmbroker.moded").st_ino, st.st_ino);
        ck_assert_int_eq(unlink(PSEM_DIR "/shmbroker.moded"), 0);
}
END_TEST

/* SIGKILL and a start with the same config: the same files, contents kept. */
START_TEST(test_crash_adopt) {
        char *before = shm_listing();
        struct stat seg, sem;
        char *data;
        int fd, fds[PROTO_FDS_MAX];
        size_t n;
        json_t *resp;

        test_daemon_write_config(&td, "[" RAW1 ", " RING1 "]");
        test_start_ok();
        sem = shm_stat("sem.shmbroker.raw1.2");
        seg = mark_and_kill("shmbroker.raw1");

        test_start_ok();
        assert_taken_over("raw1", "shmbroker.raw1", &seg);
        ck_assert_uint_eq(shm_stat("sem.shmbroker.raw1.2").st_ino, sem.st_ino);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.2"), 5);
        fd = test_connect(td.socket);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"ro\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        json_decref(resp);
        data = mmap(NULL, 5000, PROT_READ, MAP_SHARED, fds[0], 0);
        ck_assert_ptr_ne(data, MAP_FAILED);
        ck_assert_str_eq(data, KEPT);
        munmap(data, 5000);
        close_all(fds, n);
        close(fd);

        stop_and_assert_listing(before);
}
END_TEST

/*
 * A crash, and a client with a read-write descriptor grew the segment
 * while no daemon ran: the file at the name is the recorded inode, the
 * daemon's, but no longer of the recorded size. The start must not take
 * it over (its mapping would not cover the file) but make raw1 anew, of
 * its configured size, before it answers anyone.
 */
START_TEST(test_crash_adopt_refuses_a_resized_segment) {
        char *before = shm_listing();
        struct stat seg;
        int fd;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        seg = mark_and_kill("shmbroker.raw1");
        fd = open(PSEM_DIR "/shmbroker.raw1", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 3 * 4096), 0);
        close(fd);

        test_start_ok();
        ck_assert_msg(shm_stat("shmbroker.raw1").st_ino != seg.st_ino, "the resized segment was taken over");
        assert_file("shmbroker.raw1", 5000, 0, GID, 0640);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * Start with RAW1, kill the daemon, spoil its semaphore 2 with spoil(),
 * start again: the semaphore must be made anew (another file, live, its
 * configured value), not taken over; what names the spoiling.
 */
static void assert_spoiled_semaphore_made_anew(void (*spoil)(PosixSemFile *), const char *what) {
        char *before = shm_listing();
        struct stat sem;
        PosixSemFile *s;
        size_t size;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        sem = shm_stat("sem.shmbroker.raw1.2");
        s = map_name("sem.shmbroker.raw1.2", &size);
        test_daemon_kill(&td, SIGKILL);
        spoil(s);
        munmap(s, size);

        test_start_ok();
        ck_assert_msg(shm_stat("sem.shmbroker.raw1.2").st_ino != sem.st_ino, "a semaphore %s was taken over", what);
        s = map_name("sem.shmbroker.raw1.2", &size);
        ck_assert_uint_eq(__atomic_load_n(&s->state, __ATOMIC_ACQUIRE), PSEM_STATE_LIVE);
        munmap(s, size);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.2"), 5);
        stop_and_assert_listing(before);
}

static void mark_removed(PosixSemFile *s) {
        __atomic_store_n(&s->state, (uint32_t) PSEM_STATE_REMOVED, __ATOMIC_RELEASE);
}

static void change_magic(PosixSemFile *s) {
        s->magic ^= 1;
}

/*
 * A crash in the middle of a removal, after the semaphores were marked
 * removed (every waiter told, every later call EIDRM) and before their
 * files went: the next start finds a recorded semaphore marked removed.
 * Taken over, it would fail every call on it for good; the start must make
 * the channel anew, its semaphores live with their configured values.
 */
START_TEST(test_crash_adopt_refuses_a_semaphore_marked_removed) {
        assert_spoiled_semaphore_made_anew(mark_removed, "marked removed");
}
END_TEST

/*
 * The same with a semaphore file whose magic a writer changed while no
 * daemon ran: not a semaphore of this layout, whatever its state word
 * says. The start makes the channel anew rather than take it over.
 */
START_TEST(test_crash_adopt_refuses_a_semaphore_of_another_magic) {
        assert_spoiled_semaphore_made_anew(change_magic, "file of another magic");
}
END_TEST

/* A file removed behind the daemon's back is noticed at the next open, and the channel made again. */
START_TEST(test_removed_behind_back) {
        char *before = shm_listing();
        json_t *resp;
        int fd;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.raw1.1"), 0);
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        assert_file("sem.shmbroker.raw1.1", sizeof(PosixSemFile), 0, GID, 0640);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.1"), 0);
        ck_assert_int_eq(sem_value_by_name("/shmbroker.raw1.2"), 5);
        close(fd);
        /* Made again as configured: a crash restart takes the new files over. */
        {
                struct stat seg = shm_stat("shmbroker.raw1");
                char *log;

                test_daemon_kill(&td, SIGKILL);
                test_start_ok();
                log = log_now();
                ck_assert_msg(strstr(log, "Took over channel raw1"), "raw1 was not adopted:\n%s", log);
                free(log);
                ck_assert_uint_eq(shm_stat("shmbroker.raw1").st_ino, seg.st_ino);
        }
        stop_and_assert_listing(before);
}
END_TEST

/*
 * A channel whose configured owner is not the daemon's user: its files are
 * that user's, yet a stop removes them (the daemon holds them open, so
 * their inodes are still the ones it made), and the next start makes them
 * again instead of failing over its own leftovers. A reload that drops
 * the channel removes them too.
 */
START_TEST(test_other_owner_removed) {
        static const char theirs[] = "{\"name\": \"theirs\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 64, "
                                     "\"slots\": 8, \"owner\": 65534, \"mode\": \"0600\"}";
        char config[512], *before = shm_listing();
        json_t *resp;

        snprintf(config, sizeof config, "[%s]", theirs);
        test_daemon_write_config(&td, config);
        test_start_ok();
        assert_file("shmbroker.theirs", (off_t) ring_segment_size(64, 8), NOBODY, 0, 0600);
        assert_file("sem.shmbroker.theirs.0", sizeof(PosixSemFile), NOBODY, 0, 0600);
        test_daemon_stop_ok(&td);
        assert_listing(before);

        test_start_ok();
        assert_file("shmbroker.theirs", (off_t) ring_segment_size(64, 8), NOBODY, 0, 0600);
        test_daemon_write_config(&td, "[" SV1 "]");
        resp = reload_ok();
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "removed"), 0)), "theirs");
        json_decref(resp);
        assert_listing(before);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * Whoever may write the name (the daemon's user, as here, or in sticky
 * /dev/shm the owner the config gives the files) may put another file
 * there in one rename(2). The channel's name then no longer reaches the
 * daemon's file: the next open must notice it as it notices a removal,
 * and never hand out descriptors of a file that no name reaches while
 * programs that open the channel by name get the other file.
 */
START_TEST(test_replaced_behind_back) {
        char *before = shm_listing();
        struct stat at_name;
        int fd, fds[PROTO_FDS_MAX];
        size_t n = 0;
        json_t *resp;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        /* Another file at the name, of the same size, put there in one step. */
        fd = open(PSEM_DIR "/planted", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 5000), 0);
        close(fd);
        ck_assert_int_eq(rename(PSEM_DIR "/planted", PSEM_DIR "/shmbroker.raw1"), 0);
        at_name = shm_stat("shmbroker.raw1");

        /* Not made again over another's file: the channel is gone, and that file left as it is. */
        fd = test_connect(td.socket);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"rw\", \"fd\": true}",
                                fds, PROTO_FDS_MAX, &n);
        ck_assert_msg(n == 0, "the open handed out %zu descriptors of files no name reaches: %s", n,
                      json_dumps(resp, JSON_COMPACT));
        ck_assert_str_eq(json_string_value(json_object_get(resp, "error")), "EIDRM");
        json_decref(resp);
        close(fd);
        ck_assert_uint_eq(shm_stat("shmbroker.raw1").st_ino, at_name.st_ino);
        ck_assert_int_eq(unlink(PSEM_DIR "/shmbroker.raw1"), 0);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * A ring made again after a file went behind the daemon's back gets fresh
 * FIFOs, as a replaced one does: a program that still has the old ones
 * open (a client of the old ring, which may since have lost its rights)
 * must not drain the wake-ups meant for the new ring's waiters. Whoever
 * waits on an old one is woken, to find its ring removed.
 */
START_TEST(test_remade_ring_gets_fresh_fifos) {
        char path[600];
        struct stat old, now;
        struct pollfd pfd;
        json_t *resp;
        int fd, sock;

        test_daemon_write_config(&td, "[" RING1 "]");
        test_start_ok();
        snprintf(path, sizeof path, "%s.wake/ring1.data", td.socket);
        fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &old), 0);
        ck_assert_int_eq(unlink(PSEM_DIR "/sem.shmbroker.ring1.0"), 0);

        sock = test_connect(td.socket);
        resp = test_request(sock, "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(sock);
        ck_assert_int_eq(lstat(path, &now), 0);
        ck_assert_msg(S_ISFIFO(now.st_mode) && now.st_ino != old.st_ino, "the remade ring kept its old FIFO");
        pfd = (struct pollfd) { .fd = fd, .events = POLLIN };
        ck_assert_msg(poll(&pfd, 1, 0) == 1, "the remade ring's old FIFO was not written");
        close(fd);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * A crash, then a start whose config no longer has the ring: its FIFOs go
 * with it, and whoever still waits on one is woken, to find the ring
 * removed, rather than sleep on a FIFO nobody will write again.
 */
START_TEST(test_crash_restart_wakes_the_fifos_it_sweeps) {
        char path[600];
        struct pollfd pfd;
        int fd;

        test_daemon_write_config(&td, "[" RING1 "]");
        test_start_ok();
        snprintf(path, sizeof path, "%s.wake/ring1.data", td.socket);
        fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        test_daemon_kill(&td, SIGKILL);
        test_daemon_write_config(&td, "[" SV1 "]");
        test_start_ok();
        ck_assert_msg(access(path, F_OK) < 0 && errno == ENOENT, "the dropped ring's FIFO is still there");
        pfd = (struct pollfd) { .fd = fd, .events = POLLIN };
        ck_assert_msg(poll(&pfd, 1, 0) == 1, "the dropped ring's FIFO was not written");
        close(fd);
        test_daemon_stop_ok(&td);
}
END_TEST

/* Connect and open channel rw with its descriptors (fds, n of them): the connection. */
static int open_with_fds(const char *channel, int *fds, size_t *n) {
        char req[160];
        int fd = test_connect(td.socket);
        json_t *resp;

        snprintf(req, sizeof req, "{\"op\": \"open\", \"channel\": \"%s\", \"access\": \"rw\", \"fd\": true}", channel);
        resp = test_request_fds(fd, req, fds, PROTO_FDS_MAX, n);
        test_assert_ok(resp);
        json_decref(resp);
        return fd;
}

/*
 * The same, where the client gives the segment its size back after the
 * daemon's access hit the hole: the daemon's mapping of the lost pages is
 * its own private memory since, so the ring it serves is no longer the
 * file. Its size is right again, yet the next open must make it anew.
 */
START_TEST(test_truncated_and_regrown_by_client) {
        int fd, fds[PROTO_FDS_MAX], seg_fd, held;
        struct stat seg;
        size_t n;
        json_t *resp;

        test_daemon_write_config(&td, "[" RING1 "]");
        test_start_ok();
        fd = open_with_fds("ring1", fds, &n);
        held = daemon_fd_count();
        seg = shm_stat("shmbroker.ring1");
        seg_fd = dup(fds[0]);
        ck_assert_int_ge(seg_fd, 0);
        ck_assert_int_eq(ftruncate(fds[0], 0), 0);
        close_all(fds, n);
        /*
         * The close marks the holder's entry DEAD in the ring's holder table:
         * the daemon's access that hits the hole. (A connection that just
         * ends leaves the entry as it is, an orphan of a live process.)
         */
        resp = test_request(fd, "{\"op\": \"close\", \"channel\": \"ring1\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        for (int64_t deadline = test_now_ms() + 5000; daemon_fd_count() >= held && test_now_ms() < deadline;)
                usleep(10 * 1000);
        ck_assert_int_lt(daemon_fd_count(), held);
        ck_assert_int_eq(ftruncate(seg_fd, seg.st_size), 0);
        close(seg_fd);

        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        close(fd);
        ck_assert_msg(shm_stat("shmbroker.ring1").st_ino != seg.st_ino,
                      "the ring was served on from a mapping that no longer is the file");
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * An rw client may ftruncate(2) the files it was handed. The daemon's own
 * mappings then end early; it must neither die of SIGBUS touching them
 * (status, holders, removal) nor keep serving the broken files: the next
 * open or status makes the channel anew, and a stop still removes all.
 */
START_TEST(test_truncated_by_client) {
        int fd, fds[PROTO_FDS_MAX];
        char *before = shm_listing();
        struct stat seg = {};
        size_t n;
        json_t *resp;

        test_daemon_write_config(&td, "[" RING1 ", " RAW1 "]");
        test_start_ok();
        fd = open_with_fds("ring1", fds, &n);
        seg = shm_stat("shmbroker.ring1");
        ck_assert_int_eq(ftruncate(fds[0], 0), 0);      /* the segment, under the ring's header */
        ck_assert_int_eq(ftruncate(fds[1], 0), 0);      /* its semaphore */
        close_all(fds, n);
        /* The daemon touches the ring's holder table as the holder goes. */
        close(fd);

        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"status\", \"channel\": \"ring1\"}");
        json_decref(resp);
        resp = test_request(fd, "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        /* Made anew, whole. */
        ck_assert_uint_ne(shm_stat("shmbroker.ring1").st_ino, seg.st_ino);
        assert_file("shmbroker.ring1", (off_t) ring_segment_size(64, 8), 0, 0, 0600);
        assert_file("sem.shmbroker.ring1.0", (off_t) sizeof(PosixSemFile), 0, 0, 0600);

        /* Truncated right before a stop: the removal marks and posts survive it, and nothing is left. */
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"raw1\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        json_decref(resp);
        /* All but the lock holder table (fds[1]), which comes read-only: that one cannot be truncated. */
        for (size_t i = 0; i < n; i++)
                ck_assert_int_eq(ftruncate(fds[i], 0), i == 1 ? -1 : 0);
        close_all(fds, n);
        resp = test_request_fds(fd, "{\"op\": \"open\", \"channel\": \"ring1\", \"access\": \"rw\", \"fd\": true}", fds,
                                PROTO_FDS_MAX, &n);
        test_assert_ok(resp);
        json_decref(resp);
        ck_assert_int_eq(ftruncate(fds[0], 0), 0);
        ck_assert_int_eq(ftruncate(fds[1], 0), 0);
        close_all(fds, n);
        close(fd);
        stop_and_assert_listing(before);
}
END_TEST

/*
 * An rw client may write anything into a semaphore's file, the sem_t
 * included. The daemon posts each semaphore once when it removes it (a stop
 * here); a post must not take the words it finds there as glibc's own:
 * glibc's sem_post() makes the futex call that the sem_t's "private" word
 * names, and aborts the process when the kernel refuses it. Semaphore 0 is
 * given a waiter and a "private" that turns FUTEX_WAKE into no futex
 * operation at all (ENOSYS: glibc aborts), semaphore 1 one that turns it
 * into FUTEX_WAIT on the value the post leaves (it would never return).
 * The words are glibc's layout of a process-shared sem_t with 64-bit
 * atomics: the value in the low half of the first 8 bytes, the waiters in
 * the high half, then "private".
 */
static void scribble_sem(int fd, uint64_t data, int32_t private) {
        PosixSemFile *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

        ck_assert_ptr_ne(s, MAP_FAILED);
        memcpy(&s->sem, &data, sizeof data);
        memcpy((char *) &s->sem + sizeof data, &private, sizeof private);
        ck_assert_int_eq(munmap(s, sizeof *s), 0);
}

START_TEST(test_scribbled_semaphore_does_not_stop_the_daemon) {
        char *before = shm_listing();
        int fd, fds[PROTO_FDS_MAX];
        size_t n;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        fd = open_with_fds("raw1", fds, &n);
        ck_assert_uint_eq(n, 5);        /* the segment, its lock holder table, then its three semaphores */
        scribble_sem(fds[2], UINT64_C(1) << 32, (FUTEX_WAKE | FUTEX_PRIVATE_FLAG) ^ 127);
        scribble_sem(fds[3], UINT64_C(1) << 32, (FUTEX_WAKE | FUTEX_PRIVATE_FLAG) ^ FUTEX_WAIT);
        close_all(fds, n);
        close(fd);
        /* Exits 0 within the stop's timeout, and removes everything. */
        stop_and_assert_listing(before);
}
END_TEST

/*
 * A status reads each posix semaphore's value word from its sem_t (glibc's
 * sem_getvalue() gives it as an int). An rw client may write a word no
 * post makes (over INT_MAX): the answer must still hold values
 * that clients accept (0..INT32_MAX, proto/response.c), or one scribble
 * makes every status answer that lists the channel unreadable to all.
 */
START_TEST(test_scribbled_semaphore_value_keeps_status_readable) {
        char *before = shm_listing();
        int fd, fds[PROTO_FDS_MAX];
        json_t *resp, *sems;
        uint32_t *value;
        size_t n;

        test_daemon_write_config(&td, "[" RAW1 "]");
        test_start_ok();
        fd = open_with_fds("raw1", fds, &n);
        ck_assert_uint_eq(n, 5);
        value = mmap(NULL, sizeof(PosixSemFile), PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
        ck_assert_ptr_ne(value, MAP_FAILED);
        __atomic_store_n(value, UINT32_C(0x80000000), __ATOMIC_RELAXED);     /* glibc: the value's word */
        resp = test_request(fd, "{\"op\": \"status\", \"channel\": \"raw1\"}");
        test_assert_ok(resp);
        sems = json_object_get(json_array_get(json_object_get(resp, "channels"), 0), "semaphores");
        for (size_t i = 0; i < json_array_size(sems); i++) {
                json_int_t v = json_integer_value(json_object_get(json_array_get(sems, i), "value"));

                ck_assert_msg(v >= 0 && v <= INT32_MAX, "semaphore %zu: value %" JSON_INTEGER_FORMAT, i, v);
        }
        json_decref(resp);
        ck_assert_int_eq(munmap(value, sizeof(PosixSemFile)), 0);
        close_all(fds, n);
        close(fd);
        stop_and_assert_listing(before);
}
END_TEST

#if defined(__x86_64__)
/*
 * proto/sem-t.h: the daemon's post at a removal "tries the compare-and-swap
 * at most tries times ... for a caller that must not be held by a writer
 * that keeps changing the word". An rw client that rewrites a semaphore's
 * value word without pause must not hold the daemon in a stop or a reload.
 * A writer running free on another CPU almost never lands between the
 * daemon's load and its compare-and-swap (a few nanoseconds apart), so a
 * post that loops until it wins would pass such a test too. Here the
 * writer lands there every time: the test traces the daemon with a
 * hardware watchpoint (x86 debug registers) on its mapping of the word, and
 * after each of the daemon's accesses writes another value through its own
 * mapping, as the rw client it is may. Every compare-and-swap then fails;
 * the daemon must give up the post and go on. SPIN_ACCESSES_MAX of its
 * accesses are far more than a bounded post makes (one load and 16 tries
 * per semaphore), and an unbounded one reaches them at once.
 */
#define SPIN_ACCESSES_MAX 10000
#define SPUN "{\"name\": \"spun\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [0]}"
#define SPUN2 "{\"name\": \"spun2\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [0]}"

static void poke_debugreg(pid_t pid, int i, uint64_t v) {
        ck_assert_msg(ptrace(PTRACE_POKEUSER, pid, offsetof(struct user, u_debugreg[i]), v) == 0,
                      "debug register %d: %s", i, strerror(errno));
}

/* Watch the 8 bytes at addr in pid (stopped) for reads and writes: DR0, its R/W bits 11, its length 8 (10). */
static void watch_word(pid_t pid, uint64_t addr) {
        poke_debugreg(pid, 7, 0);
        poke_debugreg(pid, 0, addr);
        poke_debugreg(pid, 6, 0);
        poke_debugreg(pid, 7, 1 | UINT64_C(3) << 16 | UINT64_C(2) << 18);
}

/* Where the daemon maps the file of channel's semaphore 0 (it keeps it mapped while the channel lives). */
static uint64_t daemon_sem_address(const char *channel) {
        char path[64], suffix[96], line[512];
        uint64_t addr = 0;
        int found = 0;
        FILE *f;

        snprintf(path, sizeof path, "/proc/%d/maps", (int) td.pid);
        snprintf(suffix, sizeof suffix, "/sem.shmbroker.%s.0\n", channel);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof line, f)) {
                size_t n = strlen(line), k = strlen(suffix);

                if (n >= k && strcmp(line + n - k, suffix) == 0 && sscanf(line, "%" SCNx64, &addr) == 1)
                        found++;
        }
        fclose(f);
        ck_assert_msg(found == 1, "the daemon maps %s's semaphore %d times", channel, found);
        return addr;
}

/* The word a client maps: the first 8 bytes of the sem_t, glibc's value (low half) and waiters (high half). */
static uint64_t *client_sem_word(const char *channel) {
        int fd, fds[PROTO_FDS_MAX];
        uint64_t *word;
        size_t n;

        fd = open_with_fds(channel, fds, &n);
        ck_assert_uint_eq(n, 3);        /* the segment, its lock holder table, then its one semaphore */
        word = mmap(NULL, sizeof(PosixSemFile), PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
        ck_assert_ptr_ne(word, MAP_FAILED);
        close_all(fds, n);
        close(fd);
        return word;
}

typedef struct Spinner {
        uint64_t *word;                 /* the client's mapping of the word the daemon's watchpoint is on */
        unsigned accesses;              /* the daemon's accesses seen, each followed by a rewrite */
} Spinner;

/*
 * Let the traced daemon run, rewriting the word after each of its accesses,
 * until process `until` (the daemon itself, or a child) ends: its wait
 * status. The value stays small and the waiter half 0, so a post meets no
 * overflow or waiter to stop it, only a word that changed. With
 * detach_after_post, the daemon is let go at its first system call after
 * the post began (a post's tries make none): LeakSanitizer, in the
 * sanitizer build, cannot check a process that is still traced when it exits.
 */
static int spin_until(Spinner *sp, pid_t until, bool detach_after_post) {
        int sig = 0;
        enum __ptrace_request resume = detach_after_post ? PTRACE_SYSCALL : PTRACE_CONT;

        ck_assert_int_eq(ptrace(resume, td.pid, 0, 0), 0);
        for (;;) {
                int status;
                pid_t pid = waitpid(-1, &status, __WALL);

                ck_assert_int_gt(pid, 0);
                if (pid == until && !WIFSTOPPED(status))
                        return status;
                if (pid != td.pid || !WIFSTOPPED(status))
                        ck_abort_msg("process %d ended (status %#x) while the daemon was traced", (int) pid, status);
                sig = 0;
                if (WSTOPSIG(status) == (SIGTRAP | 0x80)) {
                        if (sp->accesses > 1) {
                                poke_debugreg(td.pid, 7, 0);
                                ck_assert_int_eq(ptrace(PTRACE_DETACH, td.pid, 0, 0), 0);
                                ck_assert_int_eq(waitpid(until, &status, 0), until);
                                return status;
                        }
                } else if (WSTOPSIG(status) == SIGTRAP && status >> 16 == 0) {
                        long dr6 = ptrace(PTRACE_PEEKUSER, td.pid, offsetof(struct user, u_debugreg[6]), 0);

                        ck_assert_msg(dr6 & 1, "a SIGTRAP not of the watchpoint (DR6 %#lx)", dr6);
                        poke_debugreg(td.pid, 6, 0);
                        ck_assert_msg(++sp->accesses < SPIN_ACCESSES_MAX,
                                      "the daemon accessed the semaphore word %d times, each time finding it changed "
                                      "by a client, and still goes on: its post is not bounded", SPIN_ACCESSES_MAX);
                        __atomic_store_n(sp->word, (uint32_t) __atomic_load_n(sp->word, __ATOMIC_SEQ_CST) % 1000 + 1,
                                         __ATOMIC_SEQ_CST);
                } else if (WSTOPSIG(status) != SIGTRAP && status >> 16 != PTRACE_EVENT_STOP)
                        sig = WSTOPSIG(status);         /* a real signal (SIGTERM) goes on */
                ck_assert_int_eq(ptrace(resume, td.pid, 0, sig), 0);
        }
}

/* A child that asks for a reload and exits 0 once it is answered ok. */
static pid_t reload_kid(void) {
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int fd = test_connect(td.socket);
                json_t *resp = test_request(fd, "{\"op\": \"reload\"}");
                json_t *ok = json_object_get(resp, "ok");

                _exit(json_is_true(ok) ? 0 : 1);
        }
        return pid;
}

START_TEST(test_semaphore_word_spun_by_a_client_does_not_hold_the_daemon) {
        char *before = shm_listing();
        Spinner sp = {}, sp2 = {};
        int status;
        pid_t pid;

        test_daemon_write_config(&td, "[" SPUN ", " SPUN2 "]");
        test_start_ok();
        sp.word = client_sem_word("spun");
        sp2.word = client_sem_word("spun2");

        /* A reload that removes spun: answered, and the daemon lives on. */
        test_daemon_trace(&td);
        watch_word(td.pid, daemon_sem_address("spun"));
        test_daemon_write_config(&td, "[" SPUN2 "]");
        pid = reload_kid();
        status = spin_until(&sp, pid, false);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the reload that removed spun: status %#x", status);
        ck_assert_msg(sp.accesses > 1, "the premise: the removal's post met the changed word (%u accesses)",
                      sp.accesses);
        ck_assert(!shm_exists("shmbroker.spun") && !shm_exists("sem.shmbroker.spun.0"));

        /* A stop: spun2 removed, exit 0. */
        ck_assert_int_eq(ptrace(PTRACE_INTERRUPT, td.pid, 0, 0), 0);
        for (;;) {
                ck_assert_int_eq(waitpid(td.pid, &status, __WALL), td.pid);
                ck_assert(WIFSTOPPED(status));
                if (status >> 16 == PTRACE_EVENT_STOP)
                        break;
                ck_assert_int_eq(ptrace(PTRACE_CONT, td.pid, 0, WSTOPSIG(status) == SIGTRAP ? 0 : WSTOPSIG(status)), 0);
        }
        watch_word(td.pid, daemon_sem_address("spun2"));
        ck_assert_int_eq(kill(td.pid, SIGTERM), 0);
        status = spin_until(&sp2, td.pid, true);
        td.pid = -1;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the stop: status %#x", status);
        ck_assert_msg(sp2.accesses > 1, "the premise: the stop's post met the changed word (%u accesses)",
                      sp2.accesses);
        ck_assert_int_eq(munmap(sp.word, sizeof(PosixSemFile)), 0);
        ck_assert_int_eq(munmap(sp2.word, sizeof(PosixSemFile)), 0);
        assert_listing(before);
        free(before);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST
#endif

/* Holds "g" rw as NOBODY in group GID until told to go (its pipe closes). */
static pid_t group_holder(int *ret_go) {
        int ready[2], go[2];
        pid_t pid;
        char c;

        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                json_t *resp;
                int fd;

                close(ready[0]);
                close(go[1]);
                test_drop_privileges(NOBODY, GID, 0);
                fd = test_connect(td.socket);
                resp = test_request(fd, "{\"op\": \"open\", \"channel\": \"g\", \"access\": \"rw\"}");
                if (!json_is_true(json_object_get(resp, "ok")))
                        _exit(2);
                json_decref(resp);
                if (write(ready[1], "x", 1) != 1)
                        _exit(3);
                (void) read(go[0], &c, 1);
                close(fd);
                _exit(0);
        }
        close(ready[1]);
        close(go[0]);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        close(ready[0]);
        *ret_go = go[1];
        return pid;
}

/*
 * A reload that gives a posix channel another group takes the rights of a
 * holder that had them only through the old group: its descriptors and
 * mappings cannot be taken back, so the channel is replaced, not changed
 * in place (a file's old group is no creator group that would still admit it).
 */
START_TEST(test_reload_group_refuses_holder) {
        struct stat seg;
        char *log;
        json_t *resp;
        int go, status;
        pid_t holder;

        test_daemon_write_config(&td, "[{\"name\": \"g\", \"kind\": \"posix\", \"size\": 4096, \"group\": 4321, "
                                 "\"mode\": \"0660\"}]");
        test_start_ok();
        holder = group_holder(&go);
        seg = shm_stat("shmbroker.g");

        test_daemon_write_config(&td, "[{\"name\": \"g\", \"kind\": \"posix\", \"size\": 4096, \"group\": 4322, "
                                 "\"mode\": \"0660\"}]");
        resp = reload_ok();
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(resp, "changed"), 0)), "g");
        json_decref(resp);
        ck_assert_msg(shm_stat("shmbroker.g").st_ino != seg.st_ino, "changed in place under a holder it refuses");
        assert_file("shmbroker.g", 4096, 0, 4322, 0660);
        log = log_now();
        ck_assert_msg(strstr(log, "would refuse a current holder"), "the log does not say why:\n%s", log);
        free(log);

        close(go);
        ck_assert_int_eq(waitpid(holder, &status, 0), holder);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "holder status %d", status);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * A daemon without CAP_CHOWN (as the shipped unit runs it) cannot give a
 * posix channel a group its user is not a member of. shmbroker.json(5)
 * says that this "fails the start or the reload with a message that says
 * so"; a reload that only changes the group (in place) must then be
 * refused, not answered ok with the channel listed as changed while its
 * files keep the old group.
 */
START_TEST(test_unprivileged_reload_group_refused) {
        json_t *resp;

        start_as_nobody_with_mine();

        test_daemon_write_config(&td, "[{\"name\": \"mine\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0640\", "
                                      "\"group\": 4242}]");
        resp = reload_answer();
        ck_assert_msg(!json_is_true(json_object_get(resp, "ok")), "the reload claims success: %s",
                      json_dumps(resp, JSON_COMPACT));
        ck_assert_msg(strstr(test_jstr(resp, "message"), "CAP_CHOWN") && strstr(test_jstr(resp, "message"), "\"mine\""),
                      "the refusal does not say why: %s", test_jstr(resp, "message"));
        json_decref(resp);
        assert_file("shmbroker.mine", 4096, NOBODY, NOBODY, 0640);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * The shipped unit filters chown(2) altogether (SystemCallFilter=
 * ~@privileged, EPERM). A posix channel of the daemon's own user and
 * group needs no chown, so it must start there: the files are made with
 * those ids already, and giving them the same ones again is no call.
 */
START_TEST(test_own_ids_need_no_chown) {
        td.deny_chown = true;
        start_as_nobody_with_mine();
        assert_file("sem.shmbroker.mine.0", (off_t) sizeof(PosixSemFile), NOBODY, NOBODY, 0640);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * /dev/shm is world-writable: another user may fill it. ftruncate(2) makes
 * a sparse file whatever the room, so a ring whose header the daemon then
 * writes has no page behind it. The start must fail, naming the channel,
 * instead of serving a ring whose header never reached the file (clients
 * that map it die of SIGBUS).
 */
START_TEST(test_full_dev_shm_fails_the_start) {
        char filler[256], *log;
        int fd;

        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", MS_REMOUNT, "size=256k") == 0, "remount: %s", strerror(errno));
        snprintf(filler, sizeof filler, PSEM_DIR "/someone-elses");
        fd = open(filler, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        for (char page[4096] = { 1 }; write(fd, page, sizeof page) == (ssize_t) sizeof page;)
                ;
        close(fd);

        test_daemon_write_config(&td, "[" RING1 "]");
        log = start_fails("it serves a ring in a full /dev/shm");
        ck_assert_msg(strstr(log, "\"ring1\""), "the log does not name the channel:\n%s", log);
        free(log);
        ck_assert_int_eq(unlink(filler), 0);
}
END_TEST

/* Reload the config just written: it must fail, channel p stay listed; then close hold and stop. */
static void assert_reload_refused_keeping_p(int hold) {
        int fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\": \"reload\"}"), *list = test_request(fd, "{\"op\": \"list\"}");

        close(fd);
        ck_assert_msg(test_find_channel(list, "p"), "the reload lost channel p: %s", json_dumps(resp, JSON_COMPACT));
        ck_assert_msg(!json_is_true(json_object_get(resp, "ok")), "the reload claims success: %s",
                      json_dumps(resp, JSON_COMPACT));
        json_decref(resp);
        json_decref(list);
        close(hold);
        test_daemon_stop_ok(&td);
}

/*
 * A posix channel whose size a reload changes is replaced: its old files go
 * first, and a holder keeps their pages. In a /dev/shm with room for the new
 * size but not for both, the new file cannot be given its pages. The reload
 * must then fail and change nothing (the man page: a full /dev/shm "fails
 * the start or the reload, naming the channel"), not answer ok with the
 * channel gone.
 */
START_TEST(test_full_dev_shm_fails_a_replacing_reload) {
        int hold;

        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", MS_REMOUNT, "size=1m") == 0, "remount: %s", strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": \"400K\"}]");
        test_start_ok();
        hold = open(PSEM_DIR "/shmbroker.p", O_RDONLY | O_CLOEXEC);     /* a client's hold on the old pages */
        ck_assert_int_ge(hold, 0);

        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": \"700K\"}]");
        assert_reload_refused_keeping_p(hold);
}
END_TEST


/*
 * The same with /dev/shm's inodes, which anyone can use up with empty files
 * (they take no bytes): the reload's room check must count them too, or the
 * replaced channel's old files go (a holder keeps their inodes) and the new
 * ones cannot be made.
 */
START_TEST(test_no_inodes_in_dev_shm_fails_a_replacing_reload) {
        char path[64];
        int fd, hold;

        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", MS_REMOUNT, "size=8m,nr_inodes=32") == 0, "remount: %s",
                      strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": \"64K\", \"semaphores\": [1]}]");
        test_start_ok();
        hold = open(PSEM_DIR "/shmbroker.p", O_RDONLY | O_CLOEXEC);     /* a client's hold on the old inode */
        ck_assert_int_ge(hold, 0);
        /* Another user's empty files, as many as the inodes go. */
        for (int i = 0;; i++) {
                snprintf(path, sizeof path, PSEM_DIR "/someone-elses.%d", i);
                fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                if (fd < 0) {
                        ck_assert_int_eq(errno, ENOSPC);
                        break;
                }
                close(fd);
        }

        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": \"128K\", \"semaphores\": [1]}]");
        assert_reload_refused_keeping_p(hold);
}
END_TEST

static uint64_t round_to_pages(uint64_t bytes) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (bytes + page - 1) / page * page;
}

/*
 * Every file a replacing reload makes takes room: the segment, a broadcast
 * channel's table, and a page for each semaphore (the channel's own too).
 * With room for all of them but one page, and a client holding the old
 * files, the reload must be refused before it removes anything, as when
 * the segment alone does not fit (the man page: a full /dev/shm "fails the
 * start or the reload, naming the channel"), not lose p at the table or a
 * semaphore after the old files went.
 */
START_TEST(test_dev_shm_short_of_the_table_and_semaphores_fails_a_replacing_reload) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE), need, room;
        struct statvfs vfs;
        int fd, hold, hold_sem;

        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", MS_REMOUNT, "size=1m") == 0, "remount: %s", strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096}]");
        test_start_ok();
        hold = open(PSEM_DIR "/shmbroker.p", O_RDONLY | O_CLOEXEC);     /* a client's hold on the old pages */
        ck_assert_int_ge(hold, 0);
        hold_sem = open(PSEM_DIR "/sem.shmbroker.p.0", O_RDONLY | O_CLOEXEC);  /* and on its semaphore's */
        ck_assert_int_ge(hold_sem, 0);

        /* Another user's file leaves one page less than the new p needs. */
        need = round_to_pages(bcast_segment_size(64, 8, 4)) + round_to_pages(bcast_table_size(4)) +
               (BCAST_NSEMS + 2) * round_to_pages(sizeof(PosixSemFile));
        ck_assert_int_eq(statvfs(PSEM_DIR, &vfs), 0);
        room = (uint64_t) vfs.f_bavail * vfs.f_frsize;
        ck_assert_uint_gt(room, need);
        fd = open(PSEM_DIR "/someone-elses", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(posix_fallocate(fd, 0, (off_t) (room - need + page)), 0);
        close(fd);
        ck_assert_int_eq(statvfs(PSEM_DIR, &vfs), 0);
        ck_assert_uint_eq((uint64_t) vfs.f_bavail * vfs.f_frsize, need - page);

        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"layout\": \"broadcast\", "
                                      "\"slot_size\": 64, \"slots\": 8, \"subscribers\": 4, \"semaphores\": [0, 0]}]");
        assert_reload_refused_keeping_p(hold);
        close(hold_sem);
}
END_TEST

/*
 * The reload's room check counts every file a new channel takes: a raw
 * channel with semaphores has a lock holder table file of its own
 * (shmbroker-table.NAME) besides its segment and semaphore files. In a
 * /dev/shm with room for a new such channel q's segment and semaphore
 * file but not its table too, the reload must be refused by that check
 * (ENOSPC, naming the bytes it needs), before it makes anything, not run
 * out of room halfway.
 */
START_TEST(test_full_dev_shm_counts_the_lock_table_file) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE), need, fill;
        struct statvfs vfs;
        json_t *resp;
        const char *msg;
        int fd;

        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", MS_REMOUNT, "size=1m") == 0, "remount: %s", strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096}]");
        test_start_ok();
        /* Pages free: q's segment and its semaphore file, and not its table file. */
        need = 256 * 1024 / page + round_to_pages(sizeof(PosixSemFile)) / page;
        ck_assert_uint_gt(round_to_pages(PSEM_TABLE_SIZE), 0);
        ck_assert_int_eq(statvfs(PSEM_DIR, &vfs), 0);
        ck_assert_uint_eq(vfs.f_bsize, page);
        ck_assert_uint_gt((uint64_t) vfs.f_bavail, need);
        fill = ((uint64_t) vfs.f_bavail - need) * page;
        fd = open(PSEM_DIR "/someone-elses", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(posix_fallocate(fd, 0, (off_t) fill), 0);
        close(fd);
        ck_assert_int_eq(statvfs(PSEM_DIR, &vfs), 0);
        ck_assert_uint_eq((uint64_t) vfs.f_bavail, need);

        test_daemon_write_config(&td, "[{\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096},"
                                      " {\"name\": \"q\", \"kind\": \"posix\", \"size\": \"256K\", \"semaphores\": [1]}]");
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"reload\"}");
        close(fd);
        test_assert_error(resp, "ENOSPC");
        msg = json_string_value(json_object_get(resp, "message"));
        ck_assert_msg(msg && strstr(msg, "need"), "not the room check's refusal: %s", json_dumps(resp, JSON_COMPACT));
        json_decref(resp);
        ck_assert_int_eq(access(PSEM_DIR "/shmbroker.q", F_OK), -1);
        ck_assert_int_eq(access(PSEM_DIR "/shmbroker-table.q", F_OK), -1);
        ck_assert_int_eq(unlink(PSEM_DIR "/someone-elses"), 0);
        test_daemon_stop_ok(&td);
}
END_TEST


/*
 * A /dev/shm without a size limit (tmpfs size=0, as some hosts and
 * containers mount it) reports no blocks and none free: it has room for
 * anything memory has. A reload that adds a posix channel there must go
 * through, as a start with the same file does.
 */
START_TEST(test_unlimited_dev_shm_takes_a_reload) {
        json_t *resp;

        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", MS_REMOUNT, "size=0") == 0, "remount: %s", strerror(errno));
        test_daemon_write_config(&td, "[{\"name\": \"raw\", \"size\": 4096}]");
        test_start_ok();
        test_daemon_write_config(&td, "[{\"name\": \"raw\", \"size\": 4096},"
                                      " {\"name\": \"p\", \"kind\": \"posix\", \"size\": 4096}]");
        resp = reload_answer();
        ck_assert_msg(json_is_true(json_object_get(resp, "ok")), "the reload was refused: %s",
                      json_dumps(resp, JSON_COMPACT));
        json_decref(resp);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * A posix ring's file has one group, the channel's: the daemon's group (root's,
 * as the test runs it) gets nothing of it (files have no creator group, unlike
 * System V objects). Its FIFOs must then give that group nothing either: a
 * process that may not touch the ring could otherwise drain its waiters' bytes.
 */
START_TEST(test_posix_ring_fifos_give_the_daemons_group_nothing) {
        char path[600];
        int r;

        test_daemon_write_config(&td, "[{\"name\": \"r\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 64,"
                                      " \"slots\": 2, \"group\": 4242, \"mode\": \"0660\"}]");
        test_start_ok();
        r = test_open_as(NOBODY, getegid(), PSEM_DIR "/shmbroker.r", O_RDWR);
        ck_assert_msg(r == EACCES, "the daemon's group opened the posix ring: %s", r ? strerror(r) : "ok");
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s.wake/r.%s", td.socket, i ? "space" : "data");
                r = test_open_as(NOBODY, getegid(), path, O_RDWR);
                ck_assert_msg(r == EACCES, "a process refused the posix ring opened its FIFO %s (%s)", path,
                              r ? strerror(r) : "ok");
        }
        test_daemon_stop_ok(&td);
}
END_TEST

/* A file that cannot be mapped (a size no address space holds) fails the start and is not left behind. */
START_TEST(test_create_failure_removes) {
        char *before = shm_listing(), *log;

        test_daemon_write_config(&td, "[" RING1 ", {\"name\": \"huge\", \"kind\": \"posix\", \"size\": "
                                 "\"4194304T\"}]");
        log = start_fails("it must refuse this start");
        ck_assert_msg(strstr(log, PSEM_DIR "/shmbroker.huge"), "the log does not name the file:\n%s", log);
        ck_assert_msg(!strstr(log, "may be left"), "the file was left:\n%s", log);
        free(log);
        assert_listing(before);
        free(before);
}
END_TEST

/* --check-config validates the kind and touches nothing. */
START_TEST(test_check_config) {
        char *before = shm_listing();
        int status = 0;

        test_daemon_write_config(&td, "[" RAW1 "]");
        ck_assert(!test_daemon_start(&td, &status, "--check-config", NULL));
        td.pid = -1;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
        assert_listing(before);
        test_daemon_write_config(&td, "[{\"name\": \"k\", \"kind\": \"posix\", \"size\": 4096, \"key\": 5}]");
        ck_assert(!test_daemon_start(&td, &status, "--check-config", NULL));
        td.pid = -1;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
        assert_listing(before);
        free(before);
}
END_TEST

/*
 * README (POSIX channels), shmbroker-protocol(7): a raw posix channel with
 * semaphores gives each rw hold a lock token from the 256 entries of its
 * lock holder table, so an rw open past 256 live ones is EUSERS; ro opens
 * take none, a channel without semaphores has no table, and a close ends
 * a token for the next rw opener.
 */
START_TEST(test_raw_posix_channel_with_semaphores_takes_256_rw_holds) {
        const char *rw = "{\"op\": \"open\", \"channel\": \"locked\", \"access\": \"rw\"}";
        int fds[PSEM_HOLDERS], extra;
        json_t *resp;

        test_daemon_write_config(&td, "[{\"name\": \"locked\", \"kind\": \"posix\", \"size\": 4096, "
                                      "\"semaphores\": [1], \"mode\": \"0600\"}, "
                                      "{\"name\": \"plain\", \"kind\": \"posix\", \"size\": 4096, \"mode\": \"0600\"}]");
        test_start_ok();
        for (unsigned i = 0; i < PSEM_HOLDERS; i++) {
                fds[i] = test_connect(td.socket);
                resp = test_request(fds[i], rw);
                test_assert_ok(resp);
                ck_assert_int_gt(json_integer_value(json_object_get(resp, "holder")), 0);
                json_decref(resp);
        }
        extra = test_connect(td.socket);
        resp = test_request(extra, rw);
        test_assert_error(resp, "EUSERS");
        /* The refusal names the kind of channel whose table is full. */
        ck_assert_msg(strstr(json_string_value(json_object_get(resp, "message")) ?: "", "posix channel with semaphores"),
                      "the refusal says: %s", json_dumps(resp, JSON_COMPACT));
        json_decref(resp);
        resp = test_request(extra, "{\"op\": \"open\", \"channel\": \"locked\", \"access\": \"ro\"}");
        test_assert_ok(resp);
        json_decref(resp);
        resp = test_request(extra, "{\"op\": \"open\", \"channel\": \"plain\", \"access\": \"rw\"}");
        test_assert_ok(resp);
        json_decref(resp);
        resp = test_request(fds[0], "{\"op\": \"close\", \"channel\": \"locked\"}");
        test_assert_ok(resp);
        json_decref(resp);
        resp = test_request(extra, rw);
        test_assert_ok(resp);
        json_decref(resp);
        for (unsigned i = 0; i < PSEM_HOLDERS; i++)
                close(fds[i]);
        close(extra);
}
END_TEST

/*
 * README, threat model: a writer of a channel's files cannot deny others
 * the channel, short of a truncation. A ring's holder table is in a file
 * every rw opener may write; one who marks every entry LIVE (the first
 * under another generation) must not make the daemon refuse the next rw
 * opener EUSERS, nor give a token that
 * names a hold it handed out before. The daemon goes by what it wrote
 * itself. A raw channel's lock holder table is the daemon's file, which
 * only its user (here root) can write: the same holds all the same.
 */
START_TEST(test_forged_lock_table_denies_no_rw_open) {
        static const char *const channels[2] = { "locked", "ring1" };
        static const char *const files[2] = { "shmbroker-table.locked", "shmbroker.ring1" };
        const uint32_t index_mask = (UINT32_C(1) << RING_TOKEN_INDEX_BITS) - 1;

        test_daemon_write_config(&td, "[{\"name\": \"locked\", \"kind\": \"posix\", \"size\": 4096, "
                                      "\"semaphores\": [1], \"mode\": \"0600\"}, "
                                      "{\"name\": \"ring1\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                      "\"slot_size\": 64, \"slots\": 8}]");
        test_start_ok();
        for (unsigned c = 0; c < 2; c++) {
                char rw[128];
                int fds[3];
                uint32_t tokens[3];
                json_t *resp;
                size_t size;
                void *a = map_name(files[c], &size);
                /* A raw channel's lock tokens, in its table file; a ring's own. */
                RingHolder *table = c == 0 ? (RingHolder *) a : ring_holder_at(a, 0);

                snprintf(rw, sizeof rw, "{\"op\": \"open\", \"channel\": \"%s\", \"access\": \"rw\"}", channels[c]);
                fds[0] = test_connect(td.socket);
                resp = test_request(fds[0], rw);
                test_assert_ok(resp);
                tokens[0] = (uint32_t) json_integer_value(json_object_get(resp, "holder"));
                json_decref(resp);
                ck_assert_uint_ne(tokens[0], 0);
                /* Every entry LIVE, the first one's generation moved on. */
                for (unsigned i = 0; i < RING_HOLDERS; i++)
                        __atomic_store_n(&table[i].word, (uint64_t) (i == 0 ? 7 : 1) << 32 | RING_HOLDER_LIVE,
                                         __ATOMIC_RELAXED);
                for (unsigned k = 1; k < 3; k++) {
                        fds[k] = test_connect(td.socket);
                        resp = test_request(fds[k], rw);
                        test_assert_ok(resp);
                        tokens[k] = (uint32_t) json_integer_value(json_object_get(resp, "holder"));
                        json_decref(resp);
                        ck_assert_uint_ne(tokens[k], 0);
                        /*
                         * Entries, not whole tokens: a token of a live hold's entry under a
                         * later generation differs from that hold's token, yet ends it.
                         */
                        for (unsigned j = 0; j < k; j++)
                                ck_assert_msg((tokens[k] & index_mask) != (tokens[j] & index_mask),
                                              "%s: token %#x names the entry of token %#x, handed out before",
                                              channels[c], tokens[k], tokens[j]);
                }
                for (unsigned k = 0; k < 3; k++)
                        close(fds[k]);
                munmap(a, size);
        }
}
END_TEST

/*
 * proto/posix.h, README (POSIX channels): a raw posix channel's lock
 * holder table is a file of the daemon's own, 0600, handed over read-only
 * to every opener, rw ones too: no client can write it, by the descriptor
 * (no writable mapping, no write, no truncation, no read-write reopen
 * through /proc) or by name, while the channel's other files are open to
 * it as its mode says.
 */
START_TEST(test_lock_holder_table_is_read_only_to_every_opener) {
        static const char *const access[2] = { "rw", "ro" };
        int status;
        pid_t pid;

        test_daemon_write_config(&td, "[{\"name\": \"locked\", \"kind\": \"posix\", \"size\": 4096, "
                                      "\"semaphores\": [1], \"mode\": \"0666\"}]");
        test_start_ok();
        assert_file("shmbroker-table.locked", (off_t) PSEM_TABLE_SIZE, 0, 0, 0600);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                /* Another user, allowed rw on the channel: each step that would give it the table is a failure. */
                test_drop_privileges(4242, 4242, 0);
                (void) prctl(PR_SET_DUMPABLE, 1);
                for (int a = 0; a < 2; a++) {
                        char line[128], path[64];
                        int fd = test_connect(td.socket), fds[PROTO_FDS_MAX], k;
                        size_t n;
                        json_t *resp;

                        snprintf(line, sizeof line, "{\"op\": \"open\", \"channel\": \"locked\", \"access\": \"%s\", "
                                 "\"fd\": true}", access[a]);
                        resp = test_request_fds(fd, line, fds, PROTO_FDS_MAX, &n);
                        if (!json_is_true(json_object_get(resp, "ok")) || n != 3)
                                _exit(10 + a);
                        json_decref(resp);
                        /* The table, in its place: read-only, and mappable for reading only. */
                        if ((fcntl(fds[1], F_GETFL) & O_ACCMODE) != O_RDONLY)
                                _exit(20 + a);
                        if (mmap(NULL, PSEM_TABLE_SIZE, PROT_READ, MAP_SHARED, fds[1], 0) == MAP_FAILED)
                                _exit(22 + a);
                        if (mmap(NULL, PSEM_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0) != MAP_FAILED ||
                            errno != EACCES)
                                _exit(24 + a);
                        if (write(fds[1], "x", 1) >= 0 || ftruncate(fds[1], 0) == 0 || fchmod(fds[1], 0666) == 0)
                                _exit(26 + a);
                        snprintf(path, sizeof path, "/proc/self/fd/%d", fds[1]);
                        k = open(path, O_RDWR | O_CLOEXEC);
                        if (k >= 0 || errno != EACCES)
                                _exit(28 + a);
                        /* An rw opener's semaphore file, by contrast, is writable. */
                        if ((fcntl(fds[2], F_GETFL) & O_ACCMODE) != (a == 0 ? O_RDWR : O_RDONLY))
                                _exit(30 + a);
                        close_all(fds, n);
                        close(fd);
                }
                /* By name: not at all (0600, the daemon's), while the semaphore's file opens as its mode says. */
                if (open(PSEM_DIR "/shmbroker-table.locked", O_RDWR | O_CLOEXEC) >= 0 || errno != EACCES ||
                    open(PSEM_DIR "/shmbroker-table.locked", O_RDONLY | O_CLOEXEC) >= 0 || errno != EACCES)
                        _exit(40);
                if (open(PSEM_DIR "/sem.shmbroker.locked.0", O_RDWR | O_CLOEXEC) < 0)
                        _exit(41);
                _exit(0);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "another user's step %d gave it the table",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        test_daemon_stop_ok(&td);
}
END_TEST

int main(void) {
        const TestGroup groups[] = {
                { "files", CASE_TIMEOUT, { test_files_made, test_status_list, test_check_config, test_access_follows_file_rule,
                                           test_capability_is_the_file_rule, test_unprivileged_daemon,
                                           test_unprivileged_reload_group_refused, test_own_ids_need_no_chown,
                                           test_full_dev_shm_fails_the_start, test_full_dev_shm_fails_a_replacing_reload,
                                           test_posix_ring_fifos_give_the_daemons_group_nothing,
                                           test_unlimited_dev_shm_takes_a_reload } },
                { "room", CASE_TIMEOUT, { test_no_inodes_in_dev_shm_fails_a_replacing_reload,
                                          test_full_dev_shm_counts_the_lock_table_file,
                                          test_dev_shm_short_of_the_table_and_semaphores_fails_a_replacing_reload,
                                          test_unprivileged_daemon_refuses_a_mode_it_cannot_serve } },
                { "fds", CASE_TIMEOUT, { test_open_fds, test_open_fds_pipelined, test_open_fds_unread,
                                         test_refused_open_keeps_no_descriptors,
                                         test_fifos_of_an_open_count_against_the_quarter,
                                         test_open_fds_in_flight_bounded,
                                         test_unread_descriptors_of_one_uid_leave_room_for_others,
                                         test_unread_descriptors_of_one_uid_leave_room_for_others_unprivileged,
                                         test_unread_descriptors_of_closed_connections_leave_room_for_others,
                                         test_read_answers_give_their_descriptors_room_back,
                                         test_read_answers_of_idle_connections_give_their_room_back,
                                         test_unread_descriptors_stop_at_a_quarter } },
                { "fds-shut-down", CASE_TIMEOUT, { test_unread_descriptors_of_shut_down_connections_leave_room_for_others,
                                                   test_unread_descriptors_of_read_shut_down_connections_leave_room_for_others,
                                                   test_unread_descriptors_of_many_uids_leave_room_for_others,
                                                   test_unread_descriptors_of_connections_closed_for_buffers_leave_room_for_others } },
                { "fds-linger", CASE_TIMEOUT, { test_lingering_connections_go_when_their_client_closes,
                                                test_shut_down_connection_with_unread_descriptors_ends_its_holds,
                                                test_unread_descriptors_of_closed_sockets_stop_counting,
                                                test_read_answers_of_other_uids_give_the_budget_back,
                                                test_descriptors_in_flight_of_the_daemons_user_hold_an_answer_not_the_connection } },
                { "cap-exec", CASE_TIMEOUT, { test_capability_gained_by_exec_after_connect_does_not_count } },
                { "unmapped", CASE_TIMEOUT, { test_unmapped_peer_is_not_the_overflow_id } },
                { "foreign", CASE_TIMEOUT, { test_foreign_segment, test_foreign_semaphore, test_foreign_lock_table } },
                { "removal", CASE_TIMEOUT, { test_stop_removes, test_reload, test_reload_foreign, test_removed_behind_back,
                                             test_stop_and_reload_spare_replaced, test_other_owner_removed,
                                             test_truncated_by_client, test_scribbled_semaphore_does_not_stop_the_daemon,
                                             test_scribbled_semaphore_value_keeps_status_readable,
                                             test_reload_group_refuses_holder,
                                             test_create_failure_removes, test_reload_keeps_what_it_could_not_remove } },
#if defined(__x86_64__)
                { "spun", CASE_TIMEOUT, { test_semaphore_word_spun_by_a_client_does_not_hold_the_daemon } },
#endif
                { "replace-foreign", CASE_TIMEOUT, { test_replacing_reload_onto_foreign_sem_refused,
                                                     test_replacing_reload_onto_foreign_segment_refused,
                                                     test_replacing_reload_onto_foreign_table_refused } },
                { "replace", CASE_TIMEOUT, { test_replacing_reload_leaves_no_name_free,
                                             test_remade_channel_leaves_no_name_free,
                                             test_replacement_killed_at_each_step } },
                { "replace-race", CASE_TIMEOUT, { test_replacement_temp_name_not_reused,
                                                  test_replacement_owner_unlinks_old_file_at_exchange } },
                { "replace-crash-drop", CASE_TIMEOUT, { test_replacement_killed_then_dropped } },
                { "crash-replace", CASE_TIMEOUT, { test_crash_restart_leaves_no_name_free,
                                                   test_crash_restart_killed_at_each_step,
                                                   test_crash_restart_fewer_files,
                                                   test_crash_restart_failure_removes } },
                { "crash", CASE_TIMEOUT, { test_crash_reclaim, test_crash_adopt, test_crash_reclaim_spares_replaced,
                                           test_crash_reclaim_intent, test_crash_other_owner,
                                           test_owner_change_killed_at_each_step,
                                           test_crash_adopt_records_of_an_older_version,
                                           test_crash_intent_of_a_taken_over_file_spares_it,
                                           test_crash_reclaim_spares_owners_planted_file,
                                           test_crash_reclaim_marks_rings_removed,
                                           test_crash_adopt_reclaims_a_leftover_table_of_the_name } },
                { "crash-refused", CASE_TIMEOUT, { test_crash_reclaim_intent_spares_files_it_did_not_make,
                                                   test_crash_restart_takes_over_only_the_intended_file,
                                                   test_crash_adopt_refuses_a_resized_segment,
                                                   test_crash_adopt_refuses_a_semaphore_marked_removed,
                                                   test_crash_adopt_refuses_a_semaphore_of_another_magic } },
                { "regrown", CASE_TIMEOUT, { test_truncated_and_regrown_by_client } },
                { "swept", CASE_TIMEOUT, { test_crash_restart_wakes_the_fifos_it_sweeps } },
                { "replaced-behind", CASE_TIMEOUT, { test_replaced_behind_back, test_remade_ring_gets_fresh_fifos } },
                { "replace-temp-taken", CASE_TIMEOUT, { test_replacement_temp_name_taken_before_it_is_made } },
                { "crash-values", CASE_TIMEOUT, { test_crash_changed_values_made_anew } },
                { "lock-tokens", CASE_TIMEOUT, { test_raw_posix_channel_with_semaphores_takes_256_rw_holds,
                                                 test_lock_holder_table_is_read_only_to_every_opener,
                                                 test_forged_lock_table_denies_no_rw_open } },
        };

        return test_main("posix", groups, sizeof groups / sizeof *groups, posix_setup, test_teardown);
}
