#!/bin/bash
# Installs what the lab needs on the machine that runs it (CI calls this).
# Debian packages only; idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
    qemu-system-x86     # the guest (TCG)
    debootstrap         # builds the guest root from Debian packages
    busybox-static      # the guest's tiny initrd
    cpio gzip e2fsprogs kmod  # initrd and root image
    iproute2            # ip netns, tuntap, tc
    nftables            # netns helper: loss without sch_netem
    libiscsi-bin        # iscsi-inq / iscsi-ls for the netns tests
    tgt                 # reference target (LAB_TARGET=tgt)
    util-linux procps
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# tgt's package starts tgtd at install time (on hosts with an init system);
# the lab runs its own tgtd inside a namespace with its own control port.
modprobe tun 2>/dev/null || true
[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
echo "lab deps ok"
