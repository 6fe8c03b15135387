#pragma once

/* Private structures of libshmbroker, shared by its source files. */

#include <pthread.h>
#include <stdbool.h>

#include "client/include/shmbroker/shmbroker.h"
#include "proto/proto.h"
#include "proto/ring.h"

struct shmb_client {
        int fd;                         /* -1 after shmb_disconnect() */
        unsigned refs;                  /* the caller's, plus one per open channel */
        pthread_mutex_t lock;           /* one request/response at a time */
        char *rbuf;                     /* bytes read past the last answer */
        size_t rlen, rcap;
        char last_message[PROTO_MESSAGE_MAX];
};

struct shmb_channel {
        shmb_client *client;
        shmb_channel_info info;
        shmb_access access;
        void *addr;
        unsigned sem_base;              /* a ring's own semaphores come first */
        unsigned spin_us;               /* shmb_channel_set_spin() */
        uint32_t spin_budget_ns;        /* adapts within it */
        uint32_t ops;                   /* ring operations, to publish our CPU now and then */
        /* ring only */
        RingHeader *ring;
        char *slots;
        uint64_t stride;
};

/*
 * Send one request and decode its answer. Returns 0 with *ret filled (free
 * with proto_response_done()), the broker's refusal as a negative errno
 * (its message kept in c->last_message), or a socket/protocol error.
 */
int client_call(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret);

/* The same for n requests sent in one write (pipelined), answers in order. */
int client_call_n(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n);

/*
 * client_call() that leaves c->last_message as it was: for the close that
 * gives back the hold of a failed open, so the caller still reads why the
 * open failed.
 */
int client_call_keep_message(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret);

/* Connect without the hello round trip; the caller sends one (pipelined). */
int client_connect(const char *socket_path, shmb_client **ret);
int client_check_hello(const ProtoResponse *res);

void client_ref(shmb_client *c);
void client_unref(shmb_client *c);

/* The public description of a decoded channel. */
void info_from_proto(const ProtoChannel *pc, shmb_channel_info *ret);

