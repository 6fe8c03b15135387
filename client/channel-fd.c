/*
 * shmb_channel_fd(): waiting for a ring in an event loop.
 *
 * Futexes cannot be polled, so the broker gives each ring two named FIFOs
 * (named in the open answer; daemon/wake.h): one that a receiver waits on
 * ("a message may be there") and one for a sender ("a slot may be free").
 * A caller that asked for an fd and is about to get -EAGAIN on one side
 * empties that side's FIFO, raises RING_SLEEP_FD in the side's sleeping
 * flag and looks at the ring once more (ring.c); a publisher or freer that
 * finds the bit takes it with the flag (one exchange, as for a futex
 * sleeper) and writes one byte. So a FIFO costs nothing while nobody polls
 * it, one write per wait when someone does, and the flag that the fast
 * path already reads is the only thing it looks at.
 *
 * The fd handed out is an epoll instance watching the FIFO of the side that
 * last returned -EAGAIN: its number stays the same when a handle turns
 * from receiving to sending. Until the first -EAGAIN it watches an eventfd
 * that stays readable, so a loop that waits before trying does not wait
 * for ever.
 *
 * Several waiters share a FIFO; one that empties it and then finds the ring
 * changed passes the wake-up on (channel_wake_pass_on()), so emptying it
 * never swallows another waiter's.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"
#include "common/util.h"
#include "proto/broadcast.h"

int channel_wake_new(shmb_channel *ch, char *paths[2]) {
        ChannelWake *w = calloc(1, sizeof *w);

        if (!w) {
                free(paths[0]);
                free(paths[1]);
                return -ENOMEM;
        }
        pthread_mutex_init(&w->lock, NULL);
        for (unsigned i = 0; i < WAKE_FIFOS; i++) {
                w->path[i] = i < 2 ? paths[i] : NULL;
                w->fd[i] = -1;
        }
        w->own_index = UINT32_MAX;
        w->poll_fd = w->kick_fd = w->timer_fd = w->poll_dir = -1;
        ch->wake = w;
        return 0;
}

/* A wake-up FIFO, not whatever else a path or a descriptor may lead to. */
static bool is_fifo(int fd) {
        struct stat st;

        return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

int channel_wake_take_fds(shmb_channel *ch, int data, int space) {
        ChannelWake *w = ch->wake;
        int fd[2] = { data, space }, r = 0;

        for (unsigned i = 0; i < 2 && r == 0; i++)
                if (!is_fifo(fd[i]))
                        r = -EPROTO;
        if (r < 0) {
                close(data);
                close(space);
                return r;
        }
        /* Before anyone can call shmb_channel_fd(): the handle is not returned yet. Replaces what a path gave. */
        for (unsigned i = 0; i < 2; i++) {
                if (w->fd[i] >= 0)
                        close(w->fd[i]);
                w->fd[i] = fd[i];
        }
        return 0;
}

void channel_wake_free(shmb_channel *ch) {
        ChannelWake *w = ch->wake;

        if (!w)
                return;
        for (unsigned i = 0; i < WAKE_FIFOS; i++) {
                if (w->fd[i] >= 0)
                        close(w->fd[i]);
                free(w->path[i]);
        }
        if (w->poll_fd >= 0)
                close(w->poll_fd);
        if (w->kick_fd >= 0)
                close(w->kick_fd);
        if (w->timer_fd >= 0)
                close(w->timer_fd);
        pthread_mutex_destroy(&w->lock);
        free(w);
        ch->wake = NULL;
}

/*
 * Open side dir's FIFO, under the lock. Read and write: a waiter reads it,
 * a waker writes it, and a FIFO open for both never blocks or reports a
 * missing peer. A FIFO, not whatever else a path may lead to.
 */
/* A FIFO at path, read and write: its descriptor, or -errno (-EPROTO: not a FIFO). */
static int open_fifo_at(const char *path) {
        int fd = open(path, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        if (!is_fifo(fd)) {
                close(fd);
                return -EPROTO;
        }
        return fd;
}

static int open_fifo(ChannelWake *w, unsigned dir) {
        int fd;

        if (w->fd[dir] >= 0)
                return 0;
        if (!w->path[dir])
                return -ENOENT;
        fd = open_fifo_at(w->path[dir]);
        if (fd < 0)
                return fd;
        __atomic_store_n(&w->fd[dir], fd, __ATOMIC_RELEASE);
        return 0;
}

void channel_wake_signal(shmb_channel *ch, unsigned dir, uint32_t *sleeping) {
        ChannelWake *w = ch->wake;
        int fd;

        if (!w)
                goto cannot;
        fd = __atomic_load_n(&w->fd[dir], __ATOMIC_ACQUIRE);
        if (fd < 0) {
                pthread_mutex_lock(&w->lock);
                if (!w->unusable[dir] && open_fifo(w, dir) < 0)
                        w->unusable[dir] = true;
                fd = w->fd[dir];
                pthread_mutex_unlock(&w->lock);
                if (fd < 0)
                        goto cannot;
        }
        /* EAGAIN: the FIFO is full of wake-ups already, as good as one more. */
        (void) write(fd, "", 1);
        return;
cannot:
        /* Leave the bit for a waker that can reach the FIFO. */
        __atomic_fetch_or(sleeping, (uint32_t) RING_SLEEP_FD, __ATOMIC_SEQ_CST);
}

/* Empty the FIFO; a short read means it is empty, which saves the read that would say EAGAIN. */
static void drain(int fd) {
        char buf[64];

        while (read(fd, buf, sizeof buf) == (ssize_t) sizeof buf)
                ;
}

int channel_wake_arm(shmb_channel *ch, unsigned dir, uint32_t *ret_own) {
        ChannelWake *w = ch->wake;
        int r = 0;

        if (!w || __atomic_load_n(&w->poll_fd, __ATOMIC_ACQUIRE) < 0)
                return -EAGAIN;
        pthread_mutex_lock(&w->lock);
        /* A subscriber's own FIFO that went meanwhile (another cursor, none opened yet): the channel's. */
        if (dir == WAKE_OWN && w->fd[WAKE_OWN] < 0)
                dir = WAKE_DATA;
        if (w->poll_dir != (int) dir) {
                struct epoll_event ev = { .events = EPOLLIN };

                /* shmb_channel_fd() opened both. */
                if (w->poll_dir >= 0)
                        (void) epoll_ctl(w->poll_fd, EPOLL_CTL_DEL, w->fd[w->poll_dir], NULL);
                if (epoll_ctl(w->poll_fd, EPOLL_CTL_ADD, w->fd[dir], &ev) < 0)
                        r = -errno;
                else {
                        w->poll_dir = (int) dir;
                        if (w->kick_fd >= 0) {
                                (void) epoll_ctl(w->poll_fd, EPOLL_CTL_DEL, w->kick_fd, NULL);
                                close(w->kick_fd);
                                w->kick_fd = -1;
                        }
                }
        }
        if (r == 0) {
                int64_t now = client_now_ns(), bound = (int64_t) w->bound_ms * 1000000;

                drain(w->fd[dir]);
                /*
                 * Bounded as a sleeping call is: the flag just raised may be cleared by
                 * anyone who may write it (for a broadcast channel, anyone who may
                 * subscribe), and nobody writes the FIFOs of objects removed while the
                 * broker was away. The timer is set again (which also takes back an
                 * expiry) only once half of it has run: a system call on every arming
                 * cost a same-CPU round trip through the fd 0.7 us (2.36 -> 3.04 us).
                 */
                if (now >= w->timer_end_ns - bound / 2) {
                        struct itimerspec its = { .it_value = { .tv_sec = w->bound_ms / 1000,
                                                                .tv_nsec = (long) (w->bound_ms % 1000) * 1000000 } };

                        (void) timerfd_settime(w->timer_fd, 0, &its, NULL);
                        w->timer_end_ns = now + bound;
                }
        }
        /* Under the lock: the cursor whose FIFO this is, whatever another thread makes it next. */
        if (ret_own)
                *ret_own = w->own_index;
        pthread_mutex_unlock(&w->lock);
        /*
         * As a sleeping call does once a bound: whether the objects are still there. Gone, the
         * handle says so from now on (channel_gone()), and the caller's look after arming sees it.
         */
        if (r == 0)
                (void) channel_check_gone_every(ch, (int) w->bound_ms);
        return r < 0 ? r : (int) dir;
}

void channel_wake_pass_on(shmb_channel *ch, unsigned dir) {
        (void) write(ch->wake->fd[dir], "", 1);
}

/* Cursor index's own FIFO: the channel's data FIFO's path, a dot and the index (proto/broadcast.h). */
static int own_fifo_path(const ChannelWake *w, uint32_t index, char *buf, size_t size) {
        int k = snprintf(buf, size, "%s.%" PRIu32, w->path[WAKE_DATA], index);

        return k < 0 || (size_t) k >= size ? -ENAMETOOLONG : 0;
}

void channel_wake_set_own(shmb_channel *ch, uint32_t index) {
        ChannelWake *w = ch->wake;
        char buf[PATH_MAX], *path = NULL;
        int fd;

        if (!w || __atomic_load_n(&w->own_index, __ATOMIC_ACQUIRE) == index)
                return;
        pthread_mutex_lock(&w->lock);
        if (index != UINT32_MAX && own_fifo_path(w, index, buf, sizeof buf) == 0)
                path = strdup(buf);
        fd = w->fd[WAKE_OWN];
        if (fd >= 0) {
                /* The fd stops watching the old one: the next wait points it at the new one. */
                if (w->poll_dir == WAKE_OWN) {
                        (void) epoll_ctl(w->poll_fd, EPOLL_CTL_DEL, fd, NULL);
                        w->poll_dir = -1;
                }
                __atomic_store_n(&w->fd[WAKE_OWN], -1, __ATOMIC_RELEASE);
                close(fd);
        }
        free(w->path[WAKE_OWN]);
        w->path[WAKE_OWN] = path;
        /* Opened now if an fd was asked for already: a wait never opens a file. Not there: it waits on the channel's. */
        if (path && w->poll_fd >= 0)
                (void) open_fifo(w, WAKE_OWN);
        __atomic_store_n(&w->own_index, index, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&w->lock);
}

bool channel_wake_signal_sub(shmb_channel *ch, uint32_t index) {
        ChannelWake *w = ch->wake;
        char path[PATH_MAX];
        int fd;

        /* The data FIFO's path is set at open and never changes: read without the lock. */
        if (!w || own_fifo_path(w, index, path, sizeof path) < 0)
                return false;
        /*
         * Opened for each wake-up, not kept: a publisher would hold one
         * descriptor per waiting subscriber, hundreds, which its program
         * never asked for. Read and write, as the others: the open neither
         * blocks nor fails for want of a reader.
         */
        fd = open_fifo_at(path);
        if (fd < 0)
                return false;
        /* EAGAIN: full of wake-ups already. */
        (void) write(fd, "", 1);
        close(fd);
        return true;
}

int shmb_channel_fd(shmb_channel *ch) {
        ChannelWake *w;
        struct epoll_event ev = { .events = EPOLLIN };
        int r = 0;

        if (!ch)
                return -EINVAL;
#ifdef SHMB_NO_CHANNEL_FD
        return -EOPNOTSUPP;     /* the bench's build without fd waiters */
#endif
        if (!ch->ring && !ch->bcast)
                return -ENOTSUP;
        /* A ring's receivers move shared positions too; a broadcast subscriber is ro and waits for data. */
        if (ch->ring && ch->access == SHMB_RO)
                return -EACCES;
        w = ch->wake;
        if (!w)
                return -EOPNOTSUPP;
        pthread_mutex_lock(&w->lock);
        if (w->poll_fd >= 0)
                goto done;
        /*
         * A removed channel's FIFOs went with it, or their names are its
         * replacement's: say what every other call on the handle says, not
         * -ENOENT, which would read as a broker directory out of sight.
         */
        if (channel_check_gone(ch) == -EIDRM) {
                r = -EIDRM;
                goto done;
        }
        /* Both now: a FIFO we cannot open is this call's error, not a wait that never ends. */
        for (unsigned i = 0; i < 2 && r == 0; i++)
                r = open_fifo(w, i);
        if (r < 0) {
                if (channel_check_gone(ch) == -EIDRM)
                        r = -EIDRM;     /* removed while we opened them */
                goto done;
        }
        /* A subscriber's own: without it (its name is out of reach) it waits on the channel's. */
        if (w->path[WAKE_OWN])
                (void) open_fifo(w, WAKE_OWN);
        w->kick_fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
        w->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (w->kick_fd < 0 || w->timer_fd < 0) {
                r = -errno;
                goto done;
        }
        w->bound_ms = ch->bcast ? BCAST_POLL_MS : RING_GONE_POLL_MS;
        r = epoll_create1(EPOLL_CLOEXEC);
        if (r < 0) {
                r = -errno;
                goto done;
        }
        if (epoll_ctl(r, EPOLL_CTL_ADD, w->kick_fd, &ev) < 0 || epoll_ctl(r, EPOLL_CTL_ADD, w->timer_fd, &ev) < 0) {
                int err = -errno;

                close(r);
                r = err;
                goto done;
        }
        __atomic_store_n(&w->poll_fd, r, __ATOMIC_RELEASE);
        r = 0;
done:
        if (r < 0 && w->kick_fd >= 0) {
                close(w->kick_fd);
                w->kick_fd = -1;
        }
        if (r < 0 && w->timer_fd >= 0) {
                close(w->timer_fd);
                w->timer_fd = -1;
        }
        pthread_mutex_unlock(&w->lock);
        return r < 0 ? r : w->poll_fd;
}
