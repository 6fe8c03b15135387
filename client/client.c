/*
 * Connections to the broker: one Unix stream socket, one request at a time
 * under a mutex, answers read with a small buffer. Answers may be longer
 * than a request line (status of many channels), up to CLIENT_ANSWER_MAX.
 *
 * A connection outlives its broker. It keeps the list of the channels open
 * on it (ClientHold, one per handle). When the broker goes away (a round
 * trip meets end of file, EPIPE or ECONNRESET, or the socket is found
 * readable between calls, which only its end makes it) the connection is
 * AWAY; the library connects again when the broker is back and opens every
 * listed channel again, so the broker's status shows the holds as before.
 *
 * No thread does that, as the library plugs into the caller's event loop:
 * the next broker call tries at once (it waits for the broker anyway), and
 * shmb_client_process() tries when an attempt is due, never waiting for the
 * broker. Attempts back off from 50 ms, doubling to 2 s, so a broker that
 * is back is found within about 2 s of its start, and one that stays away
 * costs a failed connect() every 2 s. shmb_client_fd() is an epoll
 * instance watching the socket and a timer armed for the next attempt, so
 * a loop polls it readable exactly when process() has work; being one fd
 * for the life of the client, an epoll or sd-event loop registers it once
 * (a socket or timer swapped under the same number would silently drop out
 * of the loop's epoll set).
 *
 * Rejoining is one non-blocking connect, then hello and an open per channel
 * name, all in one write, then their answers, read as they come. An open
 * answered with the ids the handles attached means the broker adopted the
 * channel (a crash restart): the hold is back and nothing else happens.
 * Other ids, or a refusal that says the channel is gone, mean the channel
 * those handles attached was removed: they are marked stale (their ring,
 * broadcast and semaphore calls say -EIDRM from then on, and a sleeper
 * sees it at its next poll) and the hold this open took is given back. The library never attaches the new channel behind the
 * application's back: its mapping would change under live pointers.
 *
 * A malformed answer closes the connection for good (CLOSED), as
 * shmb_disconnect() does: where the stream stands is unknown, and a broker
 * that breaks the protocol is not one that restarted.
 *
 * Every wait for the broker ends by the call's deadline (timeout_ms from
 * the call's start, shmb_client_set_timeout()). A thread queued on the
 * mutex waits for it no longer than one bound either (client_lock()):
 * each call queued ahead may hold it for a bound of its own, and an
 * unbounded wait would add them up. The socket's SO_SNDTIMEO and
 * SO_RCVTIMEO, set once per connection, bound connect(), send() and recv()
 * without a poll() per call; only a call that has to wait again after
 * time passed (a partial answer, a rejoin first) shortens SO_RCVTIMEO to
 * what is left. A broker that does not answer in time is treated as gone:
 * the call fails with -ETIMEDOUT and the connection comes back as after a
 * restart, since the late answer would otherwise be read as the next one.
 * But it hung rather than ended, and each attempt at it costs a bound:
 * the calls queued behind the one that found it hung fail with it, and
 * closes (which reconnect only to end a token) wait for the next attempt
 * to be due, a bound later at the soonest (attempt_failed()).
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"
#include "common/util.h"

#define CLIENT_ANSWER_MAX (64u * 1024 * 1024)
#define RECONNECT_MIN_MS 50u
#define TIMEOUT_DEFAULT_MS 5000
#define SHORTEN_SLACK_MS 10
#define RECONNECT_MAX_MS 2000u
#define ANSWER_SPIN_MAX_US 100u

/* call_locked() flags. */
#define CALL_KEEP_MESSAGE 1u            /* leave c->last_message as the previous call left it */
#define CALL_NO_RECONNECT 2u            /* a broker that is away is no reason to come back */

static const char *resolve_socket(const char *path) {
        const char *env;

        if (path)
                return path;
        /* secure_getenv: a setuid program must not be pointed elsewhere. */
        env = secure_getenv("SHMBROKER_SOCKET");
        return env && *env ? env : SHMB_DEFAULT_SOCKET;
}

static uint64_t now_ms(void) {
        return now_usec() / 1000;
}

/* The errors by which a socket says that its peer is gone, or as good as gone. */
static bool broker_gone(int r) {
        return r == -ECONNRESET || r == -EPIPE || r == -ECONNABORTED || r == -ETIMEDOUT;
}

static struct timeval timeval_of_ms(int ms) {
        /* 0 is no timeout to the kernel, and what -1 means here. */
        return ms < 0 ? (struct timeval) {} : (struct timeval) { .tv_sec = ms / 1000, .tv_usec = ms % 1000 * 1000 };
}

static int set_socket_timeouts(int fd, int ms) {
        struct timeval tv = timeval_of_ms(ms);

        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
                return -errno;
        return 0;
}

/*
 * Take c->lock, waiting at most one bound (-ETIMEDOUT then). The bound
 * read without the lock is the one of the call that holds it:
 * shmb_client_set_timeout() changes it only with the lock held.
 */
int client_lock(shmb_client *c) {
        int ms = __atomic_load_n(&c->timeout_ms, __ATOMIC_RELAXED);
        struct timespec at;

        /* Before the lock: a thread of the parent may have held it at the fork, for ever here. */
        if (client_inherited(c))
                return -ECHILD;
        if (ms < 0)
                return -pthread_mutex_lock(&c->lock);
        clock_gettime(CLOCK_MONOTONIC, &at);
        at.tv_sec += ms / 1000;
        at.tv_nsec += (long) (ms % 1000) * 1000000L;
        if (at.tv_nsec >= 1000000000L) {
                at.tv_sec++;
                at.tv_nsec -= 1000000000L;
        }
        return -pthread_mutex_clocklock(&c->lock, CLOCK_MONOTONIC, &at);
}

/* A call begins (c->lock held): its deadline, and the socket's full timeouts back if a call shortened them. */
static void call_begin(shmb_client *c) {
        c->deadline_ms = c->timeout_ms < 0 ? 0 : now_ms() + (uint64_t) c->timeout_ms;
        if (c->shortened_ms != 0 && c->fd >= 0 && set_socket_timeouts(c->fd, c->timeout_ms) == 0)
                c->shortened_ms = 0;
}

/*
 * Milliseconds left of the call's deadline: -1 none, 0 passed. With
 * shorten, a blocking send() or recv() about to wait with less left than
 * the socket's timeouts allow gets them shortened (shortened_ms), so it
 * cannot outlast the deadline.
 */
static int time_left(shmb_client *c, bool shorten) {
        uint64_t now;
        int left;

        if (c->deadline_ms == 0)
                return -1;
        now = now_ms();
        if (now >= c->deadline_ms)
                return 0;
        left = (int) (c->deadline_ms - now);
        /* Within SHORTEN_SLACK_MS of it, a wait may overrun: not a system call on every call that crossed a tick. */
        if (shorten && (c->shortened_ms ? c->shortened_ms : c->timeout_ms) - left > SHORTEN_SLACK_MS &&
            set_socket_timeouts(c->fd, left) == 0)
                c->shortened_ms = left;
        return left;
}

/* On a blocking socket: EAGAIN is SO_SNDTIMEO running out; a signal does not start the wait over. */
static int send_all(shmb_client *c, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t n;

                if (time_left(c, true) == 0)
                        return -ETIMEDOUT;
                n = send(c->fd, buf, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
                }
                buf += n;
                len -= (size_t) n;
        }
        return 0;
}

/* Descriptors received but not yet handed out with their line: a bound, so a broker cannot make us hoard them. */
#define PENDING_FDS_MAX (4 * PROTO_FDS_MAX)

/*
 * Keep the descriptors that came with a read ending at rbuf[last]. A Unix
 * stream socket ends a read with the bytes that carried descriptors (or
 * inside them, when the buffer is full), and the broker sends them with
 * their answer's first byte: they belong to the line holding `last`.
 */
static void fds_received(shmb_client *c, struct msghdr *mh, size_t last) {
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
                size_t n;

                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++) {
                        int fd;
                        PendingFd *p = NULL;

                        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                        if (c->n_pending_fds < PENDING_FDS_MAX)
                                p = realloc(c->pending_fds, (c->n_pending_fds + 1) * sizeof *p);
                        if (!p) {
                                close(fd);      /* unwanted or no memory: closed, never leaked */
                                continue;
                        }
                        c->pending_fds = p;
                        p[c->n_pending_fds++] = (PendingFd) { .fd = fd, .end = last };
                }
        }
}

/*
 * Hand out (to out, up to PROTO_FDS_MAX) or close the descriptors of the
 * line rbuf[0 .. len] (newline included); out NULL: close them.
 */
static void take_line_fds(shmb_client *c, size_t len, ClientFds *out) {
        size_t kept = 0;

        for (size_t i = 0; i < c->n_pending_fds; i++) {
                PendingFd p = c->pending_fds[i];

                if (p.end > len)
                        c->pending_fds[kept++] = p;
                else if (out && out->n < PROTO_FDS_MAX)
                        out->fd[out->n++] = p.fd;
                else
                        close(p.fd);
        }
        c->n_pending_fds = kept;
}

static void pending_fds_close(shmb_client *c) {
        take_line_fds(c, SIZE_MAX, NULL);
        free(c->pending_fds);
        c->pending_fds = NULL;
}

void client_fds_close(ClientFds *fds) {
        for (unsigned i = 0; i < fds->n; i++)
                if (fds->fd[i] >= 0)
                        close(fds->fd[i]);
        fds->n = 0;
}

/*
 * One recvmsg() into the buffer: 1 when bytes came (or a signal
 * interrupted), 0 when none were there (MSG_DONTWAIT). Descriptors are
 * received close-on-exec, kept with the bytes they came with.
 */
static int recv_some(shmb_client *c, int flags) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(PROTO_FDS_MAX * sizeof(int))];
        } control;
        struct iovec iov;
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = control.buf,
                .msg_controllen = sizeof control.buf,
        };
        ssize_t n;

        if (c->rlen == c->rcap) {
                size_t cap = c->rcap ? c->rcap * 2 : 4096;
                char *p;

                if (c->rcap >= CLIENT_ANSWER_MAX)
                        return -EMSGSIZE;
                p = realloc(c->rbuf, cap);
                if (!p)
                        return -ENOMEM;
                c->rbuf = p;
                c->rcap = cap;
        }
        iov = (struct iovec) { .iov_base = c->rbuf + c->rlen, .iov_len = c->rcap - c->rlen };
        n = recvmsg(c->fd, &mh, flags | MSG_CMSG_CLOEXEC);
        if (n < 0) {
                if (errno == EINTR)
                        return 1;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return 0;
                return -errno;
        }
        /* Descriptors always come with at least one byte of a line. */
        if (n > 0)
                fds_received(c, &mh, c->rlen + (size_t) n - 1);
        if (n == 0)
                return -ECONNRESET;     /* the broker went away */
        c->rlen += (size_t) n;
        return 1;
}

/* Whether a whole answer line is buffered; from: the bytes before it are known to hold no newline. */
static bool buffered_line(const shmb_client *c, size_t from, size_t *ret_len) {
        const char *nl = c->rlen > from ? memchr(c->rbuf + from, '\n', c->rlen - from) : NULL;

        if (!nl)
                return false;
        *ret_len = (size_t) (nl - c->rbuf);
        return true;
}

/*
 * Before read_line() first sleeps for an answer: look for it a while,
 * yielding the CPU between looks. The broker answers an open in tens of
 * microseconds, and waking a thread that slept for it costs about as much
 * again in a virtual machine: in the open-by-name bench, a third of the
 * call. Yielding rather than pausing lets a broker that shares this CPU
 * run at once. Never past the call's deadline. Returns 1 when a line is
 * buffered, 0 when the caller should sleep for it, or what the socket
 * said.
 */
static int spin_for_answer(shmb_client *c, size_t *scanned, size_t *ret_len) {
        uint64_t end = now_usec() + c->answer_spin_us;

        if (c->deadline_ms != 0 && end > c->deadline_ms * 1000)
                end = c->deadline_ms * 1000;
        while (c->answer_spin_us > 0) {
                int r;

                *scanned = c->rlen;
                r = recv_some(c, MSG_DONTWAIT);
                if (r < 0)
                        return r;
                if (r > 0 && buffered_line(c, *scanned, ret_len))
                        return 1;
                if (now_usec() >= end)
                        break;
                sched_yield();
        }
        return 0;
}

/*
 * The spin adapts to how soon answers came, slept for or not: the whole
 * budget after one within it, half the last after one that was later, so
 * that a broker slow to answer (a reload, a long list, a hang) soon costs
 * a caller no spin at all, and one quick answer brings it back.
 */
static void answer_came(shmb_client *c, uint64_t waited_us) {
        c->answer_spin_us = waited_us <= ANSWER_SPIN_MAX_US ? ANSWER_SPIN_MAX_US : c->answer_spin_us / 2;
}

/*
 * Read one answer line by the call's deadline; *ret_len excludes the
 * newline, which consume_line() takes.
 */
static int read_line(shmb_client *c, char **ret_line, size_t *ret_len) {
        size_t scanned = 0;     /* a long answer is scanned once, not once per read */
        uint64_t start = 0;

        while (!buffered_line(c, scanned, ret_len)) {
                int r;

                if (start == 0) {
                        start = now_usec();
                        r = spin_for_answer(c, &scanned, ret_len);
                        if (r < 0)
                                return r;
                        if (r > 0)
                                break;
                }

                if (time_left(c, true) == 0) {
                        /* What came meanwhile still counts (a wait cut short by a signal, say). */
                        scanned = c->rlen;
                        if (recv_some(c, MSG_DONTWAIT) > 0 && buffered_line(c, scanned, ret_len))
                                break;
                        return -ETIMEDOUT;
                }
                scanned = c->rlen;
                r = recv_some(c, 0);    /* 0: SO_RCVTIMEO ran out; the deadline decides */
                if (r < 0)
                        return r;
        }
        /* Only an answer waited for tells how soon answers come (the next of a pipelined pair was there). */
        if (start != 0)
                answer_came(c, now_usec() - start);
        *ret_line = c->rbuf;
        return 0;
}

/* Drop the line rbuf[0 .. len] and its newline, closing the descriptors that came with it and nobody took. */
static void consume_line(shmb_client *c, size_t len) {
        take_line_fds(c, len, NULL);
        for (size_t i = 0; i < c->n_pending_fds; i++)
                c->pending_fds[i].end -= len + 1;
        memmove(c->rbuf, c->rbuf + len + 1, c->rlen - len - 1);
        c->rlen -= len + 1;
}

/* ---- the event fd ---- */

/*
 * Make the event fd, when there is one, watch what the state calls for:
 * the socket while there is one (and its room to write while a rejoin has
 * bytes left to send), and the timer, armed for the next attempt while
 * away, and to fire at once when closed for good (so that the loop's
 * shmb_client_process() hears it, and drains it). Failures leave it as it
 * was, to be tried again at the next change: the loop then learns of the
 * broker from the calls, as without the fd.
 */
static void events_sync(shmb_client *c) {
        struct itimerspec its = {};
        uint32_t want = 0;

        if (c->event_fd < 0)
                return;
        if (c->fd >= 0)
                want = EPOLLIN | (c->state == CLIENT_REJOINING && c->woff < c->wlen ? EPOLLOUT : 0);
        if (c->watched_fd >= 0 && (c->watched_fd != c->fd || want == 0)) {
                (void) epoll_ctl(c->event_fd, EPOLL_CTL_DEL, c->watched_fd, NULL);
                c->watched_fd = -1;
        }
        if (c->fd >= 0 && (c->watched_fd != c->fd || c->watched_events != want)) {
                struct epoll_event ev = { .events = want, .data.fd = c->fd };

                if (epoll_ctl(c->event_fd, c->watched_fd == c->fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) == 0) {
                        c->watched_fd = c->fd;
                        c->watched_events = want;
                }
        }
        if (c->state == CLIENT_AWAY || c->state == CLIENT_CLOSED) {
                /* Absolute, and never 0 (which would disarm): a time already past fires at once. */
                uint64_t at = c->state == CLIENT_CLOSED ? 1 : MAX(c->next_attempt_ms, 1);

                its.it_value.tv_sec = (time_t) (at / 1000);
                its.it_value.tv_nsec = (long) (at % 1000) * 1000000L;
        }
        (void) timerfd_settime(c->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int events_open(shmb_client *c) {
        _cleanup_(closep) int ep = -1, timer = -1;
        struct epoll_event ev = { .events = EPOLLIN };

        if (c->event_fd >= 0)
                return 0;
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
                return -errno;
        timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (timer < 0)
                return -errno;
        ev.data.fd = timer;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, timer, &ev) < 0)
                return -errno;
        c->event_fd = TAKE_FD(ep);
        c->timer_fd = TAKE_FD(timer);
        c->watched_fd = -1;
        events_sync(c);
        return 0;
}

/* Take what made the event fd readable, so that it is not readable again for the same reason. */
static void events_drain(shmb_client *c) {
        struct epoll_event ev[2];
        uint64_t expirations;

        if (c->event_fd < 0)
                return;
        (void) epoll_wait(c->event_fd, ev, ELEMENTSOF(ev), 0);
        (void) read(c->timer_fd, &expirations, sizeof expirations);
}

/* ---- states ---- */

static void rejoin_reset(shmb_client *c) {
        free(c->wbuf);
        c->wbuf = NULL;
        c->wlen = c->woff = 0;
        free(c->steps);
        c->steps = NULL;
        c->n_steps = c->steps_done = 0;
}

/* Close the socket; with c->lock held, as everything below. */
static void socket_close(shmb_client *c) {
        if (c->fd >= 0) {
                /* Out of the epoll set first: a closed number may be reused by anyone. */
                if (c->watched_fd == c->fd)
                        (void) epoll_ctl(c->event_fd, EPOLL_CTL_DEL, c->fd, NULL);
                c->watched_fd = -1;
                /*
                 * A child of fork(2) may hold a copy of the socket: end the
                 * connection itself, not just our descriptor (but never from
                 * the child, whose copy is the parent's connection).
                 */
                if (!client_inherited(c))
                        (void) shutdown(c->fd, SHUT_RDWR);
                close(c->fd);
                c->fd = -1;
        }
        c->rlen = 0;
        pending_fds_close(c);
        rejoin_reset(c);
}

/* The broker went away: try again at once (a supervisor may have started it already; a refused connect costs nothing). */
static void went_away(shmb_client *c) {
        socket_close(c);
        c->state = CLIENT_AWAY;
        c->away_error = -ECONNREFUSED;
        c->backoff_ms = RECONNECT_MIN_MS;
        c->next_attempt_ms = now_ms();
        events_sync(c);
}

/*
 * An attempt failed with r: the next one after the backoff, which doubles
 * up to its cap. After a broker that did not answer in time (-ETIMEDOUT),
 * also not before another bound passed: an attempt at a hung broker costs
 * its caller the bound (see ready() and client_hold_remove()).
 */
static void attempt_failed(shmb_client *c, int r) {
        unsigned wait = c->backoff_ms;

        if (r == -ETIMEDOUT) {
                wait = MAX(wait, c->timeout_ms < 0 ? RECONNECT_MAX_MS : MIN((unsigned) c->timeout_ms, RECONNECT_MAX_MS));
                c->hung_ms = now_ms();
        }
        socket_close(c);
        c->state = CLIENT_AWAY;
        c->away_error = r;
        c->next_attempt_ms = now_ms() + wait;
        c->backoff_ms = MIN(wait * 2, RECONNECT_MAX_MS);
        events_sync(c);
}

/*
 * For good. The event fd stays open, as the caller's loop may still watch
 * it (a number closed under a loop is reused by anyone), and readable
 * once (events_sync()), so that the loop's shmb_client_process() hears
 * -ENOTCONN; shmb_disconnect() closes it.
 */
static void closed_for_good(shmb_client *c) {
        socket_close(c);
        c->state = CLIENT_CLOSED;
        events_sync(c);
}

static void events_close(shmb_client *c) {
        if (c->timer_fd >= 0)
                c->timer_fd = (close(c->timer_fd), -1);
        if (c->event_fd >= 0)
                c->event_fd = (close(c->event_fd), -1);
}

/*
 * After a failed send, read or decode, where the stream stands is unknown
 * (half an answer buffered, later answers of a pipelined call unread): the
 * next call would read an answer meant for this one. So the socket goes:
 * the broker's end means it went away (come back when it does); no answer
 * in time, that it hung (come back when the next attempt is due); anything
 * else closes the connection for good, and later calls fail with -ENOTCONN.
 */
static void call_failed(shmb_client *c, int r) {
        if (r == -ETIMEDOUT)
                attempt_failed(c, r);
        else if (broker_gone(r))
                went_away(c);
        else
                closed_for_good(c);
}

/*
 * Between calls the broker never writes: a readable socket has reached its
 * end (or broke the protocol). Not asked on a socket just connected, where
 * the only thing to read is a refusal, which the first call reads as its
 * answer: one system call fewer for every open by name.
 */
static bool socket_ended(shmb_client *c) {
        struct pollfd p = { .fd = c->fd, .events = POLLIN };

        if (c->unasked) {
                c->unasked = false;
                return false;
        }
        return c->rlen > 0 || poll(&p, 1, 0) > 0;
}

/* ---- rejoining ---- */

static int rejoin_queue(shmb_client *c, const ProtoRequest *req) {
        RejoinStep *steps;
        char *line, *buf;
        size_t len;
        int r;

        r = proto_request_encode(req, &line, &len);
        if (r < 0)
                return r;
        steps = realloc(c->steps, (c->n_steps + 1) * sizeof *steps);
        if (steps)
                c->steps = steps;
        buf = steps ? realloc(c->wbuf, c->wlen + len) : NULL;
        if (!buf) {
                free(line);
                return -ENOMEM;
        }
        memcpy(buf + c->wlen, line, len);
        c->wbuf = buf;
        c->wlen += len;
        free(line);
        c->steps[c->n_steps] = (RejoinStep) { .op = req->op };
        strcpy(c->steps[c->n_steps].channel, req->channel);
        c->n_steps++;
        return 0;
}

/* Whether the rejoin has an open of name whose answer is still due (none outside REJOINING). */
static bool open_pending(const shmb_client *c, const char *name) {
        for (size_t i = c->steps_done; i < c->n_steps; i++)
                if (c->steps[i].op == PROTO_OP_OPEN && streq(c->steps[i].channel, name))
                        return true;
        return false;
}

/*
 * Whether h stands for the broker's hold of its name: its open was granted
 * (or it attached). A handle whose open is still to be sent does not: that
 * open takes a hold of its own, and a hold kept for it would meet it as
 * another handle's (a broadcast channel's publisher and subscriber may not
 * share one connection). c->holds_lock held.
 */
static bool hold_in_use(const ClientHold *h) {
        return !h->stale && (h->granted || __atomic_load_n(&h->attached, __ATOMIC_ACQUIRE));
}

/* Whether a handle of name on c stands for its hold; c->holds_lock held. */
static bool hold_needed(const shmb_client *c, const char *name) {
        for (const ClientHold *h = c->holds; h; h = h->next)
                if (hold_in_use(h) && streq(h->name, name))
                        return true;
        return false;
}

/* The holder token that the handles of a channel name share (one hold per connection and name), or 0; c->holds_lock held. */
static uint32_t hold_token(const shmb_client *c, const char *name) {
        for (const ClientHold *h = c->holds; h; h = h->next) {
                uint32_t t = __atomic_load_n(&h->token, __ATOMIC_RELAXED);

                if (!h->stale && __atomic_load_n(&h->attached, __ATOMIC_ACQUIRE) && t != 0 && streq(h->name, name))
                        return t;
        }
        return 0;
}

/* The strongest access among the live handles of `name`: what the broker's one hold of it stood for; c->holds_lock held. */
static shmb_access strongest_access(const shmb_client *c, const char *name) {
        for (const ClientHold *h = c->holds; h; h = h->next)
                if (hold_in_use(h) && streq(h->name, name) && h->access == SHMB_RW)
                        return SHMB_RW;
        return SHMB_RO;
}

/*
 * hello, then one open per channel name with the strongest access of its
 * handles: the broker keeps one hold per connection and channel, which a
 * read-write open makes read-write until it ends (a mapping handed out
 * read-write cannot be taken back), so this is the hold it had. Stale
 * handles have no channel to come back to.
 */
static int rejoin_start(shmb_client *c) {
        ProtoRequest req = { .op = PROTO_OP_HELLO, .version = PROTO_VERSION };
        int r;

        c->state = CLIENT_REJOINING;
        r = rejoin_queue(c, &req);
        pthread_mutex_lock(&c->holds_lock);
        for (ClientHold *h = c->holds; h && r == 0; h = h->next) {
                /* A name only opens still to be sent have: they take their own hold after this. */
                if (!hold_in_use(h) || open_pending(c, h->name))
                        continue;
                r = client_open_request(h->name, strongest_access(c, h->name), &req);
                if (r < 0)
                        break;
                /* A ring's claims name the token: ask for the same one, so that they stay ours. */
                req.holder = hold_token(c, h->name);
                req.has_holder = req.holder != 0;
                r = rejoin_queue(c, &req);
        }
        pthread_mutex_unlock(&c->holds_lock);
        return r;
}

/* Refusals of an open that mean the channel a handle attached is no more: gone, or replaced (a restart that takes rights away replaces it). */
static bool refusal_means_removed(int error) {
        return error == ENOENT || error == EACCES || error == EIDRM;
}

/*
 * Whether an open answer names the objects that h attached: the same ids
 * for System V; for posix the same segment file (device and inode, of the
 * descriptor that came with the answer: names are reused by a new channel).
 */
static bool same_objects(const ClientHold *h, const ProtoResponse *res, const ClientFds *fds) {
        const ProtoChannel *pc = &res->channels[0];
        struct stat st;

        if (pc->kind != h->kind)
                return false;
        if (h->kind == PROTO_KIND_SYSV)
                return pc->shm_id == h->shm_id && pc->sem_id == h->sem_id;
        return fds->n > 0 && fstat(fds->fd[0], &st) == 0 && st.st_dev == h->dev && st.st_ino == h->ino;
}

/* The broker's answer to opening `name` again: which handles are back, which are stale, and whether the hold is anyone's. */
static int rejoin_opened(shmb_client *c, const char *name, const ProtoResponse *res, const ClientFds *fds) {
        ProtoRequest req = { .op = PROTO_OP_CLOSE };
        bool needed = false;

        pthread_mutex_lock(&c->holds_lock);
        for (ClientHold *h = c->holds; h; h = h->next) {
                if (h->stale || !streq(h->name, name))
                        continue;
                if (!__atomic_load_n(&h->attached, __ATOMIC_ACQUIRE)) {
                        /* Granted before the broker went away: its objects are known once it attaches. An open
                         * still to be sent takes its own hold. */
                        needed = needed || h->granted;
                }
                else if (res->ok && same_objects(h, res, fds)) {
                        needed = true;          /* adopted: the same objects */
                        /* Ours again, or a new one if the broker took the old for dead: claims use it from now on. */
                        if (res->channels[0].holder) {
                                uint32_t was = __atomic_load_n(&h->token, __ATOMIC_RELAXED);

                                /* Before the new one: a commit that reads the new token then finds the old too. */
                                if (was != res->channels[0].holder)
                                        __atomic_store_n(&h->old_tokens[h->n_old++ % HOLD_OLD_TOKENS], was,
                                                         __ATOMIC_RELAXED);
                                __atomic_store_n(&h->token, res->channels[0].holder, __ATOMIC_RELEASE);
                        }
                }
                else if (res->ok || refusal_means_removed(res->error)) {
                        __atomic_store_n(&h->stale, true, __ATOMIC_RELEASE);
                        /* Its handle's calls say -EIDRM from now on (channel_gone()). */
                        __atomic_store_n(&h->gone, true, __ATOMIC_RELEASE);
                }
                /* Any other refusal (the broker out of memory) says nothing of the channel: the handle
                 * stays as it is, without a hold until the next reconnection. */
        }
        pthread_mutex_unlock(&c->holds_lock);
        if (!res->ok || needed)
                return 0;
        /* A hold on the new channel that no handle of ours attached: give it back. */
        strcpy(req.channel, name);
        return rejoin_queue(c, &req);
}

/* Whether res can answer a request op on channel: an open's names the channel asked for. */
static bool answers_open_of(ProtoOp op, const char *channel, const ProtoResponse *res) {
        return op != PROTO_OP_OPEN || !res->ok || (res->n_channels == 1 && streq(res->channels[0].name, channel));
}

/* A documented outcome of rejoin_answer() and rejoin_run(), not an error: the broker broke the protocol. */
#define REJOIN_MALFORMED 1

/* fds: the descriptors that came with the line (a posix open's), looked at only. */
static int rejoin_answer(shmb_client *c, const char *line, size_t len, const ClientFds *fds) {
        RejoinStep step = c->steps[c->steps_done++];    /* a copy: rejoin_opened() may grow the array */
        char msg[PROTO_MESSAGE_MAX];
        ProtoResponse res;
        int r;

        r = proto_response_decode(step.op, line, len, &res, msg, sizeof msg);
        if (r != 0)
                return r > 0 ? REJOIN_MALFORMED : r;
        switch (step.op) {
        case PROTO_OP_HELLO:
                r = res.ok ? client_check_hello(&res) : -(res.error ?: EPROTO);
                break;
        case PROTO_OP_OPEN:
                if (!answers_open_of(step.op, step.channel, &res))
                        r = REJOIN_MALFORMED;
                else
                        r = rejoin_opened(c, step.channel, &res, fds);
                break;
        default:
                r = 0;                  /* a close: nothing depends on it */
                break;
        }
        proto_response_done(&res);
        return r;
}

/*
 * Write what is left of the rejoin and read the answers that are there.
 * wait: until all are in (a broker call, which waits for the broker
 * anyway); else return 0 when the socket has nothing more for now.
 * REJOIN_MALFORMED or a negative errno when it failed.
 */
static int rejoin_run(shmb_client *c, bool wait) {
        for (;;) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                size_t len, queued;
                int r, left;

                while (c->woff < c->wlen) {
                        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL | MSG_DONTWAIT);

                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                if (errno == EAGAIN || errno == EWOULDBLOCK)
                                        break;          /* the broker reads as we read its answers */
                                return -errno;
                        }
                        c->woff += (size_t) n;
                }
                queued = c->wlen;
                while (c->steps_done < c->n_steps && buffered_line(c, 0, &len)) {
                        ClientFds fds = {};

                        take_line_fds(c, len, &fds);
                        r = rejoin_answer(c, c->rbuf, len, &fds);
                        client_fds_close(&fds);
                        consume_line(c, len);
                        if (r != 0)
                                return r;
                }
                /* An answer queued a request (a stale hold's close): out with it now, not at the next call. */
                if (c->wlen != queued)
                        continue;
                if (c->steps_done == c->n_steps) {
                        rejoin_reset(c);
                        c->state = CLIENT_UP;
                        c->backoff_ms = RECONNECT_MIN_MS;
                        events_sync(c);
                        return 0;
                }
                r = recv_some(c, MSG_DONTWAIT);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                if (!wait) {
                        events_sync(c);         /* EPOLLOUT while requests wait to be written */
                        return 0;
                }
                if (c->woff < c->wlen)
                        p.events |= POLLOUT;
                left = time_left(c, false);
                if (left == 0)
                        return -ETIMEDOUT;
                if (poll(&p, 1, left) < 0 && errno != EINTR)
                        return -errno;
        }
}

/*
 * rejoin_run(), and what its failure means: a malformed answer closes the
 * connection for good (-ENOTCONN), as in a call; anything else schedules the
 * next attempt.
 */
static int rejoin_continue(shmb_client *c, bool wait) {
        int r = rejoin_run(c, wait);

        if (r == REJOIN_MALFORMED) {
                closed_for_good(c);
                return -ENOTCONN;
        }
        if (r < 0)
                attempt_failed(c, r);
        return r;
}

/*
 * One attempt: a non-blocking connect (a missing socket or a refusing one
 * fails at once, a full backlog too, with EAGAIN), then the rejoin, waited
 * for or not. A failure schedules the next attempt.
 */
static int reconnect(shmb_client *c, bool wait) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int r, flags;

        /* Checked to fit when the client was made. */
        strcpy(sa.sun_path, c->socket_path);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (c->fd < 0) {
                r = -errno;
                goto fail;
        }
        if (connect(c->fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                /* A broker stopped cleanly removed its socket: for the caller, the same as nobody listening. */
                r = errno == ENOENT ? -ECONNREFUSED : -errno;
                goto fail;
        }
        /* Calls read and write blocking, as on the first connection; the rejoin says MSG_DONTWAIT. */
        flags = fcntl(c->fd, F_GETFL);
        if (flags < 0 || fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
                r = -errno;
                goto fail;
        }
        c->shortened_ms = 0;
        r = set_socket_timeouts(c->fd, c->timeout_ms);
        if (r < 0)
                goto fail;
        r = rejoin_start(c);
        if (r == 0)
                return rejoin_continue(c, wait);
fail:
        attempt_failed(c, r);
        return r;
}

/*
 * Make c ready for a request; every broker call starts here, c->lock held.
 * reconnect: a broker that is away is tried at once, whatever the backoff
 * says (the caller asks for it now, and a refused connect costs nothing).
 * But a call that was asked (at `asked`, before it waited for the lock)
 * before the broker was found hung (it queued behind the call that found
 * it) fails as that one did: each queued thread would otherwise wait the
 * bound again, one after the other.
 */
static int ready(shmb_client *c, bool reconnect_now, uint64_t asked) {
        if (c->state == CLIENT_UP && socket_ended(c))
                went_away(c);
        switch (c->state) {
        case CLIENT_UP:
                return 0;
        case CLIENT_AWAY:
                if (!reconnect_now)
                        return -ENOTCONN;
                if (c->away_error == -ETIMEDOUT && asked < c->hung_ms)
                        return -ETIMEDOUT;
                return reconnect(c, true);
        case CLIENT_REJOINING:
                return rejoin_continue(c, true);
        default:
                return -ENOTCONN;
        }
}

int shmb_client_process(shmb_client *c) {
        int r = 0;

        if (!c)
                return -EINVAL;
        r = client_lock(c);
        if (r < 0)
                return r;
        events_drain(c);
        if (c->state == CLIENT_UP && socket_ended(c))
                went_away(c);
        if (c->state == CLIENT_AWAY)
                r = now_ms() >= c->next_attempt_ms ? reconnect(c, false) : c->away_error;
        else if (c->state == CLIENT_REJOINING)
                r = rejoin_continue(c, false);
        else if (c->state == CLIENT_CLOSED)
                r = -ENOTCONN;
        pthread_mutex_unlock(&c->lock);
        return r;
}

/* ---- calls ---- */

/* call_n() with c->lock held, for a call asked at `asked` (see ready()). */
static int call_locked(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n, unsigned flags,
                       ClientFds *fds, uint64_t asked) {
        char *out = NULL, msg[PROTO_MESSAGE_MAX], *line;
        size_t out_len = 0, got = 0, len;
        bool keep_message = flags & CALL_KEEP_MESSAGE;
        int r = 0;

        if (!keep_message)
                c->last_message[0] = 0;
        for (size_t i = 0; fds && i < n; i++)
                fds[i].n = 0;
        call_begin(c);
        /* Pipelined: every request in one write, then the answers in order. */
        for (size_t i = 0; i < n && r == 0; i++) {
                char *one, *grown;
                size_t one_len;

                r = proto_request_encode(&reqs[i], &one, &one_len);
                if (r < 0)
                        break;
                grown = realloc(out, out_len + one_len);
                if (!grown) {
                        free(one);
                        r = -ENOMEM;
                        break;
                }
                memcpy(grown + out_len, one, one_len);
                out = grown;
                out_len += one_len;
                free(one);
        }
        if (r == 0)
                r = ready(c, !(flags & CALL_NO_RECONNECT), asked);
        if (r < 0) {
                free(out);
                return r;
        }
        r = send_all(c, out, out_len);
        /*
         * A broker that refuses a connection (over a cap) answers at accept and
         * closes, maybe before our request went out: the answer may still be
         * there, and it says why, where EPIPE would not.
         */
        if ((r == -EPIPE || r == -ECONNRESET) && recv_some(c, MSG_DONTWAIT) > 0 && buffered_line(c, 0, &len))
                r = 0;
        while (r == 0 && got < n) {
                r = read_line(c, &line, &len);
                if (r < 0)
                        break;
                r = proto_response_decode(reqs[got].op, line, len, &rets[got], msg, sizeof msg);
                if (fds)
                        take_line_fds(c, len, &fds[got]);
                consume_line(c, len);
                /* Another channel's open answer: the stream is out of step (someone else wrote on the socket). */
                if (r == 0 && !answers_open_of(reqs[got].op, reqs[got].channel, &rets[got])) {
                        proto_response_done(&rets[got]);
                        snprintf(msg, sizeof msg, "the broker answered the open of \"%s\" with another channel",
                                 reqs[got].channel);
                        r = 1;
                }
                if (r > 0) {
                        if (!keep_message)
                                snprintf(c->last_message, sizeof c->last_message, "%s", msg);
                        r = -EPROTO;
                }
                /* Only a decoded answer is ours to release later. */
                if (r == 0)
                        got++;
        }
        if (r < 0)
                call_failed(c, r);
        /* The first refusal is the answer; also when the broker closed after it, as at a refusal at accept. */
        for (size_t i = 0; i < got; i++)
                if (!rets[i].ok) {
                        if (!keep_message)
                                snprintf(c->last_message, sizeof c->last_message, "%s", rets[i].message);
                        r = -rets[i].error;
                        break;
                }
        free(out);
        /* Every decoded response is released on failure, and every descriptor closed. */
        if (r < 0)
                for (size_t i = 0; i < got; i++)
                        proto_response_done(&rets[i]);
        for (size_t i = 0; r < 0 && fds && i < n; i++)
                client_fds_close(&fds[i]);
        return r;
}

static int call_n(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n, unsigned flags,
                  ClientFds *fds) {
        /* Asked now, before it first waits for the lock: a hang found since fails it (ready()). */
        uint64_t asked = now_ms();
        int r;

        r = client_lock(c);
        if (r < 0) {
                for (size_t i = 0; fds && i < n; i++)
                        fds[i].n = 0;
                return r;
        }
        r = call_locked(c, reqs, rets, n, flags, fds, asked);
        pthread_mutex_unlock(&c->lock);
        return r;
}

uint64_t client_now_ms(void) {
        return now_ms();
}

int client_call_n(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n) {
        return call_n(c, reqs, rets, n, 0, NULL);
}

int client_call_fds(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n, ClientFds *fds) {
        return call_n(c, reqs, rets, n, 0, fds);
}

int client_call(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret) {
        return call_n(c, req, ret, 1, 0, NULL);
}

int client_call_keep_message(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret) {
        return call_n(c, req, ret, 1, CALL_KEEP_MESSAGE, NULL);
}

int shmb_request_json(shmb_client *c, const char *request, char **ret_answer) {
        uint64_t asked;
        size_t n, len;
        char *line;
        int r;

        if (!c || !request || !ret_answer)
                return -EINVAL;
        n = strlen(request);
        if (memchr(request, '\n', n))
                return -EINVAL;
        if (n + 1 > PROTO_LINE_MAX)
                return -E2BIG;
        asked = now_ms();
        r = client_lock(c);
        if (r < 0)
                return r;
        c->last_message[0] = 0;
        call_begin(c);
        r = ready(c, true, asked);
        if (r < 0)
                goto out;
        r = send_all(c, request, n);
        if (r == 0)
                r = send_all(c, "\n", 1);
        if (r == 0)
                r = read_line(c, &line, &len);
        if (r == 0) {
                *ret_answer = strndup(line, len);
                consume_line(c, len);
                if (!*ret_answer)
                        r = -ENOMEM;
        } else
                call_failed(c, r);
out:
        pthread_mutex_unlock(&c->lock);
        return r;
}

/* ---- the list of open channels ---- */

int client_hold_add(shmb_client *c, ClientHold *h, const char *name, shmb_access access) {
        int r = client_lock(c);

        if (r < 0)
                return r;
        pthread_mutex_lock(&c->holds_lock);
        *h = (ClientHold) { .next = c->holds, .listed = true, .access = access };
        snprintf(h->name, sizeof h->name, "%s", name);
        /*
         * The name's hold is one per connection, and so are the tokens its
         * rejoins replaced: a posix lock taken under one of them is this
         * handle's to give back too.
         */
        for (const ClientHold *o = c->holds; o; o = o->next)
                if (!o->stale && __atomic_load_n(&o->attached, __ATOMIC_ACQUIRE) && streq(o->name, name)) {
                        for (unsigned k = 0; k < HOLD_OLD_TOKENS; k++)
                                h->old_tokens[k] = __atomic_load_n(&o->old_tokens[k], __ATOMIC_RELAXED);
                        h->n_old = o->n_old;
                        break;
                }
        if (c->holds)
                c->holds->prev = h;
        c->holds = h;
        pthread_mutex_unlock(&c->holds_lock);
        pthread_mutex_unlock(&c->lock);
        return 0;
}

void client_hold_attached(ClientHold *h, ProtoKind kind, int shm_id, int sem_id, dev_t dev, ino_t ino) {
        /* Published by attached, without the lock: an open that got its channel must not fail for a queue. */
        h->kind = kind;
        h->shm_id = shm_id;
        h->sem_id = sem_id;
        h->dev = dev;
        h->ino = ino;
        __atomic_store_n(&h->attached, true, __ATOMIC_RELEASE);
}

/* Take h off c's list, with c->holds_lock held. */
static void hold_unlink(shmb_client *c, ClientHold *h) {
        if (!h->listed)
                return;
        if (h->prev)
                h->prev->next = h->next;
        else
                c->holds = h->next;
        if (h->next)
                h->next->prev = h->prev;
        h->prev = h->next = NULL;
        h->listed = false;
}

void client_hold_remove(shmb_client *c, ClientHold *h, bool give_back, bool keep_message) {
        ProtoRequest req = { .op = PROTO_OP_CLOSE };
        uint64_t asked = now_ms();
        ProtoResponse res;
        bool needed;

        /*
         * In a child of fork(2) the hold is the parent's, and so are the socket
         * and the lock's state: nothing is given back, nor the list touched
         * (the child's copy, which no call walks there: they fail first).
         */
        if (client_inherited(c))
                return;
        /*
         * A call queued ahead that held the lock for a whole bound met a hung
         * broker: nothing can be given back in time. The hold is unlisted all
         * the same (the handle's memory goes), under the list's own lock:
         * waiting for c->lock instead would queue this close behind every
         * call other threads keep making at the hung broker (a mutex is not
         * fair), each a bound long, for as long as they make them.
         */
        if (client_lock(c) < 0) {
                pthread_mutex_lock(&c->holds_lock);
                hold_unlink(c, h);
                pthread_mutex_unlock(&c->holds_lock);
                return;
        }
        /*
         * A ring or broadcast hold whose connection went away: a broker that
         * crashed and came back adopted its token and keeps it live, claims and
         * subscriber place included, for as long as this process lives, unless
         * told. Come back first, with the hold still listed, so the rejoin takes
         * the token back and the close below ends it. A broker still away ends
         * it when the process does.
         */
        if (give_back && h->listed && !h->stale && __atomic_load_n(&h->token, __ATOMIC_RELAXED) != 0 &&
            (c->state != CLIENT_AWAY || c->away_error != -ETIMEDOUT || now_ms() >= c->next_attempt_ms)) {
                /*
                 * Its own bound, from now. A refused connect costs nothing, so the backoff is
                 * kept only after a hang: a hung broker costs one close its bound, not each.
                 */
                call_begin(c);
                (void) ready(c, true, asked);
        }
        pthread_mutex_lock(&c->holds_lock);
        hold_unlink(c, h);
        needed = hold_needed(c, h->name);
        pthread_mutex_unlock(&c->holds_lock);
        /*
         * Decided and sent under one lock, so that no open or rejoin of the
         * same name comes between. A stale handle's name is another
         * channel's now: its hold, if any, is another handle's. A rejoin whose
         * open of the name is still unanswered gives that hold back itself
         * (rejoin_opened() finds no handle needing it): a close from here
         * too would be refused. Best effort: a broker that is still away
         * (see above) cannot be told.
         */
        if (give_back && !h->stale && !needed && !open_pending(c, h->name)) {
                strcpy(req.channel, h->name);
                if (call_locked(c, &req, &res, 1, CALL_NO_RECONNECT | (keep_message ? CALL_KEEP_MESSAGE : 0), NULL,
                                asked) == 0)
                        proto_response_done(&res);
        }
        pthread_mutex_unlock(&c->lock);
}

int client_open_call(shmb_client *c, ClientHold *h, const ProtoRequest *req, ProtoResponse *res, ClientFds *fds,
                     uint64_t asked) {
        int r = client_lock(c);
        bool locked = r == 0;

        if (locked)
                r = call_locked(c, req, res, 1, 0, fds, asked);
        else
                fds->n = 0;
        /*
         * Marked before c->lock goes, so that no close or rejoin of the name
         * judges h before it is granted. A refusal took no hold, and no other
         * handle left one to it: those count only granted handles (hold_in_use()).
         */
        pthread_mutex_lock(&c->holds_lock);
        if (r == 0)
                h->granted = true;
        else
                hold_unlink(c, h);
        pthread_mutex_unlock(&c->holds_lock);
        if (locked)
                pthread_mutex_unlock(&c->lock);
        return r;
}

/* ---- connecting ---- */

int client_connect(const char *socket_path, shmb_client **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *path = resolve_socket(socket_path);
        shmb_client *c;
        int r;

        /* "" names no file: as a socket address it is an abstract one, which any local user may bind. */
        if (!*path)
                return -EINVAL;
        r = strcpy_checked(sa.sun_path, sizeof sa.sun_path, path);
        if (r < 0)
                return r;
        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->refs = 1;
        c->process = client_process_nonce();
        pthread_mutex_init(&c->lock, NULL);
        pthread_mutex_init(&c->holds_lock, NULL);
        c->fd = c->event_fd = c->timer_fd = c->watched_fd = -1;
        c->backoff_ms = RECONNECT_MIN_MS;
        c->timeout_ms = TIMEOUT_DEFAULT_MS;
        c->answer_spin_us = ANSWER_SPIN_MAX_US;
        c->socket_path = strdup(path);
        if (!c->socket_path) {
                r = -ENOMEM;
                goto fail;
        }
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
                r = -errno;
                goto fail;
        }
        /* Before connect(): a broker that stopped accepting fills its backlog, and connect() waits. */
        r = set_socket_timeouts(c->fd, c->timeout_ms);
        if (r < 0)
                goto fail;
        /* A signal in a full backlog's wait is no reason to give up before the bound (nor to wait longer). */
        call_begin(c);
        while (connect(c->fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                if (errno == EISCONN)
                        break;
                if (errno == EINTR && time_left(c, true) != 0)
                        continue;
                r = errno == EAGAIN || errno == EINPROGRESS || errno == EINTR ? -ETIMEDOUT : -errno;
                goto fail;
        }
        c->unasked = true;
        *ret = c;
        return 0;
fail:
        shmb_disconnect(c);
        return r;
}

int client_check_hello(const ProtoResponse *res) {
        return res->version == PROTO_VERSION ? 0 : -EPROTO;
}

int shmb_connect(const char *socket_path, shmb_client **ret) {
        ProtoRequest hello = { .op = PROTO_OP_HELLO, .version = PROTO_VERSION };
        ProtoResponse res;
        shmb_client *c;
        int r;

        client_keep_refusal(NULL);      /* no sentence of an earlier call for a failure that has none */
        if (!ret)
                return -EINVAL;
        r = client_connect(socket_path, &c);
        if (r < 0)
                return r;
        r = client_call(c, &hello, &res);
        if (r == 0) {
                r = client_check_hello(&res);
                proto_response_done(&res);
        }
        client_keep_refusal(r < 0 ? c : NULL);
        if (r < 0) {
                shmb_disconnect(c);
                return r;
        }
        *ret = c;
        return 0;
}

void client_ref(shmb_client *c) {
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

void client_unref(shmb_client *c) {
        if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        /* Every channel held a reference: the list is empty by now (but in a child of fork(2), see client_hold_remove()). */
        if (client_inherited(c))
                c->watched_fd = -1;     /* the epoll instance is the parent's too: its set stays as it is */
        socket_close(c);
        events_close(c);
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->holds_lock);
        free(c->rbuf);
        free(c->socket_path);
        free(c);
}

void shmb_disconnect(shmb_client *c) {
        if (!c)
                return;
        /* In a child of fork(2), only the child's copy goes: the connection, its timer and epoll set are the parent's. */
        if (!client_inherited(c)) {
                pthread_mutex_lock(&c->lock);
                closed_for_good(c);
                /* The last call on c: nothing polls the event fd any more, though channels may keep c. */
                events_close(c);
                pthread_mutex_unlock(&c->lock);
        }
        client_unref(c);
}

int shmb_client_set_timeout(shmb_client *c, int timeout_ms) {
        int r = 0;

        if (!c || (timeout_ms <= 0 && timeout_ms != -1))
                return -EINVAL;
        r = client_lock(c);
        if (r < 0)
                return r;
        __atomic_store_n(&c->timeout_ms, timeout_ms, __ATOMIC_RELAXED);
        if (c->fd >= 0) {
                r = set_socket_timeouts(c->fd, timeout_ms);
                c->shortened_ms = 0;
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}

int shmb_client_fd(const shmb_client *cc) {
        /* Made on first use, so that programs that never poll pay no descriptors. Every client is
         * allocated by client_connect(), never const: the fd is a cache, as a C++ `mutable` would be. */
        shmb_client *c = (shmb_client *) cc;
        int r;

        if (!c)
                return -EINVAL;
        r = client_lock(c);
        if (r < 0)
                return r;
        if (c->state == CLIENT_CLOSED)
                r = -1;
        else {
                r = events_open(c);
                if (r == 0)
                        r = c->event_fd;
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}

/* The broker's sentence for this thread's last connection that ended at its first request (c == NULL below). */
static _Thread_local char refused_message[PROTO_MESSAGE_MAX];

void client_keep_refusal(const shmb_client *c) {
        snprintf(refused_message, sizeof refused_message, "%s", c ? c->last_message : "");
}

const char *shmb_client_last_message(const shmb_client *c) {
        return c ? c->last_message : refused_message;
}
