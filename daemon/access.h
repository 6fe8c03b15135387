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
        int fd;                 /* the connection's socket, borrowed: asked for SO_PEERPIDFD when needed */
        int pidfd;              /* the connecting process, once pinned (peer_pin_process()); owned; -1: none */
        bool pidfd_from_socket; /* pidfd is SO_PEERPIDFD's, not pidfd_open()'s of a pid */
        bool pin_tried;
        int caps_err;                   /* 0, or why the effective set could not be read at accept (capget()) */
        unsigned long long caps_at_accept;      /* the effective set then: a capability counts only in both */
} Peer;

/* Fill *ret from a connected Unix socket, which *ret borrows. Negative errno on failure. */
int peer_from_socket(int fd, Peer *ret);
/* Free the groups and close the pidfd. */
void peer_done(Peer *p);

/*
 * Keep a pidfd of the process that connected, in p->pidfd, for telling
 * when it exits: SO_PEERPIDFD (the socket pins that very process), or
 * where the kernel lacks it (before Linux 6.5), pidfd_open() of its pid,
 * but only while the connection is not hung up, as a peer that is gone
 * may have left its pid to another process (a peer that exited under a
 * fork that keeps its socket still can: that risk is accepted). Tried
 * once per connection: 0 when p->pidfd is one, else a negative errno
 * (no pidfd can be had; p->pidfd stays -1).
 */
int peer_pin_process(Peer *p);

/* Whether the process of a pidfd has exited (all its threads; a zombie has): 1 yes, 0 no, or a negative errno. */
int pidfd_exited(int pidfd);

bool peer_in_group(const Peer *p, gid_t gid);

/*
 * Whether the peer may use an object with these permissions: `read` and
 * `write` name the bits needed (ro: read; rw: read and write).
 *
 * In a user namespace that does not map every id, the overflow uid and
 * gid (what the kernel shows for an id we do not map) never count as the
 * owner or as a group: they may stand for any id, and the kernel compares
 * the real one.
 *
 * Where the bits refuse, the kernel still lets a process with
 * CAP_IPC_OWNER over the IPC namespace's user namespace through, and so
 * does this, by one rule:
 *
 *   - The capability counts only when all of this can be established: the
 *     connecting process's pidfd (SO_PEERPIDFD); its /proc/PID/ns/user is
 *     the user namespace that owns our IPC namespace (a process that made
 *     a user namespace of its own has a full CapEff there, which the
 *     kernel does not honour for our objects); its /proc/PID/status shows
 *     CAP_IPC_OWNER in CapEff and still the effective uid it connected
 *     with (not a set-uid program it executed since); and, after those
 *     reads, the pidfd shows the process still running, so PID named it
 *     throughout and not a process that reused the number.
 *   - Where that cannot be established (no SO_PEERPIDFD, /proc of that
 *     process not visible to us, as under ProtectProc=invisible, or the
 *     process gone), uid 0 passes and nobody else.
 *
 * The capability is read at each refusal by the bits, not cached, and
 * counts only if CapEff also had it when the connection was accepted: a
 * process that gains it later by executing a program with file
 * capabilities must not lend it to a fork sharing the connection. (One
 * gained between connect() and the accept is not seen.) A peer in an
 * ancestor user namespace is refused although the kernel would let it
 * attach: we cannot see that far up.
 *
 * Files (perm->files, a posix channel) follow open(2) instead: the
 * capability is CAP_DAC_OVERRIDE (reading: or CAP_DAC_READ_SEARCH, unless
 * perm->readers_write: readers are handed files read-write), proven
 * the same way, and there is no fallback: the descriptors the daemon hands
 * over are the access itself, which no later kernel check guards.
 */
bool access_allowed(const Peer *p, const ChannelPerm *perm, bool read, bool write);
