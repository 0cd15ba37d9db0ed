//! The control socket under abuse, on the real `vwfabric`: its permissions
//! and group, a second fabric on the same socket or file prefix, garbage,
//! oversized, half-sent and slow requests, and many clients at once. Every
//! refusal changes nothing. Run as root:
//! `cargo test --release -p vw-e2e --test control -- --test-threads=1`.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vw_e2e::*;

/// A raw connection to the control socket.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let w = UnixStream::connect(socket).expect("connect to the control socket");
        w.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { r: BufReader::new(w.try_clone().unwrap()), w }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write to the control socket");
    }

    /// The next reply line, parsed.
    fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read a reply");
        assert!(line.ends_with('\n'), "no complete reply line: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
    }

    fn request(&mut self, line: &str) -> Value {
        self.send(format!("{line}\n").as_bytes());
        self.reply()
    }

    /// True when the server closed the connection (a reset if it left
    /// bytes we sent unread).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

fn code(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "expected a refusal: {reply}");
    reply["error"]["code"].as_str().unwrap_or_else(|| panic!("refusal without a code: {reply}"))
}

/// What a refusal must leave as it was.
fn config(f: &Fabric, state: &Path) -> (String, Vec<Value>, Vec<Value>) {
    let strip = |v: Value, keep: &[&str]| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| keep.iter().map(|k| (k.to_string(), e[*k].clone())).collect::<serde_json::Map<_, _>>().into())
            .collect()
    };
    (
        std::fs::read_to_string(state).expect("state file"),
        strip(f.json(&["wire", "list"]), &["wire", "kind", "endpoint", "peer", "encap"]),
        strip(f.json(&["endpoint", "list"]), &["name", "spec", "port"]),
    )
}

/// Starts `vwfabric` with `args` expecting it to refuse to start; returns its stderr.
fn refused_start(env: &Env, args: &[String]) -> String {
    let t = Instant::now();
    let out = Command::new(env.bin.join("vwfabric")).args(args).stdin(Stdio::null()).output().expect("run vwfabric");
    assert_eq!(out.status.code(), Some(1), "vwfabric {args:?} must refuse to start: {out:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "the refusal is quick");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("EAL:"), "refused before DPDK started (no device touched): {err}");
    err
}

#[test]
fn socket_permissions_group_and_second_fabrics() {
    let Some(env) = setup("ctl_claims", &[]) else { return };
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    let (gname, gid) = groups
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse::<u32>().ok()?))
        })
        .find(|(_, gid)| *gid != 0)
        .expect("a group other than root in /etc/group");
    let state = env.dir.join("state.json");
    let opts = FabricOpts {
        extra: vec!["--state".into(), state.display().to_string(), "--socket-group".into(), gname.clone()],
        ..Default::default()
    };
    let mut f = Fabric::start(&env, "h1", opts);
    f.add_tap("vm1", &format!("vw{}e1", env.tag));
    f.add_tap("vm2", &format!("vw{}e2", env.tag));
    f.ctl_ok(&["connect", "3", "vm1", "vm2"]);
    let meta = std::fs::metadata(&f.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), gid, "the socket belongs to --socket-group {gname}");
    let before = config(&f, &state);
    let pid = f.json(&["status"])["pid"].clone();

    let prefix = format!("vwe2e-{}-h1", env.tag);
    let other_socket = env.dir.join("other.sock");
    let eal = |p: &str| ["--", "--lcores", "0@0,1@1", "--no-huge", "-m", "64", "--file-prefix", p].map(str::to_owned);
    let cmd = |socket: &Path, p: &str, extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--socket".to_owned(), socket.display().to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(eal(p));
        v
    };
    let run_refused = |v: Vec<String>| refused_start(&env, &v);

    // The same socket, another prefix.
    let err = run_refused(cmd(&f.socket, &format!("{prefix}-x"), &[]));
    assert!(
        err.contains(&format!(
            "another vwfabric (pid {pid}) is starting or running on control socket {}",
            f.socket.display()
        )),
        "{err}"
    );
    // The same prefix, another socket: the message names the running fabric.
    let err = run_refused(cmd(&other_socket, &prefix, &[]));
    assert!(
        err.contains(&format!("another vwfabric (pid {pid}, control socket {})", f.socket.display()))
            && err.contains(&format!("--file-prefix {prefix}")),
        "{err}"
    );
    assert!(!other_socket.exists(), "the refused fabric left no socket behind");
    // A group that does not exist.
    let err = run_refused(cmd(&other_socket, &format!("{prefix}-y"), &["--socket-group", "no-such-group-vw"]));
    assert!(err.contains("no-such-group-vw: no such group"), "{err}");
    // An underlay MTU whose frames would not fit one mbuf.
    let err = run_refused(cmd(
        &other_socket,
        &format!("{prefix}-z"),
        &["--uplink", "net_null9", "--vtep", "10.0.0.1/24", "--underlay-mtu", "9000"],
    ));
    assert!(
        err.contains("an underlay MTU of 9000 needs mbufs of at least 9142 bytes") && err.contains("--mbuf-size"),
        "{err}"
    );
    // Port 4500 belongs to ESP in UDP.
    let err = run_refused(cmd(&other_socket, &format!("{prefix}-p"), &["--vwire-port", "4500"]));
    assert!(err.contains("UDP port 4500 carries ESP in UDP"), "{err}");

    // The first fabric did not notice.
    assert_eq!(f.json(&["status"])["pid"], pid);
    assert_eq!(config(&f, &state), before, "the refused starts changed nothing");
    assert!(f.stop().success());
}

#[test]
fn garbage_oversized_half_sent_slow_and_concurrent_requests() {
    let Some(env) = setup("ctl_abuse", &[]) else { return };
    let state = env.dir.join("state.json");
    let opts = FabricOpts { extra: vec!["--state".into(), state.display().to_string()], ..Default::default() };
    let mut f = Fabric::start(&env, "h1", opts);
    f.add_tap("vm1", &format!("vw{}e1", env.tag));
    f.add_tap("vm2", &format!("vw{}e2", env.tag));
    f.add_tap("vm3", &format!("vw{}e3", env.tag));
    f.ctl_ok(&["connect", "3", "vm1", "vm2"]);
    let before = config(&f, &state);
    let socket = f.socket.clone();

    // Garbage gets an error and the connection stays usable.
    let mut c = Raw::connect(&socket);
    assert_eq!(code(&c.request("hello fabric")), "bad_request");
    let mut binary: Vec<u8> = (0..=255u8).filter(|b| *b != b'\n').collect();
    binary.push(b'\n');
    c.send(&binary);
    assert_eq!(code(&c.reply()), "bad_request");
    for bad in [
        r#"{"cmd":"connect","wire":"three","endpoint":"vm3","peer":"vm1"}"#,
        r#"{"cmd":"connect","wire":-1,"endpoint":"vm3","peer":"vm1"}"#,
        r#"{"cmd":"connect","wire":4294967296,"endpoint":"vm3","peer":"vm1"}"#,
        r#"{"cmd":"disconnect","wire":3,"force":true}"#,
        r#"{"cmd":"endpoint_del"}"#,
        r#"{"cmd":"reboot"}"#,
        r#"{"cmd":"status""#,
        r#"[1,2,3]"#,
        r#""status""#,
    ] {
        assert_eq!(code(&c.request(bad)), "bad_request", "{bad}");
    }
    // Well-formed requests the fabric refuses.
    for (bad, want) in [
        (r#"{"cmd":"connect","wire":3,"endpoint":"vm3","peer":"vm1"}"#, "wire_exists"),
        (r#"{"cmd":"connect","wire":4,"endpoint":"vm1","peer":"vm3"}"#, "endpoint_busy"),
        (r#"{"cmd":"connect","wire":4,"endpoint":"nosuch","peer":"vm3"}"#, "no_such_endpoint"),
        (r#"{"cmd":"endpoint_del","name":"vm1"}"#, "endpoint_busy"),
        (r#"{"cmd":"endpoint_add","name":"vm1","spec":{"type":"dpdk","devargs":"net_null9"}}"#, "endpoint_exists"),
        (r#"{"cmd":"disconnect","wire":99}"#, "no_such_wire"),
    ] {
        assert_eq!(code(&c.request(bad)), want, "{bad}");
    }
    assert_eq!(c.request(r#"{"cmd":"status"}"#)["ok"], true, "the connection still works");
    drop(c);

    // Oversized: refused at the limit and the connection closed.
    let mut big = Raw::connect(&socket);
    let _ = big.w.write_all(&vec![b'x'; 200 * 1024]);
    assert_eq!(code(&big.reply()), "too_large");
    assert!(big.closed());

    // Half-sent and slow requests time out; others are served meanwhile.
    let mut half = Raw::connect(&socket);
    half.send(br#"{"cmd":"sta"#);
    let slow = std::thread::spawn({
        let socket = socket.clone();
        move || {
            let mut s = Raw::connect(&socket);
            let t = Instant::now();
            for b in br#"{"cmd":"status"}"# {
                if s.w.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            (s.reply(), t.elapsed())
        }
    });
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(Raw::connect(&socket).request(r#"{"cmd":"wire_list"}"#)["ok"], true);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "other clients are served while two are stuck: {:?}", t.elapsed());
    let r = half.reply();
    assert_eq!(code(&r), "timeout", "{r}");
    assert!(half.closed());
    let (r, took) = slow.join().unwrap();
    assert_eq!(code(&r), "timeout", "{r}");
    assert!(took < Duration::from_secs(7), "the slow client was cut off at the request timeout ({took:?})");

    // Many clients at once, each with several requests.
    let workers: Vec<_> = (0..48)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Raw::connect(&socket);
                for k in 0..10 {
                    let req = if (i + k) % 2 == 0 { r#"{"cmd":"status"}"# } else { r#"{"cmd":"stats"}"# };
                    let r = c.request(req);
                    assert_eq!(r["ok"], true, "client {i} request {k}: {r}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a concurrent client failed");
    }
    // Past the client limit: a clear refusal, then service again once
    // clients leave.
    // (The threads of the clients that just left may take a moment to end:
    // until then a newcomer is still refused, so each one retries.)
    let served = |i: usize| -> Raw {
        let t = Instant::now();
        loop {
            let mut c = Raw::connect(&socket);
            c.send(b"{\"cmd\":\"status\"}\n");
            let r = c.reply();
            if r["ok"] == true {
                return c;
            }
            assert_eq!(code(&r), "too_many_clients", "held client {i}: {r}");
            assert!(t.elapsed() < Duration::from_secs(3), "held client {i} never served");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let held: Vec<Raw> = (0..64).map(served).collect();
    let mut extra = Raw::connect(&socket);
    let r = extra.reply();
    assert_eq!(code(&r), "too_many_clients", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("64 clients"), "{r}");
    drop(held);
    let t = Instant::now();
    while !f.ctl(&["status"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(3), "served again once the clients left");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A client that vanishes mid-request, or before reading its reply.
    let mut gone = Raw::connect(&socket);
    gone.send(br#"{"cmd":"stats"}"#);
    drop(gone);
    let mut gone = Raw::connect(&socket);
    gone.send(b"{\"cmd\":\"stats\"}\n");
    drop(gone);

    assert_eq!(config(&f, &state), before, "refused and read-only requests changed nothing");
    let log = f.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(f.stop().success(), "{log}");
}
