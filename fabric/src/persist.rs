//! The state file: endpoints and wires, saved on every change and restored
//! at start, so a restarted fabric comes back with its configuration.
//!
//! Saving writes a temporary file next to the state file, fsyncs it, renames
//! it over the old one and fsyncs the directory: after a crash the file is
//! either the old configuration or the new one, never a mix.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use vw_ctl::proto::{EncapName, EndpointSpec};

/// Format version of the state file.
pub const VERSION: u32 = 1;

/// An endpoint as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEndpoint {
    /// Name.
    pub name: String,
    /// How to create it.
    pub spec: EndpointSpec,
}

/// A wire as saved (the arguments of `connect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWire {
    /// Wire id.
    pub wire: u32,
    /// Local endpoint.
    pub endpoint: String,
    /// Peer: local endpoint name or remote VTEP address.
    pub peer: String,
    /// Format, for a remote peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapName>,
    /// When the local end arrived here (ns since the Unix epoch), for
    /// ordering moves after a restart (see docs/migration.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub local_ns: u64,
    /// When the remote end arrived at its current host, as it announced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub remote_ns: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The whole saved configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Format version.
    pub version: u32,
    /// Endpoints, in the order to create them.
    pub endpoints: Vec<SavedEndpoint>,
    /// Wires.
    pub wires: Vec<SavedWire>,
}

/// Writes `state` to `path` atomically (write, fsync, rename, fsync dir).
pub fn save(path: &Path, state: &Saved) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into())
    ));
    let mut text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    text.push('\n');
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Reads the state file; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the state file {}: {e}", path.display())),
    };
    let saved: Saved =
        serde_json::from_str(&text).map_err(|e| format!("the state file {} is not valid: {e}", path.display()))?;
    if saved.version != VERSION {
        return Err(format!(
            "the state file {} has version {}, this vwfabric reads {VERSION}",
            path.display(),
            saved.version
        ));
    }
    Ok(Some(saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("vw-persist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(load(&path).unwrap(), None);
        let s = Saved {
            version: VERSION,
            endpoints: vec![
                SavedEndpoint { name: "vm1".into(), spec: EndpointSpec::Dpdk { devargs: "net_tap1,iface=a".into() } },
                SavedEndpoint {
                    name: "vm2".into(),
                    spec: EndpointSpec::VhostUser { path: "/tmp/x.sock".into(), client: true, queues: 2 },
                },
            ],
            wires: vec![SavedWire {
                wire: 7,
                endpoint: "vm1".into(),
                peer: "10.0.0.2".into(),
                encap: Some(EncapName::Vxlan),
                local_ns: 1_700_000_000_000_000_000,
                remote_ns: 0,
            }],
        };
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), Some(s.clone()));
        // Only the state file remains: the temporary was renamed over it.
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("not valid"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
