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
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>

#include "common/util.h"
#include "common/semun.h"
#include "daemon/channel.h"
#include "daemon/ipc-stat.h"
#include "daemon/self.h"
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

static void id_to_name_uncached(uint32_t id, bool group, char *buf, size_t size) {
        if (group) {
                struct group *g = getgrgid(id);

                if (g && strlen(g->gr_name) < size) {
                        strcpy(buf, g->gr_name);
                        return;
                }
        } else {
                struct passwd *p = getpwuid(id);

                if (p && strlen(p->pw_name) < size) {
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
 * Remove the objects, and forget in the state file only those that are gone:
 * one that could not be removed stays recorded, so the next start removes
 * it (and the file is kept at exit, see daemon_done()).
 */
static void remove_objects(Channel *c, State *state) {
        StateRecord recs[CHANNEL_RECORDS];

        channel_records(c, recs);
        /* No longer a channel to adopt; the objects stay recorded until they are gone. */
        if (state && c->shm_id >= 0)
                (void) state_cancel(state, &recs[2]);
        /*
         * Clients keep their mapping of a removed segment, and its futexes: tell
         * them through the header, and wake its sleepers, before it goes. Ours to
         * write only while it still carries the header this daemon wrote.
         */
        if (c->addr && c->spec.layout == PROTO_LAYOUT_RING && ring_header_is_ours(c->addr))
                ring_mark_removed(c->addr);
        /* IPC_RMID while still attached: our attachment keeps the id ours until then. */
        if (c->shm_id >= 0) {
                if (rmid_done(shmctl(c->shm_id, IPC_RMID, NULL)) && state)
                        (void) state_cancel(state, &recs[0]);
                c->shm_id = -1;
        }
        if (c->addr) {
                shmdt(c->addr);
                c->addr = NULL;
        }
        /* A set removed behind our back may have given its id to someone else. */
        if (c->sem_id >= 0) {
                int ours = ipc_is_ours(c->sem_id, c->key, false);
                bool gone = ours == 1 ? rmid_done(semctl(c->sem_id, 0, IPC_RMID)) : ours == 0 || ours == -ENOENT;

                if (gone && state)
                        (void) state_cancel(state, &recs[1]);
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
                { .kind = STATE_SHM, .key = key, .id = -1, .pending = true, .pid = getpid(), .since = since,
                  .size = s->size },
                { .kind = STATE_SEM, .key = key, .id = -1, .pending = true, .pid = getpid(), .since = since,
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
                StateRecord ids[3];

                c->made_pid = getpid();
                c->made_since = since;
                channel_records(c, ids);

                /* The ids cover the objects from now on; the intents would only be checked again at every restart. */
                r = state_append_records(state, ids, 3, intents, 2);
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

int channel_set_perms(Channel *c, uid_t uid, gid_t gid, mode_t mode) {
        /* IPC_SET reads only uid, gid and mode: no IPC_STAT needed first. */
        struct shmid_ds shm = { .shm_perm = { .uid = uid, .gid = gid, .mode = mode & 0777 } };
        struct semid_ds sem = {};

        sem.sem_perm.uid = uid;
        sem.sem_perm.gid = gid;
        sem.sem_perm.mode = mode & 0777;
        /* The set first: once the segment's uid changes we may no longer be its owner. */
        if (semctl(c->sem_id, 0, IPC_SET, &sem) < 0 || shmctl(c->shm_id, IPC_SET, &shm) < 0)
                return -errno;
        c->spec.uid = uid;
        c->spec.gid = gid;
        c->spec.mode = mode & 0777;
        id_to_name(uid, false, c->owner, sizeof c->owner);
        id_to_name(gid, true, c->group, sizeof c->group);
        return 0;
}

static int channel_new(const ChannelSpec *spec, Channel **ret) {
        Channel *c = calloc(1, sizeof *c);

        if (!c)
                return -ENOMEM;
        c->spec = *spec;
        c->spec.sem_values = memdup(spec->sem_values, spec->nsems * sizeof *spec->sem_values);
        if (!c->spec.sem_values) {
                free(c);
                return -ENOMEM;
        }
        c->shm_id = c->sem_id = -1;
        *ret = c;
        return 0;
}

int channel_create(const ChannelSpec *spec, const uint32_t *fixed_keys, size_t n_fixed, State *state,
                   Channel **ret, char *msg, size_t msg_size) {
        Channel *c = NULL;
        union semun arg;
        int r;

        r = channel_new(spec, &c);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": out of memory", spec->name);
                return r;
        }

        if (spec->has_key) {
                r = try_key(c, spec->key, state, msg, msg_size);
                if (r == -EEXIST)
                        msg_set(msg, msg_size,
                                "channel \"%s\": key 0x%08" PRIx32 " is already held by an object this daemon did not create; "
                                "it is left untouched (remove it with ipcrm, or choose another \"key\")",
                                spec->name, spec->key);
        } else {
                r = -EEXIST;
                for (unsigned i = 0; i < CHANNEL_DERIVED_KEY_ATTEMPTS && r == -EEXIST; i++) {
                        uint32_t key = channel_derive_key(state_secret(state), spec->name, i);

                        if (fixed_keys && bsearch(&key, fixed_keys, n_fixed, sizeof key, cmp_u32))
                                continue;
                        r = try_key(c, key, state, msg, msg_size);
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
        /* A fresh segment is zero-filled by the kernel: what ring_format() expects. */
        if (spec->layout == PROTO_LAYOUT_RING)
                ring_format(c->addr, spec->slot_size, spec->slots);
        r = channel_set_perms(c, spec->uid, spec->gid, spec->mode);
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

static int check_set(const Channel *c) {
        int r = ipc_is_ours(c->sem_id, c->key, false);

        if (r == 0 || r == -ENOENT)
                return -EIDRM;
        return r < 0 ? r : 0;
}

/* The check, handing back the segment's IPC_STAT it made on the way. */
static int check_objects(const Channel *c, struct shmid_ds *ret_shm) {
        int r = check_segment(c, ret_shm);

        return r < 0 ? r : check_set(c);
}

int channel_check(const Channel *c) {
        struct shmid_ds shm;

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
        /* The remains go first: the key must be free again. */
        *c = channel_free(*c, state);
        /* Same key as before: clients and admins keep finding it where it was. */
        spec.has_key = true;
        spec.key = key;
        r = channel_create(&spec, NULL, 0, state, &fresh, msg, msg_size);
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
                .mode = c->spec.mode,
        };
        strcpy(ret->name, c->spec.name);
        strcpy(ret->owner, c->owner);
        strcpy(ret->group, c->group);
}

/* Every semaphore's value, waiters and last pid. All need read permission on the set. */
static int read_semaphores(const Channel *c, ProtoSemaphore **ret) {
        _cleanup_(freep) ProtoSemaphore *sems = NULL;
        _cleanup_(freep) unsigned short *values = NULL;
        union semun arg;

        values = calloc(c->spec.nsems, sizeof *values);
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
                sems[i] = (ProtoSemaphore) { .value = values[i], .ncount = ncnt, .zcount = zcnt, .pid = pid };
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

int channel_stat(const Channel *c, ProtoChannel *ret) {
        ProtoSemaphore *sems = NULL;
        struct shmid_ds shm;
        int r;

        channel_describe(c, ret);
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
        r = check_set(c);
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

void channel_records(const Channel *c, StateRecord ret[CHANNEL_RECORDS]) {
        ret[0] = (StateRecord) { .kind = STATE_SHM, .key = c->key, .id = c->shm_id, .pid = c->made_pid,
                                 .since = c->made_since, .size = c->spec.size };
        ret[1] = (StateRecord) { .kind = STATE_SEM, .key = c->key, .id = c->sem_id, .pid = c->made_pid,
                                 .since = c->made_since, .size = c->spec.nsems };
        ret[2] = (StateRecord) { .kind = STATE_CHAN, .key = c->key, .id = c->shm_id, .sem_id = c->sem_id,
                                 .fingerprint = channel_spec_fingerprint(&c->spec) };
        strcpy(ret[2].name, c->spec.name);
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
}

int channel_adopt(const ChannelSpec *spec, const StateRecord *shm, const StateRecord *sem, Channel **ret, char *msg,
                  size_t msg_size) {
        Channel *c = NULL;
        const RingHeader *h;
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
         * A ring is only taken over with the header this daemon wrote (its layout
         * version, its holder table where this build keeps it), still live (a run
         * killed between marking it removed and removing it had given it up):
         * anything else is made anew.
         */
        h = c->addr;
        if (spec->layout == PROTO_LAYOUT_RING &&
            (!ring_header_is_ours(h) || h->slot_size != spec->slot_size || h->slots != spec->slots ||
             h->data_offset != RING_DATA_OFFSET || h->holders != RING_HOLDERS ||
             h->holders_offset != RING_HOLDERS_OFFSET || ring_is_removed(h))) {
                msg_set(msg, msg_size, "channel \"%s\": the ring header of segment %d is not the one configured",
                        spec->name, shm->id);
                r = -EINVAL;
                goto fail;
        }
        c->shm_id = shm->id;
        c->sem_id = sem->id;
        c->adopted = true;
        /* The config's owner, group and mode, as a reload would apply them: nobody holds it yet. */
        r = channel_set_perms(c, spec->uid, spec->gid, spec->mode);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot set owner %u, group %u, mode %04o: %s", spec->name,
                        (unsigned) spec->uid, (unsigned) spec->gid, (unsigned) spec->mode, strerror(-r));
                goto fail;
        }
        *ret = c;
        return 0;
fail:
        /* Not taken over: the objects stay as they were, for reclaim to judge. */
        channel_forget(c);
        return r;
}

Channel *channel_forget(Channel *c) {
        if (!c)
                return NULL;
        if (c->addr)
                shmdt(c->addr);
        free(c->spec.sem_values);
        free(c);
        return NULL;
}
