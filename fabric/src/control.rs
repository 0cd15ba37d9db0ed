//! The control plane: runs on the EAL main lcore, owns all configuration.
//!
//! This is the shell around `vw_core`, which holds the configuration and
//! compiles it into the data-path plan. Requests from the control socket
//! are handled one at a time. A change is made on a copy of the state (O(1)
//! with its persistent maps), recorded in the state journal, compiled into
//! a plan by updating the current one with what the change touched,
//! published to the workers (who switch at their next quiescent point) with
//! each port's device handles, and only then committed; a refused or failed
//! request leaves everything as it was. The shell opens and closes devices,
//! follows VMs, sends what the migration exchange asks for and answers
//! reports (`report.rs`). A periodic tick resolves underlay neighbours
//! (ARP), re-balances receive queues and checks that every worker is alive.

mod directory;
mod hold;
mod report;
mod secure;

use crate::persist::{Change, Origin, Saved, SavedIncoming, SavedSecure, SavedWire, Store};
use crate::snapshot::{self, new_handoff, Handoff, Mailbox, PortDevice, PortIndex, Snapshot};
use crate::sockdir::SockDir;
use crate::stats::{FabricDrop, PortTotals, WireTotals, WorkerStats, RXQ_SLOTS};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vw_core::exchange::{self, ArrivalError, Outcome, Outgoing, Refused};
pub use vw_core::migrate::MigrationSettings;
use vw_core::migrate::{self, now_ns, Channel, Pending};
use vw_core::policy::{self, DevicePattern, Role};
use vw_core::{compile, Config, Endpoint, EndpointKind, Link, MigrationConfig, State, UplinkConfig};
use vw_ctl::proto::{self, EncapName, EndpointSpec, ErrorCode, Reply, Request};
use vw_ctl::server::{Caller, Job};
use vw_pmd::{port, vhost, Mempool, PortConfig, PortId, PortInfo, PortIo, VhostSocket};
use vw_wire::migration::kind;
use vw_wire::table::{Peer, TableError};
use vw_wire::{arp, ConnectorId, Encap, EncapTemplate, MacAddr};

/// How long a worker may take to switch to a new snapshot.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Control-plane housekeeping period (ARP, worker health, vhost links).
const TICK: Duration = Duration::from_millis(10);
/// How often the control plane looks for migration messages.
const MIGRATION_POLL: Duration = Duration::from_micros(200);
/// How often the load of every RX queue is measured.
const MEASURE: Duration = Duration::from_secs(1);

/// Size of the port table: the uplink, every vhost-user socket librte_vhost
/// can hold and every ethdev port DPDK can hold.
pub fn max_ports() -> usize {
    1 + vhost::MAX_SOCKETS + port::max_ports() as usize
}

/// The uplink: its device, and its addresses (read through `Deref`).
#[derive(Debug, Clone)]
pub struct Uplink {
    /// Device arguments.
    pub devargs: String,
    /// DPDK port id (its index in the fabric is [`PortIndex::UPLINK`]).
    pub port: PortId,
    /// Addresses, ports and MTU.
    pub net: UplinkConfig,
}

impl std::ops::Deref for Uplink {
    type Target = UplinkConfig;

    fn deref(&self) -> &UplinkConfig {
        &self.net
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
    /// How often RX queues are re-balanced over workers, if at all.
    pub rebalance: Option<Duration>,
    /// Directory of the sockets of vhost-user endpoints added by name.
    pub vhost_dir: PathBuf,
    /// The control socket's group (owns `vhost_dir` and its sockets).
    pub socket_group: Option<u32>,
    /// DPDK devices members of the socket group may add.
    pub allow_devices: Vec<DevicePattern>,
    /// State file, if configuration is persisted.
    pub state_file: Option<PathBuf>,
    /// Neighbours configured by the operator (never probed).
    pub static_neighbours: Vec<(Ipv4Addr, MacAddr)>,
    /// Benchmark aid: send the forward direction of loopback wires through
    /// encap in this format, the uplink (which must return what it sends)
    /// and decap.
    pub force_encap: Option<vw_wire::Encap>,
    /// Live migration, if a key was given.
    pub migration: Option<MigrationSettings>,
    /// The endpoint directory on etcd, with `--directory`.
    pub directory: Option<vw_directory::etcd::Config>,
    /// The address other sites reach this host at, behind a 1:1 NAT.
    pub public_address: Option<Ipv4Addr>,
    /// How often an idle secure wire's far end gets a NAT keepalive.
    pub nat_keepalive: Option<Duration>,
}

/// What is behind an endpoint.
enum Device {
    /// A DPDK device: one ethdev port.
    Eth {
        /// Its port.
        port: PortId,
        /// Static facts.
        info: PortInfo,
        /// Its MAC address.
        mac: MacAddr,
        /// The host interface it took over, as it was (given back so).
        found: Option<FoundIface>,
    },
    /// A vhost-user socket on librte_vhost; its link and usable queues
    /// follow the VM. Unregistered when dropped.
    Vhost(VhostSocket),
}

impl Device {
    fn io(&self) -> PortIo {
        match self {
            Device::Eth { port, .. } => PortIo::Eth(*port),
            Device::Vhost(s) => PortIo::Vhost(s.port().clone()),
        }
    }

    /// The VM's side as librte_vhost last reported it (a DPDK device: none).
    fn link(&self) -> Link {
        match self {
            Device::Eth { .. } => Link::default(),
            Device::Vhost(s) => {
                let vs = s.port().state();
                Link { up: vs.up, vrings: vs.vrings, migrating: vs.migrating }
            }
        }
    }
}

/// A port of the fabric that is an endpoint: what the core does not hold.
struct Port {
    name: String,
    /// What users see as its device: a vhost-user socket's path.
    shown: String,
    dev: Device,
    /// The directory of a vhost-user socket (after `dev`: the socket is
    /// unregistered, and in server mode removed, through it).
    _dir: Option<Arc<SockDir>>,
    /// Handoff rings when the port may have fewer TX queues than workers.
    handoff: Option<Handoff>,
    /// The port index's counters when the endpoint was added (an index is reused).
    base: PortTotals,
    /// Who added it, and whether the socket group may use it.
    origin: Origin,
}

/// A host interface as the device found it, before it took it over.
#[derive(Debug, Clone)]
struct FoundIface {
    name: String,
    mac: [u8; 6],
    promiscuous: bool,
    up: bool,
}

/// The host interface devargs name (`iface=NAME`), if it exists now.
fn found_iface(devargs: &str) -> Option<FoundIface> {
    let name = devargs.split(',').find_map(|a| a.strip_prefix("iface="))?;
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let dir = std::path::Path::new("/sys/class/net").join(name);
    let mac: MacAddr = std::fs::read_to_string(dir.join("address")).ok()?.trim().parse().ok()?;
    let flags = std::fs::read_to_string(dir.join("flags")).ok()?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
    // IFF_PROMISC, IFF_UP
    Some(FoundIface { name: name.to_owned(), mac: mac.0, promiscuous: flags & 0x100 != 0, up: flags & 0x1 != 0 })
}

/// Gives a host interface back as the device found it (promiscuous mode,
/// MAC address) before the device goes, and (`after`) up if it was.
fn give_back_after(found: &Option<FoundIface>) {
    let Some(f) = found else { return };
    if f.up && std::path::Path::new("/sys/class/net").join(&f.name).exists() {
        if let Err(e) = port::host_iface_up(&f.name) {
            crate::log(&format!("interface {}: cannot set it up again: {e}", f.name));
        }
    }
}

/// See [`give_back_after`]; this part runs while the device is there.
fn give_back(port: PortId, found: &Option<FoundIface>) {
    let Some(f) = found else { return };
    if !f.promiscuous {
        if let Err(e) = port::promiscuous_disable(port) {
            crate::log(&format!("interface {}: cannot turn promiscuous mode back off: {e}", f.name));
        }
    }
    if port::mac_addr(port).is_ok_and(|m| m != f.mac) {
        if let Err(e) = port::set_mac(port, f.mac) {
            crate::log(&format!("interface {}: cannot give its MAC address back: {e}", f.name));
        }
    }
}

/// A device just opened for an endpoint.
struct Opened {
    dev: Device,
    kind: EndpointKind,
    /// The path users see.
    shown: String,
    /// A vhost-user socket's directory.
    dir: Option<Arc<SockDir>>,
    /// The inode of the server-mode socket it created.
    socket_ino: Option<u64>,
}

/// What a change touched, to be recorded in the state journal as it is after
/// the change (present: saved; absent: removed).
enum Touched {
    /// An endpoint, by name, with its origin if it is there.
    Endpoint(String, Origin),
    /// A wire.
    Wire(ConnectorId),
    /// The connect armed for an endpoint's VM.
    Incoming(String),
}

/// A connect waiting for its endpoint's VM (`connect --incoming`).
#[derive(Debug, Clone)]
struct Incoming {
    wire: ConnectorId,
    peer: String,
    encap: Option<EncapName>,
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
    let code = match e {
        vw_pmd::Error::PortLimit { .. } => ErrorCode::EndpointLimit,
        _ => ErrorCode::DeviceError,
    };
    Refusal::new(code, e.to_string())
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

/// Endpoints by kind, for the limits (kept, not counted, on every add).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    vhost_servers: usize,
    vhost_clients: usize,
    eth: usize,
}

/// The control plane.
pub struct Control {
    settings: Settings,
    pool: Mempool,
    workers: Vec<WorkerHandle>,
    mailboxes: Vec<Arc<Mailbox>>,
    uplink: Option<Uplink>,
    /// The configuration (committed: what the workers run).
    state: State,
    current: Arc<Snapshot>,
    /// The committed state's device table: `current`'s, or while the state
    /// file is restored, the one `restore` publishes.
    devices: Arc<[PortDevice]>,
    /// Per port index: the endpoint's device and what goes with it.
    ports: Vec<Option<Port>>,
    counts: Counts,
    /// Vhost-user socket paths in use.
    vhost_paths: HashSet<String>,
    /// `--vhost-dir`, once an endpoint added by name needed it.
    vhost_dir: Option<Arc<SockDir>>,
    /// This process's user id (it and root are operators).
    own_uid: u32,
    /// DPDK ports in use by endpoints, with the endpoint's name.
    eth_ports: HashMap<PortId, String>,
    /// Per wire slot: its counters when its wire was connected.
    wire_bases: Vec<WireTotals>,
    /// Version of the next snapshot; increases on every build, published or not.
    next_version: u64,
    fatal: Option<Fatal>,
    /// Port indexes not in use (the uplink's is never free), lowest first.
    free_ports: BTreeSet<u32>,
    /// Frames freed from handoff rings of removed endpoints and of ports
    /// whose VM went away.
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
    /// When RX queues were last measured, and the frames each had received then.
    last_measure: (Instant, HashMap<(PortIndex, u16), u64>),
    /// When RX queues were last re-balanced.
    last_rebalance: Instant,
    /// The MTU mismatch last logged per wire (each is logged once).
    mtu_logged: HashMap<ConnectorId, String>,
    /// Connects waiting for their endpoint's VM to start here
    /// (`connect --incoming`), by endpoint.
    incoming: BTreeMap<String, Incoming>,
    /// The migration channel, with `--migration-key-file`.
    mig: Option<Channel>,
    /// `oversize` drops already reported in the log, and when last.
    oversize_logged: (u64, Option<Instant>),
    /// Frames freed from hold queues that ended without a release.
    hold_expired: u64,
    /// Per wire slot: frames each way when last measured, and the rate then.
    rates: Vec<hold::WireRate>,
    /// When wire rates were last measured.
    last_rates: Instant,
    /// The endpoint directory, with `--directory`.
    dir: Option<directory::Dir>,
    /// Secure wires' SAs, as the next snapshot carries them.
    secure: Arc<crate::secure::SecureTable>,
    /// Secure wires' keys and the sequence floors saved for them.
    secure_saved: BTreeMap<ConnectorId, SavedSecure>,
    /// Rekeys under way: when each switches its outbound SA at the latest.
    rekey_due: BTreeMap<ConnectorId, Instant>,
    /// Rekeyed wires keeping their old inbound SA: since when the far end
    /// is known to send with the new keys (None: not yet).
    rekey_linger: BTreeMap<ConnectorId, Option<Instant>>,
    /// NAT keepalives: when the next round is due, each secure wire's
    /// packets sent at the last round, and how many keepalives went out.
    keepalive: secure::Keepalive,
    /// Secure wires whose keys carry an SA lifetime.
    lifetimes: BTreeMap<ConnectorId, secure::Lifetime>,
}

impl Control {
    /// A control plane with no endpoint and no wire yet.
    pub fn new(settings: Settings, pool: Mempool, workers: Vec<WorkerHandle>, uplink: Option<Uplink>) -> Control {
        let mailboxes = workers.iter().map(|w| w.mailbox.clone()).collect();
        let config = Config {
            workers: workers.len(),
            max_ports: max_ports(),
            max_wires: settings.max_wires as u32,
            uplink: uplink.as_ref().map(|u| u.net.clone()),
            force_encap: settings.force_encap,
            migration: settings.migration.as_ref().map(|m| MigrationConfig {
                port: m.port,
                grace: m.grace,
                hold: m.hold,
            }),
        };
        let mut state = State::new(config);
        for (ip, mac) in &settings.static_neighbours {
            state.add_permanent(*ip, *mac, Instant::now());
        }
        let mut devices = vec![PortDevice::NONE; max_ports()];
        if let Some(u) = &uplink {
            devices[PortIndex::UPLINK.ix()] = PortDevice { io: PortIo::Eth(u.port), handoff: None };
        }
        let plan = compile::compile(&state);
        state.take_dirty();
        let devices: Arc<[PortDevice]> = devices.into();
        let current = Arc::new(Snapshot {
            version: 1,
            plan,
            devices: devices.clone(),
            parks: Default::default(),
            secure: Default::default(),
        });
        let settings_max_wires = settings.max_wires;
        Control {
            mig: settings.migration.clone().map(Channel::new),
            wire_bases: vec![WireTotals::default(); settings.max_wires],
            settings,
            pool,
            workers,
            mailboxes,
            uplink,
            state,
            current,
            devices,
            ports: (0..max_ports()).map(|_| None).collect(),
            counts: Counts::default(),
            vhost_paths: HashSet::new(),
            vhost_dir: None,
            own_uid: rustix::process::geteuid().as_raw(),
            eth_ports: HashMap::new(),
            next_version: 2,
            fatal: None,
            free_ports: (1..max_ports() as u32).collect(),
            removed_in_flight: 0,
            unrestored: Saved::default(),
            store: None,
            restoring: false,
            started: Instant::now(),
            last_tick: Instant::now(),
            last_measure: (Instant::now(), HashMap::new()),
            last_rebalance: Instant::now(),
            oversize_logged: (0, None),
            mtu_logged: HashMap::new(),
            secure: Arc::default(),
            secure_saved: BTreeMap::new(),
            rekey_due: BTreeMap::new(),
            rekey_linger: BTreeMap::new(),
            keepalive: secure::Keepalive::default(),
            lifetimes: BTreeMap::new(),
            incoming: BTreeMap::new(),
            hold_expired: 0,
            rates: vec![hold::WireRate::default(); settings_max_wires],
            last_rates: Instant::now(),
            dir: None,
        }
    }

    /// Starts the directory's backend (before `restore`, which marks the
    /// wires it made). Its events are taken once `run` starts.
    pub fn start_directory(&mut self) -> Result<(), String> {
        if let Some(cfg) = self.settings.directory.clone() {
            let what = cfg.endpoints.join(",");
            self.dir = Some(
                directory::Dir::start(cfg).map_err(|e| format!("cannot start the directory client for {what}: {e}"))?,
            );
        }
        Ok(())
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
            // The directory's events wake the loop as requests do.
            let got = match self.dir.as_ref().and_then(|d| d.events()) {
                None => jobs.recv_timeout(wait).map(Some),
                Some(events) => {
                    let mut sel = crossbeam::channel::Select::new();
                    let job = sel.recv(jobs);
                    sel.recv(events);
                    match sel.ready_timeout(wait) {
                        Ok(i) if i == job => match jobs.try_recv() {
                            Ok(j) => Ok(Some(j)),
                            Err(crossbeam::channel::TryRecvError::Empty) => Ok(None),
                            Err(crossbeam::channel::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                        },
                        Ok(_) => Ok(None),
                        Err(_) => Err(RecvTimeoutError::Timeout),
                    }
                }
            };
            match got {
                Ok(Some(job)) => {
                    if let Some(job) = self.directory_job(job) {
                        let reply = self.handle(&job.request, job.caller);
                        job.reply(reply);
                    }
                }
                Ok(None) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            self.take_directory_events();
            if self.mig.is_some() {
                self.take_neighbour_events();
                self.poll_migration();
                // A VM whose rings stop (QEMU's last migration phase) has
                // its frames held from the next turn, not the next tick.
                self.watch_vms();
                self.tend_holds();
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
        // The workers have stopped: secure wires' exact sequence numbers.
        self.secure_stopped();
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
        // The workers' snapshot holds the devices' io handles; a vhost-user
        // socket is unregistered when its `Port` goes.
        self.current = Arc::new(Snapshot::empty(0, 0));
        self.devices = self.current.devices.clone();
        for p in std::mem::take(&mut self.ports).into_iter().flatten() {
            if let Device::Eth { port, found, .. } = p.dev {
                give_back(port, &found);
                if let Err(e) = port::remove(port) {
                    crate::log(&format!("removing endpoint {}: {e}", p.name));
                }
                give_back_after(&found);
            }
        }
        if let Some(u) = self.uplink.take() {
            if let Err(e) = port::remove(u.port) {
                crate::log(&format!("removing the uplink: {e}"));
            }
        }
    }

    fn handle(&mut self, request: &Request, caller: Caller) -> Reply {
        let role = Role::of(caller.uid, self.own_uid);
        let result = match request {
            Request::Status => Ok(Reply::ok(&self.status())),
            Request::EndpointAdd { name, spec, group } => {
                self.permit(spec, role).and_then(|_| self.endpoint_add(name, spec, role, *group)).map(|e| Reply::ok(&e))
            }
            Request::EndpointDel { name } => {
                self.may_use(role, &[name.as_str()], "delete").and_then(|_| self.endpoint_del(name)).map(|_| {
                    self.directory_release(name);
                    Reply::ok(&serde_json::json!({}))
                })
            }
            Request::EndpointList => Ok(Reply::ok(&self.endpoint_list())),
            Request::Connect { wire, endpoint, peer, encap, incoming, keys } => {
                // A peer that names a local endpoint makes a loopback wire:
                // both ends must be the caller's to use.
                let r = self.may_use(role, &[endpoint.as_str(), peer.as_str()], "connect").and_then(|_| {
                    self.check_secure_request(role, *encap, keys.as_ref(), *incoming)?;
                    let Some(wire) = wire else {
                        return Err(Refusal::new(
                            ErrorCode::InvalidArgument,
                            if self.dir.is_some() {
                                "an --incoming connect or one to a VTEP address needs a wire id".to_owned()
                            } else {
                                "a connect without a wire id needs the endpoint directory (vwfabric --directory), \
                                 which allocates one"
                                    .to_owned()
                            },
                        ));
                    };
                    match (encap, keys) {
                        (Some(e), Some(k)) if e.is_secure() => {
                            self.connect_secure(ConnectorId(*wire), endpoint, peer, *e, k)
                        }
                        _ if *incoming => self.connect_incoming(ConnectorId(*wire), endpoint, peer, *encap),
                        _ => self.connect_or_loop_sa(ConnectorId(*wire), endpoint, peer, *encap),
                    }
                });
                if r.is_ok() {
                    self.report_mtu(endpoint);
                }
                r.map(|w| Reply::ok(&w))
            }
            Request::Disconnect { wire } => {
                let ends: Vec<String> = self
                    .state
                    .table()
                    .wire(ConnectorId(*wire))
                    .map(|w| {
                        [Some(w.endpoint.clone()), w.local_peer().map(str::to_owned)].into_iter().flatten().collect()
                    })
                    .unwrap_or_default();
                let ends: Vec<&str> = ends.iter().map(String::as_str).collect();
                self.may_use(role, &ends, "disconnect").and_then(|_| self.disconnect(ConnectorId(*wire))).map(|_| {
                    self.mtu_logged.remove(&ConnectorId(*wire));
                    Reply::ok(&serde_json::json!({}))
                })
            }
            Request::Rekey { wire, keys, switch_in_ms } => self
                .rekey(role, ConnectorId(*wire), keys, switch_in_ms.unwrap_or(proto::REKEY_SWITCH_DEFAULT_MS))
                .map(|w| Reply::ok(&w)),
            Request::WireList => Ok(Reply::ok(&self.wire_list())),
            Request::Stats => Ok(Reply::ok(&self.stats())),
            Request::RxqRebalance => self.rebalance().map(|m| Reply::ok(&m)),
        };
        result.unwrap_or_else(|r| Reply::err(r.code, r.message))
    }

    // ---- applying changes -------------------------------------------------

    /// Publishes `next` to the workers and commits it. A worker that does
    /// not switch in time is fatal (see [`Fatal::WorkerStuck`]).
    fn apply(&mut self, next: State) -> Result<(), Refusal> {
        self.apply_with(next, &[], None)
    }

    /// Like `apply`; what `save` names (as it is in `next`) is recorded in
    /// the state journal first, and a failure to record it refuses the
    /// change; `devices`, if given, replaces the device table (a port came
    /// or goes). While the saved state is being restored, nothing is
    /// recorded or published: `restore` publishes everything at once.
    fn apply_with(
        &mut self,
        mut next: State,
        save: &[Touched],
        devices: Option<Arc<[PortDevice]>>,
    ) -> Result<(), Refusal> {
        if !save.is_empty() && !self.restoring {
            self.record(&next, save)?;
        }
        if self.restoring {
            self.state = next;
            if let Some(d) = devices {
                // Published by `restore`, with the plan.
                self.devices = d;
            }
            return Ok(());
        }
        let touched: Vec<PortIndex> = next.dirty().ports.iter().copied().collect();
        let mut plan = self.current.plan.clone();
        compile::update(&mut plan, &mut next);
        let version = self.next_version;
        self.next_version += 1;
        let devices = devices.unwrap_or_else(|| self.devices.clone());
        let (parks, retired) = self.parks_for(&plan);
        let secure = self.secure.clone();
        let snap = Arc::new(Snapshot { version, plan, devices, parks, secure });
        if let Err(e) = snapshot::publish(&self.mailboxes, snap.clone(), PUBLISH_TIMEOUT) {
            let msg = format!("{e}; stopping the fabric");
            crate::log(&msg);
            self.fatal = Some(Fatal::WorkerStuck(msg.clone()));
            return Err(Refusal::new(ErrorCode::Unavailable, msg));
        }
        self.devices = snap.devices.clone();
        self.current = snap;
        self.state = next;
        self.free_stranded(&touched);
        self.free_parks(retired);
        Ok(())
    }

    /// Frees frames left in the handoff rings of ports that went down: no
    /// worker writes or drains those rings in the plan all of them run now.
    fn free_stranded(&mut self, touched: &[PortIndex]) {
        for ix in touched {
            if self.current.ports.get(ix.ix()).is_some_and(|p| p.up) {
                continue;
            }
            if let Some(h) = self.current.devices.get(ix.ix()).and_then(|d| d.handoff.as_ref()) {
                for ring in h.iter() {
                    while ring.pop().is_some() {
                        self.removed_in_flight += 1;
                    }
                }
            }
        }
    }

    /// The device table with port `ix` set to `dev`.
    fn devices_with(&self, ix: PortIndex, dev: PortDevice) -> Arc<[PortDevice]> {
        let mut d = self.devices.to_vec();
        d[ix.ix()] = dev;
        d.into()
    }

    // ---- requests ---------------------------------------------------------

    fn port_owner(&self, p: PortId) -> Option<String> {
        if self.uplink.as_ref().is_some_and(|u| u.port == p) {
            return Some("the uplink".into());
        }
        self.eth_ports.get(&p).map(|n| format!("endpoint {n}"))
    }

    /// Refuses what a member of the socket group may not ask for: a DPDK
    /// device root did not allow (`--allow-device`), or a vhost-user socket
    /// by path (members add them by name, in `--vhost-dir`).
    fn permit(&self, spec: &EndpointSpec, role: Role) -> Result<(), Refusal> {
        if role == Role::Operator {
            return Ok(());
        }
        let denied = |m: String| Err(Refusal::new(ErrorCode::PermissionDenied, m));
        match spec {
            EndpointSpec::Dpdk { devargs } => {
                if self.settings.allow_devices.iter().any(|p| p.matches(devargs)) {
                    return Ok(());
                }
                let allowed = if self.settings.allow_devices.is_empty() {
                    "none (vwfabric --allow-device)".to_owned()
                } else {
                    self.settings.allow_devices.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                };
                denied(format!(
                    "only root may add DPDK device {devargs:?}; the devices this fabric allows its socket group: {allowed}"
                ))
            }
            EndpointSpec::VhostUser { path, .. } if !path.is_empty() => denied(format!(
                "only root may give a vhost-user socket path ({path}); add the endpoint by name \
                 (`vwctl endpoint add NAME --vhost-user`) and its socket is NAME.sock in {}",
                self.settings.vhost_dir.display()
            )),
            EndpointSpec::VhostUser { .. } => Ok(()),
        }
    }

    /// Refuses a member's request (`what`) that touches an endpoint root
    /// added without `--group`: the socket group manages its own endpoints'
    /// wires, not root's devices. Names that are not endpoints are left to
    /// the request itself to refuse.
    fn may_use(&self, role: Role, names: &[&str], what: &str) -> Result<(), Refusal> {
        if role == Role::Operator {
            return Ok(());
        }
        for name in names {
            let Some(e) = self.state.endpoint(name) else { continue };
            let Some(p) = self.ports[e.ix.ix()].as_ref() else { continue };
            if !p.origin.group_may_use() {
                return Err(Refusal::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "endpoint {name} is root's: members of the socket group may {what} only the endpoints they \
                         added, or that root added with `endpoint add --group`"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `--vhost-dir`, set up at its first use.
    fn vhost_dir(&mut self) -> Result<Arc<SockDir>, Refusal> {
        if let Some(d) = &self.vhost_dir {
            return Ok(d.clone());
        }
        let d = Arc::new(
            SockDir::own(&self.settings.vhost_dir, self.settings.socket_group)
                .map_err(|m| Refusal::new(ErrorCode::Unavailable, m))?,
        );
        self.vhost_dir = Some(d.clone());
        Ok(d)
    }

    /// Refuses an endpoint of `spec`'s kind when the fabric holds as many as
    /// it can (librte_vhost's sockets and poll-set slots, DPDK's ethdev
    /// ports), naming the limit rather than letting DPDK fail deep inside.
    fn check_limits(&self, spec: &EndpointSpec) -> Result<(), Refusal> {
        let limit = |m: String| Err(Refusal::new(ErrorCode::EndpointLimit, m));
        match spec {
            EndpointSpec::VhostUser { client, .. } => {
                let (servers, clients) = (self.counts.vhost_servers, self.counts.vhost_clients);
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
                let max = port::max_ports() as usize - usize::from(self.uplink.is_some());
                if self.counts.eth >= max {
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

    /// Where the socket of vhost-user endpoint `name` is: its directory,
    /// the file's name in it and the path users see. Checks the request.
    fn vhost_place(
        &mut self,
        name: &str,
        path: &str,
        client: bool,
        queues: u16,
        ours: Option<u64>,
    ) -> Result<(Arc<SockDir>, String, String), Refusal> {
        let invalid = |m: String| Err(Refusal::new(ErrorCode::InvalidArgument, m));
        if !(1..=vhost::MAX_QUEUE_PAIRS).contains(&queues) {
            return invalid(format!(
                "--queues {queues}: a vhost-user endpoint has 1 to {} queue pairs",
                vhost::MAX_QUEUE_PAIRS
            ));
        }
        let (dir, file, own_dir) = if path.is_empty() {
            if client {
                return invalid(format!(
                    "endpoint {name}: a client-mode endpoint connects to the socket its VM listens on; root gives \
                     its path (--vhost-user PATH --client)"
                ));
            }
            let file = format!("{name}.sock");
            if !policy::socket_name_ok(&file) {
                return invalid(format!("{name:?} cannot name a socket"));
            }
            (self.vhost_dir()?, file, true)
        } else {
            let p = std::path::Path::new(path);
            if !path.starts_with('/') || path.len() > 107 {
                return invalid(format!("vhost-user socket path {path:?} must be absolute and at most 107 bytes"));
            }
            let (Some(parent), Some(file)) = (p.parent(), p.file_name().and_then(|f| f.to_str())) else {
                return invalid(format!("vhost-user socket path {path:?} names no file"));
            };
            let dir = SockDir::open(parent).map_err(|m| Refusal::new(ErrorCode::InvalidArgument, m))?;
            (Arc::new(dir), file.to_owned(), false)
        };
        let shown = dir.shown(&file).display().to_string();
        if self.vhost_paths.contains(&shown) {
            return invalid(format!("vhost-user socket {shown} is already used by another endpoint"));
        }
        if !client {
            // Only the fabric writes to its own directory; elsewhere a stale
            // socket goes only if it is the one this fabric made.
            dir.clear_stale(&file, own_dir, ours).map_err(|m| Refusal::new(ErrorCode::InvalidArgument, m))?;
        }
        Ok((dir, file, shown))
    }

    /// Creates the device behind endpoint `name` at port index `ix`, with
    /// its kind for the core, the path users see (a vhost-user socket's)
    /// and the directory the socket is reached through.
    fn open_device(
        &mut self,
        name: &str,
        spec: &EndpointSpec,
        ix: PortIndex,
        ours: Option<u64>,
    ) -> Result<Opened, Refusal> {
        match spec {
            EndpointSpec::VhostUser { path, client, queues } => {
                let (dir, file, shown) = self.vhost_place(name, path, *client, *queues, ours)?;
                let sock = VhostSocket::start(&dir.socket_path(&file), *client, *queues, ix.0).map_err(device_error)?;
                if path.is_empty() {
                    // QEMU in the socket group connects to it.
                    dir.share(&file, self.settings.socket_group)
                        .map_err(|m| Refusal::new(ErrorCode::Unavailable, m))?;
                }
                let socket_ino = if *client { None } else { dir.inode(&file) };
                let kind = EndpointKind::Vhost { queues: *queues, client: *client };
                Ok(Opened { dev: Device::Vhost(sock), kind, shown, dir: Some(dir), socket_ino })
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
                let found = found_iface(devargs);
                let probed = port::probe(devargs).map_err(|e| {
                    // Say what was wrong with the request, when the arguments tell.
                    let known = crate::devargs::known_drivers(std::path::Path::new(crate::devargs::PMD_DIR));
                    match crate::devargs::diagnose(devargs, &known) {
                        Some(d @ crate::devargs::Diagnosis::UnknownDriver { .. }) => {
                            Refusal::new(ErrorCode::UnknownDriver, format!("device {devargs:?}: {d}"))
                        }
                        Some(d @ crate::devargs::Diagnosis::NoSuchFile { .. }) => {
                            Refusal::new(ErrorCode::NoSuchFile, format!("device {devargs:?}: {d}"))
                        }
                        None if matches!(e, vw_pmd::Error::Dpdk { .. }) => Refusal::new(
                            ErrorCode::DeviceError,
                            format!(
                                "device {devargs:?}: the driver refused it ({e}); DPDK logs the reason to the \
                                 fabric's output (often an argument it cannot parse)"
                            ),
                        ),
                        None => device_error(e),
                    }
                })?;
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
                            rx_l4_checksum: false,
                        },
                    )?;
                    Ok((port::info(p)?, MacAddr(port::mac_addr(p)?)))
                };
                match setup() {
                    Ok((info, mac)) => Ok(Opened {
                        shown: info.name.clone(),
                        // Only a device this request created took the interface over.
                        dev: Device::Eth { port: p, info, mac, found: found.filter(|_| probed.created) },
                        kind: EndpointKind::Eth { queues },
                        dir: None,
                        socket_ino: None,
                    }),
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

    fn endpoint_add(
        &mut self,
        name: &str,
        spec: &EndpointSpec,
        role: Role,
        group: bool,
    ) -> Result<proto::EndpointInfo, Refusal> {
        let member = role == Role::Member;
        let e =
            self.endpoint_add_with(name, spec, true, Origin { member, group: group && !member, socket_ino: None })?;
        self.directory_claim(name);
        Ok(e)
    }

    /// Adds an endpoint; `origin` says who asked and, restoring, the inode
    /// of the socket the fabric created for it before (the only stale
    /// socket it replaces outside `--vhost-dir`).
    fn endpoint_add_with(
        &mut self,
        name: &str,
        spec: &EndpointSpec,
        save: bool,
        origin: Origin,
    ) -> Result<proto::EndpointInfo, Refusal> {
        // The name first: nothing is opened for a request that fails anyway.
        self.state.table().clone().add_endpoint(name)?;
        if let EndpointSpec::Dpdk { devargs } = spec {
            let role = if origin.member { Role::Member } else { Role::Operator };
            vw_core::policy::check_devargs(devargs, role).map_err(|m| Refusal::new(ErrorCode::InvalidArgument, m))?;
        }
        if origin.member {
            // Restoring what a member added: only what is still allowed.
            self.permit(spec, Role::Member)?;
        }
        self.check_limits(spec)?;
        let Some(&ix) = self.free_ports.first() else {
            return Err(Refusal::new(
                ErrorCode::EndpointLimit,
                format!("endpoint_limit: all {} ports of this fabric are in use", max_ports() - 1),
            ));
        };
        let ix = PortIndex(ix);
        let Opened { dev, kind, shown, dir, socket_ino } = self.open_device(name, spec, ix, origin.socket_ino)?;
        let origin = Origin { socket_ino, ..origin };
        let workers = self.workers.len();
        let vhost = matches!(kind, EndpointKind::Vhost { .. });
        let queues = match kind {
            EndpointKind::Eth { queues } | EndpointKind::Vhost { queues, .. } => queues,
        };
        let handoff = (vhost || (queues as usize) < workers).then(|| new_handoff(workers));
        let ep = Endpoint { spec: spec.clone(), ix, kind, link: dev.link(), handoff: handoff.is_some() };
        let mut next = self.state.clone();
        next.add_endpoint(name, ep)?;
        let devices = self.devices_with(ix, PortDevice { io: dev.io(), handoff: handoff.clone() });
        let touched = [Touched::Endpoint(name.to_owned(), origin)];
        if let Err(e) = self.apply_with(next, if save { &touched } else { &[] }, Some(devices)) {
            // Never undo once a publish failed (a worker may still poll the
            // port; the fabric is stopping). A vhost-user socket goes with
            // its device.
            if self.fatal.is_none() {
                if let Device::Eth { port, .. } = dev {
                    let _ = port::remove(port);
                }
            } else {
                std::mem::forget(dev);
            }
            return Err(e);
        }
        self.free_ports.remove(&ix.0);
        let what = match &dev {
            Device::Eth { port, .. } => {
                self.counts.eth += 1;
                self.eth_ports.insert(*port, name.to_owned());
                format!("port {port} ({spec:?})")
            }
            Device::Vhost(v) => {
                let client = v.port().client();
                if client {
                    self.counts.vhost_clients += 1;
                } else {
                    self.counts.vhost_servers += 1;
                }
                self.vhost_paths.insert(shown.clone());
                format!("vhost-user {shown} ({} mode)", if client { "client" } else { "server" })
            }
        };
        let base = self.port_totals(ix);
        self.ports[ix.ix()] = Some(Port { name: name.to_owned(), shown, dev, _dir: dir, handoff, base, origin });
        crate::log(&format!("endpoint {name} added: {what}"));
        Ok(self.endpoint_info(name))
    }

    fn endpoint_del(&mut self, name: &str) -> Result<(), Refusal> {
        if self.state.endpoint(name).is_some() {
            self.directory_drop_half(name)?;
        }
        let mut next = self.state.clone();
        let ep = next.remove_endpoint(name)?;
        let mut save = vec![Touched::Endpoint(name.to_owned(), Origin::default())];
        let armed = self.incoming.remove(name);
        if armed.is_some() {
            save.push(Touched::Incoming(name.to_owned()));
        }
        let devices = self.devices_with(ep.ix, PortDevice::NONE);
        if let Err(r) = self.apply_with(next, &save, Some(devices)) {
            self.incoming.extend(armed.map(|p| (name.to_owned(), p)));
            return Err(r);
        }
        if let Some(p) = armed {
            self.arm_neighbour(&p.peer, false);
            crate::log(&format!("wire {}: the connect waiting for {name}'s VM is cancelled", p.wire));
        }
        // No worker polls or sends to the port any more. Frames still in
        // its handoff rings are freed with them.
        let Some(p) = self.ports[ep.ix.ix()].take() else { return Ok(()) };
        if let Some(h) = &p.handoff {
            for ring in h.iter() {
                while ring.pop().is_some() {
                    self.removed_in_flight += 1;
                }
            }
        }
        match &p.dev {
            Device::Eth { port, found, .. } => {
                self.counts.eth -= 1;
                self.eth_ports.remove(port);
                give_back(*port, found);
                if let Err(e) = port::remove(*port) {
                    crate::log(&format!("endpoint {name} removed, but its device could not be: {e}"));
                }
                give_back_after(found);
            }
            Device::Vhost(v) => {
                if v.port().client() {
                    self.counts.vhost_clients -= 1;
                } else {
                    self.counts.vhost_servers -= 1;
                }
                self.vhost_paths.remove(&p.shown);
            }
        }
        // Dropping the socket unregisters it: that destroys a connected
        // VM's device and, in server mode, removes the socket file.
        drop(p);
        self.free_ports.insert(ep.ix.0);
        crate::log(&format!("endpoint {name} removed"));
        Ok(())
    }

    /// Arms a connect that is made when `endpoint`'s VM starts here: the
    /// destination of a live migration, prepared before it. Checked now as
    /// far as it can be; made at once if the VM is already there.
    fn connect_incoming(
        &mut self,
        id: ConnectorId,
        endpoint: &str,
        peer: &str,
        encap: Option<EncapName>,
    ) -> Result<proto::WireInfo, Refusal> {
        let invalid = |m: String| Err(Refusal::new(ErrorCode::InvalidArgument, m));
        let Some(ep) = self.state.endpoint(endpoint) else {
            return Err(Refusal::new(ErrorCode::NoSuchEndpoint, format!("no endpoint named {endpoint}")));
        };
        if !matches!(ep.kind, EndpointKind::Vhost { .. }) {
            return invalid(format!(
                "--incoming waits for a VM to start on a vhost-user endpoint; {endpoint} is a DPDK device (connect it \
                 without --incoming)"
            ));
        }
        if ep.link.up && ep.link.vrings != 0 {
            return self.connect(id, endpoint, peer, encap);
        }
        if let Some(w) = self.state.table().wire_of(endpoint) {
            return Err(Refusal::new(
                ErrorCode::EndpointBusy,
                format!("endpoint {endpoint} already carries wire {}", w.id),
            ));
        }
        // The wire may exist only as what the VM's arrival co-locates: an
        // encap wire from `peer`, here, to the VM's current host.
        let colocating = self.state.table().wire(id).map(|w| {
            encap.is_none() && w.kind() == vw_wire::WireKind::Encap && w.endpoint == peer && w.endpoint != endpoint
        });
        if colocating == Some(false) || self.incoming.values().any(|p| p.wire == id) {
            return Err(Refusal::new(ErrorCode::WireExists, format!("wire {id} exists")));
        }
        if let Some(p) = self.incoming.get(endpoint) {
            return Err(Refusal::new(
                ErrorCode::EndpointBusy,
                format!("endpoint {endpoint} already waits to connect wire {}", p.wire),
            ));
        }
        if colocating.is_none() {
            self.parse_peer(id, peer, encap)?;
        }
        self.incoming.insert(endpoint.to_owned(), Incoming { wire: id, peer: peer.to_owned(), encap });
        if !self.restoring {
            let st = self.state.clone();
            if let Err(r) = self.record(&st, &[Touched::Incoming(endpoint.to_owned())]) {
                self.incoming.remove(endpoint);
                return Err(r);
            }
        }
        // Resolve the peer's next hop now: when the VM starts here, its
        // LOCATE goes out at once instead of after an ARP round trip.
        self.arm_neighbour(peer, true);
        crate::log(&format!("wire {id}: {endpoint} <-> {peer} is connected when {endpoint}'s VM starts here"));
        Ok(self.incoming_info(endpoint))
    }

    /// Takes (or gives back) the use of the next hop towards an armed
    /// connect's remote peer, which keeps its MAC resolved meanwhile.
    fn arm_neighbour(&mut self, peer: &str, take: bool) {
        let Ok(vtep) = peer.parse::<Ipv4Addr>() else { return };
        let mut next = self.state.clone();
        if take {
            next.want(vtep, None, Instant::now());
        } else {
            next.release(vtep);
        }
        self.commit(next);
        if take && !self.restoring {
            self.send_arp_requests();
        }
    }

    /// The far end `peer` names: a remote VTEP the underlay can have, with
    /// its encapsulation, or a local endpoint (a loopback wire).
    fn parse_peer(&self, id: ConnectorId, peer: &str, encap: Option<EncapName>) -> Result<Peer, Refusal> {
        match peer.parse::<Ipv4Addr>() {
            Ok(vtep) => {
                let Some(u) = &self.uplink else {
                    return Err(Refusal::new(
                        ErrorCode::NoUplink,
                        format!("wire {id} to {vtep} needs an uplink; this fabric was started without --uplink"),
                    ));
                };
                vw_wire::table::validate_vtep(vtep)?;
                u.check_peer(vtep).map_err(|m| Refusal::new(ErrorCode::InvalidArgument, m))?;
                let encap = match encap.unwrap_or_default() {
                    EncapName::Vwire => Encap::Vwire,
                    EncapName::Vxlan => Encap::Vxlan,
                    EncapName::Secure => Encap::Secure,
                    EncapName::SecureVxlan => Encap::SecureVxlan,
                };
                Ok(Peer::Remote { vtep, encap })
            }
            Err(_) if encap.is_some() => Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("--encap applies to wires to a remote VTEP; {peer} is a local endpoint name"),
            )),
            Err(_) => Ok(Peer::Local(peer.to_owned())),
        }
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
        if let Some(w) = self.state.table().wire(id) {
            if encap.is_none() && w.kind() == vw_wire::WireKind::Encap && w.endpoint == peer {
                return self.colocate(id, endpoint, save);
            }
        }
        let mut next = self.state.clone();
        let peer = self.parse_peer(id, peer, encap)?;
        if let Peer::Remote { vtep, .. } = peer {
            if let Some(u) = &self.uplink {
                u.next_hop(vtep).map_err(|e| Refusal::new(ErrorCode::InvalidArgument, e.to_string()))?;
            }
        }
        let max = self.settings.max_wires;
        let Some(slot) = next.free_slot() else {
            // The table's own refusals (an unknown endpoint, a taken id) first.
            next.table().clone().connect(id, endpoint, peer)?;
            return Err(Refusal::new(
                ErrorCode::WireLimit,
                format!("wire_limit: all {max} wire slots are in use; start the fabric with a larger --max-wires"),
            ));
        };
        next.connect(id, endpoint, peer.clone(), slot)?;
        if let Peer::Remote { vtep, .. } = peer {
            next.want(vtep, None, Instant::now());
        }
        let (local_ns, remote_ns) = restored.unwrap_or((now_ns(), 0));
        let locate = match (&peer, &self.mig) {
            // A secure wire's ends do not move: nothing to announce.
            (Peer::Remote { vtep, encap }, Some(ch)) if !encap.is_secure() => {
                // Our end arrives here: frames its old host passes on are taken.
                let m = next.move_mut(id);
                m.local_ns = local_ns.max(1);
                m.remote_ns = remote_ns;
                m.arrival_until = Some(Instant::now() + ch.settings.grace);
                m.awaiting_ack = Some(Instant::now() + migrate::ACK_WAIT);
                let when = m.local_ns;
                vw_core::hold::arrive(&mut next, id, endpoint, Instant::now());
                Some((*vtep, *encap, when))
            }
            _ => None,
        };
        let base = self.wire_totals(slot);
        let touched = [Touched::Wire(id)];
        self.apply_with(next, if save { &touched } else { &[] }, None)?;
        self.wire_bases[slot as usize] = base;
        if let Some((vtep, encap, when)) = locate {
            self.announce_location(id, endpoint, vtep, encap, when);
        }
        // Ask for the next hop's MAC now rather than at the next tick.
        self.send_arp_requests();
        let w = self.state.table().wire(id).cloned();
        crate::log(&format!("wire {id} connected: {}", w.as_ref().map(describe_wire).unwrap_or_default()));
        Ok(self.wire_info(id))
    }

    fn disconnect(&mut self, id: ConnectorId) -> Result<(), Refusal> {
        if let Some(name) = self.incoming.iter().find(|(_, p)| p.wire == id).map(|(n, _)| n.clone()) {
            let p = self.incoming.remove(&name);
            let st = self.state.clone();
            if let Err(r) = self.record(&st, &[Touched::Incoming(name.clone())]) {
                self.incoming.extend(p.map(|p| (name, p)));
                return Err(r);
            }
            if let Some(p) = p {
                self.arm_neighbour(&p.peer, false);
            }
            crate::log(&format!("wire {id}: the connect waiting for {name}'s VM is cancelled"));
            // A co-location was armed on the wire that runs here: it goes too.
            if self.state.table().wire(id).is_none() {
                return Ok(());
            }
        }
        self.disconnect_half(id)
    }

    /// Disconnects wire `id`'s half here (a connect armed for a VM that is
    /// to arrive under the same id stays).
    fn disconnect_half(&mut self, id: ConnectorId) -> Result<(), Refusal> {
        let mut next = self.state.clone();
        let w = next.disconnect(id)?;
        let secure = self.secure_forget(id);
        if let Some(ch) = &mut self.mig {
            ch.pending.retain(|p| p.msg.wire != id);
        }
        if let Peer::Remote { vtep, .. } = w.peer {
            next.release(vtep);
        }
        if let Err(r) = self.apply_with(next, &[Touched::Wire(id)], None) {
            if let Some(s) = secure {
                self.secure_put_back(id, s);
            }
            return Err(r);
        }
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
                directory: false,
                secure: None,
            },
            Peer::Remote { vtep, encap } => SavedWire {
                wire: w.id.0,
                endpoint: w.endpoint.clone(),
                peer: vtep.to_string(),
                encap: Some(encap_name(*encap)),
                local_ns: st.wire_move(w.id).map_or(0, |m| m.local_ns),
                remote_ns: st.wire_move(w.id).map_or(0, |m| m.remote_ns),
                directory: false,
                secure: None,
            },
        }
    }

    /// Records in the state journal what `touched` names, as it is in `st`:
    /// one line, synced, whatever the number of other entries.
    fn record(&mut self, st: &State, touched: &[Touched]) -> Result<(), Refusal> {
        if self.store.is_none() {
            return Ok(());
        }
        let changes: Vec<Change> = touched
            .iter()
            .map(|t| match t {
                Touched::Endpoint(name, origin) => match st.endpoint(name) {
                    Some(e) => Change::EndpointAdded { name: name.clone(), spec: e.spec.clone(), origin: *origin },
                    None => Change::EndpointRemoved { name: name.clone() },
                },
                Touched::Wire(id) => match st.table().wire(*id) {
                    Some(w) => Change::WireSaved(SavedWire {
                        directory: self.directory_made(*id),
                        secure: self.secure_saved.get(id).cloned(),
                        ..Self::saved_wire(st, w)
                    }),
                    None => Change::WireRemoved { wire: id.0 },
                },
                Touched::Incoming(endpoint) => match self.incoming.get(endpoint) {
                    Some(p) => Change::IncomingArmed(SavedIncoming {
                        endpoint: endpoint.clone(),
                        wire: p.wire.0,
                        peer: p.peer.clone(),
                        encap: p.encap,
                    }),
                    None => Change::IncomingDone { endpoint: endpoint.clone() },
                },
            })
            .collect();
        let Some(store) = &mut self.store else { return Ok(()) };
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
            match self.endpoint_add_with(&e.name, &e.spec, false, e.origin) {
                Ok(_) => restored += 1,
                Err(r) => {
                    crate::log(&format!("cannot restore endpoint {} from {}: {}", e.name, path.display(), r.message));
                    self.unrestored.endpoints.push(e.clone());
                }
            }
        }
        for w in &saved.wires {
            if w.directory {
                self.directory_mark(ConnectorId(w.wire));
            }
            let when = (if w.local_ns == 0 { now_ns() } else { w.local_ns }, w.remote_ns);
            let id = ConnectorId(w.wire);
            if let Some(s) = &w.secure {
                if let Err(e) = self.secure_restore(id, &w.peer, s) {
                    crate::log(&format!("cannot restore secure wire {} from {}: {e}", w.wire, path.display()));
                    self.unrestored.wires.push(w.clone());
                    continue;
                }
            }
            match self.connect_with(id, &w.endpoint, &w.peer, w.encap, Some(when)) {
                Ok(_) => restored += 1,
                Err(r) => {
                    crate::log(&format!("cannot restore wire {} from {}: {}", w.wire, path.display(), r.message));
                    self.secure_forget(id);
                    self.unrestored.wires.push(w.clone());
                }
            }
        }
        for i in &saved.incoming {
            if self.state.table().wire_of(&i.endpoint).is_some_and(|w| w.id.0 == i.wire) {
                // Made already (the fabric stopped between saving the wire
                // and saving that the connect was made).
                let st = self.state.clone();
                if let Err(r) = self.record(&st, &[Touched::Incoming(i.endpoint.clone())]) {
                    crate::log(&format!("wire {}: {}", i.wire, r.message));
                }
                continue;
            }
            match self.connect_incoming(ConnectorId(i.wire), &i.endpoint, &i.peer, i.encap) {
                Ok(_) => restored += 1,
                Err(r) => {
                    crate::log(&format!(
                        "cannot restore the connect of wire {} armed for {} from {}: {}",
                        i.wire,
                        i.endpoint,
                        path.display(),
                        r.message
                    ));
                    self.unrestored.incoming.push(i.clone());
                }
            }
        }
        self.restoring = false;
        // Secure wires send above their saved floors: the next floor is
        // saved before any of them seals a frame.
        let st = self.state.clone();
        for id in self.secure_saved.keys().copied().collect::<Vec<_>>() {
            if let Err(r) = self.record(&st, &[Touched::Wire(id)]) {
                crate::log(&format!("secure wire {id} is not restored: {}", r.message));
                self.secure_forget(id);
            }
        }
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

    /// Lets the workers poll the uplink (after `restore`, so frames that
    /// arrive during a restart wait in the uplink's RX ring instead of
    /// being dropped as `unknown_connector`).
    pub fn poll_uplink(&mut self) -> Result<(), Fatal> {
        if self.uplink.is_some() && !self.state.uplink_polled() {
            let mut next = self.state.clone();
            next.poll_uplink();
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
        self.directory_tick();
        self.balance();
        self.measure_rates();
        self.secure_tick();
        self.rekey_tick();
        self.nat_keepalive_tick();
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

    /// Measures every RX queue's load (frames per second since the last
    /// measurement) every [`MEASURE`], and re-balances queues over workers
    /// every `--rxq-rebalance-interval`.
    fn balance(&mut self) {
        let (at, _) = &self.last_measure;
        if at.elapsed() < MEASURE {
            return;
        }
        let secs = at.elapsed().as_secs_f64().max(0.001);
        let now: HashMap<(PortIndex, u16), u64> =
            self.state.rxqs().iter().map(|(p, q, _)| ((p, q), self.rxq_frames(p, q))).collect();
        let last = std::mem::replace(&mut self.last_measure, (Instant::now(), HashMap::new())).1;
        let rate = |p: PortIndex, q: u16| {
            let n = now.get(&(p, q)).copied().unwrap_or(0);
            // A queue new since the last time counts from now on.
            let before = last.get(&(p, q)).copied().unwrap_or(n).min(n);
            ((n - before) as f64 / secs) as u64
        };
        // Loads only: nothing for the workers.
        self.state.measure(&rate);
        self.last_measure.1 = now;
        if let Some(every) = self.settings.rebalance {
            if self.last_rebalance.elapsed() >= every {
                let _ = self.rebalance();
            }
        }
    }

    /// Re-balances RX queues over workers by their last measured load.
    /// Moved queues are first published parked (polled by nobody), then at
    /// their new worker, so two workers never poll one queue. Returns what
    /// moved.
    fn rebalance(&mut self) -> Result<Vec<proto::RxqMove>, Refusal> {
        self.last_rebalance = Instant::now();
        let mut next = self.state.clone();
        if next.rebalance() == 0 {
            return Ok(Vec::new());
        }
        let moved = self.rxq_moves(&next);
        self.apply(next)?;
        let mut next = self.state.clone();
        next.unpark();
        self.apply(next)?;
        let said: Vec<String> = moved
            .iter()
            .map(|m| format!("{} queue {} to worker {} ({} frames/s)", m.endpoint, m.queue, m.worker, m.frames_per_s))
            .collect();
        crate::log(&format!("re-balanced RX queues over workers by load: moved {}", said.join(", ")));
        Ok(moved)
    }

    /// Frames RX queue `q` of port `p` received, on every worker.
    fn rxq_frames(&self, p: PortIndex, q: u16) -> u64 {
        if q as usize >= RXQ_SLOTS {
            return 0;
        }
        let i = p.ix() * RXQ_SLOTS + q as usize;
        self.workers.iter().map(|w| w.stats.rxq_frames.get(i).map_or(0, |c| c.load(Ordering::Relaxed))).sum()
    }

    /// Where the parked (just moved) queues of `st` go.
    fn rxq_moves(&self, st: &State) -> Vec<proto::RxqMove> {
        st.rxqs()
            .iter()
            .filter(|(_, _, r)| r.parked)
            .map(|(p, q, r)| proto::RxqMove {
                endpoint: match self.ports.get(p.ix()) {
                    Some(Some(port)) => port.name.clone(),
                    _ => "uplink".to_owned(),
                },
                queue: q,
                worker: r.worker,
                frames_per_s: r.load,
            })
            .collect()
    }

    /// Takes the ARP sightings the workers passed up; publishes a changed
    /// next-hop MAC. Called every tick, and as soon as sightings wait when
    /// the control plane polls faster (migration on), so a new peer's first
    /// frames do not wait a whole tick in the hold queue.
    fn take_neighbour_events(&mut self) {
        let now = Instant::now();
        if self.mailboxes.iter().any(|mb| !mb.events.is_empty()) {
            let mut next = self.state.clone();
            for mb in &self.mailboxes {
                while let Some(ev) = mb.events.pop() {
                    next.heard(ev.ip, ev.mac, now);
                }
            }
            self.commit(next);
        }
    }

    /// Commits `next`, publishing it if the workers' plan changes (a publish
    /// that fails stops the fabric: see [`Fatal::WorkerStuck`]).
    fn commit(&mut self, next: State) {
        if next.dirty().is_empty() {
            // Only timestamps moved: nothing for the workers.
            self.state = next;
        } else {
            let _ = self.apply(next);
        }
    }

    /// Follows vhost-user VMs: devices coming and going and the rings they
    /// enable (librte_vhost's callbacks queue the ports that changed). A
    /// change is published so workers poll only enabled rings, stop queueing
    /// to a VM that is gone and spread TX over the queues it uses.
    fn watch_vms(&mut self) {
        let changed = vhost::take_events();
        if changed.is_empty() {
            return;
        }
        let mut next = self.state.clone();
        let mut names = Vec::new();
        let mut arriving = Vec::new();
        let mut by_directory = Vec::new();
        for tag in changed {
            if let Some(Some(p)) = self.ports.get(tag as usize) {
                let link = p.dev.link();
                let starts = link.up && link.vrings != 0;
                if let Some(e) = by_directory.iter_mut().find(|(n, _, _)| *n == p.name) {
                    // Another event of the same arrival: its latest link.
                    e.1 = link;
                    continue;
                }
                let from_directory =
                    if starts && !self.incoming.contains_key(&p.name) { self.directory_arrival(&p.name) } else { None };
                if starts && self.incoming.contains_key(&p.name) {
                    // A VM that migrated here: its wire first, then its rings,
                    // so nothing it sends meets an endpoint without a wire.
                    arriving.push((p.name.clone(), link));
                } else if let Some(half) = from_directory {
                    // Likewise, the half the directory has for it.
                    by_directory.push((p.name.clone(), link, half));
                } else {
                    let was = vw_core::hold::accepting(&next, &p.name);
                    next.set_link(&p.name, link);
                    if let Some(l) = vw_core::hold::link_changed(&mut next, &p.name, was, Instant::now()) {
                        crate::log(&l);
                    }
                }
                names.push(p.name.clone());
            }
        }
        self.commit(next);
        for (name, link) in arriving {
            let Some(p) = self.incoming.remove(&name) else { continue };
            match self.connect(p.wire, &name, &p.peer, p.encap) {
                Ok(_) => crate::log(&format!("wire {}: {name}'s VM started here; connected to {}", p.wire, p.peer)),
                Err(r) => crate::log(&format!("wire {}: {name}'s VM started here, but: {}", p.wire, r.message)),
            }
            // The wire uses the next hop itself now.
            self.arm_neighbour(&p.peer, false);
            // No longer armed, in the state file either.
            let st = self.state.clone();
            if let Err(r) = self.record(&st, &[Touched::Incoming(name.clone())]) {
                crate::log(&format!("wire {}: {}", p.wire, r.message));
            }
            let mut next = self.state.clone();
            next.set_link(&name, link);
            self.commit(next);
        }
        for (name, link, (id, peer, encap)) in by_directory {
            // (Unless the VM stopped again in the same batch of events.)
            if link.up && link.vrings != 0 {
                self.directory_arrived(&name, id, &peer, encap);
            }
            let mut next = self.state.clone();
            next.set_link(&name, link);
            self.commit(next);
        }
        // The directory says where each VM runs: one that arrived by live
        // migration takes its name over, one that left gives it up.
        for name in &names {
            let running = self.state.endpoint(name).is_some_and(|e| e.link.up && e.link.vrings != 0);
            self.directory_vm(name, running);
        }
        // A VM that came says its MTU (host_mtu): does it fit its wire?
        for name in names {
            self.report_mtu(&name);
        }
    }

    /// Logs, once per wire and mismatch, an MTU of `endpoint` that does not
    /// fit its wire (also in `vwctl status` and `wire list`).
    fn report_mtu(&mut self, endpoint: &str) {
        let Some(id) = self.state.table().wire_of(endpoint).map(|w| w.id) else { return };
        match self.wire_mtu(id).1 {
            Some(m) if self.mtu_logged.get(&id) != Some(&m) => {
                crate::log(&format!("warning: wire {}: {m}", id.0));
                self.mtu_logged.insert(id, m);
            }
            Some(_) => {}
            None => {
                self.mtu_logged.remove(&id);
            }
        }
    }

    fn send_arp_requests(&mut self) {
        let Some(u) = self.uplink.clone() else { return };
        for ip in self.state.due_probes(Instant::now()) {
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

    /// Tells the peer VTEP where our end of wire `id` is (LOCATE, sent
    /// until it is acknowledged).
    fn announce_location(&mut self, id: ConnectorId, end: &str, peer: Ipv4Addr, encap: Encap, when_ns: u64) {
        let Some(msg) = exchange::locate_message(&self.state, id, end, encap, when_ns) else { return };
        let Some(ch) = &mut self.mig else { return };
        ch.pending.retain(|p| p.msg.wire != id);
        let now = Instant::now();
        ch.pending.push(Pending { msg, to: peer, tries: 0, next: now, first: now });
        self.retransmit();
    }

    /// Sends LOCATEs that are due.
    fn retransmit(&mut self) {
        let now = Instant::now();
        // A LOCATE waits, without using up a try, until its next hop's MAC
        // is known (ARP for a new peer is in progress).
        let resolved: HashSet<Ipv4Addr> = self.mig.as_ref().map_or_else(HashSet::new, |ch| {
            ch.pending.iter().map(|p| p.to).filter(|to| self.state.next_hop_mac(*to).is_some()).collect()
        });
        let Some(ch) = &mut self.mig else { return };
        let mut due = Vec::new();
        let mut first = Vec::new();
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
            if p.tries == 1 {
                first.push((p.msg.wire, p.msg.end.clone(), p.first));
            }
            due.push(Outgoing { msg: p.msg.clone(), to: p.to, mac: None });
            true
        });
        for o in due {
            self.send_message(o);
        }
        // What the arrived end sends goes on behind its LOCATE.
        if !first.is_empty() {
            let mut next = self.state.clone();
            for (id, end, since) in first {
                if vw_core::hold::located(&mut next, &end, now) {
                    crate::log(&format!(
                        "wire {id}: location sent {} us after the connect; {end}'s frames go on behind it",
                        now.saturating_duration_since(since).as_micros()
                    ));
                }
            }
            self.commit(next);
        }
    }

    /// Sends a control message.
    fn send_message(&mut self, o: Outgoing) {
        let Some(u) = self.uplink.clone() else { return };
        let Outgoing { mut msg, to, mac } = o;
        let mac = mac.or_else(|| self.state.next_hop_mac(to));
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
        let outcome = match msg.kind {
            kind::LOCATE => exchange::on_locate(&self.state, &msg, t0),
            kind::ACK => {
                // Only an ACK of a LOCATE we are sending counts.
                let acked = |p: &Pending| p.msg.wire == msg.wire && p.to == msg.from && p.msg.when_ns == msg.when_ns;
                match ch.pending.iter().position(acked) {
                    None => Err(Refused::Unexpected),
                    Some(i) => {
                        let p = ch.pending.remove(i);
                        ch.pending.retain(|p| !acked(p));
                        // From the connect's LOCATE to the peer's ACK: what
                        // the arrived end's first frames waited for.
                        crate::log(&format!(
                            "wire {}: {} acknowledged the new location in {} us",
                            msg.wire,
                            msg.from,
                            t0.saturating_duration_since(p.first).as_micros()
                        ));
                        Ok(exchange::on_ack(&self.state, &msg, t0))
                    }
                }
            }
            kind::MOVED => exchange::on_moved(&self.state, &msg, t0),
            kind::FLUSHED => exchange::on_flushed(&self.state, &msg, t0),
            _ => Err(Refused::Malformed),
        };
        let result = outcome.and_then(|o| self.take_outcome(msg.wire, o, t0).map_err(|_| Refused::Unresolved));
        if result.is_ok() && msg.kind == kind::MOVED {
            self.directory_left(msg.wire, &msg.end);
        }
        let Some(ch) = &mut self.mig else { return };
        match result {
            Ok(()) => ch.accepted += 1,
            Err(reason) => {
                ch.refuse(reason);
                crate::log(&format!("refused {} for wire {} from {}: {reason}", msg.kind_name(), msg.wire, msg.from));
            }
        }
    }

    /// Applies what the exchange decided about wire `id`, records how long
    /// it took, and sends its messages.
    fn take_outcome(&mut self, id: ConnectorId, o: Outcome, t0: Instant) -> Result<(), Refusal> {
        let Outcome { next, send, save, cancel_locates, log } = o;
        if cancel_locates {
            if let Some(ch) = &mut self.mig {
                ch.pending.retain(|p| p.msg.wire != id);
            }
        }
        let touched = [Touched::Wire(id)];
        if next.dirty().is_empty() {
            self.state = next;
        } else {
            self.apply_with(next, if save { &touched } else { &[] }, None)?;
            if log.is_some() {
                let us = t0.elapsed().as_micros() as u64;
                let mut next = self.state.clone();
                next.set_move_time(id, us);
                self.state = next;
            }
        }
        for m in send {
            self.send_message(m);
        }
        if let Some(l) = log {
            crate::log(&l);
        }
        Ok(())
    }

    /// Ends grace periods that are over.
    fn expire_moves(&mut self) {
        let Some((next, gone)) = exchange::expire(&self.state, Instant::now()) else { return };
        let mut forwarded = 0;
        for (id, d, slot) in &gone {
            if let Peer::Remote { .. } = d.peer {
                forwarded += self.wire_totals(*slot).since(&self.wire_bases[*slot as usize]).forwarded;
            }
            crate::log(&format!("wire {id}: grace period of the end that left ({}) is over", d.endpoint));
        }
        if self.apply(next).is_ok() {
            if let Some(ch) = &mut self.mig {
                ch.forwarded_before += forwarded;
            }
        }
    }

    /// `connect W ARRIVING RESIDENT` where W is an encap wire from RESIDENT:
    /// the remote end arrived here, and W becomes a loopback wire.
    fn colocate(&mut self, id: ConnectorId, arriving: &str, save: bool) -> Result<proto::WireInfo, Refusal> {
        let t0 = Instant::now();
        let o =
            exchange::colocate(&self.state, id, arriving, t0, now_ns(), self.mig.is_some()).map_err(|e| match e {
                ArrivalError::NotEncap(id) => {
                    Refusal::new(ErrorCode::InvalidArgument, format!("wire {id} is not an encap wire"))
                }
                ArrivalError::Secure(id) => Refusal::new(
                    ErrorCode::InvalidArgument,
                    format!("wire {id} is a secure wire: its ends do not move between hosts yet"),
                ),
                ArrivalError::Table(e) => Refusal::from(e),
            })?;
        let o = Outcome { save, ..o };
        self.take_outcome(id, o, t0)?;
        Ok(self.wire_info(id))
    }
}

fn encap_name(e: Encap) -> EncapName {
    match e {
        Encap::Vxlan => EncapName::Vxlan,
        Encap::Secure => EncapName::Secure,
        Encap::SecureVxlan => EncapName::SecureVxlan,
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
