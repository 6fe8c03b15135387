/*
 * Fuzz target: the daemon's side of the wire. Framing over arbitrary bytes,
 * then every line through the request decoder; a decoded request must
 * encode and decode back to itself.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
                            again.op != req.op || strcmp(again.channel, req.channel) != 0)
                                abort();
                        free(line);
                }
                off += len + 1;
        }
        return 0;
}
