//! Owning mbuf handles and fixed-size bursts.
//!
//! [`Mbuf`] owns one packet (its first segment and any chained segments) and
//! frees it on drop. Handing it to a [`TxBuffer`] moves ownership; the TX
//! path frees what the queue does not take and counts it. [`Burst`] is a
//! fixed array filled by `rte_eth_rx_burst`, drained as `Mbuf`s. Nothing
//! here allocates.

use crate::port::PortId;
use std::ptr::NonNull;

/// Packets per RX burst (DPDK's customary 32).
pub const BURST_SIZE: usize = 32;
/// Capacity of a TX buffer before it flushes by itself.
pub const TX_BUFFER_SIZE: usize = 64;
/// How many packets ahead of the current one `Burst::drain` prefetches.
const PREFETCH_AHEAD: usize = 3;

type RawMbuf = *mut dpdk_sys::rte_mbuf;

/// An owned packet buffer. Freed (with its whole segment chain) on drop.
#[repr(transparent)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one Mbuf handle at a time, and DPDK
// allows an mbuf to be freed or transmitted from any thread.
unsafe impl Send for Mbuf {}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf").field("pkt_len", &self.pkt_len()).field("segs", &self.nb_segs()).finish()
    }
}

impl Mbuf {
    #[inline(always)]
    pub(crate) fn from_nonnull(p: NonNull<dpdk_sys::rte_mbuf>) -> Mbuf {
        Mbuf(p)
    }

    #[inline(always)]
    fn into_raw(self) -> RawMbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    #[inline(always)]
    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: the handle owns a valid mbuf for its whole life.
        unsafe { self.0.as_ref() }
    }

    #[inline(always)]
    fn raw_mut(&mut self) -> &mut dpdk_sys::rte_mbuf {
        // SAFETY: the handle owns the mbuf exclusively; &mut self prevents aliasing.
        unsafe { self.0.as_mut() }
    }

    /// Total packet length over all segments.
    #[inline(always)]
    pub fn pkt_len(&self) -> u32 {
        self.raw().pkt_len
    }

    /// Bytes of packet data in the first segment.
    #[inline(always)]
    pub fn data_len(&self) -> u16 {
        self.raw().data_len
    }

    /// Number of segments in the chain.
    #[inline(always)]
    pub fn nb_segs(&self) -> u16 {
        self.raw().nb_segs
    }

    /// Free bytes in front of the packet data (room for `prepend`).
    #[inline(always)]
    pub fn headroom(&self) -> u16 {
        self.raw().data_off
    }

    /// Free bytes after the packet data in the first segment.
    #[inline(always)]
    fn tailroom(&self) -> usize {
        let m = self.raw();
        m.buf_len as usize - m.data_off as usize - m.data_len as usize
    }

    /// The first segment's packet data.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr points to buf_len bytes; DPDK and this module keep
        // data_off + data_len <= buf_len. The slice borrows self, which owns
        // the buffer exclusively.
        unsafe { std::slice::from_raw_parts((m.buf_addr as *const u8).add(m.data_off as usize), m.data_len as usize) }
    }

    /// The first segment's packet data, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.raw_mut();
        // SAFETY: as in `data`; &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut((m.buf_addr as *mut u8).add(m.data_off as usize), m.data_len as usize) }
    }

    /// Grows the packet by `n` bytes at the front (into the headroom) and
    /// returns those bytes, or `None` if the headroom is too small.
    #[inline(always)]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let m = self.raw_mut();
        if n > m.data_off as usize {
            return None;
        }
        m.data_off -= n as u16;
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        Some(&mut self.data_mut()[..n])
    }

    /// Removes `n` bytes from the front of the packet. Returns false (and
    /// changes nothing) if the first segment holds fewer than `n` bytes.
    #[inline(always)]
    pub fn adj(&mut self, n: usize) -> bool {
        let m = self.raw_mut();
        if n > m.data_len as usize {
            return false;
        }
        m.data_off += n as u16;
        m.data_len -= n as u16;
        m.pkt_len -= n as u32;
        true
    }

    /// Removes `n` bytes from the end of the packet. Returns false (and
    /// changes nothing) if the last segment holds fewer than `n` bytes.
    #[inline]
    pub fn trim(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if self.nb_segs() == 1 {
            let m = self.raw_mut();
            if n > m.data_len as usize {
                return false;
            }
            m.data_len -= n as u16;
            m.pkt_len -= n as u32;
            return true;
        }
        if n > u16::MAX as usize {
            return false;
        }
        // SAFETY: we own the chain; rte_pktmbuf_trim only adjusts lengths of
        // the last segment and fails without change if it is too short.
        unsafe { dpdk_sys::rte_pktmbuf_trim(self.0.as_ptr(), n as u16) == 0 }
    }

    /// Grows a single-segment packet by `n` bytes at the end and returns them.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if self.nb_segs() != 1 || n > self.tailroom() {
            return None;
        }
        let m = self.raw_mut();
        let old = m.data_len as usize;
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        Some(&mut self.data_mut()[old..old + n])
    }

    /// The receiving device verified the L4 (UDP) checksum and found it
    /// correct. False when it did not check, found it bad, or there is none.
    #[inline(always)]
    pub fn l4_checksum_good(&self) -> bool {
        self.raw().ol_flags & u64::from(dpdk_sys::RTE_MBUF_F_RX_L4_CKSUM_MASK)
            == u64::from(dpdk_sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD)
    }

    /// The RSS hash the receiving device computed, if it set one.
    #[inline(always)]
    pub fn rss_hash(&self) -> Option<u32> {
        let m = self.raw();
        if m.ol_flags & dpdk_sys::RTE_MBUF_F_RX_RSS_HASH as u64 != 0 {
            // SAFETY: the RSS_HASH flag says the `rss` member of the union is valid.
            Some(unsafe { m.__bindgen_anon_2.hash.rss })
        } else {
            None
        }
    }

    /// Copies the whole packet (all segments) into `out`, returning the
    /// number of bytes written. Used by the control plane, never per packet.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let mut written = 0;
        let mut seg: *const dpdk_sys::rte_mbuf = self.0.as_ptr();
        while !seg.is_null() && written < out.len() {
            // SAFETY: seg walks the chain owned by this handle; each segment's
            // data_off + data_len stays within its buffer.
            let (ptr, len, next) = unsafe {
                let s = &*seg;
                ((s.buf_addr as *const u8).add(s.data_off as usize), s.data_len as usize, s.next)
            };
            let n = len.min(out.len() - written);
            // SAFETY: ptr is valid for len >= n bytes (see above).
            out[written..written + n].copy_from_slice(unsafe { std::slice::from_raw_parts(ptr, n) });
            written += n;
            seg = next;
        }
        written
    }

    /// Hints the CPU to load the first cache line of packet data.
    #[inline(always)]
    pub fn prefetch(&self) {
        prefetch_data(self.0.as_ptr());
    }
}

#[inline(always)]
fn prefetch_data(m: RawMbuf) {
    // SAFETY: m is a valid mbuf owned by the caller; reading buf_addr and
    // data_off is a plain load, and a prefetch never faults.
    unsafe {
        let p = ((*m).buf_addr as *const u8).add((*m).data_off as usize);
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
}

#[inline(always)]
fn prefetch_headroom(m: RawMbuf) {
    // SAFETY: as in prefetch_data; the address may lie before the buffer
    // when the headroom is short, and a prefetch of any address is harmless.
    unsafe {
        let p = ((*m).buf_addr as *const u8).wrapping_add((*m).data_off as usize).wrapping_sub(64);
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: the handle owns the mbuf chain; after this nothing refers to it.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Frees `n` raw mbufs in one call.
#[inline]
fn free_bulk(pkts: &mut [RawMbuf]) {
    if !pkts.is_empty() {
        // SAFETY: every pointer in `pkts` is an mbuf chain owned by the caller,
        // which forgets them after this call.
        unsafe { dpdk_sys::rte_pktmbuf_free_bulk(pkts.as_mut_ptr(), pkts.len() as u32) }
    }
}

/// Up to [`BURST_SIZE`] received packets, owned. Unconsumed packets are
/// freed when the burst is dropped or refilled.
pub struct Burst {
    pkts: [RawMbuf; BURST_SIZE],
    len: usize,
    next: usize,
    /// Malformed packets `rx` freed since the last `take_malformed`.
    malformed: u32,
}

// SAFETY: the burst owns its mbufs exclusively (see Mbuf).
unsafe impl Send for Burst {}

impl Default for Burst {
    fn default() -> Self {
        Self::new()
    }
}

/// Most segments a received packet may have (a 64 KB frame in 1 KB mbufs).
const MAX_SEGMENTS: u32 = 64;

/// Whether every segment's data lies in its buffer, and the segments' data
/// lengths add up to the packet length.
///
/// # Safety
/// `p` must point to a valid mbuf whose `next` chain is valid.
#[inline(always)]
unsafe fn well_formed(p: RawMbuf) -> bool {
    // SAFETY: per the function's contract.
    let m = unsafe { &*p };
    if m.nb_segs == 1 && m.next.is_null() {
        return u32::from(m.data_off) + u32::from(m.data_len) <= u32::from(m.buf_len)
            && m.pkt_len == u32::from(m.data_len);
    }
    well_formed_chain(p)
}

#[cold]
fn well_formed_chain(p: RawMbuf) -> bool {
    let (mut seg, mut total, mut segs) = (p, 0u64, 0u32);
    while !seg.is_null() {
        // SAFETY: the chain is the driver's, valid per `well_formed`.
        let s = unsafe { &*seg };
        segs += 1;
        if segs > MAX_SEGMENTS || u32::from(s.data_off) + u32::from(s.data_len) > u32::from(s.buf_len) {
            return false;
        }
        total += u64::from(s.data_len);
        seg = s.next;
    }
    // SAFETY: as above.
    let m = unsafe { &*p };
    u32::from(m.nb_segs) == segs && total == u64::from(m.pkt_len)
}

impl Burst {
    /// An empty burst.
    pub const fn new() -> Burst {
        Burst { pkts: [std::ptr::null_mut(); BURST_SIZE], len: 0, next: 0, malformed: 0 }
    }

    /// Receives up to [`BURST_SIZE`] packets from `queue` of `port`,
    /// replacing the previous contents (any left are freed first).
    #[inline(always)]
    pub fn rx(&mut self, port: PortId, queue: u16) -> usize {
        self.clear();
        // SAFETY: pkts has room for BURST_SIZE pointers; the port/queue pair
        // is configured and started (the caller polls only such queues), and
        // only this worker polls this RX queue.
        let n = unsafe { dpdk_sys::rte_eth_rx_burst(port.0, queue, self.pkts.as_mut_ptr(), BURST_SIZE as u16) };
        self.len = n as usize;
        self.next = 0;
        // A driver's lengths are checked before anything reads the data: a
        // packet whose segments do not lie in their buffers or do not add
        // up to its length (net_null with `size=` larger than an mbuf hands
        // out such packets) is freed unread.
        let mut kept = 0;
        for i in 0..self.len {
            let p = self.pkts[i];
            // SAFETY: p is an mbuf the driver just handed over.
            if unsafe { well_formed(p) } {
                self.pkts[kept] = p;
                kept += 1;
            } else {
                self.malformed += 1;
                // SAFETY: p is owned and never used again; its chain's
                // next pointers are the driver's, freed with it.
                unsafe { dpdk_sys::rte_pktmbuf_free(p) };
            }
        }
        self.len = kept;
        self.len
    }

    /// Malformed packets `rx` freed since the last call (to be counted).
    #[inline(always)]
    pub fn take_malformed(&mut self) -> u32 {
        std::mem::take(&mut self.malformed)
    }

    /// Receives up to [`BURST_SIZE`] packets from queue (pair) `queue` of
    /// `io`, replacing the previous contents. vhost-user frames are copied
    /// into mbufs from `pool`.
    #[inline(always)]
    pub fn rx_from(&mut self, io: &PortIo, queue: u16, pool: &crate::Mempool) -> usize {
        match io {
            PortIo::Eth(port) => self.rx(*port, queue),
            PortIo::Vhost(v) => {
                self.clear();
                self.len = v.dequeue(queue, pool, &mut self.pkts);
                self.len
            }
            PortIo::None => {
                self.clear();
                0
            }
        }
    }

    /// Packets not yet taken.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len - self.next
    }

    /// True when no packet is left.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == self.next
    }

    /// Sum of `pkt_len` over the packets not yet taken.
    #[inline(always)]
    pub fn bytes(&self) -> u64 {
        self.pkts[self.next..self.len]
            .iter()
            // SAFETY: pointers in [next, len) are valid owned mbufs.
            .map(|&p| unsafe { (*p).pkt_len } as u64)
            .sum()
    }

    /// Takes the next packet, prefetching the data of one a few places ahead.
    #[inline(always)]
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.next == self.len {
            return None;
        }
        let ahead = self.next + PREFETCH_AHEAD;
        if ahead < self.len {
            prefetch_data(self.pkts[ahead]);
        }
        let p = self.pkts[self.next];
        self.next += 1;
        // SAFETY: rx_burst only returns non-null mbufs.
        Some(Mbuf(unsafe { NonNull::new_unchecked(p) }))
    }

    /// Fills the burst with `n` (at most [`BURST_SIZE`]) fresh, empty mbufs
    /// from `pool` in one call. Returns false (burst left empty) if the pool
    /// has fewer than `n` free.
    pub fn alloc(&mut self, pool: &crate::Mempool, n: usize) -> bool {
        self.clear();
        let n = n.min(BURST_SIZE);
        // SAFETY: pkts has room for BURST_SIZE pointers; on success the pool
        // gives us n initialised mbufs we now own, on failure none.
        let rc = unsafe { dpdk_sys::rte_pktmbuf_alloc_bulk(pool.as_ptr(), self.pkts.as_mut_ptr(), n as u32) };
        if rc != 0 {
            return false;
        }
        self.len = n;
        true
    }

    /// Keeps the packets for which `f` returns true, in order, and moves the
    /// others to `rejected` (freed in bulk later). `f` sees each packet
    /// with mutable access, a few packets after the data of later ones was
    /// prefetched (headroom included, for prepends). If `f` panics, the
    /// packets not yet processed are leaked, never freed twice.
    #[inline(always)]
    pub fn retain_mut(&mut self, rejected: &mut FreeBatch, mut f: impl FnMut(&mut Mbuf) -> bool) {
        let end = self.len;
        // Until the loop ends the burst owns only [next, kept): a panic in
        // `f` leaks the rest instead of freeing what `rejected` now holds.
        self.len = self.next;
        let mut kept = self.next;
        for i in self.next..end {
            if i + PREFETCH_AHEAD < end {
                prefetch_data(self.pkts[i + PREFETCH_AHEAD]);
                prefetch_headroom(self.pkts[i + PREFETCH_AHEAD]);
            }
            // SAFETY: pkts[i] is a valid mbuf owned by the burst and not
            // counted in [next, len) while `f` runs; the handle is read back
            // after `f` (which may have replaced it), so exactly one pointer
            // goes on, to the burst or to `rejected`.
            let mut m = std::mem::ManuallyDrop::new(Mbuf(unsafe { NonNull::new_unchecked(self.pkts[i]) }));
            let keep = f(&mut m);
            let m = std::mem::ManuallyDrop::into_inner(m);
            if keep {
                self.pkts[kept] = m.into_raw();
                kept += 1;
                self.len = kept;
            } else {
                rejected.push(m);
            }
        }
        self.len = kept;
    }

    /// Adds a packet at the end; gives it back if the burst is full.
    #[inline(always)]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST_SIZE {
            return Err(m);
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }

    /// Calls `f` on every packet not yet taken, with mutable access. If `f`
    /// panics, the packets from the current one on are leaked, never freed
    /// twice.
    #[inline(always)]
    pub fn for_each_mut(&mut self, mut f: impl FnMut(usize, &mut Mbuf)) {
        let (start, end) = (self.next, self.len);
        self.len = start;
        for i in start..end {
            // SAFETY: pkts[i] is a valid mbuf owned by the burst (outside
            // [next, len) while `f` runs); the handle `f` leaves behind (it
            // may have replaced it) is stored back, so the burst owns exactly
            // the pointer the handle held.
            let mut m = std::mem::ManuallyDrop::new(Mbuf(unsafe { NonNull::new_unchecked(self.pkts[i]) }));
            f(i - start, &mut m);
            self.pkts[i] = std::mem::ManuallyDrop::into_inner(m).into_raw();
            self.len = i + 1;
        }
    }

    /// Sends the packets not yet taken on `queue` of `port`; frees the ones
    /// the queue refuses. Returns how many were sent.
    #[inline]
    pub fn tx(&mut self, port: PortId, queue: u16) -> usize {
        let n = self.len - self.next;
        if n == 0 {
            return 0;
        }
        // SAFETY: pkts[next..len] are owned mbufs; the device takes the first
        // `sent` of them; the rest stay owned and are freed by clear().
        let sent = unsafe { dpdk_sys::rte_eth_tx_burst(port.0, queue, self.pkts.as_mut_ptr().add(self.next), n as u16) }
            as usize;
        self.next += sent;
        self.clear();
        sent
    }

    /// Like `pop`, for frames about to get headers prepended: also
    /// prefetches the headroom cache line just before the data a few
    /// packets ahead, which the prepend will write.
    #[inline(always)]
    pub fn pop_for_prepend(&mut self) -> Option<Mbuf> {
        let ahead = self.next + PREFETCH_AHEAD;
        if ahead < self.len {
            prefetch_headroom(self.pkts[ahead]);
        }
        self.pop()
    }

    /// Prefetches the data of the first packets before a `pop` loop.
    #[inline(always)]
    pub fn prefetch_head(&self) {
        for &p in &self.pkts[self.next..self.len.min(self.next + PREFETCH_AHEAD)] {
            prefetch_data(p);
        }
    }

    /// Frees every packet not yet taken.
    #[inline]
    pub fn clear(&mut self) {
        free_bulk(&mut self.pkts[self.next..self.len]);
        self.len = 0;
        self.next = 0;
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Where a worker's bursts come from and go to: the queues of an ethdev
/// port, or the rings of a vhost-user device (queue pair `q`). The worker
/// treats both alike; only this type knows the difference.
#[derive(Debug, Clone, Default)]
pub enum PortIo {
    /// Nothing (an unused port slot): receives nothing, refuses every frame.
    #[default]
    None,
    /// An ethdev port.
    Eth(PortId),
    /// A vhost-user socket and the VM device behind it, if any.
    Vhost(std::sync::Arc<crate::vhost::VhostPort>),
}

impl PortIo {
    /// How many frames the port's TX queue `queue` surely takes now, if it
    /// can tell: a VM's RX ring can; an ethdev queue is not asked.
    pub fn room(&self, queue: u16) -> Option<usize> {
        match self {
            PortIo::Vhost(v) => Some(v.rx_room(queue)),
            PortIo::Eth(_) | PortIo::None => None,
        }
    }
}

/// What one [`TxBuffer::flush_to`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Packets the queue took.
    pub sent: u64,
    /// Packets it refused (freed).
    pub refused: u64,
    /// Packets kept in the buffer ([`TxBuffer::flush_or_keep`]).
    pub kept: u64,
    /// Bytes sent, counted for vhost-user devices only (an ethdev counts
    /// its own).
    pub bytes: u64,
}

/// Packets waiting to be sent on one TX queue of one port. The owner
/// flushes it once per poll iteration (and before it would overflow) with
/// [`TxBuffer::flush_to`]; packets the queue refuses are freed and counted.
pub struct TxBuffer {
    len: usize,
    pkts: [RawMbuf; TX_BUFFER_SIZE],
}

// SAFETY: the buffer owns its mbufs exclusively (see Mbuf).
unsafe impl Send for TxBuffer {}

impl Default for TxBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl TxBuffer {
    /// An empty buffer.
    pub const fn new() -> TxBuffer {
        TxBuffer { len: 0, pkts: [std::ptr::null_mut(); TX_BUFFER_SIZE] }
    }

    /// Packets waiting.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is waiting.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left before the buffer must be flushed.
    #[inline(always)]
    pub fn room(&self) -> usize {
        TX_BUFFER_SIZE - self.len
    }

    /// Queues one packet; the caller flushes first when there is no room.
    /// A packet that finds no room anyway is freed and counted as refused.
    #[inline(always)]
    pub fn push(&mut self, m: Mbuf) -> bool {
        if self.len == TX_BUFFER_SIZE {
            return false;
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
        true
    }

    /// Moves every remaining packet of `burst` into this buffer, which must
    /// have room for them (see [`TxBuffer::room`]); returns false and takes
    /// nothing otherwise.
    #[inline(always)]
    pub fn push_burst(&mut self, burst: &mut Burst) -> bool {
        let n = burst.len();
        if self.len + n > TX_BUFFER_SIZE {
            return false;
        }
        self.pkts[self.len..self.len + n].copy_from_slice(&burst.pkts[burst.next..burst.len]);
        self.len += n;
        burst.len = 0;
        burst.next = 0;
        true
    }

    /// Sends what is queued on `queue` of `io`; frees what the queue
    /// refuses.
    #[inline]
    pub fn flush_to(&mut self, io: &PortIo, queue: u16) -> Flushed {
        let n = self.len;
        if n == 0 {
            return Flushed::default();
        }
        self.len = 0;
        let mut bytes = 0;
        let sent = match io {
            PortIo::Eth(port) => {
                // SAFETY: pkts[..n] are owned mbufs; the port/queue pair is
                // started and this TX queue is used by this buffer's owner
                // only. The device takes ownership of the first `sent`.
                let sent =
                    unsafe { dpdk_sys::rte_eth_tx_burst(port.0, queue, self.pkts.as_mut_ptr(), n as u16) } as usize;
                free_bulk(&mut self.pkts[sent..n]);
                sent
            }
            PortIo::Vhost(v) => {
                // librte_vhost copies into the VM's buffers: every mbuf stays
                // ours and is freed, sent or not.
                let sent = v.enqueue(queue, &mut self.pkts[..n]);
                // SAFETY: pkts[..n] are still valid owned mbufs.
                bytes = self.pkts[..sent].iter().map(|&p| unsafe { (*p).pkt_len } as u64).sum();
                free_bulk(&mut self.pkts[..n]);
                sent
            }
            PortIo::None => {
                free_bulk(&mut self.pkts[..n]);
                0
            }
        };
        Flushed { sent: sent as u64, refused: (n - sent) as u64, kept: 0, bytes }
    }

    /// Like [`TxBuffer::flush_to`], except that packets a VM's RX ring
    /// refuses stay in the buffer, the oldest first, up to half of it, if
    /// QEMU is live-migrating the VM (whose vCPUs then run slowly, and stop
    /// before its rings do) or its device has just gone: the moments before
    /// the control plane has put a hold in place. The caller takes them
    /// out with [`TxBuffer::take_all`] or flushes them again.
    pub fn flush_or_keep(&mut self, io: &PortIo, queue: u16) -> Flushed {
        let n = self.len;
        let PortIo::Vhost(v) = io else { return self.flush_to(io, queue) };
        if n == 0 {
            return Flushed::default();
        }
        let sent = v.enqueue(queue, &mut self.pkts[..n]);
        // SAFETY: pkts[..n] are still valid owned mbufs.
        let bytes = self.pkts[..sent].iter().map(|&p| unsafe { (*p).pkt_len } as u64).sum();
        free_bulk(&mut self.pkts[..sent]);
        let keep = if sent < n && (v.migrating() || !v.device_up()) { (n - sent).min(TX_BUFFER_SIZE / 2) } else { 0 };
        free_bulk(&mut self.pkts[sent + keep..n]);
        self.pkts.copy_within(sent..sent + keep, 0);
        self.len = keep;
        Flushed { sent: sent as u64, refused: (n - sent - keep) as u64, kept: keep as u64, bytes }
    }

    /// Takes every queued packet out, in order.
    pub fn take_all(&mut self, mut f: impl FnMut(Mbuf)) {
        let n = self.len;
        self.len = 0;
        for &p in &self.pkts[..n] {
            if let Some(p) = NonNull::new(p) {
                f(Mbuf::from_nonnull(p));
            }
        }
    }

    /// Frees queued packets without sending them (port going away).
    /// Returns how many.
    pub fn discard(&mut self) -> u64 {
        let n = self.len;
        free_bulk(&mut self.pkts[..n]);
        self.len = 0;
        n as u64
    }
}

impl Drop for TxBuffer {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Packets to be freed together (drops on the data path), freed in bulk.
pub struct FreeBatch {
    len: usize,
    pkts: [RawMbuf; BURST_SIZE],
}

// SAFETY: the batch owns its mbufs exclusively (see Mbuf).
unsafe impl Send for FreeBatch {}

impl Default for FreeBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeBatch {
    /// An empty batch.
    pub const fn new() -> FreeBatch {
        FreeBatch { len: 0, pkts: [std::ptr::null_mut(); BURST_SIZE] }
    }

    /// Adds a packet to free; frees the batch when it is full.
    #[inline(always)]
    pub fn push(&mut self, m: Mbuf) {
        if self.len == BURST_SIZE {
            self.flush();
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
    }

    /// Frees every packet in the batch.
    #[inline]
    pub fn flush(&mut self) {
        free_bulk(&mut self.pkts[..self.len]);
        self.len = 0;
    }
}

impl Drop for FreeBatch {
    fn drop(&mut self) {
        self.flush();
    }
}
