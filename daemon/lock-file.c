#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/lock-file.h"

int lock_file_take(int dirfd, const char *name, int (*open_it)(int dirfd, const char *name, void *userdata),
                   void *userdata, int *ret_fd) {
        for (int attempt = 0; attempt < 8; attempt++) {
                _cleanup_(closep) int fd = open_it(dirfd, name, userdata);
                struct stat a, b;

                if (fd < 0)
                        return fd;
                if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                        return errno == EWOULDBLOCK ? -EBUSY : -errno;
                if (fstat(fd, &a) < 0)
                        return -errno;
                if (fstatat(dirfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_dev == b.st_dev &&
                    a.st_ino == b.st_ino) {
                        *ret_fd = TAKE_FD(fd);
                        return 0;
                }
        }
        return -ESTALE;
}
