//! Hostile underlay traffic, replayed from a capture file into the uplink by
//! DPDK's `net_pcap` PMD: every frame is delivered to the right endpoint or
//! dropped under a named reason in `vwctl stats`, and the totals add up.
//! The endpoints are `net_pcap` ports too, writing what the fabric delivers
//! to them into capture files, so delivery is checked byte for byte.
//! Run as root: `cargo test --release -p vw-e2e --test hostile`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use vw_e2e::*;
use vw_wire::underlay::build_tunnel_frame;
use vw_wire::{ConnectorId, Encap, EncapTemplate, MacAddr};

const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Peer of wire 7 (vwire, endpoint vm1) and wire 10 (vwire, vm3).
const PEER_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Peer of wire 8 (vxlan, endpoint vm2).
const PEER_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const PEER_A_MAC: &str = "02:00:5e:00:00:02";
const SRC_MAC: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 0, 0x02]);

/// What must become of a replayed frame.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Dropped and counted under this reason.
    Drop(&'static str),
    /// Consumed or answered by the VTEP (a `handled` counter).
    Handled(&'static str),
    /// Decapsulated onto wire N: the endpoint receives exactly these bytes.
    Deliver(u32, Vec<u8>),
}

/// An inner frame that names its wire and number, `len` bytes long.
fn inner(wire: u32, k: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0xaa, 0, 0, 0, wire as u8, 0x02, 0xbb, 0, 0, (k >> 8) as u8, k as u8, 0x88, 0xb5];
    f.extend_from_slice(format!("wire {wire} frame {k} ").as_bytes());
    f.resize(len.max(14), k as u8);
    f.truncate(len);
    f
}

struct Builder {
    our_mac: MacAddr,
    mtu: u16,
}

impl Builder {
    fn tunnel(&self, encap: Encap, id: u32, src: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
        let port = if encap == Encap::Vwire { 4795 } else { 4789 };
        let t = EncapTemplate::new(encap, ConnectorId(id), SRC_MAC, self.our_mac, src, VTEP, port, 9000);
        build_tunnel_frame(&t, inner, 50000u16.wrapping_add(inner.len() as u16))
    }

    /// An ICMP message to the VTEP: `icmp` is the ICMP header and data.
    fn icmp(&self, icmp: &[u8]) -> Vec<u8> {
        let mut f = self.tunnel(Encap::Vwire, 7, PEER_A, &[]);
        f.truncate(34);
        f.extend_from_slice(icmp);
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[23] = 1;
        fix_ip(&mut f);
        f
    }

    fn arp(&self, dst: MacAddr, op: u16, sender: (MacAddr, Ipv4Addr), target_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&sender.0 .0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sender.0 .0);
        f.extend_from_slice(&sender.1.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target_ip.octets());
        f.resize(60, 0);
        f
    }
}

/// Internet checksum of `data`.
fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Recomputes the IPv4 header checksum (any header length).
fn fix_ip(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].fill(0);
    let c = csum(&f[14..14 + ihl.max(20)]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// `f` cut to `len` bytes with IPv4 and UDP lengths made to agree.
fn cut_consistent(f: &[u8], len: usize) -> Vec<u8> {
    let mut v = f[..len].to_vec();
    v[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    if len >= 42 {
        v[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    }
    fix_ip(&mut v);
    v
}

fn edit(f: &[u8], e: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = f.to_vec();
    e(&mut v);
    v
}

/// The hostile frames, each with its fate.
fn hostile(b: &Builder) -> Vec<(Fate, Vec<u8>)> {
    use Fate::{Drop, Handled};
    let mtu = usize::from(b.mtu);
    let vw = b.tunnel(Encap::Vwire, 7, PEER_A, &inner(7, 9999, 100));
    let vx = b.tunnel(Encap::Vxlan, 8, PEER_B, &inner(8, 9999, 100));
    let mut c: Vec<(Fate, Vec<u8>)> = Vec::new();

    // Truncated at and inside every header, lengths left as they were.
    for len in [1, 6, 12, 13] {
        c.push((Drop("runt"), vw[..len].to_vec()));
    }
    for len in [14, 15, 20, 33] {
        c.push((Drop("ipv4_truncated"), vw[..len].to_vec()));
    }
    for len in [34, 38, 41, 42, 45, 46, 50, 59, 60, 100] {
        c.push((Drop("ipv4_total_length"), vw[..len].to_vec()));
    }
    for len in [34, 42, 46, 49, 50, 63, 64] {
        c.push((Drop("ipv4_total_length"), vx[..len].to_vec()));
    }
    // ... and with the IPv4 and UDP lengths made to agree, so each cut
    // reaches the next parser.
    for (f, len, reason) in [
        (&vw, 34, "udp_truncated"),
        (&vw, 38, "udp_truncated"),
        (&vw, 42, "tunnel_truncated"),
        (&vw, 45, "tunnel_truncated"),
        (&vw, 46, "inner_runt"),
        (&vw, 59, "inner_runt"),
        (&vx, 42, "tunnel_truncated"),
        (&vx, 49, "tunnel_truncated"),
        (&vx, 50, "inner_runt"),
        (&vx, 63, "inner_runt"),
    ] {
        c.push((Drop(reason), cut_consistent(f, len)));
    }
    // IPv4 header lies.
    c.push((Drop("ipv4_version"), edit(&vw, |f| f[14] = 0x65)));
    c.push((Drop("ipv4_header_length"), edit(&vw, |f| f[14] = 0x44)));
    c.push((Drop("ipv4_header_length"), edit(&vw, |f| f[14] = 0x40)));
    c.push((Drop("ipv4_options"), edit(&vw, |f| f[14] = 0x4f)));
    c.push((
        Drop("ipv4_options"), // a real option (4 x NOP), lengths and checksum right
        edit(&vw, |f| {
            f.splice(34..34, [1, 1, 1, 1]);
            f[14] = 0x46;
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            fix_ip(f);
        }),
    ));
    for total in [0u16, 19, (vw.len() - 14 + 1) as u16, 0xffff] {
        c.push((
            Drop("ipv4_total_length"),
            edit(&vw, |f| {
                f[16..18].copy_from_slice(&total.to_be_bytes());
                fix_ip(f);
            }),
        ));
    }
    c.push((Drop("ipv4_checksum"), edit(&vw, |f| f[24] ^= 0x5a)));
    c.push((Drop("ipv4_checksum"), edit(&vw, |f| f[22] -= 1))); // TTL changed, checksum not
    for frag in [0x2000u16, 0x6000, 0x00b9, 0x1fff] {
        c.push((
            Drop("ipv4_fragment"),
            edit(&vw, |f| {
                f[20..22].copy_from_slice(&frag.to_be_bytes());
                fix_ip(f);
            }),
        ));
    }
    for dst in [[10, 0, 0, 9], [255, 255, 255, 255], [10, 0, 0, 255], [224, 0, 0, 1]] {
        c.push((
            Drop("not_our_address"),
            edit(&vw, |f| {
                f[30..34].copy_from_slice(&dst);
                fix_ip(f);
            }),
        ));
    }
    for proto in [6u8, 47, 0, 255] {
        c.push((
            Drop("ip_protocol"),
            edit(&vw, |f| {
                f[23] = proto;
                fix_ip(f);
            }),
        ));
    }
    // ICMP: only a well-formed echo request is answered.
    let echo = |ty: u8, data: &[u8]| {
        let mut m = vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1];
        m.extend_from_slice(data);
        let ck = csum(&m);
        m[2..4].copy_from_slice(&ck.to_be_bytes());
        m
    };
    for i in 0..5u8 {
        c.push((Handled("icmp_echo_answered"), b.icmp(&echo(8, &[i; 48]))));
    }
    c.push((Drop("icmp_other"), b.icmp(&edit(&echo(8, b"x"), |m| m[2] ^= 1))));
    c.push((Drop("icmp_other"), b.icmp(&echo(0, b"reply"))));
    c.push((Drop("icmp_other"), b.icmp(&echo(13, &[0; 12]))));
    c.push((Drop("icmp_other"), b.icmp(&[8, 0, 0xf7])));
    // UDP length lies and ports nobody listens on (the migration port
    // included: this fabric runs without migration).
    for (delta, reason) in [(4i32, "udp_length"), (-4, "udp_length"), (-1000, "udp_length")] {
        c.push((
            Drop(reason),
            edit(&vw, |f| {
                let l = (i32::from(u16::from_be_bytes([f[38], f[39]])) + delta).max(0) as u16;
                f[38..40].copy_from_slice(&l.to_be_bytes());
            }),
        ));
    }
    for port in [4790u16, 4796, 53, 0] {
        c.push((Drop("udp_port"), edit(&vw, |f| f[36..38].copy_from_slice(&port.to_be_bytes()))));
    }
    // Connectors: unknown, the other format's, and known ones from the
    // wrong VTEP (a stranger, the other peer, our own address).
    let payload = inner(7, 9998, 80);
    for (encap, id) in
        [(Encap::Vwire, 99), (Encap::Vwire, 0), (Encap::Vwire, 8), (Encap::Vxlan, 7), (Encap::Vxlan, 0xff_ffff)]
    {
        c.push((Drop("unknown_connector"), b.tunnel(encap, id, PEER_A, &payload)));
    }
    for (encap, id, src) in [
        (Encap::Vwire, 7, PEER_B),
        (Encap::Vwire, 7, Ipv4Addr::new(10, 0, 0, 77)),
        (Encap::Vwire, 7, VTEP),
        (Encap::Vwire, 7, Ipv4Addr::UNSPECIFIED),
        // Sources no peer can have (refused as peers at `connect`).
        (Encap::Vwire, 7, Ipv4Addr::new(10, 0, 0, 255)),
        (Encap::Vwire, 7, Ipv4Addr::new(10, 0, 0, 0)),
        (Encap::Vwire, 7, Ipv4Addr::BROADCAST),
        (Encap::Vwire, 7, Ipv4Addr::new(224, 0, 0, 1)),
        (Encap::Vxlan, 8, Ipv4Addr::LOCALHOST),
        (Encap::Vxlan, 8, Ipv4Addr::new(240, 0, 0, 1)),
        (Encap::Vxlan, 8, PEER_A),
        (Encap::Vwire, 10, PEER_B),
    ] {
        c.push((Drop("wrong_peer"), b.tunnel(encap, id, src, &payload)));
    }
    c.push((Drop("vxlan_flags"), edit(&vx, |f| f[42] = 0)));
    c.push((Drop("vxlan_flags"), edit(&vx, |f| f[42] = 0xf7)));
    // Ethernet: not for us, VLAN-in-VLAN, other EtherTypes.
    c.push((Drop("not_our_mac"), edit(&vw, |f| f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]))));
    c.push((Drop("not_our_mac"), vec![0; 60]));
    let tagged = |tags: &[[u8; 4]]| {
        edit(&vw, |f| {
            for t in tags.iter().rev() {
                f.splice(12..12, *t);
            }
        })
    };
    c.push((Drop("not_ipv4"), tagged(&[[0x81, 0, 0, 100]])));
    c.push((Drop("not_ipv4"), tagged(&[[0x88, 0xa8, 0, 200], [0x81, 0, 0x01, 0x2c]])));
    c.push((Drop("not_ipv4"), tagged(&[[0x81, 0, 0, 1], [0x81, 0, 0, 2], [0x81, 0, 0, 3]])));
    c.push((Drop("not_ipv4"), edit(&vw, |f| f[12..14].copy_from_slice(&[0x86, 0xdd]))));
    c.push((
        Drop("not_ipv4"), // LLDP to the nearest-bridge group address
        edit(&vw[..60], |f| {
            f[..6].copy_from_slice(&[0x01, 0x80, 0xc2, 0, 0, 0x0e]);
            f[12..14].copy_from_slice(&[0x88, 0xcc]);
        }),
    ));
    // Oversize: one byte over the underlay MTU, a 9000-byte jumbo frame
    // (several mbufs), and 16 KB.
    for inner_len in [mtu - 46 + 14 + 1, 9000 - 46, 16000] {
        c.push((Drop("oversize"), b.tunnel(Encap::Vwire, 7, PEER_A, &inner(7, 9997, inner_len))));
    }
    // An ARP storm: requests for our VTEP from many strangers (answered),
    // requests for other addresses and replies nobody asked for (ignored),
    // spoofed announcements of a static neighbour (taken to the control
    // plane, which does not change a static entry), malformed ARP.
    for i in 0..300u32 {
        let mac = MacAddr([0x02, 0x66, 0, 0, (i >> 8) as u8, i as u8]);
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + i);
        c.push((Handled("arp_answered"), b.arp(MacAddr::BROADCAST, 1, (mac, ip), VTEP)));
        c.push((Drop("arp_ignored"), b.arp(MacAddr::BROADCAST, 1, (mac, ip), Ipv4Addr::new(10, 0, 0, 50))));
        if i % 3 == 0 {
            c.push((Drop("arp_ignored"), b.arp(b.our_mac, 2, (mac, ip), VTEP)));
            c.push((Handled("arp_from_neighbour"), b.arp(MacAddr::BROADCAST, 1, (mac, PEER_A), PEER_A)));
        }
    }
    let req = b.arp(MacAddr::BROADCAST, 1, (SRC_MAC, PEER_A), VTEP);
    c.push((Drop("arp_malformed"), req[..14 + 27].to_vec()));
    c.push((Drop("arp_malformed"), edit(&req, |f| f[15] = 6))); // htype 6
    c.push((Drop("arp_malformed"), edit(&req, |f| f[21] = 3))); // op 3
    c.push((Drop("arp_malformed"), edit(&req, |f| f[18] = 8))); // hlen 8
    c.push((Drop("not_our_mac"), edit(&req, |f| f[..6].copy_from_slice(&[0x02, 9, 9, 9, 9, 9]))));
    c
}

/// Valid tunnel frames for wires 7 (vwire from PEER_A) and 8 (vxlan from
/// PEER_B), sizes from 14 to the largest the MTU allows, with and without
/// Ethernet padding after the IPv4 packet.
fn valid(b: &Builder) -> Vec<(Fate, Vec<u8>)> {
    let mtu = usize::from(b.mtu);
    let mut v = Vec::new();
    for k in 0..120usize {
        let (wire, encap, src, overhead) =
            if k % 2 == 0 { (7, Encap::Vwire, PEER_A, 46) } else { (8, Encap::Vxlan, PEER_B, 50) };
        let len = match k {
            0 | 1 => 14,
            2 | 3 => mtu + 14 - overhead,
            _ => 60 + (k * 97) % 1300,
        };
        let i = inner(wire, k, len);
        let mut f = b.tunnel(encap, wire, src, &i);
        if k % 5 == 4 {
            f.extend_from_slice(&[0; 6]); // padding: trimmed, never delivered
        }
        v.push((Fate::Deliver(wire, i), f));
    }
    v
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn pcap_uplink(dir: &Path, rx: &str) -> String {
    format!("net_pcap0,rx_pcap={},tx_pcap={}", dir.join(rx).display(), dir.join("uplink-out.pcap").display())
}

#[test]
fn hostile_underlay_capture_is_delivered_or_dropped_by_reason_and_adds_up() {
    let Some(env) = setup("hostile", &[]) else { return };
    let dir = &env.dir;
    let state = dir.join("state.json");
    write_pcap(&dir.join("empty.pcap"), &[]);
    let opts = |rx: &str| FabricOpts {
        extra: [
            "--uplink",
            &pcap_uplink(dir, rx),
            "--vtep",
            "10.0.0.1/24",
            "--neighbour",
            &format!("10.0.0.2={PEER_A_MAC}"),
            "--neighbour",
            "10.0.0.3=02:00:5e:00:00:03",
            "--state",
            state.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    };

    // Configure with vwctl, uplink replaying nothing; the state file keeps it.
    let mut f = Fabric::start(&env, "h1", opts("empty.pcap"));
    for (i, vm) in ["vm1", "vm2", "vm3"].iter().enumerate() {
        let dev = format!("net_pcap{},tx_pcap={}", i + 1, dir.join(format!("{vm}.pcap")).display());
        f.ctl_ok(&["endpoint", "add", vm, &dev]);
    }
    f.ctl_ok(&["connect", "7", "vm1", "10.0.0.2"]);
    f.ctl_ok(&["connect", "8", "vm2", "10.0.0.3", "--encap", "vxlan"]);
    f.ctl_ok(&["connect", "10", "vm3", "10.0.0.2"]);
    let st = f.json(&["status"]);
    let b = Builder {
        our_mac: st["uplink"]["mac"].as_str().unwrap().parse().unwrap(),
        mtu: u(&st["uplink"]["mtu"]) as u16,
    };
    let idle = f.mbufs_idle();
    assert!(f.stop().success());

    // The capture: hostile frames with valid ones between them.
    let (bad, good) = (hostile(&b), valid(&b));
    let mut frames: Vec<(Fate, Vec<u8>)> = Vec::new();
    let mut good_iter = good.into_iter();
    for h in bad {
        frames.push(h);
        if let Some(g) = good_iter.next() {
            frames.push(g);
        }
    }
    frames.extend(good_iter);
    let n = frames.len() as u64;
    write_pcap(&dir.join("hostile.pcap"), &frames.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>());

    // Replayed at start: the uplink is polled once the wires are restored.
    let mut f = Fabric::start(&env, "h1", opts("hostile.pcap"));
    let t = Instant::now();
    while u(&f.port("uplink")["rx_packets"]) < n && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = f.json(&["stats"]);
    let rx = u(&f.port("uplink")["rx_packets"]);
    assert_eq!(rx, n, "the uplink received every frame of the capture\n{s}");

    let mut want_drops: BTreeMap<&str, u64> = BTreeMap::new();
    let mut want_handled: BTreeMap<&str, u64> = BTreeMap::new();
    let mut want_delivered: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (fate, _) in &frames {
        match fate {
            Fate::Drop(r) => *want_drops.entry(r).or_default() += 1,
            Fate::Handled(h) => *want_handled.entry(h).or_default() += 1,
            Fate::Deliver(w, i) => want_delivered.entry(*w).or_default().push(i.clone()),
        }
    }
    // Every drop reason, named or not in the list, has exactly the expected count.
    let drops = s["drops"].as_object().unwrap();
    for r in want_drops.keys() {
        assert!(drops.contains_key(*r), "no drop reason {r} in vwctl stats");
    }
    let mut mismatches = Vec::new();
    for (r, got) in drops {
        let want = want_drops.get(r.as_str()).copied().unwrap_or(0);
        if u(got) != want {
            mismatches.push(format!("{r}: {} (want {want})", u(got)));
        }
    }
    for (h, got) in s["handled"].as_object().unwrap() {
        let want = want_handled.get(h.as_str()).copied().unwrap_or(0);
        if u(got) != want {
            mismatches.push(format!("handled {h}: {} (want {want})", u(got)));
        }
    }
    let delivered: u64 = [7u32, 8, 10].iter().map(|w| u(&f.wire(*w)["reverse"]["frames"])).sum();
    for w in [7u32, 8, 10] {
        let want = want_delivered.get(&w).map_or(0, Vec::len) as u64;
        let got = u(&f.wire(w)["reverse"]["frames"]);
        if got != want {
            mismatches.push(format!("wire {w} delivered {got} (want {want})"));
        }
    }
    assert!(mismatches.is_empty(), "counters differ from the capture's contents:\n{}\n{s}", mismatches.join("\n"));

    // The totals add up: every received frame was delivered, handled or dropped once.
    let sum = |v: &Value| v.as_object().unwrap().values().map(u).sum::<u64>();
    let (dropped, handled) = (sum(&s["drops"]), sum(&s["handled"]));
    assert_eq!(dropped + handled + delivered, rx, "dropped {dropped} + handled {handled} + delivered {delivered}");
    let worker_rx: u64 = s["workers"].as_array().unwrap().iter().map(|w| u(&w["rx_frames"])).sum();
    assert_eq!(worker_rx, rx, "the workers' receive counters agree with the port's");
    assert!(f.ctl_ok(&["stats"]).contains("oversize"), "vwctl stats names the reasons");
    println!(
        "replayed {rx} frames: {delivered} delivered, {handled} handled, {dropped} dropped under {} reasons",
        want_drops.len()
    );

    // The ARP storm did not move the static neighbour.
    let st = f.json(&["status"]);
    let peer = st["neighbours"].as_array().unwrap().iter().find(|n| n["ip"] == "10.0.0.2").cloned().unwrap();
    assert_eq!((peer["mac"].as_str(), peer["state"].as_str()), (Some(PEER_A_MAC), Some("permanent")), "{peer}");
    f.assert_no_mbuf_leak(idle);
    let log = f.log_text();
    assert!(log.contains("dropped 3 underlay frames longer than the underlay MTU (1500) plus 14 bytes"), "{log}");
    assert!(f.stop().success(), "{log}");

    // Each endpoint got exactly its wire's frames, in order, without the
    // Ethernet padding; the uplink sent the answers.
    for (vm, w) in [("vm1", 7u32), ("vm2", 8), ("vm3", 10)] {
        let got = read_pcap(&dir.join(format!("{vm}.pcap")));
        let want = want_delivered.remove(&w).unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{vm} (wire {w}) received {} frames, want {}", got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{vm}: frame {i} differs");
        }
    }
    let out = read_pcap(&dir.join("uplink-out.pcap"));
    let arp_replies = out
        .iter()
        .filter(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == VTEP.octets())
        .count() as u64;
    let echo_replies = out.iter().filter(|f| f.len() > 34 && f[23] == 1 && f[34] == 0).count() as u64;
    assert_eq!(arp_replies, want_handled["arp_answered"], "ARP replies on the uplink");
    assert_eq!(echo_replies, want_handled["icmp_echo_answered"], "echo replies on the uplink");
}
