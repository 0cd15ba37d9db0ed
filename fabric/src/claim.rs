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

/// True when the effective user is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).map(|u| u == "0")
        })
        .unwrap_or(false)
}

/// Holds the prefix lock for as long as it lives (the kernel drops it when
/// the process dies, whatever the way).
#[derive(Debug)]
pub struct PrefixLock {
    _file: File,
}

/// Takes the lock file `vwfabric.lock` in the runtime directory `dir` of
/// file prefix `prefix` and writes our pid and control socket into it. If
/// another fabric holds it, says which one.
pub fn lock_prefix(dir: &Path, prefix: &str, socket: &Path) -> Result<PrefixLock, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create DPDK's runtime directory {}: {e}", dir.display()))?;
    let path = dir.join("vwfabric.lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let mut lines = holder.lines();
            let (pid, sock) = (lines.next().unwrap_or("?"), lines.next().unwrap_or("?"));
            return Err(format!(
                "another vwfabric (pid {pid}, control socket {sock}) is running with --file-prefix {prefix}; \
                 each fabric on a machine needs its own --file-prefix (an EAL argument, after `--`)"
            ));
        }
        Err(TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    let record = format!("{}\n{}\n", std::process::id(), socket.display());
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| f.write_all(record.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(PrefixLock { _file: f })
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
        .ok_or_else(|| format!("--socket-group {group}: no such group (not a number, not in /etc/group)"))
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
        let first = lock_prefix(&dir, "p", Path::new("/run/first.sock")).expect("first claim");
        let err = lock_prefix(&dir, "p", Path::new("/run/second.sock")).unwrap_err();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("/run/first.sock") && err.contains("--file-prefix p"), "{err}");
        drop(first);
        let again = lock_prefix(&dir, "p", Path::new("/run/second.sock")).expect("claim after release");
        let record = std::fs::read_to_string(dir.join("vwfabric.lock")).unwrap();
        assert_eq!(record, format!("{}\n/run/second.sock\n", std::process::id()));
        drop(again);
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
