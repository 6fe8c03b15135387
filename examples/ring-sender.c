/*
 * ring-sender: sends COUNT messages through a ring channel, then an empty
 * one to say it is done. The ring itself tells each side when to write and
 * when to read: send blocks while the ring is full.
 *
 *   ring-sender CHANNEL COUNT
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shmbroker/shmbroker.h>

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        long count;
        int r = 0;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: ring-sender CHANNEL COUNT\n"
                      "Sends COUNT messages \"message 1\" .. \"message COUNT\" (no newline)\n"
                      "through a ring channel, then an empty message that ends the receiver.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 3 || argv[1][0] == '-' || (count = strtol(argv[2], NULL, 10)) < 0) {
                fprintf(stderr, "usage: ring-sender CHANNEL COUNT\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "ring-sender: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        for (long i = 1; i <= count && r >= 0; i++) {
                char text[64];

                snprintf(text, sizeof text, "message %ld", i);
                r = shmb_send(ch, text, strlen(text), 5000);
        }
        if (r >= 0)
                r = shmb_send(ch, "", 0, 5000);
        if (r < 0)
                fprintf(stderr, "ring-sender: %s\n", shmb_strerror(r));
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
