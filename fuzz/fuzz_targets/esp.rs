//! The secure wire's ESP layer (`esp/`): what a datagram to port 4500 is, opening what
//! arrives, sealing and opening round trips, and the anti-replay window against a model.
//!
//! Input: `[mode, rest...]`, by `mode % 3`:
//! 0. `rest` is the payload of a UDP datagram to port 4500, opened with the test SA if it
//!    carries its SPI;
//! 1. `rest` gives a payload (`[len_hi, len_lo, next_header, flip_hi, flip_lo, bytes...]`) to
//!    seal, open, and open again with one bit flipped;
//! 2. `rest` is a sequence of 5-byte steps `[how, seq_low (4, big-endian)]` for a
//!    `ReplayWindow`.
//!
//! Invariants: `classify` says `Keepalive` exactly for `[0xff]`, `Ike` for four leading zero
//! bytes, `Esp` for anything else of at least 34 bytes; `open` never panics, and what it
//! returns lies within the packet; a sealed payload opens to itself, once, and with any bit
//! flipped not at all; the window accepts a sequence number exactly when the model (the set
//! of numbers taken and the highest) says so, and its inferred number keeps the low 32 bits.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use vw_esp::{
    classify, Datagram, Inbound, Keymat, OpenError, Outbound, Refusal, ReplayWindow, SharedWindow, HEADER_LEN, ICV_LEN,
    MAX_TRAILER_LEN, WINDOW,
};

#[path = "leak_check.rs"]
mod leak_check;

const SPI: u32 = 0x1001;

fn keymat() -> Keymat {
    Keymat::new(&[7u8; 20]).expect("20 bytes")
}

fuzz_target!(|input: &[u8]| {
    leak_check::without_leaks(|| one_input(input));
});

fn one_input(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    match mode % 3 {
        0 => datagram(rest),
        1 => round_trip(rest),
        _ => window(rest),
    }
}

fn datagram(p: &[u8]) {
    let c = classify(p);
    match p {
        [0xff] => assert_eq!(c, Datagram::Keepalive),
        [0, 0, 0, 0, ..] => assert_eq!(c, Datagram::Ike),
        _ if p.len() >= HEADER_LEN + 2 + ICV_LEN => {
            assert_eq!(c, Datagram::Esp(u32::from_be_bytes([p[0], p[1], p[2], p[3]])))
        }
        _ => assert_eq!(c, Datagram::Malformed),
    }
    let mut buf = [0u8; 2048];
    let n = p.len().min(buf.len());
    buf[..n].copy_from_slice(&p[..n]);
    let mut sa = Inbound::new(SPI, &keymat());
    match sa.open(&mut buf[..n]) {
        Ok(o) => {
            assert!(o.payload.start == HEADER_LEN && o.payload.end + 2 + ICV_LEN <= n);
            assert_eq!(sa.top(), o.seq);
        }
        Err(OpenError::UnknownSpi) => assert!(n >= HEADER_LEN + 2 + ICV_LEN && p[..4] != SPI.to_be_bytes()),
        Err(_) => {}
    }
}

fn round_trip(rest: &[u8]) {
    let [hi, lo, next, fhi, flo, data @ ..] = rest else { return };
    let len = usize::from(u16::from_be_bytes([*hi, *lo])) % 1600;
    let mut buf = vec![0u8; HEADER_LEN + len + MAX_TRAILER_LEN];
    for (i, b) in buf[HEADER_LEN..HEADER_LEN + len].iter_mut().enumerate() {
        *b = data.get(i).copied().unwrap_or(i as u8);
    }
    let plain = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    let mut out = Outbound::new(SPI, &keymat());
    let n = out.seal(&mut buf, len, *next).expect("room was left");
    assert!(n.is_multiple_of(4) && n <= buf.len());
    let sealed = buf[..n].to_vec();
    let mut sa = Inbound::new(SPI, &keymat());
    let mut once = sealed.clone();
    let o = sa.open(&mut once).expect("what was sealed opens");
    assert_eq!((&once[o.payload.clone()], o.next_header, o.seq), (&plain[..], *next, 1));
    assert_eq!(sa.open(&mut sealed.clone()), Err(OpenError::Replayed));
    let bit = usize::from(u16::from_be_bytes([*fhi, *flo])) % (n * 8);
    let mut flipped = sealed.clone();
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(Inbound::new(SPI, &keymat()).open(&mut flipped).is_err(), "bit {bit} flipped");
}

fn window(steps: &[u8]) {
    let mut w = ReplayWindow::new();
    // The workers' form decides the same, step by step.
    let shared = SharedWindow::new();
    let (mut taken, mut top) = (BTreeSet::new(), 0u64);
    for s in steps.chunks_exact(5) {
        let low = u32::from_be_bytes([s[1], s[2], s[3], s[4]]);
        let seq = w.infer(low);
        assert_eq!(seq as u32, low, "the inferred number keeps the low bits");
        let want = if seq == 0 || taken.contains(&seq) {
            Err(Refusal::Replayed)
        } else if seq > top {
            Ok(())
        } else if top - seq >= WINDOW {
            Err(Refusal::TooOld)
        } else {
            Ok(())
        };
        // Numbers that fell below the window are forgotten by the window, refused by age.
        let want = match want {
            Err(Refusal::Replayed) if seq != 0 && top - seq >= WINDOW => Err(Refusal::TooOld),
            w => w,
        };
        assert_eq!(w.check(seq), want, "seq {seq} top {top}");
        assert_eq!((shared.infer(low), shared.check(seq)), (seq, want), "shared: seq {seq} top {top}");
        if want.is_ok() && s[0] & 1 == 0 {
            w.accept(seq);
            shared.accept(seq);
            taken.insert(seq);
            top = top.max(seq);
            taken.retain(|t| top - t < WINDOW);
        }
        assert_eq!((w.top(), shared.top()), (top, top));
    }
}
