/* A posix semaphore file's sem_t, worked on without trusting its words: proto/sem-t.h. */

#include <endian.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "proto/sem-t.h"

#if !defined(__BYTE_ORDER) || !defined(__LITTLE_ENDIAN) || !defined(__BIG_ENDIAN)
#error "which half of a sem_t's data is its value depends on the byte order"
#endif

#if defined(__GLIBC__) && __WORDSIZE == 64 && (__BYTE_ORDER == __LITTLE_ENDIAN || __BYTE_ORDER == __BIG_ENDIAN)
#define WORDS_KNOWN 1
#else
#define WORDS_KNOWN 0
#endif

#if WORDS_KNOWN
#define WAITER (UINT64_C(1) << 32)

_Static_assert(sizeof(sem_t) >= sizeof(uint64_t) + sizeof(int), "glibc's sem_t: 64 bits of data, then private");

static uint64_t *data_of(const sem_t *sem) {
        return (uint64_t *) (void *) sem;
}

/* The futex word: the value's half of data. */
static uint32_t *value_of(const sem_t *sem) {
        return (uint32_t *) (void *) sem + (__BYTE_ORDER == __BIG_ENDIAN);
}
#endif

int psem_post(sem_t *sem, unsigned tries) {
#if WORDS_KNOWN
        uint64_t *data = data_of(sem), d = __atomic_load_n(data, __ATOMIC_RELAXED);

        for (unsigned i = 1;; i++) {
                if ((uint32_t) d >= SEM_VALUE_MAX)
                        return -EOVERFLOW;
                if (__atomic_compare_exchange_n(data, &d, d + 1, true, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
                        break;
                if (i == tries)
                        return -EAGAIN;
        }
        /* As glibc: a wake-up only for a waiter that counted itself in. Its result says nothing we act on. */
        if (d >> 32)
                (void) syscall(SYS_futex, value_of(sem), FUTEX_WAKE, 1, NULL, NULL, 0);
        return 0;
#else
        (void) tries;
        return sem_post(sem) == 0 ? 0 : -errno;
#endif
}

int psem_trywait(sem_t *sem) {
#if WORDS_KNOWN
        uint64_t *data = data_of(sem), d = __atomic_load_n(data, __ATOMIC_RELAXED);

        do {
                if ((uint32_t) d == 0)
                        return -EAGAIN;
        } while (!__atomic_compare_exchange_n(data, &d, d - 1, true, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED));
        return 0;
#else
        return sem_trywait(sem) == 0 ? 0 : -errno;
#endif
}

int psem_wait_until(sem_t *sem, const struct timespec *at) {
#if WORDS_KNOWN
        uint64_t *data = data_of(sem), d;
        int r = 0;

        if (psem_trywait(sem) == 0)
                return 0;
        /*
         * Count ourselves in, as glibc's waiters do, so that a post wakes us;
         * then take one and count ourselves out in one step. A waiter count a
         * writer scribbled only changes who gets a wake-up call.
         */
        d = __atomic_fetch_add(data, WAITER, __ATOMIC_RELAXED);
        for (;;) {
                if ((uint32_t) d != 0) {
                        if (__atomic_compare_exchange_n(data, &d, d - 1 - WAITER, true, __ATOMIC_ACQUIRE,
                                                        __ATOMIC_RELAXED))
                                return 0;
                        continue;
                }
                /* Shared, on CLOCK_MONOTONIC (no FUTEX_CLOCK_REALTIME), any bit. */
                if (syscall(SYS_futex, value_of(sem), FUTEX_WAIT_BITSET, 0, at, NULL, FUTEX_BITSET_MATCH_ANY) < 0 &&
                    errno != EAGAIN) {
                        r = -errno;     /* ETIMEDOUT, EINTR; anything else is no wait we could make */
                        break;
                }
                d = __atomic_load_n(data, __ATOMIC_RELAXED);
        }
        (void) __atomic_fetch_sub(data, WAITER, __ATOMIC_RELAXED);
        return r;
#else
        return sem_clockwait(sem, CLOCK_MONOTONIC, at) == 0 ? 0 : -errno;
#endif
}

int psem_value(const sem_t *sem) {
#if WORDS_KNOWN
        uint32_t v = __atomic_load_n(value_of(sem), __ATOMIC_RELAXED);

        return v > SEM_VALUE_MAX ? SEM_VALUE_MAX : (int) v;
#else
        int v = 0;

        (void) sem_getvalue((sem_t *) sem, &v);
        return v < 0 ? SEM_VALUE_MAX : v;       /* a word above INT_MAX, as glibc gives it */
#endif
}
