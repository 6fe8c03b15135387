"""Open shmbroker shared-memory channels by name, from Python.

shmbrokerd owns named System V shared-memory channels; this package is the
Python face of its C client library, libshmbroker (see libshmbroker(3)),
through ctypes: no third-party modules.

    import shmbroker

    with shmbroker.open_channel("telemetry") as ch:     # "rw" by default
        with ch.locked(0):                              # semaphore 0 as a lock
            ch.buffer[:5] = b"hello"                    # the segment itself

    with shmbroker.open_channel("frames") as ring:      # a "ring" channel
        ring.send(b"message 1")
        data = ring.recv(timeout=10.0)                  # bytes

Broadcast channels (layout "broadcast", publish/subscribe) take the same
calls: an "rw" channel is a publisher (send, reserve), an "ro" one a
subscriber (recv, recv_into, peek, fileno), which receives every message
published after its open, in the order they were published. A subscriber's
peek() does not consume: the message stays its next until released. On a
channel with "overflow": "drop" a subscriber that falls `slots` behind loses
the oldest messages; .dropped counts them.

The socket: every call that takes socket=None uses $SHMBROKER_SOCKET when
set, else DEFAULT_SOCKET.

Channels (open_channel() returns a Channel)
    .buffer          the whole segment as a memoryview, writable for "rw",
                     read-only for "ro"; for a ring that is its header, as
                     shmb_channel_addr() (use send/recv)
    .sem_wait(i), .sem_post(i)      counting semaphores of the channel
    .lock(i), .unlock(i), .locked(i)  semaphore i as a lock that the kernel
                     gives back should its holder die (SEM_UNDO)
    .send(data), .recv(), .recv_into(buf)   messages on a ring
    .peek(), .reserve(size)         the same, zero copy: a message read or
                     written where it lies in the segment
    .fileno()        for select/poll/selectors: readable when the ring call
                     that last raised BlockingIOError may succeed
    .dropped         what a broadcast subscriber lost by falling behind
    .close()         or use the channel as a context manager

Admin: list() and status() return the daemon's description of its channels.

Broker restarts: a channel keeps working while the broker is away. Once it
is back, the channel's own calls (at most once a second) and its waits
(every second) register its hold again, as libshmbroker(3) describes under
BROKER RESTARTS; nothing else is needed. A wait also learns, within a
second, of objects an administrator removed while the broker was away
(EIDRM); a call with timeout 0 does not look, so a program that only polls
learns it by waiting now and then, or through fileno().

Timeouts are seconds (int or float), as in Python's own APIs: None waits for
ever, 0 does not wait at all, anything else waits at most that long
(rounded up to a millisecond; at most TIMEOUT_MAX). Where a call with
timeout 0 would have to wait it raises BlockingIOError, which is OSError
with errno EAGAIN (and also a TimeoutError: a timeout of 0 has passed at
once); a timeout that passes raises TimeoutError (OSError with ETIMEDOUT).
A signal does not end a wait: its Python handler runs and the wait goes on
with what is left of its timeout, unless the handler raises (Ctrl-C's
KeyboardInterrupt does), as PEP 475 has it for Python's own calls. A call
that such an exception ends keeps nothing it made: an interrupted
open_channel() gives its hold back, list() and status() close their
connection.

Errors raise OSError with the library's errno and its sentence
(shmb_strerror()); OSError picks the subclass, so catch what fits:
FileNotFoundError (ENOENT: no such channel, or no broker socket there),
PermissionError (EACCES), BlockingIOError (EAGAIN), TimeoutError
(ETIMEDOUT), or OSError and compare e.errno with the errno module's names:
errno.EIDRM (the broker removed the channel: open it again), errno.EMSGSIZE,
errno.ENOTSUP (a ring call on a raw channel), errno.EINVAL (a bad name or
semaphore index), errno.EXDEV (another IPC namespace than the broker's).
An argument no call could take (an access other than "rw" or "ro", a
null character in a name, a negative timeout or size) raises an OSError
with errno.EINVAL that is a ValueError too. Calls on a closed channel
raise ValueError, as files do. An error of
reaching the broker (its socket missing or refused, no answer) has the
socket's path as e.filename; open_channel()'s other errors, about the
channel, have its name.

Memory: no memoryview this package hands out ever points at memory that is
no longer mapped. A Channel maps its segment once; .buffer, .peek() and
.reserve() views are views of that mapping, and each keeps it mapped:
close() makes the channel unusable at once (its methods raise ValueError),
and the segment is detached and the broker's hold given back
(shmb_close()) when the channel is closed and the last view of it is gone
(or when the process ends). That holds for garbage in reference cycles
too: whatever __del__ methods the garbage collector calls (a
PeekedMessage's releases its message, an application's may read a view or
keep it), the handle is closed only after the collection, once nothing
refers to it any more. One exception: a view that an application's
__del__ kept during a collection keeps its channel, once dropped, until
the next collection or the next open or close of a channel (Python calls
a __del__ only once, so nothing else can tell when that view goes).
So a view kept after close() still reads (and, for "rw", writes) the
segment, and status() still lists the hold. Views of a message (peek(),
reserve()) are released when their message is released, committed or
aborted, so that nothing writes to a slot it no longer owns; a slice or
memoryview() taken of one is a view of its own, which then reads (or
writes) whatever the slot holds next: copy what you keep. Memory mapped
read-only ("ro") is exposed only through read-only views. (A view's .obj is
the ctypes array underneath; writing through that bypasses all this, and
on "ro" kills the process with SIGSEGV, as any misuse of ctypes may.)

Threads: every blocking call releases the GIL. A channel may be used from
several threads at once; close() while another thread waits in a call on
the same channel takes effect when that call returns.

Processes: do not use a channel inherited through fork(); open it anew in
the child (a ring's claims name their process). A forked child that drops
an inherited channel never gives its parent's hold back, nor does one that
drops (or leaves the with block of) an inherited reservation or peeked
message end its parent's claim: only its explicit commit(), abort() or
release() acts on it.

The C library: $SHMBROKER_LIBRARY names the libshmbroker.so.N to load when
set; otherwise the installed package loads the library it was installed
with (the path `make install` wrote into shmbroker._config); a source tree
without either asks ctypes.util.find_library("shmbroker").
"""

import atexit
import contextlib
import ctypes
import errno
import gc
import json
import operator
import os
import sys

from time import monotonic as _monotonic

from . import _capi
from ._capi import TIMEOUT_MAX

__all__ = ["open_channel", "list", "status", "Channel", "PeekedMessage", "Reservation",
           "DEFAULT_SOCKET", "TIMEOUT_MAX"]

DEFAULT_SOCKET = "/run/shmbroker/shmbroker.sock"

_lib = _capi.lib

# Counts os.fork()s into this process: an inherited channel is not ours to close.
_forks = [0]


def _count_fork():
    _forks[0] += 1


os.register_at_fork(after_in_child=_count_fork)


# When a channel's handle is closed (shmb_close(): the segment detached,
# the hold given back). Everything that may still use the handle holds its
# _Handle: the Channel, the mapped segment (and so every view of it), each
# PeekedMessage and Reservation, and a call in progress (in a local). So
# the handle must be closed only once nothing refers to its _Handle, and
# _Handle.__del__ is where that shows; but not every __del__ call means it:
#
# - Outside a garbage collection __del__ runs because the reference count
#   fell to zero: nothing refers to the _Handle, close at once.
# - In a collection the collector calls the __del__ of every object of the
#   cyclic garbage (and of what hangs off it) before it clears any of
#   them, in no set order (PEP 442). The _Handle's may come before a
#   PeekedMessage's or Reservation's __del__, which release through the
#   handle, or the application's own, which may read a view; and a __del__
#   may resurrect what it reaches (keep a view), the _Handle with it. So
#   there __del__ only puts the _Handle aside (which resurrects it), and
#   once the collection is over (gc.callbacks "stop") it is closed if
#   nothing but that list refers to it any more: every other __del__ has
#   run and the garbage is gone. One still referred to was resurrected
#   with what uses it, and is looked at again after each collection.
#
# Weak references would not do: the collector calls the callbacks of
# weakrefs to garbage (weakref.finalize) first of all, before any __del__
# of that garbage, and also for garbage that a __del__ then resurrects.
# At exit nothing is closed: the process's end detaches the segments and
# ends the holds, and a daemon thread may still be inside a call.
class _GCState:
    collecting = False      # between gc.callbacks "start" and "stop"
    exiting = False         # set by atexit: close nothing any more
    aside = []              # _Handles whose __del__ ran during a collection


def _close_unreferenced(state=_GCState):
    """Close the _Handles put aside that nothing else refers to; keep the others aside."""
    held = []
    # One at a time (list.pop() is atomic): a _Handle another thread puts
    # aside meanwhile is either taken here or stays for the next time, and
    # an exception (KeyboardInterrupt) loses none of those not looked at.
    while True:
        try:
            held.append(state.aside.pop())
        except IndexError:
            break
    held.append(object())           # held exactly as they are, and by nothing else
    unreferenced = sys.getrefcount(held[-1])
    try:
        # Each looked at where it is, as the marker: the same references, whatever the interpreter borrows.
        while len(held) > 1:
            if sys.getrefcount(held[0]) > unreferenced:
                state.aside.append(held.pop(0))     # resurrected: looked at again later
            else:
                held[0].close()
                del held[0]
    finally:
        del held[-1]
        state.aside.extend(held)    # an exception: the rest (a closed one is closed again as a no-op)


def _close_aside(state=_GCState):
    """Between collections: close what a collection set aside and no __del__ keeps any more."""
    if state.aside and not state.collecting and not state.exiting:
        _close_unreferenced()


def _gc_phase(phase, info, state=_GCState):
    state.collecting = phase == "start"
    _close_aside(state)


def _at_exit(state=_GCState):
    state.exiting = True


gc.callbacks.append(_gc_phase)
atexit.register(_at_exit)


class _Handle:
    """A shmb_channel handle (its connection is its own: shmb_open_channel()).

    ctypes passes it as the channel's pointer (_as_parameter_), NULL until
    the C call writes it in. Closed by close() or when it is garbage, as
    the comment above says; never in a forked child, whose copy is its
    parent's handle.
    """

    __slots__ = ("_as_parameter_", "_forks")

    def __init__(self):
        self._forks = _forks[0]
        self._as_parameter_ = ctypes.c_void_p()

    def close(self):
        ptr, self._as_parameter_ = self._as_parameter_, None
        if ptr is not None and ptr.value and self._forks == _forks[0]:
            _lib.shmb_close(ptr)

    def __del__(self, state=_GCState):
        if state.exiting or getattr(self, "_as_parameter_", None) is None:
            return
        if state.collecting:
            state.aside.append(self)
        else:
            self.close()


def _cstring(value, what):
    """A str, bytes or path-like argument as a C string; None stays NULL."""
    if value is None:
        return None
    b = os.fsencode(value)
    if b"\0" in b:
        raise _capi.invalid("%s contains a null character" % what)
    return b


def _index(i):
    """A semaphore index for the C calls: an int (TypeError otherwise), or OSError EINVAL, as out of range."""
    i = operator.index(i)
    # The C call takes an unsigned int: ctypes would wrap a negative one and
    # keep the low 32 bits of a larger one, naming another semaphore.
    if not 0 <= i <= 0xFFFFFFFF:
        raise _capi.error(errno.EINVAL)
    return i


def _bytes_arg(data):
    """(pointer argument, length) for a bytes-like object; str is refused."""
    if isinstance(data, bytes):
        return data, len(data)
    if isinstance(data, str):
        raise TypeError("a message is bytes-like, not str: encode it")
    mv = memoryview(data)
    if mv.readonly or not mv.c_contiguous:
        b = mv.tobytes()
        return b, len(b)
    if mv.nbytes == 0:
        return None, 0
    return (ctypes.c_char * mv.nbytes).from_buffer(mv), mv.nbytes


def _finish(r, exc_type):
    # Raise a failed release/commit/abort, unless an exception is already on its way.
    if r < 0 and exc_type is None:
        raise _capi.error(r)


class Channel:
    """An open shmbroker channel, its segment mapped.

    Channel(name, access="rw", socket=None) is open_channel(name, access,
    socket). Use it as a context manager, or call close().
    """

    __slots__ = ("_name", "_access", "_size", "_nsems", "_kind", "_shm_name", "_handle", "_addr", "_base",
                 "_rejoin_at", "_slot_size", "_recv_bufs")

    def __init__(self, name, access="rw", socket=None):
        """Open and map the channel: see open_channel()."""
        if access not in _capi.ACCESS:
            raise _capi.invalid('access must be "rw" or "ro", not %r' % (access,))
        if name is None:
            raise TypeError("a channel name is a str")
        c_socket, c_name = _cstring(socket, "socket"), _cstring(name, "name")
        # Made before the C call, which writes the handle into it: whatever
        # exception comes after the call returned (Ctrl-C's KeyboardInterrupt
        # is raised right there), it is owned and closed with it. One call,
        # hello and open in one round trip; which name an error is about is
        # told afterwards (_open_error_name()).
        _close_aside()
        handle = _Handle()
        r = _lib.shmb_open_channel(c_socket, c_name, _capi.ACCESS[access], ctypes.byref(handle._as_parameter_))
        if r < 0:
            _capi.check_connect(r, _open_error_name(-r, socket, name))
        self._name = name
        self._access = access
        self._size = _lib.shmb_channel_size(handle)
        self._nsems = _lib.shmb_channel_nsems(handle)
        self._kind = _capi.KINDS.get(_lib.shmb_channel_kind(handle), "sysv")
        self._slot_size = _lib.shmb_channel_slot_size(handle)
        self._recv_bufs = []
        shm_name = _lib.shmb_channel_shm_name(handle)
        self._shm_name = shm_name.decode() if shm_name is not None else None
        self._handle = handle
        self._rejoin_at = _monotonic() + _capi.TICK_S
        self._addr = _lib.shmb_channel_addr(handle)
        segment = (ctypes.c_char * self._size).from_address(self._addr)
        # The mapping lives as long as the array: every view below holds it,
        # and it holds the handle (see _Handle).
        segment._shmbroker_handle = self._handle
        base = memoryview(segment).cast("B")
        self._base = base.toreadonly() if access == "ro" else base

    def _live(self):
        """(handle, base), or ValueError once closed.

        Callers keep base in a local until their C call returned: while it
        lives, the segment cannot be garbage, so the handle is not closed
        under the call (by another thread's close()).
        """
        handle, base = self._handle, self._base
        if handle is None:
            raise ValueError("operation on a closed channel")
        if _monotonic() >= self._rejoin_at:
            self._rejoin(handle)
        return handle, base

    def _rejoin(self, handle):
        """Drive the library's reconnection, at most once a second.

        The C library has no thread: after a broker restart it registers the
        channel's hold again (and a ring's holder token) only when the
        program calls it. A Python program never sees that call, so the
        channel's own calls make it, and a long wait makes it between its
        slices (_capi.waiting()).
        """
        now = _monotonic()
        if now >= self._rejoin_at:
            self._rejoin_at = now + _capi.TICK_S
            _lib.shmb_client_process(_lib.shmb_channel_get_client(handle))

    @property
    def name(self):
        """The channel's name, as given to open_channel()."""
        return self._name

    @property
    def access(self):
        """Either "rw" or "ro", as given to open_channel()."""
        return self._access

    @property
    def size(self):
        """The segment's size in bytes (for a ring: its header and slots)."""
        return self._size

    @property
    def nsems(self):
        """How many semaphores the caller may use (for a ring: not the ring's own)."""
        return self._nsems

    @property
    def kind(self):
        """Either "sysv" (a System V segment and set) or "posix" (files in the broker's /dev/shm)."""
        return self._kind

    @property
    def shm_name(self):
        """A posix channel's segment name, as shm_open() takes it; None for a System V channel.

        The library maps the descriptor the broker handed over, never this
        name, which in another mount namespace may name another file.
        """
        return self._shm_name

    @property
    def closed(self):
        """True once close() was called."""
        return self._handle is None

    @property
    def buffer(self):
        """The whole segment as a memoryview of bytes (format "B").

        Writable for an "rw" channel, read-only for "ro". For a ring this is
        its header and slots, as shmb_channel_addr(): use send() and recv().
        A new view on each access; it keeps the segment mapped even after
        close() (see the module's help on memory).
        """
        _, base = self._live()
        return base[:]

    def fileno(self):
        """A file descriptor that polls readable when a ring call may succeed.

        As shmb_channel_fd(): readable when the ring call on this channel
        that last raised BlockingIOError (timeout 0) may now succeed: a
        receive when a message may be there, a send or reserve when a slot
        may be free; readable until the first BlockingIOError, and when the
        ring was removed. The loop: wait for it (selectors, select, poll),
        call with timeout=0 until BlockingIOError, wait again; a wake-up may
        be spurious. Watch it for reading only; do not read, write or close
        it: it is the channel's, and lives until the channel is detached,
        so unregister it before close(). On a broadcast channel a
        subscriber ("ro") waits for messages and a publisher (overflow
        "block") for room, the same way. Raises OSError (ENOTSUP for a raw
        channel, EACCES for an "ro" ring).
        """
        handle, base = self._live()
        return _capi.check(_lib.shmb_channel_fd(handle))

    @property
    def dropped(self):
        """How many messages this broadcast subscriber lost, as an int.

        As shmb_channel_dropped(): on a channel with "overflow": "drop", the
        messages a subscriber ("ro") missed because it fell `slots` behind
        the publishers, or because a message it held with peek() was
        overwritten (its release then raised OSError ESTALE). Counted since
        the open; it only grows. Always 0 for a publisher ("rw") and with
        "overflow": "block". OSError EOPNOTSUPP when the channel is not a
        broadcast channel; ValueError once closed.
        """
        handle, base = self._live()
        n = ctypes.c_uint64()
        _capi.check(_lib.shmb_channel_dropped(handle, ctypes.byref(n)))
        return n.value

    def close(self):
        """Close the channel: further calls on it raise ValueError.

        The segment is detached and the broker's hold given back at once,
        or, if views of the segment (buffer, peek, reserve) still exist, when
        the last of them is gone. Closing twice does nothing.
        """
        self._handle = None
        self._base = None
        _close_aside()

    def __enter__(self):
        """The channel itself (ValueError if closed)."""
        self._live()
        return self

    def __exit__(self, exc_type, exc, tb):
        """close() it."""
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "size=%d nsems=%d" % (self._size, self._nsems)
        return "<shmbroker.Channel %r %s %s>" % (self._name, self._access, state)

    # ---- semaphores ----

    def sem_wait(self, i, timeout=None):
        """Decrement semaphore i, waiting while it is 0.

        timeout: None waits for ever, 0 tries once (BlockingIOError), else
        seconds (TimeoutError). Without SEM_UNDO: a counting semaphore.
        OSError EINVAL for an index out of range, EIDRM once the channel is
        removed.
        """
        handle, base = self._live()
        i = _index(i)
        _capi.waiting(lambda ms: _lib.shmb_sem_wait(handle, i, ms), timeout, self, handle)

    def sem_post(self, i):
        """Increment semaphore i (OSError ERANGE above 32767, EACCES for "ro")."""
        handle, base = self._live()
        _capi.check(_lib.shmb_sem_post(handle, _index(i)))

    def lock(self, i=0, timeout=None):
        """Take semaphore i as a lock (decrement it, with SEM_UNDO).

        Should this process die holding it, the kernel (on a posix
        channel, the broker) gives it back. Pair each lock() with an
        unlock() in the same process. timeout as for sem_wait(). On a
        posix channel the lock is a word in semaphore i's file that names
        this connection's hold on the channel: any thread of it may
        unlock(); the broker gives the lock to the next locker when the
        holder's process dies or closes the channel (a close while the
        broker is away keeps it until the process exits). A writer of
        the channel's files can make the lock wait, fail (ENOTCONN: a ring's
        or broadcast channel's holder table is in its segment; a raw
        channel's is the broker's own read-only file) or be held twice,
        nothing more.
        """
        handle, base = self._live()
        i = _index(i)
        _capi.waiting(lambda ms: _lib.shmb_lock(handle, i, ms), timeout, self, handle)

    def unlock(self, i=0):
        """Give back a lock taken with lock(i)."""
        handle, base = self._live()
        _capi.check(_lib.shmb_unlock(handle, _index(i)))

    @contextlib.contextmanager
    def locked(self, i=0, timeout=None):
        """Hold lock i for a with block: lock(i, timeout), then unlock(i)."""
        self.lock(i, timeout)
        try:
            yield self
        finally:
            self.unlock(i)

    # ---- ring channels ----

    def send(self, data, timeout=None):
        """Send one message, a bytes-like object of at most the slot size.

        Waits while the ring is full: timeout None for ever, 0 not at all
        (BlockingIOError), else seconds (TimeoutError). A receiver sees all
        of it or nothing. OSError EMSGSIZE when it is longer than a slot,
        ENOTSUP on a raw channel, EACCES on "ro". An empty message is a
        message too (the examples use it to say "done"). On a broadcast
        channel this publishes: every subscriber gets it; with overflow
        "drop" it never waits.
        """
        handle, base = self._live()
        ptr, n = _bytes_arg(data)
        _capi.waiting(lambda ms: _lib.shmb_send(handle, ptr, n, ms), timeout, self, handle)

    def recv(self, timeout=None):
        """Receive the next message as bytes (b"" for an empty message).

        Waits while the ring is empty: timeout None for ever, 0 not at all
        (BlockingIOError), else seconds (TimeoutError). On a ring each
        message goes to one receiver; on a broadcast channel each "ro"
        subscriber gets every message (a publisher's recv() raises OSError
        EOPNOTSUPP). OSError ENOTSUP on a raw channel, EACCES on an "ro"
        ring, EIDRM once the channel is removed. A broadcast subscriber
        with overflow "drop" that fell behind goes on with the oldest
        message still there (dropped counts what it lost); threads that
        share a subscriber share its messages, each to one of them.
        """
        handle, base = self._live()
        # shmb_recv() into a slot's worth, never peek and release: a message
        # that a "drop" publisher overwrites meanwhile is skipped, not an
        # ESTALE, and a subscriber's peek would give another thread the
        # same message. Each call takes a buffer of its own from the pool
        # (list.pop() and append() are atomic): threads never share one.
        try:
            buf = self._recv_bufs.pop()
        except IndexError:
            buf = ctypes.create_string_buffer(max(1, self._slot_size))
        try:
            n = _capi.waiting(lambda ms: _lib.shmb_recv(handle, buf, len(buf), ms), timeout, self, handle)
            return ctypes.string_at(buf, n)
        finally:
            # Also after BlockingIOError: a loop that polls with timeout 0 takes it again.
            self._recv_bufs.append(buf)

    def recv_into(self, buffer, timeout=None):
        """Receive the next message into a writable bytes-like buffer.

        Returns its length. A message longer than the buffer stays in the
        ring (OSError EMSGSIZE): call again with a buffer of the slot size.
        Waits as recv() does.
        """
        handle, base = self._live()
        mv = memoryview(buffer)
        if mv.readonly:
            raise TypeError("recv_into() needs a writable buffer")
        size = mv.nbytes
        dest = (ctypes.c_char * size).from_buffer(mv) if size else None
        return _capi.waiting(lambda ms: _lib.shmb_recv(handle, dest, size, ms), timeout, self, handle)

    def peek(self, timeout=None):
        """Read the next message where it lies in the ring (zero copy).

        Waits as recv() does, then returns a PeekedMessage; the slot stays
        claimed until its release(). As a context manager it gives its
        read-only memoryview and releases the message at the end of the
        block:

            with ch.peek() as view:
                handle(view)        # bytes(view) copies

        Senders that come round to the slot wait meanwhile: release soon.
        On a broadcast channel the message stays this subscriber's next
        until released (peek again before that and it is the same message:
        hold one peek at a time per channel); with overflow "drop" it may be
        overwritten meanwhile, and release() then raises OSError ESTALE.
        """
        handle, base = self._live()
        # Filled in by the C call inside the try: an exception right after
        # it returned (Ctrl-C's KeyboardInterrupt) still releases the claim.
        ptr = ctypes.c_void_p()
        try:
            n = _capi.waiting(lambda ms: _lib.shmb_recv_peek(handle, ctypes.byref(ptr), ms), timeout, self, handle)
            off = ptr.value - self._addr
            if not 0 <= off <= off + n <= len(base):
                raise OSError(errno.EPROTO, "the library pointed outside the segment")
            return PeekedMessage(handle, base, ptr.value, base[off:off + n].toreadonly())
        except BaseException:
            if ptr.value:
                _lib.shmb_recv_release(handle, ptr)
            raise

    def reserve(self, size, timeout=None):
        """Claim a slot to write a message of up to size bytes in place.

        Waits as send() does for a free slot and returns a Reservation: fill
        its view (or index it as a buffer), then commit(n) sends its first n
        bytes; abort() gives the slot up unsent. As a context manager it
        aborts at the end of the block unless committed (also when the
        block raises):

            with ch.reserve(len(data)) as slot:
                slot[:len(data)] = data
                slot.commit(len(data))

        size is at most the slot size (OSError EMSGSIZE otherwise).
        Receivers wait at the slot until then: commit soon.
        """
        handle, base = self._live()
        size = operator.index(size)
        if size < 0:
            raise _capi.invalid("size must not be negative")
        if size > len(base):
            raise _capi.error(errno.EMSGSIZE)       # never fits; and past size_t ctypes would wrap it
        # As peek(): the claim is given up on any exception once the call made it.
        ptr = ctypes.c_void_p()
        try:
            _capi.waiting(lambda ms: _lib.shmb_send_reserve(handle, size, ctypes.byref(ptr), ms), timeout, self,
                          handle)
            off = ptr.value - self._addr
            if not 0 <= off <= off + size <= len(base):
                raise OSError(errno.EPROTO, "the library pointed outside the segment")
            return Reservation(handle, base, ptr.value, base[off:off + size])
        except BaseException:
            if ptr.value:
                _lib.shmb_send_abort(handle, ptr)
            raise


class PeekedMessage:
    """A message of a ring read in place: Channel.peek() makes them.

    view is a read-only memoryview of the message in the segment, valid
    until release(). As a context manager it returns view and releases the
    message when the block ends. Releasing frees the slot for senders and
    releases view (it then raises ValueError on use); a slice or memoryview
    taken of it stays usable but reads whatever the slot holds next. A
    message never released is released when this object is garbage.
    """

    __slots__ = ("_view", "_handle", "_base", "_ptr", "_forks")

    def __init__(self, handle, base, ptr, view):
        """Made by Channel.peek(), not by hand."""
        self._forks = _forks[0]
        self._view = view
        self._handle = handle
        self._base = base       # keeps the segment mapped until released
        self._ptr = ptr

    @property
    def view(self):
        """The message: a read-only memoryview into its slot, until release()."""
        return self._view

    def __len__(self):
        """The message's length in bytes."""
        return self._view.nbytes

    def release(self):
        """Free the message's slot and release view. Again: does nothing.

        OSError ENOTCONN when the broker counted this process gone and took
        the claim back: what was read may have been overwritten, discard it.
        OSError ESTALE (broadcast, overflow "drop"): publishers overwrote
        the message while it was held; discard what was read (the channel's
        dropped counts it).
        """
        self._release(None)

    def _release(self, exc_type, implicit=False):
        handle, self._handle = self._handle, None
        # Kept until the C call returned: it may be what keeps the handle open.
        base, self._base = self._base, None
        if handle is None:
            return
        try:
            self._view.release()
        except BufferError:
            pass            # exported (e.g. to ctypes): it will read the next message
        # A forked child's copy, dropped or left at a block's end: the claim is the parent's.
        if implicit and self._forks != _forks[0]:
            return
        _finish(_lib.shmb_recv_release(handle, self._ptr), exc_type)

    def __enter__(self):
        """view."""
        return self._view

    def __exit__(self, exc_type, exc, tb):
        """release() it (its errors only when the block raised none)."""
        self._release(exc_type, implicit=True)

    def __del__(self):
        try:
            self._release(BaseException, implicit=True)
        except Exception:
            pass

    def __repr__(self):
        if self._handle is None:
            return "<shmbroker.PeekedMessage released>"
        return "<shmbroker.PeekedMessage %d bytes>" % self._view.nbytes


class Reservation:
    """A slot of a ring claimed for a message written in place.

    Channel.reserve() makes them. view is a writable memoryview of the
    reserved size; a Reservation also takes indexing and slice assignment
    (slot[0:3] = b"abc") and len(). commit(n) sends the first n bytes,
    abort() gives the slot up; either releases view. As a context manager
    it returns itself and aborts at the end of the block unless committed.
    A reservation never finished is aborted when this object is garbage.
    Do not keep slices of view past the commit: they write into a slot
    that is no longer yours.
    """

    __slots__ = ("_view", "_handle", "_base", "_ptr", "_forks")

    def __init__(self, handle, base, ptr, view):
        """Made by Channel.reserve(), not by hand."""
        self._forks = _forks[0]
        self._view = view
        self._handle = handle
        self._base = base       # keeps the segment mapped until finished
        self._ptr = ptr

    @property
    def view(self):
        """The reserved room: a writable memoryview into the slot, until commit or abort."""
        return self._view

    def _take(self):
        """(handle, base) of a pending reservation, now finished; (None, None) after.

        The caller keeps base until its C call returned: it may be the last
        reference that keeps the channel's handle open.
        """
        handle, self._handle = self._handle, None
        base, self._base = self._base, None
        if handle is not None:
            try:
                self._view.release()
            except BufferError:
                pass
        return handle, base

    def commit(self, n=None):
        """Send the first n bytes of view (all of it by default) as one message.

        OSError ENOTCONN when the broker counted this process gone and took
        the slot back: the message is lost, reserve again. ValueError when
        already committed or aborted, or n is out of range.
        """
        if self._handle is None:
            raise ValueError("the reservation was already committed or aborted")
        size = self._view.nbytes
        n = size if n is None else operator.index(n)
        if not 0 <= n <= size:
            raise _capi.invalid("n must be between 0 and %d" % size)
        handle, base = self._take()
        _capi.check(_lib.shmb_send_commit(handle, self._ptr, n))

    def abort(self):
        """Give the slot up: no receiver sees it. After commit or abort: nothing."""
        self._abort(None)

    def _abort(self, exc_type, implicit=False):
        handle, base = self._take()
        # A forked child's copy, dropped or left at a block's end: the slot is the parent's.
        if handle is not None and not (implicit and self._forks != _forks[0]):
            _finish(_lib.shmb_send_abort(handle, self._ptr), exc_type)

    @property
    def done(self):
        """True once committed or aborted."""
        return self._handle is None

    def __len__(self):
        """The reserved size in bytes."""
        return self._view.nbytes

    def __getitem__(self, key):
        """view[key]."""
        return self._view[key]

    def __setitem__(self, key, value):
        """view[key] = value."""
        self._view[key] = value

    def __enter__(self):
        """The reservation itself."""
        return self

    def __exit__(self, exc_type, exc, tb):
        """abort() unless committed (its errors only when the block raised none)."""
        self._abort(exc_type, implicit=True)

    def __del__(self):
        try:
            self._abort(BaseException, implicit=True)
        except Exception:
            pass

    def __repr__(self):
        if self._handle is None:
            return "<shmbroker.Reservation done>"
        return "<shmbroker.Reservation %d bytes>" % self._view.nbytes


def open_channel(name, access="rw", socket=None):
    """Open the channel called name and map its segment; returns a Channel.

    access: "rw" (read and write) or "ro" (the segment is mapped read-only;
    semaphore posts and ring calls raise PermissionError). socket: the
    broker's socket path; None for $SHMBROKER_SOCKET, else DEFAULT_SOCKET.
    The channel holds its own connection to the broker, so the broker lists
    the hold until close() (see Channel.close) or the process's exit.

    Raises FileNotFoundError (no such channel, or no socket at that path),
    PermissionError (its owner, group and mode do not allow this access),
    OSError EINVAL (a bad name), EXDEV (the broker runs in another IPC
    namespace), ECONNREFUSED (no broker listening), ETIMEDOUT (a broker
    that does not answer within 5 s). e.filename tells which: the socket's
    path for the errors of reaching the broker (so a FileNotFoundError
    with the path is a missing socket), else the channel's name.
    """
    return Channel(name, access, socket)


def _socket_path(socket):
    """The path the library connects to for socket (None: $SHMBROKER_SOCKET, else the default)."""
    if socket is None:
        return os.environ.get("SHMBROKER_SOCKET") or DEFAULT_SOCKET
    return os.fspath(socket)


# Errors of an exchange with the broker, not of what it was asked.
_CONNECTION_ERRORS = frozenset((errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                                errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN, errno.EPROTO, errno.ENAMETOOLONG))


def _open_error_name(err, socket, name):
    """The filename for open_channel()'s error err: the socket's path when it is about reaching the broker."""
    path = _socket_path(socket)
    if err in _CONNECTION_ERRORS or not path:
        return path
    # No such channel, or no socket there; no right to the channel, or none to the socket (connect needs write).
    if err == errno.ENOENT and not os.path.exists(path):
        return path
    if err == errno.EACCES and not os.access(path, os.W_OK):
        return path
    return name


def _request(request, socket):
    """Send one raw request on a connection of its own; the answer as a dict."""
    c_socket, line = _cstring(socket, "socket"), json.dumps(request).encode()
    # Both filled in by the C calls inside the try: an exception right after
    # either returned (Ctrl-C's KeyboardInterrupt) still frees what it made.
    client = ctypes.c_void_p()
    answer = ctypes.c_void_p()
    try:
        _capi.check_connect(_lib.shmb_connect(c_socket, ctypes.byref(client)), _socket_path(socket))
        _capi.check(_lib.shmb_request_json(client, line, ctypes.byref(answer)), _socket_path(socket))
        text = ctypes.string_at(answer.value)
    finally:
        try:
            if answer.value:
                _capi.free(answer)
        finally:
            if client.value:
                _lib.shmb_disconnect(client)
    try:
        result = json.loads(text)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise OSError(errno.EPROTO, "the broker's answer is not a JSON object")
    if result.get("ok") is not True:
        name = result.get("error")
        message = result.get("message") or "the broker refused the request"
        code = getattr(errno, name, None) if isinstance(name, str) and name.startswith("E") else None
        if not isinstance(code, int):
            raise OSError(errno.EPROTO, "%s (%s)" % (message, name))
        raise OSError(code, message)
    return result


def _channels(answer):
    """The "channels" list of a list or status answer: OSError EPROTO unless it is a list of objects."""
    channels = answer.get("channels")
    if not isinstance(channels, type([])) or not all(isinstance(c, dict) for c in channels):
        raise OSError(errno.EPROTO, "the broker's answer has no list of channel objects")
    return channels


def list(socket=None):
    """Every channel of the broker, as a list of dicts (its "list" answer).

    One dict per channel, the daemon's JSON object as it sent it:
    name, kind ("sysv" or "posix"), size, nsems, layout, owner, group,
    mode (an octal string), for System V channels shm_key, shm_id,
    sem_key and sem_id, for posix channels shm_name and sem_names instead,
    and for rings slot_size and slots.
    socket as for open_channel(). Raises OSError as open_channel() does for
    the connection. (Inside this package's namespace this shadows the
    built-in list: call it as shmbroker.list().)
    """
    return _channels(_request({"op": "list"}, socket))


def status(name=None, socket=None):
    """The status of one channel or of all, as a list of dicts.

    The daemon's "status" answer: its "channels" list, with one dict (for
    name) or one per channel (name None), each as list() gives plus the
    kernel's figures: nattch, cpid, lpid, atime, dtime, ctime, semaphores
    (a list of {value, ncount, zcount, pid}; a posix channel has no segment
    figures and its semaphores a value only: the others are absent) and clients (one
    {pid, uid, access, since} per hold). A list even for one name, so that
    both calls return the same shape. Raises FileNotFoundError for an
    unknown name, OSError with the errno of the daemon's "error" for other
    refusals (its "message" is the text).
    """
    request = {"op": "status"}
    if name is not None:
        request["channel"] = name
    return _channels(_request(request, socket))

