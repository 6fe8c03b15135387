#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/ipc-stat.h"
#include "daemon/log.h"
#include "daemon/registry.h"
#include "daemon/self.h"
#include "proto/posix.h"

int registry_new(State *state, Registry **ret) {
        Registry *r = calloc(1, sizeof *r);

        if (!r)
                return -ENOMEM;
        r->state = state;
        r->sorted = true;
        r->ledger_dir = -1;
        if (state) {
                int fd = ledger_dir_open(state_dir_fd(state), state_name(state));

                if (fd < 0)
                        log_warning("Cannot keep ledgers of ring holders in %s.ledgers beside %s: %s; a restart after "
                                    "a crash will believe the holder tables in the segments.", state_name(state),
                                    state_path(state), strerror(-fd));
                r->ledger_dir = fd;
        }
        *ret = r;
        return 0;
}

/* The table h's token is in. */
static Holders *hold_holders(Hold *h) {
        return h->subscriber ? &h->entry->subs : &h->entry->holders;
}

static void hold_free(Hold *h) {
        /* Its claims on the ring may be repaired from now on; a subscriber no longer holds publishers back. */
        holders_release(hold_holders(h), h->token);
        LIST_REMOVE(h, by_client);
        LIST_REMOVE(h, by_entry);
        h->client->n_holds--;
        h->entry->n_holds--;
        h->entry->registry->n_holds--;
        free(h);
}

static void drop_holds(Entry *e) {
        while (!LIST_EMPTY(&e->holds))
                hold_free(LIST_FIRST(&e->holds));
}

static void entry_done_holders(Entry *e) {
        holders_done(&e->holders);
        holders_done(&e->subs);
}

/* The entry's ledger: its file too when remove (the channel is gone), else kept for the next start. */
static void entry_done_ledger(Registry *r, Entry *e, bool remove) {
        if (remove)
                ledger_remove(r->ledger_dir, &e->ledger);
        else
                ledger_close(&e->ledger);
}

/* The entry's holds and itself: its channel, kernel objects and all, is handed back. */
static Channel *entry_release(Registry *r, Entry *e) {
        Channel *c = e->channel;

        /*
         * REMOVED first: dropping the holds and removing the FIFOs wake
         * waiters in event loops, and one that then read the ring as live
         * would arm again, for a FIFO that nobody will ever write.
         */
        channel_mark_removed(c);
        drop_holds(e);
        /* After its holds: their DEAD marks signal the FIFOs, which must not come back. */
        if (e->has_wake && c)
                wake_remove(r->wake, c->spec.name);
        entry_done_holders(e);
        entry_done_ledger(r, e, true);
        free(e);
        return c;
}

/* The entry's holds, its kernel objects, and itself. */
static void entry_free(Registry *r, Entry *e) {
        channel_free(entry_release(r, e), r->state);
}

void registry_mark_removed(Registry *r) {
        for (size_t i = 0; r && i < r->n; i++)
                channel_mark_removed(r->entries[i]->channel);
}

Registry *registry_free(Registry *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n; i++)
                entry_free(r, r->entries[i]);
        free(r->entries);
        if (r->ledger_dir >= 0)
                close(r->ledger_dir);
        free(r);
        return NULL;
}

/*
 * The entries of e's holder tables, kept in a ledger (daemon/ledger.h):
 * a fresh channel's, as its segment has them; an adopted one's as the
 * killed run's ledger has them, written back into the segment. Without
 * that ledger (a run before ledgers, or one not to be believed), or
 * without a ledger directory, the segment's tables are believed. 0,
 * -ENOMEM, or the error that kept a killed run's ledger from being read:
 * then the channel is not to be taken over.
 */
static int entry_init_holders(Registry *r, Entry *e, bool adopted) {
        Channel *c = e->channel;
        bool ring = c->spec.layout == PROTO_LAYOUT_RING, bcast = c->spec.layout == PROTO_LAYOUT_BROADCAST;
        uint32_t n = ring ? RING_HOLDERS : bcast ? BCAST_PUBLISHERS + c->spec.subscribers : 0;
        RingHolder *pubs = NULL, *subs = NULL;
        bool from_ledger = false;
        int k;

        holders_done(&e->subs);
        /* A remade channel's old ledger names holders of objects that are gone. */
        entry_done_ledger(r, e, false);
        if (n > 0 && r->ledger_dir >= 0 && adopted) {
                k = ledger_take_over(r->ledger_dir, c->spec.name, n, &e->ledger);
                /* Neither believed nor disproved: the table is not to be believed instead. The channel is made anew. */
                if (k < 0 && k != -ENOENT) {
                        log_warning("Channel %s: cannot read the killed run's ledger of its holders: %s.", c->spec.name,
                                    strerror(-k));
                        return k;
                }
                if (k < 0)
                        log_notice("Channel %s: the killed run left no ledger of its holders; believing the table "
                                   "in its segment.", c->spec.name);
                from_ledger = k == 0;
        }
        if (n > 0 && r->ledger_dir >= 0 && !from_ledger) {
                k = ledger_make(r->ledger_dir, c->spec.name, n, &e->ledger);
                if (k < 0)
                        log_warning("Channel %s: cannot keep a ledger of its holders: %s; "
                                    "a restart after a crash will believe the table in its segment.", c->spec.name,
                                    strerror(-k));
        }
        if (e->ledger.addr) {
                pubs = e->ledger.entries;
                subs = pubs + (bcast ? BCAST_PUBLISHERS : 0);
        }
        if (ring)
                k = holders_init(&e->holders, c->addr, pubs, from_ledger);
        else if (bcast) {
                k = holders_init_table(&e->holders, bcast_publisher_at(c->addr, 0), BCAST_PUBLISHERS, pubs,
                                       from_ledger);
                if (k >= 0)
                        k = holders_init_table(&e->subs, bcast_subscriber_at(c->addr, 0), c->spec.subscribers, subs,
                                               from_ledger);
        } else if (c->spec.kind == PROTO_KIND_POSIX && c->posix.nsems > 0)
                /*
                 * A raw posix channel's lock tokens (proto/posix.h): their table is a file
                 * of the daemon's own, which no client can write, so it needs no ledger.
                 */
                k = holders_init_table(&e->holders, c->posix.table.addr, PSEM_HOLDERS, NULL, false);
        else {
                holders_done(&e->holders);
                k = 0;
        }
        /* Filled in: a next start may go by it. */
        if (k >= 0)
                ledger_seal(&e->ledger);
        /* A posix channel's lockers behind a dead token take the lock over: wake them when one dies. */
        if (k >= 0 && c->spec.kind == PROTO_KIND_POSIX)
                e->holders.posix = &c->posix;
        return k;
}

/*
 * A ring's holder table and wake-up FIFOs, for a new entry or a remade
 * channel. keep: adopted, so its FIFOs (which waiters hold open) stay.
 * Without FIFOs the ring still works; only shmb_channel_fd() does not.
 */
static int entry_init_ring(Registry *r, Entry *e, bool keep) {
        const ChannelSpec *s = &e->channel->spec;
        bool ring = s->layout == PROTO_LAYOUT_RING, bcast = s->layout == PROTO_LAYOUT_BROADCAST;
        int k;

        /* On failure the FIFOs that exist stay the entry's: entry_free() removes them. */
        k = entry_init_holders(r, e, keep);
        if (k < 0)
                return k;
        e->has_wake = false;
        if ((!ring && !bcast) || !r->wake)
                return 0;
        k = wake_make(r->wake, s, keep);
        if (k < 0) {
                log_warning("Channel %s: cannot make its wake-up FIFOs: %s; waiting for it in an event loop "
                            "will not work.", s->name, strerror(-k));
                return 0;
        }
        e->has_wake = true;
        e->holders.wake = e->subs.wake = r->wake;
        e->holders.name = e->subs.name = s->name;
        return 0;
}

static int registry_add(Registry *r, Channel *c, bool adopted, Entry **ret) {
        Entry *e;
        int k;

        if (r->n == r->cap) {
                size_t cap = r->cap ? r->cap * 2 : 16;
                Entry **v = reallocarray(r->entries, cap, sizeof *v);

                if (!v)
                        return -ENOMEM;
                r->entries = v;
                r->cap = cap;
        }
        e = calloc(1, sizeof *e);
        if (!e)
                return -ENOMEM;
        e->registry = r;
        e->channel = c;
        LIST_INIT(&e->holds);
        k = entry_init_ring(r, e, adopted);
        if (k < 0) {
                entry_done_holders(e);
                entry_done_ledger(r, e, !adopted);
                free(e);
                return k;
        }
        r->entries[r->n++] = e;
        /* Sorted lazily: adding N channels at start stays O(N log N). */
        r->sorted = false;
        if (ret)
                *ret = e;
        return 0;
}

int registry_adopt(Registry *r, Channel *c, size_t *ret_orphans) {
        Entry *e;
        int k;

        k = registry_add(r, c, true, &e);
        if (k < 0)
                return k;
        if (holders_adopt(&e->holders) > 0)
                (void) holders_sweep(&e->holders, c->spec.name);
        if (holders_adopt(&e->subs) > 0)
                (void) holders_sweep(&e->subs, c->spec.name);
        /*
         * The killed run may have died between marking a holder dead and waking
         * the sleepers behind its claims: an entry dead already is never marked
         * again, so wake them now.
         */
        holders_wake_waiters(&e->holders);
        if (ret_orphans)
                *ret_orphans = e->holders.n_orphans + e->subs.n_orphans;
        return 0;
}

/* Register c, just made; on failure it is removed again. */
static int registry_add_made(Registry *r, const ChannelSpec *spec, Channel *c, Channel **ret, char *msg,
                             size_t msg_size) {
        int k = registry_add(r, c, false, NULL);

        if (k < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot register it: %s", spec->name, strerror(-k));
                channel_free(c, r->state);
                return k;
        }
        /*
         * Derived keys cannot be computed without the secret: an object of
         * our user's at one is a leftover of a run whose state file was lost,
         * whose holders no longer meet the channel's new clients. Another
         * user's took a key that list and status showed (a squat).
         */
        if (c->first_held_key != 0) {
                int id = shmget((key_t) c->first_held_key, 0, 0);
                struct shmid_ds ds;
                bool seen = id >= 0 && ipc_stat_shm(id, &ds) == 0;

                if (seen && ds.shm_perm.cuid != self_euid())
                        log_warning("Channel %s: its key 0x%08" PRIx32 " is held by segment %d of another user "
                                    "(creator uid %u, pid %d), who may have read the key from list or status; made "
                                    "the channel at key 0x%08" PRIx32 " instead.", spec->name, c->first_held_key, id,
                                    (unsigned) ds.shm_perm.cuid, (int) ds.shm_cpid, c->key);
                else if (seen)
                        log_warning("Channel %s: its key 0x%08" PRIx32 " is held by segment %d (creator uid %u, pid "
                                    "%d), which this daemon cannot prove its own; made the channel at key 0x%08"
                                    PRIx32 " instead. A leftover of a run whose state file was lost: remove it with "
                                    "ipcrm once its users are gone.", spec->name, c->first_held_key, id,
                                    (unsigned) ds.shm_perm.cuid, (int) ds.shm_cpid, c->key);
                else
                        log_warning("Channel %s: its key 0x%08" PRIx32 " is held by an object this daemon cannot "
                                    "prove its own (ipcs -k); made the channel at key 0x%08" PRIx32 " instead.",
                                    spec->name, c->first_held_key, c->key);
        }
        if (ret)
                *ret = c;
        return 0;
}

int registry_create(Registry *r, const ChannelSpec *spec, const uint32_t *fixed, size_t n_fixed, PosixObjects *old,
                    Channel **ret, char *msg, size_t msg_size) {
        Channel *c;
        int k;

        k = channel_create(spec, fixed, n_fixed, r->state, old, &c, msg, msg_size);
        return k < 0 ? k : registry_add_made(r, spec, c, ret, msg, msg_size);
}

/* Take e out of the array, keeping the order (a sorted registry stays sorted). */
static void entries_drop(Registry *r, Entry *e) {
        for (size_t i = 0; i < r->n; i++)
                if (r->entries[i] == e) {
                        memmove(&r->entries[i], &r->entries[i + 1], (r->n - i - 1) * sizeof *r->entries);
                        r->n--;
                        return;
                }
}

void registry_forget_adopted(Registry *r) {
        for (size_t i = r->n; i-- > 0;) {
                Entry *e = r->entries[i];

                if (!e->channel->adopted)
                        continue;
                entries_drop(r, e);
                /* None yet (nobody was served), so no token goes DEAD: the next start judges the table. */
                drop_holds(e);
                channel_forget(e->channel);
                entry_done_holders(e);
                /* Kept with the channel, for the next start to take over. */
                entry_done_ledger(r, e, false);
                free(e);
        }
}

size_t registry_n_made(const Registry *r) {
        size_t n = 0;

        for (size_t i = 0; i < r->n; i++)
                n += !r->entries[i]->channel->adopted;
        return n;
}

void registry_remove(Registry *r, Entry *e) {
        entries_drop(r, e);
        entry_free(r, e);
}

int registry_replace(Registry *r, Entry *e, const ChannelSpec *spec, const uint32_t *fixed, size_t n_fixed,
                     char *msg, size_t msg_size) {
        Channel *c;
        int k;

        entries_drop(r, e);
        k = channel_replace(entry_release(r, e), spec, fixed, n_fixed, r->state, &c, msg, msg_size);
        return k < 0 ? k : registry_add_made(r, spec, c, NULL, msg, msg_size);
}

int registry_repair(Registry *r, Entry *e, bool *ret_remade, char *msg, size_t msg_size) {
        char name[sizeof e->channel->spec.name];
        int k;

        *ret_remade = false;
        k = channel_check(e->channel);
        if (k != -EIDRM)
                return 0;       /* intact, or cannot tell (e.g. EACCES): leave it be */
        /* Holders were attached to objects that are gone; their holds go too (REMOVED first, see entry_free()). */
        channel_mark_removed(e->channel);
        drop_holds(e);
        strcpy(name, e->channel->spec.name);
        k = channel_remake(&e->channel, r->state, msg, msg_size);
        if (k < 0) {
                /* Nothing left to serve: forget the entry (its channel is already freed), FIFOs too. */
                if (e->has_wake)
                        wake_remove(r->wake, name);
                e->has_wake = false;
                registry_remove(r, e);
                return k;
        }
        /* A new segment, a fresh table (the old one's tokens went with its holds), fresh FIFOs. */
        k = entry_init_ring(r, e, false);
        if (k < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot keep its holder table: %s", e->channel->spec.name,
                        strerror(-k));
                registry_remove(r, e);
                return k;
        }
        *ret_remade = true;
        return 0;
}

static int cmp_entry(const void *a, const void *b) {
        return strcmp((*(Entry *const *) a)->channel->spec.name, (*(Entry *const *) b)->channel->spec.name);
}

static void ensure_sorted(Registry *r) {
        if (!r->sorted) {
                qsort(r->entries, r->n, sizeof *r->entries, cmp_entry);
                r->sorted = true;
        }
}

static int cmp_name_entry(const void *key, const void *elem) {
        return strcmp(key, (*(Entry *const *) elem)->channel->spec.name);
}

Entry *registry_find(Registry *r, const char *name) {
        Entry **p;

        /* bsearch() may not take a NULL array, even of no elements. */
        if (r->n == 0)
                return NULL;
        ensure_sorted(r);
        p = bsearch(name, r->entries, r->n, sizeof *r->entries, cmp_name_entry);
        return p ? *p : NULL;
}

Entry *registry_at(Registry *r, size_t i) {
        ensure_sorted(r);
        return i < r->n ? r->entries[i] : NULL;
}

/*
 * Along the shorter list: a client that opens thousands of channels walked
 * all its holds per open and close (O(n^2) for n channels), and walking the
 * channel's instead would do the same for thousands of clients of one channel.
 */
static Hold *client_find_hold(Client *cl, Entry *e) {
        Hold *h;

        if (cl->n_holds <= e->n_holds) {
                LIST_FOREACH(h, &cl->holds, by_client)
                        if (h->entry == e)
                                return h;
        } else {
                LIST_FOREACH(h, &e->holds, by_entry)
                        if (h->client == cl)
                                return h;
        }
        return NULL;
}

/*
 * A broadcast hold's token says what it is: a subscriber's is its cursor,
 * so another open on the same connection may share the token only as
 * another publisher (or when it asks for this very token).
 */
static int hold_check_broadcast(const Hold *h, ProtoAccess access, uint32_t want) {
        if (h->token == 0)
                return 0;
        if (!h->subscriber && access == PROTO_ACCESS_RW)
                return 0;
        if (h->subscriber && access == PROTO_ACCESS_RO && want == h->token)
                return 0;
        return -EBUSY;
}

/* Give h the token it needs for access, unless it has one already (holders.h). */
static int hold_take_token(Hold *h, ProtoAccess access, uint32_t want) {
        bool broadcast = h->entry->channel->spec.layout == PROTO_LAYOUT_BROADCAST;
        bool subscriber = broadcast && access == PROTO_ACCESS_RO;
        Holders *hs = subscriber ? &h->entry->subs : &h->entry->holders;
        Peer *peer = &h->client->peer;
        int k;

        if (broadcast) {
                k = hold_check_broadcast(h, access, want);
                if (k < 0)
                        return k;
        }
        if (h->token != 0 || !holders_is_ring(hs) || (!broadcast && access != PROTO_ACCESS_RW && want == 0))
                return 0;
        /*
         * The token lives as long as the process: learn when that ends (without a
         * pidfd, as long as the connection). First, as the pidfd also names the
         * process in the table cheaply (proc-id.h).
         */
        (void) peer_pin_process(peer);
        if (access == PROTO_ACCESS_RW || broadcast)
                k = holders_take(hs, peer->pid, peer->pidfd, want, &h->token);
        else
                k = holders_take_back(hs, peer->pid, peer->pidfd, want, &h->token);
        if (k == 0)
                h->subscriber = subscriber;
        return k == -ENOENT ? 0 : k;
}

int registry_hold(Entry *e, Client *cl, ProtoAccess access, uint32_t want, int64_t now, uint32_t *ret_token) {
        _cleanup_(freep) Hold *fresh = NULL;
        Hold *h = client_find_hold(cl, e);
        int k;

        if (!h) {
                fresh = calloc(1, sizeof *fresh);
                if (!fresh)
                        return -ENOMEM;
                *fresh = (Hold) { .entry = e, .client = cl, .since = now };
                h = fresh;
        }
        k = hold_take_token(h, access, want);
        if (k < 0)
                return k;
        /*
         * Never lowered: a read-write mapping handed out for this hold cannot
         * be taken back, so a reload must judge the hold by it until it ends.
         */
        if (fresh || access == PROTO_ACCESS_RW)
                h->access = access;
        /* Each open may attach once more, and only the last close of the name is told: never lowered either. */
        if (h->opens < UINT_MAX)
                h->opens++;
        if (fresh) {
                LIST_INSERT_HEAD(&cl->holds, h, by_client);
                LIST_INSERT_HEAD(&e->holds, h, by_entry);
                cl->n_holds++;
                e->n_holds++;
                e->registry->n_holds++;
                fresh = NULL;
        }
        *ret_token = h->token;
        return 0;
}

int registry_release(Entry *e, Client *cl) {
        Hold *h = client_find_hold(cl, e);

        if (!h)
                return -ENOENT;
        hold_free(h);
        return 0;
}

size_t registry_sweep_orphans(Registry *r) {
        size_t left = 0;

        for (size_t i = 0; i < r->n; i++) {
                Entry *e = r->entries[i];

                if (e->holders.n_orphans > 0)
                        left += holders_sweep(&e->holders, e->channel->spec.name);
                if (e->subs.n_orphans > 0)
                        left += holders_sweep(&e->subs, e->channel->spec.name);
        }
        return left;
}

static bool orphan_ref_lookup(Registry *r, const OrphanRef *ref, Holders **ret) {
        Entry *e = registry_find(r, ref->channel);
        Holders *hs = !e ? NULL : ref->subscriber ? &e->subs : &e->holders;

        if (!hs || !holders_is_orphan(hs, ref->token, ref->cookie))
                return false;
        *ret = hs;
        return true;
}

bool registry_release_orphan(Registry *r, const OrphanRef *ref) {
        Holders *hs;

        return orphan_ref_lookup(r, ref, &hs) && holders_release_orphan(hs, ref->token, ref->cookie);
}

bool registry_orphan_alive(Registry *r, const OrphanRef *ref) {
        Holders *hs;

        return orphan_ref_lookup(r, ref, &hs);
}

void client_orphans_done(ClientOrphans *o) {
        if (o->pidfd >= 0)
                close(o->pidfd);
        free(o->refs);
        *o = CLIENT_ORPHANS_NULL;
}

void client_init(Client *cl) {
        *cl = (Client) { .peer.pidfd = -1 };
        LIST_INIT(&cl->holds);
}

/* Room for an orphan ref per token the client holds; NULL when it holds none, or memory ran out. */
static OrphanRef *client_alloc_refs(const Client *cl) {
        const Hold *h;
        size_t n = 0;

        LIST_FOREACH(h, &cl->holds, by_client)
                if (h->token != 0)
                        n++;
        return n > 0 ? calloc(n, sizeof(OrphanRef)) : NULL;
}

static bool client_has_tokens(const Client *cl) {
        const Hold *h;

        LIST_FOREACH(h, &cl->holds, by_client)
                if (h->token != 0)
                        return true;
        return false;
}

void client_done(Client *cl, ClientOrphans *ret_orphans) {
        _cleanup_(freep) OrphanRef *refs = NULL;
        size_t n = 0;

        if (ret_orphans)
                *ret_orphans = CLIENT_ORPHANS_NULL;
        /* An exited process (a zombie is one) or one we cannot tell about: its tokens end with the connection. */
        if (ret_orphans && client_has_tokens(cl) && cl->peer.pidfd >= 0 && pidfd_exited(cl->peer.pidfd) == 0)
                refs = client_alloc_refs(cl);
        while (!LIST_EMPTY(&cl->holds)) {
                Hold *h = LIST_FIRST(&cl->holds);
                Registry *r = h->entry->registry;
                uint64_t cookie = r->last_cookie + 1;

                if (refs && h->token != 0 && holders_orphan(hold_holders(h), h->token, cookie) == 0) {
                        r->last_cookie = cookie;
                        refs[n] = (OrphanRef) { .token = h->token, .cookie = cookie, .subscriber = h->subscriber };
                        strcpy(refs[n].channel, h->entry->channel->spec.name);
                        n++;
                        h->token = 0;   /* an orphan now: not released with its hold */
                }
                hold_free(h);
        }
        if (n > 0) {
                *ret_orphans = (ClientOrphans) { .pid = cl->peer.pid, .pidfd = TAKE_FD(cl->peer.pidfd),
                                                 .refs = TAKE_PTR(refs), .n = n };
        }
        peer_done(&cl->peer);
}

size_t client_process_exited(Client *cl) {
        size_t n = 0;
        Hold *h;

        LIST_FOREACH(h, &cl->holds, by_client)
                if (h->token != 0 && !holders_token_dead(hold_holders(h), h->token)) {
                        holders_release(hold_holders(h), h->token);
                        n++;
                }
        return n;
}
