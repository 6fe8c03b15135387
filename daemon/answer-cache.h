#pragma once

/*
 * The last list/status answer, and the figures it was encoded from. Admins
 * and monitors poll status, and most polls find every figure unchanged: the
 * kernel is still asked each time, but then the bytes encoded last time are
 * copied instead of building and dumping the JSON again (a third of the
 * daemon's time per status answer). Encoding is a pure function of the
 * figures, so the copy is byte for byte what encoding would give.
 *
 * One answer is kept: alternating requests simply encode every time.
 * Not thread-safe (the daemon answers from one thread).
 */

#include <stddef.h>

#include "proto/proto.h"

typedef struct AnswerCache {
        ProtoChannelView view;
        ProtoChannel *channels;         /* deep copies; NULL: empty */
        size_t n;
        char *line;
        size_t len;
} AnswerCache;

/*
 * A channels answer for v[0..n) in *ret_line (malloc'd, newline-terminated,
 * the caller's), like proto_encode_channels(). Keeps a copy of v and of the
 * answer for next time; failing to keep them only costs the next answer its
 * shortcut. Negative errno: -ENOMEM.
 */
int answer_cache_encode(AnswerCache *c, ProtoChannelView view, const ProtoChannel *v, size_t n,
                        char **ret_line, size_t *ret_len);

/* Free what the cache holds; it is empty (and usable) again. */
void answer_cache_done(AnswerCache *c);
