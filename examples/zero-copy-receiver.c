/*
 * zero-copy-receiver: prints the frames of a ring channel, one per line,
 * reading each where it lies in the shared segment, until an empty frame
 * arrives. The slot is the sender's again only once released: a receiver
 * that holds frames long holds the ring up.
 *
 *   zero-copy-receiver CHANNEL
 */

#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <shmbroker/shmbroker.h>

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        const void *frame;
        ssize_t n;
        int r;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: zero-copy-receiver CHANNEL\n"
                      "As ring-receiver, but reads each message where it lies in the ring\n"
                      "(shmb_recv_peek/shmb_recv_release); ends at an empty message, gives up\n"
                      "after 10 s with nothing to receive.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-') {
                fprintf(stderr, "usage: zero-copy-receiver CHANNEL\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "zero-copy-receiver: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        while ((n = shmb_recv_peek(ch, &frame, 10000)) >= 0) {
                if (n > 0)
                        printf("%.*s\n", (int) n, (const char *) frame);
                r = shmb_recv_release(ch, frame);
                if (r < 0 || n == 0)
                        break;
        }
        if (n < 0)
                r = (int) n;
        if (r < 0)
                fprintf(stderr, "zero-copy-receiver: %s\n", shmb_strerror(r));
        fflush(stdout);
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
