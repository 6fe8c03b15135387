#pragma once

/*
 * The kernel's System V IPC limits (kernel.shmmax, shmall, shmmni, sem)
 * and what is already in use, read with IPC_INFO/SHM_INFO/SEM_INFO, so a
 * config that cannot fit is refused with the limit named before anything
 * is created.
 */

#include <stddef.h>
#include <stdint.h>

#include "daemon/config.h"

typedef struct IpcLimits {
        uint64_t shmmax, shmmin, shmmni, shmall;   /* shmall in pages */
        uint64_t shm_ids_used, shm_pages_used;
        uint64_t semmsl, semmns, semmni, semvmx;
        uint64_t sem_sets_used, sem_sems_used;
        uint64_t page_size;
} IpcLimits;

/* Read the limits of the caller's IPC namespace. Negative errno on failure. */
int ipc_limits_read(IpcLimits *ret);

/*
 * Whether `n` more channels fit. Returns 0, or ENOSPC (positive) with a
 * sentence naming the limit, its value and the channel in msg. Pure.
 */
int ipc_limits_check(const IpcLimits *l, const ChannelSpec *const *v, size_t n, char *msg, size_t msg_size);
