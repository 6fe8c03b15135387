#pragma once

/*
 * What tells a process apart from a later one that got its pid, for a
 * broker that restarts after a crash and must judge its predecessor's
 * holders (ring.h RingHolder): the inode of a pidfd where pidfds live in
 * pidfs (Linux 6.9+; 64-bit inode numbers there are never reused while the
 * system runs) and pidfd_open() works to check it later; else the start
 * time in /proc/PID/stat. The first costs one fstat() of a pidfd the broker
 * keeps anyway; the second a walk through /proc, nine times as long.
 */

#include <stdint.h>
#include <sys/types.h>

/* One of the two is set (ring.h RingHolder keeps both fields); both 0: not known. */
typedef struct ProcId {
        uint64_t starttime;
        uint64_t pidfs_ino;
} ProcId;

/* pidfd_open(pid, 0), which glibc before 2.36 does not wrap: a pidfd, or -1 with errno. */
int pidfd_of_pid(pid_t pid);

/*
 * The id of the process pid, through pidfd when one is given (-1: none;
 * it must be pid's). A process whose id cannot be read gets neither.
 */
ProcId proc_id_of(pid_t pid, int pidfd);

/*
 * Whether pid names the process that had `id`: 1 yes, 0 no (no such pid,
 * or another process has it now), or a negative errno when that cannot be
 * told (no pidfd_open(), /proc hidden, id not known). A zombie is alive.
 */
int proc_id_matches(pid_t pid, const ProcId *id);
