#!/bin/sh
# Usage: hot-code.sh LIB.la NOFD.la
#
# Whether the functions every ring message runs compile to the same machine
# code in the library as built and in the one built with -DSHMB_NO_CHANNEL_FD,
# and start at the same place in a cache line. Calls and addresses are
# compared by the name they point at, not by number. Prints one line per
# function and a last line "hot code: same" or "hot code: DIFFERS"; exits
# 0 either way (1 when it cannot tell), since the bench's figures say the rest.
set -u

so_of() {
	dlname=$(sed -n "s/^dlname='\(.*\)'\$/\1/p" "$1")
	[ -n "$dlname" ] && printf '%s/.libs/%s\n' "$(dirname "$1")" "$dlname"
}

lib=$(so_of "$1") && nofd=$(so_of "$2") || { echo "hot-code: no shared library in $1 or $2" >&2; exit 1; }
command -v objdump >/dev/null || { echo "hot-code: no objdump" >&2; exit 1; }

# The body of function $2 in $1: each instruction without its address, jump
# and call targets by symbol (and offset), rip-relative operands without
# their distance; first a line "@N", its start address modulo 64.
body() {
	objdump -d --no-show-raw-insn "$1" | awk -v f="<$2>:" '
		$2 == f { p = 1; print "@" $1; next }
		/^[0-9a-f]+ <.*>:$/ { p = 0 }
		p && NF' | sed -E '
		s/^@.*(.)(.)$/@\1\2/
		s/^ *[0-9a-f]+:[[:space:]]*//
		s/[0-9a-f]+ <([^>]*)>/<\1>/g
		s/-?0x[0-9a-f]+\(%rip\)/(%rip)/g' | awk '
		/^@/ { print "@" (index("0123456789abcdef", substr($0, 2, 1)) - 1) % 4 * 16 + index("0123456789abcdef", substr($0, 3, 1)) - 1; next }
		{ print }'
}

same=yes
for f in shmb_send shmb_recv send_claim.part.0 recv_claim claim shmb_send_reserve shmb_send_commit \
	 shmb_send_abort shmb_recv_peek shmb_recv_release; do
	a=$(body "$lib" "$f")
	b=$(body "$nofd" "$f")
	if [ -z "$a" ] || [ -z "$b" ]; then
		echo "hot code: $f not found (inlined or renamed by this compiler)"
		same=no
	else
		at_a=$(echo "$a" | sed -n 's/^@//p')
		at_b=$(echo "$b" | sed -n 's/^@//p')
		if [ "$(echo "$a" | sed 1d)" != "$(echo "$b" | sed 1d)" ]; then
			echo "hot code: $f DIFFERS in its instructions"
			same=no
		elif [ "$at_a" != "$at_b" ]; then
			echo "hot code: $f same instructions, DIFFERS in its place: byte $at_a of a cache line against $at_b"
			same=no
		else
			echo "hot code: $f same, at byte $at_a of a cache line"
		fi
	fi
done
[ "$same" = yes ] && echo "hot code: same" || echo "hot code: DIFFERS"
