/*
 * The state directory (see state.h). Every file is reached through a
 * descriptor of the checked directory (openat), so a path swapped after
 * the check cannot redirect us, and every open is O_NOFOLLOW|O_NONBLOCK
 * and checked with fstat() before a byte is read: a symlink, a FIFO or a
 * device planted under one of our names refuses the start at once instead
 * of being followed or hanging it.
 */

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/lock-file.h"
#include "daemon/state.h"

#define STATE_HEADER "# shmbroker state v3: objects this daemon created (kind key id pid since size;" \
                     " chan key shm-id sem-id fingerprint name; [p]posix role dev ino pid since size name [uid])\n"
#define SECRET_TEXT_LEN (2 * SIPHASH_KEY_SIZE + 1)      /* hex and a newline */

typedef struct KeptRecord {
        StateRecord rec;
        int err;                /* why it could not be removed */
} KeptRecord;

struct State {
        int dir_fd;
        int lock_fd;
        int fd;                 /* O_APPEND */
        char *name;             /* the socket's base name */
        char *lock_path;        /* full paths, for messages */
        char *path;
        uint8_t secret[SIPHASH_KEY_SIZE];
        bool batch;
        char *deferred;         /* record lines for the next write (state_defer_records()) */
        size_t deferred_len, deferred_cap;
        KeptRecord *kept;       /* objects that could not be removed (state_keep()) */
        size_t n_kept;
        size_t n_lost;          /* of them could not be kept: no rewrite may drop the file's lines */
        char *cut;              /* the last line the last state_read() found cut short, dropped */
        char *unread;           /* lines the last state_read() could not parse, as they were, each ending in \n */
        size_t unread_len;
        size_t unread_dropped;  /* of them beyond UNREAD_MAX: not kept */
        bool made_lock, made_secret, made_state;        /* by state_open(): state_remove_made() */
};

static const char *kind_name(StateKind k) {
        return k == STATE_SHM ? "shm" : k == STATE_SEM ? "sem" : k == STATE_POSIX ? "posix" : "chan";
}

/* Why a file (or the directory) we are about to trust is not ours alone; NULL when it is. */
static const char *untrusted_why(const struct stat *st, bool dir, mode_t forbidden, char *buf, size_t size) {
        if (dir ? !S_ISDIR(st->st_mode) : !S_ISREG(st->st_mode))
                return dir ? "is not a directory" : "is not a regular file";
        if (st->st_uid != geteuid()) {
                snprintf(buf, size, "is owned by uid %u, not by the daemon's uid %u", (unsigned) st->st_uid,
                         (unsigned) geteuid());
                return buf;
        }
        if (st->st_mode & forbidden) {
                snprintf(buf, size, "has mode %04o: %s", (unsigned) (st->st_mode & 07777),
                         forbidden & 044 ? "others may read or write it" : "writable by group or others");
                return buf;
        }
        return NULL;
}

static int check_fd(int fd, const char *dir, const char *name, bool is_dir, mode_t forbidden, char *msg,
                    size_t msg_size) {
        char buf[96];
        const char *why;
        struct stat st;

        if (fstat(fd, &st) < 0) {
                msg_set(msg, msg_size, "cannot stat %s%s%s: %s", dir, name ? "/" : "", name ?: "", strerror(errno));
                return -errno;
        }
        why = untrusted_why(&st, is_dir, forbidden, buf, sizeof buf);
        if (why) {
                msg_set(msg, msg_size, "%s %s%s%s %s; refusing to trust it", is_dir ? "state directory" : "state file",
                        dir, name ? "/" : "", name ?: "", why);
                return -EPERM;
        }
        return 0;
}

/*
 * Open dir/name, creating it 0600 with O_EXCL when it does not exist, and
 * check that it is a regular file of ours that nobody else can write
 * (`forbidden` mode bits). *ret_created says whether we made it.
 */
static int open_own_file(State *s, const char *dir, const char *name, int flags, mode_t forbidden, int *ret_fd,
                         bool *ret_created, char *msg, size_t msg_size) {
        _cleanup_(closep) int fd = -1;
        bool created = true;
        int r;

        flags |= O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
        fd = openat(s->dir_fd, name, flags | O_CREAT | O_EXCL, 0600);
        if (fd < 0 && errno == EEXIST) {
                created = false;
                fd = openat(s->dir_fd, name, flags);
        }
        if (fd < 0) {
                r = -errno;
                if (r == -ELOOP)
                        msg_set(msg, msg_size, "state file %s/%s is a symbolic link; refusing to follow it", dir, name);
                else
                        msg_set(msg, msg_size, "cannot open %s/%s: %s", dir, name, strerror(-r));
                return r == -ELOOP ? -EPERM : r;
        }
        r = check_fd(fd, dir, name, false, forbidden, msg, msg_size);
        if (r < 0)
                return r;
        *ret_fd = TAKE_FD(fd);
        if (ret_created)
                *ret_created = created;
        return 0;
}

typedef struct LockOpen {
        State *s;
        const char *dir;
        bool *created;
        char *msg;
        size_t msg_size;
} LockOpen;

/* lock_file_take()'s open: as every state file, with its message on failure. */
static int lock_open(int dir_fd, const char *name, void *userdata) {
        LockOpen *o = userdata;
        int fd, r;

        (void) dir_fd;
        r = open_own_file(o->s, o->dir, name, O_RDWR, 022, &fd, o->created, o->msg, o->msg_size);
        return r < 0 ? r : fd;
}

/* The lock file (daemon/lock-file.h), into s->lock_fd; *ret_created: this call made it. */
static int take_lock(State *s, const char *dir, bool *ret_created, char *msg, size_t msg_size) {
        _cleanup_(freep) char *name = NULL;
        LockOpen o = { s, dir, ret_created, msg, msg_size };
        int r;

        name = strprintf("%s.lock", s->name);
        if (!name)
                return -ENOMEM;
        msg_set(msg, msg_size, "%s", "");
        r = lock_file_take(s->dir_fd, name, lock_open, &o, &s->lock_fd);
        if (r == -EBUSY)
                msg_set(msg, msg_size, "its lock %s is held", s->lock_path);
        else if (r == -ESTALE) {
                msg_set(msg, msg_size, "cannot lock %s: it keeps being replaced", s->lock_path);
                r = -EBUSY;
        } else if (r < 0 && !*msg)
                msg_set(msg, msg_size, "cannot lock %s: %s", s->lock_path, strerror(-r));
        return r;
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

/*
 * Write a new file under name+".new" and rename it over name: the old
 * contents stay whole until the new ones are. A leftover ".new" of a
 * killed run is unlinked first and the name taken with O_EXCL, so a file
 * somebody else placed there is never written through. Returns the new
 * file's descriptor (O_APPEND when asked) in *ret_fd, if given.
 */
static int replace_file(State *s, const char *name, const char *text, size_t len, int extra_flags, int *ret_fd) {
        _cleanup_(freep) char *tmp = NULL;
        _cleanup_(closep) int fd = -1;
        int r;

        tmp = strprintf("%s.new", name);
        if (!tmp)
                return -ENOMEM;
        if (unlinkat(s->dir_fd, tmp, 0) < 0 && errno != ENOENT)
                return -errno;
        fd = openat(s->dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | extra_flags, 0600);
        if (fd < 0)
                return -errno;
        r = write_all(fd, text, len);
        /* renameat() swaps atomically: a crash leaves either the old or the new file. */
        if (r == 0 && renameat(s->dir_fd, tmp, s->dir_fd, name) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlinkat(s->dir_fd, tmp, 0);
                return r;
        }
        if (ret_fd)
                *ret_fd = TAKE_FD(fd);
        return 0;
}

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Read the secret, or make one: 16 bytes from the kernel's CSPRNG, as hex. */
static int load_secret(State *s, const char *dir, char *msg, size_t msg_size) {
        _cleanup_(freep) char *name = NULL;
        _cleanup_(closep) int fd = -1;
        char text[SECRET_TEXT_LEN + 1];
        ssize_t n;
        int r;

        name = strprintf("%s.secret", s->name);
        if (!name)
                return -ENOMEM;
        fd = openat(s->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
                if (getrandom(s->secret, sizeof s->secret, 0) != (ssize_t) sizeof s->secret) {
                        msg_set(msg, msg_size, "cannot make a key secret: %s", strerror(errno));
                        return -EIO;
                }
                for (size_t i = 0; i < sizeof s->secret; i++)
                        snprintf(text + 2 * i, 3, "%02x", s->secret[i]);
                text[SECRET_TEXT_LEN - 1] = '\n';
                r = replace_file(s, name, text, SECRET_TEXT_LEN, 0, NULL);
                if (r < 0)
                        msg_set(msg, msg_size, "cannot write %s/%s: %s", dir, name, strerror(-r));
                s->made_secret = r == 0;
                return r;
        }
        if (fd < 0) {
                r = -errno;
                msg_set(msg, msg_size, r == -ELOOP ? "state file %s/%s is a symbolic link; refusing to follow it"
                                                   : "cannot open %s/%s", dir, name);
                return r == -ELOOP ? -EPERM : r;
        }
        /* Readable by others, it would let them compute our keys. */
        r = check_fd(fd, dir, name, false, 077, msg, msg_size);
        if (r < 0)
                return r;
        n = read(fd, text, sizeof text);
        if (n != SECRET_TEXT_LEN || text[SECRET_TEXT_LEN - 1] != '\n')
                goto bad;
        for (size_t i = 0; i < sizeof s->secret; i++) {
                int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);

                if (hi < 0 || lo < 0)
                        goto bad;
                s->secret[i] = (uint8_t) (hi << 4 | lo);
        }
        return 0;
bad:
        msg_set(msg, msg_size, "%s/%s is not %d hex digits and a newline; remove it to make a new secret "
                "(the derived keys of every channel change then)", dir, name, 2 * SIPHASH_KEY_SIZE);
        return -EINVAL;
}

int state_open(const char *dir, const char *name, State **ret, char *msg, size_t msg_size) {
        _cleanup_(freep) char *state_name = NULL;
        State *s;
        int r;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->dir_fd = s->lock_fd = s->fd = -1;
        s->name = strdup(name);
        s->lock_path = strprintf("%s/%s.lock", dir, name);
        s->path = strprintf("%s/%s.state", dir, name);
        state_name = strprintf("%s.state", name);
        if (!s->name || !s->lock_path || !s->path || !state_name) {
                msg_set(msg, msg_size, "out of memory");
                r = -ENOMEM;
                goto fail;
        }
        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (s->dir_fd < 0) {
                struct stat lst;

                r = -errno;
                /* O_DIRECTORY|O_NOFOLLOW on a symbolic link fails with ENOTDIR, not ELOOP. */
                if ((r == -ENOTDIR || r == -ELOOP) && lstat(dir, &lst) == 0 && S_ISLNK(lst.st_mode))
                        r = -ELOOP;
                msg_set(msg, msg_size, "cannot open the state directory %s: %s", dir,
                        r == -ELOOP ? "it is a symbolic link" : strerror(-r));
                goto fail;
        }
        r = check_fd(s->dir_fd, dir, NULL, true, 022, msg, msg_size);
        if (r < 0)
                goto fail;
        r = take_lock(s, dir, &s->made_lock, msg, msg_size);
        if (r < 0)
                goto fail;
        r = load_secret(s, dir, msg, msg_size);
        if (r < 0)
                goto fail_made;
        r = open_own_file(s, dir, state_name, O_RDWR | O_APPEND, 022, &s->fd, &s->made_state, msg, msg_size);
        if (r < 0)
                goto fail_made;
        /* A run killed in a reload leaves the room state_reserve() took past the end: give it back. */
        state_unreserve(s);
        *ret = s;
        return 0;
fail_made:
        state_remove_made(s);
fail:
        state_free(s);
        return r;
}

const uint8_t *state_secret(const State *s) {
        return s->secret;
}

/*
 * A record's fields, split at spaces. Each line is parsed by hand: with
 * sscanf() reading the file back took most of a stop's user time (the
 * stop reads it to see whether anything is left recorded).
 */
typedef struct Field {
        const char *s;
        size_t len;
} Field;

#define FIELDS_MAX 9    /* "posix" and its eight */

/* Up to max fields of line, at runs of spaces, up to its newline. Fields past max are ignored, as sscanf() did. */
static size_t split_fields(const char *line, Field *f, size_t max) {
        size_t n = 0;

        for (const char *p = line;;) {
                while (*p == ' ')
                        p++;
                if (*p == '\0' || *p == '\n' || n == max)
                        return n;
                f[n].s = p;
                while (*p != ' ' && *p != '\0' && *p != '\n')
                        p++;
                f[n].len = (size_t) (p - f[n].s);
                n++;
        }
}

/* Digits of base (10, or 16 in lower case) and nothing else, at most max. */
static bool field_unsigned(Field f, unsigned base, uint64_t max, uint64_t *ret) {
        uint64_t v = 0;

        if (f.len == 0)
                return false;
        for (size_t i = 0; i < f.len; i++) {
                int d = base == 16 ? hex_value(f.s[i]) : (f.s[i] >= '0' && f.s[i] <= '9' ? f.s[i] - '0' : -1);

                if (d < 0 || v > (max - (unsigned) d) / base)
                        return false;
                v = v * base + (unsigned) d;
        }
        *ret = v;
        return true;
}

/* Decimal, with an optional '-', within min..max. */
static bool field_signed(Field f, int64_t min, int64_t max, int64_t *ret) {
        bool neg = f.len > 0 && f.s[0] == '-';
        uint64_t v;

        if (!field_unsigned((Field) { f.s + neg, f.len - neg }, 10, neg ? (uint64_t) -(min + 1) + 1 : (uint64_t) max, &v))
                return false;
        *ret = !neg ? (int64_t) v : v == 0 ? 0 : -(int64_t) (v - 1) - 1;
        return true;
}

typedef enum FieldType { F_WORD, F_U32, F_U64, F_HEX64, F_INT, F_I64 } FieldType;

typedef struct FieldSpec {
        FieldType type;
        void *ret;
        size_t size;            /* F_WORD: of the buffer, its NUL included */
} FieldSpec;

static bool field_convert(Field f, const FieldSpec *spec) {
        uint64_t u;
        int64_t i;

        switch (spec->type) {
        case F_WORD:
                if (f.len >= spec->size)
                        return false;
                memcpy(spec->ret, f.s, f.len);
                ((char *) spec->ret)[f.len] = '\0';
                return true;
        case F_U32:
                if (!field_unsigned(f, 10, UINT32_MAX, &u))
                        return false;
                *(uint32_t *) spec->ret = (uint32_t) u;
                return true;
        case F_U64:
                return field_unsigned(f, 10, UINT64_MAX, spec->ret);
        case F_HEX64:
                return f.len <= 16 && field_unsigned(f, 16, UINT64_MAX, spec->ret);
        case F_INT:
                if (!field_signed(f, INT_MIN, INT_MAX, &i))
                        return false;
                *(int *) spec->ret = (int) i;
                return true;
        case F_I64:
                return field_signed(f, INT64_MIN, INT64_MAX, spec->ret);
        }
        return false;
}

/* How many of the fields, from the first, convert as spec says: as sscanf() counts its conversions. */
static size_t convert_fields(const Field *f, size_t n, const FieldSpec *spec, size_t n_spec) {
        size_t k = 0;

        while (k < n && k < n_spec && field_convert(f[k], &spec[k]))
                k++;
        return k;
}

/*
 * "KIND KEY ID PID SINCE SIZE", KIND one of shm, sem, pshm, psem (p: an
 * intent, ID -1). A line of the first format ("shm KEY ID", "pshm KEY STAMP
 * SIZE") proves nothing about its creator: it comes back as legacy.
 */
static int parse_line(const char *line, bool *ret_add, StateRecord *ret) {
        bool add = line[0] != '-';
        Field f[FIELDS_MAX];
        size_t n = split_fields(add ? line : line + 1, f, FIELDS_MAX), k;
        char kind[8];
        uint32_t key;
        int id, pid;
        int64_t since;
        uint64_t size;

        *ret = (StateRecord) { .id = -1, .uid = (uid_t) -1 };
        if (n == 0 || !field_convert(f[0], &(FieldSpec) { F_WORD, kind, sizeof kind }))
                return -EINVAL;
        if (streq(kind, "chan")) {
                uint64_t fp;
                const FieldSpec spec[] = { { F_U32, &key }, { F_INT, &id }, { F_INT, &pid }, { F_HEX64, &fp },
                                           { F_WORD, ret->name, sizeof ret->name } };

                if (convert_fields(f + 1, n - 1, spec, ELEMENTSOF(spec)) != ELEMENTSOF(spec) || id < 0 || pid < 0)
                        return -EINVAL;
                ret->kind = STATE_CHAN;
                ret->key = key;
                ret->id = id;
                ret->sem_id = pid;
                ret->fingerprint = fp;
                *ret_add = add;
                return 0;
        }
        /* v3: a posix channel's file. Older versions skip these lines as malformed (and never made such files). */
        if (streq(kind, "posix") || streq(kind, "pposix")) {
                uint64_t dev, ino;
                uint32_t uid;
                const FieldSpec spec[] = { { F_INT, &id }, { F_U64, &dev }, { F_U64, &ino }, { F_INT, &pid },
                                           { F_I64, &since }, { F_U64, &size }, { F_WORD, ret->name, sizeof ret->name },
                                           { F_U32, &uid } };

                ret->pending = kind[1] == 'p';
                /* The owner came later: a line without it (or a reader that stops before it) proves by our uid. */
                k = convert_fields(f + 1, n - 1, spec, ELEMENTSOF(spec));
                if (k < 7 || id < -2 || pid <= 0 || since < 0)
                        return -EINVAL;
                if (k == 8 && uid != (uint32_t) (uid_t) -1)
                        ret->uid = (uid_t) uid;
                ret->kind = STATE_POSIX;
                ret->id = id;
                ret->dev = dev;
                ret->ino = ino;
                ret->pid = pid;
                ret->since = since;
                ret->size = size;
                *ret_add = add;
                return 0;
        }
        {
                const FieldSpec spec[] = { { F_U32, &key }, { F_INT, &id }, { F_INT, &pid }, { F_I64, &since },
                                           { F_U64, &size } };

                /* As sscanf() counted: the kind is one conversion more. */
                k = 1 + convert_fields(f + 1, n - 1, spec, ELEMENTSOF(spec));
        }
        if (k < 2)
                return -EINVAL;
        if (streq(kind, "pshm") || streq(kind, "psem"))
                ret->pending = true;
        else if (!streq(kind, "shm") && !streq(kind, "sem"))
                return -EINVAL;
        ret->kind = streq(kind + ret->pending, "shm") ? STATE_SHM : STATE_SEM;
        ret->key = key;
        *ret_add = add;
        if (k == 6 && pid > 0 && since >= 0 && (ret->pending ? id == -1 : id >= 0)) {
                ret->id = id;
                ret->pid = pid;
                ret->since = since;
                ret->size = size;
                return 0;
        }
        /* The first format: "shm KEY ID", or "pshm KEY STAMP SIZE". */
        if (!ret->pending && k == 3 && id >= 0) {
                ret->id = id;
                ret->legacy = true;
                return 0;
        }
        if (ret->pending && k == 4) {
                ret->legacy = true;
                return 0;
        }
        /*
         * The first format's STAMP and SIZE were written as 64-bit numbers: a segment
         * of 2 GiB or more, which the int fields above refuse, is legacy all the same.
         */
        if (ret->pending && n == 4) {
                const FieldSpec spec[] = { { F_U32, &key }, { F_I64, &since }, { F_U64, &size } };

                if (convert_fields(f + 1, 3, spec, ELEMENTSOF(spec)) == ELEMENTSOF(spec)) {
                        ret->key = key;
                        ret->legacy = true;
                        return 0;
                }
        }
        return -EINVAL;
}

/* Whether a cancellation names this record: an id by kind, key and id; an intent by all it says. */
static bool same_record(const StateRecord *a, const StateRecord *b) {
        if (a->kind != b->kind || a->key != b->key || a->pending != b->pending || a->legacy != b->legacy)
                return false;
        /* Every posix channel's record has key 0 and id 0: its name tells them apart. */
        if (a->kind == STATE_CHAN)
                return a->id == b->id && a->sem_id == b->sem_id && streq(a->name, b->name);
        /* The owner only where both say it: a record is moved to a new owner by a cancel of the old one. */
        if (a->kind == STATE_POSIX)
                return a->id == b->id && a->dev == b->dev && a->ino == b->ino && streq(a->name, b->name) &&
                       (a->uid == (uid_t) -1 || b->uid == (uid_t) -1 || a->uid == b->uid) &&
                       (!a->pending || (a->pid == b->pid && a->since == b->since && a->size == b->size));
        if (!a->pending)
                return a->id == b->id;
        return a->pid == b->pid && a->since == b->since && a->size == b->size;
}

/* What state_read() keeps of lines it cannot parse: a damaged file's first 64 KiB of them. */
#define UNREAD_MAX 65536

/* Keep a line state_read() could not parse (n bytes with its \n: a cut one is dropped) for state_rewrite(). */
static int keep_unread(State *s, const char *line, size_t n) {
        char *v;

        if (s->unread_len + n > UNREAD_MAX) {
                s->unread_dropped++;
                return 0;
        }
        v = realloc(s->unread, s->unread_len + n);
        if (!v)
                return -ENOMEM;
        memcpy(v + s->unread_len, line, n);
        s->unread_len += n;
        s->unread = v;
        return 0;
}

const char *state_cut_line(const State *s) {
        return s->cut;
}

const char *state_unread(const State *s, size_t *ret_len, size_t *ret_dropped) {
        *ret_len = s->unread_len;
        *ret_dropped = s->unread_dropped;
        return s->unread;
}

/*
 * Which add a drop cancels, found in constant time on average. Searched
 * from the end, with the records after it moved down, a journal of n adds
 * and their drops took time in n squared: the stop of 16000 channels
 * (state_is_empty() reads the whole journal) took 6.7 s, and a systemd
 * stop timeout comes at some tens of thousands. Buckets hash what
 * same_record() compares exactly (never a posix file's owner, which it may
 * take as a wildcard), so a drop and every add it could cancel share a
 * bucket; each chains its live adds latest first. Cancelled adds stay in
 * place, marked, until the array is compacted (when it would grow, and at
 * the end).
 */
typedef struct RecordIndex {
        size_t *bucket;         /* index + 1 of the bucket's latest live add; 0: none */
        size_t *older;          /* per add: index + 1 of the next older live add in its bucket */
        bool *cancelled;
        size_t n_buckets;       /* twice the adds' room: a power of two */
} RecordIndex;

static uint64_t hash_mix(uint64_t h, uint64_t v) {
        h = (h ^ v) * UINT64_C(0x9e3779b97f4a7c15);
        return h ^ (h >> 29);
}

static uint64_t hash_name(uint64_t h, const char *name) {
        for (const char *c = name; *c; c++)
                h = hash_mix(h, (unsigned char) *c);
        return h;
}

static uint64_t record_hash(const StateRecord *r) {
        uint64_t h = hash_mix(hash_mix((uint64_t) r->kind, r->key), (uint64_t) r->pending << 1 | r->legacy);

        switch (r->kind) {
        case STATE_CHAN:
                h = hash_mix(hash_mix(h, (uint32_t) r->id), (uint32_t) r->sem_id);
                return hash_name(h, r->name);
        case STATE_POSIX:
                h = hash_name(hash_mix(hash_mix(hash_mix(h, (uint32_t) r->id), r->dev), r->ino), r->name);
                break;
        default:
                if (!r->pending)
                        return hash_mix(h, (uint32_t) r->id);
                break;
        }
        /* A pending record: its maker names it. */
        return r->pending ? hash_mix(hash_mix(hash_mix(h, (uint64_t) r->pid), (uint64_t) r->since), r->size) : h;
}

static void index_done(RecordIndex *x) {
        free(x->bucket);
        free(x->older);
        free(x->cancelled);
        *x = (RecordIndex) {};
}

static void index_put(RecordIndex *x, const StateRecord *v, size_t i) {
        size_t b = record_hash(&v[i]) & (x->n_buckets - 1);

        x->older[i] = x->bucket[b];
        x->bucket[b] = i + 1;
        x->cancelled[i] = false;
}

/* Drop the cancelled adds of v[0..n), keeping the others' order: how many are left. */
static size_t index_compact(const RecordIndex *x, StateRecord *v, size_t n) {
        size_t k = 0;

        for (size_t i = 0; i < n; i++)
                if (!x->cancelled[i])
                        v[k++] = v[i];
        return k;
}

/*
 * The array is full: compact it, double its room when more than half of it
 * still lives (so a journal of adds and their drops stays as large as what
 * lives), and build the index anew over what is left.
 */
static int index_grow(RecordIndex *x, StateRecord **v, size_t *n, size_t *cap) {
        size_t want;

        *n = *cap ? index_compact(x, *v, *n) : 0;
        want = 2 * *n >= *cap ? MAX(*cap * 2, (size_t) 16) : *cap;
        if (want != *cap) {
                StateRecord *nv = reallocarray(*v, want, sizeof **v);

                if (!nv)
                        return -ENOMEM;
                *v = nv;
                *cap = want;
        }
        index_done(x);
        x->n_buckets = 2 * *cap;        /* a power of two, as cap is */
        x->bucket = calloc(x->n_buckets, sizeof *x->bucket);
        x->older = calloc(*cap, sizeof *x->older);
        x->cancelled = calloc(*cap, sizeof *x->cancelled);
        if (!x->bucket || !x->older || !x->cancelled)
                return -ENOMEM;
        for (size_t i = 0; i < *n; i++)
                index_put(x, *v, i);
        return 0;
}

/* Mark the latest live add of v that rec cancels, if any. */
static void index_cancel(RecordIndex *x, const StateRecord *v, const StateRecord *rec) {
        size_t *link;

        if (x->n_buckets == 0)
                return;         /* no add yet */
        for (link = &x->bucket[record_hash(rec) & (x->n_buckets - 1)]; *link; link = &x->older[*link - 1]) {
                size_t i = *link - 1;

                if (same_record(&v[i], rec)) {
                        x->cancelled[i] = true;
                        *link = x->older[i];
                        return;
                }
        }
}

int state_read(State *s, StateRecord **ret, size_t *ret_n, size_t *ret_skipped) {
        _cleanup_(fclosep) FILE *f = NULL;
        _cleanup_(freep) char *line = NULL;
        _cleanup_(freep) StateRecord *v = NULL;
        RecordIndex x = {};
        size_t n = 0, cap = 0, skipped = 0, linecap = 0;
        ssize_t len;
        int fd, r = 0;

        free(s->unread);
        s->unread = NULL;
        s->unread_len = s->unread_dropped = 0;
        free(s->cut);
        s->cut = NULL;

        /* Through our own checked descriptor: the name may not be ours any more. */
        fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return -errno;
        f = fdopen(fd, "r");
        if (!f) {
                close(fd);
                return -errno;
        }
        /* Appends go to the end whatever the offset: reading may move it. */
        if (fseeko(f, 0, SEEK_SET) < 0)
                return -errno;
        for (off_t at = 0; (len = getline(&line, &linecap, f)) > 0; at += len) {
                StateRecord rec;
                bool add;

                /* Only the last line can lack its newline: a write cut by a kill (state.h), a comment's too. */
                if (line[len - 1] != '\n') {
                        s->cut = strdup(line);
                        if (!s->cut) {
                                r = -ENOMEM;
                                goto done;
                        }
                        /* Out of the file too: the next append would be glued to it, and lost with it. */
                        if (ftruncate(s->fd, at) < 0) {
                                r = -errno;
                                goto done;
                        }
                        continue;
                }
                if (line[0] == '#' || line[0] == '\n')
                        continue;
                /* A NUL within makes it unparsable too: parse_line() would see less than the line. */
                if (strlen(line) != (size_t) len || parse_line(line, &add, &rec) < 0) {
                        skipped++;
                        r = keep_unread(s, line, (size_t) len);
                        if (r < 0)
                                goto done;
                        continue;
                }
                if (!add) {
                        /* A drop cancels the latest matching add. */
                        index_cancel(&x, v, &rec);
                        continue;
                }
                if (n == cap) {
                        r = index_grow(&x, &v, &n, &cap);
                        if (r < 0)
                                goto done;
                }
                v[n] = rec;
                index_put(&x, v, n++);
        }
        if (ferror(f)) {
                r = -EIO;
                goto done;
        }
        n = cap ? index_compact(&x, v, n) : 0;
        *ret = TAKE_PTR(v);
        *ret_n = n;
        *ret_skipped = skipped;
done:
        index_done(&x);
        return r;
}

/* qsort_r() comparator of record positions in v: by channel name, then by position. */
static int cmp_posix_position(const void *a, const void *b, void *v) {
        size_t i = *(const size_t *) a, j = *(const size_t *) b;
        int k = strcmp(((const StateRecord *) v)[i].name, ((const StateRecord *) v)[j].name);

        return k ?: CMP(i, j);
}

/*
 * A crash restart looks up each posix channel's records, to take its files
 * over or to replace them in place: a scan of every record per channel
 * made it take time in the square of the channels.
 */
int state_posix_index(const StateRecord *v, size_t n, bool intents, size_t **ret, size_t *ret_n) {
        size_t *idx = calloc(n ?: 1, sizeof *idx), k = 0;

        if (!idx)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                if (v[i].kind == STATE_POSIX && (intents || !v[i].pending))
                        idx[k++] = i;
        qsort_r(idx, k, sizeof *idx, cmp_posix_position, (void *) v);
        *ret = idx;
        *ret_n = k;
        return 0;
}

size_t state_posix_range(const StateRecord *v, const size_t *idx, size_t n_idx, const char *name, size_t *ret_first) {
        size_t lo = 0, hi = n_idx;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (strcmp(v[idx[mid]].name, name) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *ret_first = lo;
        while (lo < n_idx && streq(v[idx[lo]].name, name))
                lo++;
        return lo;
}

#define RECORD_MAX 224      /* a channel or posix file record: numbers and a 64-byte name */

/*
 * Hand-made formatting: at start a channel's objects take 7 lines, and
 * snprintf() made up a seventh of the daemon's time per channel.
 */
static char *put_str(char *p, const char *str) {
        size_t n = strlen(str);

        memcpy(p, str, n);
        return p + n;
}

static char *put_u64(char *p, uint64_t v) {
        char digits[20];
        size_t n = 0;

        do
                digits[n++] = (char) ('0' + v % 10);
        while ((v /= 10) > 0);
        while (n > 0)
                *p++ = digits[--n];
        return p;
}

static char *put_i64(char *p, int64_t v) {
        if (v < 0) {
                *p++ = '-';
                return put_u64(p, -(uint64_t) v);
        }
        return put_u64(p, (uint64_t) v);
}

/* " " and v */
static char *put_field(char *p, int64_t v) {
        *p++ = ' ';
        return put_i64(p, v);
}

static char *put_ufield(char *p, uint64_t v) {
        *p++ = ' ';
        return put_u64(p, v);
}

/* One line into line (RECORD_MAX bytes at least, no NUL); returns its length. */
static size_t format_record(char *line, const StateRecord *r, bool add) {
        static const char hex[] = "0123456789abcdef";
        char *p = line;

        /* The longest line fits: "-pposix", three int and four 64-bit fields at their widest, the name. */
        _Static_assert(7 + 3 * 12 + 4 * 21 + 1 + sizeof r->name + 1 <= RECORD_MAX, "RECORD_MAX too small");
        if (!add)
                *p++ = '-';
        if (r->pending && r->kind != STATE_CHAN)
                *p++ = 'p';
        p = put_str(p, kind_name(r->kind));
        if (r->kind == STATE_CHAN) {
                p = put_ufield(p, r->key);
                p = put_field(p, r->id);
                p = put_field(p, r->sem_id);
                *p++ = ' ';
                for (int shift = 60; shift >= 0; shift -= 4)
                        *p++ = hex[(r->fingerprint >> shift) & 0xf];
                *p++ = ' ';
                p = put_str(p, r->name[0] ? r->name : "-");
        } else if (r->kind == STATE_POSIX) {
                p = put_field(p, r->id);
                /* An intent's: the file it replaces, if any (posix.c's create_one()). */
                p = put_ufield(p, r->dev);
                p = put_ufield(p, r->ino);
                p = put_field(p, (int) r->pid);
                p = put_field(p, r->since);
                p = put_ufield(p, r->size);
                *p++ = ' ';
                p = put_str(p, r->name);
                /* The owner last, where there is one: a reader of the version before stops short of it. */
                if (r->uid != (uid_t) -1)
                        p = put_ufield(p, (unsigned) r->uid);
        } else {
                p = put_ufield(p, r->key);
                p = put_field(p, r->pending ? -1 : r->id);
                p = put_field(p, (int) r->pid);
                p = put_field(p, r->since);
                p = put_ufield(p, r->size);
        }
        *p++ = '\n';
        return (size_t) (p - line);
}

#define APPEND_MAX 6

/* The lines of add, then of cancel, at the end of s->deferred (grown as needed). */
static int defer_lines(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel) {
        size_t need = s->deferred_len + (n_add + n_cancel) * RECORD_MAX + 1;

        if (n_add + n_cancel > APPEND_MAX)
                return -EINVAL;
        if (need > s->deferred_cap) {
                size_t cap = MAX(need, s->deferred_cap * 2);
                char *p = realloc(s->deferred, cap);

                if (!p)
                        return -ENOMEM;
                s->deferred = p;
                s->deferred_cap = cap;
        }
        for (size_t i = 0; i < n_add + n_cancel; i++)
                s->deferred_len += format_record(s->deferred + s->deferred_len, i < n_add ? &add[i] : &cancel[i - n_add],
                                                 i < n_add);
        return 0;
}

/* Everything deferred, in one write() with O_APPEND: never interleaved; a kill can cut it only at a page boundary. */
static int flush_deferred(State *s) {
        int r = write_all(s->fd, s->deferred, s->deferred_len);

        s->deferred_len = 0;
        return r;
}

int state_append_records(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel) {
        char buf[APPEND_MAX * RECORD_MAX];
        size_t len = 0;

        if (n_add + n_cancel > APPEND_MAX)
                return -EINVAL;
        /* Behind what was deferred: a cancellation never comes before the record it cancels. */
        if (s->deferred_len > 0) {
                int r = defer_lines(s, add, n_add, cancel, n_cancel);

                return r < 0 ? r : flush_deferred(s);
        }
        for (size_t i = 0; i < n_add + n_cancel; i++)
                len += format_record(buf + len, i < n_add ? &add[i] : &cancel[i - n_add], i < n_add);
        return write_all(s->fd, buf, len);
}

/* Deferred lines go out once they reach this much: a stop defers every channel's cancellations. */
#define DEFER_FLUSH (64 * 1024)

int state_defer_records(State *s, const StateRecord *add, size_t n_add, const StateRecord *cancel, size_t n_cancel) {
        int r;

        if (!s->batch)
                return state_append_records(s, add, n_add, cancel, n_cancel);
        r = defer_lines(s, add, n_add, cancel, n_cancel);
        if (r < 0 || s->deferred_len < DEFER_FLUSH)
                return r;
        return flush_deferred(s);
}

size_t state_line_max(bool posix, size_t name_len) {
        /* format_record() at the widest: "-p" and "shm"/"sem", key, id, pid, since, size; "-chan", key, ids, fingerprint, name. */
        size_t object = 2 + 3 + 11 + 12 + 12 + 21 + 21 + 1, chan = 5 + 11 + 12 + 12 + 17 + 1 + name_len + 1;

        /* "-pposix", role, dev, ino, pid, since, size, name, uid. */
        if (posix)
                return MAX(chan, 7 + 12 + 21 + 21 + 12 + 21 + 21 + 1 + name_len + 11 + 1);
        return MAX(object, chan);
}

int state_reserve(State *s, uint64_t bytes) {
        uint64_t need = bytes + s->deferred_len;
        struct statvfs vfs;
        struct stat st;

        if (bytes == 0)
                return 0;
        if (fstat(s->fd, &st) < 0)
                return -errno;
        if (need > INT64_MAX - (uint64_t) st.st_size)
                return -EFBIG;
        /* Blocks past the end (its size kept): the appends fill them, and no one else can take them meanwhile. */
        if (fallocate(s->fd, FALLOC_FL_KEEP_SIZE, st.st_size, (off_t) need) == 0)
                return 0;
        if (errno != EOPNOTSUPP)
                return -errno;
        /* A file system without it: the room there is now, which is all it can tell. */
        if (fstatvfs(s->fd, &vfs) < 0)
                return -errno;
        if (vfs.f_blocks > 0 && (uint64_t) vfs.f_bavail * vfs.f_frsize < need)
                return -ENOSPC;
        return 0;
}

void state_unreserve(State *s) {
        struct stat st;

        /* Cutting at the end frees the blocks past it; the lines are left as they are. */
        if (fstat(s->fd, &st) == 0)
                (void) ftruncate(s->fd, st.st_size);
}

void state_batch_begin(State *s) {
        s->batch = true;
}

int state_batch_end(State *s) {
        s->batch = false;
        return s->deferred_len > 0 ? flush_deferred(s) : 0;
}

int state_cancel(State *s, const StateRecord *r) {
        return state_defer_records(s, NULL, 0, r, 1);
}

int state_keep(State *s, const StateRecord *r, int err) {
        KeptRecord *v = reallocarray(s->kept, s->n_kept + 1, sizeof *v);

        if (!v) {
                /* The file still holds its record, uncancelled: it is kept by never replacing the file. */
                s->n_lost++;
                return -ENOMEM;
        }
        s->kept = v;
        s->kept[s->n_kept++] = (KeptRecord) { .rec = *r, .err = err };
        return 0;
}

size_t state_n_kept(const State *s) {
        return s->n_kept;
}

size_t state_n_lost(const State *s) {
        return s->n_lost;
}

const StateRecord *state_kept(const State *s, size_t i, int *ret_err) {
        if (i >= s->n_kept)
                return NULL;
        *ret_err = s->kept[i].err;
        return &s->kept[i].rec;
}

int state_rewrite(State *s, const StateRecord *v, size_t n) {
        _cleanup_(freep) char *text = NULL, *name = NULL;
        size_t len = strlen(STATE_HEADER);
        int fd = -1, r;

        if (s->n_lost > 0)
                return -ENOMEM;
        name = strprintf("%s.state", s->name);
        if (!name)
                return -ENOMEM;
        text = malloc(len + (n + s->n_kept) * RECORD_MAX + s->unread_len + 1);
        if (!text)
                return -ENOMEM;
        memcpy(text, STATE_HEADER, len);
        for (size_t i = 0; i < n; i++)
                len += format_record(text + len, &v[i], true);
        for (size_t i = 0; i < s->n_kept; i++)
                len += format_record(text + len, &s->kept[i].rec, true);
        /* Last: a later start reads them (and warns of them) again, and a record after them still counts. */
        if (s->unread_len > 0)
                memcpy(text + len, s->unread, s->unread_len);
        len += s->unread_len;
        /* O_APPEND from the start: after the rename this descriptor is the state file. */
        r = replace_file(s, name, text, len, O_APPEND, &fd);
        if (r < 0)
                return r;
        close(s->fd);
        s->fd = fd;
        s->deferred_len = 0;
        return 0;
}

/*
 * The socket's line: its path after a word, where the owner's lines are
 * absolute paths, so that no line of one can be taken for the other.
 */
#define SOCKET_BOUND "socket:"
#define SOCKET_PASSED "passed-socket:"

int state_set_owner(State *s, const char *owner, const char *socket_path, bool bound) {
        _cleanup_(freep) char *text = NULL;
        const char *word = bound ? SOCKET_BOUND : SOCKET_PASSED;
        size_t len;

        if (socket_path)
                text = strprintf("%s%s%s%s\n", owner, *owner ? "\n" : "", word, socket_path);
        else
                text = *owner ? strprintf("%s\n", owner) : strdup("");
        if (!text)
                return -ENOMEM;
        len = strlen(text);
        if (ftruncate(s->lock_fd, 0) < 0)
                return -errno;
        errno = 0;
        if (len > 0 && pwrite(s->lock_fd, text, len, 0) != (ssize_t) len)
                return errno ? -errno : -EIO;
        return 0;
}

char *state_recorded_socket(const State *s, bool *ret_bound) {
        char buf[3 * PATH_MAX + 32];
        ssize_t n = pread(s->lock_fd, buf, sizeof buf - 1, 0);

        if (n <= 0)
                return NULL;
        buf[n] = '\0';
        for (char *l = buf, *end; (end = strchr(l, '\n')); l = end + 1)
                for (int bound = 0; bound < 2; bound++) {
                        const char *word = bound ? SOCKET_BOUND : SOCKET_PASSED;
                        size_t k = strlen(word);

                        if (strncmp(l, word, k) == 0 && l[k] == '/') {
                                *ret_bound = bound;
                                return strndup(l + k, (size_t) (end - l) - k);
                        }
                }
        return NULL;
}

/* Whether some line of a (len bytes, lines ended by '\n') is a line of b (lines ended by '\n' or its end). */
static bool share_a_line(const char *a, size_t len, const char *b) {
        for (const char *l = a, *end; l < a + len && (end = memchr(l, '\n', (size_t) (a + len - l))); l = end + 1)
                for (const char *m = b; *m;) {
                        size_t k = strcspn(m, "\n");

                        if (k > 0 && k == (size_t) (end - l) && memcmp(l, m, k) == 0)
                                return true;
                        m += k + (m[k] == '\n');
                }
        return false;
}

/*
 * Whether dir_fd/lock_name is a lock file of ours (as open_own_file() would
 * take it) that shares a line with owner: the same configuration by the
 * path it was given or the file it resolved to (daemon.c).
 */
static bool lock_names_owner(int dir_fd, const char *lock_name, const char *owner) {
        _cleanup_(closep) int fd = openat(dir_fd, lock_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        char buf[2 * PATH_MAX + 2];
        struct stat st;
        ssize_t n;

        if (fd < 0 || fstat(fd, &st) < 0 || untrusted_why(&st, false, 022, buf, sizeof buf))
                return false;
        n = pread(fd, buf, sizeof buf, 0);
        return n > 0 && share_a_line(buf, (size_t) n, owner);
}

int state_previous_names(State *s, const char *owner, char ***ret) {
        _cleanup_(closep) int fd = -1;
        char **v = calloc(1, sizeof *v);
        size_t n = 0;
        DIR *d = NULL;
        int r = 0;

        if (!v)
                return -ENOMEM;
        if (!*owner)
                goto done;
        fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        d = fd < 0 ? NULL : fdopendir(fd);
        if (!d) {
                r = -errno;
                goto done;
        }
        fd = -1;        /* the DIR has it */
        for (struct dirent *e; (e = readdir(d));) {
                size_t len = strlen(e->d_name);
                char **w, *name;

                if (len <= 5 || strcmp(e->d_name + len - 5, ".lock") != 0)
                        continue;
                if ((len - 5 == strlen(s->name) && strncmp(e->d_name, s->name, len - 5) == 0) ||
                    !lock_names_owner(dirfd(d), e->d_name, owner))
                        continue;
                name = strndup(e->d_name, len - 5);
                w = name ? reallocarray(v, n + 2, sizeof *v) : NULL;
                if (!w) {
                        free(name);
                        r = -ENOMEM;
                        goto done;
                }
                v = w;
                v[n++] = name;
                v[n] = NULL;
        }
done:
        if (d)
                closedir(d);
        if (r < 0) {
                strv_free(v);
                return r;
        }
        *ret = v;
        return 0;
}

void state_remove_made(State *s) {
        const char *const suffixes[] = { ".state", ".secret", ".lock" };
        const bool made[] = { s->made_state, s->made_secret, s->made_lock };

        /* The lock last, still held: whoever takes the name next finds nothing of ours. */
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                _cleanup_(freep) char *name = made[i] ? strprintf("%s%s", s->name, suffixes[i]) : NULL;

                if (name)
                        (void) unlinkat(s->dir_fd, name, 0);
        }
        s->made_state = s->made_secret = s->made_lock = false;
}

void state_remove_files(State *s, bool secret) {
        _cleanup_(freep) char *state_name = NULL, *lock_name = NULL, *secret_name = NULL;

        state_name = strprintf("%s.state", s->name);
        lock_name = strprintf("%s.lock", s->name);
        secret_name = secret ? strprintf("%s.secret", s->name) : NULL;
        if (state_name)
                (void) unlinkat(s->dir_fd, state_name, 0);
        /* Before the lock: whoever takes the name next finds no secret of ours and makes a new one. */
        if (secret_name)
                (void) unlinkat(s->dir_fd, secret_name, 0);
        if (lock_name)
                (void) unlinkat(s->dir_fd, lock_name, 0);
}

const char *state_path(const State *s) {
        return s->path;
}

int state_dir_fd(const State *s) {
        return s->dir_fd;
}

const char *state_name(const State *s) {
        return s->name;
}

const char *state_lock_path(const State *s) {
        return s->lock_path;
}

State *state_free(State *s) {
        if (!s)
                return NULL;
        if (s->fd >= 0)
                close(s->fd);
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        if (s->dir_fd >= 0)
                close(s->dir_fd);
        free(s->path);
        free(s->lock_path);
        free(s->name);
        free(s->deferred);
        free(s->kept);
        free(s->unread);
        free(s->cut);
        free(s);
        return NULL;
}
