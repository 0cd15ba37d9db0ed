//! Secure wires on the control thread: the checks of a secure connect, the
//! SAs it installs for the workers, the sequence floors saved in the state
//! file as the SAs advance, and what a restart restores (see
//! `crate::secure` and docs/security.md).

use super::{Control, Refusal};
use crate::persist::{Change, SavedSecure};
use crate::secure::{fingerprints, SecureSa, MAX_FLOOR, SEQ_CHUNK, SEQ_RAISE_AT};
use std::net::Ipv4Addr;
use std::sync::Arc;
use vw_core::policy::Role;
use vw_ctl::proto::{self, EncapName, ErrorCode, SecureKeys};
use vw_wire::ConnectorId;

fn invalid(m: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::InvalidArgument, m)
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
        let (fp_out, fp_in) = fingerprints(keys).map_err(|e| invalid(format!("the key file's {e}")))?;
        // A key that sealed or opened here before may have sealed sequence
        // numbers 1.. already (here, or at the far end): never again.
        for (fp, dir, spi) in [(&fp_out, "out", keys.out_spi), (&fp_in, "in", keys.in_spi)] {
            if self.store.as_ref().is_some_and(|s| s.key_used(fp)) {
                return Err(invalid(format!(
                    "the {dir} key of SPI {spi:#010x} was used before by a secure wire here; AES-GCM must never \
                     repeat a nonce under one key, so a key serves one connect: write new keys with `vwctl keygen`"
                )));
            }
        }
        if let Some(other) = self.secure.by_spi(keys.in_spi) {
            return Err(invalid(format!(
                "inbound SPI {:#010x} is wire {}'s already; each secure wire here needs its own",
                keys.in_spi, other.wire
            )));
        }
        let sa = SecureSa::new(id.0, vtep, keys, 0, 0).map_err(|e| invalid(format!("the key file's {e}")))?;
        // The limit the SA starts with is its floor: saved before any use.
        let saved = SavedSecure { keys: keys.clone(), out_floor: sa.out.limit(), in_floor: 0 };
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
        }
        r
    }

    /// Drops wire `id`'s SAs (it is being disconnected); returns them, to
    /// put back with [`Control::secure_put_back`] if the disconnect fails.
    pub(super) fn secure_forget(&mut self, id: ConnectorId) -> Option<(Arc<SecureSa>, SavedSecure)> {
        let saved = self.secure_saved.remove(&id)?;
        let sa = self.secure.by_wire(id.0)?.clone();
        self.secure = Arc::new(self.secure.without(id.0));
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
        self.secure = Arc::new(self.secure.with(Arc::new(sa)));
        self.secure_saved.insert(id, next);
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

    /// What `wire list` shows of wire `id`'s SAs.
    pub(super) fn secure_info(&self, id: ConnectorId) -> Option<proto::SecureInfo> {
        let sa = self.secure.by_wire(id.0)?;
        Some(proto::SecureInfo {
            out_spi: sa.out.key().spi(),
            in_spi: sa.inb.spi(),
            key_bits: sa.bits,
            sent_seq: sa.out.sent(),
            received_seq: sa.window.top(),
            seq_limit: sa.out.limit(),
            auth_failed: sa.drops()[0],
            replayed: sa.drops()[1],
            wrong_peer: sa.drops()[2],
        })
    }
}
