/* Sentences for every error the library returns. */

#include <errno.h>
#include <limits.h>
#include <string.h>

#include "client/shmbroker-internal.h"

const char *shmb_strerror(int err) {
        /* -INT_MIN overflows, and no errno is that large. */
        if (err == INT_MIN)
                return "unknown error";
        switch (-err) {
        case 0: return "success";
        case ENOENT: return "no such channel, or no broker socket at that path";
        case EACCES: return "permission denied: the channel's owner, group and mode do not allow this access";
        case EPROTO: return "protocol error: the broker does not speak this protocol version or answered malformed "
                            "data, or a ring's shared state is corrupt";
        case EIDRM: return "the channel was removed (the broker stopped or reloaded it)";
        case EXDEV: return "the channel's objects are not visible here: this process is in another IPC namespace "
                           "than shmbrokerd (e.g. a unit with PrivateIPC=)";
        case ECONNREFUSED: return "no broker is listening on the socket";
        case ECONNRESET: return "the broker closed the connection";
        case ENOTCONN: return "the connection to the broker was closed";
        case ETIMEDOUT: return "timed out";
        case EAGAIN: return "the operation would block";
        case EINTR: return "interrupted by a signal";
        case EMSGSIZE: return "the message does not fit: larger than the slot size, or than the buffer";
        case EINVAL: return "invalid argument (bad name, semaphore index or access mode)";
        case EBADMSG: return "a ring message was corrupt";
        case E2BIG: return "the request was too long for the broker";
        case ENOMEM: return "out of memory";
        case EOPNOTSUPP: return "not supported: the channel is not a ring or broadcast channel (or a broadcast "
                                "publisher tried to receive), or the broker does not offer this request";
        case ESTALE: return "the broadcast message was overwritten while it was held (the subscriber fell behind); "
                            "it is counted as dropped";
        case ECHILD: return "the connection belongs to the process that made it: it was inherited through fork(); "
                            "connect again in this process";
        case EBUSY: return "busy (for an open: the connection holds that broadcast channel already, as a subscriber "
                           "or a publisher; a subscriber needs a connection of its own)";
        default:
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
        {
                /* strerror() words a number that is no errno in a buffer its next call reuses: not static. */
                const char *d = strerrordesc_np(-err);

                return d ? d : "unknown error";
        }
#else
                return strerror(-err);
#endif
        }
}

const char *shmb_errno_name(int err) {
        if (err == INT_MIN)     /* -INT_MIN overflows; no errno is that large */
                return NULL;
        return proto_errno_to_name(err < 0 ? -err : err);
}
