#pragma once

/*
 * The registry: every live channel by name, and the holds on it. A hold is
 * one connection's claim on one channel (connection x channel, as SPEC's
 * `clients` lists them); it ends when the client closes the channel or its
 * connection goes away. Nothing here knows about sockets or JSON.
 */

#include <stdint.h>
#include <sys/queue.h>

#include "daemon/access.h"
#include "daemon/channel.h"
#include "daemon/state.h"

typedef struct Hold Hold;
typedef struct Entry Entry;

/* One connection as the registry sees it. Embedded in the connection. */
typedef struct Client {
        Peer peer;
        LIST_HEAD(, Hold) holds;
} Client;

struct Hold {
        Entry *entry;
        Client *client;
        ProtoAccess access;
        int64_t since;
        LIST_ENTRY(Hold) by_client;
        LIST_ENTRY(Hold) by_entry;
};

struct Entry {
        struct Registry *registry;
        Channel *channel;
        LIST_HEAD(, Hold) holds;
};

typedef struct Registry {
        Entry **entries;
        size_t n, cap;
        size_t n_holds;         /* over all channels */
        bool sorted;
        State *state;           /* not owned */
} Registry;

int registry_new(State *state, Registry **ret);

/* Remove every channel's kernel objects and free. Takes NULL; returns NULL. */
Registry *registry_free(Registry *r);

/*
 * Create spec's channel (keys in fixed are left to the channels that name
 * them) and register it; *ret, when given, is the new channel. Negative
 * errno with msg; then nothing was made.
 */
int registry_create(Registry *r, const ChannelSpec *spec, const uint32_t *fixed, size_t n_fixed, Channel **ret,
                    char *msg, size_t msg_size);

/*
 * Register a channel taken over after a crash (channel_adopt()); the
 * registry owns it from now on, also on failure (-ENOMEM: the caller frees it).
 */
int registry_adopt(Registry *r, Channel *c);

/*
 * Let go of the channels taken over at this start without removing them (a
 * start that fails): their objects and state records stay for the next start.
 */
void registry_forget_adopted(Registry *r);

/*
 * Remove a channel: its holds are dropped, its kernel objects removed
 * (clients still attached keep their mapping until they detach).
 */
void registry_remove(Registry *r, Entry *e);

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

/* Hold a channel for a client; holding it again updates the access. -ENOMEM. */
int registry_hold(Entry *e, Client *cl, ProtoAccess access, int64_t now);

/* Drop the client's hold on e: 0, or -ENOENT when it holds none. */
int registry_release(Entry *e, Client *cl);

void client_init(Client *cl);
/* Drop every hold of the client (its connection is closing) and its peer data. */
void client_done(Client *cl);

static inline size_t registry_count_holds(const Registry *r) {
        return r->n_holds;
}
