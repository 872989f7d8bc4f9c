#!/usr/bin/env bash
# Builds fio from Debian's own source package with the libiscsi I/O engine enabled (Debian's
# binary fio is configured without it) and caches the binary under /var/cache/tandem-perf.
#
#   perf/build-fio-libiscsi.sh          # prints the path of the cached fio binary
#
# The deb-src entry is derived from the machine's own apt sources (same URIs, suites,
# components and keyring, only `Types: deb-src`), never a hard-coded mirror.
set -euo pipefail

CACHE=/var/cache/tandem-perf
OUT="$CACHE/fio-libiscsi"
if [[ -x "$OUT" ]] && "$OUT" --enghelp 2>/dev/null | grep -qx '[[:space:]]*libiscsi'; then
    echo "$OUT"
    exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
log() { echo "build-fio-libiscsi: $*" >&2; }

# 1. deb-src lines derived from the machine's own sources.
SRC_LIST=/etc/apt/sources.list.d/tandem-perf-deb-src.sources
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    tmp=$(mktemp)
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        # deb822 stanzas of the Debian archive only (third-party repositories may have no
        # sources): keep every field, turn `Types: deb` into `Types: deb-src`.
        grep -v '^#' "$f" | awk 'BEGIN { RS = ""; ORS = "\n\n" }
            /URIs:[^\n]*debian/ && /Types:[ \t]*deb[ \t]*(\n|$)/ {
                sub(/Types:[ \t]*deb[ \t]*\n/, "Types: deb-src\n"); print }' >>"$tmp"
    done
    if [[ -f /etc/apt/sources.list ]]; then
        # one-line format: deb URI suite comps -> deb-src URI suite comps
        grep -E '^deb[[:space:]].*debian' /etc/apt/sources.list | sed 's/^deb\([[:space:]]\)/deb-src\1/' \
            >"${SRC_LIST%.sources}.list" || true
    fi
    if grep -q '^Types: deb-src' "$tmp"; then
        install -m 0644 "$tmp" "$SRC_LIST"
    fi
    rm -f "$tmp"
    log "added deb-src entries derived from the machine's apt sources"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2

# 2. Build dependencies: libiscsi-dev plus the few libraries the fio configure step needs for the
#    engines we use (io_uring is built in; libaio, zlib are cheap). We do not run the whole
#    `apt-get build-dep fio` (it pulls in Ceph, GlusterFS, RDMA, ...) because we only need the
#    fio binary, not the .deb.
apt-get install -y -qq --no-install-recommends libiscsi-dev libaio-dev zlib1g-dev pkg-config \
    build-essential dpkg-dev >&2

# 3. Debian's fio source (same version as the installed fio), configured with libiscsi.
WORK="$CACHE/src"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
apt-get source -qq fio >&2
cd "$(find . -maxdepth 1 -mindepth 1 -type d -name 'fio-*' | head -n1)"
log "configuring $(basename "$PWD") with --enable-libiscsi"
./configure --enable-libiscsi --disable-native >&2
make -j"$(nproc)" fio >&2
install -m 0755 fio "$OUT"
if ! "$OUT" --enghelp | grep -qx '[[:space:]]*libiscsi'; then
    log "built fio has no libiscsi engine"
    exit 1
fi
cd /
rm -rf "$WORK"
log "cached $OUT"
echo "$OUT"
