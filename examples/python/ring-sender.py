#!/usr/bin/env python3
"""ring-sender.py: the Python twin of examples/ring-sender.c.

Sends COUNT messages "message 1" .. "message COUNT" (no newline) through a
ring channel, then an empty one to say it is done; send() waits while the
ring is full. Either sender works with either receiver, C or Python.

    ring-sender.py CHANNEL COUNT
"""

import sys

import shmbroker

USAGE = "usage: ring-sender.py CHANNEL COUNT\n"


def main(argv):
    if len(argv) > 1 and argv[1] in ("--help", "-h"):
        sys.stdout.write(USAGE +
                         'Sends COUNT messages "message 1" .. "message COUNT" (no newline)\n'
                         "through a ring channel, then an empty message that ends the receiver.\n"
                         "Socket: $SHMBROKER_SOCKET if set, else /run/shmbroker/shmbroker.sock.\n")
        return 0
    try:
        if len(argv) != 3 or argv[1].startswith("-"):
            raise ValueError
        count = int(argv[2])
        if count < 0:
            raise ValueError
    except ValueError:
        sys.stderr.write(USAGE)
        return 2
    try:
        ch = shmbroker.open_channel(argv[1])
    except OSError as e:
        print("ring-sender.py: %s: %s" % (argv[1], e.strerror), file=sys.stderr)
        return 1
    with ch:
        try:
            for i in range(1, count + 1):
                ch.send(b"message %d" % i, timeout=5)
            ch.send(b"", timeout=5)
        except OSError as e:
            print("ring-sender.py: %s" % e.strerror, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
