#!/usr/bin/env bash
# Installs what building and testing Tandem needs on Debian (idempotent; run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  libiscsi-bin   # iscsi-test-cu, iscsi-ls, iscsi-inq, iscsi-perf: the reference initiator
  tgt            # the peer target the benchmarks compare against
  fio iperf3     # raw-disk and loopback baselines
  iproute2       # network namespaces for multi-node tests
  procps psmisc
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# fio with the libiscsi I/O engine (Debian's fio has none), cached in /var/cache/tandem-perf:
# the second, verifying host of the HA namespace tests (tests/tests/ha_netns.rs, which fail
# without it) and the benchmarks' fio client. Built once from Debian's fio source.
perf/build-fio-libiscsi.sh >/dev/null

# The host lab (QEMU guest) has its own list.
if [[ -x tests/lab/install-deps.sh ]]; then
  tests/lab/install-deps.sh
fi

if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi
