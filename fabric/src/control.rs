//! The control plane: runs on the EAL main lcore, owns all configuration.
//!
//! Requests from the control socket are handled one at a time. A change is
//! made on a copy of the state, turned into a new data-path [`Snapshot`],
//! published to the workers (who switch at their next quiescent point), and
//! only then committed; a refused or failed request leaves everything as it
//! was. A periodic tick resolves underlay neighbours (ARP) and checks that
//! every worker is alive.

pub use crate::migrate::MigrationSettings;
use crate::migrate::{self, now_ns, Channel, Departed, Pending, WireMove};
use crate::neighbour::Neighbours;
use crate::persist::{Change, Saved, SavedWire, Store};
use crate::snapshot::{
    self, decap_key, new_handoff, rx_worker, DecapTarget, EndpointAction, Handoff, Mailbox, PortIndex, PortPlan, Role,
    Snapshot, UplinkPlan,
};
use crate::stats::{drop_name, FabricDrop, Handled, PortTotals, WireTotals, WorkerStats, DROP_REASONS};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vw_ctl::proto::{self, EncapName, EndpointSpec, ErrorCode, Reply, Request};
use vw_ctl::server::Job;
use vw_pmd::{port, vhost, Mempool, PortConfig, PortId, PortInfo, PortIo, VhostSocket};
use vw_wire::migration::{kind, Message};
use vw_wire::table::{Peer, TableError, WireTable};
use vw_wire::{arp, ConnectorId, Encap, EncapTemplate, MacAddr, UnderlayConfig};

/// How long a worker may take to switch to a new snapshot.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Control-plane housekeeping period (ARP, worker health, vhost links).
const TICK: Duration = Duration::from_millis(10);
/// Wire counter slot meaning "do not count" (the decap half of a forced-encap
/// loopback wire: its encap half already counted the frame).
const NO_SLOT: u32 = u32::MAX;
/// How often the control plane looks for migration messages.
const MIGRATION_POLL: Duration = Duration::from_micros(200);

/// Size of the port table: the uplink, every vhost-user socket librte_vhost
/// can hold and every ethdev port DPDK can hold.
pub fn max_ports() -> usize {
    1 + vhost::MAX_SOCKETS + port::max_ports() as usize
}

/// The uplink's settings.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// Device arguments.
    pub devargs: String,
    /// DPDK port id (its index in the fabric is [`PortIndex::UPLINK`]).
    pub port: PortId,
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

impl Uplink {
    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
        u32::from(ip) & mask == u32::from(self.vtep) & mask
    }
}

/// A worker as the control plane sees it.
pub struct WorkerHandle {
    /// Worker index.
    pub index: usize,
    /// EAL lcore.
    pub lcore: u32,
    /// Its mailbox.
    pub mailbox: Arc<Mailbox>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
}

/// Settings the control plane needs from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Control socket path (for `status`).
    pub socket: String,
    /// RX/TX descriptors per queue for endpoints.
    pub rx_desc: u16,
    /// See `rx_desc`.
    pub tx_desc: u16,
    /// Number of wire counter slots.
    pub max_wires: usize,
    /// Idle back-off (for `status`).
    pub idle_sleep_us: u64,
    /// State file, if configuration is persisted.
    pub state_file: Option<PathBuf>,
    /// Neighbours configured by the operator (never probed).
    pub static_neighbours: Vec<(Ipv4Addr, MacAddr)>,
    /// Benchmark aid: send the forward direction of loopback wires through
    /// encap, the uplink (which must return what it sends) and decap.
    pub force_encap: bool,
    /// Live migration, if a key was given.
    pub migration: Option<MigrationSettings>,
}

/// What is behind an endpoint.
#[derive(Clone)]
enum Device {
    /// A DPDK device: one ethdev port.
    Eth {
        /// Its port.
        port: PortId,
        /// Static facts.
        info: PortInfo,
        /// Its MAC address.
        mac: MacAddr,
    },
    /// A vhost-user socket on librte_vhost; its link and usable queues
    /// follow the VM. Shared by the states that refer to it; the socket is
    /// unregistered when the last one goes.
    Vhost(Arc<VhostSocket>),
}

#[derive(Clone)]
struct Endpoint {
    spec: EndpointSpec,
    /// Its index in the port table.
    ix: PortIndex,
    dev: Device,
    /// RX and TX queues configured on the device (vhost-user: queue pairs offered).
    queues: u16,
    /// Handoff rings when the port may have fewer TX queues than workers.
    handoff: Option<Handoff>,
    /// The port index's counters when the endpoint was added (an index is reused).
    base: PortTotals,
}

impl Endpoint {
    fn io(&self) -> PortIo {
        match &self.dev {
            Device::Eth { port, .. } => PortIo::Eth(*port),
            Device::Vhost(s) => PortIo::Vhost(s.port().clone()),
        }
    }
}

/// TX queues of a vhost-user device usable now: the VM's RX rings (even
/// virtqueues) enabled from queue 0 up, at least one.
fn vhost_txq(vrings: u64, queues: u16) -> u16 {
    let mut n = 0;
    while n < queues && vrings & (1u64 << (2 * n)) != 0 {
        n += 1;
    }
    n.max(1)
}

#[derive(Debug, Clone, Copy)]
struct WireSlot {
    slot: u32,
    base: WireTotals,
}

/// Everything a request may change, cloned for each change.
#[derive(Clone, Default)]
struct State {
    table: WireTable,
    endpoints: BTreeMap<String, Endpoint>,
    wires: BTreeMap<ConnectorId, WireSlot>,
    neighbours: Neighbours,
    /// What is known of each wire's moves.
    moves: BTreeMap<ConnectorId, WireMove>,
    /// Ends that left this host, in their grace period.
    departed: BTreeMap<ConnectorId, (Departed, WireSlot)>,
}

/// What a change touched, to be recorded in the state journal as it is after
/// the change (present: saved; absent: removed).
enum Touched {
    /// An endpoint, by name.
    Endpoint(String),
    /// A wire.
    Wire(ConnectorId),
}

/// A refused request.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

impl From<TableError> for Refusal {
    fn from(e: TableError) -> Refusal {
        let code = match e.code() {
            "wire_exists" => ErrorCode::WireExists,
            "endpoint_busy" => ErrorCode::EndpointBusy,
            "no_such_endpoint" => ErrorCode::NoSuchEndpoint,
            "no_such_wire" => ErrorCode::NoSuchWire,
            "endpoint_exists" => ErrorCode::EndpointExists,
            _ => ErrorCode::InvalidArgument,
        };
        Refusal::new(code, e.to_string())
    }
}

fn device_error(e: vw_pmd::Error) -> Refusal {
    Refusal::new(ErrorCode::DeviceError, e.to_string())
}

/// A failure that stops the fabric.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    /// A worker did not take a new configuration in time. Workers may now
    /// run different snapshots, so nothing may be removed and the fabric
    /// stops rather than pretend the change did not happen.
    #[error("{0}")]
    WorkerStuck(String),
    /// A worker stopped running its loop.
    #[error("worker {index} on lcore {lcore} stopped unexpectedly (see the panic message above)")]
    WorkerDied {
        /// Worker index.
        index: usize,
        /// Its lcore.
        lcore: u32,
    },
}

/// The control plane.
pub struct Control {
    settings: Settings,
    pool: Mempool,
    workers: Vec<WorkerHandle>,
    mailboxes: Vec<Arc<Mailbox>>,
    uplink: Option<Uplink>,
    state: State,
    current: Arc<Snapshot>,
    /// Version of the next snapshot; increases on every build, published or not.
    next_version: u64,
    /// A neighbour change waits to be published (a publish failed).
    republish: bool,
    fatal: Option<Fatal>,
    next_slot: u32,
    /// Port indexes not in use (the uplink's is never free), lowest first.
    free_ports: std::collections::BTreeSet<u32>,
    /// Frames freed from handoff rings of removed endpoints.
    removed_in_flight: u64,
    /// Saved entries that could not be restored at start: kept in the state
    /// file (until replaced) and shown in `status`, retried at next start.
    unrestored: Saved,
    /// The state file and its journal, with `--state`.
    store: Option<Store>,
    /// Restoring the state file: changes are neither recorded nor published.
    restoring: bool,
    started: Instant,
    last_tick: Instant,
    /// The migration channel, with `--migration-key-file`.
    mig: Option<Channel>,
    /// Workers poll the uplink (set once the saved wires are back, so
    /// frames that arrive during a restart wait in the uplink's RX ring
    /// instead of being dropped as `unknown_connector`).
    uplink_polled: bool,
    /// `oversize` drops already reported in the log, and when last.
    oversize_logged: (u64, Option<Instant>),
}

impl Control {
    /// A control plane with no endpoint and no wire yet.
    pub fn new(settings: Settings, pool: Mempool, workers: Vec<WorkerHandle>, uplink: Option<Uplink>) -> Control {
        let mailboxes = workers.iter().map(|w| w.mailbox.clone()).collect();
        let mut state = State::default();
        for (ip, mac) in &settings.static_neighbours {
            state.neighbours.add_permanent(*ip, *mac, Instant::now());
        }
        let nworkers = workers.len();
        let mut c = Control {
            settings,
            pool,
            workers,
            mailboxes,
            uplink,
            state,
            current: Arc::new(Snapshot::empty(max_ports(), nworkers)),
            next_version: 2,
            republish: false,
            fatal: None,
            next_slot: 0,
            free_ports: (1..max_ports() as u32).collect(),
            removed_in_flight: 0,
            unrestored: Saved::default(),
            store: None,
            restoring: false,
            started: Instant::now(),
            last_tick: Instant::now(),
            mig: None,
            uplink_polled: false,
            oversize_logged: (0, None),
        };
        c.mig = c.settings.migration.clone().map(Channel::new);
        c.current = Arc::new(c.build(&c.state, 1));
        c
    }

    /// The snapshot workers start with.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.clone()
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// Announces the VTEP on the underlay (gratuitous ARP) so switches learn its MAC.
    pub fn announce(&mut self) {
        if let Some(u) = &self.uplink {
            let mut buf = [0u8; 60];
            let n = arp::build_gratuitous(&mut buf, u.mac, u.vtep);
            self.inject(&buf[..n]);
        }
    }

    /// Serves requests and housekeeping until `stop` is set.
    pub fn run(&mut self, jobs: &Receiver<Job>, stop: &AtomicBool) -> Result<(), Fatal> {
        while !stop.load(Ordering::SeqCst) {
            if let Some(f) = self.fatal.clone() {
                return Err(f);
            }
            // Location updates are taken within MIGRATION_POLL of arriving.
            let wait = if self.mig.is_some() { MIGRATION_POLL } else { TICK };
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    let reply = self.handle(&job.request);
                    job.reply(reply);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            if self.mig.is_some() {
                self.take_neighbour_events();
                self.poll_migration();
            }
            if self.last_tick.elapsed() >= TICK {
                self.tick()?;
            }
        }
        Ok(())
    }

    /// Releases every port (endpoints, then the uplink) and frees queued
    /// frames. Call after the workers have stopped, before EAL cleanup.
    pub fn release_ports(&mut self) {
        // A clean stop leaves the state file whole, its journal empty.
        if let Some(store) = &mut self.store {
            if let Err(e) = store.compact() {
                crate::log(&format!("cannot rewrite the state file {}: {e}", store.path().display()));
            }
        }
        for mb in &self.mailboxes {
            while mb.inject.pop().is_some() {}
            while mb.migration.pop().is_some() {}
            mb.reclaim();
        }
        for (name, ep) in std::mem::take(&mut self.state.endpoints) {
            // A vhost-user socket is unregistered when its last state goes.
            if let Device::Eth { port, .. } = ep.dev {
                if let Err(e) = port::remove(port) {
                    crate::log(&format!("removing endpoint {name}: {e}"));
                }
            }
        }
        if let Some(u) = self.uplink.take() {
            if let Err(e) = port::remove(u.port) {
                crate::log(&format!("removing the uplink: {e}"));
            }
        }
    }

    fn handle(&mut self, request: &Request) -> Reply {
        let result = match request {
            Request::Status => Ok(Reply::ok(&self.status())),
            Request::EndpointAdd { name, spec } => self.endpoint_add(name, spec).map(|e| Reply::ok(&e)),
            Request::EndpointDel { name } => self.endpoint_del(name).map(|_| Reply::ok(&serde_json::json!({}))),
            Request::EndpointList => Ok(Reply::ok(&self.endpoint_list())),
            Request::Connect { wire, endpoint, peer, encap } => {
                self.connect(ConnectorId(*wire), endpoint, peer, *encap).map(|w| Reply::ok(&w))
            }
            Request::Disconnect { wire } => {
                self.disconnect(ConnectorId(*wire)).map(|_| Reply::ok(&serde_json::json!({})))
            }
            Request::WireList => Ok(Reply::ok(&self.wire_list())),
            Request::Stats => Ok(Reply::ok(&self.stats())),
        };
        result.unwrap_or_else(|r| Reply::err(r.code, r.message))
    }

    // ---- applying changes -------------------------------------------------

    fn build(&self, st: &State, version: u64) -> Snapshot {
        let nworkers = self.workers.len();
        let mut s = Snapshot::empty(max_ports(), nworkers);
        s.version = version;
        let all = nworkers as u16;
        let poll = |s: &mut Snapshot, p: PortIndex, q: u16| s.polls[rx_worker(p, q, nworkers)].push((p, q));
        for ep in st.endpoints.values() {
            let (txq, up) = match &ep.dev {
                Device::Vhost(v) => {
                    // Only the rings the VM enabled are polled: an absent or
                    // idle VM costs the workers nothing.
                    let vs = v.port().state();
                    if vs.up {
                        for q in (0..ep.queues).filter(|q| vs.vrings & (1u64 << (2 * q + 1)) != 0) {
                            poll(&mut s, ep.ix, q);
                        }
                    }
                    (vhost_txq(vs.vrings, ep.queues), vs.up)
                }
                Device::Eth { .. } => {
                    for q in 0..ep.queues {
                        poll(&mut s, ep.ix, q);
                    }
                    (ep.queues.min(all), true)
                }
            };
            s.ports[ep.ix.ix()] = PortPlan {
                role: Role::Endpoint(EndpointAction::NoWire),
                io: ep.io(),
                txq,
                up,
                handoff: ep.handoff.clone(),
            };
            if let Some(h) = &ep.handoff {
                // Worker k hands frames to ring k only while k >= txq and the
                // port is up (frames for a port that is down are dropped at
                // once). A ring has a drainer while that may happen, in this
                // snapshot or in the one workers run now, and until it is
                // empty; no worker refills it after that. Rings that cannot
                // hold frames cost the workers nothing.
                let used = |p: &PortPlan| p.up && (p.txq as usize) < nworkers;
                let before = self.current.ports.get(ep.ix.ix()).is_some_and(|p| p.handoff.is_some() && used(p));
                if used(&s.ports[ep.ix.ix()]) || before || h.iter().any(|r| !r.is_empty()) {
                    for k in 0..nworkers {
                        s.drains[k % txq as usize].push((ep.ix, k));
                    }
                }
            }
        }
        // The uplink is polled after the endpoints, so a frame that goes out
        // and comes straight back (a forced-encap loop) is decapsulated in
        // the same iteration.
        if let Some(u) = &self.uplink {
            let ix = PortIndex::UPLINK;
            s.ports[ix.ix()] =
                PortPlan { role: Role::Uplink, io: PortIo::Eth(u.port), txq: all, up: true, handoff: None };
            if self.uplink_polled {
                for q in 0..all {
                    poll(&mut s, ix, q);
                }
            }
            s.uplink = Some(UplinkPlan {
                port: ix,
                underlay: UnderlayConfig {
                    vtep_ip: u.vtep,
                    mac: u.mac,
                    vwire_port: u.vwire_port,
                    vxlan_port: u.vxlan_port,
                    migration_port: self.settings.migration.as_ref().map_or(0, |m| m.port),
                },
                neighbours: st.neighbours.addresses(),
                max_frame: u32::from(u.mtu) + 14,
            });
        }
        let set = |s: &mut Snapshot, p: PortIndex, a: EndpointAction| s.ports[p.ix()].role = Role::Endpoint(a);
        // Ends that left, first: a wire of the table overrides them.
        for (id, (d, ws)) in &st.departed {
            match &d.peer {
                Peer::Remote { vtep, encap } => {
                    if self.uplink.is_none() {
                        continue;
                    }
                    if let Some(ep) = st.endpoints.get(&d.endpoint) {
                        set(&mut s, ep.ix, self.encap_action(st, *id, *vtep, *encap, ws.slot));
                    }
                    let fwd = DecapTarget { forward: true, ..DecapTarget::deliver(PortIndex::UPLINK, ws.slot, *vtep) };
                    s.decap.insert(decap_key(*encap, id.0), fwd);
                    if let Some(t) = self.forward_template(st, *id, d.to) {
                        s.forwards.insert(ws.slot, t);
                    }
                }
                Peer::Local(other) => {
                    if let (Some(ep), Some(o)) = (st.endpoints.get(&d.endpoint), st.endpoints.get(other)) {
                        set(&mut s, ep.ix, EndpointAction::Loopback { peer: o.ix, slot: ws.slot, dir: 0 });
                    }
                }
            }
        }
        for w in st.table.wires() {
            let (Some(a), Some(ws)) = (st.endpoints.get(&w.endpoint), st.wires.get(&w.id)) else { continue };
            match &w.peer {
                Peer::Local(b) => {
                    let Some(b) = st.endpoints.get(b) else { continue };
                    match (&self.uplink, self.settings.force_encap) {
                        (Some(u), true) => {
                            // Benchmark aid: a -> encap -> uplink -> decap -> b.
                            let template = EncapTemplate::new(
                                Encap::Vwire,
                                w.id,
                                u.mac,
                                u.mac,
                                u.vtep,
                                u.vtep,
                                u.vwire_port,
                                u.mtu,
                            );
                            set(
                                &mut s,
                                a.ix,
                                EndpointAction::Encap { template, uplink: PortIndex::UPLINK, slot: ws.slot },
                            );
                            s.decap
                                .insert(decap_key(Encap::Vwire, w.id.0), DecapTarget::deliver(b.ix, NO_SLOT, u.vtep));
                        }
                        _ => set(&mut s, a.ix, EndpointAction::Loopback { peer: b.ix, slot: ws.slot, dir: 0 }),
                    }
                    set(&mut s, b.ix, EndpointAction::Loopback { peer: a.ix, slot: ws.slot, dir: 1 });
                    // Just co-located: frames the arriving end (a) sent from
                    // its old host still reach b; frames for it that its old
                    // host passes on reach a.
                    if let Some(m) = st.moves.get(&w.id) {
                        if let Some((ip, encap, _)) = m.old {
                            s.decap.insert(decap_key(encap, w.id.0), DecapTarget::deliver(b.ix, ws.slot, ip));
                        }
                        if m.arrival_until.is_some() {
                            let t = DecapTarget {
                                any_src: true,
                                ..DecapTarget::deliver(a.ix, ws.slot, Ipv4Addr::UNSPECIFIED)
                            };
                            s.decap.insert(decap_key(Encap::Forward, w.id.0), t);
                        }
                    }
                }
                Peer::Remote { vtep, encap } => {
                    if self.uplink.is_none() {
                        continue;
                    }
                    let waiting = st.moves.get(&w.id).is_some_and(|m| m.awaiting_ack.is_some());
                    let action = if waiting {
                        EndpointAction::Unresolved { slot: ws.slot }
                    } else {
                        self.encap_action(st, w.id, *vtep, *encap, ws.slot)
                    };
                    set(&mut s, a.ix, action);
                    let mut t = DecapTarget::deliver(a.ix, ws.slot, *vtep);
                    if let Some(m) = st.moves.get(&w.id) {
                        // The remote end just moved: its old host may still send.
                        if let Some((ip, _, _)) = m.old {
                            t.alt_ip = ip;
                        }
                        // Our end just arrived: its old host may pass frames on.
                        if m.arrival_until.is_some() {
                            let f = DecapTarget {
                                any_src: true,
                                ..DecapTarget::deliver(a.ix, ws.slot, Ipv4Addr::UNSPECIFIED)
                            };
                            s.decap.insert(decap_key(Encap::Forward, w.id.0), f);
                        }
                    }
                    s.decap.insert(decap_key(*encap, w.id.0), t);
                }
            }
        }
        s
    }

    /// Publishes `next` to the workers and commits it. A worker that does
    /// not switch in time is fatal (see [`Fatal::WorkerStuck`]).
    fn apply(&mut self, next: State) -> Result<(), Refusal> {
        self.apply_with(next, &[])
    }

    /// Like `apply`; what `save` names (as it is in `next`) is recorded in
    /// the state journal first, and a failure to record it refuses the
    /// change. While the saved state is being restored, nothing is recorded
    /// or published: `restore` publishes everything at once at the end.
    fn apply_with(&mut self, next: State, save: &[Touched]) -> Result<(), Refusal> {
        if !save.is_empty() && !self.restoring {
            self.record(&next, save)?;
        }
        if self.restoring {
            self.state = next;
            return Ok(());
        }
        let version = self.next_version;
        self.next_version += 1;
        let snap = Arc::new(self.build(&next, version));
        if let Err(e) = snapshot::publish(&self.mailboxes, snap.clone(), PUBLISH_TIMEOUT) {
            let msg = format!("{e}; stopping the fabric");
            crate::log(&msg);
            self.fatal = Some(Fatal::WorkerStuck(msg.clone()));
            return Err(Refusal::new(ErrorCode::Unavailable, msg));
        }
        self.current = snap;
        self.state = next;
        Ok(())
    }

    fn udp_port(&self, encap: Encap) -> u16 {
        match (&self.uplink, encap) {
            (Some(u), Encap::Vwire) => u.vwire_port,
            (Some(u), Encap::Vxlan) => u.vxlan_port,
            (_, Encap::Forward) => self.settings.migration.as_ref().map_or(0, |m| m.port),
            (None, e) => e.default_port(),
        }
    }

    /// What an endpoint whose wire goes to remote `vtep` does with its frames.
    fn encap_action(&self, st: &State, id: ConnectorId, vtep: Ipv4Addr, encap: Encap, slot: u32) -> EndpointAction {
        let Some(u) = &self.uplink else { return EndpointAction::NoWire };
        let next_hop = self.next_hop(vtep).unwrap_or(vtep);
        match st.neighbours.mac(next_hop) {
            Some(mac) => EndpointAction::Encap {
                template: EncapTemplate::new(encap, id, u.mac, mac, u.vtep, vtep, self.udp_port(encap), u.mtu),
                uplink: PortIndex::UPLINK,
                slot,
            },
            None => EndpointAction::Unresolved { slot },
        }
    }

    /// Outer headers of frames forwarded to `to` for wire `id`, if its next
    /// hop is resolved.
    fn forward_template(&self, st: &State, id: ConnectorId, to: Ipv4Addr) -> Option<EncapTemplate> {
        let u = self.uplink.as_ref()?;
        let mac = st.neighbours.mac(self.next_hop(to).ok()?)?;
        Some(EncapTemplate::new(Encap::Forward, id, u.mac, mac, u.vtep, to, self.udp_port(Encap::Forward), u.mtu))
    }

    /// The underlay next hop towards `peer`: the peer itself on the uplink's
    /// subnet, else the gateway.
    fn next_hop(&self, peer: Ipv4Addr) -> Result<Ipv4Addr, Refusal> {
        let Some(u) = &self.uplink else {
            return Err(Refusal::new(ErrorCode::NoUplink, "this fabric has no uplink (start it with --uplink)"));
        };
        if u.in_subnet(peer) {
            return Ok(peer);
        }
        u.gateway.ok_or_else(|| {
            Refusal::new(
                ErrorCode::InvalidArgument,
                format!(
                    "peer {peer} is outside the uplink subnet {}/{} and no --gateway is set",
                    Ipv4Addr::from(u32::from(u.vtep) & (u32::MAX.checked_shl(32 - u.prefix as u32).unwrap_or(0))),
                    u.prefix
                ),
            )
        })
    }

    // ---- requests ---------------------------------------------------------

    fn port_owner(&self, p: PortId) -> Option<String> {
        if self.uplink.as_ref().is_some_and(|u| u.port == p) {
            return Some("the uplink".into());
        }
        self.state
            .endpoints
            .iter()
            .find(|(_, e)| matches!(e.dev, Device::Eth { port, .. } if port == p))
            .map(|(n, _)| format!("endpoint {n}"))
    }

    /// Refuses an endpoint of `spec`'s kind when the fabric holds as many as
    /// it can (librte_vhost's sockets and poll-set slots, DPDK's ethdev
    /// ports), naming the limit rather than letting DPDK fail deep inside.
    fn check_limits(&self, spec: &EndpointSpec) -> Result<(), Refusal> {
        let limit = |m: String| Err(Refusal::new(ErrorCode::EndpointLimit, m));
        match spec {
            EndpointSpec::VhostUser { client, .. } => {
                let (mut servers, mut clients) = (0, 0);
                for e in self.state.endpoints.values() {
                    if let Device::Vhost(v) = &e.dev {
                        if v.port().client() {
                            clients += 1;
                        } else {
                            servers += 1;
                        }
                    }
                }
                if servers + clients >= vhost::MAX_SOCKETS {
                    return limit(format!(
                        "endpoint_limit: this fabric holds at most {} vhost-user endpoints (librte_vhost's \
                         MAX_VHOST_SOCKET) and has {}",
                        vhost::MAX_SOCKETS,
                        servers + clients
                    ));
                }
                // Each connected VM takes a slot of librte_vhost's poll set; a
                // server-mode socket also its listener.
                let used = 2 * servers + clients;
                let need = if *client { 1 } else { 2 };
                if used + need > vhost::FDSET_SLOTS {
                    let hint = if servers > 0 { "; client-mode endpoints (--client) take half as many" } else { "" };
                    return limit(format!(
                        "endpoint_limit: this fabric holds at most {} vhost-user endpoints in client mode (librte_vhost \
                         polls at most {} sockets and connections; a server-mode endpoint takes 2, a client-mode one \
                         1), and its {servers} server-mode and {clients} client-mode endpoints use {used}{hint}",
                        vhost::FDSET_SLOTS,
                        vhost::FDSET_SLOTS
                    ));
                }
            }
            EndpointSpec::Dpdk { .. } => {
                let eth = self.state.endpoints.values().filter(|e| matches!(e.dev, Device::Eth { .. })).count();
                let max = port::max_ports() as usize - usize::from(self.uplink.is_some());
                if eth >= max {
                    return limit(format!(
                        "endpoint_limit: this fabric holds at most {max} DPDK-device endpoints (this DPDK is built \
                         with RTE_MAX_ETHPORTS = {}{}); use vhost-user endpoints for VMs",
                        port::max_ports(),
                        if self.uplink.is_some() { ", one is the uplink" } else { "" }
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks a vhost-user socket path; in server mode removes a stale
    /// socket there (librte_vhost cannot bind over it).
    fn check_vhost_path(&self, path: &str, client: bool, queues: u16) -> Result<(), Refusal> {
        let invalid = |m: String| Err(Refusal::new(ErrorCode::InvalidArgument, m));
        if !path.starts_with('/') || path.len() > 107 {
            return invalid(format!("vhost-user socket path {path:?} must be absolute and at most 107 bytes"));
        }
        if !(1..=vhost::MAX_QUEUE_PAIRS).contains(&queues) {
            return invalid(format!(
                "--queues {queues}: a vhost-user endpoint has 1 to {} queue pairs",
                vhost::MAX_QUEUE_PAIRS
            ));
        }
        if self
            .state
            .endpoints
            .values()
            .any(|e| matches!(&e.spec, EndpointSpec::VhostUser { path: p, .. } if p == path))
        {
            return invalid(format!("vhost-user socket {path} is already used by another endpoint"));
        }
        if !client {
            let p = std::path::Path::new(path);
            if let Ok(meta) = std::fs::symlink_metadata(p) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return invalid(format!("{path} exists and is not a socket"));
                }
                if std::os::unix::net::UnixStream::connect(p).is_ok() {
                    return invalid(format!("{path} is in use: another process listens on it"));
                }
                // A stale socket from a process that died.
                let _ = std::fs::remove_file(p);
            }
            if let Some(dir) = p.parent() {
                if !dir.is_dir() {
                    return invalid(format!("directory {} does not exist", dir.display()));
                }
            }
        }
        Ok(())
    }

    /// Creates the device behind an endpoint at port index `ix`. Returns it
    /// with its queue count and an undo for a change that is not committed.
    fn open_device(&self, spec: &EndpointSpec, ix: PortIndex) -> Result<(Device, u16), Refusal> {
        match spec {
            EndpointSpec::VhostUser { path, client, queues } => {
                self.check_vhost_path(path, *client, *queues)?;
                let sock = VhostSocket::start(path, *client, *queues, ix.0).map_err(device_error)?;
                Ok((Device::Vhost(Arc::new(sock)), *queues))
            }
            EndpointSpec::Dpdk { devargs } => {
                if devargs.trim().is_empty() {
                    return Err(Refusal::new(ErrorCode::InvalidArgument, "device arguments are empty"));
                }
                for p in port::ports_matching(devargs).unwrap_or_default() {
                    if let Some(owner) = self.port_owner(p) {
                        return Err(Refusal::new(
                            ErrorCode::InvalidArgument,
                            format!("device {devargs:?} is already in use as {owner}"),
                        ));
                    }
                }
                let queues = self.workers.len() as u16;
                let probed = port::probe(devargs).map_err(device_error)?;
                let ports = probed.ports.clone();
                // Undo only what this request created.
                let undo = |ports: &[PortId]| {
                    if probed.created {
                        for p in ports {
                            let _ = port::remove(*p);
                        }
                    }
                };
                if ports.len() != 1 {
                    undo(&ports);
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!("device {devargs:?} has {} ports; an endpoint is exactly one port", ports.len()),
                    ));
                }
                let p = ports[0];
                let setup = || -> Result<(PortInfo, MacAddr), vw_pmd::Error> {
                    port::configure_and_start(
                        p,
                        &PortConfig {
                            rx_queues: queues,
                            tx_queues: queues,
                            rx_desc: self.settings.rx_desc,
                            tx_desc: self.settings.tx_desc,
                            pool: self.pool,
                            mtu: None,
                            promiscuous: true,
                        },
                    )?;
                    Ok((port::info(p)?, MacAddr(port::mac_addr(p)?)))
                };
                match setup() {
                    Ok((info, mac)) => Ok((Device::Eth { port: p, info, mac }, queues)),
                    Err(e) => {
                        undo(&ports);
                        Err(device_error(e))
                    }
                }
            }
        }
    }

    fn port_totals(&self, ix: PortIndex) -> PortTotals {
        let mut t = PortTotals::default();
        for w in &self.workers {
            if let Some(c) = w.stats.ports.get(ix.ix()) {
                t.add(c);
            }
        }
        t
    }

    fn endpoint_add(&mut self, name: &str, spec: &EndpointSpec) -> Result<proto::EndpointInfo, Refusal> {
        self.endpoint_add_with(name, spec, true)
    }

    fn endpoint_add_with(
        &mut self,
        name: &str,
        spec: &EndpointSpec,
        save: bool,
    ) -> Result<proto::EndpointInfo, Refusal> {
        let mut next = self.state.clone();
        next.table.add_endpoint(name)?;
        self.check_limits(spec)?;
        let Some(&ix) = self.free_ports.first() else {
            return Err(Refusal::new(
                ErrorCode::EndpointLimit,
                format!("endpoint_limit: all {} ports of this fabric are in use", max_ports() - 1),
            ));
        };
        let ix = PortIndex(ix);
        let (dev, queues) = self.open_device(spec, ix)?;
        let eth = match &dev {
            Device::Eth { port, .. } => Some(*port),
            Device::Vhost(_) => None,
        };
        let vhost = eth.is_none();
        let handoff = (vhost || queues < self.workers.len() as u16).then(|| new_handoff(self.workers.len()));
        let base = self.port_totals(ix);
        next.endpoints.insert(name.to_owned(), Endpoint { spec: spec.clone(), ix, dev, queues, handoff, base });
        let touched = [Touched::Endpoint(name.to_owned())];
        if let Err(e) = self.apply_with(next, if save { &touched } else { &[] }) {
            // Never undo once a publish failed (a worker may still poll the
            // port; the fabric is stopping). A vhost-user socket goes with
            // the uncommitted state.
            if self.fatal.is_none() {
                if let Some(p) = eth {
                    let _ = port::remove(p);
                }
            }
            return Err(e);
        }
        self.free_ports.remove(&ix.0);
        let what = match &self.state.endpoints[name].dev {
            Device::Eth { port, .. } => format!("port {port} ({spec:?})"),
            Device::Vhost(v) => {
                format!("vhost-user {} ({} mode)", v.port().path(), if v.port().client() { "client" } else { "server" })
            }
        };
        crate::log(&format!("endpoint {name} added: {what}"));
        Ok(self.endpoint_info(name, &self.state.endpoints[name]))
    }

    fn endpoint_del(&mut self, name: &str) -> Result<(), Refusal> {
        let mut next = self.state.clone();
        next.table.remove_endpoint(name)?;
        let Some(ep) = next.endpoints.remove(name) else {
            return Err(Refusal::new(ErrorCode::NoSuchEndpoint, format!("endpoint {name} does not exist")));
        };
        self.apply_with(next, &[Touched::Endpoint(name.to_owned())])?;
        if let Some(h) = &ep.handoff {
            for ring in h.iter() {
                while ring.pop().is_some() {
                    self.removed_in_flight += 1;
                }
            }
        }
        // No worker polls or sends to the port any more. Frames still in
        // its handoff rings are freed with them.
        match &ep.dev {
            Device::Eth { port, .. } => {
                if let Err(e) = port::remove(*port) {
                    crate::log(&format!("endpoint {name} removed, but its device could not be: {e}"));
                }
            }
            // The last reference: unregistering destroys a connected VM's
            // device and, in server mode, removes the socket file.
            Device::Vhost(_) => {}
        }
        let ix = ep.ix;
        drop(ep);
        self.free_ports.insert(ix.0);
        crate::log(&format!("endpoint {name} removed"));
        Ok(())
    }

    fn connect(
        &mut self,
        id: ConnectorId,
        endpoint: &str,
        peer: &str,
        encap: Option<EncapName>,
    ) -> Result<proto::WireInfo, Refusal> {
        self.connect_with(id, endpoint, peer, encap, None)
    }

    /// Connects a wire; `restored` (at start, from the state file: when the
    /// local and the remote end arrived) also means "do not save".
    fn connect_with(
        &mut self,
        id: ConnectorId,
        endpoint: &str,
        peer: &str,
        encap: Option<EncapName>,
        restored: Option<(u64, u64)>,
    ) -> Result<proto::WireInfo, Refusal> {
        let save = restored.is_none();
        // The remote end of an encap wire arriving on this host, next to its
        // local end: the wire becomes loopback.
        if let Some(w) = self.state.table.wire(id) {
            if encap.is_none() && w.kind() == vw_wire::WireKind::Encap && w.endpoint == peer {
                return self.colocate(id, endpoint, save);
            }
        }
        let mut next = self.state.clone();
        let peer = match peer.parse::<Ipv4Addr>() {
            Ok(vtep) => {
                let Some(u) = &self.uplink else {
                    return Err(Refusal::new(
                        ErrorCode::NoUplink,
                        format!("wire {id} to {vtep} needs an uplink; this fabric was started without --uplink"),
                    ));
                };
                if vtep == u.vtep {
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!("{vtep} is this fabric's own VTEP; connect two local endpoints for a loopback wire"),
                    ));
                }
                let encap = match encap.unwrap_or_default() {
                    EncapName::Vwire => Encap::Vwire,
                    EncapName::Vxlan => Encap::Vxlan,
                };
                Peer::Remote { vtep, encap }
            }
            Err(_) => {
                if encap.is_some() {
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!("--encap applies to wires to a remote VTEP; {peer} is a local endpoint name"),
                    ));
                }
                Peer::Local(peer.to_owned())
            }
        };
        next.table.connect(id, endpoint, peer.clone())?;
        if let Peer::Remote { vtep, .. } = peer {
            let hop = self.next_hop(vtep)?;
            next.neighbours.want(hop, Instant::now());
        }
        let used: HashSet<u32> =
            next.wires.values().map(|w| w.slot).chain(next.departed.values().map(|(_, ws)| ws.slot)).collect();
        let max = self.settings.max_wires as u32;
        let Some(slot) = (0..max).map(|i| (self.next_slot + i) % max).find(|s| !used.contains(s)) else {
            return Err(Refusal::new(
                ErrorCode::WireLimit,
                format!("wire_limit: all {max} wire slots are in use; start the fabric with a larger --max-wires"),
            ));
        };
        next.wires.insert(id, WireSlot { slot, base: self.wire_totals(slot) });
        let (local_ns, remote_ns) = restored.unwrap_or((now_ns(), 0));
        let locate = match (&peer, &self.mig) {
            (Peer::Remote { vtep, encap }, Some(ch)) => {
                // Our end arrives here: frames its old host passes on are taken.
                let m = next.moves.entry(id).or_default();
                m.local_ns = local_ns.max(1);
                m.remote_ns = remote_ns;
                m.arrival_until = Some(Instant::now() + ch.settings.grace);
                m.awaiting_ack = Some(Instant::now() + migrate::ACK_WAIT);
                Some((*vtep, *encap, m.local_ns))
            }
            _ => None,
        };
        let touched = [Touched::Wire(id)];
        self.apply_with(next, if save { &touched } else { &[] })?;
        self.next_slot = (slot + 1) % max;
        if let Some((vtep, encap, when)) = locate {
            self.announce_location(id, endpoint, vtep, encap, when);
        }
        // Ask for the next hop's MAC now rather than at the next tick.
        self.send_arp_requests();
        let w = self.state.table.wire(id).cloned();
        crate::log(&format!("wire {id} connected: {}", w.as_ref().map(describe_wire).unwrap_or_default()));
        Ok(self.wire_info(id))
    }

    fn disconnect(&mut self, id: ConnectorId) -> Result<(), Refusal> {
        let mut next = self.state.clone();
        let w = next.table.disconnect(id)?;
        next.wires.remove(&id);
        next.moves.remove(&id);
        if let Some(ch) = &mut self.mig {
            ch.pending.retain(|p| p.msg.wire != id);
        }
        if let Peer::Remote { vtep, .. } = w.peer {
            if let Ok(hop) = self.next_hop(vtep) {
                next.neighbours.release(hop);
            }
        }
        self.apply_with(next, &[Touched::Wire(id)])?;
        crate::log(&format!("wire {id} disconnected"));
        Ok(())
    }

    // ---- persistence --------------------------------------------------------

    /// A wire as the state file keeps it.
    fn saved_wire(st: &State, w: &vw_wire::table::Wire) -> SavedWire {
        match &w.peer {
            Peer::Local(b) => SavedWire {
                wire: w.id.0,
                endpoint: w.endpoint.clone(),
                peer: b.clone(),
                encap: None,
                local_ns: 0,
                remote_ns: 0,
            },
            Peer::Remote { vtep, encap } => SavedWire {
                wire: w.id.0,
                endpoint: w.endpoint.clone(),
                peer: vtep.to_string(),
                encap: Some(encap_name(*encap)),
                local_ns: st.moves.get(&w.id).map_or(0, |m| m.local_ns),
                remote_ns: st.moves.get(&w.id).map_or(0, |m| m.remote_ns),
            },
        }
    }

    /// Records in the state journal what `touched` names, as it is in `st`:
    /// one line, synced, whatever the number of other entries.
    fn record(&mut self, st: &State, touched: &[Touched]) -> Result<(), Refusal> {
        let Some(store) = &mut self.store else { return Ok(()) };
        let changes: Vec<Change> = touched
            .iter()
            .map(|t| match t {
                Touched::Endpoint(name) => match st.endpoints.get(name) {
                    Some(e) => Change::EndpointAdded { name: name.clone(), spec: e.spec.clone() },
                    None => Change::EndpointRemoved { name: name.clone() },
                },
                Touched::Wire(id) => match st.table.wire(*id) {
                    Some(w) => Change::WireSaved(Self::saved_wire(st, w)),
                    None => Change::WireRemoved { wire: id.0 },
                },
            })
            .collect();
        store.record_all(&changes).map_err(|e| {
            Refusal::new(
                ErrorCode::Unavailable,
                format!("cannot save to the state file {}: {e}; the change was not made", store.path().display()),
            )
        })
    }

    /// Recreates the endpoints and wires of the state file (at start), then
    /// publishes them to the workers in one snapshot. An entry that cannot
    /// be recreated (its device or directory is gone, the fabric now lacks
    /// the uplink it needs) is skipped with a log line, kept in the state
    /// file and listed by `status`; everything else comes back. Returns how
    /// many entries were restored.
    pub fn restore(&mut self) -> Result<usize, String> {
        let Some(path) = self.settings.state_file.clone() else { return Ok(0) };
        let (store, saved) = Store::open(&path)?;
        for w in store.warnings() {
            crate::log(&format!("state file: {w}"));
        }
        self.store = Some(store);
        let Some(saved) = saved else { return Ok(0) };
        let mut restored = 0;
        self.restoring = true;
        for e in &saved.endpoints {
            match self.endpoint_add_with(&e.name, &e.spec, false) {
                Ok(_) => restored += 1,
                Err(r) => {
                    crate::log(&format!("cannot restore endpoint {} from {}: {}", e.name, path.display(), r.message));
                    self.unrestored.endpoints.push(e.clone());
                }
            }
        }
        for w in &saved.wires {
            let when = (if w.local_ns == 0 { now_ns() } else { w.local_ns }, w.remote_ns);
            match self.connect_with(ConnectorId(w.wire), &w.endpoint, &w.peer, w.encap, Some(when)) {
                Ok(_) => restored += 1,
                Err(r) => {
                    crate::log(&format!("cannot restore wire {} from {}: {}", w.wire, path.display(), r.message));
                    self.unrestored.wires.push(w.clone());
                }
            }
        }
        self.restoring = false;
        let next = self.state.clone();
        if self.apply(next).is_err() {
            return Err(self
                .fatal
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_else(|| "publishing the restored state".into()));
        }
        Ok(restored)
    }

    /// Lets the workers poll the uplink (after `restore`).
    pub fn poll_uplink(&mut self) -> Result<(), Fatal> {
        if self.uplink.is_some() && !self.uplink_polled {
            self.uplink_polled = true;
            let next = self.state.clone();
            if self.apply(next).is_err() {
                return Err(self.fatal.clone().unwrap_or(Fatal::WorkerStuck("publishing the uplink".into())));
            }
        }
        Ok(())
    }

    // ---- housekeeping -----------------------------------------------------

    fn tick(&mut self) -> Result<(), Fatal> {
        self.last_tick = Instant::now();
        for w in &self.workers {
            if !w.mailbox.is_alive() {
                return Err(Fatal::WorkerDied { index: w.index, lcore: w.lcore });
            }
            w.mailbox.reclaim();
        }
        self.take_neighbour_events();
        if let Some(f) = self.fatal.clone() {
            return Err(f);
        }
        self.watch_vms();
        self.expire_moves();
        self.send_arp_requests();
        self.report_oversize();
        Ok(())
    }

    /// Says in the log, at most once a minute, that underlay frames were
    /// dropped for their size: nearly always an MTU mismatch between hosts.
    fn report_oversize(&mut self) {
        let Some(u) = &self.uplink else { return };
        let i = FabricDrop::Oversize.index();
        let total: u64 = self.workers.iter().map(|w| w.stats.drops[i].load(Ordering::Relaxed)).sum();
        let (seen, last) = self.oversize_logged;
        if total > seen && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            crate::log(&format!(
                "dropped {} underlay frames longer than the underlay MTU ({}) plus 14 bytes (`oversize` in \
                 vwctl stats); do the other fabrics use a larger --underlay-mtu?",
                total - seen,
                u.mtu
            ));
            self.oversize_logged = (total, Some(Instant::now()));
        }
    }

    /// Takes the ARP sightings the workers passed up; publishes a changed
    /// next-hop MAC. Called every tick, and as soon as sightings wait when
    /// the control plane polls faster (migration on), so a new peer's first
    /// frames do not wait a whole tick in the hold queue.
    fn take_neighbour_events(&mut self) {
        let now = Instant::now();
        if self.republish || self.mailboxes.iter().any(|mb| !mb.events.is_empty()) {
            let mut next = self.state.clone();
            let mut changed = self.republish;
            for mb in &self.mailboxes {
                while let Some(ev) = mb.events.pop() {
                    changed |= next.neighbours.heard(ev.ip, ev.mac, now);
                }
            }
            if changed {
                // Until a neighbour change is published, keep retrying it.
                self.republish = self.apply(next).is_err();
            } else {
                // Only timestamps moved: nothing for the workers.
                self.state = next;
            }
        }
    }

    /// Follows vhost-user VMs: devices coming and going and the rings they
    /// enable (librte_vhost's callbacks queue the ports that changed). A
    /// change is published so workers poll only enabled rings, stop queueing
    /// to a VM that is gone and spread TX over the queues it uses.
    fn watch_vms(&mut self) {
        if !vhost::take_events().is_empty() || self.republish {
            let next = self.state.clone();
            self.republish = self.apply(next).is_err();
        }
    }

    fn send_arp_requests(&mut self) {
        let Some(u) = self.uplink.clone() else { return };
        for ip in self.state.neighbours.due(Instant::now()) {
            let mut buf = [0u8; 60];
            let n = arp::build_request(&mut buf, u.mac, u.vtep, ip);
            self.inject(&buf[..n]);
        }
    }

    /// Queues a frame for worker 0 to send on the uplink.
    fn inject(&self, frame: &[u8]) {
        let Some(w) = self.workers.first() else { return };
        if let Some(m) = self.pool.alloc_frame(frame) {
            // A full queue drops the frame (freed with the Mbuf); ARP retries.
            let _ = w.mailbox.inject.push(m);
        }
    }

    // ---- migration ----------------------------------------------------------

    fn grace(&self) -> Duration {
        self.settings.migration.as_ref().map_or(Duration::ZERO, |m| m.grace)
    }

    /// Tells the peer VTEP where our end of wire `id` is (LOCATE, sent
    /// until it is acknowledged).
    fn announce_location(&mut self, id: ConnectorId, end: &str, peer: Ipv4Addr, encap: Encap, when_ns: u64) {
        let (Some(ch), Some(u)) = (&mut self.mig, &self.uplink) else { return };
        let msg = Message {
            kind: kind::LOCATE,
            wire: id,
            from: u.vtep,
            location: u.vtep,
            location_mac: u.mac,
            encap,
            end: end.to_owned(),
            seq: 0,
            sent_ns: 0,
            when_ns,
            moves: 0,
        };
        ch.pending.retain(|p| p.msg.wire != id);
        ch.pending.push(Pending { msg, to: peer, tries: 0, next: Instant::now() });
        self.retransmit();
    }

    /// Sends LOCATEs that are due.
    fn retransmit(&mut self) {
        let now = Instant::now();
        // A LOCATE waits, without using up a try, until its next hop's MAC
        // is known (ARP for a new peer is in progress).
        let resolved: HashSet<Ipv4Addr> = self.mig.as_ref().map_or_else(HashSet::new, |ch| {
            ch.pending
                .iter()
                .map(|p| p.to)
                .filter(|to| self.next_hop(*to).ok().and_then(|h| self.state.neighbours.mac(h)).is_some())
                .collect()
        });
        let Some(ch) = &mut self.mig else { return };
        let mut due = Vec::new();
        ch.pending.retain_mut(|p| {
            if p.next > now || !resolved.contains(&p.to) {
                return true;
            }
            if p.tries >= migrate::LOCATE_TRIES {
                crate::log(&format!("wire {}: no answer from {} to its location update; giving up", p.msg.wire, p.to));
                return false;
            }
            p.tries += 1;
            p.next = now + Pending::backoff(p.tries);
            due.push((p.msg.clone(), p.to));
            true
        });
        for (msg, to) in due {
            self.send_message(msg, to, None);
        }
    }

    /// Sends a control message to VTEP `to` (through its next hop, whose MAC
    /// is `mac` if given, else the resolved one).
    fn send_message(&mut self, mut msg: Message, to: Ipv4Addr, mac: Option<MacAddr>) {
        let Some(u) = self.uplink.clone() else { return };
        let mac = mac.or_else(|| self.next_hop(to).ok().and_then(|h| self.state.neighbours.mac(h)));
        let Some(ch) = &mut self.mig else { return };
        let Some(mac) = mac else {
            ch.unsent += 1;
            return;
        };
        let payload = ch.encode(&mut msg);
        let t = EncapTemplate::new(Encap::Forward, msg.wire, u.mac, mac, u.vtep, to, ch.settings.port, u.mtu);
        let (hdr, body) = payload.split_at(vw_wire::migration::HEADER_LEN);
        let mut frame = vw_wire::underlay::build_tunnel_frame(&t, body, ch.settings.port);
        let at = t.len() - hdr.len();
        frame[at..t.len()].copy_from_slice(hdr);
        ch.sent += 1;
        self.inject(&frame);
    }

    /// Takes the control messages the workers received.
    fn poll_migration(&mut self) {
        let mut frames = Vec::new();
        for mb in &self.mailboxes {
            while let Some(m) = mb.migration.pop() {
                frames.push(m.data().to_vec());
            }
        }
        if self.mig.is_none() {
            return;
        }
        for f in frames {
            // classify checked the headers: Ethernet, IPv4 without options, UDP.
            if f.len() < 42 {
                continue;
            }
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            let payload = &f[42..(14 + total).clamp(42, f.len())];
            self.take_message(src, payload);
        }
        self.retransmit();
    }

    fn take_message(&mut self, src: Ipv4Addr, payload: &[u8]) {
        let t0 = Instant::now();
        let Some(ch) = &mut self.mig else { return };
        ch.received += 1;
        let msg = match ch.admit(src, payload, now_ns()) {
            Ok(m) => m,
            Err(reason) => {
                ch.refuse(reason);
                return;
            }
        };
        let result = match msg.kind {
            kind::LOCATE => self.on_locate(&msg, t0),
            kind::ACK => self.on_ack(&msg),
            kind::MOVED => self.on_moved(&msg, t0),
            _ => Err("malformed"),
        };
        let Some(ch) = &mut self.mig else { return };
        match result {
            Ok(()) => ch.accepted += 1,
            Err(reason) => {
                ch.refuse(reason);
                crate::log(&format!("refused {} for wire {} from {}: {reason}", msg.kind_name(), msg.wire, msg.from));
            }
        }
    }

    /// Makes `ip` a wanted neighbour, and takes the MAC an authenticated
    /// message gave for it if it is on our subnet.
    fn learn(&self, next: &mut State, ip: Ipv4Addr, mac: MacAddr) {
        let now = Instant::now();
        if let Ok(hop) = self.next_hop(ip) {
            next.neighbours.want(hop, now);
            if hop == ip && mac != MacAddr([0; 6]) {
                next.neighbours.heard(ip, mac, now);
            }
        }
    }

    fn release(&self, next: &mut State, ip: Ipv4Addr) {
        if let Ok(hop) = self.next_hop(ip) {
            next.neighbours.release(hop);
        }
    }

    /// Applies a move and records how long it took.
    fn apply_move(&mut self, id: ConnectorId, next: State, t0: Instant) -> Result<(), &'static str> {
        self.apply_with(next, &[Touched::Wire(id)]).map_err(|_| "unresolved")?;
        if let Some(m) = self.state.moves.get_mut(&id) {
            m.last_move_us = t0.elapsed().as_micros() as u64;
        }
        Ok(())
    }

    /// LOCATE: the sender has connected wire `id` to us; if the end it names
    /// was elsewhere, re-point the wire there.
    fn on_locate(&mut self, msg: &Message, t0: Instant) -> Result<(), &'static str> {
        let id = msg.wire;
        let s = msg.from;
        let Some(w) = self.state.table.wire(id).cloned() else { return Err("unknown_wire") };
        let Some(u) = self.uplink.clone() else { return Err("unresolved") };
        let grace = self.grace();
        let mv = self.state.moves.get(&id).cloned().unwrap_or_default();
        match &w.peer {
            Peer::Remote { vtep, encap } => {
                if msg.end == w.endpoint || s == u.vtep {
                    return Err("conflict");
                }
                if *vtep == s {
                    // Where we already send: a (re)announcement.
                    if msg.when_ns < mv.remote_ns {
                        return Err("stale");
                    }
                    let mut next = self.state.clone();
                    next.moves.entry(id).or_default().remote_ns = msg.when_ns;
                    if self.next_hop(s).ok() == Some(s) && msg.location_mac != MacAddr([0; 6]) {
                        next.neighbours.heard(s, msg.location_mac, Instant::now());
                    }
                    self.apply_with(next, &[Touched::Wire(id)]).map_err(|_| "unresolved")?;
                    self.send_ack(msg, Ipv4Addr::UNSPECIFIED, mv.moves);
                    return Ok(());
                }
                if msg.when_ns <= mv.remote_ns {
                    return Err("stale");
                }
                // The remote end moved from `vtep` to `s`.
                let old_mac = self.next_hop(*vtep).ok().and_then(|h| self.state.neighbours.mac(h));
                let mut next = self.state.clone();
                next.table.repoint(id, s, msg.encap).map_err(|_| "conflict")?;
                self.learn(&mut next, s, msg.location_mac);
                self.release(&mut next, *vtep);
                let m = next.moves.entry(id).or_default();
                m.moved();
                m.remote_ns = msg.when_ns;
                m.old = Some((*vtep, *encap, Instant::now() + grace));
                let moves = m.moves;
                self.apply_move(id, next, t0)?;
                self.send_ack(msg, *vtep, moves);
                // Tell the old host, so it passes on what still arrives there.
                let moved = Message {
                    kind: kind::MOVED,
                    from: u.vtep,
                    location: s,
                    location_mac: msg.location_mac,
                    ..msg.clone()
                };
                self.send_message(moved, *vtep, old_mac);
                crate::log(&format!("wire {id}: end {} moved from {vtep} to {s}; wire re-pointed", msg.end));
                Ok(())
            }
            Peer::Local(other) => {
                // One end of a loopback wire left for `s`.
                let staying = if msg.end == w.endpoint {
                    other.clone()
                } else if msg.end == *other {
                    w.endpoint.clone()
                } else {
                    return Err("conflict");
                };
                if msg.when_ns <= mv.local_ns.max(mv.remote_ns) {
                    return Err("stale");
                }
                let mut next = self.state.clone();
                next.table.split(id, &msg.end, s, msg.encap).map_err(|_| "conflict")?;
                let ws = *next.wires.get(&id).ok_or("unknown_wire")?;
                let d = Departed {
                    endpoint: msg.end.clone(),
                    peer: Peer::Local(staying.clone()),
                    to: s,
                    until: Instant::now() + grace,
                };
                next.departed.insert(id, (d, ws));
                self.learn(&mut next, s, msg.location_mac);
                let m = next.moves.entry(id).or_default();
                m.moved();
                m.remote_ns = msg.when_ns;
                m.old = None;
                m.arrival_until = None;
                let moves = m.moves;
                self.apply_move(id, next, t0)?;
                self.send_ack(msg, u.vtep, moves);
                crate::log(&format!("wire {id}: end {} left for {s}; wire is now encap {staying} -> {s}", msg.end));
                Ok(())
            }
        }
    }

    fn send_ack(&mut self, locate: &Message, previous: Ipv4Addr, moves: u32) {
        let Some(u) = &self.uplink else { return };
        let ack = Message {
            kind: kind::ACK,
            from: u.vtep,
            location: previous,
            location_mac: MacAddr([0; 6]),
            moves,
            ..locate.clone()
        };
        self.send_message(ack, locate.from, None);
    }

    /// ACK: the peer took our LOCATE.
    fn on_ack(&mut self, msg: &Message) -> Result<(), &'static str> {
        let Some(ch) = &mut self.mig else { return Err("unexpected") };
        let before = ch.pending.len();
        ch.pending.retain(|p| !(p.msg.wire == msg.wire && p.to == msg.from && p.msg.when_ns == msg.when_ns));
        if ch.pending.len() == before {
            return Err("unexpected");
        }
        let mut next = self.state.clone();
        let Some(m) = next.moves.get_mut(&msg.wire) else { return Ok(()) };
        m.moves = m.moves.max(msg.moves);
        if m.awaiting_ack.take().is_some() {
            // The peer takes our frames now: release the held ones.
            self.apply(next).map_err(|_| "unresolved")?;
        } else {
            self.state = next;
        }
        Ok(())
    }

    /// MOVED: our end of wire `id` is now elsewhere; pass on what still
    /// arrives for it during the grace period.
    fn on_moved(&mut self, msg: &Message, t0: Instant) -> Result<(), &'static str> {
        let id = msg.wire;
        let Some(w) = self.state.table.wire(id).cloned() else { return Err("unknown_wire") };
        let Peer::Remote { vtep, encap } = w.peer else { return Err("conflict") };
        let Some(u) = self.uplink.clone() else { return Err("unresolved") };
        // Only our end's peer may say so, about our end, to another host.
        if vtep != msg.from || msg.end != w.endpoint || msg.location == u.vtep {
            return Err("conflict");
        }
        let mv = self.state.moves.get(&id).cloned().unwrap_or_default();
        if msg.when_ns <= mv.local_ns {
            return Err("stale");
        }
        let mut next = self.state.clone();
        next.table.disconnect(id).map_err(|_| "unknown_wire")?;
        let ws = next.wires.remove(&id).ok_or("unknown_wire")?;
        let until = Instant::now() + self.grace();
        let d = Departed { endpoint: w.endpoint.clone(), peer: Peer::Remote { vtep, encap }, to: msg.location, until };
        next.departed.insert(id, (d, ws));
        self.learn(&mut next, msg.location, msg.location_mac);
        next.moves.entry(id).or_default().moved();
        if let Some(ch) = &mut self.mig {
            ch.pending.retain(|p| p.msg.wire != id);
        }
        self.apply_move(id, next, t0)?;
        crate::log(&format!(
            "wire {id}: end {} moved to {}; passing on its frames for {} ms, then forgetting the wire here",
            w.endpoint,
            msg.location,
            self.grace().as_millis()
        ));
        Ok(())
    }

    /// Ends grace periods that are over.
    fn expire_moves(&mut self) {
        let now = Instant::now();
        let due = self.state.departed.values().any(|(d, _)| now >= d.until)
            || self.state.moves.values().any(|m| {
                m.old.is_some_and(|o| now >= o.2)
                    || m.arrival_until.is_some_and(|t| now >= t)
                    || m.awaiting_ack.is_some_and(|t| now >= t)
            });
        if !due {
            return;
        }
        let mut next = self.state.clone();
        let mut forwarded = 0;
        let expired: Vec<ConnectorId> =
            next.departed.iter().filter(|(_, (d, _))| now >= d.until).map(|(id, _)| *id).collect();
        for id in expired {
            let Some((d, ws)) = next.departed.remove(&id) else { continue };
            // A departed remote end holds its old peer and its new host; a
            // loopback wire's departed end holds nothing (the wire does).
            if let Peer::Remote { vtep, .. } = d.peer {
                forwarded += self.wire_totals(ws.slot).since(&ws.base).forwarded;
                self.release(&mut next, vtep);
                self.release(&mut next, d.to);
            }
            crate::log(&format!("wire {id}: grace period of the end that left ({}) is over", d.endpoint));
        }
        for m in next.moves.values_mut() {
            m.expire(now);
        }
        if self.apply(next).is_err() {
            self.republish = true;
            return;
        }
        if let Some(ch) = &mut self.mig {
            ch.forwarded_before += forwarded;
        }
    }

    /// `connect W ARRIVING RESIDENT` where W is an encap wire from RESIDENT:
    /// the remote end arrived here, and W becomes a loopback wire.
    fn colocate(&mut self, id: ConnectorId, arriving: &str, save: bool) -> Result<proto::WireInfo, Refusal> {
        let t0 = Instant::now();
        let mut next = self.state.clone();
        let Some(Peer::Remote { vtep, encap }) = next.table.wire(id).map(|w| w.peer.clone()) else {
            return Err(Refusal::new(ErrorCode::InvalidArgument, format!("wire {id} is not an encap wire")));
        };
        next.table.colocate(id, arriving)?;
        let old_mac = self.next_hop(vtep).ok().and_then(|h| self.state.neighbours.mac(h));
        self.release(&mut next, vtep);
        let grace = self.grace();
        let m = next.moves.entry(id).or_default();
        m.moved();
        m.local_ns = now_ns();
        if !grace.is_zero() {
            m.old = Some((vtep, encap, t0 + grace));
            m.arrival_until = Some(t0 + grace);
        }
        let when = m.local_ns;
        let touched = [Touched::Wire(id)];
        self.apply_with(next, if save { &touched } else { &[] })?;
        if let Some(m) = self.state.moves.get_mut(&id) {
            m.last_move_us = t0.elapsed().as_micros() as u64;
        }
        if let (Some(u), true) = (self.uplink.clone(), self.mig.is_some()) {
            // The arriving end's old host passes on what still arrives there.
            let moved = Message {
                kind: kind::MOVED,
                wire: id,
                from: u.vtep,
                location: u.vtep,
                location_mac: u.mac,
                encap,
                end: arriving.to_owned(),
                seq: 0,
                sent_ns: 0,
                when_ns: when,
                moves: 0,
            };
            self.send_message(moved, vtep, old_mac);
        }
        crate::log(&format!("wire {id}: end {arriving} arrived from {vtep}; the wire is now loopback"));
        Ok(self.wire_info(id))
    }

    // ---- reports ----------------------------------------------------------

    fn wire_totals(&self, slot: u32) -> WireTotals {
        let mut t = WireTotals::default();
        for w in &self.workers {
            let x = w.stats.wire(slot);
            for d in 0..2 {
                t.frames[d] += x.frames[d];
                t.bytes[d] += x.bytes[d];
            }
            t.dropped += x.dropped;
            t.forwarded += x.forwarded;
        }
        t
    }

    fn link_up(p: PortId) -> bool {
        port::link(p).map(|l| l.up).unwrap_or(false)
    }

    fn endpoint_info(&self, name: &str, ep: &Endpoint) -> proto::EndpointInfo {
        let (device, driver, mac, link_up, mtu, link_changes) = match &ep.dev {
            Device::Eth { port, info, mac } => (
                info.name.clone(),
                info.driver.clone(),
                mac.to_string(),
                Self::link_up(*port),
                port::mtu(*port).unwrap_or(0),
                0,
            ),
            Device::Vhost(v) => {
                let vs = v.port().state();
                (v.port().path().to_owned(), "vhost-user".to_owned(), String::new(), vs.up, vs.mtu, vs.link_changes)
            }
        };
        proto::EndpointInfo {
            name: name.to_owned(),
            spec: ep.spec.clone(),
            port: ep.ix.0,
            device,
            driver,
            mac,
            link_up,
            mtu,
            rx_queues: ep.queues,
            tx_queues: self.current.ports.get(ep.ix.ix()).map_or(0, |p| p.txq),
            link_changes,
            wire: self.state.table.wire_of(name).map(|w| w.id.0),
        }
    }

    fn endpoint_list(&self) -> Vec<proto::EndpointInfo> {
        self.state.endpoints.iter().map(|(n, e)| self.endpoint_info(n, e)).collect()
    }

    fn wire_info(&self, id: ConnectorId) -> proto::WireInfo {
        let w = self.state.table.wire(id).expect("wire_info is called for existing wires");
        let totals = self.state.wires.get(&id).map(|s| self.wire_totals(s.slot).since(&s.base)).unwrap_or_default();
        // Link state is reported per endpoint (`endpoint list`), not here: a
        // net_tap port reports "down" once its interface moves to another
        // namespace, though it carries traffic.
        let (peer, encap, state) = match &w.peer {
            Peer::Local(b) => (b.clone(), None, "up"),
            Peer::Remote { vtep, encap } => {
                let resolved = self.next_hop(*vtep).ok().and_then(|h| self.state.neighbours.mac(h)).is_some();
                (vtep.to_string(), Some(encap_name(*encap)), if resolved { "up" } else { "resolving" })
            }
        };
        proto::WireInfo {
            wire: id.0,
            kind: w.kind().name().to_owned(),
            endpoint: w.endpoint.clone(),
            peer,
            encap,
            state: state.to_owned(),
            forward: proto::FlowCounters { frames: totals.frames[0], bytes: totals.bytes[0] },
            reverse: proto::FlowCounters { frames: totals.frames[1], bytes: totals.bytes[1] },
            dropped: totals.dropped,
            migration: self.mig.as_ref().map(|_| self.wire_migration(id, totals.forwarded, None)),
        }
    }

    fn wire_migration(&self, id: ConnectorId, forwarded: u64, departed: Option<&Departed>) -> proto::WireMigration {
        let now = Instant::now();
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        let m = self.state.moves.get(&id).cloned().unwrap_or_default();
        let grace = [m.old.map(|o| o.2), m.arrival_until, departed.map(|d| d.until)]
            .into_iter()
            .flatten()
            .map(left)
            .max()
            .unwrap_or(0);
        proto::WireMigration {
            moves: m.moves,
            last_move_ms: m.last_move_ms,
            last_move_us: m.last_move_us,
            forwarded,
            previous_host: m.old.map(|o| o.0.to_string()),
            moved_to: departed.map(|d| d.to.to_string()),
            grace_left_ms: grace,
        }
    }

    /// An end that left, in its grace period, as a `wire list` row.
    fn departed_info(&self, id: ConnectorId, d: &Departed, ws: &WireSlot) -> proto::WireInfo {
        let totals = self.wire_totals(ws.slot).since(&ws.base);
        let (peer, encap) = match &d.peer {
            Peer::Local(b) => (b.clone(), None),
            Peer::Remote { vtep, encap } => (vtep.to_string(), Some(encap_name(*encap))),
        };
        proto::WireInfo {
            wire: id.0,
            kind: "moved".into(),
            endpoint: d.endpoint.clone(),
            peer,
            encap,
            state: format!("forwarding to {}", d.to),
            forward: proto::FlowCounters { frames: totals.frames[0], bytes: totals.bytes[0] },
            reverse: proto::FlowCounters { frames: totals.frames[1], bytes: totals.bytes[1] },
            dropped: totals.dropped,
            migration: Some(self.wire_migration(id, totals.forwarded, Some(d))),
        }
    }

    fn wire_list(&self) -> Vec<proto::WireInfo> {
        let mut v: Vec<proto::WireInfo> = self.state.table.wires().map(|w| self.wire_info(w.id)).collect();
        for (id, (d, ws)) in &self.state.departed {
            // A loopback wire's departed end shares the wire's row.
            if matches!(d.peer, Peer::Remote { .. }) {
                v.push(self.departed_info(*id, d, ws));
            }
        }
        v
    }

    fn mempool(&self) -> proto::MempoolInfo {
        proto::MempoolInfo { size: self.pool.size(), in_use: self.pool.in_use() }
    }

    fn status(&self) -> proto::Status {
        proto::Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            socket: self.settings.socket.clone(),
            workers: self.workers.iter().map(|w| proto::WorkerInfo { index: w.index, lcore: w.lcore }).collect(),
            uplink: self.uplink.as_ref().map(|u| proto::UplinkStatus {
                devargs: u.devargs.clone(),
                port: u.port.0,
                mac: u.mac.to_string(),
                vtep: format!("{}/{}", u.vtep, u.prefix),
                gateway: u.gateway.map(|g| g.to_string()),
                mtu: u.mtu,
                vwire_port: u.vwire_port,
                vxlan_port: u.vxlan_port,
                link_up: Self::link_up(u.port),
            }),
            neighbours: self
                .state
                .neighbours
                .view()
                .into_iter()
                .map(|n| proto::NeighbourInfo {
                    ip: n.ip.to_string(),
                    mac: n.mac.map(|m| m.to_string()),
                    state: n.state.name().to_owned(),
                    requests: n.requests,
                    wires: n.users,
                })
                .collect(),
            endpoints: self.state.endpoints.len(),
            wires: self.state.table.wires().count(),
            mempool: self.mempool(),
            idle_sleep_us: self.settings.idle_sleep_us,
            unrestored: self
                .unrestored
                .endpoints
                .iter()
                .filter(|e| !self.state.endpoints.contains_key(&e.name))
                .map(|e| format!("endpoint {}", e.name))
                .chain(
                    self.unrestored
                        .wires
                        .iter()
                        .filter(|w| self.state.table.wire(ConnectorId(w.wire)).is_none())
                        .map(|w| format!("wire {}", w.wire)),
                )
                .collect(),
        }
    }

    /// A port's counters: the device's own for an ethdev, the workers' for a
    /// vhost-user device (librte_vhost keeps none unless asked to, at a cost).
    fn port_counters(&self, name: &str, ix: PortIndex, eth: Option<PortId>, base: &PortTotals) -> proto::PortCounters {
        let t = self.port_totals(ix).since(base);
        let mut c = proto::PortCounters {
            name: name.to_owned(),
            port: ix.0,
            rx_packets: t.rx_frames,
            rx_bytes: t.rx_bytes,
            tx_packets: t.tx_frames,
            tx_bytes: t.tx_bytes,
            rx_missed: 0,
            rx_errors: 0,
            rx_nombuf: 0,
            tx_errors: 0,
            tx_dropped: t.tx_dropped,
        };
        if let Some(p) = eth {
            let s = port::stats(p).unwrap_or_default();
            c.rx_packets = s.ipackets;
            c.rx_bytes = s.ibytes;
            c.tx_packets = s.opackets;
            c.tx_bytes = s.obytes;
            c.rx_missed = s.imissed;
            c.rx_errors = s.ierrors;
            c.rx_nombuf = s.rx_nombuf;
            c.tx_errors = s.oerrors;
        }
        c
    }

    fn stats(&self) -> proto::Stats {
        let mut ports = Vec::new();
        if let Some(u) = &self.uplink {
            ports.push(self.port_counters("uplink", PortIndex::UPLINK, Some(u.port), &PortTotals::default()));
        }
        for (n, e) in &self.state.endpoints {
            let eth = match &e.dev {
                Device::Eth { port, .. } => Some(*port),
                Device::Vhost(_) => None,
            };
            ports.push(self.port_counters(n, e.ix, eth, &e.base));
        }
        let mut drops: BTreeMap<String, u64> = (0..DROP_REASONS).map(|i| (drop_name(i).to_owned(), 0)).collect();
        let mut handled: BTreeMap<String, u64> = Handled::ALL.iter().map(|h| (h.name().to_owned(), 0)).collect();
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let s = &w.stats;
                let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                let mut wd = BTreeMap::new();
                for i in 0..DROP_REASONS {
                    let v = ld(&s.drops[i]);
                    *drops.get_mut(drop_name(i)).expect("every reason is listed") += v;
                    if v != 0 {
                        wd.insert(drop_name(i).to_owned(), v);
                    }
                }
                let mut wh = BTreeMap::new();
                for h in Handled::ALL {
                    let v = ld(&s.handled[h as usize]);
                    *handled.get_mut(h.name()).expect("every kind is listed") += v;
                    if v != 0 {
                        wh.insert(h.name().to_owned(), v);
                    }
                }
                proto::WorkerCounters {
                    index: w.index,
                    lcore: w.lcore,
                    polls: ld(&s.polls),
                    busy_polls: ld(&s.busy_polls),
                    sleeps: ld(&s.sleeps),
                    rx_frames: ld(&s.rx_frames),
                    tx_frames: ld(&s.tx_frames),
                    config_updates: ld(&s.config_updates),
                    handled: wh,
                    drops: wd,
                }
            })
            .collect();
        *drops.get_mut(FabricDrop::EndpointRemoved.name()).expect("every reason is listed") += self.removed_in_flight;
        let control_frames_sent =
            self.workers.iter().map(|w| w.stats.control_frames_sent.load(Ordering::Relaxed)).sum();
        let migration = self.mig.as_ref().map(|ch| {
            let live: u64 = self
                .state
                .departed
                .values()
                .filter(|(d, _)| matches!(d.peer, Peer::Remote { .. }))
                .map(|(_, ws)| self.wire_totals(ws.slot).since(&ws.base).forwarded)
                .chain(self.state.wires.values().map(|ws| self.wire_totals(ws.slot).since(&ws.base).forwarded))
                .sum();
            proto::MigrationStats {
                port: ch.settings.port,
                grace_ms: ch.settings.grace.as_millis() as u64,
                sent: ch.sent,
                received: ch.received,
                accepted: ch.accepted,
                refused: ch.refused.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                pending: ch.pending.len(),
                unsent: ch.unsent,
                forwarded: ch.forwarded_before + live,
            }
        });
        proto::Stats {
            ports,
            wires: self.wire_list(),
            workers,
            drops,
            handled,
            control_frames_sent,
            mempool: self.mempool(),
            migration,
        }
    }
}

fn encap_name(e: Encap) -> EncapName {
    match e {
        Encap::Vxlan => EncapName::Vxlan,
        // Forward is never a wire's format.
        Encap::Vwire | Encap::Forward => EncapName::Vwire,
    }
}

fn describe_wire(w: &vw_wire::table::Wire) -> String {
    match &w.peer {
        Peer::Local(b) => format!("loopback {} <-> {b}", w.endpoint),
        Peer::Remote { vtep, encap } => format!("encap {} <-> {vtep} ({})", w.endpoint, encap.name()),
    }
}
