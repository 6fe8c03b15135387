#!/bin/sh
# Install into a staging root (binaries, library, header, .pc, units, man
# pages, the example config under $(docdir), the Python package), build the
# ring examples outside the tree with `pkg-config --cflags --libs
# libshmbroker` against what was installed, and have them exchange messages
# through a real daemon (in its own IPC namespace, so nothing is left
# behind); then the installed Python package's sender with the C receiver.
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
for page in shmbrokerd.8 shmbroker.json.5 shmbrokerctl.1 libshmbroker.3 shmbroker-protocol.7 \
	shmbroker-ring.7; do
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

# The Python package, where configure found python3 (else none is installed):
# its _config.py names the library installed with it, by full path. Loaded
# from the staging root (so by $SHMBROKER_LIBRARY), it talks to the installed
# C receiver.
cfg=$(find "$stage" -path '*/shmbroker/_config.py' | head -n 1)
[ -n "$cfg" ] || { echo "check-install: no Python package installed (no python3)"; exit 0; }
lib=$(sed -n "s/^LIBRARY = '\(.*\)'\$/\1/p" "$cfg")
case $lib in
"$libdir"/libshmbroker.so.*) ;;
*) echo "check-install: $cfg names $lib, not a libshmbroker in $libdir"; exit 1;;
esac
[ -f "$stage$lib" ] || { echo "check-install: $cfg names $lib, which was not installed"; exit 1; }
# A sanitizer build's library wants the ASan runtime first (see tests/python-env.sh).
asan=$(ldd "$stage$lib" 2>/dev/null | sed -n 's/^[[:space:]]*libasan[^ ]* => \([^ ]*\) .*/\1/p')
if [ -n "$asan" ]; then
	LD_PRELOAD=$asan${LD_PRELOAD:+:$LD_PRELOAD} ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
	export LD_PRELOAD ASAN_OPTIONS
fi
out=$(SHMBROKER_SOCKET="$stage/s.sock" SHMBROKER_LIBRARY="$stage$lib" PYTHONPATH="${cfg%/shmbroker/_config.py}" \
	PYTHONDONTWRITEBYTECODE=1 unshare --ipc sh -c '
	./daemon/shmbrokerd -c "$1/conf.json" 2>"$1/daemon.log" & d=$!
	for i in $(seq 100); do [ -S "$1/s.sock" ] && break; sleep 0.05; done
	"$1/ring-receiver" demo >"$1/received" & r=$!
	"$2" "$3/examples/python/ring-sender.py" demo 3; s=$?
	wait $r; w=$?
	kill $d; wait $d
	[ $s -eq 0 ] && [ $w -eq 0 ] && cat "$1/received"' sh "$stage" "${PYTHON:-python3}" "$top_srcdir") ||
	{ echo "$out"; cat "$stage/daemon.log"; exit 1; }
echo "check-install: the installed Python package sent: $(echo $out) (its _config.py names $lib)"
[ "$(echo $out)" = "message 1 message 2 message 3" ]
