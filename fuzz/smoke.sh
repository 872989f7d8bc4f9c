#!/usr/bin/env bash
# A short fuzz run of every target (CI smoke): installs cargo-fuzz if needed, then fuzzes
# each parser for FUZZ_SECONDS (default 20) and fails on any crash.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1   # stable toolchain; cargo-fuzz needs -Z sanitizer flags
for t in pdu_parse login_keys cdb_decode mirror_decoder; do
  mkdir -p "corpus/$t"
  seeds=()
  [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
  echo "--- fuzz $t for ${secs}s"
  cargo fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -4
done
