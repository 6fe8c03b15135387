#pragma once

/* Small helpers shared by every part of the tree. Header-only. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
/* -1, 0 or 1 as a is below, equal to or above b: a comparator's answer. */
#define CMP(a, b) ((a) < (b) ? -1 : (a) > (b) ? 1 : 0)
#define _cleanup_(f) __attribute__((cleanup(f)))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _unused_ __attribute__((unused))

/* CLOCK_MONOTONIC now, in microseconds (sd-event's unit). */
static inline uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static inline int streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}

/* A malloc'd copy of n bytes (NULL when out of memory). */
static inline void *memdup(const void *p, size_t n) {
        void *q = malloc(n ?: 1);

        if (q && n)
                memcpy(q, p, n);
        return q;
}

static inline void freep(void *p) {
        free(*(void **) p);
}

static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}

static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

/* The number of strings in a NULL-terminated list (NULL: 0). */
static inline size_t strv_length(char *const *v) {
        size_t n = 0;

        while (v && v[n])
                n++;
        return n;
}

/* Free a NULL-terminated list of malloc'd strings, and the list (NULL: nothing). */
static inline void strv_free(char **v) {
        for (char **p = v; p && *p; p++)
                free(*p);
        free(v);
}

/* qsort/bsearch comparison of uint32_t values. */
static inline int cmp_u32(const void *a, const void *b) {
        return CMP(*(const uint32_t *) a, *(const uint32_t *) b);
}

/* Take ownership out of a cleanup variable: `*ret = TAKE_PTR(obj);` */
#define TAKE_PTR(p) ({ __typeof__(p) _t = (p); (p) = NULL; _t; })
#define TAKE_FD(fd) ({ int _t = (fd); (fd) = -1; _t; })

/* snprintf into a fixed buffer that may be NULL/0; never overflows. */
_printf_(3, 4)
static inline void msg_set(char *buf, size_t size, const char *fmt, ...) {
        va_list ap;

        if (!buf || size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(buf, size, fmt, ap);
        va_end(ap);
}

/* A malloc'd formatted string, or NULL (asprintf leaves its pointer undefined on failure). */
_printf_(1, 2)
static inline char *strprintf(const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}

/* path made absolute against the working directory (not resolved); malloc'd, NULL on failure. */
static inline char *path_absolute(const char *path) {
        char *cwd, *s;

        if (path[0] == '/')
                return strdup(path);
        cwd = getcwd(NULL, 0);
        s = cwd ? strprintf("%s/%s", cwd, path) : NULL;
        free(cwd);
        return s;
}

/* Copy a string that must fit; returns -ENAMETOOLONG otherwise. */
static inline int strcpy_checked(char *dst, size_t size, const char *src) {
        size_t n = strlen(src);

        if (n >= size)
                return -ENAMETOOLONG;
        memcpy(dst, src, n + 1);
        return 0;
}
