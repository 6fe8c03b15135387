#!/bin/sh
# libshmbroker exports exactly its API, all of it in version node
# LIBSHMBROKER_1 under soname libshmbroker.so.2: the functions the public
# header declares, the version script lists, and the built library
# defines are one and the same set. A symbol missing from any of them,
# or one leaking out of the library, fails.
set -eu
: "${top_srcdir:=.}"
lib=client/.libs/libshmbroker.so
hdr="$top_srcdir/client/include/shmbroker/shmbroker.h"
sym="$top_srcdir/client/libshmbroker.sym"
[ -f "$lib" ] || { echo "check-exports: $lib not built"; exit 99; }
tmp=$(mktemp -d /tmp/check-exports-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
[ "$soname" = libshmbroker.so.2 ] || { echo "check-exports: soname is '$soname', not libshmbroker.so.2"; exit 1; }

# Declarations start a line with their return type; the inline cleanup helpers are no symbols.
grep -E '^[A-Za-z_][A-Za-z0-9_ *]*[ *]shmb_[a-z0-9_]+\(' "$hdr" | grep -v '^static' |
	sed -E 's/^.*[ *](shmb_[a-z0-9_]+)\(.*$/\1/' | sort >"$tmp/header"
grep -E '^[[:space:]]+shmb_[a-z0-9_]+;' "$sym" | tr -d ' \t;' | sort >"$tmp/script"
# Every defined dynamic symbol, with its version node when it has one.
nm -D --defined-only "$lib" | awk '{print $3}' | sort >"$tmp/defined"
grep -v -x 'LIBSHMBROKER_1' "$tmp/defined" | sed 's/@@LIBSHMBROKER_1$//' >"$tmp/exported"

[ "$(wc -l <"$tmp/header")" -gt 70 ] || { echo "check-exports: found only $(wc -l <"$tmp/header") declarations in $hdr"; exit 1; }
fail=0
if ! diff -u "$tmp/header" "$tmp/script" >"$tmp/d1"; then
	echo "check-exports: the header (-) and $sym (+) disagree:"; cat "$tmp/d1"; fail=1
fi
if ! diff -u "$tmp/script" "$tmp/exported" >"$tmp/d2"; then
	echo "check-exports: $sym (-) and the library's exports (+) disagree:"; cat "$tmp/d2"; fail=1
fi
# Every export in the one node, and that node defined: a symbol outside any node has no @@.
bad=$(grep -v -x -e 'LIBSHMBROKER_1' -e 'shmb_[a-z0-9_]*@@LIBSHMBROKER_1' "$tmp/defined" || true)
if [ -n "$bad" ]; then
	echo "check-exports: exported outside node LIBSHMBROKER_1:"; echo "$bad"; fail=1
fi
grep -q -x 'LIBSHMBROKER_1' "$tmp/defined" || { echo "check-exports: no version node LIBSHMBROKER_1"; fail=1; }
[ "$fail" -eq 0 ] || exit 1
echo "check-exports: $(wc -l <"$tmp/script") symbols, all of the header's, all in LIBSHMBROKER_1 of $soname"
