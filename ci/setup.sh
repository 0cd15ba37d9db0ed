#!/usr/bin/env bash
# Installs and sets up what VirtualWire needs on a Debian 12 machine, and
# only what is missing: DPDK 22.11 (runtime, headers, PMDs), clang for
# bindgen, protoc for the etcd client, tshark/python3/iproute2/socat and etcd
# for the end-to-end tests, hugepages and /dev/net/tun, QEMU and the test guest
# (ci/guest/build.sh). Needs root.
# Safe to run again.
set -euo pipefail

say() { echo "setup: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (it installs packages and sets up hugepages)" >&2
    exit 1
fi

# Debian packages, by the command or file that proves each is there.
need=()
pkg-config --exists libdpdk 2>/dev/null || need+=(dpdk dpdk-dev libdpdk-dev pkg-config)
command -v dpdk-testpmd >/dev/null || need+=(dpdk)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v clang >/dev/null || need+=(clang)
command -v tshark >/dev/null || need+=(tshark)
command -v python3 >/dev/null || need+=(python3)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v sysctl >/dev/null || need+=(procps)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
# The Linux far end of the secure-wire test holds a UDP_ENCAP_ESPINUDP
# socket open with socat, in the guest.
command -v socat >/dev/null || need+=(socat)
# The secure wire through NAT puts a Linux NAT (nftables masquerade) on the
# underlay and makes it forget its mappings with conntrack.
command -v nft >/dev/null || need+=(nftables)
command -v conntrack >/dev/null || need+=(conntrack)
# The endpoint directory's tests run a real etcd; its client crate builds
# etcd's protobuf definitions with protoc.
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v openssl >/dev/null || need+=(openssl)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
say "DPDK $(pkg-config --modversion libdpdk), $(clang --version | head -1)"

# Rust: the machine's toolchain, with rustfmt and clippy.
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: no Rust toolchain (cargo) found; install one with rustup (https://rustup.rs)" >&2; exit 1; }
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null && rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
say "$(cargo --version)"

# Hugepages (2 MB): 512 of them, mounted at /dev/hugepages.
if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 512 ]; then
    echo 512 > /proc/sys/vm/nr_hugepages || true
fi
mkdir -p /dev/hugepages
mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages || true
say "hugepages: $(grep HugePages_Total /proc/meminfo | awk '{print $2}') x 2 MB"

# TUN/TAP for net_tap ports.
if [ ! -c /dev/net/tun ]; then
    mkdir -p /dev/net
    mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun || true
fi
[ -c /dev/net/tun ] && say "/dev/net/tun present" || say "WARNING: no /dev/net/tun; net_tap tests cannot run"

# The QEMU test guest: Debian's cloud kernel and a busybox initramfs, cached
# in /var/cache/virtualwire/guest (or $VW_GUEST_DIR) until either changes.
say "$(qemu-system-x86_64 --version | head -1)"
"$(dirname "$0")/guest/build.sh"
