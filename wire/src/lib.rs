//! Wire formats of VirtualWire.
//!
//! This crate owns everything VirtualWire puts on, or reads off, the wire:
//!
//! * zero-copy header views (Ethernet, 802.1Q, IPv4, UDP, ICMPv4, ARP, VXLAN and the
//!   4-byte VirtualWire connector header), in the style of smoltcp's `wire` module;
//! * RFC 1071 / RFC 1624 Internet checksums;
//! * classification of frames received on the uplink ([`underlay::classify`]);
//! * prebuilt outer headers for the encapsulating wires ([`EncapTemplate`]) and the flow
//!   hash that feeds their UDP source port ([`flow::flow_hash`]);
//! * the migration channel between fabrics ([`migration`]): authenticated location updates
//!   and forwarded frames;
//! * the wire table, the control-plane model of endpoints and wires ([`table::WireTable`]).
//!
//! It must not touch DPDK, do I/O, or allocate on the per-packet paths
//! ([`underlay::classify`], [`EncapTemplate::write`], [`flow::flow_hash`],
//! [`arp::reply_in_place`], [`icmpv4::echo_reply_in_place`]): those are `#[inline]`,
//! allocation-free and never panic, whatever bytes they are given. Only the wire table and
//! the test/tool builders allocate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arp;
pub mod checksum;
pub mod encap;
pub mod ethernet;
pub mod flow;
pub mod icmpv4;
pub mod ipv4;
pub mod migration;
pub mod table;
pub mod udp;
pub mod underlay;
pub mod vlan;
pub mod vwire;
pub mod vxlan;

pub use encap::{Encap, EncapTemplate};
pub use ethernet::MacAddr;
pub use table::{ConnectorId, Peer, TableError, Wire, WireKind, WireTable};
pub use underlay::{classify, classify_verified, Decap, Underlay, UnderlayConfig, UnderlayError};

/// Byte range of a fixed-size header field.
pub type Field = core::ops::Range<usize>;
/// Byte range from a field's start to the end of the buffer.
pub type Rest = core::ops::RangeFrom<usize>;

/// Error returned by the `new_checked` constructors of the header views.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header (or than the length the header claims).
    #[error("buffer too short for the header")]
    Truncated,
    /// A length field of the header is inconsistent (e.g. an IPv4 IHL below 5).
    #[error("header length field is inconsistent")]
    Malformed,
}

/// Reads a big-endian `u16` at `at` from a buffer known to hold it.
#[inline]
fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Writes a big-endian `u16` at `at` into a buffer known to hold it.
#[inline]
fn put_be16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}
