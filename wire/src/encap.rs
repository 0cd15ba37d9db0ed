//! Encapsulations and the prebuilt outer headers of encap wires.
//!
//! Like VPP's VXLAN encap node, each wire keeps an [`EncapTemplate`]: the whole outer
//! Ethernet + IPv4 + UDP + tunnel header, built once when the wire is connected. Per packet,
//! [`EncapTemplate::write`] copies it in front of the inner frame and patches the four fields
//! that depend on the packet: IPv4 total length and checksum, UDP length and source port.

use core::fmt;
use core::str::FromStr;
use std::net::Ipv4Addr;

use crate::ethernet::{self, ethertype, MacAddr};
use crate::table::ConnectorId;
use crate::{checksum, ipv4, migration, udp, vwire, vxlan};

/// How an encap wire carries its frames over the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// The 4-byte VirtualWire connector header over UDP.
    Vwire,
    /// VXLAN (RFC 7348) over UDP; the connector ID is the 24-bit VNI.
    Vxlan,
    /// A frame one fabric passes on to another after its endpoint moved there: the 8-byte
    /// forwarded-frame header of the migration channel ([`crate::migration`]). Never the
    /// format of a wire, so not in [`Encap::ALL`].
    Forward,
}

impl Encap {
    /// Every format a wire can use, in a stable order.
    pub const ALL: [Encap; 2] = [Encap::Vwire, Encap::Vxlan];

    /// Stable lower-case name: "vwire" or "vxlan".
    pub const fn name(self) -> &'static str {
        match self {
            Encap::Vwire => "vwire",
            Encap::Vxlan => "vxlan",
            Encap::Forward => "forward",
        }
    }

    /// Length of the tunnel header: 4 for vwire, 8 for VXLAN and forwarded frames.
    pub const fn header_len(self) -> usize {
        match self {
            Encap::Vwire => vwire::HEADER_LEN,
            Encap::Vxlan => vxlan::HEADER_LEN,
            Encap::Forward => migration::HEADER_LEN,
        }
    }

    /// Bytes added in front of the inner frame: Ethernet + IPv4 + UDP + tunnel header (46 / 50).
    pub const fn overhead(self) -> usize {
        ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + self.header_len()
    }

    /// The usual UDP destination port: 4795 for vwire, 4789 (IANA) for VXLAN, 4796 for
    /// forwarded frames (the migration channel).
    pub const fn default_port(self) -> u16 {
        match self {
            Encap::Vwire => vwire::DEFAULT_PORT,
            Encap::Vxlan => vxlan::PORT,
            Encap::Forward => migration::DEFAULT_PORT,
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error returned when parsing an [`Encap`] from text fails.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown encapsulation {0:?}; valid encapsulations are: vwire, vxlan")]
pub struct ParseEncapError(pub String);

impl FromStr for Encap {
    type Err = ParseEncapError;

    fn from_str(s: &str) -> Result<Encap, ParseEncapError> {
        Encap::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| ParseEncapError(s.to_string()))
    }
}

const _: () = assert!(Encap::Vwire.overhead() == 46);
const _: () = assert!(Encap::Vxlan.overhead() == 50);
const _: () = assert!(Encap::Forward.overhead() == 50);

/// Largest outer header of any encapsulation.
pub const MAX_OVERHEAD: usize = Encap::Vxlan.overhead();

// Offsets of the per-packet fields inside the outer header.
const IP: usize = ethernet::HEADER_LEN;
const UDP: usize = IP + ipv4::HEADER_LEN;
const TUNNEL: usize = UDP + udp::HEADER_LEN;
const IP_TOTAL_LEN: usize = IP + ipv4::field::LENGTH.start;
const IP_CHECKSUM: usize = IP + ipv4::field::CHECKSUM.start;
const UDP_SRC_PORT: usize = UDP + udp::field::SRC_PORT.start;
const UDP_LENGTH: usize = UDP + udp::field::LENGTH.start;

const _: () = assert!(TUNNEL == 42 && UDP_LENGTH + 2 <= TUNNEL);

/// The prebuilt outer Ethernet + IPv4 + UDP + tunnel header of one encap wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapTemplate {
    /// The header with zero IPv4 total length / checksum, UDP length / source port.
    bytes: [u8; MAX_OVERHEAD],
    encap: Encap,
    connector: ConnectorId,
    /// One's complement sum of every IPv4 header word except total length, folded to 16 bits.
    ip_partial: u32,
    underlay_mtu: u16,
}

impl EncapTemplate {
    /// Builds the template of a wire.
    ///
    /// IPv4 (RFC 791): version 4, IHL 5, DSCP 0, ident 0 with DF set (an atomic datagram, RFC
    /// 6864 §4.1), TTL 64, protocol UDP. UDP (RFC 768): destination `dst_port`, checksum 0
    /// (RFC 7348 §5: SHOULD be zero over IPv4). VXLAN: flags 0x08, VNI = low 24 bits of
    /// `connector`. vwire: `connector` big-endian.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        encap: Encap,
        connector: ConnectorId,
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        dst_port: u16,
        underlay_mtu: u16,
    ) -> EncapTemplate {
        let mut bytes = [0u8; MAX_OVERHEAD];

        let mut eth = ethernet::Frame::new_unchecked(&mut bytes[..]);
        eth.set_dst(dst_mac);
        eth.set_src(src_mac);
        eth.set_ethertype(ethertype::IPV4);

        let mut ip = ipv4::Packet::new_unchecked(&mut bytes[IP..UDP]);
        ip.set_version(4);
        ip.set_header_len(ipv4::HEADER_LEN as u8);
        ip.set_dscp_ecn(0);
        ip.set_total_len(0);
        ip.set_ident(0);
        ip.set_dont_frag(true);
        ip.set_ttl(ipv4::DEFAULT_TTL);
        ip.set_protocol(ipv4::protocol::UDP);
        ip.set_checksum(0);
        ip.set_src_addr(src_ip);
        ip.set_dst_addr(dst_ip);

        let mut udp = udp::Datagram::new_unchecked(&mut bytes[UDP..TUNNEL]);
        udp.set_src_port(0);
        udp.set_dst_port(dst_port);
        udp.set_len(0);
        udp.set_checksum(0);

        match encap {
            Encap::Vwire => vwire::Header::new_unchecked(&mut bytes[TUNNEL..]).set_connector(connector),
            Encap::Vxlan => {
                let mut h = vxlan::Header::new_unchecked(&mut bytes[TUNNEL..]);
                h.set_flags(vxlan::FLAG_I);
                h.clear_reserved();
                h.set_vni(connector.0);
            }
            Encap::Forward => {
                if let Some(h) = bytes[TUNNEL..].first_chunk_mut::<{ migration::HEADER_LEN }>() {
                    migration::write_forward_header(h, connector);
                }
            }
        }

        // Total length and checksum are zero here, so this sums every other header word.
        let ip_partial = u32::from(checksum::fold(checksum::sum(&bytes[IP..UDP])));
        EncapTemplate { bytes, encap, connector, ip_partial, underlay_mtu }
    }

    /// Length of the outer header: 46 (vwire) or 50 (VXLAN).
    #[inline]
    pub const fn len(&self) -> usize {
        self.encap.overhead()
    }

    /// Always false: a template is never empty.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// The encapsulation.
    pub const fn encap(&self) -> Encap {
        self.encap
    }

    /// The wire's connector ID (the VNI for VXLAN).
    pub const fn connector(&self) -> ConnectorId {
        self.connector
    }

    /// Outer destination MAC (the next hop towards the remote VTEP).
    pub fn dst_mac(&self) -> MacAddr {
        ethernet::Frame::new_unchecked(&self.bytes[..]).dst()
    }

    /// Outer source MAC.
    pub fn src_mac(&self) -> MacAddr {
        ethernet::Frame::new_unchecked(&self.bytes[..]).src()
    }

    /// Outer source IPv4 address (our VTEP).
    pub fn src_ip(&self) -> Ipv4Addr {
        ipv4::Packet::new_unchecked(&self.bytes[IP..UDP]).src_addr()
    }

    /// Outer destination IPv4 address (the remote VTEP).
    pub fn dst_ip(&self) -> Ipv4Addr {
        ipv4::Packet::new_unchecked(&self.bytes[IP..UDP]).dst_addr()
    }

    /// UDP destination port.
    pub fn dst_port(&self) -> u16 {
        udp::Datagram::new_unchecked(&self.bytes[UDP..TUNNEL]).dst_port()
    }

    /// MTU of the underlay: the largest outer IPv4 packet.
    pub const fn underlay_mtu(&self) -> u16 {
        self.underlay_mtu
    }

    /// Longest inner Ethernet frame whose outer IPv4 packet fits the underlay MTU:
    /// `underlay_mtu - (20 + 8 + tunnel header)`, 0 if the MTU is smaller than that.
    #[inline]
    pub const fn max_inner_len(&self) -> usize {
        (self.underlay_mtu as usize).saturating_sub(ipv4::HEADER_LEN + udp::HEADER_LEN + self.encap.header_len())
    }

    /// The same template with another outer destination MAC (after the next hop's ARP changed).
    pub fn with_dst_mac(&self, mac: MacAddr) -> EncapTemplate {
        let mut t = *self;
        ethernet::Frame::new_unchecked(&mut t.bytes[..]).set_dst(mac);
        t
    }

    /// The template bytes, with zero IPv4 total length / checksum and UDP length / source port.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// Writes the outer header for an inner frame of `inner_len` bytes into `hdr`.
    ///
    /// `hdr` must be exactly the [`len`](Self::len) bytes in front of the inner frame; if it is
    /// not, nothing is written (and debug builds assert). Patches IPv4 total length
    /// (20 + 8 + tunnel + inner), IPv4 checksum (`!fold(partial + total_len)`, RFC 1071 §2(B)),
    /// UDP length (8 + tunnel + inner) and UDP source port. Correct for every `inner_len` up to
    /// [`max_inner_len`](Self::max_inner_len); larger values wrap at 16 bits. Never panics in
    /// release builds.
    #[inline]
    pub fn write(&self, hdr: &mut [u8], inner_len: usize, src_port: u16) {
        debug_assert_eq!(hdr.len(), self.len(), "EncapTemplate::write: header slice of the wrong length");
        match self.encap {
            Encap::Vwire => self.write_fixed::<{ Encap::Vwire.overhead() }>(hdr, inner_len, src_port),
            Encap::Vxlan => self.write_fixed::<{ Encap::Vxlan.overhead() }>(hdr, inner_len, src_port),
            Encap::Forward => self.write_fixed::<{ Encap::Forward.overhead() }>(hdr, inner_len, src_port),
        }
    }

    #[inline(always)]
    fn write_fixed<const N: usize>(&self, hdr: &mut [u8], inner_len: usize, src_port: u16) {
        let (Ok(hdr), Some(tpl)) = (<&mut [u8; N]>::try_from(hdr), self.bytes.first_chunk::<N>()) else {
            return;
        };
        *hdr = *tpl;
        // Truncation to 16 bits is the documented behaviour above max_inner_len.
        let udp_len = (inner_len as u16).wrapping_add((udp::HEADER_LEN + self.encap.header_len()) as u16);
        let total_len = udp_len.wrapping_add(ipv4::HEADER_LEN as u16);
        let ip_csum = !checksum::fold(self.ip_partial + u32::from(total_len));
        hdr[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&total_len.to_be_bytes());
        hdr[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&ip_csum.to_be_bytes());
        hdr[UDP_SRC_PORT..UDP_SRC_PORT + 2].copy_from_slice(&src_port.to_be_bytes());
        hdr[UDP_LENGTH..UDP_LENGTH + 2].copy_from_slice(&udp_len.to_be_bytes());
    }

    /// Maps a flow hash to a UDP source port in 49152..=65535; same as [`source_port`].
    #[inline]
    pub const fn source_port(flow_hash: u32) -> u16 {
        source_port(flow_hash)
    }
}

/// Maps a flow hash to a UDP source port in the dynamic range 49152..=65535
/// (RFC 7348 §5 recommends it, RFC 6335 §6 defines it).
#[inline]
pub const fn source_port(flow_hash: u32) -> u16 {
    let folded = (flow_hash ^ (flow_hash >> 16)) as u16;
    0xc000 | (folded & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x01);
    const DST_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);
    const SRC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    const DST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

    // Outer headers of the VXLAN packet Linux's vxlan driver sent for a 16-byte ping
    // (`ip link add vx0 type vxlan id 4242 dstport 4789`); the inner frame is 58 bytes.
    static LINUX_VXLAN_OUTER: [u8; 50] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x5e, 0x30, 0xf4, 0x00, 0x00, 0x40, 0x11, 0x00, 0x47, 0xc0, 0xa8, 0x64, 0x01, 0xc0, 0xa8, //
        0x64, 0x02, 0x88, 0x20, 0x12, 0xb5, 0x00, 0x4a, 0x49, 0xb0, 0x08, 0x00, 0x00, 0x00, 0x00, 0x10, //
        0x92, 0x00,
    ];

    fn vxlan_template() -> EncapTemplate {
        EncapTemplate::new(Encap::Vxlan, ConnectorId(4242), SRC_MAC, DST_MAC, SRC_IP, DST_IP, vxlan::PORT, 1500)
    }

    #[test]
    fn construct_matches_linux_vxlan() {
        let t = vxlan_template();
        let mut hdr = [0u8; 50];
        t.write(&mut hdr, 58, 34848);
        // We differ from Linux only where we chose to: ident 0 + DF (Linux: ident 0x30f4, no DF),
        // hence the IPv4 checksum, and UDP checksum 0 (Linux: checksum offload).
        let mut expected = LINUX_VXLAN_OUTER;
        expected[18..22].copy_from_slice(&[0x00, 0x00, 0x40, 0x00]);
        expected[24..26].fill(0);
        expected[40..42].fill(0);
        ipv4::Packet::new_unchecked(&mut expected[14..34]).fill_checksum();
        assert_eq!(hdr, expected);
    }

    #[test]
    fn deconstruct_template() {
        let t = vxlan_template();
        assert_eq!((t.len(), t.encap(), t.connector()), (50, Encap::Vxlan, ConnectorId(4242)));
        assert_eq!((t.src_mac(), t.dst_mac(), t.src_ip(), t.dst_ip()), (SRC_MAC, DST_MAC, SRC_IP, DST_IP));
        assert_eq!((t.dst_port(), t.underlay_mtu(), t.max_inner_len()), (4789, 1500, 1464));
        assert!(!t.is_empty());
        let b = t.as_bytes();
        assert_eq!(b.len(), 50);
        let ip = ipv4::Packet::new_unchecked(&b[14..34]);
        assert!(ip.dont_frag() && ip.ident() == 0 && ip.ttl() == 64 && ip.protocol() == ipv4::protocol::UDP);
        let vx = vxlan::Header::new_checked(&b[42..]).unwrap();
        assert!(vx.vni_valid());
        assert_eq!(vx.vni(), 4242);

        let v =
            EncapTemplate::new(Encap::Vwire, ConnectorId(0xdead_beef), SRC_MAC, DST_MAC, SRC_IP, DST_IP, 4795, 9000);
        assert_eq!((v.len(), v.max_inner_len()), (46, 9000 - 32));
        assert_eq!(vwire::Header::new_checked(&v.as_bytes()[42..]).unwrap().connector(), ConnectorId(0xdead_beef));
        let tiny = EncapTemplate::new(Encap::Vwire, ConnectorId(1), SRC_MAC, DST_MAC, SRC_IP, DST_IP, 4795, 20);
        assert_eq!(tiny.max_inner_len(), 0);
    }

    #[test]
    fn vni_is_masked() {
        let t =
            EncapTemplate::new(Encap::Vxlan, ConnectorId(0x0100_0007), SRC_MAC, DST_MAC, SRC_IP, DST_IP, 4789, 1500);
        assert_eq!(vxlan::Header::new_checked(&t.as_bytes()[42..]).unwrap().vni(), 7);
        assert_eq!(t.connector(), ConnectorId(0x0100_0007));
    }

    #[test]
    fn with_dst_mac_only_changes_the_mac() {
        let t = vxlan_template();
        let mac = MacAddr::new(2, 0, 0, 0, 0, 9);
        let u = t.with_dst_mac(mac);
        assert_eq!(u.dst_mac(), mac);
        assert_eq!(&u.as_bytes()[6..], &t.as_bytes()[6..]);
        let (mut a, mut b) = ([0u8; 50], [0u8; 50]);
        t.write(&mut a, 1000, 50000);
        u.write(&mut b, 1000, 50000);
        assert_eq!(&a[6..], &b[6..]);
    }

    #[test]
    fn write_extremes_have_valid_checksums() {
        for encap in Encap::ALL {
            let t = EncapTemplate::new(encap, ConnectorId(3), SRC_MAC, DST_MAC, SRC_IP, DST_IP, 4789, u16::MAX);
            let mut hdr = vec![0u8; t.len()];
            for inner in [0, 1, 14, 60, 1450, 8972, t.max_inner_len() - 1, t.max_inner_len()] {
                t.write(&mut hdr, inner, 65535);
                let ip = ipv4::Packet::new_unchecked(&hdr[14..34]);
                assert!(ip.verify_checksum(), "{encap} inner {inner}");
                assert_eq!(usize::from(ip.total_len()), 28 + encap.header_len() + inner);
                let udp = udp::Datagram::new_unchecked(&hdr[34..42]);
                assert_eq!(usize::from(udp.len()), 8 + encap.header_len() + inner);
                assert_eq!(udp.src_port(), 65535);
            }
        }
    }

    #[test]
    fn encap_names() {
        assert_eq!("vwire".parse::<Encap>(), Ok(Encap::Vwire));
        assert_eq!("vxlan".parse::<Encap>(), Ok(Encap::Vxlan));
        let err = "gre".parse::<Encap>().unwrap_err();
        assert_eq!(err.to_string(), "unknown encapsulation \"gre\"; valid encapsulations are: vwire, vxlan");
        for e in Encap::ALL {
            assert_eq!(e.to_string().parse::<Encap>(), Ok(e));
        }
        assert_eq!((Encap::Vwire.header_len(), Encap::Vxlan.header_len()), (4, 8));
        assert_eq!((Encap::Vwire.overhead(), Encap::Vxlan.overhead()), (46, 50));
        assert_eq!((Encap::Vwire.default_port(), Encap::Vxlan.default_port()), (4795, 4789));
    }

    #[test]
    fn source_ports_are_dynamic() {
        for h in [0u32, 1, 0x3fff, 0x4000, 0xffff, 0x1_0000, 0xdead_beef, u32::MAX] {
            assert!(EncapTemplate::source_port(h) >= 49152);
        }
        let ports: std::collections::HashSet<u16> = (0..=0xffffu32).map(EncapTemplate::source_port).collect();
        assert_eq!(source_port(0x1234_5678), EncapTemplate::source_port(0x1234_5678));
        assert_eq!(ports.len(), 16384);
    }
}
