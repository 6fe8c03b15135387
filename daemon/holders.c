/*
 * Holder tables (see holders.h).
 *
 * Only this daemon writes a table, and from one thread: a word is loaded
 * relaxed and stored with release, so a client that loads it with acquire
 * (ring_token_dead()) sees pid and id written before it, though
 * it never reads them. A token is the entry's index + 1 in its low
 * RING_TOKEN_INDEX_BITS bits and the generation above, so one token names
 * one entry in one generation.
 *
 * An entry is reused FREE first, then DEAD ones in turn from where the
 * last search ended: each dead entry waits as long as the table allows
 * before its generation moves on, so generations wrap (after 2^20 reuses
 * of one entry) as late as possible.
 *
 * A watched orphan (holders.h) is judged by whoever watches its process;
 * the sweep leaves it alone. Its cookie lives beside the bitmap, and
 * only there: a take-back or a DEAD mark clears it with the orphan bit.
 *
 * An orphan of a killed run is judged by what that run recorded in its
 * ledger (or, without one, in the table): its pid,
 * when that run's PID namespace is ours, and its id (proc-id.h). A pid that
 * no longer exists, or now names another process, is proof it is gone.
 * Anything short of proof keeps it LIVE: a pid 0 (the opener was in a PID
 * namespace we cannot see), a pid of another PID namespace (we were started
 * anew in another), /proc unreadable (hidepid=) or an id that was not
 * recorded. A zombie counts as alive: a thread group whose leader exited
 * looks like one too.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/holders.h"
#include "daemon/log.h"
#include "daemon/posix.h"
#include "daemon/proc-id.h"
#include "daemon/wake.h"

void holders_done(Holders *hs) {
        free(hs->orphans);
        if (hs->own_allocated)
                free(hs->own);
        *hs = (Holders) {};
}

int holders_init_table(Holders *hs, RingHolder *table, uint32_t n, RingHolder *ledger, bool from_ledger) {
        uint64_t *v;

        holders_done(hs);
        n = MIN(n, (uint32_t) RING_HOLDERS);
        if (!table || n == 0)
                return 0;
        /* The bitmap, then the cookies. */
        v = calloc(RING_HOLDERS / 64 + (size_t) n, sizeof *v);
        if (!v)
                return -ENOMEM;
        *hs = (Holders) { .table = table, .n = n, .orphans = v, .cookies = v + RING_HOLDERS / 64, .own = ledger };
        if (!ledger) {
                hs->own = calloc(n, sizeof *hs->own);
                if (!hs->own) {
                        free(v);
                        *hs = (Holders) {};
                        return -ENOMEM;
                }
                hs->own_allocated = true;
        }
        if (ledger && from_ledger)
                /* A killed run's own record: whatever writers of the segment made of the table since is undone. */
                for (uint32_t i = 0; i < n; i++) {
                        table[i].pid = ledger[i].pid;
                        table[i].pidns = ledger[i].pidns;
                        table[i].starttime = ledger[i].starttime;
                        table[i].pidfs_ino = ledger[i].pidfs_ino;
                        __atomic_store_n(&table[i].word, ledger[i].word, __ATOMIC_RELEASE);
                }
        else
                /* The table as it is: a fresh one's, or a killed run's that left no ledger. */
                for (uint32_t i = 0; i < n; i++) {
                        hs->own[i] = table[i];
                        hs->own[i].word = __atomic_load_n(&table[i].word, __ATOMIC_RELAXED);
                }
        return 0;
}

int holders_init(Holders *hs, RingHeader *ring, RingHolder *ledger, bool from_ledger) {
        int r = holders_init_table(hs, ring ? ring_holder_at(ring, 0) : NULL, RING_HOLDERS, ledger, from_ledger);

        if (r >= 0 && hs->table)
                hs->ring = ring;
        return r;
}

static RingHolder *entry_at(const Holders *hs, uint32_t i) {
        return &hs->table[i];
}

/* Entry i as this side last wrote it: who it was handed to is read from here, never from the table. */
static RingHolder *own_at(const Holders *hs, uint32_t i) {
        return &hs->own[i];
}

/* The entry a token names, or UINT32_MAX when it names none. */
static uint32_t token_index(const Holders *hs, uint32_t token) {
        uint32_t i = ring_token_index(token);

        return i < hs->n ? i : UINT32_MAX;
}

/* Entry i's word as this side last wrote it: never as a writer of the table may have left it since. */
static uint64_t word_load(const Holders *hs, uint32_t i) {
        return own_at(hs, i)->word;
}

static void word_store(Holders *hs, uint32_t i, uint64_t word) {
        own_at(hs, i)->word = word;
        __atomic_store_n(&entry_at(hs, i)->word, word, __ATOMIC_RELEASE);
}

static uint32_t word_state(uint64_t word) {
        return (uint32_t) word;
}

static uint32_t word_gen(uint64_t word) {
        return (uint32_t) (word >> 32);
}

/* The word is LIVE under the generation token carries. */
static bool word_is_token(uint64_t word, uint32_t token) {
        return word_state(word) == RING_HOLDER_LIVE &&
               (word_gen(word) & RING_TOKEN_GEN_MASK) == token >> RING_TOKEN_INDEX_BITS;
}

/* As bcast_token_dead() tells it, but by the words this side wrote: a writer of the table cannot end a hold here. */
bool holders_token_dead(const Holders *hs, uint32_t token) {
        uint32_t i;

        if (!hs->table || token == 0)
                return false;
        i = token_index(hs, token);
        return i == UINT32_MAX || !word_is_token(word_load(hs, i), token);
}

static bool is_orphan(const Holders *hs, uint32_t i) {
        return hs->orphans[i / 64] & (UINT64_C(1) << (i % 64));
}

/* Make entry i an orphan (cookie 0: of a killed run), or no orphan (on false). */
static void orphan_set(Holders *hs, uint32_t i, bool on, uint64_t cookie) {
        uint64_t bit = UINT64_C(1) << (i % 64);

        if (is_orphan(hs, i)) {
                hs->orphans[i / 64] &= ~bit;
                hs->n_orphans--;
                if (hs->cookies[i] != 0)
                        hs->n_watched--;
                hs->cookies[i] = 0;
        }
        if (!on)
                return;
        hs->orphans[i / 64] |= bit;
        hs->n_orphans++;
        hs->cookies[i] = cookie;
        if (cookie != 0)
                hs->n_watched++;
}

size_t holders_adopt(Holders *hs) {
        if (!hs->table)
                return 0;
        for (uint32_t i = 0; i < hs->n; i++)
                if (word_state(word_load(hs, i)) == RING_HOLDER_LIVE)
                        orphan_set(hs, i, true, 0);
        return hs->n_orphans;
}

/* RingHolder.pidns of a broker that could not tell its namespace: no namespace's inode is 1. */
#define PIDNS_UNKNOWN 1u

/* The /proc inode number of a PID namespace: 0 for none (fd < 0, or not one that fits). */
static uint32_t pidns_ino(int fd) {
        struct stat st;

        return fd >= 0 && fstat(fd, &st) == 0 && st.st_ino > PIDNS_UNKNOWN && st.st_ino < UINT32_MAX ?
               (uint32_t) st.st_ino : 0;
}

/* Ours, which says in whose namespace a recorded pid is; PIDNS_UNKNOWN when /proc cannot tell. */
static uint32_t own_pidns(void) {
        static uint32_t ino;

        if (ino == 0) {
                _cleanup_(closep) int fd = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);

                ino = pidns_ino(fd) ?: PIDNS_UNKNOWN;
        }
        return ino;
}

/* Whether e's pid names a process in our PID namespace (recorded by a run in it, or by one that did not say). */
static bool pid_is_ours(const RingHolder *e) {
        return e->pidns == 0 || (e->pidns == own_pidns() && e->pidns != PIDNS_UNKNOWN);
}

/* Make entry i LIVE under gen for pid: who it is first, then the word that clients read. */
static uint32_t entry_set_live(Holders *hs, uint32_t i, uint32_t gen, pid_t pid, int pidfd) {
        RingHolder *e = entry_at(hs, i), *o = own_at(hs, i);
        /* An id not known (0): a sweep after a crash then trusts only a pid that is gone. */
        ProcId id = proc_id_of(pid, pidfd);

        o->pid = pid;
        o->pidns = own_pidns();
        o->starttime = id.starttime;
        o->pidfs_ino = id.pidfs_ino;
        /* The table gets the same, for a next broker without the ledger; this side never reads it back. */
        e->pid = o->pid;
        e->pidns = o->pidns;
        e->starttime = o->starttime;
        e->pidfs_ino = o->pidfs_ino;
        word_store(hs, i, (uint64_t) gen << 32 | RING_HOLDER_LIVE);
        return ring_token(i, gen);
}

/*
 * Whether the opener with pid `pid` (and pidfd, -1: none) is the process
 * that entry i was handed to: the same pid, and (when it is known) the same
 * id (proc-id.h), so a process that got a dead opener's pid is not it. A
 * pid we cannot see (0: another PID namespace) proves nothing by itself,
 * but a pidfd names its process wherever it lives, and pidfs never reuses
 * an inode number: the entry's and the opener's agree only for the same
 * process. Tokens are easy to guess from the table that every reader of the
 * segment sees: without this, anyone could take an orphan back and close
 * it, and a live claimer would be repaired under it.
 */
static bool same_opener(const Holders *hs, uint32_t i, pid_t pid, int pidfd) {
        const RingHolder *e = own_at(hs, i);
        ProcId id = { .starttime = e->starttime, .pidfs_ino = e->pidfs_ino };

        /* A pid of another namespace than ours, or one we cannot see: only the pidfd's inode can tell. */
        if (pid <= 0 || !pid_is_ours(e))
                return id.pidfs_ino != 0 && pidfd >= 0 && proc_id_of(pid, pidfd).pidfs_ino == id.pidfs_ino;
        if (e->pid != pid)
                return false;
        return (id.starttime == 0 && id.pidfs_ino == 0) || proc_id_matches(pid, &id) == 1;
}

int holders_take_back(Holders *hs, pid_t pid, int pidfd, uint32_t want, uint32_t *ret_token) {
        uint32_t i = token_index(hs, want);
        uint64_t word;

        if (!hs->table || i == UINT32_MAX || !is_orphan(hs, i) || !same_opener(hs, i, pid, pidfd))
                return -ENOENT;
        word = word_load(hs, i);
        if (!word_is_token(word, want))
                return -ENOENT;
        orphan_set(hs, i, false, 0);
        /* Same generation: the claims the opener made before the restart stay its own. */
        *ret_token = entry_set_live(hs, i, word_gen(word), pid, pidfd);
        return 0;
}

/* An entry to hand out: a FREE one, else the next DEAD one from hs->next. */
static int pick_entry(Holders *hs, uint32_t *ret_index) {
        for (uint32_t i = 0; i < hs->n; i++)
                if (word_state(word_load(hs, i)) == RING_HOLDER_FREE) {
                        *ret_index = i;
                        return 0;
                }
        for (uint32_t k = 0; k < hs->n; k++) {
                uint32_t i = (hs->next + k) % hs->n;

                if (word_state(word_load(hs, i)) == RING_HOLDER_DEAD) {
                        hs->next = (i + 1) % hs->n;
                        *ret_index = i;
                        return 0;
                }
        }
        return -EUSERS;
}

int holders_take(Holders *hs, pid_t pid, int pidfd, uint32_t want, uint32_t *ret_token) {
        uint64_t word;
        uint32_t i;
        int r;

        if (!hs->table)
                return -EINVAL;
        if (want != 0 && holders_take_back(hs, pid, pidfd, want, ret_token) == 0)
                return 0;
        r = pick_entry(hs, &i);
        if (r < 0)
                return r;
        /* A DEAD entry is no orphan; unless someone else wrote the table, which must not make it one. */
        orphan_set(hs, i, false, 0);
        word = word_load(hs, i);
        /* A FREE entry was never handed out: its generation 0 names nobody yet. */
        *ret_token = entry_set_live(hs, i, word_state(word) == RING_HOLDER_FREE ? word_gen(word) : word_gen(word) + 1,
                                    pid, pidfd);
        return 0;
}

void holders_wake_waiters(const Holders *hs) {
        if (hs->ring)
                ring_wake_sleepers(hs->ring);
        if (hs->name)
                wake_signal(hs->wake, hs->name);
        if (hs->posix)
                posix_objects_wake_lockers(hs->posix);
}

/* Mark entry i DEAD, keeping its generation. */
static void entry_set_dead(Holders *hs, uint32_t i, uint64_t word) {
        word_store(hs, i, (word & ~UINT64_C(0xffffffff)) | RING_HOLDER_DEAD);
        orphan_set(hs, i, false, 0);
        /* A waiter may sit behind its claim, which can be repaired only now. */
        holders_wake_waiters(hs);
}

void holders_release(Holders *hs, uint32_t token) {
        uint32_t i = token_index(hs, token);
        uint64_t word;

        if (!hs->table || token == 0 || i == UINT32_MAX)
                return;
        word = word_load(hs, i);
        if (word_is_token(word, token))
                entry_set_dead(hs, i, word);
}

int holders_orphan(Holders *hs, uint32_t token, uint64_t cookie) {
        uint32_t i = token_index(hs, token);

        if (!hs->table || token == 0 || i == UINT32_MAX || cookie == 0 || !word_is_token(word_load(hs, i), token))
                return -ENOENT;
        /* The word stays as it is: to clients the holder is as alive as it was. */
        orphan_set(hs, i, true, cookie);
        return 0;
}

bool holders_is_orphan(const Holders *hs, uint32_t token, uint64_t cookie) {
        uint32_t i = token_index(hs, token);

        return hs->table && token != 0 && i != UINT32_MAX && cookie != 0 && is_orphan(hs, i) &&
               hs->cookies[i] == cookie && word_is_token(word_load(hs, i), token);
}

bool holders_release_orphan(Holders *hs, uint32_t token, uint64_t cookie) {
        if (!holders_is_orphan(hs, token, cookie))
                return false;
        entry_set_dead(hs, token_index(hs, token), word_load(hs, token_index(hs, token)));
        return true;
}

/* Whether the opener recorded in e is gone for certain; *ret_why says how we know. */
static bool opener_gone(const RingHolder *e, const char **ret_why) {
        ProcId id = { .starttime = e->starttime, .pidfs_ino = e->pidfs_ino };

        /*
         * A pid of another namespace says nothing here, and whether that namespace
         * still has live processes cannot be told from ours (its parent's, say):
         * kept live, never skipped; a claim it left at death stays (shmbrokerd(8)).
         */
        if (e->pid <= 0 || !pid_is_ours(e) || proc_id_matches(e->pid, &id) != 0)
                return false;
        *ret_why = kill(e->pid, 0) < 0 && errno == ESRCH ? "it exited" : "its pid names another process now";
        return true;
}

size_t holders_sweep(Holders *hs, const char *name) {
        for (uint32_t i = 0; hs->n_orphans > hs->n_watched && i < hs->n; i++) {
                const RingHolder *e = own_at(hs, i);
                const char *why = NULL;
                uint64_t word;

                if (!is_orphan(hs, i) || hs->cookies[i] != 0 || !opener_gone(e, &why))
                        continue;
                word = word_load(hs, i);
                log_info("Channel %s: holder %" PRIu32 " of the previous run (pid %d) is gone (%s); marked it dead.",
                         name, ring_token(i, word_gen(word)), (int) e->pid, why);
                entry_set_dead(hs, i, word);
        }
        return hs->n_orphans - hs->n_watched;
}
