//! Where vhost-user sockets live, handled so that no client can make the
//! fabric create, connect to or delete a file it did not mean to.
//!
//! Every socket is reached through a handle on its directory, opened when
//! the endpoint is added: librte_vhost is given `/proc/self/fd/N/NAME`, so
//! binding, reconnecting and the unlink at unregistering happen in that
//! directory even if its path is later swapped for a symlink. Before a
//! server-mode socket is created, whatever has its name is looked at
//! without following symlinks: only a socket nobody listens on (a stream
//! connect refused at once, without waiting) is replaced; anything else is
//! refused and left alone.
//!
//! The fabric's own directory (`--vhost-dir`) holds the sockets of
//! endpoints added by name, the only kind members of the socket group may
//! add: it is the fabric's (created if missing, refused if anyone else may
//! write to it), readable and traversable by the socket group, and each
//! socket in it is made read-write for that group (QEMU in the group
//! connects to it).

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// An open directory holding vhost-user sockets.
#[derive(Debug)]
pub struct SockDir {
    /// As the user named it.
    path: PathBuf,
    fd: OwnedFd,
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

impl SockDir {
    /// Opens the directory `path` (following symlinks now, never after).
    pub fn open(path: &Path) -> Result<SockDir, String> {
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| err("cannot open directory", path, e))?;
        Ok(SockDir { path: path.to_owned(), fd })
    }

    /// Sets up the fabric's own directory: created (mode 0750) if missing;
    /// refused unless it is a directory (not a symlink) owned by this
    /// process's user that nobody else may write to. With `group`, it and
    /// its sockets belong to that group.
    pub fn own(path: &Path, group: Option<u32>) -> Result<SockDir, String> {
        if !path.is_absolute() {
            return Err(format!("--vhost-dir {}: must be an absolute path", path.display()));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("cannot create", parent, e))?;
        }
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o750)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err("cannot create", path, e)),
        }
        let st = rustix::fs::lstat(path).map_err(|e| err("cannot look at", path, e))?;
        let me = rustix::process::geteuid().as_raw();
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(format!("--vhost-dir {} is not a directory (a symlink is refused)", path.display()));
        }
        if st.st_uid != me {
            return Err(format!(
                "--vhost-dir {} belongs to uid {}, not to this fabric (uid {me})",
                path.display(),
                st.st_uid
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(format!(
                "--vhost-dir {} may be written by others (mode {:o}); make it 0750 or 0755",
                path.display(),
                st.st_mode & 0o7777
            ));
        }
        let dir = SockDir::open(path)?;
        if let Some(g) = group {
            let real = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| err("cannot open", path, e))?;
            rustix::fs::fchown(&real, None, Some(rustix::fs::Gid::from_raw(g)))
                .map_err(|e| err("cannot chown", path, e))?;
        }
        Ok(dir)
    }

    /// The path librte_vhost is given for socket `name` in this directory.
    pub fn socket_path(&self, name: &str) -> String {
        format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd())
    }

    /// The path users see for socket `name`.
    pub fn shown(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The inode of `name` here (not following a symlink), if it exists.
    pub fn inode(&self, name: &str) -> Option<u64> {
        rustix::fs::statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).ok().map(|st| st.st_ino)
    }

    /// Makes room for a server-mode socket `name`: nothing there, or a
    /// socket nobody listens on that is this fabric's (`own`: in its own
    /// directory, or with inode `ours`), which is removed. Anything else is
    /// refused and left as it is.
    pub fn clear_stale(&self, name: &str, own: bool, ours: Option<u64>) -> Result<(), String> {
        let shown = self.shown(name);
        let st = match rustix::fs::statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(err("cannot look at", &shown, e)),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
            return Err(format!("{} exists and is not a socket", shown.display()));
        }
        // A stream connect that cannot wait: refused means nobody listens.
        let s = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("cannot probe {}: {e}", shown.display()))?;
        let addr = rustix::net::SocketAddrUnix::new(self.socket_path(name))
            .map_err(|e| format!("cannot probe {}: {e}", shown.display()))?;
        match rustix::net::connect(&s, &addr) {
            Err(rustix::io::Errno::CONNREFUSED) => {}
            Ok(()) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INPROGRESS) => {
                return Err(format!("{} is in use: another process listens on it", shown.display()));
            }
            Err(rustix::io::Errno::PROTOTYPE) => {
                return Err(format!(
                    "{} is a datagram socket of another process, not a vhost-user socket",
                    shown.display()
                ));
            }
            Err(e) => return Err(format!("{} cannot be replaced: {e}", shown.display())),
        }
        if !own && ours != Some(st.st_ino) {
            return Err(format!(
                "{} is a socket nobody listens on, but not one this fabric created (remove it if it is a leftover)",
                shown.display()
            ));
        }
        // Stale: the directory handle makes sure it is this one that goes.
        rustix::fs::unlinkat(self.fd.as_fd(), name, AtFlags::empty())
            .map_err(|e| err("cannot remove the stale socket", &shown, e))
    }

    /// Gives socket `name`, just created, to `group` with mode 0660.
    pub fn share(&self, name: &str, group: Option<u32>) -> Result<(), String> {
        let shown = self.shown(name);
        if let Some(g) = group {
            rustix::fs::chownat(
                self.fd.as_fd(),
                name,
                None,
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| err("cannot chown", &shown, e))?;
        }
        rustix::fs::chmodat(self.fd.as_fd(), name, Mode::from_raw_mode(0o660), AtFlags::empty())
            .map_err(|e| err("cannot chmod", &shown, e))
    }
}
