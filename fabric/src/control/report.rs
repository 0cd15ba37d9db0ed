//! What the control plane reports: `status`, `endpoint list`, `wire list`
//! and `stats`, from the committed state, the devices and the workers'
//! counters. Nothing here changes anything.

use super::{encap_name, Control, Device};
use crate::snapshot::PortIndex;
use crate::stats::{drop_name, FabricDrop, Handled, PortTotals, WireTotals, DROP_REASONS};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;
use vw_core::exchange::Refused;
use vw_core::migrate::Departed;
use vw_ctl::proto;
use vw_pmd::{port, PortId};
use vw_wire::table::Peer;
use vw_wire::ConnectorId;

impl Control {
    /// A slot's counters since its wire was connected.
    fn slot_totals(&self, slot: u32) -> WireTotals {
        self.wire_totals(slot).since(&self.wire_bases[slot as usize])
    }

    pub(super) fn wire_totals(&self, slot: u32) -> WireTotals {
        let mut t = WireTotals::default();
        for w in &self.workers {
            let x = w.stats.wire(slot);
            for d in 0..2 {
                t.frames[d] += x.frames[d];
                t.bytes[d] += x.bytes[d];
            }
            t.dropped += x.dropped;
            t.forwarded += x.forwarded;
        }
        t
    }

    fn link_up(p: PortId) -> bool {
        port::link(p).map(|l| l.up).unwrap_or(false)
    }

    /// An endpoint's MTU: its port's, or what its VM said (0: not known).
    pub(super) fn endpoint_mtu(&self, name: &str) -> u16 {
        let Some(ep) = self.state.endpoint(name) else { return 0 };
        match self.ports[ep.ix.ix()].as_ref().map(|p| &p.dev) {
            Some(Device::Eth { port, .. }) => port::mtu(*port).unwrap_or(0),
            Some(Device::Vhost(v)) => v.port().state().mtu,
            None => 0,
        }
    }

    /// What wire `id` carries, and what does not fit it.
    pub(super) fn wire_mtu(&self, id: ConnectorId) -> (Option<u16>, Option<String>) {
        let Some(w) = self.state.table().wire(id) else { return (None, None) };
        let mtu = self.endpoint_mtu(&w.endpoint);
        // A vhost-user endpoint whose VM has not come yet has not said its
        // MTU: nothing to judge until it does.
        let waiting = self
            .state
            .endpoint(&w.endpoint)
            .is_some_and(|e| matches!(e.kind, vw_core::EndpointKind::Vhost { .. }) && !e.link.up);
        match &w.peer {
            Peer::Local(b) => (None, vw_core::mtu::mismatch(&w.endpoint, mtu, None, Some((b, self.endpoint_mtu(b))))),
            Peer::Remote { encap, .. } => {
                let Some(u) = &self.uplink else { return (None, None) };
                let max = vw_core::mtu::encap_carries(*encap, u.mtu);
                (Some(max), vw_core::mtu::mismatch(&w.endpoint, mtu, Some(max), None).filter(|_| !waiting))
            }
        }
    }

    pub(super) fn endpoint_info(&self, name: &str) -> proto::EndpointInfo {
        let ep = self.state.endpoint(name).expect("endpoint_info is called for existing endpoints");
        let port = self.ports[ep.ix.ix()].as_ref();
        let (device, driver, mac, link_up, mtu, link_changes) = match port.map(|p| &p.dev) {
            Some(Device::Eth { port, info, mac, .. }) => (
                info.name.clone(),
                info.driver.clone(),
                mac.to_string(),
                Self::link_up(*port),
                port::mtu(*port).unwrap_or(0),
                0,
            ),
            Some(Device::Vhost(v)) => {
                let vs = v.port().state();
                let shown = port.map(|p| p.shown.clone()).unwrap_or_default();
                (shown, "vhost-user".to_owned(), String::new(), vs.up, vs.mtu, vs.link_changes)
            }
            None => (String::new(), String::new(), String::new(), false, 0, 0),
        };
        proto::EndpointInfo {
            name: name.to_owned(),
            spec: ep.spec.clone(),
            port: ep.ix.0,
            device,
            driver,
            mac,
            link_up,
            mtu,
            rx_queues: ep.queues(),
            tx_queues: self.current.ports.get(ep.ix.ix()).map_or(0, |p| p.txq),
            link_changes,
            wire: self.state.table().wire_of(name).map(|w| w.id.0),
            rx_workers: self
                .state
                .rxqs()
                .of(ep.ix)
                .map(|(queue, r)| proto::RxqPlace { queue, worker: r.worker, frames_per_s: r.load })
                .collect(),
            group: port.is_some_and(|p| p.origin.group_may_use()),
        }
    }

    pub(super) fn endpoint_list(&self) -> Vec<proto::EndpointInfo> {
        self.state.endpoints().map(|(n, _)| self.endpoint_info(n)).collect()
    }

    pub(super) fn wire_info(&self, id: ConnectorId) -> proto::WireInfo {
        let w = self.state.table().wire(id).expect("wire_info is called for existing wires");
        let totals = self.state.slot(id).map(|s| self.slot_totals(s)).unwrap_or_default();
        // Link state is reported per endpoint (`endpoint list`), not here: a
        // net_tap port reports "down" once its interface moves to another
        // namespace, though it carries traffic.
        let (peer, encap, state) = match &w.peer {
            Peer::Local(b) => (b.clone(), None, "up"),
            Peer::Remote { vtep, encap } => {
                let resolved = self.state.next_hop_mac(*vtep).is_some();
                (vtep.to_string(), Some(encap_name(*encap)), if resolved { "up" } else { "resolving" })
            }
        };
        let (carries_mtu, mtu_warning) = self.wire_mtu(id);
        proto::WireInfo {
            carries_mtu,
            mtu_warning,
            wire: id.0,
            kind: w.kind().name().to_owned(),
            endpoint: w.endpoint.clone(),
            peer,
            encap,
            state: self.with_holds(id, state),
            forward: proto::FlowCounters { frames: totals.frames[0], bytes: totals.bytes[0] },
            reverse: proto::FlowCounters { frames: totals.frames[1], bytes: totals.bytes[1] },
            dropped: totals.dropped + self.secure.by_wire(id.0).map_or(0, |sa| sa.drops().iter().sum()),
            migration: self.mig.as_ref().map(|_| self.wire_migration(id, totals.forwarded, None)),
            ends: self.directory_ends(id.0),
            secure: self.secure_info(id),
        }
    }

    /// A wire's state with its holds, e.g. `up, holding 12 (vm_stopped)`.
    fn with_holds(&self, id: ConnectorId, state: &str) -> String {
        let mut s = state.to_owned();
        for (at, h) in self.state.holds().filter(|(_, h)| h.wire == id) {
            let what = if h.released { "releasing" } else { "holding" };
            s.push_str(&format!(", {what} {} ({})", self.held_now(at), h.reason.name()));
        }
        s
    }

    fn wire_migration(&self, id: ConnectorId, forwarded: u64, departed: Option<&Departed>) -> proto::WireMigration {
        let now = Instant::now();
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        let m = self.state.wire_move(id).cloned().unwrap_or_default();
        let grace = [m.old.map(|o| o.2), m.arrival_until, departed.map(|d| d.until)]
            .into_iter()
            .flatten()
            .map(left)
            .max()
            .unwrap_or(0);
        proto::WireMigration {
            moves: m.moves,
            last_move_ms: m.last_move_ms,
            last_move_us: m.last_move_us,
            forwarded,
            previous_host: m.old.map(|o| o.0.to_string()),
            moved_to: departed.map(|d| d.to.to_string()),
            grace_left_ms: grace,
        }
    }

    /// An end that left, in its grace period, as a `wire list` row.
    fn departed_info(&self, id: ConnectorId, d: &Departed, slot: u32) -> proto::WireInfo {
        let totals = self.slot_totals(slot);
        let (peer, encap) = match &d.peer {
            Peer::Local(b) => (b.clone(), None),
            Peer::Remote { vtep, encap } => (vtep.to_string(), Some(encap_name(*encap))),
        };
        proto::WireInfo {
            wire: id.0,
            kind: "moved".into(),
            endpoint: d.endpoint.clone(),
            peer,
            encap,
            state: self.with_holds(id, &format!("forwarding to {}", d.to)),
            forward: proto::FlowCounters { frames: totals.frames[0], bytes: totals.bytes[0] },
            reverse: proto::FlowCounters { frames: totals.frames[1], bytes: totals.bytes[1] },
            dropped: totals.dropped,
            migration: Some(self.wire_migration(id, totals.forwarded, Some(d))),
            carries_mtu: None,
            mtu_warning: None,
            secure: None,
            ends: Vec::new(),
        }
    }

    /// A connect waiting for `endpoint`'s VM (`connect --incoming`).
    pub(super) fn incoming_info(&self, endpoint: &str) -> proto::WireInfo {
        let p = &self.incoming[endpoint];
        let remote = p.peer.parse::<std::net::Ipv4Addr>().is_ok();
        proto::WireInfo::idle(
            p.wire.0,
            if remote { "encap" } else { "loopback" },
            endpoint,
            &p.peer,
            if remote { Some(p.encap.unwrap_or_default()) } else { None },
            "incoming".to_owned(),
        )
    }

    pub(super) fn wire_list(&self) -> Vec<proto::WireInfo> {
        let mut v: Vec<proto::WireInfo> = self.state.table().wires().map(|w| self.wire_info(w.id)).collect();
        v.extend(self.incoming.keys().map(|e| self.incoming_info(e)));
        v.extend(self.directory_only_wires());
        for (id, (d, slot)) in self.state.departures() {
            // A loopback wire's departed end shares the wire's row.
            if matches!(d.peer, Peer::Remote { .. }) {
                v.push(self.departed_info(*id, d, *slot));
            }
        }
        v
    }

    fn mempool(&self) -> proto::MempoolInfo {
        proto::MempoolInfo { size: self.pool.size(), in_use: self.pool.in_use() }
    }

    pub(super) fn status(&self) -> proto::Status {
        proto::Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            socket: self.settings.socket.clone(),
            workers: self.workers.iter().map(|w| proto::WorkerInfo { index: w.index, lcore: w.lcore }).collect(),
            uplink: self.uplink.as_ref().map(|u| proto::UplinkStatus {
                devargs: u.devargs.clone(),
                port: u.port.0,
                mac: u.mac.to_string(),
                vtep: format!("{}/{}", u.vtep, u.prefix),
                gateway: u.gateway.map(|g| g.to_string()),
                mtu: u.mtu,
                vwire_port: u.vwire_port,
                vxlan_port: u.vxlan_port,
                link_up: Self::link_up(u.port),
                public_address: self.settings.public_address.map(|a| a.to_string()),
                nat_keepalive_s: self.settings.nat_keepalive.map_or(0, |d| d.as_secs()),
            }),
            neighbours: self
                .state
                .neighbours()
                .view()
                .into_iter()
                .map(|n| proto::NeighbourInfo {
                    ip: n.ip.to_string(),
                    mac: n.mac.map(|m| m.to_string()),
                    state: n.state.name().to_owned(),
                    requests: n.requests,
                    wires: n.users,
                })
                .collect(),
            endpoints: self.state.endpoint_count(),
            wires: self.state.table().wire_count(),
            mempool: self.mempool(),
            idle_sleep_us: self.settings.idle_sleep_us,
            directory: self.directory_status(),
            mtu_warnings: self
                .state
                .table()
                .wires()
                .filter_map(|w| self.wire_mtu(w.id).1.map(|m| format!("wire {}: {m}", w.id.0)))
                .collect(),
            unrestored: self
                .unrestored
                .endpoints
                .iter()
                .filter(|e| self.state.endpoint(&e.name).is_none())
                .map(|e| format!("endpoint {}", e.name))
                .chain(
                    self.unrestored
                        .wires
                        .iter()
                        .filter(|w| self.state.table().wire(ConnectorId(w.wire)).is_none())
                        .map(|w| format!("wire {}", w.wire)),
                )
                .chain(
                    self.unrestored
                        .incoming
                        .iter()
                        .filter(|i| !self.incoming.contains_key(&i.endpoint))
                        .map(|i| format!("wire {} (armed for {})", i.wire, i.endpoint)),
                )
                .collect(),
        }
    }

    /// A port's counters: the device's own for an ethdev, the workers' for a
    /// vhost-user device (librte_vhost keeps none unless asked to, at a cost).
    fn port_counters(&self, name: &str, ix: PortIndex, eth: Option<PortId>, base: &PortTotals) -> proto::PortCounters {
        let t = self.port_totals(ix).since(base);
        let mut c = proto::PortCounters {
            name: name.to_owned(),
            port: ix.0,
            rx_packets: t.rx_frames,
            rx_bytes: t.rx_bytes,
            tx_packets: t.tx_frames,
            tx_bytes: t.tx_bytes,
            rx_missed: 0,
            rx_errors: 0,
            rx_nombuf: 0,
            tx_errors: 0,
            tx_dropped: t.tx_dropped,
        };
        if let Some(p) = eth {
            let s = port::stats(p).unwrap_or_default();
            c.rx_packets = s.ipackets;
            c.rx_bytes = s.ibytes;
            c.tx_packets = s.opackets;
            c.tx_bytes = s.obytes;
            c.rx_missed = s.imissed;
            c.rx_errors = s.ierrors;
            c.rx_nombuf = s.rx_nombuf;
            c.tx_errors = s.oerrors;
        }
        c
    }

    pub(super) fn stats(&self) -> proto::Stats {
        let mut ports = Vec::new();
        if let Some(u) = &self.uplink {
            ports.push(self.port_counters("uplink", PortIndex::UPLINK, Some(u.port), &PortTotals::default()));
        }
        for (n, e) in self.state.endpoints() {
            let Some(p) = &self.ports[e.ix.ix()] else { continue };
            let eth = match &p.dev {
                Device::Eth { port, .. } => Some(*port),
                Device::Vhost(_) => None,
            };
            ports.push(self.port_counters(n, e.ix, eth, &p.base));
        }
        let mut drops: BTreeMap<String, u64> = (0..DROP_REASONS).map(|i| (drop_name(i).to_owned(), 0)).collect();
        let mut handled: BTreeMap<String, u64> = Handled::ALL.iter().map(|h| (h.name().to_owned(), 0)).collect();
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let s = &w.stats;
                let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                let mut wd = BTreeMap::new();
                for i in 0..DROP_REASONS {
                    let v = ld(&s.drops[i]);
                    *drops.get_mut(drop_name(i)).expect("every reason is listed") += v;
                    if v != 0 {
                        wd.insert(drop_name(i).to_owned(), v);
                    }
                }
                let mut wh = BTreeMap::new();
                for h in Handled::ALL {
                    let v = ld(&s.handled[h as usize]);
                    *handled.get_mut(h.name()).expect("every kind is listed") += v;
                    if v != 0 {
                        wh.insert(h.name().to_owned(), v);
                    }
                }
                proto::WorkerCounters {
                    index: w.index,
                    lcore: w.lcore,
                    polls: ld(&s.polls),
                    busy_polls: ld(&s.busy_polls),
                    sleeps: ld(&s.sleeps),
                    rx_frames: ld(&s.rx_frames),
                    tx_frames: ld(&s.tx_frames),
                    config_updates: ld(&s.config_updates),
                    handled: wh,
                    drops: wd,
                }
            })
            .collect();
        *drops.get_mut(FabricDrop::EndpointRemoved.name()).expect("every reason is listed") += self.removed_in_flight;
        *drops.get_mut(FabricDrop::HoldExpired.name()).expect("every reason is listed") += self.hold_expired();
        // Frames the uplink's device refused before any worker saw them
        // (longer than its MTU, bad FCS) or had no descriptor for.
        if let Some(u) = &self.uplink {
            let s = port::stats(u.port).unwrap_or_default();
            drops.insert("uplink_rx_errors".to_owned(), s.ierrors);
            drops.insert("uplink_rx_missed".to_owned(), s.imissed + s.rx_nombuf);
        }
        let control_frames_sent =
            self.workers.iter().map(|w| w.stats.control_frames_sent.load(Ordering::Relaxed)).sum();
        let migration = self.mig.as_ref().map(|ch| {
            let live: u64 = self
                .state
                .departures()
                .filter(|(_, (d, _))| matches!(d.peer, Peer::Remote { .. }))
                .map(|(_, (_, slot))| self.slot_totals(*slot).forwarded)
                .chain(
                    self.state
                        .table()
                        .wires()
                        .filter_map(|w| self.state.slot(w.id))
                        .map(|s| self.slot_totals(s).forwarded),
                )
                .sum();
            proto::MigrationStats {
                port: ch.settings.port,
                grace_ms: ch.settings.grace.as_millis() as u64,
                sent: ch.sent,
                received: ch.received,
                accepted: ch.accepted,
                refused: Refused::ALL.iter().map(|r| (r.name().to_owned(), ch.refused[*r as usize])).collect(),
                pending: ch.pending.len(),
                unsent: ch.unsent,
                forwarded: ch.forwarded_before + live,
                stray_wait_last_us: self
                    .workers
                    .iter()
                    .map(|w| w.stats.stray_wait_last_us.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0),
            }
        });
        proto::Stats {
            ports,
            wires: self.wire_list(),
            workers,
            drops,
            handled,
            control_frames_sent,
            nat_keepalives_sent: self.keepalive.count,
            mempool: self.mempool(),
            migration,
        }
    }
}
