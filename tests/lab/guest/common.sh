# Helpers for guest-side scenarios. Sourced by tests/lab/scenarios/*.sh.
# shellcheck shell=bash
# The host writes the run's parameters to /out/env (LAB_* variables).
# shellcheck disable=SC1091
source /out/env

T0=$(date +%s.%N)
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[guest %6ss] %s\n' "$(elapsed "$T0")" "$*"; }
section() { printf '\n===== %s =====\n' "$*"; }
fail() {
    say "FAIL: $*"
    section "diagnostics"
    lab_ctl diag all >/dev/null || true
    iscsiadm -m session -P 3 2>&1 | grep -E 'Target:|Current Portal|ISID|State|Attached' || true
    multipathd show paths format '%d %i %t %T %o %p' 2>&1 || true
    ip -br link; ip neigh; ss -tn
    for p in $LAB_PORTALS; do ping -c 2 -W 1 "${p%:*}" 2>&1 | tail -n 2; done
    dmesg | tail -n 40
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.5 s.
wait_for() {
    local secs=$1 what=$2; shift 2
    local end; end=$(awk -v t="$(now)" -v s="$secs" 'BEGIN { printf "%d", t + s }')
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
    say "ok: $what"
}

# lab_ctl ACTION LINK: ask the host to act on a link (cut, restore), wait
# for its acknowledgement. Prints the guest time at which the ack was seen.
# (A counter file, not a variable: callers run this in $(...) subshells.)
lab_ctl() {
    local n i=0
    n=$(( $(cat /tmp/lab_ctl_seq 2>/dev/null || echo 0) + 1 ))
    echo "$n" > /tmp/lab_ctl_seq
    echo "$*" > "/out/ctl/.req.$n" && mv "/out/ctl/.req.$n" "/out/ctl/req.$n"
    while [ ! -e "/out/ctl/ack.$n" ]; do
        i=$((i + 1)); [ $i -lt 600 ] || { echo "no ack for '$*'" >&2; return 1; }
        sleep 0.05
    done
    grep -q '^ok' "/out/ctl/ack.$n" || { cat "/out/ctl/ack.$n" >&2; return 1; }
    now
}

# Start the daemons a host has, by hand (no init system in the guest).
start_udevd() {
    /lib/systemd/systemd-udevd --daemon
    udevadm settle -t 10 || true
}

net_up() {
    modprobe virtio_net
    ip link set lo up
    local spec ifc addr i=0
    for spec in $LAB_GUEST_ADDRS; do
        ifc=${spec%%=*}; addr=${spec#*=}
        while [ ! -e "/sys/class/net/$ifc" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        ip addr add "$addr" dev "$ifc"
        ip link set "$ifc" up
    done
}
