//! `vwfabric`: the VirtualWire fabric process, one per host.
//!
//! The EAL main lcore runs the control plane (`control.rs`) and the control
//! socket; every other lcore runs a data-path worker (`worker.rs`). See
//! `docs/architecture.md`.
#![forbid(unsafe_code)]

mod claim;
mod control;
mod devargs;
mod journal;
mod persist;
mod secure;
mod snapshot;
mod sockdir;
mod stats;
mod worker;

use clap::Parser;
use control::{Control, Settings, Uplink, WorkerHandle};
use snapshot::Mailbox;
use stats::WorkerStats;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vw_ctl::server::{Server, ServerConfig};
use vw_pmd::{port, Eal, Mempool, PortConfig};
use vw_wire::MacAddr;

/// Writes a control-plane message to stderr. Never called per packet.
pub(crate) fn log(msg: &str) {
    eprintln!("vwfabric: {msg}");
}

/// A VTEP address with its subnet prefix length.
#[derive(Debug, Clone, Copy)]
struct Vtep {
    addr: Ipv4Addr,
    prefix: u8,
}

impl std::str::FromStr for Vtep {
    type Err = String;
    fn from_str(s: &str) -> Result<Vtep, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.1/24"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| (1..=32).contains(p)).ok_or_else(|| format!("prefix {p:?} is not 1-32"))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
            return Err(format!("{addr} cannot be a VTEP address"));
        }
        Ok(Vtep { addr, prefix })
    }
}

/// `--neighbour IP=MAC`.
#[derive(Debug, Clone, Copy)]
struct StaticNeighbour(Ipv4Addr, MacAddr);

impl std::str::FromStr for StaticNeighbour {
    type Err = String;
    fn from_str(s: &str) -> Result<StaticNeighbour, String> {
        let (ip, mac) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected IP=MAC"))?;
        Ok(StaticNeighbour(
            ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?,
            mac.parse().map_err(|_| format!("{mac:?} is not a MAC address"))?,
        ))
    }
}

const AFTER_HELP: &str = "EAL arguments go after `--`, as for any DPDK program. The main lcore runs the
control plane; every other lcore runs a data-path worker (worker i polls queue i
of every port). Each fabric on a machine needs its own --file-prefix.

Examples:
  # a host with a NIC uplink, workers on lcores 1-2
  vwfabric --uplink 0000:03:00.0 --vtep 10.0.0.1/24 -- -l 0-2 --file-prefix vw
  # a test host with a net_tap uplink, no hugepages, sharing cores with others
  vwfabric --socket /run/vw-h1.sock --uplink net_tap0,iface=up1 --vtep 10.0.0.1/24 \\
      --idle-sleep-us 50 -- -l 0-1 --no-huge -m 256 --file-prefix h1
Then drive it with vwctl (vwctl --help).";

/// The VirtualWire fabric: point-to-point layer-2 wires between endpoints,
/// on this host (loopback) or across an IPv4 underlay (encap).
#[derive(Parser, Debug)]
#[command(name = "vwfabric", version, after_help = AFTER_HELP)]
struct Args {
    /// Control socket path (vwctl --socket).
    #[arg(long, default_value = vw_ctl::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Group that owns the control socket (a name or a number). The socket
    /// is mode 0660: its owner and this group may drive the fabric.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Directory of the vhost-user sockets of endpoints added by name
    /// (`vwctl endpoint add vm1 --vhost-user` makes vm1.sock here), the only
    /// vhost-user endpoints members of the socket group may add. Created
    /// (mode 0750, group --socket-group) at the first such endpoint; refused
    /// if anyone but this fabric's user may write to it.
    #[arg(long, value_name = "DIR", default_value = "/run/vwire/vhost")]
    vhost_dir: PathBuf,
    /// DPDK devices members of the socket group may add (root may add any):
    /// `DRIVER[,KEY=VALUE]...`, `*` and `?` as wildcards in the driver and
    /// the values; device arguments match if their driver matches and every
    /// argument they give is named with a matching value, e.g.
    /// `--allow-device 'net_tap*,iface=vm*'`. Repeatable. Default: none.
    #[arg(long, value_name = "PATTERN")]
    allow_device: Vec<vw_core::policy::DevicePattern>,
    /// Underlay device, as DPDK devargs: a PCI address or e.g. `net_tap0,iface=up0`.
    #[arg(long, value_name = "DEVARGS", requires = "vtep")]
    uplink: Option<String>,
    /// This host's tunnel endpoint address on the underlay, with prefix length.
    #[arg(long, value_name = "ADDR/PREFIX", requires = "uplink")]
    vtep: Option<Vtep>,
    /// Router for peer VTEPs outside the VTEP subnet.
    #[arg(long, value_name = "ADDR", requires = "uplink")]
    gateway: Option<Ipv4Addr>,
    /// The address other sites reach this host at when it is behind a 1:1
    /// NAT (a cloud VM's public address, not on its interface). Advertised
    /// in the directory instead of the VTEP and shown by `vwctl status`;
    /// far ends connect their wires to it.
    #[arg(long, value_name = "ADDR", requires = "uplink")]
    public_address: Option<Ipv4Addr>,
    /// Seconds between NAT keepalives (RFC 3948 §2.3) to the far end of a
    /// secure wire that sent nothing in that time, so that a NAT on the way
    /// keeps its mapping while the wire is idle. 0: none.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    nat_keepalive: u64,
    /// Underlay MTU (default: the uplink's current MTU). Set on the uplink.
    /// A frame of this MTU must fit one mbuf: MTU + 14 + 128 of headroom
    /// at most --mbuf-size (2176 by default: MTU 2034 at most).
    #[arg(long, value_name = "BYTES")]
    underlay_mtu: Option<u16>,
    /// UDP destination port of the vwire format (both ends must agree).
    #[arg(long, default_value_t = vw_wire::vwire::DEFAULT_PORT)]
    vwire_port: u16,
    /// UDP destination port of the vxlan format.
    #[arg(long, default_value_t = vw_wire::vxlan::PORT)]
    vxlan_port: u16,
    /// When a worker finds nothing to do for a while, sleep this long
    /// between polls (lets several fabrics share cores). 0: busy polling.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    idle_sleep_us: u64,
    /// With several workers, re-balance RX queues over them by the frames
    /// each queue received, this often: a queue moves only if that lowers
    /// the busiest worker's load by at least 25%. 0: never (new queues
    /// still go to the least loaded worker).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    rxq_rebalance_interval: u64,
    /// Mbufs in the packet pool (every RX descriptor of every port holds one).
    #[arg(long, default_value_t = 16384)]
    mbufs: u32,
    /// Mbuf data room in bytes, headroom included.
    #[arg(long, default_value_t = 2176)]
    mbuf_size: u16,
    /// RX descriptors per queue.
    #[arg(long, default_value_t = 512)]
    rx_desc: u16,
    /// TX descriptors per queue.
    #[arg(long, default_value_t = 512)]
    tx_desc: u16,
    /// Most wires at once (sizes the per-worker wire counters).
    #[arg(long, default_value_t = 4096)]
    max_wires: usize,
    /// Keep endpoints and wires in this file and restore them at start:
    /// every change is one synced line in FILE.journal, folded into FILE
    /// now and then and at a clean stop.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// A static underlay neighbour (never probed), e.g. a gateway that does
    /// not answer ARP. Repeatable.
    #[arg(long, value_name = "IP=MAC")]
    neighbour: Vec<StaticNeighbour>,
    /// Benchmarking aid: the forward direction of every loopback wire (first
    /// endpoint to second) is encapsulated onto the uplink and decapsulated
    /// when it comes back. Needs an uplink that returns what it sends (e.g.
    /// `net_ring0`). The reverse direction stays loopback. FORMAT is vwire
    /// (the default), vxlan, secure or secure-vxlan: a secure format seals
    /// and opens with a loop SA of a random key that only this process
    /// holds.
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "vwire")]
    force_encap: Option<vw_wire::Encap>,
    /// Take part in live migration: a file holding the key (hex, e.g.
    /// `openssl rand -hex 32`) that authenticates location updates between
    /// fabrics. Every fabric that moves endpoints needs the same key. Without
    /// it, wires never follow their endpoints. See docs/migration.md.
    #[arg(long, value_name = "FILE", requires = "uplink")]
    migration_key_file: Option<PathBuf>,
    /// UDP port of the migration channel (location updates, forwarded frames).
    #[arg(long, default_value_t = vw_wire::migration::DEFAULT_PORT)]
    migration_port: u16,
    /// After a move, how long the host an end left passes on frames still
    /// arriving for it, and how long the peer still accepts frames from the
    /// end's old host.
    #[arg(long, default_value_t = 2000, value_name = "MILLISECONDS")]
    migration_grace_ms: u64,
    /// How long frames for a VM whose device stopped (QEMU's last phase of a
    /// live migration) are held, waiting for the VM to resume here or on its
    /// new host, where they are then delivered in order. The hold queue of a
    /// wire is sized for this time at the wire's recent rate; frames beyond
    /// it count as `hold_overflow`, frames still held at the end as
    /// `hold_expired`. 0 turns holding off (such frames are `endpoint_down`).
    #[arg(long, default_value_t = 1000, value_name = "MILLISECONDS")]
    migration_hold_ms: u64,
    /// The endpoint directory: etcd v3 client URLs, comma-separated
    /// (`http://10.0.0.9:2379`, or `https://...` with the --directory-ca/
    /// -cert/-key files). This host advertises its VTEP and endpoints there,
    /// `vwctl connect [WIRE] A B` then joins any two endpoints of the domain
    /// from any host, and each end's fabric sets up its half by itself.
    /// Without it, wires are connected per host by VTEP address (the
    /// embedded directory: this fabric's own endpoints only). See
    /// docs/directory.md.
    #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "uplink")]
    directory: Vec<String>,
    /// The directory domain this fabric belongs to: the fabrics that can
    /// wire each other's endpoints (keys under /virtualwire/DOMAIN/).
    #[arg(long, default_value = "default", value_name = "NAME")]
    directory_domain: String,
    /// This host's name in the directory (default: the kernel's host name).
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// This host's site, advertised with its VTEP.
    #[arg(long, default_value = "", value_name = "NAME")]
    site: String,
    /// Seconds this host's directory lease lives without a keep-alive: how
    /// long after this fabric dies its endpoints show as `host down`.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    directory_lease_s: i64,
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    #[arg(long, value_name = "FILE", requires_all = ["directory_cert", "directory_key"])]
    directory_ca: Option<PathBuf>,
    /// This host's client certificate (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires = "directory_ca")]
    directory_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); must not be readable by
    /// every user.
    #[arg(long, value_name = "FILE", requires = "directory_ca")]
    directory_key: Option<PathBuf>,
    /// EAL arguments (after `--`).
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal: Vec<String>,
}

/// The directory's settings from the command line.
fn directory_config(args: &Args) -> Result<Option<vw_directory::etcd::Config>, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(vtep) = args.vtep else { return Ok(None) };
    if args.directory.is_empty() {
        return Ok(None);
    }
    let bad = |m: String| StartError::Config(format!("--directory: {m}"));
    for u in &args.directory {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(bad(format!("{u} is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)")));
        }
    }
    let keys = vw_directory::Keys::new(&args.directory_domain).map_err(bad)?;
    let host = match &args.host_name {
        Some(h) => h.clone(),
        None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    vw_wire::table::validate_endpoint_name(&host).map_err(|e| bad(format!("host name {host:?}: {e}")))?;
    if !(1..=3600).contains(&args.directory_lease_s) {
        return Err(bad("--directory-lease-s must be 1 to 3600".into()));
    }
    let read = |p: &PathBuf, secret: bool| -> Result<Vec<u8>, StartError> {
        let what = |m: String| StartError::Config(format!("{}: {m}", p.display()));
        let meta = std::fs::metadata(p).map_err(|e| what(e.to_string()))?;
        if secret && meta.permissions().mode() & 0o004 != 0 {
            return Err(what("is readable by every user; chmod 600 or 640 it".into()));
        }
        std::fs::read(p).map_err(|e| what(e.to_string()))
    };
    let tls = match (&args.directory_ca, &args.directory_cert, &args.directory_key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(vw_directory::etcd::Tls { ca: read(ca, false)?, cert: read(cert, false)?, key: read(key, true)? })
        }
        _ => None,
    };
    let https = args.directory.iter().all(|u| u.starts_with("https://"));
    if tls.is_some() != https {
        return Err(bad("use https:// URLs with --directory-ca/-cert/-key, http:// without them".into()));
    }
    let formats = vec![vw_directory::model::Format::Vwire, vw_directory::model::Format::Vxlan];
    Ok(Some(vw_directory::etcd::Config {
        endpoints: args.directory.clone(),
        keys,
        host,
        record: vw_directory::HostRecord {
            vtep: std::net::IpAddr::V4(args.public_address.unwrap_or(vtep.addr)),
            formats,
            site: args.site.clone(),
            migration: args.migration_key_file.is_some(),
        },
        lease_ttl_s: args.directory_lease_s,
        timeout: Duration::from_secs(2),
        tls,
        user: None,
    }))
}

/// Why the fabric could not run.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("EAL initialisation failed: {0}\n  hint: is another DPDK process using the same --file-prefix? Each fabric on a machine needs its own.\n  Without hugepages add `--no-huge -m 512`.")]
    Eal(vw_pmd::Error),
    #[error("vwfabric needs at least two lcores: the main lcore runs the control plane and each other lcore a worker (e.g. `-- -l 0-1`)")]
    NoWorkers,
    #[error(
        "creating the mbuf pool ({0} mbufs of {1} bytes): {2}\n  hint: lower --mbufs or give the EAL more memory (-m)"
    )]
    Pool(u32, u16, vw_pmd::Error),
    #[error("uplink {0}: {1}")]
    Uplink(String, vw_pmd::Error),
    #[error("{0}")]
    Config(String),
    #[error("launching worker on lcore {0}: {1}")]
    Launch(u32, vw_pmd::Error),
    #[error("{0}")]
    Socket(#[from] vw_ctl::server::ServerError),
    #[error("{0}")]
    Fatal(#[from] control::Fatal),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Installed first, so a signal during start-up leads to a clean stop.
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)) {
        log(&format!("error: cannot install the SIGINT/SIGTERM handler: {e}"));
        return ExitCode::FAILURE;
    }
    match run(args, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Reads a migration key file: hex digits, not readable by others.
fn read_key(path: &std::path::Path) -> Result<vw_wire::migration::Key, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |m: String| StartError::Config(format!("migration key file {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(bad("is readable by every user; chmod 600 or 640 it".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    vw_wire::migration::Key::from_hex(&text).map_err(bad)
}

/// Underlay frames are received into one mbuf each (no scatter): a frame of
/// the MTU must fit, headroom included, or the device would refuse the
/// largest frames as RX errors and UDP checksums could not be verified in
/// one pass.
fn check_mtu_fits(mtu: u16, mbuf_size: u16) -> Result<(), String> {
    let needed = u32::from(mtu) + 14 + u32::from(port::mbuf_headroom());
    if needed > u32::from(mbuf_size) {
        return Err(format!(
            "an underlay MTU of {mtu} needs mbufs of at least {needed} bytes (MTU + 14 of Ethernet header + \
             {} of headroom); --mbuf-size is {mbuf_size}\n  hint: raise --mbuf-size to {needed} or more, or \
             lower --underlay-mtu",
            port::mbuf_headroom()
        ));
    }
    Ok(())
}

fn setup_uplink(args: &Args, pool: Mempool, queues: u16) -> Result<Option<Uplink>, StartError> {
    let (Some(devargs), Some(vtep)) = (&args.uplink, args.vtep) else { return Ok(None) };
    let err = |e| StartError::Uplink(devargs.clone(), e);
    if let Some(gw) = args.gateway {
        let mask = u32::MAX << (32 - vtep.prefix as u32);
        if u32::from(gw) & mask != u32::from(vtep.addr) & mask {
            return Err(StartError::Config(format!(
                "gateway {gw} is not on the VTEP subnet {}/{}",
                Ipv4Addr::from(u32::from(vtep.addr) & mask),
                vtep.prefix
            )));
        }
    }
    let ports = port::probe(devargs).map_err(err)?.ports;
    if ports.len() != 1 {
        return Err(StartError::Config(format!("uplink {devargs:?} has {} ports; name exactly one", ports.len())));
    }
    let p = ports[0];
    port::configure_and_start(
        p,
        &PortConfig {
            rx_queues: queues,
            tx_queues: queues,
            rx_desc: args.rx_desc,
            tx_desc: args.tx_desc,
            pool,
            mtu: None,
            promiscuous: false,
            rx_l4_checksum: true,
        },
    )
    .map_err(err)?;
    let mtu = match args.underlay_mtu {
        None => port::mtu(p).map_err(err)?,
        Some(m) => match port::set_mtu(p, m) {
            Ok(()) => m,
            // Virtual devices (net_ring, net_null) have no MTU to set; the
            // underlay MTU is then a property of the network, taken as given.
            Err(e) if e.errno() == Some(libc_enotsup()) => {
                log(&format!("uplink {devargs} cannot change its MTU; using --underlay-mtu {m} as given"));
                m
            }
            Err(e) => return Err(err(e)),
        },
    };
    check_mtu_fits(mtu, args.mbuf_size).map_err(|m| StartError::Config(format!("uplink {devargs}: {m}")))?;
    let mac = MacAddr(port::mac_addr(p).map_err(err)?);
    Ok(Some(Uplink {
        devargs: devargs.clone(),
        port: p,
        net: vw_core::UplinkConfig {
            mac,
            vtep: vtep.addr,
            prefix: vtep.prefix,
            gateway: args.gateway,
            mtu,
            vwire_port: args.vwire_port,
            vxlan_port: args.vxlan_port,
        },
    }))
}

/// ENOTSUP on Linux.
const fn libc_enotsup() -> i32 {
    95
}

fn run(args: Args, stop: Arc<AtomicBool>) -> Result<(), StartError> {
    if args.vwire_port == args.vxlan_port {
        return Err(StartError::Config("--vwire-port and --vxlan-port must differ".into()));
    }
    if [args.vwire_port, args.vxlan_port].contains(&vw_wire::encap::secure::PORT) {
        return Err(StartError::Config(format!(
            "UDP port {} carries ESP in UDP (secure wires, RFC 3948); --vwire-port and --vxlan-port must be other ports",
            vw_wire::encap::secure::PORT
        )));
    }
    if args.nat_keepalive > 3600 {
        return Err(StartError::Config("--nat-keepalive must be 0 (none) to 3600 seconds".into()));
    }
    if let (Some(p), Some(v)) = (args.public_address, args.vtep) {
        if vw_wire::table::validate_vtep(p).is_err() || p == v.addr {
            return Err(StartError::Config(format!(
                "--public-address {p} must be a unicast address other than the VTEP {} (omit it without NAT)",
                v.addr
            )));
        }
    }
    if args.max_wires == 0 {
        return Err(StartError::Config("--max-wires must be at least 1".into()));
    }
    if let Some(mtu) = args.underlay_mtu {
        check_mtu_fits(mtu, args.mbuf_size).map_err(StartError::Config)?;
    }
    // Claims first, before DPDK or any device: a second fabric on the same
    // socket or the same file prefix stops here with a clear message.
    let socket_group = match &args.socket_group {
        None => None,
        Some(g) => Some(claim::resolve_group(g).map_err(StartError::Config)?),
    };
    let _socket_lock = claim::lock_socket(&args.socket).map_err(StartError::Config)?;
    vw_ctl::server::check_path(&args.socket)?;
    let prefix = claim::file_prefix(&args.eal);
    let xdg = std::env::var("XDG_RUNTIME_DIR").ok();
    let runtime = claim::runtime_dir(&prefix, claim::is_root(), xdg.as_deref());
    let _prefix_lock = match claim::lock_prefix(&runtime, &args.socket) {
        Ok(l) => Some(l),
        Err(claim::LockError::Held { pid, socket }) => {
            return Err(StartError::Config(claim::prefix_in_use(&prefix, &pid, &socket)))
        }
        // Without shared config the EAL itself needs no runtime directory
        // and only warns when it cannot make one; so do we.
        Err(claim::LockError::Io(m)) if args.eal.iter().any(|a| a == "--in-memory" || a == "--no-shconf") => {
            log(&format!("warning: {m}; cannot tell whether another fabric uses --file-prefix {prefix}"));
            None
        }
        Err(claim::LockError::Io(m)) => return Err(StartError::Config(m)),
    };
    let files = vw_pmd::eal::raise_fd_limit();
    if files < 8192 {
        log(&format!(
            "warning: at most {files} open files (ulimit -n); each vhost-user VM takes about 6, \
             so raise it for hundreds of VMs"
        ));
    }
    let mut eal_args = vec!["vwfabric".to_owned()];
    eal_args.extend(args.eal.iter().cloned());
    let eal = Eal::init(&eal_args).map_err(StartError::Eal)?;
    let lcores = eal.worker_lcores().to_vec();
    if lcores.is_empty() {
        return Err(StartError::NoWorkers);
    }
    let pool = Mempool::create("vw_mbufs", args.mbufs, 256, args.mbuf_size, vw_pmd::eal::socket_id())
        .map_err(|e| StartError::Pool(args.mbufs, args.mbuf_size, e))?;
    let uplink = setup_uplink(&args, pool, lcores.len() as u16)?;

    // `stop` is set by SIGINT/SIGTERM and ends the control loop; the workers
    // have their own flag, set only once the control plane has stopped
    // watching them.
    let workers_stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<WorkerHandle> = lcores
        .iter()
        .enumerate()
        .map(|(index, &lcore)| WorkerHandle {
            index,
            lcore,
            mailbox: Arc::new(Mailbox::new()),
            stats: Arc::new(WorkerStats::new(args.max_wires, control::max_ports())),
        })
        .collect();
    let settings = Settings {
        socket: args.socket.display().to_string(),
        rx_desc: args.rx_desc,
        tx_desc: args.tx_desc,
        max_wires: args.max_wires,
        idle_sleep_us: args.idle_sleep_us,
        vhost_dir: args.vhost_dir.clone(),
        socket_group,
        allow_devices: args.allow_device.clone(),
        rebalance: (args.rxq_rebalance_interval > 0).then(|| Duration::from_secs(args.rxq_rebalance_interval)),
        state_file: args.state.clone(),
        static_neighbours: args.neighbour.iter().map(|n| (n.0, n.1)).collect(),
        force_encap: args.force_encap,
        migration: match &args.migration_key_file {
            None => None,
            Some(path) => Some(control::MigrationSettings {
                key: read_key(path)?,
                port: args.migration_port,
                grace: Duration::from_millis(args.migration_grace_ms),
                hold: Duration::from_millis(args.migration_hold_ms),
            }),
        },
        directory: directory_config(&args)?,
        public_address: args.public_address,
        nat_keepalive: (args.nat_keepalive > 0).then(|| Duration::from_secs(args.nat_keepalive)),
    };
    if let Some(m) = &settings.migration {
        let ports = [args.vwire_port, args.vxlan_port];
        if m.port == 0 || ports.contains(&m.port) || m.port == vw_wire::encap::secure::PORT {
            return Err(StartError::Config(format!(
                "--migration-port {} must be non-zero and differ from the vwire and vxlan ports and from 4500 (ESP in UDP)",
                m.port
            )));
        }
    }
    if args.force_encap.is_some() && uplink.is_none() {
        return Err(StartError::Config("--force-encap needs an --uplink (one that returns what it sends)".into()));
    }
    // librte_vhost calls this when a VM's device goes away, on its own
    // thread, so that no worker still uses the device when it is freed.
    let mailboxes: Vec<Arc<Mailbox>> = workers.iter().map(|w| w.mailbox.clone()).collect();
    vw_pmd::vhost::set_quiesce(move || {
        if !snapshot::quiesce(&mailboxes, Duration::from_secs(2)) {
            log("a worker did not pass a quiescent point within 2 s while a vhost-user device went away");
        }
    });
    let mut control = Control::new(settings, pool, workers, uplink.clone());
    let idle_sleep = (args.idle_sleep_us > 0).then(|| Duration::from_micros(args.idle_sleep_us));
    let mut launched = Vec::new();
    let mut result = Ok(());
    for w in control.workers() {
        let ctx = worker::WorkerContext {
            index: w.index,
            mailbox: w.mailbox.clone(),
            stats: w.stats.clone(),
            stop: workers_stop.clone(),
            idle_sleep,
            initial: control.current(),
            pool,
        };
        match eal.launch(w.lcore, move || worker::run(ctx)) {
            Ok(()) => launched.push(w.lcore),
            Err(e) => {
                result = Err(StartError::Launch(w.lcore, e));
                break;
            }
        }
    }
    if result.is_ok() {
        let t = Instant::now();
        while !control.workers().iter().all(|w| w.mailbox.is_alive()) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        result = serve(&args, socket_group, &mut control, &stop);
    }

    // Stop the workers; a worker that does not stop within 2 s is stuck and
    // cannot be waited for: exit without touching DPDK state it may use.
    workers_stop.store(true, Ordering::SeqCst);
    let t = Instant::now();
    while control.workers().iter().any(|w| w.mailbox.is_alive()) {
        if t.elapsed() > Duration::from_secs(2) {
            if let Err(e) = &result {
                log(&format!("error: {e}"));
            }
            log("a worker did not stop; exiting without cleanup");
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for lcore in launched {
        let rc = eal.wait(lcore);
        if rc != 0 {
            log(&format!("worker on lcore {lcore} exited with {rc}"));
        }
    }
    control.release_ports();
    // Mailboxes (and any mbuf in them) must be freed before the EAL unmaps memory.
    drop(control);
    if let Err(e) = eal.cleanup() {
        log(&format!("EAL cleanup: {e}"));
    }
    log("stopped");
    result
}

fn serve(args: &Args, group: Option<u32>, control: &mut Control, stop: &Arc<AtomicBool>) -> Result<(), StartError> {
    let (jobs_tx, jobs_rx) = crossbeam::channel::unbounded();
    // Claim the socket first: a second fabric on the same path stops here,
    // before it touches a device. Requests wait until the restore is done.
    let mut cfg = ServerConfig::new(&args.socket);
    cfg.group = group;
    let server = Server::start(cfg, jobs_tx)?;
    control.announce();
    control.start_directory().map_err(StartError::Config)?;
    let t = Instant::now();
    match control.restore() {
        Ok(0) => {}
        Ok(n) => log(&format!(
            "restored {n} endpoints and wires from {} in {} ms",
            args.state.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            t.elapsed().as_millis()
        )),
        Err(e) => return Err(StartError::Config(e)),
    }
    // Only now: underlay frames for restored wires waited in the uplink's
    // RX ring rather than meeting an empty wire table.
    control.poll_uplink()?;
    let lcores: Vec<String> = control.workers().iter().map(|w| w.lcore.to_string()).collect();
    match &args.uplink {
        Some(u) => log(&format!(
            "ready: {} worker(s) on lcore(s) {}, uplink {u}, VTEP {}, control socket {}",
            lcores.len(),
            lcores.join(","),
            args.vtep.map(|v| format!("{}/{}", v.addr, v.prefix)).unwrap_or_default(),
            server.path().display()
        )),
        None => log(&format!(
            "ready: {} worker(s) on lcore(s) {}, no uplink (loopback wires only), control socket {}",
            lcores.len(),
            lcores.join(","),
            server.path().display()
        )),
    }
    let r = control.run(&jobs_rx, stop);
    drop(server);
    r.map_err(StartError::from)
}
