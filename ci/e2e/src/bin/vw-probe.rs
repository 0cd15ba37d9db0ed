//! `vw-probe`: traffic for the end-to-end tests, run inside a VM namespace
//! (`ip netns exec VM vw-probe ...`). Plain kernel sockets, nothing else.
//!
//! * `tcp-recv PORT`: accept one connection, read to EOF, print
//!   `<bytes> <sha256>`; prints `listening` first.
//! * `tcp-send ADDR:PORT BYTES`: send BYTES of deterministic pseudo-random
//!   data, print `<bytes> <sha256>`.
//!
//! Both give up after 60 s so a broken wire fails a test instead of hanging it.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["tcp-recv", port] => port.parse().map_err(|_| "bad port".to_string()).and_then(recv),
        ["tcp-send", addr, bytes] => {
            bytes.parse().map_err(|_| "bad byte count".to_string()).and_then(|b| send(addr, b))
        }
        _ => Err("usage: vw-probe tcp-recv PORT | tcp-send ADDR:PORT BYTES".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vw-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
