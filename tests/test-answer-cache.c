/*
 * Unit tests for daemon/answer-cache: a cached answer must be byte for byte
 * what encoding the same figures gives, and any changed figure must give a
 * fresh encoding. Pure: no sockets, no kernel objects.
 */

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/answer-cache.h"

static ProtoSemaphore sems[2] = { { 1, true, 0, 0, 100 }, { 0, true, 2, 0, 101 } };
static ProtoClient clients[1] = { { 4242, 1000, PROTO_ACCESS_RW, 1700000000 } };

static ProtoChannel channel(void) {
        ProtoChannel c = {
                .name = "telemetry", .shm_key = 0x1234, .shm_id = 7, .sem_key = 0x1234, .sem_id = 8,
                .size = 4096, .nsems = 2, .layout = PROTO_LAYOUT_RAW, .owner = "root", .group = "video",
                .mode = 0660, .nattch = 1, .cpid = 100, .lpid = 101, .atime = 5, .dtime = 0, .ctime = 4,
                .semaphores = sems, .n_semaphores = 2, .clients = clients, .n_clients = 1,
        };
        return c;
}

/* What the cache answers must equal a fresh encoding of the same figures. */
static void assert_answer(AnswerCache *cache, ProtoChannelView view, const ProtoChannel *v, size_t n) {
        char *got, *want;
        size_t got_len, want_len;

        ck_assert_int_eq(answer_cache_encode(cache, view, v, n, &got, &got_len), 0);
        ck_assert_int_eq(proto_encode_channels(view, v, n, &want, &want_len), 0);
        ck_assert_uint_eq(got_len, want_len);
        ck_assert_str_eq(got, want);
        free(got);
        free(want);
}

/*
 * A step changed one field of c: the cached status answer must change
 * (the previous one, *prev, is replaced by the new) and be what a fresh
 * encoding gives.
 */
static void assert_step_changes(AnswerCache *cache, const ProtoChannel *c, char **prev, int step) {
        char *line;
        size_t len;

        ck_assert_int_eq(answer_cache_encode(cache, PROTO_VIEW_STATUS, c, 1, &line, &len), 0);
        if (*prev)
                ck_assert_msg(strcmp(*prev, line) != 0, "step %d gave the previous answer", step);
        free(*prev);
        *prev = line;
        assert_answer(cache, PROTO_VIEW_STATUS, c, 1);
}

START_TEST(test_same_figures_same_bytes) {
        AnswerCache cache = {};
        ProtoChannel c = channel();

        assert_answer(&cache, PROTO_VIEW_STATUS, &c, 1);
        ck_assert_ptr_nonnull(cache.line);
        assert_answer(&cache, PROTO_VIEW_STATUS, &c, 1);
        answer_cache_done(&cache);
        ck_assert_ptr_null(cache.line);
}
END_TEST

/* Every kind of change is seen: each answer below must differ from the last. */
START_TEST(test_each_change_reencodes) {
        AnswerCache cache = {};
        ProtoSemaphore s2[2];
        ProtoClient c2[2];
        ProtoChannel c = channel(), two[2];
        char *prev = NULL;

        memcpy(s2, sems, sizeof s2);
        memcpy(c2, clients, sizeof clients);
        c.semaphores = s2;
        c.clients = c2;
        for (int step = 0; step < 12; step++) {

                switch (step) {
                case 1: s2[1].value = 3; break;
                case 2: s2[0].ncount = 1; break;
                case 3: s2[1].zcount = 1; break;
                case 4: s2[0].pid = 999; break;
                case 5: c.nattch = 2; break;
                case 6: c.atime = 6; break;
                case 7: c2[0].since++; break;
                case 8: c2[1] = (ProtoClient) { 5, 6, PROTO_ACCESS_RO, 7 }; c.n_clients = 2; break;
                case 9: c.shm_id = 9; break;
                case 10: strcpy(c.owner, "daemon"); break;
                case 11: c.mode = 0600; break;
                }
                assert_step_changes(&cache, &c, &prev, step);
        }
        free(prev);
        /* Another view or another count of channels is another answer. */
        assert_answer(&cache, PROTO_VIEW_LIST, &c, 1);
        two[0] = c;
        two[1] = channel();
        assert_answer(&cache, PROTO_VIEW_LIST, two, 2);
        assert_answer(&cache, PROTO_VIEW_LIST, two, 1);
        answer_cache_done(&cache);
}
END_TEST

/* A broadcast channel's fields and subscriptions count too: a lag that moved is a new answer. */
START_TEST(test_broadcast_changes_reencode) {
        AnswerCache cache = {};
        ProtoSubscription subs[2] = { { 300, 8, 0, 0 }, { 301, 9, 1, 0 } };
        ProtoChannel c = channel();
        char *prev = NULL;

        c.layout = PROTO_LAYOUT_BROADCAST;
        c.slot_size = 64;
        c.slots = 8;
        c.subscribers = 4;
        c.table_key = 0x99;
        c.table_id = 3;
        c.subscriptions = subs;
        c.n_subscriptions = 1;
        for (int step = 0; step < 9; step++) {

                switch (step) {
                case 1: subs[0].lag = 1; break;
                case 2: subs[0].position = 9; break;
                case 3: subs[0].dropped = 5; break;
                case 4: subs[0].pid = 302; break;
                case 5: c.n_subscriptions = 2; break;
                case 6: c.overflow = PROTO_OVERFLOW_DROP; break;
                case 7: c.table_id = 4; break;
                case 8: c.subscribers = 5; break;
                }
                assert_step_changes(&cache, &c, &prev, step);
        }
        free(prev);
        /* The copy is the cache's own: changing the caller's array afterwards is seen. */
        subs[1].lag = 40;
        assert_answer(&cache, PROTO_VIEW_STATUS, &c, 1);
        answer_cache_done(&cache);
}
END_TEST

/* A posix channel's names count too, and so do semaphore counts that went missing. */
START_TEST(test_posix_changes_reencode) {
        AnswerCache cache = {};
        char sem0[] = "/shmb.t.sem0", sem1[] = "/shmb.t.sem1";
        char *names[3] = { sem0, sem1, NULL };
        ProtoSemaphore s2[2];
        ProtoChannel c = channel();
        char *prev = NULL;

        memcpy(s2, sems, sizeof s2);
        c.semaphores = s2;
        c.sem_names = names;
        for (int step = 0; step < 7; step++) {

                switch (step) {
                case 1: c.kind = PROTO_KIND_POSIX; strcpy(c.shm_name, "/shmb.t"); break;
                case 2: strcpy(c.shm_name, "/shmb.u"); break;
                case 3: sem1[strlen(sem1) - 1] = '2'; break;
                case 4: s2[0].has_counts = false; break;
                case 5:
                        c.layout = PROTO_LAYOUT_BROADCAST;
                        c.slot_size = 64;
                        c.slots = 8;
                        c.subscribers = 4;
                        strcpy(c.table_name, "/shmb.t.table");
                        break;
                case 6: strcpy(c.table_name, "/shmb.u.table"); break;
                }
                assert_step_changes(&cache, &c, &prev, step);
        }
        free(prev);
        /* The names are the cache's own copies: changing the caller's afterwards is seen. */
        sem0[strlen(sem0) - 1] = '9';
        assert_answer(&cache, PROTO_VIEW_STATUS, &c, 1);
        answer_cache_done(&cache);
}
END_TEST

/* The cache holds copies: the caller's arrays may change or go after the call. */
START_TEST(test_keeps_copies) {
        AnswerCache cache = {};
        ProtoSemaphore *s = malloc(sizeof sems);
        ProtoChannel c = channel();
        char *first, *line;
        size_t len;

        ck_assert_ptr_nonnull(s);
        memcpy(s, sems, sizeof sems);
        c.semaphores = s;
        ck_assert_int_eq(answer_cache_encode(&cache, PROTO_VIEW_STATUS, &c, 1, &first, &len), 0);
        s[0].value = 42;
        ck_assert_int_eq(answer_cache_encode(&cache, PROTO_VIEW_STATUS, &c, 1, &line, &len), 0);
        ck_assert_ptr_nonnull(strstr(line, "\"value\":42"));
        ck_assert_ptr_null(strstr(first, "\"value\":42"));
        free(s);
        free(first);
        free(line);
        c = channel();
        assert_answer(&cache, PROTO_VIEW_STATUS, &c, 1);
        answer_cache_done(&cache);
}
END_TEST

int main(void) {
        Suite *s = suite_create("answer-cache");
        TCase *tc = tcase_create("answer-cache");
        SRunner *sr;
        int failed;

        tcase_set_timeout(tc, 10);
        tcase_add_test(tc, test_same_figures_same_bytes);
        tcase_add_test(tc, test_each_change_reencodes);
        tcase_add_test(tc, test_posix_changes_reencode);
        tcase_add_test(tc, test_broadcast_changes_reencode);
        tcase_add_test(tc, test_keeps_copies);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
