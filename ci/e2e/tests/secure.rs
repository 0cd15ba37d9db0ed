//! End-to-end tests of secure wires: ESP in UDP with AES-GCM between two
//! real fabrics (net_tap uplinks on one underlay bridge, namespaces as VMs).
//! Run as root: `cargo test --release -p vw-e2e --test secure -- --test-threads=1`.
//! See docs/security.md.

use serde_json::Value;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use vw_e2e::stream::{totals, Stream};
use vw_e2e::*;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Two fabrics with state files, a VM behind each (192.168.7.1 and .2),
/// secure wire 7 between them with a fresh pair of key files.
struct Secure {
    h1: Fabric,
    h2: Fabric,
    vm1: Vm,
    vm2: Vm,
    ul: Underlay,
    opts1: FabricOpts,
    keys: (PathBuf, PathBuf),
}

/// `vwctl keygen` into `a` and `b`.
fn keygen(env: &Env, a: &PathBuf, b: &PathBuf) {
    keygen_with(env, a, b, &[]);
}

/// `vwctl keygen` into `a` and `b` with `extra` options.
fn keygen_with(env: &Env, a: &PathBuf, b: &PathBuf, extra: &[&str]) {
    let vwctl = env.bin.join("vwctl");
    let mut cmd = vec![vwctl.to_str().unwrap(), "keygen", a.to_str().unwrap(), b.to_str().unwrap()];
    cmd.extend(extra);
    let out = run(&cmd);
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    for f in [a, b] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{} is 0600", f.display());
    }
}

fn secure_hosts(env: &Env, encap: &str) -> Secure {
    secure_hosts_with(env, encap, &[])
}

/// `secure_hosts` with `keygen_extra` given to `vwctl keygen`.
fn secure_hosts_with(env: &Env, encap: &str, keygen_extra: &[&str]) -> Secure {
    let mut ul = Underlay::new(env);
    let t = &env.tag;
    let (up1, up2, e1, e2) = (format!("vw{t}u1"), format!("vw{t}u2"), format!("vw{t}e1"), format!("vw{t}e2"));
    let opts = |up: &str, vtep: &str, mac: &str, state: &str| FabricOpts {
        uplink: Some((up.to_owned(), vtep.to_owned())),
        uplink_mac: Some(mac.to_owned()),
        extra: vec!["--state".into(), env.dir.join(state).display().to_string()],
        ..Default::default()
    };
    let opts1 = opts(&up1, "10.0.0.1/24", "02:00:5e:10:00:01", "h1.state");
    let mut h1 = Fabric::start(env, "h1", opts1.clone());
    let mut h2 = Fabric::start(env, "h2", opts(&up2, "10.0.0.2/24", "02:00:5e:10:00:02", "h2.state"));
    ul.plug(&up1);
    ul.plug(&up2);
    h1.add_tap_mac("vm1", &e1, "02:00:5e:20:00:01");
    h2.add_tap("vm2", &e2);
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.7.1/24", 1400);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &e2, "192.168.7.2/24", 1400);
    let keys = (env.dir.join("w7.keys"), env.dir.join("w7-peer.keys"));
    keygen_with(env, &keys.0, &keys.1, keygen_extra);
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.2", "--encap", encap, "--key-file", keys.0.to_str().unwrap()]);
    h2.ctl_ok(&["connect", "7", "vm2", "10.0.0.1", "--encap", encap, "--key-file", keys.1.to_str().unwrap()]);
    let s = Secure { h1, h2, vm1, vm2, ul, opts1, keys };
    assert!(s.vm1.wait_reachable("192.168.7.2"), "no ping over the {encap} wire\n{}", s.logs());
    s
}

impl Secure {
    fn logs(&self) -> String {
        format!("--- h1 ---\n{}\n--- h2 ---\n{}", self.h1.log_text(), self.h2.log_text())
    }
}

/// The key material in a key file (what must never be shown).
fn key_material(path: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| l.starts_with("out ") || l.starts_with("in "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_secure_wire_carries_ping_and_tcp_and_nothing_in_clear() {
    let Some(env) = setup("secure", &["tshark"]) else { return };
    let s = secure_hosts(&env, "secure");
    let up1 = format!("vw{}u1", env.tag);
    let cap = Capture::start(&s.ul.ns, &up1, env.dir.join("secure.pcap"), "udp");
    assert_eq!(s.vm1.ping("192.168.7.2", 20, 1000), Ping { sent: 20, received: 20 }, "{}", s.logs());
    let (sent, got) = tcp_transfer(&env, &s.vm1.ns, &s.vm2.ns, "192.168.7.2", 4 << 20);
    assert!(sent.starts_with("4194304 "), "sender: {sent}");
    assert_eq!(sent, got, "the receiver's byte count and SHA-256 differ from the sender's");
    let file = cap.stop();

    // On the underlay: ESP in UDP 4500 -> 4500 only, with the key files'
    // SPIs, and not one byte of the VMs' addresses in any frame.
    let w1 = s.h1.wire(7);
    let (out_spi, in_spi) = (u(&w1["secure"]["out_spi"]), u(&w1["secure"]["in_spi"]));
    let rows = tshark_fields(&file, &[], &["udp.srcport", "udp.dstport", "esp.spi", "ip.src"]);
    assert!(rows.len() > 1000, "{} frames captured", rows.len());
    for r in &rows {
        assert_eq!((r[0].as_str(), r[1].as_str()), ("4500", "4500"), "{r:?}");
        let spi = u64::from_str_radix(r[2].trim_start_matches("0x"), 16).unwrap();
        let want = if r[3] == "10.0.0.1" { out_spi } else { in_spi };
        assert_eq!(spi, want, "{r:?}");
    }
    let frames = read_pcap(&file);
    for vm in [[192u8, 168, 7, 1], [192, 168, 7, 2]] {
        assert!(!frames.iter().any(|f| f.windows(4).any(|w| w == vm)), "a VM address in clear on the underlay");
    }

    // Counters and what `wire list` shows: no key anywhere.
    for (h, peer) in [(&s.h1, "10.0.0.2"), (&s.h2, "10.0.0.1")] {
        let w = h.wire(7);
        assert_eq!(
            (w["kind"].as_str(), w["encap"].as_str(), w["peer"].as_str()),
            (Some("encap"), Some("secure"), Some(peer))
        );
        assert_eq!(u(&w["carries_mtu"]), 1412, "{w}");
        let sec = &w["secure"];
        // Each way at least the pings; TCP's ACKs vary with coalescing.
        assert!(u(&sec["sent_seq"]) > 20 && u(&sec["received_seq"]) > 20, "{w}");
        assert_eq!(u(&sec["key_bits"]), 128);
        assert_eq!(u(&sec["auth_failed"]) + u(&sec["replayed"]) + u(&sec["wrong_peer"]), 0, "{w}");
        assert!(h.ctl_ok(&["wire", "list"]).contains("encap (secure)"));
    }
    assert_eq!(u(&s.h2.wire(7)["secure"]["out_spi"]), in_spi, "the far end sends with our inbound SA");
    assert!(u(&s.h2.wire(7)["secure"]["received_seq"]) > (4 << 20) / 1400, "the 4 MiB went to h2 sealed");
    for k in key_material(&s.keys.0) {
        let k = k.trim_start_matches("0x").to_owned();
        for (what, text) in [
            ("h1 log", s.h1.log_text()),
            ("h2 log", s.h2.log_text()),
            ("wire list", s.h1.ctl_ok(&["--json", "wire", "list"])),
            ("status", s.h1.ctl_ok(&["--json", "status"])),
            ("stats", s.h1.ctl_ok(&["--json", "stats"])),
        ] {
            assert!(!text.contains(&k[..16]), "key material in the {what}");
        }
    }
    for f in ["h1.state", "h1.state.journal"] {
        let p = env.dir.join(f);
        if p.exists() {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o077, 0, "{f} is the owner's only");
        }
    }
    // The same with VXLAN inside, as a Linux host's xfrm and VXLAN device
    // send it: new keys (a key serves one connect).
    let (k3, k4) = (env.dir.join("w7b.keys"), env.dir.join("w7b-peer.keys"));
    keygen(&env, &k3, &k4);
    for (h, vm, peer, k) in [(&s.h1, "vm1", "10.0.0.2", &k3), (&s.h2, "vm2", "10.0.0.1", &k4)] {
        h.ctl_ok(&["disconnect", "7"]);
        h.ctl_ok(&["connect", "7", vm, peer, "--encap", "secure-vxlan", "--key-file", k.to_str().unwrap()]);
    }
    assert!(s.vm1.wait_reachable("192.168.7.2"), "{}", s.logs());
    assert_eq!(s.vm1.ping("192.168.7.2", 10, 1350), Ping { sent: 10, received: 10 }, "{}", s.logs());
    assert_eq!(u(&s.h1.wire(7)["carries_mtu"]), 1408);
    drop(s);
}

/// A captured frame of wire 7 from h2 to h1, sent again as it was, with one
/// bit flipped, from another address, with another SPI or sealed with
/// another key: none reaches the VM, each is counted by reason, and the
/// wire goes on.
#[test]
fn tampered_replayed_and_spoofed_secure_frames_deliver_nothing() {
    let Some(env) = setup("secure_tamper", &["tshark", "python3"]) else { return };
    let s = secure_hosts(&env, "secure");
    let up1 = format!("vw{}u1", env.tag);
    let cap = Capture::start(&s.ul.ns, &up1, env.dir.join("from-h2.pcap"), "udp port 4500 and src host 10.0.0.2");
    assert_eq!(s.vm2.ping("192.168.7.1", 5, 200).received, 5);
    let frames = read_pcap(&cap.stop());
    let good = frames.iter().find(|f| f.len() > 200).expect("a captured frame").clone();

    let fix_ip = |f: &mut Vec<u8>| {
        f[24..26].fill(0);
        let mut sum = 0u32;
        for i in (14..34).step_by(2) {
            sum += u32::from(u16::from_be_bytes([f[i], f[i + 1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    };
    // The replay check comes first (RFC 4303 §3.4.3): a copy with the
    // number the wire already took is `replayed` whatever else changed.
    // With a number the wire has not seen yet, any change fails the ICV
    // (the number is in the AAD), and the window must not move for it.
    let fresh = |f: &mut Vec<u8>| {
        let seq = u32::from_be_bytes([f[46], f[47], f[48], f[49]]).wrapping_add(1_000_000);
        f[46..50].copy_from_slice(&seq.to_be_bytes());
    };
    let flipped = |at: usize| {
        let mut f = good.clone();
        fresh(&mut f);
        if at != 0 {
            f[at] ^= 0x10;
        }
        f
    };
    let mut spoofed = good.clone();
    spoofed[26..30].copy_from_slice(&Ipv4Addr::new(10, 0, 0, 9).octets());
    fix_ip(&mut spoofed);
    // Sealed with a key that is not the wire's, under the wire's SPI.
    let mut forged = good.clone();
    fresh(&mut forged);
    let spi = u32::from_be_bytes([good[42], good[43], good[44], good[45]]);
    let esp_len = good.len() - 42;
    let payload = esp_len - 16 - 16 - 2 - usize::from(good[good.len() - 18]);
    forged.truncate(42 + 16 + payload);
    forged.resize(42 + esp_len, 0);
    let seq = u32::from_be_bytes([forged[46], forged[47], forged[48], forged[49]]);
    let mut other = vw_esp::Outbound::new(spi, &vw_esp::Keymat::generate(128).unwrap());
    other.seal(&mut forged[42..], payload, 17).unwrap();
    forged[46..50].copy_from_slice(&seq.to_be_bytes());
    let mut other_port = good.clone();
    other_port[34..36].copy_from_slice(&40000u16.to_be_bytes());
    let mut unknown = good.clone();
    unknown[42..46].copy_from_slice(&0x0bad_0badu32.to_be_bytes());
    let last = good.len() - 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("replayed", good.clone()),
        ("replayed", {
            let mut f = good.clone();
            f[42 + 40] ^= 0x10;
            f
        }),
        ("auth_failed", flipped(0)),       // only the sequence number
        ("auth_failed", flipped(42 + 8)),  // the IV
        ("auth_failed", flipped(42 + 40)), // the encrypted datagram
        ("auth_failed", flipped(last)),    // the ICV
        ("auth_failed", forged),
        ("unknown_spi", unknown),
        ("secure_wrong_peer", spoofed),
        // From another port of the peer's address (as after a NAT's new
        // mapping): opened, and refused as any copy is; with a fresh number
        // it fails the ICV. The wire's port follows neither.
        ("replayed", other_port.clone()),
        ("auth_failed", {
            let mut f = other_port;
            fresh(&mut f);
            f
        }),
    ];
    let before = s.h1.all_drops();
    let delivered = s.h1.port("vm1")["tx_packets"].as_u64().unwrap();
    let frames: Vec<Vec<u8>> = cases.iter().flat_map(|(_, f)| std::iter::repeat_n(f.clone(), 2)).collect();
    s.ul.ns.send_raw("br0", &frames);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = s.h1.all_drops();
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    for (reason, _) in &cases {
        *expected.entry(reason).or_default() += 2;
    }
    for (reason, n) in &expected {
        let delta = u(&after[*reason]) - u(&before[*reason]);
        assert_eq!(delta, *n, "{reason}: expected +{n}, got +{delta}\nbefore {before}\nafter {after}");
    }
    assert_eq!(s.h1.port("vm1")["tx_packets"].as_u64().unwrap(), delivered, "nothing reached the VM");
    let sec = s.h1.wire(7)["secure"].clone();
    assert_eq!((u(&sec["replayed"]), u(&sec["auth_failed"]), u(&sec["wrong_peer"])), (6, 12, 2), "{sec}");
    assert_eq!((u(&sec["peer_port"]), u(&sec["nat_rebinds"])), (4500, 0), "{sec}");
    // The window did not move for any of them: the wire goes on.
    assert_eq!(s.vm2.ping("192.168.7.1", 5, 200), Ping { sent: 5, received: 5 }, "{}", s.logs());
    drop(s);
}

/// A fabric killed with SIGKILL brings its secure wire back from its state
/// file and sends above every sequence number it may have used (the far
/// end's window takes it); a key is never used for a second connect.
#[test]
fn a_secure_wire_survives_a_restart_and_keys_serve_one_connect() {
    let Some(env) = setup("secure_restart", &["tshark", "python3"]) else { return };
    let mut s = secure_hosts(&env, "secure");
    assert_eq!(s.vm1.ping("192.168.7.2", 5, 100).received, 5);
    let limit = u(&s.h1.wire(7)["secure"]["seq_limit"]);
    s.h1.kill9();
    let h1 = Fabric::start(&env, "h1", s.opts1.clone());
    s.h1 = h1;
    s.ul.plug(&format!("vw{}u1", env.tag));
    s.vm1.reattach("192.168.7.1/24", 1400);
    assert!(s.vm1.wait_reachable("192.168.7.2"), "after the restart\n{}", s.logs());
    assert_eq!(s.vm1.ping("192.168.7.2", 10, 100), Ping { sent: 10, received: 10 }, "{}", s.logs());
    let sec = s.h1.wire(7)["secure"].clone();
    assert!(u(&sec["sent_seq"]) > limit, "sends above the limit it had before the crash: {sec}, limit {limit}");
    assert_eq!(u(&s.h2.wire(7)["secure"]["replayed"]), 0, "the far end took every packet");

    // A clean stop saves the exact numbers: after it, a frame h1 took
    // before is refused, and h1 sends on from where it was.
    let up1 = format!("vw{}u1", env.tag);
    let cap = Capture::start(&s.ul.ns, &up1, env.dir.join("before-stop.pcap"), "udp port 4500 and src host 10.0.0.2");
    assert_eq!(s.vm2.ping("192.168.7.1", 3, 200).received, 3);
    let old = read_pcap(&cap.stop());
    assert!(!old.is_empty());
    let sent = u(&s.h1.wire(7)["secure"]["sent_seq"]);
    assert!(s.h1.stop().success(), "{}", s.logs());
    s.h1 = Fabric::start(&env, "h1", s.opts1.clone());
    s.ul.plug(&up1);
    s.vm1.reattach("192.168.7.1/24", 1400);
    assert!(s.vm1.wait_reachable("192.168.7.2"), "after a clean restart\n{}", s.logs());
    let after = u(&s.h1.wire(7)["secure"]["sent_seq"]);
    assert!(after > sent && after < sent + 1000, "sends on from {sent}: {after}");
    let (replayed, delivered) = (s.h1.drops("replayed"), u(&s.h1.port("vm1")["tx_packets"]));
    s.ul.ns.send_raw("br0", &old);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(s.h1.drops("replayed") - replayed, old.len() as u64, "frames from before the stop are replays");
    assert_eq!(u(&s.h1.port("vm1")["tx_packets"]), delivered, "none reached the VM");

    // The same keys again, after a disconnect: refused.
    s.h1.ctl_ok(&["disconnect", "7"]);
    let out =
        s.h1.ctl(&["connect", "7", "vm1", "10.0.0.2", "--encap", "secure", "--key-file", s.keys.0.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("was used before"), "{err}");
    // Nor swapped: the far end's file sends with what this end received with.
    let out =
        s.h1.ctl(&["connect", "7", "vm1", "10.0.0.2", "--encap", "secure", "--key-file", s.keys.1.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("out key") && err.contains("was used before"), "{err}");
    // What else a secure connect needs.
    let out = s.h1.ctl(&["connect", "7", "vm1", "10.0.0.2", "--encap", "secure"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs its keys"));
    let out = s.h1.ctl(&["connect", "7", "vm1", "10.0.0.2", "--key-file", s.keys.0.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("applies to --encap secure"));
    std::fs::set_permissions(&s.keys.0, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out =
        s.h1.ctl(&["connect", "7", "vm1", "10.0.0.2", "--encap", "secure", "--key-file", s.keys.0.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    assert!(s.h1.wire(7).is_null(), "nothing was connected");
    drop(s);
}

/// `out SPI KEY` and `in SPI KEY` of a key file.
fn key_file_sas(path: &PathBuf) -> ((String, String), (String, String)) {
    let text = std::fs::read_to_string(path).unwrap();
    let sa = |dir: &str| {
        let l = text.lines().find(|l| l.split_whitespace().next() == Some(dir)).expect("an SA line");
        let w: Vec<&str> = l.split_whitespace().collect();
        (w[1].to_owned(), w[2].to_owned())
    };
    (sa("out"), sa("in"))
}

/// The packets and bytes `ip -s xfrm state` counted for the SA with `spi`
/// (its `lifetime current:` line: `N(bytes), M(packets)`).
fn xfrm_packets(states: &str, spi: &str) -> u64 {
    let at = states.find(&format!("spi {spi}")).unwrap_or_else(|| panic!("no SA {spi} in\n{states}"));
    let rest = &states[at..];
    let cur = rest.find("lifetime current:").unwrap_or_else(|| panic!("no counters in\n{rest}"));
    let line = rest[cur..].lines().nth(1).unwrap_or_default();
    line.split(", ").nth(1).and_then(|p| p.trim().strip_suffix("(packets)")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The far end is a Linux host: a QEMU guest (Debian's kernel) on the
/// underlay with `ip xfrm` transport-mode SAs (ESP in UDP 4500 -> 4500,
/// `rfc4106(gcm(aes))`, extended sequence numbers), a UDP_ENCAP_ESPINUDP
/// socket held open on 4500 (socat), and a kernel VXLAN device with VNI 7.
/// h1 connects wire 7 to it with `--encap secure-vxlan` and the other half
/// of the key files: ping and TCP (SHA-256 checked) both ways, only ESP in
/// UDP on the underlay, and both sides count every packet as authenticated;
/// then the same SAs with AES-256 keys.
#[test]
fn a_linux_host_with_xfrm_and_a_vxlan_device_is_the_far_end_of_a_secure_wire() {
    let Some(env) = setup("secure_linux", &["tshark", "socat"]) else { return };
    let Some(image) = vw_e2e::guest::guest_image("secure_linux") else { return };
    let host_bin = |c: &str| PathBuf::from(sh(&["sh", "-c", &format!("command -v {c}")]).trim());
    let image = image.with_binaries(
        &env,
        "xfrm",
        &[
            (env.bin.join("vw-probe"), "bin/vw-probe"),
            // iproute2's `ip` (busybox's has no xfrm) beside busybox's.
            (host_bin("ip"), "usr/local/bin/ip"),
            (host_bin("socat"), "usr/local/bin/socat"),
        ],
    );
    let mut ul = Underlay::new(&env);
    let t = &env.tag;
    let (up1, e1, lxup) = (format!("vw{t}u1"), format!("vw{t}e1"), format!("vw{t}x1"));
    let mut h1 = Fabric::start(
        &env,
        "h1",
        FabricOpts {
            uplink: Some((up1.clone(), "10.0.0.1/24".into())),
            uplink_mac: Some("02:00:5e:10:00:01".into()),
            extra: vec!["--state".into(), env.dir.join("h1.state").display().to_string()],
            ..Default::default()
        },
    );
    ul.plug(&up1);
    h1.add_tap_mac("vm1", &e1, "02:00:5e:20:00:01");
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.7.1/24", 1408);
    // The Linux host: a guest whose vhost-user NIC is wired (loopback, on a
    // second fabric) to a tap plugged into the underlay bridge.
    let mut h2 = Fabric::start(&env, "h2", FabricOpts::default());
    let lx_sock = env.dir.join("lx.vhost");
    h2.ctl_ok(&["endpoint", "add", "lx", "--vhost-user", lx_sock.to_str().unwrap()]);
    h2.add_tap("lxup", &lxup);
    ul.plug(&lxup);
    h2.ctl_ok(&["connect", "1", "lx", "lxup"]);
    let mut lx = vw_e2e::guest::Guest::start(
        &env,
        &image,
        "lx",
        &vw_e2e::guest::GuestOpts::new("10.0.0.3/24", "52:54:00:0a:00:03", &lx_sock),
    );
    let logs = |h1: &Fabric, h2: &Fabric| format!("--- h1 ---\n{}\n--- h2 ---\n{}", h1.log_text(), h2.log_text());

    let keys = (env.dir.join("w7.keys"), env.dir.join("w7-linux.keys"));
    keygen(&env, &keys.0, &keys.1);
    // The Linux end's file: `out` is what it sends with (h1's `in`).
    let ((lx_out_spi, lx_out_key), (lx_in_spi, lx_in_key)) = key_file_sas(&keys.1);
    let ip = "/usr/local/bin/ip";
    // The image has the modules (ci/guest/build.sh); other guests do not load them.
    lx.ok("for m in $(cat /lib/modules/secure-order); do insmod /lib/modules/$m.ko || exit 1; done");
    let sa = |src: &str, dst: &str, spi: &str, key: &str| {
        format!(
            "{ip} xfrm state add src {src} dst {dst} proto esp spi {spi} reqid 7 mode transport flag esn \
             replay-window 1024 aead 'rfc4106(gcm(aes))' {key} 128 encap espinudp 4500 4500 0.0.0.0"
        )
    };
    lx.ok(&sa("10.0.0.3", "10.0.0.1", &lx_out_spi, &lx_out_key));
    lx.ok(&sa("10.0.0.1", "10.0.0.3", &lx_in_spi, &lx_in_key));
    // VXLAN to and from h1 must go through the SAs (a clear one is refused).
    for (src, dst, dir) in [("10.0.0.3", "10.0.0.1", "out"), ("10.0.0.1", "10.0.0.3", "in")] {
        lx.ok(&format!(
            "{ip} xfrm policy add src {src} dst {dst} proto 17 dport 4789 dir {dir} \
             tmpl src {src} dst {dst} proto esp reqid 7 mode transport"
        ));
    }
    // ESP in UDP arrives through a UDP socket with UDP_ENCAP (SOL_UDP 17,
    // option 100) set to UDP_ENCAP_ESPINUDP (2).
    lx.ok("/usr/local/bin/socat -u UDP4-DATAGRAM:127.0.0.1:9,bind=:4500,setsockopt-int=17:100:2 OPEN:/dev/null </dev/null >/tmp/socat 2>&1 &");
    // Listening, with the option set: port 4500 (0x1194) in /proc/net/udp
    // and no error from socat (it only logs an option it could not set).
    let (rc, out) = lx.run(
        "i=0; while ! grep -q ':1194 ' /proc/net/udp && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
         if grep -q ':1194 ' /proc/net/udp && ! grep -q ' E ' /tmp/socat; then echo held; \
         else cat /tmp/socat; exit 1; fi",
        std::time::Duration::from_secs(20),
    );
    assert_eq!(rc, 0, "socat does not hold UDP port 4500:\n{out}");
    lx.ok(&format!("{ip} link add vx0 type vxlan id 7 local 10.0.0.3 remote 10.0.0.1 dstport 4789 dev eth0"));
    lx.ok(&format!("{ip} link set vx0 address 52:54:00:07:00:02 mtu 1408 up"));
    lx.ok(&format!("{ip} addr add 192.168.7.2/24 dev vx0"));

    let cap = Capture::start(&ul.ns, &up1, env.dir.join("linux.pcap"), "udp or esp");
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.3", "--encap", "secure-vxlan", "--key-file", keys.0.to_str().unwrap()]);
    if !vm1.wait_reachable("192.168.7.2") {
        let (_, linux) = lx.run(
            &format!("{ip} -s xfrm state; {ip} xfrm policy; grep -v ' 0$' /proc/net/xfrm_stat; grep Udp: /proc/net/snmp; cat /proc/net/udp; cat /tmp/socat; ps; dmesg | tail -5"),
            std::time::Duration::from_secs(20),
        );
        panic!(
            "no ping to the Linux far end\n--- Linux ---\n{linux}\n--- h1 drops ---\n{}\n{}\n{}",
            h1.all_drops(),
            lx.logs(),
            logs(&h1, &h2)
        );
    }
    assert_eq!(vm1.ping("192.168.7.2", 20, 1000), Ping { sent: 20, received: 20 }, "{}", logs(&h1, &h2));
    // The largest frame the wire carries (MTU 1408), in both directions.
    assert_eq!(vm1.ping("192.168.7.2", 5, 1380), Ping { sent: 5, received: 5 }, "{}", logs(&h1, &h2));
    assert_eq!(lx.ping("192.168.7.1", 5, 1380), 5, "{}", logs(&h1, &h2));

    // TCP both ways, 4 MiB, SHA-256 checked.
    let probe = env.bin.join("vw-probe");
    lx.ok("vw-probe tcp-recv 5001 >/tmp/rx 2>&1 &");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let tx = vm1.ns.run(&[probe.to_str().unwrap(), "tcp-send", "192.168.7.2:5001", "4194304"]);
    assert!(tx.status.success(), "to Linux: {}\n{}", String::from_utf8_lossy(&tx.stderr), logs(&h1, &h2));
    let sent = String::from_utf8_lossy(&tx.stdout).trim().to_owned();
    let got =
        lx.ok("i=0; while ! grep -q ' ' /tmp/rx && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; tail -1 /tmp/rx");
    assert!(sent.starts_with("4194304 "), "sender: {sent}");
    assert_eq!(got.trim(), sent, "what Linux received differs from what vm1 sent");
    let mut rx = vm1.ns.spawn(&[probe.to_str().unwrap(), "tcp-recv", "5002"]);
    let mut line = String::new();
    let mut rd = std::io::BufReader::new(rx.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut rd, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let sent = lx.ok("vw-probe tcp-send 192.168.7.1:5002 4194304");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut rd, &mut got).unwrap();
    assert!(rx.wait().unwrap().success());
    assert!(sent.trim().starts_with("4194304 "), "Linux sender: {sent}");
    assert_eq!(got.trim(), sent.trim(), "what vm1 received differs from what Linux sent");
    let file = cap.stop();

    // On the underlay between h1 and Linux: ESP in UDP 4500 -> 4500 only,
    // each way with the SPI the key files give it.
    let w = h1.wire(7);
    let (out_spi, in_spi) = (u(&w["secure"]["out_spi"]), u(&w["secure"]["in_spi"]));
    assert_eq!(in_spi, u64::from_str_radix(lx_out_spi.trim_start_matches("0x"), 16).unwrap());
    let rows = tshark_fields(&file, &[], &["ip.src", "ip.dst", "udp.srcport", "udp.dstport", "esp.spi"]);
    let between: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] != r[1] && r[0].starts_with("10.0.0.")).collect();
    assert!(between.len() > 2000, "{} frames between h1 and Linux", between.len());
    for r in &between {
        assert_eq!((r[2].as_str(), r[3].as_str()), ("4500", "4500"), "not ESP in UDP: {r:?}");
        let spi = u64::from_str_radix(r[4].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(spi, if r[0] == "10.0.0.1" { out_spi } else { in_spi }, "{r:?}");
    }
    let frames = read_pcap(&file);
    for vm in [[192u8, 168, 7, 1], [192, 168, 7, 2]] {
        assert!(!frames.iter().any(|f| f.windows(4).any(|w| w == vm)), "a VM address in clear on the underlay");
    }

    // Both ends counted the other's packets as authenticated, and no error.
    let sec = &w["secure"];
    assert!(u(&sec["received_seq"]) > (4 << 20) / 1408, "h1 took Linux's 4 MiB: {w}");
    assert_eq!(u(&sec["auth_failed"]) + u(&sec["replayed"]) + u(&sec["wrong_peer"]), 0, "{w}");
    assert_eq!(h1.drops("secure_inner"), 0, "{}", h1.all_drops());
    let states = lx.ok(&format!("{ip} -s xfrm state"));
    assert!(xfrm_packets(&states, &lx_in_spi) > (4 << 20) / 1408, "Linux opened h1's packets:\n{states}");
    assert!(xfrm_packets(&states, &lx_out_spi) > (4 << 20) / 1408, "Linux sealed its packets:\n{states}");
    let xstat = lx.ok("cat /proc/net/xfrm_stat");
    for l in xstat.lines() {
        let mut it = l.split_whitespace();
        let (name, n) = (it.next().unwrap_or_default(), it.next().unwrap_or("0"));
        assert_eq!(n, "0", "Linux counted {name}:\n{xstat}");
    }

    // AES-256: new keys on both ends (a key serves one connect), the
    // policies stay.
    let k256 = (env.dir.join("w7-256.keys"), env.dir.join("w7-256-linux.keys"));
    let out = run(&[
        env.bin.join("vwctl").to_str().unwrap(),
        "keygen",
        "--bits",
        "256",
        k256.0.to_str().unwrap(),
        k256.1.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "keygen --bits 256: {}", String::from_utf8_lossy(&out.stderr));
    let ((o_spi, o_key), (i_spi, i_key)) = key_file_sas(&k256.1);
    assert_eq!(o_key.len(), 2 + 2 * 36, "32-byte key and 4-byte salt");
    lx.ok(&format!("{ip} xfrm state flush"));
    lx.ok(&sa("10.0.0.3", "10.0.0.1", &o_spi, &o_key));
    lx.ok(&sa("10.0.0.1", "10.0.0.3", &i_spi, &i_key));
    h1.ctl_ok(&["disconnect", "7"]);
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.3", "--encap", "secure-vxlan", "--key-file", k256.0.to_str().unwrap()]);
    assert!(vm1.wait_reachable("192.168.7.2"), "AES-256\n{}", logs(&h1, &h2));
    assert_eq!(vm1.ping("192.168.7.2", 10, 1380), Ping { sent: 10, received: 10 }, "{}", logs(&h1, &h2));
    let w = h1.wire(7);
    assert_eq!(u(&w["secure"]["key_bits"]), 256, "{w}");
    assert_eq!(u(&w["secure"]["auth_failed"]), 0, "{w}");
    let states = lx.ok(&format!("{ip} -s xfrm state"));
    assert!(xfrm_packets(&states, &i_spi) >= 10, "Linux opened h1's AES-256 packets:\n{states}");
    drop(lx);
    drop((h1, h2, vm1, ul));
}

/// A key file's (out SPI, in SPI).
fn key_file_spis(path: &PathBuf) -> (u64, u64) {
    let ((out, _), (inb, _)) = key_file_sas(path);
    let spi = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    (spi(&out), spi(&inb))
}

/// Waits until neither fabric shows a rekey or an old inbound SA for wire 7.
fn wait_rekeyed(s: &Secure, secs: u64) {
    let t = std::time::Instant::now();
    loop {
        let settled = [&s.h1, &s.h2].iter().all(|h| {
            let sec = h.wire(7)["secure"].clone();
            sec.get("rekey").is_none() && sec.get("old_in_spi").is_none()
        });
        if settled {
            return;
        }
        assert!(t.elapsed().as_secs() < secs, "the rekey did not settle\n{}\n{}", s.h1.wire(7), s.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `vwctl rekey` on both ends under a continuous stream each way: the new
/// inbound SAs are installed before either end sends with the new keys,
/// the old ones stay until the far end switched, and not one datagram is
/// lost, duplicated or reordered. A rekey waiting for the far end survives
/// a restart; keys are used once; a rekey during a rekey is refused.
#[test]
fn a_rekey_under_a_continuous_stream_loses_nothing() {
    let Some(env) = setup("secure_rekey", &[]) else { return };
    let mut s = secure_hosts(&env, "secure");
    let (n1, n2) = (env.dir.join("w7-new.keys"), env.dir.join("w7-new-peer.keys"));
    keygen(&env, &n1, &n2);
    let (new_out, new_in) = key_file_spis(&n1);
    let (old_out, old_in) = (u(&s.h1.wire(7)["secure"]["out_spi"]), u(&s.h1.wire(7)["secure"]["in_spi"]));
    let rate = 10_000;
    let a = Stream::start(&env, &s.vm1.ns, "192.168.7.2:7000", rate);
    let b = Stream::start(&env, &s.vm2.ns, "192.168.7.1:7000", rate);
    Stream::open_both(&a, &b);
    std::thread::sleep(std::time::Duration::from_millis(500));

    // h1 first: its new inbound SA is ready, it still sends with the old keys.
    let w = s.h1.json(&["rekey", "7", "--key-file", n1.to_str().unwrap(), "--switch-in", "30"]);
    assert_eq!((u(&w["secure"]["rekey"]["out_spi"]), u(&w["secure"]["rekey"]["in_spi"])), (new_out, new_in), "{w}");
    let sent = u(&w["secure"]["sent_seq"]);
    // One rekey at a time; and no other key file's keys.
    let (m1, m2) = (env.dir.join("w7-other.keys"), env.dir.join("w7-other-peer.keys"));
    keygen(&env, &m1, &m2);
    let out = s.h1.ctl(&["rekey", "7", "--key-file", m1.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("being rekeyed already"), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let sec = s.h1.wire(7)["secure"].clone();
    assert_eq!(u(&sec["out_spi"]), old_out, "h1 waits for h2's new keys: {sec}");
    assert!(u(&sec["sent_seq"]) > sent + rate / 2, "still sending with the old SA: {sec}");

    // h2 a second later, switching at once: h1 sees h2's new keys and
    // switches too; both drop their old inbound SA once the other switched.
    s.h2.ctl_ok(&["rekey", "7", "--key-file", n2.to_str().unwrap(), "--switch-in", "1"]);
    wait_rekeyed(&s, 15);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let [(a_sent, at_a), (b_sent, at_b)] = Stream::stop_both(a, b);
    for (what, t) in [("h1 -> h2", totals(a_sent, &at_b)), ("h2 -> h1", totals(b_sent, &at_a))] {
        assert!(t.sent > rate, "{what}: the stream ran: {}", t.json());
        assert_eq!((t.lost, t.duplicated, t.reordered), (0, 0, 0), "{what}: {}\n{}", t.json(), s.logs());
    }
    for (h, (out, inb), old) in [(&s.h1, (new_out, new_in), old_in), (&s.h2, (new_in, new_out), old_out)] {
        let sec = h.wire(7)["secure"].clone();
        assert_eq!((u(&sec["out_spi"]), u(&sec["in_spi"])), (out, inb), "{} uses the new keys: {sec}", h.name);
        assert!(u(&sec["sent_seq"]) > 100 && u(&sec["received_seq"]) > 100, "{sec}");
        assert_eq!(u(&sec["auth_failed"]) + u(&sec["replayed"]) + u(&sec["wrong_peer"]), 0, "{sec}");
        for reason in ["unknown_spi", "auth_failed", "replayed", "sa_expired"] {
            assert_eq!(h.drops(reason), 0, "{reason} at {}", h.name);
        }
        assert!(h.log_text().contains(&format!("the old inbound SPI {old:#010x} is removed")), "{}", s.logs());
    }
    assert!(s.h1.log_text().contains("the far end's new keys arrived"), "h1 switched on h2's keys\n{}", s.logs());
    assert!(s.h2.log_text().contains("nothing came with the far end's new keys within 1 s"), "{}", s.logs());
    // The keys of a rekey serve once, too.
    let out = s.h1.ctl(&["rekey", "7", "--key-file", n1.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("was used before"), "{out:?}");

    // A rekey waiting for the far end is configuration: h1 killed while it
    // waits comes back waiting, and switches once h2 rekeys.
    s.h1.ctl_ok(&["rekey", "7", "--key-file", m1.to_str().unwrap(), "--switch-in", "60"]);
    s.h1.kill9();
    s.h1 = Fabric::start(&env, "h1", s.opts1.clone());
    s.ul.plug(&format!("vw{}u1", env.tag));
    s.vm1.reattach("192.168.7.1/24", 1400);
    assert!(s.vm1.wait_reachable("192.168.7.2"), "after the restart\n{}", s.logs());
    let (m_out, m_in) = key_file_spis(&m1);
    let sec = s.h1.wire(7)["secure"].clone();
    assert_eq!((u(&sec["out_spi"]), u(&sec["rekey"]["in_spi"])), (new_out, m_in), "restored waiting: {sec}");
    s.h2.ctl_ok(&["rekey", "7", "--key-file", m2.to_str().unwrap(), "--switch-in", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Traffic tells each end that the other has switched.
    assert_eq!(s.vm1.ping("192.168.7.2", 20, 100), Ping { sent: 20, received: 20 }, "{}", s.logs());
    wait_rekeyed(&s, 15);
    assert_eq!(u(&s.h1.wire(7)["secure"]["out_spi"]), m_out);
    // A wire that does not exist has no keys to change (members of the
    // socket group may not rekey at all: tests/confinement.rs).
    let out = s.h1.ctl(&["rekey", "8", "--key-file", m1.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wire 8 does not exist"), "{out:?}");
    drop(s);
}

/// A wire whose keys carry an SA lifetime (20000 packets) rekeys itself,
/// generation after generation, under 10000 datagrams/s each way: nothing
/// lost, duplicated or reordered, nothing refused, both ends on the same
/// generation at the end; killed with SIGKILL, a fabric comes back on its
/// latest generation and the wire goes on rekeying.
#[test]
fn an_sa_lifetime_rekeys_the_wire_by_itself_under_a_stream() {
    let Some(env) = setup("secure_lifetime", &[]) else { return };
    let mut s = secure_hosts_with(&env, "secure", &["--lifetime-packets", "20000"]);
    let text = std::fs::read_to_string(&s.keys.1).unwrap();
    assert!(text.contains("\nlifetime - 20000\n"), "the far end's file carries the lifetime:\n{text}");
    let sec = s.h1.wire(7)["secure"].clone();
    let first = (u(&sec["out_spi"]), u(&sec["in_spi"]));
    assert_eq!(u(&sec["lifetime"]["packets"]), 20000, "{sec}");
    assert_eq!(sec["rekey"]["automatic"], true, "the next generation is installed ahead: {sec}");
    let rate = 10_000;
    let a = Stream::start(&env, &s.vm1.ns, "192.168.7.2:7000", rate);
    let b = Stream::start(&env, &s.vm2.ns, "192.168.7.1:7000", rate);
    Stream::open_both(&a, &b);
    std::thread::sleep(std::time::Duration::from_secs(10));
    let [(a_sent, at_a), (b_sent, at_b)] = Stream::stop_both(a, b);
    for (what, t) in [("h1 -> h2", totals(a_sent, &at_b)), ("h2 -> h1", totals(b_sent, &at_a))] {
        assert!(t.sent > 5 * rate, "{what}: the stream ran: {}", t.json());
        assert_eq!((t.lost, t.duplicated, t.reordered), (0, 0, 0), "{what}: {}\n{}", t.json(), s.logs());
    }
    // Idle, the two ends settle on one generation.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (w1, w2) = (s.h1.wire(7)["secure"].clone(), s.h2.wire(7)["secure"].clone());
    assert_eq!((u(&w1["out_spi"]), u(&w1["in_spi"])), (u(&w2["in_spi"]), u(&w2["out_spi"])), "{w1}\n{w2}");
    assert!(u(&w1["out_spi"]) != first.0 && u(&w1["in_spi"]) != first.1, "new SPIs: {w1}");
    for (h, w) in [(&s.h1, &w1), (&s.h2, &w2)] {
        assert!(u(&w["generations"]) >= 2, "{} rekeyed by itself at least twice in 10 s: {w}\n{}", h.name, s.logs());
        assert!(u(&w["sent_seq"]) <= 20000 + rate, "{}: no SA ran far past its lifetime: {w}", h.name);
        for reason in ["unknown_spi", "auth_failed", "replayed", "sa_expired"] {
            assert_eq!(h.drops(reason), 0, "{reason} at {}\n{}", h.name, s.logs());
        }
    }
    let logs = s.logs();
    assert!(logs.contains("(its lifetime was reached)"), "{logs}");
    assert!(logs.contains("the next generation's inbound SPI"), "{logs}");
    for k in key_material(&s.keys.0) {
        assert!(!logs.contains(&k.trim_start_matches("0x")[..16]), "key material in a log");
    }

    // Restarted from its state file, h1 sends on its latest generation;
    // traffic moves both on.
    let gen_out = u(&w1["out_spi"]);
    s.h1.kill9();
    s.h1 = Fabric::start(&env, "h1", s.opts1.clone());
    s.ul.plug(&format!("vw{}u1", env.tag));
    s.vm1.reattach("192.168.7.1/24", 1400);
    assert!(s.vm1.wait_reachable("192.168.7.2"), "after the restart\n{}", s.logs());
    let after = s.h1.wire(7)["secure"].clone();
    assert!(u(&after["out_spi"]) == gen_out || after["rekey"]["automatic"] == true, "{after}");
    assert_eq!(s.vm1.ping("192.168.7.2", 20, 100), Ping { sent: 20, received: 20 }, "{}", s.logs());
    assert_eq!(s.vm2.ping("192.168.7.1", 20, 100), Ping { sent: 20, received: 20 }, "{}", s.logs());
    for h in [&s.h1, &s.h2] {
        assert_eq!(h.drops("auth_failed") + h.drops("unknown_spi"), 0, "{}\n{}", h.name, s.logs());
    }
    drop(s);
}

/// One fabric behind a Linux NAT: the underlay namespace routes between
/// br0 (h1, 10.0.0.1; the NAT's outside address 10.0.0.254) and br1 (h2,
/// 10.1.0.2, its gateway 10.1.0.254), masquerades what leaves br0 to UDP
/// ports 20000-29999 and forwards nothing unsolicited inward; its UDP
/// mappings expire after 4 s without a packet. h1 connects the wire to the
/// NAT's address and learns h2's port from h2's verified packets; both
/// send NAT keepalives every second while the wire is idle, so h1 still
/// reaches h2 after 10 s of silence; after the NAT forgets every mapping,
/// h2's next packet comes from a new port and h1 follows it.
#[test]
fn a_secure_wire_crosses_a_nat_and_stays_open_while_idle() {
    let Some(env) = setup("secure_nat", &["tshark", "nft", "conntrack"]) else { return };
    let t = &env.tag;
    let mut ul = Underlay::new(&env);
    ul.route("10.0.0.254/24", "10.1.0.254/24");
    let nat = "table ip vwnat {
        chain post {
            type nat hook postrouting priority srcnat; policy accept;
            oifname \"br0\" ip saddr 10.1.0.0/24 meta l4proto udp masquerade to :20000-29999
        }
        chain inward {
            type filter hook forward priority filter; policy drop;
            ct state established,related accept
            iifname \"br1\" accept
        }
    }";
    let rules = env.dir.join("nat.nft");
    std::fs::write(&rules, nat).unwrap();
    ul.ns.sh(&["nft", "-f", rules.to_str().unwrap()]);
    // The conntrack sysctls exist once the NAT table loaded nf_conntrack.
    ul.ns.sh(&["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=4"]);
    ul.ns.sh(&["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=4"]);

    let (up1, up2, e1, e2) = (format!("vw{t}u1"), format!("vw{t}u2"), format!("vw{t}e1"), format!("vw{t}e2"));
    let opts = |up: &str, vtep: &str, state: &str, extra: &[&str]| {
        let mut x = vec!["--state".into(), env.dir.join(state).display().to_string()];
        x.extend(["--nat-keepalive".into(), "1".into()]);
        x.extend(extra.iter().map(|s| s.to_string()));
        FabricOpts { uplink: Some((up.to_owned(), vtep.to_owned())), extra: x, ..Default::default() }
    };
    let mut h1 = Fabric::start(&env, "h1", opts(&up1, "10.0.0.1/24", "h1.state", &[]));
    let mut h2 = Fabric::start(
        &env,
        "h2",
        opts(&up2, "10.1.0.2/24", "h2.state", &["--gateway", "10.1.0.254", "--public-address", "10.0.0.254"]),
    );
    ul.plug_into(&up1, "br0");
    ul.plug_into(&up2, "br1");
    h1.add_tap("vm1", &e1);
    h2.add_tap("vm2", &e2);
    let vm1 = Vm::new(&format!("vw{t}vm1"), &e1, "192.168.7.1/24", 1400);
    let vm2 = Vm::new(&format!("vw{t}vm2"), &e2, "192.168.7.2/24", 1400);
    let keys = (env.dir.join("w7.keys"), env.dir.join("w7-peer.keys"));
    keygen(&env, &keys.0, &keys.1);
    h1.ctl_ok(&["connect", "7", "vm1", "10.0.0.254", "--encap", "secure", "--key-file", keys.0.to_str().unwrap()]);
    h2.ctl_ok(&["connect", "7", "vm2", "10.0.0.1", "--encap", "secure", "--key-file", keys.1.to_str().unwrap()]);
    let logs = || format!("--- h1 ---\n{}\n--- h2 ---\n{}", h1.log_text(), h2.log_text());
    let st = h2.json(&["status"]);
    assert_eq!(st["uplink"]["public_address"], "10.0.0.254", "{st}");
    assert_eq!(st["uplink"]["nat_keepalive_s"], 1, "{st}");

    // The side behind the NAT speaks first: its mapping opens, h1 learns it.
    assert!(vm2.wait_reachable("192.168.7.1"), "no ping from behind the NAT\n{}", logs());
    let sec = h1.wire(7)["secure"].clone();
    let port = u(&sec["peer_port"]);
    assert!((20000..=29999).contains(&port), "h1 sends to the NAT's mapping: {sec}");
    assert!(u(&sec["nat_rebinds"]) >= 1, "{sec}");
    assert_eq!(u(&h2.wire(7)["secure"]["peer_port"]), 4500, "h1 is not behind a NAT");
    assert!(h1.ctl_ok(&["wire", "list"]).contains(&format!("10.0.0.254:{port}")), "wire list shows the mapping");
    let cap = Capture::start(&ul.ns, &up1, env.dir.join("nat.pcap"), "udp");
    assert_eq!(vm1.ping("192.168.7.2", 20, 1000), Ping { sent: 20, received: 20 }, "{}", logs());
    let (sent, got) = tcp_transfer(&env, &vm1.ns, &vm2.ns, "192.168.7.2", 4 << 20);
    assert!(sent.starts_with("4194304 "), "sender: {sent}");
    assert_eq!(sent, got, "the receiver's byte count and SHA-256 differ from the sender's");
    let file = cap.stop();
    // Outside the NAT: ESP in UDP between h1's 4500 and the mapped port,
    // decoded by tshark with its SPIs.
    let rows = tshark_fields(&file, &[], &["ip.src", "udp.srcport", "udp.dstport", "esp.spi"]);
    assert!(rows.len() > 1000, "{} frames captured", rows.len());
    let (p, four) = (port.to_string(), "4500".to_string());
    for r in rows.iter().filter(|r| r[3].is_empty()) {
        // Only NAT keepalives (no SPI) besides ESP.
        assert!(r[1..3] == [four.clone(), p.clone()] || r[1..3] == [p.clone(), four.clone()], "{r:?}");
    }
    for r in rows.iter().filter(|r| !r[3].is_empty()) {
        let want = if r[0] == "10.0.0.1" { [four.clone(), p.clone()] } else { [p.clone(), four.clone()] };
        assert_eq!((r[0] == "10.0.0.1" || r[0] == "10.0.0.254", &r[1..3]), (true, &want[..]), "{r:?}");
    }
    assert!(!read_pcap(&file).iter().any(|f| f.windows(4).any(|w| w == [192, 168, 7, 2])), "a VM address in clear");

    // Idle for 2.5 times the NAT's timeout: the keepalives keep the
    // mapping, and h1 speaks first.
    let (ka1, ka2) = (u(&h1.json(&["stats"])["nat_keepalives_sent"]), u(&h2.json(&["stats"])["nat_keepalives_sent"]));
    let heard = u(&h1.json(&["stats"])["handled"]["nat_keepalive"]);
    std::thread::sleep(std::time::Duration::from_secs(10));
    let ka2_after = u(&h2.json(&["stats"])["nat_keepalives_sent"]);
    assert!(ka2_after >= ka2 + 5, "h2 sent {} keepalives in 10 idle s", ka2_after - ka2);
    assert!(u(&h1.json(&["stats"])["nat_keepalives_sent"]) >= ka1 + 5);
    assert!(u(&h1.json(&["stats"])["handled"]["nat_keepalive"]) >= heard + 5, "h1 received them");
    assert_eq!(vm1.ping("192.168.7.2", 5, 100), Ping { sent: 5, received: 5 }, "after idling\n{}", logs());
    assert_eq!(u(&h1.wire(7)["secure"]["peer_port"]), port, "the same mapping");

    // The NAT forgets its mappings (a NAT reboot): h2's next packets get a
    // new port, and h1 follows the first verified one.
    let rebinds = u(&h1.wire(7)["secure"]["nat_rebinds"]);
    let mut moved = None;
    for _ in 0..3 {
        ul.ns.sh(&["conntrack", "-F"]);
        assert!(vm2.wait_reachable("192.168.7.1"), "after the NAT's new mapping\n{}", logs());
        let now = u(&h1.wire(7)["secure"]["peer_port"]);
        if now != port {
            moved = Some(now);
            break;
        }
    }
    let moved = moved.unwrap_or_else(|| panic!("the NAT kept port {port} three times"));
    assert!((20000..=29999).contains(&moved));
    assert!(u(&h1.wire(7)["secure"]["nat_rebinds"]) > rebinds);
    assert_eq!(vm1.ping("192.168.7.2", 10, 100), Ping { sent: 10, received: 10 }, "{}", logs());
    for h in [&h1, &h2] {
        let sec = h.wire(7)["secure"].clone();
        assert_eq!(u(&sec["auth_failed"]) + u(&sec["replayed"]) + u(&sec["wrong_peer"]), 0, "{sec}");
    }
    assert!(h2.ctl_ok(&["status"]).contains("nat keepalives: every 1 s"));
    assert!(h1.stop().success() && h2.stop().success());
    drop((vm1, vm2, ul));
}
