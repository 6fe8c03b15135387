#pragma once

/*
 * IPC_STAT by id that works even where the caller lacks read permission on
 * the object (a channel whose mode has no owner-read bit, seen by a daemon
 * without CAP_IPC_OWNER): it falls back to SHM_STAT_ANY/SEM_STAT_ANY
 * (Linux 4.17+), which index the kernel's table, and accepts the answer
 * only when it names the same id. Negative errno: -EINVAL/-EIDRM when no
 * object has this id, -EACCES when it cannot be read either way.
 */

#include <stdint.h>
#include <sys/sem.h>
#include <sys/shm.h>

int ipc_stat_shm(int id, struct shmid_ds *ret);
int ipc_stat_sem(int id, struct semid_ds *ret);

/*
 * Whether id still names an object with this key created by our euid:
 * 1 yes, 0 it names someone else's object, -ENOENT no object has this id,
 * another negative errno when it cannot be told (e.g. -EACCES).
 */
int ipc_is_ours(int id, uint32_t key, int is_shm);
