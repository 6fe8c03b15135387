#!/bin/sh
# Every man page renders without a warning (man --warnings, and groff -ww).
set -eu
: "${srcdir:=.}" "${MANS:?}"
command -v groff >/dev/null 2>&1 || { echo "check-man: groff is missing"; exit 77; }
fail=0
for page in $MANS; do
	out=$( { groff -man -ww -z "$srcdir/$page"; } 2>&1 )
	if command -v man >/dev/null 2>&1; then
		out="$out$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$srcdir/$page" 2>&1 >/dev/null)"
	fi
	if [ -n "$out" ]; then
		echo "check-man: $page:"; echo "$out"; fail=1
	fi
done
[ "$fail" -eq 0 ] && echo "check-man: $(echo $MANS | wc -w) pages render cleanly"
exit "$fail"
