//! The data path: one run-to-completion poll loop per worker lcore.
//!
//! Worker `w` polls the RX queues the snapshot gives it and sends on TX queue
//! `w` of every port, so no queue is shared and nothing is locked. A port
//! with fewer usable TX queues than workers (a vhost-user port whose VM
//! enabled fewer queues) is fed by the workers without a queue through
//! single-producer handoff rings, drained by the queue's owner. Per
//! iteration a worker takes a new configuration snapshot if one was
//! published (a quiescent point: no packet in hand, TX buffers flushed),
//! sends frames the control plane queued, drains handoff rings, polls its
//! queues, then flushes its TX buffers (as DPDK's l2fwd does). Per burst it
//! branches once on what the port is:
//! * a loopback wire: the burst moves to the peer's TX buffer untouched;
//! * an encap wire: each frame gets the wire's prebuilt outer headers in its
//!   headroom (the UDP source port from the inner flow hash); while the next
//!   hop's MAC is being resolved, frames wait in a small hold queue;
//! * the uplink: each frame is classified (`vw_wire::underlay::classify`),
//!   looked up by (format, connector ID), checked against the wire's peer
//!   VTEP, stripped and sent to the endpoint; ARP and ICMP echo for the
//!   VTEP are answered in place.
//!
//! No allocation, lock, syscall or log per packet: drops are freed in bulk
//! and counted per worker by reason. The only syscall is the optional idle
//! back-off sleep, taken when the worker has been idle for a while.

use crate::secure::{InboundDrop, SecureSa};
use crate::snapshot::{
    decap_key, DecapTarget, EndpointAction, Mailbox, NeighbourEvent, PortIndex, Role, Snapshot, UplinkPlan,
};
use crate::stats::{bump, underlay_index, FabricDrop, Handled, WorkerStats, RXQ_SLOTS};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use vw_core::plan::{park_key_port, port_park_key, Park};
use vw_pmd::{Burst, FreeBatch, Mbuf, Mempool, PortIo, TxBuffer};
use vw_wire::underlay::{classify_secure, classify_verified, Decap, EspPacket, Underlay, UnderlayError, ESP_OFFSET};
use vw_wire::{arp, encap::secure, encap::source_port, flow::flow_hash, icmpv4, Encap, EncapTemplate};

/// Encapsulates `m` for a secure wire and seals it in place as packet
/// `seq` of the wire's outbound SA: the ESP trailer's room is appended, the
/// outer headers prepended (to the far end's UDP port `port`, read once
/// per burst), then the datagram after the ESP header is encrypted and the
/// ICV written.
#[inline(always)]
fn seal_frame(m: &mut Mbuf, template: &EncapTemplate, sa: &SecureSa, port: u16, seq: u64) -> Result<(), FabricDrop> {
    let len = m.pkt_len() as usize;
    if len > template.max_inner_len() {
        return Err(FabricDrop::EncapTooBig);
    }
    let hash = match m.rss_hash() {
        Some(h) => h,
        None => flow_hash(m.data()),
    };
    // The frame is one segment (ESP seals a contiguous buffer here).
    if m.append(template.trailer_len(len)).is_none() {
        return Err(FabricDrop::NoHeadroom);
    }
    match m.prepend(template.len()) {
        Some(hdr) => {
            template.write(hdr, len, source_port(hash));
            EncapTemplate::set_outer_dst_port(hdr, port);
        }
        None => return Err(FabricDrop::NoHeadroom),
    }
    let payload = template.len() - ESP_OFFSET - secure::HEADER_LEN + len;
    let Some(esp) = m.data_mut().get_mut(ESP_OFFSET..) else { return Err(FabricDrop::NoHeadroom) };
    sa.out.key().seal(seq, esp, payload, secure::NEXT_HEADER_UDP).map(drop).map_err(|_| FabricDrop::NoHeadroom)
}

/// Opens a secure wire's ESP packet in place (SA by SPI, outer source the
/// wire's peer, replay window, ICV) and reads the datagram inside: how to
/// decapsulate it, as a tunnel frame of the secure format. Nothing is read
/// from the payload before its ICV verified. Errors are drop counters.
#[inline(always)]
fn open_esp(snap: &Snapshot, up: &UplinkPlan, m: &mut Mbuf, e: EspPacket) -> Result<Decap, usize> {
    let Some(sa) = snap.secure.by_spi(e.spi) else { return Err(FabricDrop::UnknownSpi.index()) };
    // From the peer's address only. From its port (one 5-tuple, so one
    // receive queue and one worker at a time for the SA's window), or from
    // another one its NAT maps it to now: see `PeerPort`.
    if e.src_ip != sa.peer {
        sa.count(InboundDrop::WrongPeer);
        return Err(FabricDrop::SecureWrongPeer.index());
    }
    let rebind_above = if e.src_port != sa.port.get() { Some(sa.window.top()) } else { None };
    let pkt_len = m.pkt_len() as usize;
    // The whole packet in the first segment: ESP opens a contiguous buffer.
    let Some(esp) = m.data_mut().get_mut(ESP_OFFSET..ESP_OFFSET + e.len) else {
        return Err(underlay_index(UnderlayError::EspTruncated));
    };
    let o = match sa.inb.open(esp, &mut &sa.window) {
        Ok(o) => o,
        Err(vw_esp::OpenError::AuthFailed) => {
            sa.count(InboundDrop::AuthFailed);
            return Err(FabricDrop::AuthFailed.index());
        }
        Err(vw_esp::OpenError::Replayed | vw_esp::OpenError::TooOld) => {
            sa.count(InboundDrop::Replayed);
            return Err(FabricDrop::Replayed.index());
        }
        Err(vw_esp::OpenError::UnknownSpi) => return Err(FabricDrop::UnknownSpi.index()),
        Err(vw_esp::OpenError::Malformed) => return Err(underlay_index(UnderlayError::SecureInner)),
    };
    if rebind_above.is_some_and(|top| o.seq > top) {
        sa.port.rebind(e.src_port);
    }
    if o.next_header != secure::NEXT_HEADER_UDP {
        return Err(underlay_index(UnderlayError::SecureInner));
    }
    let (encap, connector, at) = classify_secure(&esp[o.payload.clone()], &up.underlay).map_err(underlay_index)?;
    // Sealed with this wire's key, so it must be this wire's.
    if connector.0 != sa.wire {
        return Err(underlay_index(UnderlayError::SecureInner));
    }
    let outer_len = ESP_OFFSET + o.payload.start + at;
    let inner_len = o.payload.len() - at;
    Ok(Decap { encap, connector, src_ip: e.src_ip, outer_len, inner_len, trailer_len: pkt_len - outer_len - inner_len })
}

/// Empty polls in a row before the idle back-off sleeps.
const IDLE_POLLS_BEFORE_SLEEP: u32 = 64;
/// Frames a worker holds for encap wires whose next hop is being resolved.
const HOLD_CAPACITY: usize = 64;
/// Most frames held for one wire, so one dead peer cannot starve the others.
const HOLD_PER_WIRE: usize = 16;
/// How long a held frame waits for resolution before it is dropped.
const HOLD_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames a worker holds from a VTEP that is not (yet) their wire's peer,
/// with the migration channel on: a wire end that moved there sends right
/// away, and its LOCATE, in the same stream just ahead, re-points the wire
/// a moment later (the control plane applies it). Beyond this, or after
/// [`STRAY_WAIT`], such frames are dropped as `wrong_peer`.
const STRAY_CAPACITY: usize = 512;
/// How long a frame from a VTEP that is not its wire's peer waits for a
/// LOCATE to re-point the wire there.
const STRAY_WAIT: Duration = Duration::from_millis(100);

/// A decapsulated frame from a VTEP its wire does not accept yet.
struct Stray {
    key: u64,
    /// The wire's counter slot when it came (a wire re-created with the
    /// same id meanwhile does not get it).
    slot: u32,
    src: std::net::Ipv4Addr,
    since: u64,
    m: Mbuf,
}

/// A frame waiting for its wire's next hop to be resolved.
struct Held {
    port: PortIndex,
    slot: u32,
    since: u64,
    m: Mbuf,
}

/// Everything a worker needs, moved onto its lcore.
pub struct WorkerContext {
    /// Worker index (its queue number on every port).
    pub index: usize,
    /// Its mailbox.
    pub mailbox: Arc<Mailbox>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Set by the control plane to stop every worker.
    pub stop: Arc<AtomicBool>,
    /// Sleep this long when idle (None: busy polling).
    pub idle_sleep: Option<Duration>,
    /// The configuration to start with (its port table's length is the
    /// fabric's port capacity, the same in every snapshot).
    pub initial: Arc<Snapshot>,
    /// Pool for frames copied out of vhost-user rings.
    pub pool: Mempool,
}

/// Handed-off frames a worker moves to its TX queue per port and iteration.
const DRAIN_BUDGET: usize = 256;
/// Held frames a worker sends on per hold queue and turn (the rest wait,
/// in order, for its next turn).
const RELEASE_BUDGET: usize = 1024;

/// Per-worker I/O state: the RX burst, one TX buffer per port, drop batch.
struct Io {
    index: usize,
    queue: u16,
    rx: Burst,
    /// One TX buffer per port index.
    tx: Vec<TxBuffer>,
    /// Ports whose TX buffer got frames this iteration (each once: see
    /// `in_dirty`), flushed together; never longer than the port table.
    dirty: Vec<u32>,
    in_dirty: Vec<bool>,
    /// Ports whose TX buffer keeps frames their VM's stopped ring refused
    /// (see `tend_stalled`); each once (`in_stalled`).
    stalled: Vec<u32>,
    in_stalled: Vec<bool>,
    free: FreeBatch,
    pool: Mempool,
    stats: Arc<WorkerStats>,
    mailbox: Arc<Mailbox>,
    /// Frames for unresolved next hops, oldest first (like the kernel's
    /// neighbour queue): sent when a snapshot brings the resolved template,
    /// dropped as `peer_unresolved` after `HOLD_TIMEOUT` or when full.
    held: [Option<Held>; HOLD_CAPACITY],
    held_len: usize,
    /// TSC at which the oldest held frame expires (u64::MAX when none).
    held_expiry: u64,
    hold_ticks: u64,
    /// Frames from a VTEP their wire does not accept yet, oldest first
    /// (see [`STRAY_CAPACITY`]); `stray_ticks` is [`STRAY_WAIT`] in TSC ticks.
    stray: std::collections::VecDeque<Stray>,
    stray_ticks: u64,
    tsc_hz: u64,
}

/// Runs the poll loop until `stop` is set. Returns 0.
pub fn run(ctx: WorkerContext) -> i32 {
    let WorkerContext { index, mailbox, stats, stop, idle_sleep, initial, pool } = ctx;
    let queue = index as u16;
    let nports = initial.ports.len();
    let mut io = Io {
        index,
        queue,
        rx: Burst::new(),
        tx: (0..nports).map(|_| TxBuffer::new()).collect(),
        dirty: Vec::with_capacity(nports),
        in_dirty: vec![false; nports],
        stalled: Vec::with_capacity(nports),
        in_stalled: vec![false; nports],
        free: FreeBatch::new(),
        pool,
        stats: stats.clone(),
        mailbox: mailbox.clone(),
        held: std::array::from_fn(|_| None),
        held_len: 0,
        held_expiry: u64::MAX,
        hold_ticks: (vw_pmd::time::tsc_hz() as f64 * HOLD_TIMEOUT.as_secs_f64()) as u64,
        stray: std::collections::VecDeque::with_capacity(STRAY_CAPACITY),
        stray_ticks: (vw_pmd::time::tsc_hz() as f64 * STRAY_WAIT.as_secs_f64()) as u64,
        tsc_hz: vw_pmd::time::tsc_hz().max(1),
    };
    let mut snap = initial;
    // Marks the worker dead when the loop ends, by return or by panic.
    let _alive = mailbox.alive_guard(snap.version);
    let mut idle_polls = 0u32;
    while !stop.load(Relaxed) {
        mailbox.quiescent();
        let updated = mailbox.take_update(&mut snap);
        if updated {
            bump(&stats.config_updates, 1);
        }
        if io.held_len > 0 && (updated || vw_pmd::time::tsc() >= io.held_expiry) {
            io.release_held(&snap);
        }
        if let Some(first) = io.stray.front() {
            if updated {
                io.release_strays(&snap);
            } else if vw_pmd::time::tsc() >= first.since + io.stray_ticks {
                io.expire_strays(&snap);
            }
        }
        if !io.stalled.is_empty() {
            io.tend_stalled(&snap);
        }
        if !snap.parks.releases.is_empty() {
            io.release_parks(&snap);
        }
        // Only worker 0 is given frames to inject.
        if index == 0 && !mailbox.inject.is_empty() {
            if let Some(up) = &snap.uplink {
                while let Some(m) = mailbox.inject.pop() {
                    io.send(&snap, up.port, m);
                    bump(&stats.control_frames_sent, 1);
                }
            }
        }
        for &(port, k) in &snap.drains[index] {
            io.drain_handoff(&snap, port, k);
        }
        let mut received = 0usize;
        for &(port, q) in &snap.polls[index] {
            let n = match snap.ports[port.ix()].role {
                Role::Endpoint(action) => io.poll_endpoint(&snap, port, q, action),
                Role::Uplink => match &snap.uplink {
                    Some(up) => io.poll_uplink(&snap, up, q),
                    None => 0,
                },
                Role::Unused => 0,
            };
            // Send what this burst produced before polling the next queue,
            // as testpmd's io loop does: no frame waits for other ports.
            if n > 0 {
                io.flush_all(&snap);
                // The load by which queues are balanced over workers.
                if (q as usize) < RXQ_SLOTS {
                    bump(&stats.rxq_frames[port.ix() * RXQ_SLOTS + q as usize], n as u64);
                }
            }
            received += n;
        }
        io.flush_all(&snap);
        io.free.flush();
        bump(&stats.polls, 1);
        if received > 0 {
            bump(&stats.busy_polls, 1);
            bump(&stats.rx_frames, received as u64);
            idle_polls = 0;
        } else if let Some(d) = idle_sleep {
            idle_polls += 1;
            if idle_polls >= IDLE_POLLS_BEFORE_SLEEP {
                std::thread::sleep(d);
                bump(&stats.sleeps, 1);
            }
        }
    }
    // Free everything this worker still holds while the EAL is up.
    for h in io.held.iter_mut() {
        *h = None;
    }
    io.stray.clear();
    for tx in io.tx.iter_mut() {
        tx.discard();
    }
    io.dirty.clear();
    while mailbox.inject.pop().is_some() {}
    0
}

impl Io {
    /// Queues a frame for `port`: on this worker's TX queue, or through the
    /// port's handoff ring if this worker has no queue there.
    #[inline(always)]
    fn send(&mut self, snap: &Snapshot, port: PortIndex, m: Mbuf) {
        let ix = port.ix();
        if self.queue < snap.ports[ix].txq {
            if self.tx[ix].room() == 0 {
                self.flush_port(snap, ix);
            }
            self.tx[ix].push(m);
            self.mark_dirty(ix);
        } else {
            self.send_slow(snap, port, m);
        }
    }

    /// Moves a whole burst to `port`'s TX buffer (this worker has a queue
    /// there), or frame by frame through `send`.
    #[inline(always)]
    fn send_burst(&mut self, snap: &Snapshot, port: PortIndex, burst: &mut Burst) {
        let ix = port.ix();
        if self.queue < snap.ports[ix].txq {
            if self.tx[ix].room() < burst.len() {
                self.flush_port(snap, ix);
            }
            // A burst (at most BURST_SIZE) always fits an empty buffer.
            self.tx[ix].push_burst(burst);
            self.mark_dirty(ix);
        } else {
            while let Some(m) = burst.pop() {
                self.send_slow(snap, port, m);
            }
        }
    }

    #[inline(always)]
    fn mark_dirty(&mut self, ix: usize) {
        if !self.in_dirty[ix] {
            self.in_dirty[ix] = true;
            self.dirty.push(ix as u32);
        }
    }

    #[cold]
    fn send_slow(&mut self, snap: &Snapshot, port: PortIndex, m: Mbuf) {
        let up = snap.ports[port.ix()].up;
        let reason = if up { FabricDrop::TxFull } else { FabricDrop::EndpointDown };
        // Nothing waits in a ring for a port that is down (see the drainers
        // in vw_core's compiler).
        let refused = match snap.devices[port.ix()].handoff.as_ref().and_then(|h| h.get(self.index)) {
            Some(ring) if up => ring.push(m).err(),
            _ => Some(m),
        };
        if let Some(m) = refused {
            self.drop_frame(m, reason.index());
            bump(&self.stats.ports[port.ix()].tx_dropped, 1);
        }
    }

    /// Moves frames other workers handed off for `port` to this worker's TX queue.
    #[inline]
    fn drain_handoff(&mut self, snap: &Snapshot, port: PortIndex, k: usize) {
        let Some(ring) = snap.devices[port.ix()].handoff.as_ref().and_then(|h| h.get(k)) else { return };
        // Checked first: `is_empty` is plain loads, while `pop` on an empty
        // ArrayQueue ends in a full fence, once per ring per iteration.
        if ring.is_empty() {
            return;
        }
        for _ in 0..DRAIN_BUDGET {
            let Some(m) = ring.pop() else { break };
            self.send(snap, port, m);
        }
    }

    /// Frames a device handed over with lengths that do not fit their
    /// buffers, freed unread by the burst (not counted as received: no
    /// frame was read).
    #[cold]
    fn count_malformed(&self, n: u32) {
        bump(&self.stats.drops[FabricDrop::MalformedMbuf.index()], u64::from(n));
    }

    #[inline(always)]
    fn drop_frame(&mut self, m: Mbuf, reason: usize) {
        self.free.push(m);
        bump(&self.stats.drops[reason], 1);
    }

    #[inline(always)]
    fn count_wire(&self, slot: u32, dir: usize, frames: u64, bytes: u64, dropped: u64) {
        if let Some(w) = self.stats.wires.get(slot as usize) {
            if frames > 0 {
                bump(&w.frames[dir], frames);
                bump(&w.bytes[dir], bytes);
            }
            if dropped > 0 {
                bump(&w.dropped, dropped);
            }
        }
    }

    /// Polls an endpoint's RX queue and applies its wire's action.
    #[inline(always)]
    fn poll_endpoint(&mut self, snap: &Snapshot, port: PortIndex, queue: u16, action: EndpointAction) -> usize {
        let n = self.rx.rx_from(&snap.devices[port.ix()].io, queue, &self.pool);
        let bad = self.rx.take_malformed();
        if bad != 0 {
            self.count_malformed(bad);
        }
        if n == 0 {
            return 0;
        }
        let bytes = self.rx.bytes();
        let pc = &self.stats.ports[port.ix()];
        bump(&pc.rx_frames, n as u64);
        bump(&pc.rx_bytes, bytes);
        let park = snap.ports[port.ix()].park;
        if park != Park::No {
            self.park_burst(snap, port_park_key(port), park);
            return n;
        }
        match action {
            EndpointAction::Loopback { peer, slot, dir } => {
                // The whole burst moves untouched: pointer copies only.
                let mut rx = std::mem::take(&mut self.rx);
                self.send_burst(snap, peer, &mut rx);
                self.rx = rx;
                self.count_wire(slot, dir as usize, n as u64, bytes, 0);
            }
            EndpointAction::Encap { template, uplink, slot } if template.encap().is_secure() => {
                self.seal_burst(snap, &template, uplink, slot);
            }
            EndpointAction::Encap { template, uplink, slot } => {
                // Every frame of the burst goes to the uplink: encapsulate in
                // place, compact out the drops, hand the burst over whole.
                let (max, hlen) = (template.max_inner_len(), template.len());
                let (mut bytes, mut too_big, mut no_room) = (0u64, 0u64, 0u64);
                self.rx.retain_mut(&mut self.free, |m| {
                    let len = m.pkt_len() as usize;
                    if len > max {
                        too_big += 1;
                        return false;
                    }
                    let hash = match m.rss_hash() {
                        Some(h) => h,
                        None => flow_hash(m.data()),
                    };
                    match m.prepend(hlen) {
                        Some(hdr) => template.write(hdr, len, source_port(hash)),
                        None => {
                            no_room += 1;
                            return false;
                        }
                    }
                    bytes += len as u64;
                    true
                });
                if too_big + no_room > 0 {
                    bump(&self.stats.drops[FabricDrop::EncapTooBig.index()], too_big);
                    bump(&self.stats.drops[FabricDrop::NoHeadroom.index()], no_room);
                }
                let frames = self.rx.len() as u64;
                let mut rx = std::mem::take(&mut self.rx);
                self.send_burst(snap, uplink, &mut rx);
                self.rx = rx;
                self.count_wire(slot, 0, frames, bytes, too_big + no_room);
            }
            EndpointAction::Unresolved { slot } => {
                let now = vw_pmd::time::tsc();
                while let Some(m) = self.rx.pop() {
                    self.hold(port, slot, now, m);
                }
            }
            EndpointAction::NoWire => {
                bump(&self.stats.drops[FabricDrop::NoWire.index()], n as u64);
                self.rx.clear();
            }
        }
        n
    }

    /// A secure wire's burst: its sequence numbers reserved at once, each
    /// frame encapsulated and sealed in place, the drops compacted out, the
    /// burst handed to the uplink whole.
    #[inline(never)]
    fn seal_burst(&mut self, snap: &Snapshot, template: &EncapTemplate, uplink: PortIndex, slot: u32) {
        let n = self.rx.len() as u64;
        let Some(sa) = snap.secure.by_wire(template.connector().0) else {
            bump(&self.stats.drops[FabricDrop::SaExpired.index()], n);
            self.count_wire(slot, 0, 0, 0, n);
            self.rx.clear();
            return;
        };
        let port = sa.port.get();
        let (mut seq, mut granted) = sa.out.reserve(n);
        let mut counts = [0u64; FabricDrop::ALL.len()];
        let mut bytes = 0u64;
        self.rx.retain_mut(&mut self.free, |m| {
            if granted == 0 {
                counts[FabricDrop::SaExpired as usize] += 1;
                return false;
            }
            let len = m.pkt_len() as usize;
            let r = seal_frame(m, template, sa, port, seq);
            seq += 1;
            granted -= 1;
            match r {
                Ok(()) => {
                    bytes += len as u64;
                    true
                }
                Err(d) => {
                    counts[d as usize] += 1;
                    false
                }
            }
        });
        let dropped: u64 = counts.iter().sum();
        if dropped != 0 {
            for (i, c) in counts.iter().enumerate().filter(|(_, c)| **c != 0) {
                bump(&self.stats.drops[FabricDrop::ALL[i].index()], *c);
            }
        }
        let frames = self.rx.len() as u64;
        let mut rx = std::mem::take(&mut self.rx);
        self.send_burst(snap, uplink, &mut rx);
        self.rx = rx;
        self.count_wire(slot, 0, frames, bytes, dropped);
    }

    /// Encapsulates one frame and queues it on the uplink. Returns the inner
    /// length, or None if the frame was dropped (and counted).
    #[inline(always)]
    fn encap(&mut self, snap: &Snapshot, mut m: Mbuf, template: &EncapTemplate, uplink: PortIndex) -> Option<u64> {
        let len = m.pkt_len() as usize;
        if template.encap().is_secure() {
            let sealed = match snap.secure.by_wire(template.connector().0) {
                Some(sa) => match sa.out.reserve(1) {
                    (seq, 1) => seal_frame(&mut m, template, sa, sa.port.get(), seq),
                    _ => Err(FabricDrop::SaExpired),
                },
                None => Err(FabricDrop::SaExpired),
            };
            if let Err(d) = sealed {
                self.drop_frame(m, d.index());
                return None;
            }
            self.send(snap, uplink, m);
            return Some(len as u64);
        }
        if len > template.max_inner_len() {
            self.drop_frame(m, FabricDrop::EncapTooBig.index());
            return None;
        }
        let hash = match m.rss_hash() {
            Some(h) => h,
            None => flow_hash(m.data()),
        };
        match m.prepend(template.len()) {
            Some(hdr) => template.write(hdr, len, source_port(hash)),
            None => {
                self.drop_frame(m, FabricDrop::NoHeadroom.index());
                return None;
            }
        }
        self.send(snap, uplink, m);
        Some(len as u64)
    }

    /// Holds a frame for a wire whose next hop is being resolved, or drops
    /// it if the hold queue is full.
    #[cold]
    fn hold(&mut self, port: PortIndex, slot: u32, now: u64, m: Mbuf) {
        let for_wire = self.held[..self.held_len].iter().flatten().filter(|h| h.slot == slot).count();
        if self.held_len == HOLD_CAPACITY || for_wire >= HOLD_PER_WIRE {
            self.drop_frame(m, FabricDrop::PeerUnresolved.index());
            self.count_wire(slot, 0, 0, 0, 1);
            return;
        }
        self.held[self.held_len] = Some(Held { port, slot, since: now, m });
        self.held_len += 1;
        self.held_expiry = self.held_expiry.min(now.saturating_add(self.hold_ticks));
    }

    /// Sends held frames whose wire is now resolved (in arrival order), keeps
    /// those still waiting, drops those too old or whose wire is gone.
    #[cold]
    fn release_held(&mut self, snap: &Snapshot) {
        let now = vw_pmd::time::tsc();
        let mut kept = 0;
        self.held_expiry = u64::MAX;
        for i in 0..self.held_len {
            let Some(h) = self.held[i].take() else { continue };
            match snap.ports[h.port.ix()].role {
                Role::Endpoint(EndpointAction::Encap { template, uplink, slot }) if slot == h.slot => {
                    let len = h.m.pkt_len() as u64;
                    match self.encap(snap, h.m, &template, uplink) {
                        Some(_) => self.count_wire(slot, 0, 1, len, 0),
                        None => self.count_wire(slot, 0, 0, 0, 1),
                    }
                }
                Role::Endpoint(EndpointAction::Unresolved { slot })
                    if slot == h.slot && now.wrapping_sub(h.since) < self.hold_ticks =>
                {
                    self.held_expiry = self.held_expiry.min(h.since.saturating_add(self.hold_ticks));
                    self.held[kept] = Some(h);
                    kept += 1;
                }
                Role::Endpoint(EndpointAction::Unresolved { slot }) if slot == h.slot => {
                    self.drop_frame(h.m, FabricDrop::PeerUnresolved.index());
                    self.count_wire(slot, 0, 0, 0, 1);
                }
                _ => self.drop_frame(h.m, FabricDrop::NoWire.index()),
            }
        }
        self.held_len = kept;
    }

    /// Polls the uplink: decapsulates tunnel frames, answers ARP and ICMP
    /// echo for the VTEP, drops and counts everything else.
    #[inline(always)]
    fn poll_uplink(&mut self, snap: &Snapshot, up: &UplinkPlan, queue: u16) -> usize {
        let decap = &snap.decap;
        let n = self.rx.rx_from(&snap.devices[up.port.ix()].io, queue, &self.pool);
        let bad = self.rx.take_malformed();
        if bad != 0 {
            self.count_malformed(bad);
        }
        if n == 0 {
            return 0;
        }
        // Consecutive frames of one wire are looked up once, counted
        // together and handed to the endpoint's TX buffer as one run.
        let (mut cur_slot, mut frames, mut bytes) = (u32::MAX, 0u64, 0u64);
        let mut cur_port = PortIndex(u32::MAX);
        let mut run = Burst::new();
        let mut last: Option<(u64, Option<DecapTarget>)> = None;
        let mut released: Option<u64> = None;
        self.rx.prefetch_head();
        while let Some(mut m) = self.rx.pop() {
            if m.pkt_len() > up.max_frame {
                self.drop_frame(m, FabricDrop::Oversize.index());
                continue;
            }
            let d = match classify_verified(m.data(), m.pkt_len() as usize, &up.underlay, m.l4_checksum_good()) {
                Ok(Underlay::Tunnel(d)) => d,
                Ok(Underlay::Esp(e)) => match open_esp(snap, up, &mut m, e) {
                    Ok(d) => d,
                    Err(reason) => {
                        self.drop_frame(m, reason);
                        continue;
                    }
                },
                Ok(Underlay::NatKeepalive) => {
                    bump(&self.stats.handled[Handled::NatKeepalive as usize], 1);
                    self.free.push(m);
                    continue;
                }
                Ok(Underlay::Arp) => {
                    self.arp(snap, m, up);
                    continue;
                }
                Ok(Underlay::Migration) => {
                    if let Err(m) = self.mailbox.migration.push(m) {
                        self.drop_frame(m, FabricDrop::MigrationBacklog.index());
                    }
                    continue;
                }
                Ok(Underlay::IcmpEcho) => {
                    if icmpv4::echo_reply_in_place(m.data_mut(), up.underlay.mac) {
                        bump(&self.stats.handled[Handled::IcmpEchoAnswered as usize], 1);
                        self.send(snap, up.port, m);
                    } else {
                        self.drop_frame(m, underlay_index(UnderlayError::IcmpOther));
                    }
                    continue;
                }
                Err(e) => {
                    self.drop_frame(m, underlay_index(e));
                    continue;
                }
            };
            let key = decap_key(d.encap, d.connector.0);
            let found = match last {
                Some((k, t)) if k == key => t,
                _ => {
                    let t = decap.get(&key).copied();
                    last = Some((key, t));
                    t
                }
            };
            let target = match found {
                Some(t) if t.accepts(d.src_ip) => t,
                Some(_) if up.underlay.migration_port != 0 && self.stray.len() < STRAY_CAPACITY => {
                    // Perhaps the end moved there and its LOCATE is
                    // being applied: held a moment, not delivered.
                    if !m.adj(d.outer_len) || (d.trailer_len != 0 && !m.trim(d.trailer_len)) {
                        self.drop_frame(m, underlay_index(UnderlayError::Ipv4TotalLength));
                        continue;
                    }
                    let since = vw_pmd::time::tsc();
                    let slot = found.map_or(u32::MAX, |t| t.slot);
                    self.stray.push_back(Stray { key, slot, src: d.src_ip, since, m });
                    bump(&self.stats.handled[Handled::StrayHeld as usize], 1);
                    continue;
                }
                Some(_) => {
                    self.drop_frame(m, FabricDrop::WrongPeer.index());
                    continue;
                }
                None => {
                    self.drop_frame(m, FabricDrop::UnknownConnector.index());
                    continue;
                }
            };
            // classify guarantees the outer headers are in the first
            // segment and the trailer within the packet.
            if !m.adj(d.outer_len) || (d.trailer_len != 0 && !m.trim(d.trailer_len)) {
                self.drop_frame(m, underlay_index(UnderlayError::Ipv4TotalLength));
                continue;
            }
            if target.park != Park::No {
                if d.encap == Encap::Forward {
                    self.count_forwarded(target.slot);
                }
                self.park_frame(snap, key, m);
                if target.park == Park::Release {
                    released = Some(key);
                }
                continue;
            }
            if target.forward {
                self.forward(snap, up, m, target.slot, d.connector.0);
                continue;
            }
            if d.encap == Encap::Forward {
                self.count_forwarded(target.slot);
            }
            if target.slot != cur_slot || target.port != cur_port {
                self.end_run(snap, cur_port, &mut run, cur_slot, frames, bytes);
                (cur_slot, cur_port, frames, bytes) = (target.slot, target.port, 0, 0);
            }
            frames += 1;
            bytes += d.inner_len as u64;
            if let Err(m) = run.push(m) {
                // Cannot happen (a run is at most one burst); stay safe.
                self.send(snap, target.port, m);
            }
        }
        self.end_run(snap, cur_port, &mut run, cur_slot, frames, bytes);
        if let Some(key) = released {
            self.release_park(snap, key);
        }
        n
    }

    /// At a new snapshot: frames from a VTEP their wire now accepts (a
    /// LOCATE re-pointed or split it) go on, in order, ahead of what comes
    /// next from there; those whose wait is over are dropped; the rest keep
    /// waiting, in order.
    #[cold]
    fn release_strays(&mut self, snap: &Snapshot) {
        let now = vw_pmd::time::tsc();
        let mut longest = None;
        for _ in 0..self.stray.len() {
            let Some(s) = self.stray.pop_front() else { break };
            match snap.decap.get(&s.key).copied() {
                Some(t) if t.slot == s.slot && t.accepts(s.src) => {
                    let waited = now.saturating_sub(s.since) * 1_000_000 / self.tsc_hz;
                    longest = longest.max(Some(waited));
                    bump(&self.stats.handled[Handled::StrayReleased as usize], 1);
                    if t.park != Park::No {
                        self.park_frame(snap, s.key, s.m);
                    } else if t.forward {
                        // Our end of the wire left meanwhile: passed on.
                        match &snap.uplink {
                            Some(up) => self.forward(snap, up, s.m, t.slot, s.key as u32),
                            None => self.drop_frame(s.m, FabricDrop::WrongPeer.index()),
                        }
                    } else {
                        let len = s.m.pkt_len() as u64;
                        self.send(snap, t.port, s.m);
                        self.count_wire(t.slot, 1, 1, len, 0);
                    }
                }
                t if now >= s.since + self.stray_ticks => self.drop_stray(t.is_some_and(|t| t.slot == s.slot), s.m),
                _ => self.stray.push_back(s),
            }
        }
        if let Some(us) = longest {
            self.stats.stray_wait_last_us.store(us, Relaxed);
        }
    }

    /// Between snapshots: the frames whose wait is over, from the front
    /// (the queue is in arrival order), are dropped.
    #[cold]
    fn expire_strays(&mut self, snap: &Snapshot) {
        let now = vw_pmd::time::tsc();
        while self.stray.front().is_some_and(|s| now >= s.since + self.stray_ticks) {
            let Some(s) = self.stray.pop_front() else { break };
            let wire = snap.decap.get(&s.key).is_some_and(|t| t.slot == s.slot);
            self.drop_stray(wire, s.m);
        }
    }

    /// A held stray frame that no LOCATE claimed: `wrong_peer` while its
    /// wire is still here, `unknown_connector` if the wire went.
    fn drop_stray(&mut self, wire_here: bool, m: Mbuf) {
        let reason = if wire_here { FabricDrop::WrongPeer } else { FabricDrop::UnknownConnector };
        self.drop_frame(m, reason.index());
    }

    /// Puts a burst received on an endpoint whose frames are held in its
    /// hold queue (and sends the queue on if it is being released).
    #[cold]
    fn park_burst(&mut self, snap: &Snapshot, key: u64, park: Park) {
        while let Some(m) = self.rx.pop() {
            self.park_frame(snap, key, m);
        }
        if park == Park::Release {
            self.release_park(snap, key);
        }
    }

    /// Puts one frame in hold queue `key`, or drops it (`hold_overflow`) if
    /// the queue is full.
    #[cold]
    fn park_frame(&mut self, snap: &Snapshot, key: u64, m: Mbuf) {
        let slot = snap.parks_spec(key);
        let Some(p) = snap.parks.by_key.get(&key) else {
            // The plan names every queue it uses; stay safe.
            self.drop_frame(m, FabricDrop::HoldOverflow.index());
            self.count_wire(slot, 0, 0, 0, 1);
            return;
        };
        match p.queue.push(m) {
            Ok(()) => bump(&self.stats.handled[Handled::Held as usize], 1),
            Err(m) => {
                self.drop_frame(m, FabricDrop::HoldOverflow.index());
                self.count_wire(slot, 0, 0, 0, 1);
            }
        }
    }

    /// Frames a VM's ring refused while QEMU migrates the VM or just after
    /// its device went away, kept in the port's TX buffer: while the
    /// control plane has not yet seen the stop, they are tried again; once
    /// it has, they go into the queue that holds the VM's frames
    /// (`toward`), ahead of what it holds (they are older), or, with no
    /// such hold, are dropped as `endpoint_down`.
    #[cold]
    fn tend_stalled(&mut self, snap: &Snapshot) {
        let mut i = 0;
        while i < self.stalled.len() {
            let ix = self.stalled[i] as usize;
            let p = &snap.ports[ix];
            if !self.tx[ix].is_empty() && p.up && self.queue < p.txq {
                self.mark_dirty(ix);
                i += 1;
                continue;
            }
            if let Some(key) = p.toward.filter(|_| !self.tx[ix].is_empty()) {
                let Some(park) = snap.parks.by_key.get(&key) else {
                    self.discard_stalled(ix);
                    i += 1;
                    continue;
                };
                if !park.claim() {
                    // Another worker is sending on from it; next pass.
                    i += 1;
                    continue;
                }
                // Ahead of what the queue holds: push, then rotate the
                // frames that were there behind them.
                let before = park.queue.len();
                let mut kept = std::mem::take(&mut self.tx[ix]);
                kept.take_all(|m| self.park_frame(snap, key, m));
                self.tx[ix] = kept;
                for _ in 0..before {
                    let Some(m) = park.queue.pop() else { break };
                    if let Err(m) = park.queue.push(m) {
                        self.drop_frame(m, FabricDrop::HoldOverflow.index());
                    }
                }
                park.unclaim();
            } else {
                self.discard_stalled(ix);
            }
            self.stalled.swap_remove(i);
            self.in_stalled[ix] = false;
        }
    }

    /// Drops the frames kept for port `ix` (its VM is gone, with no hold).
    #[cold]
    fn discard_stalled(&mut self, ix: usize) {
        let n = self.tx[ix].discard();
        bump(&self.stats.ports[ix].tx_dropped, n);
        bump(&self.stats.drops[FabricDrop::EndpointDown.index()], n);
    }

    /// Sends on what the hold queues being released hold.
    #[cold]
    fn release_parks(&mut self, snap: &Snapshot) {
        for i in 0..snap.parks.releases.len() {
            let key = snap.parks.releases[i].0;
            self.release_park(snap, key);
        }
    }

    /// Sends on, in order, the frames of hold queue `key` (being released)
    /// where its path goes now, unless another worker is doing so.
    #[cold]
    fn release_park(&mut self, snap: &Snapshot, key: u64) {
        let Some(p) = snap.parks.by_key.get(&key) else { return };
        if p.queue.is_empty() {
            return;
        }
        // Older frames for the same VM, in another queue, go first (also
        // while another worker is sending them).
        let after = snap.plan.parks.get(&key).and_then(|s| s.after);
        if after.and_then(|a| snap.parks.by_key.get(&a)).is_some_and(|a| !a.settled()) {
            return;
        }
        if !p.claim() {
            return;
        }
        // No more than the VM's ring takes now: a VM that has just resumed
        // (on a cold start of its vCPUs, or a TCG guest's empty translation
        // cache) may take its RX ring only slowly, and what stays in the
        // queue is sent on at a later pass, in order, instead of `tx_full`.
        let budget = self.park_room(snap, key).map_or(RELEASE_BUDGET, |r| r.min(RELEASE_BUDGET));
        let mut n = 0u64;
        while n < budget as u64 {
            let Some(m) = p.queue.pop() else { break };
            self.unpark(snap, key, m);
            n += 1;
        }
        // Out on the ports before another worker may take the queue.
        self.flush_all(snap);
        p.unclaim();
        bump(&self.stats.handled[Handled::Released as usize], n);
    }

    /// How many frames of hold queue `key` the port its frames go to now
    /// takes at once, if that port can tell (a VM's RX ring, through this
    /// worker's queue), less what this worker has buffered for it.
    #[cold]
    fn park_room(&self, snap: &Snapshot, key: u64) -> Option<usize> {
        let to = match park_key_port(key) {
            Some(port) => match snap.ports.get(port.ix()).map(|p| p.role) {
                Some(Role::Endpoint(EndpointAction::Loopback { peer, .. })) => peer,
                _ => return None,
            },
            None => match snap.decap.get(&key) {
                Some(t) if !t.forward => t.port,
                _ => return None,
            },
        };
        let ix = to.ix();
        let room = snap.devices[ix].io.room(0)?;
        // A VM's ring is filled only by a worker with a queue on it (not
        // through the handoff ring, which would pass the bound), and not
        // while frames it refused wait in this worker's TX buffer.
        if self.queue >= snap.ports[ix].txq || self.in_stalled[ix] {
            return Some(0);
        }
        let room = snap.devices[ix].io.room(self.queue).unwrap_or(room);
        Some(room.saturating_sub(self.tx[ix].len()))
    }

    /// One held frame, sent the way its path goes now.
    #[cold]
    fn unpark(&mut self, snap: &Snapshot, key: u64, m: Mbuf) {
        if let Some(port) = park_key_port(key) {
            match snap.ports.get(port.ix()).map(|p| p.role) {
                Some(Role::Endpoint(action)) => self.act_one(snap, port, action, m),
                _ => self.drop_frame(m, FabricDrop::NoWire.index()),
            }
            return;
        }
        let Some(t) = snap.decap.get(&key).copied() else {
            self.drop_frame(m, FabricDrop::UnknownConnector.index());
            return;
        };
        if t.forward {
            match &snap.uplink {
                Some(up) => self.forward(snap, up, m, t.slot, key as u32),
                None => self.drop_frame(m, FabricDrop::NoWire.index()),
            }
            return;
        }
        let len = m.pkt_len() as u64;
        self.send(snap, t.port, m);
        self.count_wire(t.slot, 1, 1, len, 0);
    }

    /// What an endpoint's action does with one frame it sent.
    #[cold]
    fn act_one(&mut self, snap: &Snapshot, port: PortIndex, action: EndpointAction, m: Mbuf) {
        let len = m.pkt_len() as u64;
        match action {
            EndpointAction::Loopback { peer, slot, dir } => {
                self.send(snap, peer, m);
                self.count_wire(slot, dir as usize, 1, len, 0);
            }
            EndpointAction::Encap { template, uplink, slot } => match self.encap(snap, m, &template, uplink) {
                Some(_) => self.count_wire(slot, 0, 1, len, 0),
                None => self.count_wire(slot, 0, 0, 0, 1),
            },
            EndpointAction::Unresolved { slot } => self.hold(port, slot, vw_pmd::time::tsc(), m),
            EndpointAction::NoWire => self.drop_frame(m, FabricDrop::NoWire.index()),
        }
    }

    /// Hands a run of decapsulated frames for one endpoint to its TX buffer
    /// and counts them.
    #[inline(always)]
    fn end_run(&mut self, snap: &Snapshot, port: PortIndex, run: &mut Burst, slot: u32, frames: u64, bytes: u64) {
        if run.is_empty() {
            return;
        }
        self.send_burst(snap, port, run);
        self.count_wire(slot, 1, frames, bytes, 0);
    }

    /// Passes a decapsulated frame (outer headers already stripped) for an
    /// end that left this host on to its new host, in the forwarded-frame
    /// format of the migration channel.
    #[cold]
    fn forward(&mut self, snap: &Snapshot, up: &UplinkPlan, m: Mbuf, slot: u32, connector: u32) {
        let Some(t) = snap.forwards.get(&connector).copied() else {
            self.drop_frame(m, FabricDrop::PeerUnresolved.index());
            self.count_wire(slot, 0, 0, 0, 1);
            return;
        };
        match self.encap(snap, m, &t, up.port) {
            Some(_) => self.count_forwarded(slot),
            None => self.count_wire(slot, 0, 0, 0, 1),
        }
    }

    #[inline(always)]
    fn count_forwarded(&self, slot: u32) {
        if let Some(w) = self.stats.wires.get(slot as usize) {
            bump(&w.forwarded, 1);
        }
    }

    /// ARP on the uplink: answer requests for the VTEP, pass sightings of the
    /// neighbours we resolve to the control plane, ignore the rest.
    #[cold]
    fn arp(&mut self, snap: &Snapshot, mut m: Mbuf, up: &UplinkPlan) {
        let Some(info) = arp::parse(m.data()) else {
            self.drop_frame(m, underlay_index(UnderlayError::ArpMalformed));
            return;
        };
        let from_neighbour = up.neighbours.contains(&info.sender_ip);
        if from_neighbour
            && self.mailbox.events.push(NeighbourEvent { ip: info.sender_ip, mac: info.sender_mac }).is_err()
        {
            bump(&self.stats.arp_events_lost, 1);
        }
        if info.operation == arp::operation::REQUEST
            && info.target_ip == up.underlay.vtep_ip
            && arp::reply_in_place(m.data_mut(), up.underlay.mac, up.underlay.vtep_ip)
        {
            bump(&self.stats.handled[Handled::ArpAnswered as usize], 1);
            self.send(snap, up.port, m);
        } else if from_neighbour {
            bump(&self.stats.handled[Handled::ArpFromNeighbour as usize], 1);
            self.free.push(m);
        } else {
            self.drop_frame(m, FabricDrop::ArpIgnored.index());
        }
    }

    /// Flushes every TX buffer that received frames this iteration.
    #[inline(always)]
    fn flush_all(&mut self, snap: &Snapshot) {
        for i in 0..self.dirty.len() {
            let ix = self.dirty[i] as usize;
            self.in_dirty[ix] = false;
            self.flush_port(snap, ix);
        }
        self.dirty.clear();
    }

    /// Sends port `ix`'s TX buffer. Frames its queue refuses are
    /// `endpoint_down` if the port's VM is known to be gone (the device
    /// refuses them at once), else `tx_full`; but a few that a VM's ring
    /// refuses because it just stopped, while the port is still up here,
    /// are kept (see `tend_stalled`).
    #[inline(always)]
    fn flush_port(&mut self, snap: &Snapshot, ix: usize) {
        let dev = &snap.devices[ix];
        let f = if snap.ports[ix].up {
            self.tx[ix].flush_or_keep(&dev.io, self.queue)
        } else {
            self.tx[ix].flush_to(&dev.io, self.queue)
        };
        if f.kept > 0 && !self.in_stalled[ix] {
            self.in_stalled[ix] = true;
            self.stalled.push(ix as u32);
        }
        bump(&self.stats.tx_frames, f.sent);
        let pc = &self.stats.ports[ix];
        if let PortIo::Vhost(_) = dev.io {
            bump(&pc.tx_frames, f.sent);
            bump(&pc.tx_bytes, f.bytes);
        }
        if f.refused > 0 {
            bump(&pc.tx_dropped, f.refused);
            let reason = if snap.ports[ix].up { FabricDrop::TxFull } else { FabricDrop::EndpointDown };
            bump(&self.stats.drops[reason.index()], f.refused);
        }
    }
}
