//! ICMPv4 messages (RFC 792), and the in-place echo reply the uplink answers pings with.
//!
//! [`Packet`] views the 8-byte header shared by echo request/reply (type, code, checksum,
//! identifier, sequence number). [`Packet::new_checked`] validates the buffer length once; after
//! it succeeds no accessor panics. With [`Packet::new_unchecked`] accessors panic on a buffer
//! shorter than [`HEADER_LEN`]. The checksum covers the whole buffer, so view exactly the ICMP
//! message (IPv4 payload up to `total_len`).

use crate::ethernet::{self, ethertype, MacAddr};
use crate::{be16, checksum, ipv4, put_be16, Error};

/// ICMP message types used by VirtualWire (RFC 792).
pub mod message {
    /// Echo Reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination Unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo Request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time Exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Field offsets of the ICMP echo header (RFC 792, "Echo or Echo Reply Message").
pub mod field {
    use crate::{Field, Rest};

    /// Message type.
    pub const TYPE: usize = 0;
    /// Message code.
    pub const CODE: usize = 1;
    /// Checksum over the whole ICMP message.
    pub const CHECKSUM: Field = 2..4;
    /// Echo identifier.
    pub const IDENT: Field = 4..6;
    /// Echo sequence number.
    pub const SEQ_NO: Field = 6..8;
    /// Echo data.
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the ICMP echo header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

const _: () = assert!(HEADER_LEN == 8);

/// A read/write view of an ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the 8-byte header.
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

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum as stored.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Echo identifier.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// Echo sequence number.
    pub fn seq_no(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SEQ_NO.start)
    }

    /// True if the checksum over the whole buffer is correct (RFC 792, "Checksum").
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }

    /// Echo data.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the message code.
    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// Sets the echo identifier.
    pub fn set_ident(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::IDENT.start, value);
    }

    /// Sets the echo sequence number.
    pub fn set_seq_no(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::SEQ_NO.start, value);
    }

    /// Computes the checksum over the whole buffer and stores it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(csum);
    }

    /// Echo data, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

// Offsets inside a whole Ethernet + IPv4 (no options) + ICMP frame.
const IP: usize = ethernet::HEADER_LEN;
const ICMP: usize = IP + ipv4::HEADER_LEN;
const FRAME_HEADERS: usize = ICMP + HEADER_LEN;

/// Turns the Ethernet frame `frame`, holding an ICMP echo request to us, into the echo reply,
/// in place; returns false (leaving `frame` untouched) if it is not such a request.
///
/// Expects what [`crate::underlay::classify`] returned as `Underlay::IcmpEcho`: IPv4 header of
/// exactly 20 bytes, ICMP type 8 code 0. The frame length, padding included, is unchanged.
/// Ethernet: dst = old src, src = `our_mac`; IPv4: addresses swapped, TTL 64, header checksum
/// recomputed; ICMP: type 0 and the checksum updated incrementally (RFC 1624 §3). Never panics.
#[inline]
pub fn echo_reply_in_place(frame: &mut [u8], our_mac: MacAddr) -> bool {
    let frame_len = frame.len();
    let Some((h, data)) = frame.split_first_chunk_mut::<FRAME_HEADERS>() else {
        return false;
    };
    let total_len = usize::from(u16::from_be_bytes([h[IP + 2], h[IP + 3]]));
    if u16::from_be_bytes([h[12], h[13]]) != ethertype::IPV4
        || h[IP] != 0x45
        || h[IP + ipv4::field::PROTOCOL] != ipv4::protocol::ICMP
        || total_len < ipv4::HEADER_LEN + HEADER_LEN
        || IP + total_len > frame_len
        || h[ICMP + field::TYPE] != message::ECHO_REQUEST
        || h[ICMP + field::CODE] != 0
    {
        return false;
    }

    // Ethernet (IEEE 802.3): back to whoever sent the request.
    h.copy_within(6..12, 0);
    h[6..12].copy_from_slice(&our_mac.0);

    // IPv4 (RFC 791 §3.1): swap addresses, fresh TTL, recompute the 20-byte header checksum.
    let mut src = [0u8; 4];
    src.copy_from_slice(&h[IP + 12..IP + 16]);
    h.copy_within(IP + 16..IP + 20, IP + 12);
    h[IP + 16..IP + 20].copy_from_slice(&src);
    h[IP + ipv4::field::TTL] = ipv4::DEFAULT_TTL;
    h[IP + 10..IP + 12].fill(0);
    let ip_csum = checksum::checksum(&h[IP..ICMP]);
    h[IP + 10..IP + 12].copy_from_slice(&ip_csum.to_be_bytes());

    // ICMP (RFC 792): type 8 -> 0; only the type/code word changed, so update incrementally.
    let old_word = u16::from_be_bytes([h[ICMP], h[ICMP + 1]]);
    h[ICMP + field::TYPE] = message::ECHO_REPLY;
    let new_word = u16::from_be_bytes([h[ICMP], h[ICMP + 1]]);
    let old_csum = u16::from_be_bytes([h[ICMP + 2], h[ICMP + 3]]);
    let mut icmp_csum = checksum::update16(old_csum, old_word, new_word);
    // The update gives 0x0000 when the reply sums to zero; but a reply that is all zeros
    // (ident, sequence number and data 0) has checksum 0xffff: 0x0000 would not verify.
    if icmp_csum == 0
        && h[ICMP + 4..].iter().all(|&b| b == 0)
        && data.get(..IP + total_len - FRAME_HEADERS).is_some_and(|d| d.iter().all(|&b| b == 0))
    {
        icmp_csum = 0xffff;
    }
    h[ICMP + 2..ICMP + 4].copy_from_slice(&icmp_csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethernet::Frame;

    // Echo request captured from Linux `ping -c 1 -s 16 192.168.100.2` (veth, no padding) ...
    static REQUEST: [u8; 58] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x2c, 0x79, 0xc2, 0x40, 0x00, 0x40, 0x01, 0x77, 0xba, 0xc0, 0xa8, 0x64, 0x01, 0xc0, 0xa8, //
        0x64, 0x02, 0x08, 0x00, 0xf2, 0x0d, 0x1e, 0x17, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, 0x00, 0x00, //
        0x00, 0x00, 0x93, 0xb1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    // ... and the Linux kernel's reply to it (its own IPv4 ident 0xcc3f, DF clear).
    static REPLY: [u8; 58] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x2c, 0xcc, 0x3f, 0x00, 0x00, 0x40, 0x01, 0x65, 0x3d, 0xc0, 0xa8, 0x64, 0x02, 0xc0, 0xa8, //
        0x64, 0x01, 0x00, 0x00, 0xfa, 0x0d, 0x1e, 0x17, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, 0x00, 0x00, //
        0x00, 0x00, 0x93, 0xb1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    const OUR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&REQUEST[34..]).unwrap();
        assert_eq!(p.msg_type(), message::ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0xf20d);
        assert_eq!(p.ident(), 0x1e17);
        assert_eq!(p.seq_no(), 1);
        assert_eq!(p.payload().len(), 16);
        assert!(p.verify_checksum());
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(message::ECHO_REPLY);
        p.set_code(0);
        p.set_ident(0x1e17);
        p.set_seq_no(1);
        p.payload_mut().copy_from_slice(&REPLY[42..]);
        p.fill_checksum();
        assert_eq!(&buf[..], &REPLY[34..]);
    }

    /// The expected reply: the kernel's, but with the request's IPv4 ident and flags kept.
    fn expected_reply() -> [u8; 58] {
        let mut expected = REPLY;
        expected[18..22].copy_from_slice(&REQUEST[18..22]);
        let mut ip = ipv4::Packet::new_unchecked(&mut expected[14..34]);
        ip.fill_checksum();
        expected
    }

    #[test]
    fn echo_reply_matches_linux() {
        let mut frame = REQUEST;
        assert!(echo_reply_in_place(&mut frame, OUR_MAC));
        assert_eq!(frame, expected_reply());
        let ip = ipv4::Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert!(Packet::new_checked(ip.payload()).unwrap().verify_checksum());
        assert_eq!(Frame::new_checked(&frame[..]).unwrap().src(), OUR_MAC);
    }

    #[test]
    fn echo_reply_keeps_padding_and_resets_ttl() {
        let mut frame = [0xeeu8; 64];
        frame[..58].copy_from_slice(&REQUEST);
        frame[22] = 3; // TTL 3
        let mut ip = ipv4::Packet::new_unchecked(&mut frame[14..34]);
        ip.fill_checksum();
        assert!(echo_reply_in_place(&mut frame, OUR_MAC));
        assert_eq!(&frame[..58], &expected_reply()[..]);
        assert_eq!(&frame[58..], &[0xee; 6]);
    }

    #[test]
    fn echo_reply_refusals_leave_frame_untouched() {
        let cases: [(usize, u8); 6] = [(12, 0x86), (14, 0x46), (23, 17), (34, 0), (35, 1), (17, 0x2d)];
        for (at, value) in cases {
            let mut frame = REQUEST;
            frame[at] = value;
            let before = frame;
            assert!(!echo_reply_in_place(&mut frame, OUR_MAC), "byte {at} = {value:#x}");
            assert_eq!(frame, before);
        }
        let mut short = REQUEST;
        short[17] = 27; // total length below IPv4 + ICMP headers
        assert!(!echo_reply_in_place(&mut short, OUR_MAC));
        for len in 0..REQUEST.len() {
            let mut frame = REQUEST;
            let ok = echo_reply_in_place(&mut frame[..len], OUR_MAC);
            assert!(!ok, "truncated to {len}");
        }
    }

    #[test]
    fn echo_reply_to_an_all_zero_request_has_a_valid_checksum() {
        // Ident 0, sequence number 0, no data or zero data: the reply's ICMP message is all
        // zeros, whose checksum is 0xffff, not the 0x0000 of the incremental update (found by
        // fuzz target `arp_icmp`). With ident 0xffff the message is not all zeros and sums to
        // 0xffff: its checksum is 0x0000.
        use crate::underlay::{classify, Underlay, UnderlayConfig};
        let cfg = UnderlayConfig {
            vtep_ip: std::net::Ipv4Addr::new(192, 168, 100, 2),
            mac: OUR_MAC,
            vwire_port: crate::vwire::DEFAULT_PORT,
            vxlan_port: crate::vxlan::PORT,
            migration_port: 0,
        };
        for (data_len, padded_to, ident, reply_csum) in
            [(0, 42, 0, 0xffff), (16, 58, 0, 0xffff), (0, 60, 0, 0xffff), (16, 64, 0xffff, 0x0000)]
        {
            let mut frame = vec![0u8; padded_to];
            frame[..34].copy_from_slice(&REQUEST[..34]);
            frame[16..18].copy_from_slice(&(28 + data_len as u16).to_be_bytes());
            ipv4::Packet::new_unchecked(&mut frame[14..34]).fill_checksum();
            let mut icmp = Packet::new_unchecked(&mut frame[34..42 + data_len]);
            icmp.set_msg_type(message::ECHO_REQUEST);
            icmp.set_ident(ident);
            icmp.fill_checksum();
            assert_eq!(classify(&frame, frame.len(), &cfg), Ok(Underlay::IcmpEcho));
            assert!(echo_reply_in_place(&mut frame, OUR_MAC));
            let reply = Packet::new_checked(&frame[34..42 + data_len]).unwrap();
            assert_eq!((reply.msg_type(), reply.checksum()), (message::ECHO_REPLY, reply_csum), "{data_len} {ident}");
            assert!(reply.verify_checksum(), "{data_len} {ident}");
        }
    }
}
