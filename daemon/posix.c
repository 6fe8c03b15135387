/*
 * A posix channel's files (see posix.h).
 *
 * Every name is reached through a descriptor of /dev/shm and *at() calls
 * with O_NOFOLLOW / AT_SYMLINK_NOFOLLOW. /dev/shm is sticky, so nobody but
 * the daemon's uid, the owner it gave a file, and root can rename or unlink
 * our files; before we unlink a name we look again all the same: it must
 * still be the inode we recorded, a regular file owned by our uid or by
 * the owner we recorded it under. Another user's file never qualifies; the
 * owner's own could only by taking a recorded inode number, which tmpfs
 * hands out again only after about 2^32 files (never, with inode64).
 *
 * A semaphore's file is made by hand where sem_open("/shmbroker.NAME.I")
 * looks for it (glibc: /dev/shm/sem.shmbroker.NAME.I, a process-shared
 * sem_t at offset 0), so that we get its descriptor for fchown/fstat and
 * the room behind the sem_t for the broker's own fields (PosixSemFile).
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/posix.h"
#include "daemon/self.h"
#include "daemon/siphash.h"
#include "proto/sem-t.h"

static int open_dir(void) {
        int fd = open(PSEM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        return fd < 0 ? -errno : fd;
}

/* The file name in PSEM_DIR of role `role` of channel `name`. */
static int file_name(const char *name, int role, char *buf, size_t size) {
        int k;

        if (role == POSIX_ROLE_SEGMENT)
                k = posix_shm_name(buf, size, name);
        else if (role == POSIX_ROLE_TABLE)
                k = posix_table_name(buf, size, name);
        else if (role >= 0)
                k = posix_sem_name(buf, size, name, (unsigned) role);
        else
                return -EINVAL;
        if (k < 0 || (size_t) k >= size)
                return -ENAMETOOLONG;
        /* shm_open("/X") keeps its segment in PSEM_DIR/X, sem_open("/X") its semaphore in PSEM_DIR/sem.X. */
        if (role < 0)
                memmove(buf, buf + 1, strlen(buf));
        else {
                size_t prefix = strlen(PSEM_FILE_PREFIX);

                if ((size_t) k + prefix > size)
                        return -ENAMETOOLONG;
                memmove(buf + prefix, buf + 1, strlen(buf));
                memcpy(buf, PSEM_FILE_PREFIX, prefix);
        }
        return 0;
}

int posix_record_file_name(const StateRecord *rec, char *buf, size_t size) {
        /* Only a channel name makes a name of ours: never a path elsewhere. */
        if (!proto_name_is_valid(rec->name))
                return -EINVAL;
        return file_name(rec->name, rec->id, buf, size);
}

/*
 * Where the file an intent is for is made and set up before it takes its
 * name (file_place()): derived from the key secret, so that no other user
 * can know it in advance, and from the intent, so that crash reclaim finds
 * it again. No name of a channel begins with a dot.
 */
static int temp_name(const uint8_t *secret, const StateRecord *intent, char *buf, size_t size) {
        char in[sizeof intent->name + 128];
        /*
         * The replaced file's inode too: `since` has whole seconds, and a
         * name seen (inotify) at one replacement must not come again at the
         * next of the same second, where another user could have taken it.
         */
        int n = snprintf(in, sizeof in, "%s %d %d %lld %" PRIu64 " %" PRIu64, intent->name, intent->id,
                         (int) intent->pid, (long long) intent->since, intent->dev, intent->ino);
        int k = snprintf(buf, size, ".shmbroker-new.%016" PRIx64, siphash24(secret, in, (size_t) n));

        return k < 0 || (size_t) k >= size ? -ENAMETOOLONG : 0;
}

static void file_init(PosixFile *f) {
        *f = (PosixFile) { .fd = -1, .uid = (uid_t) -1 };
}

/*
 * The daemon's mappings of its files, guarded against SIGBUS. A client
 * holding an rw descriptor may ftruncate(2) a file; the daemon's next
 * access beyond the new end (a ring's holder table, a semaphore's post
 * at removal, a status) would kill it. The handler maps private zero
 * pages over the rest of the mapping the fault hit and marks it hit, so
 * the access completes on memory nobody else sees, and
 * posix_objects_check() reports the file replaced. A fault anywhere else
 * is left to the default action. The daemon has one thread: the list
 * changes only outside any access to a mapping, so never under the handler.
 */
typedef struct Guard {
        uintptr_t start, end;           /* whole pages */
        volatile sig_atomic_t hit;
} Guard;

static struct {
        Guard *v;
        size_t n, cap;
        size_t page;
        bool installed;
} guards;

static void on_sigbus(int sig, siginfo_t *si, void *context) {
        uintptr_t a = (uintptr_t) si->si_addr;
        int saved = errno;

        (void) context;
        /* Only a fault of our own access (not a kill(2) of SIGBUS) on a guarded mapping. */
        for (size_t i = 0; si->si_code > 0 && i < guards.n; i++) {
                Guard *g = &guards.v[i];
                uintptr_t page = a & ~(uintptr_t) (guards.page - 1);

                if (a < g->start || a >= g->end)
                        continue;
                if (mmap((void *) page, g->end - page, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
                        break;
                g->hit = 1;
                errno = saved;
                return;
        }
        /* Not ours: as without a handler (a fault recurs at once, a sent signal is sent again). */
        signal(sig, SIG_DFL);
        if (si->si_code <= 0)
                raise(sig);
        errno = saved;
}

static Guard *guard_find(const void *addr) {
        for (size_t i = 0; addr && i < guards.n; i++)
                if (guards.v[i].start == (uintptr_t) addr)
                        return &guards.v[i];
        return NULL;
}

static int guard_add(void *addr, size_t size) {
        if (!guards.installed) {
                struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
                long page = sysconf(_SC_PAGESIZE);

                guards.page = page > 0 ? (size_t) page : 4096;
                sigemptyset(&sa.sa_mask);
                if (sigaction(SIGBUS, &sa, NULL) < 0)
                        return -errno;
                guards.installed = true;
        }
        if (guards.n == guards.cap) {
                size_t cap = guards.cap ? 2 * guards.cap : 64;
                Guard *v = reallocarray(guards.v, cap, sizeof *v);

                if (!v)
                        return -ENOMEM;
                guards.v = v;
                guards.cap = cap;
        }
        guards.v[guards.n] = (Guard) {
                .start = (uintptr_t) addr,
                .end = (uintptr_t) addr + (size + guards.page - 1) / guards.page * guards.page,
        };
        guards.n++;
        return 0;
}

static void guard_remove(const void *addr) {
        Guard *g = guard_find(addr);

        if (g)
                *g = guards.v[--guards.n];
}

static void file_close(PosixFile *f) {
        if (f->addr) {
                guard_remove(f->addr);
                (void) munmap(f->addr, f->size);
        }
        if (f->fd >= 0)
                close(f->fd);
        file_init(f);
}

/* Whether st is a file this daemon may treat as its own without holding it: a regular file of our uid. */
static bool stat_is_ours(const struct stat *st) {
        return S_ISREG(st->st_mode) && st->st_uid == self_euid();
}

/*
 * Whether st is f, which the daemon holds open (so its inode number cannot
 * have been reused): that inode, a regular file, owned by the daemon or by
 * the owner the daemon gave it.
 */
static bool stat_is_file(const struct stat *st, const void *userdata) {
        const PosixFile *f = userdata;

        return f->fd >= 0 && st->st_dev == f->dev && st->st_ino == f->ino && S_ISREG(st->st_mode) &&
               (st->st_uid == self_euid() || st->st_uid == f->uid);
}

/*
 * Whether st is the file rec records: that inode, a regular file of our uid
 * or of the owner the record names (file_set_perms() keeps file and record
 * in step, whenever a kill comes).
 */
static bool stat_is_recorded(const struct stat *st, const void *userdata) {
        const StateRecord *rec = userdata;

        return (uint64_t) st->st_dev == rec->dev && (uint64_t) st->st_ino == rec->ino && S_ISREG(st->st_mode) &&
               (st->st_uid == self_euid() || (rec->uid != (uid_t) -1 && st->st_uid == rec->uid));
}

static int file_map(PosixFile *f) {
        void *a = mmap(NULL, f->size, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, 0);
        int r;

        if (a == MAP_FAILED)
                return -errno;
        r = guard_add(a, f->size);
        if (r < 0) {
                (void) munmap(a, f->size);
                return r;
        }
        f->addr = a;
        return 0;
}

/*
 * Unlink dir/name if lstat shows what is_ours accepts. 1 removed, 0 not
 * ours (untouched), -ENOENT gone, another -errno.
 */
static int unlink_checked(int dir, const char *name, bool (*is_ours)(const struct stat *st, const void *userdata),
                          const void *userdata) {
        struct stat st;

        if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        if (!is_ours(&st, userdata))
                return 0;
        if (unlinkat(dir, name, 0) < 0)
                return -errno;
        return 1;
}

/*
 * Make dir/name: O_EXCL, 0600, sized, mapped. -EEXIST when the name is
 * taken (nothing touched); on another failure what was made is unlinked
 * when it can be proven ours, and *ret_left says whether a file may
 * still be there (its intent must then stay recorded, for reclaim).
 */
static int file_create(int dir, const char *name, size_t size, PosixFile *ret, bool *ret_left) {
        PosixFile f;
        struct stat st;
        int r, k;

        *ret_left = false;
        file_init(&f);
        f.size = size;
        f.fd = openat(dir, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (f.fd < 0)
                return -errno;
        if (fstat(f.fd, &st) < 0) {
                /* Nothing to compare the name with: the intent covers it. */
                r = -errno;
                *ret_left = true;
                goto fail;
        }
        f.dev = st.st_dev;
        f.ino = st.st_ino;
        f.uid = st.st_uid;
        if (ftruncate(f.fd, (off_t) size) < 0) {
                r = -errno;
                goto fail_unlink;
        }
        /*
         * Every page now: a sparse file in a full /dev/shm (anyone may fill it)
         * would make the first touch of a page a SIGBUS, ours or a client's.
         * ENOSPC here is a clear failure to make the channel instead.
         */
        if (size > 0) {
                r = -posix_fallocate(f.fd, 0, (off_t) size);
                if (r < 0)
                        goto fail_unlink;
        }
        r = file_map(&f);
        if (r < 0)
                goto fail_unlink;
        *ret = f;
        return 0;
fail_unlink:
        k = unlink_checked(dir, name, stat_is_file, &f);
        *ret_left = k != 1 && k != -ENOENT;
fail:
        file_close(&f);
        return r;
}

static StateRecord file_record(const PosixFile *f, const char *channel, int role, pid_t pid, int64_t since) {
        StateRecord rec = { .kind = STATE_POSIX, .id = role, .dev = (uint64_t) f->dev, .ino = (uint64_t) f->ino,
                            .pid = pid, .since = since, .size = f->size, .uid = f->uid };

        snprintf(rec.name, sizeof rec.name, "%s", channel);
        return rec;
}

/* A semaphore's file, as the library expects it (proto/posix.h); 0600 still. */
static int sem_file_init(PosixFile *f, unsigned value) {
        PosixSemFile *s = f->addr;

        /* The lock and its waiters stay as the new file is: zero (free, none). */
        if (sem_init(&s->sem, 1, value) < 0)
                return -errno;
        s->magic = PSEM_MAGIC;
        s->version = PSEM_VERSION;
        __atomic_store_n(&s->state, (uint32_t) PSEM_STATE_LIVE, __ATOMIC_RELEASE);
        return 0;
}

/*
 * Removal reaches the waiters: REMOVED first, then one post each passes on
 * (proto/posix.h). made: we initialised (or validated) the file in this run,
 * so it has our layout whatever a writer did to its magic since; a previous
 * run's file must still show it.
 */
static void sem_file_mark_removed(void *addr, size_t size, bool made) {
        PosixSemFile *s = addr;

        if (size < sizeof *s || (!made && (s->magic != PSEM_MAGIC || s->version != PSEM_VERSION)))
                return;
        __atomic_store_n(&s->state, (uint32_t) PSEM_STATE_REMOVED, __ATOMIC_RELEASE);
        /*
         * Not glibc's sem_post(), which a client's words in the sem_t can make
         * abort or hang (proto/sem-t.h); and a few tries only, so that a writer
         * that keeps changing the word cannot hold the daemon here (the waiters
         * also look at state every PSEM_POLL_MS).
         */
        (void) psem_post(&s->sem, 16);
}

void posix_objects_wake_lockers(const PosixObjects *p) {
        /* The caller marked a token dead: a locker marks itself asleep and then looks at the token (proto/posix.h). */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (unsigned i = 0; p->sems && i < p->nsems; i++) {
                PosixSemFile *s = p->sems[i].addr;
                uint32_t w;

                if (!s || p->sems[i].size < sizeof *s)
                        continue;
                /*
                 * Cleared before the wake-up, so that a locker between its mark and its sleep finds the word
                 * changed and looks again. Every sleeper wakes and marks itself again if it must sleep on.
                 * A word of the file, so a writer may fake sleepers: that costs a system call, no more.
                 */
                w = __atomic_load_n(&s->lock, __ATOMIC_SEQ_CST);
                if (w & PSEM_LOCK_SLEEPERS) {
                        (void) __atomic_compare_exchange_n(&s->lock, &w, w & ~PSEM_LOCK_SLEEPERS, false,
                                                           __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
                        psem_lock_wake(s);
                }
        }
}

void posix_objects_init(PosixObjects *p) {
        *p = (PosixObjects) {};
        file_init(&p->shm);
        file_init(&p->table);
}

bool posix_spec_has_table(const ChannelSpec *spec) {
        return spec->layout == PROTO_LAYOUT_BROADCAST || psem_has_table(spec->layout, spec->nsems);
}

/* The size of spec's table file: a broadcast channel's as its caller says, a raw channel's lock holder table. */
static uint64_t table_bytes(const ChannelSpec *spec, uint64_t table_size) {
        return spec->layout == PROTO_LAYOUT_BROADCAST ? table_size : PSEM_TABLE_SIZE;
}

static int objects_names(PosixObjects *p, const ChannelSpec *spec) {
        posix_shm_name(p->shm_name, sizeof p->shm_name, spec->name);
        if (posix_spec_has_table(spec))
                posix_table_name(p->table_name, sizeof p->table_name, spec->name);
        /* A raw channel's lock holder table: the daemon's alone, read-only to every opener (proto/posix.h). */
        p->table_private = spec->layout != PROTO_LAYOUT_BROADCAST;
        p->sem_names = calloc(spec->nsems + 1, sizeof *p->sem_names);
        p->sems = calloc(spec->nsems ?: 1, sizeof *p->sems);
        if (!p->sem_names || !p->sems)
                return -ENOMEM;
        for (unsigned i = 0; i < spec->nsems; i++)
                file_init(&p->sems[i]);
        for (unsigned i = 0; i < spec->nsems; i++) {
                p->sem_names[i] = strprintf("/shmbroker.%s.%u", spec->name, i);
                if (!p->sem_names[i])
                        return -ENOMEM;
        }
        p->nsems = spec->nsems;
        return 0;
}

static void objects_free_names(PosixObjects *p) {
        if (p->sem_names)
                for (unsigned i = 0; p->sem_names[i]; i++)
                        free(p->sem_names[i]);
        free(p->sem_names);
        free(p->sems);
        p->sem_names = NULL;
        p->sems = NULL;
}

/* The file of role `role`, or NULL. */
static PosixFile *objects_file(PosixObjects *p, int role) {
        if (role == POSIX_ROLE_SEGMENT)
                return &p->shm;
        if (role == POSIX_ROLE_TABLE)
                return &p->table;
        return role >= 0 && (unsigned) role < p->nsems && p->sems ? &p->sems[role] : NULL;
}

/* old's open file of role `role` (old NULL: none), which a new file of that role takes the place of. */
static PosixFile *objects_held(PosixObjects *old, int role) {
        PosixFile *f = old ? objects_file(old, role) : NULL;

        return f && f->fd >= 0 ? f : NULL;
}

/*
 * Put f, made and set up at dir/tmp, at dir/name in one step, so that the
 * name is never free for another user to take: where nothing is
 * (RENAME_NOREPLACE), or over `was` (RENAME_EXCHANGE), the file of the
 * channel it replaces, which then is at tmp for the caller to unlink.
 * -EEXIST when name holds another file, which is left there (and f at tmp).
 */
static int file_place(int dir, const char *tmp, const char *name, const PosixFile *was) {
        struct stat st;

        if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno != ENOENT)
                        return -errno;
                return renameat2(dir, tmp, dir, name, RENAME_NOREPLACE) < 0 ? -errno : 0;
        }
        if (!was || !stat_is_file(&st, was))
                return -EEXIST;
        if (renameat2(dir, tmp, dir, name, RENAME_EXCHANGE) < 0)
                return -errno;
        /* Only was's owner (or root) can have put another file at name in between: it goes back. */
        if (fstatat(dir, tmp, &st, AT_SYMLINK_NOFOLLOW) < 0 || !stat_is_file(&st, was)) {
                /* Nothing at tmp: was's owner unlinked it there, and ours is in place as if we had. */
                if (renameat2(dir, tmp, dir, name, RENAME_EXCHANGE) < 0 && errno == ENOENT)
                        return 0;
                return -EEXIST;
        }
        return 0;
}

/*
 * Make one file and record it: its intent first (name, maker, time, size,
 * and the file it replaces), then the file under a name derived from the
 * intent (temp_name()), set up (a semaphore initialised), then put at its
 * name (file_place()), then in one write its device and inode with the
 * intent cancelled, so a kill at any point leaves a record that reclaim
 * can judge. `was`, old's file of this role when it has one open (its
 * waiters told; objects_held()): its record goes with the intent's write, the intent
 * covering it at either name until it is unlinked, and it comes back when
 * nothing was put in its place, for the caller to remove the file as any.
 */
static int create_one(int dir, PosixObjects *p, PosixObjects *old, const ChannelSpec *spec, int role, size_t size,
                      State *state, char *msg, size_t msg_size) {
        static const uint8_t no_secret[SIPHASH_KEY_SIZE];
        PosixFile *f = objects_file(p, role), *was = objects_held(old, role);
        const char *channel = spec->name;
        char name[NAME_MAX + 1], tmp[NAME_MAX + 1];
        StateRecord recs[2], prior = {}, intent = { .kind = STATE_POSIX, .pending = true, .id = role,
                                                    .pid = p->made_pid, .since = p->made_since, .size = size,
                                                    .uid = (uid_t) -1 };
        const char *step = "create";
        bool left;
        int r, k;

        r = file_name(channel, role, name, sizeof name);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": its file names are too long", channel);
                return r;
        }
        snprintf(intent.name, sizeof intent.name, "%s", channel);
        if (was) {
                prior = file_record(was, channel, role, old->made_pid, old->made_since);
                intent.dev = prior.dev;
                intent.ino = prior.ino;
                intent.uid = prior.uid;
        }
        /* Without a state (never in the daemon) nothing is recorded and no secret is needed. */
        (void) temp_name(state ? state_secret(state) : no_secret, &intent, tmp, sizeof tmp);
        r = state ? state_append_records(state, &intent, 1, &prior, was ? 1 : 0) : 0;
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot record %s/%s in %s: %s", channel, PSEM_DIR, name,
                        state_path(state), strerror(-r));
                return r;
        }
        r = file_create(dir, tmp, size, f, &left);
        if (r == 0 && role >= 0) {
                step = "initialise";
                r = sem_file_init(f, spec->sem_values[role]);
        }
        if (r == 0) {
                step = "move into place";
                r = file_place(dir, tmp, name, was);
        }
        if (r < 0 && f->fd >= 0) {
                k = unlink_checked(dir, tmp, stat_is_file, f);
                /* Wherever a race left it: at its name too, never another's file there. */
                if (k == -ENOENT || k == 0)
                        k = unlink_checked(dir, name, stat_is_file, f);
                left = k != 1 && k != -ENOENT;
                file_close(f);
        }
        /* Nothing made, or made and gone again: the intent goes, the replaced file's record comes back. */
        if (r < 0 && !left && state)
                (void) state_append_records(state, &prior, was ? 1 : 0, &intent, 1);
        if (r == -EEXIST) {
                /* The temporary name, when that was taken: another user saw it at a replacement of this second. */
                msg_set(msg, msg_size, "channel \"%s\": %s/%s already exists and was not made by this daemon; "
                        "it is left untouched (remove it if it is a leftover)", channel, PSEM_DIR,
                        streq(step, "create") ? tmp : name);
                return r;
        }
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot %s %s/%s of %zu bytes: %s%s", channel, step, PSEM_DIR,
                        name, size, strerror(-r), left ? " (it may be left, recorded for the next start)" : "");
                return r;
        }
        /*
         * The replaced file, now at tmp. One that cannot go (its owner's, in
         * sticky /dev/shm, to a daemon without CAP_FOWNER) is its owner's to
         * remove: the intent goes all the same, as kept it would have the
         * next start's reclaim take the live file at the name for its own.
         */
        if (was) {
                (void) unlink_checked(dir, tmp, stat_is_file, was);
                file_close(was);
        }
        if (!state)
                return 0;
        recs[0] = file_record(f, channel, role, p->made_pid, p->made_since);
        recs[1] = intent;
        r = state_append_records(state, &recs[0], 1, &recs[1], 1);
        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot record %s/%s in %s: %s", channel, PSEM_DIR, name,
                        state_path(state), strerror(-r));
                k = unlink_checked(dir, name, stat_is_file, f);
                file_close(f);
                /* Gone: neither the record (a failed write may keep its first part) nor the intent is needed. */
                if (k == 1 || k == -ENOENT)
                        (void) state_append_records(state, NULL, 0, recs, 2);
        }
        return r;
}

/* What making or adopting starts with: the files' names, and the directory they are in. */
static int objects_begin(PosixObjects *p, const ChannelSpec *spec, int *ret_dir, char *msg, size_t msg_size) {
        int r = objects_names(p, spec);

        if (r < 0) {
                msg_set(msg, msg_size, "channel \"%s\": out of memory", spec->name);
                return r;
        }
        *ret_dir = open_dir();
        if (*ret_dir < 0) {
                msg_set(msg, msg_size, "channel \"%s\": cannot open %s: %s", spec->name, PSEM_DIR,
                        strerror(-*ret_dir));
                return *ret_dir;
        }
        return 0;
}

static uint64_t whole_pages(uint64_t bytes, uint64_t page) {
        return (bytes + page - 1) / page * page;
}

int posix_objects_find_taken(const ChannelSpec *spec, const PosixObjects *old, char *buf, size_t size) {
        _cleanup_(closep) int dir = open_dir();
        int last = (int) spec->nsems - 1;

        if (dir < 0)
                return dir;
        for (int role = POSIX_ROLE_TABLE; role <= last; role++) {
                struct stat st;
                int r;

                if ((role == POSIX_ROLE_TABLE && !posix_spec_has_table(spec)) ||
                    objects_held((PosixObjects *) old, role))
                        continue;
                r = file_name(spec->name, role, buf, size);
                if (r < 0)
                        return r;
                if (fstatat(dir, buf, &st, AT_SYMLINK_NOFOLLOW) == 0)
                        return 1;
                if (errno != ENOENT)
                        return -errno;
        }
        return 0;
}

/* The files below, each given every page (file_create()). */
uint64_t posix_objects_bytes(const ChannelSpec *spec, uint64_t table_size, uint64_t page) {
        uint64_t n = whole_pages(spec->size, page);

        if (posix_spec_has_table(spec))
                n += whole_pages(table_bytes(spec, table_size), page);
        n += (uint64_t) spec->nsems * whole_pages(sizeof(PosixSemFile), page);
        return n;
}

int posix_objects_create(const ChannelSpec *spec, uint64_t table_size, State *state, PosixObjects *old,
                         PosixObjects *ret, char *msg, size_t msg_size) {
        _cleanup_(closep) int dir = -1;
        PosixObjects p;
        int r;

        posix_objects_init(&p);
        p.made_pid = self_pid();
        /* A second before now: a file made from here on has a ctime no earlier. */
        p.made_since = (int64_t) time(NULL) - 1;
        r = objects_begin(&p, spec, &dir, msg, msg_size);
        if (r < 0)
                goto fail;
        r = create_one(dir, &p, old, spec, POSIX_ROLE_SEGMENT, spec->size, state, msg, msg_size);
        if (r == 0 && posix_spec_has_table(spec))
                r = create_one(dir, &p, old, spec, POSIX_ROLE_TABLE, table_bytes(spec, table_size), state, msg,
                               msg_size);
        for (unsigned i = 0; r == 0 && i < spec->nsems; i++)
                r = create_one(dir, &p, old, spec, (int) i, sizeof(PosixSemFile), state, msg, msg_size);
        if (r < 0)
                goto fail;
        /* What the new files did not take the place of goes as any removed file. */
        if (old)
                posix_objects_remove(old, state);
        *ret = p;
        return 0;
fail:
        posix_objects_remove(&p, state);
        if (old)
                posix_objects_remove(old, state);
        return r;
}

/* Open a recorded file again: the same inode, ours, of the recorded size; mapped. */
static int adopt_one(int dir, const StateRecord *rec, PosixFile *ret) {
        char name[NAME_MAX + 1];
        PosixFile f;
        struct stat st;
        int r;

        file_init(&f);
        r = posix_record_file_name(rec, name, sizeof name);
        if (r < 0)
                return r;
        f.fd = openat(dir, name, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (f.fd < 0)
                return -errno;
        if (fstat(f.fd, &st) < 0) {
                r = -errno;
                goto fail;
        }
        if (!stat_is_recorded(&st, rec) || (uint64_t) st.st_size != rec->size) {
                r = -ESTALE;
                goto fail;
        }
        f.dev = st.st_dev;
        f.ino = st.st_ino;
        /* The owner the record names (file_set_perms()): the file may be the daemon's on its way to it. */
        f.uid = rec->uid != (uid_t) -1 ? rec->uid : st.st_uid;
        f.size = (size_t) rec->size;
        r = file_map(&f);
        if (r < 0)
                goto fail;
        *ret = f;
        return 0;
fail:
        file_close(&f);
        return r;
}

/* The newest record of a role: a file's record moves (a new owner) by an add before the old one's cancel. */
static const StateRecord *find_role(const StateRecord *recs, size_t n, int role) {
        for (size_t i = n; i-- > 0;)
                if (recs[i].id == role)
                        return &recs[i];
        return NULL;
}

int posix_objects_adopt(const ChannelSpec *spec, const StateRecord *recs, size_t n, PosixObjects *ret,
                        char *msg, size_t msg_size) {
        _cleanup_(closep) int dir = -1;
        const StateRecord *rec;
        PosixObjects p;
        int r;

        posix_objects_init(&p);
        r = objects_begin(&p, spec, &dir, msg, msg_size);
        if (r < 0)
                goto fail;
        for (int role = POSIX_ROLE_TABLE; role < (int) spec->nsems; role++) {
                PosixFile *f = objects_file(&p, role);

                if (role == POSIX_ROLE_TABLE && !posix_spec_has_table(spec))
                        continue;
                rec = find_role(recs, n, role);
                r = rec ? adopt_one(dir, rec, f) : -ENOENT;
                if (r == 0 && role >= 0) {
                        const PosixSemFile *s = f->addr;

                        if (f->size != sizeof *s || s->magic != PSEM_MAGIC || s->version != PSEM_VERSION ||
                            __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != PSEM_STATE_LIVE)
                                r = -EPROTO;
                } else if (r == 0 && role == POSIX_ROLE_TABLE && p.table_private && f->size != PSEM_TABLE_SIZE)
                        r = -EPROTO;    /* a broadcast table's size is checked against its header (channel.c) */
                if (r < 0) {
                        char name[NAME_MAX + 1] = "?";

                        (void) file_name(spec->name, role, name, sizeof name);
                        msg_set(msg, msg_size, "channel \"%s\": %s/%s is %s", spec->name, PSEM_DIR, name,
                                r == -ENOENT ? "not recorded or gone" :
                                r == -ESTALE ? "not the file recorded" :
                                r == -EPROTO ? (role >= 0 ? "not a live semaphore of this version" :
                                                "not a holder table of this version") : strerror(-r));
                        goto fail;
                }
                if (role == POSIX_ROLE_SEGMENT || role == POSIX_ROLE_TABLE) {
                        p.made_pid = rec->pid;
                        p.made_since = rec->since;
                }
        }
        *ret = p;
        return 0;
fail:
        posix_objects_close(&p);
        return r;
}

/* Move f's record from owner `from` to owner `to`: the new record and the old one's cancellation in one write. */
static int record_owner(const PosixObjects *p, const PosixFile *f, int role, uid_t from, uid_t to, State *state) {
        const char *channel = p->shm_name + strlen("/shmbroker.");
        StateRecord old = file_record(f, channel, role, p->made_pid, p->made_since), moved;

        if (!state || from == to)
                return 0;
        old.uid = from;
        moved = old;
        moved.uid = to;
        return state_append_records(state, &moved, 1, &old, 1);
}

/*
 * A restart after a crash proves a file ours by its record: the recorded
 * inode, owned by the daemon's user or by the owner the record names. So
 * the file is never owned by a user its record does not name, whenever the
 * daemon is killed: from another user it goes to the daemon's own first,
 * and its record moves to the new owner while the daemon owns it.
 * f->uid is the owner the record names.
 */
static int file_set_perms(const PosixObjects *p, PosixFile *f, int role, uid_t uid, gid_t gid, mode_t mode,
                          State *state) {
        int r;

        if (f->fd < 0)
                return 0;
        if (f->uid != uid) {
                uid_t was = f->uid;

                if (was != self_euid() && fchown(f->fd, self_euid(), (gid_t) -1) < 0)
                        return -errno;
                r = record_owner(p, f, role, was, uid, state);
                if (r < 0) {
                        /* Back to the owner its record still names, as best we can. */
                        (void) fchown(f->fd, was, (gid_t) -1);
                        return r;
                }
                f->uid = uid;
                if (fchown(f->fd, uid, gid) < 0) {
                        r = -errno;
                        /* The same way back: the record first, while the file is the daemon's. */
                        if (record_owner(p, f, role, uid, was, state) == 0) {
                                f->uid = was;
                                (void) fchown(f->fd, was, (gid_t) -1);
                        }
                        return r;
                }
        } else {
                struct stat st;

                /* Only a change: a filter that forbids chown (the shipped unit's may) must not stop a no-op. */
                if (fstat(f->fd, &st) < 0)
                        return -errno;
                if ((st.st_uid != uid || st.st_gid != gid) && fchown(f->fd, uid, gid) < 0)
                        return -errno;
        }
        if (fchmod(f->fd, mode & 0777) < 0)
                return -errno;
        return 0;
}

int posix_objects_set_perms(PosixObjects *p, State *state, uid_t uid, gid_t gid, mode_t mode, mode_t table_mode) {
        int r;

        /*
         * The segment last: a client that can open it finds everything else
         * ready. A raw channel's lock holder table stays as made, the
         * daemon's and 0600: clients get it read-only from the daemon only.
         */
        r = p->table_private ? 0 : file_set_perms(p, &p->table, POSIX_ROLE_TABLE, uid, gid, table_mode, state);
        for (unsigned i = 0; r == 0 && i < p->nsems; i++)
                r = file_set_perms(p, &p->sems[i], (int) i, uid, gid, mode, state);
        return r < 0 ? r : file_set_perms(p, &p->shm, POSIX_ROLE_SEGMENT, uid, gid, mode, state);
}

/* Each name still names our file. */
int posix_objects_check(const PosixObjects *p) {
        _cleanup_(closep) int dir = open_dir();

        if (dir < 0)
                return dir;
        for (int role = POSIX_ROLE_TABLE; role < (int) p->nsems; role++) {
                const PosixFile *f = objects_file((PosixObjects *) p, role);
                char name[NAME_MAX + 1];
                const Guard *g;
                struct stat st;
                int r;

                if (f->fd < 0)
                        continue;
                r = file_name(p->shm_name + strlen("/shmbroker."), role, name, sizeof name);
                if (r < 0)
                        return r;
                if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno == ENOENT)
                                return -EIDRM;
                        return -errno;
                }
                if (st.st_dev != f->dev || st.st_ino != f->ino)
                        return -EIDRM;
                /* Truncated (or grown) through a client's descriptor: the mappings no longer hold the channel. */
                if (fstat(f->fd, &st) < 0)
                        return -errno;
                g = guard_find(f->addr);
                if ((uint64_t) st.st_size != f->size || (g && g->hit))
                        return -EIDRM;
        }
        return 0;
}

void posix_objects_mark_removed(PosixObjects *p) {
        for (unsigned i = 0; !p->told && p->sems && i < p->nsems; i++)
                if (p->sems[i].addr)
                        sem_file_mark_removed(p->sems[i].addr, p->sems[i].size, true);
        p->told = true;
}

void posix_objects_remove(PosixObjects *p, State *state) {
        _cleanup_(closep) int dir = open_dir();
        const char *channel = p->shm_name + strlen("/shmbroker.");

        /* Semaphores first: their waiters learn of the removal while the segment is still there. */
        posix_objects_mark_removed(p);
        for (int role = POSIX_ROLE_TABLE; role < (int) p->nsems; role++) {
                PosixFile *f = objects_file(p, role);
                char name[NAME_MAX + 1];
                StateRecord rec;
                int r;

                if (!f || f->fd < 0 || file_name(channel, role, name, sizeof name) < 0)
                        continue;
                /* No directory: nothing is unlinked, and all of it stays recorded. */
                r = dir < 0 ? dir : unlink_checked(dir, name, stat_is_file, f);
                if (!state)
                        continue;
                rec = file_record(f, channel, role, p->made_pid, p->made_since);
                /*
                 * Gone now, or before: its record goes. Not unlinked: it stays
                 * recorded, for the next start. Another file at the name: ours
                 * was unlinked (or renamed, and then no name finds it).
                 */
                if (r == 1 || r == -ENOENT)
                        (void) state_cancel(state, &rec);
                else if (r < 0)
                        (void) state_keep(state, &rec, -r);
        }
        posix_objects_close(p);
}

void posix_objects_close(PosixObjects *p) {
        file_close(&p->shm);
        file_close(&p->table);
        for (unsigned i = 0; p->sems && i < p->nsems; i++)
                file_close(&p->sems[i]);
        objects_free_names(p);
        p->nsems = 0;
}

size_t posix_objects_records(const PosixObjects *p, const char *channel, StateRecord *ret) {
        size_t n = 0;

        for (int role = POSIX_ROLE_TABLE; role < (int) p->nsems; role++) {
                const PosixFile *f = objects_file((PosixObjects *) p, role);

                if (f && f->fd >= 0)
                        ret[n++] = file_record(f, channel, role, p->made_pid, p->made_since);
        }
        /* Made first, recorded first: the segment before the table. */
        if (n >= 2 && ret[0].id == POSIX_ROLE_TABLE && ret[1].id == POSIX_ROLE_SEGMENT) {
                StateRecord t = ret[0];

                ret[0] = ret[1];
                ret[1] = t;
        }
        return n;
}

/* A new open file description of our file, with the access mode asked for. */
static int reopen_fd(const PosixFile *f, bool rw) {
        char path[64];
        int fd;

        snprintf(path, sizeof path, "/proc/self/fd/%d", f->fd);
        /* A magic link to our own open file: followed, and checked below all the same. */
        fd = open(path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        {
                struct stat st;

                if (fstat(fd, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino) {
                        close(fd);
                        return -EIDRM;
                }
        }
        return fd;
}

int posix_objects_open_fds(const PosixObjects *p, bool rw, int ret_fds[PROTO_FDS_MAX]) {
        int n = 0, r = 0;

        for (int role = POSIX_ROLE_SEGMENT; role >= POSIX_ROLE_TABLE; role--) {
                const PosixFile *f = role == POSIX_ROLE_SEGMENT ? &p->shm : &p->table;

                if (f->fd < 0)
                        continue;
                /*
                 * A broadcast channel's table is written by every opener (a subscriber's
                 * cursor is its own entry), as its mode grants wherever the channel may
                 * be read: read-write for ro openers too, or they could not subscribe.
                 * A raw channel's lock holder table is the daemon's to write alone:
                 * read-only for rw openers too (proto/posix.h).
                 */
                r = reopen_fd(f, role == POSIX_ROLE_TABLE ? !p->table_private : rw);
                if (r < 0)
                        goto fail;
                ret_fds[n++] = r;
        }
        for (unsigned i = 0; i < p->nsems && n < PROTO_FDS_MAX; i++) {
                r = reopen_fd(&p->sems[i], rw);
                if (r < 0)
                        goto fail;
                ret_fds[n++] = r;
        }
        return n;
fail:
        while (n > 0)
                close(ret_fds[--n]);
        return r;
}

size_t posix_objects_n_fds(const PosixObjects *p) {
        size_t n = (p->shm.fd >= 0) + (p->table.fd >= 0);

        return n + MIN((size_t) p->nsems, (size_t) PROTO_FDS_MAX - n);
}

int posix_objects_stat(const PosixObjects *p, uid_t *ret_uid, gid_t *ret_gid, mode_t *ret_mode, uint64_t *ret_size) {
        struct stat st;

        if (fstat(p->shm.fd, &st) < 0)
                return -errno;
        *ret_uid = st.st_uid;
        *ret_gid = st.st_gid;
        *ret_mode = st.st_mode & 0777;
        *ret_size = (uint64_t) st.st_size;
        return 0;
}

int posix_objects_sem_value(const PosixObjects *p, unsigned idx, int *ret) {
        PosixSemFile *s;

        if (idx >= p->nsems || !p->sems[idx].addr)
                return -EINVAL;
        s = p->sems[idx].addr;
        /* A word over SEM_VALUE_MAX, which only a writer's scribble makes, as SEM_VALUE_MAX: clients read 0..INT32_MAX. */
        *ret = psem_value(&s->sem);
        return 0;
}

/*
 * An intent whose file was made but not yet recorded: only a file as the
 * daemon leaves it for that moment is taken for it (a regular file of our
 * uid, one link, still mode 0600, empty or of the intended size, changed
 * within INTENT_WINDOW_SEC after the intent).
 */
#define INTENT_WINDOW_SEC 60

static bool stat_is_intended(const struct stat *st, const StateRecord *rec) {
        return stat_is_ours(st) && st->st_nlink == 1 && (st->st_mode & 07777) == 0600 &&
               (st->st_size == 0 || (uint64_t) st->st_size == rec->size) && st->st_ctim.tv_sec >= rec->since &&
               st->st_ctim.tv_sec <= rec->since + INTENT_WINDOW_SEC;
}

/* Whether st is the file an intent of a replacement replaces, proven as by its own record. */
static bool stat_is_replaced(const struct stat *st, const StateRecord *rec) {
        return (rec->dev != 0 || rec->ino != 0) && stat_is_recorded(st, rec);
}

static int reclaim_intent_at(int dir, const StateRecord *rec, const char *name, PosixTakenFn taken, void *userdata) {
        StateRecord found;
        struct stat st;

        if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        /* Its channel's file, taken over: whatever the intent made is that file now, or nothing. */
        if (taken && taken((uint64_t) st.st_dev, (uint64_t) st.st_ino, userdata))
                return -ENOENT;
        /* The file it replaces: its waiters were told before the intent was written. */
        if (stat_is_replaced(&st, rec))
                return unlink_checked(dir, name, stat_is_recorded, rec);
        if (!stat_is_intended(&st, rec))
                return 0;
        /* The inode just judged, looked at again right before the unlink. */
        found = *rec;
        found.dev = (uint64_t) st.st_dev;
        found.ino = (uint64_t) st.st_ino;
        found.uid = (uid_t) -1;
        return unlink_checked(dir, name, stat_is_recorded, &found);
}

/* How much a result of reclaim_intent_at() says: kept (an error) over another's file over removed over gone. */
static int intent_rank(int r) {
        return r == -ENOENT ? 0 : r == 1 ? 1 : r == 0 ? 2 : 3;
}

/*
 * An intent's file, and the file it replaces, are each at its name or at
 * its temporary name (create_one()), whichever step the kill came at.
 */
static int reclaim_intent(int dir, const StateRecord *rec, const char *name, const uint8_t *secret,
                          PosixTakenFn taken, void *userdata) {
        char tmp[NAME_MAX + 1];
        int r = reclaim_intent_at(dir, rec, name, taken, userdata), k;

        if (!secret || temp_name(secret, rec, tmp, sizeof tmp) < 0)
                return r;
        k = reclaim_intent_at(dir, rec, tmp, taken, userdata);
        return intent_rank(k) > intent_rank(r) ? k : r;
}

int posix_reclaim_file(const StateRecord *rec, const uint8_t *secret, void (*mark)(void *addr, size_t size),
                       PosixTakenFn taken, void *userdata) {
        _cleanup_(closep) int dir = -1;
        char name[NAME_MAX + 1];
        PosixFile f;
        int r;

        r = posix_record_file_name(rec, name, sizeof name);
        if (r < 0)
                return 0;       /* no name of ours: nothing to touch */
        /* Another record of a file taken over (a damaged file may hold two). */
        if (!rec->pending && taken && taken(rec->dev, rec->ino, userdata))
                return POSIX_TAKEN_OVER;
        dir = open_dir();
        if (dir < 0)
                return dir;
        /* Never initialised, never handed out: nobody waits on it. */
        if (rec->pending)
                return reclaim_intent(dir, rec, name, secret, taken, userdata);
        /* Opened (O_NOFOLLOW, the recorded inode, ours) only to tell its waiters. */
        r = adopt_one(dir, rec, &f);
        if (r == 0) {
                if (rec->id >= 0)
                        sem_file_mark_removed(f.addr, f.size, false);
                else if (mark)
                        mark(f.addr, f.size);
                file_close(&f);
        }
        return unlink_checked(dir, name, stat_is_recorded, rec);
}

int posix_objects_take(PosixObjects *p, const StateRecord *rec, const uint8_t *secret,
                       void (*mark)(void *addr, size_t size)) {
        _cleanup_(closep) int dir = -1;
        char name[NAME_MAX + 1], tmp[NAME_MAX + 1];
        StateRecord found = *rec;
        PosixFile *f, taken;
        struct stat st;
        int r;

        if (rec->kind != STATE_POSIX || rec->id < POSIX_ROLE_TABLE || rec->id >= PROTO_FDS_MAX ||
            (p->shm_name[0] && !streq(p->shm_name + strlen("/shmbroker."), rec->name)) ||
            posix_record_file_name(rec, name, sizeof name) < 0)
                return -EINVAL;
        if (rec->id >= (int) p->nsems) {
                PosixFile *v = reallocarray(p->sems, (size_t) rec->id + 1, sizeof *v);

                if (!v)
                        return -ENOMEM;
                for (unsigned i = p->nsems; i <= (unsigned) rec->id; i++)
                        file_init(&v[i]);
                p->sems = v;
                p->nsems = (unsigned) rec->id + 1;
        }
        f = objects_file(p, rec->id);
        if (!rec->pending && f->fd >= 0)
                return (uint64_t) f->dev == rec->dev && (uint64_t) f->ino == rec->ino ? 0 : -EEXIST;
        dir = open_dir();
        if (dir < 0)
                return dir;
        if (rec->pending) {
                /*
                 * A start killed while it replaced the file: at its name is the
                 * file replaced or the one made, told apart as reclaim does, and
                 * taken as any recorded file; the other one, at the temporary
                 * name, goes now, as the intent goes with the file taken.
                 */
                if (!secret || temp_name(secret, rec, tmp, sizeof tmp) < 0)
                        return -EINVAL;
                if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return -errno;
                if (f->fd >= 0 && (st.st_dev != f->dev || st.st_ino != f->ino))
                        return -EEXIST;
                if (f->fd < 0 && !stat_is_replaced(&st, rec) &&
                    (!stat_is_intended(&st, rec) || (uint64_t) st.st_size != rec->size))
                        return -ESTALE;
                r = reclaim_intent_at(dir, rec, tmp, NULL, NULL);
                if (r < 0 && r != -ENOENT)
                        return r;
                if (f->fd >= 0)
                        return 0;
                found.pending = false;
                found.dev = (uint64_t) st.st_dev;
                found.ino = (uint64_t) st.st_ino;
                found.size = (uint64_t) st.st_size;
                if (!stat_is_replaced(&st, rec))
                        found.uid = (uid_t) -1;
        }
        /* As a crash reclaim opens it to tell its waiters: the recorded inode, ours, O_NOFOLLOW. */
        r = adopt_one(dir, &found, &taken);
        if (r < 0)
                return r;
        if (rec->id >= 0)
                sem_file_mark_removed(taken.addr, taken.size, false);
        else if (mark)
                mark(taken.addr, taken.size);
        *f = taken;
        /* The first file's maker and time stand for all: only a removal's record compares them, never a proof. */
        if (!p->shm_name[0]) {
                posix_shm_name(p->shm_name, sizeof p->shm_name, rec->name);
                p->made_pid = rec->pid;
                p->made_since = rec->since;
        }
        p->told = true;
        return 1;
}
