#!/usr/bin/env bash
# VirtualWire demo: two hosts, two VMs, one wire, a ping, the counters.
#
#   vm1 (QEMU) --vhost-user-- [vwfabric h1] --tap-- underlay bridge --tap-- [vwfabric h2] --vhost-user-- vm2 (QEMU)
#   192.168.7.1                VTEP 10.0.0.1        (netns vwdemo-ul)        VTEP 10.0.0.2               192.168.7.2
#
# Each "host" is a vwfabric process whose uplink is a DPDK net_tap port
# plugged into a Linux bridge; each VM is a real Linux guest in QEMU (the
# test guest of ci/guest/build.sh) whose virtio-net NIC is a vhost-user
# endpoint of its host's fabric. The fabrics share an endpoint directory
# (a single-node etcd on loopback): wire 7 is connected once, by name, on
# h1; h2 sets up its half by itself. It joins vm1 and vm2 across the
# underlay in the vwire format (UDP + 32-bit connector ID). Run as root.
# ENCAP=vxlan ci/demo.sh uses RFC 7348 VXLAN instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ENCAP=${ENCAP:-vwire}
B=target/release
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

D=/tmp/vwdemo
cleanup() {
    for q in "$D"/vm*.pid; do [ -f "$q" ] && kill -TERM "$(cat "$q")" 2>/dev/null; done || true
    [ -n "${H1:-}" ] && kill -TERM "$H1" 2>/dev/null || true
    [ -n "${H2:-}" ] && kill -TERM "$H2" 2>/dev/null || true
    [ -n "${ETCD:-}" ] && kill -TERM "$ETCD" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del vwdemo-ul 2>/dev/null || true
}
trap cleanup EXIT

say "setting up (packages, hugepages, QEMU and the guest image) and building"
ci/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins --quiet
cleanup
rm -rf "$D" && mkdir -p "$D"

say "the underlay: a Linux bridge in namespace vwdemo-ul"
ip netns add vwdemo-ul
ip -n vwdemo-ul link add br0 type bridge
ip -n vwdemo-ul link set br0 up

say "the endpoint directory: a single-node etcd on loopback (a 3-member cluster in production: docs/directory.md)"
E=http://127.0.0.1:23379
printf '$ etcd --data-dir %s --listen-client-urls %s ... &\n' "$D/etcd" "$E"
etcd --name demo --data-dir "$D/etcd" --listen-client-urls $E --advertise-client-urls $E \
     --listen-peer-urls http://127.0.0.1:23380 --initial-advertise-peer-urls http://127.0.0.1:23380 \
     --initial-cluster demo=http://127.0.0.1:23380 > "$D/etcd.log" 2>&1 &
ETCD=$!
etcdctl() { ETCDCTL_API=3 command etcdctl --endpoints $E "$@"; }
for _ in $(seq 100); do etcdctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
etcdctl endpoint health >/dev/null 2>&1 || { echo "etcd did not start:"; cat "$D/etcd.log"; exit 1; }

say "two hosts: one vwfabric each, uplink on a net_tap port, sharing this machine's cores, in directory domain demo"
for h in 1 2; do
    args=(--socket /tmp/vwdemo-h$h.sock --uplink net_tap0,iface=vwd-up$h --vtep 10.0.0.$h/24
          --directory $E --directory-domain demo --host-name h$h
          --idle-sleep-us 50 -- -l 0-1 --no-huge -m 256 --file-prefix vwdemo-h$h)
    printf '$ %s %s &\n' "$B/vwfabric" "${args[*]}"
    $B/vwfabric "${args[@]}" > /tmp/vwdemo-h$h.log 2>&1 &
    eval H$h=$!
done
for h in 1 2; do
    for _ in $(seq 100); do [ -S /tmp/vwdemo-h$h.sock ] && break; sleep 0.1; done
    [ -S /tmp/vwdemo-h$h.sock ] || { echo "vwfabric h$h did not start:"; cat /tmp/vwdemo-h$h.log; exit 1; }
    # Plug the uplink into the bridge. The switch side gets its own MAC, as a
    # real switch port has (net_tap gives the kernel side the PMD's MAC).
    ip link set vwd-up$h netns vwdemo-ul
    ip -n vwdemo-ul link set vwd-up$h address 02:00:5e:ff:00:0$h master br0 up
done
h1() { run $B/vwctl --socket /tmp/vwdemo-h1.sock "$@"; }
h2() { run $B/vwctl --socket /tmp/vwdemo-h2.sock "$@"; }
h1 status

say "two VMs: a vhost-user endpoint on each host, a QEMU guest on each"
h1 endpoint add vm1 --vhost-user $D/vm1.sock
h2 endpoint add vm2 --vhost-user $D/vm2.sock
# 1500-byte underlay: the guest's MTU leaves room for the outer headers
# (46 bytes of vwire, 50 of VXLAN: docs/qemu.md); QEMU tells the guest.
[ "$ENCAP" = vxlan ] && mtu=1450 || mtu=1454
# Under TCG (no KVM here); QEMU 7 needs vectors=0 there (docs/qemu.md).
vectors=""
[ "$(qemu-system-x86_64 --version | awk '/version/ {split($4, v, "."); print v[1]; exit}')" -lt 8 ] && vectors=",vectors=0"
G=${VW_GUEST_DIR:-/var/cache/virtualwire/guest}
for v in 1 2; do
    args=(-name vm$v -accel tcg -m 256M -nographic -nodefaults
          -kernel $G/vmlinuz -initrd $G/initrd.img -append "console=ttyS0 quiet vw.ip=192.168.7.$v/24 vw.name=vm$v"
          -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem
          -chardev socket,id=vu,path=$D/vm$v.sock,reconnect=1 -netdev vhost-user,id=n0,chardev=vu
          -device virtio-net-pci,netdev=n0,mac=52:54:00:07:00:0$v,host_mtu=$mtu,romfile=,rx_queue_size=1024,tx_queue_size=1024$vectors
          -chardev file,id=con,path=$D/vm$v-console.log -serial chardev:con
          -chardev socket,id=agent,path=$D/vm$v-agent.sock,server=on,wait=off -serial chardev:agent
          -pidfile $D/vm$v.pid -daemonize)
    printf '$ qemu-system-x86_64 %s\n' "${args[*]}"
    qemu-system-x86_64 "${args[@]}"
done
vm1() { printf '$ (in vm1) %s\n' "$*"; ci/guest/cmd.py $D/vm1-agent.sock "$*"; }
vm1 "cat /sys/class/net/eth0/mtu"
h1 endpoint list

say "wire 7: connected once, by name, on h1 ($ENCAP); h2 sets up its half from the directory"
h1 connect 7 vm1 vm2 --encap "$ENCAP"
for _ in $(seq 50); do $B/vwctl --socket /tmp/vwdemo-h2.sock wire list | grep -q encap && break; sleep 0.1; done
printf '$ etcdctl get --prefix /virtualwire/demo/\n'
etcdctl get --prefix /virtualwire/demo/

say "vm1 pings vm2 across the wire"
vm1 "ping -c 5 -i 0.2 192.168.7.2"

say "what the fabrics saw (drops on the uplink are underlay chatter not meant for the VTEP: IPv6, IGMP)"
h1 wire list
h2 wire list
h1 stats
h1 status
say "done: the hosts and VMs are removed on exit (logs in /tmp/vwdemo-h1.log, /tmp/vwdemo-h2.log, $D/vm*-console.log)"
