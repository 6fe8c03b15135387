#include <errno.h>
#include <inttypes.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/ipc-limits.h"
#include "proto/broadcast.h"

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
        uint64_t pages = 0, sems = 0, segments = 0, sets = 0;

        for (size_t i = 0; i < n; i++) {
                const ChannelSpec *c = v[i];

                /* System V limits: a posix channel's files count against /dev/shm, which creation reports. */
                if (c->kind == PROTO_KIND_POSIX)
                        continue;
                segments++;
                sets++;
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
                /* A broadcast channel's subscriber table is a segment of its own (proto/broadcast.h). */
                if (c->layout == PROTO_LAYOUT_BROADCAST) {
                        segments++;
                        pages += (bcast_table_size(c->subscribers) + l->page_size - 1) / l->page_size;
                }
        }
        {
                /* The totals against the system-wide limits, what is in use counted in. */
                const struct {
                        uint64_t need, used, limit;
                        const char *what, *limit_name;
                } totals[] = {
                        { segments, l->shm_ids_used, l->shmmni, "segments", "kernel.shmmni" },
                        { pages, l->shm_pages_used, l->shmall, "pages of shared memory", "kernel.shmall" },
                        { sets, l->sem_sets_used, l->semmni, "semaphore sets", "SEMMNI, the fourth field of kernel.sem," },
                        { sems, l->sem_sems_used, l->semmns, "semaphores", "SEMMNS, the second field of kernel.sem," },
                };

                for (size_t i = 0; i < ELEMENTSOF(totals); i++)
                        if (totals[i].need + totals[i].used > totals[i].limit) {
                                msg_set(msg, msg_size,
                                        "%zu channel(s) need %" PRIu64 " %s, but %s is %" PRIu64 " and %" PRIu64
                                        " are in use",
                                        n, totals[i].need, totals[i].what, totals[i].limit_name, totals[i].limit,
                                        totals[i].used);
                                return ENOSPC;
                        }
        }
        return 0;
}
