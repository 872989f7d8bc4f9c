#!/usr/bin/env bash
# Userspace TCP (smoltcp on a TAP) against kernel TCP, same target process, same namespace.
#
#   perf/utcp-vs-kernel.sh [ROUNDS] [SECONDS] [TAP_MTU]
#
# Makes a private network namespace with a TAP device (kernel side 10.213.0.1/24), starts one
# release tandem-dataplane in it with a kernel-TCP portal on 10.213.0.1:3260 and a smoltcp
# portal on 10.213.0.2:3260 (TAP, MTU TAP_MTU), and runs iscsi-perf (libiscsi, a kernel-TCP
# initiator in the same namespace) against each portal: 4K random read at QD 1 and QD 32,
# 128K sequential read at QD 8. Kernel and smoltcp runs alternate (order flipped every round)
# so background load hits both alike; the table gives medians over ROUNDS and the target's
# CPU time per I/O (utime+stime of the target process, from /proc). Target on core 1, client
# on core 0. Nothing leaves the namespace; it is deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-8}; MTU=${3:-1500}
NS=tandem-utcp-bench-$$
BIN=/var/tmp/tandem-perf/bin
OUT=/var/tmp/tandem-perf/utcp
IQN=iqn.2026-11.io.tandem:utcp-bench
mkdir -p "$BIN" "$OUT"
cargo build --release -q -p tandem-dataplane
cp target/release/tandem-dataplane "$BIN/tdp-utcp-bench"
TPID=
cleanup() {
    [[ -n $TPID ]] && kill "$TPID" 2>/dev/null && wait "$TPID" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 mtu "$MTU"
ip -n "$NS" addr add 10.213.0.1/24 dev tap0
ip -n "$NS" link set tap0 up
ip netns exec "$NS" taskset -c 1 "$BIN/tdp-utcp-bench" serve --portal 10.213.0.1:3260 \
    --utcp tap0,10.213.0.2/24 --ram 1GiB --cores 1 --iqn "$IQN" >"$OUT/target.log" 2>&1 &
TPID=$!
for _ in $(seq 50); do
    ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/10.213.0.2/3260' 2>/dev/null && break
    sleep 0.2
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$TPID/stat"; }
HZ=$(getconf CLK_TCK)
# name  iscsi-perf args  block bytes
WORKLOADS=("4k-randread-qd1|-m 1 -b 8 -r|4096" "4k-randread-qd32|-m 32 -b 8 -r|4096" "128k-seqread-qd8|-m 8 -b 256|131072")
RESULTS="$OUT/results-mtu$MTU.txt"
: >"$RESULTS"
run() { # portal-name ip workload-args
    local t0 t1 out iops
    t0=$(cpu_ticks)
    out=$(ip netns exec "$NS" taskset -c 0 timeout $((SECS + 20)) iscsi-perf $3 -t "$SECS" \
        "iscsi://$2:3260/$IQN/0" 2>&1 | tr '\r' '\n' | grep 'iops average' | tail -1 || true)
    t1=$(cpu_ticks)
    iops=$(sed -E 's/.*iops average ([0-9]+).*/\1/' <<<"$out")
    echo "${iops:-0} $(( t1 - t0 ))"
}
for r in $(seq "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        IFS='|' read -r name args bytes <<<"$w"
        if (( r % 2 )); then order="kernel utcp"; else order="utcp kernel"; fi
        for p in $order; do
            ipaddr=10.213.0.1; [[ $p == utcp ]] && ipaddr=10.213.0.2
            read -r iops ticks < <(run "$p" "$ipaddr" "$args")
            echo "$name $p $iops $ticks $bytes" | tee -a "$RESULTS"
        done
    done
done
echo
echo "TAP MTU $MTU, $ROUNDS rounds x ${SECS}s, medians; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-18s %-7s %10s %9s %14s\n' workload portal IOPS MB/s "target CPU/IO"
python3 - "$RESULTS" "$SECS" "$HZ" <<'EOF'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, portal, iops, ticks, nbytes = line.split()
    rows[(name, portal)].append((int(iops), int(ticks), int(nbytes)))
secs, hz = float(sys.argv[2]), float(sys.argv[3])
for (name, portal), v in rows.items():
    iops = statistics.median(x[0] for x in v)
    cpu = statistics.median((x[1] / hz) / max(1, x[0] * secs) * 1e6 for x in v)
    print(f"{name:<18} {portal:<7} {iops:>10.0f} {iops * v[0][2] / 1e6:>9.1f} {cpu:>11.1f} us")
EOF
