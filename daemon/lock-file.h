#pragma once

/*
 * A lock file: a file in a directory of the daemon's, held with flock(2)
 * for as long as the descriptor lives. Whoever stops unlinks the file
 * while still holding it, so a name opened just before that names an
 * inode nobody will hold again: after its flock() succeeds, the taker
 * checks that the name still is the inode it holds, or opens it afresh.
 */

#include <stdbool.h>

/*
 * Take an exclusive lock on dirfd/name without waiting. open_it(dirfd,
 * name, userdata) opens the file, making it when missing, and checks that
 * it is one to trust: a descriptor, or -errno, which is returned as it is.
 * 0 with *ret_fd; -EBUSY when someone else holds it; -ESTALE when it keeps
 * being replaced under us; another -errno from flock() or fstat().
 */
int lock_file_take(int dirfd, const char *name, int (*open_it)(int dirfd, const char *name, void *userdata),
                   void *userdata, int *ret_fd);
