//! The endpoint directory end to end: a real etcd (Debian's `etcd-server`,
//! single node on loopback) and three `vwfabric` hosts on one underlay.
//! Wires are connected by endpoint name from one host only, and each end's
//! fabric sets up its half by itself; an end moves between hosts with no
//! command on its peer's host; etcd stops and comes back under traffic; a
//! fabric is SIGKILLed (its endpoints show as `host down` elsewhere once
//! its lease expires) and comes back from its state file.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vw_e2e::*;

const LEASE_S: &str = "2";

/// A single-node etcd on loopback, with its data in the test's directory.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
}

impl Etcd {
    fn start(env: &Env) -> Etcd {
        // Ports of this test run (several runs may share a machine).
        let base = 20000 + (std::process::id() % 2000) as u16 * 2;
        let mut e = Etcd { child: None, dir: env.dir.join("etcd"), client: base, peer: base + 1 };
        e.restart();
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Starts etcd (again, on the same data).
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .args(["--name", "vw", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("vw={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let t = Instant::now();
        while !self.etcdctl(&["endpoint", "health"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not become healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            let _ = c.wait();
        }
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "--dial-timeout", "1s", "--command-timeout", "2s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Host `i`: VTEP 10.0.0.i on `ul`, in directory domain `t`.
fn host(env: &Env, ul: &mut Underlay, etcd: &Etcd, i: u32, more: &[&str]) -> Fabric {
    let mut extra: Vec<String> = [
        "--directory",
        &etcd.url(),
        "--directory-domain",
        "t",
        "--host-name",
        &format!("h{i}"),
        "--directory-lease-s",
        LEASE_S,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    extra.extend(more.iter().map(|s| s.to_string()));
    host_on(env, ul, i, &format!("10.0.0.{i}/24"), extra)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dir_state(f: &Fabric) -> Value {
    f.json(&["status"])["directory"].clone()
}

fn wire_of(f: &Fabric, id: u64) -> Option<Value> {
    f.json(&["wire", "list"]).as_array().unwrap().iter().find(|w| w["wire"] == id).cloned()
}

/// `"vm1@here"`-style ends of a wire as `wire list --json` reports them.
fn ends(w: &Value) -> Vec<String> {
    w["ends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}@{}:{}",
                e["endpoint"].as_str().unwrap(),
                e["host"].as_str().unwrap(),
                e["state"].as_str().unwrap()
            )
        })
        .collect()
}

fn refused(f: &Fabric, args: &[&str], code: &str) {
    let o = f.ctl(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("({code})")), "vwctl {args:?}: want {code}, got: {err}");
}

#[test]
fn wires_are_connected_by_name_from_one_host_and_follow_their_ends() {
    let Some(env) = setup("directory", &["etcd", "etcdctl"]) else { return };
    let mut etcd = Etcd::start(&env);
    let mut ul = Underlay::new(&env);
    let state3 = env.dir.join("h3.state");
    let mut h1 = host(&env, &mut ul, &etcd, 1, &[]);
    let mut h2 = host(&env, &mut ul, &etcd, 2, &[]);
    let s3 = state3.display().to_string();
    let mut h3 = host(&env, &mut ul, &etcd, 3, &["--state", &s3]);
    let t = &env.tag;
    let logs = |fs: &[&Fabric]| fs.iter().map(|f| format!("--- {}:\n{}", f.name, f.log_text())).collect::<String>();

    // The endpoints, each on its own host: vm1 (h1), vm2 (h2), vm3 and vm4 (h3).
    let mac2 = "02:00:00:00:02:02";
    h1.add_tap("vm1", &format!("vw{t}e1"));
    h2.add_tap_mac("vm2", &format!("vw{t}e2"), mac2);
    h3.add_tap("vm3", &format!("vw{t}e3"));
    h3.add_tap("vm4", &format!("vw{t}e4"));
    let vm1 = Vm::new(&format!("vw{t}vm1"), &format!("vw{t}e1"), "192.168.7.1/24", 1400);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &format!("vw{t}e2"), "192.168.7.2/24", 1400);
    let vm3 = Vm::new(&format!("vw{t}vm3"), &format!("vw{t}e3"), "192.168.8.3/24", 1400);
    let _vm4 = Vm::new(&format!("vw{t}vm4"), &format!("vw{t}e4"), "192.168.8.4/24", 1400);
    for f in [&h1, &h2, &h3] {
        wait_for(
            &format!("{} connected, sees 3 hosts and 4 endpoints", f.name),
            Duration::from_secs(10),
            || {
                let d = dir_state(f);
                d["state"] == "connected" && d["hosts"] == 3 && d["endpoints"] == 4
            },
            || logs(&[&h1, &h2, &h3]),
        );
    }

    // Wire 7 between vm1 (h1) and vm2 (h2), connected on h1 only.
    let w = h1.json(&["connect", "7", "vm1", "vm2"]);
    assert_eq!(w["kind"], "encap", "{w}");
    assert_eq!(w["peer"], "10.0.0.2", "{w}");
    wait_for(
        "h2 sets up its half of wire 7",
        Duration::from_secs(5),
        || wire_of(&h2, 7).is_some_and(|w| w["kind"] == "encap"),
        || logs(&[&h1, &h2]),
    );
    assert!(vm1.wait_reachable("192.168.7.2"), "{}", logs(&[&h1, &h2]));
    assert_eq!(vm1.ping("192.168.7.2", 20, 56), Ping { sent: 20, received: 20 });
    let (sent, got) = tcp_transfer(&env, &vm1.ns, &vm2.ns, "192.168.7.2", 2 << 20);
    assert_eq!(sent, got, "the receiver's byte count and SHA-256 differ from the sender's");
    let w7 = wire_of(&h1, 7).unwrap();
    assert_eq!(ends(&w7), ["vm1@h1:here", "vm2@h2:up"], "{w7}");
    assert!(h1.ctl_ok(&["wire", "list"]).contains("vm1@here <-> vm2@h2"));

    // vm3 and vm4 both live on h3: connected from h1 with no wire id, the
    // wire is allocated an id and made loopback on h3; h1 lists it as remote.
    let w = h1.json(&["connect", "vm3", "vm4"]);
    let auto = w["wire"].as_u64().unwrap();
    assert_eq!(w["kind"], "remote", "{w}");
    wait_for(
        "h3 makes the allocated wire loopback",
        Duration::from_secs(5),
        || wire_of(&h3, auto).is_some_and(|w| w["kind"] == "loopback"),
        || logs(&[&h1, &h3]),
    );
    assert!(vm3.wait_reachable("192.168.8.4"), "{}", logs(&[&h3]));
    assert_eq!(ends(&wire_of(&h2, auto).unwrap()), ["vm3@h3:up", "vm4@h3:up"], "h2 sees where the ends live");

    // Refusals, each changing nothing.
    refused(&h2, &["connect", "9", "vm1", "vm3"], "endpoint_busy");
    refused(&h2, &["connect", "9", "vm1", "nosuch"], "no_such_endpoint");
    refused(&h2, &["connect", "7", "vm5", "vm6"], "no_such_endpoint");
    h2.add_tap("vm5", &format!("vw{t}e5"));
    h2.add_tap("vm6", &format!("vw{t}e6"));
    wait_for("h3 sees vm5, vm6", Duration::from_secs(5), || dir_state(&h3)["endpoints"] == 6, || logs(&[&h2, &h3]));
    refused(&h3, &["connect", "7", "vm5", "vm6"], "wire_exists");
    refused(&h3, &["connect", &auto.to_string(), "vm5", "vm6"], "wire_exists");

    // vm2 moves from h2 to h3 (same name, same MAC): removed on h2, added on
    // h3. Nothing is run on h1, whose half re-points to h3 by itself.
    h2.ctl_ok(&["endpoint", "del", "vm2"]);
    h3.add_tap_mac("vm2", &format!("vw{t}e2b"), mac2);
    let attach_vm2 = || {
        let nic = format!("vw{t}e2b");
        vm2.ns.take(&nic);
        vm2.ns.sh(&["ip", "addr", "add", "192.168.7.2/24", "dev", &nic]);
        vm2.ns.sh(&["ip", "link", "set", &nic, "mtu", "1400", "up"]);
    };
    attach_vm2();
    wait_for(
        "h1 re-points wire 7 to h3",
        Duration::from_secs(5),
        || wire_of(&h1, 7).is_some_and(|w| w["peer"] == "10.0.0.3"),
        || logs(&[&h1, &h2, &h3]),
    );
    assert!(vm1.wait_reachable("192.168.7.2"), "{}", logs(&[&h1, &h3]));
    assert_eq!(vm1.ping("192.168.7.2", 10, 56), Ping { sent: 10, received: 10 });
    assert!(wire_of(&h2, 7).is_some_and(|w| w["kind"] == "remote"), "h2 has no half of wire 7 any more");
    assert_eq!(ends(&wire_of(&h1, 7).unwrap()), ["vm1@h1:here", "vm2@h3:up"]);

    // etcd stops: existing wires keep forwarding; changes by name are refused.
    etcd.stop();
    wait_for(
        "h1 sees the directory unavailable",
        Duration::from_secs(15),
        || dir_state(&h1)["state"] == "unavailable",
        || logs(&[&h1]),
    );
    assert_eq!(vm1.ping("192.168.7.2", 20, 56), Ping { sent: 20, received: 20 }, "wire 7 forwards without etcd");
    refused(&h1, &["connect", "9", "vm5", "vm6"], "directory_unavailable");
    assert!(h1.ctl_ok(&["status"]).contains("unavailable"));
    etcd.restart();
    for f in [&h1, &h2, &h3] {
        wait_for(
            &format!("{} reconnected", f.name),
            Duration::from_secs(15),
            || dir_state(f)["state"] == "connected",
            || logs(&[&h1, &h2, &h3]),
        );
    }
    let w = h1.json(&["connect", "9", "vm5", "vm6"]);
    assert_eq!(w["kind"], "remote", "{w}");
    wait_for(
        "h2 makes wire 9 loopback",
        Duration::from_secs(5),
        || wire_of(&h2, 9).is_some_and(|w| w["kind"] == "loopback"),
        || logs(&[&h2]),
    );
    // Disconnected from a host that has no half: each half goes.
    h1.ctl_ok(&["disconnect", "9"]);
    h1.ctl_ok(&["disconnect", &auto.to_string()]);
    wait_for(
        "the halves of the disconnected wires go",
        Duration::from_secs(5),
        || wire_of(&h2, 9).is_none() && wire_of(&h3, auto).is_none(),
        || logs(&[&h2, &h3]),
    );
    let keys =
        String::from_utf8_lossy(&etcd.etcdctl(&["get", "--prefix", "--keys-only", "/virtualwire/t/wires/"]).stdout)
            .to_string();
    assert_eq!(keys.split_whitespace().collect::<Vec<_>>(), ["/virtualwire/t/wires/0000000007"], "{keys}");

    // h3 dies: once its lease expires, h1 shows vm2's host as down and keeps
    // its half; h3 restarts from its state file and advertises again.
    h3.kill9();
    wait_for(
        "h1 sees h3 down",
        Duration::from_secs(10),
        || ends(&wire_of(&h1, 7).unwrap())[1] == "vm2@h3:host down",
        || logs(&[&h1]),
    );
    assert_eq!(dir_state(&h1)["hosts"], 2);
    assert!(wire_of(&h1, 7).is_some_and(|w| w["kind"] == "encap" && w["peer"] == "10.0.0.3"), "h1 keeps its half");
    h3 = host(&env, &mut ul, &etcd, 3, &["--state", &s3]);
    attach_vm2();
    wait_for(
        "h1 sees h3 up again",
        Duration::from_secs(10),
        || ends(&wire_of(&h1, 7).unwrap())[1] == "vm2@h3:up",
        || logs(&[&h1, &h3]),
    );
    assert!(vm1.wait_reachable("192.168.7.2"), "{}", logs(&[&h1, &h3]));
    assert_eq!(vm1.ping("192.168.7.2", 10, 56), Ping { sent: 10, received: 10 });

    // Disconnected from h2 (no end there): both halves go.
    h2.ctl_ok(&["disconnect", "7"]);
    wait_for(
        "wire 7's halves go",
        Duration::from_secs(5),
        || wire_of(&h1, 7).is_none() && wire_of(&h3, 7).is_none(),
        || logs(&[&h1, &h3]),
    );
    for f in [&h1, &h2, &h3] {
        assert!(!f.log_text().contains("panicked"), "{}", f.log_text());
    }
}
