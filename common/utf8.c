#include "common/utf8.h"

#include <stdint.h>
#include <string.h>

size_t utf8_char_len(const unsigned char *s, size_t n) {
        size_t len;
        uint32_t c;

        if (n == 0)
                return 0;
        if (s[0] < 0x80)
                return 1;
        if (s[0] < 0xc2 || s[0] > 0xf4)
                return 0;       /* a continuation byte, an overlong lead, or past U+10FFFF */
        len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2;
        if (len > n)
                return 0;
        c = s[0] & (0x7f >> len);
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                c = c << 6 | (s[i] & 0x3f);
        }
        if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10ffff)) || (c >= 0xd800 && c <= 0xdfff))
                return 0;
        return len;
}

bool utf8_valid(const char *s) {
        const unsigned char *p = (const unsigned char *) s;
        size_t left = strlen(s);

        while (left > 0) {
                size_t n = utf8_char_len(p, left);

                if (n == 0)
                        return false;
                p += n;
                left -= n;
        }
        return true;
}
