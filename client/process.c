/*
 * Which process this is, in one load: a nonce that a child of fork(2)
 * does not share with its parent. A connection remembers the nonce of the
 * process that made it (client_inherited()); posix locks ask on every
 * call, where getpid(), a system call since glibc 2.25, cost more than the
 * lock itself.
 *
 * The nonce lives in a page mapped MADV_WIPEONFORK: any child that does
 * not share our memory (fork(2), clone(2) without CLONE_VM) sees the page
 * zeroed and draws a nonce of its own at its first look. Drawn at random,
 * not taken from the pid: a grandchild may get the pid of a grandparent
 * whose connection it inherited. Where the page cannot be had (kernels
 * before 4.14), the pid it is.
 */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"

static uint64_t *nonce_word;            /* in the wiped page; NULL: none, use the pid */
static pthread_once_t nonce_once = PTHREAD_ONCE_INIT;

static void nonce_setup(void) {
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        if (p == MAP_FAILED)
                return;
        if (madvise(p, page, MADV_WIPEONFORK) < 0) {
                (void) munmap(p, page);
                return;
        }
        nonce_word = p;
}

/* A fresh nonce, never 0, and (with the pid's bits in it) another than the parent's, whose pid differs from ours. */
static uint64_t nonce_draw(void) {
        uint64_t v = 0;
        struct timespec ts;

        if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t) sizeof v) {
                (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                v = (uint64_t) ts.tv_sec * UINT64_C(1000000007) ^ (uint64_t) ts.tv_nsec << 20;
        }
        v = (v << 32) ^ (uint64_t) (uint32_t) getpid();
        return v ?: 1;
}

uint64_t client_process_nonce(void) {
        uint64_t v, fresh;

        (void) pthread_once(&nonce_once, nonce_setup);
        if (!nonce_word)
                return (uint64_t) getpid();
        v = __atomic_load_n(nonce_word, __ATOMIC_RELAXED);
        if (v != 0)
                return v;
        /* The first look in this process: two threads may draw at once, and the first stored wins. */
        fresh = nonce_draw();
        return __atomic_compare_exchange_n(nonce_word, &v, fresh, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED) ? fresh : v;
}
