//! The configuration the compiler reads: everything a request, a VM event
//! or a migration message may change, and nothing else.
//!
//! Every map is persistent (structurally shared), so the control plane
//! changes a copy in O(log n) and commits or drops it whatever the number of
//! endpoints and wires. Every change goes through a method that also marks
//! what it touched; [`crate::compile::update`] recomputes exactly that part
//! of the [`crate::Plan`].

use crate::migrate::{Departed, Hold, HoldAt, WireMove};
use crate::neighbour::Neighbours;
use crate::plan::PortIndex;
use crate::rxq::Rxqs;
use imbl::{OrdMap, OrdSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vw_ctl::proto::EndpointSpec;
use vw_wire::table::{Peer, TableError, Wire, WireTable};
use vw_wire::{ConnectorId, Encap, MacAddr};

/// The uplink's addresses (the device itself is the fabric's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    /// MAC address.
    pub mac: MacAddr,
    /// VTEP address.
    pub vtep: Ipv4Addr,
    /// Subnet prefix length of the VTEP address.
    pub prefix: u8,
    /// Gateway for peers outside the subnet.
    pub gateway: Option<Ipv4Addr>,
    /// Underlay MTU.
    pub mtu: u16,
    /// UDP port of the vwire format.
    pub vwire_port: u16,
    /// UDP port of the vxlan format.
    pub vxlan_port: u16,
}

/// A peer VTEP that has no next hop: outside the uplink's subnet, no gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute {
    /// The peer.
    pub peer: Ipv4Addr,
    /// The uplink's subnet.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peer {} is outside the uplink subnet {}/{} and no --gateway is set",
            self.peer, self.subnet, self.prefix
        )
    }
}

impl UplinkConfig {
    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32))).unwrap_or(0)
    }

    /// Whether `ip` is on the uplink's subnet.
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.vtep) & self.mask()
    }

    /// Refuses a peer VTEP this uplink cannot have: its own address, or its
    /// subnet's network or broadcast address (any unicast address is taken
    /// on a /31 or /32).
    pub fn check_peer(&self, peer: Ipv4Addr) -> Result<(), String> {
        if peer == self.vtep {
            return Err(format!("{peer} is this fabric's own VTEP; connect two local endpoints for a loopback wire"));
        }
        if self.prefix <= 30 && self.in_subnet(peer) {
            let host = u32::from(peer) & !self.mask();
            if host == 0 {
                return Err(format!(
                    "{peer} is the network address of the uplink subnet {}/{}",
                    Ipv4Addr::from(u32::from(self.vtep) & self.mask()),
                    self.prefix
                ));
            }
            if host == !self.mask() {
                return Err(format!(
                    "{peer} is the broadcast address of the uplink subnet {}/{}",
                    Ipv4Addr::from(u32::from(self.vtep) & self.mask()),
                    self.prefix
                ));
            }
        }
        Ok(())
    }

    /// The underlay next hop towards `peer`: the peer itself on the
    /// uplink's subnet, else the gateway.
    pub fn next_hop(&self, peer: Ipv4Addr) -> Result<Ipv4Addr, NoRoute> {
        if self.in_subnet(peer) {
            return Ok(peer);
        }
        self.gateway.ok_or(NoRoute {
            peer,
            subnet: Ipv4Addr::from(u32::from(self.vtep) & self.mask()),
            prefix: self.prefix,
        })
    }
}

/// Live migration as the compiler needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationConfig {
    /// UDP port of the channel (and of forwarded frames).
    pub port: u16,
    /// Grace period after a move.
    pub grace: Duration,
    /// Longest a stopped end's frames are held for it (`--migration-hold-ms`).
    pub hold: Duration,
}

/// What does not change while the fabric runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Workers.
    pub workers: usize,
    /// Size of the port table (index 0 is the uplink's).
    pub max_ports: usize,
    /// Wire counter slots.
    pub max_wires: u32,
    /// The uplink, if any.
    pub uplink: Option<UplinkConfig>,
    /// Benchmark aid: send the forward direction of loopback wires through
    /// encap in this format, the uplink (which must return what it sends)
    /// and decap.
    pub force_encap: Option<Encap>,
    /// Live migration, if on.
    pub migration: Option<MigrationConfig>,
}

impl Config {
    /// UDP destination port of a format (for a secure format, of the datagram inside).
    pub fn udp_port(&self, encap: Encap) -> u16 {
        match (&self.uplink, encap) {
            (Some(u), Encap::Vwire | Encap::Secure) => u.vwire_port,
            (Some(u), Encap::Vxlan | Encap::SecureVxlan) => u.vxlan_port,
            (_, Encap::Forward) => self.migration.map_or(0, |m| m.port),
            (None, e) => e.default_port(),
        }
    }

    /// The grace period after a move (zero without migration).
    pub fn grace(&self) -> Duration {
        self.migration.map_or(Duration::ZERO, |m| m.grace)
    }

    /// The next hop towards `peer`, if there is an uplink and a route.
    pub fn next_hop(&self, peer: Ipv4Addr) -> Option<Ipv4Addr> {
        self.uplink.as_ref()?.next_hop(peer).ok()
    }
}

/// What is behind an endpoint, as far as the plan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// A DPDK device with `queues` RX and TX queues.
    Eth {
        /// Queues configured.
        queues: u16,
    },
    /// A vhost-user socket offering `queues` queue pairs; what the VM uses
    /// of them is its [`Link`].
    Vhost {
        /// Queue pairs offered.
        queues: u16,
        /// Client mode.
        client: bool,
    },
}

/// A vhost-user VM's side of the link, as librte_vhost last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// A VM is connected and its device is running.
    pub up: bool,
    /// Enabled virtqueues (bit 2q: the VM's RX ring of pair q, our TX;
    /// bit 2q+1: its TX ring, our RX).
    pub vrings: u64,
    /// QEMU is live-migrating the VM (it logs the VM's dirty memory).
    pub migrating: bool,
}

/// An endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What the user asked for.
    pub spec: EndpointSpec,
    /// Its index in the port table.
    pub ix: PortIndex,
    /// Its device.
    pub kind: EndpointKind,
    /// The VM's side (vhost-user; always up for DPDK devices).
    pub link: Link,
    /// It has handoff rings: it may have fewer TX queues than workers.
    pub handoff: bool,
}

impl Endpoint {
    /// Queues (pairs) configured or offered.
    pub fn queues(&self) -> u16 {
        match self.kind {
            EndpointKind::Eth { queues } | EndpointKind::Vhost { queues, .. } => queues,
        }
    }

    /// RX queues that can carry frames now (only the rings a VM enabled:
    /// an absent or idle VM costs the workers nothing).
    pub fn rx_queues(&self) -> impl Iterator<Item = u16> + '_ {
        let vhost = matches!(self.kind, EndpointKind::Vhost { .. });
        (0..self.queues()).filter(move |q| !vhost || (self.link.up && self.link.vrings & (1u64 << (2 * q + 1)) != 0))
    }

    /// TX queues usable now. A vhost-user device: the VM's RX rings (even
    /// virtqueues) enabled from queue 0 up, at least one.
    pub fn txq(&self, workers: usize) -> u16 {
        match self.kind {
            EndpointKind::Eth { queues } => queues.min(workers as u16),
            EndpointKind::Vhost { queues, .. } => {
                let mut n = 0;
                while n < queues && self.link.vrings & (1u64 << (2 * n)) != 0 {
                    n += 1;
                }
                n.max(1)
            }
        }
    }

    /// Whether the port is up (a DPDK device always is, for the plan).
    pub fn up(&self) -> bool {
        matches!(self.kind, EndpointKind::Eth { .. }) || self.link.up
    }
}

/// What changed since the plan was last brought up to date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Ports whose decision, polls or drains may have changed.
    pub ports: OrdSet<PortIndex>,
    /// Connectors whose decap entries and forwards may have changed.
    pub wires: OrdSet<ConnectorId>,
    /// The uplink's plan (its polls, the neighbours it passes ARP from).
    pub uplink: bool,
}

impl Dirty {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.wires.is_empty() && !self.uplink
    }
}

/// The whole configuration. Cloning is O(1).
#[derive(Debug, Clone)]
pub struct State {
    config: Arc<Config>,
    table: WireTable,
    endpoints: OrdMap<String, Endpoint>,
    by_port: OrdMap<PortIndex, String>,
    /// Wire -> counter slot.
    wires: OrdMap<ConnectorId, u32>,
    /// Slots held by wires and by ends in their grace period.
    slots: OrdSet<u32>,
    next_slot: u32,
    neighbours: Neighbours,
    moves: OrdMap<ConnectorId, WireMove>,
    /// Ends that left this host, in their grace period, with their slot.
    departed: OrdMap<ConnectorId, (Departed, u32)>,
    rxqs: Rxqs,
    uplink_polled: bool,
    /// Frames held for wire ends in a live migration (see [`Hold`]).
    holds: OrdMap<HoldAt, Hold>,
    dirty: Dirty,
}

/// The ends of a wire (one for an encap wire, two for loopback).
fn ends(w: &Wire) -> impl Iterator<Item = &str> {
    std::iter::once(w.endpoint.as_str()).chain(w.local_peer())
}

impl State {
    /// An empty configuration.
    pub fn new(config: Config) -> State {
        let rxqs = Rxqs::new(config.workers);
        State {
            config: Arc::new(config),
            table: WireTable::new(),
            endpoints: OrdMap::new(),
            by_port: OrdMap::new(),
            wires: OrdMap::new(),
            slots: OrdSet::new(),
            next_slot: 0,
            neighbours: Neighbours::default(),
            moves: OrdMap::new(),
            departed: OrdMap::new(),
            rxqs,
            uplink_polled: false,
            holds: OrdMap::new(),
            dirty: Dirty { uplink: true, ports: OrdSet::unit(PortIndex::UPLINK), ..Dirty::default() },
        }
    }

    // ---- reading ------------------------------------------------------------

    /// What does not change.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The wires and endpoint names.
    pub fn table(&self) -> &WireTable {
        &self.table
    }

    /// An endpoint.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.get(name)
    }

    /// The endpoint at a port index.
    pub fn endpoint_at(&self, ix: PortIndex) -> Option<(&str, &Endpoint)> {
        let name = self.by_port.get(&ix)?;
        Some((name.as_str(), self.endpoints.get(name)?))
    }

    /// Every endpoint, by name.
    pub fn endpoints(&self) -> impl Iterator<Item = (&String, &Endpoint)> {
        self.endpoints.iter()
    }

    /// Number of endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// A wire's counter slot.
    pub fn slot(&self, id: ConnectorId) -> Option<u32> {
        self.wires.get(&id).copied()
    }

    /// The resolver of next hops.
    pub fn neighbours(&self) -> &Neighbours {
        &self.neighbours
    }

    /// What is known of a wire's moves.
    pub fn wire_move(&self, id: ConnectorId) -> Option<&WireMove> {
        self.moves.get(&id)
    }

    /// An end that left, in its grace period, with its slot.
    pub fn departed(&self, id: ConnectorId) -> Option<&(Departed, u32)> {
        self.departed.get(&id)
    }

    /// Every end that left, in its grace period.
    pub fn departures(&self) -> impl Iterator<Item = (&ConnectorId, &(Departed, u32))> {
        self.departed.iter()
    }

    /// Every hold, by where frames are held.
    pub fn holds(&self) -> impl Iterator<Item = (&HoldAt, &Hold)> {
        self.holds.iter()
    }

    /// The hold at `at`, if any.
    pub fn hold(&self, at: &HoldAt) -> Option<&Hold> {
        self.holds.get(at)
    }

    /// Receive-queue assignment.
    pub fn rxqs(&self) -> &Rxqs {
        &self.rxqs
    }

    /// Whether workers poll the uplink.
    pub fn uplink_polled(&self) -> bool {
        self.uplink_polled
    }

    /// What changed since the plan was brought up to date.
    pub fn dirty(&self) -> &Dirty {
        &self.dirty
    }

    /// Takes the change marks (the plan is now up to date).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks everything changed (to compile a plan from nothing).
    pub fn mark_all(&mut self) {
        self.dirty.uplink = true;
        self.dirty.ports.extend(self.by_port.keys().copied());
        self.dirty.ports.insert(PortIndex::UPLINK);
        self.dirty.wires.extend(self.wires.keys().copied());
        self.dirty.wires.extend(self.departed.keys().copied());
    }

    /// The MAC of the next hop towards `peer`, if resolved.
    pub fn next_hop_mac(&self, peer: Ipv4Addr) -> Option<MacAddr> {
        self.neighbours.mac(self.config.next_hop(peer)?)
    }

    // ---- marking ------------------------------------------------------------

    fn mark_endpoint(&mut self, name: &str) {
        if let Some(e) = self.endpoints.get(name) {
            self.dirty.ports.insert(e.ix);
        }
    }

    /// Marks wire `id` with its ends as they are now, and ends that left.
    /// Called before and after every change of the wire.
    fn mark_wire(&mut self, id: ConnectorId) {
        self.dirty.wires.insert(id);
        let mut names: Vec<String> = Vec::new();
        if let Some(w) = self.table.wire(id) {
            names.extend(ends(w).map(str::to_owned));
        }
        if let Some((d, _)) = self.departed.get(&id) {
            names.push(d.endpoint.clone());
            if let Peer::Local(o) = &d.peer {
                names.push(o.clone());
            }
        }
        for n in names {
            self.mark_endpoint(&n);
        }
    }

    /// Marks what uses next hop `hop`: encap wires and departed ends whose
    /// peer or new host is reached through it.
    fn mark_hop_users(&mut self, hop: Ipv4Addr) {
        let cfg = self.config.clone();
        let via = |ip: Ipv4Addr| cfg.next_hop(ip) == Some(hop);
        let mut ids: Vec<ConnectorId> = self
            .table
            .wires()
            .filter(|w| matches!(w.peer, Peer::Remote { vtep, .. } if via(vtep)))
            .map(|w| w.id)
            .collect();
        ids.extend(
            self.departed
                .iter()
                .filter(|(_, (d, _))| via(d.to) || matches!(d.peer, Peer::Remote { vtep, .. } if via(vtep)))
                .map(|(id, _)| *id),
        );
        for id in ids {
            self.mark_wire(id);
        }
    }

    fn mark_hold(&mut self, at: &HoldAt) {
        // The hold also decides where frames for the VM on the other side
        // of it go while that VM is stopped (a port's `toward`).
        let (wire, name) = match at {
            HoldAt::From(name) => (self.table().wire_of(name).map(|w| w.id), Some(name.clone())),
            HoldAt::Inbound(id) => (Some(*id), None),
        };
        if let Some(name) = name {
            self.mark_endpoint(&name);
        }
        if let Some(id) = wire {
            self.mark_wire(id);
            if let Some(w) = self.table().wire(id).cloned() {
                self.mark_endpoint(&w.endpoint);
                if let Peer::Local(b) = &w.peer {
                    self.mark_endpoint(b);
                }
            }
        }
    }

    // ---- holds --------------------------------------------------------------

    /// Starts or changes the hold at `at`.
    pub fn set_hold(&mut self, at: HoldAt, hold: Hold) {
        self.mark_hold(&at);
        self.holds.insert(at, hold);
    }

    /// Ends the hold at `at`.
    pub fn end_hold(&mut self, at: &HoldAt) -> Option<Hold> {
        let h = self.holds.remove(at)?;
        self.mark_hold(at);
        Some(h)
    }

    /// The FLUSHED a released hold was to send is sent (reported, not
    /// compiled: nothing is marked).
    pub fn flush_sent(&mut self, at: &HoldAt) {
        if let Some(h) = self.holds.get_mut(at) {
            h.flush_to = None;
        }
    }

    // ---- endpoints ----------------------------------------------------------

    /// Adds an endpoint at port index `ix` (the caller found it free).
    pub fn add_endpoint(&mut self, name: &str, ep: Endpoint) -> Result<(), TableError> {
        self.table.add_endpoint(name)?;
        let ix = ep.ix;
        let queues: Vec<u16> = ep.rx_queues().collect();
        self.endpoints.insert(name.to_owned(), ep);
        self.by_port.insert(ix, name.to_owned());
        self.rxqs.set_port(ix, &queues);
        self.dirty.ports.insert(ix);
        self.mark_departed_of(name);
        Ok(())
    }

    /// Removes an endpoint that carries no wire.
    pub fn remove_endpoint(&mut self, name: &str) -> Result<Endpoint, TableError> {
        self.table.remove_endpoint(name)?;
        self.mark_departed_of(name);
        let ep = self.endpoints.remove(name).ok_or_else(|| TableError::NoSuchEndpoint(name.to_owned()))?;
        self.by_port.remove(&ep.ix);
        self.rxqs.set_port(ep.ix, &[]);
        self.dirty.ports.insert(ep.ix);
        Ok(ep)
    }

    fn mark_departed_of(&mut self, name: &str) {
        let ids: Vec<ConnectorId> = self
            .departed
            .iter()
            .filter(|(_, (d, _))| d.endpoint == name || matches!(&d.peer, Peer::Local(o) if o == name))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.mark_wire(id);
        }
    }

    /// A vhost-user VM's link or rings changed. Returns whether anything did.
    pub fn set_link(&mut self, name: &str, link: Link) -> bool {
        let Some(ep) = self.endpoints.get_mut(name) else { return false };
        if ep.link == link {
            return false;
        }
        ep.link = link;
        let (ix, queues): (PortIndex, Vec<u16>) = (ep.ix, ep.rx_queues().collect());
        self.rxqs.set_port(ix, &queues);
        self.dirty.ports.insert(ix);
        true
    }

    /// Lets the workers poll the uplink.
    pub fn poll_uplink(&mut self) {
        if self.config.uplink.is_some() && !self.uplink_polled {
            self.uplink_polled = true;
            let queues: Vec<u16> = (0..self.config.workers as u16).collect();
            self.rxqs.set_port(PortIndex::UPLINK, &queues);
            self.dirty.ports.insert(PortIndex::UPLINK);
        }
    }

    /// Takes the measured load of every receive queue (frames per second).
    /// Nothing the plan reads: it decides where new queues go and what
    /// [`State::rebalance`] does.
    pub fn measure(&mut self, load: &dyn Fn(PortIndex, u16) -> u64) {
        self.rxqs.set_loads(load);
    }

    /// Re-balances receive queues over workers by their measured load (see
    /// [`Rxqs::rebalance`]). Queues that move are parked: no worker polls
    /// them until [`State::unpark`], so that the old and the new worker
    /// never poll one queue at once. Returns how many ports have one that moved.
    pub fn rebalance(&mut self) -> usize {
        let moved = self.rxqs.rebalance();
        for &ix in &moved {
            self.dirty.ports.insert(ix);
        }
        moved.len()
    }

    /// Lets workers poll queues that [`State::rebalance`] moved, once no
    /// worker runs a plan that polls them at their old place.
    pub fn unpark(&mut self) {
        for ix in self.rxqs.unpark() {
            self.dirty.ports.insert(ix);
        }
    }

    // ---- wires --------------------------------------------------------------

    /// A free counter slot, the first from the last one taken (so a slot is
    /// reused as late as possible); `None` when all are in use.
    pub fn free_slot(&self) -> Option<u32> {
        let max = self.config.max_wires;
        if self.slots.len() as u32 >= max {
            return None;
        }
        (0..max).map(|i| (self.next_slot + i) % max).find(|s| !self.slots.contains(s))
    }

    /// Connects wire `id` with counter slot `slot` (from [`State::free_slot`]).
    pub fn connect(&mut self, id: ConnectorId, endpoint: &str, peer: Peer, slot: u32) -> Result<(), TableError> {
        self.table.connect(id, endpoint, peer)?;
        self.wires.insert(id, slot);
        self.slots.insert(slot);
        self.next_slot = (slot + 1) % self.config.max_wires.max(1);
        self.mark_wire(id);
        Ok(())
    }

    /// Disconnects wire `id` and forgets its moves.
    pub fn disconnect(&mut self, id: ConnectorId) -> Result<Wire, TableError> {
        self.mark_wire(id);
        let w = self.table.disconnect(id)?;
        self.moves.remove(&id);
        let held: Vec<HoldAt> = self.holds.iter().filter(|(_, h)| h.wire == id).map(|(at, _)| at.clone()).collect();
        for at in held {
            self.end_hold(&at);
        }
        self.release_slot(id);
        Ok(w)
    }

    fn release_slot(&mut self, id: ConnectorId) {
        if let Some(slot) = self.wires.remove(&id) {
            if self.departed.get(&id).is_none_or(|(_, s)| *s != slot) {
                self.slots.remove(&slot);
            }
        }
    }

    /// The remote end of encap wire `id` moved to `vtep`.
    pub fn repoint(&mut self, id: ConnectorId, vtep: Ipv4Addr, encap: Encap) -> Result<(), TableError> {
        self.table.repoint(id, vtep, encap)?;
        self.mark_wire(id);
        Ok(())
    }

    /// The remote end of encap wire `id` arrived here as `arriving`.
    pub fn colocate(&mut self, id: ConnectorId, arriving: &str) -> Result<(), TableError> {
        self.table.colocate(id, arriving)?;
        self.mark_wire(id);
        Ok(())
    }

    /// End `leaving` of loopback wire `id` left for `vtep`; during the grace
    /// period it is a departed end (`d`).
    pub fn split(&mut self, id: ConnectorId, d: Departed, encap: Encap) -> Result<(), TableError> {
        self.mark_wire(id);
        let slot = self.wires.get(&id).copied().ok_or(TableError::NoSuchWire(id))?;
        self.table.split(id, &d.endpoint, d.to, encap)?;
        self.departed.insert(id, (d, slot));
        self.mark_wire(id);
        Ok(())
    }

    /// Our end of encap wire `id` moved to another host: the wire leaves
    /// the table, its end stays as departed (`d`) for the grace period.
    pub fn depart(&mut self, id: ConnectorId, d: Departed) -> Result<(), TableError> {
        self.mark_wire(id);
        let slot = self.wires.get(&id).copied().ok_or(TableError::NoSuchWire(id))?;
        self.table.disconnect(id)?;
        self.departed.insert(id, (d, slot));
        self.wires.remove(&id);
        self.mark_wire(id);
        Ok(())
    }

    /// Ends the grace period of departed end `id`.
    pub fn forget_departed(&mut self, id: ConnectorId) -> Option<(Departed, u32)> {
        self.mark_wire(id);
        let (d, slot) = self.departed.remove(&id)?;
        if self.wires.get(&id) != Some(&slot) {
            self.slots.remove(&slot);
        }
        Some((d, slot))
    }

    /// The moves of wire `id`, to change (created if absent).
    pub fn move_mut(&mut self, id: ConnectorId) -> &mut WireMove {
        self.mark_wire(id);
        self.moves.entry(id).or_default()
    }

    /// Records how long applying the last move of wire `id` took (reported,
    /// not compiled: nothing is marked).
    pub fn set_move_time(&mut self, id: ConnectorId, us: u64) {
        if let Some(m) = self.moves.get_mut(&id) {
            m.last_move_us = us;
        }
    }

    /// Drops grace periods that ended; returns whether one did.
    pub fn expire_moves(&mut self, now: Instant) -> bool {
        let due: Vec<ConnectorId> = self.moves.iter().filter(|(_, m)| m.due(now)).map(|(id, _)| *id).collect();
        for id in &due {
            self.move_mut(*id).expire(now);
        }
        !due.is_empty()
    }

    // ---- neighbours ---------------------------------------------------------

    /// Starts resolving the next hop towards `peer`, and takes `mac` for it
    /// if given (from an authenticated message) and `peer` is on our subnet.
    pub fn want(&mut self, peer: Ipv4Addr, mac: Option<MacAddr>, now: Instant) {
        let Some(hop) = self.config.next_hop(peer) else { return };
        self.neighbours.want(hop, now);
        self.dirty.uplink = true;
        if let Some(mac) = mac.filter(|m| *m != MacAddr([0; 6]) && hop == peer) {
            self.heard(hop, mac, now);
        }
    }

    /// One wire less uses the next hop towards `peer`.
    pub fn release(&mut self, peer: Ipv4Addr) {
        if let Some(hop) = self.config.next_hop(peer) {
            self.neighbours.release(hop);
            self.dirty.uplink = true;
        }
    }

    /// An operator-configured neighbour.
    pub fn add_permanent(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        self.neighbours.add_permanent(ip, mac, now);
        self.dirty.uplink = true;
        self.mark_hop_users(ip);
    }

    /// An ARP sighting; returns whether a next hop's MAC changed (then what
    /// goes through it is marked).
    pub fn heard(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) -> bool {
        let changed = self.neighbours.heard(ip, mac, now);
        if changed {
            self.mark_hop_users(ip);
        }
        changed
    }

    /// Addresses to send an ARP request for now (advances their schedule;
    /// nothing the plan reads).
    pub fn due_probes(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        self.neighbours.due(now)
    }
}
