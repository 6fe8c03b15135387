#!/bin/bash
# shmbrokerd under a real systemd: a minimal Debian root (debootstrap, from
# the machine's own apt mirror, cached between runs) booted with
# systemd-nspawn, with this build installed into it. Inside it:
#   1. enable shmbrokerd.socket; a client user opens a channel through the
#      socket (socket activation starts the service); status checks it; the
#      unit's status text (STATUS=) follows a client that holds a channel;
#   2. systemctl reload, then restart; a reload of a broken config leaves
#      the unit active and the channels as they were, and says why;
#   3. SIGKILL the daemon; Restart= brings it back and it takes the
#      unchanged channels over (same ids); with WatchdogSec=2s the daemon
#      lives on, and once its loop is stuck (SIGSTOP) the watchdog kills it
#      and the restart takes the channels over;
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
conf_file=$etc/shmbroker/shmbroker.json
unit_prop() { in_ct systemctl show -p "$1" --value shmbrokerd.service; }
# The daemon's last STATUS= as the unit shows it; STATUS= goes out at most once a second, so wait.
wait_status() {
	local s=
	for _ in $(seq 40); do s=$(unit_prop StatusText); [ "$s" = "$1" ] && return 0; sleep 0.1; done
	fail "the unit's status is \"$s\", not \"$1\" ($2)"
}
# How many lines of the unit's journal match an extended regex.
journal_count() { in_ct journalctl -u shmbrokerd.service --no-pager -o cat | grep -cE "$1" || true; }
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
# The unit's status text: the daemon's figures, following a client that holds a channel.
wait_status "3 channels, 0 clients, 0 holds" "with no client"
mkfifo "$work/hold"
in_ct runuser -u client -- /usr/local/bin/shmb-open demo hold <"$work/hold" >"$work/hold.out" 2>&1 &
hold_pid=$!
exec 3>"$work/hold"     # the client holds demo until this closes
wait_status "3 channels, 1 client, 1 hold" "with a client holding demo"
exec 3>&-
wait "$hold_pid" || fail "the holding client: $(cat "$work/hold.out")"
wait_status "3 channels, 0 clients, 0 holds" "once the client closed"
pid1=$(in_ct systemctl show -p MainPID --value shmbrokerd.service)
shm_before=$(in_ct "$ctl" --json list)

# Step 2: reload keeps the channels; restart makes new ones.
# Bounded, as every reload here: systemctl waits for a READY=1 the daemon might never send.
in_ct timeout 5 systemctl reload shmbrokerd.service || fail "systemctl reload: exit $?, the unit $(unit_prop ActiveState)/$(unit_prop SubState)"
in_ct systemctl is-active --quiet shmbrokerd.service || fail "not active after reload"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "reload of an unchanged config changed the channels"
in_ct journalctl -u shmbrokerd.service --no-pager | grep -q 'Reloaded' || fail "no reload in the journal"
# Refused by the daemon (exit 1, its message), not failing for another reason.
rc=0
out=$(in_ct runuser -u client -- "$ctl" reload 2>&1) || rc=$?
[ "$rc" -eq 1 ] && printf '%s\n' "$out" | grep -q 'admin group' || fail "a non-admin's reload: exit $rc: $out"
# A reload of a broken config: ExecReload= only signals, so wait for the daemon's answer in the
# journal; then the unit must be back to active (the daemon sent READY=1 after RELOADING=1), same
# pid, same channels, and its status the figures again, not "Reloading".
in_ct cp "$conf_file" /root/good.json
in_ct sh -c "echo '{ broken' >$conf_file"
failed=$(journal_count '^Reload failed, nothing changed: ')
restarts=$(unit_prop NRestarts)
# Bounded: systemctl waits for the unit to leave "reloading", which a daemon that never sends
# READY=1 after RELOADING=1 does not do.
in_ct timeout 5 systemctl reload shmbrokerd.service ||
	fail "systemctl reload of a broken config: exit $?, the unit $(unit_prop ActiveState)/$(unit_prop SubState)"
for _ in $(seq 50); do [ "$(journal_count '^Reload failed, nothing changed: ')" -gt "$failed" ] && break; sleep 0.1; done
[ "$(journal_count "^Reload failed, nothing changed: $conf_file")" -gt "$failed" ] || fail "no error in the journal for a broken config"
state=
for _ in $(seq 30); do
	state=$(unit_prop ActiveState)/$(unit_prop SubState)
	[ "$state" = active/running ] && break
	sleep 0.1
done
[ "$state" = active/running ] || fail "a failed reload left the unit $state"
[ "$(unit_prop MainPID)" = "$pid1" ] && [ "$(unit_prop NRestarts)" = "$restarts" ] || fail "a failed reload restarted the daemon"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "a failed reload changed the channels"
wait_status "3 channels, 0 clients, 0 holds" "after a failed reload"
# Mended, it reloads again.
reloaded=$(journal_count "^Reloaded $conf_file: ")
in_ct cp /root/good.json "$conf_file"
in_ct timeout 5 systemctl reload shmbrokerd.service || fail "systemctl reload of the mended config: exit $?"
for _ in $(seq 50); do [ "$(journal_count "^Reloaded $conf_file: ")" -gt "$reloaded" ] && break; sleep 0.1; done
[ "$(journal_count "^Reloaded $conf_file: 0 added, 0 removed, 0 changed, 3 kept")" -gt "$reloaded" ] ||
	fail "no reload once the config was mended"
in_ct systemctl is-active --quiet shmbrokerd.service || fail "not active after the mended reload"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "the mended reload changed the channels"
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

# Step 3c: the watchdog. With WatchdogSec=2s the daemon's pings keep it alive for well over 2 s;
# once its loop is stuck (SIGSTOP) the pings stop, systemd kills it (SIGABRT: a crash, no clean-up),
# Restart=on-failure brings it back and the start takes the channels over (CRASH RECLAIM).
mkdir -p "$root/etc/systemd/system/shmbrokerd.service.d"
printf '[Service]\nWatchdogSec=2s\n' >"$root/etc/systemd/system/shmbrokerd.service.d/watchdog.conf"
in_ct systemctl daemon-reload
in_ct systemctl restart shmbrokerd.service
[ "$(unit_prop WatchdogUSec)" = 2s ] || fail "the drop-in did not set WatchdogSec=2s: $(unit_prop WatchdogUSec)"
pid=$(unit_prop MainPID)
restarts=$(unit_prop NRestarts)
timeouts=$(journal_count 'Watchdog timeout')
took=$(journal_count '^Took over channel demo ')
shm_before=$(in_ct "$ctl" --json list)
sleep 6
[ "$(journal_count 'Watchdog timeout')" -eq "$timeouts" ] || fail "a watchdog timeout while the daemon was serving"
[ "$(unit_prop MainPID)" = "$pid" ] && [ "$(unit_prop NRestarts)" = "$restarts" ] ||
	fail "the daemon did not live 6 s under WatchdogSec=2s"
in_ct kill -STOP "$pid"
# At most 2 s to the timeout, RestartSec=2s to the new start.
new=
for _ in $(seq 100); do
	new=$(unit_prop MainPID)
	[ "$new" != 0 ] && [ "$new" != "$pid" ] && in_ct systemctl is-active --quiet shmbrokerd.service && break
	sleep 0.1
done
[ "$new" != 0 ] && [ "$new" != "$pid" ] || fail "a stuck daemon was not restarted ($(unit_prop ActiveState)/$(unit_prop SubState))"
[ "$(journal_count 'Watchdog timeout')" -gt "$timeouts" ] || fail "no watchdog timeout in the journal"
[ "$(unit_prop NRestarts)" -eq $((restarts + 1)) ] || fail "NRestarts went from $restarts to $(unit_prop NRestarts)"
[ "$(journal_count '^Took over channel demo ')" -gt "$took" ] || fail "no take-over after the watchdog"
[ "$(in_ct "$ctl" --json list)" = "$shm_before" ] || fail "the channels changed across the watchdog restart"
[ "$(in_ct ipcs -m | grep -c '^0x')" -eq 2 ] || { in_ct ipcs; fail "objects doubled or lost after the watchdog"; }

# Step 4: stop: nothing of ours is left.
in_ct systemctl stop shmbrokerd.service shmbrokerd.socket
left=$(in_ct ipcs -m -s | grep -c '^0x' || true)
[ "$left" -eq 0 ] || { in_ct ipcs; fail "$left objects left after stop"; }
in_ct test ! -e /run/shmbroker/shmbroker.sock.wake || fail "wake-up FIFOs left after stop"
left=$(in_ct sh -c 'ls /dev/shm | grep -c shmbroker' || true)
[ "$left" -eq 0 ] || { in_ct ls -l /dev/shm; fail "$left posix files left after stop"; }
in_ct journalctl -u shmbrokerd.service --no-pager -o cat | tail -n 5 | sed 's/^/boot-test: journal: /'
say "PASS in $(( $(date +%s) - start )) s"
