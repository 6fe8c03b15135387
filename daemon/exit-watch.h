#pragma once

/*
 * Exit watches: a ring holder token lives as long as its opener's
 * process (registry.h). When a connection closes while its process runs
 * on, its tokens stay LIVE as watched orphans, and a watch here ends
 * them when that process exits: its pidfd is an sd-event source, which
 * fires once every thread of the process has exited (a zombie has).
 *
 * A watch names its orphans by value (channel name, token, cookie), never
 * by pointer, and ends only those that are still the orphans it was given
 * (registry_release_orphan()): a channel removed or replaced meanwhile,
 * or a token that a rejoining open took back, is left alone.
 *
 * Bounds: a watch holds one descriptor. A process's later orphans join
 * its watch, found by pid (a pid whose pidfd still runs names that one
 * process; a peer in a PID namespace we cannot see has none, and gets a
 * watch per closed connection), and every new orphan first prunes what
 * ended otherwise (taken back, channel gone), dropping the watches left
 * with nothing to end. So a process that loses its connection and
 * rejoins again and again keeps one watch, not one per connection, and
 * after each new orphan every watch has an orphan alive to end. But
 * processes that each open a ring and close their connection are as many
 * watches, and descriptors, as their user runs: no connection limit
 * counts them once the connections are gone, so exit_watch_add() counts
 * them, per uid and in all.
 */

#include <stddef.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "daemon/registry.h"

typedef struct ExitWatch ExitWatch;

/* Watches on `event`, ending orphans of `registry` (both borrowed; both must outlive it). */
int exit_watch_new(sd_event *event, Registry *registry, ExitWatch **ret);

/*
 * Stop every watch and close its pidfd; their orphans stay as they are.
 * Takes NULL; returns NULL.
 */
ExitWatch *exit_watch_free(ExitWatch *w);

/*
 * Watch the process of o (client_done()), whose connection's peer had
 * `uid`, and end o's orphans when it exits. Takes everything *o owns, in
 * every case (*o is CLIENT_ORPHANS_NULL after). 0, or a negative errno
 * when no watch could be had: then the orphans were ended at once, as a
 * connection without a pidfd ends its tokens. -EUSERS: uid has
 * max_per_uid processes watched already, or all uids together max (a
 * process watched already still gets its new orphans watched).
 */
int exit_watch_add(ExitWatch *w, ClientOrphans *o, uid_t uid, size_t max_per_uid, size_t max);
