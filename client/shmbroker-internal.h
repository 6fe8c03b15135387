#pragma once

/* Private structures of libshmbroker, shared by its source files. */

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "client/include/shmbroker/shmbroker.h"
#include "proto/proto.h"
#include "proto/ring.h"

/* Tokens a handle keeps from broker restarts that could not give its own back (ClientHold.old_tokens). */
#define HOLD_OLD_TOKENS 8

/*
 * A handle's entry in its connection's list of open channels: what the
 * library opens again when it reconnects after a broker restart (client.c).
 * Every field is under the client's lock, but the ids and attached,
 * which client_hold_attached() publishes without it, token, and the links
 * (prev, next, listed), which are under the list's own holds_lock.
 */
typedef struct ClientHold {
        struct ClientHold *prev, *next; /* newest first */
        bool listed;
        char name[PROTO_NAME_MAX + 1];
        shmb_access access;
        ProtoKind kind;                 /* what the handle attached: */
        int shm_id, sem_id;             /* System V: the ids */
        dev_t dev;                      /* posix: the segment file's device and inode */
        ino_t ino;
        bool granted;                   /* the broker answered its open ok: it shares the name's hold; under holds_lock */
        bool attached;                  /* the ids are known: its open finished; atomic, set after them (release) */
        bool stale;                     /* the broker's channel of that name is another one now */
        bool gone;                      /* stale, or a wait found its objects removed (channel_gone()); atomic */
        uint32_t token;                 /* a ring's holder token (proto/ring.h); read by the ring without the lock */
        /*
         * The tokens rejoins replaced, the last HOLD_OLD_TOKENS of them (0:
         * none): a broker that could not hand one back keeps its entry live,
         * and the claims made under it stay ours. n_old counts the rejoins
         * that replaced one; the next goes to old_tokens[n_old % HOLD_OLD_TOKENS].
         */
        uint32_t old_tokens[HOLD_OLD_TOKENS];
        uint32_t n_old;
} ClientHold;

/* Where a connection stands (client.c has the transitions). */
typedef enum ClientState {
        CLIENT_UP,                      /* connected */
        CLIENT_REJOINING,               /* connected again; hello and re-opens sent, answers due */
        CLIENT_AWAY,                    /* the broker went away: try again at next_attempt_ms */
        CLIENT_CLOSED,                  /* shmb_disconnect() or a broken stream: for good */
} ClientState;

/*
 * Descriptors an answer line carried (SCM_RIGHTS; a posix open with "fd":
 * true). Whoever takes them closes them.
 */
typedef struct ClientFds {
        int fd[PROTO_FDS_MAX];
        unsigned n;
} ClientFds;

/* A descriptor that came with answer bytes, not yet handed out with its line. */
typedef struct PendingFd {
        int fd;
        size_t end;                     /* the offset in rbuf of the last byte that came with it */
} PendingFd;

/* A request of a rejoin whose answer is still due. */
typedef struct RejoinStep {
        ProtoOp op;                     /* hello, open or close */
        char channel[PROTO_NAME_MAX + 1];
} RejoinStep;

struct shmb_client {
        int fd;                         /* the socket; -1 unless UP or REJOINING */
        unsigned refs;                  /* the caller's, plus one per open channel */
        uint64_t process;               /* client_process_nonce() of its maker: in a child of fork(2), nothing is ours */
        pthread_mutex_t lock;           /* one request/response at a time; everything below */
        /*
         * The links of `holds`, taken inside `lock` and never across a wait:
         * a close that waited its bound for `lock` (other threads' calls at a
         * hung broker hold it, call after call) unlinks its hold with this
         * alone, so it costs that bound and no more.
         */
        pthread_mutex_t holds_lock;
        char *rbuf;                     /* bytes read past the last answer */
        size_t rlen, rcap;
        PendingFd *pending_fds;         /* received with bytes of rbuf, in order */
        size_t n_pending_fds;
        char last_message[PROTO_MESSAGE_MAX];
        ClientState state;
        bool unasked;                   /* UP, and nothing asked on this socket yet */
        int timeout_ms;                 /* a call's bound on waiting for the broker; -1: none */
        uint64_t deadline_ms;           /* the current call's, CLOCK_MONOTONIC; 0: none */
        int shortened_ms;               /* both socket timeouts, when a call shortened them below timeout_ms; else 0 */
        unsigned answer_spin_us;        /* how long read_line() looks for an answer before it sleeps (adapts) */
        char *socket_path;              /* resolved at connect: where the broker comes back */
        ClientHold *holds;              /* the channels open on this connection */
        /* AWAY */
        int away_error;                 /* what shmb_client_process() says meanwhile */
        uint64_t hung_ms;               /* when an exchange or attempt last timed out */
        uint64_t next_attempt_ms;       /* CLOCK_MONOTONIC */
        unsigned backoff_ms;
        /* REJOINING: requests not yet written, answers not yet read */
        char *wbuf;
        size_t wlen, woff;
        RejoinStep *steps;
        size_t n_steps, steps_done;
        /* shmb_client_fd(): made on first use */
        int event_fd, timer_fd;
        int watched_fd;                 /* the socket as event_fd watches it, or -1 */
        uint32_t watched_events;
};

/* The two sides a ring waiter waits for, and the order of its wake-up FIFOs. */
enum {
        WAKE_DATA,              /* a receiver: a message may be there */
        WAKE_SPACE,             /* a sender: a slot may be free */
        WAKE_OWN,               /* a broadcast subscriber: a message may be there, on its own FIFO */
        WAKE_FIFOS,
};

/*
 * A ring's wake-up FIFOs (proto/ring.h RING_SLEEP_FD; channel-fd.c), made
 * at open when the broker names them. Everything here is for the slow
 * path: a waker that found RING_SLEEP_FD raised, or a caller of
 * shmb_channel_fd() about to wait.
 */
typedef struct ChannelWake {
        pthread_mutex_t lock;           /* over the fields below but fd[] reads */
        char *path[WAKE_FIFOS];         /* WAKE_OWN's: NULL but for a subscriber with a cursor */
        int fd[WAKE_FIFOS];             /* opened on first need (atomic loads); -1: not yet */
        bool unusable[2];               /* a waker's open of WAKE_DATA or WAKE_SPACE failed: not on every message */
        uint32_t own_index;             /* the cursor whose FIFO path[WAKE_OWN] is */
        int poll_fd;                    /* the epoll instance shmb_channel_fd() hands out; -1: none yet */
        int kick_fd;                    /* an eventfd keeping poll_fd readable until the first wait */
        int timer_fd;                   /* a timerfd bounding each wait on poll_fd (channel_wake_arm()) */
        int poll_dir;                   /* the FIFO poll_fd watches: WAKE_*; -1: none yet */
        unsigned bound_ms;              /* how long a wait on poll_fd lasts at most: a sleeping call's bound */
        int64_t timer_end_ns;           /* when timer_fd, as last set, expires */
} ChannelWake;

/* A sleeping ring call asks the kernel at least this often whether its objects are still there (ring.c). */
#define RING_GONE_POLL_MS 1000

/* What the broker's open answer said about a channel (shmb_channel_name() and the other getters). */
typedef struct ChannelInfo {
        char name[PROTO_NAME_MAX + 1];
        ProtoKind kind;
        char shm_name[PROTO_POSIX_NAME_MAX + 1];        /* posix only; "" for System V */
        shmb_layout layout;
        uint64_t size;                  /* segment bytes */
        unsigned set_nsems;             /* the kernel's set, the layout's own semaphores included (the wire's nsems) */
        unsigned nsems;                 /* the caller's: set_nsems less the layout's own */
        uint32_t shm_key, sem_key;
        int shm_id, sem_id;
        uint32_t slot_size, slots;      /* ring only */
} ChannelInfo;

struct shmb_channel {
        shmb_client *client;
        ClientHold hold;                /* on client->holds while open */
        ChannelInfo info;
        shmb_access access;
        void *addr;
        unsigned sem_base;              /* the layout's own semaphores come first: user index 0 is this one */
        unsigned spin_us;               /* shmb_channel_set_spin() */
        uint32_t spin_budget_ns;        /* adapts within it */
        uint32_t ops;                   /* ring operations, to publish our CPU now and then */
        int64_t gone_checked_ns;        /* when a wait last asked the kernel for the objects (channel_check_gone()) */
        /* ring only */
        ChannelWake *wake;              /* NULL: the broker named no FIFOs */
        RingHeader *ring;
        char *slots;
        uint64_t stride;
        uint64_t ahead;                 /* bytes from a sender's slot to the one it prefetches; 0: none */
        /* broadcast only (client/broadcast.c) */
        struct BcastHandle *bcast;
        /*
         * Ring and broadcast publisher: the zero-copy claims this handle left
         * open (zc_note()), so that its close can end them; NULL until its
         * first reserve or peek.
         */
        uint64_t *zc_claims;
        /* posix only (client/posix-map.c): the objects come as descriptors, not ids */
        int shm_fd;                     /* the segment's, kept: its identity and link count; -1: none */
        int table_fd;                   /* a broadcast table's, until bcast_channel_setup() maps it; -1: none */
        struct PosixSemFile **psems;    /* set_nsems mapped semaphore files (NULL entries: not mapped) */
        const struct RingHolder *lock_table; /* a raw channel's lock holder table, PROT_READ; NULL: none */
};

/*
 * Send one request and decode its answer. Returns 0 with *ret filled (free
 * with proto_response_done()), the broker's refusal as a negative errno
 * (its message kept in c->last_message), or a socket/protocol error.
 */
int client_call(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret);

/* The same for n requests sent in one write (pipelined), answers in order. */
int client_call_n(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n);

/*
 * client_call_n() that also hands out the descriptors each answer line
 * carried: fds[i] for answer i (fds may be NULL: then none are wanted).
 * On success the caller owns and closes them; on failure none are left
 * open. Descriptors of lines nobody wants, or past PROTO_FDS_MAX, are
 * closed as they are read, never leaked.
 */
int client_call_fds(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n, ClientFds *fds);

/* Close what fds holds; n becomes 0. */
void client_fds_close(ClientFds *fds);

/*
 * client_call() that leaves c->last_message as it was: for the close that
 * gives back the hold of a failed open, so the caller still reads why the
 * open failed.
 */
int client_call_keep_message(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret);

/*
 * Take c->lock, waiting for a call in flight at most its bound (the
 * connection's timeout): 0, or -ETIMEDOUT without the lock; -ECHILD in a
 * child of fork(2) (client_inherited()).
 */
int client_lock(shmb_client *c);

/* CLOCK_MONOTONIC in nanoseconds (vDSO: 20-40 ns under KVM): the clock of every wait's deadline. */
static inline int64_t client_now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Now, for a call's `asked` (client_open_call()): taken before it first waits for the lock. */
uint64_t client_now_ms(void);

/* Where this thread runs, plus 1 (0: not known): the value of the spinning hints (send_cpu, pub_cpu). */
static inline uint32_t channel_cpu(void) {
        int cpu = sched_getcpu();       /* vDSO: no system call */

        return cpu < 0 ? 0 : (uint32_t) cpu + 1;
}

/*
 * Publish channel_cpu() in *cpu_word, as a hint for peers deciding whether
 * to spin; written only when it moved, as the line is shared. Returns it.
 * Written out, not a call of channel_cpu(): gcc 12 then allocated the
 * ring's wait_slot() differently, and its machine code is benchmarked.
 */
static inline unsigned channel_note_cpu(uint32_t *cpu_word) {
        int cpu = sched_getcpu();
        uint32_t v = cpu < 0 ? 0 : (uint32_t) cpu + 1;

        if (v && __atomic_load_n(cpu_word, __ATOMIC_RELAXED) != v)
                __atomic_store_n(cpu_word, v, __ATOMIC_RELAXED);
        return v;
}

/*
 * Count an operation of ch, to publish its CPU now and then. Not a
 * read-modify-write: on x86 that is a locked instruction, which waits for
 * this message's stores to reach the cache, a cross-core miss for the
 * slot's header; 4 KiB ran 10% slower with it. Threads racing on one
 * handle may lose a count, which only delays a CPU hint.
 */
static inline uint32_t channel_count_op(shmb_channel *ch) {
        uint32_t n = __atomic_load_n(&ch->ops, __ATOMIC_RELAXED) + 1;

        __atomic_store_n(&ch->ops, n, __ATOMIC_RELAXED);
        return n;
}

/*
 * A number that names this process among those that share its memory's
 * past: a child of fork(2) gets another than its parent's (client/process.c).
 * Never 0. Thread-safe; one load once the process has one.
 */
uint64_t client_process_nonce(void);

/*
 * Whether c was made by another process than this one: a child of fork(2)
 * shares the parent's socket, epoll instance and timer, and its copy of
 * the lock may be held for ever. Its broker calls fail with -ECHILD; its
 * closes give nothing back. false for NULL.
 */
static inline bool client_inherited(const shmb_client *c) {
        return c && client_process_nonce() != c->process;
}

/* A ring or broadcast handle's holder token: read without the lock, as a rejoin may replace it. */
static inline uint32_t channel_token(const shmb_channel *ch) {
        return __atomic_load_n(&ch->hold.token, __ATOMIC_RELAXED);
}

/*
 * Whether a claim's token is ch's: its token, or one a rejoin replaced
 * (claims made before it). Lock-free: the replaced ones are read after the
 * token that replaced them, which rejoin_opened() stores (releases) after
 * them.
 */
static inline bool channel_token_is_mine(const shmb_channel *ch, uint32_t token) {
        if (token == channel_token(ch))
                return true;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        for (unsigned k = 0; token != 0 && k < HOLD_OLD_TOKENS; k++)
                if (token == __atomic_load_n(&ch->hold.old_tokens[k], __ATOMIC_RELAXED))
                        return true;
        return false;
}

/* Connect without the hello round trip; the caller sends one (pipelined). */
int client_connect(const char *socket_path, shmb_client **ret);
int client_check_hello(const ProtoResponse *res);

void client_ref(shmb_client *c);
void client_unref(shmb_client *c);

/*
 * Keep c's last message (a connection about to be freed, whose first
 * request was refused) for shmb_client_last_message(NULL) in this
 * thread; NULL: a connection that succeeded, which clears it.
 */
void client_keep_refusal(const shmb_client *c);

/*
 * The list of channels open on a connection. A handle is listed before its
 * open request is sent, marked granted once the broker answered it ok (a
 * reconnection from then on opens the name again for it) and attached,
 * with its ids, once the open succeeded.
 * client_hold_add() returns -ETIMEDOUT when a call queued ahead held
 * the lock past the bound (client_lock()).
 * client_hold_remove() unlists it; give_back: also close its hold at the
 * broker, unless the handle is stale or another live handle of the same
 * name on this connection still needs the hold (the broker keeps one hold
 * per connection and channel). It never reconnects for that: a broker that
 * went away dropped the hold already. keep_message as for
 * client_call_keep_message().
 */
int client_hold_add(shmb_client *c, ClientHold *h, const char *name, shmb_access access);
/*
 * The open of listed handle h (req: client_open_request()'s), as
 * client_call_fds(), its bound from `asked`. Granted, h shares the name's
 * hold from then on, marked so before any other call can look; refused (or
 * failed), h is unlisted.
 */
int client_open_call(shmb_client *c, ClientHold *h, const ProtoRequest *req, ProtoResponse *res, ClientFds *fds,
                     uint64_t asked);
void client_hold_attached(ClientHold *h, ProtoKind kind, int shm_id, int sem_id, dev_t dev, ino_t ino);
void client_hold_remove(shmb_client *c, ClientHold *h, bool give_back, bool keep_message);

/*
 * Whether every call on ch says -EIDRM without asking the kernel: its
 * handle went stale at a rejoin (client.c sets gone with stale), or a wait
 * found its objects removed. One relaxed load, on every call of the fast
 * path: a flag that only ever goes up, seen at the latest by the next poll
 * of a sleeper. Any thread.
 */
static inline bool channel_gone(const shmb_channel *ch) {
        return __atomic_load_n(&ch->hold.gone, __ATOMIC_RELAXED);
}

/*
 * For a wait whose poll ran out: whether ch's objects were removed while
 * nobody could mark them (an ipcrm or rm while the broker was away), as
 * shmb_channel_check() asks the kernel. -EIDRM (and channel_gone() from
 * then on) or 0. One system call.
 */
int channel_check_gone(shmb_channel *ch);

/*
 * For a wait that ran out at its caller's deadline: channel_check_gone()
 * when bound_ms or more have passed since a wait of ch last asked, else 0.
 * A caller that waits in slices no longer than the poll (the Python binding
 * waits a second at a time) learns of removed objects too, and a caller
 * that polls with short timeouts asks once a bound, not at every timeout.
 */
static inline int channel_check_gone_every(shmb_channel *ch, int bound_ms) {
        if (client_now_ns() - __atomic_load_n(&ch->gone_checked_ns, __ATOMIC_RELAXED) < (int64_t) bound_ms * 1000000)
                return 0;
        return channel_check_gone(ch);
}

/*
 * The outcome of a sleeping wait on ch that ended with r, where
 * poll_ran_out says that only the library's poll ended it, not the caller's
 * deadline. Nobody marks a channel removed while the broker was away (an
 * ipcrm or rm after a crash), so a poll that ran out asks the kernel
 * (channel_check_gone()); so does a wait that ran out at the caller's
 * deadline, or that a signal interrupted, once a bound_ms (a caller waiting
 * in shorter slices, or signalled more often, never sees a poll run out).
 * Returns -EIDRM or another error of that look, else r.
 */
static inline int channel_after_wait(shmb_channel *ch, int r, bool poll_ran_out, int bound_ms) {
        int k;

        if (poll_ran_out)
                return channel_check_gone(ch);
        if (r != -ETIMEDOUT && r != -EINTR)
                return r;
        k = channel_check_gone_every(ch, bound_ms);
        return k < 0 ? k : r;
}

/* The open request for name with access (-EINVAL for a bad name or access): shmb_open()'s, and a rejoin's. */
int client_open_request(const char *name, shmb_access access, ProtoRequest *ret);

/* A sentence for shmb_client_last_message(), written under the client's lock. */
__attribute__((format(printf, 2, 3))) void client_set_message(shmb_client *c, const char *fmt, ...);

/*
 * posix-map.c: map what a posix open answer pc handed over (fds, in the
 * order of proto/posix.h) into ch: the segment at ch->addr, the semaphore
 * files at ch->psems, a raw channel's lock holder table at
 * ch->lock_table; the descriptors it keeps (the segment's, a broadcast
 * table's) are taken out of fds (-1 there), the caller closes the rest. On failure the caller still calls posix_unmap().
 */
int posix_map(shmb_channel *ch, const ProtoChannel *pc, ClientFds *fds);
void posix_unmap(shmb_channel *ch);
/* Whether the segment's file was unlinked (the broker removed the channel). */
bool posix_removed(const shmb_channel *ch);

/* posix-sem.c: shmb_sem_*() and shmb_lock() on a posix channel's semaphore files; idx is the set's index. */
int posix_sem_wait(shmb_channel *ch, unsigned idx, int timeout_ms);
int posix_sem_post(shmb_channel *ch, unsigned idx);
int posix_lock(shmb_channel *ch, unsigned idx, int timeout_ms);
int posix_unlock(shmb_channel *ch, unsigned idx);

/* channel-fd.c: the wake-up FIFOs. paths are taken (freed on failure too). */
int channel_wake_new(shmb_channel *ch, char *paths[2]);
/* The FIFOs as the broker handed them over (a posix channel's): used instead of the paths. Takes both fds. */
int channel_wake_take_fds(shmb_channel *ch, int data, int space);
void channel_wake_free(shmb_channel *ch);
/* A waker found RING_SLEEP_FD in sleeping: write the FIFO of side dir. */
void channel_wake_signal(shmb_channel *ch, unsigned dir, uint32_t *sleeping);
/*
 * A caller of shmb_channel_fd() is about to get -EAGAIN on side dir: point
 * the fd at that side's FIFO and empty it. Then the caller raises
 * RING_SLEEP_FD and looks once more. Returns the side it armed (WAKE_OWN
 * may turn into WAKE_DATA, when the subscriber has no FIFO of its own), or
 * -EAGAIN when nobody asked for an fd (the plain -EAGAIN); *ret_own (if
 * given) is the cursor whose FIFO WAKE_OWN was. Also sets the fd's timer to
 * the wait's bound and, once a bound, asks the kernel whether the objects
 * are still there (channel_check_gone()), as a sleeping call does.
 */
int channel_wake_arm(shmb_channel *ch, unsigned dir, uint32_t *ret_own);
/* The caller armed, then found the slot changed: pass the wake-up on to other waiters. */
void channel_wake_pass_on(shmb_channel *ch, unsigned dir);
/*
 * A broadcast subscriber's cursor is index now (UINT32_MAX: it has none):
 * its own FIFO (WAKE_OWN) is that cursor's. Without one it can open, its
 * waits arm the channel's (channel_wake_arm()).
 */
void channel_wake_set_own(shmb_channel *ch, uint32_t index);
/*
 * A publisher took RING_SLEEP_FD from cursor index's flag: write that
 * subscriber's FIFO. false: it cannot be reached from here (the caller
 * leaves the bit for a waker that can).
 */
bool channel_wake_signal_sub(shmb_channel *ch, uint32_t index);

/*
 * How many semaphores at the start of a channel's set its layout keeps for
 * itself (a ring's RING_NSEMS; none for raw): the library's semaphore
 * indices, and its nsems, leave them out everywhere (open and status).
 */
unsigned layout_reserved_nsems(ProtoLayout layout);

/* The public layout of a wire layout. */
shmb_layout layout_from_proto(ProtoLayout layout);

/*
 * Point ch's ring fields (ring, slots, stride, info.slot_size, info.slots,
 * the default spin) at the ring whose header is at addr, with size bytes
 * mapped there. Checks that the header is of the RING_VERSION this library
 * speaks (-EPROTO otherwise) and that it describes exactly size bytes
 * (-EPROTO). addr stays the caller's; the caller sets ch->access. Used by
 * shmb_open() and by the ring tests over a buffer of their own.
 */
int ring_channel_init(shmb_channel *ch, void *addr, uint64_t size);

/* The slot a sender that just claimed slot prefetches for writing (client/prefetch.h), or NULL for none. */
const void *ring_prefetch_target(const shmb_channel *ch, const void *slot);

/*
 * A handle's open zero-copy claims (ch->zc_claims), kept so that its close
 * can end them. The broker ends a closed handle's claims by marking its
 * token dead, but only when the close gives the hold back: another handle
 * of the channel on the same connection shares the hold and its token, and
 * a claim the closed handle left would then stall the ring for everyone
 * until the process exits.
 *
 * One word per entry ((pos + 1) << 1 | recv; 0: none) at pos & zc_mask():
 * the table has the slots rounded up to a power of two entries, so a mask,
 * not a division, finds the entry on every message; a handle's live claims
 * all lie within one lap of slots positions, so no two share an entry.
 * Written only by the thread that made or ends the claim; the next claim
 * of the slot comes after the end (through seq), so plain loads and stores
 * do, and an end clears only its own position's word.
 *
 * zc_note() records the claim of pos (recv: a peek, else a reserve) once
 * made, zc_forget() drops it before the call that ends it (commit, abort,
 * release) finishes it.
 */
static inline uint64_t zc_mask(const shmb_channel *ch) {
        uint64_t n = ch->info.slots;

        return n < 2 ? 1 : (UINT64_C(2) << (63 - __builtin_clzll(n - 1))) - 1;
}

static inline uint64_t zc_word(uint64_t pos, bool recv) {
        return (pos + 1) << 1 | (uint64_t) recv;
}

/* ch->zc_claims made (or another thread's, made first); NULL when out of memory. */
__attribute__((cold)) uint64_t *zc_table_new(shmb_channel *ch);

static inline void zc_note(shmb_channel *ch, uint64_t pos, bool recv) {
        uint64_t *t = __atomic_load_n(&ch->zc_claims, __ATOMIC_ACQUIRE);

        if (__builtin_expect(!t, 0) && !(t = zc_table_new(ch)))
                return;
        __atomic_store_n(&t[pos & zc_mask(ch)], zc_word(pos, recv), __ATOMIC_RELAXED);
}

static inline void zc_forget(shmb_channel *ch, uint64_t pos, bool recv) {
        uint64_t *t = __atomic_load_n(&ch->zc_claims, __ATOMIC_ACQUIRE), *w;

        if (!t)
                return;
        w = &t[pos & zc_mask(ch)];
        if (__atomic_load_n(w, __ATOMIC_RELAXED) == zc_word(pos, recv))
                __atomic_store_n(w, 0, __ATOMIC_RELAXED);
}

/* Call end() for each claim ch's records hold (ring and broadcast closes end them so). */
void zc_end_claims(shmb_channel *ch, void (*end)(shmb_channel *ch, uint64_t pos, bool recv));

/*
 * End the claims a ring handle left open (abort a reservation, release a
 * peek), unless the handle is a fork(2) child's copy or the ring is gone;
 * nothing for another handle.
 */
void ring_end_left_claims(shmb_channel *ch);

/* ---- broadcast channels (client/broadcast.c, proto/broadcast.h) ---- */

typedef struct BcastHandle BcastHandle;

/*
 * Set ch up as a broadcast publisher (rw) or subscriber (ro) once its data
 * segment is attached and checked: pc is the open answer (its broadcast
 * fields). Checks the header against it (-EPROTO), attaches the table
 * segment read-write and checks it (-EIDRM when it is not the one meant;
 * of a posix channel, maps ch->table_fd's file instead, and closes it),
 * takes the channel's own semaphore off ch->info.nsems, and subscribes an
 * ro handle at the current head. On failure nothing is left attached.
 */
int bcast_channel_setup(shmb_channel *ch, const ProtoChannel *pc);
/* Unsubscribe, detach the table and free; for any handle (a no-op unless broadcast). */
void bcast_channel_free(shmb_channel *ch);
bool bcast_channel_removed(const shmb_channel *ch);
/*
 * The figures a broadcast handle runs on, for the tests: its slots' address,
 * stride, count and subscribers, and how far ahead it prefetches.
 */
void bcast_channel_geometry(const shmb_channel *ch, const char **ret_slots, uint64_t *ret_stride, uint32_t *ret_n,
                            uint32_t *ret_subscribers, uint64_t *ret_ahead);

/* What shmb_send() and friends do on a broadcast handle (ch->bcast set). */
int bcast_send(shmb_channel *ch, const void *msg, size_t len, int timeout_ms);
ssize_t bcast_recv(shmb_channel *ch, void *buf, size_t size, int timeout_ms);
int bcast_send_reserve(shmb_channel *ch, size_t size, void **ret_buf, int timeout_ms);
int bcast_send_commit(shmb_channel *ch, void *buf, size_t len);
int bcast_send_abort(shmb_channel *ch, void *buf);
ssize_t bcast_recv_peek(shmb_channel *ch, const void **ret_buf, int timeout_ms);
int bcast_recv_release(shmb_channel *ch, const void *buf);

