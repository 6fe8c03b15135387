#include <errno.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "daemon/reclaim.h"

static void reclaim_one(const StateRecord *rec, ReclaimResult *res) {
        struct ipc_perm perm;
        int r;

        if (rec->kind == STATE_SHM) {
                struct shmid_ds ds;

                r = shmctl(rec->id, IPC_STAT, &ds);
                perm = ds.shm_perm;
        } else {
                struct semid_ds ds;

                r = semctl(rec->id, 0, IPC_STAT, &ds);
                perm = ds.sem_perm;
        }
        if (r < 0) {
                /* EINVAL/EIDRM: no object has this id any more. */
                if (errno == EINVAL || errno == EIDRM)
                        res->gone++;
                else
                        res->foreign++;
                return;
        }
        if ((uint32_t) perm.__key != rec->key || perm.cuid != geteuid()) {
                res->foreign++;
                return;
        }
        r = rec->kind == STATE_SHM ? shmctl(rec->id, IPC_RMID, NULL) : semctl(rec->id, 0, IPC_RMID);
        if (r < 0)
                res->failed++;
        else
                res->removed++;
}

void reclaim_records(const StateRecord *v, size_t n, ReclaimResult *ret) {
        ReclaimResult res = {};

        for (size_t i = 0; i < n; i++)
                reclaim_one(&v[i], &res);
        *ret = res;
}
