//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! [`sum`] returns a partial one's complement sum that can be added to other partial sums
//! (RFC 1071 §2(B), associativity) before [`fold`]ing it to 16 bits; [`checksum`] is the value
//! that goes in a header's checksum field. None of these functions panics.

use std::net::Ipv4Addr;

/// One's complement partial sum of `data` as 16-bit big-endian words, an odd last byte padded
/// with a zero byte (RFC 1071 §4.1). The result is congruent to the true sum modulo 0xffff and
/// can be added to other partial sums as long as the total does not overflow `u32`.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // 2^16 ≡ 1 (mod 2^16 - 1), so summing 32-bit big-endian words is equivalent to summing
    // their two 16-bit halves (RFC 1071 §2(C), "parallel summation").
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    // End-around carry from 64 down to 32 bits.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

/// Folds the carries of a partial sum into 16 bits (RFC 1071 §4.1). Not complemented.
#[inline]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The Internet checksum of `data`: the complement of its folded one's complement sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Incrementally updates checksum `csum` after a 16-bit word changed from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')` (RFC 1624 §3, equation 3).
#[inline]
pub const fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold((!csum) as u32 + (!old) as u32 + new as u32)
}

/// Partial sum of the IPv4 pseudo-header used by UDP and TCP checksums (RFC 768, RFC 9293 §3.1).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u32::from(protocol) + u32::from(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward RFC 1071 reference: 16-bit words, fold at the end.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            acc += if i % 2 == 0 { u64::from(*b) << 8 } else { u64::from(*b) };
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_from_linux() {
        // Outer IPv4 header of a VXLAN packet sent by Linux (checksum 0x0047 in place).
        let hdr = [
            0x45, 0x00, 0x00, 0x5e, 0x30, 0xf4, 0x00, 0x00, 0x40, 0x11, 0x00, 0x47, 0xc0, 0xa8, 0x64, 0x01, 0xc0, 0xa8,
            0x64, 0x02,
        ];
        assert_eq!(checksum(&hdr), 0);
        let mut zeroed = hdr;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(checksum(&zeroed), 0x0047);
    }

    #[test]
    fn odd_lengths_and_empty() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(fold(sum(&[0xab])), 0xab00);
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for n in 0..data.len() {
            assert_eq!(checksum(&data[..n]), reference(&data[..n]), "n={n}");
        }
    }

    #[test]
    fn large_buffers_do_not_overflow() {
        let data = vec![0xffu8; 200_000];
        assert_eq!(checksum(&data), reference(&data));
    }

    #[test]
    fn incremental_update() {
        // RFC 1624 §4 example: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
        let base = [0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 0, 0, 1, 10, 0, 0, 2];
        let csum = checksum(&base);
        // (word offset, new value): TTL/protocol, total length, flags, an address half.
        for (at, new) in [(8usize, 0x3f01u16), (2, 0xffff), (6, 0x0000), (14, 0x0001), (12, 0xffff)] {
            let mut data = base;
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let updated = update16(csum, old, new);
            data[10..12].copy_from_slice(&updated.to_be_bytes());
            assert_eq!(fold(sum(&data)), 0xffff, "{old:#x} -> {new:#x}");
            data[10..12].fill(0);
            assert_eq!(updated, checksum(&data), "{old:#x} -> {new:#x}");
        }
    }

    #[test]
    fn pseudo_header() {
        let src = Ipv4Addr::new(192, 168, 100, 1);
        let dst = Ipv4Addr::new(192, 168, 100, 2);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&[0, 17, 0x00, 0x4a]);
        assert_eq!(fold(pseudo_header_v4(src, dst, 17, 0x4a)), fold(sum(&bytes)));
    }
}
