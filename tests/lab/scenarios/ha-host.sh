#!/bin/bash
# Scenario "ha-host" (runs inside the guest): a XenServer-like host, set up
# exactly as docs/hosts/ says, in front of a two-node Tandem cluster with a
# witness (tests/lab/cluster.sh): one portal link per node, two replicated
# devices, "hb" (heartbeat, node1 first) and "nm" (node majority, witness).
# The guest logs in to both nodes, checks that dm-multipath builds one map per
# device with one path per node (one ALUA target port group per node, the
# same VPD 0x83 identity), and runs verified fio on the maps while the host
# (asked through /out/ctl) breaks the cluster:
#   sync-cut  hb: every sync link cut silently, heartbeat alive: node2 (second)
#             must fail its path (NOT READY 04/0C, ALUA unavailable), I/O goes
#             on through node1; links back: node2 resynced, path active again
#   isolate   nm: node1 cut from node2 (nm's links) and from the witness: node1
#             stops serving, I/O goes on through node2; heal: node1 resynced
#   kill      hb and nm: kill -9 of node1's data plane (both devices); I/O goes
#             on through node2; node1's control service restarts it, resync
# Each case measures the longest I/O pause (completions of the dm device,
# sampled every 0.2 s), requires fio err=0 and byte-identical images (cmp on
# the host) after healing.
set -uo pipefail
source /lab/tests/lab/guest/common.sh
DOCS=/lab/docs/hosts
: "${LAB_HA_CASES:=sync-cut isolate kill}"

# host_do REQUEST...: ask the host (cluster requests can take a few seconds);
# prints the host's answer without the leading "ok"; fails on "err".
host_do() {
    local n i=0 ans
    n=$(( $(cat /tmp/lab_ctl_seq 2>/dev/null || echo 0) + 1 ))
    echo "$n" > /tmp/lab_ctl_seq
    echo "$*" > "/out/ctl/.req.$n" && mv "/out/ctl/.req.$n" "/out/ctl/req.$n"
    while [ ! -e "/out/ctl/ack.$n" ]; do
        i=$((i + 1)); [ $i -lt 1200 ] || { echo "no ack for '$*'" >&2; return 1; }
        sleep 0.05
    done
    ans=$(cat "/out/ctl/ack.$n")
    ans=${ans% *} # the host's timestamp
    case $ans in ok*) ans=${ans#ok}; echo "${ans# }" ;; *) echo "$ans" >&2; return 1 ;; esac
}
host_load() { host_do cluster load | awk '{print $1, $2, $3}'; }

section "boot"
say "kernel $(uname -r), cluster portals: $LAB_PORTALS; cases: $LAB_HA_CASES"
start_udevd
net_up
modprobe -a sd_mod scsi_dh_alua dm_multipath dm_round_robin iscsi_tcp
ip -br addr show | grep -v '^lo'

section "host configuration (docs/hosts/host-setup.sh configure)"
"$DOCS/host-setup.sh" configure "$LAB_INITIATOR_IQN" || fail "host-setup configure"
sed -i 's|^iscsid.startup = .*|iscsid.startup = /usr/sbin/iscsid|' /etc/iscsi/iscsid.conf
cp /lab/tests/lab/guest/multipath-base.conf /etc/multipath.conf
iscsid || fail "iscsid did not start"
multipathd || fail "multipathd did not start"
wait_for 10 "multipathd answers" multipathd show config || fail "multipathd not answering"
# The shipped stanza must be in effect, with the queueing that covers both
# nodes answering NOT READY for a moment (docs/hosts/README.md).
multipath -t 2>/dev/null | awk '/vendor "TANDEM"/ {p = 1} p {print} p && /^\t}/ {exit}' > /tmp/mp-effective
grep -q 'prio "alua"' /tmp/mp-effective && grep -q 'no_path_retry 12' /tmp/mp-effective ||
    { cat /tmp/mp-effective; fail "the Tandem device stanza is not in multipath's effective configuration"; }

section "discovery and login on both nodes (docs/hosts/host-setup.sh connect)"
"$DOCS/host-setup.sh" connect $LAB_PORTALS || fail "discovery/login"
# node/device -> sd disk, from the sessions ("Target: iqn...:node1-hb").
session_disks() {
    iscsiadm -m session -P 3 2>/dev/null | awk '
        /Target: / { split($2, a, ":"); t = a[2] }
        /Attached scsi disk/ { print t, $4 }'
}
disk_of() { session_disks | awk -v t="$1" '$1 == t {print $2}'; }
wait_for 60 "4 disks attached (2 devices x 2 nodes)" test "$(session_disks | wc -l)" -ge 4 ||
    { iscsiadm -m session -P 3; fail "disks: $(session_disks | tr '\n' ' ')"; }
udevadm settle -t 20 || true
map_of_disk() { local h; h=$(ls "/sys/block/$1/holders" 2>/dev/null | head -n1); [ -n "$h" ] && cat "/sys/block/$h/dm/name"; }
maps_complete() {
    local dev m1 m2
    for dev in hb nm; do
        m1=$(map_of_disk "$(disk_of "node1-$dev")") m2=$(map_of_disk "$(disk_of "node2-$dev")")
        [ -n "$m1" ] && [ "$m1" = "$m2" ] || return 1
    done
}
wait_for 90 "one map per device holding both nodes' paths" maps_complete ||
    { multipath -ll; multipath -v3 2>&1 | tail -n 40; fail "multipath maps incomplete"; }
session_disks
declare -A MAP DM P1 P2
for dev in hb nm; do
    P1[$dev]=$(disk_of "node1-$dev") P2[$dev]=$(disk_of "node2-$dev")
    MAP[$dev]=$(map_of_disk "${P1[$dev]}")
    DM[$dev]=$(basename "$(readlink -f "/dev/mapper/${MAP[$dev]}")")
done
[ "${MAP[hb]}" != "${MAP[nm]}" ] || fail "both devices in one map"
[ "$(dmsetup ls --target multipath | grep -c .)" = 2 ] || fail "expected exactly two multipath maps"
sleep 1
multipath -ll

section "identity and ALUA per path"
for dev in hb nm; do
    ids=() tpgs=()
    for p in "${P1[$dev]}" "${P2[$dev]}"; do
        id=$(/lib/udev/scsi_id -g -u -d "/dev/$p")
        tpg=$(sg_vpd -p di "/dev/$p" 2>/dev/null | awk '/Target port group:/ {print $NF; exit}')
        say "$dev $p: scsi_id=$id target port group=${tpg:-?}"
        ids+=("$id") tpgs+=("${tpg:-?}")
    done
    [ "${ids[0]}" = "${ids[1]}" ] || fail "$dev: the two nodes report different VPD 0x83 identities"
    [ "${ids[0]}" = "${MAP[$dev]}" ] || fail "$dev: map ${MAP[$dev]} is not named by the SCSI id"
    [ "${tpgs[0]}" != "${tpgs[1]}" ] && [ "${tpgs[0]}" != "?" ] ||
        fail "$dev: expected one target port group per node, got ${tpgs[*]}"
    sg_rtpg -d "/dev/${P1[$dev]}" 2>&1 | sed 's/^/  /'
done

# ---- measuring helpers ----

# path_line DISK: "state checker prio" of a path as multipathd sees it.
path_line() { multipathd show paths format '%d %t %T %p' 2>/dev/null | awk -v d="$1" '$1 == d {print $2, $3, $4}'; }
path_failed() { case $(path_line "$1") in active\ ready*) return 1 ;; *) return 0 ;; esac; }
# path_optimized DISK: active, ready, ALUA priority 50 (active/optimized).
path_optimized() { [ "$(path_line "$1")" = "active ready 50" ]; }
# alua_state DISK: the asymmetric access state of the path's own port group
# (RTPG through that path).
alua_state() {
    local tpg
    tpg=$(sg_vpd -p di "/dev/$1" 2>/dev/null | awk '/Target port group:/ {print $NF; exit}')
    sg_rtpg -d "/dev/$1" 2>/dev/null | awk -v g="$tpg" '
        /target port group id/ { cur = $6; sub(/,$/, "", cur) }
        /asymmetric access state/ && cur == g { sub(/.*: */, ""); print; exit }'
}
not_ready_logged() { dmesg | grep -E "\[?$1\]?" | grep -qiE 'unavailable state|Not Ready'; }

# pauses LOG FROM TO REF: from fio's completion log (--write_lat_log with
# --log_unix_epoch: "ms, latency, direction, ..." per I/O, stamped at its
# completion), every gap of more than 1 s between two completions that ended
# in (FROM, TO] as "seconds@start" (start relative to REF), longest first.
# The first is the pause. Gaps are measured in fio's own completion times, so
# the guest's slow polling loops (TCG on a loaded machine) do not widen them.
pauses() {
    sort -t, -k1,1n "$1" | awk -F, -v c="$2" -v e="$3" -v r="$4" '
        { t = $1 / 1000 }
        last != "" && t > c && t <= e && t - last > 1 { printf "%.1f@%+.1f\n", t - last, last - r }
        { last = t }' | sort -t@ -k1,1rn | tr '\n' ' '
}

# path_watch DISK: every 0.5 s "time state checker prio"; the first time the
# path is not active, the ALUA state through it is appended (RTPG).
path_watch() {
    local l alua=
    while :; do
        l=$(path_line "$1")
        if [ -z "$alua" ] && [ -n "$l" ] && [ "${l%% *}" != active ]; then
            alua=$(alua_state "$1"); echo "$EPOCHREALTIME $l ${alua:-?}"
        else
            echo "$EPOCHREALTIME $l"
        fi
        sleep 0.5
    done
}

first_gap() { local g=${1%% *}; echo "${g%@*}" | grep . || echo "<1"; }

declare -A FIO_PID WATCH_PID VERIFIED
fio_start() { # DEV
    local dev=$1
    rm -f "/tmp/lat-${dev}"_*.log
    fio --name="ha-$dev" --write_lat_log="/tmp/lat-$dev" --log_unix_epoch=1 --filename="/dev/mapper/${MAP[$dev]}" --direct=1 --ioengine=libaio \
        --rw=randwrite --bs=64k --iodepth=8 --size="$LAB_FIO_SIZE" \
        --time_based --runtime="$LAB_FIO_SECONDS" \
        --verify=crc32c --verify_backlog=64 --verify_fatal=1 --do_verify=1 \
        > "/tmp/fio-$dev.out" 2>&1 &
    FIO_PID[$dev]=$!
}
# fio_finish DEV: waits; fails unless err=0 and blocks were verified.
fio_finish() {
    local dev=$1 rc
    wait "${FIO_PID[$dev]}"; rc=$?
    grep -E 'err=|WRITE:|READ:|issued rwts' "/tmp/fio-$dev.out" | sed 's/^/  /'
    [ "$rc" = 0 ] && grep -q 'err= 0' "/tmp/fio-$dev.out" || { cat "/tmp/fio-$dev.out"; fail "fio on $dev: rc $rc"; }
    read -r FIO_VERIFIED FIO_WRITTEN < <(sed -n 's/.*issued rwts: total=\([0-9]*\),\([0-9]*\),.*/\1 \2/p' "/tmp/fio-$dev.out")
    [ "${FIO_VERIFIED:-0}" -gt 0 ] || fail "fio on $dev verified nothing"
    VERIFIED[$dev]=$FIO_VERIFIED
    say "fio $dev: err=0, wrote $FIO_WRITTEN and verified $FIO_VERIFIED blocks of 64 KiB"
}
sleep_until() { local t; t=$(awk -v a="$1" -v n="$(now)" 'BEGIN { d = a - n; print (d > 0 ? d : 0) }'); sleep "$t"; }

# settle DEV...: after the last failure: both replicas synchronized (host),
# every path active/optimized again, the image files identical (host).
settle() {
    local dev t0=$(now)
    for dev in "$@"; do
        wait_for 180 "$dev synchronized on both nodes" host_do_yes synced "$dev" ||
            fail "$dev not synchronized again: $(host_do cluster replicas "$dev")"
        say "$dev: both synchronized (checked $(elapsed "$t0") s after fio ended)"
        wait_for 120 "$dev: both paths active/optimized" both_optimized "$dev" ||
            { multipath -ll; fail "$dev: a path did not return to active/optimized"; }
        say "$dev: both paths active/optimized (checked $(elapsed "$t0") s after fio ended)"
        blockdev --flushbufs "/dev/mapper/${MAP[$dev]}"
        for p in "${P1[$dev]}" "${P2[$dev]}"; do sg_sync "/dev/$p" 2>/dev/null || true; done
        CMP=$(host_do cluster cmp "$dev") || fail "$dev: the two nodes' images differ"
        say "$dev: images $CMP"
    done
}
host_do_yes() { [ "$(host_do cluster "$@")" = yes ]; }
both_optimized() { path_optimized "${P1[$1]}" && path_optimized "${P2[$1]}"; }

RESULTS=()
# run_case NAME DEVS FAIL_REQ LOSER_PATH_OF HEAL_REQ PAUSE_LIMIT
run_case() {
    local name=$1 devs=$2 fail_req=$3 loser=$4 heal_req=$5 limit=$6 dev t_start t_fail t_heal
    section "case $name: fio on $devs; '$fail_req' at +${LAB_FAIL_AFTER}s${heal_req:+, '$heal_req' at +${LAB_RESTORE_AFTER}s}"
    say "host load before: $(host_load)"
    dmesg -c > /dev/null
    t_start=$(now)
    for dev in $devs; do
        fio_start "$dev"
        path_watch "$(eval echo "\${$loser[$dev]}")" > "/tmp/paths-$dev.log" &
        WATCH_PID[$dev]=$!
    done
    sleep_until "$(awk -v a="$t_start" -v d="$LAB_FAIL_AFTER" 'BEGIN { printf "%.3f", a + d }')"
    for dev in $devs; do kill -0 "${FIO_PID[$dev]}" 2>/dev/null || { cat "/tmp/fio-$dev.out"; fail "fio ended before the failure"; }; done
    # shellcheck disable=SC2086
    host_do $fail_req > /tmp/fail-answer || fail "host could not do '$fail_req'"
    t_fail=$(now)
    say "host did '$fail_req' $(cat /tmp/fail-answer)"
    for dev in $devs; do say "$dev replicas: $(host_do cluster replicas "$dev")"; done
    if [ -n "$heal_req" ]; then
        sleep_until "$(awk -v a="$t_start" -v d="$LAB_RESTORE_AFTER" 'BEGIN { printf "%.3f", a + d }')"
        # shellcheck disable=SC2086
        host_do $heal_req > /dev/null || fail "host could not do '$heal_req'"
        t_heal=$(now)
        say "'$heal_req' at +$(elapsed "$t_start") s"
        for dev in $devs; do fio_finish "$dev"; done
    else
        # Nothing to heal: the node's control service restarts its data plane.
        for dev in $devs; do fio_finish "$dev"; done
        t_heal=$(now)
    fi
    multipath -ll
    local sense pause_fail pause_heal lp seen gaps_fail gaps_heal
    for dev in $devs; do
        kill "${WATCH_PID[$dev]}" 2>/dev/null
        lp=$(eval echo "\${$loser[$dev]}")
        seen=$(awk -v c="$t_fail" '$1 > c && $2 != "active" { printf "%s %s/%s prio %s, ALUA %s %s %s", $1 - c, $2, $3, $4, $5, $6, $7; exit }' "/tmp/paths-$dev.log")
        if [ -n "$seen" ]; then
            read -r seen_at seen_state <<< "$seen"
            say "$dev: node path $lp failed +$(printf %.1f "$seen_at") s after '$fail_req': $seen_state"
        else
            seen_state="stayed active"
            say "$dev: node path $lp stayed active (iSCSI session recovery hid the failure from dm-multipath)"
            [ "$name" = kill ] || { cat "/tmp/paths-$dev.log"; fail "$dev: the losing node's path $lp stayed active"; }
        fi
        sense=no
        not_ready_logged "$lp" && sense=yes
        dmesg | grep -E "\b$lp\b" | grep -iE 'sense|unavailable|not ready' | sort -u | head -n 4 | sed 's/^/  /'
        # From 2 s before the guest saw the host's answer: the host acted
        # before answering, and a starved guest may see the answer late.
        gaps_fail=$(pauses "/tmp/lat-${dev}_clat.1.log" "$(awk -v t="$t_fail" 'BEGIN { printf "%.3f", t - 2 }')" "$t_heal" "$t_fail")
        gaps_heal=$(pauses "/tmp/lat-${dev}_clat.1.log" "$t_heal" 9999999999 "$t_heal")
        pause_fail=$(first_gap "$gaps_fail") pause_heal=$(first_gap "$gaps_heal")
        say "MEASURE case=$name dev=$dev pause_after_failure=${pause_fail}s pause_after_heal=${pause_heal}s (every gap > 1 s as seconds@start, relative to when the guest saw the host's answer: ${gaps_fail:-none}; after the heal: ${gaps_heal:-none}) not_ready_sense_logged=$sense fio_err=0 verified=${VERIFIED[$dev]}"
        awk -v p="${pause_fail#<}" -v l="$limit" 'BEGIN { exit !(p <= l) }' ||
            fail "$dev: I/O paused ${pause_fail}s after '$fail_req' (target <= ${limit}s)"
        [ "$name" = kill ] || [ "$sense" = yes ] || fail "$dev: no NOT READY sense logged for $lp"
        RESULTS+=("$name $dev loser=$lp path: $seen_state; pause=${pause_fail}s heal_pause=${pause_heal}s not_ready=$sense fio=err=0")
    done
    settle $devs
    say "host load after: $(host_load)"
}

for c in $LAB_HA_CASES; do
    case $c in
        sync-cut) run_case sync-cut hb "cluster cut-sync" P2 "cluster restore-sync" "$LAB_MAX_PAUSE_SILENT" ;;
        isolate)  run_case isolate nm "cluster isolate node1" P1 "cluster heal node1" "$LAB_MAX_PAUSE_SILENT" ;;
        kill)     run_case kill "hb nm" "cluster kill-dataplane node1" P1 "" "$LAB_MAX_PAUSE_KILL" ;;
        *) fail "unknown case $c" ;;
    esac
done

section "summary"
for r in "${RESULTS[@]}"; do say "RESULT $r"; done
say "PASS: cases $LAB_HA_CASES; one map per device with a path per node, fio err=0 throughout, images identical after every heal"
