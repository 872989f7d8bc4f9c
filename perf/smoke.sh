#!/usr/bin/env bash
# CI smoke of the benchmark harness: every piece (iperf3, raw fio, Tandem, tgt, iscsi-perf,
# fio-libiscsi, tandem-loadgen, report writers) runs for about a second; no thresholds.
# Exits non-zero if any piece fails. Takes well under 90 s on 2 cores after an incremental build.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
perf/run.sh --smoke "$@" >/dev/null
echo "perf/smoke.sh: ok in $(( $(date +%s) - start )) s"
