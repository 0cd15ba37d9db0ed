//! An append-only journal file of checksummed lines, and the atomic file
//! replacement the state file and the journal are both written with.
//!
//! This module knows nothing of what the lines mean (`persist.rs` does); it
//! owns the framing and what a crash can leave behind:
//!
//! * Each record is one line: the CRC-32 (IEEE) of the payload as 8
//!   lowercase hex digits, a space, the payload (UTF-8 without a newline,
//!   in practice compact JSON) and `\n`.
//! * A record is durable once [`Journal::append`] returns: the line is
//!   written with one `write` and fdatasync'ed.
//! * Power loss during an append can leave the last line cut short, or
//!   padded with zeros by the filesystem. Only the last line can be hurt
//!   that way (every earlier one was synced before the next was written),
//!   so [`parse`] drops a last line that lacks its newline or fails its
//!   check and reports it, while a bad line anywhere else is an error: that
//!   is damage a crash cannot explain, and guessing past it could resurrect
//!   deleted configuration.

// Only the atomic replacement has a caller outside the tests until
// control.rs persists through `persist::Store`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it), table built at
/// compile time: the journal needs a check against torn writes, not a new
/// dependency.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// Characters before the payload: 8 hex digits and a space.
const PREFIX: usize = 9;

/// Frames `payload` as one journal line, newline included.
///
/// Fails if the payload holds a newline, which would split the record.
pub fn encode(payload: &str) -> io::Result<Vec<u8>> {
    if payload.contains('\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a journal record cannot contain a newline"));
    }
    let mut line = Vec::with_capacity(PREFIX + payload.len() + 1);
    line.extend_from_slice(format!("{:08x} ", crc32(payload.as_bytes())).as_bytes());
    line.extend_from_slice(payload.as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// Checks one line (without its newline) and returns its payload.
fn check(line: &[u8]) -> Result<&str, &'static str> {
    if line.len() < PREFIX || line[PREFIX - 1] != b' ' {
        return Err("no checksum prefix");
    }
    let hex = std::str::from_utf8(&line[..PREFIX - 1]).map_err(|_| "checksum is not hex")?;
    if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("checksum is not hex");
    }
    let want = u32::from_str_radix(hex, 16).map_err(|_| "checksum is not hex")?;
    let payload = &line[PREFIX..];
    if crc32(payload) != want {
        return Err("checksum mismatch");
    }
    std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8")
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Line number in the file, from 1.
    pub line: usize,
    /// The payload given to [`encode`].
    pub payload: &'a str,
}

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The intact records, in file order.
    pub records: Vec<Record<'a>>,
    /// Length of the intact part of the file: where the next record goes.
    pub valid_len: u64,
    /// Line number of a last record that was dropped as torn.
    pub torn: Option<usize>,
}

/// A record before the last one is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} is corrupt ({reason})")]
pub struct Corrupt {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Splits a journal's bytes into checked records.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, Corrupt> {
    let mut records = Vec::new();
    let mut start = 0;
    let mut line = 0;
    while start < bytes.len() {
        line += 1;
        let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') else {
            // No newline: the append that wrote this line never finished,
            // so the caller never learnt it was durable.
            return Ok(Parsed { records, valid_len: start as u64, torn: Some(line) });
        };
        let end = start + nl;
        match check(&bytes[start..end]) {
            Ok(payload) => records.push(Record { line, payload }),
            Err(_) if end + 1 == bytes.len() => {
                return Ok(Parsed { records, valid_len: start as u64, torn: Some(line) });
            }
            Err(reason) => return Err(Corrupt { line, reason }),
        }
        start = end + 1;
    }
    Ok(Parsed { records, valid_len: bytes.len() as u64, torn: None })
}

/// The directory holding `path`, for fsyncing a rename in it.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The temporary file `path` is written through: hidden, in the same
/// directory, so the rename is atomic.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    parent_dir(path).join(format!(".{name}.tmp"))
}

/// A file written and fsynced under a temporary name, not yet in place.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
    file: File,
}

impl Prepared {
    /// Renames the file over its destination and fsyncs the directory.
    /// Returns it open for appending.
    ///
    /// If this fails, the destination may hold either version.
    pub fn commit(self) -> io::Result<File> {
        fs::rename(&self.tmp, &self.path)?;
        File::open(parent_dir(&self.path))?.sync_all()?;
        Ok(self.file)
    }
}

/// First half of [`replace`]: writes `bytes` to a temporary file next to
/// `path` and fsyncs it. Failing here (a full disk, say) leaves `path`
/// untouched.
pub fn prepare(path: &Path, bytes: &[u8]) -> io::Result<Prepared> {
    let tmp = tmp_path(path);
    // A temporary left by a crash would make `create_new` fail.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Owner only: a secure wire's keys are in the state.
    let mut file = OpenOptions::new().append(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(Prepared { tmp, path: path.to_path_buf(), file })
}

/// Replaces `path` with `bytes` atomically: writes a temporary file next to
/// it, fsyncs it, renames it over `path` and fsyncs the directory. After a
/// crash `path` holds either its old contents or `bytes`, never a mix, and
/// once this returns the new contents survive power loss.
///
/// Returns the new file, open for appending.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<File> {
    prepare(path, bytes)?.commit()
}

/// A journal open for appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    len: u64,
}

impl Journal {
    /// Creates (or replaces) the journal at `path` holding just `first`, a
    /// payload (the header), atomically.
    pub fn create(path: &Path, first: &str) -> io::Result<Journal> {
        let line = encode(first)?;
        let file = replace(path, &line)?;
        Ok(Journal { file, len: line.len() as u64 })
    }

    /// Opens an existing journal whose first `valid_len` bytes [`parse`]
    /// accepted, cutting off a torn record after them so the next append
    /// does not follow garbage.
    pub fn open(path: &Path, valid_len: u64) -> io::Result<Journal> {
        let file = OpenOptions::new().append(true).open(path)?;
        // Owner only (an older build made it 0644): keys may follow.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
            file.sync_data()?;
        }
        Ok(Journal { file, len: valid_len })
    }

    /// Bytes in the file.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends a line from [`encode`] and fdatasyncs it.
    ///
    /// On error the journal must not be appended to again: after a failed
    /// fsync the kernel may have dropped the dirty pages and marked them
    /// clean, so what the file holds is unknown. This still tries to cut
    /// the file back to where the record began, so that a record the caller
    /// was told failed is not replayed at the next start.
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        match self.file.write_all(line).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len).and_then(|()| self.file.sync_data());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn encodes_and_parses() {
        let mut bytes = encode("{\"a\":1}").unwrap();
        bytes.extend(encode("[]").unwrap());
        let p = parse(&bytes).unwrap();
        assert_eq!(p.records, vec![Record { line: 1, payload: "{\"a\":1}" }, Record { line: 2, payload: "[]" }]);
        assert_eq!(p.valid_len, bytes.len() as u64);
        assert_eq!(p.torn, None);
        assert!(encode("a\nb").is_err());
        assert_eq!(parse(b"").unwrap(), Parsed { records: vec![], valid_len: 0, torn: None });
    }

    #[test]
    fn drops_only_a_torn_last_line() {
        let first = encode("first").unwrap();
        let second = encode("second").unwrap();
        let whole = [first.clone(), second.clone()].concat();
        // Cut anywhere inside the second line, newline included.
        for cut in first.len() + 1..whole.len() {
            let p = parse(&whole[..cut]).unwrap();
            assert_eq!(p.records.len(), 1, "cut at {cut}");
            assert_eq!(p.valid_len, first.len() as u64);
            assert_eq!(p.torn, Some(2));
        }
        // Zeros where the filesystem extended the file but the data never came.
        let zeros = [first.clone(), vec![0; 40]].concat();
        assert_eq!(parse(&zeros).unwrap().torn, Some(2));
        // A whole last line with a bad checksum is torn too...
        let mut bad_last = whole.clone();
        let n = bad_last.len();
        bad_last[n - 2] ^= 1;
        assert_eq!(parse(&bad_last).unwrap().torn, Some(2));
        // ...but the same damage before the last line is corruption.
        let mut bad_middle = [whole.clone(), encode("third").unwrap()].concat();
        bad_middle[first.len() + PREFIX] ^= 1;
        assert_eq!(parse(&bad_middle).unwrap_err(), Corrupt { line: 2, reason: "checksum mismatch" });
        let mut no_prefix = b"garbage\n".to_vec();
        no_prefix.extend(&second);
        assert_eq!(parse(&no_prefix).unwrap_err().line, 1);
    }
}
