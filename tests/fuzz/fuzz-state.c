/*
 * Fuzz target: the state file reader over arbitrary text. What it reads
 * (all but the records of the older format, which reclaim settles and
 * never writes back) must survive a rewrite: read again, the same records,
 * and the same unparsable lines, skipped again.
 */

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static State *state;
static char dir[] = "/tmp/shmbroker-fuzz-state.XXXXXX";

static void cleanup(void) {
        state_remove_files(state, true);
        state = state_free(state);
        (void) rmdir(dir);
}

/* One state directory for the whole run: opening one per input would time the file system, not the parser. */
static State *state_get(void) {
        char msg[256] = "cannot make a directory";

        if (state)
                return state;
        if (!mkdtemp(dir) || state_open(dir, "fuzz", &state, msg, sizeof msg) < 0) {
                fprintf(stderr, "fuzz-state: %s\n", msg);
                abort();
        }
        atexit(cleanup);
        return state;
}

static void put(State *s, const uint8_t *data, size_t size) {
        /* By name: after a rewrite the name is the file the daemon's descriptor is on. */
        int fd = open(state_path(s), O_WRONLY | O_TRUNC | O_CLOEXEC);

        if (fd < 0 || (size > 0 && write(fd, data, size) != (ssize_t) size))
                abort();
        close(fd);
}

static bool same(const StateRecord *a, const StateRecord *b) {
        return a->kind == b->kind && a->key == b->key && a->id == b->id && a->pending == b->pending &&
               a->legacy == b->legacy && a->pid == b->pid && a->since == b->since && a->size == b->size &&
               a->dev == b->dev && a->ino == b->ino && a->uid == b->uid && a->sem_id == b->sem_id &&
               a->fingerprint == b->fingerprint && strcmp(a->name, b->name) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        State *s = state_get();
        StateRecord *v = NULL, *w = NULL;
        size_t n = 0, m = 0, skipped = 0, skipped_again = 0, unread_len, dropped, k = 0;

        put(s, data, size);
        if (state_read(s, &v, &n, &skipped) < 0)
                return 0;
        (void) state_unread(s, &unread_len, &dropped);
        for (size_t i = 0; i < n; i++)
                if (!v[i].legacy)
                        v[k++] = v[i];
        if (state_rewrite(s, v, k) < 0)
                abort();
        if (state_read(s, &w, &m, &skipped_again) < 0)
                abort();
        if (m != k || (dropped == 0 && skipped_again != skipped) || state_cut_line(s))
                abort();
        for (size_t i = 0; i < k; i++)
                if (!same(&v[i], &w[i]))
                        abort();
        free(v);
        free(w);
        return 0;
}
