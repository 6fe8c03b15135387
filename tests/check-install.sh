#!/bin/sh
# Install into a staging root, build a program outside the tree with
# `pkg-config --cflags --libs libshmbroker` against what was installed, and
# have it open a channel of a real daemon in one call (in its own IPC
# namespace, so nothing is left behind).
set -eu
: "${MAKE:=make}" "${CC:=cc}" "${CFLAGS:=}" "${LDFLAGS:=}"
stage=$(mktemp -d /tmp/shmbroker-stage-XXXXXX)
trap 'rm -rf "$stage"' EXIT

$MAKE -s install DESTDIR="$stage" >"$stage/install.log" 2>&1 || { cat "$stage/install.log"; exit 1; }
pc=$(find "$stage" -name libshmbroker.pc | head -n 1)
[ -n "$pc" ] || { echo "check-install: no libshmbroker.pc installed"; exit 1; }
hdr=$(find "$stage" -path '*/include/shmbroker/shmbroker.h' | head -n 1)
[ -n "$hdr" ] || { echo "check-install: <shmbroker/shmbroker.h> not installed"; exit 1; }
libdir=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=libdir libshmbroker)

cat >"$stage/one-call.c" <<'PROG'
#include <stdio.h>
#include <string.h>
#include <shmbroker/shmbroker.h>

int main(int argc, char *argv[]) {
        shmb_channel *ch;
        int r = shmb_open_channel(NULL, argv[1], SHMB_RW, &ch);

        if (r < 0) {
                fprintf(stderr, "open %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        strcpy(shmb_channel_addr(ch), "hello");
        printf("opened %s: %zu bytes\n", argv[1], shmb_channel_size(ch));
        return shmb_close(ch) < 0;
}
PROG
export PKG_CONFIG_SYSROOT_DIR="$stage" PKG_CONFIG_PATH="$(dirname "$pc")"
# shellcheck disable=SC2046
# The build's own flags: a sanitizer build's library needs its runtime in the program too.
# shellcheck disable=SC2086
$CC $CFLAGS $LDFLAGS -o "$stage/one-call" "$stage/one-call.c" $(pkg-config --cflags --libs libshmbroker) \
	-Wl,-rpath,"$stage$libdir"
# It must use the installed library, not the build tree's.
ldd "$stage/one-call" | grep -q "$stage$libdir/libshmbroker.so" || { ldd "$stage/one-call"; exit 1; }

if ! unshare --ipc true 2>/dev/null; then
	echo "check-install: built; cannot make an IPC namespace to run it (needs root)"; exit 77
fi
cat >"$stage/conf.json" <<CONF
{"version": 1, "socket": "$stage/s.sock", "channels": [{"name": "demo", "size": 4096}]}
CONF
out=$(SHMBROKER_SOCKET="$stage/s.sock" unshare --ipc sh -c '
	./daemon/shmbrokerd -c "$1/conf.json" 2>"$1/daemon.log" & d=$!
	for i in $(seq 100); do [ -S "$1/s.sock" ] && break; sleep 0.05; done
	"$1/one-call" demo; r=$?
	kill $d; wait $d; exit $r' sh "$stage") || { echo "$out"; cat "$stage/daemon.log"; exit 1; }
echo "check-install: $out"
[ "$out" = "opened demo: 4096 bytes" ]
