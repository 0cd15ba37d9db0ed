//! The VirtualWire connector header.
//!
//! Four bytes in front of the inner Ethernet frame, carried in UDP to [`DEFAULT_PORT`]: the
//! connector (wire) ID as a 32-bit unsigned integer in network byte order, and nothing else.
//! [`Header::new_checked`] validates the buffer length once; after it succeeds no accessor
//! panics. With [`Header::new_unchecked`] accessors panic on a buffer shorter than [`HEADER_LEN`].

use crate::table::ConnectorId;
use crate::Error;

/// Field offsets of the connector header.
pub mod field {
    use crate::{Field, Rest};

    /// Connector ID, big-endian.
    pub const CONNECTOR: Field = 0..4;
    /// The inner Ethernet frame.
    pub const PAYLOAD: Rest = 4..;
}

/// Length of the connector header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// UDP destination port VirtualWire listens on by default.
pub const DEFAULT_PORT: u16 = 4795;

const _: () = assert!(HEADER_LEN == 4);

/// A read/write view of the connector header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer, checking that it holds the 4-byte header.
    pub fn new_checked(buffer: T) -> Result<Header<T>, Error> {
        let header = Header::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Checks that the buffer holds the 4-byte header.
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

    /// Connector ID.
    pub fn connector(&self) -> ConnectorId {
        let d = self.buffer.as_ref();
        ConnectorId(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the connector ID.
    pub fn set_connector(&mut self, id: ConnectorId) {
        self.buffer.as_mut()[field::CONNECTOR].copy_from_slice(&id.0.to_be_bytes());
    }

    /// The inner Ethernet frame, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Connector 7 carrying the start of a broadcast ARP frame.
    static BYTES: [u8; 18] =
        [0x00, 0x00, 0x00, 0x07, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x06];

    #[test]
    fn deconstruct() {
        let h = Header::new_checked(&BYTES[..]).unwrap();
        assert_eq!(h.connector(), ConnectorId(7));
        assert_eq!(h.payload(), &BYTES[4..]);
        let big = [0xde, 0xad, 0xbe, 0xef];
        assert_eq!(Header::new_checked(&big[..]).unwrap().connector(), ConnectorId(0xdead_beef));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 18];
        let mut h = Header::new_unchecked(&mut buf[..]);
        h.set_connector(ConnectorId(7));
        h.payload_mut().copy_from_slice(&BYTES[4..]);
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn truncated() {
        assert_eq!(Header::new_checked(&BYTES[..3]).unwrap_err(), Error::Truncated);
    }
}
