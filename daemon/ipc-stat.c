#include <errno.h>
#include <unistd.h>

#include "daemon/ipc-stat.h"
#include "daemon/self.h"

/* ids are index + seq * 32768 unless ipcmni_extend; a mismatch is caught below. */
#define IPC_INDEX(id) ((id) & 0x7fff)

int ipc_stat_shm(int id, struct shmid_ds *ret) {
        int got;

        if (shmctl(id, IPC_STAT, ret) == 0)
                return 0;
        if (errno != EACCES)
                return -errno;
        /* Defined before the kernel fills it: valgrind does not know *_STAT_ANY writes it. */
        *ret = (struct shmid_ds) {};
        got = shmctl(IPC_INDEX(id), SHM_STAT_ANY, ret);
        if (got < 0)
                return errno == EINVAL ? -EINVAL : -EACCES;
        return got == id ? 0 : -EINVAL;
}

int ipc_stat_sem(int id, struct semid_ds *ret) {
        int got;

        if (semctl(id, 0, IPC_STAT, ret) == 0)
                return 0;
        if (errno != EACCES)
                return -errno;
        *ret = (struct semid_ds) {};
        got = semctl(IPC_INDEX(id), 0, SEM_STAT_ANY, ret);
        if (got < 0)
                return errno == EINVAL ? -EINVAL : -EACCES;
        return got == id ? 0 : -EINVAL;
}

int ipc_is_ours(int id, uint32_t key, int is_shm) {
        struct ipc_perm perm;
        int r;

        if (is_shm) {
                struct shmid_ds ds;

                r = ipc_stat_shm(id, &ds);
                perm = ds.shm_perm;
        } else {
                struct semid_ds ds;

                r = ipc_stat_sem(id, &ds);
                perm = ds.sem_perm;
        }
        if (r == -EINVAL || r == -EIDRM)
                return -ENOENT;
        if (r < 0)
                return r;
        return (uint32_t) perm.__key == key && perm.cuid == self_euid();
}
