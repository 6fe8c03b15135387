#pragma once

/*
 * The daemon's own effective uid and gid, asked once: they are system
 * calls, and were asked several times per channel at start. The daemon
 * never changes its ids, and a fork keeps them. Not thread-safe on first
 * use (the daemon has one thread).
 */

#include <sys/types.h>

uid_t self_euid(void);
gid_t self_egid(void);

/*
 * Our pid, asked once per process (three times per channel at start
 * before). A fork asks again: the child of a test that links the daemon's
 * library is another process.
 */
pid_t self_pid(void);
