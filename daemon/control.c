/*
 * The control socket's server side: accepting, one Conn per client, and
 * the limits that keep one client from costing the others.
 *
 * A Conn reads what its peer sends into `in` (up to PROTO_LINE_MAX) and
 * answers complete lines through dispatch into `out`, in order. It answers
 * at most LINES_PER_TURN lines per turn of the event loop, shared by its
 * uid's connections (one with n connections answers LINES_PER_TURN / n a
 * turn each, at least one), and comes back for the rest through a defer
 * source, so a client that pipelines thousands of requests holds up neither
 * the others nor its own deadline, and a uid that opens many connections
 * gets no more of a round of turns than one with few.
 *
 * What bounds a client:
 *  - Backpressure: with output_max bytes of answers unread we stop reading
 *    its requests, and nothing more is buffered for it.
 *  - The request timer, for a line left half-sent. The clock belongs to the
 *    line, named by the stream offset where it starts: it starts when that
 *    line's first bytes are read and answering the complete lines before it
 *    does not push it back; only the next line restarts it. It stops while
 *    we do not read (backpressure, or a full buffer), because the line's end
 *    may then be waiting unread in the socket, and starts afresh after. A
 *    connection with no unfinished line is never timed.
 *  - Per-uid accounting: the capacity of every connection's buffers is
 *    charged to its peer's uid, and a uid may buffer at most buffers_per_uid
 *    bytes. Growth past it closes that uid's newest connections first
 *    (ENOBUFS), never an older one for a newer one's sake and never another
 *    uid's: long-standing holders keep working while a burst of new
 *    connections is turned away, as the connection caps do at accept.
 *
 * A turn takes the bytes it reads off the socket only after it sent its
 * answers (MSG_PEEK, then a recv() of as many). Taking them frees the
 * client's send buffer, and a client blocked in recv() on its socket is
 * woken for that too (unix_write_space() wakes every sleeper, whatever it
 * waits for): before its answer, that was a wake-up for nothing, and on
 * a machine where waking another CPU costs microseconds it was 14% of the
 * daemon's time under status load. After the answer that client is awake.
 *
 * A connection whose holds took ring holder tokens watches its peer's
 * process (the pidfd the registry pinned): when it exits while the
 * connection is still up (a fork of it holds the socket), its tokens end
 * then, not at an EOF that may never come. When the connection ends
 * first, tokens of a process that lives on go to the exit watches
 * (exit-watch.h), which end them when it exits.
 */

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "common/util.h"
#include "daemon/control.h"
#include "daemon/exit-watch.h"
#include "daemon/log.h"
#include "daemon/self.h"

#define IN_CHUNK 512u           /* most requests fit; and malloc serves it from its per-thread cache */
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83        /* Linux 6.16; the asm-generic value, as on x86 and arm */
#endif

#define LINES_PER_TURN 64u      /* answered per turn: bounds one turn's work, and how far a deadline overshoots */
#define ACCEPT_PAUSE_USEC (100 * 1000)
#define ACCEPTS_MIN 64u                 /* per wake-up at least; at most one per connection served, or a backlog */
#define NO_LINE UINT64_MAX
#define ADMIN_RESERVE 4                         /* connections of an admin uid past connections_max */
#define FDS_RETRY_MIN_USEC 1000                 /* held descriptors: first look again after 1 ms, */
#define FDS_RETRY_MAX_USEC (250 * 1000)         /* then ever later, up to 4 times a second */
#define FDS_SWEEP_USEC (10 * 1000)              /* every connection's, for the count of all: 100 times a second at most */

typedef struct Conn Conn;
typedef struct UidAcct UidAcct;

/* What the connections of one uid cost; exists while it has any. */
struct UidAcct {
        uid_t uid;
        size_t n_conns;
        size_t bytes;                   /* capacity of their in and out buffers */
        size_t fds;                     /* held for their answers, or sent and unread (n_fds, n_in_flight) */
        size_t n_past_max;              /* an admin's, accepted past connections_max (ADMIN_RESERVE at most) */
        LIST_HEAD(, Conn) conns;        /* newest first */
};

struct Conn {
        Control *control;
        int fd;
        sd_event_source *source;
        sd_event_source *more;          /* enabled while complete lines wait for another turn */
        Client client;
        UidAcct *acct;                  /* NULL until the peer's uid is known */
        bool past_max;                  /* an admin's, accepted past connections_max: counted in acct->n_past_max */
        LIST_ENTRY(Conn) past_link;     /* while past_max: in control->past */
        LIST_ENTRY(Conn) uid_link;
        size_t charged;                 /* in_cap + out_cap, as counted in acct->bytes */
        char *in;
        size_t in_len, in_cap;
        uint64_t in_pos;                /* stream offset of in[0]: bytes consumed so far */
        size_t unconsumed;              /* read with MSG_PEEK, still in the socket: taken at the turn's end */
        uint64_t line_pos;              /* stream offset where the last, unterminated line starts */
        uint64_t timed_pos;             /* the line the request timer runs for, or NO_LINE */
        uint64_t deadline;              /* CLOCK_MONOTONIC usec, while timed_pos is set */
        char *out;
        size_t out_len, out_off, out_cap;
        uint64_t out_sent;              /* stream offset of out[out_off]: bytes sent so far */
        /*
         * Descriptors for the answer that starts at stream offset fds_pos
         * (SCM_RIGHTS with its first byte). One answer's at most: lines
         * after it wait until they are sent, so a client that does not read
         * holds at most PROTO_FDS_MAX of our descriptors.
         */
        int fds[PROTO_FDS_MAX];
        size_t n_fds;
        uint64_t fds_pos;
        /*
         * Descriptors sent stay in the client's socket until it reads them, and
         * the kernel charges them to our open-file limit: the next answer's wait
         * until it has read all we sent (fds_held). Nothing wakes us when it does
         * (the socket stays writable): fds_retry looks again, backing off.
         */
        size_t n_in_flight;             /* 0: none; counted in the uid's fds until seen read */
        bool fds_held;
        uint64_t fds_retry_usec;
        sd_event_source *fds_retry;
        bool closing;           /* answer sent for a fatal error; close once flushed */
        bool eof;
        sd_event_source *timeout;       /* the request timer; when closing, the deadline to take the last answer */
        sd_event_source *exit_source;   /* the peer's pidfd, once it has one: its process exited */
        LIST_ENTRY(Conn) link;
};

struct Control {
        sd_event *event;
        Dispatch *dispatch;
        int listen_fd;
        sd_event_source *listen_source;
        char *bound_path;       /* unlinked on exit; NULL for an inherited socket */
        dev_t bound_dev;        /* the file bind() made there (another server may bind the path later) */
        ino_t bound_ino;
        gid_t bound_gid;        /* the group bind() gave it: what no socket_group means */
        sd_event_source *resume_source;
        bool pause_logged;
        const ConfigLimits *limits;
        int reserve_fd;         /* spent to answer a client when out of descriptors */
        ExitWatch *exits;       /* borrowed; NULL: tokens end with their connection */
        LIST_HEAD(, Conn) conns;
        size_t n_conns;
        LIST_HEAD(, Conn) past;         /* the past_max connections, newest first */
        size_t n_past;
        void (*changed)(void *userdata); /* control_on_change() */
        void *changed_userdata;
        UidAcct **accts;        /* sorted by uid, for lookup at accept */
        size_t n_accts, accts_cap;
        size_t fds_per_uid;     /* descriptors one uid's unread answers may hold: a quarter of ours */
        size_t fds;             /* held for answers or sent and unread, of every connection (n_fds, n_in_flight) */
        size_t fds_max;         /* of all uids together: three quarters of ours */
        uint64_t fds_swept_usec;        /* when every connection's were last looked at (conn_fd_room()) */
        size_t conns_per_uid;   /* connections one uid may have by our open-file limit: an eighth of it */
};

/* ---- per-uid accounting ---- */

/* Index of uid's entry in the sorted table, or where it would go. */
static size_t acct_search(const Control *c, uid_t uid, bool *ret_found) {
        size_t lo = 0, hi = c->n_accts;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (c->accts[mid]->uid < uid)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *ret_found = lo < c->n_accts && c->accts[lo]->uid == uid;
        return lo;
}

/* Count conn, whose peer is known, as its uid's newest connection. */
static int acct_attach(Control *c, Conn *conn) {
        uid_t uid = conn->client.peer.uid;
        bool found;
        size_t i = acct_search(c, uid, &found);
        UidAcct *a;

        if (!found) {
                if (c->n_accts == c->accts_cap) {
                        size_t cap = c->accts_cap ? c->accts_cap * 2 : 16;
                        UidAcct **v = reallocarray(c->accts, cap, sizeof *v);

                        if (!v)
                                return -ENOMEM;
                        c->accts = v;
                        c->accts_cap = cap;
                }
                a = calloc(1, sizeof *a);
                if (!a)
                        return -ENOMEM;
                a->uid = uid;
                LIST_INIT(&a->conns);
                memmove(c->accts + i + 1, c->accts + i, (c->n_accts - i) * sizeof *c->accts);
                c->accts[i] = a;
                c->n_accts++;
        }
        a = c->accts[i];
        LIST_INSERT_HEAD(&a->conns, conn, uid_link);
        a->n_conns++;
        a->bytes += conn->charged;
        a->fds += conn->n_fds + conn->n_in_flight;      /* as acct_detach() takes them off */
        conn->acct = a;
        return 0;
}

/* conn, an admin's connection counted past connections_max, is no longer: its uid's reserve has its place back. */
static void conn_unmark_past(Conn *conn) {
        if (!conn->past_max)
                return;
        LIST_REMOVE(conn, past_link);
        conn->control->n_past--;
        conn->acct->n_past_max--;
        conn->past_max = false;
}

/*
 * The reserve counts the admins' connections that are past the cap now:
 * no more of them than the connections over connections_max. When others
 * close, or a reload raises the cap, those it admits now stop counting,
 * so that connections an admin kept from a full hour do not use up its
 * reserve for good. (A lowered cap makes none of them past it: the admins
 * keep their whole reserve past the new cap, as anyone keeps what it has.)
 */
static void settle_past_max(Control *c) {
        size_t over = c->n_conns > c->limits->connections_max ? c->n_conns - c->limits->connections_max : 0;

        while (c->n_past > over)
                conn_unmark_past(LIST_FIRST(&c->past));
}

/* Called once conn's buffers are freed; the entry goes with the uid's last connection. */
static void acct_detach(Conn *conn) {
        Control *c = conn->control;
        UidAcct *a = conn->acct;
        bool found;
        size_t i;

        if (!a)
                return;
        conn_unmark_past(conn);
        conn->acct = NULL;
        LIST_REMOVE(conn, uid_link);
        a->bytes -= conn->charged;
        a->fds -= conn->n_fds + conn->n_in_flight;
        conn->charged = 0;
        if (--a->n_conns > 0)
                return;
        i = acct_search(c, a->uid, &found);
        if (found) {
                memmove(c->accts + i, c->accts + i + 1, (c->n_accts - i - 1) * sizeof *c->accts);
                c->n_accts--;
        }
        free(a);
}

/* Buffer capacity of conn went from `from` to `to` bytes. */
static void conn_recharge(Conn *conn, size_t from, size_t to) {
        conn->charged = conn->charged - from + to;
        if (conn->acct)
                conn->acct->bytes = conn->acct->bytes - from + to;
}

/* ---- buffers ---- */

static size_t pending_output(const Conn *conn) {
        return conn->out_len - conn->out_off;
}

static void conn_drop_input(Conn *conn) {
        conn_recharge(conn, conn->in_cap, 0);
        free(conn->in);
        conn->in = NULL;
        conn->in_pos += conn->in_len;
        conn->line_pos = conn->in_pos;
        conn->in_len = conn->in_cap = 0;
}

/* conn holds n descriptors for an answer now; its uid's count follows. */
static void conn_count_fds(Conn *conn, size_t n) {
        conn->control->fds = conn->control->fds - conn->n_fds + n;
        if (conn->acct)
                conn->acct->fds = conn->acct->fds - conn->n_fds + n;
        conn->n_fds = n;
}

/* conn's client has n descriptors it was sent and has not read (as far as we know); its uid's count follows. */
static void conn_count_in_flight(Conn *conn, size_t n) {
        conn->control->fds = conn->control->fds - conn->n_in_flight + n;
        if (conn->acct)
                conn->acct->fds = conn->acct->fds - conn->n_in_flight + n;
        conn->n_in_flight = n;
}

/* Descriptors whose answer will not be sent (or were sent): ours to close. */
static void conn_close_fds(Conn *conn) {
        for (size_t i = 0; i < conn->n_fds; i++)
                close(conn->fds[i]);
        conn_count_fds(conn, 0);
        /* Nothing left to hold back (sent, or dropped with the output of a failing connection). */
        conn->fds_held = false;
}

static void conn_drop_output(Conn *conn) {
        /* Whatever is dropped unsent takes its descriptors along (sent ones were closed already). */
        conn_close_fds(conn);
        conn->out_sent += pending_output(conn);
        conn_recharge(conn, conn->out_cap, 0);
        free(conn->out);
        conn->out = NULL;
        conn->out_len = conn->out_off = conn->out_cap = 0;
}

/* Drop the first n buffered bytes, which were answered (or refused). */
static void conn_consume_input(Conn *conn, size_t n) {
        if (n >= conn->in_len) {
                /* An idle client costs no buffer: thousands of holders stay cheap. */
                conn_drop_input(conn);
                return;
        }
        if (n == 0)
                return;
        memmove(conn->in, conn->in + n, conn->in_len - n);
        conn->in_len -= n;
        conn->in_pos += n;
        conn->line_pos = MAX(conn->line_pos, conn->in_pos);
}

/*
 * Answers not yet begun are dropped: a connection closed for its uid's
 * memory must give that memory back. A line already partly sent stays, so
 * the peer still reads whole lines, and then our reason.
 */
static void conn_trim_output(Conn *conn) {
        size_t keep = 0;
        char *p;

        if (conn->out_off > 0 && conn->out[conn->out_off - 1] != '\n') {
                char *nl = memchr(conn->out + conn->out_off, '\n', pending_output(conn));

                keep = nl ? (size_t) (nl - (conn->out + conn->out_off)) + 1 : pending_output(conn);
        }
        /* Descriptors go with their line's first byte: a line already begun has none pending. */
        conn_close_fds(conn);
        if (keep == 0) {
                conn_drop_output(conn);
                return;
        }
        memmove(conn->out, conn->out + conn->out_off, keep);
        conn->out_off = 0;
        conn->out_len = keep;
        p = realloc(conn->out, keep);
        if (!p)
                return;         /* shrinking failed: the old block is still ours, and still charged */
        conn->out = p;
        conn_recharge(conn, conn->out_cap, keep);
        conn->out_cap = keep;
}

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

/* After each event of ours: the counts the daemon reports may have moved. */
static void control_changed(Control *c) {
        if (c->changed)
                c->changed(c->changed_userdata);
}

/*
 * The connection's holds end (the client's registry side, as
 * client_done()): tokens of a process that lives on are handed to the
 * exit watches. Called again, it does nothing.
 */
static void conn_drop_holds(Conn *conn) {
        ExitWatch *exits = conn->control->exits;
        pid_t pid = conn->client.peer.pid;
        uid_t uid = conn->client.peer.uid;
        ClientOrphans orphans;
        int r;

        /* Before the pidfd it watches is closed or handed on. */
        conn->exit_source = sd_event_source_disable_unref(conn->exit_source);
        client_done(&conn->client, exits ? &orphans : NULL);
        if (!exits)
                return;
        /*
         * A watch is a pidfd of ours that outlives the connection, so no
         * connection limit counts it: as many per uid, and in all, as
         * connections may be (each of those may hold a pidfd too), past
         * which the tokens end with the connection, as without a pidfd.
         */
        r = exit_watch_add(exits, &orphans, uid, conn->control->conns_per_uid,
                           conn->control->limits->connections_max);
        if (r == -EUSERS)
                log_client(LOG_INFO, "Client pid %d (uid %u) closed its connection holding ring holder tokens, but "
                           "as many processes as are watched at most (%zu of one uid, %zu in all) are watched "
                           "already; its tokens end with its connection.", (int) pid, (unsigned) uid,
                           conn->control->conns_per_uid, (size_t) conn->control->limits->connections_max);
        else if (r < 0)
                log_warning("Failed to watch process %d for its exit: %s; its holder tokens end with its connection.",
                            (int) pid, strerror(-r));
}

/* The peer's process exited while its connection is up: a fork of it holds the socket. */
static int on_conn_process_exit(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Conn *conn = userdata;
        size_t n = client_process_exited(&conn->client);

        if (n > 0)
                log_debug("Client pid %d exited, but its connection is still open (a fork of it holds it); "
                          "marked its %zu holder token(s) dead.", (int) conn->client.peer.pid, n);
        control_changed(conn->control);
        /* A one-shot source: the pidfd stays readable. A token taken later arms it again (conn_watch_process()). */
        return 0;
}

/*
 * Once the registry has pinned the peer's process (when it first asked
 * for a holder token, granted or not), watch it; after each request, arm
 * the watch again: when the process had exited already, a token taken
 * since ends at the next turn.
 */
static void conn_watch_process(Conn *conn) {
        int r;

        if (conn->client.peer.pidfd < 0 || conn->closing)
                return;
        if (conn->exit_source)
                r = sd_event_source_set_enabled(conn->exit_source, SD_EVENT_ONESHOT);
        else {
                r = sd_event_add_io(conn->control->event, &conn->exit_source, conn->client.peer.pidfd, EPOLLIN,
                                    on_conn_process_exit, conn);
                if (r >= 0)
                        r = sd_event_source_set_enabled(conn->exit_source, SD_EVENT_ONESHOT);
        }
        if (r < 0) {
                /* Its tokens then end with the connection, as they did before processes were watched. */
                log_warning("Failed to watch the process of client pid %d: %s, ignoring.", (int) conn->client.peer.pid,
                            strerror(-r));
                conn->exit_source = sd_event_source_disable_unref(conn->exit_source);
        }
}

static Conn *conn_free(Conn *conn) {
        Control *c;

        if (!conn)
                return NULL;
        c = conn->control;
        /* Peeked bytes too: an error between a peek and its take leaves them in the socket. */
        if ((conn->closing || conn->unconsumed > 0) && conn->fd >= 0)
                discard_pending_input(conn->fd);
        if (!LIST_EMPTY(&conn->client.holds))
                log_debug("Client pid %d gone, dropping its holds.", (int) conn->client.peer.pid);
        conn_drop_holds(conn);
        sd_event_source_disable_unref(conn->source);
        sd_event_source_disable_unref(conn->more);
        sd_event_source_disable_unref(conn->timeout);
        sd_event_source_disable_unref(conn->fds_retry);
        if (conn->fd >= 0)
                close(conn->fd);
        LIST_REMOVE(conn, link);
        conn->control->n_conns--;
        /* A descriptor came free: accept again if we had paused. */
        if (conn->control->listen_source)
                (void) sd_event_source_set_enabled(conn->control->listen_source, SD_EVENT_ON);
        conn_drop_input(conn);
        conn_drop_output(conn);
        /* Ours no longer: what it was sent and did not read is freed with its socket, if not already. */
        conn_count_in_flight(conn, 0);
        acct_detach(conn);
        free(conn);
        settle_past_max(c);
        return NULL;
}

/* Whether the client has yet to read some of what we sent (SIOCOUTQ: our bytes still in its socket). */
static bool client_has_unread(const Conn *conn) {
        int unread = 0;

        /* Unknown: as before this check, rather than an answer held for good. */
        return ioctl(conn->fd, SIOCOUTQ, &unread) == 0 && unread > 0;
}

/* Whether conn's client has yet to read descriptors we sent; once it has, they stop counting. */
static bool conn_fds_unread(Conn *conn) {
        if (conn->n_in_flight > 0 && client_has_unread(conn))
                return true;
        conn_count_in_flight(conn, 0);
        return false;
}

/*
 * Send up to len bytes from buf, with the pending descriptors when they
 * belong to its first byte (the kernel delivers them with it); held back
 * (EAGAIN, fds_held) while the client has not read the last ones.
 */
static ssize_t send_some(Conn *conn, const char *buf, size_t len) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * PROTO_FDS_MAX)];
        } control;
        struct iovec iov = { .iov_base = (void *) buf, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        struct cmsghdr *cm;
        ssize_t n;

        if (conn->n_fds == 0)
                return send(conn->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        /* Up to the answer's start without them; from there, with them. */
        if (conn->fds_pos > conn->out_sent) {
                iov.iov_len = MIN(len, (size_t) (conn->fds_pos - conn->out_sent));
                return send(conn->fd, buf, iov.iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (conn_fds_unread(conn)) {
                conn->fds_held = true;
                errno = EAGAIN;
                return -1;
        }
        conn->fds_held = false;
        memset(&control, 0, sizeof control);
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * conn->n_fds);
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * conn->n_fds);
        memcpy(CMSG_DATA(cm), conn->fds, sizeof(int) * conn->n_fds);
        n = sendmsg(conn->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        /*
         * Our charge is past our limit (another process of our user's, as
         * conn_fd_room() keeps ours below): this client did nothing wrong, and
         * ending its connection would end its holds. Held, as for its own
         * unread ones, until others read theirs.
         */
        if (n < 0 && errno == ETOOMANYREFS) {
                conn->fds_held = true;
                errno = EAGAIN;
                return -1;
        }
        /* Sent (the peer has its own copies now): ours go, and count as in flight until read. */
        if (n > 0) {
                size_t sent = conn->n_fds;

                conn_close_fds(conn);
                conn_count_in_flight(conn, sent);
                conn->fds_retry_usec = 0;
        }
        return n;
}

/* Returns 0, or -errno when the connection is broken. */
static int flush_output(Conn *conn) {
        while (pending_output(conn) > 0) {
                ssize_t n = send_some(conn, conn->out + conn->out_off, pending_output(conn));

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                conn->out_off += (size_t) n;
                conn->out_sent += (uint64_t) n;
        }
        /* Nothing queued costs nothing. */
        conn_drop_output(conn);
        return 0;
}

/* A complete request line (or an over-long one) is waiting in the buffer. */
static bool has_line(const Conn *conn) {
        size_t ignored;

        return conn->in_len > 0 &&
               proto_frame_next_max(conn->in, conn->in_len, conn->control->limits->request_max, &ignored) != 0;
}

/*
 * Whether we take more of the client's bytes: not when closing or at its
 * end, not while it leaves output_max of answers unread (backpressure), and
 * not while the buffer is full (answering makes room).
 */
static bool conn_reading(const Conn *conn) {
        return !conn->closing && !conn->eof && pending_output(conn) < conn->control->limits->output_max &&
               !(conn->in_len == conn->in_cap && conn->in_cap >= PROTO_LINE_MAX);
}

/* An unfinished line is buffered: bytes after the last newline. */
static bool has_partial_line(const Conn *conn) {
        return conn->line_pos < conn->in_pos + conn->in_len;
}

static int on_conn_timeout(sd_event_source *s, uint64_t usec, void *userdata);
static int on_conn_more(sd_event_source *s, void *userdata);

/* request_timeout_ms from now (CLOCK_MONOTONIC usec): not sd_event_now(), which is when the loop turn began. */
static uint64_t conn_deadline_from_now(const Conn *conn) {
        return now_usec() + (uint64_t) conn->control->limits->request_timeout_ms * 1000;
}

/* The clock of the unfinished line at line_pos starts now. */
static void conn_time_line(Conn *conn) {
        conn->timed_pos = conn->line_pos;
        conn->deadline = conn_deadline_from_now(conn);
}

/* Set the connection's one timer to fire at `usec` (CLOCK_MONOTONIC). */
static int conn_arm_timeout(Conn *conn, uint64_t usec) {
        int r;

        if (!conn->timeout)
                return sd_event_add_time(conn->control->event, &conn->timeout, CLOCK_MONOTONIC, usec, 0,
                                         on_conn_timeout, conn);
        r = sd_event_source_set_time(conn->timeout, usec);
        if (r >= 0)
                r = sd_event_source_set_enabled(conn->timeout, SD_EVENT_ONESHOT);
        return r;
}

static int conn_make_room(Conn *conn, size_t grow);
static void conn_end(Conn *conn, uint32_t revents);

/* Queue an answer line; fds (n_fds, taken: closed on failure) go with its first byte. */
static int queue_output_fds(Conn *conn, char *line, size_t len, const int *fds, size_t n_fds) {
        /* Every encoder allocates the line with a NUL after its newline: len + 1 bytes. */
        size_t cap = conn->out ? pending_output(conn) + len : len + 1;
        uint64_t pos;
        char *n;
        int r;

        if (cap > conn->out_cap) {
                r = conn_make_room(conn, cap - conn->out_cap);
                if (r != 0) {
                        free(line);
                        for (size_t i = 0; i < n_fds; i++)
                                close(fds[i]);
                        return r < 0 ? r : 0;   /* closing: the answer is not wanted */
                }
        }
        pos = conn->out_sent + pending_output(conn);
        /* flush_output() frees the buffer whenever it empties: none means nothing queued. */
        if (!conn->out) {
                conn->out = line;
                conn->out_len = len;
                conn->out_cap = len + 1;
                conn_recharge(conn, 0, conn->out_cap);
        } else {
                /* Compact, then append. */
                if (conn->out_off > 0) {
                        memmove(conn->out, conn->out + conn->out_off, conn->out_len - conn->out_off);
                        conn->out_len -= conn->out_off;
                        conn->out_off = 0;
                }
                n = realloc(conn->out, cap);
                if (!n) {
                        /* Only this line's: descriptors already pending belong to a line still queued. */
                        free(line);
                        for (size_t i = 0; i < n_fds; i++)
                                close(fds[i]);
                        return -ENOMEM;
                }
                memcpy(n + conn->out_len, line, len);
                conn->out = n;
                conn->out_len += len;
                conn_recharge(conn, conn->out_cap, cap);
                conn->out_cap = cap;
                free(line);
        }
        /* process_input() answers no line while descriptors wait: there is room. */
        if (n_fds > 0) {
                memcpy(conn->fds, fds, n_fds * sizeof *fds);
                conn_count_fds(conn, n_fds);
                conn->fds_pos = pos;
        }
        return 0;
}

static int queue_output(Conn *conn, char *line, size_t len) {
        return queue_output_fds(conn, line, len, NULL, 0);
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
        conn_drop_holds(conn);
        r = proto_encode_error(err, why, &resp, &resp_len);
        if (r >= 0)
                r = queue_output(conn, resp, resp_len);
        if (r >= 0)
                /* From now: a turn may answer many lines. */
                r = conn_arm_timeout(conn, conn_deadline_from_now(conn));
        return r;
}

/*
 * Close conn because its uid's buffers would exceed buffers_per_uid: its
 * buffers go at once, an ENOBUFS answer says why. 0, or negative errno
 * when even that could not be done.
 */
static int conn_fail_nobufs(Conn *conn) {
        uint32_t max = conn->control->limits->buffers_per_uid;
        char why[160];

        log_client(LOG_INFO, "Closing a connection of pid %d: uid %u's connections would buffer more than %" PRIu32
                   " bytes (buffers_per_uid).", (int) conn->client.peer.pid, (unsigned) conn->client.peer.uid, max);
        snprintf(why, sizeof why, "uid %u's connections would buffer more than %" PRIu32
                 " bytes, the most allowed; its newest are closed first", (unsigned) conn->client.peer.uid, max);
        conn_drop_input(conn);
        conn_trim_output(conn);
        return conn_fail(conn, ENOBUFS, why);
}

static int on_conn_fds_retry(sd_event_source *s, uint64_t usec, void *userdata);

/* While an answer's descriptors are held, look again after a wait that doubles up to FDS_RETRY_MAX_USEC. */
static int conn_update_fds_retry(Conn *conn) {
        uint64_t at;
        int r;

        /* Also a connection kept only for what it was sent (conn_must_linger()): nothing else wakes it. */
        if (!conn->fds_held && !(conn->n_in_flight > 0 && (conn->closing || conn->eof)))
                return conn->fds_retry ? sd_event_source_set_enabled(conn->fds_retry, SD_EVENT_OFF) : 0;
        conn->fds_retry_usec = MIN(MAX(conn->fds_retry_usec * 2, FDS_RETRY_MIN_USEC), FDS_RETRY_MAX_USEC);
        at = now_usec() + conn->fds_retry_usec;
        /* Slack of a quarter: the retries of many held connections come in one wake-up. */
        if (!conn->fds_retry)
                return sd_event_add_time(conn->control->event, &conn->fds_retry, CLOCK_MONOTONIC, at,
                                         conn->fds_retry_usec / 4, on_conn_fds_retry, conn);
        r = sd_event_source_set_time(conn->fds_retry, at);
        if (r >= 0)
                r = sd_event_source_set_time_accuracy(conn->fds_retry, conn->fds_retry_usec / 4);
        if (r >= 0)
                r = sd_event_source_set_enabled(conn->fds_retry, SD_EVENT_ONESHOT);
        return r;
}

/*
 * What wakes conn for its socket and its buffered lines, which the limits
 * decide (conn_update_events() without the descriptors' retry).
 */
static int conn_update_io(Conn *conn) {
        uint32_t events = 0;
        int r;

        if (conn_reading(conn))
                events |= EPOLLIN;
        /* Held descriptors wait for the client to read, which EPOLLOUT does not tell: it would spin. */
        if (pending_output(conn) > 0 && !conn->fds_held)
                events |= EPOLLOUT;
        r = sd_event_source_set_io_events(conn->source, events);
        if (r < 0)
                return r;
        /* Complete lines left after a turn: nothing else would wake us for bytes already read. */
        /* Descriptors waiting to go: the next line is answered once they went (EPOLLOUT or fds_retry wakes us). */
        if (conn->closing || conn->n_fds > 0 || pending_output(conn) >= conn->control->limits->output_max ||
            !has_line(conn))
                return conn->more ? sd_event_source_set_enabled(conn->more, SD_EVENT_OFF) : 0;
        if (!conn->more) {
                r = sd_event_add_defer(conn->control->event, &conn->more, on_conn_more, conn);
                /*
                 * Below every socket, timer and signal: sd-event keeps a defer source
                 * pending once it was, first in line at its priority for good, so at
                 * theirs a client that never stops sending would be served turn after
                 * turn while nobody else was, not even SIGTERM.
                 */
                if (r >= 0)
                        r = sd_event_source_set_priority(conn->more, SD_EVENT_PRIORITY_NORMAL + 1);
                return r;
        }
        return sd_event_source_set_enabled(conn->more, SD_EVENT_ONESHOT);
}

/* After a turn of conn: what wakes it next. */
static int conn_update_events(Conn *conn) {
        int r = conn_update_io(conn);

        return r < 0 ? r : conn_update_fds_retry(conn);
}

/*
 * Whether conn's buffers may grow by `grow` bytes. Over the uid's
 * buffers_per_uid, the uid's connections newer than conn that hold buffers
 * are closed, newest first, until it fits; if it still does not, conn
 * itself is. Newer ones are closed only when closing all of them could make
 * it fit: else conn alone goes. Returns 0: go ahead; 1: conn is closing,
 * its buffers dropped, and must not grow; negative errno when conn could
 * not even be failed.
 */
static int conn_make_room(Conn *conn, size_t grow) {
        uint32_t max = conn->control->limits->buffers_per_uid;
        UidAcct *a = conn->acct;
        size_t newer = 0;
        Conn *v, *next;
        int r;

        /* A closing connection grows by its last answer only, and is gone soon. */
        if (!a || conn->closing || a->bytes + grow <= max)
                return 0;
        /* Closing ones free nothing more now, empty ones nothing at all. */
        for (v = LIST_FIRST(&a->conns); v != conn; v = LIST_NEXT(v, uid_link))
                if (!v->closing)
                        newer += v->charged;
        /* Closing them all would not do: spare them. (newer is part of a->bytes.) */
        v = a->bytes - newer + grow <= max ? LIST_FIRST(&a->conns) : conn;
        for (; v != conn && a->bytes + grow > max; v = next) {
                next = LIST_NEXT(v, uid_link);
                if (v->closing || v->charged == 0)
                        continue;
                r = conn_fail_nobufs(v);
                if (r >= 0)
                        r = flush_output(v);
                if (r < 0 || pending_output(v) == 0 || conn_update_events(v) < 0)
                        conn_end(v, 0);
        }
        if (a->bytes + grow <= max)
                return 0;
        r = conn_fail_nobufs(conn);
        return r < 0 ? r : 1;
}

/*
 * The descriptors conn's uid may still be handed. What its clients were
 * sent counts until seen read; only when that leaves no room for one
 * answer are they looked at again (one ioctl each), so the usual request
 * costs nothing.
 */
static size_t conn_fd_room(Conn *conn) {
        Control *c = conn->control;
        size_t max = c->fds_per_uid, own, all;
        UidAcct *a = conn->acct;
        Conn *v;

        conn->client.fd_room_all = false;
        if (!a)
                return 0;
        if (a->fds + PROTO_FDS_MAX > max)
                LIST_FOREACH(v, &a->conns, uid_link)
                        (void) conn_fds_unread(v);
        /*
         * The kernel's charge is ours, of all uids together: a few users, each
         * within its quarter (and one with subordinate uids is as many as it
         * likes), would otherwise run it past our limit, and every SCM_RIGHTS
         * of ours would fail, whoever it was for. Every connection is an ioctl:
         * looked at once per FDS_SWEEP_USEC at most, or a user that keeps the
         * count high would have each of its opens cost one for each.
         */
        if (c->fds + PROTO_FDS_MAX > c->fds_max && now_usec() >= c->fds_swept_usec + FDS_SWEEP_USEC) {
                LIST_FOREACH(v, &c->conns, link)
                        (void) conn_fds_unread(v);
                c->fds_swept_usec = now_usec();
        }
        own = a->fds < max ? max - a->fds : 0;
        all = c->fds < c->fds_max ? c->fds_max - c->fds : 0;
        conn->client.fd_room_all = all < own;
        return MIN(own, all);
}

/*
 * Lines one turn of conn answers: its uid's share of LINES_PER_TURN. A
 * request of another uid then waits for one round of that uid's turns,
 * about LINES_PER_TURN lines (one per connection past that many) however
 * many connections it pipelines on, not LINES_PER_TURN for each of them.
 */
static unsigned lines_per_turn(const Conn *conn) {
        size_t n = conn->acct ? conn->acct->n_conns : 1;

        return n >= LINES_PER_TURN ? 1 : LINES_PER_TURN / (unsigned) n;
}

/*
 * Answer up to lines_per_turn() complete lines, as long as the client keeps
 * taking our answers (output_max); the rest waits for the next turn.
 */
static int process_input(Conn *conn) {
        size_t off = 0, line_len;
        unsigned max = lines_per_turn(conn);
        int r = 0;

        /* The limits are read afresh for every line: a reload answered here swaps the config they live in. */
        for (unsigned n = 0; n < max && !conn->closing && conn->n_fds == 0 &&
                             pending_output(conn) < conn->control->limits->output_max; n++) {
                const ConfigLimits *l = conn->control->limits;
                int fds[PROTO_FDS_MAX];
                size_t n_fds = 0;
                char *resp;
                size_t resp_len;

                r = proto_frame_next_max(conn->in + off, conn->in_len - off, l->request_max, &line_len);
                if (r == 0)
                        break;
                if (r == E2BIG) {
                        char why[128];

                        log_client(LOG_INFO, "Client pid %d sent a request line over %" PRIu32 " bytes; closing its "
                                   "connection.", (int) conn->client.peer.pid, l->request_max);
                        snprintf(why, sizeof why, "request line exceeds %" PRIu32 " bytes; closing the connection",
                                 l->request_max);
                        off = conn->in_len;
                        r = conn_fail(conn, E2BIG, why);
                        break;
                }
                /* One uid's unread answers hold a quarter of our descriptors at most: the rest is everyone else's. */
                conn->client.fd_room = conn_fd_room(conn);
                r = dispatch_line(conn->control->dispatch, &conn->client, conn->in + off, line_len, &resp, &resp_len,
                                  fds, &n_fds);
                if (r < 0)
                        break;
                conn_watch_process(conn);
                off += line_len + 1;
                /* The last line's buffer goes before its answer is charged: a client that sends one
                 * request at a time never needs both at once. */
                if (off == conn->in_len) {
                        conn_consume_input(conn, off);
                        off = 0;
                }
                /* May close conn for its uid's memory, which drops the input: consuming then takes nothing. */
                r = queue_output_fds(conn, resp, resp_len, fds, n_fds);
                if (r < 0)
                        break;
        }
        conn_consume_input(conn, off);
        return r < 0 ? r : 0;
}

/*
 * Take what read_input() peeked off the socket: the same bytes, since only
 * we read it. 0, or a negative errno (a short take is -EIO: the stream
 * would be out of step).
 */
static int conn_take_peeked(Conn *conn) {
        static char sink[4096];

        while (conn->unconsumed > 0) {
                ssize_t n = recv(conn->fd, sink, MIN(conn->unconsumed, sizeof sink), MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return errno == EAGAIN ? -EIO : -errno;
                if (n == 0)
                        return -EIO;
                conn->unconsumed -= (size_t) n;
        }
        return 0;
}

/*
 * Read all the client has sent, up to a full buffer: seeing where its last
 * line starts is what times that line from its first byte. 0, or -errno.
 */
static int read_input(Conn *conn) {
        while (conn_reading(conn)) {
                size_t space;
                ssize_t n;
                char *nl;
                int k;

                if (conn->in_len == conn->in_cap) {
                        size_t cap = MIN(conn->in_cap ? conn->in_cap * 2 : IN_CHUNK, (size_t) PROTO_LINE_MAX);
                        char *p;
                        int r;

                        r = conn_make_room(conn, cap - conn->in_cap);
                        if (r != 0)
                                return r < 0 ? r : 0;
                        p = realloc(conn->in, cap);
                        if (!p)
                                return -ENOMEM;
                        conn->in = p;
                        conn_recharge(conn, conn->in_cap, cap);
                        conn->in_cap = cap;
                }
                space = conn->in_cap - conn->in_len;
                n = recv(conn->fd, conn->in + conn->in_len, space, MSG_DONTWAIT | MSG_PEEK);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN ? 0 : -errno;
                }
                if (n == 0) {
                        conn->eof = true;
                        return 0;
                }
                conn->unconsumed = (size_t) n;
                nl = memrchr(conn->in + conn->in_len, '\n', (size_t) n);
                if (nl)
                        conn->line_pos = conn->in_pos + (uint64_t) (nl - conn->in) + 1;
                conn->in_len += (size_t) n;
                /* This line's first bytes came just now: its clock starts here, however
                 * long answering the lines before it takes. */
                if (has_partial_line(conn) && conn->timed_pos != conn->line_pos)
                        conn_time_line(conn);
                /* Less than asked for: the socket is empty now. Its source is level-triggered,
                 * so what comes later wakes us; asking again would only cost an EAGAIN. */
                if ((size_t) n < space)
                        break;
                /* More may wait, and the next peek would see these bytes again: taken now. */
                k = conn_take_peeked(conn);
                if (k < 0)
                        return k;
        }
        return 0;
}

/*
 * Only a half-sent request line is timed: a connection that is idle between
 * requests (a client holding its channels) is legitimate and never is. The
 * clock runs while we read and an unfinished line is buffered, from the time
 * that line's first bytes were read; see the top of this file.
 */
static int conn_update_timeout(Conn *conn) {
        if (conn->closing)
                return 0;       /* the timer is the deadline for taking the last answer */
        if (!conn_reading(conn) || !has_partial_line(conn)) {
                conn->timed_pos = NO_LINE;
                return conn->timeout ? sd_event_source_set_enabled(conn->timeout, SD_EVENT_OFF) : 0;
        }
        /* Reading again after a pause: the line's end may have been waiting unread, so afresh. */
        if (conn->timed_pos != conn->line_pos)
                conn_time_line(conn);
        return conn_arm_timeout(conn, conn->deadline);
}

/* The timed line is still unfinished, and its time is up. */
static bool conn_line_overdue(const Conn *conn) {
        return conn->timed_pos != NO_LINE && conn->timed_pos == conn->line_pos && has_partial_line(conn) &&
               conn_reading(conn) && now_usec() >= conn->deadline;
}

/*
 * Descriptors sent stay charged to our user until the client reads them,
 * also once we closed our end, and the kernel refuses our next SCM_RIGHTS
 * when the charge passes our open-file limit (ETOOMANYREFS, for a daemon
 * without CAP_SYS_RESOURCE, as under the shipped unit), whoever it was for.
 * So a connection that is done, or whose last answer was not taken in time,
 * stays open while its client has not read what it was sent, counted
 * against connections_per_uid and connections_max, which then bound the
 * charge; until the client reads (fds_retry looks) or closes its socket.
 * A hang-up (EPOLLHUP) is no close: shutdown(SHUT_RDWR) leaves the socket,
 * and what waits in it, to the client for as long as it likes; a close
 * frees what waited, and SIOCOUTQ (conn_fds_unread()) then says so. An
 * error (EPOLLERR) is a close with our bytes unread.
 */
static bool conn_must_linger(Conn *conn, uint32_t revents) {
        return !(revents & EPOLLERR) && conn_fds_unread(conn);
}

/*
 * conn is done, whatever ended it, but its client has yet to read
 * descriptors it was sent: it stays, closing, with nothing of its holds or
 * buffers, watched by fds_retry only. Not by its socket: a hang-up is
 * reported whatever we ask for, and would wake the loop for ever. 0, or a
 * negative errno when it could not be kept.
 */
static int conn_linger(Conn *conn) {
        int r;

        conn->closing = true;
        conn_drop_holds(conn);
        if (conn->unconsumed > 0) {
                discard_pending_input(conn->fd);
                conn->unconsumed = 0;
        }
        conn_drop_input(conn);
        conn_drop_output(conn);
        r = sd_event_source_set_enabled(conn->source, SD_EVENT_OFF);
        if (r >= 0 && conn->more)
                r = sd_event_source_set_enabled(conn->more, SD_EVENT_OFF);
        if (r >= 0 && conn->timeout)
                r = sd_event_source_set_enabled(conn->timeout, SD_EVENT_OFF);
        if (r >= 0)
                r = conn_update_fds_retry(conn);
        return r;
}

/* End conn: free it, or keep it while its client has descriptors to read (conn_must_linger()). */
static void conn_end(Conn *conn, uint32_t revents) {
        if (conn_must_linger(conn, revents) && conn_linger(conn) >= 0)
                return;
        conn_free(conn);
}

/*
 * One turn for a connection: read what came, send what we can, answer a
 * bounded number of lines, or end it when its half-sent line is overdue.
 * Frees conn when it is done.
 */
static void conn_service(Conn *conn, uint32_t revents) {
        int r = 0;

        if (revents & EPOLLHUP)
                conn->client.hung_up = true;

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
        if (conn_line_overdue(conn)) {
                char why[128];

                log_client(LOG_INFO, "Client pid %d left a request half-sent for %" PRIu32 " ms; closing its "
                           "connection.", (int) conn->client.peer.pid, conn->control->limits->request_timeout_ms);
                snprintf(why, sizeof why, "request not completed within %" PRIu32 " ms; closing the connection",
                         conn->control->limits->request_timeout_ms);
                r = conn_fail(conn, ETIMEDOUT, why);
        } else
                r = process_input(conn);
        if (r >= 0)
                r = flush_output(conn);
        /* After the answers (see the top); before the loop would see the bytes as new. */
        if (r >= 0)
                r = conn_take_peeked(conn);
        if (r < 0)
                goto close;
        /* At the client's end, the lines it completed are still answered first. */
        if (pending_output(conn) == 0 && (conn->closing || (conn->eof && !has_line(conn))) &&
            !conn_must_linger(conn, revents))
                goto close;
        if ((revents & (EPOLLHUP | EPOLLERR)) && !(revents & EPOLLIN))
                goto close;
        r = conn_update_events(conn);
        if (r >= 0)
                r = conn_update_timeout(conn);
        if (r < 0)
                goto close;
        return;
close:
        if (r < 0 && r != -ECONNRESET && r != -EPIPE)
                log_debug("Connection of pid %d closed: %s", (int) conn->client.peer.pid, strerror(-r));
        /* Also after a send failed: a client that shut down reading only still has what came before. */
        conn_end(conn, revents);
}

static int on_conn_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Control *c = ((Conn *) userdata)->control;

        conn_service(userdata, revents);
        control_changed(c);
        return 0;
}

static int on_conn_fds_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Control *c = ((Conn *) userdata)->control;

        /* The flush in the turn sends the held answer if the client has read the last. */
        conn_service(userdata, 0);
        control_changed(c);
        return 0;
}

static int on_conn_more(sd_event_source *s, void *userdata) {
        Control *c = ((Conn *) userdata)->control;

        /* Read too: the end of the line being timed may have come meanwhile. */
        conn_service(userdata, EPOLLIN);
        control_changed(c);
        return 0;
}

/*
 * Closing: the last answer was not taken in time. Otherwise a half-sent
 * line's deadline: the turn checks it against what it reads first.
 */
static int on_conn_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Conn *conn = userdata;
        Control *c = conn->control;

        if (conn->closing) {
                log_debug("Client pid %d did not read its last answer within %" PRIu32 " ms; closing.",
                          (int) conn->client.peer.pid, conn->control->limits->request_timeout_ms);
                /* Kept, as any connection that ends, while its client has descriptors to read. */
                conn_end(conn, 0);
        } else
                conn_service(conn, EPOLLIN);
        control_changed(c);
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

/*
 * Connection caps, overall and per uid, and the uid's buffer budget: over
 * any, an answer and a close.
 */
static int check_caps(Control *c, Conn *conn) {
        const ConfigLimits *l = c->limits;
        UidAcct *a = conn->acct;
        char why[160];
        int err = EUSERS;

        /*
         * conn itself is already counted, overall and for its uid. An admin
         * uid has a few more past the overall cap, so that users who fill it
         * do not lock status and reload out; its own caps still hold. Counted
         * past the cap, not of all its connections: those the admin's own
         * clients hold below it must not use them up.
         */
        if (c->n_conns > l->connections_max) {
                if (a->n_past_max >= ADMIN_RESERVE || !dispatch_is_admin(c->dispatch, &conn->client.peer)) {
                        snprintf(why, sizeof why, "the broker serves at most %" PRIu32 " connections; try again later",
                                 l->connections_max);
                        goto refuse;
                }
                conn->past_max = true;
                a->n_past_max++;
                LIST_INSERT_HEAD(&c->past, conn, past_link);
                c->n_past++;
        }
        if (a->n_conns > l->connections_per_uid) {
                snprintf(why, sizeof why, "uid %u already has %" PRIu32 " connections, the most allowed",
                         (unsigned) conn->client.peer.uid, l->connections_per_uid);
                goto refuse;
        }
        if (a->n_conns > c->conns_per_uid) {
                snprintf(why, sizeof why, "uid %u already has %zu connections, the most one user may have with the "
                         "broker's open-file limit", (unsigned) conn->client.peer.uid, c->conns_per_uid);
                goto refuse;
        }
        /* Not room for even one small request: it would only be closed at its first byte. */
        if (a->bytes + IN_CHUNK > l->buffers_per_uid) {
                snprintf(why, sizeof why, "uid %u's connections already buffer %zu bytes of at most %" PRIu32
                         " (buffers_per_uid); try again later", (unsigned) conn->client.peer.uid, a->bytes,
                         l->buffers_per_uid);
                err = ENOBUFS;
                goto refuse;
        }
        return 0;
refuse:
        log_client(LOG_INFO, "Refused a connection from pid %d (uid %u): %s.", (int) conn->client.peer.pid,
                   (unsigned) conn->client.peer.uid, why);
        refuse(conn->fd, err, why);
        conn->fd = -1;
        return -err;
}

/*
 * Accept one connection: true when another may be waiting, false when the
 * queue is empty, accept paused, or (not `first` of this wake-up) out of
 * descriptors: those just accepted may be closed ones, whose descriptors
 * their turn gives back, so nobody is refused for them yet. After the
 * first, one found closed with nothing sent is closed at once.
 */
static bool accept_one(Control *c, int fd, bool first) {
        Conn *conn;
        int cfd, r;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
                int err = errno;

                if ((err == EMFILE || err == ENFILE) && !first)
                        return false;
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
                return err == EINTR || err == ECONNABORTED;
        }
        c->pause_logged = false;
        /*
         * Closed already with nothing sent (a connect flood's): nothing to
         * answer, and its descriptor goes now, not at its turn, so that a
         * wake-up that takes many such never runs out of descriptors for them.
         * The first of a wake-up waits for its turn: one is no such run, and
         * the usual connect costs no system call more.
         */
        if (!first && recv(cfd, &(char) { 0 }, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
                close(cfd);
                return true;
        }
        /*
         * An out-of-band byte (MSG_OOB) is skipped by the peek of read_input()
         * but keeps the socket readable: alone, it would wake the loop for
         * ever. Inline, a peek sees it as the take does, as a byte of the line.
         */
        if (setsockopt(cfd, SOL_SOCKET, SO_OOBINLINE, &(int) { 1 }, sizeof(int)) < 0) {
                log_warning("Failed to read a connection's out-of-band data inline: %s, dropping it.",
                            strerror(errno));
                close(cfd);
                return true;
        }
        conn = calloc(1, sizeof *conn);
        if (!conn) {
                close(cfd);
                return true;
        }
        conn->fd = cfd;
        conn->control = c;
        conn->timed_pos = NO_LINE;
        client_init(&conn->client);
        LIST_INSERT_HEAD(&c->conns, conn, link);
        c->n_conns++;
        r = peer_from_socket(cfd, &conn->client.peer);
        if (r < 0) {
                log_warning("Failed to read peer credentials: %s, dropping connection.", strerror(-r));
                conn_free(conn);
                return true;
        }
        r = acct_attach(c, conn);
        if (r < 0) {
                log_warning("Failed to account a connection: %s, dropping it.", strerror(-r));
                conn_free(conn);
                return true;
        }
        r = check_caps(c, conn);
        if (r < 0) {
                conn_free(conn);
                return true;
        }
        r = sd_event_add_io(c->event, &conn->source, cfd, EPOLLIN, on_conn_io, conn);
        if (r < 0) {
                log_warning("Failed to watch a connection: %s, dropping it.", strerror(-r));
                conn_free(conn);
                return true;
        }
        log_debug("Connection from pid %d (uid %u).", (int) conn->client.peer.pid, (unsigned) conn->client.peer.uid);
        return true;
}

/*
 * Many queued, not one connection per turn: the listening socket is one
 * source among every busy connection's, so one per turn made a client
 * queued behind another uid's burst of connections wait a turn of every
 * busy connection for each connection ahead of it. As many as there are
 * connections, and so as many as a turn serves: a connect flood then
 * takes half the loop at most, and a queued client waits a few turns.
 */
static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Control *c = userdata;
        /* As many as there are connections to serve (a flood gets half the loop at most), a backlog at most. */
        size_t batch = MIN(MAX(c->n_conns, (size_t) ACCEPTS_MIN), (size_t) SOMAXCONN);

        for (size_t i = 0; i < batch && accept_one(c, fd, i == 0); i++)
                ;
        control_changed(userdata);
        return 0;
}

int control_new(sd_event *event, Dispatch *dispatch, const ConfigLimits *limits, ExitWatch *exits, Control **ret) {
        Control *c = calloc(1, sizeof *c);
        struct rlimit rl;

        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->dispatch = dispatch;
        c->limits = limits;
        c->exits = exits;
        c->listen_fd = -1;
        c->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        LIST_INIT(&c->conns);
        LIST_INIT(&c->past);
        /* After the daemon raised its limit (raise_fd_limit()); one answer's worth at least. */
        c->fds_per_uid = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ?
                         MAX((size_t) rl.rlim_cur / 4, (size_t) PROTO_FDS_MAX) : SIZE_MAX;
        /*
         * Each connection is a descriptor, and one of a holder a pidfd more: a
         * uid under connections_per_uid must still not leave everyone else
         * (admins too) without descriptors when that limit is low.
         */
        c->conns_per_uid = c->fds_per_uid == SIZE_MAX ? SIZE_MAX : MAX((size_t) rl.rlim_cur / 8, (size_t) 1);
        /*
         * Below our limit, which the kernel compares the charge with: as near as
         * leaves a quarter for the connections (held ones are ours to keep
         * open), so that it takes as many users as it can to fill it.
         */
        c->fds_max = c->fds_per_uid == SIZE_MAX ? SIZE_MAX :
                     MAX((size_t) rl.rlim_cur - (size_t) rl.rlim_cur / 4, (size_t) PROTO_FDS_MAX);
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

/*
 * Clients have no descriptors to send us, and one they did would be closed
 * by our recv(): a close that its sender can make block for as long as it
 * likes (a TCP socket with SO_LINGER and bytes that cannot go, a FUSE
 * file), and the whole loop with it. Refused on the listening socket, which
 * every connection inherits from the moment it is made (before accept()),
 * their sendmsg() fails with EPERM. Connections that were queued on a socket
 * systemd passed before we got here are not covered. Kernels before 6.16
 * have no such switch: said once, and served as before.
 */
static int refuse_descriptors(int listen_fd, char *msg, size_t msg_size) {
        int err;

        if (setsockopt(listen_fd, SOL_SOCKET, SO_PASSRIGHTS, &(int) { 0 }, sizeof(int)) == 0)
                return 0;
        err = errno;
        if (err == ENOPROTOOPT) {
                log_warning("This kernel cannot refuse descriptors sent to the socket (SO_PASSRIGHTS, Linux 6.16): "
                            "a client that sends one whose close blocks stalls the daemon meanwhile.");
                return 0;
        }
        msg_set(msg, msg_size, "cannot refuse descriptors on the socket: %s", strerror(err));
        return -err;
}

int control_remove_stale_socket(const char *path, bool own_only, char *msg, size_t msg_size) {
        struct sockaddr_un sa;
        struct stat st;
        int r;

        if (strlen(path) >= sizeof sa.sun_path) {
                msg_set(msg, msg_size, "socket path %s is too long", path);
                return -ENAMETOOLONG;
        }
        if (lstat(path, &st) < 0) {
                if (errno == ENOENT)
                        return 0;
                r = -errno;
                msg_set(msg, msg_size, "cannot examine %s: %s", path, strerror(errno));
                return r;
        }
        if (!S_ISSOCK(st.st_mode)) {
                msg_set(msg, msg_size, "%s exists and is not a socket; not replacing it", path);
                return -EEXIST;
        }
        if (own_only && st.st_uid != self_euid()) {
                msg_set(msg, msg_size, "%s is another user's socket (uid %u)", path, (unsigned) st.st_uid);
                return -EPERM;
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
        return 0;
}

/*
 * The socket at path, as a descriptor of that very file (O_PATH, in
 * *ret_fd) and its fstat() in *ret: its directory may be another user's to
 * write, who could have put a link to some other file at the path since.
 * Everything after goes through the descriptor. c NULL: right after bind(),
 * the file must be a socket of ours; else the one c bound (device and
 * inode), and -ESTALE when the path names another file or nothing.
 */
static int open_bound(const char *path, const Control *c, int *ret_fd, struct stat *ret, char *msg,
                      size_t msg_size) {
        _cleanup_(closep) int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        bool gone;
        int r;

        if (fd < 0 || fstat(fd, ret) < 0) {
                r = -errno;
                if (!c || (r != -ENOENT && r != -ELOOP)) {
                        msg_set(msg, msg_size, "cannot examine %s%s: %s", path, c ? "" : " after binding it",
                                strerror(-r));
                        return r;
                }
                gone = true;
        } else
                gone = c ? ret->st_dev != c->bound_dev || ret->st_ino != c->bound_ino :
                           !S_ISSOCK(ret->st_mode) || ret->st_uid != self_euid();
        if (gone) {
                if (c)
                        msg_set(msg, msg_size, "%s is no longer the socket this daemon bound", path);
                else
                        msg_set(msg, msg_size, "%s was replaced right after it was bound; is its directory "
                                "writable by others?", path);
                return -ESTALE;
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/*
 * Give the file an O_PATH descriptor of path names `mode` (chmod() through
 * its /proc link: no fchmod() of an O_PATH descriptor before fchmodat2()).
 */
static int give_mode(const char *path, int fd, mode_t mode, char *msg, size_t msg_size) {
        char self[64];

        snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
        if (chmod(self, mode) < 0) {
                int r = -errno;

                msg_set(msg, msg_size, "cannot give %s mode %04o (socket_mode): %s", path, (unsigned) mode,
                        strerror(-r));
                return r;
        }
        return 0;
}

/*
 * Give the bound socket (fd, st: open_bound()'s) `mode` where the umask at
 * bind() did not (a default ACL of its directory), and group `group`
 * unless -1.
 */
static int set_bound_perms(const char *path, int fd, const struct stat *st, mode_t mode, gid_t group, char *msg,
                           size_t msg_size) {
        int r;

        if (group != (gid_t) -1 && fchownat(fd, "", (uid_t) -1, group, AT_EMPTY_PATH) < 0) {
                r = -errno;
                msg_set(msg, msg_size, "cannot give %s group %u (socket_group): %s", path, (unsigned) group,
                        strerror(errno));
                return r;
        }
        return (st->st_mode & 0777) != mode ? give_mode(path, fd, mode, msg, msg_size) : 0;
}

gid_t control_bound_group(const Control *c) {
        return c->bound_path ? c->bound_gid : (gid_t) -1;
}

int control_set_socket_perms(Control *c, mode_t mode, gid_t group, char *msg, size_t msg_size) {
        _cleanup_(closep) int fd = -1;
        struct stat st;
        mode_t old, narrow;
        bool chowned = false, undone;
        int r;

        if (!c->bound_path) {
                msg_set(msg, msg_size, "the socket came from systemd: its unit's SocketMode= and SocketGroup= decide");
                return -EOPNOTSUPP;
        }
        /* Through a descriptor of the file now at the path, as at the bind: never a link to another. */
        r = open_bound(c->bound_path, c, &fd, &st, msg, msg_size);
        if (r < 0)
                return r;
        /*
         * The socket listens meanwhile, and connect() is judged by its mode
         * and group at that moment: first only the bits both the old and
         * the new mode give, then the group, then the new mode, so that no
         * one may connect in between whom neither would let. A failure puts
         * the old ones back, so that it changes nothing, as the log says.
         */
        old = st.st_mode & 0777;
        mode &= 0777;
        narrow = old & mode;
        r = narrow != old ? give_mode(c->bound_path, fd, narrow, msg, msg_size) : 0;
        if (r < 0)
                return r;
        if (group != (gid_t) -1 && group != st.st_gid) {
                if (fchownat(fd, "", (uid_t) -1, group, AT_EMPTY_PATH) < 0) {
                        r = -errno;
                        msg_set(msg, msg_size, "cannot give %s group %u (socket_group): %s", c->bound_path,
                                (unsigned) group, strerror(-r));
                        goto undo;
                }
                chowned = true;
        }
        r = mode != narrow ? give_mode(c->bound_path, fd, mode, msg, msg_size) : 0;
        if (r >= 0)
                return 0;
undo:
        /* Both, whichever fails: a group put back under a mode left narrow would still be half a change. */
        undone = !chowned || fchownat(fd, "", (uid_t) -1, st.st_gid, AT_EMPTY_PATH) >= 0;
        if (narrow != old && give_mode(c->bound_path, fd, old, NULL, 0) < 0)
                undone = false;
        if (!undone)
                msg_set(msg + strlen(msg), msg_size - strlen(msg), "; and putting back mode %04o and group %u "
                        "failed too: check it by hand", (unsigned) old, (unsigned) st.st_gid);
        return r;
}

int control_listen(Control *c, const char *path, mode_t mode, gid_t group, char *msg, size_t msg_size) {
        _cleanup_(closep) int fd = -1, bound = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        mode_t mask;
        int r;

        r = control_remove_stale_socket(path, false, msg, msg_size);
        if (r < 0)
                return r;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        /*
         * The mode from the umask, as bind() makes the file: a chmod() by
         * path after it would follow whatever another user put there since.
         * The daemon has one thread.
         */
        mask = umask(~mode & 0777);
        r = fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 ? -errno : 0;
        umask(mask);
        if (r < 0) {
                msg_set(msg, msg_size, "cannot bind %s: %s", path, strerror(-r));
                return r;
        }
        /* What bind() made: a stop unlinks the path only while it still names this file. */
        r = open_bound(path, NULL, &bound, &st, msg, msg_size);
        if (r < 0)
                return r;
        r = refuse_descriptors(fd, msg, msg_size);
        if (r < 0) {
                unlink(path);
                return r;
        }
        c->bound_path = strdup(path);
        if (!c->bound_path) {
                unlink(path);
                msg_set(msg, msg_size, "cannot listen on %s: out of memory", path);
                return -ENOMEM;
        }
        c->bound_dev = st.st_dev;
        c->bound_ino = st.st_ino;
        c->bound_gid = st.st_gid;
        /* Every request is checked against the peer's credentials as well. */
        r = set_bound_perms(path, bound, &st, mode & 0777, group, msg, msg_size);
        if (r < 0)
                return r;
        if (listen(fd, SOMAXCONN) < 0) {
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
        r = refuse_descriptors(fd, msg, msg_size);
        if (r < 0)
                return r;
        r = sd_event_add_io(c->event, &c->listen_source, fd, EPOLLIN, on_accept, c);
        if (r < 0) {
                msg_set(msg, msg_size, "cannot watch the socket passed by systemd: %s", strerror(-r));
                return r;
        }
        c->listen_fd = fd;
        return 0;
}

void control_set_limits(Control *c, const ConfigLimits *limits) {
        Conn *conn;

        c->limits = limits;
        settle_past_max(c);
        /*
         * At once for the connections a limit held back, too: one that
         * stopped reading at the old output_max reads again under a higher
         * one now, not at its client's next read, which a client blocked
         * sending its requests never does. Nothing is freed here (the
         * reload may be answering one of these), so a failure only leaves
         * a connection as it was until its next turn. Not the retry of
         * held descriptors, which no limit decides: each update puts it
         * off, and a reload every little while would hold them for good.
         */
        LIST_FOREACH(conn, &c->conns, link) {
                int r;

                if (conn->closing)
                        continue;
                r = conn_update_io(conn);
                if (r >= 0)
                        r = conn_update_timeout(conn);
                if (r < 0)
                        log_warning("Failed to apply the reloaded limits to the connection of pid %d: %s, ignoring.",
                                    (int) conn->client.peer.pid, strerror(-r));
        }
}

void control_stop_accepting(Control *c) {
        c->resume_source = sd_event_source_disable_unref(c->resume_source);
        c->listen_source = sd_event_source_disable_unref(c->listen_source);
        if (c->listen_fd >= 0) {
                close(c->listen_fd);
                c->listen_fd = -1;
        }
}

void control_on_change(Control *c, void (*fn)(void *userdata), void *userdata) {
        c->changed = fn;
        c->changed_userdata = userdata;
}

size_t control_count_connections(const Control *c) {
        return c->n_conns;
}

Control *control_free(Control *c) {
        if (!c)
                return NULL;
        control_stop_accepting(c);
        /* The daemon stops and removes every channel: no process is worth watching now. */
        c->exits = NULL;
        while (!LIST_EMPTY(&c->conns))
                conn_free(LIST_FIRST(&c->conns));
        if (c->bound_path) {
                struct stat st;

                if (lstat(c->bound_path, &st) == 0 && S_ISSOCK(st.st_mode) &&
                    st.st_dev == c->bound_dev && st.st_ino == c->bound_ino)
                        unlink(c->bound_path);
                free(c->bound_path);
        }
        if (c->reserve_fd >= 0)
                close(c->reserve_fd);
        free(c->accts);         /* empty: each entry went with its uid's last connection */
        sd_event_unref(c->event);
        free(c);
        return NULL;
}
