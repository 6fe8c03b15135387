/*
 * Fuzz target: the daemon's side of the wire. Framing over arbitrary bytes,
 * then every line through the request decoder; a decoded request must
 * encode and decode back to itself, every field of it.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const ProtoRequest *a, const ProtoRequest *b) {
        return a->op == b->op && a->version == b->version && a->has_client == b->has_client &&
               strcmp(a->client, b->client) == 0 && a->has_channel == b->has_channel &&
               strcmp(a->channel, b->channel) == 0 && a->access == b->access && a->has_holder == b->has_holder &&
               a->holder == b->holder && a->fd == b->fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *buf = (const char *) data;
        size_t off = 0, len;

        while (off < size && proto_frame_next(buf + off, size - off, &len) == 1) {
                char msg[PROTO_MESSAGE_MAX], *line;
                ProtoRequest req, again;
                size_t line_len;

                if (proto_request_decode(buf + off, len, &req, msg, sizeof msg) == 0 &&
                    proto_request_encode(&req, &line, &line_len) == 0) {
                        if (proto_request_decode(line, line_len - 1, &again, msg, sizeof msg) != 0 ||
                            !same(&again, &req))
                                abort();
                        free(line);
                }
                off += len + 1;
        }
        return 0;
}
