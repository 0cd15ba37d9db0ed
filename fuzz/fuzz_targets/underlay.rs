//! `underlay::classify`, the per-frame decision on the uplink, against a reference classifier
//! written with the checked header views, for vwire, VXLAN and the migration channel (on and
//! off), with the frame's first segment cut anywhere.
//!
//! Input: `[mode, split, frame...]`.
//! * `mode & 0x03`: the configuration (see [`CONFIGS`]);
//! * `mode & 0x04`: set the IPv4 total length and UDP length from the frame's length first;
//! * `mode & 0x08`: recompute the IPv4 header checksum first;
//! * `mode & 0x10`: hand `classify` a `pkt_len` below the first segment's length (a caller
//!   breaking the contract: only "no panic" is checked);
//! * `mode & 0x80`: encapsulation round trip instead: the rest is
//!   `[encap, connector (4), source port (2), padding, inner frame...]`.
//!
//! `split`: 0 or at least the frame's length: the whole frame is the first segment; otherwise
//! the first segment is the first `split` bytes and `pkt_len` is still the frame's length.
//!
//! Invariants: `classify` returns exactly what the reference returns (verdict and every `Decap`
//! field); an accepted tunnel frame's `outer_len + 14 <= first segment`, `outer_len + inner_len +
//! trailer_len == pkt_len`, its outer headers parse with the checked views over the whole
//! frame; an accepted frame stays accepted, unchanged, when more of it is contiguous; a frame
//! built by `EncapTemplate::write` classifies back to its encap, connector, inner frame and
//! padding.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vw_wire::encap::secure;
use vw_wire::ethernet::{self, ethertype};
use vw_wire::underlay::{build_tunnel_frame, EspPacket, ESP_OFFSET};
use vw_wire::{
    arp, checksum, classify, icmpv4, ipv4, migration, udp, vwire, vxlan, ConnectorId, Decap, Encap, EncapTemplate,
    MacAddr, Underlay, UnderlayConfig, UnderlayError,
};

#[path = "leak_check.rs"]
mod leak_check;

const OUR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);
const PEER_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x01);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

const fn config(vwire_port: u16, vxlan_port: u16, migration_port: u16) -> UnderlayConfig {
    UnderlayConfig { vtep_ip: OUR_IP, mac: OUR_MAC, vwire_port, vxlan_port, migration_port }
}

/// The default ports with the migration channel on and off, then every port the same
/// (precedence: vwire, VXLAN, migration), then vwire on port 0 with the channel off.
const CONFIGS: [UnderlayConfig; 4] = [
    config(vwire::DEFAULT_PORT, vxlan::PORT, migration::DEFAULT_PORT),
    config(vwire::DEFAULT_PORT, vxlan::PORT, 0),
    config(vxlan::PORT, vxlan::PORT, vxlan::PORT),
    config(0, vxlan::PORT, 0),
];

const IP: usize = ethernet::HEADER_LEN;
const L4: usize = IP + ipv4::HEADER_LEN;
const TUNNEL: usize = L4 + udp::HEADER_LEN;

fuzz_target!(|input: &[u8]| {
    leak_check::without_leaks(|| one_input(input));
});

fn one_input(input: &[u8]) {
    let Some((&[mode, split], frame)) = input.split_first_chunk::<2>() else {
        return;
    };
    if mode & 0x80 != 0 {
        encap_round_trip(frame);
        return;
    }
    let cfg = &CONFIGS[usize::from(mode & 0x03)];
    let mut frame = frame.to_vec();
    if mode & 0x04 != 0 {
        fix_lengths(&mut frame);
    }
    if mode & 0x08 != 0 {
        fix_ipv4_checksum(&mut frame);
    }
    let pkt_len = frame.len();
    let split = usize::from(split);
    let data = if split == 0 || split >= pkt_len { &frame[..] } else { &frame[..split] };

    if mode & 0x10 != 0 {
        // Outside the contract: any answer will do, but no panic.
        for short in [0, data.len() / 2, data.len().saturating_sub(1)] {
            let _ = classify(data, short, cfg);
        }
        return;
    }

    let got = classify(data, pkt_len, cfg);
    let want = reference(data, pkt_len, cfg);
    assert_eq!(got, want, "classify disagrees with the reference (first segment {} of {pkt_len})", data.len());

    if let Ok(accepted) = got {
        // More contiguous bytes never change an accepted frame's verdict.
        assert_eq!(classify(&frame, pkt_len, cfg), Ok(accepted));
        check_accepted(&frame, data.len(), cfg, accepted);
    }
}

/// Sets the IPv4 total length and the UDP length to fill the frame (if they fit).
fn fix_lengths(frame: &mut [u8]) {
    if frame.len() < TUNNEL {
        return;
    }
    let total = (frame.len() - IP).min(usize::from(u16::MAX));
    frame[IP + 2..IP + 4].copy_from_slice(&(total as u16).to_be_bytes());
    frame[L4 + 4..L4 + 6].copy_from_slice(&((total - ipv4::HEADER_LEN) as u16).to_be_bytes());
}

/// Recomputes the checksum of the 20 bytes at offset 14 (an IPv4 header without options).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    if let Some(h) = frame.get_mut(IP..L4) {
        h[10..12].fill(0);
        let csum = checksum::checksum(h);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
    }
}

/// The classifier as its documentation describes it, written with the checked views: checks in
/// the order of the `UnderlayError` variants, the first failing one wins.
fn reference(data: &[u8], pkt_len: usize, cfg: &UnderlayConfig) -> Result<Underlay, UnderlayError> {
    use UnderlayError as E;

    let eth = ethernet::Frame::new_checked(data).map_err(|_| E::Runt)?;
    if pkt_len < ethernet::HEADER_LEN {
        return Err(E::Runt);
    }
    if eth.dst() != cfg.mac && !eth.dst().is_multicast() {
        return Err(E::NotOurMac);
    }
    match eth.ethertype() {
        ethertype::ARP => {
            return match arp::Packet::new_checked(eth.payload()) {
                Ok(_) => Ok(Underlay::Arp),
                Err(_) => Err(E::ArpMalformed),
            }
        }
        ethertype::IPV4 => {}
        _ => return Err(E::NotIpv4),
    }

    let l3 = eth.payload();
    if l3.len() < ipv4::HEADER_LEN {
        return Err(E::Ipv4Truncated);
    }
    let ip = ipv4::Packet::new_unchecked(l3);
    if ip.version() != 4 {
        return Err(E::Ipv4Version);
    }
    if usize::from(ip.header_len()) < ipv4::HEADER_LEN {
        return Err(E::Ipv4HeaderLength);
    }
    if usize::from(ip.header_len()) > ipv4::HEADER_LEN {
        return Err(E::Ipv4Options);
    }
    let total = usize::from(ip.total_len());
    if total < ipv4::HEADER_LEN || ethernet::HEADER_LEN + total > pkt_len {
        return Err(E::Ipv4TotalLength);
    }
    if !ip.verify_checksum() {
        return Err(E::Ipv4Checksum);
    }
    if ip.is_fragment() {
        return Err(E::Ipv4Fragment);
    }
    if ip.dst_addr() != cfg.vtep_ip {
        return Err(E::NotOurAddress);
    }

    match ip.protocol() {
        ipv4::protocol::ICMP => {
            // The whole ICMP message must be in the first segment.
            return match l3.get(ipv4::HEADER_LEN..total).map(icmpv4::Packet::new_checked) {
                Some(Ok(icmp))
                    if icmp.msg_type() == icmpv4::message::ECHO_REQUEST
                        && icmp.code() == 0
                        && icmp.verify_checksum() =>
                {
                    Ok(Underlay::IcmpEcho)
                }
                _ => Err(E::IcmpOther),
            };
        }
        ipv4::protocol::UDP => {}
        _ => return Err(E::IpProtocol),
    }

    if l3.len() < ipv4::HEADER_LEN + udp::HEADER_LEN || total < ipv4::HEADER_LEN + udp::HEADER_LEN {
        return Err(E::UdpTruncated);
    }
    let dgram = udp::Datagram::new_unchecked(&l3[ipv4::HEADER_LEN..]);
    if usize::from(dgram.len()) != total - ipv4::HEADER_LEN {
        return Err(E::UdpLength);
    }
    // A computed UDP checksum is verified; the pseudo-header sum alone (an
    // offload nobody completed) counts as not computed; a datagram beyond
    // the first segment with any other checksum cannot be verified, so it
    // is refused.
    let partial =
        checksum::fold(checksum::pseudo_header_v4(ip.src_addr(), ip.dst_addr(), ipv4::protocol::UDP, dgram.len()));
    if dgram.checksum() != 0 && dgram.checksum() != partial {
        match l3.get(ipv4::HEADER_LEN..ipv4::HEADER_LEN + usize::from(dgram.len())) {
            Some(whole) if udp::Datagram::new_unchecked(whole).verify_checksum(ip.src_addr(), ip.dst_addr()) => {}
            _ => return Err(E::UdpChecksum),
        }
    }
    let port = dgram.dst_port();
    let udp_payload = usize::from(dgram.len()) - udp::HEADER_LEN;
    let tunnel = &l3[ipv4::HEADER_LEN + udp::HEADER_LEN..];

    // ESP in UDP (RFC 3948): a keepalive, IKE, or ESP, whole in the first segment.
    if port == secure::PORT {
        return match tunnel.get(..udp_payload) {
            Some([0xff]) => Ok(Underlay::NatKeepalive),
            Some([0, 0, 0, 0, ..]) => Err(E::EspIke),
            Some(p) if udp_payload >= secure::HEADER_LEN + 2 + secure::ICV_LEN => Ok(Underlay::Esp(EspPacket {
                spi: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                src_ip: ip.src_addr(),
                src_port: dgram.src_port(),
                len: udp_payload,
                trailer_len: pkt_len - ethernet::HEADER_LEN - total,
            })),
            _ => Err(E::EspTruncated),
        };
    }

    let (encap, connector) = if port == cfg.vwire_port {
        match vwire::Header::new_checked(tunnel) {
            Ok(h) if udp_payload >= vwire::HEADER_LEN => (Encap::Vwire, h.connector()),
            _ => return Err(E::TunnelTruncated),
        }
    } else if port == cfg.vxlan_port {
        match vxlan::Header::new_checked(tunnel) {
            Ok(h) if udp_payload >= vxlan::HEADER_LEN => {
                if !h.vni_valid() {
                    return Err(E::VxlanFlags);
                }
                (Encap::Vxlan, ConnectorId(h.vni()))
            }
            _ => return Err(E::TunnelTruncated),
        }
    } else if cfg.migration_port != 0 && port == cfg.migration_port {
        match tunnel.first_chunk::<{ migration::HEADER_LEN }>() {
            Some(h) if udp_payload >= migration::HEADER_LEN => {
                if h[0] != migration::VERSION {
                    return Err(E::MigrationHeader);
                }
                match h[1] {
                    migration::kind::FORWARD => {
                        (Encap::Forward, ConnectorId(u32::from_be_bytes([h[4], h[5], h[6], h[7]])))
                    }
                    migration::kind::LOCATE
                    | migration::kind::ACK
                    | migration::kind::MOVED
                    | migration::kind::FLUSHED => return Ok(Underlay::Migration),
                    _ => return Err(E::MigrationHeader),
                }
            }
            _ => return Err(E::TunnelTruncated),
        }
    } else {
        return Err(E::UdpPort);
    };

    let outer_len = TUNNEL + encap.header_len();
    let inner_len = udp_payload - encap.header_len();
    if inner_len < ethernet::HEADER_LEN || data.len() < outer_len + ethernet::HEADER_LEN {
        return Err(E::InnerRunt);
    }
    Ok(Underlay::Tunnel(Decap {
        encap,
        connector,
        src_ip: ip.src_addr(),
        outer_len,
        inner_len,
        trailer_len: pkt_len - ethernet::HEADER_LEN - total,
    }))
}

/// What an accepted verdict promises about the whole frame.
fn check_accepted(frame: &[u8], first_segment: usize, cfg: &UnderlayConfig, verdict: Underlay) {
    let eth = ethernet::Frame::new_checked(frame).expect("accepted frame has an Ethernet header");
    assert!(eth.dst() == cfg.mac || eth.dst().is_multicast());
    let ip_view = || {
        let ip = ipv4::Packet::new_checked(eth.payload()).expect("accepted frame's IPv4 packet is whole");
        assert!(ip.verify_checksum() && !ip.is_fragment() && ip.dst_addr() == cfg.vtep_ip);
        ip
    };
    match verdict {
        Underlay::Arp => {
            assert_eq!(eth.ethertype(), ethertype::ARP);
            assert!(first_segment >= ethernet::HEADER_LEN + arp::HEADER_LEN);
        }
        Underlay::IcmpEcho => {
            let ip = ip_view();
            assert_eq!(ip.protocol(), ipv4::protocol::ICMP);
            let icmp = icmpv4::Packet::new_checked(ip.payload()).expect("echo request holds an ICMP header");
            assert!(icmp.verify_checksum());
            assert!(first_segment >= L4 + ip.payload().len());
        }
        Underlay::Migration => {
            let ip = ip_view();
            let dgram = udp::Datagram::new_checked(ip.payload()).expect("migration datagram is whole");
            assert!(cfg.migration_port != 0 && dgram.dst_port() == cfg.migration_port);
            // The control plane's decoder gets the whole UDP payload; it must take anything.
            let key = migration::Key::new(&[0x42; 32]).expect("key");
            let _ = migration::Message::decode(dgram.payload(), &key);
        }
        Underlay::Esp(e) => {
            let ip = ip_view();
            assert_eq!(ip.src_addr(), e.src_ip);
            let dgram = udp::Datagram::new_checked(ip.payload()).expect("ESP datagram is whole");
            assert_eq!((dgram.dst_port(), dgram.src_port()), (secure::PORT, e.src_port));
            assert_eq!(dgram.payload().len(), e.len);
            assert!(first_segment >= ESP_OFFSET + e.len, "the ESP packet is in the first segment");
            assert_eq!(ESP_OFFSET + e.len + e.trailer_len, frame.len());
            assert_eq!(&dgram.payload()[..4], &e.spi.to_be_bytes());
        }
        Underlay::NatKeepalive => {
            let ip = ip_view();
            let dgram = udp::Datagram::new_checked(ip.payload()).expect("keepalive is whole");
            assert_eq!((dgram.dst_port(), dgram.payload()), (secure::PORT, &[0xff][..]));
        }
        Underlay::Tunnel(d) => {
            assert_eq!(d.outer_len, d.encap.overhead());
            assert!(d.outer_len + ethernet::HEADER_LEN <= first_segment);
            assert_eq!(d.outer_len + d.inner_len + d.trailer_len, frame.len());
            let ip = ip_view();
            assert_eq!(ip.src_addr(), d.src_ip);
            assert_eq!(usize::from(ip.total_len()) + IP + d.trailer_len, frame.len());
            let dgram = udp::Datagram::new_checked(ip.payload()).expect("tunnel datagram is whole");
            assert_eq!(usize::from(dgram.len()), ip.payload().len());
            let port = match d.encap {
                Encap::Vwire => cfg.vwire_port,
                Encap::Vxlan => cfg.vxlan_port,
                Encap::Forward => cfg.migration_port,
                Encap::Secure | Encap::SecureVxlan => unreachable!("classify never returns a secure format"),
            };
            assert_eq!(dgram.dst_port(), port);
            assert_eq!(dgram.payload().len(), d.encap.header_len() + d.inner_len);
            let inner = &frame[d.outer_len..d.outer_len + d.inner_len];
            assert_eq!(inner, &dgram.payload()[d.encap.header_len()..]);
            ethernet::Frame::new_checked(inner).expect("inner frame has an Ethernet header");
        }
    }
}

/// `EncapTemplate::write` + padding, then `classify`: back to the same wire and inner frame.
fn encap_round_trip(params: &[u8]) {
    let Some((&[which, c0, c1, c2, c3, p0, p1, pad], inner)) = params.split_first_chunk::<8>() else {
        return;
    };
    let encap = [Encap::Vwire, Encap::Vxlan, Encap::Forward][usize::from(which % 3)];
    let connector = ConnectorId(u32::from_be_bytes([c0, c1, c2, c3]));
    let src_port = u16::from_be_bytes([p0, p1]);
    let cfg = &CONFIGS[0];
    let template = EncapTemplate::new(encap, connector, PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, encap.default_port(), 9000);
    if inner.len() > template.max_inner_len() {
        return;
    }
    let mut frame = build_tunnel_frame(&template, inner, src_port);
    let ip_end = frame.len();
    frame.resize(ip_end + usize::from(pad), pad);

    let got = classify(&frame, frame.len(), cfg);
    if inner.len() < ethernet::HEADER_LEN {
        assert_eq!(got, Err(UnderlayError::InnerRunt));
        return;
    }
    let vni_mask = if encap == Encap::Vxlan { vxlan::MAX_VNI } else { u32::MAX };
    let want = Decap {
        encap,
        connector: ConnectorId(connector.0 & vni_mask),
        src_ip: PEER_IP,
        outer_len: encap.overhead(),
        inner_len: inner.len(),
        trailer_len: usize::from(pad),
    };
    assert_eq!(got, Ok(Underlay::Tunnel(want)));
    assert_eq!(&frame[want.outer_len..want.outer_len + want.inner_len], inner);
    let dgram = udp::Datagram::new_checked(&frame[L4..ip_end]).expect("whole datagram");
    assert_eq!(dgram.src_port(), src_port);
    assert_eq!(dgram.checksum(), 0);
    // Cut after the inner Ethernet header, the first segment still decides the same.
    let first = want.outer_len + ethernet::HEADER_LEN;
    assert_eq!(classify(&frame[..first], frame.len(), cfg), got);
    assert_eq!(classify(&frame[..first - 1], frame.len(), cfg), Err(UnderlayError::InnerRunt));
}
