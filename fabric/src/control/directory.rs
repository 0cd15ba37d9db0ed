//! The control plane's side of the endpoint directory (`--directory`):
//! advertising this host's endpoints, connecting and disconnecting wires
//! by name from any host, and setting up this host's half of every
//! directory wire one of its endpoints is an end of. See docs/directory.md.
//!
//! The control thread never waits for the store: a request that needs it
//! (a connect or disconnect by name) is kept with its client's job and
//! answered when the backend's [`Event::Done`] comes back; the backend's
//! other events update the [`View`] and each wire they touch is brought
//! to what the view says its half here should be ([`Control::reconcile`]).

use super::{Control, Refusal};
use crossbeam::channel::Receiver;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use vw_core::policy::Role;
use vw_ctl::proto::{self, EncapName, ErrorCode, Reply, Request};
use vw_ctl::server::Job;
use vw_directory::etcd::{Backend, Config};
use vw_directory::model::{Format, Half, Location};
use vw_directory::{EndpointRecord, Event, Op, OpError, View, VmState, WireRecord, Written};
use vw_wire::table::Peer;
use vw_wire::{ConnectorId, Encap};

/// How long a re-point the directory reports waits for the authenticated
/// LOCATE of the end's new host (the fast path, which also passes on
/// frames in flight) before it is applied from the directory alone.
const LOCATE_FIRST: Duration = Duration::from_millis(500);

/// What an op sent to the store is for.
enum Pending {
    /// A client's connect by name.
    Connect { job: Job, id: u32, record: WireRecord },
    /// A client's disconnect of a directory wire.
    Disconnect { job: Job, id: u32 },
    /// This host advertising one of its endpoints.
    Claim { name: String, record: EndpointRecord },
    /// This host giving up an endpoint it removed.
    Release { name: String },
}

/// The directory as the control plane holds it.
pub(super) struct Dir {
    backend: Backend,
    cfg: Config,
    view: View,
    connected: bool,
    reason: Option<String>,
    since: Instant,
    next_tag: u64,
    pending: BTreeMap<u64, Pending>,
    /// Wires whose half here was made from the directory (kept in the
    /// state file with the wire).
    pub(super) made: BTreeSet<ConnectorId>,
    /// Why a wire's half or an endpoint's claim is not set up here, by
    /// subject (logged once per reason).
    problems: BTreeMap<String, String>,
    /// Re-points waiting for the LOCATE fast path, with when they are due.
    deferred: BTreeMap<u32, Instant>,
    /// Wires whose half here a MOVED ended (their end's VM left by live
    /// migration), with that end: not set up here again from a view that
    /// has not caught up yet, only once the VM runs here again.
    left: BTreeMap<u32, String>,
    /// Wires with a local end but no half here, with the VTEP whose next
    /// hop is kept resolved for the end's arrival ([`Control::directory_arm`]).
    armed: BTreeMap<u32, std::net::Ipv4Addr>,
    /// Where the next allocated connector ID is looked for.
    next_alloc: u32,
    /// A full copy of the domain has been read since start.
    synced: bool,
    /// Whether the VM of each local endpoint runs here, as last seen (none
    /// yet after a start: what the directory has is kept until the VM is
    /// seen).
    vm: HashMap<String, VmState>,
    /// The backend's thread is gone (its events are no longer waited on).
    dead: bool,
}

impl Dir {
    /// Starts the backend.
    pub(super) fn start(cfg: Config) -> std::io::Result<Dir> {
        let backend = Backend::start(cfg.clone())?;
        Ok(Dir {
            backend,
            view: View::new(cfg.keys.clone()),
            cfg,
            connected: false,
            reason: Some("connecting".into()),
            since: Instant::now(),
            next_tag: 1,
            pending: BTreeMap::new(),
            made: BTreeSet::new(),
            problems: BTreeMap::new(),
            deferred: BTreeMap::new(),
            left: BTreeMap::new(),
            armed: BTreeMap::new(),
            next_alloc: 1,
            synced: false,
            vm: HashMap::new(),
            dead: false,
        })
    }

    /// The backend's events, to wait on beside the control socket's jobs
    /// (none once its thread is gone).
    pub(super) fn events(&self) -> Option<&Receiver<Event>> {
        (!self.dead).then(|| self.backend.events())
    }

    fn send(&mut self, op: Op, p: Pending) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(tag, p);
        self.backend.send(tag, op);
    }

    fn problem(&mut self, subject: String, why: String) {
        if self.problems.get(&subject) != Some(&why) {
            crate::log(&format!("directory: {subject}: {why}"));
            self.problems.insert(subject, why);
        }
    }

    fn solved(&mut self, subject: &str) {
        if self.problems.remove(subject).is_some() {
            crate::log(&format!("directory: {subject}: resolved"));
        }
    }

    /// Wires with a problem (their half is tried again on reconnection).
    fn problems_wires(&self) -> Vec<u32> {
        self.problems.keys().filter_map(|s| s.strip_prefix("wire ")?.parse().ok()).collect()
    }

    fn unavailable(&self) -> Refusal {
        Refusal::new(
            ErrorCode::DirectoryUnavailable,
            format!(
                "directory_unavailable: etcd at {} cannot be reached ({}); wires that exist keep forwarding, changes \
                 by name are refused until it is back",
                self.cfg.endpoints.join(","),
                self.reason.as_deref().unwrap_or("no answer")
            ),
        )
    }
}

fn format_of(e: Option<EncapName>) -> Format {
    match e {
        Some(EncapName::Vxlan) => Format::Vxlan,
        _ => Format::Vwire,
    }
}

fn encap_of(f: Format) -> EncapName {
    match f {
        Format::Vwire => EncapName::Vwire,
        Format::Vxlan => EncapName::Vxlan,
    }
}

fn encap_value(f: Format) -> Encap {
    match f {
        Format::Vwire => Encap::Vwire,
        Format::Vxlan => Encap::Vxlan,
    }
}

fn vm_name(v: VmState) -> &'static str {
    match v {
        VmState::Idle => "not started",
        VmState::Running => "running",
        VmState::Stopped => "stopped",
    }
}

fn refusal(e: &OpError, what: &str) -> Refusal {
    match e {
        OpError::Conflict(_) => Refusal::new(ErrorCode::WireExists, format!("{what}: {e}")),
        OpError::Unavailable(_) => {
            Refusal::new(ErrorCode::DirectoryUnavailable, format!("directory_unavailable: {what}: {e}"))
        }
        OpError::Refused(_) => Refusal::new(ErrorCode::PermissionDenied, format!("{what}: {e}")),
    }
}

impl Control {
    /// Takes the job if it is a change the directory makes (a connect or
    /// disconnect by name), answering it later; gives it back otherwise.
    pub(super) fn directory_job(&mut self, job: Job) -> Option<Job> {
        if self.dir.is_none() {
            return Some(job);
        }
        let role = Role::of(job.caller.uid, self.own_uid);
        match &job.request {
            // (Not a secure format: the directory does not carry keys yet;
            // the plain path refuses it with the reason.)
            Request::Connect { wire, endpoint, peer, encap, incoming: false, keys: None }
                if peer.parse::<std::net::Ipv4Addr>().is_err() && !encap.is_some_and(EncapName::is_secure) =>
            {
                let (wire, a, b, encap) = (*wire, endpoint.clone(), peer.clone(), *encap);
                match self.dir_connect(wire, &a, &b, encap, role) {
                    Ok((id, record, op)) => {
                        let d = self.dir.as_mut().expect("directory");
                        d.send(op, Pending::Connect { job, id, record });
                    }
                    Err(r) => job.reply(Reply::err(r.code, r.message)),
                }
                None
            }
            Request::Disconnect { wire }
                if self.dir.as_ref().is_some_and(|d| d.view.wire(*wire).is_some())
                    && !self.incoming.values().any(|p| p.wire.0 == *wire)
                    && self
                        .state
                        .table()
                        .wire(ConnectorId(*wire))
                        .is_none_or(|_| self.dir.as_ref().is_some_and(|d| d.made.contains(&ConnectorId(*wire)))) =>
            {
                let id = *wire;
                match self.dir_disconnect(id, role) {
                    Ok(op) => {
                        let d = self.dir.as_mut().expect("directory");
                        d.send(op, Pending::Disconnect { job, id });
                    }
                    Err(r) => job.reply(Reply::err(r.code, r.message)),
                }
                None
            }
            _ => Some(job),
        }
    }

    /// Checks a connect by name and says what to write.
    fn dir_connect(
        &mut self,
        wire: Option<u32>,
        a: &str,
        b: &str,
        encap: Option<EncapName>,
        role: Role,
    ) -> Result<(u32, WireRecord, Op), Refusal> {
        for n in [a, b] {
            vw_wire::table::validate_endpoint_name(n)?;
        }
        if a == b {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("a wire joins two endpoints; both ends are {a}"),
            ));
        }
        // Ends on this host must be the caller's to use; ends elsewhere are
        // checked by their own hosts (the record says who connected).
        self.may_use(role, &[a, b], "connect")?;
        let d = self.dir.as_ref().expect("directory");
        if !d.connected {
            return Err(d.unavailable());
        }
        let domain = &d.cfg.keys;
        for n in [a, b] {
            match d.view.owner(n) {
                None => {
                    return Err(Refusal::new(
                        ErrorCode::NoSuchEndpoint,
                        format!("no endpoint named {n} in the directory ({}: no host advertises it)", domain.prefix()),
                    ))
                }
                Some((h, c)) if role == Role::Member && !c.record.group && *h != d.cfg.host => {
                    return Err(Refusal::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "endpoint {n} on host {} is root's: members of the socket group may connect only \
                             endpoints added with --group",
                            h
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        for n in [a, b] {
            if let Some(w) = d.view.wires_of(n).next() {
                return Err(Refusal::new(ErrorCode::EndpointBusy, format!("endpoint {n} already carries wire {w}")));
            }
        }
        let taken = |id: u32| {
            self.state.table().wire(ConnectorId(id)).is_some()
                || self.incoming.values().any(|p| p.wire.0 == id)
                || d.pending.values().any(|p| matches!(p, Pending::Connect { id: i, .. } if *i == id))
        };
        let id = match wire {
            Some(id) => {
                if d.view.wire(id).is_some() || taken(id) {
                    return Err(Refusal::new(ErrorCode::WireExists, format!("wire {id} exists")));
                }
                if encap == Some(EncapName::Vxlan) && id > vw_directory::model::MAX_ALLOCATED_ID {
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!("a vxlan wire's id is its 24-bit VNI; {id} is larger than 16777215"),
                    ));
                }
                id
            }
            None => d.view.free_id(d.next_alloc, taken).ok_or_else(|| {
                Refusal::new(ErrorCode::WireLimit, "wire_limit: every connector ID up to 16777215 is in use".to_owned())
            })?,
        };
        let record = WireRecord {
            a: a.to_owned(),
            b: b.to_owned(),
            format: format_of(encap),
            by_group: role == Role::Member,
            from: d.cfg.host.clone(),
        };
        if wire.is_none() {
            // The next allocation looks after this one, and from 1 again
            // after the last.
            self.dir.as_mut().expect("directory").next_alloc =
                if id >= vw_directory::model::MAX_ALLOCATED_ID { 1 } else { id + 1 };
        }
        Ok((id, record.clone(), Op::CreateWire { id, record }))
    }

    fn dir_disconnect(&mut self, id: u32, role: Role) -> Result<Op, Refusal> {
        let d = self.dir.as_ref().expect("directory");
        let w = d.view.wire(id).expect("checked").clone();
        if role == Role::Member && !(w.value.by_group && w.value.from == d.cfg.host) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "wire {id} was connected by root or on another host: members of the socket group may disconnect \
                     only the wires their group connected on this host"
                ),
            ));
        }
        if !d.connected {
            return Err(d.unavailable());
        }
        Ok(Op::DeleteWire { id, expect: w.revision })
    }

    /// Takes what the backend reported (called every turn of the control
    /// loop; never blocks).
    pub(super) fn take_directory_events(&mut self) {
        let mut touched = BTreeSet::new();
        let mut sync = false;
        loop {
            let Some(d) = self.dir.as_mut() else { return };
            if d.dead {
                break;
            }
            let ev = match d.backend.events().try_recv() {
                Ok(ev) => ev,
                Err(crossbeam::channel::TryRecvError::Empty) => break,
                Err(crossbeam::channel::TryRecvError::Disconnected) => {
                    crate::log(
                        "directory: the etcd client's thread ended; wires keep forwarding, changes by name are refused",
                    );
                    d.dead = true;
                    d.connected = false;
                    d.reason = Some("the etcd client stopped".into());
                    d.since = Instant::now();
                    break;
                }
            };
            match ev {
                Event::Reset { entries, revision } => {
                    touched.extend(d.view.reset(&entries, revision));
                    touched.extend(d.made.iter().map(|c| c.0));
                    if !d.synced {
                        crate::log(&format!(
                            "directory: read {} keys of {} at revision {revision}",
                            entries.len(),
                            d.cfg.keys.prefix()
                        ));
                    }
                    d.synced = true;
                    sync = true;
                }
                Event::Put { key, value, revision, created } => {
                    touched.extend(d.view.watched(&key, Some(&value), revision, created))
                }
                Event::Delete { key, revision } => touched.extend(d.view.watched(&key, None, revision, 0)),
                Event::Connected { endpoint } => {
                    crate::log(&format!("directory: connected to etcd at {endpoint} as host {}", d.cfg.host));
                    d.connected = true;
                    d.reason = None;
                    d.since = Instant::now();
                    sync = true;
                }
                Event::Unavailable { reason } => {
                    crate::log(&format!(
                        "directory: etcd unavailable ({reason}); wires keep forwarding, changes by name are refused"
                    ));
                    d.connected = false;
                    d.reason = Some(reason);
                    d.since = Instant::now();
                }
                Event::Done { tag, result } => {
                    if let Some(p) = d.pending.remove(&tag) {
                        touched.extend(self.finish(p, result));
                    }
                }
            }
        }
        // (Re)connected: what this host advertises is brought to what it
        // has, each endpoint written only if its key differs.
        if sync && self.dir.as_ref().is_some_and(|d| d.synced && d.connected) {
            let names: Vec<String> = self.state.endpoints().map(|(n, _)| n.to_string()).collect();
            for n in names {
                self.directory_claim(&n);
            }
            // Endpoints advertised here that are gone (removed while etcd
            // was unreachable) are withdrawn.
            let stale: Vec<String> = match &self.dir {
                Some(d) => d.view.names_of(&d.cfg.host).filter(|n| self.state.endpoint(n).is_none()).cloned().collect(),
                None => Vec::new(),
            };
            for n in stale {
                self.directory_release(&n);
            }
            // Directory wires whose re-point failed are tried again.
            touched.extend(self.dir.as_ref().map(|d| d.problems_wires()).unwrap_or_default());
        }
        for id in touched {
            self.reconcile(id);
        }
    }

    /// An op's answer: replies to its client, applies a change of this
    /// host's own to the view. Returns the wires it touched.
    fn finish(&mut self, p: Pending, result: Result<Written, OpError>) -> BTreeSet<u32> {
        let d = self.dir.as_mut().expect("directory");
        let keys = d.view.keys().clone();
        match p {
            Pending::Connect { job, id, record } => match result {
                Ok(Written { revision: rev, created }) => {
                    let value = serde_json::to_vec(&record).expect("encodes");
                    let mut t = d.view.own(&keys.wire(id), Some(&value), rev, created);
                    t.insert(id);
                    crate::log(&format!(
                        "directory: wire {id} {} <-> {} connected at revision {rev}",
                        record.a, record.b
                    ));
                    for w in std::mem::take(&mut t) {
                        self.reconcile(w);
                    }
                    job.reply(Reply::ok(&self.directory_wire_info(id)));
                    t
                }
                Err(e) => {
                    let what = format!("wire {id} {} <-> {}", record.a, record.b);
                    let r = refusal(&e, &what);
                    let r = if matches!(e, OpError::Conflict(_)) {
                        Refusal::new(
                            ErrorCode::WireExists,
                            format!("wire {id} exists (another host connected it first)"),
                        )
                    } else {
                        r
                    };
                    job.reply(Reply::err(r.code, r.message));
                    BTreeSet::new()
                }
            },
            Pending::Disconnect { job, id } => match result {
                Ok(Written { revision: rev, .. }) => {
                    let t = d.view.own(&keys.wire(id), None, rev, 0);
                    crate::log(&format!("directory: wire {id} disconnected at revision {rev}"));
                    for w in t.iter().copied().chain([id]) {
                        self.reconcile(w);
                    }
                    job.reply(Reply::ok(&serde_json::json!({})));
                    BTreeSet::new()
                }
                Err(OpError::Conflict(_)) => {
                    job.reply(Reply::err(
                        ErrorCode::NoSuchWire,
                        format!("wire {id} changed or went meanwhile; look again"),
                    ));
                    BTreeSet::new()
                }
                Err(e) => {
                    let r = refusal(&e, &format!("wire {id}"));
                    job.reply(Reply::err(r.code, r.message));
                    BTreeSet::new()
                }
            },
            Pending::Claim { name, record } => {
                let me = d.cfg.host.clone();
                let Ok(w) = result else {
                    let e = result.expect_err("checked");
                    // Written again at the next (re)connection.
                    d.problem(format!("endpoint {name}"), format!("not advertised: {e}"));
                    return BTreeSet::new();
                };
                d.solved(&format!("endpoint {name}"));
                let value = serde_json::to_vec(&record).expect("encodes");
                let t = d.view.own(&keys.endpoint(&me, &name), Some(&value), w.revision, w.created);
                crate::log(&format!(
                    "directory: endpoint {name} advertised on host {me} (VM {}) at revision {}",
                    vm_name(record.vm),
                    w.revision
                ));
                if let Some((h, c)) = d.view.owner(&name).filter(|(h, _)| **h != me) {
                    crate::log(&format!(
                        "directory: endpoint {name} also lives on host {h} (VM {}), which has it in the directory; \
                         its wire stays there until that VM stops and this one starts here",
                        vm_name(c.record.vm)
                    ));
                }
                // Removed while the write was on its way: withdrawn.
                if self.state.endpoint(&name).is_none() {
                    self.directory_release(&name);
                }
                t
            }
            Pending::Release { name } => {
                match result {
                    Ok(w) => {
                        crate::log(&format!("directory: endpoint {name} withdrawn at revision {}", w.revision));
                        let key = keys.endpoint(&d.cfg.host, &name);
                        return d.view.own(&key, None, w.revision, 0);
                    }
                    // Withdrawn at the next (re)connection.
                    Err(e) => crate::log(&format!("directory: endpoint {name} not withdrawn: {e}")),
                }
                BTreeSet::new()
            }
        }
    }

    /// Advertises local endpoint `name` (if its key here is not already what
    /// it should be): whether the group may use it, and whether its VM runs
    /// here as last seen.
    pub(super) fn directory_claim(&mut self, name: &str) {
        let origin = self.state.endpoint(name).and_then(|e| self.ports[e.ix.ix()].as_ref()).map(|p| p.origin);
        let Some(origin) = origin else { return };
        let (group, member) = (origin.group_may_use(), origin.member);
        let Some(d) = self.dir.as_mut() else { return };
        if !d.synced {
            return;
        }
        let own = d.view.claim(name, &d.cfg.host).map(|c| c.record.clone());
        let vm = d.vm.get(name).copied().or(own.as_ref().map(|r| r.vm)).unwrap_or_default();
        let record = EndpointRecord { group, member, vm };
        let sent = d.pending.values().rev().find_map(|p| match p {
            Pending::Claim { name: n, record } if n == name => Some(Some(record)),
            Pending::Release { name: n } if n == name => Some(None),
            _ => None,
        });
        match sent {
            Some(Some(r)) if *r == record => return,
            None if own.as_ref() == Some(&record) => return,
            _ => {}
        }
        let op = Op::PutEndpoint { name: name.to_owned(), record: record.clone() };
        d.send(op, Pending::Claim { name: name.to_owned(), record });
    }

    /// The VM of local endpoint `name` started (`running`) or stopped here:
    /// the directory is told, so the endpoint's wire follows it (a VM that
    /// arrived by live migration takes its name over, see
    /// [`View::owner`]).
    pub(super) fn directory_vm(&mut self, name: &str, running: bool) {
        let Some(d) = self.dir.as_mut() else { return };
        let was = d.vm.get(name).copied().or(d.view.claim(name, &d.cfg.host).map(|c| c.record.vm));
        let now = match (running, was) {
            (true, _) => VmState::Running,
            (false, Some(VmState::Running | VmState::Stopped)) => VmState::Stopped,
            (false, _) => VmState::Idle,
        };
        if was == Some(now) && d.vm.contains_key(name) {
            return;
        }
        d.vm.insert(name.to_owned(), now);
        self.directory_claim(name);
    }

    /// Withdraws this host's key for `name` (the endpoint was removed).
    pub(super) fn directory_release(&mut self, name: &str) {
        let Some(d) = self.dir.as_mut() else { return };
        d.solved(&format!("endpoint {name}"));
        d.vm.remove(name);
        let pending = d.pending.values().any(|p| matches!(p, Pending::Claim { name: n, .. } if n == name));
        if d.view.claim(name, &d.cfg.host).is_none() && !pending {
            return;
        }
        d.send(Op::DeleteEndpoint { name: name.to_owned() }, Pending::Release { name: name.to_owned() });
    }

    /// The half of directory wire `id` this host runs, brought to what the
    /// view says: made, re-pointed, turned loopback or encap, or removed;
    /// and the next hop an arrival would use kept resolved.
    pub(super) fn reconcile(&mut self, id: u32) {
        self.reconcile_half(id);
        self.directory_arm(id);
    }

    /// A local endpoint that is an end of directory wire `id` without a
    /// half here may see its VM arrive by live migration: the next hop to
    /// the far end's host is kept resolved meanwhile (as for an armed
    /// `connect --incoming`), so the arrival's LOCATE goes out at once.
    pub(super) fn directory_arm(&mut self, id: u32) {
        let Some(d) = self.dir.as_ref() else { return };
        let mut want = None;
        if self.mig.is_some() && self.state.table().wire(ConnectorId(id)).is_none() {
            if let Some(w) = d.view.wire(id) {
                want = [&w.value.a, &w.value.b].into_iter().find_map(|n| {
                    self.state.endpoint(n)?;
                    match d.view.location(w.value.other(n)?, &d.cfg.host) {
                        Location::Host { vtep: IpAddr::V4(v), .. } => Some(v),
                        _ => None,
                    }
                });
            }
        }
        let had = d.armed.get(&id).copied();
        if had == want {
            return;
        }
        let mut next = self.state.clone();
        if let Some(v) = had {
            next.release(v);
        }
        if let Some(v) = want {
            next.want(v, None, Instant::now());
        }
        self.commit(next);
        let d = self.dir.as_mut().expect("directory");
        match want {
            Some(v) => {
                d.armed.insert(id, v);
                self.send_arp_requests();
            }
            None => {
                d.armed.remove(&id);
            }
        }
    }

    fn reconcile_half(&mut self, id: u32) {
        let Some(d) = self.dir.as_ref() else { return };
        let cid = ConnectorId(id);
        let half = d.view.half(id, &d.cfg.host);
        let made = d.made.contains(&cid);
        let by_group = d.view.wire(id).is_some_and(|w| w.value.by_group);
        let migration = self.mig.is_some();
        let cur = self.state.table().wire(cid).cloned();
        let subject = format!("wire {id}");
        if cur.is_some() && !made {
            if half != Half::NotHere {
                let why =
                    "a wire with this id was connected here by VTEP address; the directory's is not set up".into();
                self.dir.as_mut().expect("directory").problem(subject, why);
            }
            return;
        }
        let want: Option<(String, String, Option<EncapName>)> = match &half {
            Half::NotHere => None,
            Half::Loopback { a, b } => Some((a.clone(), b.clone(), None)),
            Half::Encap { local, vtep: IpAddr::V4(v), format, .. } => {
                Some((local.clone(), v.to_string(), Some(encap_of(*format))))
            }
            Half::Encap { local, vtep: IpAddr::V6(v), .. } => {
                let why = format!("{local}'s peer lives behind IPv6 VTEP {v}; this fabric's underlay is IPv4");
                self.dir.as_mut().expect("directory").problem(subject, why);
                return;
            }
            Half::Waiting { local, remote, remote_at } => {
                let why = match remote_at {
                    Location::HostDown(h) => format!("{remote}'s host {h} is down; {local}'s half is kept as it was"),
                    _ => format!("no host advertises {remote}; {local}'s half is kept as it was"),
                };
                self.dir.as_mut().expect("directory").problem(subject, why);
                return;
            }
        };
        if cur.is_none() && want.is_some() {
            let d = self.dir.as_mut().expect("directory");
            if let Some(end) = d.left.get(&id) {
                if d.vm.get(end) != Some(&VmState::Running) {
                    // Its VM left by live migration; the view has not
                    // caught up with its new host yet.
                    return;
                }
                d.left.remove(&id);
            }
        }
        let Some((local, peer, encap)) = want else {
            self.dir.as_mut().expect("directory").left.remove(&id);
            self.dir.as_mut().expect("directory").solved(&subject);
            if let Some(w) = &cur {
                // Our end left for another host while it is still here (a
                // live migration): the peer's MOVED, which passes on frames
                // in flight, ends the half here; the directory ends it only
                // if no MOVED came within LOCATE_FIRST.
                if migration && self.state.endpoint(&w.endpoint).is_some() && !self.deferral_due(id) {
                    return;
                }
                if let Err(r) = self.disconnect_half(cid) {
                    crate::log(&format!("directory: wire {id}: its half here could not be removed: {}", r.message));
                    return;
                }
                crate::log(&format!("directory: wire {id}: no end lives here any more; its half is removed"));
            }
            self.dir.as_mut().expect("directory").made.remove(&cid);
            return;
        };
        if by_group {
            let ends: Vec<&str> = match &half {
                Half::Loopback { a, b } => vec![a, b],
                _ => vec![&local],
            };
            if let Err(r) = self.may_use(Role::Member, &ends, "connect") {
                self.dir.as_mut().expect("directory").problem(subject, r.message);
                return;
            }
        }
        if let Some(w) = &cur {
            let same = match (&w.peer, &half) {
                (Peer::Local(p), Half::Loopback { a, b }) => {
                    (w.endpoint == *a && p == b) || (w.endpoint == *b && p == a)
                }
                (Peer::Remote { vtep, encap: e }, Half::Encap { format, .. }) => {
                    w.endpoint == local && vtep.to_string() == peer && *e == encap_value(*format)
                }
                _ => false,
            };
            if same {
                self.dir.as_mut().expect("directory").deferred.remove(&id);
                self.dir.as_mut().expect("directory").solved(&subject);
                return;
            }
            // An end that moved: with the migration exchange, its new host's
            // LOCATE re-points the wire and passes frames in flight on; the
            // directory only applies what the LOCATE has not within
            // LOCATE_FIRST.
            // Not for a wire that turns loopback here: both ends are here
            // and nothing else is to come.
            // (Not from a view that has not seen the arriving end leave
            // again: its VM stopped here.)
            let arriving = if w.endpoint == local { &peer } else { &local };
            let stopped = self.dir.as_ref().is_some_and(|d| d.vm.get(arriving) == Some(&VmState::Stopped));
            let colocating = matches!(half, Half::Loopback { .. })
                && matches!(w.peer, Peer::Remote { .. })
                && (w.endpoint == local || w.endpoint == peer)
                && !stopped;
            if migration && !colocating && !self.deferral_due(id) {
                return;
            }
            if !colocating {
                if let Err(r) = self.disconnect_half(cid) {
                    crate::log(&format!("directory: wire {id}: cannot re-point its half here: {}", r.message));
                    return;
                }
            }
        }
        // A loopback wire whose encap half exists: connect the arriving end
        // to the staying one (the wire turns loopback in place).
        let (first, second) = match (&cur, &half) {
            (Some(w), Half::Loopback { a, b }) if matches!(w.peer, Peer::Remote { .. }) => {
                if w.endpoint == *a {
                    (b.clone(), a.clone())
                } else {
                    (a.clone(), b.clone())
                }
            }
            _ => (local.clone(), peer.clone()),
        };
        self.dir.as_mut().expect("directory").made.insert(cid);
        match self.connect(cid, &first, &second, encap) {
            Ok(_) => {
                crate::log(&format!("directory: wire {id}: half here set up ({first} <-> {second})"));
                self.report_mtu(&first);
                self.dir.as_mut().expect("directory").solved(&subject);
            }
            Err(r) => {
                if self.state.table().wire(cid).is_none() {
                    self.dir.as_mut().expect("directory").made.remove(&cid);
                }
                self.dir.as_mut().expect("directory").problem(subject, format!("half here not set up: {}", r.message));
            }
        }
    }

    /// A VM that started here on local endpoint `name`, which has no wire
    /// here but is an end of a directory wire: the half it takes, set up at
    /// once, as an armed `connect --incoming` would be (so the exchange's
    /// LOCATE re-points the peer without waiting for the directory, and
    /// nothing the VM sends meets an endpoint without a wire). The
    /// directory then agrees once this host's `running` is written
    /// ([`View::arriving_half`]: none while another host that is up still
    /// has the name's VM running; the directory decides that case).
    pub(super) fn directory_arrival(&self, name: &str) -> Option<(ConnectorId, String, Option<EncapName>)> {
        let d = self.dir.as_ref().filter(|d| d.synced)?;
        self.mig.as_ref()?;
        if self.state.table().wire_of(name).is_some() {
            return None;
        }
        let e = self.state.endpoint(name)?;
        let member = self.ports[e.ix.ix()].as_ref()?.origin.member;
        for id in d.view.wires_of(name) {
            let cur = self.state.table().wire(ConnectorId(id));
            // A wire with this id that is not the directory's is left alone.
            if cur.is_some() && !d.made.contains(&ConnectorId(id)) {
                continue;
            }
            let by_group = d.view.wire(id).is_some_and(|w| w.value.by_group);
            let (peer, encap, ends) = match d.view.arriving_half(id, &d.cfg.host, name, member) {
                // The far end's encap half is here: the wire turns loopback.
                Half::Loopback { a, b } if cur.is_none_or(|w| w.kind() == vw_wire::WireKind::Encap) => {
                    let other = if a == name { b } else { a };
                    if cur.is_some_and(|w| w.endpoint != other) {
                        continue;
                    }
                    (other.clone(), None, vec![name.to_owned(), other])
                }
                _ if cur.is_some() => continue,
                Half::Encap { vtep: IpAddr::V4(v), format, .. } => {
                    (v.to_string(), Some(encap_of(format)), vec![name.to_owned()])
                }
                _ => continue,
            };
            let ends: Vec<&str> = ends.iter().map(String::as_str).collect();
            if by_group && self.may_use(Role::Member, &ends, "connect").is_err() {
                continue;
            }
            return Some((ConnectorId(id), peer, encap));
        }
        None
    }

    /// Sets up what [`Control::directory_arrival`] found.
    pub(super) fn directory_arrived(&mut self, name: &str, id: ConnectorId, peer: &str, encap: Option<EncapName>) {
        let Some(d) = self.dir.as_mut() else { return };
        d.made.insert(id);
        d.left.remove(&id.0);
        d.deferred.remove(&id.0);
        let r = self.connect(id, name, peer, encap);
        self.directory_arm(id.0);
        match r {
            Ok(_) => {
                crate::log(&format!("wire {id}: {name}'s VM started here; connected to {peer} (from the directory)"));
                self.dir.as_mut().expect("directory").solved(&format!("wire {id}"));
            }
            Err(r) => {
                crate::log(&format!("wire {id}: {name}'s VM started here, but its half is not set up: {}", r.message));
                if self.state.table().wire(id).is_none() {
                    self.dir.as_mut().expect("directory").made.remove(&id);
                }
            }
        }
    }

    /// A MOVED ended wire `id`'s half here: its end left by live migration.
    pub(super) fn directory_left(&mut self, id: ConnectorId, end: &str) {
        let Some(d) = self.dir.as_mut() else { return };
        if d.view.wire(id.0).is_some() {
            d.left.insert(id.0, end.to_owned());
        }
    }

    /// Whether the change to wire `id`'s half that waits for the migration
    /// exchange is due (it starts waiting now if it was not).
    fn deferral_due(&mut self, id: u32) -> bool {
        let d = self.dir.as_mut().expect("directory");
        let due = *d.deferred.entry(id).or_insert_with(|| Instant::now() + LOCATE_FIRST);
        if Instant::now() < due {
            return false;
        }
        d.deferred.remove(&id);
        true
    }

    /// Re-points that waited for a LOCATE and are due.
    pub(super) fn directory_tick(&mut self) {
        let due: Vec<u32> = match &self.dir {
            Some(d) => d.deferred.iter().filter(|(_, t)| **t <= Instant::now()).map(|(id, _)| *id).collect(),
            None => return,
        };
        for id in due {
            self.reconcile(id);
            // Nothing waits any more (the wire went, say): forgotten.
            if let Some(d) = self.dir.as_mut() {
                if d.deferred.get(&id).is_some_and(|t| *t <= Instant::now()) {
                    d.deferred.remove(&id);
                }
            }
        }
    }

    /// Where the ends of directory wire `id` live (empty: not a directory wire).
    pub(super) fn directory_ends(&self, id: u32) -> Vec<proto::WireEnd> {
        let Some(d) = &self.dir else { return Vec::new() };
        let Some(w) = d.view.wire(id) else { return Vec::new() };
        [&w.value.a, &w.value.b]
            .into_iter()
            .map(|n| {
                let (host, state) = match d.view.location(n, &d.cfg.host) {
                    Location::Here => (d.cfg.host.clone(), "here"),
                    Location::Host { host, .. } => (host, "up"),
                    Location::HostDown(h) => (h, "host down"),
                    Location::Unknown => (String::new(), "unknown"),
                };
                proto::WireEnd { endpoint: n.clone(), host, state: state.into() }
            })
            .collect()
    }

    /// A wire as a connect by name answers it: this host's half if it has
    /// one, else the directory's record.
    fn directory_wire_info(&self, id: u32) -> proto::WireInfo {
        if self.state.table().wire(ConnectorId(id)).is_some() {
            return self.wire_info(ConnectorId(id));
        }
        self.remote_wire_info(id)
    }

    fn remote_wire_info(&self, id: u32) -> proto::WireInfo {
        let d = self.dir.as_ref().expect("directory");
        let w = d.view.wire(id).map(|w| w.value.clone());
        let ends = self.directory_ends(id);
        let state = match ends.iter().find(|e| e.state != "up") {
            Some(e) if e.state == "host down" => format!("{}'s host {} is down", e.endpoint, e.host),
            Some(e) if e.state == "unknown" => format!("no host advertises {}", e.endpoint),
            _ => "elsewhere".into(),
        };
        let (a, b) = w.as_ref().map(|w| (w.a.as_str(), w.b.as_str())).unwrap_or_default();
        proto::WireInfo {
            ends,
            ..proto::WireInfo::idle(id, "remote", a, b, w.as_ref().map(|w| encap_of(w.format)), state)
        }
    }

    /// Directory wires with no half on this host, for `wire list`.
    pub(super) fn directory_only_wires(&self) -> Vec<proto::WireInfo> {
        let Some(d) = &self.dir else { return Vec::new() };
        d.view
            .wires()
            .filter(|(id, _)| self.state.table().wire(ConnectorId(**id)).is_none())
            .map(|(id, _)| self.remote_wire_info(*id))
            .collect()
    }

    /// The directory, for `status`.
    pub(super) fn directory_status(&self) -> Option<proto::DirectoryStatus> {
        let d = self.dir.as_ref()?;
        let mut problems: Vec<String> = d.problems.iter().map(|(s, w)| format!("{s}: {w}")).collect();
        problems.extend(d.view.bad_keys().iter().map(|(k, e)| format!("key {k} cannot be read: {e}")));
        // Endpoints of this host that another host has in the directory.
        for n in d.view.names_of(&d.cfg.host) {
            if let Some((h, c)) = d.view.owner(n).filter(|(h, _)| **h != d.cfg.host) {
                let state = if d.view.host(h).is_some() { "up" } else { "down" };
                let mine = d.view.claim(n, &d.cfg.host).is_some_and(|m| m.record.member);
                if mine && !c.record.member {
                    problems.push(format!(
                        "endpoint {n}: root's endpoint of this name lives on host {h} ({state}); an endpoint a \
                         member of the socket group added does not take a root endpoint's name or wires"
                    ));
                    continue;
                }
                problems.push(format!(
                    "endpoint {n}: lives on host {h} ({state}, VM {}) in the directory; its wire is set up there, not \
                     here, until that VM stops and this one starts",
                    vm_name(c.record.vm)
                ));
            }
        }
        Some(proto::DirectoryStatus {
            backend: "etcd".into(),
            urls: d.cfg.endpoints.clone(),
            domain: d.cfg.keys.prefix().trim_start_matches("/virtualwire/").trim_end_matches('/').to_owned(),
            host: d.cfg.host.clone(),
            state: if d.connected { "connected" } else { "unavailable" }.into(),
            reason: d.reason.clone(),
            for_s: d.since.elapsed().as_secs(),
            revision: d.view.revision(),
            hosts: d.view.hosts().count(),
            endpoints: d.view.endpoint_count(),
            wires: d.view.wires().count(),
            problems,
        })
    }

    /// Marks wire `id`'s half as the directory's (restoring the state file).
    pub(super) fn directory_mark(&mut self, id: ConnectorId) {
        if let Some(d) = self.dir.as_mut() {
            d.made.insert(id);
        }
    }

    /// Whether wire `id`'s half here came from the directory.
    pub(super) fn directory_made(&self, id: ConnectorId) -> bool {
        self.dir.as_ref().is_some_and(|d| d.made.contains(&id))
    }

    /// An endpoint removed here: a directory wire's half goes with it (the
    /// wire stays in the directory, for the end to be set up where it
    /// lives next).
    pub(super) fn directory_drop_half(&mut self, name: &str) -> Result<(), Refusal> {
        let Some(w) = self.state.table().wire_of(name).map(|w| w.id) else { return Ok(()) };
        if !self.directory_made(w) {
            return Ok(());
        }
        self.disconnect(w)?;
        if let Some(d) = self.dir.as_mut() {
            d.made.remove(&w);
        }
        crate::log(&format!(
            "directory: wire {w}: its half here goes with endpoint {name}; the wire stays in the directory"
        ));
        Ok(())
    }
}
