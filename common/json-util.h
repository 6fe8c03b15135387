#pragma once

/*
 * Strict JSON field access for jansson, shared by the wire protocol and the
 * config loader: unpack with "!" so an unknown key is refused, then check
 * each value's type here so the error names the key that was wrong.
 */

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* Sentence for a json_unpack_ex() failure: missing or unknown keys. */
void json_unpack_message(const json_error_t *e, char *msg, size_t msg_size);

/* A key an object may have, and where json_take_fields() puts its value. */
typedef struct JsonField {
        const char *key;
        json_t **ret;
} JsonField;

/*
 * Each member of o into the slot of its key (borrowed references); false
 * when o has a key that no field names. The fast half of a strict unpack:
 * json_unpack_ex() with "!" builds a table of the keys it found, for every
 * object, and was most of the cost of reading a short one. A caller whose
 * object has an unknown key, or lacks a required one, unpacks it with "!"
 * all the same, for jansson's own message.
 */
bool json_take_fields(json_t *o, const JsonField *fields, size_t n);

/* Each returns 0, or EINVAL (positive) with "KEY must be ..." in msg. */
int json_field_string(const json_t *v, const char *key, const char **ret, char *msg, size_t msg_size);
int json_field_int(const json_t *v, const char *key, int64_t min, int64_t max, int64_t *ret,
                   char *msg, size_t msg_size);

/*
 * A JSON string of a message for humans that may quote bytes a peer sent,
 * cut to a length in bytes (inside a character, perhaps): s without the
 * bytes that are not part of a valid UTF-8 character (utf8_char_len()).
 * NULL: no memory, or nothing left.
 */
json_t *json_message_string(const char *s);

/*
 * Whether jansson's error e, loading text of len bytes, is at a raw NUL
 * byte (never valid JSON): jansson takes it for the end of its input and
 * says "end of file" about text that goes on.
 */
bool json_error_at_nul(const json_error_t *e, const char *text, size_t len);

/*
 * jansson's error e, loading text of len bytes, in words for whoever wrote
 * the text: a raw NUL byte is named (json_error_at_nul()), and so is an
 * escaped one, which jansson refuses in the name of one of its flags. e's
 * own text otherwise. Static or e's; never NULL.
 */
const char *json_error_words(const json_error_t *e, const char *text, size_t len);

/* Dump compact, newline-terminated, into a malloc'd buffer. -ENOMEM. */
int json_dump_line(const json_t *v, char **ret_line, size_t *ret_len);

