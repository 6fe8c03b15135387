/*
 * A test program for tests/test-client.c: connect with socket_path NULL,
 * as a program does that leaves the choice to libshmbroker, and list the
 * channels. The test runs it set-user-ID and set-group-ID, which is why it
 * is linked without a wrapper script (-no-install): a set-user-ID program
 * ignores LD_LIBRARY_PATH, and finds the library by its rpath alone.
 *
 * Its stdout: a first line with the effective ids it runs with (that the
 * test may see that the set-ID bit took), then "reached" and the first
 * channel's name, exit status 0, when a daemon answered; "not reached"
 * and the error's name, exit status 1, when not.
 */

#include <stdio.h>
#include <unistd.h>
#include <shmbroker/shmbroker.h>

/*
 * LeakSanitizer's check at exit (CI's ASan build) stops the process's
 * threads with ptrace, which a set-ID process refuses: it would end the
 * run with its own fatal error, and our output unflushed. Nothing to
 * check here that the other programs do not.
 */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void) {
        return 1;
}

int main(void) {
        shmb_status_list *l = NULL;
        shmb_client *c = NULL;
        int r;

        printf("euid %u egid %u\n", (unsigned) geteuid(), (unsigned) getegid());
        r = shmb_connect(NULL, &c);
        if (r == 0)
                r = shmb_list(c, &l);
        if (r < 0) {
                printf("not reached: %s\n", shmb_errno_name(r));
                shmb_disconnect(c);
                return 1;
        }
        printf("reached %s\n", shmb_status_count(l) > 0 ? shmb_status_name(l, 0) : "(no channels)");
        shmb_status_free(l);
        shmb_disconnect(c);
        return 0;
}
