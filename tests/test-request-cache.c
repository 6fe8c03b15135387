/*
 * Unit tests for daemon/request-cache: a line is found only as the same
 * bytes, with the request a fresh decode of it gives; a line too long, or
 * one whose slot another line took, is decoded again. Pure: no sockets, no
 * kernel objects.
 */

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/request-cache.h"

static ProtoRequest decoded(const char *line) {
        ProtoRequest req;
        char msg[PROTO_MESSAGE_MAX];
        int r = proto_request_decode(line, strlen(line), &req, msg, sizeof msg);

        ck_assert_msg(r == 0, "%s: %s", line, msg);
        return req;
}

static void assert_same_request(const ProtoRequest *a, const ProtoRequest *b, const char *line) {
        ck_assert_msg(a->op == b->op && a->version == b->version && a->has_client == b->has_client &&
                      streq(a->client, b->client) && a->has_channel == b->has_channel &&
                      streq(a->channel, b->channel) && a->access == b->access && a->has_holder == b->has_holder &&
                      a->holder == b->holder && a->fd == b->fd, "%s: not the request it decodes to", line);
}

/* What dispatch_line() does: the cache, or a decode that is then kept. */
static ProtoRequest through(RequestCache *c, const char *line) {
        ProtoRequest req;

        if (!request_cache_find(c, line, strlen(line), &req)) {
                req = decoded(line);
                request_cache_store(c, line, strlen(line), &req);
        }
        return req;
}

/*
 * Lines that differ in one byte (a channel's name, the access, a holder,
 * the op), met again and again in a shuffled order among more lines than
 * there are slots: each is answered with what a fresh decode of it gives.
 */
START_TEST(test_each_line_gets_its_own_request) {
        enum { LINES = 4 * REQUEST_CACHE_SLOTS, ROUNDS = 50 };
        static char lines[LINES][REQUEST_CACHE_LINE_MAX];
        /* Each line: the start of its form, a number, the rest. */
        static const char *const forms[][2] = {
                { "{\"op\":\"status\",\"channel\":\"ch", "\"}" },
                { "{\"op\":\"open\",\"channel\":\"ch", "\",\"access\":\"rw\"}" },
                { "{\"op\":\"open\",\"channel\":\"ch", "\",\"access\":\"ro\"}" },
                { "{\"op\":\"open\",\"channel\":\"ch00\",\"access\":\"rw\",\"holder\":", "}" },
                { "{\"op\":\"close\",\"channel\":\"ch", "\"}" },
                { "{\"op\":\"hello\",\"version\":", "}" },
        };
        RequestCache *c = calloc(1, sizeof *c);
        unsigned seed = 1;
        int hits = 0;

        ck_assert_ptr_nonnull(c);
        for (int i = 0; i < LINES; i++)
                snprintf(lines[i], sizeof lines[i], "%s%d%s", forms[i % ELEMENTSOF(forms)][0],
                         i / (int) ELEMENTSOF(forms) + 1, forms[i % ELEMENTSOF(forms)][1]);
        for (int round = 0; round < ROUNDS; round++)
                for (int k = 0; k < LINES; k++) {
                        const char *line = lines[rand_r(&seed) % LINES];
                        ProtoRequest want = decoded(line), got;

                        hits += request_cache_find(c, line, strlen(line), &got);
                        got = through(c, line);
                        assert_same_request(&got, &want, line);
                }
        ck_assert_msg(hits > 0, "no line was ever found again");
        free(c);
}
END_TEST

/*
 * A line is found as its own bytes only: no line that was never kept is
 * found, not one byte changed, cut short or grown. Many lines kept, each
 * probed every such way: about one probe in REQUEST_CACHE_SLOTS falls in
 * the slot of the line it was made from.
 */
START_TEST(test_found_only_as_the_same_bytes) {
        enum { LINES = 8 * REQUEST_CACHE_SLOTS };
        RequestCache *c = calloc(1, sizeof *c);
        int probes = 0;

        ck_assert_ptr_nonnull(c);
        for (int i = 0; i < LINES; i++) {
                char line[64], other[64];
                size_t len = (size_t) snprintf(line, sizeof line, "{\"op\":\"status\",\"channel\":\"c%d\"}", i);
                ProtoRequest req = decoded(line), got;

                request_cache_store(c, line, len, &req);
                ck_assert(request_cache_find(c, line, len, &got));
                assert_same_request(&got, &req, line);
                for (size_t k = 0; k < len; k++) {
                        memcpy(other, line, len);
                        other[k] ^= 0x20;
                        ck_assert_msg(!request_cache_find(c, other, len, &got), "%s found with byte %zu changed", line, k);
                        probes++;
                }
                for (size_t cut = 1; cut < len; cut++, probes++)
                        ck_assert_msg(!request_cache_find(c, line, cut, &got), "%s found cut to %zu bytes", line, cut);
                memcpy(other, line, len);
                other[len] = ' ';
                ck_assert_msg(!request_cache_find(c, other, len + 1, &got), "%s found with a space after it", line);
        }
        ck_assert_int_gt(probes, 100 * REQUEST_CACHE_SLOTS);
        free(c);
}
END_TEST

/* A line longer than REQUEST_CACHE_LINE_MAX is not kept; one of exactly that length is. */
START_TEST(test_long_lines_not_kept) {
        RequestCache *c = calloc(1, sizeof *c);
        char line[REQUEST_CACHE_LINE_MAX + 2];
        ProtoRequest req, got;

        ck_assert_ptr_nonnull(c);
        for (size_t len = REQUEST_CACHE_LINE_MAX; len <= REQUEST_CACHE_LINE_MAX + 1; len++) {
                /* A hello with a client name that makes the line len bytes long. */
                int pad = (int) (len - strlen("{\"op\":\"hello\",\"version\":1,\"client\":\"\"}"));

                snprintf(line, sizeof line, "{\"op\":\"hello\",\"version\":1,\"client\":\"%0*d\"}", pad, 0);
                ck_assert_uint_eq(strlen(line), len);
                req = decoded(line);
                request_cache_store(c, line, len, &req);
                ck_assert_msg(request_cache_find(c, line, len, &got) == (len <= REQUEST_CACHE_LINE_MAX),
                              "a line of %zu bytes", len);
        }
        free(c);
}
END_TEST

/* A line whose slot another took is decoded again, and then found again. */
START_TEST(test_evicted_line_decoded_again) {
        RequestCache *c = calloc(1, sizeof *c);
        const char *first = "{\"op\":\"status\",\"channel\":\"a\"}";
        char line[64];
        ProtoRequest got, want;
        int i;

        ck_assert_ptr_nonnull(c);
        through(c, first);
        /* More lines than slots: one of them takes first's slot. */
        for (i = 0; i < 64 * REQUEST_CACHE_SLOTS && request_cache_find(c, first, strlen(first), &got); i++) {
                snprintf(line, sizeof line, "{\"op\":\"status\",\"channel\":\"b%d\"}", i);
                through(c, line);
                want = decoded(line);
                ck_assert(request_cache_find(c, line, strlen(line), &got));
                assert_same_request(&got, &want, line);
        }
        ck_assert_msg(!request_cache_find(c, first, strlen(first), &got), "no line took the first one's slot");
        got = through(c, first);
        want = decoded(first);
        assert_same_request(&got, &want, first);
        ck_assert(request_cache_find(c, first, strlen(first), &got));
        free(c);
}
END_TEST

int main(void) {
        Suite *s = suite_create("request-cache");
        TCase *tc = tcase_create("request-cache");
        SRunner *sr;
        int failed;

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_each_line_gets_its_own_request);
        tcase_add_test(tc, test_found_only_as_the_same_bytes);
        tcase_add_test(tc, test_long_lines_not_kept);
        tcase_add_test(tc, test_evicted_line_decoded_again);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
