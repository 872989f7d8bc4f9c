#!/usr/bin/env bash
# Profiles the Tandem target under one tandem-loadgen workload with `perf record` (cpu-clock:
# a software event, so it works in VMs without hardware counters) and prints the hottest
# symbols, flat and with callers.
#
#   perf/profile.sh [randread|randwrite|read|write] [QD] [BS] [SECONDS] [ram|file]
#
# Target pinned on core 1 (--cores 1, adaptive polling), client on core 0, as in tandem-bench.
# Output: /var/tmp/tandem-perf/profile/<workload>.{data,txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
RW=${1:-randread}; QD=${2:-32}; BS=${3:-4k}; SECS=${4:-8}; BACKING=${5:-ram}
OUT=/var/tmp/tandem-perf/profile
mkdir -p "$OUT" /var/tmp/tandem-perf/bin
command -v perf >/dev/null || { apt-get install -y -qq linux-perf >&2; }
cargo build --release -q -p tandem-dataplane -p tandem-perf
NAME="$BACKING-$RW-qd$QD-$BS"
# A copy per profile, kept next to the data, so `perf report` can still resolve symbols after
# the shared target/ has been rebuilt.
TBIN="$OUT/tdp-prof-$NAME"
cp target/release/tandem-dataplane "$TBIN"
cp target/release/tandem-loadgen /var/tmp/tandem-perf/bin/tdp-prof-loadgen
PORT=3491
case "$BACKING" in
    ram) backing=(--ram 1GiB) ;;
    file)
        img=/var/tmp/tandem-perf/tandem.img
        [[ -f $img ]] || dd if=/dev/zero of="$img" bs=1M count=1024 conv=fsync status=none
        backing=(--file "$img") ;;
esac
taskset -c 1 "$TBIN" serve --portal 127.0.0.1:$PORT \
    "${backing[@]}" --cores 1 --iqn iqn.2026-11.io.tandem:prof >"$OUT/target.log" 2>&1 &
TPID=$!
trap 'kill $TPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
# Prefill (as tandem-bench does): RAM-disk pages resident, image blocks allocated.
taskset -c 0 /var/tmp/tandem-perf/bin/tdp-prof-loadgen --portal 127.0.0.1:$PORT --rw write \
    --bs 256k --qd 8 --ops 4096 >/dev/null
taskset -c 0 /var/tmp/tandem-perf/bin/tdp-prof-loadgen --portal 127.0.0.1:$PORT \
    --rw "$RW" --qd "$QD" --bs "$BS" --time $((SECS + 2)) >"$OUT/$NAME.loadgen.json" &
LPID=$!
sleep 1
perf record -q -e cpu-clock -F 1999 --call-graph dwarf,16384 -p $TPID -o "$OUT/$NAME.data" \
    -- sleep "$SECS" 2>/dev/null
wait $LPID
{
    echo "# $NAME  $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# loadgen: $(cat "$OUT/$NAME.loadgen.json" | head -c 400)"
    echo
    echo "## flat (self time)"
    perf report -i "$OUT/$NAME.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
        | grep -E "^ +[0-9]" | head -40 || true
    echo
    echo "## inclusive (children)"
    perf report -i "$OUT/$NAME.data" --children --sort symbol --stdio -g none 2>/dev/null \
        | grep -E "^ +[0-9]" | head -60 || true
} >"$OUT/$NAME.txt"
cat "$OUT/$NAME.txt"
