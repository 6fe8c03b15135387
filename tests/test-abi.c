/*
 * The ABI of libshmbroker's API 1: every getter of a channel, a list or
 * status answer and a reload result, read against a real daemon in a
 * private IPC namespace and judged by the kernel's own view (IPC_STAT,
 * semctl); what each getter returns for NULL and out of range; the
 * access modes that are refused; and "nsems", which must mean the same
 * (the caller's semaphores, indexed as shmb_sem_*() index them) in an
 * open channel and in a status entry, for raw channels and rings alike.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <shmbroker/shmbroker.h>

#include "common/semun.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 30

#define PAIR_KEY 0x5f000001u
#define RING_KEY 0x5f000002u

/*
 * pair: raw, two semaphores of distinct values. ring: two semaphores of
 * its user's after the one it keeps (which starts at 1), values that no
 * misplaced index can pass for. bare: a ring without user semaphores.
 */
static const char *const channels =
        "[{\"name\": \"pair\", \"size\": 65536, \"semaphores\": [3, 4], \"mode\": \"0640\", \"key\": 1593835521},"
        " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8, \"semaphores\": [5, 7],"
        "  \"key\": 1593835522},"
        " {\"name\": \"bare\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
        " {\"name\": \"secret\", \"size\": 4096, \"mode\": \"0600\"}]";

static void setup(void) {
        test_setup();
        test_daemon_write_config(&td, channels);
        test_start_ok();
        setenv("SHMBROKER_SOCKET", td.socket, 1);
}

static shmb_channel *open_ok(shmb_client *c, const char *name, shmb_access access) {
        shmb_channel *ch = NULL;
        int r = shmb_open(c, name, access, &ch);

        ck_assert_msg(r == 0, "open %s: %s", name, shmb_strerror(r));
        return ch;
}

static shmb_status_list *status_ok(shmb_client *c, const char *name) {
        shmb_status_list *l = NULL;
        int r = shmb_status(c, name, &l);

        ck_assert_msg(r == 0, "status %s: %s", name ? name : "(all)", shmb_strerror(r));
        ck_assert_ptr_nonnull(l);
        return l;
}

/* The entry of a channel in an answer; fails when it has none. */
static size_t entry_of(const shmb_status_list *l, const char *name) {
        for (size_t i = 0; i < shmb_status_count(l); i++)
                if (strcmp(shmb_status_name(l, i), name) == 0)
                        return i;
        ck_abort_msg("no entry for %s", name);
        return SIZE_MAX;
}

static void kernel_sem_set(int sem_id, struct semid_ds *ret) {
        union semun arg = { .buf = ret };

        ck_assert_int_eq(semctl(sem_id, 0, IPC_STAT, arg), 0);
}

/* A status entry's semaphore figures equal the kernel's for the set's semaphore k. */
static void assert_semaphore_is_kernel(int r, int value, int ncount, int zcount, pid_t pid, int sem_id, unsigned k) {
        ck_assert_int_eq(r, 0);
        ck_assert_int_eq(value, semctl(sem_id, (int) k, GETVAL));
        ck_assert_int_eq(ncount, semctl(sem_id, (int) k, GETNCNT));
        ck_assert_int_eq(zcount, semctl(sem_id, (int) k, GETZCNT));
        ck_assert_int_eq(pid, semctl(sem_id, (int) k, GETPID));
}

/* ---- channel getters ---- */

/* What the getters say of an open channel is what the kernel holds under those ids. */
static void assert_channel_is_kernel(shmb_channel *ch, uint32_t key, unsigned reserved) {
        struct shmid_ds shm;
        struct semid_ds sem;

        ck_assert_int_ge(shmb_channel_shm_id(ch), 0);
        ck_assert_int_ge(shmb_channel_sem_id(ch), 0);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(ch), IPC_STAT, &shm), 0);
        ck_assert_uint_eq((uint32_t) shm.shm_perm.__key, key);
        ck_assert_uint_eq(shmb_channel_shm_key(ch), key);
        ck_assert_uint_eq(shm.shm_segsz, shmb_channel_size(ch));
        kernel_sem_set(shmb_channel_sem_id(ch), &sem);
        ck_assert_uint_eq((uint32_t) sem.sem_perm.__key, key);
        ck_assert_uint_eq(shmb_channel_sem_key(ch), key);
        /* The kernel's set is the layout's own semaphores and the caller's. */
        ck_assert_uint_eq(sem.sem_nsems, reserved + shmb_channel_nsems(ch));
}

START_TEST(test_channel_getters_raw) {
        shmb_channel *rw, *ro;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        rw = open_ok(c, "pair", SHMB_RW);
        ro = open_ok(c, "pair", SHMB_RO);

        ck_assert_str_eq(shmb_channel_name(rw), "pair");
        ck_assert_int_eq(shmb_channel_layout(rw), SHMB_LAYOUT_RAW);
        ck_assert_int_eq(shmb_channel_access(rw), SHMB_RW);
        ck_assert_int_eq(shmb_channel_access(ro), SHMB_RO);
        ck_assert_uint_eq(shmb_channel_size(rw), 65536);
        ck_assert_uint_eq(shmb_channel_nsems(rw), 2);
        ck_assert_uint_eq(shmb_channel_slot_size(rw), 0);
        ck_assert_uint_eq(shmb_channel_slots(rw), 0);
        ck_assert_ptr_nonnull(shmb_channel_addr(rw));
        ck_assert_ptr_eq(shmb_channel_get_client(rw), c);
        assert_channel_is_kernel(rw, PAIR_KEY, 0);
        /* Both handles describe the same objects. */
        ck_assert_int_eq(shmb_channel_shm_id(ro), shmb_channel_shm_id(rw));
        ck_assert_int_eq(shmb_channel_sem_id(ro), shmb_channel_sem_id(rw));
        ck_assert_uint_eq(shmb_channel_nsems(ro), 2);
        /* Semaphore 0 is the config's first (3), 1 its second (4): the index the getters count is shmb_sem_*()'s. */
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(shmb_sem_trywait(rw, 0), 0);
        ck_assert_int_eq(shmb_sem_trywait(rw, 0), -EAGAIN);
        ck_assert_int_eq(shmb_sem_post(rw, 0), 0);
        ck_assert_int_eq(shmb_sem_trywait(rw, 2), -EINVAL);

        ck_assert_int_eq(shmb_close(ro), 0);
        ck_assert_int_eq(shmb_close(rw), 0);
        shmb_disconnect(c);
}
END_TEST

START_TEST(test_channel_getters_ring) {
        shmb_channel *ring, *bare;
        struct shmid_ds shm;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ring = open_ok(c, "ring", SHMB_RW);
        bare = open_ok(c, "bare", SHMB_RO);

        ck_assert_str_eq(shmb_channel_name(ring), "ring");
        ck_assert_int_eq(shmb_channel_layout(ring), SHMB_LAYOUT_RING);
        ck_assert_int_eq(shmb_channel_access(ring), SHMB_RW);
        ck_assert_uint_eq(shmb_channel_slot_size(ring), 256);
        ck_assert_uint_eq(shmb_channel_slots(ring), 8);
        /* The ring's own semaphore is not the caller's: two, as configured. */
        ck_assert_uint_eq(shmb_channel_nsems(ring), 2);
        assert_channel_is_kernel(ring, RING_KEY, 1);
        /* A header, then 8 slots of at least 256 bytes. */
        ck_assert_uint_gt(shmb_channel_size(ring), 8 * 256);

        ck_assert_str_eq(shmb_channel_name(bare), "bare");
        ck_assert_int_eq(shmb_channel_layout(bare), SHMB_LAYOUT_RING);
        ck_assert_int_eq(shmb_channel_access(bare), SHMB_RO);
        ck_assert_uint_eq(shmb_channel_slot_size(bare), 64);
        ck_assert_uint_eq(shmb_channel_slots(bare), 4);
        ck_assert_uint_eq(shmb_channel_nsems(bare), 0);
        ck_assert_int_eq(shmctl(shmb_channel_shm_id(bare), IPC_STAT, &shm), 0);
        ck_assert_uint_eq(shm.shm_segsz, shmb_channel_size(bare));
        ck_assert_uint_eq(shmb_channel_shm_key(bare), (uint32_t) shm.shm_perm.__key);
        ck_assert_uint_eq(shmb_channel_sem_key(bare), (uint32_t) shm.shm_perm.__key);

        /* User semaphore 0 holds 5 (the config's first), not the ring's own 1. */
        for (int i = 0; i < 5; i++)
                ck_assert_int_eq(shmb_sem_trywait(ring, 0), 0);
        ck_assert_int_eq(shmb_sem_trywait(ring, 0), -EAGAIN);
        for (int i = 0; i < 5; i++)
                ck_assert_int_eq(shmb_sem_post(ring, 0), 0);
        ck_assert_int_eq(shmb_sem_post(ring, 2), -EINVAL);

        ck_assert_int_eq(shmb_close(bare), 0);
        ck_assert_int_eq(shmb_close(ring), 0);
        shmb_disconnect(c);
}
END_TEST

/* ---- NULL, out of range ---- */

START_TEST(test_getters_on_null) {
        const char *message = "untouched";
        shmb_status_list *l = (shmb_status_list *) &message;
        shmb_reload_result *rr = (shmb_reload_result *) &message;
        shmb_access access = SHMB_RO;
        int value = 42;
        pid_t pid = 42;

        ck_assert_ptr_null(shmb_channel_addr(NULL));
        ck_assert_ptr_null(shmb_channel_name(NULL));
        ck_assert_int_eq(shmb_channel_layout(NULL), -EINVAL);
        ck_assert_int_eq(shmb_channel_access(NULL), -EINVAL);
        ck_assert_uint_eq(shmb_channel_size(NULL), 0);
        ck_assert_uint_eq(shmb_channel_nsems(NULL), 0);
        ck_assert_uint_eq(shmb_channel_shm_key(NULL), 0);
        ck_assert_int_eq(shmb_channel_shm_id(NULL), -EINVAL);
        ck_assert_uint_eq(shmb_channel_sem_key(NULL), 0);
        ck_assert_int_eq(shmb_channel_sem_id(NULL), -EINVAL);
        ck_assert_uint_eq(shmb_channel_slot_size(NULL), 0);
        ck_assert_uint_eq(shmb_channel_slots(NULL), 0);
        ck_assert_ptr_null(shmb_channel_get_client(NULL));
        ck_assert_int_eq(shmb_channel_check(NULL), -EINVAL);
        ck_assert_int_eq(shmb_channel_kind(NULL), -EINVAL);
        ck_assert_ptr_null(shmb_channel_shm_name(NULL));
        ck_assert_int_eq(shmb_channel_set_spin(NULL, 0), -EINVAL);
        ck_assert_int_eq(shmb_channel_fd(NULL), -EINVAL);
        ck_assert_int_eq(shmb_client_fd(NULL), -EINVAL);
        ck_assert_int_eq(shmb_client_process(NULL), -EINVAL);
        ck_assert_int_eq(shmb_client_set_timeout(NULL, 100), -EINVAL);
        /* The calls that end a handle accept NULL, as free(3) does. */
        ck_assert_int_eq(shmb_close(NULL), 0);
        shmb_disconnect(NULL);

        ck_assert_uint_eq(shmb_status_count(NULL), 0);
        ck_assert_ptr_null(shmb_status_name(NULL, 0));
        ck_assert_int_eq(shmb_status_layout(NULL, 0), -EINVAL);
        ck_assert_uint_eq(shmb_status_size(NULL, 0), 0);
        ck_assert_uint_eq(shmb_status_nsems(NULL, 0), 0);
        ck_assert_uint_eq(shmb_status_reserved_nsems(NULL, 0), 0);
        ck_assert_uint_eq(shmb_status_shm_key(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_shm_id(NULL, 0), -EINVAL);
        ck_assert_uint_eq(shmb_status_sem_key(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_sem_id(NULL, 0), -EINVAL);
        ck_assert_uint_eq(shmb_status_slot_size(NULL, 0), 0);
        ck_assert_uint_eq(shmb_status_slots(NULL, 0), 0);
        ck_assert_ptr_null(shmb_status_owner(NULL, 0));
        ck_assert_ptr_null(shmb_status_group(NULL, 0));
        ck_assert_int_eq(shmb_status_mode(NULL, 0), -EINVAL);
        ck_assert_uint_eq(shmb_status_nattch(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_cpid(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_lpid(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_atime(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_dtime(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_ctime(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_semaphore(NULL, 0, 0, &value, NULL, NULL, &pid), -EINVAL);
        ck_assert_int_eq(shmb_status_reserved_semaphore(NULL, 0, 0, &value, NULL, NULL, &pid), -EINVAL);
        ck_assert_uint_eq(shmb_status_nclients(NULL, 0), 0);
        ck_assert_int_eq(shmb_status_client(NULL, 0, 0, &pid, NULL, &access, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_error(NULL, 0, &message), -EINVAL);
        /* Out-parameters are not touched on failure. */
        ck_assert_int_eq(value, 42);
        ck_assert_int_eq(pid, 42);
        ck_assert_int_eq(access, SHMB_RO);
        ck_assert_str_eq(message, "untouched");
        shmb_status_free(NULL);

        ck_assert_ptr_null(shmb_reload_result_added(NULL));
        ck_assert_ptr_null(shmb_reload_result_removed(NULL));
        ck_assert_ptr_null(shmb_reload_result_changed(NULL));
        ck_assert_ptr_null(shmb_reload_result_kept(NULL));
        shmb_reload_result_free(NULL);

        /* Calls that make answers refuse NULL, and leave *ret alone. */
        ck_assert_int_eq(shmb_list(NULL, &l), -EINVAL);
        ck_assert_int_eq(shmb_status(NULL, "pair", &l), -EINVAL);
        ck_assert_int_eq(shmb_reload(NULL, &rr), -EINVAL);
        ck_assert_ptr_eq(l, (shmb_status_list *) &message);
        ck_assert_ptr_eq(rr, (shmb_reload_result *) &message);
}
END_TEST

START_TEST(test_status_getters_out_of_range) {
        shmb_status_list *l, *kept;
        shmb_channel *ch;
        shmb_client *c;
        size_t n, pair, bare;
        int value = 42;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ch = open_ok(c, "pair", SHMB_RW);
        ck_assert_int_eq(shmb_list(c, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status(c, "pair", NULL), -EINVAL);
        kept = (shmb_status_list *) &value;
        ck_assert_int_eq(shmb_status(c, "bad name", &kept), -EINVAL);
        ck_assert_int_eq(shmb_status(c, "nope", &kept), -ENOENT);
        ck_assert_ptr_eq(kept, (shmb_status_list *) &value);

        l = status_ok(c, NULL);
        n = shmb_status_count(l);
        ck_assert_uint_eq(n, 4);
        for (size_t k = 0; k < 2; k++) {
                size_t i = k == 0 ? n : SIZE_MAX;

                ck_assert_ptr_null(shmb_status_name(l, i));
                ck_assert_int_eq(shmb_status_layout(l, i), -EINVAL);
                ck_assert_uint_eq(shmb_status_size(l, i), 0);
                ck_assert_uint_eq(shmb_status_nsems(l, i), 0);
                ck_assert_uint_eq(shmb_status_reserved_nsems(l, i), 0);
                ck_assert_uint_eq(shmb_status_shm_key(l, i), 0);
                ck_assert_int_eq(shmb_status_shm_id(l, i), -EINVAL);
                ck_assert_uint_eq(shmb_status_sem_key(l, i), 0);
                ck_assert_int_eq(shmb_status_sem_id(l, i), -EINVAL);
                ck_assert_uint_eq(shmb_status_slot_size(l, i), 0);
                ck_assert_uint_eq(shmb_status_slots(l, i), 0);
                ck_assert_ptr_null(shmb_status_owner(l, i));
                ck_assert_ptr_null(shmb_status_group(l, i));
                ck_assert_int_eq(shmb_status_mode(l, i), -EINVAL);
                ck_assert_uint_eq(shmb_status_nattch(l, i), 0);
                ck_assert_int_eq(shmb_status_cpid(l, i), 0);
                ck_assert_int_eq(shmb_status_lpid(l, i), 0);
                ck_assert_int_eq(shmb_status_atime(l, i), 0);
                ck_assert_int_eq(shmb_status_dtime(l, i), 0);
                ck_assert_int_eq(shmb_status_ctime(l, i), 0);
                ck_assert_int_eq(shmb_status_semaphore(l, i, 0, &value, NULL, NULL, NULL), -EINVAL);
                ck_assert_int_eq(shmb_status_reserved_semaphore(l, i, 0, &value, NULL, NULL, NULL), -EINVAL);
                ck_assert_uint_eq(shmb_status_nclients(l, i), 0);
                ck_assert_int_eq(shmb_status_client(l, i, 0, NULL, NULL, NULL, NULL), -EINVAL);
                ck_assert_int_eq(shmb_status_error(l, i, NULL), -EINVAL);
        }
        /* In range for the entry, out of range for its semaphores and holds. */
        pair = entry_of(l, "pair");
        bare = entry_of(l, "bare");
        ck_assert_int_eq(shmb_status_semaphore(l, pair, 1, &value, NULL, NULL, NULL), 0);
        ck_assert_int_eq(value, 4);
        value = 42;
        ck_assert_int_eq(shmb_status_semaphore(l, pair, 2, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_semaphore(l, pair, UINT_MAX, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_reserved_semaphore(l, pair, 0, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_semaphore(l, bare, 0, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_reserved_semaphore(l, bare, 1, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(value, 42);
        ck_assert_uint_eq(shmb_status_nclients(l, pair), 1);
        ck_assert_int_eq(shmb_status_client(l, pair, 0, NULL, NULL, NULL, NULL), 0);
        ck_assert_int_eq(shmb_status_client(l, pair, 1, NULL, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_client(l, pair, SIZE_MAX, NULL, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_client(l, bare, 0, NULL, NULL, NULL, NULL), -EINVAL);
        shmb_status_free(l);

        /* A list answer has no status figures: semaphores absent (not out of range), no holds. */
        ck_assert_int_eq(shmb_list(c, &l), 0);
        ck_assert_uint_eq(shmb_status_count(l), 4);
        pair = entry_of(l, "pair");
        ck_assert_uint_eq(shmb_status_nsems(l, pair), 2);
        ck_assert_int_eq(shmb_status_semaphore(l, pair, 0, &value, NULL, NULL, NULL), -ENODATA);
        ck_assert_int_eq(shmb_status_semaphore(l, pair, 2, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(shmb_status_reserved_semaphore(l, entry_of(l, "ring"), 0, &value, NULL, NULL, NULL), -ENODATA);
        ck_assert_int_eq(value, 42);
        ck_assert_uint_eq(shmb_status_nclients(l, pair), 0);
        ck_assert_uint_eq(shmb_status_nattch(l, pair), 0);
        ck_assert_int_eq(shmb_status_error(l, pair, NULL), 0);
        shmb_status_free(l);

        ck_assert_int_eq(shmb_close(ch), 0);
        shmb_disconnect(c);
}
END_TEST

/* ---- access ---- */

START_TEST(test_access_zero_and_out_of_range_refused) {
        static const int bad[] = { 0, 3, -1, 99, INT_MAX, INT_MIN };
        shmb_channel *ch, *ok;
        shmb_status_list *l;
        shmb_client *c;

        /* Neither mode is the zero a forgotten argument or a zeroed field holds. */
        ck_assert_int_ne(SHMB_RO, 0);
        ck_assert_int_ne(SHMB_RW, 0);
        ck_assert_int_ne(SHMB_RO, SHMB_RW);

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                ch = (shmb_channel *) &ch;
                ck_assert_msg(shmb_open(c, "pair", (shmb_access) bad[i], &ch) == -EINVAL, "access %d was taken", bad[i]);
                ck_assert_ptr_eq(ch, (shmb_channel *) &ch);
                ck_assert_msg(shmb_open_channel(NULL, "pair", (shmb_access) bad[i], &ch) == -EINVAL,
                              "access %d was taken by shmb_open_channel()", bad[i]);
                ck_assert_ptr_eq(ch, (shmb_channel *) &ch);
        }
        /* Refused before asking: the broker lists no hold and attached nothing for us. */
        l = status_ok(c, "pair");
        ck_assert_uint_eq(shmb_status_nclients(l, 0), 0);
        ck_assert_uint_eq(shmb_status_nattch(l, 0), 1);         /* the broker's own */
        shmb_status_free(l);

        /* The two modes still open, and are what the handles and the broker say. */
        ok = open_ok(c, "pair", SHMB_RO);
        ck_assert_int_eq(shmb_channel_access(ok), SHMB_RO);
        ck_assert_int_eq(shmb_sem_post(ok, 0), -EACCES);
        l = status_ok(c, "pair");
        {
                shmb_access access = 0;

                ck_assert_int_eq(shmb_status_client(l, 0, 0, NULL, NULL, &access, NULL), 0);
                ck_assert_int_eq(access, SHMB_RO);
        }
        shmb_status_free(l);
        ck_assert_int_eq(shmb_close(ok), 0);
        ck_assert_int_eq(shmb_open_channel(NULL, "pair", SHMB_RW, &ok), 0);
        ck_assert_int_eq(shmb_channel_access(ok), SHMB_RW);
        ck_assert_int_eq(shmb_sem_post(ok, 1), 0);
        ck_assert_int_eq(shmb_sem_trywait(ok, 1), 0);
        ck_assert_int_eq(shmb_close(ok), 0);
        shmb_disconnect(c);
}
END_TEST

/* ---- nsems, open and status alike ---- */

START_TEST(test_nsems_agree_raw_and_ring) {
        static const char *const names[] = { "pair", "ring", "bare" };
        static const unsigned reserved[] = { 0, 1, 1 };
        shmb_channel *ch[3];
        shmb_status_list *l;
        shmb_client *c;
        int value, ncount, zcount;
        pid_t pid;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        for (size_t k = 0; k < 3; k++)
                ch[k] = open_ok(c, names[k], SHMB_RW);
        /* Move user semaphore 1 of each channel that has one, through the library's index. */
        ck_assert_int_eq(shmb_sem_post(ch[0], 1), 0);           /* pair: 4 -> 5 */
        ck_assert_int_eq(shmb_sem_post(ch[1], 1), 0);           /* ring: 7 -> 8 */

        l = status_ok(c, NULL);
        for (size_t k = 0; k < 3; k++) {
                size_t i = entry_of(l, names[k]);
                int sem_id = shmb_status_sem_id(l, i);
                struct semid_ds sem;

                ck_assert_msg(shmb_status_nsems(l, i) == shmb_channel_nsems(ch[k]), "%s: status says %u, open %u",
                              names[k], shmb_status_nsems(l, i), shmb_channel_nsems(ch[k]));
                ck_assert_uint_eq(shmb_status_reserved_nsems(l, i), reserved[k]);
                ck_assert_int_eq(sem_id, shmb_channel_sem_id(ch[k]));
                kernel_sem_set(sem_id, &sem);
                ck_assert_uint_eq(sem.sem_nsems, shmb_status_reserved_nsems(l, i) + shmb_status_nsems(l, i));
                /* Every user semaphore is the kernel's reserved + idx; the layout's own come first. */
                for (unsigned idx = 0; idx < shmb_status_nsems(l, i); idx++) {
                        int r = shmb_status_semaphore(l, i, idx, &value, &ncount, &zcount, &pid);

                        assert_semaphore_is_kernel(r, value, ncount, zcount, pid, sem_id, reserved[k] + idx);
                }
                for (unsigned idx = 0; idx < reserved[k]; idx++) {
                        int r = shmb_status_reserved_semaphore(l, i, idx, &value, &ncount, &zcount, &pid);

                        assert_semaphore_is_kernel(r, value, ncount, zcount, pid, sem_id, idx);
                        ck_assert_int_eq(value, 1);     /* the ring's own, free */
                }
        }
        /* The figures by name: the config's values, and the posts made through shmb_sem_post(ch, 1). */
        ck_assert_int_eq(shmb_status_semaphore(l, entry_of(l, "pair"), 0, &value, NULL, NULL, &pid), 0);
        ck_assert_int_eq(value, 3);
        ck_assert_int_eq(shmb_status_semaphore(l, entry_of(l, "pair"), 1, &value, NULL, NULL, &pid), 0);
        ck_assert_int_eq(value, 5);
        ck_assert_int_eq(pid, getpid());
        ck_assert_int_eq(shmb_status_semaphore(l, entry_of(l, "ring"), 0, &value, NULL, NULL, NULL), 0);
        ck_assert_int_eq(value, 5);
        ck_assert_int_eq(shmb_status_semaphore(l, entry_of(l, "ring"), 1, &value, NULL, NULL, &pid), 0);
        ck_assert_int_eq(value, 8);
        ck_assert_int_eq(pid, getpid());
        ck_assert_uint_eq(shmb_status_nsems(l, entry_of(l, "bare")), 0);
        shmb_status_free(l);

        /* A list answer counts the same way. */
        ck_assert_int_eq(shmb_list(c, &l), 0);
        for (size_t k = 0; k < 3; k++) {
                ck_assert_uint_eq(shmb_status_nsems(l, entry_of(l, names[k])), shmb_channel_nsems(ch[k]));
                ck_assert_uint_eq(shmb_status_reserved_nsems(l, entry_of(l, names[k])), reserved[k]);
        }
        shmb_status_free(l);
        for (size_t k = 0; k < 3; k++)
                ck_assert_int_eq(shmb_close(ch[k]), 0);
        shmb_disconnect(c);
}
END_TEST

/* ---- status getters ---- */

/* Every getter of a status entry, against the kernel's IPC_STAT taken just after it (nothing attaches between). */
START_TEST(test_status_getters_match_kernel) {
        static const char *const names[] = { "pair", "ring" };
        int64_t t0 = (int64_t) time(NULL);
        shmb_channel *ch[2];
        shmb_status_list *l, *list;
        shmb_client *c;

        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ch[0] = open_ok(c, "pair", SHMB_RW);
        ch[1] = open_ok(c, "ring", SHMB_RO);
        l = status_ok(c, NULL);
        ck_assert_int_eq(shmb_list(c, &list), 0);
        ck_assert_uint_eq(shmb_status_count(l), 4);
        ck_assert_uint_eq(shmb_status_count(list), 4);
        /* Sorted by name, in both. */
        ck_assert_str_eq(shmb_status_name(l, 0), "bare");
        ck_assert_str_eq(shmb_status_name(l, 3), "secret");
        ck_assert_str_eq(shmb_status_name(list, 1), "pair");

        for (size_t k = 0; k < 2; k++) {
                size_t i = entry_of(l, names[k]), j = entry_of(list, names[k]);
                struct shmid_ds shm;
                struct semid_ds sem;
                shmb_access access;
                int64_t since;
                pid_t pid;
                uid_t uid;

                ck_assert_int_eq(shmctl(shmb_status_shm_id(l, i), IPC_STAT, &shm), 0);
                kernel_sem_set(shmb_status_sem_id(l, i), &sem);
                ck_assert_int_eq(shmb_status_error(l, i, NULL), 0);
                ck_assert_int_eq(shmb_status_layout(l, i), shmb_channel_layout(ch[k]));
                ck_assert_uint_eq(shmb_status_size(l, i), shm.shm_segsz);
                ck_assert_uint_eq(shmb_status_size(l, i), shmb_channel_size(ch[k]));
                ck_assert_uint_eq(shmb_status_shm_key(l, i), (uint32_t) shm.shm_perm.__key);
                ck_assert_uint_eq(shmb_status_sem_key(l, i), (uint32_t) sem.sem_perm.__key);
                ck_assert_uint_eq(shmb_status_shm_key(l, i), shmb_channel_shm_key(ch[k]));
                ck_assert_int_eq(shmb_status_shm_id(l, i), shmb_channel_shm_id(ch[k]));
                ck_assert_int_eq(shmb_status_sem_id(l, i), shmb_channel_sem_id(ch[k]));
                ck_assert_uint_eq(shmb_status_slot_size(l, i), shmb_channel_slot_size(ch[k]));
                ck_assert_uint_eq(shmb_status_slots(l, i), shmb_channel_slots(ch[k]));
                ck_assert_str_eq(shmb_status_owner(l, i), "root");
                ck_assert_str_eq(shmb_status_group(l, i), "root");
                ck_assert_int_eq(shmb_status_mode(l, i), (int) (shm.shm_perm.mode & 0777));
                ck_assert_uint_eq(shmb_status_nattch(l, i), shm.shm_nattch);
                ck_assert_uint_eq(shmb_status_nattch(l, i), 2);         /* the broker's and ours */
                ck_assert_int_eq(shmb_status_cpid(l, i), shm.shm_cpid);
                ck_assert_int_eq(shmb_status_lpid(l, i), shm.shm_lpid);
                ck_assert_int_eq(shmb_status_lpid(l, i), getpid());     /* our open attached last */
                ck_assert_int_eq(shmb_status_atime(l, i), (int64_t) shm.shm_atime);
                ck_assert_int_eq(shmb_status_dtime(l, i), (int64_t) shm.shm_dtime);
                ck_assert_int_eq(shmb_status_ctime(l, i), (int64_t) shm.shm_ctime);
                ck_assert_int_ge(shmb_status_atime(l, i), t0);
                /* One hold: ours, with the access it was opened with. */
                ck_assert_uint_eq(shmb_status_nclients(l, i), 1);
                ck_assert_int_eq(shmb_status_client(l, i, 0, &pid, &uid, &access, &since), 0);
                ck_assert_int_eq(pid, getpid());
                ck_assert_uint_eq(uid, geteuid());
                ck_assert_int_eq(access, k == 0 ? SHMB_RW : SHMB_RO);
                ck_assert_int_ge(since, t0);
                ck_assert_int_le(since, (int64_t) time(NULL));

                /* The list's entry says the same of what both have, and nothing of the rest. */
                ck_assert_str_eq(shmb_status_name(list, j), names[k]);
                ck_assert_int_eq(shmb_status_layout(list, j), shmb_status_layout(l, i));
                ck_assert_uint_eq(shmb_status_size(list, j), shmb_status_size(l, i));
                ck_assert_uint_eq(shmb_status_shm_key(list, j), shmb_status_shm_key(l, i));
                ck_assert_int_eq(shmb_status_shm_id(list, j), shmb_status_shm_id(l, i));
                ck_assert_uint_eq(shmb_status_sem_key(list, j), shmb_status_sem_key(l, i));
                ck_assert_int_eq(shmb_status_sem_id(list, j), shmb_status_sem_id(l, i));
                ck_assert_uint_eq(shmb_status_slot_size(list, j), shmb_status_slot_size(l, i));
                ck_assert_uint_eq(shmb_status_slots(list, j), shmb_status_slots(l, i));
                ck_assert_str_eq(shmb_status_owner(list, j), "root");
                ck_assert_str_eq(shmb_status_group(list, j), "root");
                ck_assert_int_eq(shmb_status_mode(list, j), shmb_status_mode(l, i));
                ck_assert_uint_eq(shmb_status_nattch(list, j), 0);
                ck_assert_int_eq(shmb_status_cpid(list, j), 0);
                ck_assert_int_eq(shmb_status_ctime(list, j), 0);
                ck_assert_uint_eq(shmb_status_nclients(list, j), 0);
        }
        ck_assert_int_eq(shmb_status_mode(l, entry_of(l, "pair")), 0640);
        ck_assert_int_eq(shmb_status_mode(l, entry_of(l, "secret")), 0600);
        ck_assert_uint_eq(shmb_status_shm_key(l, entry_of(l, "pair")), PAIR_KEY);
        ck_assert_uint_eq(shmb_status_slot_size(l, entry_of(l, "pair")), 0);
        ck_assert_uint_eq(shmb_status_slots(l, entry_of(l, "ring")), 8);
        ck_assert_int_eq(shmb_status_cpid(l, entry_of(l, "secret")), td.pid);    /* the broker made it */
        /* Strings are the answer's: valid, and the same, until it is freed. */
        ck_assert_ptr_eq(shmb_status_name(l, 0), shmb_status_name(l, 0));
        shmb_status_free(list);
        shmb_status_free(l);
        for (size_t k = 0; k < 2; k++)
                ck_assert_int_eq(shmb_close(ch[k]), 0);
        shmb_disconnect(c);
}
END_TEST

/*
 * A broker that may not read a set (run as another uid, mode 0060: no
 * bits for the owner, and no CAP_IPC_OWNER) still answers; the entry says
 * why, and its semaphores are absent, not zeros nor out of range.
 */
START_TEST(test_status_unread_semaphores_are_enodata) {
        shmb_status_list *l;
        shmb_client *c;
        const char *why = NULL;
        struct dirent *e;
        size_t wo, mine;
        int value = 42;
        DIR *dir;

        test_daemon_stop_ok(&td);
        /* The state directory and what the first run left in it (its secret, its journal) become the new uid's. */
        dir = opendir(td.dir);
        ck_assert_ptr_nonnull(dir);
        while ((e = readdir(dir)))
                if (strcmp(e->d_name, "..") != 0)
                        ck_assert_int_eq(fchownat(dirfd(dir), e->d_name, 65534, 65534, AT_SYMLINK_NOFOLLOW), 0);
        closedir(dir);
        ck_assert_int_eq(chmod(td.dir, 0700), 0);
        td.uid = 65534;
        td.gid = 65534;
        test_daemon_write_config(&td, "[{\"name\": \"wo\", \"size\": 4096, \"semaphores\": [1, 2], \"mode\": \"0060\"},"
                                      " {\"name\": \"mine\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4,"
                                      "  \"semaphores\": [3], \"mode\": \"0600\"}]");
        test_start_ok();
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        l = status_ok(c, NULL);
        wo = entry_of(l, "wo");
        mine = entry_of(l, "mine");
        ck_assert_int_eq(shmb_status_error(l, wo, &why), -EACCES);
        ck_assert_ptr_nonnull(why);
        ck_assert_ptr_nonnull(strstr(why, "semaphore set"));
        ck_assert_uint_eq(shmb_status_nsems(l, wo), 2);         /* the channel has them; the answer has no figures */
        ck_assert_int_eq(shmb_status_semaphore(l, wo, 0, &value, NULL, NULL, NULL), -ENODATA);
        ck_assert_int_eq(shmb_status_semaphore(l, wo, 1, &value, NULL, NULL, NULL), -ENODATA);
        ck_assert_int_eq(shmb_status_semaphore(l, wo, 2, &value, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(value, 42);
        ck_assert_int_eq(shmb_status_error(l, mine, &why), 0);
        ck_assert_ptr_null(why);
        ck_assert_uint_eq(shmb_status_nsems(l, mine), 1);
        ck_assert_int_eq(shmb_status_semaphore(l, mine, 0, &value, NULL, NULL, NULL), 0);
        ck_assert_int_eq(value, 3);
        ck_assert_int_eq(shmb_status_reserved_semaphore(l, mine, 0, &value, NULL, NULL, NULL), 0);
        ck_assert_int_eq(value, 1);
        ck_assert_str_eq(shmb_status_owner(l, mine), "nobody");
        shmb_status_free(l);
        shmb_disconnect(c);
}
END_TEST

/* ---- reload result ---- */

/* names is NULL-terminated and holds exactly the expected names, in any order. */
static void assert_names(const char *const *names, const char *what, const char *const *expected, size_t n) {
        size_t count = 0;

        ck_assert_msg(names, "%s: NULL", what);
        for (; names[count]; count++) {
                bool found = false;

                for (size_t k = 0; k < n; k++)
                        found = found || strcmp(names[count], expected[k]) == 0;
                ck_assert_msg(found, "%s: unexpected %s", what, names[count]);
        }
        ck_assert_msg(count == n, "%s: %zu names, expected %zu", what, count, n);
}

static void refused_reload_child(void *userdata) {
        shmb_reload_result *rr = (shmb_reload_result *) userdata;
        shmb_client *c;

        test_drop_privileges(65534, 65534, 0);
        if (shmb_connect(NULL, &c) < 0)
                _exit(2);
        if (shmb_reload(c, &rr) != -EACCES)
                _exit(3);
        _exit(rr == (shmb_reload_result *) userdata ? 0 : 4);
}

START_TEST(test_reload_result_getters) {
        static const char *const added[] = { "extra" }, *const removed[] = { "secret" }, *const changed[] = { "pair" };
        static const char *const kept[] = { "bare", "ring" }, *const all[] = { "bare", "extra", "pair", "ring" };
        const char *const *names;
        shmb_reload_result *rr;
        shmb_client *c;
        int status;

        /* Refused (not root, not admin_group): *ret stays as it was. */
        status = test_in_child(refused_reload_child, &status);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "refused reload: status %d", status);

        /* pair grows (replaced), secret goes, extra comes, the rings stay. */
        test_daemon_write_config(&td,
                "[{\"name\": \"pair\", \"size\": 69632, \"semaphores\": [3, 4], \"mode\": \"0640\", \"key\": 1593835521},"
                " {\"name\": \"ring\", \"layout\": \"ring\", \"slot_size\": 256, \"slots\": 8, \"semaphores\": [5, 7],"
                "  \"key\": 1593835522},"
                " {\"name\": \"bare\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 4},"
                " {\"name\": \"extra\", \"size\": 4096}]");
        ck_assert_int_eq(shmb_connect(NULL, &c), 0);
        ck_assert_int_eq(shmb_reload(c, NULL), -EINVAL);
        ck_assert_int_eq(shmb_reload(c, &rr), 0);
        assert_names(shmb_reload_result_added(rr), "added", added, 1);
        assert_names(shmb_reload_result_removed(rr), "removed", removed, 1);
        assert_names(shmb_reload_result_changed(rr), "changed", changed, 1);
        assert_names(shmb_reload_result_kept(rr), "kept", kept, 2);
        /* Borrowed: the same arrays each time, until the free. */
        ck_assert_ptr_eq(shmb_reload_result_kept(rr), shmb_reload_result_kept(rr));
        shmb_reload_result_free(rr);

        /* Nothing changed: empty arrays, not NULL, and everything kept. */
        ck_assert_int_eq(shmb_reload(c, &rr), 0);
        names = shmb_reload_result_added(rr);
        ck_assert_ptr_nonnull(names);
        ck_assert_ptr_null(names[0]);
        assert_names(shmb_reload_result_removed(rr), "removed", NULL, 0);
        assert_names(shmb_reload_result_changed(rr), "changed", NULL, 0);
        assert_names(shmb_reload_result_kept(rr), "kept", all, 4);
        shmb_reload_result_free(rr);
        shmb_disconnect(c);
}
END_TEST

/* ---- shmbrokerctl: the kernel's whole set, as before the library counted only the caller's ---- */

static char *ctl_output(const char *args) {
        const char *daemon = SHMBROKERD_PATH, *tail = strstr(daemon, "daemon/shmbrokerd");
        char cmd[1024], *out = calloc(1, 16384);
        size_t n;
        FILE *p;

        ck_assert_ptr_nonnull(tail);
        ck_assert_ptr_nonnull(out);
        snprintf(cmd, sizeof cmd, "%.*sclient/shmbrokerctl -s %s %s", (int) (tail - daemon), daemon, td.socket, args);
        p = popen(cmd, "re");
        ck_assert_ptr_nonnull(p);
        n = fread(out, 1, 16383, p);
        out[n] = 0;
        ck_assert_int_eq(pclose(p), 0);
        return out;
}

START_TEST(test_shmbrokerctl_shows_whole_set) {
        char *out, expect[128];
        shmb_channel *ring;

        ck_assert_int_eq(shmb_open_channel(NULL, "ring", SHMB_RW, &ring), 0);
        ck_assert_int_eq(shmb_sem_post(ring, 1), 0);    /* the set's semaphore 2 */
        out = ctl_output("status ring");
        snprintf(expect, sizeof expect, "Semaphores: key 0x%08x, id %d, 3\n", RING_KEY, shmb_channel_sem_id(ring));
        ck_assert_msg(strstr(out, expect), "no \"%s\" in:\n%s", expect, out);
        ck_assert_msg(strstr(out, "\n    0       1       0       0 "), "the ring's own semaphore is not row 0:\n%s", out);
        ck_assert_msg(strstr(out, "\n    1       5       0       0 "), "row 1:\n%s", out);
        snprintf(expect, sizeof expect, "\n    2       8       0       0 %8d\n", (int) getpid());
        ck_assert_msg(strstr(out, expect), "row 2:\n%s", out);
        ck_assert_msg(!strstr(out, "\n    3 "), "a fourth row:\n%s", out);
        free(out);

        out = ctl_output("status");
        ck_assert_msg(strstr(out, "  1,5,8\n"), "ring's values in the table:\n%s", out);
        ck_assert_msg(strstr(out, "  3,4\n"), "pair's values in the table:\n%s", out);
        free(out);

        out = ctl_output("list");
        ck_assert_msg(strstr(out, "     3 ring  "), "ring's NSEMS in the list:\n%s", out);
        ck_assert_msg(strstr(out, "     1 ring  "), "bare's NSEMS in the list:\n%s", out);
        ck_assert_msg(strstr(out, "     2 raw   "), "pair's NSEMS in the list:\n%s", out);
        free(out);
        ck_assert_int_eq(shmb_close(ring), 0);
}
END_TEST

int main(void) {
        const TestGroup groups[] = {
                { "channel", CASE_TIMEOUT, { test_channel_getters_raw, test_channel_getters_ring } },
                { "null", CASE_TIMEOUT, { test_getters_on_null, test_status_getters_out_of_range } },
                { "access", CASE_TIMEOUT, { test_access_zero_and_out_of_range_refused } },
                { "nsems", CASE_TIMEOUT, { test_nsems_agree_raw_and_ring, test_shmbrokerctl_shows_whole_set } },
                { "status", CASE_TIMEOUT, { test_status_getters_match_kernel, test_status_unread_semaphores_are_enodata } },
                { "reload", CASE_TIMEOUT, { test_reload_result_getters } },
        };

        return test_main("abi", groups, sizeof groups / sizeof groups[0], setup, test_teardown);
}
