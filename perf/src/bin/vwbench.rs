//! `vwbench`: the VirtualWire benchmark, baselines included, in one command.
//!
//! Every measurement runs the switch on one CPU and the traffic on the
//! other, and each fabric run is interleaved with its baseline run (this
//! machine's vCPU placement drifts and moves results by up to 2x between
//! minutes, so only runs taken side by side are compared). Results are
//! medians of `--runs` runs; the table goes into `docs/perf.md` between
//! markers, with the date, the command and the machine.
//!
//! Scenarios, each at every `--sizes` frame size:
//! * vhost-user, no work at all: `dpdk-testpmd` io-forwarding between two
//!   net_vhost ports (baseline) vs a fabric loopback wire between two
//!   vhost-user endpoints; vwperf on virtio_user is both VMs;
//! * vhost-user, encap+decap: testpmd io chained vhost0 -> net_ring ->
//!   vhost1 (baseline) vs the fabric with `--force-encap`: endpoint A ->
//!   encap -> net_ring uplink (returns what it sends) -> decap -> endpoint B;
//! * the data path alone: net_null RX -> encap -> net_null TX, and a tunnel
//!   capture replayed by net_pcap (infinite_rx) -> decap -> net_null TX,
//!   each against testpmd io on the same ports;
//! * latency: vwperf latency mode at half the baseline's 64-byte maximum
//!   rate, testpmd vs fabric, loopback and encap+decap.
//!
//! * scale: a fabric growing to 1000 vhost-user endpoints (client mode,
//!   no VM) with 500 loopback wires, changed over one control connection:
//!   connect, disconnect, endpoint add and del latency (p50, p99) at 2, 100
//!   and 1000 endpoints; a loopback wire's rate with 2 and with 1000
//!   endpoints present, interleaved; the restore of all of them at start.
//!
//! `--smoke` runs each scenario once for a second and only checks that
//! frames flowed and the fabric's mbufs returned to their idle count.
#![forbid(unsafe_code)]

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use vw_perf::frame::Template;
use vw_perf::report::{Latency, Summary};
use vw_wire::underlay::build_tunnel_frame;
use vw_wire::{ConnectorId, Encap, EncapTemplate, MacAddr};

/// Benchmark the fabric against dpdk-testpmd baselines on the same ports and cores.
#[derive(Parser, Debug, Clone)]
#[command(name = "vwbench", version)]
struct Args {
    /// Frame sizes in bytes (without FCS).
    #[arg(long, value_delimiter = ',', default_value = "64,512,1500")]
    sizes: Vec<usize>,
    /// Runs of every scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Only scenarios whose name contains one of these (e.g. vhost, null, latency).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the results table into this markdown file (between markers).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Also write every run as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// CPU for the switch (fabric worker or testpmd forwarding lcore).
    #[arg(long, default_value_t = 1)]
    switch_cpu: u32,
    /// CPU for the traffic (vwperf) and the main lcores.
    #[arg(long, default_value_t = 0)]
    traffic_cpu: u32,
    /// A quick check for CI: one short run of each scenario, asserting that
    /// frames flowed and nothing leaked.
    #[arg(long)]
    smoke: bool,
}

/// One measured run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    scenario: String,
    size: usize,
    run: usize,
    pps: f64,
    bps: f64,
    latency: Option<Latency>,
    loss_ratio: f64,
}

type Res<T> = Result<T, String>;

struct Bench {
    args: Args,
    bin: PathBuf,
    dir: PathBuf,
    n: u32,
}

fn kill(child: &mut Child, sig: &str) {
    let _ = Command::new("kill").args([sig, &child.id().to_string()]).status();
}

/// Stops a process with SIGINT, then SIGKILL after 10 s.
fn stop(mut child: Child) -> Res<()> {
    kill(&mut child, "-INT");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(&mut child, "-KILL");
    let _ = child.wait();
    Err("a process did not stop within 10 s of SIGINT".into())
}

fn wait_for(what: &str, secs: f64, mut f: impl FnMut() -> bool) -> Res<()> {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out waiting for {what}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The switch under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// testpmd io between two vhost ports.
    TestpmdVhost,
    /// testpmd io chained vhost0 -> ring -> vhost1.
    TestpmdVhostRing,
    /// The fabric, loopback wire between two vhost endpoints.
    FabricLoopback,
    /// The fabric, forced encap+decap through a net_ring uplink.
    FabricEncap,
    /// The same, as a secure wire: sealed (ESP, AES-128-GCM) and opened.
    FabricSecure,
    /// testpmd io net_null (RX) -> net_null (TX).
    TestpmdNull,
    /// The fabric: net_null endpoint -> encap -> net_null uplink.
    FabricNullEncap,
    /// testpmd io net_pcap (replay) -> net_null.
    TestpmdPcap,
    /// The fabric: net_pcap uplink (tunnel frames) -> decap -> net_null endpoint.
    FabricNullDecap,
}

impl Switch {
    fn name(self) -> &'static str {
        match self {
            Switch::TestpmdVhost => "vhost loopback: testpmd io (baseline)",
            Switch::FabricLoopback => "vhost loopback: fabric loopback wire",
            Switch::TestpmdVhostRing => "vhost encap+decap: testpmd io via net_ring (baseline)",
            Switch::FabricEncap => "vhost encap+decap: fabric encap -> net_ring -> decap",
            Switch::FabricSecure => "vhost encap+decap: fabric secure (AES-128-GCM) seal -> net_ring -> open",
            Switch::TestpmdNull => "null encap: testpmd io net_null -> net_null (baseline)",
            Switch::FabricNullEncap => "null encap: fabric classify+encap",
            Switch::TestpmdPcap => "null decap: testpmd io net_pcap -> net_null (baseline)",
            Switch::FabricNullDecap => "null decap: fabric classify+decap",
        }
    }

    fn fabric(self) -> bool {
        matches!(
            self,
            Switch::FabricLoopback
                | Switch::FabricEncap
                | Switch::FabricSecure
                | Switch::FabricNullEncap
                | Switch::FabricNullDecap
        )
    }

    fn vhost(self) -> bool {
        matches!(
            self,
            Switch::TestpmdVhost
                | Switch::TestpmdVhostRing
                | Switch::FabricLoopback
                | Switch::FabricEncap
                | Switch::FabricSecure
        )
    }
}

/// Each baseline with the fabric runs compared with it, in the order they
/// are run (the first fabric of a group is the one of the latency rows).
const GROUPS: [(Switch, &[Switch]); 4] = [
    (Switch::TestpmdVhost, &[Switch::FabricLoopback]),
    (Switch::TestpmdVhostRing, &[Switch::FabricEncap, Switch::FabricSecure]),
    (Switch::TestpmdNull, &[Switch::FabricNullEncap]),
    (Switch::TestpmdPcap, &[Switch::FabricNullDecap]),
];

/// A group's switches: the baseline, then its fabrics.
fn group(base: Switch, fabs: &[Switch]) -> impl Iterator<Item = Switch> + '_ {
    std::iter::once(base).chain(fabs.iter().copied())
}

/// A running switch and how to read its forwarding counter.
struct Running {
    /// Taken by `finish`; a `Running` dropped on an error path stops it.
    child: Option<Child>,
    socket: Option<PathBuf>,
    log: PathBuf,
}

impl Running {
    /// Stops the switch, reporting a switch that would not stop.
    fn finish(mut self) -> Res<()> {
        match self.child.take() {
            Some(c) => stop(c),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = stop(c);
        }
    }
}

impl Bench {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn next(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    fn eal(&self, prefix: &str, cpu_main: u32, cpu_work: u32) -> Vec<String> {
        vec![
            "--lcores".into(),
            format!("0@{cpu_main},1@{cpu_work}"),
            "--file-prefix".into(),
            prefix.into(),
            "--in-memory".into(),
            "-m".into(),
            "256".into(),
            "--no-pci".into(),
            "--log-level=*:warning".into(),
        ]
    }

    fn vwctl(&self, socket: &Path, args: &[&str]) -> Res<String> {
        let o = Command::new(self.bin.join("vwctl"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .map_err(|e| format!("vwctl: {e}"))?;
        if !o.status.success() {
            return Err(format!("vwctl {args:?}: {}", String::from_utf8_lossy(&o.stderr)));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn stats(&self, socket: &Path) -> Res<serde_json::Value> {
        serde_json::from_str(&self.vwctl(socket, &["--json", "stats"])?).map_err(|e| e.to_string())
    }

    /// Writes a pcap with tunnel frames carrying `size`-byte test frames on wire 1.
    fn tunnel_pcap(&self, size: usize) -> Res<PathBuf> {
        let path = self.path(&format!("decap-{size}.pcap"));
        let tmpl = EncapTemplate::new(
            Encap::Vwire,
            ConnectorId(1),
            MacAddr([2, 0, 0, 0, 0, 2]),
            MacAddr::BROADCAST,
            [10, 0, 0, 2].into(),
            [10, 0, 0, 1].into(),
            vw_wire::vwire::DEFAULT_PORT,
            9000,
        );
        let t = Template::new(size);
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for i in 0..32u16 {
            let mut inner = vec![0u8; size];
            t.write(&mut inner, i, 0, 0);
            let f = build_tunnel_frame(&tmpl, &inner, 49152 + i);
            out.extend_from_slice(&[0u8; 8]);
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&f);
        }
        std::fs::write(&path, out).map_err(|e| e.to_string())?;
        Ok(path)
    }

    fn start(&mut self, sw: Switch, size: usize) -> Res<Running> {
        self.start_with(sw, size, &[], None)
    }

    /// Starts a fabric again on the sockets and names of run `n`, with
    /// nothing set up (it restores its state file).
    fn restart(&mut self, n: u32, extra: &[String]) -> Res<Running> {
        self.start_with(Switch::FabricLoopback, 64, extra, Some(n))
    }

    /// `start` with extra fabric options; `reuse` starts on the names of an
    /// earlier run and sets nothing up.
    fn start_with(&mut self, sw: Switch, size: usize, extra: &[String], reuse: Option<u32>) -> Res<Running> {
        let n = match reuse {
            Some(n) => n,
            None => self.next(),
        };
        let log = self.path(&format!("switch-{n}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let (a, b) = (self.path(&format!("a-{n}.sock")), self.path(&format!("b-{n}.sock")));
        let (main, work) = (self.args.traffic_cpu, self.args.switch_cpu);
        let prefix = format!("vwbench-{}-{n}", std::process::id());
        let mut cmd;
        let mut socket = None;
        if sw.fabric() {
            let sock = self.path(&format!("fabric-{n}.sock"));
            cmd = Command::new(self.bin.join("vwfabric"));
            cmd.arg("--socket").arg(&sock).args(extra);
            match sw {
                Switch::FabricEncap | Switch::FabricSecure => {
                    cmd.args(["--uplink", "net_ring0", "--vtep", "10.0.0.1/24", "--underlay-mtu", "2000"]);
                    cmd.args(["--force-encap", if sw == Switch::FabricSecure { "secure" } else { "vwire" }]);
                }
                Switch::FabricNullEncap => {
                    cmd.args(["--uplink", "net_null1,no-rx=1", "--vtep", "10.0.0.1/24", "--underlay-mtu", "2000"]);
                    cmd.args(["--neighbour", "10.0.0.2=02:00:00:00:00:02"]);
                }
                Switch::FabricNullDecap => {
                    let pcap = self.tunnel_pcap(size)?;
                    cmd.args(["--uplink", &format!("net_pcap0,rx_pcap={},infinite_rx=1", pcap.display())]);
                    cmd.args(["--vtep", "10.0.0.1/24", "--underlay-mtu", "2000"]);
                    cmd.args(["--neighbour", "10.0.0.2=02:00:00:00:00:02"]);
                }
                _ => {}
            }
            cmd.arg("--").args(self.eal(&prefix, main, work));
            socket = Some(sock);
        } else {
            cmd = Command::new("dpdk-testpmd");
            cmd.args(self.eal(&prefix, main, work));
            let vdevs: Vec<String> = match sw {
                Switch::TestpmdVhost => {
                    vec![format!("net_vhost0,iface={}", a.display()), format!("net_vhost1,iface={}", b.display())]
                }
                Switch::TestpmdVhostRing => vec![
                    format!("net_vhost0,iface={}", a.display()),
                    "net_ring0".into(),
                    format!("net_vhost1,iface={}", b.display()),
                ],
                Switch::TestpmdNull => vec![format!("net_null0,size={size}"), "net_null1,no-rx=1".into()],
                Switch::TestpmdPcap => {
                    let pcap = self.tunnel_pcap(size)?;
                    vec![format!("net_pcap0,rx_pcap={},infinite_rx=1", pcap.display()), "net_null1,no-rx=1".into()]
                }
                _ => unreachable!(),
            };
            for v in vdevs {
                cmd.arg("--vdev").arg(v);
            }
            cmd.args(["--", "--forward-mode=io", "--nb-cores=1", "--total-num-mbufs=16384", "--stats-period=1"]);
            cmd.args(["--max-pkt-len=9600"]);
            if sw == Switch::TestpmdVhostRing {
                cmd.arg("--port-topology=chained");
            }
            // testpmd exits at once without a terminal unless it prints stats
            // periodically; stdbuf makes those lines arrive as printed.
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg(cmd.get_program()).args(cmd.get_args());
            cmd = c;
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", if sw.fabric() { "vwfabric" } else { "dpdk-testpmd" }))?;
        let mut r = Running { child: Some(child), socket, log };
        let ready = match (&r.socket, sw.vhost()) {
            (Some(s), _) => {
                let s = s.clone();
                wait_for("the fabric's control socket", 20.0, || self.vwctl(&s, &["status"]).is_ok())
            }
            (None, true) => wait_for("testpmd's vhost-user sockets", 20.0, || a.exists() && b.exists()),
            (None, false) => wait_for("testpmd to forward", 20.0, || {
                std::fs::read_to_string(&r.log).map(|l| l.contains("Tx-pps")).unwrap_or(false)
            }),
        };
        if let Err(e) = ready {
            let log = std::fs::read_to_string(&r.log).unwrap_or_default();
            drop(r);
            return Err(format!("{}: {e}\n{log}", sw.name()));
        }
        if let (Some(s), None) = (r.socket.clone(), reuse) {
            let setup = || -> Res<()> {
                match sw {
                    Switch::FabricLoopback | Switch::FabricEncap | Switch::FabricSecure => {
                        self.vwctl(&s, &["endpoint", "add", "a", "--vhost-user", &a.display().to_string()])?;
                        self.vwctl(&s, &["endpoint", "add", "b", "--vhost-user", &b.display().to_string()])?;
                        self.vwctl(&s, &["connect", "1", "a", "b"])?;
                    }
                    Switch::FabricNullEncap => {
                        self.vwctl(&s, &["endpoint", "add", "e", &format!("net_null0,size={size}")])?;
                        self.vwctl(&s, &["connect", "1", "e", "10.0.0.2"])?;
                    }
                    Switch::FabricNullDecap => {
                        self.vwctl(&s, &["endpoint", "add", "e", "net_null1,no-rx=1"])?;
                        self.vwctl(&s, &["connect", "1", "e", "10.0.0.2"])?;
                    }
                    _ => {}
                }
                Ok(())
            };
            if let Err(e) = setup() {
                drop(r);
                return Err(e);
            }
        }
        r.socket = r.socket.take();
        Ok(r)
    }

    /// Runs vwperf on the two vhost sockets of run `n`.
    fn vwperf(&mut self, n: u32, size: usize, extra: &[String], secs: f64) -> Res<Summary> {
        let (a, b) = (self.path(&format!("a-{n}.sock")), self.path(&format!("b-{n}.sock")));
        let prefix = format!("vwbench-perf-{}-{n}", std::process::id());
        let mut cmd = Command::new(self.bin.join("vwperf"));
        cmd.arg("--vhost-user").arg(&a).arg("--vhost-user").arg(&b);
        cmd.args(["--json", "--size", &size.to_string(), "--duration", &secs.to_string()]);
        cmd.args(["--warmup", if self.args.smoke { "0.5" } else { "1" }]);
        cmd.args(extra);
        cmd.arg("--");
        cmd.args(self.eal(&prefix, self.args.traffic_cpu, self.args.traffic_cpu));
        cmd.arg("--single-file-segments");
        let o = cmd.output().map_err(|e| format!("vwperf: {e}"))?;
        if !o.status.success() {
            return Err(format!("vwperf failed: {}", String::from_utf8_lossy(&o.stderr)));
        }
        serde_json::from_slice(&o.stdout).map_err(|e| format!("vwperf output: {e}"))
    }

    /// Forwarding rate of a switch without vwperf: the fabric's port TX
    /// counter, or testpmd's Tx-pps lines for its output port.
    fn counter_rate(&self, sw: Switch, r: &Running, secs: f64) -> Res<(f64, f64)> {
        let warm = if self.args.smoke { 0.5 } else { 1.0 };
        std::thread::sleep(Duration::from_secs_f64(warm));
        match &r.socket {
            Some(s) => {
                let port = if sw == Switch::FabricNullEncap { "uplink" } else { "e" };
                let read = |v: &serde_json::Value| -> (f64, f64) {
                    let p = v["ports"].as_array().and_then(|a| a.iter().find(|p| p["name"] == port)).cloned();
                    let p = p.unwrap_or_default();
                    (p["tx_packets"].as_f64().unwrap_or(0.0), p["tx_bytes"].as_f64().unwrap_or(0.0))
                };
                let (p0, b0, t0) = {
                    let v = self.stats(s)?;
                    let (p, b) = read(&v);
                    (p, b, Instant::now())
                };
                std::thread::sleep(Duration::from_secs_f64(secs));
                let v = self.stats(s)?;
                let (p1, b1) = read(&v);
                let dt = t0.elapsed().as_secs_f64();
                Ok(((p1 - p0) / dt, (b1 - b0) * 8.0 / dt))
            }
            None => {
                let before = std::fs::read_to_string(&r.log).unwrap_or_default().len();
                std::thread::sleep(Duration::from_secs_f64(secs));
                let log = std::fs::read_to_string(&r.log).unwrap_or_default();
                // Tx-pps of port 1 from the stats printed during the window.
                let (mut port, mut pps, mut bps) = (None, Vec::new(), Vec::new());
                for l in log[before.min(log.len())..].lines() {
                    if let Some(i) = l.find("statistics for port") {
                        port = l[i + 19..].split_whitespace().next().and_then(|p| p.parse::<u32>().ok());
                    }
                    if port == Some(1) && l.trim_start().starts_with("Tx-pps:") {
                        let f: Vec<f64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                        if f.len() == 2 {
                            pps.push(f[0]);
                            bps.push(f[1]);
                        }
                    }
                }
                if pps.is_empty() {
                    return Err("no testpmd statistics in the window".into());
                }
                Ok((median(&mut pps), median(&mut bps)))
            }
        }
    }

    /// One run of `sw` at `size`; with `latency_rate`, a latency run instead.
    fn run(&mut self, sw: Switch, size: usize, latency_rate: Option<f64>) -> Res<Run> {
        let r = self.start(sw, size)?;
        let n = self.n;
        let secs = if self.args.smoke { 1.0 } else { self.args.duration };
        let idle_mbufs = match &r.socket {
            Some(s) => Some(self.stats(s)?["mempool"]["in_use"].as_u64().unwrap_or(0)),
            None => None,
        };
        let result = (|| -> Res<Run> {
            if sw.vhost() {
                let extra: Vec<String> = match latency_rate {
                    Some(rate) => vec!["--mode".into(), "latency".into(), "--rate".into(), format!("{rate:.0}")],
                    None => vec![],
                };
                let s = self.vwperf(n, size, &extra, secs)?;
                if s.rx_frames == 0 {
                    return Err(format!("{}: no frames arrived", sw.name()));
                }
                Ok(Run {
                    scenario: sw.name().into(),
                    size,
                    run: 0,
                    pps: s.rx_pps,
                    bps: s.rx_bps,
                    latency: s.latency,
                    loss_ratio: s.loss_ratio,
                })
            } else {
                // testpmd prints its rates once a second: give it a few.
                let (pps, _) = self.counter_rate(sw, &r, secs.max(3.0))?;
                if pps <= 0.0 {
                    return Err(format!("{}: nothing forwarded", sw.name()));
                }
                // net_null counts no bytes: bit rates are of the inner frames.
                let bps = pps * size as f64 * 8.0;
                Ok(Run { scenario: sw.name().into(), size, run: 0, pps, bps, latency: None, loss_ratio: 0.0 })
            }
        })();
        // Nothing leaked: after the traffic stops, the fabric's mbufs return
        // to what it held idle (device rings).
        if let (Some(s), Some(idle), Ok(_)) = (&r.socket, idle_mbufs, &result) {
            if sw.vhost() {
                let s = s.clone();
                let mut now = 0;
                wait_for("mbufs to return", 5.0, || {
                    now = self.stats(&s).ok().and_then(|v| v["mempool"]["in_use"].as_u64()).unwrap_or(u64::MAX);
                    now == idle
                })
                .map_err(|_| format!("{}: {now} mbufs in use after the run, {idle} before", sw.name()))?;
            }
            // Every frame of the secure run was sealed and opened: nothing
            // failed to verify, was refused as a replay or ran out of SA.
            if sw == Switch::FabricSecure {
                let st = self.stats(s)?;
                let bad: u64 = ["auth_failed", "replayed", "sa_expired", "unknown_spi", "secure_inner"]
                    .iter()
                    .map(|d| st["drops"][*d].as_u64().unwrap_or(0))
                    .sum();
                let sealed = st["wires"][0]["secure"]["sent_seq"].as_u64().unwrap_or(0);
                if bad != 0 || sealed == 0 {
                    return Err(format!("{}: {sealed} frames sealed, {bad} refused: {}", sw.name(), st["drops"]));
                }
            }
        }
        let log = r.log.clone();
        r.finish()?;
        result.map_err(|e| format!("{e}\n(log: {})", log.display()))
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let dpdk = Command::new("pkg-config")
        .args(["--modversion", "libdpdk"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} vCPUs, Linux {}, DPDK {dpdk}", kernel.trim())
}

fn date() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn table(runs: &[Run], args: &Args, command: &str) -> String {
    let mut by: BTreeMap<(String, usize), Vec<&Run>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.latency.is_none()) {
        by.entry((r.scenario.clone(), r.size)).or_default().push(r);
    }
    let med = |name: &str, size: usize| -> Option<(f64, f64, Vec<f64>)> {
        let v = by.get(&(name.to_owned(), size))?;
        let mut pps: Vec<f64> = v.iter().map(|r| r.pps).collect();
        let mut bps: Vec<f64> = v.iter().map(|r| r.bps).collect();
        let all = pps.clone();
        Some((median(&mut pps), median(&mut bps), all))
    };
    let mut s = String::new();
    s.push_str(&format!(
        "Measured {} with `{command}`\non {}; switch on CPU {}, traffic on CPU {}; {} runs of {} s per cell, each fabric run right after its baseline run. Mpps and Gbps are medians; the ratio is the median of the paired ratios (fabric run / the baseline run just before it).\n\n",
        date(),
        machine(),
        args.switch_cpu,
        args.traffic_cpu,
        args.runs,
        args.duration
    ));
    s.push_str(
        "| scenario | size (B) | Mpps | Gbps | ratio to baseline | runs (Mpps) |\n|---|---:|---:|---:|---:|---|\n",
    );
    // Each fabric run is compared with the baseline run taken just before it
    // (same size, same round): the machine's speed drifts between rounds,
    // not within a pair. The ratio is the median of these paired ratios.
    let paired = |base: &str, fab: &str, size: usize| -> Option<f64> {
        let mut r: Vec<f64> = runs
            .iter()
            .filter(|f| f.scenario == fab && f.size == size && f.latency.is_none())
            .filter_map(|f| {
                runs.iter()
                    .find(|b| b.scenario == base && b.size == size && b.run == f.run && b.latency.is_none())
                    .filter(|b| b.pps > 0.0)
                    .map(|b| f.pps / b.pps)
            })
            .collect();
        (!r.is_empty()).then(|| median(&mut r))
    };
    for (base, fabs) in GROUPS {
        for &size in &args.sizes {
            for sw in group(base, fabs) {
                let Some((pps, bps, all)) = med(sw.name(), size) else { continue };
                let ratio = match (paired(base.name(), sw.name(), size), sw == base) {
                    (_, true) => "1 (baseline)".to_string(),
                    (Some(r), false) => format!("{r:.2}"),
                    _ => "-".into(),
                };
                let runs: Vec<String> = all.iter().map(|p| format!("{:.2}", p / 1e6)).collect();
                s.push_str(&format!(
                    "| {} | {size} | {:.2} | {:.2} | {ratio} | {} |\n",
                    sw.name(),
                    pps / 1e6,
                    bps / 1e9,
                    runs.join(", ")
                ));
            }
        }
    }
    let lat: Vec<&Run> = runs.iter().filter(|r| r.latency.is_some()).collect();
    if !lat.is_empty() {
        s.push_str("\nLatency (64 B, vwperf latency mode, both at the same rate: half the lower of the two 64-byte maximums above; one-way; medians of the runs' percentiles):\n\n");
        s.push_str("| scenario | rate (Mpps) | p50 (us) | p90 (us) | p99 (us) | p99.9 (us) | max (us) | p99 ratio to baseline |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
        let mut names: Vec<String> = lat.iter().map(|r| r.scenario.clone()).collect();
        names.dedup();
        let p = |name: &str, f: fn(&Latency) -> u64| -> f64 {
            let mut v: Vec<f64> = lat
                .iter()
                .filter(|r| r.scenario == name)
                .map(|r| f(r.latency.as_ref().unwrap()) as f64 / 1000.0)
                .collect();
            median(&mut v)
        };
        for (base, fabs) in GROUPS.iter().take(2) {
            let bp99 = p(base.name(), |l| l.p99_ns);
            for sw in [base, &fabs[0]] {
                if !names.iter().any(|n| n == sw.name()) {
                    continue;
                }
                let mut rates: Vec<f64> = lat.iter().filter(|r| r.scenario == sw.name()).map(|r| r.pps / 1e6).collect();
                let p99 = p(sw.name(), |l| l.p99_ns);
                s.push_str(&format!(
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
                    sw.name(),
                    median(&mut rates),
                    p(sw.name(), |l| l.p50_ns),
                    p(sw.name(), |l| l.p90_ns),
                    p99,
                    p(sw.name(), |l| l.p999_ns),
                    p(sw.name(), |l| l.max_ns),
                    if sw == base { "1 (baseline)".into() } else { format!("{:.2}", p99 / bp99.max(1e-9)) }
                ));
            }
        }
    }
    s
}

const BEGIN: &str = "<!-- vwbench:begin (generated by vwbench --write; do not edit by hand) -->";
const END: &str = "<!-- vwbench:end -->";
const SCALE_BEGIN: &str = "<!-- vwbench-scale:begin (generated by vwbench --write; do not edit by hand) -->";
const SCALE_END: &str = "<!-- vwbench-scale:end -->";

fn write_doc(path: &Path, begin: &str, end: &str, body: &str) -> Res<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{body}{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.smoke {
        args.sizes = vec![64];
        args.runs = 1;
    }
    let bin = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("vwbench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut b = Bench { args: args.clone(), bin, dir: dir.clone(), n: 0 };
    let wanted = |sw: Switch| args.only.is_empty() || args.only.iter().any(|o| sw.name().contains(o.as_str()));
    let mut runs: Vec<Run> = Vec::new();
    let mut failed = Vec::new();
    for run in 1..=args.runs {
        for &size in &args.sizes {
            for (base, fabs) in GROUPS {
                for sw in group(base, fabs) {
                    if !wanted(sw) {
                        continue;
                    }
                    match b.run(sw, size, None) {
                        Ok(mut r) => {
                            r.run = run;
                            eprintln!(
                                "vwbench: run {run}/{} {:>5} B  {:<58} {:8.3} Mpps {:7.2} Gbps",
                                args.runs,
                                size,
                                sw.name(),
                                r.pps / 1e6,
                                r.bps / 1e9
                            );
                            runs.push(r);
                        }
                        Err(e) => {
                            eprintln!("vwbench: {} at {size} B failed: {e}", sw.name());
                            failed.push(sw.name());
                        }
                    }
                }
            }
        }
    }
    // Latency at half the baseline's 64-byte maximum rate, same rate for both.
    if args.only.is_empty() || args.only.iter().any(|o| o == "latency") {
        for (base, fabs) in GROUPS.iter().take(2) {
            let fab = &fabs[0];
            // Both at the same offered rate, half of the lower of their two
            // 64-byte maximums, so neither runs above half its capacity and
            // the comparison measures switching, not queueing.
            let max_of = |sw: Switch| {
                let mut v: Vec<f64> =
                    runs.iter().filter(|r| r.scenario == sw.name() && r.size == 64).map(|r| r.pps).collect();
                (!v.is_empty()).then(|| median(&mut v))
            };
            let rate = match (max_of(*base), max_of(*fab)) {
                (Some(a), Some(b)) => a.min(b) / 2.0,
                (Some(a), None) | (None, Some(a)) => a / 2.0,
                (None, None) => 1e6,
            };
            for run in 1..=args.runs {
                for sw in [*base, *fab] {
                    match b.run(sw, 64, Some(rate)) {
                        Ok(mut r) => {
                            r.run = run;
                            let l = r.latency.unwrap_or_default();
                            eprintln!(
                                "vwbench: latency run {run}/{} {:<58} at {:.2} Mpps: p50 {:.2} us p99 {:.2} us",
                                args.runs,
                                sw.name(),
                                rate / 1e6,
                                l.p50_ns as f64 / 1e3,
                                l.p99_ns as f64 / 1e3
                            );
                            r.scenario = sw.name().into();
                            runs.push(r);
                        }
                        Err(e) => {
                            eprintln!("vwbench: latency {} failed: {e}", sw.name());
                            failed.push(sw.name());
                        }
                    }
                }
            }
        }
    }
    let mut scale = None;
    if args.only.is_empty() || args.only.iter().any(|o| o == "scale") {
        match b.scale() {
            Ok(s) => scale = Some(s),
            Err(e) => {
                eprintln!("vwbench: scale failed: {e}");
                failed.push("scale");
            }
        }
    }
    let out = table(&runs, &args, &command);
    if !runs.is_empty() {
        println!("{out}");
    }
    if let Some(j) = &args.json {
        let _ = std::fs::write(j, serde_json::to_string_pretty(&runs).unwrap_or_default());
    }
    let scale_out = scale.as_ref().map(|s| scale_table(s, &command));
    if let Some(t) = &scale_out {
        println!("{t}");
    }
    if let Some(w) = &args.write {
        // Each block is rewritten only by a run that measured it.
        let blocks =
            [(!runs.is_empty()).then_some((BEGIN, END, &out)), scale_out.as_ref().map(|t| (SCALE_BEGIN, SCALE_END, t))];
        for (begin, end, body) in blocks.into_iter().flatten() {
            if let Err(e) = write_doc(w, begin, end, body) {
                eprintln!("vwbench: {e}");
                return ExitCode::FAILURE;
            }
        }
        eprintln!("vwbench: results written to {}", w.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("vwbench: {} run(s) failed: {}", failed.len(), failed.join("; "));
        ExitCode::FAILURE
    }
}

// ---- scale: a fabric with many endpoints -----------------------------------

/// Results of the scale scenario.
#[derive(Debug, Default, Serialize)]
struct Scale {
    /// (endpoints present, request kind, p50 ms, p99 ms).
    latency: Vec<(usize, &'static str, f64, f64)>,
    /// Loopback wire rate (Mpps) per run with 2 and with `big` endpoints present.
    rate_small: Vec<f64>,
    rate_big: Vec<f64>,
    /// Endpoints present in the big case.
    big: usize,
    /// Restore of `big` endpoints: the fabric's own figure, and until `status` answers (ms).
    restore_ms: f64,
    ready_ms: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

/// One control connection, as an orchestrator keeps one.
struct Ctl(vw_ctl::Client);

impl Ctl {
    fn open(socket: &Path) -> Res<Ctl> {
        vw_ctl::Client::connect(socket).map(Ctl).map_err(|e| e.to_string())
    }

    /// Sends `r`; an error carries the fabric's reply.
    fn call(&mut self, r: vw_ctl::Request) -> Res<Duration> {
        let t = Instant::now();
        let reply = self.0.call(&r).map_err(|e| format!("{r:?}: {e}"))?;
        let dt = t.elapsed();
        match reply.error {
            Some(e) if !reply.ok => Err(format!("{r:?} refused: {} ({})", e.message, e.code.as_str())),
            _ => Ok(dt),
        }
    }

    fn add(&mut self, name: &str, path: &Path) -> Res<Duration> {
        let spec = vw_ctl::proto::EndpointSpec::VhostUser { path: path.display().to_string(), client: true, queues: 1 };
        self.call(vw_ctl::Request::EndpointAdd { name: name.into(), spec, group: false })
    }

    fn connect(&mut self, wire: u32, a: &str, b: &str) -> Res<Duration> {
        self.call(vw_ctl::Request::Connect {
            wire: Some(wire),
            endpoint: a.into(),
            peer: b.into(),
            encap: None,
            incoming: false,
            keys: None,
        })
    }
}

impl Bench {
    /// Grows the fabric of run `n` (endpoints `a`, `b` and wire 1) to
    /// `total` endpoints: client-mode vhost-user sockets no VM listens on,
    /// paired by loopback wires 2, 3, ...
    fn grow(&self, c: &mut Ctl, n: u32, from: usize, total: usize) -> Res<()> {
        for i in from..total {
            c.add(&format!("idle{i}"), &self.path(&format!("idle-{n}-{i}.sock")))?;
            if i % 2 == 1 {
                c.connect(i as u32 + 1, &format!("idle{}", i - 1), &format!("idle{i}"))?;
            }
        }
        Ok(())
    }

    /// Undoes `grow`.
    fn shrink(&self, c: &mut Ctl, from: usize, total: usize) -> Res<()> {
        for i in (from..total).rev() {
            if i % 2 == 1 {
                c.call(vw_ctl::Request::Disconnect { wire: i as u32 + 1 })?;
            }
            c.call(vw_ctl::Request::EndpointDel { name: format!("idle{i}") })?;
        }
        Ok(())
    }

    /// Per-request latency of the four changes with the fabric at its
    /// current size: connect and disconnect of one more wire, add and del
    /// of one more endpoint.
    fn change_latency(&self, c: &mut Ctl, n: u32, present: usize, reps: usize, out: &mut Scale) -> Res<()> {
        let (x, y) = (self.path(&format!("x-{n}.sock")), self.path(&format!("y-{n}.sock")));
        c.add("x", &x)?;
        c.add("y", &y)?;
        let (mut con, mut dis, mut add, mut del) = (vec![], vec![], vec![], vec![]);
        let z = self.path(&format!("z-{n}.sock"));
        for _ in 0..reps {
            con.push(c.connect(100_000, "x", "y")?.as_secs_f64() * 1e3);
            dis.push(c.call(vw_ctl::Request::Disconnect { wire: 100_000 })?.as_secs_f64() * 1e3);
            add.push(c.add("z", &z)?.as_secs_f64() * 1e3);
            del.push(c.call(vw_ctl::Request::EndpointDel { name: "z".into() })?.as_secs_f64() * 1e3);
        }
        for (kind, v) in
            [("connect", &mut con), ("disconnect", &mut dis), ("endpoint add", &mut add), ("endpoint del", &mut del)]
        {
            out.latency.push((present, kind, pct(v, 0.5), pct(v, 0.99)));
        }
        c.call(vw_ctl::Request::EndpointDel { name: "x".into() })?;
        c.call(vw_ctl::Request::EndpointDel { name: "y".into() })?;
        Ok(())
    }

    /// The scale scenario: change latency at 2, 100 and 1000 endpoints,
    /// a loopback wire's rate with 2 and with 1000 endpoints present
    /// (interleaved), and the restore of 1000 endpoints and 500 wires.
    fn scale(&mut self) -> Res<Scale> {
        let smoke = self.args.smoke;
        let big = if smoke { 100 } else { 1000 };
        let sizes: &[usize] = if smoke { &[2, 100] } else { &[2, 100, 1000] };
        let reps = if smoke { 20 } else { 200 };
        let secs = if smoke { 1.0 } else { self.args.duration };
        let state = self.path("scale-state.json");
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(self.path("scale-state.json.journal"));
        let mut out = Scale { big, ..Scale::default() };
        let r = self.start_with(Switch::FabricLoopback, 64, &["--state".into(), state.display().to_string()], None)?;
        let n = self.n;
        let sock = r.socket.clone().ok_or("the fabric has no socket")?;
        let mut c = Ctl::open(&sock)?;
        let idle = self.stats(&sock)?["mempool"]["in_use"].as_u64().unwrap_or(0);
        // Change latency as the fabric grows (the two vhost-user endpoints
        // of the rate runs count as present).
        let mut have = 2;
        for &size in sizes {
            self.grow(&mut c, n, have, size)?;
            have = size;
            self.change_latency(&mut c, n, size, reps, &mut out)?;
            eprintln!("vwbench: scale: change latency measured with {size} endpoints present");
        }
        // The rate with `big` and with 2 endpoints present, interleaved.
        for run in 0..self.args.runs {
            for present in [2, big] {
                if present == 2 {
                    self.shrink(&mut c, 2, have)?;
                } else {
                    self.grow(&mut c, n, 2, big)?;
                }
                have = present;
                let s = self.vwperf(n, 64, &[], secs)?;
                if s.rx_frames == 0 {
                    return Err("scale: no frames arrived on the loopback wire".into());
                }
                eprintln!(
                    "vwbench: scale run {}/{}: {present} endpoints, {:.3} Mpps",
                    run + 1,
                    self.args.runs,
                    s.rx_pps / 1e6
                );
                if present == 2 { &mut out.rate_small } else { &mut out.rate_big }.push(s.rx_pps / 1e6);
            }
        }
        let mut now = 0;
        wait_for("mbufs to return", 5.0, || {
            now = self.stats(&sock).ok().and_then(|v| v["mempool"]["in_use"].as_u64()).unwrap_or(u64::MAX);
            now == idle
        })
        .map_err(|_| format!("scale: {now} mbufs in use after the runs, {idle} before"))?;
        if have != big {
            self.grow(&mut c, n, have, big)?;
        }
        drop(c);
        // Restore: the same fabric started again on its state file.
        r.finish()?;
        let t = Instant::now();
        let r = self.restart(n, &["--state".into(), state.display().to_string()])?;
        out.ready_ms = t.elapsed().as_secs_f64() * 1e3;
        let log = std::fs::read_to_string(&r.log).unwrap_or_default();
        out.restore_ms = log
            .lines()
            .filter(|l| l.contains("restored"))
            .find_map(|l| l.rsplit(" in ").next()?.strip_suffix(" ms")?.parse().ok())
            .ok_or_else(|| format!("scale: no restore line in the fabric's log:\n{log}"))?;
        let st: serde_json::Value =
            serde_json::from_str(&self.vwctl(r.socket.as_ref().ok_or("no socket")?, &["--json", "status"])?)
                .map_err(|e| e.to_string())?;
        if st["endpoints"].as_u64() != Some(big as u64) {
            return Err(format!("scale: {} endpoints after the restore, {big} before", st["endpoints"]));
        }
        r.finish()?;
        Ok(out)
    }
}

fn scale_table(s: &Scale, command: &str) -> String {
    let mut o = format!(
        "Measured {} with `{command}`: one fabric (worker on the switch CPU, `--state` on), client-mode vhost-user endpoints without VMs added over one control connection, half of them paired by loopback wires. Per-request times are what the client sees, fsync of the state journal and publication to the workers included.\n\n",
        date()
    );
    o.push_str("| request | endpoints present | p50 (ms) | p99 (ms) | p50 / p50 at 2 | p99 / p99 at 2 |\n|---|---:|---:|---:|---:|---:|\n");
    for (present, kind, p50, p99) in &s.latency {
        let base = s.latency.iter().find(|l| l.0 == 2 && l.1 == *kind).map(|l| (l.2, l.3)).unwrap_or((*p50, *p99));
        o.push_str(&format!(
            "| {kind} | {present} | {p50:.2} | {p99:.2} | {:.2} | {:.2} |\n",
            p50 / base.0.max(1e-9),
            p99 / base.1.max(1e-9)
        ));
    }
    let (mut a, mut b) = (s.rate_small.clone(), s.rate_big.clone());
    let ratios: Vec<f64> = s.rate_big.iter().zip(&s.rate_small).map(|(b, a)| b / a.max(1e-9)).collect();
    let mut r = ratios.clone();
    o.push_str(&format!(
        "\nLoopback wire, 64 B, vwperf on virtio_user: {:.2} Mpps with 2 endpoints present, {:.2} Mpps with {} (runs {:?} / {:?}); median paired ratio {:.2} (target: at least 0.9).\n\n",
        median(&mut a),
        median(&mut b),
        s.big,
        s.rate_small.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
        s.rate_big.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
        median(&mut r)
    ));
    o.push_str(&format!(
        "Restore of {} endpoints and {} wires at start: {:.0} ms by the fabric's log, {:.0} ms from the process start until `vwctl status` answered (target: under 1 s).\n",
        s.big,
        s.big / 2,
        s.restore_ms,
        s.ready_ms
    ));
    o
}
