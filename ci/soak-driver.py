#!/usr/bin/env python3
"""The soak's wire changes and samples (run by ci/soak.sh, not by hand).

One process, one control connection, so that what the soak adds to the
machine besides the fabric and the traffic is small and steady: a `vwctl`
process per change costs a fork and an exec, about 1.3 ms of CPU, and the
stand-in VMs share that CPU.

Wire changes: one per CHURN_PERIOD_US slot, round robin over the churned
wires (connect each, then disconnect each, and so on). A change that
overruns its slot skips the slots it missed. Each change is logged to
churn.log as "t_us op wire rc latency_us", with rc as `vwctl` would exit
(0 done, 1 refused, 3 fabric unreachable); failures also go to churn.err.
At the end churn.up lists the wires still connected.

Samples, once a second: the fabric's VmRSS and `stats` result
(samples/N.json, as `vwctl --json stats` prints it), and the CPU time
(clock ticks) of the whole machine, the fabric and vwperf. samples.tsv:
"t_us rss_kb mbufs_in_use machine_busy fabric_cpu perf_cpu"; a sample that
comes late skips the slots it missed.

Both stop when WORK/stop exists or on SIGTERM. Settings come from the
environment: WORK, SOCK, FABRIC_PID, PERF_PID, CHURN_PERIOD_US and
CHURN_SPEC ("wire endpoint peer encap;..." with encap "-" for a loopback
wire).
"""

import json
import os
import re
import signal
import socket
import sys
import time

E = os.environ
WORK = E["WORK"]
SOCK = E["SOCK"]
FABRIC_PID = int(E["FABRIC_PID"])
PERF_PID = int(E["PERF_PID"])
PERIOD_US = int(E["CHURN_PERIOD_US"])
SAMPLE_US = 1_000_000
STOP = os.path.join(WORK, "stop")


def parse_spec(spec):
    wires = []
    for item in spec.split(";"):
        wire, endpoint, peer, encap = item.split()
        req = {"cmd": "connect", "wire": int(wire), "endpoint": endpoint, "peer": peer}
        if encap != "-":
            req["encap"] = encap
        wires.append(req)
    return wires


class Control:
    """One connection to the control socket, reopened after an error."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def request(self, req):
        """Returns (rc, result or error message), rc as vwctl exits."""
        try:
            if self.sock is None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(120)  # as vwctl: a change may take that long to be answered
                s.connect(self.path)
                self.sock = s
            self.sock.sendall(json.dumps(req, separators=(",", ":")).encode() + b"\n")
            while b"\n" not in self.buf:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("the fabric closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            reply = json.loads(line)
        except (OSError, ValueError) as e:
            self.close()
            return 3, f"cannot reach the fabric: {e}"
        if reply.get("ok"):
            return 0, reply.get("result")
        err = reply.get("error") or {}
        return 1, f"{err.get('code')}: {err.get('message')}"


def rss_kb():
    try:
        with open(f"/proc/{FABRIC_PID}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy():
    """Clock ticks all CPUs spent busy: user nice system irq softirq steal."""
    with open("/proc/stat") as f:
        t = f.readline().split()
    return sum(int(t[i]) for i in (1, 2, 3, 6, 7, 8))


def cpu_ticks(pid):
    """utime + stime of a process (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(") ", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def main():
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    wires = parse_spec(E["CHURN_SPEC"])
    ctl = Control(SOCK)
    os.makedirs(os.path.join(WORK, "samples"), exist_ok=True)
    churn_log = open(os.path.join(WORK, "churn.log"), "a", buffering=1)
    churn_err = open(os.path.join(WORK, "churn.err"), "a", buffering=1)
    samples = open(os.path.join(WORK, "samples.tsv"), "a", buffering=1)
    up = set()
    t0 = time.monotonic_ns() // 1000
    churn_slot = sample_slot = 0
    k = n = 0
    while not stopping and not os.path.exists(STOP):
        now = time.monotonic_ns() // 1000 - t0
        next_churn = churn_slot * PERIOD_US
        next_sample = sample_slot * SAMPLE_US
        if now < min(next_churn, next_sample):
            time.sleep((min(next_churn, next_sample) - now) / 1e6)
            continue
        if now >= next_sample:
            rc, result = ctl.request({"cmd": "stats"})
            m = "?"
            if rc == 0:
                text = json.dumps(result, separators=(",", ":"))
                with open(os.path.join(WORK, "samples", f"{n}.json"), "w") as f:
                    f.write(text + "\n")
                found = re.search(r'"in_use":\s*([0-9]+)', text)
                if found:
                    m = found.group(1)
            samples.write(f"{now} {rss_kb()} {m} {machine_busy()} {cpu_ticks(FABRIC_PID)} {cpu_ticks(PERF_PID)}\n")
            n += 1
            after = time.monotonic_ns() // 1000 - t0
            sample_slot = max(sample_slot + 1, after // SAMPLE_US + 1)
            continue
        w = wires[k % len(wires)]
        a = time.monotonic_ns() // 1000 - t0
        if w["wire"] in up:
            op = "disconnect"
            rc, msg = ctl.request({"cmd": "disconnect", "wire": w["wire"]})
            if rc == 0:
                up.discard(w["wire"])
        else:
            op = "connect"
            rc, msg = ctl.request(w)
            if rc == 0:
                up.add(w["wire"])
        b = time.monotonic_ns() // 1000 - t0
        churn_log.write(f"{a} {op} {w['wire']} {rc} {b - a}\n")
        if rc != 0:
            churn_err.write(f"{op} {w['wire']} at {a // 1000} ms: {msg} (exit code {rc})\n")
        k += 1
        churn_slot = max(churn_slot + 1, b // PERIOD_US + 1)
    with open(os.path.join(WORK, "churn.up"), "w") as f:
        f.write(" ".join(str(x) for x in sorted(up)) + "\n")
    ctl.close()


if __name__ == "__main__":
    sys.exit(main())
