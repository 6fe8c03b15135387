#pragma once

/*
 * A posix channel's files in /dev/shm (proto/posix.h names them): made,
 * checked, opened again and unlinked safely. Nothing here knows about
 * layouts or clients; channel.c formats a ring's header in the mapping and
 * dispatches to these functions by kind.
 *
 * Every file is made with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600, so a
 * name somebody else holds fails the channel and that file is never
 * opened, changed or removed; it gets its owner, group and mode (fchown,
 * fchmod) only once initialised. Each is recorded in the state file with
 * its device and inode as soon as it exists, and a name is unlinked only
 * while it still names that inode, a regular file owned by the daemon's
 * uid, or (a file the daemon still holds open, so the inode cannot have
 * been freed and its number reused) by the owner the daemon gave it.
 *
 * A file is made under a temporary name that only the daemon can derive,
 * set up there and only then put at its name in one step: over the file
 * it replaces (RENAME_EXCHANGE; that one is unlinked from the temporary
 * name after) or where nothing is (RENAME_NOREPLACE). So a name of a
 * channel that is being replaced is never free for another user to take.
 *
 * A client with an rw descriptor can ftruncate(2) a file under the
 * daemon's own mapping; the daemon's access beyond the new end would
 * raise SIGBUS. Every mapping made here is guarded: such a fault maps
 * private zero pages over the rest of that mapping instead, and
 * posix_objects_check() then reports the file replaced (-EIDRM), so the
 * channel is made anew.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/config.h"
#include "daemon/state.h"
#include "proto/posix.h"
#include "proto/proto.h"

/* Roles of a file, as its state record's id says: a semaphore's is its index (>= 0). */
#define POSIX_ROLE_SEGMENT (-1)
#define POSIX_ROLE_TABLE (-2)

/* One file of a channel, mapped for the channel's life. */
typedef struct PosixFile {
        int fd;                         /* O_RDWR, the daemon's own; -1: none */
        dev_t dev;
        ino_t ino;
        uid_t uid;                      /* the owner the daemon gave it (its own, until set_perms) */
        void *addr;                     /* MAP_SHARED of the whole file; NULL: none */
        size_t size;
} PosixFile;

typedef struct PosixObjects {
        char shm_name[PROTO_POSIX_NAME_MAX + 1];     /* as shm_open() takes it: "/shmbroker.NAME" */
        char table_name[PROTO_POSIX_NAME_MAX + 1];   /* "" unless broadcast, or raw with semaphores */
        char **sem_names;                            /* nsems, as sem_open() takes them */
        unsigned nsems;
        PosixFile shm, table;
        PosixFile *sems;                             /* nsems */
        pid_t made_pid;                              /* what the records say: their maker and its time */
        int64_t made_since;
        bool told;                                   /* the semaphores' waiters were told of the removal */
        bool table_private;                          /* the table is a raw channel's lock holder table */
} PosixObjects;

/*
 * Wake whoever sleeps on a semaphore's lock (proto/posix.h): a holder token
 * was marked DEAD, and a locker behind it may take the lock over now.
 */
void posix_objects_wake_lockers(const PosixObjects *p);

/* No files, nothing open: what posix_objects_close() may take. */
void posix_objects_init(PosixObjects *p);

/*
 * Whether spec's channel has a table file: a broadcast channel's
 * subscriber table, or a raw channel's lock holder table (one with
 * semaphores; proto/posix.h), which the daemon alone writes: it stays the
 * daemon's, mode 0600, and goes O_RDONLY to every opener.
 */
bool posix_spec_has_table(const ChannelSpec *spec);

/* Most records a channel's files take: segment, table, one per semaphore. */
#define POSIX_RECORDS_MAX (2 + PROTO_FDS_MAX)

/*
 * Make the files for `spec` (segment of spec->size zero bytes, a broadcast
 * channel's table of `table_size` bytes or a raw channel's zeroed lock
 * holder table, the semaphores with their initial values), each recorded in `state` (may be NULL) as soon as it exists,
 * all still 0600 and owned by the daemon. On failure whatever was made is
 * removed again and msg names the file and says why; an existing name is
 * -EEXIST and that file is left untouched.
 *
 * old (NULL: none): the files of the channel this one replaces, still open
 * and at their names, their waiters told (posix_objects_mark_removed()).
 * Each new file takes the place of the old one of its role in one step
 * (the name is never free), and the old one is unlinked. On success or
 * failure, old is removed and closed: what no new file replaced as
 * posix_objects_remove() does.
 */
int posix_objects_create(const ChannelSpec *spec, uint64_t table_size, State *state, PosixObjects *old,
                         PosixObjects *ret, char *msg, size_t msg_size);

/*
 * Whether a file is at a name that posix_objects_create() with these
 * arguments would need and that old (NULL: none) does not hold: a name
 * somebody else took, which would make the creation fail. 1 with the file
 * name in buf (within PSEM_DIR), 0 when every such name is free, or a
 * negative errno. Looks only: a name taken after it still fails the creation.
 */
int posix_objects_find_taken(const ChannelSpec *spec, const PosixObjects *old, char *buf, size_t size);

/* The bytes of /dev/shm that posix_objects_create() with these arguments takes: whole pages of each file. */
uint64_t posix_objects_bytes(const ChannelSpec *spec, uint64_t table_size, uint64_t page);

/*
 * Open again the files a killed run made for `spec`, as `recs` (n of
 * them, STATE_POSIX of this channel) record them: by name with
 * O_NOFOLLOW, each the recorded inode, a regular file of ours (or of the
 * owner its record names) of the
 * recorded size, semaphores with this version's layout. Nothing is
 * changed; on failure msg says why and nothing is kept open.
 */
int posix_objects_adopt(const ChannelSpec *spec, const StateRecord *recs, size_t n, PosixObjects *ret,
                        char *msg, size_t msg_size);

/*
 * Take a killed run's file of a channel that is made anew after a crash,
 * to be replaced in place (posix_objects_create()'s old) instead of
 * reclaimed first, which would leave its name free for another user to
 * take: the file rec records, opened as posix_objects_adopt() does (by
 * name with O_NOFOLLOW, the recorded inode, a regular file of ours or of
 * the owner the record names, of the recorded size), its waiters told as
 * crash reclaim tells them (a semaphore REMOVED; a segment's ring or
 * broadcast header is the caller's: `mark`, when given, is called on its
 * mapping), and held in p (first posix_objects_init()) as the file of its
 * role. An intent (a start killed while it made or replaced the file) is
 * taken for the file at its name when that is the file it replaces or
 * one it made, as posix_reclaim_file() tells them (secret: the run's key
 * secret); the other one, at the temporary name, is reclaimed now. Every
 * file p takes is of one channel; the first one's maker and time are p's.
 * 1 taken, 0 when p holds that file already, -EEXIST when p holds another
 * of its role, -EINVAL when rec is not for p, another -errno when the file
 * is not the one recorded or cannot be opened: then it is reclaim's.
 */
int posix_objects_take(PosixObjects *p, const StateRecord *rec, const uint8_t *secret,
                       void (*mark)(void *addr, size_t size));

/*
 * Give every file its owner, group and mode (a broadcast table:
 * bcast_table_mode() for table_mode; a raw channel's lock holder table
 * keeps the daemon's and 0600). A file given another owner is recorded under it in
 * state first (NULL: not recorded), so that a restart after a crash still
 * proves it ours. 0, or a negative errno from recording or the system.
 */
int posix_objects_set_perms(PosixObjects *p, State *state, uid_t uid, gid_t gid, mode_t mode, mode_t table_mode);

/*
 * 0 when every name still names our file, of its size; -EIDRM when one was
 * removed, replaced or resized (truncated under the daemon's mapping);
 * -errno otherwise.
 */
int posix_objects_check(const PosixObjects *p);

/* Tell the semaphores' waiters of the removal (PSEM_STATE_REMOVED and one post each), once. */
void posix_objects_mark_removed(PosixObjects *p);

/*
 * Tell the semaphores' waiters (posix_objects_mark_removed()),
 * unlink every name that still names the file the daemon holds (a regular
 * file owned by the daemon or by whom set_perms gave it), cancel the
 * records of the files that are gone (state may be NULL) and close
 * everything. A name that now names another file is left alone; a file
 * that could not be unlinked keeps its record.
 */
void posix_objects_remove(PosixObjects *p, State *state);

/* Unmap and close, leaving the files and their records. */
void posix_objects_close(PosixObjects *p);

/* The records of the files, in the order made: segment, table, semaphores. Returns how many. */
size_t posix_objects_records(const PosixObjects *p, const char *channel, StateRecord *ret);

/*
 * Fresh descriptors for a client, in proto/posix.h's order: O_RDWR for rw,
 * O_RDONLY for ro, but a broadcast table O_RDWR always (every opener
 * writes it; its mode lets every reader write) and a raw channel's lock
 * holder table O_RDONLY always (the daemon alone writes it). Each is a new open file
 * description of the file, through /proc/self/fd. Returns how many (at most PROTO_FDS_MAX) or -errno with
 * none left open.
 */
int posix_objects_open_fds(const PosixObjects *p, bool rw, int ret_fds[PROTO_FDS_MAX]);

/* How many descriptors posix_objects_open_fds() would give: to refuse before opening any. */
size_t posix_objects_n_fds(const PosixObjects *p);

/* The segment's owner, group, permission bits and size as the kernel sees them (fstat). */
int posix_objects_stat(const PosixObjects *p, uid_t *ret_uid, gid_t *ret_gid, mode_t *ret_mode, uint64_t *ret_size);

/* A semaphore's value, read from the sem_t in the daemon's mapping (proto/sem-t.h: 0 to SEM_VALUE_MAX). */
int posix_objects_sem_value(const PosixObjects *p, unsigned idx, int *ret);

/*
 * Crash reclaim of one recorded file (STATE_POSIX): unlink it when its
 * name still names the recorded inode, a regular file of ours, after
 * telling a semaphore's waiters (a segment's ring or broadcast header is
 * the caller's: `mark`, when given, is called on its mapping first). An
 * intent (pending: made, perhaps, but not recorded) is unlinked only when
 * the file is as the daemon leaves it before recording it: ours, 0600,
 * one link, empty or of the intended size, changed within a minute after
 * the intent; it is looked for at its name and at the temporary name the
 * intent and the run's key secret derive (NULL: its name only). An
 * intent of a replacement also names the file it replaces, which is
 * unlinked at either name when it is still that inode, as by its record.
 * A file for which taken(dev, ino, userdata) says true is one this start
 * took over with its channel: it is never touched (an intent whose
 * cancellation the file lost names it too). 1 removed, 0 not ours
 * (untouched), POSIX_TAKEN_OVER for a record of a file taken over, -ENOENT
 * gone (for an intent: nothing of it left but a file taken over), another
 * -errno kept.
 */
#define POSIX_TAKEN_OVER 2
typedef bool (*PosixTakenFn)(uint64_t dev, uint64_t ino, void *userdata);
int posix_reclaim_file(const StateRecord *rec, const uint8_t *secret, void (*mark)(void *addr, size_t size),
                       PosixTakenFn taken, void *userdata);

/* The file name in /dev/shm (no directory) of a record's file. */
int posix_record_file_name(const StateRecord *rec, char *buf, size_t size);
