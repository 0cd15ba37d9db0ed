//! VXLAN headers (RFC 7348 §5).
//!
//! Eight bytes: flags (the I flag, 0x08, says the VNI is valid), 24 reserved bits, the 24-bit
//! VXLAN Network Identifier, 8 reserved bits. Receivers must ignore the reserved bits (RFC 7348
//! §5), so only the I flag is ever checked. [`Header::new_checked`] validates the buffer length
//! once; after it succeeds no accessor panics. With [`Header::new_unchecked`] accessors panic on
//! a buffer shorter than [`HEADER_LEN`].

use crate::Error;

/// Field offsets of the VXLAN header (RFC 7348 §5, "VXLAN Header").
pub mod field {
    use crate::{Field, Rest};

    /// Flags: R R R R I R R R.
    pub const FLAGS: usize = 0;
    /// Reserved, 24 bits.
    pub const RESERVED1: Field = 1..4;
    /// VXLAN Network Identifier, 24 bits.
    pub const VNI: Field = 4..7;
    /// Reserved, 8 bits.
    pub const RESERVED2: usize = 7;
    /// The inner Ethernet frame.
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// IANA-assigned UDP destination port for VXLAN (RFC 7348 §5).
pub const PORT: u16 = 4789;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The I flag: the VNI is valid (RFC 7348 §5).
pub const FLAG_I: u8 = 0x08;

const _: () = assert!(HEADER_LEN == 8);

/// A read/write view of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer, checking that it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Header<T>, Error> {
        let header = Header::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
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

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True if the I flag is set (reserved bits ignored).
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([0, d[4], d[5], d[6]])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the VNI; only the low 24 bits of `vni` are used.
    pub fn set_vni(&mut self, vni: u32) {
        let b = (vni & MAX_VNI).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Zeroes both reserved fields (senders set them to zero, RFC 7348 §5).
    pub fn clear_reserved(&mut self) {
        let d = self.buffer.as_mut();
        d[field::RESERVED1].fill(0);
        d[field::RESERVED2] = 0;
    }

    /// The inner Ethernet frame, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // UDP payload of a VXLAN packet sent by the Linux vxlan driver (`id 4242 dstport 4789`):
    // header, then the start of the inner frame 02:00:00:00:aa:01 -> 02:00:00:00:aa:02, IPv4.
    static BYTES: [u8; 22] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x92, 0x00, 0x02, 0x00, 0x00, 0x00, 0xaa, 0x02, 0x02, 0x00, 0x00, 0x00,
        0xaa, 0x01, 0x08, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let h = Header::new_checked(&BYTES[..]).unwrap();
        assert_eq!(h.flags(), FLAG_I);
        assert!(h.vni_valid());
        assert_eq!(h.vni(), 4242);
        assert_eq!(h.payload(), &BYTES[8..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 22];
        let mut h = Header::new_unchecked(&mut buf[..]);
        h.set_flags(FLAG_I);
        h.clear_reserved();
        h.set_vni(4242);
        h.payload_mut().copy_from_slice(&BYTES[8..]);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn reserved_bits_ignored_and_vni_masked() {
        let mut buf = [0xffu8; 8];
        buf[0] = 0xff;
        let mut h = Header::new_unchecked(&mut buf[..]);
        assert!(h.vni_valid());
        assert_eq!(h.vni(), MAX_VNI);
        h.set_flags(0xf7);
        assert!(!h.vni_valid());
        h.set_vni(0x0100_0001);
        assert_eq!(h.vni(), 1);
        assert_eq!(buf[7], 0xff);
        assert_eq!(Header::new_checked(&BYTES[..7]).unwrap_err(), Error::Truncated);
    }
}
