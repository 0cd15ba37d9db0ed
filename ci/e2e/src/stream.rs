//! A sequenced UDP stream between two VMs (`vw-probe stream`), and what
//! each side sent against what the other received.

use crate::Env;
use crate::Netns;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::time::Duration;

/// What one side of a stream sent, and what it received from the other:
/// (seq, sent_ns, recv_ns) in arrival order.
pub type Seen = (u64, Vec<(u64, u64, u64)>);

/// A running `vw-probe stream` in a VM.
pub struct Stream {
    child: Child,
    gate: std::path::PathBuf,
}

impl Stream {
    /// Starts `vw-probe stream` in `vm`, listening; it sends once the gate
    /// opens ([`Stream::open_both`]).
    pub fn start(env: &Env, vm: &Netns, dst: &str, rate: u64) -> Stream {
        let probe = env.bin.join("vw-probe");
        let gate = env.dir.join(format!("{}.gate", vm.name));
        let _ = std::fs::remove_file(&gate);
        let rate = rate.to_string();
        let mut child = vm.spawn(&[probe.to_str().unwrap(), "stream", "7000", dst, &rate, gate.to_str().unwrap()]);
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Stream { child, gate }
    }

    /// Stops the sender, as QEMU stops a VM (it goes on where it was).
    pub fn pause(&self) {
        std::fs::write(self.gate.with_extension("pause"), "").unwrap();
        // The probe looks every millisecond.
        std::thread::sleep(Duration::from_millis(3));
    }

    pub fn resume(&self) {
        std::fs::remove_file(self.gate.with_extension("pause")).unwrap();
    }

    /// Both ends listen: both start sending.
    pub fn open_both(a: &Stream, b: &Stream) {
        std::fs::write(&a.gate, "").unwrap();
        std::fs::write(&b.gate, "").unwrap();
    }

    /// Stops both streams' senders at once, then collects each side's
    /// (sent, [(seq, sent_ns, recv_ns)] in arrival order) once its receiver
    /// has waited for what was still on its way.
    pub fn stop_both(a: Stream, b: Stream) -> [Seen; 2] {
        std::fs::remove_file(&a.gate).unwrap();
        std::fs::remove_file(&b.gate).unwrap();
        [a.collect(), b.collect()]
    }

    pub fn collect(mut self) -> Seen {
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(self.child.wait().unwrap().success());
        let mut sent = 0;
        let mut log = Vec::new();
        for l in out.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["sent", n] => sent = n.parse().unwrap(),
                ["rx", a, b, c] => log.push((a.parse().unwrap(), b.parse().unwrap(), c.parse().unwrap())),
                _ => panic!("unexpected stream output {l:?}"),
            }
        }
        (sent, log)
    }
}

/// One direction of the whole stream: what was sent against what arrived.
#[derive(Debug)]
pub struct Totals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

pub fn totals(sent: u64, log: &[(u64, u64, u64)]) -> Totals {
    let mut seen = std::collections::HashSet::new();
    let (mut duplicated, mut reordered, mut top) = (0, 0, 0);
    for &(seq, _, _) in log {
        assert!(seq < sent, "datagram {seq} arrived but only {sent} were sent");
        if !seen.insert(seq) {
            duplicated += 1;
        }
        if seq < top {
            reordered += 1;
        }
        top = top.max(seq);
    }
    Totals { sent, received: log.len() as u64, lost: sent - seen.len() as u64, duplicated, reordered }
}

/// The datagrams that never came, each with the send time of the last one
/// before it that did.
pub fn missing(sent: u64, log: &[(u64, u64, u64)]) -> Vec<(u64, u64)> {
    let mut by_seq: Vec<Option<u64>> = vec![None; sent as usize];
    for &(seq, s, _) in log {
        if seq < sent {
            by_seq[seq as usize] = Some(s);
        }
    }
    let mut last = 0;
    let mut out = Vec::new();
    for (seq, s) in by_seq.iter().enumerate() {
        match s {
            Some(s) => last = *s,
            None => out.push((seq as u64, last)),
        }
    }
    out
}

impl Totals {
    pub fn json(&self) -> Value {
        json!({"sent": self.sent, "received": self.received, "lost": self.lost,
               "duplicated": self.duplicated, "reordered": self.reordered})
    }
}
