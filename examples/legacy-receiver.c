/*
 * legacy-receiver: the other half of legacy-sender, with no library either:
 * ftok(PATH, 12), shmget, semget, and semop on semaphore 1 ("may be read")
 * and 0 ("may be written"). Prints each message on a line of its own until
 * the empty one; gives up after 10 s with nothing to read.
 *
 *   legacy-receiver PATH
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>

#define PROJ 12

enum { SEM_WRITABLE, SEM_READABLE };

int main(int argc, char *argv[]) {
        struct sembuf wait_readable = { SEM_READABLE, -1, 0 }, post_writable = { SEM_WRITABLE, 1, 0 };
        struct shmid_ds ds;
        key_t key;
        int shmid, semid, r = 0;
        const char *base;

        if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs("usage: legacy-receiver PATH\n"
                      "Prints the messages legacy-sender (or raw-sender) writes, one per line,\n"
                      "until an empty one, from the System V segment and semaphore set of key\n"
                      "ftok(PATH, 12), without libshmbroker; gives up after 10 s idle.\n"
                      "No socket: the key is the program's own (SHMBROKER_SOCKET is not used).\n", stdout);
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-') {
                fprintf(stderr, "usage: legacy-receiver PATH\n");
                return 2;
        }
        key = ftok(argv[1], PROJ);
        if (key == -1) {
                fprintf(stderr, "legacy-receiver: ftok %s: %s\n", argv[1], strerror(errno));
                return 1;
        }
        shmid = shmget(key, 0, 0);
        semid = shmid < 0 ? -1 : semget(key, 0, 0);
        if (semid < 0 || shmctl(shmid, IPC_STAT, &ds) < 0 || (base = shmat(shmid, NULL, SHM_RDONLY)) == (void *) -1) {
                /* The file exists (ftok read it): what is missing is an object at its key. */
                fprintf(stderr, "legacy-receiver: key 0x%08x of %s: %s\n", (unsigned) key, argv[1],
                        errno == ENOENT ? "no segment and semaphore set at this key (is the broker serving it?)" :
                        strerror(errno));
                return 1;
        }
        for (;;) {
                struct timespec ten = { 10, 0 };
                char text[4096];
                uint32_t len;

                if (semtimedop(semid, &wait_readable, 1, &ten) < 0) {
                        r = -errno;
                        break;
                }
                memcpy(&len, base, sizeof len);
                if (len >= sizeof text || len + sizeof len > ds.shm_segsz)
                        len = 0;
                memcpy(text, base + sizeof len, len);
                text[len] = 0;
                if (semop(semid, &post_writable, 1) < 0)
                        r = -errno;
                if (len == 0 || r < 0)
                        break;
                printf("%s\n", text);
        }
        if (r < 0)
                fprintf(stderr, "legacy-receiver: %s\n", strerror(-r));
        fflush(stdout);
        shmdt(base);
        return r < 0 ? 1 : 0;
}
