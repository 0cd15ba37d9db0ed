//! ARP for IPv4 over Ethernet (RFC 826), the only combination VirtualWire speaks.
//!
//! [`Packet`] views the 28-byte Ethernet/IPv4 ARP packet at fixed offsets.
//! [`Packet::new_checked`] validates the buffer length once; after it succeeds no accessor
//! panics (it does not check the hardware/protocol types and lengths: [`parse`] does). With
//! [`Packet::new_unchecked`] accessors panic on a buffer shorter than [`HEADER_LEN`].
//!
//! The frame-level helpers ([`parse`], [`reply_in_place`], [`build_request`],
//! [`build_gratuitous`]) take whole Ethernet frames, never panic and never allocate.

use std::net::Ipv4Addr;

use crate::ethernet::{self, ethertype, MacAddr};
use crate::{be16, put_be16, Error};

/// ARP opcodes (RFC 826, "ar$op").
pub mod operation {
    /// ares_op$REQUEST.
    pub const REQUEST: u16 = 1;
    /// ares_op$REPLY.
    pub const REPLY: u16 = 2;
}

/// Hardware type of Ethernet (RFC 826 "ares_hrd$Ethernet").
pub const HTYPE_ETHERNET: u16 = 1;

/// Field offsets of an Ethernet/IPv4 ARP packet (RFC 826, "Packet format").
pub mod field {
    use crate::Field;

    /// Hardware address space (ar$hrd).
    pub const HTYPE: Field = 0..2;
    /// Protocol address space (ar$pro), an EtherType.
    pub const PTYPE: Field = 2..4;
    /// Hardware address length (ar$hln).
    pub const HLEN: usize = 4;
    /// Protocol address length (ar$pln).
    pub const PLEN: usize = 5;
    /// Opcode (ar$op).
    pub const OPER: Field = 6..8;
    /// Sender hardware address (ar$sha).
    pub const SHA: Field = 8..14;
    /// Sender protocol address (ar$spa).
    pub const SPA: Field = 14..18;
    /// Target hardware address (ar$tha).
    pub const THA: Field = 18..24;
    /// Target protocol address (ar$tpa).
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const HEADER_LEN: usize = field::TPA.end;

const _: () = assert!(HEADER_LEN == 28);
const _: () = assert!(ethernet::HEADER_LEN + HEADER_LEN <= ethernet::MIN_FRAME_LEN);

/// A read/write view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds the 28-byte packet.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the 28-byte packet.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 for Ethernet).
    pub fn hardware_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::HTYPE.start)
    }

    /// Protocol type (0x0800 for IPv4).
    pub fn protocol_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PTYPE.start)
    }

    /// Hardware address length (6 for Ethernet).
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length (4 for IPv4).
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Opcode.
    pub fn operation(&self) -> u16 {
        be16(self.buffer.as_ref(), field::OPER.start)
    }

    /// Sender hardware address.
    pub fn sender_hw_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    /// Sender protocol address.
    pub fn sender_proto_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[14], d[15], d[16], d[17])
    }

    /// Target hardware address.
    pub fn target_hw_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    /// Target protocol address.
    pub fn target_proto_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[24], d[25], d[26], d[27])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::HTYPE.start, value);
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::PTYPE.start, value);
    }

    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    /// Sets the opcode.
    pub fn set_operation(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::OPER.start, value);
    }

    /// Sets the sender hardware address.
    pub fn set_sender_hw_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    /// Sets the sender protocol address.
    pub fn set_sender_proto_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_hw_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    /// Sets the target protocol address.
    pub fn set_target_proto_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets());
    }

    /// Writes the fixed Ethernet/IPv4 preamble: htype 1, ptype 0x0800, hlen 6, plen 4.
    pub fn set_ethernet_ipv4(&mut self) {
        self.set_hardware_type(HTYPE_ETHERNET);
        self.set_protocol_type(ethertype::IPV4);
        self.set_hardware_len(6);
        self.set_protocol_len(4);
    }
}

/// What the uplink needs to know about a received ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpInfo {
    /// Opcode: [`operation::REQUEST`] or [`operation::REPLY`].
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// Length of an Ethernet frame carrying ARP, before padding.
const FRAME_LEN: usize = ethernet::HEADER_LEN + HEADER_LEN;
const A: usize = ethernet::HEADER_LEN;

/// Parses an Ethernet frame carrying Ethernet/IPv4 ARP; `None` unless the EtherType is ARP,
/// the frame holds 14 + 28 bytes, htype 1, ptype 0x0800, hlen 6, plen 4 and op 1 or 2.
#[inline]
pub fn parse(frame: &[u8]) -> Option<ArpInfo> {
    let h = frame.first_chunk::<FRAME_LEN>()?;
    let operation = u16::from_be_bytes([h[A + 6], h[A + 7]]);
    let ok = u16::from_be_bytes([h[12], h[13]]) == ethertype::ARP
        && u16::from_be_bytes([h[A], h[A + 1]]) == HTYPE_ETHERNET
        && u16::from_be_bytes([h[A + 2], h[A + 3]]) == ethertype::IPV4
        && h[A + field::HLEN] == 6
        && h[A + field::PLEN] == 4
        && (operation == operation::REQUEST || operation == operation::REPLY);
    if !ok {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
    Some(ArpInfo {
        operation,
        sender_mac: MacAddr([h[A + 8], h[A + 9], h[A + 10], h[A + 11], h[A + 12], h[A + 13]]),
        sender_ip: ip(A + field::SPA.start),
        target_ip: ip(A + field::TPA.start),
    })
}

/// Rewrites a valid ARP request for `our_ip` into our reply, in place (RFC 826, "Packet
/// Reception": swap sender and target, fill in our hardware address, opcode REPLY).
///
/// Ethernet dst = the requester's hardware address, src = `our_mac`; ARP sender = us, target =
/// the requester. The frame length (and any padding) is unchanged. Returns false, leaving the
/// frame untouched, if it is not a valid request whose target is `our_ip`. Never panics.
#[inline]
pub fn reply_in_place(frame: &mut [u8], our_mac: MacAddr, our_ip: Ipv4Addr) -> bool {
    let Some(info) = parse(frame) else {
        return false;
    };
    if info.operation != operation::REQUEST || info.target_ip != our_ip {
        return false;
    }
    let Some(h) = frame.first_chunk_mut::<FRAME_LEN>() else {
        return false;
    };
    h[0..6].copy_from_slice(&info.sender_mac.0);
    h[6..12].copy_from_slice(&our_mac.0);
    h[A + 6..A + 8].copy_from_slice(&operation::REPLY.to_be_bytes());
    h[A + 8..A + 14].copy_from_slice(&our_mac.0);
    h[A + 14..A + 18].copy_from_slice(&our_ip.octets());
    h[A + 18..A + 24].copy_from_slice(&info.sender_mac.0);
    h[A + 24..A + 28].copy_from_slice(&info.sender_ip.octets());
    true
}

/// Writes a broadcast "who-has `target_ip` tell `our_ip`" request, zero-padded to the 60-byte
/// Ethernet minimum; returns 60. The target hardware address is zero (RFC 5227 §2.1.1).
pub fn build_request(
    buf: &mut [u8; ethernet::MIN_FRAME_LEN],
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> usize {
    buf.fill(0);
    let mut frame = ethernet::Frame::new_unchecked(&mut buf[..]);
    frame.set_dst(MacAddr::BROADCAST);
    frame.set_src(our_mac);
    frame.set_ethertype(ethertype::ARP);
    let mut arp = Packet::new_unchecked(frame.payload_mut());
    arp.set_ethernet_ipv4();
    arp.set_operation(operation::REQUEST);
    arp.set_sender_hw_addr(our_mac);
    arp.set_sender_proto_addr(our_ip);
    arp.set_target_hw_addr(MacAddr::ZERO);
    arp.set_target_proto_addr(target_ip);
    ethernet::MIN_FRAME_LEN
}

/// Writes a broadcast gratuitous ARP request announcing `our_ip` at `our_mac` (sender and
/// target protocol addresses both `our_ip`, RFC 5227 §3), zero-padded to 60 bytes; returns 60.
pub fn build_gratuitous(buf: &mut [u8; ethernet::MIN_FRAME_LEN], our_mac: MacAddr, our_ip: Ipv4Addr) -> usize {
    build_request(buf, our_mac, our_ip, our_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Broadcast request captured from Linux: who-has 192.168.100.2 tell 192.168.100.1 ...
    static REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x06, 0x00, 0x01, //
        0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0xc0, 0xa8, 0x64, 0x01, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x64, 0x02,
    ];
    // ... and the Linux kernel's reply from 192.168.100.2.
    static REPLY: [u8; 42] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x08, 0x06, 0x00, 0x01, //
        0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0xc0, 0xa8, 0x64, 0x02, //
        0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0xc0, 0xa8, 0x64, 0x01,
    ];
    const THEIR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x01);
    const THEIR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    const OUR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&REQUEST[14..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.operation(), operation::REQUEST);
        assert_eq!(p.sender_hw_addr(), THEIR_MAC);
        assert_eq!(p.sender_proto_addr(), THEIR_IP);
        assert_eq!(p.target_hw_addr(), MacAddr::ZERO);
        assert_eq!(p.target_proto_addr(), OUR_IP);
        let info = parse(&REQUEST).unwrap();
        assert_eq!(
            info,
            ArpInfo { operation: operation::REQUEST, sender_mac: THEIR_MAC, sender_ip: THEIR_IP, target_ip: OUR_IP }
        );
        assert_eq!(parse(&REPLY).unwrap().operation, operation::REPLY);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 42];
        buf[..14].copy_from_slice(&REPLY[..14]);
        let mut p = Packet::new_unchecked(&mut buf[14..]);
        p.set_ethernet_ipv4();
        p.set_operation(operation::REPLY);
        p.set_sender_hw_addr(OUR_MAC);
        p.set_sender_proto_addr(OUR_IP);
        p.set_target_hw_addr(THEIR_MAC);
        p.set_target_proto_addr(THEIR_IP);
        assert_eq!(buf, REPLY);
    }

    #[test]
    fn reply_matches_linux() {
        let mut frame = REQUEST;
        assert!(reply_in_place(&mut frame, OUR_MAC, OUR_IP));
        assert_eq!(frame, REPLY);
    }

    #[test]
    fn reply_keeps_padding() {
        let mut frame = [0x5au8; 60];
        frame[..42].copy_from_slice(&REQUEST);
        assert!(reply_in_place(&mut frame, OUR_MAC, OUR_IP));
        assert_eq!(&frame[..42], &REPLY[..]);
        assert_eq!(&frame[42..], &[0x5a; 18]);
    }

    #[test]
    fn reply_refusals_leave_frame_untouched() {
        let mut frame = REQUEST;
        assert!(!reply_in_place(&mut frame, OUR_MAC, Ipv4Addr::new(192, 168, 100, 3)));
        assert_eq!(frame, REQUEST);
        let mut frame = REPLY;
        assert!(!reply_in_place(&mut frame, OUR_MAC, THEIR_IP)); // a reply, not a request
        assert_eq!(frame, REPLY);
        // EtherType, htype, ptype, hlen, plen, opcode.
        for (at, value) in [(13usize, 0x05u8), (15, 6), (16, 0x86), (18, 8), (19, 16), (21, 3), (20, 1)] {
            let mut frame = REQUEST;
            frame[at] = value;
            assert!(parse(&frame).is_none(), "byte {at} = {value:#x}");
            let before = frame;
            assert!(!reply_in_place(&mut frame, OUR_MAC, OUR_IP));
            assert_eq!(frame, before);
        }
        for len in 0..REQUEST.len() {
            let mut frame = REQUEST;
            assert!(parse(&frame[..len]).is_none());
            assert!(!reply_in_place(&mut frame[..len], OUR_MAC, OUR_IP));
        }
    }

    #[test]
    fn request_and_gratuitous() {
        let mut buf = [0xffu8; 60];
        assert_eq!(build_request(&mut buf, THEIR_MAC, THEIR_IP, OUR_IP), 60);
        assert_eq!(&buf[..42], &REQUEST[..]);
        assert_eq!(&buf[42..], &[0u8; 18]);
        assert!(reply_in_place(&mut buf, OUR_MAC, OUR_IP));
        assert_eq!(&buf[..42], &REPLY[..]);

        let mut buf = [0xffu8; 60];
        assert_eq!(build_gratuitous(&mut buf, OUR_MAC, OUR_IP), 60);
        let info = parse(&buf).unwrap();
        assert_eq!(
            info,
            ArpInfo { operation: operation::REQUEST, sender_mac: OUR_MAC, sender_ip: OUR_IP, target_ip: OUR_IP }
        );
        assert_eq!(&buf[..6], &[0xff; 6]);
        assert_eq!(&buf[42..], &[0u8; 18]);
    }
}
