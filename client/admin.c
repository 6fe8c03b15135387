/*
 * Admin requests: list, status and reload, handed out as opaque answers.
 *
 * An answer keeps the decoded channels (or names) of the broker's reply as
 * they are, and the getters read them: nothing is copied, and a field the
 * wire gains later is a new getter, not a new struct layout. The one
 * translation is of semaphore numbers: the wire counts and lists the
 * kernel's whole set, the library counts and indexes the caller's
 * semaphores only, as shmb_open() does (layout_reserved_nsems()).
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client/shmbroker-internal.h"
#include "common/util.h"

struct shmb_status_list {
        size_t n;
        ProtoChannel *channels;         /* the answer's, as decoded; freed with proto_channel_done() */
};

struct shmb_reload_result {
        ProtoReloadResult names;        /* NULL-terminated arrays, never NULL themselves */
};

static int channels_call(shmb_client *c, const ProtoRequest *req, shmb_status_list **ret) {
        shmb_status_list *l;
        ProtoResponse res;
        int r;

        if (!c || !ret)
                return -EINVAL;
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        r = client_call(c, req, &res);
        if (r < 0) {
                free(l);
                return r;
        }
        /* Take the decoded channels over: the answer is the list. */
        l->n = res.n_channels;
        l->channels = TAKE_PTR(res.channels);
        res.n_channels = 0;
        proto_response_done(&res);
        *ret = l;
        return 0;
}

int shmb_list(shmb_client *c, shmb_status_list **ret) {
        ProtoRequest req = { .op = PROTO_OP_LIST };

        return channels_call(c, &req, ret);
}

int shmb_status(shmb_client *c, const char *name, shmb_status_list **ret) {
        ProtoRequest req = { .op = PROTO_OP_STATUS };

        if (name) {
                if (!proto_name_is_valid(name))
                        return -EINVAL;
                strcpy(req.channel, name);
                req.has_channel = true;
        }
        return channels_call(c, &req, ret);
}

void shmb_status_free(shmb_status_list *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++)
                proto_channel_done(&l->channels[i]);
        free(l->channels);
        free(l);
}

/* Entry i, or NULL for a NULL list or an i out of range: what every getter checks first. */
static const ProtoChannel *entry(const shmb_status_list *l, size_t i) {
        return l && i < l->n ? &l->channels[i] : NULL;
}

/* The layout's own semaphores, capped at the set: a malformed answer must not make nsems wrap. */
static unsigned entry_reserved(const ProtoChannel *pc) {
        return MIN(layout_reserved_nsems(pc->layout), pc->nsems);
}

size_t shmb_status_count(const shmb_status_list *l) {
        return l ? l->n : 0;
}

/*
 * The getters that hand a field of entry i out as the answer has it, or
 * `none` for a NULL list or an i out of range: one line each.
 */
#define STATUS_FIELD(type, field, none)                                         \
        type shmb_status_##field(const shmb_status_list *l, size_t i) {        \
                const ProtoChannel *pc = entry(l, i);                           \
                                                                                \
                return pc ? pc->field : (none);                                 \
        }

STATUS_FIELD(const char *, name, NULL)
STATUS_FIELD(uint64_t, size, 0)
STATUS_FIELD(uint32_t, shm_key, 0)
STATUS_FIELD(uint32_t, sem_key, 0)
STATUS_FIELD(uint32_t, slot_size, 0)
STATUS_FIELD(uint32_t, slots, 0)
STATUS_FIELD(const char *, owner, NULL)
STATUS_FIELD(const char *, group, NULL)
STATUS_FIELD(uint64_t, nattch, 0)
STATUS_FIELD(pid_t, cpid, 0)
STATUS_FIELD(pid_t, lpid, 0)
STATUS_FIELD(int64_t, atime, 0)
STATUS_FIELD(int64_t, dtime, 0)
STATUS_FIELD(int64_t, ctime, 0)

int shmb_status_layout(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return pc ? (int) layout_from_proto(pc->layout) : -EINVAL;
}

unsigned shmb_status_nsems(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return pc ? pc->nsems - entry_reserved(pc) : 0;
}

unsigned shmb_status_reserved_nsems(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return pc ? entry_reserved(pc) : 0;
}

int shmb_status_shm_id(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return !pc ? -EINVAL : pc->kind == PROTO_KIND_POSIX ? -EOPNOTSUPP : pc->shm_id;
}

int shmb_status_sem_id(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return !pc ? -EINVAL : pc->kind == PROTO_KIND_POSIX ? -EOPNOTSUPP : pc->sem_id;
}

int shmb_status_kind(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return !pc ? -EINVAL : pc->kind == PROTO_KIND_POSIX ? SHMB_KIND_POSIX : SHMB_KIND_SYSV;
}

const char *shmb_status_shm_name(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return pc && pc->kind == PROTO_KIND_POSIX ? pc->shm_name : NULL;
}

const char *shmb_status_sem_name(const shmb_status_list *l, size_t i, unsigned idx) {
        const ProtoChannel *pc = entry(l, i);

        if (!pc || pc->kind != PROTO_KIND_POSIX || !pc->sem_names || idx >= pc->nsems - entry_reserved(pc))
                return NULL;
        return pc->sem_names[entry_reserved(pc) + idx];
}

int shmb_status_mode(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return pc ? (int) pc->mode : -EINVAL;
}

/* Semaphore k of the kernel's set, whichever getter's numbering it came from. */
static int set_semaphore(const ProtoChannel *pc, unsigned k, int *ret_value, int *ret_ncount, int *ret_zcount,
                         pid_t *ret_pid) {
        const ProtoSemaphore *s;

        /* A list answer, or a set the broker could not read (or a short answer): no figures to give. */
        if (k >= pc->n_semaphores)
                return -ENODATA;
        s = &pc->semaphores[k];
        if (ret_value)
                *ret_value = s->value;
        /* A POSIX semaphore has a value only: the others are "not known", never a made-up 0. */
        if (ret_ncount)
                *ret_ncount = s->has_counts ? s->ncount : -1;
        if (ret_zcount)
                *ret_zcount = s->has_counts ? s->zcount : -1;
        if (ret_pid)
                *ret_pid = s->has_counts ? s->pid : 0;
        return 0;
}

int shmb_status_semaphore(const shmb_status_list *l, size_t i, unsigned idx,
                          int *ret_value, int *ret_ncount, int *ret_zcount, pid_t *ret_pid) {
        const ProtoChannel *pc = entry(l, i);

        if (!pc || idx >= pc->nsems - entry_reserved(pc))
                return -EINVAL;
        return set_semaphore(pc, entry_reserved(pc) + idx, ret_value, ret_ncount, ret_zcount, ret_pid);
}

int shmb_status_reserved_semaphore(const shmb_status_list *l, size_t i, unsigned idx,
                                   int *ret_value, int *ret_ncount, int *ret_zcount, pid_t *ret_pid) {
        const ProtoChannel *pc = entry(l, i);

        if (!pc || idx >= entry_reserved(pc))
                return -EINVAL;
        return set_semaphore(pc, idx, ret_value, ret_ncount, ret_zcount, ret_pid);
}

size_t shmb_status_nclients(const shmb_status_list *l, size_t i) {
        const ProtoChannel *pc = entry(l, i);

        return pc ? pc->n_clients : 0;
}

int shmb_status_client(const shmb_status_list *l, size_t i, size_t k,
                       pid_t *ret_pid, uid_t *ret_uid, shmb_access *ret_access, int64_t *ret_since) {
        const ProtoChannel *pc = entry(l, i);
        const ProtoClient *h;

        if (!pc || k >= pc->n_clients)
                return -EINVAL;
        h = &pc->clients[k];
        if (ret_pid)
                *ret_pid = h->pid;
        if (ret_uid)
                *ret_uid = h->uid;
        if (ret_access)
                *ret_access = h->access == PROTO_ACCESS_RO ? SHMB_RO : SHMB_RW;
        if (ret_since)
                *ret_since = h->since;
        return 0;
}

int shmb_status_error(const shmb_status_list *l, size_t i, const char **ret_message) {
        const ProtoChannel *pc = entry(l, i);

        if (!pc)
                return -EINVAL;
        if (ret_message)
                *ret_message = pc->error ? pc->message : NULL;
        return -pc->error;
}

int shmb_reload(shmb_client *c, shmb_reload_result **ret) {
        ProtoRequest req = { .op = PROTO_OP_RELOAD };
        shmb_reload_result *rr;
        ProtoResponse res;
        int r;

        if (!c || !ret)
                return -EINVAL;
        rr = calloc(1, sizeof *rr);
        if (!rr)
                return -ENOMEM;
        r = client_call(c, &req, &res);
        if (r < 0) {
                free(rr);
                return r;
        }
        /* The decoder made every array (an answer without one is malformed): hand them over. */
        rr->names = res.reload;
        res.reload = (ProtoReloadResult) {};
        proto_response_done(&res);
        *ret = rr;
        return 0;
}

const char *const *shmb_reload_result_added(const shmb_reload_result *r) {
        return r ? (const char *const *) r->names.added : NULL;
}

const char *const *shmb_reload_result_removed(const shmb_reload_result *r) {
        return r ? (const char *const *) r->names.removed : NULL;
}

const char *const *shmb_reload_result_changed(const shmb_reload_result *r) {
        return r ? (const char *const *) r->names.changed : NULL;
}

const char *const *shmb_reload_result_kept(const shmb_reload_result *r) {
        return r ? (const char *const *) r->names.kept : NULL;
}

void shmb_reload_result_free(shmb_reload_result *r) {
        if (!r)
                return;
        proto_reload_result_done(&r->names);
        free(r);
}
