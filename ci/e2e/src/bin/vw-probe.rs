//! `vw-probe`: traffic for the end-to-end tests, run inside a VM namespace
//! (`ip netns exec VM vw-probe ...`). Plain kernel sockets, nothing else.
//!
//! * `tcp-recv PORT`: accept one connection, read to EOF, print
//!   `<bytes> <sha256>`; prints `listening` first.
//! * `tcp-send ADDR:PORT BYTES`: send BYTES of deterministic pseudo-random
//!   data, print `<bytes> <sha256>`.
//!
//! Both give up after 60 s so a broken wire fails a test instead of hanging it.
//! * `stream PORT DST_ADDR:PORT RATE GATE [--summary]`: a sequenced UDP
//!   stream for the migration tests. Sends datagrams numbered 0, 1, 2, ...
//!   at RATE per second to DST from UDP port PORT, and records every
//!   datagram that arrives on PORT. Prints `ready` once it listens; sends
//!   while the file GATE exists (so both ends of a stream listen before
//!   either sends), except while GATE with the extension `.pause` exists
//!   too (a VM stopped by QEMU: it goes on where it was, no catch-up
//!   burst); its receiver stops 1 s after its sender (frames in flight, and
//!   the far end's sender, whose gate closes second). Then prints `sent N` and one
//!   line `rx SEQ SENT_NS RECV_NS` per datagram received (wall clock, ns),
//!   or with `--summary` only what was lost, duplicated, reordered and the
//!   pauses (see `stream_summary`).
//! * `now`: prints the wall clock in ns (to compare a guest's with the
//!   host's).
//! * `message KEYFILE SRC DST KIND WIRE END LOCATION WHEN_NS SEQ SENT_NS
//!   [COPIES]`: sends a migration control message built with
//!   `vw_wire::migration` (the fabrics' own format) from address SRC to
//!   DST:4796, COPIES times (default 1): how the tests play an attacker who
//!   can send UDP to a fabric. SEQ, SENT_NS and WHEN_NS of `now` mean the
//!   clock; SRC may be `FROM/BIND` (claim FROM, send from BIND).
#![forbid(unsafe_code)]

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn recv(port: u16) -> Result<(), String> {
    let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind {port}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("listening");
    std::io::stdout().flush().ok();
    let start = Instant::now();
    let (mut s, _) = loop {
        match l.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > DEADLINE {
                    return Err("no connection within 60 s".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 65536]);
    loop {
        let k = s.read(&mut buf).map_err(|e| format!("read after {n} bytes: {e}"))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
        if start.elapsed() > DEADLINE {
            return Err(format!("transfer not finished within 60 s ({n} bytes)"));
        }
    }
    println!("{n} {}", hex(&h.finalize()));
    Ok(())
}

fn send(addr: &str, bytes: u64) -> Result<(), String> {
    let a = addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(10)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let (mut h, mut left, mut x) = (Sha256::new(), bytes, 0x9e37_79b9_7f4a_7c15u64);
    let mut buf = vec![0u8; 65536];
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        for chunk in buf[..k].chunks_mut(8) {
            // xorshift64: deterministic, incompressible enough for a transfer test.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        s.write_all(&buf[..k]).map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
        h.update(&buf[..k]);
        left -= k as u64;
    }
    s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
    // Wait for the receiver to close, so the sender's exit means delivery.
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let _ = s.read(&mut [0u8; 1]);
    println!("{bytes} {}", hex(&h.finalize()));
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// How long a stream's receiver keeps listening after its sender stopped:
/// the far end's sender stops a little later (its gate goes second).
const STREAM_DRAIN: Duration = Duration::from_millis(1000);

/// A stream ends by itself after this long, gate or not.
const STREAM_DEADLINE: Duration = Duration::from_secs(600);

/// Gaps between arrivals at least this long are listed by `--summary`.
const GAP_LISTED_NS: u64 = 15_000_000;

fn stream(port: u16, dst: &str, rate: u64, gate: &str, summary: bool) -> Result<(), String> {
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let sock = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("bind {port}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
    // Room for a few hundred ms of the stream: on a busy machine the
    // receiving thread can wait that long for a CPU, and what overflows a
    // socket's buffer is lost in the VM's kernel, not on the wire. (Root
    // may go past net.core.rmem_max.)
    let room = (rate as usize * 1024 / 2).max(1 << 20);
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, room).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, room);
    }
    let dst = dst.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let tx = sock.try_clone().map_err(|e| e.to_string())?;
    let (stop_tx, go_tx, paused_tx) = (stop.clone(), go.clone(), paused.clone());
    let sender = std::thread::spawn(move || {
        while !go_tx.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut start = Instant::now();
        let mut seq = 0u64;
        let mut buf = [0u8; 64];
        while !stop_tx.load(Ordering::Relaxed) {
            if paused_tx.load(Ordering::Relaxed) {
                // Stopped, as a VM in QEMU's downtime: it resumes where it
                // was, without a burst for the time it was away.
                let t = Instant::now();
                while paused_tx.load(Ordering::Relaxed) && !stop_tx.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                start += t.elapsed();
                continue;
            }
            let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate.max(1));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            buf[8..16].copy_from_slice(&now_ns().to_be_bytes());
            // A refused send (no route for a moment) still counts as sent:
            // the receiver then reports it lost.
            let _ = tx.send_to(&buf, dst);
            seq += 1;
        }
        seq
    });
    let stop_rx = stop.clone();
    let rx = sock;
    let receiver = std::thread::spawn(move || {
        let mut log = Vec::with_capacity(1 << 17);
        let mut buf = [0u8; 256];
        let mut stop_at: Option<Instant> = None;
        loop {
            if stop_rx.load(Ordering::Relaxed) && stop_at.get_or_insert_with(Instant::now).elapsed() > STREAM_DRAIN {
                break;
            }
            if let Ok(n) = rx.recv(&mut buf) {
                if n >= 16 {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                    let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap_or_default());
                    log.push((seq, sent, now_ns()));
                }
            }
        }
        log
    });
    println!("ready");
    std::io::stdout().flush().ok();
    let t = Instant::now();
    let gate = Path::new(gate);
    while !gate.exists() && t.elapsed() < STREAM_DEADLINE {
        std::thread::sleep(Duration::from_millis(1));
    }
    go.store(true, Ordering::Relaxed);
    let pause = gate.with_extension("pause");
    while gate.exists() && t.elapsed() < STREAM_DEADLINE {
        paused.store(pause.exists(), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| "sender panicked")?;
    let log = receiver.join().map_err(|_| "receiver panicked")?;
    let out = if summary { stream_summary(sent, &log) } else { stream_log(sent, &log) };
    std::io::stdout().write_all(out.as_bytes()).map_err(|e| e.to_string())
}

/// Every datagram received: `sent N`, then `rx SEQ SENT_NS RECV_NS` each.
fn stream_log(sent: u64, log: &[(u64, u64, u64)]) -> String {
    let mut out = String::with_capacity(log.len() * 40);
    out.push_str(&format!("sent {sent}\n"));
    for (seq, s, r) in log {
        out.push_str(&format!("rx {seq} {s} {r}\n"));
    }
    out
}

/// What the receiver saw, in a few lines (a guest's serial port is slow):
/// `sent N` (this side's sender), `received N distinct D duplicated U
/// reordered R top T` (the far side's datagrams; a datagram is reordered
/// if one with a higher number came before it), `missing A-B` per run of
/// numbers below T that never came (at most 50), and `gap SEQ NEXT MS
/// AT_NS` per pause between arrivals of at least 15 ms: datagram SEQ came,
/// then NEXT came MS later, at AT_NS on this side's clock.
fn stream_summary(sent: u64, log: &[(u64, u64, u64)]) -> String {
    let top = log.iter().map(|x| x.0 + 1).max().unwrap_or(0);
    let mut seen = vec![0u32; top as usize];
    let (mut reordered, mut high) = (0u64, 0u64);
    for &(seq, _, _) in log {
        seen[seq as usize] += 1;
        if seq < high {
            reordered += 1;
        }
        high = high.max(seq);
    }
    let distinct = seen.iter().filter(|n| **n > 0).count();
    let duplicated: u64 = seen.iter().map(|n| u64::from(n.saturating_sub(1))).sum();
    let mut out = format!(
        "sent {sent}\nreceived {} distinct {distinct} duplicated {duplicated} reordered {reordered} top {top}\n",
        log.len()
    );
    let mut runs = 0;
    let mut i = 0usize;
    while i < seen.len() && runs < 50 {
        if seen[i] == 0 {
            let a = i;
            while i < seen.len() && seen[i] == 0 {
                i += 1;
            }
            out.push_str(&format!("missing {a}-{}\n", i - 1));
            runs += 1;
        }
        i += 1;
    }
    for w in log.windows(2) {
        let gap = w[1].2.saturating_sub(w[0].2);
        if gap >= GAP_LISTED_NS {
            out.push_str(&format!("gap {} {} {:.1} {}\n", w[0].0, w[1].0, gap as f64 / 1e6, w[1].2));
        }
    }
    out
}

fn message(a: &[&str]) -> Result<(), String> {
    use vw_wire::migration::{kind, Key, Message};
    let [keyfile, src, dst, k, wire, end, location, when, seq, sent, rest @ ..] = a else {
        return Err("message: expected KEYFILE SRC DST KIND WIRE END LOCATION WHEN_NS SEQ SENT_NS [COPIES]".into());
    };
    let key = Key::from_hex(&std::fs::read_to_string(keyfile).map_err(|e| e.to_string())?)?;
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().map_err(|_| format!("{s}: not an IPv4 address"));
    let num =
        |s: &str| if s == "now" { Ok(now_ns()) } else { s.parse::<u64>().map_err(|_| format!("{s}: not a number")) };
    let msg = Message {
        kind: match *k {
            "locate" => kind::LOCATE,
            "ack" => kind::ACK,
            "moved" => kind::MOVED,
            _ => return Err(format!("{k}: locate, ack or moved")),
        },
        wire: vw_wire::ConnectorId(num(wire)? as u32),
        from: ip(src.split('/').next().unwrap_or(src))?,
        location: ip(location)?,
        location_mac: vw_wire::MacAddr::new(2, 0, 0, 0, 0, 0x99),
        encap: vw_wire::Encap::Vwire,
        end: end.to_string(),
        seq: num(seq)?,
        sent_ns: num(sent)?,
        when_ns: num(when)?,
        moves: 0,
    };
    let copies: u32 = rest.first().map_or(Ok(1), |c| c.parse().map_err(|_| "bad COPIES".to_string()))?;
    // SRC may be FROM/BIND: claim FROM in the message, send from BIND.
    let bind = ip(src.rsplit('/').next().unwrap_or(src))?;
    let sock = std::net::UdpSocket::bind((bind, 0)).map_err(|e| format!("bind {bind}: {e}"))?;
    let bytes = msg.encode(&key);
    for _ in 0..copies {
        sock.send_to(&bytes, (ip(dst)?, vw_wire::migration::DEFAULT_PORT)).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["tcp-recv", port] => port.parse().map_err(|_| "bad port".to_string()).and_then(recv),
        ["tcp-send", addr, bytes] => {
            bytes.parse().map_err(|_| "bad byte count".to_string()).and_then(|b| send(addr, b))
        }
        ["stream", port, dst, rate, stop, opts @ ..] if opts.iter().all(|o| *o == "--summary") => {
            match (port.parse(), rate.parse()) {
                (Ok(p), Ok(r)) => stream(p, dst, r, stop, !opts.is_empty()),
                _ => Err("stream: bad port or rate".into()),
            }
        }
        ["now"] => {
            println!("{}", now_ns());
            Ok(())
        }
        ["message", rest @ ..] => message(rest),
        _ => {
            Err("usage: vw-probe tcp-recv PORT | tcp-send ADDR:PORT BYTES | stream PORT DST:PORT RATE GATE [--summary] | now | \
             message ..."
                .into())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vw-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
