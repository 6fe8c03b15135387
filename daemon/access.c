#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "common/util.h"
#include "daemon/access.h"

#define CAP_IPC_OWNER_BIT 15

/* CapEff of a live process, or -errno. */
static int peer_cap_ipc_owner(pid_t pid, uid_t uid) {
        char path[64], line[256];
        unsigned long long caps;
        FILE *f;
        int r = -ENODATA;

        snprintf(path, sizeof path, "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return uid == 0;
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "CapEff: %llx", &caps) == 1) {
                        r = (caps >> CAP_IPC_OWNER_BIT) & 1;
                        break;
                }
        fclose(f);
        return r < 0 ? uid == 0 : r;
}

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
                .cap_ipc_owner = -1,
        };
        return 0;
}

void peer_done(Peer *p) {
        free(p->groups);
        p->groups = NULL;
        p->n_groups = 0;
}

bool peer_in_group(const Peer *p, gid_t gid) {
        if (p->gid == gid)
                return true;
        for (size_t i = 0; i < p->n_groups; i++)
                if (p->groups[i] == gid)
                        return true;
        return false;
}

bool access_allowed(Peer *p, const ChannelPerm *perm, bool read, bool write) {
        unsigned want = (read ? 4u : 0u) | (write ? 2u : 0u);
        unsigned granted = perm->mode;

        if (p->uid == perm->cuid || p->uid == perm->uid)
                granted >>= 6;
        else if (peer_in_group(p, perm->cgid) || peer_in_group(p, perm->gid))
                granted >>= 3;
        if ((granted & want & 7u) == want)
                return true;
        /* Only a refusal needs the capability: read /proc once, not per connection. */
        if (p->cap_ipc_owner < 0)
                p->cap_ipc_owner = peer_cap_ipc_owner(p->pid, p->uid) > 0;
        return p->cap_ipc_owner > 0;
}
