//! What the workers read: an immutable configuration snapshot, and the
//! per-worker mailbox through which the control plane replaces it.
//!
//! Publication is RCU-like and lock-free: the control plane builds a new
//! [`Snapshot`], puts an `Arc` of it into every worker's inbox and waits
//! until each worker reports (at the top of its poll loop, a quiescent point
//! with no packet in flight and every TX buffer flushed) that it runs the
//! new version. The worker returns the old `Arc` through its `retired`
//! queue so the memory is freed on the control thread, never on a worker.
//! A worker's cost is one empty-queue check per poll iteration.

use crossbeam::queue::ArrayQueue;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vw_pmd::{Mbuf, PortIo};
use vw_wire::MacAddr;

pub use vw_core::plan::{decap_key, DecapTarget, EndpointAction, Plan, PortIndex, Role, UplinkPlan};

/// Frames that workers without a TX queue of their own on a port pass to
/// the worker that owns one: entry `k` is written only by worker `k` and
/// drained by worker `k % txq` (for `k < txq`, worker `k` itself, which
/// empties its own ring before it sends directly, so a flow stays in order
/// when `txq` grows). While a change of `txq` is being published two
/// workers may briefly drain one ring; `ArrayQueue` allows that.
pub type Handoff = Arc<[ArrayQueue<Mbuf>]>;

/// How the workers reach a port's queues.
#[derive(Debug, Clone)]
pub struct PortDevice {
    /// An ethdev's queues or a vhost-user device's.
    pub io: PortIo,
    /// See [`Handoff`]; present on ports that may have fewer TX queues than workers.
    pub handoff: Option<Handoff>,
}

impl PortDevice {
    /// A port that is not part of the fabric.
    pub const NONE: PortDevice = PortDevice { io: PortIo::None, handoff: None };
}

/// A hold queue: frames of one wire kept in order while its end moves
/// (see `vw_core::hold`). Any worker may push; one at a time empties it
/// (the one that wins [`Park::claim`]), so released frames leave in order.
pub struct Park {
    /// The frames, oldest first.
    pub queue: ArrayQueue<Mbuf>,
    draining: AtomicBool,
}

impl Park {
    /// A queue for `capacity` frames.
    pub fn new(capacity: usize) -> Park {
        Park { queue: ArrayQueue::new(capacity.max(1)), draining: AtomicBool::new(false) }
    }

    /// Worker side: takes the right to empty the queue; false if another
    /// worker is emptying it now.
    #[inline]
    pub fn claim(&self) -> bool {
        !self.draining.swap(true, Ordering::Acquire)
    }

    /// Worker side: gives the right back (after the frames taken are sent).
    #[inline]
    pub fn unclaim(&self) {
        self.draining.store(false, Ordering::Release);
    }

    /// Nothing held, and no worker emptying it.
    pub fn settled(&self) -> bool {
        self.queue.is_empty() && !self.draining.load(Ordering::Acquire)
    }
}

/// The hold queues of a snapshot: by key (`vw_core::plan::port_park_key` or
/// a decap key), and those being released, which workers empty every
/// iteration.
#[derive(Clone, Default)]
pub struct Parks {
    /// Every queue in use.
    pub by_key: Arc<HashMap<u64, Arc<Park>>>,
    /// The queues being released.
    pub releases: Arc<[(u64, Arc<Park>)]>,
}

/// One immutable configuration of the data path: the compiler's [`Plan`]
/// (read through `Deref`) and each port's device handles, which change
/// only when a port comes or goes and are shared between snapshots.
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// What the workers do.
    pub plan: Plan,
    /// Per port index (as long as `plan.ports`).
    pub devices: Arc<[PortDevice]>,
    /// The hold queues `plan.parks` names.
    pub parks: Parks,
    /// Secure wires' SAs (shared between snapshots).
    pub secure: Arc<crate::secure::SecureTable>,
}

impl std::ops::Deref for Snapshot {
    type Target = Plan;

    #[inline(always)]
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

impl Snapshot {
    /// The wire counter slot of hold queue `key` (or one that counts nothing).
    #[inline]
    pub fn parks_spec(&self, key: u64) -> u32 {
        self.plan.parks.get(&key).map_or(u32::MAX, |p| p.slot)
    }

    /// An empty configuration (nothing polled) for `max_ports` ports and
    /// `workers` workers.
    pub fn empty(max_ports: usize, workers: usize) -> Snapshot {
        Snapshot {
            version: 0,
            plan: Plan::empty(max_ports, workers),
            devices: vec![PortDevice::NONE; max_ports].into(),
            parks: Parks::default(),
            secure: Arc::default(),
        }
    }
}

/// Creates the handoff queues for a port (one per worker).
pub fn new_handoff(workers: usize) -> Handoff {
    (0..workers).map(|_| ArrayQueue::new(1024)).collect::<Vec<_>>().into()
}

/// An ARP sighting a worker passes to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourEvent {
    /// Sender protocol address.
    pub ip: Ipv4Addr,
    /// Sender hardware address.
    pub mac: MacAddr,
}

/// The channel between the control plane and one worker.
pub struct Mailbox {
    inbox: ArrayQueue<Arc<Snapshot>>,
    retired: ArrayQueue<Arc<Snapshot>>,
    running: AtomicU64,
    alive: AtomicBool,
    /// Poll loop iterations begun (see [`Mailbox::quiescent`]).
    epoch: AtomicU64,
    /// Frames the control plane wants sent on the uplink (ARP requests).
    pub inject: ArrayQueue<Mbuf>,
    /// ARP sightings for the control plane.
    pub events: ArrayQueue<NeighbourEvent>,
    /// Migration control messages (whole frames) for the control plane.
    pub migration: ArrayQueue<Mbuf>,
}

/// Marks a worker dead when dropped (see [`Mailbox::alive_guard`]).
pub struct AliveGuard<'a>(&'a Mailbox);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

/// A worker did not take a new configuration in time.
#[derive(Debug, thiserror::Error)]
#[error("worker {0} did not take the new configuration within {1:?}; it may be stuck or dead")]
pub struct PublishTimeout(pub usize, pub Duration);

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Mailbox {
    /// An empty mailbox; the worker marks itself alive when it starts.
    pub fn new() -> Mailbox {
        Mailbox {
            inbox: ArrayQueue::new(1),
            retired: ArrayQueue::new(4),
            running: AtomicU64::new(0),
            alive: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            inject: ArrayQueue::new(256),
            events: ArrayQueue::new(1024),
            migration: ArrayQueue::new(128),
        }
    }

    /// Worker side: takes a new snapshot if one was published, returning
    /// the old one through the retired queue.
    #[inline(always)]
    pub fn take_update(&self, current: &mut Arc<Snapshot>) -> bool {
        if self.inbox.is_empty() {
            return false;
        }
        let Some(next) = self.inbox.pop() else { return false };
        let version = next.version;
        let old = std::mem::replace(current, next);
        // The control plane waits for every ack before publishing again, so
        // the retired queue (capacity 4) always has room; if it ever had not,
        // dropping here would only mean freeing on this worker.
        let _ = self.retired.push(old);
        self.running.store(version, Ordering::Release);
        true
    }

    /// Worker side: marks a quiescent point, at the top of every poll loop
    /// iteration, where the worker holds no device id read before. SeqCst,
    /// so that a device id cleared before [`quiesce`] reads this counter is
    /// seen cleared by every read after the counter moves on.
    #[inline(always)]
    pub fn quiescent(&self) {
        self.epoch.store(self.epoch.load(Ordering::Relaxed).wrapping_add(1), Ordering::SeqCst);
    }

    /// Worker side: mark running/stopped.
    pub fn set_alive(&self, alive: bool, version: u64) {
        self.running.store(version, Ordering::Release);
        self.alive.store(alive, Ordering::Release);
    }

    /// Worker side: marks the worker running until the returned guard is
    /// dropped, which also happens when the worker panics and unwinds.
    pub fn alive_guard(&self, version: u64) -> AliveGuard<'_> {
        self.set_alive(true, version);
        AliveGuard(self)
    }

    /// Whether the worker is running its loop.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// The version the worker runs.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Acquire)
    }

    /// Control side: frees snapshots the worker has given back.
    pub fn reclaim(&self) {
        while self.retired.pop().is_some() {}
    }
}

/// Waits until every live worker has passed a quiescent point after this
/// call began (or `timeout`): afterwards no worker uses anything it read
/// before the call, such as a vhost-user device id cleared just before.
/// Returns false on a timeout. Safe from any thread; workers do not wait for
/// the caller.
pub fn quiesce(mailboxes: &[Arc<Mailbox>], timeout: Duration) -> bool {
    let start: Vec<u64> = mailboxes.iter().map(|m| m.epoch.load(Ordering::SeqCst)).collect();
    let deadline = Instant::now() + timeout;
    for (mb, e0) in mailboxes.iter().zip(start) {
        while mb.is_alive() && mb.epoch.load(Ordering::SeqCst) == e0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(10));
        }
    }
    true
}

/// Control side: publishes `snap` to every mailbox and waits until every
/// live worker runs it. Workers that are not alive (not started yet, or
/// stopped) are skipped: they pick the newest snapshot when they start.
///
/// Versions must increase with every call, successful or not. On a timeout
/// some workers may run the new snapshot and others the old one: the caller
/// must treat that as fatal (see `Control::apply`), never as "nothing
/// changed".
pub fn publish(mailboxes: &[Arc<Mailbox>], snap: Arc<Snapshot>, timeout: Duration) -> Result<(), PublishTimeout> {
    let version = snap.version;
    let deadline = Instant::now() + timeout;
    let result = (|| {
        for (i, mb) in mailboxes.iter().enumerate() {
            // Drop an update the worker never took (it cannot have: we wait
            // for acks), then post the new one.
            while mb.inbox.pop().is_some() {}
            if mb.inbox.push(snap.clone()).is_err() {
                return Err(PublishTimeout(i, timeout));
            }
        }
        for (i, mb) in mailboxes.iter().enumerate() {
            let mut spins = 0u32;
            while mb.is_alive() && mb.running() < version {
                if Instant::now() > deadline {
                    return Err(PublishTimeout(i, timeout));
                }
                spins += 1;
                if spins < 100 {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
        Ok(())
    })();
    for mb in mailboxes {
        mb.reclaim();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64) -> Arc<Snapshot> {
        let mut s = Snapshot::empty(4, 1);
        s.version = version;
        Arc::new(s)
    }

    #[test]
    fn workers_take_updates_and_old_snapshots_are_freed_on_the_control_side() {
        let mbs: Vec<Arc<Mailbox>> = (0..2).map(|_| Arc::new(Mailbox::new())).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for mb in &mbs {
            let (mb, stop) = (mb.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                let mut cur = snap(0);
                mb.set_alive(true, 0);
                let mut updates = 0;
                while !stop.load(Ordering::Relaxed) {
                    if mb.take_update(&mut cur) {
                        updates += 1;
                    }
                    std::hint::spin_loop();
                }
                mb.set_alive(false, cur.version);
                (updates, cur.version)
            }));
        }
        while !mbs.iter().all(|m| m.is_alive()) {
            std::thread::yield_now();
        }
        let mut weak = Vec::new();
        for v in 1..=50 {
            let s = snap(v);
            weak.push(Arc::downgrade(&s));
            publish(&mbs, s, Duration::from_secs(5)).unwrap();
            for mb in &mbs {
                assert_eq!(mb.running(), v);
            }
        }
        // Every snapshot but the last is no longer referenced anywhere.
        let live = weak.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(live, 1);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            assert_eq!(h.join().unwrap(), (50, 50));
        }
    }

    #[test]
    fn a_stuck_worker_times_out_and_a_dead_one_is_skipped() {
        let mb = Arc::new(Mailbox::new());
        mb.set_alive(true, 0);
        let e = publish(std::slice::from_ref(&mb), snap(1), Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.0, 0);
        mb.set_alive(false, 0);
        publish(std::slice::from_ref(&mb), snap(2), Duration::from_millis(50)).unwrap();
    }

    #[test]
    fn a_panicking_worker_is_marked_dead() {
        let mb = Arc::new(Mailbox::new());
        let mb2 = mb.clone();
        let r = std::thread::spawn(move || {
            let _alive = mb2.alive_guard(0);
            assert!(mb2.is_alive());
            panic!("worker bug");
        })
        .join();
        assert!(r.is_err());
        assert!(!mb.is_alive());
    }
}
