#pragma once

/*
 * A holder ledger: the daemon's own record of a channel's holder tables
 * (daemon/holders.h), in a file of its state directory that outlives a
 * crash. The tables themselves sit in the segment, where every writer of
 * it may forge entries; the next broker, taking a killed run's channel
 * over, believes the ledger instead and writes it back into the segment.
 * The file is STATE.holders.CHANNEL (STATE: the state files' base name),
 * mode 0600, made and read only by the daemon: a header, then the
 * entries of every table of the channel in a row, each laid out as a
 * RingHolder.
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
        char *file;             /* its name in the state directory */
} Ledger;

/*
 * Map channel `name`'s ledger of n entries in directory dirfd (the state
 * directory), for the state files named `state`. take_over: a killed run's
 * channel, whose ledger is kept when it is one this daemon would have made
 * for n entries (returns 1). Else, or when it is missing or not that,
 * any file there is replaced by a new one, zeroed (returns 0). A negative
 * errno when neither can be done: then l has no ledger. Space is reserved
 * up front, so the mapping never faults for want of it.
 */
int ledger_open(int dirfd, const char *state, const char *name, uint32_t n, bool take_over, Ledger *l);

/*
 * The ledger is filled in (after ledger_open() returned 0): from now on a
 * next start may take it over. Until then it never would.
 */
void ledger_seal(Ledger *l);

/* Unmap the ledger and forget it; the file stays (for the next start, after a crash or a failed start). */
void ledger_close(Ledger *l);

/* Remove the ledger's file, if it is still the one l mapped, and close l: its channel is gone. */
void ledger_remove(int dirfd, Ledger *l);

/*
 * Remove every ledger file of the state files named `state` in dirfd
 * whose channel keep() rejects (keep NULL: all): what a crash left of
 * channels that were not taken over.
 */
void ledger_sweep(int dirfd, const char *state, bool (*keep)(const char *name, void *userdata), void *userdata);
