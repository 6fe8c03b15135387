#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/notify.h"

/* How long a state change waits for the receiver to make room: a stuck manager stalls us this long at most. */
enum { STATE_WAIT_MS = 1000 };

/* A state change found no room within STATE_WAIT_MS: the receiver is stuck, wait no more until a send goes through. */
static bool stuck;

/*
 * The last state change that found no room, until it goes through or a
 * newer one replaces it: a READY=1 dropped for good would leave systemd
 * waiting for it (and kill the service at TimeoutStartSec=, or fail the
 * reload after RELOADING=1) although its queue had room a moment later.
 */
static char pending[1024];

/*
 * A socket connected to $NOTIFY_SOCKET (connected, poll() reports whether
 * the receiver has room), one per message as sd_notify() does, so that no
 * descriptor stays open in between: 1 with *ret_fd, 0 when there is no
 * NOTIFY_SOCKET, or a negative errno.
 */
static int notify_open(int *ret_fd) {
        const char *e = getenv("NOTIFY_SOCKET");
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t len;
        int fd;

        if (!e || !*e)
                return 0;
        len = strlen(e);
        if ((e[0] != '/' && e[0] != '@') || len >= sizeof sa.sun_path)
                return -EAFNOSUPPORT;
        memcpy(sa.sun_path, e, len);
        if (sa.sun_path[0] == '@')
                sa.sun_path[0] = 0;
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        /* An abstract name is exactly its bytes, no terminating NUL. */
        if (connect(fd, (struct sockaddr *) &sa,
                    (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len + (e[0] == '/'))) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        *ret_fd = fd;
        return 1;
}

/* Send on fd, waiting for room as notify.h says: 0, or a negative errno. */
static int send_on(int fd, bool state, const char *text) {
        size_t len = strlen(text);
        bool waited = false;

        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLOUT };

                /* Connected: fails with EAGAIN while the receiver's queue is full. */
                if (send(fd, text, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) {
                        stuck = false;
                        return 0;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN)
                        return -errno;
                if (!state || stuck)
                        return -EAGAIN;
                if (waited) {
                        stuck = true;
                        return -EAGAIN;
                }
                waited = true;
                if (poll(&p, 1, STATE_WAIT_MS) < 0 && errno != EINTR)
                        return -errno;
        }
}

int notify_send(bool state, const char *text) {
        int fd = -1, r;

        r = notify_open(&fd);
        if (r <= 0)
                return r;
        if (state)
                pending[0] = 0;         /* a newer state change says what it would have */
        else if (pending[0] && send_on(fd, false, pending) == 0)
                pending[0] = 0;
        r = send_on(fd, state, text);
        if (state && r == -EAGAIN && strlen(text) < sizeof pending)
                strcpy(pending, text);
        close(fd);
        return r;
}

int notify_flush(void) {
        int fd = -1, r;

        if (!pending[0])
                return 0;
        r = notify_open(&fd);
        if (r > 0) {
                r = send_on(fd, false, pending);
                close(fd);
        }
        /* Only a full queue is worth another try; anything else would fail the same way again. */
        if (r != -EAGAIN)
                pending[0] = 0;
        return r < 0 ? r : 0;
}

int notify_sendf(bool state, const char *format, ...) {
        char text[1024];
        va_list ap;
        int n;

        va_start(ap, format);
        n = vsnprintf(text, sizeof text, format, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= sizeof text)
                return -EMSGSIZE;
        return notify_send(state, text);
}
