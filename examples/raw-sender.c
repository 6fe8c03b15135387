/*
 * raw-sender: the classic two-process exchange over a raw channel.
 * Semaphore 0 says "the buffer may be written", semaphore 1 "it may be
 * read" (the example config starts them at [1, 0]). The segment holds a
 * length and the text. An empty message tells the receiver to stop.
 *
 *   raw-sender CHANNEL COUNT        (socket: $SHMBROKER_SOCKET or the default)
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shmbroker/shmbroker.h>

enum { SEM_WRITABLE, SEM_READABLE };

static int put(shmb_channel *ch, const char *text) {
        uint32_t len = (uint32_t) strlen(text);
        char *base = shmb_channel_addr(ch);
        int r;

        if (len + sizeof len > shmb_channel_size(ch))
                return -1;
        r = shmb_sem_wait(ch, SEM_WRITABLE, 5000);
        if (r < 0)
                return r;
        memcpy(base, &len, sizeof len);
        memcpy(base + sizeof len, text, len);
        return shmb_sem_post(ch, SEM_READABLE);
}

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        long count;
        int r;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: raw-sender CHANNEL COUNT\n"
                      "Sends COUNT messages \"message 1\" .. \"message COUNT\" through a raw\n"
                      "channel, then an empty one that ends the receiver. The segment holds a\n"
                      "32-bit length (host byte order) and then the bytes; semaphore 0 means\n"
                      "\"may be written\", semaphore 1 \"may be read\" (start them at [1, 0]).\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 3 || argv[1][0] == '-' || (count = strtol(argv[2], NULL, 10)) < 0) {
                fprintf(stderr, "usage: raw-sender CHANNEL COUNT\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "raw-sender: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        if (shmb_channel_nsems(ch) < 2) {
                fprintf(stderr, "raw-sender: %s needs two semaphores\n", argv[1]);
                shmb_close(ch);
                return 1;
        }
        for (long i = 1; i <= count; i++) {
                char text[64];

                snprintf(text, sizeof text, "message %ld", i);
                r = put(ch, text);
                if (r < 0) {
                        fprintf(stderr, "raw-sender: %s\n", shmb_strerror(r));
                        break;
                }
        }
        if (r >= 0)
                r = put(ch, "");
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
