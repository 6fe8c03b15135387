/*
 * broadcast-subscriber: subscribes to a broadcast channel and prints each
 * message published from then on, one per line, reading it where it lies
 * in the shared segment (zero copy), until an empty message arrives. Any
 * number of subscribers print the same lines. On a channel with
 * "overflow": "drop", says on stderr how many it lost by falling behind.
 *
 *   broadcast-subscriber CHANNEL
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <shmbroker/shmbroker.h>

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        const void *msg;
        uint64_t dropped = 0;
        ssize_t n;
        int r;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: broadcast-subscriber CHANNEL\n"
                      "Subscribes to a broadcast channel and prints each message published\n"
                      "from then on, one per line, reading it in place, until an empty message;\n"
                      "gives up after 10 s with nothing to receive. On a \"drop\" channel it says\n"
                      "on stderr how many messages it lost by falling behind.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-') {
                fprintf(stderr, "usage: broadcast-subscriber CHANNEL\n");
                return 2;
        }
        /* Read-only: a subscriber. Its segment is mapped read-only; the kernel says so, not the library. */
        r = shmb_open_channel(NULL, argv[1], SHMB_RO, &ch);
        if (r < 0) {
                fprintf(stderr, "broadcast-subscriber: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        while ((n = shmb_recv_peek(ch, &msg, 10000)) >= 0) {
                if (n > 0)
                        printf("%.*s\n", (int) n, (const char *) msg);
                /* -ESTALE: overwritten while we printed it (drop mode); counted as dropped. */
                r = shmb_recv_release(ch, msg);
                if ((r < 0 && r != -ESTALE) || n == 0)
                        break;
        }
        if (n < 0)
                r = (int) n;
        if (r < 0)
                fprintf(stderr, "broadcast-subscriber: %s\n", shmb_strerror(r));
        if (shmb_channel_dropped(ch, &dropped) == 0 && dropped > 0)
                fprintf(stderr, "broadcast-subscriber: %" PRIu64 " message(s) lost by falling behind\n", dropped);
        fflush(stdout);
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
