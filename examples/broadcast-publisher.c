/*
 * broadcast-publisher: publishes COUNT messages on a broadcast channel,
 * writing each in place (zero copy: reserve, fill, commit), then an empty
 * one to say it is done. Every subscriber gets every message
 * published after it subscribed, so with SUBSCRIBERS it first waits (up to
 * 10 s) until the broker lists that many. With "overflow": "block" a send
 * waits for the slowest subscriber; with "drop" it never waits.
 *
 *   broadcast-publisher CHANNEL COUNT [SUBSCRIBERS]
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <shmbroker/shmbroker.h>

/* Room a message takes at most here; the channel's slot_size must be at least this. */
#define MIN_SLOT 32

/* How many subscribers the broker's status lists for the channel (its "subscriptions"), or a negative errno. */
static int count_subscribers(shmb_channel *ch, const char *name) {
        char request[128], *answer = NULL;
        const char *p;
        int n = 0, r;

        snprintf(request, sizeof request, "{\"op\":\"status\",\"channel\":\"%s\"}", name);
        r = shmb_request_json(shmb_channel_get_client(ch), request, &answer);
        if (r < 0)
                return r;
        /* One "position" per subscriber: enough for an example, which does not parse JSON. */
        for (p = answer; (p = strstr(p, "\"position\":")); p++)
                n++;
        free(answer);
        return n;
}

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        long count, want = 0;
        int r = 0;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: broadcast-publisher CHANNEL COUNT [SUBSCRIBERS]\n"
                      "Publishes COUNT messages \"message 1\" .. \"message COUNT\" (no newline) on a\n"
                      "broadcast channel, writing each in place (zero copy), then an empty\n"
                      "message that ends the subscribers. With SUBSCRIBERS it first waits (up to\n"
                      "10 s) until the broker lists that many subscribers.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if ((argc != 3 && argc != 4) || argv[1][0] == '-' || (count = strtol(argv[2], NULL, 10)) < 0 ||
            (argc == 4 && (want = strtol(argv[3], NULL, 10)) < 0)) {
                fprintf(stderr, "usage: broadcast-publisher CHANNEL COUNT [SUBSCRIBERS]\n");
                return 2;
        }
        r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);
        if (r < 0) {
                fprintf(stderr, "broadcast-publisher: %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        for (int tries = 0; want > 0 && (r = count_subscribers(ch, argv[1])) >= 0 && r < want; tries++) {
                if (tries == 1000) {
                        fprintf(stderr, "broadcast-publisher: %s: %d of %ld subscribers after 10 s\n", argv[1], r, want);
                        shmb_close(ch);
                        return 1;
                }
                nanosleep(&(struct timespec) { .tv_nsec = 10000000 }, NULL);
        }
        /* Each message is written where the subscribers will read it: reserve a slot, fill it, commit. */
        for (long i = 1; i <= count + 1 && r >= 0; i++) {
                void *slot;
                int n = 0;

                r = shmb_send_reserve(ch, 64, &slot, 5000);
                if (r < 0)
                        break;
                if (i <= count)         /* the last one stays empty: the end */
                        n = snprintf(slot, MIN_SLOT, "message %ld", i);
                r = shmb_send_commit(ch, slot, (size_t) n);
        }
        if (r < 0)
                fprintf(stderr, "broadcast-publisher: %s\n", shmb_strerror(r));
        shmb_close(ch);
        return r < 0 ? 1 : 0;
}
