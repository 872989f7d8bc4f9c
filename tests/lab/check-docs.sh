#!/bin/bash
# Fails if a snippet shown in docs/hosts/README.md differs from the file the
# lab uses (docs/hosts/iscsid.conf, docs/hosts/multipath.conf), or if
# host-setup.sh stopped being a valid shell script. Cheap: run it in CI.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HOSTS="$REPO_DIR/docs/hosts"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Every fenced block of the README into its own file.
awk -v dir="$tmp" '
    /^```/ { if (inblock) { inblock = 0; close(f) } else { inblock = 1; n++; f = dir "/block" n; printf "" > f }; next }
    inblock { print > f }
' "$HOSTS/README.md"
rc=0
for snippet in iscsid.conf multipath.conf; do
    found=
    for b in "$tmp"/block*; do
        if cmp -s "$b" "$HOSTS/$snippet"; then found=1; break; fi
    done
    if [ -n "$found" ]; then
        echo "ok: docs/hosts/README.md shows docs/hosts/$snippet verbatim"
    else
        echo "FAIL: docs/hosts/README.md has no block identical to docs/hosts/$snippet" >&2
        rc=1
    fi
done
sh -n "$HOSTS/host-setup.sh" && echo "ok: docs/hosts/host-setup.sh parses" || rc=1
# The lab's guest must take its host configuration from docs/hosts.
for scenario in xen-host ha-host; do
    grep -q 'host-setup.sh" configure' "$LAB_DIR/scenarios/$scenario.sh" &&
    grep -q 'host-setup.sh" connect' "$LAB_DIR/scenarios/$scenario.sh" &&
        echo "ok: scenario $scenario runs docs/hosts/host-setup.sh" ||
        { echo "FAIL: $scenario does not use host-setup.sh" >&2; rc=1; }
done
# Scripts of the lab parse.
for f in "$LAB_DIR"/*.sh "$LAB_DIR"/scenarios/*.sh "$LAB_DIR"/guest/*.sh; do
    bash -n "$f" || { echo "FAIL: $f does not parse" >&2; rc=1; }
done
exit $rc
