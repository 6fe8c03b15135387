/*
 * Holder ledgers (see ledger.h).
 *
 * Every file operation is relative to the state directory's descriptor,
 * which state_open() checked to be the daemon's, and never follows a
 * symlink. A file that is not the daemon's own regular file of mode 0600
 * and the right size is never believed: it is replaced.
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

#define SUFFIX ".holders."

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

/* The killed run's ledger of n entries: 0, or -ENOENT when there is none this daemon would have made. */
static int take_over(int dirfd, const char *file, uint32_t n, Ledger *l) {
        _cleanup_(closep) int fd = openat(dirfd, file, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        struct stat st;
        int r;

        if (fd < 0)
                return -ENOENT;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != self_euid() || (st.st_mode & 077) ||
            st.st_size != (off_t) ledger_size(n))
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

int ledger_open(int dirfd, const char *state, const char *name, uint32_t n, bool take, Ledger *l) {
        _cleanup_(freep) char *file = strprintf("%s" SUFFIX "%s", state, name);
        int r;

        *l = (Ledger) {};
        if (!file)
                return -ENOMEM;
        r = take ? take_over(dirfd, file, n, l) : -ENOENT;
        if (r == 0) {
                l->file = TAKE_PTR(file);
                return 1;
        }
        r = make(dirfd, file, n, l);
        if (r < 0)
                return r;
        l->file = TAKE_PTR(file);
        return 0;
}

void ledger_seal(Ledger *l) {
        if (l->addr)
                __atomic_store_n(&header_of(l)->magic, LEDGER_MAGIC, __ATOMIC_RELEASE);
}

void ledger_sweep(int dirfd, const char *state, bool (*keep)(const char *name, void *userdata), void *userdata) {
        _cleanup_(freep) char *prefix = strprintf("%s" SUFFIX, state);
        int fd = prefix ? openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        size_t len = prefix ? strlen(prefix) : 0;
        struct dirent *de;

        if (!d) {
                if (fd >= 0)
                        close(fd);
                return;
        }
        while ((de = readdir(d)))
                if (strncmp(de->d_name, prefix, len) == 0 && de->d_name[len] &&
                    (!keep || !keep(de->d_name + len, userdata)))
                        (void) unlinkat(dirfd, de->d_name, 0);
        closedir(d);
}
