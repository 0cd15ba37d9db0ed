//! UDP datagrams (RFC 768).
//!
//! [`Datagram::new_checked`] validates once that the buffer holds the 8-byte header and the
//! `len` bytes the header claims, and that `len >= 8`; after it succeeds no accessor panics. The
//! buffer may be longer than `len`; [`Datagram::payload`] stops at `len`. With
//! [`Datagram::new_unchecked`] accessors panic on a buffer that is too short.

use std::net::Ipv4Addr;

use crate::{be16, checksum, ipv4, put_be16, Error};

/// Field offsets of the UDP header (RFC 768, "Format").
pub mod field {
    use crate::{Field, Rest};

    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length of header and data in bytes.
    pub const LENGTH: Field = 4..6;
    /// Checksum over pseudo-header, header and data; zero means "not computed".
    pub const CHECKSUM: Field = 6..8;
    /// Payload.
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

const _: () = assert!(HEADER_LEN == 8);

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Datagram<T> {
        Datagram { buffer }
    }

    /// Wraps a buffer, checking the header and `len` against it.
    pub fn new_checked(buffer: T) -> Result<Datagram<T>, Error> {
        let datagram = Datagram::new_unchecked(buffer);
        datagram.check_len()?;
        Ok(datagram)
    }

    /// Checks that the buffer holds the header and `len` bytes, and that `len >= 8`.
    pub fn check_len(&self) -> Result<(), Error> {
        let buf_len = self.buffer.as_ref().len();
        if buf_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if buf_len < len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Length of header and data.
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// True if the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// Checksum as stored (0: not computed).
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// True if the checksum is zero (not computed, allowed over IPv4 by RFC 768) or correct.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        self.sum_with_pseudo_header(src, dst) == 0xffff
    }

    /// The folded ones' complement sum of the IPv4 pseudo-header and the
    /// datagram (header and payload, to `len`).
    fn sum_with_pseudo_header(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let len = self.len();
        let data = &self.buffer.as_ref()[..usize::from(len)];
        // The data's partial sum may use all 32 bits: fold it before adding the pseudo-header.
        let data_sum = u32::from(checksum::fold(checksum::sum(data)));
        checksum::fold(checksum::pseudo_header_v4(src, dst, ipv4::protocol::UDP, len) + data_sum)
    }

    /// The payload: from the end of the header to `len`.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::SRC_PORT.start, value);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::DST_PORT.start, value);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::LENGTH.start, value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }

    /// Computes the checksum over pseudo-header, header and payload and stores it (a computed
    /// zero is sent as 0xffff, RFC 768).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let csum = match !self.sum_with_pseudo_header(src, dst) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(csum);
    }

    /// The payload (end of header to `len`), mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

    // UDP part of a VXLAN packet sent by Linux (source port 34848 -> 4789, VNI 4242) carrying
    // an ICMP echo request between 10.200.0.1 and 10.200.0.2. The sender's checksum field held
    // only the pseudo-header sum (0x49b0, checksum offload); the value below is the final one.
    static DATAGRAM: [u8; 74] = [
        0x88, 0x20, 0x12, 0xb5, 0x00, 0x4a, 0x21, 0x1b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x92, 0x00, //
        0x02, 0x00, 0x00, 0x00, 0xaa, 0x02, 0x02, 0x00, 0x00, 0x00, 0xaa, 0x01, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x2c, 0x3d, 0x88, 0x40, 0x00, 0x40, 0x01, 0xe7, 0xb6, 0x0a, 0xc8, 0x00, 0x01, 0x0a, 0xc8, //
        0x00, 0x02, 0x08, 0x00, 0x24, 0x03, 0x1e, 0x18, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, 0x00, 0x00, //
        0x00, 0x00, 0x61, 0xbb, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let d = Datagram::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(d.src_port(), 34848);
        assert_eq!(d.dst_port(), 4789);
        assert_eq!(d.len(), 74);
        assert!(!d.is_empty());
        assert_eq!(d.payload(), &DATAGRAM[8..]);
        assert!(d.verify_checksum(SRC, DST));
        assert!(!d.verify_checksum(DST, Ipv4Addr::new(192, 168, 100, 3)));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 74];
        let mut d = Datagram::new_unchecked(&mut buf[..]);
        d.set_src_port(34848);
        d.set_dst_port(4789);
        d.set_len(74);
        d.payload_mut().copy_from_slice(&DATAGRAM[8..]);
        d.fill_checksum(SRC, DST);
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn zero_checksum_and_lengths() {
        let mut buf = DATAGRAM;
        let mut d = Datagram::new_unchecked(&mut buf[..]);
        d.set_checksum(0);
        assert!(d.verify_checksum(SRC, DST));
        assert_eq!(Datagram::new_checked(&DATAGRAM[..7]).unwrap_err(), Error::Truncated);
        assert_eq!(Datagram::new_checked(&DATAGRAM[..73]).unwrap_err(), Error::Truncated);
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(Datagram::new_checked(&short[..]).unwrap_err(), Error::Malformed);
        short[5] = 8;
        let d = Datagram::new_checked(&short[..]).unwrap();
        assert!(d.is_empty() && d.payload().is_empty());
    }

    #[test]
    fn checksum_of_a_datagram_whose_partial_sum_fills_32_bits() {
        // Ports 0xfff7 -> 0xffff, length 8: the 32-bit partial sum of the datagram is 0xffffffff,
        // so adding the pseudo-header to it unfolded overflowed (found by fuzz target `headers`).
        let mut buf = [0xff, 0xf7, 0xff, 0xff, 0x00, 0x08, 0x00, 0x00];
        assert_eq!(checksum::sum(&buf), 0xffff_ffff);
        let mut d = Datagram::new_unchecked(&mut buf[..]);
        d.fill_checksum(SRC, DST);
        assert!(d.verify_checksum(SRC, DST));
        // RFC 768: the checksum of pseudo-header + datagram, bytes summed one word at a time.
        let mut whole = Vec::new();
        whole.extend_from_slice(&SRC.octets());
        whole.extend_from_slice(&DST.octets());
        whole.extend_from_slice(&[0, ipv4::protocol::UDP, 0, 8, 0xff, 0xf7, 0xff, 0xff, 0, 8, 0, 0]);
        let expected = match checksum::checksum(&whole) {
            0 => 0xffff,
            c => c,
        };
        assert_eq!(d.checksum(), expected);
        d.set_checksum(expected ^ 1);
        assert!(!d.verify_checksum(SRC, DST));
    }
}
