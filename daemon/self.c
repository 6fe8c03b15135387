#include <unistd.h>

#include "daemon/self.h"

uid_t self_euid(void) {
        static uid_t euid;
        static int known;

        if (!known) {
                euid = geteuid();
                known = 1;
        }
        return euid;
}

gid_t self_egid(void) {
        static gid_t egid;
        static int known;

        if (!known) {
                egid = getegid();
                known = 1;
        }
        return egid;
}
