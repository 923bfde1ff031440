//! Allocator tuning. Every training step allocates and frees many MB of activations and
//! gradients; with glibc's defaults, freed memory is trimmed back to the OS and large blocks are
//! mmapped afresh, so each step pays for page faults and zeroing (a profile of tiny.toml showed
//! ~15% of the time in the kernel's page-fault path). Keeping freed memory in the process makes
//! the step ~1.7x faster on this machine (`scripts/bench.sh`). Values never change.

/// Keep freed memory for reuse: raise the mmap threshold to glibc's maximum (32 MiB) and stop
/// trimming the heap. Any MALLOC_* environment setting of the user's wins, and
/// TINYLM_DEFAULT_MALLOC=1 keeps glibc's defaults (for benchmarks).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
        if user_set || std::env::var_os("TINYLM_DEFAULT_MALLOC").is_some() {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; called at start-up.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}
