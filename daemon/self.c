#include <linux/capability.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "daemon/self.h"

static struct {
        bool known;
        uid_t euid;
        gid_t egid;
} self;

static void self_read(void) {
        if (!self.known) {
                self.euid = geteuid();
                self.egid = getegid();
                self.known = true;
        }
}

uid_t self_euid(void) {
        self_read();
        return self.euid;
}

gid_t self_egid(void) {
        self_read();
        return self.egid;
}

static pid_t pid_known;

static void pid_forget(void) {
        pid_known = 0;
}

pid_t self_pid(void) {
        static bool hooked;

        if (!hooked) {
                /* Only fails without memory; then every call asks, as before. */
                hooked = pthread_atfork(NULL, NULL, pid_forget) == 0;
                if (!hooked)
                        return getpid();
        }
        if (pid_known == 0)
                pid_known = getpid();
        return pid_known;
}

bool self_has_cap(int cap) {
        struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3] = {};

        if (cap < 0 || cap >= 32 * _LINUX_CAPABILITY_U32S_3 || syscall(SYS_capget, &h, d) < 0)
                return false;
        return d[cap / 32].effective & (1u << (cap % 32));
}

bool self_in_group(gid_t gid) {
        int n = getgroups(0, NULL);
        gid_t *v;
        bool found = false;

        if (gid == self_egid())
                return true;
        if (n <= 0)
                return false;
        v = calloc((size_t) n, sizeof *v);
        if (!v)
                return false;
        n = getgroups(n, v);
        for (int i = 0; i < n && !found; i++)
                found = v[i] == gid;
        free(v);
        return found;
}

bool self_may_chown(uid_t uid, gid_t gid) {
        return (uid == self_euid() && self_in_group(gid)) || self_has_cap(CAP_CHOWN);
}
