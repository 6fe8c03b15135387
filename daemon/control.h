#pragma once

/*
 * The control socket: a Unix stream listener on the daemon's sd-event loop
 * and one Conn per client. Each connection reads into its own buffer and
 * answers every complete line through dispatch, in order. A half-sent
 * request waits in its own buffer and never stalls anyone else; a line over
 * PROTO_LINE_MAX gets an E2BIG answer and that connection alone is closed.
 * When a client does not read its answers, the daemon stops reading its
 * requests (backpressure) instead of buffering without bound. A line left
 * half-sent gets request_timeout_ms from its first byte read, however many
 * lines before it are still being answered. What all connections of one
 * uid buffer is capped by buffers_per_uid: past it that uid's newest
 * connections are answered ENOBUFS and closed, no other uid's.
 */

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "daemon/dispatch.h"
#include "daemon/exit-watch.h"

typedef struct Control Control;

/*
 * `limits` is read on every use (not copied), so a reload that swaps the
 * config only needs control_set_limits(), which also lets a connection held
 * back by the old limits go on under the new ones at once. Holder tokens of a connection
 * that ends while its process lives on go to `exits` (borrowed; NULL:
 * they end with the connection).
 */
int control_new(sd_event *event, Dispatch *dispatch, const ConfigLimits *limits, ExitWatch *exits, Control **ret);
void control_set_limits(Control *c, const ConfigLimits *limits);

/*
 * Unlink the socket file at path if nobody listens on it (a crashed run's):
 * 0 when it is gone, or was never there. Refused, with msg saying why:
 * not a socket (-EEXIST), a live server (-EADDRINUSE), a socket of another
 * uid when own_only (-EPERM), or one that cannot be told.
 */
int control_remove_stale_socket(const char *path, bool own_only, char *msg, size_t msg_size);

/*
 * Bind and listen on `path` (its directory must exist): a stale socket file
 * is replaced (control_remove_stale_socket()), but a socket where a server
 * still answers is not (-EADDRINUSE), nor is a path that is not a socket
 * (-EEXIST). The socket gets `mode`, and `group` unless it is (gid_t) -1.
 * The stop unlinks the path only while it names the socket bound here.
 * msg says which.
 */
int control_listen(Control *c, const char *path, mode_t mode, gid_t group, char *msg, size_t msg_size);

/*
 * Give the socket control_listen() bound `mode`, and `group` unless it is
 * (gid_t) -1, as a reload asks: only while its path still names that very
 * socket, and never wider meanwhile than both the old and the new ones
 * allow (it listens). 0; -ESTALE (nothing changed) when the path names
 * another file now or nothing; -EOPNOTSUPP for a socket systemd passed,
 * whose unit decides them; else a negative errno, with the old mode and
 * group put back (msg says if that failed too). msg says which.
 */
int control_set_socket_perms(Control *c, mode_t mode, gid_t group, char *msg, size_t msg_size);

/*
 * The group bind() gave the socket control_listen() bound (the daemon's,
 * or a set-group-ID directory's): what a config without socket_group
 * means. (gid_t) -1 for a socket systemd passed.
 */
gid_t control_bound_group(const Control *c);

/*
 * Serve on a listening socket systemd passed us (socket activation). It is
 * neither bound nor unlinked by us. Takes the fd on success.
 */
int control_adopt(Control *c, int fd, char *msg, size_t msg_size);

/* Stop accepting new connections; existing ones keep being served. */
void control_stop_accepting(Control *c);

/*
 * Call fn(userdata) after each of the control socket's events (an accept, a
 * connection's turn, its process's exit): whatever changes the number of
 * connections or holds happens in one. fn must not free c. NULL: none.
 */
void control_on_change(Control *c, void (*fn)(void *userdata), void *userdata);

size_t control_count_connections(const Control *c);

/* Close every connection (dropping their holds), close the listener and
 * unlink the socket file if we bound it. Takes NULL; returns NULL. */
Control *control_free(Control *c);
