#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "common/util.h"
#include "daemon/state.h"

#define STATE_HEADER "# shmbroker state v1: objects this daemon created\n"

struct State {
        int lock_fd;
        int fd;                 /* O_APPEND */
        char *lock_path;
        char *path;
};

static const char *kind_name(StateKind k) {
        return k == STATE_SHM ? "shm" : "sem";
}

/*
 * The lock file is unlinked on a clean exit, so a daemon that opened the
 * old inode just before must not trust its lock: after flock() succeeds,
 * the path has to still name the inode we hold, or we try again.
 */
static int lock_path(const char *path, int *ret_fd) {
        for (int attempt = 0; attempt < 8; attempt++) {
                _cleanup_(closep) int fd = -1;
                struct stat a, b;

                fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
                if (fd < 0)
                        return -errno;
                if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                        return errno == EWOULDBLOCK ? -EBUSY : -errno;
                if (fstat(fd, &a) < 0)
                        return -errno;
                if (stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
                        *ret_fd = TAKE_FD(fd);
                        return 0;
                }
        }
        return -EBUSY;
}

int state_open(const char *socket_path, State **ret) {
        State *s;
        int r;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->lock_fd = s->fd = -1;
        if (asprintf(&s->lock_path, "%s.lock", socket_path) < 0) {
                s->lock_path = NULL;
                r = -ENOMEM;
                goto fail;
        }
        if (asprintf(&s->path, "%s.state", socket_path) < 0) {
                s->path = NULL;
                r = -ENOMEM;
                goto fail;
        }
        r = lock_path(s->lock_path, &s->lock_fd);
        if (r < 0)
                goto fail;
        s->fd = open(s->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (s->fd < 0) {
                r = -errno;
                goto fail;
        }
        *ret = s;
        return 0;
fail:
        state_free(s);
        return r;
}

static int parse_line(const char *line, bool *ret_add, StateRecord *ret) {
        bool add = line[0] != '-';
        const char *p = add ? line : line + 1;
        char kind[8];
        uint32_t key;
        long long a;
        unsigned long long b;
        int id;

        *ret = (StateRecord) { .id = -1 };
        if (sscanf(p, "%7s %" SCNu32, kind, &key) != 2)
                return -EINVAL;
        if (streq(kind, "shm") || streq(kind, "sem")) {
                if (sscanf(p, "%*s %*u %d", &id) != 1 || id < 0)
                        return -EINVAL;
                ret->id = id;
        } else if (streq(kind, "pshm") || streq(kind, "psem")) {
                if (sscanf(p, "%*s %*u %lld %llu", &a, &b) != 2)
                        return -EINVAL;
                ret->pending = true;
                ret->stamp = a;
                ret->size = b;
        } else
                return -EINVAL;
        ret->kind = streq(kind + ret->pending, "shm") ? STATE_SHM : STATE_SEM;
        ret->key = key;
        *ret_add = add;
        return 0;
}

static bool same_record(const StateRecord *a, const StateRecord *b) {
        return a->kind == b->kind && a->key == b->key && a->pending == b->pending && a->id == b->id &&
               a->stamp == b->stamp && a->size == b->size;
}

int state_read(State *s, StateRecord **ret, size_t *ret_n, size_t *ret_skipped) {
        _cleanup_(fclosep) FILE *f = NULL;
        _cleanup_(freep) char *line = NULL;
        _cleanup_(freep) StateRecord *v = NULL;
        size_t n = 0, cap = 0, skipped = 0, linecap = 0;
        int fd;

        fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        f = fdopen(fd, "r");
        if (!f) {
                close(fd);
                return -errno;
        }
        while (getline(&line, &linecap, f) > 0) {
                StateRecord rec;
                bool add;

                if (line[0] == '#' || line[0] == '\n')
                        continue;
                if (parse_line(line, &add, &rec) < 0) {
                        skipped++;
                        continue;
                }
                if (add) {
                        if (n == cap) {
                                StateRecord *nv = reallocarray(v, cap ? cap * 2 : 16, sizeof *v);

                                if (!nv)
                                        return -ENOMEM;
                                v = nv;
                                cap = cap ? cap * 2 : 16;
                        }
                        v[n++] = rec;
                        continue;
                }
                /* A drop cancels the latest matching add. */
                for (size_t i = n; i-- > 0;)
                        if (same_record(&v[i], &rec)) {
                                memmove(&v[i], &v[i + 1], (n - i - 1) * sizeof *v);
                                n--;
                                break;
                        }
        }
        if (ferror(f))
                return -EIO;
        *ret = TAKE_PTR(v);
        *ret_n = n;
        *ret_skipped = skipped;
        return 0;
}

static int write_all(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t k = write(fd, buf, len);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                buf += k;
                len -= (size_t) k;
        }
        return 0;
}

static int format_record(char *line, size_t size, const StateRecord *r, bool add) {
        return r->pending
                ? snprintf(line, size, "%sp%s %" PRIu32 " %" PRId64 " %" PRIu64 "\n", add ? "" : "-",
                           kind_name(r->kind), r->key, r->stamp, r->size)
                : snprintf(line, size, "%s%s %" PRIu32 " %d\n", add ? "" : "-", kind_name(r->kind), r->key, r->id);
}

int state_append_records(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel) {
        char buf[4 * 96];
        size_t len = 0;

        if (n_add + n_cancel > 4)
                return -EINVAL;
        for (size_t i = 0; i < n_add + n_cancel; i++)
                len += (size_t) format_record(buf + len, sizeof buf - len, i < n_add ? &add[i] : &cancel[i - n_add],
                                              i < n_add);
        /* One write() with O_APPEND: never interleaved; a kill can cut it only at a page boundary. */
        return write_all(s->fd, buf, len);
}

int state_drop(State *s, StateKind kind, uint32_t key, int id) {
        StateRecord r = { .kind = kind, .key = key, .id = id };

        return state_append_records(s, NULL, 0, &r, 1);
}

int state_rewrite(State *s, const StateRecord *v, size_t n) {
        _cleanup_(freep) char *tmp = NULL;
        _cleanup_(closep) int fd = -1;
        int r;

        if (asprintf(&tmp, "%s.new", s->path) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        /* O_APPEND from the start: after the rename this descriptor is the state file. */
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        r = write_all(fd, STATE_HEADER, strlen(STATE_HEADER));
        for (size_t i = 0; r == 0 && i < n; i++) {
                char line[96];
                int k = format_record(line, sizeof line, &v[i], true);

                r = write_all(fd, line, (size_t) k);
        }
        if (r < 0)
                goto fail;
        /* rename() swaps atomically: a crash leaves either the old or the new list. */
        if (rename(tmp, s->path) < 0) {
                r = -errno;
                goto fail;
        }
        close(s->fd);
        s->fd = TAKE_FD(fd);
        return 0;
fail:
        unlink(tmp);
        return r;
}

void state_remove_files(State *s) {
        unlink(s->path);
        unlink(s->lock_path);
}

const char *state_path(const State *s) {
        return s->path;
}

State *state_free(State *s) {
        if (!s)
                return NULL;
        if (s->fd >= 0)
                close(s->fd);
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        free(s->path);
        free(s->lock_path);
        free(s);
        return NULL;
}
