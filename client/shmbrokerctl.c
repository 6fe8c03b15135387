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
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <shmbroker/shmbroker.h>

#include "proto/proto.h"

#define EXIT_REFUSED 1
#define EXIT_USAGE 2

static int write_errno;         /* of the first write to stdout that failed outside stdio's buffer */

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
        /* One decimal would round it up to 1024 of this unit: 1048575 bytes read 1.0M, not 1024.0K. */
        if (u < 5 && v != (double) (uint64_t) v && v >= 1023.95) {
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

/*
 * Text for one line of stderr: a control character (an escape sequence, a
 * newline; also a C1 control, U+0080-U+009F, which some terminals act on)
 * as '?'. The daemon's messages and the user's own arguments alike.
 */
static void print_text(const char *text) {
        for (const unsigned char *p = (const unsigned char *) text; *p; p++) {
                if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
                        fputc('?', stderr);
                        p++;
                } else
                        fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, stderr);
        }
}

static void print_message_tail(const char *what, const char *msg) {
        print_text(what);
        fputs(": ", stderr);
        print_text(msg);
        fputc('\n', stderr);
}

static void print_message(const char *what, const char *msg) {
        fputs("shmbrokerctl: ", stderr);
        print_message_tail(what, msg);
}

static int fail_call(shmb_client *c, const char *what, int r) {
        const char *msg = shmb_client_last_message(c);

        print_message(what, *msg ? msg : shmb_strerror(r));
        /*
         * The daemon's refusals have wire names; anything else is our side.
         * EPROTO after the connect's hello is an answer that broke the
         * protocol (the library's words in msg): a connection error.
         */
        return r != -EPROTO && (*msg || r == -ENOENT || r == -EACCES) ? EXIT_REFUSED : EXIT_USAGE;
}

/*
 * A request {"op": op} with "channel": name when name is not NULL; NULL,
 * with the reason said, when name is no UTF-8 text (JSON holds no other).
 */
static json_t *request_new(const char *op, const char *name) {
        json_t *req = json_pack("{s:s}", "op", op), *n = name ? json_string(name) : NULL;

        if (name && !n && req) {
                json_decref(req);
                print_message(name, "a channel name must be UTF-8 text");
                return NULL;
        }
        /* json_object_set_new() takes n, also when it fails; without req, n is still ours. */
        if (!req || (n && json_object_set_new(req, "channel", n) < 0)) {
                if (!req)
                        json_decref(n);
                json_decref(req);
                print_message(op, strerror(ENOMEM));
                return NULL;
        }
        return req;
}

static const char *layout_name(int layout) {
        return layout == SHMB_LAYOUT_RING ? "ring" : layout == SHMB_LAYOUT_BROADCAST ? "broadcast" : "raw";
}

/*
 * Admins see the kernel's set, as ipcs does: the layout's own semaphores
 * (a ring's) first, then the user's. This is the set's semaphore k.
 */
static int set_semaphore(const shmb_status_list *l, size_t i, unsigned k, int *ret_value, int *ret_ncount,
                         int *ret_zcount, pid_t *ret_pid) {
        unsigned reserved = shmb_status_reserved_nsems(l, i);

        if (k < reserved)
                return shmb_status_reserved_semaphore(l, i, k, ret_value, ret_ncount, ret_zcount, ret_pid);
        return shmb_status_semaphore(l, i, k - reserved, ret_value, ret_ncount, ret_zcount, ret_pid);
}

static unsigned set_nsems(const shmb_status_list *l, size_t i) {
        return shmb_status_reserved_nsems(l, i) + shmb_status_nsems(l, i);
}

static bool is_posix(const shmb_status_list *l, size_t i) {
        return shmb_status_kind(l, i) == SHMB_KIND_POSIX;
}

/* The KEY column: a System V key, or "-" for a posix channel, which has names instead. */
static void format_key(const shmb_status_list *l, size_t i, char buf[static 16]) {
        if (is_posix(l, i))
                snprintf(buf, 16, "-");
        else
                snprintf(buf, 16, "0x%08" PRIx32, shmb_status_shm_key(l, i));
}

/* An id column: the System V id, or "-" for a posix channel. */
static void format_id(int id, char buf[static 16]) {
        if (id < 0)
                snprintf(buf, 16, "-");
        else
                snprintf(buf, 16, "%d", id);
}

static void print_list(const shmb_status_list *l) {
        printf("%-20s %-5s %-10s %7s %7s %8s %5s %-9s %-10s %-10s %-9s %s\n",
               "NAME", "KIND", "KEY", "SHMID", "SEMID", "SIZE", "NSEMS", "LAYOUT", "OWNER", "GROUP", "PERMS", "SHM NAME");
        for (size_t i = 0; i < shmb_status_count(l); i++) {
                char size[16], perms[10], key[16], shm_id[16], sem_id[16];

                format_size(shmb_status_size(l, i), size, sizeof size);
                format_perms((unsigned) shmb_status_mode(l, i), perms);
                format_key(l, i, key);
                format_id(shmb_status_shm_id(l, i), shm_id);
                format_id(shmb_status_sem_id(l, i), sem_id);
                printf("%-20s %-5s %-10s %7s %7s %8s %5u %-9s %-10s %-10s %-9s %s\n",
                       shmb_status_name(l, i), is_posix(l, i) ? "posix" : "sysv", key, shm_id, sem_id, size,
                       set_nsems(l, i), layout_name(shmb_status_layout(l, i)), shmb_status_owner(l, i),
                       shmb_status_group(l, i), perms, shmb_status_shm_name(l, i) ?: "-");
        }
}

static void print_status_table(const shmb_status_list *l) {
        printf("%-20s %-10s %8s %6s %8s %8s %7s  %s\n",
               "NAME", "KEY", "SIZE", "NATTCH", "CPID", "LPID", "CLIENTS", "SEMAPHORES");
        for (size_t i = 0; i < shmb_status_count(l); i++) {
                char size[16], sems[128] = "", nattch[24] = "-", cpid[16] = "-", lpid[16] = "-", key[16];
                size_t used = 0;
                unsigned k, n = 0;
                int err = shmb_status_error(l, i, NULL), value = 0;

                format_size(shmb_status_size(l, i), size, sizeof size);
                /* The broker could not read them: say so rather than show values nobody read. */
                if (err < 0)
                        snprintf(sems, sizeof sems, "%s", shmb_errno_name(err) ?: "error");
                /* n: how many the answer has figures for (none where the broker could not read them). */
                while (n < set_nsems(l, i) && set_semaphore(l, i, n, NULL, NULL, NULL, NULL) == 0)
                        n++;
                for (k = 0; k < n && used + 16 < sizeof sems; k++) {
                        (void) set_semaphore(l, i, k, &value, NULL, NULL, NULL);
                        used += (size_t) snprintf(sems + used, sizeof sems - used, "%s%d", k ? "," : "", value);
                }
                if (k < n)      /* only when some were left out */
                        snprintf(sems + used, sizeof sems - used, ",...");
                /* nattch is 0 only when the segment's figures were not read either. */
                if (shmb_status_nattch(l, i) > 0) {
                        snprintf(nattch, sizeof nattch, "%" PRIu64, shmb_status_nattch(l, i));
                        snprintf(cpid, sizeof cpid, "%d", (int) shmb_status_cpid(l, i));
                        snprintf(lpid, sizeof lpid, "%d", (int) shmb_status_lpid(l, i));
                }
                format_key(l, i, key);
                printf("%-20s %-10s %8s %6s %8s %8s %7zu  %s\n",
                       shmb_status_name(l, i), key, size, nattch, cpid, lpid,
                       shmb_status_nclients(l, i), sems);
        }
}

static void print_status_detail(const shmb_status_list *l) {
        char size[16], perms[10], t[32], attached[32] = "";
        uint64_t nattch = shmb_status_nattch(l, 0);
        const char *why;
        int err = shmb_status_error(l, 0, &why);

        format_size(shmb_status_size(l, 0), size, sizeof size);
        format_perms((unsigned) shmb_status_mode(l, 0), perms);
        /* nattch is 0 only when the segment's figures were not read. */
        if (nattch > 0)
                snprintf(attached, sizeof attached, ", %" PRIu64 " attached", nattch);
        printf("Channel:    %s (%s)\n", shmb_status_name(l, 0), layout_name(shmb_status_layout(l, 0)));
        if (is_posix(l, 0))
                printf("Segment:    posix %s, %s (%" PRIu64 " bytes)\n", shmb_status_shm_name(l, 0) ?: "?", size,
                       shmb_status_size(l, 0));
        else
                printf("Segment:    key 0x%08" PRIx32 ", id %d, %s (%" PRIu64 " bytes)%s\n",
                       shmb_status_shm_key(l, 0), shmb_status_shm_id(l, 0), size, shmb_status_size(l, 0), attached);
        if (shmb_status_layout(l, 0) == SHMB_LAYOUT_RING)
                printf("Ring:       %" PRIu32 " slots of %" PRIu32 " bytes\n", shmb_status_slots(l, 0),
                       shmb_status_slot_size(l, 0));
        if (shmb_status_layout(l, 0) == SHMB_LAYOUT_BROADCAST)
                printf("Broadcast:  %" PRIu32 " slots of %" PRIu32 " bytes\n", shmb_status_slots(l, 0),
                       shmb_status_slot_size(l, 0));
        if (is_posix(l, 0))
                printf("Semaphores: posix, %u\n", set_nsems(l, 0));
        else
                printf("Semaphores: key 0x%08" PRIx32 ", id %d, %u\n", shmb_status_sem_key(l, 0),
                       shmb_status_sem_id(l, 0), set_nsems(l, 0));
        printf("Access:     owner %s, group %s, %s\n", shmb_status_owner(l, 0), shmb_status_group(l, 0), perms);
        if (nattch > 0) {
                format_time(shmb_status_ctime(l, 0), t, sizeof t);
                printf("Changed:    %s (creator pid %d, last pid %d)\n", t, (int) shmb_status_cpid(l, 0),
                       (int) shmb_status_lpid(l, 0));
        }
        if (err < 0)
                printf("Error:      %s: %s\n", shmb_errno_name(err) ?: "error", why);
        else {
                int value, ncount, zcount;
                pid_t pid;

                printf("\n%5s %7s %7s %7s %8s%s\n", "SEM", "VALUE", "NCOUNT", "ZCOUNT", "PID",
                       is_posix(l, 0) ? "  NAME" : "");
                for (unsigned k = 0; set_semaphore(l, 0, k, &value, &ncount, &zcount, &pid) == 0; k++) {
                        char nc[16], zc[16], p[16];

                        /* -1 and 0: figures a POSIX semaphore does not have */
                        format_id(ncount, nc);
                        format_id(zcount, zc);
                        format_id(is_posix(l, 0) ? -1 : (int) pid, p);
                        printf("%5u %7d %7s %7s %8s", k, value, nc, zc, p);
                        /* k counts the layout's own semaphores too; the names are of user semaphores */
                        if (is_posix(l, 0))
                                printf("  %s", k >= shmb_status_reserved_nsems(l, 0) ?
                                       shmb_status_sem_name(l, 0, k - shmb_status_reserved_nsems(l, 0)) ?: "-" : "-");
                        printf("\n");
                }
        }
        printf("\n%8s %8s %-6s %s\n", "PID", "UID", "ACCESS", "SINCE");
        for (size_t k = 0; k < shmb_status_nclients(l, 0); k++) {
                shmb_access access;
                int64_t since;
                pid_t pid;
                uid_t uid;

                if (shmb_status_client(l, 0, k, &pid, &uid, &access, &since) < 0)
                        break;
                format_time(since, t, sizeof t);
                printf("%8d %8u %-6s %s\n", (int) pid, (unsigned) uid, access == SHMB_RO ? "ro" : "rw", t);
        }
}

/* --json: print the daemon's answer; exit by its "ok". */
static int run_json(shmb_client *c, const char *op, const char *channel) {
        json_t *req = request_new(op, channel), *ans;
        char *text, *answer = NULL;
        int r, ok;

        if (!req)
                return EXIT_USAGE;
        text = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        if (!text) {
                print_message(op, strerror(ENOMEM));
                return EXIT_USAGE;
        }
        r = shmb_request_json(c, text, &answer);
        free(text);
        if (r < 0)
                return fail_call(c, op, r);
        if (puts(answer) == EOF)
                write_errno = errno;
        ans = json_loads(answer, 0, NULL);
        if (!json_is_object(ans)) {
                print_message(op, "the daemon's answer is not a JSON object");
                json_decref(ans);
                free(answer);
                return EXIT_USAGE;
        }
        ok = json_is_true(json_object_get(ans, "ok"));
        if (!ok)
                print_message(op, json_string_value(json_object_get(ans, "message")) ?: "refused");
        json_decref(ans);
        free(answer);
        return ok ? EXIT_SUCCESS : EXIT_REFUSED;
}

static int cmd_list(shmb_client *c, const Options *o, int argc, char **argv) {
        shmb_status_list *l;
        int r;

        if (o->json)
                return run_json(c, "list", NULL);
        r = shmb_list(c, &l);
        if (r < 0)
                return fail_call(c, "list", r);
        print_list(l);
        shmb_status_free(l);
        return EXIT_SUCCESS;
}

/*
 * The subscribers of broadcast channels (status "subscriptions", which the
 * C structs do not carry): asked again as JSON, so the figures are a
 * moment newer than the table's. `name` NULL: every channel's, each row
 * naming its channel.
 */
static int print_subscriptions(shmb_client *c, const char *name) {
        json_t *req = request_new("status", name), *ans = NULL, *channels, *ch;
        char *text = NULL, *answer = NULL;
        bool header = false;
        size_t i;
        int r = EXIT_USAGE, asked;

        if (!req)
                goto out;
        text = json_dumps(req, JSON_COMPACT);
        if (!text) {
                print_message("status", strerror(ENOMEM));
                goto out;
        }
        /* The table without it would say the channel has no subscribers. */
        asked = shmb_request_json(c, text, &answer);
        if (asked < 0) {
                r = fail_call(c, name ? name : "status", asked);
                goto out;
        }
        ans = json_loads(answer, 0, NULL);
        if (!json_is_object(ans) || !json_is_boolean(json_object_get(ans, "ok"))) {
                print_message(name ? name : "status", "the daemon's answer for the subscribers breaks the protocol");
                goto out;
        }
        if (!json_is_true(json_object_get(ans, "ok"))) {
                print_message(name ? name : "status", json_string_value(json_object_get(ans, "message")) ?: "refused");
                r = EXIT_REFUSED;
                goto out;
        }
        channels = json_object_get(ans, "channels");
        json_array_foreach(channels, i, ch) {
                json_t *subs = json_object_get(ch, "subscriptions"), *e;
                const char *ch_name = json_string_value(json_object_get(ch, "name"));
                size_t k;

                if (!json_is_array(subs))
                        continue;
                /* Printed at the start of a row: a control character or newline in it could forge others. */
                if (!ch_name || !proto_name_is_valid(ch_name)) {
                        print_message(name ? name : "status", "the daemon's answer for the subscribers breaks the "
                                      "protocol (a channel name that is not one)");
                        goto out;
                }
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
                                printf("%-20s ", ch_name);
                        printf("%8" JSON_INTEGER_FORMAT " %20" JSON_INTEGER_FORMAT " %12" JSON_INTEGER_FORMAT
                               " %12" JSON_INTEGER_FORMAT "\n",
                               json_integer_value(json_object_get(e, "pid")),
                               json_integer_value(json_object_get(e, "position")),
                               json_integer_value(json_object_get(e, "lag")),
                               json_integer_value(json_object_get(e, "dropped")));
                }
        }
        r = EXIT_SUCCESS;
out:
        json_decref(ans);
        json_decref(req);
        free(answer);
        free(text);
        return r;
}

static int cmd_status(shmb_client *c, const Options *o, int argc, char **argv) {
        const char *name = argc > 0 ? argv[0] : NULL;
        shmb_status_list *l;
        int r;

        if (o->json)
                return run_json(c, "status", name);
        r = shmb_status(c, name, &l);
        if (r < 0)
                return fail_call(c, name ? name : "status", r);
        if (name && shmb_status_count(l) == 1)
                print_status_detail(l);
        else
                print_status_table(l);
        r = EXIT_SUCCESS;
        for (size_t i = 0; i < shmb_status_count(l); i++)
                if (shmb_status_layout(l, i) == SHMB_LAYOUT_BROADCAST) {
                        r = print_subscriptions(c, name);
                        break;
                }
        shmb_status_free(l);
        return r;
}

static void print_names(const char *what, const char *const *names) {
        printf("%-8s", what);
        if (!names || !*names)
                printf(" -");
        for (const char *const *p = names; p && *p; p++)
                printf(" %s", *p);
        printf("\n");
}

static int cmd_reload(shmb_client *c, const Options *o, int argc, char **argv) {
        shmb_reload_result *res;
        int r;

        if (o->json)
                return run_json(c, "reload", NULL);
        r = shmb_reload(c, &res);
        if (r < 0)
                return fail_call(c, "reload", r);
        print_names("added", shmb_reload_result_added(res));
        print_names("removed", shmb_reload_result_removed(res));
        print_names("changed", shmb_reload_result_changed(res));
        print_names("kept", shmb_reload_result_kept(res));
        shmb_reload_result_free(res);
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

/*
 * Why shmb_connect(path) failed, for an admin: the broker's sentence for a
 * refusal (which limit); else the kernel's word for a path we may not reach
 * or that names nothing (the library's EACCES and ENOENT texts speak of a
 * channel, which no one named here); and for a refused connect, whether
 * there is a socket at all: a plain file or a directory refuses too, and
 * "nobody listening" would send the admin after a stopped daemon.
 */
static const char *connect_failure(const char *path, int r) {
        const char *why = shmb_client_last_message(NULL);
        struct stat st;

        if (*why)
                return why;
        if (r == -EACCES || r == -EPERM)
                return strerror(-r);
        if (r == -ENOENT)
                return "no socket at that path (is shmbrokerd running?)";
        if ((r == -ECONNREFUSED || r == -ENOTSOCK) && stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
                return S_ISDIR(st.st_mode) ? "that is a directory, not a socket" : "that file is not a socket";
        return shmb_strerror(r);
}

/* r, unless what went to stdout did not all arrive: a script would take an empty table for an answer. */
static int written(int r) {
        if (fflush(stdout) != 0 || ferror(stdout)) {
                int e = write_errno ? write_errno : errno ? errno : EIO;

                fprintf(stderr, "shmbrokerctl: cannot write to standard output: %s\n", strerror(e));
                return EXIT_USAGE;
        }
        return r;
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

        /*
         * A closed standard descriptor would be the next one opened, the
         * daemon's socket: the table or a message would go to the daemon.
         * /dev/null stands in for each; a closed stdout is an error at once.
         */
        for (int fd = 0; fd <= 2; fd++)
                if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
                        if (open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
                                return EXIT_USAGE;
                        if (fd == 1) {
                                fprintf(stderr, "shmbrokerctl: cannot write to standard output: %s\n", strerror(EBADF));
                                return EXIT_USAGE;
                        }
                }
        opterr = 0;     /* one line on stderr, and it is ours */
        for (;;) {
                /* The argument getopt looks at: within a group of short options optind stays. */
                const char *arg = optind < argc ? argv[optind] : "";
                bool is_long = strncmp(arg, "--", 2) == 0;

                opt = getopt_long(argc, argv, "+:s:jhV", options, NULL);
                if (opt < 0)
                        break;
                switch (opt) {
                case 's':
                        /* "" names no file, and as a socket address it is an abstract one that anyone may bind. */
                        if (!*optarg) {
                                fprintf(stderr, "shmbrokerctl: option -s needs a path, not an empty one; see --help\n");
                                return EXIT_USAGE;
                        }
                        o.socket = optarg;
                        break;
                case 'j':
                        o.json = true;
                        break;
                case 'h':
                        help(stdout);
                        return written(EXIT_SUCCESS);
                case 'V':
                        printf("shmbrokerctl %s\n", PACKAGE_VERSION);
                        return written(EXIT_SUCCESS);
                case ':':
                        if (is_long)
                                fprintf(stderr, "shmbrokerctl: option %s needs an argument; see --help\n", arg);
                        else
                                fprintf(stderr, "shmbrokerctl: option -%c needs an argument; see --help\n", optopt);
                        return EXIT_USAGE;
                default:
                        /* A long option (unknown, or given an argument it takes none of) is named as it was written. */
                        if (is_long) {
                                fputs("shmbrokerctl: bad option ", stderr);
                                print_text(arg);
                                fputs("; see --help\n", stderr);
                        }
                        else
                                fprintf(stderr, "shmbrokerctl: unknown option -%c; see --help\n", optopt);
                        return EXIT_USAGE;
                }
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
                /*
                 * A name no channel can have is a usage error, found before connecting, with the rule said
                 * (the library's EINVAL text is a catch-all). --json sends it as given: the daemon's answer
                 * is what that mode prints.
                 */
                if (nargs > 0 && !o.json && !proto_name_is_valid(argv[optind + 1])) {
                        fputs("shmbrokerctl: \"", stderr);
                        print_text(argv[optind + 1]);
                        fprintf(stderr, "\" is not a channel name: 1-%d characters of A-Z a-z 0-9 . _ -\n",
                                PROTO_NAME_MAX);
                        return EXIT_USAGE;
                }
                r = shmb_connect(o.socket, &c);
                if (r < 0) {
                        /* Name the path the library tried: an empty variable counts as unset. */
                        const char *env = getenv("SHMBROKER_SOCKET");
                        const char *path = o.socket ?: env && *env ? env : SHMB_DEFAULT_SOCKET;

                        fputs("shmbrokerctl: cannot connect to ", stderr);
                        print_message_tail(path, connect_failure(path, r));
                        return EXIT_USAGE;
                }
                r = commands[i].run(c, &o, nargs, argv + optind + 1);
                shmb_disconnect(c);
                return written(r);
        }
        fputs("shmbrokerctl: unknown command '", stderr);
        print_text(argv[optind]);
        fputs("'; see --help\n", stderr);
        return EXIT_USAGE;
}
