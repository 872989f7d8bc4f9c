#!/usr/bin/env bash
# Long run of the replication simulator: every shape over many seeds, both cores.
#   scripts/sim-soak.sh [SEEDS_PER_SHAPE]   (default 100000)
# Prints one line per shape and chunk; stops at the first failing seed and prints the
# command that replays it with a trace.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100000}
cargo build --release -q -p tandem-ha --bin tandem-ha-sim
sim=target/release/tandem-ha-sim
start=$(date +%s)
chunk=5000
for shape in 2n 2w 3n; do
  from=0
  while (( from < seeds )); do
    to=$(( from + chunk < seeds ? from + chunk : seeds ))
    mid=$(( (from + to) / 2 ))
    # Two halves in parallel: one per core.
    "$sim" --shape "$shape" --seeds "$from..$mid" & a=$!
    "$sim" --shape "$shape" --seeds "$mid..$to" & b=$!
    wait $a; wait $b
    from=$to
  done
done
echo "sim-soak: $seeds seeds per shape passed in $(( $(date +%s) - start )) s"
