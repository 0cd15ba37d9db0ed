//! Typed errors for DPDK calls: one place turns return codes into values.

use std::ffi::CStr;

/// Result of a DPDK operation.
pub type Result<T> = std::result::Result<T, Error>;

/// An error from a DPDK call, or a precondition this crate checks itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A DPDK function failed; `errno` is the positive error number it gave
    /// (its negative return value, or `rte_errno`), `text` its description.
    #[error("{op} failed: {text} (errno {errno})")]
    Dpdk {
        /// The DPDK function (and its subject) that failed.
        op: String,
        /// Positive errno value.
        errno: i32,
        /// `rte_strerror(errno)`.
        text: String,
    },
    /// The EAL was already initialised in this process.
    #[error("the DPDK EAL is already initialised in this process")]
    EalAlreadyInitialised,
    /// An argument was rejected before calling DPDK.
    #[error("{0}")]
    Invalid(String),
    /// A librte_vhost call failed; it gives no error code, its reason is in
    /// DPDK's log.
    #[error("{0} failed (librte_vhost logs why)")]
    Vhost(String),
    /// No ethdev port matched a device.
    #[error("device {0:?} was probed but created no ethdev port")]
    NoPort(String),
    /// A device needed more ethdev ports than DPDK had free.
    #[error(
        "device {devargs:?} needs more ethdev ports than are free: this DPDK is built with \
         RTE_MAX_ETHPORTS = {max} and all are in use (the ports the failed probe made were closed)"
    )]
    PortLimit {
        /// The device arguments.
        devargs: String,
        /// RTE_MAX_ETHPORTS.
        max: u16,
    },
}

impl Error {
    /// Builds an error from a positive errno value.
    pub fn from_errno(op: impl Into<String>, errno: i32) -> Self {
        let errno = errno.abs();
        Error::Dpdk { op: op.into(), errno, text: strerror(errno) }
    }

    /// Builds an error from the calling thread's `rte_errno`.
    pub fn from_rte_errno(op: impl Into<String>) -> Self {
        // SAFETY: vw_rte_errno only reads the calling thread's rte_errno.
        let errno = unsafe { dpdk_sys::vw_rte_errno() };
        if errno == 0 {
            // Some failure paths (e.g. EAL config lock) do not set rte_errno.
            return Error::Dpdk {
                op: op.into(),
                errno: 0,
                text: "no error code given; see DPDK's messages above".into(),
            };
        }
        Self::from_errno(op, errno)
    }

    /// The errno value, if this error came from DPDK.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Dpdk { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `rte_strerror` as an owned string.
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a NUL-terminated string that is
    // either static or in a per-thread buffer; we copy it out at once.
    unsafe {
        let p = dpdk_sys::rte_strerror(errno);
        if p.is_null() {
            return format!("error {errno}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Maps a DPDK return code (0 or positive on success, negative errno on
/// failure) to a `Result`.
pub(crate) fn check(op: impl FnOnce() -> String, rc: i32) -> Result<i32> {
    if rc < 0 {
        Err(Error::from_errno(op(), -rc))
    } else {
        Ok(rc)
    }
}
