/*
 * Connections to the broker: one Unix stream socket, one request at a time
 * under a mutex, answers read with a small buffer. Answers may be longer
 * than a request line (status of many channels), up to CLIENT_ANSWER_MAX.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/shmbroker-internal.h"
#include "common/util.h"

#define CLIENT_ANSWER_MAX (64u * 1024 * 1024)

static const char *resolve_socket(const char *path) {
        const char *env;

        if (path)
                return path;
        /* secure_getenv: a setuid program must not be pointed elsewhere. */
        env = secure_getenv("SHMBROKER_SOCKET");
        return env && *env ? env : SHMB_DEFAULT_SOCKET;
}

static int send_all(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                buf += n;
                len -= (size_t) n;
        }
        return 0;
}

/* Read one answer line; *ret_len excludes the newline, which is consumed. */
static int read_line(shmb_client *c, char **ret_line, size_t *ret_len) {
        size_t scanned = 0;

        for (;;) {
                char *nl = c->rlen > scanned ? memchr(c->rbuf + scanned, '\n', c->rlen - scanned) : NULL;
                ssize_t n;

                if (nl) {
                        *ret_line = c->rbuf;
                        *ret_len = (size_t) (nl - c->rbuf);
                        return 0;
                }
                scanned = c->rlen;
                if (c->rlen == c->rcap) {
                        size_t cap = c->rcap ? c->rcap * 2 : 4096;
                        char *p;

                        if (c->rcap >= CLIENT_ANSWER_MAX)
                                return -EMSGSIZE;
                        p = realloc(c->rbuf, cap);
                        if (!p)
                                return -ENOMEM;
                        c->rbuf = p;
                        c->rcap = cap;
                }
                n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -ECONNRESET;     /* the broker went away */
                c->rlen += (size_t) n;
        }
}

static void consume_line(shmb_client *c, size_t len) {
        memmove(c->rbuf, c->rbuf + len + 1, c->rlen - len - 1);
        c->rlen -= len + 1;
}

/*
 * After a failed send, read or decode, where the stream stands is unknown
 * (half an answer buffered, later answers of a pipelined call unread): the
 * next call would read an answer meant for this one. Close the connection,
 * so that later calls fail with -ENOTCONN instead. Called with c->lock held.
 */
static void connection_lost(shmb_client *c) {
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        c->rlen = 0;
}

/* client_call_n(); keep_message: leave c->last_message as the previous call left it. */
static int call_n(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n, bool keep_message) {
        char *out = NULL, msg[PROTO_MESSAGE_MAX], *line;
        size_t out_len = 0, got = 0, len;
        int r = 0;

        /* Pipelined: every request in one write, then the answers in order. */
        for (size_t i = 0; i < n && r == 0; i++) {
                char *one, *grown;
                size_t one_len;

                r = proto_request_encode(&reqs[i], &one, &one_len);
                if (r < 0)
                        break;
                grown = realloc(out, out_len + one_len);
                if (!grown) {
                        free(one);
                        r = -ENOMEM;
                        break;
                }
                memcpy(grown + out_len, one, one_len);
                out = grown;
                out_len += one_len;
                free(one);
        }
        if (r < 0) {
                free(out);
                return r;
        }
        pthread_mutex_lock(&c->lock);
        if (!keep_message)
                c->last_message[0] = 0;
        r = c->fd < 0 ? -ENOTCONN : send_all(c->fd, out, out_len);
        while (r == 0 && got < n) {
                r = read_line(c, &line, &len);
                if (r < 0)
                        break;
                r = proto_response_decode(reqs[got].op, line, len, &rets[got], msg, sizeof msg);
                consume_line(c, len);
                if (r > 0) {
                        if (!keep_message)
                                snprintf(c->last_message, sizeof c->last_message, "%s", msg);
                        r = -EPROTO;
                }
                /* Only a decoded answer is ours to release later. */
                if (r == 0)
                        got++;
        }
        if (r < 0 && r != -ENOTCONN)
                connection_lost(c);
        /* The first refusal is the answer (its message under the lock, as other calls write it too). */
        for (size_t i = 0; r == 0 && i < got; i++)
                if (!rets[i].ok) {
                        if (!keep_message)
                                snprintf(c->last_message, sizeof c->last_message, "%s", rets[i].message);
                        r = -rets[i].error;
                }
        pthread_mutex_unlock(&c->lock);
        free(out);
        /* Every decoded response is released on failure. */
        if (r < 0)
                for (size_t i = 0; i < got; i++)
                        proto_response_done(&rets[i]);
        return r;
}

int client_call_n(shmb_client *c, const ProtoRequest *reqs, ProtoResponse *rets, size_t n) {
        return call_n(c, reqs, rets, n, false);
}

int client_call(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret) {
        return call_n(c, req, ret, 1, false);
}

int client_call_keep_message(shmb_client *c, const ProtoRequest *req, ProtoResponse *ret) {
        return call_n(c, req, ret, 1, true);
}

int shmb_request_json(shmb_client *c, const char *request, char **ret_answer) {
        size_t n, len;
        char *line;
        int r;

        if (!c || !request || !ret_answer)
                return -EINVAL;
        n = strlen(request);
        if (memchr(request, '\n', n))
                return -EINVAL;
        if (n + 1 > PROTO_LINE_MAX)
                return -E2BIG;
        pthread_mutex_lock(&c->lock);
        c->last_message[0] = 0;
        r = c->fd < 0 ? -ENOTCONN : send_all(c->fd, request, n);
        if (r == 0)
                r = send_all(c->fd, "\n", 1);
        if (r == 0)
                r = read_line(c, &line, &len);
        if (r == 0) {
                *ret_answer = strndup(line, len);
                consume_line(c, len);
                if (!*ret_answer)
                        r = -ENOMEM;
        } else if (r != -ENOTCONN)
                connection_lost(c);
        pthread_mutex_unlock(&c->lock);
        return r;
}

int client_connect(const char *socket_path, shmb_client **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *path = resolve_socket(socket_path);
        shmb_client *c;
        int r;

        r = strcpy_checked(sa.sun_path, sizeof sa.sun_path, path);
        if (r < 0)
                return r;
        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->refs = 1;
        pthread_mutex_init(&c->lock, NULL);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
                r = -errno;
                goto fail;
        }
        if (connect(c->fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                r = -errno;
                goto fail;
        }
        *ret = c;
        return 0;
fail:
        shmb_disconnect(c);
        return r;
}

int client_check_hello(const ProtoResponse *res) {
        return res->version == PROTO_VERSION ? 0 : -EPROTO;
}

int shmb_connect(const char *socket_path, shmb_client **ret) {
        ProtoRequest hello = { .op = PROTO_OP_HELLO, .version = PROTO_VERSION };
        ProtoResponse res;
        shmb_client *c;
        int r;

        if (!ret)
                return -EINVAL;
        r = client_connect(socket_path, &c);
        if (r < 0)
                return r;
        r = client_call(c, &hello, &res);
        if (r == 0) {
                r = client_check_hello(&res);
                proto_response_done(&res);
        }
        if (r < 0) {
                shmb_disconnect(c);
                return r;
        }
        *ret = c;
        return 0;
}

void client_ref(shmb_client *c) {
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

void client_unref(shmb_client *c) {
        if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        if (c->fd >= 0)
                close(c->fd);
        pthread_mutex_destroy(&c->lock);
        free(c->rbuf);
        free(c);
}

void shmb_disconnect(shmb_client *c) {
        if (!c)
                return;
        pthread_mutex_lock(&c->lock);
        if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
        }
        pthread_mutex_unlock(&c->lock);
        client_unref(c);
}

int shmb_client_fd(const shmb_client *c) {
        return c ? c->fd : -EINVAL;
}

const char *shmb_client_last_message(const shmb_client *c) {
        return c ? c->last_message : "";
}
