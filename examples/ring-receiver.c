/*
 * ring-receiver: prints the messages of a ring channel, one per line,
 * until an empty message arrives.
 *
 *   ring-receiver CHANNEL
 */

#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/types.h>

#include <shmbroker/shmbroker.h>

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        char *buf;
        ssize_t n;
        int r;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: ring-receiver CHANNEL\n"
                      "Prints each message of a ring channel on a line of its own until an\n"
                      "empty message arrives; gives up after 10 s with nothing to receive.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-') {
                fprintf(stderr, "usage: ring-receiver CHANNEL\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "ring-receiver: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        buf = malloc(shmb_channel_slot_size(ch) + 1);
        if (!buf) {
                shmb_close(ch);
                return 1;
        }
        while ((n = shmb_recv(ch, buf, shmb_channel_slot_size(ch), 10000)) > 0)
                printf("%.*s\n", (int) n, buf);
        if (n < 0)
                fprintf(stderr, "ring-receiver: %s\n", shmb_strerror((int) n));
        fflush(stdout);
        free(buf);
        shmb_close(ch);
        return n < 0 ? 1 : 0;
}
