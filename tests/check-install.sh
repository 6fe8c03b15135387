#!/bin/sh
# Install into a staging root (binaries, library, header, .pc, units, man
# pages, the example config under $(docdir)), build the ring examples outside
# the tree with `pkg-config --cflags --libs libshmbroker` against what was
# installed, and have them exchange messages through a real daemon (in its
# own IPC namespace, so nothing is left behind).
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

# The examples, as a user would build them from the installed package.
: "${top_srcdir:=.}"
cp "$top_srcdir/examples/ring-sender.c" "$top_srcdir/examples/ring-receiver.c" "$stage/"
doc=$(find "$stage" -path '*/doc/shmbroker/shmbroker.json' | head -n 1)
[ -n "$doc" ] || { echo "check-install: the example config is not under \$(docdir)"; exit 1; }
for page in shmbrokerd.8 shmbroker.json.5 shmbrokerctl.1 libshmbroker.3 shmbroker-protocol.7; do
	find "$stage" -name "$page" | grep -q . || { echo "check-install: man page $page not installed"; exit 1; }
done
export PKG_CONFIG_SYSROOT_DIR="$stage" PKG_CONFIG_PATH="$(dirname "$pc")"
# The build's own flags: a sanitizer build's library needs its runtime in the program too.
for prog in ring-sender ring-receiver; do
	# shellcheck disable=SC2086,SC2046
	$CC $CFLAGS $LDFLAGS -o "$stage/$prog" "$stage/$prog.c" $(pkg-config --cflags --libs libshmbroker) \
		-Wl,-rpath,"$stage$libdir"
	# It must use the installed library, not the build tree's.
	ldd "$stage/$prog" | grep -q "$stage$libdir/libshmbroker.so" || { ldd "$stage/$prog"; exit 1; }
done

if ! unshare --ipc true 2>/dev/null; then
	echo "check-install: built; cannot make an IPC namespace to run it (needs root)"; exit 77
fi
cat >"$stage/conf.json" <<CONF
{"version": 1, "socket": "$stage/s.sock", "channels": [{"name": "demo", "layout": "ring", "slot_size": 256, "slots": 8}]}
CONF
out=$(SHMBROKER_SOCKET="$stage/s.sock" unshare --ipc sh -c '
	./daemon/shmbrokerd -c "$1/conf.json" 2>"$1/daemon.log" & d=$!
	for i in $(seq 100); do [ -S "$1/s.sock" ] && break; sleep 0.05; done
	"$1/ring-receiver" demo >"$1/received" & r=$!
	"$1/ring-sender" demo 3; s=$?
	wait $r; w=$?
	kill $d; wait $d
	[ $s -eq 0 ] && [ $w -eq 0 ] && cat "$1/received"' sh "$stage") || { echo "$out"; cat "$stage/daemon.log"; exit 1; }
echo "check-install: the installed examples exchanged: $(echo $out)"
[ "$(echo $out)" = "message 1 message 2 message 3" ]
