#include <check.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "tests/client-helpers.h"
#include "tests/helpers.h"

shmb_channel *test_open_ok(const char *name, shmb_access access) {
        shmb_channel *ch = NULL;
        int r = shmb_open_channel(NULL, name, access, &ch);

        ck_assert_msg(r == 0, "open %s: %s", name, shmb_strerror(r));
        return ch;
}

void test_close_keeps_the_others_claim(shmb_client *c, const char *name, shmb_channel *b, shmb_channel *sender,
                                       shmb_channel *receiver) {
        shmb_channel *a;
        void *out, *left;
        char buf[256];

        ck_assert_int_eq(shmb_open(c, name, SHMB_RW, &a), 0);
        ck_assert_int_eq(shmb_send_reserve(b, 8, &out, 0), 0);
        /* a has a claim of its own, after b's, so that its close has one to end (a skip, no message). */
        ck_assert_int_eq(shmb_send_reserve(a, 8, &left, 0), 0);
        ck_assert_int_eq(shmb_close(a), 0);
        memcpy(out, "kept", 4);
        ck_assert_int_eq(shmb_send_commit(b, out, 4), 0);
        ck_assert_int_eq(shmb_recv(receiver, buf, sizeof buf, 5000), 4);
        ck_assert_int_eq(memcmp(buf, "kept", 4), 0);
        /* And a's claim was ended: the next message is not held up behind its slot. */
        ck_assert_int_eq(shmb_send(sender, "next", 4, 0), 0);
        ck_assert_int_eq(shmb_recv(receiver, buf, sizeof buf, 5000), 4);
        ck_assert_int_eq(memcmp(buf, "next", 4), 0);
}

void test_rejoin_through_status(shmb_channel *ch, const char *name) {
        int64_t deadline = test_now_ms() + 10000;
        shmb_status_list *l = NULL;
        int r;

        while ((r = shmb_status(shmb_channel_get_client(ch), name, &l)) < 0) {
                ck_assert_msg(test_now_ms() < deadline, "status of %s after the restart: %s", name, shmb_strerror(r));
                usleep(20 * 1000);
        }
        shmb_status_free(l);
}
