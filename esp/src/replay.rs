//! The anti-replay window of RFC 4303 §3.4.3 with extended sequence
//! numbers (Appendix A2): which 64-bit sequence numbers were already
//! received, among the last [`WINDOW`] below the highest.

/// Packets the window spans: a sequence number more than this far below
/// the highest received is refused as too old.
pub const WINDOW: u64 = 2048;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const WORDS: usize = (WINDOW / 64) as usize;

/// Received sequence numbers, as a bitmap indexed by `seq % WINDOW`.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest sequence number received (0: none yet; 0 is never sent).
    top: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow").field("top", &self.top).finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: nothing received.
    pub const fn new() -> ReplayWindow {
        ReplayWindow { top: 0, bits: [0; WORDS] }
    }

    /// The highest sequence number received.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The 64-bit sequence number a packet whose low 32 bits are `low`
    /// has: the one nearest the window (RFC 4303 Appendix A2.2).
    pub fn infer(&self, low: u32) -> u64 {
        infer(self.top, low)
    }

    /// Whether `seq` may be accepted: above the highest, or within the
    /// window and not received yet. Checks only; see [`ReplayWindow::accept`].
    pub fn check(&self, seq: u64) -> Result<(), Refusal> {
        check(self.top, seq, |s| self.bit(s))
    }

    /// Records `seq` as received (after its ICV was verified): the window
    /// slides up if it is above the highest.
    pub fn accept(&mut self, seq: u64) {
        if seq > self.top {
            let ahead = seq - self.top;
            if ahead >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for s in self.top + 1..seq {
                    self.clear(s);
                }
            }
            self.top = seq;
        }
        let (w, b) = at(seq);
        self.bits[w] |= 1 << b;
    }

    fn bit(&self, seq: u64) -> bool {
        let (w, b) = at(seq);
        self.bits[w] & (1 << b) != 0
    }

    fn clear(&mut self, seq: u64) {
        let (w, b) = at(seq);
        self.bits[w] &= !(1 << b);
    }
}

/// The same window for an SA whose inbound packets one worker at a time
/// opens, read and written through `&self`: relaxed atomic loads and
/// stores, no read-modify-write, no lock. Correct while a single thread
/// accepts at a time (the fabric's workers take an SA's packets from one
/// receive queue: they come from one address and port); a handover
/// between threads must pass through a release/acquire pair (the fabric's
/// snapshot switch). Two threads accepting at once could each take one
/// copy of the same packet, never corrupt memory.
pub struct SharedWindow {
    top: AtomicU64,
    bits: [AtomicU64; WORDS],
}

impl Default for SharedWindow {
    fn default() -> Self {
        SharedWindow::new()
    }
}

impl core::fmt::Debug for SharedWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedWindow").field("top", &self.top()).finish_non_exhaustive()
    }
}

impl SharedWindow {
    /// An empty window.
    pub fn new() -> SharedWindow {
        SharedWindow { top: AtomicU64::new(0), bits: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    /// A window that takes only numbers above `top`, as if every one up to
    /// it had been received (an SA restored after a restart).
    pub fn starting_at(top: u64) -> SharedWindow {
        let fill = if top == 0 { 0 } else { u64::MAX };
        SharedWindow { top: AtomicU64::new(top), bits: std::array::from_fn(|_| AtomicU64::new(fill)) }
    }

    /// The highest sequence number received.
    pub fn top(&self) -> u64 {
        self.top.load(Relaxed)
    }

    /// As [`ReplayWindow::infer`].
    pub fn infer(&self, low: u32) -> u64 {
        infer(self.top(), low)
    }

    /// As [`ReplayWindow::check`].
    pub fn check(&self, seq: u64) -> Result<(), Refusal> {
        check(self.top(), seq, |s| {
            let (w, b) = at(s);
            self.bits[w].load(Relaxed) & (1 << b) != 0
        })
    }

    /// As [`ReplayWindow::accept`], by the one thread that accepts.
    pub fn accept(&self, seq: u64) {
        let top = self.top();
        let set = |s: u64, on: bool| {
            let (w, b) = at(s);
            let v = self.bits[w].load(Relaxed);
            self.bits[w].store(if on { v | 1 << b } else { v & !(1 << b) }, Relaxed);
        };
        if seq > top {
            if seq - top >= WINDOW {
                self.bits.iter().for_each(|w| w.store(0, Relaxed));
            } else {
                (top + 1..seq).for_each(|s| set(s, false));
            }
            self.top.store(seq, Relaxed);
        }
        set(seq, true);
    }
}

/// The window an SA's [`open`](crate::OpenKey::open) checks and moves.
pub trait Window {
    /// The 64-bit sequence number of low bits `low`.
    fn infer(&self, low: u32) -> u64;
    /// Whether `seq` may be accepted.
    fn check(&self, seq: u64) -> Result<(), Refusal>;
    /// Records `seq`, verified.
    fn accept(&mut self, seq: u64);
}

impl Window for ReplayWindow {
    fn infer(&self, low: u32) -> u64 {
        ReplayWindow::infer(self, low)
    }
    fn check(&self, seq: u64) -> Result<(), Refusal> {
        ReplayWindow::check(self, seq)
    }
    fn accept(&mut self, seq: u64) {
        ReplayWindow::accept(self, seq)
    }
}

impl Window for &SharedWindow {
    fn infer(&self, low: u32) -> u64 {
        SharedWindow::infer(self, low)
    }
    fn check(&self, seq: u64) -> Result<(), Refusal> {
        SharedWindow::check(self, seq)
    }
    fn accept(&mut self, seq: u64) {
        SharedWindow::accept(self, seq)
    }
}

fn at(seq: u64) -> (usize, u32) {
    let i = seq % WINDOW;
    ((i / 64) as usize, (i % 64) as u32)
}

fn check(top: u64, seq: u64, received: impl Fn(u64) -> bool) -> Result<(), Refusal> {
    if seq == 0 {
        return Err(Refusal::Replayed);
    }
    if seq > top {
        return Ok(());
    }
    if top - seq >= WINDOW {
        return Err(Refusal::TooOld);
    }
    if received(seq) {
        return Err(Refusal::Replayed);
    }
    Ok(())
}

fn infer(top: u64, low: u32) -> u64 {
    let (th, tl) = ((top >> 32) as u32, top as u32);
    let w = WINDOW as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let high = if tl >= w - 1 {
        // The window lies within one 2^32 subspace.
        if low >= bottom {
            th
        } else {
            th.wrapping_add(1)
        }
    } else if low >= bottom {
        // It spans two: `low` in the upper part of the previous one.
        th.wrapping_sub(1)
    } else {
        th
    };
    // Below sequence number 1 there is nothing (the previous subspace
    // of subspace 0 does not exist).
    if high == u32::MAX && th == 0 {
        return u64::from(low);
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// Why the window refuses a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Received before (or 0, which is never sent).
    Replayed,
    /// Below the window.
    TooOld,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_accepted_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(0), Err(Refusal::Replayed));
        for s in [5u64, 3, 4, 1, 2, 10, 7] {
            assert_eq!(w.check(s), Ok(()), "{s}");
            w.accept(s);
            assert_eq!(w.check(s), Err(Refusal::Replayed), "{s} again");
        }
        assert_eq!(w.check(6), Ok(()));
        assert_eq!(w.check(8), Ok(()));
        assert_eq!(w.top(), 10);
    }

    #[test]
    fn the_window_slides_and_forgets_what_fell_below_it() {
        let mut w = ReplayWindow::new();
        w.accept(1);
        w.accept(WINDOW);
        assert_eq!(w.check(1), Err(Refusal::Replayed), "still inside");
        w.accept(WINDOW + 1);
        assert_eq!(w.check(1), Err(Refusal::TooOld));
        assert_eq!(w.check(2), Ok(()), "inside, never received");
        // A jump of more than a window clears every bit.
        w.accept(10 * WINDOW);
        for s in 9 * WINDOW + 1..10 * WINDOW {
            assert_eq!(w.check(s), Ok(()), "{s}");
        }
        assert_eq!(w.check(9 * WINDOW), Err(Refusal::TooOld));
        // Slots reused after a slide are clear.
        let mut w = ReplayWindow::new();
        for s in 1..=3 * WINDOW {
            assert_eq!(w.check(s), Ok(()), "{s}");
            w.accept(s);
        }
    }

    #[test]
    fn high_bits_are_inferred_across_a_32_bit_boundary() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.infer(1), 1);
        assert_eq!(w.infer(u32::MAX), u64::from(u32::MAX), "no subspace below 0");
        w.accept(u64::from(u32::MAX) - 10);
        assert_eq!(w.infer(u32::MAX - 20), u64::from(u32::MAX) - 20);
        assert_eq!(w.infer(5), (1u64 << 32) | 5, "just past the boundary");
        w.accept((1u64 << 32) | 5);
        assert_eq!(w.infer(u32::MAX - 20), u64::from(u32::MAX) - 20, "late, from below the boundary");
        assert_eq!(w.infer(6), (1u64 << 32) | 6);
        w.accept((1u64 << 32) | 100_000);
        assert_eq!(w.infer(u32::MAX - 20), (1u64 << 32) | u64::from(u32::MAX - 20), "far from the window: ahead");
    }

    #[test]
    fn the_shared_window_decides_as_the_plain_one() {
        // A deterministic walk: forward, back within and below the window,
        // jumps, repeats.
        let (mut plain, shared) = (ReplayWindow::new(), SharedWindow::new());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut top = 0u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = match x % 10 {
                0..=5 => top + 1 + x % 3,
                6 | 7 => top.saturating_sub(x % (WINDOW + 10)),
                8 => top + (x >> 8) % (3 * WINDOW),
                _ => top,
            };
            let low = seq as u32;
            assert_eq!(plain.infer(low), shared.infer(low));
            let verdict = plain.check(seq);
            assert_eq!(verdict, shared.check(seq), "seq {seq} top {top}");
            if verdict.is_ok() {
                plain.accept(seq);
                Window::accept(&mut &shared, seq);
            }
            top = plain.top();
            assert_eq!(top, shared.top());
        }
    }
}
