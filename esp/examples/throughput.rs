//! Seal and open throughput of one core, in place, per payload size:
//! `cargo run --release -p vw-esp --example throughput [SECONDS]`.
//! Prints Gb/s of payload (the tunnel datagram) sealed and opened; the
//! open figures include copying the sealed packet back before each open.

use std::time::{Duration, Instant};
use vw_esp::{Keymat, OpenKey, SealKey, SharedWindow, HEADER_LEN, MAX_TRAILER_LEN};

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let span = Duration::from_secs_f64(secs);
    println!("| key bits | payload B | seal Gb/s | seal Mpps | open Gb/s | open Mpps |");
    println!("|---|---|---|---|---|---|");
    for bits in [128, 256] {
        let k = Keymat::generate(bits).expect("key");
        let (seal, open) = (SealKey::new(0x1001, &k), OpenKey::new(0x1001, &k));
        for len in [64usize, 512, 1500] {
            let mut buf = vec![0u8; HEADER_LEN + len + MAX_TRAILER_LEN];
            let (mut n, t) = (0u64, Instant::now());
            while t.elapsed() < span {
                for _ in 0..256 {
                    n += 1;
                    std::hint::black_box(seal.seal(n, &mut buf, len, 17).expect("seal"));
                }
            }
            let seal_s = t.elapsed().as_secs_f64();
            let total = seal.seal(1, &mut buf, len, 17).expect("seal");
            let pkt = buf[..total].to_vec();
            let (mut m, t) = (0u64, Instant::now());
            while t.elapsed() < span {
                for _ in 0..256 {
                    buf[..total].copy_from_slice(&pkt);
                    // The same packet each time, with a fresh window: the
                    // work of a new packet.
                    let w = SharedWindow::new();
                    let mut wr = &w;
                    std::hint::black_box(open.open(&mut buf[..total], &mut wr).expect("open"));
                    m += 1;
                }
            }
            let open_s = t.elapsed().as_secs_f64();
            let g = |pkts: u64, s: f64| pkts as f64 * len as f64 * 8.0 / s / 1e9;
            println!(
                "| {bits} | {len} | {:.2} | {:.2} | {:.2} | {:.2} |",
                g(n, seal_s),
                n as f64 / seal_s / 1e6,
                g(m, open_s),
                m as f64 / open_s / 1e6
            );
        }
    }
}
