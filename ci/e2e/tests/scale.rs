//! Host scale: a thousand vhost-user endpoints on one fabric, wires among
//! them, traffic on some while the others change, a crash and a restore of
//! all of them, and every limit refused by name.
//!
//! Two vwperf processes (DPDK virtio_user, server mode) are the VMs on two
//! loopback wires; the other endpoints are client-mode sockets nobody
//! listens on, as VMs that are not running yet. Changes go over one control
//! connection, as an orchestrator sends them.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vw_ctl::client::Client;
use vw_ctl::proto::{EndpointSpec, ErrorCode, Request};
use vw_e2e::*;

const ENDPOINTS: usize = 1000;
const WIRES: usize = 500;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn vhost(path: &Path) -> EndpointSpec {
    EndpointSpec::VhostUser { path: path.display().to_string(), client: true, queues: 1 }
}

fn ok(c: &mut Client, r: Request) -> Value {
    let reply = c.call(&r).unwrap_or_else(|e| panic!("{r:?}: {e}"));
    assert!(reply.ok, "{r:?} refused: {:?}", reply.error);
    reply.result.unwrap_or(Value::Null)
}

fn add(c: &mut Client, name: &str, path: &Path) {
    ok(c, Request::EndpointAdd { name: name.into(), spec: vhost(path), group: false });
}

fn connect(c: &mut Client, wire: u32, a: &str, b: &str) {
    ok(
        c,
        Request::Connect {
            wire: Some(wire),
            endpoint: a.into(),
            peer: b.into(),
            encap: None,
            incoming: false,
            keys: None,
        },
    );
}

/// Frames wire `id` carried forward, as the fabric counts them.
fn forward_frames(f: &Fabric, id: u32) -> u64 {
    u(&f.wire(id)["forward"]["frames"])
}

/// Waits until wire `id` carries at least `n` more frames.
fn flows(f: &Fabric, id: u32, n: u64) -> bool {
    let (t, start) = (Instant::now(), forward_frames(f, id));
    while t.elapsed() < Duration::from_secs(15) {
        if forward_frames(f, id) >= start + n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_thousand_vhost_endpoints_with_traffic_changes_a_crash_and_a_restore() {
    let Some(env) = setup("scale", &[]) else { return };
    if !require_hugepages("scale") {
        return;
    }
    let idle_dir = env.dir.join("idle");
    std::fs::create_dir_all(&idle_dir).unwrap();
    let idle = |i: usize| -> PathBuf { idle_dir.join(format!("vm{i}.sock")) };
    let vm_sock = |n: &str| env.dir.join(format!("{n}.vhost"));
    let state = env.dir.join("state.json");
    let opts = FabricOpts { extra: vec!["--state".into(), state.display().to_string()], ..Default::default() };

    // Two VMs pairs listen (virtio_user server mode) and send for 40 s.
    let perf_args = ["--server", "--rate", "10k", "--flows", "4", "--bidir", "--duration", "40", "--warmup", "0"];
    let (a0, a1, b0, b1) = (vm_sock("a0"), vm_sock("a1"), vm_sock("b0"), vm_sock("b1"));
    let perf_a = vwperf_cmd(&env, "vma", &[&a0, &a1], &perf_args).spawn().expect("start vwperf");
    let perf_b = vwperf_cmd(&env, "vmb", &[&b0, &b1], &perf_args).spawn().expect("start vwperf");
    let t0 = Instant::now();
    while ![&a0, &a1, &b0, &b1].iter().all(|p| p.exists()) && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut f = Fabric::start(&env, "h1", opts.clone());
    let mut c = Client::connect(&f.socket).unwrap();
    // The VMs' endpoints and wires first: they carry traffic while the
    // rest is built and changed.
    for (n, p) in [("a0", &a0), ("a1", &a1), ("b0", &b0), ("b1", &b1)] {
        add(&mut c, n, p);
    }
    connect(&mut c, 1, "a0", "a1");
    connect(&mut c, 2, "b0", "b1");
    assert!(flows(&f, 1, 1000) && flows(&f, 2, 1000), "the VMs' wires carry traffic\n{}", f.log_text());
    let t = Instant::now();
    for i in 4..ENDPOINTS {
        add(&mut c, &format!("vm{i}"), &idle(i));
    }
    for w in 2..WIRES {
        connect(&mut c, w as u32 + 1, &format!("vm{}", 2 * w), &format!("vm{}", 2 * w + 1));
    }
    let built = t.elapsed();
    let st = ok(&mut c, Request::Status);
    assert_eq!((u(&st["endpoints"]), u(&st["wires"])), (ENDPOINTS as u64, WIRES as u64), "{st}");
    eprintln!("scale: {} endpoints and {} wires added over one connection in {built:?}", ENDPOINTS - 4, WIRES - 2);

    // Changes among the idle endpoints while the VMs' wires carry traffic.
    let before = (forward_frames(&f, 1), forward_frames(&f, 2));
    for w in 2..WIRES {
        if w % 5 == 0 {
            ok(&mut c, Request::Disconnect { wire: w as u32 + 1 });
            connect(&mut c, w as u32 + 1, &format!("vm{}", 2 * w), &format!("vm{}", 2 * w + 1));
        }
    }
    for i in (ENDPOINTS - 40..ENDPOINTS).step_by(2) {
        // Wire w joins vm(2w) and vm(2w+1): free both ends, then re-add.
        let w = i / 2;
        ok(&mut c, Request::Disconnect { wire: w as u32 + 1 });
        ok(&mut c, Request::EndpointDel { name: format!("vm{i}") });
        add(&mut c, &format!("vm{i}"), &idle(i));
        connect(&mut c, w as u32 + 1, &format!("vm{i}"), &format!("vm{}", i + 1));
    }
    assert!(flows(&f, 1, 1000) && flows(&f, 2, 1000), "traffic flows while other wires change");
    assert!(forward_frames(&f, 1) > before.0 && forward_frames(&f, 2) > before.1);

    // Limits are refused by name, before DPDK is asked.
    let mut extra = Vec::new();
    let refusal = loop {
        let i = ENDPOINTS + extra.len();
        let r = c.call(&Request::EndpointAdd { name: format!("vm{i}"), spec: vhost(&idle(i)), group: false }).unwrap();
        if !r.ok {
            break r.error.unwrap();
        }
        extra.push(i);
        assert!(extra.len() <= 64, "no limit met past {} vhost-user endpoints", ENDPOINTS + extra.len());
    };
    assert_eq!(refusal.code, ErrorCode::EndpointLimit, "{refusal:?}");
    // librte_vhost polls 1024 descriptors, one of them its own pipe: 1023
    // client-mode endpoints (a server-mode one takes two).
    assert!(refusal.message.contains("at most 1023 vhost-user endpoints in client mode"), "{}", refusal.message);
    assert_eq!(ENDPOINTS + extra.len(), 1023, "{}", refusal.message);
    for i in extra {
        ok(&mut c, Request::EndpointDel { name: format!("vm{i}") });
    }

    // A crash: everything comes back from the state file's journal and the
    // VMs' devices reconnect by themselves (client mode).
    drop(c);
    f.kill9();
    let f = Fabric::start(&env, "h1", opts);
    let st = f.json(&["status"]);
    assert_eq!((u(&st["endpoints"]), u(&st["wires"])), (ENDPOINTS as u64, WIRES as u64), "{st}");
    assert_eq!(st["unrestored"], serde_json::json!([]), "{st}");
    let log = f.log_text();
    let ms: u64 = log
        .lines()
        .find_map(|l| l.split(" in ").nth(1).filter(|_| l.contains("restored")).and_then(|r| r.strip_suffix(" ms")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restore line in the log:\n{log}"));
    eprintln!("scale: restored {} endpoints and {} wires in {ms} ms", ENDPOINTS, WIRES);
    assert!(ms < 5000, "restoring took {ms} ms");
    assert!(flows(&f, 1, 1000) && flows(&f, 2, 1000), "the VMs reconnect and their wires carry traffic\n{log}");
    // Idle endpoints cost no polling: only the VMs' rings are polled.
    for (n, up) in [("a0", true), ("vm500", false)] {
        let e = f.json(&["endpoint", "list"]).as_array().unwrap().iter().find(|e| e["name"] == n).cloned().unwrap();
        assert_eq!(e["link_up"], up, "{e}");
    }
    for p in [perf_a, perf_b] {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "vwperf: {}", String::from_utf8_lossy(&out.stderr));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(u(&s["rx_frames"]) > 0, "{s}");
    }
    f.assert_teardown_frees_every_mbuf(0);
    drop(f);
}
