#include <errno.h>
#include <inttypes.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/ipc-limits.h"

int ipc_limits_read(IpcLimits *ret) {
        struct shminfo shminfo;
        struct shm_info shm_info;
        struct seminfo seminfo, semused;
        long page;

        if (shmctl(0, IPC_INFO, (struct shmid_ds *) &shminfo) < 0 ||
            shmctl(0, SHM_INFO, (struct shmid_ds *) &shm_info) < 0)
                return -errno;
        if (semctl(0, 0, IPC_INFO, &seminfo) < 0 || semctl(0, 0, SEM_INFO, &semused) < 0)
                return -errno;
        page = sysconf(_SC_PAGESIZE);
        *ret = (IpcLimits) {
                .shmmax = shminfo.shmmax,
                .shmmin = shminfo.shmmin,
                .shmmni = shminfo.shmmni,
                .shmall = shminfo.shmall,
                .shm_ids_used = (uint64_t) shm_info.used_ids,
                .shm_pages_used = shm_info.shm_tot,
                .semmsl = (uint64_t) seminfo.semmsl,
                .semmns = (uint64_t) seminfo.semmns,
                .semmni = (uint64_t) seminfo.semmni,
                .semvmx = (uint64_t) seminfo.semvmx,
                /* SEM_INFO reuses the struct: semusz is sets in use, semaem semaphores. */
                .sem_sets_used = (uint64_t) semused.semusz,
                .sem_sems_used = (uint64_t) semused.semaem,
                .page_size = page > 0 ? (uint64_t) page : 4096,
        };
        return 0;
}

int ipc_limits_check(const IpcLimits *l, const ChannelSpec *const *v, size_t n, char *msg, size_t msg_size) {
        uint64_t pages = 0, sems = 0;

        for (size_t i = 0; i < n; i++) {
                const ChannelSpec *c = v[i];

                if (c->size > l->shmmax) {
                        msg_set(msg, msg_size, "channel \"%s\": size %" PRIu64 " bytes exceeds kernel.shmmax (%" PRIu64 ")",
                                c->name, c->size, l->shmmax);
                        return ENOSPC;
                }
                if (c->size < l->shmmin) {
                        msg_set(msg, msg_size, "channel \"%s\": size %" PRIu64 " bytes is below SHMMIN (%" PRIu64 ")",
                                c->name, c->size, l->shmmin);
                        return ENOSPC;
                }
                if (c->nsems > l->semmsl) {
                        msg_set(msg, msg_size, "channel \"%s\": %u semaphores exceed SEMMSL, the first field of kernel.sem (%" PRIu64 ")",
                                c->name, c->nsems, l->semmsl);
                        return ENOSPC;
                }
                for (unsigned k = 0; k < c->nsems; k++)
                        if (c->sem_values[k] > l->semvmx) {
                                msg_set(msg, msg_size, "channel \"%s\": semaphore %u starts at %u, above SEMVMX (%" PRIu64 ")",
                                        c->name, k, c->sem_values[k], l->semvmx);
                                return ENOSPC;
                        }
                pages += (c->size + l->page_size - 1) / l->page_size;
                sems += c->nsems;
        }
        if (n + l->shm_ids_used > l->shmmni) {
                msg_set(msg, msg_size, "%zu channels need %zu segments, but kernel.shmmni is %" PRIu64 " and %" PRIu64 " are in use",
                        n, n, l->shmmni, l->shm_ids_used);
                return ENOSPC;
        }
        if (pages + l->shm_pages_used > l->shmall) {
                msg_set(msg, msg_size, "the channels need %" PRIu64 " pages of shared memory, but kernel.shmall is %" PRIu64 " and %" PRIu64 " are in use",
                        pages, l->shmall, l->shm_pages_used);
                return ENOSPC;
        }
        if (n + l->sem_sets_used > l->semmni) {
                msg_set(msg, msg_size, "%zu channels need %zu semaphore sets, but SEMMNI, the fourth field of kernel.sem, is %" PRIu64 " and %" PRIu64 " are in use",
                        n, n, l->semmni, l->sem_sets_used);
                return ENOSPC;
        }
        if (sems + l->sem_sems_used > l->semmns) {
                msg_set(msg, msg_size, "the channels need %" PRIu64 " semaphores, but SEMMNS, the second field of kernel.sem, is %" PRIu64 " and %" PRIu64 " are in use",
                        sems, l->semmns, l->sem_sems_used);
                return ENOSPC;
        }
        return 0;
}
