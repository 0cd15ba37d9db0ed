//! Real Linux guests in QEMU, attached to a fabric over vhost-user.
//!
//! The guest is Debian's cloud kernel with a busybox initramfs that
//! `ci/guest/build.sh` makes (ci/setup.sh runs it; the result is cached in
//! `/var/cache/virtualwire/guest`, or `$VW_GUEST_DIR`). Its init configures
//! eth0 from the kernel command line and runs the commands the harness sends
//! on the guest's second serial port (a Unix socket here), answering each
//! with its output and a line `@@rc N`. The first serial port, the console,
//! goes to a log file that failures print.
//!
//! Guests run under TCG: the `/dev/kvm` of the machines this runs on boots
//! no normal guest (see docs/qemu.md). QEMU 7.x crashes under TCG when a
//! vhost-user NIC starts with MSI-X, so its `virtio-net-pci` gets
//! `vectors=0` there; later versions keep MSI-X.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{have, Env};

/// How long a guest may take from QEMU's start (or a reboot) to its agent.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The kernel and initramfs the guests boot.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The busybox initramfs.
    pub initrd: PathBuf,
    /// QEMU's version (major, minor).
    pub qemu: (u32, u32),
}

/// Where `ci/guest/build.sh` puts the image.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("VW_GUEST_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/cache/virtualwire/guest".into())
}

/// Checks that QEMU and the guest image are there. Returns `None` to skip
/// (outside CI); panics in CI (`CI=true`) when something is missing.
pub fn guest_image(test: &str) -> Option<GuestImage> {
    let dir = guest_dir();
    let mut missing = Vec::new();
    if !have("qemu-system-x86_64") {
        missing.push("qemu-system-x86_64 (apt-get install qemu-system-x86; ci/setup.sh does)".to_string());
    }
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    if !kernel.exists() || !initrd.exists() {
        missing.push(format!("the guest image in {} (run ci/guest/build.sh; ci/setup.sh does)", dir.display()));
    }
    if crate::skip_for(test, &missing) {
        return None;
    }
    Some(GuestImage { kernel, initrd, qemu: qemu_version() })
}

fn qemu_version() -> (u32, u32) {
    let out = Command::new("qemu-system-x86_64").arg("--version").output().expect("qemu-system-x86_64 --version");
    let text = String::from_utf8_lossy(&out.stdout);
    // "QEMU emulator version 7.2.22 (Debian ...)"
    let v = text.split_whitespace().nth(3).unwrap_or("0.0");
    let mut it = v.split('.').map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

impl GuestImage {
    /// The same image with `vw-probe` (the e2e crate's traffic tool, with
    /// the shared libraries it needs) in the guest's `/bin`: a second cpio
    /// archive appended to the initramfs, which the kernel unpacks over the
    /// first. Built in the test's directory from the binary under test.
    pub fn with_probe(&self, env: &Env) -> GuestImage {
        self.with_binaries(env, "probe", &[(env.bin.join("vw-probe"), "bin/vw-probe")])
    }

    /// The same image with host binaries added (each `(path on the host,
    /// path in the guest)`), with the shared libraries `ldd` says they need,
    /// as a second cpio archive appended to the initramfs. `name` names the
    /// files made in the test's directory.
    pub fn with_binaries(&self, env: &Env, name: &str, bins: &[(PathBuf, &str)]) -> GuestImage {
        let root = env.dir.join(format!("{name}-root"));
        let _ = std::fs::remove_dir_all(&root);
        let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (bin, inside) in bins {
            files.push((bin.clone(), PathBuf::from(inside)));
            // `ldd` names each library the binary needs and where it is.
            let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
            for l in String::from_utf8_lossy(&ldd.stdout).lines() {
                let path = l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
                if let Some(p) = path {
                    let inside = p.strip_prefix("/").unwrap().to_path_buf();
                    if !files.iter().any(|(_, i)| *i == inside) {
                        files.push((p, inside));
                    }
                }
            }
        }
        for (from, inside) in &files {
            let to = root.join(inside);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} into the guest image: {e}", from.display()));
        }
        // Debug information is most of a binary; the guest needs none.
        for (_, inside) in bins {
            let _ = Command::new("strip").arg(root.join(inside)).status();
        }
        let extra = env.dir.join(format!("{name}.cpio"));
        let list: String = files.iter().map(|(_, i)| format!("{}\n", i.display())).collect();
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet", "-O", extra.to_str().unwrap()])
            .current_dir(&root)
            .stdin(Stdio::piped())
            .spawn()
            .expect("cpio (ci/setup.sh installs it)");
        // Directories first, so that the kernel makes them before the files.
        let mut dirs: Vec<String> = files
            .iter()
            .flat_map(|(_, i)| {
                i.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).map(|a| a.display().to_string())
            })
            .collect();
        dirs.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        dirs.dedup();
        let input: String = dirs.iter().map(|d| format!("{d}\n")).collect::<String>() + &list;
        cpio.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        assert!(cpio.wait().unwrap().success(), "cpio failed");
        let initrd = env.dir.join(format!("initrd-{name}.img"));
        let mut img = std::fs::read(&self.initrd).unwrap();
        // Each archive in an initramfs starts on a 4-byte boundary.
        img.resize(img.len().div_ceil(4) * 4, 0);
        img.extend(std::fs::read(&extra).unwrap());
        std::fs::write(&initrd, img).unwrap();
        GuestImage { initrd, ..self.clone() }
    }
}

/// How a guest's NIC meets the fabric.
#[derive(Debug, Clone)]
pub struct GuestOpts {
    /// eth0's address, with prefix (`192.168.7.1/24`).
    pub ip: String,
    /// eth0's MAC address.
    pub mac: String,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// QEMU listens on `socket` (the fabric's endpoint is `--client`);
    /// otherwise QEMU connects to the fabric's socket, reconnecting every
    /// second when it goes away.
    pub qemu_listens: bool,
    /// Queue pairs (`mq=on` when more than one).
    pub queues: u16,
    /// vCPUs.
    pub cpus: u16,
    /// The MTU QEMU offers the guest (`host_mtu`), which the guest takes
    /// and the fabric learns (VHOST_USER_NET_SET_MTU).
    pub host_mtu: Option<u16>,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Wait for an incoming migration on this TCP port of 127.0.0.1
    /// (`-incoming`) instead of booting.
    pub incoming: Option<u16>,
}

impl GuestOpts {
    /// One queue, one vCPU, 256 MiB, QEMU connecting to the fabric.
    pub fn new(ip: &str, mac: &str, socket: &Path) -> GuestOpts {
        GuestOpts {
            ip: ip.into(),
            mac: mac.into(),
            socket: socket.into(),
            qemu_listens: false,
            queues: 1,
            cpus: 1,
            host_mtu: None,
            memory_mb: 256,
            incoming: None,
        }
    }
}

/// The QEMU command line for a guest (also what docs/qemu.md shows).
pub fn qemu_args(image: &GuestImage, name: &str, opts: &GuestOpts, dir: &Path) -> Vec<String> {
    let mem = opts.memory_mb;
    // 1024-entry rings (QEMU's default is 256), as recommended for
    // vhost-user: room for a burst while a guest's vCPU is busy elsewhere.
    let mut nic = format!("virtio-net-pci,netdev=n0,mac={},romfile=,rx_queue_size=1024,tx_queue_size=1024", opts.mac);
    if opts.queues > 1 {
        // One vector per queue, one for config, one for the control queue.
        nic.push_str(&format!(",mq=on,vectors={}", 2 * opts.queues + 2));
    }
    if image.qemu.0 < 8 {
        // QEMU 7.x segfaults under TCG when a vhost-user NIC starts with
        // MSI-X (its vector notifiers assume KVM): legacy interrupts.
        nic.push_str(",vectors=0");
    }
    if let Some(m) = opts.host_mtu {
        nic.push_str(&format!(",host_mtu={m}"));
    }
    let vu = if opts.qemu_listens {
        format!("socket,id=vu,path={},server=on,wait=off", opts.socket.display())
    } else {
        format!("socket,id=vu,path={},reconnect=1", opts.socket.display())
    };
    let netdev = if opts.queues > 1 {
        format!("vhost-user,id=n0,chardev=vu,queues={}", opts.queues)
    } else {
        "vhost-user,id=n0,chardev=vu".into()
    };
    let s = |v: &str| v.to_string();
    let incoming = opts.incoming.map(|p| vec![s("-incoming"), format!("tcp:127.0.0.1:{p}")]).unwrap_or_default();
    let mut args = vec![
        s("-name"),
        s(name),
        s("-accel"),
        s("tcg"),
        s("-m"),
        format!("{mem}M"),
        s("-smp"),
        opts.cpus.to_string(),
        s("-nographic"),
        s("-nodefaults"),
        s("-no-user-config"),
        s("-kernel"),
        image.kernel.display().to_string(),
        s("-initrd"),
        image.initrd.display().to_string(),
        s("-append"),
        format!("console=ttyS0 quiet panic=-1 vw.ip={} vw.name={name}", opts.ip),
        s("-object"),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        s("-numa"),
        s("node,memdev=mem"),
        s("-chardev"),
        format!("file,id=con,path={}", dir.join(format!("{name}-console.log")).display()),
        s("-serial"),
        s("chardev:con"),
        s("-chardev"),
        format!("socket,id=agent,path={},server=on,wait=off", dir.join(format!("{name}-agent.sock")).display()),
        s("-serial"),
        s("chardev:agent"),
        s("-qmp"),
        format!("unix:{},server=on,wait=off", dir.join(format!("{name}-qmp.sock")).display()),
        s("-chardev"),
        vu,
        s("-netdev"),
        netdev,
        s("-device"),
        nic,
    ];
    args.extend(incoming);
    args
}

/// What QEMU reported of a finished migration.
#[derive(Debug, Clone, Copy)]
pub struct Migrated {
    /// Total time, ms.
    pub total_ms: u64,
    /// The time the guest was stopped, ms (QEMU's `downtime`).
    pub downtime_ms: u64,
}

/// A running guest.
pub struct Guest {
    /// Its name (hostname, file names).
    pub name: String,
    qemu: Child,
    agent: BufReader<UnixStream>,
    console: PathBuf,
    qemu_log: PathBuf,
}

impl Guest {
    /// Starts QEMU and waits until the guest's agent answers.
    pub fn start(env: &Env, image: &GuestImage, name: &str, opts: &GuestOpts) -> Guest {
        let args = qemu_args(image, name, opts, &env.dir);
        let qemu_log = env.dir.join(format!("{name}-qemu.log"));
        let log = std::fs::File::create(&qemu_log).unwrap();
        let qemu = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start qemu-system-x86_64");
        let agent_path = env.dir.join(format!("{name}-agent.sock"));
        let console = env.dir.join(format!("{name}-console.log"));
        let t = Instant::now();
        let mut g = None;
        let mut qemu = Some(qemu);
        while g.is_none() {
            if let Ok(s) = UnixStream::connect(&agent_path) {
                g = Some(Guest {
                    name: name.into(),
                    qemu: qemu.take().unwrap(),
                    agent: BufReader::new(s),
                    console: console.clone(),
                    qemu_log: qemu_log.clone(),
                });
                break;
            }
            if let Some(st) = qemu.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "QEMU for {name} exited at start ({st}):\n{}",
                    std::fs::read_to_string(&qemu_log).unwrap_or_default()
                );
            }
            assert!(t.elapsed() < Duration::from_secs(30), "QEMU for {name} made no agent socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut g = g.unwrap();
        match opts.incoming {
            None => g.wait_ready(),
            Some(port) => {
                // QEMU listens for the migration a moment after it made its
                // sockets; a probing connect would be taken as the migration.
                let listening = format!("0100007F:{port:04X} 00000000:0000 0A");
                let t = Instant::now();
                while !std::fs::read_to_string("/proc/net/tcp").unwrap_or_default().contains(&listening) {
                    assert!(t.elapsed() < Duration::from_secs(30), "QEMU for {name} does not listen on {port}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        g
    }

    /// Migrates the guest (QEMU's own live migration, over QMP) to a QEMU
    /// started with `incoming` on `port`, waiting until it completed.
    /// Afterwards run commands on the destination's `Guest`.
    pub fn migrate_to(&mut self, env: &Env, port: u16) -> Migrated {
        let qmp = env.dir.join(format!("{}-qmp.sock", self.name));
        let s = UnixStream::connect(&qmp).expect("QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut call = |cmd: &str| -> serde_json::Value {
            w.write_all(cmd.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
            loop {
                let mut line = String::new();
                assert!(r.read_line(&mut line).unwrap() > 0, "QMP closed");
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                // Events and the greeting come between replies.
                if v.get("return").is_some() || v.get("error").is_some() {
                    return v;
                }
            }
        };
        call(r#"{"execute":"qmp_capabilities"}"#);
        let v = call(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"tcp:127.0.0.1:{port}"}}}}"#));
        assert!(v.get("error").is_none(), "migrate: {v}\n{}", self.logs());
        let t = Instant::now();
        loop {
            let v = call(r#"{"execute":"query-migrate"}"#);
            let st = &v["return"];
            match st["status"].as_str() {
                Some("completed") => {
                    return Migrated {
                        total_ms: st["total-time"].as_u64().unwrap_or(0),
                        downtime_ms: st["downtime"].as_u64().unwrap_or(0),
                    }
                }
                Some("failed") | Some("cancelled") => panic!("migration of {}: {st}\n{}", self.name, self.logs()),
                _ => {}
            }
            assert!(t.elapsed() < Duration::from_secs(120), "migration of {} did not complete: {st}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the guest's console printed, and QEMU's own log.
    pub fn logs(&self) -> String {
        format!(
            "--- {} console ---\n{}\n--- {} QEMU ---\n{}",
            self.name,
            std::fs::read_to_string(&self.console).unwrap_or_default(),
            self.name,
            std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
        )
    }

    fn read_line(&mut self, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.agent.get_ref().set_read_timeout(Some(left)).unwrap();
        let mut line = String::new();
        match self.agent.read_line(&mut line) {
            Ok(0) => panic!("{}: the guest's agent closed its port\n{}", self.name, self.logs()),
            Ok(_) => line,
            Err(e) => panic!("{}: no answer from the guest in time ({e})\n{}", self.name, self.logs()),
        }
    }

    /// Waits for the agent's `@@ready` (after a boot or a reboot).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while self.read_line(deadline).trim_end() != "@@ready" {}
    }

    /// Runs `cmd` with the guest's shell; returns its exit code and output.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        assert!(!cmd.contains('\n'), "one line per command");
        let s = self.agent.get_mut();
        s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = String::new();
        loop {
            let line = self.read_line(deadline);
            if let Some(rc) = line.trim_end().strip_prefix("@@rc ") {
                return (rc.parse().unwrap_or(-1), out);
            }
            out.push_str(&line);
        }
    }

    /// Runs `cmd` and panics (with the guest's logs) unless it succeeds;
    /// returns its output.
    pub fn ok(&mut self, cmd: &str) -> String {
        let (rc, out) = self.run(cmd, Duration::from_secs(60));
        assert_eq!(rc, 0, "{}: `{cmd}` failed ({rc}):\n{out}\n{}", self.name, self.logs());
        out
    }

    /// Pings `dst` until it answers (up to `secs` seconds).
    /// (A ping that fails at once, as while the link is still down, is
    /// tried again.)
    pub fn wait_reachable(&mut self, dst: &str, secs: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
        while Instant::now() < deadline {
            if self.run(&format!("ping -c 1 -W 1 {dst}"), Duration::from_secs(10)).0 == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Pings `dst` `count` times, 50 ms apart, with `size` bytes of data;
    /// returns the number of replies.
    pub fn ping(&mut self, dst: &str, count: u32, size: u32) -> u32 {
        let (_, out) = self.run(
            &format!("ping -q -c {count} -i 0.05 -W 2 -s {size} {dst}"),
            Duration::from_secs(u64::from(count) + 10),
        );
        // "N packets transmitted, M packets received, ..."
        out.lines()
            .find(|l| l.contains("packets received"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Writes `mib` MiB of random data to /srv/NAME, serves /srv over HTTP
    /// (started once) and returns the file's MD5.
    pub fn serve_random(&mut self, file: &str, mib: u32) -> String {
        let out = self.ok(&format!(
            "dd if=/dev/urandom of=/srv/{file} bs=1M count={mib} 2>/dev/null && md5sum /srv/{file} && \
             (pidof httpd >/dev/null || httpd -p 80 -h /srv)"
        ));
        out.split_whitespace().next().unwrap_or_default().to_owned()
    }

    /// Fetches `url` over HTTP and returns the MD5 of what arrived.
    pub fn fetch_md5(&mut self, url: &str) -> String {
        let (rc, out) = self
            .run(&format!("rm -f /tmp/got; wget -q -O /tmp/got {url} && md5sum /tmp/got"), Duration::from_secs(120));
        assert_eq!(rc, 0, "{}: fetching {url} failed:\n{out}\n{}", self.name, self.logs());
        out.split_whitespace().next().unwrap_or_default().to_owned()
    }

    /// Reboots the guest (`reboot -f`: the vhost-user device stops and
    /// starts again) and waits until it is back.
    pub fn reboot(&mut self) {
        let s = self.agent.get_mut();
        s.write_all(b"reboot -f\n").unwrap();
        self.wait_ready();
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.qemu.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}
