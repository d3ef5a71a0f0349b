//! Host-memory settings for tensor allocations.
//!
//! LibTorch allocates CPU tensors with glibc's `posix_memalign`. glibc serves blocks above its
//! mmap threshold with fresh `mmap`s and hands freed memory at the top of its heap back to the
//! system above its trim threshold; both thresholds start low (128 KiB) and only grow as the
//! process frees large blocks. A training step allocates and frees the same activations every
//! step, so with the starting thresholds every step pays page faults for memory it had a step
//! before: 3 500 faults (14 MB of fresh pages) per SGLD step of JEM's CNN at batch 64, 10 700
//! per JEM iteration, against none in a PyTorch process whose thresholds have grown (measured with
//! `perf stat -e page-faults`, see docs/performance.md). [`keep_freed_memory`] sets them where
//! glibc's own adjustment ends: blocks up to 32 MiB come from the heap, and up to 64 MiB of
//! freed memory is kept for the next step.

/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Twice the mmap threshold, the trim threshold glibc sets when it raises the mmap threshold.
pub const TRIM_THRESHOLD: usize = 64 << 20;

/// Keeps freed tensor memory in the process for reuse (see the module documentation); call it
/// first thing in `main`. Returns whether the allocator took both settings (always false off
/// glibc). Results do not change, only how often memory is faulted in again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    // SAFETY: mallopt only sets two integer parameters of glibc's allocator; it takes the
    // allocator's lock and is safe to call at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    }
}

/// Keeps freed tensor memory in the process for reuse: a no-op returning false off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_both_thresholds() {
        assert!(keep_freed_memory());
    }
}
