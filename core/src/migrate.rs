//! Live migration: the state a fabric keeps about moving wire ends, and the
//! checks every location update passes before it can change anything.
//!
//! The exchange itself (who sends LOCATE, ACK and MOVED to whom, and what
//! each one changes) is in [`crate::exchange`]; the message format is
//! `vw_wire::migration`; the design is in docs/migration.md.

use crate::exchange::Refused;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vw_wire::migration::{Freshness, Key, Message, MessageError, ReplayWindow};
use vw_wire::table::Peer;
use vw_wire::{ConnectorId, Encap};

/// A message whose `sent` time is further than this from our clock is stale.
pub const MAX_SKEW: Duration = Duration::from_secs(10);
/// How many times a LOCATE is sent before giving up on an ACK.
pub const LOCATE_TRIES: u32 = 40;
/// Longest a newly connected end waits for the peer's ACK before it sends
/// anyway (a peer without the wire yet, or without migration, never answers).
pub const ACK_WAIT: Duration = Duration::from_millis(50);

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// The shared key.
    pub key: Key,
    /// UDP port of the channel.
    pub port: u16,
    /// Grace period after a move.
    pub grace: Duration,
    /// Longest the frames for a stopped end are held.
    pub hold: Duration,
}

/// What this fabric knows about the moves of one wire.
#[derive(Debug, Clone, Default)]
pub struct WireMove {
    /// Moves seen (re-pointed here, or reported by the peer's ACK).
    pub moves: u32,
    /// Wall-clock time of the last move, ms since the Unix epoch.
    pub last_move_ms: u64,
    /// How long this fabric took to apply the last move it applied, from
    /// taking the message to every worker running the new configuration.
    pub last_move_us: u64,
    /// When the remote end arrived where it is (its LOCATE's `when`).
    pub remote_ns: u64,
    /// When the local end arrived here (our connect).
    pub local_ns: u64,
    /// During the grace period after the remote end moved: its old host and
    /// format; frames from there are still accepted.
    pub old: Option<(Ipv4Addr, Encap, Instant)>,
    /// During the grace period after the local end arrived: forwarded frames
    /// for it are accepted.
    pub arrival_until: Option<Instant>,
    /// Until the peer acknowledges our LOCATE (or this time passes), frames
    /// from our end wait in the hold queue: sent earlier, they would reach a
    /// peer that does not yet accept them from here.
    pub awaiting_ack: Option<Instant>,
}

impl WireMove {
    /// Whether a grace period has ended.
    pub fn due(&self, now: Instant) -> bool {
        self.old.is_some_and(|(_, _, t)| now >= t)
            || self.arrival_until.is_some_and(|t| now >= t)
            || self.awaiting_ack.is_some_and(|t| now >= t)
    }

    /// Drops grace periods that ended; true if one did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut changed = false;
        if self.old.is_some_and(|(_, _, t)| now >= t) {
            self.old = None;
            changed = true;
        }
        if self.arrival_until.is_some_and(|t| now >= t) {
            self.arrival_until = None;
            changed = true;
        }
        if self.awaiting_ack.is_some_and(|t| now >= t) {
            self.awaiting_ack = None;
            changed = true;
        }
        changed
    }

    /// Records a move applied now.
    pub fn moved(&mut self) {
        self.moves += 1;
        self.last_move_ms = now_ns() / 1_000_000;
    }
}

/// Where frames are held while a wire end moves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldAt {
    /// Frames this local endpoint sends into its wire (to a local peer that
    /// stopped, or to a remote peer that does not take them from here yet).
    From(String),
    /// Frames of the wire that arrive from the underlay for its local end.
    Inbound(ConnectorId),
}

/// Why frames are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The end's VM stopped (QEMU's final migration phase, or a reset): its
    /// frames are held until it comes back here or its new host takes it.
    EndStopped,
    /// The end just arrived here: its frames wait for the peer's ACK.
    AwaitingAck,
    /// The end just arrived here: frames the peer sends here directly wait
    /// until the old host has passed on what it held (its FLUSHED), so that
    /// they arrive after those, in order.
    AwaitingFlush,
    /// QEMU is live-migrating the end's VM, which runs slowly and stops
    /// before its rings do: frames for it pass through the queue (released),
    /// no faster than its RX ring takes them, and are held once it stops.
    Migrating,
}

impl HoldReason {
    /// Lower-case name (for `vwctl wire list` and the log).
    pub fn name(self) -> &'static str {
        match self {
            HoldReason::EndStopped => "vm_stopped",
            HoldReason::AwaitingAck => "awaiting_ack",
            HoldReason::AwaitingFlush => "awaiting_flush",
            HoldReason::Migrating => "migrating",
        }
    }
}

/// Frames of one wire held in order, in a queue the fabric sizes by the
/// wire's rate and the hold time, then released: sent on, in order, where
/// the wire goes now (through the queue, so nothing overtakes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The wire.
    pub wire: ConnectorId,
    /// Why.
    pub reason: HoldReason,
    /// Held frames are being sent on.
    pub released: bool,
    /// Held: when the hold ends by itself. Released: when the queue is
    /// retired and frames take the direct path again.
    pub until: Instant,
    /// Held: at `until`, release (true) or drop what is held (false).
    pub release_at_end: bool,
    /// Held: released by a FLUSHED from this host (the end's old host).
    pub flush_from: Option<Ipv4Addr>,
    /// Released: once the queue is empty, send FLUSHED to this host (the
    /// end's new host) about this end.
    pub flush_to: Option<(Ipv4Addr, String)>,
}

/// A local end that left: during its grace period, frames that still
/// arrive for it are passed on to its new host, and frames its old
/// endpoint still sends go to the wire's other end.
#[derive(Debug, Clone)]
pub struct Departed {
    /// The endpoint that was the end here (it may be removed meanwhile).
    pub endpoint: String,
    /// The wire's other end as it was seen from here.
    pub peer: Peer,
    /// The end's new host.
    pub to: Ipv4Addr,
    /// End of the grace period.
    pub until: Instant,
}

/// A LOCATE waiting for its ACK.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The message (seq and sent time are set at each send).
    pub msg: Message,
    /// Where it goes.
    pub to: Ipv4Addr,
    /// Sends so far.
    pub tries: u32,
    /// Next send.
    pub next: Instant,
    /// When it was first queued: an ACK says how long the peer took.
    pub first: Instant,
}

impl Pending {
    /// Delay before the next retransmission: 5 ms, doubling up to 200 ms.
    pub fn backoff(tries: u32) -> Duration {
        Duration::from_millis((5u64 << tries.min(6)).min(200))
    }
}

/// Runtime state of the migration channel.
#[derive(Debug)]
pub struct Channel {
    /// Settings.
    pub settings: MigrationSettings,
    seq: u64,
    windows: HashMap<Ipv4Addr, ReplayWindow>,
    /// LOCATEs waiting for an ACK.
    pub pending: Vec<Pending>,
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Messages taken.
    pub accepted: u64,
    /// Messages refused, by reason.
    pub refused: [u64; Refused::ALL.len()],
    /// Frames forwarded on wires whose grace period ended.
    pub forwarded_before: u64,
    /// Messages not sent because the next hop's MAC was not known yet
    /// (LOCATEs are retried).
    pub unsent: u64,
}

impl Channel {
    /// A channel with the settings; message numbers start at the clock, so
    /// they keep growing across restarts.
    pub fn new(settings: MigrationSettings) -> Channel {
        Channel {
            settings,
            seq: now_ns(),
            windows: HashMap::new(),
            pending: Vec::new(),
            sent: 0,
            received: 0,
            accepted: 0,
            refused: [0; Refused::ALL.len()],
            forwarded_before: 0,
            unsent: 0,
        }
    }

    /// Counts a refusal.
    pub fn refuse(&mut self, reason: Refused) {
        self.refused[reason as usize] += 1;
    }

    /// Stamps and encodes a message.
    pub fn encode(&mut self, msg: &mut Message) -> [u8; vw_wire::migration::CONTROL_LEN] {
        self.seq = self.seq.wrapping_add(1).max(now_ns());
        msg.seq = self.seq;
        msg.sent_ns = now_ns();
        msg.encode(&self.settings.key)
    }

    /// Authenticates a message from `src` and checks it is fresh: MAC,
    /// sender address, clock skew, then the sender's replay window (only a
    /// message that passed everything else moves the window).
    pub fn admit(&mut self, src: Ipv4Addr, payload: &[u8], now_ns: u64) -> Result<Message, Refused> {
        let m = Message::decode(payload, &self.settings.key).map_err(|e| match e {
            MessageError::BadMac => Refused::BadMac,
            _ => Refused::Malformed,
        })?;
        if m.from != src {
            return Err(Refused::WrongSource);
        }
        if m.sent_ns.abs_diff(now_ns) > MAX_SKEW.as_nanos() as u64 {
            return Err(Refused::Stale);
        }
        match self.windows.entry(src).or_default().check(m.seq) {
            Freshness::New => Ok(m),
            Freshness::Replayed => Err(Refused::Replayed),
            Freshness::OutOfOrder => Err(Refused::OutOfOrder),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_wire::migration::kind;
    use vw_wire::{ConnectorId, MacAddr};

    fn channel(key: u8) -> Channel {
        Channel::new(MigrationSettings {
            key: Key::new(&[key; 32]).unwrap(),
            port: 4796,
            grace: Duration::from_secs(1),
            hold: Duration::from_secs(1),
        })
    }

    fn locate(from: Ipv4Addr) -> Message {
        Message {
            kind: kind::LOCATE,
            wire: ConnectorId(7),
            from,
            location: from,
            location_mac: MacAddr::new(2, 0, 0, 0, 0, 3),
            encap: Encap::Vwire,
            end: "vmb".into(),
            seq: 0,
            sent_ns: 0,
            when_ns: now_ns(),
            moves: 0,
        }
    }

    #[test]
    fn admits_fresh_authentic_messages_only() {
        let h3 = Ipv4Addr::new(10, 0, 0, 3);
        let (mut tx, mut rx, mut stranger) = (channel(1), channel(1), channel(2));
        let a = tx.encode(&mut locate(h3));
        let b = tx.encode(&mut locate(h3));
        assert!(rx.admit(h3, &a, now_ns()).is_ok());
        assert_eq!(rx.admit(h3, &a, now_ns()), Err(Refused::Replayed));
        assert!(rx.admit(h3, &b, now_ns()).is_ok());
        // Sent before b but arriving after it.
        let c = tx.encode(&mut locate(h3));
        let d = tx.encode(&mut locate(h3));
        assert!(rx.admit(h3, &d, now_ns()).is_ok());
        assert_eq!(rx.admit(h3, &c, now_ns()), Err(Refused::OutOfOrder));
        // Another key, another claimed sender, another clock.
        let f = stranger.encode(&mut locate(h3));
        assert_eq!(rx.admit(h3, &f, now_ns()), Err(Refused::BadMac));
        let g = tx.encode(&mut locate(h3));
        assert_eq!(rx.admit(Ipv4Addr::new(10, 0, 0, 9), &g, now_ns()), Err(Refused::WrongSource));
        let h = tx.encode(&mut locate(h3));
        assert_eq!(rx.admit(h3, &h, now_ns() + 11_000_000_000), Err(Refused::Stale));
        assert_eq!(rx.admit(h3, &h[..100], now_ns()), Err(Refused::Malformed));
        // Refused messages did not move the window: h is still new.
        assert!(rx.admit(h3, &h, now_ns()).is_ok());
    }

    #[test]
    fn sequence_numbers_grow() {
        let mut tx = channel(1);
        let mut m = locate(Ipv4Addr::new(10, 0, 0, 3));
        tx.encode(&mut m);
        let first = m.seq;
        tx.encode(&mut m);
        assert!(m.seq > first && first >= now_ns() - 1_000_000_000);
    }

    #[test]
    fn grace_periods_expire() {
        let now = Instant::now();
        let mut w = WireMove {
            old: Some((Ipv4Addr::new(10, 0, 0, 2), Encap::Vwire, now + Duration::from_millis(5))),
            arrival_until: Some(now + Duration::from_millis(10)),
            ..Default::default()
        };
        assert!(!w.expire(now));
        assert!(w.expire(now + Duration::from_millis(5)));
        assert!(w.old.is_none() && w.arrival_until.is_some());
        assert!(w.expire(now + Duration::from_millis(10)));
        assert!(!w.expire(now + Duration::from_secs(1)));
        w.moved();
        assert_eq!(w.moves, 1);
        assert!(w.last_move_ms > 0);
    }

    #[test]
    fn backoff() {
        assert_eq!(Pending::backoff(0), Duration::from_millis(5));
        assert_eq!(Pending::backoff(2), Duration::from_millis(20));
        assert_eq!(Pending::backoff(30), Duration::from_millis(200));
    }
}
