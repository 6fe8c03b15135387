/*
 * System V lifecycle of one channel.
 *
 * Both objects are made with IPC_CREAT|IPC_EXCL and mode 0600, so nobody
 * can use them before they are initialised; only after SETALL (and the
 * ring header) does IPC_SET give them their configured owner, group and
 * mode. Keys come from the config or from a keyed hash of the name (never
 * ftok, which collides on inode numbers): stable across restarts, since the
 * secret is kept in the state directory, and unpredictable to other users,
 * who cannot read it, so they cannot take a channel's keys in advance.
 */

#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <time.h>

#include "common/util.h"
#include "common/semun.h"
#include "common/utf8.h"
#include "daemon/channel.h"
#include "daemon/ipc-stat.h"
#include "daemon/self.h"
#include "proto/broadcast.h"
#include "proto/ring.h"

uint32_t channel_derive_key(const uint8_t secret[SIPHASH_KEY_SIZE], const char *name, unsigned attempt) {
        /* SipHash of NAME, a NUL and the attempt (little-endian): no name is a prefix of another's input. */
        uint8_t in[PROTO_NAME_MAX + 1 + 4] = {};
        size_t len = strnlen(name, PROTO_NAME_MAX);
        uint32_t h;

        memcpy(in, name, len);
        for (unsigned i = 0; i < 4; i++)
                in[len + 1 + i] = (uint8_t) (attempt >> (8 * i));
        h = (uint32_t) siphash24(secret, in, len + 1 + 4);
        /* Positive and non-zero: reads the same signed or unsigned, never IPC_PRIVATE. */
        h &= 0x7fffffffu;
        return h ? h : 1;
}

static void id_to_name_uncached(uint32_t id, bool group, char *buf, size_t size);

/*
 * getpwuid()/getgrgid() rescan the databases on every call; a config with
 * thousands of channels mostly names the same few ids, so remember the
 * last answer of each kind.
 */
static void id_to_name(uint32_t id, bool group, char *buf, size_t size) {
        static struct {
                bool valid;
                uint32_t id;
                char name[PROTO_IDNAME_MAX + 1];
        } last[2];

        if (last[group].valid && last[group].id == id && strlen(last[group].name) < size) {
                strcpy(buf, last[group].name);
                return;
        }
        id_to_name_uncached(id, group, buf, size);
        if (strlen(buf) < sizeof last[group].name) {
                last[group].valid = true;
                last[group].id = id;
                strcpy(last[group].name, buf);
        }
}

/*
 * A name goes into list and status answers as a JSON string: one that is
 * not UTF-8 (the user and group databases hold bytes) is shown as the id,
 * as one with no name is, rather than failing every such answer.
 */
static void id_to_name_uncached(uint32_t id, bool group, char *buf, size_t size) {
        if (group) {
                struct group *g = getgrgid(id);

                if (g && strlen(g->gr_name) < size && utf8_valid(g->gr_name)) {
                        strcpy(buf, g->gr_name);
                        return;
                }
        } else {
                struct passwd *p = getpwuid(id);

                if (p && strlen(p->pw_name) < size && utf8_valid(p->pw_name)) {
                        strcpy(buf, p->pw_name);
                        return;
                }
        }
        snprintf(buf, size, "%" PRIu32, id);
}

/* After IPC_RMID returned r: the object is gone (removed now, or before). */
static bool rmid_done(int r) {
        return r == 0 || errno == EINVAL || errno == EIDRM;
}

/*
 * An object removed (or gone) is forgotten; one that could not be removed
 * (err: why) stays recorded, past rewrites too.
 */
static void settle(State *state, const StateRecord *rec, bool gone, int err) {
        if (!state)
                return;
        if (gone)
                (void) state_cancel(state, rec);
        else
                (void) state_keep(state, rec, err);
}

/* The same for an IPC_RMID that returned r (errno still its). */
static void settle_rmid(State *state, const StateRecord *rec, int r) {
        int err = r < 0 ? errno : 0;

        settle(state, rec, rmid_done(r), err);
}

static StateRecord table_record(const Channel *c) {
        return (StateRecord) { .kind = STATE_SHM, .key = c->table_key, .id = c->table_id, .pid = c->made_pid,
                               .since = c->made_since, .size = bcast_table_size(c->spec.subscribers) };
}

/* A broadcast channel's table: removed (while still attached, so the id stays ours), its record settled. */
static void remove_table(Channel *c, State *state) {
        if (c->table_id >= 0) {
                StateRecord rec = table_record(c);

                settle_rmid(state, &rec, shmctl(c->table_id, IPC_RMID, NULL));
                c->table_id = -1;
        }
        if (c->table_addr) {
                shmdt(c->table_addr);
                c->table_addr = NULL;
        }
}

/*
 * Remove the objects, and forget in the state file only those that are gone:
 * one that could not be removed stays recorded, so the next start removes
 * it (and the file is kept at exit, see daemon_done()).
 */
static void remove_posix(Channel *c, State *state);

static void remove_objects(Channel *c, State *state) {
        StateRecord recs[CHANNEL_RECORDS];

        if (c->spec.kind == PROTO_KIND_POSIX) {
                remove_posix(c, state);
                return;
        }
        channel_records(c, recs);
        /* No longer a channel to adopt; the objects stay recorded until they are gone. */
        if (state && c->shm_id >= 0)
                (void) state_cancel(state, &recs[2]);
        /*
         * Clients keep their mapping of a removed segment, and its futexes: tell
         * them through the header, and wake its sleepers, before it goes. Whatever
         * a writer did to its magic since: this run formatted or validated it.
         */
        if (c->addr && c->spec.layout == PROTO_LAYOUT_RING)
                ring_mark_removed(c->addr);
        if (c->addr && c->spec.layout == PROTO_LAYOUT_BROADCAST)
                bcast_mark_removed(c->addr, c->table_addr);
        remove_table(c, state);
        /* IPC_RMID while still attached: our attachment keeps the id ours until then. */
        if (c->shm_id >= 0) {
                settle_rmid(state, &recs[0], shmctl(c->shm_id, IPC_RMID, NULL));
                c->shm_id = -1;
        }
        if (c->addr) {
                shmdt(c->addr);
                c->addr = NULL;
        }
        /* A set removed behind our back may have given its id to someone else. */
        if (c->sem_id >= 0) {
                int ours = ipc_is_ours(c->sem_id, c->key, false);

                if (ours == 1)
                        settle_rmid(state, &recs[1], semctl(c->sem_id, 0, IPC_RMID));
                else
                        settle(state, &recs[1], ours == 0 || ours == -ENOENT, -ours);
                c->sem_id = -1;
        }
}

static const char *shmget_why(int err) {
        switch (err) {
        case EINVAL: return "the size is outside kernel.shmmin..kernel.shmmax";
        case ENOSPC: return "kernel.shmmni (segments) or kernel.shmall (pages) is reached";
        case ENOMEM: return "out of memory";
        default: return strerror(err);
        }
}

static const char *semget_why(int err) {
        switch (err) {
        case EINVAL: return "the count exceeds SEMMSL, the first field of kernel.sem";
        case ENOSPC: return "SEMMNI (sets) or SEMMNS (semaphores) of kernel.sem is reached";
        default: return strerror(err);
        }
}

/*
 * Try to take `key` for both objects. Returns 0, -EEXIST when either is
 * held by someone else (nothing of ours is left), or another negative
 * errno with msg set.
 */
static int try_key(Channel *c, uint32_t key, State *state, char *msg, size_t msg_size) {
        const ChannelSpec *s = &c->spec;
        /* A second before now: the set's ctime, which proves it ours, is no earlier. */
        int64_t since = (int64_t) time(NULL) - 1;
        StateRecord intents[2] = {
                { .kind = STATE_SHM, .key = key, .id = -1, .pending = true, .pid = self_pid(), .since = since,
                  .size = s->size },
                { .kind = STATE_SEM, .key = key, .id = -1, .pending = true, .pid = self_pid(), .since = since,
                  .size = s->nsems },
        };
        int r;

        c->key = key;
        /* Intents first, in one write: a kill before the ids are recorded loses nothing. */
        r = state_append_records(state, intents, 2, NULL, 0);
        if (r < 0)
                goto fail_state;
        c->shm_id = shmget((key_t) key, s->size, IPC_CREAT | IPC_EXCL | 0600);
        if (c->shm_id < 0) {
                r = -errno;
                (void) state_append_records(state, NULL, 0, intents, 2);
                if (r != -EEXIST)
                        msg_set(msg, msg_size, "channel \"%s\": cannot create a segment of %" PRIu64 " bytes: %s",
                                s->name, s->size, shmget_why(-r));
                return r;
        }
        c->sem_id = semget((key_t) key, (int) s->nsems, IPC_CREAT | IPC_EXCL | 0600);
        if (c->sem_id < 0) {
                r = -errno;
                if (r != -EEXIST)
                        msg_set(msg, msg_size, "channel \"%s\": cannot create a set of %u semaphores: %s",
                                s->name, s->nsems, semget_why(-r));
                /* Ours to remove: the segment's intent still covers it until then. */
                remove_objects(c, NULL);
                (void) state_append_records(state, NULL, 0, intents, 2);
                return r;
        }
        {
                StateRecord ids[CHANNEL_RECORDS];

                c->made_pid = self_pid();
                c->made_since = since;
                channel_records(c, ids);

                /* The ids cover the objects from now on; the intents would only be checked again at every restart. */
                r = state_defer_records(state, ids, 3, intents, 2);
                if (r < 0)
                        goto fail_state;
        }
        return 0;

fail_state:
        msg_set(msg, msg_size, "channel \"%s\": cannot record the new objects in %s: %s",
                s->name, state_path(state), strerror(-r));
        remove_objects(c, NULL);
        return r;
}

static void remember_perms(Channel *c, uid_t uid, gid_t gid, mode_t mode) {
        c->spec.uid = uid;
        c->spec.gid = gid;
        c->spec.mode = mode & 0777;
        id_to_name(uid, false, c->owner, sizeof c->owner);
        id_to_name(gid, true, c->group, sizeof c->group);
}

int channel_set_perms(Channel *c, State *state, uid_t uid, gid_t gid, mode_t mode) {
        if (c->spec.kind == PROTO_KIND_POSIX) {
                /* A broadcast channel's table: read and write wherever the channel may be read (proto/broadcast.h). */
                int r = posix_objects_set_perms(&c->posix, state, uid, gid, mode, bcast_table_mode(mode));

                if (r < 0)
                        return r;
                remember_perms(c, uid, gid, mode);
                return 0;
        }
        /* IPC_SET reads only uid, gid and mode: no IPC_STAT needed first. */
        struct shmid_ds shm = { .shm_perm = { .uid = uid, .gid = gid, .mode = mode & 0777 } }, table = {};
        struct semid_ds sem = {};
        int ours;

        /*
         * A set removed behind our back may have given its id to another
         * user's set (the segments are still attached by us, so theirs are
         * ours until we detach): IPC_SET would hand that set the channel's
         * owner and mode, as a root daemon may. Not ours: as if removed, so
         * the caller makes the channel anew. (The kernel gives an id out again
         * only after its sequence wraps, which no user gets through between
         * this look and the call.)
         */
        ours = ipc_is_ours(c->sem_id, c->key, false);
        if (ours == 0 || ours == -ENOENT)
                return -EIDRM;
        if (ours < 0)
                return ours;
        sem.sem_perm.uid = uid;
        sem.sem_perm.gid = gid;
        sem.sem_perm.mode = mode & 0777;
        /* A broadcast channel's table: read and write wherever the channel may be read (proto/broadcast.h). */
        table.shm_perm.uid = uid;
        table.shm_perm.gid = gid;
        table.shm_perm.mode = bcast_table_mode(mode);
        /* The set first: once the segment's uid changes we may no longer be its owner. */
        if (semctl(c->sem_id, 0, IPC_SET, &sem) < 0 ||
            (c->table_id >= 0 && shmctl(c->table_id, IPC_SET, &table) < 0) ||
            shmctl(c->shm_id, IPC_SET, &shm) < 0)
                return -errno;
        remember_perms(c, uid, gid, mode);
        return 0;
}

static int channel_new(const ChannelSpec *spec, Channel **ret) {
        Channel *c = calloc(1, sizeof *c);

        if (!c)
                return -ENOMEM;
        c->spec = *spec;
        c->spec.ftok_path = NULL;       /* the config's, which a reload frees */
        c->spec.sem_values = memdup(spec->sem_values, spec->nsems * sizeof *spec->sem_values);
        if (!c->spec.sem_values) {
                free(c);
                return -ENOMEM;
        }
        c->shm_id = c->sem_id = c->table_id = -1;
        posix_objects_init(&c->posix);
        *ret = c;
        return 0;
}

/* Make the table segment under key, recording its intent first and its id after: 0, -EEXIST (held), or an error with msg. */
static int try_table_key(Channel *c, uint32_t key, State *state, char *msg, size_t msg_size) {
        StateRecord intent = { .kind = STATE_SHM, .key = key, .id = -1, .pending = true, .pid = c->made_pid,
                               .since = c->made_since, .size = bcast_table_size(c->spec.subscribers) }, rec;
        int r, id;

        r = state_append_records(state, &intent, 1, NULL, 0);
        if (r < 0)
                goto fail_state;
        id = shmget((key_t) key, intent.size, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) {
                r = -errno;
                (void) state_append_records(state, NULL, 0, &intent, 1);
                if (r != -EEXIST)
                        msg_set(msg, msg_size, "channel \"%s\": cannot create its subscriber table segment: %s",
                                c->spec.name, shmget_why(-r));
                return r;
        }
        c->table_key = key;
        c->table_id = id;
        rec = table_record(c);
        r = state_append_records(state, &rec, 1, &intent, 1);
        if (r < 0) {
                (void) shmctl(id, IPC_RMID, NULL);
                c->table_id = -1;
                goto fail_state;
        }
        return 0;
fail_state:
        msg_set(msg, msg_size, "channel \"%s\": cannot record its subscriber table in %s: %s",
                c->spec.name, state_path(state), strerror(-r));
        return r;
}

bool channel_table_key_fits(const uint8_t secret[SIPHASH_KEY_SIZE], const char *name, uint32_t key) {
        for (unsigned i = 0; i < CHANNEL_DERIVED_KEY_ATTEMPTS; i++)
                if (channel_derive_key(secret, name, TABLE_KEY_DOMAIN | i) == key)
                        return true;
        return false;
}

/* A broadcast channel's second segment (proto/broadcast.h), attached: keys as for the channel's own. */
static int make_table(Channel *c, const uint32_t *fixed_keys, size_t n_fixed, State *state, char *msg,
                      size_t msg_size) {
        int r = -EEXIST;

        for (unsigned i = 0; i < CHANNEL_DERIVED_KEY_ATTEMPTS && r == -EEXIST; i++) {
                uint32_t key = channel_derive_key(state_secret(state), c->spec.name, TABLE_KEY_DOMAIN | i);

                if (key == c->key || (fixed_keys && bsearch(&key, fixed_keys, n_fixed, sizeof key, cmp_u32)))
                        continue;
                r = try_table_key(c, key, state, msg, msg_size);
        }
        if (r == -EEXIST)
                msg_set(msg, msg_size, "channel \"%s\": all %d keys derived for its subscriber table are held by "
                        "other objects", c->spec.name, CHANNEL_DERIVED_KEY_ATTEMPTS);
        if (r < 0)
                return r;
        c->table_addr = shmat(c->table_id, NULL, 0);
        if (c->table_addr == (void *) -1) {
                c->table_addr = NULL;
                r = -errno;
                msg_set(msg, msg_size, "channel \"%s\": cannot attach its subscriber table: %s", c->spec.name,
                        strerror(-r));
                return r;
        }
        return 0;
}

/* The header of a fresh ring or broadcast segment (zero-filled, by the kernel or by ftruncate()). */
static void format_segment(Channel *c) {
        const ChannelSpec *spec = &c->spec;

        if (spec->layout == PROTO_LAYOUT_RING)
                ring_format(c->addr, spec->slot_size, spec->slots);
        if (spec->layout == PROTO_LAYOUT_BROADCAST)
                bcast_format(c->addr, spec->slot_size, spec->slots, spec->subscribers,
                             spec->overflow == PROTO_OVERFLOW_DROP ? BCAST_OVERFLOW_DROP : BCAST_OVERFLOW_BLOCK,
                             c->table_key, c->table_id, c->table_addr);
}

static StateRecord chan_record(const Channel *c) {
        StateRecord rec = { .kind = STATE_CHAN, .key = c->key, .id = c->shm_id, .sem_id = c->sem_id,
                            .fingerprint = channel_spec_fingerprint(&c->spec) };

        /* A posix channel's objects are its files' records, found by its name. */
        if (c->spec.kind == PROTO_KIND_POSIX)
                rec.id = rec.sem_id = 0;
        strcpy(rec.name, c->spec.name);
        return rec;
}

int channel_posix_servable(const ChannelSpec *s, char *msg, size_t msg_size) {
        static const char *const classes[] = { "others", "group", "owner" };
        mode_t m = s->mode & 0777, need = (m >> 6 | m >> 3 | m) & 6, own;
        unsigned cls;

        if (s->kind != PROTO_KIND_POSIX || self_has_cap(CAP_DAC_OVERRIDE))
                return 0;
        cls = s->uid == self_euid() ? 2 : self_in_group(s->gid) ? 1 : 0;
        own = (m >> (3 * cls)) & 6;
        if ((own & need) == need)
                return 0;
        msg_set(msg, msg_size, "channel \"%s\": mode %04o gives the daemon's user (as the files' %s) less read and "
                "write than it gives others; without CAP_DAC_OVERRIDE the daemon could not open the files to hand "
                "them out: give the %s the same bits", s->name, (unsigned) m, classes[cls], classes[cls]);
        return -EPERM;
}

/* The posix side of channel_create(): files instead of keys (daemon/posix.h), over old's when given. */
static int create_posix(Channel *c, State *state, PosixObjects *old, char *msg, size_t msg_size) {
        const ChannelSpec *spec = &c->spec;
        StateRecord rec;
        int r;

        r = channel_posix_servable(spec, msg, msg_size);
        if (r < 0)
                return r;
        r = posix_objects_create(spec, bcast_table_size(spec->subscribers), state, old, &c->posix, msg, msg_size);
        if (r < 0)
                return r;
        c->made_pid = c->posix.made_pid;
        c->made_since = c->posix.made_since;
        c->addr = c->posix.shm.addr;
        /* A broadcast channel's subscriber table; a raw channel's lock holder table is the registry's. */
        c->table_addr = spec->layout == PROTO_LAYOUT_BROADCAST ? c->posix.table.addr : NULL;
        /* No System V table: clients find it by name (proto/posix.h). */
        format_segment(c);
        r = channel_set_perms(c, state, spec->uid, spec->gid, spec->mode);
        if (r < 0) {
                /* Unlike IPC_SET, chown(2) of a file is a privilege: say which one is missing. */
                msg_set(msg, msg_size, "channel \"%s\": cannot set owner %u, group %u, mode %04o of its files: %s%s",
                        spec->name, (unsigned) spec->uid, (unsigned) spec->gid, (unsigned) spec->mode, strerror(-r),
                        r == -EPERM ? " (without CAP_CHOWN a file can only be given the daemon's own user as owner "
                                      "and a group the daemon's user is a member of)" : "");
                return r;
        }
        rec = chan_record(c);
        r = state ? state_append_records(state, &rec, 1, NULL, 0) : 0;
        if (r < 0)
                msg_set(msg, msg_size, "channel \"%s\": cannot record it in %s: %s", spec->name, state_path(state),
                        strerror(-r));
        return r;
}

/*
 * What removing a posix channel starts with: it is no channel any more,
 * and its clients are told so. Its files stay open and at their names,
 * for a replacement to take their places (posix_objects_create()).
 */
static void retire_posix(Channel *c, State *state) {
        if (state && c->posix.shm.fd >= 0) {
                StateRecord rec = chan_record(c);

                (void) state_cancel(state, &rec);
        }
        channel_mark_removed(c);
        posix_objects_mark_removed(&c->posix);
        /* The mappings go with the files, wherever that is. */
        c->addr = c->table_addr = NULL;
}

/* The posix side of remove_objects(): tell the clients, then unlink what is still ours. */
static void remove_posix(Channel *c, State *state) {
        retire_posix(c, state);
        posix_objects_remove(&c->posix, state);
}

static int create(const ChannelSpec *spec, const uint32_t *fixed_keys, size_t n_fixed, State *state,
                  PosixObjects *old, Channel **ret, char *msg, size_t msg_size) {
        Channel *c = NULL;
        union semun arg;
        int r;

        r = channel_new(spec, &c);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": out of memory", spec->name);
                return r;
        }
        if (spec->kind == PROTO_KIND_POSIX) {
                r = create_posix(c, state, old, msg, msg_size);
                if (r < 0)
                        goto fail;
                *ret = c;
                return 0;
        }

        if (spec->has_key) {
                r = try_key(c, spec->key, state, msg, msg_size);
                if (r == -EEXIST)
                        config_key_held(spec, msg, msg_size);
        } else {
                r = -EEXIST;
                for (unsigned i = 0; i < CHANNEL_DERIVED_KEY_ATTEMPTS && r == -EEXIST; i++) {
                        uint32_t key = channel_derive_key(state_secret(state), spec->name, i);

                        if (fixed_keys && bsearch(&key, fixed_keys, n_fixed, sizeof key, cmp_u32))
                                continue;
                        r = try_key(c, key, state, msg, msg_size);
                        if (r == -EEXIST && c->first_held_key == 0)
                                c->first_held_key = key;
                }
                if (r == -EEXIST)
                        msg_set(msg, msg_size, "channel \"%s\": all %d keys derived from its name are held by other objects",
                                spec->name, CHANNEL_DERIVED_KEY_ATTEMPTS);
        }
        if (r < 0)
                goto fail;

        arg.array = c->spec.sem_values;
        if (semctl(c->sem_id, 0, SETALL, arg) < 0) {
                r = -errno;
                msg_set(msg, msg_size, "channel \"%s\": cannot set the initial semaphore values: %s",
                        spec->name, strerror(errno));
                goto fail;
        }
        c->addr = shmat(c->shm_id, NULL, 0);
        if (c->addr == (void *) -1) {
                c->addr = NULL;
                r = -errno;
                msg_set(msg, msg_size, "channel \"%s\": cannot attach the segment: %s", spec->name, strerror(errno));
                goto fail;
        }
        if (spec->layout == PROTO_LAYOUT_BROADCAST) {
                r = make_table(c, fixed_keys, n_fixed, state, msg, msg_size);
                if (r < 0)
                        goto fail;
        }
        /* A fresh segment is zero-filled by the kernel: what ring_format() expects. */
        format_segment(c);
        r = channel_set_perms(c, state, spec->uid, spec->gid, spec->mode);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot set owner %u, group %u, mode %04o: %s",
                        spec->name, (unsigned) spec->uid, (unsigned) spec->gid, (unsigned) spec->mode, strerror(-r));
                goto fail;
        }
        *ret = c;
        return 0;
fail:
        channel_free(c, state);
        return r;
}

int channel_create(const ChannelSpec *spec, const uint32_t *fixed_keys, size_t n_fixed, State *state,
                   PosixObjects *old, Channel **ret, char *msg, size_t msg_size) {
        int r = create(spec, fixed_keys, n_fixed, state, old, ret, msg, msg_size);

        /* What of them is left (none once create_posix() ran): unlinked as at any removal. */
        if (old)
                posix_objects_remove(old, state);
        return r;
}

int channel_replace(Channel *old, const ChannelSpec *spec, const uint32_t *fixed_keys, size_t n_fixed,
                    State *state, Channel **ret, char *msg, size_t msg_size) {
        int r;

        /* System V objects go first: their keys must be free again. */
        if (old->spec.kind != PROTO_KIND_POSIX || spec->kind != PROTO_KIND_POSIX) {
                channel_free(old, state);
                return create(spec, fixed_keys, n_fixed, state, NULL, ret, msg, msg_size);
        }
        retire_posix(old, state);
        r = create(spec, fixed_keys, n_fixed, state, &old->posix, ret, msg, msg_size);
        /* What of its files is left (none once create_posix() ran): unlinked as at any removal. */
        channel_free(old, state);
        return r;
}

Channel *channel_free(Channel *c, State *state) {
        if (!c)
                return NULL;
        remove_objects(c, state);
        free(c->spec.sem_values);
        free(c);
        return NULL;
}

/* The segment is still ours; its kernel figures in *ret_shm. */
static int check_segment(const Channel *c, struct shmid_ds *ret_shm) {
        int r;

        r = ipc_stat_shm(c->shm_id, ret_shm);
        if (r < 0)
                return r == -EINVAL ? -EIDRM : r;
        /* Still attached by us, a removed segment lives on with the key IPC_PRIVATE. */
        if ((uint32_t) ret_shm->shm_perm.__key != c->key)
                return -EIDRM;
        return 0;
}

/* A broadcast channel's table is still ours (an admin may ipcrm it too). */
static int check_table(const Channel *c) {
        struct shmid_ds ds;
        int r;

        if (c->spec.layout != PROTO_LAYOUT_BROADCAST)
                return 0;
        r = ipc_stat_shm(c->table_id, &ds);
        if (r < 0)
                return r == -EINVAL ? -EIDRM : r;
        return (uint32_t) ds.shm_perm.__key == c->table_key ? 0 : -EIDRM;
}

static int check_set(const Channel *c) {
        int r = ipc_is_ours(c->sem_id, c->key, false);

        if (r == 0 || r == -ENOENT)
                return -EIDRM;
        return r < 0 ? r : 0;
}

/* The check, handing back the segment's IPC_STAT it made on the way. */
static int check_objects(const Channel *c, struct shmid_ds *ret_shm) {
        int r = check_segment(c, ret_shm);

        if (r >= 0)
                r = check_table(c);
        return r < 0 ? r : check_set(c);
}

int channel_check(const Channel *c) {
        struct shmid_ds shm;

        if (c->spec.kind == PROTO_KIND_POSIX)
                return posix_objects_check(&c->posix);
        return check_objects(c, &shm);
}

int channel_remake(Channel **c, State *state, char *msg, size_t msg_size) {
        ChannelSpec spec = (*c)->spec;
        bool configured_has_key = spec.has_key;
        uint32_t configured_key = spec.key, key = (*c)->key;
        Channel *fresh = NULL;
        int r;

        /* A copy: freeing the old channel cancels its records, whose digest covers the values. */
        spec.sem_values = memdup((*c)->spec.sem_values, spec.nsems * sizeof *spec.sem_values);
        if (!spec.sem_values) {
                msg_set(msg, msg_size, "out of memory");
                *c = channel_free(*c, state);   /* as on any failure: *c is NULL */
                return -ENOMEM;
        }
        /* Same key as before: clients and admins keep finding it where it was. (Files keep their names.) */
        if (spec.kind == PROTO_KIND_SYSV) {
                spec.has_key = true;
                spec.key = key;
        }
        /* The remains go first, as a key must be free again; a file has its place taken (channel_replace()). */
        r = channel_replace(*c, &spec, NULL, 0, state, &fresh, msg, msg_size);
        if (r == 0) {
                /* Remember the channel as configured, not as pinned here, so a reload compares right. */
                fresh->spec.has_key = configured_has_key;
                fresh->spec.key = configured_key;
        }
        free(spec.sem_values);
        *c = fresh;
        return r;
}

void channel_describe(const Channel *c, ProtoChannel *ret) {
        *ret = (ProtoChannel) {
                .shm_key = c->key,
                .shm_id = c->shm_id,
                .sem_key = c->key,
                .sem_id = c->sem_id,
                .size = c->spec.size,
                .nsems = c->spec.nsems,
                .layout = c->spec.layout,
                .slot_size = c->spec.slot_size,
                .slots = c->spec.slots,
                .subscribers = c->spec.subscribers,
                .overflow = c->spec.overflow,
                .table_key = c->table_key,
                .table_id = c->table_id,
                .mode = c->spec.mode,
                .kind = c->spec.kind,
        };
        if (c->spec.kind == PROTO_KIND_POSIX) {
                /* Borrowed by the encoder: the channel owns them. */
                strcpy(ret->shm_name, c->posix.shm_name);
                strcpy(ret->table_name, c->posix.table_name);
                ret->sem_names = c->posix.sem_names;
        }
        strcpy(ret->name, c->spec.name);
        strcpy(ret->owner, c->owner);
        strcpy(ret->group, c->group);
}

/* Every semaphore's value, waiters and last pid. All need read permission on the set. */
static int read_semaphores(const Channel *c, ProtoSemaphore **ret) {
        _cleanup_(freep) ProtoSemaphore *sems = NULL;
        _cleanup_(freep) unsigned short *many = NULL;
        unsigned short few[16], *values = few;  /* GETALL's, read once: a set of a few needs no block */
        union semun arg;

        if (c->spec.nsems > ELEMENTSOF(few))
                values = many = calloc(c->spec.nsems, sizeof *values);
        sems = calloc(c->spec.nsems, sizeof *sems);
        if (!values || !sems)
                return -ENOMEM;
        arg.array = values;
        if (semctl(c->sem_id, 0, GETALL, arg) < 0)
                return errno == EINVAL ? -EIDRM : -errno;
        for (unsigned i = 0; i < c->spec.nsems; i++) {
                int ncnt = semctl(c->sem_id, (int) i, GETNCNT);
                int zcnt = semctl(c->sem_id, (int) i, GETZCNT);
                int pid = semctl(c->sem_id, (int) i, GETPID);

                if (ncnt < 0 || zcnt < 0 || pid < 0)
                        return errno == EINVAL ? -EIDRM : -errno;
                sems[i] = (ProtoSemaphore) { .value = values[i], .has_counts = true, .ncount = ncnt, .zcount = zcnt, .pid = pid };
        }
        *ret = TAKE_PTR(sems);
        return 0;
}

/* The entry's error: what could not be read, and for EACCES why a daemon may not read its own objects. */
static void stat_failed(const Channel *c, ProtoChannel *ret, const char *what, int err) {
        ret->error = err;
        if (err == EACCES)
                msg_set(ret->message, sizeof ret->message,
                        "cannot read %s: mode %04o gives the daemon (uid %u, their creator) no read permission, "
                        "and it lacks CAP_IPC_OWNER", what, (unsigned) c->spec.mode, (unsigned) self_euid());
        else
                msg_set(ret->message, sizeof ret->message, "cannot read %s: %s", what, strerror(err));
}

/*
 * The subscribers that publishers count (proto/broadcast.h): a LIVE
 * subscriber token whose cursor carries it. Positions come from the
 * table, which subscribers write: a report, clamped to head.
 */
static int read_subscriptions(const Channel *c, ProtoChannel *ret) {
        const BcastHeader *h = c->addr;
        const RingHolder *holders = bcast_subscriber_at(h, 0);
        uint64_t head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
        ProtoSubscription *v;
        size_t n = 0;

        v = calloc(c->spec.subscribers ?: 1, sizeof *v);
        if (!v)
                return -ENOMEM;
        for (uint32_t i = 0; i < c->spec.subscribers; i++) {
                const BcastCursor *cur = bcast_cursor_at(c->table_addr, i);
                uint32_t token = bcast_live_token(holders, i);
                /* Once: publishers may write the segment, and a second read could be below 0 (clients refuse that). */
                int32_t pid = __atomic_load_n(&holders[i].pid, __ATOMIC_RELAXED);
                uint64_t pos;

                if (token == 0 || __atomic_load_n(&cur->token, __ATOMIC_ACQUIRE) != token)
                        continue;
                pos = MIN(__atomic_load_n(&cur->position, __ATOMIC_ACQUIRE), head);
                v[n++] = (ProtoSubscription) {
                        .pid = pid > 0 ? pid : 0,
                        .position = pos,
                        .lag = head - pos,
                        .dropped = __atomic_load_n(&cur->dropped, __ATOMIC_RELAXED),
                };
        }
        ret->subscriptions = v;
        ret->n_subscriptions = n;
        return 0;
}

/* A posix channel's status: the files' own owner, group and mode (fstat), the semaphores' values. */
static int stat_posix(const Channel *c, ProtoChannel *ret) {
        _cleanup_(freep) ProtoSemaphore *sems = NULL;
        uid_t uid;
        gid_t gid;
        mode_t mode;
        int r;

        r = posix_objects_check(&c->posix);
        if (r < 0)
                return r;
        r = posix_objects_stat(&c->posix, &uid, &gid, &mode, &ret->size);
        if (r < 0)
                return r;
        id_to_name(uid, false, ret->owner, sizeof ret->owner);
        id_to_name(gid, true, ret->group, sizeof ret->group);
        ret->mode = mode;
        /* A POSIX segment has no attach count, creator pid or times: absent, not zero. */
        ret->segment_unread = true;
        sems = calloc(c->spec.nsems ?: 1, sizeof *sems);
        if (!sems)
                return -ENOMEM;
        for (unsigned i = 0; i < c->spec.nsems; i++) {
                r = posix_objects_sem_value(&c->posix, i, &sems[i].value);
                if (r < 0)
                        return r;
        }
        if (c->spec.layout == PROTO_LAYOUT_BROADCAST && c->table_addr && read_subscriptions(c, ret) < 0)
                return -ENOMEM;
        ret->semaphores = TAKE_PTR(sems);
        ret->n_semaphores = c->spec.nsems;
        return 0;
}

int channel_stat(const Channel *c, ProtoChannel *ret) {
        ProtoSemaphore *sems = NULL;
        struct shmid_ds shm;
        int r;

        channel_describe(c, ret);
        if (c->spec.kind == PROTO_KIND_POSIX) {
                /* Owned from here on, as proto_channel_done() frees them: never the channel's own. */
                char **names = calloc(c->posix.nsems + 1, sizeof *names);

                ret->sem_names = names;
                if (!names)
                        return -ENOMEM;
                for (unsigned i = 0; i < c->posix.nsems; i++)
                        if (!(names[i] = strdup(c->posix.sem_names[i])))
                                return -ENOMEM;
                return stat_posix(c, ret);
        }
        /* One stat of each object says whether it is still ours. */
        r = check_segment(c, &shm);
        if (r < 0) {
                if (r == -EIDRM || r == -ENOMEM)
                        return r;
                /* Not even SHM_STAT_ANY (an LSM may refuse it): only what the daemon knows. */
                ret->segment_unread = true;
                stat_failed(c, ret, "the segment's figures", -r);
                return 0;
        }
        ret->nattch = shm.shm_nattch;
        ret->cpid = shm.shm_cpid;
        ret->lpid = shm.shm_lpid;
        ret->atime = shm.shm_atime;
        ret->dtime = shm.shm_dtime;
        ret->ctime = shm.shm_ctime;
        if (c->spec.layout == PROTO_LAYOUT_BROADCAST && c->table_addr && read_subscriptions(c, ret) < 0)
                return -ENOMEM;
        /*
         * No check_set() here: GETALL on a removed set fails with EINVAL
         * (before any permission check), which read_semaphores() reports as
         * -EIDRM, and an id is not reused until its sequence wraps. One
         * system call less per status.
         */
        r = check_table(c);
        if (r >= 0)
                r = read_semaphores(c, &sems);
        if (r == -EIDRM || r == -ENOMEM)
                return r;
        if (r < 0) {
                /* GETALL and the rest have no *_STAT_ANY: without read permission the values are out of reach. */
                stat_failed(c, ret, "the semaphore set", -r);
                return 0;
        }
        ret->semaphores = sems;
        ret->n_semaphores = c->spec.nsems;
        return 0;
}

size_t channel_count_records(const Channel *c) {
        if (c->spec.kind == PROTO_KIND_POSIX)
                return 1 + (c->posix.shm.fd >= 0) + (c->posix.table.fd >= 0) + c->posix.nsems;
        return c->table_id < 0 ? 3 : 4;
}

size_t channel_records(const Channel *c, StateRecord ret[CHANNEL_RECORDS]) {
        if (c->spec.kind == PROTO_KIND_POSIX) {
                ret[0] = chan_record(c);
                return 1 + posix_objects_records(&c->posix, c->spec.name, ret + 1);
        }
        ret[0] = (StateRecord) { .kind = STATE_SHM, .key = c->key, .id = c->shm_id, .pid = c->made_pid,
                                 .since = c->made_since, .size = c->spec.size };
        ret[1] = (StateRecord) { .kind = STATE_SEM, .key = c->key, .id = c->sem_id, .pid = c->made_pid,
                                 .since = c->made_since, .size = c->spec.nsems };
        ret[2] = chan_record(c);
        if (c->table_id < 0)
                return 3;
        ret[3] = table_record(c);
        return 4;
}

uint64_t channel_spec_fingerprint(const ChannelSpec *s) {
        /* What the objects are made of, as channel_spec_same_objects() in reload.c compares it. */
        static const uint8_t zero_key[SIPHASH_KEY_SIZE];
        struct {
                uint64_t size;
                uint32_t layout, slot_size, slots, nsems, has_key, key;
        } fixed = {
                .size = s->size, .layout = (uint32_t) s->layout, .slot_size = s->slot_size, .slots = s->slots,
                .nsems = s->nsems, .has_key = s->has_key, .key = s->has_key ? s->key : 0,
        };
        uint64_t h = siphash24(zero_key, &fixed, sizeof fixed);

        /* Mixed in for broadcast channels only, so the other layouts' digests stay what older runs recorded. */
        if (s->layout == PROTO_LAYOUT_BROADCAST) {
                uint32_t broadcast[2] = { s->subscribers, (uint32_t) s->overflow };

                h ^= siphash24(zero_key, broadcast, sizeof broadcast) * 3;
        }
        /* Likewise the kind, for posix channels only: a changed kind makes the channel anew. */
        if (s->kind == PROTO_KIND_POSIX) {
                static const char posix[] = "posix";

                h ^= siphash24(zero_key, posix, sizeof posix) * 5;
        }
        return h ^ siphash24(zero_key, s->sem_values, s->nsems * sizeof *s->sem_values);
}

void channel_perm(const Channel *c, ChannelPerm *ret) {
        *ret = (ChannelPerm) {
                .uid = c->spec.uid,
                .gid = c->spec.gid,
                /* The creator, as the kernel records it (cuid/cgid): this daemon, always. */
                .cuid = self_euid(),
                .cgid = self_egid(),
                .mode = c->spec.mode,
        };
        /* A file has no creator: only its owner and group count, as for open(2). */
        if (c->spec.kind == PROTO_KIND_POSIX) {
                ret->files = true;
                ret->readers_write = c->spec.layout == PROTO_LAYOUT_BROADCAST;
                ret->cuid = ret->uid;
                ret->cgid = ret->gid;
        }
}

/* A killed run's ring header is the one configured, still live: anything else is made anew. */
static bool ring_header_fits(const ChannelSpec *spec, const RingHeader *h) {
        return ring_header_is_ours(h) && h->slot_size == spec->slot_size && h->slots == spec->slots &&
               h->data_offset == RING_DATA_OFFSET && h->holders == RING_HOLDERS &&
               h->holders_offset == RING_HOLDERS_OFFSET && !ring_is_removed(h);
}

static bool bcast_header_fits(const ChannelSpec *spec, const BcastHeader *h, const StateRecord *table) {
        return bcast_header_is_ours(h) && h->slot_size == spec->slot_size && h->slots == spec->slots &&
               h->slot_stride == bcast_slot_stride(spec->slot_size) &&
               h->data_offset == bcast_data_offset(spec->subscribers) && h->publishers == BCAST_PUBLISHERS &&
               h->publishers_offset == BCAST_HOLDERS_OFFSET && h->subscribers == spec->subscribers &&
               h->subscribers_offset == BCAST_SUBSCRIBERS_OFFSET &&
               h->overflow == (spec->overflow == PROTO_OVERFLOW_DROP ? BCAST_OVERFLOW_DROP : BCAST_OVERFLOW_BLOCK) &&
               h->table_size == bcast_table_size(spec->subscribers) && table && h->table_key == table->key &&
               h->table_id == table->id && table->size == h->table_size && !bcast_is_removed(h);
}

int channel_table_of(const StateRecord *shm, uint32_t *ret_key, int *ret_id) {
        const BcastHeader *h;
        int r = 0;

        if (shm->size < sizeof(BcastHeader))
                return -EPROTO;
        h = shmat(shm->id, NULL, SHM_RDONLY);
        if (h == (void *) -1)
                return -errno;
        if (!bcast_header_is_ours(h))
                r = -EPROTO;
        else {
                *ret_key = h->table_key;
                *ret_id = h->table_id;
        }
        (void) shmdt(h);
        return r;
}

bool channel_perms_may_revoke(uid_t uid, gid_t gid, mode_t mode, const ChannelSpec *to) {
        /* The same owner and group, and no bit dropped: everyone keeps every right. Anything else may not. */
        return uid != to->uid || gid != to->gid || (mode & ~to->mode & 0777) != 0;
}

bool channel_has_unnamed_holders(const Channel *c, size_t named) {
        struct shmid_ds ds;

        /* A file's mappings are counted nowhere. */
        if (c->spec.kind == PROTO_KIND_POSIX || ipc_stat_shm(c->shm_id, &ds) < 0)
                return true;
        return ds.shm_nattch > (c->addr ? 1u : 0u) + named;
}

/*
 * The config's owner, group and mode on taken-over objects. Processes of
 * the last run may still have them mapped, and none of them has come back
 * to be judged yet: a change that may take a right away from one of them
 * makes the channel anew instead, as a reload replaces a channel whose new
 * rights refuse a holder (the kernel cannot revoke a mapping).
 */
static int adopt_perms(Channel *c, const ChannelSpec *spec, State *state, char *msg, size_t msg_size) {
        struct shmid_ds ds;
        struct stat st;
        bool revokes;
        int r;

        if (spec->kind == PROTO_KIND_POSIX)
                revokes = fstat(c->posix.shm.fd, &st) < 0 ||
                          channel_perms_may_revoke(st.st_uid, st.st_gid, st.st_mode, spec);
        else
                revokes = ipc_stat_shm(c->shm_id, &ds) < 0 ||
                          channel_perms_may_revoke(ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.mode, spec);
        if (revokes && channel_has_unnamed_holders(c, 0))
                goto refuse;
        r = channel_set_perms(c, state, spec->uid, spec->gid, spec->mode);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot set owner %u, group %u, mode %04o: %s", spec->name,
                        (unsigned) spec->uid, (unsigned) spec->gid, (unsigned) spec->mode, strerror(-r));
                return r;
        }
        /* Counted again under the new rights: an attachment made in between was made under the old ones. */
        if (revokes && channel_has_unnamed_holders(c, 0))
                goto refuse;
        return 0;
refuse:
        msg_set(msg, msg_size, "channel \"%s\": its new owner, group or mode may take a right away from a "
                "process that still has it mapped", spec->name);
        return -EPERM;
}

int channel_adopt(const ChannelSpec *spec, const StateRecord *shm, const StateRecord *sem, const StateRecord *table,
                  Channel **ret, char *msg, size_t msg_size) {
        Channel *c = NULL;
        int r;

        r = channel_new(spec, &c);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": out of memory", spec->name);
                return r;
        }
        c->key = shm->key;
        c->made_pid = shm->pid;
        c->made_since = shm->since;
        c->addr = shmat(shm->id, NULL, 0);
        if (c->addr == (void *) -1) {
                c->addr = NULL;
                r = -errno;
                msg_set(msg, msg_size, "channel \"%s\": cannot attach segment %d: %s", spec->name, shm->id,
                        strerror(-r));
                goto fail;
        }
        /*
         * A ring or broadcast channel is only taken over with the header this
         * daemon wrote (its layout version, its holder tables where this build
         * keeps them), still live (a run killed between marking it removed and
         * removing it had given it up): anything else is made anew.
         */
        if ((spec->layout == PROTO_LAYOUT_RING && !ring_header_fits(spec, c->addr)) ||
            (spec->layout == PROTO_LAYOUT_BROADCAST && !bcast_header_fits(spec, c->addr, table))) {
                msg_set(msg, msg_size, "channel \"%s\": the header of segment %d is not the one configured",
                        spec->name, shm->id);
                r = -EINVAL;
                goto fail;
        }
        if (spec->layout == PROTO_LAYOUT_BROADCAST) {
                struct shmid_ds ds;

                /* The record was proven; the size is checked as the clients will. */
                c->table_addr = shmat(table->id, NULL, 0);
                if (c->table_addr == (void *) -1) {
                        c->table_addr = NULL;
                        r = -errno;
                        msg_set(msg, msg_size, "channel \"%s\": cannot attach its table segment %d: %s", spec->name,
                                table->id, strerror(-r));
                        goto fail;
                }
                if (shmctl(table->id, IPC_STAT, &ds) < 0 || ds.shm_segsz != table->size) {
                        msg_set(msg, msg_size, "channel \"%s\": its table segment %d is not the one recorded",
                                spec->name, table->id);
                        r = -EINVAL;
                        goto fail;
                }
                c->table_key = table->key;
                c->table_id = table->id;
        }
        c->shm_id = shm->id;
        c->sem_id = sem->id;
        c->adopted = true;
        r = adopt_perms(c, spec, NULL, msg, msg_size);
        if (r < 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        /* Not taken over: the objects stay as they were, for reclaim to judge. */
        c->table_id = -1;
        channel_forget(c);
        return r;
}

Channel *channel_forget(Channel *c) {
        if (!c)
                return NULL;
        if (c->spec.kind == PROTO_KIND_POSIX) {
                posix_objects_close(&c->posix);
                c->addr = c->table_addr = NULL;
        }
        if (c->addr)
                shmdt(c->addr);
        if (c->table_addr)
                shmdt(c->table_addr);
        free(c->spec.sem_values);
        free(c);
        return NULL;
}

void channel_mark_removed(Channel *c) {
        if (!c)
                return;
        if (c->spec.kind == PROTO_KIND_POSIX)
                posix_objects_mark_removed(&c->posix);
        if (!c->addr)
                return;
        if (c->spec.layout == PROTO_LAYOUT_RING)
                ring_mark_removed(c->addr);
        if (c->spec.layout == PROTO_LAYOUT_BROADCAST)
                bcast_mark_removed(c->addr, c->table_addr);
}

/* A killed run's posix broadcast header: as bcast_header_fits(), with no System V table to name. */
static bool posix_header_fits(const ChannelSpec *spec, const void *addr, const PosixObjects *p) {
        const BcastHeader *h = addr;

        if (spec->layout == PROTO_LAYOUT_RING)
                return p->shm.size >= sizeof(RingHeader) && ring_header_fits(spec, addr);
        if (spec->layout != PROTO_LAYOUT_BROADCAST)
                return true;
        return p->shm.size >= sizeof *h && bcast_header_is_ours(h) && h->slot_size == spec->slot_size &&
               h->slots == spec->slots && h->slot_stride == bcast_slot_stride(spec->slot_size) &&
               h->data_offset == bcast_data_offset(spec->subscribers) && h->publishers == BCAST_PUBLISHERS &&
               h->publishers_offset == BCAST_HOLDERS_OFFSET && h->subscribers == spec->subscribers &&
               h->subscribers_offset == BCAST_SUBSCRIBERS_OFFSET &&
               h->overflow == (spec->overflow == PROTO_OVERFLOW_DROP ? BCAST_OVERFLOW_DROP : BCAST_OVERFLOW_BLOCK) &&
               h->table_size == bcast_table_size(spec->subscribers) && p->table.size == h->table_size &&
               !bcast_is_removed(h);
}

int channel_adopt_posix(const ChannelSpec *spec, const StateRecord *recs, size_t n, State *state, Channel **ret,
                        char *msg, size_t msg_size) {
        Channel *c = NULL;
        int r;

        r = channel_new(spec, &c);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": out of memory", spec->name);
                return r;
        }
        r = posix_objects_adopt(spec, recs, n, &c->posix, msg, msg_size);
        if (r < 0)
                goto fail;
        c->made_pid = c->posix.made_pid;
        c->made_since = c->posix.made_since;
        c->addr = c->posix.shm.addr;
        /* A broadcast channel's subscriber table; a raw channel's lock holder table is the registry's. */
        c->table_addr = spec->layout == PROTO_LAYOUT_BROADCAST ? c->posix.table.addr : NULL;
        if (c->posix.shm.size != spec->size || !posix_header_fits(spec, c->addr, &c->posix)) {
                msg_set(msg, msg_size, "channel \"%s\": the header of %s is not the one configured", spec->name,
                        c->posix.shm_name);
                r = -EINVAL;
                goto fail;
        }
        c->adopted = true;
        r = adopt_perms(c, spec, state, msg, msg_size);
        if (r < 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        /* Not taken over: the files stay as they were, for reclaim to judge. */
        channel_forget(c);
        return r;
}
