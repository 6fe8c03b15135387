#!/bin/sh
# libshmbroker exports its API (shmb_*) and its version node, nothing else.
set -eu
lib=client/.libs/libshmbroker.so
[ -f "$lib" ] || { echo "check-exports: $lib not built"; exit 99; }
extra=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v -e '^shmb_' -e '^LIBSHMBROKER_' || true)
if [ -n "$extra" ]; then
	echo "check-exports: symbols outside the API:"; echo "$extra"; exit 1
fi
api=$(nm -D --defined-only "$lib" | awk '$3 ~ /^shmb_/ {print $3}' | wc -l)
node=$(objdump -T "$lib" | grep -cE 'LIBSHMBROKER_(0\.1|1) +shmb_' || true)
[ "$api" -gt 20 ] && [ "$api" -eq "$node" ] || { echo "check-exports: $api API symbols, $node in LIBSHMBROKER_0.1 or _1"; exit 1; }
objdump -T "$lib" | grep -qE 'LIBSHMBROKER_1 +shmb_client_set_timeout$' ||
	{ echo "check-exports: shmb_client_set_timeout is not in LIBSHMBROKER_1"; exit 1; }
echo "check-exports: $api symbols, all shmb_* in LIBSHMBROKER_0.1 or LIBSHMBROKER_1"
