/*
 * Posix channels ("kind": "posix") from the library's side, end to end
 * with the real daemon: mapping the descriptors it hands over, semaphores
 * and locks on the semaphore files, removal, broadcast, and nothing left
 * behind (no descriptor in the client, no file in /dev/shm).
 *
 * Every case runs in its own IPC namespace (the fixture) and its own mount
 * namespace with a fresh tmpfs on /dev/shm, so the files the daemon makes
 * are this case's alone and the host's /dev/shm never sees them. Waits are
 * bounded by WAIT_MS, far above any wake-up and below the case timeout;
 * the removal bound (REMOVAL_MS) is a correctness bound, 40 times what the
 * library promises (PSEM_POLL_MS), not a speed measurement.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <shmbroker/shmbroker.h>

#include "common/util.h"
#include "proto/broadcast.h"
#include "proto/posix.h"
#include "proto/ring.h"
#include "proto/sem-t.h"
#include "tests/client-helpers.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 60
#define WAIT_MS 10000
#define REMOVAL_MS 2000
#define N_BCAST 200

static const char channels[] =
        "[{\"name\": \"raw\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [2, 0]},"
        " {\"name\": \"lock\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]},"
        " {\"name\": \"ring\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 4096, \"slots\": 4},"
        " {\"name\": \"news\", \"kind\": \"posix\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 8,"
        "  \"subscribers\": 2},"
        " {\"name\": \"sysv\", \"size\": 4096}]";

/* A private mount namespace with an empty tmpfs on /dev/shm: the caller's own. */
static void enter_fresh_dev_shm(void) {
        ck_assert_msg(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
        ck_assert_int_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
        ck_assert_msg(mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777") == 0, "mount /dev/shm: %s", strerror(errno));
}

/* Entries of /dev/shm in this mount namespace. */
static int dev_shm_count(void) {
        DIR *d = opendir("/dev/shm");
        struct dirent *e;
        int n = 0;

        ck_assert_ptr_nonnull(d);
        while ((e = readdir(d)))
                if (!streq(e->d_name, ".") && !streq(e->d_name, ".."))
                        n++;
        closedir(d);
        return n;
}

static int fd_count(void) {
        DIR *d = opendir("/proc/self/fd");
        int n = 0;

        ck_assert_ptr_nonnull(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

static void setup(void) {
        test_setup();
        enter_fresh_dev_shm();
        test_daemon_write_config(&td, channels);
        test_start_ok();
        setenv("SHMBROKER_SOCKET", td.socket, 1);
}

static void teardown(void) {
        test_teardown();
        /* The daemon stopped: every file it made is gone, and nothing of System V is left. */
        ck_assert_int_eq(dev_shm_count(), 0);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}

static shmb_channel *must_open(const char *name, shmb_access access) {
        shmb_channel *ch = NULL;
        int r = shmb_open_channel(NULL, name, access, &ch);

        ck_assert_msg(r == 0, "open %s: %s", name, shmb_strerror(r));
        return ch;
}

static void reap_ok(pid_t pid) {
        int status;

        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status 0x%x", status);
}

START_TEST(test_raw_mapping_is_shared_between_processes) {
        shmb_channel *ch = must_open("raw", SHMB_RW);
        char *p = shmb_channel_addr(ch);
        pid_t pid;

        ck_assert_int_eq(shmb_channel_kind(ch), SHMB_KIND_POSIX);
        ck_assert_str_eq(shmb_channel_shm_name(ch), "/shmbroker.raw");
        ck_assert_int_eq(shmb_channel_shm_id(ch), -EOPNOTSUPP);
        ck_assert_uint_eq(shmb_channel_size(ch), 4096);
        ck_assert_uint_eq(shmb_channel_nsems(ch), 2);
        ck_assert_int_eq(shmb_channel_check(ch), 0);
        strcpy(p, "from the parent");

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                if (shmb_open_channel(NULL, "raw", SHMB_RW, &c2) < 0)
                        _exit(2);
                if (strcmp(shmb_channel_addr(c2), "from the parent") != 0)
                        _exit(3);
                strcpy((char *) shmb_channel_addr(c2) + 2048, "from the child");
                _exit(shmb_close(c2) == 0 ? 0 : 4);
        }
        reap_ok(pid);
        ck_assert_str_eq(p + 2048, "from the child");

        /* A System V channel of the same broker reports its kind too. */
        {
                shmb_channel *sv = must_open("sysv", SHMB_RW);

                ck_assert_int_eq(shmb_channel_kind(sv), SHMB_KIND_SYSV);
                ck_assert_ptr_null(shmb_channel_shm_name(sv));
                ck_assert_int_ge(shmb_channel_shm_id(sv), 0);
                ck_assert_int_eq(shmb_close(sv), 0);
        }
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * The client in another IPC and mount namespace, with an empty /dev/shm of
 * its own where a same-named file is planted: it maps the broker's ring
 * through the descriptors, and messages go both ways.
 */
START_TEST(test_ring_from_other_namespaces_through_the_fds) {
        shmb_channel *ch = must_open("ring", SHMB_RW);
        char buf[4096];
        int got_ping[2];
        ssize_t n;
        pid_t pid;

        ck_assert_int_eq(pipe2(got_ping, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;
                char planted[4096], got[64];
                struct stat st;
                int fd;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (unshare(CLONE_NEWIPC | CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
                    mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777") < 0)
                        _exit(2);
                /* A decoy where shm_open("/shmbroker.ring") would look in this namespace. */
                memset(planted, 'X', sizeof planted);
                fd = open("/dev/shm/shmbroker.ring", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
                if (fd < 0 || ftruncate(fd, 0) < 0)
                        _exit(3);
                for (int i = 0; i < 64; i++)
                        if (write(fd, planted, sizeof planted) != (ssize_t) sizeof planted)
                                _exit(3);
                if (shmb_open_channel(NULL, "ring", SHMB_RW, &c2) < 0)
                        _exit(4);
                /* What is mapped is the broker's ring, not the decoy. */
                if (((const RingHeader *) shmb_channel_addr(c2))->magic != RING_MAGIC)
                        _exit(5);
                n = shmb_recv(c2, got, sizeof got, WAIT_MS);
                if (n != 4 || memcmp(got, "ping", 4) != 0 || write(got_ping[1], "x", 1) != 1)
                        _exit(6);
                if (shmb_send(c2, "pong", 4, WAIT_MS) < 0)
                        _exit(7);
                /* The decoy is as planted, and the only file here. */
                if (fstat(fd, &st) < 0 || st.st_size != 64 * 4096 || pread(fd, got, 8, 0) != 8 ||
                    memcmp(got, "XXXXXXXX", 8) != 0 || dev_shm_count() != 1)
                        _exit(8);
                _exit(shmb_close(c2) == 0 ? 0 : 9);
        }
        /* One ring, one receiver per message: the parent receives only once the child took the ping. */
        close(got_ping[1]);
        ck_assert_int_eq(shmb_send(ch, "ping", 4, WAIT_MS), 0);
        ck_assert_int_eq(read(got_ping[0], buf, 1), 1);
        close(got_ping[0]);
        n = shmb_recv(ch, buf, sizeof buf, WAIT_MS);
        ck_assert_int_eq(n, 4);
        ck_assert_int_eq(memcmp(buf, "pong", 4), 0);
        reap_ok(pid);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* Open `name` over a socket of our own with "fd": true; returns how many descriptors came (into fds). */
static int raw_open_fds(const char *name, const char *access, int fds[64]) {
        char req[256], line[8192], control[CMSG_SPACE(64 * sizeof(int))];
        struct iovec iov = { .iov_base = line, .iov_len = sizeof line - 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control };
        int sock = test_connect(td.socket), n = 0;
        ssize_t got;

        snprintf(req, sizeof req, "{\"op\": \"open\", \"channel\": \"%s\", \"access\": \"%s\", \"fd\": true}\n",
                 name, access);
        test_send(sock, req, strlen(req));
        got = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        ck_assert_int_gt(got, 0);
        line[got] = 0;
        ck_assert_msg(strstr(line, "\"ok\": true") || strstr(line, "\"ok\":true"), "open answer: %s", line);
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                        n = (int) ((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                        memcpy(fds, CMSG_DATA(cm), (size_t) n * sizeof(int));
                }
        close(sock);
        return n;
}

START_TEST(test_read_only_open_cannot_write) {
        shmb_channel *ro = must_open("raw", SHMB_RO), *rw = must_open("raw", SHMB_RW);
        int fds[64], n;
        void *p;

        /* The descriptors of an ro open refuse a writable mapping, whatever the caller's uid. */
        n = raw_open_fds("raw", "ro", fds);
        ck_assert_int_eq(n, 4);         /* the segment, the lock holder table, two semaphore files */
        p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
        ck_assert_ptr_eq(p, MAP_FAILED);
        ck_assert_int_eq(errno, EACCES);
        p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fds[0], 0);
        ck_assert_ptr_ne(p, MAP_FAILED);
        ck_assert_int_eq(munmap(p, 4096), 0);
        for (int i = 0; i < n; i++)
                close(fds[i]);

        /* The library's ro mapping cannot be made writable either. */
        ck_assert_int_eq(mprotect(shmb_channel_addr(ro), 4096, PROT_READ | PROT_WRITE), -1);
        ck_assert_int_eq(errno, EACCES);
        strcpy(shmb_channel_addr(rw), "seen read-only");
        ck_assert_str_eq(shmb_channel_addr(ro), "seen read-only");

        /* Semaphores and locks: -EACCES, not a fault on the read-only semaphore file. */
        ck_assert_int_eq(shmb_sem_post(ro, 0), -EACCES);
        ck_assert_int_eq(shmb_sem_wait(ro, 0, 0), -EACCES);
        ck_assert_int_eq(shmb_sem_trywait(ro, 0), -EACCES);
        ck_assert_int_eq(shmb_lock(ro, 0, 0), -EACCES);
        ck_assert_int_eq(shmb_unlock(ro, 0), -EACCES);
        ck_assert_int_eq(shmb_close(ro), 0);
        ck_assert_int_eq(shmb_close(rw), 0);
}
END_TEST

START_TEST(test_semaphores_across_processes) {
        shmb_channel *ch = must_open("raw", SHMB_RW);
        shmb_status_list *l = NULL;
        int value = -2, ncount = 0;
        sem_t *named;
        pid_t pid;

        /* Initial values as configured: [2, 0]. */
        ck_assert_int_eq(shmb_sem_trywait(ch, 0), 0);
        ck_assert_int_eq(shmb_sem_trywait(ch, 0), 0);
        ck_assert_int_eq(shmb_sem_trywait(ch, 0), -EAGAIN);
        ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EAGAIN);
        ck_assert_int_eq(shmb_sem_wait(ch, 1, 20), -ETIMEDOUT);
        ck_assert_int_eq(shmb_sem_post(ch, 5), -EINVAL);

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, "raw", SHMB_RW, &c2) < 0)
                        _exit(2);
                if (shmb_sem_wait(c2, 1, WAIT_MS) < 0)
                        _exit(3);
                _exit(shmb_sem_post(c2, 0) == 0 ? 0 : 4);
        }
        ck_assert_int_eq(shmb_sem_post(ch, 1), 0);
        ck_assert_int_eq(shmb_sem_wait(ch, 0, WAIT_MS), 0);
        reap_ok(pid);

        /* A program that only knows sem_open() sees the same semaphore, here in the broker's namespace. */
        ck_assert_int_eq(shmb_sem_post(ch, 0), 0);
        named = sem_open("/shmbroker.raw.0", 0);
        ck_assert_ptr_ne(named, SEM_FAILED);
        ck_assert_int_eq(sem_getvalue(named, &value), 0);
        ck_assert_int_eq(value, 1);
        ck_assert_int_eq(sem_close(named), 0);

        /* status: the value, and no made-up counts. */
        ck_assert_int_eq(shmb_status(shmb_channel_get_client(ch), "raw", &l), 0);
        ck_assert_int_eq(shmb_status_kind(l, 0), SHMB_KIND_POSIX);
        ck_assert_str_eq(shmb_status_shm_name(l, 0), "/shmbroker.raw");
        ck_assert_str_eq(shmb_status_sem_name(l, 0, 1), "/shmbroker.raw.1");
        ck_assert_ptr_null(shmb_status_sem_name(l, 0, 2));
        ck_assert_int_eq(shmb_status_semaphore(l, 0, 0, &value, &ncount, NULL, NULL), 0);
        ck_assert_int_eq(value, 1);
        ck_assert_int_eq(ncount, -1);
        ck_assert_uint_eq(shmb_status_nattch(l, 0), 0);
        ck_assert_int_eq(shmb_status_shm_id(l, 0), -EOPNOTSUPP);
        shmb_status_free(l);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * An rw peer may write any byte of a semaphore's file, its sem_t too.
 * glibc's sem_post() and sem_clockwait() make the futex call that the
 * sem_t's own "private" word names, and abort the process when the kernel
 * refuses it (or wait for ever in a FUTEX_WAIT where a wake-up was meant).
 * The library's calls must do neither, whatever that word says: here one
 * that makes every call no futex operation at all, one that turns a wake-up
 * into a wait, and one of all bits. The words are glibc's layout of a
 * process-shared sem_t with 64-bit atomics: the value in the low half of
 * the first 8 bytes, waiters in the high half, then "private".
 */
static void scribble_sem_words(const char *channel, unsigned sem, uint64_t data, int32_t private) {
        char path[PATH_MAX];
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/" PSEM_FILE_PREFIX "shmbroker.%s.%u", channel, sem);
        fd = open(path, O_RDWR | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(pwrite(fd, &data, sizeof data, 0), (ssize_t) sizeof data);
        ck_assert_int_eq(pwrite(fd, &private, sizeof private, sizeof data), (ssize_t) sizeof private);
        close(fd);
}

START_TEST(test_scribbled_sem_t_neither_aborts_nor_hangs_a_caller) {
        static const int32_t privates[] = { (FUTEX_WAKE | FUTEX_PRIVATE_FLAG) ^ 127,
                                            (FUTEX_WAKE | FUTEX_PRIVATE_FLAG) ^ FUTEX_WAIT, -1 };
        shmb_channel *ch = must_open("raw", SHMB_RW);

        for (size_t k = 0; k < ELEMENTSOF(privates); k++) {
                int64_t t0;

                /* Value 0, and a waiter, so that a post wakes. */
                scribble_sem_words("raw", 1, UINT64_C(1) << 32, privates[k]);
                ck_assert_int_eq(shmb_sem_post(ch, 1), 0);
                ck_assert_int_eq(shmb_sem_wait(ch, 1, WAIT_MS), 0);
                ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EAGAIN);
                t0 = test_now_ms();
                ck_assert_int_eq(shmb_sem_wait(ch, 1, 20), -ETIMEDOUT);
                ck_assert_int_ge(test_now_ms() - t0, 20);
        }
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * A program that only knows sem_open() shares a posix channel's semaphore
 * with the library, as the README promises: a post from either side wakes
 * a waiter of the other that is asleep in the kernel. The waiter sleeps
 * first (counted in the sem_t's waiters, and in state S), then the other
 * process posts; a lost wake-up leaves the waiter to its WAIT_MS deadline,
 * which fails the case. The library's own waiter is psem_wait_until() in
 * one long slice (shmb_sem_wait()'s slices of PSEM_POLL_MS would hide a
 * lost wake-up), then shmb_sem_wait() end to end.
 */
static uint32_t sem_waiters(const sem_t *s) {
        uint64_t d = __atomic_load_n((const uint64_t *) (const void *) s, __ATOMIC_RELAXED);

        return (uint32_t) (d >> 32);
}

static bool sleeping(pid_t pid) {
        char path[64], buf[512], *p;
        ssize_t n;
        int fd;

        snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
                return false;
        buf[n] = '\0';
        p = strrchr(buf, ')');
        return p && p[1] == ' ' && p[2] == 'S';
}

/* Until pid sleeps counted in as a waiter of s: true, or false after WAIT_MS. */
static bool waits_asleep(const sem_t *s, pid_t pid) {
        int64_t end = test_now_ms() + WAIT_MS;

        while (test_now_ms() < end) {
                if (sem_waiters(s) > 0 && sleeping(pid))
                        return true;
                (void) usleep(1000);
        }
        return false;
}

START_TEST(test_glibc_and_library_wake_each_other) {
        shmb_channel *ch = must_open("raw", SHMB_RW);
        sem_t *named = sem_open("/shmbroker.raw.1", 0);
        pid_t pid, parent = getpid();

        ck_assert_ptr_ne(named, SEM_FAILED);
        ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EAGAIN);

        /* The library posts; glibc's sem_timedwait() in another process, asleep, wakes. */
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                sem_t *s = sem_open("/shmbroker.raw.1", 0);
                struct timespec at;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (s == SEM_FAILED)
                        _exit(2);
                clock_gettime(CLOCK_REALTIME, &at);
                at.tv_sec += WAIT_MS / 1000;
                _exit(sem_timedwait(s, &at) == 0 ? 0 : 3);
        }
        ck_assert_msg(waits_asleep(named, pid), "the glibc waiter never slept");
        ck_assert_int_eq(shmb_sem_post(ch, 1), 0);
        reap_ok(pid);
        ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EAGAIN);
        ck_assert_uint_eq(sem_waiters(named), 0);

        /* glibc's sem_post() from another process; the library's waiter, asleep, wakes. */
        for (int round = 0; round < 2; round++) {
                int r;

                pid = fork();
                ck_assert_int_ge(pid, 0);
                if (pid == 0) {
                        sem_t *s = sem_open("/shmbroker.raw.1", 0);

                        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                        if (s == SEM_FAILED)
                                _exit(2);
                        if (!waits_asleep(s, parent))
                                _exit(3);
                        _exit(sem_post(s) == 0 ? 0 : 4);
                }
                if (round == 0) {
                        struct timespec at;

                        clock_gettime(CLOCK_MONOTONIC, &at);
                        at.tv_sec += WAIT_MS / 1000;
                        r = psem_wait_until(named, &at);
                } else
                        r = shmb_sem_wait(ch, 1, WAIT_MS);
                ck_assert_msg(r == 0, "round %d: the library's waiter: %s", round, strerror(-r));
                reap_ok(pid);
                ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EAGAIN);
                ck_assert_uint_eq(sem_waiters(named), 0);
        }
        ck_assert_int_eq(sem_close(named), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* A mapping of our own of a semaphore's file, as any rw opener may make. */
static PosixSemFile *map_sem_file(const char *channel, unsigned sem) {
        char path[PATH_MAX];
        void *p;
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/" PSEM_FILE_PREFIX "shmbroker.%s.%u", channel, sem);
        fd = open(path, O_RDWR | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        p = mmap(NULL, sizeof(PosixSemFile), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(p, MAP_FAILED);
        close(fd);
        return p;
}

/*
 * README, Security: a peer allowed to write a posix channel's semaphore
 * files may write any byte of them, yet "cannot ... abort [another
 * process] through the semaphores (with 64-bit glibc) or stop the daemon",
 * and of the lock: "the writer can make a lock wait or be held by two, no
 * more". A seeded scribbler (SHMB_TEST_SEED, else a fixed seed; the seed
 * is in every message) writes edge values, through a mapping of its own,
 * into a raw channel's three semaphore files: the sem_t words (value,
 * waiters, "private"), the lock word (0, the tokens of this process's two
 * holds, tokens of the table's other entries, of an index past the table,
 * of no index, of another generation, UINT32_MAX), its sleepers' count,
 * the reserved words, and the entries of the channel's lock holder table
 * (states and generations, pids, ids; its file is the daemon's, 0600, and
 * clients get it read-only, so no client could: this goes beyond what a
 * writer can do, to show that the lock calls follow nothing in it either). Between the writes come the
 * library's semaphore and lock calls on both holds, with timeouts of 0 to
 * 2 ms, and an open, lock and close on a connection of its own (the daemon
 * then reads the scribbled table). Every call must return 0 or an errno it
 * may give, within its timeout and SCRIB_SLACK_MS (a bound on loops, not a
 * speed), the case's process must not die (a signal fails the case), and
 * the daemon must stay up and answer status with values in
 * 0..SEM_VALUE_MAX. After each round a probe puts the table back, writes
 * one kind of lock word, and asks of a lock and unlock what the word
 * promises: a word naming no live token is taken at once, another live
 * hold's is not (and not given back by us), our own dead token says
 * -ENOTCONN; and neither call stores anything in the file but the lock
 * word and its sleepers' count. Once the daemon is killed with the table
 * scribbled on and started again: it takes the files over and stays up.
 * Now and then a wait for ever, on a value kept 0 (its other words
 * scribbled on), must end with -EIDRM within REMOVAL_MS of the channel's
 * removal: a reload that drops it, and at last a stop, after which no file
 * is left (teardown).
 */
#define SCRIB_PHASES 4
#define SCRIB_ROUNDS 150
#define SCRIB_NSEMS 3
#define SCRIB_SLACK_MS 1500
#define SCRIB_OPS 6
#define SCRIB_CRASH_PHASE 1
#define SCRIB_FAKE_HOLDER 200

static uint64_t scrib_state, scrib_seed;

static uint64_t scrib_rand(void) {
        /* xorshift64*: the same sequence for the same seed, anywhere. */
        scrib_state ^= scrib_state >> 12;
        scrib_state ^= scrib_state << 25;
        scrib_state ^= scrib_state >> 27;
        return scrib_state * UINT64_C(2685821657736338717);
}

#define SCRIB_PICK(a) ((a)[scrib_rand() % ELEMENTSOF(a)])

static void scrib_config(bool with) {
        char cfg[sizeof channels + 256];

        snprintf(cfg, sizeof cfg, "%.*s%s]", (int) (sizeof channels - 2), channels,
                 with ? ", {\"name\": \"scrib\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [0, 1, 5]}" : "");
        test_daemon_write_config(&td, cfg);
}

static void scrib_reload(shmb_client *c, bool with) {
        shmb_reload_result *res = NULL;
        int r;

        scrib_config(with);
        r = shmb_reload(c, &res);
        ck_assert_msg(r == 0, "seed %llu: reload: %s", (unsigned long long) scrib_seed, shmb_strerror(r));
        shmb_reload_result_free(res);
}

typedef struct Scribbled {
        PosixSemFile *f[SCRIB_NSEMS];
        RingHolder *table;                      /* the lock holder table's file: PSEM_HOLDERS entries */
        RingHolder saved[PSEM_HOLDERS];         /* the table as the daemon left it after the two opens */
        uint32_t tok[2];                        /* the tokens of the two holds (ch, ch2) */
} Scribbled;

/* A file of "scrib" in PSEM_DIR, mapped read-write (as root: the daemon's own table file too). */
static void *scrib_map_file(const char *name, size_t size) {
        char path[PATH_MAX];
        void *p;
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/%s", name);
        fd = open(path, O_RDWR | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(p, MAP_FAILED);
        close(fd);
        return p;
}

/* Semaphore i's file of "scrib". */
static PosixSemFile *scrib_map(unsigned i) {
        char name[64];

        snprintf(name, sizeof name, PSEM_FILE_PREFIX "shmbroker.scrib.%u", i);
        return scrib_map_file(name, sizeof(PosixSemFile));
}

/* The token of the one LIVE entry of the table that `skip` does not name (the daemon's only, after an open). */
static uint32_t scrib_new_token(const Scribbled *s, uint32_t skip) {
        uint32_t found = 0;

        for (uint32_t i = 0; i < PSEM_HOLDERS; i++) {
                uint64_t w = __atomic_load_n(&s->table[i].word, __ATOMIC_ACQUIRE);
                uint32_t t = ring_token(i, (uint32_t) (w >> 32));

                if ((uint32_t) w != RING_HOLDER_LIVE || t == skip)
                        continue;
                ck_assert_msg(found == 0, "seed %llu: two new tokens", (unsigned long long) scrib_seed);
                found = t;
        }
        ck_assert_msg(found != 0, "seed %llu: an rw open got no token in the table", (unsigned long long) scrib_seed);
        return found;
}

/* A lock word of every kind a writer might leave: free, ours, live-looking, dead-looking, and nothing at all. */
static uint32_t scrib_lock_word(const Scribbled *s) {
        uint32_t t = s->tok[scrib_rand() & 1], i = (uint32_t) (scrib_rand() % PSEM_HOLDERS);
        uint64_t w = __atomic_load_n(&s->table[i].word, __ATOMIC_RELAXED);

        switch (scrib_rand() % 9) {
        case 0: return 0;
        case 1: return t;
        case 2: return ring_token(i, (uint32_t) (w >> 32));                       /* whatever entry i says */
        case 3: return t + (UINT32_C(1) << RING_TOKEN_INDEX_BITS);                /* our entry, another generation */
        case 4: return t ^ UINT32_C(0x80000000);
        case 5: return (t & ~RING_TOKEN_INDEX_MASK) | (PSEM_HOLDERS + 1 + i % 3000);
        case 6: return t & ~RING_TOKEN_INDEX_MASK;          /* index bits 0 */
        case 7: return UINT32_MAX;
        default: return (uint32_t) scrib_rand();
        }
}

/* One write into an entry of the holder table; mostly the two that name our holds, and their neighbours. */
static void scribble_table(Scribbled *s) {
        static const int32_t pids[] = { 0, -1, 1, INT32_MAX, INT32_MIN, 2 };
        static const uint32_t gens[] = { 0, 1, UINT32_C(0xfffff), UINT32_C(0x100000), UINT32_MAX };
        static const uint32_t states[] = { RING_HOLDER_FREE, RING_HOLDER_LIVE, RING_HOLDER_DEAD, 3, UINT32_MAX };
        uint32_t own = s->tok[scrib_rand() & 1], i;
        RingHolder *e;

        switch (scrib_rand() % 4) {
        case 0: case 1: i = ring_token_index(own); break;
        case 2: i = (uint32_t) (scrib_rand() % 4); break;
        default: i = (uint32_t) (scrib_rand() % PSEM_HOLDERS); break;
        }
        e = &s->table[i];
        switch (scrib_rand() % 6) {
        case 0: case 1: {
                /* A state under a generation: the entry's own, one off, or an edge. */
                uint32_t gen = scrib_rand() & 1 ? (own >> RING_TOKEN_INDEX_BITS) + (uint32_t) (scrib_rand() % 3) - 1 :
                                                  SCRIB_PICK(gens);

                __atomic_store_n(&e->word, (uint64_t) gen << 32 | SCRIB_PICK(states), __ATOMIC_RELAXED);
                break;
        }
        case 2:
                __atomic_store_n(&e->word, scrib_rand() & 1 ? UINT64_MAX : scrib_rand(), __ATOMIC_RELAXED);
                break;
        case 3:
                e->pid = scrib_rand() & 1 ? (int32_t) getpid() : SCRIB_PICK(pids);
                break;
        case 4:
                e->pidns = scrib_rand() & 1 ? 0 : (uint32_t) scrib_rand();
                break;
        default:
                e->starttime = scrib_rand() & 1 ? 0 : scrib_rand();
                e->pidfs_ino = scrib_rand() & 1 ? UINT64_MAX : scrib_rand();
                break;
        }
}

/* One write of edge values into one of the files: a sem_t, a lock's words, or the lock holder table. */
static void scribble_once(Scribbled *s) {
        static const uint32_t values[] = { 0, 1, 2, 32766, 32767, 32768, SEM_VALUE_MAX - 1, SEM_VALUE_MAX,
                                           UINT32_C(0x80000000), UINT32_MAX };
        static const uint32_t waiters[] = { 0, 1, 2, INT32_MAX, UINT32_C(0x80000000), UINT32_MAX };
        static const int32_t privates[] = { 0, FUTEX_PRIVATE_FLAG, FUTEX_WAIT, FUTEX_WAKE | FUTEX_PRIVATE_FLAG,
                                            (FUTEX_WAKE | FUTEX_PRIVATE_FLAG) ^ 127, -1, INT32_MIN, INT32_MAX };
        PosixSemFile *f = s->f[scrib_rand() % SCRIB_NSEMS];
        uint32_t *value = (uint32_t *) (void *) &f->sem + (__BYTE_ORDER == __BIG_ENDIAN);
        uint32_t *nwaiters = (uint32_t *) (void *) &f->sem + (__BYTE_ORDER != __BIG_ENDIAN);
        int32_t *private = (int32_t *) (void *) ((char *) &f->sem + sizeof(uint64_t));

        switch (scrib_rand() % 9) {
        case 0: {
                uint64_t d = (uint64_t) SCRIB_PICK(values) | (uint64_t) SCRIB_PICK(waiters) << 32;

                __atomic_store_n((uint64_t *) (void *) &f->sem, d, __ATOMIC_RELAXED);
                break;
        }
        case 1:
                __atomic_store_n(value, SCRIB_PICK(values), __ATOMIC_RELAXED);
                break;
        case 2:
                __atomic_store_n(nwaiters, SCRIB_PICK(waiters), __ATOMIC_RELAXED);
                break;
        case 3:
                __atomic_store_n(private, SCRIB_PICK(privates), __ATOMIC_RELAXED);
                break;
        case 4: case 5:
                __atomic_store_n(&f->lock, scrib_lock_word(s), __ATOMIC_RELAXED);
                break;
        case 6:
                (void) __atomic_fetch_xor(&f->lock, PSEM_LOCK_SLEEPERS, __ATOMIC_RELAXED);
                break;
        case 7: {
                uint32_t *reserved[] = { &f->reserved, &f->reserved3, &f->reserved2[0], &f->reserved2[1] };

                __atomic_store_n(SCRIB_PICK(reserved), (uint32_t) scrib_rand(), __ATOMIC_RELAXED);
                break;
        }
        default:
                scribble_table(s);
                break;
        }
}

static const char *const scrib_op_names[SCRIB_OPS] = { "wait", "trywait", "post", "lock", "unlock", "open" };

/*
 * after_crash: a daemon started on a table scribbled before it came up
 * takes it over as it finds it, so an open may find every entry live. A
 * running daemon goes by the entries it wrote itself: an open then gets a
 * token, however the table was scribbled.
 */
static bool scrib_known(int op, int r, int timeout_ms, bool after_crash) {
        switch (op) {
        case 0: /* wait */
                return r == 0 || r == (timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT);
        case 1: /* trywait */
                return r == 0 || r == -EAGAIN;
        case 2: /* post: SEMVMX, as on System V */
                return r == 0 || r == -ERANGE;
        case 3: /* lock: taken, held by another (or so the word says), or our token is dead in the table */
                return r == 0 || r == (timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT) || r == -ENOTCONN;
        case 4: /* unlock: ours, or not (any more) */
                return r == 0 || r == -EPERM;
        default: /* an open of its own */
                return r == 0 || (after_crash && r == -EUSERS);
        }
}

/* Another connection's open, lock and close: the daemon reads the scribbled table to give a token, then to end it. */
static int scrib_open_lock_close(unsigned idx, int timeout_ms) {
        shmb_client *c = NULL;
        shmb_channel *ch = NULL;
        int r;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        r = shmb_open(c, "scrib", SHMB_RW, &ch);
        if (r == 0) {
                int k = shmb_lock(ch, idx, timeout_ms);

                ck_assert_msg(scrib_known(3, k, timeout_ms, false), "seed %llu: a fresh hold's lock(%u, %d ms): %s",
                              (unsigned long long) scrib_seed, idx, timeout_ms, shmb_strerror(k));
                ck_assert_int_eq(shmb_close(ch), 0);
        }
        shmb_disconnect(c);
        return r;
}

/* The table as the daemon left it, and what the probe then expects. */
static void scrib_restore_table(Scribbled *s) {
        for (uint32_t i = 0; i < PSEM_HOLDERS; i++) {
                s->table[i] = s->saved[i];
                __atomic_store_n(&s->table[i].word, s->saved[i].word, __ATOMIC_SEQ_CST);
        }
}

/* The file but the lock word: what no lock call may write. */
static void scrib_snapshot(const PosixSemFile *f, size_t size, unsigned char *buf) {
        memcpy(buf, f, size);
        memset(buf + offsetof(PosixSemFile, lock), 0, sizeof f->lock);
}

/*
 * With the table as the daemon wrote it: one kind of lock word, and what a
 * lock and an unlock of hold ch (token tok[0]; tok[1] is ch2's) must say.
 */
static void scrib_probe(Scribbled *s, shmb_channel *ch, int phase, int round) {
        unsigned char before[sizeof(PosixSemFile)], after[sizeof before];
        unsigned idx = (unsigned) (scrib_rand() % SCRIB_NSEMS);
        PosixSemFile *f = s->f[idx];
        size_t size = sizeof *f;
        uint32_t kind = (uint32_t) (scrib_rand() % 5), w;
        int lock_r, unlock_r, want_lock, want_unlock, timeout_ms = (int) (scrib_rand() % 3);
        int64_t t0;

        scrib_restore_table(s);
        switch (kind) {
        case 0: w = 0; break;
        case 1: w = s->tok[0]; break;
        case 2: w = s->tok[1]; break;
        case 3: {
                /* Names no live entry: past the table, no index, another generation, all bits. */
                uint32_t dead[] = { s->tok[1] + (UINT32_C(1) << RING_TOKEN_INDEX_BITS), UINT32_MAX,
                                    s->tok[1] & ~RING_TOKEN_INDEX_MASK,
                                    (s->tok[1] & ~RING_TOKEN_INDEX_MASK) | (PSEM_HOLDERS + 1),
                                    ring_token(PSEM_HOLDERS - 1, 7) };

                w = SCRIB_PICK(dead);
                break;
        }
        default:
                /* Our own entry marked DEAD (as if the broker had ended our hold): the word is free. */
                w = 0;
                break;
        }
        if (kind == 4) {
                RingHolder *e = &s->table[ring_token_index(s->tok[0])];

                __atomic_store_n(&e->word, (e->word & ~UINT64_C(0xffffffff)) | RING_HOLDER_DEAD, __ATOMIC_SEQ_CST);
        }
        /* Sleepers marked, or none: the bit changes no answer, only whether an unlock wakes. */
        if (scrib_rand() % 3 == 0)
                w |= PSEM_LOCK_SLEEPERS;
        __atomic_store_n(&f->lock, w, __ATOMIC_SEQ_CST);
        scrib_snapshot(f, size, before);
        t0 = test_now_ms();
        /* Ours already (1): a lock waits, as a holder's second lock does on System V. */
        lock_r = shmb_lock(ch, idx, timeout_ms);
        unlock_r = shmb_unlock(ch, idx);
        scrib_snapshot(f, size, after);
        want_lock = kind == 4 ? -ENOTCONN : kind == 0 || kind == 3 ? 0 : timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
        want_unlock = kind == 2 || kind == 4 ? -EPERM : 0;
        ck_assert_msg(lock_r == want_lock && unlock_r == want_unlock, "seed %llu, phase %d, round %d: word %#x (kind %u) "
                      "on semaphore %u: lock(%d ms) %s (not %s), unlock %s (not %s)", (unsigned long long) scrib_seed,
                      phase, round, w, kind, idx, timeout_ms, shmb_strerror(lock_r), shmb_strerror(want_lock),
                      shmb_strerror(unlock_r), shmb_strerror(want_unlock));
        ck_assert_msg(test_now_ms() - t0 <= timeout_ms + SCRIB_SLACK_MS, "seed %llu: the probe took %lld ms",
                      (unsigned long long) scrib_seed, (long long) (test_now_ms() - t0));
        ck_assert_msg(memcmp(before, after, size) == 0, "seed %llu, phase %d, round %d: a lock call wrote semaphore %u's "
                      "file outside its lock word", (unsigned long long) scrib_seed, phase, round, idx);
        /* Another hold's lock stays its own; one we took or had is given back. */
        ck_assert_uint_eq(psem_lock_holder(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST)), kind == 2 ? s->tok[1] : 0);
        __atomic_store_n(&f->lock, 0, __ATOMIC_SEQ_CST);
        scrib_restore_table(s);
}

typedef struct ForeverWait {
        shmb_channel *ch;
        unsigned idx;
        int result;
        int64_t returned_ms;
        pid_t tid;
} ForeverWait;

static void *forever_wait(void *userdata) {
        ForeverWait *w = userdata;
        int r;

        __atomic_store_n(&w->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        r = shmb_sem_wait(w->ch, w->idx, -1);

        w->returned_ms = test_now_ms();
        __atomic_store_n(&w->result, r, __ATOMIC_RELEASE);
        return NULL;
}

static void *forever_lock(void *userdata) {
        ForeverWait *w = userdata;
        int r;

        __atomic_store_n(&w->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        r = shmb_lock(w->ch, w->idx, -1);

        w->returned_ms = test_now_ms();
        __atomic_store_n(&w->result, r, __ATOMIC_RELEASE);
        return NULL;
}

/* Until w's thread sleeps (5 looks in a row), its call still under way. */
static void scrib_wait_asleep(const ForeverWait *w, const char *what) {
        int64_t deadline = test_now_ms() + WAIT_MS;

        for (int asleep = 0; asleep < 5; usleep(1000)) {
                pid_t tid = __atomic_load_n(&w->tid, __ATOMIC_ACQUIRE);

                ck_assert_msg(__atomic_load_n(&w->result, __ATOMIC_RELAXED) == 1, "seed %llu: the %s for ever "
                              "returned %d", (unsigned long long) scrib_seed, what, w->result);
                /* A call that spins, or never gets to its wait, fails here with a name rather than at the case timeout. */
                ck_assert_msg(test_now_ms() < deadline, "seed %llu: the %s for ever was not asleep within %d ms",
                              (unsigned long long) scrib_seed, what, WAIT_MS);
                asleep = tid && test_task_state(getpid(), tid) == 'S' ? asleep + 1 : 0;
        }
}

/* w's thread ended with -EIDRM within REMOVAL_MS of removed_ms. */
static void scrib_join_removed(pthread_t t, const ForeverWait *w, int64_t removed_ms, int phase, const char *what) {
        struct timespec until;

        ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &until), 0);
        until.tv_sec += WAIT_MS / 1000;
        ck_assert_msg(pthread_timedjoin_np(t, NULL, &until) == 0, "seed %llu, phase %d: the %s for ever "
                      "outlived the removal", (unsigned long long) scrib_seed, phase, what);
        ck_assert_msg(w->result == -EIDRM, "seed %llu, phase %d: the %s for ever: %s",
                      (unsigned long long) scrib_seed, phase, what, shmb_strerror(w->result));
        ck_assert_msg(w->returned_ms - removed_ms < REMOVAL_MS, "seed %llu: the %s for ever returned %lld ms "
                      "after the removal", (unsigned long long) scrib_seed, what,
                      (long long) (w->returned_ms - removed_ms));
}

/* The daemon is up and tells values a client may read. */
static void scrib_daemon_answers(shmb_client *c, int phase, int round) {
        shmb_status_list *l = NULL;
        int r;

        ck_assert_int_eq(waitpid(td.pid, NULL, WNOHANG), 0);
        r = shmb_status(c, "scrib", &l);
        ck_assert_msg(r == 0, "seed %llu, phase %d, round %d: status: %s", (unsigned long long) scrib_seed,
                      phase, round, shmb_strerror(r));
        for (unsigned i = 0; i < SCRIB_NSEMS; i++) {
                int value = -2;

                ck_assert_int_eq(shmb_status_semaphore(l, 0, i, &value, NULL, NULL, NULL), 0);
                ck_assert_msg(value >= 0 && value <= SEM_VALUE_MAX, "seed %llu: status value %d",
                              (unsigned long long) scrib_seed, value);
        }
        shmb_status_free(l);
}

START_TEST(test_seeded_scribbler_on_semaphore_files) {
        const char *env = getenv("SHMB_TEST_SEED");
        unsigned long long calls = 0, probes = 0, errs[SCRIB_OPS][140] = { { 0 } };
        shmb_client *c = NULL;
        Scribbled s = { 0 };

        scrib_seed = env && *env ? strtoull(env, NULL, 0) : UINT64_C(0x5eed5c81bb1e);
        scrib_state = scrib_seed ?: 1;
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        for (int phase = 0; phase < SCRIB_PHASES; phase++) {
                bool last = phase == SCRIB_PHASES - 1;
                shmb_channel *ch, *ch2 = NULL, *hold[2];
                shmb_client *c2 = NULL;
                ForeverWait w = { .result = 1 }, lw = { .result = 1 };
                pthread_t t, lt;
                int64_t removed_ms;

                scrib_reload(c, true);
                for (unsigned i = 0; i < SCRIB_NSEMS; i++)
                        s.f[i] = scrib_map(i);
                s.table = scrib_map_file("shmbroker-table.scrib", PSEM_TABLE_SIZE);
                /* Two holds of this process, each with its token in the table (proto/posix.h). */
                ch = must_open("scrib", SHMB_RW);
                s.tok[0] = scrib_new_token(&s, 0);
                ck_assert_int_eq(shmb_connect(NULL, &c2), 0);
                ck_assert_int_eq(shmb_open(c2, "scrib", SHMB_RW, &ch2), 0);
                s.tok[1] = scrib_new_token(&s, s.tok[0]);
                memcpy(s.saved, s.table, sizeof s.saved);
                hold[0] = ch;
                hold[1] = ch2;
                for (int round = 0; round < SCRIB_ROUNDS; round++) {
                        int n = 1 + (int) (scrib_rand() % 3), r;

                        for (int k = 0; k < n; k++)
                                scribble_once(&s);
                        n = 1 + (int) (scrib_rand() % 4);
                        for (int k = 0; k < n; k++) {
                                int op = (int) (scrib_rand() % SCRIB_OPS), timeout_ms = (int) (scrib_rand() % 3);
                                unsigned idx = (unsigned) (scrib_rand() % SCRIB_NSEMS);
                                shmb_channel *h = hold[scrib_rand() & 1];
                                int64_t t0 = test_now_ms(), took;

                                switch (op) {
                                case 0: r = shmb_sem_wait(h, idx, timeout_ms); break;
                                case 1: r = shmb_sem_trywait(h, idx); break;
                                case 2: r = shmb_sem_post(h, idx); break;
                                case 3: r = shmb_lock(h, idx, timeout_ms); break;
                                case 4: r = shmb_unlock(h, idx); break;
                                default: r = scrib_open_lock_close(idx, timeout_ms); break;
                                }
                                took = test_now_ms() - t0;
                                calls++;
                                ck_assert_msg(scrib_known(op, r, timeout_ms, phase > SCRIB_CRASH_PHASE), "seed %llu, phase %d, round %d: %s(%u, %d ms): %s",
                                              (unsigned long long) scrib_seed, phase, round, scrib_op_names[op], idx,
                                              timeout_ms, shmb_strerror(r));
                                /* An open is a few round trips, each bounded too. */
                                ck_assert_msg(took <= timeout_ms + SCRIB_SLACK_MS, "seed %llu, phase %d, round %d: "
                                              "%s(%u, %d ms) took %lld ms", (unsigned long long) scrib_seed, phase, round,
                                              scrib_op_names[op], idx, timeout_ms, (long long) took);
                                errs[op][-r < 140 ? -r : 0]++;
                        }
                        scrib_daemon_answers(c, phase, round);
                        if (scrib_rand() % 2 == 0) {
                                scrib_probe(&s, ch, phase, round);
                                probes++;
                        } else if (scrib_rand() % 4 == 0)
                                scrib_restore_table(&s);
                }

                /*
                 * A crash with the table scribbled on: the next daemon takes it over
                 * with the files (posix_objects_adopt(), holders_adopt(), a sweep),
                 * and must come up and stay up.
                 */
                if (phase == SCRIB_CRASH_PHASE) {
                        for (int k = 0; k < 64; k++)
                                scribble_table(&s);
                        test_daemon_kill(&td, SIGKILL);
                        test_start_ok();
                        scrib_daemon_answers(c, phase, -1);
                        for (int k = 0; k < 4; k++) {
                                int r = scrib_open_lock_close((unsigned) (scrib_rand() % SCRIB_NSEMS), 0);

                                ck_assert_msg(scrib_known(5, r, 0, true), "seed %llu: an open after the restart: %s",
                                              (unsigned long long) scrib_seed, shmb_strerror(r));
                                scribble_table(&s);
                        }
                        scrib_daemon_answers(c, phase, -1);
                }

                /*
                 * A wait for ever on a value kept 0 (its other words scribbled on), and
                 * a lock for ever behind ch2's live token, both asleep, then the removal;
                 * the writer keeps the table saying our holds are live after it too.
                 */
                w.ch = ch;
                w.idx = (unsigned) (scrib_rand() % SCRIB_NSEMS);
                __atomic_store_n((uint32_t *) (void *) &s.f[w.idx]->sem + (__BYTE_ORDER == __BIG_ENDIAN), 0,
                                 __ATOMIC_RELAXED);
                ck_assert_int_eq(pthread_create(&t, NULL, forever_wait, &w), 0);
                scrib_wait_asleep(&w, "wait");
                for (int k = 0; k < 4; k++) {
                        uint64_t d = (uint64_t) (scrib_rand() & 1 ? 0 : UINT32_MAX) << 32;

                        __atomic_store_n((uint64_t *) (void *) &s.f[w.idx]->sem, d, __ATOMIC_RELAXED);
                }
                if (phase != SCRIB_CRASH_PHASE) {
                        /*
                         * Phase 0: ch2's, whose hold the daemon drops first, so its wake-up
                         * finds the locker's own token dead (the removal must still say
                         * -EIDRM). Else ch's, and from phase 2 with its sleepers' bit
                         * wiped, so nobody wakes it before its slice ends: by then the
                         * writer has made its token live again, and only the removal ends it.
                         */
                        lw.ch = phase == 0 ? ch2 : ch;
                        lw.idx = (unsigned) (scrib_rand() % SCRIB_NSEMS);
                        /* A holder that no hold of the daemon's is, made live by the writer: only the removal ends this wait. */
                        scrib_restore_table(&s);
                        s.saved[SCRIB_FAKE_HOLDER].word = (uint64_t) 5 << 32 | RING_HOLDER_LIVE;
                        scrib_restore_table(&s);
                        __atomic_store_n(&s.f[lw.idx]->lock, ring_token(SCRIB_FAKE_HOLDER, 5), __ATOMIC_SEQ_CST);
                        ck_assert_int_eq(pthread_create(&lt, NULL, forever_lock, &lw), 0);
                        scrib_wait_asleep(&lw, "lock");
                        if (phase >= 2)
                                (void) __atomic_fetch_and(&s.f[lw.idx]->lock, ~PSEM_LOCK_SLEEPERS, __ATOMIC_SEQ_CST);
                }
                removed_ms = test_now_ms();
                if (last) {
                        shmb_disconnect(c);
                        c = NULL;
                        test_daemon_stop_ok(&td);
                        td.pid = -1;
                } else
                        scrib_reload(c, false);
                scrib_join_removed(t, &w, removed_ms, phase, "wait");
                if (phase != SCRIB_CRASH_PHASE) {
                        /* The writer keeps saying our holds (and the fake holder) live: the removal alone must end it. */
                        while (__atomic_load_n(&lw.result, __ATOMIC_RELAXED) == 1 &&
                               test_now_ms() - removed_ms < REMOVAL_MS) {
                                scrib_restore_table(&s);
                                (void) usleep(1000);
                        }
                        scrib_join_removed(lt, &lw, removed_ms, phase, "lock");
                }
                /* Removed: both holds' locks say so, whatever the words. */
                ck_assert_int_eq(shmb_lock(ch, 0, 0), -EIDRM);
                ck_assert_int_eq(shmb_unlock(ch2, 1), -EIDRM);
                for (unsigned i = 0; i < SCRIB_NSEMS; i++)
                        ck_assert_int_eq(munmap(s.f[i], sizeof *s.f[i]), 0);
                ck_assert_int_eq(munmap(s.table, PSEM_TABLE_SIZE), 0);
                ck_assert_int_eq(shmb_channel_check(ch), -EIDRM);
                ck_assert_int_eq(shmb_close(ch2), 0);
                shmb_disconnect(c2);
                ck_assert_int_eq(shmb_close(ch), 0);
        }
        for (int op = 0; op < SCRIB_OPS; op++) {
                printf("scribbler seed %llu: %s:", (unsigned long long) scrib_seed, scrib_op_names[op]);
                for (int e = 0; e < 140; e++)
                        if (errs[op][e])
                                printf(" %d %llu", -e, errs[op][e]);
                printf("\n");
        }
        printf("scribbler seed %llu: %llu calls, %llu probes\n", (unsigned long long) scrib_seed, calls, probes);
}
END_TEST

START_TEST(test_killed_lock_holder_does_not_keep_the_lock) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        int ready[2];
        char c;
        pid_t pid;

        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, "lock", SHMB_RW, &c2) < 0 || shmb_lock(c2, 0, WAIT_MS) < 0)
                        _exit(2);
                if (write(ready[1], "x", 1) != 1)
                        _exit(3);
                for (;;)
                        pause();
        }
        close(ready[1]);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        close(ready[0]);
        /* Held by the child: not ours. */
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_lock(ch, 0, 100), -ETIMEDOUT);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        /* Its holder died: the next locker gets it, and it works as a lock from then on. */
        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

typedef enum { BLOCK_SEM, BLOCK_LOCK, BLOCK_RECV, _BLOCK_MAX } BlockKind;

typedef struct Blocked {
        BlockKind kind;
        shmb_channel *ch;
        int result;
        int64_t returned_ms;
        pid_t tid;              /* the calling thread's, once it is about to call */
} Blocked;

static void *blocked_call(void *userdata) {
        Blocked *b = userdata;
        char buf[4096];

        __atomic_store_n(&b->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        switch (b->kind) {
        case BLOCK_SEM:
                b->result = shmb_sem_wait(b->ch, 1, -1);
                break;
        case BLOCK_LOCK:
                b->result = shmb_lock(b->ch, 0, -1);
                break;
        default:
                b->result = (int) shmb_recv(b->ch, buf, sizeof buf, -1);
                break;
        }
        b->returned_ms = test_now_ms();
        return NULL;
}

static const char *const blocked_names[_BLOCK_MAX] = { "raw", "lock", "ring" };

/*
 * Until b's thread sleeps in its call: five looks in a row, 1 ms apart, so
 * that a thread caught between two slices of its wait still counts, and
 * one merely scheduled out before the call does not. A call that started
 * after the removal would return -EIDRM without waiting, and the tests
 * below would then pass without testing a waiter.
 */
static void await_blocked(const Blocked *b) {
        int64_t deadline = test_now_ms() + WAIT_MS;

        for (int asleep = 0; asleep < 5; usleep(1000)) {
                pid_t tid = __atomic_load_n(&b->tid, __ATOMIC_ACQUIRE);

                ck_assert_msg(__atomic_load_n(&b->result, __ATOMIC_RELAXED) == 1, "%s returned before the removal",
                              blocked_names[b->kind]);
                ck_assert_msg(test_now_ms() < deadline, "%s did not block within %d ms", blocked_names[b->kind],
                              WAIT_MS);
                asleep = tid && test_task_state(getpid(), tid) == 'S' ? asleep + 1 : 0;
        }
}

/*
 * holder takes the lock, then each kind of call blocks in a thread of its
 * own: the lock, semaphore 1 (0) and the empty ring.
 */
static shmb_channel *start_blocked_calls(Blocked b[_BLOCK_MAX], pthread_t t[_BLOCK_MAX]) {
        shmb_channel *holder = must_open("lock", SHMB_RW);

        ck_assert_int_eq(shmb_lock(holder, 0, 0), 0);
        for (int i = 0; i < _BLOCK_MAX; i++) {
                b[i] = (Blocked) { .kind = (BlockKind) i, .ch = must_open(blocked_names[i], SHMB_RW), .result = 1 };
                ck_assert_int_eq(pthread_create(&t[i], NULL, blocked_call, &b[i]), 0);
        }
        for (int i = 0; i < _BLOCK_MAX; i++)
                await_blocked(&b[i]);
        return holder;
}

/* Every blocked call returned -EIDRM within REMOVAL_MS of removed_ms (`what`: the removal), and so does the holder. */
static void assert_blocked_calls_ended(Blocked b[_BLOCK_MAX], pthread_t t[_BLOCK_MAX], shmb_channel *holder,
                                       int64_t removed_ms, const char *what) {
        for (int i = 0; i < _BLOCK_MAX; i++) {
                /* Bounded, so that a call that never returns fails here rather than at the case timeout. */
                struct timespec until;

                ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &until), 0);
                until.tv_sec += WAIT_MS / 1000;
                ck_assert_msg(pthread_timedjoin_np(t[i], NULL, &until) == 0, "%s still blocked %d s after the %s",
                              blocked_names[i], WAIT_MS / 1000, what);
                ck_assert_msg(b[i].result == -EIDRM, "%s: %s", blocked_names[i], shmb_strerror(b[i].result));
                ck_assert_msg(b[i].returned_ms - removed_ms < REMOVAL_MS, "%s returned %lld ms after the %s",
                              blocked_names[i], (long long) (b[i].returned_ms - removed_ms), what);
                ck_assert_int_eq(shmb_channel_check(b[i].ch), -EIDRM);
                ck_assert_int_eq(shmb_close(b[i].ch), 0);
        }
        ck_assert_int_eq(shmb_sem_post(holder, 0), -EIDRM);
        ck_assert_int_eq(shmb_unlock(holder, 0), -EIDRM);
        ck_assert_int_eq(shmb_close(holder), 0);
}

START_TEST(test_removal_ends_blocked_calls) {
        Blocked b[_BLOCK_MAX];
        pthread_t t[_BLOCK_MAX];
        shmb_channel *holder = start_blocked_calls(b, t);
        int64_t removed_ms = test_now_ms();

        test_daemon_stop_ok(&td);
        td.pid = -1;
        assert_blocked_calls_ended(b, t, holder, removed_ms, "stop");
        ck_assert_int_eq(dev_shm_count(), 0);
}
END_TEST

/*
 * SPEC, channel lifecycle: once a channel is removed every semaphore call
 * on the old handle returns -EIDRM, and the same calls work alike on both
 * kinds. On System V an unlock after the removal fails with it (the set is
 * gone); a posix lock's holder must learn it the same way, not get 0, and
 * an unlock without the lock must not say -EPERM instead.
 */
START_TEST(test_unlock_after_removal_is_eidrm) {
        shmb_channel *px = must_open("lock", SHMB_RW), *sv = must_open("sysv", SHMB_RW);

        ck_assert_int_eq(shmb_lock(px, 0, 0), 0);
        ck_assert_int_eq(shmb_lock(sv, 0, 0), 0);
        test_daemon_stop_ok(&td);
        td.pid = -1;
        ck_assert_int_eq(shmb_unlock(sv, 0), -EIDRM);
        ck_assert_int_eq(shmb_unlock(px, 0), -EIDRM);
        /* Again, now without the lock: still the removal, not -EPERM. */
        ck_assert_int_eq(shmb_unlock(sv, 0), -EIDRM);
        ck_assert_int_eq(shmb_unlock(px, 0), -EIDRM);
        ck_assert_int_eq(shmb_lock(px, 0, 0), -EIDRM);
        ck_assert_int_eq(shmb_close(px), 0);
        ck_assert_int_eq(shmb_close(sv), 0);
}
END_TEST

/* Unlink every file in /dev/shm (this test's own tmpfs) and its semaphore directory. */
static void remove_dev_shm_files(void) {
        DIR *d = opendir(PSEM_DIR);

        ck_assert_ptr_nonnull(d);
        for (struct dirent *e; (e = readdir(d));)
                if (e->d_name[0] != '.')
                        ck_assert_msg(unlinkat(dirfd(d), e->d_name, 0) == 0, "%s: %s", e->d_name, strerror(errno));
        closedir(d);
}

/*
 * A crash, then an administrator removes the dead daemon's files (rm), and
 * no broker comes back to mark anything: libshmbroker(3), a wait that
 * sleeps long asks the kernel now and then whether its objects are still
 * there, so the blocked calls end with -EIDRM, and the handles say so.
 */
START_TEST(test_files_removed_while_broker_is_away_end_blocked_calls) {
        Blocked b[_BLOCK_MAX];
        pthread_t t[_BLOCK_MAX];
        shmb_channel *holder = start_blocked_calls(b, t);

        test_daemon_kill(&td, SIGKILL);
        remove_dev_shm_files();
        for (int i = 0; i < _BLOCK_MAX; i++) {
                struct timespec until;

                ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &until), 0);
                until.tv_sec += WAIT_MS / 1000;
                ck_assert_msg(pthread_timedjoin_np(t[i], NULL, &until) == 0, "%s still blocked %d s after the files went",
                              blocked_names[i], WAIT_MS / 1000);
                ck_assert_msg(b[i].result == -EIDRM, "%s: %s", blocked_names[i], shmb_strerror(b[i].result));
        }
        /* libshmbroker(3): "and every later call on the handle too", also calls that would not wait. */
        ck_assert_int_eq(shmb_send(b[BLOCK_RECV].ch, "x", 1, 0), -EIDRM);
        ck_assert_int_eq(shmb_sem_post(b[BLOCK_SEM].ch, 0), -EIDRM);
        for (int i = 0; i < _BLOCK_MAX; i++) {
                ck_assert_int_eq(shmb_channel_check(b[i].ch), -EIDRM);
                ck_assert_int_eq(shmb_close(b[i].ch), 0);
        }
        ck_assert_int_eq(shmb_unlock(holder, 0), 0);
        ck_assert_int_eq(shmb_close(holder), 0);
        ck_assert_int_eq(dev_shm_count(), 0);
        /* The dead run's System V channel goes with the next start's reclaim. */
        test_start_ok();
}
END_TEST

/*
 * The same for callers whose waits a signal keeps interrupting (a timer, a
 * profiler): each wait ended with -EINTR before its slice or poll ran out,
 * so nothing asked the kernel. A semaphore wait signalled every 20 ms (its
 * slice is 50 ms) and a ring receive signalled every 100 ms (its poll is a
 * second), each calling again after -EINTR, end with -EIDRM.
 */
START_TEST(test_interrupted_waits_see_files_removed_while_broker_is_away) {
        shmb_channel *ch[2] = { must_open("raw", SHMB_RW), must_open("ring", SHMB_RW) };

        test_daemon_kill(&td, SIGKILL);
        remove_dev_shm_files();
        for (int k = 0; k < 2; k++) {
                TestTicker ticker = test_ticker_start(k ? 100 : 20);
                int64_t until = test_now_ms() + WAIT_MS;
                char buf[64];
                int calls = 0;
                ssize_t r;

                do {
                        r = k ? shmb_recv(ch[k], buf, sizeof buf, -1) : shmb_sem_wait(ch[k], 1, -1);
                        calls++;
                } while (r == -EINTR && test_now_ms() < until);
                test_ticker_stop(&ticker);
                ck_assert_msg(r == -EIDRM, "%s that signals interrupt, on files that are gone: %zd (%s) after %d calls",
                              k ? "ring receives" : "semaphore waits", r, shmb_strerror((int) r), calls);
                ck_assert_int_eq(shmb_close(ch[k]), 0);
        }
        /* The dead run's System V channel goes with the next start's reclaim. */
        test_start_ok();
}
END_TEST

/* Zero the magic of a channel's semaphore file, as any rw holder may. */
static void scribble_sem_magic(const char *channel, unsigned sem) {
        char path[PATH_MAX];
        uint32_t zero = 0;
        int fd;

        snprintf(path, sizeof path, PSEM_DIR "/" PSEM_FILE_PREFIX "shmbroker.%s.%u", channel, sem);
        fd = open(path, O_RDWR | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(pwrite(fd, &zero, sizeof zero, offsetof(PosixSemFile, magic)), (ssize_t) sizeof zero);
        close(fd);
}

/*
 * Any rw holder may write any byte of the files, the magic of a semaphore
 * or a ring header included. That must not keep the others from learning
 * that the channel is gone: the daemon made the files in this run and knows
 * their layout, so its stop reaches the blocked callers all the same.
 */
START_TEST(test_removal_ends_blocked_calls_of_scribbled_files) {
        Blocked b[_BLOCK_MAX];
        pthread_t t[_BLOCK_MAX];
        shmb_channel *holder = start_blocked_calls(b, t);
        int64_t removed_ms;

        scribble_sem_magic("raw", 1);
        scribble_sem_magic("lock", 0);
        __atomic_store_n(&((RingHeader *) shmb_channel_addr(b[BLOCK_RECV].ch))->magic, 0, __ATOMIC_SEQ_CST);
        removed_ms = test_now_ms();
        test_daemon_stop_ok(&td);
        td.pid = -1;
        assert_blocked_calls_ended(b, t, holder, removed_ms, "stop, files scribbled on");
        ck_assert_int_eq(dev_shm_count(), 0);
}
END_TEST

/*
 * A reload reaches blocked callers as a stop does: "raw" and "ring"
 * dropped, "lock" replaced (its size changed). Each blocked call returns
 * -EIDRM, and the files of the dropped channels are gone.
 */
START_TEST(test_reload_ends_blocked_calls) {
        Blocked b[_BLOCK_MAX];
        pthread_t t[_BLOCK_MAX];
        shmb_channel *holder = start_blocked_calls(b, t);
        shmb_reload_result *res;
        shmb_client *c;
        int64_t removed_ms;

        test_daemon_write_config(&td,
                                 "[{\"name\": \"lock\", \"kind\": \"posix\", \"size\": 8192, \"semaphores\": [1]}]");
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        removed_ms = test_now_ms();
        ck_assert_int_eq(shmb_reload(c, &res), 0);
        shmb_reload_result_free(res);
        shmb_disconnect(c);
        assert_blocked_calls_ended(b, t, holder, removed_ms, "reload");
        ck_assert_int_eq(access("/dev/shm/shmbroker.raw", F_OK), -1);
        ck_assert_int_eq(access("/dev/shm/shmbroker.ring", F_OK), -1);
        ck_assert_int_eq(access("/dev/shm/shmbroker.lock", F_OK), 0);
}
END_TEST

typedef struct Subscriber {
        shmb_channel *ch;
        int got;                        /* messages received in order */
        int error;
} Subscriber;

static void *subscribe(void *userdata) {
        Subscriber *s = userdata;

        for (int i = 0; i < N_BCAST; i++) {
                char buf[64], want[64];
                ssize_t n = shmb_recv(s->ch, buf, sizeof buf, WAIT_MS);

                snprintf(want, sizeof want, "message %d", i);
                if (n < 0) {
                        s->error = (int) n;
                        break;
                }
                if ((size_t) n != strlen(want) || memcmp(buf, want, (size_t) n) != 0)
                        break;
                s->got++;
        }
        return NULL;
}

START_TEST(test_broadcast_reaches_every_subscriber) {
        Subscriber s[2] = { { .ch = must_open("news", SHMB_RO) }, { .ch = must_open("news", SHMB_RO) } };
        shmb_channel *pub = must_open("news", SHMB_RW);
        pthread_t t[2];

        ck_assert_int_eq(shmb_channel_kind(pub), SHMB_KIND_POSIX);
        for (int i = 0; i < 2; i++)
                ck_assert_int_eq(pthread_create(&t[i], NULL, subscribe, &s[i]), 0);
        /* Block mode with 8 slots: 200 messages need the subscribers to keep up through the table. */
        for (int i = 0; i < N_BCAST; i++) {
                char msg[64];
                int r;

                snprintf(msg, sizeof msg, "message %d", i);
                r = shmb_send(pub, msg, strlen(msg), WAIT_MS);
                ck_assert_msg(r == 0, "send %d: %s", i, shmb_strerror(r));
        }
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(pthread_join(t[i], NULL), 0);
                ck_assert_msg(s[i].got == N_BCAST, "subscriber %d got %d of %d (%s)", i, s[i].got, N_BCAST,
                              shmb_strerror(s[i].error));
                ck_assert_int_eq(shmb_close(s[i].ch), 0);
        }
        ck_assert_int_eq(shmb_close(pub), 0);
}
END_TEST

START_TEST(test_no_descriptor_is_left_open) {
        static const char *const names[] = { "raw", "lock", "ring", "news", "sysv" };
        int before = fd_count();

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                shmb_channel *rw = must_open(names[i], SHMB_RW), *ro = must_open(names[i], SHMB_RO);
                shmb_client *c = NULL;
                shmb_channel *ch = NULL;

                ck_assert_int_eq(shmb_close(ro), 0);
                ck_assert_int_eq(shmb_close(rw), 0);
                /* Two handles on one connection, the second of the same channel. */
                ck_assert_int_eq(shmb_connect(NULL, &c), 0);
                ck_assert_int_eq(shmb_open(c, names[i], SHMB_RW, &ch), 0);
                ck_assert_int_eq(shmb_close(ch), 0);
                shmb_disconnect(c);
        }
        /* Descriptors that come with an answer nobody maps (a raw request's) are closed, not kept. */
        {
                shmb_client *c = NULL;
                char *answer = NULL;

                ck_assert_int_eq(shmb_connect(NULL, &c), 0);
                ck_assert_int_eq(shmb_request_json(c, "{\"op\": \"open\", \"channel\": \"news\", \"access\": \"rw\", "
                                                      "\"fd\": true}", &answer), 0);
                ck_assert_ptr_nonnull(strstr(answer, "\"fds\""));
                free(answer);
                ck_assert_int_eq(fd_count(), before + 1);       /* the socket alone */
                shmb_disconnect(c);
        }
        ck_assert_int_eq(fd_count(), before);
}
END_TEST

/* Lines of /proc/self/maps: one more for each mapping left behind. */
/*
 * This process's mappings of shared files (/dev/shm, memfds): what a
 * failed open must not leave. Only those: a sanitizer's runtime maps
 * memory of its own at any time, so the whole count would not hold still.
 */
static int map_count(void) {
        FILE *f = fopen("/proc/self/maps", "re");
        char line[4096];
        int n = 0;

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof line, f))
                n += strstr(line, " /dev/shm/") || strstr(line, " /memfd:");
        fclose(f);
        return n;
}

static char half_answer[4096];
static int half_fds[4];

/* A stand-in broker: greets, then answers the open with half_answer and half_fds. */
static void half_good_server(int lfd) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof half_fds)];
        } control = {};
        struct iovec iov = { .iov_base = half_answer, .iov_len = strlen(half_answer) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        int fd = accept(lfd, NULL, NULL);
        static const char hello[] = "{\"ok\":true,\"version\":1,\"server\":\"fake\"}\n";
        unsigned lines = 0;
        char byte;

        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof half_fds);
        memcpy(CMSG_DATA(cm), half_fds, sizeof half_fds);
        while (fd >= 0 && read(fd, &byte, 1) == 1) {
                if (byte != '\n')
                        continue;
                if (lines++ == 0 ? write(fd, hello, strlen(hello)) < 0 : sendmsg(fd, &mh, 0) < 0)
                        break;
        }
        _exit(0);
}

/* The broker's own answer and descriptors for an rw open of "raw" (a segment, its lock holder table, two semaphore files). */
static void capture_raw_open(void) {
        int fd = test_connect(td.socket);
        size_t n = 0;
        json_t *resp;
        char *line;

        json_decref(test_request(fd, "{\"op\":\"hello\",\"version\":1}"));
        resp = test_request_fds(fd, "{\"op\":\"open\",\"channel\":\"raw\",\"access\":\"rw\",\"fd\":true}", half_fds,
                                ELEMENTSOF(half_fds), &n);
        test_assert_ok(resp);
        ck_assert_uint_eq(n, ELEMENTSOF(half_fds));
        line = json_dumps(resp, JSON_COMPACT);
        ck_assert_ptr_nonnull(line);
        ck_assert_int_lt(snprintf(half_answer, sizeof half_answer, "%s\n", line), (int) sizeof half_answer);
        free(line);
        json_decref(resp);
        close(fd);
}

/* A stand-in broker (half_good_server()) on a socket of its own in td.dir, path into sa; the half_fds are its now. */
static pid_t start_stand_in(struct sockaddr_un *sa) {
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        pid_t pid;

        *sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        ck_assert_int_ge(lfd, 0);
        ck_assert_int_lt(snprintf(sa->sun_path, sizeof sa->sun_path, "%s/half.sock", td.dir),
                         (int) sizeof sa->sun_path);
        ck_assert_int_eq(bind(lfd, (struct sockaddr *) sa, sizeof *sa), 0);
        ck_assert_int_eq(listen(lfd, 4), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                half_good_server(lfd);
        }
        close(lfd);
        for (size_t i = 0; i < ELEMENTSOF(half_fds); i++)
                close(half_fds[i]);
        return pid;
}

/*
 * An open that fails halfway through mapping (the segment, the lock holder
 * table and semaphore 0 mapped, semaphore 1 not a semaphore file) unmaps
 * and closes everything.
 */
START_TEST(test_open_failing_halfway_leaves_nothing) {
        struct sockaddr_un sa;
        shmb_channel *ch = NULL;
        int maps, fds;
        pid_t pid;

        capture_raw_open();
        /* ...but the second semaphore file is all zeroes: no PSEM_MAGIC. */
        close(half_fds[3]);
        half_fds[3] = memfd_create("not-a-semaphore", MFD_CLOEXEC);
        ck_assert_int_ge(half_fds[3], 0);
        ck_assert_int_eq(ftruncate(half_fds[3], sizeof(PosixSemFile)), 0);
        pid = start_stand_in(&sa);

        fds = fd_count();
        maps = map_count();
        ck_assert_int_eq(shmb_open_channel(sa.sun_path, "raw", SHMB_RW, &ch), -EPROTO);
        ck_assert_ptr_null(ch);
        ck_assert_int_eq(fd_count(), fds);
        ck_assert_int_eq(map_count(), maps);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
}
END_TEST

/*
 * shmbrokerd(8): files "truncated behind the daemon's back ... are
 * noticed at the next open or status, and the channel is made again".
 * Root cuts a raw posix channel's lock holder table
 * (/dev/shm/shmbroker-table.NAME, the broker's own file) short, then
 * grows it, while the broker runs: each time the next open gets a channel
 * made again, whose lock works, and the log says so; the broker serves
 * its other channels meanwhile.
 */
START_TEST(test_lock_table_cut_or_grown_by_root_is_made_again) {
        static const off_t sizes[] = { 0, PSEM_TABLE_SIZE - 1, PSEM_TABLE_SIZE + 4096 };
        const char *path = PSEM_DIR "/shmbroker-table.raw";
        shmb_channel *ch, *other;
        struct stat st;
        char *log;
        int n_made = 0;

        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                ck_assert_int_eq(truncate(path, sizes[i]), 0);
                other = must_open("lock", SHMB_RW);
                ck_assert_int_eq(shmb_lock(other, 0, 0), 0);
                ck_assert_int_eq(shmb_unlock(other, 0), 0);
                ck_assert_int_eq(shmb_close(other), 0);
                ch = must_open("raw", SHMB_RW);
                ck_assert_int_eq(stat(path, &st), 0);
                ck_assert_int_eq(st.st_size, (off_t) PSEM_TABLE_SIZE);
                ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
                ck_assert_int_eq(shmb_unlock(ch, 0), 0);
                ck_assert_int_eq(shmb_close(ch), 0);
                log = test_daemon_log(&td);
                n_made = 0;
                for (const char *at = log; (at = strstr(at, "Channel raw: its files were removed or replaced")); at++)
                        n_made++;
                ck_assert_msg(n_made == (int) i + 1, "table of %jd bytes: the log says the channel was made again "
                              "%d times:\n%s", (intmax_t) sizes[i], n_made, log);
                free(log);
        }
}
END_TEST

/*
 * libshmbroker(3), -EPROTO: the broker "answered something malformed".
 * A file of a raw posix channel cut short after the broker handed it over
 * (root truncates it in the moment between; a stand-in broker replays the
 * real broker's answer and descriptors to fix that moment): the segment,
 * the lock holder table, a semaphore file. Mapping it as it is would make
 * the library's first look past the file's end a SIGBUS: the open fails
 * -EPROTO, saying which file, and leaves no descriptor and no mapping
 * behind.
 */
START_TEST(test_open_with_a_file_cut_short_after_the_answer_fails_cleanly) {
        static const struct {
                const char *file, *says;
                off_t size;
        } cuts[] = {
                { "shmbroker-table.raw", "lock holder table", 0 },
                { "shmbroker-table.raw", "lock holder table", PSEM_TABLE_SIZE - 1 },
                { "shmbroker.raw", "segment file", 4095 },
                { PSEM_FILE_PREFIX "shmbroker.raw.1", "semaphore file 1", sizeof(PosixSemFile) - 1 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cuts); i++) {
                char path[PATH_MAX];
                struct sockaddr_un sa;
                shmb_channel *ch = NULL;
                shmb_client *c = NULL;
                int maps, fds, r;
                pid_t pid;

                capture_raw_open();
                snprintf(path, sizeof path, PSEM_DIR "/%s", cuts[i].file);
                ck_assert_int_eq(truncate(path, cuts[i].size), 0);
                pid = start_stand_in(&sa);
                ck_assert_int_eq(shmb_connect(sa.sun_path, &c), 0);
                fds = fd_count();
                maps = map_count();
                r = shmb_open(c, "raw", SHMB_RW, &ch);
                ck_assert_msg(r == -EPROTO, "an open with %s cut to %jd bytes: %s", path, (intmax_t) cuts[i].size,
                              shmb_strerror(r));
                ck_assert_ptr_null(ch);
                ck_assert_msg(strstr(shmb_client_last_message(c), cuts[i].says), "%s cut: the message says %s",
                              path, shmb_client_last_message(c));
                ck_assert_int_eq(fd_count(), fds);
                ck_assert_int_eq(map_count(), maps);
                shmb_disconnect(c);
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                ck_assert_int_eq(unlink(sa.sun_path), 0);
        }
        /* The real broker noticed nothing of this, and makes the channel again at its next open. */
        ck_assert_int_eq(shmb_close(must_open("raw", SHMB_RW)), 0);
}
END_TEST

/* VmSize of this process, in bytes. */
static uint64_t vm_size(void) {
        FILE *f = fopen("/proc/self/status", "re");
        unsigned long long kb = 0;
        char line[256];

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "VmSize: %llu kB", &kb) == 1)
                        break;
        fclose(f);
        ck_assert_uint_gt(kb, 0);
        return (uint64_t) kb * 1024;
}

/*
 * A posix channel's segment that the caller's address space has no room
 * for (RLIMIT_AS, as a container or ulimit -v sets it): the open fails
 * with mmap's -ENOMEM and leaves no descriptor and no mapping behind; the
 * same open works once there is room.
 */
START_TEST(test_open_of_a_segment_past_the_address_space_limit_leaves_nothing) {
        char cfg[sizeof channels + 256];
        shmb_reload_result *res = NULL;
        shmb_channel *ch = NULL;
        shmb_client *c = NULL;
        struct rlimit old, lim;
        int fds, maps, r;

        snprintf(cfg, sizeof cfg, "%.*s%s]", (int) (sizeof channels - 2), channels,
                 ", {\"name\": \"big\", \"kind\": \"posix\", \"size\": \"16M\", \"semaphores\": [1]}");
        test_daemon_write_config(&td, cfg);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_reload(c, &res), 0);
        shmb_reload_result_free(res);
        fds = fd_count();
        maps = map_count();
        ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
        /* A sanitizer's runtime reserves terabytes and maps more at any time: no limit near VmSize holds still. */
        if (vm_size() > (UINT64_C(1) << 40)) {
                fprintf(stderr, "test_open_of_a_segment_past_the_address_space_limit_leaves_nothing: VmSize over "
                        "1 TiB (a sanitizer's runtime?); not tested here.\n");
                shmb_disconnect(c);
                return;
        }
        /* Room for what an open allocates, not for 16 MiB more. */
        lim = old;
        lim.rlim_cur = vm_size() + 4 * 1024 * 1024;
        ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
        r = shmb_open(c, "big", SHMB_RW, &ch);
        ck_assert_int_eq(setrlimit(RLIMIT_AS, &old), 0);
        ck_assert_msg(r == -ENOMEM, "an open past the address space limit: %s", shmb_strerror(r));
        ck_assert_ptr_null(ch);
        ck_assert_int_eq(fd_count(), fds);
        ck_assert_int_eq(map_count(), maps);
        ck_assert_int_eq(shmb_open(c, "big", SHMB_RW, &ch), 0);
        ck_assert_int_eq(shmb_sem_trywait(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
        shmb_disconnect(c);
}
END_TEST

/* A broker crash and restart adopts the files: the hold comes back, the handle stays good. */
START_TEST(test_hold_survives_a_broker_crash) {
        shmb_channel *ch = must_open("raw", SHMB_RW);
        shmb_status_list *l = NULL;
        int64_t deadline;
        size_t held = 0;

        int fds_before = fd_count();

        strcpy(shmb_channel_addr(ch), "kept");
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        /* The next broker call reconnects and opens it again (the broker may take a moment to accept). */
        deadline = test_now_ms() + WAIT_MS;
        while (test_now_ms() < deadline) {
                if (shmb_status(shmb_channel_get_client(ch), "raw", &l) == 0) {
                        held = shmb_status_nclients(l, 0);
                        shmb_status_free(l);
                        if (held == 1)
                                break;
                }
                usleep(20 * 1000);
        }
        ck_assert_uint_eq(held, 1);
        /* The descriptors that came with the rejoin's open were looked at and closed. */
        ck_assert_int_eq(fd_count(), fds_before);
        ck_assert_int_eq(shmb_channel_check(ch), 0);
        ck_assert_int_eq(shmb_sem_trywait(ch, 0), 0);
        ck_assert_str_eq(shmb_channel_addr(ch), "kept");
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* An event loop waits for a posix ring as for a System V one (the wake-up FIFOs do not care about the kind). */
START_TEST(test_channel_fd_wakes_on_a_message_from_another_process) {
        shmb_channel *ch = must_open("ring", SHMB_RW);
        struct pollfd p = { .events = POLLIN };
        char buf[64];
        int linger[2];
        pid_t pid;

        /* The child stays until the parent saw the message: the broker wakes every waiter when a holder goes. */
        ck_assert_int_eq(pipe2(linger, O_CLOEXEC), 0);
        p.fd = shmb_channel_fd(ch);
        ck_assert_int_ge(p.fd, 0);
        /* The first -EAGAIN arms the fd; only then may it stay quiet. */
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), -EAGAIN);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                if (shmb_open_channel(NULL, "ring", SHMB_RW, &c2) < 0)
                        _exit(2);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(linger[1]);
                if (shmb_send(c2, "x", 1, WAIT_MS) < 0)
                        _exit(3);
                (void) read(linger[0], buf, 1);
                _exit(0);
        }
        close(linger[0]);
        while (p.revents == 0)
                ck_assert_int_eq(poll(&p, 1, WAIT_MS), 1);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, 0), 1);
        close(linger[1]);
        reap_ok(pid);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * A container given the broker's socket and nothing else of its directory
 * (docker -v SOCKET:SOCKET) cannot open the wake-up FIFOs by path: they
 * come with the channel's descriptors. The waiter here has the FIFOs'
 * directory hidden under an empty tmpfs.
 */
START_TEST(test_channel_fd_with_only_the_socket_visible) {
        char wake_dir[sizeof td.socket + 8], fifo[sizeof wake_dir + 16], c;
        int armed[2], linger[2];
        shmb_channel *ch = must_open("ring", SHMB_RW);
        pid_t pid;

        snprintf(wake_dir, sizeof wake_dir, "%s.wake", td.socket);
        snprintf(fifo, sizeof fifo, "%s/ring.data", wake_dir);
        ck_assert_int_eq(access(fifo, F_OK), 0);
        ck_assert_int_eq(pipe2(armed, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(linger, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct pollfd p = { .events = POLLIN };
                shmb_channel *w = NULL;
                char buf[64];

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(armed[0]);
                close(linger[1]);
                if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
                    mount("tmpfs", wake_dir, "tmpfs", 0, "mode=0755") < 0)
                        _exit(2);
                if (access(fifo, F_OK) == 0)
                        _exit(3);       /* the FIFOs must really be out of sight */
                if (shmb_open_channel(td.socket, "ring", SHMB_RW, &w) < 0)
                        _exit(5);
                p.fd = shmb_channel_fd(w);
                if (p.fd < 0 || shmb_recv(w, buf, sizeof buf, 0) != -EAGAIN)
                        _exit(6);
                if (write(armed[1], "a", 1) != 1)
                        _exit(7);
                while (p.revents == 0)
                        if (poll(&p, 1, WAIT_MS) != 1)
                                _exit(8);       /* no wake-up */
                if (shmb_recv(w, buf, sizeof buf, 0) != 1 || buf[0] != 'x')
                        _exit(9);
                (void) read(linger[0], buf, 1);
                _exit(0);
        }
        close(armed[1]);
        close(linger[0]);
        if (read(armed[0], &c, 1) != 1) {
                int status;

                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                ck_abort_msg("the waiter gave up before it waited (exit %d: 5 open, 6 shmb_channel_fd or its arming)",
                             WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        ck_assert_int_eq(shmb_send(ch, "x", 1, WAIT_MS), 0);
        close(linger[1]);
        reap_ok(pid);
        close(armed[0]);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* A clean stop removes the files; the broker started again makes new ones: the handle is stale, its hold not taken again. */
START_TEST(test_handle_is_stale_after_a_stop_and_start) {
        shmb_channel *ch = must_open("raw", SHMB_RW);
        shmb_status_list *l = NULL;
        int64_t deadline;
        int r = -1;

        test_daemon_stop_ok(&td);
        td.pid = -1;
        ck_assert_int_eq(shmb_channel_check(ch), -EIDRM);
        ck_assert_int_eq(shmb_sem_post(ch, 0), -EIDRM);
        test_start_ok();
        deadline = test_now_ms() + WAIT_MS;
        while (test_now_ms() < deadline && (r = shmb_status(shmb_channel_get_client(ch), "raw", &l)) < 0)
                usleep(20 * 1000);
        ck_assert_msg(r == 0, "status: %s", shmb_strerror(r));
        /* The same name, another file: the rejoin gave back the hold it took. */
        ck_assert_uint_eq(shmb_status_nclients(l, 0), 0);
        shmb_status_free(l);
        ck_assert_int_eq(shmb_channel_check(ch), -EIDRM);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

START_TEST(test_shmbrokerctl_shows_kind_and_names) {
        char cmd[512], out[8192];
        int seen;
        FILE *p;
        size_t n;

        snprintf(cmd, sizeof cmd, "%s list 2>&1 && %s status raw 2>&1", SHMBROKERCTL_PATH, SHMBROKERCTL_PATH);
        p = popen(cmd, "r");
        ck_assert_ptr_nonnull(p);
        n = fread(out, 1, sizeof out - 1, p);
        out[n] = 0;
        ck_assert_int_eq(pclose(p), 0);
        ck_assert_msg(strstr(out, "KIND") && strstr(out, " posix ") && strstr(out, " sysv "), "%s", out);
        ck_assert_msg(strstr(out, "/shmbroker.ring"), "%s", out);
        ck_assert_msg(strstr(out, "Segment:    posix /shmbroker.raw"), "%s", out);
        ck_assert_msg(strstr(out, "/shmbroker.raw.1"), "%s", out);

        /*
         * shmbrokerctl(1), status: NATTCH is "- for a posix channel, whose
         * file's mappings the kernel does not count", and "Figures the daemon
         * could not read are shown as -, never as zeros": no key, no creator
         * or last pid either. The System V channel beside it has them all.
         */
        snprintf(cmd, sizeof cmd, "%s status 2>&1", SHMBROKERCTL_PATH);
        p = popen(cmd, "r");
        ck_assert_ptr_nonnull(p);
        n = fread(out, 1, sizeof out - 1, p);
        out[n] = 0;
        ck_assert_int_eq(pclose(p), 0);
        seen = 0;
        for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
                char name[64], key[32], size[32], nattch[32], cpid[32], lpid[32];

                if (sscanf(line, "%63s %31s %31s %31s %31s %31s", name, key, size, nattch, cpid, lpid) != 6 ||
                    (!streq(name, "raw") && !streq(name, "sysv")))
                        continue;
                seen++;
                if (streq(name, "raw"))
                        ck_assert_msg(streq(key, "-") && streq(nattch, "-") && streq(cpid, "-") && streq(lpid, "-"),
                                      "posix row shows figures a file does not have: %s", line);
                else
                        ck_assert_msg(strncmp(key, "0x", 2) == 0 && atoi(nattch) >= 1 && atoi(cpid) == td.pid,
                                      "System V row: %s", line);
        }
        ck_assert_int_eq(seen, 2);
}
END_TEST

/*
 * libshmbroker(3), ERRORS: "-ERANGE shmb_sem_post() or shmb_unlock() would
 * raise a semaphore above 32767", and README: "semaphores ... work as on
 * System V". A posix semaphore at 32767 must refuse a post as the System V
 * one beside it does, and keep its value.
 */
START_TEST(test_post_past_semvmx_is_erange_as_on_system_v) {
        static const char *const names[] = { "sysv-top", "posix-top" };

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"sysv-top\", \"size\": 4096, \"semaphores\": [32766]},"
                                      " {\"name\": \"posix-top\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [32766]}]");
        test_start_ok();
        for (size_t i = 0; i < 2; i++) {
                shmb_channel *ch = must_open(names[i], SHMB_RW);
                shmb_client *c = NULL;
                shmb_status_list *l = NULL;
                int value = -1;

                ck_assert_int_eq(shmb_sem_post(ch, 0), 0);      /* 32767: SEMVMX */
                ck_assert_msg(shmb_sem_post(ch, 0) == -ERANGE, "%s: a post past 32767 did not fail with -ERANGE", names[i]);
                ck_assert_int_eq(shmb_connect(NULL, &c), 0);
                ck_assert_int_eq(shmb_status(c, names[i], &l), 0);
                ck_assert_int_eq(shmb_status_semaphore(l, 0, 0, &value, NULL, NULL, NULL), 0);
                ck_assert_msg(value == 32767, "%s: value %d after the refused post", names[i], value);
                shmb_status_free(l);
                shmb_disconnect(c);
                ck_assert_int_eq(shmb_close(ch), 0);
        }
}
END_TEST

/*
 * The broker posts a removed semaphore once, so that every waiter wakes:
 * a library waiter that takes that post must pass it on (posix-sem.c), or
 * a program blocked in sem_wait(3) on the same semaphore, which never looks
 * at the removal, would sleep for ever. Seen through sem_open(3): the post
 * is still there once the library's waiter returned.
 */
START_TEST(test_woken_waiter_passes_the_removal_wake_up_on) {
        sem_t *named = sem_open("/shmbroker.raw.1", 0);
        Blocked b = { .kind = BLOCK_SEM, .ch = must_open("raw", SHMB_RW), .result = 1 };
        struct timespec until;
        pthread_t t;
        int value = -1;

        ck_assert_ptr_ne(named, SEM_FAILED);
        ck_assert_int_eq(pthread_create(&t, NULL, blocked_call, &b), 0);
        /* A wait that starts after the removal takes nothing, and would pass on nothing. */
        await_blocked(&b);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &until), 0);
        until.tv_sec += WAIT_MS / 1000;
        ck_assert_int_eq(pthread_timedjoin_np(t, NULL, &until), 0);
        ck_assert_int_eq(b.result, -EIDRM);
        ck_assert_int_eq(sem_getvalue(named, &value), 0);
        ck_assert_msg(value == 1, "the removal's wake-up was not passed on: value %d", value);
        ck_assert_int_eq(sem_close(named), 0);
        ck_assert_int_eq(shmb_close(b.ch), 0);
}
END_TEST

/*
 * libshmbroker(3), -EIDRM: semaphore calls on the old handle of a removed
 * channel "return it from then on". The broker posts each removed
 * semaphore once to wake its waiters; a program that knows the semaphore
 * by sem_open(3) may take that post. A try on the handle, which never
 * waits, must still say -EIDRM, not -EAGAIN as of a live semaphore at 0.
 */
START_TEST(test_try_on_a_removed_semaphore_whose_wake_up_was_taken_is_eidrm) {
        shmb_channel *ch = must_open("raw", SHMB_RW);
        sem_t *named = sem_open("/shmbroker.raw.1", 0);
        int value = -1;

        ck_assert_ptr_ne(named, SEM_FAILED);
        ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EAGAIN);     /* live, at 0 */
        test_daemon_stop_ok(&td);
        /* The broker's wake-up, taken by the foreign program. */
        ck_assert_int_eq(sem_getvalue(named, &value), 0);
        ck_assert_int_eq(value, 1);
        ck_assert_int_eq(sem_trywait(named), 0);
        ck_assert_int_eq(shmb_sem_trywait(ch, 1), -EIDRM);
        ck_assert_int_eq(shmb_sem_post(ch, 1), -EIDRM);
        ck_assert_int_eq(sem_getvalue(named, &value), 0);
        ck_assert_int_eq(value, 0);                             /* the refused post raised nothing */
        ck_assert_int_eq(sem_close(named), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * libshmbroker(3): shmb_status_sem_name() "returns the name of a posix
 * channel's user semaphore idx as sem_open(3) takes it". A ring keeps
 * semaphores of its own before its user's: user semaphore idx must name the
 * file that shmb_sem_post(ch, idx) raises, not the ring's.
 */
START_TEST(test_status_sem_name_is_the_user_semaphore_of_a_ring) {
        shmb_status_list *l = NULL;
        shmb_client *c = NULL;
        shmb_channel *ch;

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"pring\", \"kind\": \"posix\", \"layout\": \"ring\","
                                      " \"slot_size\": 64, \"slots\": 4, \"semaphores\": [0, 0]}]");
        test_start_ok();
        ch = must_open("pring", SHMB_RW);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(shmb_sem_post(ch, 1), 0);
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_status(c, "pring", &l), 0);
        ck_assert_uint_eq(shmb_status_nsems(l, 0), 2);
        for (unsigned idx = 0; idx < 2; idx++) {
                const char *name = shmb_status_sem_name(l, 0, idx);
                sem_t *named;
                int value = -1;

                ck_assert_ptr_nonnull(name);
                named = sem_open(name, 0);
                ck_assert_msg(named != SEM_FAILED, "sem_open(%s): %s", name, strerror(errno));
                ck_assert_int_eq(sem_getvalue(named, &value), 0);
                ck_assert_msg(value == (idx == 1 ? 3 : 0), "user semaphore %u is named %s, whose value is %d",
                              idx, name, value);
                ck_assert_int_eq(sem_close(named), 0);
        }
        ck_assert_ptr_null(shmb_status_sem_name(l, 0, 2));
        shmb_status_free(l);
        shmb_disconnect(c);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST


/* ---- a broker that cannot see its subscribers' pids ---- */

/* Whether pidfds have inode numbers of their own (pidfs, Linux 6.9+), which name a process in any PID namespace. */
static bool pidfs_inodes(void) {
        int fd = (int) syscall(SYS_pidfd_open, getpid(), 0);
        struct statfs sfs;
        bool yes;

        if (fd < 0)
                return false;
        yes = fstatfs(fd, &sfs) == 0 && sfs.f_type == 0x50494446;     /* PIDFS_MAGIC */
        close(fd);
        return yes;
}

/* The daemon under `unshare --pid --fork`: its own child, pid 1 of a PID namespace that holds no client. */
static const char pid_ns_wrapper[] = "unshare --pid --fork --mount-proc --kill-child=SIGKILL";

/* The daemon itself: the one child of the unshare(1) that td.pid is. */
static pid_t inner_daemon(void) {
        char path[64];
        int64_t deadline = test_now_ms() + WAIT_MS;
        int pid = 0;

        snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int) td.pid, (int) td.pid);
        while (pid <= 0 && test_now_ms() < deadline) {
                FILE *f = fopen(path, "re");

                if (f) {
                        if (fscanf(f, "%d", &pid) != 1)
                                pid = 0;
                        fclose(f);
                }
                if (pid <= 0)
                        usleep(10 * 1000);
        }
        ck_assert_msg(pid > 0, "no daemon under unshare pid %d", (int) td.pid);
        return pid;
}

/* Signal the daemon (not the unshare(1) around it, which does not pass signals on) and reap the wrapper. */
static int inner_daemon_signal(int sig) {
        int status = 0;

        ck_assert_int_eq(kill(inner_daemon(), sig), 0);
        ck_assert_int_eq(waitpid(td.pid, &status, 0), td.pid);
        td.pid = -1;
        return status;
}

/* SIGTERM the daemon under unshare(1), fail unless it exited with 0; the next start runs without the wrapper. */
static void inner_daemon_stop_ok(void) {
        int r = inner_daemon_signal(SIGTERM);

        ck_assert_msg(WIFEXITED(r) && WEXITSTATUS(r) == 0, "daemon stop: status 0x%x", r);
        unsetenv("TEST_DAEMON_WRAPPER");
}

/* Until the broker lists `n` holds of `name`: each handle's next broker call rejoins it after a restart. */
static void wait_holds(shmb_channel *a, shmb_channel *b, const char *name, size_t n) {
        int64_t deadline = test_now_ms() + WAIT_MS;
        size_t held = 0;

        while (test_now_ms() < deadline) {
                shmb_channel *both[2] = { a, b };

                for (int k = 0; k < 2; k++) {
                        shmb_status_list *l = NULL;

                        if (shmb_status(shmb_channel_get_client(both[k]), name, &l) == 0) {
                                held = shmb_status_nclients(l, 0);
                                shmb_status_free(l);
                        }
                }
                if (held == n)
                        return;
                usleep(20 * 1000);
        }
        ck_abort_msg("%s: %zu holds listed, not %zu", name, held, n);
}

/*
 * Promised (SPEC "Holds survive a broker restart", "Crash restart keeps
 * channels ... attached clients keep working, no message is lost";
 * libshmbroker(3): a subscriber holds publishers back only while it
 * lives): a broadcast subscriber that the broker cannot see (its PID
 * namespace is not the broker's descendant: SO_PEERCRED says pid 0) goes
 * on after a broker crash. The restarted broker keeps the old subscriber
 * entry live (a pid 0 proves nothing) but cannot hand it back either
 * (same_opener() wants a pid), so the library's rejoin gets a new token
 * and a new cursor; the old cursor, still carrying the old live token,
 * stays frozen where the subscriber was, and holds every block-mode
 * publisher back for ever once it is `slots` ahead, and takes one of the
 * channel's "subscribers" places.
 */
START_TEST(test_subscriber_the_broker_cannot_see_survives_a_crash) {
        shmb_channel *pub, *sub, *other = NULL;
        json_t *resp, *e, *subs;
        int fd, r;

        test_daemon_stop_ok(&td);
        /*
         * The broadcast channel alone: a start in another PID namespace than the
         * run that crashed cannot tell that run's System V objects its own (their
         * creator's pid is hidden from it), and leaves them (shmbrokerd(8)).
         */
        test_daemon_write_config(&td, "[{\"name\": \"news\", \"kind\": \"posix\", \"layout\": \"broadcast\", "
                                      "\"slot_size\": 64, \"slots\": 8, \"subscribers\": 2}]");
        setenv("TEST_DAEMON_WRAPPER", pid_ns_wrapper, 1);
        test_start_ok();

        pub = must_open("news", SHMB_RW);
        sub = must_open("news", SHMB_RO);
        /* The setup holds: the broker sees this process as pid 0. */
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\": \"status\", \"channel\": \"news\"}");
        close(fd);
        test_assert_ok(resp);
        e = test_must_find(resp, "news");
        subs = json_object_get(e, "subscriptions");
        ck_assert_uint_eq(json_array_size(subs), 1);
        ck_assert_int_eq(test_jint(json_array_get(subs, 0), "pid"), 0);
        json_decref(resp);

        ck_assert_int_eq(shmb_send(pub, "a", 1, WAIT_MS), 0);
        ck_assert_int_eq(shmb_recv(sub, (char[8]) {}, 8, WAIT_MS), 1);

        /* The crash, and a start on the same state directory: the posix channel is taken over. */
        inner_daemon_signal(SIGKILL);
        test_start_ok();
        wait_holds(pub, sub, "news", 2);

        /* Three laps of the 8 slots, every one read at once by the only subscriber. */
        for (int i = 0; i < 24; i++) {
                char buf[8];

                r = shmb_send(pub, "m", 1, 2000);
                ck_assert_msg(r == 0, "publish %d after the restart: %s (a subscriber that is gone holds it back)",
                              i, shmb_strerror(r));
                ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, WAIT_MS), 1);
        }
        /*
         * "subscribers": 2, and one subscriber: the second place is free, as the
         * restarted broker handed the old entry back, by the pidfd's pidfs inode
         * (Linux 6.9+; before, a pid it cannot see proves nothing, and the old
         * entry keeps its place until the broker stops: shmbrokerd(8)).
         */
        if (pidfs_inodes()) {
                r = shmb_open_channel(NULL, "news", SHMB_RO, &other);
                ck_assert_msg(r == 0, "a second subscriber of two places: %s", shmb_strerror(r));
                shmb_close(other);
        } else
                fprintf(stderr, "restart: no pidfs here: not checking that the old subscriber's place came back\n");

        shmb_close(sub);
        shmb_close(pub);
        inner_daemon_stop_ok();
}
END_TEST

/*
 * Promised (SPEC "Ring repair does not trust pids: a live claimer (in any
 * PID namespace, however slow) is never skipped"; "Crash restart keeps
 * channels ... attached clients keep working ... no message is lost";
 * shmbrokerd(8): a start in another PID namespace than the run that
 * crashed takes posix channels over "all the same"): a sender holding a
 * reservation over a broker crash, which the crashed run saw by its pid,
 * still publishes when the restarted broker runs in a PID namespace of its
 * own, where that pid names no process (or another one). The recorded pid
 * is the crashed run's view; the new broker cannot judge it.
 */
START_TEST(test_live_claimer_survives_a_restart_in_another_pid_namespace) {
        shmb_channel *tx, *rx;
        char buf[16] = "";
        void *slot = NULL;
        char *log;
        int r;

        /* The ring alone: a start in another PID namespace leaves the crashed run's System V objects. */
        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"ring\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                      "\"slot_size\": 64, \"slots\": 4}]");
        test_start_ok();
        tx = must_open("ring", SHMB_RW);
        rx = must_open("ring", SHMB_RW);
        ck_assert_int_eq(shmb_send_reserve(tx, 1, &slot, WAIT_MS), 0);
        memcpy(slot, "x", 1);
        /* The run that records our pid crashes; the next runs where our pid means nothing. */
        test_daemon_kill(&td, SIGKILL);
        setenv("TEST_DAEMON_WRAPPER", pid_ns_wrapper, 1);
        test_start_ok();
        wait_holds(tx, rx, "ring", 2);
        /* The receiver looks once at the claimed slot: a live claim keeps it waiting. */
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        r = shmb_send_commit(tx, slot, 1);
        log = test_daemon_log(&td);
        ck_assert_msg(r == 0, "commit of a reservation held over the restart: %s; the broker's log:\n%s",
                      shmb_strerror(r), log);
        free(log);
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, WAIT_MS), 1);
        ck_assert_int_eq(buf[0], 'x');

        shmb_close(rx);
        shmb_close(tx);
        inner_daemon_stop_ok();
}
END_TEST

/*
 * A reservation held over `crashes` broker crashes, each followed by a
 * start and the handles' rejoin, where the broker cannot hand a token back
 * (pid 0, pidfd_open() denied: as before pidfs). Each rejoin gets another
 * token; the reservation was made under the first.
 */
/* How many entries of the ring's holder table are live (tokens handed out and not yet ended). */
static unsigned live_holders(shmb_channel *ch) {
        const RingHeader *h = shmb_channel_addr(ch);
        unsigned n = 0;

        for (uint32_t i = 0; i < RING_HOLDERS; i++)
                n += (uint32_t) __atomic_load_n(&ring_holder_at(h, i)->word, __ATOMIC_ACQUIRE) == RING_HOLDER_LIVE;
        return n;
}

static void reservation_over_new_tokens(int crashes) {
        shmb_channel *tx, *rx;
        char buf[16] = "";
        void *slot = NULL;
        int r;

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"ring\", \"kind\": \"posix\", \"layout\": \"ring\", "
                                      "\"slot_size\": 64, \"slots\": 4}]");
        td.deny_pidfd_open = true;
        setenv("TEST_DAEMON_WRAPPER", pid_ns_wrapper, 1);
        test_start_ok();
        tx = must_open("ring", SHMB_RW);
        rx = must_open("ring", SHMB_RW);
        ck_assert_int_eq(shmb_send_reserve(tx, 1, &slot, WAIT_MS), 0);
        memcpy(slot, "x", 1);
        for (int k = 0; k < crashes; k++) {
                inner_daemon_signal(SIGKILL);
                test_start_ok();
                wait_holds(tx, rx, "ring", 2);
                /* What the test is about: the broker handed new tokens out, the old entries still live. */
                ck_assert_uint_eq(live_holders(tx), 2u * (unsigned) (k + 2));
        }
        ck_assert_int_eq(shmb_recv(rx, buf, sizeof buf, 0), -EAGAIN);
        r = shmb_send_commit(tx, slot, 1);
        ck_assert_msg(r == 0, "commit of a reservation held over %d restart(s): %s", crashes, shmb_strerror(r));
        r = (int) shmb_recv(rx, buf, sizeof buf, WAIT_MS);
        ck_assert_msg(r == 1, "the receiver after the commit: %s", r < 0 ? shmb_strerror(r) : "a message");

        shmb_close(rx);
        shmb_close(tx);
        inner_daemon_stop_ok();
}

/*
 * Promised (SPEC "Holds survive a broker restart: ... the application sees
 * nothing unless its channel was removed"; README: a sender that lives,
 * "however slow and in whatever PID namespace, is never skipped"): a
 * sender that the broker cannot see by pid holds a reservation over a
 * broker crash, where pidfds have no inode numbers of their own (before
 * pidfs: here pidfd_open() is denied the daemon, which is all it looks
 * at). The restarted broker cannot hand its token back and gives another
 * (shmbrokerd(8)); the old entry stays live for good. The commit must
 * still publish, and the receiver get the message, not wait for ever on
 * a slot claimed under the old token.
 */
START_TEST(test_reservation_survives_a_new_token_at_a_rejoin) {
        reservation_over_new_tokens(1);
}
END_TEST

/* shmbrokerd(8): "a reservation or a peek it made under an old token (of the last eight restarts)". */
START_TEST(test_reservation_survives_two_new_tokens) {
        reservation_over_new_tokens(2);
}
END_TEST

/*
 * libshmbroker(3): any handle of the connection's hold may unlock its
 * lock. A lock taken before a broker crash that could not hand the token
 * back (as above) names the old token; a handle of the same connection
 * opened after the rejoin, which knows only the new one, must still give
 * it back, and take it again as the hold's own, not wait on it. Another
 * hold waits on it meanwhile. That stays so when the old token's entry is
 * marked dead (written here by the table file's owner, root, as no client
 * can): neither handle takes its own hold's lock over as a dead holder's.
 */
START_TEST(test_lock_under_an_old_token_is_still_the_holds) {
        shmb_client *c = NULL;
        shmb_channel *a, *b, *ch2 = NULL;
        PosixSemFile *f;
        RingHolder *table, *e;
        uint32_t old;
        unsigned live = 0;
        int fd;

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"lock\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]}]");
        td.deny_pidfd_open = true;
        setenv("TEST_DAEMON_WRAPPER", pid_ns_wrapper, 1);
        test_start_ok();
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "lock", SHMB_RW, &a), 0);
        ck_assert_int_eq(shmb_lock(a, 0, 0), 0);
        f = map_sem_file("lock", 0);
        old = __atomic_load_n(&f->lock, __ATOMIC_SEQ_CST);
        inner_daemon_signal(SIGKILL);
        test_start_ok();
        wait_holds(a, a, "lock", 1);
        fd = open(PSEM_DIR "/shmbroker-table.lock", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        table = mmap(NULL, PSEM_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(table, MAP_FAILED);
        close(fd);
        /* What the test is about: the broker handed a new token out, the old entry still live. */
        for (uint32_t i = 0; i < PSEM_HOLDERS; i++)
                live += (uint32_t) __atomic_load_n(&table[i].word, __ATOMIC_SEQ_CST) == RING_HOLDER_LIVE;
        ck_assert_uint_eq(live, 2);
        ck_assert_int_eq(shmb_open(c, "lock", SHMB_RW, &b), 0);
        ch2 = must_open("lock", SHMB_RW);
        ck_assert_uint_eq(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST), old);
        ck_assert_int_eq(shmb_lock(b, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), -EAGAIN);
        e = &table[ring_token_index(old)];
        __atomic_store_n(&e->word, (__atomic_load_n(&e->word, __ATOMIC_SEQ_CST) & ~(uint64_t) UINT32_MAX) |
                                           RING_HOLDER_DEAD, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(shmb_lock(a, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_lock(b, 0, 0), -EAGAIN);
        ck_assert_uint_eq(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST), old);
        ck_assert_int_eq(shmb_unlock(b, 0), 0);
        ck_assert_int_eq(shmb_lock(a, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(a, 0), 0);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch2, 0), 0);
        ck_assert_int_eq(munmap(table, PSEM_TABLE_SIZE), 0);
        ck_assert_int_eq(munmap(f, sizeof *f), 0);
        shmb_close(ch2);
        shmb_close(b);
        shmb_close(a);
        shmb_disconnect(c);
        inner_daemon_stop_ok();
}
END_TEST

/*
 * A child that opens `name` ("lock" for fork_lock_holder()) on a connection
 * of its own, locks semaphore 0, says so on `ready`, then does `then`.
 */
typedef enum { HOLDER_PAUSES, HOLDER_CLOSES_AND_PAUSES } HolderThen;

static pid_t fork_holder_of(const char *name, int ready_fd, HolderThen then) {
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, name, SHMB_RW, &c2) < 0 || shmb_lock(c2, 0, WAIT_MS) < 0)
                        _exit(2);
                if (then == HOLDER_CLOSES_AND_PAUSES && shmb_close(c2) < 0)
                        _exit(3);
                if (write(ready_fd, "x", 1) != 1)
                        _exit(4);
                for (;;)
                        pause();
        }
        return pid;
}

static pid_t fork_lock_holder(int ready_fd, HolderThen then) {
        return fork_holder_of("lock", ready_fd, then);
}

/* As wait_ready(), saying how the child ended if it did not get there. */
static void wait_ready_of(int ready[2], pid_t pid, const char *name) {
        int status = 0;
        char c;

        close(ready[1]);
        if (read(ready[0], &c, 1) != 1) {
                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                ck_abort_msg("%s: the child did not lock it (status %#x)", name, status);
        }
        close(ready[0]);
}

static void wait_ready(int ready[2]) {
        char c;

        close(ready[1]);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        close(ready[0]);
}

/* fork_holder_of() and wait_ready_of(): a child of ours holds `name`'s lock when this returns its pid. */
static pid_t start_lock_holder(const char *name, HolderThen then) {
        int ready[2];
        pid_t pid;

        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        pid = fork_holder_of(name, ready[1], then);
        wait_ready_of(ready, pid, name);
        return pid;
}

/*
 * README, POSIX channels: a writer of a semaphore file "can make a lock
 * wait, or let two hold it at once, and nothing more". The lock's words
 * were a glibc robust mutex, whose list links the holder's unlock follows:
 * words aimed at the holder's own memory made the unlock store there. Here
 * every word of the file past the broker's state word is aimed at a canary
 * of the holder (this process) while it holds the lock: its unlock must
 * leave the canary as it was, and say the lock is not its own any more.
 * The word names no live hold, so another hold's locker takes it over.
 */
START_TEST(test_lock_words_aimed_at_the_holder_write_nowhere) {
        static uint64_t canary[16];
        shmb_channel *ch = must_open("lock", SHMB_RW);
        shmb_channel *ch2 = NULL;
        PosixSemFile *f = map_sem_file("lock", 0);
        uint64_t aim = (uint64_t) (uintptr_t) &canary[8];

        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        for (size_t off = offsetof(PosixSemFile, reserved); off + 8 <= sizeof *f; off += 8)
                __atomic_store_n((uint64_t *) (void *) ((char *) f + off), aim, __ATOMIC_RELAXED);
        /* glibc's unlock wrote within 16 bytes either side of the links' target. */
        ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
        for (unsigned i = 0; i < ELEMENTSOF(canary); i++)
                ck_assert_msg(canary[i] == 0, "the holder's unlock stored %#llx into its own memory (word %u)",
                              (unsigned long long) canary[i], i);
        /* The file's words are only compared: another hold takes a lock that names none live. */
        ch2 = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch2, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
        ck_assert_int_eq(shmb_unlock(ch2, 0), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        for (unsigned i = 0; i < ELEMENTSOF(canary); i++)
                ck_assert_uint_eq(canary[i], 0);
        ck_assert_int_eq(munmap(f, sizeof *f), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* Two connections of one process are two holds: their locks exclude each other, as two processes' do. */
START_TEST(test_two_holds_of_one_process_exclude_each_other) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        shmb_channel *ch2 = NULL;

        ch2 = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_lock(ch2, 0, 50), -ETIMEDOUT);
        /* Not its to give back. */
        ck_assert_int_eq(shmb_unlock(ch2, 0), -EPERM);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(ch2, 0), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* libshmbroker(3): a child of fork(2) cannot take or give back its parent's posix lock (it would be the parent's). */
START_TEST(test_forked_child_cannot_use_the_parents_lock) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        pid_t pid;
        int status;

        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *own = NULL;
                pid_t grandchild;
                int st = -1;

                if (shmb_unlock(ch, 0) != -ECHILD || shmb_lock(ch, 0, 0) != -ECHILD)
                        _exit(2);
                /* A connection of the child's own is its own (the parent holds the lock), the inherited one still not. */
                if (shmb_open_channel(NULL, "lock", SHMB_RW, &own) < 0 || shmb_lock(own, 0, 0) != -EAGAIN ||
                    shmb_lock(ch, 0, 0) != -ECHILD)
                        _exit(3);
                /* A grandchild: neither the grandparent's handle nor the child's is its own. */
                grandchild = fork();
                if (grandchild == 0)
                        _exit(shmb_lock(ch, 0, 0) != -ECHILD || shmb_lock(own, 0, 0) != -ECHILD ? 4 : 0);
                if (grandchild < 0 || waitpid(grandchild, &st, 0) != grandchild || !WIFEXITED(st))
                        _exit(5);
                _exit(WEXITSTATUS(st));
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
        /* Still the parent's. */
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* The lock is the hold's: a holder that closes its handle gives it up, though its process lives on. */
START_TEST(test_closed_handle_gives_its_lock_up) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        pid_t pid = start_lock_holder("lock", HOLDER_CLOSES_AND_PAUSES);

        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * A holder killed while the broker was away (a crash): the next broker
 * takes the lock tokens' table over with the files, finds the holder
 * gone, and the lock passes on.
 */
START_TEST(test_lock_of_a_holder_killed_while_the_broker_is_away_passes_on) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        pid_t pid = start_lock_holder("lock", HOLDER_PAUSES);

        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        /* Nobody can tell it died yet. */
        ck_assert_int_eq(shmb_lock(ch, 0, 50), -ETIMEDOUT);
        test_start_ok();
        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * A hold closed while the broker is away cannot be told to it: the next
 * broker keeps the token it took over live while its process lives, and
 * the lock with it (libshmbroker(3), POSIX channels); it passes on when
 * that process exits.
 */
START_TEST(test_lock_of_a_holder_that_closed_while_the_broker_was_away_passes_on) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        int ready[2], go[2], done[2];
        char c;
        pid_t pid;

        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(done, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, "lock", SHMB_RW, &c2) < 0 || shmb_lock(c2, 0, WAIT_MS) < 0)
                        _exit(2);
                if (write(ready[1], "x", 1) != 1 || read(go[0], &c, 1) != 1)
                        _exit(3);
                /* The broker is away: nobody can be told. */
                (void) shmb_close(c2);
                if (write(done[1], "x", 1) != 1)
                        _exit(4);
                for (;;)
                        pause();
        }
        close(ready[1]);
        close(go[0]);
        close(done[1]);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        test_daemon_kill(&td, SIGKILL);
        ck_assert_int_eq(write(go[1], "g", 1), 1);
        ck_assert_int_eq(read(done[0], &c, 1), 1);
        test_start_ok();
        /* The broker is back, and the holder lives: still held. */
        ck_assert_int_eq(shmb_lock(ch, 0, 300), -ETIMEDOUT);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        /* The next broker's sweep finds it gone. */
        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        close(ready[0]);
        close(go[1]);
        close(done[0]);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

static void *lock_in_thread(void *userdata) {
        return (void *) (intptr_t) shmb_lock(userdata, 0, 0);
}

/*
 * libshmbroker(3): "a handle's hold is its connection's on that channel,
 * shared by its threads and by the connection's other handles of the
 * channel, so any of them may unlock".
 */
START_TEST(test_threads_and_handles_of_one_hold_share_its_lock) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        shmb_channel *same = NULL;
        pthread_t t;
        void *r;

        ck_assert_int_eq(pthread_create(&t, NULL, lock_in_thread, ch), 0);
        ck_assert_int_eq(pthread_join(t, &r), 0);
        ck_assert_int_eq((int) (intptr_t) r, 0);
        /* Taken by another thread of the hold: this one gives it back. */
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_open(shmb_channel_get_client(ch), "lock", SHMB_RW, &same), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        /* The same hold: its other handle waits as the holder does, and may give it back. */
        ck_assert_int_eq(shmb_lock(same, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(same, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
        ck_assert_int_eq(shmb_lock(same, 0, 0), 0);
        ck_assert_int_eq(shmb_close(same), 0);
        /* One handle closed: the hold, and its lock, live on with the other. */
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/* A live holder keeps its lock over a broker crash: the next broker hands its token back. */
START_TEST(test_live_lock_holder_keeps_the_lock_over_a_broker_crash) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        shmb_channel *ch2 = NULL;
        shmb_status_list *l = NULL;

        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        ch2 = must_open("lock", SHMB_RW);
        /* Our own connection's rejoin too, before the sweep of the killed run's holders could end our token. */
        ck_assert_int_eq(shmb_status(shmb_channel_get_client(ch), "lock", &l), 0);
        shmb_status_free(l);
        ck_assert_int_eq(shmb_lock(ch2, 0, 300), -ETIMEDOUT);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch2, 0), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST


/*
 * README, Security: a raw channel's lock tokens come from a holder table
 * in a file of the daemon's own, which no client can write (the next
 * tests). Should its user write it all the same (here root), the daemon
 * still hands tokens out by what it gave, not by what the file says. Here
 * the writer marks every other entry LIVE (pid 0: a process no sweep can
 * judge) and our own entry FREE under its generation; another user's rw
 * open must still get a token, and not ours.
 */
START_TEST(test_holder_table_writer_cannot_refuse_opens_or_duplicate_tokens) {
        shmb_channel *ch = must_open("lock", SHMB_RW), *ch2 = NULL;
        shmb_client *other = NULL;
        size_t size = PSEM_TABLE_SIZE;
        RingHolder *table = scrib_map_file("shmbroker-table.lock", size);
        uint32_t mine, gen;
        int r;

        mine = test_only_live_holder(table, PSEM_HOLDERS, "the lock holder table after our open");
        gen = (uint32_t) (__atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE) >> 32);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        test_forge_live_holders(table, PSEM_HOLDERS, mine);
        ck_assert_int_eq(shmb_connect(NULL, &other), 0);
        r = shmb_open(other, "lock", SHMB_RW, &ch2);
        ck_assert_msg(r == 0, "an rw open after the writer filled the table: %s", shmb_strerror(r));
        ck_assert_int_eq(shmb_close(ch2), 0);
        /* Our own entry made FREE under its generation: a new open must not be given our token. */
        __atomic_store_n(&table[mine].word, (uint64_t) gen << 32 | RING_HOLDER_FREE, __ATOMIC_RELEASE);
        r = shmb_open(other, "lock", SHMB_RW, &ch2);
        ck_assert_msg(r == 0, "an rw open after the writer freed our entry: %s", shmb_strerror(r));
        /*
         * The writer puts our entry back (while it said FREE, anyone could take
         * our lock: that much a writer may do). ch2 was not given our token: the
         * lock, still ours, is neither its nor its to give back; nor does its
         * close end our token.
         */
        __atomic_store_n(&table[mine].word, (uint64_t) gen << 32 | RING_HOLDER_LIVE, __ATOMIC_RELEASE);
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(ch2, 0), -EPERM);
        ck_assert_int_eq(shmb_close(ch2), 0);
        ck_assert_uint_eq(__atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE), (uint64_t) gen << 32 | RING_HOLDER_LIVE);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        shmb_disconnect(other);
        ck_assert_int_eq(munmap(table, size), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * README, Security: a writer of a posix channel's files cannot deny others
 * the channel. Layout version 2 kept a raw channel's lock holder table in
 * semaphore 0's file, where a writer could mark every entry LIVE with pid
 * 0 before a broker crash: the next broker, which takes a killed run's
 * table as it finds it, then refused every rw open EUSERS. The table is
 * the daemon's own file now, so the writer writes what it can (the
 * segment, as holder entries, and a forged lock word; semaphore 0's file
 * has nothing behind its PosixSemFile) and the broker crashes: the next
 * one takes the table over as it left it, and rw opens go on.
 */
START_TEST(test_holder_table_filled_before_a_broker_crash_refuses_no_opens) {
        shmb_channel *ch = must_open("lock", SHMB_RW), *ch2 = NULL;
        shmb_client *other = NULL;
        struct stat table_st, st;
        PosixSemFile *f;
        RingHolder *seg;
        int fd, r;

        ck_assert_int_eq(stat(PSEM_DIR "/shmbroker-table.lock", &table_st), 0);
        fd = open(PSEM_DIR "/" PSEM_FILE_PREFIX "shmbroker.lock.0", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &st), 0);
        ck_assert_int_eq(st.st_size, (off_t) sizeof(PosixSemFile));
        f = mmap(NULL, sizeof *f, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(f, MAP_FAILED);
        close(fd);
        fd = open(PSEM_DIR "/shmbroker.lock", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        seg = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(seg, MAP_FAILED);
        close(fd);
        for (size_t i = 0; i < 4096 / sizeof *seg; i++) {
                seg[i].pid = 0;
                __atomic_store_n(&seg[i].word, (uint64_t) 9 << 32 | RING_HOLDER_LIVE, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&f->lock, ring_token(PSEM_HOLDERS - 1, 9), __ATOMIC_RELEASE);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        /* Taken over, not made anew: the same table file. */
        ck_assert_int_eq(stat(PSEM_DIR "/shmbroker-table.lock", &st), 0);
        ck_assert_uint_eq(st.st_ino, table_st.st_ino);
        ck_assert_int_eq(shmb_connect(NULL, &other), 0);
        r = shmb_open(other, "lock", SHMB_RW, &ch2);
        ck_assert_msg(r == 0, "an rw open after the restart: %s", shmb_strerror(r));
        /* The forged word names no live token: the lock is free to take. */
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch2, 0), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);
        shmb_disconnect(other);
        ck_assert_int_eq(munmap(seg, 4096), 0);
        ck_assert_int_eq(munmap(f, sizeof *f), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * README, Security: a posix ring's holder table lives in its segment file,
 * which every rw opener (here root) can write. The writer marks every
 * entry but the one genuine holder's LIVE for openers no broker can judge
 * (pid 0; pid 1 of no recorded namespace, no ids), then the broker is
 * SIGKILLed. The next broker must not take those entries for holders of
 * the killed run (a broker that believed the table did, and refused every rw open
 * EUSERS): an rw open on a new connection gets a token, the forged entries
 * are no longer LIVE, and the genuine holder, open across the crash, keeps
 * its token (its entry LIVE under the same generation) and its traffic.
 */
START_TEST(test_posix_ring_holder_table_forged_before_a_crash_refuses_no_opens) {
        shmb_channel *ch = must_open("ring", SHMB_RW), *fresh = NULL;
        RingHeader *h = shmb_channel_addr(ch);
        RingHolder *table = ring_holder_at(h, 0);
        uint64_t word;
        uint32_t mine;
        char buf[16];
        int r;

        mine = test_only_live_holder(table, RING_HOLDERS, "the posix ring's holder table before the forgery");
        ck_assert_int_eq(table[mine].pid, getpid());
        word = __atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE);
        test_forge_live_holders(table, RING_HOLDERS, mine);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        test_rejoin_through_status(ch, "ring");
        ck_assert_uint_eq(__atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE), word);
        r = shmb_open_channel(NULL, "ring", SHMB_RW, &fresh);
        ck_assert_msg(r == 0, "an rw open of the posix ring on a new connection after the restart: %s (%s)",
                      shmb_strerror(r), shmb_errno_name(r) ?: "?");
        /* Both tokens work, each way. */
        ck_assert_int_eq(shmb_send(fresh, "fresh", 5, WAIT_MS), 0);
        ck_assert_int_eq(shmb_recv(ch, buf, sizeof buf, WAIT_MS), 5);
        ck_assert_int_eq(memcmp(buf, "fresh", 5), 0);
        ck_assert_int_eq(shmb_send(ch, "mine", 4, WAIT_MS), 0);
        ck_assert_int_eq(shmb_recv(fresh, buf, sizeof buf, WAIT_MS), 4);
        ck_assert_int_eq(memcmp(buf, "mine", 4), 0);
        ck_assert_int_eq(shmb_close(fresh), 0);
        /* The broker wrote its own states back: what is LIVE is the genuine holder, under its generation. */
        ck_assert_uint_eq(test_only_live_holder(table, RING_HOLDERS, "the posix ring's holder table after the restart"),
                          mine);
        ck_assert_uint_eq(__atomic_load_n(&table[mine].word, __ATOMIC_ACQUIRE), word);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * The same for a posix broadcast channel's two holder tables, in its
 * segment file, which every publisher (here root) can write: after the
 * forgery and a crash, an rw and an ro open on new connections get tokens,
 * the forged entries are no longer LIVE, and the genuine publisher and
 * subscriber keep their tokens and their traffic.
 */
START_TEST(test_posix_broadcast_holder_tables_forged_before_a_crash_refuse_no_opens) {
        shmb_channel *pub = must_open("news", SHMB_RW), *sub = must_open("news", SHMB_RO);
        shmb_channel *fresh_pub = NULL, *fresh_sub = NULL;
        BcastHeader *h = shmb_channel_addr(pub);
        RingHolder *pubs = bcast_publisher_at(h, 0), *subs = bcast_subscriber_at(h, 0);
        uint64_t pub_word, sub_word;
        uint32_t my_pub, my_sub;
        char buf[64];
        int r_rw, r_ro;

        ck_assert_uint_eq(h->subscribers, 2);
        my_pub = test_only_live_holder(pubs, BCAST_PUBLISHERS, "the publisher table before the forgery");
        my_sub = test_only_live_holder(subs, 2, "the subscriber table before the forgery");
        ck_assert_int_eq(pubs[my_pub].pid, getpid());
        ck_assert_int_eq(subs[my_sub].pid, getpid());
        pub_word = __atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE);
        sub_word = __atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE);
        test_forge_live_holders(pubs, BCAST_PUBLISHERS, my_pub);
        test_forge_live_holders(subs, 2, my_sub);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        test_rejoin_through_status(pub, "news");
        test_rejoin_through_status(sub, "news");
        ck_assert_uint_eq(__atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE), pub_word);
        ck_assert_uint_eq(__atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE), sub_word);
        /* Both opens first, so that one run says what each of them got. */
        r_rw = shmb_open_channel(NULL, "news", SHMB_RW, &fresh_pub);
        r_ro = shmb_open_channel(NULL, "news", SHMB_RO, &fresh_sub);
        ck_assert_msg(r_rw == 0 && r_ro == 0,
                      "opens of the posix news on new connections after the restart: rw (publisher) %s (%s), "
                      "ro (subscriber) %s (%s)",
                      r_rw == 0 ? "succeeded" : shmb_strerror(r_rw), shmb_errno_name(r_rw) ?: "0",
                      r_ro == 0 ? "succeeded" : shmb_strerror(r_ro), shmb_errno_name(r_ro) ?: "0");
        /* Every token works: each publisher reaches both subscribers. */
        ck_assert_int_eq(shmb_send(fresh_pub, "one", 3, WAIT_MS), 0);
        ck_assert_int_eq(shmb_send(pub, "two", 3, WAIT_MS), 0);
        for (int i = 0; i < 2; i++) {
                const char *want = i == 0 ? "one" : "two";

                ck_assert_int_eq(shmb_recv(sub, buf, sizeof buf, WAIT_MS), 3);
                ck_assert_int_eq(memcmp(buf, want, 3), 0);
                ck_assert_int_eq(shmb_recv(fresh_sub, buf, sizeof buf, WAIT_MS), 3);
                ck_assert_int_eq(memcmp(buf, want, 3), 0);
        }
        ck_assert_int_eq(shmb_close(fresh_sub), 0);
        ck_assert_int_eq(shmb_close(fresh_pub), 0);
        /* The broker wrote its own states back: what is LIVE is the genuine holders, under their generations. */
        ck_assert_uint_eq(test_only_live_holder(pubs, BCAST_PUBLISHERS, "the publisher table after the restart"), my_pub);
        ck_assert_uint_eq(test_only_live_holder(subs, 2, "the subscriber table after the restart"), my_sub);
        ck_assert_uint_eq(__atomic_load_n(&pubs[my_pub].word, __ATOMIC_ACQUIRE), pub_word);
        ck_assert_uint_eq(__atomic_load_n(&subs[my_sub].word, __ATOMIC_ACQUIRE), sub_word);
        ck_assert_int_eq(shmb_close(sub), 0);
        ck_assert_int_eq(shmb_close(pub), 0);
}
END_TEST

/*
 * README: an ro user cannot affect a posix channel's locks. Its handles
 * lock nothing (EACCES), and its holds take no lock token: more ro holds
 * than the table has entries leave an rw open its token and the lock.
 */
START_TEST(test_read_only_holds_take_no_lock_token) {
        enum { N = PSEM_HOLDERS + 4 };
        shmb_client *cs[N] = { NULL };
        shmb_channel *ro[N] = { NULL }, *ch;

        for (int i = 0; i < N; i++) {
                ck_assert_int_eq(shmb_connect(NULL, &cs[i]), 0);
                ck_assert_int_eq(shmb_open(cs[i], "lock", SHMB_RO, &ro[i]), 0);
        }
        ck_assert_int_eq(shmb_lock(ro[0], 0, 0), -EACCES);
        ck_assert_int_eq(shmb_unlock(ro[0], 0), -EACCES);
        ch = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_lock(ro[1], 0, 0), -EACCES);
        ck_assert_int_eq(shmb_unlock(ro[1], 0), -EACCES);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
        for (int i = 0; i < N; i++) {
                ck_assert_int_eq(shmb_close(ro[i]), 0);
                shmb_disconnect(cs[i]);
        }
}
END_TEST

/*
 * libshmbroker(3): a lock holder in another PID namespace is told dead
 * from live as any other: alive, it keeps the lock (over a broker crash
 * too); killed, the lock passes on.
 */
START_TEST(test_lock_holder_in_another_pid_namespace) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        int ready[2];
        pid_t outer;

        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        outer = fork();
        ck_assert_int_ge(outer, 0);
        if (outer == 0) {
                pid_t inner;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (unshare(CLONE_NEWPID) < 0)
                        _exit(5);
                /* Its init: pid 1 there; the holder pauses until the test kills it. */
                inner = fork_lock_holder(ready[1], HOLDER_PAUSES);
                (void) waitpid(inner, NULL, 0);
                _exit(0);
        }
        wait_ready(ready);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_lock(ch, 0, 100), -ETIMEDOUT);
        test_daemon_kill(&td, SIGKILL);
        test_start_ok();
        /* The next broker's sweep has run (it answered): the live holder kept its token. */
        test_rejoin_through_status(ch, "lock");
        ck_assert_int_eq(shmb_lock(ch, 0, 100), -ETIMEDOUT);
        /* The namespace's init dies, and its holder with it. */
        ck_assert_int_eq(kill(outer, SIGKILL), 0);
        ck_assert_int_eq(waitpid(outer, NULL, 0), outer);
        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST


/* Shared futex calls probe_unlock() trapped (SIGSYS from its filter). */
static volatile sig_atomic_t lock_futex_calls;

static void count_lock_futex_call(int sig) {
        (void) sig;
        lock_futex_calls++;
}

/* What probe_unlock() does on ch's semaphore 0, and the futex calls it made (-errno: its filter failed). */
typedef struct UnlockProbe {
        shmb_channel *ch;
        bool lock_first;
        int lock_r, unlock_r, calls;
} UnlockProbe;

/*
 * In a thread of its own, under a seccomp filter that traps its futex
 * calls on shared words (the library's: glibc's own locks of a process
 * are FUTEX_PRIVATE_FLAG ones, and run): [lock and] unlock. A trapped
 * call is not made, so a sleeper it was for is not woken by it.
 */
static void *probe_unlock(void *userdata) {
        UnlockProbe *p = userdata;
        struct sock_filter code[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_futex, 0, 4),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
                BPF_STMT(BPF_ALU | BPF_AND | BPF_K, FUTEX_PRIVATE_FLAG),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = (unsigned short) ELEMENTSOF(code), .filter = code };

        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
                p->calls = -errno;
                return NULL;
        }
        lock_futex_calls = 0;
        p->lock_r = p->lock_first ? shmb_lock(p->ch, 0, 0) : 0;
        p->unlock_r = shmb_unlock(p->ch, 0);
        p->calls = lock_futex_calls;
        return NULL;
}

/* The futex calls of a [lock and] unlock of ch's semaphore 0, each of which must succeed. */
static int unlock_futex_calls(shmb_channel *ch, bool lock_first) {
        struct sigaction sa = { .sa_handler = count_lock_futex_call }, old;
        UnlockProbe p = { .ch = ch, .lock_first = lock_first };
        pthread_t t;

        ck_assert_int_eq(sigaction(SIGSYS, &sa, &old), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, probe_unlock, &p), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(sigaction(SIGSYS, &old, NULL), 0);
        ck_assert_msg(p.calls >= 0, "the futex filter: %s", strerror(-p.calls));
        ck_assert_int_eq(p.lock_r, 0);
        ck_assert_int_eq(p.unlock_r, 0);
        return p.calls;
}

/*
 * proto/posix.h: sleepers are known "so that an unlock without sleepers
 * makes no system call". A locker killed while it sleeps (or a process
 * that exits while one of its threads waits for the lock) never says it
 * no longer sleeps: an unlock after it may wake nobody once, but the
 * ones after it must make no futex call. Counted in and out of
 * lock_waiters (layout version 3), such a sleeper stayed counted for the
 * channel's life.
 */
START_TEST(test_locker_killed_asleep_costs_unlocks_no_system_call) {
        shmb_channel *ch = must_open("lock", SHMB_RW), *ch2 = must_open("lock", SHMB_RW);
        int64_t deadline = test_now_ms() + WAIT_MS;
        int ready[2], calls;
        char c;
        pid_t pid;

        /* No sleeper: no call. */
        ck_assert_int_eq(unlock_futex_calls(ch, true), 0);
        /* A locker that gave up leaves its mark: one call for nobody, then none (and the probe sees calls). */
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_lock(ch2, 0, 100), -ETIMEDOUT);
        calls = unlock_futex_calls(ch, false);
        ck_assert_msg(calls == 1, "the unlock after a locker gave up made %d futex calls, not 1", calls);
        ck_assert_int_eq(unlock_futex_calls(ch, true), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);

        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_channel *c2 = NULL;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (shmb_open_channel(NULL, "lock", SHMB_RW, &c2) < 0 || write(ready[1], "o", 1) != 1)
                        _exit(2);
                _exit(shmb_lock(c2, 0, -1) == 0 ? 3 : 4);
        }
        ck_assert_int_eq(close(ready[1]), 0);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        ck_assert_int_eq(close(ready[0]), 0);
        /* Opened, and now asleep on the lock (it looks at the channel every 50 ms and sleeps again). */
        for (int asleep = 0; asleep < 5; usleep(1000)) {
                ck_assert_msg(test_now_ms() < deadline, "the locker did not sleep within %d ms", WAIT_MS);
                asleep = test_task_state(pid, pid) == 'S' ? asleep + 1 : 0;
        }
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        calls = unlock_futex_calls(ch, true);
        ck_assert_msg(calls == 0, "after a locker was killed asleep, an unlock without sleepers still made %d "
                      "futex call(s): one for nobody at each unlock, for the channel's life", calls);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * A locker of another language, as shmbroker-protocol(7) lets one be: it
 * marks itself asleep in the lock word (`word`, a live holder's token,
 * becomes word | PSEM_LOCK_SLEEPERS) and sleeps on the word while it
 * holds that, for WAIT_MS at most. result: 0 when woken, -ETIMEDOUT when
 * nobody woke it.
 */
typedef struct ForeignLocker {
        PosixSemFile *f;
        uint32_t word;
        int result;
        pid_t tid;
} ForeignLocker;

static void *foreign_locker(void *userdata) {
        ForeignLocker *s = userdata;
        struct timespec ts = { .tv_sec = WAIT_MS / 1000 };

        uint32_t w = s->word;

        if (!__atomic_compare_exchange_n(&s->f->lock, &w, s->word | PSEM_LOCK_SLEEPERS, false, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST)) {
                s->result = -EBUSY;     /* the word changed before it could mark itself */
                return NULL;
        }
        __atomic_store_n(&s->tid, (pid_t) syscall(SYS_gettid), __ATOMIC_RELEASE);
        s->result = syscall(SYS_futex, &s->f->lock, FUTEX_WAIT, s->word | PSEM_LOCK_SLEEPERS, &ts, NULL, 0) < 0 ?
                    -errno : 0;
        return NULL;
}

/* Start s's thread on f, whose lock is held (word: its holder's token), and return once it sleeps. */
static void start_foreign_locker(ForeignLocker *s, pthread_t *t, PosixSemFile *f) {
        int64_t deadline = test_now_ms() + WAIT_MS;

        *s = (ForeignLocker) { .f = f, .word = __atomic_load_n(&f->lock, __ATOMIC_SEQ_CST), .result = 1 };
        ck_assert_msg(s->word != 0 && !(s->word & PSEM_LOCK_SLEEPERS), "the lock is not held, or has sleepers: %#x",
                      s->word);
        ck_assert_int_eq(pthread_create(t, NULL, foreign_locker, s), 0);
        for (int asleep = 0; asleep < 5; usleep(1000)) {
                pid_t tid = __atomic_load_n(&s->tid, __ATOMIC_ACQUIRE);

                ck_assert_msg(__atomic_load_n(&s->result, __ATOMIC_RELAXED) == 1, "the sleeper returned at once: %s",
                              strerror(-s->result));
                ck_assert_msg(test_now_ms() < deadline, "the sleeper did not sleep within %d ms", WAIT_MS);
                asleep = tid && test_task_state(getpid(), tid) == 'S' ? asleep + 1 : 0;
        }
}

/* s's thread was woken (not by its timeout). */
static void assert_foreign_locker_woken(ForeignLocker *s, pthread_t t, const char *by) {
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_msg(s->result == 0, "a sleeper marked in the lock word was not woken by %s: %s", by,
                      strerror(-s->result));
}

/*
 * shmbroker-protocol(7): a locker marks itself asleep in the lock word,
 * "so that an unlock without sleepers makes no system call"
 * (proto/posix.h). The library marks its own sleepers, and its unlock
 * wakes any the word names, a locker of another program's too. Without
 * either, a sleeper gets the lock only at the end of its slice, or never
 * if it sleeps without one.
 */
START_TEST(test_lock_sleepers_are_marked_and_woken_by_unlock) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        shmb_channel *ch2 = NULL;
        PosixSemFile *f = map_sem_file("lock", 0);
        ForeignLocker s;
        Blocked b;
        pthread_t t;
        int64_t deadline;
        uint32_t w;

        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        start_foreign_locker(&s, &t, f);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        assert_foreign_locker_woken(&s, t, "shmb_unlock()");
        ck_assert_uint_eq(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST), 0);

        /* The library's own locker, of another hold, marks itself while it waits. */
        ch2 = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        b = (Blocked) { .kind = BLOCK_LOCK, .ch = ch2, .result = 1 };
        ck_assert_int_eq(pthread_create(&t, NULL, blocked_call, &b), 0);
        await_blocked(&b);
        for (deadline = test_now_ms() + WAIT_MS; !(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST) & PSEM_LOCK_SLEEPERS);
             usleep(1000))
                ck_assert_msg(test_now_ms() < deadline, "a locker asleep for %d ms is not marked in the lock word (%#x)",
                              WAIT_MS, f->lock);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(b.result, 0);
        /* It took the lock from a cleared word: unmarked, so its unlock makes no system call. */
        w = __atomic_load_n(&f->lock, __ATOMIC_SEQ_CST);
        ck_assert_msg(w != 0 && !(w & PSEM_LOCK_SLEEPERS), "the woken locker's lock word: %#x", w);
        ck_assert_int_eq(unlock_futex_calls(ch2, false), 0);
        ck_assert_uint_eq(f->reserved3, 0);
        ck_assert_int_eq(munmap(f, sizeof *f), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * README, POSIX channels: "when the holder's process dies ... the broker
 * marks the token dead and wakes the lockers, and the next one takes the
 * lock over" -- on a raw channel (its tokens in its table file), a ring
 * and a broadcast channel (their own tables) alike. A sleeper marked
 * in the lock word must be woken by the broker, and the lock, held by a
 * live hold of another process, must not be taken while it lives.
 */
START_TEST(test_lock_of_a_killed_holder_passes_on_in_every_layout) {
        static const char *const names[] = { "lock", "lring", "lnews" };
        /* The file of user semaphore 0: a ring's and a broadcast channel's own semaphores come first. */
        const unsigned files[] = { 0, RING_NSEMS, BCAST_NSEMS };

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"lock\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]},"
                                      " {\"name\": \"lring\", \"kind\": \"posix\", \"layout\": \"ring\", \"slot_size\": 64,"
                                      "  \"slots\": 4, \"semaphores\": [0]},"
                                      " {\"name\": \"lnews\", \"kind\": \"posix\", \"layout\": \"broadcast\", \"slot_size\": 64,"
                                      "  \"slots\": 4, \"subscribers\": 2, \"semaphores\": [0]}]");
        test_start_ok();
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                shmb_channel *ch = must_open(names[i], SHMB_RW);
                PosixSemFile *f = map_sem_file(names[i], files[i]);
                ForeignLocker s;
                pthread_t t;
                pid_t pid = start_lock_holder(names[i], HOLDER_PAUSES);

                ck_assert_msg(shmb_lock(ch, 0, 0) == -EAGAIN, "%s: a live holder's lock was taken", names[i]);
                ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
                ck_assert_msg(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST) != 0, "%s: file %u has no lock word set",
                              names[i], files[i]);
                start_foreign_locker(&s, &t, f);
                ck_assert_int_eq(kill(pid, SIGKILL), 0);
                ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
                assert_foreign_locker_woken(&s, t, "the broker, at its holder's death");
                ck_assert_msg(shmb_lock(ch, 0, WAIT_MS) == 0, "%s: the dead holder's lock did not pass on", names[i]);
                ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
                ck_assert_int_eq(shmb_unlock(ch, 0), 0);
                ck_assert_int_eq(munmap(f, sizeof *f), 0);
                ck_assert_int_eq(shmb_close(ch), 0);
        }
}
END_TEST

/*
 * README, POSIX channels: a raw posix channel with semaphores takes 256 rw
 * holds, each with a lock token of its own from the channel's lock holder
 * table (test-posix.c counts them at the protocol). Every one of them must
 * lock as a client: the hold with the table's last entry too, which the
 * library must judge in the table it mapped, not take for a token past
 * its end. A close frees a token for the next opener, whose lock the last
 * one then waits on.
 */
START_TEST(test_every_lock_token_of_a_raw_posix_channel_locks) {
        enum { N = PSEM_HOLDERS };
        static shmb_client *c[N + 1];
        static shmb_channel *h[N + 1];
        int r;

        for (int i = 0; i <= N; i++)
                ck_assert_int_eq(shmb_connect(NULL, &c[i]), 0);
        for (int i = 0; i < N; i++) {
                r = shmb_open(c[i], "lock", SHMB_RW, &h[i]);
                ck_assert_msg(r == 0, "rw hold %d: %s", i, shmb_strerror(r));
        }
        ck_assert_int_eq(shmb_open(c[N], "lock", SHMB_RW, &h[N]), -EUSERS);
        for (int i = 0; i < N; i++) {
                r = shmb_lock(h[i], 0, 0);
                ck_assert_msg(r == 0, "the lock of rw hold %d of %d: %s", i, N, shmb_strerror(r));
                ck_assert_int_eq(shmb_lock(h[(i + 1) % N], 0, 0), -EAGAIN);
                ck_assert_int_eq(shmb_unlock(h[i], 0), 0);
        }
        ck_assert_int_eq(shmb_close(h[0]), 0);
        ck_assert_int_eq(shmb_open(c[N], "lock", SHMB_RW, &h[N]), 0);
        ck_assert_int_eq(shmb_lock(h[N], 0, 0), 0);
        ck_assert_int_eq(shmb_lock(h[N - 1], 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_unlock(h[N], 0), 0);
        for (int i = 1; i <= N; i++)
                ck_assert_int_eq(shmb_close(h[i]), 0);
        for (int i = 0; i <= N; i++)
                shmb_disconnect(c[i]);
}
END_TEST


/*
 * libshmbroker(3): a handle whose hold ended while its process lived on,
 * past the broker's watch, gets -ENOTCONN from shmb_lock(). A broker with
 * no pidfd of the client (a kernel before Linux 6.5 and pidfs) ends the
 * token with the connection: reached here as a client reaches it, by
 * shmb_disconnect() with the handle kept. The lock it held passes on.
 */
START_TEST(test_lock_after_a_disconnect_the_broker_cannot_watch_is_enotconn) {
        shmb_client *c = NULL;
        shmb_channel *ch = NULL, *other;
        int r;

        test_daemon_stop_ok(&td);
        test_daemon_write_config(&td, "[{\"name\": \"lock\", \"kind\": \"posix\", \"size\": 4096, \"semaphores\": [1]}]");
        td.deny_pidfd_open = td.deny_peer_pidfd = true;
        test_start_ok();
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "lock", SHMB_RW, &ch), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        other = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(other, 0, 0), -EAGAIN);
        shmb_disconnect(c);
        /* The broker ended the token with the connection: the lock passes on, and the handle locks nothing. */
        r = shmb_lock(other, 0, WAIT_MS);
        ck_assert_msg(r == 0, "the lock of a hold the broker ended stayed held: %s", shmb_strerror(r));
        r = shmb_lock(ch, 0, 0);
        ck_assert_msg(r == -ENOTCONN, "a handle whose hold ended locks: %d (%s)", r, shmb_strerror(r));
        ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
        ck_assert_int_eq(shmb_unlock(other, 0), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -ENOTCONN);
        ck_assert_int_eq(shmb_close(ch), 0);
        ck_assert_int_eq(shmb_close(other), 0);
}
END_TEST

/*
 * A child that opens "lock" rw on a connection of its own, locks it, then
 * disconnects keeping the handle (its process lives on: the broker keeps
 * its token live and watches the process), says so on ready and pauses.
 */
static pid_t fork_disconnected_lock_holder(int ready[2]) {
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                shmb_client *c = NULL;
                shmb_channel *ch = NULL;

                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(ready[0]);
                if (shmb_connect(NULL, &c) < 0 || shmb_open(c, "lock", SHMB_RW, &ch) < 0 || shmb_lock(ch, 0, WAIT_MS) < 0)
                        _exit(2);
                shmb_disconnect(c);
                if (write(ready[1], "x", 1) != 1)
                        _exit(3);
                for (;;)
                        pause();
        }
        return pid;
}

/*
 * README, Ring liveness: a token kept past its connection costs the broker
 * a descriptor that watches the process, at most limits.connections_max
 * in all; "past that, a closing connection's tokens end with it"
 * (libshmbroker(3), shmb_lock(): "a handle whose token is dead (its hold
 * ended while its process lived on, past the broker's watch) gets
 * ENOTCONN"). A raw posix channel's lock token is such a token: the broker
 * tells a dead lock holder from a live one as it does for rings (README,
 * POSIX channels). With connections_max 1, a child that locked "lock" and
 * disconnected, living on, keeps its lock (its token watched: the one
 * watch there is) until it exits. This process locks "lock2" and
 * disconnects, living on too: no watch is left for it, so its token ends
 * with its connection: the lock passes on to another hold at once, and
 * the handle locks nothing.
 */
START_TEST(test_lock_of_a_disconnect_past_the_watch_cap_passes_on) {
        shmb_channel *held = NULL, *ch = NULL, *other, *other2;
        shmb_client *c = NULL;
        char *config = NULL;
        int ready[2], r;
        pid_t pid;
        char b;

        test_daemon_stop_ok(&td);
        ck_assert_int_ge(asprintf(&config, "{\"version\": 1, \"socket\": \"%s\", \"limits\": {\"connections_max\": 1},"
                                  " \"channels\": [{\"name\": \"lock\", \"kind\": \"posix\", \"size\": 4096,"
                                  " \"semaphores\": [1]}, {\"name\": \"lock2\", \"kind\": \"posix\", \"size\": 4096,"
                                  " \"semaphores\": [1]}]}\n", td.socket), 0);
        test_daemon_write_raw_config(&td, config);
        free(config);
        test_start_ok();
        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        pid = fork_disconnected_lock_holder(ready);
        close(ready[1]);
        ck_assert_msg(read(ready[0], &b, 1) == 1, "the child did not lock \"lock\" and disconnect");
        close(ready[0]);
        /* Within the cap: the child's token lives on with its process, and its lock with it. */
        held = must_open("lock", SHMB_RW);
        r = shmb_lock(held, 0, 300);
        ck_assert_msg(r == -ETIMEDOUT, "the lock of a watched process that disconnected: %d (%s), not held", r,
                      shmb_strerror(r));

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_open(c, "lock2", SHMB_RW, &ch), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        other = must_open("lock2", SHMB_RW);
        ck_assert_int_eq(shmb_lock(other, 0, 0), -EAGAIN);
        shmb_disconnect(c);
        /* Past the cap: the broker ended the token with the connection, and the lock passes on. */
        r = shmb_lock(other, 0, WAIT_MS);
        ck_assert_msg(r == 0, "the lock of a hold whose connection ended past the broker's watch cap stayed held: "
                      "%d (%s)", r, shmb_strerror(r));
        r = shmb_lock(ch, 0, 0);
        ck_assert_msg(r == -ENOTCONN, "a handle whose hold ended past the watch cap: %d (%s), not ENOTCONN", r,
                      shmb_strerror(r));
        ck_assert_int_eq(shmb_unlock(ch, 0), -EPERM);
        ck_assert_int_eq(shmb_unlock(other, 0), 0);

        /* The watched child exits: its lock passes on too. */
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        r = shmb_lock(held, 0, WAIT_MS);
        ck_assert_msg(r == 0, "the lock of a watched process that exited: %d (%s)", r, shmb_strerror(r));
        ck_assert_int_eq(shmb_unlock(held, 0), 0);
        other2 = must_open("lock2", SHMB_RW);
        ck_assert_int_eq(shmb_lock(other2, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(other2, 0), 0);
        ck_assert_int_eq(shmb_close(other2), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
        ck_assert_int_eq(shmb_close(other), 0);
        ck_assert_int_eq(shmb_close(held), 0);
}
END_TEST

/*
 * libshmbroker(3), shmb_lock(): "a handle whose token is dead (its hold
 * ended while its process lived on, past the broker's watch; see
 * shmb_disconnect()) gets ENOTCONN": the next locker would take the lock
 * from under it. The broker marks such a token dead when a connection
 * ends and it holds no pidfd of the peer (a kernel without SO_PEERPIDFD);
 * this kernel gives one, which no test can deny the daemon, so the mark
 * is written here by the table file's owner (root), as the broker would.
 * The handle then locks nothing, not even a free lock, nor waits on a
 * held one; marked live again, it locks. Should the channel's files be
 * removed while no broker is there to mark them, the same call says so
 * (-EIDRM), as every call on a removed channel does.
 */
START_TEST(test_lock_of_a_hold_with_a_dead_token_is_enotconn) {
        shmb_channel *ch = must_open("lock", SHMB_RW), *ch2 = NULL;
        PosixSemFile *f = map_sem_file("lock", 0);
        RingHolder *table, *e;
        uint64_t live;
        uint32_t token;
        int fd, r;

        fd = open(PSEM_DIR "/shmbroker-table.lock", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        table = mmap(NULL, PSEM_TABLE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ck_assert_ptr_ne(table, MAP_FAILED);
        close(fd);
        ch2 = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        token = __atomic_load_n(&f->lock, __ATOMIC_SEQ_CST);
        ck_assert_uint_ne(token, 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        e = &table[ring_token_index(token)];
        live = __atomic_load_n(&e->word, __ATOMIC_SEQ_CST);
        ck_assert_uint_eq((uint32_t) live, RING_HOLDER_LIVE);
        __atomic_store_n(&e->word, (live & ~(uint64_t) UINT32_MAX) | RING_HOLDER_DEAD, __ATOMIC_SEQ_CST);
        r = shmb_lock(ch, 0, 0);
        ck_assert_msg(r == -ENOTCONN, "a hold whose token is dead locks: %d (%s)", r, shmb_strerror(r));
        ck_assert_int_eq(shmb_lock(ch, 0, 50), -ENOTCONN);
        ck_assert_uint_eq(__atomic_load_n(&f->lock, __ATOMIC_SEQ_CST), 0);
        /* Held by another hold: told the same, not -EAGAIN, and without waiting. */
        ck_assert_int_eq(shmb_lock(ch2, 0, 0), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -ENOTCONN);
        ck_assert_int_eq(shmb_lock(ch, 0, -1), -ENOTCONN);
        ck_assert_int_eq(shmb_unlock(ch2, 0), 0);
        /* Live again: it locks. */
        __atomic_store_n(&e->word, live, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        __atomic_store_n(&e->word, (live & ~(uint64_t) UINT32_MAX) | RING_HOLDER_DEAD, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(munmap(table, PSEM_TABLE_SIZE), 0);
        ck_assert_int_eq(munmap(f, sizeof *f), 0);
        /* The files go while the broker is away: a removal, not the dead token. */
        test_daemon_kill(&td, SIGKILL);
        remove_dev_shm_files();
        r = shmb_lock(ch, 0, 0);
        ck_assert_msg(r == -EIDRM, "a dead token's lock on a removed channel: %d (%s)", r, shmb_strerror(r));
        ck_assert_int_eq(shmb_close(ch), 0);
        ck_assert_int_eq(shmb_close(ch2), 0);
        /* The dead run's System V channel goes with the next start's reclaim. */
        test_start_ok();
}
END_TEST


/*
 * test_interrupted_waits_see_files_removed_while_broker_is_away for a
 * locker whose waits a signal keeps interrupting: each ended with -EINTR
 * before its slice ran out, so its slice's own look at the kernel never
 * ran. Locking again after -EINTR, it must end with -EIDRM, as a
 * semaphore wait does, not be told -EINTR for ever.
 */
START_TEST(test_interrupted_lock_waits_see_files_removed_while_broker_is_away) {
        shmb_channel *holder = must_open("lock", SHMB_RW), *ch = NULL;
        TestTicker ticker;
        int64_t until;
        int calls = 0, r;

        ch = must_open("lock", SHMB_RW);
        ck_assert_int_eq(shmb_lock(holder, 0, 0), 0);
        test_daemon_kill(&td, SIGKILL);
        remove_dev_shm_files();
        ticker = test_ticker_start(20);
        until = test_now_ms() + WAIT_MS;
        do {
                r = shmb_lock(ch, 0, -1);
                calls++;
        } while (r == -EINTR && test_now_ms() < until);
        test_ticker_stop(&ticker);
        ck_assert_msg(r == -EIDRM, "lock waits that signals interrupt, on files that are gone: %d (%s) after %d calls",
                      r, shmb_strerror(r), calls);
        ck_assert_int_eq(shmb_close(ch), 0);
        ck_assert_int_eq(shmb_close(holder), 0);
        /* The dead run's System V channel goes with the next start's reclaim. */
        test_start_ok();
}
END_TEST


/*
 * Two holds of one process hammer the lock, each from a thread of its
 * own, waiting without a timeout: every shmb_lock() gets the lock (a wait
 * without a timeout gives nothing else: not -EAGAIN when the word changed
 * on its way to sleep), and none enters while the other is in (a plain
 * counter in the segment, incremented under the lock, adds up).
 */
#define CONTEND_ROUNDS 3000

typedef struct Contender {
        shmb_channel *ch;
        volatile uint64_t *counter;
        int failed;             /* the first failure's result, or 0 */
} Contender;

static void *contend(void *userdata) {
        Contender *c = userdata;

        for (int i = 0; i < CONTEND_ROUNDS && !c->failed; i++) {
                int r = shmb_lock(c->ch, 0, -1);

                if (r < 0) {
                        c->failed = r;
                        break;
                }
                *c->counter = *c->counter + 1;
                r = shmb_unlock(c->ch, 0);
                if (r < 0)
                        c->failed = r;
        }
        return NULL;
}

START_TEST(test_contended_lock_excludes_and_never_fails) {
        shmb_client *c[2] = { NULL, NULL };
        Contender k[2];
        pthread_t t[2];

        for (int i = 0; i < 2; i++) {
                k[i] = (Contender) {};
                ck_assert_int_eq(shmb_connect(NULL, &c[i]), 0);
                ck_assert_int_eq(shmb_open(c[i], "lock", SHMB_RW, &k[i].ch), 0);
                k[i].counter = shmb_channel_addr(k[i].ch);
        }
        *k[0].counter = 0;
        for (int i = 0; i < 2; i++)
                ck_assert_int_eq(pthread_create(&t[i], NULL, contend, &k[i]), 0);
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(pthread_join(t[i], NULL), 0);
                ck_assert_msg(k[i].failed == 0, "hold %d: %s", i, shmb_strerror(k[i].failed));
        }
        ck_assert_uint_eq(*k[0].counter, 2 * CONTEND_ROUNDS);
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(shmb_close(k[i].ch), 0);
                shmb_disconnect(c[i]);
        }
}
END_TEST

/* A hung peer: a holder stopped (SIGSTOP) is alive, and its lock is never taken over, however long it sleeps. */
START_TEST(test_stopped_lock_holder_keeps_the_lock) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        pid_t pid = start_lock_holder("lock", HOLDER_PAUSES);

        ck_assert_int_eq(kill(pid, SIGSTOP), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(shmb_lock(ch, 0, 300), -ETIMEDOUT);
        ck_assert_int_eq(kill(pid, SIGCONT), 0);
        ck_assert_int_eq(shmb_lock(ch, 0, 0), -EAGAIN);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_int_eq(shmb_lock(ch, 0, WAIT_MS), 0);
        ck_assert_int_eq(shmb_unlock(ch, 0), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

static void on_usr1(int sig) {
        (void) sig;
}

typedef struct Kicker {
        pthread_t target;
        bool stop;
} Kicker;

/* Signal the target every 20 ms until told to stop: one lands inside a futex wait whatever the timing. */
static void *kick(void *userdata) {
        Kicker *k = userdata;

        while (!__atomic_load_n(&k->stop, __ATOMIC_ACQUIRE)) {
                (void) pthread_kill(k->target, SIGUSR1);
                usleep(20 * 1000);
        }
        return NULL;
}

/*
 * libshmbroker(3): a signal ends a posix lock wait with -EINTR, as System
 * V's semop() does (a handler without SA_RESTART). The lock is held by
 * another hold; the wait is for ever, so only the signal can end it.
 */
START_TEST(test_signal_ends_a_posix_lock_wait_with_eintr) {
        shmb_channel *ch = must_open("lock", SHMB_RW);
        pid_t pid = start_lock_holder("lock", HOLDER_PAUSES);
        struct sigaction sa = { .sa_handler = on_usr1 }, old;
        Kicker k = { .target = pthread_self() };
        pthread_t t;
        int r;

        ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, kick, &k), 0);
        r = shmb_lock(ch, 0, -1);
        __atomic_store_n(&k.stop, true, __ATOMIC_RELEASE);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(sigaction(SIGUSR1, &old, NULL), 0);
        ck_assert_msg(r == -EINTR, "a lock wait a signal came into: %d (%s)", r, shmb_strerror(r));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

/*
 * Forged lock words, changing all the time: a writer of the semaphore file
 * keeps storing live tokens of other holds. A lock with a timeout must end
 * by it ("a writer that keeps changing the word gets no spin past the
 * timeout"), though the locker's compare-and-swap that marks it asleep
 * fails again and again. (The writer cannot make every one fail: a mark
 * that succeeds sleeps to the deadline. So this bounds the call, and does
 * not single out the count of failed marks against the timeout.)
 */
typedef struct WordFlipper {
        PosixSemFile *f;
        uint32_t tokens[4];
        bool stop;
} WordFlipper;

static void *flip_words(void *userdata) {
        WordFlipper *w = userdata;

        for (uint32_t i = 0; !__atomic_load_n(&w->stop, __ATOMIC_RELAXED); i++)
                __atomic_store_n(&w->f->lock, w->tokens[i % ELEMENTSOF(w->tokens)], __ATOMIC_RELAXED);
        return NULL;
}

START_TEST(test_lock_on_a_word_a_writer_keeps_changing_times_out) {
        shmb_channel *ch = must_open("lock", SHMB_RW), *other[4];
        WordFlipper w = { .f = map_sem_file("lock", 0) };
        pthread_t t;

        /* Four live tokens of other holds, as their locks wrote them. */
        for (unsigned i = 0; i < ELEMENTSOF(other); i++) {
                other[i] = must_open("lock", SHMB_RW);
                ck_assert_int_eq(shmb_lock(other[i], 0, 0), 0);
                w.tokens[i] = __atomic_load_n(&w.f->lock, __ATOMIC_SEQ_CST);
                ck_assert_int_eq(shmb_unlock(other[i], 0), 0);
        }
        ck_assert_int_eq(pthread_create(&t, NULL, flip_words, &w), 0);
        while (__atomic_load_n(&w.f->lock, __ATOMIC_RELAXED) == 0)
                sched_yield();
        for (int k = 0; k < 20; k++) {
                int64_t t0 = test_now_ms(), took;
                int r = shmb_lock(ch, 0, 20);

                took = test_now_ms() - t0;
                if (r != -ETIMEDOUT || took > 1000) {
                        __atomic_store_n(&w.stop, true, __ATOMIC_RELAXED);
                        ck_assert_int_eq(pthread_join(t, NULL), 0);
                        ck_abort_msg("a lock(20 ms) on a word a writer keeps changing: %s after %lld ms",
                                     shmb_strerror(r), (long long) took);
                }
        }
        __atomic_store_n(&w.stop, true, __ATOMIC_RELAXED);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        __atomic_store_n(&w.f->lock, 0, __ATOMIC_SEQ_CST);
        for (unsigned i = 0; i < ELEMENTSOF(other); i++)
                ck_assert_int_eq(shmb_close(other[i]), 0);
        ck_assert_int_eq(munmap(w.f, sizeof *w.f), 0);
        ck_assert_int_eq(shmb_close(ch), 0);
}
END_TEST

int main(void) {
        const TestGroup groups[] = {
                { "mapping", CASE_TIMEOUT, { test_raw_mapping_is_shared_between_processes,
                                             test_ring_from_other_namespaces_through_the_fds,
                                             test_read_only_open_cannot_write } },
                { "semaphores", CASE_TIMEOUT, { test_semaphores_across_processes,
                                                test_scribbled_sem_t_neither_aborts_nor_hangs_a_caller,
                                                test_glibc_and_library_wake_each_other,
                                                test_killed_lock_holder_does_not_keep_the_lock } },
                { "removal", CASE_TIMEOUT, { test_removal_ends_blocked_calls,
                                             test_removal_ends_blocked_calls_of_scribbled_files,
                                             test_files_removed_while_broker_is_away_end_blocked_calls,
                                             test_interrupted_waits_see_files_removed_while_broker_is_away,
                                             test_reload_ends_blocked_calls,
                                             test_try_on_a_removed_semaphore_whose_wake_up_was_taken_is_eidrm,
                                             test_woken_waiter_passes_the_removal_wake_up_on,
                                             test_unlock_after_removal_is_eidrm,
                                             test_interrupted_lock_waits_see_files_removed_while_broker_is_away } },
                { "locks", CASE_TIMEOUT, { test_lock_words_aimed_at_the_holder_write_nowhere,
                                           test_two_holds_of_one_process_exclude_each_other,
                                           test_forked_child_cannot_use_the_parents_lock,
                                           test_closed_handle_gives_its_lock_up,
                                           test_lock_of_a_holder_killed_while_the_broker_is_away_passes_on,
                                           test_live_lock_holder_keeps_the_lock_over_a_broker_crash,
                                           test_lock_of_a_holder_that_closed_while_the_broker_was_away_passes_on,
                                           test_threads_and_handles_of_one_hold_share_its_lock,
                                           test_holder_table_writer_cannot_refuse_opens_or_duplicate_tokens,
                                           test_holder_table_filled_before_a_broker_crash_refuses_no_opens,
                                           test_read_only_holds_take_no_lock_token,
                                           test_lock_holder_in_another_pid_namespace } },
                { "lock-words", CASE_TIMEOUT, { test_lock_sleepers_are_marked_and_woken_by_unlock,
                                                test_lock_of_a_killed_holder_passes_on_in_every_layout,
                                                test_every_lock_token_of_a_raw_posix_channel_locks,
                                                test_lock_of_a_hold_with_a_dead_token_is_enotconn,
                                                test_lock_after_a_disconnect_the_broker_cannot_watch_is_enotconn,
                                                test_stopped_lock_holder_keeps_the_lock,
                                                test_signal_ends_a_posix_lock_wait_with_eintr,
                                                test_contended_lock_excludes_and_never_fails,
                                                test_locker_killed_asleep_costs_unlocks_no_system_call,
                                                test_lock_on_a_word_a_writer_keeps_changing_times_out } },
                { "lock-watch-cap", CASE_TIMEOUT, { test_lock_of_a_disconnect_past_the_watch_cap_passes_on } },
                { "broadcast", CASE_TIMEOUT, { test_broadcast_reaches_every_subscriber } },
                { "resources", CASE_TIMEOUT, { test_no_descriptor_is_left_open,
                                               test_open_failing_halfway_leaves_nothing,
                                               test_lock_table_cut_or_grown_by_root_is_made_again,
                                               test_open_with_a_file_cut_short_after_the_answer_fails_cleanly,
                                               test_open_of_a_segment_past_the_address_space_limit_leaves_nothing } },
                { "restart", CASE_TIMEOUT, { test_hold_survives_a_broker_crash,
                                             test_handle_is_stale_after_a_stop_and_start,
                                             test_subscriber_the_broker_cannot_see_survives_a_crash,
                                             test_live_claimer_survives_a_restart_in_another_pid_namespace,
                                             test_reservation_survives_a_new_token_at_a_rejoin,
                                             test_reservation_survives_two_new_tokens,
                                             test_lock_under_an_old_token_is_still_the_holds } },
                { "forged-holders", CASE_TIMEOUT, { test_posix_ring_holder_table_forged_before_a_crash_refuses_no_opens,
                                                    test_posix_broadcast_holder_tables_forged_before_a_crash_refuse_no_opens } },
                { "ctl", CASE_TIMEOUT, { test_shmbrokerctl_shows_kind_and_names } },
                { "scribbler", CASE_TIMEOUT, { test_seeded_scribbler_on_semaphore_files } },
                { "semvmx", CASE_TIMEOUT, { test_post_past_semvmx_is_erange_as_on_system_v } },
                { "status-sem-name", CASE_TIMEOUT, { test_status_sem_name_is_the_user_semaphore_of_a_ring } },
                { "channel-fd", CASE_TIMEOUT, { test_channel_fd_wakes_on_a_message_from_another_process,
                                                test_channel_fd_with_only_the_socket_visible } },
        };

        return test_main("posix-client", groups, ELEMENTSOF(groups), setup, teardown);
}
