#!/usr/bin/env bash
# The full host-lab failover scenario: a QEMU guest (open-iscsi, dm-multipath,
# verified fio, set up with docs/hosts/) in front of two replicated Tandem
# nodes and a witness, through every case of tests/lab/scenarios/ha-host.sh:
# sync links cut (heartbeat), a node isolated (node majority + witness), and
# kill -9 of a data plane. About 5 minutes on an idle 2-core machine, 10 on a
# loaded one. CI runs one case only (scripts/test.sh). Needs root.
#   scripts/lab-ha-host.sh            build the release binaries, run all cases
#   LAB_HA_CASES="sync-cut" scripts/lab-ha-host.sh   only the cases named
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LAB_TANDEM_BIN_DIR:-}" ]; then
    cargo build --release -p tandem-control -p tandem-dataplane
    export LAB_TANDEM_BIN_DIR="$PWD/target/release"
fi
bash tests/lab/check-docs.sh
exec bash tests/lab/run-scenario.sh ha-host
