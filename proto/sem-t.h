#pragma once

/*
 * Posting, taking and reading the sem_t at the start of a posix channel's
 * semaphore file (proto/posix.h) without handing its words to glibc.
 *
 * Every rw opener of the channel maps that file read-write. glibc's
 * sem_post() and sem_clockwait() make the futex call that the sem_t's own
 * "private" word names, and when the kernel refuses it they abort the
 * process ("The futex facility returned an unexpected error code."); a
 * word that turns the wake-up into FUTEX_WAIT holds a poster for ever. So
 * one writer could end or hang every other user of the channel, the broker
 * included. These do what glibc does on a process-shared sem_t with 64-bit
 * atomics, the layout sem_open() users share the file with (the value in
 * the low half of its first 8 bytes, the count of waiters in the high
 * half), and their futex calls are always the process-shared ones with
 * arguments of their own, whatever the file says. A writer can still
 * garble the value or delay a waiter, as it can the channel's data.
 *
 * Where glibc's layout is not known to be that (another C library, or a
 * 32-bit one), they are glibc's calls, and the above holds not.
 *
 * Thread-safe as sem_*() are; errors as negative errno values.
 */

#include <semaphore.h>
#include <time.h>

/*
 * Post: 0, or -EOVERFLOW at SEM_VALUE_MAX (a word above it too). Tries the
 * compare-and-swap at most tries times (0: as long as it takes), then
 * -EAGAIN: for a caller that must not be held by a writer that keeps
 * changing the word.
 */
int psem_post(sem_t *sem, unsigned tries);

/* Take one without waiting: 0, or -EAGAIN at 0. */
int psem_trywait(sem_t *sem);

/* Take one, waiting until at (CLOCK_MONOTONIC): 0, -ETIMEDOUT, -EINTR (a signal). */
int psem_wait_until(sem_t *sem, const struct timespec *at);

/* The value, 0 to SEM_VALUE_MAX (a word above it, which no post makes, counts as SEM_VALUE_MAX). */
int psem_value(const sem_t *sem);
