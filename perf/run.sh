#!/usr/bin/env bash
# Tandem vs tgt benchmark, one command:
#
#   perf/run.sh            # full run (~25 min on 2 cores): results in perf/results/
#   perf/run.sh --quick    # every row once, 2 s each
#   perf/run.sh --smoke    # seconds-long check that every piece works (CI)
#
# Any other arguments go to tandem-bench (see `target/release/tandem-bench --help`).
# Needs root (tgtd), tgt, libiscsi-bin, fio, iperf3; builds fio with the libiscsi engine once
# (cached under /var/cache/tandem-perf) and the release binaries of Tandem and tandem-perf.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in tgtd tgtadm iscsi-perf fio iperf3 taskset; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "perf/run.sh: installing packages for: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends tgt libiscsi-bin fio iperf3 util-linux >&2
fi

fio_args=()
if fio_bin=$(perf/build-fio-libiscsi.sh 2>/tmp/tandem-perf-fio-build.log); then
    fio_args=(--fio-libiscsi "$fio_bin")
else
    echo "perf/run.sh: fio with libiscsi could not be built (see /tmp/tandem-perf-fio-build.log); fio client skipped" >&2
    fio_args=(--fio-libiscsi /nonexistent)
fi

cargo build --release -q -p tandem-dataplane -p tandem-perf
exec target/release/tandem-bench "${fio_args[@]}" "$@"
