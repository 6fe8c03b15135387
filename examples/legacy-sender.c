/*
 * legacy-sender: a System V program of the classic kind, with no library:
 * it finds its segment and semaphore set with ftok(PATH, 12), shmget and
 * semget, and hands messages over with semop: semaphore 0 says "the buffer
 * may be written", semaphore 1 "it may be read". The segment holds a 32-bit
 * length and the text; an empty message ends the receiver. The broker
 * creates both objects (config "key": {"ftok": [PATH, 12]}), owns their
 * permissions and removes them; this program does not change for it, and
 * talks to raw-receiver as well as to legacy-receiver.
 *
 *   legacy-sender PATH COUNT
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>

#define PROJ 12

enum { SEM_WRITABLE, SEM_READABLE };

static int put(int semid, char *base, size_t size, const char *text) {
        uint32_t len = (uint32_t) strlen(text);
        struct sembuf wait_writable = { SEM_WRITABLE, -1, 0 }, post_readable = { SEM_READABLE, 1, 0 };
        struct timespec five = { 5, 0 };

        if (len + sizeof len > size)
                return -EMSGSIZE;
        if (semtimedop(semid, &wait_writable, 1, &five) < 0)
                return -errno;
        memcpy(base, &len, sizeof len);
        memcpy(base + sizeof len, text, len);
        return semop(semid, &post_readable, 1) < 0 ? -errno : 0;
}

int main(int argc, char *argv[]) {
        struct shmid_ds ds;
        long count;
        key_t key;
        int shmid, semid, r = 0;
        char *base;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: legacy-sender PATH COUNT\n"
                      "Sends COUNT messages \"message 1\" .. \"message COUNT\", then an empty one,\n"
                      "through the System V segment and semaphore set of key ftok(PATH, 12),\n"
                      "without libshmbroker: a 32-bit length (host byte order), then the bytes;\n"
                      "semaphore 0 means \"may be written\", semaphore 1 \"may be read\".\n"
                      "No socket: the key is the program's own (SHMBROKER_SOCKET is not used).\n", stdout);
                return 0;
        }
        if (argc != 3 || argv[1][0] == '-' || (count = strtol(argv[2], NULL, 10)) < 0) {
                fprintf(stderr, "usage: legacy-sender PATH COUNT\n");
                return 2;
        }
        key = ftok(argv[1], PROJ);
        if (key == -1) {
                fprintf(stderr, "legacy-sender: ftok %s: %s\n", argv[1], strerror(errno));
                return 1;
        }
        shmid = shmget(key, 0, 0);
        semid = shmid < 0 ? -1 : semget(key, 0, 0);
        if (semid < 0 || shmctl(shmid, IPC_STAT, &ds) < 0 || (base = shmat(shmid, NULL, 0)) == (void *) -1) {
                /* The file exists (ftok read it): what is missing is an object at its key. */
                fprintf(stderr, "legacy-sender: key 0x%08x of %s: %s\n", (unsigned) key, argv[1],
                        errno == ENOENT ? "no segment and semaphore set at this key (is the broker serving it?)" :
                        strerror(errno));
                return 1;
        }
        for (long i = 1; i <= count && r == 0; i++) {
                char text[64];

                snprintf(text, sizeof text, "message %ld", i);
                r = put(semid, base, ds.shm_segsz, text);
        }
        if (r == 0)
                r = put(semid, base, ds.shm_segsz, "");
        if (r < 0)
                fprintf(stderr, "legacy-sender: %s\n", strerror(-r));
        shmdt(base);
        return r < 0 ? 1 : 0;
}
