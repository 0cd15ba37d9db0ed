#!/usr/bin/env bash
# Builds the test guest: Debian's cloud kernel (downloaded and unpacked, not
# installed) and a busybox initramfs with the virtio modules and ci/guest/init.
#
#   ci/guest/build.sh [DIR]     # default: $VW_GUEST_DIR or /var/cache/virtualwire/guest
#
# Writes DIR/vmlinuz and DIR/initrd.img and DIR/stamp; does nothing when the stamp
# (kernel package version and the hash of init and this script) is current. Needs
# root for apt-get (busybox-static is installed if missing), network access the
# first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${VW_GUEST_DIR:-/var/cache/virtualwire/guest}}
say() { echo "guest: $*"; }

need=()
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi

# The kernel package the metapackage names today (apt's cache knows it offline too).
meta=linux-image-cloud-amd64
kpkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$kpkg" ] || { echo "guest: cannot find the kernel package $meta depends on" >&2; exit 1; }
kver=$(apt-cache show "$kpkg" | awk '/^Version:/ {print $2; exit}')
stamp="$kpkg $kver $(cat "$here/init" "$here/build.sh" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
    say "up to date in $out ($kpkg $kver)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "downloading $kpkg $kver"
(cd "$work" && chmod 0777 . && apt-get download "$kpkg" >/dev/null 2>&1) ||
    { apt-get update -qq && (cd "$work" && apt-get download "$kpkg" >/dev/null); }
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
release=${kpkg#linux-image-}
mods="$work/k/lib/modules/$release/kernel"

root="$work/root"
mkdir -p "$root/bin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/srv"
cp /bin/busybox "$root/bin/busybox"
install -m 0755 "$here/init" "$root/init"
# Copies modules into the image's /lib/modules and appends their names to
# the list $1 there, in load order (each after what its `depends=` names).
add_modules() {
    local list=$1 m f
    shift
    for m in "$@"; do
        f="$mods/$m"
        [ -e "$f" ] || f=$(ls "$f".* 2>/dev/null | head -1)
        if [ -e "$f" ]; then
            case "$f" in
                *.xz) xz -dc "$f" > "$root/lib/modules/$(basename "$m")" ;;
                *.zst) zstd -qdc "$f" > "$root/lib/modules/$(basename "$m")" ;;
                *) cp "$f" "$root/lib/modules/" ;;
            esac
            basename "$m" .ko >> "$root/lib/modules/$list"
        fi
    done
}
# The init loads these at boot, as listed in /lib/modules/load-order.
add_modules load-order drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko \
    drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko \
    net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko
# What a Linux far end of a secure wire needs (ip xfrm with ESP in UDP and
# AES-GCM, a VXLAN device), loaded by the test that makes one
# (`for m in $(cat /lib/modules/secure-order); do insmod /lib/modules/$m.ko; done`),
# so that every other guest runs as before. The guest has no modprobe, so
# the crypto templates the kernel asks for by name (rfc4106, gcm, ghash,
# ctr, seqiv, and the default RNG seqiv takes its salt from: drbg with
# jitterentropy, sha3 and sha512) are in the list.
add_modules secure-order net/xfrm/xfrm_algo.ko net/xfrm/xfrm_user.ko net/ipv4/esp4.ko crypto/gf128mul.ko \
    crypto/ghash-generic.ko crypto/ctr.ko crypto/gcm.ko crypto/sha3_generic.ko crypto/jitterentropy_rng.ko \
    crypto/sha512_generic.ko crypto/drbg.ko crypto/seqiv.ko crypto/echainiv.ko \
    net/ipv4/udp_tunnel.ko net/ipv6/ip6_udp_tunnel.ko drivers/net/vxlan/vxlan.ko
[ -e "$root/lib/modules/virtio_net.ko" ] || grep -q '^CONFIG_VIRTIO_NET=y' "$work/k/boot/config-$release" ||
    { echo "guest: $kpkg has no virtio_net module" >&2; exit 1; }

mkdir -p "$out"
cp "$work/k/boot/vmlinuz-$release" "$out/vmlinuz.new"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/initrd.img.new" "$out/initrd.img"
echo "$stamp" > "$out/stamp"
say "built $out (kernel $release, initramfs $(du -k "$out/initrd.img" | cut -f1) KB)"
