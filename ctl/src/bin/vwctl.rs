//! `vwctl`: command-line client of a VirtualWire fabric.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::process::ExitCode;
use vw_ctl::proto::{EncapName, EndpointInfo, EndpointSpec, RxqMove, Stats, Status, WireInfo};
use vw_ctl::{Client, ClientError, Request};

/// `println!` that ends the program quietly when stdout is gone (`vwctl
/// stats | head`), as command-line tools do, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Control a VirtualWire fabric (vwfabric) through its control socket.
///
/// A wire is a point-to-point layer-2 cable between two endpoints. Connect
/// two local endpoints for a loopback wire, or an endpoint and a remote
/// fabric's VTEP address for an encap wire; run the same connect (same wire
/// id) on both hosts.
#[derive(Parser, Debug)]
#[command(name = "vwctl", version, after_help = EXAMPLES)]
struct Cli {
    /// Control socket of the fabric.
    #[arg(short, long, env = "VWCTL_SOCKET", default_value = vw_ctl::DEFAULT_SOCKET, global = true)]
    socket: String,
    /// Print the result as JSON (for scripts) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  vwctl endpoint add vm1 net_tap0,iface=vm1      # a net_tap device as endpoint vm1
  vwctl endpoint add vm2 --vhost-user /run/vm2.sock --queues 2   # a VM's virtio-net NIC
  vwctl endpoint add vm3 --vhost-user            # its socket: vm3.sock in the fabric's --vhost-dir
  vwctl connect 7 vm1 vm2                        # loopback wire 7 between vm1 and vm2
  vwctl connect 8 vm1 10.0.0.2 --encap vxlan     # encap wire 8 to the fabric at 10.0.0.2
  vwctl keygen w9.keys w9-peer.keys              # keys for a secure wire (copy w9-peer.keys to the peer)
  vwctl connect 9 vm1 10.0.0.2 --encap secure --key-file w9.keys   # (root) secure wire 9, ESP/AES-GCM
  vwctl rekey 9 --key-file w9-new.keys           # (root) new keys under traffic (run on both ends)
  vwctl connect 9 vm1 vm5                        # with --directory: vm5 may live on any host
  vwctl connect vm3 vm4                          # with --directory: a free wire id is allocated
  vwctl wire list
  vwctl stats --json | jq .drops";

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the fabric: uplink, VTEP, workers, neighbours, mbuf usage.
    Status,
    /// Add, remove or list endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Connect wire WIRE between ENDPOINT and PEER: `connect [WIRE] ENDPOINT PEER`.
    ///
    /// PEER is another local endpoint (loopback wire) or the IPv4 address of
    /// a remote fabric's VTEP (encap wire). WIRE is the 32-bit connector ID
    /// both ends of an encap wire use; vxlan wires need WIRE < 16777216.
    ///
    /// With a fabric started with --directory, ENDPOINT and PEER may be any
    /// two endpoints of the directory's domain, on any hosts: run the
    /// connect once, on any host, and each end's fabric sets up its half
    /// (loopback if they share a host, encap otherwise). Without WIRE the
    /// directory allocates a free connector ID and the reply names it.
    Connect {
        /// `[WIRE] ENDPOINT PEER`: wire id (0 to 4294967295; optional with
        /// --directory), the endpoint, and a local endpoint name, a remote
        /// VTEP IPv4 address or (with --directory) any endpoint's name.
        #[arg(num_args = 2..=3, required = true, value_names = ["WIRE", "ENDPOINT", "PEER"])]
        args: Vec<String>,
        /// Tunnel format of an encap wire. `secure` and `secure-vxlan` carry
        /// the vwire or VXLAN datagram in ESP in UDP (port 4500, AES-GCM,
        /// RFC 4303/3948/4106) and need --key-file.
        #[arg(long, value_enum)]
        encap: Option<EncapArg>,
        /// (root) A secure wire's keys: a file `vwctl keygen` wrote (mode
        /// 0600; see docs/security.md). vwctl reads it and sends the keys
        /// to the fabric; they are never shown or logged. A key is used
        /// for one connect only: the fabric refuses one it used before.
        #[arg(long, value_name = "FILE")]
        key_file: Option<std::path::PathBuf>,
        /// Connect when ENDPOINT's VM starts on this host (its vhost-user
        /// device comes up), not now: prepare the destination of a live
        /// migration with this, and the wire follows the VM at switch-over
        /// with no further command. `wire list` shows it as waiting.
        #[arg(long)]
        incoming: bool,
    },
    /// Write the keys of a secure wire: FILE for this end, PEER_FILE for
    /// the far end (copy it there over a channel you trust), mode 0600.
    ///
    /// Each file holds two SAs, `out` (sent with) and `in` (received with),
    /// swapped in the other file; keys come from the system's random
    /// generator. Use a pair for one connect: a new connect needs new keys
    /// (AES-GCM must never repeat a nonce under one key).
    Keygen {
        /// This end's key file (must not exist).
        file: std::path::PathBuf,
        /// The far end's key file (must not exist).
        peer_file: std::path::PathBuf,
        /// AES key length.
        #[arg(long, default_value_t = 128, value_parser = parse_bits)]
        bits: usize,
        /// SA lifetime in seconds (at least 10): after it, the wire rekeys
        /// itself to the next generation of its keys, which both ends
        /// derive (HKDF) from the current ones. Written into both files;
        /// without --lifetime or --lifetime-packets the keys live until
        /// `vwctl rekey`. A Linux far end cannot follow (keep it off).
        #[arg(long, value_name = "SECONDS")]
        lifetime: Option<u64>,
        /// SA lifetime in packets sent (at least 10000), alone or with
        /// --lifetime (whichever comes first).
        #[arg(long, value_name = "PACKETS")]
        lifetime_packets: Option<u64>,
    },
    /// (root) Give secure wire WIRE new keys, under traffic, losing no frame.
    ///
    /// Write a new pair with `vwctl keygen`, copy the peer's file to the
    /// far end, and run `rekey` there too, within --switch-in of this one.
    /// Each fabric installs its new inbound SA at once, beside the old one,
    /// and keeps sending with the old keys until a packet sealed with the
    /// far end's new keys arrives (so the far end has them), or until
    /// --switch-in has passed; the old inbound SA is kept until the far end
    /// sends with the new keys. `wire list` shows the rekey until it
    /// switched. A key is used once: a rekey needs a new pair.
    Rekey {
        /// Wire id.
        wire: u32,
        /// This end's new key file (`vwctl keygen` wrote it).
        #[arg(long, value_name = "FILE")]
        key_file: std::path::PathBuf,
        /// Send with the new keys after this many seconds at the latest,
        /// even if nothing came from the far end's new keys yet.
        #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
        switch_in: u64,
    },
    /// Disconnect wire WIRE (traffic on it stops; the endpoints stay).
    Disconnect {
        /// Wire id.
        wire: u32,
    },
    /// List wires.
    #[command(subcommand)]
    Wire(WireCmd),
    /// Counters: per port, per wire, per worker, drops by reason.
    Stats,
    /// Re-balance RX queues over the workers by their measured load now.
    ///
    /// The fabric measures every polled RX queue's frames per second every
    /// second; new queues go to the least loaded worker, and every
    /// --rxq-rebalance-interval (vwfabric, default 10 s) all queues are
    /// reassigned, largest first, if that lowers the busiest worker's load
    /// by at least 25%. This does it now and prints what moved (`endpoint
    /// list` shows where each queue is).
    RxqRebalance,
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Hot-plug a device and make it endpoint NAME: DPDK devargs, or a
    /// vhost-user port for a VM (--vhost-user).
    #[command(group(clap::ArgGroup::new("device").required(true).args(["devargs", "vhost_user"])))]
    Add {
        /// Endpoint name (1-32 of A-Z a-z 0-9 _ . -, not starting with .).
        name: String,
        /// DPDK device arguments, e.g. `net_tap0,iface=vm1` or a PCI address.
        devargs: Option<String>,
        /// A vhost-user port for a VM. Without PATH, the fabric listens on
        /// NAME.sock in its --vhost-dir (default /run/vwire/vhost): how
        /// members of the socket group add VMs. With PATH (root only), on
        /// that socket, or with --client connects to it. A fabric holds up
        /// to 1023 client-mode or 511 server-mode vhost-user endpoints (and
        /// 32 DPDK devices, one fewer with an uplink); past that the request
        /// is refused with endpoint_limit.
        #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
        vhost_user: Option<String>,
        /// Connect to a socket the VM side listens on (reconnecting when it
        /// goes away and comes back).
        #[arg(long, requires = "vhost_user")]
        client: bool,
        /// Queue pairs offered to the VM (spread over the workers).
        #[arg(long, requires = "vhost_user", default_value_t = 1)]
        queues: u16,
        /// (root) Let members of the socket group use this endpoint: wire
        /// it, disconnect its wire, delete it. Without it they may not; the
        /// endpoints they add themselves they always may.
        #[arg(long)]
        group: bool,
    },
    /// Remove endpoint NAME and its device (disconnect its wire first).
    Del {
        /// Endpoint name.
        name: String,
    },
    /// List endpoints.
    List,
}

#[derive(Subcommand, Debug)]
enum WireCmd {
    /// List wires with their kind, ends, state and counters.
    List,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum EncapArg {
    /// VirtualWire connector format (UDP + 32-bit connector ID).
    Vwire,
    /// RFC 7348 VXLAN (UDP 4789, VNI = wire id).
    Vxlan,
    /// vwire in ESP in UDP 4500 with AES-GCM (needs --key-file).
    Secure,
    /// VXLAN in ESP in UDP 4500 with AES-GCM, as Linux xfrm + VXLAN (needs --key-file).
    SecureVxlan,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match &cli.command {
        Command::Status => Request::Status,
        Command::Endpoint(EndpointCmd::Add { name, devargs, vhost_user, client, queues, group }) => {
            let spec = match (devargs, vhost_user) {
                (_, Some(path)) => EndpointSpec::VhostUser { path: path.clone(), client: *client, queues: *queues },
                (Some(d), None) => EndpointSpec::Dpdk { devargs: d.clone() },
                (None, None) => unreachable!("clap requires one of them"),
            };
            Request::EndpointAdd { name: name.clone(), spec, group: *group }
        }
        Command::Endpoint(EndpointCmd::Del { name }) => Request::EndpointDel { name: name.clone() },
        Command::Endpoint(EndpointCmd::List) => Request::EndpointList,
        Command::Keygen { file, peer_file, bits, lifetime, lifetime_packets } => {
            let l = (lifetime.is_some() || lifetime_packets.is_some())
                .then_some(vw_ctl::proto::SaLifetime { seconds: *lifetime, packets: *lifetime_packets });
            return keygen(file, peer_file, *bits, l);
        }
        Command::Connect { args, encap, incoming, key_file } => {
            let keys = match key_file {
                Some(f) => match vw_ctl::keyfile::read(f) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        eprintln!("vwctl: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            let (wire, endpoint, peer) = match args.as_slice() {
                [w, e, p] => match w.parse::<u32>() {
                    Ok(w) => (Some(w), e.clone(), p.clone()),
                    Err(_) => {
                        eprintln!("vwctl: wire id {w:?} is not a number from 0 to 4294967295");
                        return ExitCode::from(2);
                    }
                },
                [e, p] => (None, e.clone(), p.clone()),
                _ => unreachable!("clap takes 2 or 3 values"),
            };
            Request::Connect {
                incoming: *incoming,
                wire,
                endpoint,
                peer,
                encap: encap.map(|e| match e {
                    EncapArg::Vwire => EncapName::Vwire,
                    EncapArg::Vxlan => EncapName::Vxlan,
                    EncapArg::Secure => EncapName::Secure,
                    EncapArg::SecureVxlan => EncapName::SecureVxlan,
                }),
                keys,
            }
        }
        Command::Disconnect { wire } => Request::Disconnect { wire: *wire },
        Command::Rekey { wire, key_file, switch_in } => match vw_ctl::keyfile::read(key_file) {
            Ok(keys) => Request::Rekey { wire: *wire, keys, switch_in_ms: Some(switch_in * 1000) },
            Err(e) => {
                eprintln!("vwctl: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Wire(WireCmd::List) => Request::WireList,
        Command::Stats => Request::Stats,
        Command::RxqRebalance => Request::RxqRebalance,
    };
    let mut client = match Client::connect(&cli.socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vwctl: {e}");
            return ExitCode::from(3);
        }
    };
    let reply = match client.call(&request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vwctl: {e}");
            return ExitCode::from(3);
        }
    };
    if cli.json {
        let out =
            if reply.ok { reply.result.clone().unwrap_or_default() } else { serde_json::to_value(&reply).unwrap() };
        out!("{}", serde_json::to_string_pretty(&out).unwrap());
        return if reply.ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    if !reply.ok {
        let e = reply.error.unwrap();
        eprintln!("vwctl: {} ({})", printable(&e.message), e.code.as_str());
        return ExitCode::from(1);
    }
    let result = reply.result.unwrap_or_default();
    let printed = match &cli.command {
        Command::Status => serde_json::from_value(result).map(|s| print_status(&s)),
        Command::Endpoint(EndpointCmd::Add { .. }) => {
            serde_json::from_value(result).map(|e: EndpointInfo| print_endpoints(std::slice::from_ref(&e)))
        }
        Command::Endpoint(EndpointCmd::List) => {
            serde_json::from_value(result).map(|v: Vec<EndpointInfo>| print_endpoints(&v))
        }
        Command::Connect { .. } | Command::Rekey { .. } => {
            serde_json::from_value(result).map(|w: WireInfo| print_wires(std::slice::from_ref(&w)))
        }
        Command::Wire(WireCmd::List) => serde_json::from_value(result).map(|v: Vec<WireInfo>| print_wires(&v)),
        Command::Stats => serde_json::from_value(result).map(|s| print_stats(&s)),
        Command::RxqRebalance => serde_json::from_value(result).map(|v: Vec<RxqMove>| {
            if v.is_empty() {
                out!("nothing to move: no re-balancing lowers the busiest worker's load by 25% or more");
            }
            for m in v {
                out!("{} queue {} -> worker {} ({} frames/s)", m.endpoint, m.queue, m.worker, m.frames_per_s);
            }
        }),
        Command::Endpoint(EndpointCmd::Del { name }) => {
            out!("endpoint {name} removed");
            Ok(())
        }
        Command::Disconnect { wire } => {
            out!("wire {wire} disconnected");
            Ok(())
        }
        Command::Keygen { .. } => Ok(()),
    };
    if let Err(e) = printed {
        eprintln!("vwctl: {}", ClientError::Protocol(e.to_string()));
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

/// `s` with control characters escaped (`\u{1b}`): names and device
/// arguments come from other clients and must not drive the terminal or
/// forge table lines.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Prints rows as a left-aligned table with a header line.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| printable(c)).collect()).collect();
    let rows = &rows[..];
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{}", s.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_status(s: &Status) {
    out!("vwfabric {} pid {} up {}s, socket {}", s.version, s.pid, s.uptime_s, s.socket);
    let lcores: Vec<String> = s.workers.iter().map(|w| w.lcore.to_string()).collect();
    let mode =
        if s.idle_sleep_us == 0 { "busy polling".to_string() } else { format!("idle back-off {}us", s.idle_sleep_us) };
    out!("workers: {} on lcores {} ({mode})", s.workers.len(), lcores.join(","));
    match &s.uplink {
        Some(u) => {
            out!(
                "uplink: port {} {} mac {} link {} mtu {}",
                u.port,
                u.devargs,
                u.mac,
                if u.link_up { "up" } else { "down" },
                u.mtu
            );
            out!(
                "vtep: {} gateway {} udp ports vwire {} vxlan {}",
                u.vtep,
                u.gateway.as_deref().unwrap_or("-"),
                u.vwire_port,
                u.vxlan_port
            );
            let keepalive = match u.nat_keepalive_s {
                0 => "off".to_owned(),
                n => format!("every {n} s to idle secure wires' far ends"),
            };
            out!("public address: {}  nat keepalives: {keepalive}", u.public_address.as_deref().unwrap_or("-"));
        }
        None => out!("uplink: none (loopback wires only)"),
    }
    out!("endpoints: {}  wires: {}  mbufs in use: {} of {}", s.endpoints, s.wires, s.mempool.in_use, s.mempool.size);
    if !s.neighbours.is_empty() {
        out!();
        let rows: Vec<Vec<String>> = s
            .neighbours
            .iter()
            .map(|n| {
                vec![
                    n.ip.clone(),
                    n.mac.clone().unwrap_or_else(|| "-".into()),
                    n.state.clone(),
                    n.wires.to_string(),
                    n.requests.to_string(),
                ]
            })
            .collect();
        table(&["NEIGHBOUR", "MAC", "STATE", "WIRES", "ARP-REQUESTS"], &rows);
    }
    if !s.mtu_warnings.is_empty() {
        out!();
        out!("MTU mismatches (docs/qemu.md):");
        for m in &s.mtu_warnings {
            out!("  {}", printable(m));
        }
    }
    if let Some(d) = &s.directory {
        out!(
            "directory: {} {} domain {} host {}: {} for {}s{} (revision {}; {} hosts up, {} endpoints, {} wires)",
            d.backend,
            d.urls.join(","),
            d.domain,
            d.host,
            d.state,
            d.for_s,
            d.reason.as_ref().map(|r| format!(" ({})", printable(r))).unwrap_or_default(),
            d.revision,
            d.hosts,
            d.endpoints,
            d.wires
        );
        for p in &d.problems {
            out!("  {}", printable(p));
        }
    }
    if !s.unrestored.is_empty() {
        out!();
        out!("not restored from the state file (kept there, retried at the next start; the log says why):");
        for u in &s.unrestored {
            out!("  {}", printable(u));
        }
    }
}

fn print_endpoints(v: &[EndpointInfo]) {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|e| {
            let device = match &e.spec {
                EndpointSpec::Dpdk { devargs } => devargs.clone(),
                EndpointSpec::VhostUser { client, .. } => {
                    format!("vhost-user {}{}", e.device, if *client { " (client)" } else { "" })
                }
            };
            vec![
                e.name.clone(),
                e.port.to_string(),
                e.driver.clone(),
                device,
                e.mac.clone(),
                if e.link_up { "up".into() } else { "down".into() },
                e.link_changes.to_string(),
                format!("{}/{}", e.rx_queues, e.tx_queues),
                if e.rx_workers.is_empty() {
                    "-".into()
                } else {
                    e.rx_workers.iter().map(|r| format!("{}:{}", r.queue, r.worker)).collect::<Vec<_>>().join(",")
                },
                e.mtu.to_string(),
                e.wire.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["NAME", "PORT", "DRIVER", "DEVICE", "MAC", "LINK", "LINK-CHANGES", "RXQ/TXQ", "RXQ:WORKER", "MTU", "WIRE"],
        &rows,
    );
}

/// Where a wire's two ends are: `name@here` for a local endpoint, the VTEP
/// address of the host of a remote end.
fn ends(w: &WireInfo) -> String {
    if !w.ends.is_empty() {
        let end = |e: &vw_ctl::proto::WireEnd| match e.state.as_str() {
            "here" => format!("{}@here", e.endpoint),
            "up" => format!("{}@{}", e.endpoint, e.host),
            "unknown" => format!("{}@?", e.endpoint),
            other => format!("{}@{} ({other})", e.endpoint, e.host),
        };
        return w.ends.iter().map(end).collect::<Vec<_>>().join(" <-> ");
    }
    let far = match (&w.encap, &w.secure) {
        // A secure wire's far end behind a NAT that maps 4500 elsewhere.
        (Some(_), Some(s)) if s.peer_port != 4500 => format!("{}:{}", w.peer, s.peer_port),
        (Some(_), _) => w.peer.clone(),
        (None, _) => format!("{}@here", w.peer),
    };
    match w.migration.as_ref().and_then(|m| m.moved_to.as_ref()) {
        Some(to) => format!("{}@{to} <-> {far}", w.endpoint),
        None => format!("{}@here <-> {far}", w.endpoint),
    }
}

fn parse_bits(s: &str) -> Result<usize, String> {
    match s {
        "128" => Ok(128),
        "256" => Ok(256),
        _ => Err("AES-GCM keys are 128 or 256 bits".into()),
    }
}

/// `vwctl keygen`: two mirrored key files, written before anything is said.
fn keygen(
    file: &std::path::Path,
    peer_file: &std::path::Path,
    bits: usize,
    lifetime: Option<vw_ctl::proto::SaLifetime>,
) -> ExitCode {
    use vw_ctl::keyfile;
    let (here, there) = match keyfile::generate(bits, lifetime) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("vwctl: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = keyfile::write_new(file, &keyfile::format(&here, bits)) {
        eprintln!("vwctl: {e}");
        return ExitCode::from(1);
    }
    if let Err(e) = keyfile::write_new(peer_file, &keyfile::format(&there, bits)) {
        let _ = std::fs::remove_file(file);
        eprintln!("vwctl: {e}");
        return ExitCode::from(1);
    }
    out!(
        "wrote {} (out SPI {:#010x}, in SPI {:#010x}) and {} for the far end, AES-{bits}-GCM",
        file.display(),
        here.out_spi,
        here.in_spi,
        peer_file.display()
    );
    ExitCode::SUCCESS
}

fn print_wires(v: &[WireInfo]) {
    let migration = v.iter().any(|w| w.migration.is_some());
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|w| {
            let mut row = vec![
                w.wire.to_string(),
                match w.encap {
                    Some(e) => format!("{} ({e})", w.kind),
                    None => w.kind.clone(),
                },
                ends(w),
                w.state.clone(),
                w.forward.frames.to_string(),
                w.forward.bytes.to_string(),
                w.reverse.frames.to_string(),
                w.reverse.bytes.to_string(),
                w.dropped.to_string(),
                match (w.carries_mtu, &w.mtu_warning) {
                    (Some(m), None) => m.to_string(),
                    (Some(m), Some(_)) => format!("{m}!"),
                    (None, Some(_)) => "-!".into(),
                    (None, None) => "-".into(),
                },
            ];
            if migration {
                let m = w.migration.clone().unwrap_or_default();
                row.push(m.moves.to_string());
                row.push(if m.last_move_ms == 0 {
                    "-".into()
                } else {
                    format!("{} ({} us)", clock_time(m.last_move_ms), m.last_move_us)
                });
                row.push(m.forwarded.to_string());
                row.push(if m.grace_left_ms == 0 { "-".into() } else { format!("{} ms", m.grace_left_ms) });
            }
            row
        })
        .collect();
    let mut header =
        vec!["WIRE", "KIND", "ENDS", "STATE", "FWD-FRAMES", "FWD-BYTES", "REV-FRAMES", "REV-BYTES", "DROPPED", "MTU"];
    if migration {
        header.extend(["MOVES", "LAST-MOVE (APPLIED IN)", "FORWARDED", "GRACE"]);
    }
    table(&header, &rows);
    for w in v {
        if let Some(m) = &w.mtu_warning {
            out!("wire {}: {}", w.wire, printable(m));
        }
    }
}

/// `HH:MM:SS.mmm` UTC of a time in ms since the Unix epoch.
fn clock_time(ms: u64) -> String {
    let day = ms % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03} UTC", day / 3_600_000, day / 60_000 % 60, day / 1000 % 60, day % 1000)
}

fn nonzero(m: &BTreeMap<String, u64>) -> Vec<Vec<String>> {
    m.iter().filter(|(_, v)| **v != 0).map(|(k, v)| vec![k.clone(), v.to_string()]).collect()
}

fn print_stats(s: &Stats) {
    let rows: Vec<Vec<String>> = s
        .ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.port.to_string(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.rx_missed.to_string(),
                (p.rx_errors + p.rx_nombuf).to_string(),
                p.tx_errors.to_string(),
                p.tx_dropped.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PORT",
            "ID",
            "RX-PKTS",
            "RX-BYTES",
            "TX-PKTS",
            "TX-BYTES",
            "RX-MISSED",
            "RX-ERRORS",
            "TX-ERRORS",
            "TX-DROPPED",
        ],
        &rows,
    );
    out!();
    print_wires(&s.wires);
    out!();
    let rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            let busy = if w.polls == 0 { 0.0 } else { 100.0 * w.busy_polls as f64 / w.polls as f64 };
            let drops: u64 = w.drops.values().sum();
            vec![
                w.index.to_string(),
                w.lcore.to_string(),
                w.polls.to_string(),
                format!("{busy:.1}%"),
                w.rx_frames.to_string(),
                w.tx_frames.to_string(),
                drops.to_string(),
                w.sleeps.to_string(),
            ]
        })
        .collect();
    table(&["WORKER", "LCORE", "POLLS", "BUSY", "RX-FRAMES", "TX-FRAMES", "DROPS", "SLEEPS"], &rows);
    let handled = nonzero(&s.handled);
    if !handled.is_empty() {
        out!();
        table(&["HANDLED", "FRAMES"], &handled);
    }
    let drops = nonzero(&s.drops);
    out!();
    if drops.is_empty() {
        out!("drops: none");
    } else {
        table(&["DROP-REASON", "FRAMES"], &drops);
    }
    if let Some(m) = &s.migration {
        out!();
        out!(
            "migration (UDP {}, grace {} ms): {} messages sent, {} received, {} taken, {} waiting for an answer, {} frames forwarded",
            m.port, m.grace_ms, m.sent, m.received, m.accepted, m.pending, m.forwarded
        );
        let refused = nonzero(&m.refused);
        if !refused.is_empty() {
            table(&["REFUSED-MESSAGE-REASON", "MESSAGES"], &refused);
        }
    }
    out!();
    out!("control frames sent: {} (nat keepalives: {})", s.control_frames_sent, s.nat_keepalives_sent);
    out!("mbufs in use: {} of {}", s.mempool.in_use, s.mempool.size);
}
