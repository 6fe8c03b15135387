/* Admin requests: list, status and reload, returned as plain C structs. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/shmbroker-internal.h"

/*
 * What shmb_list() and shmb_status() hand out: the caller sees v only. The
 * per-entry errors live in front of it, so that shmb_channel_status keeps
 * its size and layout (callers index arrays of it) and shmb_status_error()
 * finds them from the array alone.
 */
typedef struct StatusError {
        int error;                      /* positive errno; 0: the entry is complete */
        char message[PROTO_MESSAGE_MAX];
} StatusError;

typedef struct StatusArray {
        size_t n;
        StatusError *errors;            /* n entries, or NULL when no entry has an error */
        shmb_channel_status v[];
} StatusArray;

static StatusArray *status_array_of(const shmb_channel_status *v) {
        return (StatusArray *) ((char *) v - offsetof(StatusArray, v));
}

static int status_from_proto(ProtoChannel *pc, shmb_channel_status *ret) {
        *ret = (shmb_channel_status) {
                .mode = pc->mode,
                .nattch = pc->nattch,
                .cpid = pc->cpid,
                .lpid = pc->lpid,
                .atime = pc->atime,
                .dtime = pc->dtime,
                .ctime = pc->ctime,
                .n_semaphores = pc->n_semaphores,
                .n_clients = pc->n_clients,
        };
        info_from_proto(pc, &ret->info);
        snprintf(ret->owner, sizeof ret->owner, "%s", pc->owner);
        snprintf(ret->group, sizeof ret->group, "%s", pc->group);
        if (pc->n_semaphores) {
                ret->semaphores = calloc(pc->n_semaphores, sizeof *ret->semaphores);
                if (!ret->semaphores)
                        return -ENOMEM;
                for (size_t i = 0; i < pc->n_semaphores; i++)
                        ret->semaphores[i] = (shmb_semaphore_status) {
                                .value = pc->semaphores[i].value,
                                .ncount = pc->semaphores[i].ncount,
                                .zcount = pc->semaphores[i].zcount,
                                .pid = pc->semaphores[i].pid,
                        };
        }
        if (pc->n_clients) {
                ret->clients = calloc(pc->n_clients, sizeof *ret->clients);
                if (!ret->clients)
                        return -ENOMEM;
                for (size_t i = 0; i < pc->n_clients; i++)
                        ret->clients[i] = (shmb_client_status) {
                                .pid = pc->clients[i].pid,
                                .uid = pc->clients[i].uid,
                                .access = pc->clients[i].access == PROTO_ACCESS_RO ? SHMB_RO : SHMB_RW,
                                .since = pc->clients[i].since,
                        };
        }
        return 0;
}

/* Keep the entries' errors, if any has one. */
static int status_errors_from_proto(const ProtoResponse *res, StatusArray *a) {
        for (size_t i = 0; i < res->n_channels; i++) {
                const ProtoChannel *pc = &res->channels[i];

                if (!pc->error)
                        continue;
                if (!a->errors) {
                        a->errors = calloc(res->n_channels, sizeof *a->errors);
                        if (!a->errors)
                                return -ENOMEM;
                }
                a->errors[i].error = pc->error;
                memcpy(a->errors[i].message, pc->message, sizeof pc->message);
        }
        return 0;
}

static int channels_call(shmb_client *c, const ProtoRequest *req, shmb_channel_status **ret, size_t *ret_n) {
        StatusArray *a;
        ProtoResponse res;
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = client_call(c, req, &res);
        if (r < 0)
                return r;
        a = calloc(1, sizeof *a + (res.n_channels ?: 1) * sizeof *a->v);
        if (!a) {
                proto_response_done(&res);
                return -ENOMEM;
        }
        a->n = res.n_channels;
        r = status_errors_from_proto(&res, a);
        for (size_t i = 0; r == 0 && i < res.n_channels; i++)
                r = status_from_proto(&res.channels[i], &a->v[i]);
        proto_response_done(&res);
        if (r < 0) {
                shmb_status_free(a->v, a->n);
                return r;
        }
        *ret = a->v;
        *ret_n = a->n;
        return 0;
}

int shmb_list(shmb_client *c, shmb_channel_status **ret, size_t *ret_n) {
        ProtoRequest req = { .op = PROTO_OP_LIST };

        return channels_call(c, &req, ret, ret_n);
}

int shmb_status(shmb_client *c, const char *name, shmb_channel_status **ret, size_t *ret_n) {
        ProtoRequest req = { .op = PROTO_OP_STATUS };

        if (name) {
                if (!proto_name_is_valid(name))
                        return -EINVAL;
                strcpy(req.channel, name);
                req.has_channel = true;
        }
        return channels_call(c, &req, ret, ret_n);
}

int shmb_status_error(const shmb_channel_status *v, size_t i, const char **ret_message) {
        const StatusArray *a;

        if (!v)
                return -EINVAL;
        a = status_array_of(v);
        if (i >= a->n)
                return -EINVAL;
        if (!a->errors || a->errors[i].error == 0) {
                if (ret_message)
                        *ret_message = NULL;
                return 0;
        }
        if (ret_message)
                *ret_message = a->errors[i].message;
        return -a->errors[i].error;
}

void shmb_status_free(shmb_channel_status *v, size_t n) {
        StatusArray *a;

        if (!v)
                return;
        a = status_array_of(v);
        for (size_t i = 0; i < n; i++) {
                free(v[i].semaphores);
                free(v[i].clients);
        }
        free(a->errors);
        free(a);
}

int shmb_reload(shmb_client *c, shmb_reload_result *ret) {
        ProtoRequest req = { .op = PROTO_OP_RELOAD };
        ProtoResponse res;
        int r;

        if (!c || !ret)
                return -EINVAL;
        r = client_call(c, &req, &res);
        if (r < 0)
                return r;
        /* Same shape: hand the arrays over. */
        *ret = (shmb_reload_result) {
                .added = res.reload.added,
                .removed = res.reload.removed,
                .changed = res.reload.changed,
                .kept = res.reload.kept,
        };
        res.reload = (ProtoReloadResult) {};
        proto_response_done(&res);
        return 0;
}

void shmb_reload_result_free(shmb_reload_result *r) {
        ProtoReloadResult p;

        if (!r)
                return;
        p = (ProtoReloadResult) { .added = r->added, .removed = r->removed, .changed = r->changed, .kept = r->kept };
        proto_reload_result_done(&p);
        *r = (shmb_reload_result) {};
}
