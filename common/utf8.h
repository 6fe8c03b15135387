#pragma once

#include <stdbool.h>
#include <stddef.h>

/*
 * The length of the valid UTF-8 character at s, n bytes left (1 for
 * ASCII), or 0 where there is none: a lone continuation byte, an overlong
 * form, a surrogate, past U+10FFFF, or a sequence cut short. Pure; the one
 * decoder both the log and the wire's messages use.
 */
size_t utf8_char_len(const unsigned char *s, size_t n);

/* Whether the NUL-terminated s is UTF-8 throughout, as a JSON string must be. */
bool utf8_valid(const char *s);
