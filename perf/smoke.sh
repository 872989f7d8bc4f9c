#!/usr/bin/env bash
# CI smoke of the benchmark harness: every piece (iperf3, raw fio, Tandem, tgt, iscsi-perf,
# fio-libiscsi, tandem-loadgen, report writers) runs for about a second; no thresholds.
# Exits non-zero if any piece fails. Takes about 40 s on 2 cores plus an incremental build.
# On a machine that has never run it, the one-time setup (apt packages, fio with libiscsi built
# from Debian's source, ~3 min, cached in /var/cache/tandem-perf) comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
perf/run.sh --smoke "$@" >/dev/null
echo "perf/smoke.sh: ok in $(( $(date +%s) - start )) s"
