#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, end-to-end tests with real clients
# (libiscsi conformance, control service, network namespaces), fuzz and benchmark smoke
# runs, and the QEMU host-lab scenarios. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

step "dependencies"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets -- -D warnings

step "build"
cargo build --release --workspace --bins
export TANDEM_BIN_DIR="$PWD/target/release"

step "cargo test (unit + end-to-end)"
cargo test --release --workspace --no-fail-fast -- --test-threads=2

# Ignored by default because they take seconds, not milliseconds: the block device's
# overlap soak and throughput smoke (about 15 s together), the only ignored library tests.
# `--workspace --lib` reuses the build above (`-p tandem-bdev` alone resolves features
# differently and rebuilt dependencies: 70 s more).
step "cargo test, long block-device tests (--ignored)"
cargo test --release --workspace --lib -- --ignored

if [[ -x fuzz/smoke.sh ]]; then
  step "fuzz smoke"
  fuzz/smoke.sh
fi

if [[ -x perf/smoke.sh ]]; then
  step "benchmark harness smoke"
  perf/smoke.sh
fi

step "host lab: docs match what the guest runs"
bash tests/lab/check-docs.sh

step "host lab: xen-host scenario (QEMU guest: open-iscsi + dm-multipath + fio)"
LAB_TANDEM_BIN="$TANDEM_BIN_DIR/tandem-dataplane" bash tests/lab/run-scenario.sh xen-host

# One case of ha-host (node majority: a node isolated from its partner and the witness);
# every case: scripts/lab-ha-host.sh.
step "host lab: ha-host scenario, isolate case (QEMU guest, two nodes + witness)"
LAB_HA_CASES=isolate LAB_TANDEM_BIN_DIR="$TANDEM_BIN_DIR" bash tests/lab/run-scenario.sh ha-host

step "done"
