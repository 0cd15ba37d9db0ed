//! The hold queues of moving wire ends (`vw_core::hold` decides when frames
//! are held and released): their memory, sized by the wire's rate, the
//! FLUSHED sent once a released queue is empty, and the holds that end.

use super::Control;
use crate::snapshot::{Park, Parks};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use vw_core::hold::{self, Expired};
use vw_core::migrate::{HoldAt, HoldReason};
use vw_core::plan::port_park_key;
use vw_core::{decap_key, Plan};
use vw_wire::{Encap, MacAddr};

/// Fewest frames a hold queue has room for.
const MIN_PARK: usize = 2048;
/// Most frames one hold queue has room for.
const MAX_PARK: usize = 65536;

/// A wire's recent rate, for sizing its hold queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireRate {
    frames: [u64; 2],
    /// Frames per second in the busier direction, over the last second.
    per_s: u64,
}

impl Control {
    /// Frames a hold queue for the wire in `slot` needs: twice what the
    /// wire carried in `--migration-hold-ms` at its recent rate, within
    /// [MIN_PARK, MAX_PARK] and a quarter of the mbuf pool.
    fn park_capacity(&self, slot: u32) -> usize {
        let hold_ms = self.settings.migration.as_ref().map_or(0, |m| m.hold.as_millis() as u64);
        let rate = self.rates.get(slot as usize).map_or(0, |r| r.per_s);
        let want = (rate.saturating_mul(hold_ms) / 1000).saturating_mul(2) as usize;
        let pool = (self.pool.size() / 4) as usize;
        want.clamp(MIN_PARK, MAX_PARK).min(pool.max(MIN_PARK))
    }

    /// Measures every wire's rate (once a second, from the tick).
    pub(super) fn measure_rates(&mut self) {
        let dt = self.last_rates.elapsed();
        if dt < super::MEASURE {
            return;
        }
        self.last_rates = Instant::now();
        let slots: Vec<u32> = self
            .state
            .table()
            .wires()
            .filter_map(|w| self.state.slot(w.id))
            .chain(self.state.departures().map(|(_, (_, s))| *s))
            .collect();
        for slot in slots {
            let t = self.wire_totals(slot);
            let Some(r) = self.rates.get_mut(slot as usize) else { continue };
            let d = |i: usize| t.frames[i].saturating_sub(r.frames[i]);
            r.per_s = (d(0).max(d(1)) as f64 / dt.as_secs_f64()) as u64;
            r.frames = t.frames;
        }
    }

    /// The hold queues for `plan`: those it keeps (the same queues), new
    /// ones sized for their wire, and those it no longer names (to be
    /// emptied once no worker uses them).
    pub(super) fn parks_for(&self, plan: &Plan) -> (Parks, Vec<Arc<Park>>) {
        let cur = &self.current.parks;
        let same = cur.by_key.len() == plan.parks.len()
            && plan.parks.keys().all(|k| cur.by_key.contains_key(k))
            && cur.releases.len() == plan.parks.values().filter(|p| p.release).count()
            && cur.releases.iter().all(|(k, _)| plan.parks.get(k).is_some_and(|p| p.release));
        if same {
            return (cur.clone(), Vec::new());
        }
        let mut by_key = HashMap::with_capacity(plan.parks.len());
        for (k, spec) in &plan.parks {
            let p = cur.by_key.get(k).cloned().unwrap_or_else(|| Arc::new(Park::new(self.park_capacity(spec.slot))));
            by_key.insert(*k, p);
        }
        let releases: Vec<(u64, Arc<Park>)> =
            plan.parks.iter().filter(|(_, p)| p.release).map(|(k, _)| (*k, by_key[k].clone())).collect();
        let retired = cur.by_key.iter().filter(|(k, _)| !by_key.contains_key(*k)).map(|(_, p)| p.clone()).collect();
        (Parks { by_key: Arc::new(by_key), releases: releases.into() }, retired)
    }

    /// Frees what queues no worker uses any more still hold (`hold_expired`).
    pub(super) fn free_parks(&mut self, retired: Vec<Arc<Park>>) {
        for p in retired {
            while p.queue.pop().is_some() {
                self.hold_expired += 1;
            }
        }
    }

    /// The key of the hold queue of `at` in the current plan.
    fn park_key(&self, at: &HoldAt) -> Option<u64> {
        match at {
            HoldAt::From(name) => self.state.endpoint(name).map(|e| port_park_key(e.ix)),
            HoldAt::Inbound(id) => [Encap::Vwire, Encap::Vxlan]
                .into_iter()
                .map(|e| decap_key(e, id.0))
                .find(|k| self.current.plan.parks.contains_key(k)),
        }
    }

    /// Frames held in the queue of `at` now.
    pub(super) fn held_now(&self, at: &HoldAt) -> usize {
        self.park_key(at).and_then(|k| self.current.parks.by_key.get(&k)).map_or(0, |p| p.queue.len())
    }

    /// Sends the FLUSHED of released queues that are empty now, and ends or
    /// releases holds whose time is up. Called every control loop turn.
    pub(super) fn tend_holds(&mut self) {
        if self.state.holds().next().is_none() {
            return;
        }
        let ready: Vec<(HoldAt, vw_wire::ConnectorId, std::net::Ipv4Addr, String)> = self
            .state
            .holds()
            .filter(|(_, h)| h.released)
            .filter_map(|(at, h)| {
                let (to, end) = h.flush_to.clone()?;
                let settled =
                    self.park_key(at).and_then(|k| self.current.parks.by_key.get(&k)).is_none_or(|p| p.settled());
                settled.then(|| (at.clone(), h.wire, to, end))
            })
            .collect();
        for (at, id, to, end) in ready {
            let when = self.state.wire_move(id).map_or(0, |m| m.local_ns);
            let o = vw_core::exchange::flushed_message(&self.state, id, &end, to, MacAddr([0; 6]), when);
            self.send_message(o);
            self.state.flush_sent(&at);
            crate::log(&format!("wire {id}: the frames held for {end} went on to {to}; FLUSHED sent"));
        }
        let now = Instant::now();
        if hold::next_due(&self.state).is_none_or(|t| now < t) {
            return;
        }
        let mut next = self.state.clone();
        let ended = hold::expire(&mut next, now, |at| {
            self.park_key(at).and_then(|k| self.current.parks.by_key.get(&k)).is_none_or(|p| p.settled())
        });
        if ended.is_empty() {
            // A released queue the VM is still emptying; nothing changed.
            return;
        }
        let before = self.hold_expired;
        let dropped: Vec<String> = ended
            .iter()
            .filter_map(|e| match e {
                Expired::Dropped(at, h) => Some(format!(
                    "wire {}: {} ended after {} ms without the VM resuming here or elsewhere",
                    h.wire,
                    describe(at),
                    self.settings.migration.as_ref().map_or(0, |m| m.hold.as_millis())
                )),
                Expired::Released(at, h) if h.reason == HoldReason::AwaitingFlush => Some(format!(
                    "wire {}: {}: no FLUSHED from {} in time; sending on what was held",
                    h.wire,
                    describe(at),
                    h.flush_from.map_or_else(|| "the old host".to_owned(), |ip| ip.to_string())
                )),
                _ => None,
            })
            .collect();
        if self.apply(next).is_ok() {
            for l in dropped {
                crate::log(&format!("{l} ({} held frames dropped as hold_expired)", self.hold_expired - before));
            }
        }
    }

    /// `hold_expired` frames, for `stats`.
    pub(super) fn hold_expired(&self) -> u64 {
        self.hold_expired
    }
}

/// A hold, for the log.
fn describe(at: &HoldAt) -> String {
    match at {
        HoldAt::From(name) => format!("the hold of what {name} sends"),
        HoldAt::Inbound(id) => format!("the hold of wire {id}'s frames from the underlay"),
    }
}
