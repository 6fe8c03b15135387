#include <errno.h>

#include "daemon/ipc-stat.h"
#include "daemon/reclaim.h"

void reclaim_records(StateRecord *v, size_t n, ReclaimResult *ret) {
        ReclaimResult res = {};

        for (size_t i = 0; i < n; i++) {
                const StateRecord rec = v[i];
                int r = ipc_is_ours(rec.id, rec.key, rec.kind == STATE_SHM);

                if (r == -ENOENT) {
                        res.gone++;
                        continue;
                }
                if (r == 0) {
                        res.foreign++;  /* the id now names someone else's object: never touch it */
                        continue;
                }
                if (r > 0) {
                        r = rec.kind == STATE_SHM ? shmctl(rec.id, IPC_RMID, NULL) : semctl(rec.id, 0, IPC_RMID);
                        if (r == 0) {
                                res.removed++;
                                continue;
                        }
                }
                v[res.kept++] = rec;
        }
        *ret = res;
}
