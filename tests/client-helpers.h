#pragma once

/*
 * Helpers of the test programs that link libshmbroker (helpers.c is also
 * linked by programs that do not). Failures abort the Check test with a
 * message.
 */

#include <shmbroker/shmbroker.h>

/* shmb_open_channel() of name on $SHMBROKER_SOCKET, which must succeed. */
shmb_channel *test_open_ok(const char *name, shmb_access access);

/*
 * The last part of the shared-hold close tests of rings and broadcast
 * channels: a handle of name opened on c beside b, with a reservation of
 * its own after one of b's, is closed. b's reservation is b's to commit,
 * and receiver (on another connection) gets it; the closed handle's claim
 * was ended, so the next message sender sends reaches receiver too.
 */
void test_close_keeps_the_others_claim(shmb_client *c, const char *name, shmb_channel *b, shmb_channel *sender,
                                       shmb_channel *receiver);

/*
 * Make a broker call on ch's connection, retried until the broker answers
 * (a restart may still be under way; for at most 10 s): the library
 * rejoins before it, opening its channels again with their tokens.
 */
void test_rejoin_through_status(shmb_channel *ch, const char *name);
