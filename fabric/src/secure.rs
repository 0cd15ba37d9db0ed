//! Secure wires' SAs as the workers use them (see docs/security.md).
//!
//! Each secure wire has an outbound and an inbound SA ([`SecureSa`]). The
//! workers reach them through the snapshot's [`SecureTable`], by wire (to
//! seal) and by inbound SPI (to open); the table is immutable and shared by
//! snapshots, and replaced, by the control plane, only when a secure wire
//! comes or goes.
//!
//! * Sealing: a worker reserves the sequence numbers of a whole burst with
//!   one atomic add, then seals each frame in place with ring's AES-GCM.
//! * Opening: the SA's packets all come from one address and port, so one
//!   receive queue and one worker at a time; its replay window is written
//!   with plain atomic loads and stores (`vw_esp::SharedWindow`).
//! * No sequence number repeats under a key, across restarts too: the
//!   outbound SA may not pass a limit the control plane raises only after
//!   it saved a higher floor in the state file (every [`SEQ_CHUNK`]
//!   packets), and a restart sends from that floor. A key is used for one
//!   connect only: the state file keeps the fingerprint of every outbound
//!   key used here and a connect with one of them is refused.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU16, AtomicU64};
use std::sync::Arc;
use vw_ctl::proto::SecureKeys;
use vw_esp::{Keymat, OpenKey, SharedOutbound, SharedWindow};

/// Sequence numbers between two saves of a secure wire's floors.
pub const SEQ_CHUNK: u64 = 1 << 22;

/// When the outbound SA has used this much of its allowance, the control
/// plane saves a new floor and raises the limit.
pub const SEQ_RAISE_AT: u64 = SEQ_CHUNK / 2;

/// One secure wire's SAs.
pub struct SecureSa {
    /// The wire.
    pub wire: u32,
    /// The far end's VTEP (its public address if it is behind NAT): the
    /// only outer source whose packets are opened.
    pub peer: Ipv4Addr,
    /// The far end's UDP port, shared by the wire's SAs across a rekey.
    pub port: Arc<PeerPort>,
    /// Sends.
    pub out: SharedOutbound,
    /// Receives.
    pub inb: OpenKey,
    /// The inbound replay window.
    pub window: SharedWindow,
    /// AES key length of the outbound SA.
    pub bits: u32,
    /// This wire's inbound packets dropped, by [`InboundDrop`]: counted
    /// with an atomic add, on the drop path only (an attacker may send
    /// them to any worker).
    pub drops: [AtomicU64; 3],
}

/// The UDP port a secure wire's far end sends from and is sent to: 4500,
/// or the port a NAT in front of it maps 4500 to.
///
/// Its packets come from one address and port, so through one receive
/// queue and one worker at a time (see `vw_esp::SharedWindow`). A packet
/// from another port of the peer's address is opened too, and if it
/// verifies and is the newest the SA has received, the NAT has a new
/// mapping for the far end: the port follows it (a "rebind"). A captured
/// packet sent again from another port is refused by the replay window
/// first, and one that overtakes its original can only point the wire at
/// another port of the same address.
#[derive(Debug)]
pub struct PeerPort {
    port: AtomicU16,
    rebinds: AtomicU64,
}

impl PeerPort {
    /// Port 4500, no rebind yet.
    pub fn new() -> PeerPort {
        PeerPort { port: AtomicU16::new(vw_wire::encap::secure::PORT), rebinds: AtomicU64::new(0) }
    }

    /// The port to send to and expect packets from.
    #[inline(always)]
    pub fn get(&self) -> u16 {
        self.port.load(Relaxed)
    }

    /// A verified packet newer than any before came from `port`.
    #[cold]
    pub fn rebind(&self, port: u16) {
        self.port.store(port, Relaxed);
        self.rebinds.fetch_add(1, Relaxed);
    }

    /// How many times the port changed.
    pub fn rebinds(&self) -> u64 {
        self.rebinds.load(Relaxed)
    }
}

impl Default for PeerPort {
    fn default() -> PeerPort {
        PeerPort::new()
    }
}

/// Why one of a secure wire's inbound packets was dropped.
#[derive(Debug, Clone, Copy)]
pub enum InboundDrop {
    /// Its ICV did not verify.
    AuthFailed = 0,
    /// Received before, or below the window.
    Replayed = 1,
    /// From an address that is not the peer's.
    WrongPeer = 2,
}

impl SecureSa {
    /// Counts a dropped inbound packet of this wire.
    #[cold]
    pub fn count(&self, why: InboundDrop) {
        self.drops[why as usize].fetch_add(1, Relaxed);
    }

    /// The inbound drops, by [`InboundDrop`].
    pub fn drops(&self) -> [u64; 3] {
        self.drops.each_ref().map(|d| d.load(Relaxed))
    }
}

impl std::fmt::Debug for SecureSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureSa")
            .field("wire", &self.wire)
            .field("port", &self.port.get())
            .field("out", &self.out)
            .field("in", &self.inb)
            .field("window", &self.window)
            .finish()
    }
}

impl SecureSa {
    /// The SAs of `keys` for wire `wire` to `peer`, the outbound sending
    /// from `out_floor + 1` and the inbound taking only numbers above
    /// `in_floor` (both 0 for a new wire). Keys must have been checked.
    pub fn new(
        wire: u32,
        peer: Ipv4Addr,
        keys: &SecureKeys,
        out_floor: u64,
        in_floor: u64,
    ) -> Result<SecureSa, String> {
        let out_key = Keymat::from_hex(&keys.out_key).map_err(|e| format!("the out key: {e}"))?;
        let in_key = Keymat::from_hex(&keys.in_key).map_err(|e| format!("the in key: {e}"))?;
        if out_floor > MAX_FLOOR || in_floor > MAX_FLOOR {
            return Err("its sequence numbers are used up: connect it anew with new keys".into());
        }
        let first = out_floor + 1;
        Ok(SecureSa {
            wire,
            peer,
            port: Arc::new(PeerPort::new()),
            out: SharedOutbound::new(keys.out_spi, &out_key, first, first + SEQ_CHUNK - 1),
            inb: OpenKey::new(keys.in_spi, &in_key),
            window: SharedWindow::starting_at(in_floor),
            bits: out_key.bits() as u32,
            drops: Default::default(),
        })
    }
}

impl SecureSa {
    /// The SA of a loopback wire under `--force-encap secure[-vxlan]`
    /// (benchmark aid): this fabric seals the wire's forward direction and
    /// opens it again when the uplink returns it, so one SA is both the
    /// outbound and the inbound one: SPI `spi`, a random 128-bit key that
    /// never leaves the process, from and to our own VTEP. Its sequence
    /// numbers need no saved floor (the key dies with the process), so its
    /// limit is the end of the sequence space.
    pub fn loop_bench(wire: u32, vtep: Ipv4Addr, spi: u32) -> Result<SecureSa, String> {
        let key = Keymat::generate(128).map_err(|e| format!("a loop SA's key: {e}"))?;
        Ok(SecureSa {
            wire,
            peer: vtep,
            port: Arc::new(PeerPort::new()),
            out: SharedOutbound::new(spi, &key, 1, MAX_FLOOR),
            inb: OpenKey::new(spi, &key),
            window: SharedWindow::starting_at(0),
            bits: key.bits() as u32,
            drops: Default::default(),
        })
    }

    /// The same SAs, following the far end's port with `other` (the wire's
    /// current SAs, for the SAs of its rekey).
    pub fn sharing_port_of(self, other: &SecureSa) -> SecureSa {
        SecureSa { port: other.port.clone(), ..self }
    }
}

/// The names of a wire's two keys kept in the state file (never the keys):
/// (out, in). Refused if both directions have the same key (a nonce would
/// repeat: each direction's sequence numbers start at 1).
pub fn fingerprints(keys: &SecureKeys) -> Result<(String, String), String> {
    let out = Keymat::from_hex(&keys.out_key).map_err(|e| format!("the out key: {e}"))?;
    let inb = Keymat::from_hex(&keys.in_key).map_err(|e| format!("the in key: {e}"))?;
    if out == inb {
        return Err("out and in keys are the same: each direction needs its own".into());
    }
    Ok((out.fingerprint(), inb.fingerprint()))
}

/// The highest floor a restored SA may start from: room for a few chunks
/// before the 64-bit sequence numbers run out.
pub const MAX_FLOOR: u64 = u64::MAX - 4 * SEQ_CHUNK;

/// The SAs of every secure wire, by wire and by inbound SPI.
///
/// A wire being rekeyed has up to three SA pairs at once, each in
/// `by_spi` under its inbound SPI: the current one (`by_wire`, which the
/// workers seal with), the new one waiting to take over (`pending`: it
/// already opens what the far end seals with the new keys), and, after
/// the switch, the old one (`old`: it still opens what the far end sealed
/// with the old keys until it switched too).
#[derive(Debug, Default, Clone)]
pub struct SecureTable {
    by_wire: hashbrown::HashMap<u32, Arc<SecureSa>>,
    by_spi: hashbrown::HashMap<u32, Arc<SecureSa>>,
    pending: hashbrown::HashMap<u32, Arc<SecureSa>>,
    old: hashbrown::HashMap<u32, Arc<SecureSa>>,
}

impl SecureTable {
    /// This table with `sa` added (replacing all of its wire's).
    pub fn with(&self, sa: Arc<SecureSa>) -> SecureTable {
        let mut t = self.without(sa.wire);
        t.by_spi.insert(sa.inb.spi(), sa.clone());
        t.by_wire.insert(sa.wire, sa);
        t
    }

    /// This table without wire `wire`'s SAs (current, pending and old).
    pub fn without(&self, wire: u32) -> SecureTable {
        let mut t = self.clone();
        for map in [&mut t.by_wire, &mut t.pending, &mut t.old] {
            if let Some(sa) = map.remove(&wire) {
                t.by_spi.remove(&sa.inb.spi());
            }
        }
        t
    }

    /// This table with `sa` waiting to replace its wire's current SAs: its
    /// inbound SA opens packets already; the workers still seal with the
    /// current ones. A previous rekey's old SAs go.
    pub fn with_pending(&self, sa: Arc<SecureSa>) -> SecureTable {
        let mut t = self.without_old(sa.wire);
        if let Some(p) = t.pending.remove(&sa.wire) {
            t.by_spi.remove(&p.inb.spi());
        }
        t.by_spi.insert(sa.inb.spi(), sa.clone());
        t.pending.insert(sa.wire, sa);
        t
    }

    /// This table with wire `wire`'s pending SAs current (the workers seal
    /// with them) and its current ones old (their inbound SA still opens).
    pub fn switched(&self, wire: u32) -> SecureTable {
        let mut t = self.without_old(wire);
        if let Some(p) = t.pending.remove(&wire) {
            if let Some(cur) = t.by_wire.insert(wire, p) {
                t.old.insert(wire, cur);
            }
        }
        t
    }

    /// This table without wire `wire`'s old SAs.
    pub fn without_old(&self, wire: u32) -> SecureTable {
        let mut t = self.clone();
        if let Some(o) = t.old.remove(&wire) {
            t.by_spi.remove(&o.inb.spi());
        }
        t
    }

    /// Wire `wire`'s SAs.
    #[inline(always)]
    pub fn by_wire(&self, wire: u32) -> Option<&Arc<SecureSa>> {
        self.by_wire.get(&wire)
    }

    /// The SAs whose inbound SPI is `spi`.
    #[inline(always)]
    pub fn by_spi(&self, spi: u32) -> Option<&Arc<SecureSa>> {
        self.by_spi.get(&spi)
    }

    /// Wire `wire`'s SAs waiting to become current (a rekey).
    pub fn pending(&self, wire: u32) -> Option<&Arc<SecureSa>> {
        self.pending.get(&wire)
    }

    /// Wire `wire`'s previous SAs, kept after a rekey for their inbound SA.
    pub fn old(&self, wire: u32) -> Option<&Arc<SecureSa>> {
        self.old.get(&wire)
    }

    /// Every secure wire's current SAs.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<SecureSa>> {
        self.by_wire.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(out_spi: u32, in_spi: u32) -> SecureKeys {
        SecureKeys {
            out_spi,
            out_key: "0x0123456789abcdef0123456789abcdef01020304".into(),
            in_spi,
            in_key: "0x1123456789abcdef0123456789abcdef01020304".into(),
            lifetime: None,
        }
    }

    #[test]
    fn the_table_finds_sas_by_wire_and_spi_and_forgets_replaced_ones() {
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let a = Arc::new(SecureSa::new(7, peer, &keys(0x1001, 0x2002), 0, 0).unwrap());
        let t = SecureTable::default().with(a);
        assert_eq!(t.by_wire(7).map(|s| s.out.key().spi()), Some(0x1001));
        assert_eq!(t.by_spi(0x2002).map(|s| s.wire), Some(7));
        let b = Arc::new(SecureSa::new(7, peer, &keys(0x1003, 0x2004), 0, 0).unwrap());
        let u = t.with(b);
        assert!(u.by_spi(0x2002).is_none(), "the old inbound SPI is gone");
        assert_eq!(u.by_spi(0x2004).map(|s| s.wire), Some(7));
        assert!(u.without(7).by_wire(7).is_none() && u.without(7).by_spi(0x2004).is_none());
        assert_eq!(t.by_spi(0x2002).map(|s| s.wire), Some(7), "the old table is unchanged");
    }

    #[test]
    fn a_rekeys_sas_follow_the_far_ends_nat_port_with_the_current_ones() {
        let peer = Ipv4Addr::new(10, 0, 0, 254);
        let a = SecureSa::new(7, peer, &keys(0x1001, 0x2002), 0, 0).unwrap();
        assert_eq!((a.port.get(), a.port.rebinds()), (4500, 0), "4500 until a NAT maps it elsewhere");
        let b = SecureSa::new(7, peer, &keys(0x1003, 0x2004), 0, 0).unwrap().sharing_port_of(&a);
        let c = SecureSa::new(7, peer, &keys(0x1005, 0x2006), 0, 0).unwrap();
        b.port.rebind(20001);
        assert_eq!((a.port.get(), a.port.rebinds()), (20001, 1), "the rekey's SA learned it for the wire");
        assert_eq!(c.port.get(), 4500, "another wire's port is its own");
    }

    #[test]
    fn a_rekey_opens_with_old_and_new_inbound_sas_and_seals_with_the_current_one() {
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let a = Arc::new(SecureSa::new(7, peer, &keys(0x1001, 0x2002), 0, 0).unwrap());
        let t = SecureTable::default().with(a);
        // Waiting: both inbound SPIs open, the old outbound SA seals.
        let p = t.with_pending(Arc::new(SecureSa::new(7, peer, &keys(0x1003, 0x2004), 0, 0).unwrap()));
        assert_eq!(p.by_wire(7).map(|s| s.out.key().spi()), Some(0x1001));
        assert_eq!((p.by_spi(0x2002).is_some(), p.by_spi(0x2004).is_some()), (true, true));
        assert_eq!(p.pending(7).map(|s| s.inb.spi()), Some(0x2004));
        // Switched: the new outbound SA seals, the old inbound one still opens.
        let s = p.switched(7);
        assert_eq!(s.by_wire(7).map(|s| s.out.key().spi()), Some(0x1003));
        assert!(s.pending(7).is_none());
        assert_eq!(s.old(7).map(|s| s.inb.spi()), Some(0x2002));
        assert_eq!((s.by_spi(0x2002).is_some(), s.by_spi(0x2004).is_some()), (true, true));
        // The old one retired; a disconnect takes every SA of the wire.
        let r = s.without_old(7);
        assert!(r.by_spi(0x2002).is_none() && r.by_spi(0x2004).is_some() && r.old(7).is_none());
        let gone = p.without(7);
        assert!(gone.by_spi(0x2002).is_none() && gone.by_spi(0x2004).is_none() && gone.pending(7).is_none());
        // A second rekey drops the first one's old SAs.
        let again = s.with_pending(Arc::new(SecureSa::new(7, peer, &keys(0x1005, 0x2006), 0, 0).unwrap()));
        assert!(again.by_spi(0x2002).is_none() && again.old(7).is_none());
        assert_eq!(again.by_wire(7).map(|s| s.out.key().spi()), Some(0x1003));
    }

    #[test]
    fn a_restored_sa_sends_above_its_floor_and_takes_only_newer_packets() {
        let sa = SecureSa::new(7, Ipv4Addr::new(10, 0, 0, 2), &keys(0x1001, 0x2002), 5000, 9000).unwrap();
        assert_eq!(sa.out.reserve(1), (5001, 1));
        assert_eq!(sa.out.limit(), 5000 + SEQ_CHUNK);
        assert!(sa.window.check(9000).is_err() && sa.window.check(8000).is_err());
        assert!(sa.window.check(9001).is_ok());
        assert!(!format!("{sa:?}").contains("0123456789"), "no key in Debug");
    }
}
