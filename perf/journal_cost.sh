#!/usr/bin/env bash
# The IOPS cost of a disk-continuous sync journal against the RAM one, as a host sees it: a
# two-node cluster on one machine (tandem-control x2 on 127.0.19.1 and 127.0.19.2, loopback
# sync links, image files), two replicated devices through node A (the sequencer), one per
# journal kind, fio with the libiscsi engine. 4 KiB random writes within a hot set of 32 MiB
# (inside the activity log's 64 MiB, so a journal write happens only when a region first
# turns hot). The two targets alternate in order every round (A/B), so the ratio holds on a
# shared, noisy machine.
#
#   perf/journal_cost.sh [ROUNDS] [SECONDS]      (default 3 rounds of 6 s per row)
set -euo pipefail
cd "$(dirname "$0")/.."
source perf/two-nodes.sh
rounds=${1:-3}
secs=${2:-6}
command -v jq >/dev/null || { echo "perf/journal_cost.sh needs jq" >&2; exit 2; }
cargo build --release -q -p tandem-control -p tandem-dataplane
fio=$(perf/build-fio-libiscsi.sh)
bin=$PWD/target/release
work=$(mktemp -d /var/tmp/tandem-jcost.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

a_ip=127.0.19.1 b_ip=127.0.19.2
start_two_nodes "$work"
"${A[@]}" server add perf-b $b_ip:3261 --token-file "$work/nb/token" >/dev/null
"${B[@]}" server add perf-a $a_ip:3261 --token-file "$work/na/token" >/dev/null
port=3270
for kind in ram disk-continuous; do
  "${A[@]}" device create "j-$kind" --size 128MiB >/dev/null
  "${A[@]}" replica add "j-$kind" --partner perf-b --journal "$kind" \
    --sync-link $a_ip:$port=$b_ip:$port >/dev/null
  port=$((port + 2))
done
for kind in ram disk-continuous; do
  for _ in $(seq 600); do
    "${A[@]}" replica list "j-$kind" | grep -Eq '^perf-b .* synchronized ' && break
    sleep 1
  done
  "${A[@]}" replica list "j-$kind" | grep -Eq '^perf-b .* synchronized ' \
    || { echo "j-$kind never synchronized" >&2; exit 1; }
done
ls "$work/na" | grep -q 'ha-journal' || { echo "no journal file on node A" >&2; ls -R "$work/na" >&2; exit 1; }

url() { echo "iscsi\\://$a_ip\\:3260/iqn.2026-11.io.tandem\\:perf-a-j-$1/0"; }
rows=(1 32)
results="$work/results.tsv"
: >"$results"
for round in $(seq "$rounds"); do
  order=(ram disk-continuous)
  if (( round % 2 == 0 )); then order=(disk-continuous ram); fi
  for qd in "${rows[@]}"; do
    for t in "${order[@]}"; do
      json=$("$fio" --name=r --ioengine=libiscsi --rw=randwrite --bs=4k --size=32M \
        --iodepth="$qd" --time_based --runtime="$secs" --ramp_time=1 \
        --filename="$(url "$t")" --output-format=json 2>>"$work/fio.err" | sed -n '/^{/,$p' \
        || true) # fio exits non-zero on an I/O error: its JSON says which, below
      [[ -n $json ]] || { echo "fio failed on $t:" >&2; cat "$work/fio.err" >&2; exit 1; }
      if [[ $(jq '.jobs[0].error' <<<"$json") != 0 ]]; then
        # An I/O error (e.g. NOT READY while the partner is declared out on a loaded
        # machine): say so with both nodes' logs, and leave the row out.
        echo "fio error on $t QD$qd (round $round): $(jq -c '.jobs[0] | {error, write: .write.total_ios}' <<<"$json")" >&2
        grep -hiE 'warn|error|out|verdict' "$work/na.log" "$work/nb.log" | tail -20 >&2 || true
        continue
      fi
      printf '%s\t%s\t%.0f\t%.1f\n' "$qd" "$t" "$(jq '.jobs[0].write.iops' <<<"$json")" \
        "$(jq '.jobs[0].write.clat_ns.mean / 1000' <<<"$json")" >>"$results"
    done
  done
done

echo "# perf/journal_cost.sh: $rounds rounds x ${secs} s, $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$results"
echo "| row | journal | IOPS (median) | mean latency us | IOPS vs ram |"
echo "|---|---|---|---|---|"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for qd in "${rows[@]}"; do
  ram=$(awk -v q="$qd" '$1==q && $2=="ram" {print $3}' "$results" | median)
  for t in ram disk-continuous; do
    iops=$(awk -v q="$qd" -v t="$t" '$1==q && $2==t {print $3}' "$results" | median)
    lat=$(awk -v q="$qd" -v t="$t" '$1==q && $2==t {print $4}' "$results" | median)
    printf '| 4 KiB randwrite QD%s, 32 MiB hot set | %s | %.0f | %.1f | %.2f |\n' "$qd" "$t" \
      "$iops" "$lat" "$(echo "$iops / $ram" | bc -l)"
  done
done
