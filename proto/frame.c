/*
 * Framing: one request per line. The limit is enforced here, on bytes, so
 * neither side ever buffers more than PROTO_LINE_MAX for one message.
 */

#include <errno.h>
#include <string.h>

#include "proto.h"

int proto_frame_next_max(const char *buf, size_t len, size_t max, size_t *ret_line_len) {
        size_t scan, limit = max < PROTO_LINE_MAX ? max : PROTO_LINE_MAX;
        const char *nl;

        scan = len < limit ? len : limit;
        /* An empty buffer may be NULL (the daemon frees it when drained): memchr() must not see it. */
        nl = scan > 0 ? memchr(buf, '\n', scan) : NULL;
        if (nl) {
                *ret_line_len = (size_t) (nl - buf);
                return 1;
        }
        return len >= limit ? E2BIG : 0;
}

int proto_frame_next(const char *buf, size_t len, size_t *ret_line_len) {
        return proto_frame_next_max(buf, len, PROTO_LINE_MAX, ret_line_len);
}
