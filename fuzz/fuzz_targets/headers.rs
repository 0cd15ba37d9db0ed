//! The zero-copy header views (Ethernet, 802.1Q, IPv4, UDP, ICMPv4, ARP, vwire, VXLAN), the
//! Internet checksum and the flow hash, on arbitrary bytes.
//!
//! Invariants: `new_checked` accepts exactly the buffers its documentation describes and
//! reports `Truncated` or `Malformed` as documented; an accepted view's accessors read the
//! bytes at the documented offsets and its payload lies within the buffer at the right place;
//! setters change only their field and read back (masked where documented); `fill_checksum`
//! makes `verify_checksum` true; `checksum::sum` splits at any even offset and matches a
//! byte-at-a-time RFC 1071 sum; an RFC 1624 update equals the recomputed checksum (but for the
//! all-zero case RFC 1624 leaves as -0); the flow hash is deterministic, depends on no byte
//! outside the flow's fields, and its source port is in the dynamic range.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vw_wire::ethernet::{self, ethertype};
use vw_wire::flow::flow_hash;
use vw_wire::{arp, checksum, icmpv4, ipv4, udp, vlan, vwire, vxlan, ConnectorId, EncapTemplate, Error, MacAddr};

#[path = "leak_check.rs"]
mod leak_check;

fuzz_target!(|data: &[u8]| {
    leak_check::without_leaks(|| one_input(data));
});

fn one_input(data: &[u8]) {
    ethernet_frame(data);
    vlan_tag(data);
    ipv4_packet(data);
    udp_datagram(data);
    icmp_packet(data);
    arp_packet(data);
    vwire_header(data);
    vxlan_header(data);
    internet_checksum(data);
    flow(data);
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

/// The offset of `part` inside `whole` (a sub-slice of it).
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    let off = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    assert!(off <= whole.len() && off + part.len() <= whole.len(), "slice outside the buffer");
    off
}

/// A byte of the input to use as a value, or a constant.
fn byte(data: &[u8], at: usize) -> u8 {
    data.get(at).copied().unwrap_or(0xa5) ^ (at as u8)
}

fn ethernet_frame(data: &[u8]) {
    let Ok(f) = ethernet::Frame::new_checked(data) else {
        assert!(data.len() < ethernet::HEADER_LEN);
        assert_eq!(ethernet::Frame::new_checked(data).unwrap_err(), Error::Truncated);
        return;
    };
    assert_eq!(f.dst().as_bytes(), &data[0..6]);
    assert_eq!(f.src().as_bytes(), &data[6..12]);
    assert_eq!(f.ethertype(), be16(data, 12));
    assert_eq!(offset_in(data, f.payload()), ethernet::HEADER_LEN);
    assert_eq!(f.payload().len(), data.len() - ethernet::HEADER_LEN);
    let mac = f.src();
    assert_eq!(mac.is_broadcast(), mac == MacAddr::BROADCAST);
    assert_eq!(mac.is_unicast(), !mac.is_multicast());
    assert!(!mac.is_broadcast() || mac.is_multicast());
    assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));

    let mut copy = data.to_vec();
    let mut g = ethernet::Frame::new_unchecked(&mut copy[..]);
    let (dst, et) = (MacAddr::new(byte(data, 1), 2, 3, 4, 5, byte(data, 6)), be16(data, 0));
    g.set_dst(dst);
    g.set_ethertype(et);
    assert_eq!((g.dst(), g.src(), g.ethertype()), (dst, mac, et));
    assert_eq!(&copy[14..], &data[14..]);
}

fn vlan_tag(data: &[u8]) {
    let Ok(t) = vlan::Tag::new_checked(data) else {
        assert!(data.len() < vlan::HEADER_LEN);
        return;
    };
    let tci = be16(data, 0);
    assert_eq!(t.tci(), tci);
    assert_eq!(u16::from(t.pcp()) << 13 | u16::from(t.dei()) << 12 | t.vid(), tci);
    assert!(t.pcp() < 8 && t.vid() <= 0x0fff);
    assert_eq!(t.ethertype(), be16(data, 2));
    assert_eq!(offset_in(data, t.payload()), vlan::HEADER_LEN);

    let mut copy = data.to_vec();
    let mut u = vlan::Tag::new_unchecked(&mut copy[..]);
    let (pcp, dei, vid) = (t.pcp(), t.dei(), t.vid());
    let new_vid = be16(data, 0) ^ 0x5a5a;
    u.set_vid(new_vid);
    assert_eq!((u.vid(), u.pcp(), u.dei()), (new_vid & 0x0fff, pcp, dei));
    u.set_pcp(byte(data, 2));
    assert_eq!((u.vid(), u.pcp(), u.dei()), (new_vid & 0x0fff, byte(data, 2) & 7, dei));
    u.set_dei(!dei);
    assert_eq!((u.vid(), u.pcp(), u.dei()), (new_vid & 0x0fff, byte(data, 2) & 7, !dei));
    u.set_tci(tci);
    assert_eq!((u.vid(), u.pcp(), u.dei()), (vid, pcp, dei));
    assert_eq!(&copy[2..], &data[2..]);
}

fn ipv4_packet(data: &[u8]) {
    let expected = if data.len() < ipv4::HEADER_LEN {
        Err(Error::Truncated)
    } else {
        let header_len = usize::from(data[0] & 0x0f) * 4;
        let total = usize::from(be16(data, 2));
        if header_len < ipv4::HEADER_LEN {
            Err(Error::Malformed)
        } else if data.len() < header_len {
            Err(Error::Truncated)
        } else if total < header_len {
            Err(Error::Malformed)
        } else if data.len() < total {
            Err(Error::Truncated)
        } else {
            Ok((header_len, total))
        }
    };
    let p = match (ipv4::Packet::new_checked(data), expected) {
        (Ok(p), Ok(_)) => p,
        (Err(e), Err(want)) => {
            assert_eq!(e, want);
            return;
        }
        (got, want) => panic!("new_checked: {:?}, expected {want:?}", got.map(|_| ())),
    };
    let Ok((header_len, total)) = expected else { unreachable!() };
    assert_eq!(p.version(), data[0] >> 4);
    assert_eq!(usize::from(p.header_len()), header_len);
    assert_eq!(usize::from(p.total_len()), total);
    assert_eq!(p.ident(), be16(data, 4));
    let flags = be16(data, 6);
    assert_eq!((p.dont_frag(), p.more_frags()), (flags & 0x4000 != 0, flags & 0x2000 != 0));
    assert_eq!(p.frag_offset(), (flags & 0x1fff) << 3);
    assert_eq!(p.is_fragment(), p.more_frags() || p.frag_offset() != 0);
    assert_eq!((p.ttl(), p.protocol(), p.checksum()), (data[8], data[9], be16(data, 10)));
    assert_eq!(p.src_addr(), Ipv4Addr::new(data[12], data[13], data[14], data[15]));
    assert_eq!(p.dst_addr(), Ipv4Addr::new(data[16], data[17], data[18], data[19]));
    assert_eq!(p.verify_checksum(), checksum::fold(checksum::sum(&data[..header_len])) == 0xffff);
    assert_eq!(offset_in(data, p.options()), ipv4::HEADER_LEN);
    assert_eq!(p.options().len(), header_len - ipv4::HEADER_LEN);
    assert_eq!(offset_in(data, p.payload()), header_len);
    assert_eq!(p.payload().len(), total - header_len);

    // Setters: each field alone, the rest untouched.
    let mut copy = data.to_vec();
    let mut q = ipv4::Packet::new_unchecked(&mut copy[..]);
    let offset = be16(data, 4);
    q.set_frag_offset(offset);
    assert_eq!(q.frag_offset(), offset & 0xfff8);
    assert_eq!((q.dont_frag(), q.more_frags()), (p.dont_frag(), p.more_frags()));
    q.set_dont_frag(!p.dont_frag());
    q.set_more_frags(!p.more_frags());
    assert_eq!((q.dont_frag(), q.more_frags(), q.frag_offset()), (!p.dont_frag(), !p.more_frags(), offset & 0xfff8));
    q.set_ttl(byte(data, 8));
    q.set_dscp_ecn(byte(data, 1));
    assert_eq!((q.ttl(), q.dscp_ecn()), (byte(data, 8), byte(data, 1)));
    assert_eq!((q.version(), usize::from(q.header_len()), q.protocol()), (p.version(), header_len, p.protocol()));
    q.fill_checksum();
    assert!(q.verify_checksum());
    assert_eq!(q.payload(), p.payload());
    assert_eq!(&copy[header_len..], &data[header_len..]);
    assert_eq!(&copy[2..6], &data[2..6]);
    assert_eq!(copy[9], data[9]);
    assert_eq!(&copy[12..header_len], &data[12..header_len]);
}

fn udp_datagram(data: &[u8]) {
    let expected = if data.len() < udp::HEADER_LEN {
        Err(Error::Truncated)
    } else if usize::from(be16(data, 4)) < udp::HEADER_LEN {
        Err(Error::Malformed)
    } else if data.len() < usize::from(be16(data, 4)) {
        Err(Error::Truncated)
    } else {
        Ok(usize::from(be16(data, 4)))
    };
    let d = match (udp::Datagram::new_checked(data), expected) {
        (Ok(d), Ok(_)) => d,
        (Err(e), Err(want)) => {
            assert_eq!(e, want);
            return;
        }
        (got, want) => panic!("new_checked: {:?}, expected {want:?}", got.map(|_| ())),
    };
    let Ok(len) = expected else { unreachable!() };
    assert_eq!((d.src_port(), d.dst_port(), d.checksum()), (be16(data, 0), be16(data, 2), be16(data, 6)));
    assert_eq!(usize::from(d.len()), len);
    assert_eq!(d.is_empty(), len == udp::HEADER_LEN);
    assert_eq!(offset_in(data, d.payload()), udp::HEADER_LEN);
    assert_eq!(d.payload().len(), len - udp::HEADER_LEN);

    let src = Ipv4Addr::new(byte(data, 20), 0, 0, byte(data, 21));
    let dst = Ipv4Addr::new(10, byte(data, 22), byte(data, 23), 1);
    let _ = d.verify_checksum(src, dst);
    let mut copy = data.to_vec();
    let mut e = udp::Datagram::new_unchecked(&mut copy[..]);
    e.fill_checksum(src, dst);
    assert_ne!(e.checksum(), 0, "a computed zero is sent as 0xffff");
    assert!(e.verify_checksum(src, dst));
    e.set_checksum(0);
    assert!(e.verify_checksum(src, dst), "zero means not computed");
    assert_eq!(&copy[..6], &data[..6]);
    assert_eq!(&copy[8..], &data[8..]);
}

fn icmp_packet(data: &[u8]) {
    let Ok(p) = icmpv4::Packet::new_checked(data) else {
        assert!(data.len() < icmpv4::HEADER_LEN);
        return;
    };
    assert_eq!((p.msg_type(), p.code(), p.checksum()), (data[0], data[1], be16(data, 2)));
    assert_eq!((p.ident(), p.seq_no()), (be16(data, 4), be16(data, 6)));
    assert_eq!(offset_in(data, p.payload()), icmpv4::HEADER_LEN);
    assert_eq!(p.verify_checksum(), checksum::fold(checksum::sum(data)) == 0xffff);
    let mut copy = data.to_vec();
    let mut q = icmpv4::Packet::new_unchecked(&mut copy[..]);
    q.set_msg_type(icmpv4::message::ECHO_REPLY);
    q.set_ident(p.seq_no());
    q.set_seq_no(p.ident());
    q.fill_checksum();
    assert!(q.verify_checksum());
    assert_eq!((q.msg_type(), q.code(), q.ident(), q.seq_no()), (0, p.code(), p.seq_no(), p.ident()));
    assert_eq!(&copy[8..], &data[8..]);
}

fn arp_packet(data: &[u8]) {
    let Ok(p) = arp::Packet::new_checked(data) else {
        assert!(data.len() < arp::HEADER_LEN);
        return;
    };
    assert_eq!((p.hardware_type(), p.protocol_type()), (be16(data, 0), be16(data, 2)));
    assert_eq!((p.hardware_len(), p.protocol_len(), p.operation()), (data[4], data[5], be16(data, 6)));
    assert_eq!(p.sender_hw_addr().as_bytes(), &data[8..14]);
    assert_eq!(p.sender_proto_addr().octets(), data[14..18]);
    assert_eq!(p.target_hw_addr().as_bytes(), &data[18..24]);
    assert_eq!(p.target_proto_addr().octets(), data[24..28]);

    let mut copy = data.to_vec();
    let mut q = arp::Packet::new_unchecked(&mut copy[..]);
    q.set_ethernet_ipv4();
    q.set_operation(be16(data, 6) ^ 3);
    q.set_sender_hw_addr(p.target_hw_addr());
    q.set_target_hw_addr(p.sender_hw_addr());
    q.set_sender_proto_addr(p.target_proto_addr());
    q.set_target_proto_addr(p.sender_proto_addr());
    assert_eq!(&copy[..6], &[0, 1, 8, 0, 6, 4]);
    assert_eq!(&copy[8..14], &data[18..24]);
    assert_eq!(&copy[14..18], &data[24..28]);
    assert_eq!(&copy[18..24], &data[8..14]);
    assert_eq!(&copy[24..28], &data[14..18]);
    assert_eq!(&copy[28..], &data[28..]);
}

fn vwire_header(data: &[u8]) {
    let Ok(h) = vwire::Header::new_checked(data) else {
        assert!(data.len() < vwire::HEADER_LEN);
        return;
    };
    assert_eq!(h.connector(), ConnectorId(u32::from_be_bytes([data[0], data[1], data[2], data[3]])));
    assert_eq!(offset_in(data, h.payload()), vwire::HEADER_LEN);
    let mut copy = data.to_vec();
    let id = ConnectorId(!h.connector().0);
    vwire::Header::new_unchecked(&mut copy[..]).set_connector(id);
    assert_eq!(vwire::Header::new_checked(&copy[..]).map(|h| h.connector()), Ok(id));
    assert_eq!(&copy[4..], &data[4..]);
}

fn vxlan_header(data: &[u8]) {
    let Ok(h) = vxlan::Header::new_checked(data) else {
        assert!(data.len() < vxlan::HEADER_LEN);
        return;
    };
    assert_eq!(h.flags(), data[0]);
    assert_eq!(h.vni_valid(), data[0] & vxlan::FLAG_I != 0);
    assert_eq!(h.vni(), u32::from_be_bytes([0, data[4], data[5], data[6]]));
    assert_eq!(offset_in(data, h.payload()), vxlan::HEADER_LEN);
    let mut copy = data.to_vec();
    let mut g = vxlan::Header::new_unchecked(&mut copy[..]);
    let vni = u32::from_be_bytes([data[3], data[2], data[1], data[0]]);
    g.set_vni(vni);
    assert_eq!((g.vni(), g.flags()), (vni & vxlan::MAX_VNI, data[0]));
    assert_eq!(&copy[..4], &data[..4], "set_vni touches only the VNI");
    assert_eq!(&copy[7..], &data[7..]);
    let mut g = vxlan::Header::new_unchecked(&mut copy[..]);
    g.clear_reserved();
    g.set_flags(vxlan::FLAG_I);
    assert!(g.vni_valid());
    assert_eq!(g.vni(), vni & vxlan::MAX_VNI);
    assert_eq!(&copy[..8], &[vxlan::FLAG_I, 0, 0, 0, copy[4], copy[5], copy[6], 0]);
    assert_eq!(&copy[8..], &data[8..]);
}

/// RFC 1071 one byte at a time: even bytes are high, odd bytes low, end-around carry.
fn reference_sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for (i, b) in data.iter().enumerate() {
        acc += if i % 2 == 0 { u64::from(*b) << 8 } else { u64::from(*b) };
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn internet_checksum(data: &[u8]) {
    let folded = checksum::fold(checksum::sum(data));
    assert_eq!(folded, reference_sum(data));
    assert_eq!(checksum::checksum(data), !folded);
    assert_eq!(checksum::sum(data) == 0, data.iter().all(|&b| b == 0));

    // Partial sums add up at any even split (RFC 1071 §2(B)).
    let at = usize::from(byte(data, 0)).min(data.len()) & !1;
    let (a, b) = data.split_at(at);
    let parts = u32::from(checksum::fold(checksum::sum(a))) + u32::from(checksum::fold(checksum::sum(b)));
    assert_eq!(checksum::fold(parts), folded);

    // RFC 1624: change one 16-bit word, update the checksum stored in another.
    if data.len() < 4 {
        return;
    }
    let words = data.len() / 2;
    let csum_at = usize::from(data[0]) % words * 2;
    let word_at = usize::from(data[1]) % words * 2;
    if csum_at == word_at {
        return;
    }
    let mut buf = data[..words * 2].to_vec();
    buf[csum_at..csum_at + 2].fill(0);
    let csum = checksum::checksum(&buf);
    buf[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    let old = be16(&buf, word_at);
    let new = old ^ be16(data, 2) ^ 0x8001;
    buf[word_at..word_at + 2].copy_from_slice(&new.to_be_bytes());
    let updated = checksum::update16(csum, old, new);
    buf[csum_at..csum_at + 2].fill(0);
    let recomputed = checksum::checksum(&buf);
    if buf.iter().all(|&b| b == 0) {
        // All-zero data: the one case where equation 3 gives -0 (0x0000), not +0 (0xffff).
        assert_eq!((updated, recomputed), (0x0000, 0xffff));
    } else {
        assert_eq!(updated, recomputed);
        buf[csum_at..csum_at + 2].copy_from_slice(&updated.to_be_bytes());
        assert_eq!(checksum::fold(checksum::sum(&buf)), 0xffff);
    }
}

/// Where the flow hash finds the EtherType after up to two VLAN tags, and that EtherType.
fn l3_offset(frame: &[u8]) -> Option<(usize, u16)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let (mut et, mut off) = (eth.ethertype(), ethernet::HEADER_LEN);
    for _ in 0..2 {
        if et != ethertype::VLAN && et != ethertype::QINQ {
            break;
        }
        match vlan::Tag::new_checked(&frame[off..]) {
            Ok(tag) => {
                et = tag.ethertype();
                off += vlan::HEADER_LEN;
            }
            Err(_) => break,
        }
    }
    Some((off, et))
}

fn flow(frame: &[u8]) {
    let h = flow_hash(frame);
    let elsewhere = frame.to_vec();
    assert_eq!(flow_hash(&elsewhere), h, "same bytes at another address, another hash");
    assert!(EncapTemplate::source_port(h) >= 0xc000);

    // Bytes that are not flow fields: VLAN TCIs; after an IPv4 header's first byte its DSCP,
    // total length, ident, TTL and checksum; the IPv6 version/class/label, payload length and
    // hop limit; everything after the EtherType of other protocols; and anything past the
    // deepest field read (2 tags, a 60-byte IPv4 header, 4 bytes of ports).
    let Some((off, et)) = l3_offset(frame) else {
        return;
    };
    let mut other = frame.to_vec();
    let mut flip = |at: usize| {
        if let Some(b) = other.get_mut(at) {
            *b = !*b;
        }
    };
    let mut tag = ethernet::HEADER_LEN;
    while tag < off {
        flip(tag);
        flip(tag + 1);
        tag += vlan::HEADER_LEN;
    }
    match et {
        ethertype::IPV4 => [1, 2, 3, 4, 5, 8, 10, 11].into_iter().for_each(|i| flip(off + i)),
        ethertype::IPV6 => [0, 1, 2, 3, 4, 5, 7].into_iter().for_each(|i| flip(off + i)),
        _ => (off..frame.len()).for_each(&mut flip),
    }
    (ethernet::HEADER_LEN + 2 * vlan::HEADER_LEN + 60 + 4..frame.len()).for_each(flip);
    assert_eq!(flow_hash(&other), h, "the hash depends on a byte outside the flow's fields");
}
