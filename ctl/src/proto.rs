//! Requests and replies of the control socket.
//!
//! A request is a JSON object with a `"cmd"` member naming the command; the
//! reply is `{"ok":true,"result":...}` or
//! `{"ok":false,"error":{"code":"...","message":"..."}}`. A refused request
//! changes nothing. See `docs/control.md` for examples of every command.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Tunnel format of an encap wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EncapName {
    /// The VirtualWire connector format: UDP + 32-bit connector ID.
    #[default]
    Vwire,
    /// RFC 7348 VXLAN, VNI = connector ID.
    Vxlan,
    /// A secure wire: the vwire datagram in ESP in UDP (AES-GCM); needs keys.
    Secure,
    /// A secure wire carrying VXLAN, as a Linux host's xfrm SA and VXLAN device do.
    SecureVxlan,
}

impl EncapName {
    /// A secure format (needs keys).
    pub fn is_secure(self) -> bool {
        matches!(self, EncapName::Secure | EncapName::SecureVxlan)
    }
}

impl fmt::Display for EncapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncapName::Vwire => "vwire",
            EncapName::Vxlan => "vxlan",
            EncapName::Secure => "secure",
            EncapName::SecureVxlan => "secure-vxlan",
        })
    }
}

/// The keys of a secure wire, one SA per direction (what a key file holds;
/// see [`crate::keyfile`]). Only root may send them. `Debug` shows the SPIs,
/// never the key material.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureKeys {
    /// SPI of the SA this end sends with.
    pub out_spi: u32,
    /// Its AES-GCM key and salt, hexadecimal as `ip xfrm` takes them.
    pub out_key: String,
    /// SPI of the SA this end receives with.
    pub in_spi: u32,
    /// Its key and salt.
    pub in_key: String,
    /// When the wire rekeys itself (both ends' key files say the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<SaLifetime>,
}

/// A secure wire's SA lifetime: once its outbound SA has sent for this
/// long or this many packets, the wire rekeys itself to the next
/// generation of its keys (derived from the current ones at both ends;
/// see docs/security.md, "SA lifetimes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaLifetime {
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// Packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
}

impl SaLifetime {
    /// The shortest lifetime in seconds a key file may set.
    pub const MIN_SECONDS: u64 = 10;
    /// The fewest packets.
    pub const MIN_PACKETS: u64 = 10_000;

    /// Refuses limits too small to rekey by (each generation waits for the
    /// far end's switch and a 2-second grace before the next).
    pub fn check(&self) -> Result<(), String> {
        match (self.seconds, self.packets) {
            (None, None) => Err("a lifetime needs seconds, packets or both".into()),
            (Some(s), _) if s < Self::MIN_SECONDS => {
                Err(format!("an SA lifetime is at least {} seconds", Self::MIN_SECONDS))
            }
            (_, Some(p)) if p < Self::MIN_PACKETS => {
                Err(format!("an SA lifetime is at least {} packets", Self::MIN_PACKETS))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for SecureKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureKeys")
            .field("out_spi", &format_args!("{:#010x}", self.out_spi))
            .field("in_spi", &format_args!("{:#010x}", self.in_spi))
            .finish_non_exhaustive()
    }
}

/// What `wire list` shows of a secure wire: never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureInfo {
    /// SPI of the outbound SA.
    pub out_spi: u32,
    /// SPI of the inbound SA.
    pub in_spi: u32,
    /// AES key length in bits (128 or 256), outbound.
    pub key_bits: u32,
    /// The last sequence number sent.
    pub sent_seq: u64,
    /// The highest sequence number received and verified.
    pub received_seq: u64,
    /// The sequence number the outbound SA may not pass before the fabric
    /// has saved a higher one (so none repeats after a restart).
    pub seq_limit: u64,
    /// Inbound packets whose ICV did not verify.
    pub auth_failed: u64,
    /// Inbound packets received before or below the replay window.
    pub replayed: u64,
    /// Inbound packets with this wire's SPI from an address that is not its peer's.
    pub wrong_peer: u64,
    /// The UDP port the far end sends from and is sent to: 4500, or what
    /// a NAT in front of it maps 4500 to (learned from verified packets).
    #[serde(default = "esp_in_udp_port")]
    pub peer_port: u16,
    /// How many times that port changed (the far end's NAT mapped it anew).
    #[serde(default)]
    pub nat_rebinds: u64,
    /// The SA lifetime, if the keys set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<SaLifetime>,
    /// Rekeys this wire made by itself at its lifetime since the fabric started.
    #[serde(default)]
    pub generations: u64,
    /// A rekey under way: the new keys' SPIs, until the outbound SA switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey: Option<RekeyInfo>,
    /// The previous inbound SA, kept after a rekey until the far end sends
    /// with the new keys (its SPI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_in_spi: Option<u32>,
}

fn esp_in_udp_port() -> u16 {
    4500
}

/// How long a rekey waits at most for the far end's new keys before the
/// outbound SA switches by itself.
pub const REKEY_SWITCH_DEFAULT_MS: u64 = 60_000;

/// A secure wire's rekey that has not switched its outbound SA yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyInfo {
    /// The SPI the outbound SA will send with.
    pub out_spi: u32,
    /// The new inbound SA's SPI (already receiving).
    pub in_spi: u32,
    /// The outbound SA switches in this long at the latest, ms (0 for an
    /// automatic rekey: it switches at the lifetime).
    pub switch_in_ms: u64,
    /// The next generation of the keys, installed ahead for the SA
    /// lifetime (not a `vwctl rekey`).
    #[serde(default)]
    pub automatic: bool,
}

/// How an endpoint's device is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointSpec {
    /// Any DPDK device given by devargs (`net_tap0,iface=vm1`, a PCI address).
    Dpdk {
        /// Device arguments as for `--vdev`/`-a`.
        devargs: String,
    },
    /// A vhost-user port: a VM's virtio-net NIC.
    VhostUser {
        /// Socket path (absolute), given by root only; empty: `NAME.sock`
        /// in the fabric's `--vhost-dir` (how the socket group adds VMs).
        #[serde(default)]
        path: String,
        /// The fabric connects to a socket the VM side listens on (and
        /// reconnects when it goes away), instead of listening itself.
        #[serde(default)]
        client: bool,
        /// Queue pairs offered to the VM.
        #[serde(default = "one_queue")]
        queues: u16,
    },
}

fn one_queue() -> u16 {
    1
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Fabric identity, uplink, workers, neighbours.
    Status,
    /// Hot-plug a device and make it an endpoint.
    EndpointAdd {
        /// Endpoint name (1-32 of `[A-Za-z0-9_.-]`, not starting with `.`).
        name: String,
        /// The device.
        spec: EndpointSpec,
        /// Root's endpoint may be used by the socket group (wired,
        /// disconnected, deleted); a member's always may.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        group: bool,
    },
    /// Remove an endpoint (it must carry no wire) and its device.
    EndpointDel {
        /// Endpoint name.
        name: String,
    },
    /// List endpoints.
    EndpointList,
    /// Connect a wire.
    Connect {
        /// Wire id, which is also the connector ID on the underlay; absent:
        /// the directory allocates a free one (with `--directory` only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wire: Option<u32>,
        /// The local endpoint at this end (with `--directory`: any
        /// endpoint of the domain).
        endpoint: String,
        /// Another local endpoint (loopback wire), a remote VTEP IPv4
        /// address (encap wire), or with `--directory` any endpoint of the
        /// domain (the fabric picks the wire's kind from where they live).
        peer: String,
        /// Tunnel format for a remote peer (default vwire); refused for a local peer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encap: Option<EncapName>,
        /// Connect when the endpoint's VM starts here (its vhost-user device
        /// comes up), not now: how the destination of a live migration is
        /// prepared, so the wire follows the VM with no command at switch-over.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        incoming: bool,
        /// A secure wire's keys (root only; required for `secure` formats).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<SecureKeys>,
    },
    /// Disconnect a wire.
    Disconnect {
        /// Wire id.
        wire: u32,
    },
    /// Give a secure wire new keys under traffic (root only): the new
    /// inbound SA is installed now, beside the old one; the outbound SA
    /// switches to the new keys once a packet sealed with the far end's
    /// new keys arrives, or after `switch_in_ms`; the old inbound SA is
    /// kept until the far end has switched too. See docs/security.md.
    Rekey {
        /// Wire id.
        wire: u32,
        /// The new keys (a new `vwctl keygen` pair, this end's file).
        keys: SecureKeys,
        /// Switch the outbound SA after this long at the latest (default
        /// [`REKEY_SWITCH_DEFAULT_MS`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        switch_in_ms: Option<u64>,
    },
    /// List wires with their counters.
    WireList,
    /// All counters.
    Stats,
    /// Re-balance RX queues over workers by their measured load now
    /// (otherwise every `--rxq-rebalance-interval`); replies with what moved.
    RxqRebalance,
}

/// Stable error codes (the `code` member of an error reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not valid JSON or not a known command.
    BadRequest,
    /// The request is larger than the server accepts.
    TooLarge,
    /// The client took too long to send a complete request.
    Timeout,
    /// An argument is invalid.
    InvalidArgument,
    /// The named endpoint does not exist.
    NoSuchEndpoint,
    /// The endpoint name is taken.
    EndpointExists,
    /// The endpoint carries a wire.
    EndpointBusy,
    /// The wire does not exist.
    NoSuchWire,
    /// The wire id is taken.
    WireExists,
    /// Encap wires need an uplink and this fabric has none.
    NoUplink,
    /// DPDK refused (device probe, port setup...).
    DeviceError,
    /// The fabric is shutting down or too busy.
    Unavailable,
    /// Too many clients are connected.
    TooManyClients,
    /// The fabric holds as many endpoints of this kind as it can.
    EndpointLimit,
    /// Every wire slot (`--max-wires`) is in use.
    WireLimit,
    /// Only root (or the fabric's own user) may do this.
    PermissionDenied,
    /// The device arguments name a driver this DPDK does not have.
    UnknownDriver,
    /// A file the device arguments name does not exist.
    NoSuchFile,
    /// The endpoint directory (etcd) cannot be reached: wires that exist
    /// keep forwarding, changes by name are refused until it is back.
    DirectoryUnavailable,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NoSuchEndpoint => "no_such_endpoint",
            ErrorCode::EndpointExists => "endpoint_exists",
            ErrorCode::EndpointBusy => "endpoint_busy",
            ErrorCode::NoSuchWire => "no_such_wire",
            ErrorCode::WireExists => "wire_exists",
            ErrorCode::NoUplink => "no_uplink",
            ErrorCode::DeviceError => "device_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::EndpointLimit => "endpoint_limit",
            ErrorCode::WireLimit => "wire_limit",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::UnknownDriver => "unknown_driver",
            ErrorCode::NoSuchFile => "no_such_file",
            ErrorCode::DirectoryUnavailable => "directory_unavailable",
        }
    }
}

/// The error member of a refused request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The command's result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the request was refused when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A success carrying `result`.
    pub fn ok<T: Serialize>(result: &T) -> Reply {
        match serde_json::to_value(result) {
            Ok(v) => Reply { ok: true, result: Some(v), error: None },
            Err(e) => Reply::err(ErrorCode::Unavailable, format!("cannot encode the reply: {e}")),
        }
    }

    /// A refusal.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply { ok: false, result: None, error: Some(ErrorBody { code, message: message.into() }) }
    }
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// vwfabric version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Control socket path.
    pub socket: String,
    /// Worker lcores.
    pub workers: Vec<WorkerInfo>,
    /// The uplink, if the fabric has one.
    pub uplink: Option<UplinkStatus>,
    /// Resolved and pending underlay neighbours.
    pub neighbours: Vec<NeighbourInfo>,
    /// Number of endpoints.
    pub endpoints: usize,
    /// Number of wires.
    pub wires: usize,
    /// Mbuf pool usage.
    pub mempool: MempoolInfo,
    /// Idle back-off in microseconds (0: busy polling).
    pub idle_sleep_us: u64,
    /// Entries of the state file that could not be restored at start (kept
    /// in the file, retried at the next start).
    #[serde(default)]
    pub unrestored: Vec<String>,
    /// Wires whose endpoints' MTUs do not fit them (each also logged once).
    #[serde(default)]
    pub mtu_warnings: Vec<String>,
    /// The endpoint directory, with `--directory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryStatus>,
}

/// A worker lcore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker index (also its queue number on every port).
    pub index: usize,
    /// EAL lcore id.
    pub lcore: u32,
}

/// The uplink port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// Device arguments it was created from.
    pub devargs: String,
    /// DPDK port id.
    pub port: u16,
    /// MAC address.
    pub mac: String,
    /// VTEP address with prefix length (`10.0.0.1/24`).
    pub vtep: String,
    /// Gateway for peers outside the subnet.
    pub gateway: Option<String>,
    /// Underlay MTU.
    pub mtu: u16,
    /// UDP port of the vwire format.
    pub vwire_port: u16,
    /// UDP port of the vxlan format.
    pub vxlan_port: u16,
    /// Link up.
    pub link_up: bool,
    /// The address other sites reach this host at, if it is not the VTEP
    /// (`vwfabric --public-address`, behind a 1:1 NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
    /// Seconds between NAT keepalives to an idle secure wire's far end (0: none).
    #[serde(default)]
    pub nat_keepalive_s: u64,
}

/// An underlay neighbour the fabric resolves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourInfo {
    /// IPv4 address.
    pub ip: String,
    /// MAC address, when resolved.
    pub mac: Option<String>,
    /// `incomplete`, `reachable` or `stale`.
    pub state: String,
    /// ARP requests sent for it.
    pub requests: u64,
    /// Wires that send through it.
    pub wires: usize,
}

/// Mbuf pool usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MempoolInfo {
    /// Mbufs in the pool.
    pub size: u32,
    /// Mbufs in use (in device rings, queues or in flight).
    pub in_use: u32,
}

/// An endpoint (result of `endpoint add`, elements of `endpoint list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Name.
    pub name: String,
    /// How it was created.
    pub spec: EndpointSpec,
    /// Index in the fabric's port table (0 is the uplink); not a DPDK port id.
    pub port: u32,
    /// ethdev name, or the vhost-user socket path.
    pub device: String,
    /// PMD, or `vhost-user`.
    pub driver: String,
    /// MAC address of the port (empty for vhost-user: the VM's NIC has its own).
    pub mac: String,
    /// Link up.
    pub link_up: bool,
    /// MTU.
    pub mtu: u16,
    /// RX queues (each polled by one worker).
    pub rx_queues: u16,
    /// TX queues usable now (for vhost-user: the queues the VM enabled).
    pub tx_queues: u16,
    /// Link state changes seen since the endpoint was added (vhost-user:
    /// the VM connecting and disconnecting).
    pub link_changes: u64,
    /// The wire it carries.
    pub wire: Option<u32>,
    /// The RX queues polled now (a vhost-user VM's enabled rings), each with
    /// the worker that polls it.
    #[serde(default)]
    pub rx_workers: Vec<RxqPlace>,
    /// Members of the socket group may use it: they added it, or root did
    /// with `--group`.
    #[serde(default)]
    pub group: bool,
}

/// An RX queue and the worker polling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxqPlace {
    /// Queue.
    pub queue: u16,
    /// Worker index.
    pub worker: usize,
    /// Frames per second at the last re-balancing (0 before the first).
    pub frames_per_s: u64,
}

/// An RX queue that `rxq_rebalance` moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxqMove {
    /// Endpoint (or `uplink`).
    pub endpoint: String,
    /// Queue.
    pub queue: u16,
    /// The worker that polls it now.
    pub worker: usize,
    /// Its load, frames per second.
    pub frames_per_s: u64,
}

/// One direction of a wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounters {
    /// Frames delivered.
    pub frames: u64,
    /// Bytes delivered (inner frame bytes).
    pub bytes: u64,
}

/// A wire (result of `connect`, elements of `wire list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireInfo {
    /// Wire id (connector ID).
    pub wire: u32,
    /// `loopback` or `encap`.
    pub kind: String,
    /// The local endpoint named first.
    pub endpoint: String,
    /// The other end: a local endpoint or a remote VTEP.
    pub peer: String,
    /// Tunnel format of an encap wire.
    pub encap: Option<EncapName>,
    /// `up`, or `resolving` while the underlay next hop's MAC is unknown.
    pub state: String,
    /// Frames that entered at `endpoint` and left at `peer`.
    pub forward: FlowCounters,
    /// Frames that entered at `peer` and left at `endpoint`.
    pub reverse: FlowCounters,
    /// Frames dropped on this wire (too big, no headroom, peer unresolved,
    /// TX full; for a secure wire also its inbound packets that failed
    /// authentication, were replayed or came from another address).
    pub dropped: u64,
    /// Moves of this wire's ends seen by this fabric (with `--migration-key-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<WireMigration>,
    /// The largest MTU the wire carries for its local end's frames (an
    /// encap wire: the underlay MTU less the encapsulation); none for a
    /// loopback wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carries_mtu: Option<u16>,
    /// The endpoints' MTUs do not fit the wire (see `Status::mtu_warnings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_warning: Option<String>,
    /// A wire of the endpoint directory: where each end lives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ends: Vec<WireEnd>,
    /// A secure wire's SAs (no key material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureInfo>,
}

impl WireInfo {
    /// A wire that carries no traffic here (an armed connect, a directory
    /// wire with no end on this host): zero counters, no MTU, no moves.
    pub fn idle(
        wire: u32,
        kind: &str,
        endpoint: &str,
        peer: &str,
        encap: Option<EncapName>,
        state: String,
    ) -> WireInfo {
        WireInfo {
            wire,
            kind: kind.to_owned(),
            endpoint: endpoint.to_owned(),
            peer: peer.to_owned(),
            encap,
            state,
            forward: FlowCounters::default(),
            reverse: FlowCounters::default(),
            dropped: 0,
            migration: None,
            carries_mtu: None,
            mtu_warning: None,
            ends: Vec::new(),
            secure: None,
        }
    }
}

/// Where one end of a directory wire lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEnd {
    /// Endpoint name.
    pub endpoint: String,
    /// The host it lives on (empty: no host advertises it).
    pub host: String,
    /// `here`, `up` (another host, whose lease holds), `host down` (its
    /// host's lease expired) or `unknown` (no host advertises it).
    pub state: String,
}

/// The endpoint directory, in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryStatus {
    /// `etcd`.
    pub backend: String,
    /// The etcd client URLs.
    pub urls: Vec<String>,
    /// The domain (key prefix `/virtualwire/DOMAIN/`).
    pub domain: String,
    /// This host's name in the directory.
    pub host: String,
    /// `connected` or `unavailable`.
    pub state: String,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds in the current state.
    pub for_s: u64,
    /// The store's revision this fabric has seen up to.
    pub revision: i64,
    /// Hosts that are up, endpoints and wires the directory holds.
    pub hosts: usize,
    /// See `hosts`.
    pub endpoints: usize,
    /// See `hosts`.
    pub wires: usize,
    /// What keeps a wire's half or an endpoint's claim from being set up
    /// here (each also logged once).
    #[serde(default)]
    pub problems: Vec<String>,
}

/// The moves of one wire, as this fabric saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMigration {
    /// Moves of either end seen (applied here, or reported by the peer).
    pub moves: u32,
    /// Time of the last move applied here, ms since the Unix epoch (0: none).
    pub last_move_ms: u64,
    /// How long applying the last move took here, in microseconds: from
    /// taking the location update to every worker running the new path.
    pub last_move_us: u64,
    /// Frames passed on during grace periods: forwarded to the end's new
    /// host (kind `moved`), or received forwarded (at the new host).
    pub forwarded: u64,
    /// During a grace period: the remote end's previous host, whose frames
    /// are still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_host: Option<String>,
    /// Kind `moved`: the host the local end left for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// Milliseconds left of the grace period (0: none running).
    pub grace_left_ms: u64,
}

/// The migration channel's counters in `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// UDP port of the channel.
    pub port: u16,
    /// Grace period, ms.
    pub grace_ms: u64,
    /// Messages sent (LOCATE, ACK, MOVED, retransmissions included).
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Messages taken.
    pub accepted: u64,
    /// Messages refused, by reason (every reason, zero or not).
    pub refused: BTreeMap<String, u64>,
    /// LOCATEs waiting for an ACK.
    pub pending: usize,
    /// Messages not sent because the next hop's MAC was not known yet
    /// (a LOCATE is sent again).
    pub unsent: u64,
    /// Frames forwarded during grace periods, all wires.
    pub forwarded: u64,
    /// How long frames from a wire's new peer waited in a worker for the
    /// LOCATE that re-points the wire to be applied, the last time some
    /// did (the longest of them), microseconds.
    #[serde(default)]
    pub stray_wait_last_us: u64,
}

/// Per-port counters in `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Endpoint name, or `uplink`.
    pub name: String,
    /// Index in the fabric's port table (0 is the uplink).
    pub port: u32,
    /// Device counters.
    pub rx_packets: u64,
    /// Device counters.
    pub rx_bytes: u64,
    /// Device counters.
    pub tx_packets: u64,
    /// Device counters.
    pub tx_bytes: u64,
    /// RX frames the device dropped (rings full).
    pub rx_missed: u64,
    /// RX errors reported by the device.
    pub rx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
    /// TX errors reported by the device.
    pub tx_errors: u64,
    /// Frames the fabric had for this port that the TX queue refused.
    pub tx_dropped: u64,
}

/// Per-worker counters in `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Worker index.
    pub index: usize,
    /// EAL lcore id.
    pub lcore: u32,
    /// Poll loop iterations.
    pub polls: u64,
    /// Iterations that received at least one frame.
    pub busy_polls: u64,
    /// Idle back-off sleeps.
    pub sleeps: u64,
    /// Frames received from all ports.
    pub rx_frames: u64,
    /// Frames handed to TX queues.
    pub tx_frames: u64,
    /// Configuration snapshots taken.
    pub config_updates: u64,
    /// Frames the VTEP answered or consumed (ARP, ICMP echo), by kind.
    pub handled: BTreeMap<String, u64>,
    /// Frames dropped, by reason (only reasons with a non-zero count).
    pub drops: BTreeMap<String, u64>,
}

/// Result of `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Per port.
    pub ports: Vec<PortCounters>,
    /// Per wire.
    pub wires: Vec<WireInfo>,
    /// Per worker.
    pub workers: Vec<WorkerCounters>,
    /// Drops by reason, summed over workers (every reason, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Handled frames by kind, summed over workers.
    pub handled: BTreeMap<String, u64>,
    /// Frames the control plane sent on the uplink (ARP requests, the
    /// gratuitous ARP at start); not received frames.
    pub control_frames_sent: u64,
    /// NAT keepalives sent to idle secure wires' far ends (counted in
    /// `control_frames_sent` too).
    #[serde(default)]
    pub nat_keepalives_sent: u64,
    /// Mbuf pool usage.
    pub mempool: MempoolInfo,
    /// The migration channel (absent without `--migration-key-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_is_the_documented_one() {
        let r = Request::Connect {
            wire: Some(7),
            endpoint: "vm1".into(),
            peer: "10.0.0.2".into(),
            encap: Some(EncapName::Vxlan),
            incoming: false,
            keys: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"connect","wire":7,"endpoint":"vm1","peer":"10.0.0.2","encap":"vxlan"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let rekey: Request = serde_json::from_str(
            r#"{"cmd":"rekey","wire":9,"keys":{"out_spi":1,"out_key":"0x00","in_spi":2,"in_key":"0x01"}}"#,
        )
        .unwrap();
        assert!(matches!(rekey, Request::Rekey { wire: 9, switch_in_ms: None, .. }));
        assert!(!format!("{rekey:?}").contains("0x01"), "Debug hides the keys");
        let auto: Request = serde_json::from_str(r#"{"cmd":"connect","endpoint":"vm1","peer":"vm2"}"#).unwrap();
        assert!(matches!(auto, Request::Connect { wire: None, .. }));
        let add: Request = serde_json::from_str(
            r#"{"cmd":"endpoint_add","name":"vm1","spec":{"type":"dpdk","devargs":"net_tap0,iface=vm1"}}"#,
        )
        .unwrap();
        assert_eq!(
            add,
            Request::EndpointAdd {
                name: "vm1".into(),
                spec: EndpointSpec::Dpdk { devargs: "net_tap0,iface=vm1".into() },
                group: false
            }
        );
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(), Request::Status);
        let vh: Request = serde_json::from_str(
            r#"{"cmd":"endpoint_add","name":"vm2","spec":{"type":"vhost_user","path":"/run/vm2.sock"}}"#,
        )
        .unwrap();
        assert_eq!(
            vh,
            Request::EndpointAdd {
                name: "vm2".into(),
                spec: EndpointSpec::VhostUser { path: "/run/vm2.sock".into(), client: false, queues: 1 },
                group: false
            }
        );
    }

    #[test]
    fn unknown_commands_and_fields_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"disconnect","wire":7,"force":true}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"disconnect","wire":-1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"disconnect","wire":4294967296}"#).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let e = Reply::err(ErrorCode::NoSuchWire, "wire 9 does not exist");
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":{"code":"no_such_wire","message":"wire 9 does not exist"}}"#);
        let ok = Reply::ok(&MempoolInfo { size: 10, in_use: 2 });
        let back: Reply = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
        assert!(back.ok && back.error.is_none());
        assert_eq!(back.result.unwrap(), serde_json::json!({"size": 10, "in_use": 2}));
        for code in [ErrorCode::BadRequest, ErrorCode::TooManyClients, ErrorCode::WireExists] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().into()));
        }
    }
}
