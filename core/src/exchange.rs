//! The live-migration exchange (docs/migration.md): what each admitted
//! message, and each arrival of a wire's end, changes, and what is sent in
//! return. Each function takes the state and returns the next one with the
//! messages to send, or the reason the message is refused; the caller
//! applies, publishes and sends.

use crate::hold;
use crate::migrate::Departed;
use crate::state::State;
use std::net::Ipv4Addr;
use std::time::Instant;
use vw_wire::migration::{kind, Message};
use vw_wire::table::{Peer, TableError};
use vw_wire::{ConnectorId, Encap, MacAddr};

/// Why a message was refused, in `stats` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refused {
    /// Not a well-formed message.
    Malformed,
    /// Its MAC does not verify (another key, or altered).
    BadMac,
    /// Its sender field is not the address it came from.
    WrongSource,
    /// Too old, or older than what is known of the wire.
    Stale,
    /// Seen before.
    Replayed,
    /// Older than the sender's replay window.
    OutOfOrder,
    /// No such wire here.
    UnknownWire,
    /// It contradicts what this fabric knows of the wire.
    Conflict,
    /// Nothing asked for it (an ACK with no LOCATE waiting).
    Unexpected,
    /// It could not be applied (no uplink, or the change could not be published).
    Unresolved,
    /// It would move an end of a secure wire, whose SAs do not follow a
    /// move yet: the wire stays where it is.
    SecureWire,
}

impl Refused {
    /// Every reason, in `stats` order.
    pub const ALL: [Refused; 11] = [
        Refused::Malformed,
        Refused::BadMac,
        Refused::WrongSource,
        Refused::Stale,
        Refused::Replayed,
        Refused::OutOfOrder,
        Refused::UnknownWire,
        Refused::Conflict,
        Refused::Unexpected,
        Refused::Unresolved,
        Refused::SecureWire,
    ];

    /// Its name in `stats` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::BadMac => "bad_mac",
            Refused::WrongSource => "wrong_source",
            Refused::Stale => "stale",
            Refused::Replayed => "replayed",
            Refused::OutOfOrder => "out_of_order",
            Refused::UnknownWire => "unknown_wire",
            Refused::Conflict => "conflict",
            Refused::Unexpected => "unexpected",
            Refused::Unresolved => "unresolved",
            Refused::SecureWire => "secure_wire",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A message to send to VTEP `to` (through its next hop, whose MAC is
/// `mac` if given, else the resolved one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The message (sequence number and time are stamped when sent).
    pub msg: Message,
    /// Where.
    pub to: Ipv4Addr,
    /// The next hop's MAC, when it must be the one known before the change.
    pub mac: Option<MacAddr>,
}

/// What a message or an arrival changes.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The next state.
    pub next: State,
    /// What to send once it is applied.
    pub send: Vec<Outgoing>,
    /// Whether the wire's saved form changed (record it in the journal).
    pub save: bool,
    /// Stop sending the LOCATEs of this wire: its end is no longer here.
    pub cancel_locates: bool,
    /// What happened, for the log.
    pub log: Option<String>,
}

impl Outcome {
    fn new(next: State) -> Outcome {
        Outcome { next, send: Vec::new(), save: true, cancel_locates: false, log: None }
    }
}

/// A message from us about wire `id`.
fn message(
    st: &State,
    kind: u8,
    id: ConnectorId,
    location: Ipv4Addr,
    encap: Encap,
    end: &str,
    when_ns: u64,
) -> Message {
    let (vtep, mac) = st.config().uplink.as_ref().map_or((Ipv4Addr::UNSPECIFIED, MacAddr([0; 6])), |u| (u.vtep, u.mac));
    Message {
        kind,
        wire: id,
        from: vtep,
        location,
        location_mac: if location == vtep { mac } else { MacAddr([0; 6]) },
        encap,
        end: end.to_owned(),
        seq: 0,
        sent_ns: 0,
        when_ns,
        moves: 0,
    }
}

/// The LOCATE that tells the peer VTEP where our end `end` of wire `id` is
/// (sent until acknowledged).
pub fn locate_message(st: &State, id: ConnectorId, end: &str, encap: Encap, when_ns: u64) -> Option<Message> {
    let u = st.config().uplink.as_ref()?;
    Some(message(st, kind::LOCATE, id, u.vtep, encap, end, when_ns))
}

fn ack(st: &State, locate: &Message, previous: Ipv4Addr, moves: u32) -> Outgoing {
    let from = st.config().uplink.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |u| u.vtep);
    let msg =
        Message { kind: kind::ACK, from, location: previous, location_mac: MacAddr([0; 6]), moves, ..locate.clone() };
    Outgoing { msg, to: locate.from, mac: None }
}

/// LOCATE: the sender has connected wire `msg.wire` to us; if the end it
/// names was elsewhere, re-point the wire there.
pub fn on_locate(st: &State, msg: &Message, now: Instant) -> Result<Outcome, Refused> {
    let id = msg.wire;
    let s = msg.from;
    let Some(w) = st.table().wire(id).cloned() else { return Err(Refused::UnknownWire) };
    let Some(u) = st.config().uplink.clone() else { return Err(Refused::Unresolved) };
    let grace = st.config().grace();
    let mv = st.wire_move(id).cloned().unwrap_or_default();
    let mut next = st.clone();
    match &w.peer {
        Peer::Remote { vtep, encap } => {
            if msg.end == w.endpoint || s == u.vtep {
                return Err(Refused::Conflict);
            }
            if *vtep == s {
                // Where we already send: a (re)announcement.
                if msg.when_ns < mv.remote_ns {
                    return Err(Refused::Stale);
                }
                next.move_mut(id).remote_ns = msg.when_ns;
                if u.in_subnet(s) && msg.location_mac != MacAddr([0; 6]) {
                    next.heard(s, msg.location_mac, now);
                }
                let mut out = Outcome::new(next);
                out.send.push(ack(st, msg, Ipv4Addr::UNSPECIFIED, mv.moves));
                return Ok(out);
            }
            if msg.when_ns <= mv.remote_ns {
                return Err(Refused::Stale);
            }
            if encap.is_secure() || msg.encap.is_secure() {
                return Err(Refused::SecureWire);
            }
            // The remote end moved from `vtep` to `s`.
            let old_mac = st.next_hop_mac(*vtep);
            next.repoint(id, s, msg.encap).map_err(|_| Refused::Conflict)?;
            next.want(s, Some(msg.location_mac), now);
            next.release(*vtep);
            let m = next.move_mut(id);
            m.moved();
            m.remote_ns = msg.when_ns;
            m.old = Some((*vtep, *encap, now + grace));
            let moves = m.moves;
            let mut out = Outcome::new(next);
            out.send.push(ack(st, msg, *vtep, moves));
            // Tell the old host, so it passes on what still arrives there.
            let moved =
                Message { kind: kind::MOVED, from: u.vtep, location: s, location_mac: msg.location_mac, ..msg.clone() };
            out.send.push(Outgoing { msg: moved, to: *vtep, mac: old_mac });
            out.log = Some(format!("wire {id}: end {} moved from {vtep} to {s}; wire re-pointed", msg.end));
            Ok(out)
        }
        Peer::Local(other) => {
            // One end of a loopback wire left for `s`.
            let staying = if msg.end == w.endpoint {
                other.clone()
            } else if msg.end == *other {
                w.endpoint.clone()
            } else {
                return Err(Refused::Conflict);
            };
            if msg.when_ns <= mv.local_ns.max(mv.remote_ns) {
                return Err(Refused::Stale);
            }
            if msg.encap.is_secure() {
                return Err(Refused::SecureWire);
            }
            let d =
                Departed { endpoint: msg.end.clone(), peer: Peer::Local(staying.clone()), to: s, until: now + grace };
            next.split(id, d, msg.encap).map_err(|_| Refused::Conflict)?;
            next.want(s, Some(msg.location_mac), now);
            hold::split(&mut next, &staying, now);
            let m = next.move_mut(id);
            m.moved();
            m.remote_ns = msg.when_ns;
            m.old = None;
            m.arrival_until = None;
            let moves = m.moves;
            let mut out = Outcome::new(next);
            out.send.push(ack(st, msg, u.vtep, moves));
            out.log = Some(format!("wire {id}: end {} left for {s}; wire is now encap {staying} -> {s}", msg.end));
            Ok(out)
        }
    }
}

/// ACK: the peer took our LOCATE (the caller checked one was waiting).
/// Frames held until then are released.
pub fn on_ack(st: &State, msg: &Message, now: Instant) -> Outcome {
    let mut next = st.clone();
    hold::acked(&mut next, msg.wire, &msg.end, msg.from, msg.location, now);
    if let Some(m) = st.wire_move(msg.wire) {
        if m.moves < msg.moves || m.awaiting_ack.is_some() {
            let m = next.move_mut(msg.wire);
            m.moves = m.moves.max(msg.moves);
            m.awaiting_ack = None;
        }
    }
    // Nothing of the saved form changes.
    Outcome { save: false, ..Outcome::new(next) }
}

/// MOVED: our end of wire `msg.wire` is now elsewhere; pass on what still
/// arrives for it during the grace period.
pub fn on_moved(st: &State, msg: &Message, now: Instant) -> Result<Outcome, Refused> {
    let id = msg.wire;
    let Some(w) = st.table().wire(id).cloned() else { return Err(Refused::UnknownWire) };
    let Peer::Remote { vtep, encap } = w.peer else { return Err(Refused::Conflict) };
    if encap.is_secure() {
        return Err(Refused::SecureWire);
    }
    let Some(u) = st.config().uplink.clone() else { return Err(Refused::Unresolved) };
    // Only our end's peer may say so, about our end, to another host.
    if vtep != msg.from || msg.end != w.endpoint || msg.location == u.vtep {
        return Err(Refused::Conflict);
    }
    let mv = st.wire_move(id).cloned().unwrap_or_default();
    if msg.when_ns <= mv.local_ns {
        return Err(Refused::Stale);
    }
    let grace = st.config().grace();
    let mut next = st.clone();
    let d = Departed {
        endpoint: w.endpoint.clone(),
        peer: Peer::Remote { vtep, encap },
        to: msg.location,
        until: now + grace,
    };
    next.depart(id, d).map_err(|_| Refused::UnknownWire)?;
    next.want(msg.location, Some(msg.location_mac), now);
    next.move_mut(id).moved();
    let flush_now = hold::departing(&mut next, id, &w.endpoint, msg.location, now);
    let mut out = Outcome::new(next);
    if flush_now {
        // Nothing held here: the new host need not wait for us.
        out.send.push(flushed_message(st, id, &w.endpoint, msg.location, msg.location_mac, mv.local_ns));
    }
    out.cancel_locates = true;
    out.log = Some(format!(
        "wire {id}: end {} moved to {}; passing on its frames for {} ms, then forgetting the wire here",
        w.endpoint,
        msg.location,
        grace.as_millis()
    ));
    Ok(out)
}

/// The FLUSHED that tells `to` (whose uplink MAC is `mac`, from its
/// message) that every frame for `end` of wire `id` held here was passed on.
pub fn flushed_message(st: &State, id: ConnectorId, end: &str, to: Ipv4Addr, mac: MacAddr, when_ns: u64) -> Outgoing {
    let msg = message(st, kind::FLUSHED, id, to, Encap::Vwire, end, when_ns);
    Outgoing { msg, to, mac: Some(mac).filter(|m| *m != MacAddr([0; 6])) }
}

/// FLUSHED: the old host of our end of wire `msg.wire` has passed on what
/// it held for it; frames the peer sent here directly, held meanwhile, go
/// on now.
pub fn on_flushed(st: &State, msg: &Message, now: Instant) -> Result<Outcome, Refused> {
    let Some(u) = st.config().uplink.as_ref() else { return Err(Refused::Unresolved) };
    if msg.location != u.vtep {
        return Err(Refused::Conflict);
    }
    if st.table().wire(msg.wire).is_none() {
        return Err(Refused::UnknownWire);
    }
    let mut next = st.clone();
    hold::flushed(&mut next, msg.wire, msg.from, now)?;
    let mut out = Outcome::new(next);
    out.save = false;
    Ok(out)
}

/// Why an arrival is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrivalError {
    /// The wire is not an encap wire.
    NotEncap(ConnectorId),
    /// The wire is secure: its SAs do not follow a move yet.
    Secure(ConnectorId),
    /// The table refused.
    Table(TableError),
}

/// `connect W ARRIVING RESIDENT` where W is an encap wire from RESIDENT:
/// the remote end arrived here, and W becomes a loopback wire. With
/// migration on, its old host is told to pass on what still arrives there.
pub fn colocate(
    st: &State,
    id: ConnectorId,
    arriving: &str,
    now: Instant,
    now_ns: u64,
    migration: bool,
) -> Result<Outcome, ArrivalError> {
    let Some(Peer::Remote { vtep, encap }) = st.table().wire(id).map(|w| w.peer.clone()) else {
        return Err(ArrivalError::NotEncap(id));
    };
    if encap.is_secure() {
        return Err(ArrivalError::Secure(id));
    }
    let resident = st.table().wire(id).map(|w| w.endpoint.clone()).unwrap_or_default();
    let mut next = st.clone();
    next.colocate(id, arriving).map_err(ArrivalError::Table)?;
    if migration {
        hold::colocated(&mut next, id, &resident, vtep, now);
    }
    let old_mac = st.next_hop_mac(vtep);
    next.release(vtep);
    let grace = st.config().grace();
    let m = next.move_mut(id);
    m.moved();
    m.local_ns = now_ns;
    if !grace.is_zero() {
        m.old = Some((vtep, encap, now + grace));
        m.arrival_until = Some(now + grace);
    }
    let when = m.local_ns;
    let mut out = Outcome::new(next);
    if migration {
        if let Some(u) = st.config().uplink.as_ref() {
            let moved = message(st, kind::MOVED, id, u.vtep, encap, arriving, when);
            out.send.push(Outgoing { msg: moved, to: vtep, mac: old_mac });
        }
    }
    out.log = Some(format!("wire {id}: end {arriving} arrived from {vtep}; the wire is now loopback"));
    Ok(out)
}

/// An end whose grace period ended: its wire, what it was, its counter slot.
pub type Ended = (ConnectorId, Departed, u32);

/// Ends grace periods that are over. Returns the next state and the ends
/// whose grace period ended (with their slot), if anything did.
pub fn expire(st: &State, now: Instant) -> Option<(State, Vec<Ended>)> {
    let mut next = st.clone();
    let ended: Vec<ConnectorId> = st.departures().filter(|(_, (d, _))| now >= d.until).map(|(id, _)| *id).collect();
    let mut gone = Vec::new();
    for id in ended {
        let Some((d, slot)) = next.forget_departed(id) else { continue };
        // A departed remote end holds its old peer and its new host; a
        // loopback wire's departed end holds nothing (the wire does).
        if let Peer::Remote { vtep, .. } = d.peer {
            next.release(vtep);
            next.release(d.to);
        }
        gone.push((id, d, slot));
    }
    let moves_ended = next.expire_moves(now);
    (moves_ended || !gone.is_empty()).then_some((next, gone))
}
