/*
 * Config loading. The file is parsed with jansson and every object is
 * unpacked with "!", so an unknown key (a typo) is an error, never ignored.
 * Each value is then checked by hand so that the message names the file,
 * the channel and the key. User and group names are resolved here, so
 * --check-config fails on an unknown group just as a start would.
 */

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "common/json-util.h"
#include "common/util.h"
#include "daemon/config.h"
#include "daemon/self.h"
#include "proto/broadcast.h"
#include "proto/ring.h"

/* Where a message is about: the file, and the channel when there is one. */
typedef struct Ctx {
        const char *source;
        const char *channel;    /* NULL at top level */
        size_t index;
        char *msg;
        size_t msg_size;
} Ctx;

_printf_(2, 3)
static int fail(Ctx *ctx, const char *fmt, ...) {
        char why[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        if (ctx->channel)
                msg_set(ctx->msg, ctx->msg_size, "%s: channel \"%s\" (channels[%zu]): %s",
                        ctx->source, ctx->channel, ctx->index, why);
        else
                msg_set(ctx->msg, ctx->msg_size, "%s: %s", ctx->source, why);
        return EINVAL;
}

/* Run a json-util check and wrap its sentence with the file and channel. */
#define CHECK_FIELD(ctx, call)                                         \
        do {                                                           \
                char _why[256];                                        \
                char *msg = _why;                                      \
                size_t msg_size = sizeof _why;                         \
                if (call)                                              \
                        return fail(ctx, "%s", _why);                  \
                (void) msg; (void) msg_size;                           \
        } while (0)

static int parse_uint_str(const char *s, int base, uint64_t max, uint64_t *ret) {
        char *end;
        unsigned long long v;

        /* strtoull() would skip any leading white space and accept a sign. */
        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, base);
        if (errno || *end || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* "1048576", "64K", "16M", "2G" (binary multiples). */
static int parse_size_str(const char *s, uint64_t *ret) {
        static const char suffixes[] = "KMGT";
        char digits[32];
        size_t n = strlen(s);
        uint64_t v, mult = 1;
        const char *p;

        if (n == 0 || n >= sizeof digits)
                return -EINVAL;
        memcpy(digits, s, n + 1);
        p = n > 1 ? strchr(suffixes, digits[n - 1]) : NULL;
        if (p && *p) {
                mult = UINT64_C(1) << (10 * (p - suffixes + 1));
                digits[n - 1] = 0;
        }
        if (parse_uint_str(digits, 10, INT64_MAX / mult, &v) < 0)
                return -EINVAL;
        *ret = v * mult;
        return 0;
}

static int parse_size(Ctx *ctx, json_t *v, uint64_t *ret) {
        int64_t i;
        const char *s;

        if (json_is_string(v)) {
                s = json_string_value(v);
                if (parse_size_str(s, ret) < 0 || *ret == 0)
                        return fail(ctx, "\"size\" must be a positive byte count like 1048576 or \"64K\", not \"%s\"", s);
                return 0;
        }
        CHECK_FIELD(ctx, json_field_int(v, "size", 1, INT64_MAX, &i, msg, msg_size));
        *ret = (uint64_t) i;
        return 0;
}

static int parse_semaphores(Ctx *ctx, json_t *v, unsigned reserved, unsigned short **ret_values,
                            unsigned *ret_n) {
        _cleanup_(freep) unsigned short *values = NULL;
        size_t n, i;
        json_t *e;
        int64_t x;

        if (json_is_array(v)) {
                n = json_array_size(v);
                if (n == 0 && reserved == 0)
                        return fail(ctx, "\"semaphores\" must not be empty");
        } else {
                CHECK_FIELD(ctx, json_field_int(v, "semaphores", reserved ? 0 : 1,
                                                CONFIG_NSEMS_MAX - reserved, &x, msg, msg_size));
                n = (size_t) x;
        }
        if (n + reserved > CONFIG_NSEMS_MAX)
                return fail(ctx, "\"semaphores\" has %zu entries, at most %u are allowed",
                            n, CONFIG_NSEMS_MAX - reserved);
        values = calloc(n + reserved, sizeof *values);
        if (!values)
                return -ENOMEM;
        if (json_is_array(v))
                json_array_foreach(v, i, e) {
                        char key[48];

                        snprintf(key, sizeof key, "semaphores[%zu]", i);
                        CHECK_FIELD(ctx, json_field_int(e, key, 0, CONFIG_SEMVMX, &x, msg, msg_size));
                        values[reserved + i] = (unsigned short) x;
                }
        *ret_values = TAKE_PTR(values);
        *ret_n = (unsigned) (n + reserved);
        return 0;
}

static int resolve_id(Ctx *ctx, json_t *v, const char *key, bool group, uint32_t *ret) {
        const char *s;
        uint64_t id;
        int64_t i;

        if (json_is_integer(v)) {
                CHECK_FIELD(ctx, json_field_int(v, key, 0, UINT32_MAX - 1, &i, msg, msg_size));
                *ret = (uint32_t) i;
                return 0;
        }
        CHECK_FIELD(ctx, json_field_string(v, key, &s, msg, msg_size));
        if (parse_uint_str(s, 10, UINT32_MAX - 1, &id) == 0) {
                *ret = (uint32_t) id;
                return 0;
        }
        errno = 0;
        if (group) {
                struct group *g = getgrnam(s);

                if (g) {
                        *ret = g->gr_gid;
                        return 0;
                }
        } else {
                struct passwd *p = getpwnam(s);

                if (p) {
                        *ret = p->pw_uid;
                        return 0;
                }
        }
        if (errno == ENOMEM)
                return -ENOMEM;
        return fail(ctx, "\"%s\": unknown %s \"%s\"", key, group ? "group" : "user", s);
}

static int parse_mode(Ctx *ctx, json_t *v, const char *key, mode_t *ret) {
        const char *s;
        uint64_t m;

        CHECK_FIELD(ctx, json_field_string(v, key, &s, msg, msg_size));
        if (strlen(s) > 4 || parse_uint_str(s, 8, 0777, &m) < 0)
                return fail(ctx, "\"%s\" must be an octal string of permission bits like \"0660\", not \"%s\"", key, s);
        *ret = (mode_t) m;
        return 0;
}

/*
 * "key": {"ftok": [PATH, PROJ]}: the key that programs computing theirs with
 * ftok(3) use, computed now, so that --check-config already fails on a
 * missing file. ftok() keeps only PROJ's low 8 bits: 1-255, as 0 would not
 * be what those programs pass.
 */
static int parse_ftok_key(Ctx *ctx, json_t *v, ChannelSpec *c) {
        const char *path;
        json_error_t jerr;
        char why[256];
        json_int_t proj;
        key_t k;

        if (json_unpack_ex(v, &jerr, JSON_STRICT, "{s:[sI]}", "ftok", &path, &proj) < 0) {
                json_unpack_message(&jerr, why, sizeof why);
                return fail(ctx, "\"key\" must be an integer or {\"ftok\": [PATH, PROJ]}: %s", why);
        }
        if (proj < 1 || proj > 255)
                return fail(ctx, "\"key\": the ftok project id must be 1-255, not %" PRIdMAX, (intmax_t) proj);
        if (path[0] != '/')
                return fail(ctx, "\"key\": the ftok path must be absolute, not \"%.200s\"", path);
        k = ftok(path, (int) proj);
        if (k == (key_t) -1)
                return fail(ctx, "\"key\": ftok(\"%.200s\", %d): %s", path, (int) proj, strerror(errno));
        if (k == IPC_PRIVATE)
                return fail(ctx, "\"key\": ftok(\"%.200s\", %d) gives key 0, which is IPC_PRIVATE", path, (int) proj);
        c->key = (uint32_t) k;
        c->ftok_path = strdup(path);
        if (!c->ftok_path)
                return -ENOMEM;
        c->ftok_proj = (int) proj;
        return 0;
}

/* A broadcast channel's own keys; slot_size and slots are parsed already. */
static int parse_broadcast(Ctx *ctx, json_t *jsubscribers, json_t *joverflow, ChannelSpec *c) {
        const char *s;
        int64_t i;
        int r;

        c->subscribers = CONFIG_DEFAULT_SUBSCRIBERS;
        if (jsubscribers) {
                CHECK_FIELD(ctx, json_field_int(jsubscribers, "subscribers", 1, BCAST_SUBSCRIBERS_MAX, &i, msg, msg_size));
                c->subscribers = (uint32_t) i;
        }
        c->overflow = PROTO_OVERFLOW_BLOCK;
        if (joverflow) {
                CHECK_FIELD(ctx, json_field_string(joverflow, "overflow", &s, msg, msg_size));
                r = proto_overflow_from_string(s);
                if (r < 0)
                        return fail(ctx, "\"overflow\" must be \"block\" or \"drop\", not \"%.32s\"", s);
                c->overflow = (ProtoOverflow) r;
        }
        c->size = bcast_segment_size(c->slot_size, c->slots, c->subscribers);
        return 0;
}

static int parse_channel(Ctx *ctx, json_t *o, ChannelSpec *c) {
        json_t *jname = NULL, *jlayout = NULL, *jsize = NULL, *jslot_size = NULL, *jslots = NULL,
               *jsems = NULL, *jowner = NULL, *jgroup = NULL, *jmode = NULL, *jkey = NULL, *jsubscribers = NULL,
               *joverflow = NULL, *jkind = NULL;
        char why[256];
        json_error_t jerr;
        const char *s;
        unsigned reserved = 0;
        int64_t i;
        int r;

        if (!json_is_object(o))
                return fail(ctx, "channels[%zu] must be an object", ctx->index);
        /* Find the name first, so every later message can say which channel. */
        jname = json_object_get(o, "name");
        if (!jname)
                return fail(ctx, "channels[%zu] has no \"name\"", ctx->index);
        /* No channel to name yet: the index says which entry it is. */
        if (json_field_string(jname, "name", &s, why, sizeof why))
                return fail(ctx, "channels[%zu]: %s", ctx->index, why);
        if (!proto_name_is_valid(s))
                return fail(ctx, "channels[%zu]: \"name\" must be 1-%d characters of A-Z a-z 0-9 . _ -, not \"%.80s\"",
                            ctx->index, PROTO_NAME_MAX, s);
        strcpy(c->name, s);
        ctx->channel = c->name;

        /*
         * json_take_fields() first: a strict unpack of every channel was a
         * third of a start's instructions. An object with a key none of ours
         * is unpacked all the same, which refuses it with its own message.
         */
        {
                const JsonField fields[] = {
                        { "name", &jname }, { "size", &jsize }, { "layout", &jlayout }, { "slot_size", &jslot_size },
                        { "slots", &jslots }, { "semaphores", &jsems }, { "owner", &jowner }, { "group", &jgroup },
                        { "mode", &jmode }, { "key", &jkey }, { "subscribers", &jsubscribers },
                        { "overflow", &joverflow }, { "kind", &jkind },
                };

                if (!json_take_fields(o, fields, ELEMENTSOF(fields)) &&
                    json_unpack_ex(o, &jerr, 0, "{s:o, s?:o, s?:o, s?:o, s?:o, s?:o, s?:o, s?:o, s?:o, s?:o, s?:o, "
                                   "s?:o, s?:o !}", "name", &jname, "layout", &jlayout, "size", &jsize,
                                   "slot_size", &jslot_size, "slots", &jslots, "semaphores", &jsems, "owner", &jowner,
                                   "group", &jgroup, "mode", &jmode, "key", &jkey, "subscribers", &jsubscribers,
                                   "overflow", &joverflow, "kind", &jkind) < 0) {
                        json_unpack_message(&jerr, why, sizeof why);
                        return fail(ctx, "%s", why);
                }
        }

        c->kind = PROTO_KIND_SYSV;
        if (jkind) {
                CHECK_FIELD(ctx, json_field_string(jkind, "kind", &s, msg, msg_size));
                r = proto_kind_from_string(s);
                if (r < 0)
                        return fail(ctx, "\"kind\" must be \"sysv\" or \"posix\", not \"%.32s\"", s);
                c->kind = (ProtoKind) r;
        }
        /* Keys name System V objects; a posix channel's objects are named files. */
        if (c->kind == PROTO_KIND_POSIX && jkey)
                return fail(ctx, "\"key\" is only for \"kind\": \"sysv\" (a posix channel's objects have names, "
                            "not System V keys)");

        c->layout = PROTO_LAYOUT_RAW;
        if (jlayout) {
                CHECK_FIELD(ctx, json_field_string(jlayout, "layout", &s, msg, msg_size));
                r = proto_layout_from_string(s);
                if (r < 0)
                        return fail(ctx, "\"layout\" must be \"raw\", \"ring\" or \"broadcast\", not \"%.32s\"", s);
                c->layout = (ProtoLayout) r;
        }

        if (c->layout != PROTO_LAYOUT_BROADCAST && (jsubscribers || joverflow))
                return fail(ctx, "\"%s\" is only for \"layout\": \"broadcast\"",
                            jsubscribers ? "subscribers" : "overflow");
        if (c->layout == PROTO_LAYOUT_RAW) {
                if (jslot_size || jslots)
                        return fail(ctx, "\"%s\" is only for \"layout\": \"ring\" or \"broadcast\"",
                                    jslot_size ? "slot_size" : "slots");
                if (!jsize)
                        return fail(ctx, "missing key \"size\"");
                r = parse_size(ctx, jsize, &c->size);
                if (r)
                        return r;
        } else {
                const char *what = c->layout == PROTO_LAYOUT_RING ? "a ring" : "a broadcast channel";

                if (jsize)
                        return fail(ctx, "\"size\" is not allowed for %s: it follows from \"slot_size\" and \"slots\"",
                                    what);
                if (!jslot_size || !jslots)
                        return fail(ctx, "missing key \"%s\" (%s needs \"slot_size\" and \"slots\")",
                                    jslot_size ? "slots" : "slot_size", what);
                CHECK_FIELD(ctx, json_field_int(jslot_size, "slot_size", 1, RING_SLOT_SIZE_MAX, &i, msg, msg_size));
                c->slot_size = (uint32_t) i;
                CHECK_FIELD(ctx, json_field_int(jslots, "slots", RING_SLOTS_MIN, RING_SLOTS_MAX, &i, msg, msg_size));
                c->slots = (uint32_t) i;
                if (c->layout == PROTO_LAYOUT_RING) {
                        c->size = ring_segment_size(c->slot_size, c->slots);
                        reserved = RING_NSEMS;
                } else {
                        r = parse_broadcast(ctx, jsubscribers, joverflow, c);
                        if (r)
                                return r;
                        reserved = BCAST_NSEMS;
                }
        }

        if (jsems) {
                r = parse_semaphores(ctx, jsems, reserved, &c->sem_values, &c->nsems);
                if (r)
                        return r;
        } else {
                /* Default for raw: one semaphore, free (1), for the library's lock. */
                c->nsems = reserved ? reserved : 1;
                c->sem_values = calloc(c->nsems, sizeof *c->sem_values);
                if (!c->sem_values)
                        return -ENOMEM;
                if (!reserved)
                        c->sem_values[0] = 1;
        }
        if (reserved)
                c->sem_values[RING_SEM_RESERVED] = 1;
        /*
         * Every descriptor of an open answer travels in one SCM_RIGHTS
         * message: segment, table, semaphores, the two wake-up FIFOs.
         */
        if (c->kind == PROTO_KIND_POSIX && c->nsems > PROTO_FDS_MAX - 4) {
                /* Said in what the user wrote: a ring's or broadcast channel's own semaphore is a file too. */
                if (reserved)
                        return fail(ctx, "a posix %s has room for at most %u semaphores of \"semaphores\" (one "
                                    "file each, after its own), not %u", c->layout == PROTO_LAYOUT_RING ? "ring" :
                                    "broadcast channel", PROTO_FDS_MAX - 4 - reserved, c->nsems - reserved);
                return fail(ctx, "a posix channel has at most %d semaphores (one file each), not %u",
                            PROTO_FDS_MAX - 4, c->nsems);
        }

        c->uid = self_euid();
        c->gid = self_egid();
        c->mode = CONFIG_DEFAULT_MODE;
        if (jowner) {
                r = resolve_id(ctx, jowner, "owner", false, &c->uid);
                if (r)
                        return r;
                c->owner_set = true;
        }
        if (jgroup) {
                r = resolve_id(ctx, jgroup, "group", true, &c->gid);
                if (r)
                        return r;
        }
        if (jmode) {
                r = parse_mode(ctx, jmode, "mode", &c->mode);
                if (r)
                        return r;
        }
        if (jkey && json_is_object(jkey)) {
                r = parse_ftok_key(ctx, jkey, c);
                if (r)
                        return r;
                c->has_key = true;
        } else if (jkey) {
                /* 0 is IPC_PRIVATE, which is no key at all. */
                CHECK_FIELD(ctx, json_field_int(jkey, "key", 1, UINT32_MAX, &i, msg, msg_size));
                c->key = (uint32_t) i;
                c->has_key = true;
        }
        return 0;
}

const char *config_key_name(const ChannelSpec *s, uint32_t key, char *buf, size_t size) {
        if (s->ftok_path)
                snprintf(buf, size, "key 0x%08" PRIx32 " (ftok(\"%.200s\", %d))", key, s->ftok_path, s->ftok_proj);
        else
                snprintf(buf, size, "key 0x%08" PRIx32, key);
        return buf;
}

void config_key_held(const ChannelSpec *s, char *msg, size_t msg_size) {
        char key[300];

        msg_set(msg, msg_size, "channel \"%s\": %s is already held by an object this daemon did not create; it is "
                "left untouched (%s)", s->name, config_key_name(s, s->key, key, sizeof key),
                s->ftok_path ? "remove it with ipcrm, or give \"ftok\" another file or project id" :
                               "remove it with ipcrm, or choose another \"key\"");
}

/* For two channels on one key: where their keys came from, as far as ftok says ("" when neither is ftok's). */
static const char *ftok_origin(const ChannelSpec *a, const ChannelSpec *b, char *buf, size_t size) {
        if (a->ftok_path && b->ftok_path)
                snprintf(buf, size, " (ftok(\"%.200s\", %d) and ftok(\"%.200s\", %d): ftok keeps only 16 bits of "
                         "the inode and 8 of the device)", a->ftok_path, a->ftok_proj, b->ftok_path, b->ftok_proj);
        else if (a->ftok_path || b->ftok_path)
                snprintf(buf, size, " (ftok(\"%.200s\", %d) gives the other's number)", a->ftok_path ?: b->ftok_path,
                         a->ftok_path ? a->ftok_proj : b->ftok_proj);
        else
                buf[0] = 0;
        return buf;
}

static int cmp_spec_ptr_name(const void *a, const void *b) {
        return strcmp((*(ChannelSpec *const *) a)->name, (*(ChannelSpec *const *) b)->name);
}

static int cmp_spec_ptr_key(const void *a, const void *b) {
        return CMP((*(ChannelSpec *const *) a)->key, (*(ChannelSpec *const *) b)->key);
}

/*
 * Names and fixed keys must be unique; sorting keeps this O(n log n). The
 * channels sorted by name stay, for config_find_channel(): a reload looks
 * up every running channel, and a linear search made it quadratic.
 */
static int check_unique(Ctx *ctx, Config *c) {
        _cleanup_(freep) ChannelSpec **v = NULL;
        char origin[512];
        size_t n = 0;

        c->by_name = calloc(c->n_channels ?: 1, sizeof *c->by_name);
        v = calloc(c->n_channels ?: 1, sizeof *v);
        if (!c->by_name || !v)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_channels; i++)
                c->by_name[i] = &c->channels[i];
        qsort(c->by_name, c->n_channels, sizeof *c->by_name, cmp_spec_ptr_name);
        for (size_t i = 1; i < c->n_channels; i++)
                if (streq(c->by_name[i - 1]->name, c->by_name[i]->name))
                        return fail(ctx, "channel name \"%s\" is used twice", c->by_name[i]->name);

        for (size_t i = 0; i < c->n_channels; i++)
                if (c->channels[i].has_key)
                        v[n++] = &c->channels[i];
        qsort(v, n, sizeof *v, cmp_spec_ptr_key);
        for (size_t i = 1; i < n; i++)
                if (v[i - 1]->key == v[i]->key)
                        return fail(ctx, "channels \"%s\" and \"%s\" have the same \"key\" %" PRIu32 "%s", v[i - 1]->name,
                                    v[i]->name, v[i]->key, ftok_origin(v[i - 1], v[i], origin, sizeof origin));
        return 0;
}

static int collect_fixed_keys(Config *c) {
        c->fixed_keys = calloc(c->n_channels ?: 1, sizeof *c->fixed_keys);
        if (!c->fixed_keys)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_channels; i++)
                if (c->channels[i].has_key)
                        c->fixed_keys[c->n_fixed_keys++] = c->channels[i].key;
        qsort(c->fixed_keys, c->n_fixed_keys, sizeof *c->fixed_keys, cmp_u32);
        return 0;
}

static int parse_limit(Ctx *ctx, json_t *v, const char *key, int64_t min, int64_t max, uint32_t *ret) {
        int64_t i;

        if (!v)
                return 0;
        CHECK_FIELD(ctx, json_field_int(v, key, min, max, &i, msg, msg_size));
        *ret = (uint32_t) i;
        return 0;
}

static int parse_limits(Ctx *ctx, json_t *o, ConfigLimits *l) {
        json_t *jreq = NULL, *jconn = NULL, *juid = NULL, *jtimeout = NULL, *jout = NULL, *jbufs = NULL;
        char why[256];
        json_error_t jerr;
        int r;

        if (!json_is_object(o))
                return fail(ctx, "\"limits\" must be an object");
        if (json_unpack_ex(o, &jerr, 0, "{s?:o, s?:o, s?:o, s?:o, s?:o, s?:o !}", "request_max", &jreq,
                           "connections_max", &jconn, "connections_per_uid", &juid,
                           "request_timeout_ms", &jtimeout, "output_max", &jout,
                           "buffers_per_uid", &jbufs) < 0) {
                json_unpack_message(&jerr, why, sizeof why);
                return fail(ctx, "\"limits\": %s", why);
        }
        if ((r = parse_limit(ctx, jreq, "request_max", 256, PROTO_LINE_MAX, &l->request_max)) ||
            (r = parse_limit(ctx, jconn, "connections_max", 1, 1000000, &l->connections_max)) ||
            (r = parse_limit(ctx, juid, "connections_per_uid", 1, 1000000, &l->connections_per_uid)) ||
            (r = parse_limit(ctx, jtimeout, "request_timeout_ms", 10, 3600 * 1000, &l->request_timeout_ms)) ||
            (r = parse_limit(ctx, jout, "output_max", 4096, 1 << 30, &l->output_max)) ||
            (r = parse_limit(ctx, jbufs, "buffers_per_uid", 65536, 1 << 30, &l->buffers_per_uid)))
                return r;
        return 0;
}

static int parse_top(Ctx *ctx, json_t *root, Config *c) {
        json_t *jversion = NULL, *jsocket = NULL, *jadmin = NULL, *jchannels = NULL, *e,
               *jsmode = NULL, *jsgroup = NULL, *jlimits = NULL;
        char why[256];
        json_error_t jerr;
        const char *s;
        int64_t version;
        size_t i;
        int r;

        if (!json_is_object(root))
                return fail(ctx, "the config must be a JSON object");
        if (json_unpack_ex(root, &jerr, 0, "{s:o, s?:o, s?:o, s?:o, s?:o, s?:o, s?:o !}", "version", &jversion,
                           "socket", &jsocket, "socket_mode", &jsmode, "socket_group", &jsgroup,
                           "admin_group", &jadmin, "limits", &jlimits, "channels", &jchannels) < 0) {
                json_unpack_message(&jerr, why, sizeof why);
                return fail(ctx, "%s", why);
        }
        CHECK_FIELD(ctx, json_field_int(jversion, "version", INT64_MIN, INT64_MAX, &version, msg, msg_size));
        if (version != 1)
                return fail(ctx, "\"version\" must be 1, not %" PRId64, version);

        s = CONFIG_DEFAULT_SOCKET;
        if (jsocket) {
                CHECK_FIELD(ctx, json_field_string(jsocket, "socket", &s, msg, msg_size));
                if (!*s || strlen(s) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))
                        return fail(ctx, "\"socket\" must be a path of 1-%zu bytes",
                                    sizeof(((struct sockaddr_un *) NULL)->sun_path) - 1);
        }
        c->socket = strdup(s);
        if (!c->socket)
                return -ENOMEM;

        c->socket_mode = 0666;
        if (jsmode) {
                r = parse_mode(ctx, jsmode, "socket_mode", &c->socket_mode);
                if (r)
                        return r;
        }
        if (jsgroup) {
                uint32_t gid;

                r = resolve_id(ctx, jsgroup, "socket_group", true, &gid);
                if (r)
                        return r;
                c->socket_group = gid;
                c->has_socket_group = true;
        }
        c->limits = CONFIG_LIMITS_DEFAULT;
        if (jlimits) {
                r = parse_limits(ctx, jlimits, &c->limits);
                if (r)
                        return r;
        }

        if (jadmin) {
                uint32_t gid;

                r = resolve_id(ctx, jadmin, "admin_group", true, &gid);
                if (r)
                        return r;
                c->admin_gid = gid;
                if (json_is_string(jadmin))
                        c->admin_group = strdup(json_string_value(jadmin));
                else if (asprintf(&c->admin_group, "%" PRIu32, gid) < 0)
                        c->admin_group = NULL;
                if (!c->admin_group)
                        return -ENOMEM;
        }

        if (!jchannels)
                return 0;
        if (!json_is_array(jchannels))
                return fail(ctx, "\"channels\" must be an array");
        c->channels = calloc(json_array_size(jchannels) ?: 1, sizeof *c->channels);
        if (!c->channels)
                return -ENOMEM;
        json_array_foreach(jchannels, i, e) {
                ctx->index = i;
                ctx->channel = NULL;
                c->n_channels++;        /* counted before parsing, so a failure frees its part */
                r = parse_channel(ctx, e, &c->channels[i]);
                if (r)
                        return r;
        }
        ctx->channel = NULL;
        r = check_unique(ctx, c);
        return r ? r : collect_fixed_keys(c);
}

int config_parse(const char *text, size_t len, const char *source, Config **ret, char *msg, size_t msg_size) {
        _cleanup_(json_decrefp) json_t *root = NULL;
        Config *c;
        json_error_t jerr;
        Ctx ctx = { .source = source, .msg = msg, .msg_size = msg_size };
        int r;

        root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                msg_set(msg, msg_size, "%s:%d:%d: %s", source, jerr.line, jerr.column,
                        json_error_words(&jerr, text, len));
                return EINVAL;
        }
        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->source = strdup(source);
        r = c->source ? parse_top(&ctx, root, c) : -ENOMEM;
        if (r) {
                config_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

int config_load(const char *path, Config **ret, char *msg, size_t msg_size) {
        _cleanup_(freep) char *text = NULL;
        _cleanup_(closep) int fd = -1;
        struct stat st;
        size_t got = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st) < 0) {
                int err = errno;

                msg_set(msg, msg_size, "%s: cannot read the config: %s", path, strerror(err));
                return err;
        }
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size > CONFIG_FILE_MAX) {
                msg_set(msg, msg_size, "%s: not a regular file of at most %u bytes", path, CONFIG_FILE_MAX);
                return EFBIG;
        }
        text = malloc((size_t) st.st_size + 1);
        if (!text)
                return -ENOMEM;
        while (got < (size_t) st.st_size) {
                ssize_t n = read(fd, text + got, (size_t) st.st_size - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        int err = n < 0 ? errno : EIO;

                        msg_set(msg, msg_size, "%s: cannot read the config: %s", path, strerror(err));
                        return err;
                }
                got += (size_t) n;
        }
        return config_parse(text, got, path, ret, msg, msg_size);
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_channels; i++) {
                free(c->channels[i].sem_values);
                free(c->channels[i].ftok_path);
        }
        free(c->channels);
        free(c->by_name);
        free(c->fixed_keys);
        free(c->socket);
        free(c->admin_group);
        free(c->source);
        free(c);
        return NULL;
}

static int cmp_name_spec_ptr(const void *name, const void *spec) {
        return strcmp(name, (*(ChannelSpec *const *) spec)->name);
}

int config_find_channel(const Config *c, const char *name) {
        ChannelSpec **p;

        /* bsearch() may not take a NULL array, even of no elements. */
        if (c->n_channels == 0)
                return -ENOENT;
        p = bsearch(name, c->by_name, c->n_channels, sizeof *c->by_name, cmp_name_spec_ptr);
        return p ? (int) (*p - c->channels) : -ENOENT;
}

bool config_key_is_fixed(const Config *c, uint32_t key) {
        return bsearch(&key, c->fixed_keys, c->n_fixed_keys, sizeof key, cmp_u32) != NULL;
}
