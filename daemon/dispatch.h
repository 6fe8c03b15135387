#pragma once

/*
 * Request dispatch: one request line in, one response line out. It decodes
 * with proto/, checks rights, acts on the registry and encodes the answer.
 * A bad request becomes an error response; only running out of memory is
 * an error of the call itself.
 */

#include <stddef.h>

#include "daemon/answer-cache.h"
#include "daemon/config.h"
#include "daemon/registry.h"
#include "daemon/request-cache.h"

typedef struct Dispatch {
        Registry *registry;
        const Config *config;
        /* Reload the config (admin op); NULL when reload is not offered. */
        int (*reload)(void *userdata, ProtoReloadResult *ret, char *msg, size_t msg_size);
        void *userdata;
        AnswerCache answers;            /* the last list/status answer */
        RequestCache requests;          /* the lines decoded lately */
        /* The answers that never change (hello's, a bare ok), encoded once; NULL until first needed. */
        char *hello_line, *ok_line;
        size_t hello_len, ok_len;
} Dispatch;

/* Free what d keeps between requests (its answers); d stays usable. */
void dispatch_done(Dispatch *d);

/* Whether p may reload: uid 0, or a member of the config's admin_group (as it stands now). */
bool dispatch_is_admin(const Dispatch *d, const Peer *p);

/*
 * Answer one request line (without its newline) from client `cl`.
 * *ret_line is malloc'd, newline-terminated and owned by the caller.
 * An open of a posix channel with "fd": true also hands back descriptors
 * (*ret_n_fds of them in ret_fds, owned by the caller) that must go with
 * the first byte of that line (SCM_RIGHTS); otherwise *ret_n_fds is 0.
 * Negative errno (-ENOMEM) only when no answer could be built.
 */
int dispatch_line(Dispatch *d, Client *cl, const char *line, size_t len, char **ret_line, size_t *ret_len,
                  int ret_fds[PROTO_FDS_MAX], size_t *ret_n_fds);

