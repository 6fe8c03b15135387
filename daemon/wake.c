/*
 * The wake-up FIFOs of ring channels (see wake.h).
 *
 * Every file operation is relative to the directory's descriptor and never
 * follows a symlink: the directory is checked once, when opened, to be the
 * daemon's and writable by nobody else, so nothing in it can be planted.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/lock-file.h"
#include "daemon/log.h"
#include "daemon/self.h"
#include "daemon/wake.h"
#include "proto/broadcast.h"

static const char *const suffixes[2] = { ".data", ".space" };

struct Wake {
        int dirfd;
        int lock_fd;            /* LOCK_NAME in the directory, held with flock() */
        char *path;             /* absolute, for the open answer */
};

/*
 * The lock of the directory: a file only the daemon's user may open. Not
 * the directory itself, which every client may open (it must reach the
 * FIFOs), and so could hold a lock on to keep the daemon from starting.
 * Not a FIFO: sweeps pass it by.
 */
#define LOCK_NAME ".lock"

/* lock_file_take()'s open: made 0600 when missing; -EPERM unless it is the daemon's own regular file. */
static int lock_open(int dirfd, const char *name, void *userdata) {
        struct stat st;
        int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);

        (void) userdata;
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || !self_owns_privately(&st)) {
                close(fd);
                return -EPERM;
        }
        return fd;
}

/* SOCKET_PATH.wake as a Wake, made first when create; -ENOENT when it is missing and not to be made. */
static int wake_take(const char *socket_path, bool create, Wake **ret, char *msg, size_t msg_size) {
        _cleanup_(freep) char *sock = path_absolute(socket_path), *path = NULL;
        struct stat st;
        int fd, lock_fd = -1, r;
        Wake *w;

        if (!sock || asprintf(&path, "%s.wake", sock) < 0) {
                msg_set(msg, msg_size, "out of memory");
                return -ENOMEM;
        }
        if (create && mkdir(path, 0755) < 0 && errno != EEXIST) {
                int err = errno;

                msg_set(msg, msg_size, "cannot create %s: %s", path, strerror(err));
                return -err;
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
                int err = errno;

                msg_set(msg, msg_size, "cannot open %s: %s", path, strerror(err));
                return -err;
        }
        if (fstat(fd, &st) < 0 || st.st_uid != self_euid() || (st.st_mode & 022)) {
                msg_set(msg, msg_size, "%s is not the daemon's own directory (owner uid %u, mode %04o): "
                        "someone else may have made it", path, (unsigned) st.st_uid, (unsigned) (st.st_mode & 07777));
                close(fd);
                return -EPERM;
        }
        /*
         * The state lock guards one state directory only: another daemon on
         * this socket path (another --state-dir) would share the directory.
         * Held as long as the descriptor (the daemon's life).
         */
        r = lock_file_take(fd, LOCK_NAME, lock_open, NULL, &lock_fd);
        if (r == -ESTALE)
                r = -EBUSY;
        if (r < 0) {
                if (r == -EBUSY)
                        msg_set(msg, msg_size, "another shmbrokerd uses %s", path);
                else if (r == -EPERM)
                        msg_set(msg, msg_size, "%s/%s is not the daemon's own file", path, LOCK_NAME);
                else
                        msg_set(msg, msg_size, "cannot lock %s: %s", path, strerror(-r));
                close(fd);
                return r;
        }
        /* Clients must reach the FIFOs; a umask may have taken bits off. */
        if (create && (st.st_mode & 0755) != 0755)
                (void) fchmod(fd, 0755);
        w = malloc(sizeof *w);
        if (!w) {
                /* Ours since lock_file_take(): a lock left would keep the directory for good. */
                (void) unlinkat(fd, LOCK_NAME, 0);
                close(lock_fd);
                close(fd);
                msg_set(msg, msg_size, "out of memory");
                return -ENOMEM;
        }
        *w = (Wake) { .dirfd = fd, .lock_fd = lock_fd, .path = TAKE_PTR(path) };
        *ret = w;
        return 0;
}

int wake_open(const char *socket_path, Wake **ret, char *msg, size_t msg_size) {
        return wake_take(socket_path, true, ret, msg, msg_size);
}

static bool keep_none(const char *name, void *userdata) {
        (void) name;
        (void) userdata;
        return false;
}

void wake_remove_dir(const char *socket_path) {
        Wake *w;
        char msg[1];

        if (wake_take(socket_path, false, &w, msg, sizeof msg) < 0)
                return;
        wake_sweep(w, keep_none, NULL);
        wake_free(w);
}

Wake *wake_free(Wake *w) {
        struct stat ours, there;

        if (!w)
                return NULL;
        /*
         * The lock, in our directory wherever it went, still held: whoever
         * opened it meanwhile finds the name gone and tries again.
         */
        (void) unlinkat(w->dirfd, LOCK_NAME, 0);
        /*
         * Empty once every ring is removed; kept (and reused) when a channel is
         * left for the next start. Only while the path still names our
         * directory: another daemon may have made one there since.
         */
        if (fstat(w->dirfd, &ours) == 0 && lstat(w->path, &there) == 0 && ours.st_dev == there.st_dev &&
            ours.st_ino == there.st_ino)
                (void) rmdir(w->path);
        close(w->lock_fd);
        close(w->dirfd);
        free(w->path);
        free(w);
        return NULL;
}

static int fifo_name(const char *name, unsigned i, char *buf, size_t size) {
        int n = snprintf(buf, size, "%s%s", name, suffixes[i]);

        return n < 0 || (size_t) n >= size ? -ENAMETOOLONG : 0;
}

/* Subscriber i's own FIFO of broadcast channel name: NAME.data.I (proto/broadcast.h). */
static int sub_fifo_name(const char *name, uint32_t i, char *buf, size_t size) {
        int n = snprintf(buf, size, "%s%s.%" PRIu32, name, suffixes[0], i);

        return n < 0 || (size_t) n >= size ? -ENAMETOOLONG : 0;
}

/*
 * Whether file is a subscriber's FIFO (NAME.data.DIGITS), with NAME into
 * name. Unambiguous: every other FIFO's name ends in .data or .space.
 */
static bool sub_fifo_channel(const char *file, char *name, size_t size) {
        const char *dot = strrchr(file, '.');
        size_t sl = strlen(suffixes[0]), len;

        if (!dot || !dot[1] || strspn(dot + 1, "0123456789") != strlen(dot + 1))
                return false;
        len = (size_t) (dot - file);
        if (len <= sl || strncmp(dot - sl, suffixes[0], sl) != 0 || len - sl >= size)
                return false;
        memcpy(name, file, len - sl);
        name[len - sl] = '\0';
        return true;
}

static void signal_one(const Wake *w, const char *file) {
        /* O_NONBLOCK: ENXIO at once when nobody has it open for reading, i.e. nobody waits. */
        int fd = openat(w->dirfd, file, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);

        if (fd < 0)
                return;
        /* EAGAIN: the FIFO is full of wake-ups already, which is as good. */
        (void) write(fd, "", 1);
        close(fd);
}

/* An existing FIFO of ours at file: 1; nothing there: 0. */
static int is_fifo(const Wake *w, const char *file) {
        struct stat st;

        if (fstatat(w->dirfd, file, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? 0 : -errno;
        return S_ISFIFO(st.st_mode);
}

/* A listing of the directory from its start, on a descriptor of its own; NULL on failure. */
static DIR *dir_stream(const Wake *w) {
        int fd = dup(w->dirfd);
        DIR *d;

        if (fd < 0)
                return NULL;
        d = fdopendir(fd);
        if (!d) {
                close(fd);
                return NULL;
        }
        /* The descriptor is a dup: its offset is shared with the last listing's. */
        rewinddir(d);
        return d;
}

static void remove_one(const Wake *w, const char *file) {
        signal_one(w, file);
        (void) unlinkat(w->dirfd, file, 0);
}

/*
 * fn on the subscriber FIFOs of channel name, as many as there are: the
 * daemon makes them 0 to n - 1 with no gap, and only it writes the
 * directory, so the first missing one is the end. A lookup per FIFO, not a
 * listing of the whole directory, which would make a start with many
 * broadcast channels quadratic.
 */
static void for_each_sub_fifo(const Wake *w, const char *name, void (*fn)(const Wake *w, const char *file)) {
        char file[NAME_MAX + 1];

        for (uint32_t i = 0; i < BCAST_SUBSCRIBERS_MAX; i++) {
                if (sub_fifo_name(name, i, file, sizeof file) < 0 || is_fifo(w, file) != 1)
                        return;
                fn(w, file);
        }
}

/* fn on every FIFO of channel name there is: the channel's two, then its subscribers'. */
static void for_each_fifo(const Wake *w, const char *name, void (*fn)(const Wake *w, const char *file)) {
        char file[NAME_MAX + 1];

        for (unsigned i = 0; i < 2; i++)
                if (fifo_name(name, i, file, sizeof file) == 0)
                        fn(w, file);
        for_each_sub_fifo(w, name, fn);
}

/*
 * fn on every FIFO channel s is to have, made or not: the channel's two,
 * and one per cursor of a broadcast channel. Stops at the first failure.
 */
static int for_each_fifo_of(Wake *w, const ChannelSpec *s, bool keep,
                            int (*fn)(Wake *w, const char *file, const ChannelSpec *s, bool keep)) {
        char file[NAME_MAX + 1];
        int r;

        for (unsigned i = 0; i < 2; i++) {
                r = fifo_name(s->name, i, file, sizeof file);
                if (r == 0)
                        r = fn(w, file, s, keep);
                if (r < 0)
                        return r;
        }
        for (uint32_t i = 0; s->layout == PROTO_LAYOUT_BROADCAST && i < s->subscribers; i++) {
                r = sub_fifo_name(s->name, i, file, sizeof file);
                if (r == 0)
                        r = fn(w, file, s, keep);
                if (r < 0)
                        return r;
        }
        return 0;
}

/*
 * Open our FIFO at file with flags (non-blocking, never through a symlink),
 * *ret_st its stat: the descriptor, or -errno (-EPROTO: not a FIFO).
 */
static int open_fifo(const Wake *w, const char *file, int flags, struct stat *ret_st) {
        int fd = openat(w->dirfd, file, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        if (fstat(fd, ret_st) < 0 || !S_ISFIFO(ret_st->st_mode)) {
                close(fd);
                return -EPROTO;
        }
        return fd;
}

/* Without ACLs: the channel's owner and group by chown (CAP_CHOWN for a group the daemon is not in). */
static int chown_perms(const Wake *w, const char *file, uid_t uid, gid_t gid, mode_t mode) {
        if (fchownat(w->dirfd, file, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        /* Not a symlink (nobody else writes the directory), so following is safe. */
        if (fchmodat(w->dirfd, file, mode & 0777, 0) < 0)
                return -errno;
        return 0;
}

/*
 * A class's bits on s's FIFOs: read and write where the channel lets it
 * both read and write (it takes part in the ring: it may wait and wake),
 * else none. One that could only read would drain the bytes written for a
 * waiter, which then sleeps on past its message. A broadcast subscriber
 * opens ro yet raises and empties its FIFO: there read grants write, as
 * on its table.
 */
static mode_t fifo_mode(const ChannelSpec *s) {
        mode_t mode = s->layout == PROTO_LAYOUT_BROADCAST ? s->mode | ((s->mode & 0444) >> 1) : s->mode, m = 0;

        for (int shift = 0; shift <= 6; shift += 3)
                if (((mode >> shift) & 6) == 6)
                        m |= (mode_t) 6 << shift;
        return m;
}

/*
 * The FIFO grants what the channel grants to those that take part (fifo_mode()). The
 * daemon stays its owner and gives the channel's owner and group their bits
 * in the FIFO's ACL: the owner of a file may set its ACL, while giving it
 * to a group the daemon is not in would need CAP_CHOWN (and the shipped
 * unit filters chown altogether). The daemon keeps read and write for
 * itself: it signals the FIFO when a holder dies. Where the file system
 * has no ACLs, chown does it instead.
 */
static int set_perms(const Wake *w, const char *file, const ChannelSpec *s) {
        const uid_t uid = s->uid;
        const gid_t gid = s->gid;
        const mode_t mode = fifo_mode(s);
        const bool creator = s->kind == PROTO_KIND_SYSV;
        struct {
                struct posix_acl_xattr_header h;
                struct posix_acl_xattr_entry e[6];
        } acl = { .h.a_version = POSIX_ACL_XATTR_VERSION };
        const unsigned rw = ACL_READ | ACL_WRITE;
        unsigned n = 0;
        struct stat st;
        int fd, r = 0;

        /* Read-only: never waits for a writer, and the ACL goes on the file opened. */
        fd = open_fifo(w, file, O_RDONLY, &st);
        if (fd < 0)
                return fd;
        /* Sorted by tag, then id, as the kernel requires. */
#define ENTRY(tag, perm, id) (acl.e[n++] = (struct posix_acl_xattr_entry) { (tag), (perm), (uint32_t) (id) })
        ENTRY(ACL_USER_OBJ, rw, ACL_UNDEFINED_ID);
        if (uid != st.st_uid)
                ENTRY(ACL_USER, (mode >> 6) & rw, uid);
        /* The FIFO's group is the daemon's: a System V ring's creator group, with the group bits too. */
        ENTRY(ACL_GROUP_OBJ, creator || gid == st.st_gid ? (mode >> 3) & rw : 0, ACL_UNDEFINED_ID);
        if (gid != st.st_gid)
                ENTRY(ACL_GROUP, (mode >> 3) & rw, gid);
        ENTRY(ACL_MASK, rw, ACL_UNDEFINED_ID);
        ENTRY(ACL_OTHER, mode & rw, ACL_UNDEFINED_ID);
#undef ENTRY
        if (fsetxattr(fd, "system.posix_acl_access", &acl, sizeof acl.h + n * sizeof acl.e[0], 0) < 0)
                r = -errno;
        close(fd);
        if (r == -EOPNOTSUPP)
                r = chown_perms(w, file, uid, gid, mode);
        return r;
}

/* Make (or with keep, take as it is) our FIFO at file, with s's grants. */
static int make_one(Wake *w, const char *file, const ChannelSpec *s, bool keep) {
        int r = is_fifo(w, file);

        if (r < 0)
                return r;
        if (r == 0 || !keep) {
                if (r > 0)
                        signal_one(w, file);
                if (unlinkat(w->dirfd, file, 0) < 0 && errno != ENOENT)
                        return -errno;
                /* 0600 until it has the channel's owner: nobody opens it in between. */
                if (mknodat(w->dirfd, file, S_IFIFO | 0600, 0) < 0)
                        return -errno;
        }
        return set_perms(w, file, s);
}

int wake_make(Wake *w, const ChannelSpec *s, bool keep) {
        int r;

        if (!w)
                return 0;
        /* A channel made anew: the subscriber FIFOs of what had the name go, however many it had. */
        if (!keep)
                for_each_sub_fifo(w, s->name, remove_one);
        r = for_each_fifo_of(w, s, keep, make_one);
        /* What it made (a FIFO of mode 0600, say) would be nobody's to remove later. */
        if (r < 0)
                wake_remove(w, s->name);
        return r;
}

static int perms_one(Wake *w, const char *file, const ChannelSpec *s, bool keep) {
        (void) keep;
        return set_perms(w, file, s);
}

int wake_set_perms(Wake *w, const ChannelSpec *s) {
        return w ? for_each_fifo_of(w, s, true, perms_one) : 0;
}

void wake_signal(const Wake *w, const char *name) {
        if (w)
                for_each_fifo(w, name, signal_one);
}

void wake_remove(Wake *w, const char *name) {
        if (w)
                for_each_fifo(w, name, remove_one);
}

void wake_sweep(Wake *w, bool (*keep)(const char *name, void *userdata), void *userdata) {
        DIR *d = w ? dir_stream(w) : NULL;

        if (!d)
                return;
        for (struct dirent *de; (de = readdir(d));) {
                char name[NAME_MAX + 1];
                size_t len = strlen(de->d_name);
                bool ours = false;

                if (is_fifo(w, de->d_name) != 1)
                        continue;
                if (sub_fifo_channel(de->d_name, name, sizeof name))
                        ours = keep(name, userdata);
                for (unsigned i = 0; i < 2 && !ours; i++) {
                        size_t sl = strlen(suffixes[i]);

                        if (len > sl && strcmp(de->d_name + len - sl, suffixes[i]) == 0) {
                                memcpy(name, de->d_name, len - sl);
                                name[len - sl] = '\0';
                                ours = keep(name, userdata);
                        }
                }
                if (ours)
                        continue;
                signal_one(w, de->d_name);
                (void) unlinkat(w->dirfd, de->d_name, 0);
        }
        closedir(d);
}

int wake_paths(const Wake *w, const char *name, char *data, char *space, size_t size) {
        char *out[2] = { data, space };

        for (unsigned i = 0; i < 2; i++) {
                int n = snprintf(out[i], size, "%s/%s%s", w->path, name, suffixes[i]);

                if (n < 0 || (size_t) n >= size)
                        return -ENAMETOOLONG;
        }
        return 0;
}

int wake_open_fds(const Wake *w, const char *name, int ret[2]) {
        char file[NAME_MAX + 1];
        struct stat st;
        int fds[2], r;

        for (unsigned i = 0; i < 2; i++) {
                r = fifo_name(name, i, file, sizeof file);
                /* Read and write, as the library opens them by path: it never blocks, nor misses a peer. */
                if (r >= 0)
                        r = fds[i] = open_fifo(w, file, O_RDWR, &st);
                if (r < 0) {
                        if (i > 0)
                                close(fds[0]);
                        return r;
                }
        }
        ret[0] = fds[0];
        ret[1] = fds[1];
        return 0;
}
