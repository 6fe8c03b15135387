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
 * send/receive, accessors) may be called from several threads at once; only
 * shmb_close() must not race with other calls on the same channel.
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

typedef enum shmb_access {
        SHMB_RW,                        /* read and write */
        SHMB_RO,                        /* read only: the segment is attached SHM_RDONLY */
} shmb_access;

typedef enum shmb_layout {
        SHMB_LAYOUT_RAW,
        SHMB_LAYOUT_RING,
} shmb_layout;

/* What a channel is, as the broker describes it. */
typedef struct shmb_channel_info {
        char name[65];
        shmb_layout layout;
        uint64_t size;                  /* segment bytes */
        unsigned nsems;                 /* semaphores the caller may use */
        uint32_t shm_key, sem_key;      /* System V keys, as ipcs prints them */
        int shm_id, sem_id;
        uint32_t slot_size, slots;      /* ring only */
} shmb_channel_info;

typedef struct shmb_semaphore_status {
        int value, ncount, zcount;
        pid_t pid;                      /* last to operate on it */
} shmb_semaphore_status;

typedef struct shmb_client_status {
        pid_t pid;
        uid_t uid;
        shmb_access access;
        int64_t since;                  /* seconds since the epoch */
} shmb_client_status;

/* A channel in list or status answers. Status-only fields are zero for list. */
typedef struct shmb_channel_status {
        shmb_channel_info info;         /* nsems here counts the whole set */
        char owner[65], group[65];
        unsigned mode;
        uint64_t nattch;
        pid_t cpid, lpid;
        int64_t atime, dtime, ctime;
        shmb_semaphore_status *semaphores;
        size_t n_semaphores;
        shmb_client_status *clients;
        size_t n_clients;
} shmb_channel_status;

/* ---- connections ---- */

/*
 * Connect to the broker and check it speaks our protocol version.
 * socket_path: NULL for $SHMBROKER_SOCKET, else SHMB_DEFAULT_SOCKET.
 * *ret is owned by the caller: release it with shmb_disconnect().
 * Errors: -ENOENT/-ECONNREFUSED (no broker), -EACCES, -EPROTO, -ENOMEM.
 */
int shmb_connect(const char *socket_path, shmb_client **ret);

/*
 * Close the connection. Every channel opened on it loses its hold at the
 * broker, but stays attached until shmb_close(). Takes NULL.
 */
void shmb_disconnect(shmb_client *c);

/* The connection's socket, e.g. to poll() for a broker that went away. */
int shmb_client_fd(const shmb_client *c);

/* ---- channels ---- */

/*
 * Open a channel by name on an existing connection and attach it.
 * The channel keeps a reference to the connection. *ret is owned by the
 * caller: shmb_close() it. Errors: -ENOENT, -EACCES, -EXDEV, -EIDRM,
 * -EINVAL (bad name), broker and socket errors.
 */
int shmb_open(shmb_client *c, const char *name, shmb_access access, shmb_channel **ret);

/*
 * One call: connect (socket_path as for shmb_connect()), open and attach.
 * The channel owns its private connection, so its hold lasts until
 * shmb_close() or the process's exit.
 */
int shmb_open_channel(const char *socket_path, const char *name, shmb_access access, shmb_channel **ret);

/* Detach, tell the broker (when still connected) and free. Takes NULL. */
int shmb_close(shmb_channel *ch);

/* Accessors: never fail on a channel that is open. */
void *shmb_channel_addr(const shmb_channel *ch);   /* for a ring: the header; use send/recv */
size_t shmb_channel_size(const shmb_channel *ch);
unsigned shmb_channel_nsems(const shmb_channel *ch);
const shmb_channel_info *shmb_channel_get_info(const shmb_channel *ch);

/* ---- semaphores (index 0 .. shmb_channel_nsems() - 1) ---- */

/*
 * Counting operations, without SEM_UNDO: wait decrements (blocking while
 * zero), post increments. timeout_ms: -1 forever, 0 try once (-EAGAIN),
 * > 0 at most that long (-ETIMEDOUT). -EINTR when a signal interrupts a
 * wait; -EIDRM when the set was removed; -EINVAL for a bad index;
 * -EACCES for a post on a read-only handle.
 */
int shmb_sem_wait(shmb_channel *ch, unsigned idx, int timeout_ms);
int shmb_sem_post(shmb_channel *ch, unsigned idx);
int shmb_sem_trywait(shmb_channel *ch, unsigned idx);

/*
 * Locks: like wait/post, but with SEM_UNDO, so the kernel gives the lock
 * back if the holder dies. Pair each lock with an unlock in the same process.
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
 * -ETIMEDOUT, -EINTR, -ENOTSUP (not a ring), -EACCES (read-only handle).
 */
int shmb_send(shmb_channel *ch, const void *msg, size_t len, int timeout_ms);

/*
 * Receive one message into buf. Returns its length. A message longer than
 * size is not consumed: -EMSGSIZE, and the next call with a buffer of
 * slot_size bytes gets it. Errors otherwise as shmb_send().
 */
ssize_t shmb_recv(shmb_channel *ch, void *buf, size_t size, int timeout_ms);

/* ---- admin ---- */

/*
 * All channels (list), or their status with kernel figures and holders
 * (status; name NULL for all). *ret is an array of *ret_n entries owned by
 * the caller: free it with shmb_status_free(). -ENOENT for an unknown name.
 */
int shmb_list(shmb_client *c, shmb_channel_status **ret, size_t *ret_n);
int shmb_status(shmb_client *c, const char *name, shmb_channel_status **ret, size_t *ret_n);
void shmb_status_free(shmb_channel_status *v, size_t n);

/*
 * Whether the broker could read all of the kernel's figures for entry i of
 * an array from shmb_status(): 0 when it could (always, for shmb_list()).
 * Otherwise the negative errno it met, e.g. -EACCES (the broker has no read
 * permission on that channel's semaphore set): that entry's semaphores are
 * then absent (n_semaphores 0), and when the segment's figures could not be
 * read either, nattch is 0 (never otherwise: the broker keeps every segment
 * attached). *ret_message, when given, gets the broker's sentence (NULL
 * for 0), valid until shmb_status_free(). -EINVAL for a NULL v or an i out
 * of range.
 */
int shmb_status_error(const shmb_channel_status *v, size_t i, const char **ret_message);

/* Names of channels a reload touched; NULL-terminated arrays. */
typedef struct shmb_reload_result {
        char **added, **removed, **changed, **kept;
} shmb_reload_result;

/* Ask the broker to reload its config (uid 0 or admin_group). */
int shmb_reload(shmb_client *c, shmb_reload_result *ret);
void shmb_reload_result_free(shmb_reload_result *r);

/*
 * The broker's human message for the last refused request on this client
 * (empty when none). Valid until the next request on the same client.
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

#ifdef __cplusplus
}
#endif

#endif
