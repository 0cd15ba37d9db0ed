//! The TSC clock DPDK uses for its own timers.

/// Current TSC value (cycles since reset, not serialised).
#[inline(always)]
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; x86_64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC frequency in Hz as measured by the EAL (valid after EAL init).
pub fn tsc_hz() -> u64 {
    // SAFETY: reads a value the EAL computed at init; no arguments.
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}
