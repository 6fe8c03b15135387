#!/bin/sh
# The units as they will be installed: `systemd-analyze verify` prints
# nothing, the service's exposure (systemd-analyze security) is at most 1.0,
# and nothing clients must share is taken away (IPC namespace, AF_UNIX,
# real users).
set -eu
command -v systemd-analyze >/dev/null 2>&1 || { echo "check-units: no systemd-analyze"; exit 77; }
: "${srcdir:=.}"
tmp=$(mktemp -d /tmp/shmbroker-units-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# verify checks that ExecStart= exists: point it at this build's daemon.
sed "s|^ExecStart=[^ ]*|ExecStart=$PWD/daemon/shmbrokerd|" systemd/shmbrokerd.service >"$tmp/shmbrokerd.service"
cp "$srcdir/systemd/shmbrokerd.socket" "$tmp/"
out=$(cd "$tmp" && systemd-analyze verify ./shmbrokerd.socket ./shmbrokerd.service 2>&1) || true
if [ -n "$out" ]; then
	echo "check-units: systemd-analyze verify complained:"; echo "$out"; exit 1
fi

score=$(cd "$tmp" && systemd-analyze security --offline=true ./shmbrokerd.service 2>&1 |
	sed -n 's/.*Overall exposure level for shmbrokerd.service: \([0-9.]*\).*/\1/p')
awk -v s="$score" 'BEGIN { exit !(s != "" && s + 0 <= 1.0) }' || {
	echo "check-units: exposure '$score' is above 1.0"; exit 1; }

bad=$(grep -E '^(PrivateIPC|DynamicUser|PrivateUsers)=(yes|true|1)|^SystemCallFilter=.*@ipc|^RestrictAddressFamilies=~.*AF_UNIX|^RemoveIPC=yes' \
	"$tmp/shmbrokerd.service" || true)
[ -z "$bad" ] || { echo "check-units: the service takes away what clients share: $bad"; exit 1; }
# The kernel gives an object's group rights to its creator's group too: were the daemon's group the
# socket's, every client (all in it, to reach the socket) would get every channel's group rights.
daemon_group=$(sed -n 's/^Group=//p' "$tmp/shmbrokerd.service")
[ -n "$daemon_group" ] && [ "$daemon_group" != "$(sed -n 's/^SocketGroup=//p' "$tmp/shmbrokerd.socket")" ] || {
	echo "check-units: the daemon's Group= ($daemon_group) must be set, and not be the socket's group"; exit 1; }
grep -q "^u shmbroker -:$daemon_group " "$srcdir/systemd/sysusers.d/shmbroker.conf" || {
	echo "check-units: sysusers.d does not make $daemon_group the shmbroker user's primary group"; exit 1; }
grep -q '^Type=notify' "$tmp/shmbrokerd.service" && grep -q '^WatchdogSec=' "$tmp/shmbrokerd.service" &&
	grep -q '^SocketMode=0660' "$tmp/shmbrokerd.socket" || { echo "check-units: missing Type=notify, WatchdogSec= or SocketMode=0660"; exit 1; }
echo "check-units: verify clean; exposure $score"
