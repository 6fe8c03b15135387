#!/bin/sh
# Build the fuzz targets with clang's libFuzzer (plus ASan and UBSan) and run
# each for a while, growing a scratch copy of the seed corpus. Crashes are
# left as crash-* files in the scratch directory and reported.
#   tests/fuzz/run.sh [SECONDS_PER_TARGET | "-runs=N [-max_len=N ...]"] [TARGET...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
limit=${1:--max_total_time=60}
case $limit in -*) ;; *) limit="-max_total_time=$limit" ;; esac
[ $# -gt 0 ] && shift
targets=${*:-request response config state}
out=${FUZZ_OUT:-/tmp/shmbroker-fuzz}
command -v clang >/dev/null || { echo "fuzz: clang is needed (apt-get install clang)"; exit 77; }
mkdir -p "$out"
cat >"$out/config.h" <<H
#define _GNU_SOURCE 1
#define PACKAGE_NAME "shmbroker"
#define PACKAGE_VERSION "fuzz"
H
cflags="-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I$top -include $out/config.h
        $(pkg-config --cflags jansson)"
libs=$(pkg-config --libs jansson)
proto="$top/common/json-util.c $top/common/utf8.c $top/proto/names.c $top/proto/frame.c $top/proto/request.c $top/proto/response.c"
for t in $targets; do
	extra=
	[ "$t" = config ] && extra="$top/daemon/config.c $top/daemon/self.c"
	[ "$t" = state ] && extra="$top/daemon/state.c $top/daemon/lock-file.c"
	# shellcheck disable=SC2086
	clang $cflags -o "$out/fuzz-$t" "$here/fuzz-$t.c" $proto $extra $libs
	mkdir -p "$out/corpus-$t"
	cp -n "$here/corpus/$t/"* "$out/corpus-$t/" 2>/dev/null || true
	echo "fuzz: $t ($limit)"
	# shellcheck disable=SC2086
	(cd "$out" && ./"fuzz-$t" $limit -print_final_stats=1 -artifact_prefix="$out/crash-$t-" "corpus-$t") \
		>"$out/fuzz-$t.log" 2>&1 || { tail -n 40 "$out/fuzz-$t.log"; echo "fuzz: $t FOUND A CRASH"; exit 1; }
	grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$out/fuzz-$t.log" | sed "s/^/fuzz: $t: /"
done
