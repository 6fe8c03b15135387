#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/utf8.h"
#include "common/util.h"
#include "daemon/dispatch.h"
#include "daemon/log.h"
#include "proto/ring.h"

static int answer_error(int err, char **ret_line, size_t *ret_len, const char *fmt, ...) _printf_(4, 5);

/*
 * An errno the protocol has no name for (ELOOP from a config path, say) is
 * sent as EIO: the message says what it was, and the encoder's refusal must
 * not become a dropped connection.
 */
static int wire_errno(int err) {
        return proto_errno_to_name(err) ? err : EIO;
}

/* An error answer, its errno as wire_errno() sends it. */
static int answer_error(int err, char **ret_line, size_t *ret_len, const char *fmt, ...) {
        char msg[PROTO_MESSAGE_MAX];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        return proto_encode_error(wire_errno(err), msg, ret_line, ret_len);
}

bool dispatch_is_admin(const Dispatch *d, const Peer *p) {
        return p->uid == 0 || (d->config->admin_group && peer_in_group(p, d->config->admin_gid));
}

void dispatch_done(Dispatch *d) {
        answer_cache_done(&d->answers);
        free(d->hello_line);
        free(d->ok_line);
        d->hello_line = d->ok_line = NULL;
}

/*
 * A copy of an answer that never changes, encoded on first use: every
 * open by name starts with hello, and encoding its answer was 7% of the
 * daemon's instructions per open/close.
 */
static int constant_answer(char **cached, size_t *cached_len, int (*encode)(char **, size_t *), char **ret_line,
                           size_t *ret_len) {
        char *line;

        if (!*cached) {
                int r = encode(cached, cached_len);

                if (r < 0)
                        return r;
        }
        line = memdup(*cached, *cached_len + 1);       /* with its NUL, as encoded */
        if (!line)
                return -ENOMEM;
        *ret_line = line;
        *ret_len = *cached_len;
        return 0;
}

static int encode_hello(char **ret_line, size_t *ret_len) {
        return proto_encode_hello(PROTO_VERSION, PACKAGE_NAME "d " PACKAGE_VERSION, ret_line, ret_len);
}

static int do_hello(Dispatch *d, const ProtoRequest *req, char **ret_line, size_t *ret_len) {
        if (req->version != PROTO_VERSION)
                return answer_error(EPROTO, ret_line, ret_len,
                                    "protocol version %" PRId64 " is not supported; this daemon speaks version %d",
                                    req->version, PROTO_VERSION);
        return constant_answer(&d->hello_line, &d->hello_len, encode_hello, ret_line, ret_len);
}

/*
 * An admin may have removed a channel's objects with ipcrm. Notice it here,
 * before we hand out ids, and make the channel again. Returns the entry
 * (NULL when it could not be remade; *ret_gone then says why).
 */
static Entry *find_repaired(Dispatch *d, const char *name, char *why, size_t why_size) {
        Entry *e = registry_find(d->registry, name);
        bool remade;
        int r;

        why[0] = 0;
        if (!e)
                return NULL;
        r = registry_repair(d->registry, e, &remade, why, why_size);
        if (r < 0) {
                log_error("Channel %s was removed behind the daemon's back and cannot be made again: %s", name, why);
                return NULL;
        }
        if (remade && e->channel->spec.kind == PROTO_KIND_POSIX)
                log_warning("Channel %s: its files were removed or replaced behind the daemon's back; made them "
                            "again (%s).", name, e->channel->posix.shm_name);
        else if (remade)
                log_warning("Channel %s was removed behind the daemon's back; made it again under key 0x%08" PRIx32
                            " (shm id %d, sem id %d).", name, e->channel->key, e->channel->shm_id, e->channel->sem_id);
        return e;
}

static int answer_missing(const char *name, const char *why, char **ret_line, size_t *ret_len) {
        if (why[0])
                return answer_error(EIDRM, ret_line, ret_len,
                                    "channel \"%s\" was removed behind the broker's back and cannot be made again: %s",
                                    name, why);
        return answer_error(ENOENT, ret_line, ret_len, "no channel named \"%s\"", name);
}

static void close_fds(int *fds, int n) {
        while (n > 0)
                close(fds[--n]);
}

/* The answer to registry_hold() failing with r: a refusal the client is told of, or r itself. */
static int answer_hold_refused(const Entry *e, const Client *cl, const ProtoRequest *req, int r, char **ret_line,
                               size_t *ret_len) {
        if (r == -EUSERS && e->channel->spec.layout == PROTO_LAYOUT_BROADCAST && req->access == PROTO_ACCESS_RO) {
                log_client(LOG_INFO, "Refused a subscription to channel %s for pid %d: all %u of its subscribers "
                           "are live.", req->channel, (int) cl->peer.pid, e->channel->spec.subscribers);
                return answer_error(EUSERS, ret_line, ret_len,
                                    "channel \"%s\" has %u subscribers already, the most it takes (\"subscribers\"); "
                                    "try again when one has closed it", req->channel, e->channel->spec.subscribers);
        }
        if (r == -EBUSY)
                return answer_error(EBUSY, ret_line, ret_len,
                                    "channel \"%s\" is open on this connection already as a %s; a broadcast "
                                    "subscriber needs a connection of its own (shmb_open_channel() makes one)",
                                    req->channel, req->access == PROTO_ACCESS_RO ? "publisher or subscriber" : "subscriber");
        if (r == -EUSERS) {
                log_client(LOG_INFO, "Refused rw access to channel %s for pid %d: all %d entries of its holder "
                           "table are live.", req->channel, (int) cl->peer.pid, RING_HOLDERS);
                return answer_error(EUSERS, ret_line, ret_len,
                                    "channel \"%s\" has %d rw holders already, the most a %s takes; "
                                    "try again when one has closed it", req->channel, RING_HOLDERS,
                                    e->channel->spec.layout == PROTO_LAYOUT_BROADCAST ? "broadcast channel" :
                                    e->channel->spec.layout == PROTO_LAYOUT_RING ? "ring" :
                                    "posix channel with semaphores (one lock token per rw holder)");
        }
        return r;
}

static int do_open(Dispatch *d, Client *cl, const ProtoRequest *req, char **ret_line, size_t *ret_len,
                   int ret_fds[PROTO_FDS_MAX], size_t *ret_n_fds) {
        char why[PROTO_MESSAGE_MAX], wake[2][PATH_MAX];
        Entry *e = find_repaired(d, req->channel, why, sizeof why);
        int fds[PROTO_FDS_MAX];
        ChannelPerm perm;
        ProtoChannel pc;
        uint32_t token;
        int r, n_fds = 0;

        if (!e)
                return answer_missing(req->channel, why, ret_line, ret_len);
        /*
         * A client that gave up (a timed-out call) and closed its socket never learns of
         * this hold or its holder token: the token would outlive it as an orphan of a live
         * process, and enough of them fill the ring's table.
         */
        if (cl->hung_up) {
                log_client(LOG_INFO, "Not opening channel %s for pid %d: it hung up before its request was read.",
                            req->channel, (int) cl->peer.pid);
                return answer_error(ECONNRESET, ret_line, ret_len,
                                    "the client hung up before its open was read; nothing was opened");
        }
        channel_perm(e->channel, &perm);
        if (!access_allowed(&cl->peer, &perm, true, req->access == PROTO_ACCESS_RW)) {
                log_client(LOG_INFO, "Refused %s access to channel %s for pid %d (uid %u, gid %u).",
                           proto_access_to_string(req->access), req->channel, (int) cl->peer.pid,
                           (unsigned) cl->peer.uid, (unsigned) cl->peer.gid);
                return answer_error(EACCES, ret_line, ret_len,
                                    "uid %u may not open channel \"%s\" %s (owner %s, group %s, mode %04o)",
                                    (unsigned) cl->peer.uid, req->channel, proto_access_to_string(req->access),
                                    e->channel->owner, e->channel->group, (unsigned) perm.mode);
        }
        /*
         * System V objects have no descriptors: "fd" asks for nothing there, so a client may always ask.
         * Opened before the hold: failing here must leave a hold this connection has from an earlier
         * open as it was (releasing would end its token under the client's feet).
         */
        if (req->fd && e->channel->spec.kind == PROTO_KIND_POSIX) {
                /* Two more for the FIFOs, perhaps. Its uid's answers not read yet hold the rest of its share. */
                if (posix_objects_n_fds(&e->channel->posix) + 2 > cl->fd_room) {
                        if (cl->fd_room_all) {
                                log_client(LOG_INFO, "Refused the files of channel %s to pid %d (uid %u): the "
                                           "clients hold too many descriptors they have not read.", req->channel,
                                           (int) cl->peer.pid, (unsigned) cl->peer.uid);
                                return answer_error(EMFILE, ret_line, ret_len,
                                                    "the clients hold the descriptors of answers they have not "
                                                    "read, as many as the broker may send; try again later");
                        }
                        log_client(LOG_INFO, "Refused the files of channel %s to pid %d (uid %u): its uid's "
                                   "connections hold too many descriptors they have not read.", req->channel,
                                   (int) cl->peer.pid, (unsigned) cl->peer.uid);
                        return answer_error(EMFILE, ret_line, ret_len,
                                            "uid %u's connections hold the descriptors of answers they have not "
                                            "read, as many as one user may; read them, then ask again",
                                            (unsigned) cl->peer.uid);
                }
                n_fds = posix_objects_open_fds(&e->channel->posix, req->access == PROTO_ACCESS_RW, fds);
                if (n_fds < 0) {
                        /* Out of descriptors, any client may make it happen again and again: as its refusals. */
                        _printf_(2, 3) void (*log_fn)(int, const char *, ...) =
                                n_fds == -EMFILE || n_fds == -ENFILE ? log_client : log_full;

                        log_fn(LOG_ERR, "Cannot open the files of channel %s for pid %d: %s", req->channel,
                               (int) cl->peer.pid, strerror(-n_fds));
                        return answer_error(-n_fds, ret_line, ret_len,
                                            "cannot open the files of channel \"%s\" to hand them over: %s",
                                            req->channel, strerror(-n_fds));
                }
        }
        r = registry_hold(e, cl, req->access, req->has_holder ? req->holder : 0, time(NULL), &token);
        if (r < 0) {
                close_fds(fds, n_fds);
                return answer_hold_refused(e, cl, req, r, ret_line, ret_len);
        }
        channel_describe(e->channel, &pc);
        pc.holder = token;
        /*
         * The FIFOs' paths come from the socket's, which is bytes (--socket):
         * one that is not UTF-8 cannot be a JSON string, so it is left out,
         * as FIFOs the daemon could not make are, rather than failing the
         * encoder and with it the connection.
         */
        if (e->has_wake && wake_paths(d->registry->wake, req->channel, wake[0], wake[1], sizeof wake[0]) == 0 &&
            utf8_valid(wake[0]) && utf8_valid(wake[1])) {
                pc.wake_fifos[0] = wake[0];
                pc.wake_fifos[1] = wake[1];
                /*
                 * A posix channel's descriptors let a client in another mount
                 * namespace map it; its FIFOs come too (the last two), or it
                 * could not wait in an event loop there. Without them it still
                 * works, only not through shmb_channel_fd(). Only to an opener
                 * that may wait: an ro ring opener may not (and is not
                 * granted the FIFOs' write bit by path either).
                 */
                if (n_fds > 0 && n_fds + 2 <= PROTO_FDS_MAX &&
                    (req->access == PROTO_ACCESS_RW || e->channel->spec.layout == PROTO_LAYOUT_BROADCAST) &&
                    wake_open_fds(d->registry->wake, req->channel, fds + n_fds) == 0)
                        n_fds += 2;
        }
        pc.n_fds = (unsigned) n_fds;
        r = proto_encode_open(&pc, ret_line, ret_len);
        if (r < 0) {
                close_fds(fds, n_fds);
                return r;
        }
        memcpy(ret_fds, fds, (size_t) n_fds * sizeof *fds);
        *ret_n_fds = (size_t) n_fds;
        return r;
}

static int do_close(Dispatch *d, Client *cl, const ProtoRequest *req, char **ret_line, size_t *ret_len) {
        Entry *e = registry_find(d->registry, req->channel);

        if (!e)
                return answer_error(ENOENT, ret_line, ret_len, "no channel named \"%s\"", req->channel);
        if (registry_release(e, cl) < 0)
                return answer_error(ENOENT, ret_line, ret_len, "channel \"%s\" is not open on this connection",
                                    req->channel);
        return constant_answer(&d->ok_line, &d->ok_len, proto_encode_ok, ret_line, ret_len);
}

static int stat_entry(Entry *e, ProtoChannel *pc) {
        Hold *h;
        size_t i = 0;
        int r;

        r = channel_stat(e->channel, pc);
        if (r < 0)
                return r;
        /* A figure the kernel refused is this entry's error, never the answer's; the wire names it. */
        if (pc->error)
                pc->error = wire_errno(pc->error);
        if (e->n_holds == 0)
                return 0;       /* an empty array, without a block to say so */
        pc->clients = calloc(e->n_holds, sizeof *pc->clients);
        if (!pc->clients)
                return -ENOMEM;
        LIST_FOREACH(h, &e->holds, by_entry)
                pc->clients[i++] = (ProtoClient) {
                        .pid = h->client->peer.pid,
                        .uid = h->client->peer.uid,
                        .access = h->access,
                        .since = h->since,
                };
        pc->n_clients = i;
        return 0;
}

static int do_list(Dispatch *d, char **ret_line, size_t *ret_len) {
        size_t n = d->registry->n;
        ProtoChannel *v = calloc(n ?: 1, sizeof *v);
        int r;

        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                channel_describe(registry_at(d->registry, i)->channel, &v[i]);
        r = answer_cache_encode(&d->answers, PROTO_VIEW_LIST, v, n, ret_line, ret_len);
        free(v);                /* a description owns no memory */
        return r;
}

/*
 * An answer, never a dropped connection: only ENOMEM may end it. Objects
 * the kernel will not describe are not this: channel_stat() makes them an
 * error on their own entry, so one unreadable channel costs the others
 * nothing; what is left here is a channel that vanished while being read.
 */
static int answer_stat_failed(const Entry *e, int r, char **ret_line, size_t *ret_len) {
        if (r == -ENOMEM)
                return r;
        if (r == -EIDRM)
                return answer_error(EIDRM, ret_line, ret_len,
                                    "channel \"%s\": its kernel objects were removed behind the daemon's back",
                                    e->channel->spec.name);
        return answer_error(-r, ret_line, ret_len,
                            "channel \"%s\": cannot read its kernel objects: %s", e->channel->spec.name,
                            strerror(-r));
}

/*
 * Stat e into *pc, making its objects again first if they were removed
 * behind our back. 0; 1 when they cannot be made again: the channel has
 * left the registry (e is freed) and why says why; or stat_entry()'s
 * negative errno (*pc is then empty). name gets the channel's name.
 */
static int stat_repairing(Dispatch *d, Entry *e, ProtoChannel *pc, char *name, char *why, size_t why_size) {
        int r;

        strcpy(name, e->channel->spec.name);
        r = stat_entry(e, pc);
        if (r == -EIDRM) {
                proto_channel_done(pc);
                e = find_repaired(d, name, why, why_size);
                if (!e)
                        return 1;
                r = stat_entry(e, pc);
        }
        if (r < 0)
                proto_channel_done(pc);
        return r;
}

static int do_status(Dispatch *d, const ProtoRequest *req, char **ret_line, size_t *ret_len) {
        char name[PROTO_NAME_MAX + 1], why[PROTO_MESSAGE_MAX];
        Registry *reg = d->registry;
        Entry *one = NULL;
        ProtoChannel one_pc = {}, *v;
        size_t n = 0;
        int r = 0;

        if (req->has_channel) {
                one = registry_find(reg, req->channel);
                if (!one)
                        return answer_error(ENOENT, ret_line, ret_len, "no channel named \"%s\"", req->channel);
        }
        /*
         * One channel, as monitors poll it: on the stack. calloc() does not
         * take from glibc's per-thread cache, so each of these 840 bytes
         * came from the heap and went back the long way (free() merged the
         * block with the top and then consolidated the fast bins): 690
         * instructions a request.
         */
        v = one ? &one_pc : calloc(reg->n ?: 1, sizeof *v);
        if (!v)
                return -ENOMEM;
        if (one) {
                r = stat_repairing(d, one, &v[0], name, why, sizeof why);
                if (r == 1) {
                        r = answer_missing(name, why, ret_line, ret_len);
                        goto out;
                }
                if (r < 0) {
                        r = answer_stat_failed(one, r, ret_line, ret_len);
                        goto out;
                }
                n = 1;
        } else
                for (size_t i = 0; i < reg->n;) {
                        Entry *e = registry_at(reg, i);

                        r = stat_repairing(d, e, &v[n], name, why, sizeof why);
                        if (r == 1)
                                continue;       /* gone from the registry: the next one is at i now */
                        if (r < 0) {
                                r = answer_stat_failed(e, r, ret_line, ret_len);
                                goto out;
                        }
                        n++;
                        i++;
                }
        r = answer_cache_encode(&d->answers, PROTO_VIEW_STATUS, v, n, ret_line, ret_len);
out:
        for (size_t k = 0; k < n; k++)
                proto_channel_done(&v[k]);
        if (v != &one_pc)
                free(v);
        return r;
}

static int do_reload(Dispatch *d, Client *cl, char **ret_line, size_t *ret_len) {
        ProtoReloadResult res = {};
        char msg[PROTO_MESSAGE_MAX];
        int r;

        if (!dispatch_is_admin(d, &cl->peer)) {
                log_client(LOG_INFO, "Refused reload for pid %d (uid %u): not root and not in the admin group.",
                           (int) cl->peer.pid, (unsigned) cl->peer.uid);
                return answer_error(EACCES, ret_line, ret_len, "reload needs uid 0 or membership of the admin group");
        }
        if (!d->reload)
                return answer_error(EOPNOTSUPP, ret_line, ret_len, "this daemon cannot reload");
        r = d->reload(d->userdata, &res, msg, sizeof msg);
        if (r > 0)
                return answer_error(r, ret_line, ret_len, "%s", msg);
        if (r < 0)
                return r;
        r = proto_encode_reload(&res, ret_line, ret_len);
        proto_reload_result_done(&res);
        return r;
}

int dispatch_line(Dispatch *d, Client *cl, const char *line, size_t len, char **ret_line, size_t *ret_len,
                  int ret_fds[PROTO_FDS_MAX], size_t *ret_n_fds) {
        char msg[PROTO_MESSAGE_MAX];
        ProtoRequest req;
        int r;

        *ret_n_fds = 0;
        if (!request_cache_find(&d->requests, line, len, &req)) {
                r = proto_request_decode(line, len, &req, msg, sizeof msg);
                if (r > 0)
                        return proto_encode_error(r, msg, ret_line, ret_len);
                if (r < 0)
                        return r;
                request_cache_store(&d->requests, line, len, &req);
        }

        switch (req.op) {
        case PROTO_OP_HELLO:
                return do_hello(d, &req, ret_line, ret_len);
        case PROTO_OP_OPEN:
                return do_open(d, cl, &req, ret_line, ret_len, ret_fds, ret_n_fds);
        case PROTO_OP_CLOSE:
                return do_close(d, cl, &req, ret_line, ret_len);
        case PROTO_OP_LIST:
                return do_list(d, ret_line, ret_len);
        case PROTO_OP_STATUS:
                return do_status(d, &req, ret_line, ret_len);
        case PROTO_OP_RELOAD:
                return do_reload(d, cl, ret_line, ret_len);
        default:
                return answer_error(EOPNOTSUPP, ret_line, ret_len, "unknown op");
        }
}
