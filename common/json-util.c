#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/json-util.h"
#include "common/utf8.h"
#include "common/util.h"

static const char *json_type_name(const json_t *v) {
        switch (json_typeof(v)) {
        case JSON_OBJECT: return "an object";
        case JSON_ARRAY: return "an array";
        case JSON_STRING: return "a string";
        case JSON_INTEGER: return "an integer";
        case JSON_REAL: return "a number with a fraction or an exponent";
        case JSON_TRUE:
        case JSON_FALSE: return "a boolean";
        default: return "null";
        }
}

void json_unpack_message(const json_error_t *e, char *msg, size_t msg_size) {
        const char *t = e->text;
        const char *p;

        /* jansson: "Object item not found: KEY" / "N object item(s) left unpacked: K1, K2" */
        if ((p = strstr(t, "item not found: ")))
                msg_set(msg, msg_size, "missing key \"%s\"", p + strlen("item not found: "));
        else if ((p = strstr(t, "left unpacked: ")))
                msg_set(msg, msg_size, "unknown key \"%s\"", p + strlen("left unpacked: "));
        else
                msg_set(msg, msg_size, "%s", t);
}

bool json_take_fields(json_t *o, const JsonField *fields, size_t n) {
        bool known = true;
        const char *k;
        json_t *v;

        json_object_foreach(o, k, v) {
                size_t f = 0;

                while (f < n && !streq(fields[f].key, k))
                        f++;
                if (f < n)
                        *fields[f].ret = v;
                else
                        known = false;
        }
        return known;
}

int json_field_string(const json_t *v, const char *key, const char **ret, char *msg, size_t msg_size) {
        if (!json_is_string(v)) {
                msg_set(msg, msg_size, "\"%s\" must be a string, not %s", key, json_type_name(v));
                return EINVAL;
        }
        if (strlen(json_string_value(v)) != json_string_length(v)) {
                msg_set(msg, msg_size, "\"%s\" must not contain NUL characters", key);
                return EINVAL;
        }
        *ret = json_string_value(v);
        return 0;
}

int json_field_int(const json_t *v, const char *key, int64_t min, int64_t max, int64_t *ret,
                   char *msg, size_t msg_size) {
        json_int_t i;

        if (!json_is_integer(v)) {
                msg_set(msg, msg_size, "\"%s\" must be an integer, not %s", key, json_type_name(v));
                return EINVAL;
        }
        i = json_integer_value(v);
        if (i < min || i > max) {
                msg_set(msg, msg_size, "\"%s\" must be between %" PRId64 " and %" PRId64 ", not %lld",
                        key, min, max, (long long) i);
                return EINVAL;
        }
        *ret = i;
        return 0;
}

json_t *json_message_string(const char *s) {
        json_t *v = json_string(s);
        size_t n, k = 0;
        char *clean;

        if (v || !s)
                return v;
        n = strlen(s);
        clean = malloc(n + 1);
        if (!clean)
                return NULL;
        for (size_t i = 0; i < n;) {
                size_t len = utf8_char_len((const unsigned char *) s + i, n - i);

                if (len == 0) {
                        i++;            /* a stray byte, or a character cut short */
                        continue;
                }
                memcpy(clean + k, s + i, len);
                k += len;
                i += len;
        }
        clean[k] = 0;
        v = k > 0 ? json_string(clean) : NULL;
        free(clean);
        return v;
}

bool json_error_at_nul(const json_error_t *e, const char *text, size_t len) {
        /* position counts the bytes read, the one it stopped at included */
        return e->position > 0 && (size_t) e->position <= len && text[e->position - 1] == '\0';
}

const char *json_error_words(const json_error_t *e, const char *text, size_t len) {
        if (json_error_at_nul(e, text, len))
                return "a NUL byte";
        if (json_error_code(e) == json_error_null_character)
                return "\\u0000 (a NUL character), which no string here may hold";
        return e->text;
}

int json_dump_line(const json_t *v, char **ret_line, size_t *ret_len) {
        char stack[4096], *line;
        size_t n;

        /*
         * Into a stack buffer first: json_dumps() grows its buffer from 16 bytes
         * by doubling and copies the result again, which showed in the daemon's
         * profile for every status answer. json_dumpb() says the size it needs.
         */
        n = json_dumpb(v, stack, sizeof stack, JSON_COMPACT);
        if (n == 0)
                return -ENOMEM;
        line = malloc(n + 2);
        if (!line)
                return -ENOMEM;
        if (n <= sizeof stack)
                memcpy(line, stack, n);
        else if (json_dumpb(v, line, n, JSON_COMPACT) != n) {
                free(line);
                return -ENOMEM;
        }
        line[n] = '\n';
        line[n + 1] = 0;
        *ret_line = line;
        *ret_len = n + 1;
        return 0;
}
