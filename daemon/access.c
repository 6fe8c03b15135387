/*
 * Access checks: the kernel's ipcperms() rule over a peer's credentials.
 *
 * The bits come from SO_PEERCRED and SO_PEERGROUPS, which the kernel took
 * at connect() time and translated into our user namespace. The one part
 * of the rule those cannot answer is CAP_IPC_OWNER, which the kernel checks
 * against the user namespace that owns the IPC namespace. /proc/PID/status
 * shows CapEff relative to the process's own user namespace, and
 * `unshare -r` gives any user a full CapEff in a namespace of its own, so
 * CapEff is believed only for a process in the owning namespace itself,
 * and only while the pid provably still names the process that connected
 * (see access.h for the whole rule).
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/access.h"
#include "daemon/proc-id.h"

/* Older kernel headers lack it (Linux 6.5); the values are per architecture, as for every SO_*. */
#ifndef SO_PEERPIDFD
#  if defined(__parisc__)
#    define SO_PEERPIDFD 0x404B
#  elif defined(__sparc__)
#    define SO_PEERPIDFD 0x0056
#  else
#    define SO_PEERPIDFD 77
#  endif
#endif

int peer_from_socket(int fd, Peer *ret) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        gid_t *groups = NULL;
        socklen_t glen = 0;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        /* First ask for the size; the kernel answers ERANGE with the length needed. */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, NULL, &glen) < 0 && errno != ERANGE)
                return -errno;
        if (glen > 0) {
                groups = malloc(glen);
                if (!groups)
                        return -ENOMEM;
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) < 0) {
                        free(groups);
                        return -errno;
                }
        }
        *ret = (Peer) {
                .pid = cred.pid,
                .uid = cred.uid,
                .gid = cred.gid,
                .groups = groups,
                .n_groups = glen / sizeof(gid_t),
                .fd = fd,
                .pidfd = -1,
                .caps_err = -ESRCH,     /* in a PID namespace we cannot see into */
        };
        /*
         * Its capabilities now, as close to connect() as we get: one it gains
         * later (an exec of a program with file capabilities, while a fork of
         * it asks on the same connection) does not count (peer_has_cap()).
         */
        if (cred.pid > 0) {
                /* capget() of another process: no /proc read at every accept (that cost 5 us of an open's 38). */
                struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = cred.pid };
                struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};

                ret->caps_err = syscall(SYS_capget, &hdr, data) < 0 ? -errno : 0;
                ret->caps_at_accept = data[0].effective | (unsigned long long) data[1].effective << 32;
        }
        return 0;
}

void peer_done(Peer *p) {
        free(p->groups);
        p->groups = NULL;
        p->n_groups = 0;
        if (p->pidfd >= 0)
                close(p->pidfd);
        p->pidfd = -1;
        p->pidfd_from_socket = false;
}

int pidfd_exited(int pidfd) {
        struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
        int r = poll(&pfd, 1, 0);

        if (r < 0)
                return -errno;
        return r > 0;
}

int peer_pin_process(Peer *p) {
        struct pollfd sock = { .fd = p->fd, .events = POLLRDHUP };
        socklen_t len = sizeof(int);
        int pidfd = -1;

        if (p->pidfd >= 0)
                return 0;
        if (p->pin_tried)
                return -ESRCH;
        p->pin_tried = true;
        if (getsockopt(p->fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) {
                p->pidfd = pidfd;
                p->pidfd_from_socket = true;
                return 0;
        }
        /* Any other failure (the process is gone: ESRCH, EINVAL) is no reason to trust its pid. */
        if (errno != ENOPROTOOPT)
                return -errno;
        if (p->pid <= 0)
                return -ESRCH;          /* in a PID namespace we cannot see into */
        pidfd = pidfd_of_pid(p->pid);
        if (pidfd < 0)
                return -errno;
        /* After pidfd_open(): a connection still up then means its peer (or a fork of it) was alive. */
        if (poll(&sock, 1, 0) < 0 || (sock.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
                close(pidfd);
                return -ESRCH;
        }
        p->pidfd = pidfd;
        return 0;
}

/* The number of ids a uid_map or gid_map maps; 0 when it cannot be read. */
static unsigned long long map_count(const char *path) {
        _cleanup_(fclosep) FILE *f = fopen(path, "re");
        unsigned long long total = 0, inside, outside, count;

        if (!f)
                return 0;
        while (fscanf(f, "%llu %llu %llu", &inside, &outside, &count) == 3)
                total += count;
        return total;
}

static unsigned long read_id(const char *path, unsigned long fallback) {
        _cleanup_(fclosep) FILE *f = fopen(path, "re");
        unsigned long v;

        return f && fscanf(f, "%lu", &v) == 1 ? v : fallback;
}

/*
 * The uid and gid that SO_PEERCRED and SO_PEERGROUPS show for ids our user
 * namespace does not map (kernel.overflowuid and overflowgid), or -1 where
 * it maps every id (the initial one does), so that none is shown so. In a
 * namespace that maps a range (a container), a peer from outside it, or one
 * that entered it keeping groups of outside, has ids the kernel compares
 * as they are, and that we see as these. Asked once: maps are written once.
 */
static struct {
        bool known;
        uid_t uid;
        gid_t gid;
} overflow;

static void overflow_read(void) {
        if (overflow.known)
                return;
        /* Unreadable: as if some ids were not mapped, which can only refuse. */
        overflow.uid = map_count("/proc/self/uid_map") >= UINT32_MAX ? (uid_t) -1 :
                       (uid_t) read_id("/proc/sys/kernel/overflowuid", 65534);
        overflow.gid = map_count("/proc/self/gid_map") >= UINT32_MAX ? (gid_t) -1 :
                       (gid_t) read_id("/proc/sys/kernel/overflowgid", 65534);
        overflow.known = true;
}

/*
 * Whether the peer's uid is uid. The overflow uid never is: it may stand
 * for any id we do not map, and the kernel compares the real one (a peer
 * that really has it is refused what the kernel would grant it by owner).
 */
static bool peer_is_uid(const Peer *p, uid_t uid) {
        overflow_read();
        return p->uid == uid && p->uid != overflow.uid;
}

bool peer_in_group(const Peer *p, gid_t gid) {
        overflow_read();
        /* As for uids: a group we see as the overflow gid may be any of those we do not map. */
        if (gid == overflow.gid)
                return false;
        if (p->gid == gid)
                return true;
        for (size_t i = 0; i < p->n_groups; i++)
                if (p->groups[i] == gid)
                        return true;
        return false;
}

/* The user namespace whose CAP_IPC_OWNER the kernel asks for: the owner of our IPC namespace. */
static int ipc_owner_userns(struct stat *ret) {
        _cleanup_(closep) int ipc = -1;
        _cleanup_(closep) int user = -1;

        ipc = open("/proc/self/ns/ipc", O_RDONLY | O_CLOEXEC);
        if (ipc < 0)
                return -errno;
        user = ioctl(ipc, NS_GET_USERNS);
        if (user < 0)
                return -errno;          /* EPERM: owned above our own user namespace */
        return fstat(user, ret) < 0 ? -errno : 0;
}

/* Effective uid and CapEff from /proc/PID/status (uids as our user namespace sees them). */
static int read_proc_status(pid_t pid, uid_t *ret_euid, unsigned long long *ret_capeff) {
        _cleanup_(fclosep) FILE *f = NULL;
        char path[64], line[256];
        bool have_uid = false, have_cap = false;

        snprintf(path, sizeof path, "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        /* Prefixes, not sscanf() of every line. A long Groups line comes in pieces of digits. */
        while ((!have_uid || !have_cap) && fgets(line, sizeof line, f)) {
                char *end;

                if (strncmp(line, "Uid:", 4) == 0) {
                        /* Real, then effective. */
                        (void) strtoul(line + 4, &end, 10);
                        *ret_euid = (uid_t) strtoul(end, &end, 10);
                        have_uid = end != line + 4;
                } else if (strncmp(line, "CapEff:", 7) == 0) {
                        *ret_capeff = strtoull(line + 7, &end, 16);
                        have_cap = end != line + 7;
                }
        }
        return have_uid && have_cap ? 0 : -ENODATA;
}

/*
 * Whether the connecting process holds one of the capabilities in `caps`
 * (bit n: capability n) where the kernel looks for it: 1 yes, 0 no, or a
 * negative errno when that cannot be established.
 */
static int peer_has_cap(const Peer *p, unsigned long long caps) {
        _cleanup_(closep) int own = -1;
        struct stat owner, theirs;
        socklen_t len = sizeof own;
        unsigned long long capeff = 0;
        char path[64];
        uid_t euid = 0;
        int pidfd, r;

        if (p->pid <= 0)
                return -ESRCH;          /* in a PID namespace we cannot see into */
        if (p->caps_err < 0)
                return p->caps_err;
        /*
         * The socket pins the connecting process's struct pid: this is that very
         * process. The one pinned already serves when it came from the socket too
         * (not from pidfd_open() of a pid, which proves less).
         */
        if (p->pidfd >= 0 && p->pidfd_from_socket)
                pidfd = p->pidfd;
        else if (getsockopt(p->fd, SOL_SOCKET, SO_PEERPIDFD, &own, &len) < 0)
                return -errno;          /* ENOPROTOOPT before Linux 6.5 */
        else
                pidfd = own;
        r = ipc_owner_userns(&owner);
        if (r < 0)
                return r;
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int) p->pid);
        if (stat(path, &theirs) < 0)
                return -errno;          /* ENOENT under hidepid, EACCES without ptrace rights */
        r = read_proc_status(p->pid, &euid, &capeff);
        if (r < 0)
                return r;
        /*
         * Only now: a pidfd polls readable once its process has exited. Still
         * running means the pid was never free, so the reads above were of
         * the process that connected. (Not pidfd_send_signal(): its EPERM,
         * from another user's process or from a seccomp filter, says nothing.)
         */
        r = pidfd_exited(pidfd);
        if (r < 0)
                return r;
        if (r > 0)
                return -ESRCH;
        return owner.st_dev == theirs.st_dev && owner.st_ino == theirs.st_ino && euid == p->uid &&
               (capeff & p->caps_at_accept & caps) != 0;
}

bool access_allowed(const Peer *p, const ChannelPerm *perm, bool read, bool write) {
        unsigned want = (read ? 4u : 0u) | (write ? 2u : 0u);
        unsigned granted = perm->mode;
        int r;

        if (peer_is_uid(p, perm->cuid) || peer_is_uid(p, perm->uid))
                granted >>= 6;
        else if (peer_in_group(p, perm->cgid) || peer_in_group(p, perm->gid))
                granted >>= 3;
        if ((granted & want & 7u) == want)
                return true;
        /*
         * Only a refusal by the bits needs a capability, as in the kernel: the
         * one it looks at for System V objects, or for files the ones open(2)
         * does (reading alone may also come from CAP_DAC_READ_SEARCH, unless
         * a reader is handed a file read-write, as a broadcast subscriber its
         * table: the bits grant that with read, a capability does not).
         */
        r = peer_has_cap(p, !perm->files ? 1ULL << CAP_IPC_OWNER :
                                write || perm->readers_write ? 1ULL << CAP_DAC_OVERRIDE :
                                (1ULL << CAP_DAC_OVERRIDE) | (1ULL << CAP_DAC_READ_SEARCH));
        /*
         * The fallback is for a system that cannot show the capability (no
         * SO_PEERPIDFD, /proc hidden, another PID namespace). A passing failure
         * (descriptors or memory run out, which a client can bring about) refuses:
         * it must not turn into a pass for a root peer that lacks the capability.
         * Files get no fallback: their descriptors are the access itself, where
         * a System V id still meets the kernel's own check at shmat()/semop().
         */
        if (r == -ENOPROTOOPT || r == -ENOENT || r == -EACCES || r == -ESRCH || r == -ENODATA || r == -EPERM)
                return p->uid == 0 && !perm->files;
        return r > 0;
}
