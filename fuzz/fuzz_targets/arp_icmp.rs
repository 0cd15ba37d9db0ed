//! What the uplink answers: `arp::parse` and `arp::reply_in_place`, `icmpv4::echo_reply_in_place`
//! (gated by `classify` as the worker does), and the ARP request builders.
//!
//! Input: `[mode, frame...]`. Before anything runs, as a sender would have:
//! * `mode & 0x01`: the IPv4 total length fills the frame but for `mode >> 4` bytes of padding;
//! * `mode & 0x02`: the IPv4 header checksum is recomputed;
//! * `mode & 0x04`: the ICMP checksum is recomputed.
//!
//! Invariants: `parse` accepts exactly the Ethernet/IPv4 requests and replies and reads every
//! field at its offset; a reply is made exactly for a request to our address, is itself a valid
//! ARP reply to the requester that the requester's classifier takes, and leaves every other
//! byte (padding included) alone; a refused frame is untouched. Every echo request `classify`
//! accepts is answered; an echo reply goes back to the sender with valid IPv4 and ICMP
//! checksums (when the request's was valid), the same ident, sequence number, data and
//! padding; the built requests parse back to their addresses and can be answered.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vw_wire::arp::{self, operation, ArpInfo};
use vw_wire::ethernet::{self, ethertype};
use vw_wire::{
    checksum, classify, icmpv4, ipv4, migration, vwire, vxlan, MacAddr, Underlay, UnderlayConfig, UnderlayError,
};

#[path = "leak_check.rs"]
mod leak_check;

const OUR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const CFG: UnderlayConfig = UnderlayConfig {
    vtep_ip: OUR_IP,
    mac: OUR_MAC,
    vwire_port: vwire::DEFAULT_PORT,
    vxlan_port: vxlan::PORT,
    migration_port: migration::DEFAULT_PORT,
};

const IP: usize = ethernet::HEADER_LEN;
const ICMP: usize = IP + ipv4::HEADER_LEN;

fuzz_target!(|input: &[u8]| {
    leak_check::without_leaks(|| one_input(input));
});

fn one_input(input: &[u8]) {
    let Some((&mode, frame)) = input.split_first() else {
        return;
    };
    let mut frame = frame.to_vec();
    repair(&mut frame, mode);
    arp_reply(&frame);
    echo_reply(&frame);
    arp_builders(&frame);
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn ip_at(d: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(d[at], d[at + 1], d[at + 2], d[at + 3])
}

fn repair(frame: &mut [u8], mode: u8) {
    if frame.len() < ICMP {
        return;
    }
    if mode & 0x01 != 0 {
        let total = (frame.len() - IP).saturating_sub(usize::from(mode >> 4)).min(usize::from(u16::MAX));
        frame[IP + 2..IP + 4].copy_from_slice(&(total as u16).to_be_bytes());
    }
    if mode & 0x02 != 0 {
        // Over 20 bytes whatever the IHL says: the only header length answered.
        frame[IP + 10..IP + 12].fill(0);
        let csum = checksum::checksum(&frame[IP..ICMP]);
        frame[IP + 10..IP + 12].copy_from_slice(&csum.to_be_bytes());
    }
    if mode & 0x04 != 0 {
        let end = IP + usize::from(be16(frame, IP + 2));
        if let Some(icmp) = frame.get_mut(ICMP..end).filter(|m| m.len() >= icmpv4::HEADER_LEN) {
            icmpv4::Packet::new_unchecked(icmp).fill_checksum();
        }
    }
}

fn arp_reply(frame: &[u8]) {
    const A: usize = ethernet::HEADER_LEN;
    let info = arp::parse(frame);
    let is_arp = frame.len() >= A + arp::HEADER_LEN
        && be16(frame, 12) == ethertype::ARP
        && be16(frame, A) == arp::HTYPE_ETHERNET
        && be16(frame, A + 2) == ethertype::IPV4
        && frame[A + 4] == 6
        && frame[A + 5] == 4
        && matches!(be16(frame, A + 6), operation::REQUEST | operation::REPLY);
    assert_eq!(info.is_some(), is_arp, "parse: {info:?}");
    if let Some(i) = info {
        assert_eq!(i.operation, be16(frame, A + 6));
        assert_eq!(i.sender_mac, MacAddr::from_bytes(&frame[A + 8..]));
        assert_eq!((i.sender_ip, i.target_ip), (ip_at(frame, A + 14), ip_at(frame, A + 24)));
    }

    let mut copy = frame.to_vec();
    let replied = arp::reply_in_place(&mut copy, OUR_MAC, OUR_IP);
    let i = match info {
        Some(i) if i.operation == operation::REQUEST && i.target_ip == OUR_IP => i,
        _ => {
            assert!(!replied, "answered something that is not a request for us");
            assert_eq!(copy, frame, "a refused frame was changed");
            return;
        }
    };
    assert!(replied, "a request for us was not answered");
    let want = ArpInfo { operation: operation::REPLY, sender_mac: OUR_MAC, sender_ip: OUR_IP, target_ip: i.sender_ip };
    assert_eq!(arp::parse(&copy), Some(want));
    let eth = ethernet::Frame::new_checked(&copy[..]).expect("reply has an Ethernet header");
    assert_eq!((eth.dst(), eth.src()), (i.sender_mac, OUR_MAC));
    let reply = arp::Packet::new_checked(eth.payload()).expect("reply has an ARP packet");
    assert_eq!(reply.target_hw_addr(), i.sender_mac);
    assert_eq!(&copy[12..A + 6], &frame[12..A + 6]);
    assert_eq!(copy.len(), frame.len());
    assert_eq!(&copy[A + arp::HEADER_LEN..], &frame[A + arp::HEADER_LEN..], "padding changed");
    // The requester's own uplink takes the reply as ARP.
    let theirs = UnderlayConfig { mac: i.sender_mac, vtep_ip: i.sender_ip, ..CFG };
    assert_eq!(classify(&copy, copy.len(), &theirs), Ok(Underlay::Arp));
    // A reply is never answered.
    let mut again = copy.clone();
    assert!(!arp::reply_in_place(&mut again, OUR_MAC, OUR_IP));
    assert_eq!(again, copy);
}

fn echo_reply(frame: &[u8]) {
    let verdict = classify(frame, frame.len(), &CFG);
    let mut copy = frame.to_vec();
    let replied = icmpv4::echo_reply_in_place(&mut copy, OUR_MAC);
    if verdict == Ok(Underlay::IcmpEcho) {
        assert!(replied, "classify accepted an echo request that echo_reply_in_place refuses");
    }
    let total = if frame.len() >= ICMP { usize::from(be16(frame, IP + 2)) } else { 0 };
    let is_request = frame.len() >= ICMP + icmpv4::HEADER_LEN
        && be16(frame, 12) == ethertype::IPV4
        && frame[IP] == 0x45
        && frame[IP + 9] == ipv4::protocol::ICMP
        && total >= ipv4::HEADER_LEN + icmpv4::HEADER_LEN
        && IP + total <= frame.len()
        && frame[ICMP] == icmpv4::message::ECHO_REQUEST
        && frame[ICMP + 1] == 0;
    assert_eq!(replied, is_request);
    if !replied {
        assert_eq!(copy, frame, "a refused frame was changed");
        return;
    }

    assert_eq!(copy.len(), frame.len());
    assert_eq!(&copy[0..6], &frame[6..12], "reply goes back to the sender's MAC");
    assert_eq!(&copy[6..12], OUR_MAC.as_bytes());
    assert_eq!(&copy[12..IP + 8], &frame[12..IP + 8], "EtherType, IPv4 version to flags unchanged");
    let request = ipv4::Packet::new_checked(&frame[IP..]).expect("request IPv4 is whole");
    let ip = ipv4::Packet::new_checked(&copy[IP..]).expect("reply IPv4 is whole");
    assert!(ip.verify_checksum(), "reply IPv4 header checksum");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (request.dst_addr(), request.src_addr()));
    assert_eq!((ip.ttl(), ip.protocol()), (ipv4::DEFAULT_TTL, ipv4::protocol::ICMP));
    let icmp = icmpv4::Packet::new_checked(ip.payload()).expect("reply ICMP header");
    let asked = icmpv4::Packet::new_checked(request.payload()).expect("request ICMP header");
    assert_eq!((icmp.msg_type(), icmp.code()), (icmpv4::message::ECHO_REPLY, 0));
    assert_eq!((icmp.ident(), icmp.seq_no(), icmp.payload()), (asked.ident(), asked.seq_no(), asked.payload()));
    assert_eq!(&copy[ICMP + 4..], &frame[ICMP + 4..], "ICMP data or padding changed");
    if asked.verify_checksum() {
        assert!(
            icmp.verify_checksum(),
            "reply to a valid echo request has a bad ICMP checksum {:#06x} (sum {:#06x})",
            icmp.checksum(),
            checksum::fold(checksum::sum(ip.payload()))
        );
    }
    if verdict == Ok(Underlay::IcmpEcho) {
        // At the sender, the reply passes every check up to ICMP (it is not a request).
        let theirs = UnderlayConfig { mac: MacAddr::from_bytes(&frame[6..12]), vtep_ip: request.src_addr(), ..CFG };
        assert_eq!(classify(&copy, copy.len(), &theirs), Err(UnderlayError::IcmpOther));
    }
    // A reply is never answered.
    let mut again = copy.clone();
    assert!(!icmpv4::echo_reply_in_place(&mut again, OUR_MAC));
}

fn arp_builders(frame: &[u8]) {
    let b = |at: usize| frame.get(at).copied().unwrap_or(at as u8);
    let mac = MacAddr::new(b(0) & 0xfe, b(1), b(2), b(3), b(4), b(5));
    let their_mac = MacAddr::new(b(6), b(7), b(8), b(9), b(10), b(11));
    let (ip, target) = (Ipv4Addr::new(b(12), b(13), b(14), b(15)), Ipv4Addr::new(b(16), b(17), b(18), b(19)));

    let mut buf = [b(20); ethernet::MIN_FRAME_LEN];
    assert_eq!(arp::build_request(&mut buf, mac, ip, target), ethernet::MIN_FRAME_LEN);
    let want = ArpInfo { operation: operation::REQUEST, sender_mac: mac, sender_ip: ip, target_ip: target };
    assert_eq!(arp::parse(&buf), Some(want));
    assert_eq!(&buf[..6], MacAddr::BROADCAST.as_bytes());
    assert_eq!(&buf[32..38], MacAddr::ZERO.as_bytes());
    assert!(buf[42..].iter().all(|&x| x == 0));
    let at_target = UnderlayConfig { mac: their_mac, vtep_ip: target, ..CFG };
    assert_eq!(classify(&buf, buf.len(), &at_target), Ok(Underlay::Arp));
    assert!(arp::reply_in_place(&mut buf, their_mac, target));
    let reply = ArpInfo { operation: operation::REPLY, sender_mac: their_mac, sender_ip: target, target_ip: ip };
    assert_eq!(arp::parse(&buf), Some(reply));
    assert_eq!(&buf[..6], mac.as_bytes());

    let mut buf = [b(21); ethernet::MIN_FRAME_LEN];
    assert_eq!(arp::build_gratuitous(&mut buf, mac, ip), ethernet::MIN_FRAME_LEN);
    let want = ArpInfo { operation: operation::REQUEST, sender_mac: mac, sender_ip: ip, target_ip: ip };
    assert_eq!(arp::parse(&buf), Some(want));
}
