#!/bin/bash
# Scenario "xen-host" (runs inside the guest): a XenServer-like host sets up
# open-iscsi and dm-multipath exactly as docs/hosts/ says, logs in to every
# portal of a single Tandem node, checks that multipath merged all paths into
# one map with one SCSI identity, runs a verified fio while one portal's link
# is cut, and checks that the path comes back after the link is restored.
set -uo pipefail
source /lab/tests/lab/guest/common.sh
DOCS=/lab/docs/hosts
NPORTALS=$(wc -w <<< "$LAB_PORTALS")

section "boot"
say "kernel $(uname -r), target=$LAB_TARGET, portals: $LAB_PORTALS"
start_udevd
net_up
modprobe -a sd_mod scsi_dh_alua dm_multipath dm_round_robin iscsi_tcp
ip -br addr show | grep -v '^lo'

section "host configuration (docs/hosts/host-setup.sh configure)"
"$DOCS/host-setup.sh" configure "$LAB_INITIATOR_IQN" || fail "host-setup configure"
# Lab only: no systemd here, so iscsiadm must not try to socket-activate.
sed -i 's|^iscsid.startup = .*|iscsid.startup = /usr/sbin/iscsid|' /etc/iscsi/iscsid.conf
cp /lab/tests/lab/guest/multipath-base.conf /etc/multipath.conf
cat /etc/iscsi/initiatorname.iscsi
grep -E '^(node.startup|node.session.iscsi.(First|Max)BurstLength|node.session.timeo.replacement_timeout|node.conn\[0\].timeo.noop_out)' /etc/iscsi/iscsid.conf
iscsid || fail "iscsid did not start"
multipathd || fail "multipathd did not start"
wait_for 10 "multipathd answers" multipathd show config || fail "multipathd not answering"
# The stanza must be in multipath's effective configuration (a parse error
# in multipath.conf drops sections silently).
multipath -t 2>/dev/null | awk '/vendor "TANDEM"/ {p = 1} p {print} p && /^\t}/ {exit}' > /tmp/mp-effective
grep -q 'prio "alua"' /tmp/mp-effective && grep -q 'path_grouping_policy "group_by_prio"' /tmp/mp-effective ||
    { multipath -t 2>&1 | head -n 40; fail "the Tandem device stanza is not in multipath's effective configuration"; }
echo "effective multipath device config:"; sed 's/^/  /' /tmp/mp-effective

section "discovery and login on every portal (docs/hosts/host-setup.sh connect)"
"$DOCS/host-setup.sh" connect $LAB_PORTALS || fail "discovery/login"

nsessions() { iscsiadm -m session 2>/dev/null | grep -c .; }
wait_for 30 "$NPORTALS sessions" test "$(nsessions)" -ge "$NPORTALS" || fail "sessions: $(nsessions) of $NPORTALS"
# All SCSI disks of the sessions.
sessions_disks() { iscsiadm -m session -P 3 2>/dev/null | awk '/Attached scsi disk/ {print $4}'; }
wait_for 30 "$NPORTALS disks attached" test "$(sessions_disks | wc -l)" -ge "$NPORTALS" || fail "disks"
udevadm settle -t 20 || true
maps() { dmsetup ls --target multipath 2>/dev/null | awk '$1 != "No" {print $1}'; }
map_paths() { ls "/sys/block/$(basename "$(readlink -f "/dev/mapper/$1")")/slaves" 2>/dev/null; }
first_map_full() { local m; m=$(maps | head -n1); [ -n "$m" ] && [ "$(map_paths "$m" | wc -l)" -ge "$NPORTALS" ]; }
wait_for 60 "multipath map with $NPORTALS paths" first_map_full || { multipath -ll; multipath -v3 2>&1 | tail -n 40; fail "no complete multipath map"; }

section "sessions"
iscsiadm -m session
iscsiadm -m session -P 3 | grep -E 'Current Portal|Iface Initiatorname|FirstBurstLength|MaxBurstLength|Attached scsi disk|iSCSI Session State'

section "multipath -ll"
sleep 1
multipath -ll
MAP=$(maps | head -n1)
NMAPS=$(maps | wc -l)
PATHS=$(map_paths "$MAP" | sort | tr '\n' ' ')
DM=$(basename "$(readlink -f "/dev/mapper/$MAP")")
[ "$NMAPS" = 1 ] || fail "expected exactly one multipath map, found $NMAPS"
[ "$(wc -w <<< "$PATHS")" = "$NPORTALS" ] || fail "map $MAP has paths '$PATHS', expected $NPORTALS"
[ "$(sessions_disks | sort | tr '\n' ' ')" = "$PATHS" ] || fail "map paths '$PATHS' != session disks '$(sessions_disks | tr '\n' ' ')'"
say "one map $MAP ($DM) holding every path: $PATHS"

section "scsi_id per path"
ids=()
for p in $PATHS; do
    id=$(/lib/udev/scsi_id -g -u -d "/dev/$p")
    printf '%s  scsi_id=%s  vendor=%s product=%s\n' "$p" "$id" \
        "$(sed 's/ *$//' "/sys/block/$p/device/vendor")" "$(sed 's/ *$//' "/sys/block/$p/device/model")"
    ids+=("$id")
done
[ "$(printf '%s\n' "${ids[@]}" | sort -u | wc -l)" = 1 ] || fail "paths report different SCSI identifiers"
[ "${ids[0]}" = "$MAP" ] || fail "map name $MAP is not the SCSI id ${ids[0]}"
say "SCSIid (for xe sr-create device-config:SCSIid=) = ${ids[0]}"

section "fio with verify; link ${LAB_CUT_LINK} cut at +${LAB_CUT_AFTER}s"
# Sample the map's completed-I/O counters to measure the stall.
sampler() {
    local r1 w1 rest
    while :; do
        read -r r1 _ _ _ w1 rest < "/sys/block/$DM/stat"
        echo "$EPOCHREALTIME $((r1 + w1))"
        sleep 0.2
    done
}
sampler > /tmp/iostat.log &
SAMPLER=$!
fio --name=verify --filename="/dev/mapper/$MAP" --direct=1 --ioengine=libaio \
    --rw=randwrite --bs=64k --iodepth=16 --size="$LAB_FIO_SIZE" \
    --time_based --runtime="$LAB_FIO_SECONDS" \
    --verify=crc32c --verify_backlog=64 --verify_fatal=1 --do_verify=1 \
    > /tmp/fio.out 2>&1 &
FIO=$!
sleep "$LAB_CUT_AFTER"
kill -0 $FIO 2>/dev/null || { cat /tmp/fio.out; fail "fio ended before the cut"; }
T_CUT=$(lab_ctl cut "$LAB_CUT_LINK") || fail "host could not cut $LAB_CUT_LINK"
say "link $LAB_CUT_LINK cut"
wait $FIO; FIO_RC=$?
kill $SAMPLER 2>/dev/null
cat /tmp/fio.out
say "fio exit code $FIO_RC"
# Longest pause in completions after the cut, and when I/O resumed.
read -r GAP_FROM GAP_TO < <(awk -v c="$T_CUT" '
    { t = $1; n = $2 }
    prev_n != "" && n != prev_n {             # a completion happened in (prev_t, t]
        if (t > c && last_change != "" && t - last_change > best) { best = t - last_change; from = last_change; to = t }
        last_change = t
    }
    prev_n == "" { last_change = t }
    { prev_n = n; prev_t = t }
    END { if (best == "") { from = c; to = c }; printf "%.2f %.2f\n", from - c, to - c }' /tmp/iostat.log)
say "I/O pause after the cut: from +${GAP_FROM}s to +${GAP_TO}s; fio resumed $GAP_TO s after the link cut"
multipath -ll
[ "$FIO_RC" = 0 ] || fail "fio failed while $LAB_CUT_LINK was cut"
grep -q 'err= 0' /tmp/fio.out || fail "fio reported errors"
read -r VERIFIED WRITTEN < <(sed -n 's/.*issued rwts: total=\([0-9]*\),\([0-9]*\),.*/\1 \2/p' /tmp/fio.out)
say "fio wrote ${WRITTEN:-?} blocks of 64 KiB and read back and verified ${VERIFIED:-?} of them (crc32c) while the path failed over"
[ "${VERIFIED:-0}" -gt 0 ] || fail "fio verified nothing"

section "link ${LAB_CUT_LINK} restored"
T_RESTORE=$(lab_ctl restore "$LAB_CUT_LINK") || fail "host could not restore $LAB_CUT_LINK"
all_active() {
    [ "$(multipathd show paths format '%d %t %T' 2>/dev/null | awk 'NR > 1 && $2 == "active" && $3 == "ready"' | wc -l)" -ge "$NPORTALS" ]
}
wait_for 120 "all $NPORTALS paths active again" all_active || { multipath -ll; fail "path did not return to active"; }
say "paths active $(elapsed "$T_RESTORE") s after the restore"
iscsiadm -m session
multipath -ll

section "fio with verify over all paths again"
declare -A before
for p in $PATHS; do read -r a _ _ _ b _ < "/sys/block/$p/stat"; before[$p]=$((a + b)); done
fio --name=verify2 --filename="/dev/mapper/$MAP" --direct=1 --ioengine=libaio \
    --rw=randwrite --bs=64k --iodepth=16 --size=32M \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --minimal > /tmp/fio2.out 2>&1 || { cat /tmp/fio2.out; fail "second fio failed"; }
for p in $PATHS; do
    read -r a _ _ _ b _ < "/sys/block/$p/stat"
    say "path $p carried $(( a + b - before[$p] )) I/Os"
    [ $(( a + b - before[$p] )) -gt 0 ] || fail "path $p carried no I/O after the restore"
done

section "summary"
say "PASS: $NPORTALS sessions, one map $MAP, same SCSIid on every path, fio verified $VERIFIED blocks (rc $FIO_RC) through the cut of $LAB_CUT_LINK, I/O resumed ${GAP_TO}s after the cut, path active again after restore"
