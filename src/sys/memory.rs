//! Giving memory back: a parked generation (see `ProcessBuilder::probation`) keeps its
//! sockets for a rollback, and as little else as it can. glibc's allocator keeps freed
//! memory for reuse; `malloc_trim` returns what it can to the kernel. No crate wraps it
//! (it is glibc's alone); elsewhere this does nothing.

/// Returns the allocator's free memory to the kernel, where the allocator can.
pub(crate) fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only walks the allocator's own free lists, under its
        // locks; it takes no pointer and is safe to call from any thread at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            "returned free memory to the kernel"
        );
    }
}
