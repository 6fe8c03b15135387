/* Admin requests: list, status and reload, returned as plain C structs. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/shmbroker-internal.h"

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

static int channels_call(shmb_client *c, const ProtoRequest *req, shmb_channel_status **ret, size_t *ret_n) {
        shmb_channel_status *v;
        ProtoResponse res;
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = client_call(c, req, &res);
        if (r < 0)
                return r;
        v = calloc(res.n_channels ?: 1, sizeof *v);
        if (!v) {
                proto_response_done(&res);
                return -ENOMEM;
        }
        for (size_t i = 0; i < res.n_channels; i++) {
                r = status_from_proto(&res.channels[i], &v[i]);
                if (r < 0) {
                        shmb_status_free(v, i + 1);
                        proto_response_done(&res);
                        return r;
                }
        }
        *ret = v;
        *ret_n = res.n_channels;
        proto_response_done(&res);
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

void shmb_status_free(shmb_channel_status *v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++) {
                free(v[i].semaphores);
                free(v[i].clients);
        }
        free(v);
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
