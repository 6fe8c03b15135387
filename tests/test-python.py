#!/usr/bin/env python3
"""End-to-end tests of the Python binding (python/shmbroker).

As the C end-to-end tests do (tests/helpers.c): each test gets a private IPC
namespace (unshare(CLONE_NEWIPC) through ctypes, as os.unshare() is 3.12+),
a scratch directory and the real shmbrokerd on a generated config, ready
once it sent READY=1 to our NOTIFY_SOCKET, stopped with SIGTERM at the end
(it must exit 0). Each test has a time limit (SIGALRM). Other processes:
os.fork() children, and the C and Python examples as programs.

make check runs it through tests/python-env.sh, which points it at this
build ($SHMBROKER_LIBRARY, $SHMBROKERD, ...). Exit 77 (SKIP) where IPC
namespaces cannot be made (not root).
"""

import ctypes
import errno
import gc
import hashlib
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

import shmbroker

SHMBROKERD = os.environ.get("SHMBROKERD", "daemon/shmbrokerd")
C_EXAMPLES = os.environ.get("SHMBROKER_C_EXAMPLES", "examples")
PY_EXAMPLES = os.environ.get("SHMBROKER_PY_EXAMPLES",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "python"))

CASE_TIMEOUT = 60           # seconds, per test
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
CLONE_NEWIPC = 0x08000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
NOBODY = 65534

libc = ctypes.CDLL(None, use_errno=True)
run_dir = None              # one per run, removed at its end

CHANNELS = [
    {"name": "counter", "size": 4096},
    {"name": "pair", "size": 65536, "semaphores": [1, 0]},
    {"name": "ring", "layout": "ring", "slot_size": 256, "slots": 8},
    {"name": "ring2", "layout": "ring", "slot_size": 256, "slots": 8},
    {"name": "small", "layout": "ring", "slot_size": 16, "slots": 2},
    {"name": "secret", "size": 4096, "mode": "0600"},
    {"name": "news", "layout": "broadcast", "slot_size": 256, "slots": 8, "subscribers": 4},
    {"name": "feed", "layout": "broadcast", "slot_size": 256, "slots": 8, "subscribers": 4,
     "overflow": "drop"},
    {"name": "pposix", "kind": "posix", "size": 4096, "semaphores": [1, 0]},
]
BCAST_SLOTS = 8
NAMES = {c["name"] for c in CHANNELS}


class TestTimeout(BaseException):
    """A test ran out of time (BaseException: no assertRaises(OSError) takes it)."""


def on_alarm(signum, frame):
    raise TestTimeout("the test took longer than %d s" % CASE_TIMEOUT)


def can_unshare():
    pid = os.fork()
    if pid == 0:
        os._exit(0 if libc.unshare(CLONE_NEWIPC) == 0 else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def in_child(fn, *args):
    """Run fn(*args) in a forked child; its exit status (0: returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def messages(n):
    return [b"message %d" % i for i in range(1, n + 1)]


def bcast_message(i):
    """Message i of a broadcast run: its number, then 0..240 bytes that depend on it."""
    filler = hashlib.sha256(b"%d" % i).digest() * 8
    return b"%06d:" % i + filler[:i * 37 % 241]


def checksum(msgs):
    """A digest of messages in order, each with its length (so no two runs collide by splitting)."""
    h = hashlib.sha256()
    for m in msgs:
        h.update(len(m).to_bytes(4, "little"))
        h.update(m)
    return h.hexdigest()


# A broadcast subscriber in a process of its own (the system python3 that
# runs the tests, with this environment): opens CHANNEL "ro", says
# "subscribed", receives N messages (recv, or peek: zero copy, its view
# checked and released at the end of each with block), and prints the count,
# the checksum, whether a message more was there, and its dropped count.
SUBSCRIBER = r"""
import hashlib, sys, shmbroker
name, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with shmbroker.open_channel(name, "ro") as ch:
    print("subscribed", flush=True)
    h = hashlib.sha256()
    for i in range(1, n + 1):
        if how == "peek":
            with ch.peek(timeout=30) as view:
                if not (isinstance(view, memoryview) and view.readonly and view.obj is ch.buffer.obj):
                    sys.exit("message %d: not a read-only view into the segment" % i)
                data = bytes(view)
            try:
                view[0]
                sys.exit("message %d: the view was not released at the end of the with block" % i)
            except ValueError:
                pass
        else:
            data = ch.recv(timeout=30)
        if not data.startswith(b"%06d:" % i):
            sys.exit("message %d: got %r" % (i, data[:16]))
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
    try:
        ch.recv(timeout=0)
        extra = "more"
    except BlockingIOError:
        extra = "nomore"
    print(n, h.hexdigest(), extra, ch.dropped, flush=True)
"""

# A broadcast publisher in a process of its own: opens CHANNEL "rw", says
# "ready", then publishes each line it reads (without its newline) and says
# "sent"; exits at the end of its input.
PUBLISHER = r"""
import sys, shmbroker
with shmbroker.open_channel(sys.argv[1], "rw") as ch:
    print("ready", flush=True)
    for line in sys.stdin:
        ch.send(line.rstrip("\n").encode(), timeout=30)
        print("sent", flush=True)
"""


def python_child(script, *args, stdin=None):
    """sys.executable running script with args, its stdout a pipe (text), killed should we die."""
    return subprocess.Popen([sys.executable, "-c", script] + [str(a) for a in args],
                            stdin=stdin, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL))


class Daemon:
    """shmbrokerd on a generated config in dir, as tests/helpers.c starts it."""

    def __init__(self, directory, channels):
        self.dir = directory
        self.config = os.path.join(directory, "shmbroker.json")
        self.socket = os.path.join(directory, "shmbroker.sock")
        self.log = os.path.join(directory, "daemon.log")
        self.proc = None
        with open(self.config, "w") as f:
            json.dump({"version": 1, "socket": self.socket, "channels": channels}, f)

    def start(self):
        notify_path = os.path.join(self.dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            env.pop("RUNTIME_DIRECTORY", None)
            with open(self.log, "ab") as log:
                # The daemon must not outlive a test process that dies.
                self.proc = subprocess.Popen([SHMBROKERD, "-c", self.config], stderr=log, env=env,
                                             preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL))
            deadline = time.monotonic() + START_TIMEOUT
            notify.settimeout(0.02)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError("shmbrokerd exited (%d) before READY=1:\n%s"
                                         % (self.proc.returncode, self.read_log()))
                try:
                    if b"READY=1" in notify.recv(4096):
                        return
                except socket.timeout:
                    pass
            raise AssertionError("shmbrokerd sent no READY=1 within %g s" % START_TIMEOUT)
        finally:
            notify.close()

    def read_log(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop_ok(self):
        """SIGTERM (unless sent already) and a clean exit, or fail with the log."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("shmbrokerd still running %g s after SIGTERM" % STOP_TIMEOUT)
        if proc.returncode != 0:
            raise AssertionError("shmbrokerd exited %d on SIGTERM; its log:\n%s"
                                 % (proc.returncode, self.read_log()[-2000:]))

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class BrokerTest(unittest.TestCase):
    """The fixture: a time limit, a private IPC namespace, a running daemon."""

    def setUp(self):
        # Cleanups run last first: the test's channels are closed, then the daemon stopped.
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(CASE_TIMEOUT)
        self.addCleanup(signal.alarm, 0)
        if libc.unshare(CLONE_NEWIPC) != 0:
            self.fail("unshare(CLONE_NEWIPC): %s" % os.strerror(ctypes.get_errno()))
        # A /dev/shm of the test's own, for the posix channel's files: the host's never sees them.
        if (libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0 or
                libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", 0, b"mode=1777") != 0):
            self.fail("a mount namespace with its own /dev/shm: %s" % os.strerror(ctypes.get_errno()))
        self.dir = tempfile.mkdtemp(dir=run_dir)
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        os.chmod(self.dir, 0o755)        # dropped-privilege children reach the socket
        self.daemon = Daemon(self.dir, CHANNELS)
        self.addCleanup(self.daemon.kill)
        self.daemon.start()
        self.addCleanup(self.stop_daemon)
        os.environ["SHMBROKER_SOCKET"] = self.daemon.socket

    def stop_daemon(self):
        gc.collect()                    # channels the test dropped give their holds back
        self.daemon.stop_ok()

    def open(self, name, access="rw"):
        ch = shmbroker.open_channel(name, access)
        self.addCleanup(ch.close)
        return ch

    def holds(self, name):
        """(pid, access) of each hold the broker lists for channel name."""
        return sorted((c["pid"], c["access"]) for c in shmbroker.status(name)[0]["clients"])

    def assertChild(self, fn, *args):
        self.assertEqual(in_child(fn, *args), 0, "the child failed (its traceback is above)")


class TestRaw(BrokerTest):

    def test_buffer_rw_and_ro(self):
        rw = self.open("pair")
        ro = self.open("pair", "ro")
        self.assertEqual((rw.name, rw.access, rw.size, rw.nsems), ("pair", "rw", 65536, 2))
        self.assertEqual(ro.access, "ro")
        buf = rw.buffer
        self.assertIsInstance(buf, memoryview)
        self.assertEqual((len(buf), buf.format, buf.readonly), (65536, "B", False))
        buf[:5] = b"hello"
        buf[65535] = 0xab
        view = ro.buffer
        self.assertTrue(view.readonly)
        self.assertEqual(bytes(view[:5]), b"hello")
        self.assertEqual(view[-1], 0xab)
        with self.assertRaises(TypeError):
            view[0] = 1
        with self.assertRaises(TypeError):
            view[:1] = b"x"

        def other_process():
            with shmbroker.open_channel("pair", "ro") as ch:
                assert bytes(ch.buffer[:5]) == b"hello", bytes(ch.buffer[:5])
        self.assertChild(other_process)

    def test_posix_channel(self):
        rw = self.open("pposix")
        ro = self.open("pposix", "ro")
        self.assertEqual((rw.kind, rw.shm_name, rw.size, rw.nsems), ("posix", "/shmbroker.pposix", 4096, 2))
        self.assertEqual((self.open("pair").kind, self.open("pair").shm_name), ("sysv", None))
        rw.buffer[:5] = b"hello"
        self.assertEqual(bytes(ro.buffer[:5]), b"hello")
        self.assertTrue(ro.buffer.readonly)
        rw.sem_wait(0, timeout=0)
        with self.assertRaises(OSError) as cm:
            ro.sem_post(1)
        self.assertEqual(cm.exception.errno, errno.EACCES)
        rw.sem_post(1)
        entry = {c["name"]: c for c in shmbroker.list()}["pposix"]
        self.assertEqual((entry["kind"], entry["shm_name"]), ("posix", "/shmbroker.pposix"))
        self.assertNotIn("shm_id", entry)
        status = shmbroker.status("pposix")[0]
        self.assertEqual([s["value"] for s in status["semaphores"]], [0, 1])
        self.assertNotIn("ncount", status["semaphores"][0])
        self.assertNotIn("nattch", status)

    def test_removed_channel_semaphores_raise_eidrm(self):
        """SPEC: once a channel is removed every semaphore call on it fails with EIDRM, on either kind.

        An unlock by the lock's holder too: on System V the set is gone; a
        posix channel's lock must not say otherwise.
        """
        channels = [self.open(name) for name in ("pair", "pposix")]
        for ch in channels:
            ch.lock(0, timeout=0)
        self.daemon.stop_ok()
        for ch in channels:
            for call in (lambda: ch.unlock(0), lambda: ch.unlock(0), lambda: ch.lock(0, timeout=0),
                         lambda: ch.sem_post(1), lambda: ch.sem_wait(1, timeout=0.01)):
                with self.assertRaises(OSError) as cm:
                    call()
                self.assertEqual(cm.exception.errno, errno.EIDRM, ch.kind)

    def test_semaphores_across_processes(self):
        # As the raw example pair: semaphore 0 "may write" (1), 1 "may read" (0).
        ch = self.open("pair")

        def peer():
            with shmbroker.open_channel("pair") as c:
                c.sem_wait(1, timeout=5)
                assert bytes(c.buffer[:4]) == b"ping"
                c.buffer[:4] = b"pong"
                c.sem_post(0)
        ch.sem_wait(0, timeout=5)
        ch.buffer[:4] = b"ping"
        ch.sem_post(1)
        self.assertChild(peer)
        ch.sem_wait(0, timeout=5)
        self.assertEqual(bytes(ch.buffer[:4]), b"pong")
        self.assertEqual([s["value"] for s in shmbroker.status("pair")[0]["semaphores"]], [0, 0])

    def test_lock_across_processes(self):
        ch = self.open("pair")

        def try_lock(expect_taken):
            with shmbroker.open_channel("pair") as c:
                if expect_taken:
                    try:
                        c.lock(0, timeout=0)
                    except BlockingIOError:
                        return
                    raise AssertionError("took a lock that another process holds")
                c.lock(0, timeout=0)
                # Exit holding it: SEM_UNDO gives it back.
                os._exit(0)
        ch.lock(0)
        self.assertChild(try_lock, True)
        ch.unlock(0)
        self.assertChild(try_lock, False)
        ch.lock(0, timeout=5)       # the dead holder's lock came back
        ch.unlock(0)
        with ch.locked(0, timeout=1):
            self.assertChild(try_lock, True)
        self.assertChild(try_lock, False)

    def test_signal_ends_the_c_wait_of_a_posix_lock(self):
        # A posix channel's lock waits on a futex word, which a signal
        # interrupts as it does System V's semop(): the C call itself says
        # EINTR, so the Python handler runs at once, not at the end of the
        # binding's slice (a second). Signals come every 20 ms until a C
        # call returned (the library waits in 50 ms slices: one that comes
        # between two is only seen at the next); the holder lets go after.
        # The C calls' results are recorded, not timed: the first must say
        # EINTR, not that its slice ran out.
        ch = self.open("pposix")
        held, release = threading.Event(), threading.Event()
        main = threading.get_ident()
        lib = shmbroker._capi.lib
        real = lib.shmb_lock
        results, caught = [], []

        def lock(handle, i, ms):
            r = real(handle, i, ms)
            if threading.get_ident() == main:
                results.append(r)
                release.set()
            return r
        lib.shmb_lock = lock
        self.addCleanup(setattr, lib, "shmb_lock", real)

        def holder():                   # the same handle's hold: the main thread's lock(0) waits for it
            ch.lock(0)
            held.set()
            release.wait(CASE_TIMEOUT)
            ch.unlock(0)

        def signaller():
            while not release.wait(0.02):
                signal.pthread_kill(main, signal.SIGUSR1)
        old = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
        threads = [threading.Thread(target=holder), threading.Thread(target=signaller)]
        threads[0].start()
        try:
            held.wait(CASE_TIMEOUT)
            threads[1].start()
            ch.lock(0)                  # PEP 475: the handler returns, and the wait goes on
            ch.unlock(0)
        finally:
            release.set()
            for t in threads:
                if t.ident is not None:
                    t.join()
            signal.signal(signal.SIGUSR1, old)
        self.assertTrue(caught, "no signal came")
        self.assertEqual(results[0], -errno.EINTR, "the C calls said %r" % results)
        self.assertEqual(results[-1], 0)

class TestRing(BrokerTest):

    def test_send_recv(self):
        ring = self.open("ring")
        for data in (b"bytes", bytearray(b"bytearray"), memoryview(b"xmemoryviewx")[1:-1],
                     b"", b"\0" * 256, memoryview(bytearray(b"abcdef"))[::2]):
            ring.send(data)
        self.assertEqual([ring.recv() for _ in range(6)],
                         [b"bytes", b"bytearray", b"memoryview", b"", b"\0" * 256, b"ace"])
        with self.assertRaises(TypeError):
            ring.send("a str")
        with self.assertRaises(OSError) as cm:
            ring.send(b"x" * 257)
        self.assertEqual(cm.exception.errno, errno.EMSGSIZE)

        def other_process():
            with shmbroker.open_channel("ring") as c:
                c.send(b"from the child", timeout=5)
        self.assertChild(other_process)
        self.assertEqual(ring.recv(timeout=5), b"from the child")

    def test_recv_into(self):
        ring = self.open("ring")
        ring.send(b"0123456789")
        small = bytearray(4)
        with self.assertRaises(OSError) as cm:
            ring.recv_into(small, timeout=0)
        self.assertEqual(cm.exception.errno, errno.EMSGSIZE)
        buf = bytearray(256)
        self.assertEqual(ring.recv_into(buf, timeout=0), 10)    # it stayed in the ring
        self.assertEqual(bytes(buf[:10]), b"0123456789")
        with self.assertRaises(TypeError):
            ring.recv_into(b"read-only")

    def test_peek(self):
        ring = self.open("ring")
        ring.send(b"first")
        ring.send(b"second")
        with ring.peek() as view:
            self.assertIsInstance(view, memoryview)
            self.assertTrue(view.readonly)
            self.assertEqual(bytes(view), b"first")
            with self.assertRaises(TypeError):
                view[0] = 1
            kept = view[1:3]
        with self.assertRaises(ValueError):
            view[0]                   # released with its message
        bytes(kept)                   # a kept slice still reads mapped memory (the slot's next content)
        msg = ring.peek(timeout=0)
        self.assertEqual((len(msg), bytes(msg.view)), (6, b"second"))
        msg.release()
        msg.release()                 # again: nothing
        with self.assertRaises(BlockingIOError):
            ring.peek(timeout=0)

    def test_peek_frees_its_slot(self):
        small = self.open("small")
        small.send(b"1", timeout=0)
        small.send(b"2", timeout=0)
        with self.assertRaises(BlockingIOError):
            small.send(b"3", timeout=0)
        with small.peek(timeout=0) as view:
            self.assertEqual(bytes(view), b"1")
        small.send(b"3", timeout=0)
        msg = small.peek(timeout=0)   # dropped unreleased: released when garbage
        self.assertEqual(bytes(msg.view), b"2")
        del msg
        gc.collect()
        small.send(b"4", timeout=0)
        self.assertEqual([small.recv(0), small.recv(0)], [b"3", b"4"])

    def test_reserve(self):
        ring = self.open("ring")
        with ring.reserve(16) as slot:
            self.assertEqual(len(slot), 16)
            self.assertFalse(slot.view.readonly)
            slot[:5] = b"hello"
            slot.commit(5)
            self.assertTrue(slot.done)
            with self.assertRaises(ValueError):
                slot.view[0]            # released at the commit
            with self.assertRaises(ValueError):
                slot.commit(5)
        self.assertEqual(ring.recv(timeout=0), b"hello")

        with ring.reserve(8) as slot:
            slot.view[:] = b"abcdefgh"
            slot.commit()               # all of it
        self.assertEqual(ring.recv(timeout=0), b"abcdefgh")

        with ring.reserve(8) as slot:
            slot[0] = 0x41              # no commit: aborted at the end
        with self.assertRaises(BlockingIOError):
            ring.recv(timeout=0)

        with self.assertRaises(RuntimeError):
            with ring.reserve(8) as slot:
                slot[:2] = b"no"
                raise RuntimeError("the block fails")
        self.assertTrue(slot.done)
        with self.assertRaises(BlockingIOError):
            ring.recv(timeout=0)

        slot = ring.reserve(4)
        with self.assertRaises(ValueError):
            slot.commit(5)
        slot.abort()
        slot.abort()                    # again: nothing
        with self.assertRaises(OSError) as cm:
            ring.reserve(257)
        self.assertEqual(cm.exception.errno, errno.EMSGSIZE)

        small = self.open("small")     # a reservation dropped unfinished is aborted
        slot = small.reserve(1)
        del slot
        gc.collect()
        small.send(b"a", timeout=0)
        small.send(b"b", timeout=0)

    def test_timeouts(self):
        ring = self.open("ring")
        with self.assertRaises(BlockingIOError) as cm:
            ring.recv(timeout=0)
        self.assertIsInstance(cm.exception, OSError)
        self.assertEqual(cm.exception.errno, errno.EAGAIN)
        start = time.monotonic()
        with self.assertRaises(TimeoutError) as cm:
            ring.recv(timeout=0.1)
        elapsed = time.monotonic() - start
        self.assertEqual(cm.exception.errno, errno.ETIMEDOUT)
        self.assertTrue(0.09 <= elapsed < 3, elapsed)
        with self.assertRaises(BlockingIOError):
            ring.peek(timeout=0)

        small = self.open("small")
        small.send(b"1", timeout=0)
        small.send(b"2", timeout=0.5)
        with self.assertRaises(BlockingIOError):
            small.send(b"3", timeout=0)
        with self.assertRaises(TimeoutError):
            small.send(b"3", timeout=0.1)
        with self.assertRaises(BlockingIOError):
            small.reserve(1, timeout=0)
        with self.assertRaises(TimeoutError):
            small.reserve(1, timeout=0.05)

        pair = self.open("pair")
        with self.assertRaises(BlockingIOError):
            pair.sem_wait(1, timeout=0)
        with self.assertRaises(TimeoutError):
            pair.sem_wait(1, timeout=0.1)
        pair.lock(0, timeout=0)
        with self.assertRaises(BlockingIOError):
            pair.lock(0, timeout=0)
        with self.assertRaises(TimeoutError):
            pair.lock(0, timeout=0.05)
        pair.unlock(0)

        with self.assertRaises(OSError) as cm:
            ring.recv(timeout=-1)
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        self.assertIsInstance(cm.exception, ValueError)
        with self.assertRaises(ValueError):
            ring.recv(timeout=float("nan"))
        with self.assertRaises(TypeError):
            ring.recv(timeout="1")
        with self.assertRaises(OverflowError):
            ring.recv(timeout=shmbroker.TIMEOUT_MAX * 2)
        ring.send(b"x")
        self.assertEqual(ring.recv(timeout=1e-6), b"x")   # rounded up, not down to "do not wait"

    def test_zero_timeout_is_a_timeout_error(self):
        # The binding promises: "None waits forever, 0 does not wait; a
        # timeout raises TimeoutError". BlockingIOError (EAGAIN) as README has
        # it, and a TimeoutError as promised: both at once.
        ring = self.open("ring")
        pair = self.open("pair")
        for call in (lambda: ring.recv(timeout=0), lambda: ring.peek(timeout=0),
                     lambda: pair.sem_wait(1, timeout=0)):
            with self.assertRaises(TimeoutError) as cm:
                call()
            self.assertIsInstance(cm.exception, BlockingIOError)

    def test_signals_do_not_end_a_wait(self):
        # PEP 475: a handler that returns lets the wait go on; one that raises ends it.
        ring = self.open("ring")
        main = threading.get_ident()
        caught = []

        class Interrupted(Exception):
            pass

        def handler(signum, frame):
            caught.append(signum)
            if len(caught) == 2:
                raise Interrupted()
        old = signal.signal(signal.SIGUSR1, handler)
        try:
            threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1)).start()
            threading.Timer(0.4, ring.send, (b"after the signal",)).start()
            start = time.monotonic()
            self.assertEqual(ring.recv(timeout=10), b"after the signal")
            self.assertEqual(caught, [signal.SIGUSR1])
            self.assertGreaterEqual(time.monotonic() - start, 0.35)

            threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1)).start()
            with self.assertRaises(Interrupted):
                ring.recv()             # for ever, but for the handler
            self.assertEqual(len(caught), 2)
        finally:
            signal.signal(signal.SIGUSR1, old)

    def test_selectors_loop_over_two_rings(self):
        # Two C senders, one selector loop receiving from both, as examples/poll-receiver.c.
        rings = {name: self.open(name) for name in ("ring", "ring2")}
        got = {name: [] for name in rings}
        sel = selectors.DefaultSelector()
        for name, ch in rings.items():
            sel.register(ch.fileno(), selectors.EVENT_READ, name)
        senders = [subprocess.Popen([os.path.join(C_EXAMPLES, "ring-sender"), name, "30"]) for name in rings]
        try:
            left = set(rings)
            while left:
                events = sel.select(timeout=10)
                self.assertTrue(events, "nothing to receive for 10 s")
                for key, _ in events:
                    name = key.data
                    ch = rings[name]
                    while True:         # until BlockingIOError, then wait again
                        try:
                            msg = ch.recv(timeout=0)
                        except BlockingIOError:
                            break
                        if not msg:
                            sel.unregister(ch.fileno())
                            left.discard(name)
                            break
                        got[name].append(msg)
        finally:
            sel.close()
            for p in senders:
                self.assertEqual(p.wait(10), 0)
        self.assertEqual(got, {name: messages(30) for name in rings})

        pair = self.open("pair")
        with self.assertRaises(OSError) as cm:
            pair.fileno()               # not a ring
        self.assertEqual(cm.exception.errno, errno.ENOTSUP)
        with self.assertRaises(PermissionError):
            self.open("ring", "ro").fileno()

    def test_removed_channel(self):
        ring = self.open("ring")
        threading.Timer(0.2, self.daemon.signal, (signal.SIGTERM,)).start()
        with self.assertRaises(OSError) as cm:
            ring.recv(timeout=20)
        self.assertEqual(cm.exception.errno, errno.EIDRM)
        with self.assertRaises(OSError) as cm:
            ring.send(b"x")
        self.assertEqual(cm.exception.errno, errno.EIDRM)

    def test_removal_reaches_every_blocked_wait(self):
        """SPEC: callers already blocked when the channel is removed get EIDRM within 100 ms.

        The binding waits in slices and retries an interrupted wait
        (_capi.waiting()): none of that may turn a removal into a wait
        that goes on. One wait of each kind, each in a thread of its own;
        the limit is generous (1 s) and the figures are printed.
        """
        ring, pair, pposix = self.open("ring"), self.open("pair"), self.open("pposix")
        sub = self.open("news", "ro")
        pposix.lock(0)                  # held here: the thread's lock(0) waits (the same hold)

        def give_back():
            # After the stop the unlock still gives the lock back, and says the channel is gone.
            try:
                pposix.unlock(0)
            except OSError as e:
                if e.errno != errno.EIDRM:
                    raise
        self.addCleanup(give_back)

        def event_loop():
            fd = sub.fileno()
            while True:
                try:
                    sub.recv(timeout=0)
                except BlockingIOError:
                    if not select.select([fd], [], [], 10)[0]:
                        raise AssertionError("the subscriber's descriptor stayed quiet for 10 s")

        waits = {
            "ring.recv(None)": lambda: ring.recv(),
            "pair.sem_wait(1)": lambda: pair.sem_wait(1),
            "pair.lock(1)": lambda: pair.lock(1),
            "pposix.sem_wait(1)": lambda: pposix.sem_wait(1),
            "pposix.lock(0)": lambda: pposix.lock(0),
            "news fileno() in select": event_loop,
        }
        outcome = {}

        def run(name, fn):
            try:
                fn()
                outcome[name] = ("returned", time.monotonic())
            except OSError as e:
                outcome[name] = (e.errno, time.monotonic())

        threads = [threading.Thread(target=run, args=item, daemon=True) for item in waits.items()]
        for t in threads:
            t.start()
        # Into their waits: each thread asleep at five looks in a row, 20 ms
        # apart, while this one sleeps too (one waiting for the GIL gets it).
        asleep, deadline = 0, time.monotonic() + 10
        while asleep < 5:
            self.assertLess(time.monotonic(), deadline, "the waits never all slept")
            time.sleep(0.02)
            asleep = asleep + 1 if all(thread_sleeps(t.native_id) for t in threads) else 0
        self.assertEqual(outcome, {})   # none can end before the stop
        since = time.monotonic()
        self.daemon.stop_ok()
        for t in threads:
            t.join(5)
        for name in waits:
            self.assertIn(name, outcome, "%s still waits 5 s after the stop" % name)
            err, when = outcome[name]
            sys.stderr.write("removal: %s ended with %s after %d ms\n"
                             % (name, errno.errorcode.get(err, err), (when - since) * 1000))
            self.assertEqual(err, errno.EIDRM, name)
            self.assertLess(when - since, 1.0, name)


def thread_sleeps(tid):
    """Whether thread tid of this process is asleep (state S in /proc)."""
    with open("/proc/self/task/%d/stat" % tid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


class TestBroadcast(BrokerTest):

    def reap(self, procs):
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            if p.stdin:
                p.stdin.close()

    def test_two_subscribers_get_every_message(self):
        # Two subscriber processes (one copies, one peeks in place), one
        # publisher (here; send and reserve in turn): each subscriber gets
        # all N, in order, nothing more. N is many laps of the 8 slots, so
        # the publisher ("overflow": "block") waits for the slower one.
        n = 40 * BCAST_SLOTS
        subs = [python_child(SUBSCRIBER, "news", n, how) for how in ("recv", "peek")]
        self.addCleanup(self.reap, subs)
        for p in subs:
            self.assertEqual(p.stdout.readline(), "subscribed\n")
        self.assertEqual(sorted(c["access"] for c in shmbroker.status("news")[0]["clients"]), ["ro", "ro"])
        sent = [bcast_message(i) for i in range(1, n + 1)]
        with shmbroker.open_channel("news") as pub:
            for i, m in enumerate(sent):
                if i % 2:
                    with pub.reserve(len(m), timeout=30) as slot:
                        slot[:] = m
                        slot.commit()
                else:
                    pub.send(m, timeout=30)
            self.assertEqual(pub.dropped, 0)
        expected = "%d %s nomore 0" % (n, checksum(sent))
        for p in subs:
            out = p.stdout.read()
            self.assertEqual(p.wait(30), 0, out)
            self.assertEqual(out.strip(), expected)

    def test_peek_in_place_and_roles(self):
        pub = self.open("news")
        sub = self.open("news", "ro")
        pub.send(b"first")
        with pub.reserve(6) as slot:
            slot[:] = b"second"
            slot.commit()
        with sub.peek(timeout=0) as view:
            self.assertIsInstance(view, memoryview)
            self.assertTrue(view.readonly)
            self.assertIs(view.obj, sub.buffer.obj)     # in the mapped segment: no copy
            self.assertEqual(bytes(view), b"first")
            with self.assertRaises(TypeError):
                view[0] = 1
        with self.assertRaises(ValueError):
            view[0]                     # released with its message
        self.assertEqual(sub.recv(timeout=0), b"second")  # the release consumed the first
        with self.assertRaises(BlockingIOError):
            sub.peek(timeout=0)
        # A subscriber does not publish; a publisher does not receive.
        with self.assertRaises(PermissionError):
            sub.send(b"x")
        with self.assertRaises(PermissionError):
            sub.reserve(1)
        for call in (lambda: pub.recv(timeout=0), lambda: pub.peek(timeout=0)):
            with self.assertRaises(OSError) as cm:
                call()
            self.assertEqual(cm.exception.errno, errno.EOPNOTSUPP)

    def test_lagging_drop_subscriber_counts_what_it_lost(self):
        pub = self.open("feed")
        lag = self.open("feed", "ro")
        self.assertEqual(lag.dropped, 0)
        n = 3 * BCAST_SLOTS
        for i in range(1, n + 1):
            pub.send(b"%d" % i, timeout=0)      # "drop": a publisher never waits
        # It fell behind: the newest SLOTS are there, the rest counted lost.
        got = [lag.recv(timeout=0) for _ in range(BCAST_SLOTS)]
        self.assertEqual(got, [b"%d" % i for i in range(n - BCAST_SLOTS + 1, n + 1)])
        with self.assertRaises(BlockingIOError):
            lag.recv(timeout=0)
        self.assertEqual(lag.dropped, n - BCAST_SLOTS)
        self.assertEqual(pub.dropped, 0)
        # Keeping up, it loses nothing more.
        pub.send(b"next", timeout=0)
        self.assertEqual(lag.recv(timeout=0), b"next")
        self.assertEqual(lag.dropped, n - BCAST_SLOTS)
        # A peeked message overwritten before its release: ESTALE, and one more lost.
        pub.send(b"held", timeout=0)
        with self.assertRaises(OSError) as cm:
            with lag.peek(timeout=0) as view:
                self.assertEqual(bytes(view), b"held")
                for i in range(BCAST_SLOTS):
                    pub.send(b"over %d" % i, timeout=0)
        self.assertEqual(cm.exception.errno, errno.ESTALE)
        self.assertEqual(lag.dropped, n - BCAST_SLOTS + 1)
        self.assertEqual([lag.recv(timeout=0) for _ in range(BCAST_SLOTS)],
                         [b"over %d" % i for i in range(BCAST_SLOTS)])
        # Other layouts have no such count.
        for name in ("pair", "ring"):
            with self.assertRaises(OSError) as cm:
                self.open(name).dropped
            self.assertEqual(cm.exception.errno, errno.EOPNOTSUPP)
        lag.close()
        with self.assertRaises(ValueError):
            lag.dropped

    def test_subscriber_fileno_with_selectors(self):
        # The publisher is another process that stays alive until the end:
        # a holder's exit wakes the fd too, which would hide a missing wake-up.
        sub = self.open("news", "ro")
        sel = selectors.DefaultSelector()
        self.addCleanup(sel.close)
        key = sel.register(sub.fileno(), selectors.EVENT_READ)
        pub = python_child(PUBLISHER, "news", stdin=subprocess.PIPE)
        self.addCleanup(self.reap, [pub])
        self.assertEqual(pub.stdout.readline(), "ready\n")

        def publish(text):
            pub.stdin.write(text + "\n")
            pub.stdin.flush()
            self.assertEqual(pub.stdout.readline(), "sent\n")

        def nothing_more():
            with self.assertRaises(BlockingIOError):
                sub.recv(timeout=0)
            # Not before: nothing published since that BlockingIOError.
            self.assertEqual(sel.select(timeout=0), [])

        nothing_more()
        publish("one")
        self.assertEqual([k for k, _ in sel.select(timeout=30)], [key])
        self.assertEqual(sub.recv(timeout=0), b"one")
        nothing_more()
        publish("two")
        publish("three")
        self.assertEqual([k for k, _ in sel.select(timeout=30)], [key])
        with sub.peek(timeout=0) as view:
            self.assertEqual(bytes(view), b"two")
        self.assertEqual(sub.recv(timeout=0), b"three")
        nothing_more()
        pub.stdin.close()
        self.assertEqual(pub.wait(30), 0)
        sel.unregister(key.fd)


class TestBroadcastRecv(BrokerTest):
    """recv() on a subscriber is libshmbroker's shmb_recv(): it never fails for a message it may skip.

    Another publisher (or another thread of the subscriber) is made to run
    in the middle of recv(), at the C library's release of a peeked
    message, if recv() goes that way; each must still return a message.
    """

    def during_release(self, action):
        lib = shmbroker._capi.lib
        real = lib.shmb_recv_release
        armed = [True]

        def release(handle, ptr):
            if armed[0]:
                armed[0] = False
                action()
            return real(handle, ptr)
        lib.shmb_recv_release = release
        self.addCleanup(setattr, lib, "shmb_recv_release", real)
        return armed

    def test_drop_subscriber_recv_skips_what_was_overwritten(self):
        # libshmbroker(3): a drop subscriber "goes on with the oldest still
        # there"; a message overwritten while recv() copied it is skipped and
        # counted, never an error (ESTALE is for a peek the caller held).
        pub = self.open("feed")
        sub = self.open("feed", "ro")
        pub.send(b"old", timeout=0)
        newer = [b"new %d" % i for i in range(BCAST_SLOTS + 1)]
        publish = lambda: [pub.send(m, timeout=0) for m in newer]
        pending = self.during_release(publish)
        got = sub.recv(timeout=0)
        self.assertIn(got, [b"old"] + newer)
        if pending[0]:                  # recv() did not go through a release: the publisher's turn now
            pending[0] = False
            publish()
        rest = []
        while True:
            try:
                rest.append(sub.recv(timeout=0))
            except BlockingIOError:
                break
        self.assertEqual(sub.dropped + 1 + len(rest), 1 + len(newer), "every message received or counted lost")

    def test_threads_sharing_a_subscriber_share_its_messages(self):
        # libshmbroker(3): threads that share one subscriber take messages
        # with shmb_recv(), each message to one of them; the package: a
        # channel may be used from several threads at once. The second recv()
        # stands for another thread's, run between the first one's peek and
        # release if recv() takes that way.
        pub = self.open("news")
        sub = self.open("news", "ro")
        pub.send(b"one", timeout=0)
        pub.send(b"two", timeout=0)
        other = []
        pending = self.during_release(lambda: other.append(sub.recv(timeout=0)))
        first = sub.recv(timeout=0)
        if pending[0]:                  # recv() did not go through a release: the other thread's turn now
            other.append(sub.recv(timeout=0))
        self.assertEqual(sorted(other + [first]), [b"one", b"two"])
        with self.assertRaises(BlockingIOError):
            sub.recv(timeout=0)


class TestErrors(BrokerTest):

    def test_unknown_channel(self):
        with self.assertRaises(OSError) as cm:
            shmbroker.open_channel("nope")
        self.assertIsInstance(cm.exception, FileNotFoundError)
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertEqual(cm.exception.filename, "nope")
        # The broker's sentence, not only the errno's text.
        self.assertIn("no channel named", cm.exception.strerror)
        with self.assertRaises(FileNotFoundError) as cm:
            shmbroker.open_channel("pair", socket=os.path.join(self.dir, "no.sock"))
        self.assertNotIn("no channel named", cm.exception.strerror)

    def test_connection_errors_name_the_socket(self):
        # OSError.filename says what was not found: the channel for the
        # channel's errors, the socket's path for the broker's.
        missing = os.path.join(self.dir, "no.sock")
        for call in (lambda: shmbroker.open_channel("pair", socket=missing),
                     lambda: shmbroker.list(socket=missing), lambda: shmbroker.status("pair", socket=missing)):
            with self.assertRaises(FileNotFoundError) as cm:
                call()
            self.assertEqual(cm.exception.filename, missing)
        os.environ["SHMBROKER_SOCKET"] = missing    # socket=None: the path the library tried
        self.addCleanup(os.environ.__setitem__, "SHMBROKER_SOCKET", self.daemon.socket)
        for call in (lambda: shmbroker.open_channel("pair"), shmbroker.list):
            with self.assertRaises(FileNotFoundError) as cm:
                call()
            self.assertEqual(cm.exception.filename, missing)
        os.environ["SHMBROKER_SOCKET"] = self.daemon.socket
        with self.assertRaises(FileNotFoundError) as cm:
            shmbroker.open_channel("nope")
        self.assertEqual(cm.exception.filename, "nope")
        self.assertEqual(self.holds("pair"), [])


    def test_refused_without_rights(self):
        def unprivileged():
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            for name, access in (("secret", "ro"), ("counter", "rw"), ("counter", "ro")):
                try:
                    shmbroker.open_channel(name, access)
                except PermissionError as e:
                    assert e.errno == errno.EACCES and e.filename == name, e
                else:
                    raise AssertionError("nobody opened %s %s" % (name, access))
        self.assertChild(unprivileged)

    def test_socket_in_a_directory_without_search_names_the_socket(self):
        # The module's help: "An error of reaching the broker (its socket
        # missing or refused, no answer) has the socket's path as
        # e.filename". A socket behind a directory the user may not search
        # refuses the connect with EACCES: that is the socket's, not the
        # channel's (os.path.exists() says False there, as stat fails too).
        private = os.path.join(self.dir, "private")
        os.mkdir(private, 0o700)
        sock = os.path.join(private, "broker.sock")
        os.symlink(self.daemon.socket, sock)

        def unprivileged():
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                shmbroker.open_channel("pair", socket=sock)
            except PermissionError as e:
                assert e.filename == sock, "EACCES of the socket names %r" % (e.filename,)
            else:
                raise AssertionError("nobody connected through a 0700 directory")
        self.assertChild(unprivileged)

    def test_bad_arguments(self):
        with self.assertRaises(OSError) as cm:
            shmbroker.open_channel("bad name")
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        # An argument no call could take: an OSError with EINVAL, as every error (and a ValueError, as Python's).
        for bad in (lambda: shmbroker.open_channel("pair", "wr"), lambda: shmbroker.open_channel("pair\0ring")):
            with self.assertRaises(OSError) as cm:
                bad()
            self.assertEqual(cm.exception.errno, errno.EINVAL)
            self.assertIsInstance(cm.exception, ValueError)
        with self.assertRaises(TypeError):
            shmbroker.open_channel(None)
        pair = self.open("pair")
        with self.assertRaises(OSError) as cm:
            pair.send(b"x")
        self.assertEqual(cm.exception.errno, errno.ENOTSUP)
        with self.assertRaises(OSError) as cm:
            pair.sem_post(2)
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        # The module's help: errno.EINVAL for a bad semaphore index, negative ones too.
        for call in (lambda: pair.sem_post(-1), lambda: pair.sem_wait(-1, timeout=0), lambda: pair.lock(-1, 0),
                     lambda: pair.unlock(-2)):
            with self.assertRaises(OSError) as cm:
                call()
            self.assertEqual(cm.exception.errno, errno.EINVAL)
        with self.assertRaises(TypeError):
            pair.sem_post(1.0)
        with self.assertRaises(PermissionError):
            self.open("pair", "ro").sem_post(0)
        with self.assertRaises(PermissionError):
            self.open("ring", "ro").send(b"x")


    def test_semaphore_index_beyond_unsigned_is_refused(self):
        # An index that does not fit the C call's unsigned int must be refused,
        # not cut to its low 32 bits (2**32 + 1 would be semaphore 1).
        pair = self.open("pair")                    # semaphores [1, 0]
        for call in (lambda: pair.sem_post(2**32 + 1), lambda: pair.sem_wait(2**32, timeout=0),
                     lambda: pair.lock(2**32, timeout=0), lambda: pair.unlock(2**32 + 1)):
            with self.assertRaises(OSError) as cm:
                call()
            self.assertEqual(cm.exception.errno, errno.EINVAL)
        self.assertEqual([s["value"] for s in shmbroker.status("pair")[0]["semaphores"]], [1, 0])

    def test_reserve_size_beyond_size_t_is_emsgsize(self):
        ring = self.open("ring")
        with self.assertRaises((OSError, OverflowError)) as cm:
            ring.reserve(2**64, timeout=0)
        if isinstance(cm.exception, OSError) and not isinstance(cm.exception, OverflowError):
            self.assertEqual(cm.exception.errno, errno.EMSGSIZE)


class TestMalformedAnswers(unittest.TestCase):
    """A broker that answers list with something else than a list of channels: OSError EPROTO, never KeyError."""

    def serve(self, answer):
        # Answers hello as a broker does, then every other line with answer.
        directory = tempfile.mkdtemp(prefix="shmbroker-fake-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "fake.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(4)
        self.addCleanup(server.close)

        def run():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    reply = b'{"ok":true,"version":1,"server":"fake"}' if b'"hello"' in line else answer
                    conn.sendall(reply + b"\n")
        threading.Thread(target=run, daemon=True).start()
        return path

    def setUp(self):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(CASE_TIMEOUT)
        self.addCleanup(signal.alarm, 0)

    def test_answers_without_a_channel_list(self):
        for call in (shmbroker.list, shmbroker.status):
            for answer in (b'{"ok":true}', b'{"ok":true,"channels":5}', b'{"ok":true,"channels":[1]}'):
                with self.subTest(call=call.__name__, answer=answer):
                    with self.assertRaises(OSError) as cm:
                        call(socket=self.serve(answer))
                    self.assertEqual(cm.exception.errno, errno.EPROTO)


class TestAdmin(BrokerTest):

    def test_list(self):
        channels = shmbroker.list()
        self.assertIsInstance(channels, list)
        self.assertEqual({c["name"] for c in channels}, NAMES)
        by_name = {c["name"]: c for c in channels}
        self.assertIsInstance(by_name["pair"], dict)
        self.assertEqual((by_name["pair"]["size"], by_name["pair"]["layout"], by_name["pair"]["mode"]),
                         (65536, "raw", "0660"))
        self.assertEqual((by_name["ring"]["layout"], by_name["ring"]["slot_size"], by_name["ring"]["slots"]),
                         ("ring", 256, 8))
        self.assertEqual(by_name["secret"]["mode"], "0600")
        self.assertEqual({c["name"] for c in shmbroker.list(socket=self.daemon.socket)}, NAMES)
        with self.assertRaises(FileNotFoundError):
            shmbroker.list(socket=os.path.join(self.dir, "no.sock"))

    def test_status(self):
        rw = self.open("pair")
        ro = self.open("pair", "ro")
        pair = shmbroker.status("pair")
        self.assertEqual(len(pair), 1)
        entry = pair[0]
        self.assertEqual(entry["name"], "pair")
        self.assertEqual([s["value"] for s in entry["semaphores"]], [1, 0])
        self.assertEqual(entry["nattch"], 3)        # the daemon's, rw's and ro's
        # The access values the binding passes are the library's: the broker saw each as asked.
        self.assertEqual(self.holds("pair"), [(os.getpid(), "ro"), (os.getpid(), "rw")])
        self.assertEqual({c["name"] for c in shmbroker.status()}, NAMES)
        with self.assertRaises(FileNotFoundError) as cm:
            shmbroker.status("nope")
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertIn("nope", cm.exception.strerror)
        with self.assertRaises(OSError) as cm:
            shmbroker.status("bad name")
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        rw.close()
        ro.close()
        self.assertEqual(self.holds("pair"), [])


class TestClose(BrokerTest):

    def test_closed_channel_refuses(self):
        ch = shmbroker.open_channel("pair")
        self.assertFalse(ch.closed)
        ch.close()
        self.assertTrue(ch.closed)
        self.assertIn("closed", repr(ch))
        for call in (lambda: ch.buffer, ch.fileno, lambda: ch.sem_post(0), lambda: ch.sem_wait(0, 0),
                     lambda: ch.lock(), lambda: ch.unlock(), lambda: ch.send(b""), lambda: ch.recv(0),
                     lambda: ch.peek(0), lambda: ch.reserve(1, 0), lambda: ch.recv_into(bytearray(1))):
            with self.assertRaises(ValueError):
                call()
        ch.close()                      # again: nothing
        with self.assertRaises(ValueError):
            with ch:
                pass
        self.assertEqual(self.holds("pair"), [])

        with shmbroker.open_channel("pair") as ch:
            self.assertEqual(self.holds("pair"), [(os.getpid(), "rw")])
        self.assertTrue(ch.closed)
        self.assertEqual(self.holds("pair"), [])

    def test_views_keep_the_mapping(self):
        ch = shmbroker.open_channel("pair")
        view = ch.buffer
        view[:3] = b"abc"
        ch.close()
        # Closed, but the view is still there: still mapped, still held.
        self.assertEqual(bytes(view[:3]), b"abc")
        view[:3] = b"xyz"
        self.assertEqual(shmbroker.status("pair")[0]["nattch"], 2)
        self.assertEqual(self.holds("pair"), [(os.getpid(), "rw")])
        part = view[1:2]
        del view
        gc.collect()
        self.assertEqual(bytes(part), b"y")   # a slice holds it as well
        del part
        gc.collect()
        self.assertEqual(shmbroker.status("pair")[0]["nattch"], 1)    # detached
        self.assertEqual(self.holds("pair"), [])
        with self.open("pair", "ro") as again:
            self.assertEqual(bytes(again.buffer[:3]), b"xyz")

        ring = shmbroker.open_channel("ring")
        slot = ring.reserve(5)
        ring.close()
        slot[:] = b"later"              # the reservation keeps the ring mapped and its handle open
        slot.commit()
        del slot
        gc.collect()
        self.assertEqual(self.holds("ring"), [])
        self.assertEqual(self.open("ring").recv(timeout=0), b"later")

    def test_close_while_another_thread_waits(self):
        ring = shmbroker.open_channel("ring")
        got = []
        waiter = threading.Thread(target=lambda: got.append(ring.recv(timeout=20)))
        waiter.start()
        time.sleep(0.2)
        ring.close()                    # the waiting call keeps the handle until it returns
        gc.collect()
        self.assertEqual(self.holds("ring"), [(os.getpid(), "rw")])
        with shmbroker.open_channel("ring") as sender:
            sender.send(b"wake up")
        waiter.join(20)
        self.assertEqual(got, [b"wake up"])
        del waiter
        gc.collect()
        self.assertEqual(self.holds("ring"), [])

    def test_garbage_channel_is_closed(self):
        ch = shmbroker.open_channel("pair")
        self.assertEqual(self.holds("pair"), [(os.getpid(), "rw")])
        del ch
        gc.collect()
        self.assertEqual(self.holds("pair"), [])
        self.assertEqual(shmbroker.status("pair")[0]["nattch"], 1)

    def test_forked_child_keeps_its_parents_hold(self):
        # The child's copy of the channel becomes garbage there: that must not
        # give back the parent's hold over the connection they share.
        box = [shmbroker.open_channel("pair")]
        pid = os.getpid()

        def child():
            box.clear()
            gc.collect()
            assert shmbroker.status("pair")[0]["clients"], "the child gave its parent's hold back"
        self.assertChild(child)
        self.assertEqual(self.holds("pair"), [(pid, "rw")])
        box[0].sem_post(1)
        self.assertEqual(shmbroker.status("pair")[0]["semaphores"][1]["value"], 1)
        box[0].close()

    def test_forked_child_keeps_its_parents_claims(self):
        # The child's copies of a reservation and of a peeked message end a
        # with block and become garbage there (as at its interpreter's exit):
        # that must not abort the parent's reservation nor release the
        # parent's peek, which live in the segment they share.
        tx = self.open("ring")
        rx = self.open("ring")
        tx.send(b"first")
        box = [tx.reserve(8), rx.peek(timeout=0)]

        def child():
            with box[0], box[1]:
                pass
            box.clear()
            gc.collect()
        self.assertChild(child)
        res, peeked = box
        res[:4] = b"mine"
        res.commit(4)                   # not EINVAL: the slot is still the parent's
        self.assertEqual(bytes(peeked.view), b"first")
        peeked.release()                # not EINVAL: the claim is still the parent's
        self.assertEqual(rx.recv(timeout=0), b"mine")


def own_holds(name):
    """The holds this process has on channel name, as the broker lists them."""
    return [c["access"] for c in shmbroker.status(name)[0]["clients"] if c["pid"] == os.getpid()]


class ViewKeeper:
    """In a cycle of its own; its __del__ keeps its view (in ViewKeeper.kept), resurrecting it."""

    def __init__(self, view):
        self.view = view
        self.me = self

    def __del__(self):
        ViewKeeper.kept = self.view


def keep_a_view_past_a_collection():
    """Open "pair", write b"abcd", close it with its only view in a ViewKeeper's cycle, collect: the view kept, the hold too."""
    with shmbroker.open_channel("pair") as ch:
        ch.buffer[:4] = b"abcd"
        ViewKeeper(ch.buffer)
    gc.collect()
    assert own_holds("pair") == ["rw"], own_holds("pair")


class TestGarbageCycles(BrokerTest):
    """Channels, views, peeks and reservations that only the cyclic garbage collector frees.

    The collector calls the weakref callbacks of garbage before any __del__
    of the same garbage, and those __del__ methods (PeekedMessage's,
    Reservation's, the application's own) in no set order: none may find
    the handle closed or the segment unmapped. Each case runs in a forked
    child, so that a crash (SIGSEGV) fails the case, not the whole run; the
    child checks that the claim and the hold were given back all the same.
    """

    def assertSurvives(self, fn):
        self.assertEqual(in_child(fn), 0, "the child failed or crashed (a negative status is its signal)")

    def assertSlotsFree(self, name, slots):
        # Every slot can take a message: no claim was left behind.
        with shmbroker.open_channel(name) as ring:
            for i in range(slots):
                ring.send(b"%d" % i, timeout=0)

    def test_peeked_message_in_a_cycle_with_its_closed_channel(self):
        def child():
            ring = shmbroker.open_channel("ring")
            ring.send(b"hello")
            box = {"msg": ring.peek(timeout=0)}
            box["self"] = box           # a cycle: only the collector frees it
            ring.close()
            del box, ring
            gc.collect()                # PeekedMessage.__del__ releases on a handle still open
            assert own_holds("ring") == [], own_holds("ring")
            self.assertSlotsFree("ring", 8)
        self.assertSurvives(child)

    def test_reservation_in_a_cycle_with_its_channel(self):
        def child():
            ring = shmbroker.open_channel("ring")
            box = {"slot": ring.reserve(5, timeout=0), "ring": ring}
            box["self"] = box
            del box, ring               # not even closed: the channel is garbage too
            gc.collect()
            assert own_holds("ring") == [], own_holds("ring")
            self.assertSlotsFree("ring", 8)
        self.assertSurvives(child)

    def test_view_read_by_a_finalizer_in_the_same_cycle(self):
        # "no memoryview this package hands out ever points at memory that is no longer mapped"
        class Holder:
            def __init__(self, view):
                self.view = view
                self.me = self

            def __del__(self):
                Holder.last = bytes(self.view[:4])

        def child():
            with shmbroker.open_channel("pair") as ch:
                ch.buffer[:4] = b"abcd"
                Holder(ch.buffer)
            gc.collect()
            assert Holder.last == b"abcd", Holder.last
            assert own_holds("pair") == [], own_holds("pair")
        self.assertSurvives(child)

    def test_view_kept_by_a_finalizer_in_the_same_cycle(self):
        # A __del__ may resurrect what it reaches: the view it keeps stays mapped.
        def child():
            keep_a_view_past_a_collection()
            assert bytes(ViewKeeper.kept[:4]) == b"abcd"
            del ViewKeeper.kept
            gc.collect()
            assert own_holds("pair") == [], own_holds("pair")
        self.assertSurvives(child)

    def test_view_kept_by_a_finalizer_then_dropped_needs_no_further_collection(self):
        # The module's help: a view that a __del__ kept during a collection
        # keeps its channel, once dropped, "until the next collection or the
        # next open or close of a channel". A program with gc.disable() (or
        # one that allocates no more containers) runs no collection: its
        # next open or close must give the hold back. (Python calls a
        # __del__ once: nothing can tell the moment the view itself goes.)
        def child():
            keep_a_view_past_a_collection()
            gc.disable()
            del ViewKeeper.kept
            shmbroker.open_channel("ring").close()
            assert own_holds("pair") == [], "the last view is gone, the hold is still listed: %r" % own_holds("pair")
        self.assertSurvives(child)

    def test_interrupt_while_closing_set_aside_handles_loses_none(self):
        # 8ef97b2: "an exception (KeyboardInterrupt) loses none of those not
        # looked at". Two views kept by __del__ in one collection, then
        # dropped: the next open closes both handles. A KeyboardInterrupt
        # right after the first close (Ctrl-C lands between any two
        # bytecodes) must leave the second for the next open or close.
        class Holder:
            kept = []

            def __init__(self, view):
                self.view = view
                self.me = self

            def __del__(self):
                Holder.kept.append(self.view)

        def child():
            for name in ("pair", "ring"):
                with shmbroker.open_channel(name) as ch:
                    Holder(ch.buffer)
            gc.collect()
            gc.disable()
            assert own_holds("pair") == ["rw"] and own_holds("ring") == ["rw"]
            del Holder.kept[:]
            real_close = shmbroker._Handle.close

            def close_then_interrupt(handle):
                real_close(handle)
                shmbroker._Handle.close = real_close
                raise KeyboardInterrupt
            shmbroker._Handle.close = close_then_interrupt
            try:
                shmbroker.open_channel("ring2").close()
            except KeyboardInterrupt:
                pass
            shmbroker._Handle.close = real_close
            shmbroker.open_channel("ring2").close()     # the next open or close looks again
            left = own_holds("pair") + own_holds("ring")
            assert left == [], "a set-aside handle was lost, its hold kept: %r" % left
        self.assertSurvives(child)

    def test_peeked_message_in_a_cycle_released_in_any_order(self):
        # Several of them, and their channels, in one cycle: whichever
        # __del__ the collector calls first, each release finds its handle.
        def child():
            box = {}
            for name in ("ring", "ring2"):
                ring = shmbroker.open_channel(name)
                ring.send(b"x")
                box[name] = (ring, ring.peek(timeout=0), ring.buffer)
            box["self"] = box
            del box, ring
            gc.collect()
            for name in ("ring", "ring2"):
                assert own_holds(name) == [], (name, own_holds(name))
                self.assertSlotsFree(name, 8)
        self.assertSurvives(child)


class TestInterrupted(BrokerTest):
    """Ctrl-C while a call waits for the broker: the call's work is undone, nothing stays held.

    The broker is stopped (SIGSTOP), so the call waits in the C library for
    its answer; once the call's socket exists, SIGINT, then the broker goes
    on. The library finishes the exchange (it retries after EINTR), and
    Python's KeyboardInterrupt comes right after the C call returned,
    before the binding did anything with what it made.
    """

    def ctrl_c_during(self, call):
        fds = set(os.listdir("/proc/self/fd"))
        pid = os.getpid()

        def interrupt():
            while set(os.listdir("/proc/self/fd")) <= fds:
                time.sleep(0.005)
            os.kill(pid, signal.SIGINT)
            self.daemon.signal(signal.SIGCONT)
        self.daemon.signal(signal.SIGSTOP)
        helper = threading.Thread(target=interrupt)
        helper.start()
        try:
            with self.assertRaises(KeyboardInterrupt):
                call()
        finally:
            helper.join()
            self.daemon.signal(signal.SIGCONT)
        gc.collect()
        return fds

    def test_ctrl_c_during_open_keeps_nothing(self):
        fds = self.ctrl_c_during(lambda: shmbroker.open_channel("pair"))
        self.assertEqual(self.holds("pair"), [], "an interrupted open_channel() left its hold")
        self.assertEqual(shmbroker.status("pair")[0]["nattch"], 1, "an interrupted open_channel() left the segment attached")
        self.assertEqual(set(os.listdir("/proc/self/fd")), fds, "an interrupted open_channel() left its connection open")

    def test_ctrl_c_during_status_keeps_no_socket(self):
        fds = self.ctrl_c_during(lambda: shmbroker.status("pair"))
        self.assertEqual(set(os.listdir("/proc/self/fd")), fds, "an interrupted status() left its connection open")

    def test_ctrl_c_during_list_keeps_no_socket(self):
        fds = self.ctrl_c_during(shmbroker.list)
        self.assertEqual(set(os.listdir("/proc/self/fd")), fds, "an interrupted list() left its connection open")


class TestInterruptedClaims(BrokerTest):
    """Ctrl-C right after a peek or reserve made its claim: the claim is given up, no slot stays taken.

    The interrupt is placed where a signal's KeyboardInterrupt can come
    (the first bytecode after the C call returned) by wrapping the waiting
    call: no timing.
    """

    def interrupted_after_the_call(self, call):
        real = shmbroker._capi.waiting

        def waiting(*args, **kwargs):
            real(*args, **kwargs)
            raise KeyboardInterrupt
        shmbroker._capi.waiting = waiting
        try:
            with self.assertRaises(KeyboardInterrupt):
                call()
        finally:
            shmbroker._capi.waiting = real

    def assertSlotsFree(self, ring, slots):
        # Every slot can take a message, and each comes out: no claim was left behind.
        for i in range(slots):
            ring.send(b"%d" % i, timeout=0)
        for i in range(slots):
            self.assertEqual(ring.recv(timeout=0), b"%d" % i)

    def test_ctrl_c_after_peek_releases(self):
        with shmbroker.open_channel("ring") as ring:
            ring.send(b"x")
            self.interrupted_after_the_call(lambda: ring.peek(timeout=0))
            self.assertSlotsFree(ring, 8)

    def test_ctrl_c_after_reserve_aborts(self):
        with shmbroker.open_channel("ring") as ring:
            self.interrupted_after_the_call(lambda: ring.reserve(8, timeout=0))
            self.assertSlotsFree(ring, 8)


class TestRestart(BrokerTest):

    def test_holds_come_back_after_a_crash_restart(self):
        # Promised for every channel: "Holds survive a broker restart: the
        # library notices that its connection dropped, reconnects when the
        # broker is back and re-registers its open channels, so status lists
        # it again; the application sees nothing". A Python program that keeps
        # using its channel must be listed again.
        pair = self.open("pair")
        ring = self.open("ring")
        self.assertEqual(self.holds("pair"), [(os.getpid(), "rw")])
        self.daemon.kill()                          # SIGKILL: a crash
        os.unlink(os.path.join(self.dir, "notify"))
        self.daemon.start()                         # adopts the unchanged channels
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pair.sem_post(1)
            pair.sem_wait(1, timeout=1)
            ring.send(b"x", timeout=1)
            self.assertEqual(ring.recv(timeout=1), b"x")
            if self.holds("pair") and self.holds("ring"):
                break
            time.sleep(0.1)
        self.assertEqual(self.holds("pair"), [(os.getpid(), "rw")])
        self.assertEqual(self.holds("ring"), [(os.getpid(), "rw")])

    def test_a_waiter_blocked_through_the_restart_rejoins(self):
        # The program makes no call at all: one thread sits in recv(None)
        # from before the crash until after the restart. Its wait must still
        # bring the hold back, then take the message that ends it.
        ring = self.open("ring")
        got = []
        waiter = threading.Thread(target=lambda: got.append(ring.recv()))
        waiter.start()
        self.daemon.kill()
        os.unlink(os.path.join(self.dir, "notify"))
        self.daemon.start()
        deadline = time.monotonic() + 10
        while not self.holds("ring") and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.holds("ring"), [(os.getpid(), "rw")], "a blocked waiter's hold did not come back")
        self.assertTrue(waiter.is_alive(), "the wait ended without a message")
        with shmbroker.open_channel("ring", socket=self.daemon.socket) as sender:
            sender.send(b"after")
        waiter.join(10)
        self.assertEqual(got, [b"after"])

    def test_a_lock_waiter_blocked_through_the_restart_rejoins(self):
        # The same for a posix channel's lock, whose wait is the library's
        # own futex sleep: held here, so one thread sits in lock(0) (the
        # same hold waits) from before the crash until after the restart,
        # and nothing else calls on the connection. Its wait must bring the
        # hold back; the unlock then ends it.
        ch = self.open("pposix")
        ch.lock(0)
        got = []
        waiter = threading.Thread(target=lambda: got.append(ch.lock(0)))
        waiter.start()
        self.daemon.kill()
        os.unlink(os.path.join(self.dir, "notify"))
        self.daemon.start()
        deadline = time.monotonic() + 10
        while not self.holds("pposix") and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.holds("pposix"), [(os.getpid(), "rw")], "a blocked locker's hold did not come back")
        self.assertTrue(waiter.is_alive(), "the lock wait ended while the lock was held")
        ch.unlock(0)
        waiter.join(10)
        self.assertFalse(waiter.is_alive(), "the unlock did not end the wait")
        self.assertEqual(got, [None])
        ch.unlock(0)


class TestExamples(BrokerTest):

    def run_pair(self, sender, receiver, count):
        recv = subprocess.Popen(receiver + ["ring"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        send = subprocess.run(sender + ["ring", str(count)], stderr=subprocess.PIPE, timeout=30)
        out, err = recv.communicate(timeout=30)
        self.assertEqual(send.returncode, 0, send.stderr)
        self.assertEqual(recv.returncode, 0, err)
        self.assertEqual(out.splitlines(), messages(count))

    def test_c_sender_python_receiver(self):
        self.run_pair([os.path.join(C_EXAMPLES, "ring-sender")],
                      [sys.executable, os.path.join(PY_EXAMPLES, "ring-receiver.py")], 20)

    def test_python_sender_c_receiver(self):
        self.run_pair([sys.executable, os.path.join(PY_EXAMPLES, "ring-sender.py")],
                      [os.path.join(C_EXAMPLES, "ring-receiver")], 20)

    def test_python_examples_usage(self):
        for name in ("ring-sender.py", "ring-receiver.py"):
            prog = [sys.executable, os.path.join(PY_EXAMPLES, name)]
            r = subprocess.run(prog + ["--help"], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0)
            self.assertTrue(r.stdout.startswith("usage: %s " % name), r.stdout)
            self.assertIn("SHMBROKER_SOCKET", r.stdout)
            r = subprocess.run(prog + ["-x", "1"], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2)
            self.assertTrue(r.stderr.startswith("usage: %s " % name), r.stderr)
        r = subprocess.run([sys.executable, os.path.join(PY_EXAMPLES, "ring-receiver.py"), "nope"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("ring-receiver.py: nope: "), r.stderr)


def main():
    global run_dir
    if not can_unshare():
        print("SKIP: cannot create IPC namespaces here (needs root)", file=sys.stderr)
        return 77
    run_dir = tempfile.mkdtemp(prefix="shmbroker-test-py-")
    os.chmod(run_dir, 0o755)
    try:
        result = unittest.main(exit=False, verbosity=2).result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    # The closing line of a Check program, which .ci/run adds up.
    failures = len(result.failures) + len(result.unexpectedSuccesses)
    errors = len(result.errors)
    passed = result.testsRun - failures - errors
    print("%d%%: Checks: %d, Failures: %d, Errors: %d"
          % (100 * passed // max(result.testsRun, 1), result.testsRun, failures, errors))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
