//! Security associations: one direction of one wire, its key, its SPI and
//! its sequence numbers.

use crate::replay::{Refusal, ReplayWindow, Window};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The UDP port of ESP in UDP (RFC 3948), source and destination.
pub const PORT: u16 = 4500;
/// SPI, low 32 bits of the sequence number, and the 8-byte IV.
pub const HEADER_LEN: usize = 16;
/// The AES-GCM ICV (tag): 16 bytes (RFC 4106 §6: the 16-byte ICV MUST be supported).
pub const ICV_LEN: usize = 16;
/// Padding (at most 3: the ciphertext ends on a 4-byte boundary), pad
/// length, next header, ICV.
pub const MAX_TRAILER_LEN: usize = 3 + 2 + ICV_LEN;
/// The NAT keepalive of RFC 3948 §2.3: one 0xFF byte in a UDP datagram
/// to port 4500.
pub const NAT_KEEPALIVE: u8 = 0xff;

/// Key material as `ip xfrm` takes it for `rfc4106(gcm(aes))`: the AES
/// key followed by the 4-byte salt (RFC 4106 §8.1), 20 or 36 bytes.
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Keymat {
    bytes: [u8; 36],
    len: usize,
}

impl core::fmt::Debug for Keymat {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Keymat(AES-{}-GCM, redacted)", (self.len - 4) * 8)
    }
}

/// Why key material was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Not 20 or 36 bytes.
    #[error("AES-GCM key material is a 16- or 32-byte key and a 4-byte salt (20 or 36 bytes, 40 or 72 hex digits); got {0} bytes")]
    Length(usize),
    /// Not hexadecimal.
    #[error("key material must be hexadecimal (optionally with a leading 0x), as `ip xfrm` takes it")]
    NotHex,
    /// The operating system's random generator failed.
    #[error("the system's random generator failed")]
    Random,
}

impl Drop for Keymat {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

impl Keymat {
    /// From raw bytes: a 16- or 32-byte key, then a 4-byte salt.
    pub fn new(bytes: &[u8]) -> Result<Keymat, KeyError> {
        if bytes.len() != 20 && bytes.len() != 36 {
            return Err(KeyError::Length(bytes.len()));
        }
        let mut k = Keymat { bytes: [0; 36], len: bytes.len() };
        k.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(k)
    }

    /// From hexadecimal text, `0x` optional, surrounding white space ignored
    /// (the form of `ip xfrm state ... aead 'rfc4106(gcm(aes))' 0x... 128`).
    pub fn from_hex(text: &str) -> Result<Keymat, KeyError> {
        let t = text.trim();
        let t = t.strip_prefix("0x").unwrap_or(t);
        if !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex);
        }
        let mut raw = [0u8; 36];
        let n = t.len() / 2;
        if n != 20 && n != 36 {
            return Err(KeyError::Length(n));
        }
        for (i, out) in raw.iter_mut().enumerate().take(n) {
            *out = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| KeyError::NotHex)?;
        }
        Keymat::new(&raw[..n])
    }

    /// The AES key's length in bits: 128 or 256.
    pub fn bits(&self) -> usize {
        (self.len - 4) * 8
    }

    /// Fresh key material from the operating system's generator: a
    /// `bits`-bit key (128 or 256) and a salt.
    pub fn generate(bits: usize) -> Result<Keymat, KeyError> {
        use ring::rand::SecureRandom;
        let n = match bits {
            128 => 20,
            256 => 36,
            _ => return Err(KeyError::Length(bits / 8 + 4)),
        };
        let mut raw = [0u8; 36];
        ring::rand::SystemRandom::new().fill(&mut raw[..n]).map_err(|_| KeyError::Random)?;
        let k = Keymat::new(&raw[..n]);
        raw.fill(0);
        k
    }

    /// A name for this key that does not reveal it: SHA-256 over a label
    /// and the material, 128 bits in hex. The fabric keeps the names of
    /// the keys it used so that none is used twice.
    pub fn fingerprint(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"VirtualWire secure wire key v1\0");
        ctx.update(&self.bytes[..self.len]);
        ctx.finish().as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The next generation of this SA, for a wire that rekeys itself when
    /// its SA lifetime is reached: key material of the same length and a
    /// new SPI (256 or more), both from HKDF-SHA256 (RFC 5869) with this
    /// material as input key and the current SPI as context. Both ends of
    /// a direction derive the same SA; the old material cannot be found
    /// from the new (HKDF is one-way), the new can from the old.
    pub fn next_generation(&self, spi: u32) -> (Keymat, u32) {
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let mut out = [0u8; 40];
        let n = self.len + 4;
        let info = [b"VirtualWire SA generation v1\0".as_slice(), &spi.to_be_bytes()];
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"VirtualWire").extract(&self.bytes[..self.len]);
        // 24 or 40 bytes: far below HKDF-SHA256's 8160-byte limit.
        if let Ok(okm) = prk.expand(&info, Len(n)) {
            let _ = okm.fill(&mut out[..n]);
        }
        let mut next = Keymat { bytes: [0; 36], len: self.len };
        next.bytes[..self.len].copy_from_slice(&out[..self.len]);
        let raw = u32::from_be_bytes([out[self.len], out[self.len + 1], out[self.len + 2], out[self.len + 3]]);
        out.fill(0);
        // RFC 4303 §2.1: 0 is invalid and 1-255 reserved; never the same SPI.
        let mut spi_next = if raw < 256 { raw + 256 } else { raw };
        if spi_next == spi {
            spi_next = spi_next.wrapping_add(1).max(256);
        }
        (next, spi_next)
    }

    /// The material as hexadecimal with a leading `0x`, as `ip xfrm` and
    /// [`Keymat::from_hex`] take it. For key files only: never log it.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(2 + 2 * self.len);
        s.push_str("0x");
        for b in &self.bytes[..self.len] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn split(&self) -> (LessSafeKey, [u8; 4]) {
        let alg = if self.len == 20 { &AES_128_GCM } else { &AES_256_GCM };
        let key = &self.bytes[..self.len - 4];
        // The length was checked when the Keymat was made.
        let key = LessSafeKey::new(UnboundKey::new(alg, key).expect("16- or 32-byte AES key"));
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&self.bytes[self.len - 4..self.len]);
        (key, salt)
    }
}

/// The nonce: salt || IV (RFC 4106 §4).
fn nonce(salt: [u8; 4], iv: [u8; 8]) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&salt);
    n[4..].copy_from_slice(&iv);
    Nonce::assume_unique_for_key(n)
}

/// The AAD with an extended sequence number: SPI || seq high || seq low
/// (RFC 4106 §5).
fn aad(spi: u32, seq: u64) -> Aad<[u8; 12]> {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&spi.to_be_bytes());
    a[4..].copy_from_slice(&seq.to_be_bytes());
    Aad::from(a)
}

/// Why a payload was not sealed.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The SA sent as many packets as its lifetime allows: it needs a rekey.
    #[error("the SA's packet limit is reached")]
    Expired,
    /// The buffer does not have the header and trailer room the layout needs.
    #[error("no room for the ESP header or trailer")]
    NoRoom,
}

/// The key of an outbound SA: seals a payload in place with the sequence
/// number it is given. Read-only, so several senders may share it; each
/// sequence number must be used once ([`Outbound`] counts them for one
/// sender, [`SharedOutbound`] hands out ranges to several).
pub struct SealKey {
    spi: u32,
    key: LessSafeKey,
    salt: [u8; 4],
}

impl core::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SealKey").field("spi", &format_args!("{:#010x}", self.spi)).finish_non_exhaustive()
    }
}

impl SealKey {
    /// The key of SPI `spi` (not 0: RFC 4303 §2.1) from material `k`.
    pub fn new(spi: u32, k: &Keymat) -> SealKey {
        let (key, salt) = k.split();
        SealKey { spi, key, salt }
    }

    /// Its SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Seals, in place, the `len` payload bytes at `buf[HEADER_LEN..]`
    /// whose protocol is `next_header` (17 for a UDP tunnel datagram), as
    /// packet `seq` (never 0, never used before with this key): writes the
    /// ESP header in `buf[..HEADER_LEN]`, pads, encrypts and appends the
    /// ICV. `buf` must have room for the trailer after the payload
    /// ([`MAX_TRAILER_LEN`] at most). Returns the ESP packet's length (from
    /// the SPI to the end of the ICV).
    #[inline]
    pub fn seal(&self, seq: u64, buf: &mut [u8], len: usize, next_header: u8) -> Result<usize, SealError> {
        let pad = (4 - (len + 2) % 4) % 4;
        let body = len + pad + 2;
        let total = HEADER_LEN + body + ICV_LEN;
        if buf.len() < total {
            return Err(SealError::NoRoom);
        }
        let (hdr, rest) = buf.split_at_mut(HEADER_LEN);
        hdr[..4].copy_from_slice(&self.spi.to_be_bytes());
        hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        hdr[8..16].copy_from_slice(&seq.to_be_bytes());
        // Padding 1, 2, 3 (RFC 4303 §2.4), its length, the next header.
        for (i, b) in rest[len..len + pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        rest[len + pad] = pad as u8;
        rest[len + pad + 1] = next_header;
        let (text, tail) = rest.split_at_mut(body);
        // The IV is the 64-bit sequence number: unique for the key (RFC 4106 §3.1).
        let n = nonce(self.salt, seq.to_be_bytes());
        let tag = self.key.seal_in_place_separate_tag(n, aad(self.spi, seq), text).map_err(|_| SealError::NoRoom)?;
        tail[..ICV_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }
}

/// The outbound SA of a wire with one sender: seals payloads for the peer.
pub struct Outbound {
    key: SealKey,
    /// The last sequence number used (the first sent is 1).
    seq: u64,
    /// Sequence numbers above this are not used (a rekey must come first).
    limit: u64,
}

impl core::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Outbound")
            .field("spi", &format_args!("{:#010x}", self.key.spi))
            .field("seq", &self.seq)
            .finish()
    }
}

impl Outbound {
    /// An SA with SPI `spi` (not 0: RFC 4303 §2.1; 1-255 are reserved by
    /// IANA) and key material `k`, sending from sequence number 1.
    pub fn new(spi: u32, k: &Keymat) -> Outbound {
        Outbound { key: SealKey::new(spi, k), seq: 0, limit: u64::MAX }
    }

    /// Sets the last sequence number this SA may use (a packet lifetime).
    pub fn with_limit(mut self, packets: u64) -> Outbound {
        self.limit = packets;
        self
    }

    /// Its SPI.
    pub fn spi(&self) -> u32 {
        self.key.spi
    }

    /// The last sequence number used.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Seals with the next sequence number: see [`SealKey::seal`].
    pub fn seal(&mut self, buf: &mut [u8], len: usize, next_header: u8) -> Result<usize, SealError> {
        if HEADER_LEN + len + (4 - (len + 2) % 4) % 4 + 2 + ICV_LEN > buf.len() {
            return Err(SealError::NoRoom);
        }
        if self.seq >= self.limit {
            return Err(SealError::Expired);
        }
        self.seq += 1;
        self.key.seal(self.seq, buf, len, next_header)
    }
}

/// The outbound SA of a wire that several senders (workers) use at once:
/// the key is shared read-only; each sender reserves a range of sequence
/// numbers for a burst with one atomic add ([`SharedOutbound::reserve`]),
/// then seals each packet of it with its own number, without further
/// synchronisation. The receiver's window (2048) absorbs the reordering
/// between senders.
pub struct SharedOutbound {
    key: SealKey,
    /// The next sequence number to hand out.
    next: AtomicU64,
    /// Sequence numbers above this are not used (until it is raised).
    limit: AtomicU64,
}

impl core::fmt::Debug for SharedOutbound {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedOutbound")
            .field("spi", &format_args!("{:#010x}", self.key.spi))
            .field("sent", &self.sent())
            .finish()
    }
}

impl SharedOutbound {
    /// An SA with SPI `spi` and key material `k`, sending from sequence
    /// number `first` (1 for a new SA), using none above `limit`.
    pub fn new(spi: u32, k: &Keymat, first: u64, limit: u64) -> SharedOutbound {
        SharedOutbound { key: SealKey::new(spi, k), next: AtomicU64::new(first.max(1)), limit: AtomicU64::new(limit) }
    }

    /// The key, to seal with the numbers [`SharedOutbound::reserve`] gave.
    #[inline(always)]
    pub fn key(&self) -> &SealKey {
        &self.key
    }

    /// The last sequence number handed out (0: none).
    pub fn sent(&self) -> u64 {
        self.next.load(Relaxed).saturating_sub(1).min(self.limit())
    }

    /// The highest sequence number that may be handed out now.
    pub fn limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// Lets numbers up to `limit` be handed out (never lowers it).
    pub fn raise_limit(&self, limit: u64) {
        if limit > self.limit() {
            self.limit.store(limit, Relaxed);
        }
    }

    /// Reserves `n` consecutive sequence numbers: returns the first and
    /// how many of them may be used (fewer than `n`, or 0, at the limit).
    #[inline]
    pub fn reserve(&self, n: u64) -> (u64, u64) {
        let first = self.next.fetch_add(n, Relaxed);
        let limit = self.limit();
        if first > limit {
            return (first, 0);
        }
        (first, n.min(limit - first + 1))
    }
}

/// Why a received ESP packet was dropped.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Too short for a header, a trailer and an ICV, or its padding is wrong.
    #[error("malformed ESP packet")]
    Malformed,
    /// Its sequence number was received before.
    #[error("replayed")]
    Replayed,
    /// Its sequence number is below the anti-replay window.
    #[error("below the replay window")]
    TooOld,
    /// The ICV does not match: altered, or not from the peer.
    #[error("authentication failed")]
    AuthFailed,
    /// Its SPI is not this SA's.
    #[error("unknown SPI")]
    UnknownSpi,
}

/// A packet [`Inbound::open`] verified and decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Where the payload is in the buffer given to `open`.
    pub payload: core::ops::Range<usize>,
    /// Its protocol (17: UDP).
    pub next_header: u8,
    /// Its 64-bit sequence number.
    pub seq: u64,
}

/// The key of an inbound SA: opens what the peer sealed, against a replay
/// window the caller keeps ([`Inbound`] for one receiver, a
/// [`SharedWindow`](crate::SharedWindow) for a receiver that moves between
/// threads).
pub struct OpenKey {
    spi: u32,
    key: LessSafeKey,
    salt: [u8; 4],
}

impl core::fmt::Debug for OpenKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenKey").field("spi", &format_args!("{:#010x}", self.spi)).finish_non_exhaustive()
    }
}

impl OpenKey {
    /// The key of SPI `spi` from material `k`.
    pub fn new(spi: u32, k: &Keymat) -> OpenKey {
        let (key, salt) = k.split();
        OpenKey { spi, key, salt }
    }

    /// Its SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Opens, in place, the ESP packet `buf` (from the SPI to the end of
    /// the ICV; the caller found this SA by the SPI in it): the replay
    /// window is checked, then the ICV, then the window moves; only then
    /// is the payload's range returned. A packet that fails leaves `buf`
    /// unspecified (it is dropped) and the window as it was.
    #[inline]
    pub fn open(&self, buf: &mut [u8], window: &mut impl Window) -> Result<Opened, OpenError> {
        if buf.len() < HEADER_LEN + 2 + ICV_LEN {
            return Err(OpenError::Malformed);
        }
        if buf[..4] != self.spi.to_be_bytes() {
            return Err(OpenError::UnknownSpi);
        }
        let low = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let seq = window.infer(low);
        window.check(seq).map_err(|r| match r {
            Refusal::Replayed => OpenError::Replayed,
            Refusal::TooOld => OpenError::TooOld,
        })?;
        // The IV is what the sender put there (it need not be its sequence
        // number: Linux uses its own).
        let mut iv = [0u8; 8];
        iv.copy_from_slice(&buf[8..16]);
        let body_len = {
            let text = &mut buf[HEADER_LEN..];
            let n = nonce(self.salt, iv);
            self.key.open_in_place(n, aad(self.spi, seq), text).map_err(|_| OpenError::AuthFailed)?.len()
        };
        window.accept(seq);
        let end = HEADER_LEN + body_len;
        let (pad, next_header) = (usize::from(buf[end - 2]), buf[end - 1]);
        if pad + 2 > body_len || buf[end - 2 - pad..end - 2].iter().enumerate().any(|(i, b)| *b != i as u8 + 1) {
            return Err(OpenError::Malformed);
        }
        Ok(Opened { payload: HEADER_LEN..end - 2 - pad, next_header, seq })
    }
}

/// The inbound SA of a wire with one receiver: opens what the peer sealed.
pub struct Inbound {
    key: OpenKey,
    window: ReplayWindow,
}

impl core::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inbound")
            .field("spi", &format_args!("{:#010x}", self.key.spi))
            .field("top", &self.window.top())
            .finish()
    }
}

impl Inbound {
    /// An SA with SPI `spi` and key material `k`, nothing received yet.
    pub fn new(spi: u32, k: &Keymat) -> Inbound {
        Inbound { key: OpenKey::new(spi, k), window: ReplayWindow::new() }
    }

    /// Its SPI.
    pub fn spi(&self) -> u32 {
        self.key.spi
    }

    /// The highest sequence number received.
    pub fn top(&self) -> u64 {
        self.window.top()
    }

    /// Opens, in place: see [`OpenKey::open`].
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened, OpenError> {
        self.key.open(buf, &mut self.window)
    }
}

/// What a UDP datagram to port 4500 carries (RFC 3948 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// ESP, with this SPI.
    Esp(u32),
    /// A NAT keepalive (a single 0xFF byte).
    Keepalive,
    /// IKE (the non-ESP marker: four zero bytes), not for the data path.
    Ike,
    /// Too short to be any of these.
    Malformed,
}

/// Classifies the payload of a UDP datagram to port 4500.
pub fn classify(payload: &[u8]) -> Datagram {
    match payload {
        [NAT_KEEPALIVE] => Datagram::Keepalive,
        [0, 0, 0, 0, ..] => Datagram::Ike,
        p if p.len() >= HEADER_LEN + 2 + ICV_LEN => Datagram::Esp(u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
        _ => Datagram::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(bits: usize) -> Keymat {
        let n = bits / 8 + 4;
        Keymat::new(&(0..n as u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect::<Vec<_>>()).unwrap()
    }

    fn sealed(out: &mut Outbound, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + payload.len() + MAX_TRAILER_LEN];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = out.seal(&mut buf, payload.len(), 17).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_next_generation_is_the_same_at_both_ends_and_new_each_time() {
        for bits in [128, 256] {
            let k = keys(bits);
            let (a, spi_a) = k.next_generation(0x1001);
            // The far end holds the same material (its inbound SA): it
            // derives the same SA.
            let (b, spi_b) = keys(bits).next_generation(0x1001);
            assert_eq!((a.to_hex(), spi_a), (b.to_hex(), spi_b));
            assert_eq!(a.bits(), bits);
            assert_ne!(a, k);
            assert!(spi_a >= 256 && spi_a != 0x1001);
            // The next one differs again; another SPI gives another SA.
            let (c, spi_c) = a.next_generation(spi_a);
            assert!(c != a && c != k && spi_c != spi_a);
            assert_ne!(k.next_generation(0x1002).0, a);
            // What one generation seals, the next does not open.
            let mut out = Outbound::new(spi_a, &a);
            let mut pkt = sealed(&mut out, b"generation");
            assert!(Inbound::new(spi_a, &a).open(&mut pkt.clone()).is_ok());
            assert_eq!(Inbound::new(spi_a, &c).open(&mut pkt).map(|_| ()), Err(OpenError::AuthFailed));
        }
    }

    #[test]
    fn what_is_sealed_opens_once_with_both_key_sizes_and_every_padding() {
        for bits in [128, 256] {
            let k = keys(bits);
            let (mut out, mut inb) = (Outbound::new(0x1001, &k), Inbound::new(0x1001, &k));
            for len in [0usize, 1, 2, 3, 4, 5, 60, 1500] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut p = sealed(&mut out, &payload);
                assert!(p.len().is_multiple_of(4), "aligned");
                assert_eq!(&p[..4], &0x1001u32.to_be_bytes());
                assert_eq!(classify(&p), Datagram::Esp(0x1001));
                if len >= 16 {
                    assert!(!p.windows(16).any(|w| w == &payload[..16]), "the payload is not in clear");
                }
                let mut again = p.clone();
                let o = inb.open(&mut p).unwrap();
                assert_eq!(&p[o.payload.clone()], &payload[..], "{bits} {len}");
                assert_eq!(o.next_header, 17);
                assert_eq!(inb.open(&mut again), Err(OpenError::Replayed));
            }
        }
    }

    #[test]
    fn any_flipped_bit_fails_authentication_and_does_not_move_the_window() {
        let k = keys(128);
        let (mut out, mut inb) = (Outbound::new(7, &k), Inbound::new(7, &k));
        let p = sealed(&mut out, b"a frame of a secure wire");
        for bit in 0..p.len() * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            let r = inb.open(&mut q);
            let e = r.unwrap_err();
            match bit {
                0..32 => assert_eq!(e, OpenError::UnknownSpi, "bit {bit}"),
                // The low sequence number: 0 (never sent) or another, unsealed one.
                32..64 => assert!(matches!(e, OpenError::Replayed | OpenError::AuthFailed), "bit {bit}: {e:?}"),
                _ => assert_eq!(e, OpenError::AuthFailed, "bit {bit}"),
            }
        }
        let mut q = p.clone();
        assert!(inb.open(&mut q).is_ok(), "the original still opens");
        // Another key, or another SPI (in the AAD), fails too.
        let mut q = p.clone();
        assert_eq!(Inbound::new(7, &keys(256)).open(&mut q), Err(OpenError::AuthFailed));
        let mut q = p.clone();
        q[..4].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(Inbound::new(8, &k).open(&mut q), Err(OpenError::AuthFailed));
    }

    #[test]
    fn sequence_numbers_cross_32_bits_and_the_limit_stops_the_sender() {
        let k = keys(128);
        let (mut out, mut inb) = (Outbound::new(9, &k), Inbound::new(9, &k));
        out.seq = u64::from(u32::MAX) - 2;
        let mut first = sealed(&mut out, b"x");
        inb.open(&mut first).unwrap();
        for _ in 0..5 {
            let mut p = sealed(&mut out, b"y");
            let o = inb.open(&mut p).unwrap();
            assert_eq!(o.seq, out.seq());
        }
        assert!(out.seq() > u64::from(u32::MAX));
        let mut out = Outbound::new(9, &k).with_limit(2);
        sealed(&mut out, b"1");
        sealed(&mut out, b"2");
        let mut buf = [0u8; 64];
        assert_eq!(out.seal(&mut buf, 1, 17), Err(SealError::Expired));
        assert_eq!(out.seal(&mut [0u8; 20], 1, 17), Err(SealError::NoRoom));
    }

    #[test]
    fn keys_are_read_as_ip_xfrm_takes_them_and_never_shown() {
        let hex = "0x0123456789abcdef0123456789abcdef01020304";
        let k = Keymat::from_hex(hex).unwrap();
        assert_eq!(k.bits(), 128);
        assert_eq!(Keymat::from_hex(&"ab".repeat(36)).unwrap().bits(), 256);
        assert_eq!(Keymat::from_hex("0x0123"), Err(KeyError::Length(2)));
        assert_eq!(Keymat::from_hex("xyz0"), Err(KeyError::NotHex));
        for shown in [format!("{k:?}"), format!("{:?}", Outbound::new(5, &k)), format!("{:?}", Inbound::new(5, &k))] {
            assert!(!shown.contains("0123") && !shown.contains("01020304"), "{shown}");
        }
    }

    #[test]
    fn datagrams_to_port_4500_are_told_apart() {
        assert_eq!(classify(&[0xff]), Datagram::Keepalive);
        assert_eq!(classify(&[0, 0, 0, 0, 1, 2, 3]), Datagram::Ike);
        assert_eq!(classify(&[1, 2, 3]), Datagram::Malformed);
        assert_eq!(classify(&[0u8; 3]), Datagram::Malformed);
    }

    #[test]
    fn shared_senders_reserve_disjoint_numbers_up_to_the_limit() {
        let k = keys(128);
        let out = SharedOutbound::new(0x3003, &k, 1, 100);
        assert_eq!(out.reserve(32), (1, 32));
        assert_eq!(out.reserve(32), (33, 32));
        assert_eq!(out.reserve(32), (65, 32));
        assert_eq!(out.reserve(32), (97, 4), "only 97..=100 are left");
        assert_eq!(out.reserve(1).1, 0);
        assert_eq!(out.sent(), 100);
        out.raise_limit(50);
        assert_eq!(out.limit(), 100, "never lowered");
        out.raise_limit(200);
        assert_eq!(out.reserve(10).1, 10, "raised: more may go");
        // Packets sealed with reserved numbers open in any order.
        let mut inb = Inbound::new(0x3003, &k);
        for seq in [5u64, 3, 4, 90] {
            let mut buf = vec![0u8; HEADER_LEN + 10 + MAX_TRAILER_LEN];
            let n = out.key().seal(seq, &mut buf, 10, 17).unwrap();
            buf.truncate(n);
            assert_eq!(inb.open(&mut buf).unwrap().seq, seq);
        }
    }

    #[test]
    fn generated_keys_are_fresh_and_read_back() {
        let (a, b) = (Keymat::generate(128).unwrap(), Keymat::generate(256).unwrap());
        assert_eq!((a.bits(), b.bits()), (128, 256));
        assert_ne!(a, Keymat::generate(128).unwrap());
        assert_eq!(Keymat::from_hex(&a.to_hex()).unwrap(), a);
        assert_eq!(a.to_hex().len(), 2 + 40);
        assert!(Keymat::generate(192).is_err());
        let fp = a.fingerprint();
        assert_eq!((fp.len(), fp.clone()), (32, Keymat::from_hex(&a.to_hex()).unwrap().fingerprint()));
        assert_ne!(fp, b.fingerprint());
        assert!(!a.to_hex().contains(&fp[..8]), "not the key itself");
    }
}
