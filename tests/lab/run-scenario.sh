#!/bin/bash
# Runs one lab scenario: a Debian guest under QEMU (TCG) acting as an iSCSI
# host, wired by TAP links to the target under test, which runs inside a
# network namespace of its own. Exit code 0 = scenario passed.
#
#   tests/lab/run-scenario.sh xen-host
#
# Environment (all optional):
#   LAB_TARGET=tandem|tgt   target under test (default tandem)
#   LAB_TIMEOUT=600         seconds before the guest is killed and the run fails
#   LAB_CONSOLE=1           also stream the guest's serial console to stderr
#   LAB_RUN_DIR=DIR         keep logs here (default: a new /tmp/tandem-lab.* dir)
#   LAB_SMP=2 LAB_MEM=1024  guest vCPUs and memory (MiB)
#   LAB_CACHE=DIR           guest image cache (see build-image.sh)
#   LAB_CLUSTER=1           two replicated Tandem nodes and a witness instead of
#                           one target (tests/lab/cluster.sh; scenario ha-host sets it)
#   LAB_TANDEM_BIN_DIR=DIR  with LAB_CLUSTER=1: prebuilt tandem, tandem-control and
#                           tandem-dataplane (default: cargo build --release)
# Scenario parameters: tests/lab/scenarios/NAME.conf.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$LAB_DIR/targets.sh"
source "$LAB_DIR/cluster.sh"

SCENARIO=${1:-}
[ -n "$SCENARIO" ] && [ -f "$LAB_DIR/scenarios/$SCENARIO.sh" ] ||
    die "usage: $0 SCENARIO   (one of: $(cd "$LAB_DIR/scenarios" && ls *.sh | sed 's/\.sh$//' | tr '\n' ' '))"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, TAP devices)"
# shellcheck disable=SC1090
[ -f "$LAB_DIR/scenarios/$SCENARIO.conf" ] && source "$LAB_DIR/scenarios/$SCENARIO.conf"
: "${LAB_TARGET:=tandem}" "${LAB_TIMEOUT:=600}" "${LAB_SMP:=2}" "${LAB_MEM:=1024}"
: "${LAB_PORTAL_LINKS:=2}" "${LAB_CLUSTER:=0}"
export LAB_TARGET

T_START=$(date +%s)
IMG=$(bash "$LAB_DIR/build-image.sh")
T_IMAGE=$(date +%s)

RUN=${LAB_RUN_DIR:-$(mktemp -d /tmp/tandem-lab.XXXXXX)}
mkdir -p "$RUN"
OUT="$RUN/out"
rm -rf "$OUT"; mkdir -p "$OUT/ctl"
NS="tlab-$$"
NODE="tlab-$$-node1"
TARGET_IQN="iqn.2026-11.io.tandem:lab.$SCENARIO"
QEMU_PID='' TAIL_PID=''

cleanup() {
    local rc=$?
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
    target_stop
    cluster_stop
    [ -n "$TAIL_PID" ] && kill "$TAIL_PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null || true
    ip netns del "$NODE" 2>/dev/null || true
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Topology: two namespaces. "$NS" is the storage network: per portal link N
# the guest's NIC ethN is the TAP device tapN, plugged into a bridge brN (the
# switch). "$NODE" is the storage node: its port portalN (10.77.N.1/24) is a
# veth whose peer swN is the bridge's other port. Cutting link portalN takes
# the node's port down: the guest keeps its carrier and sees silence, as with
# a failed switch port or node NIC. (Downing the TAP itself does not work:
# QEMU's virtio-net never recovers from the EIOs.) No default routes: nothing
# can leave the namespaces.
# Namespaces of earlier runs that were killed (their trap never ran).
for old in $(ip netns list | awk '{print $1}' | grep -E '^tlab-[0-9]+(-node1|-node2|-wit)?$' || true); do
    pid=${old#tlab-}; pid=${pid%-*}
    [ -d "/proc/$pid" ] && continue
    for p in $(ip netns pids "$old" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$old" 2>/dev/null && log "removed stale namespace $old"
done
if [ "$LAB_CLUSTER" = 1 ]; then
    # Two nodes and a witness (tests/lab/cluster.sh), one portal link per node.
    [ "$LAB_TARGET" = tandem ] || die "LAB_CLUSTER=1 needs LAB_TARGET=tandem"
    LAB_PORTAL_LINKS=2
    cluster_start "$NS" "$RUN"
    read -r -a portals <<< "$CL_PORTALS"
    read -r -a guest_addrs <<< "$CL_GUEST_ADDRS"
else
ip netns add "$NS"
ip netns add "$NODE"
ip -n "$NS" link set lo up
ip -n "$NODE" link set lo up
ip netns exec "$NS" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
portals=() guest_addrs=()
for ((i = 0; i < LAB_PORTAL_LINKS; i++)); do
    ip -n "$NS" link add "br$i" type bridge forward_delay 0
    ip -n "$NS" tuntap add dev "tap$i" mode tap
    ip -n "$NS" link add "sw$i" type veth peer name "portal$i" netns "$NODE"
    ip -n "$NS" link set "tap$i" master "br$i"
    ip -n "$NS" link set "sw$i" master "br$i"
    ip -n "$NODE" addr add "10.77.$i.1/24" dev "portal$i"
    for dev in "br$i" "tap$i" "sw$i"; do ip -n "$NS" link set "$dev" up; done
    ip -n "$NODE" link set "portal$i" up
    portals+=("10.77.$i.1:3260")
    guest_addrs+=("eth$i=10.77.$i.2/24")
done

target_start "$NODE" "$RUN" "$TARGET_IQN" "${portals[@]}"
fi
T_TARGET=$(date +%s)

{
    echo "LAB_TARGET=$LAB_TARGET"
    echo "LAB_PORTALS='${portals[*]}'"
    echo "LAB_GUEST_ADDRS='${guest_addrs[*]}'"
    echo "LAB_TARGET_IQN=$TARGET_IQN"
    echo "LAB_INITIATOR_IQN=iqn.2026-11.io.tandem:lab.host1"
    for v in $(compgen -v LAB_ | grep -v -e '^LAB_DIR$' -e '^LAB_TARGET$'); do
        printf '%s=%q\n' "$v" "${!v}"
    done
} > "$OUT/env"

netargs=()
for ((i = 0; i < LAB_PORTAL_LINKS; i++)); do
    netargs+=(-netdev "tap,id=n$i,ifname=tap$i,script=no,downscript=no"
              -device "virtio-net-pci,netdev=n$i,mac=52:54:00:77:0$i:02")
done
: > "$RUN/console.log"
log "run dir $RUN; guest console: $RUN/console.log"
ip netns exec "$NS" qemu-system-x86_64 \
    -name "tandem-lab-$SCENARIO" -accel tcg -smp "$LAB_SMP" -m "$LAB_MEM" \
    -nodefaults -display none -no-reboot \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
    -append "console=ttyS0 net.ifnames=0 panic=-1 quiet loglevel=4 lab.scenario=$SCENARIO" \
    -drive "file=$IMG/root.img,if=virtio,format=raw,snapshot=on" \
    -virtfs "local,path=$REPO_DIR,mount_tag=lab,security_model=none,readonly=on" \
    -virtfs "local,path=$OUT,mount_tag=out,security_model=none" \
    "${netargs[@]}" \
    -serial "file:$RUN/console.log" \
    -monitor "unix:$RUN/monitor.sock,server,nowait" \
    > "$RUN/qemu.log" 2>&1 &
QEMU_PID=$!
if [ -n "${LAB_CONSOLE:-}" ]; then
    tail -n +1 -f "$RUN/console.log" >&2 &
    TAIL_PID=$!
fi

# Serve the guest's link requests (out/ctl/req.N -> out/ctl/ack.N) until it
# powers off, or time out.
deadline=$(( $(date +%s) + LAB_TIMEOUT ))
T_BOOTED=
timed_out=
while kill -0 "$QEMU_PID" 2>/dev/null; do
    for req in "$OUT"/ctl/req.*; do
        [ -e "$req" ] || continue
        n=${req##*.}
        [ -e "$OUT/ctl/ack.$n" ] && continue
        rest=
        read -r action link rest < "$req" || true
        case "$action:$link" in
            cluster:*)            r=$(cluster_request $link "${rest:-}") ;;
            cut:portal[0-9]*)     ip -n "$NODE" link set "$link" down && r=ok || r="err cut $link" ;;
            restore:portal[0-9]*) ip -n "$NODE" link set "$link" up && r=ok || r="err restore $link" ;;
            diag:*) { for n in $(ip netns list | awk '{print $1}' | grep -E "^$NS(-|\$)"); do echo "== $n"; ip -n "$n" -s link; ip -n "$n" addr
                          ip -n "$n" route; ip -n "$n" neigh; ip netns exec "$n" ss -tan; done
                      bridge -n "$NS" fdb show; } > "$RUN/host-diag.txt" 2>&1
                    r=ok ;;
            *) r="err unknown request '$action $link'" ;;
        esac
        log "guest asked: $action $link -> $r"
        echo "$r $(date +%s.%N)" > "$OUT/ctl/.ack.$n" && mv "$OUT/ctl/.ack.$n" "$OUT/ctl/ack.$n"
    done
    if [ -z "$T_BOOTED" ] && grep -q LAB-BOOTED "$RUN/console.log" 2>/dev/null; then
        T_BOOTED=$(date +%s)
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        timed_out=1
        log "timeout after ${LAB_TIMEOUT}s: killing the guest"
        kill "$QEMU_PID" 2>/dev/null || true
        break
    fi
    sleep 0.1
done
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
T_END=$(date +%s)

echo "===== scenario $SCENARIO output (target: $LAB_TARGET) ====="
if [ -s "$OUT/output.log" ]; then cat "$OUT/output.log"; else echo "(no output; console tail:)"; tail -n 60 "$RUN/console.log"; fi
rc=1
if [ -n "$timed_out" ]; then
    echo "LAB: TIMEOUT after ${LAB_TIMEOUT}s"
    rc=124
elif [ -s "$OUT/rc" ]; then
    rc=$(cat "$OUT/rc")
elif grep -q '^LAB-RESULT .* rc=[0-9]' "$RUN/console.log"; then
    # The 9p share failed; the guest's console marker still has the verdict.
    rc=$(sed -n 's/^LAB-RESULT .* rc=\([0-9]*\).*/\1/p' "$RUN/console.log" | tail -n1)
    echo "LAB: exit code taken from the console marker (no out/rc)"
else
    echo "LAB: the guest left no exit code (crash?); console tail:"
    tail -n 40 "$RUN/console.log"
fi
echo "===== timings: image $((T_IMAGE - T_START))s, target build+start $((T_TARGET - T_IMAGE))s, boot $(( ${T_BOOTED:-$T_END} - T_TARGET ))s, scenario $(( T_END - ${T_BOOTED:-$T_END} ))s, total $((T_END - T_START))s ====="
echo "LAB: scenario $SCENARIO with target $LAB_TARGET: $([ "$rc" = 0 ] && echo PASS || echo "FAIL (rc $rc)"); logs in $RUN"
exit "$rc"
