#!/usr/bin/env bash
# Long run of the simulators, every shape over many seeds, both cores:
# - the replication engine's simulator (tandem-ha-sim): shapes 3n, 2n, 2w;
# - the simulation of the failover vote (tandem-vote-sim): shapes hb2, w2.
#   scripts/sim-soak.sh [SEEDS_PER_SHAPE] [--keep-going]   (default 100000 seeds per shape)
#   SIM_SOAK_SHAPES="hb2 w2" scripts/sim-soak.sh 20000      (a subset of the shapes)
# Prints one line per chunk and the time per shape. Stops at the first failing chunk and
# prints the command that replays the failing seed with a trace; with --keep-going it runs
# every chunk, lists every failing seed, and fails at the end. Vote-sim seeds that hit one of
# its KNOWN_OPEN_DEFECTS (docs/ha.md) are counted and listed, not failed (--allow-known).
# Cost (measured 2026-11-30): about 8 CPU-ms per seed for 3n, 34 for 2n and 75 for 2w, whose
# longer per-block histories make the linearizability checker most of the work. 100 000 seeds
# per shape: about 3.3 CPU-hours, so about 1 h 40 min on two otherwise idle cores. The vote
# simulation costs about 4 CPU-ms per seed (hb2) and 5 (w2): 100 000 seeds of both in about
# 15 CPU-minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100000}
keep=()
if [[ "${2:-}" == "--keep-going" ]]; then keep=(--keep-going); fi
shapes=${SIM_SOAK_SHAPES:-3n 2n 2w hb2 w2}
cargo build --release -q -p tandem-ha --bin tandem-ha-sim
cargo build --release -q -p tandem-control --bin tandem-vote-sim
start=$(date +%s)
chunk=5000
failed=0
for shape in $shapes; do
  case "$shape" in
    3n|2n|2w) sim=(target/release/tandem-ha-sim) ;;
    hb2|w2) sim=(target/release/tandem-vote-sim --allow-known) ;;
    *) echo "sim-soak: unknown shape $shape" >&2; exit 2 ;;
  esac
  shape_start=$(date +%s)
  from=0
  while (( from < seeds )); do
    to=$(( from + chunk < seeds ? from + chunk : seeds ))
    mid=$(( (from + to) / 2 ))
    # Two halves in parallel: one per core.
    "${sim[@]}" --shape "$shape" --seeds "$from..$mid" "${keep[@]}" & a=$!
    "${sim[@]}" --shape "$shape" --seeds "$mid..$to" "${keep[@]}" & b=$!
    wait $a || failed=1
    wait $b || failed=1
    if (( failed )) && (( ${#keep[@]} == 0 )); then
      echo "sim-soak: shape $shape failed in seeds $from..$to (see above)" >&2
      exit 1
    fi
    from=$to
  done
  echo "sim-soak: shape $shape: $seeds seeds in $(( $(date +%s) - shape_start )) s"
done
if (( failed )); then
  echo "sim-soak: FAILED (see the seeds above); $(( $(date +%s) - start )) s" >&2
  exit 1
fi
echo "sim-soak: $seeds seeds per shape passed in $(( $(date +%s) - start )) s"
