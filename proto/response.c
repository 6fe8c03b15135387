/*
 * Responses: encoders for the daemon, one decoder for clients.
 *
 * Requests are strict (the daemon refuses unknown keys), but responses are
 * decoded leniently: a newer daemon may add result fields, and an older
 * client must still understand the ones it knows.
 */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/json-util.h"
#include "common/util.h"
#include "broadcast.h"
#include "proto.h"
#include "ring.h"

static int set(json_t *o, const char *key, json_t *v) {
        /* json_object_set_new() takes v even on failure; NULL v means ENOMEM. */
        return json_object_set_new(o, key, v) < 0 ? -ENOMEM : 0;
}

static json_t *json_mode(unsigned mode) {
        char buf[8];

        snprintf(buf, sizeof buf, "%04o", mode & 07777);
        return json_string(buf);
}

static json_t *semaphores_to_json(const ProtoChannel *c) {
        _cleanup_(json_decrefp) json_t *a = json_array();

        if (!a)
                return NULL;
        for (size_t i = 0; i < c->n_semaphores; i++) {
                const ProtoSemaphore *s = &c->semaphores[i];

                json_t *e = s->has_counts ?
                        json_pack("{s:i, s:i, s:i, s:i}", "value", s->value, "ncount", s->ncount,
                                  "zcount", s->zcount, "pid", (int) s->pid) :
                        json_pack("{s:i}", "value", s->value);

                if (json_array_append_new(a, e) < 0)
                        return NULL;
        }
        return TAKE_PTR(a);
}

static json_t *clients_to_json(const ProtoChannel *c) {
        _cleanup_(json_decrefp) json_t *a = json_array();

        if (!a)
                return NULL;
        for (size_t i = 0; i < c->n_clients; i++) {
                const ProtoClient *cl = &c->clients[i];

                if (json_array_append_new(a, json_pack("{s:i, s:I, s:s, s:I}", "pid", (int) cl->pid,
                                                       "uid", (json_int_t) cl->uid,
                                                       "access", proto_access_to_string(cl->access),
                                                       "since", (json_int_t) cl->since)) < 0)
                        return NULL;
        }
        return TAKE_PTR(a);
}

static json_t *subscriptions_to_json(const ProtoChannel *c) {
        _cleanup_(json_decrefp) json_t *a = json_array();

        if (!a)
                return NULL;
        for (size_t i = 0; i < c->n_subscriptions; i++) {
                const ProtoSubscription *s = &c->subscriptions[i];

                /* Positions are 64-bit counters; JSON integers here are signed 64-bit: clamp, never wrap. */
                if (json_array_append_new(a, json_pack("{s:i, s:I, s:I, s:I}", "pid", (int) s->pid,
                                                       "position", (json_int_t) MIN(s->position, (uint64_t) INT64_MAX),
                                                       "lag", (json_int_t) MIN(s->lag, (uint64_t) INT64_MAX),
                                                       "dropped", (json_int_t) MIN(s->dropped, (uint64_t) INT64_MAX))) < 0)
                        return NULL;
        }
        return TAKE_PTR(a);
}

/*
 * The status fields. What the daemon could not read is left out rather than
 * sent as zeros (a zero semaphore is a real value); the entry then says why
 * in "error" and "message", as an error answer would.
 */
static int status_to_json(const ProtoChannel *c, json_t *o) {
        const char *name = NULL;
        json_t *m;

        if (c->error) {
                name = proto_errno_to_name(c->error);
                if (!name)
                        return -EINVAL;
        }
        /* A POSIX segment is a file: the kernel keeps no attach count, creator or times for it. */
        if (c->kind == PROTO_KIND_SYSV && !(c->error && c->segment_unread) &&
            (set(o, "nattch", json_integer((json_int_t) c->nattch)) < 0 ||
             set(o, "cpid", json_integer(c->cpid)) < 0 ||
             set(o, "lpid", json_integer(c->lpid)) < 0 ||
             set(o, "atime", json_integer(c->atime)) < 0 ||
             set(o, "dtime", json_integer(c->dtime)) < 0 ||
             set(o, "ctime", json_integer(c->ctime)) < 0))
                return -ENOMEM;
        if (!c->error && set(o, "semaphores", semaphores_to_json(c)) < 0)
                return -ENOMEM;
        if (set(o, "clients", clients_to_json(c)) < 0)
                return -ENOMEM;
        if (c->layout == PROTO_LAYOUT_BROADCAST && set(o, "subscriptions", subscriptions_to_json(c)) < 0)
                return -ENOMEM;
        if (!c->error)
                return 0;
        /* As in proto_encode_error(): a message that is not UTF-8 must not cost the answer. */
        m = json_message_string(c->message);
        if (!m)
                m = json_string(name);
        if (set(o, "error", json_string(name)) < 0 || set(o, "message", m) < 0)
                return -ENOMEM;
        return 0;
}

static json_t *sem_names_to_json(const ProtoChannel *c) {
        _cleanup_(json_decrefp) json_t *a = json_array();

        if (!a)
                return NULL;
        for (unsigned i = 0; i < c->nsems; i++)
                if (!c->sem_names || !c->sem_names[i] ||
                    json_array_append_new(a, json_string(c->sem_names[i])) < 0)
                        return NULL;
        return TAKE_PTR(a);
}

/* The kernel objects' names: keys and ids for System V, shm_open()/sem_open() names for POSIX. */
static int objects_to_json(const ProtoChannel *c, json_t *o) {
        if (c->kind == PROTO_KIND_SYSV)
                return set(o, "shm_key", json_integer((json_int_t) c->shm_key)) < 0 ||
                       set(o, "shm_id", json_integer(c->shm_id)) < 0 ||
                       set(o, "sem_key", json_integer((json_int_t) c->sem_key)) < 0 ||
                       set(o, "sem_id", json_integer(c->sem_id)) < 0 ? -ENOMEM : 0;
        if (c->shm_name[0] != '/')
                return -EINVAL;
        return set(o, "shm_name", json_string(c->shm_name)) < 0 ||
               set(o, "sem_names", sem_names_to_json(c)) < 0 ? -ENOMEM : 0;
}

/*
 * c's members for view, added to o in their order. Member by member, not
 * with json_pack(), whose format parsing (and an object merged into the
 * open answer after its "ok") cost every open answer several thousand
 * instructions.
 */
static int channel_fill_json(ProtoChannelView view, const ProtoChannel *c, json_t *o) {
        const char *layout = proto_layout_to_string(c->layout);
        const char *kind = proto_kind_to_string(c->kind);
        int r;

        if (!layout || !kind)
                return -EINVAL;
        if (set(o, view == PROTO_VIEW_OPEN ? "channel" : "name", json_string(c->name)) < 0 ||
            set(o, "kind", json_string(kind)) < 0 ||
            set(o, "size", json_integer((json_int_t) c->size)) < 0 ||
            set(o, "nsems", json_integer((json_int_t) c->nsems)) < 0 ||
            set(o, "layout", json_string(layout)) < 0)
                return -ENOMEM;
        r = objects_to_json(c, o);
        if (r < 0)
                return r;
        if ((c->layout == PROTO_LAYOUT_RING || c->layout == PROTO_LAYOUT_BROADCAST) &&
            (set(o, "slot_size", json_integer(c->slot_size)) < 0 ||
             set(o, "slots", json_integer(c->slots)) < 0))
                return -ENOMEM;
        if (c->layout == PROTO_LAYOUT_BROADCAST) {
                const char *overflow = proto_overflow_to_string(c->overflow);

                if (!overflow)
                        return -EINVAL;
                if (set(o, "subscribers", json_integer(c->subscribers)) < 0 ||
                    set(o, "overflow", json_string(overflow)) < 0)
                        return -ENOMEM;
                if (c->kind == PROTO_KIND_SYSV &&
                    (set(o, "table_key", json_integer((json_int_t) c->table_key)) < 0 ||
                     set(o, "table_id", json_integer(c->table_id)) < 0))
                        return -ENOMEM;
                if (c->kind == PROTO_KIND_POSIX && set(o, "table_name", json_string(c->table_name)) < 0)
                        return -ENOMEM;
        }
        /* Only where a client is about to map the ring: list and status describe, they do not hand out. */
        if (c->layout == PROTO_LAYOUT_RING && view == PROTO_VIEW_OPEN &&
            set(o, "ring_version", json_integer(c->ring_version ?: RING_VERSION)) < 0)
                return -ENOMEM;
        if (c->layout == PROTO_LAYOUT_BROADCAST && view == PROTO_VIEW_OPEN &&
            set(o, "ring_version", json_integer(c->ring_version ?: BCAST_VERSION)) < 0)
                return -ENOMEM;
        /* This connection's token: only an open hands one out, and only when its hold has one. */
        if (view == PROTO_VIEW_OPEN && c->holder != 0 && set(o, "holder", json_integer(c->holder)) < 0)
                return -ENOMEM;
        if (view == PROTO_VIEW_OPEN && c->n_fds > 0 && set(o, "fds", json_integer(c->n_fds)) < 0)
                return -ENOMEM;
        if (view == PROTO_VIEW_OPEN && c->wake_fifos[0] && c->wake_fifos[1] &&
            set(o, "wake_fifos", json_pack("[s, s]", c->wake_fifos[0], c->wake_fifos[1])) < 0)
                return -ENOMEM;
        if (view != PROTO_VIEW_OPEN &&
            (set(o, "owner", json_string(c->owner)) < 0 ||
             set(o, "group", json_string(c->group)) < 0 ||
             set(o, "mode", json_mode(c->mode)) < 0))
                return -ENOMEM;
        if (view == PROTO_VIEW_STATUS) {
                r = status_to_json(c, o);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int channel_to_json(ProtoChannelView view, const ProtoChannel *c, json_t **ret) {
        _cleanup_(json_decrefp) json_t *o = json_object();
        int r;

        if (!o)
                return -ENOMEM;
        r = channel_fill_json(view, c, o);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(o);
        return 0;
}

int proto_encode_error(int err, const char *message, char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = NULL;
        const char *name = proto_errno_to_name(err);
        json_t *m;

        if (!name)
                return -EINVAL;
        /* A message cut inside a character (it may quote the peer's bytes) keeps its words. */
        m = message ? json_message_string(message) : NULL;
        if (!m)
                m = json_string(name);
        /* "o" steals m, even when packing fails. */
        o = json_pack("{s:b, s:s, s:o}", "ok", 0, "error", name, "message", m);
        if (!o)
                return -ENOMEM;
        return json_dump_line(o, ret_line, ret_len);
}

int proto_encode_hello(int version, const char *server, char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = json_pack("{s:b, s:i, s:s}", "ok", 1, "version", version,
                                                      "server", server);

        if (!o)
                return -ENOMEM;
        return json_dump_line(o, ret_line, ret_len);
}

int proto_encode_ok(char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = json_pack("{s:b}", "ok", 1);

        if (!o)
                return -ENOMEM;
        return json_dump_line(o, ret_line, ret_len);
}

int proto_encode_open(const ProtoChannel *c, char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = json_object();
        int r;

        /* "ok" first, as in every other answer: easier to read on a terminal. */
        if (!o || set(o, "ok", json_true()) < 0)
                return -ENOMEM;
        r = channel_fill_json(PROTO_VIEW_OPEN, c, o);
        if (r < 0)
                return r;
        return json_dump_line(o, ret_line, ret_len);
}

int proto_encode_channels(ProtoChannelView view, const ProtoChannel *v, size_t n,
                          char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = NULL;
        json_t *a = json_array();
        int r;

        o = json_pack("{s:b, s:o}", "ok", 1, "channels", a);
        if (!o)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_t *c;

                r = channel_to_json(view, &v[i], &c);
                if (r < 0)
                        return r;
                if (json_array_append_new(a, c) < 0)
                        return -ENOMEM;
        }
        return json_dump_line(o, ret_line, ret_len);
}

static json_t *names_to_json(char **names) {
        _cleanup_(json_decrefp) json_t *a = json_array();

        if (!a)
                return NULL;
        for (char **n = names; n && *n; n++)
                if (json_array_append_new(a, json_string(*n)) < 0)
                        return NULL;
        return TAKE_PTR(a);
}

int proto_encode_reload(const ProtoReloadResult *res, char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = json_pack("{s:b}", "ok", 1);

        if (!o ||
            set(o, "added", names_to_json(res->added)) < 0 ||
            set(o, "removed", names_to_json(res->removed)) < 0 ||
            set(o, "changed", names_to_json(res->changed)) < 0 ||
            set(o, "kept", names_to_json(res->kept)) < 0)
                return -ENOMEM;
        return json_dump_line(o, ret_line, ret_len);
}

/* ---- decoding ---- */

static int bad(char *msg, size_t msg_size, const char *what) {
        msg_set(msg, msg_size, "malformed response: %s", what);
        return EBADMSG;
}

static int get_int(json_t *o, const char *key, int64_t min, int64_t max, int64_t *ret,
                   char *msg, size_t msg_size) {
        json_t *v = json_object_get(o, key);
        char why[PROTO_MESSAGE_MAX];

        if (!v) {
                snprintf(why, sizeof why, "missing \"%s\"", key);
                return bad(msg, msg_size, why);
        }
        if (json_field_int(v, key, min, max, ret, why, sizeof why))
                return bad(msg, msg_size, why);
        return 0;
}

static int get_str(json_t *o, const char *key, char *dst, size_t size, char *msg, size_t msg_size) {
        json_t *v = json_object_get(o, key);
        char why[PROTO_MESSAGE_MAX];
        const char *s;

        if (!v) {
                snprintf(why, sizeof why, "missing \"%s\"", key);
                return bad(msg, msg_size, why);
        }
        if (json_field_string(v, key, &s, why, sizeof why))
                return bad(msg, msg_size, why);
        if (strcpy_checked(dst, size, s) < 0) {
                snprintf(why, sizeof why, "\"%s\" is too long", key);
                return bad(msg, msg_size, why);
        }
        return 0;
}

/* Optional: absent is none; else two absolute paths. */
static int get_wake_fifos(json_t *o, ProtoChannel *c, char *msg, size_t msg_size) {
        json_t *v = json_object_get(o, "wake_fifos");

        if (!v)
                return 0;
        if (!json_is_array(v) || json_array_size(v) != 2)
                return bad(msg, msg_size, "\"wake_fifos\" must be an array of two paths");
        for (size_t i = 0; i < 2; i++) {
                const char *p = json_string_value(json_array_get(v, i));

                if (!p || p[0] != '/' || strlen(p) >= PATH_MAX)
                        return bad(msg, msg_size, "\"wake_fifos\" must be an array of two absolute paths");
                c->wake_fifos[i] = strdup(p);
                if (!c->wake_fifos[i])
                        return -ENOMEM;
        }
        return 0;
}

/* Absent: a broker before POSIX channels, so System V. */
static int kind_from_json(json_t *o, ProtoChannel *c, char *msg, size_t msg_size) {
        char kind[16];
        int r;

        if (!json_object_get(o, "kind")) {
                c->kind = PROTO_KIND_SYSV;
                return 0;
        }
        r = get_str(o, "kind", kind, sizeof kind, msg, msg_size);
        if (r)
                return r;
        r = proto_kind_from_string(kind);
        if (r < 0)
                return bad(msg, msg_size, "unknown \"kind\"");
        c->kind = (ProtoKind) r;
        return 0;
}

/* A name as shm_open()/sem_open() take it: one leading slash and no other. */
static int posix_name_from_json(json_t *o, const char *key, char dst[PROTO_POSIX_NAME_MAX + 1],
                                char *msg, size_t msg_size) {
        char why[64];
        int r;

        r = get_str(o, key, dst, PROTO_POSIX_NAME_MAX + 1, msg, msg_size);
        if (r)
                return r;
        if (dst[0] != '/' || strchr(dst + 1, '/') || !dst[1] || strcmp(dst, "/.") == 0 || strcmp(dst, "/..") == 0) {
                snprintf(why, sizeof why, "\"%s\" must be a POSIX object name", key);
                return bad(msg, msg_size, why);
        }
        return 0;
}

static int sem_names_from_json(json_t *o, ProtoChannel *c, char *msg, size_t msg_size) {
        json_t *a = json_object_get(o, "sem_names");
        size_t i;
        json_t *e;

        if (!json_is_array(a) || json_array_size(a) != c->nsems)
                return bad(msg, msg_size, "\"sem_names\" must be an array of \"nsems\" names");
        c->sem_names = calloc(c->nsems + 1, sizeof *c->sem_names);
        if (!c->sem_names)
                return -ENOMEM;
        json_array_foreach(a, i, e) {
                const char *p = json_string_value(e);

                if (!p || p[0] != '/' || strchr(p + 1, '/') || strlen(p) > PROTO_POSIX_NAME_MAX)
                        return bad(msg, msg_size, "\"sem_names\" must hold POSIX object names");
                c->sem_names[i] = strdup(p);
                if (!c->sem_names[i])
                        return -ENOMEM;
        }
        return 0;
}

#define GET_INT(o, key, min, max, dst)                                          \
        do {                                                                    \
                int64_t _v;                                                     \
                int _r = get_int(o, key, min, max, &_v, msg, msg_size);        \
                if (_r)                                                         \
                        return _r;                                              \
                (dst) = _v;                                                     \
        } while (0)

static int semaphores_from_json(json_t *a, ProtoChannel *c, char *msg, size_t msg_size) {
        size_t i;
        json_t *e;

        if (!json_is_array(a))
                return bad(msg, msg_size, "\"semaphores\" must be an array");
        c->semaphores = calloc(json_array_size(a) ?: 1, sizeof *c->semaphores);
        if (!c->semaphores)
                return -ENOMEM;
        json_array_foreach(a, i, e) {
                ProtoSemaphore *s = &c->semaphores[i];

                c->n_semaphores++;
                GET_INT(e, "value", 0, INT32_MAX, s->value);
                /* A POSIX semaphore has its value only. */
                if (c->kind == PROTO_KIND_POSIX)
                        continue;
                s->has_counts = true;
                GET_INT(e, "ncount", 0, INT32_MAX, s->ncount);
                GET_INT(e, "zcount", 0, INT32_MAX, s->zcount);
                GET_INT(e, "pid", 0, INT32_MAX, s->pid);
        }
        return 0;
}

static int clients_from_json(json_t *a, ProtoChannel *c, char *msg, size_t msg_size) {
        size_t i;
        json_t *e;
        char access[8];

        if (!json_is_array(a))
                return bad(msg, msg_size, "\"clients\" must be an array");
        c->clients = calloc(json_array_size(a) ?: 1, sizeof *c->clients);
        if (!c->clients)
                return -ENOMEM;
        json_array_foreach(a, i, e) {
                ProtoClient *cl = &c->clients[i];
                int r;

                GET_INT(e, "pid", 0, INT32_MAX, cl->pid);
                GET_INT(e, "uid", 0, UINT32_MAX, cl->uid);
                GET_INT(e, "since", INT64_MIN, INT64_MAX, cl->since);
                r = get_str(e, "access", access, sizeof access, msg, msg_size);
                if (r)
                        return r;
                r = proto_access_from_string(access);
                if (r < 0)
                        return bad(msg, msg_size, "unknown \"access\"");
                cl->access = (ProtoAccess) r;
                c->n_clients++;
        }
        return 0;
}

static int subscriptions_from_json(json_t *a, ProtoChannel *c, char *msg, size_t msg_size) {
        size_t i;
        json_t *e;

        if (!json_is_array(a))
                return bad(msg, msg_size, "\"subscriptions\" must be an array");
        c->subscriptions = calloc(json_array_size(a) ?: 1, sizeof *c->subscriptions);
        if (!c->subscriptions)
                return -ENOMEM;
        json_array_foreach(a, i, e) {
                ProtoSubscription *s = &c->subscriptions[i];

                GET_INT(e, "pid", 0, INT32_MAX, s->pid);
                GET_INT(e, "position", 0, INT64_MAX, s->position);
                GET_INT(e, "lag", 0, INT64_MAX, s->lag);
                GET_INT(e, "dropped", 0, INT64_MAX, s->dropped);
                c->n_subscriptions++;
        }
        return 0;
}

/* A status entry's own "error" and "message", when the daemon could not read all its figures. */
static int entry_error_from_json(json_t *o, ProtoChannel *c, char *msg, size_t msg_size) {
        json_t *m = json_object_get(o, "message");
        char name[32];
        int r;

        if (!json_object_get(o, "error"))
                return 0;
        r = get_str(o, "error", name, sizeof name, msg, msg_size);
        if (r)
                return r;
        if (!json_is_string(m))
                return bad(msg, msg_size, "a channel's \"message\" must be a string");
        /* As for whole answers: a long message is cut, a name we do not know is still an error (EIO). */
        snprintf(c->message, sizeof c->message, "%s", json_string_value(m));
        r = proto_errno_from_name(name);
        c->error = r > 0 ? r : EIO;
        return 0;
}

static int channel_from_json(ProtoChannelView view, json_t *o, ProtoChannel *c, char *msg, size_t msg_size) {
        char layout[16], mode[8], overflow[16];
        char *end;
        int r;

        if (!json_is_object(o))
                return bad(msg, msg_size, "a channel must be an object");
        r = get_str(o, view == PROTO_VIEW_OPEN ? "channel" : "name", c->name, sizeof c->name, msg, msg_size);
        if (r)
                return r;
        if (!proto_name_is_valid(c->name))
                return bad(msg, msg_size, "a channel's name must be 1-64 of A-Z a-z 0-9 . _ -");
        r = kind_from_json(o, c, msg, msg_size);
        if (r)
                return r;
        GET_INT(o, "size", 1, INT64_MAX, c->size);
        GET_INT(o, "nsems", 0, UINT32_MAX, c->nsems);
        if (c->kind == PROTO_KIND_SYSV) {
                GET_INT(o, "shm_key", 0, UINT32_MAX, c->shm_key);
                GET_INT(o, "shm_id", 0, INT32_MAX, c->shm_id);
                GET_INT(o, "sem_key", 0, UINT32_MAX, c->sem_key);
                GET_INT(o, "sem_id", 0, INT32_MAX, c->sem_id);
        } else {
                c->shm_id = c->sem_id = c->table_id = -1;
                r = posix_name_from_json(o, "shm_name", c->shm_name, msg, msg_size);
                if (r == 0)
                        r = sem_names_from_json(o, c, msg, msg_size);
                if (r)
                        return r;
        }
        r = get_str(o, "layout", layout, sizeof layout, msg, msg_size);
        if (r)
                return r;
        r = proto_layout_from_string(layout);
        if (r < 0)
                return bad(msg, msg_size, "unknown \"layout\"");
        c->layout = (ProtoLayout) r;
        if (c->layout == PROTO_LAYOUT_RING || c->layout == PROTO_LAYOUT_BROADCAST) {
                GET_INT(o, "slot_size", 1, UINT32_MAX, c->slot_size);
                GET_INT(o, "slots", 1, UINT32_MAX, c->slots);
                /* Optional here, as a broker before ring layout 3 sent none: the library judges it. */
                if (json_object_get(o, "ring_version"))
                        GET_INT(o, "ring_version", 1, UINT32_MAX, c->ring_version);
        }
        if (c->layout == PROTO_LAYOUT_BROADCAST) {
                GET_INT(o, "subscribers", 1, UINT32_MAX, c->subscribers);
                if (c->kind == PROTO_KIND_SYSV) {
                        GET_INT(o, "table_key", 0, UINT32_MAX, c->table_key);
                        GET_INT(o, "table_id", 0, INT32_MAX, c->table_id);
                } else {
                        r = posix_name_from_json(o, "table_name", c->table_name, msg, msg_size);
                        if (r)
                                return r;
                }
                r = get_str(o, "overflow", overflow, sizeof overflow, msg, msg_size);
                if (r)
                        return r;
                r = proto_overflow_from_string(overflow);
                if (r < 0)
                        return bad(msg, msg_size, "unknown \"overflow\"");
                c->overflow = (ProtoOverflow) r;
        }
        if (view == PROTO_VIEW_OPEN) {
                /* Absent: no token (a raw channel, a ro open, or a broker before ring layout 4). */
                if (json_object_get(o, "holder"))
                        GET_INT(o, "holder", 1, UINT32_MAX, c->holder);
                if (json_object_get(o, "fds"))
                        GET_INT(o, "fds", 1, PROTO_FDS_MAX, c->n_fds);
                return get_wake_fifos(o, c, msg, msg_size);
        }

        r = get_str(o, "owner", c->owner, sizeof c->owner, msg, msg_size);
        if (r == 0)
                r = get_str(o, "group", c->group, sizeof c->group, msg, msg_size);
        if (r == 0)
                r = get_str(o, "mode", mode, sizeof mode, msg, msg_size);
        if (r)
                return r;
        errno = 0;
        c->mode = (unsigned) strtoul(mode, &end, 8);
        if (errno || *end || end == mode || c->mode > 07777)
                return bad(msg, msg_size, "\"mode\" must be an octal string");
        if (view == PROTO_VIEW_LIST)
                return 0;

        r = entry_error_from_json(o, c, msg, msg_size);
        if (r)
                return r;
        /* An entry with an error may lack the figures the daemon could not read; any other may not. */
        if (c->kind == PROTO_KIND_POSIX || (c->error && !json_object_get(o, "nattch")))
                c->segment_unread = true;
        else {
                GET_INT(o, "nattch", 0, INT64_MAX, c->nattch);
                GET_INT(o, "cpid", 0, INT32_MAX, c->cpid);
                GET_INT(o, "lpid", 0, INT32_MAX, c->lpid);
                GET_INT(o, "atime", INT64_MIN, INT64_MAX, c->atime);
                GET_INT(o, "dtime", INT64_MIN, INT64_MAX, c->dtime);
                GET_INT(o, "ctime", INT64_MIN, INT64_MAX, c->ctime);
        }
        if (!c->error || json_object_get(o, "semaphores")) {
                r = semaphores_from_json(json_object_get(o, "semaphores"), c, msg, msg_size);
                if (r)
                        return r;
        }
        /* Absent from a broker before broadcast channels, and from other layouts. */
        if (json_object_get(o, "subscriptions")) {
                r = subscriptions_from_json(json_object_get(o, "subscriptions"), c, msg, msg_size);
                if (r)
                        return r;
        }
        return clients_from_json(json_object_get(o, "clients"), c, msg, msg_size);
}

static int names_from_json(json_t *o, const char *key, char ***ret, char *msg, size_t msg_size) {
        json_t *a = json_object_get(o, key), *e;
        char **v;
        size_t i;

        if (!json_is_array(a)) {
                char why[64];

                snprintf(why, sizeof why, "\"%s\" must be an array", key);
                return bad(msg, msg_size, why);
        }
        v = calloc(json_array_size(a) + 1, sizeof *v);
        if (!v)
                return -ENOMEM;
        *ret = v;       /* owned by the result from here; freed by proto_reload_result_done() */
        json_array_foreach(a, i, e) {
                if (!json_is_string(e))
                        return bad(msg, msg_size, "channel names must be strings");
                /* Printed as they come (shmbrokerctl): a name with a control character could forge a row. */
                if (!proto_name_is_valid(json_string_value(e)))
                        return bad(msg, msg_size, "channel names must be 1-64 of A-Z a-z 0-9 . _ -");
                v[i] = strdup(json_string_value(e));
                if (!v[i])
                        return -ENOMEM;
        }
        return 0;
}

static int decode_result(ProtoOp op, json_t *root, ProtoResponse *res, char *msg, size_t msg_size) {
        ProtoChannelView view = op == PROTO_OP_STATUS ? PROTO_VIEW_STATUS : PROTO_VIEW_LIST;
        json_t *a, *e;
        size_t i;
        int r;

        switch (op) {
        case PROTO_OP_HELLO:
                GET_INT(root, "version", 0, INT32_MAX, res->version);
                return get_str(root, "server", res->server, sizeof res->server, msg, msg_size);
        case PROTO_OP_OPEN:
                res->channels = calloc(1, sizeof *res->channels);
                if (!res->channels)
                        return -ENOMEM;
                res->n_channels = 1;
                return channel_from_json(PROTO_VIEW_OPEN, root, res->channels, msg, msg_size);
        case PROTO_OP_LIST:
        case PROTO_OP_STATUS:
                a = json_object_get(root, "channels");
                if (!json_is_array(a))
                        return bad(msg, msg_size, "\"channels\" must be an array");
                res->channels = calloc(json_array_size(a) ?: 1, sizeof *res->channels);
                if (!res->channels)
                        return -ENOMEM;
                json_array_foreach(a, i, e) {
                        res->n_channels++;
                        r = channel_from_json(view, e, &res->channels[i], msg, msg_size);
                        if (r)
                                return r;
                }
                return 0;
        case PROTO_OP_RELOAD:
                r = names_from_json(root, "added", &res->reload.added, msg, msg_size);
                if (r == 0)
                        r = names_from_json(root, "removed", &res->reload.removed, msg, msg_size);
                if (r == 0)
                        r = names_from_json(root, "changed", &res->reload.changed, msg, msg_size);
                if (r == 0)
                        r = names_from_json(root, "kept", &res->reload.kept, msg, msg_size);
                return r;
        default:
                return 0;
        }
}

int proto_response_decode(ProtoOp op, const char *line, size_t len, ProtoResponse *ret,
                          char *msg, size_t msg_size) {
        _cleanup_(json_decrefp) json_t *root = NULL;
        ProtoResponse res = {};
        json_error_t jerr;
        json_t *ok;
        int r;

        if ((unsigned) op >= _PROTO_OP_MAX)
                return -EINVAL;
        root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                msg_set(msg, msg_size, "malformed response: %s at column %d", jerr.text, jerr.column);
                return EBADMSG;
        }
        ok = json_object_get(root, "ok");
        if (!json_is_boolean(ok))
                return bad(msg, msg_size, "\"ok\" must be a boolean");
        res.ok = json_is_true(ok);
        if (!res.ok) {
                json_t *m = json_object_get(root, "message");

                r = get_str(root, "error", res.error_name, sizeof res.error_name, msg, msg_size);
                if (r)
                        return r;
                /* Messages are for humans: a long one is cut to fit, never refused. */
                if (!json_is_string(m))
                        return bad(msg, msg_size, "\"message\" must be a string");
                snprintf(res.message, sizeof res.message, "%s", json_string_value(m));
                r = proto_errno_from_name(res.error_name);
                /* A name we do not know is still a refusal: EIO, as the daemon names an errno it has no name for. */
                res.error = r > 0 ? r : EIO;
                *ret = res;
                return 0;
        }

        r = decode_result(op, root, &res, msg, msg_size);
        if (r) {
                proto_response_done(&res);
                return r;
        }
        *ret = res;
        return 0;
}

void proto_channel_done(ProtoChannel *c) {
        if (!c)
                return;
        free(c->wake_fifos[0]);
        free(c->wake_fifos[1]);
        c->wake_fifos[0] = c->wake_fifos[1] = NULL;
        strv_free(c->sem_names);
        c->sem_names = NULL;
        free(c->semaphores);
        free(c->clients);
        free(c->subscriptions);
        c->semaphores = NULL;
        c->clients = NULL;
        c->subscriptions = NULL;
        c->n_semaphores = c->n_clients = c->n_subscriptions = 0;
}

void proto_reload_result_done(ProtoReloadResult *r) {
        if (!r)
                return;
        strv_free(r->added);
        strv_free(r->removed);
        strv_free(r->changed);
        strv_free(r->kept);
        *r = (ProtoReloadResult) {};
}

void proto_response_done(ProtoResponse *r) {
        if (!r)
                return;
        for (size_t i = 0; i < r->n_channels; i++)
                proto_channel_done(&r->channels[i]);
        free(r->channels);
        r->channels = NULL;
        r->n_channels = 0;
        proto_reload_result_done(&r->reload);
}
