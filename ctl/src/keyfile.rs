//! A secure wire's key file: one SA per direction, as `vwctl keygen` writes
//! a pair of them (one per end) and `vwctl connect --key-file` reads one.
//!
//! ```text
//! # VirtualWire secure wire keys (AES-GCM, RFC 4106): one SA per direction.
//! out 0x5ab3c1d2 0x0123456789abcdef0123456789abcdef01020304
//! in  0x7e0f9a11 0xfedcba9876543210fedcba987654321004030201
//! ```
//!
//! `out` is the SA this end sends with, `in` the one it receives with; the
//! far end's file has the same two lines swapped. An SPI is hexadecimal
//! (`0x`) or decimal, 256 or more (RFC 4303 §2.1: 0 is invalid, 1-255 are
//! reserved). The key material is the AES key (16 or 32 bytes) then the
//! 4-byte salt, as `ip xfrm state ... aead 'rfc4106(gcm(aes))' KEY 128`
//! takes it. Lines starting with `#` and blank lines are ignored.

use crate::proto::{SaLifetime, SecureKeys};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use vw_esp::Keymat;

/// The lowest SPI a key file may use (RFC 4303 §2.1).
pub const MIN_SPI: u32 = 256;

fn parse_spi(t: &str) -> Option<u32> {
    match t.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Reads the text of a key file. Errors name the line and never quote key
/// material.
pub fn parse(text: &str) -> Result<SecureKeys, String> {
    let (mut out, mut inb) = (None, None);
    let mut lifetime = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"lifetime") {
            let [_, secs, packets] = f.as_slice() else {
                return Err(format!("line {n}: expected `lifetime SECONDS|- PACKETS|-`"));
            };
            let num = |t: &str, what: &str| -> Result<Option<u64>, String> {
                match t {
                    "-" => Ok(None),
                    _ => t
                        .parse()
                        .map(Some)
                        .map_err(|_| format!("line {n}: the lifetime's {what} must be a number or -")),
                }
            };
            if lifetime.is_some() {
                return Err(format!("line {n}: a second `lifetime` line"));
            }
            let l = SaLifetime { seconds: num(secs, "seconds")?, packets: num(packets, "packets")? };
            l.check().map_err(|e| format!("line {n}: {e}"))?;
            lifetime = Some(l);
            continue;
        }
        let [dir, spi, key] = f.as_slice() else {
            return Err(format!("line {n}: expected `out|in SPI KEY`, found {} fields", f.len()));
        };
        let spi = parse_spi(spi).filter(|s| *s >= MIN_SPI).ok_or_else(|| {
            format!("line {n}: the SPI must be a number from {MIN_SPI} to 4294967295 (0x100 to 0xffffffff)")
        })?;
        Keymat::from_hex(key).map_err(|e| format!("line {n}: {e}"))?;
        let slot = match *dir {
            "out" => &mut out,
            "in" => &mut inb,
            _ => return Err(format!("line {n}: the first field must be `out` or `in`")),
        };
        if slot.is_some() {
            return Err(format!("line {n}: a second `{dir}` line"));
        }
        *slot = Some((spi, key.to_string()));
    }
    match (out, inb) {
        (Some((out_spi, out_key)), Some((in_spi, in_key))) => {
            if Keymat::from_hex(&out_key).ok() == Keymat::from_hex(&in_key).ok() {
                return Err("the `out` and `in` SAs have the same key: each direction needs its own".into());
            }
            Ok(SecureKeys { out_spi, out_key, in_spi, in_key, lifetime })
        }
        (None, _) => Err("no `out` line (the SA this end sends with)".into()),
        (_, None) => Err("no `in` line (the SA this end receives with)".into()),
    }
}

/// Reads key file `path`, which only its owner may read or write (as ssh
/// asks of a private key).
pub fn read(path: &Path) -> Result<SecureKeys, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read key file {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {shown} may be read or written by others (mode {mode:04o}); `chmod 600 {shown}` first"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read key file {shown}: {e}"))?;
    parse(&text).map_err(|e| format!("key file {shown}: {e}"))
}

/// The text of a key file for `keys`.
pub fn format(keys: &SecureKeys, bits: usize) -> String {
    format!(
        "# VirtualWire secure wire keys (AES-{bits}-GCM, RFC 4106): one SA per direction.\n# `out` is the SA \
         this end sends with, `in` the one it receives with; the far end's file has\n# them swapped. Keep it \
         secret (mode 0600). Use it for one wire, once: generate a new pair\n# for every connect (vwctl keygen).\n\
         out {:#010x} {}\nin {:#010x} {}\n{}",
        keys.out_spi,
        keys.out_key,
        keys.in_spi,
        keys.in_key,
        match keys.lifetime {
            None => String::new(),
            Some(l) => {
                let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                format!(
                    "# The wire rekeys itself after SECONDS or PACKETS (both ends' files say the same):\nlifetime {} \
                     {}\n",
                    n(l.seconds),
                    n(l.packets)
                )
            }
        }
    )
}

/// Fresh keys for both ends of a wire: (this end's, the far end's).
pub fn generate(bits: usize, lifetime: Option<SaLifetime>) -> Result<(SecureKeys, SecureKeys), String> {
    if let Some(l) = &lifetime {
        l.check()?;
    }
    let k1 = Keymat::generate(bits).map_err(|e| e.to_string())?;
    let k2 = Keymat::generate(bits).map_err(|e| e.to_string())?;
    let mut spis = [0u32; 2];
    for s in &mut spis {
        let k = Keymat::generate(128).map_err(|e| e.to_string())?;
        let h = k.to_hex();
        let v = u32::from_str_radix(&h[2..10], 16).map_err(|e| e.to_string())?;
        *s = v.max(MIN_SPI);
    }
    if spis[0] == spis[1] {
        spis[1] = spis[0].wrapping_add(1).max(MIN_SPI);
    }
    let here = SecureKeys { out_spi: spis[0], out_key: k1.to_hex(), in_spi: spis[1], in_key: k2.to_hex(), lifetime };
    let there = SecureKeys { out_spi: spis[1], out_key: k2.to_hex(), in_spi: spis[0], in_key: k1.to_hex(), lifetime };
    Ok((here, there))
}

/// Writes a new key file (never over an existing one), mode 0600.
pub fn write_new(path: &Path, text: &str) -> Result<(), String> {
    let shown = path.display();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create key file {shown}: {e}"))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("cannot write key file {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_is_mirrored_and_reads_back() {
        let (a, b) = generate(128, None).unwrap();
        assert_eq!((a.out_spi, a.in_spi), (b.in_spi, b.out_spi));
        assert_eq!((&a.out_key, &a.in_key), (&b.in_key, &b.out_key));
        assert_ne!(a.out_key, a.in_key);
        assert!(a.out_spi >= MIN_SPI && a.in_spi >= MIN_SPI && a.out_spi != a.in_spi);
        assert_eq!(parse(&format(&a, 128)).unwrap(), a);
        let (c, _) = generate(256, None).unwrap();
        assert_eq!(c.out_key.len(), 2 + 72);
        assert!(generate(100, None).is_err());
    }

    #[test]
    fn bad_files_are_refused_by_line_without_showing_keys() {
        let k = "0x0123456789abcdef0123456789abcdef01020304";
        let k2 = "0x1123456789abcdef0123456789abcdef01020304";
        let ok = format!("out 0x1001 {k}\nin 4098 {k2}\n");
        let keys = parse(&ok).unwrap();
        assert_eq!((keys.out_spi, keys.in_spi), (0x1001, 4098));
        for (text, want) in [
            (format!("out 0x1001 {k}\n"), "no `in` line"),
            (format!("in 0x1001 {k}\n"), "no `out` line"),
            (format!("out 0x1001 {k}\nout 0x1002 {k2}\nin 5000 {k}"), "line 2: a second `out` line"),
            (format!("out 255 {k}\nin 5000 {k2}"), "line 1: the SPI must be"),
            (format!("out 0x1001 {k}\nin 5000 {k}"), "the same key"),
            (format!("out 0x1001 {k}\nin 5000 {}", k.to_uppercase().replace("0X", "")), "the same key"),
            (format!("both 0x1001 {k}\n"), "line 1: the first field must be"),
            ("out 0x1001 0x0123\n".to_string(), "line 1: AES-GCM key material"),
            ("out 0x1001\n".to_string(), "expected `out|in SPI KEY`"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("0123456789"), "no key in {e}");
        }
        assert!(!format!("{keys:?}").contains("0123"), "Debug hides the keys");
    }

    #[test]
    fn a_lifetime_line_is_written_to_both_files_and_read_back() {
        let l = SaLifetime { seconds: Some(3600), packets: None };
        let (a, b) = generate(128, Some(l)).unwrap();
        let text = format(&a, 128);
        assert!(text.contains("\nlifetime 3600 -\n"), "{text}");
        assert_eq!(parse(&text).unwrap(), a);
        assert_eq!(parse(&format(&b, 128)).unwrap().lifetime, Some(l));
        let both = SaLifetime { seconds: Some(60), packets: Some(1 << 30) };
        assert_eq!(parse(&format(&generate(256, Some(both)).unwrap().0, 256)).unwrap().lifetime, Some(both));
        assert!(generate(128, Some(SaLifetime { seconds: Some(5), packets: None }))
            .unwrap_err()
            .contains("10 seconds"));
        let k = "0x0123456789abcdef0123456789abcdef01020304";
        let k2 = "0x1123456789abcdef0123456789abcdef01020304";
        for (line, want) in [
            ("lifetime 3600", "expected `lifetime SECONDS|- PACKETS|-`"),
            ("lifetime - -", "needs seconds, packets or both"),
            ("lifetime x -", "seconds must be a number"),
            ("lifetime - 100", "at least 10000 packets"),
        ] {
            let e = parse(&format!("out 0x1001 {k}\nin 4098 {k2}\n{line}\n")).unwrap_err();
            assert!(e.contains(want) && e.contains("line 3"), "{line}: {e}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("vw-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let (a, _) = generate(128, None).unwrap();
        write_new(&path, &format(&a, 128)).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        assert!(write_new(&path, "x").unwrap_err().contains("cannot create"), "never over a file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read(&path).unwrap_err().contains("chmod 600"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
