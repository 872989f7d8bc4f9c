#!/usr/bin/env bash
# Sets up and starts a working target on the embedded default configuration:
# a 1 GiB RAM disk exported as iqn.2026-11.io.tandem:tandem-ram0 on 127.0.0.1:3260.
# Extra arguments go to tandem-dataplane (e.g. `serve --file /var/tmp/disk.img --size 4GiB`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) == 0 ]] && ! command -v iscsi-ls >/dev/null; then
  bash scripts/install-deps.sh   # brings libiscsi's client tools to look at the target
fi
cargo build --release --bin tandem-dataplane
exec target/release/tandem-dataplane "$@"
