//! `vwperf`: a testpmd-style traffic tool for VirtualWire endpoints.
//!
//! It attaches as the VM side to fabric endpoints (a virtio_user port on
//! each vhost-user socket) or to any DPDK device, and runs one of:
//! * `pair` (the usual run): port 0 sends, port 1 receives (`--bidir`: both
//!   ways), counting loss, reordering and duplicates per flow;
//! * `txonly` / `rxonly`: every port sends / receives;
//! * `latency`: like `pair`, with a TSC timestamp in every frame and an
//!   HdrHistogram of one-way latency (both ports are in this process, so
//!   one clock);
//! * `io`: forwards between ports 0 and 1 unchanged, like testpmd's io mode
//!   (a "VM" that bridges a virtio_user port to a net_tap port, say).
//!
//! Traffic runs on the second lcore; the main lcore prints a line per
//! second and the summary. `--ndr`/`--pdr PCT` search the highest rate with
//! loss at or under a threshold (RFC 2544 style).
#![forbid(unsafe_code)]

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vw_perf::frame::{parse, SeqTracker, SizePattern, Template};
use vw_perf::report::{Latency, Search, Summary};
use vw_pmd::{port, time, Burst, Eal, Mempool, PortConfig, PortId, BURST_SIZE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Port 0 sends, port 1 receives (both ways with --bidir).
    Pair,
    /// Every port sends.
    Txonly,
    /// Every port receives and counts.
    Rxonly,
    /// Like pair, with one-way latency of every frame.
    Latency,
    /// Forward between ports 0 and 1 unchanged (testpmd io).
    Io,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pair => "pair",
            Mode::Txonly => "txonly",
            Mode::Rxonly => "rxonly",
            Mode::Latency => "latency",
            Mode::Io => "io",
        }
    }
}

/// A rate in frames per second, or `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate(Option<f64>);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate(None));
        }
        let (num, mult) = match s.chars().last() {
            Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
            Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
            Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
            _ => (s, 1.0),
        };
        let v: f64 = num.parse().map_err(|_| format!("{s:?}: frames per second (e.g. 500k, 2.5M) or `max`"))?;
        if v.is_nan() || v <= 0.0 {
            return Err(format!("rate {s} must be positive"));
        }
        Ok(Rate(Some(v * mult)))
    }
}

const AFTER_HELP: &str = "Examples:
  # the VM side of two fabric endpoints: send on vm1, receive on vm2, 10 s, 64-byte frames
  vwperf --vhost-user /run/vm1.sock --vhost-user /run/vm2.sock -- --lcores 0@0,1@0 --file-prefix perf
  # latency at 1 Mpps, IMIX, 256 flows
  vwperf --mode latency --rate 1M --size imix --flows 256 --vhost-user A --vhost-user B -- ...
  # highest rate with no loss
  vwperf --ndr --duration 3 --vhost-user A --vhost-user B -- ...
Rates count frames per transmitting port. Bit rates count frame bytes without
FCS, preamble or gap (as testpmd's Rx-bps).";

/// Traffic generator, sink and forwarder for VirtualWire endpoints.
#[derive(Parser, Debug)]
#[command(name = "vwperf", version, after_help = AFTER_HELP)]
struct Args {
    /// Attach a virtio_user port to this vhost-user socket (repeatable; ports in order).
    #[arg(long, value_name = "PATH")]
    vhost_user: Vec<String>,
    /// The virtio_user ports listen on their sockets (for fabric endpoints
    /// added with --client) instead of connecting.
    #[arg(long)]
    server: bool,
    /// Attach any DPDK device (repeatable; after the vhost-user ports).
    #[arg(long, value_name = "DEVARGS")]
    port: Vec<String>,
    /// Queues per port.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// What to do.
    #[arg(long, value_enum, default_value_t = Mode::Pair)]
    mode: Mode,
    /// In pair and latency mode, send both ways.
    #[arg(long)]
    bidir: bool,
    /// Frame size in bytes without FCS (64-9000), or `imix` (64/570/1518 as 7:4:1).
    #[arg(long, default_value = "64")]
    size: SizePattern,
    /// Flows (UDP source ports 1024...) per sending port.
    #[arg(long, default_value_t = 1)]
    flows: u16,
    /// Frames per second per sending port, or `max`.
    #[arg(long, default_value = "max")]
    rate: Rate,
    /// Seconds to measure (0: until Ctrl-C). Per trial in a search.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Search the highest rate without loss (RFC 2544 NDR).
    #[arg(long, conflicts_with = "pdr", group = "search")]
    ndr: bool,
    /// Search the highest rate with loss at or under PCT percent.
    #[arg(long, value_name = "PCT", group = "search")]
    pdr: Option<f64>,
    /// In a search, the most a passing trial's TX queue may refuse
    /// (backpressure), in percent of the frames offered [default: 0.1, or
    /// the --pdr loss if higher]. Raise it where the switch loses its CPU
    /// now and then (a shared VM) and refuses that much at any rate.
    #[arg(long, value_name = "PCT", requires = "search")]
    max_refused: Option<f64>,
    /// Print the result as JSON, and no progress lines.
    #[arg(long)]
    json: bool,
    /// Sleep this long when idle (io mode), to share a core.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    idle_sleep_us: u64,
    /// Mbufs in the pool.
    #[arg(long, default_value_t = 32768)]
    mbufs: u32,
    /// Receive descriptors per queue (at most 1024 on vhost-user ports, their ring size).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(32..=4096))]
    rx_desc: u16,
    /// Transmit descriptors per queue (at most 1024 on vhost-user ports): the
    /// most frames a port can have waiting for the peer. Below --rx-desc, a burst that queued up while the
    /// peer stalled always fits the receiving ring when the peer catches up.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(32..=4096))]
    tx_desc: u16,
    /// Seconds to wait for every port's link to come up.
    #[arg(long, default_value_t = 30.0)]
    link_timeout: f64,
    /// EAL arguments (after `--`). The traffic runs on the second lcore.
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal: Vec<String>,
}

/// Counters the traffic lcore writes and the main lcore reads.
#[derive(Default)]
struct Counters {
    /// Frames sent after the warm-up (the loss window).
    tx_window: AtomicU64,
    /// Frames received that were sent after the warm-up.
    rx_window: AtomicU64,
    tx: AtomicU64,
    tx_bytes: AtomicU64,
    refused: AtomicU64,
    rx: AtomicU64,
    rx_bytes: AtomicU64,
    foreign: AtomicU64,
}

#[inline(always)]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed) + n, Relaxed);
}

/// One trial's parameters.
#[derive(Clone)]
struct Trial {
    mode: Mode,
    bidir: bool,
    rate: Option<f64>,
    duration: f64,
    warmup: f64,
    idle_sleep_us: u64,
}

/// What the traffic lcore reports at the end of a trial.
#[derive(Default)]
struct TrialOut {
    window_tx: u64,
    window_rx: u64,
    window_rx_bytes: u64,
    window_secs: f64,
    reordered: u64,
    duplicated: u64,
    latency: Option<Histogram<u64>>,
}

struct Ctx {
    ports: Vec<PortId>,
    queues: u16,
    pool: Mempool,
    size: SizePattern,
    flows: u16,
    counters: Counters,
    stop: AtomicBool,
    out: Mutex<Option<TrialOut>>,
}

/// The traffic loop of one trial, on the traffic lcore.
fn traffic(ctx: &Ctx, t: &Trial) -> TrialOut {
    let hz = time::tsc_hz() as f64;
    let (tx_ports, rx_ports): (Vec<usize>, Vec<usize>) = match t.mode {
        Mode::Pair | Mode::Latency if t.bidir => (vec![0, 1], vec![0, 1]),
        Mode::Pair | Mode::Latency => (vec![0], vec![1]),
        Mode::Txonly => ((0..ctx.ports.len()).collect(), vec![]),
        Mode::Rxonly => (vec![], (0..ctx.ports.len()).collect()),
        Mode::Io => (vec![], vec![]),
    };
    let templates: Vec<Template> = ctx.size.0.iter().map(|&s| Template::new(s)).collect();
    let flows = ctx.flows.max(1) as usize;
    let mut seq = vec![vec![0u64; flows]; ctx.ports.len()];
    let mut trackers: Vec<SeqTracker> = (0..ctx.ports.len()).map(|_| SeqTracker::new(flows)).collect();
    let mut hist = (t.mode == Mode::Latency)
        .then(|| Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"));
    let interval = t.rate.map(|r| hz / r);
    let start = time::tsc();
    let warm_end = start + (t.warmup * hz) as u64;
    let tx_end = if t.duration > 0.0 { warm_end + (t.duration * hz) as u64 } else { u64::MAX };
    let mut tx_end = tx_end;
    let mut drain_end = u64::MAX;
    let mut next_tx = vec![start; ctx.ports.len()];
    // Flow f is sent on queue f % queues only (as RSS would place it), so a
    // flow's frames never race each other through different queues.
    let queues = ctx.queues as usize;
    let mut cursor: Vec<usize> = (0..queues).collect();
    let mut rr_q = vec![0usize; ctx.ports.len()];
    let mut pat = 0usize;
    let mut window: Option<(u64, u64, u64, u64)> = None;
    let mut out = TrialOut::default();
    let mut burst = Burst::new();
    let c = &ctx.counters;
    let mut idle = 0u32;
    loop {
        let now = time::tsc();
        if ctx.stop.load(Relaxed) && tx_end == u64::MAX {
            tx_end = now;
        }
        if window.is_none() && now >= warm_end {
            window = Some((c.tx.load(Relaxed), c.rx.load(Relaxed), c.rx_bytes.load(Relaxed), now));
        }
        if now >= tx_end && drain_end == u64::MAX {
            if let Some((tx0, rx0, rb0, t0)) = window {
                out.window_tx = c.tx.load(Relaxed) - tx0;
                out.window_rx = c.rx.load(Relaxed) - rx0;
                out.window_rx_bytes = c.rx_bytes.load(Relaxed) - rb0;
                out.window_secs = (now - t0) as f64 / hz;
            }
            drain_end = now + (0.3 * hz) as u64;
        }
        if now >= drain_end {
            break;
        }
        let mut busy = false;
        if now < tx_end {
            for &pi in &tx_ports {
                let n = match interval {
                    None => BURST_SIZE,
                    Some(iv) => {
                        if now < next_tx[pi] {
                            continue;
                        }
                        // Never catch up more than one burst after a stall.
                        let due = ((now - next_tx[pi]) as f64 / iv) as usize + 1;
                        let n = due.min(BURST_SIZE);
                        next_tx[pi] = if due > BURST_SIZE { now } else { next_tx[pi] + (n as f64 * iv) as u64 };
                        n
                    }
                };
                // Paced: the frames due go out on one queue, the queues in
                // turn, so --rate stays per port whatever --queues is.
                let paced_q = interval.map(|_| {
                    rr_q[pi] = (rr_q[pi] + 1) % queues;
                    rr_q[pi]
                });
                for (q, cur) in cursor.iter_mut().enumerate() {
                    if paced_q.is_some_and(|p| p != q) {
                        continue;
                    }
                    if q >= flows || !burst.alloc(&ctx.pool, n) {
                        break;
                    }
                    let mut sizes = [0u16; BURST_SIZE];
                    let mut used = [0u16; BURST_SIZE];
                    let seqs = &mut seq[pi];
                    burst.for_each_mut(|i, m| {
                        let tpl = &templates[pat];
                        pat = (pat + 1) % templates.len();
                        let flow = *cur;
                        *cur = if flow + queues < flows { flow + queues } else { q };
                        if let Some(d) = m.append(tpl.size()) {
                            tpl.write(d, flow as u16, seqs[flow], now);
                            seqs[flow] += 1;
                            sizes[i] = tpl.size() as u16;
                            used[i] = flow as u16;
                        }
                    });
                    let sent = burst.tx(ctx.ports[pi], q as u16);
                    add(&c.tx, sent as u64);
                    if now >= warm_end {
                        add(&c.tx_window, sent as u64);
                    }
                    add(&c.tx_bytes, sizes[..sent].iter().map(|&s| s as u64).sum());
                    // The queue refused the last n - sent frames: they were
                    // never sent, so give back their sequence numbers and
                    // sizes (the receiver must not see gaps).
                    for i in (sent..n).rev() {
                        seqs[used[i] as usize] -= 1;
                        pat = (pat + templates.len() - 1) % templates.len();
                        *cur = used[i] as usize;
                    }
                    add(&c.refused, (n - sent) as u64);
                    busy = true;
                }
            }
        }
        for &pi in &rx_ports {
            for q in 0..ctx.queues {
                let n = burst.rx(ctx.ports[pi], q);
                if n == 0 {
                    continue;
                }
                busy = true;
                let (mut bytes, mut foreign, mut in_window) = (0u64, 0u64, 0u64);
                let rx_now = time::tsc();
                let measuring = rx_now >= warm_end;
                let tr = &mut trackers[pi];
                burst.for_each_mut(|_, m| match parse(m.data()) {
                    Some(s) => {
                        bytes += m.pkt_len() as u64;
                        tr.record(s);
                        in_window += u64::from(s.tsc >= warm_end);
                        if let (Some(h), true) = (hist.as_mut(), measuring) {
                            let ns = (rx_now.saturating_sub(s.tsc) as f64 * 1e9 / hz) as u64;
                            let _ = h.record(ns.max(1));
                        }
                    }
                    None => foreign += 1,
                });
                burst.clear();
                add(&c.rx, n as u64 - foreign);
                add(&c.rx_window, in_window);
                add(&c.rx_bytes, bytes);
                add(&c.foreign, foreign);
            }
        }
        if t.mode == Mode::Io {
            for (a, b) in [(0usize, 1usize), (1, 0)] {
                for q in 0..ctx.queues {
                    let n = burst.rx(ctx.ports[a], q);
                    if n == 0 {
                        continue;
                    }
                    busy = true;
                    let bytes = burst.bytes();
                    let sent = burst.tx(ctx.ports[b], q);
                    add(&c.rx, n as u64);
                    add(&c.rx_bytes, bytes);
                    add(&c.tx, sent as u64);
                    add(&c.tx_bytes, bytes * sent as u64 / n as u64);
                    add(&c.refused, (n - sent) as u64);
                }
            }
        }
        if !busy && t.idle_sleep_us > 0 {
            idle += 1;
            if idle > 64 {
                std::thread::sleep(Duration::from_micros(t.idle_sleep_us));
            }
        } else {
            idle = 0;
        }
    }
    out.reordered = trackers.iter().map(|t| t.reordered).sum();
    out.duplicated = trackers.iter().map(|t| t.duplicated).sum();
    out.latency = hist;
    out
}

fn mpps(x: f64) -> String {
    format!("{:.3} Mpps", x / 1e6)
}

fn gbps(x: f64) -> String {
    format!("{:.3} Gbps", x / 1e9)
}

/// Runs one trial on `lcore`, printing a line per second unless quiet.
fn run_trial(eal: &Eal, lcore: u32, ctx: &Arc<Ctx>, t: &Trial, args: &Args, quiet: bool) -> Summary {
    let c = &ctx.counters;
    let base = (c.tx.load(Relaxed), c.rx.load(Relaxed), c.refused.load(Relaxed), c.foreign.load(Relaxed));
    let base_window = (c.tx_window.load(Relaxed), c.rx_window.load(Relaxed));
    let done = Arc::new(AtomicBool::new(false));
    let (ctx2, t2, done2) = (ctx.clone(), t.clone(), done.clone());
    eal.launch(lcore, move || {
        let out = traffic(&ctx2, &t2);
        *ctx2.out.lock().expect("result lock") = Some(out);
        done2.store(true, Relaxed);
        0
    })
    .expect("launch the traffic lcore");
    let started = Instant::now();
    let mut last = (c.tx.load(Relaxed), c.tx_bytes.load(Relaxed), c.rx.load(Relaxed), c.rx_bytes.load(Relaxed));
    let mut last_t = Instant::now();
    let mut links: Vec<bool> = ctx.ports.iter().map(|_| true).collect();
    while !done.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        // Reading the link state is also what makes virtio_user notice a
        // vhost-user peer that went away, and (in server mode) accept it
        // when it comes back: DPDK does both in the link-state read.
        for (i, p) in ctx.ports.iter().enumerate() {
            let up = port::link(*p).map(|l| l.up).unwrap_or(false);
            if up != links[i] && !quiet {
                eprintln!("vwperf: port {i} link {}", if up { "up" } else { "down" });
            }
            links[i] = up;
        }
        if last_t.elapsed() >= Duration::from_secs(1) && !done.load(Relaxed) {
            let now = (c.tx.load(Relaxed), c.tx_bytes.load(Relaxed), c.rx.load(Relaxed), c.rx_bytes.load(Relaxed));
            let dt = last_t.elapsed().as_secs_f64();
            if !quiet {
                let label = if t.mode == Mode::Io { "fwd" } else { "rx" };
                eprintln!(
                    "vwperf: {:5.1}s  tx {} {}  {label} {} {}  refused {}  foreign {}",
                    started.elapsed().as_secs_f64(),
                    mpps((now.0 - last.0) as f64 / dt),
                    gbps((now.1 - last.1) as f64 * 8.0 / dt),
                    mpps((now.2 - last.2) as f64 / dt),
                    gbps((now.3 - last.3) as f64 * 8.0 / dt),
                    c.refused.load(Relaxed) - base.2,
                    c.foreign.load(Relaxed) - base.3,
                );
            }
            last = now;
            last_t = Instant::now();
        }
    }
    eal.wait(lcore);
    let out = ctx.out.lock().expect("result lock").take().unwrap_or_default();
    let tx = c.tx.load(Relaxed) - base.0;
    let rx = c.rx.load(Relaxed) - base.1;
    // Loss over the measured window: frames sent after the warm-up that
    // never arrived (each frame carries its send time), as RFC 2544 counts.
    let tx_w = c.tx_window.load(Relaxed) - base_window.0;
    let rx_w = c.rx_window.load(Relaxed) - base_window.1;
    let lost = tx_w.saturating_sub(rx_w);
    let secs = out.window_secs.max(1e-9);
    Summary {
        mode: t.mode.name().into(),
        size: if args.size == SizePattern::imix() { "imix".into() } else { args.size.max().to_string() },
        mean_size: args.size.mean(),
        flows: args.flows as u32,
        offered_pps: t.rate.unwrap_or(0.0),
        seconds: out.window_secs,
        tx_frames: tx,
        rx_frames: rx,
        tx_refused: c.refused.load(Relaxed) - base.2,
        lost: if t.mode == Mode::Pair || t.mode == Mode::Latency { lost } else { 0 },
        loss_ratio: if tx_w > 0 && matches!(t.mode, Mode::Pair | Mode::Latency) {
            lost as f64 / tx_w as f64
        } else {
            0.0
        },
        reordered: out.reordered,
        duplicated: out.duplicated,
        foreign: c.foreign.load(Relaxed) - base.3,
        tx_pps: out.window_tx as f64 / secs,
        rx_pps: out.window_rx as f64 / secs,
        rx_bps: out.window_rx_bytes as f64 * 8.0 / secs,
        latency: out.latency.filter(|h| !h.is_empty()).map(|h| Latency {
            samples: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            min_ns: h.min(),
        }),
    }
}

fn print_summary(s: &Summary) {
    let rate = if s.offered_pps > 0.0 { mpps(s.offered_pps) } else { "max rate".into() };
    println!(
        "vwperf summary: {} mode, {} B frames (mean {:.0} B), {} flow(s), {}, {:.1} s measured",
        s.mode, s.size, s.mean_size, s.flows, rate, s.seconds
    );
    println!("  tx  {:>14} frames  {}", s.tx_frames, mpps(s.tx_pps));
    println!("  rx  {:>14} frames  {}  {}", s.rx_frames, mpps(s.rx_pps), gbps(s.rx_bps));
    println!(
        "  lost {} ({:.6}%)  reordered {}  duplicated {}  refused by TX queue {}  foreign {}",
        s.lost,
        s.loss_ratio * 100.0,
        s.reordered,
        s.duplicated,
        s.tx_refused,
        s.foreign
    );
    if let Some(l) = &s.latency {
        let us = |ns: u64| format!("{:.2} us", ns as f64 / 1000.0);
        println!(
            "  latency ({} frames): min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.samples,
            us(l.min_ns),
            us(l.p50_ns),
            us(l.p90_ns),
            us(l.p99_ns),
            us(l.p999_ns),
            us(l.max_ns)
        );
    }
}

fn fail(msg: String) -> ExitCode {
    eprintln!("vwperf: error: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = Args::parse();
    let nports = args.vhost_user.len() + args.port.len();
    let need = match args.mode {
        Mode::Pair | Mode::Latency | Mode::Io => 2,
        Mode::Txonly | Mode::Rxonly => 1,
    };
    if nports < need {
        return fail(format!("{} mode needs {need} ports (--vhost-user or --port); {nports} given", args.mode.name()));
    }
    if args.queues == 0 || args.flows == 0 {
        return fail("--queues and --flows must be at least 1".into());
    }
    if args.flows < args.queues {
        return fail(format!("--flows {} < --queues {}: each queue carries its own flows", args.flows, args.queues));
    }
    let searching = args.ndr || args.pdr.is_some();
    if searching && !matches!(args.mode, Mode::Pair | Mode::Latency) {
        return fail("--ndr/--pdr search with pair or latency mode".into());
    }
    if searching && args.duration <= 0.0 {
        return fail("--ndr/--pdr needs a --duration per trial".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut eal_args = vec!["vwperf".to_string()];
    eal_args.extend(args.eal.iter().cloned());
    let eal = match Eal::init(&eal_args) {
        Ok(e) => e,
        Err(e) => {
            return fail(format!(
                "EAL initialisation failed: {e} (virtio_user needs hugepages and --single-file-segments)"
            ))
        }
    };
    let Some(&lcore) = eal.worker_lcores().first() else {
        return fail("vwperf needs two lcores: the traffic runs on the second (e.g. --lcores 0@0,1@1)".into());
    };
    let room = (args.size.max() + 128).max(2176) as u16;
    let pool = match Mempool::create("vwperf", args.mbufs, 256, room, vw_pmd::eal::socket_id()) {
        Ok(p) => p,
        Err(e) => return fail(format!("mbuf pool: {e}")),
    };
    let mut devs: Vec<String> = args
        .vhost_user
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // 1024-entry rings (the default is 256) ride out a receiver
            // that loses its CPU for a moment on a shared machine.
            format!(
                "virtio_user{i},path={p},queues={},queue_size=1024{}",
                args.queues,
                if args.server { ",server=1" } else { "" }
            )
        })
        .collect();
    devs.extend(args.port.iter().cloned());
    let mut ports = Vec::new();
    for d in &devs {
        let p = match port::probe(d) {
            Ok(p) if p.ports.len() == 1 => p.ports[0],
            Ok(p) => return fail(format!("{d}: {} ports; give one device per --port", p.ports.len())),
            Err(e) => return fail(format!("{d}: {e}")),
        };
        let cfg = PortConfig {
            rx_queues: args.queues,
            tx_queues: args.queues,
            rx_desc: args.rx_desc,
            tx_desc: args.tx_desc,
            pool,
            mtu: None,
            promiscuous: true,
            rx_l4_checksum: false,
        };
        if let Err(e) = port::configure_and_start(p, &cfg) {
            return fail(format!("{d}: {e}"));
        }
        ports.push(p);
    }
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || s.store(true, Relaxed));
    let t0 = Instant::now();
    while !ports.iter().all(|p| port::link(*p).map(|l| l.up).unwrap_or(false)) {
        if t0.elapsed().as_secs_f64() > args.link_timeout || stop.load(Relaxed) {
            let down: Vec<String> = devs
                .iter()
                .zip(&ports)
                .filter(|(_, p)| !port::link(**p).map(|l| l.up).unwrap_or(false))
                .map(|(d, _)| d.clone())
                .collect();
            return fail(format!("link still down after {:.0} s: {}", args.link_timeout, down.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ctx = Arc::new(Ctx {
        ports,
        queues: args.queues,
        pool,
        size: args.size.clone(),
        flows: args.flows,
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        out: Mutex::new(None),
    });
    // Forward Ctrl-C to the traffic loop.
    let (c2, s2) = (ctx.clone(), stop.clone());
    std::thread::spawn(move || loop {
        if s2.load(Relaxed) {
            c2.stop.store(true, Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    let trial = Trial {
        mode: args.mode,
        bidir: args.bidir,
        rate: args.rate.0,
        duration: args.duration,
        warmup: args.warmup,
        idle_sleep_us: args.idle_sleep_us,
    };
    if !searching {
        let s = run_trial(&eal, lcore, &ctx, &trial, &args, args.json);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&s).expect("summary is JSON"));
        } else {
            print_summary(&s);
        }
        return ExitCode::SUCCESS;
    }
    // RFC 2544-style binary search on the offered rate.
    let max_loss = args.pdr.unwrap_or(0.0) / 100.0;
    let max_refused = args.max_refused.map_or(max_loss.max(0.001), |p| p / 100.0);
    let mut trials = Vec::new();
    // Rates in the search are per sending port, as --rate is.
    let senders = if args.bidir { 2.0 } else { 1.0 };
    // A trial passes only if the device under test took what was offered:
    // frames its queue refused (backpressure) are neither sent nor lost,
    // and must not let a rate pass that it cannot carry. At `--rate max`
    // the queue always refuses some: that trial only bounds the search.
    let passes = |s: &Summary| {
        let refused = s.tx_refused as f64 / (s.tx_frames + s.tx_refused).max(1) as f64;
        s.loss_ratio <= max_loss && refused <= max_refused
    };
    let first = run_trial(&eal, lcore, &ctx, &Trial { rate: None, ..trial.clone() }, &args, true);
    trials.push((first.tx_pps / senders, first.loss_ratio));
    let (mut lo, mut hi) = (0.0f64, first.tx_pps / senders);
    let mut best = if passes(&first) { Some(first.clone()) } else { None };
    if best.is_some() {
        lo = hi;
    }
    for _ in 0..12 {
        if best.is_some() && (hi - lo) / hi.max(1.0) < 0.01 || ctx.stop.load(Relaxed) {
            break;
        }
        let mid = (lo + hi) / 2.0;
        let s = run_trial(&eal, lcore, &ctx, &Trial { rate: Some(mid), ..trial.clone() }, &args, true);
        trials.push((mid, s.loss_ratio));
        if !args.json {
            eprintln!(
                "vwperf: search: {} offered, {} sent -> loss {:.6}%",
                mpps(mid),
                mpps(s.tx_pps),
                s.loss_ratio * 100.0
            );
        }
        if passes(&s) {
            lo = mid;
            best = Some(s);
        } else {
            hi = mid;
        }
    }
    // The rate reported is the one measured at the best passing trial.
    let Some(rate) = best.as_ref().map(|b| b.tx_pps / senders) else {
        return fail(format!(
            "no rate met loss <= {:.4}% with at most {:.4}% refused (trials: {trials:?})",
            max_loss * 100.0,
            max_refused * 100.0
        ));
    };
    let result = Search { max_loss_ratio: max_loss, rate_pps: rate, trials, at_rate: best.unwrap_or_default() };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result).expect("search is JSON"));
    } else {
        println!(
            "vwperf: highest rate with loss <= {:.4}%: {} per sending port (measured)",
            max_loss * 100.0,
            mpps(result.rate_pps)
        );
        print_summary(&result.at_rate);
    }
    ExitCode::SUCCESS
}
