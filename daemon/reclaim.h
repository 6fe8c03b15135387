#pragma once

/*
 * Reclaim after a crash: remove the objects a killed run recorded, but only
 * those that are provably still the same objects (same id, same key, made
 * by our user). Anything else is left alone: we never remove what we did
 * not create.
 */

#include <stddef.h>

#include "daemon/state.h"

typedef struct ReclaimResult {
        size_t removed;         /* ours, and now gone */
        size_t gone;            /* already removed by someone else */
        size_t foreign;         /* the id now names another object: left alone */
        size_t failed;          /* ours, but IPC_RMID failed */
} ReclaimResult;

/* Never fails as a whole; the counts say what happened. */
void reclaim_records(const StateRecord *v, size_t n, ReclaimResult *ret);
