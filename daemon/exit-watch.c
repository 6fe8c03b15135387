/*
 * Exit watches (see exit-watch.h).
 *
 * One Watch per process: its pidfd, an sd-event io source on it (EPOLLIN:
 * the process exited), and the orphans to end then. The source fires
 * once; the watch ends its orphans that are still orphans and frees
 * itself. What the watch holds is copied out of the registry, so nothing
 * the registry frees (a channel removed by a reload, a ring remade after
 * an ipcrm) leaves it a dangling pointer: at its exit it looks the
 * channel up by name, and the cookie says whether the token is still the
 * orphan it was given.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/exit-watch.h"
#include "daemon/log.h"

typedef struct Watch Watch;

struct Watch {
        ExitWatch *set;
        pid_t pid;                      /* as the connection saw it; 0: not visible to us */
        uid_t uid;                      /* its connection's peer's, for the count per uid */
        int pidfd;
        sd_event_source *source;
        OrphanRef *refs;
        size_t n;
        LIST_ENTRY(Watch) link;
};

struct ExitWatch {
        sd_event *event;
        Registry *registry;
        LIST_HEAD(, Watch) watches;
        size_t n;                       /* watches: processes watched */
};

static Watch *watch_free(Watch *wa) {
        if (!wa)
                return NULL;
        sd_event_source_disable_unref(wa->source);
        if (wa->pidfd >= 0)
                close(wa->pidfd);
        free(wa->refs);
        LIST_REMOVE(wa, link);
        wa->set->n--;
        free(wa);
        return NULL;
}

int exit_watch_new(sd_event *event, Registry *registry, ExitWatch **ret) {
        ExitWatch *w = calloc(1, sizeof *w);

        if (!w)
                return -ENOMEM;
        w->event = sd_event_ref(event);
        w->registry = registry;
        LIST_INIT(&w->watches);
        *ret = w;
        return 0;
}

ExitWatch *exit_watch_free(ExitWatch *w) {
        if (!w)
                return NULL;
        while (!LIST_EMPTY(&w->watches))
                watch_free(LIST_FIRST(&w->watches));
        sd_event_unref(w->event);
        free(w);
        return NULL;
}

static int on_process_exit(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Watch *wa = userdata;
        size_t ended = 0;

        for (size_t i = 0; i < wa->n; i++)
                if (registry_release_orphan(wa->set->registry, &wa->refs[i]))
                        ended++;
        log_debug("Process %d exited; marked %zu holder token(s) of its closed connections dead.", (int) wa->pid,
                  ended);
        watch_free(wa);
        return 0;
}

/* Keep only the refs that still name orphans; returns how many are left. */
static size_t watch_prune(Watch *wa) {
        size_t k = 0;

        for (size_t i = 0; i < wa->n; i++)
                if (registry_orphan_alive(wa->set->registry, &wa->refs[i]))
                        wa->refs[k++] = wa->refs[i];
        wa->n = k;
        return k;
}

/*
 * Prune every watch, dropping the empty ones; returns the one that watches
 * pid's running process, if any, and in *ret_of_uid how many of those left
 * uid's are.
 */
static Watch *prune_and_find(ExitWatch *w, pid_t pid, uid_t uid, size_t *ret_of_uid) {
        Watch *wa, *next, *found = NULL;

        *ret_of_uid = 0;
        for (wa = LIST_FIRST(&w->watches); wa; wa = next) {
                next = LIST_NEXT(wa, link);
                if (watch_prune(wa) == 0) {
                        watch_free(wa);
                        continue;
                }
                if (wa->uid == uid)
                        (*ret_of_uid)++;
                /* While its pidfd runs, the process holds its pid: no other can have it. */
                if (!found && pid > 0 && wa->pid == pid && pidfd_exited(wa->pidfd) == 0)
                        found = wa;
        }
        return found;
}

/* Add o's refs to wa, which watches the same process (o's pidfd is not needed). */
static int watch_merge(Watch *wa, ClientOrphans *o) {
        OrphanRef *v = reallocarray(wa->refs, wa->n + o->n, sizeof *v);

        if (!v)
                return -ENOMEM;
        memcpy(v + wa->n, o->refs, o->n * sizeof *v);
        wa->refs = v;
        wa->n += o->n;
        client_orphans_done(o);
        return 0;
}

static int watch_new(ExitWatch *w, ClientOrphans *o, uid_t uid) {
        _cleanup_(freep) Watch *wa = calloc(1, sizeof *wa);
        int r;

        if (!wa)
                return -ENOMEM;
        r = sd_event_add_io(w->event, &wa->source, o->pidfd, EPOLLIN, on_process_exit, wa);
        if (r < 0)
                return r;
        wa->set = w;
        wa->pid = o->pid;
        wa->uid = uid;
        wa->pidfd = TAKE_FD(o->pidfd);
        wa->refs = TAKE_PTR(o->refs);
        wa->n = o->n;
        *o = CLIENT_ORPHANS_NULL;
        LIST_INSERT_HEAD(&w->watches, wa, link);
        w->n++;
        wa = NULL;
        return 0;
}

int exit_watch_add(ExitWatch *w, ClientOrphans *o, uid_t uid, size_t max_per_uid, size_t max) {
        pid_t pid = o->pid;
        size_t n = o->n, of_uid;
        Watch *same;
        int r;

        if (n == 0) {
                client_orphans_done(o);
                return 0;
        }
        same = prune_and_find(w, pid, uid, &of_uid);
        r = same ? watch_merge(same, o) : -ENOENT;
        /*
         * Each watch is a descriptor of ours: one uid's may not take those
         * everyone else needs, nor may many uids' together.
         */
        if (r < 0 && (of_uid >= max_per_uid || w->n >= max))
                r = -EUSERS;
        else if (r < 0)
                r = watch_new(w, o, uid);
        if (r < 0) {
                /* Unwatched, an orphan would live for good: end it now, as if no pidfd could be had. */
                for (size_t i = 0; i < o->n; i++)
                        (void) registry_release_orphan(w->registry, &o->refs[i]);
                client_orphans_done(o);
                return r;
        }
        log_debug("Process %d lives on after its connection: %zu holder token(s) stay live until it exits "
                  "(%zu process(es) watched).", (int) pid, n, w->n);
        return 0;
}
