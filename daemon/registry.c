#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/registry.h"

int registry_new(State *state, Registry **ret) {
        Registry *r = calloc(1, sizeof *r);

        if (!r)
                return -ENOMEM;
        r->state = state;
        r->sorted = true;
        *ret = r;
        return 0;
}

static void hold_free(Hold *h) {
        LIST_REMOVE(h, by_client);
        LIST_REMOVE(h, by_entry);
        h->entry->registry->n_holds--;
        free(h);
}

static void drop_holds(Entry *e) {
        while (!LIST_EMPTY(&e->holds))
                hold_free(LIST_FIRST(&e->holds));
}

/* The entry's holds, its kernel objects, and itself. */
static void entry_free(Registry *r, Entry *e) {
        drop_holds(e);
        channel_free(e->channel, r->state);
        free(e);
}

Registry *registry_free(Registry *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n; i++)
                entry_free(r, r->entries[i]);
        free(r->entries);
        free(r);
        return NULL;
}

static int registry_add(Registry *r, Channel *c) {
        Entry *e;

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
        r->entries[r->n++] = e;
        /* Sorted lazily: adding N channels at start stays O(N log N). */
        r->sorted = false;
        return 0;
}

int registry_adopt(Registry *r, Channel *c) {
        return registry_add(r, c);
}

int registry_create(Registry *r, const ChannelSpec *spec, const uint32_t *fixed, size_t n_fixed, Channel **ret,
                    char *msg, size_t msg_size) {
        Channel *c;
        int k;

        k = channel_create(spec, fixed, n_fixed, r->state, &c, msg, msg_size);
        if (k < 0)
                return k;
        k = registry_add(r, c);
        if (k < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot register it: %s", spec->name, strerror(-k));
                channel_free(c, r->state);
                return k;
        }
        if (ret)
                *ret = c;
        return 0;
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
                drop_holds(e);
                channel_forget(e->channel);
                free(e);
        }
}

void registry_remove(Registry *r, Entry *e) {
        entries_drop(r, e);
        entry_free(r, e);
}

int registry_repair(Registry *r, Entry *e, bool *ret_remade, char *msg, size_t msg_size) {
        int k;

        *ret_remade = false;
        k = channel_check(e->channel);
        if (k != -EIDRM)
                return 0;       /* intact, or cannot tell (e.g. EACCES): leave it be */
        /* Holders were attached to objects that are gone; their holds go too. */
        drop_holds(e);
        k = channel_remake(&e->channel, r->state, msg, msg_size);
        if (k < 0) {
                /* Nothing left to serve: forget the entry (its channel is already freed). */
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

int registry_hold(Entry *e, Client *cl, ProtoAccess access, int64_t now) {
        Hold *h;

        LIST_FOREACH(h, &cl->holds, by_client)
                if (h->entry == e) {
                        h->access = access;
                        return 0;
                }
        h = calloc(1, sizeof *h);
        if (!h)
                return -ENOMEM;
        *h = (Hold) { .entry = e, .client = cl, .access = access, .since = now };
        LIST_INSERT_HEAD(&cl->holds, h, by_client);
        LIST_INSERT_HEAD(&e->holds, h, by_entry);
        e->registry->n_holds++;
        return 0;
}

int registry_release(Entry *e, Client *cl) {
        Hold *h;

        LIST_FOREACH(h, &cl->holds, by_client)
                if (h->entry == e) {
                        hold_free(h);
                        return 0;
                }
        return -ENOENT;
}

void client_init(Client *cl) {
        *cl = (Client) {};
        LIST_INIT(&cl->holds);
}

void client_done(Client *cl) {
        while (!LIST_EMPTY(&cl->holds))
                hold_free(LIST_FIRST(&cl->holds));
        peer_done(&cl->peer);
}
