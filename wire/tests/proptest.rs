//! Property tests: the per-packet functions and the header views never panic, whatever bytes
//! they get, and encapsulation round-trips through classification.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use vw_wire::encap::secure;
use vw_wire::ethernet::{self, ethertype};
use vw_wire::underlay::build_tunnel_frame;
use vw_wire::{
    arp, checksum, classify, flow, icmpv4, ipv4, udp, vlan, vwire, vxlan, ConnectorId, Decap, Encap, EncapTemplate,
    MacAddr, Underlay, UnderlayConfig,
};

const OUR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);
const PEER_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x01);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const CFG: UnderlayConfig = UnderlayConfig {
    vtep_ip: OUR_IP,
    mac: OUR_MAC,
    vwire_port: vwire::DEFAULT_PORT,
    vxlan_port: vxlan::PORT,
    migration_port: MIGRATION,
};
const MIGRATION: u16 = vw_wire::migration::DEFAULT_PORT;

/// Broadcast ARP request captured from Linux: who-has 192.168.100.2 tell 192.168.100.1.
static LINUX_ARP: [u8; 42] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x06, 0x00, 0x01, //
    0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0xc0, 0xa8, 0x64, 0x01, //
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x64, 0x02,
];
/// ICMP echo request captured from Linux `ping -s 16 192.168.100.2`.
static LINUX_PING: [u8; 58] = [
    0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x00, 0x45, 0x00, //
    0x00, 0x2c, 0x79, 0xc2, 0x40, 0x00, 0x40, 0x01, 0x77, 0xba, 0xc0, 0xa8, 0x64, 0x01, 0xc0, 0xa8, //
    0x64, 0x02, 0x08, 0x00, 0xf2, 0x0d, 0x1e, 0x17, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, 0x00, 0x00, //
    0x00, 0x00, 0x93, 0xb1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Calls every accessor of every view whose `new_checked` accepts `data`.
fn exercise_views(data: &[u8]) {
    let mut sink = 0u64;
    let mut eat = |v: u64| sink = sink.wrapping_add(v);
    if let Ok(f) = ethernet::Frame::new_checked(data) {
        eat(u64::from(f.dst().0[0]) + u64::from(f.src().0[5]) + u64::from(f.ethertype()) + f.payload().len() as u64);
    }
    if let Ok(t) = vlan::Tag::new_checked(data) {
        eat(u64::from(t.tci()) + u64::from(t.pcp()) + u64::from(t.dei()) + u64::from(t.vid()));
        eat(u64::from(t.ethertype()) + t.payload().len() as u64);
    }
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        eat(u64::from(p.version()) + u64::from(p.header_len()) + u64::from(p.dscp_ecn()) + u64::from(p.total_len()));
        eat(u64::from(p.ident()) + u64::from(p.dont_frag()) + u64::from(p.more_frags()) + u64::from(p.frag_offset()));
        eat(u64::from(p.is_fragment()) + u64::from(p.ttl()) + u64::from(p.protocol()) + u64::from(p.checksum()));
        eat(u64::from(u32::from(p.src_addr())) + u64::from(u32::from(p.dst_addr())));
        eat(u64::from(p.verify_checksum()) + p.options().len() as u64 + p.payload().len() as u64);
    }
    if let Ok(d) = udp::Datagram::new_checked(data) {
        eat(u64::from(d.src_port()) + u64::from(d.dst_port()) + u64::from(d.len()) + u64::from(d.checksum()));
        eat(u64::from(d.is_empty()) + u64::from(d.verify_checksum(PEER_IP, OUR_IP)) + d.payload().len() as u64);
    }
    if let Ok(p) = icmpv4::Packet::new_checked(data) {
        eat(u64::from(p.msg_type()) + u64::from(p.code()) + u64::from(p.checksum()) + u64::from(p.ident()));
        eat(u64::from(p.seq_no()) + u64::from(p.verify_checksum()) + p.payload().len() as u64);
    }
    if let Ok(p) = arp::Packet::new_checked(data) {
        eat(u64::from(p.hardware_type()) + u64::from(p.protocol_type()) + u64::from(p.hardware_len()));
        eat(u64::from(p.protocol_len()) + u64::from(p.operation()) + u64::from(p.sender_hw_addr().0[0]));
        eat(u64::from(u32::from(p.sender_proto_addr())) + u64::from(p.target_hw_addr().0[0]));
        eat(u64::from(u32::from(p.target_proto_addr())));
    }
    if let Ok(h) = vwire::Header::new_checked(data) {
        eat(u64::from(h.connector().0) + h.payload().len() as u64);
    }
    if let Ok(h) = vxlan::Header::new_checked(data) {
        eat(u64::from(h.flags()) + u64::from(h.vni_valid()) + u64::from(h.vni()) + h.payload().len() as u64);
    }
    std::hint::black_box(sink);
}

/// Runs every per-packet function on `data` (with total length `pkt_len`) and checks the
/// invariants that must hold whatever the bytes.
fn exercise_all(data: &[u8], pkt_len: usize) {
    let result = classify(data, pkt_len, &CFG);
    if let Ok(Underlay::Tunnel(d)) = result {
        assert_eq!(d.outer_len + d.inner_len + d.trailer_len, pkt_len, "{d:?}");
        assert!(d.outer_len + ethernet::HEADER_LEN <= data.len(), "{d:?}");
        assert_eq!(d.outer_len, d.encap.overhead());
    }

    let _ = arp::parse(data);
    let mut copy = data.to_vec();
    let replied = arp::reply_in_place(&mut copy, OUR_MAC, OUR_IP);
    if !replied {
        assert_eq!(copy, data, "refused ARP reply changed the frame");
    }

    let mut copy = data.to_vec();
    let echoed = icmpv4::echo_reply_in_place(&mut copy, OUR_MAC);
    if !echoed {
        assert_eq!(copy, data, "refused echo reply changed the frame");
    }
    if result == Ok(Underlay::IcmpEcho) && pkt_len == data.len() {
        // classify's accepted echo requests are always answered, with valid checksums.
        assert!(echoed);
        let ip = ipv4::Packet::new_checked(&copy[ethernet::HEADER_LEN..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.ttl()), (OUR_IP, 64));
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), icmpv4::message::ECHO_REPLY);
    }

    std::hint::black_box(flow::flow_hash(data));
    exercise_views(data);
    if let Some(rest) = data.get(ethernet::HEADER_LEN..) {
        exercise_views(rest);
    }
}

/// Raw bytes, or bytes behind a plausible Ethernet header for us so classification goes deeper.
fn arbitrary_frame() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u8>(), 0..200), 0u8..4).prop_map(|(mut bytes, mode)| {
        let et = match mode {
            1 => Some(ethertype::IPV4),
            2 => Some(ethertype::ARP),
            3 => Some(ethertype::VLAN),
            _ => None,
        };
        if let (Some(et), true) = (et, bytes.len() >= 14) {
            bytes[..6].copy_from_slice(&OUR_MAC.0);
            bytes[12..14].copy_from_slice(&et.to_be_bytes());
            if et == ethertype::IPV4 && bytes.len() > 14 {
                bytes[14] = 0x45;
            }
        }
        bytes
    })
}

fn encap_strategy() -> impl Strategy<Value = Encap> {
    prop_oneof![Just(Encap::Vwire), Just(Encap::Vxlan), Just(Encap::Forward)]
}

/// A valid frame as some peer would send it: a tunnel packet (either format), an ICMP echo
/// request or an ARP request, possibly padded.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (encap_strategy(), any::<u32>(), prop::collection::vec(any::<u8>(), 14..160), any::<u16>(), 0u8..4, 0usize..24)
        .prop_map(|(encap, id, inner, sport, kind, pad)| {
            let mut frame = match kind {
                0 => LINUX_PING.to_vec(),
                1 => LINUX_ARP.to_vec(),
                _ => {
                    let t = EncapTemplate::new(
                        encap,
                        ConnectorId(id),
                        PEER_MAC,
                        OUR_MAC,
                        PEER_IP,
                        OUR_IP,
                        encap.default_port(),
                        1500,
                    );
                    build_tunnel_frame(&t, &inner, sport)
                }
            };
            let len = frame.len();
            frame.resize(len.max(60) + pad, 0);
            frame
        })
}

/// How to damage a valid frame: byte flips, then a cut of the first segment and/or the frame.
#[derive(Debug, Clone)]
struct Damage {
    flips: Vec<(prop::sample::Index, u8)>,
    segment_cut: Option<prop::sample::Index>,
    frame_cut: Option<prop::sample::Index>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(flips, segment_cut, frame_cut)| Damage { flips, segment_cut, frame_cut })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// (1) Nothing panics on arbitrary bytes, with any total length >= the first segment.
    #[test]
    fn no_panic_on_arbitrary_bytes(data in arbitrary_frame(), extra in prop_oneof![Just(0usize), 0usize..2000]) {
        exercise_all(&data, data.len() + extra);
    }

    /// (2) Nothing panics on damaged valid frames, and accepted tunnel packets add up.
    #[test]
    fn damaged_valid_frames(frame in valid_frame(), dmg in damage()) {
        let mut frame = frame;
        for (at, xor) in &dmg.flips {
            let i = at.index(frame.len());
            frame[i] ^= xor;
        }
        if let Some(cut) = &dmg.frame_cut {
            let len = cut.index(frame.len() + 1);
            frame.truncate(len);
        }
        let pkt_len = frame.len();
        let data_len = match &dmg.segment_cut {
            Some(cut) => cut.index(pkt_len + 1),
            None => pkt_len,
        };
        exercise_all(&frame[..data_len], pkt_len);
    }

    /// Undamaged valid frames are accepted for what they are.
    #[test]
    fn valid_frames_accepted(frame in valid_frame()) {
        let result = classify(&frame, frame.len(), &CFG);
        let et = u16::from_be_bytes([frame[12], frame[13]]);
        match result {
            Ok(Underlay::Arp) => {
                prop_assert_eq!(et, ethertype::ARP);
                let mut copy = frame.clone();
                prop_assert!(arp::reply_in_place(&mut copy, OUR_MAC, OUR_IP));
                prop_assert_eq!(arp::parse(&copy).map(|i| i.target_ip), Some(PEER_IP));
            }
            Ok(Underlay::IcmpEcho) => {
                let mut copy = frame.clone();
                prop_assert!(icmpv4::echo_reply_in_place(&mut copy, OUR_MAC));
            }
            Ok(Underlay::Tunnel(d)) => {
                prop_assert_eq!(d.outer_len + d.inner_len + d.trailer_len, frame.len());
            }
            Ok(Underlay::Migration) => prop_assert!(false, "no generated frame is a migration message"),
            Ok(Underlay::Esp(_) | Underlay::NatKeepalive) => prop_assert!(false, "no generated frame goes to port 4500"),
            Err(e) => prop_assert!(false, "valid frame refused: {}", e.name()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// (3) EncapTemplate::write then classify gives back what went in, with a valid IPv4 checksum.
    #[test]
    fn encap_classify_round_trip(
        encap in encap_strategy(),
        id in any::<u32>(),
        inner in prop::collection::vec(any::<u8>(), 14..1465),
        sport in any::<u16>(),
        src_ip in any::<u32>(),
        dst_mac_low in any::<u8>(),
        vwire_port in 1u16..,
    ) {
        let connector = match encap {
            Encap::Vwire => id,
            Encap::Vxlan => id & vxlan::MAX_VNI,
            Encap::Forward | Encap::Secure | Encap::SecureVxlan => id,
        };
        let src_ip = Ipv4Addr::from(src_ip);
        let dst_mac = MacAddr::new(0x02, 0, 0, 0, 0, dst_mac_low);
        let cfg = UnderlayConfig { vtep_ip: OUR_IP, mac: dst_mac, vwire_port, vxlan_port: vxlan::PORT, migration_port: MIGRATION };
        prop_assume!(vwire_port != vxlan::PORT && vwire_port != MIGRATION && vwire_port != secure::PORT);
        let port = match encap {
            Encap::Vwire | Encap::Secure => vwire_port,
            Encap::Vxlan | Encap::SecureVxlan => vxlan::PORT,
            Encap::Forward => MIGRATION,
        };
        let t = EncapTemplate::new(encap, ConnectorId(connector), PEER_MAC, dst_mac, src_ip, OUR_IP, port, 1500);
        prop_assert!(inner.len() <= t.max_inner_len());

        let mut frame = vec![0u8; t.len() + inner.len()];
        t.write(&mut frame[..t.len()], inner.len(), sport);
        frame[t.len()..].copy_from_slice(&inner);

        let expected = Decap {
            encap,
            connector: ConnectorId(connector),
            src_ip,
            outer_len: t.len(),
            inner_len: inner.len(),
            trailer_len: 0,
        };
        prop_assert_eq!(classify(&frame, frame.len(), &cfg), Ok(Underlay::Tunnel(expected)));
        let ip = ipv4::Packet::new_checked(&frame[ethernet::HEADER_LEN..]).unwrap();
        prop_assert!(ip.verify_checksum());
        prop_assert!(usize::from(ip.total_len()) <= usize::from(t.underlay_mtu()));
        let u = udp::Datagram::new_checked(ip.payload()).unwrap();
        prop_assert_eq!(u.src_port(), sport);
        prop_assert_eq!(&frame[expected.outer_len..], &inner[..]);
    }

    /// The incremental IPv4 checksum of write() equals a full recomputation for every inner length
    /// up to max_inner_len, whatever the addresses and MTU.
    #[test]
    fn write_checksum_matches_full_recomputation(
        encap in encap_strategy(),
        id in any::<u32>(),
        src_ip in any::<u32>(),
        dst_ip in any::<u32>(),
        dst_port in any::<u16>(),
        mtu in 0u16..,
        inner_frac in 0.0f64..=1.0,
        sport in any::<u16>(),
    ) {
        let t = EncapTemplate::new(
            encap, ConnectorId(id), PEER_MAC, OUR_MAC, Ipv4Addr::from(src_ip), Ipv4Addr::from(dst_ip), dst_port, mtu,
        );
        let inner_len = ((t.max_inner_len() as f64) * inner_frac) as usize;
        for inner_len in [inner_len, t.max_inner_len()] {
            let mut hdr = vec![0u8; t.len()];
            t.write(&mut hdr, inner_len, sport);
            let mut full = hdr.clone();
            full[24..26].fill(0);
            let recomputed = checksum::checksum(&full[14..34]);
            prop_assert_eq!(u16::from_be_bytes([hdr[24], hdr[25]]), recomputed);
            prop_assert_eq!(usize::from(u16::from_be_bytes([hdr[16], hdr[17]])), 28 + encap.header_len() + inner_len);
            prop_assert_eq!(usize::from(u16::from_be_bytes([hdr[38], hdr[39]])), 8 + encap.header_len() + inner_len);
            prop_assert_eq!(u16::from_be_bytes([hdr[34], hdr[35]]), sport);
            // Everything else is the template.
            let mut masked = hdr.clone();
            for r in [16..18, 24..26, 34..36, 38..40] {
                masked[r].fill(0);
            }
            prop_assert_eq!(&masked[..], t.as_bytes());
        }
    }

    /// Flow hashes land in the dynamic port range and ignore everything but the flow fields.
    #[test]
    fn source_port_range(frame in prop::collection::vec(any::<u8>(), 0..120)) {
        let port = EncapTemplate::source_port(flow::flow_hash(&frame));
        prop_assert!(port >= 49152);
    }
}
