#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "daemon/ipc-stat.h"
#include "daemon/reclaim.h"
#include "daemon/self.h"

/*
 * An intent whose id was never recorded: look the key up, and take the
 * object only if it is provably the one we were creating.
 */
static int pending_is_ours(const StateRecord *rec, int *ret_id) {
        int id;

        if (rec->kind == STATE_SHM) {
                struct shmid_ds ds;

                id = shmget((key_t) rec->key, 0, 0);
                if (id < 0)
                        return errno == ENOENT ? -ENOENT : -errno;
                if (ipc_stat_shm(id, &ds) < 0)
                        return -EACCES;
                *ret_id = id;
                return ds.shm_perm.cuid == self_euid() && ds.shm_cpid == rec->stamp && ds.shm_segsz == rec->size;
        } else {
                struct semid_ds ds;

                id = semget((key_t) rec->key, 0, 0);
                if (id < 0)
                        return errno == ENOENT ? -ENOENT : -errno;
                if (ipc_stat_sem(id, &ds) < 0)
                        return -EACCES;
                *ret_id = id;
                /* Made no earlier than our intent, never operated on, of our size. */
                return ds.sem_perm.cuid == self_euid() && ds.sem_ctime >= rec->stamp && ds.sem_otime == 0 &&
                       ds.sem_nsems == rec->size;
        }
}

/* 1 removed, 0 to keep; counts what it saw in *res. */
static int settle(StateRecord *rec, ReclaimResult *res) {
        int r;

        if (rec->pending) {
                r = pending_is_ours(rec, &rec->id);
                if (r == -ENOENT || r == 0)
                        return 1;       /* never made, already reclaimed, or not ours: done with */
        } else
                r = ipc_is_ours(rec->id, rec->key, rec->kind == STATE_SHM);

        if (r == -ENOENT) {
                res->gone++;
                return 1;
        }
        if (r == 0) {
                res->foreign++;         /* the id now names someone else's object: never touch it */
                return 1;
        }
        if (r > 0 && (rec->kind == STATE_SHM ? shmctl(rec->id, IPC_RMID, NULL) : semctl(rec->id, 0, IPC_RMID)) == 0) {
                res->removed++;
                return 1;
        }
        return 0;                       /* unverifiable, or IPC_RMID failed: keep it recorded */
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
