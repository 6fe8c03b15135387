/*
 * Fuzz target: the client's side of the wire. Arbitrary bytes decoded as
 * the answer to every op; whatever decodes must be freed cleanly.
 */

#include <stdint.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        for (int op = 0; op < _PROTO_OP_MAX; op++) {
                char msg[PROTO_MESSAGE_MAX];
                ProtoResponse res;

                if (proto_response_decode((ProtoOp) op, (const char *) data, size, &res, msg, sizeof msg) == 0)
                        proto_response_done(&res);
        }
        return 0;
}
