//! The migration channel: `Message::decode` against its documented layout, `encode`/`decode`
//! round trips, the replay window against a model, the forwarded-frame header and key files.
//!
//! Input: `[mode, rest...]`, by `mode % 5`:
//! 0. `rest` is a datagram as received;
//! 1. `rest` (cut or zero-filled to 88 bytes) is the body of a message signed with the test key,
//!    as a key holder sending anything could;
//! 2. `rest` gives the fields of a `Message` to encode;
//! 3. `rest` is a sequence of 3-byte steps `[how, hi, lo]` giving sequence numbers for a
//!    `ReplayWindow`;
//! 4. `rest` is the text of a key file; its first 4 bytes also a forwarded frame's wire id.
//!
//! Invariants: `decode` returns exactly `Length`, `Header`, `BadMac`, `Field` or the message
//! as the layout in `wire/src/migration.rs` says, checking the MAC before any field; an
//! accepted message re-encodes to the same bytes (unused bytes zeroed) and
//! any single bit flipped in it is refused; a valid message survives `encode` then `decode`;
//! the replay window says `New` exactly for a number above every number taken so far (or the
//! first), `Replayed` for one taken within the last 64, and `OutOfOrder` otherwise; a key
//! file is taken exactly when it holds an even number (at least 32) of hex digits.

#![no_main]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use vw_wire::migration::{
    self, kind, write_forward_header, Freshness, Key, Message, MessageError, ReplayWindow, CONTROL_LEN, TAG_LEN,
};
use vw_wire::table::MAX_ENDPOINT_NAME_LEN;
use vw_wire::{ConnectorId, Encap, MacAddr};

#[path = "leak_check.rs"]
mod leak_check;

/// The test key of `wire/src/migration.rs`: bytes 0 to 31.
const KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};
const BODY: usize = CONTROL_LEN - TAG_LEN;

fn key() -> &'static Key {
    static K: OnceLock<Key> = OnceLock::new();
    K.get_or_init(|| Key::new(&KEY).expect("test key"))
}

/// HMAC-SHA256 of `body` with the test key, computed here independently of `wire`.
fn tag(body: &[u8]) -> [u8; TAG_LEN] {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&KEY).expect("HMAC key");
    m.update(body);
    m.finalize().into_bytes().into()
}

fuzz_target!(|input: &[u8]| {
    key();
    leak_check::without_leaks(|| one_input(input));
});

fn one_input(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    match mode % 5 {
        0 => datagram(rest),
        1 => {
            let mut b = [0u8; CONTROL_LEN];
            let n = rest.len().min(BODY);
            b[..n].copy_from_slice(&rest[..n]);
            let t = tag(&b[..BODY]);
            b[BODY..].copy_from_slice(&t);
            datagram(&b);
        }
        2 => message(rest),
        3 => replay_window(rest),
        _ => key_file(rest),
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// 1 to 32 characters of `[A-Za-z0-9_.-]`.
fn valid_name(name: &str) -> bool {
    (1..=MAX_ENDPOINT_NAME_LEN).contains(&name.len())
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && !name.starts_with('.')
}

/// What `decode` must return for `b`, from the documented layout.
fn expected(b: &[u8]) -> Result<Message, MessageError> {
    if b.len() != CONTROL_LEN {
        return Err(MessageError::Length);
    }
    if b[0] != migration::VERSION || !matches!(b[1], kind::LOCATE | kind::ACK | kind::MOVED | kind::FLUSHED) {
        return Err(MessageError::Header);
    }
    if tag(&b[..BODY]) != b[BODY..] {
        return Err(MessageError::BadMac);
    }
    let encap = match b[22] {
        0 => Encap::Vwire,
        1 => Encap::Vxlan,
        3 => Encap::Secure,
        4 => Encap::SecureVxlan,
        _ => return Err(MessageError::Field),
    };
    let n = usize::from(b[23]);
    let end = b.get(24..24 + n).filter(|_| n <= MAX_ENDPOINT_NAME_LEN).ok_or(MessageError::Field)?;
    let end = std::str::from_utf8(end).ok().filter(|s| valid_name(s)).ok_or(MessageError::Field)?;
    let ip = |at: usize| Ipv4Addr::from(be32(b, at));
    Ok(Message {
        kind: b[1],
        wire: ConnectorId(be32(b, 4)),
        from: ip(8),
        location: ip(12),
        location_mac: MacAddr::from_bytes(&b[16..22]),
        encap,
        end: end.to_owned(),
        seq: be64(b, 56),
        sent_ns: be64(b, 64),
        when_ns: be64(b, 72),
        moves: be32(b, 80),
    })
}

fn datagram(b: &[u8]) {
    let got = Message::decode(b, key());
    assert_eq!(got, expected(b));
    let Ok(m) = got else {
        return;
    };
    assert!(valid_name(&m.end) && m.encap != Encap::Forward);
    let again = m.encode(key());
    // The same bytes, but for the unused ones (reserved header bytes 2-3, the name's unused
    // end, bytes 84-87 after the move count), which go out as zeros.
    let mut canonical = [0u8; CONTROL_LEN];
    canonical.copy_from_slice(b);
    canonical[2..4].fill(0);
    canonical[24 + m.end.len()..56].fill(0);
    canonical[84..BODY].fill(0);
    let t = tag(&canonical[..BODY]);
    canonical[BODY..].copy_from_slice(&t);
    assert_eq!(again, canonical, "re-encoding changed the message");
    assert_eq!(Message::decode(&again, key()), Ok(m.clone()));
    // Any single bit flipped is refused.
    let bit = usize::from(b[24 + m.end.len().min(31)]) * 7 % (CONTROL_LEN * 8);
    let mut flipped = again;
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(Message::decode(&flipped, key()).is_err(), "bit {bit} flipped and still accepted");
}

fn message(f: &[u8]) {
    let mut raw = [0u8; 48];
    let n = f.len().min(raw.len());
    raw[..n].copy_from_slice(&f[..n]);
    let name_bytes = &f[n.min(f.len())..];
    let m = Message {
        kind: raw[0] % 6,
        wire: ConnectorId(be32(&raw, 1)),
        from: Ipv4Addr::from(be32(&raw, 5)),
        location: Ipv4Addr::from(be32(&raw, 9)),
        location_mac: MacAddr::from_bytes(&raw[13..19]),
        encap: [Encap::Vwire, Encap::Vxlan, Encap::Forward, Encap::Secure, Encap::SecureVxlan]
            [usize::from(raw[19] % 5)],
        end: String::from_utf8_lossy(name_bytes).into_owned(),
        seq: be64(&raw, 20),
        sent_ns: be64(&raw, 28),
        when_ns: be64(&raw, 36),
        moves: be32(&raw, 44),
    };
    let b = m.encode(key());
    assert_eq!(&b[..8], &[migration::VERSION, m.kind, 0, 0, raw[1], raw[2], raw[3], raw[4]]);
    assert_eq!(b[BODY..], tag(&b[..BODY]));
    let got = Message::decode(&b, key());
    assert_eq!(got, expected(&b));
    if !matches!(m.kind, kind::LOCATE | kind::ACK | kind::MOVED | kind::FLUSHED) {
        assert_eq!(got, Err(MessageError::Header));
    } else if m.encap == Encap::Forward {
        assert_eq!(got, Err(MessageError::Field));
    } else if valid_name(&m.end) {
        assert_eq!(got, Ok(m));
    } else if let Ok(cut) = got {
        // A name longer than 32 bytes is cut; what is left may be a valid name.
        assert!(m.end.len() > MAX_ENDPOINT_NAME_LEN && m.end.as_bytes().starts_with(cut.end.as_bytes()));
        assert_eq!(Message { end: cut.end.clone(), ..m }, cut);
    }
}

fn replay_window(steps: &[u8]) {
    let mut w = ReplayWindow::default();
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    for step in steps.chunks_exact(3) {
        let v = u64::from(u16::from_be_bytes([step[1], step[2]]));
        let top = taken.last().copied().unwrap_or(0);
        let seq = match step[0] % 4 {
            0 => top.saturating_add(v),
            1 => top.saturating_sub(v),
            2 => v,
            _ => u64::MAX - v,
        };
        let want = match taken.last() {
            None => Freshness::New,
            Some(&max) if seq > max => Freshness::New,
            Some(&max) if max - seq < 64 && taken.contains(&seq) => Freshness::Replayed,
            Some(_) => Freshness::OutOfOrder,
        };
        assert_eq!(w.check(seq), want, "seq {seq} after {taken:?}");
        if want == Freshness::New {
            taken.insert(seq);
        }
    }
}

fn key_file(text: &[u8]) {
    if let Some(id) = text.first_chunk::<4>() {
        let wire = ConnectorId(u32::from_be_bytes(*id));
        let mut h = [0xffu8; migration::HEADER_LEN];
        write_forward_header(&mut h, wire);
        assert_eq!(h, [migration::VERSION, kind::FORWARD, 0, 0, id[0], id[1], id[2], id[3]]);
        assert_eq!(Encap::Forward.header_len(), migration::HEADER_LEN);
    }
    assert_eq!(Key::new(text).is_ok(), text.len() >= migration::MIN_KEY_LEN);
    let Ok(s) = std::str::from_utf8(text) else {
        return;
    };
    let t = s.trim();
    let valid = !t.is_empty()
        && t.len() % 2 == 0
        && t.bytes().all(|c| c.is_ascii_hexdigit())
        && t.len() / 2 >= migration::MIN_KEY_LEN;
    let key = Key::from_hex(s);
    assert_eq!(key.is_ok(), valid, "{s:?}: {key:?}");
    if let Ok(k) = key {
        // The key is the bytes the digits spell: a message it signs verifies with them.
        let bytes: Vec<u8> = (0..t.len()).step_by(2).map(|i| u8::from_str_radix(&t[i..i + 2], 16).unwrap()).collect();
        let m = Message {
            kind: kind::ACK,
            wire: ConnectorId(7),
            from: Ipv4Addr::new(10, 0, 0, 1),
            location: Ipv4Addr::UNSPECIFIED,
            location_mac: MacAddr::ZERO,
            encap: Encap::Vxlan,
            end: "vm1".into(),
            seq: 1,
            sent_ns: 2,
            when_ns: 3,
            moves: 4,
        };
        let b = m.encode(&k);
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&bytes).expect("HMAC key");
        mac.update(&b[..BODY]);
        assert_eq!(b[BODY..], mac.finalize().into_bytes()[..]);
        assert_eq!(Message::decode(&b, &k), Ok(m));
    }
}
