//! EAL initialisation and lcore launch.
//!
//! `rte_eal_init` runs once per process and may keep pointers into argv, so
//! the argument strings are leaked for the life of the process. Closures run
//! on lcores through a trampoline that catches panics: a panic unwinding out
//! of an `extern "C"` function would abort the whole fabric.

use crate::error::{check, Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// An EAL logical core id.
pub type LcoreId = u32;

/// Proof that the EAL is initialised in this process.
#[derive(Debug)]
pub struct Eal {
    main_lcore: LcoreId,
    worker_lcores: Vec<LcoreId>,
    consumed_args: usize,
}

type LcoreJob = Box<dyn FnOnce() -> i32 + Send + 'static>;

extern "C" fn lcore_trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the pointer produced by Box::into_raw in `launch`, and
    // the EAL calls this function exactly once per launch.
    let job: Box<LcoreJob> = unsafe { Box::from_raw(arg as *mut LcoreJob) };
    // -1 reports a panic; the default panic hook has already printed it.
    catch_unwind(AssertUnwindSafe(job)).unwrap_or(-1)
}

impl Eal {
    /// Initialises the EAL with `args` (the program name first, then EAL
    /// arguments as on any DPDK command line).
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
        if INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(Error::EalAlreadyInitialised);
        }
        let mut ptrs: Vec<*mut c_char> = Vec::with_capacity(args.len() + 1);
        for a in args {
            let c = CString::new(a.as_ref())
                .map_err(|_| Error::Invalid(format!("EAL argument {:?} contains a NUL byte", a.as_ref())))?;
            // The EAL may keep these pointers: leak them for the process lifetime.
            ptrs.push(c.into_raw());
        }
        ptrs.push(std::ptr::null_mut());
        let argv = Box::leak(ptrs.into_boxed_slice());
        // SAFETY: argv is a NULL-terminated array of valid C strings that
        // lives for the rest of the process; argc excludes the NULL.
        let rc = unsafe { dpdk_sys::rte_eal_init(args.len() as c_int, argv.as_mut_ptr()) };
        if rc < 0 {
            INITIALISED.store(false, Ordering::SeqCst);
            return Err(Error::from_rte_errno("rte_eal_init"));
        }
        // SAFETY: plain queries of EAL state after a successful init.
        let main_lcore = unsafe { dpdk_sys::rte_get_main_lcore() };
        let mut worker_lcores = Vec::new();
        // rte_get_next_lcore increments before testing, so starting at
        // u32::MAX walks every enabled lcore from 0 upwards.
        let mut id = u32::MAX;
        loop {
            // SAFETY: a plain query of EAL state; skip_main = 1, wrap = 0.
            id = unsafe { dpdk_sys::rte_get_next_lcore(id, 1, 0) };
            if id >= max_lcore() {
                break;
            }
            worker_lcores.push(id);
        }
        Ok(Eal { main_lcore, worker_lcores, consumed_args: rc as usize })
    }

    /// The lcore running `main` (and the control plane).
    pub fn main_lcore(&self) -> LcoreId {
        self.main_lcore
    }

    /// Worker lcores available for `launch`, in increasing order.
    pub fn worker_lcores(&self) -> &[LcoreId] {
        &self.worker_lcores
    }

    /// How many arguments (including the program name) the EAL consumed.
    pub fn consumed_args(&self) -> usize {
        self.consumed_args
    }

    /// Runs `job` on worker lcore `lcore`. A panic in `job` is caught and
    /// reported as return code -1 by [`Eal::wait`].
    pub fn launch<F>(&self, lcore: LcoreId, job: F) -> Result<()>
    where
        F: FnOnce() -> i32 + Send + 'static,
    {
        let boxed: Box<LcoreJob> = Box::new(Box::new(job));
        let arg = Box::into_raw(boxed) as *mut c_void;
        // SAFETY: the trampoline takes ownership of `arg` when the lcore runs
        // it; on failure the EAL did not take it and we free it here.
        let rc = unsafe { dpdk_sys::rte_eal_remote_launch(Some(lcore_trampoline), arg, lcore) };
        if rc < 0 {
            // SAFETY: the launch failed, so `arg` was not handed to the lcore.
            drop(unsafe { Box::from_raw(arg as *mut LcoreJob) });
            return Err(Error::from_errno(format!("rte_eal_remote_launch(lcore {lcore})"), -rc));
        }
        Ok(())
    }

    /// Waits for the job on `lcore` to finish and returns its code.
    pub fn wait(&self, lcore: LcoreId) -> i32 {
        // SAFETY: called from the main lcore for a worker lcore id.
        unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) }
    }

    /// Releases EAL resources (hugepage files, vdevs). Call once at exit.
    pub fn cleanup(self) -> Result<()> {
        // SAFETY: no lcore job runs any more (callers wait first) and the
        // Eal value is consumed, so no further DPDK call can follow.
        let rc = unsafe { dpdk_sys::rte_eal_cleanup() };
        check(|| "rte_eal_cleanup".into(), rc).map(|_| ())
    }
}

/// RTE_MAX_LCORE of the DPDK build.
pub fn max_lcore() -> u32 {
    // SAFETY: returns a compile-time constant.
    unsafe { dpdk_sys::vw_max_lcore() }
}

/// The lcore id of the calling thread, or `None` for a non-EAL thread.
pub fn current_lcore() -> Option<LcoreId> {
    // SAFETY: reads the calling thread's per-lcore variable.
    let id = unsafe { dpdk_sys::rte_lcore_id() };
    (id < max_lcore()).then_some(id)
}

/// NUMA socket of the calling thread's lcore (SOCKET_ID_ANY as -1).
pub fn socket_id() -> i32 {
    // SAFETY: reads the calling thread's per-lcore variable.
    unsafe { dpdk_sys::rte_socket_id() as i32 }
}

/// Raises the soft limit on open files to the hard limit and returns it: a
/// vhost-user VM takes a socket and an eventfd per ring, so a host with
/// hundreds of VMs needs thousands of descriptors.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid out pointer; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
