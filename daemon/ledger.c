/*
 * Holder ledgers (see ledger.h).
 *
 * Every file operation is relative to the ledger directory's descriptor,
 * which ledger_dir_open() checked to be the daemon's and private, and
 * never follows a symlink. A file that is not the daemon's own regular
 * file of mode 0600 and the right size is never believed: it is replaced.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/ledger.h"
#include "daemon/self.h"

/* "SHMBLDG" and a version: written last, so a ledger half made is never believed. */
#define LEDGER_MAGIC UINT64_C(0x0147444c424d4853)

typedef struct LedgerHeader {
        uint64_t magic;
        uint32_t entries;
        uint32_t reserved;
        uint64_t unused[2];
} LedgerHeader;

_Static_assert(sizeof(LedgerHeader) == sizeof(RingHolder), "the header takes one entry's room");

#define SUFFIX ".ledger"
#define DIR_SUFFIX ".ledgers"

static size_t ledger_size(uint32_t n) {
        return sizeof(LedgerHeader) + (size_t) n * sizeof(RingHolder);
}

static LedgerHeader *header_of(const Ledger *l) {
        return l->addr;
}

void ledger_close(Ledger *l) {
        if (l->addr)
                munmap(l->addr, l->size);
        free(l->file);
        *l = (Ledger) {};
}

void ledger_remove(int dirfd, Ledger *l) {
        struct stat st;

        if (l->file && fstatat(dirfd, l->file, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == l->dev &&
            st.st_ino == l->ino)
                (void) unlinkat(dirfd, l->file, 0);
        ledger_close(l);
}

static int map_file(int fd, const struct stat *st, uint32_t n, Ledger *l) {
        void *addr = mmap(NULL, ledger_size(n), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

        if (addr == MAP_FAILED)
                return -errno;
        l->addr = addr;
        l->size = ledger_size(n);
        l->entries = (RingHolder *) ((char *) addr + sizeof(LedgerHeader));
        l->n = n;
        l->dev = st->st_dev;
        l->ino = st->st_ino;
        return 0;
}

static int take_over(int dirfd, const char *file, uint32_t n, Ledger *l) {
        _cleanup_(closep) int fd = openat(dirfd, file, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        struct stat st;
        int r;

        /* None, or none to believe (a symlink, a directory, a FIFO): -ENOENT. A want of descriptors is no proof. */
        if (fd < 0)
                return errno == ENOENT || errno == ELOOP || errno == EISDIR || errno == ENXIO ||
                       errno == EWOULDBLOCK || errno == ETXTBSY ? -ENOENT : -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || !self_owns_privately(&st) || st.st_size != (off_t) ledger_size(n))
                return -ENOENT;
        r = map_file(fd, &st, n, l);
        if (r < 0)
                return r;
        if (header_of(l)->magic != LEDGER_MAGIC || header_of(l)->entries != n) {
                munmap(l->addr, l->size);
                l->addr = NULL;
                return -ENOENT;
        }
        return 0;
}

/* A new ledger of n entries, zeroed, in place of whatever file had its name. */
static int make(int dirfd, const char *file, uint32_t n, Ledger *l) {
        _cleanup_(closep) int fd = -1;
        struct stat st;
        int r;

        if (unlinkat(dirfd, file, 0) < 0 && errno != ENOENT)
                return -errno;
        fd = openat(dirfd, file, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        r = -posix_fallocate(fd, 0, (off_t) ledger_size(n));
        if (r == 0 && fstat(fd, &st) < 0)
                r = -errno;
        if (r == 0)
                r = map_file(fd, &st, n, l);
        if (r < 0) {
                (void) unlinkat(dirfd, file, 0);
                return r;
        }
        header_of(l)->entries = n;
        return 0;
}

/* take_over() or make() on channel name's ledger file; l names the file when it succeeds. */
static int with_file(int dirfd, const char *name, uint32_t n, Ledger *l,
                     int (*how)(int dirfd, const char *file, uint32_t n, Ledger *l)) {
        _cleanup_(freep) char *file = strprintf("%s" SUFFIX, name);
        int r;

        *l = (Ledger) {};
        if (!file)
                return -ENOMEM;
        r = how(dirfd, file, n, l);
        if (r == 0)
                l->file = TAKE_PTR(file);
        return r;
}

int ledger_take_over(int dirfd, const char *name, uint32_t n, Ledger *l) {
        return with_file(dirfd, name, n, l, take_over);
}

int ledger_make(int dirfd, const char *name, uint32_t n, Ledger *l) {
        return with_file(dirfd, name, n, l, make);
}

void ledger_seal(Ledger *l) {
        if (l->addr)
                __atomic_store_n(&header_of(l)->magic, LEDGER_MAGIC, __ATOMIC_RELEASE);
}

void ledger_sweep(int dirfd, bool (*keep)(const char *name, void *userdata), void *userdata) {
        int fd = dirfd >= 0 ? openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        struct dirent *de;

        if (!d) {
                if (fd >= 0)
                        close(fd);
                return;
        }
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                char name[256];

                if (len <= strlen(SUFFIX) || strcmp(de->d_name + len - strlen(SUFFIX), SUFFIX) != 0)
                        continue;
                memcpy(name, de->d_name, len - strlen(SUFFIX));
                name[len - strlen(SUFFIX)] = '\0';
                if (!keep || !keep(name, userdata))
                        (void) unlinkat(dirfd, de->d_name, 0);
        }
        closedir(d);
}

/* STATE.ledgers, opened (made when create) and checked: the daemon's own, and nobody else's to write or read. */
static int dir_open(int state_dirfd, const char *state, bool create) {
        _cleanup_(freep) char *path = strprintf("%s" DIR_SUFFIX, state);
        struct stat st;
        int fd;

        if (!path)
                return -ENOMEM;
        if (create && mkdirat(state_dirfd, path, 0700) < 0 && errno != EEXIST)
                return -errno;
        fd = openat(state_dirfd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !self_owns_privately(&st)) {
                close(fd);
                return -EPERM;
        }
        return fd;
}

int ledger_dir_open(int state_dirfd, const char *state) {
        return dir_open(state_dirfd, state, true);
}

void ledger_dir_remove(int state_dirfd, const char *state) {
        _cleanup_(freep) char *path = strprintf("%s" DIR_SUFFIX, state);
        int fd = dir_open(state_dirfd, state, false);

        if (fd < 0)
                return;
        ledger_sweep(fd, NULL, NULL);
        close(fd);
        /* Not when something else was put in it. */
        if (path)
                (void) unlinkat(state_dirfd, path, AT_REMOVEDIR);
}
