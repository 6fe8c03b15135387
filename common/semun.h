#pragma once

/* The semctl() argument, which <sys/sem.h> leaves to the caller to define (semctl(2)). */

#include <sys/sem.h>

union semun {
        int val;
        struct semid_ds *buf;
        unsigned short *array;
};
