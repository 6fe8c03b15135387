#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <libgen.h>
#include <limits.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "common/util.h"
#include "daemon/adopt.h"
#include "daemon/channel.h"
#include "daemon/config.h"
#include "daemon/control.h"
#include "daemon/daemon.h"
#include "daemon/dispatch.h"
#include "daemon/exit-watch.h"
#include "daemon/ipc-limits.h"
#include "daemon/ledger.h"
#include "daemon/log.h"
#include "daemon/notify.h"
#include "daemon/posix.h"
#include "daemon/reclaim.h"
#include "daemon/registry.h"
#include "daemon/reload.h"
#include "daemon/self.h"
#include "daemon/state.h"

/* At start: a killed run's files of a posix channel that changed since, until the channel is made. */
typedef struct Replaced {
        size_t channel;                 /* its index in config->channels */
        PosixObjects old;
} Replaced;

typedef struct Daemon {
        const DaemonOptions *options;
        Config *config;
        char *socket_path;              /* fixed at start: a reload cannot move it */
        char passed_path[109];          /* where the socket systemd passed is bound ("": none, or unnamed; "@NAME": abstract) */
        State *state;
        Registry *registry;
        Wake *wake;                     /* NULL: rings run without wake-up FIFOs */
        Dispatch dispatch;
        Control *control;
        ExitWatch *exits;               /* processes whose connections closed with holder tokens */
        sd_event *event;
        bool reclaimed;                 /* the previous run's records were settled... */
        StateRecord *unsettled;         /* ...but for these, which must stay recorded */
        size_t n_unsettled;
        Replaced *replaced;             /* each one's files are replaced in place by create_channels() */
        size_t n_replaced;
        size_t last_status[3];          /* channels, clients, holds as last sent in STATUS= */
        sd_event_source *status_timer;
        sd_event_source *orphan_timer;  /* while adopted rings keep holders of the killed run */
        sd_event_source *watchdog_timer;
        sd_event_source *notify_retry;  /* while a state change waits for room (notify.h) */
        uint64_t watchdog_usec;         /* WatchdogSec=, from WATCHDOG_USEC (0: none) */
        /* What the socket was last given, not what the config last said: a refused change is tried again. */
        mode_t socket_mode;
        gid_t socket_group;             /* (gid_t) -1: none in the config, the group left as it is */
} Daemon;

/* Whether the state file records nothing alive (a failed read, or a line it cannot read, counts as something). */
static bool state_is_empty(State *state) {
        _cleanup_(freep) StateRecord *v = NULL;
        size_t n, skipped;

        return state_read(state, &v, &n, &skipped) == 0 && n == 0 && skipped == 0;
}

/*
 * Name the lines of state's file that state_read() could not parse (the
 * first few, as text), which stay in the file: whatever object such a
 * line recorded is neither reclaimed nor forgotten.
 */
enum { LINE_SHOWN = 160 };

/* The first LINE_SHOWN bytes of the n at p, as printable ASCII ('?' for any other byte), in text. */
static void printable(const char *p, size_t n, char text[static LINE_SHOWN + 1]) {
        size_t k = 0;

        for (; k < n && k < LINE_SHOWN; k++)
                text[k] = p[k] >= 0x20 && p[k] < 0x7f ? p[k] : '?';
        text[k] = 0;
}

static void log_unread(State *state, size_t skipped) {
        enum { SHOWN = 5 };
        size_t len, dropped, shown = 0;
        const char *p = state_unread(state, &len, &dropped), *end = p ? p + len : NULL;

        log_warning("%s: %zu line(s) that this daemon cannot read; kept in the file (their objects, if any, are "
                    "neither reclaimed nor forgotten: mend or delete the lines, then restart).", state_path(state),
                    skipped);
        for (; p && p < end && shown < SHOWN; shown++) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                char text[LINE_SHOWN + 1];

                printable(p, (size_t) (nl - p), text);
                log_warning("%s: unreadable line: %s%s", state_path(state), text, nl - p > LINE_SHOWN ? "..." : "");
                p = nl + 1;
        }
        if (skipped > shown)
                log_warning("%s: and %zu more such line(s)%s.", state_path(state), skipped - shown,
                            dropped > 0 ? ", some of them too many to keep" : "");
}

/*
 * Name the objects that could not be removed since the from-th (and count
 * those since the lost-th that there was no memory to name): they stay
 * recorded for the next start.
 */
static void log_kept(const Daemon *d, size_t from, size_t lost) {
        const StateRecord *rec;
        size_t n_lost = state_n_lost(d->state) - lost;
        int err;

        for (size_t i = from; (rec = state_kept(d->state, i, &err)); i++) {
                char what[NAME_MAX + 64];

                if (rec->kind == STATE_POSIX) {
                        char name[NAME_MAX + 1];

                        if (posix_record_file_name(rec, name, sizeof name) < 0)
                                snprintf(name, sizeof name, "(a file of channel %s)", rec->name);
                        snprintf(what, sizeof what, "%s/%s", PSEM_DIR, name);
                } else
                        snprintf(what, sizeof what, "the %s with key 0x%08x, id %d",
                                 rec->kind == STATE_SHM ? "segment" : "semaphore set", rec->key, rec->id);
                log_warning("Failed to remove %s: %s; it stays recorded in %s, and the next start tries again.", what,
                            strerror(err), state_path(d->state));
        }
        if (n_lost > 0)
                log_warning("Failed to remove %zu more object(s), which there was no memory to name; they stay recorded "
                            "in %s, and the next start tries again.", n_lost, state_path(d->state));
}

/*
 * The files of the killed run's posix channels that the config changed
 * since: each is taken (reclaim_posix_take()), to be replaced in place
 * when its channel is made anew, not reclaimed first, which would leave its
 * names free for another user to take meanwhile.
 */
static void take_replaced(Daemon *d, StateRecord *v, size_t n) {
        const Config *cfg = d->config;
        _cleanup_(freep) size_t *idx = NULL;
        size_t n_idx;

        d->replaced = calloc(cfg->n_channels ?: 1, sizeof *d->replaced);
        if (!d->replaced || state_posix_index(v, n, true, &idx, &n_idx) < 0) {
                free(d->replaced);
                d->replaced = NULL;
                return;         /* reclaim removes them, as any leftovers */
        }
        for (size_t i = 0; i < cfg->n_channels; i++) {
                Replaced *rp = &d->replaced[d->n_replaced];
                const char *name = cfg->channels[i].name;
                size_t first, end, k;

                /* Taken over, or System V now: nothing to replace in place. */
                if (cfg->channels[i].kind != PROTO_KIND_POSIX || registry_find(d->registry, name))
                        continue;
                end = state_posix_range(v, idx, n_idx, name, &first);
                if (end == first)
                        continue;
                k = reclaim_posix_take(v, idx + first, end - first, state_secret(d->state), &rp->old);
                if (k == 0)
                        continue;
                rp->channel = i;
                d->n_replaced++;
                log_info("Channel %s: %zu file(s) of the previous run are replaced in place as it is made anew.",
                         cfg->channels[i].name, k);
        }
}

/* What create_channels() did not replace (a failed start), removed as reclaim would have. */
static void remove_replaced(Daemon *d) {
        for (size_t i = 0; i < d->n_replaced; i++)
                posix_objects_remove(&d->replaced[i].old, d->state);
        free(d->replaced);
        d->replaced = NULL;
        d->n_replaced = 0;
}

static void daemon_done(Daemon *d) {
        size_t kept, lost;

        d->status_timer = sd_event_source_disable_unref(d->status_timer);
        d->orphan_timer = sd_event_source_disable_unref(d->orphan_timer);
        d->watchdog_timer = sd_event_source_disable_unref(d->watchdog_timer);
        d->notify_retry = sd_event_source_disable_unref(d->notify_retry);
        /* Before the connections go: their holds' deaths wake clients, which must find the channels removed. */
        registry_mark_removed(d->registry);
        d->control = control_free(d->control);
        d->exits = exit_watch_free(d->exits);
        kept = d->state ? state_n_kept(d->state) : 0;
        lost = d->state ? state_n_lost(d->state) : 0;
        /* Each removal's cancellations are deferred (state.h): a write per 64 KiB, not three a channel. */
        if (d->state)
                state_batch_begin(d->state);
        d->registry = registry_free(d->registry);
        remove_replaced(d);
        if (d->state) {
                int r = state_batch_end(d->state);

                if (r < 0)
                        log_warning("Failed to record the removals in %s: %s; the next start finds the objects gone.",
                                    state_path(d->state), strerror(-r));
                log_kept(d, kept, lost);
        }
        d->wake = wake_free(d->wake);
        dispatch_done(&d->dispatch);
        /*
         * Our records cancel out as the registry removes its channels; what is
         * left (unsettled records, an object that could not be removed) keeps
         * the file for the next start to reclaim.
         */
        if (d->state && d->reclaimed && state_is_empty(d->state)) {
                /* With the ledgers a failed start did not keep (a stop removed every one with its channel). */
                ledger_dir_remove(state_dir_fd(d->state), state_name(d->state));
                state_remove_files(d->state, false);
        }
        d->state = state_free(d->state);
        free(d->unsettled);
        d->unsettled = NULL;
        d->event = sd_event_unref(d->event);
        d->config = config_free(d->config);
        free(d->socket_path);
        d->socket_path = NULL;
}

/* A config that names another owner is accepted, with this warning (at start, reload and --check-config). */
static void warn_foreign_owners(const Config *cfg) {
        for (size_t i = 0; i < cfg->n_channels; i++)
                if (cfg->channels[i].owner_set && cfg->channels[i].uid != self_euid())
                        log_warning("Channel %s: owner uid %u is not the daemon's; that user can remove the channel "
                                    "or change its permissions. Prefer \"group\" and \"mode\".",
                                    cfg->channels[i].name, (unsigned) cfg->channels[i].uid);
}

static int load_config(const DaemonOptions *o, Config **ret) {
        char msg[1024];
        int r;

        r = config_load(o->config_path, ret, msg, sizeof msg);
        if (r < 0) {
                log_error("Failed to load %s: %s", o->config_path, strerror(-r));
                return r;
        }
        if (r > 0) {
                log_error("%s", msg);
                return -r;
        }
        return 0;
}

/*
 * mkdir(path, mode); a directory this call made gets exactly mode, as the
 * umask (a user's 077, a unit's UMask=0077) would otherwise take away the
 * bits clients need to reach the socket in it. Through a descriptor that
 * names a directory of ours, so nothing swapped in meanwhile is changed.
 */
static int ensure_dir(const char *path, mode_t mode) {
        _cleanup_(closep) int fd = -1;
        struct stat st;

        if (mkdir(path, mode) < 0)
                return errno == EEXIST ? 0 : -errno;
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0)
                return -errno;
        if (st.st_uid == self_euid() && (st.st_mode & 07777) != mode && fchmod(fd, mode) < 0)
                return -errno;
        return 0;
}

/*
 * Make the socket's directory (0755: clients must reach the socket) and pick
 * the state directory: --state-dir, else $RUNTIME_DIRECTORY (the first, when
 * systemd lists several), else the socket's directory. A state directory
 * named for the purpose is made 0700 when missing.
 */
static int state_dir_setup(Daemon *d, char **ret) {
        const char *env = getenv("RUNTIME_DIRECTORY");
        _cleanup_(freep) char *copy = strdup(d->socket_path), *dir = NULL;
        const char *socket_dir;
        int r;

        if (!copy)
                return log_error("Out of memory."), -ENOMEM;
        socket_dir = dirname(copy);
        r = ensure_dir(socket_dir, 0755);
        if (r < 0)
                return log_error("Failed to create the directory of %s: %s", d->socket_path, strerror(-r)), r;
        if (d->options->state_dir)
                dir = strdup(d->options->state_dir);
        else if (env && env[0] == '/')
                dir = strndup(env, strcspn(env, ":"));
        else
                dir = strdup(socket_dir);
        if (!dir)
                return log_error("Out of memory."), -ENOMEM;
        r = ensure_dir(dir, 0700);
        if (r < 0)
                return log_error("Failed to create the state directory %s: %s", dir, strerror(-r)), r;
        *ret = TAKE_PTR(dir);
        return 0;
}

/* Rewrite the state file to exactly the live objects (at start, after a reload). */
static int save_state(Daemon *d) {
        _cleanup_(freep) StateRecord *v = NULL;
        size_t n = 0, total = d->n_unsettled + 1;

        for (size_t i = 0; i < d->registry->n; i++)
                total += channel_count_records(registry_at(d->registry, i)->channel);
        for (size_t i = 0; i < d->n_replaced; i++)
                total += 2 + d->replaced[i].old.nsems;
        v = calloc(total, sizeof *v);
        if (!v)
                return -ENOMEM;
        /* What the last crash left and reclaim could not settle stays recorded too. */
        for (size_t i = 0; i < d->n_unsettled; i++)
                v[n++] = d->unsettled[i];
        for (size_t i = 0; i < d->registry->n; i++)
                n += channel_records(registry_at(d->registry, i)->channel, v + n);
        /* The files a start is to replace in place: recorded until then. */
        for (size_t i = 0; i < d->n_replaced; i++)
                n += posix_objects_records(&d->replaced[i].old, d->config->channels[d->replaced[i].channel].name,
                                           v + n);
        return state_rewrite(d->state, v, n);
}

/* Records that prove nothing are settled without a touch; the admin learns which objects they named. */
static void log_legacy(const Daemon *d, const StateRecord *v, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char id[32] = "";

                if (!v[i].legacy)
                        continue;
                if (!v[i].pending)
                        snprintf(id, sizeof id, ", id %d", v[i].id);
                log_warning("%s: the %s with key 0x%08x%s was recorded by an older version that did not record "
                            "its creator; it cannot be proven ours, so it is left untouched (ipcrm it if it is a "
                            "leftover).", state_path(d->state), v[i].kind == STATE_SHM ? "segment" : "semaphore set",
                            v[i].key, id);
        }
}

/*
 * The files of a dead run whose objects are all settled: what it made beside
 * its socket (the lock file names the socket; one written by an older
 * version does not, and those stay), the socket itself when it bound it,
 * then its state files and its key secret, which no run derives keys from
 * again.
 */
static void remove_previous_run(State *old) {
        bool bound = false;
        _cleanup_(freep) char *socket_path = state_recorded_socket(old, &bound);
        char msg[512];

        if (socket_path) {
                wake_remove_dir(socket_path);
                /* Not one systemd passed: a connect to see if it is live could start a service. */
                if (bound && control_remove_stale_socket(socket_path, true, msg, sizeof msg) < 0)
                        log_warning("Leaving the socket of an earlier run: %s.", msg);
        }
        ledger_dir_remove(state_dir_fd(old), state_name(old));
        state_remove_files(old, true);
}

/*
 * What a run of this configuration under another socket name left (the
 * file's "socket" changed, then a crash: the next start names its files
 * after the new socket, and nothing else would ever look at the old ones).
 * Their objects are reclaimed as a crash's are, not adopted: moving the
 * socket needs a restart, which makes every channel anew. Only files whose
 * lock names this configuration's real path, and whose lock is free.
 */
static void reclaim_previous_runs(Daemon *d, const char *dir, const char *owner) {
        char **names = NULL;
        int r;

        r = state_previous_names(d->state, owner, &names);
        if (r < 0) {
                log_warning("Failed to look for the files of earlier runs in %s: %s", dir, strerror(-r));
                return;
        }
        for (char **name = names; *name; name++) {
                _cleanup_(freep) StateRecord *v = NULL;
                size_t n = 0, skipped = 0;
                ReclaimResult res = {};
                State *old = NULL;
                char msg[512];

                r = state_open(dir, *name, &old, msg, sizeof msg);
                if (r < 0) {
                        /* -EBUSY: a daemon runs on it (this configuration, another socket): its own. */
                        if (r != -EBUSY)
                                log_warning("Failed to open the files of an earlier run (%s): %s", *name, msg);
                        continue;
                }
                r = state_read(old, &v, &n, &skipped);
                if (r == 0) {
                        reclaim_records(v, n, state_secret(old), &res);
                        log_notice("Reclaimed %zu object(s) left by a run of this configuration on socket %s "
                                   "(%zu already gone, %zu not provably ours and left alone).", res.removed, *name,
                                   res.gone, res.foreign);
                }
                if (r == 0 && skipped > 0)
                        log_unread(old, skipped);
                if (r == 0 && res.kept == 0 && skipped == 0)
                        remove_previous_run(old);
                else
                        log_warning("Keeping %s: %s.", state_path(old),
                                    r < 0 ? strerror(-r) : skipped > 0 ? "it has lines this daemon cannot read" :
                                    "some of its objects could not be verified or removed");
                state_free(old);
        }
        strv_free(names);
}

/*
 * What names this configuration in a lock file (state_set_owner()): the
 * path as given, made absolute, and the file it resolves to, one a line.
 * Either may be what stays the same: a deploy that swaps a symlink to a new
 * file keeps the first, a start from another directory the second. NULL
 * (no claim) when the path does not resolve, or without memory.
 */
static char *config_owner(const char *path) {
        _cleanup_(freep) char *real = realpath(path, NULL);
        char *abs, *both;

        /* A descriptor's name (/dev/stdin, /proc/self/fd/N) is anyone's: only the file it resolves to names ours. */
        if (!real)
                return NULL;
        if (strncmp(path, "/dev/", 5) == 0 || strncmp(path, "/proc/", 6) == 0)
                return TAKE_PTR(real);
        abs = path_absolute(path);
        if (!abs || streq(abs, real))
                return abs;
        both = strprintf("%s\n%s", abs, real);
        free(abs);
        return both;
}

static int open_state_and_reclaim(Daemon *d) {
        _cleanup_(freep) StateRecord *v = NULL;
        _cleanup_(freep) char *dir = NULL, *owner = NULL, *socket_abs = NULL;
        const char *name = strrchr(d->socket_path, '/');
        size_t n = 0, skipped = 0;
        ReclaimResult res;
        char msg[512];
        int r;

        r = state_dir_setup(d, &dir);
        if (r < 0)
                return r;
        /* The files are named after the socket's last component. */
        r = state_open(dir, name ? name + 1 : d->socket_path, &d->state, msg, sizeof msg);
        if (r == -EBUSY) {
                log_error("Another shmbrokerd is running on %s (%s); not starting.", d->socket_path, msg);
                return r;
        }
        if (r < 0) {
                log_error("Failed to open the state directory: %s", msg);
                return r;
        }
        /* Only a socket the file names: two --socket runs of one file are two daemons, not one moved. */
        owner = d->options->socket_path ? NULL : config_owner(d->options->config_path);
        socket_abs = path_absolute(d->socket_path);
        /* Whether systemd passes the socket, asked without taking it (listen_or_adopt() does). */
        r = state_set_owner(d->state, owner ?: "", socket_abs, sd_listen_fds(false) <= 0);
        if (r < 0)
                log_warning("Failed to write %s: %s", state_lock_path(d->state), strerror(-r));
        r = state_read(d->state, &v, &n, &skipped);
        if (r < 0) {
                log_error("Failed to read %s: %s", state_path(d->state), strerror(-r));
                return r;
        }
        if (skipped > 0)
                log_unread(d->state, skipped);
        if (state_cut_line(d->state)) {
                const char *cut = state_cut_line(d->state);
                char text[LINE_SHOWN + 1];

                printable(cut, strlen(cut), text);
                log_notice("%s: its last line was cut short (a write the last run was killed in); dropped, as what "
                           "it recorded is covered by the lines before it: %s%s", state_path(d->state), text,
                           strlen(cut) > LINE_SHOWN ? "..." : "");
        }
        log_legacy(d, v, n);
        r = registry_new(d->state, &d->registry);
        if (r < 0) {
                log_error("Failed to set up the channel registry: %s", strerror(-r));
                return r;
        }
        /* Before adopting: an adopted ring keeps its FIFOs, which its waiters hold. */
        r = wake_open(d->socket_path, &d->wake, msg, sizeof msg);
        if (r == -EBUSY) {
                log_error("Another shmbrokerd is running on %s (%s); not starting.", d->socket_path, msg);
                /* Its state directory is another: what this start made there would name a run that never was. */
                state_remove_made(d->state);
                return r;
        }
        if (r < 0)
                log_warning("No wake-up FIFOs (%s): rings work, but cannot be waited for in an event loop.", msg);
        d->registry->wake = d->wake;
        /* Before reclaim: what a crash left of an unchanged channel lives on, with its clients. */
        (void) adopt_channels(d->registry, d->config, state_secret(d->state), v, n);
        /* Before reclaim too: a changed posix channel's files stay at their names until it is made anew. */
        take_replaced(d, v, n);
        res = (ReclaimResult) {};
        if (n > 0) {
                reclaim_records(v, n, state_secret(d->state), &res);
                log_notice("Reclaimed %zu object(s) left by a previous run (%zu already gone, %zu not provably "
                           "ours and left alone).", res.removed, res.gone, res.foreign);
                if (res.kept > 0)
                        log_warning("%zu recorded object(s) could not be verified or removed; keeping them in %s.",
                                    res.kept, state_path(d->state));
        }
        if (owner)
                reclaim_previous_runs(d, dir, owner);
        /* What could not be settled stays recorded (a later start tries again), and so is
         * every rewrite of the file after this one (reload compacts it); adopted channels too. */
        d->n_unsettled = res.kept;
        d->unsettled = TAKE_PTR(v);
        r = save_state(d);
        if (r < 0)
                log_error("Failed to reset %s: %s", state_path(d->state), strerror(-r));
        else
                d->reclaimed = true;
        return r;
}

#define USEC_PER_SEC 1000000ULL

static bool keeps_wake(const char *name, void *userdata) {
        Entry *e = registry_find(userdata, name);

        return e && e->has_wake;
}

/* At a failed start: only what was taken over stays (with its waiters), for the next start. */
static bool keeps_adopted_wake(const char *name, void *userdata) {
        Entry *e = registry_find(userdata, name);

        return e && e->has_wake && e->channel->adopted;
}

/* A ledger of a channel being served: made for it, or taken over. */
static bool keeps_ledger(const char *name, void *userdata) {
        Entry *e = registry_find(userdata, name);

        return e && e->ledger.addr;
}

/* At a failed start: only a taken-over channel's, for the next start. */
static bool keeps_adopted_ledger(const char *name, void *userdata) {
        Entry *e = registry_find(userdata, name);

        return e && e->ledger.addr && e->channel->adopted;
}

static int create_channels(Daemon *d) {
        _cleanup_(freep) const ChannelSpec **specs = NULL;
        _cleanup_(freep) PosixObjects **olds = NULL;
        const Config *cfg = d->config;
        char msg[1024];
        IpcLimits limits;
        size_t n = 0;
        int r;

        specs = calloc(cfg->n_channels ?: 1, sizeof *specs);
        olds = calloc(cfg->n_channels ?: 1, sizeof *olds);
        if (!specs || !olds)
                return log_error("Out of memory."), -ENOMEM;
        /* take_replaced() listed the replaced channels in config order: one cursor finds each one's files. */
        for (size_t i = 0, k = 0; i < cfg->n_channels; i++) {
                /* Taken over from a crashed run: it exists already. */
                if (registry_find(d->registry, cfg->channels[i].name))
                        continue;
                while (k < d->n_replaced && d->replaced[k].channel < i)
                        k++;
                if (k < d->n_replaced && d->replaced[k].channel == i)
                        olds[n] = &d->replaced[k].old;
                specs[n++] = &cfg->channels[i];
        }
        warn_foreign_owners(cfg);

        r = ipc_limits_read(&limits);
        if (r < 0)
                return log_error("Failed to read the kernel's IPC limits: %s", strerror(-r)), r;
        r = ipc_limits_check(&limits, specs, n, msg, sizeof msg);
        if (r > 0)
                return log_error("%s: %s", cfg->source, msg), -r;

        for (size_t i = 0, extended = 0; i < n; i++) {
                Channel *c;

                /* A long creation may outlast TimeoutStartSec=: ask for more time as it begins, then each second. */
                if (now_usec() - extended > USEC_PER_SEC) {
                        (void) notify_sendf(false, "EXTEND_TIMEOUT_USEC=%llu\nSTATUS=Creating channel %zu of %zu",
                                           5ULL * USEC_PER_SEC, i + 1, n);
                        extended = now_usec();
                }
                r = registry_create(d->registry, specs[i], cfg->fixed_keys, cfg->n_fixed_keys, olds[i], &c, msg,
                                    sizeof msg);
                if (r < 0)
                        return log_error("%s", msg), r;
                if (c->spec.kind == PROTO_KIND_POSIX)
                        log_debug("Created channel %s: %s and %u semaphore file(s).", c->spec.name,
                                  c->posix.shm_name, c->spec.nsems);
                else
                        log_debug("Created channel %s: key 0x%08x, shm id %d, sem id %d.",
                                  c->spec.name, c->key, c->shm_id, c->sem_id);
        }
        /* Every file to replace was replaced, or removed with its channel's failure. */
        remove_replaced(d);
        /* What a crash left of rings that were not adopted. */
        wake_sweep(d->wake, keeps_wake, d->registry);
        ledger_sweep(d->registry->ledger_dir, keeps_ledger, d->registry);
        return 0;
}

static int on_exit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Daemon *d = userdata;

        log_info("Received %s, stopping.", strsignal((int) si->ssi_signo));
        (void) notify_send(true, "STOPPING=1");
        control_stop_accepting(d->control);
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

/* A state change that found no room (notify.h) goes again each second until it goes through. */
static int on_notify_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        if (notify_flush() == -EAGAIN) {
                (void) sd_event_source_set_time(s, usec + USEC_PER_SEC);
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        }
        return 0;
}

/* Fire *s (made with cb on first use) a second from now, unless it is already due. */
static void arm_in_a_second(Daemon *d, sd_event_source **s, sd_event_time_handler_t cb) {
        int enabled = SD_EVENT_OFF;
        uint64_t now;

        if (*s && sd_event_source_get_enabled(*s, &enabled) >= 0 && enabled != SD_EVENT_OFF)
                return;
        if (sd_event_now(d->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        if (!*s) {
                (void) sd_event_add_time(d->event, s, CLOCK_MONOTONIC, now + USEC_PER_SEC, 0, cb, d);
                return;
        }
        (void) sd_event_source_set_time(*s, now + USEC_PER_SEC);
        (void) sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
}

/* READY=1, with another try each second while it finds no room: systemd waits for it. */
static void notify_ready(Daemon *d) {
        if (notify_send(true, "READY=1") == -EAGAIN)
                arm_in_a_second(d, &d->notify_retry, on_notify_retry);
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void notify_status(Daemon *d) {
        int r;

        d->last_status[0] = d->registry->n;
        d->last_status[1] = control_count_connections(d->control);
        d->last_status[2] = registry_count_holds(d->registry);
        r = notify_sendf(false, "STATUS=%zu channel%s, %zu client%s, %zu hold%s",
                         d->last_status[0], d->last_status[0] == 1 ? "" : "s",
                         d->last_status[1], d->last_status[1] == 1 ? "" : "s",
                         d->last_status[2], d->last_status[2] == 1 ? "" : "s");
        if (r >= 0)
                return;
        /* Not sent: no figure matches, so the next change says it again. */
        d->last_status[0] = SIZE_MAX;
        /* Dropped for want of room (notify.h): again in a second, not stale until a client comes or goes. */
        if (r == -EAGAIN)
                arm_in_a_second(d, &d->status_timer, on_status_timer);
}

/*
 * socket_mode and socket_group at a reload: given to the socket at once,
 * as at the start, so that tightening who may connect needs no restart
 * (connections made already stay). A socket_group taken out goes back to
 * the group bind() gave it, as at a start without one; with none before
 * or after, the group is left as it is. Compared with what the socket was
 * given, not with the previous config: a change refused (the path names
 * another file for a while) is tried again by the next reload. A socket
 * systemd passed keeps what its unit gave it; a failure keeps the old ones
 * (control.h). Either is logged, and the rest of the reload stands.
 */
static void reload_socket_perms(Daemon *d, const Config *cfg) {
        /* An admin may have changed the group by hand: only taking socket_group out gives bind()'s back. */
        gid_t group = cfg->has_socket_group ? cfg->socket_group :
                      d->socket_group == (gid_t) -1 ? (gid_t) -1 : control_bound_group(d->control);
        char msg[512];
        int r;

        if (cfg->socket_mode == d->socket_mode && group == d->socket_group)
                return;
        r = control_set_socket_perms(d->control, cfg->socket_mode, group, msg, sizeof msg);
        /* The unit's say is no failure to try again: logged once per change. */
        if (r >= 0 || r == -EOPNOTSUPP) {
                d->socket_mode = cfg->socket_mode;
                d->socket_group = cfg->has_socket_group ? group : (gid_t) -1;
        }
        if (r < 0)
                log_warning("Reload: socket_mode or socket_group changed, but the socket keeps the old ones: %s.",
                            msg);
        else if (group == (gid_t) -1)
                log_info("Reload: the socket now has mode %04o.", (unsigned) cfg->socket_mode);
        else
                log_info("Reload: the socket now has mode %04o and group %u.", (unsigned) cfg->socket_mode,
                         (unsigned) group);
}

/*
 * Re-read the config and apply it (reload.c has the semantics). Returns 0
 * with *ret filled, or a positive errno with msg when nothing changed (EIO
 * when memory ran out midway).
 */
static int daemon_reload(void *userdata, ProtoReloadResult *ret, char *msg, size_t msg_size) {
        Daemon *d = userdata;
        Config *cfg = NULL;
        int r, k;

        msg_set(msg, msg_size, "out of memory");       /* what is left when nothing more is said */
        (void) notify_sendf(true, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading %s",
                            (unsigned long long) now_usec(), d->options->config_path);
        r = config_load(d->options->config_path, &cfg, msg, msg_size);
        if (r < 0)
                msg_set(msg, msg_size, "%s: %s", d->options->config_path, strerror(-r));
        if (r == 0 && !d->options->socket_path && !streq(cfg->socket, d->socket_path))
                log_warning("Reload: \"socket\" changed to %s; moving the socket needs a restart, ignoring.",
                            cfg->socket);
        if (r == 0) {
                size_t kept = state_n_kept(d->state), lost = state_n_lost(d->state);

                warn_foreign_owners(cfg);

                /* As at start (state.h); save_state() below rewrites the file anyway. */
                state_batch_begin(d->state);
                r = reload_apply(d->registry, cfg, ret, msg, msg_size);
                log_kept(d, kept, lost);
                k = state_batch_end(d->state);
                if (k < 0)
                        log_warning("Failed to record the reload's channels in %s: %s; the next start may "
                                    "make them again.", state_path(d->state), strerror(-k));
                state_unreserve(d->state);
        }
        if (r != 0) {
                /* A bad config or a refused plan changes nothing; running out of memory
                 * midway (r < 0) may leave the additions made so far. */
                log_error("Reload failed%s: %s", r > 0 ? ", nothing changed" : "", msg);
                config_free(cfg);
                notify_ready(d);
                notify_status(d);
                return r < 0 ? EIO : r;
        }
        reload_socket_perms(d, cfg);
        config_free(d->config);
        d->config = cfg;
        d->dispatch.config = cfg;
        control_set_limits(d->control, &cfg->limits);
        r = save_state(d);
        if (r < 0)
                log_warning("Failed to compact %s: %s, ignoring.", state_path(d->state), strerror(-r));
        log_info("Reloaded %s: %zu added, %zu removed, %zu changed, %zu kept.", d->options->config_path,
                 strv_length(ret->added), strv_length(ret->removed), strv_length(ret->changed),
                 strv_length(ret->kept));
        notify_ready(d);
        notify_status(d);
        return 0;
}

static int on_hup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        ProtoReloadResult res = {};
        char msg[512];

        log_info("Received SIGHUP, reloading.");
        if (daemon_reload(userdata, &res, msg, sizeof msg) == 0)
                proto_reload_result_done(&res);
        return 0;
}

/*
 * sd-event needs the signals blocked before it can take them as events;
 * blocked from the start of daemon_run(), one that comes before the loop
 * waits for it (a SIGTERM then stops the daemon once it served, a SIGHUP
 * reloads).
 */
static int block_loop_signals(void) {
        sigset_t mask;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        return sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ? -errno : 0;
}

static int setup_loop(Daemon *d) {
        int r;

        r = sd_event_new(&d->event);
        if (r < 0)
                return r;
        r = sd_event_add_signal(d->event, NULL, SIGTERM, on_exit_signal, d);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGINT, on_exit_signal, d);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGHUP, on_hup, d);
        return r;
}

/* Every client costs a descriptor; epoll has no FD_SETSIZE, so take what we may. */
static void raise_fd_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        log_debug("Failed to raise RLIMIT_NOFILE: %m, ignoring.");
        }
}

/*
 * Where the socket systemd passed is bound, for the log: clients reach the
 * daemon there, whatever the configuration's "socket" says (the unit and
 * the file must agree; a warning when they do not).
 */
static void passed_socket_path(Daemon *d) {
        struct sockaddr_un sa = {};
        socklen_t len = sizeof sa;
        struct stat a, b;
        bool abstract;
        size_t n;

        if (getsockname(SD_LISTEN_FDS_START, (struct sockaddr *) &sa, &len) < 0 ||
            len <= offsetof(struct sockaddr_un, sun_path) + 1)
                return;
        n = len - offsetof(struct sockaddr_un, sun_path);
        abstract = !sa.sun_path[0];
        if (abstract) {
                /*
                 * The abstract namespace (ListenStream=@NAME): written "@NAME", as systemd and ss(8)
                 * write it, a NUL in the name as '@' too. No configured path names it: never stat()
                 * "@NAME", a file of that name in our working directory is no socket of ours.
                 */
                d->passed_path[0] = '@';
                for (size_t i = 1; i < n; i++)
                        d->passed_path[i] = sa.sun_path[i] ?: '@';
                d->passed_path[n] = 0;
        } else
                snprintf(d->passed_path, sizeof d->passed_path, "%.*s", (int) n, sa.sun_path);
        if (abstract || stat(d->passed_path, &a) < 0 || stat(d->socket_path, &b) < 0 ||
            a.st_dev != b.st_dev || a.st_ino != b.st_ino)
                log_warning("The socket systemd passed is %s, not %s as configured: clients that use the configured "
                            "path will not reach this daemon.", d->passed_path, d->socket_path);
}

/*
 * Take the listening socket from systemd when it passed one (socket
 * activation: neither bound nor unlinked by us), else bind our own.
 */
static int listen_or_adopt(Daemon *d, char *msg, size_t msg_size) {
        int n = sd_listen_fds(true);

        /* Also under systemd: a reload compares with these (reload_socket_perms()). */
        d->socket_mode = d->config->socket_mode;
        d->socket_group = d->config->has_socket_group ? d->config->socket_group : (gid_t) -1;

        if (n < 0) {
                msg_set(msg, msg_size, "cannot read the sockets passed by systemd: %s", strerror(-n));
                return n;
        }
        if (n > 1) {
                msg_set(msg, msg_size, "systemd passed %d sockets; shmbrokerd takes exactly one", n);
                return -EINVAL;
        }
        if (n == 1) {
                if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) <= 0) {
                        msg_set(msg, msg_size, "the socket systemd passed is not a listening Unix stream socket");
                        return -EINVAL;
                }
                passed_socket_path(d);
                log_debug("Using the socket passed by systemd.");
                return control_adopt(d->control, SD_LISTEN_FDS_START, msg, msg_size);
        }
        return control_listen(d->control, d->socket_path, d->socket_mode, d->socket_group, msg, msg_size);
}

static bool status_changed(const Daemon *d) {
        size_t now[3] = { d->registry->n, control_count_connections(d->control), registry_count_holds(d->registry) };

        return memcmp(now, d->last_status, sizeof now) != 0;
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Daemon *d = userdata;

        if (status_changed(d))
                notify_status(d);
        return 0;
}

/*
 * After each event of the control socket: when the figures changed, tell
 * systemd, but at most once a second: the receiver's datagram queue is
 * short (10 by default), and notify.c drops what finds it full. (Not a
 * post source: that would cost every event a second turn of the loop, an
 * epoll_wait() more per request.)
 */
static void on_counts_changed(void *userdata) {
        Daemon *d = userdata;

        if (status_changed(d))
                arm_in_a_second(d, &d->status_timer, on_status_timer);
}

/*
 * Once a second: the killed run's holders that nobody took back (holders.h)
 * are judged again, until none is left. Rejoins and reloads only take
 * those away, and only a start adds them, so the timer is never armed
 * again. (The orphans of connections that closed under a live process
 * are no concern of it: the exit watches end them.)
 */
static int on_orphan_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Daemon *d = userdata;
        size_t left = registry_sweep_orphans(d->registry);

        if (left == 0) {
                log_debug("Every holder of the previous run is accounted for.");
                d->orphan_timer = sd_event_source_disable_unref(d->orphan_timer);
                return 0;
        }
        (void) sd_event_source_set_time(s, usec + USEC_PER_SEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

static int arm_orphan_timer(Daemon *d) {
        uint64_t now;
        int r;

        if (registry_sweep_orphans(d->registry) == 0)
                return 0;
        r = sd_event_now(d->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        return sd_event_add_time(d->event, &d->orphan_timer, CLOCK_MONOTONIC, now + USEC_PER_SEC, 0,
                                 on_orphan_timer, d);
}

/*
 * WATCHDOG=1 from the loop itself (a stuck loop stops the pings), between
 * half and three quarters of WatchdogSec= after the last. Not
 * sd_event_set_watchdog(): its pings go through sd_notify(), which blocks
 * the loop while the receiver's queue is full (notify.h).
 */
static int on_watchdog(sd_event_source *s, uint64_t usec, void *userdata) {
        Daemon *d = userdata;
        uint64_t now;

        (void) notify_send(false, "WATCHDOG=1");
        if (sd_event_now(d->event, CLOCK_MONOTONIC, &now) < 0)
                now = usec;
        (void) sd_event_source_set_time(s, now + d->watchdog_usec / 2);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

static int arm_watchdog(Daemon *d) {
        uint64_t now;
        int r;

        r = sd_watchdog_enabled(false, &d->watchdog_usec);
        if (r <= 0) {
                d->watchdog_usec = 0;
                return r;
        }
        r = sd_event_now(d->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        return sd_event_add_time(d->event, &d->watchdog_timer, CLOCK_MONOTONIC, now + d->watchdog_usec / 2,
                                 d->watchdog_usec / 4, on_watchdog, d);
}

int daemon_run(const DaemonOptions *o) {
        Daemon d = { .options = o };
        char msg[512];
        int r, k;

        /*
         * A wake-up FIFO's last reader may go between our open and our write
         * (a client exiting, or racing us on purpose): EPIPE is then the
         * answer, not our death. Sockets send with MSG_NOSIGNAL already.
         */
        if (sigaction(SIGPIPE, &(struct sigaction) { .sa_handler = SIG_IGN }, NULL) < 0) {
                log_error("Failed to ignore SIGPIPE: %s", strerror(errno));
                return EXIT_FAILURE;
        }
        /* Held from here, not only once the loop takes them: a SIGHUP during the start would kill us. */
        r = block_loop_signals();
        if (r < 0) {
                log_error("Failed to block SIGTERM, SIGINT and SIGHUP: %s", strerror(-r));
                return EXIT_FAILURE;
        }
        r = load_config(o, &d.config);
        if (r < 0)
                return EXIT_FAILURE;
        raise_fd_limit();
        d.socket_path = strdup(o->socket_path ?: d.config->socket);
        if (!d.socket_path) {
                log_error("Out of memory.");
                goto fail;
        }

        r = setup_loop(&d);
        if (r < 0) {
                log_error("Failed to set up the event loop: %s", strerror(-r));
                goto fail;
        }
        r = open_state_and_reclaim(&d);
        if (r < 0)
                goto fail;
        /* Each channel's ids go out with the next one's intents: one write a channel (state.h). */
        state_batch_begin(d.state);
        r = create_channels(&d);
        k = state_batch_end(d.state);
        if (r >= 0 && k < 0) {
                log_error("Failed to record the channels in %s: %s", state_path(d.state), strerror(-k));
                r = k;
        }
        if (r < 0) {
                log_error("Start failed; removing the %zu channel(s) already created (those taken over from the "
                          "last run stay for the next start).", registry_n_made(d.registry));
                goto fail;
        }

        d.dispatch = (Dispatch) { .registry = d.registry, .config = d.config, .reload = daemon_reload, .userdata = &d };
        r = exit_watch_new(d.event, d.registry, &d.exits);
        if (r >= 0)
                r = control_new(d.event, &d.dispatch, &d.config->limits, d.exits, &d.control);
        if (r < 0) {
                log_error("Failed to set up the control socket: %s", strerror(-r));
                goto fail;
        }
        r = listen_or_adopt(&d, msg, sizeof msg);
        if (r < 0) {
                log_error("%s", msg);
                goto fail;
        }
        control_on_change(d.control, on_counts_changed, &d);
        r = arm_orphan_timer(&d);
        if (r < 0) {
                log_error("Failed to set up the event loop: %s", strerror(-r));
                goto fail;
        }
        r = arm_watchdog(&d);
        if (r < 0)
                log_warning("Failed to enable the watchdog: %s, ignoring.", strerror(-r));

        log_info("Serving %zu channel(s) on %s.", d.registry->n, d.passed_path[0] ? d.passed_path : d.socket_path);
        notify_ready(&d);
        notify_status(&d);

        r = sd_event_loop(d.event);
        if (r < 0)
                log_error("Event loop failed: %s", strerror(-r));
        daemon_done(&d);
        log_info("Stopped; every channel removed.");
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

fail:
        /* Everything created is removed again; what was taken over from a crashed run is
         * left as it was, recorded, for the next start. The state files go too, but only
         * once nothing recorded is left: else it would be forgotten. */
        if (d.registry) {
                /* The FIFOs of rings reclaimed, not taken over, as a start that succeeds sweeps them. */
                wake_sweep(d.wake, keeps_adopted_wake, d.registry);
                ledger_sweep(d.registry->ledger_dir, keeps_adopted_ledger, d.registry);
                registry_forget_adopted(d.registry);
        }
        daemon_done(&d);
        return EXIT_FAILURE;
}

int daemon_check_config(const DaemonOptions *o) {
        Config *c = NULL;

        if (load_config(o, &c) < 0)
                return EXIT_FAILURE;
        warn_foreign_owners(c);
        printf("%s: configuration OK (%zu channel%s)\n", o->config_path, c->n_channels,
               c->n_channels == 1 ? "" : "s");
        config_free(c);
        return EXIT_SUCCESS;
}
