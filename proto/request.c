/*
 * Requests: decode a line into a ProtoRequest, and encode one for clients.
 *
 * Each op has a strict shape: the keys it may carry are unpacked with "!",
 * so a misspelt field ("chanel") is refused rather than silently ignored.
 */

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "common/json-util.h"
#include "common/util.h"
#include "proto.h"

static int decode_name(json_t *v, const char *key, char *dst, size_t size, char *msg, size_t msg_size) {
        const char *s;
        int r;

        r = json_field_string(v, key, &s, msg, msg_size);
        if (r)
                return r;
        if (!proto_name_is_valid(s)) {
                msg_set(msg, msg_size, "\"%s\" must be 1-%d characters of A-Z a-z 0-9 . _ -",
                        key, PROTO_NAME_MAX);
                return EINVAL;
        }
        return strcpy_checked(dst, size, s) < 0 ? EINVAL : 0;
}

static int decode_fields(json_t *root, ProtoRequest *req, char *msg, size_t msg_size) {
        json_t *jop = NULL, *jversion = NULL, *jclient = NULL, *jchannel = NULL, *jaccess = NULL, *jholder = NULL,
               *jfd = NULL;
        const JsonField fields[] = {
                { "op", &jop }, { "version", &jversion }, { "client", &jclient }, { "channel", &jchannel },
                { "access", &jaccess }, { "holder", &jholder }, { "fd", &jfd },
        };
        /* Which of fields each op may carry, and which it must (an op left out here fits none: the strict unpack). */
        static const struct {
                bool may[7], must[7];
        } shapes[_PROTO_OP_MAX] = {
                [PROTO_OP_HELLO] = { { 1, 1, 1 }, { 1, 1 } },
                [PROTO_OP_OPEN] = { { 1, 0, 0, 1, 1, 1, 1 }, { 1, 0, 0, 1, 1 } },
                [PROTO_OP_CLOSE] = { { 1, 0, 0, 1 }, { 1, 0, 0, 1 } },
                [PROTO_OP_LIST] = { { 1 }, { 1 } },
                [PROTO_OP_STATUS] = { { 1, 0, 0, 1 }, { 1 } },
                [PROTO_OP_RELOAD] = { { 1 }, { 1 } },
        };
        const bool *may = shapes[req->op].may, *must = shapes[req->op].must;
        bool fits = json_take_fields(root, fields, ELEMENTSOF(fields));
        json_error_t jerr;
        const char *s;
        int64_t i;
        int r = 0;

        /* The usual request, by json_take_fields(); any other goes through the strict unpack, for its message. */
        for (size_t f = 0; fits && f < ELEMENTSOF(fields); f++)
                fits = *fields[f].ret ? may[f] : !must[f];
        if (!fits)
                switch (req->op) {
                case PROTO_OP_HELLO:
                        r = json_unpack_ex(root, &jerr, 0, "{s:o, s:o, s?:o !}",
                                           "op", &jop, "version", &jversion, "client", &jclient);
                        break;
                case PROTO_OP_OPEN:
                        r = json_unpack_ex(root, &jerr, 0, "{s:o, s:o, s:o, s?:o, s?:o !}",
                                           "op", &jop, "channel", &jchannel, "access", &jaccess, "holder", &jholder,
                                           "fd", &jfd);
                        break;
                case PROTO_OP_CLOSE:
                        r = json_unpack_ex(root, &jerr, 0, "{s:o, s:o !}", "op", &jop, "channel", &jchannel);
                        break;
                case PROTO_OP_STATUS:
                        r = json_unpack_ex(root, &jerr, 0, "{s:o, s?:o !}", "op", &jop, "channel", &jchannel);
                        break;
                default:
                        r = json_unpack_ex(root, &jerr, 0, "{s:o !}", "op", &jop);
                        break;
                }
        if (r < 0) {
                char why[PROTO_MESSAGE_MAX];

                json_unpack_message(&jerr, why, sizeof why);
                msg_set(msg, msg_size, "\"%s\" request: %s", proto_op_to_string(req->op), why);
                return EINVAL;
        }

        if (jversion) {
                /* Any integer is a version: whether the daemon speaks it is do_hello()'s to say (EPROTO). */
                r = json_field_int(jversion, "version", INT64_MIN, INT64_MAX, &i, msg, msg_size);
                if (r)
                        return r;
                req->version = i;
        }
        if (jclient) {
                r = json_field_string(jclient, "client", &s, msg, msg_size);
                if (r)
                        return r;
                if (strcpy_checked(req->client, sizeof req->client, s) < 0) {
                        msg_set(msg, msg_size, "\"client\" must be at most %d bytes", PROTO_CLIENT_MAX);
                        return EINVAL;
                }
                req->has_client = true;
        }
        if (jchannel) {
                r = decode_name(jchannel, "channel", req->channel, sizeof req->channel, msg, msg_size);
                if (r)
                        return r;
                req->has_channel = true;
        }
        if (jaccess) {
                r = json_field_string(jaccess, "access", &s, msg, msg_size);
                if (r)
                        return r;
                r = proto_access_from_string(s);
                if (r < 0) {
                        msg_set(msg, msg_size, "\"access\" must be \"rw\" or \"ro\"");
                        return EINVAL;
                }
                req->access = (ProtoAccess) r;
        }
        if (jholder) {
                /* A token is never 0 (proto/ring.h): 0 names no holder, and is refused like any other non-token. */
                r = json_field_int(jholder, "holder", 1, UINT32_MAX, &i, msg, msg_size);
                if (r)
                        return r;
                req->holder = (uint32_t) i;
                req->has_holder = true;
        }
        if (jfd) {
                if (!json_is_boolean(jfd)) {
                        msg_set(msg, msg_size, "\"fd\" must be true or false");
                        return EINVAL;
                }
                req->fd = json_is_true(jfd);
        }
        return 0;
}

int proto_request_decode(const char *line, size_t len, ProtoRequest *ret, char *msg, size_t msg_size) {
        _cleanup_(json_decrefp) json_t *root = NULL;
        ProtoRequest req = {};
        json_error_t jerr;
        json_t *jop;
        int r;

        root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                msg_set(msg, msg_size, "request is not valid JSON: %s at column %d",
                        json_error_words(&jerr, line, len), jerr.column);
                return EBADMSG;
        }
        if (!json_is_object(root)) {
                msg_set(msg, msg_size, "request must be a JSON object");
                return EBADMSG;
        }
        jop = json_object_get(root, "op");
        if (!jop) {
                msg_set(msg, msg_size, "request has no \"op\"");
                return EINVAL;
        }
        if (!json_is_string(jop)) {
                msg_set(msg, msg_size, "\"op\" must be a string");
                return EINVAL;
        }
        r = proto_op_from_string(json_string_value(jop));
        if (r < 0) {
                msg_set(msg, msg_size, "unknown op \"%.64s\"", json_string_value(jop));
                return EOPNOTSUPP;
        }
        req.op = (ProtoOp) r;

        r = decode_fields(root, &req, msg, msg_size);
        if (r)
                return r;
        *ret = req;
        return 0;
}

int proto_request_encode(const ProtoRequest *req, char **ret_line, size_t *ret_len) {
        _cleanup_(json_decrefp) json_t *o = NULL;
        const char *op = proto_op_to_string(req->op);
        int r = 0;

        if (!op)
                return -EINVAL;
        o = json_pack("{s:s}", "op", op);
        if (!o)
                return -ENOMEM;

        switch (req->op) {
        case PROTO_OP_HELLO:
                r = json_object_set_new(o, "version", json_integer(req->version));
                if (r == 0 && req->has_client) {
                        json_t *c = json_string(req->client);

                        if (!c)
                                return -EINVAL;         /* not UTF-8 */
                        r = json_object_set_new(o, "client", c);
                }
                break;
        case PROTO_OP_OPEN:
                if (!proto_name_is_valid(req->channel) || !proto_access_to_string(req->access))
                        return -EINVAL;
                r = json_object_set_new(o, "channel", json_string(req->channel));
                if (r == 0)
                        r = json_object_set_new(o, "access", json_string(proto_access_to_string(req->access)));
                if (r == 0 && req->has_holder) {
                        if (req->holder == 0)
                                return -EINVAL;
                        r = json_object_set_new(o, "holder", json_integer(req->holder));
                }
                if (r == 0 && req->fd)
                        r = json_object_set_new(o, "fd", json_true());
                break;
        case PROTO_OP_CLOSE:
        case PROTO_OP_STATUS:
                if (req->op == PROTO_OP_STATUS && !req->has_channel)
                        break;
                if (!proto_name_is_valid(req->channel))
                        return -EINVAL;
                r = json_object_set_new(o, "channel", json_string(req->channel));
                break;
        default:
                break;
        }
        if (r < 0)
                return -ENOMEM;
        return json_dump_line(o, ret_line, ret_len);
}
