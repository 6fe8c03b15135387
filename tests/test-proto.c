/*
 * Unit tests for the wire protocol v1 library (proto/): names, framing,
 * request decode/encode, response encode/decode and full round trips.
 *
 * Pure functions only: no sockets, no kernel objects. Run under valgrind
 * with CK_FORK=no to check the decoders' cleanup paths for leaks.
 */

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "proto/proto.h"
#include "proto/ring.h"

#define ck_assert_msg_contains(msg, needle) \
        ck_assert_msg(strstr((msg), (needle)) != NULL, "message \"%s\" does not mention \"%s\"", (msg), (needle))

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */

/* A string of n copies of c, malloc'd. */
static char *repeat(char c, size_t n) {
        char *s = malloc(n + 1);

        ck_assert_ptr_nonnull(s);
        memset(s, c, n);
        s[n] = 0;
        return s;
}

/* An encoded line ends with exactly one '\n' and holds no other newline. */
static void assert_one_line(const char *line, size_t len) {
        ck_assert_ptr_nonnull(line);
        ck_assert_uint_gt(len, 1);
        ck_assert_uint_eq(strlen(line), len);
        ck_assert_int_eq(line[len - 1], '\n');
        ck_assert_ptr_eq(memchr(line, '\n', len - 1), NULL);
}

/* Parse an encoded line (minus its newline) as a JSON object. */
static json_t *parse_line(const char *line, size_t len) {
        json_error_t jerr;
        json_t *o;

        assert_one_line(line, len);
        o = json_loadb(line, len - 1, JSON_REJECT_DUPLICATES, &jerr);
        ck_assert_msg(o != NULL, "encoded line is not JSON (%s): %s", jerr.text, line);
        ck_assert(json_is_object(o));
        return o;
}

/* Every key in the NULL-terminated list is present in o. */
static void assert_has_keys(const json_t *o, const char *const *keys) {
        for (const char *const *k = keys; *k; k++)
                ck_assert_msg(json_object_get(o, *k) != NULL, "key \"%s\" missing", *k);
}

static void assert_lacks_keys(const json_t *o, const char *const *keys) {
        for (const char *const *k = keys; *k; k++)
                ck_assert_msg(json_object_get(o, *k) == NULL, "key \"%s\" must not be there", *k);
}

/* o has exactly the listed keys. */
static void assert_exact_keys(const json_t *o, const char *const *keys) {
        size_t n = 0;

        assert_has_keys(o, keys);
        while (keys[n])
                n++;
        ck_assert_uint_eq(json_object_size(o), n);
}

static void assert_json_str(const json_t *o, const char *key, const char *want) {
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
        ck_assert_str_eq(json_string_value(v), want);
}

static void assert_json_int(const json_t *o, const char *key, json_int_t want) {
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
        ck_assert_msg(json_integer_value(v) == want, "\"%s\" is %lld, want %lld", key,
                      (long long) json_integer_value(v), (long long) want);
}

/* --- request decode --- */

static ProtoRequest decode_request_ok(const char *json) {
        ProtoRequest req;
        char msg[PROTO_MESSAGE_MAX] = "";
        int r;

        memset(&req, 0xa5, sizeof req);   /* the decoder must set every field it reports */
        r = proto_request_decode(json, strlen(json), &req, msg, sizeof msg);
        ck_assert_msg(r == 0, "decoding %s failed: %d (%s)", json, r, msg);
        return req;
}

/* Decoding fails with exactly `err`; the message mentions `needle` (if any). */
static void assert_request_fails_len(const char *json, size_t len, int err, const char *needle) {
        ProtoRequest req;
        char msg[PROTO_MESSAGE_MAX] = "";
        int r;

        r = proto_request_decode(json, len, &req, msg, sizeof msg);
        ck_assert_msg(r == err, "decoding %s: got %d (%s), want %d", json, r, msg, err);
        ck_assert_msg(msg[0] != 0, "decoding %s: no message", json);
        if (needle)
                ck_assert_msg_contains(msg, needle);

        /* The same input with no message buffer must not crash either. */
        ck_assert_int_eq(proto_request_decode(json, len, &req, NULL, 0), err);
}

static void assert_request_fails(const char *json, int err, const char *needle) {
        assert_request_fails_len(json, strlen(json), err, needle);
}

/* --- response decode --- */

static void decode_response_ok(ProtoOp op, const char *line, size_t len, ProtoResponse *res) {
        char msg[PROTO_MESSAGE_MAX] = "";
        int r;

        r = proto_response_decode(op, line, len, res, msg, sizeof msg);
        ck_assert_msg(r == 0, "decoding response %.*s failed: %d (%s)", (int) len, line, r, msg);
}

/* Decode an encoder's line (without its newline). */
static void decode_encoded(ProtoOp op, const char *line, size_t len, ProtoResponse *res) {
        assert_one_line(line, len);
        decode_response_ok(op, line, len - 1, res);
}

static void assert_response_fails(ProtoOp op, const char *json, int err, const char *needle) {
        ProtoResponse res;
        char msg[PROTO_MESSAGE_MAX] = "";
        int r;

        r = proto_response_decode(op, json, strlen(json), &res, msg, sizeof msg);
        ck_assert_msg(r == err, "decoding response %s: got %d (%s), want %d", json, r, msg, err);
        if (needle)
                ck_assert_msg_contains(msg, needle);
        ck_assert_int_eq(proto_response_decode(op, json, strlen(json), &res, NULL, 0), err);
}

/* --- channel fixtures --- */

static ProtoChannel raw_channel(void) {
        return (ProtoChannel) {
                .name = "sensor.raw-1",
                .shm_key = 0xDEADBEEFu,        /* high bit set: must stay unsigned */
                .shm_id = 32769,
                .sem_key = 0x5342e001u,
                .sem_id = 7,
                .size = UINT64_C(1) << 33,     /* does not fit 32 bits */
                .nsems = 3,
                .layout = PROTO_LAYOUT_RAW,
                .owner = "root",
                .group = "video",
                .mode = 0660,
        };
}

static ProtoChannel ring_channel(void) {
        return (ProtoChannel) {
                .name = "events_ring",
                .shm_key = 0x5342e002u,
                .shm_id = 0,
                .sem_key = 0x5342e003u,
                .sem_id = 2147483647,
                .size = 65536 + 128,
                .nsems = 4,
                .layout = PROTO_LAYOUT_RING,
                .slot_size = 1024,
                .slots = 64,
                .owner = "1001",
                .group = "shm",
                .mode = 0640,
        };
}

static ProtoChannel broadcast_channel(void) {
        return (ProtoChannel) {
                .name = "news",
                .shm_key = 0x5342e004u,
                .shm_id = 12,
                .sem_key = 0x5342e004u,
                .sem_id = 13,
                .size = 8704 + 128 + 8 * 1088,
                .nsems = 1,
                .layout = PROTO_LAYOUT_BROADCAST,
                .slot_size = 1024,
                .slots = 8,
                .subscribers = 4,
                .overflow = PROTO_OVERFLOW_DROP,
                .table_key = 0xfedcba98u,       /* high bit set: must stay unsigned */
                .table_id = 2147483647,
                .owner = "root",
                .group = "video",
                .mode = 0640,
        };
}

static ProtoSubscription test_subscriptions[2] = {
        { .pid = 300, .position = 8, .lag = 0, .dropped = 0 },
        { .pid = 0, .position = UINT64_C(1) << 40, .lag = 17, .dropped = 123456789012ull },
};

static ProtoSemaphore test_sems[2] = {
        { .value = 1, .has_counts = true, .ncount = 0, .zcount = 2, .pid = 4242 },
        { .value = 0, .has_counts = true, .ncount = 5, .zcount = 0, .pid = 0 },
};

static ProtoClient test_clients[2] = {
        { .pid = 100, .uid = 0, .access = PROTO_ACCESS_RW, .since = 1700000000 },
        { .pid = 2147483647, .uid = 4294967294u, .access = PROTO_ACCESS_RO, .since = -5 },
};

static ProtoChannel status_channel(void) {
        ProtoChannel c = ring_channel();

        c.nattch = 3;
        c.cpid = 1;
        c.lpid = 4242;
        c.atime = 1700000001;
        c.dtime = 1700000002;
        c.ctime = 1699999999;
        c.semaphores = test_sems;
        c.n_semaphores = 2;
        c.clients = test_clients;
        c.n_clients = 2;
        return c;
}

static void assert_channel_eq(ProtoChannelView view, const ProtoChannel *got, const ProtoChannel *want) {
        ck_assert_str_eq(got->name, want->name);
        ck_assert_uint_eq(got->shm_key, want->shm_key);
        ck_assert_int_eq(got->shm_id, want->shm_id);
        ck_assert_uint_eq(got->sem_key, want->sem_key);
        ck_assert_int_eq(got->sem_id, want->sem_id);
        ck_assert_uint_eq(got->size, want->size);
        ck_assert_uint_eq(got->nsems, want->nsems);
        ck_assert_int_eq(got->layout, want->layout);
        if (want->layout == PROTO_LAYOUT_RING || want->layout == PROTO_LAYOUT_BROADCAST) {
                ck_assert_uint_eq(got->slot_size, want->slot_size);
                ck_assert_uint_eq(got->slots, want->slots);
        }
        if (want->layout == PROTO_LAYOUT_BROADCAST) {
                ck_assert_uint_eq(got->subscribers, want->subscribers);
                ck_assert_int_eq(got->overflow, want->overflow);
                ck_assert_uint_eq(got->table_key, want->table_key);
                ck_assert_int_eq(got->table_id, want->table_id);
        }
        if (view == PROTO_VIEW_OPEN)
                return;

        ck_assert_str_eq(got->owner, want->owner);
        ck_assert_str_eq(got->group, want->group);
        ck_assert_uint_eq(got->mode, want->mode);
        if (view == PROTO_VIEW_LIST)
                return;

        ck_assert_uint_eq(got->nattch, want->nattch);
        ck_assert_int_eq(got->cpid, want->cpid);
        ck_assert_int_eq(got->lpid, want->lpid);
        ck_assert_int_eq(got->atime, want->atime);
        ck_assert_int_eq(got->dtime, want->dtime);
        ck_assert_int_eq(got->ctime, want->ctime);
        ck_assert_uint_eq(got->n_semaphores, want->n_semaphores);
        for (size_t i = 0; i < want->n_semaphores; i++) {
                ck_assert_int_eq(got->semaphores[i].value, want->semaphores[i].value);
                ck_assert_int_eq(got->semaphores[i].ncount, want->semaphores[i].ncount);
                ck_assert_int_eq(got->semaphores[i].zcount, want->semaphores[i].zcount);
                ck_assert_int_eq(got->semaphores[i].pid, want->semaphores[i].pid);
        }
        ck_assert_uint_eq(got->n_clients, want->n_clients);
        for (size_t i = 0; i < want->n_clients; i++) {
                ck_assert_int_eq(got->clients[i].pid, want->clients[i].pid);
                ck_assert_uint_eq(got->clients[i].uid, want->clients[i].uid);
                ck_assert_int_eq(got->clients[i].access, want->clients[i].access);
                ck_assert_int_eq(got->clients[i].since, want->clients[i].since);
        }
        ck_assert_uint_eq(got->n_subscriptions, want->n_subscriptions);
        for (size_t i = 0; i < want->n_subscriptions; i++) {
                ck_assert_int_eq(got->subscriptions[i].pid, want->subscriptions[i].pid);
                ck_assert_uint_eq(got->subscriptions[i].position, want->subscriptions[i].position);
                ck_assert_uint_eq(got->subscriptions[i].lag, want->subscriptions[i].lag);
                ck_assert_uint_eq(got->subscriptions[i].dropped, want->subscriptions[i].dropped);
        }
}

static void assert_strv_eq(char **got, char *const *want) {
        size_t i;

        ck_assert_ptr_nonnull(got);   /* an empty list decodes to an empty vector, not NULL */
        for (i = 0; want && want[i]; i++) {
                ck_assert_ptr_nonnull(got[i]);
                ck_assert_str_eq(got[i], want[i]);
        }
        ck_assert_ptr_null(got[i]);
}

/* ------------------------------------------------------------------------ */
/* names                                                                     */

START_TEST(test_op_names) {
        static const char *const want[_PROTO_OP_MAX] = {
                "hello", "open", "close", "list", "status", "reload",
        };

        for (int op = 0; op < _PROTO_OP_MAX; op++) {
                const char *s = proto_op_to_string((ProtoOp) op);

                ck_assert_ptr_nonnull(s);
                ck_assert_str_eq(s, want[op]);
                ck_assert_int_eq(proto_op_from_string(s), op);
        }
        ck_assert_ptr_null(proto_op_to_string(_PROTO_OP_MAX));
        ck_assert_ptr_null(proto_op_to_string((ProtoOp) -1));
}
END_TEST

START_TEST(test_access_and_layout_names) {
        ck_assert_str_eq(proto_access_to_string(PROTO_ACCESS_RW), "rw");
        ck_assert_str_eq(proto_access_to_string(PROTO_ACCESS_RO), "ro");
        for (int a = 0; a < _PROTO_ACCESS_MAX; a++)
                ck_assert_int_eq(proto_access_from_string(proto_access_to_string((ProtoAccess) a)), a);
        ck_assert_ptr_null(proto_access_to_string(_PROTO_ACCESS_MAX));

        ck_assert_str_eq(proto_layout_to_string(PROTO_LAYOUT_RAW), "raw");
        ck_assert_str_eq(proto_layout_to_string(PROTO_LAYOUT_RING), "ring");
        ck_assert_str_eq(proto_layout_to_string(PROTO_LAYOUT_BROADCAST), "broadcast");
        ck_assert_str_eq(proto_overflow_to_string(PROTO_OVERFLOW_BLOCK), "block");
        ck_assert_str_eq(proto_overflow_to_string(PROTO_OVERFLOW_DROP), "drop");
        for (int o = 0; o < _PROTO_OVERFLOW_MAX; o++)
                ck_assert_int_eq(proto_overflow_from_string(proto_overflow_to_string((ProtoOverflow) o)), o);
        ck_assert_ptr_null(proto_overflow_to_string(_PROTO_OVERFLOW_MAX));
        ck_assert_int_eq(proto_overflow_from_string("Drop"), -EINVAL);
        for (int l = 0; l < _PROTO_LAYOUT_MAX; l++)
                ck_assert_int_eq(proto_layout_from_string(proto_layout_to_string((ProtoLayout) l)), l);
        ck_assert_ptr_null(proto_layout_to_string(_PROTO_LAYOUT_MAX));
}
END_TEST

START_TEST(test_unknown_names) {
        static const char *const bad[] = { "", "OPEN", "Open", "open ", "destroy", "rx", "RW", "wr", "Raw", "rings" };

        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                ck_assert_int_eq(proto_op_from_string(bad[i]), -EINVAL);
                ck_assert_int_eq(proto_access_from_string(bad[i]), -EINVAL);
                ck_assert_int_eq(proto_layout_from_string(bad[i]), -EINVAL);
        }
        ck_assert_int_eq(proto_op_from_string(NULL), -EINVAL);
        ck_assert_int_eq(proto_access_from_string(NULL), -EINVAL);
        ck_assert_int_eq(proto_layout_from_string(NULL), -EINVAL);
}
END_TEST

START_TEST(test_errno_names) {
        static const struct {
                int err;
                const char *name;
        } table[] = {
                { ENOENT, "ENOENT" }, { EACCES, "EACCES" }, { EINVAL, "EINVAL" },
                { EPROTO, "EPROTO" }, { EBUSY, "EBUSY" }, { ENOSPC, "ENOSPC" },
                { E2BIG, "E2BIG" }, { EBADMSG, "EBADMSG" }, { EOPNOTSUPP, "EOPNOTSUPP" },
                { ENOBUFS, "ENOBUFS" }, { EUSERS, "EUSERS" },
        };

        for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
                const char *name = proto_errno_to_name(table[i].err);

                ck_assert_ptr_nonnull(name);
                ck_assert_str_eq(name, table[i].name);
                ck_assert_int_eq(proto_errno_from_name(table[i].name), table[i].err);
        }
        ck_assert_int_eq(proto_errno_from_name("EWHATEVER"), -EINVAL);
        ck_assert_int_eq(proto_errno_from_name("enoent"), -EINVAL);
        ck_assert_int_eq(proto_errno_from_name(""), -EINVAL);
        ck_assert_int_eq(proto_errno_from_name(NULL), -EINVAL);
        ck_assert_ptr_null(proto_errno_to_name(9999));
        ck_assert_ptr_null(proto_errno_to_name(0));
        ck_assert_ptr_null(proto_errno_to_name(-ENOENT));
}
END_TEST

START_TEST(test_name_is_valid) {
        char *s64 = repeat('a', 64), *s65 = repeat('b', 65);

        ck_assert(proto_name_is_valid("a"));
        ck_assert(proto_name_is_valid(s64));
        ck_assert(proto_name_is_valid("a.b_c-D9"));
        ck_assert(proto_name_is_valid("..."));

        ck_assert(!proto_name_is_valid(""));
        ck_assert(!proto_name_is_valid(s65));
        ck_assert(!proto_name_is_valid(NULL));
        ck_assert(!proto_name_is_valid("a b"));
        ck_assert(!proto_name_is_valid("a/b"));
        ck_assert(!proto_name_is_valid("\xc3\xa9"));   /* "é" */
        ck_assert(!proto_name_is_valid("a\nb"));
        ck_assert(!proto_name_is_valid("a:b"));

        /* Every byte alone and after a valid one: valid exactly when it is one of the set. */
        for (int c = 1; c < 256; c++) {
                static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
                char one[2] = { (char) c, 0 }, two[3] = { 'x', (char) c, 0 };
                bool in_set = strchr(set, c) != NULL;

                ck_assert_msg(proto_name_is_valid(one) == in_set, "byte 0x%02x", (unsigned) c);
                ck_assert_msg(proto_name_is_valid(two) == in_set, "byte 0x%02x after x", (unsigned) c);
        }
        free(s64);
        free(s65);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* framing                                                                   */

START_TEST(test_frame_complete_line) {
        static const char buf[] = "{\"op\":\"list\"}\ntrailing";
        size_t n = 12345;

        ck_assert_int_eq(proto_frame_next(buf, strlen(buf), &n), 1);
        ck_assert_uint_eq(n, strlen("{\"op\":\"list\"}"));
}
END_TEST

START_TEST(test_frame_needs_more) {
        static const char buf[] = "{\"op\":\"li";
        size_t n = 12345;

        ck_assert_int_eq(proto_frame_next(buf, strlen(buf), &n), 0);
        ck_assert_int_eq(proto_frame_next(buf, 0, &n), 0);
        /* an empty buffer may be NULL (a drained connection's): UBSan checks memchr() is not given it */
        ck_assert_int_eq(proto_frame_next(NULL, 0, &n), 0);
        /* the newline just past len does not count */
        ck_assert_int_eq(proto_frame_next("ab\n", 2, &n), 0);
}
END_TEST

START_TEST(test_frame_empty_line) {
        size_t n = 12345;

        ck_assert_int_eq(proto_frame_next("\n", 1, &n), 1);
        ck_assert_uint_eq(n, 0);
        n = 12345;
        ck_assert_int_eq(proto_frame_next("\n\nx", 3, &n), 1);
        ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(test_frame_two_lines) {
        static const char buf[] = "ab\ncde\nf";
        size_t len = strlen(buf), n = 0, off = 0;

        ck_assert_int_eq(proto_frame_next(buf, len, &n), 1);
        ck_assert_uint_eq(n, 2);
        off += n + 1;
        ck_assert_int_eq(proto_frame_next(buf + off, len - off, &n), 1);
        ck_assert_uint_eq(n, 3);
        ck_assert(memcmp(buf + off, "cde", 3) == 0);
        off += n + 1;
        ck_assert_int_eq(proto_frame_next(buf + off, len - off, &n), 0);
}
END_TEST

START_TEST(test_frame_limit) {
        /* PROTO_LINE_MAX + 1 bytes so every case can be cut from one buffer */
        char *buf = repeat('x', PROTO_LINE_MAX + 1);
        size_t n = 0;

        /* PROTO_LINE_MAX - 1 bytes + '\n' = PROTO_LINE_MAX: accepted */
        buf[PROTO_LINE_MAX - 1] = '\n';
        ck_assert_int_eq(proto_frame_next(buf, PROTO_LINE_MAX, &n), 1);
        ck_assert_uint_eq(n, PROTO_LINE_MAX - 1);
        /* ... even with more bytes behind it */
        ck_assert_int_eq(proto_frame_next(buf, PROTO_LINE_MAX + 1, &n), 1);
        ck_assert_uint_eq(n, PROTO_LINE_MAX - 1);

        /* PROTO_LINE_MAX - 1 bytes and no newline yet: still waiting */
        ck_assert_int_eq(proto_frame_next(buf, PROTO_LINE_MAX - 1, &n), 0);

        /* PROTO_LINE_MAX bytes and no newline: the limit is broken */
        buf[PROTO_LINE_MAX - 1] = 'x';
        ck_assert_int_eq(proto_frame_next(buf, PROTO_LINE_MAX, &n), E2BIG);

        /* PROTO_LINE_MAX bytes + '\n' is one byte too long */
        buf[PROTO_LINE_MAX] = '\n';
        ck_assert_int_eq(proto_frame_next(buf, PROTO_LINE_MAX + 1, &n), E2BIG);
        free(buf);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* request decode                                                            */

START_TEST(test_request_decode_hello) {
        ProtoRequest r;

        r = decode_request_ok("{\"op\":\"hello\",\"version\":1}");
        ck_assert_int_eq(r.op, PROTO_OP_HELLO);
        ck_assert_int_eq(r.version, 1);
        ck_assert(!r.has_client);
        ck_assert(!r.has_channel);

        r = decode_request_ok("{\"version\":1,\"client\":\"myapp/2.0 (pid 42)\",\"op\":\"hello\"}");
        ck_assert_int_eq(r.op, PROTO_OP_HELLO);
        ck_assert_int_eq(r.version, 1);
        ck_assert(r.has_client);
        ck_assert_str_eq(r.client, "myapp/2.0 (pid 42)");

        /* the version is checked by the daemon, not the decoder: any integer is one (EPROTO there) */
        r = decode_request_ok("{\"op\":\"hello\",\"version\":7}");
        ck_assert_int_eq(r.version, 7);
        r = decode_request_ok("{\"op\":\"hello\",\"version\":1099511627776}");
        ck_assert(r.version == INT64_C(1099511627776));
        r = decode_request_ok("{\"op\":\"hello\",\"version\":-2147483649}");
        ck_assert(r.version == INT64_C(-2147483649));
}
END_TEST

START_TEST(test_request_decode_open_close) {
        ProtoRequest r;

        r = decode_request_ok("{\"op\":\"open\",\"channel\":\"cam0.frames\",\"access\":\"rw\"}");
        ck_assert_int_eq(r.op, PROTO_OP_OPEN);
        ck_assert(r.has_channel);
        ck_assert_str_eq(r.channel, "cam0.frames");
        ck_assert_int_eq(r.access, PROTO_ACCESS_RW);

        r = decode_request_ok("{\"access\":\"ro\",\"channel\":\"x\",\"op\":\"open\"}");
        ck_assert_int_eq(r.op, PROTO_OP_OPEN);
        ck_assert_str_eq(r.channel, "x");
        ck_assert_int_eq(r.access, PROTO_ACCESS_RO);
        ck_assert(!r.has_holder);

        /* The token held before a broker restart, to take back: any 32-bit value but 0. */
        r = decode_request_ok("{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":4294967295}");
        ck_assert(r.has_holder);
        ck_assert_uint_eq(r.holder, UINT32_MAX);
        r = decode_request_ok("{\"holder\":1,\"op\":\"open\",\"channel\":\"x\",\"access\":\"ro\"}");
        ck_assert(r.has_holder);
        ck_assert_uint_eq(r.holder, 1);
        ck_assert_int_eq(r.access, PROTO_ACCESS_RO);

        r = decode_request_ok("{\"op\":\"close\",\"channel\":\"a.b_c-D9\"}");
        ck_assert_int_eq(r.op, PROTO_OP_CLOSE);
        ck_assert(r.has_channel);
        ck_assert_str_eq(r.channel, "a.b_c-D9");
}
END_TEST

START_TEST(test_request_decode_list_status_reload) {
        ProtoRequest r;

        r = decode_request_ok("{\"op\":\"list\"}");
        ck_assert_int_eq(r.op, PROTO_OP_LIST);
        ck_assert(!r.has_channel);

        r = decode_request_ok("{\"op\":\"status\"}");
        ck_assert_int_eq(r.op, PROTO_OP_STATUS);
        ck_assert(!r.has_channel);

        r = decode_request_ok("{\"op\":\"status\",\"channel\":\"ch1\"}");
        ck_assert_int_eq(r.op, PROTO_OP_STATUS);
        ck_assert(r.has_channel);
        ck_assert_str_eq(r.channel, "ch1");

        r = decode_request_ok("{\"op\":\"reload\"}");
        ck_assert_int_eq(r.op, PROTO_OP_RELOAD);

        /* whitespace is allowed around tokens */
        r = decode_request_ok(" { \"op\" : \"list\" } ");
        ck_assert_int_eq(r.op, PROTO_OP_LIST);
}
END_TEST

START_TEST(test_request_decode_name_limits) {
        char *n64 = repeat('c', 64), *n65 = repeat('c', 65);
        char *c128 = repeat('k', 128), *c129 = repeat('k', 129);
        char line[512];
        ProtoRequest r;

        snprintf(line, sizeof line, "{\"op\":\"close\",\"channel\":\"%s\"}", n64);
        r = decode_request_ok(line);
        ck_assert_str_eq(r.channel, n64);

        snprintf(line, sizeof line, "{\"op\":\"close\",\"channel\":\"%s\"}", n65);
        assert_request_fails(line, EINVAL, "\"channel\"");

        snprintf(line, sizeof line, "{\"op\":\"hello\",\"version\":1,\"client\":\"%s\"}", c128);
        r = decode_request_ok(line);
        ck_assert_str_eq(r.client, c128);

        snprintf(line, sizeof line, "{\"op\":\"hello\",\"version\":1,\"client\":\"%s\"}", c129);
        assert_request_fails(line, EINVAL, "\"client\"");

        free(n64);
        free(n65);
        free(c128);
        free(c129);
}
END_TEST

START_TEST(test_request_decode_not_an_object) {
        static const char *const lines[] = {
                "", "{", "hello", "{\"op\":\"list\"", "{\"op\":\"list\"}}", "{op:\"list\"}",
                "[1,2]", "[]", "42", "\"op\"", "null", "true",
        };

        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
                assert_request_fails(lines[i], EBADMSG, NULL);
}
END_TEST

START_TEST(test_request_decode_op_errors) {
        assert_request_fails("{}", EINVAL, "\"op\"");
        assert_request_fails("{\"channel\":\"x\"}", EINVAL, "\"op\"");
        assert_request_fails("{\"op\":5}", EINVAL, "\"op\"");
        assert_request_fails("{\"op\":null}", EINVAL, "\"op\"");
        assert_request_fails("{\"op\":[\"list\"]}", EINVAL, "\"op\"");
        assert_request_fails("{\"op\":\"destroy\"}", EOPNOTSUPP, "destroy");
        assert_request_fails("{\"op\":\"OPEN\",\"channel\":\"x\",\"access\":\"rw\"}", EOPNOTSUPP, "OPEN");
        assert_request_fails("{\"op\":\"list\",\"op\":\"list\"}", EBADMSG, NULL);
        assert_request_fails("{\"op\":\"close\",\"channel\":\"a\",\"channel\":\"b\"}", EBADMSG, NULL);
}
END_TEST

START_TEST(test_request_decode_field_errors) {
        static const struct {
                const char *line;
                const char *needle;
        } cases[] = {
                /* missing required keys */
                { "{\"op\":\"open\",\"access\":\"rw\"}", "channel" },
                { "{\"op\":\"open\",\"channel\":\"x\"}", "access" },
                { "{\"op\":\"close\"}", "channel" },
                { "{\"op\":\"hello\"}", "version" },
                { "{\"op\":\"hello\",\"client\":\"c\"}", "version" },
                /* unknown keys, named in the message */
                { "{\"op\":\"open\",\"channel\":\"x\",\"chanel\":\"x\",\"access\":\"rw\"}", "chanel" },
                { "{\"op\":\"list\",\"channel\":\"x\"}", "channel" },
                { "{\"op\":\"reload\",\"force\":true}", "force" },
                { "{\"op\":\"status\",\"channel\":\"x\",\"verbose\":true}", "verbose" },
                { "{\"op\":\"status\",\"verbose\":true}", "verbose" },
                { "{\"op\":\"close\",\"channel\":\"x\",\"access\":\"rw\"}", "access" },
                { "{\"op\":\"hello\",\"version\":1,\"clients\":\"x\"}", "clients" },
                /* a misspelt key instead of the right one: the missing one is named */
                { "{\"op\":\"open\",\"chanel\":\"x\",\"access\":\"rw\"}", "channel" },
                /* bad values */
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rx\"}", "access" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":1}", "access" },
                { "{\"op\":\"open\",\"channel\":42,\"access\":\"rw\"}", "\"channel\"" },
                { "{\"op\":\"open\",\"channel\":null,\"access\":\"rw\"}", "\"channel\"" },
                { "{\"op\":\"open\",\"channel\":\"a/b\",\"access\":\"rw\"}", "\"channel\"" },
                { "{\"op\":\"open\",\"channel\":\"\",\"access\":\"rw\"}", "\"channel\"" },
                { "{\"op\":\"close\",\"channel\":\"a b\"}", "\"channel\"" },
                { "{\"op\":\"status\",\"channel\":\"\\u00e9\"}", "\"channel\"" },
                { "{\"op\":\"status\",\"channel\":7}", "\"channel\"" },
                { "{\"op\":\"hello\",\"version\":\"1\"}", "\"version\"" },
                { "{\"op\":\"hello\",\"version\":1.5}", "\"version\"" },
                { "{\"op\":\"hello\",\"version\":1,\"client\":3}", "\"client\"" },
                /* a holder token: a positive 32-bit integer, and only in an open */
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":\"4097\"}", "\"holder\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":1.5}", "\"holder\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":null}", "\"holder\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":true}", "\"holder\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":0}", "\"holder\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":-1}", "\"holder\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"holder\":4294967296}", "\"holder\"" },
                { "{\"op\":\"close\",\"channel\":\"x\",\"holder\":1}", "holder" },
                /* "fd" is true or false, nothing that merely looks like one */
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"fd\":1}", "\"fd\"" },
                { "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\",\"fd\":\"true\"}", "\"fd\"" },
        };

        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
                assert_request_fails(cases[i].line, EINVAL, cases[i].needle);
}
END_TEST

/*
 * Every op with every choice of the other keys it could carry: accepted
 * when it has the keys its shape requires and no other than it allows
 * (SPEC's requests, written out here apart from request.c's tables),
 * refused otherwise, naming a missing or an unknown key. request.c reads
 * the usual request without a strict unpack (json_take_fields()), so this
 * holds that path to the strict one's verdicts.
 */
START_TEST(test_request_decode_every_shape) {
        static const struct {
                const char *key, *value;
        } keys[] = {
                { "version", "1" }, { "client", "\"c\"" }, { "channel", "\"x\"" }, { "access", "\"rw\"" },
                { "holder", "7" }, { "fd", "true" },
        };
        static const struct {
                const char *op, *required, *optional;
        } shapes[] = {
                { "hello", " version ", " client " },
                { "open", " channel access ", " holder fd " },
                { "close", " channel ", "" },
                { "list", "", "" },
                { "status", "", " channel " },
                { "reload", "", "" },
        };

        for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                for (unsigned set = 0; set < 1u << ELEMENTSOF(keys); set++) {
                        char line[512], msg[PROTO_MESSAGE_MAX] = "", word[32];
                        size_t len = (size_t) snprintf(line, sizeof line, "{\"op\":\"%s\"", shapes[s].op);
                        bool ok = true;
                        ProtoRequest req;
                        int r;

                        for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
                                bool has = set & 1u << k;

                                snprintf(word, sizeof word, " %s ", keys[k].key);
                                if (has)
                                        len += (size_t) snprintf(line + len, sizeof line - len, ",\"%s\":%s",
                                                                 keys[k].key, keys[k].value);
                                if (has ? !strstr(shapes[s].required, word) && !strstr(shapes[s].optional, word)
                                        : strstr(shapes[s].required, word) != NULL)
                                        ok = false;
                        }
                        snprintf(line + len, sizeof line - len, "}");
                        r = proto_request_decode(line, strlen(line), &req, msg, sizeof msg);
                        if (ok) {
                                ck_assert_msg(r == 0, "%s: refused (%s)", line, msg);
                                continue;
                        }
                        ck_assert_msg(r == EINVAL, "%s: got %d (%s), want EINVAL", line, r, msg);
                        ck_assert_msg(strstr(msg, "missing key") || strstr(msg, "unknown key"), "%s: %s", line, msg);
                }
}
END_TEST

START_TEST(test_request_decode_embedded_nul) {
        static const char *const lines[] = {
                "{\"op\":\"hello\",\"version\":1,\"client\":\"a\\u0000b\"}",
                "{\"op\":\"close\",\"channel\":\"a\\u0000b\"}",
                "{\"op\":\"open\",\"channel\":\"x\",\"access\":\"rw\\u0000\"}",
                "{\"op\":\"li\\u0000st\"}",
        };
        static const char raw[] = "{\"op\":\"list\"}\0garbage";
        static const char raw_in_string[] = "{\"op\":\"close\",\"channel\":\"a\0b\"}";
        ProtoRequest req;

        /* Either refusal is fine (parser or field check), acceptance is not. */
        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
                int r = proto_request_decode(lines[i], strlen(lines[i]), &req, NULL, 0);

                ck_assert_msg(r == EBADMSG || r == EINVAL || r == EOPNOTSUPP,
                              "%s: got %d", lines[i], r);
        }
        /* A raw NUL byte inside the line, counted in len, is not the end of it. */
        assert_request_fails_len(raw, sizeof raw - 1, EBADMSG, NULL);
        assert_request_fails_len(raw_in_string, sizeof raw_in_string - 1, EBADMSG, NULL);
}
END_TEST

/* A raw NUL byte outside a string is where the JSON parser stops reading, so
 * its own message says "end of file" about a line that goes on; the client
 * must be told what is wrong with its line instead. */
START_TEST(test_request_decode_nul_message) {
        static const char after[] = "{\"op\":\"list\"}\0garbage";
        static const char before[] = "\0{\"op\":\"list\"}";
        char msg[PROTO_MESSAGE_MAX] = "";
        ProtoRequest req;

        assert_request_fails_len(after, sizeof after - 1, EBADMSG, "NUL");
        assert_request_fails_len(before, sizeof before - 1, EBADMSG, "NUL");
        ck_assert_int_eq(proto_request_decode(after, sizeof after - 1, &req, msg, sizeof msg), EBADMSG);
        ck_assert_msg(strstr(msg, "end of file") == NULL, "message \"%s\" speaks of an end of file", msg);
        /* Escaped in a string: in words, not the name of a jansson flag. */
        ck_assert_int_eq(proto_request_decode("{\"op\":\"status\",\"channel\":\"a\\u0000b\"}", 36, &req, msg, sizeof msg),
                         EBADMSG);
        ck_assert_msg(strstr(msg, "\\u0000 (a NUL character)") && !strstr(msg, "JSON_ALLOW_NUL"), "message: %s", msg);
}
END_TEST

START_TEST(test_request_decode_len_is_respected) {
        /* The line need not be NUL-terminated: only len bytes are read. */
        static const char buf[] = "{\"op\":\"list\"}{\"op\":\"reload\"}";
        ProtoRequest req;

        ck_assert_int_eq(proto_request_decode(buf, strlen("{\"op\":\"list\"}"), &req, NULL, 0), 0);
        ck_assert_int_eq(req.op, PROTO_OP_LIST);
        ck_assert_int_eq(proto_request_decode(buf, sizeof buf - 1, &req, NULL, 0), EBADMSG);
}
END_TEST

START_TEST(test_request_decode_small_msg_buffer) {
        static const char line[] = "{\"op\":\"open\",\"channel\":\"x\",\"chanel\":\"x\",\"access\":\"rw\"}";
        char msg[12];
        ProtoRequest req;

        memset(msg, '#', sizeof msg);
        ck_assert_int_eq(proto_request_decode(line, strlen(line), &req, msg, 8), EINVAL);
        ck_assert_uint_eq(strlen(msg), 7);             /* truncated, terminated */
        ck_assert_int_eq(msg[8], '#');                  /* nothing written past msg_size */

        memset(msg, '#', sizeof msg);
        ck_assert_int_eq(proto_request_decode(line, strlen(line), &req, msg, 1), EINVAL);
        ck_assert_int_eq(msg[0], 0);
        ck_assert_int_eq(msg[1], '#');

        memset(msg, '#', sizeof msg);
        ck_assert_int_eq(proto_request_decode(line, strlen(line), &req, msg, 0), EINVAL);
        ck_assert_int_eq(msg[0], '#');
}
END_TEST

/* ------------------------------------------------------------------------ */
/* request encode                                                            */

static ProtoRequest make_request(ProtoOp op, const char *channel, ProtoAccess access) {
        ProtoRequest r = { .op = op, .access = access };

        if (channel) {
                r.has_channel = true;
                strcpy(r.channel, channel);
        }
        return r;
}

/* An open that asks for a holder token back. */
static ProtoRequest make_open_holder(ProtoAccess access, uint32_t holder) {
        ProtoRequest r = make_request(PROTO_OP_OPEN, "ring", access);

        r.has_holder = true;
        r.holder = holder;
        return r;
}

/* Encode, check the framing, decode again, compare. */
static void assert_request_round_trip(const ProtoRequest *in) {
        ProtoRequest out;
        char msg[PROTO_MESSAGE_MAX] = "";
        char *line = NULL;
        size_t len = 0;
        int r;

        ck_assert_int_eq(proto_request_encode(in, &line, &len), 0);
        assert_one_line(line, len);
        r = proto_request_decode(line, len - 1, &out, msg, sizeof msg);
        ck_assert_msg(r == 0, "decoding own encoding %s failed: %d (%s)", line, r, msg);

        ck_assert_int_eq(out.op, in->op);
        switch (in->op) {
        case PROTO_OP_HELLO:
                ck_assert_int_eq(out.version, in->version);
                ck_assert_int_eq(out.has_client, in->has_client);
                if (in->has_client)
                        ck_assert_str_eq(out.client, in->client);
                break;
        case PROTO_OP_OPEN:
                ck_assert_int_eq(out.access, in->access);
                ck_assert_int_eq(out.has_holder, in->has_holder);
                if (in->has_holder)
                        ck_assert_uint_eq(out.holder, in->holder);
                /* fall through */
        case PROTO_OP_CLOSE:
        case PROTO_OP_STATUS:
                ck_assert_int_eq(out.has_channel, in->has_channel);
                if (in->has_channel)
                        ck_assert_str_eq(out.channel, in->channel);
                break;
        default:
                ck_assert(!out.has_channel);
                break;
        }
        free(line);
}

START_TEST(test_request_encode_round_trip) {
        ProtoRequest hello = { .op = PROTO_OP_HELLO, .version = PROTO_VERSION };
        ProtoRequest hello_client = { .op = PROTO_OP_HELLO, .version = PROTO_VERSION, .has_client = true,
                                      .client = "shmbrokerctl \"quoted\" \\ 1.0" };
        const ProtoRequest reqs[] = {
                hello,
                hello_client,
                make_request(PROTO_OP_OPEN, "cam0.frames", PROTO_ACCESS_RW),
                make_request(PROTO_OP_OPEN, "x", PROTO_ACCESS_RO),
                make_open_holder(PROTO_ACCESS_RW, 4097),
                make_open_holder(PROTO_ACCESS_RO, UINT32_MAX),
                make_request(PROTO_OP_CLOSE, "a.b_c-D9", 0),
                make_request(PROTO_OP_LIST, NULL, 0),
                make_request(PROTO_OP_STATUS, NULL, 0),
                make_request(PROTO_OP_STATUS, "ch1", 0),
                make_request(PROTO_OP_RELOAD, NULL, 0),
        };

        for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++)
                assert_request_round_trip(&reqs[i]);
}
END_TEST

START_TEST(test_request_encode_wire_fields) {
        ProtoRequest req = make_request(PROTO_OP_OPEN, "ch", PROTO_ACCESS_RO);
        static const char *const open_keys[] = { "op", "channel", "access", NULL };
        static const char *const list_keys[] = { "op", NULL };
        char *line;
        size_t len;
        json_t *o;

        ck_assert_int_eq(proto_request_encode(&req, &line, &len), 0);
        o = parse_line(line, len);
        assert_exact_keys(o, open_keys);
        assert_json_str(o, "op", "open");
        assert_json_str(o, "channel", "ch");
        assert_json_str(o, "access", "ro");
        json_decref(o);
        free(line);

        /* "holder" only when asked for, as a JSON integer */
        req = make_open_holder(PROTO_ACCESS_RW, 4097);
        ck_assert_int_eq(proto_request_encode(&req, &line, &len), 0);
        o = parse_line(line, len);
        assert_exact_keys(o, (const char *const[]) { "op", "channel", "access", "holder", NULL });
        assert_json_int(o, "holder", 4097);
        json_decref(o);
        free(line);

        /* a status without a channel carries no "channel" key at all */
        req = make_request(PROTO_OP_STATUS, NULL, 0);
        ck_assert_int_eq(proto_request_encode(&req, &line, &len), 0);
        o = parse_line(line, len);
        assert_exact_keys(o, list_keys);
        assert_json_str(o, "op", "status");
        json_decref(o);
        free(line);

        req = (ProtoRequest) { .op = PROTO_OP_HELLO, .version = 1 };
        ck_assert_int_eq(proto_request_encode(&req, &line, &len), 0);
        o = parse_line(line, len);
        assert_json_int(o, "version", 1);
        ck_assert_ptr_null(json_object_get(o, "client"));
        json_decref(o);
        free(line);
}
END_TEST

static void assert_request_encode_einval(const ProtoRequest *req) {
        char *line = NULL;
        size_t len = 0;

        ck_assert_int_eq(proto_request_encode(req, &line, &len), -EINVAL);
        ck_assert_ptr_null(line);
}

START_TEST(test_request_encode_invalid) {
        ProtoRequest bad_op = { .op = _PROTO_OP_MAX };
        ProtoRequest bad_access = make_request(PROTO_OP_OPEN, "ok", (ProtoAccess) 7);
        ProtoRequest no_channel = { .op = PROTO_OP_OPEN };
        ProtoRequest holder_zero = make_open_holder(PROTO_ACCESS_RW, 0);

        assert_request_encode_einval(&holder_zero);     /* 0 is nobody's token */
        assert_request_encode_einval(&bad_op);
        assert_request_encode_einval(&bad_access);
        assert_request_encode_einval(&no_channel);
        for (const char *const *n = (const char *const[]) { "a/b", "a b", "\xc3\xa9", NULL }; *n; n++) {
                ProtoRequest open = make_request(PROTO_OP_OPEN, *n, PROTO_ACCESS_RW);
                ProtoRequest close = make_request(PROTO_OP_CLOSE, *n, 0);
                ProtoRequest status = make_request(PROTO_OP_STATUS, *n, 0);

                assert_request_encode_einval(&open);
                assert_request_encode_einval(&close);
                assert_request_encode_einval(&status);
        }
}
END_TEST

/* proto.h: "-EINVAL if the request is not one that may be sent, -ENOMEM on
 * allocation failure". A hello whose client is not UTF-8 cannot be sent. */
START_TEST(test_request_encode_invalid_client) {
        ProtoRequest req = { .op = PROTO_OP_HELLO, .version = 1, .has_client = true, .client = "\xff\xfe" };

        assert_request_encode_einval(&req);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* response encode                                                           */

static const char *const open_fields[] = {
        "ok", "channel", "kind", "shm_key", "shm_id", "sem_key", "sem_id", "size", "nsems", "layout", NULL,
};
static const char *const ring_fields[] = { "slot_size", "slots", NULL };
static const char *const list_fields[] = {
        "name", "kind", "size", "nsems", "layout", "shm_key", "shm_id", "sem_key", "sem_id",
        "owner", "group", "mode", NULL,
};
static const char *const status_only_fields[] = {
        "nattch", "cpid", "lpid", "atime", "dtime", "ctime", "semaphores", "clients", NULL,
};

START_TEST(test_encode_error) {
        char *line;
        size_t len;
        json_t *o;
        static const char *const keys[] = { "ok", "error", "message", NULL };

        ck_assert_int_eq(proto_encode_error(ENOENT, "no channel \"cam0\"", &line, &len), 0);
        o = parse_line(line, len);
        assert_exact_keys(o, keys);
        ck_assert(json_is_false(json_object_get(o, "ok")));
        assert_json_str(o, "error", "ENOENT");
        assert_json_str(o, "message", "no channel \"cam0\"");
        json_decref(o);
        free(line);

        /* no message, or one with nothing of UTF-8 in it: the name stands in */
        ck_assert_int_eq(proto_encode_error(EACCES, NULL, &line, &len), 0);
        o = parse_line(line, len);
        assert_json_str(o, "error", "EACCES");
        assert_json_str(o, "message", "EACCES");
        json_decref(o);
        free(line);

        ck_assert_int_eq(proto_encode_error(EPROTO, "\xff\xc3", &line, &len), 0);
        o = parse_line(line, len);
        assert_json_str(o, "error", "EPROTO");
        assert_json_str(o, "message", "EPROTO");
        json_decref(o);
        free(line);

        /* A stray byte, and a character cut short (a message cut to its length in bytes): the words stay. */
        ck_assert_int_eq(proto_encode_error(EPROTO, "bad \xff byte in \"caf\xc3\"", &line, &len), 0);
        o = parse_line(line, len);
        assert_json_str(o, "message", "bad  byte in \"caf\"");
        json_decref(o);
        free(line);

        /* Shapes of UTF-8 that jansson refuses (overlong, surrogate, past U+10FFFF) go; the words stay. */
        ck_assert_int_eq(proto_encode_error(EPROTO, "a\xc0\xaf" "b\xed\xa0\x80" "c\xf4\x90\x80\x80" "d\xc3\xa9", &line, &len), 0);
        o = parse_line(line, len);
        assert_json_str(o, "message", "abcd\xc3\xa9");
        json_decref(o);
        free(line);
}
END_TEST

START_TEST(test_encode_error_unnamed) {
        char *line = NULL;
        size_t len = 0;

        ck_assert_int_eq(proto_encode_error(9999, "x", &line, &len), -EINVAL);
        ck_assert_int_eq(proto_encode_error(0, "x", &line, &len), -EINVAL);
        ck_assert_int_eq(proto_encode_error(-ENOENT, "x", &line, &len), -EINVAL);
        ck_assert_ptr_null(line);
}
END_TEST

/*
 * Count the live allocations jansson makes. Everything an encoder builds must
 * be released before it returns, except the dumped line it hands over (which
 * jansson allocated and the caller frees with libc free()).
 */
static long jansson_live;

static void *counting_malloc(size_t n) {
        void *p = malloc(n);

        if (p)
                jansson_live++;
        return p;
}

static void counting_free(void *p) {
        if (p)
                jansson_live--;
        free(p);
}

static long jansson_allocs_kept_by(int (*encode)(const char *message, char **line, size_t *len),
                                   const char *message) {
        char *line = NULL;
        size_t len;
        long before;

        json_set_alloc_funcs(counting_malloc, counting_free);
        before = jansson_live;
        ck_assert_int_eq(encode(message, &line, &len), 0);
        json_set_alloc_funcs(malloc, free);
        free(line);
        return jansson_live - before;
}

static int encode_enoent(const char *message, char **line, size_t *len) {
        return proto_encode_error(ENOENT, message, line, len);
}

START_TEST(test_encode_error_no_leak) {
        long without = jansson_allocs_kept_by(encode_enoent, NULL);
        long with = jansson_allocs_kept_by(encode_enoent, "no such channel");

        /* Nothing jansson allocated outlives the call, message or not (the line is our own malloc). */
        ck_assert_int_eq(without, 0);
        ck_assert_msg(with == without, "proto_encode_error() with a message leaks %ld jansson allocation(s)",
                      with - without);
}
END_TEST

START_TEST(test_encode_hello_and_ok) {
        static const char *const hello_keys[] = { "ok", "version", "server", NULL };
        char *line;
        size_t len;
        json_t *o;

        ck_assert_int_eq(proto_encode_hello(PROTO_VERSION, "shmbrokerd 0.1", &line, &len), 0);
        o = parse_line(line, len);
        assert_exact_keys(o, hello_keys);
        ck_assert(json_is_true(json_object_get(o, "ok")));
        assert_json_int(o, "version", PROTO_VERSION);
        assert_json_str(o, "server", "shmbrokerd 0.1");
        json_decref(o);
        free(line);

        ck_assert_int_eq(proto_encode_ok(&line, &len), 0);
        ck_assert_str_eq(line, "{\"ok\":true}\n");
        ck_assert_uint_eq(len, strlen("{\"ok\":true}\n"));
        free(line);
}
END_TEST

START_TEST(test_encode_open_fields) {
        ProtoChannel raw = raw_channel(), ring = ring_channel();
        static const char *const view_fields[] = { "name", "owner", "group", "mode", "nattch", NULL };
        char *line;
        size_t len;
        json_t *o;

        ck_assert_int_eq(proto_encode_open(&raw, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "slot_size"));
        ck_assert_ptr_null(strstr(line, "\"slots\""));
        o = parse_line(line, len);
        assert_exact_keys(o, open_fields);
        assert_lacks_keys(o, view_fields);
        ck_assert(json_is_true(json_object_get(o, "ok")));
        assert_json_str(o, "channel", "sensor.raw-1");
        assert_json_int(o, "shm_key", 3735928559LL);   /* 0xDEADBEEF read as unsigned */
        assert_json_int(o, "shm_id", 32769);
        assert_json_int(o, "sem_key", 0x5342e001);
        assert_json_int(o, "sem_id", 7);
        assert_json_int(o, "size", 8589934592LL);
        assert_json_int(o, "nsems", 3);
        assert_json_str(o, "layout", "raw");
        json_decref(o);
        free(line);

        ck_assert_int_eq(proto_encode_open(&ring, &line, &len), 0);
        o = parse_line(line, len);
        assert_has_keys(o, open_fields);
        assert_has_keys(o, ring_fields);
        ck_assert_uint_eq(json_object_size(o), 10 + 3);
        assert_json_str(o, "layout", "ring");
        assert_json_int(o, "slot_size", 1024);
        assert_json_int(o, "slots", 64);
        /* The daemon leaves it 0: the layout it writes is this build's. */
        assert_json_int(o, "ring_version", RING_VERSION);
        json_decref(o);
        free(line);
}
END_TEST

/* An open answer for a ring channel "c", with `fields` (",\"name\":value...") after its required ones. */
#define RING_OPEN_ANSWER(fields)                                                                                  \
        "{\"ok\":true,\"channel\":\"c\",\"shm_key\":1,\"shm_id\":0,\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1," \
        "\"layout\":\"ring\",\"slot_size\":8,\"slots\":2" fields "}"

/* Each open answer is refused as malformed, with a message that names `field`. */
static void assert_open_answers_refused(const char *const *answers, size_t n, const char *field) {
        char msg[PROTO_MESSAGE_MAX];
        ProtoResponse res;

        for (size_t i = 0; i < n; i++) {
                ck_assert_msg(proto_response_decode(PROTO_OP_OPEN, answers[i], strlen(answers[i]), &res, msg, sizeof msg) ==
                                      EBADMSG,
                              "not refused: %s", answers[i]);
                ck_assert_msg_contains(msg, field);
        }
}

/* ring_version: only in open answers of rings, decoded when given, optional for an older broker. */
START_TEST(test_ring_version_field) {
        ProtoChannel ring = ring_channel(), raw = raw_channel();
        ProtoChannel v[2] = { raw_channel(), ring_channel() };
        char msg[PROTO_MESSAGE_MAX];
        ProtoResponse res;
        char *line;
        size_t len;

        ring.ring_version = 7;
        ck_assert_int_eq(proto_encode_open(&ring, &line, &len), 0);
        ck_assert_ptr_nonnull(strstr(line, "\"ring_version\":7"));
        ck_assert_int_eq(proto_response_decode(PROTO_OP_OPEN, line, len - 1, &res, msg, sizeof msg), 0);
        ck_assert_uint_eq(res.channels[0].ring_version, 7);
        proto_response_done(&res);
        free(line);

        ck_assert_int_eq(proto_encode_open(&raw, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "ring_version"));
        free(line);
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, v, 2, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "ring_version"));
        free(line);

        /* An answer without it decodes (0: not given); the library refuses the ring then. */
        static const char without[] = RING_OPEN_ANSWER("");
        ck_assert_int_eq(proto_response_decode(PROTO_OP_OPEN, without, strlen(without), &res, msg, sizeof msg), 0);
        ck_assert_uint_eq(res.channels[0].ring_version, 0);
        proto_response_done(&res);

        /* Given, it must be a positive 32-bit integer. */
        static const char *const bad[] = {
                RING_OPEN_ANSWER(",\"ring_version\":0"),
                RING_OPEN_ANSWER(",\"ring_version\":\"3\""),
                RING_OPEN_ANSWER(",\"ring_version\":4294967296"),
        };
        assert_open_answers_refused(bad, sizeof bad / sizeof bad[0], "ring_version");
}
END_TEST

/* wake_fifos: in open answers when given, two absolute paths, decoded into owned strings. */
START_TEST(test_wake_fifos_field) {
        ProtoChannel ring = ring_channel();
        char msg[PROTO_MESSAGE_MAX], d[] = "/run/x.wake/r.data", sp[] = "/run/x.wake/r.space";
        ProtoResponse res;
        char *line;
        size_t len;

        ck_assert_int_eq(proto_encode_open(&ring, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "wake_fifos"));
        free(line);
        ring.wake_fifos[0] = d;
        ring.wake_fifos[1] = sp;
        ck_assert_int_eq(proto_encode_open(&ring, &line, &len), 0);
        ck_assert_ptr_nonnull(strstr(line, "\"wake_fifos\":[\"/run/x.wake/r.data\",\"/run/x.wake/r.space\"]"));
        ck_assert_int_eq(proto_response_decode(PROTO_OP_OPEN, line, len - 1, &res, msg, sizeof msg), 0);
        ck_assert_str_eq(res.channels[0].wake_fifos[0], d);
        ck_assert_str_eq(res.channels[0].wake_fifos[1], sp);
        proto_response_done(&res);
        free(line);

        static const char *const bad[] = {
                RING_OPEN_ANSWER(",\"wake_fifos\":[\"/a\"]"),
                RING_OPEN_ANSWER(",\"wake_fifos\":[\"/a\",\"b\"]"),
                RING_OPEN_ANSWER(",\"wake_fifos\":[\"/a\",3]"),
                RING_OPEN_ANSWER(",\"wake_fifos\":\"/a\""),
        };
        assert_open_answers_refused(bad, sizeof bad / sizeof bad[0], "wake_fifos");
}
END_TEST

/* holder: in open answers only, and only when not 0; decoded when given, else 0. */
START_TEST(test_holder_field) {
        ProtoChannel ring = ring_channel(), raw = raw_channel();
        ProtoChannel v[2] = { raw_channel(), ring_channel() };
        ProtoResponse res;
        char *line;
        size_t len;
        json_t *o;

        ring.holder = UINT32_MAX;
        ck_assert_int_eq(proto_encode_open(&ring, &line, &len), 0);
        o = parse_line(line, len);
        assert_json_int(o, "holder", 4294967295LL);
        json_decref(o);
        decode_encoded(PROTO_OP_OPEN, line, len, &res);
        ck_assert_uint_eq(res.channels[0].holder, UINT32_MAX);
        proto_response_done(&res);
        free(line);

        ring.holder = 4097;
        ck_assert_int_eq(proto_encode_open(&ring, &line, &len), 0);
        decode_encoded(PROTO_OP_OPEN, line, len, &res);
        ck_assert_uint_eq(res.channels[0].holder, 4097);
        proto_response_done(&res);
        free(line);

        /* 0 is absent on the wire, and absent decodes to 0. */
        ck_assert_int_eq(proto_encode_open(&raw, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "holder"));
        decode_encoded(PROTO_OP_OPEN, line, len, &res);
        ck_assert_uint_eq(res.channels[0].holder, 0);
        proto_response_done(&res);
        free(line);

        /* list and status describe channels, they hand out no token. */
        v[1].holder = 4097;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, v, 2, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "holder"));
        free(line);

        static const char *const bad[] = {
                RING_OPEN_ANSWER(",\"ring_version\":4,\"holder\":0"),
                RING_OPEN_ANSWER(",\"ring_version\":4,\"holder\":\"4097\""),
                RING_OPEN_ANSWER(",\"ring_version\":4,\"holder\":-1"),
                RING_OPEN_ANSWER(",\"ring_version\":4,\"holder\":4294967296"),
                RING_OPEN_ANSWER(",\"ring_version\":4,\"holder\":2.5"),
                RING_OPEN_ANSWER(",\"ring_version\":4,\"holder\":null"),
        };
        assert_open_answers_refused(bad, sizeof bad / sizeof bad[0], "holder");
}
END_TEST

START_TEST(test_encode_list_fields) {
        ProtoChannel v[2] = { raw_channel(), ring_channel() };
        char *line;
        size_t len;
        json_t *o, *a, *e;

        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, v, 2, &line, &len), 0);
        ck_assert_ptr_nonnull(strstr(line, "\"mode\":\"0660\""));
        ck_assert_ptr_nonnull(strstr(line, "\"mode\":\"0640\""));
        o = parse_line(line, len);
        ck_assert(json_is_true(json_object_get(o, "ok")));
        a = json_object_get(o, "channels");
        ck_assert(json_is_array(a));
        ck_assert_uint_eq(json_array_size(a), 2);

        e = json_array_get(a, 0);
        assert_exact_keys(e, list_fields);               /* "name", never "channel" */
        assert_json_str(e, "name", "sensor.raw-1");
        assert_json_str(e, "owner", "root");
        assert_json_str(e, "group", "video");
        assert_json_str(e, "mode", "0660");
        assert_json_int(e, "shm_key", 3735928559LL);

        e = json_array_get(a, 1);
        assert_has_keys(e, list_fields);
        assert_has_keys(e, ring_fields);
        assert_lacks_keys(e, status_only_fields);
        ck_assert_ptr_null(json_object_get(e, "channel"));
        assert_json_str(e, "owner", "1001");
        json_decref(o);
        free(line);

        /* an empty list is still an array */
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, NULL, 0, &line, &len), 0);
        ck_assert_str_eq(line, "{\"ok\":true,\"channels\":[]}\n");
        free(line);
}
END_TEST

START_TEST(test_encode_status_fields) {
        ProtoChannel c = status_channel();
        static const char *const sem_keys[] = { "value", "ncount", "zcount", "pid", NULL };
        static const char *const client_keys[] = { "pid", "uid", "access", "since", NULL };
        char *line;
        size_t len;
        json_t *o, *e, *sems, *clients;

        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        o = parse_line(line, len);
        e = json_array_get(json_object_get(o, "channels"), 0);
        ck_assert_ptr_nonnull(e);
        assert_has_keys(e, list_fields);
        assert_has_keys(e, status_only_fields);
        assert_json_int(e, "nattch", 3);
        assert_json_int(e, "cpid", 1);
        assert_json_int(e, "lpid", 4242);
        assert_json_int(e, "atime", 1700000001);
        assert_json_int(e, "dtime", 1700000002);
        assert_json_int(e, "ctime", 1699999999);
        assert_json_str(e, "mode", "0640");

        sems = json_object_get(e, "semaphores");
        ck_assert_uint_eq(json_array_size(sems), 2);
        assert_exact_keys(json_array_get(sems, 0), sem_keys);
        assert_json_int(json_array_get(sems, 0), "zcount", 2);
        assert_json_int(json_array_get(sems, 1), "ncount", 5);

        clients = json_object_get(e, "clients");
        ck_assert_uint_eq(json_array_size(clients), 2);
        assert_exact_keys(json_array_get(clients, 1), client_keys);
        assert_json_str(json_array_get(clients, 0), "access", "rw");
        assert_json_str(json_array_get(clients, 1), "access", "ro");
        assert_json_int(json_array_get(clients, 1), "uid", 4294967294LL);
        assert_json_int(json_array_get(clients, 1), "since", -5);
        json_decref(o);
        free(line);
}
END_TEST

/* An entry whose kernel figures the daemon could not all read: what it has, and why the rest is absent. */
START_TEST(test_encode_status_entry_error) {
        static const char *const segment_fields[] = { "nattch", "cpid", "lpid", "atime", "dtime", "ctime", NULL };
        static const char *const semaphores[] = { "semaphores", NULL };
        ProtoChannel c = status_channel();
        char *line = NULL;
        size_t len;
        json_t *o, *e;

        c.semaphores = NULL;
        c.n_semaphores = 0;
        c.error = EACCES;
        strcpy(c.message, "cannot read the semaphore set");
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        o = parse_line(line, len);
        ck_assert(json_is_true(json_object_get(o, "ok")));
        e = json_array_get(json_object_get(o, "channels"), 0);
        assert_has_keys(e, list_fields);
        assert_has_keys(e, segment_fields);
        assert_lacks_keys(e, semaphores);                /* absent, not an empty array */
        assert_json_str(e, "error", "EACCES");
        assert_json_str(e, "message", "cannot read the semaphore set");
        ck_assert_uint_eq(json_array_size(json_object_get(e, "clients")), 2);
        json_decref(o);
        free(line);

        /* nothing from the kernel at all: only what the daemon knows */
        c.segment_unread = true;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        o = parse_line(line, len);
        e = json_array_get(json_object_get(o, "channels"), 0);
        assert_has_keys(e, list_fields);
        assert_lacks_keys(e, segment_fields);
        assert_lacks_keys(e, semaphores);
        assert_json_str(e, "error", "EACCES");
        json_decref(o);
        free(line);

        /* segment_unread means nothing without an error; an error without a wire name is refused */
        c.error = 0;
        c.semaphores = test_sems;
        c.n_semaphores = 2;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        o = parse_line(line, len);
        e = json_array_get(json_object_get(o, "channels"), 0);
        assert_has_keys(e, status_only_fields);
        ck_assert_ptr_null(json_object_get(e, "error"));
        ck_assert_ptr_null(json_object_get(e, "message"));
        json_decref(o);
        free(line);
        line = NULL;
        c.error = 9999;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), -EINVAL);
        ck_assert_ptr_null(line);
}
END_TEST

START_TEST(test_encode_reload_fields) {
        char *added[] = { "new1", "new2", NULL };
        char *kept[] = { NULL };
        ProtoReloadResult res = { .added = added, .removed = NULL, .changed = NULL, .kept = kept };
        char *line;
        size_t len;
        json_t *o;
        static const char *const keys[] = { "ok", "added", "removed", "changed", "kept", NULL };

        ck_assert_int_eq(proto_encode_reload(&res, &line, &len), 0);
        o = parse_line(line, len);
        assert_exact_keys(o, keys);
        ck_assert(json_is_true(json_object_get(o, "ok")));
        ck_assert_uint_eq(json_array_size(json_object_get(o, "added")), 2);
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(o, "added"), 0)), "new1");
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(o, "added"), 1)), "new2");
        /* NULL and empty lists both go out as [] */
        ck_assert_ptr_nonnull(strstr(line, "\"removed\":[]"));
        ck_assert_ptr_nonnull(strstr(line, "\"changed\":[]"));
        ck_assert_ptr_nonnull(strstr(line, "\"kept\":[]"));
        json_decref(o);
        free(line);
}
END_TEST

START_TEST(test_encode_bad_layout) {
        ProtoChannel c = raw_channel();
        char *line = NULL;
        size_t len;

        c.layout = (ProtoLayout) 9;
        ck_assert_int_eq(proto_encode_open(&c, &line, &len), -EINVAL);
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, &c, 1, &line, &len), -EINVAL);
        ck_assert_ptr_null(line);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* response decode                                                           */

START_TEST(test_response_decode_malformed) {
        assert_response_fails(PROTO_OP_CLOSE, "", EBADMSG, NULL);
        assert_response_fails(PROTO_OP_CLOSE, "not json", EBADMSG, NULL);
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":true", EBADMSG, NULL);
        assert_response_fails(PROTO_OP_CLOSE, "[true]", EBADMSG, NULL);
        assert_response_fails(PROTO_OP_CLOSE, "{}", EBADMSG, "\"ok\"");
        assert_response_fails(PROTO_OP_CLOSE, "{\"result\":1}", EBADMSG, "\"ok\"");
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":\"true\"}", EBADMSG, "\"ok\"");
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":1}", EBADMSG, "\"ok\"");
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":true,\"ok\":true}", EBADMSG, NULL);
        /* an error answer needs its name and message */
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":false,\"message\":\"m\"}", EBADMSG, "\"error\"");
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":false,\"error\":\"ENOENT\"}", EBADMSG, "\"message\"");
        assert_response_fails(PROTO_OP_CLOSE, "{\"ok\":false,\"error\":2,\"message\":\"m\"}", EBADMSG, "\"error\"");
}
END_TEST

/* A POSIX channel's open answer with nsems and the name members given. */
#define POSIX_OPEN(nsems, names) \
        "{\"ok\":true,\"channel\":\"c\",\"kind\":\"posix\",\"size\":4,\"nsems\":" nsems ",\"layout\":\"raw\"," names "}"

START_TEST(test_response_decode_bad_results) {
        /* each must fail with EBADMSG naming the field, and leak nothing */
        static const struct {
                ProtoOp op;
                const char *line;
                const char *needle;
        } cases[] = {
                { PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"c\",\"shm_key\":1,\"sem_key\":2,\"sem_id\":3,"
                                 "\"size\":4,\"nsems\":1,\"layout\":\"raw\"}", "shm_id" },
                { PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"c\",\"shm_key\":-1,\"shm_id\":0,\"sem_key\":2,"
                                 "\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"raw\"}", "shm_key" },
                { PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"c\",\"shm_key\":1,\"shm_id\":0,\"sem_key\":2,"
                                 "\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"ring\"}", "slot_size" },
                { PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"c\",\"shm_key\":1,\"shm_id\":0,\"sem_key\":2,"
                                 "\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"heap\"}", "layout" },
                { PROTO_OP_HELLO, "{\"ok\":true,\"version\":1}", "server" },
                { PROTO_OP_HELLO, "{\"ok\":true,\"version\":\"1\",\"server\":\"s\"}", "version" },
                { PROTO_OP_LIST, "{\"ok\":true}", "channels" },
                { PROTO_OP_LIST, "{\"ok\":true,\"channels\":[{\"name\":\"c\",\"shm_key\":1,\"shm_id\":0,"
                                 "\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"raw\","
                                 "\"owner\":\"o\",\"group\":\"g\",\"mode\":\"rw\"}]}", "mode" },
                { PROTO_OP_LIST, "{\"ok\":true,\"channels\":[{\"channel\":\"c\",\"shm_key\":1,\"shm_id\":0,"
                                 "\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"raw\","
                                 "\"owner\":\"o\",\"group\":\"g\",\"mode\":\"0600\"}]}", "name" },
                { PROTO_OP_STATUS, "{\"ok\":true,\"channels\":[{\"name\":\"c\",\"shm_key\":1,\"shm_id\":0,"
                                   "\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"raw\","
                                   "\"owner\":\"o\",\"group\":\"g\",\"mode\":\"0600\",\"nattch\":0,\"cpid\":1,"
                                   "\"lpid\":1,\"atime\":0,\"dtime\":0,\"ctime\":0,"
                                   "\"semaphores\":[{\"value\":0,\"ncount\":0,\"zcount\":0,\"pid\":0}],"
                                   "\"clients\":[{\"pid\":1,\"uid\":0,\"since\":0,\"access\":\"rx\"}]}]}",
                  "access" },
                { PROTO_OP_RELOAD, "{\"ok\":true,\"added\":[\"a\"],\"removed\":[],\"changed\":[]}", "kept" },
                { PROTO_OP_RELOAD, "{\"ok\":true,\"added\":[\"a\",1],\"removed\":[],\"changed\":[],\"kept\":[]}",
                  "strings" },
                /* A segment of no bytes, or more descriptors than one message carries (PROTO_FDS_MAX). */
                { PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"c\",\"shm_key\":1,\"shm_id\":0,\"sem_key\":2,\"sem_id\":3,"
                                 "\"size\":0,\"nsems\":1,\"layout\":\"raw\"}", "size" },
                { PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"c\",\"shm_key\":1,\"shm_id\":0,\"sem_key\":2,\"sem_id\":3,"
                                 "\"size\":4,\"nsems\":1,\"layout\":\"raw\",\"fds\":67}", "fds" },
                /* A mode of no digits is no mode. */
                { PROTO_OP_LIST, "{\"ok\":true,\"channels\":[{\"name\":\"c\",\"shm_key\":1,\"shm_id\":0,"
                                 "\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1,\"layout\":\"raw\","
                                 "\"owner\":\"o\",\"group\":\"g\",\"mode\":\"\"}]}", "mode" },
                /* POSIX names: one leading slash and no other, not "." or "..", one per semaphore. */
                { PROTO_OP_OPEN, POSIX_OPEN("1", "\"shm_name\":\"/a/b\",\"sem_names\":[\"/s.0\"]"), "shm_name" },
                { PROTO_OP_OPEN, POSIX_OPEN("1", "\"shm_name\":\"/.\",\"sem_names\":[\"/s.0\"]"), "shm_name" },
                { PROTO_OP_OPEN, POSIX_OPEN("1", "\"shm_name\":\"/..\",\"sem_names\":[\"/s.0\"]"), "shm_name" },
                { PROTO_OP_OPEN, POSIX_OPEN("1", "\"shm_name\":\"/s\",\"sem_names\":[\"/d/s.0\"]"), "sem_names" },
                { PROTO_OP_OPEN, POSIX_OPEN("2", "\"shm_name\":\"/s\",\"sem_names\":[\"/s.0\"]"), "sem_names" },
                { PROTO_OP_OPEN, POSIX_OPEN("1", "\"shm_name\":\"/s\",\"sem_names\":[\"/s.0\",\"/s.1\"]"),
                  "sem_names" },
                /* Names printed as they come (shmbrokerctl) must be channel names. */
                { PROTO_OP_RELOAD, "{\"ok\":true,\"added\":[\"a\\nb\"],\"removed\":[],\"changed\":[],\"kept\":[]}",
                  "channel names" },
        };

        static const char posix_ok[] = POSIX_OPEN("1", "\"shm_name\":\"/s\",\"sem_names\":[\"/s.0\"]");
        ProtoResponse res;

        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
                assert_response_fails(cases[i].op, cases[i].line, EBADMSG, cases[i].needle);
        /* The POSIX rows above differ from this one, which decodes, only where they say. */
        decode_response_ok(PROTO_OP_OPEN, posix_ok, strlen(posix_ok), &res);
        ck_assert_str_eq(res.channels[0].sem_names[0], "/s.0");
        proto_response_done(&res);
}
END_TEST

START_TEST(test_response_decode_unknown_error_name) {
        static const char line[] = "{\"ok\":false,\"error\":\"EWHATEVER\",\"message\":\"new kind of failure\"}";
        ProtoResponse res;

        decode_response_ok(PROTO_OP_OPEN, line, strlen(line), &res);
        ck_assert(!res.ok);
        ck_assert_int_eq(res.error, EIO);           /* a refusal still, not a broken answer */
        ck_assert_str_eq(res.error_name, "EWHATEVER");
        ck_assert_str_eq(res.message, "new kind of failure");
        ck_assert_ptr_null(res.channels);
        proto_response_done(&res);
}
END_TEST

START_TEST(test_response_decode_lenient) {
        static const char hello[] = "{\"ok\":true,\"version\":1,\"server\":\"s\",\"features\":[\"x\"],\"z\":null}";
        static const char close[] = "{\"ok\":true,\"extra\":{\"a\":1}}";
        static const char err[] = "{\"ok\":false,\"error\":\"EBUSY\",\"message\":\"m\",\"retry_after\":2}";
        static const char list[] = "{\"ok\":true,\"generation\":4,\"channels\":[{\"name\":\"c\",\"shm_key\":1,"
                                   "\"shm_id\":0,\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1,"
                                   "\"layout\":\"raw\",\"owner\":\"o\",\"group\":\"g\",\"mode\":\"0600\","
                                   "\"numa_node\":0}]}";
        ProtoResponse res;

        decode_response_ok(PROTO_OP_HELLO, hello, strlen(hello), &res);
        ck_assert(res.ok);
        ck_assert_int_eq(res.version, 1);
        ck_assert_str_eq(res.server, "s");
        proto_response_done(&res);

        decode_response_ok(PROTO_OP_CLOSE, close, strlen(close), &res);
        ck_assert(res.ok);
        proto_response_done(&res);

        decode_response_ok(PROTO_OP_CLOSE, err, strlen(err), &res);
        ck_assert(!res.ok);
        ck_assert_int_eq(res.error, EBUSY);
        proto_response_done(&res);

        decode_response_ok(PROTO_OP_LIST, list, strlen(list), &res);
        ck_assert(res.ok);
        ck_assert_uint_eq(res.n_channels, 1);
        ck_assert_str_eq(res.channels[0].name, "c");
        ck_assert_uint_eq(res.channels[0].mode, 0600);
        proto_response_done(&res);
}
END_TEST

START_TEST(test_response_decode_bad_op) {
        static const char line[] = "{\"ok\":true}";
        ProtoResponse res;

        ck_assert_int_eq(proto_response_decode(_PROTO_OP_MAX, line, strlen(line), &res, NULL, 0), -EINVAL);
        ck_assert_int_eq(proto_response_decode((ProtoOp) -1, line, strlen(line), &res, NULL, 0), -EINVAL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* round trips                                                               */

START_TEST(test_round_trip_error) {
        ProtoResponse res;
        char *line;
        size_t len;

        ck_assert_int_eq(proto_encode_error(ENOENT, "no channel \"cam0\" (see /etc/shmbroker)", &line, &len), 0);
        decode_encoded(PROTO_OP_OPEN, line, len, &res);
        ck_assert(!res.ok);
        ck_assert_int_eq(res.error, ENOENT);
        ck_assert_str_eq(res.error_name, "ENOENT");
        ck_assert_str_eq(res.message, "no channel \"cam0\" (see /etc/shmbroker)");
        ck_assert_ptr_null(res.channels);
        ck_assert_uint_eq(res.n_channels, 0);
        proto_response_done(&res);
        free(line);

        /* every wire errno the daemon answers with survives the trip */
        for (const int *e = (const int[]) { EACCES, EINVAL, EPROTO, EBUSY, ENOSPC, E2BIG, EBADMSG,
                                            EOPNOTSUPP, 0 }; *e; e++) {
                ck_assert_int_eq(proto_encode_error(*e, "m", &line, &len), 0);
                decode_encoded(PROTO_OP_CLOSE, line, len, &res);
                ck_assert(!res.ok);
                ck_assert_int_eq(res.error, *e);
                ck_assert_str_eq(res.error_name, proto_errno_to_name(*e));
                proto_response_done(&res);
                free(line);
        }
}
END_TEST

/*
 * The encoder does not bound the message; the decoder must still understand
 * an "ok": false answer with a long one (truncating it to fit is fine).
 */
START_TEST(test_round_trip_error_long_message) {
        char message[2 * PROTO_MESSAGE_MAX + 1];
        char msg[PROTO_MESSAGE_MAX] = "";
        ProtoResponse res;
        char *line;
        size_t len;
        int r;

        memset(message, 'm', sizeof message - 1);
        message[sizeof message - 1] = 0;
        ck_assert_int_eq(proto_encode_error(EINVAL, message, &line, &len), 0);
        assert_one_line(line, len);
        r = proto_response_decode(PROTO_OP_OPEN, line, len - 1, &res, msg, sizeof msg);
        free(line);   /* before asserting: nothing to leak if this fails */
        ck_assert_msg(r == 0, "decoding an error with a %zu-byte message failed: %d (%s)",
                      strlen(message), r, msg);
        ck_assert(!res.ok);
        ck_assert_int_eq(res.error, EINVAL);
        ck_assert_uint_gt(strlen(res.message), 0);
        ck_assert(strncmp(res.message, message, strlen(res.message)) == 0);
        proto_response_done(&res);
}
END_TEST

START_TEST(test_round_trip_hello_ok) {
        ProtoResponse res;
        char *line;
        size_t len;

        ck_assert_int_eq(proto_encode_hello(PROTO_VERSION, "shmbrokerd 0.1", &line, &len), 0);
        decode_encoded(PROTO_OP_HELLO, line, len, &res);
        ck_assert(res.ok);
        ck_assert_int_eq(res.version, PROTO_VERSION);
        ck_assert_str_eq(res.server, "shmbrokerd 0.1");
        proto_response_done(&res);
        free(line);

        ck_assert_int_eq(proto_encode_ok(&line, &len), 0);
        decode_encoded(PROTO_OP_CLOSE, line, len, &res);
        ck_assert(res.ok);
        ck_assert_int_eq(res.error, 0);
        ck_assert_ptr_null(res.channels);
        ck_assert_uint_eq(res.n_channels, 0);
        proto_response_done(&res);
        free(line);
}
END_TEST

START_TEST(test_round_trip_open) {
        const ProtoChannel chans[] = { raw_channel(), ring_channel(), broadcast_channel() };

        for (size_t i = 0; i < 3; i++) {
                ProtoResponse res;
                char *line;
                size_t len;

                ck_assert_int_eq(proto_encode_open(&chans[i], &line, &len), 0);
                if (chans[i].layout == PROTO_LAYOUT_RAW)
                        ck_assert_ptr_null(strstr(line, "\"slot_size\""));
                else
                        ck_assert_ptr_nonnull(strstr(line, "\"slot_size\""));
                decode_encoded(PROTO_OP_OPEN, line, len, &res);
                ck_assert(res.ok);
                ck_assert_uint_eq(res.n_channels, 1);
                assert_channel_eq(PROTO_VIEW_OPEN, &res.channels[0], &chans[i]);
                if (chans[i].layout == PROTO_LAYOUT_RAW) {
                        ck_assert_uint_eq(res.channels[0].slot_size, 0);
                        ck_assert_uint_eq(res.channels[0].slots, 0);
                }
                proto_response_done(&res);
                free(line);
        }
}
END_TEST

START_TEST(test_round_trip_list) {
        ProtoChannel v[2] = { raw_channel(), ring_channel() };
        ProtoResponse res;
        char *line;
        size_t len;

        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, v, 2, &line, &len), 0);
        decode_encoded(PROTO_OP_LIST, line, len, &res);
        ck_assert(res.ok);
        ck_assert_uint_eq(res.n_channels, 2);
        for (size_t i = 0; i < 2; i++)
                assert_channel_eq(PROTO_VIEW_LIST, &res.channels[i], &v[i]);
        proto_response_done(&res);
        free(line);

        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_LIST, NULL, 0, &line, &len), 0);
        decode_encoded(PROTO_OP_LIST, line, len, &res);
        ck_assert(res.ok);
        ck_assert_uint_eq(res.n_channels, 0);
        proto_response_done(&res);
        free(line);
}
END_TEST

START_TEST(test_round_trip_status) {
        ProtoChannel v[2] = { status_channel(), raw_channel() };   /* second: no sems, no clients */
        ProtoResponse res;
        char *line;
        size_t len;

        v[1].nattch = 0;
        v[1].cpid = 77;
        v[1].atime = -1;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, v, 2, &line, &len), 0);
        decode_encoded(PROTO_OP_STATUS, line, len, &res);
        ck_assert(res.ok);
        ck_assert_uint_eq(res.n_channels, 2);
        assert_channel_eq(PROTO_VIEW_STATUS, &res.channels[0], &v[0]);
        assert_channel_eq(PROTO_VIEW_STATUS, &res.channels[1], &v[1]);
        /* spelled out for the first channel's holds too */
        ck_assert_int_eq(res.channels[0].semaphores[0].pid, 4242);
        ck_assert_int_eq(res.channels[0].clients[1].access, PROTO_ACCESS_RO);
        ck_assert_uint_eq(res.channels[0].clients[1].uid, 4294967294u);
        ck_assert_uint_eq(res.channels[1].n_semaphores, 0);
        ck_assert_uint_eq(res.channels[1].n_clients, 0);
        proto_response_done(&res);
        free(line);
}
END_TEST

/* A broadcast channel: its own fields in every view, its subscriptions in status, its layout version in open. */
START_TEST(test_round_trip_broadcast) {
        ProtoChannel c = broadcast_channel();
        ProtoResponse res;
        char *line;
        size_t len;

        c.holder = 4097;
        ck_assert_int_eq(proto_encode_open(&c, &line, &len), 0);
        ck_assert_ptr_nonnull(strstr(line, "\"layout\":\"broadcast\""));
        ck_assert_ptr_nonnull(strstr(line, "\"overflow\":\"drop\""));
        ck_assert_ptr_nonnull(strstr(line, "\"ring_version\":2"));
        decode_encoded(PROTO_OP_OPEN, line, len, &res);
        assert_channel_eq(PROTO_VIEW_OPEN, &res.channels[0], &c);
        ck_assert_uint_eq(res.channels[0].ring_version, 2);
        ck_assert_uint_eq(res.channels[0].holder, 4097);
        proto_response_done(&res);
        free(line);

        c.holder = 0;
        c.subscriptions = test_subscriptions;
        c.n_subscriptions = 2;
        c.semaphores = test_sems;
        c.n_semaphores = 1;
        c.nattch = 2;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        decode_encoded(PROTO_OP_STATUS, line, len, &res);
        assert_channel_eq(PROTO_VIEW_STATUS, &res.channels[0], &c);
        proto_response_done(&res);
        free(line);

        /* A status entry of a broadcast channel that nobody subscribes to: an empty array, not none. */
        c.n_subscriptions = 0;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        ck_assert_ptr_nonnull(strstr(line, "\"subscriptions\":[]"));
        free(line);
        /* Other layouts carry none of it. */
        c = ring_channel();
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        ck_assert_ptr_null(strstr(line, "subscri"));
        ck_assert_ptr_null(strstr(line, "overflow"));
        free(line);
        /* 64-bit counters past INT64_MAX are sent as INT64_MAX, never wrapped to a negative (malformed) number. */
        {
                ProtoSubscription huge = { .pid = 1, .position = UINT64_MAX, .lag = UINT64_MAX, .dropped = UINT64_MAX };
                ProtoChannel b = broadcast_channel();

                b.subscriptions = &huge;
                b.n_subscriptions = 1;
                b.semaphores = test_sems;
                b.n_semaphores = 1;
                ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, &b, 1, &line, &len), 0);
                decode_encoded(PROTO_OP_STATUS, line, len, &res);
                ck_assert_uint_eq(res.channels[0].n_subscriptions, 1);
                ck_assert_uint_eq(res.channels[0].subscriptions[0].position, INT64_MAX);
                ck_assert_uint_eq(res.channels[0].subscriptions[0].lag, INT64_MAX);
                ck_assert_uint_eq(res.channels[0].subscriptions[0].dropped, INT64_MAX);
                proto_response_done(&res);
                free(line);
        }
        /* A broadcast answer without its fields, or with an unknown overflow, is malformed. */
        assert_response_fails(PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"b\",\"shm_key\":1,\"shm_id\":1,"
                              "\"sem_key\":1,\"sem_id\":1,\"size\":9000,\"nsems\":1,\"layout\":\"broadcast\","
                              "\"slot_size\":8,\"slots\":2,\"subscribers\":1,\"table_key\":5,\"table_id\":6}",
                              EBADMSG, "overflow");
        assert_response_fails(PROTO_OP_OPEN, "{\"ok\":true,\"channel\":\"b\",\"shm_key\":1,\"shm_id\":1,"
                              "\"sem_key\":1,\"sem_id\":1,\"size\":9000,\"nsems\":1,\"layout\":\"broadcast\","
                              "\"slot_size\":8,\"slots\":2,\"subscribers\":1,\"table_key\":5,\"table_id\":6,"
                              "\"overflow\":\"later\"}", EBADMSG, "overflow");
}
END_TEST

START_TEST(test_round_trip_status_entry_error) {
        ProtoChannel v[3] = { status_channel(), status_channel(), status_channel() };
        ProtoResponse res;
        char *line;
        size_t len;

        /* 0: complete; 1: semaphores unread; 2: nothing from the kernel */
        for (size_t i = 1; i < 3; i++) {
                v[i].semaphores = NULL;
                v[i].n_semaphores = 0;
                v[i].error = i == 1 ? EACCES : EPERM;
                snprintf(v[i].message, sizeof v[i].message, "entry %zu", i);
        }
        v[2].segment_unread = true;
        v[2].nattch = 0;
        v[2].cpid = v[2].lpid = 0;
        v[2].atime = v[2].dtime = v[2].ctime = 0;
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, v, 3, &line, &len), 0);
        decode_encoded(PROTO_OP_STATUS, line, len, &res);
        ck_assert(res.ok);
        ck_assert_uint_eq(res.n_channels, 3);
        for (size_t i = 0; i < 3; i++) {
                assert_channel_eq(PROTO_VIEW_STATUS, &res.channels[i], &v[i]);
                ck_assert_int_eq(res.channels[i].error, v[i].error);
                ck_assert_str_eq(res.channels[i].message, v[i].message);
                ck_assert_int_eq(res.channels[i].segment_unread, v[i].segment_unread);
        }
        ck_assert_ptr_null(res.channels[1].semaphores);
        proto_response_done(&res);
        free(line);
}
END_TEST

START_TEST(test_response_decode_status_entry_error) {
        /* the list fields of every status entry, then what varies */
#define ENTRY "{\"name\":\"c\",\"shm_key\":1,\"shm_id\":0,\"sem_key\":2,\"sem_id\":3,\"size\":4,\"nsems\":1," \
              "\"layout\":\"raw\",\"owner\":\"o\",\"group\":\"g\",\"mode\":\"0060\",\"clients\":[]"
        static const char unknown[] = "{\"ok\":true,\"channels\":[" ENTRY ",\"error\":\"EWHATEVER\","
                                      "\"message\":\"new kind\"}]}";
        ProtoResponse res;

        /* an entry with an error may lack what the daemon could not read; a name we do not know is EIO */
        decode_response_ok(PROTO_OP_STATUS, unknown, strlen(unknown), &res);
        ck_assert_uint_eq(res.n_channels, 1);
        ck_assert_int_eq(res.channels[0].error, EIO);
        ck_assert_str_eq(res.channels[0].message, "new kind");
        ck_assert(res.channels[0].segment_unread);
        ck_assert_uint_eq(res.channels[0].n_semaphores, 0);
        proto_response_done(&res);

        /* without an error, nothing may be missing; with one, it needs its message */
        assert_response_fails(PROTO_OP_STATUS, "{\"ok\":true,\"channels\":[" ENTRY ",\"nattch\":1,\"cpid\":1,"
                              "\"lpid\":1,\"atime\":0,\"dtime\":0,\"ctime\":0}]}", EBADMSG, "semaphores");
        assert_response_fails(PROTO_OP_STATUS, "{\"ok\":true,\"channels\":[" ENTRY "}]}", EBADMSG, "nattch");
        assert_response_fails(PROTO_OP_STATUS, "{\"ok\":true,\"channels\":[" ENTRY ",\"error\":\"EACCES\"}]}",
                              EBADMSG, "message");
        assert_response_fails(PROTO_OP_STATUS, "{\"ok\":true,\"channels\":[" ENTRY ",\"error\":13,"
                              "\"message\":\"m\"}]}", EBADMSG, "error");
        /* segment figures present must still be whole */
        assert_response_fails(PROTO_OP_STATUS, "{\"ok\":true,\"channels\":[" ENTRY ",\"error\":\"EACCES\","
                              "\"message\":\"m\",\"nattch\":1}]}", EBADMSG, "cpid");
#undef ENTRY
}
END_TEST

START_TEST(test_round_trip_reload) {
        char *added[] = { "new.one", "new-two", NULL };
        char *removed[] = { NULL };
        char *changed[] = { "resized", NULL };
        char *kept[] = { "a", "b", "c", NULL };
        const ProtoReloadResult cases[] = {
                { .added = added, .removed = removed, .changed = changed, .kept = kept },
                { .added = NULL, .removed = added, .changed = NULL, .kept = removed },
        };

        for (size_t i = 0; i < 2; i++) {
                ProtoResponse res;
                char *line;
                size_t len;
                json_t *o;

                ck_assert_int_eq(proto_encode_reload(&cases[i], &line, &len), 0);
                o = parse_line(line, len);
                for (const char *const *k = (const char *const[]) { "added", "removed", "changed", "kept", NULL };
                     *k; k++)
                        ck_assert_msg(json_is_array(json_object_get(o, *k)), "\"%s\" is not an array", *k);
                json_decref(o);

                decode_encoded(PROTO_OP_RELOAD, line, len, &res);
                ck_assert(res.ok);
                assert_strv_eq(res.reload.added, cases[i].added);
                assert_strv_eq(res.reload.removed, cases[i].removed);
                assert_strv_eq(res.reload.changed, cases[i].changed);
                assert_strv_eq(res.reload.kept, cases[i].kept);
                proto_response_done(&res);
                free(line);
        }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* cleanup                                                                   */

START_TEST(test_done_functions) {
        static const char reload[] = "{\"ok\":true,\"added\":[\"a\"],\"removed\":[],\"changed\":[\"b\"],\"kept\":[]}";
        ProtoChannel v[1] = { status_channel() };
        ProtoResponse res, zero = {};
        ProtoChannel c = {};
        char *line;
        size_t len;

        proto_response_done(NULL);
        proto_channel_done(NULL);
        proto_reload_result_done(NULL);

        /* a zeroed response, twice */
        proto_response_done(&zero);
        proto_response_done(&zero);

        /* a decoded status response owns channels, semaphores and clients */
        ck_assert_int_eq(proto_encode_channels(PROTO_VIEW_STATUS, v, 1, &line, &len), 0);
        decode_encoded(PROTO_OP_STATUS, line, len, &res);
        free(line);
        proto_response_done(&res);
        ck_assert_ptr_null(res.channels);
        ck_assert_uint_eq(res.n_channels, 0);
        proto_response_done(&res);

        decode_response_ok(PROTO_OP_RELOAD, reload, strlen(reload), &res);
        proto_response_done(&res);
        ck_assert_ptr_null(res.reload.added);
        ck_assert_ptr_null(res.reload.kept);
        proto_response_done(&res);

        /* a channel that owns its arrays */
        c.semaphores = calloc(2, sizeof *c.semaphores);
        c.n_semaphores = 2;
        c.clients = calloc(1, sizeof *c.clients);
        c.n_clients = 1;
        proto_channel_done(&c);
        ck_assert_ptr_null(c.semaphores);
        ck_assert_ptr_null(c.clients);
        ck_assert_uint_eq(c.n_semaphores, 0);
        ck_assert_uint_eq(c.n_clients, 0);
        proto_channel_done(&c);
}
END_TEST

/* ------------------------------------------------------------------------ */

static TCase *tcase(const char *name) {
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, 10);
        return tc;
}

static Suite *proto_suite(void) {
        Suite *s = suite_create("proto");
        TCase *tc;

        tc = tcase("names");
        tcase_add_test(tc, test_op_names);
        tcase_add_test(tc, test_access_and_layout_names);
        tcase_add_test(tc, test_unknown_names);
        tcase_add_test(tc, test_errno_names);
        tcase_add_test(tc, test_name_is_valid);
        suite_add_tcase(s, tc);

        tc = tcase("framing");
        tcase_add_test(tc, test_frame_complete_line);
        tcase_add_test(tc, test_frame_needs_more);
        tcase_add_test(tc, test_frame_empty_line);
        tcase_add_test(tc, test_frame_two_lines);
        tcase_add_test(tc, test_frame_limit);
        suite_add_tcase(s, tc);

        tc = tcase("request decode");
        tcase_add_test(tc, test_request_decode_hello);
        tcase_add_test(tc, test_request_decode_open_close);
        tcase_add_test(tc, test_request_decode_list_status_reload);
        tcase_add_test(tc, test_request_decode_name_limits);
        tcase_add_test(tc, test_request_decode_not_an_object);
        tcase_add_test(tc, test_request_decode_op_errors);
        tcase_add_test(tc, test_request_decode_field_errors);
        tcase_add_test(tc, test_request_decode_every_shape);
        tcase_add_test(tc, test_request_decode_embedded_nul);
        tcase_add_test(tc, test_request_decode_nul_message);
        tcase_add_test(tc, test_request_decode_len_is_respected);
        tcase_add_test(tc, test_request_decode_small_msg_buffer);
        suite_add_tcase(s, tc);

        tc = tcase("request encode");
        tcase_add_test(tc, test_request_encode_round_trip);
        tcase_add_test(tc, test_request_encode_wire_fields);
        tcase_add_test(tc, test_request_encode_invalid);
        tcase_add_test(tc, test_request_encode_invalid_client);
        suite_add_tcase(s, tc);

        tc = tcase("response encode");
        tcase_add_test(tc, test_encode_error);
        tcase_add_test(tc, test_encode_error_unnamed);
        tcase_add_test(tc, test_encode_error_no_leak);
        tcase_add_test(tc, test_encode_hello_and_ok);
        tcase_add_test(tc, test_encode_open_fields);
        tcase_add_test(tc, test_ring_version_field);
        tcase_add_test(tc, test_wake_fifos_field);
        tcase_add_test(tc, test_holder_field);
        tcase_add_test(tc, test_encode_list_fields);
        tcase_add_test(tc, test_encode_status_fields);
        tcase_add_test(tc, test_encode_status_entry_error);
        tcase_add_test(tc, test_encode_reload_fields);
        tcase_add_test(tc, test_encode_bad_layout);
        suite_add_tcase(s, tc);

        tc = tcase("response decode");
        tcase_add_test(tc, test_response_decode_malformed);
        tcase_add_test(tc, test_response_decode_bad_results);
        tcase_add_test(tc, test_response_decode_unknown_error_name);
        tcase_add_test(tc, test_response_decode_lenient);
        tcase_add_test(tc, test_response_decode_bad_op);
        tcase_add_test(tc, test_response_decode_status_entry_error);
        suite_add_tcase(s, tc);

        tc = tcase("round trips");
        tcase_add_test(tc, test_round_trip_error);
        tcase_add_test(tc, test_round_trip_error_long_message);
        tcase_add_test(tc, test_round_trip_hello_ok);
        tcase_add_test(tc, test_round_trip_open);
        tcase_add_test(tc, test_round_trip_broadcast);
        tcase_add_test(tc, test_round_trip_list);
        tcase_add_test(tc, test_round_trip_status);
        tcase_add_test(tc, test_round_trip_status_entry_error);
        tcase_add_test(tc, test_round_trip_reload);
        suite_add_tcase(s, tc);

        tc = tcase("cleanup");
        tcase_add_test(tc, test_done_functions);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(proto_suite());
        int failed;

        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
