//! End-to-end tests of vhost-user endpoints: DPDK's virtio_user (in
//! vwperf) is the VM side, as DPDK itself tests vhost-user without a VM.
//! Needs hugepages (virtio_user shares its memory by file descriptor).

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vw_e2e::*;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn endpoint(f: &Fabric, name: &str) -> Value {
    f.json(&["endpoint", "list"]).as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap()
}

fn sock(env: &Env, name: &str) -> PathBuf {
    env.dir.join(format!("{name}.vhost"))
}

/// Asserts a vwperf run delivered every frame once and in order; on
/// failure prints what the fabrics counted.
fn assert_clean(s: &Value, what: &str, fabrics: &[&Fabric]) {
    let ctx = || fabrics.iter().map(|f| format!("--- {} ---\n{}", f.name, f.ctl_ok(&["stats"]))).collect::<String>();
    assert!(u(&s["rx_frames"]) > 0, "{what}: nothing arrived: {s}\n{}", ctx());
    assert_eq!(u(&s["lost"]), 0, "{what}: frames lost: {s}\n{}", ctx());
    assert_eq!(u(&s["reordered"]), 0, "{what}: frames reordered: {s}\n{}", ctx());
    assert_eq!(u(&s["duplicated"]), 0, "{what}: frames duplicated: {s}\n{}", ctx());
}

#[test]
fn vhost_loopback_wire_survives_a_vm_restart() {
    let Some(env) = setup("vhost_loopback", &[]) else { return };
    if !require_hugepages("vhost_loopback") {
        return;
    }
    let mut f = Fabric::start(&env, "h1", FabricOpts::default());
    let (a, b) = (sock(&env, "a"), sock(&env, "b"));
    f.ctl_ok(&["endpoint", "add", "a", "--vhost-user", a.to_str().unwrap()]);
    f.ctl_ok(&["endpoint", "add", "b", "--vhost-user", b.to_str().unwrap()]);
    assert!(a.exists() && b.exists(), "server mode: the fabric owns the sockets");
    assert_eq!(endpoint(&f, "a")["link_up"], false, "no VM yet");
    f.ctl_ok(&["connect", "1", "a", "b"]);
    let idle = f.mbufs_idle();

    // 50k frames/s each way: a worker stalled by the host for a few ms (both
    // CPUs are shared with the stand-in VMs) still leaves room in the rings.
    let args = ["--bidir", "--rate", "50k", "--flows", "8", "--duration", "2", "--warmup", "0.5"];
    let s = vwperf(&env, "vm", &[&a, &b], &args);
    assert_clean(&s, "first VM run", &[&f]);
    let w = f.wire(1);
    assert!(u(&w["forward"]["frames"]) > 0 && u(&w["reverse"]["frames"]) > 0, "{w}");
    // The VM went away: its link went down, and the counters say so.
    let wait_down = |f: &Fabric| {
        let t = Instant::now();
        while endpoint(f, "a")["link_up"] == true && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_down(&f);
    let e = endpoint(&f, "a");
    assert_eq!(e["link_up"], false);
    assert_eq!(u(&e["link_changes"]), 2, "up when the VM came, down when it left: {e}");

    // The VM comes back: its wire works again without any command.
    let s = vwperf(&env, "vm", &[&a, &b], &args);
    assert_clean(&s, "after the VM restarted", &[&f]);
    wait_down(&f);
    assert_eq!(u(&endpoint(&f, "a")["link_changes"]), 4);
    f.assert_no_mbuf_leak(idle);
    assert_eq!(idle, 0, "vhost ports hold no mbufs when idle");

    f.ctl_ok(&["disconnect", "1"]);
    f.ctl_ok(&["endpoint", "del", "a"]);
    assert!(!a.exists(), "endpoint del removes its socket");
    assert!(f.stop().success());
}

fn vhost_encap(encap: &str) {
    let Some(env) = setup(&format!("vhost_encap_{encap}"), &[]) else { return };
    if !require_hugepages("vhost_encap") {
        return;
    }
    let (h1, h2, ul) = two_fabrics(&env);
    let bare = (h1.mbufs_idle(), h2.mbufs_idle());
    let (a, b) = (sock(&env, "vm1"), sock(&env, "vm2"));
    h1.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user", a.to_str().unwrap()]);
    h2.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user", b.to_str().unwrap()]);
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.2", "--encap", encap]);
    h2.ctl_ok(&["connect", "7", "vm2", "10.0.0.1", "--encap", encap]);
    let t0 = Instant::now();
    while (h1.wire(7)["state"] != "up" || h2.wire(7)["state"] != "up") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(h1.wire(7)["state"], "up", "{}", h1.log_text());
    // One vwperf process is both VMs: vm1 on host 1, vm2 on host 2.
    // The underlay here is the kernel: tap queues and a Linux bridge sharing
    // two vCPUs with both fabrics and the VMs; at 50k frames/s each way it
    // occasionally dropped frames between the uplinks (never in a fabric).
    for size in ["64", "1400"] {
        let s = vwperf(
            &env,
            "vms",
            &[&a, &b],
            &["--bidir", "--rate", "20k", "--flows", "16", "--size", size, "--duration", "2"],
        );
        assert_clean(&s, &format!("{encap} wire, {size}-byte frames"), &[&h1, &h2]);
    }
    for h in [&h1, &h2] {
        let w = h.wire(7);
        assert!(u(&w["forward"]["frames"]) > 100_000 && u(&w["reverse"]["frames"]) > 100_000, "{w}");
    }
    h1.assert_teardown_frees_every_mbuf(bare.0);
    h2.assert_teardown_frees_every_mbuf(bare.1);
    drop((h1, h2, ul));
}

#[test]
fn vhost_encap_wire_vwire() {
    vhost_encap("vwire");
}

#[test]
fn vhost_encap_wire_vxlan() {
    vhost_encap("vxlan");
}

#[test]
fn vhost_client_mode_finds_its_vms_after_a_fabric_crash() {
    let Some(env) = setup("vhost_client", &[]) else { return };
    if !require_hugepages("vhost_client") {
        return;
    }
    let (a, b) = (sock(&env, "a"), sock(&env, "b"));
    let state = env.dir.join("state.json");
    let opts = FabricOpts { extra: vec!["--state".into(), state.display().to_string()], ..Default::default() };
    // The VMs listen (virtio_user server mode) and run for 16 s.
    let perf = vwperf_cmd(
        &env,
        "vm",
        &[&a, &b],
        &["--server", "--rate", "20k", "--flows", "4", "--duration", "16", "--warmup", "0"],
    )
    .spawn()
    .expect("start vwperf");
    let t0 = Instant::now();
    while !(a.exists() && b.exists()) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut f = Fabric::start(&env, "h1", opts.clone());
    f.ctl_ok(&["endpoint", "add", "a", "--vhost-user", a.to_str().unwrap(), "--client"]);
    f.ctl_ok(&["endpoint", "add", "b", "--vhost-user", b.to_str().unwrap(), "--client"]);
    f.ctl_ok(&["connect", "1", "a", "b"]);
    let flowing = |f: &Fabric| {
        let t = Instant::now();
        let start = u(&f.wire(1)["forward"]["frames"]);
        while t.elapsed() < Duration::from_secs(10) {
            if u(&f.wire(1)["forward"]["frames"]) > start + 1000 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(flowing(&f), "traffic flows in client mode\n{}", f.log_text());

    // The fabric crashes and comes back: it restores the endpoints and the
    // wire from its state file and reconnects to the VMs by itself.
    f.kill9();
    let f = Fabric::start(&env, "h1", opts);
    let e = endpoint(&f, "a");
    assert_eq!(e["spec"]["client"], true);
    assert_eq!(e["wire"], 1, "the wire was restored");
    assert!(flowing(&f), "traffic flows again after the restart\n{}", f.log_text());
    let out = perf.wait_with_output().unwrap();
    assert!(out.status.success(), "vwperf: {}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(u(&s["rx_frames"]) > 0, "{s}");
    // A fabric without an uplink holds no mbuf once its ports are gone.
    f.assert_teardown_frees_every_mbuf(0);
    drop(f);
}

#[test]
fn multiqueue_endpoints_spread_over_workers() {
    let Some(env) = setup("multiqueue", &[]) else { return };
    if !require_hugepages("multiqueue") {
        return;
    }
    // Two workers (lcores 1 and 2) on this machine's two CPUs.
    let opts = FabricOpts { lcores: Some("0@0,1@1,2@0".into()), ..Default::default() };
    let f = Fabric::start(&env, "h1", opts.clone());
    let bare = f.mbufs_idle();
    let (a, b) = (sock(&env, "a"), sock(&env, "b"));
    f.ctl_ok(&["endpoint", "add", "a", "--vhost-user", a.to_str().unwrap(), "--queues", "2"]);
    f.ctl_ok(&["endpoint", "add", "b", "--vhost-user", b.to_str().unwrap(), "--queues", "2"]);
    f.ctl_ok(&["connect", "1", "a", "b"]);
    let s = vwperf(
        &env,
        "vm",
        &[&a, &b],
        &["--queues", "2", "--flows", "8", "--bidir", "--rate", "40k", "--duration", "2"],
    );
    assert_clean(&s, "2-queue endpoints on 2 workers", &[&f]);
    let st = f.json(&["stats"]);
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(u(&w["rx_frames"]) > 10_000, "every worker polls one of each port's queues: {w}");
    }
    f.assert_teardown_frees_every_mbuf(bare);
    drop(f);

    // Single-queue endpoints on two workers: each port's RX is polled by one
    // worker, and the worker without a TX queue on the other port hands its
    // frames to the owner.
    let f = Fabric::start(&env, "h2", opts);
    let (c, d) = (sock(&env, "c"), sock(&env, "d"));
    f.ctl_ok(&["endpoint", "add", "c", "--vhost-user", c.to_str().unwrap()]);
    f.ctl_ok(&["endpoint", "add", "d", "--vhost-user", d.to_str().unwrap()]);
    f.ctl_ok(&["connect", "2", "c", "d"]);
    let s = vwperf(&env, "vm2", &[&c, &d], &["--flows", "4", "--bidir", "--rate", "40k", "--duration", "2"]);
    assert_clean(&s, "1-queue endpoints on 2 workers (TX handoff)", &[&f]);
    let e = endpoint(&f, "c");
    assert_eq!((u(&e["rx_queues"]), u(&e["tx_queues"])), (1, 1));
    f.assert_teardown_frees_every_mbuf(bare);
    drop(f);
}

/// The worker polling RX queue 0 of endpoint `name`, once its VM enabled it.
fn rxq0_worker(f: &Fabric, name: &str) -> Option<u64> {
    endpoint(f, name)["rx_workers"].as_array().and_then(|v| v.first()).map(|r| u(&r["worker"]))
}

fn total_drops(f: &Fabric) -> u64 {
    f.all_drops().as_object().unwrap().values().map(u).sum()
}

#[test]
fn rx_queues_move_to_the_least_loaded_worker_without_dropping_a_frame() {
    let Some(env) = setup("rxq_balance", &[]) else { return };
    if !require_hugepages("rxq_balance") {
        return;
    }
    // Two workers; no periodic re-balancing: `vwctl rxq-rebalance` does it.
    let opts = FabricOpts {
        lcores: Some("0@0,1@1,2@0".into()),
        extra: vec!["--rxq-rebalance-interval".into(), "0".into()],
        ..Default::default()
    };
    let f = Fabric::start(&env, "h1", opts);
    let bare = f.mbufs_idle();
    let names = ["a", "b", "c", "d"];
    for n in names {
        f.ctl_ok(&["endpoint", "add", n, "--vhost-user", sock(&env, n).to_str().unwrap()]);
    }
    f.ctl_ok(&["connect", "1", "a", "b"]);
    f.ctl_ok(&["connect", "2", "c", "d"]);
    // One VM per endpoint, one after the other: each new queue goes to the
    // worker with fewer queues (nothing is measured yet), so the two
    // senders, a and c, share worker 0 and the two sinks worker 1.
    let mut vms = Vec::new();
    for n in names {
        let args: &[&str] = if n == "a" || n == "c" {
            &["--mode", "txonly", "--rate", "10k", "--duration", "8", "--warmup", "0"]
        } else {
            &["--mode", "rxonly", "--duration", "12", "--warmup", "0"]
        };
        vms.push(vwperf_cmd(&env, &format!("vm-{n}"), &[&sock(&env, n)], args).spawn().expect("spawn vwperf"));
        let t = Instant::now();
        while rxq0_worker(&f, n).is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "the VM on {n} never enabled its ring");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let placed: Vec<u64> = names.iter().map(|n| rxq0_worker(&f, n).unwrap()).collect();
    assert_eq!(placed, vec![0, 1, 0, 1], "queues placed by count, in the order the VMs came");
    // Let the fabric measure the loads (every second) with every VM running.
    std::thread::sleep(Duration::from_millis(2500));
    let listed = f.ctl_ok(&["endpoint", "list"]);
    assert!(listed.contains("RXQ:WORKER"), "{listed}");
    let before = total_drops(&f);
    let workers_rx = |f: &Fabric| -> Vec<u64> {
        f.json(&["stats"])["workers"].as_array().unwrap().iter().map(|w| u(&w["rx_frames"])).collect()
    };
    let rx0 = workers_rx(&f);
    let moved = f.json(&["rxq-rebalance"]);
    let moved = moved.as_array().unwrap();
    assert!(!moved.is_empty(), "two busy queues on one worker and none on the other: something moves");
    let (wa, wc) = (rxq0_worker(&f, "a").unwrap(), rxq0_worker(&f, "c").unwrap());
    assert_ne!(wa, wc, "the two busy queues are on different workers now: {moved:?}");
    assert!(f.log_text().contains("re-balanced RX queues over workers by load"), "the move is logged");
    // Balanced: asking again moves nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(f.json(&["rxq-rebalance"]).as_array().unwrap().len(), 0, "nothing more to gain");
    let rx1 = workers_rx(&f);
    for w in 0..2 {
        assert!(rx1[w] > rx0[w] + 5_000, "worker {w} polls a busy queue now: {rx0:?} -> {rx1:?}");
    }
    for vm in vms {
        let out = vm.wait_with_output().expect("vwperf");
        assert!(out.status.success(), "vwperf: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(total_drops(&f), before, "no frame dropped while queues moved: {}", f.all_drops());
    for w in [1, 2] {
        let w = f.wire(w);
        assert!(u(&w["forward"]["frames"]) > 40_000, "{w}");
    }
    f.assert_teardown_frees_every_mbuf(bare);
}
