#pragma once

/*
 * The record of kernel objects this daemon created, kept beside its socket
 * so that the next start can reclaim what a killed run left behind.
 *
 *   <socket>.lock   flock()ed for the daemon's lifetime: one daemon per socket
 *   <socket>.state  append-only lines "shm KEY ID" / "-shm KEY ID" (and sem)
 *
 * Before a channel's objects are made, their intents are appended (key and
 * what will identify them), and their ids as soon as both exist, so a
 * SIGKILL at any point is recoverable.
 * No fsync: a power loss also drops every System V object, and a killed
 * process loses no completed write().
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum StateKind {
        STATE_SHM,
        STATE_SEM,
} StateKind;

/*
 * A record is either an object that exists (id), or an intent written just
 * before creating one (pending): the key, and what identifies the object
 * as ours if the daemon died before it could record the id: for a segment
 * our pid (shm_cpid) and its size, for a set the time (sem_ctime is no
 * earlier) and its count.
 */
typedef struct StateRecord {
        StateKind kind;
        uint32_t key;
        int id;                 /* -1 when pending */
        bool pending;
        int64_t stamp;          /* pending: shm creator pid, or sem earliest ctime */
        uint64_t size;          /* pending: shm bytes, or sem count */
} StateRecord;

typedef struct State State;

/*
 * Lock and open the state for `socket_path`. Returns 0 with *ret owned by
 * the caller, -EBUSY when another live daemon holds the lock, -ENAMETOOLONG,
 * or another negative errno from open/flock.
 */
int state_open(const char *socket_path, State **ret);

/*
 * The objects the file says are still alive, in the order they were made.
 * *ret is malloc'd (may be NULL when *ret_n is 0). Malformed lines are
 * skipped and counted in *ret_skipped.
 */
int state_read(State *s, StateRecord **ret, size_t *ret_n, size_t *ret_skipped);

/* Record that an object is gone; -errno on write failure. */
int state_drop(State *s, StateKind kind, uint32_t key, int id);

/*
 * Append the records `add` and then cancel the records `cancel`, in one
 * write(): a channel's two intents before it is made, and after it is made
 * its two ids with the intents they replace. At most 4 records in all
 * (-EINVAL); -errno on write failure. A failed or killed write may keep a
 * first part of the records (ids before cancellations, so never a
 * cancellation without its id); the next start checks every record.
 */
int state_append_records(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel);

/* Replace the file's contents with exactly these live records. */
int state_rewrite(State *s, const StateRecord *v, size_t n);

/* Remove both files (on a clean exit). */
void state_remove_files(State *s);

/* Close and unlock, leaving the files. Takes NULL; returns NULL. */
State *state_free(State *s);

/* The state file's path, for messages. */
const char *state_path(const State *s);
