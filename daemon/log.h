#pragma once

/*
 * Daemon logging to stderr. Under systemd (JOURNAL_STREAM names our
 * stderr) each line starts with a <N> priority prefix from sd-daemon.h so
 * the journal keeps the levels; on a terminal the prefix is left out.
 * Only the daemon logs: proto/ and the client library never do.
 */

#include <syslog.h>

#include "common/util.h"

void log_setup(int max_level);

_printf_(2, 3) void log_full(int level, const char *fmt, ...);

/*
 * What a client can make the daemon log at will (its refusals, its bad
 * requests): at most LOG_CLIENT_BURST lines every LOG_CLIENT_INTERVAL_SEC,
 * over all clients; the first such line after an interval that left some
 * out says how many. So one client repeating a refused request cannot fill
 * the journal, nor trip journald's own limit, which would drop the
 * daemon's other messages too.
 */
#define LOG_CLIENT_BURST 20
#define LOG_CLIENT_INTERVAL_SEC 10
_printf_(2, 3) void log_client(int level, const char *fmt, ...);

#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
