/*
 * Replays a fuzz target's saved corpus as an ordinary Check test, so an
 * input that once crashed stays fixed. Built once per target with the
 * target's source and CORPUS_DIR.
 */

#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

START_TEST(test_replay_corpus) {
        DIR *d = opendir(CORPUS_DIR);
        struct dirent *de;
        int n = 0;

        ck_assert_msg(d, "no corpus at %s", CORPUS_DIR);
        while ((de = readdir(d))) {
                char path[4096];
                FILE *f;
                uint8_t *buf;
                long size;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof path, "%s/%s", CORPUS_DIR, de->d_name);
                f = fopen(path, "rbe");
                ck_assert_ptr_nonnull(f);
                fseek(f, 0, SEEK_END);
                size = ftell(f);
                rewind(f);
                buf = malloc((size_t) size + 1);
                ck_assert_uint_eq(fread(buf, 1, (size_t) size, f), (size_t) size);
                fclose(f);
                LLVMFuzzerTestOneInput(buf, (size_t) size);
                free(buf);
                n++;
        }
        closedir(d);
        ck_assert_int_gt(n, 0);
}
END_TEST

int main(void) {
        Suite *s = suite_create("fuzz-replay");
        TCase *tc = tcase_create("corpus");
        SRunner *sr;
        int failed;

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_replay_corpus);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
