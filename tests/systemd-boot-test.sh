#!/bin/bash
# shmbrokerd under a real systemd: a minimal Debian root (debootstrap, from
# the machine's own apt mirror, cached between runs) booted with
# systemd-nspawn, with this build installed into it. Inside it:
#   1. enable shmbrokerd.socket; a client user opens a channel through the
#      socket (socket activation starts the service); status checks it;
#   2. systemctl reload, then restart;
#   3. SIGKILL the daemon; Restart= brings it back and it takes the
#      unchanged channels over (same ids);
#   4. systemctl stop: ipcs shows none of the broker's objects.
# Usage: tests/systemd-boot-test.sh BUILDDIR   (as root; CI runs it)
set -euo pipefail
builddir=$(cd "${1:?usage: $0 BUILDDIR}" && pwd)
srcdir=$(cd "$(dirname "$0")/.." && pwd)
test_name=boot-test
# shellcheck source=tests/nspawn.sh
. "$srcdir/tests/nspawn.sh"

# 1. The cached root, copied.
nspawn_setup

# 2. This build, installed as a distribution would.
make -s -C "$builddir" install DESTDIR="$root" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "make install"; }
prefix=$(sed -n 's/^prefix=//p' "$builddir/client/libshmbroker.pc")
etc=$(sed -n 's/^sysconfdir = //p' "$builddir/Makefile")
etc=${etc//\$\{prefix\}/$prefix}
mkdir -p "$root$etc/shmbroker"
cat >"$root$etc/shmbroker/shmbroker.json" <<CONF
{
  "version": 1,
  "socket": "/run/shmbroker/shmbroker.sock",
  "admin_group": "shmbroker-admin",
  "channels": [
    { "name": "demo", "size": 65536, "group": "shmclients", "mode": "0660" },
    { "name": "frames", "layout": "ring", "slot_size": 1024, "slots": 16, "group": "shmclients", "mode": "0660" },
    { "name": "camera", "kind": "posix", "size": 65536 }
  ]
}
CONF
# A client program outside the tree, built against the installed library.
pcdir=$(dirname "$(find "$root" -name libshmbroker.pc | head -n 1)")
nspawn_build_client "$root" "$pcdir" "$root/usr/local/bin/shmb-open" "$prefix/lib"
echo "$prefix/lib" >"$root/etc/ld.so.conf.d/shmbroker.conf"

# 3. Boot it.
nspawn_boot

ctl=$prefix/bin/shmbrokerctl
in_ct ldconfig
in_ct groupadd -f shmclients
in_ct useradd -M -G shmbroker,shmclients client
in_ct useradd -M -G shmbroker outsider
in_ct id shmbroker >/dev/null || fail "sysusers.d did not create the shmbroker user"
in_ct test -d /run/shmbroker || fail "tmpfiles.d did not create /run/shmbroker"

# Step 1: socket activation by a client of another user.
in_ct systemctl enable --now shmbrokerd.socket
in_ct systemctl is-active --quiet shmbrokerd.service && fail "the service started before anyone connected"
out=$(in_ct runuser -u client -- /usr/local/bin/shmb-open demo) || fail "client open: $out"
say "client: $out"
in_ct systemctl is-active --quiet shmbrokerd.service || fail "socket activation did not start the service"
in_ct "$ctl" status demo | grep -q 'group shmclients, rw-rw----' || { in_ct "$ctl" status demo; fail "status demo"; }
in_ct runuser -u client -- "$ctl" list | grep -q frames || fail "list as the client"
# A posix channel of the daemon's own ids starts under the unit's system call filter (no chown needed).
in_ct "$ctl" status camera | grep -q posix || { in_ct "$ctl" status camera; fail "status camera"; }
# A client that may reach the socket but is not in a channel's group gets nothing of it: the daemon's
# group, the objects' creator group, is not the socket's.
out=$(in_ct runuser -u outsider -- /usr/local/bin/shmb-open demo 2>&1) && fail "an outsider opened demo: $out"
printf '%s\n' "$out" | grep -qi 'permission denied' || fail "an outsider's open of demo: $out"
out=$(in_ct runuser -u client -- /usr/local/bin/shmb-open frames fd) || fail "client fd of a ring: $out"
in_ct test -p /run/shmbroker/shmbroker.sock.wake/frames.data || fail "no wake-up FIFO for the ring"
pid1=$(in_ct systemctl show -p MainPID --value shmbrokerd.service)
shm_before=$(in_ct "$ctl" --json list)

# Step 2: reload keeps the channels; restart makes new ones.
in_ct systemctl reload shmbrokerd.service
in_ct systemctl is-active --quiet shmbrokerd.service || fail "not active after reload"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "reload of an unchanged config changed the channels"
in_ct journalctl -u shmbrokerd.service --no-pager | grep -q 'Reloaded' || fail "no reload in the journal"
# Refused by the daemon (exit 1, its message), not failing for another reason.
rc=0
out=$(in_ct runuser -u client -- "$ctl" reload 2>&1) || rc=$?
[ "$rc" -eq 1 ] && printf '%s\n' "$out" | grep -q 'admin group' || fail "a non-admin's reload: exit $rc: $out"
in_ct systemctl restart shmbrokerd.service
in_ct systemctl is-active --quiet shmbrokerd.service || fail "not active after restart"
pid2=$(in_ct systemctl show -p MainPID --value shmbrokerd.service)
[ "$pid2" != "$pid1" ] || fail "restart kept the same pid"
shm_before=$(in_ct "$ctl" --json list)

# Step 3: SIGKILL; Restart=on-failure brings it back, and it takes the channels over.
in_ct kill -KILL "$pid2"
pid3=
for _ in $(seq 100); do
	pid3=$(in_ct systemctl show -p MainPID --value shmbrokerd.service)
	[ "$pid3" != 0 ] && [ "$pid3" != "$pid2" ] && in_ct systemctl is-active --quiet shmbrokerd.service && break
	sleep 0.1
done
[ "$pid3" != 0 ] && [ "$pid3" != "$pid2" ] || fail "Restart= did not bring the daemon back"
in_ct journalctl -u shmbrokerd.service --no-pager | grep -q 'Took over channel demo' || fail "no take-over after SIGKILL"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "the channels changed across the crash restart"
[ "$(in_ct ipcs -m | grep -c '^0x')" -eq 2 ] || { in_ct ipcs; fail "objects doubled or lost after the crash"; }
out=$(in_ct runuser -u client -- /usr/local/bin/shmb-open frames fd) || fail "client open after restart: $out"

# Step 3b: a crash while the config has an error not yet reloaded. Restart= retries; once the
# admin fixes the file, the daemon must come back by itself and take the channels over (the
# socket must not end "failed" with its file removed after StartLimitBurst tries).
conf_file=$etc/shmbroker/shmbroker.json
in_ct cp "$conf_file" /root/good.json
in_ct sh -c "echo '{ broken' >$conf_file"
in_ct kill -KILL "$(in_ct systemctl show -p MainPID --value shmbrokerd.service)"
# Wait by state, not by time: past the default burst of 5 starts, or the socket gave up.
for _ in $(seq 300); do
	[ "$(in_ct systemctl is-active shmbrokerd.socket)" = failed ] && break
	[ "$(in_ct systemctl show -p NRestarts --value shmbrokerd.service)" -ge 7 ] && break
	sleep 0.1
done
[ "$(in_ct systemctl is-active shmbrokerd.socket)" = active ] ||
	fail "a crash with a broken config left shmbrokerd.socket $(in_ct systemctl show -p Result --value shmbrokerd.socket)"
in_ct cp /root/good.json "$conf_file"
for _ in $(seq 300); do in_ct systemctl is-active --quiet shmbrokerd.service && break; sleep 0.1; done
in_ct systemctl is-active --quiet shmbrokerd.service || fail "the daemon did not come back once the config was fixed"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "the channels were not taken over after the config was fixed"

# Step 4: stop: nothing of ours is left.
in_ct systemctl stop shmbrokerd.service shmbrokerd.socket
left=$(in_ct ipcs -m -s | grep -c '^0x' || true)
[ "$left" -eq 0 ] || { in_ct ipcs; fail "$left objects left after stop"; }
in_ct test ! -e /run/shmbroker/shmbroker.sock.wake || fail "wake-up FIFOs left after stop"
left=$(in_ct sh -c 'ls /dev/shm | grep -c shmbroker' || true)
[ "$left" -eq 0 ] || { in_ct ls -l /dev/shm; fail "$left posix files left after stop"; }
in_ct journalctl -u shmbrokerd.service --no-pager -o cat | tail -n 5 | sed 's/^/boot-test: journal: /'
say "PASS in $(( $(date +%s) - start )) s"
