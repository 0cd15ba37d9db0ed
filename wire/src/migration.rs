//! The fabric-to-fabric migration channel: location updates and forwarded frames.
//!
//! When an endpoint moves to another host, the fabrics involved talk over UDP on the
//! underlay, to their migration port ([`DEFAULT_PORT`], 4796). Every datagram starts with the
//! same 8-byte header; `docs/migration.md` shows the exchange.
//!
//! ```text
//! 0       1       2               4                               8
//! +-------+-------+---------------+-------------------------------+
//! |version| type  |   reserved    |     connector ID (wire id)    |
//! +-------+-------+---------------+-------------------------------+
//! ```
//!
//! * type 1, **forwarded frame**: an inner Ethernet frame follows (a source host passing on a
//!   frame that arrived for an endpoint that has left). Not authenticated, like every data
//!   frame; accepted only for a wire that has just arrived at the receiver.
//! * types 2-4, **LOCATE**, **ACK**, **MOVED**: a fixed 112-byte body follows, the last 32
//!   bytes of which are an HMAC-SHA256 (RFC 2104, FIPS 180-4) over everything before it, keyed
//!   with the key the operator gave every fabric. [`Message::decode`] checks it in constant
//!   time before it looks at any field.
//!
//! Pure data, no I/O: the fabric decides what a message means.

use std::fmt;
use std::net::Ipv4Addr;

use hmac::{KeyInit, Mac};

use crate::encap::Encap;
use crate::ethernet::MacAddr;
use crate::table::{validate_endpoint_name, ConnectorId, MAX_ENDPOINT_NAME_LEN};

/// UDP destination port of the migration channel by default.
pub const DEFAULT_PORT: u16 = 4796;
/// Version carried in the first byte.
pub const VERSION: u8 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 8;
/// Length of a whole control message (header, body and MAC).
pub const CONTROL_LEN: usize = 120;
/// Length of the MAC at the end of a control message.
pub const TAG_LEN: usize = 32;
/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Message types (the second byte).
pub mod kind {
    /// A forwarded frame.
    pub const FORWARD: u8 = 1;
    /// "Wire W's end E is now at my VTEP": sent by a fabric that connects W to a remote peer.
    pub const LOCATE: u8 = 2;
    /// "Your LOCATE for W is taken": the peer's answer.
    pub const ACK: u8 = 3;
    /// "Your end E of W has moved to L; pass on what still arrives for it": sent by the peer
    /// to the host the end left.
    pub const MOVED: u8 = 4;
    /// "Every frame for E I held since its VM stopped here has been passed on to you": sent by
    /// the host an end left to its new host, after the held frames; the new host then delivers
    /// the frames the peer sent it directly, which it held meanwhile.
    pub const FLUSHED: u8 = 5;
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A migration key: every fabric that takes part in moves has the same one.
#[derive(Clone)]
pub struct Key(HmacSha256);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from raw bytes; at least [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Key, String> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!("the migration key has {} bytes; at least {MIN_KEY_LEN} are needed", bytes.len()));
        }
        HmacSha256::new_from_slice(bytes).map(Key).map_err(|e| e.to_string())
    }

    /// A key from the text of a key file: hexadecimal digits, surrounding white space ignored
    /// (`openssl rand -hex 32 > key`).
    pub fn from_hex(text: &str) -> Result<Key, String> {
        let t = text.trim();
        if t.is_empty() || !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a key file holds an even number of hexadecimal digits (openssl rand -hex 32)".into());
        }
        let bytes: Vec<u8> =
            (0..t.len()).step_by(2).map(|i| u8::from_str_radix(&t[i..i + 2], 16).unwrap_or(0)).collect();
        Key::new(&bytes)
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.0.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.0.clone();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }
}

/// A LOCATE, ACK or MOVED message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// [`kind::LOCATE`], [`kind::ACK`], [`kind::MOVED`] or [`kind::FLUSHED`].
    pub kind: u8,
    /// The wire.
    pub wire: ConnectorId,
    /// The sender's VTEP (must equal the outer IPv4 source).
    pub from: Ipv4Addr,
    /// LOCATE: the end's new location (the sender); ACK: where the end was before (unspecified
    /// if nowhere else); MOVED: where the end is now.
    pub location: Ipv4Addr,
    /// LOCATE: the sender's uplink MAC, so the peer need not wait for ARP; else zero.
    pub location_mac: MacAddr,
    /// The wire's tunnel format at the new location.
    pub encap: Encap,
    /// Name of the end that moved.
    pub end: String,
    /// Sender's message counter: larger in every message it sends.
    pub seq: u64,
    /// Sender's clock when sending, nanoseconds since the Unix epoch.
    pub sent_ns: u64,
    /// When the end arrived at `location` (LOCATE, MOVED) or at the LOCATE's sender (ACK),
    /// nanoseconds since the Unix epoch: orders moves.
    pub when_ns: u64,
    /// ACK: how many moves of this wire the peer has seen; else 0.
    pub moves: u32,
}

/// Why a datagram on the migration port is not a valid control message.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// Shorter or longer than a control message.
    #[error("not {CONTROL_LEN} bytes long")]
    Length,
    /// Unknown version or message type.
    #[error("unknown version or message type")]
    Header,
    /// The MAC does not match: not sent by a holder of the key, or altered.
    #[error("bad MAC")]
    BadMac,
    /// Authenticated, but a field is invalid (encap, end name).
    #[error("invalid field")]
    Field,
}

const FROM: usize = 8;
const LOCATION: usize = 12;
const LOCATION_MAC: usize = 16;
const ENCAP: usize = 22;
const END_LEN: usize = 23;
const END: usize = 24;
const SEQ: usize = 56;
const SENT: usize = 64;
const WHEN: usize = 72;
const MOVES: usize = 80;
const TAG: usize = 88;

const _: () = assert!(END + MAX_ENDPOINT_NAME_LEN == SEQ && TAG + TAG_LEN == CONTROL_LEN);

fn encap_code(e: Encap) -> u8 {
    match e {
        Encap::Vwire => 0,
        Encap::Vxlan => 1,
        Encap::Forward => 2,
        Encap::Secure => 3,
        Encap::SecureVxlan => 4,
    }
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Message {
    /// The datagram: header, body and MAC. An end name longer than 32 bytes is cut.
    pub fn encode(&self, key: &Key) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0] = VERSION;
        b[1] = self.kind;
        b[4..8].copy_from_slice(&self.wire.0.to_be_bytes());
        b[FROM..FROM + 4].copy_from_slice(&self.from.octets());
        b[LOCATION..LOCATION + 4].copy_from_slice(&self.location.octets());
        b[LOCATION_MAC..LOCATION_MAC + 6].copy_from_slice(&self.location_mac.0);
        b[ENCAP] = encap_code(self.encap);
        let name = &self.end.as_bytes()[..self.end.len().min(MAX_ENDPOINT_NAME_LEN)];
        b[END_LEN] = name.len() as u8;
        b[END..END + name.len()].copy_from_slice(name);
        b[SEQ..SEQ + 8].copy_from_slice(&self.seq.to_be_bytes());
        b[SENT..SENT + 8].copy_from_slice(&self.sent_ns.to_be_bytes());
        b[WHEN..WHEN + 8].copy_from_slice(&self.when_ns.to_be_bytes());
        b[MOVES..MOVES + 4].copy_from_slice(&self.moves.to_be_bytes());
        let tag = key.tag(&b[..TAG]);
        b[TAG..].copy_from_slice(&tag);
        b
    }

    /// Checks and reads a control message (the whole UDP payload). The MAC is verified before
    /// any field is interpreted. Never panics.
    pub fn decode(payload: &[u8], key: &Key) -> Result<Message, MessageError> {
        let Some(b) = payload.first_chunk::<CONTROL_LEN>() else {
            return Err(MessageError::Length);
        };
        if payload.len() != CONTROL_LEN {
            return Err(MessageError::Length);
        }
        if b[0] != VERSION || !matches!(b[1], kind::LOCATE | kind::ACK | kind::MOVED | kind::FLUSHED) {
            return Err(MessageError::Header);
        }
        if !key.verify(&b[..TAG], &b[TAG..]) {
            return Err(MessageError::BadMac);
        }
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let encap = match b[ENCAP] {
            0 => Encap::Vwire,
            1 => Encap::Vxlan,
            3 => Encap::Secure,
            4 => Encap::SecureVxlan,
            _ => return Err(MessageError::Field),
        };
        let n = usize::from(b[END_LEN]);
        if n > MAX_ENDPOINT_NAME_LEN {
            return Err(MessageError::Field);
        }
        let end = std::str::from_utf8(&b[END..END + n]).map_err(|_| MessageError::Field)?;
        if validate_endpoint_name(end).is_err() {
            return Err(MessageError::Field);
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[LOCATION_MAC..LOCATION_MAC + 6]);
        Ok(Message {
            kind: b[1],
            wire: ConnectorId(be_u32(b, 4)),
            from: ip(FROM),
            location: ip(LOCATION),
            location_mac: MacAddr(mac),
            encap,
            end: end.to_owned(),
            seq: be_u64(b, SEQ),
            sent_ns: be_u64(b, SENT),
            when_ns: be_u64(b, WHEN),
            moves: be_u32(b, MOVES),
        })
    }

    /// Lower-case name of the message type.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            kind::LOCATE => "locate",
            kind::ACK => "ack",
            kind::MOVED => "moved",
            kind::FLUSHED => "flushed",
            _ => "unknown",
        }
    }
}

/// Writes the 8-byte header of a forwarded frame into `hdr`.
pub fn write_forward_header(hdr: &mut [u8; HEADER_LEN], wire: ConnectorId) {
    *hdr = [VERSION, kind::FORWARD, 0, 0, 0, 0, 0, 0];
    hdr[4..8].copy_from_slice(&wire.0.to_be_bytes());
}

/// Replay protection for one sender: the highest sequence number taken and a 64-wide window
/// of those just below it (the IPsec anti-replay window of RFC 4303 §3.4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    top: u64,
    seen: u64,
}

/// What a [`ReplayWindow`] says about a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Never seen: take it.
    New,
    /// Seen before: a replay.
    Replayed,
    /// Older than the window, or older than a message already taken and not seen: out of order.
    OutOfOrder,
}

impl ReplayWindow {
    /// Checks `seq` and, if new, records it. Messages arriving out of order are refused (an
    /// older location update must never undo a newer one), so only `New` changes the window.
    pub fn check(&mut self, seq: u64) -> Freshness {
        if self.top == 0 && self.seen == 0 {
            self.top = seq;
            self.seen = 1;
            return Freshness::New;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 1 } else { (self.seen << shift) | 1 };
            self.top = seq;
            return Freshness::New;
        }
        let back = self.top - seq;
        if back < 64 && self.seen & (1u64 << back) != 0 {
            Freshness::Replayed
        } else {
            Freshness::OutOfOrder
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> Key {
        Key::from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").unwrap()
    }

    fn msg() -> Message {
        Message {
            kind: kind::LOCATE,
            wire: ConnectorId(0xdead_beef),
            from: Ipv4Addr::new(10, 0, 0, 3),
            location: Ipv4Addr::new(10, 0, 0, 3),
            location_mac: MacAddr::new(2, 0, 0, 0, 0, 3),
            encap: Encap::Vxlan,
            end: "vm-b.eth0".into(),
            seq: 1_700_000_000_000_000_001,
            sent_ns: 1_700_000_000_123_456_789,
            when_ns: 1_700_000_000_100_000_000,
            moves: 3,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let b = msg().encode(&key());
        assert_eq!(&b[..8], &[1, 2, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&b[8..12], &[10, 0, 0, 3]);
        assert_eq!(b[22], 1);
        assert_eq!(b[23], 9);
        assert_eq!(&b[24..33], b"vm-b.eth0");
        assert_eq!(Message::decode(&b, &key()), Ok(msg()));
        // RFC 4231-style check that the tag is HMAC-SHA256 over bytes 0..88.
        let mut m = HmacSha256::new_from_slice(&(0u8..32).collect::<Vec<_>>()).unwrap();
        m.update(&b[..88]);
        assert_eq!(&b[88..], &m.finalize().into_bytes()[..]);
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let k = HmacSha256::new_from_slice(b"Jefe").unwrap();
        let mut m = k.clone();
        m.update(b"what do ya want for nothing?");
        let hex: String = m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn forged_altered_and_malformed_messages_are_refused() {
        let good = msg().encode(&key());
        let other = Key::new(&[7u8; 32]).unwrap();
        assert_eq!(Message::decode(&good, &other), Err(MessageError::BadMac));
        for i in [4, 9, 12, 23, 30, 60, 70, 79, 83, 100, 119] {
            let mut b = good;
            b[i] ^= 0x40;
            assert_eq!(Message::decode(&b, &key()), Err(MessageError::BadMac), "byte {i}");
        }
        assert_eq!(Message::decode(&good[..119], &key()), Err(MessageError::Length));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Message::decode(&long, &key()), Err(MessageError::Length));
        let mut b = good;
        b[0] = 2;
        assert_eq!(Message::decode(&b, &key()), Err(MessageError::Header));
        b = good;
        b[1] = kind::FORWARD;
        assert_eq!(Message::decode(&b, &key()), Err(MessageError::Header));
        // Authenticated but invalid fields.
        for (at, v) in [(22usize, 9u8), (23, 33), (24, b' ')] {
            let mut m = good;
            m[at] = v;
            let tag = key().tag(&m[..88]);
            m[88..].copy_from_slice(&tag);
            assert_eq!(Message::decode(&m, &key()), Err(MessageError::Field), "byte {at}");
        }
    }

    #[test]
    fn keys() {
        assert!(Key::new(&[1u8; 15]).unwrap_err().contains("at least 16"));
        assert!(Key::from_hex("abc").is_err());
        assert!(Key::from_hex("zz00112233445566778899aabbccddeeff").is_err());
        assert!(Key::from_hex(" 00112233445566778899aabbccddeeff\n").is_ok());
        assert_eq!(format!("{:?}", key()), "Key(..)");
    }

    #[test]
    fn forward_header() {
        let mut h = [0u8; HEADER_LEN];
        write_forward_header(&mut h, ConnectorId(0x01020304));
        assert_eq!(h, [1, 1, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(100), Freshness::New);
        assert_eq!(w.check(100), Freshness::Replayed);
        assert_eq!(w.check(99), Freshness::OutOfOrder);
        assert_eq!(w.check(105), Freshness::New);
        assert_eq!(w.check(100), Freshness::Replayed);
        assert_eq!(w.check(103), Freshness::OutOfOrder);
        assert_eq!(w.check(105), Freshness::Replayed);
        assert_eq!(w.check(1000), Freshness::New);
        assert_eq!(w.check(105), Freshness::OutOfOrder);
        assert_eq!(w.check(u64::MAX), Freshness::New);
        assert_eq!(w.check(u64::MAX), Freshness::Replayed);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = Message::decode(&bytes, &key());
        }

        #[test]
        fn any_single_bit_flip_is_caught(at in 0usize..CONTROL_LEN, bit in 0u8..8) {
            let mut b = msg().encode(&key());
            b[at] ^= 1 << bit;
            prop_assert!(Message::decode(&b, &key()).is_err());
        }
    }
}
