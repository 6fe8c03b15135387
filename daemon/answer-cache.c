#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/answer-cache.h"

/* Field by field: the structs have padding, which memcmp() would compare. */
static bool semaphores_equal(const ProtoChannel *a, const ProtoChannel *b) {
        if (a->n_semaphores != b->n_semaphores)
                return false;
        for (size_t i = 0; i < a->n_semaphores; i++) {
                const ProtoSemaphore *x = &a->semaphores[i], *y = &b->semaphores[i];

                if (x->value != y->value || x->has_counts != y->has_counts || x->ncount != y->ncount || x->zcount != y->zcount || x->pid != y->pid)
                        return false;
        }
        return true;
}

static bool clients_equal(const ProtoChannel *a, const ProtoChannel *b) {
        if (a->n_clients != b->n_clients)
                return false;
        for (size_t i = 0; i < a->n_clients; i++) {
                const ProtoClient *x = &a->clients[i], *y = &b->clients[i];

                if (x->pid != y->pid || x->uid != y->uid || x->access != y->access || x->since != y->since)
                        return false;
        }
        return true;
}

static bool subscriptions_equal(const ProtoChannel *a, const ProtoChannel *b) {
        if (a->n_subscriptions != b->n_subscriptions)
                return false;
        for (size_t i = 0; i < a->n_subscriptions; i++) {
                const ProtoSubscription *x = &a->subscriptions[i], *y = &b->subscriptions[i];

                if (x->pid != y->pid || x->position != y->position || x->lag != y->lag || x->dropped != y->dropped)
                        return false;
        }
        return true;
}

static bool sem_names_equal(const ProtoChannel *a, const ProtoChannel *b) {
        if (!a->sem_names || !b->sem_names)
                return a->sem_names == b->sem_names;
        for (unsigned i = 0; i < a->nsems; i++)
                if (!streq(a->sem_names[i], b->sem_names[i]))
                        return false;
        return true;
}

static bool channel_equal(const ProtoChannel *a, const ProtoChannel *b) {
        return streq(a->name, b->name) && a->kind == b->kind && streq(a->shm_name, b->shm_name) &&
               streq(a->table_name, b->table_name) && a->shm_key == b->shm_key && a->shm_id == b->shm_id &&
               a->sem_key == b->sem_key && a->sem_id == b->sem_id && a->size == b->size && a->nsems == b->nsems &&
               sem_names_equal(a, b) &&
               a->layout == b->layout && a->slot_size == b->slot_size && a->slots == b->slots &&
               a->subscribers == b->subscribers && a->overflow == b->overflow && a->table_key == b->table_key &&
               a->table_id == b->table_id && subscriptions_equal(a, b) &&
               streq(a->owner, b->owner) && streq(a->group, b->group) && a->mode == b->mode &&
               a->nattch == b->nattch && a->cpid == b->cpid && a->lpid == b->lpid && a->atime == b->atime &&
               a->dtime == b->dtime && a->ctime == b->ctime && semaphores_equal(a, b) && clients_equal(a, b) &&
               a->error == b->error && a->segment_unread == b->segment_unread && streq(a->message, b->message);
}

static int channel_copy(const ProtoChannel *from, ProtoChannel *to) {
        *to = *from;
        to->semaphores = NULL;
        to->clients = NULL;
        to->subscriptions = NULL;
        to->sem_names = NULL;
        /* Only an open answer names wake-up FIFOs or descriptors, and open answers are not cached. */
        to->wake_fifos[0] = to->wake_fifos[1] = NULL;
        if (from->sem_names) {
                to->sem_names = calloc(from->nsems + 1, sizeof *to->sem_names);
                if (!to->sem_names)
                        goto fail;
                for (unsigned i = 0; i < from->nsems; i++)
                        if (!(to->sem_names[i] = strdup(from->sem_names[i])))
                                goto fail;
        }
        if (from->n_semaphores > 0) {
                to->semaphores = memdup(from->semaphores, from->n_semaphores * sizeof *from->semaphores);
                if (!to->semaphores)
                        goto fail;
        }
        if (from->n_clients > 0) {
                to->clients = memdup(from->clients, from->n_clients * sizeof *from->clients);
                if (!to->clients)
                        goto fail;
        }
        if (from->n_subscriptions > 0) {
                to->subscriptions = memdup(from->subscriptions, from->n_subscriptions * sizeof *from->subscriptions);
                if (!to->subscriptions)
                        goto fail;
        }
        return 0;
fail:
        proto_channel_done(to);
        return -ENOMEM;
}

void answer_cache_done(AnswerCache *c) {
        for (size_t i = 0; i < c->n; i++)
                proto_channel_done(&c->channels[i]);
        free(c->channels);
        free(c->line);
        *c = (AnswerCache) {};
}

static bool cache_hit(const AnswerCache *c, ProtoChannelView view, const ProtoChannel *v, size_t n) {
        if (!c->line || c->view != view || c->n != n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!channel_equal(&c->channels[i], &v[i]))
                        return false;
        return true;
}

/* Remember v and its answer; on failure the cache is left empty. */
static void cache_keep(AnswerCache *c, ProtoChannelView view, const ProtoChannel *v, size_t n,
                       const char *line, size_t len) {
        answer_cache_done(c);
        c->channels = calloc(n ?: 1, sizeof *c->channels);
        c->line = memdup(line, len + 1);       /* with its NUL, as encoded */
        if (!c->channels || !c->line)
                goto fail;
        for (; c->n < n; c->n++)
                if (channel_copy(&v[c->n], &c->channels[c->n]) < 0)
                        goto fail;
        c->view = view;
        c->len = len;
        return;
fail:
        answer_cache_done(c);
}

int answer_cache_encode(AnswerCache *c, ProtoChannelView view, const ProtoChannel *v, size_t n,
                        char **ret_line, size_t *ret_len) {
        char *line;
        int r;

        if (cache_hit(c, view, v, n)) {
                line = memdup(c->line, c->len + 1);
                if (!line)
                        return -ENOMEM;
                *ret_line = line;
                *ret_len = c->len;
                return 0;
        }
        r = proto_encode_channels(view, v, n, ret_line, ret_len);
        if (r < 0)
                return r;
        cache_keep(c, view, v, n, *ret_line, *ret_len);
        return 0;
}
