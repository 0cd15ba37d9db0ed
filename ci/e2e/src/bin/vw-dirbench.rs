//! The endpoint directory's benchmark: a real etcd (single node on
//! loopback) and three `vwfabric` hosts on one underlay, driven over their
//! control sockets as an orchestrator would.
//!
//! 1. **connect**: `connect 7 ca cb` on h1 (ca on h1, cb on h2), from the
//!    request to h1's reply (h1's half set up) and to h2's half set up by
//!    itself from the directory; disconnected between runs.
//! 2. **move**: endpoint `m` on h2 and h3, wire 8 `ma` (h1) <-> `m`; `m`
//!    is deleted on the host it lives on, and the time until h1's half
//!    points at the other host's VTEP is measured (the directory alone:
//!    no migration exchange); then it is added back there for the next move.
//! 3. **scale**: 2000 vhost-user endpoints over the three fabrics and 1000
//!    wires connected by name from h1 (no id: each allocated), each with its
//!    ends on two different hosts: total time to the last reply and to every
//!    half set up on its hosts, and the etcd keys and bytes the domain uses.
//!
//! Times are read by polling the fabrics' control sockets every 0.5 ms, so
//! they carry up to about a millisecond of polling. Run as root, after
//! `cargo build --release --workspace`: `target/release/vw-dirbench`.

use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vw_ctl::client::Client;
use vw_ctl::proto::Request;
use vw_e2e::etcd::Etcd;
use vw_e2e::*;

struct Opts {
    connects: usize,
    moves: usize,
    wires: usize,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts { connects: 30, moves: 100, wires: 1000 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Result<usize, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or(format!("{what} needs a number"))
        };
        match a.as_str() {
            "--connects" => o.connects = num("--connects")?,
            "--moves" => o.moves = num("--moves")?,
            "--wires" => o.wires = num("--wires")?.min(3000),
            "-h" | "--help" => {
                return Err(
                    "usage: vw-dirbench [--connects N (30)] [--moves N (100)] [--wires N (1000, at most 3000)]\n\
                            Runs as root: a single-node etcd (Debian's etcd-server) and three vwfabric hosts; \
                            prints a markdown table."
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    Ok(o)
}

fn req(v: Value) -> Request {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn ok(c: &mut Client, v: Value) -> Value {
    let reply = c.call(&req(v.clone())).unwrap_or_else(|e| panic!("{v}: {e}"));
    assert!(reply.ok, "{v} refused: {:?}", reply.error);
    reply.result.unwrap_or(Value::Null)
}

fn wires(c: &mut Client) -> Vec<Value> {
    ok(c, json!({"cmd": "wire_list"})).as_array().cloned().unwrap_or_default()
}

/// The wire `id` has a half on the fabric `c` talks to (not kind `remote`).
fn half(c: &mut Client, id: u64) -> Option<Value> {
    wires(c).into_iter().find(|w| w["wire"] == id && w["kind"] != "remote")
}

fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Instant {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_micros(500));
    }
    Instant::now()
}

fn add_vhost(c: &mut Client, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.sock")).display().to_string();
    ok(c, json!({"cmd": "endpoint_add", "name": name, "spec": {"type": "vhost_user", "path": path, "client": true}}));
}

fn directory(c: &mut Client) -> Value {
    ok(c, json!({"cmd": "status"}))["directory"].clone()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> ExitCode {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(env) = setup("dirbench", &["etcd", "etcdctl"]) else {
        eprintln!("vw-dirbench: missing prerequisites (above)");
        return ExitCode::FAILURE;
    };
    let etcd = Etcd::start(&env);
    let mut ul = Underlay::new(&env);
    let socks = env.dir.join("socks");
    std::fs::create_dir_all(&socks).unwrap();
    let hosts: Vec<Fabric> = (1..=3)
        .map(|i| {
            let extra = ["--directory", &etcd.url(), "--directory-domain", "bench", "--host-name", &format!("h{i}")]
                .iter()
                .map(|s| s.to_string())
                .collect();
            host_on(&env, &mut ul, i, &format!("10.0.0.{i}/24"), extra)
        })
        .collect();
    let mut c: Vec<Client> = hosts.iter().map(|h| Client::connect(&h.socket).expect("control socket")).collect();
    let t_all = Instant::now();

    // 1. connect by name, to both halves.
    add_vhost(&mut c[0], &socks, "ca");
    add_vhost(&mut c[1], &socks, "cb");
    until("h1 sees ca and cb", Duration::from_secs(10), || directory(&mut c[0])["endpoints"] == 2);
    let (mut reply, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..o.connects {
        let t0 = Instant::now();
        ok(&mut c[0], json!({"cmd": "connect", "wire": 7, "endpoint": "ca", "peer": "cb"}));
        let t1 = Instant::now();
        let t2 = until("h2's half of wire 7", Duration::from_secs(5), || half(&mut c[1], 7).is_some());
        reply.push(ms(t1 - t0));
        peer.push(ms(t2 - t0));
        ok(&mut c[0], json!({"cmd": "disconnect", "wire": 7}));
        until("h2's half of wire 7 gone", Duration::from_secs(5), || half(&mut c[1], 7).is_none());
    }

    // 2. moves through the directory.
    add_vhost(&mut c[0], &socks, "ma");
    add_vhost(&mut c[1], &socks, "m");
    until("h1 sees m on h2", Duration::from_secs(5), || directory(&mut c[0])["endpoints"] == 4);
    add_vhost(&mut c[2], &socks, "m");
    ok(&mut c[0], json!({"cmd": "connect", "wire": 8, "endpoint": "ma", "peer": "m"}));
    until("h1's half of wire 8 to h2", Duration::from_secs(5), || {
        half(&mut c[0], 8).is_some_and(|w| w["peer"] == "10.0.0.2")
    });
    let mut moves = Vec::new();
    let mut at = 1; // index of the host m lives on
    for _ in 0..o.moves {
        let to = 3 - at; // 1 <-> 2
        let t0 = Instant::now();
        ok(&mut c[at], json!({"cmd": "endpoint_del", "name": "m"}));
        let vtep = format!("10.0.0.{}", to + 1);
        let t1 = until("h1 re-points wire 8", Duration::from_secs(5), || {
            half(&mut c[0], 8).is_some_and(|w| w["peer"] == vtep.as_str())
        });
        moves.push(ms(t1 - t0));
        add_vhost(&mut c[at], &socks, "m");
        let want = format!("endpoint m: lives on host h{}", to + 1);
        until("m advertised again behind the other", Duration::from_secs(5), || {
            directory(&mut c[at])["problems"].to_string().contains(&want)
        });
        at = to;
    }

    // 3. 1000 wires by name across three fabrics.
    let n = o.wires;
    for i in 0..n {
        add_vhost(&mut c[i % 3], &socks, &format!("w{i}a"));
        add_vhost(&mut c[(i + 1) % 3], &socks, &format!("w{i}b"));
    }
    let names = (4 + 2 * n) as u64;
    for ck in c.iter_mut() {
        until("every fabric sees every endpoint", Duration::from_secs(60), || directory(ck)["endpoints"] == names);
    }
    let t0 = Instant::now();
    for i in 0..n {
        ok(&mut c[0], json!({"cmd": "connect", "endpoint": format!("w{i}a"), "peer": format!("w{i}b")}));
    }
    let t_replies = t0.elapsed();
    for (k, ck) in c.iter_mut().enumerate() {
        // The wires with an end on host k, and wire 8 on h1 and where m is.
        let want = (0..n).filter(|i| i % 3 == k || (i + 1) % 3 == k).count() + usize::from(k == 0 || k == at);
        until("every half set up", Duration::from_secs(120), || {
            wires(ck).iter().filter(|w| w["kind"] != "remote").count() >= want
        });
    }
    let t_halves = t0.elapsed();
    let dump = etcd.etcdctl(&["get", "--prefix", "/virtualwire/bench/"]);
    let text = String::from_utf8_lossy(&dump.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let keys = lines.len() / 2;
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let status = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let db = serde_json::from_slice::<Value>(&status.stdout)
        .ok()
        .and_then(|v| v[0]["Status"]["dbSize"].as_u64())
        .unwrap_or(0);
    for (k, h) in hosts.iter().enumerate() {
        assert!(!h.log_text().contains("panicked"), "h{} panicked:\n{}", k + 1, h.log_text());
    }

    let today = std::process::Command::new("date").arg("+%Y-%m-%d").output().map(|o| o.stdout).unwrap_or_default();
    println!("vw-dirbench, {} ({} s in all)\n", String::from_utf8_lossy(&today).trim(), t_all.elapsed().as_secs());
    println!("| measure | runs | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (what, v) in [
        ("connect by name on h1: reply (h1's half set up)", &mut reply),
        ("connect by name on h1: h2's half set up from the directory", &mut peer),
        ("move: endpoint deleted on its host -> h1's half re-pointed to the other", &mut moves),
    ] {
        let max = v.iter().copied().fold(0.0, f64::max);
        println!("| {what} | {} | {:.2} ms | {:.2} ms | {:.2} ms |", v.len(), pct(v, 0.5), pct(v, 0.99), max);
    }
    println!();
    println!("| {n} wires by name across 3 fabrics | |");
    println!("|---|---|");
    println!("| last connect answered | {:.2} s ({:.2} ms each) |", t_replies.as_secs_f64(), ms(t_replies) / n as f64);
    println!("| every half set up on its two hosts | {:.2} s |", t_halves.as_secs_f64());
    println!("| etcd keys of the domain (3 hosts, {} endpoint names, {} wires) | {keys} |", names, n + 1);
    println!("| their keys and values | {bytes} bytes ({:.0} per wire) |", bytes as f64 / (n + 1) as f64);
    println!("| etcd database size | {:.1} MiB |", db as f64 / (1 << 20) as f64);
    ExitCode::SUCCESS
}
