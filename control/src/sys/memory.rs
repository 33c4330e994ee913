//! Giving freed heap memory back to the kernel.

/// Returns the free pages of every malloc arena to the kernel. glibc keeps freed memory for
/// reuse, so the transient allocations of a full sync (file texts, parse trees, the per-thread
/// arenas of the parallel parse) would otherwise stay in the RSS for the life of the process.
/// Costs a walk over the free lists: called after large generations only.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns unused pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
