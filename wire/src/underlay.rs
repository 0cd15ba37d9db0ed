//! Classification of frames received on the uplink (the underlay port).
//!
//! [`classify`] decides, once per received frame, whether it is a tunnel packet for one of our
//! wires (vwire or VXLAN, RFC 7348 §5), an ARP packet or an ICMP echo request for our VTEP
//! address, and otherwise which [`UnderlayError`] counter to bump. It only reads the
//! contiguous first segment, allocates nothing and never panics. Looking the connector up in
//! the wire table and checking the source VTEP are left to the caller. A non-zero UDP checksum
//! is verified (RFC 7348 §5: senders SHOULD send zero and a decapsulating end point MAY verify
//! a non-zero one, as Linux does), unless the receiving device already did.

use std::net::Ipv4Addr;

use crate::encap::{secure, Encap, EncapTemplate};
use crate::ethernet::{self, ethertype, MacAddr};
use crate::table::ConnectorId;
use crate::{arp, icmpv4, ipv4, migration, udp, vwire, vxlan};

/// What the uplink answers to and terminates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnderlayConfig {
    /// Our VTEP address: tunnel packets, ARP and pings are for it.
    pub vtep_ip: Ipv4Addr,
    /// The uplink's MAC address.
    pub mac: MacAddr,
    /// UDP destination port of vwire tunnels.
    pub vwire_port: u16,
    /// UDP destination port of VXLAN tunnels.
    pub vxlan_port: u16,
    /// UDP destination port of the migration channel ([`crate::migration`]); 0: none.
    pub migration_port: u16,
}

/// An accepted uplink frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// A tunnel packet: strip `outer_len`, trim `trailer_len`, deliver the inner frame.
    Tunnel(Decap),
    /// An ARP packet (at least 14 + 28 bytes); check it with [`arp::parse`].
    Arp,
    /// A valid ICMP echo request to our VTEP; answer it with [`icmpv4::echo_reply_in_place`].
    IcmpEcho,
    /// A control message of the migration channel (LOCATE, ACK, MOVED) for the control
    /// plane, which authenticates it; the UDP payload starts at byte 42.
    Migration,
    /// ESP in UDP (RFC 3948) for a secure wire: open it with the SA of its SPI, then read
    /// the datagram inside with [`classify_secure`].
    Esp(EspPacket),
    /// A NAT keepalive (RFC 3948 §2.3: one 0xFF byte to port 4500): nothing to deliver.
    NatKeepalive,
}

/// Where a received ESP packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspPacket {
    /// Its SPI.
    pub spi: u32,
    /// Outer IPv4 source.
    pub src_ip: Ipv4Addr,
    /// Outer UDP source port (4500, or a NAT's mapping of it).
    pub src_port: u16,
    /// Length of the ESP packet, from the SPI to the end of the ICV; it starts at byte
    /// [`ESP_OFFSET`].
    pub len: usize,
    /// Bytes after the IPv4 packet (Ethernet padding).
    pub trailer_len: usize,
}

/// Where an ESP packet starts in an uplink frame: after Ethernet, IPv4 and UDP.
pub const ESP_OFFSET: usize = TUNNEL;

/// How to decapsulate a tunnel packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decap {
    /// Which encapsulation it arrived in.
    pub encap: Encap,
    /// The connector ID (vwire) or VNI (VXLAN).
    pub connector: ConnectorId,
    /// Outer IPv4 source: the sending VTEP.
    pub src_ip: Ipv4Addr,
    /// Bytes to strip: Ethernet + IPv4 + UDP + tunnel header.
    pub outer_len: usize,
    /// Length of the inner Ethernet frame.
    pub inner_len: usize,
    /// Bytes after the IPv4 packet (Ethernet padding) to trim.
    pub trailer_len: usize,
}

/// Why [`classify`] dropped an uplink frame; each variant is a user-visible counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UnderlayError {
    /// Shorter than an Ethernet header.
    Runt = 0,
    /// Ethernet destination neither our MAC, nor broadcast, nor multicast.
    NotOurMac = 1,
    /// ARP EtherType but shorter than 14 + 28 bytes.
    ArpMalformed = 2,
    /// EtherType neither ARP nor IPv4 (IPv6, VLAN-tagged, LLDP, ...).
    NotIpv4 = 3,
    /// Not enough bytes for an IPv4 header.
    Ipv4Truncated = 4,
    /// IP version is not 4.
    Ipv4Version = 5,
    /// IHL below 5.
    Ipv4HeaderLength = 6,
    /// IHL above 5 (options).
    Ipv4Options = 7,
    /// Total length below 20 or beyond the frame.
    Ipv4TotalLength = 8,
    /// Bad IPv4 header checksum.
    Ipv4Checksum = 9,
    /// A fragment (MF set or non-zero offset).
    Ipv4Fragment = 10,
    /// IPv4 destination is not our VTEP address.
    NotOurAddress = 11,
    /// ICMP other than a valid echo request.
    IcmpOther = 12,
    /// IP protocol neither ICMP nor UDP.
    IpProtocol = 13,
    /// Not enough bytes for a UDP header.
    UdpTruncated = 14,
    /// UDP length disagrees with the IPv4 total length.
    UdpLength = 15,
    /// UDP destination port is not the vwire, VXLAN or migration port.
    UdpPort = 16,
    /// UDP payload shorter than the tunnel header.
    TunnelTruncated = 17,
    /// VXLAN header without the I flag.
    VxlanFlags = 18,
    /// Inner frame shorter than an Ethernet header.
    InnerRunt = 19,
    /// On the migration port: unknown version or message type.
    MigrationHeader = 20,
    /// A non-zero UDP checksum that does not verify (RFC 768; RFC 7348 §5
    /// lets a VXLAN receiver verify it, as Linux does).
    UdpChecksum = 21,
    /// On port 4500: too short for an ESP header, a trailer and an ICV, and not a NAT
    /// keepalive.
    EspTruncated = 22,
    /// On port 4500: an IKE message (the non-ESP marker); keys come from key files or the
    /// directory, no IKE daemon runs here.
    EspIke = 23,
    /// An authenticated ESP packet whose datagram is not a vwire or VXLAN datagram to our
    /// ports (its UDP length, port or tunnel header).
    SecureInner = 24,
}

impl UnderlayError {
    /// Number of variants.
    pub const COUNT: usize = 25;

    /// Every variant, in discriminant order (`ALL[e as usize] == e`).
    pub const ALL: [UnderlayError; UnderlayError::COUNT] = [
        UnderlayError::Runt,
        UnderlayError::NotOurMac,
        UnderlayError::ArpMalformed,
        UnderlayError::NotIpv4,
        UnderlayError::Ipv4Truncated,
        UnderlayError::Ipv4Version,
        UnderlayError::Ipv4HeaderLength,
        UnderlayError::Ipv4Options,
        UnderlayError::Ipv4TotalLength,
        UnderlayError::Ipv4Checksum,
        UnderlayError::Ipv4Fragment,
        UnderlayError::NotOurAddress,
        UnderlayError::IcmpOther,
        UnderlayError::IpProtocol,
        UnderlayError::UdpTruncated,
        UnderlayError::UdpLength,
        UnderlayError::UdpPort,
        UnderlayError::TunnelTruncated,
        UnderlayError::VxlanFlags,
        UnderlayError::InnerRunt,
        UnderlayError::MigrationHeader,
        UnderlayError::UdpChecksum,
        UnderlayError::EspTruncated,
        UnderlayError::EspIke,
        UnderlayError::SecureInner,
    ];

    /// Index for counter arrays: the discriminant, `0..COUNT`.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case counter name.
    pub const fn name(self) -> &'static str {
        match self {
            UnderlayError::Runt => "runt",
            UnderlayError::NotOurMac => "not_our_mac",
            UnderlayError::ArpMalformed => "arp_malformed",
            UnderlayError::NotIpv4 => "not_ipv4",
            UnderlayError::Ipv4Truncated => "ipv4_truncated",
            UnderlayError::Ipv4Version => "ipv4_version",
            UnderlayError::Ipv4HeaderLength => "ipv4_header_length",
            UnderlayError::Ipv4Options => "ipv4_options",
            UnderlayError::Ipv4TotalLength => "ipv4_total_length",
            UnderlayError::Ipv4Checksum => "ipv4_checksum",
            UnderlayError::Ipv4Fragment => "ipv4_fragment",
            UnderlayError::NotOurAddress => "not_our_address",
            UnderlayError::IcmpOther => "icmp_other",
            UnderlayError::IpProtocol => "ip_protocol",
            UnderlayError::UdpTruncated => "udp_truncated",
            UnderlayError::UdpLength => "udp_length",
            UnderlayError::UdpPort => "udp_port",
            UnderlayError::TunnelTruncated => "tunnel_truncated",
            UnderlayError::VxlanFlags => "vxlan_flags",
            UnderlayError::InnerRunt => "inner_runt",
            UnderlayError::MigrationHeader => "migration_header",
            UnderlayError::UdpChecksum => "udp_checksum",
            UnderlayError::EspTruncated => "esp_truncated",
            UnderlayError::EspIke => "esp_ike",
            UnderlayError::SecureInner => "secure_inner",
        }
    }

    /// One-line human description.
    pub const fn describe(self) -> &'static str {
        match self {
            UnderlayError::Runt => "frame shorter than an Ethernet header (14 bytes)",
            UnderlayError::NotOurMac => "Ethernet destination is not our MAC, broadcast or multicast",
            UnderlayError::ArpMalformed => "ARP frame shorter than 42 bytes",
            UnderlayError::NotIpv4 => "EtherType is neither IPv4 nor ARP (IPv6, VLAN-tagged, LLDP, ...)",
            UnderlayError::Ipv4Truncated => "frame too short for an IPv4 header",
            UnderlayError::Ipv4Version => "IP version is not 4",
            UnderlayError::Ipv4HeaderLength => "IPv4 header length (IHL) below 5 words",
            UnderlayError::Ipv4Options => "IPv4 header carries options (IHL above 5)",
            UnderlayError::Ipv4TotalLength => "IPv4 total length below 20 or beyond the end of the frame",
            UnderlayError::Ipv4Checksum => "bad IPv4 header checksum",
            UnderlayError::Ipv4Fragment => "IPv4 fragment (fragmented tunnel packets are not reassembled)",
            UnderlayError::NotOurAddress => "IPv4 destination is not our VTEP address",
            UnderlayError::IcmpOther => "ICMP message other than a valid echo request",
            UnderlayError::IpProtocol => "IP protocol is neither UDP nor ICMP",
            UnderlayError::UdpTruncated => "packet too short for a UDP header",
            UnderlayError::UdpLength => "UDP length disagrees with the IPv4 total length",
            UnderlayError::UdpPort => "UDP destination port is not the vwire, VXLAN, ESP (4500) or migration port",
            UnderlayError::TunnelTruncated => "UDP payload shorter than the tunnel header",
            UnderlayError::VxlanFlags => "VXLAN header without the I (valid VNI) flag",
            UnderlayError::InnerRunt => "inner frame shorter than an Ethernet header",
            UnderlayError::MigrationHeader => "migration channel datagram of unknown version or type",
            UnderlayError::UdpChecksum => "non-zero UDP checksum that does not verify",
            UnderlayError::EspTruncated => "datagram to port 4500 too short for ESP and not a NAT keepalive",
            UnderlayError::EspIke => "IKE message to port 4500 (keys come from key files; no IKE here)",
            UnderlayError::SecureInner => "authenticated ESP packet whose datagram is not vwire or VXLAN to our ports",
        }
    }
}

impl core::fmt::Display for UnderlayError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for UnderlayError {}

const _: () = {
    let mut i = 0;
    while i < UnderlayError::COUNT {
        assert!(UnderlayError::ALL[i] as usize == i);
        i += 1;
    }
};

// Offsets inside the frame.
const IP: usize = ethernet::HEADER_LEN;
const UDP: usize = IP + ipv4::HEADER_LEN;
const TUNNEL: usize = UDP + udp::HEADER_LEN;
const VWIRE_END: usize = TUNNEL + vwire::HEADER_LEN;
const VXLAN_END: usize = TUNNEL + vxlan::HEADER_LEN;

const _: () = assert!(UDP == 34 && TUNNEL == 42 && VWIRE_END == 46 && VXLAN_END == 50);
const _: () = assert!(VWIRE_END == Encap::Vwire.overhead() && VXLAN_END == Encap::Vxlan.overhead());

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

/// True if the 20-byte IPv4 header at `IP` in `h` sums to 0xffff (RFC 1071).
///
/// The one's complement sum does not depend on byte order (RFC 1071 §2(B)),
/// and 0xffff reads the same both ways, so five native 32-bit words are
/// added and folded: no byte swapping, no loop.
#[inline(always)]
fn ipv4_header_checksum_ok(h: &[u8; UDP]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let s = w(IP) + w(IP + 4) + w(IP + 8) + w(IP + 12) + w(IP + 16);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

/// Classifies a frame received on the uplink.
///
/// `data` is the contiguous first part of the frame (the first mbuf segment), `pkt_len` its
/// total length (`>= data.len()`). Headers must lie in `data`; lengths are checked against
/// `pkt_len`. For a tunnel packet, the inner Ethernet header must also lie in `data`, so
/// `outer_len + 14 <= data.len()`, and `outer_len + inner_len + trailer_len == pkt_len`.
/// Checks run in the order of the [`UnderlayError`] variants; the first failing one is returned.
#[inline]
pub fn classify(data: &[u8], pkt_len: usize, cfg: &UnderlayConfig) -> Result<Underlay, UnderlayError> {
    classify_verified(data, pkt_len, cfg, false)
}

/// [`classify`], for a frame whose UDP checksum the receiving device has
/// already verified as correct when `udp_checksum_good` (it is not
/// computed again); any other verdict of the device is checked here.
pub fn classify_verified(
    data: &[u8],
    pkt_len: usize,
    cfg: &UnderlayConfig,
    udp_checksum_good: bool,
) -> Result<Underlay, UnderlayError> {
    use UnderlayError as E;

    // 1-2. Ethernet (IEEE 802.3): for us, broadcast or multicast (I/G bit).
    let Some(eth) = data.first_chunk::<IP>() else {
        return Err(E::Runt);
    };
    if pkt_len < IP {
        return Err(E::Runt);
    }
    let dst = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    if dst != cfg.mac.0 && dst[0] & 0x01 == 0 {
        return Err(E::NotOurMac);
    }

    // 3-4. EtherType.
    let et = be16(eth[12], eth[13]);
    if et == ethertype::ARP {
        return if data.len() < IP + arp::HEADER_LEN { Err(E::ArpMalformed) } else { Ok(Underlay::Arp) };
    }
    if et != ethertype::IPV4 {
        return Err(E::NotIpv4);
    }

    // 5. IPv4 header (RFC 791 §3.1).
    let Some(h) = data.first_chunk::<UDP>() else {
        return Err(E::Ipv4Truncated);
    };
    let ver_ihl = h[IP];
    if ver_ihl >> 4 != 4 {
        return Err(E::Ipv4Version);
    }
    if ver_ihl & 0x0f < 5 {
        return Err(E::Ipv4HeaderLength);
    }
    if ver_ihl & 0x0f > 5 {
        return Err(E::Ipv4Options);
    }
    let total_len = usize::from(be16(h[IP + 2], h[IP + 3]));
    if total_len < ipv4::HEADER_LEN || IP + total_len > pkt_len {
        return Err(E::Ipv4TotalLength);
    }
    if !ipv4_header_checksum_ok(h) {
        return Err(E::Ipv4Checksum);
    }
    // Flags + fragment offset: MF (0x2000) or any offset bit (0x1fff); DF is fine.
    if be16(h[IP + 6], h[IP + 7]) & 0x3fff != 0 {
        return Err(E::Ipv4Fragment);
    }
    if [h[IP + 16], h[IP + 17], h[IP + 18], h[IP + 19]] != cfg.vtep_ip.octets() {
        return Err(E::NotOurAddress);
    }
    let src_ip = Ipv4Addr::new(h[IP + 12], h[IP + 13], h[IP + 14], h[IP + 15]);
    let protocol = h[IP + 9];

    // 6. ICMP (RFC 792): only well-formed echo requests are answered.
    if protocol == ipv4::protocol::ICMP {
        let icmp_len = total_len - ipv4::HEADER_LEN;
        return match data.get(UDP..UDP + icmp_len) {
            Some(icmp @ [icmpv4::message::ECHO_REQUEST, 0, ..])
                if icmp_len >= icmpv4::HEADER_LEN && crate::checksum::fold(crate::checksum::sum(icmp)) == 0xffff =>
            {
                Ok(Underlay::IcmpEcho)
            }
            _ => Err(E::IcmpOther),
        };
    }

    // 7-8. UDP (RFC 768).
    if protocol != ipv4::protocol::UDP {
        return Err(E::IpProtocol);
    }
    let Some(h) = data.first_chunk::<TUNNEL>() else {
        return Err(E::UdpTruncated);
    };
    if total_len < ipv4::HEADER_LEN + udp::HEADER_LEN {
        return Err(E::UdpTruncated);
    }
    let udp_len = usize::from(be16(h[UDP + 4], h[UDP + 5]));
    if udp_len != total_len - ipv4::HEADER_LEN {
        return Err(E::UdpLength);
    }
    // A sender that computed the UDP checksum (zero: it did not) covered
    // the whole datagram. A field that holds just the pseudo-header sum is
    // a sender's checksum offload that no NIC completed (Linux leaves it so
    // on veth and tap links, as the kernel trusts such frames): nothing was
    // computed, nothing to check. Any other value is verified over the
    // datagram, which must then lie in this segment: the fabric refuses an
    // underlay MTU whose frames do not fit one mbuf, so only a device that
    // split a frame anyway leaves one it cannot verify here, and such a
    // frame is not taken on trust.
    let field = be16(h[UDP + 6], h[UDP + 7]);
    if field != 0 && !udp_checksum_good {
        let src = Ipv4Addr::new(h[IP + 12], h[IP + 13], h[IP + 14], h[IP + 15]);
        let pseudo = crate::checksum::fold(crate::checksum::pseudo_header_v4(
            src,
            cfg.vtep_ip,
            ipv4::protocol::UDP,
            udp_len as u16,
        ));
        if field != pseudo {
            let Some(dgram) = data.get(UDP..UDP + udp_len) else {
                return Err(E::UdpChecksum);
            };
            let sum = u32::from(pseudo) + u32::from(crate::checksum::fold(crate::checksum::sum(dgram)));
            if crate::checksum::fold(sum) != 0xffff {
                return Err(E::UdpChecksum);
            }
        }
    }

    // 9-10. Tunnel header.
    let dst_port = be16(h[UDP + 2], h[UDP + 3]);
    let udp_payload = udp_len - udp::HEADER_LEN;
    if dst_port == secure::PORT {
        // RFC 3948 §2.2: a keepalive, IKE (four zero bytes), or ESP.
        let payload = data.get(TUNNEL..TUNNEL + udp_payload);
        return match payload {
            Some([0xff]) => Ok(Underlay::NatKeepalive),
            Some([0, 0, 0, 0, ..]) => Err(E::EspIke),
            Some(p) if udp_payload >= secure::HEADER_LEN + 2 + secure::ICV_LEN => Ok(Underlay::Esp(EspPacket {
                spi: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                src_ip,
                src_port: be16(h[UDP], h[UDP + 1]),
                len: udp_payload,
                trailer_len: pkt_len - IP - total_len,
            })),
            _ => Err(E::EspTruncated),
        };
    }
    let (encap, connector) = if dst_port == cfg.vwire_port {
        match data.first_chunk::<VWIRE_END>() {
            Some(h) if udp_payload >= vwire::HEADER_LEN => {
                (Encap::Vwire, u32::from_be_bytes([h[TUNNEL], h[TUNNEL + 1], h[TUNNEL + 2], h[TUNNEL + 3]]))
            }
            _ => return Err(E::TunnelTruncated),
        }
    } else if dst_port == cfg.vxlan_port {
        match data.first_chunk::<VXLAN_END>() {
            Some(h) if udp_payload >= vxlan::HEADER_LEN => {
                // RFC 7348 §5: only the I flag matters, reserved bits are ignored.
                if h[TUNNEL] & vxlan::FLAG_I == 0 {
                    return Err(E::VxlanFlags);
                }
                (Encap::Vxlan, u32::from_be_bytes([0, h[TUNNEL + 4], h[TUNNEL + 5], h[TUNNEL + 6]]))
            }
            _ => return Err(E::TunnelTruncated),
        }
    } else if dst_port == cfg.migration_port && dst_port != 0 {
        match data.first_chunk::<VXLAN_END>() {
            Some(h) if udp_payload >= migration::HEADER_LEN => {
                if h[TUNNEL] != migration::VERSION {
                    return Err(E::MigrationHeader);
                }
                match h[TUNNEL + 1] {
                    migration::kind::FORWARD => (
                        Encap::Forward,
                        u32::from_be_bytes([h[TUNNEL + 4], h[TUNNEL + 5], h[TUNNEL + 6], h[TUNNEL + 7]]),
                    ),
                    migration::kind::LOCATE
                    | migration::kind::ACK
                    | migration::kind::MOVED
                    | migration::kind::FLUSHED => return Ok(Underlay::Migration),
                    _ => return Err(E::MigrationHeader),
                }
            }
            _ => return Err(E::TunnelTruncated),
        }
    } else {
        return Err(E::UdpPort);
    };

    // 11. The inner Ethernet header must be there, in the first segment.
    let outer_len = encap.overhead();
    let inner_len = udp_payload - encap.header_len();
    if inner_len < ethernet::HEADER_LEN || data.len() < outer_len + ethernet::HEADER_LEN {
        return Err(E::InnerRunt);
    }

    // 12. Whatever follows the IPv4 packet is Ethernet padding.
    Ok(Underlay::Tunnel(Decap {
        encap,
        connector: ConnectorId(connector),
        src_ip,
        outer_len,
        inner_len,
        trailer_len: pkt_len - IP - total_len,
    }))
}

/// Reads the datagram an authenticated ESP packet carried (`payload`: its UDP header, the
/// tunnel header and the frame): returns the secure format, the connector ID and where the
/// inner frame starts in `payload`. The datagram's UDP checksum is not checked: the ICV
/// covered it (RFC 3948 §3.1.2 lets a transport-mode receiver ignore it). Never panics.
pub fn classify_secure(payload: &[u8], cfg: &UnderlayConfig) -> Result<(Encap, ConnectorId, usize), UnderlayError> {
    use UnderlayError as E;
    let Some(h) = payload.first_chunk::<{ udp::HEADER_LEN }>() else {
        return Err(E::SecureInner);
    };
    if usize::from(be16(h[4], h[5])) != payload.len() {
        return Err(E::SecureInner);
    }
    let dst_port = be16(h[2], h[3]);
    let t = udp::HEADER_LEN;
    let (encap, connector) = match payload.get(t..t + vxlan::HEADER_LEN.max(vwire::HEADER_LEN)) {
        Some(v) if dst_port == cfg.vwire_port => (Encap::Secure, u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        Some(v) if dst_port == cfg.vxlan_port && v[0] & vxlan::FLAG_I != 0 => {
            (Encap::SecureVxlan, u32::from_be_bytes([0, v[4], v[5], v[6]]))
        }
        _ => return Err(E::SecureInner),
    };
    let at = t + encap.tunnel().header_len();
    if payload.len() < at + ethernet::HEADER_LEN {
        return Err(E::InnerRunt);
    }
    Ok((encap, ConnectorId(connector), at))
}

/// Builds a whole tunnel frame: `template`'s outer headers written for `inner`, then `inner`.
/// For tests and tools; allocates.
pub fn build_tunnel_frame(template: &EncapTemplate, inner: &[u8], src_port: u16) -> Vec<u8> {
    let mut frame = vec![0u8; template.len() + inner.len()];
    let (hdr, body) = frame.split_at_mut(template.len());
    template.write(hdr, inner.len(), src_port);
    body.copy_from_slice(inner);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;

    const OUR_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x02);
    const PEER_MAC: MacAddr = MacAddr::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x01);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    const CFG: UnderlayConfig = UnderlayConfig {
        vtep_ip: OUR_IP,
        mac: OUR_MAC,
        vwire_port: vwire::DEFAULT_PORT,
        vxlan_port: vxlan::PORT,
        migration_port: migration::DEFAULT_PORT,
    };

    // A VXLAN packet exactly as Linux's vxlan driver sent it (`id 4242 dstport 4789`, captured
    // on the receiving veth), carrying an ICMP echo request 10.200.0.1 -> 10.200.0.2. Its UDP
    // checksum field holds only the pseudo-header sum (0x49b0): checksum offload on a veth.
    static LINUX_VXLAN: [u8; 108] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x5e, 0x30, 0xf4, 0x00, 0x00, 0x40, 0x11, 0x00, 0x47, 0xc0, 0xa8, 0x64, 0x01, 0xc0, 0xa8, //
        0x64, 0x02, 0x88, 0x20, 0x12, 0xb5, 0x00, 0x4a, 0x49, 0xb0, 0x08, 0x00, 0x00, 0x00, 0x00, 0x10, //
        0x92, 0x00, 0x02, 0x00, 0x00, 0x00, 0xaa, 0x02, 0x02, 0x00, 0x00, 0x00, 0xaa, 0x01, 0x08, 0x00, //
        0x45, 0x00, 0x00, 0x2c, 0x3d, 0x88, 0x40, 0x00, 0x40, 0x01, 0xe7, 0xb6, 0x0a, 0xc8, 0x00, 0x01, //
        0x0a, 0xc8, 0x00, 0x02, 0x08, 0x00, 0x24, 0x03, 0x1e, 0x18, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, //
        0x00, 0x00, 0x00, 0x00, 0x61, 0xbb, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    // ICMP echo request from Linux `ping -s 16 192.168.100.2` (58 bytes, as captured).
    static LINUX_PING: [u8; 58] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x00, 0x45, 0x00, //
        0x00, 0x2c, 0x79, 0xc2, 0x40, 0x00, 0x40, 0x01, 0x77, 0xba, 0xc0, 0xa8, 0x64, 0x01, 0xc0, 0xa8, //
        0x64, 0x02, 0x08, 0x00, 0xf2, 0x0d, 0x1e, 0x17, 0x00, 0x01, 0x4c, 0xbd, 0x05, 0x6b, 0x00, 0x00, //
        0x00, 0x00, 0x93, 0xb1, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    // Broadcast ARP request from Linux: who-has 192.168.100.2 tell 192.168.100.1.
    static LINUX_ARP: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0x08, 0x06, 0x00, 0x01, //
        0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x01, 0xc0, 0xa8, 0x64, 0x01, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x64, 0x02,
    ];

    fn template(encap: Encap, id: u32) -> EncapTemplate {
        EncapTemplate::new(encap, ConnectorId(id), PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, encap.default_port(), 1500)
    }

    fn inner(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn tunnel(encap: Encap) -> Vec<u8> {
        build_tunnel_frame(&template(encap, 7), &inner(64), 50000)
    }

    fn run(frame: &[u8]) -> Result<Underlay, UnderlayError> {
        classify(frame, frame.len(), &CFG)
    }

    /// Recomputes the outer IPv4 header checksum after a test edited the header.
    fn fix_ip(frame: &mut [u8]) {
        ipv4::Packet::new_unchecked(&mut frame[IP..UDP]).fill_checksum();
    }

    /// Sets the IPv4 total length and UDP length to match a frame of `len` bytes.
    fn fix_lengths(frame: &mut Vec<u8>, len: usize) {
        frame.resize(len, 0);
        let total = (len - IP) as u16;
        frame[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
        frame[UDP + 4..UDP + 6].copy_from_slice(&(total - 20).to_be_bytes());
        fix_ip(frame);
    }

    #[test]
    fn linux_vxlan_frame() {
        let d = match run(&LINUX_VXLAN) {
            Ok(Underlay::Tunnel(d)) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            d,
            Decap {
                encap: Encap::Vxlan,
                connector: ConnectorId(4242),
                src_ip: PEER_IP,
                outer_len: 50,
                inner_len: 58,
                trailer_len: 0
            }
        );
        let inner = ethernet::Frame::new_checked(&LINUX_VXLAN[d.outer_len..]).unwrap();
        assert_eq!(inner.dst(), MacAddr::new(0x02, 0, 0, 0, 0xaa, 0x02));
        assert_eq!(inner.ethertype(), ethertype::IPV4);
        assert_eq!(inner.payload().len() + ethernet::HEADER_LEN, d.inner_len);
    }

    #[test]
    fn happy_paths_both_formats() {
        for encap in [Encap::Vwire, Encap::Vxlan] {
            let frame = build_tunnel_frame(&template(encap, 0x00ab_cdef), &inner(100), 51000);
            let expected = Decap {
                encap,
                connector: ConnectorId(0x00ab_cdef),
                src_ip: PEER_IP,
                outer_len: encap.overhead(),
                inner_len: 100,
                trailer_len: 0,
            };
            assert_eq!(run(&frame), Ok(Underlay::Tunnel(expected)));
            assert_eq!(&frame[expected.outer_len..], &inner(100)[..]);
        }
        // vwire carries the full 32 bits.
        let frame = build_tunnel_frame(&template(Encap::Vwire, u32::MAX), &inner(14), 1);
        assert!(matches!(run(&frame), Ok(Underlay::Tunnel(Decap { connector: ConnectorId(u32::MAX), .. }))));
    }

    #[test]
    fn padded_frames() {
        // The smallest vwire packet (46 + 14-byte inner frame) is exactly the 60-byte minimum.
        let frame = build_tunnel_frame(&template(Encap::Vwire, 9), &inner(14), 50001);
        assert_eq!(frame.len(), 60);
        assert!(matches!(run(&frame), Ok(Underlay::Tunnel(Decap { inner_len: 14, trailer_len: 0, .. }))));
        // A 60-byte minimum frame whose small tunnel packet (inner 10 bytes) was padded by the
        // sender: the padding is not inner data.
        let mut frame = build_tunnel_frame(&template(Encap::Vwire, 9), &inner(10), 50001);
        frame.resize(60, 0);
        assert_eq!(run(&frame), Err(UnderlayError::InnerRunt));
        // Padding (or a trailer the NIC left) after valid packets of both formats.
        for encap in [Encap::Vwire, Encap::Vxlan] {
            for (inner_len, padded_to) in [(14, 60), (14, 64), (20, 128), (100, 200)] {
                let mut frame = build_tunnel_frame(&template(encap, 9), &inner(inner_len), 50001);
                let ip_end = frame.len();
                frame.resize(ip_end.max(padded_to), 0);
                let d = match run(&frame) {
                    Ok(Underlay::Tunnel(d)) => d,
                    other => panic!("{other:?}"),
                };
                assert_eq!((d.outer_len, d.inner_len), (encap.overhead(), inner_len));
                assert_eq!(d.trailer_len, frame.len() - ip_end);
                assert_eq!(d.outer_len + d.inner_len + d.trailer_len, frame.len());
            }
        }
        // A 60-byte minimum ARP / ICMP frame is fine too (see arp_and_icmp).
    }

    #[test]
    fn split_first_segment() {
        let frame = tunnel(Encap::Vxlan);
        // Headers and inner Ethernet header in the first segment: fine.
        assert!(matches!(classify(&frame[..64], frame.len(), &CFG), Ok(Underlay::Tunnel(_))));
        // Inner Ethernet header split across segments.
        assert_eq!(classify(&frame[..63], frame.len(), &CFG), Err(UnderlayError::InnerRunt));
        assert_eq!(classify(&frame[..49], frame.len(), &CFG), Err(UnderlayError::TunnelTruncated));
        assert_eq!(classify(&frame[..41], frame.len(), &CFG), Err(UnderlayError::UdpTruncated));
        assert_eq!(classify(&frame[..33], frame.len(), &CFG), Err(UnderlayError::Ipv4Truncated));
    }

    #[test]
    fn arp_and_icmp() {
        assert_eq!(run(&LINUX_ARP), Ok(Underlay::Arp));
        assert_eq!(run(&LINUX_PING), Ok(Underlay::IcmpEcho));
        let mut padded = [0u8; 60];
        padded[..58].copy_from_slice(&LINUX_PING);
        assert_eq!(run(&padded), Ok(Underlay::IcmpEcho));
        let mut padded = [0u8; 60];
        padded[..42].copy_from_slice(&LINUX_ARP);
        assert_eq!(run(&padded), Ok(Underlay::Arp));
        // Unicast to us, multicast: accepted at L2.
        let mut unicast = LINUX_ARP;
        unicast[..6].copy_from_slice(&OUR_MAC.0);
        assert_eq!(run(&unicast), Ok(Underlay::Arp));
    }

    /// A frame, its first-segment length and its total length.
    type Case = (Vec<u8>, usize, usize);

    fn whole(frame: Vec<u8>) -> Case {
        let len = frame.len();
        (frame, len, len)
    }

    /// A valid vwire tunnel frame edited by `edit`.
    fn edited(encap: Encap, edit: impl FnOnce(&mut Vec<u8>)) -> Case {
        let mut f = tunnel(encap);
        edit(&mut f);
        whole(f)
    }

    /// Frames that must produce exactly `err`.
    fn cases(err: UnderlayError) -> Vec<Case> {
        use UnderlayError as E;
        let vw = Encap::Vwire;
        match err {
            E::Runt => vec![
                whole(LINUX_ARP[..13].to_vec()),
                whole(Vec::new()),
                (tunnel(vw), 13, 64 + 46),
                (tunnel(vw), 20, 13), // inconsistent pkt_len from a caller: still no panic
            ],
            E::NotOurMac => vec![edited(vw, |f| f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]))],
            E::ArpMalformed => vec![whole(LINUX_ARP[..41].to_vec()), (LINUX_ARP.to_vec(), 41, 60)],
            E::NotIpv4 => [ethertype::IPV6, ethertype::VLAN, ethertype::QINQ, ethertype::LLDP]
                .into_iter()
                .map(|et| edited(vw, |f| f[12..14].copy_from_slice(&et.to_be_bytes())))
                .collect(),
            E::Ipv4Truncated => vec![whole(tunnel(vw)[..33].to_vec()), (tunnel(vw), 33, 64 + 46)],
            E::Ipv4Version => vec![edited(vw, |f| {
                f[IP] = 0x65;
                fix_ip(f);
            })],
            E::Ipv4HeaderLength => vec![edited(vw, |f| f[IP] = 0x44), edited(vw, |f| f[IP] = 0x40)],
            E::Ipv4Options => vec![edited(vw, |f| f[IP] = 0x46), edited(vw, |f| f[IP] = 0x4f)],
            E::Ipv4TotalLength => {
                let f = tunnel(vw);
                let short = f.len() - 1;
                vec![
                    (f.clone(), short, short),
                    edited(vw, |f| {
                        f[IP + 2..IP + 4].copy_from_slice(&19u16.to_be_bytes());
                        fix_ip(f);
                    }),
                ]
            }
            E::Ipv4Checksum => vec![edited(vw, |f| f[IP + 10] ^= 0x01), edited(vw, |f| f[IP + 8] = 63)],
            E::Ipv4Fragment => [0x2000u16, 0x0001, 0x4001, 0x3fff]
                .into_iter()
                .map(|flags| {
                    edited(vw, |f| {
                        f[IP + 6..IP + 8].copy_from_slice(&flags.to_be_bytes());
                        fix_ip(f);
                    })
                })
                .collect(),
            E::NotOurAddress => [Ipv4Addr::new(192, 168, 100, 3), Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 1)]
                .into_iter()
                .map(|dst| {
                    edited(vw, |f| {
                        f[IP + 16..IP + 20].copy_from_slice(&dst.octets());
                        fix_ip(f);
                    })
                })
                .collect(),
            E::IcmpOther => {
                let ping = |edit: fn(&mut Vec<u8>)| {
                    let mut f = LINUX_PING.to_vec();
                    edit(&mut f);
                    whole(f)
                };
                vec![
                    ping(|f| f[UDP] = icmpv4::message::ECHO_REPLY), // checksum no longer matters
                    ping(|f| f[UDP + 1] = 1),                       // code 1
                    ping(|f| f[UDP + 10] ^= 0x40),                  // bad ICMP checksum
                    ping(|f| {
                        // 7 bytes of ICMP
                        f[IP + 2..IP + 4].copy_from_slice(&27u16.to_be_bytes());
                        fix_ip(f);
                    }),
                    (LINUX_PING.to_vec(), 50, LINUX_PING.len()), // ICMP message beyond the first segment
                ]
            }
            E::IpProtocol => [ipv4::protocol::TCP, ipv4::protocol::SCTP, 47]
                .into_iter()
                .map(|proto| {
                    edited(vw, |f| {
                        f[IP + 9] = proto;
                        fix_ip(f);
                    })
                })
                .collect(),
            E::UdpTruncated => vec![
                edited(vw, |f| {
                    f[IP + 2..IP + 4].copy_from_slice(&27u16.to_be_bytes());
                    fix_ip(f);
                }),
                (tunnel(vw), 41, 64 + 46),
            ],
            E::UdpLength => vec![edited(vw, |f| f[UDP + 5] ^= 0x01), edited(vw, |f| f[UDP + 4] = 0xff)],
            E::UdpPort => vec![
                edited(vw, |f| f[UDP + 2..UDP + 4].copy_from_slice(&53u16.to_be_bytes())),
                // The source port does not count.
                edited(vw, |f| f[UDP..UDP + 4].copy_from_slice(&[0x12, 0xbb, 0x12, 0xb6])),
            ],
            E::TunnelTruncated => vec![
                edited(vw, |f| fix_lengths(f, 45)),
                edited(Encap::Vxlan, |f| fix_lengths(f, 49)),
                (tunnel(vw), 45, 64 + 46),
                (tunnel(Encap::Vxlan), 49, 64 + 50),
            ],
            E::VxlanFlags => vec![edited(Encap::Vxlan, |f| f[TUNNEL] = 0xf7), edited(Encap::Vxlan, |f| f[TUNNEL] = 0)],
            E::InnerRunt => vec![
                edited(vw, |f| fix_lengths(f, 46 + 13)),
                edited(Encap::Vxlan, |f| fix_lengths(f, 50 + 13)),
                edited(vw, |f| fix_lengths(f, 46)),
                (tunnel(vw), 46 + 13, 64 + 46), // inner Ethernet header split across segments
            ],
            E::MigrationHeader => vec![
                edited(Encap::Forward, |f| f[TUNNEL] = 2),
                edited(Encap::Forward, |f| f[TUNNEL + 1] = 0),
                edited(Encap::Forward, |f| f[TUNNEL + 1] = 6),
            ],
            E::UdpChecksum => vec![
                edited(vw, |f| {
                    fill_udp_checksum(f);
                    f[UDP + 7] ^= 0x01;
                }),
                edited(Encap::Vxlan, |f| {
                    fill_udp_checksum(f);
                    let last = f.len() - 1;
                    f[last] ^= 0x10; // the payload changed on the way
                }),
                edited(vw, |f| f[UDP + 6..UDP + 8].copy_from_slice(&[0xff, 0xff])),
            ],
            E::EspTruncated => [0usize, 2, 16 + 2 + 16 - 1]
                .into_iter()
                .map(|n| {
                    edited(vw, |f| {
                        f[UDP + 2..UDP + 4].copy_from_slice(&secure::PORT.to_be_bytes());
                        f[TUNNEL..TUNNEL + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
                        fix_lengths(f, TUNNEL + n);
                    })
                })
                .collect(),
            E::EspIke => vec![edited(vw, |f| {
                f[UDP + 2..UDP + 4].copy_from_slice(&secure::PORT.to_be_bytes());
                f[TUNNEL..TUNNEL + 4].fill(0);
            })],
            // Not classify's: see secure_payloads.
            E::SecureInner => Vec::new(),
        }
    }

    /// An authenticated datagram as a peer seals it: UDP to `port`, the
    /// tunnel header of `encap`'s tunnel format for connector 7, a frame.
    fn secure_payload(encap: Encap, port: u16) -> Vec<u8> {
        let frame = build_tunnel_frame(&template(encap, 7), &inner(64), 50000);
        // What follows the ESP header the SA would write (no trailer here).
        let mut p = frame[TUNNEL + secure::HEADER_LEN..].to_vec();
        p[2..4].copy_from_slice(&port.to_be_bytes());
        p
    }

    #[test]
    fn secure_payloads() {
        use UnderlayError as E;
        for encap in [Encap::Secure, Encap::SecureVxlan] {
            let port = if encap == Encap::Secure { CFG.vwire_port } else { CFG.vxlan_port };
            let p = secure_payload(encap, port);
            let at = udp::HEADER_LEN + encap.tunnel().header_len();
            assert_eq!(classify_secure(&p, &CFG), Ok((encap, ConnectorId(7), at)), "{encap:?}");
            assert_eq!(&p[at..], &inner(64)[..]);
            // Another port, a length that disagrees, a runt, no room for a header.
            assert_eq!(classify_secure(&secure_payload(encap, 53), &CFG), Err(E::SecureInner));
            assert_eq!(classify_secure(&p[..p.len() - 1], &CFG), Err(E::SecureInner));
            assert_eq!(classify_secure(&p[..7], &CFG), Err(E::SecureInner));
            let mut runt = p[..at + 13].to_vec();
            runt[4..6].copy_from_slice(&((at + 13) as u16).to_be_bytes());
            assert_eq!(classify_secure(&runt, &CFG), Err(E::InnerRunt));
        }
        let mut no_i = secure_payload(Encap::SecureVxlan, CFG.vxlan_port);
        no_i[udp::HEADER_LEN] = 0;
        assert_eq!(classify_secure(&no_i, &CFG), Err(E::SecureInner));
    }

    #[test]
    fn a_built_nat_keepalive_is_one_and_a_secure_header_takes_the_nat_port() {
        let mut buf = [0u8; ethernet::MIN_FRAME_LEN];
        let n = secure::build_nat_keepalive(&mut buf, PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, secure::PORT);
        assert_eq!(n, 60, "padded to the Ethernet minimum");
        assert_eq!(run(&buf), Ok(Underlay::NatKeepalive));
        assert!(ipv4::Packet::new_unchecked(&buf[IP..UDP]).verify_checksum());
        secure::build_nat_keepalive(&mut buf, PEER_MAC, OUR_MAC, PEER_IP, OUR_IP, 20001);
        assert_eq!(&buf[UDP..UDP + 4], &[0x11, 0x94, 0x4e, 0x21], "4500 -> 20001");
        assert_eq!(run(&buf), Err(UnderlayError::UdpPort), "not to a port of ours");
        // The outer destination port of a sealed frame is the far end's NAT
        // mapping; the IPv4 checksum stays valid.
        let t = template(Encap::Secure, 7);
        let mut frame = build_tunnel_frame(&t, &inner(100), 50000);
        EncapTemplate::set_outer_dst_port(&mut frame[..t.len()], 20001);
        assert_eq!(&frame[UDP..UDP + 4], &[0x11, 0x94, 0x4e, 0x21]);
        assert!(ipv4::Packet::new_unchecked(&frame[IP..UDP]).verify_checksum());
    }

    #[test]
    fn port_4500() {
        let mut f = tunnel(Encap::Vwire);
        f[UDP + 2..UDP + 4].copy_from_slice(&secure::PORT.to_be_bytes());
        f[UDP..UDP + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[TUNNEL..TUNNEL + 4].copy_from_slice(&0x0000_1001u32.to_be_bytes());
        let len = f.len();
        let want = EspPacket { spi: 0x1001, src_ip: PEER_IP, src_port: 40000, len: len - TUNNEL, trailer_len: 0 };
        assert_eq!(run(&f), Ok(Underlay::Esp(want)));
        let mut keepalive = f.clone();
        fix_lengths(&mut keepalive, TUNNEL + 1);
        keepalive[TUNNEL] = 0xff;
        assert_eq!(run(&keepalive), Ok(Underlay::NatKeepalive));
        // A secure template's frame goes to 4500 with the sizes its SA needs.
        for encap in [Encap::Secure, Encap::SecureVxlan] {
            let t = template(encap, 7);
            let frame = build_tunnel_frame(&t, &inner(100), 50000);
            let trailer = t.trailer_len(100);
            let mut sealed = frame.clone();
            sealed.resize(frame.len() + trailer, 0);
            sealed[TUNNEL..TUNNEL + 4].copy_from_slice(&0x2002u32.to_be_bytes());
            match run(&sealed) {
                Ok(Underlay::Esp(e)) => assert_eq!((e.spi, e.len), (0x2002, sealed.len() - TUNNEL), "{encap:?}"),
                other => panic!("{encap:?}: {other:?}"),
            }
            assert_eq!((sealed.len() - TUNNEL - secure::HEADER_LEN - secure::ICV_LEN) % 4, 0);
        }
    }

    /// Computes the UDP checksum the sender may give (RFC 768).
    fn fill_udp_checksum(f: &mut [u8]) {
        f[UDP + 6..UDP + 8].copy_from_slice(&[0, 0]);
        let len = u16::from_be_bytes([f[UDP + 4], f[UDP + 5]]);
        let pseudo = checksum::pseudo_header_v4(PEER_IP, OUR_IP, ipv4::protocol::UDP, len);
        let sum = u32::from(checksum::fold(pseudo)) + u32::from(checksum::fold(checksum::sum(&f[UDP..])));
        let c = match !checksum::fold(sum) {
            0 => 0xffff,
            c => c,
        };
        f[UDP + 6..UDP + 8].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn an_offloaded_udp_checksum_left_incomplete_is_taken() {
        // LINUX_VXLAN's field is the pseudo-header sum; one bit off is not.
        assert!(run(&LINUX_VXLAN).is_ok());
        let mut f = LINUX_VXLAN.to_vec();
        f[UDP + 7] ^= 0x01;
        assert_eq!(run(&f), Err(UnderlayError::UdpChecksum));
    }

    #[test]
    fn a_checksum_the_device_verified_is_not_computed_again() {
        let mut f = tunnel(Encap::Vwire);
        fill_udp_checksum(&mut f);
        f[UDP + 7] ^= 0x01;
        assert_eq!(run(&f), Err(UnderlayError::UdpChecksum));
        // The device said good: taken (its verdict, not ours, counts).
        assert!(matches!(classify_verified(&f, f.len(), &CFG, true), Ok(Underlay::Tunnel(_))));
    }

    #[test]
    fn a_checksum_beyond_the_first_segment_is_not_taken_on_trust() {
        let mut f = tunnel(Encap::Vxlan);
        fill_udp_checksum(&mut f);
        // Correct, but the datagram runs past the first segment: refused,
        // unless the device verified it.
        assert_eq!(classify(&f[..64], f.len(), &CFG), Err(UnderlayError::UdpChecksum));
        assert!(matches!(classify_verified(&f[..64], f.len(), &CFG, true), Ok(Underlay::Tunnel(_))));
        // The pseudo-header sum alone is not a computed checksum.
        let split = LINUX_VXLAN.len() - 10;
        assert!(classify(&LINUX_VXLAN[..split], LINUX_VXLAN.len(), &CFG).is_ok());
    }

    #[test]
    fn a_correct_udp_checksum_is_taken_like_none() {
        for encap in [Encap::Vwire, Encap::Vxlan] {
            let mut f = tunnel(encap);
            fill_udp_checksum(&mut f);
            assert!(matches!(run(&f), Ok(Underlay::Tunnel(_))), "{encap:?}");
        }
    }

    fn check_variant(err: UnderlayError) {
        if err == UnderlayError::SecureInner {
            return secure_payloads();
        }
        let cases = cases(err);
        assert!(!cases.is_empty());
        for (i, (frame, data_len, pkt_len)) in cases.iter().enumerate() {
            let got = classify(&frame[..*data_len], *pkt_len, &CFG);
            assert_eq!(got, Err(err), "{} case {i}", err.name());
        }
    }

    macro_rules! variant_tests {
        ($($test:ident => $variant:ident),* $(,)?) => {
            $(
                #[test]
                fn $test() {
                    check_variant(UnderlayError::$variant);
                }
            )*

            #[test]
            fn every_variant_has_a_test() {
                let tested = [$(UnderlayError::$variant),*];
                assert_eq!(tested.len(), UnderlayError::COUNT);
                for e in UnderlayError::ALL {
                    assert!(tested.contains(&e), "no test for {}", e.name());
                }
            }
        };
    }

    variant_tests! {
        error_runt => Runt,
        error_not_our_mac => NotOurMac,
        error_arp_malformed => ArpMalformed,
        error_not_ipv4 => NotIpv4,
        error_ipv4_truncated => Ipv4Truncated,
        error_ipv4_version => Ipv4Version,
        error_ipv4_header_length => Ipv4HeaderLength,
        error_ipv4_options => Ipv4Options,
        error_ipv4_total_length => Ipv4TotalLength,
        error_ipv4_checksum => Ipv4Checksum,
        error_ipv4_fragment => Ipv4Fragment,
        error_not_our_address => NotOurAddress,
        error_icmp_other => IcmpOther,
        error_ip_protocol => IpProtocol,
        error_udp_truncated => UdpTruncated,
        error_udp_length => UdpLength,
        error_udp_port => UdpPort,
        error_tunnel_truncated => TunnelTruncated,
        error_vxlan_flags => VxlanFlags,
        error_inner_runt => InnerRunt,
        error_migration_header => MigrationHeader,
        error_udp_checksum => UdpChecksum,
        error_esp_truncated => EspTruncated,
        error_esp_ike => EspIke,
        error_secure_inner => SecureInner,
    }

    #[test]
    fn reserved_vxlan_bits_ignored() {
        let mut f = tunnel(Encap::Vxlan);
        f[TUNNEL] = 0xff;
        f[TUNNEL + 1..TUNNEL + 4].fill(0xff);
        f[TUNNEL + 7] = 0xff;
        assert!(matches!(run(&f), Ok(Underlay::Tunnel(Decap { connector: ConnectorId(7), .. }))));
    }

    #[test]
    fn migration_channel() {
        // A forwarded frame decapsulates like a tunnel frame, with its own format.
        let f = tunnel(Encap::Forward);
        assert_eq!(&f[TUNNEL..TUNNEL + 8], &[1, 1, 0, 0, 0, 0, 0, 7]);
        match run(&f) {
            Ok(Underlay::Tunnel(d)) => {
                assert_eq!((d.encap, d.connector, d.outer_len, d.inner_len), (Encap::Forward, ConnectorId(7), 50, 64))
            }
            other => panic!("{other:?}"),
        }
        // Control messages go to the control plane whole.
        for kind in [migration::kind::LOCATE, migration::kind::ACK, migration::kind::MOVED] {
            let mut f = tunnel(Encap::Forward);
            f[TUNNEL + 1] = kind;
            assert_eq!(run(&f), Ok(Underlay::Migration));
        }
        // With the channel off, its port is just another port.
        let off = UnderlayConfig { migration_port: 0, ..CFG };
        assert_eq!(classify(&f, f.len(), &off), Err(UnderlayError::UdpPort));
        let mut short = tunnel(Encap::Forward);
        fix_lengths(&mut short, 49);
        assert_eq!(run(&short), Err(UnderlayError::TunnelTruncated));
    }

    #[test]
    fn broadcast_and_multicast_macs_pass_l2() {
        for mac in [MacAddr::BROADCAST, MacAddr::new(0x01, 0x00, 0x5e, 0, 0, 1)] {
            let mut f = tunnel(Encap::Vwire);
            f[..6].copy_from_slice(&mac.0);
            assert!(matches!(run(&f), Ok(Underlay::Tunnel(_))));
        }
    }

    #[test]
    fn error_names() {
        let names: Vec<&str> = UnderlayError::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "runt",
                "not_our_mac",
                "arp_malformed",
                "not_ipv4",
                "ipv4_truncated",
                "ipv4_version",
                "ipv4_header_length",
                "ipv4_options",
                "ipv4_total_length",
                "ipv4_checksum",
                "ipv4_fragment",
                "not_our_address",
                "icmp_other",
                "ip_protocol",
                "udp_truncated",
                "udp_length",
                "udp_port",
                "tunnel_truncated",
                "vxlan_flags",
                "inner_runt",
                "migration_header",
                "udp_checksum",
                "esp_truncated",
                "esp_ike",
                "secure_inner",
            ]
        );
        for (i, e) in UnderlayError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(!e.describe().is_empty());
            assert_eq!(e.to_string(), e.describe());
        }
    }

    #[test]
    fn built_frame_checksum_verifies() {
        let f = tunnel(Encap::Vxlan);
        assert_eq!(checksum::checksum(&f[IP..UDP]), 0);
    }
}
