//! The etcd v3 backend: one thread, with its own single-threaded runtime,
//! between the fabric's control thread and an etcd cluster.
//!
//! Per connection (a *session*) it grants the host a lease of
//! `lease_ttl` seconds, writes `hosts/HOST` under it and keeps it alive
//! (every third of the TTL); reads the whole domain once (an
//! [`Event::Reset`]) unless it is resuming; watches the domain's prefix from
//! the revision after the last one it reported, and applies the fabric's
//! [`Op`]s as transactions that compare a revision before they write. When
//! the connection fails it reports [`Event::Unavailable`] once, answers ops
//! with [`OpError::Unavailable`] meanwhile, and reconnects (0.25 s, doubling
//! to 2 s), resuming the watch from the last revision; a revision the store
//! has compacted away gives a fresh [`Event::Reset`] instead. A lease that
//! expired meanwhile is replaced by a new one.

use crate::model::{Entry, HostRecord, Keys};
use crate::{Event, Op, OpError, Written};
use crossbeam::channel::{self, Receiver, Sender};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc::{self as tmpsc, UnboundedReceiver, UnboundedSender};

/// TLS to etcd with a client certificate (PEM contents, read by the fabric
/// at start).
#[derive(Clone)]
pub struct Tls {
    /// The CA that signed the etcd servers' certificates.
    pub ca: Vec<u8>,
    /// This host's client certificate.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.write_str("Tls { .. }")
    }
}

/// How to reach etcd and what this host advertises.
#[derive(Debug, Clone)]
pub struct Config {
    /// etcd client URLs (`http://10.0.0.9:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// The domain's keys.
    pub keys: Keys,
    /// This host's name.
    pub host: String,
    /// What it advertises.
    pub record: HostRecord,
    /// The lease's time to live, in seconds: how long after this fabric
    /// dies its host shows as down.
    pub lease_ttl_s: i64,
    /// How long a connection attempt or a request may take.
    pub timeout: Duration,
    /// TLS with a client certificate.
    pub tls: Option<Tls>,
    /// User and password for etcd's authentication (with TLS, the
    /// certificate's common name may be the user instead).
    pub user: Option<(String, String)>,
}

/// The running backend. Dropping it ends the session and revokes the lease
/// (the host shows as down at once).
pub struct Backend {
    ops: Option<UnboundedSender<(u64, Op)>>,
    events: Receiver<Event>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Starts the backend's thread.
    pub fn start(cfg: Config) -> std::io::Result<Backend> {
        let (op_tx, op_rx) = tmpsc::unbounded_channel();
        let (ev_tx, ev_rx) = channel::unbounded();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("vw-directory".into()).spawn(move || {
            rt.block_on(run(cfg, op_rx, ev_tx));
        })?;
        Ok(Backend { ops: Some(op_tx), events: ev_rx, thread: Some(thread) })
    }

    /// Sends `op`; its answer comes back as [`Event::Done`] with `tag`.
    pub fn send(&self, tag: u64, op: Op) {
        if let Some(tx) = &self.ops {
            let _ = tx.send((tag, op));
        }
    }

    /// Its events, to wait on.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// The next event, if one is waiting.
    pub fn try_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.ops = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An op being made.
type OpFuture = Pin<Box<dyn Future<Output = Result<Written, OpError>>>>;

/// Why a session ended: the connection failed.
struct Lost(String);

fn lost(e: etcd_client::Error) -> Lost {
    Lost(describe(&e))
}

fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

fn op_error(e: etcd_client::Error) -> OpError {
    use tonic::Code;
    match &e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument | Code::FailedPrecondition
            ) =>
        {
            OpError::Refused(s.message().to_owned())
        }
        _ => OpError::Unavailable(describe(&e)),
    }
}

async fn run(cfg: Config, mut ops: UnboundedReceiver<(u64, Op)>, tx: Sender<Event>) {
    let mut p = Progress { last_rev: 0, backoff: Duration::from_millis(250), reported: None, cluster: None, next: 0 };
    loop {
        let reason = match session(&cfg, &mut ops, &tx, &mut p).await {
            Ok(()) => return,
            Err(Lost(r)) => r,
        };
        if p.reported.as_deref() != Some(reason.as_str()) {
            let _ = tx.send(Event::Unavailable { reason: reason.clone() });
            p.reported = Some(reason.clone());
        }
        // The next session tries the next URL: a member that is down or cut
        // off is left at once; the backoff grows after each whole round.
        p.next += 1;
        let round = p.next.is_multiple_of(cfg.endpoints.len().max(1));
        let wait = tokio::time::sleep(if round { p.backoff } else { Duration::from_millis(50) });
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                op = ops.recv() => match op {
                    None => return,
                    Some((tag, _)) => {
                        let _ = tx.send(Event::Done { tag, result: Err(OpError::Unavailable(reason.clone())) });
                    }
                },
            }
        }
        if round {
            p.backoff = (p.backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// Connects to one of the cluster's URLs (a session uses one member, so a
/// member that is down fails the session at once instead of some of its
/// requests).
async fn connect(cfg: &Config, url: &str) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout)
        .with_timeout(cfg.timeout)
        .with_keep_alive(Duration::from_secs(1), cfg.timeout)
        .with_keep_alive_while_idle(true);
    if let Some(t) = &cfg.tls {
        opts = opts.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&t.ca))
                .identity(Identity::from_pem(&t.cert, &t.key)),
        );
    }
    if let Some((u, p)) = &cfg.user {
        opts = opts.with_user(u.clone(), p.clone());
    }
    Client::connect([url], Some(opts)).await
}

/// Reads the whole domain and reports it as a reset.
async fn reset(c: &mut Client, cfg: &Config, tx: &Sender<Event>, last_rev: &mut i64) -> Result<(), Lost> {
    let r = c.get(cfg.keys.prefix(), Some(GetOptions::new().with_prefix())).await.map_err(lost)?;
    let revision = r.header().map_or(0, |h| h.revision());
    let entries = r
        .kvs()
        .iter()
        .map(|kv| Entry {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
            created: kv.create_revision(),
        })
        .collect();
    *last_rev = revision;
    let _ = tx.send(Event::Reset { entries, revision });
    Ok(())
}

async fn watch(c: &mut Client, cfg: &Config, from: i64) -> Result<etcd_client::WatchStream, Lost> {
    c.watch(cfg.keys.prefix(), Some(WatchOptions::new().with_prefix().with_start_revision(from))).await.map_err(lost)
}

/// What carries over from one session to the next.
struct Progress {
    /// The last revision reported to the fabric (0: none yet).
    last_rev: i64,
    /// The wait before the next connection attempt.
    backoff: Duration,
    /// The unavailability last reported, if it still holds.
    reported: Option<String>,
    /// The cluster answering last (another one, a new or restored store,
    /// cannot be resumed from).
    cluster: Option<u64>,
    /// The URL the next session tries (an index into the endpoints, modulo).
    next: usize,
}

/// One connection: returns `Ok` when the fabric dropped the backend.
async fn session(
    cfg: &Config,
    ops: &mut UnboundedReceiver<(u64, Op)>,
    tx: &Sender<Event>,
    p: &mut Progress,
) -> Result<(), Lost> {
    let url = cfg.endpoints[p.next % cfg.endpoints.len().max(1)].clone();
    let mut c = connect(cfg, &url).await.map_err(|e| Lost(format!("{url}: {}", describe(&e))))?;
    let lease = c.lease_grant(cfg.lease_ttl_s, None).await.map_err(lost)?.id();
    let host = serde_json::to_vec(&cfg.record).expect("a host record encodes");
    let put = c.put(cfg.keys.host(&cfg.host), host, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| {
        match op_error(e) {
            OpError::Refused(m) => Lost(format!(
                "etcd refuses to let this fabric write host {}'s key ({m}): with authentication on, its client \
                 certificate's common name must be {} and that user needs the role directory/etcd-roles.sh gives it",
                cfg.host, cfg.host
            )),
            OpError::Unavailable(m) => Lost(m),
            other => Lost(other.to_string()),
        }
    })?;
    let (mut keeper, mut alive) = c.lease_keep_alive(lease).await.map_err(lost)?;
    // A store behind what this fabric saw (restored from an older backup,
    // or new) cannot be resumed from: read it whole.
    let now = put.header().map_or(0, |h| h.revision());
    let cluster = put.header().map_or(0, |h| h.cluster_id());
    let other_cluster = p.cluster.is_some_and(|c| c != cluster);
    p.cluster = Some(cluster);
    let last_rev = &mut p.last_rev;
    if *last_rev == 0 || now <= *last_rev || other_cluster {
        reset(&mut c, cfg, tx, last_rev).await?;
    }
    let mut ws = watch(&mut c, cfg, *last_rev + 1).await?;
    let _ = tx.send(Event::Connected { endpoint: url.clone() });
    p.backoff = Duration::from_millis(250);
    p.reported = None;
    let mut tick = tokio::time::interval(Duration::from_millis((cfg.lease_ttl_s.max(1) as u64 * 1000) / 3));
    // Ops run one at a time, in the order sent (two writes of one key land
    // in that order), beside the watch and the keep-alive, which a slow op
    // does not hold up.
    let mut queue: VecDeque<(u64, Op)> = VecDeque::new();
    let mut inflight: Option<(u64, OpFuture)> = None;
    let result = loop {
        if inflight.is_none() {
            if let Some((tag, op)) = queue.pop_front() {
                let (mut c2, keys, host, timeout) = (c.clone(), cfg.keys.clone(), cfg.host.clone(), cfg.timeout);
                let fut: OpFuture = Box::pin(async move {
                    match tokio::time::timeout(timeout, apply(&mut c2, &keys, &host, op)).await {
                        Ok(r) => r,
                        Err(_) => Err(OpError::Unavailable(format!("no answer within {timeout:?}"))),
                    }
                });
                inflight = Some((tag, fut));
            }
        }
        tokio::select! {
            op = ops.recv() => match op {
                None => {
                    let _ = c.lease_revoke(lease).await;
                    return Ok(());
                }
                Some(op) => queue.push_back(op),
            },
            result = async { inflight.as_mut().expect("checked").1.as_mut().await }, if inflight.is_some() => {
                let (tag, _) = inflight.take().expect("checked");
                let gone = match &result {
                    Err(OpError::Unavailable(m)) => Some(m.clone()),
                    _ => None,
                };
                let _ = tx.send(Event::Done { tag, result });
                if let Some(m) = gone {
                    break Lost(m);
                }
            },
            m = ws.message() => match m {
                Err(e) => break lost(e),
                Ok(None) => break Lost("the watch ended".into()),
                Ok(Some(resp)) => {
                    if resp.canceled() && resp.compact_revision() <= 0 {
                        // Not for compaction (permissions, say): retried
                        // after the backoff.
                        break Lost(format!("the watch was cancelled: {}", resp.cancel_reason()));
                    }
                    if resp.compact_revision() > 0 {
                        // The history since the last revision is gone: read
                        // everything again.
                        if let Err(l) = reset(&mut c, cfg, tx, last_rev).await {
                            break l;
                        }
                        match watch(&mut c, cfg, *last_rev + 1).await {
                            Ok(w) => ws = w,
                            Err(l) => break l,
                        }
                        continue;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        let revision = kv.mod_revision();
                        *last_rev = (*last_rev).max(revision);
                        let _ = tx.send(match ev.event_type() {
                            EventType::Put => {
                                Event::Put { key, value: kv.value().to_vec(), revision, created: kv.create_revision() }
                            }
                            EventType::Delete => Event::Delete { key, revision },
                        });
                    }
                }
            },
            _ = tick.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    break lost(e);
                }
            }
            k = alive.message() => match k {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(Some(_)) => break Lost("the host's lease expired".into()),
                Ok(None) => break Lost("the lease keep-alive stream ended".into()),
                Err(e) => break lost(e),
            },
        }
    };
    // Ops not made in this session are answered: the fabric refuses or
    // retries them.
    let Lost(why) = &result;
    for tag in inflight.map(|(t, _)| t).into_iter().chain(queue.into_iter().map(|(t, _)| t)) {
        let _ = tx.send(Event::Done { tag, result: Err(OpError::Unavailable(why.clone())) });
    }
    Err(result)
}

/// The revision of the key a failed compare looked at (0: it does not exist).
fn current_revision(r: &etcd_client::TxnResponse) -> i64 {
    r.op_responses()
        .into_iter()
        .find_map(|o| match o {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.mod_revision())),
            _ => None,
        })
        .unwrap_or(0)
}

async fn apply(c: &mut Client, keys: &Keys, host: &str, op: Op) -> Result<Written, OpError> {
    let (key, compare, then) = match op {
        Op::PutEndpoint { name, record } => {
            let v = serde_json::to_vec(&record).expect("an endpoint record encodes");
            let r = c
                .put(keys.endpoint(host, &name), v, Some(PutOptions::new().with_prev_key()))
                .await
                .map_err(op_error)?;
            let revision = r.header().map_or(0, |h| h.revision());
            let created = r.prev_key().map_or(revision, |kv| kv.create_revision());
            return Ok(Written { revision, created });
        }
        Op::DeleteEndpoint { name } => {
            let r = c.delete(keys.endpoint(host, &name), None).await.map_err(op_error)?;
            return Ok(Written { revision: r.header().map_or(0, |h| h.revision()), created: 0 });
        }
        Op::CreateWire { id, record } => {
            let k = keys.wire(id);
            let v = serde_json::to_vec(&record).expect("a wire record encodes");
            (k.clone(), Compare::create_revision(k.clone(), CompareOp::Equal, 0), TxnOp::put(k, v, None))
        }
        Op::DeleteWire { id, expect } => {
            let k = keys.wire(id);
            (k.clone(), Compare::mod_revision(k.clone(), CompareOp::Equal, expect), TxnOp::delete(k, None))
        }
    };
    let txn = Txn::new().when([compare]).and_then([then]).or_else([TxnOp::get(key, None)]);
    let r = c.txn(txn).await.map_err(op_error)?;
    let revision = r.header().map_or(0, |h| h.revision());
    if r.succeeded() {
        Ok(Written { revision, created: revision })
    } else {
        Err(OpError::Conflict(current_revision(&r)))
    }
}
