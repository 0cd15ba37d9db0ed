//! The test frames vwperf sends and recognises.
//!
//! Ethernet 02:00:00:00:00:01 -> 02:00:00:00:00:02, IPv4 10.99.0.1 ->
//! 10.99.0.2 (TTL 64, checksum filled), UDP from port 1024 + flow to port 9
//! (checksum 0), then a 20-byte payload header:
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! |     42 |    2 | magic `0x5657` ("VW")                   |
//! |     44 |    2 | flow number                             |
//! |     46 |    8 | sequence number within the flow         |
//! |     54 |    8 | TSC at transmission (latency mode)      |
//!
//! The rest of the frame, up to its size, is left as the mbuf had it (as in
//! testpmd's txonly): only the first 62 bytes are written per frame.

use vw_wire::ipv4;

/// Bytes written per frame: headers and the payload header.
pub const HEADER_BYTES: usize = 62;
/// Smallest frame size (without FCS).
pub const MIN_SIZE: usize = 64;
/// Largest frame size (without FCS).
pub const MAX_SIZE: usize = 9000;
const MAGIC: u16 = 0x5657;

/// Frame sizes to send in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizePattern(pub Vec<usize>);

impl SizePattern {
    /// Simple IMIX: 64, 570 and 1518-byte frames in the ratio 7:4:1.
    pub fn imix() -> SizePattern {
        let mut v = vec![64; 7];
        v.extend([570; 4]);
        v.push(1518);
        SizePattern(v)
    }

    /// The largest size in the pattern.
    pub fn max(&self) -> usize {
        self.0.iter().copied().max().unwrap_or(MIN_SIZE)
    }

    /// Average size.
    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<usize>() as f64 / self.0.len().max(1) as f64
    }
}

impl std::str::FromStr for SizePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<SizePattern, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(SizePattern::imix());
        }
        let n: usize = s.parse().map_err(|_| format!("{s:?}: a frame size or `imix`"))?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&n) {
            return Err(format!("frame size {n} is outside {MIN_SIZE}..={MAX_SIZE}"));
        }
        Ok(SizePattern(vec![n]))
    }
}

/// Prebuilt headers for one frame size.
#[derive(Debug, Clone)]
pub struct Template {
    size: usize,
    bytes: [u8; HEADER_BYTES],
}

impl Template {
    /// Headers for frames of `size` bytes.
    pub fn new(size: usize) -> Template {
        let mut b = [0u8; HEADER_BYTES];
        b[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (size - 14) as u16;
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut b[14..34]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(ip_len);
            ip.set_ttl(64);
            ip.set_protocol(ipv4::protocol::UDP);
            ip.set_src_addr([10, 99, 0, 1].into());
            ip.set_dst_addr([10, 99, 0, 2].into());
            ip.fill_checksum();
        }
        b[36..38].copy_from_slice(&9u16.to_be_bytes());
        b[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        b[42..44].copy_from_slice(&MAGIC.to_be_bytes());
        Template { size, bytes: b }
    }

    /// Frame size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Writes the frame's first [`HEADER_BYTES`] into `out`.
    #[inline(always)]
    pub fn write(&self, out: &mut [u8], flow: u16, seq: u64, tsc: u64) {
        let out = &mut out[..HEADER_BYTES];
        out.copy_from_slice(&self.bytes);
        out[34..36].copy_from_slice(&(1024u16.wrapping_add(flow)).to_be_bytes());
        out[44..46].copy_from_slice(&flow.to_be_bytes());
        out[46..54].copy_from_slice(&seq.to_be_bytes());
        out[54..62].copy_from_slice(&tsc.to_be_bytes());
    }
}

/// What a received test frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Flow number.
    pub flow: u16,
    /// Sequence number within the flow.
    pub seq: u64,
    /// TSC at transmission.
    pub tsc: u64,
}

/// Reads the stamp of a test frame, or `None` if `data` is not one.
#[inline(always)]
pub fn parse(data: &[u8]) -> Option<Stamp> {
    let d = data.get(..HEADER_BYTES)?;
    if d[12..14] != [0x08, 0x00] || d[23] != ipv4::protocol::UDP || d[42..44] != MAGIC.to_be_bytes() {
        return None;
    }
    Some(Stamp {
        flow: u16::from_be_bytes([d[44], d[45]]),
        seq: u64::from_be_bytes(d[46..54].try_into().ok()?),
        tsc: u64::from_be_bytes(d[54..62].try_into().ok()?),
    })
}

/// Per-flow sequence tracking at the receiver.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    next: Vec<u64>,
    /// Frames that arrived after a later frame of the same flow.
    pub reordered: u64,
    /// Frames whose sequence number was seen before.
    pub duplicated: u64,
}

impl SeqTracker {
    /// Tracks `flows` flows.
    pub fn new(flows: usize) -> SeqTracker {
        SeqTracker { next: vec![0; flows.max(1)], reordered: 0, duplicated: 0 }
    }

    /// Records one frame. Frames of unknown flows are ignored.
    #[inline(always)]
    pub fn record(&mut self, s: Stamp) {
        let Some(n) = self.next.get_mut(s.flow as usize) else { return };
        if s.seq >= *n {
            *n = s.seq + 1;
        } else if s.seq + 1 == *n {
            self.duplicated += 1;
        } else {
            self.reordered += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_valid_ipv4_udp() {
        for size in [64, 570, 1518, 9000] {
            let t = Template::new(size);
            let mut f = vec![0u8; size];
            t.write(&mut f, 7, 123_456, 0xdead_beef);
            assert_eq!(parse(&f), Some(Stamp { flow: 7, seq: 123_456, tsc: 0xdead_beef }));
            let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.total_len() as usize, size - 14);
            assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, size - 34);
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), 1031);
        }
        assert_eq!(parse(&[0u8; 61]), None);
        assert_eq!(parse(&[0u8; 64]), None);
    }

    #[test]
    fn sizes_parse_and_imix_is_7_4_1() {
        assert_eq!("512".parse::<SizePattern>().unwrap().0, vec![512]);
        assert!("63".parse::<SizePattern>().is_err());
        assert!("9001".parse::<SizePattern>().is_err());
        let imix: SizePattern = "IMIX".parse().unwrap();
        assert_eq!(imix.0.len(), 12);
        assert_eq!(imix.max(), 1518);
        assert!((imix.mean() - (7.0 * 64.0 + 4.0 * 570.0 + 1518.0) / 12.0).abs() < 1e-9);
    }

    #[test]
    fn reordering_and_duplicates_are_counted_per_flow() {
        let mut t = SeqTracker::new(2);
        let s = |flow, seq| Stamp { flow, seq, tsc: 0 };
        for (f, q) in [(0, 0), (1, 0), (0, 1), (0, 3), (0, 2), (1, 1), (1, 1), (0, 4)] {
            t.record(s(f, q));
        }
        assert_eq!(t.reordered, 1, "seq 2 after 3");
        assert_eq!(t.duplicated, 1, "flow 1 seq 1 twice");
        t.record(s(9, 0));
    }
}
