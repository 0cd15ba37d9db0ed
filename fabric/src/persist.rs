//! The state file: endpoints and wires, persisted on every change and
//! restored at start, so a restarted fabric comes back with its
//! configuration.
//!
//! [`Store`] persists each change in O(1) amortized time, however many
//! endpoints and wires there are, as a base plus a journal (the framing and
//! the atomic file replacement are in `journal.rs`). With `--state STATE`:
//!
//! * `STATE` is the base: the whole configuration as pretty JSON,
//!   `{"version": 2, "generation": G, "endpoints": [...], "wires": [...]}`.
//!   Only compaction writes it, atomically: `.STATE.tmp` is written and
//!   fsynced, renamed over `STATE`, and the directory fsynced.
//! * `STATE.journal` holds the changes made since that base was written.
//!   Line 1 is a header, `{"journal":1,"generation":G}`; every later line
//!   is one call to [`Store::record_all`], a JSON array of [`Change`]s.
//!   Each line begins with its CRC-32 as 8 hex digits and a space, and is
//!   fdatasynced before the call returns.
//! * Reading replays the journal over the base, in order. The journal only
//!   counts if its generation is the base's: compaction writes the base
//!   with generation G+1 first and the new, empty journal second, so a
//!   crash between the two leaves a journal of generation G whose changes
//!   the new base already holds, and it is ignored.
//! * Compaction runs once the journal holds more than
//!   max(1024, 2 × live entries) changes, so its O(n) cost is spread over
//!   at least as many O(log n) changes.
//! * A torn last line (power loss during an append) is dropped, reported
//!   as a [`Warning`] and cut off the file; a damaged line before the last
//!   one is an error naming the file and the line.
//!
//! Version 1 is the older format, which [`save`] still writes: the whole
//! configuration rewritten on every change, with no generation and no
//! journal. [`Store::open`] reads it as generation 0 (a journal never has
//! generation 0), and the first change recorded rewrites it as version 2.
//! The version changes so that a vwfabric that reads only version 1 refuses
//! the base instead of silently ignoring the journal next to it.
//!
//! [`save`] writes a temporary file next to the state file, fsyncs it,
//! renames it over the old one and fsyncs the directory: after a crash the
//! file is either the old configuration or the new one, never a mix.

// Until control.rs moves from `save`/`load` to `Store`, parts of this
// module have no caller outside its tests; the expectation fails once they
// all do, so this line goes then.

use crate::journal::{self, Journal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use vw_ctl::proto::{EncapName, EndpointSpec};

/// Format version of the whole-file state that [`save`] writes and
/// [`load`] reads.
pub const VERSION: u32 = 1;

/// Format version of a base written by [`Store`] (a state file with a
/// journal next to it).
pub const BASE_VERSION: u32 = 2;

/// Format version of the journal header.
const JOURNAL_VERSION: u32 = 1;

/// The journal is compacted once it holds more changes than this, or than
/// twice the live entries if that is more.
const COMPACT_MIN: usize = 1024;

/// An endpoint as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEndpoint {
    /// Name.
    pub name: String,
    /// How to create it.
    pub spec: EndpointSpec,
    /// Who added it and what the fabric created for it.
    #[serde(default, skip_serializing_if = "Origin::is_default")]
    pub origin: Origin,
}

/// Who added an endpoint and what the fabric created for it, so that a
/// restart neither grants what the operator no longer allows nor removes
/// what the fabric did not create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Added by a member of the socket group (not an operator).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub member: bool,
    /// Root let the socket group use it (`endpoint add --group`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group: bool,
    /// The inode of the server-mode vhost-user socket the fabric created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_ino: Option<u64>,
}

impl Origin {
    /// Whether members of the socket group may use the endpoint.
    pub fn group_may_use(&self) -> bool {
        self.member || self.group
    }

    fn is_default(&self) -> bool {
        *self == Origin::default()
    }
}

/// A wire as saved (the arguments of `connect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWire {
    /// Wire id.
    pub wire: u32,
    /// Local endpoint.
    pub endpoint: String,
    /// Peer: local endpoint name or remote VTEP address.
    pub peer: String,
    /// Format, for a remote peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapName>,
    /// When the local end arrived here (ns since the Unix epoch), for
    /// ordering moves after a restart (see docs/migration.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub local_ns: u64,
    /// When the remote end arrived at its current host, as it announced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub remote_ns: u64,
    /// This half was set up from the endpoint directory (which then also
    /// removes it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
    /// A secure wire's keys and sequence floors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SavedSecure>,
}

/// What a restart needs of a secure wire: its keys (the state file and its
/// journal are mode 0600) and the sequence numbers it may not go below.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSecure {
    /// The keys, as given at connect.
    pub keys: vw_ctl::proto::SecureKeys,
    /// The outbound SA sends from here after a restart: above every
    /// number it may have used.
    pub out_floor: u64,
    /// The inbound SA accepts only numbers above this after a restart.
    pub in_floor: u64,
    /// A rekey that had not switched the outbound SA yet: a restart
    /// installs its inbound SA again and waits for the switch anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<SavedRekey>,
}

/// A rekey under way (`vwctl rekey`), as the state file keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRekey {
    /// The new keys.
    pub keys: vw_ctl::proto::SecureKeys,
    /// The longest the outbound SA waits for the far end's new keys, ms.
    pub switch_in_ms: u64,
}

impl std::fmt::Debug for SavedSecure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedSecure")
            .field("keys", &self.keys)
            .field("out_floor", &self.out_floor)
            .field("in_floor", &self.in_floor)
            .field("next", &self.next.as_ref().map(|n| &n.keys))
            .finish()
    }
}

/// A connect armed to be made when the endpoint's VM starts here
/// (`connect --incoming`, the destination of a live migration). Kept apart
/// from the wires: wire `wire` may exist already, as the encap wire the
/// VM's arrival turns loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedIncoming {
    /// The endpoint whose VM is awaited.
    pub endpoint: String,
    /// Wire id.
    pub wire: u32,
    /// Peer, as at connect.
    pub peer: String,
    /// Format, as at connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapName>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The whole saved configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Format version.
    pub version: u32,
    /// Endpoints, in the order to create them.
    pub endpoints: Vec<SavedEndpoint>,
    /// Wires.
    pub wires: Vec<SavedWire>,
    /// Armed connects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incoming: Vec<SavedIncoming>,
    /// Fingerprints of every outbound key a secure wire used here: a key
    /// is used once (see `secure::fingerprint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_keys: Vec<String>,
}

/// Writes `state` to `path` atomically (write, fsync, rename, fsync dir),
/// in the whole-file format (version 1) that older builds wrote: the tests
/// check that such files are still read.
#[cfg(test)]
pub fn save(path: &Path, state: &Saved) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(state).map_err(io::Error::other)?;
    text.push('\n');
    journal::replace(path, text.as_bytes()).map(drop)
}

/// Reads a whole-file state (version 1); `Ok(None)` if there is none yet.
#[cfg(test)]
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the state file {}: {e}", path.display())),
    };
    let saved: Saved =
        serde_json::from_str(&text).map_err(|e| format!("the state file {} is not valid: {e}", path.display()))?;
    if saved.version != VERSION {
        return Err(format!(
            "the state file {} has version {}, this vwfabric reads {VERSION}",
            path.display(),
            saved.version
        ));
    }
    Ok(Some(saved))
}

/// One change to the configuration, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// An endpoint was added. One that already has this name is replaced
    /// and, as it was added last, is now recreated last.
    EndpointAdded {
        /// Name.
        name: String,
        /// How to create it.
        spec: EndpointSpec,
        /// Who added it, what was created for it.
        #[serde(default, skip_serializing_if = "Origin::is_default")]
        origin: Origin,
    },
    /// An endpoint was removed (nothing happens if there is none by that
    /// name).
    EndpointRemoved {
        /// Name.
        name: String,
    },
    /// A wire was connected, or its move timestamps changed: it replaces
    /// the wire with the same id, if any.
    WireSaved(SavedWire),
    /// A wire was disconnected (nothing happens if there is none).
    WireRemoved {
        /// Wire id.
        wire: u32,
    },
    /// A connect was armed for an endpoint's VM: it replaces the one for
    /// the same endpoint, if any.
    IncomingArmed(SavedIncoming),
    /// The endpoint's armed connect was made or cancelled (nothing happens
    /// if there is none).
    IncomingDone {
        /// The endpoint.
        endpoint: String,
    },
    /// A secure wire began to use an outbound key (its fingerprint).
    KeyUsed {
        /// See `secure::fingerprint`.
        fingerprint: String,
    },
}

/// Something [`Store::open`] found and worked around; worth a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    /// The last record was cut short by a crash or power loss during its
    /// append, so the change it held was never reported as saved.
    #[error(
        "{}: the last record (line {line}) is incomplete, left by a crash or power loss while it was written; \
         it was dropped",
        file.display()
    )]
    TornRecord {
        /// The journal.
        file: PathBuf,
        /// Its line number.
        line: usize,
    },
    /// The journal belongs to an older base: a crash came between writing
    /// a new base and starting its journal, and the base holds the changes.
    #[error(
        "{}: generation {found} does not match the state file's generation {expected}, as a crash while the \
         state file was rewritten leaves it; ignored, the state file holds its changes",
        file.display()
    )]
    StaleJournal {
        /// The journal.
        file: PathBuf,
        /// Its generation.
        found: u64,
        /// The base's generation.
        expected: u64,
    },
    /// There is a journal but no state file (it was removed to start
    /// afresh, presumably).
    #[error("{}: there is no state file for it; ignored", file.display())]
    OrphanJournal {
        /// The journal.
        file: PathBuf,
    },
    /// The journal could be read but not opened for writing; the next
    /// change rewrites the base and starts a new journal instead.
    #[error("{}: cannot be opened for writing ({error}); the next change rewrites the state file", file.display())]
    JournalUnwritable {
        /// The journal.
        file: PathBuf,
        /// Why.
        error: String,
    },
}

/// The journal's path for the state file `path`: `STATE.journal`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "state".into());
    name.push(".journal");
    journal::parent_dir(path).join(name)
}

/// The configuration in a form each change updates in O(log n).
#[derive(Debug, Default)]
struct Live {
    /// Endpoints by the order they were added in: the key grows with every
    /// addition, so iterating gives the order to recreate them in.
    endpoints: BTreeMap<u64, SavedEndpoint>,
    /// Each endpoint name's key in `endpoints`.
    order: BTreeMap<String, u64>,
    /// The next key for `endpoints`.
    next: u64,
    /// Wires by id.
    wires: BTreeMap<u32, SavedWire>,
    /// Armed connects by endpoint.
    incoming: BTreeMap<String, SavedIncoming>,
    /// Outbound keys used, by fingerprint.
    used_keys: std::collections::BTreeSet<String>,
}

impl Live {
    fn from_saved(
        endpoints: Vec<SavedEndpoint>,
        wires: Vec<SavedWire>,
        incoming: Vec<SavedIncoming>,
        used_keys: Vec<String>,
    ) -> Live {
        let mut live = Live { used_keys: used_keys.into_iter().collect(), ..Live::default() };
        for SavedEndpoint { name, spec, origin } in endpoints {
            live.add_endpoint(name, spec, origin);
        }
        for w in wires {
            live.wires.insert(w.wire, w);
        }
        for i in incoming {
            live.incoming.insert(i.endpoint.clone(), i);
        }
        live
    }

    fn add_endpoint(&mut self, name: String, spec: EndpointSpec, origin: Origin) {
        self.remove_endpoint(&name);
        let key = self.next;
        self.next += 1;
        self.order.insert(name.clone(), key);
        self.endpoints.insert(key, SavedEndpoint { name, spec, origin });
    }

    fn remove_endpoint(&mut self, name: &str) {
        if let Some(key) = self.order.remove(name) {
            self.endpoints.remove(&key);
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::EndpointAdded { name, spec, origin } => self.add_endpoint(name.clone(), spec.clone(), *origin),
            Change::EndpointRemoved { name } => self.remove_endpoint(name),
            Change::WireSaved(w) => {
                self.wires.insert(w.wire, w.clone());
            }
            Change::WireRemoved { wire } => {
                self.wires.remove(wire);
            }
            Change::IncomingArmed(i) => {
                self.incoming.insert(i.endpoint.clone(), i.clone());
            }
            Change::IncomingDone { endpoint } => {
                self.incoming.remove(endpoint);
            }
            Change::KeyUsed { fingerprint } => {
                self.used_keys.insert(fingerprint.clone());
            }
        }
    }

    fn len(&self) -> usize {
        self.endpoints.len() + self.wires.len() + self.incoming.len()
    }

    fn to_saved(&self) -> Saved {
        Saved {
            version: VERSION,
            endpoints: self.endpoints.values().cloned().collect(),
            wires: self.wires.values().cloned().collect(),
            incoming: self.incoming.values().cloned().collect(),
            used_keys: self.used_keys.iter().cloned().collect(),
        }
    }
}

/// The base as written.
#[derive(Serialize)]
struct BaseOut<'a> {
    version: u32,
    generation: u64,
    endpoints: Vec<&'a SavedEndpoint>,
    wires: Vec<&'a SavedWire>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    incoming: Vec<&'a SavedIncoming>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    used_keys: Vec<&'a String>,
}

/// The base as read: version 1 (no generation) or 2.
#[derive(Deserialize)]
struct BaseIn {
    version: u32,
    #[serde(default)]
    generation: u64,
    endpoints: Vec<SavedEndpoint>,
    wires: Vec<SavedWire>,
    #[serde(default)]
    incoming: Vec<SavedIncoming>,
    #[serde(default)]
    used_keys: Vec<String>,
}

/// Line 1 of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    journal: u32,
    generation: u64,
}

/// Reads the base: its generation and contents, `None` if there is none.
fn read_base(path: &Path) -> Result<Option<(u64, Live)>, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the state file {}: {e}", path.display())),
    };
    let base: BaseIn =
        serde_json::from_str(&text).map_err(|e| format!("the state file {} is not valid: {e}", path.display()))?;
    let generation = match base.version {
        VERSION => 0,
        BASE_VERSION => base.generation,
        v => {
            return Err(format!(
                "the state file {} has version {v}, this vwfabric reads {VERSION} and {BASE_VERSION}",
                path.display()
            ))
        }
    };
    Ok(Some((generation, Live::from_saved(base.endpoints, base.wires, base.incoming, base.used_keys))))
}

/// The persisted configuration: a base and a journal (see the module
/// documentation), and the same configuration in memory.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    journal_path: PathBuf,
    live: Live,
    /// The base's generation on disk, or the one being written.
    generation: u64,
    /// The journal of `generation`, open for appending. `None` when there
    /// is none yet, or it may no longer be appended to (an append or a
    /// compaction failed half-way): the next change compacts first, which
    /// writes a new base and a new journal.
    journal: Option<Journal>,
    /// Changes in the journal.
    records: usize,
    /// After a failed compaction, when to try again: not at every change,
    /// which would make each one O(n) while the disk stays full.
    retry_at: usize,
    warnings: Vec<Warning>,
}

impl Store {
    /// Opens the state file `path` (and its journal): returns the store
    /// and the configuration it holds, `None` if there is no state file
    /// yet. Reads both formats (see the module documentation).
    ///
    /// A torn last record is dropped and cut off the file rather than
    /// failing; see [`Store::warnings`]. Fails if a file cannot be read or
    /// is damaged in a way a crash cannot explain.
    pub fn open(path: &Path) -> Result<(Store, Option<Saved>), String> {
        let journal_path = journal_path(path);
        let base = read_base(path)?;
        let mut warnings = Vec::new();
        let exists = base.is_some();
        let (base_generation, mut live) = match base {
            Some((g, live)) => (Some(g), live),
            None => (None, Live::default()),
        };
        let mut journal = None;
        let mut records = 0;
        match fs::read(&journal_path) {
            Ok(bytes) => {
                let parsed = journal::parse(&bytes).map_err(|e| {
                    format!(
                        "the state journal {}: {e}, and it is not the last line, so it is not a write cut short by \
                         a crash; restore it from a backup, or move it away to start from {} alone (without the \
                         changes made since that was last rewritten)",
                        journal_path.display(),
                        path.display()
                    )
                })?;
                if let Some(line) = parsed.torn {
                    warnings.push(Warning::TornRecord { file: journal_path.clone(), line });
                }
                let mut lines = parsed.records.into_iter();
                // No header: the journal is empty, or its only line was torn.
                if let Some(first) = lines.next() {
                    let header: Header = serde_json::from_str(first.payload)
                        .ok()
                        .filter(|h: &Header| h.journal == JOURNAL_VERSION)
                        .ok_or_else(|| {
                            format!(
                                "{}: line 1 is not the header of a state journal this vwfabric reads \
                                 (version {JOURNAL_VERSION})",
                                journal_path.display()
                            )
                        })?;
                    match base_generation {
                        None => warnings.push(Warning::OrphanJournal { file: journal_path.clone() }),
                        Some(g) if g != header.generation => warnings.push(Warning::StaleJournal {
                            file: journal_path.clone(),
                            found: header.generation,
                            expected: g,
                        }),
                        Some(_) => {
                            for r in lines {
                                let changes: Vec<Change> = serde_json::from_str(r.payload).map_err(|e| {
                                    format!(
                                        "{}: line {} is intact but does not hold changes this vwfabric \
                                         understands: {e}",
                                        journal_path.display(),
                                        r.line
                                    )
                                })?;
                                for c in &changes {
                                    live.apply(c);
                                }
                                records += changes.len();
                            }
                            match Journal::open(&journal_path, parsed.valid_len) {
                                Ok(j) => journal = Some(j),
                                Err(e) => warnings.push(Warning::JournalUnwritable {
                                    file: journal_path.clone(),
                                    error: e.to_string(),
                                }),
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read the state journal {}: {e}", journal_path.display())),
        }
        let saved = exists.then(|| live.to_saved());
        let store = Store {
            path: path.to_path_buf(),
            journal_path,
            live,
            generation: base_generation.unwrap_or(0),
            journal,
            records,
            retry_at: 0,
            warnings,
        };
        Ok((store, saved))
    }

    /// What [`Store::open`] found and worked around.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration as it now stands (O(n): for status, not per
    /// change).
    #[cfg(test)]
    pub fn saved(&self) -> Saved {
        self.live.to_saved()
    }

    /// Whether a secure wire used the outbound key of this fingerprint.
    pub fn key_used(&self, fingerprint: &str) -> bool {
        self.live.used_keys.contains(fingerprint)
    }

    /// Records one change; it is on disk when this returns `Ok`.
    #[cfg(test)]
    pub fn record(&mut self, change: &Change) -> io::Result<()> {
        self.record_all(std::slice::from_ref(change))
    }

    /// Records several changes with one write and one fdatasync. They are
    /// one journal line, so after a crash either all of them are there or
    /// none.
    ///
    /// On error nothing was recorded and the configuration in memory is
    /// unchanged.
    pub fn record_all(&mut self, changes: &[Change]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let payload = serde_json::to_string(changes).map_err(io::Error::other)?;
        let line = journal::encode(&payload)?;
        if self.journal.is_none() {
            self.compact()?;
        }
        let Some(j) = self.journal.as_mut() else {
            return Err(io::Error::other("the state journal was not started"));
        };
        if let Err(e) = j.append(&line) {
            self.journal = None;
            return Err(e);
        }
        for c in changes {
            self.live.apply(c);
        }
        self.records += changes.len();
        if self.records > self.compact_at() && self.records >= self.retry_at {
            // The changes are durable already, so a failed compaction is
            // not their failure: the journal keeps growing until a later
            // one succeeds, or, if it failed after touching the base, the
            // next change compacts first.
            if let Err(e) = self.compact() {
                self.retry_at = self.records + self.compact_at();
                crate::log(&format!("cannot compact the state file {}: {e}; retrying later", self.path.display()));
            }
        }
        Ok(())
    }

    /// How many changes the journal may hold before it is compacted.
    fn compact_at(&self) -> usize {
        COMPACT_MIN.max(2 * self.live.len())
    }

    /// Writes the configuration as a new base and starts an empty journal.
    /// Runs by itself when the journal is long enough.
    pub fn compact(&mut self) -> io::Result<()> {
        let generation = self.generation + 1;
        let base = BaseOut {
            version: BASE_VERSION,
            generation,
            endpoints: self.live.endpoints.values().collect(),
            wires: self.live.wires.values().collect(),
            incoming: self.live.incoming.values().collect(),
            used_keys: self.live.used_keys.iter().collect(),
        };
        let mut text = serde_json::to_string_pretty(&base).map_err(io::Error::other)?;
        text.push('\n');
        let header =
            serde_json::to_string(&Header { journal: JOURNAL_VERSION, generation }).map_err(io::Error::other)?;
        // Until the rename the old base and journal stand and stay usable.
        let prepared = journal::prepare(&self.path, text.as_bytes())?;
        // From here the base on disk may be the new one, which makes the old
        // journal stale: a change appended to it would be ignored at the
        // next start.
        self.journal = None;
        self.generation = generation;
        self.records = 0;
        self.retry_at = 0;
        prepared.commit()?;
        // The directory fsync in `commit` orders the base's rename before
        // the journal's: a journal of generation G+1 never outlives a crash
        // that loses the base of G+1.
        self.journal = Some(Journal::create(&self.journal_path, &header)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fresh directory for one test.
    fn tempdir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vw-persist-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn tap(name: &str) -> Change {
        Change::EndpointAdded {
            name: name.into(),
            spec: EndpointSpec::Dpdk { devargs: format!("net_tap,iface={name}") },
            origin: Origin::default(),
        }
    }

    fn wire(id: u32, endpoint: &str, peer: &str, local_ns: u64) -> SavedWire {
        SavedWire {
            wire: id,
            endpoint: endpoint.into(),
            peer: peer.into(),
            encap: peer.contains('.').then_some(EncapName::Vxlan),
            local_ns,
            remote_ns: 0,
            directory: id.is_multiple_of(2),
            secure: None,
        }
    }

    fn endpoint_names(s: &Saved) -> Vec<&str> {
        s.endpoints.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempdir("whole-file");
        let path = dir.join("state.json");
        assert_eq!(load(&path).unwrap(), None);
        let s = Saved {
            version: VERSION,
            endpoints: vec![
                SavedEndpoint {
                    name: "vm1".into(),
                    spec: EndpointSpec::Dpdk { devargs: "net_tap1,iface=a".into() },
                    origin: Origin::default(),
                },
                SavedEndpoint {
                    name: "vm2".into(),
                    spec: EndpointSpec::VhostUser { path: "/tmp/x.sock".into(), client: true, queues: 2 },
                    origin: Origin::default(),
                },
            ],
            wires: vec![SavedWire {
                wire: 7,
                endpoint: "vm1".into(),
                peer: "10.0.0.2".into(),
                encap: Some(EncapName::Vxlan),
                local_ns: 1_700_000_000_000_000_000,
                remote_ns: 0,
                directory: true,
                secure: None,
            }],
            incoming: vec![],
            used_keys: vec![],
        };
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), Some(s.clone()));
        // Only the state file remains: the temporary was renamed over it.
        assert_eq!(names(&dir), vec!["state.json"]);
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("not valid"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_of_a_sequence_of_changes() {
        let dir = tempdir("round-trip");
        let path = dir.join("state.json");
        let (mut store, saved) = Store::open(&path).unwrap();
        assert_eq!(saved, None);
        assert!(store.warnings().is_empty());
        assert_eq!(store.path(), path);
        for n in ["vm1", "vm2", "vm3"] {
            store.record(&tap(n)).unwrap();
        }
        store.record(&Change::WireSaved(wire(1, "vm1", "vm2", 0))).unwrap();
        store.record(&Change::WireSaved(wire(2, "vm3", "10.0.0.2", 5))).unwrap();
        // A move updates wire 2's timestamps in place.
        store.record(&Change::WireSaved(wire(2, "vm3", "10.0.0.2", 9))).unwrap();
        store.record(&Change::WireRemoved { wire: 1 }).unwrap();
        store.record(&Change::EndpointRemoved { name: "vm2".into() }).unwrap();
        // Re-adding a name puts it last, with its new spec.
        store
            .record_all(&[
                Change::EndpointAdded {
                    name: "vm1".into(),
                    spec: EndpointSpec::VhostUser { path: "/run/vm1.sock".into(), client: false, queues: 4 },
                    origin: Origin { member: true, group: false, socket_ino: Some(77) },
                },
                tap("vm4"),
                Change::WireSaved(wire(3, "vm4", "vm1", 0)),
            ])
            .unwrap();
        // Removing what is not there changes nothing.
        store.record(&Change::WireRemoved { wire: 99 }).unwrap();
        store.record_all(&[]).unwrap();

        let now = store.saved();
        assert_eq!(endpoint_names(&now), vec!["vm3", "vm1", "vm4"]);
        assert_eq!(
            now.endpoints[1].spec,
            EndpointSpec::VhostUser { path: "/run/vm1.sock".into(), client: false, queues: 4 }
        );
        assert_eq!(now.wires, vec![wire(2, "vm3", "10.0.0.2", 9), wire(3, "vm4", "vm1", 0)]);
        assert_eq!(store.records, 12);
        drop(store);

        assert_eq!(names(&dir), vec!["state.json", "state.json.journal"]);
        let (store, saved) = Store::open(&path).unwrap();
        assert!(store.warnings().is_empty(), "{:?}", store.warnings());
        assert_eq!(saved, Some(now.clone()));
        assert_eq!(store.saved(), now);
        // The base is still the empty configuration the first change wrote:
        // everything else is in the journal.
        let base = fs::read_to_string(&path).unwrap();
        assert!(base.contains("\"generation\": 1") && base.contains("\"endpoints\": []"), "{base}");
        let journal = fs::read_to_string(journal_path(&path)).unwrap();
        assert_eq!(journal.lines().count(), 1 + 10);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_armed_connect_is_kept_until_it_is_made_and_survives_compaction() {
        let dir = tempdir("incoming");
        let path = dir.join("state.json");
        let (mut store, _) = Store::open(&path).unwrap();
        store.record_all(&[tap("vma"), tap("vmb")]).unwrap();
        // Wire 7 exists (vma's, to another host) and vmb's VM, arriving,
        // would turn it loopback: both are kept.
        store.record(&Change::WireSaved(wire(7, "vma", "10.0.0.2", 0))).unwrap();
        let armed = SavedIncoming { endpoint: "vmb".into(), wire: 7, peer: "vma".into(), encap: None };
        store.record(&Change::IncomingArmed(armed.clone())).unwrap();
        drop(store);
        let (mut store, saved) = Store::open(&path).unwrap();
        let saved = saved.unwrap();
        assert_eq!((saved.wires.len(), saved.incoming.clone()), (1, vec![armed.clone()]));
        store.compact().unwrap();
        drop(store);
        let (mut store, saved) = Store::open(&path).unwrap();
        assert_eq!(saved.unwrap().incoming, vec![armed]);
        // The VM started: the connect is made.
        store
            .record_all(&[Change::WireSaved(wire(7, "vmb", "vma", 0)), Change::IncomingDone { endpoint: "vmb".into() }])
            .unwrap();
        drop(store);
        let (_, saved) = Store::open(&path).unwrap();
        let saved = saved.unwrap();
        assert_eq!((saved.wires, saved.incoming), (vec![wire(7, "vmb", "vma", 0)], vec![]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secure_wires_keep_keys_floors_and_used_keys_in_owner_only_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("secure");
        let path = dir.join("state.json");
        let (mut store, _) = Store::open(&path).unwrap();
        let keys = vw_ctl::proto::SecureKeys {
            out_spi: 0x1001,
            out_key: "0x0123456789abcdef0123456789abcdef01020304".into(),
            in_spi: 0x2002,
            in_key: "0x1123456789abcdef0123456789abcdef01020304".into(),
            lifetime: None,
        };
        let secure = SavedSecure { keys, out_floor: 1 << 22, in_floor: 77, next: None };
        let w = SavedWire { secure: Some(secure.clone()), ..wire(7, "vm1", "10.0.0.2", 0) };
        store.record_all(&[Change::KeyUsed { fingerprint: "ab".repeat(16) }, Change::WireSaved(w.clone())]).unwrap();
        assert!(!format!("{w:?}").contains("0123456789"), "Debug hides the keys");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for _ in 0..2 {
            drop(store);
            let (s, saved) = Store::open(&path).unwrap();
            store = s;
            assert!(store.key_used(&"ab".repeat(16)) && !store.key_used("cd"));
            assert_eq!(saved.unwrap().wires, vec![w.clone()]);
            for p in [&path, &journal_path(&path)] {
                if p.exists() {
                    assert_eq!(mode(p), 0o600, "{}", p.display());
                }
            }
            store.compact().unwrap();
        }
        // Disconnected: the key stays used.
        store.record(&Change::WireRemoved { wire: 7 }).unwrap();
        store.compact().unwrap();
        drop(store);
        let (store, saved) = Store::open(&path).unwrap();
        assert!(saved.unwrap().wires.is_empty() && store.key_used(&"ab".repeat(16)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopens_after_compaction() {
        let dir = tempdir("compaction");
        let path = dir.join("state.json");
        let (mut store, _) = Store::open(&path).unwrap();
        store.record_all(&[tap("a"), tap("b"), tap("c")]).unwrap();
        store.record(&Change::WireSaved(wire(1, "a", "b", 0))).unwrap();
        store.compact().unwrap();
        assert_eq!(store.generation, 2);
        assert_eq!(store.records, 0);
        // Changes after the compaction go to the new journal.
        store.record(&Change::EndpointRemoved { name: "a".into() }).unwrap();
        store.record(&Change::WireSaved(wire(2, "b", "c", 3))).unwrap();
        let now = store.saved();
        drop(store);
        // No temporary is left behind.
        assert_eq!(names(&dir), vec!["state.json", "state.json.journal"]);
        let journal = fs::read_to_string(journal_path(&path)).unwrap();
        assert_eq!(journal.lines().count(), 3, "{journal}");
        assert!(journal.lines().next().unwrap().ends_with(r#"{"journal":1,"generation":2}"#), "{journal}");

        let (mut store, saved) = Store::open(&path).unwrap();
        assert_eq!(saved.as_ref(), Some(&now));
        assert_eq!(endpoint_names(&now), vec!["b", "c"]);
        assert_eq!(now.wires.len(), 2);
        // And it keeps working from there.
        store.record(&Change::WireRemoved { wire: 1 }).unwrap();
        drop(store);
        let (_, saved) = Store::open(&path).unwrap();
        assert_eq!(saved.unwrap().wires, vec![wire(2, "b", "c", 3)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_last_record_is_dropped_and_cut_off() {
        let dir = tempdir("torn");
        let path = dir.join("state.json");
        let jpath = journal_path(&path);
        let (mut store, _) = Store::open(&path).unwrap();
        store.record_all(&[tap("a"), tap("b")]).unwrap();
        store.record(&Change::WireSaved(wire(1, "a", "b", 0))).unwrap();
        let before = store.saved();
        drop(store);
        let intact = fs::read(&jpath).unwrap();

        // Power loss in the middle of appending the next record.
        let next = journal::encode(&serde_json::to_string(&[tap("c")]).unwrap()).unwrap();
        fs::OpenOptions::new().append(true).open(&jpath).unwrap().write_all(&next[..next.len() / 2]).unwrap();
        let (mut store, saved) = Store::open(&path).unwrap();
        assert_eq!(saved, Some(before.clone()));
        assert_eq!(store.warnings(), &[Warning::TornRecord { file: jpath.clone(), line: 4 }]);
        assert!(store.warnings()[0].to_string().contains("line 4"));
        // Cut off, so what comes next does not follow garbage.
        assert_eq!(fs::read(&jpath).unwrap(), intact);
        store.record(&tap("d")).unwrap();
        drop(store);
        let (store, saved) = Store::open(&path).unwrap();
        assert!(store.warnings().is_empty());
        assert_eq!(endpoint_names(saved.as_ref().unwrap()), vec!["a", "b", "d"]);
        drop(store);

        // A whole last line whose checksum fails (the filesystem kept the
        // size but not the data) is dropped the same way.
        let mut bytes = fs::read(&jpath).unwrap();
        let n = bytes.len();
        bytes[n - 3] = b'#';
        fs::write(&jpath, &bytes).unwrap();
        let (store, saved) = Store::open(&path).unwrap();
        assert_eq!(saved, Some(before));
        assert_eq!(store.warnings(), &[Warning::TornRecord { file: jpath.clone(), line: 4 }]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_middle_record_is_an_error() {
        let dir = tempdir("corrupt");
        let path = dir.join("state.json");
        let jpath = journal_path(&path);
        let (mut store, _) = Store::open(&path).unwrap();
        store.record(&tap("a")).unwrap();
        store.record(&tap("b")).unwrap();
        store.record(&tap("c")).unwrap();
        drop(store);
        let text = fs::read_to_string(&jpath).unwrap();
        let damaged = text.replacen("\"b\"", "\"x\"", 1);
        assert_ne!(damaged, text);
        fs::write(&jpath, damaged).unwrap();
        let e = Store::open(&path).unwrap_err();
        assert!(e.contains(&jpath.display().to_string()) && e.contains("line 3 is corrupt"), "{e}");

        // An intact line that does not parse is an error too, not a torn write.
        let bogus = journal::encode(r#"[{"op":"endpoint_renamed"}]"#).unwrap();
        let mut bytes = text.into_bytes();
        bytes.extend(bogus);
        fs::write(&jpath, bytes).unwrap();
        let e = Store::open(&path).unwrap_err();
        assert!(e.contains("line 5 is intact but does not hold changes"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_a_whole_file_state_written_by_save() {
        let dir = tempdir("version-1");
        let path = dir.join("state.json");
        let old = Saved {
            version: VERSION,
            endpoints: vec![
                SavedEndpoint {
                    name: "vm2".into(),
                    spec: EndpointSpec::Dpdk { devargs: "net_tap2".into() },
                    origin: Origin::default(),
                },
                SavedEndpoint {
                    name: "vm1".into(),
                    spec: EndpointSpec::VhostUser { path: "/tmp/vm1.sock".into(), client: true, queues: 2 },
                    origin: Origin::default(),
                },
            ],
            wires: vec![wire(4, "vm1", "vm2", 0), wire(9, "vm2", "10.0.0.7", 1_700_000_000_000_000_000)],
            incoming: vec![],
            used_keys: vec![],
        };
        save(&path, &old).unwrap();
        let (mut store, saved) = Store::open(&path).unwrap();
        assert!(store.warnings().is_empty());
        // Endpoint order is kept: they are recreated in it.
        assert_eq!(saved, Some(old.clone()));
        assert_eq!(store.generation, 0);
        assert_eq!(names(&dir), vec!["state.json"], "opening writes nothing");

        // The first change rewrites the file as a version 2 base.
        store.record(&Change::WireRemoved { wire: 4 }).unwrap();
        drop(store);
        let base = fs::read_to_string(&path).unwrap();
        assert!(base.contains("\"version\": 2") && base.contains("\"generation\": 1"), "{base}");
        let mut expect = old;
        expect.wires.remove(0);
        let (_, saved) = Store::open(&path).unwrap();
        assert_eq!(saved, Some(expect));
        // A vwfabric that reads only version 1 refuses it rather than
        // ignoring the journal.
        assert!(load(&path).unwrap_err().contains("version 2"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_or_orphan_journal_is_ignored() {
        let dir = tempdir("stale");
        let path = dir.join("state.json");
        let jpath = journal_path(&path);
        let (mut store, _) = Store::open(&path).unwrap();
        store.record(&tap("a")).unwrap();
        store.record(&tap("b")).unwrap();
        let old_journal = fs::read(&jpath).unwrap();
        store.record(&Change::EndpointRemoved { name: "a".into() }).unwrap();
        store.compact().unwrap();
        drop(store);
        // A crash after the new base was renamed into place but before the
        // new journal was: the old journal's changes are in the base.
        fs::write(&jpath, &old_journal).unwrap();
        let (mut store, saved) = Store::open(&path).unwrap();
        assert_eq!(endpoint_names(saved.as_ref().unwrap()), vec!["b"]);
        assert_eq!(store.warnings(), &[Warning::StaleJournal { file: jpath.clone(), found: 1, expected: 2 }]);
        // The next change starts a journal that counts.
        store.record(&tap("c")).unwrap();
        drop(store);
        let (store, saved) = Store::open(&path).unwrap();
        assert!(store.warnings().is_empty());
        assert_eq!(endpoint_names(saved.as_ref().unwrap()), vec!["b", "c"]);
        drop(store);

        // Without its state file the journal means nothing.
        fs::remove_file(&path).unwrap();
        let (store, saved) = Store::open(&path).unwrap();
        assert_eq!(saved, None);
        assert_eq!(store.warnings(), &[Warning::OrphanJournal { file: jpath.clone() }]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_bounds_the_journal_by_the_live_set() {
        let dir = tempdir("bounded");
        let path = dir.join("state.json");
        let jpath = journal_path(&path);
        let (mut store, _) = Store::open(&path).unwrap();
        // Enough endpoints that the live set, not the minimum, sets the
        // compaction point.
        let endpoints: Vec<Change> = (0..600).map(|i| tap(&format!("vm{i}"))).collect();
        store.record_all(&endpoints).unwrap();
        let mut written = fs::metadata(&path).unwrap().len() + store.journal.as_ref().unwrap().len();
        let mut journal_len = store.journal.as_ref().unwrap().len();
        let mut generation = store.generation;
        let mut compactions = 0;
        let mut longest_line = 0;
        let changes = 5000;
        for i in 0..changes {
            let id = i % 50;
            let change = match i % 3 {
                0 => Change::WireSaved(wire(id, &format!("vm{id}"), "10.1.2.3", u64::from(i) + 1)),
                1 => Change::WireSaved(wire(id, &format!("vm{id}"), "10.1.2.3", u64::from(i) * 7 + 1)),
                _ => Change::WireRemoved { wire: id },
            };
            longest_line =
                longest_line.max(journal::encode(&serde_json::to_string(&[&change]).unwrap()).unwrap().len());
            store.record(&change).unwrap();
            let len = store.journal.as_ref().unwrap().len();
            assert_eq!(len, fs::metadata(&jpath).unwrap().len());
            if store.generation != generation {
                generation = store.generation;
                compactions += 1;
                written += fs::metadata(&path).unwrap().len() + len;
            } else {
                written += len - journal_len;
            }
            journal_len = len;
            // The journal never holds more than the compaction point (the
            // change that crosses it triggers the compaction).
            assert!(store.records <= store.compact_at(), "{} > {}", store.records, store.compact_at());
            // So its size is bounded by the live set, not by the history.
            let bound = 64 + (store.compact_at() * longest_line) as u64;
            assert!(len <= bound, "journal {len} bytes, bound {bound} at {} entries", store.live.len());
        }
        let live = store.live.len();
        assert!((600..=650).contains(&live));
        // 600 initial records plus 5000 with compaction at ~1200-1300.
        assert!((3..=5).contains(&compactions), "{compactions} compactions");
        let base_len = fs::metadata(&path).unwrap().len();
        // A line per change plus the amortized base rewrites: far below
        // rewriting the whole configuration (`base_len`) every time.
        let per_change = written / u64::from(changes);
        assert!(per_change <= longest_line as u64 + base_len / COMPACT_MIN as u64 * 2, "{per_change} bytes per change");
        assert!(per_change * 20 < base_len, "{per_change} bytes per change, base {base_len}");
        let now = store.saved();
        drop(store);
        let (_, saved) = Store::open(&path).unwrap();
        assert_eq!(saved, Some(now));
        fs::remove_dir_all(&dir).unwrap();
    }
}
