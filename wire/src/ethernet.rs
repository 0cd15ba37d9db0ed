//! Ethernet II frames (IEEE 802.3 clause 3.2, the DIX "Ethernet II" type field).
//!
//! [`Frame::new_checked`] validates the buffer length once; after it succeeds no accessor of
//! the returned view panics. [`Frame::new_unchecked`] skips the check: accessors then panic if
//! the buffer is shorter than [`HEADER_LEN`].

use core::fmt;
use core::str::FromStr;

use crate::{be16, put_be16, Error};

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// The all-zero address `00:00:00:00:00:00`.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Builds an address from its six octets.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> MacAddr {
        MacAddr([a, b, c, d, e, f])
    }

    /// Builds an address from the first six bytes of `data`; panics if `data` is shorter.
    pub fn from_bytes(data: &[u8]) -> MacAddr {
        let mut octets = [0; 6];
        octets.copy_from_slice(&data[..6]);
        MacAddr(octets)
    }

    /// The six octets, in transmission order.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The octets as a byte slice.
    pub const fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True for `ff:ff:ff:ff:ff:ff`.
    pub const fn is_broadcast(&self) -> bool {
        let o = self.0;
        o[0] == 0xff && o[1] == 0xff && o[2] == 0xff && o[3] == 0xff && o[4] == 0xff && o[5] == 0xff
    }

    /// True if the I/G bit (least significant bit of the first octet) is set; broadcast included.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True if the I/G bit is clear (an individual address).
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// True if the U/L bit (second least significant bit of the first octet) is set.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3], o[4], o[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }
}

/// Error returned when parsing a [`MacAddr`] from text fails.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six pairs of hex digits separated by ':' (e.g. 02:00:00:00:00:01)")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<MacAddr, ParseMacError> {
        let err = || ParseMacError(s.to_string());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in octets.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(octets))
    }
}

/// EtherType values used by VirtualWire (IEEE 802 numbers registry).
pub mod ethertype {
    /// Internet Protocol version 4.
    pub const IPV4: u16 = 0x0800;
    /// Address Resolution Protocol.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service VLAN tag (Q-in-Q).
    pub const QINQ: u16 = 0x88a8;
    /// Internet Protocol version 6.
    pub const IPV6: u16 = 0x86dd;
    /// Link Layer Discovery Protocol.
    pub const LLDP: u16 = 0x88cc;
}

/// Field offsets of the Ethernet II header.
pub mod field {
    use crate::{Field, Rest};

    /// Destination MAC address.
    pub const DESTINATION: Field = 0..6;
    /// Source MAC address.
    pub const SOURCE: Field = 6..12;
    /// EtherType (or the TPID of a VLAN tag).
    pub const ETHERTYPE: Field = 12..14;
    /// Payload.
    pub const PAYLOAD: Rest = 14..;
}

/// Length of the Ethernet II header (no FCS, no VLAN tag).
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// Minimum Ethernet frame length without the FCS; shorter frames are padded to this.
pub const MIN_FRAME_LEN: usize = 60;

const _: () = assert!(HEADER_LEN == 14);
const _: () = assert!(field::ETHERTYPE.end == HEADER_LEN);

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer, checking that it holds the whole header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Error> {
        let frame = Frame::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds the whole header.
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

    /// Length of the header.
    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    /// Destination MAC address.
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// Source MAC address.
    pub fn src(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source MAC address.
    pub fn set_src(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, value: u16) {
        put_be16(self.buffer.as_mut(), field::ETHERTYPE.start, value);
    }

    /// Everything after the header, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Broadcast ARP request captured with tshark on a Linux veth (no padding: captured on the
    // sending host's peer before any NIC pads it).
    static ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x06, 0x00, 0x01, //
        0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0xc0, 0xa8, 0x64, 0x01, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x64, 0x02,
    ];

    #[test]
    fn deconstruct() {
        let frame = Frame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(frame.dst(), MacAddr::BROADCAST);
        assert_eq!(frame.src(), MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x01));
        assert_eq!(frame.ethertype(), ethertype::ARP);
        assert_eq!(frame.payload(), &ARP_FRAME[14..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 42];
        let mut frame = Frame::new_unchecked(&mut buf[..]);
        frame.set_dst(MacAddr::BROADCAST);
        frame.set_src("52:54:00:12:34:01".parse().unwrap());
        frame.set_ethertype(ethertype::ARP);
        frame.payload_mut().copy_from_slice(&ARP_FRAME[14..]);
        assert_eq!(buf, ARP_FRAME);
    }

    #[test]
    fn truncated() {
        assert_eq!(Frame::new_checked(&ARP_FRAME[..13]).unwrap_err(), Error::Truncated);
        assert!(Frame::new_checked(&ARP_FRAME[..14]).unwrap().payload().is_empty());
    }

    #[test]
    fn mac_classes() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!MacAddr::BROADCAST.is_unicast());
        let mcast = MacAddr::new(0x01, 0x00, 0x5e, 0x00, 0x00, 0x01);
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_unicast());
        let ucast = MacAddr::new(0x02, 0, 0, 0, 0, 1);
        assert!(ucast.is_unicast() && !ucast.is_multicast() && ucast.is_local());
    }

    #[test]
    fn mac_text() {
        let mac: MacAddr = "AA:bb:0c:0D:ee:FF".parse().unwrap();
        assert_eq!(mac, MacAddr([0xaa, 0xbb, 0x0c, 0x0d, 0xee, 0xff]));
        assert_eq!(mac.to_string(), "aa:bb:0c:0d:ee:ff");
        assert_eq!(format!("{mac:?}"), "aa:bb:0c:0d:ee:ff");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:f",
            "aa:bb:cc:dd:ee:fff",
            "aa-bb-cc-dd-ee-ff",
            "+a:bb:cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains("six pairs of hex digits"), "{bad}: {err}");
        }
    }
}
