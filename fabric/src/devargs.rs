//! Why DPDK refused a device, in words: when `rte_dev_probe` fails, its
//! errno (`Bad address`, `Operation not permitted`) rarely says what was
//! wrong with the request. This looks at the device arguments: a driver
//! this DPDK does not have, a file an argument names that is not there.

use std::path::Path;

/// What was wrong with device arguments that DPDK refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
    /// No driver of that name.
    UnknownDriver {
        /// The driver named.
        driver: String,
        /// Drivers this DPDK has (virtual devices), sorted.
        known: Vec<String>,
    },
    /// A file an argument names does not exist (or its directory, for a
    /// file the driver would create).
    NoSuchFile {
        /// The argument.
        arg: String,
        /// The path.
        path: String,
    },
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diagnosis::UnknownDriver { driver, known } => write!(
                f,
                "this DPDK has no driver {driver}; its virtual-device drivers: {}",
                if known.is_empty() { "none found".to_owned() } else { known.join(", ") }
            ),
            Diagnosis::NoSuchFile { arg, path } => write!(f, "{arg}={path}: no such file or directory"),
        }
    }
}

/// Where Debian's DPDK 22.11 keeps its driver plugins.
pub const PMD_DIR: &str = "/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0";

/// Virtual-device driver names, from the plugin file names in `dir`
/// (`librte_net_tap.so` is `net_tap`), with DPDK's own exceptions.
pub fn known_drivers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let n = n.strip_prefix("librte_net_")?.strip_suffix(".so")?.to_owned();
            Some(format!("net_{n}"))
        })
        .collect();
    // librte_net_virtio also holds virtio_user.
    if v.iter().any(|d| d == "net_virtio") {
        v.push("net_virtio_user".into());
    }
    v.sort();
    v.dedup();
    v
}

/// The driver of a virtual device name (`net_tap3` is `net_tap`; DPDK's
/// `eth_` aliases are `net_`), or None for a bus address (PCI and such).
pub fn driver_of(devargs: &str) -> Option<String> {
    let name = devargs.split(',').next().unwrap_or("").trim();
    if name.contains(':') || !name.contains('_') {
        return None;
    }
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
    Some(match base.strip_prefix("eth_") {
        Some(rest) => format!("net_{rest}"),
        None => base.to_owned(),
    })
}

/// Why DPDK may have refused `devargs`, if anything in them says so.
/// `known` lists the drivers (see [`known_drivers`]; empty: unknown, not checked).
pub fn diagnose(devargs: &str, known: &[String]) -> Option<Diagnosis> {
    if let Some(driver) = driver_of(devargs) {
        if !known.is_empty() && driver.starts_with("net_") && !known.contains(&driver) {
            return Some(Diagnosis::UnknownDriver { driver, known: known.to_vec() });
        }
    }
    for a in devargs.split(',').skip(1) {
        let Some((k, v)) = a.split_once('=') else { continue };
        let p = Path::new(v);
        // Files the driver reads, and files it creates (in a directory that must exist).
        let missing = match k {
            "rx_pcap" | "path" if v.starts_with('/') => !p.exists(),
            "tx_pcap" if v.starts_with('/') => p.parent().is_some_and(|d| !d.is_dir()),
            _ => false,
        };
        if missing {
            return Some(Diagnosis::NoSuchFile { arg: k.to_owned(), path: v.to_owned() });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["net_null", "net_pcap", "net_tap", "net_virtio", "net_virtio_user"].map(String::from).to_vec()
    }

    #[test]
    fn drivers_are_named_from_device_names() {
        assert_eq!(driver_of("net_tap3,iface=x").as_deref(), Some("net_tap"));
        assert_eq!(driver_of("eth_pcap0").as_deref(), Some("net_pcap"));
        assert_eq!(driver_of("0000:00:04.0"), None);
        assert_eq!(driver_of("net_virtio_user1,path=/x").as_deref(), Some("net_virtio_user"));
    }

    #[test]
    fn unknown_drivers_and_missing_files_are_named() {
        let d = diagnose("net_nosuch0", &known()).unwrap();
        assert!(d.to_string().contains("no driver net_nosuch") && d.to_string().contains("net_tap"), "{d}");
        assert_eq!(diagnose("net_tap0,iface=x", &known()), None);
        assert_eq!(diagnose("net_nosuch0", &[]), None, "no list: no guess");
        let d = diagnose("net_pcap0,rx_pcap=/no/such/file.pcap", &known()).unwrap();
        assert_eq!(d.to_string(), "rx_pcap=/no/such/file.pcap: no such file or directory");
        let d = diagnose("net_pcap0,tx_pcap=/no/such/dir/out.pcap", &known()).unwrap();
        assert!(matches!(d, Diagnosis::NoSuchFile { .. }));
        assert_eq!(diagnose("net_pcap0,tx_pcap=/tmp/out.pcap", &known()), None);
    }
}
