//! A real etcd for the directory's tests and benchmark: one node or a
//! 3-member cluster on loopback, optionally with TLS and client
//! certificates made with openssl.

use crate::{run, Env};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single-node etcd on loopback, with its data in the test's directory;
/// with `tls`, its clients need a certificate of the test's CA.
pub struct Etcd {
    /// The running etcd.
    pub child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
    tls: Option<PathBuf>,
    /// Its member name and the cluster it belongs to (`name=peer-url,...`).
    name: String,
    cluster: String,
}

impl Etcd {
    pub fn start(env: &Env) -> Etcd {
        Etcd::start_on(env, 0, None)
    }

    /// Etcd number `n` of this test run (several runs may share a
    /// machine: the ports are the run's).
    pub fn start_on(env: &Env, n: u16, tls: Option<PathBuf>) -> Etcd {
        let mut e = Etcd::member(env, n, tls, None);
        e.restart();
        e
    }

    /// Member `n` (not started), of the cluster `cluster` lists (alone if none).
    pub fn member(env: &Env, n: u16, tls: Option<PathBuf>, cluster: Option<&str>) -> Etcd {
        let (client, peer) = Etcd::ports(n);
        let name = format!("vw{n}");
        let cluster = cluster.map_or_else(|| format!("{name}=http://127.0.0.1:{peer}"), str::to_owned);
        Etcd { child: None, dir: env.dir.join(format!("etcd{n}")), client, peer, tls, name, cluster }
    }

    /// The client and peer ports of member `n` of this test run (several
    /// runs may share a machine: the ports are the run's).
    pub fn ports(n: u16) -> (u16, u16) {
        let base = 20000 + (std::process::id() % 1000) as u16 * 16 + n * 2;
        (base, base + 1)
    }

    /// A 3-member cluster on loopback (members 2, 3, 4), started together.
    pub fn cluster(env: &Env) -> Vec<Etcd> {
        let list: Vec<String> = (2..5).map(|n| format!("vw{n}=http://127.0.0.1:{}", Etcd::ports(n).1)).collect();
        let mut ms: Vec<Etcd> = (2..5).map(|n| Etcd::member(env, n, None, Some(&list.join(",")))).collect();
        for m in &mut ms {
            m.spawn();
        }
        for m in &ms {
            m.wait_healthy();
        }
        ms
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    /// The files of `name`'s certificate (`CA.pem`, `NAME.pem`, `NAME-key.pem`).
    pub fn cert(&self, name: &str) -> [String; 3] {
        let d = self.tls.as_ref().expect("a TLS etcd");
        ["ca.pem".to_owned(), format!("{name}.pem"), format!("{name}-key.pem")].map(|f| d.join(f).display().to_string())
    }

    /// Starts etcd (again, on the same data) and waits until it is healthy.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster]);
        if self.tls.is_some() {
            let [ca, cert, key] = self.cert("server");
            cmd.args(["--cert-file", &cert, "--key-file", &key, "--trusted-ca-file", &ca, "--client-cert-auth"]);
        }
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start etcd");
        self.child = Some(child);
    }

    pub fn wait_healthy(&self) {
        let t = Instant::now();
        while !self.etcdctl(&["endpoint", "health"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not become healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            let _ = c.wait();
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.etcdctl_as("root", args)
    }

    /// etcdctl with `who`'s certificate (TLS only; root's is etcd's root).
    pub fn etcdctl_as(&self, who: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &self.url(),
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
        ]);
        if self.tls.is_some() {
            let [ca, cert, key] = self.cert(who);
            cmd.args(["--cacert", &ca, "--cert", &cert, "--key", &key]);
        }
        cmd.args(args).stdin(Stdio::null()).output().expect("run etcdctl")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and, signed by it, a certificate for each of `names` (its common
/// name; for 127.0.0.1 too, so `server` can serve), with openssl.
pub fn certificates(dir: &std::path::Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let ssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output().expect("run openssl");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    ssl(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=vw-test-ca"],
    ]
    .concat());
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    for n in names {
        let (key, csr, pem, subj) =
            (format!("{n}-key.pem"), format!("{n}.csr"), format!("{n}.pem"), format!("/CN={n}"));
        ssl(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subj]].concat());
        ssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
    }
}
