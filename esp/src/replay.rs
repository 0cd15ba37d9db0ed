//! The anti-replay window of RFC 4303 §3.4.3 with extended sequence
//! numbers (Appendix A2): which 64-bit sequence numbers were already
//! received, among the last [`WINDOW`] below the highest.

/// Packets the window spans: a sequence number more than this far below
/// the highest received is refused as too old.
pub const WINDOW: u64 = 2048;

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
        let (th, tl) = ((self.top >> 32) as u32, self.top as u32);
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

    /// Whether `seq` may be accepted: above the highest, or within the
    /// window and not received yet. Checks only; see [`ReplayWindow::accept`].
    pub fn check(&self, seq: u64) -> Result<(), Refusal> {
        if seq == 0 {
            return Err(Refusal::Replayed);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= WINDOW {
            return Err(Refusal::TooOld);
        }
        if self.bit(seq) {
            return Err(Refusal::Replayed);
        }
        Ok(())
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
        let (w, b) = Self::at(seq);
        self.bits[w] |= 1 << b;
    }

    fn at(seq: u64) -> (usize, u32) {
        let i = seq % WINDOW;
        ((i / 64) as usize, (i % 64) as u32)
    }

    fn bit(&self, seq: u64) -> bool {
        let (w, b) = Self::at(seq);
        self.bits[w] & (1 << b) != 0
    }

    fn clear(&mut self, seq: u64) {
        let (w, b) = Self::at(seq);
        self.bits[w] &= !(1 << b);
    }
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
}
