//! The directory's key layout, its records and a fabric's view of it. Pure:
//! no store, no I/O, no clock.
//!
//! Keys of domain `D` (all under `/virtualwire/D/`):
//!
//! | key | value | written by | lease |
//! |-----|-------|------------|-------|
//! | `hosts/HOST` | [`HostRecord`]: VTEP, tunnel formats, site | the host's fabric, at start and after a lease is lost | the host's: gone when the fabric dies |
//! | `endpoints/HOST/NAME` | [`EndpointRecord`]: HOST has endpoint NAME, and whether its VM runs there | HOST's fabric only (its etcd role allows no other host's keys) | none: a dead host's endpoints stay, shown as `host down` |
//! | `wires/ID` | [`WireRecord`]: the two endpoint names, the format | any host (`vwctl connect`), created only if absent | none |
//!
//! `ID` is the connector ID in ten decimal digits, so keys sort by ID.
//!
//! Several hosts may have an endpoint of one name (a VM that migrates
//! between them, or two operators who chose one name): each writes only its
//! own key, and where the name lives is decided from the keys' revisions
//! alone, the same on every host ([`View::owner`]): the host where its VM
//! runs, the first that started it if it runs on two; else the host it last
//! stopped on; else the host that advertised it first. A host can thus
//! neither overwrite another's endpoint nor take a running one from a host
//! that is up.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// The largest connector ID the directory hands out: VXLAN's 24-bit VNI,
/// so an allocated wire can take either format.
pub const MAX_ALLOCATED_ID: u32 = (1 << 24) - 1;

/// The tunnel format a wire between two hosts uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The VirtualWire connector format.
    #[default]
    Vwire,
    /// VXLAN, VNI = connector ID.
    Vxlan,
}

/// What a host advertises (under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// Its VTEP: the underlay address its wires' frames go to.
    pub vtep: IpAddr,
    /// The tunnel formats it takes.
    #[serde(default)]
    pub formats: Vec<Format>,
    /// Its site (empty: the default site).
    #[serde(default)]
    pub site: String,
    /// It takes part in the authenticated live-migration exchange.
    #[serde(default)]
    pub migration: bool,
}

/// Whether an endpoint's VM runs on the host that advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Not started on this host since the endpoint was added here.
    #[default]
    Idle,
    /// Its VM runs here (for a vhost-user endpoint: a device with rings).
    Running,
    /// Its VM ran here and stopped (shut down, or migrated away).
    Stopped,
}

/// A host's endpoint, as the host advertises it (the key names both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    /// Members of the socket group may wire it (on its host, as for
    /// `vwctl endpoint add --group`).
    #[serde(default)]
    pub group: bool,
    /// Added by a member of the socket group, not by root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub member: bool,
    /// Whether its VM runs on that host.
    #[serde(default)]
    pub vm: VmState,
}

/// One host's key for an endpoint name, with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// What the host wrote.
    pub record: EndpointRecord,
    /// The revision it was last written at.
    pub revision: i64,
    /// The revision the key was created at.
    pub created: i64,
}

/// A wire between two endpoints, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRecord {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// The format between two hosts.
    #[serde(default)]
    pub format: Format,
    /// Connected by a member of a socket group, not by root: each end's
    /// host sets up its half only if the group may use its end.
    #[serde(default)]
    pub by_group: bool,
    /// The host the connect was made on.
    #[serde(default)]
    pub from: String,
}

impl WireRecord {
    /// The end that is not `name`, if `name` is an end.
    pub fn other(&self, name: &str) -> Option<&str> {
        if self.a == name {
            Some(&self.b)
        } else if self.b == name {
            Some(&self.a)
        } else {
            None
        }
    }
}

/// A value with the store's modification revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The revision it was written at.
    pub revision: i64,
}

/// A parsed key of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `hosts/NAME`.
    Host(String),
    /// `endpoints/HOST/NAME`.
    Endpoint {
        /// The host that advertises it.
        host: String,
        /// The endpoint's name.
        name: String,
    },
    /// `wires/ID`.
    Wire(u32),
}

/// Whether `s` may name a host or an endpoint in a key or a record: 1 to
/// 255 bytes, no `/`, no space or control character (what a log line or a
/// terminal shows as it is).
pub fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

/// The key layout of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of `domain`; refused unless it is 1-64 of `[A-Za-z0-9_.-]`.
    pub fn new(domain: &str) -> Result<Keys, String> {
        if domain.is_empty()
            || domain.len() > 64
            || !domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(format!("directory domain {domain:?} must be 1 to 64 of A-Z a-z 0-9 _ . -"));
        }
        Ok(Keys { prefix: format!("/virtualwire/{domain}/") })
    }

    /// Every key of the domain starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A host's key.
    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }

    /// Host `host`'s key for endpoint `name`.
    pub fn endpoint(&self, host: &str, name: &str) -> String {
        format!("{}endpoints/{host}/{name}", self.prefix)
    }

    /// The prefix of host `host`'s endpoint keys (what its etcd role may write).
    pub fn endpoints_of(&self, host: &str) -> String {
        format!("{}endpoints/{host}/", self.prefix)
    }

    /// A wire's key.
    pub fn wire(&self, id: u32) -> String {
        format!("{}wires/{id:010}", self.prefix)
    }

    /// What `key` names, if it is one of this domain's.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (kind, name) = rest.split_once('/')?;
        if kind == "endpoints" {
            let (host, name) = name.split_once('/')?;
            if !name_ok(host) || !name_ok(name) {
                return None;
            }
            return Some(Key::Endpoint { host: host.to_owned(), name: name.to_owned() });
        }
        if !name_ok(name) {
            return None;
        }
        match kind {
            "hosts" => Some(Key::Host(name.to_owned())),
            "wires" if name.len() == 10 && name.bytes().all(|b| b.is_ascii_digit()) => name.parse().ok().map(Key::Wire),
            _ => None,
        }
    }
}

/// Where a wire's end lives, as the view has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this host.
    Here,
    /// On another host, which is up (its lease holds).
    Host {
        /// Host name.
        host: String,
        /// Its VTEP.
        vtep: IpAddr,
    },
    /// Claimed by a host whose lease is gone.
    HostDown(String),
    /// No host claims it.
    Unknown,
}

/// What this host's half of a directory wire should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Half {
    /// No end lives here.
    NotHere,
    /// Both ends live here: a loopback wire.
    Loopback {
        /// The wire's first end.
        a: String,
        /// The other.
        b: String,
    },
    /// One end lives here, the other on a host that is up.
    Encap {
        /// The end here.
        local: String,
        /// The far end's name.
        remote: String,
        /// The far end's host.
        host: String,
        /// Its VTEP.
        vtep: IpAddr,
        /// The tunnel format.
        format: Format,
    },
    /// One end lives here; the other's host is down or unknown.
    Waiting {
        /// The end here.
        local: String,
        /// The far end.
        remote: String,
        /// Where the far end is.
        remote_at: Location,
    },
}

/// A key of the store with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full key.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// The revision it was last written at.
    pub revision: i64,
    /// The revision it was created at.
    pub created: i64,
}

/// A fabric's copy of its domain: every host, endpoint and wire, each with
/// the revision it was written at. Changes come from the backend's watch in
/// revision order, and from the answers to this fabric's own changes, which
/// may arrive before or after the watch reports them.
#[derive(Debug, Clone)]
pub struct View {
    keys: Keys,
    /// The revision the watch has reported up to.
    revision: i64,
    hosts: HashMap<String, Versioned<HostRecord>>,
    /// Every host's key for each endpoint name: name -> host -> claim.
    claims: HashMap<String, BTreeMap<String, Claim>>,
    wires: BTreeMap<u32, Versioned<WireRecord>>,
    /// Wires by endpoint name (either end).
    by_endpoint: HashMap<String, BTreeSet<u32>>,
    /// Endpoint names by the host that advertises them.
    by_host: HashMap<String, BTreeSet<String>>,
    /// Keys this fabric deleted, at the revision of the deletion, until the
    /// watch passes it: an older write the watch reports late is not
    /// applied again.
    deleted: HashMap<String, i64>,
    /// Keys of the domain that could not be read (a bad value), for `status`.
    bad: BTreeMap<String, String>,
}

impl View {
    /// An empty view of the domain `keys` describe.
    pub fn new(keys: Keys) -> View {
        View {
            keys,
            revision: 0,
            hosts: HashMap::new(),
            claims: HashMap::new(),
            wires: BTreeMap::new(),
            by_endpoint: HashMap::new(),
            by_host: HashMap::new(),
            deleted: HashMap::new(),
            bad: BTreeMap::new(),
        }
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The revision the watch has reported up to.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Replaces everything with `entries` as of `revision`. Returns every
    /// wire whose half may have changed (all of them, before and after).
    pub fn reset(&mut self, entries: &[Entry], revision: i64) -> BTreeSet<u32> {
        let mut touched: BTreeSet<u32> = self.wires.keys().copied().collect();
        let keys = self.keys.clone();
        *self = View::new(keys);
        for e in entries {
            self.set(&e.key, Some(&e.value), e.revision, e.created);
        }
        self.revision = revision;
        touched.extend(self.wires.keys().copied());
        touched
    }

    /// A change the watch reported (in revision order; `created` is the
    /// key's creation revision, unused for a deletion). Returns the wires
    /// whose half may have changed.
    pub fn watched(&mut self, key: &str, value: Option<&[u8]>, revision: i64, created: i64) -> BTreeSet<u32> {
        self.revision = self.revision.max(revision);
        let now = self.revision;
        self.deleted.retain(|_, r| *r > now);
        self.set(key, value, revision, created)
    }

    /// This fabric's own change, made at `revision`, applied before the
    /// watch reports it (it is ignored if the watch has already gone past).
    pub fn own(&mut self, key: &str, value: Option<&[u8]>, revision: i64, created: i64) -> BTreeSet<u32> {
        if revision <= self.revision {
            return BTreeSet::new();
        }
        if value.is_none() {
            self.deleted.insert(key.to_owned(), revision);
        }
        self.set(key, value, revision, created)
    }

    fn set(&mut self, key: &str, value: Option<&[u8]>, revision: i64, created: i64) -> BTreeSet<u32> {
        let mut touched = BTreeSet::new();
        let Some(k) = self.keys.parse(key) else { return touched };
        if self.deleted.get(key).is_some_and(|r| *r >= revision) && value.is_some() {
            return touched;
        }
        self.bad.remove(key);
        match k {
            Key::Host(name) => {
                if self.hosts.get(&name).is_some_and(|h| h.revision >= revision) {
                    return touched;
                }
                match value.map(serde_json::from_slice::<HostRecord>) {
                    Some(Ok(h)) => {
                        self.hosts.insert(name.clone(), Versioned { value: h, revision });
                    }
                    Some(Err(e)) => {
                        self.bad.insert(key.to_owned(), e.to_string());
                        self.hosts.remove(&name);
                    }
                    None => {
                        self.hosts.remove(&name);
                    }
                }
                for e in self.by_host.get(&name).into_iter().flatten() {
                    touched.extend(self.by_endpoint.get(e).into_iter().flatten().copied());
                }
            }
            Key::Endpoint { host, name } => {
                let cs = self.claims.entry(name.clone()).or_default();
                if cs.get(&host).is_some_and(|c| c.revision >= revision) {
                    if cs.is_empty() {
                        self.claims.remove(&name);
                    }
                    return touched;
                }
                cs.remove(&host);
                match value.map(serde_json::from_slice::<EndpointRecord>) {
                    Some(Ok(record)) => {
                        cs.insert(host.clone(), Claim { record, revision, created });
                    }
                    Some(Err(e)) => {
                        self.bad.insert(key.to_owned(), e.to_string());
                    }
                    None => {}
                }
                let present = cs.contains_key(&host);
                if cs.is_empty() {
                    self.claims.remove(&name);
                }
                let hs = self.by_host.entry(host.clone()).or_default();
                if present {
                    hs.insert(name.clone());
                } else {
                    hs.remove(&name);
                    if hs.is_empty() {
                        self.by_host.remove(&host);
                    }
                }
                touched.extend(self.by_endpoint.get(&name).into_iter().flatten().copied());
            }
            Key::Wire(id) => {
                if self.wires.get(&id).is_some_and(|w| w.revision >= revision) {
                    return touched;
                }
                if let Some(old) = self.wires.remove(&id) {
                    for end in [&old.value.a, &old.value.b] {
                        if let Some(s) = self.by_endpoint.get_mut(end) {
                            s.remove(&id);
                            if s.is_empty() {
                                self.by_endpoint.remove(end);
                            }
                        }
                    }
                }
                match value.map(serde_json::from_slice::<WireRecord>) {
                    Some(Ok(w)) if !name_ok(&w.a) || !name_ok(&w.b) => {
                        self.bad.insert(
                            key.to_owned(),
                            "an end's name is empty, or has a space, / or control character".into(),
                        );
                    }
                    Some(Ok(w)) if w.a != w.b => {
                        for end in [&w.a, &w.b] {
                            self.by_endpoint.entry(end.clone()).or_default().insert(id);
                        }
                        self.wires.insert(id, Versioned { value: w, revision });
                    }
                    Some(Ok(_)) => {
                        self.bad.insert(key.to_owned(), "a wire's two ends are one endpoint".into());
                    }
                    Some(Err(e)) => {
                        self.bad.insert(key.to_owned(), e.to_string());
                    }
                    None => {}
                }
                touched.insert(id);
            }
        }
        touched
    }

    /// A host's record.
    pub fn host(&self, name: &str) -> Option<&Versioned<HostRecord>> {
        self.hosts.get(name)
    }

    /// Every host that is up, by name.
    pub fn hosts(&self) -> impl Iterator<Item = (&String, &Versioned<HostRecord>)> {
        self.hosts.iter()
    }

    /// Host `host`'s key for endpoint `name`.
    pub fn claim(&self, name: &str, host: &str) -> Option<&Claim> {
        self.claims.get(name)?.get(host)
    }

    /// The host endpoint `name` lives on, decided from its hosts' keys alone
    /// (every fabric decides the same), in this order:
    /// 1. a host that is up where its VM runs (the one whose key said so
    ///    first, if two do while a migration ends);
    /// 2. a host that is down where its VM ran when it went down (the
    ///    endpoint waits for it rather than go to a host without its VM);
    /// 3. a host that is up where its VM stopped last;
    /// 4. a host that is up that advertised it first;
    /// 5. the host that is down that advertised it first.
    ///
    /// While some host has the name as root's (added by root, with or
    /// without `--group`), hosts where a member of the socket group added
    /// it are not candidates: a member cannot take a root endpoint's
    /// name, and its wires, by advertising the name too.
    pub fn owner(&self, name: &str) -> Option<(&String, &Claim)> {
        let all = self.claims.get(name)?;
        let root_only = all.values().any(|c| !c.record.member);
        let cs = || all.iter().filter(move |(_, c)| !root_only || !c.record.member);
        let up = |h: &String| self.hosts.contains_key(h);
        let with = move |vm: VmState, up_: bool| cs().filter(move |(h, c)| c.record.vm == vm && up(h) == up_);
        with(VmState::Running, true)
            .min_by_key(|(h, c)| (c.revision, *h))
            .or_else(|| with(VmState::Running, false).min_by_key(|(h, c)| (c.revision, *h)))
            .or_else(|| with(VmState::Stopped, true).max_by_key(|(h, c)| (c.revision, *h)))
            .or_else(|| cs().filter(|(h, _)| up(h)).min_by_key(|(h, c)| (c.created, *h)))
            .or_else(|| cs().min_by_key(|(h, c)| (c.created, *h)))
    }

    /// The endpoint names host `host` advertises.
    pub fn names_of(&self, host: &str) -> impl Iterator<Item = &String> {
        self.by_host.get(host).into_iter().flatten()
    }

    /// How many endpoint names the directory knows.
    pub fn endpoint_count(&self) -> usize {
        self.claims.len()
    }

    /// A wire's record.
    pub fn wire(&self, id: u32) -> Option<&Versioned<WireRecord>> {
        self.wires.get(&id)
    }

    /// Every wire, by id.
    pub fn wires(&self) -> impl Iterator<Item = (&u32, &Versioned<WireRecord>)> {
        self.wires.iter()
    }

    /// The wires with `name` as an end.
    pub fn wires_of(&self, name: &str) -> impl Iterator<Item = u32> + '_ {
        self.by_endpoint.get(name).into_iter().flatten().copied()
    }

    /// Keys whose values could not be read, with why.
    pub fn bad_keys(&self) -> &BTreeMap<String, String> {
        &self.bad
    }

    /// Where `name` lives, seen from host `me`.
    pub fn location(&self, name: &str, me: &str) -> Location {
        match self.owner(name) {
            None => Location::Unknown,
            Some((h, _)) if h == me => Location::Here,
            Some((h, _)) => match self.hosts.get(h) {
                Some(r) => Location::Host { host: h.clone(), vtep: r.value.vtep },
                None => Location::HostDown(h.clone()),
            },
        }
    }

    /// What host `me`'s half of wire `id` should be.
    pub fn half(&self, id: u32, me: &str) -> Half {
        let Some(w) = self.wires.get(&id) else { return Half::NotHere };
        let w = &w.value;
        match (self.location(&w.a, me), self.location(&w.b, me)) {
            (Location::Here, Location::Here) => Half::Loopback { a: w.a.clone(), b: w.b.clone() },
            (Location::Here, far) => self.far_half(&w.a, &w.b, far, w.format),
            (far, Location::Here) => self.far_half(&w.b, &w.a, far, w.format),
            _ => Half::NotHere,
        }
    }

    /// What host `me`'s half of wire `id` becomes when the VM of its end
    /// `name` arrives there by live migration, before the directory says
    /// so: the source has written `stopped` and `me`'s `running` is on its
    /// way, so this is the half once it is written. `NotHere` if `name` is
    /// not an end of `id`, or may not live on `me` then: another host that
    /// is up still has its VM running (not a migration, or the source
    /// could not say it stopped: the directory decides, once it is told),
    /// or `member` (a member of the socket group added `me`'s endpoint)
    /// while root has the name elsewhere.
    pub fn arriving_half(&self, id: u32, me: &str, name: &str, member: bool) -> Half {
        let Some(w) = self.wires.get(&id) else { return Half::NotHere };
        let w = &w.value;
        let Some(other) = w.other(name).filter(|o| *o != name) else { return Half::NotHere };
        let others = || self.claims.get(name).into_iter().flatten().filter(|(h, _)| *h != me);
        let running = others().any(|(h, c)| c.record.vm == VmState::Running && self.hosts.contains_key(h));
        if running || (member && others().any(|(_, c)| !c.record.member)) {
            return Half::NotHere;
        }
        match self.location(other, me) {
            Location::Here => Half::Loopback { a: w.a.clone(), b: w.b.clone() },
            far => self.far_half(name, other, far, w.format),
        }
    }

    fn far_half(&self, local: &str, remote: &str, far: Location, format: Format) -> Half {
        match far {
            Location::Host { host, vtep } => {
                Half::Encap { local: local.to_owned(), remote: remote.to_owned(), host, vtep, format }
            }
            other => Half::Waiting { local: local.to_owned(), remote: remote.to_owned(), remote_at: other },
        }
    }

    /// The lowest connector ID from `from` up (at most
    /// [`MAX_ALLOCATED_ID`]) that no directory wire has and `taken` does
    /// not refuse.
    pub fn free_id(&self, from: u32, taken: impl Fn(u32) -> bool) -> Option<u32> {
        (from.max(1)..=MAX_ALLOCATED_ID).find(|id| !self.wires.contains_key(id) && !taken(*id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new("lab").unwrap()
    }

    fn host(vtep: &str) -> Vec<u8> {
        serde_json::to_vec(&HostRecord {
            vtep: vtep.parse().unwrap(),
            formats: vec![Format::Vwire, Format::Vxlan],
            site: String::new(),
            migration: false,
        })
        .unwrap()
    }

    fn ep(vm: VmState) -> Vec<u8> {
        serde_json::to_vec(&EndpointRecord { group: false, member: false, vm }).unwrap()
    }

    fn entry(key: String, value: Vec<u8>, revision: i64) -> Entry {
        Entry { key, value, revision, created: revision }
    }

    fn wire(a: &str, b: &str) -> Vec<u8> {
        serde_json::to_vec(&WireRecord {
            a: a.into(),
            b: b.into(),
            format: Format::Vwire,
            by_group: false,
            from: "h1".into(),
        })
        .unwrap()
    }

    /// h1 (10.0.0.1) with vm1, h2 (10.0.0.2) with vm2, wire 7 vm1-vm2.
    fn domain() -> View {
        let k = keys();
        let mut v = View::new(k.clone());
        let e = vec![
            entry(k.host("h1"), host("10.0.0.1"), 2),
            entry(k.host("h2"), host("10.0.0.2"), 3),
            entry(k.endpoint("h1", "vm1"), ep(VmState::Idle), 4),
            entry(k.endpoint("h2", "vm2"), ep(VmState::Idle), 5),
            entry(k.wire(7), wire("vm1", "vm2"), 6),
        ];
        v.reset(&e, 6);
        v
    }

    #[test]
    fn keys_round_trip_and_refuse_what_is_not_the_domains() {
        let k = keys();
        assert_eq!(k.wire(7), "/virtualwire/lab/wires/0000000007");
        assert_eq!(k.parse(&k.wire(4294967295)), Some(Key::Wire(4294967295)));
        assert_eq!(k.parse(&k.host("h1")), Some(Key::Host("h1".into())));
        assert_eq!(k.parse(&k.endpoint("h1", "vm.1")), Some(Key::Endpoint { host: "h1".into(), name: "vm.1".into() }));
        assert!(k.endpoint("h1", "x").starts_with(&k.endpoints_of("h1")));
        assert!(!k.endpoint("h10", "x").starts_with(&k.endpoints_of("h1")));
        for bad in [
            "/virtualwire/other/hosts/h1",
            "/virtualwire/lab/hosts/",
            "/virtualwire/lab/hosts/a/b",
            "/virtualwire/lab/wires/7",
            "/virtualwire/lab/wires/00000000x7",
            "/virtualwire/lab/wires/9999999999",
            "/virtualwire/lab/things/x",
            "/virtualwire/lab/endpoints/vm1",
            "/virtualwire/lab/endpoints/h1/",
            "/virtualwire/lab/endpoints//vm1",
            "/virtualwire/lab/endpoints/h1/a/b",
        ] {
            assert_eq!(k.parse(bad), None, "{bad}");
        }
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a/b").is_err());
    }

    #[test]
    fn each_host_sees_its_own_half() {
        let v = domain();
        let vtep2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            v.half(7, "h1"),
            Half::Encap {
                local: "vm1".into(),
                remote: "vm2".into(),
                host: "h2".into(),
                vtep: vtep2,
                format: Format::Vwire
            }
        );
        assert!(matches!(v.half(7, "h2"), Half::Encap { ref local, .. } if local == "vm2"));
        assert_eq!(v.half(7, "h3"), Half::NotHere);
        assert_eq!(v.half(8, "h1"), Half::NotHere);
    }

    #[test]
    fn an_end_that_moves_next_to_its_peer_makes_the_wire_loopback_and_back() {
        let mut v = domain();
        let k = keys();
        // vm2 is withdrawn on h2 and advertised on h1.
        v.watched(&k.endpoint("h2", "vm2"), None, 7, 0);
        let t = v.watched(&k.endpoint("h1", "vm2"), Some(&ep(VmState::Idle)), 8, 8);
        assert_eq!(t, BTreeSet::from([7]));
        assert_eq!(v.half(7, "h1"), Half::Loopback { a: "vm1".into(), b: "vm2".into() });
        assert_eq!(v.half(7, "h2"), Half::NotHere);
        v.watched(&k.endpoint("h2", "vm2"), Some(&ep(VmState::Running)), 9, 9);
        assert!(matches!(v.half(7, "h1"), Half::Encap { ref host, .. } if host == "h2"));
    }

    #[test]
    fn a_host_whose_lease_expired_is_down_and_comes_back() {
        let mut v = domain();
        let k = keys();
        let t = v.watched(&k.host("h2"), None, 7, 0);
        assert_eq!(t, BTreeSet::from([7]), "the wires of h2's endpoints are touched");
        assert_eq!(
            v.half(7, "h1"),
            Half::Waiting { local: "vm1".into(), remote: "vm2".into(), remote_at: Location::HostDown("h2".into()) }
        );
        v.watched(&k.host("h2"), Some(&host("10.0.0.22")), 8, 8);
        assert!(matches!(v.half(7, "h1"), Half::Encap { vtep, .. } if vtep.to_string() == "10.0.0.22"));
    }

    #[test]
    fn own_changes_the_watch_has_passed_are_not_applied_twice() {
        let mut v = domain();
        let k = keys();
        // The watch reports the wire's deletion (revision 8) before this
        // fabric hears that its own earlier put (revision 7) was made.
        v.watched(&k.wire(7), None, 8, 0);
        assert!(v.own(&k.wire(7), Some(&wire("vm1", "vm2")), 7, 7).is_empty());
        assert!(v.wire(7).is_none());
        // An own change ahead of the watch is applied, and the watch's later
        // report of the same revision changes nothing.
        assert_eq!(v.own(&k.wire(9), Some(&wire("vm1", "vm3")), 9, 9), BTreeSet::from([9]));
        assert!(v.watched(&k.wire(9), Some(&wire("vm1", "vm3")), 9, 9).is_empty());
        assert_eq!(v.wire(9).unwrap().revision, 9);
        assert_eq!(v.wires_of("vm1").collect::<Vec<_>>(), vec![9]);
    }

    #[test]
    fn bad_values_are_listed_and_change_nothing_else() {
        let mut v = domain();
        let k = keys();
        v.watched(&k.wire(8), Some(b"{not json"), 7, 7);
        v.watched(&k.wire(9), Some(&wire("vm1", "vm1")), 8, 8);
        assert!(v.wire(8).is_none() && v.wire(9).is_none());
        assert_eq!(v.bad_keys().len(), 2);
        assert!(matches!(v.half(7, "h1"), Half::Encap { .. }));
        v.watched(&k.wire(8), None, 9, 0);
        assert_eq!(v.bad_keys().len(), 1);
    }

    #[test]
    fn reset_touches_wires_that_went_and_came() {
        let mut v = domain();
        let k = keys();
        let t = v.reset(&[entry(k.wire(9), wire("a", "b"), 20)], 20);
        assert_eq!(t, BTreeSet::from([7, 9]));
        assert_eq!(v.revision(), 20);
        assert!(v.owner("vm1").is_none());
    }

    #[test]
    fn free_ids_skip_taken_ones_and_fit_vxlan() {
        let v = domain();
        assert_eq!(v.free_id(7, |_| false), Some(8));
        assert_eq!(v.free_id(0, |id| id < 7), Some(8));
        assert_eq!(v.free_id(MAX_ALLOCATED_ID, |_| false), Some(MAX_ALLOCATED_ID));
        assert_eq!(v.free_id(MAX_ALLOCATED_ID, |_| true), None);
    }

    fn owner(v: &View, name: &str) -> String {
        v.owner(name).map(|(h, _)| h.clone()).unwrap_or_default()
    }

    #[test]
    fn an_endpoint_two_hosts_advertise_lives_where_it_was_first_unless_its_vm_runs_elsewhere() {
        let mut v = domain();
        let k = keys();
        // h2 also advertises vm1: h1 had it first and keeps it.
        v.watched(&k.endpoint("h2", "vm1"), Some(&ep(VmState::Idle)), 7, 7);
        assert_eq!(owner(&v, "vm1"), "h1");
        // Its VM starts on h2: it lives there now.
        v.watched(&k.endpoint("h2", "vm1"), Some(&ep(VmState::Running)), 8, 7);
        assert_eq!(owner(&v, "vm1"), "h2");
        assert_eq!(v.half(7, "h2"), Half::Loopback { a: "vm1".into(), b: "vm2".into() });
        assert_eq!(v.half(7, "h1"), Half::NotHere);
        // Another host saying it runs vm1 too does not take it from h2.
        v.watched(&k.host("h3"), Some(&host("10.0.0.3")), 9, 9);
        v.watched(&k.endpoint("h3", "vm1"), Some(&ep(VmState::Running)), 10, 10);
        assert_eq!(owner(&v, "vm1"), "h2");
        // Stopped on h2 (shut down): it stays on h2, the host it last ran
        // on, rather than going back to h1... unless h3's still runs.
        v.watched(&k.endpoint("h3", "vm1"), Some(&ep(VmState::Idle)), 11, 10);
        v.watched(&k.endpoint("h2", "vm1"), Some(&ep(VmState::Stopped)), 12, 7);
        assert_eq!(owner(&v, "vm1"), "h2");
    }

    #[test]
    fn a_migration_moves_the_endpoint_whichever_host_writes_first() {
        let k = keys();
        for source_first in [true, false] {
            let mut v = domain();
            v.watched(&k.endpoint("h1", "vm1"), Some(&ep(VmState::Running)), 10, 4);
            v.watched(&k.host("h3"), Some(&host("10.0.0.3")), 11, 11);
            v.watched(&k.endpoint("h3", "vm1"), Some(&ep(VmState::Idle)), 12, 12);
            assert_eq!(owner(&v, "vm1"), "h1");
            let stop = (k.endpoint("h1", "vm1"), ep(VmState::Stopped), 4);
            let start = (k.endpoint("h3", "vm1"), ep(VmState::Running), 12);
            let order = if source_first { [stop, start] } else { [start, stop] };
            for (i, (key, val, created)) in order.into_iter().enumerate() {
                v.watched(&key, Some(&val), 13 + i as i64, created);
                // Between the two writes it is still h1's: stopped there
                // last, or running there first.
                let want = if i == 1 { "h3" } else { "h1" };
                assert_eq!(owner(&v, "vm1"), want, "source first {source_first}, step {i}");
            }
            assert!(matches!(v.half(7, "h2"), Half::Encap { ref host, .. } if host == "h3"));
        }
    }

    #[test]
    fn a_running_endpoint_waits_for_its_host_that_is_down() {
        let mut v = domain();
        let k = keys();
        v.watched(&k.endpoint("h2", "vm2"), Some(&ep(VmState::Running)), 7, 5);
        v.watched(&k.host("h3"), Some(&host("10.0.0.3")), 8, 8);
        v.watched(&k.endpoint("h3", "vm2"), Some(&ep(VmState::Idle)), 9, 9);
        v.watched(&k.host("h2"), None, 10, 0);
        assert_eq!(v.location("vm2", "h1"), Location::HostDown("h2".into()));
        // Its VM started again on h3 (the host was lost): it lives there.
        v.watched(&k.endpoint("h3", "vm2"), Some(&ep(VmState::Running)), 11, 9);
        assert!(matches!(v.location("vm2", "h1"), Location::Host { ref host, .. } if host == "h3"));
        // Idle endpoints of a dead host give way to one on a live host.
        v.watched(&k.endpoint("h3", "vm2"), None, 12, 0);
        v.watched(&k.endpoint("h2", "vm2"), Some(&ep(VmState::Idle)), 13, 5);
        v.watched(&k.endpoint("h3", "vm2"), Some(&ep(VmState::Idle)), 14, 14);
        assert!(matches!(v.location("vm2", "h1"), Location::Host { ref host, .. } if host == "h3"));
    }

    #[test]
    fn an_own_deletion_is_not_undone_by_an_older_write_the_watch_reports_late() {
        let mut v = domain();
        let k = keys();
        let key = k.endpoint("h1", "vm1");
        v.own(&key, None, 8, 0);
        assert!(v.claim("vm1", "h1").is_none());
        v.watched(&key, Some(&ep(VmState::Running)), 7, 4);
        assert!(v.claim("vm1", "h1").is_none(), "the write at 7 is older than the deletion at 8");
        v.watched(&key, None, 8, 0);
        v.watched(&key, Some(&ep(VmState::Idle)), 9, 9);
        assert!(v.claim("vm1", "h1").is_some(), "a newer write is applied");
    }

    #[test]
    fn a_group_endpoint_does_not_take_a_root_endpoints_name() {
        let mut v = domain();
        let k = keys();
        v.watched(&k.host("h3"), Some(&host("10.0.0.3")), 7, 7);
        // vm2's VM stops on h2; a member's vm2 on h3 runs.
        v.watched(&k.endpoint("h2", "vm2"), Some(&ep(VmState::Stopped)), 8, 5);
        let group = serde_json::to_vec(&EndpointRecord { group: true, member: true, vm: VmState::Running }).unwrap();
        v.watched(&k.endpoint("h3", "vm2"), Some(&group), 9, 9);
        assert_eq!(v.owner("vm2").map(|(h, _)| h.as_str()), Some("h2"));
        assert_eq!(v.half(7, "h3"), Half::NotHere);
        assert_eq!(v.arriving_half(7, "h3", "vm2", true), Half::NotHere);
        // Root's endpoints with --group are root's: a migration between
        // two of them, or with one without --group, goes as usual.
        let root_group =
            serde_json::to_vec(&EndpointRecord { group: true, member: false, vm: VmState::Running }).unwrap();
        v.watched(&k.endpoint("h3", "vm2"), Some(&root_group), 20, 9);
        assert_eq!(v.owner("vm2").map(|(h, _)| h.as_str()), Some("h3"));
        v.watched(&k.endpoint("h3", "vm2"), Some(&group), 21, 9);
        // Root's key gone, the group's endpoint has the name.
        v.watched(&k.endpoint("h2", "vm2"), None, 10, 0);
        assert_eq!(v.owner("vm2").map(|(h, _)| h.as_str()), Some("h3"));
        // Root's own endpoint takes it back (root's names rank first).
        v.watched(&k.endpoint("h1", "vm2"), Some(&ep(VmState::Idle)), 11, 11);
        assert_eq!(v.owner("vm2").map(|(h, _)| h.as_str()), Some("h1"));
    }

    #[test]
    fn an_arriving_vm_knows_its_half_before_the_directory_says() {
        let mut v = domain();
        let k = keys();
        v.watched(&k.host("h3"), Some(&host("10.0.0.3")), 7, 7);
        v.watched(&k.endpoint("h3", "vm2"), Some(&ep(VmState::Idle)), 8, 8);
        v.watched(&k.endpoint("h2", "vm2"), Some(&ep(VmState::Running)), 9, 5);
        // Still h2's while its VM runs: a VM of that name starting on h3
        // is not an arrival (or h2 could not say its VM stopped).
        assert_eq!(v.arriving_half(7, "h3", "vm2", false), Half::NotHere);
        // Stopped on h2: a VM arriving on h3 or h1 has its half.
        v.watched(&k.endpoint("h2", "vm2"), Some(&ep(VmState::Stopped)), 10, 5);
        assert_eq!(v.half(7, "h3"), Half::NotHere);
        assert!(matches!(v.arriving_half(7, "h3", "vm2", false),
            Half::Encap { ref local, ref remote, ref host, .. } if local == "vm2" && remote == "vm1" && host == "h1"));
        v.watched(&k.endpoint("h1", "vm2"), Some(&ep(VmState::Idle)), 11, 11);
        assert_eq!(v.arriving_half(7, "h1", "vm2", false), Half::Loopback { a: "vm1".into(), b: "vm2".into() });
        // Not an end, no such wire, a far end nobody has.
        assert_eq!(v.arriving_half(7, "h3", "vm9", false), Half::NotHere);
        assert_eq!(v.arriving_half(8, "h3", "vm2", false), Half::NotHere);
        v.watched(&k.endpoint("h1", "vm1"), None, 12, 0);
        assert!(matches!(v.arriving_half(7, "h3", "vm2", false), Half::Waiting { .. }));
        // The directory then agrees once the destination wrote.
        v.watched(&k.endpoint("h1", "vm1"), Some(&ep(VmState::Running)), 13, 13);
        let before = v.arriving_half(7, "h3", "vm2", false);
        v.watched(&k.endpoint("h3", "vm2"), Some(&ep(VmState::Running)), 14, 8);
        assert_eq!(v.half(7, "h3"), before);
        // A member's endpoint does not arrive where root has the name.
        assert_eq!(v.arriving_half(7, "h1", "vm2", true), Half::NotHere);
    }
}
