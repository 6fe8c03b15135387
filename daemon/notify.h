#pragma once

/*
 * sd_notify(3)'s protocol without its blocking send. sd_notify() waits
 * for room whenever the receiver's datagram queue is full (a service
 * manager that is stuck, busy, or not reading at all): the daemon's one
 * thread, and every client with it, would wait too. Here a state change
 * (READY=1, RELOADING=1, STOPPING=1) waits for room up to a second, once:
 * after such a wait in vain, everything is dropped while there is no room,
 * until a send goes through again. The last state change dropped so is
 * sent before the next message, or by notify_flush(), until it goes
 * through or a newer one replaces it. Anything else (STATUS=, WATCHDOG=1,
 * EXTEND_TIMEOUT_USEC=) is dropped when there is no room: the next one
 * says the same, newer.
 *
 * Only AF_UNIX NOTIFY_SOCKET addresses (a path, or '@' for the abstract
 * namespace), as systemd uses for services. Not thread-safe (the daemon
 * has one thread).
 */

#include <stdbool.h>

/*
 * Send text (one or more "KEY=VALUE" lines) to $NOTIFY_SOCKET; state says
 * whether it changes the service's state and so must not be dropped
 * lightly. 0 when sent or there is no NOTIFY_SOCKET, else a negative
 * errno (-EAGAIN: dropped, no room).
 */
int notify_send(bool state, const char *text);
int notify_sendf(bool state, const char *format, ...) __attribute__((format(printf, 2, 3)));

/*
 * Send the last state change that found no room, if any, without waiting:
 * 0 when none is left, -EAGAIN when it still waits for room (try again
 * later), or another negative errno (then it is given up).
 */
int notify_flush(void);
