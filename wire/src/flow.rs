//! Flow hash of inner frames, for the entropy of the outer UDP source port (RFC 7348 §5).
//!
//! [`flow_hash`] reads whatever headers are present: MAC addresses and EtherType, up to two
//! VLAN tags (skipped), then for IPv4 the addresses and protocol plus the L4 ports of unfragmented
//! TCP/UDP/SCTP, for IPv6 the addresses and next header. A few multiply-xorshift rounds over
//! 64/32-bit loads: deterministic (also across hosts: loads are little-endian), allocation-free,
//! and it never panics; a short or garbage frame just hashes the bytes it has.

use crate::ethernet::ethertype;
use crate::ipv4::protocol;

const SEED: u64 = 0x2d35_8dcc_aa6c_78a5;
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// One round: xor the word in, multiply, xorshift.
#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(K);
    x ^ (x >> 32)
}

/// Final avalanche (MurmurHash3 fmix64), folded to 32 bits.
#[inline(always)]
fn finish(mut h: u64) -> u32 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h ^ (h >> 32)) as u32
}

#[inline(always)]
fn load64(frame: &[u8], at: usize) -> Option<u64> {
    let bytes = frame.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[inline(always)]
fn load32(frame: &[u8], at: usize) -> Option<u32> {
    let bytes = frame.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[inline(always)]
fn load16be(frame: &[u8], at: usize) -> Option<u16> {
    let bytes = frame.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// Hash of an inner Ethernet frame; the same flow always gives the same hash. Never panics.
#[inline]
pub fn flow_hash(frame: &[u8]) -> u32 {
    // Fast path for the common case, untagged IPv4 without options: the
    // fields are gathered into four words multiplied independently (the
    // multiplies pipeline instead of forming one long chain).
    if let Some(f) = frame.first_chunk::<38>() {
        if f[12] == 0x08 && f[13] == 0x00 && f[14] == 0x45 {
            let macs = u64::from_le_bytes([f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]]);
            let proto = f[23];
            let rest = u64::from(u32::from_le_bytes([f[8], f[9], f[10], f[11]])) | u64::from(proto) << 32;
            let addrs = u64::from_le_bytes([f[26], f[27], f[28], f[29], f[30], f[31], f[32], f[33]]);
            let not_fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff == 0;
            let ports = if not_fragment && matches!(proto, protocol::TCP | protocol::UDP | protocol::SCTP) {
                u64::from(u32::from_le_bytes([f[34], f[35], f[36], f[37]]))
            } else {
                0
            };
            // Two independent multiplies of folded words, then one more to
            // mix the halves: enough spread for ECMP/RSS, not a MAC.
            let x = (macs ^ rest.rotate_left(23)).wrapping_mul(K)
                ^ (addrs ^ ports.rotate_left(41) ^ SEED).wrapping_mul(0xff51_afd7_ed55_8ccd);
            return ((x ^ (x >> 31)).wrapping_mul(0xc4ce_b9fe_1a85_ec53) >> 32) as u32;
        }
    }
    let Some(l2) = frame.first_chunk::<14>() else {
        // Shorter than an Ethernet header: hash whatever is there.
        let mut h = mix(SEED, frame.len() as u64);
        for &b in frame {
            h = mix(h, u64::from(b));
        }
        return finish(h);
    };
    let macs = u64::from_le_bytes([l2[0], l2[1], l2[2], l2[3], l2[4], l2[5], l2[6], l2[7]]);
    let rest = u64::from(u32::from_le_bytes([l2[8], l2[9], l2[10], l2[11]]));
    let mut h = mix(mix(SEED, macs), rest);

    // Skip up to two VLAN tags (802.1ad outer, 802.1Q inner).
    let mut et = u16::from_be_bytes([l2[12], l2[13]]);
    let mut off = 14usize;
    for _ in 0..2 {
        if et != ethertype::VLAN && et != ethertype::QINQ {
            break;
        }
        match load16be(frame, off + 2) {
            Some(inner) => {
                et = inner;
                off += 4;
            }
            None => break,
        }
    }
    h = mix(h, u64::from(et));

    match et {
        ethertype::IPV4 => {
            let (Some(&ver_ihl), Some(flags), Some(&proto), Some(addrs)) =
                (frame.get(off), load16be(frame, off + 6), frame.get(off + 9), load64(frame, off + 12))
            else {
                return finish(h);
            };
            h = mix(h, addrs);
            h = mix(h, u64::from(proto));
            let not_fragment = flags & 0x3fff == 0;
            let l4 = matches!(proto, protocol::TCP | protocol::UDP | protocol::SCTP);
            if not_fragment && l4 {
                let ihl = usize::from(ver_ihl & 0x0f) * 4;
                if ihl >= 20 {
                    if let Some(ports) = load32(frame, off + ihl) {
                        h = mix(h, u64::from(ports));
                    }
                }
            }
        }
        ethertype::IPV6 => {
            let (Some(&next), Some(a), Some(b), Some(c), Some(d)) = (
                frame.get(off + 6),
                load64(frame, off + 8),
                load64(frame, off + 16),
                load64(frame, off + 24),
                load64(frame, off + 32),
            ) else {
                return finish(h);
            };
            h = mix(mix(mix(mix(h, a), b), c), d);
            h = mix(h, u64::from(next));
        }
        _ => {}
    }
    finish(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Inner frame of a VXLAN packet sent by Linux: ICMP echo request 10.200.0.1 -> 10.200.0.2.
    static ICMP_FRAME: [u8; 58] = [
        0x02, 0x00, 0x00, 0x00, 0xaa, 0x02, 0x02, 0x00, 0x00, 0x00, 0xaa, 0x01, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x2c, 0x3d, 0x88, 0x40, 0x00, 0x40, 0x01, 0xe7, 0xb6, 0x0a, 0xc8, 0x00, 0x01, 0x0a, 0xc8, //
        0x00, 0x02, 0x08, 0x00, 0x24, 0x03, 0x1e, 0x18, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, 0x00, 0x00, //
        0x00, 0x00, 0x61, 0xbb, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// A UDP/IPv4 frame 10.0.0.1:sport -> 10.0.0.2:dport with `tags` VLAN tags.
    fn udp_frame(sport: u16, dport: u16, tags: usize, payload: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for i in 0..tags {
            let tpid = if i == 0 && tags == 2 { ethertype::QINQ } else { ethertype::VLAN };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype::IPV4.to_be_bytes());
        f.extend_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 16, 0, 0, payload, payload, payload, payload, payload, payload, payload, payload]);
        f
    }

    const PINNED: u32 = 0xecfc_26b1;

    #[test]
    fn deterministic_and_payload_independent() {
        assert_eq!(flow_hash(&ICMP_FRAME), flow_hash(&ICMP_FRAME));
        // Stable across builds and hosts (little-endian loads, fixed constants).
        assert_eq!(flow_hash(&ICMP_FRAME), PINNED);
        let mut other_payload = ICMP_FRAME;
        other_payload[50] ^= 0xff; // ICMP data, IPv4 ident and checksum do not count
        other_payload[18] ^= 0xff;
        other_payload[24] ^= 0xff;
        assert_eq!(flow_hash(&ICMP_FRAME), flow_hash(&other_payload));
        assert_eq!(flow_hash(&udp_frame(1000, 53, 0, 1)), flow_hash(&udp_frame(1000, 53, 0, 2)));
    }

    #[test]
    fn fields_that_count() {
        let base = flow_hash(&udp_frame(1000, 53, 0, 0));
        assert_ne!(base, flow_hash(&udp_frame(1001, 53, 0, 0)));
        assert_ne!(base, flow_hash(&udp_frame(1000, 54, 0, 0)));
        let mut other_ip = udp_frame(1000, 53, 0, 0);
        other_ip[29] = 9;
        assert_ne!(base, flow_hash(&other_ip));
        let mut other_mac = udp_frame(1000, 53, 0, 0);
        other_mac[5] = 3;
        assert_ne!(base, flow_hash(&other_mac));
        // A fragment's ports are ignored (later fragments have none).
        let mut frag = udp_frame(1000, 53, 0, 0);
        frag[20] = 0x20; // MF
        let mut frag2 = udp_frame(2000, 80, 0, 0);
        frag2[20] = 0x20;
        assert_eq!(flow_hash(&frag), flow_hash(&frag2));
        // ICMP has no ports: only addresses and protocol.
        let mut icmp = udp_frame(1000, 53, 0, 0);
        icmp[23] = protocol::ICMP;
        let mut icmp2 = udp_frame(2000, 80, 0, 0);
        icmp2[23] = protocol::ICMP;
        assert_eq!(flow_hash(&icmp), flow_hash(&icmp2));
    }

    #[test]
    fn vlan_tags_are_skipped() {
        for tags in 1..=2 {
            assert_eq!(flow_hash(&udp_frame(1, 2, tags, 0)), flow_hash(&udp_frame(1, 2, tags, 7)));
            assert_ne!(flow_hash(&udp_frame(1, 2, tags, 0)), flow_hash(&udp_frame(1, 3, tags, 0)));
        }
    }

    #[test]
    fn ipv6() {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
        f.extend((0..32).map(|i| i as u8));
        f.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        let base = flow_hash(&f);
        let mut g = f.clone();
        g[14 + 8 + 31] ^= 1; // last byte of the destination address
        assert_ne!(base, flow_hash(&g));
        let mut g = f.clone();
        g[14 + 6] = 6; // next header
        assert_ne!(base, flow_hash(&g));
    }

    #[test]
    fn short_and_garbage_frames() {
        for len in 0..ICMP_FRAME.len() {
            let _ = flow_hash(&ICMP_FRAME[..len]);
        }
        assert_ne!(flow_hash(&[]), flow_hash(&[0]));
        assert_ne!(flow_hash(&[1, 2, 3]), flow_hash(&[1, 2, 4]));
        let mut weird = udp_frame(1, 2, 0, 0);
        weird[14] = 0x4f; // IHL 15 points past the end
        let _ = flow_hash(&weird);
        weird[14] = 0x40; // IHL 0
        let _ = flow_hash(&weird);
    }

    #[test]
    fn spreads_over_source_ports() {
        use crate::encap::EncapTemplate;
        let ports: std::collections::HashSet<u16> =
            (0..4096u16).map(|p| EncapTemplate::source_port(flow_hash(&udp_frame(p, 80, 0, 0)))).collect();
        assert!(ports.len() > 3500, "{}", ports.len());
    }
}
