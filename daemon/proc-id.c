#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>

#include "common/util.h"
#include "daemon/proc-id.h"

#ifndef SYS_pidfd_open
#  define SYS_pidfd_open 434            /* Linux 5.3; the same number on every architecture but alpha */
#endif

int pidfd_of_pid(pid_t pid) {
        return (int) syscall(SYS_pidfd_open, pid, 0);
}
#define PIDFS_MAGIC_ 0x50494446
#define STAT_STARTTIME_FIELD 22         /* proc(5): /proc/PID/stat */

/*
 * Whether pidfds are pidfs inodes with numbers of their own, and a pid can
 * be turned into one to check them: asked once, the kernel does not change
 * under us. Before pidfs every pidfd is the same anonymous inode; with
 * 32-bit inode numbers they may repeat; and without pidfd_open() (before
 * Linux 5.3, or under valgrind, which lacks it) an id recorded could never
 * be checked, so the start time serves instead.
 */
static bool pidfs_ids(void) {
        static int known = -1;

        if (known < 0) {
                _cleanup_(closep) int fd = pidfd_of_pid(getpid());
                struct statfs sfs;

                known = sizeof(ino_t) >= 8 && sizeof(long) >= 8 && fd >= 0 && fstatfs(fd, &sfs) == 0 &&
                        sfs.f_type == PIDFS_MAGIC_;
        }
        return known;
}

/*
 * Field 22 of /proc/PID/stat: when the process started, in clock ticks
 * after boot. It follows the command name, which may hold spaces and
 * parentheses: fields are counted from the last ')'.
 */
static int read_starttime(pid_t pid, uint64_t *ret) {
        _cleanup_(closep) int fd = -1;
        char path[32], buf[1024], *p, *end;
        unsigned long long v;
        ssize_t n;

        snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        n = read(fd, buf, sizeof buf - 1);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        p = strrchr(buf, ')');
        /* ") " and then field 3: STAT_STARTTIME_FIELD - 3 more fields to skip. */
        for (int field = 2; p && field < STAT_STARTTIME_FIELD; field++)
                p = strchr(p + 1, ' ');
        if (!p)
                return -EBADMSG;
        errno = 0;
        v = strtoull(p + 1, &end, 10);
        if (errno || end == p + 1 || (*end != ' ' && *end != '\n' && *end))
                return -EBADMSG;
        *ret = v;
        return 0;
}

ProcId proc_id_of(pid_t pid, int pidfd) {
        ProcId id = {};
        struct stat st;

        if (pidfd >= 0 && pidfs_ids() && fstat(pidfd, &st) == 0)
                id.pidfs_ino = st.st_ino;
        else if (pid <= 0 || read_starttime(pid, &id.starttime) < 0)
                id.starttime = 0;
        return id;
}

int proc_id_matches(pid_t pid, const ProcId *id) {
        _cleanup_(closep) int pidfd = -1;
        struct stat st;
        uint64_t start;
        int r;

        if (pid <= 0)
                return -ESRCH;          /* in a PID namespace we cannot see into */
        if (kill(pid, 0) < 0 && errno == ESRCH)
                return 0;
        if (id->pidfs_ino != 0) {
                pidfd = pidfd_of_pid(pid);
                /* ENOENT (EINVAL before 6.9): pid is a thread's now, not a process's: another one. */
                if (pidfd < 0)
                        return errno == ESRCH || errno == ENOENT || errno == EINVAL ? 0 : -errno;
                if (fstat(pidfd, &st) < 0)
                        return -errno;
                return st.st_ino == id->pidfs_ino;
        }
        if (id->starttime == 0)
                return -ENODATA;
        /* Unreadable (hidepid=) proves nothing: only a start time that differs does. */
        r = read_starttime(pid, &start);
        return r < 0 ? r : start == id->starttime;
}
