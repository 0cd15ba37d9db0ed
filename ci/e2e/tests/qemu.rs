//! End-to-end tests with real Linux guests in QEMU on vhost-user endpoints.
//! Run as root: `cargo test --release -p vw-e2e --test qemu -- --test-threads=1`
//! (ci/test.sh does). Needs QEMU and the guest image (ci/setup.sh installs
//! and builds them). See `docs/testing.md` and `docs/qemu.md`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use vw_e2e::guest::{guest_image, Guest, GuestImage, GuestOpts};
use vw_e2e::*;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn endpoint(f: &Fabric, name: &str) -> Value {
    f.json(&["endpoint", "list"]).as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap()
}

/// Both guests reach each other and move 4 MiB over HTTP each way, the
/// hashes checked.
fn ping_and_transfer(a: &mut Guest, a_ip: &str, b: &mut Guest, b_ip: &str, ctx: &dyn Fn() -> String) {
    assert!(a.wait_reachable(b_ip, 20), "{} cannot reach {b_ip}\n{}\n{}", a.name, a.logs(), ctx());
    assert_eq!(a.ping(b_ip, 20, 56), 20, "{} -> {b_ip}: 20 pings\n{}", a.name, ctx());
    assert_eq!(b.ping(a_ip, 20, 56), 20, "{} -> {a_ip}: 20 pings\n{}", b.name, ctx());
    let from_b = b.serve_random("blob", 4);
    assert_eq!(a.fetch_md5(&format!("http://{b_ip}/blob")), from_b, "4 MiB {} -> {}\n{}", b.name, a.name, ctx());
    let from_a = a.serve_random("blob", 4);
    assert_eq!(b.fetch_md5(&format!("http://{a_ip}/blob")), from_a, "4 MiB {} -> {}\n{}", a.name, b.name, ctx());
}

fn setup_qemu(test: &str) -> Option<(Env, GuestImage)> {
    setup_qemu_with(test, &[])
}

fn setup_qemu_with(test: &str, tools: &[&str]) -> Option<(Env, GuestImage)> {
    let env = setup(test, tools)?;
    let image = guest_image(test)?;
    Some((env, image))
}

/// Options of guests g1 (192.168.7.1) and g2 (192.168.7.2) on sockets `s1` and `s2`.
fn guest_pair(s1: &Path, s2: &Path) -> (GuestOpts, GuestOpts) {
    (
        GuestOpts::new("192.168.7.1/24", "52:54:00:07:00:01", s1),
        GuestOpts::new("192.168.7.2/24", "52:54:00:07:00:02", s2),
    )
}

fn sock(env: &Env, name: &str) -> PathBuf {
    env.dir.join(format!("{name}.vhost"))
}

#[test]
fn guests_on_a_loopback_wire_ping_and_transfer_both_ways_and_survive_a_reboot() {
    let Some((env, image)) = setup_qemu("qemu_loopback") else { return };
    let vhost_dir = env.dir.join("vhost");
    let f = Fabric::start(
        &env,
        "h1",
        FabricOpts { extra: vec!["--vhost-dir".into(), vhost_dir.display().to_string()], ..Default::default() },
    );
    // By name: the sockets go to --vhost-dir.
    f.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user"]);
    f.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user"]);
    f.ctl_ok(&["connect", "1", "vm1", "vm2"]);
    let mut g1 = Guest::start(
        &env,
        &image,
        "g1",
        &GuestOpts::new("192.168.7.1/24", "52:54:00:07:00:01", &vhost_dir.join("vm1.sock")),
    );
    let mut g2 = Guest::start(
        &env,
        &image,
        "g2",
        &GuestOpts::new("192.168.7.2/24", "52:54:00:07:00:02", &vhost_dir.join("vm2.sock")),
    );
    let ctx = || f.log_text();
    ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
    let e = endpoint(&f, "vm1");
    assert_eq!(e["link_up"], true, "{e}");
    let changes = u(&e["link_changes"]);

    // The guest reboots: its device stops and starts again; the wire
    // carries traffic again with no command.
    g1.reboot();
    ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
    let e = endpoint(&f, "vm1");
    assert!(u(&e["link_changes"]) >= changes + 2, "the reboot took the link down and up: {e}");
    let s = f.json(&["stats"]);
    let w = f.wire(1);
    assert!(u(&w["forward"]["frames"]) > 2000 && u(&w["reverse"]["frames"]) > 2000, "{w}");
    assert_eq!(u(&w["dropped"]), 0, "no frame of the wire dropped: {w}\n{s}");
    drop((g1, g2));
    drop(f);
}

#[test]
fn guests_find_a_restarted_fabric_by_themselves_in_both_socket_modes() {
    let Some((env, image)) = setup_qemu("qemu_restart") else { return };
    let state = env.dir.join("state");
    let opts = FabricOpts { extra: vec!["--state".into(), state.display().to_string()], ..Default::default() };
    let mut f = Fabric::start(&env, "h1", opts.clone());
    let (s1, s2) = (sock(&env, "vm1"), sock(&env, "vm2"));
    // vm1: the fabric listens, QEMU connects (reconnect=1). vm2: QEMU
    // listens, the fabric connects (--client).
    f.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user", s1.to_str().unwrap()]);
    // QEMU in server mode waits for the fabric before it starts the guest;
    // the fabric's client-mode endpoint keeps trying until QEMU listens.
    f.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user", s2.to_str().unwrap(), "--client"]);
    let mut o2 = GuestOpts::new("192.168.7.2/24", "52:54:00:07:00:02", &s2);
    o2.qemu_listens = true;
    let mut g2 = Guest::start(&env, &image, "g2", &o2);
    f.ctl_ok(&["connect", "1", "vm1", "vm2"]);
    let mut g1 = Guest::start(&env, &image, "g1", &GuestOpts::new("192.168.7.1/24", "52:54:00:07:00:01", &s1));
    assert!(g1.wait_reachable("192.168.7.2", 30), "{}\n{}\n{}", g1.logs(), g2.logs(), f.log_text());

    for how in ["SIGKILL", "SIGTERM"] {
        if how == "SIGKILL" {
            f.kill9();
        } else {
            assert!(f.stop().success(), "{}", f.log_text());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        f = Fabric::start(&env, "h1", opts.clone());
        let ctx = || format!("{}\n{}", f.ctl_ok(&["stats"]), f.log_text());
        // No command on the guests or QEMU: they reconnect (vm1) or are
        // reconnected to (vm2), and the wire carries traffic again.
        assert!(g1.wait_reachable("192.168.7.2", 60), "after {how}: no ping\n{}\n{}\n{}", g1.logs(), g2.logs(), ctx());
        ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
        for name in ["vm1", "vm2"] {
            assert_eq!(endpoint(&f, name)["link_up"], true, "after {how}: {name}");
        }
    }
    drop((g1, g2));
    drop(f);
}

#[test]
fn guests_on_an_encap_wire_between_two_fabrics() {
    let Some((env, image)) = setup_qemu("qemu_encap") else { return };
    let (h1, h2, ul) = two_fabrics(&env);
    let (s1, s2) = (sock(&env, "vm1"), sock(&env, "vm2"));
    h1.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user", s1.to_str().unwrap()]);
    h2.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user", s2.to_str().unwrap()]);
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.2"]);
    h2.ctl_ok(&["connect", "7", "vm2", "10.0.0.1"]);
    // A 1500-byte underlay carries 1454-byte guest frames in vwire.
    let (mut o1, mut o2) = guest_pair(&s1, &s2);
    o1.host_mtu = Some(1454);
    o2.host_mtu = Some(1454);
    let mut g1 = Guest::start(&env, &image, "g1", &o1);
    let mut g2 = Guest::start(&env, &image, "g2", &o2);
    assert_eq!(g1.ok("cat /sys/class/net/eth0/mtu").trim(), "1454", "the guest took host_mtu");
    assert_eq!(u(&endpoint(&h1, "vm1")["mtu"]), 1454, "the fabric learnt the guest's MTU");
    let w = h1.wire(7);
    assert!(u(&w["carries_mtu"]) == 1454 && w.get("mtu_warning").is_none(), "the guest fits its wire: {w}");
    assert_eq!(h1.json(&["status"])["mtu_warnings"], serde_json::json!([]));
    let ctx = || format!("--- h1 ---\n{}\n--- h2 ---\n{}", h1.log_text(), h2.log_text());
    ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
    // The largest frame the guest sends crosses whole.
    assert_eq!(g1.ping("192.168.7.2", 5, 1454 - 28), 5, "full-MTU pings\n{}", ctx());
    for h in [&h1, &h2] {
        assert_eq!(h.drops("encap_too_big"), 0, "{}", ctx());
        let w = h.wire(7);
        assert!(u(&w["forward"]["frames"]) > 2000 && u(&w["reverse"]["frames"]) > 2000, "{w}");
    }
    drop((g1, g2));
    drop((h1, h2, ul));
}

#[test]
fn a_two_queue_guest_uses_both_queues_on_two_workers() {
    let Some((env, image)) = setup_qemu("qemu_mq") else { return };
    // Two workers (lcores 1 and 2) on this machine's two CPUs.
    let f = Fabric::start(&env, "h1", FabricOpts { lcores: Some("0@0,1@1,2@0".into()), ..Default::default() });
    let (s1, s2) = (sock(&env, "vm1"), sock(&env, "vm2"));
    f.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user", s1.to_str().unwrap(), "--queues", "2"]);
    f.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user", s2.to_str().unwrap(), "--queues", "2"]);
    f.ctl_ok(&["connect", "1", "vm1", "vm2"]);
    let (mut o1, mut o2) = guest_pair(&s1, &s2);
    for o in [&mut o1, &mut o2] {
        o.queues = 2;
        o.cpus = 2;
    }
    let mut g1 = Guest::start(&env, &image, "g1", &o1);
    let mut g2 = Guest::start(&env, &image, "g2", &o2);
    // Linux enables one queue pair per vCPU.
    assert!(g1.ok("ls /sys/class/net/eth0/queues").contains("tx-1"), "two TX queues in the guest");
    let ctx = || f.log_text();
    ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
    // One sender on each vCPU: XPS maps each CPU to its own TX queue, and
    // the fabric measures each RX queue's load every second.
    g1.ok("(taskset 1 ping -q -c 400 -i 0.01 192.168.7.2 >/dev/null &); (taskset 2 ping -q -c 400 -i 0.01 192.168.7.2 >/dev/null &)");
    let t = std::time::Instant::now();
    let e = loop {
        let e = endpoint(&f, "vm1");
        let loads: Vec<u64> = e["rx_workers"].as_array().unwrap().iter().map(|q| u(&q["frames_per_s"])).collect();
        if loads.len() == 2 && loads.iter().all(|&l| l > 0) {
            break e;
        }
        assert!(t.elapsed().as_secs() < 4, "both of vm1's RX queues carry frames: {e}\n{}", ctx());
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // The four queues of the two guests are spread over both workers (the
    // re-balancing by load may put a guest's two queues together).
    let mut workers = std::collections::BTreeSet::new();
    for name in ["vm1", "vm2"] {
        for q in endpoint(&f, name)["rx_workers"].as_array().unwrap() {
            workers.insert(u(&q["worker"]));
        }
    }
    assert_eq!(workers.len(), 2, "both workers poll queues of the guests: {e}");
    for w in f.json(&["stats"])["workers"].as_array().unwrap() {
        assert!(u(&w["rx_frames"]) > 0, "every worker received frames: {w}");
    }
    drop((g1, g2));
    drop(f);
}

/// One-queue guests on a fabric with two workers: each guest's queue is
/// polled by one worker, and the frames the other worker has for it go
/// through the handoff ring to the queue's owner.
#[test]
fn one_queue_guests_on_two_workers() {
    let Some((env, image)) = setup_qemu("qemu_1q2w") else { return };
    let f = Fabric::start(&env, "h1", FabricOpts { lcores: Some("0@0,1@1,2@0".into()), ..Default::default() });
    let (s1, s2) = (sock(&env, "vm1"), sock(&env, "vm2"));
    f.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user", s1.to_str().unwrap()]);
    f.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user", s2.to_str().unwrap()]);
    f.ctl_ok(&["connect", "1", "vm1", "vm2"]);
    let (o1, o2) = guest_pair(&s1, &s2);
    let mut g1 = Guest::start(&env, &image, "g1", &o1);
    let mut g2 = Guest::start(&env, &image, "g2", &o2);
    let ctx = || format!("{}\n{}", f.log_text(), f.ctl_ok(&["stats"]));
    assert!(g1.wait_reachable("192.168.7.2", 20), "{}", ctx());
    let worker = |name: &str| {
        let e = endpoint(&f, name);
        let q = e["rx_workers"].as_array().unwrap().clone();
        assert_eq!(q.len(), 1, "one RX queue: {e}");
        u(&q[0]["worker"])
    };
    assert_ne!(worker("vm1"), worker("vm2"), "the two guests' queues are on different workers\n{}", ctx());
    // (Frames a guest sent while the other was still booting were dropped
    // as endpoint_down: counted from here.)
    let reasons = ["tx_full", "endpoint_down", "no_wire"];
    let before: Vec<u64> = reasons.iter().map(|r| f.drops(r)).collect();
    ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
    let st = f.json(&["stats"]);
    for w in st["workers"].as_array().unwrap() {
        assert!(u(&w["rx_frames"]) > 0, "every worker received frames: {w}");
    }
    for (reason, n) in reasons.iter().zip(before) {
        assert_eq!(u(&st["drops"][reason]), n, "{reason} during the transfers\n{}", ctx());
    }
    drop((g1, g2));
    drop(f);
}

#[test]
fn jumbo_frames_on_a_loopback_wire() {
    let Some((env, image)) = setup_qemu("qemu_jumbo") else { return };
    let f = Fabric::start(&env, "h1", FabricOpts::default());
    let (s1, s2) = (sock(&env, "vm1"), sock(&env, "vm2"));
    f.ctl_ok(&["endpoint", "add", "vm1", "--vhost-user", s1.to_str().unwrap()]);
    f.ctl_ok(&["endpoint", "add", "vm2", "--vhost-user", s2.to_str().unwrap()]);
    f.ctl_ok(&["connect", "1", "vm1", "vm2"]);
    let (mut o1, mut o2) = guest_pair(&s1, &s2);
    o1.host_mtu = Some(9000);
    o2.host_mtu = Some(9000);
    let mut g1 = Guest::start(&env, &image, "g1", &o1);
    let mut g2 = Guest::start(&env, &image, "g2", &o2);
    assert_eq!(g1.ok("cat /sys/class/net/eth0/mtu").trim(), "9000");
    let ctx = || f.log_text();
    assert!(g1.wait_reachable("192.168.7.2", 20), "{}", ctx());
    // 8972 bytes of ICMP data: 9000-byte IP packets, unfragmented.
    let before = u(&f.wire(1)["forward"]["bytes"]);
    assert_eq!(g1.ping("192.168.7.2", 20, 8972), 20, "jumbo pings\n{}", ctx());
    let after = u(&f.wire(1)["forward"]["bytes"]);
    assert!(after - before >= 20 * 9014, "20 frames of 9014 bytes crossed whole: {} bytes", after - before);
    ping_and_transfer(&mut g1, "192.168.7.1", &mut g2, "192.168.7.2", &ctx);
    drop((g1, g2));
    drop(f);
}

/// The stream's rate each way in the migration test, datagrams/s: what two
/// TCG guests on this 2-core machine carry without loss while nothing
/// moves (docs/migration.md has the measurement). `VW_QEMU_RATE` overrides.
const QEMU_RATE: u64 = 2000;

/// A `vw-probe stream` in a guest, its summary in /tmp/stream.out.
fn stream_start(g: &mut Guest, dst: &str, rate: u64) {
    g.ok(&format!(
        "rm -f /tmp/gate /tmp/gate.pause; (vw-probe stream 7000 {dst}:7000 {rate} /tmp/gate --summary > /tmp/stream.out \
         2>&1 &)"
    ));
    for _ in 0..100 {
        if g.ok("cat /tmp/stream.out").contains("ready") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = g.ok("cat /tmp/stream.out");
    panic!("{}: vw-probe stream did not start: {out}\n{}", g.name, g.logs());
}

/// What one side's `vw-probe stream --summary` printed.
#[derive(Debug, Default)]
struct Summary {
    sent: u64,
    distinct: u64,
    duplicated: u64,
    reordered: u64,
    missing: Vec<String>,
    /// (seq before, seq after, ms)
    gaps: Vec<(u64, u64, f64)>,
}

fn stream_summary(g: &mut Guest) -> Summary {
    let mut out = String::new();
    for _ in 0..100 {
        out = g.ok("cat /tmp/stream.out");
        if out.lines().any(|l| l.starts_with("received")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut s = Summary::default();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["sent", n] => s.sent = n.parse().unwrap(),
            ["received", _, "distinct", d, "duplicated", u, "reordered", r, "top", _] => {
                (s.distinct, s.duplicated, s.reordered) = (d.parse().unwrap(), u.parse().unwrap(), r.parse().unwrap());
            }
            ["missing", range] => s.missing.push(range.to_string()),
            ["gap", a, b, ms, _] => s.gaps.push((a.parse().unwrap(), b.parse().unwrap(), ms.parse().unwrap())),
            ["ready"] => {}
            _ => panic!("{}: unexpected stream output {l:?}", g.name),
        }
    }
    s
}

/// The longest pause in `s` between datagrams numbered `from..to`.
fn gap_in(s: &Summary, from: u64, to: u64) -> f64 {
    s.gaps.iter().filter(|g| g.0 >= from && g.0 < to).map(|g| g.2).fold(0.0, f64::max)
}

/// What a guest's kernel counted on its network side: eth0's frames
/// received and dropped, and UDP's datagrams received and those its
/// sockets' buffers had no room for. The counters live in guest memory, so
/// they follow the VM through its migrations.
#[derive(Debug, Default, Clone, Copy)]
struct GuestNet {
    rx_frames: u64,
    rx_dropped: u64,
    udp_in: u64,
    udp_rcvbuf_errors: u64,
}

fn guest_net(g: &mut Guest) -> GuestNet {
    let out = g
        .ok("cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/rx_dropped; grep '^Udp:' \
         /proc/net/snmp");
    let lines: Vec<&str> = out.lines().collect();
    let num = |l: Option<&&str>| l.and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    let mut n = GuestNet { rx_frames: num(lines.first()), rx_dropped: num(lines.get(1)), ..Default::default() };
    if let (Some(names), Some(values)) = (lines.get(2), lines.get(3)) {
        for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
            match k {
                "InDatagrams" => n.udp_in = v.parse().unwrap_or(0),
                "RcvbufErrors" => n.udp_rcvbuf_errors = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    n
}

/// Whether a guest's kernel crashed in this run. Now and then a guest
/// comes back from a live migration with corrupt memory (a `BUG:` in
/// `timerqueue_del`, `list_add corruption`, then a reboot): about one
/// migration in twenty here, with traffic through the migration; the cause
/// (QEMU 7.2 under TCG, or guest memory written by the fabric that the
/// migration did not copy) is not found yet: see docs/qemu.md.
fn guest_kernel_crashed(dir: &Path) -> Option<String> {
    let logs = std::fs::read_dir(dir).ok()?;
    logs.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with("-console.log")).find_map(
        |p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let at = ["BUG: ", "kernel BUG at", "Oops: ", "Kernel panic", "general protection fault"]
                .iter()
                .filter_map(|m| text.find(m))
                .min()?;
            Some(format!("{}: {}", p.display(), text[at..].lines().take(12).collect::<Vec<_>>().join("\n")))
        },
    )
}

#[test]
fn a_guest_moved_by_qemu_live_migration_takes_its_wire_along_by_itself() {
    with_retries("qemu_migrate", false);
}

/// The same three moves with the endpoint directory on every fabric: the
/// wire is connected once by name, and a destination is prepared only by
/// adding the endpoint there. The directory and the LOCATE exchange agree:
/// neither fabric's directory applies a move the exchange made.
#[test]
fn a_guest_moved_by_qemu_live_migration_with_the_directory_everywhere() {
    with_retries("qemu_migrate_dir", true);
}

/// Runs [`three_moves_under_traffic`] again, up to twice, only if a
/// guest's kernel crashed after a migration (see `guest_kernel_crashed`),
/// or a migrated guest (`gbN`) stopped answering.
/// Any other failure fails the test at once.
fn with_retries(name: &str, directory: bool) {
    for attempt in 1..=3 {
        let test = format!("{name}{attempt}");
        let dir = std::env::temp_dir().join(format!("vw-e2e-{}-{test}", std::process::id()));
        let r = std::panic::catch_unwind(|| three_moves_under_traffic(&test, directory));
        let Err(e) = r else { return };
        let msg = e.downcast_ref::<String>().cloned().or(e.downcast_ref::<&str>().map(|s| s.to_string()));
        // A migrated guest that stops answering its agent, with nothing on
        // its console, is the same open problem without the oops.
        let hung = msg.filter(|m| m.starts_with("gb") && m.contains("no answer from the guest in time"));
        match guest_kernel_crashed(&dir).or(hung) {
            Some(crash) if attempt < 3 => {
                eprintln!("a guest's kernel crashed or hung after a migration; once more:\n{crash}")
            }
            _ => std::panic::resume_unwind(e),
        }
    }
}

/// Log lines of the directory setting up, re-pointing or removing wire 7's
/// half, on each host.
fn directory_changes(hosts: &[Fabric]) -> Vec<usize> {
    let lines =
        ["directory: wire 7: half here set up", "directory: wire 7: no end lives here", "directory: wire 7: cannot"];
    hosts.iter().map(|h| lines.iter().map(|l| h.log_text().matches(l).count()).sum()).collect()
}

fn three_moves_under_traffic(test: &str, directory: bool) {
    let tools: &[&str] = if directory { &["etcd", "etcdctl"] } else { &[] };
    let Some((env, image)) = setup_qemu_with(test, tools) else { return };
    let image = image.with_probe(&env);
    let rate: u64 = std::env::var("VW_QEMU_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(QEMU_RATE);
    let key = migration_key(&env);
    let etcd = directory.then(|| vw_e2e::etcd::Etcd::start(&env));
    let mut ul = Underlay::new(&env);
    let grace = 2000;
    let state = env.dir.join("h3.state");
    let opts = |i: u32| -> Vec<String> {
        let mut o = Vec::new();
        if let Some(e) = &etcd {
            o.extend(["--directory".into(), e.url(), "--directory-domain".into(), "q".into()]);
            o.extend(["--host-name".into(), format!("h{i}")]);
        }
        if i == 3 {
            o.extend(["--state".into(), state.display().to_string()]);
        }
        o
    };
    let start = |ul: &mut Underlay, i: u32| {
        let o = opts(i);
        migration_host_with(&env, ul, i, &key, grace, &o.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut hosts: Vec<Fabric> = (1..=3).map(|i| start(&mut ul, i)).collect();
    let (sa, sb) = (sock(&env, "vma"), sock(&env, "vmb"));
    hosts[0].ctl_ok(&["endpoint", "add", "vma", "--vhost-user", sa.to_str().unwrap()]);
    hosts[1].ctl_ok(&["endpoint", "add", "vmb", "--vhost-user", sb.to_str().unwrap()]);
    if directory {
        // Once, by name, on host 1: host 2 sets up its half by itself.
        let dir_ready = |f: &Fabric| f.json(&["status"])["directory"]["endpoints"] == 2;
        let t = std::time::Instant::now();
        while !hosts.iter().all(dir_ready) {
            assert!(t.elapsed().as_secs() < 10, "the fabrics see both endpoints in the directory");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let w = hosts[0].json(&["connect", "7", "vma", "vmb"]);
        assert_eq!((w["kind"].as_str(), w["peer"].as_str()), (Some("encap"), Some("10.77.0.2")), "{w}");
    } else {
        hosts[0].ctl_ok(&["connect", "7", "vma", "10.77.0.2"]);
        hosts[1].ctl_ok(&["connect", "7", "vmb", "10.77.0.1"]);
    }
    let (mut oa, mut ob) = guest_pair(&sa, &sb);
    oa.host_mtu = Some(1454);
    ob.host_mtu = Some(1454);
    let mut a = Guest::start(&env, &image, "ga", &oa);
    let mut b = Guest::start(&env, &image, "gb", &ob);
    macro_rules! ctx {
        () => {
            hosts.iter().map(|h| format!("--- {} ---\n{}", h.name, h.log_text())).collect::<String>()
        };
    }
    assert!(a.wait_reachable("192.168.7.2", 30), "{}", ctx!());

    let h3 = &hosts[2];
    if !directory {
        // What cannot wait for a VM is refused; an armed wire can be cancelled.
        h3.ctl_ok(&["endpoint", "add", "dev", "net_null0,no-rx=1"]);
        let out = h3.ctl(&["connect", "9", "dev", "10.77.0.1", "--incoming"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("waits for a VM to start on a vhost-user endpoint"));
    }
    h3.ctl_ok(&["endpoint", "add", "vmb", "--vhost-user", sock(&env, "vmb-h3").to_str().unwrap()]);
    if !directory {
        h3.ctl_ok(&["connect", "9", "vmb", "10.77.0.1", "--incoming"]);
        let out = h3.ctl(&["connect", "7", "vmb", "10.77.0.1", "--incoming"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("already waits to connect wire 9"));
        h3.ctl_ok(&["disconnect", "9"]);
        assert!(h3.wire(9).is_null(), "cancelled");
        h3.ctl_ok(&["endpoint", "del", "dev"]);
    }

    // A sequenced UDP stream each way and a ping every 10 ms, through all
    // three moves; both streams listen before either sends.
    stream_start(&mut a, "192.168.7.2", rate);
    stream_start(&mut b, "192.168.7.1", rate);
    a.ok("touch /tmp/gate");
    let t0 = std::time::Instant::now();
    b.ok("touch /tmp/gate");
    a.ok("(ping -i 0.01 192.168.7.2 > /tmp/ping.out 2>&1 &)");
    std::thread::sleep(std::time::Duration::from_secs(3));

    let net_before = (guest_net(&mut a), guest_net(&mut b));
    let reasons = ["no_wire", "endpoint_down", "hold_overflow", "hold_expired"];
    let before: Vec<Vec<u64>> = hosts.iter().map(|h| reasons.iter().map(|r| h.drops(r)).collect()).collect();
    let all_before: Vec<Value> = hosts.iter().map(|h| h.all_drops()).collect();
    // (from, to) as host indexes: 2 -> 3 -> 1 (co-located with A) -> 2.
    let moves = [(1usize, 2usize), (2, 0), (0, 1)];
    let names = ["host1", "host2", "host3"];
    let mut done_moves = Vec::new();
    for (k, (from, to)) in moves.into_iter().enumerate() {
        // The destination, prepared before the move: the endpoint (host 2
        // keeps its own from before B left), and the wire armed to connect
        // when the VM starts there. Nothing at switch-over, on any host.
        let socket = match to {
            1 => sb.clone(),
            2 => sock(&env, "vmb-h3"),
            _ => {
                let s = sock(&env, "vmb-h1");
                hosts[to].ctl_ok(&["endpoint", "add", "vmb", "--vhost-user", s.to_str().unwrap()]);
                s
            }
        };
        if !directory {
            let peer = if to == 0 { "vma" } else { "10.77.0.1" };
            let armed = hosts[to].ctl_ok(&["connect", "7", "vmb", peer, "--incoming"]);
            assert!(armed.contains("incoming"), "{armed}");
        }
        if k == 0 {
            // An armed wire (or, with the directory, the endpoint) is
            // configuration: a fabric restart keeps it.
            hosts[2].kill9();
            hosts[2] = start(&mut ul, 3);
            if directory {
                assert_eq!(endpoint(&hosts[2], "vmb")["driver"], "vhost-user", "after a restart");
                let t = std::time::Instant::now();
                while hosts[2].json(&["status"])["directory"]["state"] != "connected" {
                    assert!(t.elapsed().as_secs() < 10, "h3 back in the directory\n{}", hosts[2].log_text());
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            } else {
                assert_eq!(hosts[2].wire(7)["state"], "incoming", "after a restart\n{}", hosts[2].log_text());
            }
        }
        let changes_before = directory_changes(&hosts);
        let stopped_before = hosts[from].log_text().matches("vmb's VM stopped; holding frames").count();
        let strays_before = hosts[0].json(&["stats"])["handled"]["stray_released"].as_u64().unwrap_or(0);
        let mut od = ob.clone();
        od.socket = socket;
        od.incoming = Some(47000 + (std::process::id() % 300) as u16 * 3 + k as u16);
        let next = Guest::start(&env, &image, &format!("gb{}", k + 1), &od);
        let at = t0.elapsed().as_secs_f64();
        let m = b.migrate_to(&env, od.incoming.unwrap());
        let done = t0.elapsed().as_secs_f64();
        // The source QEMU, paused after the migration, goes.
        b = next;
        // Past the grace period: the next move starts from a settled wire.
        std::thread::sleep(std::time::Duration::from_millis(grace + 1500));
        let (f, t) = (&hosts[from], &hosts[to]);
        assert!(t.log_text().contains("vmb's VM started here; connected"), "move {}\n{}", k + 1, ctx!());
        assert!(
            f.log_text().matches("vmb's VM stopped; holding frames").count() > stopped_before,
            "move {}: the source held B's frames\n{}",
            k + 1,
            ctx!()
        );
        // Host 1 re-pointed wire 7 by itself: to B's host, or loopback
        // while B is next to A.
        let w1 = hosts[0].wire(7);
        let mut ends = [w1["endpoint"].as_str().unwrap().to_string(), w1["peer"].as_str().unwrap().to_string()];
        ends.sort();
        let want = if to == 0 {
            ("loopback", ["vma".to_string(), "vmb".to_string()])
        } else {
            ("encap", [format!("10.77.0.{}", to + 1), "vma".to_string()])
        };
        assert_eq!((w1["kind"].as_str().unwrap(), ends), want, "move {}: {w1}", k + 1);
        if directory {
            // The exchange moved the wire; no directory applied it again.
            assert_eq!(directory_changes(&hosts), changes_before, "move {}\n{}", k + 1, ctx!());
            // And every host's directory has B where it is now.
            for h in &hosts {
                let w = h.json(&["wire", "list"]);
                let w = w.as_array().unwrap().iter().find(|w| w["wire"] == 7).cloned().unwrap_or_default();
                let at = w["ends"].as_array().into_iter().flatten().find(|e| e["endpoint"] == "vmb").cloned();
                let at = at.map(|e| e["host"].as_str().unwrap_or_default().to_owned());
                assert_eq!(at.as_deref(), Some(format!("h{}", to + 1).as_str()), "move {}, {}: {w}", k + 1, h.name);
            }
        }
        eprintln!(
            "move {}: {} -> {}: QEMU total {} ms, downtime {} ms, from {at:.3} s to {done:.3} s of the stream",
            k + 1,
            names[from],
            names[to],
            m.total_ms,
            m.downtime_ms
        );
        // The fabric's own share: how long the destination held B's first
        // frames (until its LOCATE went out; none when the VM came next to
        // its peer), how long host 1 held them until the LOCATE was applied
        // there, and host 1's time to switch its workers to the new path.
        let sent_us = t
            .log_text()
            .lines()
            .rev()
            .find_map(|l| l.split("wire 7: location sent ").nth(1))
            .and_then(|r| r.split(' ').next()?.parse::<u64>().ok())
            .filter(|_| to != 0);
        let st1 = hosts[0].json(&["stats"]);
        let strays = st1["handled"]["stray_released"].as_u64().unwrap_or(0);
        let stray_us = st1["migration"]["stray_wait_last_us"].as_u64().filter(|_| strays > strays_before);
        let ack_us = (sent_us, stray_us);
        let apply_us = hosts[0].wire(7)["migration"]["last_move_us"].as_u64().unwrap_or(0);
        done_moves.push((k, from, to, at, done, m, ack_us, apply_us));
    }

    // Stop the streams (A's sender first; each receiver waits 1 s after its
    // own sender) and the ping.
    a.ok("rm -f /tmp/gate");
    let left = b.ok("ls /tmp; rm -f /tmp/gate");
    if !left.contains("gate") {
        let (_, more) =
            b.run("hostname; cat /proc/uptime; ps; cat /tmp/stream.out", std::time::Duration::from_secs(10));
        panic!("{}: the stream's gate is gone: ls /tmp: {left}\n{more}\n{}", b.name, b.logs());
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    a.ok("killall -INT ping; sleep 0.3");
    // Replies come in order (the wire does not reorder), so those sent
    // after the last reply were on their way when ping stopped; every one
    // before it must be there. (The guest counts: its serial port is slow.)
    let ping = a.ok(
        "tail -2 /tmp/ping.out | head -1; sed -n 's/.*seq=\\([0-9]*\\) .*/\\1/p' /tmp/ping.out | sort -n | uniq | \
         awk '{n++; top=$1} END {print \"replies\", n, \"last_seq\", top}'",
    );
    let (at_a, at_b) = (stream_summary(&mut a), stream_summary(&mut b));
    // Where frames to B could have gone: what the fabrics put in B's RX
    // rings on every host, against what B's kernel took from them and what
    // its socket had no room for.
    let net_after = (guest_net(&mut a), guest_net(&mut b));
    let to_b: u64 = hosts.iter().map(|h| h.port("vmb")["tx_packets"].as_u64().unwrap_or(0)).sum();
    let to_a = hosts[0].port("vma")["tx_packets"].as_u64().unwrap_or(0);
    let guests = [("A", to_a, net_before.0, net_after.0), ("B", to_b, net_before.1, net_after.1)]
        .iter()
        .map(|(g, put, before, after)| {
            format!(
                "{g}: the fabrics put {put} frames in its rings since it booted, its kernel took {} and dropped {}; \
                 during the moves its UDP sockets took {} datagrams and had no room for {}\n",
                after.rx_frames,
                after.rx_dropped,
                after.udp_in - before.udp_in,
                after.udp_rcvbuf_errors - before.udp_rcvbuf_errors
            )
        })
        .collect::<String>();
    eprintln!("{guests}");
    let changed: Vec<String> = hosts
        .iter()
        .zip(&all_before)
        .flat_map(|(h, b)| {
            let a = h.all_drops();
            a.as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| **v != b[k.as_str()])
                .map(|(k, v)| format!("{} {k}: {} -> {v}", h.name, b[k.as_str()]))
                .collect::<Vec<_>>()
        })
        .collect();
    eprintln!("drops during the moves: {changed:?}");
    eprintln!("A's pings: {}", ping.trim());
    eprintln!("A -> B at B: {at_b:?}\nB -> A at A: {at_a:?}");

    // Per move: the pause in each direction around the switch-over, against
    // QEMU's downtime. A's sender never stops, so its numbers follow the
    // host's clock; B's stop during each downtime. B's pauses are on B's
    // clock, which QEMU stops with the VM (so they leave the downtime out).
    let mut table = String::from(
        "| move | QEMU total ms | QEMU downtime ms | B -> A pause at A, ms | over the downtime, ms | A -> B pause at B (B's clock), ms | destination holds B's frames, us | host 1 holds B's first frames, us | host 1 switches, us |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut b_stopped = 0.0;
    for (k, from, to, at, done, m, ack_us, apply_us) in &done_moves {
        let (lo, hi) = ((at - 0.5) * rate as f64, (done + 0.5) * rate as f64);
        let ab = gap_in(&at_b, lo as u64, hi as u64);
        let b_lo = lo - b_stopped * rate as f64 / 1e3;
        let b_hi = hi - b_stopped * rate as f64 / 1e3;
        let ba = gap_in(&at_a, b_lo.max(0.0) as u64, b_hi as u64);
        b_stopped += m.downtime_ms as f64;
        table.push_str(&format!(
            "| {} {} -> {} | {} | {} | {ba:.1} | {:.1} | {ab:.1} | {} | {} | {apply_us} |\n",
            k + 1,
            names[*from],
            names[*to],
            m.total_ms,
            m.downtime_ms,
            ba - m.downtime_ms as f64,
            ack_us.0.map_or("none (local)".to_string(), |u| u.to_string()),
            ack_us.1.map_or("none".to_string(), |u| u.to_string()),
        ));
    }
    eprintln!("QEMU live migration, {rate} datagrams/s each way:\n{table}");
    let what = if directory { "with the directory" } else { "armed with connect --incoming" };
    eprintln!("({what})");
    std::fs::write(env.dir.join("qemu-migration.md"), &table).unwrap();

    // Nothing was dropped in any fabric during the moves, for any reason
    // that could be B's frames.
    for (h, before) in hosts.iter().zip(&before) {
        for (reason, n) in reasons.iter().zip(before) {
            assert_eq!(h.drops(reason), *n, "{reason} at {} during the moves\n{}", h.name, ctx!());
        }
    }
    // Every datagram each side sent arrived at the other, once, in order.
    for (what, sent, got) in [("A -> B", at_a.sent, &at_b), ("B -> A", at_b.sent, &at_a)] {
        assert!(sent > rate * 10, "{what}: the stream ran ({sent} sent)");
        assert_eq!(
            (got.distinct, got.duplicated, got.reordered, got.missing.len()),
            (sent, 0, 0, 0),
            "{what}: {sent} sent, {got:?}\n{guests}\n{table}\n{}",
            ctx!()
        );
    }
    // And every ping came back but those on their way when ping stopped.
    let replies: Vec<u64> = ping
        .lines()
        .find(|l| l.starts_with("replies"))
        .map(|l| l.split_whitespace().filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_default();
    assert!(replies.len() == 2 && replies[0] > 500 && replies[0] == replies[1] + 1, "pings: {ping}\n{guests}");

    // The wire is where B is, and carries a transfer.
    assert!(hosts[1].wire(7)["kind"] == "encap" && hosts[1].wire(7)["state"] == "up", "{}", ctx!());
    for h in &hosts {
        assert!(!h.log_text().contains("warning: wire 7"), "no MTU warning for guests at host_mtu=1454\n{}", ctx!());
    }
    let from_b = b.serve_random("blob", 4);
    assert_eq!(a.fetch_md5("http://192.168.7.2/blob"), from_b);
    drop((a, b));
    drop(hosts);
    drop(ul);
}
