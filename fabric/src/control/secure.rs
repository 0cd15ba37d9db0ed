//! Secure wires on the control thread: the checks of a secure connect, the
//! SAs it installs for the workers, the sequence floors saved in the state
//! file as the SAs advance, and what a restart restores (see
//! `crate::secure` and docs/security.md).

use super::{Control, Refusal};
use crate::persist::{Change, SavedRekey, SavedSecure};
use crate::secure::{fingerprints, SecureSa, MAX_FLOOR, SEQ_CHUNK, SEQ_RAISE_AT};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vw_core::policy::Role;
use vw_ctl::proto::{self, EncapName, ErrorCode, SecureKeys};
use vw_wire::ConnectorId;

/// The lifetime of a wire's SAs: (duration, packets).
fn next_limit(next: &SecureKeys) -> (Option<Duration>, Option<u64>) {
    let l = next.lifetime.unwrap_or_default();
    (l.seconds.map(Duration::from_secs), l.packets)
}

fn invalid(m: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::InvalidArgument, m)
}

/// How long a rekeyed wire's old inbound SA stays once the far end sends
/// with the new keys: for packets it sealed with the old ones just before,
/// still on their way or in a queue.
const REKEY_LINGER: Duration = Duration::from_secs(2);

/// How long a wire's next generation is installed before its lifetime may
/// switch to it (the far end installs it about when this end did).
const LIFETIME_SETTLE: Duration = Duration::from_secs(1);

/// The range `rekey --switch-in` may take, ms.
const REKEY_SWITCH_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

/// NAT keepalives to idle secure wires' far ends (`vwfabric --nat-keepalive`).
#[derive(Debug)]
pub(super) struct Keepalive {
    /// When the next round is due.
    next: Instant,
    /// Each secure wire's outbound packets at the last round.
    sent: HashMap<u32, u64>,
    /// Keepalives sent.
    pub(super) count: u64,
}

/// A secure wire whose keys carry an SA lifetime: its next generation of
/// keys is installed ahead as a rekey (its inbound SA opens at once), and
/// its outbound SA switches to it at the lifetime, or when the far end
/// sends with it first.
#[derive(Debug)]
pub(super) struct Lifetime {
    /// When the current outbound SA began.
    since: Instant,
    /// The next generation's keys, while they are the pending rekey.
    next: Option<SecureKeys>,
    /// When they were installed.
    installed: Instant,
    /// Rekeys at the lifetime since the fabric started.
    generations: u64,
    /// The next inbound SPI collided with another wire's (logged once).
    stuck: bool,
}

/// The next generation of `keys`: each direction's SA derived from its
/// current one (`Keymat::next_generation`), the lifetime kept.
fn next_generation(keys: &SecureKeys) -> Result<SecureKeys, String> {
    let out = vw_esp::Keymat::from_hex(&keys.out_key).map_err(|e| e.to_string())?;
    let inb = vw_esp::Keymat::from_hex(&keys.in_key).map_err(|e| e.to_string())?;
    let ((out, out_spi), (inb, in_spi)) = (out.next_generation(keys.out_spi), inb.next_generation(keys.in_spi));
    Ok(SecureKeys { out_spi, out_key: out.to_hex(), in_spi, in_key: inb.to_hex(), lifetime: keys.lifetime })
}

impl Default for Keepalive {
    fn default() -> Keepalive {
        Keepalive { next: Instant::now(), sent: HashMap::new(), count: 0 }
    }
}

impl Control {
    /// Refuses a connect whose keys and format do not go together, or
    /// whose keys the caller may not give.
    pub(super) fn check_secure_request(
        &self,
        role: Role,
        encap: Option<EncapName>,
        keys: Option<&SecureKeys>,
        incoming: bool,
    ) -> Result<(), Refusal> {
        let secure = encap.is_some_and(EncapName::is_secure);
        if keys.is_some() && role != Role::Operator {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                "only root may give a secure wire's keys (connect --key-file)",
            ));
        }
        match (secure, keys) {
            (true, None) => Err(invalid(
                "a secure wire needs its keys: --key-file FILE (`vwctl keygen FILE PEER_FILE` writes a pair)",
            )),
            (false, Some(_)) => Err(invalid("--key-file applies to --encap secure or --encap secure-vxlan")),
            (true, Some(_)) if incoming => {
                Err(invalid("a secure wire cannot be armed with --incoming: its ends do not move between hosts yet"))
            }
            (true, Some(_)) if self.store.is_none() => Err(invalid(
                "a secure wire needs the state file (vwfabric --state): no sequence number may repeat under its key \
                 across a restart",
            )),
            _ => Ok(()),
        }
    }

    /// Connects secure wire `id` with `keys`: checked, the key's use
    /// recorded, the SAs installed, then the wire connected as any encap
    /// wire (whose snapshot carries the SAs). Nothing changes if refused.
    pub(super) fn connect_secure(
        &mut self,
        id: ConnectorId,
        endpoint: &str,
        peer: &str,
        encap: EncapName,
        keys: &SecureKeys,
    ) -> Result<proto::WireInfo, Refusal> {
        let vtep: Ipv4Addr = peer.parse().map_err(|_| {
            invalid(format!(
                "a secure wire goes to a remote VTEP's IPv4 address; {peer} is not one (secure wires are not \
                 connected by endpoint name through the directory yet)"
            ))
        })?;
        if self.state.table().wire(id).is_some() {
            return Err(Refusal::new(ErrorCode::WireExists, format!("wire {id} exists")));
        }
        let (fp_out, fp_in) = self.unused_keys(keys)?;
        if let Some(other) = self.secure.by_spi(keys.in_spi) {
            return Err(invalid(format!(
                "inbound SPI {:#010x} is wire {}'s already; each secure wire here needs its own",
                keys.in_spi, other.wire
            )));
        }
        let sa = SecureSa::new(id.0, vtep, keys, 0, 0).map_err(|e| invalid(format!("the key file's {e}")))?;
        // The limit the SA starts with is its floor: saved before any use.
        let saved = SavedSecure { keys: keys.clone(), out_floor: sa.out.limit(), in_floor: 0, next: None };
        if let Some(store) = &mut self.store {
            let used = [Change::KeyUsed { fingerprint: fp_out }, Change::KeyUsed { fingerprint: fp_in }];
            store.record_all(&used).map_err(|e| {
                Refusal::new(ErrorCode::Unavailable, format!("cannot save to the state file: {e}; not connected"))
            })?;
        }
        let before = (self.secure.clone(), self.secure_saved.clone());
        self.secure = Arc::new(self.secure.with(Arc::new(sa)));
        self.secure_saved.insert(id, saved);
        let r = self.connect(id, endpoint, peer, Some(encap));
        if r.is_err() {
            (self.secure, self.secure_saved) = before;
            return r;
        }
        self.lifetime_prepare(id);
        Ok(self.wire_info(id))
    }

    /// Connects wire `id`; under `--force-encap secure[-vxlan]` (benchmark
    /// aid) a loopback wire also gets its loop SA first
    /// ([`SecureSa::loop_bench`], SPI 0xb0000000 plus the low 28 bits of
    /// the wire id), dropped again if the connect is refused.
    pub(super) fn connect_or_loop_sa(
        &mut self,
        id: ConnectorId,
        endpoint: &str,
        peer: &str,
        encap: Option<EncapName>,
    ) -> Result<proto::WireInfo, Refusal> {
        let forced = self.settings.force_encap.filter(|e| e.is_secure());
        let vtep = self.uplink.as_ref().map(|u| u.net.vtep);
        let (Some(_), Some(vtep), true) = (forced, vtep, self.state.endpoint(peer).is_some()) else {
            return self.connect(id, endpoint, peer, encap);
        };
        let spi = 0xb000_0000 | (id.0 & 0x0fff_ffff);
        if let Some(other) = self.secure.by_spi(spi) {
            return Err(invalid(format!("loop SA SPI {spi:#010x} is wire {}'s already", other.wire)));
        }
        let sa = SecureSa::loop_bench(id.0, vtep, spi).map_err(invalid)?;
        let before = self.secure.clone();
        self.secure = Arc::new(self.secure.with(Arc::new(sa)));
        let r = self.connect(id, endpoint, peer, encap);
        if r.is_err() {
            self.secure = before;
        }
        r
    }

    /// The names of `keys`' two keys, if neither was used here before: a
    /// key that sealed or opened here may have sealed sequence numbers 1..
    /// already (here, or at the far end), so never again.
    fn unused_keys(&self, keys: &SecureKeys) -> Result<(String, String), Refusal> {
        let (fp_out, fp_in) = fingerprints(keys).map_err(|e| invalid(format!("the key file's {e}")))?;
        for (fp, dir, spi) in [(&fp_out, "out", keys.out_spi), (&fp_in, "in", keys.in_spi)] {
            if self.store.as_ref().is_some_and(|s| s.key_used(fp)) {
                return Err(invalid(format!(
                    "the {dir} key of SPI {spi:#010x} was used before by a secure wire here; AES-GCM must never \
                     repeat a nonce under one key, so a key serves one connect or rekey: write new keys with \
                     `vwctl keygen`"
                )));
            }
        }
        Ok((fp_out, fp_in))
    }

    /// `vwctl rekey`: secure wire `id` gets `keys`. The new inbound SA is
    /// installed now, beside the current one; the outbound SA switches in
    /// [`Control::rekey_tick`] once the new inbound SA verified a packet
    /// (the far end has the new keys) or after `switch_in_ms`. The keys'
    /// use and the rekey are saved first: nothing changes if refused.
    pub(super) fn rekey(
        &mut self,
        role: Role,
        id: ConnectorId,
        keys: &SecureKeys,
        switch_in_ms: u64,
    ) -> Result<proto::WireInfo, Refusal> {
        if role != Role::Operator {
            return Err(Refusal::new(ErrorCode::PermissionDenied, "only root may give a secure wire's keys (rekey)"));
        }
        let Some(saved) = self.secure_saved.get(&id).cloned() else {
            return Err(match self.state.table().wire(id) {
                Some(_) => invalid(format!(
                    "wire {id} is not a secure wire: rekey applies to wires connected with --encap secure or \
                     secure-vxlan"
                )),
                None => Refusal::new(ErrorCode::NoSuchWire, format!("wire {id} does not exist")),
            });
        };
        let Some(cur) = self.secure.by_wire(id.0).cloned() else {
            return Err(Refusal::new(ErrorCode::NoSuchWire, format!("wire {id} has no SAs here")));
        };
        if let Some(due) = self.rekey_due.get(&id) {
            return Err(invalid(format!(
                "wire {id} is being rekeyed already: it sends with the new keys within {} s; rekey it again \
                 after that",
                due.saturating_duration_since(Instant::now()).as_secs() + 1
            )));
        }
        if !REKEY_SWITCH_MS.contains(&switch_in_ms) {
            return Err(invalid("--switch-in is 1 to 86400 seconds"));
        }
        let (fp_out, fp_in) = self.unused_keys(keys)?;
        if let Some(other) = self.secure.by_spi(keys.in_spi) {
            return Err(invalid(format!(
                "inbound SPI {:#010x} is wire {}'s already; a rekey needs new SPIs (write a new pair with `vwctl \
                 keygen`)",
                keys.in_spi, other.wire
            )));
        }
        if keys.out_spi == cur.out.key().spi() {
            return Err(invalid(format!(
                "outbound SPI {:#010x} is the one wire {id} sends with now; the far end must hold the old and the \
                 new inbound SA at once, so a rekey needs new SPIs (write a new pair with `vwctl keygen`)",
                keys.out_spi
            )));
        }
        let sa = SecureSa::new(id.0, cur.peer, keys, 0, 0)
            .map_err(|e| invalid(format!("the key file's {e}")))?
            .sharing_port_of(&cur);
        if let Some(store) = &mut self.store {
            let used = [Change::KeyUsed { fingerprint: fp_out }, Change::KeyUsed { fingerprint: fp_in }];
            store.record_all(&used).map_err(|e| {
                Refusal::new(ErrorCode::Unavailable, format!("cannot save to the state file: {e}; not rekeyed"))
            })?;
        }
        let next = SavedSecure { next: Some(SavedRekey { keys: keys.clone(), switch_in_ms }), ..saved.clone() };
        self.secure_saved.insert(id, next);
        let st = self.state.clone();
        if let Err(r) = self.record(&st, &[super::Touched::Wire(id)]) {
            self.secure_saved.insert(id, saved);
            return Err(r);
        }
        self.rekey_install(id, sa, switch_in_ms)?;
        // A next generation waiting for the lifetime gives way.
        if let Some(l) = self.lifetimes.get_mut(&id) {
            l.next = None;
        }
        crate::log(&format!(
            "wire {id}: rekey: inbound SPI {:#010x} installed; sending with SPI {:#010x} once the far end's new keys \
             arrive, within {} s",
            keys.in_spi,
            keys.out_spi,
            switch_in_ms / 1000
        ));
        Ok(self.wire_info(id))
    }

    /// Installs a rekey's SAs beside wire `id`'s current ones and publishes
    /// them (while restoring, `restore` publishes).
    fn rekey_install(&mut self, id: ConnectorId, sa: SecureSa, switch_in_ms: u64) -> Result<(), Refusal> {
        self.secure = Arc::new(self.secure.with_pending(Arc::new(sa)));
        self.rekey_linger.remove(&id);
        self.rekey_due.insert(id, Instant::now() + Duration::from_millis(switch_in_ms));
        let st = self.state.clone();
        self.apply(st)
    }

    /// Every tick: a rekey whose new inbound SA verified a packet, or whose
    /// time is up, switches the outbound SA (the new keys saved first);
    /// an old inbound SA goes [`REKEY_LINGER`] after the far end was seen
    /// sending with the new keys.
    pub(super) fn rekey_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<(ConnectorId, bool)> = self
            .rekey_due
            .iter()
            .filter_map(|(id, at)| {
                let heard = self.secure.pending(id.0).is_none_or(|p| p.window.top() > 0);
                (heard || now >= *at).then_some((*id, heard))
            })
            .collect();
        for (id, heard) in due {
            self.rekey_switch(id, heard);
        }
        let auto: Vec<(ConnectorId, SecureKeys, bool)> = self
            .lifetimes
            .iter()
            .filter_map(|(id, l)| {
                let next = l.next.as_ref()?;
                let limit = next_limit(next);
                let (cur, pending) = (self.secure.by_wire(id.0)?, self.secure.pending(id.0)?);
                let heard = pending.window.top() > 0;
                // The far end installs the same generation when its own
                // old SA goes, about when ours did: give it a moment.
                let settled = now >= l.installed + LIFETIME_SETTLE;
                let expired = settled
                    && (limit.0.is_some_and(|s| now >= l.since + s) || limit.1.is_some_and(|p| cur.out.sent() >= p));
                (heard || expired).then(|| (*id, next.clone(), heard))
            })
            .collect();
        for (id, next, heard) in auto {
            let why = if heard { "the far end's next generation arrived" } else { "its lifetime was reached" };
            if self.switch_to(id, next, heard, why) {
                if let Some(l) = self.lifetimes.get_mut(&id) {
                    l.next = None;
                    l.generations += 1;
                }
            }
        }
        let mut retire = Vec::new();
        for (id, since) in self.rekey_linger.iter_mut() {
            match (*since, self.secure.by_wire(id.0)) {
                (_, None) => retire.push(*id),
                (Some(t), _) if now >= t + REKEY_LINGER => retire.push(*id),
                (None, Some(cur)) if cur.window.top() > 0 => *since = Some(now),
                _ => {}
            }
        }
        for id in retire {
            self.rekey_linger.remove(&id);
            let Some(old) = self.secure.old(id.0).map(|o| o.inb.spi()) else { continue };
            self.secure = Arc::new(self.secure.without_old(id.0));
            let st = self.state.clone();
            if self.apply(st).is_ok() {
                crate::log(&format!("wire {id}: rekey done: the old inbound SPI {old:#010x} is removed"));
            }
            self.lifetime_prepare(id);
        }
    }

    /// Installs the next generation of wire `id`'s keys as its pending
    /// rekey, if its keys carry a lifetime and no rekey or old SA is there
    /// (each generation waits for the far end to have switched to the
    /// last one, so the two ends are never more than one apart).
    fn lifetime_prepare(&mut self, id: ConnectorId) {
        let Some(keys) = self.secure_saved.get(&id).map(|s| s.keys.clone()) else { return };
        if keys.lifetime.is_none() {
            self.lifetimes.remove(&id);
            return;
        }
        let l = self.lifetimes.entry(id).or_insert_with(|| Lifetime {
            since: Instant::now(),
            next: None,
            installed: Instant::now(),
            generations: 0,
            stuck: false,
        });
        let Some(cur) = self.secure.by_wire(id.0).cloned() else { return };
        if l.next.is_some() || self.secure.pending(id.0).is_some() || self.secure.old(id.0).is_some() {
            return;
        }
        let sa = next_generation(&keys).and_then(|next| {
            if let Some(other) = self.secure.by_spi(next.in_spi) {
                return Err(format!(
                    "its next inbound SPI {:#010x} is wire {}'s already; it cannot rekey itself: give it new keys \
                     with `vwctl rekey` at both ends",
                    next.in_spi, other.wire
                ));
            }
            let sa = SecureSa::new(id.0, cur.peer, &next, 0, 0)?.sharing_port_of(&cur);
            Ok((sa, next))
        });
        match sa {
            Ok((sa, next)) => {
                self.secure = Arc::new(self.secure.with_pending(Arc::new(sa)));
                let in_spi = next.in_spi;
                if let Some(l) = self.lifetimes.get_mut(&id) {
                    l.next = Some(next);
                    l.installed = Instant::now();
                    l.stuck = false;
                }
                let st = self.state.clone();
                if self.apply(st).is_ok() {
                    crate::log(&format!(
                        "wire {id}: SA lifetime: the next generation's inbound SPI {in_spi:#010x} is installed"
                    ));
                }
            }
            Err(e) if !l.stuck => {
                l.stuck = true;
                crate::log(&format!("wire {id}: SA lifetime: {e}"));
            }
            Err(_) => {}
        }
    }

    /// Wire `id`'s outbound SA switches to the rekey's keys, once they are
    /// saved as the wire's keys (a failure to save is tried again next tick).
    fn rekey_switch(&mut self, id: ConnectorId, heard: bool) {
        let Some(saved) = self.secure_saved.get(&id).filter(|_| self.secure.pending(id.0).is_some()) else {
            self.rekey_due.remove(&id);
            return;
        };
        let Some(next) = saved.next.clone() else {
            self.rekey_due.remove(&id);
            return;
        };
        let why = if heard {
            "the far end's new keys arrived".to_owned()
        } else {
            format!("nothing came with the far end's new keys within {} s", next.switch_in_ms / 1000)
        };
        if self.switch_to(id, next.keys, heard, &why) {
            self.rekey_due.remove(&id);
        }
    }

    /// Wire `id`'s outbound SA switches to its pending SAs, whose keys are
    /// `keys`, once those are saved as the wire's keys (false if they could
    /// not be: tried again next tick).
    fn switch_to(&mut self, id: ConnectorId, keys: SecureKeys, heard: bool, why: &str) -> bool {
        let (Some(saved), Some(pending)) = (self.secure_saved.get(&id).cloned(), self.secure.pending(id.0).cloned())
        else {
            return false;
        };
        // Its limit is its floor, as at connect: saved before any use.
        let switched = SavedSecure { keys, out_floor: pending.out.limit(), in_floor: pending.window.top(), next: None };
        self.secure_saved.insert(id, switched);
        let st = self.state.clone();
        if let Err(r) = self.record(&st, &[super::Touched::Wire(id)]) {
            self.secure_saved.insert(id, saved);
            crate::log(&format!("wire {id}: rekey: {}; it goes on sending with the old keys", r.message));
            return false;
        }
        let old_in = self.secure.by_wire(id.0).map(|c| c.inb.spi()).unwrap_or_default();
        self.secure = Arc::new(self.secure.switched(id.0));
        self.rekey_linger.insert(id, heard.then(Instant::now));
        if let Some(l) = self.lifetimes.get_mut(&id) {
            l.since = Instant::now();
        }
        let st = self.state.clone();
        if self.apply(st).is_ok() {
            crate::log(&format!(
                "wire {id}: rekeyed: sending with SPI {:#010x} ({why}); the old inbound SPI {old_in:#010x} stays \
                 until the far end sends with the new keys",
                pending.out.key().spi()
            ));
        }
        true
    }

    /// Drops wire `id`'s SAs (it is being disconnected); returns them, to
    /// put back with [`Control::secure_put_back`] if the disconnect fails.
    pub(super) fn secure_forget(&mut self, id: ConnectorId) -> Option<(Arc<SecureSa>, SavedSecure)> {
        // (A loop SA of --force-encap has nothing saved.)
        let sa = self.secure.by_wire(id.0)?.clone();
        self.secure = Arc::new(self.secure.without(id.0));
        self.lifetimes.remove(&id);
        let saved = self.secure_saved.remove(&id)?;
        self.rekey_due.remove(&id);
        self.rekey_linger.remove(&id);
        Some((sa, saved))
    }

    /// Puts back what `secure_forget` took (the same SAs: their sequence
    /// numbers go on).
    pub(super) fn secure_put_back(&mut self, id: ConnectorId, (sa, saved): (Arc<SecureSa>, SavedSecure)) {
        self.secure = Arc::new(self.secure.with(sa));
        self.secure_saved.insert(id, saved);
    }

    /// A restored secure wire's SAs, from its saved floors: it sends above
    /// the floor it saved (every number up to it may have been used) and
    /// takes only packets above the highest it saved as received. The new
    /// floor is saved before the wire is published.
    pub(super) fn secure_restore(&mut self, id: ConnectorId, peer: &str, saved: &SavedSecure) -> Result<(), String> {
        let vtep: Ipv4Addr = peer.parse().map_err(|_| format!("peer {peer} is not an IPv4 address"))?;
        let sa = SecureSa::new(id.0, vtep, &saved.keys, saved.out_floor, saved.in_floor)?;
        let next = SavedSecure { out_floor: sa.out.limit(), ..saved.clone() };
        let sa = Arc::new(sa);
        self.secure = Arc::new(self.secure.with(sa.clone()));
        self.secure_saved.insert(id, next);
        if let Some(r) = &saved.next {
            // A rekey that had not switched: its inbound SA again, and the
            // whole wait for the far end's new keys anew.
            let sa =
                SecureSa::new(id.0, vtep, &r.keys, 0, 0).map_err(|e| format!("its rekey's {e}"))?.sharing_port_of(&sa);
            self.rekey_install(id, sa, r.switch_in_ms).map_err(|r| r.message)?;
        } else {
            self.lifetime_prepare(id);
        }
        Ok(())
    }

    /// Every tick: an outbound SA that used half its allowance gets a new
    /// floor saved and its limit raised; an inbound SA whose window moved
    /// far enough gets its floor saved. One journal line per wire and
    /// chunk (4 Mi packets): at 10 Mpps, a few lines a second.
    pub(super) fn secure_tick(&mut self) {
        let mut changed = Vec::new();
        for sa in self.secure.iter() {
            let id = ConnectorId(sa.wire);
            let Some(saved) = self.secure_saved.get(&id) else { continue };
            let out_due = sa.out.sent() + SEQ_RAISE_AT >= sa.out.limit() && sa.out.limit() <= MAX_FLOOR;
            let in_due = sa.window.top() >= saved.in_floor.saturating_add(SEQ_CHUNK);
            if out_due || in_due {
                let next = SavedSecure {
                    out_floor: if out_due { sa.out.limit() + SEQ_CHUNK } else { saved.out_floor },
                    in_floor: if in_due { sa.window.top() } else { saved.in_floor },
                    keys: saved.keys.clone(),
                    next: saved.next.clone(),
                };
                changed.push((id, next, out_due, sa.clone()));
            }
        }
        for (id, next, out_due, sa) in changed {
            let limit = next.out_floor;
            self.secure_saved.insert(id, next);
            let st = self.state.clone();
            match self.record(&st, &[super::Touched::Wire(id)]) {
                // Saved: the SA may now use numbers up to the new floor.
                Ok(()) if out_due => sa.out.raise_limit(limit),
                Ok(()) => {}
                Err(r) => crate::log(&format!("wire {id}: {}; its SA stops at {}", r.message, sa.out.limit())),
            }
        }
    }

    /// At a clean stop, once the workers have stopped: each secure wire's
    /// floors become exactly the last number sent and the highest received,
    /// so a restart takes no packet it took before and skips no number.
    pub(super) fn secure_stopped(&mut self) {
        let floors: Vec<(ConnectorId, u64, u64)> =
            self.secure.iter().map(|sa| (ConnectorId(sa.wire), sa.out.sent(), sa.window.top())).collect();
        for (id, out_floor, in_floor) in floors {
            let Some(saved) = self.secure_saved.get_mut(&id) else { continue };
            saved.out_floor = out_floor;
            saved.in_floor = saved.in_floor.max(in_floor);
            let st = self.state.clone();
            if let Err(r) = self.record(&st, &[super::Touched::Wire(id)]) {
                crate::log(&format!("wire {id}: {}", r.message));
            }
        }
    }

    /// Every `--nat-keepalive` seconds: one NAT keepalive to each far end
    /// (address and port) that none of our secure wires sent a packet to
    /// since the last round. Every wire to one far end goes through the
    /// same NAT mapping (4500 to its port), so one keepalive serves them
    /// all; a wire connected since the last round counts as busy.
    pub(super) fn nat_keepalive_tick(&mut self) {
        let Some(every) = self.settings.nat_keepalive else { return };
        let now = Instant::now();
        if now < self.keepalive.next {
            return;
        }
        self.keepalive.next = now + every;
        let Some(u) = self.uplink.as_ref().map(|u| u.net.clone()) else { return };
        let mut idle: HashMap<(Ipv4Addr, u16), bool> = HashMap::new();
        let mut seen = HashMap::with_capacity(self.keepalive.sent.len());
        for sa in self.secure.iter() {
            let sent = sa.out.sent();
            let busy = self.keepalive.sent.get(&sa.wire) != Some(&sent);
            seen.insert(sa.wire, sent);
            *idle.entry((sa.peer, sa.port.get())).or_insert(true) &= !busy;
        }
        self.keepalive.sent = seen;
        for (peer, port) in idle.into_iter().filter_map(|(to, idle)| idle.then_some(to)) {
            // Unresolved next hop: ARP is on it, and the next round comes.
            let Some(mac) = self.state.next_hop_mac(peer) else { continue };
            let mut buf = [0u8; vw_wire::ethernet::MIN_FRAME_LEN];
            let n = vw_wire::encap::secure::build_nat_keepalive(&mut buf, u.mac, mac, u.vtep, peer, port);
            self.inject(&buf[..n]);
            self.keepalive.count += 1;
        }
    }

    /// What `wire list` shows of wire `id`'s SAs.
    pub(super) fn secure_info(&self, id: ConnectorId) -> Option<proto::SecureInfo> {
        let sa = self.secure.by_wire(id.0)?;
        let (pending, old) = (self.secure.pending(id.0), self.secure.old(id.0));
        let drops = [Some(sa), pending, old].into_iter().flatten().fold([0u64; 3], |mut d, s| {
            for (t, n) in d.iter_mut().zip(s.drops()) {
                *t += n;
            }
            d
        });
        let lifetime = self.lifetimes.get(&id);
        let automatic = lifetime.is_some_and(|l| l.next.is_some());
        let rekey = pending.map(|p| proto::RekeyInfo {
            automatic,
            out_spi: p.out.key().spi(),
            in_spi: p.inb.spi(),
            switch_in_ms: self
                .rekey_due
                .get(&id)
                .map_or(0, |t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
        });
        Some(proto::SecureInfo {
            out_spi: sa.out.key().spi(),
            in_spi: sa.inb.spi(),
            key_bits: sa.bits,
            sent_seq: sa.out.sent(),
            received_seq: sa.window.top(),
            seq_limit: sa.out.limit(),
            auth_failed: drops[0],
            replayed: drops[1],
            wrong_peer: drops[2],
            peer_port: sa.port.get(),
            nat_rebinds: sa.port.rebinds(),
            lifetime: self.secure_saved.get(&id).and_then(|s| s.keys.lifetime),
            generations: lifetime.map_or(0, |l| l.generations),
            rekey,
            old_in_spi: old.map(|o| o.inb.spi()),
        })
    }
}
