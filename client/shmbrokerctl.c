/*
 * shmbrokerctl: the admin's view of a running shmbrokerd.
 *
 *   shmbrokerctl [-s SOCKET] [--json] list | status [CHANNEL] | reload
 *
 * A table of commands mapped to handlers. Tables for humans look like
 * lsipc's (keys in hex, sizes readable, permissions as rw-rw----); --json
 * prints the daemon's own answer line. Exit: 0 ok, 1 refused by the
 * daemon, 2 usage or connection error; one line on stderr for 1 and 2.
 */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <shmbroker/shmbroker.h>

#define EXIT_REFUSED 1
#define EXIT_USAGE 2

typedef struct Options {
        const char *socket;
        bool json;
} Options;

static void format_size(uint64_t n, char *buf, size_t size) {
        static const char units[] = "KMGTPE";
        double v = (double) n;
        int u = -1;

        if (n < 1024) {
                snprintf(buf, size, "%" PRIu64 "B", n);
                return;
        }
        while (v >= 1024 && u < 5) {
                v /= 1024;
                u++;
        }
        if (v == (double) (uint64_t) v)
                snprintf(buf, size, "%.0f%c", v, units[u]);
        else
                snprintf(buf, size, "%.1f%c", v, units[u]);
}

static void format_perms(unsigned mode, char *buf) {
        static const char rwx[] = "rwxrwxrwx";

        for (int i = 0; i < 9; i++)
                buf[i] = mode & (0400u >> i) ? rwx[i] : '-';
        buf[9] = 0;
}

static void format_time(int64_t t, char *buf, size_t size) {
        time_t tt = (time_t) t;
        struct tm tm;

        if (t == 0 || !localtime_r(&tt, &tm))
                snprintf(buf, size, "-");
        else
                strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm);
}

static int fail_call(shmb_client *c, const char *what, int r) {
        const char *msg = c ? shmb_client_last_message(c) : "";

        if (*msg)
                fprintf(stderr, "shmbrokerctl: %s: %s\n", what, msg);
        else
                fprintf(stderr, "shmbrokerctl: %s: %s\n", what, shmb_strerror(r));
        /* The daemon's refusals have wire names; anything else is our side. */
        return *msg || r == -ENOENT || r == -EACCES || r == -EPROTO ? EXIT_REFUSED : EXIT_USAGE;
}

static const char *layout_name(shmb_layout l) {
        return l == SHMB_LAYOUT_RING ? "ring" : l == SHMB_LAYOUT_BROADCAST ? "broadcast" : "raw";
}

static void print_list(const shmb_channel_status *v, size_t n) {
        printf("%-20s %-10s %7s %7s %8s %5s %-9s %-10s %-10s %-9s\n",
               "NAME", "KEY", "SHMID", "SEMID", "SIZE", "NSEMS", "LAYOUT", "OWNER", "GROUP", "PERMS");
        for (size_t i = 0; i < n; i++) {
                const shmb_channel_status *s = &v[i];
                char size[16], perms[10];

                format_size(s->info.size, size, sizeof size);
                format_perms(s->mode, perms);
                printf("%-20s 0x%08" PRIx32 " %7d %7d %8s %5u %-9s %-10s %-10s %-9s\n",
                       s->info.name, s->info.shm_key, s->info.shm_id, s->info.sem_id, size, s->info.nsems,
                       layout_name(s->info.layout), s->owner, s->group, perms);
        }
}

static void print_status_table(const shmb_channel_status *v, size_t n) {
        printf("%-20s %-10s %8s %6s %8s %8s %7s  %s\n",
               "NAME", "KEY", "SIZE", "NATTCH", "CPID", "LPID", "CLIENTS", "SEMAPHORES");
        for (size_t i = 0; i < n; i++) {
                const shmb_channel_status *s = &v[i];
                char size[16], sems[128] = "", nattch[24] = "-", cpid[16] = "-", lpid[16] = "-";
                size_t used = 0, k;
                int err = shmb_status_error(v, i, NULL);

                format_size(s->info.size, size, sizeof size);
                /* The broker could not read them: say so rather than show values nobody read. */
                if (err < 0)
                        snprintf(sems, sizeof sems, "%s", shmb_errno_name(err) ?: "error");
                for (k = 0; k < s->n_semaphores && used + 16 < sizeof sems; k++)
                        used += (size_t) snprintf(sems + used, sizeof sems - used, "%s%d", k ? "," : "",
                                                  s->semaphores[k].value);
                if (k < s->n_semaphores)        /* only when some were left out */
                        snprintf(sems + used, sizeof sems - used, ",...");
                /* nattch is 0 only when the segment's figures were not read either. */
                if (s->nattch > 0) {
                        snprintf(nattch, sizeof nattch, "%" PRIu64, s->nattch);
                        snprintf(cpid, sizeof cpid, "%d", (int) s->cpid);
                        snprintf(lpid, sizeof lpid, "%d", (int) s->lpid);
                }
                printf("%-20s 0x%08" PRIx32 " %8s %6s %8s %8s %7zu  %s\n",
                       s->info.name, s->info.shm_key, size, nattch, cpid, lpid, s->n_clients, sems);
        }
}

static void print_status_detail(const shmb_channel_status *v) {
        const shmb_channel_status *s = &v[0];
        char size[16], perms[10], t[32], attached[32] = "";
        const char *why;
        int err = shmb_status_error(v, 0, &why);

        format_size(s->info.size, size, sizeof size);
        format_perms(s->mode, perms);
        /* nattch is 0 only when the segment's figures were not read. */
        if (s->nattch > 0)
                snprintf(attached, sizeof attached, ", %" PRIu64 " attached", s->nattch);
        printf("Channel:    %s (%s)\n", s->info.name, layout_name(s->info.layout));
        printf("Segment:    key 0x%08" PRIx32 ", id %d, %s (%" PRIu64 " bytes)%s\n",
               s->info.shm_key, s->info.shm_id, size, s->info.size, attached);
        if (s->info.layout == SHMB_LAYOUT_RING)
                printf("Ring:       %" PRIu32 " slots of %" PRIu32 " bytes\n", s->info.slots, s->info.slot_size);
        if (s->info.layout == SHMB_LAYOUT_BROADCAST)
                printf("Broadcast:  %" PRIu32 " slots of %" PRIu32 " bytes\n", s->info.slots, s->info.slot_size);
        printf("Semaphores: key 0x%08" PRIx32 ", id %d, %u\n", s->info.sem_key, s->info.sem_id, s->info.nsems);
        printf("Access:     owner %s, group %s, %s\n", s->owner, s->group, perms);
        if (s->nattch > 0) {
                format_time(s->ctime, t, sizeof t);
                printf("Changed:    %s (creator pid %d, last pid %d)\n", t, (int) s->cpid, (int) s->lpid);
        }
        if (err < 0)
                printf("Error:      %s: %s\n", shmb_errno_name(err) ?: "error", why);
        else {
                printf("\n%5s %7s %7s %7s %8s\n", "SEM", "VALUE", "NCOUNT", "ZCOUNT", "PID");
                for (size_t k = 0; k < s->n_semaphores; k++)
                        printf("%5zu %7d %7d %7d %8d\n", k, s->semaphores[k].value, s->semaphores[k].ncount,
                               s->semaphores[k].zcount, (int) s->semaphores[k].pid);
        }
        printf("\n%8s %8s %-6s %s\n", "PID", "UID", "ACCESS", "SINCE");
        for (size_t k = 0; k < s->n_clients; k++) {
                format_time(s->clients[k].since, t, sizeof t);
                printf("%8d %8u %-6s %s\n", (int) s->clients[k].pid, (unsigned) s->clients[k].uid,
                       s->clients[k].access == SHMB_RO ? "ro" : "rw", t);
        }
}

/* --json: print the daemon's answer; exit by its "ok". */
static int run_json(shmb_client *c, const char *op, const char *channel) {
        json_t *req = json_pack("{s:s}", "op", op), *ans;
        char *text, *answer = NULL;
        int r, ok;

        if (!req || (channel && json_object_set_new(req, "channel", json_string(channel)) < 0))
                return EXIT_USAGE;
        text = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        if (!text)
                return EXIT_USAGE;
        r = shmb_request_json(c, text, &answer);
        free(text);
        if (r < 0)
                return fail_call(c, op, r);
        puts(answer);
        ans = json_loads(answer, 0, NULL);
        ok = json_is_true(json_object_get(ans, "ok"));
        if (!ok)
                fprintf(stderr, "shmbrokerctl: %s: %s\n", op,
                        json_string_value(json_object_get(ans, "message")) ?: "refused");
        json_decref(ans);
        free(answer);
        return ok ? EXIT_SUCCESS : EXIT_REFUSED;
}

static int cmd_list(shmb_client *c, const Options *o, int argc, char **argv) {
        shmb_channel_status *v;
        size_t n;
        int r;

        if (o->json)
                return run_json(c, "list", NULL);
        r = shmb_list(c, &v, &n);
        if (r < 0)
                return fail_call(c, "list", r);
        print_list(v, n);
        shmb_status_free(v, n);
        return EXIT_SUCCESS;
}

/*
 * The subscribers of broadcast channels (status "subscriptions", which the
 * C structs do not carry): asked again as JSON, so the figures are a
 * moment newer than the table's. `name` NULL: every channel's, each row
 * naming its channel.
 */
static void print_subscriptions(shmb_client *c, const char *name) {
        json_t *req = json_pack("{s:s}", "op", "status"), *ans = NULL, *channels, *ch;
        char *text = NULL, *answer = NULL;
        bool header = false;
        size_t i;

        if (!req || (name && json_object_set_new(req, "channel", json_string(name)) < 0))
                goto out;
        text = json_dumps(req, JSON_COMPACT);
        if (!text || shmb_request_json(c, text, &answer) < 0)
                goto out;
        ans = json_loads(answer, 0, NULL);
        channels = json_object_get(ans, "channels");
        json_array_foreach(channels, i, ch) {
                json_t *subs = json_object_get(ch, "subscriptions"), *e;
                size_t k;

                if (!json_is_array(subs))
                        continue;
                if (!header) {
                        if (name)
                                printf("\n%8s %20s %12s %12s\n", "PID", "POSITION", "LAG", "DROPPED");
                        else
                                printf("\n%-20s %8s %20s %12s %12s\n", "SUBSCRIBERS OF", "PID", "POSITION", "LAG",
                                       "DROPPED");
                        header = true;
                }
                json_array_foreach(subs, k, e) {
                        if (!name)
                                printf("%-20s ", json_string_value(json_object_get(ch, "name")) ?: "?");
                        printf("%8" JSON_INTEGER_FORMAT " %20" JSON_INTEGER_FORMAT " %12" JSON_INTEGER_FORMAT
                               " %12" JSON_INTEGER_FORMAT "\n",
                               json_integer_value(json_object_get(e, "pid")),
                               json_integer_value(json_object_get(e, "position")),
                               json_integer_value(json_object_get(e, "lag")),
                               json_integer_value(json_object_get(e, "dropped")));
                }
        }
out:
        json_decref(ans);
        json_decref(req);
        free(answer);
        free(text);
}

static int cmd_status(shmb_client *c, const Options *o, int argc, char **argv) {
        const char *name = argc > 0 ? argv[0] : NULL;
        shmb_channel_status *v;
        size_t n;
        int r;

        if (o->json)
                return run_json(c, "status", name);
        r = shmb_status(c, name, &v, &n);
        if (r < 0)
                return fail_call(c, name ? name : "status", r);
        if (name && n == 1)
                print_status_detail(v);
        else
                print_status_table(v, n);
        for (size_t i = 0; i < n; i++)
                if (v[i].info.layout == SHMB_LAYOUT_BROADCAST) {
                        print_subscriptions(c, name);
                        break;
                }
        shmb_status_free(v, n);
        return EXIT_SUCCESS;
}

static void print_names(const char *what, char **names) {
        printf("%-8s", what);
        if (!names || !*names)
                printf(" -");
        for (char **p = names; p && *p; p++)
                printf(" %s", *p);
        printf("\n");
}

static int cmd_reload(shmb_client *c, const Options *o, int argc, char **argv) {
        shmb_reload_result res;
        int r;

        if (o->json)
                return run_json(c, "reload", NULL);
        r = shmb_reload(c, &res);
        if (r < 0)
                return fail_call(c, "reload", r);
        print_names("added", res.added);
        print_names("removed", res.removed);
        print_names("changed", res.changed);
        print_names("kept", res.kept);
        shmb_reload_result_free(&res);
        return EXIT_SUCCESS;
}

static const struct {
        const char *name;
        int min_args, max_args;
        int (*run)(shmb_client *c, const Options *o, int argc, char **argv);
} commands[] = {
        { "list", 0, 0, cmd_list },
        { "status", 0, 1, cmd_status },
        { "reload", 0, 0, cmd_reload },
};

static void help(FILE *f) {
        fprintf(f, "Usage: shmbrokerctl [-s SOCKET] [--json] COMMAND\n\n"
                   "Query a running shmbrokerd.\n\n"
                   "Commands:\n"
                   "  list              channels with keys, ids, size, owner and permissions\n"
                   "  status [CHANNEL]  kernel figures, semaphore values and clients\n"
                   "  reload            make the daemon re-read its config (root or admin_group)\n\n"
                   "Options:\n"
                   "  -s, --socket PATH  the daemon's socket (default $SHMBROKER_SOCKET, else "
                   SHMB_DEFAULT_SOCKET ")\n"
                   "  -j, --json         print the daemon's JSON answer\n"
                   "  -h, --help         show this help\n"
                   "  -V, --version      show the version\n\n"
                   "Exit status: 0 ok, 1 refused by the daemon, 2 usage or connection error.\n");
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "socket", required_argument, NULL, 's' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {}
        };
        Options o = {};
        shmb_client *c;
        int opt, r, nargs;

        while ((opt = getopt_long(argc, argv, "+s:jhV", options, NULL)) >= 0)
                switch (opt) {
                case 's':
                        o.socket = optarg;
                        break;
                case 'j':
                        o.json = true;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_SUCCESS;
                case 'V':
                        printf("shmbrokerctl %s\n", PACKAGE_VERSION);
                        return EXIT_SUCCESS;
                default:
                        fprintf(stderr, "shmbrokerctl: see --help\n");
                        return EXIT_USAGE;
                }
        if (optind >= argc) {
                fprintf(stderr, "shmbrokerctl: a command is needed (list, status, reload); see --help\n");
                return EXIT_USAGE;
        }
        nargs = argc - optind - 1;
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
                if (strcmp(commands[i].name, argv[optind]) != 0)
                        continue;
                if (nargs < commands[i].min_args || nargs > commands[i].max_args) {
                        fprintf(stderr, "shmbrokerctl: %s takes %s; see --help\n", commands[i].name,
                                commands[i].max_args ? "at most one channel name" : "no arguments");
                        return EXIT_USAGE;
                }
                r = shmb_connect(o.socket, &c);
                if (r < 0) {
                        /* Name the path the library tried: an empty variable counts as unset. */
                        const char *env = getenv("SHMBROKER_SOCKET");

                        fprintf(stderr, "shmbrokerctl: cannot connect to %s: %s\n",
                                o.socket ?: env && *env ? env : SHMB_DEFAULT_SOCKET, shmb_strerror(r));
                        return EXIT_USAGE;
                }
                r = commands[i].run(c, &o, nargs, argv + optind + 1);
                shmb_disconnect(c);
                return r;
        }
        fprintf(stderr, "shmbrokerctl: unknown command '%s'; see --help\n", argv[optind]);
        return EXIT_USAGE;
}
