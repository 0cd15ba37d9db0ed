//! Packet mbuf pools.

use crate::error::{Error, Result};
use crate::mbuf::Mbuf;
use std::ffi::CString;
use std::ptr::NonNull;

/// A DPDK packet mbuf pool. Pools live for the rest of the process (DPDK
/// ports keep pointers to them), so this handle is `Copy`.
#[derive(Debug, Clone, Copy)]
pub struct Mempool(NonNull<dpdk_sys::rte_mempool>);

// SAFETY: rte_mempool is designed for concurrent use from many threads; the
// handle is only a pointer to it.
unsafe impl Send for Mempool {}
// SAFETY: as above; all operations we expose are thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with `data_room` bytes each (headroom
    /// included) and a per-lcore cache of `cache` mbufs.
    pub fn create(name: &str, n: u32, cache: u32, data_room: u16, socket: i32) -> Result<Mempool> {
        let cname = CString::new(name).map_err(|_| Error::Invalid(format!("pool name {name:?}")))?;
        // SAFETY: cname is a valid C string for the duration of the call; the
        // numeric arguments are plain values checked by DPDK.
        let p = unsafe { dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket) };
        NonNull::new(p)
            .map(Mempool)
            .ok_or_else(|| Error::from_rte_errno(format!("rte_pktmbuf_pool_create({name}, {n} mbufs)")))
    }

    /// Raw pointer for port setup inside this crate.
    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.0.as_ptr()
    }

    /// Mbufs currently allocated (in use by ports, queues or the fabric).
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is valid for the life of the process.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.0.as_ptr()) }
    }

    /// Mbufs currently free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid for the life of the process.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.0.as_ptr()) }
    }

    /// Total mbufs in the pool.
    pub fn size(&self) -> u32 {
        // SAFETY: reading a field of a valid pool that never changes.
        unsafe { (*self.0.as_ptr()).size }
    }

    /// Allocates one mbuf (reset, empty). Control-plane use; the data path
    /// never allocates.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid; a non-null result is a fresh mbuf we own.
        let m = unsafe { dpdk_sys::rte_pktmbuf_alloc(self.0.as_ptr()) };
        NonNull::new(m).map(Mbuf::from_nonnull)
    }

    /// Allocates an mbuf holding a copy of `bytes` (a frame the control
    /// plane generates, e.g. an ARP request).
    pub fn alloc_frame(&self, bytes: &[u8]) -> Option<Mbuf> {
        let mut m = self.alloc()?;
        let room = m.append(bytes.len())?;
        room.copy_from_slice(bytes);
        Some(m)
    }
}
