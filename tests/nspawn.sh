# shellcheck shell=bash
# Sourced by the container tests (systemd-boot-test.sh, systemd-package-test.sh):
# a minimal Debian root (debootstrap, from the machine's own apt mirror,
# cached between runs) copied to a scratch directory and booted with
# systemd-nspawn, and a small client program built against libshmbroker.
#
# The sourcing script sets test_name (the prefix of its lines), then calls
#   nspawn_setup             checks, scratch directory $work, the root in $root
#   nspawn_build_client SYSROOT PCDIR OUT [RPATH]
#                            the client (shmb-open) built against SYSROOT's library
#   nspawn_boot              boots $root; then in_ct CMD... runs inside it
# Its EXIT trap prints the daemon's journal on a failure, powers the container
# off and removes $work (KEEP_WORK=1 keeps it).

: "${test_name:?set test_name before sourcing tests/nspawn.sh}"
cache=${SHMBROKER_NSPAWN_CACHE:-/var/tmp/shmbroker-nspawn-root}
suite=${SHMBROKER_NSPAWN_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
work=
root=
nspawn_pid=
init=
start=$(date +%s)

say() { printf '%s: %s\n' "$test_name" "$*"; }
fail() { say "FAILED: $*"; exit 1; }
in_ct() { nsenter -t "$init" -a "$@"; }

nspawn_cleanup() {
	local rc=$?
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		# A failure: the daemon's last words, while the journal is still there.
		[ "$rc" -eq 0 ] || in_ct journalctl -u shmbrokerd.service -n 30 --no-pager -o cat 2>/dev/null |
			sed "s/^/$test_name: journal: /" || true
		in_ct systemctl poweroff >/dev/null 2>&1 || true
		for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$nspawn_pid" 2>/dev/null || true
	fi
	[ -n "$work" ] || return 0
	if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}

# The mirror this machine already uses: no host is named in the repository.
mirror() {
	local m
	m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
	echo "$m"
}

nspawn_setup() {
	[ "$(id -u)" -eq 0 ] || { say "needs root"; exit 77; }
	local t m
	for t in debootstrap systemd-nspawn nsenter; do
		command -v "$t" >/dev/null || fail "$t is missing (apt-get install debootstrap systemd-container)"
	done
	work=$(mktemp -d /var/tmp/shmbroker-boot-XXXXXX)
	root=$work/root
	trap nspawn_cleanup EXIT

	# The root, built once and kept.
	if [ ! -f "$cache/.shmbroker-root-ok" ]; then
		m=$(mirror)
		[ -n "$m" ] || fail "no Debian mirror in /etc/apt sources"
		say "building a $suite root in $cache from the machine's mirror (once)"
		rm -rf "$cache"
		debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libjansson4,util-linux,procps \
			"$suite" "$cache" "$m" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log"; fail "debootstrap"; }
		touch "$cache/.shmbroker-root-ok"
	fi
	say "copying the cached root"
	cp -a "$cache" "$root"
}

# A client program outside the tree, built against an installed library:
# shmb-open CHANNEL [fd|open|read|hold] opens CHANNEL rw, writes into it (fd
# instead: gets the ring's wake-up descriptor; open: nothing more; read:
# prints the string at the segment's start; hold: keeps it open until its
# standard input ends) and closes it.
nspawn_build_client() {
	local sysroot=$1 pcdir=$2 out=$3 rpath=${4:-}
	cat >"$work/shmb-open.c" <<'PROG'
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
        /* A ring: its wake-up FIFOs must be there and usable by the client's group. */
        if (argc > 2 && strcmp(argv[2], "fd") == 0 && (r = shmb_channel_fd(ch)) < 0) {
                fprintf(stderr, "fd %s: %s\n", argv[1], shmb_strerror(r));
                return 1;
        }
        if (argc <= 2)
                strcpy(shmb_channel_addr(ch), "written by the client");
        printf("opened %s (%zu bytes)\n", argv[1], shmb_channel_size(ch));
        if (argc > 2 && strcmp(argv[2], "read") == 0)
                printf("read: %.*s\n", 64, (const char *) shmb_channel_addr(ch));
        if (argc > 2 && strcmp(argv[2], "hold") == 0) {
                fflush(stdout);
                while (getchar() != EOF)
                        ;
        }
        return shmb_close(ch) < 0;
}
PROG
	# shellcheck disable=SC2046
	PKG_CONFIG_SYSROOT_DIR=$sysroot PKG_CONFIG_PATH=$pcdir cc -o "$out" "$work/shmb-open.c" \
		$(PKG_CONFIG_SYSROOT_DIR=$sysroot PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs libshmbroker) \
		${rpath:+-Wl,-rpath,"$rpath"} || fail "cannot build the client against $sysroot"
}

nspawn_boot() {
	local state
	say "booting the container"
	systemd-nspawn --boot -D "$root" --keep-unit --register=no --console=pipe --quiet >"$work/console.log" 2>&1 &
	nspawn_pid=$!
	# The container's pid 1 is nspawn's child once it has become systemd.
	for _ in $(seq 200); do
		init=$(pgrep -P "$nspawn_pid" -x systemd | head -n 1 || true)
		[ -n "$init" ] && break
		sleep 0.1
	done
	[ -n "$init" ] || fail "the container did not start"
	# Right after exec, systemd is not yet reachable on its bus: ask until it answers.
	state=
	for _ in $(seq 300); do
		state=$(timeout 90 nsenter -t "$init" -a systemctl is-system-running --wait 2>/dev/null || true)
		case $state in running|degraded) break;; esac
		sleep 0.2
	done
	say "container is $state after $(( $(date +%s) - start )) s"
	case $state in running|degraded) ;; *) fail "the container did not boot ($state)";; esac
}
