#pragma once

/*
 * Reclaim after a crash: remove the objects a killed run recorded, but only
 * those it can prove that run made. What the kernel offers as proof:
 *
 *   segment  key, creator uid, creator pid (shm_cpid) and size all equal
 *            the record's: another process cannot have our pid while it
 *            lived, nor the creator uid unless it runs as our user;
 *   set      key, creator uid and count equal, and (a set has no creator
 *            pid) its ctime within the minute after the record's time (our
 *            SETALL and IPC_SET follow creation at once), or later while
 *            the segment the same run made under the same key was proven
 *            ours in the same pass (a reload changed its permissions);
 *            for an intent whose id was never recorded also: never operated
 *            on (otime 0), and the last pid of its first semaphore 0 or the
 *            recorded pid (SETALL sets it).
 *
 * Anything else is left alone, counted, and named in a warning: we never
 * remove what we cannot prove we created. Records of the first state format
 * carry no creator and prove nothing: their objects are left, and the
 * caller names them in the log.
 */

#include <stddef.h>

#include "daemon/posix.h"
#include "daemon/state.h"

typedef struct ReclaimResult {
        size_t removed;         /* ours, and now gone */
        size_t gone;            /* already removed by someone else */
        size_t foreign;         /* the id or key names an object we cannot prove ours: left alone */
        size_t kept;            /* could not be checked or removed: still recorded */
} ReclaimResult;

/*
 * Reclaim what v records. Records that could not be settled (unreadable,
 * or IPC_RMID failed) are moved to the front of v, and their count is
 * ret->kept: the caller keeps them in the state file, so nothing of ours
 * is ever forgotten. Legacy records are settled as foreign; channel records
 * and records marked adopted are settled without a touch. secret is the
 * key secret of the run that wrote them: a posix intent's file may be at
 * the temporary name it derives (posix_reclaim_file()). Never fails as a
 * whole.
 */
void reclaim_records(StateRecord *v, size_t n, const uint8_t *secret, ReclaimResult *ret);

/*
 * Whether a recorded (not pending) segment or set is provably the one its
 * record names, by the rules above; `paired`: its run's segment under the
 * same key was proven. 1 yes, 0 no, -ENOENT gone (or a segment removed
 * already, that only its clients keep), another negative errno when it
 * cannot be read.
 */
int reclaim_prove(const StateRecord *rec, bool paired);

/*
 * A posix channel that a killed run made and the config changed since is
 * made anew; its old files must not be reclaimed first, or their names are
 * free for another user to take until the new ones are made. Take the
 * files that the records v[idx[0]], ..., v[idx[n - 1]] name (one
 * channel's STATE_POSIX records, intents too, in ascending order:
 * state_posix_range() of state_posix_index(); an intent's file at its
 * name is a start killed while it replaced it) that are provably ours, as
 * reclaim proves them, into *ret (posix_objects_take(); secret: the key
 * secret of the run that wrote v): opened, their waiters told as reclaim
 * tells them.
 * Their records are marked .adopted, so that reclaim_records() leaves
 * them: the caller records the files again and hands *ret to the
 * channel's creation as the files it replaces (posix_objects_create()'s
 * old), or removes it (posix_objects_remove()). What is not taken is
 * reclaim's. Returns how many files were taken (0: none, and *ret holds
 * nothing).
 */
size_t reclaim_posix_take(StateRecord *v, const size_t *idx, size_t n, const uint8_t *secret, PosixObjects *ret);
