#pragma once

/*
 * A holder table of a ring (proto/ring.h) or of a broadcast channel
 * (proto/broadcast.h: one for publishers, one for subscribers), as the
 * broker keeps it: who may claim slots, or read. Every rw opener of a ring gets an entry and a token;
 * the entry is marked DEAD when the opener is done with it (its hold
 * ends, and its process with it), and handed out again only under a new
 * generation, so that a dead opener's token never names a live one. The
 * table lives in the segment, where clients read it; this side is its
 * only rightful writer, and goes by its own copy of every entry (in the
 * channel's ledger, which outlives a crash), never by the table. It also
 * keeps in its own memory what the table cannot say:
 * which LIVE entries no hold has (orphans). They wait for their opener to
 * take them back over a new connection, or to be found gone. There are
 * two kinds:
 *
 *  - a killed predecessor's: judged by the sweep (pid and proc-id.h's id);
 *  - watched: a hold ended while its opener's process lived on (its
 *    connection closed, not the process). The caller watches that
 *    process and ends the orphan when it exits. A cookie, never reused,
 *    names each such orphaning, so that a late word of an exit ends only
 *    the orphan it was meant for, not one the token became later.
 *
 * Nothing here knows about holds, connections or processes: the registry
 * says when a hold begins and ends.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/broadcast.h"
#include "proto/ring.h"

struct Wake;

typedef struct Holders {
        RingHolder *table;              /* in the channel's own attachment, borrowed; NULL: no table */
        RingHeader *ring;               /* the ring whose table it is, borrowed: its sleepers are woken at a death */
        uint32_t n;                     /* its entries, at most RING_HOLDERS */
        /* Signalled when an entry goes DEAD (daemon/wake.h); both borrowed, may be NULL. */
        const struct Wake *wake;
        const char *name;
        /* A posix channel's files, whose lock sleepers are woken too (posix_objects_wake_lockers()); borrowed, may be NULL. */
        const struct PosixObjects *posix;
        uint32_t next;                  /* where the search for a DEAD entry to reuse starts */
        uint32_t n_orphans;             /* of both kinds */
        uint32_t n_watched;             /* of them, those with a cookie */
        /*
         * Beside a table only (NULL without one), one allocation: raw
         * channels, most of a large config, then cost no page each.
         */
        uint64_t *orphans;              /* bitmap: LIVE entries that no hold has (taken back) */
        uint64_t *cookies;              /* per entry: a watched orphan's cookie; 0: a killed run's, or none */
        /*
         * Per entry: all of it as this side last wrote it (as the table had it
         * at init: a fresh one's, or a killed run's that left no ledger). The
         * entries go by these, not by the table, which any writer of the
         * segment may change: a forged LIVE must not refuse an opener, nor a
         * forged generation make a token name a second hold. In the
         * channel's ledger (daemon/ledger.h), borrowed, so that the next
         * broker after a crash goes by them too; else allocated here.
         */
        RingHolder *own;
        bool own_allocated;
} Holders;

/*
 * Keep the table of `ring`, a ring's header as this daemon attached it, or
 * of nothing (NULL: not a ring; every other call is then a no-op that
 * hands out no token), with its entries as this side writes them in
 * `ledger` (RING_HOLDERS of them; NULL: kept here, in memory only).
 * from_ledger: the ledger is a killed run's, and is written into the table
 * (undoing any writer's forgeries); else the table is believed as it is (a
 * fresh one's, laid out by ring_format(), or a killed run's that left no
 * ledger) and copied into it. No orphans yet. hs is zeroed or was
 * initialised before (what it kept is freed). 0, or -ENOMEM: then hs has
 * no table.
 */
int holders_init(Holders *hs, RingHeader *ring, RingHolder *ledger, bool from_ledger);

/* The same for the n entries (at most RING_HOLDERS) at `table` (NULL: none), and as many in ledger. */
int holders_init_table(Holders *hs, RingHolder *table, uint32_t n, RingHolder *ledger, bool from_ledger);

/* Free what hs keeps beside the table (not the table: the segment's; nor the ledger). hs has no table after. */
void holders_done(Holders *hs);

/*
 * Wake whoever waits on the channel: a ring's futex sleepers whose flag is
 * up (ring_wake_sleepers()), and its FIFO waiters, in an event loop. Done
 * whenever an entry goes DEAD; a waiter behind a claim of it can only now
 * repair it.
 */
void holders_wake_waiters(const Holders *hs);

/* Whether token names no entry LIVE by the words this side wrote; false for 0 and without a table. */
bool holders_token_dead(const Holders *hs, uint32_t token);

/*
 * A ring taken over from a killed run: its LIVE entries are its openers',
 * none of them bound to a hold of ours. They become orphans. Returns how
 * many.
 */
size_t holders_adopt(Holders *hs);

/* Whether there is a table (a ring, or one side of a broadcast channel). */
static inline bool holders_is_ring(const Holders *hs) {
        return hs->table != NULL;
}

/*
 * Bind the orphan that `want` names to an opener with pid `pid` and, when
 * the caller has one, its pidfd (-1: none), whose id (proc-id.h) is
 * recorded with it: the token stays as it is, and is no orphan any more.
 * Only the process the entry was handed to (same pid and id) takes it
 * back. -ENOENT when want names no orphan of that generation (never handed
 * out, DEAD, bound already, not a ring) or pid is another process.
 */
int holders_take_back(Holders *hs, pid_t pid, int pidfd, uint32_t want, uint32_t *ret_token);

/*
 * A token for an rw opener with pid `pid` (and pidfd, or -1): want's entry
 * when it is an orphan (holders_take_back()), else a FREE entry, else the
 * next DEAD one in turn under its generation + 1 (its old token stays
 * dead). pid and id are written before the entry's word goes LIVE (a
 * release store). -EUSERS when all the table's entries are LIVE, -EINVAL
 * when this is not a ring. The caller owns the token until
 * holders_release().
 */
int holders_take(Holders *hs, pid_t pid, int pidfd, uint32_t want, uint32_t *ret_token);

/*
 * The hold that had `token` ended: mark its entry DEAD (a release store;
 * the generation stays), but only if the entry still holds that token.
 * Takes 0 (no token) and any value a hold may carry.
 */
void holders_release(Holders *hs, uint32_t token);

/*
 * The hold that had `token` ended, but its opener's process lives on:
 * the entry stays LIVE, as a watched orphan that `cookie` (not 0, never
 * given before) names, until holders_release_orphan() with that cookie
 * or holders_take_back(). -ENOENT when the entry does not hold that
 * token (nothing changed: release it as usual).
 */
int holders_orphan(Holders *hs, uint32_t token, uint64_t cookie);

/* Whether `token` names a watched orphan that `cookie` names. */
bool holders_is_orphan(const Holders *hs, uint32_t token, uint64_t cookie);

/*
 * The process of the orphan that `cookie` names exited: mark it DEAD,
 * but only while it is that orphan (not taken back since, nor made
 * another). Returns whether it did.
 */
bool holders_release_orphan(Holders *hs, uint32_t token, uint64_t cookie);

/*
 * Judge the opener of every orphan of a killed run (not the watched
 * ones: their process is watched): gone (kill(pid, 0) says ESRCH, or its
 * id (proc-id.h) is not the recorded one: the pid is another process's)
 * makes it DEAD; alive, or not to be told, keeps it LIVE.
 * Logs each one marked dead, naming channel `name`. Returns how many
 * orphans of a killed run are left.
 */
size_t holders_sweep(Holders *hs, const char *name);
