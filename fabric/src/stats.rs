//! Counters written by the workers and read by the control plane.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so a counter
//! is bumped with a relaxed load and store (no locked instruction); readers
//! sum over workers. Drop reasons are one flat list, like VPP's error
//! counters: the underlay classifier's reasons first (in `UnderlayError`
//! order), then the fabric's own.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use vw_wire::UnderlayError;

/// Number of reasons the underlay classifier can give.
pub const UNDERLAY_REASONS: usize = UnderlayError::ALL.len();

/// Drops the fabric itself decides (after classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum FabricDrop {
    /// A tunnel frame whose (format, connector ID) names no wire here.
    UnknownConnector = 0,
    /// A tunnel frame for a known wire from a VTEP that is not the wire's peer.
    WrongPeer,
    /// An ARP frame neither for our VTEP nor from a neighbour we resolve.
    ArpIgnored,
    /// A frame from an endpoint that carries no wire.
    NoWire,
    /// A frame too big for the underlay MTU once encapsulated.
    EncapTooBig,
    /// A frame without headroom for the outer headers.
    NoHeadroom,
    /// A frame for a remote peer whose next hop was not resolved within 1 s
    /// (frames wait meanwhile in a hold queue of 64 frames per worker, at
    /// most 16 per wire).
    PeerUnresolved,
    /// A frame the TX queue of its port refused (queue full).
    TxFull,
    /// A frame a vhost-user endpoint refused because its VM is not connected.
    EndpointDown,
    /// A frame still waiting in a handoff ring when its endpoint was
    /// removed (counted by the control plane, which frees it).
    EndpointRemoved,
    /// A migration control message for which the control plane's queue had
    /// no room (a flood; the sender retransmits).
    MigrationBacklog,
    /// An underlay frame longer than the underlay MTU plus its Ethernet
    /// header (a peer with a larger MTU, or a uplink that does not enforce
    /// its own).
    Oversize,
    /// A frame whose lengths, as its device gave them, do not fit its
    /// buffers (a driver fault, or a device set up to make such frames):
    /// freed unread.
    MalformedMbuf,
    /// A frame for a wire end whose frames are being held (its VM stopped
    /// for a live migration, or it just arrived and waits for the frames its
    /// old host passes on) that found the wire's hold queue full: the queue
    /// is sized for `--migration-hold-ms` at the wire's recent rate.
    HoldOverflow,
    /// A held frame still waiting when the hold ended without a release:
    /// the VM stopped and neither came back nor moved within
    /// `--migration-hold-ms` (counted by the control plane, which frees it).
    HoldExpired,
    /// A secure wire's packet whose ICV does not verify: altered on the
    /// way, or not sealed with the wire's key. Nothing of it is delivered.
    AuthFailed,
    /// A secure wire's packet whose sequence number was received before,
    /// or lies below the replay window (2048 packets).
    Replayed,
    /// An ESP packet whose SPI names no secure wire here.
    UnknownSpi,
    /// A frame for a secure wire whose outbound SA may not send more now:
    /// the fabric could not yet save a new sequence floor (see
    /// docs/security.md), or the SA's sequence numbers are used up.
    SaExpired,
    /// An ESP packet for a secure wire from an address that is not the
    /// wire's peer (not opened, so it cannot move the replay window).
    SecureWrongPeer,
}

impl FabricDrop {
    /// Every fabric drop reason, in counter order.
    pub const ALL: [FabricDrop; 20] = [
        FabricDrop::UnknownConnector,
        FabricDrop::WrongPeer,
        FabricDrop::ArpIgnored,
        FabricDrop::NoWire,
        FabricDrop::EncapTooBig,
        FabricDrop::NoHeadroom,
        FabricDrop::PeerUnresolved,
        FabricDrop::TxFull,
        FabricDrop::EndpointDown,
        FabricDrop::EndpointRemoved,
        FabricDrop::MigrationBacklog,
        FabricDrop::Oversize,
        FabricDrop::MalformedMbuf,
        FabricDrop::HoldOverflow,
        FabricDrop::HoldExpired,
        FabricDrop::AuthFailed,
        FabricDrop::Replayed,
        FabricDrop::UnknownSpi,
        FabricDrop::SaExpired,
        FabricDrop::SecureWrongPeer,
    ];

    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            FabricDrop::UnknownConnector => "unknown_connector",
            FabricDrop::WrongPeer => "wrong_peer",
            FabricDrop::ArpIgnored => "arp_ignored",
            FabricDrop::NoWire => "no_wire",
            FabricDrop::EncapTooBig => "encap_too_big",
            FabricDrop::NoHeadroom => "no_headroom",
            FabricDrop::PeerUnresolved => "peer_unresolved",
            FabricDrop::TxFull => "tx_full",
            FabricDrop::EndpointDown => "endpoint_down",
            FabricDrop::EndpointRemoved => "endpoint_removed",
            FabricDrop::MigrationBacklog => "migration_backlog",
            FabricDrop::Oversize => "oversize",
            FabricDrop::MalformedMbuf => "malformed_mbuf",
            FabricDrop::HoldOverflow => "hold_overflow",
            FabricDrop::HoldExpired => "hold_expired",
            FabricDrop::AuthFailed => "auth_failed",
            FabricDrop::Replayed => "replayed",
            FabricDrop::UnknownSpi => "unknown_spi",
            FabricDrop::SaExpired => "sa_expired",
            FabricDrop::SecureWrongPeer => "secure_wrong_peer",
        }
    }

    /// Index in the flat drop counter array.
    #[inline(always)]
    pub const fn index(self) -> usize {
        UNDERLAY_REASONS + self as usize
    }
}

/// Index of an underlay reason in the flat drop counter array.
#[inline(always)]
pub fn underlay_index(e: UnderlayError) -> usize {
    e as usize
}

/// Total number of drop reasons.
pub const DROP_REASONS: usize = UNDERLAY_REASONS + FabricDrop::ALL.len();

/// Name of drop counter `i`.
pub fn drop_name(i: usize) -> &'static str {
    if i < UNDERLAY_REASONS {
        UnderlayError::ALL[i].name()
    } else {
        FabricDrop::ALL[i - UNDERLAY_REASONS].name()
    }
}

/// Frames the VTEP consumed or answered itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Handled {
    /// ARP requests for our VTEP address, answered.
    ArpAnswered = 0,
    /// ARP frames from neighbours we resolve, passed to the control plane.
    ArpFromNeighbour,
    /// ICMP echo requests to our VTEP address, answered.
    IcmpEchoAnswered,
    /// Frames put in a wire's migration hold queue (see docs/migration.md).
    Held,
    /// Held frames sent on once their hold was released, in order.
    Released,
    /// Frames from a VTEP that was not (yet) their wire's peer, held for a
    /// moment for the LOCATE of an end that moved there.
    StrayHeld,
    /// Of those, frames delivered once the LOCATE re-pointed the wire.
    StrayReleased,
    /// NAT keepalives received on port 4500 (RFC 3948 §2.3).
    NatKeepalive,
}

impl Handled {
    /// Every kind, in counter order.
    pub const ALL: [Handled; 8] = [
        Handled::ArpAnswered,
        Handled::ArpFromNeighbour,
        Handled::IcmpEchoAnswered,
        Handled::Held,
        Handled::Released,
        Handled::StrayHeld,
        Handled::StrayReleased,
        Handled::NatKeepalive,
    ];

    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            Handled::ArpAnswered => "arp_answered",
            Handled::ArpFromNeighbour => "arp_from_neighbour",
            Handled::IcmpEchoAnswered => "icmp_echo_answered",
            Handled::Held => "held",
            Handled::Released => "released",
            Handled::StrayHeld => "stray_held",
            Handled::StrayReleased => "stray_released",
            Handled::NatKeepalive => "nat_keepalive",
        }
    }
}

/// Adds `n` to a counter that only the calling worker writes.
#[inline(always)]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Counters of one wire in one worker; index 0 is the forward direction
/// (frames entering at the wire's first endpoint), 1 the reverse.
#[derive(Default)]
pub struct WireCounters {
    /// Frames delivered, per direction.
    pub frames: [AtomicU64; 2],
    /// Bytes delivered, per direction.
    pub bytes: [AtomicU64; 2],
    /// Frames dropped on this wire.
    pub dropped: AtomicU64,
    /// Frames passed on during a move: forwarded to the end's new host
    /// (on the host it left) or received so (on the host it reached).
    pub forwarded: AtomicU64,
}

/// A plain copy of [`WireCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireTotals {
    /// Frames per direction.
    pub frames: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Drops.
    pub dropped: u64,
    /// Frames forwarded during moves.
    pub forwarded: u64,
}

impl WireTotals {
    /// `self - base`, for counters of a slot that was reused.
    pub fn since(&self, base: &WireTotals) -> WireTotals {
        WireTotals {
            frames: [self.frames[0].wrapping_sub(base.frames[0]), self.frames[1].wrapping_sub(base.frames[1])],
            bytes: [self.bytes[0].wrapping_sub(base.bytes[0]), self.bytes[1].wrapping_sub(base.bytes[1])],
            dropped: self.dropped.wrapping_sub(base.dropped),
            forwarded: self.forwarded.wrapping_sub(base.forwarded),
        }
    }
}

/// Counters of one port in one worker. Workers count every endpoint's
/// received frames; bytes and sent frames only where the device keeps no
/// counters of its own (vhost-user; ethdev ports report `rte_eth_stats`).
#[derive(Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx_frames: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames sent.
    pub tx_frames: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Frames the port's TX queue refused.
    pub tx_dropped: AtomicU64,
}

/// A plain copy of [`PortCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortTotals {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames refused by the TX queue.
    pub tx_dropped: u64,
}

impl PortTotals {
    /// Adds another worker's counters.
    pub fn add(&mut self, c: &PortCounters) {
        self.rx_frames += c.rx_frames.load(Relaxed);
        self.rx_bytes += c.rx_bytes.load(Relaxed);
        self.tx_frames += c.tx_frames.load(Relaxed);
        self.tx_bytes += c.tx_bytes.load(Relaxed);
        self.tx_dropped += c.tx_dropped.load(Relaxed);
    }

    /// `self - base`, for counters of a port index that was reused.
    pub fn since(&self, base: &PortTotals) -> PortTotals {
        PortTotals {
            rx_frames: self.rx_frames.wrapping_sub(base.rx_frames),
            rx_bytes: self.rx_bytes.wrapping_sub(base.rx_bytes),
            tx_frames: self.tx_frames.wrapping_sub(base.tx_frames),
            tx_bytes: self.tx_bytes.wrapping_sub(base.tx_bytes),
            tx_dropped: self.tx_dropped.wrapping_sub(base.tx_dropped),
        }
    }
}

/// All counters of one worker.
#[repr(align(64))]
pub struct WorkerStats {
    /// Poll loop iterations.
    pub polls: AtomicU64,
    /// Iterations that received at least one frame.
    pub busy_polls: AtomicU64,
    /// Idle back-off sleeps.
    pub sleeps: AtomicU64,
    /// Frames received.
    pub rx_frames: AtomicU64,
    /// Frames accepted by TX queues.
    pub tx_frames: AtomicU64,
    /// Configuration snapshots taken.
    pub config_updates: AtomicU64,
    /// Frames the control plane had this worker send on the uplink (ARP
    /// requests, the gratuitous ARP at start); not received frames.
    pub control_frames_sent: AtomicU64,
    /// ARP sightings lost because the control plane's queue was full (the
    /// frames themselves are still counted as handled).
    pub arp_events_lost: AtomicU64,
    /// How long the frames from a wire's new peer waited for its LOCATE to
    /// be applied, the last time some were, in microseconds (the longest of
    /// them; see `Handled::StrayReleased`).
    pub stray_wait_last_us: AtomicU64,
    /// Drops by reason (see [`drop_name`]).
    pub drops: [AtomicU64; DROP_REASONS],
    /// Frames handled by the VTEP, by [`Handled`] kind.
    pub handled: [AtomicU64; Handled::ALL.len()],
    /// Per port index.
    pub ports: Box<[PortCounters]>,
    /// Per wire slot.
    pub wires: Box<[WireCounters]>,
    /// Frames received per (port index, RX queue), at `port * RXQ_SLOTS +
    /// queue`: the load by which queues are balanced over workers.
    pub rxq_frames: Box<[AtomicU64]>,
}

/// RX queues per port counted in [`WorkerStats::rxq_frames`]: the most a
/// vhost-user endpoint offers (an ethdev has one per worker; queues past
/// this are not counted).
pub const RXQ_SLOTS: usize = vw_pmd::vhost::MAX_QUEUE_PAIRS as usize;

impl WorkerStats {
    /// Zeroed counters for `max_wires` wire slots and `max_ports` ports.
    pub fn new(max_wires: usize, max_ports: usize) -> WorkerStats {
        WorkerStats {
            polls: AtomicU64::new(0),
            busy_polls: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            rx_frames: AtomicU64::new(0),
            tx_frames: AtomicU64::new(0),
            config_updates: AtomicU64::new(0),
            control_frames_sent: AtomicU64::new(0),
            arp_events_lost: AtomicU64::new(0),
            stray_wait_last_us: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            handled: std::array::from_fn(|_| AtomicU64::new(0)),
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
            wires: (0..max_wires).map(|_| WireCounters::default()).collect(),
            rxq_frames: (0..max_ports * RXQ_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The counters of wire slot `slot`.
    pub fn wire(&self, slot: u32) -> WireTotals {
        let Some(w) = self.wires.get(slot as usize) else { return WireTotals::default() };
        WireTotals {
            frames: [w.frames[0].load(Relaxed), w.frames[1].load(Relaxed)],
            bytes: [w.bytes[0].load(Relaxed), w.bytes[1].load(Relaxed)],
            dropped: w.dropped.load(Relaxed),
            forwarded: w.forwarded.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_names_are_unique_and_cover_every_reason() {
        let names: Vec<&str> = (0..DROP_REASONS).map(drop_name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), DROP_REASONS, "duplicate drop names: {names:?}");
        for (i, e) in UnderlayError::ALL.iter().enumerate() {
            assert_eq!(underlay_index(*e), i, "UnderlayError::ALL must be in discriminant order");
        }
        assert_eq!(drop_name(FabricDrop::TxFull.index()), "tx_full");
    }

    #[test]
    fn slot_counters_rebase() {
        let s = WorkerStats::new(4, 2);
        bump(&s.wires[2].frames[1], 5);
        let base = s.wire(2);
        bump(&s.wires[2].frames[1], 3);
        bump(&s.wires[2].dropped, 1);
        let d = s.wire(2).since(&base);
        assert_eq!(d.frames, [0, 3]);
        assert_eq!(d.dropped, 1);
        assert_eq!(s.wire(99), WireTotals::default());
    }
}
