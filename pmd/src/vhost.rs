//! vhost-user devices driven through librte_vhost directly (no ethdev), the
//! way OVS's `netdev-dpdk` does: a VM's virtio-net NIC is a socket
//! registered with `rte_vhost_driver_register`, its rings are read with
//! `rte_vhost_dequeue_burst` and written with `rte_vhost_enqueue_burst`.
//!
//! librte_vhost runs its callbacks (`new_device`, `destroy_device`,
//! `vring_state_changed`) on its own thread. They only update the
//! [`VhostPort`]'s atomics and queue the port's tag for the control plane
//! ([`take_events`]); workers read the atomics once per burst. When a device
//! goes away, `destroy_device` clears the device id and then waits, through
//! the hook given to [`set_quiesce`], until every worker has passed a
//! quiescent point, so no worker still uses the id when librte_vhost frees
//! the device (OVS does the same with `ovsrcu_synchronize`).
//!
//! Limits of DPDK 22.11 (named, so the fabric can refuse before DPDK does):
//! [`MAX_SOCKETS`] registered sockets per process, and one poll set of
//! [`FDSET_SLOTS`] descriptors for all of them: a connected client-mode
//! socket takes one, a server-mode socket two (listener and connection).

use crate::error::{Error, Result};
use crate::mempool::Mempool;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Sockets librte_vhost can register at once (`MAX_VHOST_SOCKET`).
pub const MAX_SOCKETS: usize = 1024;
/// Descriptors in librte_vhost's one poll set (`MAX_FDS`, 1024), less the
/// one its wake-up pipe takes.
pub const FDSET_SLOTS: usize = 1023;
/// Most frames one `rte_vhost_enqueue_burst` takes (`MAX_PKT_BURST`).
const ENQUEUE_MAX: usize = 32;
/// Queue pairs a vhost-user endpoint may have (64 virtqueues fit the masks).
pub const MAX_QUEUE_PAIRS: u16 = 16;

// rte_vhost.h flags (macros bindgen does not export as constants).
const FLAG_CLIENT: u64 = 1 << 0;
const FLAG_NET_COMPLIANT_OL_FLAGS: u64 = 1 << 8;

// virtio-net feature bits (virtio spec 1.1, section 5.1.3) the fabric turns
// off: a wire carries whole, checksummed frames, so guests must not hand
// over partial checksums or segmentation work (a far end may be a Linux
// VXLAN device that would have to finish them).
const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// VIRTIO_F_RING_PACKED: the packed virtqueue layout.
const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
/// Without it (a legacy front end), rings are enabled when they start and
/// no `vring_state_changed` event comes.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const DISABLED_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_HOST_UFO;

/// One vhost-user socket and the device (VM connection) behind it, if any.
/// Shared by the control plane, librte_vhost's callbacks and the workers.
#[derive(Debug)]
#[repr(align(64))]
pub struct VhostPort {
    /// librte_vhost's device id while a VM's device is running, else -1.
    vid: AtomicI32,
    /// Bit `i`: virtqueue `i` enabled by the VM (queue pair `q` is
    /// virtqueues `2q`, the VM's RX ring, and `2q + 1`, its TX ring).
    vrings: AtomicU64,
    /// Devices that came up or went down (the VM connecting, leaving).
    link_changes: AtomicU64,
    /// MTU the VM's NIC was given (`host_mtu`), 0 if none.
    mtu: AtomicU32,
    /// Virtio features the VM negotiated.
    features: AtomicU64,
    /// QEMU logs the VM's dirty memory (VHOST_F_LOG_ALL): a live migration
    /// of the VM is under way.
    logging: AtomicBool,
    path: CString,
    client: bool,
    queue_pairs: u16,
    tag: u32,
}

/// What the workers and the control plane read of a device at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhostState {
    /// A VM's device is running.
    pub up: bool,
    /// Enabled virtqueues (see [`VhostPort`]).
    pub vrings: u64,
    /// Devices that came up or went down so far.
    pub link_changes: u64,
    /// MTU the VM's NIC was given, 0 if none.
    pub mtu: u16,
    /// Negotiated virtio features.
    pub features: u64,
    /// QEMU is live-migrating the VM.
    pub migrating: bool,
}

impl VhostPort {
    /// Socket path.
    pub fn path(&self) -> &str {
        self.path.to_str().unwrap_or("")
    }

    /// Client mode: the VM listens and the fabric connects (and reconnects).
    pub fn client(&self) -> bool {
        self.client
    }

    /// Queue pairs offered to the VM.
    pub fn queue_pairs(&self) -> u16 {
        self.queue_pairs
    }

    /// The tag given at registration (the fabric's port index).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The device as it is now.
    pub fn state(&self) -> VhostState {
        VhostState {
            up: self.vid.load(Ordering::Acquire) >= 0,
            vrings: self.vrings.load(Ordering::Acquire),
            link_changes: self.link_changes.load(Ordering::Relaxed),
            mtu: self.mtu.load(Ordering::Relaxed) as u16,
            features: self.features.load(Ordering::Relaxed),
            migrating: self.logging.load(Ordering::Relaxed),
        }
    }

    /// The running device's id, if virtqueue `vq` is enabled.
    #[inline(always)]
    fn vid_for(&self, vq: u16) -> Option<c_int> {
        // SeqCst pairs with the workers' quiescent points (see
        // `on_destroy_device`).
        let vid = self.vid.load(Ordering::SeqCst);
        let on = self.vrings.load(Ordering::Acquire) & (1u64 << (vq & 63)) != 0;
        (vid >= 0 && on).then_some(vid)
    }

    /// Receives up to `pkts.len()` frames the VM sent on queue pair
    /// `queue`, into mbufs from `pool`. Returns how many `pkts` now holds.
    #[inline(always)]
    pub(crate) fn dequeue(&self, queue: u16, pool: &Mempool, pkts: &mut [*mut dpdk_sys::rte_mbuf]) -> usize {
        let vq = 2 * queue + 1;
        let Some(vid) = self.vid_for(vq) else { return 0 };
        // SAFETY: vid names a running device (destroy_device waits for every
        // worker to pass a quiescent point before the id can be freed); vq is
        // an enabled ring below the device's ring count; pkts has room for
        // the count passed; only this worker dequeues from this ring.
        let n =
            unsafe { dpdk_sys::rte_vhost_dequeue_burst(vid, vq, pool.as_ptr(), pkts.as_mut_ptr(), pkts.len() as u16) };
        n as usize
    }

    /// Whether QEMU is live-migrating the VM (it logs dirty memory).
    #[inline(always)]
    pub fn migrating(&self) -> bool {
        self.logging.load(Ordering::Relaxed)
    }

    /// Whether a VM's device is running (a ring may still be disabled).
    #[inline(always)]
    pub fn device_up(&self) -> bool {
        self.vid.load(Ordering::Acquire) >= 0
    }

    /// How many buffers the VM has posted in its RX ring of queue pair
    /// `queue` that no frame has taken yet: frames the ring can take now
    /// (at least; a frame takes one buffer or more). 0 if the ring is not
    /// running.
    pub(crate) fn rx_room(&self, queue: u16) -> usize {
        let vq = 2 * queue;
        let Some(vid) = self.vid_for(vq) else { return 0 };
        if self.features.load(Ordering::Relaxed) & VIRTIO_F_RING_PACKED != 0 {
            // librte_vhost 22.11 answers for split rings only: unknown.
            return usize::MAX;
        }
        // SAFETY: as in `dequeue`: vid names a running device and vq an
        // enabled ring; librte_vhost reads the ring's indexes under the
        // ring's own lock.
        usize::from(unsafe { dpdk_sys::rte_vhost_avail_entries(vid, vq) })
    }

    /// Copies `pkts` into the VM's RX ring of queue pair `queue`. Returns how
    /// many the ring took (the first ones); the mbufs stay the caller's
    /// (librte_vhost copies).
    #[inline(always)]
    pub(crate) fn enqueue(&self, queue: u16, pkts: &mut [*mut dpdk_sys::rte_mbuf]) -> usize {
        let vq = 2 * queue;
        let Some(vid) = self.vid_for(vq) else { return 0 };
        let mut done = 0;
        // librte_vhost takes at most MAX_PKT_BURST (32) per call.
        for chunk in pkts.chunks_mut(ENQUEUE_MAX) {
            // SAFETY: as in `dequeue`; only this worker enqueues to this ring.
            let n =
                unsafe { dpdk_sys::rte_vhost_enqueue_burst(vid, vq, chunk.as_mut_ptr(), chunk.len() as u16) } as usize;
            done += n;
            if n < chunk.len() {
                break;
            }
        }
        done
    }
}

/// Ports by socket path and by device id, for the callbacks.
#[derive(Default)]
struct Registry {
    by_path: HashMap<CString, Arc<VhostPort>>,
    by_vid: HashMap<c_int, Arc<VhostPort>>,
    /// Tags of ports whose state changed, for the control plane.
    changed: Vec<u32>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves plain maps behind: still usable.
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

type Quiesce = Box<dyn Fn() + Send + Sync>;
static QUIESCE: OnceLock<Quiesce> = OnceLock::new();

/// Sets what `destroy_device` calls, after clearing the device id, to wait
/// until no worker can still use it. Set once, before any port is
/// registered; later calls are ignored.
pub fn set_quiesce(f: impl Fn() + Send + Sync + 'static) {
    let _ = QUIESCE.set(Box::new(f));
}

/// Tags of the ports whose device or rings changed since the last call.
pub fn take_events() -> Vec<u32> {
    std::mem::take(&mut lock().changed)
}

/// The port behind a device id: known since `new_connection`, else found by
/// the device's socket path.
fn port_of(reg: &mut Registry, vid: c_int) -> Option<Arc<VhostPort>> {
    if let Some(p) = reg.by_vid.get(&vid) {
        return Some(p.clone());
    }
    let mut buf = [0 as c_char; 256];
    // SAFETY: buf has room for 256 bytes; librte_vhost NUL-terminates it.
    if unsafe { dpdk_sys::rte_vhost_get_ifname(vid, buf.as_mut_ptr(), buf.len()) } != 0 {
        return None;
    }
    // SAFETY: NUL-terminated by the call above.
    let path = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_owned();
    let p = reg.by_path.get(&path)?.clone();
    reg.by_vid.insert(vid, p.clone());
    Some(p)
}

extern "C" fn on_new_connection(vid: c_int) -> c_int {
    let mut reg = lock();
    if let Some(p) = port_of(&mut reg, vid) {
        // A new connection starts with no ring enabled.
        p.vrings.store(0, Ordering::Release);
    }
    0
}

extern "C" fn on_destroy_connection(vid: c_int) {
    lock().by_vid.remove(&vid);
}

extern "C" fn on_new_device(vid: c_int) -> c_int {
    let Some(p) = port_of(&mut lock(), vid) else { return -1 };
    let mut features = 0u64;
    let mut mtu = 0u16;
    // SAFETY: vid is the device being started; out pointers are valid.
    let nr_vring = unsafe {
        dpdk_sys::rte_vhost_get_negotiated_features(vid, &mut features);
        if dpdk_sys::rte_vhost_get_mtu(vid, &mut mtu) != 0 {
            mtu = 0;
        }
        dpdk_sys::rte_vhost_get_vring_num(vid)
    };
    for vq in 0..nr_vring {
        // The fabric polls; the VM need not kick it.
        // SAFETY: vq is below the device's ring count.
        unsafe { dpdk_sys::rte_vhost_enable_guest_notification(vid, vq, 0) };
    }
    if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
        // Legacy front end: every ring is enabled once started, silently.
        let all = if nr_vring >= 64 { u64::MAX } else { (1u64 << nr_vring) - 1 };
        p.vrings.store(all, Ordering::Release);
    }
    p.features.store(features, Ordering::Relaxed);
    p.logging.store(features & VHOST_F_LOG_ALL != 0, Ordering::Relaxed);
    p.mtu.store(u32::from(mtu), Ordering::Relaxed);
    p.vid.store(vid, Ordering::SeqCst);
    p.link_changes.fetch_add(1, Ordering::Relaxed);
    lock().changed.push(p.tag);
    0
}

/// VHOST_F_LOG_ALL: the front end logs dirty memory (live migration).
const VHOST_F_LOG_ALL: u64 = 1 << 26;

extern "C" fn on_features_changed(vid: c_int, features: u64) -> c_int {
    let Some(p) = port_of(&mut lock(), vid) else { return 0 };
    let was = p.logging.swap(features & VHOST_F_LOG_ALL != 0, Ordering::Relaxed);
    if was != (features & VHOST_F_LOG_ALL != 0) {
        lock().changed.push(p.tag);
    }
    0
}

extern "C" fn on_destroy_device(vid: c_int) {
    let Some(p) = port_of(&mut lock(), vid) else { return };
    p.vid.store(-1, Ordering::SeqCst);
    p.vrings.store(0, Ordering::Release);
    // No worker may use `vid` once this returns.
    if let Some(q) = QUIESCE.get() {
        q();
    }
    p.link_changes.fetch_add(1, Ordering::Relaxed);
    lock().changed.push(p.tag);
}

extern "C" fn on_vring_state_changed(vid: c_int, queue_id: u16, enable: c_int) -> c_int {
    let Some(p) = port_of(&mut lock(), vid) else { return 0 };
    if queue_id < 64 {
        let bit = 1u64 << queue_id;
        if enable != 0 {
            p.vrings.fetch_or(bit, Ordering::AcqRel);
        } else {
            p.vrings.fetch_and(!bit, Ordering::AcqRel);
        }
    }
    lock().changed.push(p.tag);
    0
}

/// The callback table, shared by every socket.
struct Ops(dpdk_sys::rte_vhost_device_ops);

// SAFETY: the table holds only function pointers and a null reserved
// pointer, and is never written.
unsafe impl Sync for Ops {}

static OPS: Ops = Ops(dpdk_sys::rte_vhost_device_ops {
    new_device: Some(on_new_device),
    destroy_device: Some(on_destroy_device),
    vring_state_changed: Some(on_vring_state_changed),
    features_changed: Some(on_features_changed),
    new_connection: Some(on_new_connection),
    destroy_connection: Some(on_destroy_connection),
    guest_notified: None,
    reserved: [std::ptr::null_mut(); 1],
});

/// A registered vhost-user socket. Dropping it unregisters the socket (a
/// connected VM's device is destroyed first; a server-mode socket file is
/// removed by librte_vhost).
#[derive(Debug)]
pub struct VhostSocket {
    port: Arc<VhostPort>,
}

fn vhost_err(op: String) -> Error {
    // librte_vhost returns -1 and says why in its log (not in rte_errno).
    Error::Vhost(op)
}

impl VhostSocket {
    /// Registers and starts the socket at `path`: in server mode librte_vhost
    /// creates it and the VM connects; in client mode the VM listens and
    /// librte_vhost connects, retrying every second. `queue_pairs` is the
    /// most the VM may use; `tag` comes back in [`take_events`].
    pub fn start(path: &str, client: bool, queue_pairs: u16, tag: u32) -> Result<VhostSocket> {
        let c = CString::new(path).map_err(|_| Error::Invalid(format!("socket path {path:?} contains a NUL byte")))?;
        if !(1..=MAX_QUEUE_PAIRS).contains(&queue_pairs) {
            return Err(Error::Invalid(format!("a vhost-user port has 1 to {MAX_QUEUE_PAIRS} queue pairs")));
        }
        let port = Arc::new(VhostPort {
            vid: AtomicI32::new(-1),
            vrings: AtomicU64::new(0),
            link_changes: AtomicU64::new(0),
            mtu: AtomicU32::new(0),
            features: AtomicU64::new(0),
            logging: AtomicBool::new(false),
            path: c.clone(),
            client,
            queue_pairs,
            tag,
        });
        {
            let mut reg = lock();
            if reg.by_path.contains_key(&c) {
                return Err(Error::Invalid(format!("vhost-user socket {path} is already registered")));
            }
            reg.by_path.insert(c.clone(), port.clone());
        }
        let flags = FLAG_NET_COMPLIANT_OL_FLAGS | if client { FLAG_CLIENT } else { 0 };
        let undo = |e: Error| {
            // SAFETY: unregistering a path that is (or is not) registered.
            unsafe { dpdk_sys::rte_vhost_driver_unregister(c.as_ptr()) };
            lock().by_path.remove(&c);
            e
        };
        // SAFETY: c is a valid C string for each call; OPS is a static that
        // outlives the registration; the callbacks are plain functions.
        unsafe {
            let rc = dpdk_sys::rte_vhost_driver_register(c.as_ptr(), flags);
            if rc != 0 {
                lock().by_path.remove(&c);
                return Err(vhost_err(format!("rte_vhost_driver_register({path})")));
            }
            let rc = dpdk_sys::rte_vhost_driver_disable_features(c.as_ptr(), DISABLED_FEATURES);
            if rc != 0 {
                return Err(undo(vhost_err(format!("rte_vhost_driver_disable_features({path})"))));
            }
            let rc = dpdk_sys::rte_vhost_driver_callback_register(c.as_ptr(), &OPS.0);
            if rc != 0 {
                return Err(undo(vhost_err(format!("rte_vhost_driver_callback_register({path})"))));
            }
            let rc = dpdk_sys::rte_vhost_driver_start(c.as_ptr());
            if rc != 0 {
                return Err(undo(vhost_err(format!("rte_vhost_driver_start({path})"))));
            }
        }
        Ok(VhostSocket { port })
    }

    /// The shared port, for the workers.
    pub fn port(&self) -> &Arc<VhostPort> {
        &self.port
    }
}

impl Drop for VhostSocket {
    fn drop(&mut self) {
        let c = self.port.path.clone();
        // Not under the registry lock: unregistering destroys a connected
        // device, whose callback takes the lock.
        // SAFETY: c names a path this socket registered.
        // It fails only for a path that is not registered: nothing to undo.
        let _ = unsafe { dpdk_sys::rte_vhost_driver_unregister(c.as_ptr()) };
        let mut reg = lock();
        reg.by_path.remove(&c);
        reg.by_vid.retain(|_, p| !Arc::ptr_eq(p, &self.port));
    }
}
