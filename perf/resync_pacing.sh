#!/usr/bin/env bash
# Host latency during a full resync, with resync pacing off and on (docs/ha.md "Pacing by
# host latency"). For each mode: a fresh two-node cluster on one machine (tandem-control x2
# on 127.0.9.1 / 127.0.9.2, one sync link over loopback, image files), a device of SIZE on
# node A, `tandem replica add` (node B starts empty: a full resync of the whole device from
# A), and while it runs a host doing 4 KiB random reads and writes (50/50) at QD1 through
# node A (fio, libiscsi engine). Then the same host load for SECONDS with no resync (the
# baseline).
#
#   perf/resync_pacing.sh [SIZE] [TARGET_MS] [SECONDS]   (default 1GiB, 10, 8)
#
# Prints per mode: resync duration (from `replica add` until B is synchronized), host p50 /
# p99 / max completion latency of reads and writes during the resync, and the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/two-nodes.sh
size=${1:-1GiB}
target_ms=${2:-10}
secs=${3:-8}
command -v jq >/dev/null || { echo "perf/resync_pacing.sh needs jq" >&2; exit 2; }
cargo build --release -q -p tandem-control -p tandem-dataplane
fio=$(perf/build-fio-libiscsi.sh)
bin=$PWD/target/release
a_ip=127.0.9.1 b_ip=127.0.9.2
pids=()
work=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "$work" ]] && rm -rf "$work"
}
trap cleanup EXIT

url() { echo "iscsi\\://$a_ip\\:3260/iqn.2026-11.io.tandem\\:perf-a-repl/0"; }
host_load() { # runtime-seconds json-out
  "$fio" --name=host --ioengine=libiscsi --rw=randrw --rwmixread=50 --bs=4k --iodepth=1 \
    --filename="$(url)" --time_based --runtime="$1" --output-format=json \
    --percentile_list=50:99:99.9 >"$2" 2>"$2.err"
}
lat() { # json rw -> "p50 p99 max" in microseconds
  # fio stopped by SIGINT prints "fio: terminating on signal 2" before its JSON: skip to it.
  sed -n '/^{/,$p' "$1" | jq -r --arg rw "$2" '.jobs[0][$rw].clat_ns as $c
    | "\($c.percentile["50.000000"] / 1000 | floor) \($c.percentile["99.000000"] / 1000 | floor) \($c.max / 1000 | floor) \(.jobs[0][$rw].total_ios)"'
}

run_mode() { # mode target-ms
  local mode=$1 tms=$2
  work=$(mktemp -d /var/tmp/tandem-pace.XXXXXX)
  pids=()
  start_two_nodes "$work"
  "${A[@]}" device create repl --size "$size" >/dev/null
  "${A[@]}" server add perf-b $b_ip:3261 --token-file "$work/nb/token" >/dev/null
  "${B[@]}" server add perf-a $a_ip:3261 --token-file "$work/na/token" >/dev/null
  local t0 t1 t_serving
  t0=$(date +%s.%N)
  "${A[@]}" replica add repl --partner perf-b --sync-link $a_ip:3270=$b_ip:3270 \
    --resync-latency-target-ms "$tms" >/dev/null
  # The host starts as soon as node A serves the replicated device (B is then syncing).
  for _ in $(seq 600); do
    "${A[@]}" --json replica list repl \
      | jq -e '.replicas[] | select(.local) | .serving == true' >/dev/null 2>&1 && break
    sleep 0.05
  done
  t_serving=$(date +%s.%N)
  host_load 3600 "$work/during.json" & local fio_pid=$!
  local synced=0
  for _ in $(seq 36000); do
    if "${A[@]}" --json replica list repl \
      | jq -e '.replicas[] | select(.node == "perf-b") | .state == "synchronized"' >/dev/null 2>&1; then
      synced=1; break
    fi
    sleep 0.1
  done
  t1=$(date +%s.%N)
  kill -INT "$fio_pid" 2>/dev/null || true
  wait "$fio_pid" || true
  (( synced )) || { echo "$mode: replica never synchronized" >&2; exit 1; }
  host_load "$secs" "$work/after.json" || true
  local dur host_s
  dur=$(echo "$t1 - $t0" | bc -l)
  host_s=$(echo "$t1 - $t_serving" | bc -l)
  printf '%-4s target %5s ms  resync %7.2f s (host load during the last %6.2f s)\n' \
    "$mode" "$tms" "$dur" "$host_s"
  summary+=("$mode $dur")
  for rw in read write; do
    read -r p50 p99 max n < <(lat "$work/during.json" $rw)
    read -r bp50 bp99 bmax bn < <(lat "$work/after.json" $rw)
    summary+=("$mode-$rw $p50 $p99")
    printf '     %-5s during resync: p50 %6s us  p99 %7s us  max %8s us  (%6s I/Os) | no resync: p50 %6s us  p99 %7s us  max %8s us (%6s I/Os)\n' \
      "$rw" "$p50" "$p99" "$max" "$n" "$bp50" "$bp99" "$bmax" "$bn"
  done
  cleanup
  work=
}

echo "resync pacing, device $size, host 4 KiB randrw 50/50 QD1 through node A; load average $(cut -d' ' -f1-3 /proc/loadavg)"
summary=()
run_mode off 0
run_mode on "$target_ms"
# Paced against unpaced, same run: resync duration and host p50 / p99 during the resync.
declare -A v
for line in "${summary[@]}"; do
  read -r k a b <<<"$line"
  v[$k]="$a ${b:-}"
done
ratio() { echo "scale=2; $1 / $2" | bc -l; }
read -r d_off _ <<<"${v[off]}"
read -r d_on _ <<<"${v[on]}"
echo "paced / unpaced: resync duration x$(ratio "$d_on" "$d_off")"
for rw in read write; do
  read -r p50_off p99_off <<<"${v[off-$rw]}"
  read -r p50_on p99_on <<<"${v[on-$rw]}"
  echo "paced / unpaced: host $rw during the resync p50 x$(ratio "$p50_on" "$p50_off")  p99 x$(ratio "$p99_on" "$p99_off")"
done
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
