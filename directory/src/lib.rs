//! The endpoint directory: which host each endpoint lives on, and which
//! wires join which endpoints, shared by every fabric of a domain.
//!
//! * [`model`] is pure: the key layout, the records, and the [`View`] a
//!   fabric keeps of the directory, with what a wire's half on one host
//!   should be ([`View::half`]). It is unit-tested without any store.
//! * [`etcd`] is the etcd v3 backend: one thread with its own runtime,
//!   off the data path and off the control thread, that holds the host's
//!   lease, applies the fabric's changes (a wire's with compare-and-swap) and streams
//!   every change of the domain back as [`Event`]s, resyncing from a
//!   revision after a reconnection.
//!
//! The fabric's control thread never waits on the store: it sends an
//! [`Op`] with a tag and takes [`Event`]s at its next turn.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod etcd;
pub mod model;

pub use model::{Claim, EndpointRecord, Entry, HostRecord, Key, Keys, Versioned, View, VmState, WireRecord};

/// A change the fabric asks the store to make. Each carries the tag its
/// answer ([`Event::Done`]) comes back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes this host's key for endpoint `name` (only this host writes
    /// it, so no compare is needed).
    PutEndpoint {
        /// Endpoint name.
        name: String,
        /// What is written.
        record: EndpointRecord,
    },
    /// Deletes this host's key for endpoint `name`.
    DeleteEndpoint {
        /// Endpoint name.
        name: String,
    },
    /// Create wire `id` if no wire has that id.
    CreateWire {
        /// Connector ID.
        id: u32,
        /// The wire.
        record: WireRecord,
    },
    /// Delete wire `id` if its modification revision is still `expect`.
    DeleteWire {
        /// Connector ID.
        id: u32,
        /// The revision of the wire as the caller saw it.
        expect: i64,
    },
}

/// A change the store made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The revision it was made at.
    pub revision: i64,
    /// The revision the key was created at (a deletion: 0).
    pub created: i64,
}

/// Why the store refused or could not make a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// The key's revision was not the expected one: someone else changed it
    /// first. Carries the key's current revision (0: it does not exist).
    Conflict(i64),
    /// The store could not be reached or did not answer in time.
    Unavailable(String),
    /// The store refused (permissions, say).
    Refused(String),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Conflict(0) => write!(f, "changed by another host first (the key is gone)"),
            OpError::Conflict(r) => write!(f, "changed by another host first (now at revision {r})"),
            OpError::Unavailable(m) => write!(f, "directory unavailable: {m}"),
            OpError::Refused(m) => write!(f, "refused by the directory: {m}"),
        }
    }
}

/// What the backend tells the fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The whole domain as of `revision` (at the first connection, and after
    /// a reconnection that could not resume from the last revision): the
    /// view is replaced.
    Reset {
        /// Every key of the domain with its value and revisions.
        entries: Vec<Entry>,
        /// The store's revision the entries are from.
        revision: i64,
    },
    /// A key was written.
    Put {
        /// Full key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Its modification revision.
        revision: i64,
        /// Its creation revision.
        created: i64,
    },
    /// A key was deleted (or its lease expired).
    Delete {
        /// Full key.
        key: String,
        /// The revision of the deletion.
        revision: i64,
    },
    /// The store is reachable again, or for the first time.
    Connected {
        /// The endpoint (URL) answering.
        endpoint: String,
    },
    /// The store cannot be reached; the backend keeps trying.
    Unavailable {
        /// Why, for the log and `status`.
        reason: String,
    },
    /// The answer to the op sent with `tag`.
    Done {
        /// The op's tag.
        tag: u64,
        /// Its outcome.
        result: Result<Written, OpError>,
    },
}
