#!/usr/bin/env bash
# Replicated write and read cost, as a host sees it: a two-node cluster on one machine
# (tandem-control x2 on 127.0.9.1 and 127.0.9.2, one sync link over loopback, image files),
# fio with the libiscsi engine as the client. Every row is measured next to a plain
# (unreplicated) device on node A in the same run, in alternating order, so the ratio holds
# on a shared, noisy machine.
#
#   perf/replicated.sh [ROUNDS] [SECONDS]      (default 3 rounds of 8 s per row)
#
# TANDEM_BIN=DIR measures the tandem-control/tandem-dataplane binaries in DIR instead of
# building this tree (an A/B of two builds: run it once per DIR, alternately). PERF_STAT=1
# also counts context switches and CPU time of both nodes' data planes per row
# (`perf stat`), printed per I/O next to the table.
#
# Rows: 4 KiB random write QD1, 4 KiB random write QD32, 4 KiB random read QD32; targets:
# `solo` (plain device on node A), `repl-A` (replicated device through node A, the
# sequencer), `repl-B` (the same device through node B). Prints the median IOPS and mean
# completion latency per row and target, and the ratio to `solo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/two-nodes.sh
rounds=${1:-3}
secs=${2:-8}
command -v jq >/dev/null || { echo "perf/replicated.sh needs jq" >&2; exit 2; }
if [[ -z ${TANDEM_BIN:-} ]]; then
  cargo build --release -q -p tandem-control -p tandem-dataplane
fi
fio=$(perf/build-fio-libiscsi.sh)
bin=${TANDEM_BIN:-$PWD/target/release}
work=$(mktemp -d /var/tmp/tandem-repl.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

a_ip=127.0.9.1 b_ip=127.0.9.2
start_two_nodes "$work"
"${A[@]}" device create solo --size 512MiB >/dev/null
"${A[@]}" device create repl --size 512MiB >/dev/null
"${A[@]}" server add perf-b $b_ip:3261 --token-file "$work/nb/token" >/dev/null
"${B[@]}" server add perf-a $a_ip:3261 --token-file "$work/na/token" >/dev/null
"${A[@]}" replica add repl --partner perf-b --sync-link $a_ip:3270=$b_ip:3270 >/dev/null
sync_start=$(date +%s.%N)
for _ in $(seq 600); do
  "${A[@]}" replica list repl | grep -Eq '^perf-b .* synchronized ' && break
  sleep 1
done
"${A[@]}" replica list repl | grep -Eq '^perf-b .* synchronized ' \
  || { echo "replica never synchronized" >&2; "${A[@]}" replica list repl >&2; exit 1; }
sync_s=$(echo "$(date +%s.%N) - $sync_start" | bc -l)

url() { # target node-ip
  local iqn
  case $1 in
    solo) iqn=iqn.2026-11.io.tandem:perf-a-solo; ip=$a_ip ;;
    repl-A) iqn=iqn.2026-11.io.tandem:perf-a-repl; ip=$a_ip ;;
    repl-B) iqn=iqn.2026-11.io.tandem:perf-b-repl; ip=$b_ip ;;
  esac
  echo "iscsi\\://$ip\\:3260/${iqn//:/\\:}/0"
}

# Fill what the read rows read, so no row reads never-written blocks.
for t in solo repl-A; do
  "$fio" --name=fill --ioengine=libiscsi --rw=write --bs=1m --size=256M --iodepth=8 \
    --filename="$(url $t)" --output-format=terse >/dev/null
done

rows=("randwrite 1" "randwrite 32" "randread 32")
# Both nodes' data planes (children of the two tandem-control processes).
dp_pids=$( (pgrep -P "${pids[0]}"; pgrep -P "${pids[1]}") | paste -sd,)
targets=(solo repl-A repl-B)
results="$work/results.tsv"
: >"$results"
for round in $(seq "$rounds"); do
  # Alternate the order of the targets each round (solo first, then last).
  order=("${targets[@]}")
  if (( round % 2 == 0 )); then order=(repl-B repl-A solo); fi
  for row in "${rows[@]}"; do
    read -r rw qd <<<"$row"
    for t in "${order[@]}"; do
      stat_pid=
      if [[ -n ${PERF_STAT:-} ]]; then
        perf stat -x, -e context-switches,task-clock -p "$dp_pids" -o "$work/stat.csv" &
        stat_pid=$!
      fi
      json=$("$fio" --name=r --ioengine=libiscsi --rw="$rw" --bs=4k --size=256M \
        --iodepth="$qd" --time_based --runtime="$secs" --ramp_time=1 \
        --filename="$(url $t)" --output-format=json 2>>"$work/fio.err" | sed -n '/^{/,$p')
      cs_io=0 cpu_io=0
      if [[ -n $stat_pid ]]; then
        kill -INT "$stat_pid"; wait "$stat_pid" || true
        ios=$(jq ".jobs[0].read.total_ios + .jobs[0].write.total_ios" <<<"$json")
        cs=$(awk -F, '$3=="context-switches" {print $1}' "$work/stat.csv")
        cpu_ms=$(awk -F, '$3=="task-clock" {print $1}' "$work/stat.csv")
        # fio's count leaves out the ramp second: close enough for a per-I/O figure.
        cs_io=$(echo "$cs / $ios" | bc -l)
        cpu_io=$(echo "$cpu_ms * 1000 / $ios" | bc -l)
      fi
      [[ -n $json ]] || { echo "fio failed on $t:" >&2; cat "$work/fio.err" >&2; exit 1; }
      side=$([[ $rw == randread ]] && echo read || echo write)
      iops=$(jq ".jobs[0].$side.iops" <<<"$json")
      lat=$(jq ".jobs[0].$side.clat_ns.mean / 1000" <<<"$json")
      printf '%s\t%s\t%s\t%.0f\t%.1f\t%.2f\t%.1f\n' "$rw" "$qd" "$t" "$iops" "$lat" \
        "$cs_io" "$cpu_io" >>"$results"
    done
  done
done

echo "# perf/replicated.sh: $rounds rounds x ${secs} s, $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf 'initial sync of the 512 MiB device (sync-from-existing): %.1f s\n' "$sync_s"
echo
echo "| row | target | IOPS (median) | mean latency us | IOPS vs solo | latency vs solo | ctx switches / I/O | data-plane CPU us / I/O |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  read -r rw qd <<<"$row"
  median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
  solo_iops=$(awk -v r="$rw" -v q="$qd" '$1==r && $2==q && $3=="solo" {print $4}' "$results" | median)
  solo_lat=$(awk -v r="$rw" -v q="$qd" '$1==r && $2==q && $3=="solo" {print $5}' "$results" | median)
  for t in "${targets[@]}"; do
    iops=$(awk -v r="$rw" -v q="$qd" -v t="$t" '$1==r && $2==q && $3==t {print $4}' "$results" | median)
    lat=$(awk -v r="$rw" -v q="$qd" -v t="$t" '$1==r && $2==q && $3==t {print $5}' "$results" | median)
    cs=$(awk -v r="$rw" -v q="$qd" -v t="$t" '$1==r && $2==q && $3==t {print $6}' "$results" | median)
    cpu=$(awk -v r="$rw" -v q="$qd" -v t="$t" '$1==r && $2==q && $3==t {print $7}' "$results" | median)
    printf '| 4 KiB %s QD%s | %s | %.0f | %.1f | %.2f | %.2f | %.2f | %.1f |\n' "$rw" "$qd" "$t" "$iops" "$lat" \
      "$(echo "$iops / $solo_iops" | bc -l)" "$(echo "$lat / $solo_lat" | bc -l)" "$cs" "$cpu"
  done
done
if [[ -n ${PERF_STAT:-} ]]; then
  # Idle cost: both data planes with the replicated device synchronized and no host I/O.
  sleep 2
  perf stat -x, -e context-switches,task-clock -p "$dp_pids" -o "$work/idle.csv" -- sleep 5
  awk -F, '$3=="task-clock" {ms=$1} $3=="context-switches" {cs=$1}
    END {printf "idle: both data planes %.1f ms CPU per s, %.0f context switches per s\n", ms/5, cs/5}' \
    "$work/idle.csv"
fi
