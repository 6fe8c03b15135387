/*
 * Unit tests for the config loader (daemon/config.c) and the pure IPC limit
 * check (ipc_limits_check() in daemon/ipc-limits.c).
 *
 * Most cases parse in-memory text with config_parse() under the source name
 * "test.json"; the file cases use config_load() on temp files in /tmp.
 * Rejections are table-driven: each row is a config text and the substrings
 * its message must contain (the source name is always required too).
 *
 * No kernel IPC objects are touched: ipc_limits_read() is never called.
 * Run under valgrind with CK_FORK=no to check the cleanup paths.
 */

#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/channel.h"
#include "daemon/config.h"
#include "daemon/ipc-limits.h"
#include "proto/broadcast.h"
#include "proto/ring.h"

#define SRC "test.json"
#define MSG_SIZE 1024

#define ck_assert_msg_contains(msg, needle) \
        ck_assert_msg(strstr((msg), (needle)) != NULL, "message \"%s\" does not mention \"%s\"", (msg), (needle))

/* A top-level config holding the given channel objects. */
#define CHANNELS(...) "{\"version\": 1, \"channels\": [" __VA_ARGS__ "]}"
/* A raw channel named "chan" with the extra members given (leading comma). */
#define RAW(extra) "{\"name\": \"chan\", \"size\": 4096" extra "}"
/* A ring channel named "rng" with the extra members given (leading comma). */
#define RING(extra) "{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 100, \"slots\": 8" extra "}"
/* A broadcast channel named "bc" with the extra members given (leading comma). */
#define BCAST(extra) "{\"name\": \"bc\", \"layout\": \"broadcast\", \"slot_size\": 100, \"slots\": 8" extra "}"

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */

/* Parse text that must be valid; returns the config (never NULL). */
static Config *parse_ok(const char *text) {
        char msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        r = config_parse(text, strlen(text), SRC, &c, msg, sizeof msg);
        ck_assert_msg(r == 0, "config_parse() = %d (%s) for: %s", r, msg, text);
        ck_assert_ptr_nonnull(c);
        ck_assert_str_eq(c->source, SRC);
        return c;
}

/*
 * Parse text that must be refused with EINVAL, *ret untouched, and a message
 * that names the source and every needle (NULL-terminated list).
 */
static void expect_reject_text(const char *text, size_t len, const char *const *needles) {
        char msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        r = config_parse(text, len, SRC, &c, msg, sizeof msg);
        if (r == 0) {
                char got[256] = "";

                if (c->n_channels > 0)
                        snprintf(got, sizeof got, " (channels[0]: size %llu, mode %o, uid %u, gid %u)",
                                 (unsigned long long) c->channels[0].size, (unsigned) c->channels[0].mode,
                                 (unsigned) c->channels[0].uid, (unsigned) c->channels[0].gid);
                /* Free before failing, so CK_FORK=no runs stay leak-free. */
                c = config_free(c);
                ck_abort_msg("config accepted but must be refused: %s%s", text, got);
        }
        ck_assert_msg(r == EINVAL, "config_parse() = %d, expected EINVAL (%d) for: %s (%s)", r, EINVAL, text, msg);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, SRC);
        for (const char *const *n = needles; n && *n; n++)
                ck_assert_msg_contains(msg, *n);
}

typedef struct Reject {
        const char *text;
        const char *needles[6];
} Reject;

static void run_reject_table(const Reject *t, int i) {
        expect_reject_text(t[i].text, strlen(t[i].text), t[i].needles);
}

/* The single channel of a config that must hold exactly one. */
static const ChannelSpec *only_channel(const Config *c) {
        ck_assert_uint_eq(c->n_channels, 1);
        return &c->channels[0];
}

/* A string of n copies of ch, malloc'd. */
static char *repeat(char ch, size_t n) {
        char *s = malloc(n + 1);

        ck_assert_ptr_nonnull(s);
        memset(s, ch, n);
        s[n] = 0;
        return s;
}

/* Write text to a new temp file in /tmp; returns its malloc'd path. */
static char *write_temp(const char *text) {
        char *path = strdup("/tmp/test-config-XXXXXX");
        size_t len = strlen(text), done = 0;
        int fd;

        ck_assert_ptr_nonnull(path);
        fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        while (done < len) {
                ssize_t n = write(fd, text + done, len - done);

                ck_assert_int_gt(n, 0);
                done += (size_t) n;
        }
        ck_assert_int_eq(close(fd), 0);
        return path;
}

static void remove_temp(char *path) {
        ck_assert_int_eq(unlink(path), 0);
        free(path);
}

/* ------------------------------------------------------------------------ */
/* a full valid config                                                       */

static const char full_config[] =
        "{\n"
        "  \"version\": 1,\n"
        "  \"socket\": \"/run/shmbroker/shmbroker.sock\",\n"
        "  \"admin_group\": \"root\",\n"
        "  \"channels\": [\n"
        "    { \"name\": \"telemetry\", \"size\": 1048576, \"semaphores\": [1, 0],\n"
        "      \"owner\": \"root\", \"group\": \"root\", \"mode\": \"0660\" },\n"
        "    { \"name\": \"frames\", \"layout\": \"ring\", \"slot_size\": 65536, \"slots\": 32,\n"
        "      \"group\": 0, \"mode\": \"0640\", \"key\": 1593835521 }\n"
        "  ]\n"
        "}\n";

static void check_full_config(const Config *c) {
        const ChannelSpec *t, *f;

        ck_assert_str_eq(c->socket, "/run/shmbroker/shmbroker.sock");
        ck_assert_ptr_nonnull(c->admin_group);
        ck_assert_str_eq(c->admin_group, "root");
        ck_assert_uint_eq(c->admin_gid, 0);
        ck_assert_uint_eq(c->n_channels, 2);

        t = &c->channels[0];
        ck_assert_str_eq(t->name, "telemetry");
        ck_assert_int_eq(t->layout, PROTO_LAYOUT_RAW);
        ck_assert_uint_eq(t->size, 1048576);
        ck_assert_uint_eq(t->slot_size, 0);
        ck_assert_uint_eq(t->slots, 0);
        ck_assert_uint_eq(t->nsems, 2);
        ck_assert_ptr_nonnull(t->sem_values);
        ck_assert_uint_eq(t->sem_values[0], 1);
        ck_assert_uint_eq(t->sem_values[1], 0);
        ck_assert_uint_eq(t->uid, 0);
        ck_assert_uint_eq(t->gid, 0);
        ck_assert_uint_eq(t->mode, 0660);
        ck_assert(t->owner_set);
        ck_assert(!t->has_key);

        f = &c->channels[1];
        ck_assert_str_eq(f->name, "frames");
        ck_assert_int_eq(f->layout, PROTO_LAYOUT_RING);
        ck_assert_uint_eq(f->slot_size, 65536);
        ck_assert_uint_eq(f->slots, 32);
        ck_assert_uint_eq(f->size, ring_segment_size(65536, 32));
        /* 512 header + 256 holders of 32 bytes + 32 slots of 65536 + 64 (slot header) = 65600. */
        ck_assert_uint_eq(f->size, 512 + 256 * 32 + 32 * 65600);
        ck_assert_uint_eq(f->nsems, RING_NSEMS);
        ck_assert_ptr_nonnull(f->sem_values);
        ck_assert_uint_eq(f->sem_values[RING_SEM_RESERVED], 1);
        ck_assert_uint_eq(f->uid, geteuid());
        ck_assert_uint_eq(f->gid, 0);
        ck_assert_uint_eq(f->mode, 0640);
        ck_assert(!f->owner_set);
        ck_assert(f->has_key);
        ck_assert_uint_eq(f->key, 1593835521u);

        ck_assert_int_eq(config_find_channel(c, "telemetry"), 0);
        ck_assert_int_eq(config_find_channel(c, "frames"), 1);
}

START_TEST(test_full_config) {
        Config *c = parse_ok(full_config);

        check_full_config(c);
        ck_assert_ptr_null(config_free(c));
}
END_TEST

START_TEST(test_ring_with_user_semaphores) {
        Config *c = parse_ok(CHANNELS(RING(", \"semaphores\": [5, 0, 32767]")));
        const ChannelSpec *s = only_channel(c);

        ck_assert_uint_eq(s->size, ring_segment_size(100, 8));
        ck_assert_uint_eq(s->size, 512 + 256 * 32 + 8 * 192);     /* 100 + 64-byte slot header, to 64 */
        ck_assert_uint_eq(s->nsems, RING_NSEMS + 3);
        ck_assert_uint_eq(s->sem_values[RING_SEM_RESERVED], 1);
        ck_assert_uint_eq(s->sem_values[RING_NSEMS + 0], 5);
        ck_assert_uint_eq(s->sem_values[RING_NSEMS + 1], 0);
        ck_assert_uint_eq(s->sem_values[RING_NSEMS + 2], 32767);
        config_free(c);

        /* A count adds that many zeroed semaphores after the reserved ones. */
        c = parse_ok(CHANNELS(RING(", \"semaphores\": 2")));
        s = only_channel(c);
        ck_assert_uint_eq(s->nsems, RING_NSEMS + 2);
        ck_assert_uint_eq(s->sem_values[RING_SEM_RESERVED], 1);
        ck_assert_uint_eq(s->sem_values[RING_NSEMS + 0], 0);
        ck_assert_uint_eq(s->sem_values[RING_NSEMS + 1], 0);
        config_free(c);

        /* A ring may ask for no extra semaphores, as a count or an empty array. */
        c = parse_ok(CHANNELS(RING(", \"semaphores\": 0")));
        ck_assert_uint_eq(only_channel(c)->nsems, RING_NSEMS);
        ck_assert_uint_eq(only_channel(c)->sem_values[RING_SEM_RESERVED], 1);
        config_free(c);
        c = parse_ok(CHANNELS(RING(", \"semaphores\": []")));
        ck_assert_uint_eq(only_channel(c)->nsems, RING_NSEMS);
        ck_assert_uint_eq(only_channel(c)->sem_values[RING_SEM_RESERVED], 1);
        config_free(c);

        /* The largest ring: RING_SLOTS_MAX slots, the reserved value still right. */
        c = parse_ok(CHANNELS("{\"name\": \"big\", \"layout\": \"ring\", \"slot_size\": 1, \"slots\": 1048576}"));
        s = only_channel(c);
        ck_assert_uint_eq(s->slots, RING_SLOTS_MAX);
        ck_assert_uint_eq(s->size, 512 + 256 * 32 + 1048576ull * 128);
        ck_assert_uint_eq(s->sem_values[RING_SEM_RESERVED], 1);
        config_free(c);

        /* The explicit raw layout is the default one. */
        c = parse_ok(CHANNELS("{\"name\": \"r\", \"layout\": \"raw\", \"size\": 10}"));
        ck_assert_int_eq(only_channel(c)->layout, PROTO_LAYOUT_RAW);
        ck_assert_uint_eq(only_channel(c)->size, 10);
        config_free(c);
}
END_TEST

START_TEST(test_broadcast) {
        Config *c = parse_ok(CHANNELS(BCAST("")));
        const ChannelSpec *s = only_channel(c);

        /* Defaults: 16 subscribers, block. */
        ck_assert_int_eq(s->layout, PROTO_LAYOUT_BROADCAST);
        ck_assert_uint_eq(s->slot_size, 100);
        ck_assert_uint_eq(s->slots, 8);
        ck_assert_uint_eq(s->subscribers, CONFIG_DEFAULT_SUBSCRIBERS);
        ck_assert_uint_eq(s->subscribers, 16);
        ck_assert_int_eq(s->overflow, PROTO_OVERFLOW_BLOCK);
        ck_assert_uint_eq(s->size, bcast_segment_size(100, 8, 16));
        /* 512 header + 256 publisher holders + 16 subscriber holders of 32 bytes + 8 slots of 192. */
        ck_assert_uint_eq(s->size, 512 + 256 * 32 + 16 * 32 + 8 * 192);
        ck_assert_uint_eq(s->nsems, BCAST_NSEMS);
        ck_assert_uint_eq(s->sem_values[BCAST_SEM_RESERVED], 1);
        config_free(c);

        c = parse_ok(CHANNELS(BCAST(", \"subscribers\": 1, \"overflow\": \"drop\", \"semaphores\": [0, 7]")));
        s = only_channel(c);
        ck_assert_uint_eq(s->subscribers, 1);
        ck_assert_int_eq(s->overflow, PROTO_OVERFLOW_DROP);
        /* Holders to a multiple of 64 bytes: 1 entry takes 64. */
        ck_assert_uint_eq(s->size, 512 + 256 * 32 + 64 + 8 * 192);
        ck_assert_uint_eq(s->nsems, BCAST_NSEMS + 2);
        ck_assert_uint_eq(s->sem_values[BCAST_SEM_RESERVED], 1);
        ck_assert_uint_eq(s->sem_values[BCAST_NSEMS + 1], 7);
        config_free(c);

        c = parse_ok(CHANNELS(BCAST(", \"subscribers\": 256, \"overflow\": \"block\"")));
        ck_assert_uint_eq(only_channel(c)->subscribers, BCAST_SUBSCRIBERS_MAX);
        ck_assert_int_eq(only_channel(c)->overflow, PROTO_OVERFLOW_BLOCK);
        config_free(c);
}
END_TEST

START_TEST(test_ring_semaphore_count_limit) {
        /* The ring's own semaphores count against CONFIG_NSEMS_MAX too. */
        Config *c = parse_ok(CHANNELS(RING(", \"semaphores\": 31999")));

        ck_assert_uint_eq(only_channel(c)->nsems, CONFIG_NSEMS_MAX);
        config_free(c);
        expect_reject_text(CHANNELS(RING(", \"semaphores\": 32000")),
                           strlen(CHANNELS(RING(", \"semaphores\": 32000"))),
                           (const char *const[]) { "\"rng\"", "\"semaphores\"", NULL });
}
END_TEST

/* An array of n zeros as a ring's "semaphores": "[0,0,...]". */
static char *ring_sem_array_config(size_t n) {
        char *text = malloc(2 * n + 160), *p;

        ck_assert_ptr_nonnull(text);
        p = text + sprintf(text, "{\"version\": 1, \"channels\": [{\"name\": \"rng\", \"layout\": \"ring\", "
                           "\"slot_size\": 100, \"slots\": 8, \"semaphores\": [");
        for (size_t i = 0; i < n; i++)
                p += sprintf(p, i ? ",0" : "0");
        strcpy(p, "]}]}");
        return text;
}

/* The same bound for the array form: the ring's own semaphore comes first. */
START_TEST(test_ring_semaphore_array_limit) {
        char *text = ring_sem_array_config(CONFIG_NSEMS_MAX - RING_NSEMS);
        Config *c = parse_ok(text);

        ck_assert_uint_eq(only_channel(c)->nsems, CONFIG_NSEMS_MAX);
        config_free(c);
        free(text);

        text = ring_sem_array_config(CONFIG_NSEMS_MAX - RING_NSEMS + 1);
        expect_reject_text(text, strlen(text), (const char *const[]) { "\"rng\"", "\"semaphores\"", NULL });
        free(text);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* defaults                                                                  */

START_TEST(test_defaults) {
        Config *c = parse_ok(CHANNELS(RAW("")));
        const ChannelSpec *s = only_channel(c);

        ck_assert_str_eq(c->socket, CONFIG_DEFAULT_SOCKET);
        /* shmbroker.json(5): socket_mode defaults to "0666", socket_group to the daemon's own group. */
        ck_assert_uint_eq(c->socket_mode, 0666);
        ck_assert(!c->has_socket_group);
        ck_assert_ptr_null(c->admin_group);
        ck_assert_int_eq(s->layout, PROTO_LAYOUT_RAW);
        ck_assert_uint_eq(s->size, 4096);
        ck_assert_uint_eq(s->nsems, 1);
        ck_assert_ptr_nonnull(s->sem_values);
        ck_assert_uint_eq(s->sem_values[0], 1);
        ck_assert_uint_eq(s->mode, CONFIG_DEFAULT_MODE);
        ck_assert_uint_eq(s->mode, 0660);
        ck_assert_uint_eq(s->uid, geteuid());
        ck_assert_uint_eq(s->gid, getegid());
        ck_assert(!s->owner_set);
        ck_assert(!s->has_key);
        ck_assert_uint_eq(s->key, 0);
        config_free(c);

        /* A ring without "semaphores" gets exactly its reserved ones. */
        c = parse_ok(CHANNELS(RING("")));
        s = only_channel(c);
        ck_assert_uint_eq(s->nsems, RING_NSEMS);
        ck_assert_uint_eq(s->sem_values[RING_SEM_RESERVED], 1);
        ck_assert_uint_eq(s->mode, 0660);
        config_free(c);
}
END_TEST

START_TEST(test_no_channels) {
        Config *c = parse_ok("{\"version\": 1}");

        ck_assert_uint_eq(c->n_channels, 0);
        ck_assert_str_eq(c->socket, CONFIG_DEFAULT_SOCKET);
        ck_assert_ptr_null(c->admin_group);
        ck_assert_int_eq(config_find_channel(c, "anything"), -ENOENT);
        config_free(c);

        c = parse_ok("{\"version\": 1, \"channels\": []}");
        ck_assert_uint_eq(c->n_channels, 0);
        config_free(c);
}
END_TEST

START_TEST(test_socket) {
        char *dir = repeat('a', 106), *text;
        Config *c;
        size_t n;

        /* "/" + 106 = 107 bytes: the most sun_path holds with its NUL. */
        n = strlen(dir) + 64;
        text = malloc(n);
        ck_assert_ptr_nonnull(text);
        snprintf(text, n, "{\"version\": 1, \"socket\": \"/%s\"}", dir);
        c = parse_ok(text);
        ck_assert_uint_eq(strlen(c->socket), 107);
        ck_assert_str_eq(c->socket + 1, dir);
        config_free(c);

        /* 108 bytes do not fit. */
        snprintf(text, n, "{\"version\": 1, \"socket\": \"/%sa\"}", dir);
        expect_reject_text(text, strlen(text), (const char *const[]) { "\"socket\"", NULL });

        c = parse_ok("{\"version\": 1, \"socket\": \"/tmp/x.sock\"}");
        ck_assert_str_eq(c->socket, "/tmp/x.sock");
        config_free(c);
        free(text);
        free(dir);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* size                                                                      */

static const struct {
        const char *value;
        uint64_t size;
} size_ok[] = {
        { "1", 1 },
        { "4096", 4096 },
        { "\"64K\"", 64 * 1024 },
        { "\"1M\"", 1024 * 1024 },
        { "\"2G\"", UINT64_C(2) * 1024 * 1024 * 1024 },
        { "\"1T\"", UINT64_C(1) << 40 },
        { "\"1048576\"", 1048576 },
        { "\"7\"", 7 },
        { "1099511627776", UINT64_C(1) << 40 },
};

START_TEST(test_size_ok) {
        char text[256];
        Config *c;

        snprintf(text, sizeof text, CHANNELS("{\"name\": \"s\", \"size\": %s}"), size_ok[_i].value);
        c = parse_ok(text);
        ck_assert_uint_eq(only_channel(c)->size, size_ok[_i].size);
        ck_assert_uint_eq(only_channel(c)->nsems, 1);
        config_free(c);
}
END_TEST

#define SIZE_REJECT(v, ...) \
        { CHANNELS("{\"name\": \"sized\", \"size\": " v "}"), { "\"sized\"", "\"size\"", __VA_ARGS__ } }

static const Reject size_bad[] = {
        SIZE_REJECT("0", "0"),
        SIZE_REJECT("-1", "-1"),
        SIZE_REJECT("\"0K\"", "0K"),
        SIZE_REJECT("\"1.5M\"", "1.5M"),
        SIZE_REJECT("\"12Q\"", "12Q"),
        SIZE_REJECT("\"K\"", NULL),
        SIZE_REJECT("\"\"", NULL),
        SIZE_REJECT("1.5", NULL),
        SIZE_REJECT("true", NULL),
        SIZE_REJECT("null", NULL),
        SIZE_REJECT("\"-1\"", NULL),
        SIZE_REJECT("\"+1\"", NULL),
        SIZE_REJECT("\" 1\"", NULL),
        SIZE_REJECT("\"1k\"", NULL),
        SIZE_REJECT("\"1KB\"", NULL),
        SIZE_REJECT("\"0x10\"", NULL),
        /* 2^34 G = 2^64: does not fit in 64 bits. */
        SIZE_REJECT("\"17179869184G\"", NULL),
        /* 2^23 T = 2^63: fits in 64 bits, but not below INT64_MAX, the integer form's bound. */
        SIZE_REJECT("\"8388608T\"", NULL),
        SIZE_REJECT("\"99999999999999999999\"", NULL),
        /* Leading whitespace other than a space must be refused like " 1". */
        SIZE_REJECT("\"\\t1M\"", NULL),
        /* A negative number behind a tab must not wrap to 2^64 - 1. */
        SIZE_REJECT("\"\\t-1\"", NULL),
        SIZE_REJECT("\"\\n5\"", NULL),
};

START_TEST(test_size_bad) {
        run_reject_table(size_bad, _i);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* semaphores                                                                */

START_TEST(test_semaphores_ok) {
        Config *c = parse_ok(CHANNELS(RAW(", \"semaphores\": 3")));
        const ChannelSpec *s = only_channel(c);

        ck_assert_uint_eq(s->nsems, 3);
        ck_assert_uint_eq(s->sem_values[0], 0);
        ck_assert_uint_eq(s->sem_values[1], 0);
        ck_assert_uint_eq(s->sem_values[2], 0);
        config_free(c);

        c = parse_ok(CHANNELS(RAW(", \"semaphores\": [1, 0, 32767]")));
        s = only_channel(c);
        ck_assert_uint_eq(s->nsems, 3);
        ck_assert_uint_eq(s->sem_values[0], 1);
        ck_assert_uint_eq(s->sem_values[1], 0);
        ck_assert_uint_eq(s->sem_values[2], 32767);
        config_free(c);

        c = parse_ok(CHANNELS(RAW(", \"semaphores\": 1")));
        ck_assert_uint_eq(only_channel(c)->nsems, 1);
        ck_assert_uint_eq(only_channel(c)->sem_values[0], 0);
        config_free(c);

        /* The maximum count is allowed. */
        c = parse_ok(CHANNELS(RAW(", \"semaphores\": 32000")));
        ck_assert_uint_eq(only_channel(c)->nsems, CONFIG_NSEMS_MAX);
        ck_assert_uint_eq(only_channel(c)->sem_values[CONFIG_NSEMS_MAX - 1], 0);
        config_free(c);
}
END_TEST

/* An array of n semaphore values: "[0,0,...]" in a raw channel. */
static char *sem_array_config(size_t n) {
        size_t size = 2 * n + 128;
        char *text = malloc(size), *p;

        ck_assert_ptr_nonnull(text);
        p = text + sprintf(text, "{\"version\": 1, \"channels\": [{\"name\": \"many\", \"size\": 1, \"semaphores\": [");
        for (size_t i = 0; i < n; i++)
                p += sprintf(p, i ? ",1" : "1");
        strcpy(p, "]}]}");
        return text;
}

START_TEST(test_semaphore_array_limit) {
        char *text = sem_array_config(CONFIG_NSEMS_MAX);
        Config *c = parse_ok(text);

        ck_assert_uint_eq(only_channel(c)->nsems, CONFIG_NSEMS_MAX);
        ck_assert_uint_eq(only_channel(c)->sem_values[0], 1);
        ck_assert_uint_eq(only_channel(c)->sem_values[CONFIG_NSEMS_MAX - 1], 1);
        config_free(c);
        free(text);

        text = sem_array_config(CONFIG_NSEMS_MAX + 1);
        expect_reject_text(text, strlen(text), (const char *const[]) { "\"many\"", "\"semaphores\"", "32001", NULL });
        free(text);
}
END_TEST

#define SEM_REJECT(v, ...) \
        { CHANNELS("{\"name\": \"semch\", \"size\": 8, \"semaphores\": " v "}"), { "\"semch\"", "semaphores", __VA_ARGS__ } }

static const Reject semaphores_bad[] = {
        SEM_REJECT("[1, 0, 32768]", "semaphores[2]", "32768"),
        SEM_REJECT("[-1]", "semaphores[0]", "-1"),
        SEM_REJECT("[1, \"1\"]", "semaphores[1]"),
        SEM_REJECT("[1.5]", "semaphores[0]"),
        SEM_REJECT("[]", NULL),
        SEM_REJECT("0", "0"),
        SEM_REJECT("-1", "-1"),
        SEM_REJECT("\"2\"", NULL),
        SEM_REJECT("32001", "32001"),
        SEM_REJECT("true", NULL),
        SEM_REJECT("{}", NULL),
        SEM_REJECT("null", NULL),
};

START_TEST(test_semaphores_bad) {
        run_reject_table(semaphores_bad, _i);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* owner, group, mode                                                        */

START_TEST(test_owner_group_ok) {
        static const char *const forms[][2] = {
                { "\"root\"", "\"root\"" },
                { "\"0\"", "\"0\"" },
                { "0", "0" },
        };
        Config *c;

        for (size_t i = 0; i < ELEMENTSOF(forms); i++) {
                char text[256];
                const ChannelSpec *s;

                snprintf(text, sizeof text, CHANNELS(RAW(", \"owner\": %s, \"group\": %s")), forms[i][0], forms[i][1]);
                c = parse_ok(text);
                s = only_channel(c);
                ck_assert_uint_eq(s->uid, 0);
                ck_assert_uint_eq(s->gid, 0);
                ck_assert(s->owner_set);
                config_free(c);
        }

        /* Numeric ids need not exist; they are taken as they are. */
        c = parse_ok(CHANNELS(RAW(", \"owner\": \"4321\", \"group\": 1234")));
        ck_assert_uint_eq(only_channel(c)->uid, 4321);
        ck_assert_uint_eq(only_channel(c)->gid, 1234);
        ck_assert(only_channel(c)->owner_set);
        config_free(c);

        c = parse_ok(CHANNELS(RAW(", \"owner\": 4294967294")));
        ck_assert_uint_eq(only_channel(c)->uid, 4294967294u);
        config_free(c);

        /* "group" alone leaves owner_set false and the uid the default. */
        c = parse_ok(CHANNELS(RAW(", \"group\": \"777\"")));
        ck_assert(!only_channel(c)->owner_set);
        ck_assert_uint_eq(only_channel(c)->uid, geteuid());
        ck_assert_uint_eq(only_channel(c)->gid, 777);
        config_free(c);
}
END_TEST

static const struct {
        const char *value;
        mode_t mode;
} mode_ok[] = {
        { "0660", 0660 },
        { "660", 0660 },
        { "0600", 0600 },
        { "0", 0 },
        { "0777", 0777 },
        { "644", 0644 },
        { "7", 07 },
};

START_TEST(test_mode_ok) {
        char text[256];
        Config *c;

        snprintf(text, sizeof text, CHANNELS(RAW(", \"mode\": \"%s\"")), mode_ok[_i].value);
        c = parse_ok(text);
        ck_assert_uint_eq(only_channel(c)->mode, mode_ok[_i].mode);
        config_free(c);
}
END_TEST

#define CH_REJECT(extra, ...) { CHANNELS(RAW(extra)), { "\"chan\"", __VA_ARGS__ } }

static const Reject owner_mode_bad[] = {
        CH_REJECT(", \"owner\": \"no-such-user-shmbroker\"", "\"owner\"", "no-such-user-shmbroker", "user"),
        CH_REJECT(", \"group\": \"no-such-group-shmbroker\"", "\"group\"", "no-such-group-shmbroker", "group"),
        CH_REJECT(", \"owner\": -1", "\"owner\"", "-1"),
        CH_REJECT(", \"group\": -1", "\"group\"", "-1"),
        CH_REJECT(", \"owner\": 4294967295", "\"owner\""),
        CH_REJECT(", \"group\": 4294967295", "\"group\""),
        /* 4294967295 is (uid_t) -1, which chown(2) and IPC_SET take as "leave unchanged": as a string too. */
        CH_REJECT(", \"owner\": \"4294967295\"", "\"owner\"", "4294967295"),
        CH_REJECT(", \"group\": \"4294967295\"", "\"group\"", "4294967295"),
        /* "at most four digits" (shmbroker.json(5)), even when the value fits. */
        CH_REJECT(", \"mode\": \"00660\"", "\"mode\"", "00660"),
        CH_REJECT(", \"owner\": true", "\"owner\""),
        CH_REJECT(", \"group\": 1.5", "\"group\""),
        CH_REJECT(", \"group\": \"\"", "\"group\""),
        CH_REJECT(", \"mode\": \"0999\"", "\"mode\"", "0999"),
        CH_REJECT(", \"mode\": \"abc\"", "\"mode\"", "abc"),
        CH_REJECT(", \"mode\": \"01777\"", "\"mode\"", "01777"),
        CH_REJECT(", \"mode\": \"1777\"", "\"mode\"", "1777"),
        CH_REJECT(", \"mode\": \"4755\"", "\"mode\"", "4755"),
        CH_REJECT(", \"mode\": \"7777\"", "\"mode\"", "7777"),
        CH_REJECT(", \"mode\": 432", "\"mode\""),
        CH_REJECT(", \"mode\": \"\"", "\"mode\""),
        CH_REJECT(", \"mode\": \"-660\"", "\"mode\""),
        CH_REJECT(", \"mode\": \"+660\"", "\"mode\""),
        CH_REJECT(", \"mode\": \" 660\"", "\"mode\""),
        /* Leading whitespace other than a space is as wrong as a space. */
        CH_REJECT(", \"mode\": \"\\t660\"", "\"mode\""),
        CH_REJECT(", \"mode\": \"0660 \"", "\"mode\""),
        /* The same for numeric ids: "\t0" is neither a decimal id nor a user. */
        CH_REJECT(", \"owner\": \"\\t0\"", "\"owner\""),
        CH_REJECT(", \"mode\": null", "\"mode\""),
};

START_TEST(test_owner_mode_bad) {
        run_reject_table(owner_mode_bad, _i);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* key                                                                       */

START_TEST(test_key_ok) {
        Config *c = parse_ok(CHANNELS(RAW(", \"key\": 1593835521")));

        ck_assert(only_channel(c)->has_key);
        ck_assert_uint_eq(only_channel(c)->key, 1593835521u);
        config_free(c);

        c = parse_ok(CHANNELS(RAW(", \"key\": 4294967295")));
        ck_assert(only_channel(c)->has_key);
        ck_assert_uint_eq(only_channel(c)->key, UINT32_MAX);
        config_free(c);

        c = parse_ok(CHANNELS(RAW(", \"key\": 1")));
        ck_assert(only_channel(c)->has_key);
        ck_assert_uint_eq(only_channel(c)->key, 1);
        config_free(c);

        /* Different keys, and channels without one, do not clash. */
        c = parse_ok(CHANNELS("{\"name\": \"a\", \"size\": 1, \"key\": 5},"
                              "{\"name\": \"b\", \"size\": 1, \"key\": 6},"
                              "{\"name\": \"c\", \"size\": 1},"
                              "{\"name\": \"d\", \"size\": 1}"));
        ck_assert_uint_eq(c->n_channels, 4);
        ck_assert(c->channels[0].has_key);
        ck_assert_uint_eq(c->channels[0].key, 5);
        ck_assert(c->channels[1].has_key);
        ck_assert_uint_eq(c->channels[1].key, 6);
        ck_assert(!c->channels[2].has_key);
        ck_assert(!c->channels[3].has_key);
        config_free(c);
}
END_TEST

static const Reject key_bad[] = {
        CH_REJECT(", \"key\": 0", "\"key\"", "0"),
        CH_REJECT(", \"key\": -1", "\"key\"", "-1"),
        CH_REJECT(", \"key\": 4294967296", "\"key\"", "4294967296"),
        CH_REJECT(", \"key\": \"1593835521\"", "\"key\""),
        CH_REJECT(", \"key\": 1.0", "\"key\""),
        CH_REJECT(", \"key\": null", "\"key\""),
        /* Same fixed key on two channels: both are named. */
        { CHANNELS("{\"name\": \"first\", \"size\": 1, \"key\": 77},"
                   "{\"name\": \"middle\", \"size\": 1, \"key\": 78},"
                   "{\"name\": \"second\", \"size\": 1, \"key\": 77}"),
          { "\"first\"", "\"second\"", "\"key\"", "77", NULL } },
        { CHANNELS("{\"name\": \"zz\", \"size\": 1, \"key\": 4294967295},"
                   "{\"name\": \"aa\", \"size\": 1, \"key\": 4294967295}"),
          { "\"zz\"", "\"aa\"", "\"key\"", "4294967295", NULL } },
};

START_TEST(test_key_bad) {
        run_reject_table(key_bad, _i);
}
END_TEST

/* {"ftok": [PATH, PROJ]}: the key ftok(3) gives, as programs that compute theirs get it. */
START_TEST(test_ftok_key_ok) {
        const char *path = TEST_SRCDIR "/test-config.c";
        char *text;
        Config *c;

        ck_assert_int_ge(asprintf(&text, CHANNELS(RAW(", \"key\": {\"ftok\": [\"%s\", 12]}")), path), 0);
        c = parse_ok(text);
        ck_assert(only_channel(c)->has_key);
        ck_assert_uint_eq(only_channel(c)->key, (uint32_t) ftok(path, 12));
        config_free(c);
        free(text);
        /* Another project id, another key. */
        ck_assert_int_ge(asprintf(&text, CHANNELS(RAW(", \"key\": {\"ftok\": [\"%s\", 255]}")), path), 0);
        c = parse_ok(text);
        ck_assert_uint_eq(only_channel(c)->key, (uint32_t) ftok(path, 255));
        ck_assert_uint_ne(ftok(path, 255), ftok(path, 12));
        config_free(c);
        free(text);
}
END_TEST

static const Reject ftok_bad[] = {
        CH_REJECT(", \"key\": {\"ftok\": [\"/nonexistent/shmbroker-test\", 12]}", "ftok",
                  "/nonexistent/shmbroker-test", "No such file"),
        CH_REJECT(", \"key\": {\"ftok\": [\"/\", 0]}", "\"key\"", "1-255"),
        CH_REJECT(", \"key\": {\"ftok\": [\"/\", 256]}", "\"key\"", "1-255"),
        CH_REJECT(", \"key\": {\"ftok\": [\"relative/file\", 12]}", "\"key\"", "absolute"),
        CH_REJECT(", \"key\": {\"ftok\": \"/\"}", "\"key\"", "ftok"),
        CH_REJECT(", \"key\": {\"ftok\": [\"/\", 12, 1]}", "\"key\""),
        CH_REJECT(", \"key\": {\"ftok\": [\"/\", 12], \"proj\": 1}", "\"key\""),
        CH_REJECT(", \"key\": {}", "\"key\""),
        /* Two channels whose ftok keys are the same: both named. */
        { CHANNELS("{\"name\": \"one\", \"size\": 1, \"key\": {\"ftok\": [\"/\", 7]}},"
                   "{\"name\": \"two\", \"size\": 1, \"key\": {\"ftok\": [\"/\", 7]}}"),
          { "\"one\"", "\"two\"", "same \"key\"", "ftok(\"/\", 7) and ftok(\"/\", 7)", "16 bits", NULL } },
};

START_TEST(test_ftok_key_bad) {
        run_reject_table(ftok_bad, _i);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* names                                                                     */

START_TEST(test_name_lengths) {
        char *name = repeat('n', 64), text[512];
        Config *c;

        snprintf(text, sizeof text, CHANNELS("{\"name\": \"%s\", \"size\": 1}"), name);
        c = parse_ok(text);
        ck_assert_str_eq(only_channel(c)->name, name);
        ck_assert_int_eq(config_find_channel(c, name), 0);
        config_free(c);

        snprintf(text, sizeof text, CHANNELS("{\"name\": \"%sn\", \"size\": 1}"), name);
        expect_reject_text(text, strlen(text), (const char *const[]) { "\"name\"", "channels[0]", name, NULL });
        free(name);

        c = parse_ok(CHANNELS("{\"name\": \"A-z_0.9\", \"size\": 1}"));
        ck_assert_str_eq(only_channel(c)->name, "A-z_0.9");
        config_free(c);
}
END_TEST

static const Reject name_bad[] = {
        { CHANNELS("{\"name\": \"bad name\", \"size\": 1}"), { "\"name\"", "bad name", NULL } },
        { CHANNELS("{\"name\": \"a/b\", \"size\": 1}"), { "\"name\"", "a/b", NULL } },
        { CHANNELS("{\"name\": \"caf\\u00e9\", \"size\": 1}"), { "\"name\"", NULL } },
        { CHANNELS("{\"name\": \"\", \"size\": 1}"), { "\"name\"", "channels[0]", NULL } },
        { CHANNELS("{\"size\": 1}"), { "\"name\"", "channels[0]", NULL } },
        { CHANNELS("{\"name\": \"ok\", \"size\": 1}, {\"size\": 1}"), { "\"name\"", "channels[1]", NULL } },
        { CHANNELS("{\"name\": 5, \"size\": 1}"), { "\"name\"", NULL } },
        /* shmbroker.json(5), ERRORS: channel errors name "its index in channels"; a name of the wrong type too. */
        { CHANNELS("{\"name\": \"ok\", \"size\": 1}, {\"name\": 5, \"size\": 1}"),
          { "\"name\"", "channels[1]", NULL } },
        { CHANNELS("{\"name\": \"ok\", \"size\": 1}, {\"name\": null, \"size\": 1}"),
          { "\"name\"", "channels[1]", NULL } },
        { CHANNELS("{\"name\": \"dup\", \"size\": 1}, {\"name\": \"other\", \"size\": 1},"
                   "{\"name\": \"dup\", \"size\": 2}"),
          { "\"dup\"", "twice", NULL } },
        /* A ring and a raw channel share one name space. */
        { CHANNELS("{\"name\": \"same\", \"size\": 1}, "
                   "{\"name\": \"same\", \"layout\": \"ring\", \"slot_size\": 1, \"slots\": 1}"),
          { "\"same\"", NULL } },
};

START_TEST(test_name_bad) {
        run_reject_table(name_bad, _i);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* top level: version, unknown keys, structure, admin_group                  */

static const Reject top_bad[] = {
        { "{\"channels\": []}", { "\"version\"", NULL } },
        { "{\"version\": 2}", { "\"version\"", "2", NULL } },
        { "{\"version\": 0}", { "\"version\"", "0", NULL } },
        { "{\"version\": \"1\"}", { "\"version\"", NULL } },
        { "{\"version\": 1.0}", { "\"version\"", NULL } },
        { "{\"version\": 1, \"sockt\": \"/tmp/x\"}", { "sockt", "unknown", NULL } },
        { "{\"version\": 1, \"channels\": {}}", { "\"channels\"", "array", NULL } },
        { "{\"version\": 1, \"channels\": \"chan\"}", { "\"channels\"", "array", NULL } },
        { "{\"version\": 1, \"channels\": [5]}", { "channels[0]", "object", NULL } },
        { "{\"version\": 1, \"channels\": [{\"name\": \"x\", \"size\": 1}, []]}", { "channels[1]", "object", NULL } },
        { "[]", { "object", NULL } },
        { "null", { SRC ":1:", NULL } },
        { "{\"version\": 1, \"socket\": \"\"}", { "\"socket\"", NULL } },
        { "{\"version\": 1, \"socket\": 5}", { "\"socket\"", NULL } },
        { "{\"version\": 1, \"admin_group\": \"no-such-group-shmbroker\"}",
          { "\"admin_group\"", "no-such-group-shmbroker", NULL } },
        { "{\"version\": 1, \"admin_group\": -3}", { "\"admin_group\"", NULL } },
        /* Duplicate keys are refused by the parser itself. */
        { "{\"version\": 1, \"version\": 1}", { "duplicate", "version", NULL } },
        { "{\"version\": 1, \"channels\": [{\"name\": \"x\", \"size\": 1, \"size\": 2}]}",
          { "duplicate", "size", NULL } },
        /* Unknown and misplaced channel keys. */
        CH_REJECT(", \"mdoe\": \"0660\"", "mdoe", "unknown"),
        /* Every unknown key is named, in the file's order, among known ones on either side. */
        CH_REJECT(", \"zz\": 1, \"mode\": \"0660\", \"mdoe\": 1", "unknown key \"zz, mdoe\""),
        /*
         * Every key a channel may have, and one more: only that one is named. config.c reads the members in one
         * pass, and unpacks strictly only for the message: a key known to the one and not to the other fails this.
         */
        CH_REJECT(", \"layout\": \"raw\", \"slot_size\": 1, \"slots\": 1, \"semaphores\": 1, \"owner\": \"root\","
                  " \"group\": \"root\", \"mode\": \"0660\", \"key\": 1, \"subscribers\": 1, \"overflow\": \"drop\","
                  " \"kind\": \"sysv\", \"zz\": 1", "unknown key \"zz\""),
        CH_REJECT(", \"slot_size\": 64", "\"slot_size\""),
        CH_REJECT(", \"slots\": 4", "\"slots\""),
        CH_REJECT(", \"layout\": \"fifo\"", "\"layout\"", "fifo"),
        CH_REJECT(", \"layout\": 1", "\"layout\""),
        { CHANNELS("{\"name\": \"nosize\"}"), { "\"nosize\"", "\"size\"", "missing", NULL } },
        /* Ring errors. */
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slots\": 8}"), { "\"rng\"", "\"slot_size\"", NULL } },
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 8}"), { "\"rng\"", "\"slots\"", NULL } },
        { CHANNELS(RING(", \"size\": 4096")), { "\"rng\"", "\"size\"", NULL } },
        { CHANNELS(RING(", \"mdoe\": \"0660\"")), { "\"rng\"", "mdoe", NULL } },
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 8, \"slots\": 1048577}"),
          { "\"rng\"", "\"slots\"", "1048576", NULL } },
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 8, \"slots\": 0}"),
          { "\"rng\"", "\"slots\"", NULL } },
        /* One slot cannot tell a full ring from an empty one. */
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 8, \"slots\": 1}"),
          { "\"rng\"", "\"slots\"", "2", NULL } },
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 0, \"slots\": 8}"),
          { "\"rng\"", "\"slot_size\"", NULL } },
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": 1073741825, \"slots\": 8}"),
          { "\"rng\"", "\"slot_size\"", NULL } },
        { CHANNELS("{\"name\": \"rng\", \"layout\": \"ring\", \"slot_size\": \"64K\", \"slots\": 8}"),
          { "\"rng\"", "\"slot_size\"", NULL } },
        /* Broadcast errors. */
        { CHANNELS("{\"name\": \"bc\", \"layout\": \"broadcast\", \"slots\": 8}"), { "\"bc\"", "\"slot_size\"", NULL } },
        { CHANNELS("{\"name\": \"bc\", \"layout\": \"broadcast\", \"slot_size\": 8}"), { "\"bc\"", "\"slots\"", NULL } },
        { CHANNELS(BCAST(", \"size\": 4096")), { "\"bc\"", "\"size\"", "broadcast", NULL } },
        { CHANNELS(BCAST(", \"subscribers\": 0")), { "\"bc\"", "\"subscribers\"", NULL } },
        { CHANNELS(BCAST(", \"subscribers\": 257")), { "\"bc\"", "\"subscribers\"", "256", NULL } },
        { CHANNELS(BCAST(", \"subscribers\": \"4\"")), { "\"bc\"", "\"subscribers\"", NULL } },
        { CHANNELS(BCAST(", \"overflow\": \"wait\"")), { "\"bc\"", "\"overflow\"", "wait", NULL } },
        { CHANNELS(BCAST(", \"overflow\": true")), { "\"bc\"", "\"overflow\"", NULL } },
        { CHANNELS(BCAST(", \"subscriber\": 4")), { "\"bc\"", "subscriber", "unknown", NULL } },
        { CHANNELS("{\"name\": \"bc\", \"layout\": \"broadcast\", \"slot_size\": 8, \"slots\": 1}"),
          { "\"bc\"", "\"slots\"", "2", NULL } },
        /* Broadcast keys anywhere else. */
        { CHANNELS(RING(", \"subscribers\": 4")), { "\"rng\"", "\"subscribers\"", "broadcast", NULL } },
        { CHANNELS(RING(", \"overflow\": \"drop\"")), { "\"rng\"", "\"overflow\"", "broadcast", NULL } },
        CH_REJECT(", \"overflow\": \"block\"", "\"overflow\"", "broadcast"),
        /* A later channel's error names that channel, not the first. */
        { CHANNELS("{\"name\": \"good\", \"size\": 1}, {\"name\": \"bad\", \"size\": 0}"),
          { "\"bad\"", "channels[1]", "\"size\"", NULL } },
};

START_TEST(test_top_bad) {
        run_reject_table(top_bad, _i);
}
END_TEST

START_TEST(test_admin_group) {
        Config *c = parse_ok("{\"version\": 1, \"admin_group\": \"root\"}");

        ck_assert_str_eq(c->admin_group, "root");
        ck_assert_uint_eq(c->admin_gid, 0);
        config_free(c);

        c = parse_ok("{\"version\": 1, \"admin_group\": \"4242\"}");
        ck_assert_str_eq(c->admin_group, "4242");
        ck_assert_uint_eq(c->admin_gid, 4242);
        config_free(c);

        c = parse_ok("{\"version\": 1, \"admin_group\": 4243}");
        ck_assert_ptr_nonnull(c->admin_group);
        ck_assert_uint_eq(c->admin_gid, 4243);
        config_free(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* JSON syntax errors                                                        */

START_TEST(test_syntax_error_position) {
        /* The stray ',' is on line 3, column 8. */
        static const char text[] = "{\n  \"version\": 1,\n  \"x\": ,\n}\n";
        char msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        r = config_parse(text, strlen(text), SRC, &c, msg, sizeof msg);
        ck_assert_int_eq(r, EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_msg(strncmp(msg, SRC ":3:8:", strlen(SRC ":3:8:")) == 0, "message \"%s\" lacks test.json:3:8:", msg);
}
END_TEST

START_TEST(test_syntax_error_line5) {
        /* An unterminated array: the error is reported at the end, line 5. */
        static const char text[] = "{\"version\": 1,\n\"channels\": [\n{\"name\": \"a\", \"size\": 1}\n\n";
        char msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        r = config_parse(text, strlen(text), SRC, &c, msg, sizeof msg);
        ck_assert_int_eq(r, EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_msg(strncmp(msg, SRC ":5:", strlen(SRC ":5:")) == 0 ||
                      strncmp(msg, SRC ":4:", strlen(SRC ":4:")) == 0,
                      "message \"%s\" does not give line 4 or 5", msg);
}
END_TEST

static const Reject syntax_bad[] = {
        { "", { SRC ":1:", NULL } },
        { "{", { SRC ":1:", NULL } },
        { "{\"version\": 1,}", { SRC ":1:", NULL } },
        { "{\"version\": 1}\n{\"version\": 1}", { SRC ":2:", NULL } },
        { "{\"version\": 1, /* comment */}", { SRC ":1:", NULL } },
        { "\n\n\n\n\n\n{\"version\": 01}", { SRC ":7:", NULL } },
        /* Bigger than jansson's integers: a parse error, not a size error. */
        { CHANNELS("{\"name\": \"x\",\n \"size\": 9223372036854775808}"), { SRC ":2:", "9223372036854775808", NULL } },
        /* A bare string or number is not a document. */
        { "\"version\"", { SRC ":1:", NULL } },
        { "1", { SRC ":1:", NULL } },
};

START_TEST(test_syntax_bad) {
        run_reject_table(syntax_bad, _i);
}
END_TEST

START_TEST(test_nul_in_text) {
        /* len covers an embedded NUL: jansson must refuse, not truncate. */
        static const char text[] = "{\"version\": 1}\0garbage", later[] = "{\"version\": 1,\n  \0\"channels\": []}";

        /* jansson's own words would be "end of file", of a file that goes on. */
        expect_reject_text(text, sizeof text - 1, (const char *const[]) { SRC ":1:15: a NUL byte", NULL });
        expect_reject_text(later, sizeof later - 1, (const char *const[]) { SRC ":2:3: a NUL byte", NULL });
}
END_TEST

/* An escaped NUL in a string: refused with words for the admin, not the name of a jansson flag. */
START_TEST(test_escaped_nul_in_a_string) {
        static const char text[] = CHANNELS("{\"name\": \"s\", \"size\": \"64K\\u0000junk\"}");
        char msg[512] = "";
        Config *c = NULL;

        ck_assert_int_eq(config_parse(text, sizeof text - 1, SRC, &c, msg, sizeof msg), EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(msg, "\\u0000 (a NUL character)") && !strstr(msg, "JSON_ALLOW_NUL"), "message: %s", msg);
}
END_TEST

START_TEST(test_null_msg) {
        Config *c = NULL;

        /* A NULL message buffer is allowed; the code is still right. */
        ck_assert_int_eq(config_parse("{\"version\": 2}", 14, SRC, &c, NULL, 0), EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(config_parse("{", 1, SRC, &c, NULL, 0), EINVAL);
        ck_assert_ptr_null(c);
}
END_TEST

START_TEST(test_msg_truncated) {
        char msg[8];
        Config *c = NULL;

        memset(msg, 'x', sizeof msg);
        ck_assert_int_eq(config_parse("{\"version\": 2}", 14, SRC, &c, msg, sizeof msg), EINVAL);
        ck_assert_int_eq(msg[sizeof msg - 1], 0);
        ck_assert_str_eq(msg, "test.js");
}
END_TEST

/* ------------------------------------------------------------------------ */
/* config_find_channel, config_free                                          */

START_TEST(test_find_channel) {
        Config *c = parse_ok(CHANNELS("{\"name\": \"a\", \"size\": 1}, {\"name\": \"b\", \"size\": 2},"
                                      "{\"name\": \"c\", \"size\": 3}"));

        ck_assert_int_eq(config_find_channel(c, "a"), 0);
        ck_assert_int_eq(config_find_channel(c, "b"), 1);
        ck_assert_int_eq(config_find_channel(c, "c"), 2);
        ck_assert_uint_eq(c->channels[config_find_channel(c, "b")].size, 2);
        ck_assert_int_eq(config_find_channel(c, "d"), -ENOENT);
        ck_assert_int_eq(config_find_channel(c, ""), -ENOENT);
        ck_assert_int_eq(config_find_channel(c, "A"), -ENOENT);
        ck_assert_int_eq(config_find_channel(c, "ab"), -ENOENT);
        config_free(c);
}
END_TEST

/*
 * A reload looks up every running channel in the new config, and a crash
 * restart every recorded one: a lookup must not cost time in the number of
 * channels. Four rounds of 100000 lookups among 100000 channels: one
 * round took a linear search 23 s here, so four some 90 s (2 * 10^10
 * comparisons) against the case's 10 s timeout, where one round alone
 * left a margin of 2.3 only; the binary search takes 0.4 s in all.
 */
START_TEST(test_find_channel_among_many) {
        enum { N = 100000, ROUNDS = 4 };
        size_t cap = (size_t) N * 40 + 64, len;
        char *text = malloc(cap), msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        ck_assert_ptr_nonnull(text);
        len = (size_t) snprintf(text, cap, "{\"version\": 1, \"channels\": [");
        for (int i = 0; i < N; i++)
                len += (size_t) snprintf(text + len, cap - len, "%s{\"name\": \"c%d\", \"size\": 1}", i ? "," : "", i);
        len += (size_t) snprintf(text + len, cap - len, "]}");
        ck_assert_uint_lt(len, cap);
        r = config_parse(text, len, SRC, &c, msg, sizeof msg);
        free(text);     /* before failing: CK_FORK=no runs stay leak-free */
        ck_assert_msg(r == 0, "%s", msg);
        for (int round = 0; round < ROUNDS; round++)
                for (int i = 0; i < N; i++) {
                        char name[16];

                        snprintf(name, sizeof name, "c%d", i);
                        ck_assert_int_eq(config_find_channel(c, name), i);
                }
        ck_assert_int_eq(config_find_channel(c, "c"), -ENOENT);
        config_free(c);
}
END_TEST

START_TEST(test_free_null) {
        ck_assert_ptr_null(config_free(NULL));
}
END_TEST

/* ------------------------------------------------------------------------ */
/* config_load on files                                                      */

START_TEST(test_load_round_trip) {
        char *path = write_temp(full_config);
        char msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        r = config_load(path, &c, msg, sizeof msg);
        ck_assert_msg(r == 0, "config_load() = %d: %s", r, msg);
        ck_assert_ptr_nonnull(c);
        ck_assert_str_eq(c->source, path);
        check_full_config(c);
        config_free(c);
        remove_temp(path);
}
END_TEST

START_TEST(test_load_bad_config_names_path) {
        char *path = write_temp("{\n  \"version\": 1,\n  \"channels\": [ { \"name\": \"x\", \"size\": 0 } ]\n}\n");
        char msg[MSG_SIZE] = "";
        Config *c = NULL;

        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, path);
        ck_assert_msg_contains(msg, "\"x\"");
        ck_assert_msg_contains(msg, "\"size\"");
        remove_temp(path);

        /* A syntax error in a file carries path:line:column. */
        path = write_temp("{\n  \"version\": 1,\n  \"x\": ,\n}\n");
        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), EINVAL);
        ck_assert_ptr_null(c);
        {
                char want[256];

                snprintf(want, sizeof want, "%s:3:8:", path);
                ck_assert_msg_contains(msg, want);
        }
        remove_temp(path);

        /* An empty file is not a config. */
        path = write_temp("");
        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, path);
        remove_temp(path);
}
END_TEST

/* The bundled example config is valid, and shows every layout and every kind. */
START_TEST(test_load_example) {
        char msg[MSG_SIZE] = "";
        Config *c = NULL;
        bool seen[_PROTO_LAYOUT_MAX] = {}, kinds[_PROTO_KIND_MAX] = {};

        ck_assert_msg(config_load(TEST_SRCDIR "/../examples/shmbroker.json", &c, msg, sizeof msg) == 0, "%s", msg);
        for (size_t i = 0; i < c->n_channels; i++) {
                seen[c->channels[i].layout] = true;
                kinds[c->channels[i].kind] = true;
        }
        for (int l = 0; l < _PROTO_LAYOUT_MAX; l++)
                ck_assert_msg(seen[l], "no %s channel in the example", proto_layout_to_string((ProtoLayout) l));
        for (int k = 0; k < _PROTO_KIND_MAX; k++)
                ck_assert_msg(kinds[k], "no %s channel in the example", proto_kind_to_string((ProtoKind) k));
        config_free(c);
}
END_TEST

START_TEST(test_load_missing) {
        char dir[] = "/tmp/test-config-dir-XXXXXX", path[128], msg[MSG_SIZE] = "";
        Config *c = NULL;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/missing.json", dir);
        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), ENOENT);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, path);

        /* A directory is refused, with a positive error naming it. */
        msg[0] = 0;
        ck_assert_int_eq(config_load(dir, &c, msg, sizeof msg), EFBIG);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, dir);
        ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/*
 * shmbroker.json(5): "a regular file of at most 16 MiB". A valid config
 * padded with spaces to exactly CONFIG_FILE_MAX bytes loads; one byte more
 * is refused before it is read, with EFBIG and the path.
 */
START_TEST(test_load_size_limit) {
        static const char head[] = "{\"version\": 1}";
        char *text = repeat(' ', CONFIG_FILE_MAX + 1), *path, msg[MSG_SIZE] = "";
        Config *c = NULL;

        memcpy(text, head, strlen(head));
        text[CONFIG_FILE_MAX] = 0;
        path = write_temp(text);
        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), 0);
        ck_assert_ptr_nonnull(c);
        c = config_free(c);

        ck_assert_int_eq(truncate(path, (off_t) CONFIG_FILE_MAX + 1), 0);
        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), EFBIG);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, path);
        remove_temp(path);
        free(text);
}
END_TEST

START_TEST(test_load_unreadable) {
        bool as_root = geteuid() == 0;
        char *path;
        char msg[MSG_SIZE] = "";
        Config *c = NULL;

        path = write_temp("{\"version\": 1}");
        ck_assert_int_eq(chmod(path, 0), 0);
        /* Root reads anything: look as nobody, keeping root as the saved uid to come back. */
        if (as_root)
                ck_assert_int_eq(setresuid(65534, 65534, 0), 0);
        ck_assert_int_eq(config_load(path, &c, msg, sizeof msg), EACCES);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, path);
        if (as_root)
                ck_assert_int_eq(setresuid(0, 0, 0), 0);
        remove_temp(path);
}
END_TEST

/*
 * A config path that is a FIFO (a mistake, or a file an editor or a deploy
 * tool swapped) is refused at once like any other file that is not a
 * regular file: open(2) of a FIFO for reading waits for a writer, and the
 * daemon loads the config on its event loop, so a wait there would freeze
 * a reload, every client and even SIGTERM. The case timeout catches a hang.
 */
START_TEST(test_load_fifo) {
        char dir[] = "/tmp/test-config-fifo-XXXXXX", path[128], msg[MSG_SIZE] = "";
        Config *c = NULL;
        int r;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/shmbroker.json", dir);
        ck_assert_int_eq(mkfifo(path, 0600), 0);
        r = config_load(path, &c, msg, sizeof msg);
        ck_assert_int_gt(r, 0);
        ck_assert_ptr_null(c);
        ck_assert_msg_contains(msg, path);
        ck_assert_int_eq(unlink(path), 0);
        ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* ipc_limits_check                                                          */

static IpcLimits roomy_limits(void) {
        return (IpcLimits) {
                .shmmax = UINT64_C(1) << 40,
                .shmmin = 1,
                .shmmni = 4096,
                .shmall = UINT64_C(1) << 30,
                .semmsl = 32000,
                .semmns = 1024000000,
                .semmni = 32000,
                .semvmx = 32767,
                .page_size = 4096,
        };
}

static unsigned short sem_zeros[64];

static ChannelSpec spec(const char *name, uint64_t size, unsigned nsems) {
        ChannelSpec c = { .size = size, .nsems = nsems, .sem_values = sem_zeros };

        ck_assert_uint_le(nsems, ELEMENTSOF(sem_zeros));
        ck_assert_int_eq(strcpy_checked(c.name, sizeof c.name, name), 0);
        return c;
}

START_TEST(test_limits_fit) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("alpha", 1048576, 2), b = spec("beta", 4096, 1);
        const ChannelSpec *v[] = { &a, &b };
        char msg[MSG_SIZE] = "";

        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        ck_assert_int_eq(ipc_limits_check(&l, v, 0, msg, sizeof msg), 0);

        /* Exactly at every limit still fits. */
        l = (IpcLimits) {
                .shmmax = 1048576, .shmmin = 4096, .shmmni = 2 + 5, .shm_ids_used = 5,
                .shmall = 256 + 1 + 10, .shm_pages_used = 10,
                .semmsl = 2, .semmns = 3 + 7, .sem_sems_used = 7, .semmni = 2 + 9, .sem_sets_used = 9,
                .semvmx = 32767, .page_size = 4096,
        };
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
}
END_TEST

/*
 * ipc_limits_check() refuses with ENOSPC, and its message (a fresh one, not
 * one left from an earlier call) names every one of the needles.
 */
#define expect_enospc(l, v, n, ...) expect_enospc_((l), (v), (n), (const char *const[]) { __VA_ARGS__, NULL })

static void expect_enospc_(const IpcLimits *l, const ChannelSpec *const *v, size_t n, const char *const *needles) {
        char msg[MSG_SIZE] = "";

        ck_assert_int_eq(ipc_limits_check(l, v, n, msg, sizeof msg), ENOSPC);
        for (; *needles; needles++)
                ck_assert_msg_contains(msg, *needles);
}

START_TEST(test_limits_shmmax) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("small", 4096, 1), b = spec("hugechan", 1048577, 1);
        const ChannelSpec *v[] = { &a, &b };

        l.shmmax = 1048576;
        expect_enospc(&l, v, 2, "kernel.shmmax", "\"hugechan\"", "1048576", "1048577");

        /* Below SHMMIN is refused too. */
        l = roomy_limits();
        l.shmmin = 8192;
        expect_enospc(&l, v, 2, "SHMMIN", "\"small\"");
}
END_TEST

START_TEST(test_limits_semmsl) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("few", 4096, 4), b = spec("many", 4096, 5);
        const ChannelSpec *v[] = { &a, &b };
        char msg[MSG_SIZE] = "";

        l.semmsl = 4;
        ck_assert_int_eq(ipc_limits_check(&l, v, 1, msg, sizeof msg), 0);
        expect_enospc(&l, v, 2, "SEMMSL", "\"many\"", "5");
}
END_TEST

START_TEST(test_limits_semvmx) {
        IpcLimits l = roomy_limits();
        unsigned short values[2] = { 1, 101 };
        ChannelSpec a = spec("valued", 4096, 2);
        const ChannelSpec *v[] = { &a };
        char msg[MSG_SIZE] = "";

        a.sem_values = values;
        l.semvmx = 101;
        ck_assert_int_eq(ipc_limits_check(&l, v, 1, msg, sizeof msg), 0);
        l.semvmx = 100;
        expect_enospc(&l, v, 1, "SEMVMX", "\"valued\"");
}
END_TEST

START_TEST(test_limits_shmmni) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("a", 1, 1), b = spec("b", 1, 1), c = spec("c", 1, 1);
        const ChannelSpec *v[] = { &a, &b, &c };
        char msg[MSG_SIZE] = "";

        l.shmmni = 5;
        l.shm_ids_used = 2;
        ck_assert_int_eq(ipc_limits_check(&l, v, 3, msg, sizeof msg), 0);
        /* The ids already in use count: 3 + 3 > 5. */
        l.shm_ids_used = 3;
        expect_enospc(&l, v, 3, "kernel.shmmni");
        /* Without anything in use, too many channels alone. */
        l.shmmni = 2;
        l.shm_ids_used = 0;
        expect_enospc(&l, v, 3, "kernel.shmmni");
}
END_TEST

/* A broadcast channel takes two segments (its table is one of its own) and the table's pages. */
START_TEST(test_limits_broadcast_table) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("a", 1, 1), b = spec("bc", 4096, 1);
        const ChannelSpec *v[] = { &a, &b };
        char msg[MSG_SIZE] = "";

        b.layout = PROTO_LAYOUT_BROADCAST;
        b.subscribers = 4;
        l.shmmni = 3;
        l.shm_ids_used = 0;
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        l.shmmni = 2;
        expect_enospc(&l, v, 2, "kernel.shmmni", "3 segments");
        /* 1 + 1 + 1 pages (the table: 256 + 4 * 64 bytes). */
        l = roomy_limits();
        l.shmall = 3;
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        l.shmall = 2;
        expect_enospc(&l, v, 2, "kernel.shmall");
}
END_TEST

START_TEST(test_limits_shmall) {
        IpcLimits l = roomy_limits();
        /* 4097 bytes take 2 pages, 1 byte takes 1: 3 pages in all. */
        ChannelSpec a = spec("a", 4097, 1), b = spec("b", 1, 1);
        const ChannelSpec *v[] = { &a, &b };
        char msg[MSG_SIZE] = "";

        l.shmall = 3 + 100;
        l.shm_pages_used = 100;
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        l.shm_pages_used = 101;
        expect_enospc(&l, v, 2, "kernel.shmall", "3 pages");

        /* Pages follow page_size. */
        l = roomy_limits();
        l.page_size = 65536;
        l.shmall = 1;
        a = spec("a", 65536, 1);
        ck_assert_int_eq(ipc_limits_check(&l, v, 1, msg, sizeof msg), 0);
        a = spec("a", 65537, 1);
        expect_enospc(&l, v, 1, "kernel.shmall");
}
END_TEST

START_TEST(test_limits_semmni) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("a", 1, 1), b = spec("b", 1, 1);
        const ChannelSpec *v[] = { &a, &b };
        char msg[MSG_SIZE] = "";

        l.semmni = 10;
        l.sem_sets_used = 8;
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        l.sem_sets_used = 9;
        expect_enospc(&l, v, 2, "SEMMNI");
}
END_TEST

START_TEST(test_limits_semmns) {
        IpcLimits l = roomy_limits();
        ChannelSpec a = spec("a", 1, 3), b = spec("b", 1, 4);
        const ChannelSpec *v[] = { &a, &b };
        char msg[MSG_SIZE] = "";

        l.semmns = 7 + 20;
        l.sem_sems_used = 20;
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        l.sem_sems_used = 21;
        expect_enospc(&l, v, 2, "SEMMNS", "7 semaphores");
}
END_TEST

START_TEST(test_limits_from_config) {
        /* The parsed full config against limits sized to fit it exactly. */
        Config *c = parse_ok(full_config);
        const ChannelSpec *v[] = { &c->channels[0], &c->channels[1] };
        IpcLimits l = roomy_limits();
        char msg[MSG_SIZE] = "";
        uint64_t pages = (1048576 + 4095) / 4096 + (c->channels[1].size + 4095) / 4096;

        l.shmall = pages;
        l.semmns = 2 + RING_NSEMS;
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, msg, sizeof msg), 0);
        l.semmns--;
        expect_enospc(&l, v, 2, "SEMMNS");
        l = roomy_limits();
        l.semmsl = 1;   /* "telemetry" has two semaphores, the ring one */
        ck_assert_int_eq(ipc_limits_check(&l, v, 2, NULL, 0), ENOSPC);
        expect_enospc(&l, v, 2, "\"telemetry\"");
        config_free(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* limits                                                                    */

/* A config with only the given "limits" members. */
#define LIMITS(members) "{\"version\": 1, \"limits\": {" members "}}"

START_TEST(test_buffers_per_uid_ok) {
        static const struct {
                const char *text;
                uint32_t value;
        } ok[] = {
                { LIMITS(""), 16 * 1024 * 1024 },
                { LIMITS("\"buffers_per_uid\": 65536"), 65536 },
                { LIMITS("\"buffers_per_uid\": 4194304"), 4194304 },
                { LIMITS("\"buffers_per_uid\": 1073741824"), 1073741824 },
        };
        Config *c;

        /* Not given at all: the default, with the other limits'. */
        c = parse_ok("{\"version\": 1}");
        ck_assert_uint_eq(c->limits.buffers_per_uid, 16 * 1024 * 1024);
        ck_assert_uint_eq(c->limits.buffers_per_uid, CONFIG_LIMITS_DEFAULT.buffers_per_uid);
        config_free(c);
        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                c = parse_ok(ok[i].text);
                ck_assert_uint_eq(c->limits.buffers_per_uid, ok[i].value);
                /* The other limits keep their defaults. */
                ck_assert_uint_eq(c->limits.output_max, CONFIG_LIMITS_DEFAULT.output_max);
                ck_assert_uint_eq(c->limits.connections_per_uid, CONFIG_LIMITS_DEFAULT.connections_per_uid);
                config_free(c);
        }
        c = parse_ok(LIMITS("\"output_max\": 4096, \"buffers_per_uid\": 131072, \"connections_per_uid\": 3"));
        ck_assert_uint_eq(c->limits.output_max, 4096);
        ck_assert_uint_eq(c->limits.buffers_per_uid, 131072);
        ck_assert_uint_eq(c->limits.connections_per_uid, 3);
        config_free(c);
}
END_TEST

static const Reject buffers_per_uid_bad[] = {
        { LIMITS("\"buffers_per_uid\": 65535"), { "\"buffers_per_uid\"", "65536", "1073741824", "65535", NULL } },
        { LIMITS("\"buffers_per_uid\": 1073741825"), { "\"buffers_per_uid\"", "1073741824", NULL } },
        { LIMITS("\"buffers_per_uid\": 0"), { "\"buffers_per_uid\"", NULL } },
        { LIMITS("\"buffers_per_uid\": -1"), { "\"buffers_per_uid\"", NULL } },
        { LIMITS("\"buffers_per_uid\": 4294967296"), { "\"buffers_per_uid\"", NULL } },
        { LIMITS("\"buffers_per_uid\": \"16M\""), { "\"buffers_per_uid\"", "integer", NULL } },
        { LIMITS("\"buffers_per_uid\": 1048576.0"), { "\"buffers_per_uid\"", "integer", NULL } },
        { LIMITS("\"buffers_per_uid\": null"), { "\"buffers_per_uid\"", NULL } },
        /* Strict unpacking: a misspelt key is an error, not a default. */
        { LIMITS("\"buffer_per_uid\": 1048576"), { "\"limits\"", "buffer_per_uid", NULL } },
};

START_TEST(test_buffers_per_uid_bad) {
        run_reject_table(buffers_per_uid_bad, _i);
}
END_TEST

/*
 * shmbroker.json(5), LIMITS: each limit's documented range, both ends
 * accepted as given and one past either end refused, naming the key.
 */
static const struct {
        const char *key;
        uint32_t min, max;
} limit_ranges[] = {
        { "request_max", 256, 65536 },
        { "connections_max", 1, 1000000 },
        { "connections_per_uid", 1, 1000000 },
        { "request_timeout_ms", 10, 3600000 },
        { "output_max", 4096, 1073741824 },
        { "buffers_per_uid", 65536, 1073741824 },
};

static uint32_t limit_value(const ConfigLimits *l, const char *key) {
        if (streq(key, "request_max"))
                return l->request_max;
        if (streq(key, "connections_max"))
                return l->connections_max;
        if (streq(key, "connections_per_uid"))
                return l->connections_per_uid;
        if (streq(key, "request_timeout_ms"))
                return l->request_timeout_ms;
        if (streq(key, "output_max"))
                return l->output_max;
        ck_assert_str_eq(key, "buffers_per_uid");
        return l->buffers_per_uid;
}

START_TEST(test_limit_ranges) {
        const char *key = limit_ranges[_i].key;
        const uint64_t ends[2] = { limit_ranges[_i].min, limit_ranges[_i].max };
        const uint64_t outside[2] = { ends[0] - 1, ends[1] + 1 };
        char text[256], quoted[64];
        Config *c;

        snprintf(quoted, sizeof quoted, "\"%s\"", key);
        for (size_t i = 0; i < 2; i++) {
                snprintf(text, sizeof text, "{\"version\": 1, \"limits\": {\"%s\": %llu}}", key,
                         (unsigned long long) ends[i]);
                c = parse_ok(text);
                ck_assert_uint_eq(limit_value(&c->limits, key), ends[i]);
                config_free(c);

                snprintf(text, sizeof text, "{\"version\": 1, \"limits\": {\"%s\": %llu}}", key,
                         (unsigned long long) outside[i]);
                expect_reject_text(text, strlen(text), (const char *const[]) { quoted, NULL });
        }
}
END_TEST

/* ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------ */
/* kind                                                                      */

START_TEST(test_kind) {
        Config *c = parse_ok(CHANNELS(RAW("")));

        /* Default: System V, as every config before "kind" meant. */
        ck_assert_int_eq(only_channel(c)->kind, PROTO_KIND_SYSV);
        config_free(c);
        c = parse_ok(CHANNELS(RAW(", \"kind\": \"sysv\", \"key\": 77")));
        ck_assert_int_eq(only_channel(c)->kind, PROTO_KIND_SYSV);
        config_free(c);
        /* Every layout may be posix. */
        c = parse_ok(CHANNELS(RAW(", \"kind\": \"posix\", \"semaphores\": [1, 0, 3]") ","
                              RING(", \"kind\": \"posix\"") "," BCAST(", \"kind\": \"posix\"")));
        ck_assert_uint_eq(c->n_channels, 3);
        for (size_t i = 0; i < 3; i++)
                ck_assert_int_eq(c->channels[i].kind, PROTO_KIND_POSIX);
        ck_assert_uint_eq(c->channels[0].nsems, 3);
        ck_assert_uint_eq(c->channels[0].sem_values[2], 3);
        ck_assert_uint_eq(c->n_fixed_keys, 0);
        config_free(c);
}
END_TEST

static const Reject kind_bad[] = {
        /* Keys are System V's: a posix channel names its files. */
        { CHANNELS(RAW(", \"kind\": \"posix\", \"key\": 77")), { "\"chan\"", "\"key\"", "sysv" } },
        { CHANNELS(RING(", \"kind\": \"posix\", \"key\": {\"ftok\": [\"/\", 1]}")), { "\"rng\"", "\"key\"" } },
        { CHANNELS(RAW(", \"kind\": \"POSIX\"")), { "\"chan\"", "\"kind\"", "POSIX" } },
        { CHANNELS(RAW(", \"kind\": 1")), { "\"chan\"", "kind" } },
        /* One file per semaphore, all handed over in one message. */
        { CHANNELS(RAW(", \"kind\": \"posix\", \"semaphores\": 63")), { "\"chan\"", "62" } },
        /* A ring's own semaphore is a file too: the message counts what the user wrote, and says the room left. */
        { CHANNELS(RING(", \"kind\": \"posix\", \"semaphores\": 62")), { "\"rng\"", "61", "not 62" } },
        { CHANNELS(BCAST(", \"kind\": \"posix\", \"semaphores\": 62")), { "\"bc\"", "broadcast channel", "61", "not 62" } },
};

START_TEST(test_kind_bad) {
        run_reject_table(kind_bad, _i);
}
END_TEST

/* What a crash restart compares: a changed kind is a changed channel. */
START_TEST(test_kind_fingerprint) {
        Config *a = parse_ok(CHANNELS(RAW("")));
        Config *b = parse_ok(CHANNELS(RAW(", \"kind\": \"posix\"")));

        ck_assert_uint_ne(channel_spec_fingerprint(&a->channels[0]), channel_spec_fingerprint(&b->channels[0]));
        config_free(a);
        config_free(b);
}
END_TEST

static TCase *tcase(const char *name) {
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, 10);
        return tc;
}

static Suite *config_suite(void) {
        Suite *s = suite_create("config");
        TCase *tc;

        tc = tcase("valid");
        tcase_add_test(tc, test_full_config);
        tcase_add_test(tc, test_ring_with_user_semaphores);
        tcase_add_test(tc, test_ring_semaphore_count_limit);
        tcase_add_test(tc, test_ring_semaphore_array_limit);
        tcase_add_test(tc, test_broadcast);
        tcase_add_test(tc, test_defaults);
        tcase_add_test(tc, test_no_channels);
        tcase_add_test(tc, test_socket);
        tcase_add_test(tc, test_admin_group);
        suite_add_tcase(s, tc);

        tc = tcase("kind");
        tcase_add_test(tc, test_kind);
        tcase_add_loop_test(tc, test_kind_bad, 0, ELEMENTSOF(kind_bad));
        tcase_add_test(tc, test_kind_fingerprint);
        suite_add_tcase(s, tc);

        tc = tcase("size");
        tcase_add_loop_test(tc, test_size_ok, 0, ELEMENTSOF(size_ok));
        tcase_add_loop_test(tc, test_size_bad, 0, ELEMENTSOF(size_bad));
        suite_add_tcase(s, tc);

        tc = tcase("semaphores");
        tcase_add_test(tc, test_semaphores_ok);
        tcase_add_test(tc, test_semaphore_array_limit);
        tcase_add_loop_test(tc, test_semaphores_bad, 0, ELEMENTSOF(semaphores_bad));
        suite_add_tcase(s, tc);

        tc = tcase("owner-group-mode");
        tcase_add_test(tc, test_owner_group_ok);
        tcase_add_loop_test(tc, test_mode_ok, 0, ELEMENTSOF(mode_ok));
        tcase_add_loop_test(tc, test_owner_mode_bad, 0, ELEMENTSOF(owner_mode_bad));
        suite_add_tcase(s, tc);

        tc = tcase("key");
        tcase_add_test(tc, test_key_ok);
        tcase_add_loop_test(tc, test_key_bad, 0, ELEMENTSOF(key_bad));
        tcase_add_test(tc, test_ftok_key_ok);
        tcase_add_loop_test(tc, test_ftok_key_bad, 0, ELEMENTSOF(ftok_bad));
        suite_add_tcase(s, tc);

        tc = tcase("names");
        tcase_add_test(tc, test_name_lengths);
        tcase_add_loop_test(tc, test_name_bad, 0, ELEMENTSOF(name_bad));
        suite_add_tcase(s, tc);

        tc = tcase("structure");
        tcase_add_loop_test(tc, test_top_bad, 0, ELEMENTSOF(top_bad));
        suite_add_tcase(s, tc);

        tc = tcase("syntax");
        tcase_add_test(tc, test_syntax_error_position);
        tcase_add_test(tc, test_syntax_error_line5);
        tcase_add_loop_test(tc, test_syntax_bad, 0, ELEMENTSOF(syntax_bad));
        tcase_add_test(tc, test_nul_in_text);
        tcase_add_test(tc, test_escaped_nul_in_a_string);
        tcase_add_test(tc, test_null_msg);
        tcase_add_test(tc, test_msg_truncated);
        suite_add_tcase(s, tc);

        tc = tcase("api");
        tcase_add_test(tc, test_find_channel);
        tcase_add_test(tc, test_find_channel_among_many);
        tcase_add_test(tc, test_free_null);
        suite_add_tcase(s, tc);

        tc = tcase("load");
        tcase_add_test(tc, test_load_round_trip);
        tcase_add_test(tc, test_load_bad_config_names_path);
        tcase_add_test(tc, test_load_missing);
        tcase_add_test(tc, test_load_example);
        tcase_add_test(tc, test_load_unreadable);
        tcase_add_test(tc, test_load_size_limit);
        tcase_add_test(tc, test_load_fifo);
        suite_add_tcase(s, tc);

        tc = tcase("limits");
        tcase_add_test(tc, test_buffers_per_uid_ok);
        tcase_add_loop_test(tc, test_buffers_per_uid_bad, 0, ELEMENTSOF(buffers_per_uid_bad));
        tcase_add_loop_test(tc, test_limit_ranges, 0, ELEMENTSOF(limit_ranges));
        suite_add_tcase(s, tc);

        tc = tcase("ipc-limits");
        tcase_add_test(tc, test_limits_fit);
        tcase_add_test(tc, test_limits_shmmax);
        tcase_add_test(tc, test_limits_semmsl);
        tcase_add_test(tc, test_limits_semvmx);
        tcase_add_test(tc, test_limits_shmmni);
        tcase_add_test(tc, test_limits_shmall);
        tcase_add_test(tc, test_limits_broadcast_table);
        tcase_add_test(tc, test_limits_semmni);
        tcase_add_test(tc, test_limits_semmns);
        tcase_add_test(tc, test_limits_from_config);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(config_suite());
        int failed;

        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
