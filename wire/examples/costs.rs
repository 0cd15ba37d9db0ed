//! Per-call cost of the data path's pure functions, with everything in
//! cache: `cargo run --release -p vw-wire --example costs`.
//!
//! Used by docs/perf.md to say where the fabric's encap+decap cycles go.
//! Pin it to one CPU (`taskset -c 1`) on a quiet machine.

use std::hint::black_box;
use std::time::Instant;
use vw_wire::underlay::{build_tunnel_frame, classify, Underlay, UnderlayConfig};
use vw_wire::{encap::source_port, flow::flow_hash, ConnectorId, Encap, EncapTemplate, MacAddr};

const N: u64 = 50_000_000;

fn per_call(name: &str, mut f: impl FnMut(u64) -> u64) {
    let mut acc = 0u64;
    let t = Instant::now();
    for i in 0..N {
        acc = acc.wrapping_add(f(i));
    }
    let ns = t.elapsed().as_nanos() as f64 / N as f64;
    println!("{name:<34} {ns:6.2} ns per call   ({})", acc & 1);
}

fn main() {
    let ours = MacAddr([2, 0, 0, 0, 0, 1]);
    let tmpl = EncapTemplate::new(
        Encap::Vwire,
        ConnectorId(7),
        MacAddr([2, 0, 0, 0, 0, 2]),
        ours,
        [10, 0, 0, 2].into(),
        [10, 0, 0, 1].into(),
        4795,
        1500,
    );
    // A 64-byte inner frame: Ethernet, IPv4 (no options), UDP.
    let mut inner = vec![0u8; 64];
    inner[12] = 0x08;
    inner[14] = 0x45;
    inner[23] = 17;
    let frame = build_tunnel_frame(&tmpl, &inner, 50000);
    let cfg = UnderlayConfig {
        vtep_ip: [10, 0, 0, 1].into(),
        mac: ours,
        vwire_port: 4795,
        vxlan_port: 4789,
        migration_port: 4796,
    };
    let mut hdr = [0u8; 46];

    per_call("flow_hash (inner IPv4/UDP)", |_| flow_hash(black_box(&inner)) as u64);
    per_call("EncapTemplate::write (vwire)", |i| {
        tmpl.write(black_box(&mut hdr), black_box(64), source_port(i as u32));
        hdr[17] as u64
    });
    per_call("classify (valid vwire frame)", |_| match classify(black_box(&frame), black_box(frame.len()), &cfg) {
        Ok(Underlay::Tunnel(d)) => d.inner_len as u64,
        _ => 0,
    });
}
