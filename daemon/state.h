#pragma once

/*
 * The record of kernel objects this daemon created, kept beside its socket
 * so that the next start can reclaim what a killed run left behind.
 *
 *   <socket>.lock   flock()ed for the daemon's lifetime: one daemon per socket
 *   <socket>.state  append-only lines "shm KEY ID" / "-shm KEY ID" (and sem)
 *
 * A record is appended right after the object exists and before anything
 * else is done with it, so a SIGKILL at any later point is recoverable.
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

typedef struct StateRecord {
        StateKind kind;
        uint32_t key;
        int id;
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

/* Append a record; -errno on write failure (the object must then be undone). */
int state_add(State *s, StateKind kind, uint32_t key, int id);
int state_drop(State *s, StateKind kind, uint32_t key, int id);

/* Replace the file's contents with exactly these live records. */
int state_rewrite(State *s, const StateRecord *v, size_t n);

/* Remove both files (on a clean exit). */
void state_remove_files(State *s);

/* Close and unlock, leaving the files. Takes NULL; returns NULL. */
State *state_free(State *s);

/* The state file's path, for messages. */
const char *state_path(const State *s);
