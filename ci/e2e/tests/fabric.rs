//! End-to-end tests of the fabric core: real `vwfabric` processes with
//! net_tap ports, driven by `vwctl`, with namespaces as VMs and hosts.
//! Run as root: `cargo test --release -p vw-e2e -- --test-threads=1`
//! (ci/test.sh does). See `docs/testing.md`.

use serde_json::Value;
use std::net::Ipv4Addr;
use vw_e2e::*;
use vw_wire::underlay::build_tunnel_frame;
use vw_wire::{ipv4, ConnectorId, Encap, EncapTemplate, MacAddr};

/// Two hosts with a fabric each on one underlay bridge, and one VM behind
/// each fabric (192.168.7.1 and .2), wire `wire` connected in `encap`.
/// Fields drop in order: fabrics first (they remove their taps), then
/// namespaces.
struct TwoHosts {
    h1: Fabric,
    h2: Fabric,
    vm1: Vm,
    vm2: Vm,
    ul: Underlay,
    /// Mbufs each fabric holds when idle (its ports' RX rings).
    idle: (u64, u64),
}

fn two_hosts(env: &Env, encap: &str, wire: u32) -> TwoHosts {
    let mut ul = Underlay::new(env);
    let t = &env.tag;
    let (up1, up2, e1, e2) = (format!("vw{t}u1"), format!("vw{t}u2"), format!("vw{t}e1"), format!("vw{t}e2"));
    let mut h1 = Fabric::start(
        env,
        "h1",
        FabricOpts { uplink: Some((up1.clone(), "10.0.0.1/24".into())), ..Default::default() },
    );
    let mut h2 = Fabric::start(
        env,
        "h2",
        FabricOpts { uplink: Some((up2.clone(), "10.0.0.2/24".into())), ..Default::default() },
    );
    ul.plug(&up1);
    ul.plug(&up2);
    h1.add_tap("vm1", &e1);
    h2.add_tap("vm2", &e2);
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.7.1/24", 1400);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &e2, "192.168.7.2/24", 1400);
    let w = wire.to_string();
    h1.ctl_ok(&["connect", &w, "vm1", "10.0.0.2", "--encap", encap]);
    h2.ctl_ok(&["connect", &w, "vm2", "10.0.0.1", "--encap", encap]);
    let mut hosts = TwoHosts { h1, h2, vm1, vm2, ul, idle: (0, 0) };
    assert!(hosts.vm1.wait_reachable("192.168.7.2"), "no ping over the {encap} wire\n{}", hosts.logs());
    hosts.idle = (hosts.h1.mbufs_idle(), hosts.h2.mbufs_idle());
    hosts
}

impl TwoHosts {
    fn logs(&self) -> String {
        format!("--- h1 ---\n{}\n--- h2 ---\n{}", self.h1.log_text(), self.h2.log_text())
    }

    /// Both fabrics are back to their idle mbuf count.
    fn assert_no_mbuf_leak(&self) {
        self.h1.assert_no_mbuf_leak(self.idle.0);
        self.h2.assert_no_mbuf_leak(self.idle.1);
    }

    /// Checks for leaked mbufs, then stops both fabrics cleanly.
    fn stop(mut self) {
        self.assert_no_mbuf_leak();
        let (a, b) = (self.h1.stop(), self.h2.stop());
        assert!(a.success() && b.success(), "unclean shutdown: h1 {a}, h2 {b}\n{}", self.logs());
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn encap_wire_carries_ping_and_tcp(encap: &str, overhead: u32) {
    let Some(env) = setup(&format!("encap_{encap}"), &[]) else { return };
    let t = two_hosts(&env, encap, 7);
    let p = t.vm1.ping("192.168.7.2", 20, 56);
    assert_eq!(p, Ping { sent: 20, received: 20 }, "{}", t.logs());

    let (sent, got) = tcp_transfer(&env, &t.vm1.ns, &t.vm2.ns, "192.168.7.2", 8 << 20);
    assert!(sent.starts_with("8388608 "), "sender: {sent}");
    assert_eq!(sent, got, "the receiver's byte count and SHA-256 differ from the sender's");

    for (h, peer) in [(&t.h1, "10.0.0.2"), (&t.h2, "10.0.0.1")] {
        let w = h.wire(7);
        assert_eq!(w["kind"], "encap");
        assert_eq!(w["encap"], encap);
        assert_eq!(w["peer"], peer);
        assert_eq!(w["state"], "up");
        // One direction carried the 8 MB (at least 8 MiB / 1400 frames),
        // the other the pings' replies and TCP's ACKs (how many ACKs
        // depends on the receiver's coalescing, so only a floor).
        let (f, r) = (u(&w["forward"]["frames"]), u(&w["reverse"]["frames"]));
        assert!(f.max(r) > (8 << 20) / 1400 && f.min(r) > 100, "{w}");
    }
    // What the wire carries, and that the endpoints' 1500-byte ports do
    // not fit it: in `wire list`, in `status` and once in the log.
    let carries = 1500 - overhead;
    for h in [&t.h1, &t.h2] {
        let w = h.wire(7);
        assert_eq!(u(&w["carries_mtu"]), u64::from(carries), "{w}");
        let warnings = h.json(&["status"])["mtu_warnings"].clone();
        let want = format!("has MTU 1500 but its wire carries at most {carries}");
        assert!(warnings.as_array().unwrap().iter().any(|m| m.as_str().unwrap().contains(&want)), "{warnings}");
        assert_eq!(h.log_text().matches(&want).count(), 1, "logged once:\n{}", h.log_text());
        assert!(h.ctl_ok(&["wire", "list"]).contains(&format!("{carries}!")), "marked in the table");
    }
    // 8 MB crossed h1 -> h2: h1's forward bytes and h2's reverse bytes say so.
    assert!(u(&t.h1.wire(7)["forward"]["bytes"]) > 8 << 20);
    assert!(u(&t.h2.wire(7)["reverse"]["bytes"]) > 8 << 20);

    // The largest frame that fits the 1500-byte underlay passes; one byte
    // more is dropped at the sender and counted.
    t.vm1.ns.sh(&["ip", "link", "set", &t.vm1.iface, "mtu", "1500"]);
    t.vm2.ns.sh(&["ip", "link", "set", &t.vm2.iface, "mtu", "1500"]);
    let max_payload = 1500 - (overhead - 14) - 14 - 20 - 8;
    assert_eq!(t.vm1.ping("192.168.7.2", 3, max_payload), Ping { sent: 3, received: 3 });
    let (before, wire_before) = (t.h1.drops("encap_too_big"), u(&t.h1.wire(7)["dropped"]));
    assert_eq!(t.vm1.ping("192.168.7.2", 3, max_payload + 1).received, 0);
    assert_eq!(t.h1.drops("encap_too_big") - before, 3, "oversized frames are counted as encap_too_big");
    assert_eq!(u(&t.h1.wire(7)["dropped"]) - wire_before, 3, "and against the wire");
    t.stop();
}

#[test]
fn a_encap_wire_vwire_carries_ping_and_tcp() {
    encap_wire_carries_ping_and_tcp("vwire", 46);
}

#[test]
fn a_encap_wire_vxlan_carries_ping_and_tcp() {
    encap_wire_carries_ping_and_tcp("vxlan", 50);
}

/// Sends test frames that a wire must carry unchanged (VLAN, QinQ,
/// broadcast, multicast, non-IP, unknown unicast) from `from` and checks
/// they arrive at `to` byte for byte.
fn check_transparency(env: &Env, from: &Vm, to: &Vm, tag: &str) {
    let src = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let frame = |dst: [u8; 6], tags: &[(u16, u16)], etype: u16, n: u8| -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        for (tpid, tci) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&etype.to_be_bytes());
        f.extend_from_slice(b"VirtualWire transparency test frame ");
        f.push(n);
        f.resize(90, n);
        f
    };
    let frames = vec![
        frame([0xff; 6], &[], 0x88b5, 1), // broadcast, non-IP
        frame([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], &[(0x8100, 100)], 0x88b5, 2), // 802.1Q VID 100
        frame([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], &[(0x88a8, 200), (0x8100, 300)], 0x88b5, 3), // QinQ
        frame([0x01, 0x00, 0x5e, 0x01, 0x02, 0x03], &[], 0x0800, 4), // IPv4 multicast MAC
        frame([0x33, 0x33, 0x00, 0x00, 0x00, 0x01], &[(0x8100, 0x2005)], 0x86dd, 5), // tagged IPv6 multicast, PCP 1
    ];
    let cap = Capture::start(
        &to.ns,
        &to.iface,
        env.dir.join(format!("transparency-{tag}.pcap")),
        "ether src 02:11:22:33:44:55",
    );
    from.ns.send_raw(&from.iface, &frames);
    let got = read_pcap(&cap.stop());
    for f in &frames {
        assert!(
            got.contains(f),
            "frame {:02x?} did not arrive unchanged over the {tag} wire; got {} frames",
            &f[..20],
            got.len()
        );
    }
}

#[test]
fn b_loopback_wire_is_transparent_and_leaves_the_uplink_silent() {
    let Some(env) = setup("loopback", &["tshark", "python3"]) else { return };
    let t = &env.tag;
    let mut ul = Underlay::new(&env);
    let up = format!("vw{t}u1");
    let mut h = Fabric::start(
        &env,
        "h1",
        FabricOpts { uplink: Some((up.clone(), "10.0.0.1/24".into())), ..Default::default() },
    );
    ul.plug(&up);
    let (e1, e2) = (format!("vw{t}e1"), format!("vw{t}e2"));
    h.add_tap("vm1", &e1);
    h.add_tap("vm2", &e2);
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.8.1/24", 1500);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &e2, "192.168.8.2/24", 1500);
    h.ctl_ok(&["connect", "9", "vm1", "vm2"]);
    assert!(vm1.wait_reachable("192.168.8.2"), "{}", h.log_text());
    let uplink_tx = u(&h.port("uplink")["tx_packets"]);
    let idle = h.mbufs_idle();

    assert_eq!(vm1.ping("192.168.8.2", 20, 1472), Ping { sent: 20, received: 20 }, "full-size frames cross");
    let (sent, got) = tcp_transfer(&env, &vm2.ns, &vm1.ns, "192.168.8.1", 8 << 20);
    assert_eq!(sent, got);
    check_transparency(&env, &vm1, &vm2, "loopback");

    let w = h.wire(9);
    assert_eq!(w["kind"], "loopback");
    assert_eq!((w["endpoint"].as_str(), w["peer"].as_str()), (Some("vm1"), Some("vm2")));
    assert!(u(&w["forward"]["frames"]) > 20 && u(&w["reverse"]["frames"]) > 1000, "{w}");
    assert_eq!(u(&h.port("uplink")["tx_packets"]), uplink_tx, "a loopback wire sends nothing on the uplink");
    h.assert_no_mbuf_leak(idle);
    assert!(h.stop().success());
    drop((vm1, vm2, ul));
}

#[test]
fn c_disconnect_stops_traffic_and_connect_restores_it() {
    let Some(env) = setup("disconnect", &[]) else { return };
    let mut t = two_hosts(&env, "vwire", 7);
    t.h1.ctl_ok(&["disconnect", "7"]);
    assert!(t.h1.wire(7).is_null(), "wire 7 is gone from the list");
    let no_wire = t.h1.drops("no_wire");
    assert_eq!(t.vm1.ping("192.168.7.2", 5, 56).received, 0, "no traffic without the wire");
    assert!(t.h1.drops("no_wire") >= no_wire + 5, "frames from an unwired endpoint are counted as no_wire");

    // Refused requests change nothing.
    let before = t.h1.json(&["wire", "list"]);
    let o = t.h1.ctl(&["disconnect", "7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wire 7"),
        "clear error: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for bad in [
        vec!["connect", "7", "nosuch", "10.0.0.2"],
        vec!["connect", "7", "vm1", "10.0.0.1"],
        vec!["connect", "16777216", "vm1", "10.0.0.2", "--encap", "vxlan"],
        vec!["connect", "7", "vm1", "vm1"],
        vec!["connect", "7", "vm1", "vm2", "--encap", "vxlan"],
        vec!["connect", "7", "vm1", "224.0.0.1"],
        vec!["connect", "7", "vm1", "192.168.99.1"],
        vec!["endpoint", "add", "vm1", "net_tap9,iface=x"],
        vec!["endpoint", "add", "bad name!", "net_tap9,iface=x"],
        vec!["endpoint", "add", "vm9", "net_nosuchdriver0"],
        vec!["endpoint", "del", "nosuch"],
    ] {
        let o = t.h1.ctl(&bad);
        assert_eq!(o.status.code(), Some(1), "{bad:?} must be refused: {}", String::from_utf8_lossy(&o.stdout));
        assert!(!o.stderr.is_empty());
    }
    assert_eq!(t.h1.json(&["wire", "list"]), before, "refusals changed the wire table");
    assert_eq!(t.h1.json(&["endpoint", "list"]).as_array().unwrap().len(), 1, "refusals changed the endpoints");

    // A peer that never answers ARP: the wire stays "resolving", the fabric
    // keeps asking, and frames are held, then dropped and counted.
    t.h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.99"]);
    let unresolved = t.h1.drops("peer_unresolved");
    assert_eq!(t.vm1.ping("192.168.7.2", 3, 56).received, 0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(t.h1.wire(7)["state"], "resolving");
    assert!(t.h1.drops("peer_unresolved") > unresolved, "held frames time out as peer_unresolved");
    let st = t.h1.json(&["status"]);
    let n = st["neighbours"].as_array().unwrap().iter().find(|n| n["ip"] == "10.0.0.99").cloned().unwrap();
    assert_eq!(n["state"], "incomplete");
    assert!(u(&n["requests"]) >= 3, "ARP requests are retried: {n}");
    t.h1.ctl_ok(&["disconnect", "7"]);
    assert!(
        t.h1.json(&["status"])["neighbours"].as_array().unwrap().iter().all(|n| n["ip"] != "10.0.0.99"),
        "a neighbour no wire needs is forgotten"
    );

    t.h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.2"]);
    assert!(t.vm1.wait_reachable("192.168.7.2"), "connect restores the traffic\n{}", t.logs());
    assert_eq!(t.vm1.ping("192.168.7.2", 10, 56), Ping { sent: 10, received: 10 });

    // Held and timed-out frames went back to the pool.
    t.assert_no_mbuf_leak();

    // An endpoint with a wire cannot be removed; without one it can.
    assert_eq!(t.h1.ctl(&["endpoint", "del", "vm1"]).status.code(), Some(1));
    t.h1.ctl_ok(&["disconnect", "7"]);
    t.h1.ctl_ok(&["endpoint", "del", "vm1"]);
    assert!(t.vm1.ns.run(&["ip", "link", "show", &t.vm1.iface]).stdout.is_empty(), "the tap went with the endpoint");
    let idle = t.h1.mbufs_idle();
    assert!(
        idle < t.idle.0,
        "the removed endpoint's RX ring went back to the pool ({idle} in use, {} before)",
        t.idle.0
    );
    t.idle.0 = idle;
    t.stop();
}

/// Rewrites the IPv4 header checksum of a tunnel frame after an edit.
/// `frame` with its UDP checksum computed (RFC 768), as Linux sends it
/// when asked to.
fn with_udp_checksum(frame: &[u8]) -> Vec<u8> {
    use vw_wire::checksum::{fold, pseudo_header_v4, sum};
    let mut f = frame.to_vec();
    f[40..42].copy_from_slice(&[0, 0]);
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    let len = u16::from_be_bytes([f[38], f[39]]);
    let s = u32::from(fold(pseudo_header_v4(src, dst, 17, len))) + u32::from(fold(sum(&f[34..34 + len as usize])));
    let c = match !fold(s) {
        0 => 0xffff,
        c => c,
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

fn fix_ip_checksum(f: &mut [u8]) {
    ipv4::Packet::new_unchecked(&mut f[14..34]).fill_checksum();
}

#[test]
fn d_bad_underlay_frames_are_dropped_and_counted_by_reason() {
    let Some(env) = setup("bad_frames", &["python3"]) else { return };
    let t = two_hosts(&env, "vwire", 7);
    let h1mac: MacAddr = t.h1.json(&["status"])["uplink"]["mac"].as_str().unwrap().parse().unwrap();
    let (h1ip, h2ip) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let src_mac = MacAddr([0x02, 0, 0x5e, 0, 0, 0x99]);
    let tmpl = |encap, id, src: Ipv4Addr, port| {
        EncapTemplate::new(encap, ConnectorId(id), src_mac, h1mac, src, h1ip, port, 1500)
    };
    let mut inner = vec![0xff; 6];
    inner.extend_from_slice(&[0x02, 0x11, 0x22, 0x33, 0x44, 0x66, 0x88, 0xb5]);
    inner.resize(64, 0x5a);
    let good = build_tunnel_frame(&tmpl(Encap::Vwire, 7, h2ip, 4795), &inner, 50000);

    // A copy of `frame` changed by `f`.
    let edit = |frame: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = frame.to_vec();
        f(&mut v);
        v
    };
    let vxlan = build_tunnel_frame(&tmpl(Encap::Vxlan, 7, h2ip, 4789), &inner, 50000);
    let vxlan_good = build_tunnel_frame(&tmpl(Encap::Vxlan, 8, h2ip, 4789), &inner, 50000);
    let empty = build_tunnel_frame(&tmpl(Encap::Vwire, 7, h2ip, 4795), &[], 50000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown_connector", build_tunnel_frame(&tmpl(Encap::Vwire, 99, h2ip, 4795), &inner, 50000)),
        ("unknown_connector", vxlan.clone()), // wire 7 is vwire, not vxlan
        ("wrong_peer", build_tunnel_frame(&tmpl(Encap::Vwire, 7, Ipv4Addr::new(10, 0, 0, 9), 4795), &inner, 50000)),
        ("ipv4_truncated", good[..14 + 12].to_vec()),
        ("ipv4_total_length", good[..14 + 20 + 6].to_vec()), // cut inside the UDP header
        (
            "ipv4_total_length", // total length longer than the frame
            edit(&good, &|f| {
                f[16..18].copy_from_slice(&((good.len() - 14 + 10) as u16).to_be_bytes());
                fix_ip_checksum(f);
            }),
        ),
        ("ipv4_checksum", edit(&good, &|f| f[24] ^= 0xff)),
        ("ipv4_header_length", edit(&good, &|f| f[14] = 0x44)), // IHL 4
        (
            "ipv4_fragment", // MF set
            edit(&good, &|f| {
                f[20] = 0x20;
                fix_ip_checksum(f);
            }),
        ),
        (
            "ipv4_fragment", // offset 128
            edit(&good, &|f| {
                f[20..22].copy_from_slice(&[0x00, 0x10]);
                fix_ip_checksum(f);
            }),
        ),
        ("udp_length", edit(&good, &|f| f[38..40].copy_from_slice(&((good.len() - 34 + 4) as u16).to_be_bytes()))),
        ("udp_port", edit(&good, &|f| f[36..38].copy_from_slice(&4790u16.to_be_bytes()))),
        (
            "not_our_address",
            edit(&good, &|f| {
                f[30..34].copy_from_slice(&[10, 0, 0, 77]);
                fix_ip_checksum(f);
            }),
        ),
        ("inner_runt", build_tunnel_frame(&tmpl(Encap::Vwire, 7, h2ip, 4795), &inner[..10], 50000)),
        ("vxlan_flags", edit(&vxlan, &|f| f[42] = 0)), // no I bit
        (
            "tunnel_truncated", // 2 of the 4 connector bytes
            edit(&empty, &|f| {
                f.truncate(14 + 20 + 8 + 2);
                f[16..18].copy_from_slice(&30u16.to_be_bytes());
                f[38..40].copy_from_slice(&10u16.to_be_bytes());
                fix_ip_checksum(f);
            }),
        ),
        (
            "ip_protocol", // TCP
            edit(&good, &|f| {
                f[23] = 6;
                fix_ip_checksum(f);
            }),
        ),
        // A sender that computed the UDP checksum, wrongly (one bit off).
        ("udp_checksum", edit(&with_udp_checksum(&good), &|f| f[41] ^= 0x01)),
        ("udp_checksum", edit(&with_udp_checksum(&vxlan_good), &|f| f[60] ^= 0x80)), // the payload changed
    ];

    let drops_before = t.h1.all_drops();
    let vm1_tx = u(&t.h1.port("vm1")["tx_packets"]);
    let mut frames = Vec::new();
    for (_, f) in &cases {
        frames.extend(std::iter::repeat_n(f.clone(), 3));
    }
    frames.extend(std::iter::repeat_n(good.clone(), 5));
    // A correct non-zero UDP checksum is taken like a zero one.
    frames.extend(std::iter::repeat_n(with_udp_checksum(&good), 3));
    t.ul.ns.send_raw("br0", &frames);
    std::thread::sleep(std::time::Duration::from_millis(500));

    let after = t.h1.all_drops();
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    for (reason, _) in &cases {
        *expected.entry(reason).or_default() += 3;
    }
    for (reason, n) in &expected {
        let delta = u(&after[*reason]) - u(&drops_before[*reason]);
        assert_eq!(
            delta, *n,
            "drop counter {reason}: expected +{n}, got +{delta}\nbefore {drops_before}\nafter {after}"
        );
    }
    assert_eq!(u(&t.h1.port("vm1")["tx_packets"]) - vm1_tx, 8, "exactly the 8 valid frames reached the VM");
    assert!(t.h1.ctl_ok(&["stats"]).contains("wrong_peer"), "vwctl stats shows the reasons");

    // Jumbo frames from an underlay whose links take more than the fabric's
    // MTU (1500): one byte over, one that still fits an mbuf, and two
    // larger than an mbuf, which net_tap refuses (RX errors). Each is
    // counted under a drop reason and none reaches the VM.
    let up1 = format!("vw{}u1", env.tag);
    for dev in [up1.as_str(), "br0"] {
        t.ul.ns.sh(&["ip", "link", "set", dev, "mtu", "16000"]);
    }
    let inner_of = |len: usize| {
        let mut f = inner.clone();
        f.resize(len, 0x77);
        f
    };
    let (fits, refused) = ([1500 - 46 + 14 + 1, 1900], [9000 - 46, 15000]);
    let before = t.h1.all_drops();
    let vm1_tx = u(&t.h1.port("vm1")["tx_packets"]);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for len in fits.iter().chain(&refused) {
        let f = build_tunnel_frame(&tmpl(Encap::Vwire, 7, h2ip, 4795), &inner_of(*len), 50000);
        frames.extend(std::iter::repeat_n(f, 2));
    }
    t.ul.ns.send_raw("br0", &frames);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = t.h1.all_drops();
    let delta = |r: &str| u(&after[r]) - u(&before[r]);
    assert_eq!(delta("oversize"), 4, "frames over the MTU that fit an mbuf: oversize\nbefore {before}\nafter {after}");
    assert_eq!(
        delta("uplink_rx_errors"),
        4,
        "frames larger than an mbuf, refused by net_tap: uplink_rx_errors\nbefore {before}\nafter {after}"
    );
    assert_eq!(u(&t.h1.port("vm1")["tx_packets"]), vm1_tx, "no jumbo frame reached the VM");
    for dev in [up1.as_str(), "br0"] {
        t.ul.ns.sh(&["ip", "link", "set", dev, "mtu", "1500"]);
    }
    t.stop();
}

#[test]
fn e_vxlan_wire_to_a_linux_vxlan_device() {
    let Some(env) = setup("linux_vxlan", &[]) else { return };
    let t = &env.tag;
    let mut ul = Underlay::new(&env);
    let (up, e1) = (format!("vw{t}u1"), format!("vw{t}e1"));
    let mut h1 = Fabric::start(
        &env,
        "h1",
        FabricOpts { uplink: Some((up.clone(), "10.0.0.1/24".into())), ..Default::default() },
    );
    ul.plug(&up);
    let linux = ul.linux_host(&format!("vw{t}lx"), "10.0.0.2/24");
    linux.sh(&[
        "ip", "link", "add", "vx0", "type", "vxlan", "id", "4242", "remote", "10.0.0.1", "local", "10.0.0.2",
        "dstport", "4789", "dev", "eth0",
    ]);
    linux.sh(&["ip", "addr", "add", "192.168.9.2/24", "dev", "vx0"]);
    linux.sh(&["ip", "link", "set", "vx0", "up"]);
    h1.add_tap("vm1", &e1);
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.9.1/24", 1400);
    h1.ctl_ok(&["connect", "4242", "vm1", "10.0.0.2", "--encap", "vxlan"]);
    assert!(vm1.wait_reachable("192.168.9.2"), "no ping to the Linux VXLAN device\n{}", h1.log_text());
    let idle = h1.mbufs_idle();
    assert_eq!(vm1.ping("192.168.9.2", 20, 1372), Ping { sent: 20, received: 20 });
    let (sent, got) = tcp_transfer(&env, &vm1.ns, &linux, "192.168.9.2", 8 << 20);
    assert_eq!(sent, got, "TCP to the Linux VXLAN device");
    let (sent, got) = tcp_transfer(&env, &linux, &vm1.ns, "192.168.9.1", 8 << 20);
    assert_eq!(sent, got, "TCP from the Linux VXLAN device");
    let w = h1.wire(4242);
    assert!(u(&w["reverse"]["bytes"]) > 8 << 20, "{w}");
    h1.assert_no_mbuf_leak(idle);
    assert!(h1.stop().success());
    drop((vm1, linux, ul));
}

#[test]
fn f_underlay_capture_decodes_as_the_documented_format() {
    let Some(env) = setup("capture", &["tshark"]) else { return };
    let t = two_hosts(&env, "vwire", 7);
    let lua = repo_root().join("docs/wireshark/vwire.lua");
    let lua_arg = format!("lua_script:{}", lua.display());
    let up1 = format!("vw{}u1", env.tag);
    for encap in ["vwire", "vxlan"] {
        if encap == "vxlan" {
            for (h, vm, peer) in [(&t.h1, "vm1", "10.0.0.2"), (&t.h2, "vm2", "10.0.0.1")] {
                h.ctl_ok(&["disconnect", "7"]);
                h.ctl_ok(&["connect", "7", vm, peer, "--encap", "vxlan"]);
            }
            assert!(t.vm1.wait_reachable("192.168.7.2"));
        }
        let cap = Capture::start(&t.ul.ns, &up1, env.dir.join(format!("underlay-{encap}.pcap")), "udp");
        assert_eq!(t.vm1.ping("192.168.7.2", 4, 100).received, 4);
        let file = cap.stop();
        let conn_field = if encap == "vwire" { "vwire.connector" } else { "vxlan.vni" };
        let rows = tshark_fields(
            &file,
            &["-X", &lua_arg],
            &[
                "frame.len",
                "ip.src",
                "ip.dst",
                "ip.ttl",
                "ip.flags.df",
                "udp.srcport",
                "udp.dstport",
                "udp.checksum",
                conn_field,
                "icmp.type",
            ],
        );
        assert!(rows.iter().all(|r| r[8] == "7"), "every UDP frame decodes as {encap} of wire 7: {rows:?}");
        // The pings (an ARP exchange of the VMs' may be in the capture too,
        // inside the tunnel: checked above, not below).
        let rows: Vec<Vec<String>> = rows.into_iter().filter(|r| !r[9].is_empty()).collect();
        let (requests, replies) =
            (rows.iter().filter(|r| r[9] == "8").count(), rows.iter().filter(|r| r[9] == "0").count());
        assert!(requests >= 3 && replies >= 3, "echo requests and replies in both directions: {rows:?}");
        for r in &rows {
            let outer_inner = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
            let (src, dst) = (outer_inner(&r[1]), outer_inner(&r[2]));
            assert!(src[0] == "10.0.0.1" || src[0] == "10.0.0.2", "outer source {r:?}");
            assert!(src[1].starts_with("192.168.7.") && dst[1].starts_with("192.168.7."), "inner addresses {r:?}");
            assert_eq!(outer_inner(&r[3])[0], "64", "outer TTL 64");
            assert!(matches!(outer_inner(&r[4])[0].as_str(), "1" | "True"), "outer DF set: {r:?}");
            let sport: u32 = r[5].parse().unwrap();
            assert!((49152..=65535).contains(&sport), "UDP source port {sport} in the dynamic range");
            assert_eq!(r[6], if encap == "vwire" { "4795" } else { "4789" });
            assert_eq!(r[7], "0x0000", "UDP checksum zero");
            assert_eq!(r[8], "7", "connector/VNI is the wire id");
            // frame = inner Ethernet (14) + IPv4 (20) + ICMP (8) + 100 + overhead.
            let overhead = if encap == "vwire" { 46 } else { 50 };
            assert_eq!(r[0].parse::<u32>().unwrap(), 14 + 20 + 8 + 100 + overhead);
        }
    }
    t.stop();
}

#[test]
fn g_encap_wire_is_transparent() {
    let Some(env) = setup("transparent", &["tshark", "python3"]) else { return };
    let t = two_hosts(&env, "vwire", 7);
    check_transparency(&env, &t.vm1, &t.vm2, "encap");
    check_transparency(&env, &t.vm2, &t.vm1, "encap-reverse");
    t.stop();
}

#[test]
fn h_peers_outside_the_subnet_are_reached_through_the_gateway() {
    let Some(env) = setup("gateway", &[]) else { return };
    let t = &env.tag;
    let mut ul = Underlay::new(&env);
    ul.route("10.0.0.254/24", "10.1.0.254/24");
    let (up1, up2, e1, e2) = (format!("vw{t}u1"), format!("vw{t}u2"), format!("vw{t}e1"), format!("vw{t}e2"));
    let opts = |up: &str, vtep: &str, gw: &str| FabricOpts {
        uplink: Some((up.to_owned(), vtep.to_owned())),
        extra: vec!["--gateway".into(), gw.into()],
        ..Default::default()
    };
    let mut h1 = Fabric::start(&env, "h1", opts(&up1, "10.0.0.1/24", "10.0.0.254"));
    let mut h2 = Fabric::start(&env, "h2", opts(&up2, "10.1.0.2/24", "10.1.0.254"));
    ul.plug_into(&up1, "br0");
    ul.plug_into(&up2, "br1");
    h1.add_tap("vm1", &e1);
    h2.add_tap("vm2", &e2);
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.7.1/24", 1400);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &e2, "192.168.7.2/24", 1400);
    h1.ctl_ok(&["connect", "5", "vm1", "10.1.0.2"]);
    h2.ctl_ok(&["connect", "5", "vm2", "10.0.0.1"]);
    assert!(vm1.wait_reachable("192.168.7.2"), "no ping through the router\n{}\n{}", h1.log_text(), h2.log_text());
    let idle = (h1.mbufs_idle(), h2.mbufs_idle());
    assert_eq!(vm1.ping("192.168.7.2", 10, 56), Ping { sent: 10, received: 10 });
    let (sent, got) = tcp_transfer(&env, &vm1.ns, &vm2.ns, "192.168.7.2", 4 << 20);
    assert_eq!(sent, got);
    // Each fabric resolved its gateway, not the remote VTEP.
    for (h, gw, peer) in [(&h1, "10.0.0.254", "10.1.0.2"), (&h2, "10.1.0.254", "10.0.0.1")] {
        let n = h.json(&["status"])["neighbours"].clone();
        let ips: Vec<&str> = n.as_array().unwrap().iter().map(|n| n["ip"].as_str().unwrap()).collect();
        assert_eq!(ips, vec![gw], "resolves only the gateway");
        assert_eq!(n[0]["state"], "reachable");
        assert_eq!(h.json(&["wire", "list"])[0]["peer"], peer);
    }
    h1.assert_no_mbuf_leak(idle.0);
    h2.assert_no_mbuf_leak(idle.1);
    // Without a gateway, a peer off the subnet is refused with a clear error.
    let mut h3 = Fabric::start(
        &env,
        "h3",
        FabricOpts { uplink: Some((format!("vw{t}u3"), "10.0.0.3/24".into())), ..Default::default() },
    );
    h3.add_tap("vm3", &format!("vw{t}e3"));
    let o = h3.ctl(&["connect", "5", "vm3", "10.1.0.2"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("outside the uplink subnet 10.0.0.0/24") && err.contains("--gateway"), "{err}");
    assert!(h3.stop().success());
    assert!(h1.stop().success() && h2.stop().success());
    drop((vm1, vm2, ul));
}

#[test]
fn i_a_restart_restores_the_configuration_and_keeps_what_it_cannot_restore() {
    let Some(env) = setup("restart", &[]) else { return };
    let t = &env.tag;
    let state = env.dir.join("state.json");
    let opts = FabricOpts { extra: vec!["--state".into(), state.display().to_string()], ..Default::default() };
    let (e1, e2) = (format!("vw{t}e1"), format!("vw{t}e2"));
    let mut h = Fabric::start(&env, "h1", opts.clone());
    h.add_tap("vm1", &e1);
    h.add_tap("vm2", &e2);
    h.ctl_ok(&["connect", "9", "vm1", "vm2"]);
    assert!(h.stop().success());

    // The saved configuration, plus an endpoint whose socket directory is
    // gone (e.g. a tmpfs after a reboot) and a wire that needs it.
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(saved["wires"][0]["wire"], 9);
    saved["endpoints"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "ghost", "spec": {"type": "vhost_user", "path": "/nonexistent-dir/ghost.sock", "client": false, "queues": 1}}
    ));
    saved["wires"].as_array_mut().unwrap().push(serde_json::json!({"wire": 10, "endpoint": "ghost", "peer": "vm9"}));
    std::fs::write(&state, serde_json::to_string(&saved).unwrap()).unwrap();

    let mut h = Fabric::start(&env, "h1", opts);
    let st = h.json(&["status"]);
    assert_eq!(st["endpoints"], 2, "the restorable endpoints are back");
    assert_eq!(st["unrestored"], serde_json::json!(["endpoint ghost", "wire 10"]), "{st}");
    assert_eq!(h.wire(9)["kind"], "loopback", "the wire is back");
    assert!(h.log_text().contains("cannot restore endpoint ghost"));
    // The taps were recreated; the VMs get them again and the wire works.
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.8.1/24", 1500);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &e2, "192.168.8.2/24", 1500);
    let idle = h.mbufs_idle();
    assert!(vm1.wait_reachable("192.168.8.2"), "{}", h.log_text());
    h.assert_no_mbuf_leak(idle);
    // A later change keeps the entries that could not be restored (the
    // state file is whole again once the fabric stops).
    h.ctl_ok(&["disconnect", "9"]);
    assert!(h.stop().success());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let names: Vec<&str> = saved["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"ghost") && names.contains(&"vm1"), "{saved}");
    assert_eq!(saved["wires"].as_array().unwrap().len(), 1, "wire 9 is gone, wire 10 kept: {saved}");
    drop((vm1, vm2));
}

#[test]
fn j_a_fabric_killed_with_sigkill_comes_back_and_every_wire_carries_traffic_again() {
    let Some(env) = setup("sigkill", &[]) else { return };
    let t = &env.tag;
    let mut ul = Underlay::new(&env);
    let state = env.dir.join("state.json");
    let (up1, up2) = (format!("vw{t}u1"), format!("vw{t}u2"));
    // The uplink and the VMs' NICs keep their MACs across the restart, as
    // a NIC and a VM's virtual NIC do.
    let opts1 = FabricOpts {
        uplink: Some((up1.clone(), "10.0.0.1/24".into())),
        uplink_mac: Some("02:00:5e:10:00:01".into()),
        extra: vec!["--state".into(), state.display().to_string()],
        ..Default::default()
    };
    let mut h1 = Fabric::start(&env, "h1", opts1.clone());
    let mut h2 = Fabric::start(
        &env,
        "h2",
        FabricOpts { uplink: Some((up2.clone(), "10.0.0.2/24".into())), ..Default::default() },
    );
    ul.plug(&up1);
    ul.plug(&up2);
    let taps: Vec<String> = (1..=4).map(|i| format!("vw{t}e{i}")).collect();
    h1.add_tap_mac("vm1", &taps[0], "02:00:5e:20:00:01");
    h2.add_tap("vm2", &taps[1]);
    h1.add_tap_mac("vm3", &taps[2], "02:00:5e:20:00:03");
    h1.add_tap_mac("vm4", &taps[3], "02:00:5e:20:00:04");
    let addrs = ["192.168.7.1/24", "192.168.7.2/24", "192.168.8.3/24", "192.168.8.4/24"];
    let vms: Vec<Vm> = (0..4).map(|i| Vm::new(&format!("vw{t}vm{}", i + 1), &taps[i], addrs[i], 1400)).collect();
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.2", "--encap", "vxlan"]);
    h2.ctl_ok(&["connect", "7", "vm2", "10.0.0.1", "--encap", "vxlan"]);
    h1.ctl_ok(&["connect", "9", "vm3", "vm4"]);
    let both_wires = |what: &str, h1: &Fabric| {
        for (vm, dst) in [(&vms[0], "192.168.7.2"), (&vms[2], "192.168.8.4")] {
            assert!(vm.wait_reachable(dst), "{what}: {dst} unreachable\n{}", h1.log_text());
            assert_eq!(vm.ping(dst, 20, 1000), Ping { sent: 20, received: 20 }, "{what}: ping {dst}");
        }
    };
    both_wires("before the crash", &h1);
    let config = |h: &Fabric| -> Vec<(Value, Value, Value, Value, Value)> {
        let l = h.json(&["wire", "list"]);
        l.as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (w["wire"].clone(), w["kind"].clone(), w["endpoint"].clone(), w["peer"].clone(), w["encap"].clone())
            })
            .collect()
    };
    let (wires_before, endpoints_before) = (config(&h1), h1.json(&["endpoint", "list"]).as_array().unwrap().len());

    // A crash: no SIGTERM handler, no cleanup, the taps vanish with the
    // process and its socket file stays behind.
    h1.kill9();
    assert!(h1.socket.exists(), "SIGKILL leaves the socket file");
    assert_eq!(h2.wire(7)["state"], "up", "the peer keeps its wire");

    // Started again with the same command line: it replaces the stale
    // socket, restores endpoints and wires from the state file, and the
    // VMs get their NICs back (the taps are recreated with the same names).
    let h1 = Fabric::start(&env, "h1", opts1);
    assert!(h1.log_text().contains("restored 5 endpoints and wires"), "{}", h1.log_text());
    let st = h1.json(&["status"]);
    assert_eq!(st["unrestored"], serde_json::json!([]), "{st}");
    assert_eq!(config(&h1), wires_before, "the same wires, with the same ends");
    assert_eq!(h1.json(&["endpoint", "list"]).as_array().unwrap().len(), endpoints_before);
    ul.plug(&up1);
    for i in [0, 2, 3] {
        vms[i].reattach(addrs[i], 1400);
    }
    for (vm, dst) in [(&vms[0], "192.168.7.2"), (&vms[2], "192.168.8.4")] {
        assert!(vm.wait_reachable(dst), "after the restart: {dst} unreachable\n{}", h1.log_text());
    }
    let idle = h1.mbufs_idle();
    both_wires("after the restart", &h1);
    assert_eq!(h1.wire(7)["state"], "up");
    assert_eq!(h1.wire(9)["kind"], "loopback");
    h1.assert_no_mbuf_leak(idle);
    let mut h1 = h1;
    assert!(h1.stop().success() && h2.stop().success());
    drop((vms, ul));
}
