/*
 * Mapping a posix channel ("kind": "posix", proto/posix.h) from the
 * descriptors the broker handed over with its open answer.
 *
 * The library never opens the objects by name (shm_open(), sem_open()):
 * a name is looked up in the caller's own /dev/shm, which in another mount
 * namespace is another directory, maybe empty, maybe holding a same-named
 * file that someone planted. The descriptors are the broker's own objects,
 * whatever namespace either side is in, so what is mapped is always the
 * channel the broker meant. They come opened O_RDONLY for an ro open, so
 * the kernel refuses a writable mapping as it would to a file opened so.
 *
 * The segment's descriptor is kept while the handle lives: its device and
 * inode say which channel a reconnection finds (client.c), and its link
 * count says whether the broker removed it (shmb_channel_check()). The
 * semaphore files are mapped as PosixSemFile and their descriptors closed;
 * so is a raw channel's lock holder table, read-only (only the broker
 * writes it, and it hands the table over O_RDONLY to every opener).
 */

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"
#include "proto/posix.h"

/* Take descriptor i out of fds: the caller of posix_map() closes what is left there. */
static int take_fd(ClientFds *fds, unsigned i) {
        int fd = fds->fd[i];

        fds->fd[i] = -1;
        return fd;
}

/* Map size bytes of a regular file: never more than it has (a read past its end is a SIGBUS), else -EPROTO. */
static int map_file(int fd, size_t size, int prot, void **ret) {
        struct stat st;
        void *p;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size < (off_t) size)
                return -EPROTO;
        p = mmap(NULL, size, prot, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
                return -errno;
        *ret = p;
        return 0;
}

/* Map a semaphore file: a PosixSemFile of the layout this library speaks (-EPROTO otherwise). */
static int map_sem(shmb_channel *ch, int fd, PosixSemFile **ret) {
        void *p;
        PosixSemFile *f;
        int r = map_file(fd, sizeof *f, ch->access == SHMB_RO ? PROT_READ : PROT_READ | PROT_WRITE, &p);

        if (r < 0)
                return r;
        f = p;
        if (__atomic_load_n(&f->magic, __ATOMIC_ACQUIRE) != PSEM_MAGIC || f->version != PSEM_VERSION) {
                (void) munmap(f, sizeof *f);
                return -EPROTO;
        }
        *ret = f;
        return 0;
}

/* Map a raw channel's lock holder table, read-only: only the broker writes it. */
static int map_lock_table(shmb_channel *ch, int fd) {
        void *t;
        int r = map_file(fd, PSEM_TABLE_SIZE, PROT_READ, &t);

        if (r == 0)
                ch->lock_table = t;
        return r;
}

int posix_map(shmb_channel *ch, const ProtoChannel *pc, ClientFds *fds) {
        int prot = ch->access == SHMB_RO ? PROT_READ : PROT_READ | PROT_WRITE;
        bool lock_table = psem_has_table(pc->layout, pc->nsems);
        unsigned want = 1 + (pc->layout == PROTO_LAYOUT_BROADCAST || lock_table) + pc->nsems, next = 1;
        struct stat st;
        void *addr;
        int r;

        /* Two more: the wake-up FIFOs (data, space), for a client that may not see them by path. */
        bool fifos = ch->wake && pc->n_fds == want + 2;

        if (pc->n_fds != want + 2 * fifos || fds->n != pc->n_fds) {
                client_set_message(ch->client, "channel \"%s\": the broker handed over %u descriptors (its answer "
                                   "says %u), not the %u of a posix channel with %u semaphores", ch->info.name,
                                   fds->n, pc->n_fds, want, pc->nsems);
                return -EPROTO;
        }
        ch->shm_fd = take_fd(fds, 0);
        if (fstat(ch->shm_fd, &st) < 0)
                return -errno;
        /* The size is the broker's word, and the file must agree: nothing past its end is ever touched. */
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != pc->size || pc->size == 0 || pc->size > SIZE_MAX) {
                client_set_message(ch->client, "channel \"%s\": its segment file is not of the size the broker "
                                   "answered", ch->info.name);
                return -EPROTO;
        }
        addr = mmap(NULL, (size_t) pc->size, prot, MAP_SHARED, ch->shm_fd, 0);
        if (addr == MAP_FAILED)
                return -errno;
        ch->addr = addr;
        if (pc->layout == PROTO_LAYOUT_BROADCAST)
                ch->table_fd = take_fd(fds, next++);
        else if (lock_table) {
                r = map_lock_table(ch, fds->fd[next++]);
                if (r < 0) {
                        client_set_message(ch->client, "channel \"%s\": its lock holder table is not one this "
                                           "library can use", ch->info.name);
                        return r;
                }
        }
        ch->psems = calloc(pc->nsems ?: 1, sizeof *ch->psems);
        if (!ch->psems)
                return -ENOMEM;
        for (unsigned i = 0; i < pc->nsems; i++, next++) {
                r = map_sem(ch, fds->fd[next], &ch->psems[i]);
                if (r < 0) {
                        client_set_message(ch->client, "channel \"%s\": its semaphore file %u is not one this "
                                           "library can use", ch->info.name, i);
                        return r;
                }
        }
        return fifos ? channel_wake_take_fds(ch, take_fd(fds, next), take_fd(fds, next + 1)) : 0;
}

void posix_unmap(shmb_channel *ch) {
        if (ch->psems) {
                for (unsigned i = 0; i < ch->info.set_nsems; i++)
                        if (ch->psems[i])
                                (void) munmap(ch->psems[i], sizeof *ch->psems[i]);
                free(ch->psems);
                ch->psems = NULL;
        }
        if (ch->lock_table) {
                (void) munmap((void *) ch->lock_table, PSEM_TABLE_SIZE);
                ch->lock_table = NULL;
        }
        if (ch->addr) {
                (void) munmap(ch->addr, (size_t) ch->info.size);
                ch->addr = NULL;
        }
        if (ch->table_fd >= 0)
                ch->table_fd = (close(ch->table_fd), -1);
        if (ch->shm_fd >= 0)
                ch->shm_fd = (close(ch->shm_fd), -1);
}

bool posix_removed(const shmb_channel *ch) {
        struct stat st;

        /* Unlinked: the broker removed it (it never unlinks a live channel's file). */
        return fstat(ch->shm_fd, &st) == 0 && st.st_nlink == 0;
}
