#!/usr/bin/env python3
"""Runs a shell command in a test guest (ci/guest/init) and prints its output.

    ci/guest/cmd.py AGENT_SOCKET 'ping -c 3 192.168.7.2'

AGENT_SOCKET is the Unix socket of the guest's second serial port (QEMU
`-chardev socket,id=agent,path=AGENT_SOCKET,server=on,wait=off -serial
chardev:agent`). Waits up to --boot seconds for the guest to answer if it is
still booting, then exits with the command's exit code.
"""
import argparse
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("socket")
    ap.add_argument("command")
    ap.add_argument("--boot", type=float, default=120, help="seconds to wait for the guest (default 120)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds the command may take (default 120)")
    a = ap.parse_args()
    deadline = time.time() + a.boot
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(a.socket)
            break
        except OSError as e:
            if time.time() > deadline:
                sys.exit(f"cmd.py: cannot reach the guest's agent at {a.socket}: {e}")
            time.sleep(0.2)
    buf = bytearray()

    def readline():
        """One line from the agent, or b"" when it closed its port."""
        while b"\n" not in buf:
            d = s.recv(4096)
            if not d:
                return b""
            buf.extend(d)
        i = buf.index(b"\n") + 1
        line = bytes(buf[:i])
        del buf[:i]
        return line

    def closed():
        sys.exit("cmd.py: the guest's agent closed its port")

    # Until the guest answers, ask every second (a guest still booting runs
    # the queued questions later, in order: their answers come before the
    # command's own marker, which is all that is read for).
    s.settimeout(1)
    while True:
        if time.time() > deadline:
            sys.exit("cmd.py: the guest did not answer in time")
        s.sendall(b"echo @@sync\n")
        try:
            line = readline()
            if not line:
                closed()
            if line.strip() == b"@@sync":
                break
        except socket.timeout:
            continue
    nonce = f"@@start-{time.time_ns()}".encode()
    s.settimeout(a.timeout)
    s.sendall(b"echo " + nonce + b"; " + a.command.encode() + b"\n")
    started = False
    while True:
        line = readline()
        if not line:
            closed()
        if not started:
            started = line.strip() == nonce
            continue
        if line.startswith(b"@@rc "):
            sys.exit(int(line.split()[1]))
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
