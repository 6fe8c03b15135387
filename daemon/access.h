#pragma once

/*
 * Who may open a channel: the kernel's own rule (ipc/util.c ipcperms()),
 * applied to the peer's SO_PEERCRED credentials and SO_PEERGROUPS groups,
 * so the daemon answers EACCES exactly where shmat()/semop() would fail.
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "daemon/channel.h"

typedef struct Peer {
        pid_t pid;
        uid_t uid;              /* effective ids at connect() time */
        gid_t gid;
        gid_t *groups;          /* supplementary groups; owned */
        size_t n_groups;
        int cap_ipc_owner;      /* CAP_IPC_OWNER in its effective set: 1, 0, or -1 not read yet */
} Peer;

/* Fill *ret from a connected Unix socket. Negative errno on failure. */
int peer_from_socket(int fd, Peer *ret);
void peer_done(Peer *p);

bool peer_in_group(const Peer *p, gid_t gid);

/*
 * Whether the peer may use an object with these permissions: `read` and
 * `write` name the bits needed (ro: read; rw: read and write). A peer with
 * CAP_IPC_OWNER passes, as in the kernel; the capability is read from
 * /proc/PID/status (once, and only when the bits alone would refuse), and
 * where that cannot be read, uid 0 is taken to hold it.
 */
bool access_allowed(Peer *p, const ChannelPerm *perm, bool read, bool write);
