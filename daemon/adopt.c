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

/* A record against an object's kind, key and id: the order of the object index. */
static int obj_cmp(const StateRecord *r, StateKind kind, uint32_t key, int id) {
        return CMP(r->kind, kind) ?: CMP(r->key, key) ?: CMP(r->id, id);
}

/* qsort_r() comparator of record positions in v: by object, then by position. */
static int cmp_obj(const void *a, const void *b, void *v) {
        size_t i = *(const size_t *) a, j = *(const size_t *) b;
        const StateRecord *y = (const StateRecord *) v + j;

        return obj_cmp((const StateRecord *) v + i, y->kind, y->key, y->id) ?: CMP(i, j);
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
        ix->taken = calloc(n_channels ?: 1, sizeof *ix->taken);
        if (!ix->objs || !ix->taken || state_posix_index(v, n, false, &ix->posix, &ix->n_posix) < 0) {
                index_done(ix);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                if ((v[i].kind == STATE_SHM || v[i].kind == STATE_SEM) && !v[i].pending && !v[i].legacy)
                        ix->objs[ix->n_objs++] = i;
        qsort_r(ix->objs, ix->n_objs, sizeof *ix->objs, cmp_obj, v);
        return 0;
}

/* The live record of an object: kind, key and id (the first in the file not adopted yet). */
static StateRecord *find_object(const Index *ix, StateKind kind, uint32_t key, int id) {
        size_t lo = 0, hi = ix->n_objs;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (obj_cmp(&ix->v[ix->objs[mid]], kind, key, id) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (; lo < ix->n_objs && obj_cmp(&ix->v[ix->objs[lo]], kind, key, id) == 0; lo++)
                if (!ix->v[ix->objs[lo]].adopted)
                        return &ix->v[ix->objs[lo]];
        return NULL;
}

/*
 * A posix channel: its files' records (STATE_POSIX under its name), which
 * posix_objects_adopt() proves by inode, owner and type at their names.
 */
static int adopt_posix(Registry *reg, const ChannelSpec *spec, const Index *ix, StateRecord *chan) {
        _cleanup_(freep) StateRecord *recs = NULL;
        size_t k = 0, orphans, first, end = state_posix_range(ix->v, ix->posix, ix->n_posix, spec->name, &first);
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
