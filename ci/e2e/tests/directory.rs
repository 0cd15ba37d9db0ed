//! The endpoint directory end to end: a real etcd (Debian's `etcd-server`,
//! single node on loopback) and three `vwfabric` hosts on one underlay.
//! Wires are connected by endpoint name from one host only, and each end's
//! fabric sets up its half by itself; an end moves between hosts with no
//! command on its peer's host; etcd stops and comes back under traffic; a
//! fabric is SIGKILLed (its endpoints show as `host down` elsewhere once
//! its lease expires) and comes back from its state file.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vw_e2e::etcd::{certificates, Etcd};
use vw_e2e::*;

const LEASE_S: &str = "2";

/// Host `i`: VTEP 10.0.0.i on `ul`, in directory domain `t`.
fn host(env: &Env, ul: &mut Underlay, etcd: &str, i: u32, more: &[&str]) -> Fabric {
    let mut extra: Vec<String> = ["--directory", etcd, "--directory-domain", "t", "--directory-lease-s", LEASE_S]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !more.contains(&"--host-name") {
        extra.extend(["--host-name".to_owned(), format!("h{i}")]);
    }
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
    let mut h1 = host(&env, &mut ul, &etcd.url(), 1, &[]);
    let mut h2 = host(&env, &mut ul, &etcd.url(), 2, &[]);
    let s3 = state3.display().to_string();
    let mut h3 = host(&env, &mut ul, &etcd.url(), 3, &["--state", &s3]);
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

    // h2 adds an endpoint named vm1 too: h1 advertised it first and keeps
    // it (no VM runs on either), h2 reports the conflict, wire 7 is as it
    // was; removed from h2, the conflict is gone.
    h2.add_tap("vm1", &format!("vw{t}x1"));
    wait_for(
        "h2 reports that vm1 lives on h1",
        Duration::from_secs(5),
        || dir_state(&h2)["problems"].to_string().contains("endpoint vm1: lives on host h1"),
        || logs(&[&h2]),
    );
    assert_eq!(ends(&wire_of(&h3, 7).unwrap()), ["vm1@h1:up", "vm2@h2:up"], "h3 still sees vm1 on h1");
    assert_eq!(vm1.ping("192.168.7.2", 5, 56), Ping { sent: 5, received: 5 });
    h2.ctl_ok(&["endpoint", "del", "vm1"]);
    wait_for(
        "h2's conflict is gone",
        Duration::from_secs(5),
        || !dir_state(&h2)["problems"].to_string().contains("vm1"),
        || logs(&[&h2]),
    );

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
    h3 = host(&env, &mut ul, &etcd.url(), 3, &["--state", &s3]);
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

/// etcd over TLS with client certificates and the roles
/// `directory/etcd-roles.sh` sets up: wires by name work across two
/// fabrics, and a host's certificate cannot write another host's keys,
/// neither with etcdctl nor as a fabric started under another host's name.
#[test]
fn each_host_writes_only_its_own_keys() {
    let Some(env) = setup("directory-tls", &["etcd", "etcdctl", "openssl"]) else { return };
    let certs = env.dir.join("certs");
    certificates(&certs, &["server", "root", "h1", "h2", "h3"]);
    let etcd = Etcd::start_on(&env, 1, Some(certs.clone()));
    let [ca, root, root_key] = etcd.cert("root");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../directory/etcd-roles.sh");
    let o = Command::new("sh")
        .arg(&script)
        .args(["t", "h1", "h2"])
        .env("ETCDCTL_ENDPOINTS", etcd.url())
        .env("ETCDCTL_CACERT", &ca)
        .env("ETCDCTL_CERT", &root)
        .env("ETCDCTL_KEY", &root_key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "etcd-roles.sh: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let mut ul = Underlay::new(&env);
    let tls = |name: &str| {
        let [ca, cert, key] = etcd.cert(name);
        vec!["--directory-ca".to_owned(), ca, "--directory-cert".to_owned(), cert, "--directory-key".to_owned(), key]
    };
    let mut h1 = host(&env, &mut ul, &etcd.url(), 1, &tls("h1").iter().map(String::as_str).collect::<Vec<_>>());
    let mut h2 = host(&env, &mut ul, &etcd.url(), 2, &tls("h2").iter().map(String::as_str).collect::<Vec<_>>());
    let t = &env.tag;
    let logs = |fs: &[&Fabric]| fs.iter().map(|f| format!("--- {}:\n{}", f.name, f.log_text())).collect::<String>();
    h1.add_tap("vm1", &format!("vw{t}f1"));
    h2.add_tap("vm2", &format!("vw{t}f2"));
    let vm1 = Vm::new(&format!("vw{t}tv1"), &format!("vw{t}f1"), "192.168.9.1/24", 1400);
    let _vm2 = Vm::new(&format!("vw{t}tv2"), &format!("vw{t}f2"), "192.168.9.2/24", 1400);
    for f in [&h1, &h2] {
        wait_for(
            &format!("{} connected over TLS, sees 2 hosts and 2 endpoints", f.name),
            Duration::from_secs(10),
            || {
                let d = dir_state(f);
                d["state"] == "connected" && d["hosts"] == 2 && d["endpoints"] == 2
            },
            || logs(&[&h1, &h2]),
        );
    }
    let w = h1.json(&["connect", "7", "vm1", "vm2"]);
    assert_eq!(w["kind"], "encap", "{w}");
    wait_for("h2 sets up its half", Duration::from_secs(5), || wire_of(&h2, 7).is_some(), || logs(&[&h1, &h2]));
    assert!(vm1.wait_reachable("192.168.9.2"), "{}", logs(&[&h1, &h2]));

    // h1's certificate may not touch h2's keys: etcd refuses.
    let h2_key = "/virtualwire/t/endpoints/h2/vm2";
    for (key, value) in [
        (h2_key, r#"{"group":false,"vm":"running"}"#),
        ("/virtualwire/t/hosts/h2", r#"{"vtep":"10.0.0.1"}"#),
        ("/virtualwire/t/endpoints/h2/vm9", "{}"),
        ("/virtualwire/other/wires/0000000001", "{}"),
    ] {
        let o = etcd.etcdctl_as("h1", &["put", key, value]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("permission denied"), "h1 writing {key}: {err}");
    }
    let o = etcd.etcdctl_as("h1", &["del", h2_key]);
    assert!(!o.status.success(), "h1 deleting {h2_key}: {}", String::from_utf8_lossy(&o.stdout));
    // Its own keys it may write.
    assert!(etcd.etcdctl_as("h1", &["put", "/virtualwire/t/endpoints/h1/scratch", "{}"]).status.success());
    assert!(etcd.etcdctl_as("h1", &["del", "/virtualwire/t/endpoints/h1/scratch"]).status.success());

    // A fabric with h3's certificate (h3 has no role) or started as h2 with
    // h1's certificate cannot advertise itself: it says why.
    let mut as_h2 = vec!["--host-name".to_owned(), "h2".to_owned()];
    as_h2.extend(tls("h1"));
    for (i, more) in [(3, tls("h3")), (4, as_h2)] {
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        let f = host(&env, &mut ul, &etcd.url(), i, &more);
        wait_for(
            &format!("{} refused by etcd", f.name),
            Duration::from_secs(10),
            || {
                let d = dir_state(&f);
                d["state"] == "unavailable" && d["reason"].as_str().is_some_and(|r| r.contains("permission denied"))
            },
            || logs(&[&f]),
        );
    }
    // Nothing of h2's changed; the wire still carries frames.
    let v = String::from_utf8_lossy(&etcd.etcdctl(&["get", "--print-value-only", "/virtualwire/t/hosts/h2"]).stdout)
        .to_string();
    assert!(v.contains("10.0.0.2"), "h2's host key: {v}");
    assert_eq!(vm1.ping("192.168.9.2", 10, 56), Ping { sent: 10, received: 10 });
    assert!(wire_of(&h2, 7).is_some_and(|w| w["peer"] == "10.0.0.1"), "{}", logs(&[&h2]));
}

/// A 3-member etcd cluster on loopback: one member killed, the fabrics go
/// on (changes by name too); quorum lost, every wire keeps forwarding and
/// changes are refused with `directory_unavailable`; quorum back, the
/// fabrics converge: changes work again, and each wire exists once.
#[test]
fn a_cluster_that_loses_members_and_quorum() {
    let Some(env) = setup("directory-cluster", &["etcd", "etcdctl"]) else { return };
    let mut ms = Etcd::cluster(&env);
    let urls = ms.iter().map(Etcd::url).collect::<Vec<_>>().join(",");
    let mut ul = Underlay::new(&env);
    let mut h1 = host(&env, &mut ul, &urls, 1, &[]);
    let mut h2 = host(&env, &mut ul, &urls, 2, &[]);
    let t = &env.tag;
    let logs = |fs: &[&Fabric]| fs.iter().map(|f| format!("--- {}:\n{}", f.name, f.log_text())).collect::<String>();
    for (i, f) in [&mut h1, &mut h2].into_iter().enumerate() {
        for j in 0..2 {
            f.add_tap(&format!("c{}{j}", i + 1), &format!("vw{t}c{}{j}", i + 1));
        }
    }
    let a = Vm::new(&format!("vw{t}ca"), &format!("vw{t}c10"), "192.168.10.1/24", 1400);
    let _b = Vm::new(&format!("vw{t}cb"), &format!("vw{t}c20"), "192.168.10.2/24", 1400);
    for f in [&h1, &h2] {
        wait_for(
            &format!("{} connected to the cluster, sees 4 endpoints", f.name),
            Duration::from_secs(10),
            || {
                let d = dir_state(f);
                d["state"] == "connected" && d["endpoints"] == 4
            },
            || logs(&[&h1, &h2]),
        );
    }
    h1.json(&["connect", "7", "c10", "c20"]);
    wait_for("h2's half of wire 7", Duration::from_secs(5), || wire_of(&h2, 7).is_some(), || logs(&[&h1, &h2]));
    assert!(a.wait_reachable("192.168.10.2"), "{}", logs(&[&h1, &h2]));

    // The first member (the one each fabric lists first) is killed: the
    // cluster has quorum; a change by name goes through (retried while the
    // client moves to another member).
    let kill = |m: &mut Etcd| {
        if let Some(mut c) = m.child.take() {
            let _ = run(&["kill", "-KILL", &c.id().to_string()]);
            let _ = c.wait();
        }
    };
    kill(&mut ms[0]);
    let t0 = Instant::now();
    loop {
        let o = h2.ctl(&["connect", "8", "c11", "c21"]);
        if o.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains("directory_unavailable"), "connect with one member down: {err}");
        assert!(t0.elapsed() < Duration::from_secs(15), "no connect within 15 s of one member down: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for("h1's half of wire 8", Duration::from_secs(5), || wire_of(&h1, 8).is_some(), || logs(&[&h1, &h2]));
    assert_eq!(a.ping("192.168.10.2", 10, 56), Ping { sent: 10, received: 10 }, "wire 7 with one member down");

    // A second member killed: no quorum. Wires forward; changes refused.
    kill(&mut ms[1]);
    wait_for(
        "h1 sees the directory unavailable",
        Duration::from_secs(20),
        || dir_state(&h1)["state"] == "unavailable",
        || logs(&[&h1]),
    );
    assert_eq!(a.ping("192.168.10.2", 20, 56), Ping { sent: 20, received: 20 }, "wire 7 without quorum");
    refused(&h1, &["disconnect", "8"], "directory_unavailable");

    // Both back: the fabrics reconnect and converge.
    ms[0].spawn();
    ms[1].spawn();
    for f in [&h1, &h2] {
        wait_for(
            &format!("{} reconnected", f.name),
            Duration::from_secs(30),
            || dir_state(f)["state"] == "connected",
            || logs(&[&h1, &h2]),
        );
    }
    h1.ctl_ok(&["disconnect", "8"]);
    wait_for("wire 8's halves go", Duration::from_secs(5), || wire_of(&h2, 8).is_none(), || logs(&[&h2]));
    for f in [&h1, &h2] {
        let ws = f.json(&["wire", "list"]);
        let ids: Vec<u64> = ws.as_array().unwrap().iter().map(|w| w["wire"].as_u64().unwrap()).collect();
        assert_eq!(ids, [7], "{}: each wire once: {ws}", f.name);
        assert_eq!(dir_state(f)["hosts"], 2);
    }
    assert_eq!(a.ping("192.168.10.2", 10, 56), Ping { sent: 10, received: 10 });
}
