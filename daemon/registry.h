#pragma once

/*
 * The registry: every live channel by name, and the holds on it. A hold is
 * one connection's claim on one channel (connection x channel, as SPEC's
 * `clients` lists them); it ends when the client closes the channel or its
 * connection goes away, or when the channel goes (removed, replaced by a
 * reload, remade after an ipcrm). A hold with rw access on a ring also
 * holds a token of the ring's holder table (holders.h), from the open that
 * first needed one until the hold ends, however its access changes
 * meanwhile.
 *
 * A token lives as long as its opener's process, not its connection: a
 * connection may end under a live process (it disconnected, or we closed
 * it), and a fork may hold a connection open after its opener died. So
 * the first token a connection gets pins its process (a pidfd,
 * peer_pin_process()), and when the connection ends while that process
 * lives, its tokens stay LIVE as watched orphans (holders.h), which
 * client_done() hands out for the caller to end when the process exits
 * (registry_release_orphan()); one that is still up when its process
 * exits has its tokens ended by client_process_exited(). A connection
 * whose process could not be pinned ends its tokens with itself. An
 * explicit close ends the token at once. Nothing here knows about
 * sockets, event loops or JSON.
 */

#include <stdint.h>
#include <sys/queue.h>

#include "daemon/access.h"
#include "daemon/channel.h"
#include "daemon/holders.h"
#include "daemon/ledger.h"
#include "daemon/state.h"
#include "daemon/wake.h"

typedef struct Hold Hold;
typedef struct Entry Entry;

/* One connection as the registry sees it. Embedded in the connection. */
typedef struct Client {
        Peer peer;
        LIST_HEAD(, Hold) holds;
        size_t n_holds;         /* in holds: a hold is looked up along the shorter of its two lists */
        bool hung_up;           /* its peer closed both ends: no answer will be read */
        size_t fd_room;         /* descriptors its uid may still be handed (set before each request) */
        bool fd_room_all;       /* fd_room is what all clients together may still be handed, less than its uid's */
} Client;

struct Hold {
        Entry *entry;
        Client *client;
        ProtoAccess access;
        int64_t since;
        uint32_t token;                 /* in entry's holder table (subs for a subscriber); 0: none */
        unsigned opens;                 /* opens answered on it: the attachments it may have (never lowered) */
        bool subscriber;                /* a broadcast channel's ro hold: its token is in entry->subs */
        LIST_ENTRY(Hold) by_client;
        LIST_ENTRY(Hold) by_entry;
};

struct Entry {
        struct Registry *registry;
        Channel *channel;
        Holders holders;                /* of channel's segment, when it is a ring; a broadcast channel's publishers */
        Holders subs;                   /* a broadcast channel's subscribers */
        bool has_wake;                  /* a ring whose wake-up FIFOs exist (daemon/wake.h) */
        Ledger ledger;                  /* holders' and subs' entries; none when the channel has no table, or no state */
        LIST_HEAD(, Hold) holds;
        size_t n_holds;                 /* in holds (client_find_hold()) */
};

typedef struct Registry {
        Entry **entries;
        size_t n, cap;
        size_t n_holds;         /* over all channels */
        bool sorted;
        State *state;           /* not owned */
        Wake *wake;             /* not owned; NULL: rings get no wake-up FIFOs */
        int ledger_dir;         /* the holder ledgers' directory (daemon/ledger.h); -1: none, tables are believed */
        uint64_t last_cookie;   /* the last given to a watched orphan (holders_orphan()) */
} Registry;

/*
 * A token whose hold ended while its opener's process lives on. Named by
 * value, not by pointer: the channel may be removed or replaced before
 * the process exits.
 */
typedef struct OrphanRef {
        char channel[PROTO_NAME_MAX + 1];
        bool subscriber;                /* the token is in the subscriber table of a broadcast channel */
        uint32_t token;
        uint64_t cookie;
} OrphanRef;

/* What client_done() hands out: the process (pid as the connection saw it, and its pidfd) and its orphans. */
typedef struct ClientOrphans {
        pid_t pid;
        int pidfd;              /* owned; -1: none (and no refs) */
        OrphanRef *refs;        /* owned */
        size_t n;
} ClientOrphans;

#define CLIENT_ORPHANS_NULL ((ClientOrphans) { .pidfd = -1 })

/* Close the pidfd and free the refs; *o is CLIENT_ORPHANS_NULL after. */
void client_orphans_done(ClientOrphans *o);

int registry_new(State *state, Registry **ret);

/*
 * Mark every channel's ring or broadcast header removed (channel_mark_removed()),
 * before a stop drops the holds: a client that woke for its token's death
 * must read the channel removed, not itself dropped from a live one.
 */
void registry_mark_removed(Registry *r);

/* Remove every channel's kernel objects and free. Takes NULL; returns NULL. */
Registry *registry_free(Registry *r);

/*
 * Create spec's channel (keys in fixed are left to the channels that name
 * them) and register it; *ret, when given, is the new channel. Negative
 * errno with msg; then nothing was made. old (NULL: none): the files it
 * replaces, removed in every case (channel_create()).
 */
int registry_create(Registry *r, const ChannelSpec *spec, const uint32_t *fixed, size_t n_fixed, PosixObjects *old,
                    Channel **ret, char *msg, size_t msg_size);

/*
 * Register a channel taken over after a crash (channel_adopt()). A ring's
 * LIVE holders are its killed predecessor's openers: orphans, swept at
 * once (registry_sweep_orphans()). On success the registry owns c and
 * *ret_orphans, when given, says how many orphans are left; -ENOMEM, and
 * the caller still owns c.
 */
int registry_adopt(Registry *r, Channel *c, size_t *ret_orphans);

/*
 * Let go of the channels taken over at this start without removing them (a
 * start that fails): their objects and state records stay for the next start.
 */
void registry_forget_adopted(Registry *r);

/* How many of r's channels this run made (not taken over from the last). */
size_t registry_n_made(const Registry *r);

/*
 * Remove a channel: its holds are dropped, its kernel objects removed
 * (clients still attached keep their mapping until they detach).
 */
void registry_remove(Registry *r, Entry *e);

/*
 * Remove e and create spec's channel in its place, as registry_remove()
 * and registry_create() would, but a posix channel's names never free in
 * between (channel_replace()). Negative errno with msg: then e is removed
 * all the same and nothing is in its place.
 */
int registry_replace(Registry *r, Entry *e, const ChannelSpec *spec, const uint32_t *fixed, size_t n_fixed,
                     char *msg, size_t msg_size);

/*
 * Make sure e's objects still exist; when an admin removed them, drop the
 * holds and make the channel again under its key. Returns 0 (intact, or
 * remade: *ret_remade says which), or a negative errno with msg, in which
 * case the channel is gone from the registry and e is freed.
 */
int registry_repair(Registry *r, Entry *e, bool *ret_remade, char *msg, size_t msg_size);

/* NULL when there is no such channel. */
Entry *registry_find(Registry *r, const char *name);

/* The i'th channel in name order. */
Entry *registry_at(Registry *r, size_t i);

/*
 * Hold a channel for a client; holding it again updates the access. On a
 * ring, an rw hold without a token gets one: `want` (0: none) when it
 * names an orphan, a token the client held before a broker restart or
 * before its connection closed, else a new one; a ro hold takes back only
 * such an orphan. On a broadcast channel every hold gets a token the same
 * way: rw from the publisher table, ro from the subscriber table; a
 * subscriber's token is its place in the cursor table, so a connection
 * holds a broadcast channel as one subscriber or as publishers, never
 * both, and never as two subscribers: another open of it that would need
 * a second token is -EBUSY. The hold keeps its token until it ends. The
 * client's first token pins its process (cl->peer.pidfd, when one can be
 * had). *ret_token is the hold's token (0: none). -ENOMEM, -EBUSY, or
 * -EUSERS when the holder table is full; then nothing changed (no new
 * hold, an existing one as it was).
 */
int registry_hold(Entry *e, Client *cl, ProtoAccess access, uint32_t want, int64_t now, uint32_t *ret_token);

/* Drop the client's hold on e (an explicit close: its token ends at once): 0, or -ENOENT when it holds none. */
int registry_release(Entry *e, Client *cl);

/*
 * Judge the orphans of every adopted ring (holders_sweep()): those whose
 * opener is gone are marked dead. Returns how many orphans of a killed
 * run are left (watched ones are not counted: their process is watched).
 */
size_t registry_sweep_orphans(Registry *r);

/*
 * The process of ref's orphan exited: mark its token DEAD if ref still
 * names an orphan (the channel is there, and the token was neither taken
 * back nor ended since). Returns whether it did.
 */
bool registry_release_orphan(Registry *r, const OrphanRef *ref);

/* Whether ref still names an orphan (registry_release_orphan() would end it). */
bool registry_orphan_alive(Registry *r, const OrphanRef *ref);

void client_init(Client *cl);

/*
 * Drop every hold of the client (its connection is closing) and its peer
 * data. Where the client's process was pinned and still runs, and
 * ret_orphans is given, its tokens stay LIVE as watched orphans and
 * *ret_orphans takes them with the pidfd (n == 0 when there were none);
 * else (NULL, no pidfd, the process exited, or out of memory) they end
 * at once. Called again, it does nothing.
 */
void client_done(Client *cl, ClientOrphans *ret_orphans);

/*
 * The client's pinned process exited while the connection is still up (a
 * fork holds it open): end the tokens of its holds (the holds stay, with
 * tokens that are dead). Returns how many were live.
 */
size_t client_process_exited(Client *cl);

static inline size_t registry_count_holds(const Registry *r) {
        return r->n_holds;
}
