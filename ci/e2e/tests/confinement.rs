//! The control socket's group manages wires and nothing else: a non-root
//! member of `--socket-group`, created for the test, tries to make a root
//! fabric touch files, sockets and interfaces it could not touch itself.
//! Each attempt is refused with a clear error, the victims stay byte for
//! byte and flag for flag as they were, and the operator is answered
//! meanwhile.

use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use vw_e2e::*;

/// A user and its group, removed on drop.
struct Member {
    name: String,
    uid: u32,
    gid: u32,
}

impl Member {
    fn create(name: &str) -> Member {
        let _ = Command::new("userdel").arg(name).output();
        let _ = Command::new("groupdel").arg(name).output();
        let ok = |c: &mut Command| {
            let o = c.output().expect("run");
            assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        ok(Command::new("groupadd").arg(name));
        ok(Command::new("useradd").args(["-M", "-N", "-g", name, "-s", "/usr/sbin/nologin", name]));
        let id = |flag: &str| sh(&["id", flag, name]).trim().parse::<u32>().expect("id");
        Member { name: name.to_owned(), uid: id("-u"), gid: id("-g") }
    }

    /// Runs `cmd` as this user, with only its own group.
    fn run(&self, cmd: &[&str]) -> Output {
        Command::new("setpriv")
            .args([&format!("--reuid={}", self.uid), &format!("--regid={}", self.gid), "--clear-groups", "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("setpriv")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// What a file or socket is: its type, mode, owner, inode and bytes.
fn fingerprint(p: &Path) -> Option<(u32, u32, u64, Vec<u8>)> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let bytes = if m.is_file() { std::fs::read(p).ok()? } else { Vec::new() };
    Some((m.mode(), m.uid(), m.ino(), bytes))
}

struct Vwctl<'a> {
    bin: PathBuf,
    socket: &'a Path,
    member: &'a Member,
}

impl<'a> Vwctl<'a> {
    /// `vwctl` for `member` on `f`'s socket: a copy the member can run,
    /// wherever the build is.
    fn for_member(env: &Env, f: &'a Fabric, member: &'a Member) -> Vwctl<'a> {
        let bin = env.dir.join("vwctl");
        std::fs::copy(env.bin.join("vwctl"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Vwctl { bin, socket: &f.socket, member }
    }

    /// As the member: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let bin = self.bin.display().to_string();
        let socket = self.socket.display().to_string();
        let mut cmd = vec![bin.as_str(), "--socket", socket.as_str()];
        cmd.extend_from_slice(args);
        let o = self.member.run(&cmd);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into(),
            String::from_utf8_lossy(&o.stderr).into(),
        )
    }

    /// As the member, a request that must be refused with `code`.
    fn refused(&self, args: &[&str], code: &str) -> String {
        let (rc, out, err) = self.run(args);
        assert_eq!(rc, 1, "{args:?} as a member must be refused: {out}{err}");
        assert!(err.contains(&format!("({code})")), "{args:?}: expected {code}, got: {err}");
        err
    }
}

/// A listening socket at `path` whose backlog is full: a connect to it
/// that may wait, waits for ever.
fn full_listener(path: &Path) -> (rustix::fd::OwnedFd, Vec<rustix::fd::OwnedFd>) {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path).unwrap();
    let l = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&l, &addr).unwrap();
    rustix::net::listen(&l, 1).unwrap();
    let mut pending = Vec::new();
    loop {
        let c = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::NONBLOCK, None).unwrap();
        match rustix::net::connect(&c, &addr) {
            Ok(()) => pending.push(c),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(pending.len() < 1000, "the backlog never filled");
    }
    (l, pending)
}

fn iface_flags(name: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap_or_default()
}

#[test]
fn the_socket_group_manages_wires_and_reaches_nothing_else() {
    let Some(env) = setup("confinement", &[]) else { return };
    let member = Member::create(&format!("vwe2e{}", env.tag));
    // The member may reach the control socket (mode 0660, its group) but
    // nothing else here.
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let vhost_dir = env.dir.join("vhost");
    let opts = FabricOpts {
        extra: vec![
            "--socket-group".into(),
            member.name.clone(),
            "--vhost-dir".into(),
            vhost_dir.display().to_string(),
            "--allow-device".into(),
            "net_null*".into(),
        ],
        uplink: Some((format!("vw{}up", env.tag), "10.77.0.1/24".into())),
        ..Default::default()
    };
    let f = Fabric::start(&env, "h1", opts);
    let ctl = Vwctl::for_member(&env, &f, &member);
    assert_eq!(ctl.run(&["status"]).0, 0, "a member may ask for the status");

    // Victims: a root-only file and directory, a live datagram socket, a
    // listener whose backlog is full, an interface.
    let secret_dir = env.dir.join("root-only");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, b"do not touch\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let victims: Vec<PathBuf> = vec![secret.clone(), secret_dir.clone()];
    let before: Vec<_> = victims.iter().map(|p| fingerprint(p)).collect();
    let lo_flags = iface_flags("lo");
    let s = secret.display().to_string();

    // 1. Raw devargs that reach files and interfaces: permission_denied.
    for devargs in [
        format!("net_vhost9,iface={s}"),
        format!("net_pcap1,tx_pcap={s}"),
        format!("net_pcap6,rx_pcap={s},infinite_rx=1"),
        "net_af_packet0,iface=lo".to_owned(),
        "net_pcap7,iface=lo".to_owned(),
        "net_tap8,iface=lo".to_owned(),
        "net_null3,size=64".to_owned(),
    ] {
        let err = ctl.refused(&["endpoint", "add", "x", &devargs], "permission_denied");
        assert!(err.contains("only root may add DPDK device") && err.contains("`net_null*`"), "{err}");
    }
    // An allowed device is taken.
    let (rc, out, err) = ctl.run(&["endpoint", "add", "n1", "net_null9"]);
    assert_eq!(rc, 0, "an allowed device: {out}{err}");

    // 2. Vhost-user sockets by path: permission_denied; by name: in --vhost-dir.
    let err = ctl.refused(&["endpoint", "add", "v", "--vhost-user", &s], "permission_denied");
    assert!(err.contains("add the endpoint by name"), "{err}");
    let err = ctl.refused(&["endpoint", "add", "v", "--vhost-user", "--client"], "invalid_argument");
    assert!(err.contains("root gives its path"), "{err}");
    for n in ["vm1", "vm2"] {
        let (rc, out, err) = ctl.run(&["endpoint", "add", n, "--vhost-user"]);
        assert_eq!(rc, 0, "{out}{err}");
    }
    let sock = vhost_dir.join("vm1.sock");
    let m = std::fs::symlink_metadata(&sock).expect("vm1.sock in --vhost-dir");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, member.gid), "the socket group's QEMU may connect");
    let d = std::fs::symlink_metadata(&vhost_dir).unwrap();
    assert_eq!((d.mode() & 0o777, d.uid(), d.gid()), (0o750, 0, member.gid), "--vhost-dir is the fabric's");
    let listed = f.json(&["endpoint", "list"]);
    let vm1 = listed.as_array().unwrap().iter().find(|e| e["name"] == "vm1").unwrap();
    assert_eq!(vm1["device"], Value::String(sock.display().to_string()), "{vm1}");
    // Wires: the member's business.
    assert_eq!(ctl.run(&["connect", "5", "vm1", "vm2"]).0, 0);
    assert_eq!(ctl.run(&["disconnect", "5"]).0, 0);
    // Peers the underlay cannot have.
    for (peer, why) in [
        ("10.77.0.255", "broadcast address of the uplink subnet"),
        ("10.77.0.0", "network address of the uplink subnet"),
        ("10.77.0.1", "own VTEP"),
        ("224.0.0.5", "multicast"),
        ("127.0.0.1", "loopback"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("250.1.2.3", "reserved"),
    ] {
        let err = ctl.refused(&["connect", "6", "vm1", peer], "invalid_argument");
        assert!(err.contains(why), "{peer}: {err}");
    }
    // A secure wire's keys are root's to give: a member's own key file is
    // refused, and nothing is connected.
    let mine = env.dir.join("member.keys");
    let (here, _) = vw_ctl::keyfile::generate(128, None).unwrap();
    vw_ctl::keyfile::write_new(&mine, &vw_ctl::keyfile::format(&here, 128)).unwrap();
    std::os::unix::fs::chown(&mine, Some(member.uid), Some(member.gid)).unwrap();
    let key_arg = mine.to_str().unwrap();
    let err = ctl.refused(
        &["connect", "6", "vm1", "10.77.0.2", "--encap", "secure", "--key-file", key_arg],
        "permission_denied",
    );
    assert!(err.contains("only root may give a secure wire's keys"), "{err}");
    assert!(f.wire(6).is_null(), "nothing connected");
    let err = ctl.refused(&["rekey", "6", "--key-file", key_arg], "permission_denied");
    assert!(err.contains("only root may give a secure wire's keys (rekey)"), "{err}");
    assert_eq!(ctl.run(&["endpoint", "del", "vm2"]).0, 0);
    assert!(!vhost_dir.join("vm2.sock").exists(), "endpoint del removes the socket it created");

    // 3. Root's own paths: a stale-looking name that is a live datagram
    // socket, or a listener with a full backlog, is refused and left alone,
    // without stalling the control thread.
    let dgram_path = env.dir.join("log.sock");
    let _dgram = UnixDatagram::bind(&dgram_path).unwrap();
    let dgram_before = fingerprint(&dgram_path);
    let err = f.ctl(&["endpoint", "add", "d", "--vhost-user", dgram_path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&err.stderr).to_string();
    assert!(err.contains("datagram socket"), "{err}");
    assert_eq!(fingerprint(&dgram_path), dgram_before, "the datagram socket is still there, the same one");

    let full_path = env.dir.join("full.sock");
    let (listener, pending) = full_listener(&full_path);
    let t = Instant::now();
    let out = f.ctl(&["endpoint", "add", "full", "--vhost-user", full_path.to_str().unwrap()]);
    assert!(t.elapsed() < Duration::from_secs(2), "a probe of a full listener does not wait");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(full_path.exists());
    drop(listener);
    drop(pending);

    // 4. A symlink swap: root adds a socket in a directory the member
    // owns; the member swaps the directory for a symlink to a root-only one
    // holding a file of the socket's name; the endpoint goes. The victim stays.
    let home = env.dir.join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(member.uid), Some(member.gid)).unwrap();
    let d = home.join("d");
    assert!(member.run(&["mkdir", d.to_str().unwrap()]).status.success());
    let path = d.join("s.sock");
    f.ctl_ok(&["endpoint", "add", "swap", "--vhost-user", path.to_str().unwrap()]);
    let victim = secret_dir.join("s.sock");
    std::fs::write(&victim, b"not a socket of the fabric\n").unwrap();
    let victim_before = fingerprint(&victim);
    assert!(member.run(&["mv", d.to_str().unwrap(), home.join("d.old").to_str().unwrap()]).status.success());
    assert!(member.run(&["ln", "-s", secret_dir.to_str().unwrap(), d.to_str().unwrap()]).status.success());
    f.ctl_ok(&["endpoint", "del", "swap"]);
    assert_eq!(fingerprint(&victim), victim_before, "the file behind the swapped path is untouched");
    assert!(!home.join("d.old/s.sock").exists(), "the socket went from the directory it was made in");

    // Errors that say what was wrong, not an errno from deep inside DPDK.
    let code = |args: &[&str]| -> String {
        let out = f.ctl(&[&["--json"], args].concat());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        format!("{} {}", v["error"]["code"].as_str().unwrap_or("?"), v["error"]["message"].as_str().unwrap_or("?"))
    };
    let e = code(&["endpoint", "add", "u", "net_nosuch0"]);
    assert!(e.starts_with("unknown_driver ") && e.contains("net_tap"), "{e}");
    let missing = env.dir.join("no-such.pcap");
    let e = code(&["endpoint", "add", "p", &format!("net_pcap3,rx_pcap={}", missing.display())]);
    assert!(e.starts_with("no_such_file ") && e.contains("no-such.pcap"), "{e}");

    // 5. Root's device on an existing interface is given back as it was
    // found: not promiscuous, its own MAC.
    let pt = format!("vw{}pt", env.tag);
    sh(&["ip", "tuntap", "add", "dev", &pt, "mode", "tap", "multi_queue"]);
    sh(&["ip", "link", "set", "dev", &pt, "address", "02:00:00:77:00:01", "up"]);
    let (flags0, mac0) = (iface_flags(&pt), std::fs::read_to_string(format!("/sys/class/net/{pt}/address")).unwrap());
    f.ctl_ok(&["endpoint", "add", "pt", &format!("net_tap9,iface={pt}")]);
    let during = iface_flags(&pt);
    f.ctl_ok(&["endpoint", "del", "pt"]);
    let mac1 = std::fs::read_to_string(format!("/sys/class/net/{pt}/address")).unwrap();
    let flags1 = iface_flags(&pt);
    sh(&["ip", "tuntap", "del", "dev", &pt, "mode", "tap", "multi_queue"]);
    assert_ne!(during, flags0, "the fabric made it promiscuous while it used it");
    assert_eq!((flags1, mac1), (flags0, mac0), "the interface is given back as it was found");

    // 6. A socket nobody listens on is replaced only if this fabric made
    // it: one left by someone else is refused and stays.
    let stale = env.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let stale_before = fingerprint(&stale);
    let out = f.ctl(&["endpoint", "add", "st", "--vhost-user", stale.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not one this fabric created"), "{err}");
    assert_eq!(fingerprint(&stale), stale_before);

    // Nothing the member did reached the victims or the interface, and the
    // operator was answered all along.
    let after: Vec<_> = victims.iter().map(|p| fingerprint(p)).collect();
    assert_eq!(after, before, "victim files and directories unchanged");
    assert_eq!(iface_flags("lo"), lo_flags, "lo's flags unchanged");
    let t = Instant::now();
    f.ctl_ok(&["status"]);
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(f);
}

#[test]
fn a_fabric_that_crashed_replaces_its_own_stale_sockets_and_only_those() {
    let Some(env) = setup("own_stale", &[]) else { return };
    if !require_hugepages("own_stale") {
        return;
    }
    let member = Member::create(&format!("vwe2f{}", env.tag));
    let state = env.dir.join("state.json");
    let vhost_dir = env.dir.join("vhost");
    let opts = FabricOpts {
        extra: vec![
            "--state".into(),
            state.display().to_string(),
            "--socket-group".into(),
            member.name.clone(),
            "--vhost-dir".into(),
            vhost_dir.display().to_string(),
        ],
        ..Default::default()
    };
    let mut f = Fabric::start(&env, "h1", opts.clone());
    let path = env.dir.join("root.sock");
    f.ctl_ok(&["endpoint", "add", "r", "--vhost-user", path.to_str().unwrap()]);
    f.ctl_ok(&["endpoint", "add", "byname", "--vhost-user"]);
    let ino = fingerprint(&path).unwrap().2;
    let journal = std::fs::read_to_string(env.dir.join("state.json.journal")).unwrap_or_default();
    assert!(journal.contains(&format!("\"socket_ino\":{ino}")), "the inode is recorded: {journal}");
    // A crash leaves both sockets behind, nobody listening.
    f.kill9();
    assert!(path.exists() && vhost_dir.join("byname.sock").exists());
    let f = Fabric::start(&env, "h1", opts);
    let listed = f.json(&["endpoint", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["byname", "r"], "both restored: {}", f.log_text());
    // (The new socket may get the old inode number back: tmpfs reuses them.)
    let _ = ino;
    assert!(
        std::os::unix::net::UnixStream::connect(&path).is_ok(),
        "its own stale socket was replaced: the fabric listens"
    );
    assert!(std::os::unix::net::UnixStream::connect(vhost_dir.join("byname.sock")).is_ok());
    let st = f.json(&["status"]);
    assert_eq!(st["unrestored"].as_array().map(Vec::len), Some(0), "{st}");
    drop(f);
}

#[test]
fn a_device_that_needs_more_ports_than_are_free_is_refused_as_a_limit_and_leaves_none_behind() {
    let Some(env) = setup("port_limit", &[]) else { return };
    let f = Fabric::start(&env, "h1", FabricOpts::default());
    // Fill every ethdev port: the fabric's own count refuses the next one.
    let mut max = 0;
    loop {
        let out = f.ctl(&["--json", "endpoint", "add", &format!("n{max}"), &format!("net_null{max}")]);
        if !out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["error"]["code"], "endpoint_limit", "{v}");
            break;
        }
        max += 1;
        assert!(max <= 1024, "no limit on DPDK-device endpoints");
    }
    f.ctl_ok(&["endpoint", "del", "n0"]);
    f.ctl_ok(&["endpoint", "del", "n1"]);
    // Three ports wanted, two free: the probe runs out of port ids.
    let out = f.ctl(&[
        "--json",
        "endpoint",
        "add",
        "r",
        "net_ring0,nodeaction=vwra:0:CREATE,nodeaction=vwrb:0:CREATE,nodeaction=vwrc:0:CREATE",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "endpoint_limit", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains(&format!("RTE_MAX_ETHPORTS = {max}")) && m.contains("needs more ethdev ports"), "{m}");
    // The ports the failed probe made are gone: both ids are free again.
    f.ctl_ok(&["endpoint", "add", "n0", "net_null0"]);
    f.ctl_ok(&["endpoint", "add", "n1", "net_null1"]);
    assert_eq!(f.json(&["status"])["endpoints"].as_u64(), Some(max as u64), "{}", f.log_text());
    drop(f);
}

#[test]
fn a_member_cannot_crash_the_fabric_lock_out_root_or_use_root_s_endpoints() {
    let Some(env) = setup("member_limits", &["python3"]) else { return };
    let member = Member::create(&format!("vwe2e{}", env.tag));
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let opts = FabricOpts {
        extra: vec![
            "--socket-group".into(),
            member.name.clone(),
            "--allow-device".into(),
            "net_null*".into(),
            "--allow-device".into(),
            "net_null*,size=*".into(),
        ],
        ..Default::default()
    };
    let f = Fabric::start(&env, "h1", opts);
    let ctl = Vwctl::for_member(&env, &f, &member);
    let pid = f.json(&["status"])["pid"].clone();

    // Device arguments that crash DPDK's device iterator (its layered
    // syntax, which the wildcards match), or carry terminal escapes and
    // forged lines: refused before DPDK sees them.
    for (devargs, why) in [
        ("net_null1=x/class=eth", "may hold only"),
        ("net_null2,size=64/class=eth", "layered"),
        ("net_null3\u{1b}[2J\nroot-vm  1  net_pcap  FAKE", "control characters"),
        (" net_null4", "blanks"),
    ] {
        let err = ctl.refused(&["endpoint", "add", "x", devargs], "invalid_argument");
        assert!(err.contains(why) && !err.contains('\u{1b}'), "{devargs:?}: {err}");
    }
    let long = format!("net_null{}", "x".repeat(80));
    assert!(ctl.refused(&["endpoint", "add", "x", &long], "invalid_argument").contains("1-63 characters"));
    assert!(ctl.refused(&["endpoint", "add", "..", "--vhost-user"], "invalid_argument").contains("'.'"));
    assert_eq!(f.json(&["status"])["pid"], pid, "the fabric is still the same process");

    // Root's endpoints are root's, unless root adds them with --group.
    f.ctl_ok(&["endpoint", "add", "rootdev", "net_null10"]);
    f.ctl_ok(&["endpoint", "add", "shared", "net_null11", "--group"]);
    f.ctl_ok(&["endpoint", "add", "other", "net_null12"]);
    assert_eq!(ctl.run(&["endpoint", "add", "m1", "net_null13"]).0, 0);
    assert_eq!(ctl.run(&["endpoint", "add", "m2", "net_null14"]).0, 0);
    let err = ctl.refused(&["connect", "3", "rootdev", "m1"], "permission_denied");
    assert!(err.contains("endpoint rootdev is root's") && err.contains("--group"), "{err}");
    ctl.refused(&["connect", "3", "m1", "rootdev"], "permission_denied");
    ctl.refused(&["endpoint", "del", "rootdev"], "permission_denied");
    f.ctl_ok(&["connect", "9", "rootdev", "other"]);
    ctl.refused(&["disconnect", "9"], "permission_denied");
    assert_eq!(ctl.run(&["connect", "4", "shared", "m1"]).0, 0, "root shared it");
    assert_eq!(ctl.run(&["disconnect", "4"]).0, 0);
    assert_eq!(ctl.run(&["endpoint", "del", "shared"]).0, 0);
    let listed = f.json(&["endpoint", "list"]);
    let group = |n: &str| listed.as_array().unwrap().iter().find(|e| e["name"] == n).unwrap()["group"].clone();
    assert_eq!((group("rootdev"), group("m1")), (Value::Bool(false), Value::Bool(true)));
    assert!(f.wire(9)["wire"] == 9, "root's wire is still there");

    // A device that hands over frames longer than their buffers: freed
    // unread and counted, never forwarded.
    assert_eq!(ctl.run(&["endpoint", "add", "big", "net_null20,size=60000"]).0, 0);
    assert_eq!(ctl.run(&["connect", "5", "big", "m2"]).0, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(f.drops("malformed_mbuf") > 0, "{}", f.ctl_ok(&["stats"]));
    assert_eq!(u64_of(&f.wire(5)["forward"]["frames"]), 0, "nothing of it forwarded");
    assert_eq!(ctl.run(&["disconnect", "5"]).0, 0);

    // Connections: one member holds at most 16, and the last 8 are root's.
    const HOG: &str = "import socket,sys,time\n\
        held,refused=[],0\n\
        for i in range(40):\n\
        \x20   s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(0.3)\n\
        \x20   try:\n\
        \x20       d=s.recv(4096)\n\
        \x20       refused+=1 if b'too_many_clients' in d else 0\n\
        \x20   except socket.timeout:\n\
        \x20       held.append(s)\n\
        print('held',len(held),'refused',refused,flush=True)\n\
        time.sleep(30)\n";
    let socket = f.socket.display().to_string();
    let mut hog = Command::new("setpriv")
        .args([&format!("--reuid={}", member.uid), &format!("--regid={}", member.gid), "--clear-groups", "--"])
        // The system's Python: a per-user one may be unreadable to the member.
        .args([if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }, "-c", HOG, &socket])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hog.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "held 16 refused 24", "one member's connections are capped");
    let (rc, _, err) = ctl.run(&["status"]);
    assert!(rc == 1 && err.contains("the most one user other than root may hold"), "{err}");
    let t = Instant::now();
    f.ctl_ok(&["status"]);
    assert!(t.elapsed() < Duration::from_secs(1), "root is answered while the member holds its connections");
    let _ = hog.kill();
    let _ = hog.wait();
    drop(f);
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}
