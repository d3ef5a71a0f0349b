//! Host-memory settings for tensor allocations.
//!
//! LibTorch allocates CPU tensors with glibc's `posix_memalign`. glibc serves blocks above its
//! mmap threshold with fresh `mmap`s, unmaps them when they are freed, and hands freed memory at
//! the top of its heap back to the system above its trim threshold; both thresholds start low
//! (128 KiB) and only grow as the process frees large blocks, and the mmap threshold never grows
//! past 32 MiB. A training step allocates and frees the same activations every step, so every
//! step pays page faults for memory it had a step before: with the starting thresholds 3 500
//! faults (14 MB of fresh pages) per SGLD step of JEM's CNN at batch 64, against none in a
//! PyTorch process whose thresholds have grown; and at sizes where single activations and
//! convolution buffers pass 32 MiB (TSIT at 256×256 with the official widths) 3 to 4.5 million
//! faults an iteration in either, 40 % of reprise's iteration time (measured with
//! `perf stat -e page-faults` and `/usr/bin/time -v`, see docs/performance.md).
//!
//! [`keep_freed_memory`] turns both mechanisms off: blocks of every size come from the heap
//! (`M_MMAP_MAX` = 0) and freed memory stays in the process for the next step
//! (`M_TRIM_THRESHOLD` = -1), so a process's resident memory stays at its peak instead of being
//! faulted in again. Allocations of threads other than the main one (glibc's other arenas) are
//! still mapped when they exceed 64 MiB; a training step allocates on the main thread.

/// The mmap threshold set: glibc's largest (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit targets).
/// Setting it also stops glibc's own adjustment of both thresholds.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Keeps freed tensor memory in the process for reuse (see the module documentation); call it
/// first thing in `main`. Returns whether the allocator took every setting (always false off
/// glibc). Results do not change, only how often memory is faulted in again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    // SAFETY: mallopt only sets integer parameters of glibc's allocator; it takes the
    // allocator's lock and is safe to call at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
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
    fn glibc_takes_every_setting() {
        assert!(keep_freed_memory());
    }
}
