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
        size_t kept;            /* could not be verified or removed: still recorded */
} ReclaimResult;

/*
 * Reclaim what v records. Records that could not be settled (unverifiable,
 * or IPC_RMID failed) are moved to the front of v, and their count is
 * ret->kept: the caller keeps them in the state file, so nothing of ours
 * is ever forgotten. Never fails as a whole.
 */
void reclaim_records(StateRecord *v, size_t n, ReclaimResult *ret);
