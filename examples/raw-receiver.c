/*
 * raw-receiver: prints what raw-sender writes, one message per line, until
 * the empty message. See raw-sender.c for the protocol.
 *
 *   raw-receiver CHANNEL
 */

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <shmbroker/shmbroker.h>

enum { SEM_WRITABLE, SEM_READABLE };

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        int r;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: raw-receiver CHANNEL\n"
                      "Prints the messages raw-sender writes into a raw channel, one per line,\n"
                      "until an empty one; gives up after 10 s with nothing to read. Format:\n"
                      "a 32-bit length (host byte order), then the bytes; semaphore 0 means\n"
                      "\"may be written\", semaphore 1 \"may be read\".\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-') {
                fprintf(stderr, "usage: raw-receiver CHANNEL\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "raw-receiver: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        for (;;) {
                const char *base = shmb_channel_addr(ch);
                char text[4096];
                uint32_t len;

                r = shmb_sem_wait(ch, SEM_READABLE, 10000);
                if (r < 0) {
                        fprintf(stderr, "raw-receiver: %s\n", shmb_strerror(r));
                        break;
                }
                memcpy(&len, base, sizeof len);
                if (len >= sizeof text || len + sizeof len > shmb_channel_size(ch))
                        len = 0;
                memcpy(text, base + sizeof len, len);
                text[len] = 0;
                r = shmb_sem_post(ch, SEM_WRITABLE);
                if (len == 0 || r < 0)
                        break;
                printf("%s\n", text);
        }
        fflush(stdout);
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
