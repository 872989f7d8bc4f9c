# Shared helpers for the lab scripts. Sourced, not executed.
# shellcheck shell=bash

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this
REPO_DIR=$(cd "$LAB_DIR/../.." && pwd)

log() { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Where the guest image is cached. /var/cache/tandem-lab survives fresh CI
# clones on the same machine; fall back to the gitignored tests/lab/cache.
lab_cache_dir() {
    if [ -n "${LAB_CACHE:-}" ]; then
        echo "$LAB_CACHE"
    elif mkdir -p /var/cache/tandem-lab 2>/dev/null && [ -w /var/cache/tandem-lab ]; then
        echo /var/cache/tandem-lab
    else
        mkdir -p "$LAB_DIR/cache" && echo "$LAB_DIR/cache"
    fi
}

# Print "MIRROR SUITE" of the machine's own Debian apt sources (the first
# "deb" entry whose suite is not -security/-updates/-backports). Never a
# hard-coded mirror.
apt_mirror_and_suite() {
    local f
    # deb822 .sources files
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
                    n = split(uris, u, " "); m = split(suites, s, " ");
                    for (j = 1; j <= m; j++)
                        if (s[j] !~ /-(security|updates|backports|proposed-updates)$/ && s[j] !~ /\//) {
                            print u[1], s[j]; found = 1; exit
                        }
                }
                types = uris = suites = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "uris:"   { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
            tolower($1) == "suites:" { $1 = ""; suites = $0; sub(/^ +/, "", suites) }
            END { if (!found) flush() }
        ' "$f" | head -n1 | grep . && return 0
    done
    # one-line sources.list format
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) !~ /-(security|updates|backports)$/) { print $i, $(i+1); exit }
            }' "$f" | head -n1 | grep . && return 0
    done
    return 1
}
