//! The leak check every target shares. Stable Rust has no LeakSanitizer, so the global
//! allocator counts the bytes it hands out, and an input that leaves any allocated fails.

use cap::Cap;
use std::alloc::System;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Runs one input through `f`; panics if memory allocated meanwhile was not freed.
pub fn without_leaks(f: impl FnOnce()) {
    let before = ALLOCATOR.allocated();
    f();
    assert_eq!(ALLOCATOR.allocated(), before, "memory allocated for this input was not freed");
}
