#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/adopt.h"
#include "daemon/channel.h"
#include "daemon/log.h"
#include "daemon/reclaim.h"

/* Whether key is the one a fresh start could give this channel. */
static bool key_fits(const Config *cfg, const ChannelSpec *spec, const uint8_t *secret, uint32_t key) {
        if (spec->has_key)
                return spec->key == key;
        /* A key the file now fixes for a channel is one a fresh start would skip. */
        if (config_key_is_fixed(cfg, key))
                return false;
        for (unsigned i = 0; i < CHANNEL_DERIVED_KEY_ATTEMPTS; i++)
                if (channel_derive_key(secret, spec->name, i) == key)
                        return true;
        return false;
}

/*
 * The records adoption looks up, sorted once: a crash restart of n channels
 * looked each one's segment and set up by a linear search of every record,
 * and each posix channel's files by a scan of them all: O(n^2), minutes for
 * tens of thousands of channels. Ties keep the records' order, so a lookup
 * finds the same record as that scan did.
 */
typedef struct Index {
        StateRecord *v;
        size_t *objs;           /* live STATE_SHM/STATE_SEM records, by kind, key, id, position */
        size_t n_objs;
        size_t *posix;          /* STATE_POSIX records that are not intents, by name, position */
        size_t n_posix;
        bool *taken;            /* per config channel: adopted already (a second record of its name is not) */
} Index;

#define CMP(a, b) ((a) < (b) ? -1 : (a) > (b) ? 1 : 0)

/* qsort_r() comparators of record positions; v: the records. */
static int cmp_obj(const void *a, const void *b, void *v) {
        const StateRecord *x = (StateRecord *) v + *(const size_t *) a, *y = (StateRecord *) v + *(const size_t *) b;

        if (x->kind != y->kind)
                return x->kind < y->kind ? -1 : 1;
        if (x->key != y->key)
                return x->key < y->key ? -1 : 1;
        if (x->id != y->id)
                return x->id < y->id ? -1 : 1;
        return CMP(*(const size_t *) a, *(const size_t *) b);
}

static int cmp_posix(const void *a, const void *b, void *v) {
        int k = strcmp(((StateRecord *) v)[*(const size_t *) a].name, ((StateRecord *) v)[*(const size_t *) b].name);

        return k != 0 ? k : CMP(*(const size_t *) a, *(const size_t *) b);
}

static void index_done(Index *ix) {
        free(ix->objs);
        free(ix->posix);
        free(ix->taken);
}

/* 0, or -ENOMEM. */
static int index_make(Index *ix, StateRecord *v, size_t n, size_t n_channels) {
        *ix = (Index) { .v = v };
        ix->objs = calloc(n ?: 1, sizeof *ix->objs);
        ix->posix = calloc(n ?: 1, sizeof *ix->posix);
        ix->taken = calloc(n_channels ?: 1, sizeof *ix->taken);
        if (!ix->objs || !ix->posix || !ix->taken) {
                index_done(ix);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                if ((v[i].kind == STATE_SHM || v[i].kind == STATE_SEM) && !v[i].pending && !v[i].legacy)
                        ix->objs[ix->n_objs++] = i;
                if (v[i].kind == STATE_POSIX && !v[i].pending)
                        ix->posix[ix->n_posix++] = i;
        }
        qsort_r(ix->objs, ix->n_objs, sizeof *ix->objs, cmp_obj, v);
        qsort_r(ix->posix, ix->n_posix, sizeof *ix->posix, cmp_posix, v);
        return 0;
}

/* The first of sorted[0..n) whose record less() does not put before the key. */
static size_t lower_bound(const Index *ix, const size_t *sorted, size_t n, bool (*less)(const StateRecord *r,
                          const void *key), const void *key) {
        size_t lo = 0, hi = n;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (less(&ix->v[sorted[mid]], key))
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

typedef struct ObjKey {
        StateKind kind;
        uint32_t key;
        int id;
} ObjKey;

static bool obj_less(const StateRecord *r, const void *key) {
        const ObjKey *k = key;

        if (r->kind != k->kind)
                return r->kind < k->kind;
        if (r->key != k->key)
                return r->key < k->key;
        return r->id < k->id;
}

static bool posix_less(const StateRecord *r, const void *key) {
        return strcmp(r->name, key) < 0;
}

/* The live record of an object: kind, key and id (the first in the file not adopted yet). */
static StateRecord *find_object(const Index *ix, StateKind kind, uint32_t key, int id) {
        ObjKey k = { kind, key, id };

        for (size_t i = lower_bound(ix, ix->objs, ix->n_objs, obj_less, &k); i < ix->n_objs; i++) {
                StateRecord *r = &ix->v[ix->objs[i]];

                if (r->kind != kind || r->key != key || r->id != id)
                        break;
                if (!r->adopted)
                        return r;
        }
        return NULL;
}

/* The posix file records under channel name: [*ret_first, return value) of ix->posix, in the file's order. */
static size_t posix_range(const Index *ix, const char *name, size_t *ret_first) {
        size_t i = lower_bound(ix, ix->posix, ix->n_posix, posix_less, name);

        *ret_first = i;
        while (i < ix->n_posix && streq(ix->v[ix->posix[i]].name, name))
                i++;
        return i;
}

/*
 * A posix channel: its files' records (STATE_POSIX under its name), which
 * posix_objects_adopt() proves by inode, owner and type at their names.
 */
static int adopt_posix(Registry *reg, const ChannelSpec *spec, const Index *ix, StateRecord *chan) {
        _cleanup_(freep) StateRecord *recs = NULL;
        size_t k = 0, orphans, first, end = posix_range(ix, spec->name, &first);
        Channel *c;
        char msg[512];
        int r;

        recs = calloc(end - first ?: 1, sizeof *recs);
        if (!recs)
                return 0;
        for (size_t i = first; i < end; i++)
                if (!ix->v[ix->posix[i]].adopted)
                        recs[k++] = ix->v[ix->posix[i]];
        r = channel_adopt_posix(spec, recs, k, reg->state, &c, msg, sizeof msg);
        if (r < 0) {
                log_warning("Cannot take over %s; making it anew.", msg);
                return 0;
        }
        if (registry_adopt(reg, c, &orphans) < 0) {
                channel_forget(c);
                return 0;
        }
        /* Only the files it took: another record under this name (a leftover) is reclaim's. */
        for (size_t i = first; i < end; i++) {
                StateRecord *rec = &ix->v[ix->posix[i]];
                PosixFile *f = rec->id == POSIX_ROLE_SEGMENT ? &c->posix.shm :
                               rec->id == POSIX_ROLE_TABLE ? &c->posix.table :
                               (unsigned) rec->id < c->posix.nsems ? &c->posix.sems[rec->id] : NULL;

                if (!rec->adopted && f && f->fd >= 0 && (uint64_t) f->dev == rec->dev &&
                    (uint64_t) f->ino == rec->ino)
                        rec->adopted = true;
        }
        chan->adopted = true;
        log_notice("Took over channel %s from the previous run: %s and its %u semaphore file(s).", spec->name,
                   c->posix.shm_name, c->posix.nsems);
        if (orphans > 0)
                log_info("Channel %s: %zu holder(s) of the previous run still live; keeping them until they open "
                         "the channel again or exit.", spec->name, orphans);
        return 1;
}

/* 1 adopted, 0 not (logged why, where it is worth saying). */
static int adopt_one(Registry *reg, const Config *cfg, const uint8_t *secret, Index *ix, StateRecord *chan) {
        const ChannelSpec *spec;
        StateRecord *shm, *sem, *table = NULL;
        size_t orphans;
        Channel *c;
        char msg[256];
        int k, r;

        k = config_find_channel(cfg, chan->name);
        /*
         * Dropped from the config meanwhile: reclaim removes it. Taken already:
         * asked of the table, not of the registry, which each adoption leaves
         * unsorted, so that asking it re-sorted all of it per channel.
         */
        if (k < 0 || ix->taken[k])
                return 0;
        spec = &cfg->channels[k];
        if (spec->kind == PROTO_KIND_POSIX) {
                if (channel_spec_fingerprint(spec) != chan->fingerprint) {
                        log_info("Channel %s changed in the config since the last run; making it anew.", spec->name);
                        return 0;
                }
                r = adopt_posix(reg, spec, ix, chan);
                ix->taken[k] = r == 1;
                return r;
        }
        shm = find_object(ix, STATE_SHM, chan->key, chan->id);
        sem = find_object(ix, STATE_SEM, chan->key, chan->sem_id);
        if (!shm || !sem)
                return 0;
        /* First: a replaced ftok file changes the key (and so the digest), not the config's text. */
        if (!key_fits(cfg, spec, secret, chan->key)) {
                char key[300];

                log_info("Channel %s: its key is %s now, not 0x%08" PRIx32 " as in the last run; making it anew.",
                         spec->name, spec->has_key ? config_key_name(spec, spec->key, key, sizeof key) :
                         "another one (the last run's is fixed for another channel now)", chan->key);
                return 0;
        }
        if (channel_spec_fingerprint(spec) != chan->fingerprint) {
                log_info("Channel %s changed in the config since the last run; making it anew.", spec->name);
                return 0;
        }
        r = reclaim_prove(shm, false);
        if (r == 1)
                r = reclaim_prove(sem, true);
        if (r != 1) {
                if (r != -ENOENT)
                        log_warning("Channel %s: the objects recorded for it (shm id %d, sem id %d) are not provably "
                                    "the last run's; making it anew.", spec->name, shm->id, sem->id);
                return 0;
        }
        /* A broadcast channel's second segment: the one its header names, recorded and proven as ours too. */
        if (spec->layout == PROTO_LAYOUT_BROADCAST) {
                uint32_t table_key;
                int table_id;

                /*
                 * The header is the publishers' to write: its table key is taken only
                 * if it is one this channel's table could have had (derived from its
                 * name), never another channel's segment that a publisher named.
                 */
                if (channel_table_of(shm, &table_key, &table_id) < 0 ||
                    config_key_is_fixed(cfg, table_key) || !channel_table_key_fits(secret, spec->name, table_key) ||
                    !(table = find_object(ix, STATE_SHM, table_key, table_id)) || table == shm ||
                    reclaim_prove(table, false) != 1) {
                        log_warning("Channel %s: its subscriber table segment is not provably the last run's; "
                                    "making it anew.", spec->name);
                        return 0;
                }
        }
        r = channel_adopt(spec, shm, sem, table, &c, msg, sizeof msg);
        if (r < 0) {
                log_warning("Cannot take over %s; making it anew.", msg);
                return 0;
        }
        if (registry_adopt(reg, c, &orphans) < 0) {
                /* Not registered: detach and forget it; reclaim removes the objects. */
                channel_forget(c);
                return 0;
        }
        chan->adopted = shm->adopted = sem->adopted = ix->taken[k] = true;
        if (table)
                table->adopted = true;
        log_notice("Took over channel %s from the previous run (pid %d): key 0x%08x, shm id %d, sem id %d.",
                   spec->name, (int) shm->pid, chan->key, shm->id, sem->id);
        if (orphans > 0)
                log_info("Channel %s: %zu holder(s) of the previous run still live; keeping them until they open "
                         "the channel again or exit.", spec->name, orphans);
        return 1;
}

size_t adopt_channels(Registry *reg, const Config *cfg, const uint8_t *secret, StateRecord *v, size_t n) {
        size_t adopted = 0;
        Index ix;

        if (index_make(&ix, v, n, cfg->n_channels) < 0) {
                log_warning("Out of memory: taking over no channel of the previous run; making them anew.");
                return 0;
        }
        for (size_t i = 0; i < n; i++)
                if (v[i].kind == STATE_CHAN)
                        adopted += (size_t) adopt_one(reg, cfg, secret, &ix, &v[i]);
        index_done(&ix);
        return adopted;
}
