#include <pthread.h>
#include <stdbool.h>
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
