//! What the data path is told: the [`Plan`] the compiler derives from the
//! configuration. The fabric wraps it with each port's device handles into
//! the snapshot its workers read; nothing here refers to a device.

use hashbrown::HashMap;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use vw_wire::{EncapTemplate, UnderlayConfig};

/// Index of a port in the fabric's port table: the uplink, DPDK-device
/// endpoints and vhost-user endpoints alike. Not a DPDK port id: a
/// vhost-user endpoint has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortIndex(pub u32);

impl PortIndex {
    /// The uplink's index.
    pub const UPLINK: PortIndex = PortIndex(0);

    /// As an index into the plan's and the workers' per-port tables.
    #[inline(always)]
    pub const fn ix(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for PortIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a worker does with frames received on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointAction {
    /// The endpoint carries no wire: drop (`no_wire`).
    NoWire,
    /// Loopback wire: send the frames untouched on `peer`.
    Loopback {
        /// The other endpoint's port.
        peer: PortIndex,
        /// Wire counter slot.
        slot: u32,
        /// Direction index for the counters (0 forward, 1 reverse).
        dir: u8,
    },
    /// Encap wire with a resolved next hop: prepend the template, send on the uplink.
    Encap {
        /// Outer headers.
        template: EncapTemplate,
        /// Uplink port.
        uplink: PortIndex,
        /// Wire counter slot.
        slot: u32,
    },
    /// Encap wire whose next hop's MAC is not known yet: drop (`peer_unresolved`).
    Unresolved {
        /// Wire counter slot.
        slot: u32,
    },
}

/// Whether frames on a path are held for a moving wire end (see
/// `crate::migrate::Hold`): put in the wire's hold queue instead of sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Park {
    /// Sent as usual.
    #[default]
    No,
    /// Put in the hold queue.
    Hold,
    /// Put in the hold queue, which workers empty, in order, onto the
    /// path's usual action (so nothing overtakes what was held).
    Release,
}

/// A hold queue the workers use: the wire's counter slot, whether it is
/// being released, and the queue that must be empty before it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkSpec {
    /// Wire counter slot.
    pub slot: u32,
    /// Being released.
    pub release: bool,
    /// Released only while this queue is empty: it holds older frames for
    /// the same VM (those its old host passes on), which go first.
    pub after: Option<u64>,
}

/// Key of the hold queue of frames an endpoint sends (decap paths use
/// their [`decap_key`], which is below 2^34).
#[inline(always)]
pub const fn port_park_key(ix: PortIndex) -> u64 {
    (1u64 << 63) | ix.0 as u64
}

/// The endpoint whose frames a hold-queue key holds, if it is such a key.
pub const fn park_key_port(key: u64) -> Option<PortIndex> {
    if key >> 63 == 1 {
        Some(PortIndex(key as u32))
    } else {
        None
    }
}

/// Role of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not a port of this fabric.
    Unused,
    /// The underlay uplink.
    Uplink,
    /// An endpoint.
    Endpoint(EndpointAction),
}

/// What the workers do with one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDecision {
    /// What the port is.
    pub role: Role,
    /// TX queues usable now. Worker `w` sends on queue `w` if `w < txq`,
    /// else through the port's handoff rings (a vhost-user port has as many
    /// queues as the VM enabled, which may be fewer than the workers).
    pub txq: u16,
    /// False while a port that follows its peer's link (vhost-user) is known
    /// to be down: frames for it count as `endpoint_down`.
    pub up: bool,
    /// Frames received on the port are held (key [`port_park_key`]).
    pub park: Park,
    /// The hold queue that frames for this port's VM go to while its VM is
    /// stopped, if one does: where a worker puts the frames it could not
    /// hand to the VM's ring in the moment between the ring stopping and
    /// the hold taking effect.
    pub toward: Option<u64>,
}

impl PortDecision {
    /// A port that is not part of the fabric.
    pub const UNUSED: PortDecision =
        PortDecision { role: Role::Unused, txq: 0, up: false, park: Park::No, toward: None };
}

/// Where a decapsulated frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecapTarget {
    /// Endpoint port.
    pub port: PortIndex,
    /// Wire counter slot.
    pub slot: u32,
    /// The VTEP allowed to send on this wire.
    pub peer_ip: Ipv4Addr,
    /// During a move's grace period, a second VTEP allowed to send: where
    /// the remote end was before (unspecified otherwise).
    pub alt_ip: Ipv4Addr,
    /// Forwarded frames for an end that just arrived: any sender (a data
    /// frame's source address proves nothing anyway; see docs/migration.md).
    pub any_src: bool,
    /// The end left this host: re-encapsulate the frame towards its new
    /// host with `Plan::forwards[connector]` instead of delivering it.
    pub forward: bool,
    /// Frames for this target are held (key: the target's decap key).
    pub park: Park,
}

impl DecapTarget {
    /// A target that delivers to `port` frames from `peer_ip` only.
    pub fn deliver(port: PortIndex, slot: u32, peer_ip: Ipv4Addr) -> DecapTarget {
        DecapTarget {
            port,
            slot,
            peer_ip,
            alt_ip: Ipv4Addr::UNSPECIFIED,
            any_src: false,
            forward: false,
            park: Park::No,
        }
    }

    /// Whether a frame from `src` may use this target.
    #[inline(always)]
    pub fn accepts(&self, src: Ipv4Addr) -> bool {
        (self.peer_ip == src && !src.is_unspecified()) || self.any_src || (self.alt_ip == src && !src.is_unspecified())
    }
}

/// The uplink as the workers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPlan {
    /// Its port.
    pub port: PortIndex,
    /// Addresses and UDP ports for classification.
    pub underlay: UnderlayConfig,
    /// Next hops the control plane resolves (ARP from them is passed up).
    pub neighbours: Vec<Ipv4Addr>,
    /// Longest underlay frame taken: the underlay MTU plus 14.
    pub max_frame: u32,
}

/// Key of the decap table: tunnel format and connector ID.
#[inline(always)]
pub fn decap_key(encap: vw_wire::Encap, connector: u32) -> u64 {
    ((encap as u64) << 32) | connector as u64
}

/// One configuration of the data path, as the compiler derives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Per port index (as long as the port table).
    pub ports: Vec<PortDecision>,
    /// Per worker: the (port, RX queue) pairs it polls, endpoints by index
    /// and then the uplink (so a frame that goes out and straight back is
    /// decapsulated in the same iteration). Only queues that can carry
    /// frames are listed (a vhost-user device's rings the VM enabled), so
    /// idle and absent VMs cost nothing per iteration.
    pub polls: Vec<Vec<(PortIndex, u16)>>,
    /// Per worker: the (port, handoff ring) pairs it drains into its TX
    /// queue, by port index.
    pub drains: Vec<Vec<(PortIndex, usize)>>,
    /// The uplink, if any.
    pub uplink: Option<UplinkPlan>,
    /// (format, connector) -> endpoint.
    pub decap: HashMap<u64, DecapTarget>,
    /// Connector -> outer headers towards the new host of an end that left
    /// (forwarded-frame format), for targets with `forward` set.
    pub forwards: HashMap<u32, EncapTemplate>,
    /// Hold queues in use, by key ([`port_park_key`] or a decap key).
    pub parks: BTreeMap<u64, ParkSpec>,
}

impl Plan {
    /// An empty plan (nothing polled) for `max_ports` ports and `workers` workers.
    pub fn empty(max_ports: usize, workers: usize) -> Plan {
        Plan {
            ports: vec![PortDecision::UNUSED; max_ports],
            polls: vec![Vec::new(); workers],
            drains: vec![Vec::new(); workers],
            uplink: None,
            decap: HashMap::new(),
            forwards: HashMap::new(),
            parks: BTreeMap::new(),
        }
    }
}

/// Order of a worker's poll list: endpoints by port index, the uplink last.
pub(crate) fn poll_order(p: &(PortIndex, u16)) -> (bool, PortIndex, u16) {
    (p.0 == PortIndex::UPLINK, p.0, p.1)
}
