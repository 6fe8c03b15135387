#pragma once

/*
 * The request lines the daemon decoded lately, by their bytes. Clients ask
 * the same thing again and again (a monitor's status, a library's open and
 * close of its channels), and decoding a short line with jansson was most
 * of the daemon's instructions for a status request. A decode depends on
 * the line's bytes alone, so a line met again needs no other check than
 * being the same bytes. Only requests that decoded are kept; a refusal is
 * decoded afresh every time, for its message.
 */

#include <stdbool.h>
#include <stddef.h>

#include "proto/proto.h"

#define REQUEST_CACHE_SLOTS 32          /* a power of two: a line's slot is its hash's low bits */
#define REQUEST_CACHE_LINE_MAX 128      /* longer lines are not kept */

typedef struct RequestCacheEntry {
        size_t len;                     /* 0: empty */
        char line[REQUEST_CACHE_LINE_MAX];
        ProtoRequest req;
} RequestCacheEntry;

/* Zero-initialized: empty. Not thread-safe (the daemon has one thread). */
typedef struct RequestCache {
        RequestCacheEntry entries[REQUEST_CACHE_SLOTS];
} RequestCache;

/* Whether line (len bytes, no newline) was stored; its request into *ret if so. */
bool request_cache_find(const RequestCache *c, const char *line, size_t len, ProtoRequest *ret);

/* Keep req as what line decodes to, in place of whatever had line's slot; a line too long is not kept. */
void request_cache_store(RequestCache *c, const char *line, size_t len, const ProtoRequest *req);
