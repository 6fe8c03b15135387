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
