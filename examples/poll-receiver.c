/*
 * poll-receiver: prints the messages of several ring or broadcast channels
 * (as a subscriber) as they come,
 * from one poll() loop, one line each: "CHANNEL: message". A channel is done
 * when an empty message arrives, the program when all are; it gives up after
 * 10 s with nothing to do. It reads each message where it lies (zero copy)
 * and also watches each channel's connection, so that its holds come back
 * by themselves after a broker restart, and stdin: a line "quit" ends it
 * early (at the end of stdin it just stops watching it).
 *
 *   poll-receiver CHANNEL...
 */

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <shmbroker/shmbroker.h>

#define IDLE_MS 10000

static long long now_ms(void) {
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (long long) t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/*
 * Print what ch holds now; 1 when its empty message came, 0 when it has no
 * more for now. *got is set when a message came.
 */
static int drain(const char *name, shmb_channel *ch, bool *got) {
        for (;;) {
                const void *msg;
                ssize_t n = shmb_recv_peek(ch, &msg, 0);
                int r;

                if (n == -EAGAIN)
                        return 0;       /* the fd polls readable again when there is more */
                if (n < 0)
                        return (int) n;
                *got = true;
                if (n > 0)
                        printf("%s: %.*s\n", name, (int) n, (const char *) msg);
                r = shmb_recv_release(ch, msg);
                if (r < 0)
                        return r;
                if (n == 0)
                        return 1;
        }
}

int main(int argc, char *argv[]) {
        int n = argc - 1, left = n, r = 0;
        long long idle_since;
        shmb_channel **ch;
        struct pollfd *p;
        bool *done;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: poll-receiver CHANNEL...\n"
                      "Waits for several ring or broadcast channels (as a subscriber) at once\n"
                      "in one poll() loop\n"
                      "(shmb_channel_fd) and prints \"CHANNEL: message\" for each message as it\n"
                      "comes. A channel is done at its empty message, the program when all are;\n"
                      "a line \"quit\" on stdin ends it early; it gives up after 10 s idle.\n"
                      "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n", stdout);
                return 0;
        }
        if (n < 1 || argv[1][0] == '-') {
                fprintf(stderr, "usage: poll-receiver CHANNEL...\n");
                return 2;
        }
        ch = calloc((size_t) n, sizeof *ch);
        /* Per channel its fd and its connection's; stdin last. */
        p = calloc((size_t) (2 * n + 1), sizeof *p);
        done = calloc((size_t) n, sizeof *done);
        if (!ch || !p || !done) {
                fprintf(stderr, "poll-receiver: out of memory\n");
                free(ch);
                free(p);
                free(done);
                return 1;
        }
        for (int i = 0; i < n && r >= 0; i++) {
                r = shmb_open_channel(NULL, argv[i + 1], SHMB_RW, &ch[i]);
                /* On a broadcast channel rw publishes: subscribe (ro) instead. */
                if (r >= 0 && shmb_channel_layout(ch[i]) == SHMB_LAYOUT_BROADCAST) {
                        shmb_close(ch[i]);
                        ch[i] = NULL;
                        r = shmb_open_channel(NULL, argv[i + 1], SHMB_RO, &ch[i]);
                }
                if (r >= 0)
                        r = p[2 * i].fd = shmb_channel_fd(ch[i]);
                if (r >= 0)
                        r = p[2 * i + 1].fd = shmb_client_fd(shmb_channel_get_client(ch[i]));
                if (r < 0)
                        fprintf(stderr, "poll-receiver: %s: %s\n", argv[i + 1], shmb_strerror(r));
                p[2 * i].events = p[2 * i + 1].events = POLLIN;
        }
        p[2 * n] = (struct pollfd) { .fd = STDIN_FILENO, .events = POLLIN };
        /*
         * Idle is measured from the last message, not per poll(): a channel's
         * descriptor also turns readable with nothing to read (about once a
         * second, the bound of every wait), which is not something to do.
         */
        idle_since = now_ms();
        while (r >= 0 && left > 0) {
                long long wait = idle_since + IDLE_MS - now_ms();
                int k;

                if (wait <= 0) {
                        r = -ETIMEDOUT;
                        break;
                }
                k = poll(p, (nfds_t) (2 * n + 1), (int) wait);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        r = -errno;
                        break;
                }
                if (k == 0)
                        continue;       /* the deadline above ends it */
                if (p[2 * n].revents) {
                        char line[64];
                        ssize_t got = read(STDIN_FILENO, line, sizeof line - 1);

                        if (got <= 0)
                                p[2 * n].fd = -1;       /* its end: poll() skips it */
                        else if (line[got] = '\0', strncmp(line, "quit", 4) == 0)
                                break;
                }
                for (int i = 0; i < n && r >= 0; i++) {
                        bool got = false;

                        /* Reconnecting is retried by itself: its errors are only news. */
                        if (p[2 * i + 1].revents)
                                (void) shmb_client_process(shmb_channel_get_client(ch[i]));
                        if (!p[2 * i].revents || done[i])
                                continue;
                        r = drain(argv[i + 1], ch[i], &got);
                        if (got)
                                idle_since = now_ms();
                        if (r == 1) {
                                done[i] = true;
                                left--;
                                p[2 * i].fd = -1;       /* poll() skips it */
                                r = 0;
                        }
                        if (r < 0)
                                fprintf(stderr, "poll-receiver: %s: %s\n", argv[i + 1], shmb_strerror(r));
                }
        }
        if (r == -ETIMEDOUT)
                fprintf(stderr, "poll-receiver: nothing for %d s, giving up\n", IDLE_MS / 1000);
        fflush(stdout);
        for (int i = 0; i < n; i++)
                shmb_close(ch[i]);
        free(ch);
        free(p);
        free(done);
        return r < 0 ? 1 : 0;
}
