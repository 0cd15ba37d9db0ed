//! Holding frames while a wire end moves, so that none is lost or
//! reordered at the switch-over (docs/migration.md, "Frames held at the
//! switch-over").
//!
//! Three holds, each a FIFO queue of the wire's frames in the data path:
//! * **the end's VM stopped** (QEMU stops its rings in the last phase of a
//!   live migration): frames for it are held on its host, then released to
//!   its new host when the peer's MOVED comes (as forwarded frames, followed
//!   by a FLUSHED), or to the end itself if its VM runs again here, or
//!   dropped as `hold_expired` after `--migration-hold-ms`;
//! * **the end just arrived** and waits for the peer's ACK: what it sends
//!   is held, then released into the wire;
//! * **the end just arrived**, and the peer already sends to it here: those
//!   frames are held until the old host's FLUSHED says that everything it
//!   held has been passed on (those frames are older), then released.
//!
//! A released queue stays in the path for [`RELEASE_FOR`], and after that
//! until it is empty (at most [`RELEASE_GIVE_UP`] more), so that a frame
//! that comes while it empties queues up behind the held ones.

use crate::exchange::Refused;
use crate::migrate::{Hold, HoldAt, HoldReason, ACK_WAIT};
use crate::state::State;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use vw_wire::table::Peer;
use vw_wire::ConnectorId;

/// Longest an arrived end's inbound frames wait for the old host's FLUSHED
/// after the ACK (one message from the peer to the old host, the old host
/// passing its queue on, one message from there: well under a millisecond
/// on a LAN; an old host without frames to pass on answers at once).
pub const FLUSH_WAIT: Duration = Duration::from_millis(100);
/// How long a released queue stays in the path after its release, at
/// least: as long as the hold time if that is longer. The VM that the
/// frames go to may have just resumed, and a resumed VM can take a while
/// before it takes its RX ring again (a TCG guest re-translates its code;
/// 100-300 ms here): while the queue is in the path, the VM's frames wait
/// in it for room in the ring instead of being dropped as `tx_full`.
pub const RELEASE_FOR: Duration = Duration::from_millis(100);
/// How long past [`RELEASE_FOR`] a released queue is kept at most while it
/// has not emptied (a VM that has just resumed may take its RX ring
/// slowly at first: the queue sends it no more than its ring takes) or its
/// FLUSHED could not be sent (its new host unresolved).
pub const RELEASE_GIVE_UP: Duration = Duration::from_secs(1);

/// Whether endpoint `name` takes frames now (a VM's device is running).
pub fn accepting(st: &State, name: &str) -> bool {
    st.endpoint(name).is_some_and(|e| e.up())
}

/// The wire of local end `name`, and where frames towards it are held.
fn toward(st: &State, name: &str) -> Option<(ConnectorId, HoldAt)> {
    let w = st.table().wire_of(name)?;
    let at = match &w.peer {
        Peer::Local(b) if w.endpoint == name => HoldAt::From(b.clone()),
        Peer::Local(_) => HoldAt::From(w.endpoint.clone()),
        Peer::Remote { .. } => HoldAt::Inbound(w.id),
    };
    Some((w.id, at))
}

fn held(wire: ConnectorId, reason: HoldReason, until: Instant, release_at_end: bool) -> Hold {
    Hold { wire, reason, released: false, until, release_at_end, flush_from: None, flush_to: None }
}

/// How long a released queue stays in the path (see [`RELEASE_FOR`]).
pub fn release_for(st: &State) -> Duration {
    st.config().migration.map_or(RELEASE_FOR, |m| m.hold.max(RELEASE_FOR))
}

/// Releases the hold at `at`: its frames go on, in order, through the queue.
fn release(st: &mut State, at: HoldAt, now: Instant) {
    if let Some(h) = st.hold(&at).cloned() {
        let until = now + release_for(st);
        st.set_hold(at, Hold { released: true, until, ..h });
    }
}

fn unreleased(st: &State, at: &HoldAt, reason: HoldReason) -> bool {
    st.hold(at).is_some_and(|h| h.reason == reason && !h.released)
}

/// How long a hold lasts while QEMU migrates the VM, at most (a migration
/// that takes longer goes on without it).
pub const MIGRATING_MAX: Duration = Duration::from_secs(3600);

/// Endpoint `name`'s VM stopped (`was` true, now not accepting) or runs
/// again, or QEMU started or ended migrating it: frames for it are held,
/// passed through the queue, or released to it. Only with migration on and
/// a hold time. Returns what to log.
pub fn link_changed(st: &mut State, name: &str, was: bool, now: Instant) -> Option<String> {
    let hold = st.config().migration.map(|m| m.hold).filter(|h| !h.is_zero())?;
    let is = accepting(st, name);
    let migrating = is && st.endpoint(name).is_some_and(|e| e.link.migrating);
    let (id, at) = toward(st, name)?;
    let current = st.hold(&at).map(|h| h.reason);
    if migrating && current.is_none() {
        let h = Hold { released: true, ..held(id, HoldReason::Migrating, now + MIGRATING_MAX, false) };
        st.set_hold(at, h);
        return Some(format!(
            "wire {id}: QEMU is migrating {name}'s VM; frames for it wait for room in its RX ring until it stops"
        ));
    }
    if is && !migrating && current == Some(HoldReason::Migrating) {
        // The migration ended without the VM stopping here (cancelled).
        release(st, at, now);
        return None;
    }
    if was && !is && (current.is_none() || current == Some(HoldReason::Migrating)) {
        // What the queue holds stays, in order, ahead of what comes.
        st.set_hold(at, held(id, HoldReason::EndStopped, now + hold, false));
        return Some(format!(
            "wire {id}: {name}'s VM stopped; holding frames for it up to {} ms (it resumes here or moves)",
            hold.as_millis()
        ));
    }
    if !was && is && unreleased(st, &at, HoldReason::EndStopped) {
        release(st, at, now);
        return Some(format!("wire {id}: {name}'s VM runs again here; delivering the frames held for it"));
    }
    None
}

/// Local end `end` of wire `id` arrived here (a connect to a remote peer,
/// with migration on): what it sends waits for the peer's ACK, what the
/// peer sends it waits for the old host's FLUSHED (the ACK names that host).
pub fn arrive(st: &mut State, id: ConnectorId, end: &str, now: Instant) {
    st.set_hold(HoldAt::From(end.to_owned()), held(id, HoldReason::AwaitingAck, now + ACK_WAIT, true));
    st.set_hold(HoldAt::Inbound(id), held(id, HoldReason::AwaitingFlush, now + ACK_WAIT + FLUSH_WAIT, true));
}

/// Our LOCATE for wire `id` (end `end`) went out: what the end sends goes
/// on behind it, without waiting for the ACK. The peer's workers hold a
/// moment what comes from here before the LOCATE is applied there (see
/// the fabric's `STRAY_WAIT`), so the end's frames wait for one message's
/// way instead of the LOCATE's round trip through both control planes.
/// Returns whether a hold was released.
pub fn located(st: &mut State, end: &str, now: Instant) -> bool {
    let from = HoldAt::From(end.to_owned());
    let held = unreleased(st, &from, HoldReason::AwaitingAck);
    if held {
        release(st, from, now);
    }
    held
}

/// The peer `peer` acknowledged our LOCATE for wire `id` (end `end`);
/// `previous` is where our end was before (unspecified: nowhere, or the
/// peer itself, which then sends everything in order on one path).
pub fn acked(st: &mut State, id: ConnectorId, end: &str, peer: Ipv4Addr, previous: Ipv4Addr, now: Instant) {
    let from = HoldAt::From(end.to_owned());
    if unreleased(st, &from, HoldReason::AwaitingAck) {
        release(st, from, now);
    }
    let inbound = HoldAt::Inbound(id);
    if !unreleased(st, &inbound, HoldReason::AwaitingFlush) {
        return;
    }
    if previous.is_unspecified() || previous == peer {
        release(st, inbound, now);
    } else if let Some(h) = st.hold(&inbound).cloned() {
        st.set_hold(inbound, Hold { flush_from: Some(previous), until: now + FLUSH_WAIT, ..h });
    }
}

/// Our end `end` of wire `id` moved to `to` (the peer's MOVED; the wire is
/// departing). Frames held for it since its VM stopped are released to its
/// new host, and a FLUSHED follows once they are out. Returns true if
/// nothing was held: the FLUSHED can go at once.
pub fn departing(st: &mut State, id: ConnectorId, end: &str, to: Ipv4Addr, now: Instant) -> bool {
    let at = HoldAt::Inbound(id);
    if !unreleased(st, &at, HoldReason::EndStopped) {
        return true;
    }
    if let Some(h) = st.hold(&at).cloned() {
        let flush_to = Some((to, end.to_owned()));
        let until = now + release_for(st);
        st.set_hold(at, Hold { released: true, until, flush_to, ..h });
    }
    false
}

/// End `left` of a loopback wire left (the new host's LOCATE); frames for
/// it that its peer `staying` sent since its VM stopped go on into the wire,
/// now an encap wire to the new host, ahead of the rest.
pub fn split(st: &mut State, staying: &str, now: Instant) {
    let at = HoldAt::From(staying.to_owned());
    if unreleased(st, &at, HoldReason::EndStopped) {
        release(st, at, now);
    }
}

/// The remote end of wire `id` arrived here next to `resident` (the wire is
/// now loopback): what `resident` sends it waits for the FLUSHED of the
/// end's old host `old`.
pub fn colocated(st: &mut State, id: ConnectorId, resident: &str, old: Ipv4Addr, now: Instant) {
    let h = Hold { flush_from: Some(old), ..held(id, HoldReason::AwaitingFlush, now + FLUSH_WAIT, true) };
    st.set_hold(HoldAt::From(resident.to_owned()), h);
}

/// A FLUSHED from `from` about wire `id`: the hold waiting for it is
/// released. Refused as `unexpected` if no hold waits for that host.
pub fn flushed(st: &mut State, id: ConnectorId, from: Ipv4Addr, now: Instant) -> Result<(), Refused> {
    let at = st
        .holds()
        .find(|(_, h)| {
            h.wire == id
                && h.reason == HoldReason::AwaitingFlush
                && !h.released
                && h.flush_from.is_none_or(|f| f == from)
        })
        .map(|(at, _)| at.clone())
        .ok_or(Refused::Unexpected)?;
    release(st, at, now);
    Ok(())
}

/// What [`expire`] did to one hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// Its time was up: released (a wait that ended).
    Released(HoldAt, Hold),
    /// Its time was up: ended, the frames still held are to be dropped.
    Dropped(HoldAt, Hold),
    /// Released long enough: the queue leaves the path.
    Retired(HoldAt, Hold),
}

/// Ends or releases holds whose time is up. `empty` tells whether a hold's
/// queue in the data path is empty: a released hold leaves the path only
/// then (or after [`RELEASE_GIVE_UP`]).
pub fn expire(st: &mut State, now: Instant, empty: impl Fn(&HoldAt) -> bool) -> Vec<Expired> {
    let due: Vec<(HoldAt, Hold)> =
        st.holds().filter(|(_, h)| now >= h.until).map(|(at, h)| (at.clone(), h.clone())).collect();
    let mut out = Vec::new();
    for (at, h) in due {
        if h.released {
            if (h.flush_to.is_none() && empty(&at)) || now >= h.until + RELEASE_GIVE_UP {
                st.end_hold(&at);
                out.push(Expired::Retired(at, h));
            }
        } else if h.release_at_end {
            release(st, at.clone(), now);
            out.push(Expired::Released(at, h));
        } else {
            st.end_hold(&at);
            out.push(Expired::Dropped(at, h));
        }
    }
    out
}

/// When the next hold is due, if any.
pub fn next_due(st: &State) -> Option<Instant> {
    st.holds().map(|(_, h)| h.until).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Endpoint, EndpointKind, Link};
    use crate::PortIndex;
    use vw_ctl::proto::EndpointSpec;
    use vw_wire::Encap;

    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const OLD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

    fn state() -> State {
        let mut st = State::new(crate::compile::tests::config(1));
        let ep = Endpoint {
            spec: EndpointSpec::Dpdk { devargs: "x".into() },
            ix: PortIndex(1),
            kind: EndpointKind::Vhost { queues: 1, client: false },
            link: Link { up: true, vrings: 0b11, migrating: false },
            handoff: true,
        };
        st.add_endpoint("vmb", ep).unwrap();
        st.connect(ConnectorId(7), "vmb", Peer::Remote { vtep: PEER, encap: Encap::Vwire }, 0).unwrap();
        st
    }

    fn stop(st: &mut State, up: bool, now: Instant) -> Option<String> {
        let was = accepting(st, "vmb");
        st.set_link("vmb", Link { up, vrings: if up { 0b11 } else { 0 }, migrating: false });
        link_changed(st, "vmb", was, now)
    }

    #[test]
    fn a_stopped_vms_frames_are_held_then_released_to_it_or_to_its_new_host() {
        let t0 = Instant::now();
        let mut st = state();
        let inbound = HoldAt::Inbound(ConnectorId(7));
        assert!(stop(&mut st, false, t0).unwrap().contains("holding frames"));
        let h = st.hold(&inbound).cloned().unwrap();
        assert_eq!((h.reason, h.released, h.release_at_end), (HoldReason::EndStopped, false, false));
        // It resumes here: released to it, retired after RELEASE_FOR.
        assert!(stop(&mut st, true, t0).unwrap().contains("runs again here"));
        assert!(st.hold(&inbound).unwrap().released);
        // (The test configuration's hold time, 200 ms, is longer than
        // RELEASE_FOR.)
        let for_ = release_for(&st);
        assert_eq!(for_, Duration::from_millis(200));
        assert!(expire(&mut st, t0 + for_ / 2, |_| true).is_empty());
        // Not while its queue still holds frames the VM has not taken.
        assert!(expire(&mut st, t0 + for_, |_| false).is_empty());
        assert!(matches!(expire(&mut st, t0 + for_, |_| true)[..], [Expired::Retired(..)]));
        assert!(st.hold(&inbound).is_none());
        // At the latest RELEASE_GIVE_UP later, empty or not.
        stop(&mut st, false, t0);
        stop(&mut st, true, t0);
        assert!(matches!(expire(&mut st, t0 + for_ + RELEASE_GIVE_UP, |_| false)[..], [Expired::Retired(..)]));
        // It stops and nothing comes: what was held is dropped after the hold time.
        stop(&mut st, false, t0);
        assert!(matches!(expire(&mut st, t0 + Duration::from_millis(200), |_| true)[..], [Expired::Dropped(..)]));
        // It stops and moves: released towards the new host, FLUSHED once empty.
        stop(&mut st, true, t0);
        stop(&mut st, false, t0);
        let to = Ipv4Addr::new(10, 0, 0, 9);
        assert!(!departing(&mut st, ConnectorId(7), "vmb", to, t0), "something is held: FLUSHED waits");
        let h = st.hold(&inbound).cloned().unwrap();
        assert!(h.released && h.flush_to == Some((to, "vmb".into())));
        // Not retired while its FLUSHED is unsent.
        assert!(expire(&mut st, t0 + for_, |_| true).is_empty());
        st.flush_sent(&inbound);
        assert!(matches!(expire(&mut st, t0 + for_, |_| true)[..], [Expired::Retired(..)]));
        // Nothing held: the FLUSHED goes at once.
        assert!(departing(&mut st, ConnectorId(7), "vmb", to, t0));
    }

    #[test]
    fn while_qemu_migrates_the_vm_its_frames_pass_through_the_queue_then_are_held() {
        let t0 = Instant::now();
        let mut st = state();
        let inbound = HoldAt::Inbound(ConnectorId(7));
        let set = |st: &mut State, up: bool, migrating: bool| {
            let was = accepting(st, "vmb");
            st.set_link("vmb", Link { up, vrings: if up { 0b11 } else { 0 }, migrating });
            link_changed(st, "vmb", was, t0)
        };
        assert!(set(&mut st, true, true).unwrap().contains("QEMU is migrating vmb's VM"));
        let h = st.hold(&inbound).cloned().unwrap();
        assert_eq!((h.reason, h.released), (HoldReason::Migrating, true), "frames pass, as the ring takes them");
        assert!(expire(&mut st, t0 + RELEASE_GIVE_UP * 2, |_| true).is_empty(), "for as long as QEMU migrates");
        // The VM stops on this host: what the queue has stays, and is held.
        assert!(set(&mut st, false, false).unwrap().contains("holding frames"));
        let h = st.hold(&inbound).cloned().unwrap();
        assert_eq!((h.reason, h.released), (HoldReason::EndStopped, false));
        st.end_hold(&inbound);
        // A migration cancelled: the queue empties into the VM and goes.
        set(&mut st, true, false);
        set(&mut st, true, true);
        assert!(set(&mut st, true, false).is_none());
        let h = st.hold(&inbound).cloned().unwrap();
        assert_eq!((h.reason, h.released), (HoldReason::Migrating, true));
        let for_ = release_for(&st);
        assert!(matches!(expire(&mut st, t0 + for_, |_| true)[..], [Expired::Retired(..)]));
    }

    #[test]
    fn an_arrived_end_waits_for_the_ack_and_for_the_old_hosts_flushed() {
        let t0 = Instant::now();
        let mut st = state();
        let (from, inbound) = (HoldAt::From("vmb".into()), HoldAt::Inbound(ConnectorId(7)));
        arrive(&mut st, ConnectorId(7), "vmb", t0);
        assert!(!st.hold(&from).unwrap().released && !st.hold(&inbound).unwrap().released);
        acked(&mut st, ConnectorId(7), "vmb", PEER, OLD, t0);
        assert!(st.hold(&from).unwrap().released, "the peer takes our frames now");
        let h = st.hold(&inbound).cloned().unwrap();
        assert!(!h.released && h.flush_from == Some(OLD), "the peer's frames wait for the old host");
        assert_eq!(flushed(&mut st, ConnectorId(7), PEER, t0), Err(Refused::Unexpected));
        assert_eq!(flushed(&mut st, ConnectorId(8), OLD, t0), Err(Refused::Unexpected));
        flushed(&mut st, ConnectorId(7), OLD, t0).unwrap();
        assert!(st.hold(&inbound).unwrap().released);
        assert_eq!(flushed(&mut st, ConnectorId(7), OLD, t0), Err(Refused::Unexpected), "once");
        // Without a previous host, or when it was the peer, nothing waits.
        for previous in [Ipv4Addr::UNSPECIFIED, PEER] {
            arrive(&mut st, ConnectorId(7), "vmb", t0);
            acked(&mut st, ConnectorId(7), "vmb", PEER, previous, t0);
            assert!(st.hold(&inbound).unwrap().released);
        }
        // A FLUSHED that never comes: released after FLUSH_WAIT.
        arrive(&mut st, ConnectorId(7), "vmb", t0);
        acked(&mut st, ConnectorId(7), "vmb", PEER, OLD, t0);
        let ex = expire(&mut st, t0 + FLUSH_WAIT, |_| true);
        assert!(ex.iter().any(|e| matches!(e, Expired::Released(at, _) if *at == inbound)), "{ex:?}");
        // Its LOCATE sent, what it sends goes on behind it before the ACK
        // (once); the peer's frames still wait for the old host.
        arrive(&mut st, ConnectorId(7), "vmb", t0);
        assert!(located(&mut st, "vmb", t0));
        assert!(st.hold(&from).unwrap().released && !st.hold(&inbound).unwrap().released);
        assert!(!located(&mut st, "vmb", t0), "released once");
        acked(&mut st, ConnectorId(7), "vmb", PEER, OLD, t0);
        assert_eq!(st.hold(&inbound).unwrap().flush_from, Some(OLD));
        // A disconnect ends every hold of the wire.
        st.disconnect(ConnectorId(7)).unwrap();
        assert_eq!(st.holds().count(), 0);
    }
}
