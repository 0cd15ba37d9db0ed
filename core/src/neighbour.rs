//! Underlay neighbour resolution (ARP, RFC 826) for the control plane.
//!
//! The fabric resolves the MAC address of every next hop its encap wires
//! send through: the peer VTEP itself when it is on the uplink's subnet, else
//! the gateway. This module is the pure state machine; the control plane
//! feeds it ARP sightings from the workers and sends the requests it asks
//! for. Schedule:
//! * unresolved: request at once, then after 250 ms, 500 ms, then every 1 s;
//! * resolved: re-probe 30 s after the last sighting, three probes 1 s apart;
//!   if none is answered the entry turns `stale` but keeps its MAC (frames
//!   keep flowing to the last known address) and is probed every 5 s.

use imbl::OrdMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use vw_wire::MacAddr;

const RETRIES: [Duration; 3] = [Duration::from_millis(250), Duration::from_millis(500), Duration::from_secs(1)];
const REFRESH_AFTER: Duration = Duration::from_secs(30);
const REFRESH_PROBES: u32 = 3;
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const STALE_INTERVAL: Duration = Duration::from_secs(5);

/// Resolution state of one neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No MAC known yet.
    Incomplete,
    /// MAC known and recently confirmed.
    Reachable,
    /// MAC known but not confirmed by the last probes.
    Stale,
    /// Configured by the operator (`--neighbour`); never probed.
    Permanent,
}

impl State {
    /// Name shown by `vwctl status`.
    pub fn name(self) -> &'static str {
        match self {
            State::Incomplete => "incomplete",
            State::Reachable => "reachable",
            State::Stale => "stale",
            State::Permanent => "permanent",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    permanent: bool,
    mac: Option<MacAddr>,
    users: usize,
    requests: u64,
    /// Probes sent since the last sighting.
    unanswered: u32,
    last_heard: Option<Instant>,
    next_probe: Instant,
}

/// A neighbour as reported to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourView {
    /// Address.
    pub ip: Ipv4Addr,
    /// MAC, when known.
    pub mac: Option<MacAddr>,
    /// State.
    pub state: State,
    /// ARP requests sent.
    pub requests: u64,
    /// Wires using it.
    pub users: usize,
}

/// The neighbours the fabric resolves.
#[derive(Debug, Default, Clone)]
pub struct Neighbours {
    entries: OrdMap<Ipv4Addr, Entry>,
}

impl Neighbours {
    /// Starts resolving `ip` for one more wire.
    pub fn want(&mut self, ip: Ipv4Addr, now: Instant) {
        self.entries
            .entry(ip)
            .or_insert(Entry {
                permanent: false,
                mac: None,
                users: 0,
                requests: 0,
                unanswered: 0,
                last_heard: None,
                next_probe: now,
            })
            .users += 1;
    }

    /// Adds an entry the operator configured: always resolved, never probed,
    /// never forgotten.
    pub fn add_permanent(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        let users = self.entries.get(&ip).map_or(0, |e| e.users);
        self.entries.insert(
            ip,
            Entry {
                permanent: true,
                mac: Some(mac),
                users,
                requests: 0,
                unanswered: 0,
                last_heard: None,
                next_probe: now,
            },
        );
    }

    /// One wire less uses `ip`; forgets it when none does.
    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(e) = self.entries.get_mut(&ip) {
            e.users = e.users.saturating_sub(1);
            if e.users == 0 && !e.permanent {
                self.entries.remove(&ip);
            }
        }
    }

    /// The addresses being resolved.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.entries.keys().copied().collect()
    }

    /// An ARP frame from `ip` with sender `mac` was seen. Returns true when
    /// the MAC is new or changed (the data path needs a new snapshot).
    pub fn heard(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) -> bool {
        let Some(e) = self.entries.get_mut(&ip) else { return false };
        if e.permanent {
            return false;
        }
        let changed = e.mac != Some(mac);
        e.mac = Some(mac);
        e.unanswered = 0;
        e.last_heard = Some(now);
        e.next_probe = now + REFRESH_AFTER;
        changed
    }

    /// The MAC of `ip`, if known (reachable or stale).
    pub fn mac(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&ip).and_then(|e| e.mac)
    }

    fn state_of(e: &Entry) -> State {
        if e.permanent {
            return State::Permanent;
        }
        match e.mac {
            None => State::Incomplete,
            Some(_) if e.unanswered > REFRESH_PROBES => State::Stale,
            Some(_) => State::Reachable,
        }
    }

    /// Addresses to send an ARP request for now; advances their schedule.
    pub fn due(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let out: Vec<Ipv4Addr> =
            self.entries.iter().filter(|(_, e)| !e.permanent && now >= e.next_probe).map(|(ip, _)| *ip).collect();
        for ip in &out {
            let Some(e) = self.entries.get_mut(ip) else { continue };
            e.requests += 1;
            e.unanswered += 1;
            let wait = match e.mac {
                None => RETRIES[(e.unanswered as usize - 1).min(RETRIES.len() - 1)],
                Some(_) if e.unanswered <= REFRESH_PROBES => REFRESH_INTERVAL,
                Some(_) => STALE_INTERVAL,
            };
            e.next_probe = now + wait;
        }
        out
    }

    /// Every neighbour, for `status`.
    pub fn view(&self) -> Vec<NeighbourView> {
        self.entries
            .iter()
            .map(|(ip, e)| NeighbourView {
                ip: *ip,
                mac: e.mac,
                state: Self::state_of(e),
                requests: e.requests,
                users: e.users,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn unresolved_neighbours_are_probed_at_once_then_backing_off() {
        let t0 = Instant::now();
        let mut n = Neighbours::default();
        n.want(IP, t0);
        assert_eq!(n.due(t0), vec![IP]);
        assert!(n.due(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(n.due(t0 + Duration::from_millis(250)), vec![IP]);
        assert!(n.due(t0 + Duration::from_millis(700)).is_empty());
        assert_eq!(n.due(t0 + Duration::from_millis(750)), vec![IP]);
        assert_eq!(n.due(t0 + Duration::from_millis(1750)), vec![IP]);
        assert_eq!(n.due(t0 + Duration::from_millis(2750)), vec![IP]);
        assert_eq!(n.view()[0].state, State::Incomplete);
        assert_eq!(n.view()[0].requests, 5);
    }

    #[test]
    fn a_reply_resolves_and_refresh_failures_make_it_stale_not_forgotten() {
        let t0 = Instant::now();
        let mut n = Neighbours::default();
        n.want(IP, t0);
        n.due(t0);
        assert!(n.heard(IP, MAC, t0));
        assert!(!n.heard(IP, MAC, t0), "same MAC again is not a change");
        assert_eq!(n.mac(IP), Some(MAC));
        assert!(n.due(t0 + Duration::from_secs(29)).is_empty());
        let mut t = t0 + Duration::from_secs(30);
        for _ in 0..4 {
            assert_eq!(n.due(t), vec![IP]);
            t += Duration::from_secs(1);
        }
        assert_eq!(n.view()[0].state, State::Stale);
        assert_eq!(n.mac(IP), Some(MAC), "a stale entry keeps its MAC");
        assert!(n.due(t).is_empty());
        assert_eq!(n.due(t + Duration::from_secs(4)), vec![IP]);
        assert!(n.heard(IP, MacAddr([2, 0, 0, 0, 0, 9]), t), "a new MAC is a change");
        assert_eq!(n.view()[0].state, State::Reachable);
    }

    #[test]
    fn permanent_entries_are_never_probed_overridden_or_forgotten() {
        let t0 = Instant::now();
        let mut n = Neighbours::default();
        n.add_permanent(IP, MAC, t0);
        n.want(IP, t0);
        assert!(n.due(t0 + Duration::from_secs(100)).is_empty());
        assert!(!n.heard(IP, MacAddr([2, 0, 0, 0, 0, 9]), t0));
        assert_eq!(n.mac(IP), Some(MAC));
        n.release(IP);
        assert_eq!(n.view()[0].state, State::Permanent);
    }

    #[test]
    fn sightings_of_unwanted_addresses_are_ignored_and_entries_are_shared() {
        let t0 = Instant::now();
        let mut n = Neighbours::default();
        assert!(!n.heard(IP, MAC, t0));
        assert!(n.view().is_empty());
        n.want(IP, t0);
        n.want(IP, t0);
        n.release(IP);
        assert_eq!(n.addresses(), vec![IP]);
        n.release(IP);
        assert!(n.addresses().is_empty());
    }
}
