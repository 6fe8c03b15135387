#pragma once

/*
 * A holder ledger: the daemon's own record of a channel's holder tables
 * (daemon/holders.h), in a file that outlives a crash. The tables
 * themselves sit in the segment, where every writer of it may forge
 * entries; the next broker, taking a killed run's channel over, believes
 * the ledger instead and writes it back into the segment. The file is
 * CHANNEL.ledger in the directory STATE.ledgers beside the state files
 * (STATE: their base name), both the daemon's only, mode 0600 and 0700:
 * a header, then the entries of every table of the channel in a row,
 * each laid out as a RingHolder. A directory of its own, so that no other
 * daemon's file in the state directory can ever be taken for a ledger.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/ring.h"

typedef struct Ledger {
        void *addr;             /* the mapping; NULL: no ledger */
        size_t size;
        RingHolder *entries;    /* in it: n of them */
        uint32_t n;
        dev_t dev;              /* of the file made or taken over, so that only it is ever removed */
        ino_t ino;
        char *file;             /* its name in the ledger directory */
} Ledger;

/*
 * Open STATE.ledgers in the state directory state_dirfd, made (mode 0700)
 * when missing: the descriptor, or -EPERM when it is not the daemon's
 * own directory that only it may enter, or another negative errno.
 */
int ledger_dir_open(int state_dirfd, const char *state);

/* Remove STATE.ledgers with every ledger in it (if it holds nothing else): the state files go. */
void ledger_dir_remove(int state_dirfd, const char *state);

/*
 * Map the ledger of n entries of a killed run's channel `name` from the
 * ledger directory dirfd: 0; -ENOENT when there is none this daemon would
 * have made for n entries (missing, not its own regular file of mode 0600,
 * of another size, or never filled in), which is not to be believed; or
 * another negative errno when it could not be looked at (a want of
 * descriptors or memory), which proves nothing either way.
 */
int ledger_take_over(int dirfd, const char *name, uint32_t n, Ledger *l);

/*
 * Make channel `name`'s ledger of n entries, zeroed, in place of any file
 * of that name: 0, or a negative errno (then l has no ledger). Space is
 * reserved up front, so the mapping never faults for want of it.
 */
int ledger_make(int dirfd, const char *name, uint32_t n, Ledger *l);

/*
 * The ledger is filled in (after ledger_make()): from now on a
 * next start may take it over. Until then it never would.
 */
void ledger_seal(Ledger *l);

/* Unmap the ledger and forget it; the file stays (for the next start, after a crash or a failed start). */
void ledger_close(Ledger *l);

/* Remove the ledger's file, if it is still the one l mapped, and close l: its channel is gone. */
void ledger_remove(int dirfd, Ledger *l);

/*
 * Remove every ledger in the ledger directory dirfd whose channel keep()
 * rejects (keep NULL: all): what a crash left of channels that were not
 * taken over.
 */
void ledger_sweep(int dirfd, bool (*keep)(const char *name, void *userdata), void *userdata);
