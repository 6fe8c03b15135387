/*
 * End-to-end tests of the state directory as a hostile local user would
 * try it: files planted under the daemon's names (owned by someone else, a
 * FIFO, a symlink, a pre-made ".new"), a directory others may write,
 * forged records that name other programs' objects, and derived keys
 * squatted in advance. Each test starts the real shmbrokerd in a private
 * IPC namespace and judges by what the kernel holds afterwards.
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/channel.h"
#include "daemon/state.h"
#include "tests/helpers.h"

#define CASE_TIMEOUT 60
#define NOBODY 65534

static const char *const one_channel = "[{\"name\": \"frames\", \"size\": 4096, \"semaphores\": [1, 0]}]";

static void write_file(const char *path, const char *text, mode_t mode, uid_t uid) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);

        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        ck_assert_int_eq(fchmod(fd, mode), 0);
        ck_assert_int_eq(fchown(fd, uid, uid), 0);
        close(fd);
}

static void state_file_path(char *buf, size_t size, const char *suffix) {
        snprintf(buf, size, "%s.%s", td.socket, suffix);
}

/* Another program's segment and set under key, made by this process (not the daemon). */
typedef struct Foreign {
        uint32_t key;
        int shm_id, sem_id;
} Foreign;

static Foreign foreign_objects(uint32_t key) {
        Foreign f = { .key = key };

        f.shm_id = shmget((key_t) key, 8192, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(f.shm_id, 0);
        f.sem_id = semget((key_t) key, 2, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(f.sem_id, 0);
        return f;
}

static void assert_foreign_intact(const Foreign *f) {
        struct shmid_ds ds;
        struct semid_ds sds;

        ck_assert_msg(shmctl(f->shm_id, IPC_STAT, &ds) == 0, "segment %d was removed: %s", f->shm_id, strerror(errno));
        ck_assert_uint_eq((uint32_t) ds.shm_perm.__key, f->key);
        ck_assert_msg(semctl(f->sem_id, 0, IPC_STAT, &sds) == 0, "set %d was removed: %s", f->sem_id, strerror(errno));
        ck_assert_uint_eq((uint32_t) sds.sem_perm.__key, f->key);
}

static void remove_foreign(const Foreign *f) {
        shmctl(f->shm_id, IPC_RMID, NULL);
        semctl(f->sem_id, 0, IPC_RMID);
}

/* Start, expecting a refusal whose log names `path` and says `why`; nothing made, nothing removed. */
static void assert_start_refused(const char *path, const char *why) {
        int status = 0;
        char *log;

        ck_assert_msg(!test_daemon_start(&td, &status, NULL), "the daemon started");
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit status %d", status);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, path), "the log does not name %s: %s", path, log);
        ck_assert_msg(strstr(log, why), "the log does not say \"%s\": %s", why, log);
        free(log);
}

/* The records a forger would write: the foreign objects, in both formats, with a plausible pid. */
static char *forged_records(const Foreign *f, pid_t claimed_pid) {
        char *text;

        ck_assert_int_ge(asprintf(&text,
                                  "# shmbroker state v1: objects this daemon created\n"
                                  "shm %u %d\nsem %u %d\npshm %u %d 8192\npsem %u 0 2\n"
                                  "shm %u %d %d 0 8192\nsem %u %d %d 0 2\npshm %u -1 %d 0 8192\npsem %u -1 %d 0 2\n",
                                  f->key, f->shm_id, f->key, f->sem_id, f->key, (int) claimed_pid, f->key,
                                  f->key, f->shm_id, (int) claimed_pid, f->key, f->sem_id, (int) claimed_pid,
                                  f->key, (int) claimed_pid, f->key, (int) claimed_pid),
                         0);
        return text;
}

/* Give the daemon (root's, 0600) state file these records, and start it. */
static void start_with_records(const char *text) {
        char path[400];

        state_file_path(path, sizeof path, "state");
        write_file(path, text, 0600, 0);
        test_daemon_write_config(&td, one_channel);
        test_start_ok();
}

/* A state file another user planted (with records naming root's objects) refuses the start. */
START_TEST(test_planted_state_file_refused) {
        Foreign f = foreign_objects(0x5151);
        char path[400], *text = forged_records(&f, getpid());

        state_file_path(path, sizeof path, "state");
        write_file(path, text, 0644, NOBODY);
        free(text);
        test_daemon_write_config(&td, one_channel);
        assert_start_refused(path, "is owned by uid 65534");
        assert_foreign_intact(&f);
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        remove_foreign(&f);
}
END_TEST

/* Our own file, but writable by others: as good as planted. */
START_TEST(test_writable_state_file_refused) {
        char path[400];

        state_file_path(path, sizeof path, "state");
        write_file(path, "", 0666, 0);
        test_daemon_write_config(&td, one_channel);
        assert_start_refused(path, "writable by group or others");
}
END_TEST

/* A directory others may write (like /tmp) cannot hold the state: anyone could plant or swap files. */
START_TEST(test_world_writable_dir_refused) {
        char dir[300], sock[330], *text;

        snprintf(dir, sizeof dir, "%s/public", td.dir);
        ck_assert_int_eq(mkdir(dir, 0755), 0);
        ck_assert_int_eq(chmod(dir, 01777), 0);
        snprintf(sock, sizeof sock, "%s/shmbroker.sock", dir);
        ck_assert_int_ge(asprintf(&text, "{\"version\": 1, \"socket\": \"%s\", \"channels\": %s}\n", sock, one_channel),
                         0);
        test_daemon_write_raw_config(&td, text);
        free(text);
        assert_start_refused(dir, "writable by group or others");
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

/* A directory of another user, even one nobody else can write, is not the daemon's to trust. */
START_TEST(test_foreign_state_dir_refused) {
        char dir[300];

        snprintf(dir, sizeof dir, "%s/state", td.dir);
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        ck_assert_int_eq(chown(dir, NOBODY, NOBODY), 0);
        test_daemon_write_config(&td, one_channel);
        ck_assert(!test_daemon_start(&td, NULL, "--state-dir", dir, NULL));
        char *log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, dir) && strstr(log, "is owned by uid 65534"), "%s", log);
        free(log);
}
END_TEST

/* A FIFO where the state file goes: refused at once, not a start blocked in read() forever. */
START_TEST(test_fifo_state_refused) {
        char path[400];

        state_file_path(path, sizeof path, "state");
        ck_assert_int_eq(mkfifo(path, 0600), 0);
        test_daemon_write_config(&td, one_channel);
        assert_start_refused(path, "is not a regular file");
}
END_TEST

/* A symlink planted at the lock, the state or the secret is never followed. */
START_TEST(test_symlinks_refused) {
        static const char *const names[] = { "lock", "state", "secret" };
        char path[400], target[400];
        struct stat st;

        snprintf(target, sizeof target, "%s/target", td.dir);
        write_file(target, "precious\n", 0600, 0);
        test_daemon_write_config(&td, one_channel);
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
                state_file_path(path, sizeof path, names[i]);
                (void) unlink(path);    /* the secret, made by the start before */
                ck_assert_int_eq(symlink(target, path), 0);
                assert_start_refused(path, "symbolic link");
                ck_assert_int_eq(unlink(path), 0);
        }
        ck_assert_int_eq(stat(target, &st), 0);
        ck_assert_int_eq(st.st_size, 9);
}
END_TEST

/* A state directory that is a symbolic link (to a directory of the daemon's own) is refused as one. */
START_TEST(test_symlinked_state_dir_refused) {
        char real[300], link_path[300];
        int status = 0;
        char *log;

        snprintf(real, sizeof real, "%s/real-state", td.dir);
        snprintf(link_path, sizeof link_path, "%s/state-link", td.dir);
        ck_assert_int_eq(mkdir(real, 0700), 0);
        ck_assert_int_eq(symlink(real, link_path), 0);
        test_daemon_write_config(&td, one_channel);
        ck_assert_msg(!test_daemon_start(&td, &status, "--state-dir", link_path, NULL), "the daemon started");
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "exit status %d", status);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, link_path) && strstr(log, "symbolic link"), "%s", log);
        free(log);
}
END_TEST

/*
 * A ".new" somebody placed beside the state file is never written through:
 * the daemon unlinks it and makes its own with O_EXCL, so the live state
 * file ends up the daemon's, 0600, and the planted inode keeps its bytes.
 */
START_TEST(test_planted_state_new_not_used) {
        char path[400], keep[400];
        struct stat st;
        int fd;

        state_file_path(path, sizeof path, "state.new");
        write_file(path, "planted\n", 0666, NOBODY);
        /* Keep the planted inode reachable, to look at it afterwards. */
        snprintf(keep, sizeof keep, "%s/planted", td.dir);
        ck_assert_int_eq(link(path, keep), 0);
        test_daemon_write_config(&td, one_channel);
        test_start_ok();

        state_file_path(path, sizeof path, "state");
        ck_assert_int_eq(lstat(path, &st), 0);
        ck_assert(S_ISREG(st.st_mode));
        ck_assert_uint_eq(st.st_uid, 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0600);
        ck_assert_int_eq(stat(keep, &st), 0);
        ck_assert_uint_eq(st.st_uid, NOBODY);
        ck_assert_int_eq(st.st_size, 8);
        ck_assert_uint_eq(st.st_nlink, 1);      /* the daemon unlinked its name */
        fd = open(keep, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        close(fd);
        test_daemon_stop_ok(&td);
}
END_TEST

/*
 * The daemon's own, well-kept state file holding records that name another
 * program's objects (as a crash can leave when ids are reused, or as a
 * forger would write them): older-format records prove nothing, and the
 * new records' creator pid or ctime do not match, so nothing is removed.
 */
START_TEST(test_forged_records_spare_foreign_objects) {
        Foreign f = foreign_objects(0x5252);
        char *text, *log;

        /* Claim a pid that is not the objects' creator: the daemon's own is not known in advance. */
        text = forged_records(&f, getpid() + 1);
        start_with_records(text);
        free(text);
        assert_foreign_intact(&f);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "key 0x00005252, id") && strstr(log, "cannot be proven ours"), "%s", log);
        ck_assert_msg(strstr(log, "Reclaimed 0 object(s)"), "%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        assert_foreign_intact(&f);
        remove_foreign(&f);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

static void make_segment_as_nobody(void *userdata) {
        const uint32_t *key = userdata;

        test_drop_privileges(65534, 65534, 0);
        _exit(shmget((key_t) *key, 8192, IPC_CREAT | IPC_EXCL | 0600) >= 0 ? 0 : 1);
}

/*
 * A record that names another user's segment with its true creator pid,
 * size and key (a pid the daemon's killed run may have had, reused): the
 * creator's uid is not the daemon's, so the segment is not provably ours
 * and stays.
 */
START_TEST(test_record_of_another_users_segment_spared) {
        uint32_t key = 0x5454;
        struct shmid_ds ds;
        char *text;
        pid_t pid;
        int id, status;

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                make_segment_as_nobody(&key);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child could not make the segment");
        id = shmget((key_t) key, 0, 0);
        ck_assert_int_ge(id, 0);
        ck_assert_int_eq(shmctl(id, IPC_STAT, &ds), 0);
        ck_assert_uint_eq(ds.shm_perm.cuid, 65534);
        ck_assert_int_eq(ds.shm_cpid, pid);
        ck_assert_int_ge(asprintf(&text, "shm %u %d %d %lld 8192\n", key, id, (int) pid, (long long) time(NULL) - 1), 0);
        start_with_records(text);
        free(text);
        ck_assert_msg(shmctl(id, IPC_STAT, &ds) == 0, "another user's segment %d was removed: %s", id, strerror(errno));
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmctl(id, IPC_RMID, NULL), 0);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
}
END_TEST

/* A record whose creator pid matches a segment's but whose set's ctime is older than the record: the set stays. */
START_TEST(test_set_older_than_its_record_spared) {
        Foreign f = foreign_objects(0x5353);
        char *text;

        /* The set was made now; a record claiming it was made in the future cannot be about it. */
        ck_assert_int_ge(asprintf(&text, "sem %u %d %d %lld 2\n", f.key, f.sem_id, (int) getpid(),
                                  (long long) time(NULL) + 3600), 0);
        start_with_records(text);
        free(text);
        assert_foreign_intact(&f);
        test_daemon_stop_ok(&td);
        remove_foreign(&f);
}
END_TEST

/*
 * A record whose key, id, creator uid and creator pid match a segment (a
 * pid reused by another of root's programs) but whose size does not: not
 * the segment the record is about, so it stays.
 */
START_TEST(test_segment_of_another_size_spared) {
        Foreign f = foreign_objects(0x5555);
        char *text;

        ck_assert_int_ge(asprintf(&text, "shm %u %d %d %lld 4096\n", f.key, f.shm_id, (int) getpid(),
                                  (long long) time(NULL) - 1), 0);
        start_with_records(text);
        free(text);
        assert_foreign_intact(&f);
        test_daemon_stop_ok(&td);
        assert_foreign_intact(&f);
        remove_foreign(&f);
}
END_TEST


/*
 * A record whose id, creator uid, creator pid and size match a segment
 * that has no key (IPC_PRIVATE) but is not marked removed: a live private
 * segment of a process that got the killed run's pid, not the recorded
 * segment after an ipcrm (which the kernel marks SHM_DEST). Not provably
 * ours, so it is neither removed nor counted as gone, and its contents
 * (where a ring's clients would be told of a removal) are not written.
 */
START_TEST(test_private_segment_not_marked_removed_spared) {
        char *text, *log, *addr, zero[4096] = { 0 };
        struct shmid_ds ds;
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);

        ck_assert_int_ge(id, 0);
        ck_assert_int_ge(asprintf(&text, "shm %u %d %d %lld 4096\n", 0x5656u, id, (int) getpid(),
                                  (long long) time(NULL) - 1), 0);
        start_with_records(text);
        free(text);
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "(0 already gone, 1 not provably ours"), "%s", log);
        free(log);
        ck_assert_msg(shmctl(id, IPC_STAT, &ds) == 0, "the private segment %d was removed: %s", id, strerror(errno));
        addr = shmat(id, NULL, SHM_RDONLY);
        ck_assert_ptr_ne(addr, (void *) -1);
        ck_assert_msg(memcmp(addr, zero, sizeof zero) == 0, "the private segment was written to");
        ck_assert_int_eq(shmdt(addr), 0);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmctl(id, IPC_RMID, NULL), 0);
}
END_TEST

/*
 * Intents (a set the killed run may have made, not recorded by id yet)
 * naming sets that were used: one set up by another process (its last pid
 * not the intent's), one operated on (semop) by the intent's own pid.
 * Both stay: a set the run made and never used would show neither.
 */
START_TEST(test_intents_of_used_sets_spared) {
        int set_up = semget(0x5757, 2, IPC_CREAT | IPC_EXCL | 0600), operated = semget(0x5858, 2, IPC_CREAT | IPC_EXCL | 0600);
        struct sembuf up = { .sem_num = 0, .sem_op = 1 };
        struct semid_ds sds;
        long long since = (long long) time(NULL) - 1;
        char *text;

        ck_assert_int_ge(set_up, 0);
        ck_assert_int_ge(operated, 0);
        ck_assert_int_eq(semctl(set_up, 0, SETVAL, 3), 0);
        ck_assert_int_eq(semop(operated, &up, 1), 0);
        ck_assert_int_ge(asprintf(&text, "psem %u -1 %d %lld 2\npsem %u -1 %d %lld 2\n", 0x5757u, (int) getpid() + 1,
                                  since, 0x5858u, (int) getpid(), since), 0);
        start_with_records(text);
        free(text);
        ck_assert_msg(semctl(set_up, 0, IPC_STAT, &sds) == 0, "the set another process set up was removed");
        ck_assert_msg(semctl(operated, 0, IPC_STAT, &sds) == 0, "the set that was operated on was removed");
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(semctl(set_up, 0, IPC_RMID), 0);
        ck_assert_int_eq(semctl(operated, 0, IPC_RMID), 0);
}
END_TEST

/*
 * A killed run's segment and set, recorded two minutes before they were
 * last set up: the set's ctime is past the minute its record alone
 * vouches for, but the segment of the same run and key (its creator pid
 * matches) is proven first, and vouches for the set: both are removed. A
 * set of that age recorded alone is not provably the run's, and stays.
 */
START_TEST(test_set_proven_by_its_segment_is_reclaimed) {
        Foreign f = foreign_objects(0x5959), alone = foreign_objects(0x5a5a);
        long long since = (long long) time(NULL) - 120;
        struct shmid_ds ds;
        struct semid_ds sds;
        char *text;

        /* The set first in the file: the segment is judged first all the same. */
        ck_assert_int_ge(asprintf(&text, "sem %u %d %d %lld 2\nshm %u %d %d %lld 8192\nsem %u %d %d %lld 2\n", f.key,
                                  f.sem_id, (int) getpid(), since, f.key, f.shm_id, (int) getpid(), since, alone.key,
                                  alone.sem_id, (int) getpid(), since), 0);
        start_with_records(text);
        free(text);
        ck_assert_msg(shmctl(f.shm_id, IPC_STAT, &ds) < 0, "the recorded segment %d was not reclaimed", f.shm_id);
        ck_assert_msg(semctl(f.sem_id, 0, IPC_STAT, &sds) < 0, "the recorded set %d was not reclaimed", f.sem_id);
        assert_foreign_intact(&alone);
        test_daemon_stop_ok(&td);
        remove_foreign(&alone);
}
END_TEST

/* The first 64 candidate keys of the old, public derivation (FNV-1a of "shmbroker:" NAME, attempt). */
static uint32_t public_key(const char *name, unsigned attempt) {
        uint32_t h = 2166136261u;

        for (const char *p = "shmbroker:"; *p; p++)
                h = (h ^ (uint8_t) *p) * 16777619u;
        for (const char *p = name; *p; p++)
                h = (h ^ (uint8_t) *p) * 16777619u;
        for (unsigned i = 0; i < 4; i++)
                h = (h ^ ((attempt >> (8 * i)) & 0xff)) * 16777619u;
        h &= 0x7fffffffu;
        return h ? h : 1;
}

/* Field `field` of channel "frames" in a list answer of td's daemon, on a connection of its own. */
static json_int_t frames_field(const char *field) {
        int fd = test_connect(td.socket);
        json_t *resp = test_request(fd, "{\"op\":\"list\"}");
        json_int_t v = test_jint(test_must_find(resp, "frames"), field);

        json_decref(resp);
        close(fd);
        return v;
}

static void squat_child(void *userdata) {
        const char *secret_path = userdata;
        int ok = 0;

        test_drop_privileges(NOBODY, NOBODY, 0);
        /* What a squatter would need first: the secret. */
        if (open(secret_path, O_RDONLY | O_CLOEXEC) >= 0 || errno != EACCES)
                _exit(2);
        for (unsigned i = 0; i < 64; i++)
                ok += semget((key_t) public_key("frames", i), 1, IPC_CREAT | IPC_EXCL | 0600) >= 0;
        _exit(ok == 64 ? 0 : 1);
}

/*
 * Another user takes every key anyone could compute for "frames" before the
 * daemon starts, and again before a reload adds "late": both are still made,
 * and under the same keys as across a restart (the secret is kept).
 */
START_TEST(test_squatted_keys_do_not_stop_channels) {
        char secret_path[400], *text;
        json_t *resp;
        uint32_t key;
        int fd, status;

        /* The secret exists before the squatter tries: from a first run. */
        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        key = (uint32_t) frames_field("shm_key");
        test_daemon_stop_ok(&td);

        state_file_path(secret_path, sizeof secret_path, "secret");
        status = test_in_child(squat_child, secret_path);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "squatter status %d", status);
        ck_assert_int_eq(test_ipcs_count("-s"), 64);

        test_start_ok();
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        ck_assert_uint_eq((uint32_t) test_jint(test_must_find(resp, "frames"), "shm_key"), key);
        json_decref(resp);

        /* A reload adding a channel whose public keys are squatted too. */
        ck_assert_int_ge(asprintf(&text, "[{\"name\": \"frames\", \"size\": 4096, \"semaphores\": [1, 0]},"
                                         " {\"name\": \"late\", \"size\": 4096}]"), 0);
        test_daemon_write_config(&td, text);
        free(text);
        for (unsigned i = 0; i < 64; i++)
                semget((key_t) public_key("late", i), 1, IPC_CREAT | IPC_EXCL | 0600);
        resp = test_request(fd, "{\"op\":\"reload\"}");
        test_assert_ok(resp);
        json_decref(resp);
        resp = test_request(fd, "{\"op\":\"list\"}");
        test_must_find(resp, "late");
        json_decref(resp);
        close(fd);
        test_daemon_stop_ok(&td);
        /* Only the squatter's sets are left. */
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 64 + 64);
}
END_TEST

/*
 * A crash whose state file is then lost (emptied here): the restart cannot
 * prove the old objects its own, so it makes the channel at the next key,
 * and the holders of the old ones no longer meet its new clients. The log
 * must say so, naming the key, the object and the key now used.
 */
START_TEST(test_lost_state_file_warns_of_held_key) {
        char path[400], want[128], *log;
        uint32_t key, now;
        int shm_id;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        key = (uint32_t) frames_field("shm_key");
        shm_id = (int) frames_field("shm_id");
        test_daemon_kill(&td, SIGKILL);
        state_file_path(path, sizeof path, "state");
        ck_assert_int_eq(truncate(path, 0), 0);

        test_start_ok();
        now = (uint32_t) frames_field("shm_key");
        ck_assert_uint_ne(now, key);
        log = test_daemon_log(&td);
        snprintf(want, sizeof want, "its key 0x%08" PRIx32 " is held by segment %d", key, shm_id);
        ck_assert_msg(strstr(log, want), "no warning \"%s\" in:\n%s", want, log);
        snprintf(want, sizeof want, "at key 0x%08" PRIx32 " instead", now);
        ck_assert_msg(strstr(log, want), "no \"%s\" in:\n%s", want, log);
        free(log);
        test_daemon_stop_ok(&td);
        /* The old objects are nobody's now: the test removes them, as the warning tells an admin to. */
        ck_assert_int_eq(shmctl(shm_id, IPC_RMID, NULL), 0);
        ck_assert_int_eq(semctl(semget((key_t) key, 0, 0), 0, IPC_RMID), 0);
}
END_TEST

/*
 * A channel's derived key at which another program holds a semaphore set
 * but no segment: the daemon makes the segment there, finds the set's key
 * taken and moves on to its next key; the segment it made at the first
 * one goes (no record would ever name it again).
 */
START_TEST(test_key_of_a_foreign_set_leaves_no_segment) {
        uint32_t key;
        int sem_id;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        key = (uint32_t) frames_field("shm_key");
        test_daemon_stop_ok(&td);
        sem_id = semget((key_t) key, 1, IPC_CREAT | IPC_EXCL | 0600);
        ck_assert_int_ge(sem_id, 0);
        test_start_ok();
        ck_assert_uint_ne((uint32_t) frames_field("shm_key"), key);
        ck_assert_msg(shmget((key_t) key, 0, 0) < 0, "a segment was left at key 0x%08x", key);
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(semctl(sem_id, 0, IPC_RMID), 0);
}
END_TEST

static void squat_key_as_nobody(void *userdata) {
        const uint32_t *key = userdata;

        test_drop_privileges(65534, 65534, 0);
        _exit(shmget((key_t) *key, 4096, IPC_CREAT | IPC_EXCL | 0600) >= 0 ? 0 : 1);
}

/*
 * list and status show a channel's derived key to every client: between a
 * clean stop and the next start another user may take it. The start moves
 * on to the next key, as for a leftover, but the log must name the other
 * user's segment as such, not send the admin after a lost state file.
 */
START_TEST(test_derived_key_taken_by_another_user_is_named_so) {
        char want[160], *log;
        uint32_t key, now;
        int status, shm_id;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        key = (uint32_t) frames_field("shm_key");
        test_daemon_stop_ok(&td);
        status = test_in_child(squat_key_as_nobody, &key);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "nobody could not take key 0x%08" PRIx32, key);
        shm_id = shmget((key_t) key, 0, 0);
        ck_assert_int_ge(shm_id, 0);

        test_start_ok();
        now = (uint32_t) frames_field("shm_key");
        ck_assert_uint_ne(now, key);
        log = test_daemon_log(&td);
        snprintf(want, sizeof want, "its key 0x%08" PRIx32 " is held by segment %d of another user (creator uid 65534",
                 key, shm_id);
        ck_assert_msg(strstr(log, want), "no \"%s\" in:\n%s", want, log);
        ck_assert_msg(!strstr(log, "state file was lost"), "another user's segment taken for a leftover:\n%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(shmctl(shm_id, IPC_RMID, NULL), 0);
}
END_TEST

/* The whole of a file (malloc'd, NUL-terminated). */
static char *file_text(const char *path) {
        char *text = NULL;
        size_t size = 0;
        FILE *f = fopen(path, "re"), *m = open_memstream(&text, &size);
        int c;

        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(m);
        while ((c = fgetc(f)) != EOF)
                fputc(c, m);
        fclose(f);
        fclose(m);
        return text;
}

/*
 * A record damaged between a crash and the restart (here: the segment's,
 * its key), of a channel the new config no longer has: the start
 * cannot prove that segment its own, so it stays; and the line must stay
 * in the state file (shmbrokerd(8): "What cannot be read stays recorded and
 * is tried again at the next start"), named in the log, also after a clean
 * stop, not be dropped by the start's rewrite.
 */
START_TEST(test_unreadable_record_stays_recorded) {
        char path[400], bad[256], *text, *line, *end, *log;
        int shm_id;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        shm_id = (int) frames_field("shm_id");
        test_daemon_kill(&td, SIGKILL);

        state_file_path(path, sizeof path, "state");
        text = file_text(path);
        line = strstr(text, "\nshm ");
        ck_assert_ptr_nonnull(line);
        line++;
        end = strchr(line, '\n');
        ck_assert_ptr_nonnull(end);
        /* "shm KEY ID PID SINCE SIZE": the key made unreadable, one byte more. */
        ck_assert_int_lt(end - line, (ptrdiff_t) sizeof bad - 2);
        snprintf(bad, sizeof bad, "shm ?%.*s", (int) (end - line - 4), line + 4);
        {
                char *damaged;

                /* One byte longer than the line it replaces: a new text, not an edit in place. */
                ck_assert_int_ge(asprintf(&damaged, "%.*s%s%s", (int) (line - text), text, bad, end), 0);
                write_file(path, damaged, 0600, 0);
                free(damaged);
        }
        free(text);

        test_daemon_write_config(&td, "[{\"name\": \"other\", \"size\": 4096}]");
        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "unreadable line: ") && strstr(log, bad), "the line is not named in:\n%s", log);
        free(log);
        text = file_text(path);
        ck_assert_msg(strstr(text, bad), "the start dropped the line:\n%s", text);
        free(text);
        test_daemon_stop_ok(&td);
        text = file_text(path);
        ck_assert_msg(strstr(text, bad), "the stop dropped the line:\n%s", text);
        free(text);
        /* Unproven, so untouched: the test removes it, as an admin would. */
        ck_assert_int_eq(shmctl(shm_id, IPC_RMID, NULL), 0);
        ck_assert_int_eq(unlink(path), 0);
}
END_TEST

/* The secret is made 0600 and kept; one others can read, or a damaged one, refuses the start. */
START_TEST(test_secret_checks) {
        char path[400];
        uint8_t a[16], b[16];
        struct stat st;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        test_daemon_stop_ok(&td);
        state_file_path(path, sizeof path, "secret");
        ck_assert_int_eq(lstat(path, &st), 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0600);
        ck_assert_uint_eq(st.st_uid, 0);
        test_read_secret(&td, a);
        test_start_ok();
        test_daemon_stop_ok(&td);
        test_read_secret(&td, b);
        ck_assert_mem_eq(a, b, sizeof a);

        ck_assert_int_eq(chmod(path, 0644), 0);
        assert_start_refused(path, "others may read or write it");
        write_file(path, "not hex\n", 0600, 0);
        assert_start_refused(path, "hex digits");
        /* Of the right length, one digit not hex: refused too, never read as some other secret. */
        write_file(path, "0123456789abcdef0123456789abcdeg\n", 0600, 0);
        assert_start_refused(path, "hex digits");
}
END_TEST

/* A start refused over its secret or its state file leaves no lock behind (the lock is removed on a clean stop). */
START_TEST(test_refused_start_leaves_no_lock) {
        char secret[400], state[400], lock[400];
        struct stat st;

        test_daemon_write_config(&td, one_channel);
        state_file_path(secret, sizeof secret, "secret");
        state_file_path(state, sizeof state, "state");
        state_file_path(lock, sizeof lock, "lock");

        write_file(secret, "not hex\n", 0600, 0);
        assert_start_refused(secret, "hex digits");
        ck_assert_msg(lstat(lock, &st) < 0 && errno == ENOENT, "a refused start left %s", lock);
        ck_assert_int_eq(unlink(secret), 0);

        ck_assert_int_eq(mkfifo(state, 0600), 0);
        assert_start_refused(state, "is not a regular file");
        ck_assert_msg(lstat(lock, &st) < 0 && errno == ENOENT, "a refused start left %s", lock);
        ck_assert_int_eq(unlink(state), 0);
}
END_TEST

/* --state-dir: the files go there (made 0700 when missing), none beside the socket. */
START_TEST(test_state_dir_option) {
        char dir[300], path[400];
        struct stat st;

        snprintf(dir, sizeof dir, "%s/state", td.dir);
        test_daemon_write_config(&td, one_channel);
        ck_assert(test_daemon_start(&td, NULL, "--state-dir", dir, NULL));
        ck_assert_int_eq(stat(dir, &st), 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0700);
        snprintf(path, sizeof path, "%s/shmbroker.sock.state", dir);
        ck_assert_int_eq(stat(path, &st), 0);
        snprintf(path, sizeof path, "%s/shmbroker.sock.secret", dir);
        ck_assert_int_eq(stat(path, &st), 0);
        state_file_path(path, sizeof path, "state");
        ck_assert_int_ne(stat(path, &st), 0);
        test_daemon_stop_ok(&td);
}
END_TEST

/* A child as nobody: exits 0 when it can connect to the socket, else with the errno. */
static void connect_as_nobody(void *userdata) {
        int fd;

        test_drop_privileges(NOBODY, NOBODY, 0);
        fd = test_try_connect(userdata);
        _exit(fd < 0 ? -fd : 0);
}

/*
 * The socket's directory, when the daemon makes it, is 0755 whatever the
 * umask it was started with (077 is common, and the shipped unit has
 * UMask=0077): clients of other users must reach the socket in it.
 */
START_TEST(test_socket_dir_made_0755_under_umask) {
        char dir[280];          /* td.dir and "/run", and room for td.socket's name in it */
        struct stat st;
        mode_t old;
        int status;
        bool ready;

        snprintf(dir, sizeof dir, "%s/run", td.dir);
        snprintf(td.socket, sizeof td.socket, "%s/shmbroker.sock", dir);
        test_daemon_write_config(&td, one_channel);
        old = umask(077);
        ready = test_daemon_start(&td, &status, NULL);
        umask(old);
        ck_assert_msg(ready, "the daemon did not start (status %d)", status);
        ck_assert_int_eq(stat(td.socket, &st), 0);
        ck_assert_int_eq(stat(dir, &st), 0);
        ck_assert_msg((st.st_mode & 07777) == 0755, "the socket's directory was made with mode %04o, not 0755",
                      (unsigned) (st.st_mode & 07777));
        status = test_in_child(connect_as_nobody, td.socket);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "another user cannot connect: %s",
                      strerror(WIFEXITED(status) ? WEXITSTATUS(status) : 0));
        test_daemon_stop_ok(&td);
}
END_TEST

/* Under systemd with RuntimeDirectory=, the state goes to $RUNTIME_DIRECTORY (the first it lists). */
START_TEST(test_runtime_directory_default) {
        char dir[300], env[700], path[400];
        struct stat st;

        snprintf(dir, sizeof dir, "%s/runtime", td.dir);
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        snprintf(env, sizeof env, "%s:%s/other", dir, td.dir);
        ck_assert_int_eq(setenv("RUNTIME_DIRECTORY", env, 1), 0);
        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        snprintf(path, sizeof path, "%s/shmbroker.sock.lock", dir);
        ck_assert_int_eq(stat(path, &st), 0);
        state_file_path(path, sizeof path, "lock");
        ck_assert_int_ne(stat(path, &st), 0);
        test_daemon_stop_ok(&td);
        unsetenv("RUNTIME_DIRECTORY");
}
END_TEST

/*
 * A daemon killed at any write to its state file during a reload that
 * adds channels leaves nothing the next start cannot account for: every
 * object it made is either recorded or covered by an intent written before
 * it was made (a start and a reload write a channel's ids with the next
 * channel's intents). ptrace stops the daemon at each write(2) into the
 * state file in turn, and SIGKILL ends it there; the next start takes over
 * or reclaims what it left, and its stop must leave ipcs empty.
 */
/*
 * Run the traced daemon until its k-th write(2) into its state file, and
 * SIGKILL it there: true. false when done() said the work ended first:
 * then it runs on, untraced, and is stopped, and must leave nothing.
 */
static bool kill_at_state_write(int k, bool (*done)(void)) {
        if (test_daemon_kill_at(&td, k, test_at_state_write, done))
                return true;
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
        return false;
}

/*
 * After a kill at state write k of `what`: the next start serves all four
 * channels, with exactly shm segments and sem sets (-1: not counted), and
 * its stop leaves ipcs empty.
 */
static void assert_next_start_cleans_up(int k, const char *what, size_t channels, int shm, int sem) {
        json_t *list;
        int fd;

        test_start_ok();
        fd = test_connect(td.socket);
        list = test_request(fd, "{\"op\":\"list\"}");
        ck_assert_uint_eq(json_array_size(json_object_get(list, "channels")), channels);
        json_decref(list);
        close(fd);
        if (shm >= 0)
                ck_assert_msg(test_ipcs_count("-m") == shm && test_ipcs_count("-s") == sem,
                              "killed at state write %d of the %s: the next start has %d segment(s) and %d set(s), "
                              "not %d and %d", k, what, test_ipcs_count("-m"), test_ipcs_count("-s"), shm, sem);
        test_daemon_stop_ok(&td);
        ck_assert_msg(test_ipcs_count("-m") == 0 && test_ipcs_count("-s") == 0,
                      "killed at state write %d of the %s: %d segment(s) and %d set(s) left", k, what,
                      test_ipcs_count("-m"), test_ipcs_count("-s"));
}

START_TEST(test_reload_killed_at_each_state_write_leaves_nothing) {
        static const char *const before = "[{\"name\": \"a\", \"size\": 4096}]";
        static const char *const after =
                "[{\"name\": \"a\", \"size\": 4096}, {\"name\": \"b\", \"size\": 4096, \"semaphores\": [1, 2]},"
                " {\"name\": \"c\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8},"
                " {\"name\": \"d\", \"size\": 8192}]";
        int k;

        for (k = 1;; k++) {
                test_daemon_write_config(&td, before);
                test_start_ok();
                test_daemon_write_config(&td, after);
                test_daemon_trace(&td);
                test_reload_async();
                if (!kill_at_state_write(k, test_reload_done))
                        break;          /* the reload wrote fewer than k times: every write was a kill point */
                test_reload_wait();
                assert_next_start_cleans_up(k, "reload", 4, -1, -1);
        }
        /* Three channels added: at least their intents and records were kill points. */
        ck_assert_int_ge(k, 4);
}
END_TEST

/* Four channels, one of each layout; five segments (the broadcast one has two) and four sets. */
static const char *const four_kinds =
        "[{\"name\": \"a\", \"size\": 4096, \"semaphores\": [1, 2]},"
        " {\"name\": \"r\", \"layout\": \"ring\", \"slot_size\": 64, \"slots\": 8},"
        " {\"name\": \"b\", \"layout\": \"broadcast\", \"slot_size\": 64, \"slots\": 8, \"subscribers\": 2},"
        " {\"name\": \"d\", \"size\": 8192}]";

/*
 * The same for a start: the daemon writes its state file before it makes
 * each channel's objects (their intents) and after (their ids, with the
 * next channel's intents), and rewrites it once. A SIGKILL at each of those
 * writes in turn; the next start must serve every channel with exactly the
 * objects they need (none of the killed run's left over), and its stop must
 * leave ipcs empty.
 */
START_TEST(test_start_killed_at_each_state_write_leaves_nothing) {
        int k;

        test_daemon_write_config(&td, four_kinds);
        for (k = 1;; k++) {
                test_daemon_spawn_traced(&td);
                if (!kill_at_state_write(k, test_td_ready))
                        break;          /* ready before its k-th write: every write of a start was a kill point */
                /* Five segments (b has two: data and table) and four sets: the killed run's are gone. */
                assert_next_start_cleans_up(k, "start", 4, 5, 4);
        }
        /* Four channels: at least the rewrite and each channel's intents were kill points. */
        ck_assert_int_ge(k, 6);
}
END_TEST

/*
 * The same for a stop: it defers its removals' cancellations and writes
 * them out in batches (state.h), each after what it cancels is gone. A
 * SIGKILL at each of its state writes in turn, from SIGTERM on, before the
 * write and after it (a cancellation written before its removal is lost
 * only by a kill after the write); the next start must serve every channel
 * with exactly the objects it needs (none of the killed run's left over)
 * and leave nothing at its own stop.
 */
/* Kill a stop of config's n channels (shm segments, sem sets) at each of its state writes in turn; how many there were. */
static int stop_killed_at_each_state_write(const char *config, size_t n, int shm, int sem) {
        int k;

        test_daemon_write_config(&td, config);
        for (k = 1;; k++) {
                int points = 0, status;
                bool killed = false, in_write = false;

                test_start_ok();
                test_daemon_trace(&td);
                ck_assert_int_eq(kill(td.pid, SIGTERM), 0);
                while (test_next_syscall_stop(td.pid)) {
                        struct __ptrace_syscall_info info;
                        bool point;

                        ck_assert_int_gt(ptrace(PTRACE_GET_SYSCALL_INFO, td.pid, sizeof info, &info), 0);
                        /* The stop after a state write's entry is its exit. */
                        point = in_write ||
                                (info.op == PTRACE_SYSCALL_INFO_ENTRY &&
                                 test_at_state_write(td.pid, info.entry.nr, info.entry.args[0]));
                        in_write = point && !in_write;
                        if (point && ++points == k) {
                                ck_assert_int_eq(kill(td.pid, SIGKILL), 0);
                                ck_assert_int_eq(waitpid(td.pid, &status, __WALL), td.pid);
                                ck_assert(WIFSIGNALED(status));
                                killed = true;
                                break;
                        }
                }
                td.pid = -1;
                if (!killed) {
                        /* It exited before its k-th write: every write of a stop was a kill point. */
                        ck_assert_msg(test_ipcs_count("-m") == 0 && test_ipcs_count("-s") == 0,
                                      "a stop left %d segment(s) and %d set(s)", test_ipcs_count("-m"),
                                      test_ipcs_count("-s"));
                        return k - 1;
                }
                assert_next_start_cleans_up(k, "stop", n, shm, sem);
        }
}

START_TEST(test_stop_killed_at_each_state_write_leaves_nothing) {
        /* The cancellations' write, at least, was two kill points. */
        ck_assert_int_ge(stop_killed_at_each_state_write(four_kinds, 4, 5, 4), 2);
}
END_TEST

/*
 * The same with enough channels that the stop writes its cancellations
 * out in the middle (per 64 KiB), not only at its end.
 */
START_TEST(test_stop_of_many_killed_at_each_state_write_leaves_nothing) {
        enum { MANY = 1500 };
        char *config = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&config, &len);

        ck_assert_ptr_nonnull(f);
        /* The four kinds, then MANY plain channels. */
        fprintf(f, "%.*s", (int) strlen(four_kinds) - 1, four_kinds);
        for (int i = 0; i < MANY; i++)
                fprintf(f, ", {\"name\": \"m%d\", \"size\": 4096}", i);
        fputs("]", f);
        ck_assert_int_eq(fclose(f), 0);
        /* Some 200 KB of cancellations: four writes (eight points) here; three at the least. */
        ck_assert_int_ge(stop_killed_at_each_state_write(config, 4 + MANY, 5 + MANY, 4 + MANY), 6);
        free(config);
}
END_TEST


/* Linked with -Wl,--wrap=reallocarray: the daemon code's calls come here; fail_allocs > 0 fails that many. */
void *__real_reallocarray(void *p, size_t n, size_t size);
void *__wrap_reallocarray(void *p, size_t n, size_t size);
static int fail_allocs;

void *__wrap_reallocarray(void *p, size_t n, size_t size) {
        if (fail_allocs > 0) {
                fail_allocs--;
                errno = ENOMEM;
                return NULL;
        }
        return __real_reallocarray(p, n, size);
}

static bool state_holds(State *s, const StateRecord *r) {
        StateRecord *v = NULL;
        size_t n = 0, skipped = 0;
        bool found = false;

        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        for (size_t i = 0; i < n; i++)
                found |= v[i].kind == r->kind && v[i].key == r->key && v[i].id == r->id;
        free(v);
        return found;
}

/*
 * An object that could not be removed stays recorded through every
 * rewrite (state_keep()). When even keeping its record in memory fails
 * (ENOMEM), a rewrite must not drop it: the file, which still holds it,
 * is then left as it is.
 */
START_TEST(test_record_kept_without_memory_survives_rewrite) {
        char msg[512];
        State *s = NULL;
        StateRecord live = { .kind = STATE_SHM, .key = 0x1234, .id = 7, .pid = 1, .since = 1, .size = 4096 },
                    stuck = { .kind = STATE_SHM, .key = 0x5678, .id = 8, .pid = 1, .since = 1, .size = 4096 };

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        ck_assert_int_eq(state_append_records(s, &live, 1, NULL, 0), 0);
        ck_assert_int_eq(state_append_records(s, &stuck, 1, NULL, 0), 0);
        /* Its removal failed, and so does keeping it. */
        fail_allocs = 1;
        ck_assert_int_eq(state_keep(s, &stuck, EPERM), -ENOMEM);
        fail_allocs = 0;
        /* Not among those named at the stop, but counted there. */
        ck_assert_uint_eq(state_n_kept(s), 0);
        ck_assert_uint_eq(state_n_lost(s), 1);
        /* The rewrite after a reload lists the live objects only. */
        (void) state_rewrite(s, &live, 1);
        ck_assert_msg(state_holds(s, &stuck), "the record of an object that could not be removed was dropped");
        ck_assert(state_holds(s, &live));
        state_free(s);
}
END_TEST

/* A read that runs out of memory as its table grows says so, and the next read gets every record. */
START_TEST(test_read_without_memory_fails_whole) {
        StateRecord *v = NULL;
        size_t n = 0, skipped = 0;
        char msg[512];
        State *s = NULL;

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        for (unsigned i = 0; i < 40; i++) {
                StateRecord r = { .kind = STATE_SHM, .key = i, .id = (int) i, .pid = 1, .since = 1, .size = 4096 };

                ck_assert_int_eq(state_append_records(s, &r, 1, NULL, 0), 0);
        }
        /* The table's first growth fails: the whole read does, and nothing is half-returned. */
        fail_allocs = 1;
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), -ENOMEM);
        fail_allocs = 0;
        ck_assert_ptr_null(v);
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_uint_eq(n, 40);
        free(v);
        state_free(s);
}
END_TEST

/*
 * A journal record of identity i among n: System V objects, intents, channels,
 * and posix files recorded with no owner (-1) or one of two owners; some
 * share a key, and three identities name each posix file.
 */
static StateRecord journal_record(unsigned i) {
        static const uid_t owners[] = { (uid_t) -1, 1000, 2000 };

        switch (i % 8) {
        case 0:
                return (StateRecord) { .kind = STATE_SHM, .key = 0x100 + i / 8, .id = (int) i, .pid = 1, .since = 1, .size = 4096 };
        case 1:
                return (StateRecord) { .kind = STATE_SEM, .key = 0x100 + i / 8, .id = (int) i, .pid = 1, .since = 1, .size = 2 };
        case 2:
                return (StateRecord) { .kind = STATE_SHM, .key = 0x100 + i / 8, .id = -1, .pending = true, .pid = 1,
                                       .since = (int64_t) i, .size = 4096 };
        case 4:
        case 5:
        case 6: {
                StateRecord r = { .kind = STATE_POSIX, .id = POSIX_ROLE_SEGMENT, .dev = 1, .ino = 100 + i / 8,
                                  .pid = 1, .since = 1, .size = 4096, .uid = owners[i % 8 - 4] };

                snprintf(r.name, sizeof r.name, "p%u", i / 8);
                return r;
        }
        default: {
                StateRecord r = { .kind = STATE_CHAN, .key = 0x100 + i / 8, .id = (int) i, .sem_id = (int) i + 1,
                                  .uid = (uid_t) -1 };

                snprintf(r.name, sizeof r.name, "c%u", i / 2);
                return r;
        }
        }
}

static bool journal_same(const StateRecord *a, const StateRecord *b) {
        return a->kind == b->kind && a->key == b->key && a->id == b->id && a->pending == b->pending &&
               a->since == b->since && a->sem_id == b->sem_id && a->dev == b->dev && a->ino == b->ino &&
               (a->kind != STATE_POSIX || a->uid == b->uid) && strcmp(a->name, b->name) == 0;
}

/* Whether a drop of b cancels a: the same record, where a posix file's owner matches when either names none. */
static bool journal_cancels(const StateRecord *a, const StateRecord *b) {
        StateRecord x = *a, y = *b;

        if (a->kind == STATE_POSIX && (a->uid == (uid_t) -1 || b->uid == (uid_t) -1))
                x.uid = y.uid;
        return journal_same(&x, &y);
}

/*
 * A drop in the state file cancels the latest add it matches, and only
 * that one; what is left keeps the file's order. A random journal of
 * repeated adds and drops (thousands, so that the reader's table grows and
 * is compacted many times) is read as a plain list model of it says.
 */
START_TEST(test_journal_drops_cancel_the_latest_matching_add) {
        enum { IDS = 97, OPS = 20000 };
        static StateRecord model[OPS];
        StateRecord *v = NULL;
        size_t n_model = 0, n = 0, skipped = 0;
        unsigned seed = 12345;
        char msg[512];
        State *s = NULL;

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        state_batch_begin(s);
        for (int op = 0; op < OPS; op++) {
                StateRecord r = journal_record((unsigned) rand_r(&seed) % IDS);
                bool add = rand_r(&seed) % 5 < 3;

                ck_assert_int_eq(add ? state_defer_records(s, &r, 1, NULL, 0) : state_defer_records(s, NULL, 0, &r, 1), 0);
                if (add) {
                        model[n_model++] = r;
                        continue;
                }
                for (size_t i = n_model; i-- > 0;)
                        if (journal_cancels(&model[i], &r)) {
                                memmove(&model[i], &model[i + 1], (n_model - i - 1) * sizeof *model);
                                n_model--;
                                break;
                        }
        }
        ck_assert_int_eq(state_batch_end(s), 0);
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_uint_eq(skipped, 0);
        ck_assert_uint_eq(n, n_model);
        for (size_t i = 0; i < n; i++)
                ck_assert_msg(journal_same(&v[i], &model[i]), "record %zu of %zu is not the model's", i, n);
        free(v);
        state_free(s);
}
END_TEST

/* Append text as it is to the state file of the unit tests' State ("unit.sock" in td.dir), as a writer would. */
static void append_to_unit_state(const char *text) {
        char path[400];
        int fd;

        snprintf(path, sizeof path, "%s/unit.sock.state", td.dir);
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
}

/* The state file's size now. */
static off_t unit_state_size(void) {
        char path[400];
        struct stat st;

        snprintf(path, sizeof path, "%s/unit.sock.state", td.dir);
        ck_assert_int_eq(stat(path, &st), 0);
        return st.st_size;
}

/*
 * state_line_max() counts format_record()'s fields by hand, for what a
 * reload reserves: every record at its widest, added and cancelled,
 * pending or not, must fit it, or a change of the format undercounts the
 * reservation unseen.
 */
START_TEST(test_widest_lines_fit_state_line_max) {
        StateRecord recs[4] = {
                { .kind = STATE_SHM, .key = UINT32_MAX, .id = INT_MIN, .pid = INT_MIN, .since = INT64_MIN,
                  .size = UINT64_MAX },
                { .kind = STATE_SEM, .key = UINT32_MAX, .id = -1, .pending = true, .pid = INT_MIN, .since = INT64_MIN,
                  .size = UINT64_MAX },
                { .kind = STATE_CHAN, .key = UINT32_MAX, .id = INT_MIN, .sem_id = INT_MIN, .fingerprint = UINT64_MAX },
                { .kind = STATE_POSIX, .id = INT_MIN, .pending = true, .pid = INT_MIN, .since = INT64_MIN,
                  .size = UINT64_MAX, .dev = UINT64_MAX, .ino = UINT64_MAX, .uid = (uid_t) -2 },
        };
        char msg[512];
        State *s = NULL;

        memset(recs[2].name, 'n', 64);
        memset(recs[3].name, 'n', 64);
        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++)
                for (int cancel = 0; cancel < 2; cancel++) {
                        bool posix = recs[i].kind == STATE_POSIX;
                        off_t before = unit_state_size(), len;

                        ck_assert_int_eq(state_append_records(s, cancel ? NULL : &recs[i], !cancel, cancel ? &recs[i] : NULL,
                                                              cancel), 0);
                        len = unit_state_size() - before;
                        ck_assert_msg((size_t) len <= state_line_max(posix, strlen(recs[i].name)),
                                      "record %zu%s: a line of %jd bytes, state_line_max() %zu", i,
                                      cancel ? " (cancelled)" : "", (intmax_t) len,
                                      state_line_max(posix, strlen(recs[i].name)));
                }
        state_free(s);
}
END_TEST

/* Every field of a read record as it was written. */
static void assert_record_eq(const StateRecord *got, const StateRecord *want, size_t i) {
        ck_assert_msg(got->kind == want->kind && got->key == want->key && got->id == want->id &&
                              got->pending == want->pending && !got->legacy && got->pid == want->pid &&
                              got->since == want->since && got->size == want->size && got->dev == want->dev &&
                              got->ino == want->ino && got->uid == want->uid && got->sem_id == want->sem_id &&
                              got->fingerprint == want->fingerprint && strcmp(got->name, want->name) == 0,
                      "record %zu: kind %d key %u id %d pid %d since %lld size %llu dev %llu ino %llu uid %d sem %d fp %llx "
                      "name %s", i, (int) got->kind, got->key, got->id, (int) got->pid, (long long) got->since,
                      (unsigned long long) got->size, (unsigned long long) got->dev, (unsigned long long) got->ino,
                      (int) got->uid, got->sem_id, (unsigned long long) got->fingerprint, got->name);
}

/*
 * Records at the edges of their fields' ranges read back exactly; a line
 * with a field past its range is unreadable (it stays in the file, as any
 * such line), not read as another record. The reader once took an id of
 * 2^32 as id 0, a key of 2^32 as key 0, and a 17-digit fingerprint as 16
 * digits and a channel named by the 17th.
 */
START_TEST(test_records_at_their_limits_read_back_exactly) {
        static const char *const out_of_range[] = {
                "shm 5 4294967296 1 0 4096\n",                            /* id past INT_MAX */
                "sem 4294967296 3 1 0 2\n",                               /* key past 32 bits */
                "chan 1 2 3 fffffffffffffffff name\n",                    /* 17 hex digits */
                "shm 5 3 1 9223372036854775808 4096\n",                   /* since past INT64_MAX */
                "posix 0 18446744073709551616 1 2 0 4096 name\n",         /* dev past 64 bits */
                "shm 5 3 1 0 -4096\n",                                    /* a negative size */
        };
        StateRecord want[5] = {
                { .kind = STATE_SHM, .key = UINT32_MAX, .id = INT_MAX, .pid = INT_MAX, .since = INT64_MAX,
                  .size = UINT64_MAX, .uid = (uid_t) -1 },
                { .kind = STATE_SEM, .key = 0, .id = -1, .pending = true, .pid = 1, .since = 0, .size = 1,
                  .uid = (uid_t) -1 },
                { .kind = STATE_CHAN, .key = 7, .id = INT_MAX, .sem_id = 0, .fingerprint = UINT64_MAX, .uid = (uid_t) -1 },
                { .kind = STATE_POSIX, .id = -2, .pending = true, .dev = UINT64_MAX, .ino = UINT64_MAX, .pid = 2,
                  .since = INT64_MAX, .size = UINT64_MAX, .uid = 4294967294u },
                { .kind = STATE_POSIX, .id = 1, .dev = 0, .ino = 1, .pid = 3, .since = 0, .size = 0, .uid = (uid_t) -1 },
        };
        StateRecord *v = NULL;
        size_t n = 0, skipped = 0;
        char msg[512];
        State *s = NULL;

        memset(want[2].name, 'c', 64);
        strcpy(want[3].name, "p");
        strcpy(want[4].name, "q-0.9_Z");
        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        for (size_t i = 0; i < ELEMENTSOF(want); i++)
                ck_assert_int_eq(state_append_records(s, &want[i], 1, NULL, 0), 0);
        for (size_t i = 0; i < ELEMENTSOF(out_of_range); i++)
                append_to_unit_state(out_of_range[i]);

        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_msg(n == ELEMENTSOF(want), "%zu records read, not %zu", n, ELEMENTSOF(want));
        for (size_t i = 0; i < n; i++)
                assert_record_eq(&v[i], &want[i], i);
        ck_assert_uint_eq(skipped, ELEMENTSOF(out_of_range));
        free(v);
        state_free(s);
}
END_TEST

/*
 * A drop cancels the record it names, not one that differs from it in a
 * field the drop states: of System V objects recorded under one key with
 * other ids, of System V intents under one key or of posix intents of one
 * file whose maker, time or size differ, or of recorded posix files of one
 * name with other inodes, the ones named go, although the others were added after them (a
 * drop takes the latest add it matches). Many of each, so that a drop and
 * a later add it must spare share a bucket of the reader's index.
 */
static StateRecord one_field_record(unsigned group, unsigned i) {
        StateRecord r = { .kind = STATE_POSIX, .id = POSIX_ROLE_SEGMENT, .pending = true, .pid = 10, .since = 100,
                          .size = 4096, .uid = (uid_t) -1 };

        switch (group) {
        case 0:
        case 1:
                return (StateRecord) { .kind = group == 0 ? STATE_SHM : STATE_SEM, .key = 0x77, .id = (int) i, .pid = 1,
                                       .since = 1, .size = group == 0 ? 4096 : 2, .uid = (uid_t) -1 };
        case 2:
                r.pid = 10 + (pid_t) i;
                break;
        case 3:
                r.since = 100 + i;
                break;
        case 4:
                r.size = 4096 + i;
                break;
        case 5:
        case 6:
        case 7:
                /* System V intents under one key: made by another pid, at another time, of another size. */
                return (StateRecord) { .kind = group == 6 ? STATE_SEM : STATE_SHM, .key = 0x78, .id = -1,
                                       .pending = true, .pid = group == 5 ? 10 + (pid_t) i : 10,
                                       .since = group == 6 ? 100 + i : 100,
                                       .size = group == 7 ? 4096 + i : group == 6 ? 2 : 4096, .uid = (uid_t) -1 };
        default:
                /* Recorded files of one name and device: other inodes (a file replaced under its name). */
                r.pending = false;
                r.dev = 5;
                r.ino = 1000 + i;
                break;
        }
        snprintf(r.name, sizeof r.name, "p%u", group);
        return r;
}

START_TEST(test_journal_drop_spares_a_record_differing_in_one_field) {
        enum { GROUPS = 9, PER_GROUP = 256 };
        StateRecord *v = NULL, r;
        size_t n = 0, skipped = 0;
        char msg[512];
        State *s = NULL;

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        for (unsigned g = 0; g < GROUPS; g++)
                for (unsigned i = 0; i < PER_GROUP; i++) {
                        r = one_field_record(g, i);
                        ck_assert_int_eq(state_append_records(s, &r, 1, NULL, 0), 0);
                }
        /* The older half of each group is dropped. */
        for (unsigned g = 0; g < GROUPS; g++)
                for (unsigned i = 0; i < PER_GROUP / 2; i++) {
                        r = one_field_record(g, i);
                        ck_assert_int_eq(state_append_records(s, NULL, 0, &r, 1), 0);
                }

        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_uint_eq(skipped, 0);
        ck_assert_msg(n == GROUPS * PER_GROUP / 2, "%zu records read, not %d", n, GROUPS * PER_GROUP / 2);
        for (size_t i = 0; i < n; i++) {
                r = one_field_record((unsigned) (i / (PER_GROUP / 2)), (unsigned) (i % (PER_GROUP / 2) + PER_GROUP / 2));
                assert_record_eq(&v[i], &r, i);
        }
        free(v);
        state_free(s);
}
END_TEST

/*
 * state.h: a last line cut short by a kill "is dropped, neither read nor
 * kept". It is dropped from what state_read() returns, but it stays at the
 * end of the file, and the daemon appends to that file before its first
 * rewrite (a taken-over posix channel's new owner: posix.c record_owner()
 * writes the moved record and the old one's cancellation). The first
 * appended line is then glued to the cut one: the moved record becomes an
 * unreadable line while the cancellation after it still cancels the old
 * record, so a kill before the rewrite leaves the file recorded nowhere.
 */
START_TEST(test_append_after_a_cut_line_is_read_back) {
        static const char cut[] = "-pshm 7 -1 12";     /* a cancellation cut by a kill: no newline */
        StateRecord old = { .kind = STATE_POSIX, .id = POSIX_ROLE_SEGMENT, .dev = 5, .ino = 77, .pid = 3,
                            .since = 100, .size = 4096, .uid = (uid_t) -1 }, moved;
        StateRecord *v = NULL;
        size_t n = 0, skipped = 0;
        char msg[512];
        State *s = NULL;

        strcpy(old.name, "solo");
        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        ck_assert_int_eq(state_append_records(s, &old, 1, NULL, 0), 0);
        append_to_unit_state(cut);

        /* The start reads the file: the cut line is dropped. */
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_ptr_nonnull(state_cut_line(s));
        free(v);
        v = NULL;

        /* Then gives the file another owner, as record_owner() records it. */
        moved = old;
        moved.uid = 1000;
        old.uid = 0;
        ck_assert_int_eq(state_append_records(s, &moved, 1, &old, 1), 0);

        /* A kill here: the next start must find the file recorded, under its new owner. */
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_msg(n == 1 && v[0].kind == STATE_POSIX && v[0].uid == 1000,
                      "%zu record(s) read (%zu line(s) unreadable): the moved record was glued to the cut line", n,
                      skipped);
        ck_assert_uint_eq(skipped, 0);
        free(v);
        state_free(s);
}
END_TEST

/* The same for a cut line that begins as a comment does: its "#" does not spare it the cut. */
START_TEST(test_append_after_a_cut_comment_is_read_back) {
        StateRecord rec = { .kind = STATE_SHM, .key = 7, .id = 3, .pid = 3, .since = 100, .size = 4096 };
        StateRecord *v = NULL;
        size_t n = 0, skipped = 0;
        char msg[512];
        State *s = NULL;

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        append_to_unit_state("# shmbroker st");
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_ptr_nonnull(state_cut_line(s));
        free(v);
        v = NULL;
        ck_assert_int_eq(state_append_records(s, &rec, 1, NULL, 0), 0);
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_msg(n == 1 && skipped == 0, "%zu record(s) read (%zu unreadable): the record was glued to the cut "
                      "comment", n, skipped);
        free(v);
        state_free(s);
}
END_TEST

/*
 * The first format's intent, "pshm KEY STAMP SIZE" (ee61196: STAMP the
 * creator pid, SIZE the segment's size as PRIu64), of a segment of 2 GiB
 * or more: read as legacy (named, settled), as the sscanf() reader did, not
 * left as an unreadable line in the file for ever.
 */
START_TEST(test_first_format_intent_of_a_large_segment_is_legacy) {
        static const char line[] = "pshm 1234 4242 3221225472\n";
        StateRecord *v = NULL;
        size_t n = 0, skipped = 0;
        char msg[512];
        State *s = NULL;

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        append_to_unit_state(line);
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_msg(skipped == 0 && n == 1, "%zu read, %zu unreadable", n, skipped);
        ck_assert(v[0].kind == STATE_SHM && v[0].pending && v[0].legacy && v[0].key == 1234);
        free(v);
        state_free(s);
}
END_TEST

/*
 * Reading a journal costs time in proportion to its lines: the stop reads
 * the whole file to see whether anything is left, and a crash restart
 * reads it before it adopts. Each drop was looked for from the end, and
 * the records after its add moved down: adds of 300000 records, then
 * their drops in the same order, took minutes (100000 took 35 s; the stop
 * of 16000 channels 6.7 s), far past the case's timeout. Now about a
 * second.
 */
START_TEST(test_journal_of_many_records_reads_in_linear_time) {
        enum { N = 300000 };
        StateRecord *v = NULL;
        size_t n = 1, skipped = 0;
        char msg[512];
        State *s = NULL;

        ck_assert_msg(state_open(td.dir, "unit.sock", &s, msg, sizeof msg) == 0, "%s", msg);
        state_batch_begin(s);
        for (int drop = 0; drop < 2; drop++)
                for (unsigned i = 0; i < N; i++) {
                        StateRecord r = { .kind = STATE_SHM, .key = i, .id = (int) i, .pid = 1, .since = 1, .size = 4096 };

                        ck_assert_int_eq(drop ? state_defer_records(s, NULL, 0, &r, 1) : state_defer_records(s, &r, 1, NULL, 0), 0);
                }
        ck_assert_int_eq(state_batch_end(s), 0);
        ck_assert_int_eq(state_read(s, &v, &n, &skipped), 0);
        ck_assert_uint_eq(n, 0);
        ck_assert_uint_eq(skipped, 0);
        free(v);
        state_free(s);
}
END_TEST

/* Start one_channel, SIGKILL the daemon: its state file's path in path, and its text (malloc'd). */
/*
 * Two runs' records of one channel, both objects live and provably the
 * daemon's (a run that lost its state file made the channel at its next
 * key; the first run's lines came back after it): the next start takes
 * one of them over, once, and reclaims the other.
 */
START_TEST(test_two_records_of_a_channel_adopt_one) {
        char path[400], *first, *second, *log;
        uint32_t key0, key1;
        int fd, n = 0;
        json_t *resp, *v;
        size_t i;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        key0 = (uint32_t) frames_field("shm_key");
        test_daemon_kill(&td, SIGKILL);
        state_file_path(path, sizeof path, "state");
        first = file_text(path);
        ck_assert_ptr_nonnull(first);
        ck_assert_int_eq(truncate(path, 0), 0);
        test_start_ok();
        key1 = (uint32_t) frames_field("shm_key");
        ck_assert_uint_ne(key1, key0);
        test_daemon_kill(&td, SIGKILL);
        second = file_text(path);
        ck_assert_ptr_nonnull(second);
        /* The second run's records, then the first's. */
        {
                char *both = NULL;

                ck_assert_int_ge(asprintf(&both, "%s%s", second, first), 0);
                write_file(path, both, 0600, 0);
                free(both);
        }
        free(first);
        free(second);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel frames"), "frames was not taken over:\n%s", log);
        free(log);
        fd = test_connect(td.socket);
        resp = test_request(fd, "{\"op\":\"list\"}");
        json_array_foreach(json_object_get(resp, "channels"), i, v)
                n += streq(test_jstr(v, "name"), "frames");
        ck_assert_msg(n == 1, "frames is listed %d times", n);
        json_decref(resp);
        close(fd);
        ck_assert_int_eq(test_ipcs_count("-m"), 1);
        ck_assert_int_eq(test_ipcs_count("-s"), 1);
        test_daemon_stop_ok(&td);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

static char *killed_run_state(char *path, size_t size) {
        char *text;

        test_daemon_write_config(&td, one_channel);
        test_start_ok();
        test_daemon_kill(&td, SIGKILL);
        state_file_path(path, size, "state");
        text = file_text(path);
        ck_assert_ptr_nonnull(text);
        return text;
}

/* Cut the file at path to its first len bytes, as a kill in the middle of a write leaves it. */
static void truncate_to(const char *path, off_t len) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);

        ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
        ck_assert_int_eq(ftruncate(fd, len), 0);
        close(fd);
}

/*
 * The daemon writes a channel's ids and the cancellations of its intents
 * in one write() (state.c: "a kill can cut it only at a page boundary").
 * A SIGKILL inside that write, at a page boundary that falls in the
 * cancellations, leaves the channel's complete records followed by a cut
 * "-pshm" line: both intents stay live. The next start takes the channel
 * over; the intents, found by their key, name those very objects, and
 * must not have them removed under the clients of a channel it took over
 * (shmbrokerd(8), CRASH RECLAIM: "clients still attached keep working").
 */
START_TEST(test_cut_cancellations_spare_the_taken_over_channel) {
        char path[400], *text, *cut, *log;
        unsigned key;
        int shm_id, sem_id;
        struct shmid_ds ds;
        struct semid_ds sds;

        text = killed_run_state(path, sizeof path);
        ck_assert_ptr_nonnull(cut = strstr(text, "\nchan "));
        ck_assert_int_eq(sscanf(cut, "\nchan %u %d %d", &key, &shm_id, &sem_id), 3);
        /* Cut inside the first cancellation, as a kill at a page boundary there would. */
        ck_assert_ptr_nonnull(cut = strstr(cut, "\n-pshm "));
        truncate_to(path, cut - text + 9);
        free(text);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "Took over channel frames"), "%s", log);
        ck_assert_msg(shmctl(shm_id, IPC_STAT, &ds) == 0 && !(ds.shm_perm.mode & SHM_DEST),
                      "the taken-over segment %d was removed; the log: %s", shm_id, log);
        ck_assert_msg(semctl(sem_id, 0, IPC_STAT, &sds) == 0, "the taken-over set %d was removed: %s; the log: %s",
                      sem_id, strerror(errno), log);
        free(log);
}
END_TEST

/*
 * A kill cuts the daemon's own write, and only the last line can be cut
 * (writes are appended whole, one at a time, and the kill ends them). Such
 * a line is the killed run's, and what it recorded is covered by what came
 * before it (an intent before its objects, ids before the cancellation of
 * their intents): the next start drops it with a notice, not as a line it
 * cannot read, which stayed in the file for ever and kept the stop from
 * removing the state files.
 */
START_TEST(test_cut_last_line_is_dropped) {
        char path[400], *text, *cut, *log;
        struct stat st;

        text = killed_run_state(path, sizeof path);
        /* In the middle of the last line, whatever it is. */
        ck_assert_ptr_nonnull(cut = strrchr(text, '\n'));
        *cut = 0;
        ck_assert_ptr_nonnull(cut = strrchr(text, '\n'));
        truncate_to(path, cut - text + 6);
        free(text);

        test_start_ok();
        log = test_daemon_log(&td);
        ck_assert_msg(strstr(log, "cut short") && !strstr(log, "cannot read"), "%s", log);
        free(log);
        test_daemon_stop_ok(&td);
        ck_assert_msg(stat(path, &st) < 0 && errno == ENOENT, "the stop left %s", path);
        state_file_path(path, sizeof path, "lock");
        ck_assert_msg(stat(path, &st) < 0 && errno == ENOENT, "the stop left %s", path);
        ck_assert_int_eq(test_ipcs_count("-m"), 0);
        ck_assert_int_eq(test_ipcs_count("-s"), 0);
}
END_TEST

int main(void) {
        const TestGroup groups[] = {
                { "planted", CASE_TIMEOUT,
                  { test_planted_state_file_refused, test_writable_state_file_refused, test_world_writable_dir_refused,
                    test_foreign_state_dir_refused, test_fifo_state_refused, test_symlinks_refused,
                    test_symlinked_state_dir_refused,
                    test_planted_state_new_not_used } },
                { "forged", CASE_TIMEOUT, { test_forged_records_spare_foreign_objects, test_set_older_than_its_record_spared,
                                            test_two_records_of_a_channel_adopt_one,
                                            test_record_of_another_users_segment_spared,
                                            test_segment_of_another_size_spared,
                                            test_private_segment_not_marked_removed_spared,
                                            test_key_of_a_foreign_set_leaves_no_segment,
                                            test_intents_of_used_sets_spared,
                                            test_set_proven_by_its_segment_is_reclaimed } },
                { "keys", CASE_TIMEOUT, { test_squatted_keys_do_not_stop_channels, test_lost_state_file_warns_of_held_key,
                                          test_derived_key_taken_by_another_user_is_named_so,
                                          test_widest_lines_fit_state_line_max,
                           test_unreadable_record_stays_recorded,
                           test_secret_checks, test_refused_start_leaves_no_lock, test_state_dir_option,
                           test_runtime_directory_default, test_socket_dir_made_0755_under_umask } },
                { "crash", CASE_TIMEOUT, { test_reload_killed_at_each_state_write_leaves_nothing,
                                           test_start_killed_at_each_state_write_leaves_nothing,
                                           test_stop_killed_at_each_state_write_leaves_nothing,
                                           test_stop_of_many_killed_at_each_state_write_leaves_nothing,
                                           test_cut_cancellations_spare_the_taken_over_channel,
                                           test_cut_last_line_is_dropped } },
                { "memory", CASE_TIMEOUT, { test_record_kept_without_memory_survives_rewrite, test_read_without_memory_fails_whole } },
                { "journal", CASE_TIMEOUT, { test_journal_drops_cancel_the_latest_matching_add,
                                             test_journal_of_many_records_reads_in_linear_time,
                                             test_records_at_their_limits_read_back_exactly,
                                             test_append_after_a_cut_line_is_read_back,
                                             test_append_after_a_cut_comment_is_read_back,
                                             test_first_format_intent_of_a_large_segment_is_legacy,
                                             test_journal_drop_spares_a_record_differing_in_one_field } },
        };

        return test_main("state", groups, sizeof groups / sizeof groups[0], test_setup, test_teardown);
}
