//! The wire table: the control-plane model of endpoints and the wires between them.
//!
//! An endpoint is a named local port (a VM's vhost-user socket, a tap, ...). A wire, named by
//! its [`ConnectorId`], joins one endpoint either to another local endpoint (a loopback wire)
//! or to a remote VTEP through an encapsulation (an encap wire). An endpoint carries at most one
//! wire. Pure data: no I/O. Every mutating method validates fully before changing anything, so
//! a refused call leaves the table exactly as it was.

use std::fmt;
use std::net::Ipv4Addr;

use imbl::{HashMap, OrdMap, OrdSet};

use crate::encap::Encap;
use crate::vxlan::MAX_VNI;

/// Identifier of a wire: the connector ID carried in the VirtualWire header, or the VXLAN VNI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConnectorId(pub u32);

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u32> for ConnectorId {
    fn from(id: u32) -> ConnectorId {
        ConnectorId(id)
    }
}

impl From<ConnectorId> for u32 {
    fn from(id: ConnectorId) -> u32 {
        id.0
    }
}

/// The far end of a wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Another local endpoint, by name (a loopback wire).
    Local(String),
    /// A remote VTEP reached through an encapsulation (an encap wire).
    Remote {
        /// Underlay IPv4 address of the remote VTEP.
        vtep: Ipv4Addr,
        /// Encapsulation used on the underlay.
        encap: Encap,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Local(name) => f.write_str(name),
            Peer::Remote { vtep, encap } => write!(f, "{vtep} {encap}"),
        }
    }
}

/// The two kinds of wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireKind {
    /// Both ends are local endpoints.
    Loopback,
    /// One end is local, the other is a remote VTEP.
    Encap,
}

impl WireKind {
    /// Stable lower-case name: "loopback" or "encap".
    pub const fn name(self) -> &'static str {
        match self {
            WireKind::Loopback => "loopback",
            WireKind::Encap => "encap",
        }
    }
}

impl fmt::Display for WireKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A wire: a local endpoint joined to a peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Wire {
    /// The wire's identifier.
    pub id: ConnectorId,
    /// The local endpoint (for a loopback wire, the first end named in the connect).
    pub endpoint: String,
    /// The other end (for a loopback wire, `Peer::Local` with the second end).
    pub peer: Peer,
}

impl Wire {
    /// Loopback if the peer is local, Encap if it is a remote VTEP.
    pub fn kind(&self) -> WireKind {
        match self.peer {
            Peer::Local(_) => WireKind::Loopback,
            Peer::Remote { .. } => WireKind::Encap,
        }
    }

    /// The local peer endpoint of a loopback wire.
    pub fn local_peer(&self) -> Option<&str> {
        match &self.peer {
            Peer::Local(name) => Some(name),
            Peer::Remote { .. } => None,
        }
    }

    /// True if `name` is one of the wire's local endpoints.
    pub fn touches(&self, name: &str) -> bool {
        self.endpoint == name || self.local_peer() == Some(name)
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.endpoint, self.peer)
    }
}

/// Longest endpoint name accepted.
pub const MAX_ENDPOINT_NAME_LEN: usize = 32;

/// Why the wire table refused a change.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The endpoint name is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid endpoint name {name:?}: {reason}")]
    InvalidEndpointName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An endpoint with this name already exists.
    #[error("endpoint {0} already exists")]
    EndpointExists(String),
    /// No endpoint has this name.
    #[error("endpoint {0} does not exist")]
    NoSuchEndpoint(String),
    /// The endpoint already carries a wire, so it cannot take another.
    #[error("endpoint {endpoint} already carries wire {wire}")]
    EndpointBusy {
        /// The busy endpoint.
        endpoint: String,
        /// The wire it carries.
        wire: ConnectorId,
    },
    /// The endpoint carries a wire, so it cannot be removed.
    #[error("endpoint {endpoint} carries wire {wire}; disconnect it before removing the endpoint")]
    EndpointInUse {
        /// The endpoint.
        endpoint: String,
        /// The wire it carries.
        wire: ConnectorId,
    },
    /// A wire with this ID already exists.
    #[error("wire {} already exists ({existing}); disconnect it first", existing.id)]
    WireExists {
        /// The existing wire.
        existing: Wire,
    },
    /// No wire has this ID.
    #[error("wire {0} does not exist")]
    NoSuchWire(ConnectorId),
    /// A VXLAN wire's ID must fit the 24-bit VNI.
    #[error("VXLAN carries 24-bit VNIs: wire id {0} is above {max}; use --encap vwire", max = MAX_VNI)]
    VniOutOfRange(ConnectorId),
    /// A loopback wire from an endpoint to itself.
    #[error("cannot connect endpoint {0} to itself")]
    SelfLoop(String),
    /// The operation needs an encap wire.
    #[error("wire {0} is not an encap wire")]
    NotEncap(ConnectorId),
    /// The operation needs a loopback wire.
    #[error("wire {0} is not a loopback wire")]
    NotLoopback(ConnectorId),
    /// The endpoint is not an end of the wire.
    #[error("endpoint {endpoint} is not an end of wire {wire}")]
    NotAnEnd {
        /// The wire.
        wire: ConnectorId,
        /// The endpoint named.
        endpoint: String,
    },
    /// The remote VTEP address cannot be a unicast tunnel destination.
    #[error("invalid remote VTEP {vtep}: {reason}")]
    InvalidVtep {
        /// The refused address.
        vtep: Ipv4Addr,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl TableError {
    /// Stable snake_case code for the error's category, for APIs and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            TableError::InvalidEndpointName { .. } => "invalid_argument",
            TableError::EndpointExists(_) => "endpoint_exists",
            TableError::NoSuchEndpoint(_) => "no_such_endpoint",
            TableError::EndpointBusy { .. } => "endpoint_busy",
            TableError::EndpointInUse { .. } => "endpoint_busy",
            TableError::WireExists { .. } => "wire_exists",
            TableError::NoSuchWire(_) => "no_such_wire",
            TableError::VniOutOfRange(_) => "invalid_argument",
            TableError::SelfLoop(_) => "invalid_argument",
            TableError::InvalidVtep { .. } => "invalid_argument",
            TableError::NotEncap(_) | TableError::NotLoopback(_) | TableError::NotAnEnd { .. } => "invalid_argument",
        }
    }
}

/// Checks an endpoint name: 1 to 32 characters of `[A-Za-z0-9_.-]`.
pub fn validate_endpoint_name(name: &str) -> Result<(), TableError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        "only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"
    } else if name.len() > MAX_ENDPOINT_NAME_LEN {
        "must be at most 32 characters"
    } else if name.starts_with('.') {
        // `.` and `..` would make socket names `..sock` and `...sock`.
        "must not start with '.'"
    } else {
        return Ok(());
    };
    Err(TableError::InvalidEndpointName { name: name.to_string(), reason })
}

/// Checks that `vtep` can be the unicast destination of a tunnel.
pub fn validate_vtep(vtep: Ipv4Addr) -> Result<(), TableError> {
    let reason = if vtep.is_unspecified() {
        "unspecified address"
    } else if vtep.is_broadcast() {
        "broadcast address"
    } else if vtep.is_multicast() {
        "multicast address"
    } else if vtep.is_loopback() {
        "loopback address"
    } else if vtep.octets()[0] == 0 {
        "\"this network\" address (0.0.0.0/8)"
    } else if vtep.octets()[0] >= 240 {
        "reserved address (240.0.0.0/4)"
    } else {
        return Ok(());
    };
    Err(TableError::InvalidVtep { vtep, reason })
}

/// The set of endpoints and the wires between them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
///
/// Its maps are persistent (structurally shared): a copy costs O(1) and a
/// change to a copy O(log n), so the control plane can change a copy of the
/// configuration and commit it whatever the number of wires.
pub struct WireTable {
    endpoints: OrdSet<String>,
    wires: OrdMap<ConnectorId, Wire>,
    by_endpoint: HashMap<String, ConnectorId>,
}

impl WireTable {
    /// An empty table.
    pub fn new() -> WireTable {
        WireTable::default()
    }

    /// Adds an endpoint; refused if the name is invalid or already present.
    pub fn add_endpoint(&mut self, name: &str) -> Result<(), TableError> {
        validate_endpoint_name(name)?;
        if self.endpoints.contains(name) {
            return Err(TableError::EndpointExists(name.to_string()));
        }
        self.endpoints.insert(name.to_string());
        Ok(())
    }

    /// Removes an endpoint; refused if it does not exist or carries a wire.
    pub fn remove_endpoint(&mut self, name: &str) -> Result<(), TableError> {
        if !self.endpoints.contains(name) {
            return Err(TableError::NoSuchEndpoint(name.to_string()));
        }
        if let Some(&wire) = self.by_endpoint.get(name) {
            return Err(TableError::EndpointInUse { endpoint: name.to_string(), wire });
        }
        self.endpoints.remove(name);
        Ok(())
    }

    /// Creates wire `id` from `endpoint` to `peer` and returns it.
    ///
    /// Refused if the wire exists, the endpoint is unknown or busy, a local peer is the endpoint
    /// itself, unknown or busy, a remote VTEP is not a unicast address, or a VXLAN wire's ID
    /// does not fit in 24 bits.
    pub fn connect(&mut self, id: ConnectorId, endpoint: &str, peer: Peer) -> Result<&Wire, TableError> {
        if let Some(existing) = self.wires.get(&id) {
            return Err(TableError::WireExists { existing: existing.clone() });
        }
        self.check_free(endpoint)?;
        match &peer {
            Peer::Local(other) => {
                if other == endpoint {
                    return Err(TableError::SelfLoop(endpoint.to_string()));
                }
                self.check_free(other)?;
            }
            Peer::Remote { vtep, encap } => {
                validate_vtep(*vtep)?;
                if *encap == Encap::Vxlan && id.0 > MAX_VNI {
                    return Err(TableError::VniOutOfRange(id));
                }
            }
        }
        // Validation done: from here on nothing can fail.
        self.by_endpoint.insert(endpoint.to_string(), id);
        if let Peer::Local(other) = &peer {
            self.by_endpoint.insert(other.clone(), id);
        }
        let wire = Wire { id, endpoint: endpoint.to_string(), peer };
        Ok(self.wires.entry(id).or_insert(wire))
    }

    /// Removes wire `id` and returns it; refused if it does not exist.
    pub fn disconnect(&mut self, id: ConnectorId) -> Result<Wire, TableError> {
        let wire = self.wires.remove(&id).ok_or(TableError::NoSuchWire(id))?;
        self.by_endpoint.remove(&wire.endpoint);
        if let Peer::Local(other) = &wire.peer {
            self.by_endpoint.remove(other);
        }
        Ok(wire)
    }

    /// Points encap wire `id` at another remote VTEP (its remote end moved there).
    pub fn repoint(&mut self, id: ConnectorId, vtep: Ipv4Addr, encap: Encap) -> Result<&Wire, TableError> {
        validate_vtep(vtep)?;
        let w = self.wires.get(&id).ok_or(TableError::NoSuchWire(id))?;
        if w.kind() != WireKind::Encap {
            return Err(TableError::NotEncap(id));
        }
        if encap == Encap::Vxlan && id.0 > MAX_VNI {
            return Err(TableError::VniOutOfRange(id));
        }
        let w = self.wires.get_mut(&id).ok_or(TableError::NoSuchWire(id))?;
        w.peer = Peer::Remote { vtep, encap };
        Ok(w)
    }

    /// The remote end of encap wire `id` arrives here as endpoint `arriving`: the wire becomes
    /// a loopback wire `arriving` -> its local end.
    pub fn colocate(&mut self, id: ConnectorId, arriving: &str) -> Result<&Wire, TableError> {
        let w = self.wires.get(&id).ok_or(TableError::NoSuchWire(id))?;
        if w.kind() != WireKind::Encap {
            return Err(TableError::NotEncap(id));
        }
        if w.endpoint == arriving {
            return Err(TableError::SelfLoop(arriving.to_string()));
        }
        self.check_free(arriving)?;
        let resident = w.endpoint.clone();
        self.by_endpoint.insert(arriving.to_string(), id);
        let w = self.wires.get_mut(&id).ok_or(TableError::NoSuchWire(id))?;
        *w = Wire { id, endpoint: arriving.to_string(), peer: Peer::Local(resident) };
        Ok(w)
    }

    /// End `leaving` of loopback wire `id` moved to remote VTEP `vtep`: the wire becomes an
    /// encap wire from its other end, and `leaving` carries no wire any more.
    pub fn split(&mut self, id: ConnectorId, leaving: &str, vtep: Ipv4Addr, encap: Encap) -> Result<&Wire, TableError> {
        validate_vtep(vtep)?;
        let w = self.wires.get(&id).ok_or(TableError::NoSuchWire(id))?;
        let Some(other) = w.local_peer() else { return Err(TableError::NotLoopback(id)) };
        let staying = if w.endpoint == leaving {
            other.to_string()
        } else if other == leaving {
            w.endpoint.clone()
        } else {
            return Err(TableError::NotAnEnd { wire: id, endpoint: leaving.to_string() });
        };
        if encap == Encap::Vxlan && id.0 > MAX_VNI {
            return Err(TableError::VniOutOfRange(id));
        }
        self.by_endpoint.remove(leaving);
        let w = self.wires.get_mut(&id).ok_or(TableError::NoSuchWire(id))?;
        *w = Wire { id, endpoint: staying, peer: Peer::Remote { vtep, encap } };
        Ok(w)
    }

    /// The wire with this ID.
    pub fn wire(&self, id: ConnectorId) -> Option<&Wire> {
        self.wires.get(&id)
    }

    /// The wire carried by this endpoint (as either end of a loopback wire).
    pub fn wire_of(&self, endpoint: &str) -> Option<&Wire> {
        self.by_endpoint.get(endpoint).and_then(|id| self.wires.get(id))
    }

    /// All wires, ordered by ID.
    pub fn wires(&self) -> impl Iterator<Item = &Wire> {
        self.wires.values()
    }

    /// All endpoint names, sorted.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(String::as_str)
    }

    /// True if the endpoint exists.
    pub fn has_endpoint(&self, name: &str) -> bool {
        self.endpoints.contains(name)
    }

    /// Number of wires.
    pub fn wire_count(&self) -> usize {
        self.wires.len()
    }

    /// Number of endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Refuses an endpoint that does not exist or already carries a wire.
    fn check_free(&self, name: &str) -> Result<(), TableError> {
        if !self.endpoints.contains(name) {
            return Err(TableError::NoSuchEndpoint(name.to_string()));
        }
        if let Some(&wire) = self.by_endpoint.get(name) {
            return Err(TableError::EndpointBusy { endpoint: name.to_string(), wire });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn remote(encap: Encap) -> Peer {
        Peer::Remote { vtep: VTEP, encap }
    }

    /// vm1..vm4 exist; wire 7 is vm1 -> 10.0.0.2 vwire; wire 9 is the loopback vm2 -> vm3.
    fn table() -> WireTable {
        let mut t = WireTable::new();
        for name in ["vm1", "vm2", "vm3", "vm4"] {
            t.add_endpoint(name).unwrap();
        }
        t.connect(ConnectorId(7), "vm1", remote(Encap::Vwire)).unwrap();
        t.connect(ConnectorId(9), "vm2", Peer::Local("vm3".into())).unwrap();
        t
    }

    /// Runs a refused call on a copy of `t` and checks the error and that nothing changed.
    fn refused(t: &WireTable, f: impl FnOnce(&mut WireTable) -> Result<(), TableError>, code: &str, message: &str) {
        let mut copy = t.clone();
        let err = f(&mut copy).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        assert_eq!(err.to_string(), message);
        assert_eq!(&copy, t, "refused call changed the table: {err}");
    }

    #[test]
    fn happy_paths() {
        let mut t = table();
        assert_eq!(t.endpoints().collect::<Vec<_>>(), ["vm1", "vm2", "vm3", "vm4"]);
        assert_eq!(t.wire_count(), 2);
        assert_eq!(t.endpoint_count(), 4);
        let w7 = t.wire(ConnectorId(7)).unwrap();
        assert_eq!(w7.kind(), WireKind::Encap);
        assert_eq!(w7.to_string(), "vm1 -> 10.0.0.2 vwire");
        let w9 = t.wire_of("vm3").unwrap();
        assert_eq!((w9.id, w9.kind().name(), w9.endpoint.as_str()), (ConnectorId(9), "loopback", "vm2"));
        assert_eq!(w9.local_peer(), Some("vm3"));
        assert!(w9.touches("vm2") && w9.touches("vm3") && !w9.touches("vm1"));
        assert_eq!(t.wire_of("vm2").unwrap().id, ConnectorId(9));
        assert!(t.wire_of("vm4").is_none());

        let w = t.connect(ConnectorId(MAX_VNI), "vm4", remote(Encap::Vxlan)).unwrap();
        assert_eq!(w.to_string(), "vm4 -> 10.0.0.2 vxlan");
        assert_eq!(t.wires().map(|w| w.id.0).collect::<Vec<_>>(), [7, 9, MAX_VNI]);

        let w9 = t.disconnect(ConnectorId(9)).unwrap();
        assert_eq!(w9.peer, Peer::Local("vm3".into()));
        assert!(t.wire_of("vm2").is_none() && t.wire_of("vm3").is_none());
        t.remove_endpoint("vm3").unwrap();
        assert!(!t.has_endpoint("vm3") && t.has_endpoint("vm2"));
        t.connect(ConnectorId(9), "vm2", remote(Encap::Vwire)).unwrap();
        t.add_endpoint("A-z_0.9").unwrap();
        t.add_endpoint(&"x".repeat(32)).unwrap();
        assert_eq!(t.endpoints().next(), Some("A-z_0.9"));
        // vwire carries 32-bit connector IDs.
        t.add_endpoint("big").unwrap();
        t.connect(ConnectorId(u32::MAX), "big", remote(Encap::Vwire)).unwrap();
    }

    #[test]
    fn add_endpoint_refusals() {
        let t = table();
        refused(&t, |t| t.add_endpoint("vm1"), "endpoint_exists", "endpoint vm1 already exists");
        refused(&t, |t| t.add_endpoint(""), "invalid_argument", "invalid endpoint name \"\": must not be empty");
        let long = "x".repeat(33);
        refused(
            &t,
            |t| t.add_endpoint(&long),
            "invalid_argument",
            &format!("invalid endpoint name \"{long}\": must be at most 32 characters"),
        );
        for bad in ["vm 1", "vm/1", "vm1\n", "é", "vm:1"] {
            let err = t.clone().add_endpoint(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_argument");
            assert!(err.to_string().starts_with("invalid endpoint name"), "{err}");
            refused(&t, |t| t.add_endpoint(bad), "invalid_argument", &err.to_string());
        }
    }

    #[test]
    fn remove_endpoint_refusals() {
        let t = table();
        refused(&t, |t| t.remove_endpoint("vm9"), "no_such_endpoint", "endpoint vm9 does not exist");
        refused(
            &t,
            |t| t.remove_endpoint("vm1"),
            "endpoint_busy",
            "endpoint vm1 carries wire 7; disconnect it before removing the endpoint",
        );
        refused(
            &t,
            |t| t.remove_endpoint("vm3"),
            "endpoint_busy",
            "endpoint vm3 carries wire 9; disconnect it before removing the endpoint",
        );
    }

    #[test]
    fn connect_refusals() {
        let t = table();
        let connect = |id: u32, ep: &'static str, peer: Peer| {
            move |t: &mut WireTable| t.connect(ConnectorId(id), ep, peer).map(|_| ())
        };
        refused(
            &t,
            connect(7, "vm4", remote(Encap::Vxlan)),
            "wire_exists",
            "wire 7 already exists (vm1 -> 10.0.0.2 vwire); disconnect it first",
        );
        refused(
            &t,
            connect(9, "vm4", remote(Encap::Vxlan)),
            "wire_exists",
            "wire 9 already exists (vm2 -> vm3); disconnect it first",
        );
        refused(&t, connect(8, "vm9", remote(Encap::Vwire)), "no_such_endpoint", "endpoint vm9 does not exist");
        refused(&t, connect(8, "vm1", remote(Encap::Vwire)), "endpoint_busy", "endpoint vm1 already carries wire 7");
        refused(&t, connect(8, "vm3", remote(Encap::Vwire)), "endpoint_busy", "endpoint vm3 already carries wire 9");
        refused(&t, connect(8, "vm4", Peer::Local("vm9".into())), "no_such_endpoint", "endpoint vm9 does not exist");
        refused(
            &t,
            connect(8, "vm4", Peer::Local("vm1".into())),
            "endpoint_busy",
            "endpoint vm1 already carries wire 7",
        );
        refused(
            &t,
            connect(8, "vm4", Peer::Local("vm4".into())),
            "invalid_argument",
            "cannot connect endpoint vm4 to itself",
        );
        refused(
            &t,
            connect(MAX_VNI + 1, "vm4", remote(Encap::Vxlan)),
            "invalid_argument",
            "VXLAN carries 24-bit VNIs: wire id 16777216 is above 16777215; use --encap vwire",
        );
        for (vtep, reason) in [
            (Ipv4Addr::UNSPECIFIED, "unspecified address"),
            (Ipv4Addr::BROADCAST, "broadcast address"),
            (Ipv4Addr::new(239, 1, 2, 3), "multicast address"),
            (Ipv4Addr::new(224, 0, 0, 1), "multicast address"),
            (Ipv4Addr::LOCALHOST, "loopback address"),
            (Ipv4Addr::new(127, 9, 9, 9), "loopback address"),
        ] {
            refused(
                &t,
                connect(8, "vm4", Peer::Remote { vtep, encap: Encap::Vwire }),
                "invalid_argument",
                &format!("invalid remote VTEP {vtep}: {reason}"),
            );
        }
    }

    #[test]
    fn moves() {
        let mut t = table();
        let h3 = Ipv4Addr::new(10, 0, 0, 3);
        // Wire 7's remote end moves to another host.
        let w = t.repoint(ConnectorId(7), h3, Encap::Vxlan).unwrap();
        assert_eq!(w.to_string(), "vm1 -> 10.0.0.3 vxlan");
        // ... then onto this host, as vm4: a loopback wire.
        let w = t.colocate(ConnectorId(7), "vm4").unwrap();
        assert_eq!((w.kind(), w.to_string()), (WireKind::Loopback, "vm4 -> vm1".to_string()));
        assert_eq!(t.wire_of("vm4").unwrap().id, ConnectorId(7));
        // ... and away again: vm1 keeps the wire, vm4 is free.
        let w = t.split(ConnectorId(7), "vm4", VTEP, Encap::Vwire).unwrap();
        assert_eq!(w.to_string(), "vm1 -> 10.0.0.2 vwire");
        assert!(t.wire_of("vm4").is_none());
        assert_eq!(t.wire_of("vm1").unwrap().id, ConnectorId(7));
        t.remove_endpoint("vm4").unwrap();
        // The first end of a loopback wire can leave too.
        let w = t.split(ConnectorId(9), "vm2", h3, Encap::Vwire).unwrap();
        assert_eq!(w.to_string(), "vm3 -> 10.0.0.3 vwire");
    }

    #[test]
    fn move_refusals() {
        let t = table();
        let h3 = Ipv4Addr::new(10, 0, 0, 3);
        refused(
            &t,
            |t| t.repoint(ConnectorId(9), h3, Encap::Vwire).map(|_| ()),
            "invalid_argument",
            "wire 9 is not an encap wire",
        );
        refused(
            &t,
            |t| t.repoint(ConnectorId(8), h3, Encap::Vwire).map(|_| ()),
            "no_such_wire",
            "wire 8 does not exist",
        );
        refused(
            &t,
            |t| t.repoint(ConnectorId(7), Ipv4Addr::BROADCAST, Encap::Vwire).map(|_| ()),
            "invalid_argument",
            "invalid remote VTEP 255.255.255.255: broadcast address",
        );
        refused(
            &t,
            |t| t.colocate(ConnectorId(7), "vm2").map(|_| ()),
            "endpoint_busy",
            "endpoint vm2 already carries wire 9",
        );
        refused(
            &t,
            |t| t.colocate(ConnectorId(7), "vm1").map(|_| ()),
            "invalid_argument",
            "cannot connect endpoint vm1 to itself",
        );
        refused(
            &t,
            |t| t.colocate(ConnectorId(9), "vm4").map(|_| ()),
            "invalid_argument",
            "wire 9 is not an encap wire",
        );
        refused(
            &t,
            |t| t.split(ConnectorId(7), "vm1", h3, Encap::Vwire).map(|_| ()),
            "invalid_argument",
            "wire 7 is not a loopback wire",
        );
        refused(
            &t,
            |t| t.split(ConnectorId(9), "vm4", h3, Encap::Vwire).map(|_| ()),
            "invalid_argument",
            "endpoint vm4 is not an end of wire 9",
        );
    }

    #[test]
    fn disconnect_refusal() {
        let t = table();
        refused(&t, |t| t.disconnect(ConnectorId(8)).map(|_| ()), "no_such_wire", "wire 8 does not exist");
    }

    #[test]
    fn ids() {
        assert_eq!(ConnectorId(42).to_string(), "42");
        assert_eq!(ConnectorId::from(5u32), ConnectorId(5));
        assert_eq!(u32::from(ConnectorId(5)), 5);
        assert!(ConnectorId(1) < ConnectorId(2));
    }
}
