#include <stdint.h>
#include <string.h>

#include "daemon/request-cache.h"

/*
 * FNV-1a. A peer that makes its lines collide only evicts its own and
 * others' entries: a line is taken only when its bytes are the same.
 */
static size_t slot_of(const char *line, size_t len) {
        uint32_t h = 2166136261u;

        for (size_t i = 0; i < len; i++)
                h = (h ^ (uint8_t) line[i]) * 16777619u;
        return h & (REQUEST_CACHE_SLOTS - 1);
}

bool request_cache_find(const RequestCache *c, const char *line, size_t len, ProtoRequest *ret) {
        const RequestCacheEntry *e;

        if (len == 0 || len > REQUEST_CACHE_LINE_MAX)
                return false;
        e = &c->entries[slot_of(line, len)];
        if (e->len != len || memcmp(e->line, line, len) != 0)
                return false;
        *ret = e->req;
        return true;
}

void request_cache_store(RequestCache *c, const char *line, size_t len, const ProtoRequest *req) {
        RequestCacheEntry *e;

        if (len == 0 || len > REQUEST_CACHE_LINE_MAX)
                return;
        e = &c->entries[slot_of(line, len)];
        memcpy(e->line, line, len);
        e->len = len;
        e->req = *req;
}
