#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "daemon/log.h"

static int max_level = LOG_INFO;
static bool prefix = false;

void log_setup(int level) {
        const char *js = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        max_level = level;
        prefix = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                 st.st_dev == dev && st.st_ino == ino;
}

void log_full(int level, const char *fmt, ...) {
        char line[2048];
        va_list ap;
        int saved = errno;

        if (level > max_level)
                return;
        va_start(ap, fmt);
        vsnprintf(line, sizeof line, fmt, ap);
        va_end(ap);
        if (prefix)
                fprintf(stderr, "<%d>%s\n", level, line);
        else
                fprintf(stderr, "shmbrokerd: %s\n", line);
        errno = saved;
}
