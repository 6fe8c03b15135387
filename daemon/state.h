#pragma once

/*
 * The state directory: what this daemon must remember across a crash, kept
 * where nobody else can write. For a socket named NAME it holds
 *
 *   NAME.lock    flock()ed for the daemon's lifetime: one daemon per socket
 *   NAME.state   append-only records of the kernel objects it created
 *   NAME.secret  16 random bytes (hex), the key of the derived System V keys;
 *                kept across restarts so that keys stay stable
 *
 * The directory must be owned by the daemon's uid and writable by nobody
 * else, and each file must be a regular file owned by that uid that nobody
 * else can write (the secret: nor read). Anything else refuses the start
 * with a sentence naming the path. Files are made with O_EXCL and mode
 * 0600, and the state file is replaced by rename(), never truncated.
 *
 * Before a channel's objects are made, their intents are appended (key and
 * what will identify them), and their ids as soon as both exist, so a
 * SIGKILL at any point is recoverable. Every record names the pid of the
 * daemon that made the object, so reclaim can prove the object is that
 * run's (see reclaim.h). No fsync: a power loss also drops every System V
 * object, and a killed process loses no completed write().
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/siphash.h"

typedef enum StateKind {
        STATE_SHM,
        STATE_SEM,
        STATE_CHAN,     /* a channel: which objects are whose, for adoption after a crash */
        STATE_POSIX,    /* a posix channel's file in /dev/shm (daemon/posix.h) */
} StateKind;

/*
 * A record is an object that exists (id), or an intent written just before
 * creating one (pending, id -1). Both carry what proves the object is ours:
 * the creating daemon's pid, the wall-clock second before creation (a set
 * records no creator pid, but its ctime is no earlier), and the size (bytes
 * of a segment, semaphores of a set).
 */
typedef struct StateRecord {
        StateKind kind;
        uint32_t key;
        int id;                 /* -1 when pending; a channel's: its segment's */
        bool pending;
        bool legacy;            /* read from an older format that carries no proof */
        bool adopted;           /* a crash restart took the object over: not to reclaim */
        pid_t pid;
        int64_t since;
        uint64_t size;
        /*
         * STATE_POSIX only (id: the file's role, name: its channel's): what proves the file ours.
         * An intent's: the file it replaces (dev and ino 0: none), which it covers until that is gone.
         */
        uint64_t dev, ino;
        uid_t uid;              /* the owner the daemon gave the file; (uid_t) -1: not recorded (its own) */
        /* STATE_CHAN only: */
        int sem_id;
        uint64_t fingerprint;   /* of the config that made it (channel_spec_fingerprint()) */
        char name[65];
} StateRecord;

typedef struct State State;

/*
 * Check and lock the state directory `dir` for the socket named `name`
 * (a base name), and open (or create) its state and secret files. Returns 0
 * with *ret owned by the caller; -EBUSY when another live daemon holds the
 * lock; -EPERM when the directory or a file fails the ownership, mode or
 * type checks; another negative errno from the system. msg says which path
 * and why.
 */
int state_open(const char *dir, const char *name, State **ret, char *msg, size_t msg_size);

/*
 * Write owner (lines that name the configuration: its paths) into s's lock
 * file, so that a later start of the same owner under another socket name
 * finds these files (state_previous_names(): one line in common is
 * enough). "" claims nothing. socket_path (absolute, or NULL) is recorded
 * too, for that start to remove what this run made beside its socket
 * (state_recorded_socket()); bound: the run binds it, rather than being
 * passed it by systemd, whose socket it is. 0 or -errno.
 */
int state_set_owner(State *s, const char *owner, const char *socket_path, bool bound);

/*
 * The socket path s's lock file records (state_set_owner()), malloc'd,
 * with whether that run bound it itself; NULL when none, or without memory.
 */
char *state_recorded_socket(const State *s, bool *ret_bound);

/*
 * The names (as state_open() takes them) of the other state files in s's
 * directory whose lock file shares a line with owner: files of an earlier run of the
 * same configuration under another socket name, which nothing else will
 * reclaim. NULL-terminated, malloc'd with its strings (free with
 * strv_free()); not locked here: state_open() of one says whether a
 * daemon still runs on it. 0 or -errno.
 */
int state_previous_names(State *s, const char *owner, char ***ret);

/* The key secret for derived System V keys; valid while s lives. */
const uint8_t *state_secret(const State *s);

/*
 * The objects the file says are still alive, in the order they were made.
 * *ret is malloc'd (may be NULL when *ret_n is 0). Records of the older
 * format come back with .legacy set; malformed lines are skipped and
 * counted in *ret_skipped.
 */
int state_read(State *s, StateRecord **ret, size_t *ret_n, size_t *ret_skipped);

/*
 * The positions of v's STATE_POSIX records (their intents too, when
 * intents), sorted by channel name, then by position: *ret (free()) with
 * *ret_n of them. 0, or -ENOMEM. Thread-safe.
 */
int state_posix_index(const StateRecord *v, size_t n, bool intents, size_t **ret, size_t *ret_n);
/* The run of idx (state_posix_index()'s) under channel name: [*ret_first, the return value), in v's order. */
size_t state_posix_range(const StateRecord *v, const size_t *idx, size_t n_idx, const char *name, size_t *ret_first);

/*
 * The lines the last state_read() could not parse, as they were (each
 * ending in a newline; NULL when none), which every state_rewrite() after
 * it writes back at the end: a record the daemon cannot read now is never
 * lost, so an admin can mend it and a later start reclaim its object.
 * The first 64 KiB of them; *ret_dropped says how many lines beyond.
 * Valid until the next state_read() or state_free().
 */
const char *state_unread(const State *s, size_t *ret_len, size_t *ret_dropped);

/*
 * The last line of the file as the last state_read() found it cut short
 * (no newline: a write the run that wrote it was killed in), or NULL. Such
 * a line is dropped, neither read nor kept, and cut from the file (the
 * next append would be glued to it): whatever it recorded is covered by
 * what came before it (an intent precedes its objects, and ids
 * precede the cancellation of their intents). Valid until the next
 * state_read() or state_free().
 */
const char *state_cut_line(const State *s);

/*
 * Append the records `add` and then cancel the records `cancel`, in one
 * write(): a channel's two intents before it is made, and after it is made
 * its two ids and its channel record with the intents they replace. At
 * most 6 records in all (-EINVAL); -errno on write failure. A failed or killed write may keep a
 * first part of the records (ids before cancellations, so never a
 * cancellation without its id); the next start checks every record.
 */
int state_append_records(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel);

/*
 * Inside a batch (state_batch_begin() to state_batch_end(): a start's, a
 * reload's or a stop's channels), the same as state_append_records(), but
 * the records go out with the next append of any kind, or at
 * state_batch_end(), in the same write(): a channel's ids with the next
 * channel's intents, one write per channel instead of two; a stop's
 * cancellations in writes of 64 KiB. Only for what follows the thing it
 * records (ids of objects made under intents, the cancellation of what was
 * removed): a kill before the write leaves the intents, by which the next
 * start still finds and removes those objects (what a batch made is then
 * made again, not taken over), or the record of what is gone. Outside a
 * batch it writes at once. -EINVAL as state_append_records(); -ENOMEM.
 */
int state_defer_records(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel);
void state_batch_begin(State *s);
/* Ends the batch and writes what it deferred: 0 or -errno. */
int state_batch_end(State *s);

/*
 * At most the bytes of one record line of a channel whose name is
 * name_len bytes long: of a posix channel, or of a System V one.
 */
size_t state_line_max(bool posix, size_t name_len);

/*
 * Make sure `bytes` more of records (and what is deferred) can be
 * appended: room allocated past the file's end, or where the file system
 * cannot allocate ahead, free now (another writer may still fill it). For
 * a change that removes objects before it records their replacements: a
 * write that then fails would lose a channel that a refusal would have
 * kept. 0, -ENOSPC, or another -errno. state_unreserve() gives back what
 * the appends did not use, as does a state_rewrite(), and state_open()
 * what a run killed meanwhile left.
 */
int state_reserve(State *s, uint64_t bytes);
void state_unreserve(State *s);

/*
 * Record that what r recorded (an object, or a channel) is gone; -errno on
 * write failure. Inside a batch it is deferred as state_defer_records()
 * says: a kill before the write leaves the record of something gone, which
 * the next start finds gone (or, for a channel, marked removed: never taken
 * over) and forgets.
 */
int state_cancel(State *s, const StateRecord *r);

/*
 * An object that could not be removed (err: why, a positive errno): it
 * stays recorded (its record is not cancelled), and every later
 * state_rewrite() writes r as well, so that the next start's reclaim finds
 * it however the live records changed. For the rest of this run; 0 or
 * -ENOMEM (then every later state_rewrite() fails with -ENOMEM and leaves
 * the file, which holds r, as it is: it only grows until the next start).
 */
int state_keep(State *s, const StateRecord *r, int err);

/* How many records state_keep() was given, and kept (n_kept) or not, for want of memory (n_lost). */
size_t state_n_kept(const State *s);
size_t state_n_lost(const State *s);

/* The i-th of them (oldest first), with its err in *ret_err; NULL past the end. */
const StateRecord *state_kept(const State *s, size_t i, int *ret_err);

/*
 * Replace the file with one holding exactly these live records and the
 * kept ones: written under a fresh name (O_EXCL) and renamed over the old
 * one. Records deferred so far are dropped once it succeeds: v covers them.
 * -ENOMEM without a change once a state_keep() failed.
 */
int state_rewrite(State *s, const StateRecord *v, size_t n);

/*
 * Remove the files state_open() made (not found there): a start refused
 * before it made anything else, so that it leaves nothing. A lock or state
 * file a crashed run left stays: it names that run and what it made.
 */
void state_remove_made(State *s);

/*
 * Remove the lock and state files: on a clean exit, when the secret stays
 * (the next start derives the same keys); with secret, of a dead run under
 * a name that is no longer ours, whose keys nothing derives again.
 */
void state_remove_files(State *s, bool secret);

/* Close and unlock, leaving the files. Takes NULL; returns NULL. */
State *state_free(State *s);

/* The state file's path, for messages. */
const char *state_path(const State *s);

/*
 * The state directory's descriptor, for files kept beside the state file
 * (daemon/ledger.h), and the base name of the state files, which theirs
 * begin with; both valid while s lives.
 */
int state_dir_fd(const State *s);
const char *state_name(const State *s);

/* The lock file's path, for messages. */
const char *state_lock_path(const State *s);
