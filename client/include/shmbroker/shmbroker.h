#ifndef SHMBROKER_SHMBROKER_H
#define SHMBROKER_SHMBROKER_H

/*
 * libshmbroker: open shmbroker channels by name, already attached.
 *
 *     shmb_channel *ch;
 *     int r = shmb_open_channel(NULL, "telemetry", SHMB_RW, &ch);
 *     if (r < 0)
 *             fprintf(stderr, "telemetry: %s\n", shmb_strerror(r));
 *     memcpy(shmb_channel_addr(ch), data, n);
 *     shmb_close(ch);
 *
 * Errors: every call that can fail returns 0 (or a count) on success and a
 * negative errno on failure; shmb_strerror() turns any of them into a
 * sentence. The broker's own refusals keep their names: -ENOENT (no such
 * channel), -EACCES (no rights), -EPROTO (protocol mismatch); -EIDRM means
 * the channel's kernel objects were removed (the broker stopped or
 * reloaded it); -EXDEV means the caller cannot see the broker's objects
 * (another IPC namespace, e.g. a unit with PrivateIPC=).
 *
 * Conduct: the library never prints, exits, or installs signal handlers.
 * Its sockets are SOCK_CLOEXEC. Blocking calls retry after EINTR only where
 * they can keep their deadline; a timeout of -1 waits forever, 0 never waits.
 *
 * Threads: a shmb_client serialises its requests internally, so it may be
 * shared between threads. Operations on a shmb_channel (semaphores, ring
 * send/receive, getters) may be called from several threads at once; only
 * shmb_close() must not race with other calls on the same channel. Answers
 * (shmb_status_list, shmb_reload_result) never change once made: any
 * thread may read them; only their free must not race with the reads.
 *
 * fork(2): a connection and its channels belong to the process that made
 * them. In a child, broker calls on an inherited client (and
 * shmb_client_process(), shmb_client_fd(), shmb_client_set_timeout())
 * return -ECHILD without touching the parent's socket; shmb_close() of an
 * inherited handle detaches and frees the child's copy but gives nothing
 * back (hold, ring token, broadcast subscriber place stay the parent's);
 * shmb_disconnect() frees the child's copy. A raw channel's mapping and
 * semaphores work in the child; ring and broadcast handles must not send
 * or receive there. Connect and open anew in the child.
 *
 * Broker restarts: a connection outlives its broker. When the broker goes
 * away the library connects again once it is back and opens the
 * connection's channels again, so the broker lists their holds as before;
 * channels the broker adopted (a crash restart) simply keep working. A
 * channel that was removed meanwhile (a clean stop, a changed config) is
 * not replaced behind the caller's back: its handle stays attached to the
 * old objects, its semaphore and ring calls return -EIDRM, and
 * shmb_channel_check() says -EIDRM; close it and open the channel again.
 * The library has no thread of its own: it reconnects at the start of the
 * next call that talks to the broker, and from shmb_client_process(), which
 * an event loop calls when shmb_client_fd() polls readable.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The broker's socket when neither an argument nor $SHMBROKER_SOCKET names one. */
#define SHMB_DEFAULT_SOCKET "/run/shmbroker/shmbroker.sock"

typedef struct shmb_client shmb_client;
typedef struct shmb_channel shmb_channel;
typedef struct shmb_status_list shmb_status_list;
typedef struct shmb_reload_result shmb_reload_result;

/*
 * How a channel is opened. Neither is 0, so that a zeroed struct field or a
 * forgotten argument is refused (-EINVAL) instead of being read as a grant
 * of write access.
 */
typedef enum shmb_access {
        SHMB_RO = 1,                    /* read only: the segment is attached SHM_RDONLY */
        SHMB_RW = 2,                    /* read and write */
} shmb_access;

/* Which kernel objects a channel is made of (its config's "kind"). */
typedef enum shmb_kind {
        SHMB_KIND_SYSV,                 /* a System V segment and semaphore set (keys and ids) */
        SHMB_KIND_POSIX,                /* files in the broker's /dev/shm: a segment, one per semaphore (names) */
} shmb_kind;

typedef enum shmb_layout {
        SHMB_LAYOUT_RAW,
        SHMB_LAYOUT_RING,
        SHMB_LAYOUT_BROADCAST,          /* publish/subscribe: rw handles publish, ro handles subscribe */
} shmb_layout;

/*
 * ABI: what the broker describes (channels, status, reload results) is
 * read through opaque handles and getters, never public structs, so that
 * a later version can add figures without breaking programs built
 * against this one.
 *
 * Semaphore counts: "nsems" means one thing everywhere in this library
 * (shmb_channel_nsems(), shmb_status_nsems()): the semaphores a user of
 * the channel may use with shmb_sem_*() and shmb_lock(), indexed 0 to
 * nsems - 1, which are the ones the config's "semaphores" asks for. A
 * ring keeps semaphores of its set for itself, ahead of those; they are
 * neither counted nor indexed there (shmb_status_reserved_nsems() counts
 * them for admins: the kernel's set, as ipcs shows it, is the sum).
 */

/* ---- connections ---- */

/*
 * Connect to the broker and check it speaks our protocol version.
 * socket_path: NULL for $SHMBROKER_SOCKET, else SHMB_DEFAULT_SOCKET.
 * *ret is owned by the caller: release it with shmb_disconnect().
 * Errors: -ENOENT/-ECONNREFUSED (no broker), -EACCES, -EPROTO, -ENOMEM,
 * -ETIMEDOUT (a broker that does not answer within 5 s), -EINVAL for ""
 * (it names no file: as an address it is an abstract socket anyone may bind).
 */
int shmb_connect(const char *socket_path, shmb_client **ret);

/*
 * Bound every later exchange with the broker on c (open, close, list,
 * status, reload, shmb_request_json, and reconnecting) to timeout_ms from
 * its start: a broker that is stuck, or accepts and never answers, gives
 * -ETIMEDOUT, never a hang, and a thread that waits for another's call on
 * c waits no longer than that call's bound. A call is one exchange, but an
 * open that finds its channel replaced while attaching asks again (up to
 * three times). The default
 * is 5000 ms; -1 waits for ever. A timed-out call leaves the connection as
 * a broker restart does: the library reconnects (see
 * shmb_client_process()), and the channels stay attached. The next call
 * tries at once; calls of other threads that were waiting for the one that
 * timed out fail with it (-ETIMEDOUT), without waiting for the broker again.
 * Returns 0, -EINVAL (c NULL, timeout_ms 0 or below -1), or a negative
 * errno from setting it on the socket, or -ETIMEDOUT when a call in
 * flight on c held it up past that call's bound. Thread-safe.
 */
int shmb_client_set_timeout(shmb_client *c, int timeout_ms);

/*
 * Close the connection, for good: it is not reconnected. Every channel
 * opened on it loses its hold at the broker, but stays attached until
 * shmb_close(). Takes NULL. Must be the last call on c.
 */
void shmb_disconnect(shmb_client *c);

/*
 * A file descriptor for the caller's event loop (poll, select, epoll,
 * sd-event): it polls readable when shmb_client_process() has work to do:
 * the broker closed the connection, answers to the library's reconnection
 * arrived, or the next reconnection attempt is due. It is an epoll
 * instance that watches the socket, or a timer while the broker is away,
 * so its number stays the same for the life of c, across broker restarts:
 * register it once (a socket swapped under one number would silently drop
 * out of an epoll set). Watch it for input only; do not read, write or
 * close it. Made on the first call (two descriptors, close-on-exec), so
 * programs that never ask pay nothing.
 * Returns the fd; -1 once the connection is closed for good
 * (shmb_disconnect(), or a malformed answer: the fd handed out before
 * then stays open until shmb_disconnect(), and polls readable once, so
 * that the loop's shmb_client_process() says -ENOTCONN); -EINVAL for
 * NULL; -EMFILE, -ENFILE or -ENOMEM when it cannot be made; -ETIMEDOUT
 * when a call in flight on c held it up past that call's bound; -ECHILD
 * in a child of fork(2). Thread-safe.
 */
int shmb_client_fd(const shmb_client *c);

/*
 * Keep the connection across broker restarts; call it when shmb_client_fd()
 * polls readable, or now and then (every second or so) without a loop.
 * It notices a broker that went away, connects again when an attempt is
 * due (after 0 ms, then 50 ms doubling to 2 s between attempts), and
 * re-registers every channel open on c: in one write, with hello, then
 * reading the answers as they come, over later calls. It never waits for
 * the broker: at most one non-blocking connect() and non-blocking reads
 * and writes. (Every call that talks to the broker also reconnects by
 * itself, at once and waiting for the answers, so a program that only
 * makes calls needs none of this to get its connection back; it is what
 * brings the holds back while the program makes no calls.)
 * Returns 0 while connected, including while the re-registration's answers
 * are still due; -ECONNREFUSED while the broker is away (its socket is
 * missing or nobody listens); other negative errnos of a failed attempt
 * (-ETIMEDOUT when the broker did not answer a call or an attempt in time:
 * the next attempt is due a bound later at the soonest, 2 s at most;
 * -EACCES, -EAGAIN when the broker's backlog is full, -EPROTO, -EMFILE,
 * -ENOMEM, ...): all of these are tried again by themselves, and the fd
 * polls readable when the next attempt is due. -ENOTCONN once the
 * connection is closed for good (shmb_disconnect(), a malformed answer);
 * -EINVAL for NULL. Thread-safe; it waits for a request that another
 * thread has in flight on c, at most that request's bound (then
 * -ETIMEDOUT, tried again at the next call).
 */
int shmb_client_process(shmb_client *c);

/* ---- channels ---- */

/*
 * Open a channel by name on an existing connection and attach it.
 * access: SHMB_RO or SHMB_RW; anything else, 0 included, is -EINVAL.
 * The channel keeps a reference to the connection. *ret is owned by the
 * caller: shmb_close() it. Errors: -ENOENT, -EACCES, -EXDEV, -EIDRM,
 * -EINVAL (bad name or access), broker and socket errors.
 */
int shmb_open(shmb_client *c, const char *name, shmb_access access, shmb_channel **ret);

/*
 * One call: connect (socket_path as for shmb_connect()), open and attach;
 * access and errors as for shmb_open() (a bad name or access is refused
 * before connecting). The channel owns its private connection, so its
 * hold lasts until shmb_close() or the process's exit.
 */
int shmb_open_channel(const char *socket_path, const char *name, shmb_access access, shmb_channel **ret);

/*
 * Detach, give the hold back at the broker and free. Takes NULL. The hold
 * stays while another handle of the same channel is open on the same
 * connection (the broker keeps one per connection and channel); a stale
 * handle (see shmb_channel_check()) gives nothing back, as the hold on its
 * name belongs to the new channel. A broker that is away is not waited
 * for: it dropped the hold when the connection ended. A broker that hung
 * (a call or attempt on the connection timed out) costs one close its
 * bound, not every close: the next is not tried before a bound passed.
 * A close that waited its bound for another thread's call on the
 * connection gives nothing back. Returns 0, or the error of detaching.
 */
int shmb_close(shmb_channel *ch);

/*
 * Whether the channel the handle attached is still the broker's: 0 when
 * it is (as far as this process can tell), -EIDRM when it was removed:
 * the kernel marks its segment removed, or the library, reconnecting after
 * a broker restart, found the channel of that name gone or replaced.
 * Then close the handle and open the channel again. -EINVAL for NULL.
 * Never talks to the broker nor blocks. Thread-safe.
 */
int shmb_channel_check(const shmb_channel *ch);

/*
 * The connection a channel uses: for shmb_open(), the one given; for
 * shmb_open_channel(), its private one, e.g. to drive its reconnection with
 * shmb_client_fd() and shmb_client_process(). Borrowed: valid until the
 * channel's shmb_close(); never shmb_disconnect() a private one. NULL for
 * NULL.
 */
shmb_client *shmb_channel_get_client(const shmb_channel *ch);

/*
 * Getters: what the broker said about the channel when the handle opened
 * it, fixed for the handle's life (a reload or restart that replaces the
 * channel gives the new one to a new handle; see shmb_channel_check()).
 * They never fail on an open channel, never block nor talk to the broker,
 * and are thread-safe. Given NULL, each returns what no open channel
 * has: NULL, 0 or -EINVAL, as it says.
 */

/* The attached segment; read-only for SHMB_RO. For a ring, its header: use send/recv. NULL for NULL. */
void *shmb_channel_addr(const shmb_channel *ch);

/* The channel's name; borrowed, valid until shmb_close(). NULL for NULL. */
const char *shmb_channel_name(const shmb_channel *ch);

/* A shmb_layout; -EINVAL for NULL. */
int shmb_channel_layout(const shmb_channel *ch);

/* The handle's access, SHMB_RO or SHMB_RW, as given to the open; -EINVAL for NULL. */
int shmb_channel_access(const shmb_channel *ch);

/* The segment's bytes (for a ring: header and slots); 0 for NULL. */
size_t shmb_channel_size(const shmb_channel *ch);

/* The semaphores the caller may use, indices 0 .. n - 1 (see "Semaphore counts" above); 0 for NULL. */
unsigned shmb_channel_nsems(const shmb_channel *ch);

/* A shmb_kind; -EINVAL for NULL. */
int shmb_channel_kind(const shmb_channel *ch);

/*
 * A posix channel's segment name, as shm_open() takes it
 * ("/shmbroker.NAME"); borrowed, valid until shmb_close(). NULL for a
 * System V channel and NULL. The library maps the descriptor the broker
 * handed over, never this name: in another mount namespace the name may
 * be another file, or none.
 */
const char *shmb_channel_shm_name(const shmb_channel *ch);

/* The segment's System V key, as ipcs prints it; 0 (IPC_PRIVATE, never a channel's) for a posix channel and NULL. */
uint32_t shmb_channel_shm_key(const shmb_channel *ch);

/* The segment's id, as attached; -EOPNOTSUPP for a posix channel, -EINVAL for NULL. */
int shmb_channel_shm_id(const shmb_channel *ch);

/* The semaphore set's System V key; 0 for a posix channel and NULL. */
uint32_t shmb_channel_sem_key(const shmb_channel *ch);

/* The semaphore set's id; -EOPNOTSUPP for a posix channel, -EINVAL for NULL. */
int shmb_channel_sem_id(const shmb_channel *ch);

/* A ring's or broadcast channel's largest message in bytes; 0 for a raw channel and NULL. */
uint32_t shmb_channel_slot_size(const shmb_channel *ch);

/* A ring's or broadcast channel's number of slots; 0 for a raw channel and NULL. */
uint32_t shmb_channel_slots(const shmb_channel *ch);

/* ---- semaphores (index 0 .. shmb_channel_nsems() - 1) ---- */

/*
 * Counting operations, without SEM_UNDO: wait decrements (blocking while
 * zero), post increments. timeout_ms: -1 forever, 0 try once (-EAGAIN),
 * > 0 at most that long (-ETIMEDOUT). -EINTR when a signal interrupts a
 * wait; -EIDRM when the set was removed; -EINVAL for a bad index;
 * -EACCES for any of them on a read-only handle (a wait changes a value too).
 */
int shmb_sem_wait(shmb_channel *ch, unsigned idx, int timeout_ms);
int shmb_sem_post(shmb_channel *ch, unsigned idx);
int shmb_sem_trywait(shmb_channel *ch, unsigned idx);

/*
 * Locks: like wait/post, but with SEM_UNDO, so the kernel gives the lock
 * back if the holder dies. Pair each lock with an unlock in the same process.
 *
 * On a posix channel (POSIX semaphores have no SEM_UNDO) the lock is a
 * word kept in semaphore idx's file, apart from the semaphore's value,
 * which shmb_sem_*() alone count: lock and sem calls on the same index do
 * not exclude each other there. The word names the hold that has the
 * lock: the handle's connection's hold on the channel, which all its
 * threads share (shmb_unlock() from any of them gives it back; a handle of
 * another connection, in this process or another, waits). When the
 * holder's process dies or its hold ends (shmb_close()), the broker says
 * so and the next locker gets the lock and 0, as on System V (what the
 * holder left half-written is the caller's to judge); a hold closed while
 * the broker is away keeps the lock until its process exits, and a death
 * while it is away is seen when it is back. shmb_unlock() of a
 * lock this hold does not have gives -EPERM (shmb_lock() by the holder
 * waits, as on System V). In a child of fork(2) both give -ECHILD; a
 * handle whose token is dead (its hold ended while this process lived
 * on, past the broker's watch, see shmb_disconnect()) gets -ENOTCONN from
 * shmb_lock(). Both are -EACCES on an ro handle, a signal ends a wait
 * with -EINTR, and a removal is seen
 * within 50 ms (-EIDRM); after one, shmb_unlock() is -EIDRM, with or
 * without the lock, as on System V (a held lock is given back all the
 * same).
 */
int shmb_lock(shmb_channel *ch, unsigned idx, int timeout_ms);
int shmb_unlock(shmb_channel *ch, unsigned idx);

/* ---- ring channels ---- */

/*
 * How long ring send/receive may spin before sleeping, by default. Long
 * enough to outlast the other side's wake-up (~25-50 us in a VM): with 20,
 * a pair that once slept kept handing each other wake-ups, at a quarter of
 * the throughput.
 */
#define SHMB_DEFAULT_SPIN_US 100
/* The longest spin shmb_channel_set_spin() accepts; larger values are taken as this. */
#define SHMB_SPIN_MAX_US 1000000

/*
 * Let ring send/receive spin for up to spin_us microseconds before sleeping
 * when the ring is empty or full (default SHMB_DEFAULT_SPIN_US; 0: never
 * spin, always sleep at once). A spin happens only when the peer last ran
 * on another CPU (on the same CPU it would only delay the peer), adapts (it
 * shrinks when spinning does not pay), and yields after a few microseconds.
 * Thread-safe.
 */
int shmb_channel_set_spin(shmb_channel *ch, unsigned spin_us);

/*
 * Send one message of 0..slot_size bytes. Never torn: a receiver sees all
 * of it or nothing. Errors: -EMSGSIZE, -EAGAIN (full, timeout 0),
 * -ETIMEDOUT, -EINTR, -EIDRM, -ENOTSUP (neither a ring nor a broadcast
 * channel), -EACCES (read-only handle).
 */
int shmb_send(shmb_channel *ch, const void *msg, size_t len, int timeout_ms);

/*
 * Receive one message into buf. Returns its length. A message longer than
 * size is not consumed: -EMSGSIZE, and the next call with a buffer of
 * slot_size bytes gets it. Errors otherwise as shmb_send().
 */
ssize_t shmb_recv(shmb_channel *ch, void *buf, size_t size, int timeout_ms);

/*
 * Zero copy on a ring: the message is written and read where it lies in
 * the shared segment, with the same ordering and crash guarantees as
 * shmb_send()/shmb_recv() (each pair is one such call split in two).
 *
 * shmb_send_reserve() waits as shmb_send() does for a free slot and
 * claims it: *ret_buf points to room for up to slot_size bytes (size, at
 * most slot_size, is only a hint for waiting receivers). Fill it, then
 * shmb_send_commit() publishes len bytes of it, or shmb_send_abort() gives
 * the slot up (receivers never see it). Until then receivers wait at that
 * slot: commit soon. If the process dies in between, receivers skip the
 * slot once the broker marks its token dead.
 *
 * shmb_recv_peek() waits as shmb_recv() does and returns the next
 * message's length with *ret_buf pointing at it in the segment, read-only
 * to the caller; shmb_recv_release() frees its slot, after which the
 * pointer must not be used. Until then senders that come round to that
 * slot wait: release soon. A receiver that dies in between has its slot
 * freed (the message is lost, as with a receiver killed in shmb_recv()).
 *
 * A handle may hold several claims at once (one per call, from any of its
 * threads); commit, abort and release name theirs by the pointer given,
 * which names a slot: a pointer kept past its commit or release names the
 * handle's next claim of that slot, if it has one. Errors as
 * shmb_send()/shmb_recv(); commit, abort and release: -EINVAL when buf is
 * no claim of this handle, -ENOTCONN when the broker counted this handle
 * gone and its claim was taken back: the message is lost (reserve again),
 * or, after a peek, what was read may have been overwritten meanwhile
 * (discard it); -EMSGSIZE (commit) when len is over slot_size.
 */
int shmb_send_reserve(shmb_channel *ch, size_t size, void **ret_buf, int timeout_ms);
int shmb_send_commit(shmb_channel *ch, void *buf, size_t len);
int shmb_send_abort(shmb_channel *ch, void *buf);
ssize_t shmb_recv_peek(shmb_channel *ch, const void **ret_buf, int timeout_ms);
int shmb_recv_release(shmb_channel *ch, const void *buf);

/*
 * A file descriptor for an event loop (poll, select, epoll, sd-event)
 * that polls readable when the ring call on ch that last returned
 * -EAGAIN (with timeout 0) may now succeed: a receive, when a message may
 * be there; a send or reserve, when a slot may be free. Until the first
 * -EAGAIN it polls readable, so a loop may wait before trying. The usual
 * loop: wait for the fd, then call with timeout 0 until -EAGAIN, then
 * wait again. It also polls readable when the ring was removed (calls
 * then return -EIDRM) and when a holder died whose unfinished claim the
 * next call can now repair. A wake-up may be spurious (another waiter
 * took the message): the call just returns -EAGAIN again.
 *
 * It is an epoll instance over the channel's wake-up FIFOs, which the
 * broker keeps next to its socket (they outlive a broker restart, so a
 * wait survives it): watch it for input only; do not read, write or close
 * it; it lives until shmb_close(). A handle waits for one side at a time:
 * the side of its latest -EAGAIN. Made on the first call (four
 * descriptors: the epoll instance, the two FIFOs and a timer; a broadcast
 * subscriber's own FIFO a fifth; close-on-exec); a handle that never asks pays nothing, and
 * every other handle of the channel pays one write to a FIFO per wait of
 * this one, only when it makes that wait end.
 *
 * On a broadcast channel a subscriber waits for messages and a publisher
 * (in block mode) for room, the same way.
 *
 * Returns the fd (the same on every call); -ENOTSUP (not a ring nor a
 * broadcast channel), -EACCES (a read-only handle of a ring), -EOPNOTSUPP (the broker names no FIFOs: it could
 * not make them; the same value as -ENOTSUP on Linux, told apart by shmb_channel_layout()), the error of opening a FIFO (-EACCES, -ENOENT when this
 * process cannot see the broker's directory), -EMFILE, -ENOMEM. -EINVAL
 * for NULL. Thread-safe.
 */
int shmb_channel_fd(shmb_channel *ch);
/* ---- broadcast channels ---- */

/*
 * On a broadcast channel (layout SHMB_LAYOUT_BROADCAST) an rw handle is a
 * publisher and an ro handle a subscriber: every subscriber receives every
 * message published after its open, in one order, whoever published it.
 * shmb_send(), shmb_recv() and the zero-copy calls above work as on a
 * ring, with these differences:
 *  - a subscriber's shmb_send() and shmb_send_reserve() are -EACCES; a
 *    publisher's shmb_recv() and shmb_recv_peek() are -EOPNOTSUPP;
 *  - shmb_recv_peek() does not consume: the message stays the subscriber's
 *    next until shmb_recv_release() (a second peek returns it again), so a
 *    subscriber handle holds one peek at a time: threads that share one
 *    take messages with shmb_recv() (each message goes to one of them);
 *  - with "overflow": "block" a publisher waits (as a ring's sender on a
 *    full ring: -EAGAIN with timeout 0) until the slowest subscriber has
 *    read the message `slots` back; a subscriber that dies or closes stops
 *    counting once the broker marks it (its process exit is seen at once);
 *  - with "overflow": "drop" a publisher never waits; a subscriber that
 *    fell `slots` behind loses the oldest messages and goes on with the
 *    oldest still there. A message overwritten while peeked at makes
 *    shmb_recv_release() return -ESTALE: discard what was read.
 * A connection subscribes at most once to a channel: a second ro open of
 * it on the same shmb_client (or an ro and an rw open) is -EBUSY; use
 * shmb_open_channel(), which makes a connection per handle. More than the
 * channel's "subscribers" at once are refused with -EUSERS.
 */

/*
 * How many messages the subscriber ch lost so far because it fell behind
 * (or was overwritten while it held a peek): 0 with *ret set. Positions
 * lost are counted, including one an aborted reserve had left empty.
 * Always 0 for a publisher and in block mode unless something wrote the
 * subscriber's cursor for it. -EINVAL for NULL, -EOPNOTSUPP when ch is not
 * a broadcast channel. Thread-safe.
 */
int shmb_channel_dropped(shmb_channel *ch, uint64_t *ret);

/* ---- admin ---- */

/*
 * All channels, sorted by name (list), or their status with the kernel's
 * figures and the holds (status; name NULL for all). *ret is owned by the
 * caller: free it with shmb_status_free(). -ENOENT for an unknown name,
 * -EINVAL for a bad one or a NULL c or ret; broker and socket errors.
 * Thread-safe as every call on c is.
 */
int shmb_list(shmb_client *c, shmb_status_list **ret);
int shmb_status(shmb_client *c, const char *name, shmb_status_list **ret);

/* Free a list or status answer and every string borrowed from it. Takes NULL. */
void shmb_status_free(shmb_status_list *l);

/*
 * Getters of entry i (0 .. shmb_status_count() - 1) of a list or status
 * answer. An answer is not changed after it is made: several threads may
 * read it at once, and nothing they return goes stale until
 * shmb_status_free(), which must not race with them. Strings are borrowed
 * from the answer. Given a NULL l or an i out of range, each returns what
 * no entry has: NULL, 0 or -EINVAL, as it says. Figures that only status
 * has (nattch to ctime, semaphores, clients) are 0 in a list answer.
 */

/* How many entries; 0 for NULL. */
size_t shmb_status_count(const shmb_status_list *l);

/* The channel's name; NULL for no entry. */
const char *shmb_status_name(const shmb_status_list *l, size_t i);

/* A shmb_layout; -EINVAL for no entry. */
int shmb_status_layout(const shmb_status_list *l, size_t i);

/* The segment's bytes; 0 for no entry. */
uint64_t shmb_status_size(const shmb_status_list *l, size_t i);

/* The semaphores a user may use, as shmb_channel_nsems() counts them; 0 for no entry. */
unsigned shmb_status_nsems(const shmb_status_list *l, size_t i);

/*
 * The semaphores the layout keeps for itself (one for a ring or a
 * broadcast channel; 0 for raw),
 * which come first in the kernel's set: the set has this plus
 * shmb_status_nsems() semaphores, and user semaphore k is the kernel's
 * number this + k. For admin tools that show the set as ipcs does. 0 for
 * no entry.
 */
unsigned shmb_status_reserved_nsems(const shmb_status_list *l, size_t i);

/* A shmb_kind; -EINVAL for no entry. */
int shmb_status_kind(const shmb_status_list *l, size_t i);

/* System V keys (0 for a posix channel and no entry) and ids (-EOPNOTSUPP for a posix channel, -EINVAL for no entry). */
uint32_t shmb_status_shm_key(const shmb_status_list *l, size_t i);
int shmb_status_shm_id(const shmb_status_list *l, size_t i);
uint32_t shmb_status_sem_key(const shmb_status_list *l, size_t i);
int shmb_status_sem_id(const shmb_status_list *l, size_t i);

/*
 * A posix channel's names, as shm_open() and sem_open() take them: its
 * segment's ("/shmbroker.NAME") and user semaphore idx's (0 ..
 * shmb_status_nsems() - 1). NULL for a System V channel, no entry or an
 * idx out of range.
 */
const char *shmb_status_shm_name(const shmb_status_list *l, size_t i);
const char *shmb_status_sem_name(const shmb_status_list *l, size_t i, unsigned idx);

/* A ring's or broadcast channel's slot size and number of slots; 0 for a raw channel and for no entry. */
uint32_t shmb_status_slot_size(const shmb_status_list *l, size_t i);
uint32_t shmb_status_slots(const shmb_status_list *l, size_t i);

/* Owner and group, as names (decimal ids where the broker knows no name); NULL for no entry. */
const char *shmb_status_owner(const shmb_status_list *l, size_t i);
const char *shmb_status_group(const shmb_status_list *l, size_t i);

/* The permission bits, e.g. 0660; -EINVAL for no entry. */
int shmb_status_mode(const shmb_status_list *l, size_t i);

/*
 * The segment's figures, as shmctl(IPC_STAT) gives them (times in seconds
 * since the epoch). nattch is never 0 in a status entry whose figures were
 * read (the broker keeps every segment attached): 0 means they were not
 * (see shmb_status_error()), a list answer, or a posix channel, whose
 * segment is a file without these figures. 0 for no entry.
 */
uint64_t shmb_status_nattch(const shmb_status_list *l, size_t i);
pid_t shmb_status_cpid(const shmb_status_list *l, size_t i);
pid_t shmb_status_lpid(const shmb_status_list *l, size_t i);
int64_t shmb_status_atime(const shmb_status_list *l, size_t i);
int64_t shmb_status_dtime(const shmb_status_list *l, size_t i);
int64_t shmb_status_ctime(const shmb_status_list *l, size_t i);

/*
 * User semaphore idx (0 .. shmb_status_nsems() - 1, the index shmb_sem_*()
 * takes) of entry i: its value, the processes waiting for it to grow
 * (ncount) and to be zero (zcount), and the last pid to operate on it.
 * A POSIX semaphore (a posix channel's) has a value only: ncount and
 * zcount are then -1 and pid 0, "not known".
 * Each ret_* may be NULL; none is touched on failure. -EINVAL for no
 * entry or an idx out of range; -ENODATA when the answer has no figures
 * (a list answer, or the broker could not read the set: see
 * shmb_status_error()).
 */
int shmb_status_semaphore(const shmb_status_list *l, size_t i, unsigned idx,
                          int *ret_value, int *ret_ncount, int *ret_zcount, pid_t *ret_pid);

/* The same for the layout's own semaphore idx (0 .. shmb_status_reserved_nsems() - 1). */
int shmb_status_reserved_semaphore(const shmb_status_list *l, size_t i, unsigned idx,
                                   int *ret_value, int *ret_ncount, int *ret_zcount, pid_t *ret_pid);

/* The holds on entry i's channel: one per connection and channel, not per process. 0 for no entry. */
size_t shmb_status_nclients(const shmb_status_list *l, size_t i);

/*
 * Hold k (0 .. shmb_status_nclients() - 1) of entry i: the holder's pid
 * and uid, its access (SHMB_RO or SHMB_RW) and when it opened (seconds
 * since the epoch). Each ret_* may be NULL; none is touched on failure.
 * -EINVAL for no entry or a k out of range.
 */
int shmb_status_client(const shmb_status_list *l, size_t i, size_t k,
                       pid_t *ret_pid, uid_t *ret_uid, shmb_access *ret_access, int64_t *ret_since);

/*
 * Whether the broker could read all of the kernel's figures for entry i
 * of a status answer: 0 when it could (always, for a list answer).
 * Otherwise the negative errno it met, e.g. -EACCES (the broker has no
 * read permission on that channel's semaphore set): the entry's
 * semaphores are then absent (-ENODATA), and when the segment's figures
 * could not be read either, nattch is 0. *ret_message, when given, gets
 * the broker's sentence (NULL for 0), borrowed from l. -EINVAL for no
 * entry.
 */
int shmb_status_error(const shmb_status_list *l, size_t i, const char **ret_message);

/*
 * Ask the broker to reload its config (uid 0 or admin_group). *ret is
 * owned by the caller: free it with shmb_reload_result_free(). Errors:
 * -EACCES, the config's (-EINVAL, ...; the broker's sentence in
 * shmb_client_last_message()), broker and socket errors.
 */
int shmb_reload(shmb_client *c, shmb_reload_result **ret);

/*
 * The names of the channels the reload added, removed, changed (replaced)
 * and kept as they were: NULL-terminated arrays, empty ones included,
 * borrowed from r until shmb_reload_result_free(). NULL for a NULL r.
 * Thread-safe (r does not change).
 */
const char *const *shmb_reload_result_added(const shmb_reload_result *r);
const char *const *shmb_reload_result_removed(const shmb_reload_result *r);
const char *const *shmb_reload_result_changed(const shmb_reload_result *r);
const char *const *shmb_reload_result_kept(const shmb_reload_result *r);

/* Free a reload result and its names. Takes NULL. */
void shmb_reload_result_free(shmb_reload_result *r);

/*
 * The broker's human message for the last refused request on this client,
 * or the library's for an answer that broke the protocol (-EPROTO); empty
 * when none. Valid until the next request on the same client.
 * With c NULL: the same for the calling thread's last shmb_connect() or
 * shmb_open_channel() that failed at the broker (such as a connection
 * limit reached), whose client is gone; empty after one that succeeded.
 * Valid until that thread's next such call.
 */
const char *shmb_client_last_message(const shmb_client *c);

/*
 * Send one raw request (a JSON object on one line, without the newline) and
 * return the broker's answer line, malloc'd, without its newline. A refusal
 * is still an answer ("ok": false) and returns 0. For tools and debugging.
 */
int shmb_request_json(shmb_client *c, const char *request, char **ret_answer);

/* ---- errors ---- */

/* A sentence for a negative errno from any call here. Static; never NULL. */
const char *shmb_strerror(int err);

/* The errno's name ("ENOENT"), as the wire protocol spells it; NULL if none. */
const char *shmb_errno_name(int err);

/* ---- scope cleanup ---- */

/*
 * For __attribute__((cleanup(...))) (GCC, Clang): each takes the address
 * of a variable, does nothing when it holds NULL, and leaves NULL there.
 *
 *     __attribute__((cleanup(shmb_closep))) shmb_channel *ch = NULL;
 */
static inline void shmb_closep(shmb_channel **ch) {
        if (*ch)
                (void) shmb_close(*ch);
        *ch = NULL;
}

static inline void shmb_disconnectp(shmb_client **c) {
        shmb_disconnect(*c);
        *c = NULL;
}

#ifdef __cplusplus
}
#endif

#endif
