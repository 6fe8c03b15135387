#!/usr/bin/env python3
"""ring-receiver.py: the Python twin of examples/ring-receiver.c.

Prints each message of a ring channel on a line of its own until an empty
message arrives; gives up after 10 s with nothing to receive (exit 1).
Either receiver works with either sender, C or Python.

    ring-receiver.py CHANNEL
"""

import sys

import shmbroker

USAGE = "usage: ring-receiver.py CHANNEL\n"
IDLE = 10.0     # seconds


def main(argv):
    if len(argv) > 1 and argv[1] in ("--help", "-h"):
        sys.stdout.write(USAGE +
                         "Prints each message of a ring channel on a line of its own until an\n"
                         "empty message arrives; gives up after 10 s with nothing to receive.\n"
                         "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n")
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write(USAGE)
        return 2
    try:
        ch = shmbroker.open_channel(argv[1])
    except OSError as e:
        print("ring-receiver.py: %s: %s" % (argv[1], e.strerror), file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    with ch:
        try:
            while True:
                msg = ch.recv(timeout=IDLE)
                if not msg:
                    break
                out.write(msg + b"\n")
        except OSError as e:
            out.flush()
            print("ring-receiver.py: %s" % e.strerror, file=sys.stderr)
            return 1
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
