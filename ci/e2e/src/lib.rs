//! Harness for the end-to-end tests.
//!
//! Tests drive the real binaries the way an operator does: `vwfabric`
//! processes with `net_tap` ports, `vwctl` over the control socket, network
//! namespaces as VMs and as the underlay, and the kernel's own tools (ping,
//! bridges, VXLAN devices, tshark) as the far side. Everything a test
//! creates is removed when its handles drop.
//!
//! Prerequisites (root, `/dev/net/tun`, `ip`, the release binaries) are
//! checked first. Outside CI a missing one skips the test with a message
//! saying what is missing; with `CI=true` it fails the test.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, returning its output (never panics on failure).
pub fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its stderr if it fails; returns stdout.
pub fn sh(cmd: &[&str]) -> String {
    let o = run(cmd);
    if !o.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub mod etcd;
pub mod guest;
pub mod stream;

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Where the tested binaries are: `$VW_BIN_DIR`, else the cargo target
/// directory of the profile these tests were built with.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VW_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary>, or target/<profile>/<binary>
    let dir = exe.parent().expect("target/<profile>");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// One test's environment: a unique tag for names and a scratch directory.
pub struct Env {
    /// Two-to-four character tag that makes interface and namespace names unique.
    pub tag: String,
    /// Scratch directory (sockets, logs, captures).
    pub dir: PathBuf,
    /// Directory holding vwfabric, vwctl and vw-probe.
    pub bin: PathBuf,
}

/// True (after saying so) when `test` must be skipped for what is
/// `missing`; panics instead in CI (`CI=true`), where a missing
/// prerequisite is a failure.
pub fn skip_for(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return false;
    }
    let msg = format!("{test}: missing {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: a missing prerequisite is a failure)");
    }
    eprintln!("SKIPPED {msg}");
    true
}

/// Two fabrics, `h1` (VTEP 10.0.0.1) and `h2` (10.0.0.2), with net_tap
/// uplinks on one underlay bridge. Fields drop in order: the fabrics first.
pub fn two_fabrics(env: &Env) -> (Fabric, Fabric, Underlay) {
    let t = &env.tag;
    let mut ul = Underlay::new(env);
    let (up1, up2) = (format!("vw{t}u1"), format!("vw{t}u2"));
    let h1 = Fabric::start(
        env,
        "h1",
        FabricOpts { uplink: Some((up1.clone(), "10.0.0.1/24".into())), ..Default::default() },
    );
    let h2 = Fabric::start(
        env,
        "h2",
        FabricOpts { uplink: Some((up2.clone(), "10.0.0.2/24".into())), ..Default::default() },
    );
    ul.plug(&up1);
    ul.plug(&up2);
    (h1, h2, ul)
}

/// A migration key file (mode 0600) in the test's directory; returns its path.
pub fn migration_key(env: &Env) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = env.dir.join("migration.key");
    std::fs::write(&p, "5f3a9c0e1b7d2486a1c4e9f07b3d5a6c8e2f4a1b9d0c7e3f5a2b8c4d6e1f0a9b\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// Host `i` of a migration test: fabric `h{i}` with VTEP 10.77.0.{i}/24 on
/// `underlay`, the migration channel keyed by `key`, grace `grace_ms`.
pub fn migration_host(env: &Env, underlay: &mut Underlay, i: u32, key: &str, grace_ms: u64) -> Fabric {
    migration_host_with(env, underlay, i, key, grace_ms, &[])
}

/// [`migration_host`] with more vwfabric options (`--state FILE`, say).
/// Called again after the fabric stopped, it starts it again, plugged in
/// again.
pub fn migration_host_with(
    env: &Env,
    underlay: &mut Underlay,
    i: u32,
    key: &str,
    grace_ms: u64,
    more: &[&str],
) -> Fabric {
    let mut extra: Vec<String> =
        vec!["--migration-key-file".into(), key.into(), "--migration-grace-ms".into(), grace_ms.to_string()];
    extra.extend(more.iter().map(|m| m.to_string()));
    host_on(env, underlay, i, &format!("10.77.0.{i}/24"), extra)
}

/// Fabric `h{i}` with its uplink `vw<tag>u{i}` plugged into `underlay`,
/// VTEP `vtep` (CIDR) and the vwfabric options `extra`.
pub fn host_on(env: &Env, underlay: &mut Underlay, i: u32, vtep: &str, extra: Vec<String>) -> Fabric {
    let up = format!("vw{}u{i}", env.tag);
    let f = Fabric::start(
        env,
        &format!("h{i}"),
        FabricOpts { uplink: Some((up.clone(), vtep.to_owned())), extra, ..Default::default() },
    );
    underlay.plug(&up);
    f
}

/// Checks the prerequisites for `test` (plus `tools`). Returns `None` to skip
/// (outside CI); panics in CI (`CI=true`) when something is missing.
pub fn setup(test: &str, tools: &[&str]) -> Option<Env> {
    let bin = bin_dir();
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces, TUN devices)".to_string());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".to_string());
    }
    for t in ["ip", "ping"].iter().chain(tools) {
        if !have(t) {
            missing.push(format!("the `{t}` command"));
        }
    }
    for b in ["vwfabric", "vwctl", "vw-probe", "vwperf", "vwbench"] {
        if !bin.join(b).exists() {
            missing.push(format!("{} (run `cargo build --release --workspace` first)", bin.join(b).display()));
        }
    }
    if skip_for(test, &missing) {
        return None;
    }
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag = format!("{}{n}", (b'a' + (std::process::id() % 26) as u8) as char);
    let dir = std::env::temp_dir().join(format!("vw-e2e-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Some(Env { tag, dir, bin })
}

/// Free 2 MB hugepages.
pub fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("HugePages_Free:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Checks that hugepages are there (virtio_user needs them). Outside CI a
/// shortage skips the test; with `CI=true` it fails it.
pub fn require_hugepages(test: &str) -> bool {
    let free = hugepages_free();
    if free >= 128 {
        return true;
    }
    let msg = format!("{test}: needs 128 free 2 MB hugepages for virtio_user, {free} free (ci/setup.sh sets them up)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: a missing prerequisite is a failure)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// Runs vwperf as the VM side of `sockets` with `args`, to completion,
/// and returns its `--json` summary.
pub fn vwperf(env: &Env, name: &str, sockets: &[&Path], args: &[&str]) -> Value {
    let out = vwperf_cmd(env, name, sockets, args).output().expect("run vwperf");
    assert!(
        out.status.success(),
        "vwperf {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("vwperf --json prints JSON")
}

/// The vwperf command line, to spawn it in the background.
pub fn vwperf_cmd(env: &Env, name: &str, sockets: &[&Path], args: &[&str]) -> Command {
    let mut c = Command::new(env.bin.join("vwperf"));
    for s in sockets {
        c.arg("--vhost-user").arg(s);
    }
    c.args(args).arg("--json").args([
        "--",
        "--lcores",
        "0@0,1@0",
        "--file-prefix",
        &format!("vwe2e-{}-{name}", env.tag),
        "--in-memory",
        "--single-file-segments",
        "-m",
        "128",
        "--no-pci",
        "--log-level=*:warning",
    ]);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with loopback up and IPv6 off (no router
    /// solicitations or MLD reports in the counters).
    pub fn new(name: &str) -> Netns {
        let _ = run(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name]);
        let ns = Netns { name: name.to_owned() };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns.sh(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.sh(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    fn cmd<'a>(&'a self, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(cmd);
        v
    }

    /// Runs a command inside; panics on failure.
    pub fn sh(&self, cmd: &[&str]) -> String {
        sh(&self.cmd(cmd))
    }

    /// Runs a command inside.
    pub fn run(&self, cmd: &[&str]) -> Output {
        run(&self.cmd(cmd))
    }

    /// Starts a command inside with piped stdout/stderr.
    pub fn spawn(&self, cmd: &[&str]) -> Child {
        let v = self.cmd(cmd);
        Command::new(v[0])
            .args(&v[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {v:?}: {e}"))
    }

    /// Moves interface `iface` from the root namespace into this one.
    pub fn take(&self, iface: &str) {
        // The tap may take a moment to appear after the port starts.
        let t = Instant::now();
        while !run(&["ip", "link", "show", iface]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(5), "interface {iface} did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        sh(&["ip", "link", "set", iface, "netns", &self.name]);
        self.sh(&["sysctl", "-qw", &format!("net.ipv6.conf.{iface}.disable_ipv6=1")]);
    }

    /// Sends raw Ethernet frames on `iface` (an AF_PACKET socket).
    pub fn send_raw(&self, iface: &str, frames: &[Vec<u8>]) {
        const SCRIPT: &str = "import socket,sys\n\
            s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
            s.bind((sys.argv[1],0))\n\
            for l in sys.stdin:\n    l=l.strip()\n    l and s.send(bytes.fromhex(l))\n";
        let mut child = self.spawn(&["python3", "-c", SCRIPT, iface]);
        let mut input = String::new();
        for f in frames {
            for b in f {
                let _ = write!(input, "{b:02x}");
            }
            input.push('\n');
        }
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "raw send failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then delete.
        let pids = run(&["ip", "netns", "pids", &self.name]).stdout;
        for p in String::from_utf8_lossy(&pids).split_whitespace() {
            let _ = run(&["kill", "-9", p]);
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A namespace standing in for a VM, with one NIC (a fabric endpoint's tap).
pub struct Vm {
    /// The namespace.
    pub ns: Netns,
    /// The NIC inside.
    pub iface: String,
}

/// Outcome of a ping run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Echo requests sent.
    pub sent: u32,
    /// Echo replies received.
    pub received: u32,
}

impl Vm {
    /// Moves `iface` into a new namespace `name` and gives it `addr` (CIDR).
    pub fn new(name: &str, iface: &str, addr: &str, mtu: u16) -> Vm {
        let ns = Netns::new(name);
        ns.take(iface);
        ns.sh(&["ip", "addr", "add", addr, "dev", iface]);
        ns.sh(&["ip", "link", "set", iface, "mtu", &mtu.to_string()]);
        ns.sh(&["ip", "link", "set", iface, "up"]);
        Vm { ns, iface: iface.to_owned() }
    }

    /// Takes the NIC back after the fabric recreated its tap (a restart):
    /// moves it in again and gives it `addr` and `mtu`.
    pub fn reattach(&self, addr: &str, mtu: u16) {
        self.ns.take(&self.iface);
        self.ns.sh(&["ip", "addr", "add", addr, "dev", &self.iface]);
        self.ns.sh(&["ip", "link", "set", &self.iface, "mtu", &mtu.to_string()]);
        self.ns.sh(&["ip", "link", "set", &self.iface, "up"]);
    }

    /// Pings `dst` `count` times with `size` payload bytes and DF set.
    pub fn ping(&self, dst: &str, count: u32, size: u32) -> Ping {
        let o = self.ns.run(&[
            "ping",
            "-n",
            "-q",
            "-M",
            "do",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "1",
            "-s",
            &size.to_string(),
            dst,
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out.lines().find(|l| l.contains("transmitted")).unwrap_or("");
        let num = |word: &str| -> u32 {
            line.split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ping { sent: num("transmitted"), received: num("received") }
    }

    /// Waits until `dst` answers a ping (ARP and the wire settle), up to 10 s.
    pub fn wait_reachable(&self, dst: &str) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.ping(dst, 1, 56).received == 1 {
                return true;
            }
        }
        false
    }
}

/// Sends `bytes` over TCP from namespace `from` to `to_addr` (an address in
/// namespace `to`) and returns what each side reports: `"<bytes> <sha256>"`.
pub fn tcp_transfer(env: &Env, from: &Netns, to: &Netns, to_addr: &str, bytes: u64) -> (String, String) {
    let probe = env.bin.join("vw-probe");
    let probe = probe.to_str().unwrap();
    let mut rx = to.spawn(&[probe, "tcp-recv", "5001"]);
    let mut rd = BufReader::new(rx.stdout.take().unwrap());
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening", "receiver did not start");
    let tx = from.run(&[probe, "tcp-send", &format!("{to_addr}:5001"), &bytes.to_string()]);
    let sent = String::from_utf8_lossy(&tx.stdout).trim().to_owned();
    let mut got = String::new();
    rd.read_to_string_lossy(&mut got);
    let status = rx.wait().unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut rx.stderr.take().unwrap(), &mut err);
    assert!(tx.status.success(), "sender failed: {}", String::from_utf8_lossy(&tx.stderr));
    assert!(status.success(), "receiver failed: {err}");
    (sent, got.trim().to_owned())
}

trait ReadLossy {
    fn read_to_string_lossy(&mut self, s: &mut String);
}

impl<R: std::io::Read> ReadLossy for BufReader<R> {
    fn read_to_string_lossy(&mut self, s: &mut String) {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(self, &mut v);
        s.push_str(&String::from_utf8_lossy(&v));
    }
}

/// The underlay: a namespace with a Linux bridge that uplinks plug into.
pub struct Underlay {
    /// The namespace (the bridge is `br0` inside it).
    pub ns: Netns,
    ports: u32,
}

impl Underlay {
    /// Creates the namespace and bridge.
    pub fn new(env: &Env) -> Underlay {
        let ns = Netns::new(&format!("vw{}-ul", env.tag));
        ns.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.sh(&["ip", "link", "set", "br0", "up"]);
        Underlay { ns, ports: 0 }
    }

    /// Plugs interface `iface` (an uplink tap) into the bridge. The switch
    /// side gets its own MAC: net_tap gives the kernel side the PMD's MAC,
    /// and a bridge treats its ports' MACs as its own local addresses, so it
    /// would keep the fabric's frames instead of forwarding them.
    pub fn plug(&mut self, iface: &str) {
        self.plug_into(iface, "br0");
    }

    /// Like `plug`, into bridge `bridge`.
    pub fn plug_into(&mut self, iface: &str, bridge: &str) {
        self.ports += 1;
        self.ns.take(iface);
        self.ns.sh(&["ip", "link", "set", iface, "address", &format!("02:00:5e:ff:00:{:02x}", self.ports)]);
        self.ns.sh(&["ip", "link", "set", iface, "master", bridge]);
        self.ns.sh(&["ip", "link", "set", iface, "up"]);
    }

    /// Makes the underlay namespace a router: `br0` gets `addr0` and a second
    /// bridge `br1` (created here) gets `addr1`, with forwarding on.
    pub fn route(&mut self, addr0: &str, addr1: &str) {
        self.ns.sh(&["ip", "link", "add", "br1", "type", "bridge"]);
        self.ns.sh(&["ip", "link", "set", "br1", "up"]);
        self.ns.sh(&["ip", "addr", "add", addr0, "dev", "br0"]);
        self.ns.sh(&["ip", "addr", "add", addr1, "dev", "br1"]);
        self.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    }

    /// Adds a Linux host on the underlay: a namespace joined to the bridge by
    /// a veth pair, its end named `eth0` with address `addr` (CIDR).
    pub fn linux_host(&mut self, name: &str, addr: &str) -> Netns {
        self.ports += 1;
        let host = Netns::new(name);
        let br_end = format!("{name}-br");
        self.ns.sh(&["ip", "link", "add", &br_end, "type", "veth", "peer", "name", "eth0", "netns", &host.name]);
        self.ns.sh(&["ip", "link", "set", &br_end, "master", "br0"]);
        self.ns.sh(&["ip", "link", "set", &br_end, "up"]);
        host.sh(&["ip", "addr", "add", addr, "dev", "eth0"]);
        host.sh(&["ip", "link", "set", "eth0", "up"]);
        host
    }
}

/// How to start a fabric.
#[derive(Debug, Clone, Default)]
pub struct FabricOpts {
    /// Uplink tap interface name and VTEP CIDR.
    pub uplink: Option<(String, String)>,
    /// Extra vwfabric options.
    pub extra: Vec<String>,
    /// EAL `--lcores` (default `0@0,1@1`: one worker).
    pub lcores: Option<String>,
    /// A fixed MAC for the uplink (default: random at every start), as a
    /// NIC keeps its MAC across restarts of the fabric.
    pub uplink_mac: Option<String>,
}

/// A running `vwfabric` process.
pub struct Fabric {
    /// Short name (used in socket, log and DPDK file-prefix names).
    pub name: String,
    /// Control socket.
    pub socket: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
    bin: PathBuf,
    next_tap: u32,
}

impl Fabric {
    /// Starts a fabric and waits for its control socket.
    pub fn start(env: &Env, name: &str, opts: FabricOpts) -> Fabric {
        let socket = env.dir.join(format!("{name}.sock"));
        let log = env.dir.join(format!("{name}.log"));
        let mut args: Vec<String> = vec!["--socket".into(), socket.display().to_string()];
        if let Some((iface, vtep)) = &opts.uplink {
            let mac = opts.uplink_mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default();
            args.extend(["--uplink".into(), format!("net_tap0,iface={iface}{mac}"), "--vtep".into(), vtep.clone()]);
        }
        // Several fabrics share this machine's two cores: back off when idle.
        args.extend(["--idle-sleep-us".into(), "20".into(), "--mbufs".into(), "8192".into()]);
        args.extend(opts.extra.iter().cloned());
        let lcores = opts.lcores.clone().unwrap_or_else(|| "0@0,1@1".into());
        args.extend(
            [
                "--",
                "--lcores",
                &lcores,
                "--no-huge",
                "-m",
                "192",
                "--file-prefix",
                &format!("vwe2e-{}-{name}", env.tag),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(env.bin.join("vwfabric"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start vwfabric");
        let mut f =
            Fabric { name: name.to_owned(), socket, log, child: Some(child), bin: env.bin.clone(), next_tap: 1 };
        let t = Instant::now();
        loop {
            if f.socket.exists() && f.ctl(&["status"]).status.success() {
                break;
            }
            if let Some(st) = f.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vwfabric {name} exited at start ({st}):\n{}", f.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "vwfabric {name} did not open its socket:\n{}",
                f.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        f
    }

    /// The fabric's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs vwctl against this fabric.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("vwctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vwctl")
    }

    /// Runs vwctl and panics (with the fabric log) if it fails; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "vwctl {args:?} failed: {}{}\n--- {} log ---\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.name,
            self.log_text()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `vwctl --json ARGS` and parses the result.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut v = vec!["--json"];
        v.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&v)).expect("vwctl --json prints JSON")
    }

    /// Adds a net_tap endpoint `name` whose kernel interface is `iface`.
    pub fn add_tap(&mut self, name: &str, iface: &str) {
        self.add_tap_devargs(name, &format!("iface={iface}"));
    }

    /// Adds a net_tap endpoint like `add_tap`, with a fixed MAC (a VM's NIC
    /// keeps its MAC when the fabric restarts and recreates the tap).
    pub fn add_tap_mac(&mut self, name: &str, iface: &str, mac: &str) {
        self.add_tap_devargs(name, &format!("iface={iface},mac={mac}"));
    }

    fn add_tap_devargs(&mut self, name: &str, devargs: &str) {
        let dev = format!("net_tap{},{devargs}", self.next_tap);
        self.next_tap += 1;
        self.ctl_ok(&["endpoint", "add", name, &dev]);
    }

    /// A drop counter (summed over workers).
    pub fn drops(&self, reason: &str) -> u64 {
        let s = self.json(&["stats"]);
        s["drops"][reason].as_u64().unwrap_or_else(|| panic!("no drop reason {reason:?} in {}", s["drops"]))
    }

    /// All drop counters.
    pub fn all_drops(&self) -> Value {
        self.json(&["stats"])["drops"].clone()
    }

    /// Counters of one port by name (`uplink` or an endpoint name).
    pub fn port(&self, name: &str) -> Value {
        let s = self.json(&["stats"]);
        s["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
    }

    /// One wire from `wire list`.
    pub fn wire(&self, id: u32) -> Value {
        let l = self.json(&["wire", "list"]);
        l.as_array().unwrap().iter().find(|w| w["wire"] == id).cloned().unwrap_or(Value::Null)
    }

    /// Mbufs of the fabric's pool in use now (`vwctl stats`: `mempool.in_use`).
    pub fn mbufs_in_use(&self) -> u64 {
        self.json(&["stats"])["mempool"]["in_use"].as_u64().expect("stats has mempool.in_use")
    }

    /// The fabric's idle mbuf count: what its ports' RX rings hold with no
    /// traffic (two readings 200 ms apart that agree).
    pub fn mbufs_idle(&self) -> u64 {
        let mut last = self.mbufs_in_use();
        for _ in 0..25 {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.mbufs_in_use();
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("{}: mbufs in use never settled (last {last})", self.name);
    }

    /// Asserts that, traffic having stopped, the mbufs in use return to
    /// `idle` (or fewer: frames that were passing through when `idle` was
    /// read have gone) within 5 s: nothing leaked or stayed queued.
    pub fn assert_no_mbuf_leak(&self, idle: u64) {
        let t = Instant::now();
        let mut now = self.mbufs_in_use();
        while now > idle && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            now = self.mbufs_in_use();
        }
        assert!(
            now <= idle,
            "{}: {now} mbufs in use 5 s after the traffic stopped, {idle} when idle before it\n{}",
            self.name,
            self.ctl(&["stats"]).stdout.iter().map(|&b| b as char).collect::<String>()
        );
    }

    /// Disconnects every wire and removes every endpoint, as an operator
    /// would, then asserts the mbufs in use return to `bare`: what the
    /// fabric held before it had endpoints (its uplink's RX ring). Whatever
    /// an endpoint, a wire, a hold queue or a handoff ring held came back.
    pub fn assert_teardown_frees_every_mbuf(&self, bare: u64) {
        // A wire whose end moved away is listed until its grace period
        // ends; it is not connected here and goes by itself.
        // One control connection for all of it (a fabric may hold a
        // thousand endpoints).
        use vw_ctl::proto::Request;
        let mut c = vw_ctl::client::Client::connect(&self.socket).expect("connect to the control socket");
        let mut call = |r: Request| {
            let reply = c.call(&r).unwrap_or_else(|e| panic!("{r:?}: {e}"));
            assert!(reply.ok, "{r:?} refused: {:?}", reply.error);
        };
        for w in self.json(&["wire", "list"]).as_array().unwrap().iter().filter(|w| w["kind"] != "moved") {
            call(Request::Disconnect { wire: w["wire"].as_u64().unwrap() as u32 });
        }
        for e in self.json(&["endpoint", "list"]).as_array().unwrap() {
            call(Request::EndpointDel { name: e["name"].as_str().unwrap().to_owned() });
        }
        self.assert_no_mbuf_leak(bare);
    }

    /// Kills the fabric with SIGKILL (a crash), without any cleanup.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("fabric already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the fabric with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("fabric already stopped");
        let _ = run(&["kill", "-TERM", &child.id().to_string()]);
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let st = child.wait().unwrap();
                panic!("vwfabric {} did not stop within 10 s of SIGTERM ({st}):\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tshark capture running in a namespace, written to a pcap file.
pub struct Capture {
    child: Child,
    /// The pcap file.
    pub file: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` inside `ns`; returns once tshark captures.
    pub fn start(ns: &Netns, iface: &str, file: PathBuf, filter: &str) -> Capture {
        let f = file.display().to_string();
        let mut child = ns.spawn(&["tshark", "-q", "-i", iface, "-F", "pcap", "-w", &f, "-f", filter]);
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            line.clear();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.contains("Capturing on") {
                // Keep draining stderr so tshark never blocks on it.
                std::thread::spawn(move || for _ in err.lines() {});
                // tshark says so a moment before dumpcap's socket is live.
                std::thread::sleep(Duration::from_millis(300));
                return Capture { child, file };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("tshark did not start capturing on {iface}: {line}");
    }

    /// Stops the capture (SIGINT) and waits for the file to be complete.
    pub fn stop(mut self) -> PathBuf {
        // dumpcap reads the kernel's ring in batches; frames still there at
        // SIGINT would be lost.
        std::thread::sleep(Duration::from_millis(700));
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        let _ = self.child.wait();
        self.file.clone()
    }
}

/// Decodes a pcap with tshark into rows of the given fields (`-T fields`).
pub fn tshark_fields(file: &Path, extra: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let f = file.display().to_string();
    let mut cmd: Vec<&str> = vec!["tshark", "-n", "-r", &f];
    cmd.extend_from_slice(extra);
    cmd.extend(["-T", "fields", "-E", "separator=|"]);
    for field in fields {
        cmd.extend(["-e", field]);
    }
    sh(&cmd).lines().map(|l| l.split('|').map(str::to_owned).collect()).collect()
}

/// The frames of a classic (libpcap) capture file: either byte order,
/// microsecond or nanosecond time stamps.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() >= 24, "{}: not a pcap file ({} bytes)", path.display(), b.len());
    let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => panic!("{}: not a pcap file (magic {m:#010x})", path.display()),
    };
    let rd = |o: usize| {
        let x = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        }
    };
    let (mut o, mut out) = (24, Vec::new());
    while o + 16 <= b.len() {
        let n = rd(o + 8) as usize;
        o += 16;
        out.push(b[o..(o + n).min(b.len())].to_vec());
        o += n;
    }
    out
}

/// Writes `frames` as a classic pcap file (Ethernet, microsecond stamps 1 µs apart).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [1_800_000_000u32, i as u32, f.len() as u32, f.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
