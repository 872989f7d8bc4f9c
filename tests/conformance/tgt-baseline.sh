#!/usr/bin/env bash
# Runs the same conformance measurement against tgt (STGT from Debian) for comparison:
# a 256 MiB /dev/shm file LUN on 127.0.0.1:${TGT_PORT:-3262}, counted exactly as our own run.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${TGT_PORT:-3262}
iqn=iqn.2026-11.io.tandem.baseline:tgt
img=/dev/shm/tandem-tgt-baseline.img
cargo build -q --release -p tandem-tests --bin tandem-conformance
truncate -s 256M "$img"
# A control port of our own, so other tgtd instances on the machine are not touched.
ctl=${TGT_CONTROL_PORT:-23}
tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:$port >/tmp/tandem-tgt-baseline.log 2>&1 &
tgtd_pid=$!
# tgtd ignores SIGTERM while it has targets: delete the system first, then make sure.
trap 'tgtadm -C "$ctl" --op delete --mode system --force >/dev/null 2>&1; sleep 0.5; kill -9 $tgtd_pid 2>/dev/null; wait $tgtd_pid 2>/dev/null; rm -f "$img"' EXIT
sleep 1
tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$img"
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL
target/release/tandem-conformance "iscsi://127.0.0.1:$port/$iqn/1" --json "${1:-/tmp/tgt-conformance.json}"
