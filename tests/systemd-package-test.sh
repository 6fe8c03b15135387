#!/bin/bash
# The Debian packages under a real systemd: the same cached root as
# systemd-boot-test.sh, booted with systemd-nspawn, and inside it:
#   1. apt install ./*.deb (shmbroker, libshmbrokerN, libshmbroker-dev,
#      python3-shmbroker, and what they need that the root lacks, python3
#      among it): the maintainer scripts make the users and /run/shmbroker,
#      and enable and start shmbrokerd.socket (not the service);
#   2. a client built against the installed -dev package, run as a non-root
#      member of the socket's group, opens a channel: socket activation
#      starts the service as the shmbroker user; python3, as the same user,
#      opens it through the installed python3-shmbroker, reads what C wrote
#      and writes what the C client then reads back;
#   3. a channel added to the config and systemctl reload: the clients (C,
#      then Python) open it, the first one is untouched;
#   4. the shmbroker package reinstalled (the upgrade path of its maintainer
#      scripts): the daemon is not restarted, its channels stay;
#   5. apt purge: every package file, the conffile, the unit state and
#      /run/shmbroker are gone, and no System V object or /dev/shm file is left.
# Usage: tests/systemd-package-test.sh DEBDIR   (as root; CI runs it after
# building the packages into DEBDIR)
set -euo pipefail
# Output is captured before grep -q reads it: under pipefail, a producer
# killed by SIGPIPE when grep -q stops early would read as a failure.
debdir=$(cd "${1:?usage: $0 DEBDIR}" && pwd)
srcdir=$(cd "$(dirname "$0")/.." && pwd)
test_name=package-test
# shellcheck source=tests/nspawn.sh
. "$srcdir/tests/nspawn.sh"

# The packages to install, by their own names: the library's follows the soname.
debs=()
pkgs=()
for f in "$debdir"/*.deb; do
	[ -e "$f" ] || continue
	p=$(dpkg-deb -f "$f" Package)
	case $p in
	shmbroker|libshmbroker-dev|libshmbroker[0-9]*|python3-shmbroker) case $p in *-dbgsym) continue;; esac;;
	*) continue;;
	esac
	debs+=("$f")
	pkgs+=("$p")
done
[ "${#debs[@]}" -eq 4 ] ||
	fail "expected shmbroker, libshmbrokerN, libshmbroker-dev and python3-shmbroker in $debdir, found: ${pkgs[*]:-none}"
say "packages: ${pkgs[*]}"

# The cached root, copied, with the packages in it, and what they need that
#    the root lacks (libjansson-dev: the .pc requires jansson; python3 and
#    its libraries for python3-shmbroker): this machine's apt works that out
#    against the root's dpkg status, and the packages are fetched here, from
#    the machine's own apt sources (or its cache), so the container needs no
#    package lists.
nspawn_setup
mkdir -p "$root/root/debs" "$work/extra"
cp "${debs[@]}" "$root/root/debs/"
apt-get -s -q -o Dir::State::status="$root/var/lib/dpkg/status" install --no-install-recommends "${debs[@]}" \
	>"$work/needs.log" 2>&1 || { tail -n 30 "$work/needs.log"; fail "apt cannot install the packages into the root"; }
# "Inst NAME [OLD] (VERSION ARCHIVE...)", ours from "local-deb".
mapfile -t needs < <(awk '$1 == "Inst" && !/ local-deb / { v = $3 ~ /^\[/ ? $4 : $3; sub(/^\(/, "", v); print $2 "=" v }' "$work/needs.log")
printf '%s\n' "${needs[@]}" | grep -q '^python3=' || fail "python3 is not among what the packages pull in: ${needs[*]}"
say "from this machine's apt: ${needs[*]}"
if ! (cd "$work/extra" && apt-get download -q "${needs[@]}" >"$work/download.log" 2>&1); then
	for nv in "${needs[@]}"; do
		n=${nv%%=*} v=${nv#*=}
		cp /var/cache/apt/archives/"${n}_${v/:/%3a}"_*.deb "$work/extra/" 2>/dev/null ||
			{ cat "$work/download.log"; fail "cannot get $nv (apt-get update first)"; }
	done
fi
cp "$work"/extra/*.deb "$root/root/debs/"

nspawn_boot

# 1. Install, as an admin would.
# No sources: everything comes from /root/debs and the root, never the network.
in_ct sh -c 'cd /root/debs && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/nonexistent ./*.deb' \
	>"$work/apt-install.log" 2>&1 || { tail -n 40 "$work/apt-install.log"; fail "apt install"; }
grep -E '^(Setting up|Unpacking) ' "$work/apt-install.log" | sed "s/^/$test_name: apt: /"
in_ct id shmbroker >/dev/null || fail "sysusers.d did not create the shmbroker user"
in_ct getent group shmbroker-admin >/dev/null || fail "sysusers.d did not create the shmbroker-admin group"
[ "$(in_ct id -gn shmbroker)" = shmbrokerd ] || fail "the shmbroker user's primary group is not shmbrokerd"
in_ct getent group shmbroker >/dev/null || fail "sysusers.d did not create the socket's group shmbroker"
in_ct test -d /run/shmbroker || fail "tmpfiles.d did not create /run/shmbroker"
[ "$(in_ct stat -c %U:%G /run/shmbroker)" = shmbroker:shmbroker ] || fail "/run/shmbroker is not shmbroker's"
[ "$(in_ct systemctl is-enabled shmbrokerd.socket)" = enabled ] || fail "the package did not enable shmbrokerd.socket"
in_ct systemctl is-active --quiet shmbrokerd.socket || fail "the package did not start shmbrokerd.socket"
[ "$(in_ct systemctl is-enabled shmbrokerd.service)" = disabled ] || fail "the service is enabled by itself (it starts by its socket)"
in_ct systemctl is-active --quiet shmbrokerd.service && fail "the service started before anyone connected"
out=$(in_ct dpkg-query -W -f='${Conffiles}\n' shmbroker)
grep -q '^ /etc/shmbroker/shmbroker.json ' <<<"$out" || fail "/etc/shmbroker/shmbroker.json is not a conffile: $out"
in_ct shmbrokerd --check-config -c /etc/shmbroker/shmbroker.json || fail "the shipped config does not pass --check-config"

# The client, built against what libshmbroker-dev installed (pkg-config), and
# run against what libshmbrokerN installed.
pcdir=$(dirname "$(find "$root/usr/lib" -name libshmbroker.pc | head -n 1)")
nspawn_build_client "$root" "$pcdir" "$root/usr/local/bin/shmb-open"
out=$(in_ct ldd /usr/local/bin/shmb-open)
grep -q 'libshmbroker\.so\.[0-9]* => /' <<<"$out" || fail "the client does not find the packaged library: $out"
in_ct useradd -M -G shmbroker client

# 2. A channel for the client's group; its first open starts the service.
conf=/etc/shmbroker/shmbroker.json
write_conf() {
	in_ct sh -c "cat >$conf" <<CONF
{
  "version": 1,
  "socket": "/run/shmbroker/shmbroker.sock",
  "admin_group": "shmbroker-admin",
  "channels": [
    { "name": "demo", "size": 65536, "group": "shmbroker", "mode": "0660" }$1
  ]
}
CONF
}
write_conf ""
out=$(in_ct runuser -u client -- /usr/local/bin/shmb-open demo) || fail "client open: $out"
say "client: $out"
in_ct systemctl is-active --quiet shmbrokerd.service || fail "socket activation did not start the service"

# The same channel from Python, as the same user, through what
# python3-shmbroker installed (a clean environment: its own library path
# and the default socket): it reads what the C client wrote and writes what
# the C client then reads.
py() { in_ct runuser -u client -- env -i PATH=/usr/bin:/bin python3 -c "$1"; }
out=$(py '
import shmbroker, shmbroker._capi as capi
assert shmbroker.__file__ == "/usr/lib/python3/dist-packages/shmbroker/__init__.py", shmbroker.__file__
with shmbroker.open_channel("demo") as ch:
    got = bytes(ch.buffer[:22])
    assert got == b"written by the client\0", got
    ch.buffer[:22] = b"written by python3\0\0\0\0"
    print("python3 (%s) opened demo (%d bytes), read %r" % (capi.LIBRARY, ch.size, got))
') || fail "python3 open: $out"
say "$out"
out=$(in_ct runuser -u client -- /usr/local/bin/shmb-open demo read) || fail "client read: $out"
grep -qx 'read: written by python3' <<<"$out" || fail "the C client did not read what python3 wrote: $out"
say "client read back: ${out##*read: }"
pid=$(in_ct systemctl show -p MainPID --value shmbrokerd.service)
[ "$(in_ct awk '/^Uid:/ {print $2}' "/proc/$pid/status")" = "$(in_ct id -u shmbroker)" ] || fail "the daemon does not run as shmbroker"
out=$(in_ct shmbrokerctl status demo)
grep -q 'group shmbroker, rw-rw----' <<<"$out" || fail "status demo: $out"
demo_before=$(in_ct shmbrokerctl --json status demo | grep -o '"shm_id": *[0-9]*' || true)
[ -n "$demo_before" ] || fail "no shm_id in the status of demo"

# 3. Reload with one channel more: it is made, the first is kept.
write_conf ',
    { "name": "frames", "layout": "ring", "slot_size": 1024, "slots": 16, "group": "shmbroker", "mode": "0660" }'
in_ct systemctl reload shmbrokerd.service
in_ct systemctl is-active --quiet shmbrokerd.service || fail "not active after reload"
[ "$(in_ct systemctl show -p MainPID --value shmbrokerd.service)" = "$pid" ] || fail "reload replaced the daemon"
out=$(in_ct journalctl -u shmbrokerd.service --no-pager -o cat)
grep -q '^Reloaded ' <<<"$out" || fail "no reload in the journal"
out=$(in_ct runuser -u client -- /usr/local/bin/shmb-open frames open) || fail "client open of the new ring: $out"
say "client after reload: $out; demo kept its $demo_before"
# Python on the new ring, its wake-up FIFOs included: readable only once sent.
out=$(py '
import selectors, shmbroker
with shmbroker.open_channel("frames") as rx, shmbroker.open_channel("frames") as tx, \
        selectors.DefaultSelector() as sel:
    sel.register(rx.fileno(), selectors.EVENT_READ)
    try:
        rx.recv(timeout=0)
        raise SystemExit("a message in the new ring before any was sent")
    except BlockingIOError:
        pass
    assert not sel.select(timeout=0), "the ring fd polls readable with nothing sent"
    tx.send(b"frame 1")
    assert sel.select(timeout=30), "the ring fd did not poll readable after a send"
    got = rx.recv(timeout=0)
    assert got == b"frame 1", got
    print("python3 after reload: sent and received %r on frames, woken by its fileno()" % got)
') || fail "python3 on the new ring: $out"
say "$out"
out=$(in_ct runuser -u client -- shmbrokerctl list)
grep -q '^frames ' <<<"$out" || fail "list as the client after reload: $out"
[ "$(in_ct shmbrokerctl --json status demo | grep -o '"shm_id": *[0-9]*' || true)" = "$demo_before" ] ||
	fail "reload changed the unchanged channel demo"
[ "$(in_ct ipcs -m | grep -c '^0x')" -eq 2 ] || { in_ct ipcs; fail "not 2 segments after the reload"; }

# 4. Reinstall (the maintainer scripts' upgrade path): the daemon is neither
#    stopped nor restarted, so the channels and their holders stay.
list_before=$(in_ct shmbrokerctl --json list)
in_ct sh -c 'cd /root/debs && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall \
	-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/nonexistent ./shmbroker_*.deb' \
	>"$work/apt-reinstall.log" 2>&1 || { tail -n 40 "$work/apt-reinstall.log"; fail "apt install --reinstall"; }
[ "$(in_ct systemctl show -p MainPID --value shmbrokerd.service)" = "$pid" ] || fail "the reinstall restarted the daemon"
[ "$(in_ct shmbrokerctl --json list)" = "$list_before" ] || fail "the reinstall changed the channels"
[ "$(in_ct systemctl is-enabled shmbrokerd.socket)" = enabled ] || fail "the reinstall disabled the socket"
say "reinstall: the daemon (pid $pid) kept running with its channels"
say "before purge, /run/shmbroker holds: $(in_ct ls -A /run/shmbroker | tr '\n' ' ')"

# 4b. The daemon dies while the config has an error not yet reloaded, so it cannot come back
#     before the admin purges: the purge must still leave no object (its state file records them).
in_ct sh -c "echo '{ broken' >$conf"
in_ct kill -KILL "$pid"
for _ in $(seq 300); do
	[ "$(in_ct systemctl show -p NRestarts --value shmbrokerd.service)" -ge 2 ] && break
	sleep 0.1
done
[ "$(in_ct ipcs -m | grep -c '^0x')" -eq 2 ] || fail "the crash did not leave the 2 segments this step is about"

# 5. Purge: nothing of ours is left.
in_ct sh -c "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ${pkgs[*]}" >"$work/apt-purge.log" 2>&1 ||
	{ tail -n 40 "$work/apt-purge.log"; fail "apt purge"; }
grep -E '^(Removing|Purging) ' "$work/apt-purge.log" | sed "s/^/$test_name: apt: /"
left=$(in_ct dpkg -l | awk '$2 ~ /^(lib|python3-)?shmbroker/ {print $1, $2}')
[ -z "$left" ] || fail "packages not purged: $left"
in_ct pgrep -x shmbrokerd >/dev/null && fail "shmbrokerd still runs after purge"
in_ct systemctl is-active --quiet shmbrokerd.socket && fail "the socket is still active after purge"
left=$(in_ct ipcs -m -s | grep -c '^0x' || true)
[ "$left" -eq 0 ] || { in_ct ipcs; fail "$left System V objects left after purge"; }
left=$(in_ct find /dev/shm -mindepth 1)
[ -z "$left" ] || fail "files left under /dev/shm: $left"
[ -z "$(in_ct ls -A /dev/shm)" ] || fail "ls /dev/shm after purge: $(in_ct ls -A /dev/shm)"
for path in /run/shmbroker /etc/shmbroker /usr/sbin/shmbrokerd /usr/bin/shmbrokerctl /lib/systemd/system/shmbrokerd.socket \
	/lib/systemd/system/shmbrokerd.service /usr/lib/sysusers.d/shmbroker.conf /usr/lib/tmpfiles.d/shmbroker.conf \
	/usr/include/shmbroker /usr/share/doc/shmbroker /usr/lib/python3/dist-packages/shmbroker /usr/share/doc/python3-shmbroker; do
	in_ct test ! -e "$path" || fail "$path is left after purge"
done
left=$(in_ct sh -c 'ls /usr/lib/*/libshmbroker* /usr/lib/*/pkgconfig/libshmbroker.pc 2>/dev/null; find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled -name "shmbrokerd*"' || true)
[ -z "$left" ] || fail "left after purge: $left"
say "after purge: no package, unit, file, process or System V object of shmbroker is left (the system user stays, as Debian's do)"
say "PASS in $(( $(date +%s) - start )) s"
