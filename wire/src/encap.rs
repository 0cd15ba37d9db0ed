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
    /// A secure wire: the vwire datagram (UDP + connector header + frame) protected by ESP
    /// (RFC 4303) with AES-GCM (RFC 4106) in transport mode, in UDP port 4500 (RFC 3948).
    Secure,
    /// The same with a VXLAN datagram inside: what a Linux host's `ip xfrm` transport-mode
    /// SA and VXLAN device send and take.
    SecureVxlan,
}

/// The secure wires' ESP-in-UDP layout (RFC 3948, RFC 4303, RFC 4106).
pub mod secure {
    use crate::ethernet::{self, ethertype, MacAddr};
    use crate::{ipv4, udp};
    use std::net::Ipv4Addr;

    /// UDP port of ESP in UDP (RFC 3948), both ends.
    pub const PORT: u16 = 4500;
    /// SPI (4) + low 32 bits of the sequence number (4) + IV (8).
    pub const HEADER_LEN: usize = 16;
    /// The AES-GCM ICV (RFC 4106: 16 bytes).
    pub const ICV_LEN: usize = 16;
    /// Padding (0-3, to a 4-byte boundary), pad length, next header, ICV.
    pub const MAX_TRAILER_LEN: usize = 3 + 2 + ICV_LEN;
    /// The ESP next header of the protected datagram: UDP.
    pub const NEXT_HEADER_UDP: u8 = 17;

    /// Padding for a protected payload of `len` bytes (RFC 4303 §2.4: the
    /// pad length and next header end on a 4-byte boundary).
    #[inline(always)]
    pub const fn pad(len: usize) -> usize {
        (4 - (len + 2) % 4) % 4
    }

    /// Bytes after a protected payload of `len` bytes: padding, pad length,
    /// next header and ICV.
    #[inline(always)]
    pub const fn trailer_len(len: usize) -> usize {
        pad(len) + 2 + ICV_LEN
    }

    /// Writes a NAT keepalive (RFC 3948 §2.3: a UDP datagram from port 4500 whose payload is
    /// the single byte 0xFF) from `src_ip` to `dst_ip`:`dst_port`, zero-padded to the 60-byte
    /// Ethernet minimum; returns 60. Its IPv4 checksum is filled, its UDP checksum is zero.
    pub fn build_nat_keepalive(
        buf: &mut [u8; ethernet::MIN_FRAME_LEN],
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        dst_port: u16,
    ) -> usize {
        const IP_END: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
        const PAYLOAD: usize = IP_END + udp::HEADER_LEN;
        buf.fill(0);
        let mut eth = ethernet::Frame::new_unchecked(&mut buf[..]);
        eth.set_dst(dst_mac);
        eth.set_src(src_mac);
        eth.set_ethertype(ethertype::IPV4);
        let mut ip = ipv4::Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN..IP_END]);
        ip.set_version(4);
        ip.set_header_len(ipv4::HEADER_LEN as u8);
        ip.set_total_len((ipv4::HEADER_LEN + udp::HEADER_LEN + 1) as u16);
        ip.set_dont_frag(true);
        ip.set_ttl(ipv4::DEFAULT_TTL);
        ip.set_protocol(ipv4::protocol::UDP);
        ip.set_src_addr(src_ip);
        ip.set_dst_addr(dst_ip);
        ip.fill_checksum();
        let mut u = udp::Datagram::new_unchecked(&mut buf[IP_END..PAYLOAD]);
        u.set_src_port(PORT);
        u.set_dst_port(dst_port);
        u.set_len((udp::HEADER_LEN + 1) as u16);
        u.set_checksum(0);
        buf[PAYLOAD] = 0xff;
        ethernet::MIN_FRAME_LEN
    }
}

impl Encap {
    /// Every format a wire can use, in a stable order.
    pub const ALL: [Encap; 4] = [Encap::Vwire, Encap::Vxlan, Encap::Secure, Encap::SecureVxlan];

    /// Stable lower-case name: "vwire", "vxlan", "secure" or "secure-vxlan".
    pub const fn name(self) -> &'static str {
        match self {
            Encap::Vwire => "vwire",
            Encap::Vxlan => "vxlan",
            Encap::Forward => "forward",
            Encap::Secure => "secure",
            Encap::SecureVxlan => "secure-vxlan",
        }
    }

    /// True for the secure formats (ESP in UDP).
    #[inline(always)]
    pub const fn is_secure(self) -> bool {
        matches!(self, Encap::Secure | Encap::SecureVxlan)
    }

    /// The tunnel format of the datagram inside: vwire for [`Encap::Secure`], VXLAN for
    /// [`Encap::SecureVxlan`], the format itself otherwise.
    #[inline(always)]
    pub const fn tunnel(self) -> Encap {
        match self {
            Encap::Secure => Encap::Vwire,
            Encap::SecureVxlan => Encap::Vxlan,
            e => e,
        }
    }

    /// The secure format carrying this tunnel format (vwire or VXLAN), if any.
    pub const fn secured(self) -> Option<Encap> {
        match self {
            Encap::Vwire => Some(Encap::Secure),
            Encap::Vxlan => Some(Encap::SecureVxlan),
            _ => None,
        }
    }

    /// Bytes between the outer UDP header and the inner frame: the tunnel header (4 for
    /// vwire, 8 for VXLAN and forwarded frames); for a secure format also the ESP header
    /// (16) and the protected datagram's UDP header (8).
    pub const fn header_len(self) -> usize {
        match self {
            Encap::Vwire => vwire::HEADER_LEN,
            Encap::Vxlan => vxlan::HEADER_LEN,
            Encap::Forward => migration::HEADER_LEN,
            Encap::Secure => secure::HEADER_LEN + udp::HEADER_LEN + vwire::HEADER_LEN,
            Encap::SecureVxlan => secure::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN,
        }
    }

    /// Bytes added in front of the inner frame: Ethernet + IPv4 + UDP + what
    /// [`header_len`](Self::header_len) counts (46 / 50; secure: 70 / 74).
    pub const fn overhead(self) -> usize {
        ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + self.header_len()
    }

    /// The most bytes added behind the inner frame: the ESP trailer and ICV of a secure
    /// format (21), 0 otherwise.
    pub const fn max_trailer_len(self) -> usize {
        if self.is_secure() {
            secure::MAX_TRAILER_LEN
        } else {
            0
        }
    }

    /// The usual UDP destination port: 4795 for vwire, 4789 (IANA) for VXLAN, 4796 for
    /// forwarded frames (the migration channel), 4500 for the secure formats (the datagram
    /// inside goes to the vwire or VXLAN port).
    pub const fn default_port(self) -> u16 {
        match self {
            Encap::Vwire => vwire::DEFAULT_PORT,
            Encap::Vxlan => vxlan::PORT,
            Encap::Forward => migration::DEFAULT_PORT,
            Encap::Secure | Encap::SecureVxlan => secure::PORT,
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
#[error("unknown encapsulation {0:?}; valid encapsulations are: vwire, vxlan, secure, secure-vxlan")]
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
const _: () = assert!(Encap::Secure.overhead() == 70 && Encap::SecureVxlan.overhead() == 74);

/// Largest outer header of any encapsulation.
pub const MAX_OVERHEAD: usize = Encap::SecureVxlan.overhead();

// Offsets of the per-packet fields inside the outer header.
const IP: usize = ethernet::HEADER_LEN;
const UDP: usize = IP + ipv4::HEADER_LEN;
const TUNNEL: usize = UDP + udp::HEADER_LEN;
const IP_TOTAL_LEN: usize = IP + ipv4::field::LENGTH.start;
const IP_CHECKSUM: usize = IP + ipv4::field::CHECKSUM.start;
const UDP_SRC_PORT: usize = UDP + udp::field::SRC_PORT.start;
const UDP_DST_PORT: usize = UDP + udp::field::DST_PORT.start;
const UDP_LENGTH: usize = UDP + udp::field::LENGTH.start;
// A secure format's protected datagram: its UDP header after the ESP header.
const INNER_UDP: usize = TUNNEL + secure::HEADER_LEN;
const INNER_TUNNEL: usize = INNER_UDP + udp::HEADER_LEN;
const INNER_UDP_SRC_PORT: usize = INNER_UDP + udp::field::SRC_PORT.start;
const INNER_UDP_LENGTH: usize = INNER_UDP + udp::field::LENGTH.start;

const _: () = assert!(TUNNEL == 42 && UDP_LENGTH + 2 <= TUNNEL && INNER_TUNNEL == 66);

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
    ///
    /// A secure format: the outer UDP header goes from and to port 4500 (RFC 3948); the ESP
    /// header's 16 bytes are left for the SA to write; the protected datagram's UDP header
    /// goes to `dst_port` (the vwire or VXLAN port), checksum 0, then the tunnel header.
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
        udp.set_src_port(if encap.is_secure() { secure::PORT } else { 0 });
        udp.set_dst_port(if encap.is_secure() { secure::PORT } else { dst_port });
        udp.set_len(0);
        udp.set_checksum(0);

        let tunnel = if encap.is_secure() {
            let mut inner = udp::Datagram::new_unchecked(&mut bytes[INNER_UDP..INNER_TUNNEL]);
            inner.set_src_port(0);
            inner.set_dst_port(dst_port);
            inner.set_len(0);
            inner.set_checksum(0);
            INNER_TUNNEL
        } else {
            TUNNEL
        };
        match encap {
            Encap::Vwire | Encap::Secure => vwire::Header::new_unchecked(&mut bytes[tunnel..]).set_connector(connector),
            Encap::Vxlan | Encap::SecureVxlan => {
                let mut h = vxlan::Header::new_unchecked(&mut bytes[tunnel..]);
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

    /// Length of the outer header: 46 (vwire), 50 (VXLAN), 70 (secure), 74 (secure VXLAN).
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

    /// UDP destination port (of the protected datagram, for a secure format).
    pub fn dst_port(&self) -> u16 {
        let at = if self.encap.is_secure() { INNER_UDP } else { UDP };
        udp::Datagram::new_unchecked(&self.bytes[at..at + udp::HEADER_LEN]).dst_port()
    }

    /// MTU of the underlay: the largest outer IPv4 packet.
    pub const fn underlay_mtu(&self) -> u16 {
        self.underlay_mtu
    }

    /// Longest inner Ethernet frame whose outer IPv4 packet fits the underlay MTU:
    /// `underlay_mtu - (20 + 8 + tunnel header)`, 0 if the MTU is smaller than that (see
    /// [`max_inner_len_for`]).
    #[inline]
    pub const fn max_inner_len(&self) -> usize {
        max_inner_len_for(self.encap, self.underlay_mtu)
    }

    /// Bytes this template's format puts behind an inner frame of `inner_len` bytes: for a
    /// secure format the ESP padding, pad length, next header and ICV; 0 otherwise.
    #[inline(always)]
    pub const fn trailer_len(&self, inner_len: usize) -> usize {
        if self.encap.is_secure() {
            secure::trailer_len(inner_len + self.encap.header_len() - secure::HEADER_LEN)
        } else {
            0
        }
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
    ///
    /// A secure format's lengths count the ESP trailer ([`trailer_len`](Self::trailer_len))
    /// too, and `src_port` goes to the protected datagram (the outer one stays 4500); the ESP
    /// header's bytes are the SA's to write when it seals.
    #[inline]
    pub fn write(&self, hdr: &mut [u8], inner_len: usize, src_port: u16) {
        debug_assert_eq!(hdr.len(), self.len(), "EncapTemplate::write: header slice of the wrong length");
        match self.encap {
            Encap::Vwire => self.write_fixed::<{ Encap::Vwire.overhead() }>(hdr, inner_len, src_port),
            Encap::Vxlan => self.write_fixed::<{ Encap::Vxlan.overhead() }>(hdr, inner_len, src_port),
            Encap::Forward => self.write_fixed::<{ Encap::Forward.overhead() }>(hdr, inner_len, src_port),
            Encap::Secure => self.write_secure::<{ Encap::Secure.overhead() }>(hdr, inner_len, src_port),
            Encap::SecureVxlan => self.write_secure::<{ Encap::SecureVxlan.overhead() }>(hdr, inner_len, src_port),
        }
    }

    #[inline(always)]
    fn write_secure<const N: usize>(&self, hdr: &mut [u8], inner_len: usize, src_port: u16) {
        let (Ok(hdr), Some(tpl)) = (<&mut [u8; N]>::try_from(hdr), self.bytes.first_chunk::<N>()) else {
            return;
        };
        *hdr = *tpl;
        let inner_udp_len = (inner_len as u16).wrapping_add((N - INNER_UDP) as u16);
        let trailer = secure::trailer_len(usize::from(inner_udp_len)) as u16;
        let udp_len = inner_udp_len.wrapping_add((udp::HEADER_LEN + secure::HEADER_LEN) as u16).wrapping_add(trailer);
        let total_len = udp_len.wrapping_add(ipv4::HEADER_LEN as u16);
        let ip_csum = !checksum::fold(self.ip_partial + u32::from(total_len));
        hdr[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&total_len.to_be_bytes());
        hdr[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&ip_csum.to_be_bytes());
        hdr[UDP_LENGTH..UDP_LENGTH + 2].copy_from_slice(&udp_len.to_be_bytes());
        hdr[INNER_UDP_SRC_PORT..INNER_UDP_SRC_PORT + 2].copy_from_slice(&src_port.to_be_bytes());
        hdr[INNER_UDP_LENGTH..INNER_UDP_LENGTH + 2].copy_from_slice(&inner_udp_len.to_be_bytes());
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

    /// Sets the outer UDP destination port of a header written by [`write`](Self::write) for a
    /// secure format: the far end's port as its NAT maps it (4500 without NAT). The UDP
    /// checksum is zero and the IPv4 checksum does not cover it, so nothing else changes.
    #[inline(always)]
    pub fn set_outer_dst_port(hdr: &mut [u8], port: u16) {
        if let Some(p) = hdr.get_mut(UDP_DST_PORT..UDP_DST_PORT + 2) {
            p.copy_from_slice(&port.to_be_bytes());
        }
    }

    /// Maps a flow hash to a UDP source port in 49152..=65535; same as [`source_port`].
    #[inline]
    pub const fn source_port(flow_hash: u32) -> u16 {
        source_port(flow_hash)
    }
}

/// Longest inner Ethernet frame an `encap` wire carries on an underlay of MTU `underlay_mtu`:
/// `underlay_mtu - (20 + 8 + tunnel header)`; for a secure format also less the ESP
/// header, the protected datagram's UDP header and the ESP trailer at its longest for that
/// length (padding to 4 bytes, 2, ICV 16). 0 if the MTU is smaller than the overhead.
pub const fn max_inner_len_for(encap: Encap, underlay_mtu: u16) -> usize {
    let room = (underlay_mtu as usize).saturating_sub(ipv4::HEADER_LEN + udp::HEADER_LEN);
    if !encap.is_secure() {
        return room.saturating_sub(encap.header_len());
    }
    // The encrypted part (datagram, padding, 2) is a multiple of 4 bytes.
    let body = room.saturating_sub(secure::HEADER_LEN + secure::ICV_LEN) & !3;
    body.saturating_sub(2 + encap.header_len() - secure::HEADER_LEN)
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
                let trailer = t.trailer_len(inner);
                assert_eq!(usize::from(ip.total_len()), 28 + encap.header_len() + inner + trailer);
                let udp = udp::Datagram::new_unchecked(&hdr[34..42]);
                assert_eq!(usize::from(udp.len()), 8 + encap.header_len() + inner + trailer);
                if encap.is_secure() {
                    // Outer 4500 -> 4500; the protected datagram has the flow's port.
                    assert_eq!((udp.src_port(), udp.dst_port()), (secure::PORT, secure::PORT));
                    let dgram = udp::Datagram::new_unchecked(&hdr[58..66]);
                    assert_eq!((dgram.src_port(), dgram.dst_port()), (65535, 4789));
                    assert_eq!(usize::from(dgram.len()), 8 + encap.tunnel().header_len() + inner);
                    // The encrypted part ends on a 4-byte boundary.
                    assert_eq!((usize::from(dgram.len()) + trailer - secure::ICV_LEN) % 4, 0);
                    assert!((18..=secure::MAX_TRAILER_LEN).contains(&trailer));
                } else {
                    assert_eq!((udp.src_port(), trailer), (65535, 0));
                }
            }
        }
    }

    #[test]
    fn secure_frames_fit_the_underlay() {
        for encap in [Encap::Secure, Encap::SecureVxlan] {
            for mtu in [576u16, 1280, 1500, 1501, 1502, 1503, 9000] {
                let t = EncapTemplate::new(encap, ConnectorId(3), SRC_MAC, DST_MAC, SRC_IP, DST_IP, 4795, mtu);
                let max = t.max_inner_len();
                let total = |inner: usize| 28 + encap.header_len() + inner + t.trailer_len(inner);
                assert!(total(max) <= usize::from(mtu), "{encap} {mtu}");
                // Not one byte more fits (padding may make it four).
                assert!((1..=4).any(|more| total(max + more) > usize::from(mtu)), "{encap} {mtu}");
            }
            assert_eq!(max_inner_len_for(encap, 60), 0);
        }
        assert_eq!(max_inner_len_for(Encap::Secure, 1500), 1426);
        assert_eq!(max_inner_len_for(Encap::SecureVxlan, 1500), 1422);
    }

    #[test]
    fn encap_names() {
        assert_eq!("vwire".parse::<Encap>(), Ok(Encap::Vwire));
        assert_eq!("vxlan".parse::<Encap>(), Ok(Encap::Vxlan));
        let err = "gre".parse::<Encap>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown encapsulation \"gre\"; valid encapsulations are: vwire, vxlan, secure, secure-vxlan"
        );
        assert_eq!("secure-vxlan".parse::<Encap>(), Ok(Encap::SecureVxlan));
        assert_eq!((Encap::Secure.tunnel(), Encap::SecureVxlan.tunnel()), (Encap::Vwire, Encap::Vxlan));
        assert_eq!((Encap::Vwire.secured(), Encap::Forward.secured()), (Some(Encap::Secure), None));
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
