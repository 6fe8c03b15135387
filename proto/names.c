/*
 * Names on the wire: operations, access modes, layouts and errno names.
 *
 * The errno table is explicit rather than strerrorname_np(): clients in
 * other languages match these strings, so the set must not drift with libc.
 */

#include <errno.h>
#include <string.h>

#include "proto.h"
#include "common/util.h"

static const char *const op_names[_PROTO_OP_MAX] = {
        [PROTO_OP_HELLO] = "hello",
        [PROTO_OP_OPEN] = "open",
        [PROTO_OP_CLOSE] = "close",
        [PROTO_OP_LIST] = "list",
        [PROTO_OP_STATUS] = "status",
        [PROTO_OP_RELOAD] = "reload",
};

static const char *const access_names[_PROTO_ACCESS_MAX] = {
        [PROTO_ACCESS_RW] = "rw",
        [PROTO_ACCESS_RO] = "ro",
};

static const char *const layout_names[_PROTO_LAYOUT_MAX] = {
        [PROTO_LAYOUT_RAW] = "raw",
        [PROTO_LAYOUT_RING] = "ring",
        [PROTO_LAYOUT_BROADCAST] = "broadcast",
};

static const char *const kind_names[_PROTO_KIND_MAX] = {
        [PROTO_KIND_SYSV] = "sysv",
        [PROTO_KIND_POSIX] = "posix",
};

static const char *const overflow_names[_PROTO_OVERFLOW_MAX] = {
        [PROTO_OVERFLOW_BLOCK] = "block",
        [PROTO_OVERFLOW_DROP] = "drop",
};

static int lookup(const char *const *table, size_t n, const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

const char *proto_op_to_string(ProtoOp op) {
        return (unsigned) op < _PROTO_OP_MAX ? op_names[op] : NULL;
}

int proto_op_from_string(const char *s) {
        return lookup(op_names, _PROTO_OP_MAX, s);
}

const char *proto_access_to_string(ProtoAccess a) {
        return (unsigned) a < _PROTO_ACCESS_MAX ? access_names[a] : NULL;
}

int proto_access_from_string(const char *s) {
        return lookup(access_names, _PROTO_ACCESS_MAX, s);
}

const char *proto_layout_to_string(ProtoLayout l) {
        return (unsigned) l < _PROTO_LAYOUT_MAX ? layout_names[l] : NULL;
}

int proto_layout_from_string(const char *s) {
        return lookup(layout_names, _PROTO_LAYOUT_MAX, s);
}

const char *proto_overflow_to_string(ProtoOverflow o) {
        return (unsigned) o < _PROTO_OVERFLOW_MAX ? overflow_names[o] : NULL;
}

int proto_overflow_from_string(const char *s) {
        return lookup(overflow_names, _PROTO_OVERFLOW_MAX, s);
}

const char *proto_kind_to_string(ProtoKind k) {
        return (unsigned) k < _PROTO_KIND_MAX ? kind_names[k] : NULL;
}

int proto_kind_from_string(const char *s) {
        return lookup(kind_names, _PROTO_KIND_MAX, s);
}

#define E(x) { x, #x }
static const struct {
        int err;
        const char *name;
} errno_names[] = {
        E(EPERM), E(ENOENT), E(ESRCH), E(EINTR), E(EIO), E(E2BIG), E(EBADF),
        E(EAGAIN), E(ENOMEM), E(EACCES), E(EFAULT), E(EBUSY), E(EEXIST),
        E(ENODEV), E(EINVAL), E(ENFILE), E(EMFILE), E(EFBIG), E(ENOSPC),
        E(ERANGE), E(ENAMETOOLONG), E(ENOSYS), E(EIDRM), E(ENODATA),
        E(ETIME), E(EPROTO), E(EBADMSG), E(EOVERFLOW), E(EMSGSIZE),
        E(EOPNOTSUPP), E(ECONNREFUSED), E(ECONNRESET), E(ETIMEDOUT),
        E(ESTALE), E(ECANCELED), E(EUSERS), E(EADDRINUSE), E(ENOTCONN),
        E(EPIPE), E(ESHUTDOWN), E(ENOTSUP), E(EDEADLK), E(ENOLCK), E(EXDEV),
        E(ENOBUFS),
};
#undef E

const char *proto_errno_to_name(int err) {
        for (size_t i = 0; i < ELEMENTSOF(errno_names); i++)
                if (errno_names[i].err == err)
                        return errno_names[i].name;
        return NULL;
}

int proto_errno_from_name(const char *name) {
        if (!name)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(errno_names); i++)
                if (streq(errno_names[i].name, name))
                        return errno_names[i].err;
        return -EINVAL;
}

static bool name_char_is_valid(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
               c == '-';
}

/*
 * One pass over the name: strspn() builds a table of its set on every call,
 * 450 instructions of the 500 this took for a short name, once per request
 * that names a channel.
 */
bool proto_name_is_valid(const char *name) {
        size_t n;

        if (!name)
                return false;
        for (n = 0; name[n]; n++)
                if (n == PROTO_NAME_MAX || !name_char_is_valid(name[n]))
                        return false;
        return n >= 1;
}
