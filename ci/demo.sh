#!/usr/bin/env bash
# VirtualWire demo: two hosts, two VMs, one wire, a ping, the counters.
#
#   vm1 (netns) --tap-- [vwfabric h1] --tap-- underlay bridge --tap-- [vwfabric h2] --tap-- vm2 (netns)
#    192.168.7.1          VTEP 10.0.0.1        (netns vwdemo-ul)          VTEP 10.0.0.2        192.168.7.2
#
# Each "host" is a vwfabric process whose uplink is a DPDK net_tap port
# plugged into a Linux bridge; each "VM" is a network namespace holding a
# net_tap endpoint's interface. Wire 7 joins vm1 and vm2 across the
# underlay in the vwire format (UDP + 32-bit connector ID). Run as root.
# ENCAP=vxlan ci/demo.sh uses RFC 7348 VXLAN instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ENCAP=${ENCAP:-vwire}
B=target/release
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
    [ -n "${H1:-}" ] && kill -TERM "$H1" 2>/dev/null || true
    [ -n "${H2:-}" ] && kill -TERM "$H2" 2>/dev/null || true
    wait 2>/dev/null || true
    for n in vwdemo-vm1 vwdemo-vm2 vwdemo-ul; do ip netns del $n 2>/dev/null || true; done
}
trap cleanup EXIT

say "setting up (packages, hugepages) and building"
ci/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins --quiet
cleanup

say "the underlay: a Linux bridge in namespace vwdemo-ul"
ip netns add vwdemo-ul
ip -n vwdemo-ul link add br0 type bridge
ip -n vwdemo-ul link set br0 up

say "two hosts: one vwfabric each, uplink on a net_tap port, sharing this machine's cores"
for h in 1 2; do
    args=(--socket /tmp/vwdemo-h$h.sock --uplink net_tap0,iface=vwd-up$h --vtep 10.0.0.$h/24
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

say "two VMs: a net_tap endpoint on each host, its interface moved into a namespace"
h1 endpoint add vm1 net_tap1,iface=vwd-vm1
h2 endpoint add vm2 net_tap1,iface=vwd-vm2
for v in 1 2; do
    ip netns add vwdemo-vm$v
    ip link set vwd-vm$v netns vwdemo-vm$v
    ip -n vwdemo-vm$v addr add 192.168.7.$v/24 dev vwd-vm$v
    # 1500-byte underlay: leave room for the outer headers (docs/wire-format.md).
    ip -n vwdemo-vm$v link set vwd-vm$v mtu 1400 up
done

say "wire 7: connected on both hosts, each naming the other's VTEP ($ENCAP)"
h1 connect 7 vm1 10.0.0.2 --encap "$ENCAP"
h2 connect 7 vm2 10.0.0.1 --encap "$ENCAP"

say "vm1 pings vm2 across the wire"
run ip netns exec vwdemo-vm1 ping -c 5 -i 0.2 192.168.7.2

say "what the fabrics saw (drops on the uplink are underlay chatter not meant for the VTEP: IPv6, IGMP)"
h1 wire list
h2 wire list
h1 stats
h1 status
say "done: the hosts and VMs are removed on exit (logs in /tmp/vwdemo-h1.log, /tmp/vwdemo-h2.log)"
