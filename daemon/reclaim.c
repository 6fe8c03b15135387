#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "daemon/ipc-stat.h"
#include "daemon/reclaim.h"
#include "daemon/self.h"

/* How long after its intent an unrecorded set may have been made (or last set up). */
#define INTENT_WINDOW_SEC 60

/* 1 provably ours, 0 not provably ours, or a negative errno (-ENOENT: no such object). */
static int shm_is_ours(const StateRecord *rec, int id) {
        struct shmid_ds ds;
        int r;

        r = ipc_stat_shm(id, &ds);
        if (r == -EINVAL || r == -EIDRM)
                return -ENOENT;
        if (r < 0)
                return r;
        return (uint32_t) ds.shm_perm.__key == rec->key && ds.shm_perm.cuid == self_euid() &&
               ds.shm_cpid == rec->pid && ds.shm_segsz == rec->size;
}

static int sem_is_ours(const StateRecord *rec, int id) {
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
        if (!rec->pending)
                return 1;
        if (ds.sem_otime != 0 || ds.sem_ctime > rec->since + INTENT_WINDOW_SEC)
                return 0;
        last_pid = semctl(id, 0, GETPID);
        if (last_pid < 0)
                return errno == EINVAL || errno == EIDRM ? -ENOENT : -errno;
        return last_pid == 0 || last_pid == rec->pid;
}

/* Find the object a record names: by id, or for an intent by key. */
static int record_is_ours(StateRecord *rec) {
        int id = rec->id;

        if (rec->pending) {
                id = rec->kind == STATE_SHM ? shmget((key_t) rec->key, 0, 0) : semget((key_t) rec->key, 0, 0);
                if (id < 0)
                        return errno == ENOENT ? -ENOENT : -errno;
                rec->id = id;
        }
        return rec->kind == STATE_SHM ? shm_is_ours(rec, id) : sem_is_ours(rec, id);
}

/* 1 settled (removed, gone or not ours), 0 to keep recorded; counts what it saw in *res. */
static int settle(StateRecord *rec, ReclaimResult *res) {
        int r;

        if (rec->legacy) {
                res->foreign++;
                return 1;
        }
        r = record_is_ours(rec);
        if (r == -ENOENT) {
                /* An intent whose object was never made is no object at all. */
                if (!rec->pending)
                        res->gone++;
                return 1;
        }
        if (r == 0) {
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

void reclaim_records(StateRecord *v, size_t n, ReclaimResult *ret) {
        ReclaimResult res = {};
        size_t kept = 0;
        bool *keep = calloc(n ? n : 1, sizeof *keep);

        if (!keep) {
                /* Cannot even plan: keep every record, settle nothing. */
                *ret = (ReclaimResult) { .kept = n };
                return;
        }

        /* Recorded objects first; then intents, whose objects may be those same ones. */
        for (int pass = 0; pass < 2; pass++)
                for (size_t i = 0; i < n; i++)
                        if (v[i].pending == (pass == 1))
                                keep[i] = !settle(&v[i], &res);
        for (size_t i = 0; i < n; i++)
                if (keep[i])
                        v[kept++] = v[i];
        free(keep);
        res.kept = kept;
        *ret = res;
}
