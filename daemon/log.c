#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/utf8.h"
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

/*
 * One message, one line of text: what a message quotes (a config file's
 * keys and names, a path) may hold a newline, which would start a line of
 * its own (under the journal: one without the priority prefix, so logged
 * at another priority), or an escape sequence for whoever reads the log on
 * a terminal. Each control character, C1 (U+0080-U+009F) included, becomes '?'.
 * So does each byte that is no valid UTF-8: journalctl shows a message with
 * one as "[blob data]", not its text, and a message cut at its buffer's size
 * (here or where it was made) may end in half a character.
 */
static void make_one_line(char *s) {
        unsigned char *r = (unsigned char *) s, *w = r, *end = r + strlen(s);

        while (r < end) {
                size_t n = utf8_char_len(r, (size_t) (end - r));

                if (n == 0 || (r[0] == 0xc2 && r[1] <= 0x9f)) {
                        *w++ = '?';
                        r += n ? n : 1;
                } else if (n == 1) {
                        *w++ = *r < 0x20 || *r == 0x7f ? '?' : *r;
                        r++;
                } else
                        for (size_t i = 0; i < n; i++)
                                *w++ = *r++;
        }
        *w = '\0';
}

static void log_va(int level, const char *fmt, va_list ap) {
        char line[2048];
        int saved = errno;

        vsnprintf(line, sizeof line, fmt, ap);
        make_one_line(line);
        if (prefix)
                fprintf(stderr, "<%d>%s\n", level, line);
        else
                fprintf(stderr, "shmbrokerd: %s\n", line);
        errno = saved;
}

void log_full(int level, const char *fmt, ...) {
        va_list ap;

        if (level > max_level)
                return;
        va_start(ap, fmt);
        log_va(level, fmt, ap);
        va_end(ap);
}

void log_client(int level, const char *fmt, ...) {
        static struct {
                time_t begin;           /* of the interval, CLOCK_MONOTONIC seconds */
                unsigned lines;         /* logged in it */
                unsigned long long left_out;
        } limit;
        struct timespec now;
        va_list ap;

        if (level > max_level)
                return;
        (void) clock_gettime(CLOCK_MONOTONIC, &now);
        if (limit.lines == 0 || now.tv_sec - limit.begin >= LOG_CLIENT_INTERVAL_SEC) {
                if (limit.left_out > 0)
                        log_full(LOG_NOTICE, "Left %llu more messages about clients out of the log in %d s.",
                                 limit.left_out, LOG_CLIENT_INTERVAL_SEC);
                limit.begin = now.tv_sec;
                limit.lines = 0;
                limit.left_out = 0;
        }
        if (limit.lines >= LOG_CLIENT_BURST) {
                limit.left_out++;
                return;
        }
        limit.lines++;
        va_start(ap, fmt);
        log_va(level, fmt, ap);
        va_end(ap);
}
