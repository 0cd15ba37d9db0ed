//! Which worker polls which receive queue.
//!
//! A queue that becomes pollable (a DPDK device added, a VM enabling a
//! ring, the uplink once the saved state is back) goes to the worker with
//! the least measured load, then the fewest queues; a queue that goes away
//! is forgotten. Nothing else moves a queue, so adding or removing one is
//! O(log n) and never disturbs the others. Loads are measured by the
//! caller ([`Rxqs::set_loads`]). [`Rxqs::rebalance`] reassigns
//! all of them by measured load, largest first to the least loaded worker
//! (as OVS's `pmd-rxq-assign=cycles`), and adopts the result only when it
//! lowers the busiest worker's load by at least [`IMPROVEMENT_PCT`] percent
//! (as OVS's `pmd-auto-lb-improvement-threshold`), so that measurement
//! noise does not move queues back and forth.

use crate::plan::PortIndex;
use imbl::{OrdMap, OrdSet};

/// The least improvement of the busiest worker's load for which
/// [`Rxqs::rebalance`] moves queues.
pub const IMPROVEMENT_PCT: u64 = 25;

/// One polled queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rxq {
    /// The worker that polls it.
    pub worker: usize,
    /// Its load when last measured (frames per second).
    pub load: u64,
    /// Just moved: polled by nobody until the move is published.
    pub parked: bool,
}

/// The assignment of every polled queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rxqs {
    queues: OrdMap<(PortIndex, u16), Rxq>,
    /// Per worker: (load, queues).
    workers: Vec<(u64, u32)>,
    parked: OrdSet<PortIndex>,
}

impl Rxqs {
    /// No queue, `workers` workers (at least one).
    pub fn new(workers: usize) -> Rxqs {
        Rxqs { queues: OrdMap::new(), workers: vec![(0, 0); workers.max(1)], parked: OrdSet::new() }
    }

    /// The worker with the least load, then the fewest queues, then the lowest index.
    fn least_loaded(&self) -> usize {
        (0..self.workers.len()).min_by_key(|&w| (self.workers[w], w)).unwrap_or(0)
    }

    fn take(&mut self, key: (PortIndex, u16)) {
        if let Some(q) = self.queues.remove(&key) {
            let w = &mut self.workers[q.worker];
            w.0 = w.0.saturating_sub(q.load);
            w.1 -= 1;
        }
    }

    fn put(&mut self, key: (PortIndex, u16), q: Rxq) {
        let w = &mut self.workers[q.worker];
        w.0 += q.load;
        w.1 += 1;
        self.queues.insert(key, q);
    }

    /// Sets the pollable queues of `port`: queues no longer listed are
    /// dropped, new ones go to the least loaded worker, the others stay.
    pub fn set_port(&mut self, port: PortIndex, queues: &[u16]) {
        let have: Vec<u16> = self.of(port).map(|(q, _)| q).collect();
        for q in have.iter().filter(|q| !queues.contains(q)) {
            self.take((port, *q));
        }
        for &q in queues.iter().filter(|q| !have.contains(q)) {
            let worker = self.least_loaded();
            self.put((port, q), Rxq { worker, load: 0, parked: false });
        }
        if !self.queues.range((port, 0)..=(port, u16::MAX)).any(|(_, q)| q.parked) {
            self.parked.remove(&port);
        }
    }

    /// The queues of `port` with their assignment.
    pub fn of(&self, port: PortIndex) -> impl Iterator<Item = (u16, Rxq)> + '_ {
        self.queues.range((port, 0)..=(port, u16::MAX)).map(|(k, q)| (k.1, *q))
    }

    /// Every queue.
    pub fn iter(&self) -> impl Iterator<Item = (PortIndex, u16, Rxq)> + '_ {
        self.queues.iter().map(|(k, q)| (k.0, k.1, *q))
    }

    /// Per worker: measured load and number of queues.
    pub fn workers(&self) -> &[(u64, u32)] {
        &self.workers
    }

    /// Takes the measured `load` (frames per second) of every queue. Moves
    /// nothing: it decides where new queues go and what
    /// [`Rxqs::rebalance`] does.
    pub fn set_loads(&mut self, load: &dyn Fn(PortIndex, u16) -> u64) {
        let keys: Vec<(PortIndex, u16)> = self.queues.keys().copied().collect();
        for w in &mut self.workers {
            w.0 = 0;
        }
        for k in keys {
            if let Some(q) = self.queues.get_mut(&k) {
                q.load = load(k.0, k.1);
                self.workers[q.worker].0 += q.load;
            }
        }
    }

    /// Reassigns every queue by its last measured load if that lowers the
    /// busiest worker's load enough (see the module). Queues that move are
    /// parked; returns the ports that have one.
    pub fn rebalance(&mut self) -> Vec<PortIndex> {
        let all: Vec<((PortIndex, u16), Rxq)> = self.queues.iter().map(|(k, q)| (*k, *q)).collect();
        let n = self.workers.len();
        let busiest_now = self.workers.iter().map(|w| w.0).max().unwrap_or(0);
        // Largest first, each to the least loaded worker so far.
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(all[i].1.load), all[i].0));
        let mut next = vec![(0u64, 0u32); n];
        let mut target = vec![0usize; all.len()];
        for i in order {
            let w = (0..n).min_by_key(|&w| (next[w], w)).unwrap_or(0);
            next[w].0 += all[i].1.load;
            next[w].1 += 1;
            target[i] = w;
        }
        let busiest_next = next.iter().map(|w| w.0).max().unwrap_or(0);
        if busiest_now == 0 || busiest_next * 100 > busiest_now * (100 - IMPROVEMENT_PCT) {
            return Vec::new();
        }
        let mut moved = Vec::new();
        self.workers = vec![(0, 0); n];
        self.queues = OrdMap::new();
        for (i, (k, mut q)) in all.into_iter().enumerate() {
            if target[i] != q.worker {
                q.worker = target[i];
                q.parked = true;
                if moved.last() != Some(&k.0) {
                    moved.push(k.0);
                }
                self.parked.insert(k.0);
            }
            self.put(k, q);
        }
        moved
    }

    /// Unparks every parked queue; returns their ports.
    pub fn unpark(&mut self) -> Vec<PortIndex> {
        let ports: Vec<PortIndex> = self.parked.iter().copied().collect();
        for &p in &ports {
            let keys: Vec<(PortIndex, u16)> = self.queues.range((p, 0)..=(p, u16::MAX)).map(|(k, _)| *k).collect();
            for k in keys {
                if let Some(q) = self.queues.get_mut(&k) {
                    q.parked = false;
                }
            }
        }
        self.parked = OrdSet::new();
        ports
    }

    /// Whether some queue is parked.
    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_worker(r: &Rxqs) -> Vec<Vec<(u32, u16)>> {
        let mut v = vec![Vec::new(); r.workers().len()];
        for (p, q, x) in r.iter() {
            v[x.worker].push((p.0, q));
        }
        v
    }

    #[test]
    fn new_queues_go_to_the_least_loaded_worker_and_others_stay() {
        let mut r = Rxqs::new(2);
        r.set_port(PortIndex(1), &[0, 1, 2]);
        assert_eq!(per_worker(&r), vec![vec![(1, 0), (1, 2)], vec![(1, 1)]]);
        r.set_port(PortIndex(2), &[0]);
        assert_eq!(per_worker(&r), vec![vec![(1, 0), (1, 2)], vec![(1, 1), (2, 0)]]);
        // A queue going away moves nothing else.
        r.set_port(PortIndex(1), &[0, 1]);
        assert_eq!(per_worker(&r), vec![vec![(1, 0)], vec![(1, 1), (2, 0)]]);
        r.set_port(PortIndex(3), &[0]);
        assert_eq!(per_worker(&r), vec![vec![(1, 0), (3, 0)], vec![(1, 1), (2, 0)]]);
        r.set_port(PortIndex(2), &[]);
        assert_eq!(r.workers(), &[(0, 2), (0, 1)]);
    }

    #[test]
    fn rebalancing_moves_queues_by_load_and_parks_them() {
        let mut r = Rxqs::new(2);
        for p in 1..=4 {
            r.set_port(PortIndex(p), &[0]);
        }
        // Worker 0 has ports 1 and 3, worker 1 ports 2 and 4; 1 and 3 are busy.
        assert_eq!(per_worker(&r), vec![vec![(1, 0), (3, 0)], vec![(2, 0), (4, 0)]]);
        let load = |p: PortIndex, _| if p.0 % 2 == 1 { 1_000_000 } else { 10 };
        r.set_loads(&load);
        assert_eq!(per_worker(&r), vec![vec![(1, 0), (3, 0)], vec![(2, 0), (4, 0)]], "measuring moves nothing");
        let moved = r.rebalance();
        // Each busy port on a worker of its own.
        assert_eq!(per_worker(&r), vec![vec![(1, 0), (2, 0)], vec![(3, 0), (4, 0)]]);
        assert_eq!(moved, vec![PortIndex(2), PortIndex(3)]);
        assert!(r.of(PortIndex(3)).all(|(_, q)| q.parked));
        assert!(r.of(PortIndex(1)).all(|(_, q)| !q.parked));
        assert_eq!(r.unpark(), vec![PortIndex(2), PortIndex(3)]);
        assert!(!r.has_parked());
        // Balanced now: the same loads move nothing.
        r.set_loads(&load);
        assert!(r.rebalance().is_empty());
        // A new queue goes to the worker with less load.
        r.set_port(PortIndex(5), &[0]);
        let w5 = r.of(PortIndex(5)).next().unwrap().1.worker;
        let loads = r.workers();
        assert!(loads[w5].0 <= loads[1 - w5].0);
    }

    #[test]
    fn a_small_improvement_moves_nothing() {
        let mut r = Rxqs::new(2);
        for p in 1..=3 {
            r.set_port(PortIndex(p), &[0]);
        }
        // Worker 0: ports 1 and 3 (100 + 100); worker 1: port 2 (150). The
        // best assignment gives the busiest 200 -> 200: nothing to gain.
        let load = |p: PortIndex, _| if p.0 == 2 { 150 } else { 100 };
        r.set_loads(&load);
        assert!(r.rebalance().is_empty());
        assert_eq!(r.workers(), &[(200, 2), (150, 1)]);
        // A new queue goes to the worker with less measured load.
        r.set_port(PortIndex(4), &[0]);
        assert_eq!(r.of(PortIndex(4)).next().unwrap().1.worker, 1);
        // Idle: nothing moves either.
        r.set_loads(&|_, _| 0);
        assert!(r.rebalance().is_empty());
    }
}
