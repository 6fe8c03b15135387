/* shmbrokerd: command line only; the daemon lives in daemon.c. */

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log.h"

static void help(void) {
        printf("Usage: shmbrokerd [OPTIONS]\n\n"
               "Own the System V shared-memory channels named in a JSON config and\n"
               "hand them to clients over a Unix socket.\n\n"
               "  -c, --config PATH   config file (default " CONFIG_DEFAULT_PATH ")\n"
               "      --socket PATH   listen here instead of the config's \"socket\"\n"
               "      --state-dir PATH\n"
               "                      keep the lock, crash state and key secret here\n"
               "                      (default: $RUNTIME_DIRECTORY, else the socket's directory)\n"
               "      --check-config  validate the config, touch no IPC, and exit 0/1\n"
               "  -v, --verbose       log debug messages\n"
               "  -h, --help          show this help\n"
               "      --version       show the version\n");
}

/* r, or 1 when what was printed on stdout did not reach it (a full disk, a closed pipe): not a success. */
static int stdout_written(int r) {
        if (fflush(stdout) == 0 && !ferror(stdout))
                return r;
        fprintf(stderr, "shmbrokerd: cannot write to standard output: %s\n", strerror(errno));
        return r == EXIT_SUCCESS ? EXIT_FAILURE : r;
}

int main(int argc, char *argv[]) {
        enum { ARG_SOCKET = 0x100, ARG_STATE_DIR, ARG_CHECK, ARG_VERSION };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "check-config", no_argument, NULL, ARG_CHECK },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {}
        };
        DaemonOptions o = { .config_path = CONFIG_DEFAULT_PATH, .log_level = LOG_INFO };
        bool check = false;
        int c;

        while ((c = getopt_long(argc, argv, "c:vh", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        o.config_path = optarg;
                        break;
                case ARG_SOCKET:
                        o.socket_path = optarg;
                        break;
                case ARG_STATE_DIR:
                        o.state_dir = optarg;
                        break;
                case ARG_CHECK:
                        check = true;
                        break;
                case 'v':
                        o.log_level = LOG_DEBUG;
                        break;
                case 'h':
                        help();
                        return stdout_written(EXIT_SUCCESS);
                case ARG_VERSION:
                        printf("shmbrokerd %s\n", PACKAGE_VERSION);
                        return stdout_written(EXIT_SUCCESS);
                default:
                        return 2;
                }
        if (optind < argc) {
                fprintf(stderr, "shmbrokerd: unexpected argument '%s'; see --help\n", argv[optind]);
                return 2;
        }
        /* An empty path names nothing: a usage error, as an empty --socket is, not a file that cannot be read. */
        if (!*o.config_path || (o.state_dir && !*o.state_dir)) {
                fprintf(stderr, "shmbrokerd: %s must not be empty; see --help\n",
                        !*o.config_path ? "--config" : "--state-dir");
                return 2;
        }
        /* As the file's "socket" is checked: before anything is named after it (the state files). */
        if (o.socket_path && (!*o.socket_path || strlen(o.socket_path) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))) {
                fprintf(stderr, "shmbrokerd: --socket must be a path of 1-%zu bytes\n",
                        sizeof(((struct sockaddr_un *) NULL)->sun_path) - 1);
                return 2;
        }
        log_setup(o.log_level);
        return check ? stdout_written(daemon_check_config(&o)) : daemon_run(&o);
}
