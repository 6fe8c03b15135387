#!/bin/sh
# Every example answers --help with its usage on stdout (exit 0), and takes
# no other option for a channel name (exit 2, usage on stderr).
set -u
status=0
for ex in raw-sender raw-receiver ring-sender ring-receiver zero-copy-sender zero-copy-receiver poll-receiver \
	  legacy-sender legacy-receiver broadcast-publisher broadcast-subscriber; do
	prog=examples/$ex
	out=$("$prog" --help) || { echo "$ex --help: exit $?"; status=1; continue; }
	case $out in "usage: $ex "*) ;; *) echo "$ex --help printed: $out"; status=1;; esac
	case $out in *SHMBROKER_SOCKET*|*ftok*) ;; *) echo "$ex --help does not say how it finds its channel"; status=1;; esac
	err=$("$prog" -x 1 2>&1 >/dev/null)
	rc=$?
	[ "$rc" -eq 2 ] || { echo "$ex -x: exit $rc, want 2 (an option is no channel name)"; status=1; }
	case $err in "usage: $ex "*) ;; *) echo "$ex -x said: $err"; status=1;; esac
done
exit $status
