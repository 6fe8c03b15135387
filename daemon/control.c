#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "common/util.h"
#include "daemon/control.h"
#include "daemon/log.h"

#define IN_CHUNK 512u         /* most requests fit; and malloc serves it from its per-thread cache */
#define ACCEPT_PAUSE_USEC (100 * 1000)

typedef struct Conn Conn;

struct Conn {
        Control *control;
        int fd;
        sd_event_source *source;
        Client client;
        char *in;
        size_t in_len, in_cap;
        char *out;
        size_t out_len, out_off;
        bool closing;           /* answer sent for a fatal error; close once flushed */
        bool eof;
        sd_event_source *timeout;       /* armed while a request line is half-sent */
        LIST_ENTRY(Conn) link;
};

struct Control {
        sd_event *event;
        Dispatch *dispatch;
        int listen_fd;
        sd_event_source *listen_source;
        char *bound_path;       /* unlinked on exit; NULL for an inherited socket */
        sd_event_source *resume_source;
        bool pause_logged;
        const ConfigLimits *limits;
        int reserve_fd;         /* spent to answer a client when out of descriptors */
        LIST_HEAD(, Conn) conns;
        size_t n_conns;
};

/*
 * Closing a Unix socket with unread input makes the peer's next read fail
 * with ECONNRESET instead of EOF. Discard what already arrived (bounded),
 * so a client we refuse reads our answer and then a clean end of stream.
 */
static void discard_pending_input(int fd) {
        char buf[4096];

        for (size_t total = 0; total < 4 * PROTO_LINE_MAX;) {
                ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);

                if (n <= 0)
                        break;
                total += (size_t) n;
        }
}

static Conn *conn_free(Conn *conn) {
        if (!conn)
                return NULL;
        if (conn->closing && conn->fd >= 0)
                discard_pending_input(conn->fd);
        if (!LIST_EMPTY(&conn->client.holds))
                log_debug("Client pid %d gone, dropping its holds.", (int) conn->client.peer.pid);
        client_done(&conn->client);
        sd_event_source_disable_unref(conn->source);
        sd_event_source_disable_unref(conn->timeout);
        if (conn->fd >= 0)
                close(conn->fd);
        LIST_REMOVE(conn, link);
        conn->control->n_conns--;
        /* A descriptor came free: accept again if we had paused. */
        if (conn->control->listen_source)
                (void) sd_event_source_set_enabled(conn->control->listen_source, SD_EVENT_ON);
        free(conn->in);
        free(conn->out);
        free(conn);
        return NULL;
}

static int queue_output(Conn *conn, char *line, size_t len) {
        /* flush_output() frees the buffer whenever it empties: none means nothing queued. */
        if (!conn->out) {
                conn->out = line;
                conn->out_len = len;
                return 0;
        }
        /* Compact, then append. */
        if (conn->out_off > 0) {
                memmove(conn->out, conn->out + conn->out_off, conn->out_len - conn->out_off);
                conn->out_len -= conn->out_off;
                conn->out_off = 0;
        }
        char *n = realloc(conn->out, conn->out_len + len);
        if (!n) {
                free(line);
                return -ENOMEM;
        }
        memcpy(n + conn->out_len, line, len);
        conn->out = n;
        conn->out_len += len;
        free(line);
        return 0;
}

static size_t pending_output(const Conn *conn) {
        return conn->out_len - conn->out_off;
}

/* Returns 0, or -errno when the connection is broken. */
static int flush_output(Conn *conn) {
        while (pending_output(conn) > 0) {
                ssize_t n = send(conn->fd, conn->out + conn->out_off, pending_output(conn), MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                conn->out_off += (size_t) n;
        }
        free(conn->out);
        conn->out = NULL;
        conn->out_len = conn->out_off = 0;
        return 0;
}

/* A complete request line (or an over-long one) is waiting in the buffer. */
static bool has_line(const Conn *conn) {
        size_t ignored;

        return conn->in_len > 0 &&
               proto_frame_next_max(conn->in, conn->in_len, conn->control->limits->request_max, &ignored) != 0;
}

static int on_conn_timeout(sd_event_source *s, uint64_t usec, void *userdata);

/* (Re)start the connection's one timer, request_timeout_ms from now. */
static int conn_arm_timeout(Conn *conn) {
        uint64_t now;
        int r;

        r = sd_event_now(conn->control->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        now += (uint64_t) conn->control->limits->request_timeout_ms * 1000;
        if (!conn->timeout)
                return sd_event_add_time(conn->control->event, &conn->timeout, CLOCK_MONOTONIC, now, 0,
                                         on_conn_timeout, conn);
        r = sd_event_source_set_time(conn->timeout, now);
        if (r >= 0)
                r = sd_event_source_set_enabled(conn->timeout, SD_EVENT_ONESHOT);
        return r;
}

/*
 * The daemon ends this connection: queue err with why, and close once it is
 * sent. The holds go now, not then: a peer that stops reading must not keep
 * its channels by never taking the answer. The timer becomes the deadline
 * for taking it (request_timeout_ms), after which the connection closes anyway.
 */
static int conn_fail(Conn *conn, int err, const char *why) {
        char *resp;
        size_t resp_len;
        int r;

        conn->closing = true;
        if (!LIST_EMPTY(&conn->client.holds))
                log_debug("Client pid %d is being disconnected, dropping its holds.", (int) conn->client.peer.pid);
        client_done(&conn->client);
        r = proto_encode_error(err, why, &resp, &resp_len);
        if (r >= 0)
                r = queue_output(conn, resp, resp_len);
        if (r >= 0)
                r = conn_arm_timeout(conn);
        return r;
}

/*
 * Answer every complete line we have, as long as the client keeps reading.
 * *ret_consumed says whether a line was taken, so the timer can restart.
 */
static int process_input(Conn *conn, bool *ret_consumed) {
        size_t off = 0, line_len;
        int r = 0;

        while (!conn->closing && pending_output(conn) < conn->control->limits->output_max) {
                char *resp;
                size_t resp_len;

                r = proto_frame_next_max(conn->in + off, conn->in_len - off, conn->control->limits->request_max,
                                         &line_len);
                if (r == 0)
                        break;
                if (r == E2BIG) {
                        char why[128];

                        log_info("Client pid %d sent a request line over %" PRIu32 " bytes; closing its connection.",
                                 (int) conn->client.peer.pid, conn->control->limits->request_max);
                        snprintf(why, sizeof why, "request line exceeds %" PRIu32 " bytes; closing the connection",
                                 conn->control->limits->request_max);
                        off = conn->in_len;
                        r = conn_fail(conn, E2BIG, why);
                        break;
                }
                r = dispatch_line(conn->control->dispatch, &conn->client, conn->in + off, line_len, &resp, &resp_len);
                if (r < 0)
                        break;
                off += line_len + 1;
                r = queue_output(conn, resp, resp_len);
                if (r < 0)
                        break;
        }
        if (off > 0) {
                memmove(conn->in, conn->in + off, conn->in_len - off);
                conn->in_len -= off;
                *ret_consumed = true;
        }
        /* An idle client costs no buffer: thousands of holders stay cheap. */
        if (conn->in_len == 0 && conn->in) {
                free(conn->in);
                conn->in = NULL;
                conn->in_cap = 0;
        }
        return r < 0 ? r : 0;
}

/* Read what is there, up to the line limit. Returns 0, or -errno. */
static int read_input(Conn *conn) {
        for (;;) {
                ssize_t n;

                if (conn->in_len == conn->in_cap) {
                        size_t cap = conn->in_cap ? conn->in_cap * 2 : IN_CHUNK;
                        char *p;

                        if (conn->in_cap >= PROTO_LINE_MAX)
                                return 0;       /* full: framing decides */
                        cap = MIN(cap, (size_t) PROTO_LINE_MAX);
                        p = realloc(conn->in, cap);
                        if (!p)
                                return -ENOMEM;
                        conn->in = p;
                        conn->in_cap = cap;
                }
                n = recv(conn->fd, conn->in + conn->in_len, conn->in_cap - conn->in_len, MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN ? 0 : -errno;
                }
                if (n == 0) {
                        conn->eof = true;
                        return 0;
                }
                conn->in_len += (size_t) n;
                if (memchr(conn->in + conn->in_len - n, '\n', (size_t) n))
                        return 0;       /* answer before reading more */
        }
}

static int conn_update_events(Conn *conn) {
        uint32_t events = 0;

        if (!conn->closing && !conn->eof && pending_output(conn) < conn->control->limits->output_max)
                events |= EPOLLIN;
        if (pending_output(conn) > 0)
                events |= EPOLLOUT;
        return sd_event_source_set_io_events(conn->source, events);
}

/* A request line left half-sent for too long: answer, then close. Or, when closing, the answer was never taken. */
static int on_conn_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Conn *conn = userdata;
        char why[128];

        if (conn->closing) {
                log_debug("Client pid %d did not read its last answer within %" PRIu32 " ms; closing.",
                          (int) conn->client.peer.pid, conn->control->limits->request_timeout_ms);
                conn_free(conn);
                return 0;
        }
        log_info("Client pid %d left a request half-sent for %" PRIu32 " ms; closing its connection.",
                 (int) conn->client.peer.pid, conn->control->limits->request_timeout_ms);
        snprintf(why, sizeof why, "request not completed within %" PRIu32 " ms; closing the connection",
                 conn->control->limits->request_timeout_ms);
        if (conn_fail(conn, ETIMEDOUT, why) < 0 || flush_output(conn) < 0 || pending_output(conn) == 0 ||
            conn_update_events(conn) < 0)
                conn_free(conn);
        return 0;
}

/*
 * Only a half-sent request line is timed: a connection that is idle between
 * requests (a client holding its channels) is legitimate and never is.
 */
static int conn_update_timeout(Conn *conn, bool new_line) {
        int r;

        if (conn->closing)
                return 0;       /* the timer is the deadline for taking the last answer */
        /* The clock runs only while an unfinished line waits for the client's
         * bytes: not for complete lines we hold back (backpressure), not when idle. */
        if (conn->in_len == 0 || conn->eof || has_line(conn)) {
                if (conn->timeout)
                        return sd_event_source_set_enabled(conn->timeout, SD_EVENT_OFF);
                return 0;
        }
        if (conn->timeout && !new_line) {
                int enabled;

                r = sd_event_source_get_enabled(conn->timeout, &enabled);
                if (r < 0 || enabled != SD_EVENT_OFF)
                        return r < 0 ? r : 0;   /* already running since this line began */
        }
        return conn_arm_timeout(conn);
}

static int on_conn_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Conn *conn = userdata;
        bool consumed = false;
        int r = 0;

        if (revents & EPOLLIN) {
                r = read_input(conn);
                if (r < 0)
                        goto close;
        }
        if (pending_output(conn) > 0) {
                r = flush_output(conn);
                if (r < 0)
                        goto close;
        }
        /* Answer, flush, and go on while the client takes our answers and complete
         * lines wait: nothing else would wake us for lines already buffered. */
        do {
                r = process_input(conn, &consumed);
                if (r >= 0)
                        r = flush_output(conn);
                if (r < 0)
                        goto close;
        } while (pending_output(conn) == 0 && !conn->closing && has_line(conn));
        if (pending_output(conn) == 0 && (conn->closing || conn->eof))
                goto close;
        if ((revents & (EPOLLHUP | EPOLLERR)) && !(revents & EPOLLIN))
                goto close;
        r = conn_update_events(conn);
        if (r >= 0)
                r = conn_update_timeout(conn, consumed);
        if (r < 0)
                goto close;
        return 0;
close:
        if (r < 0 && r != -ECONNRESET && r != -EPIPE)
                log_debug("Connection of pid %d closed: %s", (int) conn->client.peer.pid, strerror(-r));
        conn_free(conn);
        return 0;
}

static int on_resume(sd_event_source *s, uint64_t usec, void *userdata) {
        Control *c = userdata;

        if (c->listen_source)
                (void) sd_event_source_set_enabled(c->listen_source, SD_EVENT_ON);
        return 0;
}

/*
 * Out of descriptors (or memory): the listener stays readable, so accepting
 * again at once would spin. Stop for ACCEPT_PAUSE_USEC, or until a
 * connection closes, and say so once per episode, not per attempt.
 */
static void pause_accepting(Control *c, int err) {
        uint64_t now;

        if (!c->pause_logged)
                log_warning("Cannot accept connections (%s) with %zu open; pausing accept.", strerror(err), c->n_conns);
        c->pause_logged = true;
        (void) sd_event_source_set_enabled(c->listen_source, SD_EVENT_OFF);
        if (sd_event_now(c->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        if (c->resume_source)
                (void) sd_event_source_set_time(c->resume_source, now + ACCEPT_PAUSE_USEC);
        else
                (void) sd_event_add_time(c->event, &c->resume_source, CLOCK_MONOTONIC, now + ACCEPT_PAUSE_USEC, 0,
                                         on_resume, c);
        (void) sd_event_source_set_enabled(c->resume_source, SD_EVENT_ONESHOT);
}

/* Answer one error line to a connection we will not serve, and close it. */
static void refuse(int fd, int err, const char *why) {
        char *line;
        size_t len;

        if (proto_encode_error(err, why, &line, &len) == 0) {
                /* A fresh socket's buffer takes one line; if not, the close says enough. */
                (void) send(fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                free(line);
        }
        discard_pending_input(fd);
        close(fd);
}

/* Connection caps, overall and per uid: over either, an answer and a close. */
static int check_caps(Control *c, Conn *conn) {
        const ConfigLimits *l = c->limits;
        size_t same_uid = 0;
        char why[160];
        Conn *other;

        /* conn itself is already counted in n_conns and the list. */
        if (c->n_conns > l->connections_max) {
                snprintf(why, sizeof why, "the broker serves at most %" PRIu32 " connections; try again later",
                         l->connections_max);
                goto refuse;
        }
        LIST_FOREACH(other, &c->conns, link)
                if (other->client.peer.uid == conn->client.peer.uid)
                        same_uid++;
        if (same_uid > l->connections_per_uid) {
                snprintf(why, sizeof why, "uid %u already has %" PRIu32 " connections, the most allowed",
                         (unsigned) conn->client.peer.uid, l->connections_per_uid);
                goto refuse;
        }
        return 0;
refuse:
        log_info("Refused a connection from pid %d (uid %u): %s.", (int) conn->client.peer.pid,
                 (unsigned) conn->client.peer.uid, why);
        refuse(conn->fd, EUSERS, why);
        conn->fd = -1;
        return -EUSERS;
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Control *c = userdata;
        Conn *conn;
        int cfd, r;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
                int err = errno;

                if (err == EMFILE || err == ENFILE) {
                        /* Spend the reserve descriptor to tell one waiting client why. */
                        if (c->reserve_fd >= 0) {
                                close(c->reserve_fd);
                                c->reserve_fd = -1;
                                cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                                if (cfd >= 0)
                                        refuse(cfd, EMFILE, "the broker is out of file descriptors; try again later");
                                c->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                        }
                        pause_accepting(c, err);
                } else if (err == ENOBUFS || err == ENOMEM)
                        pause_accepting(c, err);
                else if (err != EAGAIN && err != EINTR && err != ECONNABORTED)
                        log_warning("Failed to accept a connection: %s, ignoring.", strerror(err));
                return 0;
        }
        c->pause_logged = false;
        conn = calloc(1, sizeof *conn);
        if (!conn) {
                close(cfd);
                return 0;
        }
        conn->fd = cfd;
        conn->control = c;
        client_init(&conn->client);
        LIST_INSERT_HEAD(&c->conns, conn, link);
        c->n_conns++;
        r = peer_from_socket(cfd, &conn->client.peer);
        if (r < 0) {
                log_warning("Failed to read peer credentials: %s, dropping connection.", strerror(-r));
                conn_free(conn);
                return 0;
        }
        r = check_caps(c, conn);
        if (r < 0) {
                conn_free(conn);
                return 0;
        }
        r = sd_event_add_io(c->event, &conn->source, cfd, EPOLLIN, on_conn_io, conn);
        if (r < 0) {
                log_warning("Failed to watch a connection: %s, dropping it.", strerror(-r));
                conn_free(conn);
                return 0;
        }
        log_debug("Connection from pid %d (uid %u).", (int) conn->client.peer.pid, (unsigned) conn->client.peer.uid);
        return 0;
}

int control_new(sd_event *event, Dispatch *dispatch, const ConfigLimits *limits, Control **ret) {
        Control *c = calloc(1, sizeof *c);

        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->dispatch = dispatch;
        c->limits = limits;
        c->listen_fd = -1;
        c->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        LIST_INIT(&c->conns);
        *ret = c;
        return 0;
}

/*
 * Whether a server answers on path: 1 yes, 0 no (stale), negative errno
 * when it cannot be told. Non-blocking, so a live server with a full
 * backlog (EAGAIN) counts as live instead of stalling our start.
 */
static int socket_is_live(const char *path) {
        _cleanup_(closep) int fd = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        strcpy(sa.sun_path, path);
        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) == 0 || errno == EAGAIN || errno == EINPROGRESS)
                return 1;
        return errno == ECONNREFUSED || errno == ENOENT ? 0 : -errno;
}

int control_listen(Control *c, const char *path, mode_t mode, gid_t group, char *msg, size_t msg_size) {
        _cleanup_(closep) int fd = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        int r;

        if (strlen(path) >= sizeof sa.sun_path) {
                msg_set(msg, msg_size, "socket path %s is too long", path);
                return -ENAMETOOLONG;
        }
        strcpy(sa.sun_path, path);
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode)) {
                        msg_set(msg, msg_size, "%s exists and is not a socket; not replacing it", path);
                        return -EEXIST;
                }
                r = socket_is_live(path);
                if (r > 0) {
                        msg_set(msg, msg_size, "a server is already listening on %s", path);
                        return -EADDRINUSE;
                }
                if (r < 0) {
                        msg_set(msg, msg_size, "cannot tell whether a server still listens on %s (%s); not replacing it",
                                path, strerror(-r));
                        return r;
                }
                if (unlink(path) < 0 && errno != ENOENT) {
                        r = -errno;
                        msg_set(msg, msg_size, "cannot remove the stale socket %s: %s", path, strerror(errno));
                        return r;
                }
        }
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                r = -errno;
                msg_set(msg, msg_size, "cannot bind %s: %s", path, strerror(errno));
                return r;
        }
        c->bound_path = strdup(path);
        if (!c->bound_path) {
                unlink(path);
                msg_set(msg, msg_size, "cannot listen on %s: out of memory", path);
                return -ENOMEM;
        }
        /* Every request is checked against the peer's credentials as well. */
        if (chmod(path, mode) < 0 || (group != (gid_t) -1 && chown(path, (uid_t) -1, group) < 0) ||
            listen(fd, SOMAXCONN) < 0) {
                r = -errno;
                msg_set(msg, msg_size, "cannot listen on %s: %s", path, strerror(errno));
                return r;
        }
        r = sd_event_add_io(c->event, &c->listen_source, fd, EPOLLIN, on_accept, c);
        if (r < 0) {
                msg_set(msg, msg_size, "cannot watch %s: %s", path, strerror(-r));
                return r;
        }
        c->listen_fd = TAKE_FD(fd);
        return 0;
}

int control_adopt(Control *c, int fd, char *msg, size_t msg_size) {
        int flags = fcntl(fd, F_GETFL);
        int r;

        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
                r = -errno;
                msg_set(msg, msg_size, "cannot set up the socket passed by systemd: %s", strerror(errno));
                return r;
        }
        r = sd_event_add_io(c->event, &c->listen_source, fd, EPOLLIN, on_accept, c);
        if (r < 0) {
                msg_set(msg, msg_size, "cannot watch the socket passed by systemd: %s", strerror(-r));
                return r;
        }
        c->listen_fd = fd;
        return 0;
}

void control_set_limits(Control *c, const ConfigLimits *limits) {
        c->limits = limits;
}

void control_stop_accepting(Control *c) {
        c->resume_source = sd_event_source_disable_unref(c->resume_source);
        c->listen_source = sd_event_source_disable_unref(c->listen_source);
        if (c->listen_fd >= 0) {
                close(c->listen_fd);
                c->listen_fd = -1;
        }
}

size_t control_count_connections(const Control *c) {
        return c->n_conns;
}

Control *control_free(Control *c) {
        if (!c)
                return NULL;
        control_stop_accepting(c);
        while (!LIST_EMPTY(&c->conns))
                conn_free(LIST_FIRST(&c->conns));
        if (c->bound_path) {
                unlink(c->bound_path);
                free(c->bound_path);
        }
        if (c->reserve_fd >= 0)
                close(c->reserve_fd);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}
