#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/ipc-limits.h"
#include "daemon/ipc-stat.h"
#include "daemon/log.h"
#include "daemon/posix.h"
#include "daemon/reload.h"
#include "daemon/self.h"
#include "proto/broadcast.h"

/* Whether the kernel objects of a and b would be the same (all but perms). */
static bool channel_spec_same_objects(const ChannelSpec *a, const ChannelSpec *b) {
        return a->kind == b->kind && a->layout == b->layout && a->size == b->size && a->slot_size == b->slot_size &&
               a->slots == b->slots && a->nsems == b->nsems && a->subscribers == b->subscribers &&
               a->overflow == b->overflow &&
               memcmp(a->sem_values, b->sem_values, a->nsems * sizeof *a->sem_values) == 0 &&
               a->has_key == b->has_key && (!a->has_key || a->key == b->key);
}

static bool same_perms(const ChannelSpec *a, const ChannelSpec *b) {
        return a->uid == b->uid && a->gid == b->gid && a->mode == b->mode;
}

/*
 * Whether e may be mapped by a process the daemon cannot judge, which a
 * change from owner uid, group gid and mode to s's may take a right from:
 * its holds account for as many attachments as they had opens answered.
 */
static bool perms_revoke_unnamed(Entry *e, uid_t uid, gid_t gid, mode_t mode, const ChannelSpec *s) {
        size_t named = 0;
        Hold *h;

        if (!channel_perms_may_revoke(uid, gid, mode, s))
                return false;
        LIST_FOREACH(h, &e->holds, by_entry)
                named += h->opens;
        return channel_has_unnamed_holders(e->channel, named);
}

/*
 * Whether s's owner, group and mode would refuse a current holder of e what
 * it holds (ro: read; rw: read and write). The kernel checks rights only at
 * shmat() and semop(): IPC_SET cannot take back a mapping that exists, so a
 * change that does must replace the objects instead. The first such holder
 * goes to *ret_pid, for the log; -1 for one that holds no connection's hold.
 */
static bool perms_revoke_hold(Entry *e, const ChannelSpec *s, pid_t *ret_pid) {
        ChannelPerm perm;
        Hold *h;

        if (same_perms(&e->channel->spec, s))
                return false;
        /* As the objects would be after IPC_SET: the creator stays this daemon. */
        channel_perm(e->channel, &perm);
        perm.uid = s->uid;
        perm.gid = s->gid;
        perm.mode = s->mode;
        /* A file has no creator (channel_perm() gives its owner and group): the new ones alone count. */
        if (e->channel->spec.kind == PROTO_KIND_POSIX) {
                perm.cuid = perm.uid;
                perm.cgid = perm.gid;
        }
        LIST_FOREACH(h, &e->holds, by_entry)
                if (!access_allowed(&h->client->peer, &perm, true, h->access == PROTO_ACCESS_RW)) {
                        *ret_pid = h->client->peer.pid;
                        return true;
                }
        /* Nobody to judge for those (pid -1): a change that may refuse anyone anything refuses them. */
        *ret_pid = -1;
        return perms_revoke_unnamed(e, e->channel->spec.uid, e->channel->spec.gid, e->channel->spec.mode, s);
}

/*
 * One of the answer's lists as apply() fills it: *v, NULL-terminated and
 * owned, with its length and room kept (counting it at every name made a
 * reload of n channels take time in n squared).
 */
typedef struct NameList {
        char ***v;
        size_t n, cap;
} NameList;

/* Append a copy of name. */
static int names_add(NameList *l, const char *name) {
        if (l->n + 2 > l->cap) {
                size_t cap = MAX(l->cap * 2, (size_t) 16);
                char **v = reallocarray(*l->v, cap, sizeof *v);

                if (!v)
                        return -ENOMEM;
                *l->v = v;
                l->cap = cap;
        }
        (*l->v)[l->n] = strdup(name);
        if (!(*l->v)[l->n])
                return -ENOMEM;
        (*l->v)[++l->n] = NULL;
        return 0;
}

/* Every list present, even when empty: the answer always carries all four. */
static int names_complete(ProtoReloadResult *res) {
        char ***lists[] = { &res->added, &res->removed, &res->changed, &res->kept };

        for (size_t i = 0; i < ELEMENTSOF(lists); i++)
                if (!*lists[i] && !(*lists[i] = calloc(1, sizeof(char *))))
                        return -ENOMEM;
        return 0;
}

typedef struct Plan {
        const ChannelSpec **add;        /* created first, all or nothing */
        size_t n_add;
        Entry **remove;
        size_t n_remove;
        /*
         * Created after every removal: replacements (replace[i] is the old
         * entry), and added channels whose fixed key a removed or replaced
         * channel holds now (replace[i] NULL), so that a key may move between
         * channels (a swap, a rename) in one reload.
         */
        const ChannelSpec **later;
        Entry **replace;
        pid_t *holder;                  /* replaced for its perms (same objects): the holder they refuse */
        bool *in_step3;                 /* a posix channel's replacement: the old one stays until step 3 */
        size_t n_later;
} Plan;

static void plan_done(Plan *p) {
        free(p->add);
        free(p->remove);
        free(p->later);
        free(p->replace);
        free(p->holder);
        free(p->in_step3);
}

/* Whether channel c holds System V key `key`: its segment's and set's, or its subscriber table's. */
static bool channel_holds_key(const Channel *c, uint32_t key) {
        return c->key == key || (c->table_id >= 0 && c->table_key == key);
}

/* Whether channel c holds a System V semaphore set at `key` (a subscriber table is a segment only). */
static bool channel_holds_sem_key(const Channel *c, uint32_t key) {
        return c->spec.kind != PROTO_KIND_POSIX && c->key == key;
}

/* Whether a channel this plan removes or replaces holds key now, as `holds` says. */
static bool plan_frees(const Plan *p, uint32_t key, bool (*holds)(const Channel *c, uint32_t key)) {
        for (size_t i = 0; i < p->n_remove; i++)
                if (holds(p->remove[i]->channel, key))
                        return true;
        for (size_t i = 0; i < p->n_later; i++)
                if (p->replace[i] && holds(p->replace[i]->channel, key))
                        return true;
        return false;
}

/* Whether a channel this plan removes or replaces holds key now. */
static bool plan_frees_key(const Plan *p, uint32_t key) {
        return plan_frees(p, key, channel_holds_key);
}

static bool plan_creates(const Plan *p, const ChannelSpec *s) {
        for (size_t i = 0; i < p->n_add; i++)
                if (p->add[i] == s)
                        return true;
        for (size_t i = 0; i < p->n_later; i++)
                if (p->later[i] == s)
                        return true;
        return false;
}

/*
 * Whether e, a channel with derived keys, holds a key that the new file
 * fixes for a channel: a start would derive another, so the reload moves it
 * too (a replacement), which frees the key for the channel that fixes it.
 */
static bool derived_key_now_fixed(const Config *cfg, const Entry *e) {
        const Channel *c = e->channel;

        if (c->spec.kind == PROTO_KIND_POSIX)
                return false;
        return (!c->spec.has_key && config_key_is_fixed(cfg, c->key)) ||
               (c->table_id >= 0 && config_key_is_fixed(cfg, c->table_key));
}

static int plan_make(Registry *reg, const Config *cfg, Plan *p) {
        p->add = calloc(cfg->n_channels + 1, sizeof *p->add);
        p->later = calloc(cfg->n_channels + 1, sizeof *p->later);
        p->replace = calloc(cfg->n_channels + 1, sizeof *p->replace);
        p->holder = calloc(cfg->n_channels + 1, sizeof *p->holder);
        p->in_step3 = calloc(cfg->n_channels + 1, sizeof *p->in_step3);
        p->remove = calloc(reg->n + 1, sizeof *p->remove);
        if (!p->add || !p->later || !p->replace || !p->holder || !p->in_step3 || !p->remove)
                return -ENOMEM;

        for (size_t i = 0; i < reg->n; i++) {
                Entry *e = registry_at(reg, i);

                if (config_find_channel(cfg, e->channel->spec.name) < 0)
                        p->remove[p->n_remove++] = e;
        }
        for (size_t i = 0; i < cfg->n_channels; i++) {
                const ChannelSpec *s = &cfg->channels[i];
                Entry *e = registry_find(reg, s->name);
                pid_t holder = 0;

                if (e && (!channel_spec_same_objects(&e->channel->spec, s) || derived_key_now_fixed(cfg, e) ||
                          perms_revoke_hold(e, s, &holder))) {
                        p->holder[p->n_later] = holder;
                        /* Files hold no key: the old ones go in step 3, as each new one takes its name. */
                        p->in_step3[p->n_later] = e->channel->spec.kind == PROTO_KIND_POSIX;
                        p->replace[p->n_later] = e;
                        p->later[p->n_later++] = s;
                }
        }
        /* After the lines above: plan_frees_key() needs every removal and replacement. */
        for (size_t i = 0; i < cfg->n_channels; i++) {
                const ChannelSpec *s = &cfg->channels[i];

                if (registry_find(reg, s->name))
                        continue;
                if (s->has_key && plan_frees_key(p, s->key))
                        p->later[p->n_later++] = s;
                else
                        p->add[p->n_add++] = s;
        }
        return 0;
}

/*
 * In the order apply() works: the added channels must fit as things are
 * (nothing is removed before them); the later ones may then use what the
 * removed and replaced channels free.
 */
static int check_limits(const Plan *p, char *msg, size_t msg_size) {
        IpcLimits l;
        int r;

        r = ipc_limits_read(&l);
        if (r < 0) {
                msg_set(msg, msg_size, "cannot read the kernel's IPC limits: %s", strerror(-r));
                return -r;
        }
        r = ipc_limits_check(&l, p->add, p->n_add, msg, msg_size);
        if (r)
                return r;
        for (size_t i = 0; i < p->n_add; i++) {
                if (p->add[i]->kind == PROTO_KIND_POSIX)
                        continue;
                l.shm_ids_used++;
                l.shm_pages_used += (p->add[i]->size + l.page_size - 1) / l.page_size;
                /* A broadcast channel's subscriber table is a segment of its own, as ipc_limits_check() counts it. */
                if (p->add[i]->layout == PROTO_LAYOUT_BROADCAST) {
                        l.shm_ids_used++;
                        l.shm_pages_used += (bcast_table_size(p->add[i]->subscribers) + l.page_size - 1) / l.page_size;
                }
                l.sem_sets_used++;
                l.sem_sems_used += p->add[i]->nsems;
        }
        for (size_t i = 0; i < p->n_remove + p->n_later; i++) {
                const Entry *e = i < p->n_remove ? p->remove[i] : p->replace[i - p->n_remove];
                struct shmid_ds ds;

                if (!e || e->channel->spec.kind == PROTO_KIND_POSIX)
                        continue;       /* a later add, or files: no System V objects freed */
                /* A set goes at once; a segment a client still has attached lives on
                 * (and keeps its id and pages) until the last detach. */
                l.sem_sets_used -= MIN(l.sem_sets_used, UINT64_C(1));
                l.sem_sems_used -= MIN(l.sem_sems_used, (uint64_t) e->channel->spec.nsems);
                /* The daemon has both attached: more than one attach is a client's. */
                if (e->channel->table_id >= 0 && ipc_stat_shm(e->channel->table_id, &ds) == 0 && ds.shm_nattch <= 1) {
                        uint64_t pages = (bcast_table_size(e->channel->spec.subscribers) + l.page_size - 1) / l.page_size;

                        l.shm_ids_used -= MIN(l.shm_ids_used, UINT64_C(1));
                        l.shm_pages_used -= MIN(l.shm_pages_used, pages);
                }
                if (ipc_stat_shm(e->channel->shm_id, &ds) < 0 || ds.shm_nattch > 1)
                        continue;
                l.shm_ids_used -= MIN(l.shm_ids_used, UINT64_C(1));
                l.shm_pages_used -= MIN(l.shm_pages_used, (e->channel->spec.size + l.page_size - 1) / l.page_size);
        }
        return ipc_limits_check(&l, p->later, p->n_later, msg, msg_size);
}

/*
 * A posix channel's files take their owner and group by chown(2), which
 * needs CAP_CHOWN for anyone but our own user and groups (IPC_SET has no
 * such rule). Checked before anything changes, for every posix channel
 * this reload makes or re-perms: a late failure would leave the files as
 * they were while the answer said changed.
 */
static int check_posix_perms(Registry *reg, const Config *cfg, const Plan *p, char *msg, size_t msg_size) {
        for (size_t i = 0; i < cfg->n_channels; i++) {
                const ChannelSpec *s = &cfg->channels[i];
                const Entry *e = plan_creates(p, s) ? NULL : registry_find(reg, s->name);

                if (s->kind != PROTO_KIND_POSIX || (e && same_perms(&e->channel->spec, s)))
                        continue;
                if (!self_may_chown(s->uid, s->gid)) {
                        msg_set(msg, msg_size, "channel \"%s\": cannot give its files owner %u and group %u: without "
                                "CAP_CHOWN a file can only be given the daemon's own user as owner and a group the "
                                "daemon's user is a member of", s->name, (unsigned) s->uid, (unsigned) s->gid);
                        return EPERM;
                }
                if (channel_posix_servable(s, msg, msg_size) < 0)
                        return EPERM;
        }
        return 0;
}

/*
 * The posix channels this reload makes get every page at once, and the
 * replacements and late adds are made after the removals, too late to turn
 * back: /dev/shm must have room for all of them now, in bytes and in files
 * (anyone may use up its inodes with empty files). Removed files count for
 * nothing, as a holder's descriptor or mapping keeps their pages and inodes.
 */
static int check_dev_shm(const Plan *p, char *msg, size_t msg_size) {
        uint64_t need = 0, room, page = (uint64_t) sysconf(_SC_PAGESIZE), files = 0;
        struct statvfs vfs;

        for (size_t i = 0; i < p->n_add + p->n_later; i++) {
                const ChannelSpec *s = i < p->n_add ? p->add[i] : p->later[i - p->n_add];

                if (s->kind == PROTO_KIND_POSIX) {
                        need += posix_objects_bytes(s, bcast_table_size(s->subscribers), page);
                        files += 1 + posix_spec_has_table(s) + s->nsems;
                }
        }
        if (need == 0)
                return 0;
        if (statvfs(PSEM_DIR, &vfs) < 0) {
                int err = errno;

                msg_set(msg, msg_size, "cannot tell the room in %s: %s", PSEM_DIR, strerror(err));
                return err;
        }
        room = (uint64_t) vfs.f_bavail * vfs.f_frsize;
        /* No blocks at all: a tmpfs of size=0 or a ramfs, without a limit. */
        if (vfs.f_blocks > 0 && need > room) {
                msg_set(msg, msg_size, "the reload's posix channels need %" PRIu64 " bytes in %s, which has %" PRIu64
                        " free (files it removes may still be held, so they count for nothing)", need, PSEM_DIR, room);
                return ENOSPC;
        }
        if (vfs.f_files > 0 && files > (uint64_t) vfs.f_favail) {
                msg_set(msg, msg_size, "the reload's posix channels need %" PRIu64 " files in %s, which has room for %"
                        PRIu64 " more (files it removes may still be held, so they count for nothing)", files, PSEM_DIR,
                        (uint64_t) vfs.f_favail);
                return ENOSPC;
        }
        return 0;
}

/* Whether someone else holds key now, a segment or a set there that no channel this plan frees holds. */
static bool key_held_by_other(const Plan *p, uint32_t key) {
        if (!plan_frees_key(p, key) && (shmget((key_t) key, 0, 0) >= 0 || errno != ENOENT))
                return true;
        return !plan_frees(p, key, channel_holds_sem_key) && (semget((key_t) key, 0, 0) >= 0 || errno != ENOENT);
}

/*
 * What step 3 would need and someone else holds now: a fixed key no channel
 * of ours frees, or a posix file name the replaced channel does not have
 * (another kind, a table, more semaphores). Step 2 would have removed the
 * old channel before step 3 met it, and the reload would lose a channel
 * that it could have refused whole, as step 1 refuses an added channel's.
 * A key or name taken after this look still fails that channel in step 3.
 */
static int check_taken(const Plan *p, char *msg, size_t msg_size) {
        for (size_t i = 0; i < p->n_later; i++) {
                const ChannelSpec *s = p->later[i];
                const Entry *e = p->replace[i];
                char name[PATH_MAX];
                int r;

                if (s->kind == PROTO_KIND_POSIX) {
                        r = posix_objects_find_taken(s, e && e->channel->spec.kind == PROTO_KIND_POSIX ?
                                                     &e->channel->posix : NULL, name, sizeof name);
                        if (r < 0) {
                                msg_set(msg, msg_size, "channel \"%s\": cannot look at the names its files need in %s: %s",
                                        s->name, PSEM_DIR, strerror(-r));
                                return -r;
                        }
                        if (r > 0) {
                                msg_set(msg, msg_size, "channel \"%s\": %s/%s already exists and was not made by this "
                                        "daemon; it is left untouched (remove it if it is a leftover)", s->name,
                                        PSEM_DIR, name);
                                return EEXIST;
                        }
                } else if (s->has_key && key_held_by_other(p, s->key)) {
                        config_key_held(s, msg, msg_size);
                        return EEXIST;
                }
        }
        return 0;
}

/* At most the bytes of one line that a channel of this kind and name writes (state_line_max()). */
static uint64_t line_bytes(ProtoKind kind, const char *name) {
        return state_line_max(kind == PROTO_KIND_POSIX, strlen(name));
}

/*
 * The lines a creation of s writes for derived keys that are held now,
 * before the one it gets: an intent and its cancellation for both objects
 * at each (try_key(): 4), and for a table's (2). A key this plan frees
 * counts as free; one taken after this look costs more, as any race does.
 */
static uint64_t held_key_lines(const Config *cfg, const Plan *p, const ChannelSpec *s, const uint8_t *secret) {
        static const Plan none = {};
        /* The channel's own candidates (unless its key is fixed), then a broadcast table's. */
        const struct { bool used; unsigned domain, lines; } keys[] = {
                { !s->has_key, 0, 4 }, { s->layout == PROTO_LAYOUT_BROADCAST, TABLE_KEY_DOMAIN, 2 },
        };
        uint64_t lines = 0;

        /* A step 4 replacement (no plan): its own key counts as held, a few lines too many. */
        if (!p)
                p = &none;
        if (s->kind == PROTO_KIND_POSIX)
                return 0;
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
                for (unsigned i = 0; keys[k].used && i < CHANNEL_DERIVED_KEY_ATTEMPTS; i++) {
                        uint32_t key = channel_derive_key(secret, s->name, keys[k].domain | i);

                        if (config_key_is_fixed(cfg, key))
                                continue;
                        if (!key_held_by_other(p, key))
                                break;
                        lines += keys[k].lines;
                }
        return lines;
}

/*
 * At most the bytes making a channel of spec s writes: per System V object
 * its intent, its id and the intent's cancellation, and the lines of keys
 * held (held_key_lines()); per posix file its intent, its record, the
 * intent's cancellation and the replaced file's record, and the move of
 * its record to another owner (record and cancellation); the channel's
 * record.
 */
static uint64_t bytes_to_make(const Config *cfg, const Plan *p, const ChannelSpec *s, const uint8_t *secret) {
        bool bcast = s->layout == PROTO_LAYOUT_BROADCAST;
        uint64_t lines = s->kind == PROTO_KIND_POSIX ?
                (4 + 2 * (uint64_t) (s->uid != self_euid())) * (1 + (uint64_t) bcast + s->nsems) :
                3 * (2 + (uint64_t) bcast) + held_key_lines(cfg, p, s, secret);

        return (lines + 1) * line_bytes(s->kind, s->name);
}

/* At most the bytes of cancelling every record of c. */
static uint64_t bytes_to_remove(const Channel *c) {
        return channel_count_records(c) * line_bytes(c->spec.kind, c->spec.name);
}

/* "need N bytes" and the room there is, or why not, for a refusal's message. */
static void say_room(char *msg, size_t msg_size, const char *what, const char *path, uint64_t need, int err) {
        struct statvfs vfs;

        if (err == -ENOSPC && statvfs(path, &vfs) == 0)
                msg_set(msg, msg_size, "%s needs up to %" PRIu64 " bytes in %s, which has %" PRIu64 " free", what, need,
                        path, (uint64_t) vfs.f_bavail * vfs.f_frsize);
        else
                msg_set(msg, msg_size, "%s: cannot make room in %s: %s", what, path, strerror(-err));
}

/*
 * Room in the state file for every line apply() writes. Step 2 removes
 * the old objects before step 3 records their replacements, so a full
 * state directory met there would lose channels (and posix ones even as
 * they are replaced) that a refusal now keeps.
 */
static int reserve_state(Registry *reg, const Config *cfg, const Plan *p, char *msg, size_t msg_size) {
        const uint8_t *secret = state_secret(reg->state);
        uint64_t need = 0;
        int r;

        for (size_t i = 0; i < p->n_add; i++)
                need += bytes_to_make(cfg, p, p->add[i], secret);
        for (size_t i = 0; i < p->n_later; i++)
                need += bytes_to_make(cfg, p, p->later[i], secret) +
                        (p->replace[i] ? bytes_to_remove(p->replace[i]->channel) : 0);
        for (size_t i = 0; i < p->n_remove; i++)
                need += bytes_to_remove(p->remove[i]->channel);
        /*
         * Step 4: a posix file given a new owner is recorded again, its old
         * record cancelled. Rights set in place record nothing; a channel
         * replaced there after all reserves its own room (replace_reserved()).
         */
        for (size_t i = 0; i < cfg->n_channels; i++) {
                const Entry *e = plan_creates(p, &cfg->channels[i]) ? NULL : registry_find(reg, cfg->channels[i].name);

                if (e && e->channel->spec.kind == PROTO_KIND_POSIX && e->channel->spec.uid != cfg->channels[i].uid)
                        need += 2 * bytes_to_remove(e->channel);
        }
        r = state_reserve(reg->state, need);
        if (r < 0) {
                say_room(msg, msg_size, "recording the reload's channels", state_path(reg->state), need, r);
                return -r;
        }
        return 0;
}

/* Step 4's replacement of e, with room for its records taken first: 0, or a negative errno with why set. */
static int replace_reserved(Registry *reg, Entry *e, const ChannelSpec *s, const Config *cfg, char *why, size_t size) {
        uint64_t need = bytes_to_make(cfg, NULL, s, state_secret(reg->state)) + bytes_to_remove(e->channel);
        int r = state_reserve(reg->state, need);

        if (r < 0) {
                char what[128];

                snprintf(what, sizeof what, "channel \"%s\": recording its replacement", s->name);
                say_room(why, size, what, state_path(reg->state), need, r);
                /* As a failed replacement leaves it: gone, its rights not left to whoever kept a mapping. */
                registry_remove(reg, e);
                return r;
        }
        return registry_replace(reg, e, s, cfg->fixed_keys, cfg->n_fixed_keys, why, size);
}

static int apply(Registry *reg, const Config *cfg, const Plan *p, ProtoReloadResult *res, char *msg, size_t msg_size) {
        NameList added = { &res->added }, removed = { &res->removed }, changed = { &res->changed },
                 kept = { &res->kept };
        int r;

        /* 1. Add. On failure, remove what this reload added: nothing else has changed yet. */
        for (size_t i = 0; i < p->n_add; i++) {
                r = registry_create(reg, p->add[i], cfg->fixed_keys, cfg->n_fixed_keys, NULL, NULL, msg, msg_size);
                if (r < 0) {
                        for (size_t k = 0; k < i; k++)
                                registry_remove(reg, registry_find(reg, p->add[k]->name));
                        return r == -ENOMEM ? r : -r;
                }
        }

        /* From here on every step is carried out; names record what happened. */
        for (size_t i = 0; i < p->n_add; i++)
                if (names_add(&added, p->add[i]->name) < 0)
                        return -ENOMEM;

        /*
         * 2. Remove the dropped ones, and the old objects of the replaced ones: every key they free is free
         * before step 3. A replaced posix channel stays until step 3 replaces it.
         */
        for (size_t i = 0; i < p->n_remove; i++) {
                if (names_add(&removed, p->remove[i]->channel->spec.name) < 0)
                        return -ENOMEM;
                registry_remove(reg, p->remove[i]);
        }
        for (size_t i = 0; i < p->n_later; i++) {
                if (!p->replace[i])
                        continue;
                /* Same objects: replaced for a key the file now fixes, or for a holder the new perms refuse. */
                if (channel_spec_same_objects(&p->replace[i]->channel->spec, p->later[i])) {
                        if (derived_key_now_fixed(cfg, p->replace[i]))
                                log_info("Reload: channel %s: its key is now fixed for another channel; moving it to "
                                         "a key of its own, as a start would.", p->later[i]->name);
                        else if (p->holder[i] >= 0)
                                log_info("Reload: channel %s: the new owner, group or mode would refuse a current "
                                         "holder (pid %d); replacing the channel instead of changing it in place.",
                                         p->later[i]->name, (int) p->holder[i]);
                        else
                                log_info("Reload: channel %s: the new owner, group or mode may take a right away "
                                         "from a process that has it mapped without holding it through a "
                                         "connection; replacing the channel instead of changing it in place.",
                                         p->later[i]->name);
                }
                if (!p->in_step3[i])
                        registry_remove(reg, p->replace[i]);
        }

        /* 3. Create the replacements and the adds that waited for a key. */
        for (size_t i = 0; i < p->n_later; i++) {
                const ChannelSpec *s = p->later[i];
                char why[512];

                if (p->in_step3[i])
                        r = registry_replace(reg, p->replace[i], s, cfg->fixed_keys, cfg->n_fixed_keys, why,
                                             sizeof why);
                else
                        r = registry_create(reg, s, cfg->fixed_keys, cfg->n_fixed_keys, NULL, NULL, why,
                                            sizeof why);
                if (r < 0) {
                        log_error("Reload: %s; the channel %s until a later reload.", why,
                                  p->replace[i] ? "is gone" : "is not added");
                        if (!p->replace[i])
                                continue;       /* never was: in no list */
                }
                if (names_add(r < 0 ? &removed : p->replace[i] ? &changed : &added, s->name) < 0)
                        return -ENOMEM;
        }

        /* 4. The rest: owner, group and mode in place (no holder loses a right: plan_make()), or untouched. */
        for (size_t i = 0; i < cfg->n_channels; i++) {
                const ChannelSpec *s = &cfg->channels[i];
                ChannelSpec old;
                Entry *e = plan_creates(p, s) ? NULL : registry_find(reg, s->name);
                bool replace = true;
                char why[512];

                if (!e)
                        continue;
                if (same_perms(&e->channel->spec, s)) {
                        if (names_add(&kept, s->name) < 0)
                                return -ENOMEM;
                        continue;
                }
                old = e->channel->spec;
                r = channel_set_perms(e->channel, reg->state, s->uid, s->gid, s->mode);
                /* The FIFOs grant what the ring grants. */
                if (r == 0 && e->has_wake)
                        r = wake_set_perms(reg->wake, s);
                if (r < 0)
                        log_error("Reload: channel %s: cannot set owner %u, group %u, mode %04o: %s; replacing "
                                  "the channel instead.", s->name, (unsigned) s->uid, (unsigned) s->gid,
                                  (unsigned) s->mode, strerror(-r));
                /*
                 * Counted again under the new rights, which nobody they refuse can
                 * attach with any more: an attachment made since the plan counted
                 * was made under the old ones, by someone it cannot judge.
                 */
                else if (perms_revoke_unnamed(e, old.uid, old.gid, old.mode, s))
                        log_info("Reload: channel %s: a process attached it while the reload ran; replacing the "
                                 "channel instead of changing it in place.", s->name);
                else
                        replace = false;
                if (replace && replace_reserved(reg, e, s, cfg, why, sizeof why) < 0) {
                        log_error("Reload: %s; the channel is gone until a later reload.", why);
                        if (names_add(&removed, s->name) < 0)
                                return -ENOMEM;
                        continue;
                }
                if (names_add(&changed, s->name) < 0)
                        return -ENOMEM;
        }
        return names_complete(res);
}

int reload_apply(Registry *reg, const Config *cfg, ProtoReloadResult *ret, char *msg, size_t msg_size) {
        ProtoReloadResult res = {};
        Plan p = {};
        int r;

        r = plan_make(reg, cfg, &p);
        if (r == 0)
                r = check_limits(&p, msg, msg_size);
        if (r == 0)
                r = check_posix_perms(reg, cfg, &p, msg, msg_size);
        if (r == 0)
                r = check_dev_shm(&p, msg, msg_size);
        if (r == 0)
                r = check_taken(&p, msg, msg_size);
        if (r == 0)
                r = reserve_state(reg, cfg, &p, msg, msg_size);
        if (r == 0)
                r = apply(reg, cfg, &p, &res, msg, msg_size);
        plan_done(&p);
        if (r != 0) {
                proto_reload_result_done(&res);
                return r;
        }
        *ret = res;
        return 0;
}
