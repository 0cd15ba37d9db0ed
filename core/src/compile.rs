//! The compiler: configuration in, data-path [`Plan`] out.
//!
//! [`update`] brings a plan up to date with the parts of the state marked
//! changed ([`State::dirty`]): for each marked port its decision, polls and
//! drains; for each marked connector its decap entries and forward
//! template; the uplink's plan if marked. Its cost follows what changed,
//! not how many endpoints and wires exist. [`compile`] is the same with
//! everything marked; the tests hold that both always agree.

use crate::migrate::{Hold, HoldAt, HoldReason};
use crate::plan::{
    decap_key, poll_order, port_park_key, DecapTarget, EndpointAction, Park, ParkSpec, Plan, PortDecision, PortIndex,
    Role, UplinkPlan,
};
use crate::state::{Endpoint, State};
use vw_wire::table::Peer;
use vw_wire::{ConnectorId, Encap, EncapTemplate, UnderlayConfig};

/// Wire counter slot meaning "do not count" (the decap half of a
/// forced-encap loopback wire: its encap half already counted the frame).
pub const NO_SLOT: u32 = u32::MAX;

/// The plan of `st`, from nothing.
pub fn compile(st: &State) -> Plan {
    let mut st = st.clone();
    st.mark_all();
    let mut plan = Plan::empty(st.config().max_ports, st.config().workers);
    update(&mut plan, &mut st);
    plan
}

/// Brings `plan` (the plan of `st` before its marked changes) up to date
/// and clears the marks.
pub fn update(plan: &mut Plan, st: &mut State) {
    let dirty = st.take_dirty();
    for &id in &dirty.wires {
        for e in [Encap::Vwire, Encap::Vxlan, Encap::Forward, Encap::Secure, Encap::SecureVxlan] {
            plan.decap.remove(&decap_key(e, id.0));
            plan.parks.remove(&decap_key(e, id.0));
        }
        plan.forwards.remove(&id.0);
        wire_entries(plan, st, id);
    }
    for &ix in &dirty.ports {
        port(plan, st, ix);
    }
    if dirty.uplink || dirty.ports.contains(&PortIndex::UPLINK) {
        plan.uplink = uplink_plan(st);
    }
}

/// What an endpoint whose wire goes to remote `vtep` does with its frames.
fn encap_action(st: &State, id: ConnectorId, vtep: std::net::Ipv4Addr, encap: Encap, slot: u32) -> EndpointAction {
    let cfg = st.config();
    let Some(u) = &cfg.uplink else { return EndpointAction::NoWire };
    match st.next_hop_mac(vtep) {
        Some(mac) => EndpointAction::Encap {
            template: EncapTemplate::new(encap, id, u.mac, mac, u.vtep, vtep, cfg.udp_port(encap), u.mtu),
            uplink: PortIndex::UPLINK,
            slot,
        },
        None => EndpointAction::Unresolved { slot },
    }
}

/// Outer headers of frames forwarded to `to` for wire `id`, if its next
/// hop is resolved.
fn forward_template(st: &State, id: ConnectorId, to: std::net::Ipv4Addr) -> Option<EncapTemplate> {
    let cfg = st.config();
    let u = cfg.uplink.as_ref()?;
    let mac = st.next_hop_mac(to)?;
    Some(EncapTemplate::new(Encap::Forward, id, u.mac, mac, u.vtep, to, cfg.udp_port(Encap::Forward), u.mtu))
}

/// The forced-encap template of a loopback wire (benchmark aid).
fn loop_template(st: &State, id: ConnectorId) -> Option<EncapTemplate> {
    let cfg = st.config();
    let (u, encap) = (cfg.uplink.as_ref()?, cfg.force_encap?);
    let port = if encap.tunnel() == Encap::Vxlan { u.vxlan_port } else { u.vwire_port };
    Some(EncapTemplate::new(encap, id, u.mac, u.mac, u.vtep, u.vtep, port, u.mtu))
}

/// How a hold shows in the plan, and its queue's counter slot.
fn park_of(st: &State, h: &Hold) -> Option<(Park, ParkSpec)> {
    let slot = st.slot(h.wire).or_else(|| st.departed(h.wire).map(|(_, s)| *s))?;
    let park = if h.released { Park::Release } else { Park::Hold };
    Some((park, ParkSpec { slot, release: h.released, after: None }))
}

/// The queue of the frames that wire `id`'s end's old host passes on, if
/// the end just arrived here: those frames go to the end's VM, which may
/// have just resumed and take its RX ring slowly at first, so they pass
/// through a queue (always released; workers send no more than the ring
/// takes) instead of being dropped as `tx_full`. Newer frames for the end
/// held elsewhere wait until it is empty.
fn forwarded_park(plan: &mut Plan, id: ConnectorId) -> Option<u64> {
    let key = decap_key(Encap::Forward, id.0);
    let t = plan.decap.get_mut(&key).filter(|t| !t.forward)?;
    t.park = Park::Release;
    let slot = t.slot;
    plan.parks.insert(key, ParkSpec { slot, release: true, after: None });
    Some(key)
}

/// The queue holding frames for endpoint `name` while its VM is stopped.
fn toward_park(st: &State, name: &str) -> Option<u64> {
    let w = st.table().wire_of(name)?;
    let stopped = |at: &HoldAt| st.hold(at).is_some_and(|h| h.reason == HoldReason::EndStopped && !h.released);
    match &w.peer {
        Peer::Remote { encap, .. } => stopped(&HoldAt::Inbound(w.id)).then(|| decap_key(*encap, w.id.0)),
        Peer::Local(b) => {
            let other = if w.endpoint == name { b.as_str() } else { w.endpoint.as_str() };
            let ix = st.endpoint(other)?.ix;
            stopped(&HoldAt::From(other.to_owned())).then(|| port_park_key(ix))
        }
    }
}

/// Decap entries, forward template and inbound hold of connector `id`.
fn wire_entries(plan: &mut Plan, st: &State, id: ConnectorId) {
    wire_paths(plan, st, id);
    let forwarded = forwarded_park(plan, id);
    let Some(h) = st.hold(&HoldAt::Inbound(id)) else { return };
    let Some((park, mut spec)) = park_of(st, h) else { return };
    spec.after = forwarded;
    // The path the wire's frames from the underlay take to (or past) its
    // local end: the wire's own, or that of its end that left.
    let encap = match (st.table().wire(id).map(|w| &w.peer), st.departed(id).map(|(d, _)| &d.peer)) {
        (Some(Peer::Remote { encap, .. }), _) => *encap,
        (None, Some(Peer::Remote { encap, .. })) => *encap,
        _ => return,
    };
    let key = decap_key(encap, id.0);
    if let Some(t) = plan.decap.get_mut(&key) {
        t.park = park;
        plan.parks.insert(key, spec);
    }
}

/// Decap entries and the forward template of connector `id`: those of its
/// departed end first, then the wire's (which override them).
fn wire_paths(plan: &mut Plan, st: &State, id: ConnectorId) {
    let has_uplink = st.config().uplink.is_some();
    if let Some((d, slot)) = st.departed(id) {
        if let (Peer::Remote { vtep, encap }, true) = (&d.peer, has_uplink) {
            let fwd = DecapTarget { forward: true, ..DecapTarget::deliver(PortIndex::UPLINK, *slot, *vtep) };
            plan.decap.insert(decap_key(*encap, id.0), fwd);
            if let Some(t) = forward_template(st, id, d.to) {
                plan.forwards.insert(id.0, t);
            }
        }
    }
    let (Some(w), Some(slot)) = (st.table().wire(id), st.slot(id)) else { return };
    let Some(a) = st.endpoint(&w.endpoint) else { return };
    let m = st.wire_move(id);
    // Our end just arrived: its old host may pass frames on.
    let arrived = |plan: &mut Plan, to: PortIndex| {
        if m.is_some_and(|m| m.arrival_until.is_some()) {
            let t = DecapTarget { any_src: true, ..DecapTarget::deliver(to, slot, std::net::Ipv4Addr::UNSPECIFIED) };
            plan.decap.insert(decap_key(Encap::Forward, id.0), t);
        }
    };
    match &w.peer {
        Peer::Local(b) => {
            let Some(b) = st.endpoint(b) else { return };
            if let Some(t) = loop_template(st, id) {
                let vtep = st.config().uplink.as_ref().map(|u| u.vtep).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                plan.decap.insert(decap_key(t.encap(), id.0), DecapTarget::deliver(b.ix, NO_SLOT, vtep));
            }
            // Just co-located: frames the arriving end (a) sent from its old
            // host still reach b; frames for it that its old host passes on
            // reach a.
            if let Some((ip, encap, _)) = m.and_then(|m| m.old) {
                plan.decap.insert(decap_key(encap, id.0), DecapTarget::deliver(b.ix, slot, ip));
            }
            // With the migration channel, an end that leaves for another
            // host sends from there right behind its LOCATE: an entry that
            // accepts no sender, so the workers hold those frames until the
            // LOCATE splits the wire (then the encap entry takes them).
            if has_uplink && st.config().migration.is_some() {
                // (Not the secure formats: their ends do not move.)
                for e in [Encap::Vwire, Encap::Vxlan] {
                    plan.decap
                        .entry(decap_key(e, id.0))
                        .or_insert_with(|| DecapTarget::deliver(b.ix, slot, std::net::Ipv4Addr::UNSPECIFIED));
                }
            }
            arrived(plan, a.ix);
        }
        Peer::Remote { vtep, encap } => {
            if !has_uplink {
                return;
            }
            let mut t = DecapTarget::deliver(a.ix, slot, *vtep);
            // The remote end just moved: its old host may still send.
            if let Some((ip, _, _)) = m.and_then(|m| m.old) {
                t.alt_ip = ip;
            }
            arrived(plan, a.ix);
            plan.decap.insert(decap_key(*encap, id.0), t);
        }
    }
}

/// What endpoint `name` does with its frames.
fn action(st: &State, name: &str) -> EndpointAction {
    if let Some(w) = st.table().wire_of(name) {
        let (Some(a), Some(slot)) = (st.endpoint(&w.endpoint), st.slot(w.id)) else { return EndpointAction::NoWire };
        return match &w.peer {
            Peer::Local(b) => {
                let Some(b) = st.endpoint(b) else { return EndpointAction::NoWire };
                if w.endpoint != name {
                    EndpointAction::Loopback { peer: a.ix, slot, dir: 1 }
                } else if let Some(template) = loop_template(st, w.id) {
                    EndpointAction::Encap { template, uplink: PortIndex::UPLINK, slot }
                } else {
                    EndpointAction::Loopback { peer: b.ix, slot, dir: 0 }
                }
            }
            Peer::Remote { vtep, encap } => {
                if st.config().uplink.is_none() {
                    EndpointAction::NoWire
                } else {
                    encap_action(st, w.id, *vtep, *encap, slot)
                }
            }
        };
    }
    // An end that left: its frames follow the wire during the grace period
    // (the last one by connector, should it have left several).
    let mut act = EndpointAction::NoWire;
    for (id, (d, slot)) in st.departures() {
        if d.endpoint != name {
            continue;
        }
        match &d.peer {
            Peer::Remote { vtep, encap } if st.config().uplink.is_some() => {
                act = encap_action(st, *id, *vtep, *encap, *slot);
            }
            Peer::Local(other) => {
                if let Some(o) = st.endpoint(other) {
                    act = EndpointAction::Loopback { peer: o.ix, slot: *slot, dir: 0 };
                }
            }
            Peer::Remote { .. } => {}
        }
    }
    act
}

/// Inserts `entry` into a sorted list (no duplicate).
fn insert_sorted<T: Copy + Ord>(v: &mut Vec<T>, entry: T) {
    if let Err(at) = v.binary_search(&entry) {
        v.insert(at, entry);
    }
}

fn insert_poll(v: &mut Vec<(PortIndex, u16)>, entry: (PortIndex, u16)) {
    if let Err(at) = v.binary_search_by_key(&poll_order(&entry), poll_order) {
        v.insert(at, entry);
    }
}

/// Brings port `ix` up to date: its decision, the queues polled and the
/// handoff rings drained.
fn port(plan: &mut Plan, st: &State, ix: PortIndex) {
    let workers = st.config().workers;
    // Both lists are sorted with a port's entries together: cut them out.
    let poll_key = |p: &(PortIndex, u16)| (p.0 == PortIndex::UPLINK, p.0);
    let this = (ix == PortIndex::UPLINK, ix);
    for list in &mut plan.polls {
        let (a, b) = (list.partition_point(|p| poll_key(p) < this), list.partition_point(|p| poll_key(p) <= this));
        list.drain(a..b);
    }
    for list in &mut plan.drains {
        let (a, b) = (list.partition_point(|d| d.0 < ix), list.partition_point(|d| d.0 <= ix));
        list.drain(a..b);
    }
    plan.parks.remove(&port_park_key(ix));
    let decision = if ix == PortIndex::UPLINK {
        match st.config().uplink {
            Some(_) => PortDecision { role: Role::Uplink, txq: workers as u16, up: true, park: Park::No, toward: None },
            None => PortDecision::UNUSED,
        }
    } else {
        match st.endpoint_at(ix) {
            Some((name, ep)) => {
                let mut d = PortDecision {
                    role: Role::Endpoint(action(st, name)),
                    txq: ep.txq(workers),
                    up: ep.up(),
                    park: Park::No,
                    toward: toward_park(st, name),
                };
                drains(plan, ep, d.txq, workers);
                if let Some((park, mut spec)) = st.hold(&HoldAt::From(name.to_owned())).and_then(|h| park_of(st, h)) {
                    // A resident's frames for its newly co-located peer wait
                    // for what the peer's old host passes on to it.
                    if let Some(w) = st.table().wire_of(name).filter(|w| w.kind() == vw_wire::WireKind::Loopback) {
                        let f = decap_key(Encap::Forward, w.id.0);
                        spec.after = plan.parks.contains_key(&f).then_some(f);
                    }
                    d.park = park;
                    plan.parks.insert(port_park_key(ix), spec);
                }
                d
            }
            None => PortDecision::UNUSED,
        }
    };
    if decision.role != Role::Unused {
        for (q, r) in st.rxqs().of(ix) {
            if !r.parked {
                insert_poll(&mut plan.polls[r.worker], (ix, q));
            }
        }
    }
    if let Some(p) = plan.ports.get_mut(ix.ix()) {
        *p = decision;
    }
}

/// Handoff ring `k` is written only by worker `k` (while `k >= txq` and the
/// port is up) and drained by worker `k % txq`. Rings have drainers while
/// the port is up; frames left in them when it goes down are freed by the
/// fabric once no worker runs a plan that touches them.
fn drains(plan: &mut Plan, ep: &Endpoint, txq: u16, workers: usize) {
    if !ep.handoff || !ep.up() {
        return;
    }
    for k in 0..workers {
        insert_sorted(&mut plan.drains[k % txq.max(1) as usize], (ep.ix, k));
    }
}

fn uplink_plan(st: &State) -> Option<UplinkPlan> {
    let cfg = st.config();
    let u = cfg.uplink.as_ref()?;
    Some(UplinkPlan {
        port: PortIndex::UPLINK,
        underlay: UnderlayConfig {
            vtep_ip: u.vtep,
            mac: u.mac,
            vwire_port: u.vwire_port,
            vxlan_port: u.vxlan_port,
            migration_port: cfg.migration.map_or(0, |m| m.port),
        },
        neighbours: st.neighbours().addresses(),
        max_frame: u32::from(u.mtu) + 14,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::exchange;
    use crate::state::{Config, Endpoint, EndpointKind, Link, MigrationConfig, UplinkConfig};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};
    use vw_ctl::proto::EndpointSpec;
    use vw_wire::migration::{kind, Message};
    use vw_wire::MacAddr;

    const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    /// A fabric at 10.0.0.1/24 with migration on (also for `hold`'s tests).
    pub(crate) fn config(workers: usize) -> Config {
        Config {
            workers,
            max_ports: 16,
            max_wires: 8,
            uplink: Some(UplinkConfig {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                vtep: VTEP,
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
                mtu: 1500,
                vwire_port: 4789,
                vxlan_port: 4790,
            }),
            force_encap: None,
            migration: Some(MigrationConfig {
                port: 4796,
                grace: Duration::from_millis(100),
                hold: Duration::from_millis(200),
            }),
        }
    }

    fn endpoint(ix: u32, vhost: bool, queues: u16, workers: usize) -> Endpoint {
        let kind = if vhost { EndpointKind::Vhost { queues, client: true } } else { EndpointKind::Eth { queues } };
        Endpoint {
            spec: EndpointSpec::Dpdk { devargs: format!("net_null{ix}") },
            ix: PortIndex(ix),
            kind,
            link: Link::default(),
            handoff: vhost || (queues as usize) < workers,
        }
    }

    fn name(i: u8) -> String {
        format!("e{i}")
    }

    fn peer(i: u8) -> Ipv4Addr {
        // Two on the subnet, one through the gateway.
        [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(192, 168, 9, 9)][i as usize % 3]
    }

    /// A plan brought up to date change by change equals the plan compiled
    /// from nothing.
    fn check(plan: &mut Plan, st: &mut State) {
        update(plan, st);
        assert!(st.dirty().is_empty());
        assert_eq!(*plan, compile(st));
    }

    #[test]
    fn a_loopback_wire_sends_each_way_and_an_idle_vm_is_not_polled() {
        let mut st = State::new(config(2));
        let mut plan = compile(&st);
        st.add_endpoint("a", endpoint(1, false, 2, 2)).unwrap();
        st.add_endpoint("b", endpoint(2, true, 1, 2)).unwrap();
        check(&mut plan, &mut st);
        // The VM behind b is not there: b is down, nothing of it is polled.
        assert!(!plan.ports[2].up);
        assert_eq!(plan.polls.iter().flatten().filter(|p| p.0 == PortIndex(2)).count(), 0);
        assert_eq!(plan.polls.iter().flatten().filter(|p| p.0 == PortIndex(1)).count(), 2);
        let slot = st.free_slot().unwrap();
        st.connect(ConnectorId(7), "a", Peer::Local("b".into()), slot).unwrap();
        check(&mut plan, &mut st);
        assert_eq!(plan.ports[1].role, Role::Endpoint(EndpointAction::Loopback { peer: PortIndex(2), slot, dir: 0 }));
        assert_eq!(plan.ports[2].role, Role::Endpoint(EndpointAction::Loopback { peer: PortIndex(1), slot, dir: 1 }));
        // The VM comes with its two rings: polled, one TX queue, handoff drained.
        assert!(st.set_link("b", Link { up: true, vrings: 0b11, migrating: false }));
        check(&mut plan, &mut st);
        assert!(plan.ports[2].up);
        assert_eq!(plan.ports[2].txq, 1);
        assert_eq!(plan.polls.iter().flatten().filter(|p| p.0 == PortIndex(2)).count(), 1);
        assert_eq!(plan.drains[0], vec![(PortIndex(2), 0), (PortIndex(2), 1)]);
        st.disconnect(ConnectorId(7)).unwrap();
        check(&mut plan, &mut st);
        assert_eq!(plan.ports[1].role, Role::Endpoint(EndpointAction::NoWire));
        assert_eq!(plan.ports[2].role, Role::Endpoint(EndpointAction::NoWire));
        st.remove_endpoint("b").unwrap();
        check(&mut plan, &mut st);
        assert_eq!(plan.ports[2], PortDecision::UNUSED);
        assert!(plan.drains.iter().all(|d| d.is_empty()));
    }

    #[test]
    fn a_forced_encap_loopback_wire_goes_out_and_back_in_its_format() {
        for encap in [Encap::Vwire, Encap::Vxlan, Encap::Secure, Encap::SecureVxlan] {
            let mut st = State::new(Config { force_encap: Some(encap), ..config(1) });
            let mut plan = compile(&st);
            st.add_endpoint("a", endpoint(1, false, 1, 1)).unwrap();
            st.add_endpoint("b", endpoint(2, false, 1, 1)).unwrap();
            let slot = st.free_slot().unwrap();
            st.connect(ConnectorId(7), "a", Peer::Local("b".into()), slot).unwrap();
            check(&mut plan, &mut st);
            let Role::Endpoint(EndpointAction::Encap { template, uplink, .. }) = &plan.ports[1].role else {
                panic!("{encap:?}: a's frames are not encapsulated: {:?}", plan.ports[1].role)
            };
            assert_eq!((template.encap(), template.dst_ip(), *uplink), (encap, VTEP, PortIndex::UPLINK));
            let port = if encap.tunnel() == Encap::Vxlan { 4790 } else { 4789 };
            assert_eq!(template.dst_port(), port, "{encap:?}");
            // Back from the uplink in the same format, to b; b's frames go
            // straight to a.
            let t = plan.decap.get(&decap_key(encap, 7)).expect("a decap entry in the forced format");
            assert_eq!(t.port, PortIndex(2), "{encap:?}");
            assert_eq!(
                plan.ports[2].role,
                Role::Endpoint(EndpointAction::Loopback { peer: PortIndex(1), slot, dir: 1 })
            );
        }
    }

    #[test]
    fn an_encap_wire_waits_for_its_next_hop_and_the_uplink_is_polled_last() {
        let mut st = State::new(config(2));
        let mut plan = compile(&st);
        st.add_endpoint("a", endpoint(1, false, 2, 2)).unwrap();
        let far = Ipv4Addr::new(192, 168, 9, 9);
        st.connect(ConnectorId(5), "a", Peer::Remote { vtep: far, encap: Encap::Vwire }, 0).unwrap();
        st.want(far, None, Instant::now());
        st.poll_uplink();
        check(&mut plan, &mut st);
        assert_eq!(plan.ports[1].role, Role::Endpoint(EndpointAction::Unresolved { slot: 0 }));
        assert_eq!(plan.decap[&decap_key(Encap::Vwire, 5)], DecapTarget::deliver(PortIndex(1), 0, far));
        // Resolved through the gateway.
        assert_eq!(plan.uplink.as_ref().unwrap().neighbours, vec![Ipv4Addr::new(10, 0, 0, 254)]);
        assert!(st.heard(Ipv4Addr::new(10, 0, 0, 254), MacAddr([2, 0, 0, 0, 0, 0xfe]), Instant::now()));
        check(&mut plan, &mut st);
        let Role::Endpoint(EndpointAction::Encap { template, .. }) = plan.ports[1].role else { panic!("not encap") };
        assert_eq!(
            template.len(),
            EncapTemplate::new(Encap::Vwire, ConnectorId(5), MacAddr([0; 6]), MacAddr([0; 6]), VTEP, far, 4789, 1500)
                .len()
        );
        for w in &plan.polls {
            assert_eq!(w.last().map(|p| p.0), Some(PortIndex::UPLINK));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, bool, u16),
        Remove(u8),
        Link(u8, bool, u64),
        Local(u32, u8, u8),
        Remote(u32, u8, u8),
        Disconnect(u32),
        Heard(u8, u8),
        Locate(u32, u8, String, u64),
        Moved(u32, u8, u8),
        Colocate(u32, u8),
        Ack(u32, u32),
        Expire(u64),
        PollUplink,
        Rebalance(u64),
        Unpark,
        Flushed(u32, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let e = 0u8..6;
        prop_oneof![
            (e.clone(), any::<bool>(), 1u16..4).prop_map(|(i, v, q)| Op::Add(i, v, q)),
            e.clone().prop_map(Op::Remove),
            (e.clone(), any::<bool>(), 0u64..32).prop_map(|(i, u, r)| Op::Link(i, u, r)),
            (1u32..5, e.clone(), e.clone()).prop_map(|(w, a, b)| Op::Local(w, a, b)),
            (1u32..5, e.clone(), 0u8..3).prop_map(|(w, a, p)| Op::Remote(w, a, p)),
            (1u32..5).prop_map(Op::Disconnect),
            (0u8..4, any::<u8>()).prop_map(|(p, m)| Op::Heard(p, m)),
            (1u32..5, 0u8..3, e.clone(), 1u64..1000).prop_map(|(w, p, i, t)| Op::Locate(w, p, name(i), t)),
            (1u32..5, 0u8..3, 0u8..3).prop_map(|(w, p, l)| Op::Moved(w, p, l)),
            (1u32..5, e.clone()).prop_map(|(w, i)| Op::Colocate(w, i)),
            (1u32..5, 0u32..4).prop_map(|(w, m)| Op::Ack(w, m)),
            (0u64..300).prop_map(Op::Expire),
            Just(Op::PollUplink),
            any::<u64>().prop_map(Op::Rebalance),
            Just(Op::Unpark),
            (1u32..5, 0u8..3).prop_map(|(w, p)| Op::Flushed(w, p)),
        ]
    }

    fn run(st: &mut State, op: &Op, t0: Instant, workers: usize) {
        let now = t0;
        match op {
            Op::Add(i, vhost, q) => {
                let _ = st.add_endpoint(&name(*i), endpoint(u32::from(*i) + 1, *vhost, *q, workers));
            }
            Op::Remove(i) => {
                let _ = st.remove_endpoint(&name(*i));
            }
            Op::Link(i, up, r) => {
                let was = crate::hold::accepting(st, &name(*i));
                // Bit 4: QEMU is migrating the VM.
                st.set_link(&name(*i), Link { up: *up, vrings: *r & 15, migrating: *r & 16 != 0 });
                crate::hold::link_changed(st, &name(*i), was, now);
            }
            Op::Local(w, a, b) => {
                if let Some(slot) = st.free_slot() {
                    let _ = st.connect(ConnectorId(*w), &name(*a), Peer::Local(name(*b)), slot);
                }
            }
            Op::Remote(w, a, p) => {
                if let Some(slot) = st.free_slot() {
                    if st
                        .connect(ConnectorId(*w), &name(*a), Peer::Remote { vtep: peer(*p), encap: Encap::Vwire }, slot)
                        .is_ok()
                    {
                        st.want(peer(*p), None, now);
                        st.move_mut(ConnectorId(*w)).awaiting_ack = Some(now + Duration::from_millis(50));
                        st.move_mut(ConnectorId(*w)).arrival_until = Some(now + Duration::from_millis(100));
                        crate::hold::arrive(st, ConnectorId(*w), &name(*a), now);
                    }
                }
            }
            Op::Disconnect(w) => {
                if let Ok(w) = st.disconnect(ConnectorId(*w)) {
                    if let Peer::Remote { vtep, .. } = w.peer {
                        st.release(vtep);
                    }
                }
            }
            Op::Heard(p, m) => {
                let ip = if *p == 3 { Ipv4Addr::new(10, 0, 0, 254) } else { peer(*p) };
                st.heard(ip, MacAddr([2, 0, 0, 0, 1, *m]), now);
            }
            Op::Locate(w, p, end, t) => {
                let msg = message(kind::LOCATE, *w, peer(*p), end, *t);
                if let Ok(o) = exchange::on_locate(st, &msg, now) {
                    *st = o.next;
                }
            }
            Op::Moved(w, p, l) => {
                let mut msg = message(kind::MOVED, *w, peer(*p), "", 2000);
                msg.location = peer(*l);
                if let Some(e) = st.table().wire(ConnectorId(*w)) {
                    msg.end = e.endpoint.clone();
                }
                if let Ok(o) = exchange::on_moved(st, &msg, now) {
                    *st = o.next;
                }
            }
            Op::Colocate(w, i) => {
                if let Ok(o) = exchange::colocate(st, ConnectorId(*w), &name(*i), now, 3000, true) {
                    *st = o.next;
                }
            }
            Op::Ack(w, m) => {
                let mut msg = message(kind::ACK, *w, peer(0), "", 0);
                msg.moves = *m;
                msg.location = peer(*m as u8 % 3);
                if let Some(w) = st.table().wire(ConnectorId(*w)) {
                    msg.end = w.endpoint.clone();
                }
                *st = exchange::on_ack(st, &msg, now).next;
            }
            Op::Expire(ms) => {
                if let Some((next, _)) = exchange::expire(st, now + Duration::from_millis(*ms)) {
                    *st = next;
                }
                crate::hold::expire(st, now + Duration::from_millis(*ms), |_| *ms % 2 == 0);
            }
            Op::Flushed(w, p) => {
                let _ = crate::hold::flushed(st, ConnectorId(*w), peer(*p), now);
            }
            Op::PollUplink => st.poll_uplink(),
            Op::Rebalance(seed) => {
                let seed = *seed;
                st.measure(&move |p: PortIndex, q: u16| (seed >> ((p.0 as u64 * 3 + q as u64) % 60)) & 0xf);
                st.rebalance();
            }
            Op::Unpark => st.unpark(),
        }
    }

    fn message(k: u8, w: u32, from: Ipv4Addr, end: &str, when_ns: u64) -> Message {
        Message {
            kind: k,
            wire: ConnectorId(w),
            from,
            location: from,
            location_mac: MacAddr([2, 0, 0, 0, 2, 2]),
            encap: Encap::Vwire,
            end: end.to_owned(),
            seq: 0,
            sent_ns: 0,
            when_ns,
            moves: 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn updating_a_plan_change_by_change_equals_compiling_it(ops in proptest::collection::vec(op(), 1..40), workers in 1usize..4) {
            let t0 = Instant::now();
            let mut st = State::new(config(workers));
            let mut plan = compile(&st);
            for o in &ops {
                run(&mut st, o, t0, workers);
                update(&mut plan, &mut st);
                prop_assert_eq!(&plan, &compile(&st), "after {:?}", o);
                // No queue is polled by two workers, none that is parked.
                let mut polled: Vec<(PortIndex, u16)> = plan.polls.iter().flatten().copied().collect();
                let n = polled.len();
                polled.sort();
                polled.dedup();
                prop_assert_eq!(n, polled.len());
            }
        }
    }
}
