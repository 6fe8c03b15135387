/*
 * Crash reclaim (see reclaim.h). Segments are judged first, because only
 * they carry their creator's pid; a set whose segment was proven ours in
 * the same pass needs less proof of its own.
 */

#include <errno.h>
#include <stdlib.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/ipc-stat.h"
#include "daemon/log.h"
#include "daemon/posix.h"
#include "daemon/reclaim.h"
#include "daemon/self.h"
#include "proto/broadcast.h"
#include "proto/ring.h"

/* How long after its intent an unrecorded set may have been made (or last set up). */
#define INTENT_WINDOW_SEC 60

/* shm_is_ours(): the recorded segment, removed by someone else while still attached. */
#define SHM_REMOVED_ATTACHED 2

/*
 * 1 provably ours, 0 not provably ours, SHM_REMOVED_ATTACHED, or a negative
 * errno (-ENOENT: no such object). A segment removed (an ipcrm after the
 * crash) while clients still have it attached lives on with the key
 * IPC_PRIVATE; its id, creator and size still say it is the one recorded.
 */
static int shm_is_ours(const StateRecord *rec, int id) {
        struct shmid_ds ds;
        int r;

        r = ipc_stat_shm(id, &ds);
        if (r == -EINVAL || r == -EIDRM)
                return -ENOENT;
        if (r < 0)
                return r;
        if (ds.shm_perm.cuid != self_euid() || ds.shm_cpid != rec->pid || ds.shm_segsz != rec->size)
                return 0;
        if ((uint32_t) ds.shm_perm.__key == rec->key)
                return 1;
        return !rec->pending && ds.shm_perm.__key == IPC_PRIVATE && (ds.shm_perm.mode & SHM_DEST) ?
               SHM_REMOVED_ATTACHED : 0;
}

/*
 * A set carries no creator pid. It is ours when its key, creator uid and
 * count match and its ctime (set by our SETALL and IPC_SET, moments after
 * creation, and later only by IPC_SET, SETVAL or SETALL) is either within
 * the minute after the record's time, or later than that while the segment
 * its run made under the same key was proven ours (`paired`).
 */
static int sem_is_ours(const StateRecord *rec, int id, bool paired) {
        struct semid_ds ds;
        int r, last_pid;

        r = ipc_stat_sem(id, &ds);
        if (r == -EINVAL || r == -EIDRM)
                return -ENOENT;
        if (r < 0)
                return r;
        if ((uint32_t) ds.sem_perm.__key != rec->key || ds.sem_perm.cuid != self_euid() ||
            ds.sem_nsems != rec->size || ds.sem_ctime < rec->since)
                return 0;
        if (!paired && ds.sem_ctime > rec->since + INTENT_WINDOW_SEC)
                return 0;
        if (!rec->pending)
                return 1;
        /* Made, perhaps set up, but never used: SETALL leaves our pid, semop another's. */
        if (ds.sem_otime != 0)
                return 0;
        last_pid = semctl(id, 0, GETPID);
        if (last_pid < 0)
                return errno == EINVAL || errno == EIDRM ? -ENOENT : -errno;
        return last_pid == 0 || last_pid == rec->pid;
}

/* Runs (pid and key) whose segment was proven ours in this pass: their sets may be too. */
typedef struct Proven {
        struct {
                uint32_t key;
                pid_t pid;
        } *v;
        size_t n;
} Proven;

static bool proven_has(const Proven *p, uint32_t key, pid_t pid) {
        for (size_t i = 0; i < p->n; i++)
                if (p->v[i].key == key && p->v[i].pid == pid)
                        return true;
        return false;
}

/*
 * The objects this start took over (records marked adopted): sorted System
 * V objects (kind and id) and posix files (device and inode). A record
 * that names one of them (an intent whose cancellation the file lost, or a
 * second record of it) is settled without a touch: it must not remove what
 * a channel's clients still use.
 */
typedef struct Taken {
        uint64_t *ids;                  /* kind << 32 | id */
        size_t n_ids;
        struct { uint64_t dev, ino; } *files;
        size_t n_files;
} Taken;

/* A record of an object taken over: untouched, and counted nowhere. */
#define TAKEN_OVER 3

static int cmp_u64(const void *a, const void *b) {
        return CMP(*(const uint64_t *) a, *(const uint64_t *) b);
}

static int cmp_file(const void *a, const void *b) {
        const uint64_t *x = a, *y = b;

        return CMP(x[0], y[0]) ?: CMP(x[1], y[1]);
}

static uint64_t taken_id(StateKind kind, int id) {
        return (uint64_t) kind << 32 | (uint32_t) id;
}

static int taken_make(const StateRecord *v, size_t n, Taken *ret) {
        Taken t = { .ids = calloc(n ?: 1, sizeof *t.ids), .files = calloc(n ?: 1, sizeof *t.files) };

        if (!t.ids || !t.files) {
                free(t.ids);
                free(t.files);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                if (!v[i].adopted || v[i].pending)
                        continue;
                if (v[i].kind == STATE_SHM || v[i].kind == STATE_SEM)
                        t.ids[t.n_ids++] = taken_id(v[i].kind, v[i].id);
                else if (v[i].kind == STATE_POSIX) {
                        t.files[t.n_files].dev = v[i].dev;
                        t.files[t.n_files++].ino = v[i].ino;
                }
        }
        qsort(t.ids, t.n_ids, sizeof *t.ids, cmp_u64);
        qsort(t.files, t.n_files, sizeof *t.files, cmp_file);
        *ret = t;
        return 0;
}

static bool taken_has_id(const Taken *t, StateKind kind, int id) {
        uint64_t k = taken_id(kind, id);

        return bsearch(&k, t->ids, t->n_ids, sizeof *t->ids, cmp_u64) != NULL;
}

static bool taken_has_file(uint64_t dev, uint64_t ino, void *userdata) {
        const Taken *t = userdata;
        uint64_t k[2] = { dev, ino };

        return bsearch(k, t->files, t->n_files, sizeof *t->files, cmp_file) != NULL;
}

static int prove(const StateRecord *rec, bool paired) {
        return rec->kind == STATE_SHM ? shm_is_ours(rec, rec->id) : sem_is_ours(rec, rec->id, paired);
}

int reclaim_prove(const StateRecord *rec, bool paired) {
        int r = prove(rec, paired);

        /* Removed already: nothing to take over. */
        return r == SHM_REMOVED_ATTACHED ? -ENOENT : r;
}

/* Find the object a record names (by id, or an intent's by key) and judge it; TAKEN_OVER: one taken over. */
static int record_is_ours(StateRecord *rec, const Proven *proven, const Taken *taken) {
        if (rec->pending) {
                int id = rec->kind == STATE_SHM ? shmget((key_t) rec->key, 0, 0) : semget((key_t) rec->key, 0, 0);

                if (id < 0)
                        return errno == ENOENT ? -ENOENT : -errno;
                rec->id = id;
        }
        if (taken_has_id(taken, rec->kind, rec->id))
                return TAKEN_OVER;      /* settled: the record is not kept, so its id need not go back */
        return prove(rec, proven_has(proven, rec->key, rec->pid));
}

static void log_unproven(const StateRecord *rec) {
        log_warning("The recorded %s with key 0x%08x, id %d, is not provably this daemon's (it was made by another "
                    "process, or its creator cannot be told); leaving it untouched.",
                    rec->kind == STATE_SHM ? "segment" : "semaphore set", rec->key, rec->id);
}

/*
 * A killed run's ring or broadcast channel may still have clients, asleep on
 * its futexes or about to send: before its segment goes, tell them as a stop
 * would (see ring_mark_removed(), bcast_mark_removed()). Records do not say a segment's layout, so the
 * header does: only one of this version's rings is written to. Best effort:
 * a segment we may not attach (a mode without the owner's write bit) is
 * removed all the same, and its clients learn it at their next open.
 */
static void mark_ring_removed(const StateRecord *rec) {
        void *addr;

        if (rec->size < sizeof(RingHeader))
                return;
        addr = shmat(rec->id, NULL, 0);
        if (addr == (void *) -1) {
                log_debug("Cannot attach segment %d to tell its ring's clients it is removed: %m, ignoring.",
                          rec->id);
                return;
        }
        if (ring_header_is_ours(addr))
                ring_mark_removed(addr);
        /* A broadcast channel's: its table (a record of its own) may be gone first; waiters for space poll. */
        else if (rec->size >= sizeof(BcastHeader) && bcast_header_is_ours(addr))
                bcast_mark_removed(addr, NULL);
        (void) shmdt(addr);
}

/* A killed run's posix segment: its ring's or broadcast channel's clients learn of the removal as above. */
static void mark_posix_segment(void *addr, size_t size) {
        if (size >= sizeof(RingHeader) && ring_header_is_ours(addr))
                ring_mark_removed(addr);
        else if (size >= sizeof(BcastHeader) && bcast_header_is_ours(addr))
                bcast_mark_removed(addr, NULL);
}

size_t reclaim_posix_take(StateRecord *v, const size_t *idx, size_t n, const uint8_t *secret, PosixObjects *ret) {
        size_t taken = 0;

        posix_objects_init(ret);
        /*
         * Recorded files before intents, and the newest record of a file
         * first: one moved to a new owner (file_set_perms()) may be
         * recorded under both. Every record of a file taken is settled with
         * it: the caller records the file again. Files of several runs (a
         * start killed while it replaced some) are taken alike; an older
         * file of a role taken already is reclaim's.
         */
        for (int pass = 0; pass < 2; pass++)
                for (size_t j = n; j-- > 0;) {
                        size_t i = idx[j];
                        int r;

                        if (v[i].pending != (pass == 1) || v[i].legacy || v[i].adopted)
                                continue;
                        r = posix_objects_take(ret, &v[i], secret,
                                               v[i].id == POSIX_ROLE_SEGMENT ? mark_posix_segment : NULL);
                        if (r > 0)
                                taken++;
                        if (r >= 0)
                                v[i].adopted = true;
                }
        if (taken == 0)
                posix_objects_close(ret);
        return taken;
}

/* A posix channel's file: its record names the inode, which must still be ours at its name. */
static int settle_posix(const StateRecord *rec, const uint8_t *secret, Taken *taken, ReclaimResult *res) {
        char name[256] = "?";
        int r = posix_reclaim_file(rec, secret, rec->id == POSIX_ROLE_SEGMENT ? mark_posix_segment : NULL,
                                   taken_has_file, taken);

        if (r == POSIX_TAKEN_OVER)
                return 1;
        if (r == 1) {
                res->removed++;
                return 1;
        }
        if (r == -ENOENT) {
                /* An intent whose file was never made is no file at all. */
                if (!rec->pending)
                        res->gone++;
                return 1;
        }
        (void) posix_record_file_name(rec, name, sizeof name);
        if (r == 0 && rec->pending) {
                log_warning("%s/%s is not a file the last run was making (another owner, mode, size or time); "
                            "leaving it untouched.", PSEM_DIR, name);
                res->foreign++;
                return 1;
        }
        if (r == 0) {
                log_warning("%s/%s is not the file the last run made (another inode, owner or type); leaving it "
                            "untouched.", PSEM_DIR, name);
                res->foreign++;
                return 1;
        }
        log_warning("Cannot reclaim %s/%s: %s; keeping it recorded.", PSEM_DIR, name, strerror(-r));
        return 0;
}

/* 1 settled (removed, gone or not ours), 0 to keep recorded; counts what it saw in *res. */
static int settle(StateRecord *rec, Proven *proven, Taken *taken, const uint8_t *secret, ReclaimResult *res) {
        int r;

        /* A channel record names objects that have records of their own; adopted ones live on. */
        if (rec->kind == STATE_CHAN || rec->adopted)
                return 1;
        if (rec->legacy) {
                res->foreign++;
                return 1;
        }
        if (rec->kind == STATE_POSIX)
                return settle_posix(rec, secret, taken, res);
        r = record_is_ours(rec, proven, taken);
        if (r == TAKEN_OVER)
                return 1;
        /* Proven ours, also one removed already (SHM_REMOVED_ATTACHED): its run's set may be paired with it. */
        if (r > 0 && rec->kind == STATE_SHM && !proven_has(proven, rec->key, rec->pid)) {
                proven->v[proven->n].key = rec->key;
                proven->v[proven->n++].pid = rec->pid;
        }
        /* Its ring's clients may sleep on it still: nobody else will tell them. */
        if (r > 0 && rec->kind == STATE_SHM)
                mark_ring_removed(rec);
        if (r == SHM_REMOVED_ATTACHED) {
                res->gone++;
                return 1;
        }
        if (r == -ENOENT) {
                /* An intent whose object was never made is no object at all. */
                if (!rec->pending)
                        res->gone++;
                return 1;
        }
        if (r == 0) {
                log_unproven(rec);
                res->foreign++;         /* not provably ours: never touch it */
                return 1;
        }
        if (r > 0 && (rec->kind == STATE_SHM ? shmctl(rec->id, IPC_RMID, NULL) : semctl(rec->id, 0, IPC_RMID)) == 0) {
                res->removed++;
                return 1;
        }
        if (rec->pending)
                rec->id = -1;           /* still an intent when written back */
        return 0;                       /* unreadable, or IPC_RMID failed: keep it recorded */
}

void reclaim_records(StateRecord *v, size_t n, const uint8_t *secret, ReclaimResult *ret) {
        ReclaimResult res = {};
        Proven proven = {};
        Taken taken = {};
        size_t kept = 0;
        bool *keep = calloc(n ?: 1, sizeof *keep);

        proven.v = calloc(n ?: 1, sizeof *proven.v);
        if (!keep || !proven.v || taken_make(v, n, &taken) < 0) {
                /* Cannot even plan: keep every record, settle nothing. */
                free(keep);
                free(proven.v);
                *ret = (ReclaimResult) { .kept = n };
                return;
        }

        /* Segments before sets (a set's proof is its segment's); recorded objects before intents. */
        for (int pass = 0; pass < 4; pass++)
                for (size_t i = 0; i < n; i++)
                        /* A posix file needs no other's proof: it goes with the segments. */
                        if ((v[i].kind == STATE_SEM) == (pass >= 2) && v[i].pending == (pass % 2 == 1))
                                keep[i] = !settle(&v[i], &proven, &taken, secret, &res);
        for (size_t i = 0; i < n; i++)
                if (keep[i])
                        v[kept++] = v[i];
        free(keep);
        free(proven.v);
        free(taken.ids);
        free(taken.files);
        res.kept = kept;
        *ret = res;
}
