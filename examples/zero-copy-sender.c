/*
 * zero-copy-sender: publishes COUNT frames through a ring channel, each
 * written where the receiver will read it (no copy through a buffer of
 * ours), then an empty frame to say it is done. A frame that cannot be
 * finished is given up with shmb_send_abort(): no receiver sees it.
 *
 *   zero-copy-sender CHANNEL COUNT
 */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#include <shmbroker/shmbroker.h>

/* Reserve a slot, fill it in place, publish it. */
static int publish(shmb_channel *ch, long i) {
        size_t room = shmb_channel_slot_size(ch);
        void *frame;
        int n, r;

        r = shmb_send_reserve(ch, room, &frame, 5000);
        if (r < 0)
                return r;
        n = i > 0 ? snprintf(frame, room, "message %ld", i) : 0;
        if (n < 0 || (size_t) n >= room) {
                (void) shmb_send_abort(ch, frame);
                return -EMSGSIZE;
        }
        return shmb_send_commit(ch, frame, (size_t) n);
}

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        long count;
        int r;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: zero-copy-sender CHANNEL COUNT\n"
                      "As ring-sender, but writes each message straight into its ring slot\n"
                      "(shmb_send_reserve/shmb_send_commit): \"message 1\" .. \"message COUNT\",\n"
                      "then an empty message.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (argc != 3 || argv[1][0] == '-' || (count = strtol(argv[2], NULL, 10)) < 0) {
                fprintf(stderr, "usage: zero-copy-sender CHANNEL COUNT\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "zero-copy-sender: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        for (long i = 1; i <= count && r >= 0; i++)
                r = publish(ch, i);
        if (r >= 0)
                r = publish(ch, 0);
        if (r < 0)
                fprintf(stderr, "zero-copy-sender: %s\n", shmb_strerror(r));
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
