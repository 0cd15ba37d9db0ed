//! What a fabric claims before it touches DPDK: its EAL file prefix (one
//! fabric per prefix, with a clear refusal naming the other one) and the
//! group that owns its control socket.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The EAL file prefix in `eal` arguments (`--file-prefix X` or
/// `--file-prefix=X`; DPDK's default is `rte`).
pub fn file_prefix(eal: &[String]) -> String {
    let mut it = eal.iter();
    let mut prefix = "rte".to_owned();
    while let Some(a) = it.next() {
        if a == "--file-prefix" {
            if let Some(p) = it.next() {
                prefix = p.clone();
            }
        } else if let Some(p) = a.strip_prefix("--file-prefix=") {
            prefix = p.to_owned();
        }
    }
    prefix
}

/// DPDK's runtime directory for `prefix`: `/var/run/dpdk/PREFIX` for root,
/// else under `$XDG_RUNTIME_DIR` (or `/tmp`), as the EAL chooses it.
pub fn runtime_dir(prefix: &str, root: bool, xdg: Option<&str>) -> PathBuf {
    let base = if root { "/var/run".to_owned() } else { xdg.unwrap_or("/tmp").to_owned() };
    Path::new(&base).join("dpdk").join(prefix)
}

/// True when the real user is root (DPDK picks its runtime directory by
/// `getuid()`, the real uid).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)).map(|u| u == "0")
        })
        .unwrap_or(false)
}

/// Holds a lock for as long as it lives (the kernel drops it when the
/// process dies, whatever the way).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its record (pid, then control socket).
    Held {
        /// Pid of the holder, as it wrote it.
        pid: String,
        /// Control socket of the holder.
        socket: String,
    },
    /// The lock file could not be created or locked.
    Io(String),
}

/// Takes an exclusive lock on `path` (created mode 0600, never through a
/// symlink) and records our pid and control socket in it.
pub fn lock(path: &Path, socket: &Path) -> Result<Lock, LockError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| LockError::Io(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let mut lines = holder.lines();
            let (pid, socket) = (lines.next().unwrap_or("?"), lines.next().unwrap_or("?"));
            return Err(LockError::Held { pid: pid.to_owned(), socket: socket.to_owned() });
        }
        Err(TryLockError::Error(e)) => return Err(LockError::Io(format!("cannot lock {}: {e}", path.display()))),
    }
    let record = format!("{}\n{}\n", std::process::id(), socket.display());
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| f.write_all(record.as_bytes()))
        .map_err(|e| LockError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(Lock { _file: f })
}

/// Claims file prefix `prefix`: the lock file `vwfabric.lock` in its DPDK
/// runtime directory `dir` (created mode 0700, as the EAL does).
pub fn lock_prefix(dir: &Path, socket: &Path) -> Result<Lock, LockError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| LockError::Io(format!("cannot create DPDK's runtime directory {}: {e}", dir.display())))?;
    lock(&dir.join("vwfabric.lock"), socket)
}

/// The refusal when another fabric holds file prefix `prefix`.
pub fn prefix_in_use(prefix: &str, pid: &str, socket: &str) -> String {
    format!(
        "another vwfabric (pid {pid}, control socket {socket}) is running with --file-prefix {prefix}; \
         each fabric on a machine needs its own --file-prefix (an EAL argument, after `--`)"
    )
}

/// Claims control socket `socket`: the lock file `SOCKET.lock` beside it,
/// so two fabrics starting at once cannot both take the path.
pub fn lock_socket(socket: &Path) -> Result<Lock, String> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    lock(Path::new(&name), socket).map_err(|e| match e {
        LockError::Held { pid, .. } => format!(
            "another vwfabric (pid {pid}) is starting or running on control socket {}; stop it or choose another --socket",
            socket.display()
        ),
        LockError::Io(m) => m,
    })
}

/// The group id of `group`: a number, a name in /etc/group, or a name the
/// system's other group databases know (`getent group`, e.g. LDAP).
pub fn resolve_group(group: &str) -> Result<u32, String> {
    group_id(group, &std::fs::read_to_string("/etc/group").unwrap_or_default()).or_else(|e| {
        std::process::Command::new("getent")
            .args(["group", group])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| group_id(group, &String::from_utf8_lossy(&o.stdout)).ok())
            .ok_or(e)
    })
}

/// The group id of `group` (a name in `group_file`'s format, or a number).
pub fn group_id(group: &str, group_file: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    group_file
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("--socket-group {group}: no such group (not a number, not in /etc/group or getent)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_file_prefix_is_found_in_either_spelling_and_defaults_to_rte() {
        assert_eq!(file_prefix(&args(&["-l", "0-1"])), "rte");
        assert_eq!(file_prefix(&args(&["-l", "0-1", "--file-prefix", "h1", "--no-huge"])), "h1");
        assert_eq!(file_prefix(&args(&["--file-prefix=h2"])), "h2");
        assert_eq!(file_prefix(&args(&["--file-prefix"])), "rte");
        assert_eq!(runtime_dir("h1", true, Some("/run/user/1000")), Path::new("/var/run/dpdk/h1"));
        assert_eq!(runtime_dir("h1", false, Some("/run/user/1000")), Path::new("/run/user/1000/dpdk/h1"));
        assert_eq!(runtime_dir("h1", false, None), Path::new("/tmp/dpdk/h1"));
    }

    #[test]
    fn a_second_claim_of_a_prefix_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = std::env::temp_dir().join(format!("vw-claim-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = lock_prefix(&dir, Path::new("/run/first.sock")).expect("first claim");
        let Err(LockError::Held { pid, socket }) = lock_prefix(&dir, Path::new("/run/second.sock")) else {
            panic!("a second claim must be refused")
        };
        assert_eq!((pid, socket.as_str()), (std::process::id().to_string(), "/run/first.sock"));
        let msg = prefix_in_use("p", "42", "/run/first.sock");
        assert!(msg.starts_with("another vwfabric (pid 42, control socket /run/first.sock)"), "{msg}");
        assert!(msg.contains("--file-prefix p;"), "{msg}");
        drop(first);
        let again = lock_prefix(&dir, Path::new("/run/second.sock")).expect("claim after release");
        let record = std::fs::read_to_string(dir.join("vwfabric.lock")).unwrap();
        assert_eq!(record, format!("{}\n/run/second.sock\n", std::process::id()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dir.join("vwfabric.lock")).unwrap().permissions().mode() & 0o777, 0o600);
        drop(again);

        // The socket's lock, and a lock file that is a symlink is not followed.
        let sock = dir.join("ctl.sock");
        let held = lock_socket(&sock).expect("socket claim");
        let err = lock_socket(&sock).unwrap_err();
        assert!(err.contains(&format!("pid {}", std::process::id())) && err.contains("ctl.sock"), "{err}");
        drop(held);
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("evil.sock.lock")).unwrap();
        assert!(lock_socket(&dir.join("evil.sock")).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn groups_are_found_by_name_or_number() {
        let etc = "root:x:0:\ndaemon:x:1:\nvwire:x:1234:alice,bob\nbroken\n";
        assert_eq!(group_id("vwire", etc), Ok(1234));
        assert_eq!(group_id("daemon", etc), Ok(1));
        assert_eq!(group_id("77", etc), Ok(77));
        assert!(group_id("nosuch", etc).unwrap_err().contains("no such group"));
        assert!(group_id("broken", etc).is_err());
    }
}
