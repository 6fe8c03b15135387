#pragma once

/*
 * A channel's kernel objects: one System V shared-memory segment and one
 * semaphore set, created together under one key, initialised, given their
 * owner/group/mode, and removed together. Nothing here knows about sockets
 * or clients; the registry tracks who holds a channel.
 */

#include <stdint.h>

#include "daemon/config.h"
#include "daemon/posix.h"
#include "daemon/state.h"
#include "proto/proto.h"

typedef struct Channel {
        ChannelSpec spec;               /* own copy; sem_values owned */
        uint32_t key;                   /* same key for segment and set */
        uint32_t first_held_key;        /* made: the first derived key another object held (0: none), for the log */
        int shm_id;
        int sem_id;
        void *addr;                     /* the daemon's own attachment */
        /* broadcast only: the subscriber table, a second segment (proto/broadcast.h) */
        uint32_t table_key;
        int table_id;                   /* -1: none */
        void *table_addr;
        /* posix only (key 0, ids -1): its files; addr and table_addr are their mappings */
        PosixObjects posix;
        bool adopted;                   /* taken over from a crashed run at this start */
        pid_t made_pid;                 /* the daemon that made the objects, and the second */
        int64_t made_since;             /* before: what proves them ours after a crash */
        char owner[PROTO_IDNAME_MAX + 1];  /* spec.uid/gid as names, resolved once */
        char group[PROTO_IDNAME_MAX + 1];
} Channel;

/* How many candidate keys a name derives before its channel cannot be made. */
#define CHANNEL_DERIVED_KEY_ATTEMPTS 64

/*
 * A broadcast channel's table segment takes a key derived from the
 * channel's name like a channel's own, from candidates of its own (this
 * bit set in the attempt), for fixed-key channels too: nobody else can
 * tell it in advance.
 */
#define TABLE_KEY_DOMAIN 0x80000000u

/*
 * The attempt'th candidate key derived from a channel name under the state
 * directory's secret (SipHash-2-4). Positive, never 0.
 */
uint32_t channel_derive_key(const uint8_t secret[SIPHASH_KEY_SIZE], const char *name, unsigned attempt);

/*
 * 0 when the daemon can hand out channel s's files (system V: always): it
 * reopens them for each opener with the opener's access, which the kernel
 * checks against the daemon's own class of s's mode unless it has
 * CAP_DAC_OVERRIDE. Else -EPERM, with what to change in msg.
 */
int channel_posix_servable(const ChannelSpec *s, char *msg, size_t msg_size);

/* Whether key is one make_table() could have given channel name's subscriber table (a derived table key). */
bool channel_table_key_fits(const uint8_t secret[SIPHASH_KEY_SIZE], const char *name, uint32_t key);

/*
 * The state records of the channel. System V: its two objects, the channel
 * itself, and a broadcast channel's table segment (when it exists) last
 * (3 or 4). posix: the channel, then its files (segment, table,
 * semaphores). Returns how many; channel_count_records() says beforehand.
 */
#define CHANNEL_RECORDS (1 + POSIX_RECORDS_MAX)
size_t channel_records(const Channel *c, StateRecord ret[CHANNEL_RECORDS]);
size_t channel_count_records(const Channel *c);

/*
 * A digest of what a channel's objects are made of (layout, sizes,
 * semaphores and their start values, the configured key): equal digests
 * mean a crash restart may take the objects over.
 */
uint64_t channel_spec_fingerprint(const ChannelSpec *s);

/*
 * Take over the objects a killed run made for `spec` (their records, which
 * the caller proved; `table`, a broadcast channel's table segment, NULL
 * otherwise): attach the segment(s), check a ring's or broadcast channel's
 * header, and apply the configured owner, group and mode. On failure
 * nothing is changed, nothing removed, and msg says why.
 */
int channel_adopt(const ChannelSpec *spec, const StateRecord *shm, const StateRecord *sem, const StateRecord *table,
                  Channel **ret, char *msg, size_t msg_size);

/*
 * Take over the files a killed run made for a posix channel `spec`
 * (`recs`: its STATE_POSIX records, proven by posix_objects_adopt()):
 * map them, check a ring's or broadcast channel's header, apply the
 * configured owner, group and mode (a new owner recorded in state first).
 * On failure nothing is removed, but files may have their new owner (or
 * the daemon's, on the way to it): the state file says so, and a later
 * start proves them by it.
 */
int channel_adopt_posix(const ChannelSpec *spec, const StateRecord *recs, size_t n, State *state, Channel **ret,
                        char *msg, size_t msg_size);

/*
 * The table segment a killed run's broadcast channel names in its header
 * (segment `shm`, attached read-only for the look): 0 with its key and id,
 * -EPROTO when the segment holds no broadcast header of this version, or a
 * negative errno from attaching it.
 */
int channel_table_of(const StateRecord *shm, uint32_t *ret_key, int *ret_id);

/* Detach and free, leaving the objects and their records as they are. Takes NULL; returns NULL. */
Channel *channel_forget(Channel *c);

/*
 * Create, initialise (SETALL, ring header) and publish the objects for
 * `spec`, recording each object in `state` as soon as it exists.
 * `fixed_keys` (sorted) are keys that other channels own: a derived key
 * never takes one of them. A derived key held by anyone else moves on to
 * the next candidate; a fixed key held by anyone is an error, and the
 * foreign object is left untouched. On failure everything made is removed
 * again and a negative errno is returned with a sentence in msg.
 *
 * old (NULL: none): files of a posix channel that this one replaces, open
 * and at their names, their waiters told (reclaim_posix_take()): each new
 * file takes the place of the old one of its role in one step
 * (posix_objects_create()). Removed and closed in every case, what no new
 * file replaced as posix_objects_remove() does.
 */
int channel_create(const ChannelSpec *spec, const uint32_t *fixed_keys, size_t n_fixed, State *state,
                   PosixObjects *old, Channel **ret, char *msg, size_t msg_size);

/*
 * Remove the objects (IPC_RMID; clients still attached keep their mapping
 * until they detach) and drop their state records. Takes NULL; returns NULL.
 */
Channel *channel_free(Channel *c, State *state);

/*
 * Remove old and make the channel spec anew, as channel_free() and
 * channel_create() do, old freed in every case. A posix channel's files
 * are not unlinked first: each new file takes the place of the old one in
 * one step (posix_objects_create()), so no name is ever free for another
 * user to take; what no new file replaces goes after.
 */
int channel_replace(Channel *old, const ChannelSpec *spec, const uint32_t *fixed_keys, size_t n_fixed,
                    State *state, Channel **ret, char *msg, size_t msg_size);

/*
 * Fill the open/list view of *ret from what the daemon knows. No syscalls.
 * A posix channel's sem_names are borrowed from c: not for proto_channel_done().
 */
void channel_describe(const Channel *c, ProtoChannel *ret);

/*
 * Fill the status view: IPC_STAT of both objects and every semaphore's
 * value, waiters and last pid (posix: fstat of its files, semaphore
 * values only). ret->semaphores (and a posix channel's sem_names) are
 * malloc'd (free with proto_channel_done()). -EIDRM when an object was removed behind our back,
 * -ENOMEM. Figures the kernel will not give (a mode without the owner's
 * read bit, for a daemon without CAP_IPC_OWNER: GETALL has no *_STAT_ANY)
 * are not a failure: 0, with ret->error and ret->message saying what could
 * not be read, no semaphores, and ret->segment_unread when the segment's
 * figures are missing too.
 */
int channel_stat(const Channel *c, ProtoChannel *ret);

/*
 * Whether both objects still exist as the channel's (an admin may ipcrm them):
 * 0 intact, -EIDRM removed or replaced, another negative errno if unknown.
 */
int channel_check(const Channel *c);

/*
 * Make the channel's objects again under the same key, after the old ones
 * were removed behind our back. The old Channel is freed (what is left of
 * it removed) and *c points to the new one. On failure *c is NULL and msg
 * says why.
 */
int channel_remake(Channel **c, State *state, char *msg, size_t msg_size);

/*
 * Apply owner, group and mode in place: IPC_SET, or chown and chmod of a
 * posix channel's files, which are recorded in state under a new owner
 * first (NULL: not recorded; see posix_objects_set_perms()).
 */
int channel_set_perms(Channel *c, State *state, uid_t uid, gid_t gid, mode_t mode);

/* The kernel's rule for who may use an object, for the access check. */
typedef struct ChannelPerm {
        uid_t uid, cuid;
        gid_t gid, cgid;
        mode_t mode;
        bool files;     /* posix: handed over as descriptors, judged by open(2)'s rule */
        bool readers_write;     /* some of them go read-write to ro openers too (a broadcast table, its FIFOs) */
} ChannelPerm;

void channel_perm(const Channel *c, ChannelPerm *ret);

/*
 * Whether owner uid, group gid and mode may refuse someone a right that
 * the old ones grant, when the holders cannot all be judged one by one.
 */
bool channel_perms_may_revoke(uid_t uid, gid_t gid, mode_t mode, const ChannelSpec *to);

/*
 * Whether c may be mapped by processes the daemon cannot name, besides its
 * own attach and `named` that it can: the last run's holders not back
 * yet, one that disconnected, one that attached by id. System V counts a
 * segment's attaches; a posix channel's file mappings are counted
 * nowhere, so it always may.
 */
bool channel_has_unnamed_holders(const Channel *c, size_t named);

/*
 * Tell the clients of a ring or broadcast channel that it is going: store
 * REMOVED in its header and wake its futex sleepers (channel_free() does
 * it too); and a posix channel's semaphore waiters and lockers, through
 * its semaphore files' removal word. Called before anything else wakes its
 * waiters, so that a waiter woken for another reason (a locker, for its
 * own token's death) never reads the channel as live again. Takes NULL;
 * idempotent.
 */
void channel_mark_removed(Channel *c);
