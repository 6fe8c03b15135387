#pragma once

/*
 * The daemon's own effective uid and gid, asked once: they are system
 * calls, and were asked several times per channel at start. The daemon
 * never changes its ids, and a fork keeps them. Not thread-safe on first
 * use (the daemon has one thread).
 */

#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>

uid_t self_euid(void);
gid_t self_egid(void);

/*
 * Our pid, asked once per process (three times per channel at start
 * before). A fork asks again: the child of a test that links the daemon's
 * library is another process.
 */
pid_t self_pid(void);

/*
 * Whether chown(2) would let us give a file of ours owner uid and group
 * gid: our own uid, and our gid or a supplementary group, or anything
 * with CAP_CHOWN in our effective set. Asked at each call (groups may be
 * many; calls are per reload, not per request). A prediction, for a
 * refusal before anything changes: the chown itself may still fail (an id
 * this user namespace does not map).
 */
bool self_may_chown(uid_t uid, gid_t gid);

/* Whether capability cap (CAP_*) is in our effective set. Asked at each call. */
bool self_has_cap(int cap);

/* Whether gid is our effective gid or one of our supplementary groups. Asked at each call. */
bool self_in_group(gid_t gid);

/*
 * Whether st is of a file the daemon owns that nobody else may read,
 * write or enter (no group or other bits): what it keeps for itself (its
 * lock files, holder ledgers and their directory) must be, or it is not
 * believed. The file's type is the caller's to check.
 */
static inline bool self_owns_privately(const struct stat *st) {
        return st->st_uid == self_euid() && !(st->st_mode & 077);
}
