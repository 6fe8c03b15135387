"""The C library underneath: loading it, its prototypes, errors and timeouts.

Nothing here is public API. The binding calls libshmbroker through ctypes;
every call that may block releases the GIL (ctypes.CDLL does), so other
Python threads run meanwhile.

Which library is loaded, first match wins:

1. $SHMBROKER_LIBRARY, a path to libshmbroker.so.N (the tests use it to run
   against the build tree's library);
2. the full path substituted into _config.py by `make install` (the library
   installed together with this package);
3. whatever ctypes.util.find_library("shmbroker") finds (running from a source
   tree without either).
"""

import ctypes
import ctypes.util
import errno
import math
import os
import time

# The numbers of `enum shmb_access` in <shmbroker/shmbroker.h> (API 1), kept
# in this one place.
ACCESS = {
    "rw": 2,    # SHMB_RW
    "ro": 1,    # SHMB_RO
}

# shmb_kind values, as the config and the broker's answers name them.
KINDS = {
    0: "sysv",  # SHMB_KIND_SYSV
    1: "posix", # SHMB_KIND_POSIX
}

# The longest timeout the C calls take: an int of milliseconds.
TIMEOUT_MAX = (2**31 - 1) / 1000.0


def _library_path():
    path = os.environ.get("SHMBROKER_LIBRARY")
    if path:
        return path
    try:
        from . import _config
        return _config.LIBRARY
    except ImportError:
        pass
    return ctypes.util.find_library("shmbroker") or "libshmbroker.so"


LIBRARY = _library_path()

try:
    lib = ctypes.CDLL(LIBRARY, use_errno=False)
except OSError as e:
    raise ImportError("shmbroker: cannot load the C library %s (%s); "
                      "set SHMBROKER_LIBRARY to the path of libshmbroker.so.N" % (LIBRARY, e)) from None

# free(3) for the answers of shmb_request_json(); the process's own libc.
_libc = ctypes.CDLL(None)
free = _libc.free
free.argtypes = [ctypes.c_void_p]
free.restype = None

_p = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_int = ctypes.c_int
_uint = ctypes.c_uint
_size = ctypes.c_size_t
_ssize = ctypes.c_ssize_t
_str = ctypes.c_char_p

# name: (restype, argtypes); only these calls, none that may change shape.
_PROTOTYPES = {
    "shmb_connect": (_int, [_str, _pp]),
    "shmb_disconnect": (None, [_p]),
    "shmb_client_set_timeout": (_int, [_p, _int]),
    "shmb_request_json": (_int, [_p, _str, _pp]),
    "shmb_open_channel": (_int, [_str, _str, _int, _pp]),
    "shmb_close": (_int, [_p]),
    "shmb_channel_addr": (_p, [_p]),
    "shmb_channel_size": (_size, [_p]),
    "shmb_channel_nsems": (_uint, [_p]),
    "shmb_channel_kind": (_int, [_p]),
    "shmb_channel_slot_size": (_uint, [_p]),
    "shmb_channel_shm_name": (_str, [_p]),
    "shmb_channel_fd": (_int, [_p]),
    "shmb_channel_dropped": (_int, [_p, ctypes.POINTER(ctypes.c_uint64)]),
    "shmb_sem_wait": (_int, [_p, _uint, _int]),
    "shmb_sem_post": (_int, [_p, _uint]),
    "shmb_sem_trywait": (_int, [_p, _uint]),
    "shmb_lock": (_int, [_p, _uint, _int]),
    "shmb_unlock": (_int, [_p, _uint]),
    "shmb_send": (_int, [_p, _p, _size, _int]),
    "shmb_recv": (_ssize, [_p, _p, _size, _int]),
    "shmb_send_reserve": (_int, [_p, _size, _pp, _int]),
    "shmb_send_commit": (_int, [_p, _p, _size]),
    "shmb_send_abort": (_int, [_p, _p]),
    "shmb_recv_peek": (_ssize, [_p, _pp, _int]),
    "shmb_recv_release": (_int, [_p, _p]),
    "shmb_strerror": (_str, [_int]),
    "shmb_channel_get_client": (_p, [_p]),
    "shmb_client_process": (_int, [_p]),
    "shmb_errno_name": (_str, [_int]),
    "shmb_client_last_message": (_str, [_p]),
}

for _name, (_res, _args) in _PROTOTYPES.items():
    try:
        _f = getattr(lib, _name)
    except AttributeError:
        raise ImportError("shmbroker: %s has no %s(): not a libshmbroker this binding can use"
                          % (LIBRARY, _name)) from None
    _f.restype = _res
    _f.argtypes = _args


def strerror(err):
    """shmb_strerror() of a positive or negative errno, as str."""
    return lib.shmb_strerror(-abs(err)).decode("utf-8", "replace")


class WouldBlock(BlockingIOError, TimeoutError):
    """EAGAIN: a call with timeout 0 that would have to wait.

    A BlockingIOError, as OSError picks for EAGAIN, and a TimeoutError too:
    timeout 0 is a timeout that has passed at once.
    """


class InvalidArgument(OSError, ValueError):
    """EINVAL from the binding itself: an argument no call could take.

    An OSError with errno EINVAL, as every error of the library is, and a
    ValueError too, as Python's own functions raise for such a value (the
    standard library's io.UnsupportedOperation is both in the same way).
    """


def invalid(message):
    """The InvalidArgument saying message."""
    return InvalidArgument(errno.EINVAL, message)


def error(err, filename=None, message=None):
    """The OSError for a positive or negative errno, saying message (else its text).

    OSError() itself picks the subclass: FileNotFoundError for ENOENT,
    PermissionError for EACCES, BlockingIOError for EAGAIN, TimeoutError for
    ETIMEDOUT, and so on.
    """
    err = abs(err)
    cls = WouldBlock if err == errno.EAGAIN else OSError
    text = message or strerror(err)
    if filename is None:
        return cls(err, text)
    return cls(err, text, filename)


def check(r, filename=None):
    """r when it is not negative; raise its OSError otherwise."""
    if r < 0:
        raise error(r, filename)
    return r


def check_connect(r, filename=None):
    """check() for shmb_connect() and shmb_open_channel(), whose connection is gone: the broker's sentence, if any."""
    if r < 0:
        said = lib.shmb_client_last_message(None)
        raise error(r, filename, said.decode("utf-8", "replace") if said else None)
    return r


# The longest a wait goes without driving the reconnection (libshmbroker(3): "every second or so").
TICK_S = 1


def timeout_ms(timeout):
    """Seconds as Python's APIs take them to the C calls' milliseconds.

    None: -1 (wait for ever); 0: 0 (do not wait); otherwise rounded up, so
    a tiny positive timeout still waits a little instead of not at all.
    """
    if timeout is None:
        return -1
    try:
        if isinstance(timeout, (str, bytes, bytearray)):
            raise TypeError
        t = float(timeout)
    except (TypeError, ValueError):
        raise TypeError("timeout must be None or a number of seconds, not %s"
                        % type(timeout).__name__) from None
    if math.isnan(t) or t < 0:
        raise invalid("timeout must be None or a non-negative number of seconds")
    if t > TIMEOUT_MAX:
        raise OverflowError("timeout is too large (at most %g s)" % TIMEOUT_MAX)
    return math.ceil(t * 1000)


def waiting(call, timeout, channel=None, handle=None, slice_ms=TICK_S * 1000):
    """Run call(ms) for a timeout in seconds; its result, or raise.

    As PEP 475 has it for Python's own blocking calls: a wait that a signal
    interrupts is resumed with what is left of its timeout, after the
    signal's Python handler ran; if the handler raises, that exception ends
    the wait instead. With a channel, no C call waits longer than slice_ms
    (TICK_S), and channel._rejoin(handle)
    runs between them (the library's reconnection has no thread of its own;
    it acts at most once a second).
    """
    ms = timeout_ms(timeout)
    deadline = time.monotonic() + ms / 1000.0 if ms > 0 else None
    while True:
        sliced = channel is not None and (ms < 0 or ms > slice_ms)
        r = call(slice_ms if sliced else ms)
        if r >= 0:
            return r
        if r == -errno.ETIMEDOUT and sliced:
            channel._rejoin(handle)
            r = -errno.EINTR            # as after a signal: on with what is left
        if r != -errno.EINTR:
            raise error(r)
        # The loop's next round runs the Python signal handlers first.
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise error(errno.ETIMEDOUT)
            ms = max(1, math.ceil(left * 1000))
