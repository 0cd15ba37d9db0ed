//! IEEE 802.1Q / 802.1ad VLAN tags.
//!
//! A tag is the 4 bytes that follow the outer EtherType (the TPID, 0x8100 or 0x88a8): the
//! Tag Control Information (PCP 3 bits, DEI 1 bit, VID 12 bits; IEEE 802.1Q-2018 §9.6) and the
//! EtherType of what follows. [`Tag::new_checked`] validates the buffer length once; after it
//! succeeds no accessor panics. With [`Tag::new_unchecked`] accessors panic on a buffer shorter
//! than [`HEADER_LEN`].

use crate::{be16, put_be16, Error};

/// Field offsets of a VLAN tag, relative to the end of the TPID.
pub mod field {
    use crate::{Field, Rest};

    /// Tag Control Information: PCP, DEI, VID.
    pub const TCI: Field = 0..2;
    /// EtherType of the encapsulated payload.
    pub const ETHERTYPE: Field = 2..4;
    /// Payload.
    pub const PAYLOAD: Rest = 4..;
}

/// Length of a VLAN tag after the TPID.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// Largest valid VLAN ID (4095 is reserved).
pub const MAX_VID: u16 = 4094;

const _: () = assert!(HEADER_LEN == 4);

/// A read/write view of a VLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Tag<T> {
        Tag { buffer }
    }

    /// Wraps a buffer, checking that it holds the whole tag.
    pub fn new_checked(buffer: T) -> Result<Tag<T>, Error> {
        let tag = Tag::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    /// Checks that the buffer holds the whole tag.
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

    /// Tag Control Information, all 16 bits.
    pub fn tci(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TCI.start)
    }

    /// Priority Code Point (3 bits).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop Eligible Indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier (12 bits).
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// EtherType of the encapsulated payload.
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Everything after the tag.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tag<T> {
    /// Sets the Tag Control Information, all 16 bits.
    pub fn set_tci(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::TCI.start, value);
    }

    /// Sets the Priority Code Point (masked to 3 bits).
    pub fn set_pcp(&mut self, value: u8) {
        let tci = (self.tci() & 0x1fff) | (u16::from(value & 0x07) << 13);
        self.set_tci(tci);
    }

    /// Sets the Drop Eligible Indicator.
    pub fn set_dei(&mut self, value: bool) {
        let tci = (self.tci() & !0x1000) | if value { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    /// Sets the VLAN identifier (masked to 12 bits).
    pub fn set_vid(&mut self, value: u16) {
        let tci = (self.tci() & 0xf000) | (value & 0x0fff);
        self.set_tci(tci);
    }

    /// Sets the EtherType of the encapsulated payload.
    pub fn set_ethertype(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::ETHERTYPE.start, value);
    }

    /// Everything after the tag, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethernet::{self, ethertype, Frame};

    // The broadcast ARP request of the `ethernet` tests (captured from Linux), re-addressed to
    // 172.16.100.0/24 and carried in an 802.1Q tag with VID 100, PCP 5, DEI 0.
    static TAGGED: [u8; 46] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x81, 0x00, 0xa0, 0x64, //
        0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, //
        0xac, 0x10, 0x64, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xac, 0x10, 0x64, 0x02,
    ];

    #[test]
    fn deconstruct() {
        let frame = Frame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(frame.ethertype(), ethertype::VLAN);
        let tag = Tag::new_checked(frame.payload()).unwrap();
        assert_eq!(tag.tci(), 0xa064);
        assert_eq!(tag.pcp(), 5);
        assert!(!tag.dei());
        assert_eq!(tag.vid(), 100);
        assert_eq!(tag.ethertype(), ethertype::ARP);
        assert_eq!(tag.payload(), &TAGGED[ethernet::HEADER_LEN + HEADER_LEN..]);
    }

    #[test]
    fn construct() {
        let mut buf = TAGGED;
        buf[14..18].fill(0);
        let mut tag = Tag::new_unchecked(&mut buf[14..]);
        tag.set_vid(100);
        tag.set_pcp(5);
        tag.set_dei(true);
        assert!(tag.dei());
        tag.set_dei(false);
        tag.set_ethertype(ethertype::ARP);
        assert_eq!(buf, TAGGED);
    }

    #[test]
    fn masking() {
        let mut buf = [0u8; 4];
        let mut tag = Tag::new_unchecked(&mut buf[..]);
        tag.set_vid(0xffff);
        tag.set_pcp(0xff);
        assert_eq!((tag.vid(), tag.pcp(), tag.dei()), (0x0fff, 7, false));
        assert_eq!(Tag::new_checked(&buf[..3]).unwrap_err(), Error::Truncated);
    }
}
