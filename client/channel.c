/*
 * Opening a channel: ask the broker, attach the segment by id, then make
 * sure the ids name the objects the broker meant (key and size of the
 * segment, key and count of the set, via IPC_STAT).
 *
 * They may not, for two reasons that call for different fixes. A reload may
 * have replaced (or removed) the channel between the broker's answer and
 * our shmat(): the ids are stale, and the channel has new ones. Or this
 * process is in another IPC namespace than the broker: the ids mean nothing
 * here, or name someone else's objects. The broker tells them apart: asked
 * again on the same connection, it answers with new ids after a
 * replacement (we try those), with a refusal when the channel is gone or
 * our rights are (that is the answer), and with the very same ids when it
 * still sees objects that we do not: only then -EXDEV. So a race with a
 * reload never shows as -EXDEV, and a wrong mapping is never returned.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>

#include "client/shmbroker-internal.h"
#include "proto/broadcast.h"
#include "common/semun.h"
#include "common/util.h"

/* A documented outcome of attach_once(), not an error: the ids name no object here, or another one. */
#define ATTACH_STALE 1

/*
 * How often an open asks again after its ids went stale. Each new answer
 * means another reload replaced the channel in the meantime; a few in a row
 * is already an admin reloading in a loop, reported as -EIDRM.
 */
#define OPEN_RETRIES 3

/* shmat(), shmctl() or semctl() by id failed: EINVAL and EIDRM say no such object (any more); the rest is passed on. */
static int id_error(void) {
        return errno == EINVAL || errno == EIDRM ? ATTACH_STALE : -errno;
}

/*
 * The objects of ch->info must be the ones the broker meant. Checked after
 * shmat(): the segment we are attached to cannot change identity any more
 * (once removed, it loses its key, which shows here). The set is checked
 * too, so that an open that succeeds hands out a consistent pair; a set
 * removed after this shows as -EIDRM on the first semaphore operation.
 */
static int verify_objects(const shmb_channel *ch) {
        struct shmid_ds shm;
        struct semid_ds sem;
        union semun arg = { .buf = &sem };

        if (shmctl(ch->info.shm_id, IPC_STAT, &shm) < 0)
                return id_error();
        if ((uint32_t) shm.shm_perm.__key != ch->info.shm_key || shm.shm_segsz != ch->info.size)
                return ATTACH_STALE;
        if (semctl(ch->info.sem_id, 0, IPC_STAT, arg) < 0)
                return id_error();
        if ((uint32_t) sem.sem_perm.__key != ch->info.sem_key || sem.sem_nsems != ch->info.set_nsems)
                return ATTACH_STALE;
        return 0;
}

/* Attach and check what ch->info describes: 0, ATTACH_STALE (then nothing is left attached), or a negative errno. */
static int attach_once(shmb_channel *ch) {
        int r;

        ch->addr = shmat(ch->info.shm_id, NULL, ch->access == SHMB_RO ? SHM_RDONLY : 0);
        if (ch->addr == (void *) -1) {
                ch->addr = NULL;
                return id_error();
        }
        r = verify_objects(ch);
        if (r != 0) {
                (void) shmdt(ch->addr);
                ch->addr = NULL;
        }
        return r;
}

/*
 * Fault a large ring's or broadcast channel's pages in now, at open, rather
 * than on the first lap of messages (MADV_POPULATE_WRITE, or _READ for a
 * subscriber's read-only mapping; Linux 5.14; where they are missing, the
 * first lap pays as before). One call maps them all without a fault each,
 * and a fault costs ~10 us on the guests measured: a subscriber's first lap
 * of a 4 MiB channel took 1024 of them, with the publisher held up behind
 * it in block mode. A small channel faults in quickly anyway, and
 * prefaulting it would only slow every open down; a huge one is capped.
 * Pages nobody wrote yet are allocated by this, and charged to the
 * opener's memory cgroup, as its first lap would have; a failure is
 * ignored (the first lap then faults).
 */
#define PREFAULT_MIN (1u << 20)
#define PREFAULT_MAX (256u << 20)

static void prefault(shmb_channel *ch) {
#if defined(MADV_POPULATE_WRITE) && defined(MADV_POPULATE_READ)
        if (ch->info.size >= PREFAULT_MIN)
                (void) madvise(ch->addr, MIN(ch->info.size, (uint64_t) PREFAULT_MAX),
                               ch->access == SHMB_RW ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#endif
}

void client_set_message(shmb_client *c, const char *fmt, ...) {
        va_list ap;

        /* Queued behind a hung broker past the bound: the open fails all the same, unexplained. */
        if (client_lock(c) < 0)
                return;
        va_start(ap, fmt);
        vsnprintf(c->last_message, sizeof c->last_message, fmt, ap);
        va_end(ap);
        pthread_mutex_unlock(&c->lock);
}

/*
 * ring_version: the open answer's (0: it gave none). Both it and the
 * header must be the layout this library speaks: a ring of another layout
 * would be read and written wrongly, so it is refused, with a sentence.
 */
static int setup_ring(shmb_channel *ch, uint32_t ring_version) {
        const RingHeader *h = ch->addr;
        uint32_t slot_size, slots;
        int r;

        if (ring_version == 0) {
                client_set_message(ch->client, "channel \"%s\": the broker names no ring layout version (it predates "
                            "version 3); this library speaks version %d", ch->info.name, RING_VERSION);
                return -EPROTO;
        }
        if (ring_version != RING_VERSION) {
                client_set_message(ch->client, "channel \"%s\": the broker's ring layout is version %" PRIu32
                            "; this library speaks version %d", ch->info.name, ring_version, RING_VERSION);
                return -EPROTO;
        }
        /* Trust the broker's figures, and refuse a header that disagrees. */
        if (ch->info.slots == 0 || ch->info.size != ring_segment_size(ch->info.slot_size, ch->info.slots))
                return -EPROTO;
        /* A claim names its holder: a sender or receiver without a token could not be told from nobody. */
        if (ch->access == SHMB_RW && ch->hold.token == 0) {
                client_set_message(ch->client, "channel \"%s\": the broker gave no holder token for this ring",
                            ch->info.name);
                return -EPROTO;
        }
        if (h->magic == RING_MAGIC && h->version != RING_VERSION) {
                client_set_message(ch->client, "channel \"%s\": the ring header is layout version %" PRIu32
                            "; this library speaks version %d", ch->info.name, h->version, RING_VERSION);
                return -EPROTO;
        }
        slot_size = ch->info.slot_size;
        slots = ch->info.slots;
        r = ring_channel_init(ch, ch->addr, ch->info.size);
        if (r < 0)
                return r;
        /*
         * The figures the handle runs on, read once from the header there, must be the broker's: compared
         * before, the header could change in between to another split of the same size.
         */
        if (ch->info.slot_size != slot_size || ch->info.slots != slots)
                return -EPROTO;
        if (ch->access == SHMB_RW)
                prefault(ch);
        return 0;
}

unsigned layout_reserved_nsems(ProtoLayout layout) {
        return layout == PROTO_LAYOUT_RING ? RING_NSEMS : layout == PROTO_LAYOUT_BROADCAST ? BCAST_NSEMS : 0;
}

shmb_layout layout_from_proto(ProtoLayout layout) {
        return layout == PROTO_LAYOUT_RING ? SHMB_LAYOUT_RING :
               layout == PROTO_LAYOUT_BROADCAST ? SHMB_LAYOUT_BROADCAST : SHMB_LAYOUT_RAW;
}

/* nsems is left for attach() to set, once it knows the set has the layout's own semaphores. */
static void info_from_proto(const ProtoChannel *pc, ChannelInfo *ret) {
        *ret = (ChannelInfo) {
                .kind = pc->kind,
                .layout = layout_from_proto(pc->layout),
                .size = pc->size,
                .set_nsems = pc->nsems,
                .shm_key = pc->shm_key,
                .sem_key = pc->sem_key,
                .shm_id = pc->shm_id,
                .sem_id = pc->sem_id,
                .slot_size = pc->slot_size,
                .slots = pc->slots,
        };
        snprintf(ret->name, sizeof ret->name, "%s", pc->name);
        snprintf(ret->shm_name, sizeof ret->shm_name, "%s", pc->kind == PROTO_KIND_POSIX ? pc->shm_name : "");
}

/*
 * Detach, give the hold back and free. keep_message: the close leaves the
 * connection's last message alone. The connection decides whether the hold
 * goes (not while another handle of the name needs it, nor for a stale
 * handle, whose name is another channel's now).
 */
static int channel_free(shmb_channel *ch, bool keep_message) {
        int r = 0;

        if (!ch)
                return 0;
        bcast_channel_free(ch);
        ring_end_left_claims(ch);
        free(ch->zc_claims);
        if (ch->info.kind == PROTO_KIND_POSIX)
                posix_unmap(ch);
        else if (ch->addr && shmdt(ch->addr) < 0)
                r = -errno;
        channel_wake_free(ch);
        if (ch->client)
                client_hold_remove(ch->client, &ch->hold, true, keep_message);
        client_unref(ch->client);
        free(ch);
        return r;
}

/*
 * Attach what the broker's open answer describes, into ch (allocated before
 * the request, so that nothing can fail between the broker granting a hold
 * and ch recording it: on failure the hold is given back). `req` is the open
 * request, to ask again when the ids went stale (see the top of this file).
 * Takes ch and the answer; *ret is set only on success.
 */
static int attach(shmb_channel *ch, shmb_client *c, const ProtoRequest *req, ProtoResponse *res, ClientFds *fds,
                  shmb_access access, shmb_channel **ret) {
        uint32_t ring_version = 0;
        ProtoChannel opened;            /* the answer's figures, for a broadcast channel (its arrays are not used) */
        struct stat st = {};
        int r;

        ch->access = access;
        ch->client = c;
        client_ref(c);
        for (unsigned attempt = 0;; attempt++) {
                info_from_proto(&res->channels[0], &ch->info);
                ch->sem_base = layout_reserved_nsems(res->channels[0].layout);
                opened = res->channels[0];
                ring_version = res->channels[0].ring_version;
                /* Taken from the answer; an answer asked again (a replaced channel) names the same. */
                if (!ch->wake && res->channels[0].wake_fifos[0] &&
                    (res->channels[0].layout == PROTO_LAYOUT_RING || res->channels[0].layout == PROTO_LAYOUT_BROADCAST)) {
                        r = channel_wake_new(ch, res->channels[0].wake_fifos);
                        res->channels[0].wake_fifos[0] = res->channels[0].wake_fifos[1] = NULL;
                        if (r < 0) {
                                proto_response_done(res);
                                goto fail;
                        }
                }
                __atomic_store_n(&ch->hold.token, res->channels[0].holder, __ATOMIC_RELAXED);
                /* The descriptors are the objects themselves: nothing can have gone stale in between. */
                if (res->channels[0].kind == PROTO_KIND_POSIX) {
                        r = posix_map(ch, &res->channels[0], fds);
                        if (r == 0 && fstat(ch->shm_fd, &st) < 0)
                                r = -errno;
                        proto_response_done(res);
                        break;
                }
                proto_response_done(res);
                r = attach_once(ch);
                if (r <= 0)
                        break;
                if (attempt == OPEN_RETRIES) {
                        r = -EIDRM;     /* replaced again each time we asked */
                        break;
                }
                /* With its descriptors: the channel of that name may be a posix one now. */
                client_fds_close(fds);
                r = client_call_fds(c, req, res, 1, fds);
                if (r < 0)
                        break;  /* ENOENT: removed meanwhile; EACCES: our rights went with the old objects */
                if (res->channels[0].shm_id == ch->info.shm_id && res->channels[0].sem_id == ch->info.sem_id) {
                        proto_response_done(res);
                        r = -EXDEV;     /* the broker sees these objects and we do not */
                        break;
                }
        }
        if (r < 0)
                goto fail;
        /* The layout's own semaphores are not the caller's: its index 0 is the first after them. */
        if (ch->info.set_nsems < ch->sem_base) {
                r = -EPROTO;
                goto fail;
        }
        ch->info.nsems = ch->info.set_nsems - ch->sem_base;
        if (ch->info.layout == SHMB_LAYOUT_RING) {
                r = setup_ring(ch, ring_version);
                if (r < 0)
                        goto fail;
        } else if (ch->info.layout == SHMB_LAYOUT_BROADCAST) {
                r = bcast_channel_setup(ch, &opened);
                if (r < 0)
                        goto fail;
                prefault(ch);
        }
        /* From now on a reconnection compares the broker's ids with these. */
        client_hold_attached(&ch->hold, ch->info.kind, ch->info.shm_id, ch->info.sem_id, st.st_dev, st.st_ino);
        client_fds_close(fds);
        *ret = ch;
        return 0;
fail:
        client_fds_close(fds);
        /* Detach and give the hold back, keeping the message that says why the open failed. */
        channel_free(ch, true);
        return r;
}

static shmb_channel *channel_new(void) {
        shmb_channel *ch = calloc(1, sizeof *ch);

        if (ch)
                ch->shm_fd = ch->table_fd = -1;
        return ch;
}

int client_open_request(const char *name, shmb_access access, ProtoRequest *ret) {
        if ((access != SHMB_RW && access != SHMB_RO) || !proto_name_is_valid(name))
                return -EINVAL;
        /*
         * Always "fd": a posix channel is mapped from the descriptors the
         * broker hands over (client/posix-map.c says why never by name), and
         * the kind is not known before the answer; a System V channel has
         * none to give, and the broker ignores it there.
         */
        *ret = (ProtoRequest) { .op = PROTO_OP_OPEN, .access = access == SHMB_RO ? PROTO_ACCESS_RO : PROTO_ACCESS_RW,
                                .fd = true };
        strcpy(ret->channel, name);
        return 0;
}

int shmb_open(shmb_client *c, const char *name, shmb_access access, shmb_channel **ret) {
        ProtoRequest req;
        ProtoResponse res;
        ClientFds fds;
        shmb_channel *ch;
        uint64_t asked = client_now_ms();       /* before the hold's add, which may wait behind a hung call */
        int r;

        if (!c || !ret)
                return -EINVAL;
        r = client_open_request(name, access, &req);
        if (r < 0)
                return r;
        ch = channel_new();
        if (!ch)
                return -ENOMEM;
        /* Listed before the request: a reconnection meanwhile opens it again too. */
        r = client_hold_add(c, &ch->hold, name, access);
        if (r < 0) {
                free(ch);
                return r;
        }
        r = client_open_call(c, &ch->hold, &req, &res, &fds, asked);
        if (r < 0) {
                free(ch);
                return r;
        }
        return attach(ch, c, &req, &res, &fds, access, ret);
}

int shmb_open_channel(const char *socket_path, const char *name, shmb_access access, shmb_channel **ret) {
        ProtoRequest reqs[2] = { { .op = PROTO_OP_HELLO, .version = PROTO_VERSION } };
        ProtoResponse res[2];
        ClientFds fds[2];
        _cleanup_(freep) shmb_channel *ch = NULL;
        shmb_client *c;
        int r;

        client_keep_refusal(NULL);      /* no sentence of an earlier call for a failure that has none */
        if (!ret)
                return -EINVAL;
        r = client_open_request(name, access, &reqs[1]);
        if (r < 0)
                return r;
        ch = channel_new();
        if (!ch)
                return -ENOMEM;
        r = client_connect(socket_path, &c);
        if (r < 0)
                return r;
        /* hello and open in one round trip: the version check costs no extra wait. */
        r = client_hold_add(c, &ch->hold, name, access);
        if (r == 0)
                r = client_call_fds(c, reqs, res, 2, fds);
        if (r == 0) {
                r = client_check_hello(&res[0]);
                proto_response_done(&res[0]);
                client_fds_close(&fds[0]);
                if (r == 0)
                        r = attach(TAKE_PTR(ch), c, &reqs[1], &res[1], &fds[1], access, ret);
                else {
                        proto_response_done(&res[1]);
                        client_fds_close(&fds[1]);
                }
        }
        /* Not handed to attach(): unlisted here (the hold goes with the connection). */
        if (ch)
                client_hold_remove(c, &ch->hold, false, false);
        /* The connection goes with the failure, its sentence is kept (shmb_client_last_message(NULL)). */
        client_keep_refusal(r < 0 ? c : NULL);
        /* The channel keeps its own reference; the connection lives as long as it. */
        client_unref(c);
        return r;
}

int shmb_close(shmb_channel *ch) {
        return channel_free(ch, false);
}

int shmb_channel_set_spin(shmb_channel *ch, unsigned spin_us) {
        if (!ch)
                return -EINVAL;
        /* Capped, so the budget in nanoseconds (and twice it) fits 32 bits. */
        __atomic_store_n(&ch->spin_us, MIN(spin_us, SHMB_SPIN_MAX_US), __ATOMIC_RELAXED);
        return 0;
}

void *shmb_channel_addr(const shmb_channel *ch) {
        return ch ? ch->addr : NULL;
}

const char *shmb_channel_name(const shmb_channel *ch) {
        return ch ? ch->info.name : NULL;
}

int shmb_channel_layout(const shmb_channel *ch) {
        return ch ? (int) ch->info.layout : -EINVAL;
}

int shmb_channel_access(const shmb_channel *ch) {
        return ch ? (int) ch->access : -EINVAL;
}

size_t shmb_channel_size(const shmb_channel *ch) {
        return ch ? (size_t) ch->info.size : 0;
}

unsigned shmb_channel_nsems(const shmb_channel *ch) {
        return ch ? ch->info.nsems : 0;
}

uint32_t shmb_channel_shm_key(const shmb_channel *ch) {
        return ch ? ch->info.shm_key : 0;
}

int shmb_channel_shm_id(const shmb_channel *ch) {
        return !ch ? -EINVAL : ch->info.kind == PROTO_KIND_POSIX ? -EOPNOTSUPP : ch->info.shm_id;
}

uint32_t shmb_channel_sem_key(const shmb_channel *ch) {
        return ch ? ch->info.sem_key : 0;
}

int shmb_channel_sem_id(const shmb_channel *ch) {
        return !ch ? -EINVAL : ch->info.kind == PROTO_KIND_POSIX ? -EOPNOTSUPP : ch->info.sem_id;
}

int shmb_channel_kind(const shmb_channel *ch) {
        return !ch ? -EINVAL : ch->info.kind == PROTO_KIND_POSIX ? SHMB_KIND_POSIX : SHMB_KIND_SYSV;
}

const char *shmb_channel_shm_name(const shmb_channel *ch) {
        return ch && ch->info.kind == PROTO_KIND_POSIX ? ch->info.shm_name : NULL;
}

uint32_t shmb_channel_slot_size(const shmb_channel *ch) {
        return ch ? ch->info.slot_size : 0;
}

uint32_t shmb_channel_slots(const shmb_channel *ch) {
        return ch ? ch->info.slots : 0;
}

shmb_client *shmb_channel_get_client(const shmb_channel *ch) {
        return ch ? ch->client : NULL;
}

int channel_check_gone(shmb_channel *ch) {
        /* Relaxed: a wait on another thread that reads an older time only asks once more. */
        __atomic_store_n(&ch->gone_checked_ns, client_now_ns(), __ATOMIC_RELAXED);
        if (shmb_channel_check(ch) != -EIDRM)
                return 0;
        __atomic_store_n(&ch->hold.gone, true, __ATOMIC_RELEASE);
        return -EIDRM;
}

int shmb_channel_check(const shmb_channel *ch) {
        struct shmid_ds ds;

        if (!ch)
                return -EINVAL;
        /* The library learned it on reconnecting (the broker's channel of that name is another one), or a wait did. */
        if (channel_gone(ch))
                return -EIDRM;
        /* A ring says so itself, without a system call: the broker marks it before removing it. */
        if (ch->ring && ring_is_removed(ch->ring))
                return -EIDRM;
        if (ch->bcast && bcast_channel_removed(ch))
                return -EIDRM;
        if (ch->info.kind == PROTO_KIND_POSIX)
                return posix_removed(ch) ? -EIDRM : 0;
        /* The kernel knows it before the broker is back: a removed segment that is still attached
         * loses its key and is marked for destruction; once detached by all, its id names nothing. */
        if (shmctl(ch->info.shm_id, IPC_STAT, &ds) < 0)
                return errno == EINVAL || errno == EIDRM ? -EIDRM : -errno;
        if ((ds.shm_perm.mode & SHM_DEST) || (uint32_t) ds.shm_perm.__key != ch->info.shm_key)
                return -EIDRM;
        return 0;
}
