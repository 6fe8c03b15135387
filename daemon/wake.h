#pragma once

/*
 * Wake-up FIFOs: how a client that waits for a ring in an event loop
 * (shmb_channel_fd()) is woken. Futexes cannot be polled, so each ring
 * channel also has two named FIFOs, NAME.data ("a message may be there")
 * and NAME.space ("a slot may be free"), in a directory of the daemon's
 * own next to its socket. A waiter raises a flag in the ring header
 * (proto/ring.h) and polls a FIFO; whoever publishes or frees a slot and
 * finds the flag writes a byte into it. Files, not descriptors handed out
 * by the daemon, because they outlive it: a crash restart that adopts a
 * channel keeps its FIFOs, so waiters and the senders that connect after
 * the restart still meet.
 *
 * The daemon writes them itself when nobody else will: when it marks a
 * holder dead (a waiter may be stuck behind that holder's claim, which
 * only now can be repaired) and when it removes the channel (a waiter must
 * learn that it was removed).
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "daemon/config.h"

typedef struct Wake Wake;

/*
 * Make (or take over) the directory SOCKET_PATH.wake, mode 0755. An
 * existing one must be a directory owned by the daemon's uid and writable
 * by nobody else, as only then is every file in it ours. It is locked
 * (flock(2)) while *ret lives: -EBUSY when another daemon holds it (one on
 * the same socket path with another state directory). Returns 0 with
 * *ret, or a negative errno with msg saying why (the daemon then runs
 * without wake-up FIFOs; on -EBUSY it must not start).
 */
int wake_open(const char *socket_path, Wake **ret, char *msg, size_t msg_size);
Wake *wake_free(Wake *w);

/*
 * Remove SOCKET_PATH.wake of a dead run (the socket it was made for is no
 * longer ours): every FIFO in it, each signalled first, then the directory.
 * Only a directory wake_open() would take, and not one a live daemon
 * holds; anything else there keeps it.
 */
void wake_remove_dir(const char *socket_path);

/*
 * Give channel s its two FIFOs (a broadcast channel also one per cursor,
 * NAME.data.I, which the subscriber of cursor I alone waits on: the
 * channel's would let one subscriber empty the byte written for another),
 * granted to whoever takes part in the ring
 * as the kernel grants the ring itself: its owner, group and mode, read
 * and write together (a broadcast channel's readers write too), and for a
 * System V channel the daemon's own group, its creator group, as well.
 * keep: an adopted channel, whose existing FIFOs stay (its waiters poll
 * them). Otherwise any old ones are signalled and replaced. Returns 0 or a
 * negative errno, after removing the channel's FIFOs. w may be NULL:
 * nothing to do.
 */
int wake_make(Wake *w, const ChannelSpec *s, bool keep);

/* The same grants again, for the owner, group or mode a reload gave s. */
int wake_set_perms(Wake *w, const ChannelSpec *s);

/* Write a byte into both FIFOs of name, if anyone has them open. Never blocks. */
void wake_signal(const Wake *w, const char *name);

/* Signal, then unlink both FIFOs of name: the channel is removed. */
void wake_remove(Wake *w, const char *name);

/*
 * Remove every FIFO in the directory whose channel keep() rejects: what a
 * crash left of channels that were not adopted. Signalled first.
 */
void wake_sweep(Wake *w, bool (*keep)(const char *name, void *userdata), void *userdata);

/*
 * The paths of name's FIFOs, into data and space (each size bytes).
 * Returns 0, or -ENAMETOOLONG.
 */
int wake_paths(const Wake *w, const char *name, char *data, char *space, size_t size);

/*
 * Open name's FIFOs (data, then space) read-write for handing over with a
 * posix channel's descriptors: a client that sees the broker's socket but
 * not this directory (a container given the socket alone) can still wait
 * through them. Returns 0 with both in ret, or a negative errno (none open).
 */
int wake_open_fds(const Wake *w, const char *name, int ret[2]);
