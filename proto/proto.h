#pragma once

/*
 * Wire protocol v1 of shmbroker: newline-delimited compact JSON over a Unix
 * stream socket, one response line per request line, in order.
 *
 * Everything here is a pure function over bytes and plain structs: no
 * sockets, no kernel objects, no logging. The daemon and the client library
 * both link it, and the fuzz targets drive it directly.
 *
 * Return convention: 0 on success; a negative errno for failures of the
 * process itself (-ENOMEM); for a malformed peer message a *positive* errno
 * (EINVAL, EBADMSG, EPROTO, EOPNOTSUPP, E2BIG) with a sentence in the
 * caller's message buffer. The positive code is what the daemon answers on
 * the wire; it never ends more than that one request.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROTO_VERSION 1
/* A request line, newline included, is at most this long. Answers may be
 * longer (status of many channels); clients cap them themselves. */
#define PROTO_LINE_MAX (64 * 1024)
#define PROTO_NAME_MAX 64
#define PROTO_CLIENT_MAX 128
/* Owner and group as names (or decimal ids when a name is unknown). */
#define PROTO_IDNAME_MAX 64
#define PROTO_MESSAGE_MAX 256

typedef enum ProtoOp {
        PROTO_OP_HELLO,
        PROTO_OP_OPEN,
        PROTO_OP_CLOSE,
        PROTO_OP_LIST,
        PROTO_OP_STATUS,
        PROTO_OP_RELOAD,
        _PROTO_OP_MAX,
} ProtoOp;

typedef enum ProtoAccess {
        PROTO_ACCESS_RW,
        PROTO_ACCESS_RO,
        _PROTO_ACCESS_MAX,
} ProtoAccess;

typedef enum ProtoLayout {
        PROTO_LAYOUT_RAW,
        PROTO_LAYOUT_RING,
        PROTO_LAYOUT_BROADCAST,
        _PROTO_LAYOUT_MAX,
} ProtoLayout;

/* Which family of kernel objects a channel is made of. */
typedef enum ProtoKind {
        PROTO_KIND_SYSV,                     /* shmget + semget */
        PROTO_KIND_POSIX,                    /* shm_open + mmap, one sem_open semaphore per semaphore */
        _PROTO_KIND_MAX,
} ProtoKind;

/* A POSIX object's name as shm_open()/sem_open() take it (proto/posix.h): "/shmbroker-table.NAME", "/shmbroker.NAME.65535". */
#define PROTO_POSIX_NAME_MAX (sizeof "/shmbroker-table." - 1 + PROTO_NAME_MAX + 8)

/* What a broadcast channel does when its slowest subscriber is `slots` behind. */
typedef enum ProtoOverflow {
        PROTO_OVERFLOW_BLOCK,
        PROTO_OVERFLOW_DROP,
        _PROTO_OVERFLOW_MAX,
} ProtoOverflow;

typedef struct ProtoRequest {
        ProtoOp op;
        int64_t version;                     /* hello: any integer (only PROTO_VERSION is spoken) */
        bool has_client;
        char client[PROTO_CLIENT_MAX + 1];   /* hello, optional */
        bool has_channel;
        char channel[PROTO_NAME_MAX + 1];    /* open, close; status optional */
        ProtoAccess access;                  /* open */
        /*
         * open, optional: the ring holder token (proto/ring.h) this client
         * held before the broker restarted, to take back; never 0.
         */
        bool has_holder;
        uint32_t holder;
        /* open, optional (posix channels only): hand over the descriptors with SCM_RIGHTS */
        bool fd;
} ProtoRequest;

typedef struct ProtoSemaphore {
        int value;
        /* System V only: a POSIX semaphore has no waiter counts or last pid (absent on the wire) */
        bool has_counts;
        int ncount;
        int zcount;
        pid_t pid;
} ProtoSemaphore;

/* status of a broadcast channel: one subscriber, as its cursor (proto/broadcast.h) reports it. */
typedef struct ProtoSubscription {
        pid_t pid;                           /* of its opener, as the broker sees it; 0: not known */
        uint64_t position;                   /* the next position it reads */
        uint64_t lag;                        /* head - position: published, not yet read by it */
        uint64_t dropped;                    /* what it lost (drop mode) */
} ProtoSubscription;

typedef struct ProtoClient {
        pid_t pid;
        uid_t uid;
        ProtoAccess access;
        int64_t since;                       /* seconds since the epoch */
} ProtoClient;

/*
 * One channel as the wire describes it. `open` carries the first block,
 * `list` adds owner/group/mode, `status` adds the kernel's view and holds.
 * Keys are the 32-bit System V key read as unsigned (as ipcs prints it).
 */
typedef struct ProtoChannel {
        char name[PROTO_NAME_MAX + 1];
        ProtoKind kind;
        /*
         * posix only (then the four System V key/id fields are absent on the
         * wire): the segment's name, a broadcast channel's table segment's
         * name, and one name per semaphore (nsems of them). Decoded, owned
         * (proto_channel_done()); encoded, borrowed.
         */
        char shm_name[PROTO_POSIX_NAME_MAX + 1];
        char table_name[PROTO_POSIX_NAME_MAX + 1];
        char **sem_names;
        /*
         * open of a posix channel with "fd": true only: how many descriptors
         * the answer line carries with SCM_RIGHTS, in this order: the
         * segment, a broadcast channel's table, one per semaphore file, and
         * last, when the answer names wake_fifos and two more came, those
         * FIFOs (data, space).
         */
        unsigned n_fds;
#define PROTO_FDS_MAX 66
        uint32_t shm_key;
        int shm_id;
        uint32_t sem_key;
        int sem_id;
        uint64_t size;
        unsigned nsems;
        ProtoLayout layout;
        uint32_t slot_size;                  /* ring and broadcast only */
        uint32_t slots;                      /* ring and broadcast only */
        /*
         * open of a ring or broadcast channel only: the layout version of its
         * header (proto/ring.h, proto/broadcast.h). Encoding, 0 stands for
         * this build's RING_VERSION or BCAST_VERSION, the only ones a daemon
         * writes; decoded, 0 means the answer gave none.
         */
        uint32_t ring_version;
        /*
         * open of a ring or broadcast channel only: the holder token of this
         * connection's hold, which its claims carry (proto/ring.h); of a
         * broadcast subscriber, its entry in the subscriber table too
         * (proto/broadcast.h). 0: none (on the wire: absent).
         */
        uint32_t holder;
        /*
         * open of a ring only: the paths of its wake-up FIFOs, "a message may
         * be there" and "a slot may be free" (daemon/wake.h); NULL: none.
         * Decoded, owned (proto_channel_done()); encoded, borrowed.
         */
        char *wake_fifos[2];
        /* broadcast only: the most subscribers at once, the overflow policy, and the table segment */
        uint32_t subscribers;
        ProtoOverflow overflow;
        uint32_t table_key;
        int table_id;

        char owner[PROTO_IDNAME_MAX + 1];    /* list, status */
        char group[PROTO_IDNAME_MAX + 1];
        unsigned mode;                       /* permission bits */

        uint64_t nattch;                     /* status only */
        pid_t cpid, lpid;
        int64_t atime, dtime, ctime;
        ProtoSemaphore *semaphores;
        size_t n_semaphores;
        ProtoClient *clients;
        size_t n_clients;
        ProtoSubscription *subscriptions;    /* broadcast only */
        size_t n_subscriptions;

        /*
         * status only: the daemon could not read all of this channel's kernel
         * figures. error is a positive errno (0: complete), message says what;
         * the semaphores are then absent, and with segment_unread nattch
         * through ctime too (absent on the wire, not zeros).
         */
        int error;
        char message[PROTO_MESSAGE_MAX];
        bool segment_unread;
} ProtoChannel;

typedef struct ProtoReloadResult {
        char **added, **removed, **changed, **kept;   /* NULL-terminated */
} ProtoReloadResult;

/* Which fields a channel carries on the wire. */
typedef enum ProtoChannelView {
        PROTO_VIEW_OPEN,
        PROTO_VIEW_LIST,
        PROTO_VIEW_STATUS,
} ProtoChannelView;

/* A decoded response: ok, or an error name and message. */
typedef struct ProtoResponse {
        bool ok;
        int error;                           /* positive errno when !ok */
        char error_name[32];
        char message[PROTO_MESSAGE_MAX];
        /* result fields, by op */
        int version;                         /* hello */
        char server[PROTO_CLIENT_MAX + 1];   /* hello */
        ProtoChannel *channels;              /* open: one; list, status: n */
        size_t n_channels;
        ProtoReloadResult reload;
} ProtoResponse;

/* ---- names ---- */

/* Static names ("open", "rw", "ring"); NULL for out-of-range values. */
const char *proto_op_to_string(ProtoOp op);
int proto_op_from_string(const char *s);           /* -EINVAL if unknown */
const char *proto_access_to_string(ProtoAccess a);
int proto_access_from_string(const char *s);
const char *proto_layout_to_string(ProtoLayout l);
int proto_layout_from_string(const char *s);
const char *proto_overflow_to_string(ProtoOverflow o);
int proto_overflow_from_string(const char *s);
const char *proto_kind_to_string(ProtoKind k);
int proto_kind_from_string(const char *s);

/* "ENOENT" for ENOENT; NULL for an errno without a wire name. */
const char *proto_errno_to_name(int err);
/* ENOENT for "ENOENT"; -EINVAL for an unknown name. */
int proto_errno_from_name(const char *name);

/* Channel names: 1..64 of [A-Za-z0-9._-]. */
bool proto_name_is_valid(const char *name);

/* ---- framing ---- */

/*
 * Find the first complete line in buf[0..len). Returns 1 and sets
 * *ret_line_len (without the newline; consume *ret_line_len + 1 bytes) when
 * one is there, 0 when more bytes are needed, and E2BIG (positive) when no
 * newline is within PROTO_LINE_MAX bytes: the peer broke the limit and the
 * connection must be closed.
 */
int proto_frame_next(const char *buf, size_t len, size_t *ret_line_len);

/* The same with a lower limit (at most PROTO_LINE_MAX), newline included. */
int proto_frame_next_max(const char *buf, size_t len, size_t max, size_t *ret_line_len);

/* ---- requests ---- */

/*
 * Decode one request line (without its newline). On a malformed request
 * returns a positive errno and writes a sentence naming what was wrong into
 * msg[msg_size]; *ret is then undefined. -ENOMEM on allocation failure.
 */
int proto_request_decode(const char *line, size_t len, ProtoRequest *ret,
                         char *msg, size_t msg_size);

/*
 * Encode a request as one line, newline included. *ret_line is malloc'd and
 * owned by the caller. -EINVAL if the request is not one that may be sent,
 * -ENOMEM on allocation failure.
 */
int proto_request_encode(const ProtoRequest *req, char **ret_line, size_t *ret_len);

/* ---- responses ---- */

/*
 * Encoders return one malloc'd line with its newline, owned by the caller,
 * or a negative errno (-ENOMEM; -EINVAL for an error code without a name).
 */
int proto_encode_error(int err, const char *message, char **ret_line, size_t *ret_len);
int proto_encode_hello(int version, const char *server, char **ret_line, size_t *ret_len);
int proto_encode_ok(char **ret_line, size_t *ret_len);     /* close */
int proto_encode_open(const ProtoChannel *c, char **ret_line, size_t *ret_len);
int proto_encode_channels(ProtoChannelView view, const ProtoChannel *v, size_t n,
                          char **ret_line, size_t *ret_len);   /* list, status */
int proto_encode_reload(const ProtoReloadResult *r, char **ret_line, size_t *ret_len);

/*
 * Decode the response to a request of operation `op`. Returns 0 with *ret
 * filled (free it with proto_response_done()), a positive EBADMSG/EPROTO
 * with a sentence in msg when the line is not a valid response, or -ENOMEM.
 * An `"ok": false` answer is a successful decode with ret->ok false.
 */
int proto_response_decode(ProtoOp op, const char *line, size_t len, ProtoResponse *ret,
                          char *msg, size_t msg_size);

/* Free what a decoded response or channel owns. Idempotent; takes NULL. */
void proto_response_done(ProtoResponse *r);
void proto_channel_done(ProtoChannel *c);
void proto_reload_result_done(ProtoReloadResult *r);
