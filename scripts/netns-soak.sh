#!/usr/bin/env bash
# The long namespace scenarios, kept out of the default `cargo test` (CI's 45-minute budget):
# with TANDEM_SOAK=1 the flapping scenarios flap for 30 s instead of 10 s (two data nodes,
# sync0+sync1 of node-a; ha_netns_faults) and instead of 6 s (three data nodes, both sync
# links of node-c after the SIGSTOP of the authority host; ha_netns_three).
#   sudo scripts/netns-soak.sh
# Needs root, `ip`, `nft` and fio with the libiscsi engine (scripts/install-deps.sh); uses the
# release binaries, so it builds them first. Each scenario prints MEASURE and SUMMARY lines.
# Measured 2026-12-01 on the loaded 2-core machine: the two-node flapping 38.6 s, the
# three-node scenario 57.8 s.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tandem-control -p tandem-dataplane
export TANDEM_SOAK=1
cargo test --release -p tandem-tests --test ha_netns_faults sync_links_flapping -- --nocapture
cargo test --release -p tandem-tests --test ha_netns_three sync_links_of_one_node_flapping -- --nocapture
