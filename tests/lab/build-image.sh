#!/bin/bash
# Builds (or finds in the cache) the lab guest: a Debian root image made by
# debootstrap from the machine's own apt mirror, the Debian kernel, and a tiny
# busybox initrd. Prints the directory holding vmlinuz, initrd.img, root.img.
#
#   tests/lab/build-image.sh            # build if not cached, print the dir
#   LAB_REBUILD=1 tests/lab/build-image.sh
#
# Cache: $LAB_CACHE, else /var/cache/tandem-lab (root), else tests/lab/cache;
# one directory per hash of guest-packages.txt + the scripts that shape the
# image. Old images are pruned (the newest 2 are kept).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || die "build-image.sh needs root (debootstrap, chroot)"

read -r MIRROR SUITE < <(apt_mirror_and_suite) || die "no Debian mirror found in /etc/apt/sources*"
mapfile -t PKGS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LAB_DIR/guest-packages.txt" | grep .)

KEY=$( { echo "suite=$SUITE"; printf '%s\n' "${PKGS[@]}";
         cat "$LAB_DIR/build-image.sh" "$LAB_DIR/initrd-init" "$LAB_DIR/guest/lab-init"; } |
       sha256sum | cut -c1-16)
CACHE=$(lab_cache_dir)
OUT="$CACHE/guest-$KEY"
mkdir -p "$CACHE"

if [ -z "${LAB_REBUILD:-}" ] && [ -f "$OUT/ok" ]; then
    echo "$OUT"; exit 0
fi

exec 9>"$CACHE/.build.lock"
flock 9
if [ -z "${LAB_REBUILD:-}" ] && [ -f "$OUT/ok" ]; then echo "$OUT"; exit 0; fi

t0=$(date +%s)
log "building guest image $KEY from $MIRROR $SUITE (cache $CACHE)"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
DEBS="$CACHE/debs"          # debootstrap's package cache, shared by all keys
mkdir -p "$DEBS" "$WORK/kernel"

KPKGS=(); BPKGS=()
for p in "${PKGS[@]}"; do
    case "$p" in linux-image-*) KPKGS+=("$p") ;; *) BPKGS+=("$p") ;; esac
done
[ ${#KPKGS[@]} = 1 ] || die "guest-packages.txt must name exactly one linux-image package"

# 1. Root file system.
include=$(IFS=,; echo "${BPKGS[*]}")
if ! debootstrap --variant=minbase --cache-dir="$DEBS" --include="$include" \
        "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed"
fi
log "debootstrap done ($(( $(date +%s) - t0 )) s)"

# 2. Kernel: unpack the Debian kernel package (no initramfs-tools run).
#    Resolve the meta package with the machine's apt (same sources).
kpkg=${KPKGS[0]}
apt-cache show "$kpkg" >/dev/null 2>&1 || apt-get update -q >&2
real=$(apt-cache depends "$kpkg" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$real" ] || real=$kpkg
kdeb=$(ls "$DEBS/kernel/${real}_"*.deb 2>/dev/null | tail -n1 || true)
if [ -z "$kdeb" ]; then
    rm -rf "$DEBS/kernel"; mkdir -p "$DEBS/kernel"
    chmod 755 "$DEBS" "$DEBS/kernel"; chown _apt: "$DEBS/kernel" 2>/dev/null || true
    ( cd "$DEBS/kernel" && apt-get download -q "$real" >&2 )
    kdeb=$(ls "$DEBS/kernel/${real}_"*.deb | tail -n1)
fi
# Not straight into $ROOT: tar would replace the merged-/usr /lib symlink.
dpkg-deb -x "$kdeb" "$WORK/kernel"
mkdir -p "$ROOT/usr/lib/modules" "$ROOT/boot"
mv "$WORK"/kernel/lib/modules/* "$ROOT/usr/lib/modules/"
mv "$WORK"/kernel/boot/* "$ROOT/boot/"
[ -L "$ROOT/lib" ] || die "merged /usr expected in the guest root"
KVER=$(ls "$ROOT/lib/modules" | head -n1)
# Drop module trees the guest never loads (keeps the image small).
M="$ROOT/lib/modules/$KVER/kernel"
rm -rf "$M"/drivers/{gpu,media,net/wireless,net/ethernet,infiniband,staging,iio,bluetooth,usb,sound,hid,input,isdn,mtd,comedi,video,platform} \
       "$M"/sound "$M"/net/{wireless,mac80211,bluetooth} "$M"/fs/{ocfs2,xfs,btrfs,gfs2,nfs,nfsd,ceph,cifs,smb,ntfs3,f2fs}
depmod -b "$ROOT" "$KVER"

# 3. Guest files.
install -m 0755 "$LAB_DIR/guest/lab-init" "$ROOT/sbin/lab-init"
echo lab-host > "$ROOT/etc/hostname"
: > "$ROOT/etc/fstab"
rm -rf "$ROOT"/usr/share/{doc,man,info,locale} "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/*
rm -f "$ROOT/etc/iscsi/initiatorname.iscsi"   # the scenario sets the IQN

# 4. Root image (ext4, built from the directory without mounting).
size=$(( $(du -sm "$ROOT" | cut -f1) * 12 / 10 + 128 ))
mkfs.ext4 -q -F -L labroot -E root_owner=0:0 -d "$ROOT" "$WORK/root.img" "${size}M" >&2

# 5. Initrd: static busybox + the modules to mount the root.
I="$WORK/initrd"
mkdir -p "$I"/{bin,dev,proc,sys,newroot}
cp /bin/busybox "$I/bin/busybox"
ln -s busybox "$I/bin/sh"
install -m 0755 "$LAB_DIR/initrd-init" "$I/init"
: > "$I/modules"
modprobe -a -d "$ROOT" -S "$KVER" --show-depends virtio_pci virtio_blk crc32c_generic ext4 |
    awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' |
while read -r ko; do
    rel=${ko#"$ROOT"}
    mkdir -p "$I$(dirname "$rel")"
    cp "$ko" "$I$rel"
    echo "$rel" >> "$I/modules"
done
( cd "$I" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$WORK/initrd.img"

# 6. Publish.
mkdir -p "$WORK/out"
mv "$WORK/root.img" "$WORK/initrd.img" "$WORK/out/"
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/out/vmlinuz"
printf '%s\n' "key=$KEY" "suite=$SUITE" "kernel=$KVER" "built=$(date -u +%FT%TZ)" \
    "seconds=$(( $(date +%s) - t0 ))" > "$WORK/out/info"
printf '%s\n' "${PKGS[@]}" > "$WORK/out/packages"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
touch "$OUT/ok"
# Keep the two newest images.
ls -1dt "$CACHE"/guest-* 2>/dev/null | tail -n +3 | xargs -r rm -rf
log "guest image ready in $(( $(date +%s) - t0 )) s: $OUT"
echo "$OUT"
